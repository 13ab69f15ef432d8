"""Metrics on arrays (NumPy, or anything ``np.asarray`` takes, Tensors included).

Classification metrics take targets ``y_true`` and predictions ``y_pred``:

* ``y_true``: integer labels (N,) or (N, 1); floats holding whole numbers; or one-hot or
  class-probability rows (N, C) (their argmax, as Keras' ``categorical_accuracy``). Rows that do
  not sum to 1 (multi-label targets) are refused. Targets equal to ``ignore_index`` (default
  -100, what ``cross_entropy`` leaves out by default) are dropped; other negative labels are an
  error.
* ``y_pred``: scores, logits or probabilities (N, C) (argmax over C), or (N, C, d1, ...) with
  targets (N, d1, ...) as ``cross_entropy`` takes them (argmax over axis 1); integer labels;
  or a binary model's single logit, floating (N, 1) or (N,), which predicts class 1 where it is
  > 0 (a logit, as ``binary_cross_entropy_with_logits`` takes; for probabilities pass
  ``p > 0.5``). Its float targets count as class 1 where they are >= 0.5; a label above 1 next to
  single logits is an error (floating class labels look like logits: pass them as integers).

Predictions holding a NaN make the scores NaN (as the loss is), not a count of whichever class
the NaN sat on; ``confusion_matrix`` refuses them. A class absent from both targets and
predictions is left out of macro averages (as scikit-learn and torchmetrics do); a score whose
denominator is 0 (a class never predicted, for precision) is ``zero_division`` (default 0,
scikit-learn's value, without its warning). Each returns a Python float (or an array).

In ``fit``, a training epoch's metric is the mean of its batches' values weighted by batch
size: exact for accuracy, top-k, MSE and MAE without ignored targets, an approximation for
F1, balanced accuracy and R²; ``evaluate`` (and so the ``val_*`` entries) computes every
metric on the concatenated outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .. import _backend as B

np = B.np

#: the target value classification metrics leave out by default (``cross_entropy``'s default)
IGNORE_INDEX = -100


def _np(a) -> np.ndarray:
    if hasattr(a, "numpy"):
        a = a.numpy()
    return B.backend_of(a).to_host(a) if B.is_array(a) else np.asarray(a)


def _binary(p: np.ndarray) -> bool:
    """Whether ``p`` is one logit per sample: floating, of shape (N,) or (N, 1)."""
    return B.is_float(p.dtype) and (p.ndim == 1 or p.ndim == 2 and p.shape[1] == 1)


def _target_array(t: np.ndarray, p: np.ndarray, fn: str) -> np.ndarray:
    """Targets as labels in ``p``'s sample layout (not yet cast, not yet masked)."""
    if t.ndim == 2 and t.shape[1] == 1:
        t = t.reshape(len(t))
    if t.ndim == 2 and p.ndim == 2 and t.shape == p.shape and t.shape[1] > 1:
        # one-hot or class-probability rows: their argmax (multi-label rows are refused)
        rows = t.astype(np.float64)
        tol = 1e-2 if t.dtype.itemsize <= 2 else 1e-4
        if (rows < 0).any() or not np.allclose(rows.sum(1), 1.0, rtol=0, atol=tol):
            raise ValueError(f"{fn}: targets of shape {t.shape} are neither class labels (N,) "
                             "nor one-hot/probability rows (each row summing to 1); multi-label "
                             "targets need a per-label metric, e.g. accuracy(t.ravel(), "
                             "(logits > 0).ravel())")
        return rows.argmax(1)
    return t


def _classes(y_true, y_pred, fn: str, ignore_index: int | None = IGNORE_INDEX,
             scores: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """Flat int64 targets without the ignored ones, the predicted classes (with ``scores``:
    the (M, C) score rows instead) and whether a prediction was NaN."""
    p, t = _np(y_pred), _np(y_true)
    if p.dtype == B.bfloat16:  # NumPy sums ml_dtypes' bfloat16 in bfloat16; float32 holds it
        p = p.astype(B.float32)
    if p.ndim == 2 and p.shape[1] == 1 and p.dtype.kind in "iub":
        p = p.reshape(len(p))  # labels (N, 1), not scores of one class
    binary = _binary(p) and not scores
    t = _target_array(t, p, fn)
    if binary:
        p = p.reshape(len(p))
    elif p.ndim >= 3 and p.ndim == t.ndim + 1 and p.shape[2:] == t.shape[1:]:
        p = np.moveaxis(p, 1, -1).reshape(-1, p.shape[1])  # (N, C, d1, ...) as cross_entropy
        t = t.reshape(-1)
    elif scores and p.ndim != 2:
        raise ValueError(f"{fn}: expected scores of shape (N, C), got {p.shape}")
    if t.ndim != 1 or p.ndim not in (1, 2) or len(t) != len(p):
        raise ValueError(f"{fn}: expected one target per prediction, got targets of shape "
                         f"{_np(y_true).shape} for predictions {_np(y_pred).shape}")
    keep = np.ones(len(t), bool) if ignore_index is None else t != ignore_index
    t, p = t[keep], p[keep]
    if B.is_float(t.dtype):
        if binary:
            t = np.where(t >= 0.5, 1, 0)
        elif not np.array_equal(t, np.round(t)):
            raise ValueError(f"{fn}: float targets must be whole class labels, got "
                             f"{t[t != np.round(t)][:3]}")
    elif t.dtype.kind not in "iub":
        raise ValueError(f"{fn}: expected numeric targets, got dtype {t.dtype}")
    t = t.astype(np.int64)
    if len(t) and t.min() < 0:
        raise ValueError(f"{fn}: targets hold the negative label {int(t.min())}; labels are "
                         f"0..C-1 (pass ignore_index={int(t.min())} to leave such targets out)")
    nan = B.is_float(p.dtype) and bool(np.isnan(p).any())
    if binary:
        if len(t) and t.max() > 1:
            raise ValueError(f"{fn}: floating predictions of shape {_np(y_pred).shape} are one "
                             f"logit per sample (class 1 where > 0), so targets must be 0 or 1, "
                             f"got the label {int(t.max())}; pass predicted labels as integers "
                             "or (N, C) scores")
        return t, (p > 0).astype(np.int64), nan
    if scores:
        return t, p, nan
    if p.ndim == 2:
        return t, p.argmax(-1), nan
    if p.dtype.kind not in "iub" or (len(p) and p.min() < 0):
        bad = f" and the label {p.min()}" if len(p) and p.min() < 0 else ""
        raise ValueError(f"{fn}: predicted labels must be integers 0..C-1, got dtype "
                         f"{p.dtype}{bad}")
    return t, p.astype(np.int64), nan


def accuracy(y_true, y_pred, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Fraction of predictions equal to the targets (one logit per sample: > 0 is class 1);
    NaN when a prediction is NaN."""
    t, p, nan = _classes(y_true, y_pred, "accuracy", ignore_index)
    if nan:
        return math.nan
    return float((t == p).mean()) if len(t) else 0.0


def top_k_accuracy(y_true, scores, k: int = 5, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Fraction of samples whose target is among the ``k`` highest scores (``k`` at least the
    number of classes: 1.0, as scikit-learn); NaN when a score is NaN."""
    if int(k) < 1:
        raise ValueError(f"top_k_accuracy: k must be >= 1, got {k}")
    t, s, nan = _classes(y_true, scores, "top_k_accuracy", ignore_index, scores=True)
    if len(t) and t.max() >= s.shape[1]:
        raise ValueError(f"top_k_accuracy: target label {int(t.max())} is out of range for "
                         f"{s.shape[1]} classes of scores")
    if nan:
        return math.nan
    k = min(int(k), s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return float((top == t[:, None]).any(1).mean()) if len(t) else 0.0


def _confusion(y_true, y_pred, num_classes: int | None, fn: str,
               ignore_index: int | None, nan_ok: bool = False) -> np.ndarray | None:
    """The confusion matrix; None for NaN predictions with ``nan_ok`` (the score is NaN)."""
    t, p, nan = _classes(y_true, y_pred, fn, ignore_index)
    if nan and nan_ok:
        return None
    if nan:
        raise ValueError(f"{fn}: the predictions hold NaN; there is no class to count them in")
    n = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if num_classes is not None:
        if n > num_classes:
            raise ValueError(f"{fn}: label {n - 1} is out of range for num_classes={num_classes}")
        n = int(num_classes)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None,
                     normalize: str | None = None,
                     ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """C[i, j] = number of samples of class i predicted as j, for classes
    0..``num_classes``-1 (default: up to the largest label seen; a class absent from both
    still has its row and column, as torchmetrics, where scikit-learn drops it).
    ``normalize`` as scikit-learn's: ``"true"`` (rows sum to 1), ``"pred"`` (columns) or
    ``"all"``; an empty row or column stays 0."""
    c = _confusion(y_true, y_pred, num_classes, "confusion_matrix", ignore_index)
    if normalize is None:
        return c
    axis = {"true": 1, "pred": 0, "all": None}
    if normalize not in axis:
        raise ValueError(f"confusion_matrix: normalize must be 'true', 'pred', 'all' or None, "
                         f"got {normalize!r}")
    c = c.astype(np.float64)
    s = c.sum(axis[normalize], keepdims=axis[normalize] is not None)
    return np.divide(c, s, out=np.zeros_like(c), where=s > 0)


_AVERAGES = (None, "macro", "micro", "weighted", "binary")


def precision_recall_f1(y_true, y_pred, average: str | None = "macro",
                        num_classes: int | None = None, zero_division: float = 0.0,
                        ignore_index: int | None = IGNORE_INDEX):
    """Precision, recall and F1 per class (``average=None``: arrays over 0..C-1) or averaged
    as scikit-learn's ``precision_recall_fscore_support``: ``"macro"`` (unweighted mean over
    the classes present in targets or predictions), ``"micro"`` (from the summed counts: the
    accuracy, for single-label data), ``"weighted"`` (weighted by each class's target count)
    or ``"binary"`` (class 1's). A 0/0 score is ``zero_division`` (scikit-learn's default value
    0, without its warning); F1 is 2TP / (2TP + FP + FN)."""
    if average not in _AVERAGES:
        raise ValueError(f"precision_recall_f1: average must be one of {_AVERAGES}, got "
                         f"{average!r}")
    c = _confusion(y_true, y_pred, num_classes, "precision_recall_f1", ignore_index, True)
    if c is None:  # NaN predictions: NaN scores, as the loss
        return (np.full(num_classes or 0, np.nan),) * 3 if average is None else (math.nan,) * 3
    c = c.astype(np.float64)
    tp, pred, true = np.diag(c), c.sum(0), c.sum(1)
    if average == "micro":
        tp, pred, true = tp.sum(keepdims=True), pred.sum(keepdims=True), true.sum(keepdims=True)
    elif average == "binary":
        if len(c) > 2:
            raise ValueError(f"precision_recall_f1: average='binary' needs labels 0 and 1, got "
                             f"{len(c)} classes; choose 'macro', 'micro' or 'weighted'")
        c2 = np.zeros((2, 2))
        c2[:len(c), :len(c)] = c
        tp, pred, true = np.diag(c2)[1:], c2.sum(0)[1:], c2.sum(1)[1:]

    def div(a, b):
        return np.divide(a, b, out=np.full_like(a, float(zero_division)), where=b > 0)

    prec, rec, f1 = div(tp, pred), div(tp, true), div(2 * tp, pred + true)
    if average is None:
        return prec, rec, f1
    if average in ("micro", "binary"):
        return float(prec[0]), float(rec[0]), float(f1[0])
    if average == "weighted":
        w = true
    else:  # macro: the classes seen in the targets or the predictions
        w = ((pred + true) > 0).astype(np.float64)
    if w.sum() == 0:
        return (float(zero_division),) * 3
    return tuple(float((x * w).sum() / w.sum()) for x in (prec, rec, f1))


def f1_score(y_true, y_pred, num_classes: int | None = None, average: str = "macro",
             ignore_index: int | None = IGNORE_INDEX) -> float:
    """F1 averaged as ``average`` (default macro; see :func:`precision_recall_f1`)."""
    return precision_recall_f1(y_true, y_pred, average, num_classes,
                               ignore_index=ignore_index)[2]


def balanced_accuracy(y_true, y_pred, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Mean recall over the classes present in the targets (scikit-learn's
    ``balanced_accuracy_score``)."""
    c = _confusion(y_true, y_pred, None, "balanced_accuracy", ignore_index, True)
    if c is None:
        return math.nan
    c = c.astype(np.float64)
    true = c.sum(1)
    seen = true > 0
    return float((np.diag(c)[seen] / true[seen]).mean()) if seen.any() else 0.0


def _reg(y_true, y_pred, fn: str):
    t, p = _np(y_true).astype(np.float64), _np(y_pred).astype(np.float64)
    if t.ndim == 0 or p.ndim == 0 or len(t) != len(p) or not len(t):
        raise ValueError(f"{fn}: expected targets and predictions with the same number (> 0) "
                         f"of samples, got shapes {t.shape} and {p.shape}")
    t, p = t.reshape(len(t), -1), p.reshape(len(p), -1)
    if t.shape != p.shape:
        raise ValueError(f"{fn}: targets of shape {_np(y_true).shape} do not match predictions "
                         f"of shape {_np(y_pred).shape} (no broadcasting)")
    return t, p


def mse(y_true, y_pred) -> float:
    """Mean squared error."""
    t, p = _reg(y_true, y_pred, "mse")
    return float(((t - p) ** 2).mean())


def mae(y_true, y_pred) -> float:
    """Mean absolute error."""
    t, p = _reg(y_true, y_pred, "mae")
    return float(np.abs(t - p).mean())


def r2(y_true, y_pred) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot, averaged over outputs; an output whose
    target is constant (SS_tot = 0, a single sample included) scores 1.0 if predicted exactly,
    else 0.0 (scikit-learn's ``r2_score`` with ``force_finite=True``)."""
    t, p = _reg(y_true, y_pred, "r2")
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    score = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0),
                     np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(score))


#: metric names usable in ``fit(metrics=[...])``; each maps (y_true, outputs) -> float
METRICS: dict[str, Callable] = {
    "accuracy": accuracy, "top5": lambda t, s: top_k_accuracy(t, s, 5), "f1": f1_score,
    "balanced_accuracy": balanced_accuracy, "mse": mse, "mae": mae, "r2": r2,
}
