"""Batching for ``vmap``: the batch tracer, the stack of active vmap levels, category rules.

While a ``vmap`` runs, each batched value is a :class:`BatchTracer`: it looks like one example
(its ``shape`` has no batch axis) and carries the whole batch in ``val`` with the batch axis at
``bdim``. ``bind`` checks the calling thread's active levels (``modes().traces``, per thread
like every mode, see ``autodiff``) and, when there are any, hands the call to
:func:`batch_bind`, which calls the primitive's batching rule
``batch(vals, bdims, **params) -> (out, out_bdim)`` on the unwrapped values with the level
removed, so nested vmaps peel one level per bind and the values underneath record the graph for
``grad`` as usual. Elementwise and reduction primitives get their rule from their ``kind``
(below); shape, index, window and linear-algebra primitives declare theirs.

This module sits below ``primitive`` and the ops and imports neither: the helpers move and
reshape batch axes with Tensor's methods, and the category rules call the primitive they were
made for, both of which exist by the time any vmap runs (no import circle).
"""

from __future__ import annotations

from . import _backend as B
from .autodiff import modes
from .errors import ShapeError
from .tensor import Tensor


class Level:
    """One active vmap: its batch size, and what a random draw inside it does (``randomness``:
    'error', 'different' or 'same', see ``nodegrad.random``)."""

    __slots__ = ("size", "randomness")

    def __init__(self, size: int, randomness: str = "error"):
        self.size = size
        self.randomness = randomness


_POISON = {"f": float("nan"), "c": float("nan"), "u": 0, "b": False}
_POISONED: dict = {}  # (shape, dtype, xp, device) -> the shared read-only poison array


def levels() -> tuple:
    """The calling thread's active vmap levels (and export recorders), innermost last (each
    thread has its own)."""
    return modes().traces


class pushed:
    """Run with ``level`` as the innermost active vmap level of this thread."""

    def __init__(self, level: Level):
        self.level = level

    def __enter__(self):
        m = self.m = modes()
        self.saved = m.traces
        m.traces = self.saved + (self.level,)

    def __exit__(self, *exc):
        self.m.traces = self.saved


class BatchTracer(Tensor):
    """A batched value seen as one example: ``val`` holds the batch along axis ``bdim``."""

    __slots__ = ("val", "bdim", "level")

    def __init__(self, val: Tensor, bdim: int, level: Level):
        shape = val.shape[:bdim] + val.shape[bdim + 1:]
        dt = val.dtype
        xp = val.backend.xp
        key = (shape, dt, xp, val.backend.device_id)
        data = _POISONED.get(key)
        if data is None:
            # ``data`` has the example's shape and dtype but no memory, filled with poison (NaN,
            # the most negative integer) so code that reads values behind the ops' back shows
            # it; read-only, so one array per shape and dtype is shared by every tracer
            fill = _POISON.get(dt.kind, 0) if dt.kind != "i" else xp.iinfo(dt).min
            with val.backend.scope():
                data = xp.broadcast_to(xp.full((), fill, dtype=dt), shape)
            if len(_POISONED) >= 256:
                _POISONED.clear()
            _POISONED[key] = data
        super().__init__(data)
        self.val, self.bdim, self.level = val, bdim, level

    def _no_values(self, *a, **k):
        raise TypeError("inside vmap a batched tensor has no single value (data-dependent "
                        "Python control flow or conversion); use where/masks instead")

    numpy = item = tolist = __bool__ = __float__ = __int__ = __index__ = __array__ = _no_values

    @property
    def data(self):
        """Refused: a batched tensor's examples are not one array (``detach()`` cuts the graph
        and stays batched)."""
        raise TypeError("data: inside vmap a batched tensor has no single array; use detach() "
                        "to cut it from the graph (it stays batched)")

    @data.setter
    def data(self, value):
        self._assign("data", value)

    def _assign(self, what: str, value):
        raise TypeError(f"{what}: a batched tensor inside vmap cannot be changed in place; "
                        "build a new tensor (zeros_like, full_like, where) instead")

    def detach(self) -> BatchTracer:
        """The batch cut from the graph, still batched (the tracer's own array is poison)."""
        return BatchTracer(self.val.detach(), self.bdim, self.level)

    def lift_like(self, out: Tensor) -> BatchTracer:
        """``out`` (one example) batched at this tracer's levels, the same in every example:
        ``zeros_like(x)`` or ``x.new_zeros(n)`` of a batched ``x`` (torch.func's), so that
        ``zeros_like(h).index_add_(0, i, h)`` may take batched values in place."""
        out = batched(out, None, self.level.size)  # a broadcast view: in-place ops rebind
        if type(self.val) is BatchTracer:  # nested vmaps: batched at the outer levels too
            out = self.val.lift_like(out)
        return BatchTracer(out, 0, self.level)

    def __repr__(self) -> str:
        return f"BatchTracer(shape={tuple(self.shape)}, bdim={self.bdim}, val={self.val!r})"


def refuse_batched_into(what: str, *values) -> None:
    """An unbatched tensor changed in place cannot take a batched value (or index) inside vmap
    (it would store the tracer's poison): a TypeError naming the op and the fix."""
    for v in values:
        if type(v) is BatchTracer:
            raise TypeError(f"{what}: inside vmap an unbatched tensor cannot be changed in place "
                            "with a batched value or at batched indices; build the result out "
                            "of place (where, index_update, stack)")


def rebind_batched(what: str, target: BatchTracer, result) -> BatchTracer:
    """An in-place op on a batched tensor inside vmap: the tracer takes the batched result of
    the out-of-place op (each example changed, as ``torch.func.vmap`` allows)."""
    if type(result) is not BatchTracer or result.level is not target.level:
        raise TypeError(f"{what}: inside vmap a batched tensor can take only a result batched "
                        "at its own level; build the result out of place")
    if tuple(result.shape) != tuple(target.shape):
        raise ShapeError(f"{what}: the result has shape {tuple(result.shape)}, which does not "
                         f"fit in place into shape {tuple(target.shape)}")
    target.val, target.bdim = result.val, result.bdim
    return target


def values(t):
    """The array behind ``t`` for validation only: for a batched tensor inside vmap, the values
    of the whole batch (so range checks see every example), else ``t.data``."""
    while type(t) is BatchTracer:
        t = t.val
    return t._data


class lowered:
    """Run with only the ``n`` outermost vmap levels active."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        m = self.m = modes()
        self.saved = m.traces
        m.traces = self.saved[:self.n]

    def __exit__(self, *exc):
        self.m.traces = self.saved


def recording():
    """The recording trace on top of the trace stack (``nodegrad.onnx``'s export), or None: an
    in-place write tells it (``inplace(target, result)``), as it sees no primitive do it."""
    traces = modes().traces
    return traces[-1] if traces and type(traces[-1]) is not Level else None


def batch_bind(bind, prim, args: tuple, params: dict):
    """``bind`` for when a vmap is active: batch the call at the innermost level."""
    traces = modes().traces
    top = traces[-1]
    n = len(traces) - 1
    if type(top) is not Level:  # a recording trace (nodegrad.onnx's export) sees the call
        with lowered(n):
            return top.record(prim, args, params, bind(prim, args, params))
    if not any(type(a) is BatchTracer and a.level is top for a in args):
        with lowered(n):
            return bind(prim, args, params)
    vals, bdims = [], []
    for a in args:
        if type(a) is BatchTracer and a.level is top:
            vals.append(a.val)
            bdims.append(a.bdim)
        else:
            vals.append(a)
            bdims.append(None)
    if prim.batch is None:
        raise NotImplementedError(f"vmap: primitive '{prim.name}' has no batching rule")
    with lowered(n):
        out, bd = prim.batch(vals, bdims, **params)
    return out if bd is None else BatchTracer(out, bd, top)


# --- helpers for batching rules (vals: the unwrapped inputs, bdims: their batch axes) -----------
def size_of(vals, bdims) -> int:
    for v, b in zip(vals, bdims):
        if b is not None:
            return v.shape[b]
    raise ValueError("no batched input")


def front(v, bd):
    """``v`` with its batch axis first (unchanged when unbatched)."""
    if bd is None or bd == 0:
        return v
    return v.moveaxis(bd, 0)


def batched(v, bd, size: int):
    """``v`` with a batch axis first, broadcast (a view) when it had none."""
    if bd is not None:
        return front(v, bd)
    if not isinstance(v, Tensor):  # a number: a CPU array (callers that know a device pass one)
        v = Tensor._of(B.get_backend("cpu").asarray(v))
    return v.reshape((1,) + tuple(v.shape)).broadcast_to((size,) + tuple(v.shape))


def rank_up(v, bd, rank: int):
    """Batch axis first and length-1 axes after it, so the example part has ``rank`` dims."""
    v = front(v, bd)
    ex = tuple(v.shape[1:])
    if len(ex) == rank:
        return v
    return v.reshape((v.shape[0],) + (1,) * (rank - len(ex)) + ex)


def _ex_ndim(v, bd) -> int:
    nd = len(getattr(v, "shape", ()))
    return nd - (bd is not None)


def trailing_axes_rule(prim):
    """The vmap rule of a one-input primitive that works on its last (negative) axes: the
    batch axis moved to the front, where the primitive leaves it alone."""
    def rule(vals, bdims, **params):
        (x,), (b,) = vals, bdims
        return prim(front(x, b), **params), (None if b is None else 0)
    return rule


def elementwise_rule(prim):
    """Elementwise ops: batch axes first, example parts aligned on the right as they broadcast."""

    def rule(vals, bdims, **params):
        rank = max(_ex_ndim(v, b) for v, b in zip(vals, bdims))
        args = tuple(v if b is None else rank_up(v, b, rank) for v, b in zip(vals, bdims))
        return prim(*args, **params), 0

    return rule


def reduce_rule(prim):
    """Reductions (``axis`` an int, a tuple or None for all): shift the axes past the batch."""

    def rule(vals, bdims, **params):
        x = front(vals[0], bdims[0])
        nd = x.ndim - 1
        axis = params.get("axis")
        p = dict(params)
        if isinstance(axis, int):
            p["axis"] = axis + 1
        elif axis is not None:
            p["axis"] = tuple(a + 1 for a in axis)
        elif prim.name in ("argmax", "argmin"):  # over the flattened example
            out = prim(x.reshape((x.shape[0], -1)), **dict(p, axis=1))
            if params.get("keepdims"):
                out = out.reshape((x.shape[0],) + (1,) * nd)
            return out, 0
        else:
            p["axis"] = tuple(range(1, nd + 1))
        return prim(x, *vals[1:], **p), 0

    return rule


def check_sizes(sizes) -> int:
    sizes = set(sizes)
    if len(sizes) != 1:
        raise ShapeError(f"vmap: batched inputs have different sizes along their batch axes: "
                         f"{sorted(sizes)}")
    return sizes.pop()
