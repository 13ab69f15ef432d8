"""Sorting and selection: a stable argsort primitive, and sort / topk / kthvalue / median /
quantile as gathers at its indices, so gradients flow to exactly the selected elements;
unique, searchsorted and bucketize (no gradient). NaN sorts as the largest value (PyTorch).
"""

from __future__ import annotations

from collections import namedtuple

from .. import _backend as B
from ..amp import float32_in_region
from ..batching import BatchTracer, batched, front, reduce_rule, size_of
from ..batching import values as _values
from ..errors import DTypeError, ShapeError
from ..primitive import primitive
from ..tensor import Tensor, write_out
from .elementwise import astype, ceil, floor, isinf, isnan, lerp, round, where
from .index import getitem, take_along_axis
from .elementwise import maximum
from .reduce import any, argmax, ordered
from .reduce import sum as sum_
from .shape import copy, moveaxis, norm_axis, reshape

Sorted = namedtuple("Sorted", ["values", "indices"])


def _argsort_fwd(xp, x, axis, descending):
    if not descending:
        return xp.argsort(x, axis=axis, kind="stable")
    # stable descending: sort the reversed axis ascending, reverse back, map the indices
    r = xp.flip(xp.argsort(xp.flip(x, axis), axis=axis, kind="stable"), axis)
    return x.shape[axis] - 1 - r


_argsort = primitive("argsort", _argsort_fwd, kind="sort", promote=False,
                     doc="Indices that sort along an axis (stable; NaN sorts last ascending).")
_argsort.batch = reduce_rule(_argsort)


def lex_argsort(x, axis: int = -1):
    """Indices that stably sort ``x`` along ``axis`` in NumPy's order: complex numbers by real
    part, then imaginary part (for NumPy's names; PyTorch's refuse complex tensors)."""
    ax = _dim(x, axis, "argsort")
    return _back(_argsort(_vec(x), axis=ax, descending=False), x.ndim == 0)


def _dim(x, dim, op) -> int:
    return norm_axis(dim, x.ndim if x.ndim else 1, op)


def _vec(x):
    return reshape(x, (1,)) if x.ndim == 0 else x


def _back(t, was0):
    return reshape(t, ()) if was0 else t


_NO = object()
_KINDS = ("quicksort", "mergesort", "heapsort", "stable")


def _np_form(op, x, dim, axis, kind, order):
    """(x, dim) for NumPy's ``axis=``/``kind=``/``order=`` keywords: ``axis=None`` sorts the
    flattened tensor; every ``kind`` sorts stably (a valid answer for each of NumPy's)."""
    if order is not None:
        raise TypeError(f"{op}: order= sorts structured arrays, which tensors are not; "
                        f"got order={order!r}")
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"{op}: kind must be one of {_KINDS}, got {kind!r}")
    if axis is _NO:
        return x, dim
    if axis is None:
        return reshape(x, (-1,)), 0
    return x, axis


def argsort(x, dim: int = -1, descending: bool = False, stable: bool = False, *,
            axis=_NO, kind: str | None = None, order=None):
    """Indices that sort ``x`` along ``dim`` (always stable: ties keep their order); complex
    tensors are refused, as PyTorch's (see :func:`lex_argsort` for NumPy's order). NumPy's
    ``axis=`` (None: the flattened tensor) and ``kind=`` are taken too."""
    x, dim = _np_form("argsort", x, dim, axis, kind, order)
    ordered("argsort", x)
    ax = _dim(x, dim, "argsort")
    return _back(_argsort(_vec(x), axis=ax, descending=bool(descending)), x.ndim == 0)


def sort(x, dim: int = -1, descending: bool = False, stable: bool = False, *, axis=_NO,
         kind: str | None = None, order=None):
    """(values, indices) sorted along ``dim``; the gradient goes back through the gather.
    With NumPy's ``axis=`` (None: the flattened tensor) or ``kind=`` the sorted values alone,
    as ``numpy.sort`` (as ``max(x, axis=)`` gives values and ``max(x, dim=)`` both)."""
    numpy_form = axis is not _NO or kind is not None or order is not None
    x, dim = _np_form("sort", x, dim, axis, kind, order)
    ordered("sort", x)
    ax = _dim(x, dim, "sort")
    v = _vec(x)
    idx = _argsort(v, axis=ax, descending=bool(descending))
    val = _back(take_along_axis(v, idx, ax), x.ndim == 0)
    return val if numpy_form else Sorted(val, _back(idx, x.ndim == 0))


def _first(idx, ax, k):
    """The first ``k`` indices along ``ax``, copied: PyTorch's selections are contiguous, so
    ``topk(...).indices.view(...)`` works."""
    return _slice(idx, ax, 0, k)


def _slice(idx, ax, start, stop):
    """Indices ``start:stop`` along ``ax`` as a contiguous tensor of their own (not a view)."""
    return copy(getitem(idx, (slice(None),) * ax + (slice(start, stop),)))


def topk(x, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> Sorted:
    """The ``k`` largest (or smallest) entries along ``dim`` and their indices, in order;
    ties go to the lower index."""
    ordered("topk", x)
    ax = _dim(x, dim, "topk")
    v = _vec(x)
    if not 0 <= k <= v.shape[ax]:
        raise ShapeError(f"topk: k={k} is out of range for dim {dim} of length {v.shape[ax]} "
                         f"(shape {tuple(x.shape)})")
    idx = _first(_argsort(v, axis=ax, descending=bool(largest)), ax, k)
    return Sorted(_back(take_along_axis(v, idx, ax), x.ndim == 0), _back(idx, x.ndim == 0))


def kthvalue(x, k: int, dim: int = -1, keepdim: bool = False) -> Sorted:
    """The ``k``-th smallest entry (1-based) along ``dim`` and its index."""
    ordered("kthvalue", x)
    ax = _dim(x, dim, "kthvalue")
    v = _vec(x)
    if not 1 <= k <= v.shape[ax]:
        raise ShapeError(f"kthvalue: k={k} is out of range for dim {dim} of length "
                         f"{v.shape[ax]} (shape {tuple(x.shape)})")
    idx = _slice(_argsort(v, axis=ax, descending=False), ax, k - 1, k)
    return _selected(v, idx, ax, keepdim, x.ndim == 0)


def _selected(v, idx, ax, keepdim, was0):
    val = take_along_axis(v, idx, ax)
    if not keepdim or was0:
        shape = tuple(s for i, s in enumerate(val.shape) if i != ax)
        val, idx = reshape(val, shape), reshape(idx, shape)
    return Sorted(_back(val, was0), _back(idx, was0))


def share_ties(x, m):
    """``m`` (a full reduction that picked one entry of ``x``) with its gradient shared evenly
    among the entries equal to it, as PyTorch's median()/nanmedian() without dim (the value
    stays ``m``'s bits: s - s.detach() is 0); a NaN ``m`` is shared among the NaNs, and an
    infinite ``m`` among the entries equal to it (their sum over their count keeps it)."""
    if not (x.requires_grad and B.is_float(x.dtype)):
        return m
    md = m.detach()
    tie = where(isnan(md), isnan(x), x == md)
    s = sum_(where(tie, x, 0.0))
    n = maximum(sum_(astype(tie, x.dtype)), 1.0)
    inf = isinf(md)
    f = where(inf, 0.0, s)  # inf - inf would be NaN
    return where(inf, s / n, md + (f - f.detach()) / n)


# NumPy's quantile (numpy_stats._quantile), set by numpy_stats when it loads: it imports this
# module, so this one cannot import it back.
_numpy_quantile: list = [None]


def _np_median(x, axis, keepdims: bool, out):
    """``numpy.median``: the mean of the two middle entries for an even count, NaN for a lane
    with NaN, integers and bools as float64."""
    _quantile = _numpy_quantile[0]
    if not isinstance(x, Tensor):
        x = Tensor._of(B.np.asarray(x))
    if not (axis is None or isinstance(axis, int)) or x.numel() == 0 or x.dtype.kind == "c":
        # tuple axes, empty input and the errors: NumPy's quantile path (same value up to
        # the last bit of the average)
        return _quantile("median", x, 0.5, axis, out, "midpoint", keepdims, None, False, 1)
    if x.dtype.kind in "biu":
        x = astype(x, B.float64)
    v, ax = (reshape(x, (-1,)), 0) if axis is None else (_vec(x), _dim(x, axis, "median"))
    n = v.shape[ax]
    xs = take_along_axis(v, _argsort(v, axis=ax, descending=False), ax)

    def at(k):
        return getitem(xs, (slice(None),) * ax + (k,))

    m = at((n - 1) // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2
    m = where(any(isnan(v), ax), float("nan"), m)
    if keepdims:
        m = reshape(m, (1,) * x.ndim if axis is None else tuple(x.shape[:ax]) + (1,)
                    + tuple(x.shape[ax + 1:]))
    if out is not None:
        return write_out("median", out, m, differentiable=True)
    return m


def median(x, dim: int | None = None, keepdim: bool = False, *, axis=_NO,
           keepdims: bool | None = None, out=None, overwrite_input: bool = False):
    """The lower median (no averaging, as PyTorch); with ``dim``: (values, indices). A lane
    with NaN gives NaN; without ``dim`` no entries give NaN and tied entries share the
    gradient. NumPy's keywords (``axis=``, ``keepdims=``, ``out=``) give ``numpy.median``:
    the average of the two middle entries, integers as float64."""
    if axis is not _NO or keepdims is not None or out is not None or overwrite_input:
        return _np_median(x, None if axis is _NO else axis, bool(keepdims), out)
    ordered("median", x)
    if dim is None:
        if x.numel() == 0 and B.is_float(x.dtype):  # PyTorch: NaN for no entries
            return empty_nan(x)
        return share_ties(x, median(reshape(x, (-1,)), 0).values)
    ax = _dim(x, dim, "median")
    v = _vec(x)
    n = v.shape[ax]
    if n == 0:
        raise ShapeError(f"median: dim {dim} is empty (shape {tuple(x.shape)})")
    idx = _slice(_argsort(v, axis=ax, descending=False), ax, (n - 1) // 2, (n - 1) // 2 + 1)
    if B.is_float(v.dtype):
        nan = isnan(v)
        idx = where(any(nan, ax, True), argmax(nan, ax, True), idx)
    return _selected(v, idx, ax, keepdim, x.ndim == 0)


def empty_nan(x: Tensor) -> Tensor:
    """NaN, the median of no entries, in ``x``'s dtype; on ``x``'s graph when it requires grad
    (its gradient is empty, as PyTorch's: a backward through it works)."""
    if x.requires_grad:
        return reshape(x, (-1,)).sum() + float("nan")
    return Tensor._of(x.backend.xp.asarray(float("nan"), dtype=x.dtype))


_INTERP = ("linear", "lower", "higher", "midpoint", "nearest")


def quantile(x, q, dim: int | None = None, keepdim: bool = False, *,
             interpolation: str = "linear", axis=_NO, keepdims: bool | None = None,
             method: str | None = None, out=None, overwrite_input: bool = False, weights=None):
    """The ``q``-quantiles (a number or a 1-d tensor in [0, 1]) along ``dim`` (all entries
    when None), interpolated as ``torch.quantile``; a 1-d ``q`` adds a leading axis. NumPy's
    keywords (``axis=``, ``keepdims=``, ``method=`` with its 13 methods, ``out=``,
    ``weights=``) or an integer or bool input give ``numpy.quantile`` (integers as float64),
    as :func:`percentile` does for percentages. Under CPU autocast a lower-precision input
    (and ``q``) is computed in float32, as PyTorch lists quantile."""
    numpy_form = (axis is not _NO or keepdims is not None or method is not None
                  or out is not None or overwrite_input or weights is not None)
    if numpy_form or not isinstance(x, Tensor) or x.dtype.kind in "biu":
        _quantile = _numpy_quantile[0]
        ax = dim if axis is _NO else axis
        kd = keepdim if keepdims is None else bool(keepdims)
        meth = method if method is not None else interpolation
        return _quantile("quantile", x, q, ax, out, meth, kd, weights, False, 1)
    if interpolation not in _INTERP:
        raise ValueError(f"quantile: interpolation must be one of {_INTERP}, "
                         f"got {interpolation!r}")
    x, q = float32_in_region(x, q, cpu_only=True)
    if x.dtype == B.bfloat16:
        raise DTypeError("quantile: bfloat16 is not supported (as torch.quantile); convert "
                         "with .float()")
    if x.dtype.kind != "f":
        raise DTypeError(f"quantile: expected a floating-point input, got {x.dtype}")
    qt = q if isinstance(q, Tensor) else Tensor._of(x.backend.xp.asarray(q, dtype=x.dtype))
    if qt.dtype != x.dtype:
        raise DTypeError(f"quantile: q must have the input's dtype {x.dtype} (as "
                         f"torch.quantile), got {qt.dtype}")
    if qt.ndim > 1:
        raise ShapeError(f"quantile: q must be a number or a 1-d tensor, got shape "
                         f"{tuple(qt.shape)}")
    qv = _values(qt)
    if qv.size and not bool(((qv >= 0) & (qv <= 1)).all()):
        raise ValueError("quantile: q values must lie in [0, 1]")
    nd = x.ndim
    if dim is None:
        v, ax = reshape(x, (-1,)), 0
    else:
        ax = _dim(x, dim, "quantile")
        v = _vec(x)
    n = v.shape[ax]
    if n == 0:
        raise ShapeError(f"quantile: the input is empty along the reduced dims "
                         f"(shape {tuple(x.shape)})")
    xs = moveaxis(take_along_axis(v, _argsort(v, axis=ax, descending=False), ax), ax, -1)
    lead = tuple(xs.shape[:-1])
    m = 1 if qt.ndim == 0 else qt.shape[0]
    pos = reshape(qt, (m,)) * float(n - 1)
    lo, hi = floor(pos), ceil(pos)
    if interpolation == "nearest":
        lo = hi = round(pos)
    elif interpolation == "lower":
        hi = lo
    elif interpolation == "higher":
        lo = hi

    def pick(p):
        i = astype(p, B.int64)
        return take_along_axis(xs, _bcast(i, lead), -1)

    below, above = pick(lo), pick(hi)
    if interpolation == "linear":
        out = lerp(below, above, pos - lo)
    elif interpolation == "midpoint":
        out = lerp(below, above, 0.5)
    else:
        out = below
    out = where(any(isnan(xs), -1, True), float("nan"), out)  # (..., m)
    out = moveaxis(out, -1, 0)  # (m, ...lead)
    if keepdim and dim is None:
        out = reshape(out, (m,) + (1,) * nd)
    elif keepdim and nd:
        out = reshape(out, (m,) + lead[:ax] + (1,) + lead[ax:])
    return reshape(out, out.shape[1:]) if qt.ndim == 0 else out


def _bcast(i, lead):
    from .shape import broadcast_to

    return broadcast_to(reshape(i, (1,) * len(lead) + (i.shape[0],)), lead + (i.shape[0],))


# --- unique, searchsorted, bucketize (no gradient) --------------------------------------------
def _unique_distinct_nan(xp, flat):
    """(values, inverse, counts) of a 1-d array with NaNs as PyTorch's unique gives them: each
    NaN distinct (NaN != NaN), after the numbers, in the order they appear."""
    nan = xp.isnan(flat)
    u, inv_num, cnt = xp.unique(flat[~nan], return_inverse=True, return_counts=True)
    k = int(nan.sum())
    values = xp.concatenate([u, xp.full(k, xp.nan, dtype=flat.dtype)])
    counts = xp.concatenate([cnt, xp.ones(k, dtype=cnt.dtype)])
    inv = xp.empty(flat.shape[0], dtype=xp.int64)
    inv[~nan] = inv_num.reshape(-1)
    inv[nan] = u.shape[0] + xp.arange(k)
    return values, inv, counts


def unique(x, sorted: bool = True, return_inverse: bool = False, return_counts: bool = False,
           dim: int | None = None):
    """The distinct values (sorted), with the inverse indices and counts on request; over
    ``dim`` the distinct slices. No gradient; not available inside vmap (the size depends on
    the values)."""
    if type(x) is BatchTracer:
        raise TypeError("unique: the output size depends on the values, so it cannot run "
                        "inside vmap")
    x._concrete("unique (the output's size depends on the values)")
    ordered("unique", x)  # distinct values come out sorted (PyTorch refuses complex too)
    xp = x.backend.xp
    axis = None if dim is None else norm_axis(dim, x.ndim, "unique")
    if axis is not None and 0 in x.shape[:axis] + x.shape[axis + 1:]:
        raise ShapeError(f"unique: shape {tuple(x.shape)} has an empty dim other than dim "
                         f"{axis} (PyTorch refuses it)")
    if axis is None and B.is_inexact(x.dtype) and bool(xp.isnan(x._data).any()):
        res = _unique_distinct_nan(xp, x._data.reshape(-1))
    else:
        res = xp.unique(x._data, return_inverse=True, return_counts=True, axis=axis)
    out, inv, counts = (Tensor._of(r) for r in res)
    inv = reshape(inv, x.shape if axis is None else (x.shape[axis],))
    extra = ((inv,) if return_inverse else ()) + ((counts,) if return_counts else ())
    return (out,) + extra if extra else out


def _searchsorted_fwd(xp, seq, v, right, int32):
    side = "right" if right else "left"
    if seq.ndim == 1:
        out = xp.searchsorted(seq, v, side=side)
    else:  # one sorted row per leading index: count the entries below each value (a NaN
        # value goes after every entry, as in the 1-d search)
        after = (seq[..., None, :] > v[..., :, None]) if right else (
            seq[..., None, :] >= v[..., :, None])
        out = seq.shape[-1] - after.sum(-1)
    return xp.asarray(out).astype(xp.int32 if int32 else xp.int64)


def _searchsorted_batch(vals, bdims, right, int32):
    (seq, v), (bs, bv) = vals, bdims
    if bs is None:
        return _searchsorted(seq, front(v, bv), right=right, int32=int32), 0
    n = size_of(vals, bdims)
    seq = batched(seq, bs, n)
    v = batched(v, bv, n)
    if seq.ndim == 2:  # one row per example: flatten the values of each example
        shape = tuple(v.shape)
        out = _searchsorted(seq, reshape(v, (n, -1)), right=right, int32=int32)
        return reshape(out, shape), 0
    return _searchsorted(seq, v, right=right, int32=int32), 0


_searchsorted = primitive("searchsorted", _searchsorted_fwd, kind="sort", promote=False,
                          batch=_searchsorted_batch,
                          doc="Insertion points of values into sorted rows (no gradient).")


def searchsorted(sorted_sequence, values, *, out_int32: bool = False, right: bool = False,
                 side: str | None = None, sorter=None):
    """Where ``values`` would go in ``sorted_sequence`` (1-d, or rows matching the leading
    dims of ``values``) to keep it sorted; ``right``/``side='right'`` after equal entries.
    ``sorter`` (int64, the shape of ``sorted_sequence``) holds the indices that sort an
    unsorted sequence along its last dim; the result indexes that sorted order (PyTorch)."""
    if side is not None:
        if side not in ("left", "right"):
            raise ValueError(f"searchsorted: side must be 'left' or 'right', got {side!r}")
        if right and side == "left":
            raise ValueError("searchsorted: right=True contradicts side='left'")
        right = side == "right"
    seq = sorted_sequence
    if not isinstance(seq, Tensor):  # NumPy's: a sequence of numbers
        xp = values.backend.xp if isinstance(values, Tensor) else B.np
        seq = Tensor._of(xp.asarray(seq))
    v = _as_tensor(values, seq)
    if seq.ndim == 0:
        raise ShapeError("searchsorted: sorted_sequence must have at least 1 dim, got a scalar")
    if sorter is not None:
        seq = _sorted_by(seq, sorter)
    if seq.ndim > 1 and tuple(seq.shape[:-1]) != tuple(v.shape[:-1]):
        raise ShapeError(f"searchsorted: the leading dims of sorted_sequence "
                         f"{tuple(seq.shape)} and values {tuple(v.shape)} must match")
    return _searchsorted(seq, v, right=bool(right), int32=bool(out_int32))


def _sorted_by(seq, sorter):
    """``seq`` put in order along its last dim by the indices ``sorter`` (checked)."""
    if not isinstance(sorter, Tensor) or sorter.dtype != B.int64:
        raise DTypeError(f"searchsorted: sorter must be an int64 tensor, got "
                         f"{getattr(sorter, 'dtype', type(sorter).__name__)}")
    if tuple(sorter.shape) != tuple(seq.shape):
        raise ShapeError(f"searchsorted: sorter must have the shape of sorted_sequence "
                         f"{tuple(seq.shape)}, got {tuple(sorter.shape)}")
    idx = _values(sorter)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= seq.shape[-1]):
        raise IndexError(f"searchsorted: sorter holds indices outside [0, {seq.shape[-1] - 1}]")
    return take_along_axis(seq, sorter, -1)


def bucketize(input, boundaries, *, out_int32: bool = False, right: bool = False):
    """The bucket of each entry: boundaries[i-1] < x <= boundaries[i] (``right``: [i-1, i))."""
    if boundaries.ndim != 1:
        raise ShapeError(f"bucketize: boundaries must be 1-d, got shape "
                         f"{tuple(boundaries.shape)}")
    return _searchsorted(boundaries, _as_tensor(input, boundaries), right=bool(right),
                         int32=bool(out_int32))


def _as_tensor(v, like):
    """Numbers as a tensor of ``like``'s dtype and device; floats searched in an integer
    sequence stay float64 (3.5 goes after 3, not at 3)."""
    if isinstance(v, Tensor):
        return v
    arr = like.backend.xp.asarray(v)
    keep = arr.dtype.kind == "f" and like.dtype.kind in "biu"
    return Tensor._of(arr if keep else arr.astype(like.dtype))
