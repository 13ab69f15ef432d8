"""NumPy's array building, editing, set and index-helper functions that PyTorch's namespace
lacks (``insert``, ``delete``, ``union1d``, ``partition`` ...), with NumPy's meaning.

Each function keeps NumPy's argument names (``axis=``, ``kth=``, ``assume_unique=``), result
dtypes, order and errors, on tensors. Those that move values are exact compositions of existing
primitives (getitem and its functional setitem, concatenate, take_along_axis, argsort), so
their VJP, JVP, vmap and jit rules come from those primitives; no primitive is declared here.
Where the output's shape depends on the values (the set ops, ``unique_*``, ``compress`` and
``extract`` with a tensor condition, ``delete``/``insert`` with tensor positions) the values are
read eagerly: inside ``jit`` that raises the jit's JitError, inside ``vmap`` a TypeError. The
positions are found on the host, then gathered from the tensor, so gradients still flow to the
picked elements.

NumPy's in-place functions (``put_along_axis``, ``fill_diagonal``) change the tensor in place
with PyTorch's in-place rules (:func:`.aliases.apply_inplace`): while a graph is recorded the
tensor is rebound to the recorded result, and a leaf that requires grad refuses. They return
None, as NumPy's.

Creation functions (``identity``, ``tri``, ``geomspace``) default to the default float dtype
(float32, :func:`nodegrad.set_default_dtype`), as ``linspace`` here, not NumPy's float64.
:func:`shape` is left out of ``__all__``: a star import would rebind ``nodegrad.ops.shape``,
the shape module; the top level takes it by name.
"""

from __future__ import annotations

import math
import numbers
from collections import namedtuple
from collections.abc import Callable, Sequence

from .. import _backend as B
from ..batching import BatchTracer
from ..batching import values as _values
from ..errors import DTypeError, ShapeError
from ..func.tree import register_pytree_node
from ..tensor import Tensor, get_default_device
from . import index as I
from . import shape as S
from .elementwise import astype, clip, remainder
from .slicing import _int, tensor_split
from .sort import argsort

__all__ = [
    "insert", "delete", "append", "array_split", "unstack", "permute_dims",
    "matrix_transpose", "rollaxis", "identity", "tri", "geomspace", "union1d", "intersect1d",
    "setdiff1d", "setxor1d", "unique_all", "unique_counts", "unique_inverse", "unique_values",
    "lexsort", "partition", "argpartition", "put_along_axis", "choose", "compress", "extract",
    "array", "flatnonzero", "ix_", "indices", "fill_diagonal", "diag_indices", "diag_indices_from",
    "tril_indices_from", "triu_indices_from", "mask_indices", "ravel_multi_index",
    "asarray_chkfinite", "ascontiguousarray", "array_equal", "array_equiv", "ndim", "size",
    "isscalar",
]  # and shape(), which nodegrad's top level takes by name (nodegrad.ops.shape is a module)

UniqueAllResult = namedtuple("UniqueAllResult", ["values", "indices", "inverse_indices",
                                                 "counts"])
UniqueCountsResult = namedtuple("UniqueCountsResult", ["values", "counts"])
UniqueInverseResult = namedtuple("UniqueInverseResult", ["values", "inverse_indices"])
for _nt in (UniqueAllResult, UniqueCountsResult, UniqueInverseResult):  # pytrees for jit/grad
    register_pytree_node(_nt, lambda t: (list(t), None), lambda aux, c, nt=_nt: nt(*c))

_np = B.np


# --- helpers ---------------------------------------------------------------------------------
def _backend(like=None) -> B.Backend:
    return like.backend if isinstance(like, Tensor) else B.get_backend(get_default_device())


def _arr(op: str, a, like=None) -> Tensor:
    """A tensor for an array-like, converted as NumPy converts it (Python floats become
    float64), on ``like``'s device (else the default device); a tensor is itself."""
    if isinstance(a, Tensor):
        return a
    try:
        host = _np.asarray(a)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{op}: cannot make a tensor of {type(a).__name__}: {e}") from None
    if host.dtype.kind not in "biufc" and host.dtype != B.bfloat16:
        raise DTypeError(f"{op}: expected numbers, got an array of dtype {host.dtype}")
    return Tensor._of(_backend(like).asarray(host))


def _new(host, like=None) -> Tensor:
    """A tensor holding a host array made here (indices, masks, ranges)."""
    return Tensor._of(_backend(like).asarray(host))


def _cast(t: Tensor, dt) -> Tensor:
    return t if t.dtype == dt else astype(t, dt)


def _read(op: str, t, what: str = "the values"):
    """The host values of a tensor whose values decide an output's shape: refused inside vmap
    (TypeError) and inside jit (JitError)."""
    if isinstance(t, BatchTracer):
        raise TypeError(f"{op}: the output's size depends on {what}, so it cannot run inside "
                        "vmap")
    if not isinstance(t, Tensor):
        try:
            return _np.asarray(t)
        except ValueError as e:
            raise TypeError(f"{op}: cannot read {what} from {t!r}: {e}") from None
    t._concrete(f"{op} (the output's size depends on {what})")
    return t.backend.to_host(t._data)


def _axis(op: str, axis, ndim: int, exc: type[Exception] = ShapeError) -> int:
    """NumPy's axis check: -ndim <= axis < ndim (so a 0-d tensor has no axis)."""
    ax = _int(op, axis, "axis")
    if not -ndim <= ax < ndim:
        raise exc(f"{op}: axis {ax} is out of bounds for a tensor of {ndim} dims")
    return ax % ndim


def _along(x, ax: int, index):
    return I.getitem(x, (slice(None),) * ax + (index,))


def _fit(op: str, v: Tensor, want: tuple, what: str = "values") -> Tensor:
    """``v`` broadcast to ``want`` as NumPy's assignment broadcasts it (extra leading
    length-1 dims dropped); a ShapeError naming ``op`` where it does not fit."""
    want = tuple(want)
    if tuple(v.shape) == want:
        return v
    lead = 0
    while v.ndim - lead > len(want) and v.shape[lead] == 1:
        lead += 1
    if lead:
        v = S.reshape(v, tuple(v.shape[lead:]))
    if v.numel() == 0 and math.prod(want) == 0:  # nothing to write: NumPy checks no shape
        return S.reshape(v, want)
    try:
        _np.broadcast_to(_np.empty(v.shape, bool), want)
    except ValueError:
        raise ShapeError(f"{op}: {what} of shape {tuple(v.shape)} do not broadcast to the shape "
                         f"{want} they fill") from None
    return S.broadcast_to(v, want)


def _flat(x: Tensor) -> Tensor:
    return x if x.ndim == 1 else S.reshape(x, (-1,))


def _input_axis(op: str, a, axis) -> tuple[Tensor, int]:
    """The input as a tensor and NumPy's ``axis`` of it (None: the flattened input, axis 0)."""
    x = _arr(op, a)
    if axis is None:
        return _flat(x), 0
    return x, _axis(op, axis, x.ndim)


def _running_products(dims) -> list:
    """The running products of ``dims`` (NumPy's cumprod of a shape)."""
    out, p = [], 1
    for d in dims:
        p *= d
        out.append(p)
    return out


def _int_positions(op: str, obj, from_array: bool, exc: type[Exception]):
    """Host integer positions from ``obj`` (NumPy's rule: an empty list is an empty int
    array; other non-integers raise ``exc``)."""
    if obj.dtype.kind not in "iu":
        if obj.size == 0 and not from_array:
            return obj.astype(B.int64)
        raise exc(f"{op}: positions must be integers (or a bool mask), got dtype "
                         f"{obj.dtype}")
    return obj.astype(B.int64)


# --- inserting, deleting, appending ----------------------------------------------------------
def insert(arr, obj, values, axis: int | None = None) -> Tensor:
    """A copy of ``arr`` with ``values`` inserted before the positions ``obj`` (an int, a
    sequence of ints, a 1-d bool mask or a slice) along ``axis`` (None: the flattened input),
    NumPy's rules: with one scalar position ``values`` may fill several new slices, with a
    sequence one slice each. Values take ``arr``'s dtype; differentiable in both."""
    op = "insert"
    x, ax = _input_axis(op, arr, axis)
    n = x.shape[ax]
    v = _cast(_arr(op, values, x), x.dtype)
    if isinstance(obj, slice):
        idx, scalar = _np.arange(*obj.indices(n)), False
    else:
        if isinstance(obj, bool | _np.bool_):
            raise DTypeError(f"{op}: obj must be an int, a sequence of ints, a 1-d bool mask or "
                             "a slice, got a bool")
        idx = _read(op, obj, "the positions")
        scalar = idx.ndim == 0
        if idx.dtype == bool:
            if idx.ndim != 1:
                raise ShapeError(f"{op}: a bool mask obj must be 1-d, got shape {idx.shape}")
            idx = _np.flatnonzero(idx)
        elif idx.ndim > 1:
            raise ShapeError(f"{op}: obj must be a scalar or 1-d, got shape {idx.shape}")
        else:
            idx = _int_positions(op, idx, isinstance(obj, Tensor | B.ndarray), DTypeError)
    if idx.size == 1:  # one position: values fill as many new slices as they hold
        i = int(idx.reshape(()))
        if not -n <= i <= n:
            raise IndexError(f"{op}: index {i} is out of bounds for axis {ax} with size {n}")
        i += n if i < 0 else 0
        if v.ndim < x.ndim:
            v = S.reshape(v, (1,) * (x.ndim - v.ndim) + tuple(v.shape))
        if scalar:
            v = S.moveaxis(v, 0, ax)
        k = v.shape[ax]
        v = _fit(op, v, x.shape[:ax] + (k,) + x.shape[ax + 1:])
        return S.concatenate([_along(x, ax, slice(0, i)), v, _along(x, ax, slice(i, None))], ax)
    pos = idx.reshape(-1).copy()
    pos[pos < 0] += n
    k = pos.shape[0]
    pos[_np.argsort(pos, kind="stable")] += _np.arange(k)
    total = n + k
    if k and (pos.min() < -total or pos.max() >= total):
        raise IndexError(f"{op}: positions {idx.tolist()} do not fit axis {ax} with size {n}")
    old = _np.ones(total, bool)
    old[pos] = False
    kept = int(old.sum())
    if kept != n and n != 1:  # two positions met after wrapping: NumPy's shape mismatch
        raise ShapeError(f"{op}: positions {idx.tolist()} leave {kept} places for the {n} "
                         f"slices of axis {ax}")
    perm = _np.empty(total, B.int64)
    perm[old] = _np.arange(n) if kept == n else 0  # one slice fills every place (NumPy)
    perm[pos] = n + _np.arange(k)
    v = _fit(op, v, x.shape[:ax] + (k,) + x.shape[ax + 1:])
    return _along(S.concatenate([x, v], ax), ax, perm)


def delete(arr, obj, axis: int | None = None) -> Tensor:
    """A copy of ``arr`` without the slices at ``obj`` (an int, a sequence of ints, a bool
    mask of the axis length, or a slice) along ``axis`` (None: the flattened input).
    Differentiable (a gather of the kept slices)."""
    op = "delete"
    x, ax = _input_axis(op, arr, axis)
    n = x.shape[ax]
    if isinstance(obj, slice):
        keep = _np.delete(_np.arange(n), obj)
    else:
        o = _read(op, obj, "the positions")
        if o.dtype == bool:
            if o.shape != (n,):
                raise ShapeError(f"{op}: a bool mask obj must be 1-d with the axis length {n}, "
                                 f"got shape {o.shape}")
            keep = _np.flatnonzero(~o)
        else:
            o = _int_positions(op, o, isinstance(obj, Tensor | B.ndarray), IndexError)
            if o.size and (o.min() < -n or o.max() >= n):
                bad = o.min() if o.min() < -n else o.max()
                raise IndexError(f"{op}: index {int(bad)} is out of bounds for axis {ax} with "
                                 f"size {n}")
            mask = _np.ones(n, bool)
            mask[o] = False
            keep = _np.flatnonzero(mask)
    return _along(x, ax, keep)


def append(arr, values, axis: int | None = None) -> Tensor:
    """``arr`` with ``values`` added at the end of ``axis`` (None: both flattened). The result
    has NumPy's promoted dtype of the two (a list of Python floats is float64)."""
    op = "append"
    x = _arr(op, arr)
    v = _arr(op, values, x)
    dt = _np.result_type(x.dtype, v.dtype)
    if axis is None:
        x, v, ax = _flat(x), _flat(v), 0
    else:
        ax = _axis(op, axis, x.ndim)
        if v.ndim != x.ndim:
            raise ShapeError(f"{op}: values have {v.ndim} dims but arr has {x.ndim} (shapes "
                             f"{tuple(v.shape)} and {tuple(x.shape)}); they must match")
        for d in range(x.ndim):
            if d != ax and x.shape[d] != v.shape[d]:
                raise ShapeError(f"{op}: shapes {tuple(x.shape)} and {tuple(v.shape)} differ "
                                 f"outside axis {ax}")
    return S.concatenate([_cast(x, dt), _cast(v, dt)], ax)


# --- splitting and axis order ----------------------------------------------------------------
def array_split(ary, indices_or_sections, axis: int = 0) -> list:
    """A list of parts along ``axis``: ``n`` nearly equal ones (the first ``size % n`` one
    longer), or cut before each listed index (slice bounds: past the end gives empty parts)."""
    op = "array_split"
    x = _arr(op, ary)
    if x.ndim == 0:
        raise IndexError(f"{op}: expected a tensor with at least 1 dim, got a 0-d tensor")
    ax = _axis(op, axis, x.ndim, IndexError)
    ios = indices_or_sections
    if isinstance(ios, Tensor):
        ios = _read(op, ios, "indices_or_sections")
    if isinstance(ios, B.ndarray) and ios.ndim == 0:
        ios = ios.item()
    if isinstance(ios, Sequence | B.ndarray):
        return list(tensor_split(x, [_int(op, i, "an index") for i in ios], ax))
    k = _int(op, ios, "the number of sections")
    if k <= 0:
        raise ShapeError(f"{op}: the number of sections must be larger than 0, got {k}")
    return list(tensor_split(x, k, ax))


def unstack(x, /, *, axis: int = 0) -> tuple:
    """The slices along ``axis``, as a tuple (views; gradients add back)."""
    t = _arr("unstack", x)
    if t.ndim == 0:
        raise ShapeError("unstack: expected a tensor with at least 1 dim, got a 0-d tensor")
    ax = _axis("unstack", axis, t.ndim)
    return tuple(_along(t, ax, i) for i in range(t.shape[ax]))


def _permutation(op: str, axes, ndim: int) -> tuple:
    axes = tuple(_axis(op, a, ndim) for a in axes)
    if len(axes) != ndim:
        raise ShapeError(f"{op}: axes {axes} don't match a tensor of {ndim} dims")
    if len(set(axes)) != ndim:
        raise ShapeError(f"{op}: repeated axis in {axes}")
    return axes


def permute_dims(a, axes: Sequence[int] | None = None) -> Tensor:
    """The axes permuted (reversed when ``axes`` is None): the array API's transpose."""
    x = _arr("permute_dims", a)
    if axes is None:
        return S.transpose(x)
    return S.transpose(x, _permutation("permute_dims", axes, x.ndim))


def matrix_transpose(x, /) -> Tensor:
    """The last two axes swapped (a stack of matrices transposed)."""
    t = _arr("matrix_transpose", x)
    if t.ndim < 2:
        raise ShapeError(f"matrix_transpose: expected at least 2 dims, got shape "
                         f"{tuple(t.shape)}")
    return S.swapaxes(t, -1, -2)


def rollaxis(a, axis: int, start: int = 0) -> Tensor:
    """Axis ``axis`` moved to stand before position ``start`` (NumPy's older moveaxis;
    ``-ndim <= start <= ndim``)."""
    x = _arr("rollaxis", a)
    n = x.ndim
    ax = _axis("rollaxis", axis, n)
    s = _int("rollaxis", start, "start")
    s0 = s + n if s < 0 else s
    if not 0 <= s0 < n + 1:
        raise ShapeError(f"rollaxis: start must satisfy {-n} <= start < {n + 1}, got {s}")
    if ax < s0:
        s0 -= 1
    if ax == s0:
        return S._same_view(x)
    perm = [d for d in range(n) if d != ax]
    perm.insert(s0, ax)
    return S.transpose(x, perm)


# --- creation --------------------------------------------------------------------------------
def _float_default(dtype):
    return B.as_dtype(dtype) if dtype is not None else B.DEFAULT_FLOAT


def identity(n: int, dtype=None) -> Tensor:
    """The ``n`` x ``n`` identity matrix (default float dtype)."""
    n = _int("identity", n, "n")
    if n < 0:
        raise ShapeError(f"identity: n must be non-negative, got {n}")
    return _new(_np.eye(n, dtype=_float_default(dtype)))


def tri(N: int, M: int | None = None, k: int = 0, dtype=None) -> Tensor:
    """An ``N`` x ``M`` matrix of ones on and below diagonal ``k``, zeros above (default float
    dtype; negative sizes give empty dims, as NumPy)."""
    N = _int("tri", N, "N")
    M = N if M is None else _int("tri", M, "M")
    return _new(_np.tri(N, M, _int("tri", k, "k"), dtype=_float_default(dtype)))


def geomspace(start, stop, num: int = 50, endpoint: bool = True, dtype=None,
              axis: int = 0) -> Tensor:
    """``num`` numbers spaced evenly on a log scale from ``start`` to ``stop`` (both ends
    exact; both negative gives a negative sequence; zero, or real bounds of opposite signs,
    where NumPy gives NaN, is an error). Array bounds add an axis at ``axis``. Default dtype:
    that of tensor bounds, at least the default float."""
    op = "geomspace"
    num = _int(op, num, "num")
    if num < 0:
        raise ShapeError(f"{op}: num must be non-negative, got {num}")
    like = start if isinstance(start, Tensor) else stop if isinstance(stop, Tensor) else None
    a, b = (_read(op, v, "the bounds") for v in (start, stop))
    kinds = [v.dtype for v in (start, stop) if isinstance(v, Tensor | B.ndarray)]
    kinds += [h.dtype for h in (a, b) if h.dtype.kind == "c"]
    dt = _np.result_type(*kinds, B.DEFAULT_FLOAT) if dtype is None else B.as_dtype(dtype)
    work = _np.complex128 if dt.kind == "c" else _np.float64  # as NumPy: float64, then cast
    if bool(_np.any(a == 0)) or bool(_np.any(b == 0)):
        raise ValueError(f"{op}: a geometric sequence cannot include zero (start={a.tolist()}, "
                         f"stop={b.tolist()})")
    if dt.kind != "c" and a.dtype.kind != "c" and b.dtype.kind != "c" \
            and bool(_np.any(_np.sign(a) * _np.sign(b) < 0)):  # NumPy: NaN and a warning
        raise ValueError(f"{op}: start and stop have opposite signs (start={a.tolist()}, "
                         f"stop={b.tolist()}), so no real geometric sequence joins them; "
                         "use complex bounds")
    if not (a.ndim == 0 and b.ndim == 0):
        ax = _int(op, axis, "axis")
        nd = len(_np.broadcast_shapes(a.shape, b.shape)) + 1
        if not -nd <= ax < nd:
            raise ShapeError(f"{op}: axis {ax} is out of bounds for the result's {nd} dims")
    elif axis not in (0, -1):
        raise ShapeError(f"{op}: axis {axis} is out of bounds for the 1-d result")
    with _np.errstate(invalid="ignore"):
        out = _np.geomspace(a.astype(work), b.astype(work), num, endpoint, axis=axis)
    return _new(out.astype(dt), like)


# --- sets (sizes depend on the values: read eagerly, then gathered) --------------------------
def _pair(op: str, ar1, ar2):
    a = _arr(op, ar1)
    b = _arr(op, ar2, a)
    return a, b, _read(op, a).reshape(-1), _read(op, b).reshape(-1)


def _joined(a: Tensor, b: Tensor, dt) -> Tensor:
    return S.concatenate([_cast(_flat(a), dt), _cast(_flat(b), dt)], 0)


def _pick(t: Tensor, positions) -> Tensor:
    return I.getitem(t, (_np.asarray(positions, dtype=B.int64),))


def union1d(ar1, ar2) -> Tensor:
    """The sorted distinct values of both inputs (flattened; one NaN at most); the gradient
    goes to each value's first occurrence."""
    a, b, ha, hb = _pair("union1d", ar1, ar2)
    dt = _np.result_type(a.dtype, b.dtype)
    _, first = _np.unique(_np.concatenate([ha, hb]).astype(dt), return_index=True)
    return _pick(_joined(a, b, dt), first)


def intersect1d(ar1, ar2, assume_unique: bool = False, return_indices: bool = False):
    """The sorted values in both inputs (flattened); with ``return_indices`` also the
    positions of their first occurrences in each flattened input. ``assume_unique`` skips
    removing repeats (the answer is wrong if there are any). Gradient to ``ar1``'s entries."""
    a, b, ha, hb = _pair("intersect1d", ar1, ar2)
    dt = _np.result_type(a.dtype, b.dtype)
    _, ia, ib = _np.intersect1d(ha.astype(dt), hb.astype(dt), assume_unique=assume_unique,
                                return_indices=True)
    out = _pick(_joined(a, b, dt), ia)
    if not return_indices:
        return out
    return out, _new(ia.astype(B.int64), a), _new(ib.astype(B.int64), a)


def setdiff1d(ar1, ar2, assume_unique: bool = False) -> Tensor:
    """The values of ``ar1`` not in ``ar2`` (sorted and distinct, unless ``assume_unique``:
    then in ``ar1``'s order), in ``ar1``'s dtype; the gradient goes to ``ar1``."""
    a, b, ha, hb = _pair("setdiff1d", ar1, ar2)
    if assume_unique:
        keep = _np.flatnonzero(_np.isin(ha, hb, assume_unique=True, invert=True))
    else:
        u, first = _np.unique(ha, return_index=True)
        keep = first[_np.isin(u, _np.unique(hb), assume_unique=True, invert=True)]
    return _pick(_flat(a), keep)


def setxor1d(ar1, ar2, assume_unique: bool = False) -> Tensor:
    """The sorted values in exactly one of the inputs (flattened)."""
    a, b, ha, hb = _pair("setxor1d", ar1, ar2)
    dt = _np.result_type(a.dtype, b.dtype)
    ha, hb = ha.astype(dt), hb.astype(dt)
    if assume_unique:
        ia, ib = _np.arange(ha.size), _np.arange(hb.size)
    else:
        ha, ia = _np.unique(ha, return_index=True)
        hb, ib = _np.unique(hb, return_index=True)
    aux = _np.concatenate([ha, hb])
    pos = _np.concatenate([ia, ib + a.numel()]).astype(B.int64)
    if aux.size:
        order = _np.argsort(aux, kind="stable")
        s = aux[order]
        flag = _np.concatenate(([True], s[1:] != s[:-1], [True]))
        pos = pos[order[flag[1:] & flag[:-1]]]
    return _pick(_joined(a, b, dt), pos)


def _unique(op: str, x):
    t = _arr(op, x)
    host = _read(op, t)
    u, first, inv, counts = _np.unique(host.reshape(-1), return_index=True,
                                       return_inverse=True, return_counts=True,
                                       equal_nan=False)
    vals = _pick(_flat(t), first)
    return t, vals, first, inv.reshape(host.shape), counts


def unique_all(x) -> UniqueAllResult:
    """(values, indices, inverse_indices, counts): the sorted distinct values (each NaN
    distinct), the first index of each in the flattened input, each element's value index
    (in ``x``'s shape) and the counts. Gradient to the first occurrences."""
    t, vals, first, inv, counts = _unique("unique_all", x)
    return UniqueAllResult(vals, _new(first.astype(B.int64), t), _new(inv.astype(B.int64), t),
                           _new(counts.astype(B.int64), t))


def unique_counts(x) -> UniqueCountsResult:
    """(values, counts) of the distinct values, sorted (each NaN distinct)."""
    t, vals, _, _, counts = _unique("unique_counts", x)
    return UniqueCountsResult(vals, _new(counts.astype(B.int64), t))


def unique_inverse(x) -> UniqueInverseResult:
    """(values, inverse_indices): the sorted distinct values and, in ``x``'s shape, each
    element's index among them."""
    t, vals, _, inv, _ = _unique("unique_inverse", x)
    return UniqueInverseResult(vals, _new(inv.astype(B.int64), t))


def unique_values(x) -> Tensor:
    """The distinct values (each NaN distinct), sorted (NumPy leaves the order unspecified)."""
    return _unique("unique_values", x)[1]


# --- sorting and selection -------------------------------------------------------------------
def lexsort(keys, axis: int = -1) -> Tensor:
    """The int64 indices that sort by several keys along ``axis``: the last key first, ties
    broken by the one before, and so on (stable; NaN last). ``keys`` is a sequence of
    same-shape tensors, or a tensor whose first axis holds the keys."""
    op = "lexsort"
    if isinstance(keys, Tensor):
        if keys.ndim == 0:
            raise TypeError(f"{op}: needs a sequence of at least one key, got a 0-d tensor")
        ks = [_along(keys, 0, i) for i in range(keys.shape[0])]
    else:
        ks = [_arr(op, k) for k in keys]
    if not ks:
        raise TypeError(f"{op}: needs a sequence of at least one key, got none")
    shape = tuple(ks[0].shape)
    if any(tuple(k.shape) != shape for k in ks):
        raise ShapeError(f"{op}: all keys need the same shape, got "
                         f"{[tuple(k.shape) for k in ks]}")
    if not shape:
        return _new(_np.zeros((), B.int64), ks[0])
    ax = _axis(op, axis, len(shape))
    idx = argsort(ks[0], ax)
    for k in ks[1:]:
        idx = I.take_along_axis(idx, argsort(I.take_along_axis(k, idx, ax), ax), ax)
    return idx


def _partition_args(op: str, a, kth, axis, kind, order):
    x, ax = _input_axis(op, a, axis)
    if kind != "introselect":
        raise ValueError(f"{op}: kind must be 'introselect', got {kind!r}")
    if order is not None:
        raise ValueError(f"{op}: order= names fields of a structured array; tensors have none")
    k = _values(kth) if isinstance(kth, Tensor) else _np.asarray(kth)
    if k.dtype == bool:
        raise ValueError(f"{op}: kth must be integers, not booleans")
    if k.ndim > 1 or k.dtype.kind not in "iu" or k.size == 0:
        raise TypeError(f"{op}: kth must be an int or a 1-d sequence of ints, got {kth!r}")
    n = x.shape[ax]
    if n:
        for v in k.reshape(-1).tolist():
            if not -n <= v < n:
                raise ValueError(f"{op}: kth(={v}) out of bounds for axis {ax} of size {n}")
    return x, ax


def partition(a, kth, axis: int | None = -1, kind: str = "introselect",
              order=None) -> Tensor:
    """A copy of ``a`` whose ``kth`` entry along ``axis`` (each of several) is the value a
    sort would put there, with no larger entry before it and no smaller one after. This
    returns the sorted lane, one valid answer. The gradient follows the values."""
    x, ax = _partition_args("partition", a, kth, axis, kind, order)
    return I.take_along_axis(x, argsort(x, ax), ax)


def argpartition(a, kth, axis: int | None = -1, kind: str = "introselect",
                 order=None) -> Tensor:
    """The int64 indices that :func:`partition` ``a`` along ``axis`` (here: a stable sort)."""
    x, ax = _partition_args("argpartition", a, kth, axis, kind, order)
    return argsort(x, ax)


# --- in-place writes -------------------------------------------------------------------------
def _apply_inplace(t: Tensor, name: str, fn: Callable, value: Tensor) -> None:
    """``t`` takes ``fn(t, value)`` in place (``value`` passed on, so that a value which
    requires grad is recorded too)."""
    from .aliases import apply_inplace

    apply_inplace(t, name, fn, value)


def put_along_axis(arr, indices, values, axis: int | None) -> None:
    """NumPy's in-place ``arr[..., indices, ...] = values`` along ``axis``: ``indices`` has
    ``arr``'s number of dims and broadcasts with it outside ``axis``; ``axis=None`` writes the
    flattened ``arr`` at a 1-d ``indices``. Changes ``arr`` (a Tensor) in place and returns
    None; differentiable in ``arr`` and ``values`` (the write is recorded)."""
    op = "put_along_axis"
    if not isinstance(arr, Tensor):
        raise TypeError(f"{op}: arr must be a Tensor (it is changed in place), got "
                        f"{type(arr).__name__}")
    idx = _arr(op, indices, arr)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"{op}: indices must be an integer tensor, got dtype {idx.dtype}")
    if axis is None:
        if idx.ndim != 1:
            raise ShapeError(f"{op}: with axis=None, indices must be 1-d, got shape "
                             f"{tuple(idx.shape)}")
        shape, ax = (arr.numel(),), 0
    else:
        shape, ax = tuple(arr.shape), _axis(op, axis, arr.ndim)
        if idx.ndim != arr.ndim:
            raise ShapeError(f"{op}: indices have {idx.ndim} dims but arr has {arr.ndim}; "
                             "they must match")
    n = shape[ax]
    vals = _values(idx)
    if vals.size and (int(vals.min()) < -n or int(vals.max()) >= n):
        bad = int(vals.min()) if int(vals.min()) < -n else int(vals.max())
        raise IndexError(f"{op}: index {bad} is out of bounds for axis {ax} with size {n}")
    nd = len(shape)
    fancy = tuple(idx if d == ax else
                  _np.arange(shape[d]).reshape((1,) * d + (-1,) + (1,) * (nd - d - 1))
                  for d in range(nd))
    try:
        sub = _np.broadcast_shapes(*(tuple(f.shape) for f in fancy))
    except ValueError:
        raise IndexError(f"{op}: indices of shape {tuple(idx.shape)} do not broadcast with arr "
                         f"of shape {tuple(arr.shape)} outside axis {ax}") from None
    v = _fit(op, _cast(_arr(op, values, arr), arr.dtype), sub)

    def write(t, v):
        out = I.index_update(t if axis is not None else S.reshape(t, shape), fancy, v)
        return out if axis is not None else S.reshape(out, tuple(t.shape))

    _apply_inplace(arr, op, write, v)


def fill_diagonal(a, val, wrap: bool = False) -> None:
    """NumPy's in-place fill of the main diagonal of ``a`` (2-d, or n-d with equal dims) with
    ``val`` (a number, or values used in turn and cycled); ``wrap`` continues a tall matrix's
    diagonal past each square block. Returns None; differentiable in ``a`` and a tensor
    ``val``."""
    op = "fill_diagonal"
    if not isinstance(a, Tensor):
        raise TypeError(f"{op}: a must be a Tensor (it is changed in place), got "
                        f"{type(a).__name__}")
    if a.ndim < 2:
        raise ShapeError(f"{op}: expected at least 2 dims, got shape {tuple(a.shape)}")
    shape = tuple(a.shape)
    end = None
    if a.ndim == 2:
        step = shape[1] + 1
        if not wrap:
            end = shape[1] * shape[1]
    else:
        if len(set(shape)) != 1:
            raise ShapeError(f"{op}: all dims must have one length, got shape {shape}")
        step = 1 + sum(_running_products(shape[:-1]))
    pos = _np.arange(a.numel())[:end:step]
    v = _flat(_cast(_arr(op, val, a), a.dtype))
    if not pos.size or not v.numel():
        return
    v = _pick(v, _np.arange(pos.size) % v.numel())

    def write(t, v):
        return S.reshape(I.index_update(S.reshape(t, (-1,)), (pos,), v), shape)

    _apply_inplace(a, op, write, v)


# --- picking ---------------------------------------------------------------------------------
_CHOOSE_MODES = ("raise", "wrap", "clip")


def choose(a, choices, out=None, mode: str = "raise") -> Tensor:
    """Element ``i`` of ``choices[a[i]]``, with ``a`` and every choice broadcast together;
    ``mode`` 'raise' refuses an index outside [0, n), 'wrap' takes it modulo n, 'clip' clips
    it. The choices' promoted dtype; differentiable in the choices."""
    op = "choose"
    if out is not None:
        raise TypeError(f"{op}: out= is not supported; use the returned tensor")
    if mode not in _CHOOSE_MODES:
        raise ValueError(f"{op}: mode must be one of {_CHOOSE_MODES}, got {mode!r}")
    idx = _arr(op, a)
    if idx.dtype.kind not in "biu":
        raise DTypeError(f"{op}: a must hold integer indices, got dtype {idx.dtype}")
    cs = [_along(choices, 0, i) for i in range(choices.shape[0])] \
        if isinstance(choices, Tensor) and choices.ndim else \
        [_arr(op, c, idx) for c in choices]
    if not cs:
        raise ShapeError(f"{op}: choices must hold at least one array")
    n = len(cs)
    dt = _np.result_type(*(c.dtype for c in cs))
    try:
        shape = _np.broadcast_shapes(tuple(idx.shape), *(tuple(c.shape) for c in cs))
    except ValueError:
        raise ShapeError(f"{op}: a {tuple(idx.shape)} and the choices "
                         f"{[tuple(c.shape) for c in cs]} do not broadcast") from None
    idx = _cast(idx, B.int64)
    if mode == "raise":
        v = _values(idx)
        if v.size and (int(v.min()) < 0 or int(v.max()) >= n):
            raise ValueError(f"{op}: invalid entry {int(v.min()) if v.min() < 0 else int(v.max())}"
                             f" in a; expected indices in [0, {n - 1}] for {n} choices")
    elif mode == "wrap":
        idx = remainder(idx, n)
    else:
        idx = clip(idx, 0, n - 1)
    stacked = S.stack([_fit(op, _cast(c, dt), shape, "choices") for c in cs], 0)
    pick = S.reshape(_fit(op, idx, shape, "a"), (1,) + tuple(shape))
    return S.reshape(I.take_along_axis(stacked, pick, 0), tuple(shape))


def compress(condition, a, axis: int | None = None, out=None) -> Tensor:
    """The slices of ``a`` along ``axis`` (None: the flattened input) where the 1-d
    ``condition`` is true (a shorter condition counts as false beyond its end).
    Differentiable in ``a``; a tensor condition is read eagerly."""
    op = "compress"
    if out is not None:
        raise TypeError(f"{op}: out= is not supported; use the returned tensor")
    x, ax = _input_axis(op, a, axis)
    c = _read(op, condition, "the condition")
    if c.ndim != 1:
        raise ShapeError(f"{op}: condition must be 1-d, got shape {c.shape}")
    keep = _np.flatnonzero(c)
    n = x.shape[ax]
    if keep.size and keep[-1] >= n:
        raise IndexError(f"{op}: condition is true at {int(keep[-1])}, out of bounds for axis "
                         f"{ax} with size {n}")
    return _along(x, ax, keep)


def extract(condition, arr) -> Tensor:
    """The entries of the flattened ``arr`` where the flattened ``condition`` is nonzero.
    Differentiable in ``arr``."""
    x = _flat(_arr("extract", arr))
    keep = _np.flatnonzero(_read("extract", condition, "the condition"))
    n = x.shape[0]
    if keep.size and keep[-1] >= n:
        raise IndexError(f"extract: condition is true at {int(keep[-1])}, beyond arr's {n} "
                         "entries")
    return _pick(x, keep)


# --- array ------------------------------------------------------------------------------------
def array(object, dtype=None, *, copy: bool | None = True, order=None, subok: bool = False,
          ndmin: int = 0, device=None, requires_grad: bool = False) -> Tensor:
    """NumPy's ``array``: ``object`` as a new tensor (``copy=None`` may share an array's or a
    tensor's memory and ``copy=False`` must, as ``asarray``), with ones prepended to reach
    ``ndmin`` dims; a tensor that requires grad stays in the graph. Numbers and sequences
    convert as NumPy converts them (Python floats become float64, unlike ``asarray``'s
    PyTorch rule); an array keeps its dtype. ``order=``/``subok=`` are NumPy's memory-layout
    and subclass switches, which tensors do not have."""
    from .aliases import asarray

    if order not in (None, "K", "A", "C"):
        raise ValueError(f"array: tensors are C-ordered; got order={order!r}")
    if subok:
        raise TypeError("array: subok=True keeps ndarray subclasses; tensors have none")
    if isinstance(ndmin, bool) or not isinstance(ndmin, int) or ndmin < 0:
        raise TypeError(f"array: ndmin must be a non-negative int, got {ndmin!r}")
    if not (isinstance(object, Tensor | bytes | bytearray | memoryview) or B.is_array(object)
            or hasattr(object, "__dlpack__")):
        if copy is False:
            raise ValueError(f"array: copy=False but a {type(object).__name__} has no memory "
                             "to share")
        if dtype is None:  # NumPy's dtype inference: Python floats become float64
            object, copy = _arr("array", object), None
    out = asarray(object, dtype=dtype, device=device, copy=copy,
                  requires_grad=requires_grad or None)
    if out.ndim < ndmin:
        out = S.reshape(out, (1,) * (ndmin - out.ndim) + tuple(out.shape))
    return out


def flatnonzero(a) -> Tensor:
    """NumPy's ``flatnonzero``: the int64 positions of the nonzero entries of ``a`` flattened
    (no gradient; the size depends on the values)."""
    x = _arr("flatnonzero", a)
    return I.nonzero(S.reshape(x, (-1,)), as_tuple=True)[0]


# --- index helpers ---------------------------------------------------------------------------
def ix_(*args) -> tuple:
    """Open-mesh index tensors from 1-d sequences: the k-th of n reshaped to size 1 in every
    dim but k, so ``x[ix_(rows, cols)]`` picks the cross product. A bool sequence stands for
    its true positions; an empty one is int64."""
    out = []
    nd = len(args)
    for k, a in enumerate(args):
        if isinstance(a, Tensor):
            t = a
        else:
            host = _np.asarray(a)
            if host.size == 0 and not isinstance(a, B.ndarray):
                host = host.astype(B.int64)
            t = _new(host)
        if t.ndim != 1:
            raise ShapeError(f"ix_: each index must be 1-d, got shape {tuple(t.shape)} at "
                             f"position {k}")
        if t.dtype == B.bool_:
            t = _new(_np.flatnonzero(_read("ix_", t, "a bool mask")), t)
        out.append(S.reshape(t, (1,) * k + (t.shape[0],) + (1,) * (nd - k - 1)))
    return tuple(out)


def _dims(op: str, dimensions) -> tuple:
    dims = (dimensions,) if isinstance(dimensions, numbers.Integral) else tuple(dimensions)
    dims = tuple(_int(op, d, "a dimension") for d in dims)
    if any(d < 0 for d in dims):
        raise ShapeError(f"{op}: dimensions must be non-negative, got {dims}")
    return dims


def indices(dimensions: Sequence[int], dtype=int, sparse: bool = False):
    """The index grid of shape ``dimensions``: one tensor of shape (len(dims), *dims) whose
    k-th slice holds the k-th coordinate, or with ``sparse`` a tuple of broadcastable ones."""
    dims = _dims("indices", dimensions)
    res = _np.indices(dims, dtype=B.as_dtype(dtype), sparse=sparse)
    return tuple(_new(r) for r in res) if sparse else _new(res)


def diag_indices(n: int, ndim: int = 2) -> tuple:
    """``ndim`` int64 tensors 0..n-1: the positions of the main diagonal of an n x ... x n
    tensor."""
    n, ndim = _int("diag_indices", n, "n"), _int("diag_indices", ndim, "ndim")
    if n < 0 or ndim < 0:
        raise ShapeError(f"diag_indices: n and ndim must be non-negative, got {n} and {ndim}")
    return tuple(_new(_np.arange(n, dtype=B.int64)) for _ in range(ndim))


def diag_indices_from(arr) -> tuple:
    """:func:`diag_indices` of ``arr``, which has at least 2 dims, all of one length."""
    sh = shape(arr)
    if len(sh) < 2:
        raise ShapeError(f"diag_indices_from: expected at least 2 dims, got shape {sh}")
    if len(set(sh)) != 1:
        raise ShapeError(f"diag_indices_from: all dims must have one length, got shape {sh}")
    return diag_indices(sh[0], len(sh))


def _tri_from(op: str, fn, arr, k) -> tuple:
    sh = shape(arr)
    if len(sh) != 2:
        raise ShapeError(f"{op}: expected a 2-d input, got shape {sh}")
    return tuple(_new(r.astype(B.int64), arr) for r in fn(sh[0], _int(op, k, "k"), sh[1]))


def tril_indices_from(arr, k: int = 0) -> tuple:
    """(rows, cols) of the lower triangle (on and below diagonal ``k``) of a 2-d ``arr``."""
    return _tri_from("tril_indices_from", _np.tril_indices, arr, k)


def triu_indices_from(arr, k: int = 0) -> tuple:
    """(rows, cols) of the upper triangle (on and above diagonal ``k``) of a 2-d ``arr``."""
    return _tri_from("triu_indices_from", _np.triu_indices, arr, k)


def mask_indices(n: int, mask_func: Callable, k: int = 0) -> tuple:
    """(rows, cols) where ``mask_func(ones((n, n)), k)`` is nonzero (``ng.triu``,
    ``ng.tril`` or any function of a tensor and ``k``)."""
    n = _int("mask_indices", n, "n")
    m = mask_func(_new(_np.ones((n, n), B.int64)), k)
    host = _read("mask_indices", m, "the mask") if isinstance(m, Tensor) else _np.asarray(m)
    return tuple(_new(r.astype(B.int64)) for r in _np.nonzero(host != 0))


def ravel_multi_index(multi_index, dims: Sequence[int], mode: str | Sequence[str] = "raise",
                      order: str = "C") -> Tensor:
    """The flat int64 indices of the coordinates ``multi_index`` (one integer tensor per dim,
    broadcast together) in an array of shape ``dims``, in C (row-major) or F order; per dim
    ``mode`` 'raise' refuses a coordinate out of range, 'wrap' wraps it, 'clip' clips it."""
    op = "ravel_multi_index"
    dims = _dims(op, dims)
    if order not in ("C", "F"):
        raise ValueError(f"{op}: order must be 'C' or 'F', got {order!r}")
    coords = list(multi_index)
    if len(coords) != len(dims):
        raise ShapeError(f"{op}: multi_index must hold {len(dims)} coordinate arrays (one per "
                         f"dim of {dims}), got {len(coords)}")
    if any(d == 0 for d in dims):
        raise ShapeError(f"{op}: shape {dims} has no elements")
    modes = (mode,) * len(dims) if isinstance(mode, str) else tuple(mode)
    if len(modes) != len(dims) or any(m not in _CHOOSE_MODES for m in modes):
        raise ValueError(f"{op}: mode must be one of {_CHOOSE_MODES} or one per dim, got "
                         f"{mode!r}")
    like = next((c for c in coords if isinstance(c, Tensor)), None)
    ts = [_arr(op, c, like) for c in coords]
    for t in ts:
        if t.dtype.kind not in "iu":
            raise DTypeError(f"{op}: coordinates must be integers, got dtype {t.dtype}")
    try:
        _np.broadcast_shapes(*(tuple(t.shape) for t in ts))
    except ValueError:
        raise ShapeError(f"{op}: coordinate shapes {[tuple(t.shape) for t in ts]} do not "
                         "broadcast") from None
    strides = list(_running_products((1,) + dims[:0:-1]))[::-1] if order == "C" else \
        _running_products((1,) + dims[:-1])
    flat = None
    for t, d, m, s in zip(ts, dims, modes, strides):
        t = _cast(t, B.int64)
        if m == "raise":
            v = _values(t)
            if v.size and (int(v.min()) < 0 or int(v.max()) >= d):
                bad = int(v.min()) if v.min() < 0 else int(v.max())
                raise ValueError(f"{op}: coordinate {bad} is out of range for a dim of size "
                                 f"{d}")
        elif m == "wrap":
            t = remainder(t, d)
        else:
            t = clip(t, 0, d - 1)
        term = t * s
        flat = term if flat is None else flat + term
    return flat


# --- conversion and comparison ---------------------------------------------------------------
_ORDERS = ("C", "F", "A", "K", None)


def asarray_chkfinite(a, dtype=None, order: str | None = None) -> Tensor:
    """``a`` as a tensor (a tensor of that dtype is itself), refusing inf or NaN entries with
    a ValueError. Reads the values eagerly."""
    op = "asarray_chkfinite"
    if order not in _ORDERS:
        raise ValueError(f"{op}: order must be one of 'C', 'F', 'A', 'K' or None, got {order!r}")
    t = _arr(op, a)
    if dtype is not None:
        t = _cast(t, B.as_dtype(dtype))
    if B.is_inexact(t.dtype):
        host = _read(op, t)
        if not bool(_np.isfinite(host).all()):
            raise ValueError(f"{op}: the tensor must not contain infs or NaNs")
    return t


def ascontiguousarray(a, dtype=None) -> Tensor:
    """``a`` as a tensor with a C-contiguous array of at least 1 dim (a copy only where
    needed; differentiable)."""
    t = _arr("ascontiguousarray", a)
    if dtype is not None:
        t = _cast(t, B.as_dtype(dtype))
    if t.ndim == 0:
        return S.reshape(t, (1,))
    if not getattr(getattr(t._data, "flags", None), "c_contiguous", True):
        t = S.copy(t)
    return t


def _host_pair(op: str, a1, a2):
    try:
        a = _arr(op, a1)
        b = _arr(op, a2, a)
    except (TypeError, ValueError):
        return None
    return _read(op, a), _read(op, b)


def array_equal(a1, a2, equal_nan: bool = False) -> bool:
    """Whether both have one shape and equal entries (NaN equal to NaN with ``equal_nan``);
    a Python bool."""
    pair = _host_pair("array_equal", a1, a2)
    return pair is not None and bool(_np.array_equal(*pair, equal_nan=equal_nan))


def array_equiv(a1, a2) -> bool:
    """Whether both broadcast to one shape with equal entries; a Python bool."""
    pair = _host_pair("array_equiv", a1, a2)
    return pair is not None and bool(_np.array_equiv(*pair))


def shape(a) -> tuple:
    """The shape of a tensor or an array-like, as a tuple."""
    if isinstance(a, Tensor):
        return tuple(a.shape)
    return tuple(_np.shape(a))


def ndim(a) -> int:
    """The number of dims of a tensor or an array-like."""
    return a.ndim if isinstance(a, Tensor) else int(_np.ndim(a))


def size(a, axis: int | Sequence[int] | None = None) -> int:
    """The number of elements, or the product of the lengths of ``axis`` (an int or a
    tuple)."""
    sh = shape(a)
    if axis is None:
        return math.prod(sh)
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    axes = [_axis("size", ax, len(sh)) for ax in axes]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"size: repeated axis in {tuple(axis)}")
    return math.prod(sh[ax] for ax in axes)


def isscalar(element) -> bool:
    """Whether ``element`` is a scalar (a Python or NumPy number, str or bytes); a tensor is
    not, even a 0-d one (as a 0-d array is not)."""
    if isinstance(element, Tensor):
        return False
    return bool(_np.isscalar(element))

