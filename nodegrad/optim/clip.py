"""Gradient clipping, in place on ``p.grad``: by global norm and by value.

Both work on the gradients' arrays, so under :func:`nodegrad.jit` each is one replayed step
(:func:`nodegrad.autodiff.effect`) that reads the ``.grad`` of that call."""

from __future__ import annotations

import math
from collections.abc import Iterable

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
    (N + 1e-6))`` (PyTorch's rule: the direction is kept, only the step shrinks). Returns ``N``
    as a 0-d tensor, taken before clipping. ``foreach`` (PyTorch's choice of kernel, the same
    values) is accepted and ignored.
    """
    return Tensor(_clip_norm(_params(parameters), float(max_norm), float(norm_type),
                             error_if_nonfinite))


@effect  # a list, not the caller's iterator: a jit replay calls it again
def _clip_norm(ps: list, max_norm: float, p: float, error_if_nonfinite: bool):
    grads = _grads(ps)
    if not grads:
        return CPU.xp.zeros(())
    xp = backend_of(grads[0].data).xp
    if p == math.inf:
        parts = [xp.abs(g.data).max() for g in grads if g.data.size]
        total = xp.max(xp.stack(parts)) if parts else xp.zeros((), grads[0].dtype)
    elif p == 2.0:
        total = xp.sqrt(sum(xp.vdot(g.data.reshape(-1), g.data.reshape(-1)) for g in grads))
    else:
        total = sum(xp.sum(xp.abs(g.data) ** p) for g in grads) ** (1.0 / p)
    total = xp.asarray(total)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {p} of the gradients is non-finite, so it "
                           "cannot be clipped; pass error_if_nonfinite=False to skip this check")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        xp.multiply(g.data, coef, out=g.data)
        g._bump()
    return total


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]``, in place
    (``foreach``: PyTorch's choice of kernel, the same values; accepted and ignored)."""
    _clip_value(_params(parameters), float(clip_value))


@effect
def _clip_value(ps: list, c: float) -> None:
    for g in _grads(ps):
        backend_of(g.data).xp.clip(g.data, -c, c, out=g.data)
        g._bump()
