"""PyTorch's ``torch.autograd.graph`` on nodegrad's engine: hooks on what nodes save for
backward, on the nodes themselves, and on several tensors' gradients at once.

``saved_tensors_hooks(pack, unpack)`` changes what a node keeps: each tensor the node saves
goes through ``pack`` when the op is recorded, and the node keeps what ``pack`` returned; its
VJP gets the tensor back from ``unpack`` (``save_on_cpu`` keeps device activations in host
memory that way). The hooks belong to the calling thread and nest (the innermost acts).

Where nodegrad's saves differ from PyTorch's: a primitive saves all its inputs, its output,
both or nothing (``saves``), so a node may pack a tensor PyTorch's would not (``linear``
packs x, W and b, PyTorch's ``addmm`` x, or W too when x requires grad). ``x * x``, ``exp``,
``relu`` and the like pack what PyTorch's do, in the same order, and unpack once per saved
tensor when their VJP runs. The version check of saved tensors stays on under the hooks
(PyTorch drops it there): an in-place change of a saved tensor is refused either way.

>>> import nodegrad as ng
>>> from nodegrad.autograd.graph import saved_tensors_hooks
>>> x = ng.tensor([1.0, 2.0], requires_grad=True)
>>> with saved_tensors_hooks(lambda t: t.numpy().copy(), lambda a: ng.tensor(a)):
...     y = (x * x).sum()
>>> y.backward()
>>> x.grad
tensor([2., 4.])
"""

from __future__ import annotations

import abc
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .. import _backend as B
from ..autodiff import AccumulateGrad, RemovableHandle, modes
from ..autodiff import Node as _Node
from ..errors import GradError
from ..tensor import Tensor

__all__ = ["Node", "saved_tensors_hooks", "save_on_cpu", "disable_saved_tensors_hooks",
           "register_multi_grad_hook", "increment_version"]


class Node(abc.ABC):
    """The type of ``tensor.grad_fn`` (and of the ``AccumulateGrad`` vertices in
    ``next_functions``), as ``torch.autograd.graph.Node``: ``isinstance(t.grad_fn, Node)``."""

    @abc.abstractmethod
    def name(self) -> str:
        """The node's name (nodegrad's: the primitive's, such as ``'mul'``)."""

    @property
    @abc.abstractmethod
    def next_functions(self) -> tuple:
        """``(vertex, 0)`` per input: its Node, an AccumulateGrad, or None."""

    @property
    @abc.abstractmethod
    def metadata(self) -> dict:
        """A dict of the user's own, kept with the node."""

    @abc.abstractmethod
    def register_hook(self, fn: Callable) -> RemovableHandle:
        """``fn(grad_inputs, grad_outputs)`` after the node's VJP; may return new grad_inputs."""

    @abc.abstractmethod
    def register_prehook(self, fn: Callable) -> RemovableHandle:
        """``fn(grad_outputs)`` before the node's VJP; may return new grad_outputs."""


Node.register(_Node)
Node.register(AccumulateGrad)


def _check_callable(what: str, name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"{what}: {name} must be callable, got {type(fn).__name__}")


class saved_tensors_hooks:
    """Pack each tensor a recorded op saves for backward with ``pack_hook(tensor) -> obj``;
    backward gets it back from ``unpack_hook(obj) -> tensor``, which must give a tensor of
    the saved one's shape, dtype and device (as ``torch.autograd.graph.saved_tensors_hooks``).

    ``pack_hook`` runs once per saved tensor, with recording off; ``unpack_hook`` once per
    saved tensor each time the node's VJP runs. The hooks hold for the calling thread while
    the block runs; blocks nest, and the innermost pair acts alone.
    """

    def __init__(self, pack_hook: Callable[[Tensor], Any], unpack_hook: Callable[[Any], Tensor]):
        _check_callable("saved_tensors_hooks", "pack_hook", pack_hook)
        _check_callable("saved_tensors_hooks", "unpack_hook", unpack_hook)
        self.pack_hook = pack_hook
        self.unpack_hook = unpack_hook

    def __enter__(self) -> saved_tensors_hooks:
        m = modes()
        if m.hooks_off is not None:
            raise RuntimeError(m.hooks_off)
        m.saved_hooks = m.saved_hooks + ((self.pack_hook, self.unpack_hook),)
        return self

    def __exit__(self, *exc) -> None:
        m = modes()
        m.saved_hooks = m.saved_hooks[:-1]


class save_on_cpu(saved_tensors_hooks):
    """Keep the tensors recorded ops save for backward in host memory, and copy each back to
    its device when backward needs it (``torch.autograd.graph.save_on_cpu``): device memory
    then holds no activations between forward and backward. A CPU tensor's array is kept as
    it is, no copy (``pin_memory=True``: a copy, as PyTorch's pinned buffer). Pinned host
    memory is not used: the copy is an ordinary host array. ``device_type`` is accepted for
    PyTorch's signature."""

    def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
        if not isinstance(pin_memory, bool):
            raise TypeError(f"save_on_cpu: pin_memory must be a bool, got "
                            f"{type(pin_memory).__name__}")
        if not isinstance(device_type, str):
            raise TypeError(f"save_on_cpu: device_type must be a str, got "
                            f"{type(device_type).__name__}")

        def pack_to_cpu(t: Tensor) -> tuple:
            d = t._data  # the array, not the tensor: an output kept would hold its own node
            b = B.backend_of(d)
            if b.device_id is None:
                return b, (d.copy() if pin_memory else d)
            return b, b.to_host(d)

        def unpack_from_cpu(packed: tuple) -> Tensor:
            b, h = packed
            return Tensor._of(h if b.device_id is None else b.asarray(h))

        super().__init__(pack_to_cpu, unpack_from_cpu)


@contextlib.contextmanager
def disable_saved_tensors_hooks(error_message: str) -> Iterator[None]:
    """Forbid saved_tensors_hooks in the calling thread while the block runs: entering one
    raises RuntimeError(``error_message``), and so does entering this block inside one (as
    ``torch.autograd.graph.disable_saved_tensors_hooks``). For code whose saves must stay as
    they are. Also a decorator."""
    if not isinstance(error_message, str):
        raise TypeError(f"disable_saved_tensors_hooks: error_message must be a str, got "
                        f"{type(error_message).__name__}")
    m = modes()
    prev = m.hooks_off
    try:
        m.hooks_off = error_message
        if m.saved_hooks:
            raise RuntimeError(error_message)
        yield
    finally:
        m.hooks_off = prev


class _MultiHandle:
    """The handle of :func:`register_multi_grad_hook`: ``remove()`` takes off every hook."""

    def __init__(self, handles: list):
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self) -> _MultiHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def register_multi_grad_hook(tensors: Sequence[Tensor], fn: Callable, *,
                             mode: str = "all") -> _MultiHandle:
    """Call ``fn`` once per backward pass for the gradients of several tensors, as
    ``torch.autograd.graph.register_multi_grad_hook``.

    ``mode="all"``: ``fn(grads)`` after the gradients of every tensor this pass reaches are
    computed (``grads`` has one entry per tensor, None for a tensor the pass does not reach
    or one ``inputs=`` leaves out); ``mode="any"``: ``fn(grad)`` with the first gradient
    computed among them. ``fn``'s result is ignored; the gradients go on unchanged.
    """
    if mode not in ("all", "any"):
        raise ValueError(f"register_multi_grad_hook: expects mode to be one of ('all', 'any') "
                         f"but got {mode!r}")
    _check_callable("register_multi_grad_hook", "fn", fn)
    if isinstance(tensors, Tensor) or not isinstance(tensors, Iterable):
        raise TypeError(f"register_multi_grad_hook: expected a sequence of tensors, got "
                        f"{type(tensors).__name__}")
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"register_multi_grad_hook: tensors[{i}] is "
                            f"{type(t).__name__}, expected a tensor")
    if not any(t.requires_grad for t in tensors):
        raise GradError("register_multi_grad_hook: none of the tensors requires grad, so no "
                        "backward pass would call the hook")
    refs = [weakref.ref(t) for t in tensors]  # weakly: the hooks live on the tensors
    n = len(tensors)
    lock = threading.Lock()
    # per backward pass (its autodiff.Task, dropped with it): what has come so far
    state: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def expected(task) -> set:
        out = set()
        for k, r in enumerate(refs):
            t = r()
            if t is not None and t.requires_grad and task.will_reach(t):
                out.add(k)
        return out

    def all_hook(i: int, g) -> None:
        task = modes().task
        with lock:
            st = state.get(task) if task is not None else None
            if st is None:
                st = [[None] * n, expected(task) if task is not None else {i}, set()]
                if task is not None:
                    state[task] = st
            st[0][i] = g
            st[2].add(i)
            done = st[1] <= st[2]
            if done and task is not None:
                del state[task]
        if done:
            fn(tuple(st[0]))

    def any_hook(g) -> None:
        task = modes().task
        with lock:
            if task is not None:
                if task in state:
                    return
                state[task] = True
        fn(g)

    handles = []
    for i, t in enumerate(tensors):
        if not t.requires_grad:
            continue
        if mode == "all":
            def hook(g, i=i) -> None:
                all_hook(i, g)
        else:
            hook = any_hook
        handles.append(t.register_hook(hook))
    return _MultiHandle(handles)


def increment_version(tensor: Tensor | Iterable[Tensor]) -> None:
    """Move the version counter of ``tensor`` (or of each tensor given) on by one, as
    ``torch.autograd.graph.increment_version``: for code that changes a tensor's memory
    behind nodegrad's back, so that a backward that saved the old value refuses."""
    ts = [tensor] if isinstance(tensor, Tensor) else tensor
    if not isinstance(ts, Iterable):
        raise TypeError(f"increment_version: expected a tensor or tensors, got "
                        f"{type(tensor).__name__}")
    ts = list(ts)
    for t in ts:
        if not isinstance(t, Tensor):
            raise TypeError(f"increment_version: expected tensors, got {type(t).__name__}")
    for t in ts:
        t._ensure_version()[0] += 1
