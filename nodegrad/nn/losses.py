r"""Losses: least squares, robust regression, and classification through a stable log-softmax.

Cross-entropy is the notes' −log z_l = −(y_l − log Σ exp y_k), computed as ``log_softmax``
(maximum subtracted), so logits of ±1e4 give finite losses and gradients.
"""

from __future__ import annotations

import math
import warnings

from .. import _backend as B
from .. import ops
from ..amp import float32_in_region
from ..autodiff import computes_with_values, effect, modes, no_grad
from ..batching import values
from ..errors import DTypeError, ShapeError
from ..ops.nn import _ce as _fused_ce
from ..ops.nn import binary_cross_entropy as _bce
from ..ops.nn import check_class_targets
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


def _broadcast_target(a: Tensor, b: Tensor, op: str, stacklevel: int = 3) -> None:
    """PyTorch's rule for the regression losses: shapes that differ but broadcast are used
    broadcast, with its warning (a (N,) target against (N, 1) outputs is a common slip);
    shapes that do not broadcast raise."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    if sa == sb:
        return
    try:
        B.np.broadcast_shapes(sa, sb)
    except ValueError:
        raise ShapeError(f"{op}: input shape {sa} and target shape {sb} differ and do not "
                         "broadcast") from None
    warnings.warn(f"{op}: using a target size ({sb}) that is different to the input size "
                  f"({sa}). This will likely lead to incorrect results due to broadcasting. "
                  "Please ensure they have the same size.", UserWarning, stacklevel=stacklevel)


def _float_input(op: str, *operands: Tensor) -> None:
    """Refuse operands none of which is floating: PyTorch computes these losses in a floating
    dtype and raises for integer or bool ones (here they gave a float32 loss of them)."""
    if all(isinstance(x, Tensor) and not B.is_inexact(x.dtype) for x in operands):
        got = " and ".join(str(x.dtype) for x in operands)
        raise DTypeError(f"{op}: expected a floating-point input, got {got} (as PyTorch); "
                         "convert it with .float()")


def _legacy_reduction(op: str, size_average, reduce, reduction: str,
                      stacklevel: int = 3) -> str:
    """PyTorch's deprecated ``size_average``/``reduce`` flags as a ``reduction``, by PyTorch's
    rule (an unset flag counts as True; reduce False → 'none', else size_average False → 'sum',
    else 'mean') and with its warning. A reduction name in the ``size_average`` place is the
    earlier positional form ``loss(input, target, 'sum')`` and is taken as the reduction."""
    if isinstance(size_average, str):
        return size_average
    if size_average is None and reduce is None:
        return reduction
    keep = True if reduce is None else reduce
    if keep:
        out = "mean" if (True if size_average is None else size_average) else "sum"
    else:
        out = "none"
    warnings.warn(f"{op}: size_average and reduce are deprecated (as in PyTorch); use "
                  f"reduction={out!r} instead", UserWarning, stacklevel=stacklevel)
    return out


def _weighted(loss: Tensor, weight: Tensor, input: Tensor, reduction: str, op: str,
              normalise: bool) -> Tensor:
    """``loss * weight`` reduced; a weighted 'mean' divides by Σ weight when ``normalise``
    (PyTorch's mse_loss and l1_loss), else by the element count (its huber_loss)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{op}: weight must be a Tensor, got {type(weight).__name__}")
    if tuple(weight.shape) != tuple(loss.shape):
        raise ValueError(f"{op}: weight must have the input's shape {tuple(loss.shape)}, got "
                         f"{tuple(weight.shape)}")
    loss = loss * weight
    if reduction == "mean" and normalise:
        return loss.sum() / weight.sum()
    return _reduce(loss, reduction, op)


def mse_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
             reduce: bool | None = None, reduction: str = "mean",
             weight: Tensor | None = None) -> Tensor:
    """(input − target)², the notes' least-squares loss; with ``weight`` (input's shape) the
    weighted squares, whose 'mean' is Σ w·d² / Σ w (PyTorch's)."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("mse_loss", size_average, reduce, reduction)
    _float_input("mse_loss", input, target)
    _broadcast_target(input, target, "mse_loss")
    input, target = float32_in_region(input, target)  # autocast: a float32 op (PyTorch's)
    d = input - target
    if weight is None:
        return _reduce(d * d, reduction, "mse_loss")
    return _weighted(d * d, weight, input, reduction, "mse_loss", True)


def l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
            reduce: bool | None = None, reduction: str = "mean",
            weight: Tensor | None = None) -> Tensor:
    """|input − target|; with ``weight`` (input's shape) a 'mean' of Σ w·|d| / Σ w."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("l1_loss", size_average, reduce, reduction)
    _float_input("l1_loss", input, target)
    _broadcast_target(input, target, "l1_loss")
    input, target = float32_in_region(input, target)
    if weight is None:
        return _reduce(ops.abs(input - target), reduction, "l1_loss")
    return _weighted(ops.abs(input - target), weight, input, reduction, "l1_loss", True)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """½d² for |d| < delta, else delta·(|d| − ½delta): quadratic near 0, linear in the tails.
    With ``weight`` (input's shape) each term is scaled and 'mean' stays the plain mean of the
    weighted terms (PyTorch's)."""
    _float_input("huber_loss", input)
    return _huber(input, target, reduction, delta, weight, "huber_loss")


def _huber(input, target, reduction, delta, weight, op: str) -> Tensor:
    if not delta > 0:
        raise ValueError(f"{op}: delta must be positive, got {delta}")
    _broadcast_target(input, target, op, stacklevel=4)
    input, target = float32_in_region(input, target)
    d = ops.abs(input - target)
    quad = ops.minimum(d, delta)
    loss = quad * quad * 0.5 + (d - quad) * delta
    if weight is None:
        return _reduce(loss, reduction, op)
    return _weighted(loss, weight, input, reduction, op, False)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                   reduce: bool | None = None, reduction: str = "mean",
                   beta: float = 1.0) -> Tensor:
    """Huber loss divided by ``beta`` (PyTorch's smooth L1)."""
    if size_average is not None or reduce is not None:
        if isinstance(size_average, str) and reduce is not None:  # (reduction, beta) by place
            beta, reduce = reduce, None
        reduction = _legacy_reduction("smooth_l1_loss", size_average, reduce, reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    _float_input("smooth_l1_loss", input, target)
    if beta == 0:
        _broadcast_target(input, target, "smooth_l1_loss", stacklevel=3)
        input, target = float32_in_region(input, target)
        return _reduce(ops.abs(input - target), reduction, "smooth_l1_loss")
    return _huber(input, target, reduction, beta, None, "smooth_l1_loss") / beta


def _class_target(target: Tensor, n_classes: int, ignore_index: int, op: str,
                  host_checked: bool = False) -> None:
    """Integer class indices in range; with ``host_checked``, NumPy targets are left to the
    op's forward, which checks them itself (so also in a compiled program's replay)."""
    if target.dtype.kind not in "iu":
        raise DTypeError(f"{op}: class targets must be integers, got {target.dtype}")
    t = values(target)  # under vmap: all examples
    if not (host_checked and type(t) is B.ndarray):
        check_class_targets(t, n_classes, ignore_index, op)


def _check_logits(input: Tensor, target: Tensor, op: str) -> Tensor:
    """The class targets, of the shape (N, d1, ...) the input (N, C, d1, ...) asks for; a (C,)
    input takes a scalar target or, as in PyTorch, a (1,) one (returned as a scalar)."""
    if input.ndim < 1:
        raise ShapeError(f"{op}: input needs a class axis, got a scalar")
    if input.ndim == 1:
        want = ()
        if tuple(target.shape) == (1,):
            return ops.reshape(target, ())
    else:
        want = (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != want:
        raise ShapeError(f"{op}: for input of shape {tuple(input.shape)} (N, C, ...) class "
                         f"targets must have shape {want}, got {tuple(target.shape)}")
    return target


def _class_weight(weight, c: int, op: str) -> None:
    """A per-class ``weight`` must be a 1-D tensor of the C classes (PyTorch's rule); a longer
    one would otherwise be indexed without complaint."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{op}: weight must be a Tensor, got {type(weight).__name__}")
    if tuple(weight.shape) != (c,):
        raise ShapeError(f"{op}: weight must be a 1-D tensor with one entry per class ({c}), "
                         f"got shape {tuple(weight.shape)}")


def _class_legacy(op: str, size_average, ignore_index, reduce, reduction: str):
    """(ignore_index, reduction, the value in ``reduce``'s place) of a call that set
    size_average or reduce: a reduction name in ``ignore_index``'s place is the earlier
    positional form (weight, ignore_index, reduction, label_smoothing)."""
    if isinstance(ignore_index, str):
        return size_average, ignore_index, reduce
    return ignore_index, _legacy_reduction(op, size_average, reduce, reduction, 4), None


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             size_average: bool | None = None, ignore_index: int = -100,
             reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """−input[target] for log-probabilities ``input`` (N, C, ...); weighted mean over targets.
    ``size_average`` and ``reduce`` are PyTorch's deprecated forms of ``reduction``."""
    if size_average is not None or reduce is not None:
        ignore_index, reduction, _ = _class_legacy("nll_loss", size_average, ignore_index,
                                                   reduce, reduction)
    _float_input("nll_loss", input)
    (input,) = float32_in_region(input)
    target = _check_logits(input, target, "nll_loss")
    axis = 0 if input.ndim == 1 else 1
    c = input.shape[axis]
    _class_target(target, c, ignore_index, "nll_loss")
    if weight is not None:
        _class_weight(weight, c, "nll_loss")
    keep = target != ignore_index
    safe = ops.where(keep, target, 0)
    if c:
        picked = ops.squeeze(ops.take_along_axis(input, ops.expand_dims(safe, axis), axis), axis)
    else:  # no classes: every target is ignored (checked above), as PyTorch allows
        picked = ops.sum(input, axis=axis)
    picked = ops.where(keep, picked, 0.0)  # an ignored row's -inf (a masked one) counts 0, not NaN
    w = keep.astype(input.dtype)
    if weight is not None and c:
        w = w * weight[safe]
    loss = -picked * w
    if reduction == "mean":
        total = w.sum()
        empty = total == 0  # every target ignored: NaN, as PyTorch, with zero gradients
        return ops.where(empty, float("nan"), loss.sum() / ops.where(empty, 1.0, total))
    return _reduce(loss, reduction, "nll_loss")


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average: bool | None = None, ignore_index: int = -100,
                  reduce: bool | None = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy of logits (N, C, ...) against class indices or probabilities.

    With class indices, ``ignore_index`` entries count for nothing and the weighted mean
    divides by the summed weights of the kept targets (PyTorch's convention). With
    ``label_smoothing`` ε the target is (1 − ε)·one-hot + ε/C. ``size_average`` and
    ``reduce`` are PyTorch's deprecated forms of ``reduction``.
    """
    _float_input("cross_entropy", input)
    input, target, weight = float32_in_region(input, target, weight)  # autocast: float32
    if size_average is not None or reduce is not None:
        ignore_index, reduction, smoothing = _class_legacy("cross_entropy", size_average,
                                                           ignore_index, reduce, reduction)
        if smoothing is not None:
            label_smoothing = smoothing
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    axis = 0 if input.ndim == 1 else 1
    if target.dtype.kind in "iu":
        target = _check_logits(input, target, "cross_entropy")
    if (target.dtype.kind in "iu" and weight is None and label_smoothing == 0
            and reduction in _REDUCTIONS and B.is_float(input.dtype) and input.shape[axis]):
        # the common case in one fused primitive: log-softmax, pick and reduce in one pass
        _class_target(target, input.shape[axis], ignore_index, "cross_entropy",
                      host_checked=True)
        return _fused_ce(input, target, axis=axis, ignore_index=ignore_index,
                         reduction=reduction)
    c = input.shape[axis]
    if weight is not None:
        _class_weight(weight, c, "cross_entropy")
    logp = ops.log_softmax(input, axis=axis)
    wshape = (c,) + (1,) * (input.ndim - 2) if input.ndim > 1 else (c,)
    if B.is_float(target.dtype):  # class probabilities
        if tuple(target.shape) != tuple(input.shape):
            raise ShapeError(
                f"cross_entropy: a float target is read as class probabilities (soft labels) "
                f"and needs the input's shape {tuple(input.shape)}, got "
                f"{tuple(target.shape)}; for class indices pass an integer tensor "
                "(target.long())")
        if ignore_index != -100:
            raise ValueError(f"cross_entropy: ignore_index ({ignore_index}) is not supported "
                             "with class-probability (float) targets, as in PyTorch")
        t = target if label_smoothing == 0 or c == 0 else (
            target * (1 - label_smoothing) + label_smoothing / c)
        # a class of probability 0 at a -inf logit (a masked class) adds 0 (0 · log 0 = 0, as
        # kl_div), where PyTorch's 0 · -inf is NaN; elsewhere the target's gradient is −log p
        # there, as PyTorch's
        terms = -ops.where((t == 0) & (logp == -math.inf), 0.0, logp) * t
        if weight is not None:
            terms = terms * ops.reshape(weight, wshape)
        loss = ops.sum(terms, axis=axis)
        if reduction == "mean" and c == 0:  # PyTorch's mean divides by numel / C: 0 / 0
            return loss.sum() * math.nan
        return _reduce(loss, reduction, "cross_entropy")
    loss = nll_loss(logp, target, weight, ignore_index=ignore_index, reduction=reduction)
    if label_smoothing == 0:
        return loss
    kept = target != ignore_index
    keep = kept.astype(input.dtype)
    smooth = -logp if weight is None else -logp * ops.reshape(weight, wshape)
    # ignored rows count 0 (their -inf logits too, which times 0 would be NaN)
    smooth = ops.where(kept, ops.sum(smooth, axis=axis), 0.0)
    if reduction == "mean":
        total = keep.sum() if weight is None or not c else (
            weight[ops.where(kept, target, 0)] * keep).sum()
        empty = total == 0  # every target ignored: NaN with zero gradients, as nll_loss
        smooth = ops.where(empty, float("nan"), smooth.sum() / ops.where(empty, 1.0, total))
    else:
        smooth = _reduce(smooth, reduction, "cross_entropy")
    return loss * (1 - label_smoothing) + smooth * (label_smoothing / c if c else math.nan)


def linear_cross_entropy(input: Tensor, linear_weight: Tensor, target: Tensor, *,
                         linear_bias: Tensor | None = None, weight: Tensor | None = None,
                         reduction: str = "mean", ignore_index: int | None = None,
                         label_smoothing: float = 0.0, options=None) -> Tensor:
    """``cross_entropy(linear(input, linear_weight, linear_bias), target)``: a linear head
    scored in one call. ``linear_weight`` is (C, in) or (C, d1, ..., dK, in) for a
    K-dimensional loss (batched input then); ``ignore_index`` None means -100 for class indices
    and must stay None for class probabilities. ``options`` (PyTorch's chunking strategy, a
    memory optimisation) is accepted; the logits are formed whole, with the same values and
    gradients."""
    op = "linear_cross_entropy"
    if input.ndim not in (1, 2):
        raise ShapeError(f"{op}: input must be (in_features,) or (N, in_features), got "
                         f"{tuple(input.shape)}")
    if linear_weight.ndim < 2 or linear_weight.shape[-1] != input.shape[-1]:
        raise ShapeError(f"{op}: linear_weight must be (C, ..., in_features) with in_features "
                         f"= {input.shape[-1]}, got {tuple(linear_weight.shape)}")
    c, extra = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (c, *extra):
        raise ShapeError(f"{op}: linear_bias must have shape {(c, *extra)}, got "
                         f"{tuple(linear_bias.shape)}")
    if extra and input.ndim == 1:
        raise ShapeError(f"{op}: a K-dimensional loss (linear_weight "
                         f"{tuple(linear_weight.shape)}) needs batched input (N, "
                         f"{input.shape[-1]}), got {tuple(input.shape)}")
    shape = (*input.shape[:-1], c, *extra)
    if ignore_index is None:
        ignore_index = -100
    elif tuple(target.shape) == shape:
        raise ValueError(f"{op}: ignore_index cannot be given when the target holds class "
                         "probabilities")
    if extra:
        rows = math.prod(extra, start=c)
        linear_weight = ops.reshape(linear_weight, (rows, input.shape[-1]))
        if linear_bias is not None:
            linear_bias = ops.reshape(linear_bias, (rows,))
    logits = ops.linear(input, linear_weight, linear_bias)
    if extra:
        logits = ops.reshape(logits, shape)
    return cross_entropy(logits, target, weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)


@effect  # under nodegrad.jit a replayed step: every call's probabilities are checked
def _check_probabilities(input: Tensor, target: Tensor) -> None:
    p = values(input)
    if bool((~((p >= 0) & (p <= 1))).any()):
        raise ValueError("binary_cross_entropy: input must hold probabilities in [0, 1] (got "
                         "values outside it, or NaN); for logits use "
                         "binary_cross_entropy_with_logits")
    t = values(target)
    if bool((~((t >= 0) & (t <= 1))).any()):
        raise ValueError("binary_cross_entropy: target must hold values in [0, 1] (got values "
                         "outside it, or NaN), as PyTorch requires")


def _check_weight_fits(weight, input: Tensor, name: str, op: str) -> None:
    """``weight`` (or ``pos_weight``) scales the elementwise loss: it must broadcast to the
    input's shape without enlarging it (PyTorch's rule; a larger one would silently change the
    'none' shape and the mean's count)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(weight).__name__}")
    shape = tuple(input.shape)
    try:
        fits = tuple(B.np.broadcast_shapes(tuple(weight.shape), shape)) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(f"{op}: {name} of shape {tuple(weight.shape)} must broadcast to the "
                         f"input's shape {shape}")


@effect  # the same for gaussian_nll_loss's variances
def _check_variances(var: Tensor) -> None:
    if bool((values(var) < 0).any()):
        raise ValueError("gaussian_nll_loss: var has negative entries")


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average: bool | None = None, reduce: bool | None = None,
                         reduction: str = "mean") -> Tensor:
    """−[t log p + (1 − t) log(1 − p)] for probabilities p; logs clamped at −100 and the
    gradient finite at p = 0 or 1, with PyTorch's values and gradients."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("binary_cross_entropy", size_average, reduce, reduction)
    _same_shape(input, target, "binary_cross_entropy")
    if target.dtype != input.dtype or not B.is_float(input.dtype):  # PyTorch's rule
        raise DTypeError(f"binary_cross_entropy: input and target must have the same floating "
                         f"dtype, got {input.dtype} and {target.dtype}; convert the target "
                         "with .to(input.dtype)")
    _check_probabilities(input, target)
    loss = _bce(input, target)
    if weight is not None:
        _check_weight_fits(weight, input, "weight", "binary_cross_entropy")
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None,
                                     size_average: bool | None = None,
                                     reduce: bool | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """BCE of sigmoid(input), computed from the logits without overflow."""
    # autocast: a float32 op (PyTorch's)
    _float_input("binary_cross_entropy_with_logits", input)
    input, target, weight, pos_weight = float32_in_region(input, target, weight, pos_weight)
    if size_average is not None or reduce is not None:
        if isinstance(size_average, str) and pos_weight is None:  # (reduction, pos_weight)
            pos_weight, reduce = reduce, None
        reduction = _legacy_reduction("binary_cross_entropy_with_logits", size_average,
                                      reduce, reduction)
    _same_shape(input, target, "binary_cross_entropy_with_logits")
    # log(1 + e^-x) = −log sigmoid(x), stable for large |x|; its gradient is −sigmoid(−x)
    # everywhere, x = 0 included
    softplus_neg = ops.softplus(-input, threshold=math.inf)
    op = "binary_cross_entropy_with_logits"
    if pos_weight is None:
        loss = (1 - target) * input + softplus_neg
    else:
        _check_weight_fits(pos_weight, input, "pos_weight", op)
        loss = (1 - target) * input + ((pos_weight - 1) * target + 1) * softplus_neg
    if weight is not None:
        _check_weight_fits(weight, input, "weight", op)
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def kl_div(input: Tensor, target: Tensor, size_average: bool | None = None,
           reduce: bool | None = None, reduction: str = "mean",
           log_target: bool = False) -> Tensor:
    """KL(target ‖ q) with ``input`` = log q; 'batchmean' divides by the batch size. As in
    PyTorch, size_average/reduce override ``reduction`` and a 'batchmean' still divides
    their result by the batch size."""
    _float_input("kl_div", input)
    _float_input("kl_div", target)
    input, target = float32_in_region(input, target)  # autocast: a float32 op (PyTorch's)
    batchmean = reduction == "batchmean"
    if size_average is not None or reduce is not None:
        if isinstance(size_average, str):  # (reduction, log_target) by place
            batchmean = size_average == "batchmean"
            if reduce is not None:
                log_target, reduce = reduce, None
        reduction = _legacy_reduction("kl_div", size_average, reduce, reduction)
    _bshape(input, target, "kl_div")  # shapes that broadcast, as PyTorch's
    if log_target:
        loss = ops.exp(target) * (target - input)
    else:
        # PyTorch's xlogy(target, target) − target·input: 0 at a zero target, NaN at a negative
        # or NaN one (teacher logits passed where probabilities belong show as NaN, not as a
        # finite loss), and NaN at an infinite target against input ≥ 0 (∞ − ∞)
        pos = target > 0
        xlogx = ops.where(pos, target * ops.log(ops.where(pos, target, 1.0)),
                          ops.astype(ops.where(target == 0, 0.0, math.nan), target.dtype))
        loss = xlogx - target * input
    if not batchmean:
        return _reduce(loss, reduction, "kl_div")
    if reduction == "batchmean":
        loss = loss.sum()
    else:  # the deprecated flags chose the reduction
        loss = _reduce(loss, reduction, "kl_div")
    return loss / input.shape[0] if input.ndim else loss


# === distances and margin, ranking, count and sequence losses ================================
# Compositions of primitives with PyTorch's arguments, defaults and reductions; the engine
# gives their gradients. Norms at a zero vector have gradient 0 there (PyTorch's subgradient).
def _max_every_tie(a: Tensor, axis: int, keepdims: bool) -> Tensor:
    """max(a) along ``axis`` whose gradient reaches every tied maximum in full (PyTorch's
    pdist and cdist for p = inf), not shared among them; 0 over no entries (PyTorch's)."""
    if a.shape[axis] == 0:
        return ops.sum(a, axis=axis, keepdims=keepdims)
    if _values_only():
        return ops.max(a, axis=axis, keepdims=keepdims)
    m = ops.max(a, axis=axis, keepdims=True).detach()
    inf = ops.isinf(m)  # (an infinite max keeps its value: inf - inf would be NaN)
    s = ops.sum(ops.where((a == m) & ~inf, a, 0.0), axis=axis, keepdims=True)
    y = ops.where(inf, m, m + (s - s.detach()))
    return y if keepdims else ops.squeeze(y, axis)


def _pnorm(d: Tensor, p: float, axis: int, keepdims: bool = False,
           every_tie: bool = False) -> Tensor:
    """‖d‖_p along ``axis`` (p = inf: max |d|, p = 0: count of nonzeros, p < 0: (Σ |d|^p)^(1/p),
    which is 0 with gradient 0 where an entry is 0, and p = −inf: min |d|). A float16 ``d``
    is worked in float32 and the norm rounded once, as PyTorch's (300² overflows float16).
    ``every_tie`` gives each tied maximum of p = inf the whole gradient (pdist, cdist)."""
    if d.dtype == B.float16:
        return ops.astype(_pnorm(ops.astype(d, B.float32), p, axis, keepdims, every_tie),
                          B.float16)
    if p == 2:
        s = ops.sum(d * d, axis=axis, keepdims=keepdims)
        pos = s != 0  # (s is never negative; a NaN stays NaN)
        return ops.where(pos, ops.sqrt(ops.where(pos, s, 1.0)), 0.0)
    a = ops.abs(d)
    if p == 1:
        return ops.sum(a, axis=axis, keepdims=keepdims)
    if p == float("inf"):
        if every_tie:
            return _max_every_tie(a, axis, keepdims)
        return ops.max(a, axis=axis, keepdims=keepdims)
    if p == 0:  # sign(|d|) counts the nonzeros and has PyTorch's zero gradient
        return ops.sum(ops.sign(a), axis=axis, keepdims=keepdims)
    if p == -float("inf"):
        return ops.min(a, axis=axis, keepdims=keepdims)
    if p < 0:  # a zero entry makes the sum infinite and the norm 0
        zero = a == 0
        s = ops.sum(ops.where(zero, 1.0, a) ** p, axis=axis, keepdims=keepdims)
        return ops.where(ops.any(zero, axis=axis, keepdims=keepdims), 0.0, s ** (1.0 / p))
    if p < 1:  # |d|^p has an infinite slope at 0: PyTorch's gradient there is 0
        zero = a == 0
        s = ops.sum(ops.where(zero, 0.0, ops.where(zero, 1.0, a) ** p), axis=axis,
                    keepdims=keepdims)
    else:
        s = ops.sum(a ** p, axis=axis, keepdims=keepdims)
    pos = s != 0
    return ops.where(pos, ops.where(pos, s, 1.0) ** (1.0 / p), 0.0)


def _bshape(a: Tensor, b: Tensor, op: str) -> tuple:
    try:
        return tuple(B.np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
    except ValueError:
        raise ShapeError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not "
                         "broadcast") from None


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Σ x1·x2 / (max(‖x1‖, eps) · max(‖x2‖, eps)) along ``dim`` (operands broadcast); the
    clamp passes the norm's gradient through, as PyTorch."""
    shape = _bshape(x1, x2, "cosine_similarity")
    if not shape:  # scalars: a 1-vector along dim 0 (or -1), as PyTorch
        if dim not in (0, -1):
            raise IndexError(f"cosine_similarity: dim {dim} is out of range for scalar inputs "
                             "(expected 0 or -1)")
        return cosine_similarity(ops.reshape(x1, (1,)), ops.reshape(x2, (1,)), 0, eps)
    x1, x2 = ops.broadcast_to(x1, shape), ops.broadcast_to(x2, shape)
    n1 = _clamped_norm(x1, dim, eps)
    n2 = _clamped_norm(x2, dim, eps)
    return ops.sum((x1 / n1) * (x2 / n2), axis=dim)


def _values_only() -> bool:
    """Whether nothing can differentiate the current call: no_grad, and no grad or jvp
    transform evaluating (vmap levels and traces such as ONNX export's only see values)."""
    m = modes()
    return not m.grad_enabled and not m.depth


def _clamped_norm(x: Tensor, dim: int, eps: float) -> Tensor:
    """max(‖x‖, eps) whose gradient is the norm's even where eps wins, as PyTorch's (which
    clamps the norm in place, outside autograd)."""
    n = _pnorm(x, 2, dim, True)
    if _values_only():  # the plain clamp: what ONNX export writes
        return ops.maximum(n, eps)
    return ops.maximum(n, eps).detach() + (n - n.detach())


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> Tensor:
    """‖x1 − x2 + eps‖_p over the last axis (PyTorch adds eps to the difference); any real p,
    negative ones included (PyTorch's vector norm of order p)."""
    _bshape(x1, x2, "pairwise_distance")
    d = x1 - x2 + eps
    if d.dtype.kind == "c":  # complex differences: the norm of their moduli (a real distance)
        d = ops.abs(d)
    if d.ndim == 0:  # scalars: a 1-vector, and a scalar distance (PyTorch's, keepdim or not)
        return _pnorm(ops.reshape(d, (1,)), p, 0)
    return _pnorm(d, p, -1, keepdim)


_CDIST_MODES = ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist",
                "donot_use_mm_for_euclid_dist")


def cdist(x1: Tensor, x2: Tensor, p: float = 2.0,
          compute_mode: str = "use_mm_for_euclid_dist_if_necessary") -> Tensor:
    """p-norm distances between the rows of x1 (..., P, M) and of x2 (..., R, M): (..., P, R).
    As PyTorch's: for p = 2 with more than 25 rows on either side (or ``compute_mode=
    'use_mm_for_euclid_dist'``) by one matrix product (:func:`_euclid_mm`, memory (P, R)),
    else from the differences (exact, memory (P, R, M))."""
    x1, x2 = float32_in_region(x1, x2)  # autocast: a float32 op (PyTorch's)
    if not p >= 0:  # NaN too: a silent NaN matrix otherwise
        raise ValueError(f"cdist: p must be non-negative, got {p}")
    if compute_mode not in _CDIST_MODES:
        raise ValueError(f"cdist: compute_mode must be one of {', '.join(_CDIST_MODES)}, "
                         f"got {compute_mode!r}")
    if x1.ndim < 2 or x2.ndim < 2 or x1.shape[-1] != x2.shape[-1]:
        raise ShapeError(f"cdist: expected (..., P, M) and (..., R, M) with the same M, got "
                         f"{tuple(x1.shape)} and {tuple(x2.shape)}")
    for name, x in (("x1", x1), ("x2", x2)):
        if not B.is_float(x.dtype):  # PyTorch's: floats only (pdist's vector_norm too)
            raise DTypeError(f"cdist: expected floating-point tensors, got {x.dtype} for {name}")
    if p == 2 and x1.numel() and x2.numel() and B.is_float(x1.dtype) and (
            compute_mode == "use_mm_for_euclid_dist" or compute_mode == _CDIST_MODES[0]
            and (x1.shape[-2] > 25 or x2.shape[-2] > 25)):
        return _euclid_mm(x1, x2)
    d = ops.expand_dims(x1, -2) - ops.expand_dims(x2, -3)
    return _pnorm(d, p, -1, every_tie=True)


def _euclid_mm(x1: Tensor, x2: Tensor) -> Tensor:
    """PyTorch's Euclidean distances by one matrix product (its ``_euclidean_dist``): rows
    [−2a, ‖a‖², 1] times [b, 1, ‖b‖²], clamped at 0, square-rooted. Rounding leaves about
    sqrt(eps)·‖a‖ where a = b, as there; the gradient at a zero is 0 (PyTorch's subgradient)."""
    xp = x1.backend.xp
    n1 = ops.sum(x1 * x1, axis=-1, keepdims=True)
    n2 = ops.sum(x2 * x2, axis=-1, keepdims=True)
    a = ops.concatenate([x1 * -2.0, n1, Tensor._of(xp.ones(n1.shape, n1.dtype))], axis=-1)
    b = ops.concatenate([x2, Tensor._of(xp.ones(n2.shape, n2.dtype)), n2], axis=-1)
    sq = ops.matmul(a, ops.swapaxes(b, -1, -2))
    pos = sq > 0
    return ops.where(pos, ops.sqrt(ops.where(pos, sq, 1.0)), 0.0)


def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                          size_average: bool | None = None, reduce: bool | None = None,
                          reduction: str = "mean") -> Tensor:
    """1 − cos(x1, x2) where target = 1, max(0, cos − margin) where target = −1: inputs (N, D)
    with target (N,), or (D,) with a scalar target; inputs and target broadcast, as PyTorch's."""
    input1, input2 = float32_in_region(input1, input2)  # autocast: a float32 op (PyTorch's)
    op = "cosine_embedding_loss"
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(op, size_average, reduce, reduction)
    if target.ndim > 1 or not input1.ndim == input2.ndim == target.ndim + 1:
        raise ShapeError(f"{op}: expected inputs (N, D) with target (N,), or (D,) with a scalar "
                         f"target, got {tuple(input1.shape)}, {tuple(input2.shape)} and target "
                         f"{tuple(target.shape)}")
    rows = _bshape(input1, input2, op)[:-1]
    try:
        B.np.broadcast_shapes(rows, tuple(target.shape))
    except ValueError:
        raise ShapeError(f"{op}: target of shape {tuple(target.shape)} does not broadcast with "
                         f"the inputs' {rows} rows") from None
    ax = input1.ndim - 1
    prod = ops.sum(input1 * input2, axis=ax)
    m1 = ops.sum(input1 * input1, axis=ax) + 1e-12
    m2 = ops.sum(input2 * input2, axis=ax) + 1e-12
    cos = prod / ops.sqrt(m1 * m2)
    # clamp_min, not relu: at cos = margin the gradient passes, as PyTorch's clamp_min_
    loss = ops.where(target == 1, 1 - cos, 0.0) + ops.where(target == -1,
                                                            ops.clamp_min(cos - margin, 0.0), 0.0)
    return _reduce(loss, reduction, "cosine_embedding_loss")


def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0,
                        size_average: bool | None = None, reduce: bool | None = None,
                        reduction: str = "mean") -> Tensor:
    """max(0, −target·(x1 − x2) + margin): rank x1 above x2 where target = 1."""
    input1, input2 = float32_in_region(input1, input2)  # autocast: a float32 op (PyTorch's)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("margin_ranking_loss", size_average, reduce, reduction)
    if not input1.ndim == input2.ndim == target.ndim:  # PyTorch's rule; then they broadcast
        raise ShapeError(f"margin_ranking_loss: input1, input2 and target must have the same "
                         f"number of dims, got shapes {tuple(input1.shape)}, "
                         f"{tuple(input2.shape)} and {tuple(target.shape)}")
    _bshape(input1, input2, "margin_ranking_loss")
    # clamp_min, not relu: at the hinge (tied scores with margin 0, as at a start) the gradient
    # passes, as PyTorch's clamp_min_
    return _reduce(ops.clamp_min(-target * (input1 - input2) + margin, 0.0), reduction,
                   "margin_ranking_loss")


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0,
                        p: float = 2, eps: float = 1e-6, swap: bool = False,
                        size_average: bool | None = None, reduce: bool | None = None,
                        reduction: str = "mean") -> Tensor:
    """max(0, d(a, p) − d(a, n) + margin) with pairwise distances over the last axis; ``swap``
    uses min(d(a, n), d(p, n)) (the distance swap of Balntas et al.)."""
    anchor, positive, negative = float32_in_region(anchor, positive, negative)  # autocast: float32
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("triplet_margin_loss", size_average, reduce, reduction)
    op = "triplet_margin_loss"
    if margin <= 0:
        raise ValueError(f"{op}: margin must be greater than 0, got {margin}")
    if not anchor.ndim == positive.ndim == negative.ndim:  # (N, D), (D,) or scalars
        raise ShapeError(f"{op}: anchor, positive and negative must have the same number of "
                         f"dims, got {tuple(anchor.shape)}, {tuple(positive.shape)} and "
                         f"{tuple(negative.shape)}")
    d_pos = pairwise_distance(anchor, positive, p, eps)
    d_neg = pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = ops.minimum(d_neg, pairwise_distance(positive, negative, p, eps))
    return _reduce(ops.clamp_min(margin + d_pos - d_neg, 0.0), reduction, op)


def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0,
                         size_average: bool | None = None, reduce: bool | None = None,
                         reduction: str = "mean") -> Tensor:
    """x where target = 1, max(0, margin − x) where target = −1 (x: a distance)."""
    _float_input("hinge_embedding_loss", input)
    input, target = float32_in_region(input, target)  # autocast: a float32 op (PyTorch's)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("hinge_embedding_loss", size_average, reduce, reduction)
    _bshape(input, target, "hinge_embedding_loss")
    loss = (ops.where(target != 1, ops.clamp_min(margin - input, 0.0), 0.0)  # (PyTorch's)
            + ops.where(target != -1, input, 0.0))
    return _reduce(loss, reduction, "hinge_embedding_loss")


def multi_margin_loss(input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0,
                      weight: Tensor | None = None, size_average: bool | None = None,
                      reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Σ_{i≠y} w_y · max(0, margin − x_y + x_i)^p / C: the multi-class hinge (p = 1 or 2)."""
    _float_input("multi_margin_loss", input)
    input, weight = float32_in_region(input, weight)  # autocast: a float32 op (PyTorch's)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("multi_margin_loss", size_average, reduce, reduction)
    if p not in (1, 2):
        raise ValueError(f"multi_margin_loss: p must be 1 or 2, got {p}")
    if input.ndim > 2 or (input.ndim == 2 and input.shape[1] == 0) or (
            input.ndim == 1 and input.shape[0] == 0):
        raise ShapeError(f"multi_margin_loss: input must be (N, C), (C,) or a scalar (C = 1) "
                         f"with C > 0, got {tuple(input.shape)}")
    n = input.shape[0] if input.ndim == 2 else 1
    if target.ndim > 1 or target.numel() != n:
        raise ShapeError(f"multi_margin_loss: for input {tuple(input.shape)} the target must "
                         f"hold one class index per sample ({n}) in at most one dim, got shape "
                         f"{tuple(target.shape)}")
    out_shape = tuple(target.shape)  # PyTorch's: (N,) for a 1-D target, () for a scalar one
    c = input.numel() // n if n else input.shape[-1]
    if input.ndim < 2:
        input = ops.reshape(input, (1, c))
    if target.ndim != 1:
        target = ops.reshape(target, (n,))
    _class_target(target, c, None, "multi_margin_loss")
    if weight is not None:
        _class_weight(weight, c, "multi_margin_loss")
    picked = ops.take_along_axis(input, ops.expand_dims(target, -1), 1)
    z = ops.relu(margin - picked + input)
    if p == 2:
        z = z * z
    if weight is not None:
        z = z * ops.expand_dims(weight[target], -1)
    other = Tensor._of(input.backend.xp.arange(c)) != ops.expand_dims(target, -1)
    loss = ops.sum(ops.where(other, z, 0.0), axis=1) / c
    if out_shape != (n,):
        loss = ops.reshape(loss, out_shape)
    return _reduce(loss, reduction, "multi_margin_loss")


def _log_sigmoid(x: Tensor) -> Tensor:
    """log σ(x) = −softplus(−x): stable, and smooth at 0 for the engine too."""
    return -ops.softplus(-x)


def multilabel_soft_margin_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                size_average: bool | None = None, reduce: bool | None = None,
                                reduction: str = "mean") -> Tensor:
    """Per-class logistic loss averaged over the C classes (the input's last axis): one-vs-all.
    As in PyTorch, a target (and weight) of another shape is broadcast, and the sum runs over
    the axis numbered as the input's last."""
    op = "multilabel_soft_margin_loss"
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(op, size_average, reduce, reduction)
    if input.ndim == 0:
        raise ShapeError(f"{op}: input needs a class axis ((N, C) or (C,)), got a scalar")
    _float_input(op, input)
    _bshape(input, target, op)
    loss = -(target * _log_sigmoid(input) + (1 - target) * _log_sigmoid(-input))
    if weight is not None:
        loss = loss * weight
    ax = input.ndim - 1
    loss = ops.sum(loss, axis=ax) / input.shape[ax]
    return _reduce(loss, reduction, op)


def soft_margin_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                     reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """log(1 + exp(−y·x)), computed without overflow (y = ±1)."""
    _float_input("soft_margin_loss", input)
    input, target = float32_in_region(input, target)  # autocast: a float32 op (PyTorch's)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("soft_margin_loss", size_average, reduce, reduction)
    # a target that broadcasts to the input's shape (PyTorch's: the loss has the input's shape)
    _check_weight_fits(target, input, "target", "soft_margin_loss")
    return _reduce(-_log_sigmoid(target * input), reduction, "soft_margin_loss")


def poisson_nll_loss(input: Tensor, target: Tensor, log_input: bool = True, full: bool = False,
                     size_average: bool | None = None, eps: float = 1e-8,
                     reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Poisson negative log-likelihood: exp(x) − t·x (``log_input``) or x − t·log(x + eps);
    ``full`` adds Stirling's t·log t − t + ½ log(2πt) where t > 1."""
    input, target = float32_in_region(input, target)  # autocast: a float32 op (PyTorch's)
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction("poisson_nll_loss", size_average, reduce, reduction)
    _bshape(input, target, "poisson_nll_loss")
    if log_input:
        loss = ops.exp(input) - target * input
    else:
        loss = input - target * ops.log(input + eps)
    if full:
        big = target > 1
        t = ops.where(big, target, 1.0)
        loss = loss + ops.where(big, t * ops.log(t) - t + 0.5 * ops.log(2 * math.pi * t), 0.0)
    return _reduce(loss, reduction, "poisson_nll_loss")


def gaussian_nll_loss(input: Tensor, target: Tensor, var: Tensor | float, full: bool = False,
                      eps: float = 1e-6, reduction: str = "mean") -> Tensor:
    """½(log max(var, eps) + (x − t)² / max(var, eps)) [+ ½ log 2π]; the clamp passes the
    gradient through unchanged, as PyTorch. ``var`` is a number (one variance everywhere), the
    input's shape, that shape less its last axis, or that shape with one axis of size 1."""
    number = not isinstance(var, Tensor)
    if number:  # a number, or array data: the same as a tensor of it
        var = Tensor._of(input.backend.asarray(var, dtype=input.dtype))
        number = var.ndim == 0  # broadcasts over the input
    shp, vs = tuple(input.shape), tuple(var.shape)
    if vs != shp and not number:
        if shp[:-1] == vs:
            var = ops.expand_dims(var, -1)
        elif not (len(vs) == len(shp)
                  and sum(v for i, v in zip(shp, vs) if i != v) == 1):
            raise ShapeError(f"gaussian_nll_loss: var of shape {vs} does not fit input of "
                             f"shape {shp} (same shape, one axis fewer, or one axis of size 1)")
    _check_variances(var)
    with no_grad():
        shift = ops.maximum(var, eps) - var
    v = var + shift
    d = input - target
    loss = 0.5 * (ops.log(v) + d * d / v)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction, "gaussian_nll_loss")


_NEG = -1e30  # log 0 for the CTC recursion: finite, so unreachable states give 0 gradient


def _host(x):
    """A NumPy copy of an index argument (tensor on any device, list or number); the loss is
    laid out from these values, so under a jit trace its signature runs eagerly."""
    if isinstance(x, Tensor):
        computes_with_values(x, "ctc_loss's targets and lengths")
        return x.backend.to_host(values(x))
    return B.np.asarray(x)


def _lengths(x, n: int, name: str):
    a = _host(x).reshape(-1)
    if a.dtype.kind not in "iu" and a.size:
        raise DTypeError(f"ctc_loss: {name} must be integral, got {a.dtype}")
    a = a.astype(B.np.int64)
    if a.shape != (n,):
        raise ShapeError(f"ctc_loss: {name} must have one entry per batch element ({n}), got "
                         f"{a.shape[0]}")
    return a


def ctc_loss(log_probs: Tensor, targets, input_lengths, target_lengths, blank: int = 0,
             reduction: str = "mean", zero_infinity: bool = False) -> Tensor:
    """Connectionist temporal classification: −log Σ over alignments of the targets, by the
    forward (alpha) recursion in log space over the blank-extended labels, vectorised over
    the batch. ``log_probs`` (T, N, C) or (T, C); targets padded (N, S) or concatenated (1-D,
    also for unbatched (T, C) input, as PyTorch's: there (1, S) is the padded form).
    The gradient is the exact one in log_probs (PyTorch returns the one for the logits behind
    a log_softmax; the two agree once passed through it). In float32 under CPU autocast."""
    (log_probs,) = float32_in_region(log_probs)  # autocast: a float32 op (PyTorch's)
    if log_probs.ndim not in (2, 3):
        raise ShapeError(f"ctc_loss: log_probs must be (T, N, C) or (T, C), got "
                         f"{tuple(log_probs.shape)}")
    if log_probs.numel() == 0:
        raise ValueError(f"ctc_loss: log_probs must not be empty, got shape "
                         f"{tuple(log_probs.shape)}")
    unbatched = log_probs.ndim == 2
    lp = ops.expand_dims(log_probs, 1) if unbatched else log_probs
    t_max, n, c = lp.shape
    if not 0 <= blank < c:
        raise ValueError(f"ctc_loss: blank={blank} is not a class index for C={c}")
    tg = _host(targets)
    if tg.dtype.kind not in "iu":
        raise DTypeError(f"ctc_loss: targets must be integers, got {tg.dtype}")
    in_len = _lengths(input_lengths, n, "input_lengths")
    tg_len = _lengths(target_lengths, n, "target_lengths")
    if (in_len > t_max).any() or (in_len < 0).any() or (tg_len < 0).any():
        raise ValueError(f"ctc_loss: input_lengths must lie in [0, T={t_max}] and target "
                         f"lengths be non-negative, got {in_len.tolist()} / {tg_len.tolist()}")
    s_max = int(tg_len.max()) if n else 0
    if unbatched and tg.ndim == 0:
        tg = tg.reshape(1)
    if tg.ndim == 1:  # concatenated: split into padded rows
        if tg.shape[0] != tg_len.sum():
            raise ShapeError(f"ctc_loss: concatenated targets have {tg.shape[0]} entries, "
                             f"target_lengths sum to {int(tg_len.sum())}")
        pad = B.np.full((n, s_max), blank, B.np.int64)
        starts = B.np.concatenate([[0], B.np.cumsum(tg_len)[:-1]]).astype(int)
        for i in range(n):
            pad[i, :tg_len[i]] = tg[starts[i]:starts[i] + tg_len[i]]
        tg = pad
    elif tg.shape[0] != n or tg.shape[1] < s_max:
        raise ShapeError(f"ctc_loss: padded targets must be (N={n}, S >= {s_max}), got "
                         f"{tg.shape}")
    tg = tg[:, :s_max].astype(B.np.int64)
    valid = B.np.arange(s_max)[None, :] < tg_len[:, None]
    if ((tg < 0) | (tg >= c))[valid].any():
        raise IndexError(f"ctc_loss: a target is out of range for C={c} classes")
    length = 2 * s_max + 1  # blanks between and around the labels
    ext = B.np.full((n, length), blank, B.np.int64)
    ext[:, 1::2] = B.np.where(valid, tg, blank)
    skip = B.np.zeros((n, length), bool)  # s − 2 → s allowed: a label differing from s − 2
    skip[:, 3::2] = (ext[:, 3::2] != ext[:, 1:-2:2])
    xp = lp.backend.xp
    idx = B.np.broadcast_to(ext[None], (t_max, n, length))
    em = ops.take_along_axis(lp, Tensor._of(xp.asarray(idx)), 2)  # (T, N, L)
    neg = Tensor._of(xp.full((n, 1), _NEG, dtype=lp.dtype))
    start = B.np.full((n, length), _NEG)
    start[:, 0] = 0.0
    if length > 1:
        start[:, 1] = 0.0
    alpha = em[0] + Tensor._of(xp.asarray(start, dtype=lp.dtype))
    skip_t = Tensor._of(xp.asarray(skip))
    for t in range(1, t_max):
        a1 = ops.concatenate([neg, alpha[:, :-1]], 1)
        a2 = ops.where(skip_t, ops.concatenate([neg, neg, alpha[:, :-2]], 1)[:, :length], _NEG)
        new = ops.logsumexp(ops.stack([alpha, a1, a2]), axis=0) + em[t]
        live = Tensor._of(xp.asarray((t < in_len)[:, None]))
        alpha = ops.where(live, new, alpha)
    last = 2 * tg_len  # the final blank; the final label is last − 1
    ends = B.np.stack([last, B.np.maximum(last - 1, 0)], 1)
    picked = ops.take_along_axis(alpha, Tensor._of(xp.asarray(ends)), 1)
    one = Tensor._of(xp.asarray((tg_len == 0)[:, None] & (B.np.arange(2) == 1)[None]))
    picked = ops.where(one, _NEG, picked)
    nll = -ops.logsumexp(picked, axis=1)
    if (in_len == 0).any():  # no frames: only an empty target has (probability-one) paths
        empty = B.np.where(tg_len == 0, 0.0, -_NEG)
        nll = ops.where(Tensor._of(xp.asarray(in_len == 0)),
                        Tensor._of(xp.asarray(empty, lp.dtype)), nll)
    inf = nll > -_NEG / 2  # no alignment exists (target too long for the input)
    nll = ops.where(inf, 0.0 if zero_infinity else float("inf"), nll)
    if unbatched:
        nll = nll[0]
        if reduction == "mean":
            return nll / max(int(tg_len[0]), 1)
    if reduction == "mean":
        return ops.mean(nll / Tensor._of(xp.asarray(B.np.maximum(tg_len, 1), dtype=lp.dtype)))
    return _reduce(nll, reduction, "ctc_loss")


def multilabel_margin_loss(input: Tensor, target: Tensor, size_average: bool | None = None,
                           reduce: bool | None = None, reduction: str = "mean") -> Tensor:
    """Multi-label hinge: Σ_j Σ_{i ∉ targets} max(0, 1 − (x_j − x_i)) / C over the target
    classes j of each sample. ``target`` holds class indices in its leading entries, ended by
    the first -1 (PyTorch's layout: [3, 0, -1, 1] means classes 3 and 0)."""
    (input,) = float32_in_region(input)  # autocast: a float32 op (PyTorch's)
    op = "multilabel_margin_loss"
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(op, size_average, reduce, reduction)
    if input.ndim < 2 and target.ndim < 2 and target.numel() == input.numel():
        # (C,) or a scalar (C = 1), with the target's C entries in (C,) or a scalar
        if input.ndim == 0:
            input = ops.reshape(input, (1,))
        if target.ndim == 0:
            target = ops.reshape(target, (1,))
    elif input.ndim != 2 or tuple(target.shape) != tuple(input.shape):
        raise ShapeError(f"{op}: expected input (N, C), (C,) or a scalar and a target of the "
                         f"same shape, got {tuple(input.shape)} and {tuple(target.shape)}")
    if target.dtype.kind not in "iu":
        raise DTypeError(f"{op}: target must hold integer class indices, got {target.dtype}")
    c = input.shape[-1]
    if c == 0:
        raise ShapeError(f"{op}: expected a non-empty class axis (C > 0), got input "
                         f"{tuple(input.shape)}")
    xp = input.backend.xp
    t = values(target)
    bad = (t < -1) | (t >= c)
    if bool(bad.any()):
        raise IndexError(f"{op}: target {int(t[bad].reshape(-1)[0])} is out of range for {c} "
                         f"classes (expected 0..{c - 1}, or -1 to end the list)")
    with no_grad():  # the entries before the first -1 name the targets
        valid = ops.cumprod(ops.astype(target != -1, "int64"), -1) > 0
    safe = ops.where(valid, target, 0)
    classes = Tensor._of(xp.arange(c))
    hit = (ops.expand_dims(safe, -1) == classes) & ops.expand_dims(valid, -1)   # (.., K, C)
    is_target = ops.any(hit, axis=-2)                                            # (.., C)
    picked = ops.take_along_axis(input, safe, -1)                                # (.., K)
    z = ops.relu(1.0 - ops.expand_dims(picked, -1) + ops.expand_dims(input, -2))
    keep = ops.expand_dims(valid, -1) & ~ops.expand_dims(is_target, -2)
    loss = ops.sum(ops.where(keep, z, 0.0), axis=(-2, -1)) / c
    return _reduce(loss, reduction, op)


def triplet_margin_with_distance_loss(anchor: Tensor, positive: Tensor, negative: Tensor, *,
                                      distance_function=None, margin: float = 1.0,
                                      swap: bool = False, reduction: str = "mean") -> Tensor:
    """max(0, margin + d(a, p) − d(a, n)) for any distance ``d`` (default
    ``pairwise_distance``); ``swap`` uses min(d(a, n), d(p, n)) as the negative distance."""
    op = "triplet_margin_with_distance_loss"
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if margin <= 0:
        raise ValueError(f"{op}: margin must be greater than 0, got {margin}")
    if not anchor.ndim == positive.ndim == negative.ndim:
        raise ShapeError(f"{op}: anchor, positive and negative must have the same number of "
                         f"dims, got {anchor.ndim}-D, {positive.ndim}-D and {negative.ndim}-D")
    d = pairwise_distance if distance_function is None else distance_function
    d_pos = d(anchor, positive)
    d_neg = d(anchor, negative)
    if swap:
        d_neg = ops.minimum(d_neg, d(positive, negative))
    return _reduce(ops.clamp_min(d_pos + margin - d_neg, 0.0), reduction, op)
