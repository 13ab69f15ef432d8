"""``jit``: trace a function once per input signature, then replay the captured program.

The first call with a new signature (the tree of arguments; each tensor's shape, dtype and
device; the values of the other arguments) runs the function eagerly while a recorder keeps
every backend operation; later calls replay those operations on the new arrays, with no
Tensor, Node or dispatch work. Programs live in a bounded least-recently-used cache.
"""

from __future__ import annotations

import random
import sys
import functools
import itertools
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from types import FunctionType, ModuleType
from typing import Any

from .. import _backend as B
from ..autodiff import POST_ACCUMULATE, Node, RetainGrad, modes
from ..errors import JitError
from ..func.tree import tree_flatten, tree_unflatten
from ..tensor import Tensor
from .program import Instr
from .trace import Recorder, load_fn

#: traces caused only by a changed Python number before jit warns (once per function)
RETRACE_WARN = 8
_local = threading.local()  # .disabled: disable_jit depth in this thread
_ALL: weakref.WeakSet = weakref.WeakSet()  # every jitted function alive (reset_all)


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
    __slots__ = ("program", "out_def", "out_kinds", "reason", "wait", "diff", "hooks", "frozen",
                 "binds")

    def __init__(self, program, out_def, out_kinds, reason=None, wait=None, diff=None,
                 hooks=None, frozen=None, binds=None):
        self.program, self.out_def, self.out_kinds, self.reason = program, out_def, out_kinds, \
            reason
        self.wait = wait  # replay seconds left until numba is imported for it (None: never)
        self.diff = diff  # a differentiable signature's program pair (_Diff), else None
        # the gradient hooks of the leaves its backward accumulates into, as traced (the trace
        # ran them as Python, and a lowered step skips the post-accumulate ones): (leaf, hooks,
        # post-accumulate hooks) each, checked before a replay (_hooks_moved); None: no leaves
        self.hooks = hooks
        # the leaves it read that did not require grad in a call that recorded gradients (a
        # frozen layer): unfreezing one traces again, else the program would give them none
        self.frozen = frozen
        # what the step binds anew (a buffer: ``self.ema = 0.9 * self.ema + ...``, an attribute:
        # ``self.hidden = h.detach()``) to the program's last outputs after each replay: (the
        # setters, each with how many arrays it takes, and their total), or None
        self.binds = binds


def _global_draws() -> tuple:
    """Where NumPy's and Python's global random generators stand (read only when tracing): a
    step that moves them drew numbers the program cannot draw again."""
    _, key, pos, has_gauss, gauss = B.np.random.get_state()
    return key.tobytes(), pos, has_gauss, gauss, random.getstate()


def _replay_modes(rec: Recorder, modules: list, before: list) -> None:
    """A step that leaves modules in another mode than it found them (an evaluation step that
    calls ``model.eval()``, a training step its ``model.train()``) leaves them so on every
    replay too: one effect at the end of the program sets the flags the trace left (a step
    that switches nothing gets none). The signature keys the flags a call starts with."""
    changed = [(mod, mod.training) for mod, b in zip(modules, before) if mod.training is not b]
    if not changed:
        return

    def set_modes() -> None:
        for mod, flag in changed:
            object.__setattr__(mod, "training", flag)  # as Module.train sets it

    rec.instrs.append(Instr("effect", "Module.train", set_modes, (), None))


class _Diff:
    """A signature whose outputs require grad: the forward program (outputs, then the residuals
    the backward reads) and the backward program (residuals and output cotangents to the
    gradients of ``wrt``: the inputs that require grad, by leaf position, then the tensors the
    function read that require grad, held weakly)."""

    __slots__ = ("fwd", "bwd", "n_out", "wrt_in", "loaded", "present", "orders", "n_bind")

    def __init__(self, fwd, bwd, n_out, wrt_in, loaded, present, orders, n_bind=0):
        self.fwd, self.bwd, self.n_out, self.wrt_in = fwd, bwd, n_out, wrt_in
        self.loaded, self.present, self.orders = loaded, present, orders
        self.n_bind = n_bind  # the forward's outputs after n_out bound to buffers (_Entry.binds)


class _DiffCall:
    """One replayed call's residuals, for the backward (``func.custom._attach``'s call)."""

    __slots__ = ("diff", "residuals", "nondiff", "slots", "shapes", "orders")
    keep_layout = True  # outputs keep the layouts the forward program gave them (_attach)

    def __init__(self, diff: _Diff, residuals: list):
        self.diff, self.residuals, self.nondiff = diff, residuals, ()
        self.orders = None


class _NotDifferentiable(Exception):
    """Why a signature whose outputs require grad runs eagerly instead."""


class Jitted:
    """A function wrapped by :func:`jit`; call it like the function."""

    def __init__(self, fn: Callable, state: Any = None, max_cache: int = 32,
                 fuse: bool | None = None, optimize: bool = True,
                 static_argnums: int | tuple = (), static_argnames: str | tuple = ()) -> None:
        self.fn = fn
        self._static_nums, self._static_names = _static_args(fn, static_argnums,
                                                             static_argnames)
        self.fuse = fuse
        self.optimize = optimize
        # what ng.compile sets: a traced value read into Python runs its signature eagerly
        self.graph_breaks = False
        self.state = state
        self._objs = (tuple(state) if isinstance(state, tuple | list) else (state,)) + (fn,)
        self._n_state = len(self._objs)  # then the modules and optimisers fn names (_call)
        self._struct = None  # the modules' structure count when last read (_read_state)
        self._scanned = False  # whether the modules fn closes over joined _objs (_call)
        # the Python numbers fn reads from its closure and globals (_python_reads), read
        # again on every call, and why every call runs eagerly when the step changes one
        self._reads: tuple = ()
        self._read_names: tuple = ()
        self._volatile: str | None = None
        # (module serial, buffer name) of the buffers a traced step bound anew: programs read
        # them by name and bind them after each replay; the signature keys their shape and dtype
        self._by_name: set = set()
        self._read_state()
        self.max_cache = max_cache
        self.cache: OrderedDict = OrderedDict()
        self.traces = 0  # how many times the function was traced
        self._number_traces = 0  # of them, traces only a Python number's value caused
        self._warned = False
        self.last = None  # the most recently used entry
        # the last replayed entry of tensor-only arguments, with what a call must match to
        # reuse it without building the signature: (entry, (shape, dtype) per argument, grad
        # mode, the modules' training flags, the parameters' requires_grad flags, cache key)
        self._hot: tuple | None = None
        self.__name__ = getattr(fn, "__name__", "jitted")
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        _ALL.add(self)

    def _read_state(self) -> None:
        """Read the modules among the state (and ``fn`` itself when it is one, and those it
        names, ``_closure_modules``) as they are now: their modules, the parameters of the
        state's modules and of every optimiser (freezing or unfreezing one changes which
        gradients a step computes and applies, so their flags key the cache; a function
        without state or optimiser has its differentiable calls, which check what they read
        themselves), and which tensors, submodules and forward hooks the modules hold (a layer,
        parameter or buffer replaced since a trace would leave its program reading the old one;
        a forward hook added or removed would not run, or still run, on replays). Done again
        whenever any module's structure or hooks changed (``Module._structure``)."""
        objs = self._objs
        mods = [mod for o in objs if hasattr(o, "training") and hasattr(o, "modules")
                for mod in o.modules()]
        params: dict = {}
        n = self._n_state if self.state is not None else 0  # the state and fn
        for k, o in enumerate(objs):
            if k < n and hasattr(o, "training") and hasattr(o, "parameters"):
                for q in o.parameters():
                    params.setdefault(id(q), q)
            for g in getattr(o, "param_groups", None) or ():
                for q in g.get("params", ()) if isinstance(g, dict) else ():
                    params.setdefault(id(q), q)
        self._modules = mods
        self._params = list(params.values())
        self._numbers = _module_numbers(mods)
        # (hooks run at trace: a new one retraces)
        self._held = _held_key(mods, self._by_name, ("_parameters", "_buffers", "_modules"))
        count = getattr(mods[0], "_structure", None) if mods else None
        self._struct = count[0] if count is not None else None
        self._hot = None

    def clear_cache(self) -> None:
        """Forget every captured program (the next call traces again)."""
        self.cache.clear()
        self._hot = None
        self._volatile = None

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
        if self._static_nums or self._static_names:  # one leaf each, compared by value
            n = len(args)
            nums, names = self._static_nums, self._static_names
            sig = (tuple(_Static(a) if k in nums or k - n in nums else a
                         for k, a in enumerate(args)),
                   {k: _Static(v) if k in names else v for k, v in kwargs.items()})
            leaves, tdef = tree_flatten(sig)
            return self._call(leaves, tdef, args, kwargs, m)
        hot = self._hot
        if hot is not None and not kwargs and m.autocast is None and (
                not self._reads or _same_reads(self._reads, hot[6])):
            arrays = _matches(hot, args, m, self._modules, self._params)
            if arrays is not None and (hot[0].hooks is None or not _hooks_moved(
                    hot[0].hooks)) and (hot[0].frozen is None or not _thawed(hot[0].frozen)):
                entry = self.last = hot[0]
                if entry.wait is not None:
                    return _outputs(entry, self._timed(entry, arrays), self._params)
                return _outputs(entry, entry.program.run(arrays), self._params)
        if not kwargs and all(type(a) is Tensor for a in args):  # the common case, quickly
            leaves, tdef = list(args), None
        else:
            leaves, tdef = tree_flatten((args, kwargs))
        return self._call(leaves, tdef, args, kwargs, m)

    def _call(self, leaves: list, tdef, args: tuple, kwargs: dict, m):
        """A call that missed the hot entry: look its signature up, trace or replay."""
        if not self._scanned:  # modules fn reaches by name: their train()/eval() key it too
            self._scanned = True
            found = [o for o in _closure_modules(self.fn) if all(o is not x for x in self._objs)]
            if found:
                self._objs += tuple(found)
                self._read_state()
            self._reads, self._read_names = _python_reads(self.fn, self._modules)
        if self._volatile is not None:  # the step changes a Python number it reads
            self.last = _Entry(None, None, None, self._volatile)
            return self.fn(*args, **kwargs)
        raw = tuple(r() for r in self._reads)
        key, arrays, eager = self._signature(leaves, tdef, m, raw)
        if eager:
            return self.fn(*args, **kwargs)
        entry = self.cache.get(key)
        if entry is not None and (entry.hooks is not None and _hooks_moved(entry.hooks) or (
                entry.frozen is not None and _thawed(entry.frozen))):
            del self.cache[key]  # a gradient hook added or removed, a layer unfrozen since
            self._hot = entry = None
        if entry is None:
            if self.cache and not self._warned:
                self._note_number_retrace(key)
            return self._trace(key, leaves, arrays, args, kwargs, m, raw, tdef)
        self.cache.move_to_end(key)
        self.last = entry
        if entry.diff is not None:
            return self._replay_diff(key, entry, leaves, arrays, args, kwargs)
        if entry.program is None:
            return self.fn(*args, **kwargs)
        if tdef is None and m.autocast is None and all(
                type(d) is B.ndarray for d in arrays) and len(set(map(id, arrays))) == len(arrays):
            self._hot = (entry, tuple((d.shape, d.dtype) for d in arrays), m.grad_enabled,
                         tuple(mod.training for mod in self._modules),
                         tuple(q.requires_grad for q in self._params), B.DEFAULT_FLOAT, raw,
                         key)
        if entry.wait is not None:
            return _outputs(entry, self._timed(entry, arrays), self._params)
        return _outputs(entry, entry.program.run(arrays), self._params)

    def _bound_buffers(self, rec, bound: list) -> tuple:
        """The buffers the traced step bound anew (``self.ema = 0.9 * self.ema + ...``, where
        ``bound`` lists the buffers as the call found them), as ``(binds, slots)``: the
        program reads each by name (the tensor it loaded is not its constant: a replay reads
        the tensor the last call bound) and gives its new value as an extra output, which
        :func:`_bind` binds after each replay, as PyTorch's compiled modules do. The buffers
        any earlier trace found bound anew are read by name too, bound or not. A new value that
        the program cannot give (another shape or dtype, one that requires grad, None) makes
        the signature run eagerly."""
        binds, slots = [], []
        for mod, name, old in bound:
            new = mod._buffers.get(name, old)
            ms = _serial(mod)
            if new is old and (ms, name) not in self._by_name:
                continue
            where = f"{type(mod).__name__}.{name}"
            if new is not old:
                why = None
                if not isinstance(new, Tensor):
                    why = f"binds {type(new).__name__} to"
                elif new.shape != old.shape or new.dtype != old.dtype:
                    why = (f"binds a tensor of shape {tuple(new.shape)} {new.dtype} to "
                           f"{tuple(old.shape)} {old.dtype}")
                elif new.requires_grad:
                    why = "binds a tensor that requires grad to"
                elif mod.__class__._buffer_hooks:
                    why = "runs buffer registration hooks when it binds"
                elif _not_computed(rec, new):
                    why = ("binds a tensor it did not compute (made by a factory such as "
                           "ng.zeros, or held elsewhere; write such a value in place, "
                           f"self.{name}.zero_()) to")
                if why is not None:
                    if rec.fallback is None:
                        rec.fallback = (f"jit: the step {why} the buffer {where}, which a "
                                        "replay cannot repeat: this signature runs eagerly")
                    continue
            for s, r in list(rec.loaded.items()):  # read through the module from now on
                if r() is old:
                    k = next(k for k, i in enumerate(rec.instrs)
                             if i.kind == "load" and i.out == s)
                    rec.instrs[k] = Instr("load", f"buffer {where}", load_fn(
                        f"buffer {where}", functools.partial(_buffer_now, weakref.ref(mod),
                                                             name, where),
                        tuple(old._data.shape), old._data.dtype), (), s)
                    del rec.loaded[s]  # (not a constant however few hold the tensor now)
            if new is not old:
                self._by_name.add((ms, name))
                binds.append((functools.partial(_set_buffer, weakref.ref(mod), name), 1))
                slots.append(rec.slot_of(new, new._data))
        return binds, slots

    def _python_changed(self, raw: tuple) -> str | None:
        """Why every call must run eagerly when the traced call changed a Python number that
        the step reads (a module's attribute, a variable of its closure or globals), else None:
        the program holds the traced value, and a replay would neither change it nor read the
        new one."""
        where = None
        if self._modules:
            now = _module_numbers(self._modules)
            old = dict(zip(self._numbers.names, self._numbers.values))
            for (k, name), v in zip(now.names, now.values):
                if old.get((k, name), v) != v:
                    where = f"{type(self._modules[k]).__name__}.{name}"
                    break
        if where is None:
            for r, v, name in zip(self._reads, raw, self._read_names):
                now = r()  # (now tensors: bound after each replay, _bound_places)
                if _plain_key(now) != _plain_key(v) and _tensors_of(now) is None:
                    where = name
                    break
        if where is None:
            return None
        return (f"jit: the step changes {where}, a Python value it reads, which a replay "
                "would neither change nor read again: every call runs eagerly; keep such a "
                "counter in a tensor changed in place (a registered buffer) or pass it as an "
                "argument")

    def _note_number_retrace(self, key: tuple) -> None:
        """Warn once when Python numbers passed as arguments (or read by name) keep changing
        value: each value is a signature of its own, so a loop that passes its step count or a
        scheduled learning rate as a number traces every call (``RETRACE_WARN`` such traces)."""
        last = next(reversed(self.cache))
        if len(last) != len(key):
            return
        changed = [k for k, (a, b) in enumerate(zip(last, key)) if a != b]
        if not changed or not all(
                type(key[k]) is tuple and len(key[k]) > 1 and key[k][0] == "static"
                and _number_type(key[k][1]) and type(last[k]) is tuple
                and last[k][:2] == key[k][:2] or _same_names(key[k], last[k])
                for k in changed):
            return
        self._number_traces += 1
        if self._number_traces >= RETRACE_WARN:
            self._warned = True
            warnings.warn(
                f"jit: {self.__name__} was traced {self._number_traces + 1} times because a "
                "Python number argument changed value (or one it reads by name: a module's "
                "attribute, a variable of its closure or globals, or an attribute or item of "
                "one): numbers are static, part "
                "of the signature (as jax.jit's static_argnums), so each new value traces and "
                "compiles again; pass it as a tensor (ng.tensor(value)) to trace once, or "
                "keep it in the state (an optimiser's lr is read afresh on every replay)",
                RuntimeWarning, stacklevel=4)

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

    def _signature(self, leaves: list, tdef, m, raw: tuple = ()):
        """The cache key, the input arrays, and whether this call must run eagerly. ``raw``:
        the values of the Python numbers ``fn`` reads by name (``_python_reads``)."""
        # the default float dtype: what the step's factories and Python floats give
        key = [len(leaves) if tdef is None else _def_key(tdef), m.grad_enabled, B.DEFAULT_FLOAT]
        if m.autocast is not None:  # an autocast region casts the operands (amp.py)
            key.append(getattr(m.autocast, "key", m.autocast))
        if self._modules:  # train() and eval() change what a module computes
            key.append(tuple(mod.training for mod in self._modules))
        if tdef is not None:  # modules passed as arguments (a decorated method's self)
            mods = _tree_modules(tdef, [])
            if mods:
                key.append(_modules_key(mods, self._by_name))
        if self._params:
            key.append(tuple(q.requires_grad for q in self._params))
        if self._modules:
            key.append(self._held)
            key.append(self._numbers)  # a dropout's p, a position kept as an attribute
        key.extend(_plain_key(v) for v in raw)
        arrays = []
        firsts: dict = {}
        for x in leaves:
            if isinstance(x, Tensor):
                if x.requires_grad and m.grad_enabled:
                    if self.state is not None:
                        return None, None, True  # the caller differentiates: build the graph
                    key.append("grad")  # a program pair with a backward (_differentiable)
                d = x._data
            elif B.is_array(x):
                d = x
            else:
                key.append(_static_key(x, len(arrays)))
                continue
            be = B.backend_of(d)
            key.append((d.shape, d.dtype.str, be.name, firsts.setdefault(id(d), len(arrays))))
            arrays.append(d)
        return tuple(key), arrays, False

    def _trace(self, key, leaves, arrays, args, kwargs, m, raw: tuple = (), tdef=None):
        rec = Recorder()
        rec.graph_breaks = self.graph_breaks
        in_slots = [rec.input(a) for a in arrays]
        rec.fuse = rec.backend is not None and self._fuse(rec)  # scan bodies read it
        if any(B.is_array(x) for x in leaves):  # fn gets tensors on the arrays' memory
            args, kwargs = _tensors_for_arrays(args), _tensors_for_arrays(kwargs)
        modules = self._modules
        flags = [mod.training for mod in modules]
        drawn = _global_draws()
        holders = _tensor_holders(self._modules, self.fn)
        rec.through = _through_reads(holders)
        # the buffers of the state's modules and of those passed (a decorated method's self)
        mods = modules + [s for mod in _tree_modules(tdef, []) for s in mod.modules()
                          if all(s is not o for o in modules)] if tdef is not None else modules
        bound = [(mod, name, t) for mod in mods for name, t in mod._buffers.items()
                 if isinstance(t, Tensor)] if mods else None
        owner = getattr(self.fn, "__self__", None)  # a bound method's object
        places = _places(mods if owner is None or any(owner is o for o in mods)
                         else mods + [owner], self.fn)
        m.jit = rec
        try:
            out = self.fn(*args, **kwargs)
        finally:
            m.jit = None
        rec.check_grads()
        self._volatile = self._python_changed(raw)
        if self._volatile is not None and rec.fallback is None:
            rec.fallback = self._volatile
        binds, bind_slots = self._bound_buffers(rec, bound) if bound else ([], [])
        kept = _bound_places(rec, places, binds, bind_slots)
        if rec.fallback is None:
            rec.fallback = _replaced_reads(holders, rec, kept)
        del holders, bound, places, kept
        binds = (tuple(binds), len(bind_slots)) if binds else None
        _replay_modes(rec, modules, flags)
        if rec.fallback is None and _global_draws() != drawn:
            rec.fallback = ("the step drew from NumPy's global random generator (np.random) "
                            "or Python's random module: a replay would repeat the traced "
                            "numbers (they are constants of the program); draw with nodegrad's "
                            "samplers (ng.rand, ng.randint, ng.randperm, ng.distributions), "
                            "which draw afresh on each call, or draw outside the step and pass "
                            "a tensor")
        self.traces += 1
        out_leaves, out_def = tree_flatten(out)
        reason = rec.fallback
        kinds, slots = [], []
        for o in out_leaves:
            if isinstance(o, Tensor):
                kinds.append(None)
                slots.append(rec.slot_of(o, o._data))
            else:
                kinds.append(o)
        if any(s in rec.loaded for s in slots):
            # a returned tensor that the program loads may have been made in the step
            # (``ng.zeros(3)``): hand the caller another Tensor over its array, so that only
            # references from outside keep it a load (passes.constant_loads counts them)
            it = iter(slots)
            fresh = []
            for o in out_leaves:
                if isinstance(o, Tensor) and next(it) in rec.loaded and not o.requires_grad:
                    o = Tensor._of(o._data)
                fresh.append(o)
            out_leaves, o = fresh, None
            out = tree_unflatten(out_def, out_leaves)
            del fresh
        diff = None
        hooks = _hook_guard(rec) if reason is None else None
        # a step that ran backward itself (a training step without state=) returns its loss
        # as a value, as under state=: its graph was spent by that backward
        if reason is None and self.state is None and m.grad_enabled and hooks is None and any(
                isinstance(o, Tensor) and o.requires_grad for o in out_leaves):
            try:
                diff = self._differentiable(rec, in_slots, leaves, out_leaves, slots, m,
                                            bind_slots)
            except _NotDifferentiable as e:
                reason = str(e)
        program = None if reason is not None or diff is not None else rec.program(
            in_slots, slots + bind_slots, optimize=self.optimize, fuse=self._fuse(rec))
        if any(s in rec.consts for s in slots):  # the program keeps it: the caller gets a copy
            it = iter(slots)
            fresh = []
            for o in out_leaves:
                if isinstance(o, Tensor) and next(it) in rec.consts and not o.requires_grad:
                    o = Tensor._of(o._data.copy())
                fresh.append(o)
            out_leaves, o = fresh, None
            out = tree_unflatten(out_def, out_leaves)
        wait = UPGRADE_AFTER_S if program is not None and self._waits_for_numba(program) else None
        frozen = None
        if self.state is None and m.grad_enabled and reason is None:  # (state: keyed on them)
            bufs = {id(b) for mod in self._modules for b in getattr(mod, "_buffers", {}).values()}
            frozen = tuple(r for r in rec.loaded.values()
                           if _frozen_leaf(r()) and id(r()) not in bufs) or None
        entry = _Entry(program, None if isinstance(out, Tensor) else out_def, kinds, reason, wait,
                       diff, hooks, frozen, binds if reason is None else None)
        self.cache[key] = entry
        if self._hot is not None and self._hot[-1] in self.cache:  # its calls skip the cache
            self.cache.move_to_end(self._hot[-1])
            self.cache.move_to_end(key)
        if len(self.cache) > self.max_cache:
            self.cache.popitem(last=False)
        self.last = entry
        if self.state is not None and program is not None:
            out = tree_unflatten(out_def, [Tensor._of(o._data) if isinstance(o, Tensor) else o
                                           for o in out_leaves])
        return out


    # --- differentiable calls: a forward and a backward program under one graph node ---------
    def _differentiable(self, rec, in_slots: list, leaves: list, out_leaves: list,
                        out_slots: list, m, bind_slots: list) -> _Diff:
        """The program pair of a signature whose outputs require grad (the inputs do, or the
        tensors the function reads, such as a model's parameters), from the forward just
        traced: its backward is traced too, with placeholder cotangents, on the graph the
        forward built (kept for this first call's own backward), and the instructions are cut
        in two; what the backward reads from the forward becomes outputs of the forward."""
        from ..autodiff import grad as _grad
        from .passes import constant_loads
        from .program import Program

        floats = [o for o in out_leaves if isinstance(o, Tensor) and B.is_float(o.dtype)]
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
        why = _made_hooks(floats, wrt)
        if why is not None:
            raise _NotDifferentiable(why)
        held = _graph_refs(floats)  # a one-hot filled in place is the step's, not outside's
        constant_loads(rec, held=held)
        split = len(rec.instrs)
        be = rec.backend
        with be.scope():
            cts = [Tensor._of(be.xp.ones_like(o._data)) for o in floats]
        ct_slots = [rec.input(c._data) for c in cts]
        # the hooks of what it differentiates with respect to stay out of the program: the
        # engine runs them on what the replay's node sends each (they ran twice, and once at
        # trace on the placeholder); a non-leaf's (retain_grad's too) live on its node
        hooked = [(t, t._hooks) for t in wrt if t.node is None and t._hooks]
        hooked += [(t.node, t.node.hooks) for t in wrt if t.node is not None and t.node.hooks]
        for t, _ in hooked:
            if type(t) is Node:
                t.hooks = None
            else:
                t._hooks = None
        m.jit = rec
        try:
            gs = _grad(floats, wrt, grad_outputs=cts, retain_graph=True, allow_unused=True)
        except Exception as e:  # eagerly such an error comes only with a backward, if ever
            raise _NotDifferentiable(f"jit: the backward could not be captured: {e}") from e
        finally:
            m.jit = None
            for t, hooks in hooked:
                if type(t) is Node:
                    t.hooks = hooks
                else:
                    t._hooks = hooks
        if rec.fallback is not None:
            raise _NotDifferentiable(rec.fallback)
        constant_loads(rec, split, held)
        present = [g is not None for g in gs]
        g_slots = [rec.slot_of(g, g._data) for g in gs if g is not None]
        fwd_instrs, bwd_instrs = rec.instrs[:split], rec.instrs[split:]
        made = {i.out for i in bwd_instrs} | {o for i in bwd_instrs for o in (i.outs or ())}
        skip = made | set(rec.consts) | set(ct_slots)
        residuals = list(dict.fromkeys(a for a in [x for i in bwd_instrs for x in i.ins] + g_slots
                                       if a not in skip))
        values = rec.values()
        opts = dict(meta=rec.meta, values=values, optimize=self.optimize, fuse=self._fuse(rec))
        fwd = Program(fwd_instrs, rec.nslots, rec.consts, in_slots,
                      out_slots + bind_slots + residuals, rec.backend, **opts)
        bwd = Program(bwd_instrs, rec.nslots, rec.consts, residuals + ct_slots, g_slots,
                      rec.backend, **opts)
        # a program with kernels gets its cotangents in the traced layout, which they were made
        # for; one without takes them as they come, as eager's backward does (a sum over rows
        # of an F-ordered copy adds in another order: other bits)
        orders = None if not opts["fuse"] else [
            "F" if c._data.flags.f_contiguous and not c._data.flags.c_contiguous else "C"
            for c in cts]
        return _Diff(fwd, bwd, len(out_slots), wrt_in, [weakref.ref(t) for t in loaded], present,
                     orders, len(bind_slots))

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
        outs = [Tensor._of(a) for a in res[:d.n_out]]
        wrt = [leaves[k] for k in d.wrt_in] + loaded
        if d.n_bind:
            _bind(entry.binds[0], res[d.n_out:d.n_out + d.n_bind], wrt)
        call = _DiffCall(d, res[d.n_out + d.n_bind:])
        floats = [i for i, o in enumerate(outs) if B.is_float(o.dtype)]
        if len(floats) == 1:  # one node holding the output itself: no packing, no reshapes
            i = floats[0]
            call.slots, call.shapes = floats, None
            parents = tuple(t.node or t for t in wrt)
            node = Node.make(self._rule(), {"call": call}, parents, None, None,
                             tuple(t.shape for t in wrt), None)
            outs[i] = Tensor._of(outs[i]._data, node, True)
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


def reset_all() -> None:
    """Forget the captured programs of every jitted function (``torch.compiler.reset``)."""
    for j in list(_ALL):
        j.clear_cache()
        j._number_traces, j._warned = 0, False


def _graph_refs(outputs: list) -> dict[int, int]:
    """How many references the graph recorded under ``outputs`` holds to each tensor (by id):
    its nodes' saved inputs and their version records. A differentiable trace keeps that
    graph for the traced call's backward; :func:`.passes.constant_loads` discounts them when
    it asks whether a tensor made in the step is reachable from outside."""
    refs: dict[int, int] = {}
    stack = [o.node for o in outputs if isinstance(o.node, Node)]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        saved = list(n.args) if type(n.args) is tuple else []
        saved += [e[2] for e in n.versions or ()]
        for t in saved:
            if isinstance(t, Tensor):
                refs[id(t)] = refs.get(id(t), 0) + 1
        stack.extend(p for p in n.parents if isinstance(p, Node))
    return refs


def _made_hooks(outputs: list, wrt: list) -> str | None:
    """Why a differentiable trace cannot be replayed when the graph the function built (from
    ``outputs`` back to ``wrt``) holds gradient hooks it registered (Grad-CAM's
    ``h.register_hook(save)``, ``retain_grad()``): they run Python during backward, which the
    backward program would not repeat; None when there are none. Found before the backward is
    traced, so that they never see its placeholder cotangents."""
    stop = {id(t.node) for t in wrt if t.node is not None}
    stack = [o.node for o in outputs if isinstance(o.node, Node)]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen or id(n) in stop:
            continue
        seen.add(id(n))
        for h in n.hooks or ():
            if not getattr(h, "replay_safe", False):
                name = ("retain_grad()" if type(h) is RetainGrad else "the gradient hook "
                        + getattr(h, "__qualname__", type(h).__name__))
                return (f"jit: {name} on a tensor the function made runs Python during "
                        "backward, which a replay would skip")
        stack.extend(p for p in n.parents if isinstance(p, Node))
    return None


def _tree_modules(tdef, out: list) -> list:
    """The modules among a call's arguments (flattened to their parameters, with the module in
    the tree's structure): ``self`` of a method decorated with ``ng.compile``/``ng.jit``."""
    aux = tdef.aux
    if type(aux) is tuple and len(aux) == 2 and _is_module(aux[0]):
        out.append(aux[0])
    for c in tdef.children:
        _tree_modules(c, out)
    return out


_SERIALS: dict = {}  # id(obj) -> (a weak reference to obj, its serial number)
_NEXT_SERIAL = itertools.count()


def _serial(obj) -> int:
    """A number for ``obj`` that no other object ever gets, what signatures name held objects
    (a module's buffers, layers and hooks) by: an ``id()`` is reused by a later object once
    this one is gone (a buffer rebound on every call), and would match the signature of a
    program traced on the old one."""
    k = id(obj)
    e = _SERIALS.get(k)
    if e is not None and e[0]() is obj:
        return e[1]
    n = next(_NEXT_SERIAL)
    try:
        ref = weakref.ref(obj, functools.partial(_forget_serial, k))
    except TypeError:  # no weak references (a builtin function as a hook): held for good
        ref = functools.partial(_same, obj)
    _SERIALS[k] = (ref, n)
    return n


def _forget_serial(k: int, ref) -> None:
    e = _SERIALS.get(k)
    if e is not None and e[0] is ref:
        del _SERIALS[k]


def _modules_key(mods: list, by_name: set) -> tuple:
    """What the signature of a call taking ``mods`` as arguments holds of them, as of the
    state's modules (``Jitted._read_state``): their and their submodules' train()/eval()
    flags, and which buffers and forward/backward hooks they hold."""
    subs = [s for mod in mods for s in mod.modules()]
    return tuple(s.training for s in subs), _held_key(subs, by_name, ("_buffers",))


_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks")


def _held_key(mods: list, by_name: set, kinds: tuple) -> tuple:
    """Which tensors and submodules (``kinds``: of ``_parameters``, ``_buffers``,
    ``_modules``) and which hooks ``mods`` hold, each by its :func:`_serial`, but a buffer
    that a traced step binds anew (``by_name``: the programs read it by name) by its shape and
    dtype."""
    out = []
    for mod in mods:
        ms = _serial(mod) if by_name else None
        for kind in kinds:
            d = getattr(mod, kind, None) or {}
            if kind == "_buffers" and by_name:
                out.extend(("by name", x.shape, x.dtype.str)
                           if (ms, k) in by_name and isinstance(x, Tensor) else _serial(x)
                           for k, x in d.items())
            else:
                out.extend(_serial(x) for x in d.values())
    out.extend(_serial(h) for mod in mods for name in _HOOKS for h in getattr(mod, name, ()))
    return tuple(out)


def _frozen_leaf(t) -> bool:
    """A leaf tensor that does not require grad (a frozen parameter), not yet collected."""
    return t is not None and t.node is None and not t.requires_grad


def _thawed(frozen: tuple) -> bool:
    """Whether a leaf that a program read without requiring grad requires it now."""
    for r in frozen:
        t = r()
        if t is not None and t.requires_grad:
            return True
    return False


def _diff_vjp(needs, g, ans, *specs, call: _DiffCall):
    """The VJP of a replayed differentiable call: its backward program."""
    from ..errors import GradError
    from ..func.custom import _unpack

    if modes().grad_enabled:
        raise GradError("jit: the compiled backward of a jitted call is not differentiable "
                        "again (create_graph=True); take higher derivatives of the function "
                        "itself, or call it under ng.disable_jit()")
    d = call.diff
    xp = B.backend_of(g._data).xp
    parts = [g] if call.shapes is None else _unpack(g, call)
    cts = [p._data for p in parts]
    for k, o in enumerate(d.orders or ()):  # the traced layout, which its kernels were made for
        a = cts[k]
        if o == "C" and not a.flags.c_contiguous:
            cts[k] = xp.ascontiguousarray(a)
        elif o == "F" and not a.flags.f_contiguous:
            cts[k] = xp.asfortranarray(a)
    grads = iter(d.bwd.run(list(call.residuals) + cts))
    return [Tensor._of(next(grads)) if p else None for p in d.present]


def _is_module(o) -> bool:
    try:  # whatever a global name holds (a proxy may answer any attribute)
        return not isinstance(o, type | ModuleType) and type(getattr(
            o, "training", None)) is bool and callable(getattr(o, "modules", None))
    except Exception:
        return False


def _is_optimizer(o) -> bool:
    try:
        return not isinstance(o, type | ModuleType) and isinstance(
            getattr(o, "param_groups", None), list)
    except Exception:
        return False


def _closure_modules(fn) -> list:
    """The modules and optimisers ``fn`` reaches by name: its bound ``self`` (or those among
    its attributes), the variables it closes over, its defaults and the globals it names. A
    module that a jitted function calls without naming it in ``state`` still computes
    differently in ``train()`` and ``eval()``, and a parameter frozen since the trace must not
    be updated, so these key the cache as the state's do."""
    f = getattr(fn, "__func__", fn)
    cands = []
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, ModuleType):
        cands.append(owner)
        if not _is_module(owner):
            cands += list(getattr(owner, "__dict__", {}).values())
    code = getattr(f, "__code__", None)
    if code is not None:
        for cell in getattr(f, "__closure__", None) or ():
            try:
                cands.append(cell.cell_contents)
            except ValueError:  # a cell not filled yet
                pass
        cands += list(getattr(f, "__defaults__", None) or ())
        g = getattr(f, "__globals__", {})
        cands += [g[n] for n in code.co_names if n in g]
    found, seen = [], set()
    for o in cands:  # modules, and optimisers (their parameters' requires_grad keys it)
        if _alive(o) and (_is_module(o) or _is_optimizer(o)) and id(o) not in seen:
            seen.add(id(o))
            found.append(o)
    return found


_PLAIN = (bool, int, float, str, type(None))


def _is_plain(v) -> bool:
    """Whether ``v`` is a value the signature holds by value: a Python number, string or None,
    or a NumPy scalar (what a learning rate computed with ``np.cos`` is)."""
    return type(v) in _PLAIN or isinstance(v, B.NUMPY_SCALARS)


def _plain_key(v) -> tuple:
    """A Python value's entry in the signature: numbers and strings by value (floats by their
    bits, as static arguments), a NumPy/CuPy array by identity, anything else by its type."""
    if _is_plain(v):
        return _static_key(v, 0)
    return ("array", _Ident(v)) if B.is_array(v) else ("other", type(v))


class _Ident:
    """A NumPy/CuPy array the step reads by name, in the signature by identity (rebound to
    another array between calls: traced again), held so that its id is not reused."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return type(other) is _Ident and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


class _Numbers:
    """The public plain attributes (numbers, strings, None) of a jitted function's modules, but
    ``training``: Python code reads them into the program as constants (a dropout's ``p``, a
    decoding position kept as ``self.pos``), so a changed value traces again
    (``Module.__setattr__`` counts a change as one of structure). One entry of the signature,
    hashed once."""

    __slots__ = ("names", "values", "_hash")

    def __init__(self, names: tuple, values: tuple):
        self.names, self.values = names, values  # names as (module index, attribute name)
        self._hash = hash((names, values))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (type(other) is _Numbers and self._hash == other._hash
                                 and self.values == other.values and self.names == other.names)


def _same_names(a, b) -> bool:
    """Whether two signature entries are the :class:`_Numbers` of the same attributes."""
    return type(a) is _Numbers and type(b) is _Numbers and a.names == b.names


def _module_numbers(mods: list) -> _Numbers:
    """The :class:`_Numbers` of ``mods`` as they are now."""
    names, values = [], []
    for k, mod in enumerate(mods):
        for name, v in vars(mod).items():
            if _is_plain(v) and name[0] != "_" and name != "training":
                names.append((k, name))
                values.append(_plain_key(v))
    return _Numbers(tuple(names), tuple(values))


READ_DEPTH = 3
"""How many attributes or items down from a variable :func:`_python_reads` follows the names a
step uses (``cfg.train.optim.lr``: three)."""


CALL_DEPTH = 2
"""How far :func:`_python_reads` follows the Python functions a step names (a helper it calls:
one; a function that helper names: two)."""

_LIBRARIES = frozenset({"nodegrad", "numpy", "scipy", "cupy", "numba", "torch", "jax"})


def _python_reads(fn, mods: list = ()) -> tuple[tuple, tuple]:
    """Readers of the Python numbers and strings, NumPy scalars and arrays (these by identity)
    ``fn`` names in its closure and among its globals (its nested functions' too), and their
    names: a replay holds the traced values, so every call compares them (a learning rate
    annealed as ``lr /= 4`` between epochs). Down to :data:`READ_DEPTH` levels too: the plain
    attributes and string-keyed items ``fn`` names of the objects, classes, modules and dicts
    those variables (and a bound method's ``self``) hold, and of those these hold under names
    ``fn`` uses (``args.lr``, ``cfg["lr"]``,
    ``self.scale``, ``cfg.optim.lr``), and the items of lists and tuples at the integers its
    code holds (``lr[0]``); nn modules and optimisers are left out (a module's numbers are
    keyed with its state, an optimiser's read afresh on every replay). The same for the
    Python functions ``fn`` names (a helper reading a global ``LR``), to :data:`CALL_DEPTH`,
    for the ``forward`` of each class of ``mods`` (the step's modules: a global
    ``TEMPERATURE`` a model divides by) and for the methods these name on the objects they
    reach (``self.compute_loss``), but not the functions of the libraries in
    :data:`_LIBRARIES` or of Python's own."""
    f = getattr(fn, "__func__", fn)
    reads, names, funcs, done = [], [], [], set()
    if getattr(f, "__code__", None) is not None:
        funcs.append((f, getattr(fn, "__self__", None), "", 0))
        done.add(id(f.__code__))
    for mod in mods:
        fwd = _method(mod, "forward")
        if fwd is not None and id(fwd.__code__) not in done:
            done.add(id(fwd.__code__))
            funcs.append((fwd, mod, f" (read by {fwd.__qualname__})", 1))
    for g, owner, label, depth in funcs:  # grows as named functions are found
        for h, o in _reads_of(g, owner, label, reads, names):
            if depth < CALL_DEPTH and id(h.__code__) not in done:
                done.add(id(h.__code__))
                funcs.append((h, o, f" (read by {h.__qualname__})", depth + 1))
    return tuple(reads), tuple(names)


def _method(obj, name: str):
    """The Python function ``type(obj)`` defines (or inherits) as ``name`` where
    :func:`_followed` looks into it (``self.compute_loss``), else None; no descriptor runs."""
    for c in type(obj).__mro__:
        if name in c.__dict__:
            v = c.__dict__[name]
            return v if _followed(v) else None
    return None


def _followed(v) -> bool:
    """Whether :func:`_python_reads` looks into function ``v``: a Python function of the
    program's own code, not of a library's or Python's."""
    if type(v) is not FunctionType:
        return False
    top = (getattr(v, "__module__", None) or "").partition(".")[0]
    return top not in _LIBRARIES and top not in sys.stdlib_module_names


def _reads_of(f, owner, label: str, reads: list, names: list) -> list:
    """:func:`_python_reads` of one function ``f`` (a bound method's ``self``: ``owner``),
    appending to ``reads`` and ``names`` (each name followed by ``label``); returns the
    Python functions it names, and the methods of the objects it reaches that it names (an
    nn module's too: ``self.attend``), as ``(function, its self or None)``, to look into
    next."""
    code = f.__code__
    attrs, keys, ints = _code_names(code)
    funcs: list = []
    for name, read, v, _ in _walk(f, code, owner, attrs, keys, ints, funcs):
        if _is_plain(v) or B.is_array(v):
            reads.append(read)
            names.append(name + label)
        elif _followed(v):  # a helper, named or reached through a module or a dict
            funcs.append((v, None))
    return funcs


def _walk(f, code, owner, attrs: dict, keys: dict, ints: dict, funcs: list):
    """``(name, reader, value, depth)`` for each variable of ``f``'s closure and each global
    ``attrs`` names (depth 1), a bound method's ``self`` (``owner``, depth 1), and, down to
    :data:`READ_DEPTH`, what the holders among them hold under the code's names and
    constants (:func:`_inside`, depth + 1), nearest first, each object looked into once (a
    cycle, a config two names share). A value that cannot be inspected (a dead
    ``weakref.proxy``) is left out; the methods the code names on the objects go to
    ``funcs``."""
    found = [(name, read, v, 1) for name, read, v in _named_values(f, code, attrs)]
    if owner is not None:
        found.append(("self", functools.partial(_same, owner), owner, 1))
    seen = set()
    for name, read, v, depth in found:  # grows as holders are looked into
        if not _alive(v):
            continue
        yield name, read, v, depth
        if depth <= READ_DEPTH and type(v) not in _NOT_HOLDERS and id(v) not in seen:
            seen.add(id(v))
            try:
                found += [(n, r, x, depth + 1)
                          for n, r, x in _inside(name, read, v, attrs, keys, ints, funcs)]
            except Exception:  # noqa: BLE001 - what it holds is read once, at the trace
                continue


def _code_names(code) -> tuple[dict, dict, dict]:
    """The names, string constants and integer constants of ``code`` and of the functions
    nested in it: the attributes, keys and indices it may read."""
    codes, k = [code], 0
    while k < len(codes):
        codes += [c for c in codes[k].co_consts if hasattr(c, "co_names")]
        k += 1
    return (dict.fromkeys(n for c in codes for n in c.co_names),
            dict.fromkeys(v for c in codes for v in c.co_consts if type(v) is str),
            dict.fromkeys(v for c in codes for v in c.co_consts if type(v) is int))


def _inside(where: str, read, v, attrs: dict, keys: dict, ints: dict, funcs: list) -> list:
    """``(name, reader, value)`` of what :func:`_reads_of` reads inside holder ``v`` (a dict's
    items, a list's or tuple's, an object's, class's or module's attributes, under the names
    and constants the code holds); the methods of an instance that the code names go to
    ``funcs``. Nothing inside tensors, optimisers and other callables, nor inside nn modules
    but their methods (their numbers are keyed with their state)."""
    if type(v) is dict:
        return [(f"{where}[{key!r}]", functools.partial(_item_now, read, key), v[key])
                for key in keys if key in v]
    if type(v) in (list, tuple):  # lr[0]: at the integers the step's code holds
        return [(f"{where}[{i}]", functools.partial(_index_now, read, i), v[i])
                for i in ints if -len(v) <= i < len(v)]
    if isinstance(v, Tensor) or _is_optimizer(v) or (
            callable(v) and not isinstance(v, type | ModuleType) and not _is_module(v)):
        return []
    d = getattr(v, "__dict__", None)
    if d is None or not hasattr(d, "get"):
        return []
    if not isinstance(v, type | ModuleType):  # an instance: the methods it names
        funcs += [(m, v) for a in attrs if a[:2] != "__" and a not in d
                  for m in (_method(v, a),) if m is not None]
    if _is_module(v):
        return []
    return [(f"{where}.{a}", functools.partial(_attr_now, read, a), d[a])
            for a in attrs if a[:2] != "__" and a in d]


_NOT_HOLDERS = (set, frozenset, bytes, bytearray)


def _named_values(f, code, names) -> list:
    """``(name, reader, value)`` for each variable of function ``f``'s closure that holds a
    value (the reader reads it again), then each of ``names`` among its globals."""
    found = []
    for name, cell in zip(code.co_freevars, getattr(f, "__closure__", None) or ()):
        try:
            v = cell.cell_contents
        except ValueError:  # emptied (del)
            continue
        found.append((name, functools.partial(_cell_value, cell), v))
    g = getattr(f, "__globals__", {})
    found += [(name, functools.partial(g.get, name), g[name]) for name in names if name in g]
    return [x for x in found if _alive(x[2])]


_PROXIES = (weakref.ProxyType, weakref.CallableProxyType)


def _alive(v) -> bool:
    """False for a ``weakref.proxy`` whose object is gone (any look at it raises)."""
    if type(v) not in _PROXIES:
        return True
    try:
        v.__class__  # noqa: B018 - the look that raises
    except ReferenceError:
        return False
    return True


def _same(v):
    """``v`` itself: the reader of a holder that never changes (a bound method's ``self``)."""
    return v


def _attr_now(read, a: str):
    """Attribute ``a`` of the object ``read()`` gives now, from its ``__dict__`` (no property
    or other descriptor runs), or None."""
    d = getattr(read(), "__dict__", None)
    return d.get(a) if d is not None and hasattr(d, "get") else None


def _index_now(read, i: int):
    """Item ``i`` of the list or tuple ``read()`` gives now, or None."""
    v = read()
    return v[i] if type(v) in (list, tuple) and -len(v) <= i < len(v) else None


def _item_now(read, key: str):
    """Item ``key`` of the dict ``read()`` gives now, or None."""
    v = read()
    return v.get(key) if type(v) is dict else None


def _tensor_holders(mods: list, fn) -> list:
    """``(where, read, value, items, arrays by id)`` for each public plain attribute of
    ``mods``, each variable of ``fn``'s closure and each global it names, each public
    attribute or item of the objects and dicts those hold, and, down to :data:`READ_DEPTH`,
    the attributes and items inside those that ``fn``'s code names, that holds a tensor or a
    tuple or list of tensors now (a recurrent state kept as ``self.hidden``, rebound through
    ``nonlocal hidden``, or kept as ``trainer.hidden`` or ``trainer.state.hidden``): see
    :func:`_replaced_reads`."""
    found = []

    def add(where, read, v):
        items = (v,) if isinstance(v, Tensor) else tuple(v) if type(v) in (tuple, list) else ()
        if items and all(isinstance(t, Tensor) for t in items):
            found.append((where, read, v, items, {id(t._data): t._data for t in items}))

    def add_inside(where, v):  # one level down: a trainer object's attributes, a dict's items
        if type(v) is dict:
            for key, x in v.items():
                if type(key) is str:
                    add(f"{where}[{key!r}]", functools.partial(v.get, key), x)
        elif not (isinstance(v, type | ModuleType) or callable(v) or _is_module(v)
                  or _is_optimizer(v)):
            d = getattr(v, "__dict__", None)
            if type(d) is dict:
                for key, x in d.items():
                    if key[:1] != "_":
                        add(f"{where}.{key}", functools.partial(d.get, key), x)

    f = getattr(fn, "__func__", fn)  # the nearest first: a tensor several hold is read
    code = getattr(f, "__code__", None)  # through the first (_through_reads)
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        add_inside("self", owner)
    if code is not None:
        for name, read, v in _named_values(f, code, dict.fromkeys(code.co_names)):
            add(name, read, v)
            add_inside(name, v)
        # deeper, along the names the code uses (``trainer.state.hidden``), read through the
        # path on each call: an object on the way may be replaced too
        attrs, keys, ints = _code_names(code)
        for where, read, v, depth in _walk(f, code, owner, attrs, keys, ints, []):
            if depth >= 3:  # the first two levels were added above
                add(where, read, v)
    for mod in mods:
        d = vars(mod)
        for name, v in d.items():
            if name[0] != "_":
                add(f"{type(mod).__name__}.{name}", functools.partial(d.get, name), v)
    if found:  # a handle on a parameter or buffer (spectral_norm's ``weight`` at first) is
        # read as that tensor: the variable is not the state it carries
        state = {id(t._data) for mod in mods for name in ("_parameters", "_buffers")
                 for t in getattr(mod, name, {}).values() if t is not None}
        found = [(w, r, v, items, {k: a for k, a in arrays.items() if k not in state})
                 for w, r, v, items, arrays in found]
    return found


def _through_reads(holders: list) -> dict:
    """``Recorder.through``: for each array a holder's tensors have now, a getter of the array
    the holder has at that place on a later call (the caller may rebind the variable between
    calls: ``hidden = h.detach()``), checked to still hold a tensor there, and the tensor."""
    through = {}
    for where, read, v, items, arrays in holders:
        for k, t in enumerate(items):
            if id(t._data) in arrays:  # (the array kept: its id stays its own)
                through.setdefault(id(t._data), (functools.partial(
                    _read_through, read, None if isinstance(v, Tensor) else k, where), t,
                    t._data))
    return through


def _read_through(read, k: int | None, where: str):
    """The array of the tensor a variable holds now (at ``[k]`` of the tuple or list it holds)."""
    v = read()
    t = v if k is None else v[k] if type(v) in (tuple, list) and len(v) > k else None
    if not isinstance(t, Tensor):
        raise JitError(f"jit: {where} held a tensor{'' if k is None else f' at [{k}]'} when "
                       f"the step was traced and holds {type(v).__name__} now; call the jitted "
                       "function's clear_cache() after changing it")
    return t._data


def _replaced_reads(holders: list, rec, kept: set = frozenset()) -> str | None:
    """Why the traced signature must run eagerly when the step replaced a tensor it read from a
    Python variable (``out, self.hidden = rnn(x, self.hidden)``): a replay would read the
    traced call's tensor on every call, and never replace it. ``kept``: the ids of the values
    of the attributes whose new tensors the replays bind (:func:`_bound_places`)."""
    if not holders:
        return None
    loaded = {id(d) for d in rec.load_data.values()}
    for where, read, v, items, arrays in holders:
        if id(v) in kept:
            continue
        now = read()
        if (now is not v or (type(v) is list and (len(v) != len(items) or any(
                a is not b for a, b in zip(v, items))))) and not loaded.isdisjoint(arrays):
            return (f"jit: the step replaces {where}, a tensor it read: state carried from "
                    "call to call in a Python variable, which a replay would neither read "
                    "anew nor replace, so this signature runs eagerly; return the new value "
                    "and pass it back in (out, hidden = step(x, hidden)), or keep it in a "
                    "tensor written in place (a registered buffer's copy_)")
    return None


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:  # emptied (del) since
        return None


def _same_reads(reads: tuple, values: tuple) -> bool:
    """Whether each read gives the very object of ``values`` (else the signature is built)."""
    for r, v in zip(reads, values):
        if r() is not v:
            return False
    return True


def _hook_guard(rec) -> tuple | None:
    """The leaves that the trace's backward accumulated into, with their gradient hooks and
    post-accumulate hooks as they were (see ``_Entry.hooks``); None when there are none."""
    leaves = {}
    for i in rec.instrs:
        if i.kind == "effect" and isinstance(i.params, dict) and "leaf" in i.params:
            leaves.setdefault(id(i.params["leaf"]), i.params["leaf"])
    if not leaves:
        return None
    return tuple((t, list(t._hooks) if t._hooks else None, _post_hooks(t))
                 for t in leaves.values())


def _post_hooks(t) -> list | None:
    entry = POST_ACCUMULATE.get(id(t)) if POST_ACCUMULATE else None
    return list(entry[1]) if entry is not None and entry[0]() is t and entry[1] else None


def _hooks_moved(guard: tuple) -> bool:
    """Whether a leaf's gradient hooks differ from the trace's (``_hook_guard``)."""
    for t, hooks, post in guard:
        if (t._hooks or None) != hooks or (
                (POST_ACCUMULATE or post is not None) and _post_hooks(t) != post):
            return True
    return False


def _matches(hot: tuple, args: tuple, m, modules: list, params: list) -> list | None:
    """The argument arrays when this call has the signature of the ``hot`` entry (tensors of
    the same shapes and dtypes on the CPU, distinct arrays, the same modes and parameters
    requiring grad), else None."""
    entry, specs, grad, training, flags, dflt, _, _ = hot
    if len(args) != len(specs) or m.grad_enabled is not grad or B.DEFAULT_FLOAT is not dflt:
        return None
    arrays = []
    for a, (shape, dtype) in zip(args, specs):
        if type(a) is not Tensor or (grad and a.requires_grad):
            return None
        d = a._data
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


def _outputs(entry: _Entry, outs: list, params: list = ()):
    """The replay's arrays as the function's outputs (tensors in its output tree), the last
    ones bound to what the step binds anew (``params``: the state's parameters)."""
    if entry.binds is not None:
        k = len(outs) - entry.binds[1]
        _bind(entry.binds[0], outs[k:], params)
        outs = outs[:k]
    if entry.out_def is None:  # the function returned one tensor
        return Tensor._of(outs[0])
    it = iter(outs)
    res = [Tensor._of(next(it)) if k is None else k for k in entry.out_kinds]
    return tree_unflatten(entry.out_def, res)


def _not_computed(rec, t: Tensor) -> bool:
    """Whether the step did not compute ``t`` (nor was it handed ``t``): a tensor made by a
    factory, or one from outside, which the program loads or holds as a constant. Bound to a
    buffer, a replay could give neither a new tensor each call nor the same one."""
    s = rec.slot.get(id(t._data))
    return s is None or s in rec.consts or any(
        i.kind == "load" and i.out == s for i in rec.instrs)


def _bind(binds: tuple, arrays: list, parents: list) -> None:
    """Bind what a replayed step binds anew to tensors on its new arrays, as the step's
    ``self.name = ...`` did when traced: each setter takes its count of ``arrays`` (and the
    tensors the replay differentiates with respect to, ``parents``)."""
    k = 0
    for setter, n in binds:
        setter(arrays[k:k + n], parents)
        k += n


def _set_buffer(ref, name: str, arrays: list, parents: list) -> None:
    """Into the module's buffers: its structure is as it was, the signature unchanged."""
    mod = ref()
    if mod is not None:
        mod._buffers[name] = Tensor._of(arrays[0])


def _set_place(store, key: str, where: str, kind, grad: bool, arrays: list,
               parents: list) -> None:
    """``store[key] =`` a tensor, or a tuple or list of them (``kind``). One that required grad
    when traced (``module.weight`` set by pruning's forward pre-hook) requires grad, on a node
    whose VJP refuses (:func:`_unrecorded_vjp`): a replay records no graph behind it, and a
    gradient must not be dropped without a word."""
    parents = [t for t in parents if t.requires_grad] if grad else None
    if parents:
        shapes = tuple(t.shape for t in parents)
        ts = [Tensor._of(a, Node.make(_unrecorded_rule(), {"where": where}, tuple(
            t.node or t for t in parents), None, None, shapes, None), True) for a in arrays]
    else:
        ts = [Tensor._of(a) for a in arrays]
    store[key] = ts[0] if kind is None else kind(ts)


_UNRECORDED: list = []


def _unrecorded_rule():
    """The rule of the nodes of :func:`_set_place`'s tensors that require grad."""
    if not _UNRECORDED:
        from ..func.custom import _rule

        _UNRECORDED.append(_rule("jit[bound attribute]", _unrecorded_vjp))
    return _UNRECORDED[0]


def _unrecorded_vjp(needs, g, ans, *specs, where: str):
    from ..errors import GradError

    raise GradError(f"jit: backward reached {where}, a tensor that a replayed step bound "
                    "there: a replay does not record the graph behind it; "
                    "differentiate what the step returns, or run this step eagerly "
                    "(ng.disable_jit())")


class _Cell:
    """A variable of a closure as a mapping of one name (a place of :func:`_places`)."""

    __slots__ = ("cell", "name")

    def __init__(self, cell, name: str) -> None:
        self.cell, self.name = cell, name

    def items(self) -> list:
        v = _cell_value(self.cell)
        return [] if v is None else [(self.name, v)]

    def get(self, key: str, default=None):
        v = _cell_value(self.cell) if key == self.name else None
        return default if v is None else v

    def __setitem__(self, key: str, value) -> None:
        self.cell.cell_contents = value


def _places(objs: list, fn) -> list:
    """``(label, mapping, its items now, public only)`` for each place a step may bind a tensor
    to: the attributes of ``objs`` (the modules it runs, a bound method's object), the
    variables of ``fn``'s closure and the globals its code names, and the items of the dicts
    and the attributes of the plain objects those hold (``box["last"]``, ``trainer.last``)."""
    out = []

    def add(label: str, d, public: bool, names=None) -> None:
        out.append((label, d, {k: v for k, v in d.items() if type(k) is str and (
            not public or k[:1] != "_") and (names is None or k in names)}, public))

    for o in objs:
        d = getattr(o, "__dict__", None)
        if type(d) is dict:
            add(f"{type(o).__name__}.", d, True)
    f = getattr(fn, "__func__", fn)
    code = getattr(f, "__code__", None)
    if code is None:
        return out
    for name, cell in zip(code.co_freevars, getattr(f, "__closure__", None) or ()):
        add("", _Cell(cell, name), False)
    g = getattr(f, "__globals__", None)
    if type(g) is dict:
        add("", g, False, frozenset(code.co_names))
    for name, _, v in _named_values(f, code, dict.fromkeys(code.co_names)):
        if type(v) is dict:
            add(f"{name}[", v, False)
        elif not (isinstance(v, type | ModuleType) or callable(v) or _is_module(v)
                  or _is_optimizer(v) or isinstance(v, Tensor)):
            d = getattr(v, "__dict__", None)
            if type(d) is dict:
                add(f"{name}.", d, True)
    return out


def _tensors_of(v) -> tuple | None:
    """The tensors of a tensor, or of a non-empty tuple or list of tensors, else None."""
    if isinstance(v, Tensor):
        return (v,)
    if type(v) in (tuple, list) and v and all(isinstance(t, Tensor) for t in v):
        return tuple(v)
    return None


def _bound_places(rec, places: list, binds: list, slots: list) -> set:
    """The tensors the traced step bound to the places of :func:`_places`:
    ``self.hidden = h.detach()``, ``self.last = out.detach()``, ``global last``,
    ``box["v"] = y``. Each becomes extra outputs of the program and a setter in ``binds`` that
    binds the replay's values after it (a replay otherwise left the traced call's tensor
    there); a tensor the step reads back through such a place is read through it on each
    replay (``Recorder.through``). A tensor that requires grad is bound requiring grad, on a
    node that refuses backward (:func:`_set_place`); read back by the next call it would
    chain the calls' graphs, which runs eagerly (:func:`_replaced_reads`). A tensor the step
    did not compute (a factory's, one from outside) is left as the trace bound it. Returns
    the ids of the values replaced without grad (no reason to run eagerly)."""
    kept: set = set()
    for label, d, before, public in places:
        for name, v in list(d.items()):
            if type(name) is not str or (public and name[:1] == "_"):
                continue
            old = before.get(name, _same)
            items = None if v is old else _tensors_of(v)
            if items is None:  # unchanged, or not tensors (numbers key the signature)
                continue
            if any(_not_computed(rec, t) for t in items):  # a cache filled once, a reset to
                continue  # ng.zeros: the traced tensor stays (the programs hold it as it was)
            where = f"{label}{name!r}]" if label[-1:] == "[" else f"{label}{name}"
            grad = any(t.requires_grad for t in items)
            if grad and not all(t.requires_grad for t in items):
                if rec.fallback is None:
                    rec.fallback = (f"jit: the step binds tensors that require grad and some "
                                    f"that do not to {where}, which a replay cannot repeat: "
                                    "this signature runs eagerly")
                continue
            binds.append((functools.partial(_set_place, d, name, where, None if isinstance(
                v, Tensor) else type(v), grad), len(items)))
            slots.extend(rec.slot_of(t, t._data) for t in items)
            if not grad:  # (one that requires grad and is read back chains graphs: eager)
                kept.add(id(old))
    return kept


def _buffer_now(ref, name: str, where: str):
    """The array of the buffer ``name`` of the module ``ref()`` now (a load by name)."""
    mod = ref()
    t = None if mod is None else mod._buffers.get(name)
    if not isinstance(t, Tensor):
        raise JitError(f"jit: the buffer {where} read by the step holds "
                       f"{type(t).__name__} now, not a tensor; call the jitted function's "
                       "clear_cache() after changing it")
    return t._data


def _tensors_for_arrays(x):
    """``x`` (an argument, or the tuple, list or dict of them) with each raw NumPy/CuPy array
    as a Tensor on its memory, as ``jax.jit`` hands its function traced arrays: Python that
    indexes or reshapes a raw array (``y[:, None]``) computes outside the trace, and every
    replay would repeat the first call's value."""
    if B.is_array(x):
        return Tensor._of(x, None, False)
    if type(x) in (list, tuple):
        return type(x)(_tensors_for_arrays(v) for v in x)
    if type(x) is dict:
        return {k: _tensors_for_arrays(v) for k, v in x.items()}
    return x


def _static_args(fn: Callable, nums, names) -> tuple[frozenset, frozenset]:
    """``static_argnums`` and ``static_argnames`` as sets, each completed from the other
    through ``fn``'s signature where it has one (JAX's rule: an argument named either way is
    static whether it comes by position or by keyword)."""
    nums = (nums,) if isinstance(nums, int) else tuple(nums)
    names = (names,) if isinstance(names, str) else tuple(names)
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in nums):
        raise TypeError(f"jit: static_argnums must be ints, got {nums!r}")
    if not all(isinstance(k, str) for k in names):
        raise TypeError(f"jit: static_argnames must be strings, got {names!r}")
    if not nums and not names:
        return frozenset(), frozenset()
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: as given
        return frozenset(nums), frozenset(names)
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                        p.POSITIONAL_OR_KEYWORD)]
    more_nums = {positional.index(a) for a in names if a in positional}
    more_names = {positional[k] for k in nums if -len(positional) <= k < len(positional)}
    return frozenset(nums) | more_nums, frozenset(names) | more_names


def _number_type(t) -> bool:
    """Whether a static argument of type ``t`` is a number whose value may change every call
    (a step count, a scheduled learning rate): Python's or NumPy's scalars, not bools."""
    return t is not bool and isinstance(t, type) and (
        issubclass(t, int | float | complex) or (t.__module__ == "numpy" and t is not B.np.bool_))


def _static_key(x, where) -> tuple:
    """The signature's entry for an argument that is not a tensor (a static value, as JAX's
    ``static_argnums``): its type and value, with floats told apart by their bits (``0.0 ==
    -0.0`` and ``nan != nan``, yet ``x * s`` differs between them). A value that does not
    hash is refused: keyed by identity, a changed or recycled object would replay another
    value's program."""
    t = type(x)
    if t is _Static:
        if isinstance(x.value, Tensor) or B.is_array(x.value):
            raise JitError("jit: static_argnums/static_argnames name an argument that is a "
                           "tensor; a tensor's values are not part of the signature: pass it "
                           "as an ordinary (traced) argument")
        return ("static", _Static, _static_key(x.value, where))
    if t is float or t is complex or (getattr(x, "dtype", None) is not None and getattr(
            x, "ndim", None) == 0 and B.is_inexact(x.dtype)):
        c = complex(x)
        return ("static", t, c.real.hex(), c.imag.hex())
    if t is slice:  # not hashable before Python 3.12
        return ("static", slice, tuple(_static_key(v, where) for v in (x.start, x.stop,
                                                                        x.step)))
    try:
        hash(x)
    except TypeError:
        raise JitError(
            f"jit: an argument of type {t.__name__} (after {where} tensor arguments) is not "
            "hashable; arguments that are not tensors are static, part of the signature (as "
            "in jax.jit's static_argnums), and are compared by value: pass a hashable value "
            "(a tuple, a frozen dataclass) or pass its tensors as arguments") from None
    if isinstance(x, tuple):  # a static tuple (static_argnums) of floats: by their bits too
        return ("static", t, tuple(_static_key(v, where) for v in x))
    return ("static", t, x)


class _Static:
    """An argument named by ``static_argnums``/``static_argnames``: one leaf of the signature,
    compared by value (a tuple or a list stays one value, not a tree of arguments)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _def_key(tdef):
    """A hashable form of a tree's structure."""
    if tdef.kind is None:
        return None
    aux = tdef.aux
    try:
        hash(aux)
    except TypeError:
        aux = tuple(aux) if isinstance(aux, list) else ("object", _serial(aux))
    return (tdef.kind, aux, tuple(_def_key(c) for c in tdef.children))


def _check_hint(name: str, value: Any, kind: type) -> None:
    """Refuse a malformed value of an accepted-and-ignored JAX keyword (rather than ignore it)."""
    items = (value,) if isinstance(value, kind) else value
    try:
        ok = all(isinstance(v, kind) and not isinstance(v, bool) for v in items)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"jit: {name} must be {'an int' if kind is int else 'a str'} or a "
                        f"sequence of them, got {value!r}")


def jit(fn: Callable | None = None, *, state: Any = None, max_cache: int = 32,
        fuse: bool | None = None, optimize: bool = True, static_argnums: int | tuple = (),
        static_argnames: str | tuple = (), donate_argnums: int | tuple | None = None,
        donate_argnames: str | tuple | None = None, keep_unused: bool = False,
        inline: bool = False):
    """Compile ``fn``: trace it on the first call per input signature, replay afterwards.

    Arguments that are not tensors are static (part of the signature, compared by value; they
    must be hashable). ``static_argnums``/``static_argnames`` (JAX's) make the arguments they
    name static as a whole, a tuple of numbers or a tensor-free tree included, rather than a
    tree of arguments. ``state`` names what a
    training step reads and changes in place (a model, an optimiser): the step may then call
    ``backward`` and ``opt.step()``. ``fuse`` (default: when numba, or CuPy on a GPU, is there)
    compiles chains of elementwise ops into one kernel; single slow ops too once numba is
    imported, which a long-running program does itself (:data:`UPGRADE_AFTER_S`) and
    ``fuse=True`` does at once; ``optimize=False`` replays the trace as recorded (no CSE,
    folding or buffer reuse). Use as ``jit(f)`` or ``@jit(state=...)``.

    JAX's ``donate_argnums``/``donate_argnames`` (let the compiler reuse an argument's buffer),
    ``keep_unused`` and ``inline`` are accepted and have no effect: a replay never writes into
    its arguments, so donating changes nothing but the promise the caller makes.
    """
    if donate_argnums is not None:
        _check_hint("donate_argnums", donate_argnums, int)
    if donate_argnames is not None:
        _check_hint("donate_argnames", donate_argnames, str)
    opts = dict(static_argnums=static_argnums, static_argnames=static_argnames)
    if fn is None:
        return lambda f: Jitted(f, state, max_cache, fuse, optimize, **opts)
    return Jitted(fn, state, max_cache, fuse, optimize, **opts)
