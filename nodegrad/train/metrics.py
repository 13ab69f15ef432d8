"""Metrics on arrays (NumPy, or anything ``np.asarray`` takes, Tensors included).

Classification metrics take integer labels ``y_true`` and either labels or scores/logits
``y_pred`` of shape (N, C) (argmax taken). A binary model's single logit, floating ``y_pred``
of shape (N, 1) or (N,), predicts class 1 where it is > 0 (a logit, as
``binary_cross_entropy_with_logits`` takes; for probabilities pass ``p > 0.5`` as labels);
its float targets count as class 1 where they are >= 0.5. Each returns a Python float (or an
array).
"""

from __future__ import annotations

from collections.abc import Callable

from .. import _backend as B

np = B.np


def _np(a) -> np.ndarray:
    if hasattr(a, "numpy"):
        a = a.numpy()
    return B.backend_of(a).to_host(a) if B.is_array(a) else np.asarray(a)


def _binary(p: np.ndarray) -> bool:
    """Whether ``p`` is one logit per sample: floating, of shape (N,) or (N, 1)."""
    return p.dtype.kind == "f" and (p.ndim == 1 or p.ndim == 2 and p.shape[1] == 1)


def _labels(y_pred) -> np.ndarray:
    """Predicted classes: the argmax of (N, C) scores, logit > 0 for one logit per sample
    (binary), integer labels as they are."""
    p = _np(y_pred)
    if _binary(p):
        return (p.reshape(len(p)) > 0).astype(np.int64)
    return p.argmax(-1) if p.ndim == 2 else p.astype(np.int64)


def _true_labels(y_true, binary: bool = False) -> np.ndarray:
    """Target classes as int64 (N,): (N, 1) targets flattened; for a binary model, float
    targets (probabilities) are class 1 at >= 0.5."""
    t = _np(y_true)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t.reshape(len(t))
    if binary and t.dtype.kind == "f":
        return (t >= 0.5).astype(np.int64)
    return t.astype(np.int64)


def _classes(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    p = _np(y_pred)
    return _true_labels(y_true, _binary(p)), _labels(p)


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the labels (one logit per sample: > 0 is class 1)."""
    t, p = _classes(y_true, y_pred)
    if t.shape != p.shape:
        raise ValueError(f"accuracy: expected one label per prediction, got targets of shape "
                         f"{t.shape} for predictions {p.shape}")
    return float((t == p).mean()) if len(t) else 0.0


def top_k_accuracy(y_true, scores, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores."""
    s, t = _np(scores), _np(y_true).astype(np.int64)
    k = min(k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return float((top == t[:, None]).any(1).mean()) if len(t) else 0.0


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """C[i, j] = number of samples of class i predicted as j."""
    t, p = _classes(y_true, y_pred)
    n = num_classes or int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def precision_recall_f1(y_true, y_pred, average: str = "macro",
                        num_classes: int | None = None):
    """Precision, recall and F1: per class (``average=None``) or their ``"macro"`` mean.

    A class never predicted (or never present) counts 0 for that score, as scikit-learn's
    ``zero_division=0``.
    """
    c = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp, pred, true = np.diag(c), c.sum(0), c.sum(1)
    prec = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    rec = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    s = prec + rec
    f1 = np.divide(2 * prec * rec, s, out=np.zeros_like(tp), where=s > 0)
    if average is None:
        return prec, rec, f1
    if average != "macro":
        raise ValueError(f"average must be 'macro' or None, got {average!r}")
    return float(prec.mean()), float(rec.mean()), float(f1.mean())


def f1_score(y_true, y_pred, num_classes: int | None = None) -> float:
    """Macro-averaged F1."""
    return precision_recall_f1(y_true, y_pred, "macro", num_classes)[2]


def _reg(y_true, y_pred):
    t, p = _np(y_true).astype(np.float64), _np(y_pred).astype(np.float64)
    return t.reshape(len(t), -1), p.reshape(len(p), -1)


def mse(y_true, y_pred) -> float:
    """Mean squared error."""
    t, p = _reg(y_true, y_pred)
    return float(((t - p) ** 2).mean())


def mae(y_true, y_pred) -> float:
    """Mean absolute error."""
    t, p = _reg(y_true, y_pred)
    return float(np.abs(t - p).mean())


def r2(y_true, y_pred) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (averaged over outputs)."""
    t, p = _reg(y_true, y_pred)
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)))


#: metric names usable in ``fit(metrics=[...])``; each maps (y_true, outputs) -> float
METRICS: dict[str, Callable] = {
    "accuracy": accuracy, "top5": lambda t, s: top_k_accuracy(t, s, 5), "f1": f1_score,
    "mse": mse, "mae": mae, "r2": r2,
}
