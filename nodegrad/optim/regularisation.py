"""Explicit regularisation terms to add to a loss."""

from __future__ import annotations

from collections.abc import Iterable

from ..tensor import Tensor


def l2_penalty(params: Iterable[Tensor], gamma: float) -> Tensor:
    r"""The notes' L2 penalty ``γ ‖θ‖² = γ Σ_i Σ θ_i²`` as a differentiable scalar.

    Its gradient is ``2γθ``, so ``loss + l2_penalty(ps, γ)`` under SGD is the same as SGD with
    ``weight_decay=2γ``; under Adam the two differ from decoupled decay (see ``AdamW``).
    """
    total = None
    for p in params:
        term = (p * p).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("l2_penalty: got no parameters")
    return total * gamma
