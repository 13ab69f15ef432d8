"""Reverse-mode autodiff: the Node graph, grad mode, anomaly mode and the backward engine.

Every recorded operation leaves a :class:`Node` (primitive, parameters, parents and what its VJP
needs). ``backward`` visits the nodes reachable from the outputs in reverse topological order
(an iterative sort by child counts, so deep graphs never recurse); each node sums the cotangents
its children sent, applies its primitive's vector-Jacobian product and sends one message to each
parent. No Jacobian is ever formed. The engine only sees tensors through ``._data``, ``.node``,
``.requires_grad`` and ``.grad``, so this module sits below ``tensor``. The modes (grad,
inference, and what vmap/grad/jvp keep while they run) belong to the calling thread, as in
PyTorch: one :class:`Modes` record per thread. Anomaly mode, as PyTorch's, is one switch for
the whole process (:data:`ANOMALY`). Saved-tensor hooks (:func:`pack_saved`) let a node keep
what a pack hook made of its saved values instead of the arrays; node hooks run around a
node's VJP (``nodegrad.autograd.graph`` is the public face of both).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ._backend import backend_of, is_inexact
from ._backend import ndarray as _ndarray
from .errors import AnomalyError, GradError, InplaceError


#: Anomaly mode, ``[enabled, check_nan]``: one setting for every thread, as PyTorch's (a
#: ``set_detect_anomaly(True)`` at the top of a script covers the threads it starts later).
#: ``check_nan`` False keeps the creation sites but raises on no NaN, as PyTorch's. Change it
#: with :func:`set_anomaly` only, which copies ``enabled`` into every thread's record.
ANOMALY = [False, True]
_ALL_MODES: weakref.WeakSet = weakref.WeakSet()  # every live thread's Modes (set_anomaly)
_ANOMALY_LOCK = threading.Lock()


class Modes:
    """One thread's modes, as in PyTorch: set in one thread, never seen in another.

    Each thread gets its own record (from :func:`modes`) on first use, with these defaults, so
    a new thread records gradients even when the thread that started it is inside no_grad.
    ``anomaly`` is the exception: a copy of the process-wide :data:`ANOMALY` switch, kept here
    so that ``bind`` reads it as cheaply as the rest, and set for every thread at once by
    :func:`set_anomaly`.
    """

    __slots__ = ("grad_enabled", "inference", "anomaly", "in_backward", "traces", "depth",
                 "first_order", "jit", "device", "grads_seen", "autocast", "saved_hooks",
                 "hooks_off", "task", "__weakref__")

    def __init__(self) -> None:
        self.grad_enabled = True
        self.inference = False
        with _ANOMALY_LOCK:
            self.anomaly = ANOMALY[0]
            _ALL_MODES.add(self)
        self.in_backward = None  # the node whose VJP runs in this thread (anomaly mode only)
        self.traces: tuple = ()  # the active vmap levels, innermost last (see batching.py)
        self.depth = 0  # how many transforms are evaluating their function (see func/grad.py)
        # the depth of the innermost of them when it is a grad whose backward is not recorded
        # (first order): a jitted function called there replays compiled (jit/api.py)
        self.first_order = 0
        self.jit = None  # the recorder of the jit trace in progress (see jit/trace.py), or None
        self.device = None  # ng.default_device's device for factories, or None (tensor.py)
        # the running backward's ids of arrays user code saw or made, which a leaf's .grad
        # keeps only as a copy (see _add_to_grad): custom gradient rules add theirs
        self.grads_seen = None
        # the active autocast region's rule, ``(prim, args) -> args`` (see amp.py), or None
        self.autocast = None
        # the active saved_tensors_hooks, innermost last: (pack, unpack) pairs (pack_saved)
        self.saved_hooks: tuple = ()
        # disable_saved_tensors_hooks's message while it forbids them, else None
        self.hooks_off = None
        # the running backward pass's vertices (a :class:`Task`), for multi-grad hooks
        self.task = None


_new = object.__new__
_per_thread = threading.local()  # .modes: the thread's Modes (a plain local reads fastest)


def modes() -> Modes:
    """The calling thread's modes (bind inlines this: one read per operation)."""
    try:
        return _per_thread.modes
    except AttributeError:  # the thread's first use
        m = _per_thread.modes = Modes()
        return m


class _CurrentModes:
    """``mode.name`` reads and sets ``name`` in the calling thread's :class:`Modes`."""

    __slots__ = ()

    def __getattr__(self, name: str):
        return getattr(modes(), name)

    def __setattr__(self, name: str, value) -> None:
        setattr(modes(), name, value)


mode = _CurrentModes()


def effect(fn: Callable) -> Callable:
    """Mark ``fn`` as a step with effects outside the array program (an optimiser update, a
    random draw): under a jit trace it runs once and is replayed by calling it again."""

    def wrapper(*args, **kwargs):
        rec = modes().jit
        if rec is None:
            return fn(*args, **kwargs)
        return rec.effect(fn, args, kwargs)

    wrapper.__name__ = getattr(fn, "__name__", "effect")
    wrapper.__qualname__ = getattr(fn, "__qualname__", wrapper.__name__)
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


class Node:
    """One recorded operation: its primitive, parameters, parents and what its VJP reads.

    ``parents[i]`` is the Node of input i, the input tensor itself when it is a leaf that
    requires grad, or None. ``args`` holds the inputs when the VJP reads them, ``out`` the output
    array when it reads the output; both are dropped once the VJP has run. Under
    saved_tensors_hooks ``args`` is a :class:`Packed` record instead (``out`` None): what the
    pack hook returned, unpacked when the VJP runs. It is PyTorch's ``grad_fn``
    (``nodegrad.autograd.graph.Node``): ``name``, ``next_functions``, ``metadata`` and hooks.
    """

    # meta (metadata's dict) is set on first use only, so bind's Node.make stays as it was
    __slots__ = ("prim", "params", "parents", "args", "out", "shapes", "versions", "alive",
                 "hooks", "trace", "meta")

    def __init__(self, prim, params, parents, args, out, shapes, versions):
        self.prim = prim
        self.params = params
        self.parents = parents
        self.args = args
        self.out = out
        self.shapes = shapes
        self.versions = versions
        self.alive = True
        self.hooks = None
        self.trace = None

    def __repr__(self) -> str:
        return f"<Node {self.prim.name}>"

    @staticmethod
    def make(prim, params, parents, args, out, shapes, versions) -> Node:
        """``Node(...)`` for bind's hot path, set from Python (a class call runs ``__init__``
        through C, a costly round trip for a small op). ``primitive.bind`` sets the same
        attributes inline."""
        n = _new(Node)
        n.prim = prim
        n.params = params
        n.parents = parents
        n.args = args
        n.out = out
        n.shapes = shapes
        n.versions = versions
        n.alive = True
        n.hooks = None
        n.trace = None
        return n

    def name(self) -> str:
        """The primitive's name (PyTorch names the node class instead: ``MulBackward0``)."""
        return self.prim.name

    @property
    def next_functions(self) -> tuple:
        """One ``(vertex, 0)`` pair per input, as PyTorch's ``grad_fn.next_functions``: the
        input's Node, an :class:`AccumulateGrad` for a leaf that requires grad, or None."""
        return tuple((p if type(p) is Node else None if p is None else AccumulateGrad(p), 0)
                     for p in self.parents)

    @property
    def metadata(self) -> dict:
        """A dict of the user's own, kept with the node (PyTorch's ``grad_fn.metadata``)."""
        try:
            return self.meta
        except AttributeError:
            self.meta = {}
            return self.meta

    def register_hook(self, fn: Callable) -> RemovableHandle:
        """Call ``fn(grad_inputs, grad_outputs)`` after this node's VJP has run, as PyTorch's
        ``Node.register_hook``: ``grad_inputs`` has one entry per input (None where no
        gradient goes), ``grad_outputs`` is ``(g,)``; a returned tuple replaces
        ``grad_inputs``. It runs only when the VJP runs (not for a node backward skips)."""
        return self._add_hook(NodePostHook(_callable("Node.register_hook", fn)))

    def register_prehook(self, fn: Callable) -> RemovableHandle:
        """Call ``fn(grad_outputs)`` before this node's VJP, after the output tensor's hooks
        (``Tensor.register_hook``, then ``retain_grad``), as PyTorch's
        ``Node.register_prehook``; a returned tuple replaces ``grad_outputs``."""
        return self._add_hook(NodePreHook(_callable("Node.register_prehook", fn)))

    def _add_hook(self, h) -> RemovableHandle:
        if self.hooks is None:
            self.hooks = []
        self.hooks.append(h)
        return RemovableHandle(self.hooks, h)


class AccumulateGrad:
    """The graph vertex of a leaf that requires grad (``next_functions`` shows it): backward
    ends there by adding into ``variable.grad``."""

    __slots__ = ("variable",)

    def __init__(self, variable):
        self.variable = variable

    def name(self) -> str:
        return "AccumulateGrad"

    @property
    def next_functions(self) -> tuple:
        return ()

    @property
    def metadata(self) -> dict:
        raise NotImplementedError(_ACC_HOOKS)

    def register_hook(self, fn: Callable) -> RemovableHandle:
        raise NotImplementedError(_ACC_HOOKS)

    def register_prehook(self, fn: Callable) -> RemovableHandle:
        raise NotImplementedError(_ACC_HOOKS)

    def __repr__(self) -> str:
        return "<AccumulateGrad>"


_ACC_HOOKS = ("AccumulateGrad: a leaf's vertex is made afresh on each look, so it keeps no hooks "
              "or metadata; use the leaf's register_hook or "
              "register_post_accumulate_grad_hook")


class Spec:
    """Shape and dtype of an input whose value the VJP does not need (the node did not keep it)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = shape
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


# --- grad mode ------------------------------------------------------------------------------
def _decorate(fn: Callable, make: Callable[[], Any]) -> Callable:
    """``fn`` run inside the context ``make()`` gives afresh at each call, as PyTorch's mode
    decorators. A generator function's body runs when the generator is resumed, after the call
    has returned, so each resume (send, throw, close) runs inside a fresh context instead."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            gen = fn(*args, **kwargs)
            try:
                with make():
                    response = gen.send(None)
                while True:
                    try:
                        request = yield response
                    except GeneratorExit:
                        with make():
                            gen.close()
                        raise
                    except BaseException as e:
                        with make():
                            response = gen.throw(e)
                    else:
                        with make():
                            response = gen.send(request)
            except StopIteration as e:
                return e.value

        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with make():
            return fn(*args, **kwargs)

    return wrapper


class _GradMode:
    """Context manager and decorator that sets whether operations are recorded."""

    enabled: bool

    def __enter__(self):
        m = modes()
        self._prev = m.grad_enabled
        m.grad_enabled = self.enabled

    def __exit__(self, *exc):
        modes().grad_enabled = self._prev

    def __call__(self, fn: Callable) -> Callable:
        enabled = self.enabled
        if inspect.isgeneratorfunction(fn):
            return _decorate(fn, lambda: _Recording(enabled))

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            m = modes()
            prev = m.grad_enabled
            m.grad_enabled = enabled
            try:
                return fn(*args, **kwargs)
            finally:
                m.grad_enabled = prev

        return wrapper


class _Recording(_GradMode):
    """Recording on or off as ``enabled`` says, for the duration of a ``with`` block only."""

    def __init__(self, enabled: bool):
        self.enabled = enabled


class _BareDecorator(_GradMode):
    """A mode that is also a decorator without parentheses (``@no_grad`` as ``@no_grad()``),
    as PyTorch's."""

    def __new__(cls, orig_func: Callable | None = None):
        if orig_func is None:
            return super().__new__(cls)
        return cls()(orig_func)

    def __init__(self, orig_func: Callable | None = None):
        pass


class no_grad(_BareDecorator):
    """Run without recording the graph (evaluation, optimiser updates)."""

    enabled = False


class enable_grad(_BareDecorator):
    """Record the graph even inside ``no_grad``."""

    enabled = True


class set_grad_enabled(_GradMode):
    """Record the graph or not, as ``mode`` says.

    As PyTorch's: the call itself sets the mode (``set_grad_enabled(False)`` on a line of its
    own), a ``with`` block restores the previous mode on leaving, and as a decorator it sets the
    mode only while the function runs (the thread's mode is left as it was before).
    """

    def __init__(self, mode: bool):
        self.enabled = bool(mode)
        m = modes()
        self._prev = m.grad_enabled
        m.grad_enabled = self.enabled

    def __enter__(self):
        pass

    def __call__(self, fn: Callable) -> Callable:
        modes().grad_enabled = self._prev  # the call above was not meant for the thread
        return super().__call__(fn)


def is_grad_enabled() -> bool:
    """Whether operations are recorded in the calling thread."""
    return modes().grad_enabled


class inference_mode:
    """Run without recording, like ``no_grad``, marked as inference; also a decorator.

    As ``torch.inference_mode``: ``inference_mode(False)`` turns it off (and recording on).
    PyTorch's inference tensors have no counterpart: outputs are plain tensors without a graph.
    """

    def __new__(cls, mode: bool | Callable = True):
        if callable(mode):  # used bare: @inference_mode
            return cls()(mode)
        return super().__new__(cls)

    def __init__(self, mode: bool = True):
        self.enabled = bool(mode)

    def __enter__(self):
        m = modes()
        self._prev = (m.grad_enabled, m.inference)
        m.grad_enabled, m.inference = not self.enabled, self.enabled

    def __exit__(self, *exc):
        m = modes()
        m.grad_enabled, m.inference = self._prev

    def __call__(self, fn: Callable) -> Callable:
        enabled = self.enabled
        return _decorate(fn, lambda: inference_mode(enabled))


def is_inference_mode_enabled() -> bool:
    """Whether the calling thread is inside ``inference_mode``."""
    return modes().inference


def set_anomaly(enabled: bool, check_nan: bool = True) -> None:
    """Turn anomaly mode on or off for every thread, as ``torch.set_anomaly_enabled``; with
    ``check_nan=False`` nodes still note where they were made but no NaN/Inf is raised on."""
    with _ANOMALY_LOCK:
        ANOMALY[:] = [bool(enabled), bool(check_nan)]
        for m in list(_ALL_MODES):
            m.anomaly = ANOMALY[0]


class detect_anomaly:
    """Raise :class:`AnomalyError` at the first op whose forward or backward yields NaN/Inf.

    While active each node also remembers where in user code it was created, and the error
    names the primitive and that place (or the input that already held NaN, and its origin).
    As PyTorch's, the mode is one switch for the process: threads running meanwhile (started
    before or inside the block) are checked too, and leaving the block restores the setting
    found on entering. ``check_nan=False`` keeps the mode on without the NaN/Inf checks.
    """

    def __init__(self, check_nan: bool = True):
        """PyTorch's signature: ``check_nan`` is the one argument (``set_detect_anomaly``
        turns the mode off)."""
        self.enabled = True
        self.check_nan = bool(check_nan)

    def __enter__(self):
        self._prev = tuple(ANOMALY)
        set_anomaly(self.enabled, self.check_nan)

    def __exit__(self, *exc):
        set_anomaly(*self._prev)


def is_anomaly_enabled() -> bool:
    """Whether anomaly mode is on (for every thread, as in PyTorch)."""
    return ANOMALY[0]


def is_anomaly_check_nan_enabled() -> bool:
    """Whether anomaly mode raises on NaN/Inf (on, and ``check_nan`` left True)."""
    return ANOMALY[0] and ANOMALY[1]


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep  # nodegrad's own files


def computes_with_values(t, what: str) -> None:
    """Say that host code is about to compute with the values of tensor ``t`` (not only check
    them): under a jit trace where ``t`` is traced, those values would be baked into the
    program, so the signature is marked to run eagerly instead (``what`` says why)."""
    rec = modes().jit
    data = getattr(t, "_data", None)
    if rec is not None and rec.fallback is None and id(data) in rec.slot:
        rec.fallback = f"{what} computes with the values of a traced tensor (at " \
                       f"{creation_site()})"


def creation_site() -> str:
    """The innermost stack frame outside nodegrad, as 'file:line in function: code'."""
    for fr in reversed(traceback.extract_stack()[:-1]):
        if not os.path.abspath(fr.filename).startswith(_PACKAGE):
            return f"{fr.filename}:{fr.lineno} in {fr.name}: {fr.line}"
    return "<unknown>"


def user_stacklevel() -> int:
    """``warnings.warn``'s ``stacklevel`` for the innermost frame outside nodegrad (the user's
    line), however many of nodegrad's calls lie between."""
    f, level = sys._getframe(1), 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PACKAGE):
        f, level = f.f_back, level + 1
    return level


def _check_finite(xp, g, what: str, node: Node) -> None:
    if is_inexact(g.dtype) and not bool(xp.isfinite(g).all()):
        raise anomaly_error(node, what)


# Leaf tensors made by creation functions while anomaly mode is on: id -> (weak ref, where).
# Keyed by id, since a tensor's ``==`` is elementwise; an entry leaves with its tensor.
_sites: dict = {}


def note_creation(t) -> None:
    """Remember where user code created tensor ``t`` (called only in anomaly mode)."""
    key = id(t)

    def forget(ref):
        if _sites.get(key, (None,))[0] is ref:
            del _sites[key]

    _sites[key] = (weakref.ref(t, forget), creation_site())


def has_nan(d) -> bool:
    """True when ``d`` (an array or a Python number) holds a NaN."""
    if isinstance(d, float):
        return d != d
    dt = getattr(d, "dtype", None)
    return dt is not None and is_inexact(dt) and bool(backend_of(d).xp.isnan(d).any())


def origin(t) -> str:
    """Where the tensor ``t`` came from, as far as the graph and anomaly mode know."""
    n = getattr(t, "node", None)
    if n is not None:
        where = (f"created at {n.trace}" if n.trace else
                 "recorded before detect_anomaly was on, so its line is unknown")
        return f"it was produced by '{n.prim.name}', {where}"
    if not hasattr(t, "node"):
        return "it was passed in as a number" if isinstance(t, float) else "it is a raw array"
    ref, site = _sites.get(id(t), (None, None))
    if ref is not None and ref() is t:
        return f"it is a leaf tensor created at {site}"
    return ("it is a leaf tensor (data, a parameter, or a result computed without recording) "
            "made before detect_anomaly was on, so its line is unknown")


def input_held_nan(op: str, i: int, n: int, a, d, where: str = "") -> str:
    """The message for NaN that came into ``op`` with its input ``i`` of ``n`` (``where``:
    the call, when known)."""
    if isinstance(d, float):
        what = "the number nan"
    else:
        xp = backend_of(d).xp
        what = (f"shape {tuple(d.shape)} {d.dtype}, {int(xp.isnan(d).sum())} of {d.size} "
                "elements NaN")
    arg = f"argument {i}" if n == 1 else f"argument {i} of {n}"
    return (f"the input of '{op}' already held NaN ({arg}, {what}){where}; the NaN did not "
            f"start in '{op}': {origin(a)}")


def _nan_input_of(node: Node) -> str | None:
    """Why ``node``'s backward met NaN when that NaN was already in the node's input."""
    name = node.prim.name
    n = len(node.parents)
    if node.args is not None:
        for i, a in enumerate(node.args):
            d = getattr(a, "_data", a)
            if not isinstance(a, Spec) and has_nan(d):
                return input_held_nan(name, i, n, a, d)
    for i, p in enumerate(node.parents):  # leaves can still be looked at
        if p is not None and type(p) is not Node and has_nan(p._data):
            return input_held_nan(name, i, n, p, p._data)
    if node.out is not None and has_nan(node.out):
        return (f"the output of '{name}' already held NaN in the forward pass; run the forward "
                "inside detect_anomaly too to see where the NaN started")
    return None


def anomaly_error(node: Node, step: str) -> AnomalyError:
    """The error for NaN/Inf met in ``node``'s backward (``step`` names the op inside the VJP)."""
    where = node.trace or "<unknown: created before detect_anomaly was on>"
    msg = (f"backward of '{node.prim.name}' produced NaN/Inf (in its {step}); "
           f"that '{node.prim.name}' was created at {where}")
    came_in = _nan_input_of(node)
    return AnomalyError(msg if came_in is None else f"{msg}; {came_in}")


# --- hooks ------------------------------------------------------------------------------------
class RemovableHandle:
    """Returned by ``register_hook``; ``remove()`` takes the hook off again.

    It removes the registration it was returned for, once: calling it again does nothing,
    and a hook registered twice stays registered once (found by identity, not ``==``).
    """

    def __init__(self, hooks: list, fn: Callable):
        self._hooks = hooks
        self._fn = fn
        self._removed = False

    def remove(self) -> None:
        if self._removed:
            return
        self._removed = True
        hooks, fn = self._hooks, self._fn
        for i, h in enumerate(hooks):
            if h is fn:
                del hooks[i]
                return

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class RetainGrad:
    """The hook ``retain_grad()`` puts on a non-leaf's node: keeps the gradient there in the
    tensor's ``.grad`` (a copy, summed over backward calls), as PyTorch's.

    It runs after the node's other hooks, whatever the order of registration (PyTorch's rule),
    and follows its tensor when an in-place op points it at a new node (see
    :func:`settle_retained`), so ``.grad`` is the gradient of the tensor's current value.
    """

    __slots__ = ("ref", "node", "__weakref__")

    def __init__(self, t, node: Node):
        """Put the hook for ``t`` on ``node`` (``t``'s), and list it in :data:`RETAINING`."""
        key = id(t)
        me = weakref.ref(self)

        def forget(_ref):
            h = RETAINING.get(key)
            if h is not None and h is me():
                del RETAINING[key]

        self.ref = weakref.ref(t, forget)
        self.node = node
        if node.hooks is None:
            node.hooks = []
        node.hooks.append(self)
        RETAINING[key] = self

    def __call__(self, g) -> None:
        t = self.ref()
        if t is None:
            return
        with grad_lock(t):  # a backward in another thread may reach t too
            if t.grad is not None:
                t.grad = t.grad + g
            else:  # the engine goes on with g; a graph-free one is copied, as PyTorch clones it
                t.grad = g if g.node is not None else g.clone()

    def move_to(self, node: Node | None) -> None:
        """Take this hook off its node and put it on ``node`` (None: drop it)."""
        hooks = self.node.hooks
        if hooks:
            for i, h in enumerate(hooks):
                if h is self:
                    del hooks[i]
                    break
        t = self.ref()
        if node is None:
            if t is not None and RETAINING.get(id(t)) is self:
                del RETAINING[id(t)]
            return
        if node.hooks is None:
            node.hooks = []
        node.hooks.append(self)
        self.node = node


#: retain_grad's hooks: id(tensor) -> its RetainGrad (which holds the tensor weakly)
RETAINING: dict = {}
#: RetainGrads whose tensor an in-place op has rebound since (Tensor._rebound notes them)
RETAIN_MOVED: list = []


def retaining(t) -> RetainGrad | None:
    """``t``'s retain_grad hook, if it has one."""
    if RETAIN_MOVED:
        settle_retained()
    h = RETAINING.get(id(t))
    return h if h is not None and h.ref() is t else None


def settle_retained() -> None:
    """Move each retain_grad hook whose tensor an in-place op has pointed at a new node onto
    that node. The rebind happens after the tensor notes it (``Tensor._rebound``), so the move
    waits for the next backward or question about the hook."""
    moved = RETAIN_MOVED[:]
    RETAIN_MOVED.clear()
    for h in moved:
        t = h.ref()
        if t is not None and t.node is not h.node:
            h.move_to(t.node)


def _check_hook_result(hook, r, g) -> None:
    """A gradient hook's replacement must be a tensor of the gradient's shape and dtype."""
    name = getattr(hook, "__name__", type(hook).__name__)
    if not hasattr(r, "node") or not hasattr(r, "_data"):
        raise TypeError(f"gradient hook '{name}' returned {type(r).__name__}; expected a "
                        "tensor (or None to keep the gradient)")
    if tuple(r.shape) != tuple(g.shape):
        raise GradError(f"gradient hook '{name}' changed the size of the gradient: it returned "
                        f"shape {tuple(r.shape)} for a gradient of shape {tuple(g.shape)}; a "
                        "hook must return a tensor of the gradient's shape (or None)")
    if r.dtype != g.dtype:
        raise GradError(f"gradient hook '{name}' changed the type of the gradient: it returned "
                        f"dtype {r.dtype} for a gradient of dtype {g.dtype}; a hook must "
                        "return a tensor of the gradient's dtype (or None)")


def _callable(what: str, fn) -> Callable:
    if not callable(fn):
        raise TypeError(f"{what}: expected a callable hook, got {type(fn).__name__}")
    return fn


class NodePreHook:
    """A hook ``fn(grad_outputs)`` kept in a node's ``hooks`` (``Node.register_prehook``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn


class NodePostHook:
    """A hook ``fn(grad_inputs, grad_outputs)`` kept in a node's ``hooks``
    (``Node.register_hook``): the engine collects the node's gradients for it."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable):
        self.fn = fn


def _hook_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _hook_tuple(what: str, fn, r, n: int) -> tuple:
    """A node hook's replacement: a tuple (or list) of ``n`` entries."""
    if not isinstance(r, tuple | list):
        raise TypeError(f"{what} '{_hook_name(fn)}' returned {type(r).__name__}; expected a "
                        f"tuple of {n} gradients (or None to keep them)")
    if len(r) != n:
        raise GradError(f"{what} '{_hook_name(fn)}' returned {len(r)} gradients; expected {n} "
                        "(one per entry of the tuple it was given)")
    return tuple(r)


def _run_node_hooks(hooks: list, g, seen: set) -> tuple:
    """Run a node's hooks on ``g`` in PyTorch's order: the output tensor's hooks, retain_grad,
    then the node's pre-hooks. Returns the gradient and the post-hooks (None if none)."""
    pre = post = None
    plain = []
    for h in hooks:
        t = type(h)
        if t is NodePreHook:
            pre = [h] if pre is None else pre + [h]
        elif t is NodePostHook:
            post = [h] if post is None else post + [h]
        else:
            plain.append(h)
    rec = modes().jit  # under a trace: hooks run for their effects make it run eagerly
    if plain:
        g = _run_hooks(plain, g, seen, rec)
    if pre is not None:
        for h in pre:
            seen.add(id(g._data))
            r = h.fn((g,))
            if r is not None:
                (r,) = _hook_tuple("node pre-hook", h.fn, r, 1)
                _check_hook_result(h.fn, r, g)
                g = r
                seen.add(id(g._data))
            elif rec is not None:
                _for_effects(rec, h.fn)
    return g, post


def _run_post_hooks(post: list, grads: list, g, seen: set) -> list:
    """Run a node's post-hooks on its input gradients (one per input, None where none goes)."""
    for h in post:
        for gi in grads:
            if gi is not None:
                seen.add(id(gi._data))
        r = h.fn(tuple(grads), (g,))
        if r is None:
            rec = modes().jit
            if rec is not None:
                _for_effects(rec, h.fn)
            continue
        r = _hook_tuple("node hook", h.fn, r, len(grads))
        for i, (old, new) in enumerate(zip(grads, r)):
            if new is None or old is None:
                if new is not None:
                    raise GradError(f"node hook '{_hook_name(h.fn)}' gave a gradient for input "
                                    f"{i}, which gets none (it needs no gradient here)")
                grads[i] = None
                continue
            _check_hook_result(h.fn, new, old)
            grads[i] = new
            seen.add(id(new._data))
    return grads


class Task:
    """The running backward pass, as multi-grad hooks see it: the vertices it reaches
    (``counts``' keys) and, with targets, those on a path to one (``wanted``)."""

    __slots__ = ("counts", "wanted", "__weakref__")

    def __init__(self, counts: dict, wanted):
        self.counts = counts
        self.wanted = wanted

    def will_reach(self, t) -> bool:
        """Whether this pass sends a gradient to tensor ``t``'s vertex."""
        k = _key(t)
        return k in self.counts and (self.wanted is None or k in self.wanted)


# --- saved tensors hooks ----------------------------------------------------------------------
class Packed(tuple):
    """A node's saved inputs while saved_tensors_hooks hold them: as a tuple, the inputs with
    a shape-only :class:`Spec` for each tensor packed (what code that only looks sees);
    ``items`` pairs each saved value's position (-1: the output) with its :func:`pack_tensors`
    record."""

    items: list


def pack_tensors(ts: Sequence, hooks: tuple | None = None) -> list | None:
    """Records of tensors ``ts`` saved for backward, packed by ``hooks`` (the innermost
    saved_tensors_hooks when None): one ``(what pack returned, unpack, shape, dtype, array
    type, weak reference to the tensor, its version counter)`` each; None when no hooks are
    active. As PyTorch's, pack runs with recording off and no hooks active."""
    m = modes()
    if hooks is None:
        if not m.saved_hooks:
            return None
        hooks = m.saved_hooks[-1]
    pack, unpack = hooks
    prev = m.grad_enabled, m.saved_hooks
    m.grad_enabled, m.saved_hooks = False, ()
    try:
        out = []
        for t in ts:
            d = t._data
            out.append((pack(t), unpack, d.shape, d.dtype, type(d), weakref.ref(t),
                        t._ensure_version()))
        return out
    finally:
        m.grad_enabled, m.saved_hooks = prev


def unpack_tensor(rec: tuple, name: str, what: str):
    """The tensor unpack gives back for a :func:`pack_tensors` record, checked against what
    was packed (a tensor of its shape, dtype and device); ``name`` and ``what`` (the op, the
    saved value) word the errors."""
    r = rec[1](rec[0])
    if not (hasattr(r, "node") and hasattr(r, "_data")):
        raise TypeError(f"saved_tensors_hooks: unpack_hook returned {type(r).__name__} for "
                        f"{what} of '{name}'; expected a tensor")
    d, shape, dtype, atype = r._data, rec[2], rec[3], rec[4]
    if d.shape != shape or d.dtype != dtype or type(d) is not atype:
        raise GradError(
            f"saved_tensors_hooks: unpack_hook returned a tensor of shape {tuple(d.shape)}, "
            f"dtype {d.dtype} ({type(d).__module__}) for {what} of '{name}', which was saved "
            f"with shape {tuple(shape)}, dtype {dtype} ({atype.__module__}); unpack must give "
            "back the value pack was given")
    if r is rec[5]() and r._version is not rec[6]:  # the tensor itself, since pointed at
        raise InplaceError(  # another array by an in-place op (its old value is gone)
            f"a value that '{name}' saved for backward was modified in place (the "
            "saved_tensors_hooks kept the tensor itself); use an out-of-place op instead")
    return r


def pack_saved(node: Node, hooks: tuple, args: tuple, t) -> None:
    """Pack what ``node`` saved (its input tensors, then its output ``t``) with the innermost
    saved_tensors_hooks ``hooks``; the node then keeps what pack returned, not the arrays.

    As PyTorch's: the pack hook sees each saved tensor (the input itself, the output tensor),
    once per position (``x * x`` packs x twice)."""
    prim = node.prim
    save_in = prim.save_in
    if not (save_in or prim.save_out):
        return
    where = [k for k, a in enumerate(args) if hasattr(a, "node") and hasattr(a, "_data")] \
        if save_in else []  # the tensors among the inputs (autodiff sits below tensor)
    ts = [args[k] for k in where]
    if prim.save_out:
        where.append(-1)
        ts.append(t)
    view = list(args) if save_in else [Spec(s, None) for s in node.shapes]
    for k, a in zip(where, ts):
        if k >= 0:
            view[k] = Spec(a._data.shape, a._data.dtype)
    rec = Packed(view)
    rec.items = list(zip(where, pack_tensors(ts, hooks)))
    node.args = rec
    node.out = None
    node.versions = [(e[0], e[1], None, None) for e in node.versions]  # no arrays held


def saved_values(n: Node, dtype, create_graph: bool) -> tuple:
    """``(inputs, output array)`` as ``n``'s rules read them: the inputs it saved (shape-only
    specs of ``dtype`` where it saved none), unpacked where saved_tensors_hooks packed them
    (``create_graph``: the unpacked inputs in the graph)."""
    args, out = n.args, n.out
    if type(args) is Packed:
        args, out = _unpack_saved(n, args, create_graph)
    if args is None:
        args = tuple(Spec(s, dtype) for s in n.shapes)
    return args, out


def _unpack_saved(n: Node, rec: Packed, create_graph: bool) -> tuple:
    """``n``'s saved inputs and output array from its :class:`Packed` record, by the unpack
    hook (once per saved value, each time the VJP runs). The inputs come back in the graph
    as they were (with ``create_graph``, for higher orders)."""
    name = n.prim.name
    args = list(rec) if n.prim.save_in else None
    out = None
    for k, item in rec.items:
        r = unpack_tensor(item, name, "its output" if k < 0 else f"its input {k}")
        d = r._data
        if k < 0:
            out = d
            continue
        p = n.parents[k]
        if create_graph and p is not None:  # in the graph: the input's node, or the leaf
            args[k] = r.make(d, p, True) if type(p) is Node else p
        else:
            args[k] = r.make(d)
    return (None if args is None else tuple(args)), out


# --- the engine -----------------------------------------------------------------------------
def _toposort_counts(starts: Sequence[Node]) -> dict:
    """Number of edges into each reachable node (child -> parent, plus one per start)."""
    counts: dict = {}
    stack = list(starts)
    while stack:
        n = stack.pop()
        c = counts.get(n)
        if c is not None:
            counts[n] = c + 1
        else:
            counts[n] = 1
            for p in n.parents:
                if type(p) is Node:
                    stack.append(p)
                elif p is not None:  # a leaf: counted so that it can be finished early
                    counts[p] = counts.get(p, 0) + 1
    return counts


def _topo_order(starts: Sequence[Node]) -> list:
    """Reachable nodes, each before its parents."""
    counts = _toposort_counts(starts)
    order, ready = [], []
    for s in starts:
        counts[s] -= 1
        if counts[s] == 0:
            ready.append(s)
    while ready:
        n = ready.pop()
        order.append(n)
        for p in n.parents:
            if type(p) is Node:
                counts[p] -= 1
                if counts[p] == 0:
                    ready.append(p)
    return order


def _key(t):
    """The graph vertex of a tensor: its node, or the tensor itself for a leaf."""
    return t.node if t.node is not None else t


def _run_hooks(hooks, g, seen: set, rec=None):
    """Run a vertex's gradient hooks on ``g`` in order, retain_grad's last, and return the
    gradient they leave. User code has seen that array (and may keep it), or gave its own:
    both go into ``seen``, so a leaf that stores one as its ``.grad`` copies it. ``rec``: the
    jit trace recording a non-leaf's hooks (see :func:`_for_effects`)."""
    late = None
    for h in list(hooks):
        if type(h) is RetainGrad:
            late = [h] if late is None else late + [h]
            continue
        seen.add(id(g._data))
        r = h(g)
        if r is not None:
            _check_hook_result(h, r, g)
            g = r
            seen.add(id(g._data))
        elif rec is not None:
            _for_effects(rec, h)
    if late is not None:
        for h in late:
            if rec is not None:
                _for_effects(rec, h)
            h(g)
    return g


def _for_effects(rec, hook) -> None:
    """Under a jit trace, a gradient hook on a tensor the step made that returned nothing ran
    for its effects (a gradient stored for Grad-CAM, ``retain_grad()``'s ``.grad``): a replay
    would skip it and leave the traced call's values there, so the signature runs eagerly
    instead. Hooks whose effect a replay keeps say so with a true ``replay_safe`` attribute."""
    if rec.fallback is None and not getattr(hook, "replay_safe", False):
        name = ("retain_grad()" if type(hook) is RetainGrad else "the gradient hook "
                + getattr(hook, "__qualname__", type(hook).__name__))
        rec.fallback = (f"{name} on a tensor the step made runs for its effects during "
                        "backward, which a replay would skip")


def _specs(key: tuple) -> tuple:
    """Shape-only stand-ins (Specs) for the inputs a node did not keep, from ``(shapes, dtype)``;
    read-only, so one tuple serves every node with those shapes."""
    out = _SPECS.get(key)
    if out is None:
        if len(_SPECS) >= 4096:
            _SPECS.clear()
        out = _SPECS[key] = tuple([Spec(s, key[1]) for s in key[0]])
    return out


_SPECS: dict = {}


def _saved_args(n: Node, args: tuple) -> tuple:
    """``n``'s inputs as they were when it ran, where an in-place op recorded for autograd
    has since pointed one of the tensors at a new array (a rebind writes no memory, so the old
    array and the node it came from are the saved value; its views, brought up to date, may
    have been saved by this node too)."""
    out = list(args)
    for a, d in (e[2:] for e in n.versions):
        if a is not None and a._data is not d:
            for k, x in enumerate(args):
                if x is a:
                    p = n.parents[k]
                    out[k] = type(a).make(d, p if type(p) is Node else None, p is not None)
    return tuple(out)


def _apply_vjps(n: Node, g, create_graph: bool, wanted, pending: dict, m: Modes,
                owned: dict | None = None, post: list | None = None, seen=None,
                clean: dict | None = None) -> None:
    """Send node ``n``'s VJP messages to its parents (summed into ``pending``).

    ``owned`` maps a vertex to the pending sum the engine made itself (no one else holds its
    array): a further message is added into it in place, with no new array and no bind.
    ``clean``: the owned sums known to hold no -0.0 (one of their terms was a scatter of
    zeros), into which a primitive's ``add_into`` (a basic slice's message) adds in place with
    the bits of adding its zero-padded message: x + 0.0 is x for every x but -0.0.
    ``post``: the node's post-hooks, which see (and may replace) the messages first.
    """
    tracked = anomaly = m.anomaly
    if tracked:
        m.in_backward = n  # (anomaly mode: an error below names where n was created)
        anomaly = ANOMALY[1]  # whether to check the results for NaN/Inf
    prim = n.prim
    into = prim.add_into if clean is not None else None
    if into is not None and not tracked and post is None:
        p = n.parents[0]
        prev = pending.get(p)
        if prev is not None and clean.get(p) is prev and owned.get(p) is prev:
            pd, gd = prev._data, g._data
            if (pd.dtype == gd.dtype and pd.dtype.kind == "f" and type(pd) is type(gd)
                    and pd.flags.c_contiguous and (wanted is None or p in wanted)
                    and into(pd, gd, **n.params)):
                return
    if not n.alive:
        raise GradError(
            f"backward through '{n.prim.name}' a second time: its saved values were freed by "
            "the first backward; pass retain_graph=True to the first call")
    args = n.args
    if n.versions is not None:
        for e in n.versions:
            cell = e[0]
            if cell[0] != e[1]:
                raise InplaceError(
                    f"a value that '{n.prim.name}' saved for backward was modified in place "
                    f"(version {cell[0]}, expected {e[1]}); use an out-of-place op instead")
            a = e[2]
            if a is not None and a._data is not e[3]:
                args = _saved_args(n, args)
                break
    out = n.out
    if type(args) is Packed:  # saved_tensors_hooks packed them: unpack
        args, out = _unpack_saved(n, args, create_graph)
    gdt = g._data.dtype
    if args is None:
        args = _specs((n.shapes, gdt))
    params = n.params
    parents = n.parents
    rules = prim.vjp
    grads = ans = None
    if gdt.kind == "c":  # a complex cotangent: PyTorch's convention (_complex_vjps)
        grads = _complex_vjps(n, g, args, out, params, create_graph, wanted)
        rules = None
    elif prim.vjp_raw is not None and not create_graph and m.jit is None and not m.traces \
            and not tracked:
        grads = _raw_vjps(prim, n, g, args, out, wanted)
        if grads is not None:
            rules = None
    if grads is None:  # the rules read the output as a tensor (a graph node with create_graph)
        if out is not None:
            # a plain tensor even when g is a batched one (a VJP run inside vmap)
            ans = type(g).make(out, n if create_graph else None, create_graph)
    if grads is None and rules is None:
        needs = tuple(p is not None and (wanted is None or p in wanted) for p in parents)
        grads = prim.vjp_all(needs, g, ans, *args, **params)
    shapes = n.shapes
    collected = None if post is None else [None] * len(parents)
    i = -1
    for p in parents:
        i += 1
        if p is None or (wanted is not None and p not in wanted):
            continue
        if rules is None:
            gi = grads[i]
        elif params:
            gi = rules[i](g, ans, *args, **params)
        elif len(args) == 2:  # the usual arities called plainly: no argument list built
            gi = rules[i](g, ans, args[0], args[1])
        elif len(args) == 1:
            gi = rules[i](g, ans, args[0])
        else:
            gi = rules[i](g, ans, *args)
        if gi is None:
            continue
        if gi._data.shape != shapes[i]:
            gi = gi.sum_to(shapes[i])
        if anomaly:
            _check_finite(backend_of(gi._data).xp, gi._data, "result", n)
        if collected is not None:
            collected[i] = gi
            continue
        prev = pending.get(p)
        if prev is None:
            pending[p] = gi
            if into is not None:  # a scatter into new zeros: the engine's, and clean
                owned[p] = clean[p] = gi
        elif owned is None:
            pending[p] = prev + gi
        elif owned.get(p) is prev and prev._data.dtype == gi._data.dtype and (
                prev._data.flags.c_contiguous or prev._data.strides == gi._data.strides):
            # in place only where the new sum would be laid out as prev is (NumPy lays out
            # an F-ordered prev plus a C-ordered message C-ordered): a jit trace adds out of
            # place, and a later reduction over another layout adds in another order
            prev._data += gi._data
            if into is not None:
                clean[p] = prev
        else:
            pending[p] = owned[p] = s = prev + gi
            if clean is not None and (into is not None or clean.get(p) is prev):
                clean[p] = s
    if collected is not None:  # the node's post-hooks see the messages, then they go
        for p, gi in zip(parents, _run_post_hooks(post, collected, g, seen)):
            if gi is not None:
                prev = pending.get(p)
                pending[p] = gi if prev is None else prev + gi
                if owned:
                    owned.pop(p, None)
                    clean.pop(p, None)
    if tracked:
        m.in_backward = None


def _complex_vjps(n: Node, g, args, out, params, create_graph: bool, wanted) -> list:
    """Node ``n``'s cotangents for a complex ``g``, by PyTorch's convention: a real loss L of
    z = x + iy sends dL/dx + i dL/dy to z, so the VJP of a holomorphic f is g * conj(f'(z)).

    A primitive's ``complex`` says how: "holomorphic" when its rules, written with f', are
    right for complex inputs as a JVP (g * f'(z)): they then run as conj(rule(conj(g))); a
    tuple of rules (or a ``vjp_all``-shaped callable) of its own for complex cotangents; None
    where nobody has checked the op for complex inputs (refused rather than a wrong gradient).
    A real input that meets a complex cotangent gets its real part, as in PyTorch.
    """
    prim = n.prim
    how = prim.complex
    if how is None:
        raise GradError(f"backward of '{prim.name}' for complex tensors is not supported (its "
                        "gradient rule is written for real numbers)")
    ans = None if out is None else type(g).make(out, n if create_graph else None, create_graph)
    needs = tuple(p is not None and (wanted is None or p in wanted) for p in n.parents)
    holo = how == "holomorphic"
    if holo:
        g = g.conj()
        how = prim.vjp
    if how is None:
        grads = list(prim.vjp_all(needs, g, ans, *args, **params))
    elif callable(how):
        grads = list(how(needs, g, ans, *args, **params))
    else:
        grads = [r(g, ans, *args, **params) if need and r is not None else None
                 for r, need in zip(how, needs)]
    for i, gi in enumerate(grads):
        if gi is None:
            continue
        if holo:
            gi = gi.conj()
        a = args[i]
        if (gi.dtype.kind == "c" and not isinstance(a, Spec)
                and getattr(getattr(a, "dtype", None), "kind", "c") != "c"):
            gi = gi.real  # a real input: the real part
        grads[i] = gi
    return grads


def _raw_vjps(prim, n: Node, g, args, out, wanted) -> list | None:
    """Node ``n``'s cotangents by its primitive's ``vjp_raw`` (see :func:`.primitive.primitive`)
    when ``g`` and every array the node kept (``args``: its inputs, or their specs) are NumPy
    arrays of one float dtype (integer inputs aside), as tensors; else None (the rules run)."""
    gd = g._data
    if type(gd) is not _ndarray:
        return None
    dt = gd.dtype
    if dt.kind == "f" and dt.itemsize == 2:  # float16: the rules' products run in float32 and
        return None  # round once (bind), NumPy's float16 product rounds otherwise (jit's bits)
    datas = []
    for a in args:
        t = type(a)
        if t is Spec or t is float or t is int:  # (no getattr that fails: ~0.5 µs each)
            datas.append(a)
            continue
        d = getattr(a, "_data", a)
        if type(d) is _ndarray:
            if d.dtype != dt and d.dtype.kind not in "iub":
                return None
        elif hasattr(d, "shape"):
            return None  # another device's array
        datas.append(d)
    if wanted is None:
        needs = tuple([p is not None for p in n.parents])
    else:
        needs = tuple([p is not None and p in wanted for p in n.parents])
    res = prim.vjp_raw(needs, gd, out, *datas, **n.params)
    if res is None:
        return None
    make = type(g).make
    return [None if r is None else make(r) if type(r) is _ndarray else
            make(backend_of(gd).asarray(r)) for r in res]


#: Tensor.register_post_accumulate_grad_hook's hooks: id(leaf) -> (weak reference, hooks)
POST_ACCUMULATE: dict = {}


def _accumulate_leaf(leaf, g, create_graph: bool, seen: set) -> None:
    """Add ``g`` into ``leaf.grad`` (the stored array is never shared with another tensor),
    then run the leaf's post-accumulate hooks."""
    rec = modes().jit
    if rec is not None:  # under a jit trace: one replayable step (this function, run untraced
        rec.accumulate(_accumulate_leaf, leaf, g, create_graph)  # now and at each replay)
        return
    _add_to_grad(leaf, g, create_graph, seen)
    if POST_ACCUMULATE:
        entry = POST_ACCUMULATE.get(id(leaf))
        if entry is not None and entry[0]() is leaf:
            for hook in list(entry[1]):
                if hook(leaf) is not None:  # PyTorch's rule: such a hook changes .grad itself
                    name = getattr(hook, "__name__", type(hook).__name__)
                    raise GradError(f"post-accumulate-grad hook '{name}' returned a value; "
                                    "it must return None (change leaf.grad in place instead)")


# Locks taken while a gradient is added into a ``.grad`` (a leaf's, or retain_grad's copy),
# chosen by the tensor's id: two threads whose backward passes reach one tensor (a shared
# parameter) both land in its .grad, as PyTorch's per-leaf mutex ensures, where the read and
# the write of ``.grad`` (or NumPy's ``+=``, which lets go of the GIL on large arrays) would
# otherwise interleave and drop one of the sums. Striped, so passes over different models
# rarely wait for each other, and cheap when no other thread holds the lock.
_GRAD_LOCKS = tuple(threading.Lock() for _ in range(64))


def grad_lock(t) -> threading.Lock:
    """The lock held while a gradient is added into ``t.grad`` (see :data:`_GRAD_LOCKS`)."""
    return _GRAD_LOCKS[(id(t) >> 4) & 63]


def _add_to_grad(leaf, g, create_graph: bool, seen: set) -> None:
    """Add ``g`` into ``leaf.grad``, in the leaf's dtype (as PyTorch casts each gradient to its
    input's), holding the leaf's :func:`grad_lock` so concurrent backward passes add up.

    A later backward adds into ``.grad``'s array in place, so a new ``.grad`` keeps ``g``'s
    array only when the engine made it for this leaf alone: not a view of another array, not
    one in ``seen`` (a root's cotangent, another leaf's ``.grad``, an array a hook saw or
    returned). Anything else is copied first, so arrays the user or a hook holds never change.
    """
    if g._data.dtype != leaf._data.dtype:
        if g._data.dtype.kind == "c" and leaf._data.dtype.kind != "c":
            g = g.real  # a real leaf keeps the real part of a complex gradient, as PyTorch
        g = g.astype(leaf._data.dtype)
    with _GRAD_LOCKS[(id(leaf) >> 4) & 63]:
        old = leaf.grad
        if old is not None and old.shape != g.shape:
            raise GradError(f"backward: the .grad of a tensor of shape {tuple(leaf.shape)} has "
                            f"shape {tuple(old.shape)}, which the new gradient of shape "
                            f"{tuple(g.shape)} cannot be added into (the tensor changed shape "
                            "since, through .data?); set its .grad to None first, as PyTorch "
                            "refuses this too")
        if create_graph:
            if old is not None:
                leaf.grad = old + g
            elif g.node is None and (id(g._data) in seen or not g._data.flags.owndata):
                leaf.grad = g.make(g._data.copy())  # a constant: later added into in place
            else:
                seen.add(id(g._data))
                leaf.grad = g
            return
        d = g._data
        if old is None:
            if id(d) in seen or not d.flags.owndata:
                d = d.copy()
            seen.add(id(d))
            leaf.grad = g.make(d)
        elif old.shape == d.shape and old.dtype == d.dtype and old.node is None:
            old._data += d
            old._bump()
        else:
            leaf.grad = g.make(old._data + d)


def run_backward(roots: Sequence, cotangents: Sequence, *, retain_graph: bool = False,
                 create_graph: bool = False, targets: Sequence | None = None,
                 accumulate: bool = True, allow_unused: bool = True) -> list | None:
    """Propagate ``cotangents`` from ``roots`` back through the graph.

    With ``targets=None`` every leaf that requires grad accumulates into ``.grad``. With targets,
    only those tensors' gradients are computed, and returned (``accumulate=False``) or added
    into their ``.grad`` (``accumulate=True``).
    """
    if RETAIN_MOVED:
        settle_retained()
    pending: dict = {}
    seen: set = set()  # ids of arrays a leaf's .grad may not keep without a copy (_add_to_grad)
    for r, c in zip(roots, cotangents):
        if not r.requires_grad:
            raise GradError(_no_graph("backward: tensor does not require grad and has no graph "
                                      "(did you compute it under no_grad, or from data only?)"))
        k = _key(r)
        seen.add(id(c._data))
        prev = pending.get(k)
        pending[k] = c if prev is None else prev + c
    starts = [_key(r) for r in roots if r.node is not None]

    wanted = None
    tkeys = None
    if targets is not None:
        tkeys = [_key(t) for t in targets]
        tset = set(tkeys)
        order = _topo_order(starts)
        wanted = set(tset)  # vertices that lead to a target
        for n in reversed(order):
            if n not in wanted and any(p in wanted for p in n.parents if p is not None):
                wanted.add(n)
        results: dict = {}

    m = modes()
    prev_mode, prev_seen, prev_task = m.grad_enabled, m.grads_seen, m.task
    m.grad_enabled = create_graph
    m.grads_seen = seen
    # sums the engine owns may grow in place, unless they must stay graph ops (create_graph,
    # a jit trace that replays every op it saw, or batched values inside vmap, whose arrays
    # are the batch's stand-ins)
    owned = None if create_graph or m.jit is not None or m.traces else {}
    clean = None if owned is None else {}
    try:
        counts = _toposort_counts(starts)
        m.task = Task(counts, wanted)
        ready = []
        for s in starts:
            counts[s] -= 1
            if counts[s] == 0:
                ready.append(s)
        while ready:
            n = ready.pop()
            g = pending.pop(n, None)
            if g is None and "call" in n.params:
                g = _materialized(n)
            if g is not None:
                if owned and owned.pop(n, None) is not None:
                    clean.pop(n, None)  # (clean's vertices are owned ones)
                post = None
                if n.hooks:
                    g, post = _run_node_hooks(n.hooks, g, seen)
                if tkeys is not None and n in tset:
                    results[n] = g
                if wanted is None or any(p in wanted for p in n.parents if p is not None):
                    _apply_vjps(n, g, create_graph, wanted, pending, m, owned, post, seen,
                                clean)
                if not retain_graph and (n.args is not None or n.out is not None
                                         or "call" in n.params):
                    # only a node that saved values is spent (PyTorch's rule): one that saved
                    # none (a reshape, an expand, a sum) may run again in a later backward
                    n.args = n.out = n.versions = None
                    n.alive = False
            for p in n.parents:
                if type(p) is Node:
                    c = counts[p] - 1
                    counts[p] = c
                    if c == 0:
                        ready.append(p)
                elif p is not None and tkeys is None:
                    c = counts[p] - 1
                    counts[p] = c
                    if c == 0 and p in pending:  # no more messages: hooks and .grad now, so
                        g = pending.pop(p)  # gradient hooks (DDP) run while backward goes on
                        if owned:
                            owned.pop(p, None)
                            clean.pop(p, None)
                        if p._hooks:
                            g = _run_hooks(p._hooks, g, seen)
                        _accumulate_leaf(p, g, create_graph, seen)
        # what is left in pending are leaves (roots, or any leaf when targets are given)
        for leaf, g in pending.items():
            if leaf._hooks:
                g = _run_hooks(leaf._hooks, g, seen)
            if tkeys is None:
                _accumulate_leaf(leaf, g, create_graph, seen)
            elif leaf in tset:
                results[leaf] = g
    except Exception as e:
        if m.in_backward is not None and not isinstance(e, AnomalyError):
            _note_forward(e, m.in_backward)
        raise
    finally:
        m.grad_enabled = prev_mode
        m.grads_seen = prev_seen
        m.task = prev_task
        m.in_backward = None

    if tkeys is None:
        return None
    out = []
    for k in tkeys:
        g = results.get(k)
        if g is None and not allow_unused:
            raise GradError("grad: one of the inputs was not used to compute the outputs; "
                            "pass allow_unused=True to get None for it")
        out.append(g)
    if accumulate:
        for t, g in zip(targets, out):
            if g is not None:
                _accumulate_leaf(t, g, create_graph, seen)
        return None
    return out


def _materialized(n: Node):
    """Zeros for the node of a custom ``Function`` that no gradient reached (its outputs fed
    only inputs whose backward returned None): PyTorch still runs its backward, on
    materialised zero gradients, unless ``ctx.set_materialize_grads(False)``; what it returns
    (zeros for the leaves, ``.grad`` set) flows on."""
    call = n.params["call"]
    ctx = getattr(call, "ctx", None)
    if not getattr(ctx, "materialize_grads", False) or not n.alive:
        return None
    first = call.outs[call.slots[0]]
    size = sum(call.outs[i]._data.size for i in call.slots)
    dt = "float64" if getattr(call, "dtypes", None) else first.dtype  # the joint's dtype
    be = backend_of(first._data)
    with be.scope():
        return type(first).make(be.xp.zeros(size, dtype=dt))


def _note_forward(e: Exception, n: Node) -> None:
    """Anomaly mode, as PyTorch's: an error raised in node ``n``'s backward says (a warning,
    and a note on the exception) where in user code ``n`` was created."""
    where = n.trace or "<unknown: created before detect_anomaly was on>"
    msg = (f"error detected in the backward of '{n.prim.name}'; that '{n.prim.name}' was "
           f"created at {where}")
    warnings.warn(msg, UserWarning, stacklevel=user_stacklevel())
    e.add_note(msg)


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, only_inputs: bool = True, allow_unused: bool | None = None,
         is_grads_batched: bool = False, materialize_grads: bool = False) -> tuple:
    """Gradients of ``outputs`` with respect to ``inputs`` (a tuple, one per input), like
    ``torch.autograd.grad`` (its parameters in its order; ``only_inputs`` is ignored, as
    PyTorch deprecates it).

    Nothing is accumulated into ``.grad``. With ``create_graph=True`` the results are themselves
    differentiable, which is how higher-order derivatives are taken. ``materialize_grads``
    gives zeros for unused inputs (and so allows them). ``is_grads_batched`` (a leading batch
    axis of ``grad_outputs``) is handled by ``nodegrad.autograd.grad``, which stacks one pass
    per row (this layer cannot build the stacked tensor).
    """
    if is_grads_batched:
        raise NotImplementedError("grad: is_grads_batched=True is handled by "
                                  "nodegrad.autograd.grad; call that one")
    if allow_unused is None:
        allow_unused = materialize_grads
    elif materialize_grads and not allow_unused:
        raise ValueError("grad: materialize_grads=True needs allow_unused unset or True, as in "
                         "PyTorch")
    outputs = tensor_list(outputs, "grad", "outputs")
    inputs = tensor_list(inputs, "grad", "inputs")
    if not inputs:  # as PyTorch: an empty result would hide a mistake in the call
        raise GradError("grad: the inputs argument cannot be empty; pass the tensors to "
                        "differentiate with respect to")
    cots = _default_cotangents(outputs, grad_outputs)
    for t in inputs:
        if not t.requires_grad:
            raise GradError(_no_graph("grad: an input does not require grad; "
                                      "create it with requires_grad=True"))
    out = run_backward(outputs, cots, retain_graph=create_graph if retain_graph is None
                       else retain_graph, create_graph=create_graph, targets=inputs,
                       accumulate=False, allow_unused=allow_unused)
    if materialize_grads:
        out = [type(t)(backend_of(t._data).xp.zeros_like(t._data)) if g is None else g
               for t, g in zip(inputs, out)]
    return tuple(out)


def tensor_list(xs, op: str, what: str) -> list:
    """``xs`` as a list of tensors: one tensor, or any iterable of them (a list, a generator
    such as ``model.parameters()``, a dict's values), as PyTorch takes them."""
    if hasattr(xs, "node"):
        return [xs]
    try:
        out = list(xs)
    except TypeError:
        raise TypeError(f"{op}: {what} must be a tensor or a sequence of tensors, got "
                        f"{type(xs).__name__}") from None
    bad = [type(t).__name__ for t in out if not hasattr(t, "node")]
    if bad:
        raise TypeError(f"{op}: {what} must be a tensor or a sequence of tensors, got a "
                        f"sequence holding {', '.join(sorted(set(bad)))}")
    return out


def _no_graph(msg: str) -> str:
    """``msg``, or inside vmap the reason that applies there: a batched value seen as one
    example has no graph of its own for ``backward``/``autograd.grad`` to walk."""
    if not modes().traces:
        return msg
    return (msg.split(":")[0] + ": inside vmap a batched tensor has no graph of its own to "
            "differentiate; differentiate with the transforms there (ng.grad, ng.vjp, "
            "ng.jacrev), as torch.func asks")


def _default_cotangents(outputs: list, grad_outputs) -> list:
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif not isinstance(grad_outputs, list | tuple):
        grad_outputs = [grad_outputs]
    if len(grad_outputs) != len(outputs):  # zip would drop outputs or gradients silently
        raise GradError(f"backward: got {len(outputs)} output tensors and {len(grad_outputs)} "
                        "gradients for them; pass one gradient (or None) per output")
    cots = []
    for o, c in zip(outputs, grad_outputs):
        if c is None:
            if o._data.dtype.kind == "c":
                raise GradError(f"backward: grad can be implicitly created only for real "
                                f"scalar outputs but got {o.dtype}; pass the cotangent "
                                "explicitly (or differentiate a real function such as .abs())")
            if o._data.size != 1:
                raise GradError(
                    f"backward: a gradient can be created implicitly only for a scalar output, "
                    f"got shape {tuple(o.shape)}; pass the output's cotangent explicitly")
            c = o.ones_like()
        elif not hasattr(c, "node"):
            c = type(o)(o.backend.asarray(c, dtype=o.dtype))
        elif c.dtype != o.dtype:  # as PyTorch: the gradient takes the output's dtype
            c = c.astype(o.dtype)
        if tuple(c.shape) != tuple(o.shape):
            raise GradError(f"backward: gradient has shape {tuple(c.shape)} but the output has "
                            f"shape {tuple(o.shape)}")
        cots.append(c)
    return cots


def backward(tensors, grad_tensors=None, retain_graph: bool | None = None,
             create_graph: bool = False, grad_variables=None, inputs=None) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the leaves (or of ``inputs``),
    as ``torch.autograd.backward`` (``grad_variables``: its old name of ``grad_tensors``)."""
    if grad_variables is not None:
        if grad_tensors is not None:
            raise ValueError("backward: pass grad_tensors or grad_variables (its old name), "
                             "not both")
        grad_tensors = grad_variables
    tensors = tensor_list(tensors, "backward", "tensors")
    cots = _default_cotangents(tensors, grad_tensors)
    if retain_graph is None:
        retain_graph = create_graph
    run_backward(tensors, cots, retain_graph=retain_graph, create_graph=create_graph,
                 targets=backward_inputs(inputs), accumulate=True)


def backward_inputs(inputs) -> list | None:
    """``backward``'s ``inputs`` as a list (None: every leaf); an empty one is refused, as in
    PyTorch, rather than silently computing nothing."""
    if inputs is None:
        return None
    inputs = tensor_list(inputs, "backward", "inputs")
    if not inputs:
        raise GradError("backward: the inputs argument cannot be empty; pass the tensors to "
                        "accumulate gradients into, or None for every leaf")
    return inputs


Hook = Callable[[Any], Any]
