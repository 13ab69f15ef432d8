"""``vmap``: vectorise a function written for one example over a batch axis.

``vmap(f)(xs)`` wraps each batched input in a :class:`~nodegrad.batching.BatchTracer` and runs
``f`` once; every primitive it calls is rewritten by its batching rule into one call on the
whole batch (no Python loop over examples). vmaps nest (one level each) and compose with
``grad`` both ways: ``grad(vmap(f))`` differentiates the batched computation like any other,
and ``vmap(grad(f))`` gives per-example gradients — inside a vmap, ``grad`` differentiates the
underlying batched computation with respect to a batched copy of its inputs, which is exact
because batching rules never mix examples, and costs one backward pass for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..autodiff import modes
from ..batching import BatchTracer, Level, lowered, pushed
from ..errors import ShapeError
from ..ops.shape import broadcast_to, concatenate, expand_dims, moveaxis, norm_axis
from ..random import RANDOMNESS, default_generator
from ..tensor import Tensor, tensor
from .tree import broadcast_prefix, tree_flatten, tree_unflatten


_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<not given>"})()
"""Default of ``in_dims``/``out_dims``: not given (None is a value there, as in torch.func)."""


def _check_axis(a, what: str):
    if a is not None and (isinstance(a, bool) or not isinstance(a, int)):
        raise TypeError(f"vmap: {what} entries must be ints or None, got {a!r}")
    return a


def _per_leaf(spec, tree, what: str) -> list:
    """One axis (int or None) per leaf of ``tree`` from ``spec``: an int or None for the whole
    tree, or a tree prefix of ``tree`` (JAX's: tuples, lists, dicts of ints and Nones)."""
    if spec is None or isinstance(spec, int):
        return [_check_axis(spec, what)] * len(tree_flatten(tree)[0])
    return [_check_axis(a, what) for a in broadcast_prefix(spec, tree, f"vmap: {what}")]


def _in_axes(in_axes, args: tuple, kwargs: dict) -> list:
    """The axis of every leaf of ``(args, kwargs)``: ``in_axes`` for the positional arguments
    (an int, None, or one entry per argument), 0 for the keyword arguments (as in JAX)."""
    if isinstance(in_axes, list):  # JAX takes a list of per-argument entries as a tuple
        in_axes = tuple(in_axes)
    if isinstance(in_axes, tuple) and len(in_axes) != len(args):
        raise ValueError(f"vmap: in_axes has {len(in_axes)} entries for {len(args)} positional "
                         "arguments; it must be an int, None, or one entry per positional "
                         "argument")
    if not (in_axes is None or isinstance(in_axes, int | tuple)):
        raise TypeError(f"vmap: in_axes must be an int, None or a tuple, got "
                        f"{type(in_axes).__name__}")
    return _per_leaf(in_axes, args, "in_axes") + _per_leaf(0, kwargs, "in_axes")


def _leaf_names(args: tuple, kwargs: dict) -> list:
    """Which argument each leaf of ``(args, kwargs)`` belongs to, for error messages."""
    names = []
    for i, a in enumerate(args):
        names += [f"argument {i}"] * len(tree_flatten(a)[0])
    for k in sorted(kwargs):
        names += [f"keyword argument {k!r}"] * len(tree_flatten(kwargs[k])[0])
    return names


def _size_error(found: list, names: list) -> ShapeError:
    parts = "; ".join(f"axis {ax} of {names[k]} (shape {shape}) has size {n}"
                      for k, ax, shape, n in found)
    return ShapeError(f"vmap: the mapped axes have different sizes (they must agree): "
                      f"{parts}")


def vmap(f: Callable, in_axes: Any = 0, out_axes: Any = 0, randomness: str = "error", *,
         in_dims: Any = _UNSET, out_dims: Any = _UNSET, chunk_size: int | None = None,
         axis_size: int | None = None,
         axis_name: Any = None, spmd_axis_name: Any = None) -> Callable:
    """Vectorise ``f`` over axis ``in_axes`` of its inputs, stacking results on ``out_axes``.

    ``in_axes`` is an int (every input), None (not batched) or a tuple with one entry per
    positional argument, each an int, None or a tree prefix of that argument (a dict of axes
    for a dict of tensors, as in JAX); keyword arguments are mapped over their axis 0 (JAX's).
    ``out_axes`` likewise, a prefix of the output's tree (None: an output that does not depend
    on the batch, returned once). Unbatched outputs are broadcast along the batch axis.
    ``axis_size`` gives the batch size where no input is mapped (and is checked otherwise);
    ``axis_name`` and ``spmd_axis_name`` are accepted for JAX's signature and unused (nodegrad
    has no collectives over a named axis). ``in_dims`` and ``out_dims`` are
    ``torch.func.vmap``'s names for ``in_axes`` and ``out_axes`` (None included: an unbatched
    output returned once; a one-entry tuple ``out_dims`` applies to every output, as there).

    ``randomness`` (``torch.func``'s) says what a random draw inside ``f`` (``randn``, dropout,
    ``bernoulli``, ``normal_``, ...) does: ``'error'`` refuses it, ``'different'`` gives each
    example its own numbers, ``'same'`` draws one example's and shares them. ``chunk_size``
    runs the batch that many examples at a time (less memory, the same results; with
    ``'same'`` every chunk starts from the CPU default generator's state of the first, as
    ``torch.func`` does, so the batch shares one draw; with ``'different'`` each chunk draws
    afresh).
    """
    del axis_name, spmd_axis_name  # names for collectives, which nodegrad does not have
    if randomness not in RANDOMNESS:
        raise ValueError(f"vmap: randomness must be one of {RANDOMNESS}, got {randomness!r}")
    if in_dims is not _UNSET:
        if in_axes != 0:
            raise TypeError("vmap: pass in_axes or in_dims (its torch.func name), not both")
        in_axes = in_dims
    if out_dims is not _UNSET:
        if out_axes != 0:
            raise TypeError("vmap: pass out_axes or out_dims (its torch.func name), not both")
        # torch.func's rule: a one-entry tuple gives its axis to every output
        out_axes = out_dims[0] if (isinstance(out_dims, tuple) and len(out_dims) == 1 and (
            out_dims[0] is None or isinstance(out_dims[0], int))) else out_dims
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(
            chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"vmap: chunk_size must be a positive int or None, got {chunk_size!r}")
    if axis_size is not None and (not isinstance(axis_size, int) or isinstance(
            axis_size, bool) or axis_size < 0):
        raise ValueError(f"vmap: axis_size must be a non-negative int or None, got "
                         f"{axis_size!r}")

    def run(td, prepared, size):
        level = Level(size, randomness)
        ins = [x if ax is None else BatchTracer(x, ax, level) for x, ax in prepared]
        with pushed(level):  # this thread's vmap levels only
            a, kw = tree_unflatten(td, ins)
            out = f(*a, **kw)
        outs, out_def = tree_flatten(out)
        oaxes = _per_leaf(out_axes, out, "out_axes")
        return [_unbatch(o, level, ax) for o, ax in zip(outs, oaxes)], oaxes, out_def

    def wrapped(*args, **kwargs):
        axes = _in_axes(in_axes, args, kwargs)
        leaves, td = tree_flatten((args, kwargs))
        found, prepared = [], []
        for k, (x, ax) in enumerate(zip(leaves, axes)):
            if ax is not None:
                if not isinstance(x, Tensor):
                    x = tensor(x)
                if x.ndim == 0:
                    raise ShapeError(f"vmap: in_axes maps {_leaf_names(args, kwargs)[k]} along "
                                     f"axis {ax}, but it is 0-d (a scalar); map it with None "
                                     "or give it an axis")
                ax = norm_axis(ax, x.ndim, "vmap")
                found.append((k, ax, tuple(x.shape), x.shape[ax]))
            prepared.append((x, ax))
        if not found and axis_size is None:
            raise ValueError("vmap: no input is batched (all in_axes are None); pass axis_size "
                             "to give the batch size")
        sizes = {n for *_, n in found} | ({axis_size} if axis_size is not None else set())
        if len(sizes) != 1:
            if axis_size is not None and found:
                raise ShapeError(f"vmap: axis_size is {axis_size}, but the mapped axes have "
                                 f"sizes {sorted({n for *_, n in found})}")
            raise _size_error(found, _leaf_names(args, kwargs))
        size = sizes.pop()
        if chunk_size is None or chunk_size >= size:
            res, _, out_def = run(td, prepared, size)
            return tree_unflatten(out_def, res)
        parts = []
        gen = default_generator("cpu") if randomness == "same" else None
        state = None if gen is None else gen.get_state()
        for lo in range(0, size, chunk_size):
            if lo and gen is not None:  # one draw for the whole batch (torch.func's rule)
                gen.set_state(state)
            hi = min(lo + chunk_size, size)
            part = [(x, ax) if ax is None else
                    (x[(slice(None),) * ax + (slice(lo, hi),)], ax) for x, ax in prepared]
            parts.append(run(td, part, hi - lo))
        _, oaxes, out_def = parts[0]
        res = [p0 if ax is None else concatenate([p[0][i] for p in parts],
                                                   norm_axis(ax, p0.ndim, "vmap"))
               for i, (p0, ax) in enumerate(zip(parts[0][0], oaxes))]
        return tree_unflatten(out_def, res)

    wrapped.__name__ = f"vmap({getattr(f, '__name__', 'f')})"
    return wrapped


def _unbatch(o, level: Level, ax):
    if type(o) is BatchTracer and o.level is level:
        if ax is None:
            raise ShapeError("vmap: out_axes is None for an output that depends on the batch")
        return moveaxis(o.val, o.bdim, norm_axis(ax, o.val.ndim, "vmap"))
    if ax is None:
        return o
    if not isinstance(o, Tensor):
        o = tensor(o)
    ax = norm_axis(ax, o.ndim + 1, "vmap")
    e = expand_dims(o, ax)
    return broadcast_to(e, e.shape[:ax] + (level.size,) + e.shape[ax + 1:])


# --- transforms inside vmap: work on the batched values underneath --------------------------
def full_batch(x):
    """``x`` batched at every active level with batch axis 0 at each, and the plain tensor
    underneath (shape: the batch sizes, outermost first, then the example shape)."""
    traces = modes().traces
    n = len(traces)
    if n == 0:
        return x, x
    top = traces[-1]
    with lowered(n - 1):
        if type(x) is BatchTracer and x.level is top:
            v = moveaxis(x.val, x.bdim, 0) if x.bdim else x.val
        else:
            v = x if isinstance(x, Tensor) else tensor(x)
            v = broadcast_to(expand_dims(v, 0), (top.size,) + tuple(v.shape))
        v, bottom = full_batch(v)
    return BatchTracer(v, 0, top), bottom


def rewrap(bottom, levels=None):
    """Inverse of :func:`full_batch`: a plain batched tensor seen at every active level."""
    levels = modes().traces if levels is None else levels
    x = bottom
    for lv in levels:
        x = BatchTracer(x, 0, lv)
    return x
