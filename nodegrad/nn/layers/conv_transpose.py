"""Transposed convolution layers (the input gradient of a convolution, used to upsample)."""

from __future__ import annotations

import math

from ...tensor import Tensor, empty
from .. import functional as F
from .. import init as I
from ..module import Module, Parameter
from .conv import _conv_repr, _per_axis, per_axis_ints


class _ConvTransposeNd(Module):
    nd: int = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", init="default", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if padding_mode != "zeros":  # as PyTorch: the output is padded, not the input
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must be divisible by groups ({groups})")
        nd = self.nd
        k = per_axis_ints(kernel_size, nd)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding = _per_axis(stride, nd), _per_axis(padding, nd)
        self.output_padding, self.transposed = _per_axis(output_padding, nd), True
        self.groups, self.dilation, self.init = groups, _per_axis(dilation, nd), init
        self.weight = Parameter(empty(in_channels, out_channels // groups, *k, device=device,
                                      dtype=dtype))
        self.bias = Parameter(empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default: U(±1/√fan_in) with fan_in = out/groups·∏kernel (weight axis 1)."""
        I.init_weight(self.weight, self.init)
        if self.bias is not None:
            fan_in = self.out_channels // self.groups * math.prod(self.kernel_size)
            if self.init == "default":
                I.uniform_(self.bias, -I.default_bound(fan_in), I.default_bound(fan_in))
            else:
                I.zeros_(self.bias)

    def _output_padding(self, x: Tensor, output_size) -> tuple:
        """The output_padding that gives ``output_size`` (PyTorch's rule: within one stride)."""
        nd, name = self.nd, type(self).__name__

        def per_axis(v):
            return per_axis_ints(v, nd)

        if output_size is None:
            return per_axis(self.output_padding)
        size = tuple(int(o) for o in output_size)
        lead = 2 if x.ndim == nd + 2 else 1  # the batch and channel sizes may lead, as PyTorch
        if len(size) == lead + nd:
            size = size[lead:]
        if len(size) != nd:
            raise ValueError(f"{name}: for {x.ndim}-d input, output_size must have {nd} or "
                             f"{lead + nd} elements, got {tuple(output_size)}")
        s, p, d = per_axis(self.stride), per_axis(self.padding), per_axis(self.dilation)
        lo = tuple((li - 1) * si - 2 * pi + di * (ki - 1) + 1 for li, si, pi, di, ki in
                   zip(x.shape[x.ndim - nd:], s, p, d, self.kernel_size))
        hi = tuple(a + si - 1 for a, si in zip(lo, s))
        if len(size) != nd or any(not a <= o <= b for o, a, b in zip(size, lo, hi)):
            raise ValueError(f"{name}: requested output_size {tuple(output_size)} is not "
                             f"reachable; for input {tuple(x.shape)} it must lie between {lo} "
                             f"to {hi}")
        return tuple(o - a for o, a in zip(size, lo))

    def extra_repr(self) -> str:
        return _conv_repr(self)


class ConvTranspose1d(_ConvTransposeNd):
    """Transposed convolution over (N, C, L) or (C, L); weight (in, out/groups, k) as PyTorch."""

    nd = 1

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding,
                                  self._output_padding(x, output_size), self.groups,
                                  self.dilation)


class ConvTranspose2d(_ConvTransposeNd):
    """Transposed convolution over (N, C, H, W) or (C, H, W); weight (in, out/groups, kh, kw)."""

    nd = 2

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self._output_padding(x, output_size), self.groups,
                                  self.dilation)


class ConvTranspose3d(_ConvTransposeNd):
    """Transposed convolution over (N, C, D, H, W) or (C, D, H, W); weight (in, out/groups,
    kd, kh, kw)."""

    nd = 3

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        return F.conv_transpose3d(x, self.weight, self.bias, self.stride, self.padding,
                                  self._output_padding(x, output_size), self.groups,
                                  self.dilation)
