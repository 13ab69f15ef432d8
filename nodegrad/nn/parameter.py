"""PyTorch's ``torch.nn.parameter``: the tensor kinds a Module registers by assignment
(:class:`Parameter`, :class:`Buffer`) and the lazy modules' placeholders
(:class:`UninitializedParameter`, :class:`UninitializedBuffer`), the same classes as ``nn``'s."""

from __future__ import annotations

from .layers.lazy import UninitializedBuffer, UninitializedParameter
from .module import Buffer, Parameter

__all__ = ["Parameter", "UninitializedParameter", "is_lazy", "Buffer", "UninitializedBuffer"]


def is_lazy(param) -> bool:
    """Whether ``param`` is a lazy module's placeholder, not yet given a shape."""
    return isinstance(param, UninitializedParameter | UninitializedBuffer)
