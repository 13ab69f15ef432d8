"""Indexing: basic and advanced ``x[index]``, ``take_along_axis``, functional ``x[index] = v``.

Gradients scatter back with an unbuffered add, so an index that repeats counts each time.
Each gather has its scatter as VJP and the scatter has the gather as VJP: double backward works.
"""

from __future__ import annotations

from .. import _backend as B
from ..errors import DTypeError, ShapeError
from ..primitive import primitive
from ..tensor import Tensor
from .shape import norm_axis

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


_getitem = primitive("getitem", lambda xp, x, index: x[index],
                     lambda g, ans, x, index: _scatter(g, index=index, shape=x.shape),
                     saves="none", kind=_IX, doc="x[index] (basic and advanced indexing).")
_scatter = primitive("scatter_add", _scatter_fwd,
                     lambda g, ans, v, index, shape: _getitem(g, index=index),
                     saves="none", kind=_IX,
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
    saves="none", kind=_IX, doc="A copy of x with x[index] = v (v broadcasts).")


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


_take_along = primitive(
    "take_along_axis", lambda xp, x, idx, axis: xp.take_along_axis(x, idx, axis=axis),
    (lambda g, ans, x, idx, axis: _scatter_along(g, idx, axis=axis, shape=x.shape), None),
    kind=_IX, doc="Pick one element per position along an axis (gathers by index).")
_scatter_along = primitive(
    "scatter_add_along_axis", _scatter_along_fwd,
    (lambda g, ans, v, idx, axis, shape: _take_along(g, idx, axis=axis), None),
    kind=_IX, doc="zeros(shape) with v added at idx along axis (repeats add up).")


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
