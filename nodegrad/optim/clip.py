"""Gradient clipping, in place on ``p.grad``: by global norm and by value.

Both work on the gradients' arrays, so under :func:`nodegrad.jit` each is one replayed step
(:func:`nodegrad.autodiff.effect`) that reads the ``.grad`` of that call."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .. import _backend as B
from .._backend import CPU, backend_of
from ..autodiff import effect
from ..tensor import Tensor


def _params(parameters: Iterable[Tensor] | Tensor) -> list[Tensor]:
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _grads(ps: list[Tensor]) -> list[Tensor]:
    return [p.grad for p in ps if p.grad is not None]


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> Tensor:
    r"""Scale all gradients together so their joint norm is at most ``max_norm``.

    The norm is taken over all gradients as if concatenated into one vector,
    ``N = ‖(‖g_1‖_p, …, ‖g_k‖_p)‖_p``; every gradient is multiplied by ``min(1, max_norm /
    (N + 1e-6))`` (PyTorch's rule: the direction is kept, only the step shrinks). Any
    ``norm_type`` of ``torch.linalg.vector_norm`` works: inf (largest |g|), -inf (smallest),
    0 (count of non-zeros), and any other p, fractional or negative. Returns ``N`` as a 0-d
    tensor, taken before clipping, in the gradients' (promoted) dtype, float32 zero when there
    are no gradients; float16 gradients are summed in float32 so their squares cannot
    overflow. ``foreach`` (PyTorch's choice of kernel, the same values) is accepted and ignored.
    """
    return Tensor._of(_clip_norm(_params(parameters), float(max_norm), float(norm_type),
                             error_if_nonfinite))


@effect  # a list, not the caller's iterator: a jit replay calls it again
def _clip_norm(ps: list, max_norm: float, p: float, error_if_nonfinite: bool):
    grads = _grads(ps)
    if not grads:  # PyTorch's default-dtype zero
        return CPU.xp.zeros((), B.DEFAULT_FLOAT)
    xp = backend_of(grads[0]._data).xp
    # a complex gradient's norm is real (of |g|, as torch.linalg.vector_norm's)
    total_dtype = B.np.result_type(*[_real(g.dtype) for g in grads])
    with B.np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # an empty gradient adds nothing to any p-norm of the norms, so it is left out
        norms = [_vector_norm(xp, g._data.reshape(-1), p).astype(_real(g.dtype))
                 for g in grads if g._data.size]
        total = xp.asarray(_vector_norm(xp, xp.stack(norms), p).astype(total_dtype) if norms
                           else xp.zeros((), total_dtype))
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {p} of the gradients is "
                           "non-finite, so it cannot be clipped; pass error_if_nonfinite=False "
                           "to skip this check")
    with B.np.errstate(over="ignore"):  # a float16 quotient past 65504 is inf, then 1
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        xp.multiply(g._data, coef, out=g._data)
        g._bump()
    return total


def _real(dt):
    """The float dtype of a complex dtype's width; any other dtype itself."""
    if dt.kind != "c":
        return dt
    return B.np.dtype(B.np.float64 if dt.itemsize == 16 else B.np.float32)


def _vector_norm(xp, a, p: float):
    """The ``p``-norm of the 1-D array ``a`` as ``torch.linalg.vector_norm``: max |a| for inf,
    min |a| for -inf, the count of non-zeros for 0. Half precision is summed in float32 (so
    squares past 65504 do not overflow), and the result is in the accumulation dtype. A complex
    ``a`` is measured by its moduli |a|: the 2-norm as that of its real view (re, im pairs)."""
    if a.dtype.kind == "c":
        if p == 2:
            a = xp.ascontiguousarray(a).view(_real(a.dtype))
        else:
            a = xp.abs(a)
    if a.dtype.itemsize < 4:
        a = a.astype(B.float32)
    if p == math.inf:
        return xp.max(xp.abs(a))
    if p == -math.inf:
        return xp.min(xp.abs(a))
    if p == 0:
        return xp.asarray(xp.count_nonzero(a), dtype=a.dtype)
    if p == 1:
        return xp.sum(xp.abs(a))
    if p == 2:
        return xp.sqrt(xp.vdot(a, a))
    return xp.sum(xp.abs(a) ** p) ** (1.0 / p)


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]``, in place
    (``foreach``: PyTorch's choice of kernel, the same values; accepted and ignored)."""
    _clip_value(_params(parameters), float(clip_value))


@effect
def _clip_value(ps: list, c: float) -> None:
    grads = _grads(ps)
    for g in grads:
        if g.dtype.kind == "c":
            raise NotImplementedError(
                f"clip_grad_value_: a gradient has dtype {g.dtype}; clamping is not defined for "
                "complex numbers (as in PyTorch): clip the real and imaginary parts of the real "
                "view, or clip by norm with clip_grad_norm_")
    for g in grads:
        backend_of(g._data).xp.clip(g._data, -c, c, out=g._data)
        g._bump()
