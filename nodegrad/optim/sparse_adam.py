"""SparseAdam: lazy Adam, which moves only the rows of an embedding table that a step looked up."""

from __future__ import annotations

from collections.abc import Iterable

from ..tensor import Tensor
from .base import Optimizer, _plain, check_betas, check_named


class SparseAdam(Optimizer):
    r"""Lazy Adam for embedding tables (PyTorch's ``optim.SparseAdam``).

    With gradient ``g_t`` restricted to the rows ``R_t`` it touches (slices along dim 0), betas
    (β₁, β₂) and learning rate η, on those rows only::

        m_t = β₁ m_{t-1} + (1 - β₁) g_t          v_t = β₂ v_{t-1} + (1 - β₂) g_t²
        θ_t = θ_{t-1} - η √(1 - β₂ᵗ) / (1 - β₁ᵗ) · m_t / (√v_t + ε)

    Other rows keep their parameters and moments, so rare words are not dragged by stale
    momentum (word2vec, recommenders). Gradients here are dense: the rows of a step are those
    with a nonzero gradient entry, which are the looked-up rows of PyTorch's sparse gradient
    (``nn.Embedding(sparse=True)``) except a looked-up row whose gradient sums to exactly zero.
    """

    step_form = "int"  # PyTorch's SparseAdam keeps an int step

    def __init__(self, params: Iterable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 maximize: bool = False, *, strict: bool = False):
        name = type(self).__name__
        for key, v in (("lr", lr), ("eps", eps)):
            check_named(name, key, v)
            if not callable(v) and not _plain(None, key, v, 0) > 0:  # PyTorch's 0 < lr, 0 < eps
                raise ValueError(f"{name}: invalid {key}: {v} (expected > 0)")
        betas = check_betas(name, betas)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize),
                         strict=strict, flat=False)

    def add_param_group(self, param_group: dict) -> None:
        ps = param_group.get("params") if isinstance(param_group, dict) else None
        ps = [ps] if isinstance(ps, Tensor) else list(ps) if isinstance(ps, list | tuple) else []
        if any(isinstance(p, Tensor) and p.is_complex() for p in ps):
            raise ValueError("SparseAdam does not support complex parameters (as PyTorch's); "
                             "optimise their real view (view_as_real) or use Adam")
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.ndim == 0:
                raise ValueError("SparseAdam: parameters need at least one dimension (rows "
                                 "along dim 0), got a 0-d one")

    def state_init(self, h: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        shape = st.shape  # flat=False: one parameter at a time, p its flat view
        rows = shape[0]
        g2 = g.reshape(rows, -1)
        r = xp.nonzero(xp.any(g2 != 0, axis=1))[0]
        if r.size == 0:
            return
        b1, b2 = h["betas"]
        t = st.t
        p2 = p.reshape(rows, -1)
        m2, v2 = st["exp_avg"].reshape(rows, -1), st["exp_avg_sq"].reshape(rows, -1)
        gr, mr, vr = g2[r], m2[r], v2[r]
        mr += (gr - mr) * (1 - b1)  # PyTorch's order: m + (g - m)(1 - β₁)
        vr += (gr * gr - vr) * (1 - b2)
        m2[r], v2[r] = mr, vr
        step = h["lr"] * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t)
        p2[r] -= step * (mr / (xp.sqrt(vr) + h["eps"]))
