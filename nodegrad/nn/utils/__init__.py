"""``nn.utils`` as PyTorch users know it: gradient clipping (the functions of
:mod:`nodegrad.optim.clip`, plus the total norm and clipping by a given norm), the parameters
as one flat vector, packed sequences (:mod:`.rnn`), weight re-parametrisations
(:mod:`.parametrize`, :mod:`.parametrizations` and the older hook-based ``weight_norm`` /
``spectral_norm``), batch-norm fusion (:mod:`.fusion`), ``skip_init`` and
:mod:`.stateless`."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable

from ... import ops
from ...autodiff import modes, no_grad
from ...errors import DeviceError, ShapeError
from ...optim.clip import clip_grad_norm_, clip_grad_value_
from ...ops import concatenate, reshape
from ...tensor import Tensor, tensor

from . import rnn
from . import parametrize, parametrizations, stateless, fusion
from . import prune
from .fusion import (fuse_conv_bn_eval, fuse_conv_bn_weights, fuse_linear_bn_eval,
                     fuse_linear_bn_weights)
from .spectral_norm import remove_spectral_norm, spectral_norm
from .weight_norm import remove_weight_norm, weight_norm

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_grads_with_norm_",
           "get_total_norm", "parameters_to_vector", "vector_to_parameters", "skip_init",
           "rnn", "parametrize", "parametrizations", "stateless", "fusion", "prune",
           "fuse_conv_bn_eval", "fuse_conv_bn_weights", "fuse_linear_bn_eval",
           "fuse_linear_bn_weights", "weight_norm", "remove_weight_norm", "spectral_norm",
           "remove_spectral_norm", "clip_grad", "convert_parameters"]


def _tensors(ts, fn: str) -> list[Tensor]:
    """``ts`` as a list of tensors; anything else in it (None included: a missing gradient
    must be left out by the caller, as PyTorch requires) is a TypeError."""
    out = [ts] if isinstance(ts, Tensor) else list(ts)
    for t in out:
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: expected tensors, got {type(t).__name__}")
    return out


def get_total_norm(tensors: Iterable[Tensor] | Tensor, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """The ``norm_type``-norm of ``tensors`` (usually gradients) taken as one vector: the norm
    of their norms, a 0-d tensor (0.0 for none). Pair it with :func:`clip_grads_with_norm_` to
    clip by a norm computed (or all-reduced) separately. ``foreach`` is accepted and unused."""
    ts = _tensors(tensors, "get_total_norm")
    p = float(norm_type)
    if not ts:
        return tensor(0.0)
    devices = {t.device for t in ts}
    if len(devices) > 1:
        raise DeviceError(f"get_total_norm: the tensors are on several devices "
                          f"({sorted(devices)}); move them to one first")
    norms = [ops.vector_norm(ops.reshape(t, (-1,)), p) for t in ts]
    dts = {n.dtype for n in norms}
    if len(dts) > 1:  # norms of several float dtypes: the widest, as PyTorch promotes
        wide = max(dts, key=lambda d: d.itemsize)
        norms = [n.astype(wide) for n in norms]
    total = ops.vector_norm(ops.stack(norms), p)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"get_total_norm: the total norm of order {p} is non-finite, so it "
                           "cannot be clipped; pass error_if_nonfinite=False to skip this check")
    return total


def clip_grads_with_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                          total_norm: Tensor | float, foreach: bool | None = None) -> None:
    """Scale every gradient in place by min(1, ``max_norm`` / (``total_norm`` + 1e-6)), as
    PyTorch (the second half of :func:`clip_grad_norm_`, with the norm given)."""
    grads = [p.grad for p in _tensors(parameters, "clip_grads_with_norm_")
             if p.grad is not None]
    coef = min(float(max_norm) / (float(total_norm) + 1e-6), 1.0)
    with no_grad():
        for g in grads:
            g._data *= coef
            g._bump()


def clip_grad_norm(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                   norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: bool | None = None) -> Tensor:
    """PyTorch's deprecated name of :func:`clip_grad_norm_` (warns, then calls it)."""
    warnings.warn("nn.utils.clip_grad_norm is deprecated (as in PyTorch) in favour of "
                  "nn.utils.clip_grad_norm_", FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite)


def skip_init(module_cls: type, *args, **kwargs):
    """An instance of ``module_cls`` whose ``reset_parameters`` is not run while it is built:
    its parameters' values are unspecified, for the caller to fill (PyTorch's ``skip_init``).
    As PyTorch, the class must take a ``device`` argument; ``device`` places the module."""
    if not isinstance(module_cls, type):
        raise TypeError(f"skip_init: expected a Module class, got {type(module_cls).__name__}")
    if "device" not in inspect.signature(module_cls).parameters:
        raise RuntimeError(f"skip_init: {module_cls.__name__} must take a 'device' argument "
                           "to skip initialization")
    m = module_cls.__new__(module_cls)
    object.__setattr__(m, "reset_parameters", lambda *a, **k: None)
    try:
        m.__init__(*args, **kwargs)
    finally:
        object.__delattr__(m, "reset_parameters")
    return m


def _one_device(ps: list[Tensor], op: str) -> None:
    devices = {p.device for p in ps}
    if len(devices) > 1:
        raise DeviceError(f"{op}: the parameters are on several devices ({sorted(devices)}); "
                          "move them to one first")


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    """The parameters flattened and joined into one vector (differentiable), in order."""
    ps = list(parameters)
    _one_device(ps, "parameters_to_vector")
    return concatenate([reshape(p, (-1,)) for p in ps])


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    """Point each parameter's ``data`` at the next slice of the 1-D ``vec``, in order, as
    PyTorch's: the parameters view ``vec`` (a later change of ``vec`` shows in them) and take
    its dtype; ``vec`` must hold exactly their number of elements. Under a jit trace the
    slices are copied in instead (recorded, so each replay writes them again)."""
    ps = list(parameters)
    _one_device(ps, "vector_to_parameters")
    if not isinstance(vec, Tensor):  # PyTorch's TypeError
        raise TypeError(f"vector_to_parameters: expected a 1-D Tensor, got "
                        f"{type(vec).__name__}")
    if vec.ndim != 1:
        raise ShapeError(f"vector_to_parameters: expected a 1-D tensor, got shape "
                         f"{tuple(vec.shape)}")
    total = sum(p.numel() for p in ps)
    if vec.shape[0] != total:
        raise ShapeError(f"vector_to_parameters: the vector has {vec.shape[0]} elements, the "
                         f"parameters {total}")
    i, traced = 0, modes().jit is not None
    with no_grad():
        for p in ps:
            n = p.numel()
            piece = vec.to(p.device)[i:i + n]
            if traced:
                p.copy_(piece.reshape(p.shape).astype(p.dtype))
            else:
                p.data = piece.reshape(tuple(p.shape))
            i += n


# PyTorch's submodule import paths (nn.utils.clip_grad, nn.utils.convert_parameters): they
# re-export the functions above, so they are imported once those are defined
from . import clip_grad, convert_parameters  # noqa: E402
