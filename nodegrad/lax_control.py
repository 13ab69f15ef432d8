"""Structured control flow with JAX's semantics: ``cond``, ``switch`` and ``while_loop``.

Each branch (or the loop's test and body) is traced once into a :class:`~nodegrad.lax.Body`, as
``scan``'s body is, and the whole construct is one primitive whose forward picks the branch (or
runs the loop) from the values it receives: under ``ng.jit`` the branch and the trip count are
decided at every replay, not frozen at the trace. ``cond``'s VJP and JVP are conds of the
branches' VJPs and JVPs; ``while_loop`` is differentiable in forward mode only, as in JAX. Under
``vmap`` an unbatched predicate stays a cond (a loop); a batched one runs every branch and
selects per example (a loop runs until every example is done, the finished ones frozen).

A primitive's result is one array, so the outputs are packed by dtype: one primitive per dtype
among the outputs (a loop carrying an int counter and float state runs once for each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import _backend as B
from .autodiff import Node, modes
from .batching import batched, front, size_of
from .errors import DTypeError, GradError, ShapeError
from .func.grad import vjp as _vjp
from .func.jvp import jvp as _jvp
from .func.tree import tree_flatten, tree_unflatten
from .func.vmap import vmap as _vmap
from .lax import Body, _as_tensors, _fusing, _is_float, _substitute, _trace
from .ops.reduce import any as _any
from .ops.shape import concatenate, reshape
from .ops.index import where
from .primitive import Primitive, bind, primitive
from .tensor import Tensor, tensor, zeros, zeros_like

__all__ = ["cond", "switch", "while_loop", "torch_cond", "torch_while_loop"]


# --- packing: a primitive's outputs of one dtype, flattened into one array -------------------
def _groups(metas: list) -> list:
    """Output positions grouped by dtype, in order of first appearance."""
    by: dict = {}
    for k, (_, dt) in enumerate(metas):
        by.setdefault(dt, []).append(k)
    return [tuple(v) for v in by.values()]


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _pack(xp, arrays: list, metas: list, group: tuple):
    """A new flat array holding the outputs at ``group`` (never a view of an input)."""
    dt = metas[group[0]][1]
    return xp.concatenate([xp.asarray(arrays[k]).reshape(-1) for k in group]).astype(
        dt, copy=False)


def _unpack(packed: Tensor, metas: list, group: tuple) -> list:
    """The outputs at ``group`` sliced back out of the packed result."""
    if len(group) == 1:
        return [reshape(packed, metas[group[0]][0])]
    out, at = [], 0
    for k in group:
        shape = metas[k][0]
        n = _numel(shape)
        out.append(reshape(packed[at:at + n], shape))
        at += n
    return out


def _pack_batched(outs: list, size: int) -> Tensor:
    """Batched outputs (batch axis first) packed per example: (size, total)."""
    parts = [reshape(o, (size, _numel(tuple(o.shape[1:])))) for o in outs]
    return parts[0] if len(parts) == 1 else concatenate(parts, 1)


def _vmapped(body: Body, ins: list, axes: tuple, size: int) -> list:
    """``body`` on a batch (the inputs' batch axes first, ``None`` for unbatched ones); every
    output gets a leading batch axis."""
    if all(a is None for a in axes):
        return [batched(o, None, size) for o in body(*ins)]
    return list(_vmap(lambda *a: body(*a), in_axes=axes, out_axes=0)(*ins))


def _depends(body: Body, positions) -> set:
    """The output positions of ``body`` that depend on its inputs at ``positions``."""
    hit = {body.in_slots[p] for p in positions}
    for _, _, args, out in body.rec.eqns:
        if any(a in hit for a in args):
            hit.add(out)
    return {k for k, s in enumerate(body.out_slots) if s in hit}


def _leaf_error(what: str, k: int, got, want) -> str:
    return (f"{what}: output {k} has shape {tuple(got[0])} {got[1]}, but {tuple(want[0])} "
            f"{want[1]} was expected")


# --- cond / switch: one primitive over traced branches ---------------------------------------
class Branches:
    """The traced branches of one cond: branch ``i`` runs on the shared inputs followed by the
    tensors it closed over (its own captured inputs, after the shared ones in the primitive)."""

    def __init__(self, bodies: list, n_shared: int) -> None:
        self.bodies = tuple(bodies)
        self.n_shared = n_shared
        self.metas = bodies[0].metas
        self.derived: dict = {}  # VJP, JVP and batched branches, traced once per signature
        self.spans, at = [], n_shared
        for b in self.bodies:
            self.spans.append((at, at + len(b.rec.captured)))
            at += len(b.rec.captured)

    def inputs(self, shared: list) -> list:
        return list(shared) + [t for b in self.bodies for t in b.rec.captured]

    def own(self, i: int, vals: list) -> list:
        """Branch ``i``'s inputs out of the primitive's (the shared, then its captured)."""
        lo, hi = self.spans[i]
        return list(vals[:self.n_shared]) + list(vals[lo:hi])

    def position(self, i: int, k: int) -> int | None:
        """Where input ``k`` of the primitive sits among branch ``i``'s inputs (None: not)."""
        lo, hi = self.spans[i]
        if k < self.n_shared:
            return k
        return k - lo + self.n_shared if lo <= k < hi else None

    def __repr__(self) -> str:
        return f"<cond: {len(self.bodies)} branches, {len(self.metas)} outputs>"


def _trace_branches(fns: list, shared: list, what: str, part: str = "branch") -> Branches:
    """Trace each ``fn(*shared) -> list of tensors`` once (flat lists in, flat lists out)."""
    bodies = [_trace(lambda ks, _c, _x, f=f: ([], list(f(ks))), shared, [], [], what,
                     one_dtype=False, part=part) for f in fns]
    return Branches(bodies, len(shared))


def _cond_params(br: Branches, group: tuple) -> dict:
    return {"branches": br, "group": group, "fuse": _fusing()}


def _cond_apply(br: Branches, index, shared: list) -> list:
    """Bind the cond primitive (once per output dtype); all outputs as tensors."""
    ins = (index,) + tuple(br.inputs(shared))
    outs: list = [None] * len(br.metas)
    for group in _groups(br.metas):
        packed = bind(cond_p, ins, _cond_params(br, group))
        for k, t in zip(group, _unpack(packed, br.metas, group)):
            outs[k] = t
    return outs


def _cond_fwd(xp, index, *arrays, branches: Branches, group: tuple, fuse: bool = False):
    i = min(max(int(index), 0), len(branches.bodies) - 1)
    res = branches.bodies[i].program(fuse).run(branches.own(i, arrays))
    return _pack(xp, res, branches.metas, group)


def _cond_vjp(needs, g, ans, index, *args, branches: Branches, group: tuple,
              fuse: bool = False):
    want = tuple(k for k, a in enumerate(args) if needs[k + 1] and _is_float(a))
    if not want:
        return (None,) * (len(args) + 1)
    gs = _unpack(g, branches.metas, group)
    key = ("vjp", group, want)
    bwd = branches.derived.get(key)
    if bwd is None:
        bwd = branches.derived[key] = _vjp_branches(branches, group, want, list(args), gs)
    cots = _cond_apply(bwd, index, list(args) + gs)
    res: list = [None] * (len(args) + 1)
    for k, c in zip(want, cots):
        res[k + 1] = c
    return tuple(res)


def _vjp_branches(br: Branches, group: tuple, want: tuple, args: list, gs: list) -> Branches:
    """Branches ``(inputs, g) -> cotangents of the inputs at want`` (zeros for the inputs a
    branch does not read), traced once."""
    n = len(args)
    fns = []
    for i, body in enumerate(br.bodies):
        own = [k for k in want if br.position(i, k) is not None]
        pos = [br.position(i, k) for k in own]

        def fn(vals, i=i, body=body, own=own, pos=pos):
            ins, gv = br.own(i, vals[:n]), vals[n:]
            got: dict = {}
            if own:
                def f(*diff):
                    o = body(*_substitute(ins, pos, diff))
                    return [o[k] for k in group]

                _, pull = _vjp(f, *[ins[p] for p in pos])
                got = dict(zip(own, pull(list(gv))))
            return [zeros_like(vals[k]) if got.get(k) is None else got[k] for k in want]

        fns.append(fn)
    return _trace_branches(fns, args + gs, "cond (vjp)")


def _cond_jvp(tangents, ans, index, *args, branches: Branches, group: tuple,
              fuse: bool = False):
    tans = tangents[1:]
    have = tuple(k for k, t in enumerate(tans) if t is not None and _is_float(args[k]))
    if not have:
        return None
    ts = [tans[k] for k in have]
    key = ("jvp", group, have)
    jb = branches.derived.get(key)
    if jb is None:
        n = len(args)
        fns = []
        for i, body in enumerate(branches.bodies):
            own = [(j, k) for j, k in enumerate(have) if branches.position(i, k) is not None]
            pos = [branches.position(i, k) for _, k in own]

            def fn(vals, i=i, body=body, own=own, pos=pos):
                ins, tv = branches.own(i, vals[:n]), vals[n:]

                def f(*diff):
                    o = body(*_substitute(ins, pos, diff))
                    return [o[k] for k in group]

                if not own:
                    return [zeros_like(o) for o in f()]
                _, tout = _jvp(f, tuple(ins[p] for p in pos), tuple(tv[j] for j, _ in own))
                return list(tout)

            fns.append(fn)
        jb = branches.derived[key] = _trace_branches(fns, list(args) + ts, "cond (jvp)")
    ins = (index,) + tuple(jb.inputs(list(args) + ts))
    return bind(cond_p, ins, _cond_params(jb, tuple(range(len(group)))))


def _cond_batch(vals, bdims, branches: Branches, group: tuple, fuse: bool = False):
    size = size_of(vals, bdims)
    index, ib = vals[0], bdims[0]
    args = [front(v, b) for v, b in zip(vals[1:], bdims[1:])]
    axes = tuple(None if b is None else 0 for b in bdims[1:])
    if ib is None:  # one branch for the whole batch: a cond of the batched branches
        key = ("vmap", group, axes)
        vb = branches.derived.get(key)
        if vb is None:
            fns = [lambda ks, i=i, body=body: [
                       _vmapped(body, branches.own(i, ks), tuple(branches.own(i, axes)),
                                size)[k] for k in group]
                   for i, body in enumerate(branches.bodies)]
            vb = branches.derived[key] = _trace_branches(fns, args, "cond (vmap)")
        outs = _cond_apply(vb, index, args)
        return _pack_batched(outs, size), 0
    # a batched predicate: every branch runs on the batch and each example takes its own
    idx = front(index, ib)
    if idx.dtype.kind == "b":
        idx = idx.astype("int64")
    per = [[o for k, o in enumerate(_vmapped(body, branches.own(i, args),
                                             tuple(branches.own(i, axes)), size)) if k in group]
           for i, body in enumerate(branches.bodies)]
    res = per[-1]
    for i in range(len(per) - 2, -1, -1):  # idx <= 0 takes branch 0, idx >= n - 1 the last
        mask = idx <= i
        res = [where(reshape(mask, (size,) + (1,) * (o.ndim - 1)), o, r)
               for o, r in zip(per[i], res)]
    return _pack_batched(res, size), 0


cond_p = primitive("cond", _cond_fwd, vjp_all=_cond_vjp, jvp=_cond_jvp, batch=_cond_batch,
                   saves="inputs", kind="control", promote=False, operands=None,
                   doc="One of several traced branches, chosen by an index at run time (see "
                       "nodegrad.lax.cond and switch).")


def _flat_outputs(what: str, fns: list, names: list, leaves: list, o_def) -> Branches:
    """Trace every branch on the operands' leaves; their outputs must agree in structure,
    shape and dtype."""
    defs: list = []

    def wrap(f):
        def flat(ks):
            out_leaves, d = tree_flatten(f(*tree_unflatten(o_def, ks)))
            defs.append(d)
            return out_leaves
        return flat

    br = _trace_branches([wrap(f) for f in fns], leaves, what)
    for i in range(1, len(fns)):
        if defs[i] != defs[0]:
            raise ShapeError(f"{what}: {names[i]} returned a tree of structure {defs[i]}, but "
                             f"{names[0]} returned {defs[0]}; every branch must return the same "
                             "structure")
        for k, (a, b) in enumerate(zip(br.bodies[i].metas, br.metas)):
            if tuple(a[0]) != tuple(b[0]) or a[1] != b[1]:
                raise (DTypeError if tuple(a[0]) == tuple(b[0]) else ShapeError)(
                    f"{what}: output {k} of {names[i]} has shape {tuple(a[0])} {a[1]}, but "
                    f"{names[0]} gives {tuple(b[0])} {b[1]}; every branch must return the same "
                    "shapes and dtypes")
    br.out_def = defs[0]
    return br


def _scalar_index(x, what: str, name: str) -> Any:
    if isinstance(x, bool | int):
        return x
    if not isinstance(x, Tensor):
        try:
            x = tensor(x)
        except Exception as e:
            raise TypeError(f"{what}: {name} must be a scalar tensor or a Python number, got "
                            f"{type(x).__name__}") from e
    if x.ndim != 0:
        raise ShapeError(f"{what}: {name} must be a scalar, got shape {tuple(x.shape)}")
    return x


def _run_branches(what: str, index, fns: list, names: list, operands: tuple) -> Any:
    leaves, o_def = tree_flatten(operands)
    leaves = _as_tensors(leaves, f"{what}: operands")
    br = _flat_outputs(what, fns, names, leaves, o_def)
    outs = _cond_apply(br, index, leaves) if br.metas else []
    return tree_unflatten(br.out_def, outs)


def cond(pred: Any, true_fun: Callable, false_fun: Callable, *operands: Any) -> Any:
    """JAX's ``lax.cond``: ``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)``.

    Both branches are traced once and must return the same tree of shapes and dtypes; the
    choice is made when the primitive runs (at every replay under ``ng.jit``). ``pred`` is a
    scalar (bool, or a number: nonzero is true); batched under ``vmap``, both branches run and
    each example takes its own."""
    if not callable(true_fun) or not callable(false_fun):
        raise TypeError(f"cond: true_fun and false_fun must be callables, got "
                        f"{type(true_fun).__name__} and {type(false_fun).__name__}")
    p = _scalar_index(pred, "cond", "pred")
    if isinstance(p, Tensor) and p.dtype.kind != "b":
        p = p != 0
    elif not isinstance(p, Tensor):
        p = bool(p)
    return _run_branches("cond", p, [false_fun, true_fun], ["false_fun", "true_fun"], operands)


def switch(index: Any, branches: Sequence[Callable], *operands: Any) -> Any:
    """JAX's ``lax.switch``: ``branches[index](*operands)``, ``index`` clamped to the range.

    Every branch is traced once and must return the same tree of shapes and dtypes; the
    branch is chosen when the primitive runs (at every replay under ``ng.jit``)."""
    branches = list(branches) if isinstance(branches, Sequence) else None
    if not branches or not all(callable(b) for b in branches):
        raise TypeError("switch: branches must be a non-empty sequence of callables")
    i = _scalar_index(index, "switch", "index")
    if isinstance(i, bool) or (isinstance(i, Tensor) and i.dtype.kind not in "iu"):
        raise TypeError(f"switch: index must be an integer, got "
                        f"{i.dtype if isinstance(i, Tensor) else type(i).__name__}")
    if len(branches) == 1:
        return branches[0](*operands)
    return _run_branches("switch", i, branches, [f"branches[{k}]" for k in range(len(branches))],
                         operands)


# --- while_loop ------------------------------------------------------------------------------
class Loop:
    """A while loop's traced test and body, both on (constants, carry, their own captured)."""

    def __init__(self, test: Body, body: Body, n_k: int, n_carry: int) -> None:
        self.test, self.body = test, body
        self.n_k, self.n_carry = n_k, n_carry
        self.metas = body.metas
        self.derived: dict = {}

    def inputs(self, ks: list, carry: list) -> list:
        return list(ks) + list(self.test.rec.captured) + list(self.body.rec.captured) + \
            list(carry)

    def split(self, args) -> tuple[list, list, list, list]:
        """(constants, the test's captured, the body's captured, carry) of the inputs."""
        a, b = self.n_k, self.n_k + len(self.test.rec.captured)
        c = b + len(self.body.rec.captured)
        return list(args[:a]), list(args[a:b]), list(args[b:c]), list(args[c:])

    def __repr__(self) -> str:
        return f"<while_loop: {self.n_carry} carried, {self.n_k} constants>"


def _trace_loop(test_fn: Callable, body_fn: Callable, ks: list, carry: list,
                what: str = "while_loop") -> Loop:
    """Trace ``test_fn(ks, carry) -> bool scalar`` and ``body_fn(ks, carry) -> carry``."""
    nk = len(ks)
    test = _trace(lambda v, _c, _x: ([], [test_fn(v[:nk], v[nk:])]), ks + carry, [], [],
                  what, one_dtype=False, part="cond_fun")
    shape, dt = test.metas[0]
    if shape != () or dt.kind != "b":
        raise TypeError(f"{what}: cond_fun must return a boolean scalar, got shape {shape} {dt}")
    body = _trace(lambda v, _c, _x: ([], list(body_fn(v[:nk], v[nk:]))), ks + carry, [], [],
                  what, one_dtype=False, part="body_fun")
    if len(body.metas) != len(carry):
        raise ShapeError(f"{what}: body_fun returned {len(body.metas)} leaves for a carry of "
                         f"{len(carry)}")
    for k, (got, c) in enumerate(zip(body.metas, carry)):
        want = (tuple(c.shape), c.dtype)
        if (tuple(got[0]), got[1]) != want:
            raise (DTypeError if tuple(got[0]) == want[0] else ShapeError)(
                _leaf_error(f"{what}: body_fun", k, got, want)
                + "; the carry must keep its shapes and dtypes")
    return Loop(test, body, nk, len(carry))


def _needs_node(ins: list) -> bool:
    return modes().grad_enabled and any(
        isinstance(t, Tensor) and t.requires_grad and _is_float(t) for t in ins)


def _while_bind(loop: Loop, ins: list, group: tuple) -> Tensor:
    """Bind the loop primitive for the outputs at ``group``. The primitive itself records no
    node; when an input requires grad, one node of the rule below hangs on its result, whose
    JVP is a loop of the body's JVP and whose VJP says why there is none."""
    params = {"loop": loop, "group": group, "fuse": _fusing()}
    out = bind(while_p, tuple(ins), params)
    if modes().traces or not _needs_node(ins) or not B.is_float(out.dtype):
        return out  # (under vmap the batching rule binds the loop underneath, which records)
    parents = tuple((a.node or a) if isinstance(a, Tensor) and a.requires_grad else None
                    for a in ins)
    node = Node.make(_while_rule, params, parents, tuple(ins), out._data,
                     tuple(a._data.shape if isinstance(a, Tensor) else () for a in ins), None)
    return Tensor._of(out._data, node, True)


def _while_apply(loop: Loop, ks: list, carry: list) -> list:
    ins = loop.inputs(ks, carry)
    outs: list = [None] * loop.n_carry
    for group in _groups(loop.metas):
        for k, t in zip(group, _unpack(_while_bind(loop, ins, group), loop.metas, group)):
            outs[k] = t
    return outs


def _while_fwd(xp, *arrays, loop: Loop, group: tuple, fuse: bool = False):
    ks, ct, cb, carry = loop.split(arrays)
    test, step = loop.test.program(fuse).run, loop.body.program(fuse).run
    while bool(test(ks + carry + ct)[0]):
        carry = step(ks + carry + cb)
    return _pack(xp, carry, loop.metas, group)


def _while_vjp(needs, g, ans, *args, **params):
    raise GradError("while_loop: reverse-mode differentiation (grad, vjp, backward) is not "
                    "supported: the trip count is decided by values at run time, so the steps "
                    "are not kept. Use lax.fori_loop with Python int bounds or lax.scan with a "
                    "fixed length (as in JAX); forward mode (jvp, jacfwd) works")


def _while_jvp(tangents, ans, *args, loop: Loop, group: tuple, fuse: bool = False):
    ks, ct, cb, carry = loop.split(args)
    consts = ks + ct + cb
    nk, ntc = len(ks), len(ct)
    fk = tuple(j for j, t in enumerate(tangents[:len(consts)])
               if t is not None and _is_float(consts[j]))
    fc = [j for j, c in enumerate(carry) if _is_float(c)]
    tks = [tangents[j] for j in fk]
    tcs = [zeros_like(carry[j]) if tangents[len(consts) + j] is None
           else tangents[len(consts) + j] for j in fc]
    key = ("jvp", fk)
    jl = loop.derived.get(key)
    if jl is None:
        nc = len(consts)

        def parts(v: list) -> tuple[list, list, list]:
            return v[:nk], v[nk:nk + ntc], v[nk + ntc:nc]

        def test_fn(k2, c2):
            k, t, _ = parts(k2)
            return loop.test(*k, *c2[:len(carry)], *t)[0]

        def body_fn(k2, c2):
            cons, tk = k2[:nc], k2[nc:]
            c, tc = c2[:len(carry)], c2[len(carry):]

            def f(*diff):
                k3 = _substitute(cons, fk, diff[:len(fk)])
                c3 = _substitute(c, fc, diff[len(fk):])
                k, _, b = parts(k3)
                return loop.body(*k, *c3, *b)

            prim = [cons[j] for j in fk] + [c[j] for j in fc]
            out, tout = _jvp(f, tuple(prim), tuple(list(tk) + list(tc)))
            return list(out) + [tout[j] for j in fc]

        jl = loop.derived[key] = _trace_loop(test_fn, body_fn, consts + tks, carry + tcs,
                                             "while_loop (jvp)")
    where_t = [len(carry) + fc.index(k) for k in group]
    return _while_bind(jl, jl.inputs(consts + tks, carry + tcs), tuple(where_t))


def _while_batch(vals, bdims, loop: Loop, group: tuple, fuse: bool = False):
    size = size_of(vals, bdims)
    ks, ct, cb, carry = loop.split(vals)
    kb, ctb, cbb, carryb = loop.split(bdims)
    consts = [front(v, b) for v, b in zip(ks + ct + cb, kb + ctb + cbb)]
    ax = tuple(None if b is None else 0 for b in kb + ctb + cbb)
    nk, ntc, nc = len(ks), len(ct), loop.n_carry
    # which carries become batched (a fixed point over the body), then whether the test is
    batched_c = {j for j, b in enumerate(carryb) if b is not None}
    kpos = [j for j in range(nk) if ax[j] is not None]
    bpos = [nk + nc + j for j in range(len(cb)) if ax[nk + ntc + j] is not None]
    while True:
        grown = batched_c | _depends(loop.body, kpos + bpos + [nk + j for j in batched_c])
        if grown == batched_c:
            break
        batched_c = grown
    tpos = [nk + nc + j for j in range(ntc) if ax[nk + j] is not None]
    per_example = bool(_depends(loop.test, kpos + tpos + [nk + j for j in batched_c]))
    init = [batched(v, b, size) for v, b in zip(carry, carryb)]
    metas = [((size,) + tuple(s), dt) for s, dt in loop.metas]
    if size == 0:
        return zeros((0, sum(_numel(metas[k][0][1:]) for k in group)),
                     dtype=metas[group[0]][1]), 0
    key = ("vmap", ax, per_example)
    vl = loop.derived.get(key)
    if vl is None:
        n = len(consts)
        t_ax = ax[:nk] + (0,) * nc + ax[nk:nk + ntc]
        b_ax = ax[:nk] + (0,) * nc + ax[nk + ntc:]

        def tests(k2, c2):
            return _vmapped(loop.test, k2[:nk] + c2 + k2[nk:nk + ntc], t_ax, size)[0]

        def test_fn(k2, c2):
            p = tests(k2, c2)
            return _any(p) if per_example else p[0]

        def body_fn(k2, c2):
            new = _vmapped(loop.body, k2[:nk] + c2 + k2[nk + ntc:n], b_ax, size)
            if not per_example:
                return new
            p = tests(k2, c2)  # the finished examples keep their carry
            return [where(reshape(p, (size,) + (1,) * (o.ndim - 1)), o, c)
                    for o, c in zip(new, c2)]

        vl = loop.derived[key] = _trace_loop(test_fn, body_fn, consts, init, "while_loop (vmap)")
    outs = _unpack(_while_bind(vl, vl.inputs(consts, init), group), metas, group)
    return _pack_batched(outs, size), 0


while_p = primitive("while_loop", _while_fwd, batch=_while_batch, kind="control",
                    promote=False, operands=None,
                    doc="A loop run while a traced test holds (see nodegrad.lax.while_loop).")
# the node hung on a loop's result when an input requires grad (not a registered primitive:
# its forward is while_loop's; it carries the JVP, and a VJP that explains why there is none)
_while_rule = Primitive("while_loop", None, None, _while_vjp, _while_jvp, None, "control",
                        "inputs", False, "The differentiation rules of while_loop.")


def while_loop(cond_fun: Callable, body_fun: Callable, init_val: Any) -> Any:
    """JAX's ``lax.while_loop``: ``val = body_fun(val)`` while ``cond_fun(val)``.

    Both functions are traced once; the trip count is decided when the primitive runs (at
    every replay under ``ng.jit``). Forward-mode differentiable (jvp); reverse mode raises, use
    ``fori_loop`` with Python int bounds or ``scan``. Under ``vmap`` with a batched test the
    loop runs until every example is done, each keeping its carry from the step it finished."""
    if not callable(cond_fun) or not callable(body_fun):
        raise TypeError(f"while_loop: cond_fun and body_fun must be callables, got "
                        f"{type(cond_fun).__name__} and {type(body_fun).__name__}")
    leaves, c_def = tree_flatten(init_val)
    leaves = _as_tensors(leaves, "while_loop: init_val")
    if not leaves:
        raise ValueError("while_loop: init_val holds no tensors, so the loop has nothing to "
                         "carry")

    def body_fn(_k, c):
        out, d = tree_flatten(body_fun(tree_unflatten(c_def, c)))
        if d != c_def:
            raise ShapeError(f"while_loop: body_fun returned a tree of structure {d}, but "
                             f"init_val has {c_def}")
        return out

    loop = _trace_loop(lambda _k, c: cond_fun(tree_unflatten(c_def, c)), body_fn, [], leaves)
    return tree_unflatten(c_def, _while_apply(loop, [], leaves))


# --- PyTorch's spellings -----------------------------------------------------------------------
def torch_cond(pred: Any, true_fn: Callable, false_fn: Callable,
               operands: tuple | list = ()) -> Any:
    """PyTorch's ``torch.cond(pred, true_fn, false_fn, operands)``: ``cond`` with the operands
    given as one tuple; ``pred`` a Python bool or a one-element tensor."""
    if not isinstance(operands, tuple | list):
        raise TypeError(f"cond: operands must be a tuple or list of tensors, got "
                        f"{type(operands).__name__}")
    if isinstance(pred, Tensor) and pred.ndim and pred.numel() == 1:
        pred = reshape(pred, ())
    return cond(pred, true_fn, false_fn, *operands)


def torch_while_loop(cond_fn: Callable, body_fn: Callable,
                     carried_inputs: tuple | list) -> Any:
    """PyTorch's ``torch.while_loop(cond_fn, body_fn, carried_inputs)``: both functions take
    the carried tensors as separate arguments; the result has the form ``body_fn`` returns (a
    tuple, a list, or one tensor for one carried input), as in PyTorch."""
    if not isinstance(carried_inputs, tuple | list):
        raise TypeError(f"while_loop: carried_inputs must be a tuple or list of tensors, got "
                        f"{type(carried_inputs).__name__}")
    form: list = []

    def body(c):
        out = body_fn(*c)
        form.append(type(out) if isinstance(out, tuple | list) else None)
        return tuple(out) if isinstance(out, tuple | list) else (out,)

    res = while_loop(lambda c: cond_fn(*c), body, tuple(carried_inputs))
    if form[0] is None and len(res) == 1:
        return res[0]
    return form[0](res) if form[0] is not None else res
