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

from .. import batching as bt
from ..autodiff import modes
from ..batching import BatchTracer, Level, lowered, pushed
from ..errors import ShapeError
from ..ops.shape import broadcast_to, concatenate, expand_dims, moveaxis, norm_axis
from ..random import RANDOMNESS
from ..tensor import Tensor, tensor
from .tree import tree_flatten, tree_unflatten


def _per_leaf(spec, tree, n_args: int | None, what: str) -> list:
    """One axis (int or None) per leaf of ``tree`` from an int/None or a tuple per argument."""
    leaves, td = tree_flatten(tree)
    if spec is None or isinstance(spec, int):
        return [spec] * len(leaves)
    spec = tuple(spec)
    if n_args is not None and len(spec) != n_args:
        raise ValueError(f"vmap: {what} has {len(spec)} entries for {n_args} arguments")
    out = []
    for s, sub in zip(spec, tree):
        out.extend(_per_leaf(s, sub, None, what))
    return out


def vmap(f: Callable, in_axes=0, out_axes=0, randomness: str = "error", *, in_dims=None,
         out_dims=None, chunk_size: int | None = None) -> Callable:
    """Vectorise ``f`` over axis ``in_axes`` of its inputs, stacking results on ``out_axes``.

    ``in_axes`` is an int (every input), None (not batched) or a tuple with one entry per
    positional argument (an int or None applying to that argument's whole tree); ``out_axes``
    likewise per output. Unbatched outputs are broadcast along the batch axis. ``in_dims`` and
    ``out_dims`` are ``torch.func.vmap``'s names for the two.

    ``randomness`` (``torch.func``'s) says what a random draw inside ``f`` (``randn``, dropout,
    ``bernoulli``, ``normal_``, ...) does: ``'error'`` refuses it, ``'different'`` gives each
    example its own numbers, ``'same'`` draws one example's and shares them. ``chunk_size``
    runs the batch that many examples at a time (less memory, the same results; each chunk
    draws afresh).
    """
    if randomness not in RANDOMNESS:
        raise ValueError(f"vmap: randomness must be one of {RANDOMNESS}, got {randomness!r}")
    if in_dims is not None:
        if in_axes != 0:
            raise TypeError("vmap: pass in_axes or in_dims (its torch.func name), not both")
        in_axes = in_dims
    if out_dims is not None:
        if out_axes != 0:
            raise TypeError("vmap: pass out_axes or out_dims (its torch.func name), not both")
        out_axes = out_dims
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(
            chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"vmap: chunk_size must be a positive int or None, got {chunk_size!r}")

    def run(args, axes, td, prepared, size):
        level = Level(size, randomness)
        ins = [x if ax is None else BatchTracer(x, ax, level) for x, ax in prepared]
        with pushed(level):  # this thread's vmap levels only
            out = f(*tree_unflatten(td, ins))
        outs, out_def = tree_flatten(out)
        oaxes = _per_leaf(out_axes, out if isinstance(out_axes, tuple) else outs,
                          None, "out_axes")
        return [_unbatch(o, level, ax) for o, ax in zip(outs, oaxes)], oaxes, out_def

    def wrapped(*args):
        axes = _per_leaf(in_axes, args, len(args), "in_axes")
        leaves, td = tree_flatten(args)
        sizes, prepared = [], []
        for x, ax in zip(leaves, axes):
            if ax is not None:
                if not isinstance(x, Tensor):
                    x = tensor(x)
                ax = norm_axis(ax, x.ndim, "vmap")
                sizes.append(x.shape[ax])
            prepared.append((x, ax))
        if not sizes:
            raise ValueError("vmap: no input is batched (all in_axes are None)")
        size = bt.check_sizes(sizes)
        if chunk_size is None or chunk_size >= size:
            res, _, out_def = run(args, axes, td, prepared, size)
            return tree_unflatten(out_def, res)
        parts = []
        for lo in range(0, size, chunk_size):
            hi = min(lo + chunk_size, size)
            part = [(x, ax) if ax is None else
                    (x[(slice(None),) * ax + (slice(lo, hi),)], ax) for x, ax in prepared]
            parts.append(run(args, axes, td, part, hi - lo))
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
