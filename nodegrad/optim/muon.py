"""Muon: momentum whose update is orthogonalised by a Newton-Schulz iteration (2-d weights)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .base import Optimizer, check_named, lerp_

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # PyTorch's (a, b, c): the quintic's steep slope at 0
NS_STEPS = 5
_ADJUST = (None, "original", "match_rms_adamw")


def zeropower_via_newtonschulz(xp, G, coefficients=NS_COEFFICIENTS, steps: int = NS_STEPS,
                               eps: float = 1e-7):
    """An approximately orthogonal matrix U S' Vᵀ (S' near 1) for G = U S Vᵀ, by ``steps`` of
    X ← a X + (b A + c A²) X with A = X Xᵀ, from X = G / max(‖G‖_F, eps) taken wide."""
    a, b, c = coefficients
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G
    X = X / max(float(xp.linalg.norm(X)), eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.T if tall else X


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape: tuple) -> float:
    """PyTorch's scaling of the step for a (rows, cols) weight: "original" (default)
    √max(1, rows/cols), "match_rms_adamw" 0.2 √max(rows, cols) (AdamW's update RMS)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    return lr * 0.2 * math.sqrt(max(rows, cols))


class Muon(Optimizer):
    r"""Muon (Jordan et al., 2024) as ``torch.optim.Muon``, for 2-d weights only. With gradient
    ``g_t`` (negated if ``maximize``), momentum μ, learning rate γ, weight decay λ::

        B_t = B_{t-1} + (1 - μ)(g_t - B_{t-1})              (B_0 = 0, PyTorch's lerp)
        B̃_t = g_t + μ (B_t - g_t)  (nesterov),   B_t  (otherwise)
        O_t = NewtonSchulz_k^{(a,b,c)}(B̃_t; ε)
        θ_t = θ_{t-1} (1 - γ λ) - AdjustLR(γ; shape) O_t

    The Newton-Schulz iteration runs in the parameter's dtype; PyTorch's rounds it to
    bfloat16 first, so its steps differ from these by bfloat16's rounding (~0.4%). Other
    parameters (biases, embeddings) belong to another optimiser, such as AdamW. The state
    (``momentum_buffer``) is PyTorch's. The orthogonalised update is dense even where the
    gradient is zero; pruning's step post-hook (:mod:`nodegrad.prune`) multiplies a pruned
    parameter by its mask after each step, so its pruned entries stay exactly zero.
    """

    torch_implied = {"maximize": False, "decoupled_weight_decay": True}
    step_form = None  # PyTorch's Muon keeps only ``momentum_buffer``
    supports_complex = False  # its orthogonalisation is a real matrix iteration, as PyTorch's

    def __init__(self, params: Iterable, lr=1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 *, maximize: bool = False, strict: bool = False):
        for key, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            check_named(type(self).__name__, key, v)
        if adjust_lr_fn not in _ADJUST:
            raise ValueError(f"Muon: adjust_lr_fn must be None, 'original' or "
                             f"'match_rms_adamw', got {adjust_lr_fn!r}")
        if not isinstance(ns_steps, int) or not 0 <= ns_steps < 100:
            raise ValueError(f"Muon: ns_steps must be an int in [0, 100), got {ns_steps!r}")
        if len(tuple(ns_coefficients)) != 3:
            raise ValueError(f"Muon: ns_coefficients must be 3 numbers (a, b, c), got "
                             f"{ns_coefficients!r}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=tuple(ns_coefficients),
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                                      maximize=maximize, decoupled_weight_decay=True),
                         strict=strict, flat=False)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.ndim != 2:
                raise ValueError(f"Muon only supports 2-d parameters, got one of shape "
                                 f"{tuple(p.shape)}")

    def state_init(self, h: dict) -> dict[str, float]:
        return {"momentum_buffer": 0.0}

    def update(self, xp, p, g, st, h) -> None:
        shape = st.shape  # flat=False: one parameter at a time, p its flat view
        mu, buf = h["momentum"], st["momentum_buffer"]
        lerp_(buf, g, 1 - mu)
        if h["nesterov"]:
            d = st.tmp(0)
            d[...] = g
            lerp_(d, buf, mu)
        else:
            d = buf
        O = zeropower_via_newtonschulz(xp, d.reshape(shape), h["ns_coefficients"],
                                       h["ns_steps"], h["eps"])
        p -= adjust_lr(h["lr"], h["adjust_lr_fn"], shape) * O.reshape(-1)
