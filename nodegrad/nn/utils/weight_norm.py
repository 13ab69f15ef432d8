"""The older, hook-based ``nn.utils.weight_norm`` (PyTorch deprecates it in favour of
``nn.utils.parametrizations.weight_norm``): parameters ``<name>_g`` and ``<name>_v``, and
``<name>`` recomputed as a plain attribute before every forward."""

from __future__ import annotations

import warnings

from ..module import Module, Parameter
from .parametrizations import _check_dim, _norm_except_dim, _weight_norm

__all__ = ["WeightNorm", "weight_norm", "remove_weight_norm"]


class WeightNorm:
    """The forward pre-hook that sets ``module.<name>`` = g · v / ‖v‖ from its parameters."""

    def __init__(self, name: str, dim: int):
        self.name, self.dim = name, dim

    def compute_weight(self, module: Module):
        return _weight_norm(getattr(module, self.name + "_v"),
                            getattr(module, self.name + "_g"), self.dim)

    @staticmethod
    def apply(module: Module, name: str, dim: int | None) -> WeightNorm:
        for hook in module._forward_pre_hooks:
            if isinstance(hook, WeightNorm) and hook.name == name:
                raise RuntimeError(f"weight_norm: {type(module).__name__} already has a "
                                   f"weight_norm hook on {name!r}")
        dim = -1 if dim is None else dim
        weight = module._parameters.get(name)
        if weight is None:
            raise ValueError(f"weight_norm: {type(module).__name__} has no parameter named "
                             f"{name!r}")
        _check_dim("weight_norm", dim, weight)
        fn = WeightNorm(name, dim)
        del module._parameters[name]
        module.register_parameter(name + "_g",
                                  Parameter(_norm_except_dim(weight.detach(), dim).detach()))
        module.register_parameter(name + "_v", Parameter(weight.detach()))
        setattr(module, name, fn.compute_weight(module))
        module.register_forward_pre_hook(fn)
        return fn

    def remove(self, module: Module) -> None:
        weight = self.compute_weight(module)
        delattr(module, self.name)
        del module._parameters[self.name + "_g"]
        del module._parameters[self.name + "_v"]
        setattr(module, self.name, Parameter(weight.detach()))

    def __call__(self, module: Module, inputs) -> None:
        setattr(module, self.name, self.compute_weight(module))


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    """Re-parametrise ``module.<name>`` as g · v / ‖v‖ with parameters ``<name>_g`` and
    ``<name>_v`` (PyTorch's deprecated form; the norm is over every axis but ``dim``, the whole
    tensor for None or -1)."""
    warnings.warn("nn.utils.weight_norm is deprecated (as in PyTorch) in favour of "
                  "nn.utils.parametrizations.weight_norm", FutureWarning, stacklevel=2)
    WeightNorm.apply(module, name, dim)
    return module


def remove_weight_norm(module: Module, name: str = "weight") -> Module:
    """Undo :func:`weight_norm`: ``<name>`` becomes a parameter holding its current value."""
    for i, hook in enumerate(module._forward_pre_hooks):
        if isinstance(hook, WeightNorm) and hook.name == name:
            hook.remove(module)
            del module._forward_pre_hooks[i]
            return module
    raise ValueError(f"remove_weight_norm: weight_norm of {name!r} not found in "
                     f"{type(module).__name__}")
