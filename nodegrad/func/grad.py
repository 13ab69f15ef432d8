"""JAX-style transforms over the same engine: grad, value_and_grad, vjp.

``grad(f)(x)`` makes fresh differentiation inputs from ``x``, evaluates ``f`` recording the
graph, and asks the engine for the gradient with respect to those inputs only (nothing lands in
``.grad``). Inside another transform, or when ``x`` itself carries a graph, the backward pass is
recorded too, so ``grad(grad(f))`` and Hessian-vector products compose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import _backend as B
from ..autodiff import Node, modes, run_backward
from ..batching import lowered
from ..errors import GradError
from ..primitive import primitive
from ..tensor import Tensor, tensor, zeros_like
from .tree import tree_flatten, tree_unflatten

_alias = primitive("alias", lambda xp, x: x, lambda g, ans, x: g, saves="none", kind="shape",
                   jvp="linear", batch=lambda v, b: (_alias(v[0]), b[0]),
                   doc="The same value as a new graph vertex (a transform's input).")


def _make_input(x, op: str, allow_int: bool = False) -> Tensor:
    """A differentiation input for ``x``: linked to x's own graph when x has one. With
    ``allow_int`` an integer or bool ``x`` is passed as it is (its gradient is zeros)."""
    if allow_int and (isinstance(x, bool | int) or (isinstance(x, Tensor)
                                                     and x.dtype.kind in "biu")):
        return Tensor._of(x._data, None, False) if isinstance(x, Tensor) else tensor(x)
    if isinstance(x, Tensor):
        if x.dtype.kind == "c":  # JAX's and PyTorch's conventions differ by a conjugate
            raise GradError(f"{op}: complex inputs are not supported by the function "
                            f"transforms (dtype {x.dtype}); use loss.backward() or "
                            "ng.autograd.grad, which follow PyTorch's convention")
        if not B.is_float(x.dtype):
            hint = "; pass allow_int=True to get zeros for it" if op == "grad" else ""
            raise GradError(f"{op}: cannot differentiate with respect to an integer tensor "
                            f"(dtype {x.dtype}){hint}")
        m = modes()
        if x.requires_grad and m.grad_enabled:
            return _alias(x)
        if m.jit is not None:  # a trace reads a closed-over x as itself, not as this leaf (a
            m.jit.slot_of(x, x._data)  # loop body's outputs would claim to require grad)
        return Tensor._of(x._data, None, True)
    t = tensor(x)
    if not B.is_float(t.dtype):
        raise GradError(f"{op}: cannot differentiate with respect to integer input {x!r}; "
                        "pass floats")
    return t.requires_grad_()


def _argnums(argnums, nargs: int, op: str) -> tuple:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for n in nums:
        if not -nargs <= n < nargs:
            raise ValueError(f"{op}: argnums {argnums} out of range for {nargs} positional "
                             f"arguments; pass at least {n + 1 if n >= 0 else -n} positionally")
    out = tuple(n % nargs for n in nums)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: argnums {argnums} names an argument twice")
    return out


def _prepare(args: tuple, nums: tuple, op: str, allow_int: bool = False):
    args = list(args)
    leaves_per_arg, defs = [], []
    for n in nums:
        leaves, td = tree_flatten(args[n])
        ins = [_make_input(leaf, op, allow_int) for leaf in leaves]
        args[n] = tree_unflatten(td, ins)
        leaves_per_arg.append(ins)
        defs.append(td)
    m = modes()
    higher = m.grad_enabled and (m.depth > 0 or any(
        t.node is not None for ins in leaves_per_arg for t in ins))
    return args, leaves_per_arg, defs, higher


def closes_over(outs: list, ins_per_arg: list) -> bool:
    """Whether grad mode is on and the graph of ``outs`` reaches a tensor that requires grad
    besides the differentiation inputs ``ins_per_arg``: a parameter ``f`` closes over. The
    transform's results then depend on it and, as in ``torch.func`` (whose transforms compose
    with ``Tensor.backward``), the transform records its own passes so gradients reach it.
    A jitted call replayed compiled inside a first-order grad has a backward that cannot be
    recorded: there the results stay cut from such tensors, as before."""
    if not modes().grad_enabled:
        return False
    mine = {id(t) for ins in ins_per_arg for t in ins}
    outs = [o for o in outs if isinstance(o, Tensor) and o.requires_grad]
    if any(o.node is None and id(o) not in mine for o in outs):
        return True
    found = False
    stack = [o.node for o in outs if o.node is not None]
    seen = set(map(id, stack))
    while stack:  # every reachable node once, no recursion
        n = stack.pop()
        if n.prim.name.startswith("jit["):  # a compiled replay (nodegrad.jit's rule)
            return False
        for p in n.parents:
            if type(p) is Node:
                if id(p) not in seen:
                    seen.add(id(p))
                    stack.append(p)
            elif p is not None and id(p) not in mine:
                found = True
    return found


def _call(f: Callable, args: list, kwargs: dict, first_order: bool = False):
    """``f(*args, **kwargs)`` as a transform evaluates it: recording, one level deeper.
    ``first_order``: the caller is a grad that differentiates the result once, right after,
    without recording its backward (what a jitted function inside may replay compiled for)."""
    m = modes()  # this thread's: a transform running in another thread is not seen here
    prev, prev_first = m.grad_enabled, m.first_order
    m.grad_enabled = True
    m.depth += 1
    if first_order:
        m.first_order = m.depth
    try:
        return f(*args, **kwargs)
    finally:
        m.depth -= 1
        m.grad_enabled = prev
        m.first_order = prev_first


def _scalar_out(out, op: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise GradError(f"{op}: the function must return a scalar tensor, got "
                        f"{type(out).__name__} (with has_aux=True, return (value, aux))")
    if out.ndim != 0:  # a (1,) output too, as jax.grad and torch.func.grad refuse it
        raise GradError(f"{op}: the function must return a scalar (0-d) tensor, got shape "
                        f"{tuple(out.shape)}; use vjp or jacrev for other outputs, or .sum()")
    if not B.is_float(out.dtype):
        raise GradError(f"{op}: the function returned dtype {out.dtype}; need a float scalar")
    return out


def _grads(outs, cots, ins_per_arg, defs, higher, retain) -> list:
    flat = [t for ins in ins_per_arg for t in ins]
    if any(o.requires_grad for o in outs):
        outs_cots = [(o, c) for o, c in zip(outs, cots) if o.requires_grad]
        gs = run_backward([o for o, _ in outs_cots], [c for _, c in outs_cots],
                          retain_graph=retain or higher, create_graph=higher, targets=flat,
                          accumulate=False, allow_unused=True)
    else:
        gs = [None] * len(flat)
    gs = [zeros_like(t) if g is None else g for g, t in zip(gs, flat)]
    out, i = [], 0
    for ins, td in zip(ins_per_arg, defs):
        out.append(tree_unflatten(td, gs[i:i + len(ins)]))
        i += len(ins)
    return out


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   holomorphic: bool = False, allow_int: bool = False):
    """A function returning ``(f(*args), gradient)``; with ``has_aux``, ``((value, aux), grad)``.

    ``f`` must return a scalar. The gradient has the structure of the differentiated arguments
    (a tuple of them when ``argnums`` is a tuple). ``allow_int`` (JAX's) lets integer and bool
    arguments through, with zeros of their shape and dtype as their gradient (JAX's float0
    zeros); ``holomorphic`` (complex differentiation) is not supported.
    """
    return _value_and_grad(f, argnums, has_aux, holomorphic, allow_int, "value_and_grad")


def _value_and_grad(f: Callable, argnums, has_aux: bool, holomorphic: bool, allow_int: bool,
                    op: str):
    """:func:`value_and_grad`, its errors naming ``op`` (the transform the user called)."""
    if holomorphic:
        raise NotImplementedError("grad: holomorphic=True (complex differentiation) is not "
                                  "supported; nodegrad differentiates real functions")

    def wrapped(*args, **kwargs):
        nums = _argnums(argnums, len(args), op)
        if modes().traces:  # inside vmap: differentiate the batched computation underneath
            return _batched_value_and_grad(f, argnums, nums, has_aux, args, kwargs, allow_int)
        a, ins, defs, higher = _prepare(args, nums, "grad", allow_int)
        res = _call(f, a, kwargs, first_order=not higher)
        out, aux = _split_aux(res, has_aux)
        out = _scalar_out(out, "grad")
        higher = higher or closes_over([out], ins)
        gs = _grads([out], [out.ones_like()], ins, defs, higher, False)
        g = gs[0] if isinstance(argnums, int) else tuple(gs)
        value = out if higher else out.detach()
        if has_aux and not higher:
            aux = detach_aux(aux)
        return ((value, aux) if has_aux else value), g

    wrapped.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    return wrapped


def _prepare_batched(args: tuple, nums: tuple, op: str, allow_int: bool = False):
    """``_prepare`` inside vmap: inputs become plain batched leaves at the bottom (broadcast
    along every active vmap where not batched), handed to ``f`` seen as examples."""
    from .vmap import full_batch, rewrap

    levels = modes().traces
    args = list(args)
    ins, defs = [], []
    for n in nums:
        leaves, td = tree_flatten(args[n])
        bottoms = [full_batch(x)[1] for x in leaves]
        with lowered(0):
            made = [_make_input(b, op, allow_int) for b in bottoms]
        args[n] = tree_unflatten(td, [rewrap(m, levels) for m in made])
        ins.append(made)
        defs.append(td)
    m = modes()
    higher = m.grad_enabled and (m.depth > 0 or any(
        t.node is not None for per in ins for t in per))
    return args, ins, defs, higher, levels


def to_bottom(xs: list, levels: tuple, op: str) -> list:
    """Plain batched tensors under ``xs`` (examples inside the vmaps ``levels``)."""
    from .vmap import full_batch

    if modes().traces != levels:
        raise GradError(f"{op}: a function made inside vmap was called outside it")
    return [full_batch(x)[1] for x in xs]


def from_bottom(tree, levels: tuple):
    from .vmap import rewrap

    leaves, td = tree_flatten(tree)
    return tree_unflatten(td, [rewrap(t, levels) for t in leaves])


class only_levels:
    """Run with exactly the vmap levels ``traces`` active (outermost first)."""

    def __init__(self, traces: tuple):
        self.traces = tuple(traces)

    def __enter__(self):
        m = self.m = modes()
        self.saved = m.traces
        m.traces = self.traces

    def __exit__(self, *exc):
        self.m.traces = self.saved


def extra_levels(levels: tuple, op: str) -> tuple:
    """The vmap levels active now inside the ``levels`` a vjp/jvp function was made in: that
    function may be called in a vmap of its own (``vmap(vjp_fn)``, as the torch.func NTK
    tutorial does) but not outside the vmaps that made it."""
    now = modes().traces
    if now[:len(levels)] != levels:
        raise GradError(f"{op}: a function made inside vmap was called outside it")
    return now[len(levels):]


def _swap_batch_axes(x: Tensor, a: int, b: int) -> Tensor:
    """``x`` of shape (A..., B..., rest) with ``a`` then ``b`` leading axes as (B..., A...,
    rest)."""
    if not a or not b:
        return x
    perm = tuple(range(a, a + b)) + tuple(range(a)) + tuple(range(a + b, x.ndim))
    return x.permute(*perm)


def to_extra(xs: list, levels: tuple, extra: tuple) -> list:
    """``xs`` (seen at ``levels + extra``) as the graph made at ``levels`` sees them: their
    batch axes of ``levels`` part of the example, still batched at the ``extra`` levels (plain
    bottoms when there are none). Use the results under ``only_levels(extra)``."""
    from .vmap import full_batch, rewrap

    bottoms = [full_batch(x)[1] for x in xs]
    with lowered(0):
        bottoms = [_swap_batch_axes(b, len(levels), len(extra)) for b in bottoms]
    return [rewrap(b, extra) for b in bottoms]


def from_extra(tree, levels: tuple, extra: tuple):
    """Inverse of :func:`to_extra`, called under ``only_levels(extra)``: results of the graph
    at ``levels`` that the ``extra`` levels batch, seen at ``levels + extra``."""
    from .vmap import full_batch, rewrap

    leaves, td = tree_flatten(tree)
    bottoms = [full_batch(t)[1] for t in leaves]
    with lowered(0):
        bottoms = [_swap_batch_axes(b, len(extra), len(levels)) for b in bottoms]
    return tree_unflatten(td, [rewrap(b, levels + extra) for b in bottoms])


def detach_aux(x):
    """``aux`` with its tensors cut from the graph of a transform that recorded nothing above
    it (JAX's aux carries no derivative at the level that made it); containers are rebuilt,
    other objects passed through as they are."""
    if isinstance(x, Tensor):
        return x.detach() if x.requires_grad else x
    if type(x) in (list, tuple, dict) or (isinstance(x, tuple) and hasattr(x, "_fields")):
        if isinstance(x, dict):
            return {k: detach_aux(v) for k, v in x.items()}
        items = [detach_aux(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    return x


def _split_aux(res, has_aux: bool, op: str = "grad") -> tuple:
    """``(value, aux)`` from what ``f`` returned (``aux`` is None without ``has_aux``)."""
    if not has_aux:
        return res, None
    if not (isinstance(res, tuple | list) and len(res) == 2):
        raise GradError(f"{op}: has_aux=True needs f to return a pair (value, aux), got "
                        f"{type(res).__name__}")
    return res


def _batched_value_and_grad(f, argnums, nums, has_aux, args, kwargs, allow_int=False):
    """value_and_grad under vmap: the inputs become batched leaves at the bottom (one row per
    example, broadcast where an input was not batched), ``f`` runs on them seen as examples, and
    one backward pass from the sum of the per-example values gives every example's gradient,
    since batching rules never mix examples."""
    args, ins, defs, higher, levels = _prepare_batched(args, nums, "grad", allow_int)
    res = _call(f, args, kwargs)
    out, aux = _split_aux(res, has_aux)
    if not isinstance(out, Tensor) or out.shape != ():
        _scalar_out(out, "grad")
    bottom = to_bottom([out], levels, "grad")[0]
    higher = higher or closes_over([bottom], ins)
    with lowered(0):
        gs = _grads([bottom], [bottom.ones_like()], ins, defs, higher, False)
        value = bottom if higher else bottom.detach()
    gs = [from_bottom(gt, levels) for gt in gs]
    g = gs[0] if isinstance(argnums, int) else tuple(gs)
    value = from_bottom(value, levels)
    return ((value, aux) if has_aux else value), g


def grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
         holomorphic: bool = False, allow_int: bool = False):
    """The gradient function of scalar-valued ``f`` with respect to ``argnums``.

    Composable: ``grad(grad(f))`` is the second derivative; a Hessian-vector product is
    ``grad(lambda x: (grad(f)(x) * v).sum())(x)``. ``allow_int`` and ``holomorphic`` as in
    :func:`value_and_grad`.
    """
    vg = _value_and_grad(f, argnums, has_aux, holomorphic, allow_int, "grad")

    def wrapped(*args, **kwargs):
        (value, g) = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    wrapped.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return wrapped


def vjp(f: Callable, *primals, has_aux: bool = False):
    """``(f(*primals), vjp_fn)``: ``vjp_fn(cotangent)`` returns one cotangent per primal.

    ``f`` may return a tensor or a tree of tensors; the cotangent has the same structure.
    ``vjp_fn`` can be called more than once. Integer and bool primals are passed through and
    get zeros of their shape and dtype (JAX's float0 zeros). Every output must be a float
    tensor (``torch.func``'s rule: an integer output has no cotangent).
    """
    return _vjp(f, primals, has_aux)


def check_outputs(outs: list, op: str, int_outputs: bool = False) -> None:
    """Refuse outputs of ``f`` that are not tensors, and (unless ``int_outputs``) integer or
    bool ones, which have no derivative to take."""
    for o in outs:
        if not isinstance(o, Tensor):
            raise GradError(f"{op}: f must return only tensors (or a tree of them), got "
                            f"{type(o).__name__}")
        if not int_outputs and not B.is_float(o.dtype) and o.dtype.kind != "c":
            raise GradError(f"{op}: every output of f must be a floating-point tensor, got "
                            f"dtype {o.dtype}")


def _vjp(f: Callable, primals: tuple, has_aux: bool = False, op: str = "vjp",
         int_outputs: bool = False):
    """:func:`vjp`, its errors naming ``op``; ``int_outputs`` lets integer outputs through
    (their cotangents ignored, as ``torch.autograd.functional`` does)."""
    nums = tuple(range(len(primals)))
    levels = None
    if modes().traces:  # inside vmap: differentiate the batched computation underneath
        a, ins, defs, higher, levels = _prepare_batched(primals, nums, "vjp", True)
    else:
        a, ins, defs, higher = _prepare(primals, nums, "vjp", True)
    res = _call(f, a, {})
    out, aux = _split_aux(res, has_aux, op)
    outs, out_def = tree_flatten(out)
    check_outputs(outs, op, int_outputs)
    bottoms = outs if levels is None else to_bottom(outs, levels, "vjp")
    higher = higher or closes_over(bottoms, ins)

    def vjp_fn(cotangent):
        cots, cdef = tree_flatten(cotangent)
        if cdef != out_def:
            raise GradError(f"vjp: cotangent structure {cdef} does not match the output {out_def}")
        cts = []
        for o, c in zip(outs, cots):
            c = c if isinstance(c, Tensor) else Tensor._of(o.backend.asarray(c, dtype=o.dtype))
            if tuple(c.shape) != tuple(o.shape):
                raise GradError(f"vjp: cotangent shape {tuple(c.shape)} does not match the "
                                f"output shape {tuple(o.shape)}")
            if B.is_float(o.dtype) and c.dtype != o.dtype:
                if not B.is_float(c.dtype):
                    raise GradError(f"vjp: cotangent dtype {c.dtype} for an output of dtype "
                                    f"{o.dtype} (shape {tuple(o.shape)}); pass floats")
                c = c.astype(o.dtype)  # as backward's grad_outputs: cast to the output's dtype
            cts.append(c)
        # a cotangent that is itself differentiated (vjp_fn inside grad or jvp: forward- or
        # reverse-over-reverse) needs the backward recorded, as linearize's jvp_fn does
        m = modes()
        record = higher or (m.grad_enabled and (m.depth > 0 or any(c.requires_grad
                                                                     for c in cts)))
        if levels is None:
            return tuple(_grads(outs, cts, ins, defs, record, True))
        extra = extra_levels(levels, "vjp")
        cts = to_extra(cts, levels, extra)
        with only_levels(extra):
            gs = _grads(bottoms, cts, ins, defs, record, True)
            return tuple(from_extra(g, levels, extra) for g in gs)

    if levels is not None:
        with lowered(0):
            shown = [o if higher else o.detach() for o in bottoms]
        shown = from_bottom(tree_unflatten(out_def, shown), levels)
    else:
        shown = out if higher else tree_unflatten(out_def, [o.detach() for o in outs])
        if has_aux and not higher:
            aux = detach_aux(aux)
    return (shown, vjp_fn, aux) if has_aux else (shown, vjp_fn)
