"""Convolution and pooling layers (one matrix product per convolution; see nn.functional)."""

from __future__ import annotations

import math

from ... import _backend as B
from ...errors import ShapeError
from ...tensor import empty
from .. import functional as F
from .. import init as I
from ..module import Module, Parameter


def _named(layer: Module, fn, *args):
    """``fn(*args)``, a shape error re-raised naming the layer (class and settings)."""
    try:
        return fn(*args)
    except ShapeError as e:
        raise ShapeError(f"{type(layer).__name__}({layer.extra_repr()}): {e}") from None


class _ConvNd(Module):
    nd: int = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 init="default", device=None, dtype=None):
        super().__init__()
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{type(self).__name__}: padding_mode must be one of "
                             f"{tuple(_PADDING_MODES)}, got {padding_mode!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: in_channels ({in_channels}) and "
                             f"out_channels ({out_channels}) must be divisible by groups "
                             f"({groups})")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{type(self).__name__}: padding must be an int, a tuple, "
                                 f"'same' or 'valid', got {padding!r}")
            if padding == "same" and any(si != 1 for si in _per_axis(stride, self.nd)):
                raise ValueError(f"{type(self).__name__}: padding='same' is not supported for "
                                 f"strided convolutions (padding='same' needs stride 1, got "
                                 f"stride={stride})")
        k = per_axis_ints(kernel_size, self.nd)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        nd = self.nd  # one entry per spatial axis, as PyTorch stores them (conv.stride[0])
        self.stride, self.padding = _per_axis(stride, nd), _per_axis(padding, nd)
        self.dilation, self.groups = _per_axis(dilation, nd), groups
        self.output_padding, self.transposed = (0,) * nd, False  # PyTorch's _ConvNd has them
        self.padding_mode = padding_mode
        self.weight = Parameter(empty(out_channels, in_channels // groups, *k, device=device,
                                      dtype=dtype))
        self.bias = Parameter(empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default: W, b ~ U(±1/√fan_in) with fan_in = in/groups·∏kernel."""
        I.init_weight(self.weight, self.init)
        if self.bias is not None:
            fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
            if self.init == "default":
                I.uniform_(self.bias, -I.default_bound(fan_in), I.default_bound(fan_in))
            else:
                I.zeros_(self.bias)

    def extra_repr(self) -> str:
        return _conv_repr(self)

    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias)

    def _conv_forward(self, x, weight, bias):
        """This layer's convolution with another ``weight`` and ``bias`` (PyTorch's hook for
        subclasses: weight standardisation, LoRA on a convolution)."""
        x, padding = self._input(x)
        return _named(self, self._conv, x, weight, bias, self.stride, padding, self.dilation,
                      self.groups)

    def _forward_relu(self, x):
        """``relu(self(x))`` as one fused op (``F._conv_relu``), for :class:`Sequential` and
        :func:`conv_relu` to call on a plain layer: the same values and gradients."""
        x, padding = self._input(x)
        return _named(self, F._conv_relu, x, self.weight, self.bias, self.stride, padding,
                      self.dilation, self.groups, self.nd)

    def _input(self, x):
        """The input and the padding the convolution adds: with another ``padding_mode`` than
        zeros, the input padded in that mode first (PyTorch's widths) and no more."""
        if self.padding_mode == "zeros":
            return x, self.padding
        nd, p = self.nd, self.padding
        d = per_axis_ints(self.dilation, nd)
        if p == "valid":
            return x, 0
        if p == "same":
            pairs = F._same_padding(self.kernel_size, d)
        else:
            p = per_axis_ints(p, nd)
            pairs = [(q, q) for q in p]
        return F.pad(x, F._pad_widths(pairs), _PADDING_MODES[self.padding_mode]), 0


def per_axis_ints(v, nd: int) -> tuple:
    """An int-or-tuple setting as one int per spatial axis; NumPy integers become ints (a
    size computed with NumPy, ``kernel_size=np.int64(3)``, as PyTorch takes it)."""
    if isinstance(v, int | B.np.integer):
        return (int(v),) * nd
    return tuple(int(i) if isinstance(i, B.np.integer) else i for i in v)


def _per_axis(v, nd: int):
    """A layer's int-or-tuple setting as PyTorch stores it: one entry per spatial axis (a
    padding string as it is)."""
    return v if isinstance(v, str) else per_axis_ints(v, nd)


def _conv_repr(layer: Module) -> str:
    """PyTorch's ``_ConvNd.extra_repr``: settings per axis, those at their defaults left out."""
    nd = layer.nd
    s = (f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, "
         f"stride={_per_axis(layer.stride, nd)}")
    for name, default in (("padding", 0), ("dilation", 1), ("output_padding", 0)):
        v = _per_axis(getattr(layer, name, default), nd)
        if v != (default,) * (len(v) if isinstance(v, tuple) else nd):
            s += f", {name}={v}"
    if layer.groups != 1:
        s += f", groups={layer.groups}"
    if layer.bias is None:
        s += ", bias=False"
    if layer.padding_mode != "zeros":
        s += f", padding_mode={layer.padding_mode}"
    return s


_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
                  "circular": "circular"}


class Conv1d(_ConvNd):
    """Convolution over (N, C, L) or unbatched (C, L); weight (out, in/groups, k)."""

    nd = 1
    _conv = staticmethod(F.conv1d)


class Conv2d(_ConvNd):
    """Convolution over (N, C, H, W) or unbatched (C, H, W); weight (out, in/groups, kh, kw)."""

    nd = 2
    _conv = staticmethod(F.conv2d)


class Conv3d(_ConvNd):
    """Convolution over (N, C, D, H, W) or unbatched (C, D, H, W); weight (out, in/groups,
    kd, kh, kw)."""

    nd = 3
    _conv = staticmethod(F.conv3d)


class _Pool(Module):
    """A pooling layer: its arguments are stored and passed to ``F.<name>`` as keywords."""

    fn: str = ""

    def __init__(self, kernel_size, stride=None, padding=0, **kw):
        super().__init__()
        stride = kernel_size if stride is None else stride  # PyTorch's default, stored
        self.kernel_size, self.stride, self.padding, self.kw = kernel_size, stride, padding, kw

    def forward(self, x):
        return _named(self, lambda: getattr(F, self.fn)(x, self.kernel_size, self.stride,
                                                        self.padding, **self.kw))


class _MaxPool(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation=dilation,
                         ceil_mode=ceil_mode, return_indices=return_indices)
        self.dilation, self.ceil_mode, self.return_indices = dilation, ceil_mode, return_indices

    def extra_repr(self) -> str:
        """PyTorch's text: every argument but ``return_indices``, the defaults included."""
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}, "
                f"dilation={self.kw['dilation']}, ceil_mode={self.kw['ceil_mode']}")


class _AvgPool(_Pool):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):
        kw = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        if divisor_override is not None:
            kw["divisor_override"] = divisor_override
        super().__init__(kernel_size, stride, padding, **kw)
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def extra_repr(self) -> str:
        """PyTorch's text: kernel size, stride and padding only."""
        stride = self.kernel_size if self.stride is None else self.stride
        return f"kernel_size={self.kernel_size}, stride={stride}, padding={self.padding}"


class MaxPool1d(_MaxPool):
    """Max over windows of (N, C, L) or (C, L); ``return_indices`` also returns where each max
    was."""

    fn = "max_pool1d"


class MaxPool2d(_MaxPool):
    """Max over windows of (N, C, H, W) or (C, H, W)."""

    fn = "max_pool2d"


class AvgPool1d(_AvgPool):
    """Mean over windows of (N, C, L) or (C, L); ``count_include_pad``/``ceil_mode`` as
    PyTorch."""

    fn = "avg_pool1d"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        stride = kernel_size if stride is None else stride
        super().__init__(_per_axis(kernel_size, 1), _per_axis(stride, 1), _per_axis(padding, 1),
                         ceil_mode, count_include_pad)  # 1-tuples, as PyTorch's _single

    def extra_repr(self) -> str:
        """PyTorch's text, which shows AvgPool1d's arguments as 1-tuples."""
        def one(v):
            return v if isinstance(v, tuple | list) else (v,)
        stride = self.kernel_size if self.stride is None else self.stride
        return (f"kernel_size={one(self.kernel_size)}, stride={one(stride)}, "
                f"padding={one(self.padding)}")


class AvgPool2d(_AvgPool):
    """Mean over windows of (N, C, H, W) or (C, H, W)."""

    fn = "avg_pool2d"


class AdaptiveAvgPool1d(Module):
    def __init__(self, output_size: int):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool1d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool3d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool3d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class GlobalAvgPool(Module):
    """Mean over all spatial axes: (N, C, ...) -> (N, C)."""

    def forward(self, x):
        return F.global_avg_pool(x)
