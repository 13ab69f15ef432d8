"""Rprop: per-element step sizes that grow while the gradient keeps its sign, shrink on a flip."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Optimizer, check_named


class Rprop(Optimizer):
    r"""Resilient backpropagation (Riedmiller & Braun, 1993), PyTorch's variant (no backtracking).

    Each element keeps its own step size ``Δ`` (``lr`` at its first step) and the previous
    gradient ``g_{t-1}``; with etas (η⁻, η⁺) and step-size bounds [Δ_min, Δ_max]::

        s = sign(g_t g_{t-1})
        Δ_t = clip(Δ_{t-1} · (η⁺ if s > 0, η⁻ if s < 0, 1 if s = 0), Δ_min, Δ_max)
        g_t ← 0 where s < 0           (a sign flip: no move now, and no flip counted next time)
        θ_t = θ_{t-1} - sign(g_t) Δ_t

    Only the gradient's sign is used, so Rprop suits full-batch training, not minibatches.
    ``maximize`` negates the gradient. The state is PyTorch's: ``prev``, ``step_size``.
    ``capturable``, ``foreach`` and ``differentiable``: PyTorch's, see :class:`Optimizer`.
    """

    def __init__(self, params: Iterable, lr=1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, strict: bool = False, flat: bool = True):
        check_named("Rprop", "lr", lr)
        if (not isinstance(etas, tuple | list) or len(etas) != 2
                or not 0.0 < etas[0] < 1.0 < etas[1]):
            raise ValueError(f"Rprop: invalid etas {etas!r} (expected (etaminus, etaplus) with "
                             "0 < etaminus < 1 < etaplus)")
        if (not isinstance(step_sizes, tuple | list) or len(step_sizes) != 2
                or not 0.0 <= step_sizes[0] <= step_sizes[1]):
            raise ValueError(f"Rprop: invalid step_sizes {step_sizes!r} (expected (min, max) "
                             "with 0 <= min <= max)")
        super().__init__(params, dict(lr=lr, etas=tuple(etas), step_sizes=tuple(step_sizes),
                                      maximize=maximize), strict=strict, flat=flat,
                         foreach=foreach, capturable=capturable, differentiable=differentiable)

    def state_init(self, h: dict) -> dict[str, float]:
        return {"prev": 0.0, "step_size": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        eminus, eplus = h["etas"]
        smin, smax = h["step_sizes"]
        prev, size = st["prev"], st["step_size"]
        if st.t == 1:  # PyTorch fills the step sizes with the lr of the group's first step
            size.fill(h["lr"])
        s, f = st.tmp(0), st.tmp(1)
        xp.multiply(g, prev, out=s)
        xp.sign(s, out=s)
        flip = s < 0
        f.fill(1.0)
        xp.copyto(f, eplus, where=s > 0)
        xp.copyto(f, eminus, where=flip)
        size *= f
        xp.clip(size, smin, smax, out=size)
        xp.copyto(prev, g)
        xp.copyto(prev, 0.0, where=flip)
        xp.sign(prev, out=s)
        s *= size
        p -= s
