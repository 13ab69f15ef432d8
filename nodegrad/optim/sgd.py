"""Stochastic gradient descent with optional heavy-ball or Nesterov momentum."""

from __future__ import annotations

from collections.abc import Iterable

from .. import _backend as B
from .base import Optimizer, alpha_of, check_named, rounded


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

    step_form = None  # PyTorch's SGD keeps only ``momentum_buffer`` (nothing without momentum)

    def __init__(self, params: Iterable, lr=1e-3, momentum=0.0, dampening=0.0,
                 weight_decay=0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, strict: bool = False, flat: bool = True):
        name = type(self).__name__
        for key, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            check_named(name, key, v)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError(f"{name}: Nesterov momentum requires a momentum and zero dampening, "
                             f"got momentum={momentum!r}, dampening={dampening!r}")
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

    def update_half(self, xp, p, g, st, h, decoupled: bool) -> None:
        """PyTorch's step on float16/bfloat16 parameters, rounding where it rounds: ``add``'s
        alpha (``lr``, ``weight_decay``) in the parameters' dtype, one rounding per op."""
        dt, f32 = p.dtype, B.np.float32
        d = g.astype(f32)
        if h["maximize"]:
            xp.negative(d, out=d)
        if h["weight_decay"]:  # grad.add(param, alpha=weight_decay)
            d = rounded(d + alpha_of(dt, h["weight_decay"]) * p.astype(f32), dt)
        mu = h["momentum"]
        if mu:
            buf = st["momentum_buffer"]
            if st.t == 1:
                buf[...] = d
            else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                b = rounded(buf.astype(f32) * f32(mu), dt)
                buf[...] = b + alpha_of(dt, 1 - h["dampening"]) * d
            if h["nesterov"]:  # grad.add(buf, alpha=momentum)
                d = rounded(d + alpha_of(dt, mu) * buf.astype(f32), dt)
            else:
                d = buf.astype(f32)
        p[...] = p.astype(f32) + alpha_of(dt, -h["lr"]) * d  # param.add_(grad, alpha=-lr)

    def fused_args(self, st, h) -> tuple[str, tuple, tuple, tuple]:
        mu, damp = h["momentum"], h["dampening"]
        return ("sgd", ("momentum_buffer" if mu else None,), (mu, 1 - damp, h["lr"]),
                (mu, st.t == 1, damp, h["nesterov"]))
