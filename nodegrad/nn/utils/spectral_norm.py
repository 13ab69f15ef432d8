"""The older, hook-based ``nn.utils.spectral_norm``: parameter ``<name>_orig``, power-iteration
buffers ``<name>_u`` and ``<name>_v``, and ``<name>`` = W / σ recomputed before every forward
(with one more power-iteration step in training mode), as PyTorch."""

from __future__ import annotations

from ... import ops
from ...autodiff import no_grad
from ...random import randn
from ...tensor import Tensor
from .. import functional as F
from ..module import Module, Parameter

__all__ = ["SpectralNorm", "spectral_norm", "remove_spectral_norm"]


class SpectralNorm:
    """The forward pre-hook that sets ``module.<name>`` = W / σ(W)."""

    def __init__(self, name: str = "weight", n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12):
        if n_power_iterations <= 0:
            raise ValueError(f"spectral_norm: n_power_iterations must be positive, got "
                             f"{n_power_iterations}")
        self.name, self.dim, self.eps = name, dim, eps
        self.n_power_iterations = n_power_iterations

    def reshape_weight_to_matrix(self, weight: Tensor) -> Tensor:
        if self.dim:
            weight = ops.moveaxis(weight, self.dim, 0)
        return ops.reshape(weight, (weight.shape[0], -1))

    def compute_weight(self, module: Module, do_power_iteration: bool) -> Tensor:
        weight = getattr(module, self.name + "_orig")
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        mat = self.reshape_weight_to_matrix(weight)
        if do_power_iteration:
            with no_grad():
                m = mat.detach()
                for _ in range(self.n_power_iterations):
                    v.copy_(F.normalize(u @ m, dim=0, eps=self.eps))  # jit replays the writes
                    u.copy_(F.normalize(m @ v, dim=0, eps=self.eps))
        u, v = ops.copy(u), ops.copy(v)  # later updates must not touch the graph
        return weight / ops.sum(u * (mat @ v))

    def remove(self, module: Module) -> None:
        with no_grad():
            weight = self.compute_weight(module, do_power_iteration=False)
        for sfx in ("", "_u", "_v", "_orig"):
            delattr(module, self.name + sfx)
        module.register_parameter(self.name, Parameter(weight.detach()))

    def __call__(self, module: Module, inputs) -> None:
        setattr(module, self.name, self.compute_weight(module, module.training))

    @staticmethod
    def apply(module: Module, name: str, n_power_iterations: int, dim: int,
              eps: float) -> SpectralNorm:
        for hook in module._forward_pre_hooks:
            if isinstance(hook, SpectralNorm) and hook.name == name:
                raise RuntimeError(f"spectral_norm: {type(module).__name__} already has a "
                                   f"spectral_norm hook on {name!r}")
        weight = module._parameters.get(name)
        if weight is None:
            raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter named "
                             f"{name!r}")
        if not -max(weight.ndim, 1) <= dim < max(weight.ndim, 1):
            raise IndexError(f"spectral_norm: dim {dim} is out of range for a weight of shape "
                             f"{tuple(weight.shape)}")
        fn = SpectralNorm(name, n_power_iterations, dim + weight.ndim if dim < 0 else dim, eps)
        with no_grad():
            h, w = fn.reshape_weight_to_matrix(weight).shape
            kw = {"dtype": weight.dtype, "device": weight.device}
            u = F.normalize(randn(h, **kw), dim=0, eps=eps)
            v = F.normalize(randn(w, **kw), dim=0, eps=eps)
        delattr(module, name)
        module.register_parameter(name + "_orig", weight)
        setattr(module, name, weight.detach())
        module.register_buffer(name + "_u", u)
        module.register_buffer(name + "_v", v)
        module.register_forward_pre_hook(fn)
        return fn


def spectral_norm(module: Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> Module:
    """Re-parametrise ``module.<name>`` as W / σ(W) with ``<name>_orig`` trained and the
    power-iteration vectors in buffers ``<name>_u`` / ``<name>_v`` (PyTorch's older form;
    ``dim`` defaults to 0, or 1 for transposed convolutions)."""
    from ..layers.conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d

    if dim is None:
        dim = 1 if isinstance(module, ConvTranspose1d | ConvTranspose2d | ConvTranspose3d) else 0
    SpectralNorm.apply(module, name, n_power_iterations, dim, eps)
    return module


def remove_spectral_norm(module: Module, name: str = "weight") -> Module:
    """Undo :func:`spectral_norm`: ``<name>`` becomes a parameter holding W / σ (no further
    power iteration)."""
    for i, hook in enumerate(module._forward_pre_hooks):
        if isinstance(hook, SpectralNorm) and hook.name == name:
            hook.remove(module)
            del module._forward_pre_hooks[i]
            return module
    raise ValueError(f"remove_spectral_norm: spectral_norm of {name!r} not found in "
                     f"{type(module).__name__}")
