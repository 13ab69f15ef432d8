"""``jit``: trace a function once per input signature, then replay the captured program.

The first call with a new signature (the tree of arguments; each tensor's shape, dtype and
device; the values of the other arguments) runs the function eagerly while a recorder keeps
every backend operation; later calls replay those operations on the new arrays, with no
Tensor, Node or dispatch work. Programs live in a bounded least-recently-used cache.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from ..autodiff import Node, modes
from ..func.tree import tree_flatten, tree_unflatten
from ..tensor import Tensor
from .trace import Recorder

_local = threading.local()  # .disabled: disable_jit depth in this thread


class disable_jit:
    """Within this block (this thread), jitted functions run eagerly, for debugging."""

    def __enter__(self):
        _local.disabled = getattr(_local, "disabled", 0) + 1
        return self

    def __exit__(self, *exc):
        _local.disabled -= 1


_EAGER = object()  # the cache entry of a signature that always runs eagerly

# A program that numba would make faster but that does not import it (single slow ops, a small
# optimiser's update: numba's start-up, ~0.5-1 s, outweighs their few µs a step in a short run)
# imports it once its replays have taken this long, and is traced again with the kernels: the
# start-up then costs at most a tenth of the time already spent, and the kernels give the same
# bits. A ski-rental rule: pay for the purchase once renting has cost as much.
UPGRADE_AFTER_S = 10.0


class _Entry:
    __slots__ = ("program", "out_def", "out_kinds", "reason", "wait", "diff")

    def __init__(self, program, out_def, out_kinds, reason=None, wait=None, diff=None):
        self.program, self.out_def, self.out_kinds, self.reason = program, out_def, out_kinds, \
            reason
        self.wait = wait  # replay seconds left until numba is imported for it (None: never)
        self.diff = diff  # a differentiable signature's program pair (_Diff), else None


class _Diff:
    """A signature whose outputs require grad: the forward program (outputs, then the residuals
    the backward reads) and the backward program (residuals and output cotangents to the
    gradients of ``wrt``: the inputs that require grad, by leaf position, then the tensors the
    function read that require grad, held weakly)."""

    __slots__ = ("fwd", "bwd", "n_out", "wrt_in", "loaded", "present", "orders")

    def __init__(self, fwd, bwd, n_out, wrt_in, loaded, present, orders):
        self.fwd, self.bwd, self.n_out, self.wrt_in = fwd, bwd, n_out, wrt_in
        self.loaded, self.present, self.orders = loaded, present, orders


class _DiffCall:
    """One replayed call's residuals, for the backward (``func.custom._attach``'s call)."""

    __slots__ = ("diff", "residuals", "nondiff", "slots", "shapes")

    def __init__(self, diff: _Diff, residuals: list):
        self.diff, self.residuals, self.nondiff = diff, residuals, ()


class _NotDifferentiable(Exception):
    """Why a signature whose outputs require grad runs eagerly instead."""


class Jitted:
    """A function wrapped by :func:`jit`; call it like the function."""

    def __init__(self, fn: Callable, state: Any = None, max_cache: int = 32,
                 fuse: bool | None = None, optimize: bool = True) -> None:
        self.fn = fn
        self.fuse = fuse
        self.optimize = optimize
        self.state = state
        self._objs = (tuple(state) if isinstance(state, tuple | list) else (state,)) + (fn,)
        self._struct = None  # the modules' structure count when last read (_read_state)
        self._read_state()
        self.max_cache = max_cache
        self.cache: OrderedDict = OrderedDict()
        self.traces = 0  # how many times the function was traced
        self.last = None  # the most recently used entry
        # the last replayed entry of tensor-only arguments, with what a call must match to
        # reuse it without building the signature: (entry, (shape, dtype) per argument, grad
        # mode, the modules' training flags, the parameters' requires_grad flags, cache key)
        self._hot: tuple | None = None
        self.__name__ = getattr(fn, "__name__", "jitted")
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def _read_state(self) -> None:
        """Read the modules among the state (and ``fn`` itself when it is one) as they are now:
        their modules, the parameters of the state's modules and optimisers (freezing or
        unfreezing one changes which gradients a step computes and applies, so their flags key
        the cache), and which tensors, submodules and forward hooks the modules hold (a layer,
        parameter or buffer replaced since a trace would leave its program reading the old one;
        a forward hook added or removed would not run, or still run, on replays). Done again
        whenever any module's structure or hooks changed (``Module._structure``)."""
        objs, state = self._objs, self.state
        mods = [mod for o in objs if hasattr(o, "training") and hasattr(o, "modules")
                for mod in o.modules()]
        params: dict = {}
        for o in objs if state is not None else ():
            if hasattr(o, "training") and hasattr(o, "parameters"):
                for q in o.parameters():
                    params.setdefault(id(q), q)
            for g in getattr(o, "param_groups", None) or ():
                for q in g.get("params", ()) if isinstance(g, dict) else ():
                    params.setdefault(id(q), q)
        self._modules = mods
        self._params = list(params.values())
        self._held = tuple(id(x) for mod in mods for name in ("_parameters", "_buffers",
                                                              "_modules")
                           for x in getattr(mod, name, {}).values()) + tuple(
            id(h) for mod in mods for name in ("_forward_pre_hooks", "_forward_hooks")
            for h in getattr(mod, name, ()))  # forward hooks run at trace: a new one retraces
        count = getattr(mods[0], "_structure", None) if mods else None
        self._struct = count[0] if count is not None else None
        self._hot = None

    def clear_cache(self) -> None:
        """Forget every captured program (the next call traces again)."""
        self.cache.clear()
        self._hot = None

    @property
    def program(self):
        """The most recently used captured program (print it to read it), or None."""
        return None if self.last is None else self.last.program

    def __call__(self, *args, **kwargs):
        m = modes()
        if (getattr(_local, "disabled", 0) or m.jit is not None or m.traces
                or m.depth != m.first_order or m.anomaly):
            # inside another trace (it records these ops itself), under vmap or a transform
            # that needs the graph (jvp, a recorded backward), or debugging: run the function
            # as written. Inside a first-order grad it replays, differentiably.
            return self.fn(*args, **kwargs)
        mods = self._modules
        if mods and self._struct is not None and mods[0]._structure[0] != self._struct:
            self._read_state()
        hot = self._hot
        if hot is not None and not kwargs:
            arrays = _matches(hot, args, m, self._modules, self._params)
            if arrays is not None:
                entry = self.last = hot[0]
                if entry.wait is not None:
                    return _outputs(entry, self._timed(entry, arrays))
                return _outputs(entry, entry.program.run(arrays))
        if not kwargs and all(type(a) is Tensor for a in args):  # the common case, quickly
            leaves, tdef = list(args), None
        else:
            leaves, tdef = tree_flatten((args, kwargs))
        key, arrays, eager = self._signature(leaves, tdef, m)
        if eager:
            return self.fn(*args, **kwargs)
        entry = self.cache.get(key)
        if entry is None:
            return self._trace(key, leaves, arrays, args, kwargs, m)
        self.cache.move_to_end(key)
        self.last = entry
        if entry.diff is not None:
            return self._replay_diff(key, entry, leaves, arrays, args, kwargs)
        if entry.program is None:
            return self.fn(*args, **kwargs)
        if tdef is None and all(type(d) is B.ndarray for d in arrays) and len(
                set(map(id, arrays))) == len(arrays):
            self._hot = (entry, tuple((d.shape, d.dtype) for d in arrays), m.grad_enabled,
                         tuple(mod.training for mod in self._modules),
                         tuple(q.requires_grad for q in self._params), key)
        if entry.wait is not None:
            return _outputs(entry, self._timed(entry, arrays))
        return _outputs(entry, entry.program.run(arrays))

    def _timed(self, entry: _Entry, arrays: list) -> list:
        """Replay a program that waits for numba, counting its time (see UPGRADE_AFTER_S); once
        it has run long enough, import numba and forget the programs (the next calls trace
        again, now with kernels)."""
        t0 = time.perf_counter()
        outs = entry.program.run(arrays)
        wait = entry.wait
        if wait is not None:
            wait -= time.perf_counter() - t0
            entry.wait = wait if wait > 0 else None
            if wait <= 0:
                from .fuse import _get_numba

                if _get_numba() is not None:
                    self.clear_cache()
        return outs

    def _waits_for_numba(self, program) -> bool:
        """Whether importing numba would make ``program`` faster: kernels it left out for the
        import's cost, or an optimiser it steps that keeps its NumPy update until then."""
        from .fuse import _numba_loaded, available

        if self.fuse is not None or program.backend is None or _numba_loaded() or (
                not available(program.backend)) or program.backend.device_id is not None:
            return False
        if program.stats.get("kernels_waiting"):
            return True
        low = program.lowered
        return low is not None and any(opt._fused_pending() for opt, _ in low.groups)

    def _fuse(self, rec) -> bool | str:
        """Whether to fuse: wherever a kernel compiler is installed unless asked not to;
        "all" for ``fuse=True`` (single slow ops too, whatever numba's import costs)."""
        if self.fuse is False or not self.optimize:
            return False
        from .fuse import available

        if not available(rec.backend):  # without a compiler: replay unfused
            return False
        return "all" if self.fuse else True

    def _signature(self, leaves: list, tdef, m):
        """The cache key, the input arrays, and whether this call must run eagerly."""
        key = [len(leaves) if tdef is None else _def_key(tdef), m.grad_enabled]
        if self._modules:  # train() and eval() change what a module computes
            key.append(tuple(mod.training for mod in self._modules))
        if self._params:
            key.append(tuple(q.requires_grad for q in self._params))
        if self._modules:
            key.append(self._held)
        arrays = []
        firsts: dict = {}
        for x in leaves:
            if isinstance(x, Tensor):
                if x.requires_grad and m.grad_enabled:
                    if self.state is not None:
                        return None, None, True  # the caller differentiates: build the graph
                    key.append("grad")  # a program pair with a backward (_differentiable)
                d = x.data
            elif B.is_array(x):
                d = x
            else:
                try:
                    hash(x)
                    key.append(("static", type(x), x))
                except TypeError:
                    key.append(("object", id(x)))
                continue
            be = B.backend_of(d)
            key.append((d.shape, d.dtype.str, be.name, firsts.setdefault(id(d), len(arrays))))
            arrays.append(d)
        return tuple(key), arrays, False

    def _trace(self, key, leaves, arrays, args, kwargs, m):
        rec = Recorder()
        in_slots = [rec.input(a) for a in arrays]
        rec.fuse = rec.backend is not None and self._fuse(rec)  # scan bodies read it
        m.jit = rec
        try:
            out = self.fn(*args, **kwargs)
        finally:
            m.jit = None
        self.traces += 1
        out_leaves, out_def = tree_flatten(out)
        reason = rec.fallback
        kinds, slots = [], []
        for o in out_leaves:
            if isinstance(o, Tensor):
                kinds.append(None)
                slots.append(rec.slot_of(o, o.data))
            else:
                kinds.append(o)
        diff = None
        if reason is None and self.state is None and m.grad_enabled and any(
                isinstance(o, Tensor) and o.requires_grad for o in out_leaves):
            try:
                diff = self._differentiable(rec, in_slots, leaves, out_leaves, slots, m)
            except _NotDifferentiable as e:
                reason = str(e)
        program = None if reason is not None or diff is not None else rec.program(
            in_slots, slots, optimize=self.optimize, fuse=self._fuse(rec))
        wait = UPGRADE_AFTER_S if program is not None and self._waits_for_numba(program) else None
        entry = _Entry(program, None if isinstance(out, Tensor) else out_def, kinds, reason, wait,
                       diff)
        self.cache[key] = entry
        if self._hot is not None and self._hot[-1] in self.cache:  # its calls skip the cache
            self.cache.move_to_end(self._hot[-1])
            self.cache.move_to_end(key)
        if len(self.cache) > self.max_cache:
            self.cache.popitem(last=False)
        self.last = entry
        if self.state is not None and program is not None:
            out = tree_unflatten(out_def, [Tensor(o.data) if isinstance(o, Tensor) else o
                                           for o in out_leaves])
        return out


    # --- differentiable calls: a forward and a backward program under one graph node ---------
    def _differentiable(self, rec, in_slots: list, leaves: list, out_leaves: list,
                        out_slots: list, m) -> _Diff:
        """The program pair of a signature whose outputs require grad (the inputs do, or the
        tensors the function reads, such as a model's parameters), from the forward just
        traced: its backward is traced too, with placeholder cotangents, on the graph the
        forward built (kept for this first call's own backward), and the instructions are cut
        in two; what the backward reads from the forward becomes outputs of the forward."""
        from ..autodiff import grad as _grad
        from .passes import constant_loads
        from .program import Program

        floats = [o for o in out_leaves if isinstance(o, Tensor) and o.dtype.kind == "f"]
        if not all(o.requires_grad for o in floats):
            raise _NotDifferentiable("jit: some float outputs require grad and some do not")
        if len({o.dtype for o in floats}) > 1:
            raise _NotDifferentiable("jit: differentiable outputs of several dtypes")
        seen: set = set()
        wrt_in = []
        for k, x in enumerate(leaves):
            if isinstance(x, Tensor) and x.requires_grad and id(x) not in seen:
                seen.add(id(x))
                wrt_in.append(k)
        loaded = []
        for ref in rec.loaded.values():
            t = ref()
            if t is not None and t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                loaded.append(t)
        wrt = [leaves[k] for k in wrt_in] + loaded
        constant_loads(rec)
        split = len(rec.instrs)
        be = rec.backend
        with be.scope():
            cts = [Tensor(be.xp.ones_like(o.data)) for o in floats]
        ct_slots = [rec.input(c.data) for c in cts]
        # the leaves' own hooks stay out of the program: the engine runs them on what the
        # replay's node sends each leaf, as for any gradient (they ran twice, and once at trace)
        hooked = [(t, t._hooks) for t in wrt if t.node is None and t._hooks]
        for t, _ in hooked:
            t._hooks = None
        m.jit = rec
        try:
            gs = _grad(floats, wrt, grad_outputs=cts, retain_graph=True, allow_unused=True)
        finally:
            m.jit = None
            for t, hooks in hooked:
                t._hooks = hooks
        if rec.fallback is not None:
            raise _NotDifferentiable(rec.fallback)
        constant_loads(rec, split)
        present = [g is not None for g in gs]
        g_slots = [rec.slot_of(g, g.data) for g in gs if g is not None]
        fwd_instrs, bwd_instrs = rec.instrs[:split], rec.instrs[split:]
        made = {i.out for i in bwd_instrs} | {o for i in bwd_instrs for o in (i.outs or ())}
        skip = made | set(rec.consts) | set(ct_slots)
        residuals = list(dict.fromkeys(a for a in [x for i in bwd_instrs for x in i.ins] + g_slots
                                       if a not in skip))
        values = {rec.slot[id(a)]: a for a in rec.keep if id(a) in rec.slot}
        opts = dict(meta=rec.meta, values=values, optimize=self.optimize, fuse=self._fuse(rec))
        fwd = Program(fwd_instrs, rec.nslots, rec.consts, in_slots, out_slots + residuals,
                      rec.backend, **opts)
        bwd = Program(bwd_instrs, rec.nslots, rec.consts, residuals + ct_slots, g_slots,
                      rec.backend, **opts)
        orders = ["F" if c.data.flags.f_contiguous and not c.data.flags.c_contiguous else "C"
                  for c in cts]
        return _Diff(fwd, bwd, len(out_slots), wrt_in, [weakref.ref(t) for t in loaded], present,
                     orders)

    def _replay_diff(self, key, entry: _Entry, leaves: list, arrays: list, args, kwargs):
        """Replay a differentiable signature: the forward program, and one graph node over the
        outputs whose VJP runs the backward program on this call's residuals."""
        from ..func.custom import _attach

        d = entry.diff
        loaded = [r() for r in d.loaded]
        if any(t is None or not t.requires_grad for t in loaded):  # what it read has changed
            del self.cache[key]
            return self(*args, **kwargs)
        res = d.fwd.run(arrays)
        outs = [Tensor(a) for a in res[:d.n_out]]
        wrt = [leaves[k] for k in d.wrt_in] + loaded
        call = _DiffCall(d, res[d.n_out:])
        floats = [i for i, o in enumerate(outs) if o.dtype.kind == "f"]
        if len(floats) == 1:  # one node holding the output itself: no packing, no reshapes
            i = floats[0]
            call.slots, call.shapes = floats, None
            parents = tuple(t.node or t for t in wrt)
            node = Node.make(self._rule(), {"call": call}, parents, None, None,
                             tuple(t.shape for t in wrt), None)
            outs[i] = Tensor(outs[i].data, node, True)
        else:
            outs = _attach(outs, wrt, self._rule(), call)
        if entry.out_def is None:
            return outs[0]
        it = iter(outs)
        return tree_unflatten(entry.out_def, [next(it) if k is None else k
                                              for k in entry.out_kinds])

    def _rule(self):
        rule = self.__dict__.get("_rule_p")
        if rule is None:
            from ..func.custom import _rule

            rule = self.__dict__["_rule_p"] = _rule(f"jit[{self.__name__}]", _diff_vjp)
        return rule


def _diff_vjp(needs, g, ans, *specs, call: _DiffCall):
    """The VJP of a replayed differentiable call: its backward program."""
    from ..errors import GradError
    from ..func.custom import _unpack

    if modes().grad_enabled:
        raise GradError("jit: the compiled backward of a jitted call is not differentiable "
                        "again (create_graph=True); take higher derivatives of the function "
                        "itself, or call it under ng.disable_jit()")
    d = call.diff
    xp = B.backend_of(g.data).xp
    parts = [g] if call.shapes is None else _unpack(g, call)
    cts = []
    for p, o in zip(parts, d.orders):  # in the traced layout, which its kernels were made for
        a = p.data
        if o == "C" and not a.flags.c_contiguous:
            a = xp.ascontiguousarray(a)
        elif o == "F" and not a.flags.f_contiguous:
            a = xp.asfortranarray(a)
        cts.append(a)
    grads = iter(d.bwd.run(list(call.residuals) + cts))
    return [Tensor(next(grads)) if p else None for p in d.present]


def _matches(hot: tuple, args: tuple, m, modules: list, params: list) -> list | None:
    """The argument arrays when this call has the signature of the ``hot`` entry (tensors of
    the same shapes and dtypes on the CPU, distinct arrays, the same modes and parameters
    requiring grad), else None."""
    entry, specs, grad, training, flags, _ = hot
    if len(args) != len(specs) or m.grad_enabled is not grad:
        return None
    arrays = []
    for a, (shape, dtype) in zip(args, specs):
        if type(a) is not Tensor or (grad and a.requires_grad):
            return None
        d = a.data
        if type(d) is not B.ndarray or d.shape != shape or d.dtype != dtype:
            return None
        arrays.append(d)
    if len(arrays) > 1 and len(set(map(id, arrays))) != len(arrays):
        return None
    for mod, t in zip(modules, training):
        if mod.training is not t:
            return None
    for q, f in zip(params, flags):
        if q.requires_grad is not f:
            return None
    return arrays


def _outputs(entry: _Entry, outs: list):
    """The replay's arrays as the function's outputs (tensors in its output tree)."""
    if entry.out_def is None:  # the function returned one tensor
        return Tensor(outs[0])
    it = iter(outs)
    res = [Tensor(next(it)) if k is None else k for k in entry.out_kinds]
    return tree_unflatten(entry.out_def, res)


def _def_key(tdef):
    """A hashable form of a tree's structure."""
    if tdef.kind is None:
        return None
    aux = tdef.aux
    try:
        hash(aux)
    except TypeError:
        aux = tuple(aux) if isinstance(aux, list) else id(aux)
    return (tdef.kind, aux, tuple(_def_key(c) for c in tdef.children))


def jit(fn: Callable | None = None, *, state: Any = None, max_cache: int = 32,
        fuse: bool | None = None, optimize: bool = True):
    """Compile ``fn``: trace it on the first call per input signature, replay afterwards.

    Arguments that are not tensors are static (part of the signature). ``state`` names what a
    training step reads and changes in place (a model, an optimiser): the step may then call
    ``backward`` and ``opt.step()``. ``fuse`` (default: when numba, or CuPy on a GPU, is there)
    compiles chains of elementwise ops into one kernel; single slow ops too once numba is
    imported, which a long-running program does itself (:data:`UPGRADE_AFTER_S`) and
    ``fuse=True`` does at once; ``optimize=False`` replays the trace as recorded (no CSE,
    folding or buffer reuse). Use as ``jit(f)`` or ``@jit(state=...)``.
    """
    if fn is None:
        return lambda f: Jitted(f, state, max_cache, fuse, optimize)
    return Jitted(fn, state, max_cache, fuse, optimize)
