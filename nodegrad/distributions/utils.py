"""Conversions between probabilities and logits, as PyTorch's distributions make them, and the
rest of PyTorch's ``distributions.utils`` (``lazy_property``, ``broadcast_all``, the
lower-triangle packing ``tril_matrix_to_vec`` / ``vec_to_tril_matrix``, and the private
``_standard_normal`` and ``_sum_rightmost`` that user-written distributions call)."""

from __future__ import annotations

from functools import cached_property

from . import _ng as ng
from nodegrad.autodiff import enable_grad
from nodegrad.tensor import Tensor


class lazy_property(cached_property):  # noqa: N801  (PyTorch's name)
    """A property computed once per instance and cached, as PyTorch's ``lazy_property``: it is
    computed with the graph recorded (``enable_grad``), so a derived parameter first read inside
    ``no_grad`` (a ``sample()`` there reads ``probs``) still carries gradients when read later."""

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        with enable_grad():
            return super().__get__(instance, owner)


def __getattr__(name: str):
    """PyTorch's names defined in the modules that use them here (imported on first use: those
    modules import this one)."""
    if name in ("broadcast_all", "_sum_rightmost"):
        from . import distribution
        return getattr(distribution, name)
    if name in ("tril_matrix_to_vec", "vec_to_tril_matrix"):
        from . import transforms
        return getattr(transforms, "_" + name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _standard_normal(shape, dtype=None, device=None) -> Tensor:
    """N(0, 1) noise of ``shape``: PyTorch's private helper, which the ``rsample`` of a
    distribution written by a user calls."""
    return ng.randn(tuple(shape), dtype=dtype, device=device)


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
