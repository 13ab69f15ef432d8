"""RAdam and Adamax: Adam with a rectified adaptive step, and Adam with the infinity norm."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .adam import update_moments
from .base import Optimizer, check_betas, check_named


class RAdam(Optimizer):
    r"""RAdam (Liu et al., 2020): Adam whose adaptive step is switched on only once the variance
    of its second-moment estimate is tractable, and then rectified.

    With gradient ``g_t`` (after ``maximize`` and weight decay λ: L2, or decoupled as in AdamW
    when ``decoupled_weight_decay``), betas (β₁, β₂) and learning rate η::

        m_t = β₁ m_{t-1} + (1 - β₁) g_t,    v_t = β₂ v_{t-1} + (1 - β₂) g_t²
        ρ_∞ = 2 / (1 - β₂) - 1,    ρ_t = ρ_∞ - 2 t β₂ᵗ / (1 - β₂ᵗ)
        ρ_t > 5:  θ_t = θ_{t-1} - η r_t √(1 - β₂ᵗ) / (√v_t + ε) · m_t / (1 - β₁ᵗ)
                  r_t = √((ρ_t - 4)(ρ_t - 2) ρ_∞ / ((ρ_∞ - 4)(ρ_∞ - 2) ρ_t))
        else:     θ_t = θ_{t-1} - η m_t / (1 - β₁ᵗ)                   (SGD with momentum)

    ``foreach``, ``capturable`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, strict: bool = False, flat: bool = True):
        name = type(self).__name__
        for key, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            check_named(name, key, v)
        betas = check_betas(name, betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         strict=strict, flat=flat, foreach=foreach, capturable=capturable,
                         differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        (b1, b2), lr, t = h["betas"], h["lr"], st.t
        m, v, tmp, d = st["exp_avg"], st["exp_avg_sq"], st.tmp(0), st.tmp(1)
        update_moments(xp, m, v, g, tmp, b1, b2)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        xp.divide(m, bc1, out=tmp)                                   # the corrected m
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2 ** t / bc2
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                             / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            xp.sqrt(v, out=d)
            d += h["eps"]
            xp.divide(math.sqrt(bc2), d, out=d)                     # the adaptive lr
            tmp *= lr
            tmp *= d
            tmp *= rect
        else:
            tmp *= lr
        p -= tmp


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2015, §7): Adam with the second moment replaced by an
    exponentially weighted infinity norm.

    With gradient ``g_t`` (after ``maximize`` and L2 ``weight_decay``)::

        m_t = β₁ m_{t-1} + (1 - β₁) g_t,    u_t = max(β₂ u_{t-1}, |g_t| + ε)
        θ_t = θ_{t-1} - η / (1 - β₁ᵗ) · m_t / u_t

    ``foreach``, ``capturable`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, strict: bool = False,
                 flat: bool = True):
        name = type(self).__name__
        for key, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            check_named(name, key, v)
        betas = check_betas(name, betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), strict=strict, flat=flat,
                         foreach=foreach, capturable=capturable, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_inf": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        (b1, b2), t = h["betas"], st.t
        m, u, tmp = st["exp_avg"], st["exp_inf"], st.tmp(0)
        xp.subtract(g, m, out=tmp)
        tmp *= 1 - b1
        m += tmp
        u *= b2
        xp.abs(g, out=tmp)
        tmp += h["eps"]
        xp.maximum(u, tmp, out=u)
        xp.divide(m, u, out=tmp)
        tmp *= h["lr"] / (1 - b1 ** t)
        p -= tmp
