"""PyTorch's ``torch.utils`` paths: ``nodegrad.utils.checkpoint`` (activation checkpointing),
``nodegrad.utils.data`` (:mod:`nodegrad.data` under PyTorch's name) and
``nodegrad.utils.tensorboard`` (SummaryWriter)."""

from . import checkpoint, data, tensorboard

__all__ = ["checkpoint", "data", "tensorboard"]
