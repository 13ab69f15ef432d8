"""Normalisation: BatchNorm1d/2d (batch statistics in training, running ones in eval), LayerNorm."""

from __future__ import annotations

from ...errors import ShapeError
from ...tensor import int64, ones, zeros
from .. import functional as F
from ..module import Module, Parameter


class _BatchNorm(Module):
    dims: tuple = ()
    # PyTorch before 0.4.1 wrote no counter: such a checkpoint loads and keeps the current one
    _optional_buffers = ("num_batches_tracked",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(ones(num_features, device=device, dtype=dtype)) if affine else None
        self.bias = Parameter(zeros(num_features, device=device, dtype=dtype)) if affine and \
            bias else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, device=device, dtype=dtype))
            self.register_buffer("running_var", ones(num_features, device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked", zeros((), dtype=int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        if x.ndim not in self.dims or x.shape[1] != self.num_features:
            want = " or ".join(f"{d}-d" for d in self.dims)
            raise ShapeError(f"{type(self).__name__}({self.num_features}): expected {want} input "
                             f"with {self.num_features} channels on axis 1, got "
                             f"{tuple(x.shape)}")
        momentum = self.momentum
        if self.training and self.num_batches_tracked is not None:
            F._count_batch(self.num_batches_tracked)
            if momentum is None:  # cumulative moving average, as PyTorch
                momentum = 1.0 / int(self.num_batches_tracked.item())
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, momentum, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L). Init: gamma = 1, beta = 0 (the identity map),
    running mean 0 and variance 1, as PyTorch."""

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W). Init: gamma = 1, beta = 0, running mean 0, variance 1."""

    dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W). Init: gamma = 1, beta = 0, running mean 0, variance 1."""

    dims = (5,)


class LayerNorm(Module):
    """Normalise each sample over its trailing ``normalized_shape`` axes (init: gamma 1, beta 0)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = ns, eps
        self.elementwise_affine, self._bias = elementwise_affine, bool(bias)
        self.weight = Parameter(ones(*ns, device=device, dtype=dtype)) if elementwise_affine \
            else None
        self.bias = Parameter(zeros(*ns, device=device, dtype=dtype)) if elementwise_affine \
            and bias else None  # bias=False: a scale only, as PyTorch's

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self._bias}")
