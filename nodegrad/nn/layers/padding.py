"""Padding layers as PyTorch's: Zero/Constant/Reflection/Replication/CircularPad{1,2,3}d.

Each is ``nn.functional.pad`` with its mode and a fixed ``padding``: an int pads every side of
the last 1, 2 or 3 axes alike, a tuple gives (left, right[, top, bottom[, front, back]]) from
the last axis backwards, negative widths crop (constant and zero modes). The input is
unbatched (C, *spatial) or batched (N, C, *spatial), as PyTorch's layers take it.
"""

from __future__ import annotations

from ...errors import ShapeError
from .. import functional as F
from ..module import Module


class _PadNd(Module):
    nd: int = 1
    mode: str = "constant"

    def __init__(self, padding, value: float | None = None) -> None:
        super().__init__()
        if isinstance(padding, int):
            padding = (padding,) * (2 * self.nd)
        padding = tuple(int(p) for p in padding)
        if len(padding) != 2 * self.nd:
            raise ValueError(f"{type(self).__name__}: padding must be an int or {2 * self.nd} "
                             f"widths, got {padding}")
        self.padding, self.value = padding, value

    def forward(self, x):
        if x.ndim not in (self.nd + 1, self.nd + 2):
            raise ShapeError(f"{type(self).__name__}: expected a {self.nd + 1}-D (unbatched) or "
                             f"{self.nd + 2}-D (batched) input, got shape {tuple(x.shape)}")
        return F.pad(x, self.padding, self.mode, self.value)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class _ConstantPadNd(_PadNd):
    def __init__(self, padding, value: float) -> None:
        super().__init__(padding, float(value))

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ConstantPad1d(_ConstantPadNd):
    """Pads the last axis with ``value``."""

    nd = 1


class ConstantPad2d(_ConstantPadNd):
    """Pads the last two axes with ``value``."""

    nd = 2


class ConstantPad3d(_ConstantPadNd):
    """Pads the last three axes with ``value``."""

    nd = 3


class _ZeroPadNd(_ConstantPadNd):
    def __init__(self, padding) -> None:
        super().__init__(padding, 0.0)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ZeroPad1d(_ZeroPadNd):
    """Pads the last axis with zeros."""

    nd = 1


class ZeroPad2d(_ZeroPadNd):
    """Pads the last two axes with zeros."""

    nd = 2


class ZeroPad3d(_ZeroPadNd):
    """Pads the last three axes with zeros."""

    nd = 3


class ReflectionPad1d(_PadNd):
    """Pads the last axis with its reflection about the edge (edge not repeated)."""

    nd, mode = 1, "reflect"


class ReflectionPad2d(_PadNd):
    """Pads the last two axes with their reflection about the edges."""

    nd, mode = 2, "reflect"


class ReflectionPad3d(_PadNd):
    """Pads the last three axes with their reflection about the edges."""

    nd, mode = 3, "reflect"


class ReplicationPad1d(_PadNd):
    """Pads the last axis by repeating its edge values."""

    nd, mode = 1, "replicate"


class ReplicationPad2d(_PadNd):
    """Pads the last two axes by repeating their edge values."""

    nd, mode = 2, "replicate"


class ReplicationPad3d(_PadNd):
    """Pads the last three axes by repeating their edge values."""

    nd, mode = 3, "replicate"


class CircularPad1d(_PadNd):
    """Pads the last axis with its values wrapped around (periodic)."""

    nd, mode = 1, "circular"


class CircularPad2d(_PadNd):
    """Pads the last two axes with their values wrapped around."""

    nd, mode = 2, "circular"


class CircularPad3d(_PadNd):
    """Pads the last three axes with their values wrapped around."""

    nd, mode = 3, "circular"


PADDING_LAYERS = [ZeroPad1d, ZeroPad2d, ZeroPad3d, ConstantPad1d, ConstantPad2d, ConstantPad3d,
                  ReflectionPad1d, ReflectionPad2d, ReflectionPad3d, ReplicationPad1d,
                  ReplicationPad2d, ReplicationPad3d, CircularPad1d, CircularPad2d,
                  CircularPad3d]
