"""More pooling and resampling layers: 3-D pooling, unpooling, adaptive max, power-average and
fractional max pooling, im2col (Unfold/Fold), pixel shuffles and Upsample, each a thin wrapper
around the function of the same name in ``nn.functional``."""

from __future__ import annotations

from ...random import Generator
from ...tensor import Tensor
from .. import functional as F
from ..module import Module
from .conv import _AvgPool, _MaxPool
from .dropout import _check_generator


class MaxPool3d(_MaxPool):
    """Max over windows of (N, C, D, H, W)."""

    fn = "max_pool3d"


class AvgPool3d(_AvgPool):
    """Mean over windows of (N, C, D, H, W)."""

    fn = "avg_pool3d"


class _MaxUnpool(Module):
    fn: str = ""
    dims: int = 0

    def __init__(self, kernel_size, stride=None, padding=0):
        """Sizes kept as PyTorch's: one entry per spatial dim, the stride defaulting to the
        kernel (``unpool.stride`` reads ``(2, 2, 2)``, as in PyTorch)."""
        super().__init__()
        self.kernel_size = _ntuple(kernel_size, self.dims)
        self.stride = _ntuple(kernel_size if stride is None else stride, self.dims)
        self.padding = _ntuple(padding, self.dims)

    def forward(self, x: Tensor, indices: Tensor, output_size=None) -> Tensor:
        return getattr(F, self.fn)(x, indices, self.kernel_size, self.stride, self.padding,
                                   output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool1d(_MaxUnpool):
    """Inverse of MaxPool1d(return_indices=True): values back at their indices, zeros elsewhere."""

    fn, dims = "max_unpool1d", 1


class MaxUnpool2d(_MaxUnpool):
    """Inverse of MaxPool2d(return_indices=True)."""

    fn, dims = "max_unpool2d", 2


class MaxUnpool3d(_MaxUnpool):
    """Inverse of MaxPool3d(return_indices=True)."""

    fn, dims = "max_unpool3d", 3


class _AdaptiveMax(Module):
    fn: str = ""

    def __init__(self, output_size, return_indices: bool = False):
        super().__init__()
        self.output_size, self.return_indices = output_size, return_indices

    def forward(self, x: Tensor):
        return getattr(F, self.fn)(x, self.output_size, self.return_indices)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool1d(_AdaptiveMax):
    """Max over ``output_size`` bins of (N, C, L) (PyTorch's bin edges)."""

    fn = "adaptive_max_pool1d"


class AdaptiveMaxPool2d(_AdaptiveMax):
    """Max over an (oh, ow) grid of bins of (N, C, H, W)."""

    fn = "adaptive_max_pool2d"


class AdaptiveMaxPool3d(_AdaptiveMax):
    """Max over an (od, oh, ow) grid of bins of (N, C, D, H, W)."""

    fn = "adaptive_max_pool3d"


class _LPPool(Module):
    fn: str = ""

    def __init__(self, norm_type: float, kernel_size, stride=None, ceil_mode: bool = False):
        super().__init__()
        self.norm_type, self.kernel_size, self.stride = norm_type, kernel_size, stride
        self.ceil_mode = ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        return getattr(F, self.fn)(x, self.norm_type, self.kernel_size, self.stride,
                                   self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, ceil_mode={self.ceil_mode}")


class LPPool1d(_LPPool):
    """Power-average pooling (Σ xᵖ)^(1/p) over windows of (N, C, L)."""

    fn = "lp_pool1d"


class LPPool2d(_LPPool):
    """Power-average pooling over windows of (N, C, H, W)."""

    fn = "lp_pool2d"


class LPPool3d(_LPPool):
    """Power-average pooling over windows of (N, C, D, H, W)."""

    fn = "lp_pool3d"


class Unfold(Module):
    """im2col: (N, C, H, W) -> (N, C·kh·kw, L), one column per sliding window."""

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = (kernel_size, dilation,
                                                                      padding, stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"padding={self.padding}, stride={self.stride}")


class Fold(Unfold):
    """col2im: (N, C·kh·kw, L) -> (N, C, *output_size), overlapping windows added."""

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__(kernel_size, dilation, padding, stride)
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.fold(x, self.output_size, self.kernel_size, self.dilation, self.padding,
                      self.stride)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, " + super().extra_repr()


class ChannelShuffle(Module):
    """Interleaves ``groups`` groups of channels (``nn.functional.channel_shuffle``)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return F.channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class PixelShuffle(Module):
    """(*, C·r², H, W) -> (*, C, H·r, W·r)."""

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(Module):
    """(*, C, H·r, W·r) -> (*, C·r², H, W)."""

    def __init__(self, downscale_factor: int):
        super().__init__()
        self.downscale_factor = downscale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_unshuffle(x, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"


class Upsample(Module):
    """Resize spatial axes: ``F.interpolate`` with a fixed size or scale factor and mode."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners: bool | None = None, recompute_scale_factor: bool | None = None):
        super().__init__()
        if isinstance(scale_factor, tuple | list):  # floats, as PyTorch keeps (and prints) them
            scale_factor = tuple(float(f) for f in scale_factor)
        elif scale_factor:
            scale_factor = float(scale_factor)
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else \
            f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}"


class UpsamplingNearest2d(Upsample):
    """Nearest-neighbour upsampling of (N, C, H, W)."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, "nearest")


class UpsamplingBilinear2d(Upsample):
    """Bilinear upsampling of (N, C, H, W) with ``align_corners=True`` (as PyTorch's)."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, "bilinear", align_corners=True)


class _FractionalMaxPool(Module):
    """Shared by the 2-d and 3-d fractional max pools: the arguments' checks and the call."""

    dims = 2

    def __init__(self, kernel_size, output_size=None, output_ratio=None,
                 return_indices: bool = False, _random_samples: Tensor | None = None, *,
                 generator: Generator | None = None):
        super().__init__()
        name, d = type(self).__name__, self.dims
        self.kernel_size = _ntuple(kernel_size, d)
        self.return_indices = return_indices
        self.register_buffer("_random_samples", _random_samples)
        self.output_size = None if output_size is None else _ntuple(output_size, d)
        self.output_ratio = None if output_ratio is None else _ntuple(output_ratio, d)
        if output_size is None and output_ratio is None:
            raise ValueError(f"{name}: give either an output_size or an output_ratio")
        if output_size is not None and output_ratio is not None:
            raise ValueError(f"{name}: give only one of output_size and output_ratio")
        if self.output_ratio is not None and not all(0 < r < 1 for r in self.output_ratio):
            raise ValueError(f"{name}: output_ratio must be between 0 and 1, got "
                             f"{output_ratio}")
        _check_generator(self, generator)
        self.generator = generator

    def forward(self, x):
        f = F.fractional_max_pool2d if self.dims == 2 else F.fractional_max_pool3d
        return f(x, self.kernel_size, self.output_size, self.output_ratio, self.return_indices,
                 self._random_samples, generator=self.generator)


class FractionalMaxPool2d(_FractionalMaxPool):
    """Fractional max pooling of (N, C, H, W) to ``output_size`` or ``output_ratio`` times the
    input (see F.fractional_max_pool2d); ``_random_samples`` (N, C, 2) fixes the windows,
    else each call draws them from ``generator`` (the default one)."""

    dims = 2


class FractionalMaxPool3d(_FractionalMaxPool):
    """Fractional max pooling of (N, C, T, H, W) to ``output_size`` or ``output_ratio`` times
    the input (see F.fractional_max_pool3d); ``_random_samples`` (N, C, 3) fixes the windows,
    else each call draws them from ``generator`` (the default one)."""

    dims = 3


def _ntuple(v, d: int) -> tuple:
    return (v,) * d if isinstance(v, int | float) else tuple(v)


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int | float) else tuple(v)
