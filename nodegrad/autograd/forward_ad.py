"""PyTorch's forward-mode AD API (``torch.autograd.forward_ad``) on nodegrad's engine.

Inside a dual level, ``make_dual(x, t)`` returns a tensor that is a fresh differentiation
input, so the ops on it are recorded as for ``backward``, and notes ``t`` as its tangent.
``unpack_dual(y)`` pushes the noted tangents forward to ``y`` through the recorded graph with
each primitive's JVP rule, as :func:`nodegrad.func.jvp` does; the level memoises the tangent
of every node it reached, so unpacking several outputs (or one after another as a computation
goes on) calls each rule once. Only one level is active at a time, as in PyTorch; levels
are per thread, as nodegrad's grad modes are.

Unlike PyTorch, which computes tangents as ops run, the tangents here are computed when asked
for: unpack a tangent before a ``backward`` that frees the graph it runs through, and a dual
tensor reports ``requires_grad=True`` (it is a differentiation input).

>>> import nodegrad as ng
>>> import nodegrad.autograd.forward_ad as fwAD
>>> x = ng.tensor([1.0, 2.0])
>>> with fwAD.dual_level():
...     y = fwAD.make_dual(x, ng.ones(2)) ** 2
...     fwAD.unpack_dual(y).tangent
tensor([2., 4.])
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import NamedTuple

from .. import _backend as B
from ..autodiff import Node, _key, modes, saved_values
from ..errors import GradError
from ..func.grad import _alias
from ..func.jvp import _as_tangent
from ..tensor import Tensor

__all__ = ["dual_level", "enter_dual_level", "exit_dual_level", "make_dual", "unpack_dual",
           "UnpackedDualTensor"]


class UnpackedDualTensor(NamedTuple):
    """What :func:`unpack_dual` returns: the primal and its tangent (None when it has none)."""

    primal: Tensor
    tangent: Tensor | None


class _Level:
    """One dual level: the tangent of every graph vertex reached so far (None: zero).

    The registered duals are vertices whose tangent is given; a primal handed out by
    ``unpack_dual`` is one whose tangent is zero (it stops the push)."""

    __slots__ = ("index", "memo", "linked")

    def __init__(self, index: int) -> None:
        self.index = index
        self.memo: dict = {}
        # whether a tangent must be recorded when grad mode is on: a dual made from a tensor
        # with a graph, or a tangent that requires grad (reverse over forward)
        self.linked = False


_state = threading.local()  # .level: the thread's active _Level or None


def _current() -> _Level | None:
    return getattr(_state, "level", None)


def _record_under_no_grad(on: bool) -> None:
    """Tell the engine a dual level is active, where it keeps recording ops on tensors that
    require grad under no_grad (forward AD works there, as in PyTorch)."""
    m = modes()
    if hasattr(type(m), "forward_ad"):
        m.forward_ad = on


def enter_dual_level() -> int:
    """Enter a new dual level and return its index (0); nested levels are refused, as in
    PyTorch."""
    if _current() is not None:
        raise RuntimeError("enter_dual_level: nested forward mode AD is not supported; exit "
                           "the active dual level first (as in PyTorch)")
    _state.level = _Level(0)
    _record_under_no_grad(True)
    return 0


def exit_dual_level(*, level: int | None = None) -> None:
    """Leave the active dual level (``level``, when given, must name it): its dual tensors
    lose their tangents."""
    cur = _current()
    if cur is None:
        raise RuntimeError("exit_dual_level: no dual level is active")
    if level is not None and level != cur.index:
        raise RuntimeError(f"exit_dual_level: level {level} is not the active level "
                           f"{cur.index}; exit the last level that was entered")
    cur.memo.clear()
    _state.level = None
    _record_under_no_grad(False)


class dual_level:
    """Context manager for a dual level (``with fwAD.dual_level():``); also a decorator. The
    ``with`` statement gives the level's index."""

    def __enter__(self) -> int:
        return enter_dual_level()

    def __exit__(self, *exc) -> None:
        exit_dual_level()

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with dual_level():
                return fn(*args, **kwargs)

        return wrapper


def _level(level: int | None, op: str) -> _Level | None:
    cur = _current()
    if level is None:
        return cur
    if cur is None or level != cur.index:
        raise RuntimeError(f"{op}: invalid level {level}; the active level is "
                           f"{'none' if cur is None else cur.index}")
    return cur


def make_dual(tensor: Tensor, tangent: Tensor, *, level: int | None = None) -> Tensor:
    """A dual tensor with the value of ``tensor`` and tangent ``tangent`` in the active level.

    The result shares ``tensor``'s array; gradients of results reach ``tensor`` when it
    requires grad. ``tangent`` must have the primal's shape and dtype."""
    lv = _level(level, "make_dual")
    if lv is None:
        raise RuntimeError("make_dual: no dual level is active; enter one with "
                           "`with fwAD.dual_level():` or fwAD.enter_dual_level()")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"make_dual: expected a tensor as the primal, got "
                        f"{type(tensor).__name__}")
    if not isinstance(tangent, Tensor):
        raise TypeError(f"make_dual: expected a tensor as the tangent, got "
                        f"{type(tangent).__name__}")
    if not B.is_float(tensor.dtype):
        raise ValueError(f"make_dual: expected the primal to be floating point, got "
                         f"{tensor.dtype}")
    if not B.is_float(tangent.dtype):
        raise ValueError(f"make_dual: expected the tangent to be floating point, got "
                         f"{tangent.dtype}")
    if modes().traces:
        raise NotImplementedError("make_dual: dual tensors inside vmap are not supported; use "
                                  "nodegrad.func.jvp there")
    tangent = _as_tangent(tangent, tensor, "make_dual")
    if tensor.requires_grad and modes().grad_enabled:
        dual = _alias(tensor)  # a view of tensor in the graph: gradients reach it
    else:  # a vertex of its own above a hidden leaf, so in-place ops on it are recorded
        hidden = Tensor._of(tensor._data, None, True)
        node = Node.make(_alias, {}, (hidden,), None, None, (tensor._data.shape,), None)
        dual = Tensor.make(tensor._data, node, True)
    lv.memo[dual.node] = tangent
    if tensor.node is not None or tensor.requires_grad or tangent.requires_grad:
        lv.linked = True
    return dual


def _order(start: Node, memo: dict) -> list:
    """The nodes above ``start`` not yet in ``memo``, parents before children (no recursion)."""
    order, expanded, done = [], set(), set()
    stack = [start]
    while stack:
        n = stack[-1]
        if n in expanded:
            stack.pop()
            if n not in done:
                done.add(n)
                order.append(n)
            continue
        expanded.add(n)
        for p in n.parents:
            if type(p) is Node and p not in memo and p not in expanded:
                stack.append(p)
    return order


def _push(lv: _Level, start: Node) -> None:
    """Fill ``lv.memo`` up to ``start`` with each node's tangent, by the JVP rules."""
    memo = lv.memo
    for n in _order(start, memo):
        ts = tuple(None if p is None else memo.get(p) for p in n.parents)
        like = next((t for t in ts if t is not None), None)
        if like is None:
            memo[n] = None
            continue
        if not n.alive:
            raise GradError(f"unpack_dual: the tangent through '{n.prim.name}' is needed after "
                            "a backward pass freed its saved values; unpack before backward "
                            "(or pass retain_graph=True)")
        args, out = saved_values(n, like.dtype, modes().grad_enabled)
        ans = None if out is None else Tensor._of(out, n, True)
        memo[n] = n.prim.jvp(ts, ans, *args, **n.params)


def unpack_dual(tensor: Tensor, *, level: int | None = None) -> UnpackedDualTensor:
    """``(primal, tangent)`` of ``tensor`` in the active level (tangent None when it has
    none, or outside a level). The primal carries ``tensor``'s graph for ``backward`` but no
    tangent."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"unpack_dual: expected a tensor, got {type(tensor).__name__}")
    lv = _level(level, "unpack_dual")
    if lv is None or not tensor.requires_grad:
        return UnpackedDualTensor(tensor, None)
    k = _key(tensor)
    memo = lv.memo
    if k not in memo:
        if type(k) is not Node:
            return UnpackedDualTensor(tensor, None)  # a leaf: no tangent
        m = modes()
        prev = m.grad_enabled
        m.grad_enabled = prev and (lv.linked or m.depth > 0)
        try:
            _push(lv, k)
        finally:
            m.grad_enabled = prev
    tangent = memo.get(k)
    if tangent is None:
        return UnpackedDualTensor(tensor, None)
    if modes().grad_enabled:
        primal = _alias(tensor)  # the same graph, as a vertex whose tangent is zero
        memo[primal.node] = None
    else:
        primal = Tensor.make(tensor._data)
    return UnpackedDualTensor(primal, tangent)
