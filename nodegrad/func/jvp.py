"""Forward mode on the same engine: jvp, linearize, and the Jacobian and Hessian transforms.

``jvp(f, primals, tangents)`` evaluates ``f`` once on fresh differentiation inputs, which
records the graph exactly as for ``grad``, and then pushes the tangents *forward* through the
recorded nodes in topological order, calling each primitive's JVP rule (``Primitive.jvp``, see
``nodegrad/primitive.py``). This is JAX's ``linearize``: the primal pass happens once and the
tangent pass can be repeated for many tangents (``jacfwd`` does so, one per input coordinate).

The JVP rules are written with tensor operations, like the VJP rules, so the tangent pass is
itself recorded when a surrounding transform needs it: ``jvp`` of ``grad`` (forward-over-reverse,
used by ``hvp`` and ``hessian``), ``grad`` of ``jvp`` and ``jvp`` of ``jvp`` all compose. No
primitive uses the double-VJP fallback: every differentiable primitive declares a rule. The node
of an ``autograd.Function`` calls the class's own ``jvp`` (``custom_jvp``'s, its rule);
``nodegrad.autograd.forward_ad`` pushes tangents through the same nodes the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .. import _backend as B
from ..autodiff import _key, _topo_order, modes, saved_values
from ..errors import GradError
from ..tensor import Tensor, zeros_like
from ..batching import lowered
from .grad import (_argnums, _call, _prepare, _prepare_batched, closes_over, detach_aux,
                   extra_levels, from_bottom, from_extra, only_levels, to_bottom, to_extra,
                   _vjp, value_and_grad)
from .tree import tree_flatten, tree_unflatten


def _as_tangent(t, like: Tensor, op: str) -> Tensor:
    if not isinstance(t, Tensor):
        t = Tensor._of(like.backend.asarray(t, dtype=like.dtype))
    if tuple(t.shape) != tuple(like.shape):
        raise GradError(f"{op}: tangent shape {tuple(t.shape)} does not match the primal shape "
                        f"{tuple(like.shape)}")
    if t.dtype != like.dtype:
        raise GradError(f"{op}: tangent dtype {t.dtype} does not match the primal dtype "
                        f"{like.dtype}")
    return t


def _push(ins: list, tans: list, outs: list) -> list:
    """Tangents of ``outs`` given tangents ``tans`` of the graph inputs ``ins`` (None: zero)."""
    tan: dict = {}
    for t, u in zip(ins, tans):
        tan[_key(t)] = u
    starts = [o.node for o in outs if o.node is not None]
    for n in reversed(_topo_order(starts)):  # parents before children
        if n in tan:
            continue  # a differentiation input (an alias of an outer value)
        ts = tuple(None if p is None else tan.get(p) for p in n.parents)
        like = next((t for t in ts if t is not None), None)
        if like is None:
            continue
        if not n.alive:
            raise GradError(f"jvp through '{n.prim.name}' after its saved values were freed by "
                            "a backward pass")
        args, out = saved_values(n, like.dtype, modes().grad_enabled)
        ans = None if out is None else Tensor._of(out, n, True)
        t = n.prim.jvp(ts, ans, *args, **n.params)
        if t is not None:
            tan[n] = t
    return [tan.get(_key(o)) if o.requires_grad else None for o in outs]


def _aux(res, has_aux: bool, op: str) -> tuple:
    """``(output, aux)`` from what ``f`` returned (``aux`` None without ``has_aux``)."""
    if not has_aux:
        return res, None
    if not (isinstance(res, tuple | list) and len(res) == 2):
        raise GradError(f"{op}: has_aux=True needs f to return (output, aux), got "
                        f"{type(res).__name__}")
    return res


def linearize(f: Callable, *primals, has_aux: bool = False):
    """``(f(*primals), jvp_fn)``: ``jvp_fn(*tangents)`` pushes tangents through f's graph.

    ``f`` runs once; each ``jvp_fn`` call is one forward tangent pass (no re-evaluation).
    With ``has_aux``, ``f`` returns ``(output, aux)`` and the result is ``(output, jvp_fn,
    aux)``, ``aux`` not differentiated (JAX's).
    """
    return _linearize(f, primals, has_aux, False)


def _linearize(f: Callable, primals: tuple, has_aux: bool, strict: bool):
    """:func:`linearize`; with ``strict`` the tangent pass refuses an output independent of
    the inputs (``torch.func.jvp``'s ``strict=True``) rather than giving it zeros."""
    nums = tuple(range(len(primals)))
    levels = None
    if modes().traces:  # inside vmap: push tangents through the batched computation underneath
        a, ins_per_arg, defs, higher, levels = _prepare_batched(primals, nums, "jvp")
    else:
        a, ins_per_arg, defs, higher = _prepare(primals, nums, "jvp")
    out, aux = _aux(_call(f, a, {}), has_aux, "jvp")
    outs, out_def = tree_flatten(out)
    for o in outs:
        if not isinstance(o, Tensor):
            raise GradError(f"jvp: f must return tensors (or a tree of them), got "
                            f"{type(o).__name__}")
    ins = [t for per in ins_per_arg for t in per]
    if levels is not None:
        outs = to_bottom(outs, levels, "jvp")
    higher = higher or closes_over(outs, ins_per_arg)

    def jvp_fn(*tangents):
        if len(tangents) != len(primals):
            raise GradError(f"jvp: {len(tangents)} tangents for {len(primals)} primals")
        flat = []
        for tg, td in zip(tangents, defs):
            leaves, tdef = tree_flatten(tg)
            if tdef != td:
                raise GradError(f"jvp: tangent structure {tdef} does not match the primal {td}")
            flat.extend(leaves)
        m = modes()
        extra = m.traces if levels is None else extra_levels(levels, "jvp")
        if levels is not None:
            flat = to_extra(flat, levels, extra)
        flat = [_as_tangent(u, p, "jvp") for u, p in zip(flat, ins)]
        need = higher or any(u.requires_grad for u in flat)
        prev = m.grad_enabled
        m.grad_enabled = need
        m.depth += 1
        try:
            with only_levels(extra):
                touts = _push(ins, flat, outs)
                if strict and any(t is None for t in touts):
                    raise GradError("jvp(f, primals, tangents, strict=True): the output of f "
                                    "is independent of the inputs, which strict=True refuses")
                touts = [zeros_like(o) if t is None else (t if need else t.detach())
                         for t, o in zip(touts, outs)]
                res = tree_unflatten(out_def, touts)
                return res if levels is None else from_extra(res, levels, extra)
        finally:
            m.depth -= 1
            m.grad_enabled = prev

    with lowered(0 if levels is not None else len(modes().traces)):
        shown = outs if higher else [o.detach() for o in outs]
    shown = tree_unflatten(out_def, shown)
    shown = shown if levels is None else from_bottom(shown, levels)
    if has_aux and levels is None and not higher:
        aux = detach_aux(aux)
    return (shown, jvp_fn, aux) if has_aux else (shown, jvp_fn)


def jvp(f: Callable, primals: Sequence, tangents: Sequence, *, strict: bool = False,
        has_aux: bool = False):
    """``(f(*primals), J u)``: the output and its directional derivative along ``tangents``.

    ``primals`` and ``tangents`` are tuples with one entry (a tensor or a tree) per argument of
    ``f``; the tangent output has the structure of the output. With ``has_aux``, ``f``
    returns ``(output, aux)`` and the result is ``(output, J u, aux)`` (JAX's and
    ``torch.func``'s). ``strict=True`` (``torch.func``'s) raises for an output that does not
    depend on the primals, whose tangent is otherwise zeros.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if has_aux:
        out, fn, aux = _linearize(f, primals, True, strict)
        return out, fn(*tangents), aux
    out, fn = _linearize(f, primals, False, strict)
    return out, fn(*tangents)


# --- Jacobians --------------------------------------------------------------------------------
def _basis(x: Tensor):
    """The unit tangents of ``x``, one per element, in row-major order."""
    xp = x.backend.xp
    n = x.numel()
    eye = xp.eye(n, dtype=x.dtype) if n else xp.zeros((0, 0), dtype=x.dtype)
    return [Tensor._of(eye[i].reshape(x.shape)) for i in range(n)]


def _stack_last(parts: list, out: Tensor, inp: Tensor) -> Tensor:
    """Stack per-input-coordinate pieces of shape ``out.shape`` into out.shape + inp.shape."""
    from ..ops import reshape, stack

    shape = tuple(out.shape) + tuple(inp.shape)
    if not parts:
        return Tensor._of(out.backend.xp.zeros(shape, dtype=out.dtype))
    return reshape(stack(parts, axis=-1), shape)


def _jac_result(per_out: list, out_def, arg_defs, nums_int: bool):
    """per_out[k][a][i]: Jacobian of output leaf k wrt leaf i of differentiated argument a."""
    res = []
    for per_arg in per_out:
        trees = [tree_unflatten(td, js) for td, js in zip(arg_defs, per_arg)]
        res.append(trees[0] if nums_int else tuple(trees))
    return tree_unflatten(out_def, res)


def _flat_args(args, nums):
    leaves, defs = [], []
    for n in nums:
        ls, td = tree_flatten(args[n])
        leaves.append([x if isinstance(x, Tensor) else Tensor._of(x) for x in ls])
        defs.append(td)
    return leaves, defs


def _restrict(f: Callable, args: tuple, nums: Sequence[int], leaves, defs) -> tuple:
    """``f`` as a function of the differentiated arguments only, and those arguments."""

    def g(*diff):
        full = list(args)
        for n, d in zip(nums, diff):
            full[n] = d
        return f(*full)

    return (g, *(tree_unflatten(td, ls) for td, ls in zip(defs, leaves)))


def _real_only(holomorphic: bool, op: str) -> None:
    """JAX's ``holomorphic=True`` (complex Jacobians) is refused; False is accepted."""
    if holomorphic:
        raise NotImplementedError(f"{op}: holomorphic=True (complex differentiation) is not "
                                  "supported; nodegrad differentiates real functions")


def jacfwd(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
           holomorphic: bool = False, *, randomness: str = "error"):
    """The Jacobian of ``f`` by forward mode: one tangent pass per input coordinate.

    For an output of shape S and an input of shape T the Jacobian has shape S + T. With several
    outputs or inputs (trees, or a tuple ``argnums``) the result nests as in JAX: the output's
    structure outside, the inputs' structure inside. With ``has_aux``, ``f`` returns
    ``(output, aux)`` and the result is ``(jacobian, aux)``. ``holomorphic`` as in
    :func:`~nodegrad.func.grad.value_and_grad`. ``randomness`` is ``torch.func.jacfwd``'s
    ('error', 'different', 'same'): ``f`` runs once and the tangent passes replay that one
    run, so every column sees the same random draws whichever is chosen.
    """
    _real_only(holomorphic, "jacfwd")
    if randomness not in ("error", "different", "same"):
        raise ValueError(f"jacfwd: randomness must be 'error', 'different' or 'same', got "
                         f"{randomness!r}")

    def wrapped(*args):
        nums = _argnums(argnums, len(args), "jacfwd")
        leaves, defs = _flat_args(args, nums)
        out, fn, *aux = linearize(*_restrict(f, args, nums, leaves, defs), has_aux=has_aux)
        outs, out_def = tree_flatten(out)
        per_out = [[[[] for _ in ls] for ls in leaves] for _ in outs]
        zeros = [[zeros_like(x) for x in ls] for ls in leaves]
        for a, ls in enumerate(leaves):
            for i, x in enumerate(ls):
                for e in _basis(x):
                    tg = [list(z) for z in zeros]
                    tg[a][i] = e
                    touts = tree_flatten(fn(*(tree_unflatten(td, t)
                                              for td, t in zip(defs, tg))))[0]
                    for k, t in enumerate(touts):
                        per_out[k][a][i].append(t)
        per_out = [[[_stack_last(parts, o, x) for parts, x in zip(pa, ls)]
                    for pa, ls in zip(po, leaves)] for po, o in zip(per_out, outs)]
        jac = _jac_result(per_out, out_def, defs, isinstance(argnums, int))
        return (jac, aux[0]) if has_aux else jac

    wrapped.__name__ = f"jacfwd({getattr(f, '__name__', 'f')})"
    return wrapped


def jacrev(f: Callable, argnums: int | Sequence[int] = 0, *, has_aux: bool = False,
           chunk_size: int | None = None, holomorphic: bool = False, allow_int: bool = False):
    """The Jacobian of ``f`` by reverse mode: one backward pass per output coordinate.

    Same result layout (and ``has_aux``) as :func:`jacfwd`; cheaper when outputs are fewer than
    inputs. ``chunk_size`` is ``torch.func.jacrev``'s bound on how many rows are computed at
    once; the passes here run one row at a time, within any bound, so it changes nothing.
    ``holomorphic=True`` (JAX's) is refused; ``allow_int`` (JAX's) lets integer inputs through,
    their Jacobian integer zeros (JAX's float0 zeros). ``f`` must return float tensors.
    """
    return _jacrev(f, argnums, has_aux=has_aux, chunk_size=chunk_size,
                   holomorphic=holomorphic, allow_int=allow_int)


def _jacrev(f: Callable, argnums: int | Sequence[int] = 0, *, has_aux: bool = False,
            chunk_size: int | None = None, holomorphic: bool = False, allow_int: bool = False,
            int_outputs: bool = False):
    """:func:`jacrev`; ``int_outputs`` lets integer outputs through with zero rows
    (``torch.autograd.functional.jacobian``'s rule)."""
    from ..ops import reshape, stack

    _real_only(holomorphic, "jacrev")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(
            chunk_size, int) or chunk_size < 1):
        raise ValueError(f"jacrev: chunk_size must be None or a positive int, got {chunk_size!r}")

    def wrapped(*args):
        nums = _argnums(argnums, len(args), "jacrev")
        leaves, defs = _flat_args(args, nums)
        for x in (x for ls in leaves for x in ls):
            if not B.is_float(x.dtype) and not allow_int:
                raise GradError(f"jacrev: cannot differentiate with respect to an integer "
                                f"input (dtype {x.dtype}); pass floats or allow_int=True")
        g, *diff = _restrict(f, args, nums, leaves, defs)
        out, fn, *aux = _vjp(g, tuple(diff), has_aux, "jacrev", int_outputs)
        outs, out_def = tree_flatten(out)
        zeros = [zeros_like(o) for o in outs]
        per_out = []
        for k, o in enumerate(outs):
            rows = []  # one cotangent result (per differentiated leaf) per output coordinate
            for e in _basis(o):
                cot = list(zeros)
                cot[k] = e
                gs = fn(tree_unflatten(out_def, cot))
                rows.append([tree_flatten(gi)[0] for gi in gs])
            per_arg = []
            for a, ls in enumerate(leaves):
                js = []
                for i, x in enumerate(ls):
                    if rows:
                        j = reshape(stack([r[a][i] for r in rows], axis=0),
                                    tuple(o.shape) + tuple(x.shape))
                    else:
                        j = _stack_last([], o, x)
                    js.append(j)
                per_arg.append(js)
            per_out.append(per_arg)
        jac = _jac_result(per_out, out_def, defs, isinstance(argnums, int))
        return (jac, aux[0]) if has_aux else jac

    wrapped.__name__ = f"jacrev({getattr(f, '__name__', 'f')})"
    return wrapped


def hessian(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
            holomorphic: bool = False):
    """The Hessian of scalar ``f``: ``jacfwd(jacrev(f))`` (forward-over-reverse); with
    ``has_aux``, ``f`` returns ``(value, aux)`` and the result is ``(hessian, aux)``;
    ``holomorphic=True`` (JAX's) is refused."""
    _real_only(holomorphic, "hessian")
    return jacfwd(jacrev(f, argnums, has_aux=has_aux), argnums, has_aux=has_aux)


def hvp(f: Callable, primals: Sequence, tangents: Sequence):
    """``(f(*primals), H v)`` for scalar ``f``, forward-over-reverse without forming H.

    As ``torch.func.hvp``: ``primals`` and ``tangents`` are tuples, one entry per argument; the
    product has the structure of the primals (a tuple of them when there are several).
    """
    primals, tangents = tuple(primals), tuple(tangents)
    nums = tuple(range(len(primals)))
    vg = value_and_grad(f, argnums=nums)
    (value, _), (_, hv) = jvp(vg, primals, tangents)
    return value, (hv[0] if len(hv) == 1 else hv)


__all__ = ["jvp", "linearize", "jacfwd", "jacrev", "hessian", "hvp"]
