"""PyTorch's ``torch.utils`` paths: ``nodegrad.utils.checkpoint`` (activation checkpointing),
``nodegrad.utils.data`` (:mod:`nodegrad.data` under PyTorch's name), ``nodegrad.utils.hooks``
(the hooks' RemovableHandle), ``nodegrad.utils.benchmark`` (Timer and Measurement) and
``nodegrad.utils.tensorboard`` (SummaryWriter)."""

from . import benchmark, checkpoint, data, hooks, tensorboard

__all__ = ["benchmark", "checkpoint", "data", "hooks", "tensorboard"]
