"""Indexing: basic and advanced ``x[index]``, ``take_along_axis``, functional ``x[index] = v``,
and PyTorch's indexing ops (gather, scatter, scatter_reduce, index_*, masked_*, take, put,
nonzero) built on the along-an-axis gather and scatters.

Gradients scatter back with an unbuffered add, so an index that repeats counts each time.
Each gather has its scatter as VJP and the scatter has the gather as VJP: double backward works.
"""

from __future__ import annotations

import math
import warnings

from .. import _backend as B
from ..amp import promote_in_region
from ..autodiff import computes_with_values, enable_grad, modes, no_grad
from ..batching import BatchTracer, Level, batched, front, lowered, rank_up, size_of, values
from ..errors import DTypeError, GradError, ShapeError
from ..primitive import DTYPE_VIEW, REGISTRY, bind, primitive
from ..tensor import Tensor, check_fill_fits
from .elementwise import astype as _astype
from .elementwise import where as _where
from .shape import copy as _copy
from .shape import moveaxis, norm_axis

_L = "linear"  # linear in its differentiable inputs: the JVP applies the op to the tangents
_IX = "index"


def _is_basic(index: tuple) -> bool:
    """True when the index has no arrays, so no position can be hit twice."""
    return all(i is None or i is Ellipsis or isinstance(i, int | slice) for i in index)


def norm_index(index, backend: B.Backend, op: str = "getitem", ndim: int | None = None) -> tuple:
    """A tuple index whose tensors and lists became arrays on ``backend``; given the indexed
    tensor's ``ndim``, without an Ellipsis that covers no dims (:func:`_drop_empty_ellipsis`)."""
    if not isinstance(index, tuple):
        index = (index,)
    out, ellipsis = [], False
    for i in index:
        tensor = isinstance(i, Tensor)
        if isinstance(i, BatchTracer):
            raise TypeError(f"{op}: inside vmap an unbatched tensor cannot be changed in "
                            "place at batched indices; use index_update or index_put (out of "
                            "place)")
        if isinstance(i, Tensor):
            if _int_tensor(i):  # PyTorch selects with it, as with an int: a view
                out.append(int(i._data))
                continue
            i = i._data
            if B.backend_of(i) is not backend:
                i = backend.asarray(B.backend_of(i).to_host(i))
        elif isinstance(i, list):
            try:
                a = backend.asarray(i) if i else backend.asarray(i, dtype=B.np.int64)
            except (ValueError, TypeError):
                a = None
            if a is None or a.dtype.kind == "O":
                raise TypeError(f"{op}: a list index must hold ints or bools (one index "
                                f"array), got {i!r}; for one index per dim use a tuple, "
                                "x[a, b]")
            i = a
        elif B.is_array(i) and B.backend_of(i) is not backend:
            i = backend.asarray(B.backend_of(i).to_host(i))
        elif isinstance(i, B.generic):
            i = i.item()
        if hasattr(i, "dtype"):
            if i.dtype.kind not in "iub":
                raise DTypeError(f"{op}: index arrays must be integer or boolean, got {i.dtype}")
            if i.dtype == B.np.uint8 and (i.ndim or tensor):  # PyTorch's (deprecated) byte mask
                warnings.warn(f"{op}: indexing with a uint8 tensor is deprecated (PyTorch); it is "
                              "a mask, as there: use a bool tensor", UserWarning, stacklevel=3)
                i = i.astype(bool)
        elif i is Ellipsis:
            ellipsis = True
        out.append(i)
    out = tuple(out)
    return _drop_empty_ellipsis(out, ndim) if ellipsis and ndim is not None else out


def _drop_empty_ellipsis(idx: tuple, ndim: int) -> tuple:
    """``idx`` without its Ellipsis where that covers none of the ``ndim`` dims and the index
    holds index arrays. PyTorch places the dims of index arrays by the dims they index: two
    arrays with only an empty Ellipsis between them index adjacent dims, whose result dims
    stay in place (``x[:, i, ..., j]`` of a 3-d x: (x.shape[0], len(i))); NumPy's rule reads
    positions in the index, where any Ellipsis separates them and moves their dims to the
    front. Without it, both rules agree."""
    at, used, arrays = None, 0, False
    for k, i in enumerate(idx):
        if i is Ellipsis:
            at = k
        elif i is None:
            continue
        elif getattr(i, "ndim", 0):
            arrays = True
            used += i.ndim if i.dtype.kind == "b" else 1
        elif _bool_scalar(i):
            arrays = True  # adds a dim and indexes it with an index array: none of x's dims
        else:
            used += 1  # an int or a slice
    if at is None or not arrays or used != ndim:
        return idx
    return idx[:at] + idx[at + 1:]


def _is_advanced(i) -> bool:
    return isinstance(i, list | Tensor) or (B.is_array(i) and i.ndim > 0)


def _is_int(i) -> bool:
    """Whether an index entry selects as one integer: a Python or NumPy int, or a 0-d
    integer tensor (PyTorch's rule; a 0-d bool or uint8 tensor is a mask)."""
    return (isinstance(i, int | B.np.integer) and not isinstance(i, bool)
            or isinstance(i, Tensor) and _int_tensor(i))


def _int_tensor(i: Tensor) -> bool:
    """Whether tensor ``i`` indexes as PyTorch's integer: 0-d, of an integer dtype but uint8
    (outside vmap and jit, where it stays an index array)."""
    d = i._data
    return (d.ndim == 0 and (d.dtype.kind == "i" or d.dtype.kind == "u" and d.itemsize > 1)
            and type(i) is not BatchTracer and modes().jit is None)


def _bool_scalar(i) -> bool:
    """Whether index entry ``i`` is a Python bool or a 0-d bool tensor or array (or uint8
    tensor, PyTorch's byte mask): PyTorch adds a dim of size 1 (True) or 0 (False) there and
    indexes it with an index array."""
    return isinstance(i, bool) or (isinstance(i, Tensor) or B.is_array(i)) and i.ndim == 0 and (
        i.dtype == B.bool_ or isinstance(i, Tensor) and i.dtype == B.np.uint8)


def ints_first(index):
    """PyTorch's order for an index that mixes integers with index arrays: the integers
    select first (their dims go), then the arrays index what is left, so ``x[0, :, [1, 2]]``
    is ``x[0][:, [1, 2]]``. NumPy counts the integers among the arrays instead, which moves
    the arrays' dims to the front when a slice separates them. A bool scalar (``x[0, True]``)
    counts as an index array that indexes no dim of ``x``. ``(first, rest)`` for such an
    index, else None."""
    if type(index) is not tuple or len(index) < 2:
        return None
    ints = adv = False
    for i in index:
        if (isinstance(i, int | B.np.integer) and not isinstance(i, bool)
                or isinstance(i, Tensor) and _int_tensor(i)):
            ints = True
        elif _is_advanced(i) or _bool_scalar(i):
            adv = True
    if not (ints and adv):
        return None
    first, rest = [], []
    for i in index:
        if _is_int(i):
            first.append(i)
        elif _bool_scalar(i):
            rest.append(i)
        elif _is_advanced(i):
            k = getattr(i, "ndim", 1)
            is_mask = getattr(i, "dtype", None) == B.bool_ or (
                isinstance(i, list) and i and isinstance(i[0], bool))
            first += [slice(None)] * (k if is_mask else 1)
            rest.append(i)
        else:  # a slice, None or ...
            first.append(i)
            rest.append(i if i is Ellipsis else slice(None))
    return tuple(first), tuple(rest)


def _scatter_fwd(xp, g, index, shape):
    out = xp.zeros(shape, dtype=g.dtype)
    if _is_basic(index):
        out[index] += g  # 0 + g, as add.at below and _getitem_add_into: -0.0 becomes 0.0
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
    value = vals[1]
    if not isinstance(value, Tensor):  # a number: on x's device, in x's dtype
        value = Tensor._of(x.backend.asarray(value, dtype=x.dtype))
    v = rank_up(batched(value, bdims[1], n), 0, len(sub))
    v = moveaxis(v, 0, _adv_bdim(index))
    return _setitem(x, v, index=(slice(None),) + index), 0


def _getitem_fwd(xp, x, index):
    out = x[index]
    if not B.is_array(out):  # an element: a 0-d view of it (PyTorch's), not NumPy's scalar copy
        out = x[(*index, Ellipsis) if type(index) is tuple else (index, Ellipsis)]
    return out


_getitem = primitive("getitem", _getitem_fwd,
                     lambda g, ans, x, index: _scatter(g, index=index, shape=x.shape),
                     saves="none", kind=_IX, jvp=_L, batch=_getitem_batch,
                     doc="x[index] (basic and advanced indexing).")
_scatter = primitive("scatter_add", _scatter_fwd,
                     lambda g, ans, v, index, shape: _getitem(g, index=index),
                     saves="none", kind=_IX, jvp=_L, batch=_scatter_batch,
                     doc="zeros(shape) with v added at index (repeats add up).")


def _getitem_add_into(acc, g, index) -> bool:
    """getitem's VJP message ``g`` added into the engine's pending sum ``acc`` for ``x`` in
    place: ``acc[index] += g`` for a basic index, the bits of ``acc + scatter(g)`` where ``acc``
    holds no -0.0 (the engine's ``clean`` sums), with no zero-filled array of x's shape per
    part (split, chunk, unbind, x[:, t] in a loop over time: each part's backward then costs
    its own size, not its base's); False for an advanced index (repeats: add.at's order)."""
    if not _is_basic(index):
        return False
    acc[index] += g
    return True


_getitem.add_into = _getitem_add_into


def getitem(x, index):
    """``x[index]`` with NumPy's rules; the gradient scatters back with repeats counted.

    A basic index (ints, slices, None, ``...``) gives a view, as in PyTorch: its array is a
    view of ``x``'s, and when its graph is recorded an in-place change of the view also
    changes ``x`` (:func:`write_through`). Inside vmap the index tensors may be batched
    (:func:`_batched_index`)."""
    split = ints_first(index)
    if split is not None:
        return getitem(getitem(x, split[0]), split[1])
    if has_batched(index):
        return _batched_index("getitem", getitem, x, index)
    if modes().jit is not None:
        _mask_counts_under_jit(index)
    try:
        idx = norm_index(index, x.backend, ndim=x.ndim)
        out = _getitem(x, index=idx)
    except IndexError as e:
        hint = ("; a 0-d tensor has no index: use tensor.item() to get its number (the old "
                "loss.data[0] is loss.item())") if x.ndim == 0 else ""
        raise IndexError(f"getitem: index {index!r} does not fit shape {x.shape}: {e}"
                         f"{hint}") from None
    if (type(x) is Tensor and type(out) is Tensor or type(out) is BatchTracer
            and type(x) is BatchTracer and out.level is x.level) and _basic(idx):
        out._view = (x, idx)  # an in-place change of out rebinds it; write_through tells x
    return out


def _mask_counts_under_jit(index) -> None:
    """A boolean mask selects as many elements as it holds True values: a jit trace would
    freeze that count into the program (a later call's ``x[mask].size(0)``, and the shapes
    its backward builds, would be the traced call's), so such a signature runs eagerly."""
    for i in index if isinstance(index, tuple) else (index,):
        if isinstance(i, Tensor) and (i.dtype == B.bool_ or i.dtype == B.np.uint8 and i.ndim):
            computes_with_values(i, "getitem with a boolean mask (the count it selects)")


_BASIC = (slice, int, type(None), type(Ellipsis))


def _basic(idx) -> bool:
    """Whether a normalised index is NumPy's (and PyTorch's) basic, view-making kind."""
    if type(idx) is not tuple:
        return type(idx) in _BASIC
    for p in idx:
        if type(p) not in _BASIC:
            return False
    return True


def write_through(view: Tensor, value, name: str) -> None:
    """Before ``view`` takes ``value`` by an in-place op while a graph is recorded: when
    ``view`` is a view of another tensor (a basic slice, or any op whose array views its
    input's: transpose, reshape, diagonal, ...), that tensor takes ``value`` there too (a
    recorded ``setitem`` or ``view_put``, handed on up a chain of views), as a PyTorch view's
    base does; a leaf that requires grad refuses, as in PyTorch."""
    entry = getattr(view, "_view", None)
    if entry is None or entry[1] is None:  # not a view, or a detached alias
        return
    base = entry[0]
    if base.node is None and base.requires_grad:
        raise GradError(f"{name}: a view of a leaf tensor that requires grad cannot be changed "
                        "in place while recording; wrap the update in nodegrad.no_grad()")
    old = view._data
    if len(entry) == 2:  # a slice: x[idx] = value
        base[entry[1]] = value
        _stay_a_view(view, value, old)
        return
    _, prim, params = entry  # another view (transpose, reshape, diagonal, ...)
    if prim is DTYPE_VIEW:  # inside vmap: .real, .imag, view_as_real(...) of a batched tensor
        base.copy_(_dtype_view_put(base, value, params, name))
        return
    d = view._data if type(view) is Tensor else getattr(view, "val", None)  # (vmap: the batch)
    if B.is_array(d) and getattr(getattr(d, "flags", None), "writeable", True) is False:
        if prim.name == "sliding_window_view":
            raise ShapeError(f"{name}: this unfold (sliding window) view cannot be written in "
                             "place: its windows overlap or do not tile the dim, so its array "
                             "is read-only; clone() it first")
        raise ShapeError(f"{name}: this {prim.name} view cannot be written in place: more than "
                         "one of its elements refers to a single memory location (an expanded "
                         "or overlapping view); clone() it first")
    base.copy_(_view_put(base, value, view=prim, vparams=tuple(params.items())))
    _stay_a_view(view, value, old)


def _stay_a_view(view: Tensor, value, old) -> None:
    """After ``view``'s base took ``value`` at the view, ``view`` was made a view of the base's
    new memory (:func:`refresh_views`); the in-place op then points ``view`` at ``value``, so
    ``value`` takes that memory and graph position first: ``view`` stays a view of its base,
    and a later write through either one reaches the other, as in PyTorch (pointing it at
    ``value``'s own array cut it off: a silent wrong value)."""
    d = view._data
    if (type(view) is Tensor and type(value) is Tensor and d is not old
            and d.shape == value._data.shape and d.dtype == value._data.dtype):
        value._data, value.node, value.requires_grad = d, view.node, view.requires_grad
        value._version = view._version


def _dtype_view_put(base: Tensor, value: Tensor, view: str, name: str) -> Tensor:
    """Inside vmap, the new value of ``base`` whose dtype view ``view`` (``real``, ``imag``,
    ``view_as_real``, ``view_as_complex``) takes ``value``, built from the view's inverse: the
    view-put rule places values by position, which a view of another dtype does not keep."""
    def call(prim: str, *args):
        return bind(REGISTRY[prim], args, {})

    if view == "real":
        return call("complex", value, call("imag", base))
    if view == "imag":
        return call("complex", call("real", base), value)
    if view == "view_as_real":
        return call("view_as_complex", value)
    if view == "view_as_complex":
        return call("view_as_real", value)
    raise DTypeError(f"{name}: inside vmap, an in-place change through the dtype view {view} "
                     "cannot reach the tensor it views; build the new value instead")


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


def refresh_views(base: Tensor, refs: list, moved: bool = False) -> None:
    """After ``base`` took a new array by an in-place op recorded for autograd: the views of
    its old array still alive (``refs``, oldest first), and views of those, become views of
    the new one, so they show the change and their gradients reach it, as PyTorch's views do
    (it regenerates a view's ``grad_fn`` after its base changes in place); a ``detach()`` of
    one takes its new values, as it shares PyTorch's memory.

    ``moved``: ``base`` holds the same values in new memory (an optimiser gathered its
    parameters into one buffer); each view keeps whether it is on the graph, as it was made
    (a view made under ``no_grad`` stays off it)."""
    changed = {id(base)}
    for r in list(refs):
        v = r()
        if v is None or v is base or type(v) is not Tensor:
            continue
        entry = v._view
        if entry is None:
            continue
        if entry[1] is None:  # detach(): b's new values (while b keeps the layout v has)
            b = entry[0]()
            if b is None or id(b) not in changed:
                continue
            old, new = v._data, b._data
            for step in entry[2]:  # the views between b and the tensor v was detached from
                new = (_getitem_fwd(None, new, step[0]) if len(step) == 1
                       else step[0].fwd(B.backend_of(new).xp, new, **step[1]))
            if new.dtype != old.dtype:  # view(dtype) of b: its bytes read again
                new = new.view(old.dtype) if new.flags.c_contiguous else old
            if new.shape == old.shape and new.base is not (old if old.base is None
                                                           else old.base):
                v._data = new
                own = v._version is not None and len(v._version) == 1  # a .data: unseen writes
                b._add_view(v)
                if own:
                    v._version = [0]
                changed.add(id(v))
            continue
        b = entry[0]
        if id(b) not in changed:
            continue
        if moved:  # as the view was made: on the graph or off it
            with (enable_grad() if v.requires_grad else no_grad()):
                nv = getitem(b, entry[1]) if len(entry) == 2 else entry[1](b, **entry[2])
        else:
            nv = getitem(b, entry[1]) if len(entry) == 2 else entry[1](b, **entry[2])
        v._data, v.node, v.requires_grad = nv._data, nv.node, nv.requires_grad
        if b._version is not None and len(b._version) > 1:
            b._add_view(v)
        changed.add(id(v))


def _view_put_fwd(xp, x, v, view, vparams):
    out = x.copy()
    w = view.fwd(xp, out, **dict(vparams))
    if type(w) is B.ndarray and w is not out and w.base is not out:  # a copy: writes get lost
        raise ValueError(f"{view.name} did not give a view of its input here")
    w[...] = v
    return out


def _view_put_batch(vals, bdims, view, vparams):
    """Per example, the view covers fixed positions of x: found by taking the view of x's
    flat positions, then set in every example's flat copy at once."""
    n = size_of(vals, bdims)
    x = batched(vals[0], bdims[0], n)
    ex = tuple(x.shape[1:])
    xp = x.backend.xp
    pos = view.fwd(xp, xp.arange(math.prod(ex)).reshape(ex), **dict(vparams))
    value = vals[1]
    if not isinstance(value, Tensor):  # a number: on x's device, in x's dtype
        value = Tensor._of(x.backend.asarray(value, dtype=x.dtype))
    v = batched(value, bdims[1], n).broadcast_to((n,) + tuple(pos.shape))
    flat = _setitem(x.reshape((n, -1)), v.reshape((n, -1)),
                    index=(slice(None), xp.ascontiguousarray(pos).reshape(-1)))
    return flat.reshape((n,) + ex), 0


_view_put = primitive(
    "view_put", _view_put_fwd,
    (lambda g, ans, x, v, view, vparams: _view_put(g, 0, view=view, vparams=vparams),
     lambda g, ans, x, v, view, vparams: _copy(view(g, **dict(vparams)))),
    saves="none", kind=_IX, jvp=_L, batch=_view_put_batch,
    doc="A copy of x whose view by the primitive `view` (with `vparams`) holds v: the value "
        "an in-place change through a view gives its base.")


def drop_leading_ones(value):
    """``value`` (a tensor or an array) without its leading dims of size 1: PyTorch's
    ``x[index] = value`` drops them before it broadcasts, so a value of shape (1, 1, 4) fits
    x[0] of a (5, 4) x, and (1,) fits an element."""
    shape = tuple(getattr(value, "shape", ()))
    k = 0
    while k < len(shape) and shape[k] == 1:
        k += 1
    return value.reshape(shape[k:]) if k else value


def index_update(x, index, value):
    """Functional ``x[index] = value``: a new tensor, differentiable in both x and value."""
    value = drop_leading_ones(value)
    split = ints_first(index)
    if split is not None:  # PyTorch's order, as x[index] = value
        return index_update(x, split[0], index_update(getitem(x, split[0]), split[1], value))
    if has_batched(index):
        return _batched_index("setitem", index_update, x, index, value)
    return _setitem(x, value, index=norm_index(index, x.backend, "setitem", x.ndim))


def index_add_at(x, index, value):
    """Functional ``x[index] += value`` with repeats adding up (``index_put``'s accumulate;
    ``value`` a tensor of x's dtype that broadcasts to the indexed shape), differentiable in
    both."""
    if has_batched(index):
        return _batched_index("index_put", index_add_at, x, index, value)
    idx = norm_index(index, x.backend, "index_put", x.ndim)
    sub = _example_sub(x.backend.xp, tuple(x.shape), idx, x.dtype)
    if tuple(value.shape) != sub:
        value = value.broadcast_to(sub)
    return x + _scatter(value, index=idx, shape=tuple(x.shape))


# --- index tensors batched inside vmap -------------------------------------------------------
def has_batched(index) -> bool:
    """Whether an index (an entry or a tuple of them) holds a tensor batched inside vmap."""
    if type(index) is BatchTracer:
        return True
    return type(index) is tuple and any(type(i) is BatchTracer for i in index)


def _masked_update(add: bool, x, mask, v):
    """``x[mask] = v`` (or ``+= v``) for a boolean ``mask`` batched inside vmap, as ``where``
    where that is exact: ``v`` the same for every selected position (it spans only the axes
    after the mask's, or has length 1 along the selected positions); else None."""
    if type(mask) is not BatchTracer or mask.dtype.kind != "b" or mask.ndim > x.ndim:
        return None
    if not isinstance(v, Tensor):
        v = Tensor._of(x.backend.asarray(v, dtype=x.dtype))
    after = x.ndim - mask.ndim
    if v.ndim == after + 1 and v.shape[0] == 1:
        v = v.reshape(tuple(v.shape[1:]))
    if v.ndim > after:
        return None
    mask = mask.reshape(tuple(mask.shape) + (1,) * after)
    v = v.astype(x.dtype)
    return x + _where(mask, v, 0) if add else _where(mask, v, x)


def _entries(index: tuple, op: str) -> list:
    """The index's entries with lists as arrays and unbatched boolean masks as the integer
    arrays of their nonzero positions (NumPy's reading of a mask), for :func:`_batched_index`."""
    out = []
    for i in index:
        if type(i) is bool:
            raise TypeError(f"{op}: a bool scalar index beside a batched index tensor inside "
                            "vmap is not supported")
        if isinstance(i, list):
            i = B.np.asarray(i)
        if type(i) is BatchTracer:
            if i.dtype.kind == "b":
                raise TypeError(f"{op}: a batched boolean mask inside vmap selects a different "
                                "number of elements in each example; use where() or a 0/1 "
                                "weight instead")
        elif isinstance(i, Tensor) or B.is_array(i):
            a = i._data if isinstance(i, Tensor) else i
            if a.dtype.kind == "b":
                out.extend(B.backend_of(a).xp.nonzero(a))
                continue
        if getattr(i, "dtype", None) is not None and i.dtype.kind not in "iu":
            raise DTypeError(f"{op}: index tensors must be integer or boolean, got {i.dtype}")
        out.append(i)
    return out


def _batched_index(op: str, fn, x, index, *value):
    """``fn(x, index[, value])`` (getitem, index_update or index_add_at) where ``index`` holds
    tensors batched inside vmap: each example indexes with its own indices.

    One vmap level is peeled per call, as :func:`batching.batch_bind` does, and ``fn`` runs one
    level down on the whole batch. The index tensors batched at this level get their batch axis
    first (and length-1 axes so they broadcast with the others); where ``x`` itself is batched
    (always for the two updates), its batch axis moves to the axis the first advanced index
    addresses, with ``arange(n)`` indexing it there. NumPy's placement of the advanced indices'
    axes then puts the batch axis where the example's advanced axes start (or first, when the
    example's advanced indices are not adjacent), so no axis moves after."""
    traces = modes().traces
    top = traces[-1]
    if type(top) is not Level:
        raise TypeError(f"{op}: a batched index tensor cannot be exported")
    below = len(traces) - 1
    index = index if isinstance(index, tuple) else (index,)
    if value and len(index) == 1:
        out = _masked_update(fn is index_add_at, x, index[0], value[0])
        if out is not None:
            return out
    idx = _entries(index, op)
    here = [type(t) is BatchTracer and t.level is top for t in (x, *value, *idx)]
    if not any(here):
        with lowered(below):
            return fn(x, tuple(idx), *value)
    n = next(t.val.shape[t.bdim] for t, h in zip((x, *value, *idx), here) if h)
    adv = [k for k, i in enumerate(idx) if isinstance(i, Tensor | int) or B.is_array(i)
           or isinstance(i, B.generic)]
    k0 = adv[0]
    adjacent = adv == list(range(k0, k0 + len(adv)))
    arrays = [i for i in idx if isinstance(i, Tensor) or B.is_array(i)]
    rank = len(B.np.broadcast_shapes(*(tuple(a.shape) for a in arrays)))
    used = sum(i is not None and i is not Ellipsis for i in idx)
    rest = x.ndim - used  # the axes an Ellipsis (or the end) covers
    if rest < 0:
        raise IndexError(f"{op}: {used} indices for a tensor of {x.ndim} dims")
    ax = sum(0 if i is None else rest if i is Ellipsis else 1 for i in idx[:k0])
    pre = sum(rest if i is Ellipsis else 1 for i in idx[:k0])  # axes of the result before
    q = pre if adjacent else 0  # where the batch axis lands among the indexed axes
    new = [rank_up(i.val, i.bdim, rank) if h else i for i, h in zip(idx, here[1 + len(value):])]
    x_here = here[0]
    xv = x.val if x_here else x
    if x_here or value:
        xv = batched(xv, x.bdim if x_here else None, n)
        if ax:
            xv = moveaxis(xv, 0, ax)
        new.insert(k0, xv.backend.xp.arange(n).reshape((n,) + (1,) * rank))
    if value:
        v = value[0]
        if not isinstance(v, Tensor):
            v = Tensor._of(x.backend.asarray(v, dtype=x.dtype))
        sub = sum(isinstance(i, slice) or i is None for i in idx) + rest + rank  # its rank
        vb = batched(v.val, v.bdim, n) if here[1] else batched(v, None, n)
        if vb.ndim - 1 > sub:
            raise ShapeError(f"{op}: a value of shape {tuple(v.shape)} does not fit the "
                             f"indexed shape of rank {sub}")
        vb = moveaxis(rank_up(vb, 0, sub), 0, q)
        with lowered(below):
            return BatchTracer(fn(xv, tuple(new), vb), ax, top)
    with lowered(below):
        return BatchTracer(fn(xv, tuple(new)), q, top)


# --- along an axis ---------------------------------------------------------------------------
def _along(xp, idx, axis, shape):
    """Full fancy index into an array of ``shape`` equivalent to take_along_axis(·, idx, axis);
    as in NumPy, length-1 axes of the array or of ``idx`` broadcast against the other."""
    nd = idx.ndim
    out = []
    for d in range(nd):
        if d == axis:
            out.append(idx)
        else:  # PyTorch's scatter: an index smaller than the target covers its leading part
            ix = [1] * nd
            ix[d] = min(shape[d], idx.shape[d])
            out.append(xp.arange(ix[d]).reshape(ix))
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
    (lambda g, ans, v, idx, axis, shape: _take_along(_fit(g, v.shape, axis), idx, axis=axis),
     None),
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



# =============================================================================================
# PyTorch's indexing ops. An index is an integer tensor (a primitive input, so vmap can batch
# it); along ``dim`` it may be smaller than the input in the other dims (PyTorch's rule, unlike
# NumPy's take_along_axis, which broadcasts). Forward, VJP, JVP and batching of the two new
# primitives (set and reduce along an axis) are declared here; the rest are exact composites.
# =============================================================================================
_REDUCE_UFUNC = {"prod": "multiply", "amax": "max", "amin": "min"}


def _fit(x, shape, axis):
    """``x`` cut to ``shape`` in every dim but ``axis`` where it is longer (PyTorch's smaller
    index covers the leading part of the other dims)."""
    cut = [d != axis and x.shape[d] > shape[d] for d in range(x.ndim)]
    if not any(cut):
        return x
    return _getitem(x, index=tuple(slice(0, shape[d]) if c else slice(None)
                                   for d, c in enumerate(cut)))


def _scatter_set_fwd(xp, x, src, idx, axis):
    out = x.copy()
    out[_along(xp, idx, axis, x.shape)] = src
    return out


def _scatter_reduce_fwd(xp, x, src, idx, axis, reduce, include_self):
    out = x.copy()
    full = _along(xp, idx, axis, x.shape)
    if not include_self:
        if reduce == "prod":
            out[full] = 1
        else:
            info = xp.finfo(x.dtype) if x.dtype.kind == "f" else xp.iinfo(x.dtype)
            big = xp.inf if x.dtype.kind == "f" else info.max
            out[full] = -big if reduce == "amax" else big
    B.backend_of(out).scatter_reduce(out, full, src, _REDUCE_UFUNC[reduce])
    return out


def _along_set_batch(prim):
    def rule(vals, bdims, axis, **params):
        n = size_of(vals, bdims)
        args = [v if b is None and not isinstance(v, Tensor) else batched(v, b, n)
                for v, b in zip(vals, bdims)]
        return prim(*args, axis=axis + 1, **params), 0

    return rule


def _zeros_at(g, idx, axis):
    """``g`` with the positions that ``idx`` addresses set to 0."""
    return _scatter_set(g, Tensor._of(g.backend.xp.zeros(idx.shape, g.dtype)), idx, axis=axis)


def _gather_fit(x, idx, axis):
    return _take_along(_fit(x, idx.shape, axis), idx, axis=axis)


def _scatter_reduce_vjp(g, ans, x, src, idx, axis, reduce, include_self):
    """PyTorch's rule: amax/amin split the gradient evenly among the elements equal to the
    result; prod divides by the element, or recomputes the product without a lone zero."""
    f = g.dtype
    if reduce == "prod":
        xz = x == 0
        masked_x = _where(xz, 1.0, x)
        gx = g * _scatter_reduce(masked_x, src, idx, axis=axis, reduce=reduce,
                                 include_self=include_self) / masked_x
        src_zero = src == 0
        nz = _gather_fit(_scatter_along(src_zero.astype(f), idx, axis=axis, shape=x.shape),
                         idx, axis)
        single = src_zero & (nz == 1)
        without = _scatter_reduce(x, _where(single, 1.0, src), idx, axis=axis, reduce=reduce,
                                  include_self=include_self)
        gs = _where(single, _gather_fit(g * without, idx, axis),
                   _gather_fit(g * ans, idx, axis) / _where(src_zero, 1.0, src))
    else:
        value = _gather_fit(ans, idx, axis)
        x_is, src_is = x == ans, src == value
        n = _scatter_along(src_is.astype(f), idx, axis=axis, shape=x.shape) + x_is.astype(f)
        gd = g / n
        gx = _where(x_is, gd, 0.0)
        gs = _where(src_is, _gather_fit(gd, idx, axis), 0.0)
    if not include_self:
        gx = _zeros_at(gx, idx, axis)
    return gx, gs


def _scatter_reduce_jvp(ts, ans, x, src, idx, axis, reduce, include_self):
    # the VJP is g times coefficients: the JVP applies their transpose to the tangents
    ones = Tensor._of(ans.backend.xp.ones(ans.shape, ans.dtype))
    cx, cs = _scatter_reduce_vjp(ones, ans, x, src, idx, axis, reduce, include_self)
    out = None if ts[0] is None else cx * ts[0]
    if ts[1] is not None:
        c = _scatter_along(cs * ts[1], idx, axis=axis, shape=tuple(ans.shape))
        out = c if out is None else out + c
    return out


_scatter_set = primitive(
    "scatter_along_axis", _scatter_set_fwd,
    (lambda g, ans, x, src, idx, axis: _zeros_at(g, idx, axis),
     lambda g, ans, x, src, idx, axis: _gather_fit(g, idx, axis), None),
    saves="inputs", kind=_IX, jvp=_L,
    doc="A copy of x with x[idx] = src along an axis (idx and src of one shape).")
_scatter_set.batch = _along_set_batch(_scatter_set)
_scatter_reduce = primitive(
    "scatter_reduce_along_axis", _scatter_reduce_fwd,
    vjp_all=lambda needs, g, ans, x, src, idx, **p: (*_scatter_reduce_vjp(g, ans, x, src, idx,
                                                                          **p), None),
    saves="both", kind=_IX, jvp=_scatter_reduce_jvp,
    doc="x with src combined in at idx along an axis by prod, amax or amin.")
_scatter_reduce.batch = _along_set_batch(_scatter_reduce)


# --- argument checks -------------------------------------------------------------------------
def _as_index(op: str, index, like, name: str = "index"):
    """``index`` as an integer tensor on ``like``'s device, or a DTypeError naming ``op``."""
    if not isinstance(index, Tensor):
        index = Tensor._of(like.backend.asarray(index))
        if index.dtype.kind == "f" and index.numel() == 0:
            index = index.astype(B.int64)
    if index.dtype.kind not in "iu":
        raise DTypeError(f"{op}: {name} must be an integer tensor, got dtype {index.dtype}")
    return index


def _check_range(op: str, index, n: int, dim: int, negative: bool = False) -> None:
    v = values(index)
    if v.size == 0:
        return
    lo, hi, low = int(v.min()), int(v.max()), -n if negative else 0
    if lo < low or hi >= n:
        raise IndexError(f"{op}: index {lo if lo < low else hi} is out of range for dimension "
                         f"{dim} of size {n}; expected indices in [{low}, {n - 1}]")


def _dim(op: str, dim: int, ndim: int) -> int:
    return norm_axis(dim, max(ndim, 1), op)


def _same_rank(op: str, x, index, name: str = "input") -> None:
    if index.ndim != x.ndim:
        raise ShapeError(f"{op}: index has {index.ndim} dims but {name} has {x.ndim} "
                         f"(shapes {tuple(index.shape)} and {tuple(x.shape)}); they must match")


def _not_larger(op: str, index, x, ax, name: str = "input", skip_dim: bool = True) -> None:
    for d in range(x.ndim):
        if (d != ax or not skip_dim) and index.shape[d] > x.shape[d]:
            raise ShapeError(f"{op}: index shape {tuple(index.shape)} exceeds {name} shape "
                             f"{tuple(x.shape)} in dimension {d}; expected index.size({d}) <= "
                             f"{name}.size({d})")


def _same_dtype(op: str, input, src, name: str = "src") -> None:
    """A DTypeError unless tensor ``src`` has ``input``'s dtype: PyTorch's scatters, index_add,
    index_copy, masked_scatter and put neither promote nor cast the values they write."""
    if src.dtype != input.dtype:
        raise DTypeError(f"{op}: {name} has dtype {src.dtype} but input has {input.dtype}; "
                         "they must match (convert one explicitly)")


def _scalar_to_0d(x):
    return x.reshape((1,)) if x.ndim == 0 else x


# --- gather and scatters ---------------------------------------------------------------------
def gather(input, dim: int, index, *, sparse_grad: bool = False):
    """PyTorch's gather: ``out[i][j] = input[index[i][j]][j]`` for dim 0; the index may be
    smaller than the input in the other dims (NumPy's broadcasting rule: take_along_axis)."""
    index = _as_index("gather", index, input)
    ax = _dim("gather", dim, input.ndim)
    if index.numel() == 0 and (index.ndim != input.ndim or any(
            index.shape[d] > input.shape[d] for d in range(input.ndim) if d != ax)):
        # PyTorch: an empty index of any shape gives an empty result
        return _getitem(input.reshape((-1,)), index=(slice(0, 0),)).reshape(tuple(index.shape))
    if input.ndim == 0 or index.ndim == 0:  # a 0-d input or index counts as 1-d (PyTorch)
        if max(input.ndim, index.ndim) > 1:
            _same_rank("gather", input, index)
        return gather(input.reshape((-1,)), ax, index.reshape((-1,))).reshape(index.shape)
    _same_rank("gather", input, index)
    _not_larger("gather", index, input, ax)
    _check_range("gather", index, input.shape[ax], ax)
    return _gather_fit(input, index, ax)


def _src_arg(op, input, index, src, value):
    """``src`` cut to the index's shape, or ``value`` (a number or 0-d tensor) spread over it."""
    if src is None and value is None:
        raise TypeError(f"{op}: expected src (a tensor) or value (a number)")
    if src is None or not isinstance(src, Tensor):
        v = value if src is None else src
        if isinstance(v, Tensor):
            return v.broadcast_to(tuple(index.shape))
        return Tensor._of(input.backend.xp.full(index.shape, v, dtype=input.dtype))
    _same_dtype(op, input, src)
    _same_rank(op, src, index, "src")
    _not_larger(op, index, src, None, "src", skip_dim=False)
    return _fit(src, index.shape, None)


def _scatter_args(op, input, dim, index):
    index = _as_index(op, index, input)
    _same_rank(op, input, index)
    ax = _dim(op, dim, input.ndim)
    _not_larger(op, index, input, ax)
    _check_range(op, index, input.shape[ax] if input.ndim else 1, ax)
    return index, ax


def scatter(input, dim: int, index, src=None, *, value=None, reduce: str | None = None):
    """PyTorch's scatter: a copy of ``input`` with ``out[index[i][j]][j] = src[i][j]`` (dim 0);
    ``src`` may be a number. Repeated indices write one of their values (as PyTorch: unspecified
    which); ``reduce="add"|"multiply"`` combines instead."""
    if input.ndim == 0:
        return scatter(input.reshape((1,)), dim, _as_index("scatter", index, input).reshape(
            (1,)), src if not isinstance(src, Tensor) else src.reshape((1,)), value=value,
            reduce=reduce).reshape(())
    index, ax = _scatter_args("scatter", input, dim, index)
    s = _src_arg("scatter", input, index, src, value)
    if reduce is None:
        return _scatter_set(input, s, index, axis=ax)
    if reduce == "add":
        return input + _scatter_along(s, index, axis=ax, shape=tuple(input.shape))
    if reduce == "multiply":
        return _scatter_reduce(input, s, index, axis=ax, reduce="prod", include_self=True)
    raise ValueError(f"scatter: reduce must be None, 'add' or 'multiply', got {reduce!r}")


def scatter_add(input, dim: int, index, src):
    """PyTorch's scatter_add: ``out[index[i][j]][j] += src[i][j]`` (dim 0); repeats add up."""
    if input.ndim == 0:
        return scatter_add(input.reshape((1,)), 0, _as_index("scatter_add", index, input
                           ).reshape((1,)), src.reshape((1,))).reshape(())
    index, ax = _scatter_args("scatter_add", input, dim, index)
    s = _src_arg("scatter_add", input, index, src, None)
    return input + _scatter_along(s, index, axis=ax, shape=tuple(input.shape))


_REDUCES = ("sum", "prod", "mean", "amax", "amin")


def scatter_reduce(input, dim: int, index, src, reduce: str, *, include_self: bool = True):
    """PyTorch's scatter_reduce: combine ``src`` into ``input`` at ``index`` along ``dim`` by
    "sum", "prod", "mean", "amax" or "amin"; ``include_self=False`` leaves the old values of
    the addressed positions out. Gradients follow PyTorch (ties share, zeros handled)."""
    if reduce not in _REDUCES:
        raise ValueError(f"scatter_reduce: reduce must be one of {_REDUCES}, got {reduce!r}")
    if input.ndim == 0:
        return scatter_reduce(input.reshape((1,)), 0, _as_index("scatter_reduce", index, input
                              ).reshape((1,)), src.reshape((1,)), reduce,
                              include_self=include_self).reshape(())
    index, ax = _scatter_args("scatter_reduce", input, dim, index)
    s = _src_arg("scatter_reduce", input, index, src, None)
    if reduce in _REDUCE_UFUNC:
        return _scatter_reduce(input, s, index, axis=ax, reduce=reduce,
                               include_self=include_self)
    base = input if include_self else _zeros_at(input, index, ax)
    shape = tuple(input.shape)
    total = base + _scatter_along(s, index, axis=ax, shape=shape)
    if reduce == "sum":
        return total
    xp = input.backend.xp
    ft = input.dtype if B.is_float(input.dtype) else B.DEFAULT_FLOAT
    count = _scatter_along(Tensor._of(xp.ones(index.shape, ft)), index, axis=ax, shape=shape)
    if include_self:
        count = count + 1
    hit = count > 0
    if not B.is_float(input.dtype):
        return _where(hit, total // _where(hit, count, 1).astype(input.dtype), input)
    return _where(hit, total / _where(hit, count, 1.0), input)


# --- along one dim with a 1-d index ----------------------------------------------------------
def _index_1d(op, input, dim, index, negative=False):
    index = _as_index(op, index, input)
    if index.ndim > 1:
        raise ShapeError(f"{op}: index must be 0-d or 1-d, got shape {tuple(index.shape)}")
    ax = _dim(op, dim, input.ndim)
    _check_range(op, index, input.shape[ax] if input.ndim else 1, ax, negative)
    return index.reshape((-1,)), ax


def _spread_index(index, ax, shape):
    """A 1-d index laid along ``ax`` and broadcast to ``shape``."""
    lay = [1] * len(shape)
    lay[ax] = index.shape[0]
    return index.reshape(tuple(lay)).broadcast_to(tuple(shape))


def index_select(input, dim: int, index):
    """PyTorch's index_select: the slices ``index`` names along ``dim`` (repeats allowed)."""
    x = _scalar_to_0d(input)
    index, ax = _index_1d("index_select", x, dim, index)
    if input.ndim == 0:  # PyTorch: the one value of a 0-d input, 0-d
        if index.shape[0] != 1:
            raise ShapeError(f"index_select: the index of a 0-d input must have 1 value, got "
                             f"{index.shape[0]}")
        return _take_along(x, index, axis=0).reshape(())
    shape = x.shape[:ax] + (index.shape[0],) + x.shape[ax + 1:]
    return _take_along(x, _spread_index(index, ax, shape), axis=ax)


def _source_like(op, input, ax, index, source):
    want = input.shape[:ax] + (index.shape[0],) + input.shape[ax + 1:]
    if tuple(source.shape) != want:
        raise ShapeError(f"{op}: source has shape {tuple(source.shape)}, expected {want} "
                         f"(input {tuple(input.shape)} with len(index)={index.shape[0]} "
                         f"along dim {ax})")
    return _spread_index(index, ax, want)


def index_add(input, dim: int, index, source, *, alpha=1):
    """PyTorch's index_add: ``input`` plus ``alpha * source`` added at the slices ``index``
    names along ``dim`` (repeats add up)."""
    x, src = _scalar_to_0d(input), _scalar_to_0d(source)
    _same_dtype("index_add", x, src, "source")
    if x.dtype.kind in "iub":  # PyTorch takes alpha in the input's dtype (2.5 adds twice)
        alpha = bool(alpha) if x.dtype.kind == "b" else int(alpha)
    index, ax = _index_1d("index_add", x, dim, index)
    idx = _source_like("index_add", x, ax, index, src)
    if alpha != 1:
        src = src * alpha
    return (x + _scatter_along(src, idx, axis=ax, shape=tuple(x.shape))).reshape(input.shape)


def index_copy(input, dim: int, index, source):
    """PyTorch's index_copy: ``input`` with the slices ``index`` names along ``dim`` replaced
    by those of ``source``; under CPU autocast a lower-precision float with a float32 one
    runs in float32 (PyTorch's promote list)."""
    x, src = promote_in_region(_scalar_to_0d(input), _scalar_to_0d(source))
    _same_dtype("index_copy", x, src, "source")
    index, ax = _index_1d("index_copy", x, dim, index)
    idx = _source_like("index_copy", x, ax, index, src)
    return _scatter_set(x, src, idx, axis=ax).reshape(input.shape)


def index_fill(input, dim: int, index, value):
    """PyTorch's index_fill: the slices ``index`` names along ``dim`` set to ``value`` (a
    number or a 0-d tensor, which then gets the gradient); negative indices count back."""
    x = _scalar_to_0d(input)
    index, ax = _index_1d("index_fill", x, dim, index, negative=True)
    shape = x.shape[:ax] + (index.shape[0],) + x.shape[ax + 1:]
    if isinstance(value, Tensor) and value.ndim:
        raise ShapeError(f"index_fill: value must be a number or a 0-d tensor, got shape "
                         f"{tuple(value.shape)}")
    value = _fill_as("index_fill", value, x)
    ones = Tensor._of(x.backend.xp.ones(shape, B.DEFAULT_FLOAT))
    hit = _scatter_along(ones, _spread_index(index, ax, shape), axis=ax, shape=tuple(x.shape))
    return _where(hit > 0, value, x).reshape(input.shape)  # each position once, repeats or not


def _fill_as(op: str, value, x):
    """A fill value in ``x``'s dtype, as PyTorch's masked_fill and index_fill take it (the
    result keeps the input's dtype: a float into an integer tensor truncates, a 0-d tensor is
    cast); a number the dtype cannot hold raises, as PyTorch's checked conversion."""
    dt = x.dtype
    if isinstance(value, Tensor):
        return value if value.dtype == dt else _astype(value, dt)
    if isinstance(value, B.generic):
        value = value.item()
    value = check_fill_fits(op, value, dt)
    if dt.kind in "iu" and isinstance(value, int | float) and not isinstance(value, bool):
        value = int(value)
        info = B.np.iinfo(dt)
        if not info.min <= value <= info.max:
            raise OverflowError(f"{op}: value {value} cannot be converted to {dt} without "
                                "overflow")
    elif dt.kind == "b" and isinstance(value, int | float | complex):
        value = bool(value)
    return value


# --- masks -----------------------------------------------------------------------------------
def _mask(op, mask, like):
    if not isinstance(mask, Tensor):
        mask = Tensor._of(like.backend.asarray(mask))
    if mask.dtype.kind != "b":
        raise DTypeError(f"{op}: mask must be a bool tensor, got dtype {mask.dtype}")
    return mask


def _mask_shape(op, input, mask) -> tuple:
    """The shape ``input`` and ``mask`` broadcast to (PyTorch's out-of-place masked ops)."""
    try:
        return tuple(B.np.broadcast_shapes(tuple(input.shape), tuple(mask.shape)))
    except ValueError:
        raise ShapeError(f"{op}: input of shape {tuple(input.shape)} and mask of shape "
                         f"{tuple(mask.shape)} do not broadcast together") from None


def masked_fill(input, mask, value):
    """PyTorch's masked_fill: ``value`` where ``mask`` is True (input and mask broadcast
    together)."""
    mask = _mask("masked_fill", mask, input)
    _mask_shape("masked_fill", input, mask)
    if isinstance(value, Tensor) and value.ndim:
        raise ShapeError(f"masked_fill: value must be a number or a 0-d tensor, got shape "
                         f"{tuple(value.shape)}")
    if isinstance(input, Tensor):
        value = _fill_as("masked_fill", value, input)
    return _where(mask, value, input)


def _concrete_mask(op, mask, shape):
    if isinstance(mask, BatchTracer):
        raise TypeError(f"{op}: a batched mask inside vmap is not supported (the positions "
                        "depend on its values); use where()")
    mask._concrete(f"{op} (the positions depend on the mask's values; use where())")
    try:
        return mask.backend.xp.broadcast_to(mask._data, shape)
    except ValueError:
        raise ShapeError(f"{op}: mask of shape {tuple(mask.shape)} does not broadcast to "
                         f"shape {shape}") from None


def masked_scatter(input, mask, source):
    """PyTorch's masked_scatter: the positions where ``mask`` is True, in row-major order,
    take ``source``'s leading elements (row-major); input and mask broadcast together."""
    mask = _mask("masked_scatter", mask, input)
    _same_dtype("masked_scatter", input, source, "source")
    shape = _mask_shape("masked_scatter", input, mask)
    if shape != tuple(input.shape):
        input = input.broadcast_to(shape)
    m = _concrete_mask("masked_scatter", mask, shape)
    k = int(m.sum())
    if k > source.numel():
        raise ShapeError(f"masked_scatter: the mask selects {k} positions but source has only "
                         f"{source.numel()} elements (shape {tuple(source.shape)})")
    flat = source.reshape((-1,))
    if k < flat.shape[0]:
        flat = flat[:k]
    return _setitem(input, flat, index=(m,))


def masked_select(input, mask):
    """PyTorch's masked_select: a 1-d tensor of the elements where ``mask`` is True (input and
    mask broadcast together)."""
    mask = _mask("masked_select", mask, input)
    shape = _mask_shape("masked_select", input, mask)
    m = _concrete_mask("masked_select", mask, shape)
    x = input if tuple(input.shape) == shape else input.broadcast_to(shape)
    return _getitem(x, index=(m,))


# --- flat positions --------------------------------------------------------------------------
def take(input, index, axis: int | None = None):
    """PyTorch's take: elements of the flattened input at ``index`` (negative counts back);
    the result has the index's shape. NumPy's ``axis=`` takes along that axis instead: the
    index's shape replaces the axis."""
    index = _as_index("take", index, input)
    if axis is not None:
        ax = norm_axis(axis, input.ndim, "take")
        _check_range("take", index, input.shape[ax], ax, negative=True)
        return getitem(input, (slice(None),) * ax + (index,))
    _check_range("take", index, input.numel(), 0, negative=True)
    flat = _take_along(input.reshape((-1,)), index.reshape((-1,)), axis=0)
    return flat.reshape(tuple(index.shape))


def put(input, index, source, accumulate: bool = False):
    """PyTorch's put: a copy of ``input`` whose flattened positions ``index`` get ``source``
    (its elements in order); ``accumulate=True`` adds instead (repeats add up)."""
    index = _as_index("put", index, input)
    _same_dtype("put", input, source, "source")
    if index.numel() != source.numel():
        raise ShapeError(f"put: index has {index.numel()} elements but source has {source.numel()} "
                         f"(shapes {tuple(index.shape)} and {tuple(source.shape)})")
    _check_range("put", index, input.numel(), 0, negative=True)
    x, i, s = input.reshape((-1,)), index.reshape((-1,)), source.reshape((-1,))
    if accumulate:
        out = x + _scatter_along(s, i, axis=0, shape=(input.numel(),))
    else:
        out = _scatter_set(x, s, i, axis=0)
    return out.reshape(tuple(input.shape))


# --- positions of nonzero elements (no gradient; the shape depends on the values) ------------
def nonzero(input, *, as_tuple: bool = False):
    """PyTorch's nonzero: the (n, ndim) int64 indices of the nonzero elements in row-major
    order, or with ``as_tuple=True`` one 1-d tensor per dim."""
    if isinstance(input, BatchTracer):
        raise TypeError("nonzero: the output's shape depends on the values, so it cannot run "
                        "inside vmap; use where() or a mask")
    input._concrete("nonzero (the output's size depends on the values)")
    xp = input.backend.xp
    d = input._data if input.ndim else input._data.reshape((1,))
    idx = xp.argwhere(d).astype(B.int64)
    if input.ndim == 0 and not as_tuple:
        idx = idx[:, :0]
    if as_tuple:
        return tuple(Tensor._of(xp.ascontiguousarray(idx[:, k])) for k in range(idx.shape[1]))
    return Tensor._of(idx)


def argwhere(input):
    """PyTorch's argwhere (NumPy's too): nonzero as an (n, ndim) tensor."""
    return nonzero(input)


def where(condition, input=None, other=None):
    """``where(c, x, y)`` picks elementwise; one argument ``where(c)`` is
    ``nonzero(c, as_tuple=True)`` (PyTorch and NumPy)."""
    if input is None and other is None:
        return nonzero(condition, as_tuple=True)
    if input is None or other is None:
        raise TypeError("where: expected one argument (condition) or three")
    if isinstance(condition, list | tuple):  # NumPy's: a nested sequence of bools
        like = next((t for t in (input, other) if isinstance(t, Tensor)), None)
        condition = Tensor._of((like.backend.xp if like is not None else B.np).asarray(condition))
    return _where(condition, input, other)
