"""Stochastic gradient descent with optional heavy-ball or Nesterov momentum."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Optimizer, check_hyper


class SGD(Optimizer):
    r"""Stochastic gradient descent (Robbins & Monro), with momentum (Polyak) or Nesterov's.

    With gradient ``g_t`` (negated if ``maximize``; plus ``λ θ_{t-1}`` for ``weight_decay`` λ),
    momentum μ, dampening τ and learning rate η::

        b_1 = g_1,   b_t = μ b_{t-1} + (1 - τ) g_t
        d_t = g_t + μ b_t (nesterov),   b_t (momentum),   g_t (μ = 0)
        θ_t = θ_{t-1} - η d_t

    This is PyTorch's form (η outside the buffer), so trajectories match ``torch.optim.SGD``.
    ``fused``: one compiled kernel per step where available (see :class:`Optimizer`);
    ``foreach`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1e-3, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, strict: bool = False, flat: bool = True):
        check_hyper("lr", lr)
        check_hyper("momentum", momentum)
        check_hyper("weight_decay", weight_decay)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), strict=strict, flat=flat, fused=fused,
                         foreach=foreach, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"momentum_buffer": 0.0} if h["momentum"] else {}

    def update(self, xp, p, g, st, h) -> None:
        mu, tmp = h["momentum"], st.tmp(0)
        d = g
        if mu:
            buf = st["momentum_buffer"]
            if st.t == 1:
                xp.copyto(buf, g)
            else:
                buf *= mu
                if h["dampening"]:
                    xp.multiply(g, 1 - h["dampening"], out=tmp)
                    buf += tmp
                else:
                    buf += g
            if h["nesterov"]:
                xp.multiply(buf, mu, out=tmp)
                tmp += g
                d = tmp
            else:
                d = buf
        xp.multiply(d, h["lr"], out=tmp)
        p -= tmp

    def fused_args(self, st, h) -> tuple[str, tuple, tuple, tuple]:
        mu, damp = h["momentum"], h["dampening"]
        return ("sgd", ("momentum_buffer" if mu else None,), (mu, 1 - damp, h["lr"]),
                (mu, st.t == 1, damp, h["nesterov"]))
