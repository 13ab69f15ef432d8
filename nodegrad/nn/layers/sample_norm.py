"""Normalisation by statistics of each sample: GroupNorm, InstanceNorm1d/2d/3d,
LocalResponseNorm and RMSNorm, with PyTorch's parameters, buffers and defaults."""

from __future__ import annotations

from ...errors import ShapeError
from ...tensor import Tensor, _shape_arg, int64, ones, zeros
from .. import functional as F
from .. import init as I
from ..module import Module, Parameter
from .norm import _BatchNorm, _norm_repr


class GroupNorm(Module):
    """Normalise each sample over groups of channels; per-channel affine (init 1 / 0)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None, *, bias: bool = True):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = (num_groups, num_channels,
                                                                     eps, affine)
        kw = dict(device=device, dtype=dtype)
        self.weight = Parameter(ones(num_channels, **kw)) if affine else None
        self.bias = Parameter(zeros(num_channels, **kw)) if affine and bias else None

    def reset_parameters(self) -> None:
        """gamma 1, beta 0 (PyTorch's init)."""
        if self.weight is not None:
            I.ones_(self.weight)
        if self.bias is not None:
            I.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ShapeError(f"GroupNorm({self.num_groups}, {self.num_channels}): expected "
                             f"(N, {self.num_channels}, ...), got {tuple(x.shape)}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


class _InstanceNorm(Module):
    nd: int = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        kw = dict(device=device, dtype=dtype)
        self.weight = Parameter(ones(num_features, **kw)) if affine else None
        self.bias = Parameter(zeros(num_features, **kw)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, **kw))
            self.register_buffer("running_var", ones(num_features, **kw))
            self.register_buffer("num_batches_tracked", zeros((), dtype=int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    reset_running_stats = _BatchNorm.reset_running_stats
    reset_parameters = _BatchNorm.reset_parameters

    def forward(self, x: Tensor) -> Tensor:
        name, nd = type(self).__name__, self.nd
        if x.ndim not in (nd + 1, nd + 2) or (x.shape[-nd - 1] != self.num_features and
                                               (self.affine or self.track_running_stats)):
            raise ShapeError(f"{name}({self.num_features}): expected ({self.num_features} "
                             f"channels, {nd} spatial axes) with or without a batch axis, got "
                             f"{tuple(x.shape)}")
        unbatched = x.ndim == nd + 1
        if unbatched:
            x = x[None]
        use_input_stats = self.training or not self.track_running_stats
        # as PyTorch: momentum=None leaves the running statistics where they are (there is no
        # cumulative average here) and num_batches_tracked stays 0 (kept for state_dict only)
        momentum = 0.0 if self.momentum is None else self.momentum
        y = F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            use_input_stats, momentum, self.eps)
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        return _norm_repr(self)


class InstanceNorm1d(_InstanceNorm):
    """Normalise each channel of each sample of (N, C, L) or (C, L) over L."""

    nd = 1


class InstanceNorm2d(_InstanceNorm):
    """Normalise each channel of each sample of (N, C, H, W) or (C, H, W) over H, W."""

    nd = 2


class InstanceNorm3d(_InstanceNorm):
    """Normalise each channel of each sample of (N, C, D, H, W) over D, H, W."""

    nd = 3


class LocalResponseNorm(Module):
    """Divide by a power of the mean square of ``size`` neighbouring channels (AlexNet's LRN)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class RMSNorm(Module):
    """Scale each sample to unit root-mean-square over ``normalized_shape`` (weight init 1)."""

    def __init__(self, normalized_shape, eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None):
        super().__init__()
        try:  # an int or a sequence of them; NumPy integers too
            ns = _shape_arg((normalized_shape,))
        except TypeError as e:
            raise TypeError(f"RMSNorm: normalized_shape: {e}") from None
        self.normalized_shape, self.eps = ns, eps
        self.elementwise_affine = elementwise_affine
        self.weight = Parameter(ones(*ns, device=device, dtype=dtype)) if elementwise_affine \
            else None

    def reset_parameters(self) -> None:
        """Weight 1 (PyTorch's init)."""
        if self.weight is not None:
            I.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
