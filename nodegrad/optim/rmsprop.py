"""RMSprop: divide by a running root-mean-square of recent gradients."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Optimizer, check_named


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, lecture 6e): Adagrad with an exponential average instead of a sum.

    With gradient ``g_t`` (after ``maximize`` and L2 ``weight_decay``), smoothing α, momentum μ
    and learning rate η::

        v_t = α v_{t-1} + (1 - α) g_t²
        m_t = α m_{t-1} + (1 - α) g_t,   v̂_t = v_t - m_t²   (centered)   else v̂_t = v_t
        δ_t = g_t / (√v̂_t + ε)
        b_t = μ b_{t-1} + δ_t,   θ_t = θ_{t-1} - η b_t   (μ > 0)   else θ_t = θ_{t-1} - η δ_t

    ``centered`` divides by an estimate of the gradient's standard deviation instead of its RMS.
    ``fused``: one compiled kernel per step where available (see :class:`Optimizer`; PyTorch's
    RMSprop has none); ``capturable``, ``foreach`` and ``differentiable``: PyTorch's, see
    :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, strict: bool = False, flat: bool = True,
                 fused: bool | None = None):
        for name, v in (("lr", lr), ("alpha", alpha), ("eps", eps),
                        ("weight_decay", weight_decay), ("momentum", momentum)):
            check_named(type(self).__name__, name, v)
        if not callable(alpha) and alpha > 1:  # PyTorch takes it and its steps turn NaN
            raise ValueError(f"{type(self).__name__}: invalid alpha: {alpha} (expected a value "
                             "in [0, 1]: above 1 the running average of g² turns negative "
                             "and its square root NaN)")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize),
                         strict=strict, flat=flat, fused=fused, foreach=foreach,
                         capturable=capturable, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        init = {"square_avg": 0.0}
        if h["momentum"] > 0:
            init["momentum_buffer"] = 0.0
        if h["centered"]:
            init["grad_avg"] = 0.0
        return init

    def update(self, xp, p, g, st, h) -> None:
        alpha, v, tmp = h["alpha"], st["square_avg"], st.tmp(0)
        v *= alpha
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - alpha
        v += tmp
        if h["centered"]:
            m = st["grad_avg"]
            xp.subtract(g, m, out=tmp)
            tmp *= 1 - alpha
            m += tmp
            xp.multiply(m, m, out=tmp)
            xp.subtract(v, tmp, out=tmp)
            xp.sqrt(tmp, out=tmp)
        else:
            xp.sqrt(v, out=tmp)
        tmp += h["eps"]
        xp.divide(g, tmp, out=tmp)
        if h["momentum"] > 0:
            buf = st["momentum_buffer"]
            buf *= h["momentum"]
            buf += tmp
            xp.multiply(buf, h["lr"], out=tmp)
        else:
            tmp *= h["lr"]
        p -= tmp

    def fused_args(self, st, h) -> tuple[str, tuple, tuple, tuple]:
        alpha, centered, mom = h["alpha"], h["centered"], h["momentum"]
        return ("rmsprop", ("square_avg", "grad_avg" if centered else None,
                            "momentum_buffer" if mom > 0 else None),
                (alpha, 1 - alpha, h["eps"], mom, h["lr"]), (centered, mom > 0))
