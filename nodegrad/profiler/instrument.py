"""The timing hooks a profile puts in while it runs, and takes out again when the last one ends.

Nothing here costs anything outside a profile: the hooks are installed on entry and removed on
exit. While one is installed:

- every registered primitive's ``fwd`` is a wrapper that times the call, as a range named for
  the primitive (``matmul``), with the input shapes and the output's bytes;
- the engine's per-node backward step (``autodiff._apply_vjps``, which runs whichever VJP form
  the node uses: per-input rules, ``vjp_all``, ``vjp_raw`` or the complex rules) is a wrapper
  that times each node's backward as one range, ``<name>_backward``, inside which the ops its
  rules bind appear as ranges of their own;
- global optimizer step hooks make each ``Optimizer.step`` a range,
  ``Optimizer.step#<Class>.step`` (PyTorch's name);
- calling an ``ng.jit`` function is a range ``jit#<name>``: its replay runs a captured program
  of backend calls, not ``bind``, so a replayed step shows as that one range (and its optimizer
  step), not op by op.

Installs are counted under a lock: concurrent profiles (in threads or nested) share one
install, and the registry is restored exactly, also when a profile ends by an exception.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from time import perf_counter_ns

from .. import _backend as B
from .. import autodiff
from ..primitive import REGISTRY
from .events import FunctionEvent

_LOCK = threading.RLock()
_USERS = 0  # profiles that hold the install
_SAVED_FWD: dict = {}  # primitive -> (its own fwd, our wrapper)
_SAVED: dict = {}  # "apply": (engine function, wrapper); "jit": (Jitted.__call__, wrapper)
_HANDLES: list = []  # the optimizer step hooks' handles
#: the recorders collecting now (a tuple, replaced whole under the lock: read without one)
ACTIVE: tuple = ()
_TLS = threading.local()  # per thread: the optimizer ranges open now
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class Recorder:
    """Collects the ranges of one recording: one stack of open ranges per thread, so a range
    opened inside another becomes its child, and the events in the order they began."""

    def __init__(self, shapes: bool, memory: bool, stack: bool, device: bool) -> None:
        self.shapes, self.memory, self.stack, self.device = shapes, memory, stack, device
        self.events: list[FunctionEvent] = []
        self.t0 = perf_counter_ns()
        self.stopped = False
        self._local = threading.local()
        self._ids = itertools.count(1)  # (next() is atomic: threads may share a recorder)

    def begin(self, name: str, kind: str, t: int, shapes: list | None = None) -> FunctionEvent:
        """Open a range named ``name`` at time ``t`` (ns) on this thread."""
        st = getattr(self._local, "open", None)
        if st is None:
            st = self._local.open = []
        parent = st[-1] if st else None
        e = FunctionEvent(next(self._ids), name, kind, threading.get_native_id(),
                          (t - self.t0) / 1e3, shapes if self.shapes else None,
                          _python_stack() if self.stack else None, parent)
        if parent is not None:
            parent.cpu_children.append(e)
        st.append(e)
        self.events.append(e)
        return e

    def end(self, e: FunctionEvent, t: int, nbytes: int = 0, device_ns: int = 0) -> None:
        """Close range ``e`` at time ``t`` (ns); ranges still open inside it close with it."""
        if e.end_us is not None:
            return
        st = getattr(self._local, "open", None) or []
        end = (t - self.t0) / 1e3
        if e in st:
            while st:
                top = st.pop()
                if top.end_us is None:
                    top.end_us = end
                if top is e:
                    break
        e.end_us = end
        if self.memory:
            e.self_cpu_memory_usage = nbytes
        e.device_time_total = device_ns / 1e3

    def finish(self) -> list[FunctionEvent]:
        """Close what is still open (at now) and add up memory over nested ranges."""
        self.stopped = True
        end = (perf_counter_ns() - self.t0) / 1e3
        for e in self.events:
            if e.end_us is None:
                e.end_us = end
        for e in reversed(self.events):  # children began after their parents
            e.cpu_memory_usage += e.self_cpu_memory_usage
            if e.cpu_parent is not None:
                e.cpu_parent.cpu_memory_usage += e.cpu_memory_usage
        return self.events


def _python_stack(limit: int = 8) -> list[str]:
    """The caller's frames outside the package, innermost first, as ``file(line): function``."""
    out = []
    f = sys._getframe(2)
    while f is not None and len(out) < limit:
        path = f.f_code.co_filename
        if not os.path.abspath(path).startswith(_PKG):
            out.append(f"{path}({f.f_lineno}): {f.f_code.co_name}")
        f = f.f_back
    return out


def open_range(name: str, kind: str, shapes: list | None = None) -> list:
    """Open a range in every active recorder; returns what :func:`close_range` takes."""
    recs = ACTIVE
    if not recs:
        return []
    t = perf_counter_ns()
    return [(r, r.begin(name, kind, t, shapes)) for r in recs if not r.stopped]


def close_range(opened: list) -> None:
    """Close the ranges :func:`open_range` opened."""
    if opened:
        t = perf_counter_ns()
        for r, e in opened:
            r.end(e, t)


def _nbytes(out) -> int:
    if isinstance(out, tuple | list):
        return sum(_nbytes(o) for o in out)
    return int(getattr(out, "nbytes", 0))


def _sync_of(arrays) -> object | None:
    """The synchronize of the device the first device array lives on (None on the CPU)."""
    for a in arrays:
        if B.is_array(a) and type(a) is not B.ndarray:
            be = B.backend_of(a)
            if be.device_id is not None:
                return be.synchronize
    return None


def _timed(recs: tuple, name: str, kind: str, shapes, fn, args: tuple, params: dict,
           arrays) -> object:
    """``fn(*args, **params)`` timed as a range in each recorder of ``recs``."""
    sync = _sync_of(arrays) if any(r.device for r in recs) else None
    if sync is not None:
        sync()  # work queued before this op is not its time
    t = perf_counter_ns()
    opened = [(r, r.begin(name, kind, t, shapes)) for r in recs if not r.stopped]
    out = None
    try:
        out = fn(*args, **params)
        if sync is not None:
            sync()
    finally:
        t1 = perf_counter_ns()
        nbytes = _nbytes(out) if kind == "op" else 0
        for r, e in opened:
            r.end(e, t1, nbytes, t1 - t if sync is not None else 0)
    return out


def _shapes_of(arrays) -> list:
    return [list(getattr(a, "shape", ())) for a in arrays]


def _wrap_fwd(prim, fwd):
    name = prim.name

    def fwd_profiled(xp, *args, **params):
        recs = ACTIVE
        if not recs:
            return fwd(xp, *args, **params)
        shapes = _shapes_of(args) if any(r.shapes for r in recs) else None
        return _timed(recs, name, "op", shapes, fwd, (xp, *args), params, args)

    fwd_profiled.__wrapped__ = fwd
    fwd_profiled.unprofiled = fwd  # what a jit trace captures (jit/trace.py: _forward)
    fwd_profiled.__name__ = getattr(fwd, "__name__", name)
    return fwd_profiled


def _wrap_apply(apply):
    def apply_profiled(n, g, *rest):
        recs = ACTIVE
        if not recs:
            return apply(n, g, *rest)
        shapes = [list(g._data.shape)] if any(r.shapes for r in recs) else None
        return _timed(recs, n.prim.name + "_backward", "backward", shapes, apply, (n, g, *rest),
                      {}, (g._data,))

    apply_profiled.__wrapped__ = apply
    return apply_profiled


def _wrap_jit_call(call):
    def call_profiled(self, *args, **kwargs):
        opened = open_range(f"jit#{self.__name__}", "jit")
        try:
            return call(self, *args, **kwargs)
        finally:
            close_range(opened)

    call_profiled.__wrapped__ = call
    return call_profiled


def _opt_pre(opt, args, kwargs) -> None:
    st = getattr(_TLS, "open", None)
    if st is None:
        st = _TLS.open = []
    st.append((opt, open_range(f"Optimizer.step#{type(opt).__name__}.step", "optimizer")))


def _opt_post(opt, args, kwargs) -> None:
    st = getattr(_TLS, "open", None) or []
    for i in range(len(st) - 1, -1, -1):
        if st[i][0] is opt:
            close_range(st.pop(i)[1])
            return


def install() -> None:
    """Put the timing hooks in (the first profile does; later ones count)."""
    global _USERS
    with _LOCK:
        _USERS += 1
        if _USERS > 1:
            return
        try:
            _patch()
        except BaseException:
            _USERS -= 1
            _unpatch()
            raise


def uninstall() -> None:
    """Take the hooks out when the last profile ends, restoring every attribute it changed."""
    global _USERS
    with _LOCK:
        if _USERS <= 0:
            return
        _USERS -= 1
        if _USERS == 0:
            _unpatch()


def installed() -> bool:
    """Whether the timing hooks are in now."""
    return _USERS > 0


def _patch() -> None:
    from ..jit.api import Jitted
    from ..optim import base as optim_base

    for prim in list(REGISTRY.values()):
        own = prim.fwd
        w = _wrap_fwd(prim, own)
        _SAVED_FWD[prim] = (own, w)
        prim.fwd = w
    apply = autodiff._apply_vjps
    _SAVED["apply"] = (apply, _wrap_apply(apply))
    autodiff._apply_vjps = _SAVED["apply"][1]
    call = Jitted.__dict__["__call__"]
    _SAVED["jit"] = (call, _wrap_jit_call(call))
    Jitted.__call__ = _SAVED["jit"][1]
    _opt_pre.__dict__[optim_base.GRAD_FREE] = True  # they never touch .grad (jit replays)
    _opt_post.__dict__[optim_base.GRAD_FREE] = True
    _HANDLES.append(optim_base.register_optimizer_step_pre_hook(_opt_pre))
    _HANDLES.append(optim_base.register_optimizer_step_post_hook(_opt_post))


def _unpatch() -> None:
    for prim, (own, w) in _SAVED_FWD.items():
        if prim.fwd is w:  # (something that replaced it since keeps its own)
            prim.fwd = own
    _SAVED_FWD.clear()
    if "apply" in _SAVED:
        own, w = _SAVED.pop("apply")
        if autodiff._apply_vjps is w:
            autodiff._apply_vjps = own
    if "jit" in _SAVED:
        from ..jit.api import Jitted

        own, w = _SAVED.pop("jit")
        if Jitted.__dict__.get("__call__") is w:
            Jitted.__call__ = own
    while _HANDLES:
        _HANDLES.pop().remove()


def activate(rec: Recorder) -> None:
    """Make ``rec`` receive ranges."""
    global ACTIVE
    with _LOCK:
        ACTIVE = ACTIVE + (rec,)


def deactivate(rec: Recorder) -> None:
    """Stop sending ranges to ``rec``."""
    global ACTIVE
    with _LOCK:
        ACTIVE = tuple(r for r in ACTIVE if r is not rec)
