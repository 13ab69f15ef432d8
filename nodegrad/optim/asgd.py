"""ASGD: SGD with a decaying step and a running (Polyak–Ruppert) average of the iterates."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Optimizer, check_named


class ASGD(Optimizer):
    r"""Averaged SGD (Polyak & Juditsky, 1992), in PyTorch's form.

    With gradient ``g_t`` (after ``maximize`` and L2 ``weight_decay``), per-parameter step
    ``η`` (the lr at the first step) and averaging weight ``μ`` (1 at first)::

        θ_t = (1 - λ η_{t-1}) θ_{t-1} - η_{t-1} g_t
        ā_t = ā_{t-1} + μ_{t-1} (θ_t - ā_{t-1})       (ā_t = θ_t while μ = 1)
        η_t = lr / (1 + λ lr t)^α,    μ_t = 1 / max(1, t - t₀)

    The average ``ax`` (state, as PyTorch's) is the estimate to evaluate once averaging has
    begun (after ``t0`` steps); the parameters themselves follow plain decaying-step SGD.
    ``eta`` and ``mu`` are per-parameter numbers of the state, kept in float64.
    ``foreach``, ``capturable`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    scalar_init = {"eta": 0.0, "mu": 1.0}

    def __init__(self, params: Iterable, lr=1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                 t0: float = 1e6, weight_decay=0.0, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False,
                 *, strict: bool = False, flat: bool = True):
        check_named("ASGD", "lr", lr)
        check_named("ASGD", "lambd", lambd)
        check_named("ASGD", "alpha", alpha)
        check_named("ASGD", "t0", t0)
        check_named("ASGD", "weight_decay", weight_decay)
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                      weight_decay=weight_decay, maximize=maximize),
                         strict=strict, flat=flat, foreach=foreach, capturable=capturable,
                         differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"ax": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        sc, t, lr, lambd = st.scalars, st.t, h["lr"], h["lambd"]
        if t == 1:
            sc["eta"], sc["mu"] = float(lr), 1.0
        eta, mu, ax, tmp = sc["eta"], sc["mu"], st["ax"], st.tmp(0)
        p *= 1 - lambd * eta
        xp.multiply(g, eta, out=tmp)
        p -= tmp
        if mu != 1:
            xp.subtract(p, ax, out=tmp)
            tmp *= mu
            ax += tmp
        else:
            xp.copyto(ax, p)
        sc["eta"] = lr / ((1 + lambd * lr * t) ** h["alpha"])
        sc["mu"] = 1 / max(1, t - h["t0"])
