"""PyTorch's splitting, slice-scatter, index and counting ops, and window functions.

Every differentiable op here is an exact composition of existing primitives (getitem and its
functional setitem, take_along_axis, the scatters, concatenate, sliding windows, argsort), so
the VJP, JVP, vmap and jit rules come from them; no primitive is declared here. The counting ops
whose output shape depends on the values (bincount, unique_consecutive) read the values eagerly:
inside ``jit`` they raise the jit's JitError, inside ``vmap`` a TypeError. histc and histogram
have a fixed output shape and trace like any other op.
"""

from __future__ import annotations

import builtins
import itertools
import operator
from collections import namedtuple
from collections.abc import Sequence

from .. import _backend as B
from ..amp import float32_in_region
from ..batching import BatchTracer, values
from ..errors import DTypeError, ShapeError
from ..func.tree import register_pytree_node
from ..tensor import Tensor
from ..tensor import range_scalar
from ..tensor import range_dtype
from ..tensor import tensor as _tensor
from . import arrange as A
from . import index as I
from . import shape as S
from .elementwise import astype, ceil, floor, isnan, lerp, minimum, round, where
from .reduce import amax, amin, argmax, ordered
from .reduce import sum as _sum
from .scan import cummax, cummin
from .sort import _INTERP, argsort, empty_nan, median, searchsorted, share_ties, sort
from .window import _windows, sliding_window_view

__all__ = [
    "tensor_split", "hsplit", "vsplit", "dsplit", "split_with_sizes", "select", "narrow_copy",
    "select_scatter", "slice_scatter", "diagonal_scatter", "take_along_dim", "index_put",
    "index_reduce", "tril_indices", "triu_indices", "unravel_index", "combinations",
    "broadcast_shapes", "broadcast_tensors", "column_stack", "row_stack", "logspace",
    "bincount", "histc", "histogram", "unique_consecutive", "mode", "msort", "nanmedian",
    "nanquantile", "hann_window", "hamming_window", "blackman_window", "bartlett_window",
    "kaiser_window",
]

Mode = namedtuple("Mode", ["values", "indices"])
NanMedian = namedtuple("NanMedian", ["values", "indices"])
Histogram = namedtuple("Histogram", ["hist", "bin_edges"])
for _nt in (Mode, NanMedian, Histogram):  # containers of tensors for jit, vmap and grad
    register_pytree_node(_nt, lambda t: (list(t), None), lambda aux, c, nt=_nt: nt(*c))


# --- helpers ---------------------------------------------------------------------------------
def _along(x, ax: int, index):
    return I.getitem(x, (slice(None),) * ax + (index,))


def _need_dims(op: str, x, n: int) -> None:
    if x.ndim < n:
        raise ShapeError(f"{op}: expected a tensor with at least {n} dim{'s' * (n > 1)}, got "
                         f"shape {tuple(x.shape)}")


def _int(op: str, v, name: str) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise DTypeError(f"{op}: {name} must be an integer, got {v!r}") from None


def _ints(op: str, v, name: str) -> list[int]:
    """A list of ints from a sequence or a 0-d/1-d integer tensor (read eagerly)."""
    if isinstance(v, Tensor):
        if v.dtype.kind not in "iu":
            raise DTypeError(f"{op}: {name} must be an integer tensor, got dtype {v.dtype}")
        return [int(i) for i in B.np.asarray(v.tolist()).reshape(-1)]
    return [_int(op, i, name) for i in v]


def _src(op: str, src, want: tuple, like):
    """``src`` as a tensor of exactly shape ``want`` and a dtype ``like`` can take."""
    if not isinstance(src, Tensor):
        src = Tensor._of(like.backend.xp.asarray(src, dtype=like.dtype))
    if tuple(src.shape) != tuple(want):
        raise ShapeError(f"{op}: src has shape {tuple(src.shape)}, expected {tuple(want)} (the "
                         f"shape of the part of input {tuple(like.shape)} it replaces)")
    _same_float(op, src, like, "src")
    return src


def _same_float(op: str, v, like, name: str) -> None:
    if B.is_float(v.dtype) and B.is_float(like.dtype) and v.dtype != like.dtype:
        raise DTypeError(f"{op}: {name} has dtype {v.dtype} but input has {like.dtype}; "
                         "convert one explicitly")


def _float_input(op: str, x, bf16: bool = True) -> None:
    """A DTypeError unless ``x`` is floating (bfloat16 only where ``bf16``: as PyTorch, whose
    histogram and nanquantile refuse it)."""
    if not B.is_float(x.dtype):
        raise DTypeError(f"{op}: expected a floating-point input, got {x.dtype}")
    if not bf16 and x.dtype == B.bfloat16:
        raise DTypeError(f"{op}: bfloat16 is not supported (as torch.{op}); convert with "
                         ".float()")


def _no_vmap(op: str, *ts) -> None:
    if any(isinstance(t, BatchTracer) for t in ts):
        raise TypeError(f"{op}: the output's size depends on the values, so it cannot run "
                        "inside vmap")


# --- splitting -------------------------------------------------------------------------------
def tensor_split(input: Tensor, indices_or_sections: int | Sequence[int] | Tensor,
                 dim: int = 0) -> tuple:
    """Split along ``dim`` into ``n`` nearly equal parts (the first ``size % n`` one longer)
    or before each listed index (Python slice rules: indices past the end give empty parts).
    A 0-d integer tensor counts as ``n``, a 1-d one as the indices."""
    if input.ndim == 0:
        raise ShapeError("tensor_split: expected at least a 1-dim tensor, got a 0-d tensor")
    ax = S.norm_axis(dim, input.ndim, "tensor_split")
    n = input.shape[ax]
    ios = indices_or_sections
    if isinstance(ios, Tensor):
        if ios.ndim > 1:
            raise ShapeError(f"tensor_split: a tensor of indices or sections must be 0-d or "
                             f"1-d, got shape {tuple(ios.shape)}")
        vals = _ints("tensor_split", ios, "indices_or_sections")
        ios = vals[0] if ios.ndim == 0 else vals
    if isinstance(ios, int):
        if ios <= 0:
            raise ShapeError(f"tensor_split: the number of sections must be positive, got {ios}")
        q, r = divmod(n, ios)
        cuts = list(itertools.accumulate([q + 1] * r + [q] * (ios - r)))[:-1]
    else:
        cuts = _ints("tensor_split", ios, "indices")
    bounds = [0] + cuts + [None]
    return tuple(_along(input, ax, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:]))


def _split_dim(op: str, input, indices_or_sections, ax: int) -> tuple:
    ios = indices_or_sections
    if isinstance(ios, Tensor) and ios.ndim == 0:
        ios = _ints(op, ios, "sections")[0]
    if isinstance(ios, int):
        n = input.shape[ax]
        if ios <= 0 or n % ios:
            raise ShapeError(f"{op}: dim {ax} of length {n} does not split into {ios} equal "
                             f"sections (shape {tuple(input.shape)})")
    return tensor_split(input, ios, ax)


def hsplit(input: Tensor, indices_or_sections: int | Sequence[int] | Tensor) -> tuple:
    """Split along the second dim (the first for 1-d); an int must divide it evenly."""
    _need_dims("hsplit", input, 1)
    return _split_dim("hsplit", input, indices_or_sections, 1 if input.ndim > 1 else 0)


def vsplit(input: Tensor, indices_or_sections: int | Sequence[int] | Tensor) -> tuple:
    """Split along the first dim of a tensor with at least 2 dims."""
    _need_dims("vsplit", input, 2)
    return _split_dim("vsplit", input, indices_or_sections, 0)


def dsplit(input: Tensor, indices_or_sections: int | Sequence[int] | Tensor) -> tuple:
    """Split along the third dim (depth) of a tensor with at least 3 dims."""
    _need_dims("dsplit", input, 3)
    return _split_dim("dsplit", input, indices_or_sections, 2)


def split_with_sizes(input: Tensor, split_sizes: Sequence[int], dim: int = 0) -> tuple:
    """Consecutive parts of the listed lengths along ``dim``; they must add up to its length."""
    _need_dims("split_with_sizes", input, 1)
    ax = S.norm_axis(dim, input.ndim, "split_with_sizes")
    sizes = _ints("split_with_sizes", split_sizes, "split_sizes")
    n = input.shape[ax]
    if any(s < 0 for s in sizes) or builtins.sum(sizes) != n:
        raise ShapeError(f"split_with_sizes: sizes {sizes} must be non-negative and add up to "
                         f"{n}, the length of dim {ax}")
    return tensor_split(input, list(itertools.accumulate(sizes))[:-1], ax)


# --- one slice: read, copy, write ------------------------------------------------------------
def _position(op: str, x, dim: int, index: int) -> tuple[int, int]:
    if x.ndim == 0:
        raise IndexError(f"{op}: cannot be applied to a 0-d tensor")
    ax = S.norm_axis(dim, x.ndim, op)
    i, n = _int(op, index, "index"), x.shape[ax]
    if not -n <= i < n:
        raise IndexError(f"{op}: index {i} is out of range for dim {ax} of length {n} (shape "
                         f"{tuple(x.shape)}); expected -{n} <= index < {n}")
    return ax, i


def _np_select(condlist, choicelist, default):
    """NumPy's ``select``: per element the choice of the first true condition, else
    ``default``; a composition of ``where``, so gradients reach the chosen entries."""
    condlist, choicelist = list(condlist), list(choicelist)
    if len(condlist) != len(choicelist):
        raise ValueError(f"select: list of cases must be same length as list of conditions, "
                         f"got {len(choicelist)} choices for {len(condlist)} conditions")
    if not condlist:
        raise ValueError("select: select with an empty condition list is not possible")
    for k, c in enumerate(condlist):
        if not (isinstance(c, Tensor) and c.dtype == B.bool_) and not isinstance(c, bool):
            raise TypeError(f"select: invalid entry {k} in condlist: should be a boolean "
                            f"tensor, got {getattr(c, 'dtype', type(c).__name__)}")
    out = default
    for c, v in zip(reversed(condlist), reversed(choicelist)):
        out = where(c, v, out)
    return out if isinstance(out, Tensor) else _tensor(out)


def select(input: Tensor, dim: int, index: int | None = None, *, default=0) -> Tensor:
    """The slice at ``index`` along ``dim``, without that dim (negative counts back), as
    PyTorch's. A list of conditions first is NumPy's ``select(condlist, choicelist,
    default=0)``: per element the choice of the first true condition, else ``default``."""
    if isinstance(input, list | tuple):
        return _np_select(input, dim, default if index is None else index)
    if index is None:
        raise TypeError("select: expected select(input, dim, index), got no index")
    ax, i = _position("select", input, dim, index)
    return _along(input, ax, i)


def narrow_copy(input: Tensor, dim: int, start: int, length: int) -> Tensor:
    """A copy (never a view) of ``narrow(input, dim, start, length)``."""
    _need_dims("narrow_copy", input, 1)
    ax = S.norm_axis(dim, input.ndim, "narrow_copy")
    n, s, k = input.shape[ax], _int("narrow_copy", start, "start"), _int("narrow_copy", length,
                                                                         "length")
    s = s + n if s < 0 else s
    if not 0 <= s <= n or k < 0 or s + k > n:
        raise IndexError(f"narrow_copy: start {start} and length {length} do not fit dim {ax} "
                         f"of length {n}; expected 0 <= start <= start + length <= {n}")
    return S.copy(_along(input, ax, slice(s, s + k)))


def select_scatter(input: Tensor, src: Tensor, dim: int, index: int) -> Tensor:
    """A copy of ``input`` whose slice ``select(dim, index)`` is ``src``; differentiable in
    both."""
    ax, i = _position("select_scatter", input, dim, index)
    s = _src("select_scatter", src, input.shape[:ax] + input.shape[ax + 1:], input)
    return I.index_update(input, (slice(None),) * ax + (i,), s)


def slice_scatter(input: Tensor, src: Tensor, dim: int = 0, start: int | None = None,
                  end: int | None = None, step: int = 1) -> Tensor:
    """A copy of ``input`` whose slice ``start:end:step`` along ``dim`` is ``src`` (Python
    slice bounds; ``step`` positive)."""
    _need_dims("slice_scatter", input, 1)
    ax = S.norm_axis(dim, input.ndim, "slice_scatter")
    step = _int("slice_scatter", step, "step")
    if step <= 0:
        raise ShapeError(f"slice_scatter: step must be positive, got {step}")
    sl = slice(start, end, step)
    k = len(range(*sl.indices(input.shape[ax])))
    s = _src("slice_scatter", src, input.shape[:ax] + (k,) + input.shape[ax + 1:], input)
    return I.index_update(input, (slice(None),) * ax + (sl,), s)


def _diag_len(m: int, n: int, offset: int) -> int:
    return builtins.max(0, builtins.min(m, n - offset) if offset >= 0 else
                        builtins.min(m + offset, n))


def diagonal_scatter(input: Tensor, src: Tensor, offset: int = 0, dim1: int = 0,
                     dim2: int = 1) -> Tensor:
    """A copy of ``input`` whose ``diagonal(offset, dim1, dim2)`` is ``src`` (its diagonal as
    the last dim, as ``diagonal`` returns it)."""
    _need_dims("diagonal_scatter", input, 2)
    a1 = S.norm_axis(dim1, input.ndim, "diagonal_scatter")
    a2 = S.norm_axis(dim2, input.ndim, "diagonal_scatter")
    if a1 == a2:
        raise ShapeError(f"diagonal_scatter: dim1 and dim2 must differ, got {dim1} and {dim2}")
    rest = [d for d in range(input.ndim) if d not in (a1, a2)]
    m, n = input.shape[a1], input.shape[a2]
    k = _diag_len(m, n, offset)
    s = _src("diagonal_scatter", src, tuple(input.shape[d] for d in rest) + (k,), input)
    perm = rest + [a1, a2]
    i = B.np.arange(k)
    rows, cols = (i, i + offset) if offset >= 0 else (i - offset, i)
    out = I.index_update(S.transpose(input, perm), (Ellipsis, rows, cols), s)
    inv = [0] * input.ndim
    for p, d in enumerate(perm):
        inv[d] = p
    return S.transpose(out, inv)


# --- indices ---------------------------------------------------------------------------------
def _in_range(op: str, index, lo: int, hi: int, what: str) -> None:
    v = values(index)
    if v.size:
        a, b = int(v.min()), int(v.max())
        if a < lo or b >= hi:
            raise IndexError(f"{op}: index {a if a < lo else b} is out of range for {what}; "
                             f"expected indices in [{lo}, {hi - 1}]")


def take_along_dim(input: Tensor, indices: Tensor, dim: int | None = None) -> Tensor:
    """Pick along ``dim`` at ``indices`` (input and indices broadcast in the other dims;
    negative indices count back); ``dim=None`` picks from the flattened input with the flattened
    indices (non-negative). The gradient adds back at the picked positions."""
    idx = I._as_index("take_along_dim", indices, input, "indices")
    if dim is None:
        _in_range("take_along_dim", idx, 0, input.numel(), f"the flattened input of "
                  f"{input.numel()} elements")
        return I.take_along_axis(S.reshape(input, (-1,)), S.reshape(idx, (-1,)), 0)
    if input.ndim == 0:
        raise ShapeError("take_along_dim: a 0-d input takes dim=None")
    if idx.ndim != input.ndim:
        raise ShapeError(f"take_along_dim: input has {input.ndim} dims but indices have "
                         f"{idx.ndim} (shapes {tuple(input.shape)} and {tuple(idx.shape)}); "
                         "they must match")
    ax = S.norm_axis(dim, input.ndim, "take_along_dim")

    def lay(shape):
        return tuple(1 if d == ax else s for d, s in enumerate(shape))

    try:
        common = B.np.broadcast_shapes(lay(input.shape), lay(idx.shape))
    except ValueError:
        raise ShapeError(f"take_along_dim: input {tuple(input.shape)} and indices "
                         f"{tuple(idx.shape)} do not broadcast outside dim {ax}") from None
    n = input.shape[ax]
    _in_range("take_along_dim", idx, -n, n, f"dim {ax} of length {n}")

    def fit(t, k):
        want = common[:ax] + (k,) + common[ax + 1:]
        return t if tuple(t.shape) == want else S.broadcast_to(t, want)

    return I.take_along_axis(fit(input, n), fit(idx, idx.shape[ax]), ax)


def _put_index(op: str, x, indices) -> tuple:
    if isinstance(indices, Tensor) or not isinstance(indices, tuple | list):
        indices = (indices,)
    out = []
    for i in indices:
        if i is None:
            raise DTypeError(f"{op}: indices must be integer or bool tensors, got None")
        t = i if isinstance(i, Tensor) else Tensor._of(x.backend.asarray(i))
        if t.dtype == B.np.uint8:  # PyTorch reads a byte tensor as a mask
            t = astype(t, B.bool_)
        if t.dtype.kind not in "iub":
            raise DTypeError(f"{op}: indices must be integer or bool tensors, got dtype "
                             f"{t.dtype}")
        out.append(t)
    dims = builtins.sum(t.ndim if t.dtype.kind == "b" else 1 for t in out)
    if dims > x.ndim:
        raise IndexError(f"{op}: {len(out)} indices address {dims} dims of a tensor with "
                         f"{x.ndim} (shape {tuple(x.shape)})")
    if I.has_batched(tuple(out)):
        return tuple(out)
    return I.norm_index(tuple(out), x.backend, op)


def index_put(input: Tensor, indices: tuple | list | Tensor, values: Tensor | float,
              accumulate: bool = False) -> Tensor:
    """Out-of-place ``input[indices] = values`` for a tuple of integer or bool index tensors
    (values broadcast to the indexed shape); ``accumulate=True`` adds instead, and a repeated
    position then sums every value sent to it."""
    index = _put_index("index_put", input, indices)
    xp = input.backend.xp
    v = values if isinstance(values, Tensor) else Tensor._of(xp.asarray(values, dtype=input.dtype))
    _same_float("index_put", v, input, "values")
    if accumulate and v.dtype != input.dtype:
        v = astype(v, input.dtype)
    if I.has_batched(index):  # inside vmap, per-example indices: the shapes check one level down
        return (I.index_add_at if accumulate else I.index_update)(input, index, v)
    try:
        sub = xp.broadcast_to(xp.zeros((), input.dtype), input.shape)[index].shape
    except IndexError as e:
        raise IndexError(f"index_put: indices do not fit shape {tuple(input.shape)}: {e}") from None
    try:
        B.np.broadcast_to(B.np.empty(v.shape, bool), sub)
    except ValueError:
        raise ShapeError(f"index_put: values of shape {tuple(v.shape)} do not broadcast to the "
                         f"indexed shape {tuple(sub)}") from None
    if not accumulate:
        return I.index_update(input, index, v)
    return I.index_add_at(input, index, v)


_INDEX_REDUCES = ("prod", "mean", "amax", "amin")


def index_reduce(input: Tensor, dim: int, index: Tensor, source: Tensor, reduce: str, *,
                 include_self: bool = True) -> Tensor:
    """Combine the slices of ``source`` into those of ``input`` that ``index`` names along
    ``dim``, by "prod", "mean", "amax" or "amin"; ``include_self=False`` leaves the old values
    of the addressed slices out. Gradients as scatter_reduce (ties share)."""
    if reduce not in _INDEX_REDUCES:
        raise ValueError(f"index_reduce: reduce must be one of {_INDEX_REDUCES}, got {reduce!r}")
    idx = I._as_index("index_reduce", index, input)
    if idx.ndim > 1:
        raise ShapeError(f"index_reduce: index must be 0-d or 1-d, got shape "
                         f"{tuple(idx.shape)}")
    if not isinstance(source, Tensor):
        source = Tensor._of(input.backend.xp.asarray(source, dtype=input.dtype))
    if source.dtype != input.dtype:
        raise DTypeError(f"index_reduce: source has dtype {source.dtype} but input has "
                         f"{input.dtype}; they must match")
    x = S.reshape(input, (1,)) if input.ndim == 0 else input
    src = S.reshape(source, (1,)) if source.ndim == 0 else source
    idx = S.reshape(idx, (-1,))
    ax = S.norm_axis(dim, x.ndim, "index_reduce")
    want = x.shape[:ax] + (idx.shape[0],) + x.shape[ax + 1:]
    if tuple(src.shape) != want or src.ndim != x.ndim:
        raise ShapeError(f"index_reduce: source has shape {tuple(source.shape)}, expected "
                         f"{want} (input {tuple(input.shape)} with len(index)={idx.shape[0]} "
                         f"along dim {ax})")
    n = x.shape[ax]
    _in_range("index_reduce", idx, 0, n, f"dim {ax} of length {n}")
    lay = [1] * x.ndim
    lay[ax] = idx.shape[0]
    spread = S.broadcast_to(S.reshape(idx, tuple(lay)), want)
    out = I.scatter_reduce(x, ax, spread, src, reduce, include_self=include_self)
    return S.reshape(out, input.shape)


def unfold(input: Tensor, dimension: int, size: int, step: int) -> Tensor:
    """``Tensor.unfold``: every slice of length ``size`` along ``dimension``, ``step`` apart, as
    a new last dim (a view; the gradient adds overlapping windows back)."""
    size, step = _int("unfold", size, "size"), _int("unfold", step, "step")
    if step <= 0:
        raise ShapeError(f"unfold: step must be positive, got {step}")
    if size < 0:
        raise ShapeError(f"unfold: size must be non-negative, got {size}")
    if input.ndim == 0:
        S.norm_axis(dimension, 1, "unfold")
        if size > 1:
            raise ShapeError(f"unfold: a window of {size} does not fit a 0-d tensor")
        return S.reshape(input, (1,)) if size else _along(S.reshape(input, (1,)), 0,
                                                          slice(0, 0))
    ax = S.norm_axis(dimension, input.ndim, "unfold")
    n = input.shape[ax]
    if size > n:
        raise ShapeError(f"unfold: a window of {size} does not fit dim {ax} of length {n} "
                         f"(shape {tuple(input.shape)})")
    if size == 0:  # empty windows: no element is read
        shape = input.shape[:ax] + (n // step + 1,) + input.shape[ax + 1:] + (0,)
        return S.reshape(_along(input, ax, slice(0, 0)), shape)
    nwin = (n - size) // step + 1
    if nwin == 1:
        step = size
    if step >= size and nwin * step <= n:  # windows apart: a chain of views, writable as in
        v = input if nwin * step == n else _along(input, ax, slice(0, nwin * step))  # PyTorch
        v = S.reshape(v, input.shape[:ax] + (nwin, step) + input.shape[ax + 1:])
        if size < step:
            v = _along(v, ax + 1, slice(0, size))
        return S.moveaxis(v, ax + 1, -1)
    out = sliding_window_view(input, size, ax, stride=step)
    if type(out) is Tensor and type(input) is Tensor and getattr(out, "_view", None) is None:
        # overlapping windows: read-only, but a view of input all the same (one version
        # counter, and a recorded change of input shows in it)
        input._add_view(out)
        out._view = (input, _windows, {"axes": (ax,), "window": (size,), "stride": (step,),
                                       "dilation": (1,)})
    return out


# --- index grids -----------------------------------------------------------------------------
def _int_dtype(op: str, dtype):
    dt = B.as_dtype(dtype) if dtype is not None else B.int64
    if dt.kind not in "iu":
        raise DTypeError(f"{op}: dtype must be an integer type, got {dt}")
    return dt


def _tri_indices(op, fn, row, col, offset, dtype, device):
    row, col = _int(op, row, "row"), _int(op, col, "col")
    if row < 0 or col < 0:
        raise ShapeError(f"{op}: row and col must be non-negative, got {row} and {col}")
    dt = _int_dtype(op, dtype)
    r, c = fn(row, _int(op, offset, "offset"), col)
    return _tensor(B.np.stack([r, c]).astype(dt).reshape(2, -1), device=device)


def _np_tri_indices(op, fn, n, k, m, device):
    """NumPy's ``tril_indices(n, k=0, m=None)`` form: a tuple (rows, cols) of int64 tensors."""
    n = _int(op, n, "n")
    m = n if m is None else _int(op, m, "m")
    rc = _tri_indices(op, fn, n, m, 0 if k is None else k, None, device)
    return rc[0], rc[1]


def tril_indices(row: int, col: int | None = None, offset: int = 0, *, dtype=None,
                 device=None, k: int | None = None, m: int | None = None):
    """The (2, N) row and column indices of the lower triangle of a ``row`` x ``col`` matrix
    (on and below diagonal ``offset``), in row-major order (PyTorch). Without ``col``, or
    with ``k=``/``m=``, NumPy's ``tril_indices(n, k=0, m=None)``: a tuple (rows, cols)."""
    if col is None or k is not None or m is not None:
        return _np_tri_indices("tril_indices", B.np.tril_indices, row, k, m if col is None
                               else col, device)
    return _tri_indices("tril_indices", B.np.tril_indices, row, col, offset, dtype, device)


def triu_indices(row: int, col: int | None = None, offset: int = 0, *, dtype=None,
                 device=None, k: int | None = None, m: int | None = None):
    """The (2, N) row and column indices of the upper triangle of a ``row`` x ``col`` matrix
    (on and above diagonal ``offset``), in row-major order (PyTorch). Without ``col``, or
    with ``k=``/``m=``, NumPy's ``triu_indices(n, k=0, m=None)``: a tuple (rows, cols)."""
    if col is None or k is not None or m is not None:
        return _np_tri_indices("triu_indices", B.np.triu_indices, row, k, m if col is None
                               else col, device)
    return _tri_indices("triu_indices", B.np.triu_indices, row, col, offset, dtype, device)


def unravel_index(indices: Tensor | int | Sequence[int], shape: int | Sequence[int]) -> tuple:
    """The coordinates of flat ``indices`` in ``shape``, one int64 tensor per dim. As PyTorch:
    ``(indices // stride) % size``, so out-of-range and negative indices wrap around."""
    t = indices if isinstance(indices, Tensor) else _tensor(indices)
    if t.dtype.kind not in "iu":
        raise DTypeError(f"unravel_index: indices must be an integer tensor, got dtype "
                         f"{t.dtype}")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    dims = tuple(_int("unravel_index", d, "shape") for d in dims)
    if any(d < 0 for d in dims):
        raise ShapeError(f"unravel_index: shape cannot have negative sizes, got {dims}")
    if 0 in dims and t.numel():
        raise IndexError(f"unravel_index: no index fits shape {dims}, which has no elements")
    t = astype(t, B.int64) if t.dtype != B.int64 else t
    strides = list(itertools.accumulate((1,) + dims[:0:-1], operator.mul))[::-1]
    return tuple((t // s) % d for s, d in zip(strides, dims))


def combinations(input: Tensor, r: int = 2, with_replacement: bool = False) -> Tensor:
    """The length-``r`` combinations of a 1-d tensor's elements, one per row (itertools
    order); differentiable (a gather)."""
    if input.ndim != 1:
        raise ShapeError(f"combinations: expected a 1-d tensor, got shape {tuple(input.shape)}")
    r = _int("combinations", r, "r")
    if r < 0:
        raise ShapeError(f"combinations: r must be non-negative, got {r}")
    if r == 0:
        return _along(input, 0, slice(0, 0))
    pick = itertools.combinations_with_replacement if with_replacement else \
        itertools.combinations
    idx = B.np.array(list(pick(range(input.shape[0]), r)), dtype=B.int64).reshape(-1, r)
    return I.getitem(input, (idx,))


# --- broadcasting and stacking ---------------------------------------------------------------
def broadcast_shapes(*shapes: int | Sequence[int]) -> tuple:
    """The shape that tensors of ``shapes`` (ints or sequences) broadcast to."""
    tuples = [(s,) if isinstance(s, int) else tuple(s) for s in shapes]
    tuples = [tuple(_int("broadcast_shapes", d, "size") for d in t) for t in tuples]
    if any(d < 0 for t in tuples for d in t):
        raise ShapeError(f"broadcast_shapes: sizes must be non-negative, got {tuples}")
    try:
        return tuple(B.np.broadcast_shapes(*tuples))
    except ValueError:
        raise ShapeError(f"broadcast_shapes: shapes {tuples} do not broadcast") from None


def broadcast_tensors(*tensors: Tensor) -> tuple:
    """The tensors broadcast to their common shape (views; gradients sum back)."""
    ts = list(tensors[0]) if len(tensors) == 1 and isinstance(tensors[0], list | tuple) \
        else list(tensors)
    shape = broadcast_shapes(*(t.shape for t in ts))
    return tuple(t if tuple(t.shape) == shape else S.broadcast_to(t, shape) for t in ts)


def column_stack(tensors: Sequence[Tensor]) -> Tensor:
    """Join as columns: 0-d and 1-d tensors become (n, 1) columns, the rest join along dim 1."""
    ts = list(tensors)
    if not ts:
        raise ShapeError("column_stack: expected at least one tensor")
    cols = [S.reshape(t, (t.numel(), 1)) if t.ndim <= 1 else t for t in ts]
    return S.concatenate(cols, 1)


def row_stack(tensors: Sequence[Tensor]) -> Tensor:
    """Join as rows (PyTorch's alias of vstack)."""
    return A.vstack(tensors)


# --- ranges ----------------------------------------------------------------------------------
def _float_dtype(op: str, dtype):
    dt = B.as_dtype(dtype) if dtype is not None else B.DEFAULT_FLOAT
    if not B.is_float(dt):
        raise DTypeError(f"{op}: expects a floating-point dtype, got {dt}")
    return dt


def logspace(start: float, end: float, steps: int, base: float = 10.0, *, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """``steps`` values ``base ** t`` for ``t`` evenly spaced from ``start`` to ``end``
    (computed in float64, complex128 for complex ends or dtype, from both ends, as PyTorch,
    then cast to ``dtype``; the ends cast to ``dtype`` first, but a single step's ``base **
    start`` is PyTorch's, from the end as given)."""
    np = B.np
    steps = _int("logspace", steps, "steps")
    if steps < 0:
        raise ShapeError(f"logspace: steps must be non-negative, got {steps}")
    start, end = (range_scalar("logspace", v, True) for v in (start, end))
    dt = range_dtype("logspace", (start, end), dtype)
    num = complex if dt.kind == "c" else float
    if steps == 1:
        s = e = num(start)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            s, e = (num(np.asarray(v).astype(dt)) for v in (start, end))
    k = np.arange(steps, dtype=np.float64)
    if steps > 1:
        step = (e - s) / (steps - 1)
        t = np.where(k < steps // 2, s + step * k, e - step * (steps - k - 1))
    else:
        t = np.full(steps, s)
    out = np.power(float(base), t)
    with np.errstate(invalid="ignore", over="ignore"):
        return _tensor(out.astype(dt), device=device, requires_grad=requires_grad)


# --- counting --------------------------------------------------------------------------------
def bincount(input: Tensor, weights: Tensor | None = None, minlength: int = 0) -> Tensor:
    """How often each value 0..max occurs in a 1-d non-negative integer tensor (at least
    ``minlength`` bins); with ``weights`` their sums instead (float32 weights give float32, any
    other dtype float64). Differentiable in ``weights``. The length depends on the values:
    refused inside jit (JitError) and vmap."""
    _no_vmap("bincount", input)
    if input.dtype.kind not in "iu":
        raise DTypeError(f"bincount: expected an integer tensor, got dtype {input.dtype}")
    if input.ndim != 1:
        raise ShapeError(f"bincount: expected a 1-d tensor, got shape {tuple(input.shape)}")
    minlength = _int("bincount", minlength, "minlength")
    if minlength < 0:
        raise ShapeError(f"bincount: minlength must be non-negative, got {minlength}")
    if weights is not None and (weights.ndim != 1 or weights.shape[0] != input.shape[0]):
        raise ShapeError(f"bincount: weights must be 1-d with one entry per input element, got "
                         f"shape {tuple(weights.shape)} for input {tuple(input.shape)}")
    input._concrete("bincount (its length depends on the largest value)")
    v = input._data
    if v.size and int(v.min()) < 0:
        raise ShapeError(f"bincount: expected non-negative integers, got {int(v.min())}")
    n = builtins.max(int(v.max()) + 1 if v.size else 0, minlength)
    xp = input.backend.xp
    if weights is None:
        dt, w = B.int64, Tensor._of(xp.ones(input.shape, B.int64))
    else:
        dt = B.float32 if weights.dtype == B.float32 else B.float64
        w = weights if weights.dtype == dt else astype(weights, dt)
    return I.scatter_add(Tensor._of(xp.zeros((n,), dt)), 0, input, w)


def _finite_range(op: str, lo, hi) -> None:
    """Refuse an infinite or NaN range; tensor bounds are read for this check only."""
    a, b = (float(values(v).min()) if isinstance(v, Tensor) else float(v) for v in (lo, hi))
    if not (B.np.isfinite(a) and B.np.isfinite(b)):
        raise ShapeError(f"{op}: the range [{a}, {b}] is not finite")


def _counts(x, bins: int, pos, inside, weight=None):
    """Per-bin sums of ``weight`` (or 1) at positions ``pos``; entries outside are dropped."""
    w = where(inside, 1.0 if weight is None else weight, 0.0)
    if w.dtype != x.dtype:
        w = astype(w, x.dtype)
    pos = where(inside, pos, 0)
    return I.scatter_add(Tensor._of(x.backend.xp.zeros((bins,), x.dtype)), 0, pos, w)


def histc(input: Tensor, bins: int = 100, min: float = 0, max: float = 0) -> Tensor:
    """Counts in ``bins`` equal bins over [min, max] (the data's range when min == max, widened
    by 1 each way if still equal), in the input's float dtype; values outside (and NaN) are
    dropped, max falls in the last bin."""
    _float_input("histc", input)
    bins = _int("histc", bins, "bins")
    if bins <= 0:
        raise ShapeError(f"histc: bins must be positive, got {bins}")
    x = S.reshape(input, (-1,))
    xp, dt = input.backend.xp, input.dtype
    lo, hi = float(min), float(max)
    if lo == hi and x.numel():
        a, b = amin(x), amax(x)
        _finite_range("histc", a, b)
        same = a == b
        a, b = where(same, a - 1.0, a), where(same, b + 1.0, b)
    else:
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        _finite_range("histc", lo, hi)
        if not lo < hi:
            raise ShapeError(f"histc: max must be larger than min, got min={lo} max={hi}")
        a, b = Tensor._of(xp.asarray(lo, dtype=dt)), Tensor._of(xp.asarray(hi, dtype=dt))
    inside = (x >= a) & (x <= b)
    # the bin as PyTorch computes it, in the input's dtype: ((x - lo) * bins) / (hi - lo)
    raw = where(inside, ((x - a) * float(bins)) / (b - a), 0.0)
    pos = minimum(astype(floor(raw), B.int64), bins - 1)
    return _counts(x, bins, pos, inside)


def _linspace_edges(a, b, bins: int):
    """PyTorch's linspace in the operands' dtype: from the start below halfway, else from the
    end (so both ends are exact)."""
    xp = a.backend.xp
    k = Tensor._of(xp.arange(bins + 1).astype(a.dtype))
    step = (b - a) / float(bins)
    low = Tensor._of(xp.arange(bins + 1) < (bins + 1) // 2)
    return where(low, a + step * k, b - step * (float(bins) - k))


def histogram(input: Tensor, bins: int | Tensor = 100, *, range: tuple | None = None,
              weight: Tensor | None = None, density: bool = False) -> Histogram:
    """(hist, bin_edges) of the flattened input: ``bins`` equal bins over ``range`` (default:
    the data's range, widened by 0.5 each way if empty; (0, 1) for no data), or the edges of a
    1-d tensor (or NumPy's sequence) ``bins``. Each bin holds [left, right), the last also its
    right edge; ``weight`` (the input's shape) sums weights instead, ``density`` divides by
    total * bin width."""
    _float_input("histogram", input, bf16=False)
    x = S.reshape(input, (-1,))
    xp, dt = input.backend.xp, input.dtype
    if isinstance(bins, list | tuple) or B.is_array(bins):  # NumPy's: a sequence of edges
        bins = Tensor._of(xp.asarray(bins, dtype=dt))
    if isinstance(bins, Tensor):
        if range is not None:
            raise TypeError("histogram: range= is not taken with a tensor of bin edges")
        if bins.ndim != 1:
            raise ShapeError(f"histogram: a tensor of bin edges must be 1-d, got shape "
                             f"{tuple(bins.shape)}")
        if bins.dtype != dt:
            raise DTypeError(f"histogram: bin edges have dtype {bins.dtype} but input has {dt}")
        nb, edges = bins.shape[0] - 1, bins
        if nb <= 0:
            raise ShapeError(f"histogram: expected at least 2 bin edges, got {bins.shape[0]}")
    else:
        nb = _int("histogram", bins, "bins")
        if nb <= 0:
            raise ShapeError(f"histogram: bins must be positive, got {nb}")
        if range is not None or not x.numel():
            lo, hi = (float(v) for v in (range if range is not None else (0.0, 1.0)))
            _finite_range("histogram", lo, hi)
            if lo > hi:
                raise ShapeError(f"histogram: range min must not exceed max, got ({lo}, {hi})")
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            a, b = Tensor._of(xp.asarray(lo, dtype=dt)), Tensor._of(xp.asarray(hi, dtype=dt))
        else:
            a, b = amin(x), amax(x)
            _finite_range("histogram", a, b)
            same = a == b
            a, b = where(same, a - 0.5, a), where(same, b + 0.5, b)
        edges = _linspace_edges(S.reshape(a, (1,)), S.reshape(b, (1,)), nb)
    if weight is not None:
        if tuple(weight.shape) != tuple(input.shape):
            raise ShapeError(f"histogram: weight has shape {tuple(weight.shape)}, expected the "
                             f"input's {tuple(input.shape)}")
        if weight.dtype != dt:
            raise DTypeError(f"histogram: weight has dtype {weight.dtype} but input has {dt}")
        weight = S.reshape(weight, (-1,))
    first, last = _along(edges, 0, slice(0, 1)), _along(edges, 0, slice(nb, nb + 1))
    inside = (x >= first) & (x <= last)
    pos = minimum(searchsorted(edges, x, right=True) - 1, nb - 1)
    hist = _counts(x, nb, pos, inside, weight)
    if density:
        width = _along(edges, 0, slice(1, None)) - _along(edges, 0, slice(0, nb))
        hist = hist / (_sum(hist) * width)
    return Histogram(hist, edges)


def unique_consecutive(input: Tensor, return_inverse: bool = False,
                       return_counts: bool = False, dim: int | None = None):
    """Collapse runs of equal consecutive values (or slices along ``dim``) to one; with the
    inverse (each element's run) and the run lengths on request. No gradient; the size depends
    on the values, so refused inside jit (JitError) and vmap."""
    _no_vmap("unique_consecutive", input)
    input._concrete("unique_consecutive (its size depends on the values)")
    xp, d = input.backend.xp, input._data
    if dim is None:
        rows, ax = d.reshape(-1, 1), None
        inv_shape = tuple(input.shape)
    else:
        if input.ndim == 0:
            raise ShapeError(f"unique_consecutive: dim {dim} given for a 0-d tensor")
        ax = S.norm_axis(dim, input.ndim, "unique_consecutive")
        if any(s == 0 for k, s in enumerate(input.shape) if k != ax):
            raise ShapeError(f"unique_consecutive: shape {tuple(input.shape)} has an empty dim "
                             f"other than dim {ax}")
        rows = xp.moveaxis(d, ax, 0).reshape(input.shape[ax], input.numel() // builtins.max(
            input.shape[ax], 1))
        inv_shape = (input.shape[ax],)
    n = rows.shape[0]
    change = xp.ones((n,), dtype=bool)
    if n > 1:
        change[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    starts = xp.nonzero(change)[0]
    if ax is None:
        out = d.reshape(-1)[starts]
    else:
        out = xp.take(d, starts, axis=ax)
    res = [Tensor._of(xp.ascontiguousarray(out))]
    if return_inverse:
        res.append(Tensor._of((xp.cumsum(change) - 1).astype(B.int64).reshape(inv_shape)))
    if return_counts:
        res.append(Tensor._of(xp.diff(xp.append(starts, n)).astype(B.int64)))
    return res[0] if len(res) == 1 else tuple(res)


# --- order statistics ------------------------------------------------------------------------
def _lane(op: str, input, dim):
    x = S.reshape(input, (1,)) if input.ndim == 0 else input
    ax = S.norm_axis(dim, x.ndim, op)
    if x.shape[ax] == 0:
        raise IndexError(f"{op}: reduction dim {ax} is empty (shape {tuple(input.shape)})")
    return x, ax


def _finish(vals, idx, ax, keepdim, was0):
    if was0:
        return S.reshape(vals, ()), S.reshape(idx, ())
    if not keepdim:
        vals, idx = S.squeeze(vals, ax), S.squeeze(idx, ax)
    return vals, idx


def mode(input: Tensor, dim: int = -1, keepdim: bool = False) -> Mode:
    """The most frequent value along ``dim`` and an index of it. Ties in frequency go to the
    smallest value; the index is its last occurrence, which is PyTorch's CPU answer for lanes
    of up to 16 elements (beyond that PyTorch's unstable sort picks some occurrence). The
    gradient goes to the returned index."""
    ordered("mode", input)
    x, ax = _lane("mode", input, dim)
    xm = S.moveaxis(x, ax, -1)
    n = xm.shape[-1]
    xp = x.backend.xp
    order = argsort(xm, -1)
    s = I.take_along_axis(xm, order, -1)
    pos = Tensor._of(xp.arange(n, dtype=B.int64))
    if n > 1:
        diff = _along(s, s.ndim - 1, slice(1, None)) != _along(s, s.ndim - 1, slice(0, n - 1))
        edge = Tensor._of(xp.ones(tuple(s.shape[:-1]) + (1,), bool))
        new = S.concatenate([edge, diff], -1)
        ends = S.concatenate([diff, edge], -1)
    else:
        new = ends = Tensor._of(xp.ones(tuple(s.shape), bool))
    start = cummax(where(new, pos, 0), -1).values
    end = S.flip(cummin(S.flip(where(ends, pos, n), -1), -1).values, -1)
    best = argmax(end - start, -1, True)  # the first (smallest value) of the longest runs
    idx = I.take_along_axis(order, I.take_along_axis(end, best, -1), -1)
    vals = I.take_along_axis(xm, idx, -1)
    vals, idx = S.moveaxis(vals, -1, ax), S.moveaxis(idx, -1, ax)
    return Mode(*_finish(vals, idx, ax, keepdim, input.ndim == 0))


def msort(input: Tensor) -> Tensor:
    """Sorted along the first dim (values only; stable); complex tensors are refused."""
    ordered("msort", input)
    return sort(input, 0).values


def nanmedian(input: Tensor, dim: int | None = None, keepdim: bool = False):
    """The lower median of the non-NaN values (NaN when a lane has none); with ``dim``:
    (values, indices). Equal values: the index of the stably sorted median; an all-NaN lane
    gives the index of its first NaN (PyTorch leaves both unspecified)."""
    ordered("nanmedian", input)
    if dim is None:
        if input.numel() == 0:
            _float_input("nanmedian", input)
            return empty_nan(input)
        return share_ties(input, nanmedian(S.reshape(input, (-1,)), 0).values)
    if not B.is_float(input.dtype):
        return median(input, dim, keepdim)
    x, ax = _lane("nanmedian", input, dim)
    order = argsort(x, ax)  # NaN last
    count = _sum(~isnan(x), ax, True)
    k = where(count > 0, (count - 1) // 2, 0)
    idx = I.take_along_axis(order, k, ax)
    vals = I.take_along_axis(x, idx, ax)
    return NanMedian(*_finish(vals, idx, ax, keepdim, input.ndim == 0))


def nanquantile(input: Tensor, q: float | Tensor, dim: int | None = None, keepdim: bool = False, *,
                interpolation: str = "linear") -> Tensor:
    """The ``q``-quantiles of the non-NaN values along ``dim`` (all entries when None), with
    torch.quantile's interpolation modes; NaN for a lane without numbers. A 1-d ``q`` adds a
    leading dim. The gradient flows to the one or two values each quantile interpolates.
    Under CPU autocast a lower-precision input (and ``q``) is computed in float32 (PyTorch's)."""
    if interpolation not in _INTERP:
        raise ValueError(f"nanquantile: interpolation must be one of {_INTERP}, "
                         f"got {interpolation!r}")
    input, q = float32_in_region(input, q, cpu_only=True)
    _float_input("nanquantile", input, bf16=False)
    if isinstance(q, Tensor):
        if q.dtype != input.dtype:
            raise DTypeError(f"nanquantile: q has dtype {q.dtype} but input has {input.dtype}")
        qt = q
    else:
        qt = Tensor._of(input.backend.xp.asarray(q, dtype=input.dtype))
    if qt.ndim > 1:
        raise ShapeError(f"nanquantile: q must be a number or a 1-d tensor, got shape "
                         f"{tuple(qt.shape)}")
    qv = values(qt)
    if qv.size and not bool(((qv >= 0) & (qv <= 1)).all()):
        raise ValueError(f"nanquantile: q values must lie in [0, 1], got {qv.tolist()}")
    if input.numel() == 0:
        raise ShapeError(f"nanquantile: the input is empty (shape {tuple(input.shape)})")
    nd = input.ndim
    if dim is None:
        v, ax = S.reshape(input, (-1,)), 0
    else:
        v = S.reshape(input, (1,)) if nd == 0 else input
        ax = S.norm_axis(dim, v.ndim, "nanquantile")
    xs = S.moveaxis(I.take_along_axis(v, argsort(v, ax), ax), ax, -1)  # NaN last
    lead = tuple(xs.shape[:-1])
    m = 1 if qt.ndim == 0 else qt.shape[0]
    count = astype(_sum(~isnan(xs), -1, True), input.dtype)
    rank = S.reshape(qt, (m,)) * (count - 1.0)
    rank = where(rank < 0, 0.0, rank)  # a lane of NaN reads its first entry: NaN
    if interpolation == "lower":
        rank = floor(rank)
    elif interpolation == "higher":
        rank = ceil(rank)
    elif interpolation == "nearest":
        rank = round(rank)
    below = floor(rank)
    lo = I.take_along_axis(xs, astype(below, B.int64), -1)
    if interpolation in ("linear", "midpoint"):
        hi = I.take_along_axis(xs, astype(ceil(rank), B.int64), -1)
        out = lerp(lo, hi, 0.5 if interpolation == "midpoint" else rank - below)
    else:
        out = lo
    out = S.moveaxis(out, -1, 0)  # (m, ...lead)
    if keepdim and dim is None:
        out = S.reshape(out, (m,) + (1,) * nd)
    elif keepdim and nd:
        out = S.reshape(out, (m,) + lead[:ax] + (1,) + lead[ax:])
    return S.reshape(out, out.shape[1:]) if qt.ndim == 0 else out


# --- window functions ------------------------------------------------------------------------
def _window(op: str, n, periodic: bool, dtype, device, requires_grad: bool, fn) -> Tensor:
    np = B.np
    n = _int(op, n, "window_length")
    if n < 0:
        raise ShapeError(f"{op}: window_length must be non-negative, got {n}")
    dt = _float_dtype(op, dtype)
    if n <= 1:
        w = np.ones(n)
    else:
        big = n + 1 if periodic else n
        w = fn(np.arange(big, dtype=np.float64), big)[:n]
    return _tensor(B.cast(w, dt), device=device, requires_grad=requires_grad)


def _cosine(*coefs):
    """sum_k (-1)^k coefs[k] cos(2 pi k i / (N - 1)), the generalised cosine window."""
    def fn(i, big):
        np = B.np
        t = 2 * np.pi * i / (big - 1)
        return builtins.sum((-1) ** k * c * np.cos(k * t) for k, c in enumerate(coefs))

    return fn


def hann_window(window_length: int, periodic: bool = True, *, dtype=None, device=None,
                requires_grad: bool = False) -> Tensor:
    """The Hann window 0.5 - 0.5 cos(2 pi n / (N - 1)); ``periodic`` computes N + 1 points
    and drops the last (for spectral analysis)."""
    return _window("hann_window", window_length, periodic, dtype, device, requires_grad,
                   _cosine(0.5, 0.5))


def hamming_window(window_length: int, periodic: bool = True, alpha: float = 0.54,
                   beta: float = 0.46, *, dtype=None, device=None,
                   requires_grad: bool = False) -> Tensor:
    """The Hamming window alpha - beta cos(2 pi n / (N - 1)) (``periodic`` as hann_window)."""
    return _window("hamming_window", window_length, periodic, dtype, device, requires_grad,
                   _cosine(alpha, beta))


def blackman_window(window_length: int, periodic: bool = True, *, dtype=None, device=None,
                    requires_grad: bool = False) -> Tensor:
    """The Blackman window 0.42 - 0.5 cos(2 pi n / (N - 1)) + 0.08 cos(4 pi n / (N - 1))."""
    return _window("blackman_window", window_length, periodic, dtype, device, requires_grad,
                   _cosine(0.42, 0.5, 0.08))


def _bartlett(i, big):
    t = 2 * i / (big - 1)
    half = ((big - 1) >> 1) + 1
    t[half:] = 2 - t[half:]
    return t


def bartlett_window(window_length: int, periodic: bool = True, *, dtype=None, device=None,
                    requires_grad: bool = False) -> Tensor:
    """The triangular Bartlett window 1 - |2 n / (N - 1) - 1|."""
    return _window("bartlett_window", window_length, periodic, dtype, device, requires_grad,
                   _bartlett)


def kaiser_window(window_length: int, periodic: bool = True, beta: float = 12.0, *,
                  dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """The Kaiser window I0(beta sqrt(1 - ((n - a) / a)^2)) / I0(beta), a = (N - 1) / 2."""
    def fn(i, big):
        np = B.np
        a = (big - 1) / 2.0
        return np.i0(beta * np.sqrt(np.abs(1 - ((i - a) / a) ** 2))) / np.i0(float(beta))

    return _window("kaiser_window", window_length, periodic, dtype, device, requires_grad, fn)


from .methods import register  # noqa: E402

register({
    "tensor_split": tensor_split, "hsplit": hsplit, "vsplit": vsplit, "dsplit": dsplit,
    "split_with_sizes": split_with_sizes, "select": select, "narrow_copy": narrow_copy,
    "select_scatter": select_scatter, "slice_scatter": slice_scatter,
    "diagonal_scatter": diagonal_scatter, "take_along_dim": take_along_dim,
    "index_put": index_put, "index_reduce": index_reduce, "unfold": unfold,
    "bincount": bincount, "histc": histc, "histogram": histogram,
    "unique_consecutive": unique_consecutive, "mode": mode, "msort": msort,
    "nanmedian": nanmedian, "nanquantile": nanquantile,
})
