"""``torch.utils.checkpoint``: activation checkpointing (:mod:`nodegrad.func.checkpoint`)."""

from ..func.checkpoint import checkpoint, checkpoint_sequential

__all__ = ["checkpoint", "checkpoint_sequential"]
