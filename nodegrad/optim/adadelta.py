"""Adadelta: RMSprop whose step size comes from the running RMS of past updates."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Optimizer, check_named


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012): unit-correct steps, ratio of update RMS to gradient RMS.

    With gradient ``g_t`` (after ``maximize`` and L2 ``weight_decay``), decay ρ and an extra
    factor η (``lr``, 1 in the paper)::

        v_t = ρ v_{t-1} + (1 - ρ) g_t²
        Δ_t = √(u_{t-1} + ε) / √(v_t + ε) · g_t
        u_t = ρ u_{t-1} + (1 - ρ) Δ_t²
        θ_t = θ_{t-1} - η Δ_t

    ``foreach``, ``capturable`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                 foreach: bool | None = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False, strict: bool = False,
                 flat: bool = True):
        name = type(self).__name__
        for key, v in (("lr", lr), ("rho", rho), ("eps", eps), ("weight_decay", weight_decay)):
            check_named(name, key, v)
        if not callable(rho) and not rho <= 1.0:
            raise ValueError(f"{name}: invalid rho: {rho} (expected [0, 1])")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), strict=strict, flat=flat,
                         foreach=foreach, capturable=capturable, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"square_avg": 0.0, "acc_delta": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        rho, eps = h["rho"], h["eps"]
        v, u = st["square_avg"], st["acc_delta"]
        std, delta = st.tmp(0), st.tmp(1)
        v *= rho
        xp.multiply(g, g, out=std)
        std *= 1 - rho
        v += std
        xp.add(v, eps, out=std)
        xp.sqrt(std, out=std)
        xp.add(u, eps, out=delta)
        xp.sqrt(delta, out=delta)
        delta /= std
        delta *= g
        u *= rho
        xp.multiply(delta, delta, out=std)
        std *= 1 - rho
        u += std
        delta *= h["lr"]
        p -= delta
