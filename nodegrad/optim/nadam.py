"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

from collections.abc import Iterable

from .adam import update_moments
from .base import Optimizer, check_betas, check_named


class NAdam(Optimizer):
    r"""NAdam (Dozat, 2016): Adam whose first moment looks one step ahead, as Nesterov does.

    With gradient ``g_t`` (after ``maximize`` and weight decay λ: L2, or decoupled as in AdamW
    when ``decoupled_weight_decay``), betas (β₁, β₂), momentum decay ψ and learning rate η::

        μ_t = β₁ (1 - ½ · 0.96^(t ψ)),   Π_t = μ_1 ⋯ μ_t           (momentum warm-up)
        m_t = β₁ m_{t-1} + (1 - β₁) g_t,    v_t = β₂ v_{t-1} + (1 - β₂) g_t²
        d_t = √(v_t / (1 - β₂ᵗ)) + ε
        θ_t = θ_{t-1} - η (1 - μ_t) / (1 - Π_t) · g_t / d_t
                      - η μ_{t+1} / (1 - Π_t μ_{t+1}) · m_t / d_t

    The running product Π_t is per-parameter scalar state (``mu_product``). ``foreach``,
    ``capturable`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    scalar_init = {"mu_product": 1.0}

    def __init__(self, params: Iterable, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, strict: bool = False, flat: bool = True):
        name = type(self).__name__
        for key, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay),
                       ("momentum_decay", momentum_decay)):
            check_named(name, key, v)
        betas = check_betas(name, betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         strict=strict, flat=flat, foreach=foreach, capturable=capturable,
                         differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        (b1, b2), lr, psi, t = h["betas"], h["lr"], h["momentum_decay"], st.t
        m, v, d, tmp = st["exp_avg"], st["exp_avg_sq"], st.tmp(0), st.tmp(1)
        mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod = st.scalars["mu_product"] * mu
        st.scalars["mu_product"] = prod
        update_moments(xp, m, v, g, tmp, b1, b2)
        xp.divide(v, 1 - b2 ** t, out=d)
        xp.sqrt(d, out=d)
        d += h["eps"]
        xp.divide(g, d, out=tmp)
        tmp *= lr * (1.0 - mu) / (1.0 - prod)
        p -= tmp
        xp.divide(m, d, out=tmp)
        tmp *= lr * mu_next / (1.0 - prod * mu_next)
        p -= tmp
