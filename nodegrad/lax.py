"""Structured loops with JAX's semantics: ``scan`` and ``fori_loop`` (``nodegrad.lax``); the
branches and the while loop (``cond``, ``switch``, ``while_loop``) live in :mod:`.lax_control`.

The loop body is traced once into a small program of primitives (its closed-over tensors become
explicit inputs) and the whole loop is one ``scan`` primitive: its forward replays the body's
program once per step, its VJP is a reverse scan of the body's VJP over the saved carries, its
JVP a scan of the body's JVP, its batching rule a scan of the vmapped body. So under ``ng.jit``
a loop of any length is one instruction of the forward program, and one of the backward.
The rules live here, with the transforms they are built from, because they are transforms of
the body (the primitive's results are one packed array, unpacked by slicing).
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import _backend as B
from .autodiff import modes
from .batching import BatchTracer, batched, front, size_of
from .errors import DTypeError, JitError, ShapeError
from .func.grad import vjp as _vjp
from .func.jvp import jvp as _jvp
from .func.tree import tree_flatten, tree_map, tree_unflatten
from .func.vmap import vmap as _vmap
from .jit.program import Program
from .jit.trace import Recorder, _Lifted
from .ops.index import getitem, index_update, where
from .ops.shape import concatenate, flip, moveaxis, reshape, stack
from .primitive import bind, primitive
from .tensor import Tensor, arange, tensor, zeros_like

__all__ = ["scan", "fori_loop", "cond", "switch", "while_loop", "torch_cond",
           "torch_while_loop", "map", "associative_scan", "select", "stop_gradient",
           "dynamic_slice", "dynamic_update_slice", "dynamic_slice_in_dim",
           "dynamic_index_in_dim", "dynamic_update_slice_in_dim", "dynamic_update_index_in_dim"]


# --- the body: traced once, run as a program (arrays) or interpreted (tensors) ----------------
class _BodyRecorder(Recorder):
    """A recorder for a loop body: tensors it reads from outside become inputs, and steps with
    effects (random draws, in-place updates) are refused."""

    def __init__(self, what: str = "scan", part: str = "loop body") -> None:
        super().__init__()
        self.what, self.part = what, part  # named in the errors below
        self.eqns: list = []  # (primitive, params, input slots, output slot)
        self.captured: list = []  # tensors the body closes over, in slot order
        self.captured_slots: list = []
        self.tracers: dict = {}  # id(batched tensor) -> its slot

    def record(self, prim, args, datas, params, out, backend) -> None:
        super().record(prim, args, datas, params, out, backend)
        i = self.instrs[-1]
        self.eqns.append((prim, i.params, i.ins, i.out))  # an index made an input: lifted

    def slot_of(self, a, d) -> int:
        if type(a) is BatchTracer:  # a batched tensor closed over: its array is a poison
            s = self.tracers.get(id(a))  # shared by every tracer of its shape, so its identity
            if s is None:  # (not the array's) names the input
                s = self.tracers[id(a)] = self._new(d)
                self.captured.append(a)
                self.captured_slots.append(s)
            return s
        if isinstance(a, Tensor) and B.is_array(d) and id(d) not in self.slot \
                and id(d) not in self.aliases:
            s = self._new(d)
            self.captured.append(a)
            self.captured_slots.append(s)
            return s
        return super().slot_of(a, d)

    def effect(self, fn, args, kwargs):
        raise JitError(f"{self.what}: the {self.part} calls {getattr(fn, '__qualname__', fn)!r}, "
                       "a step with effects (a random draw, an optimiser update); draw random "
                       "numbers outside and pass them in")

    def mutate(self, name, fn, target, *args, params=None):
        raise JitError(f"{self.what}: the {self.part} changes a tensor in place ({name}); return "
                       "the new value instead")

    def accumulate(self, fn, leaf, g, create_graph):
        raise JitError(f"{self.what}: the {self.part} calls backward(); use nodegrad.grad or "
                       "vjp inside it instead")

    def concrete(self, data, what: str) -> None:
        if id(data) in self.slot:
            raise JitError(f"{self.what}: {what} on a traced value inside the {self.part}: it "
                           "is traced once, so Python control flow cannot depend on its values; "
                           "use ng.where, masks or nodegrad.lax.cond instead")


def _bind_lifted(prim, params: dict, vals: tuple):
    """An op of the body whose index holds arrays computed in the body (``xs[i]`` with the loop
    counter ``i``): the recorder made them extra inputs (:class:`_Lifted` markers in the index);
    here they go back into the index, as tensors for ``getitem`` (which takes batched ones)."""
    idx = params["index"]
    n = len(vals) - sum(type(e) is _Lifted for e in idx)
    extra = vals[n:]
    index = tuple(extra[e.j] if type(e) is _Lifted else e for e in idx)
    if prim.name == "getitem":
        return getitem(vals[0], index)
    if any(type(t) is BatchTracer for t in extra):
        raise NotImplementedError(f"{prim.name}: an index computed in a loop body from a value "
                                  "batched by vmap is not supported here; index with getitem")
    index = tuple(t._data if isinstance(t, Tensor) else t for t in index)
    return bind(prim, vals[:n], {**params, "index": index})


class Body:
    """A loop body ``(consts, carry, x) -> (carry, y)`` on flat lists, traced once.

    The last ``n_hist`` y outputs are the incoming carries (kept when a gradient is needed)."""

    def __init__(self, rec: _BodyRecorder, consts, carry, xs, outs, n_carry: int,
                 n_hist: int = 0) -> None:
        self.rec = rec
        self.in_slots = consts + rec.captured_slots + carry + xs
        self.out_slots = outs
        self.n_consts = len(consts) + len(rec.captured_slots)
        self.n_carry, self.n_x, self.n_hist = n_carry, len(xs), n_hist
        self.n_y = len(outs) - n_carry
        self.metas = rec.metas  # (shape, dtype) of each output, per step
        self.dtype = self.metas[0][1] if self.metas else None
        self._programs: dict = {}  # fuse flag -> the body's array program
        self.derived: dict = {}
        self.paired = None  # (backward body, fk, fx, n_y, n_res) of a residual-saving forward

    def with_history(self) -> Body:
        """This body, also returning the incoming carries as outputs (the VJP reads them)."""
        b = self.derived.get("hist")
        if b is None:
            carry = self.in_slots[self.n_consts:self.n_consts + self.n_carry]
            b = Body.__new__(Body)
            b.__dict__.update(self.__dict__)
            b.out_slots = self.out_slots + carry
            b.n_y, b.n_hist = self.n_y + self.n_carry, self.n_carry
            b.metas = self.metas + self.metas[:self.n_carry]
            b._programs, b.derived, b.paired = {}, {}, None
            self.derived["hist"] = b
        return b

    def program(self, fuse: bool = False) -> Program:
        """The body as an array program, optimised by jit's passes (CSE, folding, kept buffers:
        bit-identical results) and, with ``fuse`` (a jitted step's scan), with its elementwise
        chains fused; compiled on first use. The carry and the per-step outputs are outputs of
        the program, so they never share a kept buffer: each step returns new arrays."""
        prog = self._programs.get(fuse)
        if prog is None:
            r = self.rec
            prog = self._programs[fuse] = Program(
                list(r.instrs), r.nslots, r.consts, self.in_slots, self.out_slots, r.backend,
                meta=dict(r.avals), fuse=fuse)
        return prog

    def __call__(self, *ins) -> list:
        """Run the body on tensors, primitive by primitive (so transforms see every step)."""
        env = dict(self.rec.consts)
        env.update(zip(self.in_slots, ins))
        for prim, params, args, out in self.rec.eqns:
            vals = tuple(env[s] for s in args)
            idx = params.get("index") if params else None
            if type(idx) is tuple and any(type(e) is _Lifted for e in idx):
                env[out] = _bind_lifted(prim, params, vals)
            else:
                env[out] = bind(prim, vals, params)
        return [v if isinstance(v, Tensor) else Tensor._of(v)
                for v in (env[s] for s in self.out_slots)]

    def sizes(self, length: int) -> list:
        """Element counts of the packed outputs: final carry, then each stacked y."""
        out = []
        for k, (shape, _) in enumerate(self.metas):
            n = 1
            for d in shape:
                n *= d
            out.append(n if k < self.n_carry else n * length)
        return out

    def unpack(self, packed: Tensor, length: int) -> tuple[list, list]:
        """The final carry and the stacked ys (all of them) from the packed result."""
        res, at = [], 0
        for k, (n, (shape, _)) in enumerate(zip(self.sizes(length), self.metas)):
            full = shape if k < self.n_carry else (length,) + shape
            res.append(reshape(packed[at:at + n], full))
            at += n
        return res[:self.n_carry], res[self.n_carry:]

    def __repr__(self) -> str:
        return (f"<scan body: {len(self.rec.eqns)} primitives, {self.n_consts} constants, "
                f"{self.n_carry} carried, {self.n_x} scanned>")


def _first_example(t: BatchTracer):
    """The array of the first example of a vmap tracer (whose own array is poison: an integer
    one would be an index out of any range while the body is traced)."""
    a = _first_example(t.val) if type(t.val) is BatchTracer else t.val._data
    if a.shape[t.bdim]:
        return a[(slice(None),) * t.bdim + (0, Ellipsis)]  # (a 0-d array, not a scalar)
    return B.backend_of(a).xp.zeros(a.shape[:t.bdim] + a.shape[t.bdim + 1:], dtype=a.dtype)


def _example(t, k: int | None) -> Tensor:
    """A fresh tensor standing for ``t`` (or its ``k``-th slice) while the body is traced."""
    d = _first_example(t) if type(t) is BatchTracer else t._data if isinstance(t, Tensor) else t
    if k is not None:
        d = d[0, ...] if d.shape[0] else B.backend_of(d).xp.zeros(d.shape[1:], dtype=d.dtype)
    return Tensor._of(d.view() if B.is_array(d) else d)


def _trace(fn: Callable, consts: list, carry: list, xs: list, what: str = "scan",
           one_dtype: bool = True, part: str = "loop body") -> Body:
    """Trace ``fn(consts, carry, x) -> (carry, y)`` (flat lists of tensors) once; with
    ``one_dtype`` the outputs must share a dtype (scan packs them into one array)."""
    rec = _BodyRecorder(what.split(" ")[0], part)
    rec.fuse = _fusing()  # a nested loop's body fuses when the enclosing jitted step does
    ks, cs, xt = ([_example(t, None) for t in consts], [_example(t, None) for t in carry],
                  [_example(t, 0) for t in xs])
    slots = [[rec._new(t._data) for t in group] for group in (ks, cs, xt)]
    for t in ks + cs + xt:
        if rec.backend is None:
            rec.backend = t.backend
    m = modes()
    saved = m.jit, m.traces, m.grad_enabled
    m.jit, m.traces, m.grad_enabled = rec, (), False
    try:
        new_c, ys = fn(ks, cs, xt)
        outs = []
        for o in list(new_c) + list(ys):
            if not isinstance(o, Tensor):
                o = tensor(o)
            outs.append(o)
        out_slots = [rec.slot_of(o, o._data) for o in outs]
    finally:
        m.jit, m.traces, m.grad_enabled = saved
    if rec.fallback is not None:
        raise JitError(f"{what}: {rec.fallback}; inside a loop body every parameter must be "
                       "known when it is traced")
    if rec.backend is None:
        rec.backend = B.CPU
    for k, (c, o) in enumerate(zip(cs, outs)):
        if tuple(c.shape) != tuple(o.shape) or c.dtype != o.dtype:
            raise ShapeError(f"{what}: the body's carry output {k} has shape {tuple(o.shape)} "
                             f"{o.dtype}, but the carry came in as {tuple(c.shape)} {c.dtype}; "
                             "the carry must keep its shape and dtype")
    dts = {o.dtype for o in outs}
    if one_dtype and len(dts) > 1:
        raise DTypeError(f"{what}: the carry and the per-step outputs must share one dtype, got "
                        f"{sorted(str(d) for d in dts)}; cast them with .astype()")
    rec.metas = [(tuple(o.shape), o.dtype) for o in outs]
    rec.avals = rec.shapes()
    rec.keep, rec.slot, rec.weak = [], {}, {}  # only the trace needed the example arrays
    return Body(rec, slots[0], slots[1], slots[2], out_slots, len(cs))


def _fusing() -> bool:
    """Whether the scan being bound belongs to a jitted step that fuses its kernels."""
    return bool(getattr(modes().jit, "fuse", False))


def _params(body: Body, length: int, reverse: bool) -> dict:
    return {"body": body, "length": length, "reverse": reverse, "fuse": _fusing()}


def _needs_grad(ts) -> bool:
    return modes().grad_enabled and any(isinstance(t, Tensor) and t.requires_grad for t in ts)


def _apply(body: Body, consts: list, init: list, xs: list, length: int,
           reverse: bool) -> tuple[list, list]:
    """Bind the scan primitive; the final carry and the stacked ys (the history left out)."""
    ins = list(consts) + list(body.rec.captured) + list(init) + list(xs)
    if not body.metas:  # nothing is carried or produced
        return [], []
    b = body
    if _needs_grad(ins) and body.n_carry:
        b = _with_residuals(body, consts + list(body.rec.captured), init, xs)
        if b is None:
            b = body.with_history()
        else:  # the residuals' VJP may have made constants of its own (they are inputs too)
            ins = ins[:len(ins) - len(init) - len(xs)] + list(b.rec.captured) + ins[
                len(ins) - len(init) - len(xs):]
    packed = bind(scan_p, tuple(ins), _params(b, length, reverse))
    carry, ys = b.unpack(packed, length)
    return carry, ys[:body.n_y]


# --- the primitive ----------------------------------------------------------------------------
def _split(body: Body, args) -> tuple[list, list, list]:
    nk, nc = body.n_consts, body.n_carry
    return list(args[:nk]), list(args[nk:nk + nc]), list(args[nk + nc:])


def _scan_fwd(xp, *arrays, body: Body, length: int, reverse: bool, fuse: bool = False):
    consts, carry, xs = _split(body, arrays)
    out = xp.empty(sum(body.sizes(length)), dtype=body.dtype)
    views, at = [], 0
    for k, (n, (shape, _)) in enumerate(zip(body.sizes(length), body.metas)):
        views.append(out[at:at + n].reshape(shape if k < body.n_carry else (length,) + shape))
        at += n
    nc = body.n_carry
    yv = views[nc:]
    run = body.program(fuse).run
    # each step's slices, made at C speed (iterating a 1-d array would give scalars, not 0-d)
    rows = list(zip(*(x if x.ndim > 1 else [x[t, ...] for t in range(length)] for x in xs))) \
        if xs else [()] * length
    for k in range(length):
        t = length - 1 - k if reverse else k
        res = run(consts + carry + list(rows[t]))
        carry = res[:nc]
        for v, y in zip(yv, res[nc:]):
            v[t] = y
    for v, c in zip(views[:nc], carry):
        v[...] = c
    return out


def _is_float(t) -> bool:
    return getattr(t, "dtype", None) is not None and B.is_float(t.dtype)


def _substitute(base: list, where: list, vals) -> list:
    out = list(base)
    for i, v in zip(where, vals):
        out[i] = v
    return out


def _scan_vjp(needs, g, ans, *args, body: Body, length: int, reverse: bool,
              fuse: bool = False):
    consts, init, xs = _split(body, args)
    nk_, nc_ = len(consts), body.n_carry
    nc = body.n_carry
    if body.paired is not None and not modes().grad_enabled:
        # the forward saved the residuals: the backward is a reverse scan of the VJP's
        # cotangent half alone (with create_graph the general path below differentiates all)
        bwd, fk, fx, ny, nres = body.paired
        gc, gy = body.unpack(g, length)
        res = body.unpack(ans, length)[1][ny:ny + nres]
        zk = [zeros_like(consts[i]) for i in fk]
        carry, gxs = _apply(bwd, consts, gc + zk, xs + gy[:ny] + res, length, not reverse)
        return _vjp_result(carry, gxs, fk, fx, len(consts), nc, len(xs))
    if body.n_hist < nc:  # the forward kept no carries (it needed no gradient): run it again
        hb = body.with_history()
        ans = bind(scan_p, args, _params(hb, length, reverse))
        gc, gy = body.unpack(g, length)
        _, extra = hb.unpack(ans, length)
        gy = gy + [zeros_like(h) for h in extra[body.n_y:]]
        hist, body = extra[body.n_y:], hb
    else:
        gc, gy = body.unpack(g, length)
        hist = body.unpack(ans, length)[1][body.n_y - nc:]
    fk = [i for i, t in enumerate(consts) if _is_float(t) and needs[i]]
    fx = [i for i, t in enumerate(xs) if _is_float(t) and needs[nk_ + nc_ + i]]
    key = ("vjp", tuple(fk), tuple(fx))
    bwd = body.derived.get(key)
    zk = [zeros_like(consts[i]) for i in fk]
    if bwd is None:
        bwd = body.derived[key] = _vjp_body(body, fk, fx, consts, gc + zk, hist + xs + gy)[0]
    carry, gxs = _apply(bwd, consts, gc + zk, hist + xs + gy, length, not reverse)
    return _vjp_result(carry, gxs, fk, fx, len(consts), nc, len(xs))


def _vjp_result(carry, gxs, fk, fx, nk: int, nc: int, nx: int) -> tuple:
    gks = dict(zip(fk, carry[nc:]))
    gxd = dict(zip(fx, gxs))
    return tuple([gks.get(i) for i in range(nk)] + carry[:nc] + [gxd.get(i) for i in range(nx)])


def _vjp_body(body: Body, fk: list, fx: list, consts: list, carry: list, xs: list):
    """The body of the reverse scan: (ks; gc, gk; c, x, gy) -> (gc', gk + gk_t; gx), traced on
    the example values given; also the slots of the forward values it recomputes."""
    nc, nx = body.n_carry, body.n_x
    f_outs: list = []

    def step(ks, carry, x):
        gc_, gk_ = carry[:nc], carry[nc:]
        c, xt, gy_ = x[:nc], x[nc:nc + nx], x[nc + nx:]

        def f(*diff):
            k2 = _substitute(ks, fk, diff[:len(fk)])
            x2 = _substitute(xt, fx, diff[len(fk) + nc:])
            return body(*k2, *diff[len(fk):len(fk) + nc], *x2)

        outs, pull = _vjp(f, *[ks[i] for i in fk], *c, *[xt[i] for i in fx])
        rec = modes().jit
        f_outs.extend(rec.slot.get(id(o._data)) for o in outs)
        cots = pull(list(gc_) + list(gy_))
        new_gk = [a + b for a, b in zip(gk_, cots[:len(fk)])]
        return list(cots[len(fk):len(fk) + nc]) + new_gk, list(cots[len(fk) + nc:])

    return _trace(step, consts, carry, xs, "scan (vjp)"), f_outs


class _Part:
    """Part of a traced body's recording (its primal or its cotangent half)."""

    def __init__(self, rec, keep: set, captured: list) -> None:
        self.instrs = [i for i in rec.instrs if i.out in keep]
        self.eqns = [e for e in rec.eqns if e[3] in keep]
        self.consts, self.nslots, self.backend = rec.consts, rec.nslots, rec.backend
        self.captured, self.avals = captured, rec.avals


def _part_body(rec, ins: list, n_consts: int, n_carry: int, n_x: int, outs: list) -> Body:
    b = Body.__new__(Body)
    b.rec, b.in_slots, b.out_slots = rec, ins, outs
    b.n_consts, b.n_carry, b.n_x, b.n_hist = n_consts, n_carry, n_x, 0
    b.n_y = len(outs) - n_carry
    b.metas = [rec.avals[s] for s in outs]
    b.dtype = b.metas[0][1]
    b._programs, b.derived, b.paired = {}, {}, None
    return b


def _with_residuals(body: Body, consts: list, init: list, xs: list) -> Body | None:
    """The forward body that also outputs what its VJP reads (the residuals), paired with the
    cotangent half of that VJP; None when a residual's dtype differs from the outputs'."""
    fk = [i for i, t in enumerate(consts) if _is_float(t) and t.requires_grad]
    fx = [i for i, t in enumerate(xs) if _is_float(t) and t.requires_grad]
    key = ("residuals", tuple(fk), tuple(fx))
    if key in body.derived:
        return body.derived[key]
    nc, nx, ny = body.n_carry, body.n_x, body.n_y
    ex = [Tensor._of(init[0].backend.xp.zeros((1,) + shape, dtype=dt))
          for shape, dt in body.metas]
    gc = [Tensor._of(e._data[0, ...]) for e in ex[:nc]]  # [0, ...]: a 0-d carry stays an array
    zk = [zeros_like(consts[i]) for i in fk]
    hist = [Tensor._of(c._data[None]) for c in init]
    bwd, f_outs = _vjp_body(body, fk, fx, consts, gc + zk, hist + list(xs) + ex[nc:])
    rec, ins = bwd.rec, bwd.in_slots
    k_sl = ins[:bwd.n_consts]
    g_sl = ins[bwd.n_consts:bwd.n_consts + bwd.n_carry]
    c_sl = ins[bwd.n_consts + bwd.n_carry:bwd.n_consts + bwd.n_carry + nc]
    x_sl = ins[bwd.n_consts + bwd.n_carry + nc:bwd.n_consts + bwd.n_carry + nc + nx]
    gy_sl = ins[bwd.n_consts + bwd.n_carry + nc + nx:]
    primal = set(k_sl) | set(c_sl) | set(x_sl) | set(rec.consts)
    for _, _, args, out in rec.eqns:
        if all(a in primal for a in args):
            primal.add(out)
    tangent = {e[3] for e in rec.eqns if e[3] not in primal}
    # values made from the constants alone (a transposed weight) are the same at every step:
    # the backward recomputes them rather than the forward stacking one copy per step
    invariant = set(k_sl) | set(rec.consts)
    for _, _, args, out in rec.eqns:
        if all(a in invariant for a in args):
            invariant.add(out)
    free = set(k_sl) | set(x_sl) | invariant
    res: list = []
    for _, _, args, out in rec.eqns:
        if out in tangent:
            res += [a for a in args if a in primal and a not in free and a not in res]
    res += [s for s in bwd.out_slots if s in primal and s not in free and s not in res]
    result = None
    if None not in f_outs and all(s in primal for s in f_outs) and all(
            rec.avals[s][1] == body.dtype for s in res):
        fwd = _part_body(_Part(rec, primal, rec.captured), k_sl + c_sl + x_sl, len(k_sl), nc,
                         nx, f_outs + res)
        back = _part_body(_Part(rec, tangent | (invariant & primal), []),
                          k_sl + g_sl + x_sl + gy_sl + res,
                          len(k_sl), len(g_sl), nx + len(gy_sl) + len(res), bwd.out_slots)
        back.metas = bwd.metas
        fwd.paired = (back, fk, fx, ny, len(res))
        result = fwd
    body.derived[key] = result
    return result


def _scan_jvp(tangents, ans, *args, body: Body, length: int, reverse: bool,
              fuse: bool = False):
    consts, init, xs = _split(body, args)
    tk, tc, tx = _split(body, tangents)
    nk, nc, nx = len(consts), body.n_carry, len(xs)
    fk = [i for i, t in enumerate(tk) if t is not None and _is_float(consts[i])]
    fx = [i for i, t in enumerate(tx) if t is not None and _is_float(xs[i])]
    tc = [zeros_like(c) if t is None else t for c, t in zip(init, tc)]
    key = ("jvp", tuple(fk), tuple(fx))
    jb = body.derived.get(key)
    if jb is None:
        def step(ks2, carry2, x2):
            ks, tks, c, tcs = ks2[:nk], ks2[nk:], carry2[:nc], carry2[nc:]
            xt, txs = x2[:nx], x2[nx:]

            def f(*diff):
                k2 = _substitute(ks, fk, diff[:len(fk)])
                x3 = _substitute(xt, fx, diff[len(fk) + nc:])
                return body(*k2, *diff[len(fk):len(fk) + nc], *x3)

            prim = [ks[i] for i in fk] + list(c) + [xt[i] for i in fx]
            out, tout = _jvp(f, tuple(prim), tuple(list(tks) + list(tcs) + list(txs)))
            return list(out[:nc]) + list(tout[:nc]), list(out[nc:]) + list(tout[nc:])

        jb = body.derived[key] = _trace(step, consts + [tk[i] for i in fk], init + tc,
                                        xs + [tx[i] for i in fx], "scan (jvp)")
    carry, ys = _apply(jb, consts + [tk[i] for i in fk], init + tc, xs + [tx[i] for i in fx],
                       length, reverse)
    ny = body.n_y
    parts = carry[nc:] + ys[ny:]
    return concatenate([reshape(p, (p.numel(),)) for p in parts], 0)


def _scan_batch(vals, bdims, body: Body, length: int, reverse: bool, fuse: bool = False):
    size = size_of(vals, bdims)
    consts, init, xs = _split(body, vals)
    kb, cb, xb = _split(body, bdims)
    consts = [front(v, b) for v, b in zip(consts, kb)]
    init = [batched(v, b, size) for v, b in zip(init, cb)]
    xs = [v if b is None else moveaxis(v, b, 1) for v, b in zip(xs, xb)]
    kin = tuple(None if b is None else 0 for b in kb)
    xin = tuple(None if b is None else 0 for b in xb)
    key = ("vmap", kin, xin)
    vb = body.derived.get(key)
    nc = body.n_carry
    if vb is None:
        axes = kin + (0,) * nc + xin

        def step(ks, carry, x):
            out = _vmap(lambda *a: body(*a), in_axes=axes, out_axes=0)(*ks, *carry, *x)
            return list(out[:nc]), list(out[nc:])

        vb = body.derived[key] = _trace(step, consts, init, xs, "scan (vmap)")
    carry, ys = _apply(vb, consts, init, xs, length, reverse)
    parts = [reshape(c, (size, -1)) for c in carry]
    parts += [reshape(moveaxis(y, 1, 0), (size, -1)) for y in ys]
    return concatenate(parts, 1), 0


scan_p = primitive("scan", _scan_fwd, vjp_all=_scan_vjp, jvp=_scan_jvp, batch=_scan_batch,
                   saves="both", kind="control", promote=False, operands=None,
                   doc="A loop over the leading axis of xs (see nodegrad.lax.scan).")


# --- the public functions ---------------------------------------------------------------------
def _as_tensor(x, what: str, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return tensor(x, device=device)
    except Exception as e:
        raise TypeError(f"{what}: expected tensors (or arrays, numbers), got "
                        f"{type(x).__name__}") from e


def _as_tensors(leaves: list, what: str) -> list:
    """The leaves as tensors; numbers and arrays go to the device of the tensors among them
    (a loop counter beside a GPU state lives on the GPU, as in JAX)."""
    device = next((x.device for x in leaves if isinstance(x, Tensor)), None)
    return [_as_tensor(x, what, device) for x in leaves]


def scan(f: Callable, init: Any, xs: Any = None, length: int | None = None,
         reverse: bool = False, unroll: int | bool = 1,
         _split_transpose: bool = False) -> tuple[Any, Any]:
    """JAX's ``lax.scan``: ``carry, y = f(carry, x)`` over the leading axis of ``xs``.

    Returns ``(final carry, ys stacked along a new leading axis)``; ``init``, ``xs`` and the
    outputs may be trees of tensors. ``f`` is traced once: its values cannot steer Python.
    ``unroll`` (how many steps JAX's compiler puts in one loop iteration) is accepted and
    changes nothing here: the loop is one primitive either way, with the same results.
    """
    if isinstance(unroll, bool):
        pass
    elif not isinstance(unroll, int) or unroll < 0:
        raise ValueError(f"scan: unroll must be a non-negative int or a bool, got {unroll!r}")
    c_leaves, c_def = tree_flatten(init)
    x_leaves, x_def = tree_flatten(xs)
    both = _as_tensors(c_leaves + x_leaves, "scan: init and xs")
    c_leaves, x_leaves = both[:len(c_leaves)], both[len(c_leaves):]
    lens = {int(x.shape[0]) if x.ndim else -1 for x in x_leaves}
    if -1 in lens:
        raise ShapeError("scan: every leaf of xs needs a leading axis to scan over, got a 0-d "
                         "tensor")
    if length is not None:
        lens.add(int(length))
    if len(lens) != 1:
        raise ShapeError(f"scan: xs leaves and length disagree on the number of steps: "
                         f"{sorted(lens) if lens else 'no xs and no length'}")
    n = lens.pop()
    y_def: list = []

    def flat(ks, carry, x):
        res = f(tree_unflatten(c_def, carry), None if xs is None else tree_unflatten(x_def, x))
        if not isinstance(res, tuple) or len(res) != 2:
            raise TypeError(f"scan: f must return a pair (carry, y), got {type(res).__name__}")
        cl, cd = tree_flatten(res[0])
        if cd != c_def:
            raise ShapeError(f"scan: f returned a carry of structure {cd}, but init has {c_def}")
        yl, yd = tree_flatten(res[1])
        y_def.append(yd)
        return cl, yl

    body = _trace(flat, [], c_leaves, x_leaves)
    carry, ys = _apply(body, [], c_leaves, x_leaves, n, bool(reverse))
    return tree_unflatten(c_def, carry or c_leaves), tree_unflatten(y_def[0], ys)


_BODIES: OrderedDict = OrderedDict()  # scan_cached's traced bodies, least recently used first


def scan_cached(key: Any, f: Callable, consts: list, init: list, xs: list,
                reverse: bool = False) -> tuple[list, list]:
    """``scan`` of ``f(consts, carry, x) -> (carry, y)`` on flat lists of tensors, with the
    traced body kept between calls: for library loops (the RNN layers) whose ``key`` fixes all
    that the trace depends on besides the inputs' shapes and dtypes. Not for closures."""
    n = int(xs[0].shape[0])
    sig = (key, tuple((tuple(t.shape), t.dtype.str, t.backend.name) for t in consts + init + xs))
    body = _BODIES.get(sig)
    if body is None:
        body = _BODIES[sig] = _trace(lambda k, c, x: f(k, c, x), consts, init, xs)
        if len(_BODIES) > 64:
            _BODIES.popitem(last=False)
    else:
        _BODIES.move_to_end(sig)
    return _apply(body, consts, init, xs, n, reverse)


def fori_loop(lower: Any, upper: Any, body_fun: Callable, init_val: Any, *,
              unroll: int | bool | None = None) -> Any:
    """JAX's ``lax.fori_loop``: ``val = body_fun(i, val)`` for i in range(lower, upper).

    Python int bounds make one scan over ``arange(lower, upper)`` (differentiable both ways);
    a tensor bound makes a ``while_loop`` whose trip count is decided at run time (forward-mode
    differentiable only, as in JAX). ``i`` is a 0-d integer tensor. ``unroll`` is passed to
    :func:`scan` (a hint there); as in JAX, it needs Python int bounds."""
    if unroll is not None and not isinstance(unroll, bool) and (
            not isinstance(unroll, int) or unroll < 0):
        raise ValueError(f"fori_loop: unroll must be a non-negative int or a bool, got {unroll!r}")
    if isinstance(lower, Tensor) or isinstance(upper, Tensor):
        if unroll is not None:
            raise ValueError("fori_loop: unroll needs Python int bounds (a tensor bound runs "
                             f"as a while_loop), got unroll={unroll!r}")
        return _fori_while(lower, upper, body_fun, init_val)
    bounds = []
    for name, v in (("lower", lower), ("upper", upper)):
        try:
            if isinstance(v, bool):
                raise TypeError
            bounds.append(operator.index(v))
        except TypeError:
            raise TypeError(f"fori_loop: {name} must be a Python int (or an integer tensor, "
                            f"which runs as a while_loop), got {type(v).__name__}") from None
    lower, upper = bounds
    if upper <= lower:
        return init_val
    idx = arange(lower, upper, dtype="int64")
    carry, _ = scan(lambda c, i: (body_fun(i, c), None), init_val, idx,
                    unroll=1 if unroll is None else unroll)
    return carry


def _fori_while(lower: Any, upper: Any, body_fun: Callable, init_val: Any) -> Any:
    """fori_loop with a bound known only at run time: a while_loop over (i, val)."""
    lo, hi = _as_tensor(lower, "fori_loop: lower"), _as_tensor(upper, "fori_loop: upper")
    for name, t in (("lower", lo), ("upper", hi)):
        if t.ndim != 0 or t.dtype.kind not in "iu":
            raise TypeError(f"fori_loop: {name} must be an integer scalar, got shape "
                            f"{tuple(t.shape)} {t.dtype}")
    if lo.dtype != hi.dtype:  # the counter takes the tensor bound's dtype
        lo = lo.astype(hi.dtype) if isinstance(upper, Tensor) else lo
        hi = hi.astype(lo.dtype)
    _, val = while_loop(lambda c: c[0] < hi, lambda c: (c[0] + 1, body_fun(c[0], c[1])),
                        (lo, init_val))
    return val


def select(pred: Any, on_true: Any, on_false: Any) -> Tensor:
    """JAX's ``lax.select``: ``on_true`` where ``pred`` else ``on_false``, elementwise. As in
    JAX nothing broadcasts: ``pred`` is bool, a scalar or of the operands' shape, and the two
    operands have one shape and dtype (``ng.where`` is the broadcasting form)."""
    p, a, b = (x if isinstance(x, Tensor) else tensor(x) for x in (pred, on_true, on_false))
    if p.dtype.kind != "b":
        raise TypeError(f"select: pred must be bool, got dtype {p.dtype}")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise TypeError(f"select: on_true and on_false must have one shape and dtype, got "
                        f"{tuple(a.shape)} {a.dtype} and {tuple(b.shape)} {b.dtype}")
    if p.ndim and p.shape != a.shape:
        raise TypeError(f"select: pred must be a scalar or of shape {tuple(a.shape)}, got "
                        f"{tuple(p.shape)}")
    return where(p, a, b)


# --- dynamic slices: starts that may be traced values (a loop counter, a batched index) --------
def _slice_index(op: str, x: Tensor, starts: Any, sizes: Any, wrap: Any) -> tuple:
    """The index of the block of ``sizes`` at ``starts`` in ``x``, JAX's way: a negative start
    counts from the end (``wrap``), then every start is clamped so the block fits. Python int
    starts give slices (a view); otherwise every axis gets an index array, shaped to broadcast
    into the block (so the axes keep their order)."""
    starts = list(starts) if isinstance(starts, list | tuple) else (
        [starts[k] for k in range(starts.shape[0])] if isinstance(starts, Tensor)
        and starts.ndim == 1 else [starts])
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    wraps = [wrap] * x.ndim if isinstance(wrap, bool) else list(wrap)
    if not len(starts) == len(sizes) == len(wraps) == x.ndim:
        raise ValueError(f"{op}: need one start and one size per axis of the operand (ndim "
                         f"{x.ndim}), got {len(starts)} starts and {len(sizes)} sizes")
    for n, d in zip(sizes, x.shape):
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= d:
            raise ValueError(f"{op}: slice sizes must be ints within the operand's shape "
                             f"{tuple(x.shape)}, got {sizes}")
    for st in starts:
        if isinstance(st, bool) or not (isinstance(st, int | B.np.integer) or (
                isinstance(st, Tensor) and st.ndim == 0 and st.dtype.kind in "iu")):
            raise TypeError(f"{op}: start indices must be integer scalars (ints or 0-d "
                            f"integer tensors), got {st!r}")
    if all(isinstance(st, int | B.np.integer) for st in starts):
        out = []
        for st, n, d, w in zip(starts, sizes, x.shape, wraps):
            st = int(st) + d if w and st < 0 else int(st)
            st = min(max(st, 0), d - n)
            out.append(slice(st, st + n))
        return tuple(out)
    out = []
    for k, (st, n, d, w) in enumerate(zip(starts, sizes, x.shape, wraps)):
        if not isinstance(st, Tensor):
            st = tensor(int(st))
        if w:
            st = where(st < 0, st + d, st)
        st = st.clip(0, d - n)
        shape = [1] * x.ndim
        shape[k] = n
        out.append(reshape(arange(n, device=x.device) + st, tuple(shape)))
    return tuple(out)


def _operand(op: str, x: Any) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: the operand must be a tensor, got {type(x).__name__}")
    return x


def dynamic_slice(operand: Tensor, start_indices: Any, slice_sizes: Any, *,
                  allow_negative_indices: bool | Any = True) -> Tensor:
    """JAX's ``lax.dynamic_slice``: the block of ``slice_sizes`` starting at ``start_indices``
    (one per axis; ints or 0-d integer tensors, traced ones too), each start clamped so the
    block fits (a negative one first counts from the end). Differentiable; under ``vmap`` the
    starts may be batched."""
    x = _operand("dynamic_slice", operand)
    return getitem(x, _slice_index("dynamic_slice", x, start_indices, slice_sizes,
                                   allow_negative_indices))


def dynamic_update_slice(operand: Tensor, update: Tensor, start_indices: Any, *,
                         allow_negative_indices: bool | Any = True) -> Tensor:
    """JAX's ``lax.dynamic_update_slice``: a copy of ``operand`` with ``update`` written at
    ``start_indices`` (clamped as in :func:`dynamic_slice`); differentiable in both."""
    x = _operand("dynamic_update_slice", operand)
    u = update if isinstance(update, Tensor) else tensor(update)
    if u.ndim != x.ndim or u.dtype != x.dtype:
        raise TypeError(f"dynamic_update_slice: the update must have the operand's rank and "
                        f"dtype ({x.ndim}, {x.dtype}), got {u.ndim}, {u.dtype}")
    idx = _slice_index("dynamic_update_slice", x, start_indices, tuple(u.shape),
                       allow_negative_indices)
    return index_update(x, idx, u)


def _in_dim(op: str, x: Tensor, start: Any, axis: int) -> list:
    """Starts for a slice along ``axis`` only (0 elsewhere)."""
    if isinstance(axis, bool) or not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis must be an int in [-{x.ndim}, {x.ndim}), got {axis!r}")
    starts: list = [0] * x.ndim
    starts[axis % x.ndim] = start
    return starts


def dynamic_slice_in_dim(operand: Tensor, start_index: Any, slice_size: int, axis: int = 0, *,
                         allow_negative_indices: bool = True) -> Tensor:
    """JAX's ``lax.dynamic_slice_in_dim``: :func:`dynamic_slice` along one ``axis``."""
    return _slice_in_dim("dynamic_slice_in_dim", operand, start_index, slice_size, axis,
                         allow_negative_indices)


def _slice_in_dim(op: str, operand, start, size: int, axis: int, wrap) -> Tensor:
    x = _operand(op, operand)
    starts = _in_dim(op, x, start, axis)
    sizes = list(x.shape)
    sizes[axis % x.ndim] = size
    return getitem(x, _slice_index(op, x, starts, sizes, wrap))


def dynamic_index_in_dim(operand: Tensor, index: Any, axis: int = 0, keepdims: bool = True, *,
                         allow_negative_indices: bool = True) -> Tensor:
    """JAX's ``lax.dynamic_index_in_dim``: the slice at ``index`` along ``axis`` (kept as a
    size-1 axis with ``keepdims``)."""
    out = _slice_in_dim("dynamic_index_in_dim", operand, index, 1, axis, allow_negative_indices)
    return out if keepdims else out.squeeze(axis % operand.ndim)


def dynamic_update_slice_in_dim(operand: Tensor, update: Tensor, start_index: Any, axis: int, *,
                                allow_negative_indices: bool = True) -> Tensor:
    """JAX's ``lax.dynamic_update_slice_in_dim``: :func:`dynamic_update_slice` along ``axis``."""
    return _update_in_dim("dynamic_update_slice_in_dim", operand, update, start_index, axis,
                          allow_negative_indices)


def _update_in_dim(op: str, operand, update, start, axis: int, wrap) -> Tensor:
    x = _operand(op, operand)
    u = update if isinstance(update, Tensor) else tensor(update)
    if u.ndim != x.ndim or u.dtype != x.dtype:
        raise TypeError(f"{op}: the update must have the operand's rank and dtype ({x.ndim}, "
                        f"{x.dtype}), got {u.ndim}, {u.dtype}")
    starts = _in_dim(op, x, start, axis)
    return index_update(x, _slice_index(op, x, starts, tuple(u.shape), wrap), u)


def dynamic_update_index_in_dim(operand: Tensor, update: Tensor, index: Any, axis: int, *,
                                allow_negative_indices: bool = True) -> Tensor:
    """JAX's ``lax.dynamic_update_index_in_dim``: ``update`` written at ``index`` along
    ``axis`` (``update`` with or without that size-1 axis)."""
    op = "dynamic_update_index_in_dim"
    x = _operand(op, operand)
    u = update if isinstance(update, Tensor) else tensor(update)
    _in_dim(op, x, index, axis)  # the axis checked before it is used
    if u.ndim == x.ndim - 1:
        u = u.unsqueeze(axis % x.ndim)
    return _update_in_dim(op, x, u, index, axis, allow_negative_indices)


def stop_gradient(x: Any) -> Any:
    """JAX's ``lax.stop_gradient``: ``x`` (a tensor or a tree of them) as a value that every
    transform (grad, jvp, vmap's gradients) treats as a constant."""
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, x)


def map(f: Callable, xs: Any, *, batch_size: int | None = None) -> Any:  # noqa: A001
    """JAX's ``lax.map``: ``f`` applied to each slice of ``xs`` along its leading axis (a tree
    of tensors), the results stacked; a scan, so ``f`` is traced once. ``batch_size`` maps that
    many slices at a time with ``vmap`` (the same values)."""
    if batch_size is None:
        return scan(lambda _, x: ((), f(x)), (), xs)[1]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"map: batch_size must be a positive int or None, got {batch_size!r}")
    leaves, td = tree_flatten(xs)
    leaves = _as_tensors(leaves, "map: xs")
    if not leaves:
        raise ValueError("map: xs holds no tensors to map over")
    n = int(leaves[0].shape[0]) if leaves[0].ndim else -1
    if n < 0 or any(x.ndim == 0 or int(x.shape[0]) != n for x in leaves):
        raise ShapeError(f"map: every leaf of xs needs the same leading axis, got shapes "
                         f"{[tuple(x.shape) for x in leaves]}")
    k = n // batch_size * batch_size
    vf = _vmap(lambda *a: f(tree_unflatten(td, list(a))))
    parts = []
    if k:
        chunks = [reshape(x[:k], (k // batch_size, batch_size) + tuple(x.shape[1:]))
                  for x in leaves]
        ys = scan(lambda _, c: ((), vf(*c)), (), chunks)[1]
        parts.append(tree_map(lambda y: reshape(y, (k,) + tuple(y.shape[2:])), ys))
    if k < n:
        parts.append(vf(*[x[k:] for x in leaves]))
    if len(parts) == 1:
        return parts[0]
    return tree_map(lambda a, b: concatenate([a, b], 0), parts[0], parts[1])


def _slice(x: Tensor, axis: int, start: int | None, stop: int | None, step: int = 1) -> Tensor:
    return x[(slice(None),) * axis + (slice(start, stop, step),)]


def associative_scan(fn: Callable, elems: Any, reverse: bool = False, axis: int = 0) -> Any:
    """JAX's ``lax.associative_scan``: the inclusive prefix of ``elems`` (a tensor or a tree of
    them, scanned along ``axis``) under the associative ``fn(a, b)``, by the same
    parallel-prefix recursion as JAX (``fn`` sees slices of many elements at once, so it must
    work elementwise along ``axis``); ``reverse`` scans from the end."""
    if not callable(fn):
        raise TypeError("associative_scan: fn must be callable")
    leaves, td = tree_flatten(elems)
    leaves = _as_tensors(leaves, "associative_scan: elems")
    if not leaves:
        return elems
    nd = leaves[0].ndim
    if not -nd <= axis < nd:
        raise ShapeError(f"associative_scan: axis {axis} is out of range for {nd}-d elems")
    axis %= nd
    n = int(leaves[0].shape[axis])
    if any(x.ndim <= axis or int(x.shape[axis]) != n for x in leaves):
        raise ShapeError(f"associative_scan: every leaf needs the same size along axis {axis}, "
                         f"got shapes {[tuple(x.shape) for x in leaves]}")
    if reverse:
        leaves = [flip(x, axis) for x in leaves]

    def combine(a: list, b: list) -> list:
        out, d = tree_flatten(fn(tree_unflatten(td, a), tree_unflatten(td, b)))
        if d != td:
            raise ShapeError(f"associative_scan: fn returned a tree of structure {d}, but the "
                             f"elements have {td}")
        return _as_tensors(out, "associative_scan: fn's result")

    def interleave(a: Tensor, b: Tensor) -> Tensor:
        m = int(b.shape[axis])
        head = _slice(a, axis, 0, m)
        both = stack([head, b], axis + 1)
        shape = tuple(head.shape[:axis]) + (2 * m,) + tuple(head.shape[axis + 1:])
        out = reshape(both, shape)
        return concatenate([out, _slice(a, axis, m, None)], axis) if a.shape[axis] > m \
            else out

    def run(es: list) -> list:
        k = int(es[0].shape[axis])
        if k < 2:
            return es
        reduced = combine([_slice(e, axis, 0, -1, 2) for e in es],
                          [_slice(e, axis, 1, None, 2) for e in es])
        odd = run(reduced)
        if k % 2 == 0:
            even = combine([_slice(e, axis, 0, -1) for e in odd],
                           [_slice(e, axis, 2, None, 2) for e in es])
        else:
            even = combine(odd, [_slice(e, axis, 2, None, 2) for e in es])
        even = [concatenate([_slice(e, axis, 0, 1), r], axis) for e, r in zip(es, even)]
        return [interleave(a, b) for a, b in zip(even, odd)]

    out = run(leaves)
    if reverse:
        out = [flip(x, axis) for x in out]
    return tree_unflatten(td, out)


from .lax_control import cond, switch, torch_cond, torch_while_loop, while_loop  # noqa: E402
