"""``nn.utils.parametrizations`` as PyTorch users know it: weight normalisation and spectral
normalisation as parametrizations (:mod:`.parametrize`), with PyTorch's names, buffers and
results."""

from __future__ import annotations

from ... import ops
from ...autodiff import no_grad
from ...random import randn
from ...tensor import Tensor
from .. import functional as F
from ..module import Module
from .parametrize import register_parametrization

__all__ = ["weight_norm", "spectral_norm"]


def _norm_except_dim(v: Tensor, dim: int) -> Tensor:
    """The 2-norm of ``v`` over every axis but ``dim``, keeping the axes (PyTorch's
    ``norm_except_dim``); ``dim`` -1 means the norm of the whole tensor, a 0-d result."""
    if dim == -1:
        return ops.vector_norm(v, 2)
    d = dim + v.ndim if dim < 0 else dim
    axes = tuple(a for a in range(v.ndim) if a != d)
    return ops.vector_norm(v, 2, dim=axes, keepdim=True) if axes else ops.abs(v)


def _check_dim(fn: str, dim: int, weight: Tensor) -> None:
    if dim != -1 and not -weight.ndim <= dim < weight.ndim:
        raise IndexError(f"{fn}: dim {dim} is out of range for a weight of shape "
                         f"{tuple(weight.shape)}")


def _weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    return v * (g / _norm_except_dim(v, dim))


class _WeightNorm(Module):
    """weight = g · v / ‖v‖ (the norm over every axis but ``dim``), from (g, v)."""

    def __init__(self, dim: int | None = 0):
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return _weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return _norm_except_dim(weight, self.dim), weight


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    """Re-parametrise ``module.<name>`` as g · v / ‖v‖, training magnitude g
    (``parametrizations.<name>.original0``) and direction v (``original1``) apart, as
    PyTorch. The norm is over every axis but ``dim`` (one g per output unit with 0); ``dim``
    None or -1 takes the norm of the whole tensor. A state dict with the older ``<name>_g`` /
    ``<name>_v`` keys still loads."""
    w = module._parameters.get(name, module._buffers.get(name))
    if isinstance(w, Tensor):
        _check_dim("weight_norm", -1 if dim is None else dim, w)
    register_parametrization(module, name, _WeightNorm(dim), unsafe=True)

    def compat(mod, state_dict, prefix, *_):
        g, v = f"{prefix}{name}_g", f"{prefix}{name}_v"
        if g in state_dict and v in state_dict:
            state_dict[f"{prefix}parametrizations.{name}.original0"] = state_dict.pop(g)
            state_dict[f"{prefix}parametrizations.{name}.original1"] = state_dict.pop(v)

    module.register_load_state_dict_pre_hook(compat)
    return module


class _SpectralNorm(Module):
    """weight / σ, σ the largest singular value of the weight as a matrix (axis ``dim`` first,
    the rest flattened), estimated by power iteration with the buffers ``_u`` and ``_v``, which
    each forward in training mode refines by ``n_power_iterations`` steps (PyTorch's)."""

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12):
        super().__init__()
        nd = weight.ndim
        if not -nd <= dim < max(nd, 1):
            raise IndexError(f"spectral_norm: dim {dim} is out of range for a weight of shape "
                             f"{tuple(weight.shape)}")
        if n_power_iterations <= 0:
            raise ValueError(f"spectral_norm: n_power_iterations must be positive, got "
                             f"{n_power_iterations}")
        self.dim = dim + nd if dim < 0 else dim
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        if nd > 1:
            with no_grad():
                mat = self._matrix(weight)
                h, w = mat.shape
                kw = {"dtype": weight.dtype, "device": weight.device}
                self.register_buffer("_u", F.normalize(randn(h, **kw), dim=0, eps=eps))
                self.register_buffer("_v", F.normalize(randn(w, **kw), dim=0, eps=eps))
            self._power_method(mat, 15)

    def _matrix(self, weight: Tensor) -> Tensor:
        if self.dim:
            weight = ops.moveaxis(weight, self.dim, 0)
        return ops.reshape(weight, (weight.shape[0], -1))

    def _power_method(self, mat: Tensor, n: int) -> None:
        """``n`` steps u ← normalize(W v), v ← normalize(Wᵀ u), written into the buffers."""
        with no_grad():
            mat = mat.detach()
            for _ in range(n):
                for buf, new in (("_u", lambda: mat @ self._v), ("_v", lambda: self._u @ mat)):
                    t = getattr(self, buf)
                    t.copy_(F.normalize(new(), dim=0, eps=self.eps))  # jit replays it too

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        mat = self._matrix(weight)
        if self.training:
            self._power_method(mat, self.n_power_iterations)
        u, v = ops.copy(self._u), ops.copy(self._v)  # later updates must not touch the graph
        return weight / ops.sum(u * (mat @ v))

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(module: Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> Module:
    """Re-parametrise ``module.<name>`` as W / σ(W), σ its spectral norm, as PyTorch: σ comes
    from power iteration whose vectors are the buffers ``parametrizations.<name>.0._u`` and
    ``_v``, refined at each access in training mode and frozen in eval mode. ``dim`` (default
    0, or 1 for transposed convolutions) is the output axis."""
    from ..layers.conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d

    w = module._parameters.get(name, module._buffers.get(name))
    if not isinstance(w, Tensor):
        raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter or buffer "
                         f"named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, ConvTranspose1d | ConvTranspose2d | ConvTranspose3d) else 0
    register_parametrization(module, name, _SpectralNorm(w, n_power_iterations, dim, eps))
    return module
