"""Indexing: basic and advanced ``x[index]``, ``take_along_axis``, functional ``x[index] = v``.

Gradients scatter back with an unbuffered add, so an index that repeats counts each time.
Each gather has its scatter as VJP and the scatter has the gather as VJP: double backward works.
"""

from __future__ import annotations

from .. import _backend as B
from ..batching import BatchTracer, batched, front, rank_up, size_of
from ..errors import DTypeError, ShapeError
from ..primitive import primitive
from ..tensor import Tensor
from .shape import moveaxis, norm_axis

_L = "linear"  # linear in its differentiable inputs: the JVP applies the op to the tangents
_IX = "index"


def _is_basic(index: tuple) -> bool:
    """True when the index has no arrays, so no position can be hit twice."""
    return all(i is None or i is Ellipsis or isinstance(i, int | slice) for i in index)


def norm_index(index, backend: B.Backend, op: str = "getitem") -> tuple:
    """A tuple index whose tensors and lists became arrays on ``backend``."""
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for i in index:
        if isinstance(i, BatchTracer):
            raise TypeError(f"{op}: a batched index tensor inside vmap is not supported; use "
                            "take_along_axis or a one-hot mask")
        if isinstance(i, Tensor):
            i = i.data
            if B.backend_of(i) is not backend:
                i = backend.asarray(B.backend_of(i).to_host(i))
        elif isinstance(i, list):
            i = backend.asarray(i)
        elif B.is_array(i) and B.backend_of(i) is not backend:
            i = backend.asarray(B.backend_of(i).to_host(i))
        elif isinstance(i, B.generic):
            i = i.item()
        if hasattr(i, "dtype") and i.dtype.kind not in "iub":
            raise DTypeError(f"{op}: index arrays must be integer or boolean, got {i.dtype}")
        out.append(i)
    return tuple(out)


def _scatter_fwd(xp, g, index, shape):
    out = xp.zeros(shape, dtype=g.dtype)
    if _is_basic(index):
        out[index] = g
    else:
        B.backend_of(out).scatter_add(out, index, g)
    return out


# --- batching: the batch axis goes first, ``(slice(None),) + index`` indexes the batch -------
def _adv_bdim(index: tuple) -> int:
    """Where the batch axis lands in ``x[(slice(None),) + index]``: first, unless advanced
    indices that are not adjacent send their axes to the front (NumPy's rule)."""
    arrays = [i for i in index if B.is_array(i)]
    if not arrays:
        return 0
    adv = [k for k, i in enumerate(index) if B.is_array(i) or isinstance(i, int)]
    if adv == list(range(adv[0], adv[0] + len(adv))):
        return 0
    shapes = []
    for a in arrays:
        shapes.extend([(int(a.sum()),)] * a.ndim if a.dtype.kind == "b" else [a.shape])
    return len(B.np.broadcast_shapes(*shapes))


def _getitem_batch(v, b, index):
    return _getitem(front(v[0], b[0]), index=(slice(None),) + index), _adv_bdim(index)


def _example_sub(xp, shape, index, dtype) -> tuple:
    """The shape of ``x[index]`` for an example ``x`` of ``shape``."""
    return xp.broadcast_to(xp.zeros((), dtype=dtype), shape)[index].shape


def _scatter_batch(v, b, index, shape):
    g = front(v[0], b[0])
    sub = _example_sub(g.backend.xp, shape, index, g.dtype)
    g = moveaxis(rank_up(g, 0, len(sub)), 0, _adv_bdim(index))
    return _scatter(g, index=(slice(None),) + index, shape=(v[0].shape[b[0]],) + shape), 0


def _setitem_batch(vals, bdims, index):
    n = size_of(vals, bdims)
    x = batched(vals[0], bdims[0], n)
    ex = x.shape[1:]
    sub = _example_sub(x.backend.xp, ex, index, x.dtype)
    v = rank_up(batched(vals[1], bdims[1], n), 0, len(sub))
    v = moveaxis(v, 0, _adv_bdim(index))
    return _setitem(x, v, index=(slice(None),) + index), 0


_getitem = primitive("getitem", lambda xp, x, index: x[index],
                     lambda g, ans, x, index: _scatter(g, index=index, shape=x.shape),
                     saves="none", kind=_IX, jvp=_L, batch=_getitem_batch,
                     doc="x[index] (basic and advanced indexing).")
_scatter = primitive("scatter_add", _scatter_fwd,
                     lambda g, ans, v, index, shape: _getitem(g, index=index),
                     saves="none", kind=_IX, jvp=_L, batch=_scatter_batch,
                     doc="zeros(shape) with v added at index (repeats add up).")


def getitem(x, index):
    """``x[index]`` with NumPy's rules; the gradient scatters back with repeats counted."""
    try:
        return _getitem(x, index=norm_index(index, x.backend))
    except IndexError as e:
        raise IndexError(f"getitem: index {index!r} does not fit shape {x.shape}: {e}") from None


def _setitem_fwd(xp, x, v, index):
    out = x.copy()
    out[index] = v
    return out


_setitem = primitive(
    "setitem", _setitem_fwd,
    (lambda g, ans, x, v, index: _setitem(g, 0, index=index),
     lambda g, ans, x, v, index: _getitem(g, index=index)),
    saves="none", kind=_IX, jvp=_L, batch=_setitem_batch,
    doc="A copy of x with x[index] = v (v broadcasts).")


def index_update(x, index, value):
    """Functional ``x[index] = value``: a new tensor, differentiable in both x and value."""
    return _setitem(x, value, index=norm_index(index, x.backend, "setitem"))


# --- along an axis ---------------------------------------------------------------------------
def _along(xp, idx, axis, shape):
    """Full fancy index into an array of ``shape`` equivalent to take_along_axis(·, idx, axis);
    as in NumPy, length-1 axes of the array or of ``idx`` broadcast against the other."""
    nd = idx.ndim
    out = []
    for d in range(nd):
        if d == axis:
            out.append(idx)
        else:
            ix = [1] * nd
            ix[d] = shape[d]
            out.append(xp.arange(shape[d]).reshape(ix))
    return tuple(out)


def _scatter_along_fwd(xp, g, idx, axis, shape):
    out = xp.zeros(shape, dtype=g.dtype)
    full = _along(xp, xp.broadcast_to(idx, g.shape), axis, shape)
    B.backend_of(out).scatter_add(out, full, g)
    return out


def _along_batch(prim):
    def rule(vals, bdims, axis, **shape):
        n = size_of(vals, bdims)
        a, i = (batched(v, b, n) for v, b in zip(vals, bdims))
        if shape:
            shape = {"shape": (n,) + shape["shape"]}
        return prim(a, i, axis=axis + 1, **shape), 0

    return rule


_take_along = primitive(
    "take_along_axis", lambda xp, x, idx, axis: xp.take_along_axis(x, idx, axis=axis),
    (lambda g, ans, x, idx, axis: _scatter_along(g, idx, axis=axis, shape=x.shape), None),
    kind=_IX, jvp=_L, doc="Pick one element per position along an axis (gathers by index).")
_take_along.batch = _along_batch(_take_along)
_scatter_along = primitive(
    "scatter_add_along_axis", _scatter_along_fwd,
    (lambda g, ans, v, idx, axis, shape: _take_along(g, idx, axis=axis), None),
    kind=_IX, jvp=_L, doc="zeros(shape) with v added at idx along axis (repeats add up).")
_scatter_along.batch = _along_batch(_scatter_along)


def take_along_axis(x, indices, axis: int):
    """NumPy's take_along_axis; the gradient adds back at the picked positions."""
    if indices.dtype.kind not in "iu":
        raise DTypeError(f"take_along_axis: indices must be integers, got {indices.dtype}")
    if indices.ndim != x.ndim:
        raise ShapeError(f"take_along_axis: indices have {indices.ndim} dims but x has "
                         f"{x.ndim} (shapes {tuple(indices.shape)} and {tuple(x.shape)})")
    ax = norm_axis(axis, x.ndim, "take_along_axis")
    try:
        return _take_along(x, indices, axis=ax)
    except IndexError as e:
        raise IndexError(f"take_along_axis: index out of range for axis {ax} of shape "
                         f"{tuple(x.shape)}: {e}") from None
