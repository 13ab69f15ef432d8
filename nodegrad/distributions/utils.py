"""Conversions between probabilities and logits, as PyTorch's distributions make them."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.tensor import Tensor


def clamp_probs(probs: Tensor) -> Tensor:
    """``probs`` clamped to [eps, 1 - eps] for its dtype, so their logits are finite."""
    eps = float(ng.finfo(probs.dtype).eps)
    return ng.clamp(probs, eps, 1 - eps)


def probs_to_logits(probs: Tensor, is_binary: bool = False) -> Tensor:
    """Logits of (clamped) ``probs``: log-odds when ``is_binary``, else log-probabilities."""
    p = clamp_probs(probs)
    return ng.log(p) - ng.log1p(-p) if is_binary else ng.log(p)


def logits_to_probs(logits: Tensor, is_binary: bool = False) -> Tensor:
    """Probabilities of ``logits``: sigmoid when ``is_binary``, else softmax over the last dim."""
    return ng.sigmoid(logits) if is_binary else ng.softmax(logits, -1)
