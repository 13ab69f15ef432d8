"""Activation checkpointing (rematerialisation): a segment keeps its inputs, not its
activations, and its backward runs the segment again.

``checkpoint(fn, *args)`` runs ``fn`` once, recording as usual, then keeps only the outputs,
hung on one node whose parents are the segment's differentiable inputs: the tensors among
``args`` and the leaves that require grad it reached (a module's parameters). The segment's
own graph, and every activation it saved, is dropped there. The node's VJP runs ``fn`` again
on the saved inputs, with the random generators put back where they were (so dropout draws the
same masks), and differentiates that fresh graph; with ``create_graph`` the result is
differentiable again. Peak memory then holds one segment's activations at a time, for about
one more forward pass of compute: PyTorch's ``torch.utils.checkpoint`` (the non-reentrant
kind) and JAX's ``jax.checkpoint`` (``remat``). As in PyTorch, saved_tensors_hooks active
around the segment do not see what its ops save (its graph is dropped, or rebuilt in backward):
they would pack activations the segment never keeps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from .. import _backend as B
from ..amp import current_regions, regions
from ..autodiff import effect, enable_grad, grad as _grad, modes
from ..errors import GradError
from ..random import _default as _generators
from ..tensor import Tensor
from .custom import _attach, _rule, _unpack
from .tree import tree_flatten, tree_unflatten

__all__ = ["checkpoint", "checkpoint_sequential", "remat"]

_RULE = None


def _rng_states() -> list:
    """Each default generator with a copy of its state (CPU: its bit generator's state; a
    device's: a copy of the generator object, where it can be copied)."""
    out = []
    for g in list(_generators.values()):
        try:
            state = g.get_state() if g.backend.device_id is None else copy.deepcopy(g.rng)
        except Exception:  # noqa: BLE001 - a generator that cannot be copied is left as it is
            continue
        out.append((g, state))
    return out


def _put_rng(states: list) -> list:
    """Put ``states`` back; returns the states they replaced (to restore afterwards)."""
    now = _rng_states()
    for g, state in states:
        if g.backend.device_id is None:
            g.set_state(state)
        else:
            g.rng = copy.deepcopy(state)
    return now


@effect  # under nodegrad.jit each replay notes the generators' states of that call
def _note_rng(box: list) -> None:
    """Fill ``box`` with :func:`_rng_states` (a list the segment keeps: a replay refills it)."""
    box[:] = _rng_states()


@effect  # and puts them back for the recomputation, which then draws the forward's masks
def _swap_rng(box: list, replaced: list) -> None:
    """Put ``box``'s states back, keeping the ones they replace in ``replaced``."""
    replaced[:] = _put_rng(box)


def _run_unhooked(fn: Callable, args: tuple, kwargs: dict):
    """``fn(*args, **kwargs)`` with the thread's saved_tensors_hooks set aside (see above)."""
    m = modes()
    hooks = m.saved_hooks
    if not hooks:
        return fn(*args, **kwargs)
    m.saved_hooks = ()
    try:
        return fn(*args, **kwargs)
    finally:
        m.saved_hooks = hooks


def _leaves(outs: list, inputs: set) -> list:
    """The leaf tensors that require grad under ``outs``' graph, other than ``inputs`` (by id),
    in the order first met."""
    seen, found, stack = set(), [], [o.node for o in outs if o.node is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for p in node.parents:
            if p is None:
                continue
            if isinstance(p, Tensor):
                if id(p) not in inputs and id(p) not in seen:
                    seen.add(id(p))
                    found.append(p)
            else:
                stack.append(p)
    return found


class _Segment:
    __slots__ = ("fn", "args_def", "arg_leaves", "kwargs", "tensor_pos", "versions", "params",
                 "rng", "out_def", "slots", "shapes", "nondiff", "outs", "autocast")


def _rebuilt(seg: _Segment, detached: list) -> tuple:
    leaves = list(seg.arg_leaves)
    for pos, t in zip(seg.tensor_pos, detached):
        leaves[pos] = t
    return tree_unflatten(seg.args_def, leaves)


def _detached(ts: list) -> list:
    out = []
    for t in ts:
        d = t.detach()
        if t.requires_grad and B.is_float(t.dtype):
            d.requires_grad_(True)
        out.append(d)
    return out


def _vjp(needs, g, ans, *specs, call):
    """Run the segment again from its saved inputs and differentiate it."""
    seg = call
    for t, v in zip((seg.arg_leaves[i] for i in seg.tensor_pos), seg.versions):
        if t._version[0] != v:
            raise GradError("checkpoint: an input of the checkpointed segment was changed in "
                            "place after the forward pass; its backward would recompute from "
                            "the new value (clone() the input, or change it out of place)")
    inputs = [seg.arg_leaves[i] for i in seg.tensor_pos]
    create = modes().grad_enabled  # a backward with create_graph: keep the result's graph
    # to be differentiated again, the recomputation must start from the inputs themselves
    # (their graph leads on to what the outer derivative wants); otherwise from copies
    detached = [t if t.requires_grad else t.detach() for t in inputs] if create else \
        _detached(inputs)
    saved: list = []
    if seg.rng is not None:
        _swap_rng(seg.rng, saved)
    try:
        with enable_grad(), regions(seg.autocast):
            out = _run_unhooked(seg.fn, _rebuilt(seg, detached), seg.kwargs)
    finally:
        if seg.rng is not None:
            _swap_rng(saved, [])
    outs = tree_flatten(out)[0]
    cts = _unpack(g, seg)
    roots, root_cts = [], []
    for i, ct in zip(seg.slots, cts):
        o = outs[i]
        if isinstance(o, Tensor) and o.requires_grad:
            roots.append(o)
            root_cts.append(ct)
    wrt = [d for d in detached if d.requires_grad] + seg.params
    if not roots or not wrt:
        return [None] * len(specs)
    grads = _grad(roots, wrt, root_cts, create_graph=create, allow_unused=True)
    it = iter(grads)
    result = []
    for d in detached:
        result.append(next(it) if d.requires_grad else None)
    result += [next(it) for _ in seg.params]
    return result


def _jvp(tangents, ans, *specs, call):
    """Forward mode through a segment (JAX differentiates ``checkpoint`` both ways): run it
    again from its saved inputs and push the tangents through that fresh graph."""
    from ..ops import concatenate, reshape
    from .jvp import _push

    seg = call
    inputs = [seg.arg_leaves[i] for i in seg.tensor_pos]
    record = modes().grad_enabled  # the tangents are differentiated again: keep the links
    fresh = [t if t.requires_grad else t.detach() for t in inputs] if record else \
        _detached(inputs)
    saved: list = []
    if seg.rng is not None:
        _swap_rng(seg.rng, saved)
    try:
        with enable_grad(), regions(seg.autocast):
            out = _run_unhooked(seg.fn, _rebuilt(seg, fresh), seg.kwargs)
    finally:
        if seg.rng is not None:
            _swap_rng(saved, [])
    outs = [tree_flatten(out)[0][i] for i in seg.slots]
    ins = fresh + list(seg.params)
    tans = list(tangents)
    keep = [k for k, t in enumerate(ins) if t.requires_grad and tans[k] is not None]
    touts = _push([ins[k] for k in keep], [tans[k] for k in keep], outs)
    parts = [reshape(o.zeros_like() if t is None else t, (o.numel(),))
             for t, o in zip(touts, outs)]
    return parts[0] if len(parts) == 1 else concatenate(parts)


def checkpoint(function: Callable, *args, use_reentrant: bool | None = None,
               context_fn: Callable | None = None, determinism_check: str = "default",
               debug: bool = False, preserve_rng_state: bool = True, **kwargs) -> Any:
    """``function(*args, **kwargs)`` with its activations recomputed in backward instead of
    kept (PyTorch's ``torch.utils.checkpoint.checkpoint``). Outputs are tensors or trees of
    them; gradients reach the tensors among ``args`` and every parameter ``function`` uses.
    ``preserve_rng_state`` replays the same random draws (dropout) in the recomputation.
    ``use_reentrant`` is accepted (both kinds compute the same gradients here);
    ``context_fn``, ``determinism_check`` and ``debug`` are PyTorch's debugging hooks and
    must keep their defaults."""
    if not callable(function):
        raise TypeError(f"checkpoint: expected a function, got {type(function).__name__}")
    if context_fn is not None or determinism_check != "default" or debug:
        raise ValueError("checkpoint: context_fn, determinism_check and debug are PyTorch's "
                         "debugging hooks, not supported here; leave them at their defaults")
    m = modes()
    if not m.grad_enabled or m.traces:  # nothing recorded (or under vmap): just run it
        return function(*args, **kwargs)
    arg_leaves, args_def = tree_flatten(args)
    tensor_pos = [i for i, a in enumerate(arg_leaves) if isinstance(a, Tensor)]
    inputs = [arg_leaves[i] for i in tensor_pos]
    detached = _detached(inputs)
    rng = None
    if preserve_rng_state:
        rng = []
        _note_rng(rng)
    seg = _Segment()
    seg.fn, seg.args_def, seg.kwargs, seg.tensor_pos = function, args_def, kwargs, tensor_pos
    seg.arg_leaves = arg_leaves
    seg.rng = rng
    seg.autocast = current_regions()  # the recomputation runs in the same autocast state
    leaves = list(arg_leaves)
    for pos, t in zip(tensor_pos, detached):
        leaves[pos] = t
    out = _run_unhooked(function, tree_unflatten(args_def, leaves), kwargs)
    outs, seg.out_def = tree_flatten(out)
    recorded = [o for o in outs if isinstance(o, Tensor) and o.requires_grad]
    if not recorded:
        return out
    seg.params = _leaves(recorded, {id(d) for d in detached})
    seg.versions = [t._ensure_version()[0] for t in inputs]  # an in-place change refuses
    seg.outs = outs
    seg.nondiff = {i for i, o in enumerate(outs)
                   if not (isinstance(o, Tensor) and o.requires_grad)}
    global _RULE
    if _RULE is None:
        _RULE = _rule("checkpoint", _vjp)
        _RULE.jvp = _jvp
    new = _attach(outs, inputs + seg.params, _RULE, seg)
    seg.outs = None  # the first forward's values are not needed again
    return tree_unflatten(seg.out_def, new)


def checkpoint_sequential(functions: Sequence[Callable] | Any, segments: int, input,
                          use_reentrant: bool | None = None, **kwargs) -> Any:
    """PyTorch's ``checkpoint_sequential``: ``functions`` (a Sequential or a list of modules)
    run in ``segments`` chunks, each but the last checkpointed; ``input`` flows through."""
    fns = list(functions.children()) if hasattr(functions, "children") and not isinstance(
        functions, Sequence) else list(functions)
    if not isinstance(segments, int) or segments < 1:
        raise ValueError(f"checkpoint_sequential: segments must be a positive int, got "
                         f"{segments!r}")
    size = max(len(fns) // segments, 1)

    def run(chunk):
        def forward(x):
            for f in chunk:
                x = f(x)
            return x
        return forward

    end = 0
    for start in range(0, size * (segments - 1), size):
        end = start + size
        if end >= len(fns):
            break
        input = checkpoint(run(fns[start:end]), input, **kwargs)
    return run(fns[end:])(input)


def remat(fun: Callable | None = None, *, prevent_cse: bool = True, policy: Callable | None = None,
          static_argnums: int | tuple = (), static_argnames: str | tuple = ()) -> Callable:
    """JAX's ``jax.checkpoint`` (``remat``): ``fun`` whose activations are recomputed in its
    backward instead of kept; composes with ``grad``, ``vjp``, ``jvp`` and ``jit``. Without
    ``fun``, a decorator. ``prevent_cse`` and ``policy`` (which values JAX may keep rather than
    recompute) are accepted and change nothing here: every activation is recomputed, which
    gives the same values; ``static_argnums``/``static_argnames`` arguments are passed through
    as they are."""
    if fun is None:
        return lambda f: remat(f, prevent_cse=prevent_cse, policy=policy,
                               static_argnums=static_argnums, static_argnames=static_argnames)
    if not callable(fun):
        raise TypeError(f"remat: expected a function, got {type(fun).__name__}")
    if policy is not None and not callable(policy):
        raise TypeError(f"remat: policy must be None or a callable, got {type(policy).__name__}")
    nums = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    if any(isinstance(n, bool) or not isinstance(n, int) for n in nums):
        raise TypeError(f"remat: static_argnums must be ints, got {static_argnums!r}")
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    if any(not isinstance(n, str) for n in names):
        raise TypeError(f"remat: static_argnames must be strs, got {static_argnames!r}")

    def wrapped(*args, **kwargs):
        return checkpoint(fun, *args, **kwargs)

    wrapped.__name__ = getattr(fun, "__name__", "remat")
    wrapped.__doc__ = getattr(fun, "__doc__", None)
    wrapped.__wrapped__ = fun
    return wrapped
