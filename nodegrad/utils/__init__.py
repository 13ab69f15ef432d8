"""PyTorch's ``torch.utils`` paths: ``nodegrad.utils.checkpoint`` (activation checkpointing)
and ``nodegrad.utils.data`` (:mod:`nodegrad.data` under PyTorch's name)."""

from . import checkpoint, data

__all__ = ["checkpoint", "data"]
