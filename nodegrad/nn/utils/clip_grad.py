"""``torch.nn.utils.clip_grad``'s import path: the gradient clipping functions of
:mod:`nodegrad.nn.utils`, for code that imports them from here."""

from __future__ import annotations

from . import clip_grad_norm, clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_
from . import get_total_norm

__all__ = ["clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "clip_grads_with_norm_",
           "get_total_norm"]
