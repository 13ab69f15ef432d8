"""Normalisation: BatchNorm1d/2d (batch statistics in training, running ones in eval), LayerNorm."""

from __future__ import annotations

from ... import _backend as B
from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor, int64, ones, tensor, zeros
from .. import functional as F
from .. import init as I
from ..module import Module, Parameter


def _refill(t: Tensor, value) -> None:
    """Overwrite a parameter's or buffer's values in place (the object kept)."""
    t._data[...] = value
    t._bump()


def _norm_repr(layer: Module) -> str:
    """PyTorch's ``_NormBase.extra_repr`` (batch and instance norms)."""
    return (f"{layer.num_features}, eps={layer.eps}, momentum={layer.momentum}, "
            f"affine={layer.affine}, bias={layer.bias is not None}, "
            f"track_running_stats={layer.track_running_stats}")


class _BatchNorm(Module):
    dims: tuple = ()
    # PyTorch before 0.4.1 wrote no counter: such a checkpoint loads and keeps the current one
    _optional_buffers = ("num_batches_tracked",)
    _version = 2  # a state dict saved with version 2 metadata must hold the counter

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
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

    def reset_running_stats(self) -> None:
        """Running mean 0, variance 1 and the batch count 0 (when they are tracked)."""
        if self.running_mean is not None:
            _refill(self.running_mean, 0)
            _refill(self.running_var, 1)
        if self.num_batches_tracked is not None:
            _refill(self.num_batches_tracked, 0)

    def reset_parameters(self) -> None:
        """The running statistics reset, and gamma 1, beta 0 (PyTorch's init)."""
        self.reset_running_stats()
        if self.weight is not None:
            I.ones_(self.weight)
        if self.bias is not None:
            I.zeros_(self.bias)

    def forward(self, x):
        if x.ndim not in self.dims or x.shape[1] != self.num_features:
            want = " or ".join(f"{d}-d" for d in self.dims)
            raise ShapeError(f"{type(self).__name__}({self.num_features}): expected {want} input "
                             f"with {self.num_features} channels on axis 1, got "
                             f"{tuple(x.shape)}")
        momentum = 0.0 if self.momentum is None else self.momentum
        # as PyTorch: with track_running_stats turned off after construction, training neither
        # counts nor moves the statistics, and evaluation still normalises by them
        tracking = self.training and self.track_running_stats
        if tracking and self.num_batches_tracked is not None:
            F._count_batch(self.num_batches_tracked)
            if self.momentum is None:  # cumulative moving average, as PyTorch: 1 / the
                momentum = self.num_batches_tracked  # count, read by the update when it runs
        stats = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if stats else None,
                            self.running_var if stats else None, self.weight, self.bias,
                            self.training or self.running_mean is None, momentum, self.eps)

    def extra_repr(self) -> str:
        return _norm_repr(self)


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
        ns = ((int(normalized_shape),) if isinstance(normalized_shape, int | B.np.integer)
              else tuple(normalized_shape))
        self.normalized_shape, self.eps = ns, eps
        self.elementwise_affine = elementwise_affine
        self.weight = Parameter(ones(*ns, device=device, dtype=dtype)) if elementwise_affine \
            else None
        self.bias = Parameter(zeros(*ns, device=device, dtype=dtype)) if elementwise_affine \
            and bias else None  # bias=False: a scale only, as PyTorch's

    def reset_parameters(self) -> None:
        """gamma 1, beta 0 (PyTorch's init)."""
        if self.weight is not None:
            I.ones_(self.weight)
        if self.bias is not None:
            I.zeros_(self.bias)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class CrossMapLRN2d(Module):
    """Local response normalisation across channels of (N, C, H, W), PyTorch's legacy form:
    y = x (k + alpha/size · s)^-beta, where s sums x² over the channels c - ⌊(size-1)/2⌋ ...
    c + ⌊(size-1)/2⌋, kept as PyTorch's running sum keeps it (which also keeps channel 0's
    square in every window past the first ⌊(size-1)/2⌋ + 1 channels)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"CrossMapLRN2d: size must be a positive int, got {size!r}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) or input.ndim != 4:
            raise ValueError(f"CrossMapLRN2d: Expected input to be 4D (N, C, H, W), got "
                             f"{getattr(input, 'ndim', type(input).__name__)}D instead.")
        c = input.shape[1]
        pre = int((self.size - 1) / 2 + 1)
        cs = ops.cumsum(input * input, axis=1)
        ch = list(range(c))
        hi = tensor([min(j + pre - 1, c - 1) for j in ch], device=input.device)
        scale = ops.index_select(cs, 1, hi)
        if c > pre + 1:  # the running sum drops channels 1 .. c - pre, never channel 0
            lo = tensor([max(j - pre, 0) for j in ch], device=input.device)
            keep = tensor([j > pre for j in ch], device=input.device)
            dropped = ops.index_select(cs, 1, lo) - cs[:, :1]
            scale = scale - ops.where(ops.reshape(keep, (1, c, 1, 1)), dropped, 0.0)
        return input * (scale * (self.alpha / self.size) + self.k) ** -self.beta

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
