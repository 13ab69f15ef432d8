r"""Losses: least squares, robust regression, and classification through a stable log-softmax.

Cross-entropy is the notes' −log z_l = −(y_l − log Σ exp y_k), computed as ``log_softmax``
(maximum subtracted), so logits of ±1e4 give finite losses and gradients.
"""

from __future__ import annotations

import math

from .. import ops
from ..batching import values
from ..errors import DTypeError, ShapeError
from ..ops.nn import binary_cross_entropy as _bce
from ..tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str, op: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _same_shape(a: Tensor, b: Tensor, op: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ShapeError(f"{op}: input shape {tuple(a.shape)} and target shape "
                         f"{tuple(b.shape)} differ")


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """(input − target)², the notes' least-squares loss."""
    _same_shape(input, target, "mse_loss")
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """|input − target|."""
    _same_shape(input, target, "l1_loss")
    return _reduce(ops.abs(input - target), reduction, "l1_loss")


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean",
               delta: float = 1.0) -> Tensor:
    """½d² for |d| < delta, else delta·(|d| − ½delta): quadratic near 0, linear in the tails."""
    _same_shape(input, target, "huber_loss")
    d = ops.abs(input - target)
    quad = ops.minimum(d, delta)
    return _reduce(quad * quad * 0.5 + (d - quad) * delta, reduction, "huber_loss")


def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str = "mean",
                   beta: float = 1.0) -> Tensor:
    """Huber loss divided by ``beta`` (PyTorch's smooth L1)."""
    if beta == 0:
        return l1_loss(input, target, reduction)
    return huber_loss(input, target, reduction, beta) / beta


def _class_target(target: Tensor, n_classes: int, ignore_index: int, op: str) -> None:
    if target.dtype.kind not in "iu":
        raise DTypeError(f"{op}: class targets must be integers, got {target.dtype}")
    d = values(target)  # inside vmap: every example's targets
    bad = (d < 0) | (d >= n_classes)
    if ignore_index is not None:
        bad &= d != ignore_index
    if bool(bad.any()):
        v = int(d[bad].reshape(-1)[0])
        raise IndexError(f"{op}: target {v} is out of range for {n_classes} classes "
                         f"(expected 0..{n_classes - 1}"
                         + (f" or ignore_index={ignore_index})" if ignore_index is not None
                            else ")"))


def _check_logits(input: Tensor, target: Tensor, op: str) -> None:
    if input.ndim < 1:
        raise ShapeError(f"{op}: input needs a class axis, got a scalar")
    if input.ndim == 1:
        want = ()
    else:
        want = (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != want:
        raise ShapeError(f"{op}: for input of shape {tuple(input.shape)} (N, C, ...) class "
                         f"targets must have shape {want}, got {tuple(target.shape)}")


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """−input[target] for log-probabilities ``input`` (N, C, ...); weighted mean over targets."""
    _check_logits(input, target, "nll_loss")
    axis = 0 if input.ndim == 1 else 1
    c = input.shape[axis]
    _class_target(target, c, ignore_index, "nll_loss")
    keep = target != ignore_index
    safe = ops.where(keep, target, 0)
    picked = ops.squeeze(ops.take_along_axis(input, ops.expand_dims(safe, axis), axis), axis)
    w = keep.astype(input.dtype)
    if weight is not None:
        w = w * weight[safe]
    loss = -picked * w
    if reduction == "mean":
        return loss.sum() / w.sum()
    return _reduce(loss, reduction, "nll_loss")


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits (N, C, ...) against class indices or probabilities.

    With class indices, ``ignore_index`` entries count for nothing and the weighted mean
    divides by the summed weights of the kept targets (PyTorch's convention). With
    ``label_smoothing`` ε the target is (1 − ε)·one-hot + ε/C.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    axis = 0 if input.ndim == 1 else 1
    logp = ops.log_softmax(input, axis=axis)
    c = input.shape[axis]
    wshape = (c,) + (1,) * (input.ndim - 2) if input.ndim > 1 else (c,)
    if target.dtype.kind == "f":  # class probabilities
        if tuple(target.shape) != tuple(input.shape):
            raise ShapeError(
                f"cross_entropy: a float target is read as class probabilities (soft labels) "
                f"and needs the input's shape {tuple(input.shape)}, got "
                f"{tuple(target.shape)}; for class indices pass an integer tensor "
                "(target.long())")
        t = target if label_smoothing == 0 else target * (1 - label_smoothing) + label_smoothing / c
        terms = -logp * t
        if weight is not None:
            terms = terms * ops.reshape(weight, wshape)
        return _reduce(ops.sum(terms, axis=axis), reduction, "cross_entropy")
    loss = nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing == 0:
        return loss
    keep = (target != ignore_index).astype(input.dtype)
    smooth = -logp if weight is None else -logp * ops.reshape(weight, wshape)
    smooth = ops.sum(smooth, axis=axis) * keep
    if reduction == "mean":
        if weight is None:
            smooth = smooth.sum() / keep.sum()
        else:
            safe = ops.where(target != ignore_index, target, 0)
            smooth = smooth.sum() / (weight[safe] * keep).sum()
    else:
        smooth = _reduce(smooth, reduction, "cross_entropy")
    return loss * (1 - label_smoothing) + smooth * (label_smoothing / c)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """−[t log p + (1 − t) log(1 − p)] for probabilities p; logs clamped at −100 and the
    gradient finite at p = 0 or 1, with PyTorch's values and gradients."""
    _same_shape(input, target, "binary_cross_entropy")
    p = values(input)
    if bool((~((p >= 0) & (p <= 1))).any()):
        raise ValueError("binary_cross_entropy: input must hold probabilities in [0, 1] (got "
                         "values outside it, or NaN); for logits use "
                         "binary_cross_entropy_with_logits")
    loss = _bce(input, target)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """BCE of sigmoid(input), computed from the logits without overflow."""
    _same_shape(input, target, "binary_cross_entropy_with_logits")
    # log(1 + e^-x) = −log sigmoid(x), stable for large |x|; its gradient is −sigmoid(−x)
    # everywhere, x = 0 included
    softplus_neg = ops.softplus(-input, threshold=math.inf)
    if pos_weight is None:
        loss = (1 - target) * input + softplus_neg
    else:
        loss = (1 - target) * input + ((pos_weight - 1) * target + 1) * softplus_neg
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def kl_div(input: Tensor, target: Tensor, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """KL(target ‖ q) with ``input`` = log q; 'batchmean' divides by the batch size."""
    _same_shape(input, target, "kl_div")
    if log_target:
        loss = ops.exp(target) * (target - input)
    else:
        pos = target > 0
        safe = ops.where(pos, target, 1.0)
        loss = ops.where(pos, target * (ops.log(safe) - input), 0.0)
    if reduction == "batchmean":
        return loss.sum() / (input.shape[0] if input.ndim else 1)
    return _reduce(loss, reduction, "kl_div")
