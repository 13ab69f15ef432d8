"""The recorder: while a jit trace runs, ``bind`` hands it every primitive it executes.

Arrays are known by identity: an input's array, the result of a recorded operation, or an
array read from a tensor the trace did not produce (a parameter, a closed-over tensor), which
becomes a ``load`` of that tensor's current value at the same point of the replay. Any other
array or number is a constant. Steps with effects outside the arrays (optimiser updates,
gradient accumulation, random draws) are recorded whole (:func:`nodegrad.autodiff.effect`).
"""

from __future__ import annotations

import weakref
from functools import partial

from .. import _backend as B
from ..autodiff import creation_site, modes
from ..errors import JitError
from ..primitive import as_float
from ..tensor import Tensor
from .program import Instr, Program


class _AlwaysSeen:
    """A stand-in for backward's set of fresh arrays: every gradient is copied on replay."""

    __slots__ = ()

    def __contains__(self, item) -> bool:
        return True

    def add(self, item) -> None:
        pass


_SEEN = _AlwaysSeen()


class Recorder:
    """Collects the instructions of one trace (see the module docstring)."""

    def __init__(self) -> None:
        self.instrs: list[Instr] = []
        self.nslots = 0
        self.slot: dict[int, int] = {}  # id(array) -> slot
        self.keep: list = []  # every object whose id is a key above, kept alive while tracing
        # but the results of recorded operations on the CPU, held weakly: eager code frees
        # them as it would untraced (a trace's peak memory is eager's), and one that is gone
        # leaves its id (which a new array may reuse) and its layout for the passes
        self.weak: dict[int, weakref.ref] = {}  # slot -> the result it held
        self.gone: dict[int, tuple] = {}  # slot -> (shape, strides, dtype) of a freed result
        self.consts: dict[int, object] = {}
        self.aliases: dict[int, object] = {}  # id(array) -> getter of where it lives now
        self.grad_of: dict[int, object] = {}  # id(array) in aliases -> the leaf whose .grad it is
        self.fallback: str | None = None  # why this signature must run eagerly, if it must
        # torch.compile's graph break: reading a traced value makes the signature run eagerly
        # (set by ng.compile), rather than an error (ng.jit)
        self.graph_breaks = False
        self.backend = None
        self.meta: dict[int, tuple] = {}  # slot -> (shape, dtype) of the array it held at trace
        self.loaded: dict[int, object] = {}  # load slot -> weak reference to its tensor
        self.load_data: dict[int, object] = {}  # load slot -> the array it read at trace
        # id(array) -> (a getter of the array a Python variable holds now, the tensor it holds
        # at the trace, that array): a tensor the step reads from its closure, its globals or a
        # module's plain attribute, which the caller may rebind between calls (``hidden =
        # h.detach()``); a replay reads the variable
        self.through: dict[int, tuple] = {}
        self.before: dict[int, object] = {}  # load slot -> its value before an in-place change
        self.changed: set[int] = set()  # id(array) of tensors outside the program an effect got
        self.owned: set[int] = set()  # load slots find_owners looked at
        self.read_out: dict[int, str] = {}  # id(array) of tensors outside read into Python: where

    # --- slots --------------------------------------------------------------------------------
    def _new(self, value, weak: bool = False) -> int:
        s = self.nslots
        self.nslots += 1
        if B.is_array(value):
            self.slot[id(value)] = s
            if weak and type(value) is B.ndarray:
                self.weak[s] = weakref.ref(value, partial(
                    _freed, self.slot, self.gone, id(value), s,
                    (value.shape, value.strides, value.dtype)))
            else:
                self.keep.append(value)
            self.meta[s] = (tuple(value.shape), value.dtype)
        return s

    def _held(self):
        """Every array the trace knows by its id now: those it keeps and the live results."""
        yield from self.keep
        for r in self.weak.values():
            v = r()
            if v is not None:
                yield v

    def shapes(self) -> dict:
        """slot -> (shape, dtype) of the arrays :meth:`values` gives, without making stand-ins
        for the freed results (their layouts suffice)."""
        out = {self.slot[id(a)]: (tuple(a.shape), a.dtype) for a in self._held()
               if id(a) in self.slot}
        out.update({s: (tuple(shape), dtype) for s, (shape, _, dtype) in dict(self.gone).items()})
        return out

    def values(self) -> dict:
        """slot -> the array it held at trace, where the passes can still look at one: the
        array itself, or for a result since freed a stand-in with its layout
        (:func:`~nodegrad._backend.stand_ins`)."""
        out = {self.slot[id(a)]: a for a in self._held() if id(a) in self.slot}
        gone = dict(self.gone)  # (held now, the live ones cannot join it while it is read)
        if gone:
            out.update(B.stand_ins(gone))
        return out

    def input(self, array) -> int:
        """A slot for an input array (the same array twice gets one slot)."""
        s = self.slot.get(id(array))
        if s is None:
            s = self._new(array)
            if self.backend is None:
                self.backend = B.backend_of(array)
        return s

    def const(self, value) -> int:
        s = self._new(value)
        self.consts[s] = value
        return s

    def _load(self, name: str, getter, array) -> int:
        load = load_fn(name, getter, array.shape, array.dtype)
        s = self._new(array)
        if self.backend is None:  # a step without array inputs works on its state's device
            self.backend = B.backend_of(array)
        self.instrs.append(Instr("load", name, load, (), s))
        return s

    def slot_of(self, a, d) -> int:
        """The slot of argument ``a`` (a tensor, an array or a number) whose data is ``d``."""
        if not B.is_array(d):
            return self.const(d)
        s = self.slot.get(id(d))
        if s is not None:
            return s
        get = self.aliases.get(id(d))
        if get is not None:
            return self._load("gradient", get, d)
        if isinstance(a, Tensor):
            a = _owner(a, d)
            through = self.through.get(id(d)) if self.through and not a.requires_grad else None
            if through is not None:  # read through the variable, as the tensor it holds
                getter, a, _ = through
                s = self._load(f"tensor{tuple(d.shape)}", getter, d)
                self.instrs[-1].fn.held = a  # as a plain load's getter holds it
                self.owned.add(s)  # (find_owners: its owner is the variable's tensor)
            else:
                s = self._load(f"tensor{tuple(d.shape)}", lambda t=a: t._data, d)
                # (a strong reference would look like a user)
                self.instrs[-1].fn.tensor = weakref.ref(a)
            self.loaded[s] = weakref.ref(a)
            self.load_data[s] = d
            return s
        return self.const(d)

    # --- what bind and the engine call --------------------------------------------------------
    def record(self, prim, args, datas, params, out, backend) -> None:
        """Keep one primitive application (called by ``bind`` after its forward)."""
        ins = tuple(self.slot_of(a, d) for a, d in zip(args, datas))
        fn = None
        if params and self.fallback is None and _holds_traced(params, self.slot):
            lifted = _lift_index(params, self.slot)
            if lifted is None:
                self.fallback = (f"'{prim.name}' takes a traced value as a parameter (at "
                                 f"{creation_site()})")
            else:  # an index array computed in the step (embedding's tokens): an input
                params, arrays = lifted
                fn = _op_lifted(prim, params, backend, out, len(ins))
                ins += tuple(self.slot[id(a)] for a in arrays)
        s = self._new(out, weak=True)
        if self.backend is None:  # a step without array inputs (it reads only state)
            self.backend = backend
        self.instrs.append(Instr("op", prim.name, fn or _op(prim, params, backend, out), ins, s,
                                 params=params))

    def effect(self, fn, args: tuple, kwargs: dict):
        """Run ``fn`` eagerly now and record it to be called again on replay."""
        # tensors holding traced values, positional or keyword (``sched.step(metrics=loss)``),
        # are fed from their slots on replay; any other argument (an optimiser, a buffer that
        # lives outside the program) is passed as is
        pos = [i for i, a in enumerate(args) if isinstance(a, Tensor) and id(a._data) in self.slot]
        names = [k for k, a in kwargs.items()
                 if isinstance(a, Tensor) and id(a._data) in self.slot]
        ins = tuple(self.slot[id(args[i]._data)] for i in pos) + tuple(
            self.slot[id(kwargs[k]._data)] for k in names)
        for a in (*args, *kwargs.values()):  # state the effect may change on every replay
            if isinstance(a, Tensor) and id(a._data) not in self.slot:  # (a norm's counter)
                self.changed.add(id(a._data))
                self.keep.append(a._data)
                self._read_before(a._data, getattr(fn, "__qualname__", "an effect"))
        held = self._held_grads()
        res = self._run_untraced(fn, args, kwargs)
        self._load_lost_grads(held)
        out = self._new(res) if B.is_array(res) else None
        name = getattr(fn, "__qualname__", "effect")
        if pos or names:
            def call(*vals):
                a, kw = list(args), dict(kwargs)
                for i, v in zip(pos, vals):
                    a[i] = Tensor._of(v)
                for k, v in zip(names, vals[len(pos):]):
                    kw[k] = Tensor._of(v)
                return fn(*a, **kw)
        else:
            def call():
                return fn(*args, **kwargs)
        # what :func:`.passes.lower_gradients` reads to replay an optimiser's step directly
        self.instrs.append(Instr("effect", name, call, ins, out,
                                 params={"fn": fn, "args": args, "kwargs": kwargs}))
        return res

    def accumulate(self, fn, leaf, g, create_graph: bool) -> None:
        """Record backward's ``leaf.grad += g``; later reads of ``leaf.grad`` load it afresh."""
        s = self.slot_of(g, g._data)
        held = self._held_grads()
        self._run_untraced(fn, (leaf, g, create_graph, _SEEN), {})
        self._load_lost_grads(held)

        def acc(v):
            fn(leaf, Tensor._of(v), False, _SEEN)

        def acc_owned(v):  # v is a new array of this call that nothing else reads (.passes)
            fn(leaf, Tensor._of(v), False, set())

        self.instrs.append(Instr("effect", "accumulate_grad", acc, (s,), None,
                                 params={"owned": acc_owned, "leaf": leaf}, access="read"))
        grad = leaf.grad
        if grad is not None:
            self.keep.append(grad._data)
            self.slot.pop(id(grad._data), None)  # its value is now the accumulated one
            self.aliases[id(grad._data)] = lambda: leaf.grad._data
            self.grad_of[id(grad._data)] = leaf

    def _held_grads(self) -> list:
        """The gradient arrays known by where they live (``aliases``) that are their leaf's
        ``.grad`` now, before an effect runs (see :meth:`check_grads`)."""
        self.check_grads()
        held = []
        for k, leaf in self.grad_of.items():
            g = leaf.grad
            if g is not None and id(g._data) == k:
                held.append((k, leaf, g._data))
        return held

    def find_owners(self) -> None:
        """Point each load of a short-lived handle on an outside tensor's memory that
        :func:`_owner` could not place (``b.data`` of a buffer, ``w.detach()`` of a plain
        tensor, made in the step, which only the program holds now) at a tensor outside that
        holds the same array: else the passes take it for a tensor made in the step, and
        ``ema_buffer.data.copy_(b)`` writes into a fresh copy on each call. Arrays that
        nothing but the handle and the recorder hold are skipped before the search
        (``gc.get_referrers``, one pass over the heap for all of them)."""
        import gc
        import sys

        found = {}
        for s, ref in self.loaded.items():
            t = ref()
            if t is None or s in self.owned or sys.getrefcount(t) > 3:  # held elsewhere
                continue
            self.owned.add(s)
            d = self.load_data[s]
            # the handle, keep, load_data, this frame and getrefcount's argument, and the
            # recorded views of it (their base)
            if t._data is d and sys.getrefcount(d) > 5 + sum(
                    1 for a in self._held() if getattr(a, "base", None) is d):
                found[id(d)] = (s, t)
        if not found:
            return
        for r in gc.get_referrers(*(t._data for _, t in found.values())):
            if not isinstance(r, Tensor) or id(r._data) not in found:
                continue
            s, t = found[id(r._data)]
            if r is t:
                continue
            del found[id(r._data)]
            self.loaded[s] = weakref.ref(r)
            for k, i in enumerate(self.instrs):
                if i.kind == "load" and i.out == s:
                    d = self.load_data[s]
                    fn = load_fn(i.name, lambda r=r: r._data, d.shape, d.dtype)
                    fn.tensor = weakref.ref(r)
                    self.instrs[k] = Instr("load", i.name, fn, (), s)
                    break
            if not found:
                return

    def check_grads(self) -> None:
        """A ``.grad`` that backward set and that is no longer there, though no recorded step
        changed it, was assigned by Python (``p.grad = None``), which a replay would not repeat
        (its gradients would add up across calls): such a signature runs eagerly. So does one
        whose loaded tensor was pointed at a value computed in the step (``p.data = ...``)."""
        self.find_owners()
        for k, leaf in self.grad_of.items():
            g = leaf.grad
            if (g is None or id(g._data) != k) and self.fallback is None:
                self.fallback = (
                    f"the .grad of a tensor of shape {tuple(leaf.shape)} was set by Python "
                    "code in the step (such as p.grad = None), which a replay does not repeat; "
                    "use opt.zero_grad() or model.zero_grad(), or p.grad.zero_()")
        for s, ref in self.loaded.items():  # ``p.data = <a value computed in the step>``
            t = ref()
            if (t is not None and t._data is not self.load_data[s]
                    and self.slot.get(id(t._data), s) != s and self.fallback is None):
                self.fallback = (
                    f"the memory of a tensor of shape {tuple(t.shape)} the step reads was "
                    "replaced by a value computed in the step (such as p.data = ...), which a "
                    "replay does not repeat; write it in place (p.data.copy_(...), or "
                    "p.copy_(...) under no_grad)")

    def _load_lost_grads(self, held: list) -> None:
        """Load, before the effect that just ran, each gradient array of ``held`` that is no
        longer its leaf's ``.grad`` (``zero_grad()`` cleared it, or it was replaced): a tensor
        that kept it (``g = p.grad`` before ``opt.zero_grad()``) still holds that value, which
        a replay can no longer read from the leaf afterwards. Unread, such a load is dead code."""
        for k, leaf, a in held:
            g = leaf.grad
            if g is None or g._data is not a:
                get = self.aliases.pop(k)
                del self.grad_of[k]
                self._load("gradient", get, a)

    def mutate(self, name: str, fn, target, *args, params=None) -> None:
        """Run ``fn(target_array, *arg_values)`` (it changes the target in place) and record it."""
        vals = [a._data if isinstance(a, Tensor) else a for a in args]
        ins = (self.slot_of(target, target._data),) + tuple(
            self.slot_of(a, v) for a, v in zip(args, vals))
        replay = fn
        if params is not None and self.fallback is None and _holds_traced(params, self.slot):
            lifted = _setitem_lifted(params, self.slot) if name == "setitem" else None
            if lifted is None:
                self.fallback = f"'{name}' takes a traced index (at {creation_site()})"
            else:  # an index computed in the step (a decoding position): inputs too
                replay, arrays = lifted
                ins += tuple(self.slot[id(a)] for a in arrays)
        for s in self._written_loads(ins[0], target._data):
            if s not in self.before:  # a tensor made in the step starts each call so
                self.before[s] = self.load_data[s].copy()
            self._read_before(self.load_data[s], name)
        fn(target._data, *vals)
        self.instrs.append(Instr("effect", name, replay, ins, None, access="mutate"))

    def _written_loads(self, s: int, data) -> list:
        """The loaded tensors whose memory a write into ``data`` (slot ``s``) changes: its own
        load, or those it is a view of (``y = ng.zeros(3); y[0] += x`` writes through a view)."""
        if s in self.loaded:
            return [s]
        overlap = getattr(B.backend_of(data).xp, "may_share_memory", None)
        if overlap is None:
            return list(self.load_data)
        return [k for k, a in self.load_data.items() if overlap(a, data)]

    def _read_before(self, data, name: str) -> None:
        """A tensor outside the program that Python read earlier in the step is now changed
        by a recorded write (a queue pointer: ``ptr = int(self.ptr)`` ... ``self.ptr[0] =
        ...``): the value read was the traced call's, so the signature runs eagerly."""
        site = self.read_out.get(id(data))
        if site is not None and self.fallback is None:
            self.fallback = (f"Python read the value of a tensor (at {site}) that the step "
                             f"then changes ({name}): a replay would reuse the traced value")

    def concrete(self, data, what: str) -> None:
        """Refuse to turn a traced value into a Python value (it would be frozen at trace). A
        tensor outside the program that a recorded effect changes (a counter, running
        statistics) makes the signature run eagerly instead: each call has its own value."""
        if id(data) in self.changed and id(data) not in self.slot:
            if self.fallback is None:
                self.fallback = (f"{what} reads a tensor that the step changes in place (at "
                                 f"{creation_site()}): a replay would reuse the traced value")
            return
        if id(data) in self.slot:
            if self.graph_breaks:
                if self.fallback is None:
                    self.fallback = (f"{what} reads a traced tensor's value (at "
                                     f"{creation_site()}): Python code depends on it")
                return
            raise JitError(
                f"jit: {what} on a traced tensor at {creation_site()}: its value is not known "
                "when the step is captured, and Python code that depends on it would be frozen "
                "into the program. Return the tensor from the jitted function and read it "
                "outside, or wrap this call in nodegrad.jit.disable_jit().")
        if id(data) not in self.read_out:  # a tensor outside: fine unless the step changes it
            self.read_out[id(data)] = creation_site()
            self.keep.append(data)

    def _run_untraced(self, fn, args, kwargs):
        m = modes()
        m.jit = None
        try:
            return fn(*args, **kwargs)
        finally:
            m.jit = self

    def program(self, in_slots: list, out_slots: list, **options) -> Program:
        """The captured program; ``options`` go to :class:`Program` (``optimize``, ``fuse``)."""
        from .passes import constant_loads

        constant_loads(self)  # a correctness step (fresh copies of changed ones), always
        values = self.values()
        return Program(self.instrs, self.nslots, self.consts, in_slots, out_slots,
                       self.backend, meta=self.meta, values=values, **options)


def _freed(slot: dict, gone: dict, key: int, s: int, layout: tuple, _ref) -> None:
    """A weakly held result ``s`` was freed: its id is free for a new array, and its layout is
    kept for the passes if the id still named it."""
    if slot.get(key) == s:
        del slot[key]
        gone[s] = layout


def load_fn(name: str, getter, shape, dtype):
    """A load's function: ``getter()``, checked to keep its shape and dtype."""

    def load():
        a = getter()
        if a.shape != shape or a.dtype != dtype:
            raise JitError(f"jit: {name} changed from shape {shape} {dtype} to "
                           f"{a.shape} {a.dtype} since the trace; call the jitted "
                           "function's clear_cache() after changing it")
        return a

    load.spec = (shape, dtype)  # the program inlines a tensor's load (.tensor) with it
    return load


def _owner(t: Tensor, d) -> Tensor:
    """The tensor whose memory ``t`` is a handle on, where it says so (``p.data`` or
    ``p.detach()`` of a Parameter or of a tensor in a graph: ``_view`` is (that tensor, None,
    no steps)), else ``t``. A load reads the owner: a handle made inside the step is held by
    the program alone, which would take it for a tensor made there (a constant, or a fresh
    copy on every call) and lose ``ema.data.mul_(d)``'s or ``w.data.clamp_(-c, c)``'s writes."""
    entry = getattr(t, "_view", None)
    if entry is not None and entry[1] is None and not entry[2]:
        o = entry[0]()
        if o is not None and o._data is d:
            return o
    return t


def _holds_traced(v, slots: dict) -> bool:
    """Whether a parameter value holds an array (or tensor) produced inside the trace."""
    if isinstance(v, Tensor):
        v = v._data
    if B.is_array(v):
        return id(v) in slots
    if isinstance(v, dict):
        return any(_holds_traced(x, slots) for x in v.values())
    if isinstance(v, list | tuple):
        return any(_holds_traced(x, slots) for x in v)
    return False


class _Lifted:
    """Where a traced array stood in an ``index`` parameter: input ``n + j`` of the op."""

    __slots__ = ("j",)

    def __init__(self, j: int):
        self.j = j

    def __eq__(self, other) -> bool:
        return type(other) is _Lifted and other.j == self.j

    def __hash__(self) -> int:
        return hash(("lifted", self.j))

    def __repr__(self) -> str:
        return f"<index input {self.j}>"


def _lift_index(params: dict, slots: dict):
    """``(params, arrays)``: the traced arrays of an ``index`` tuple parameter (indexing by
    an integer array computed in the step: a token batch, targets) replaced by
    :class:`_Lifted` markers, to be fed to the op as inputs; None where a traced value sits
    anywhere else (the step then runs eagerly)."""
    idx = params.get("index")
    rest = {k: v for k, v in params.items() if k != "index"}
    if type(idx) is not tuple or _holds_traced(rest, slots):
        return None
    arrays, template = [], []
    for e in idx:
        if B.is_array(e) and id(e) in slots:
            template.append(_Lifted(len(arrays)))
            arrays.append(e)
        elif _holds_traced(e, slots):
            return None
        else:
            template.append(e)
    return {**rest, "index": tuple(template)}, arrays


def _setitem_lifted(index, slots: dict):
    """``(replay, arrays)`` for ``a[index] = b`` whose index holds integer arrays computed in
    the step (a cache written at a position passed as a tensor): ``replay(a, b, *arrays)``
    writes at the index those arrays give on each call; None where a traced value sits
    anywhere else (the step then runs eagerly)."""
    single = type(index) is not tuple
    lifted = _lift_index({"index": (index,) if single else index}, slots)
    if lifted is None:
        return None
    template, arrays = lifted[0]["index"], lifted[1]

    def replay(a, b, *extra):
        at = tuple(extra[e.j] if type(e) is _Lifted else e for e in template)
        a[at[0] if single else at] = b

    return replay, arrays


def _op_lifted(prim, params: dict, backend, out, n: int):
    """:func:`_op` for an op whose ``index`` parameter holds :class:`_Lifted` markers: inputs
    ``n`` on are the index arrays that fill them."""
    template = params["index"]
    rest = {k: v for k, v in params.items() if k != "index"}
    fwd, xp = _forward(prim), backend.xp

    def fast(*d):
        extra = d[n:]
        index = tuple(extra[e.j] if type(e) is _Lifted else e for e in template)
        return fwd(xp, *d[:n], index=index, **rest)

    return _converting(prim, params, backend, out, fast, n)


def _forward(prim):
    """``prim``'s forward as a replay calls it: its own, not the timing wrapper a profile that
    is active during the trace put in its place (which would stay in the program after it)."""
    fwd = prim.fwd
    return getattr(fwd, "unprofiled", fwd)


def _op(prim, params: dict, backend, out):
    """The replay function of one primitive: its forward, with bind's result conversions.

    Its ``fast`` attribute is the bare forward; the program switches to it after a first replay
    showed that no conversion was needed (the result type depends only on the signature)."""
    return _converting(prim, params, backend, out, partial(_forward(prim), backend.xp,
                                                           **params))


def _converting(prim, params: dict, backend, out, fast, n: int | None = None):
    """``fast`` (the bare forward on the op's inputs, the first ``n`` of them its arguments)
    with bind's conversion of the result to ``out``'s array type and dtype."""
    dtype, arr, asarray = out.dtype, type(out), backend.asarray

    def op(*d):
        o = fast(*d)
        if type(o) is not arr:
            o = asarray(o)
            op.converts = True
        if o.dtype != dtype:
            o = as_float(prim, backend, d if n is None else d[:n], params, o, dtype) if \
                B.is_float(dtype) and B.is_float(o.dtype) else o.astype(dtype)
            op.converts = True
        return o

    op.__name__ = prim.name
    op.converts = False
    op.fast = fast
    op.params = params  # read by Program.__str__ (a loop's body is printed under it)
    return op
