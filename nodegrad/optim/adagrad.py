"""Adagrad: per-coordinate step sizes from the running sum of squared gradients."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Optimizer, check_named


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011): divide by the root of all past squared gradients.

    With gradient ``g_t`` (after ``maximize`` and L2 ``weight_decay``), learning rate η, decay
    ``lr_decay`` δ and accumulator start ``s_0`` = ``initial_accumulator_value``::

        η_t = η / (1 + (t - 1) δ)
        s_t = s_{t-1} + g_t²
        θ_t = θ_{t-1} - η_t g_t / (√s_t + ε)

    Coordinates with large past gradients take small steps: a diagonal preconditioner that
    only shrinks, which suits sparse features and hurts long non-convex runs.
    ``fused``: one compiled kernel per step where available (see :class:`Optimizer`);
    ``foreach`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    state_at_init = True  # PyTorch's Adagrad has its state (step 0, sum) from construction

    def __init__(self, params: Iterable, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False,
                 fused: bool | None = None, strict: bool = False, flat: bool = True):
        for name, v in (("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay),
                        ("initial_accumulator_value", initial_accumulator_value), ("eps", eps)):
            check_named(type(self).__name__, name, v)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), strict=strict, flat=flat,
                         fused=fused, foreach=foreach, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"sum": h["initial_accumulator_value"]}

    def update(self, xp, p, g, st, h) -> None:
        s, tmp = st["sum"], st.tmp(0)
        clr = h["lr"] / (1 + (st.t - 1) * h["lr_decay"])
        xp.multiply(g, g, out=tmp)
        s += tmp
        xp.sqrt(s, out=tmp)
        tmp += h["eps"]
        xp.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp

    def fused_args(self, st, h) -> tuple[str, tuple, tuple, tuple]:
        clr = h["lr"] / (1 + (st.t - 1) * h["lr_decay"])
        return "adagrad", ("sum",), (h["eps"], clr), ()
