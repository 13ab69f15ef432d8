"""Tensor: an array on a device plus the autodiff bookkeeping, and the creation functions.

A tensor holds its backend array in ``data``; if it was produced by a recorded operation,
``node`` points into the graph, and a leaf that ``requires_grad`` collects ``grad``. The
operator methods (``x + y``, ``x.sum()``, ...) are the primitives of ``nodegrad.ops``, attached
in ``ops/methods.py`` so each op keeps one home.
"""

from __future__ import annotations

import math
import operator
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from operator import attrgetter

from . import _backend as B
from .autodiff import (RETAIN_MOVED, RETAINING, RemovableHandle, RetainGrad, _default_cotangents,
                       _no_graph, backward_inputs, modes, note_creation, retaining, run_backward)
from .dtypes import torch_promote_types
from .errors import DeviceError, DTypeError, GradError, ShapeError

_new = object.__new__
float16, float32, float64, bfloat16 = B.float16, B.float32, B.float64, B.bfloat16
int32, int64, bool_ = B.int32, B.int64, B.bool_


class Size(tuple):
    """PyTorch's ``torch.Size``: a tuple of dimension lengths, what ``x.size()`` returns
    (``x.shape`` is a plain tuple, which compares equal to it); ``Tensor(x.size())`` reads it
    as sizes, as PyTorch's does."""

    def numel(self) -> int:
        """The number of elements a tensor of this shape holds."""
        n = 1
        for s in self:
            n *= int(s)
        return n

    def __repr__(self) -> str:
        return f"nodegrad.Size({list(self)})"


def _is_size(x) -> bool:
    """Whether ``x`` is one integer size (``Tensor(2, 3)``): an int, a NumPy integer or a 0-d
    integer tensor (``LongTensor(n, lengths[0])``), as PyTorch's sizes; not a bool."""
    if isinstance(x, Tensor):
        return x.ndim == 0 and x.dtype.kind in "iu"
    return isinstance(x, int | B.np.integer) and not isinstance(x, bool)


def _default_float_array(a):
    """PyTorch's ``Tensor(ndarray)``: the array itself where it has the default float dtype
    (memory shared, as PyTorch's), else its values in that dtype (a complex array's real part,
    with PyTorch's warning). A NumPy scalar is refused, as PyTorch refuses it."""
    if isinstance(a, B.np.generic):
        raise TypeError(f"Tensor: expected an array or a sequence of numbers, got "
                        f"{type(a).__name__} (ng.tensor(x) makes a 0-d tensor of a number)")
    d = B.DEFAULT_FLOAT
    if a.dtype == d:
        return a
    if a.dtype.kind == "c":
        warnings.warn("Tensor: casting complex values to real discards the imaginary part",
                      UserWarning, stacklevel=3)
        a = a.real
    return a.astype(d)


def check_fill_value(value) -> None:
    """``fill_``'s value is a number or a 0-d tensor (PyTorch's rule; copy_ copies tensors)."""
    if isinstance(value, Tensor) and value._data.ndim:
        raise ShapeError(f"fill_: the value must be a number or a 0-d tensor, got a tensor "
                         f"of shape {tuple(value.shape)} (use copy_ to copy a tensor in)")


def check_fill_fits(op: str, value, dtype):
    """``value`` as ``dtype`` stores it, refusing a Python float or complex number that
    ``dtype`` cannot hold, as PyTorch's checked conversion does: NaN, inf, out of range or a
    nonzero imaginary part for an integer dtype, a finite value beyond a float (or complex)
    dtype's largest, a nonzero imaginary part for a real one (NumPy would store INT_MIN, inf
    or the real part). A complex number with no imaginary part comes back as its real part."""
    if not isinstance(value, float | complex) or dtype is None:
        return value
    dt = B.as_dtype(dtype)
    if dt.kind == "b":
        return value
    parts = [value.real, value.imag] if isinstance(value, complex) else [value]
    if isinstance(value, complex) and dt.kind != "c":
        if value.imag != 0:
            raise OverflowError(f"{op}: value {value} cannot be converted to {dt} without "
                                "losing its imaginary part")
        value, parts = value.real, [value.real]
    for v in parts:
        if dt.kind in "iu":
            info = B.np.iinfo(dt)
            ok = v == v and info.min <= v <= info.max
        else:
            ok = v != v or abs(v) == float("inf") or abs(v) <= float(B.finfo(dt).max)
        if not ok:
            raise OverflowError(f"{op}: value {value} cannot be converted to {dt} without "
                                "overflow")
    return value


# ``ndarray op Tensor``: the ufunc NumPy calls, and the Tensor's reflected operator it means
_NUMPY_REFLECTED = {
    "add": "__radd__", "subtract": "__rsub__", "multiply": "__rmul__",
    "true_divide": "__rtruediv__", "divide": "__rtruediv__", "floor_divide": "__rfloordiv__",
    "remainder": "__rmod__", "power": "__rpow__", "matmul": "__rmatmul__",
    "bitwise_and": "__rand__", "bitwise_or": "__ror__", "bitwise_xor": "__rxor__",
    "left_shift": "__rlshift__", "right_shift": "__rrshift__", "equal": "__eq__",
    "not_equal": "__ne__", "less": "__gt__", "less_equal": "__ge__", "greater": "__lt__",
    "greater_equal": "__le__"}
# ``arr op= t`` into a NumPy array (``t.numpy()``): the in-place operators NumPy has
_NUMPY_INPLACE = frozenset(("add", "subtract", "multiply", "true_divide", "divide",
                            "floor_divide", "remainder", "power", "bitwise_and", "bitwise_or",
                            "bitwise_xor", "left_shift", "right_shift", "matmul"))


class Tensor:
    """An n-d array with reverse-mode autodiff. Create one with :func:`nodegrad.tensor`.

    ``requires_grad`` is a plain attribute, read by every operation; set it with
    :meth:`requires_grad_`, which checks what PyTorch's attribute does (a floating dtype, and
    a leaf to turn it off). Assigning ``.grad`` is checked (a tensor of this one's shape,
    dtype and device, or None).
    """

    # _view (set on views): (the tensor it views, the basic index) for a slice, else (that
    # tensor, the view's primitive, its params)
    __slots__ = ("_data", "node", "requires_grad", "_grad", "_version", "_hooks", "_view",
                 "__weakref__")
    __hash__ = object.__hash__  # ``==`` is elementwise, as in PyTorch
    #: whether the tensor's array may move to new memory holding the same values (an optimiser
    #: gathers a Parameter into one buffer): then even a leaf lists its ``detach()``es, so they
    #: follow it (:func:`.ops.index.refresh_views`)
    memory_moves = False

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        """NumPy meets a Tensor: ``arr op t`` runs the tensor's reflected operator (``arr < t``
        is ``t > arr``); ``arr += t`` into a NumPy array (``a = t.numpy(); a += -lr * t.grad``)
        reads the tensor's values. Other ufuncs refuse."""
        name = ufunc.__name__
        if method == "__call__" and not kwargs and len(inputs) == 2:
            if (out is not None and len(out) == 1 and not isinstance(out[0], Tensor)
                    and out[0] is inputs[0] and name in _NUMPY_INPLACE):
                return ufunc(inputs[0], inputs[1]._data if isinstance(inputs[1], Tensor)
                             else inputs[1], out=out)
            if out is None and inputs[1] is self and name in _NUMPY_REFLECTED:
                return getattr(self, _NUMPY_REFLECTED[name])(inputs[0])
        raise TypeError(f"{name}: NumPy's ufuncs do not take a Tensor (got {method} on "
                        f"{', '.join(type(x).__name__ for x in inputs)}); call the tensor's "
                        f"method or the nodegrad function, or pass its array, t.numpy()")

    def __init__(self, data=(), node=None, requires_grad: bool = False, *more: int):
        if isinstance(data, Tensor) and _is_size(node) and _is_size(data):
            data = int(data)  # Tensor(n, 2) with a 0-d integer n: sizes, as PyTorch's
        if isinstance(data, Tensor):  # PyTorch's Tensor(t): t's values, shared
            if data.requires_grad and modes().grad_enabled:
                raise GradError("Tensor(t): t requires grad, and this alias would not be "
                                "recorded; use t.view_as(t) (recorded) or t.detach()")
            data = data._data
        elif hasattr(data, "dtype"):  # an array: PyTorch's Tensor(ndarray) is the default float
            if type(self) is Tensor and node is None:  # dtype's (shared where it is already)
                data = _default_float_array(data)
        elif type(data) is Size:  # Tensor(x.size()): PyTorch's Tensor(*sizes), zero-filled
            if node is not None or requires_grad is not False or more:
                raise TypeError("Tensor(size): a Size takes no further arguments")
            data = B.np.zeros(tuple(int(d) for d in data), dtype=B.DEFAULT_FLOAT)
        elif not hasattr(data, "dtype"):  # PyTorch's Tensor(sequence): the default float dtype
            if _is_size(data):  # PyTorch's Tensor(2, 3): zeros (PyTorch's are uninitialised)
                sizes = (data, *(() if node is None else (node,)),
                         *(() if requires_grad is False else (requires_grad,)), *more)
                if not all(_is_size(d) for d in sizes):
                    raise TypeError(f"Tensor: sizes must be integers, got {sizes}")
                shape = tuple(int(d) for d in sizes)
                if any(d < 0 for d in shape):
                    raise ValueError(f"Tensor: negative dimension in size {shape}")
                data, node, requires_grad = B.np.zeros(shape, dtype=B.DEFAULT_FLOAT), None, False
            elif not isinstance(data, list | tuple):
                raise TypeError(f"Tensor: expected an array or a sequence of numbers, got "
                                f"{type(data).__name__} (ng.tensor(x) makes a tensor of x)")
            data = B.np.asarray(data, dtype=B.DEFAULT_FLOAT)  # get_default_dtype()'s value
        self._data = data
        self.node = node
        self.requires_grad = requires_grad
        self._grad = None
        self._version = None
        self._hooks = None

    @staticmethod
    def _of(data=(), node=None, requires_grad: bool = False, *more: int) -> Tensor:
        """``Tensor(...)`` as the engine means it: an array is kept as it is (its dtype and
        memory), where the public ``Tensor(ndarray)`` takes PyTorch's default float dtype."""
        if hasattr(data, "dtype") and not isinstance(data, Tensor):
            return Tensor.make(data, node, requires_grad)
        t = _new(Tensor)
        t.__init__(data, node, requires_grad, *more)
        return t

    @staticmethod
    def make(data, node=None, requires_grad: bool = False) -> Tensor:
        """``Tensor(data, node, requires_grad)`` for the engine's hot paths, set from Python
        (a class call runs ``__init__`` through C, a costly round trip for a small op).
        ``primitive.bind`` sets the same attributes inline."""
        t = _new(Tensor)
        t._data = data
        t.node = node
        t.requires_grad = requires_grad
        t._grad = None
        t._version = None
        t._hooks = None
        return t

    def __getstate__(self):
        """What pickle (and ``copy``) keep, as PyTorch pickles a tensor: its values,
        ``requires_grad`` and ``.grad``, as a leaf: no graph, no link to the tensor it views,
        no hooks (their functions and weak references cannot be pickled, and a copy is its
        own tensor)."""
        extra = getattr(self, "__dict__", None)  # a subclass's attributes (Parameter's)
        return (dict(extra) if extra else None,
                {"_data": self._data, "node": None, "requires_grad": self.requires_grad,
                 "_grad": self._grad, "_version": None, "_hooks": None})

    def _set_grad(self, value) -> None:
        """``x.grad = value``: None, or a tensor of x's shape, dtype and device (PyTorch's
        checks), so that backward can add into it in place."""
        if value is not None:
            d, v = self._data, getattr(value, "_data", None)
            if not (type(v) is type(d) and v.shape == d.shape and v.dtype == d.dtype
                    and isinstance(value, Tensor) and value is not self):
                _check_grad(self, value)
            if (rec := modes().jit) is not None and _grad_recorded(rec, self, value):
                return
        elif (rec := modes().jit) is not None:  # under a jit trace: each replay clears it
            rec.effect(_drop_grad, ((self,),), {})  # (in a tuple: this tensor, not its value)
            return
        self._grad = value

    grad = property(attrgetter("_grad"), _set_grad, doc="The accumulated gradient (a leaf's, "
                    "or a non-leaf's that called retain_grad()), or None.")

    @property
    def data(self) -> Tensor:
        """PyTorch's ``.data``: a tensor of the same memory that does not require grad and is
        not recorded, so ``p.data.normal_()``, ``target.data.copy_(p.data)`` and
        ``w.data.clamp_(-c, c)`` change ``p`` unseen by autograd. It has its own version
        counter, as PyTorch's, so a backward that saved the old values computes with the new
        ones (Tacotron 2 masks its decoder's outputs through ``.data`` after its postnet read
        them); of a tensor in a graph it is listed like ``detach()``, so it follows the tensor
        through in-place ops recorded for autograd. A Parameter's (whose memory an optimiser
        may move) is listed and shares the counter: a write through it is seen by a backward
        that saved the old values (an error there, where PyTorch computes with the new ones).
        ``t.numpy()`` is the NumPy array."""
        t = Tensor.make(self._data)
        if self.node is not None or type(self).memory_moves:
            self._add_alias(t)
            if not type(self).memory_moves:
                t._version = [0]  # listed to follow the tensor; its writes go unseen
        return t

    @data.setter
    def data(self, value) -> None:
        """``t.data = other``: ``t`` takes ``other``'s memory (a tensor's, or an array), shape
        and dtype, keeping its place in the graph and its ``requires_grad``, as PyTorch's.
        A plain tensor ``other`` then follows ``t`` when that memory moves (an optimiser
        gathers a Parameter into its flat buffer), as it shares PyTorch's storage (SAM's
        ``p.data = old_p``, then a step that ``old_p`` sees)."""
        other = None
        if isinstance(value, Tensor):
            other, value = value, value._data
        elif not B.is_array(value):
            raise TypeError(f"data: expected a Tensor (or an array), got {type(value).__name__}")
        self._data = value
        if getattr(self, "_view", None) is not None:  # no longer a view of its old base: an
            self._view = None  # in-place op on that base must not make it one again
        cell = self._version
        if cell is not None and len(cell) > 1:  # views of the old memory stay on it: a write
            for v in self._live_views():  # through one no longer reaches this tensor
                v._view = None  # (PyTorch's)
            self._version = None
        if (other is not None and type(other) is Tensor and other.node is None
                and getattr(other, "_view", None) is None
                and (other._version is None or len(other._version) == 1)
                and (self.node is not None or type(self).memory_moves)):
            self._add_alias(other)  # listed like a detach(): it follows this tensor's memory

    # --- metadata -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def backend(self) -> B.Backend:
        return B.backend_of(self._data)

    @property
    def device(self) -> str:
        """``'cpu'`` or ``'cuda:N'``."""
        return B.backend_of(self._data).name

    @property
    def is_leaf(self) -> bool:
        return self.node is None

    @property
    def grad_fn(self):
        """The Node that produced this tensor (None for leaves)."""
        return self.node

    @property
    def is_cuda(self) -> bool:
        return self.device != "cpu"

    def size(self, dim: int | None = None):
        """The shape as a :class:`Size` (PyTorch's), or one dimension of it."""
        if dim is None:
            return Size(self._data.shape)
        n = self._data.ndim
        if not -n <= dim < n:
            raise IndexError(f"size: dim {dim} is out of range for a tensor with {n} dims"
                             + (f" (expected one in [{-n}, {n - 1}])" if n else ""))
        return self._data.shape[dim]

    def numel(self) -> int:
        return self._data.size

    def dim(self) -> int:
        return self._data.ndim

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __contains__(self, element) -> bool:
        """``element in x``: whether any entry equals ``element`` (a number or a tensor that
        broadcasts), as PyTorch's."""
        other = element._data if isinstance(element, Tensor) else element
        if not (isinstance(other, int | float | bool) or B.is_array(other)):
            raise TypeError(f"Tensor.__contains__: expected a number or a tensor, got "
                            f"{type(element).__name__}")
        return bool((self._data == other).any())

    @property
    def nbytes(self) -> int:
        return self._data.nbytes

    # --- conversion -----------------------------------------------------------------------
    def numpy(self, *, force: bool = False):
        """The values as a NumPy array (shares memory on the CPU, copies from a GPU).

        Read-only for a tensor that requires grad: a write would change, unseen, a value the
        graph may have saved. ``.detach().numpy()`` (or PyTorch's ``numpy(force=True)``)
        gives a writable array, as in PyTorch."""
        self._concrete("numpy()")
        a = B.backend_of(self._data).to_host(self._data)
        if self.requires_grad and not force:
            a = a.view()
            a.flags.writeable = False
        return a

    def item(self):
        self._concrete("item()")
        if self._data.size != 1:
            raise ValueError(f"item(): tensor of shape {self.shape} has {self._data.size} "
                             "elements, expected 1")
        return self._data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        if copy:
            return a.astype(a.dtype if dtype is None else dtype, copy=True)
        return a if dtype is None else a.astype(dtype, copy=False)

    def __dlpack__(self, *args, **kwargs):
        """Export for other frameworks; refused while the tensor requires grad, as PyTorch does."""
        if self.requires_grad:
            raise GradError("__dlpack__: cannot export a tensor that requires grad (the other "
                            "framework could write into values the graph saved); use "
                            "tensor.detach()")
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()

    def __bool__(self) -> bool:
        self._concrete("bool()")
        if self._data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self._data.size} elements is "
                             "ambiguous; use .any() or .all()")
        return bool(self._data)

    def __float__(self) -> float:
        return float(_real_item(self, "float"))

    def __int__(self) -> int:
        return int(_real_item(self, "int"))

    def __complex__(self) -> complex:
        return complex(self.item())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub" or self._data.size != 1:
            raise TypeError("only integer tensors of one element can be used as an index")
        return int(self.item())

    def __format__(self, spec: str) -> str:
        """``f"{t:.2f}"``: a 0-d tensor formats as its number (PyTorch's rule)."""
        if self._data.ndim == 0:
            return format(self.item(), spec)
        if spec:
            raise TypeError(f"unsupported format string {spec!r} for a tensor of shape "
                            f"{tuple(self.shape)}; only 0-d tensors format as numbers")
        return str(self)

    def __repr__(self) -> str:
        body = _format(self.numpy())
        extra = []
        if self.dtype != B.DEFAULT_FLOAT and self.dtype != int64 and self.dtype != bool_:
            extra.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extra.append(f"device='{self.device}'")
        if self.node is not None:
            extra.append(f"grad_fn=<{self.node.prim.name}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    def _concrete(self, what: str) -> None:
        """Under a jit trace, refuse to read a traced value into Python (see nodegrad.jit)."""
        rec = modes().jit
        if rec is not None:
            rec.concrete(self._data, what)

    # --- autodiff -------------------------------------------------------------------------
    def detach(self) -> Tensor:
        """The same values, cut from the graph (shares memory and the version counter). Of a
        tensor in a graph, it follows that tensor through in-place ops recorded for autograd
        (which point it at a new array), as it shares PyTorch's memory
        (:func:`.ops.index.refresh_views`)."""
        t = Tensor._of(self._data)
        self._add_alias(t)
        return t

    def _add_alias(self, t: Tensor) -> None:
        """``t`` shares this tensor's memory without a gradient (``detach()``, ``view(dtype)``):
        it shares the version counter and, when this tensor is in a graph, is listed with its
        views, so that an in-place op recorded on this tensor, or on the tensor it views, gives
        it the new values too. It holds that tensor only weakly (not its graph); ``_view`` is
        (a weak reference to the first tensor up the chain of views, None, the chain's steps)."""
        if (self.node is None or type(self) is not Tensor) and not type(self).memory_moves:
            t._version = self._ensure_version()
            return
        self._add_view(t)
        root, steps, entry = self, [], getattr(self, "_view", None)
        while entry is not None and entry[1] is not None:
            steps.append(entry[1:])
            root, entry = entry[0], getattr(entry[0], "_view", None)
        t._view = (weakref.ref(root), None, tuple(reversed(steps)))

    def detach_(self) -> Tensor:
        """Cut this tensor from the graph in place: it becomes a leaf that does not require
        grad. A view refuses, as in PyTorch (its base would still be in the graph)."""
        entry = getattr(self, "_view", None)
        if entry is not None and entry[1] is not None:  # (detach() gives (base, None))
            raise GradError("detach_: can't detach views in-place (this tensor views another "
                            "tensor's memory); use detach() instead, which returns a new tensor")
        self.node = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Mark a leaf as a variable whose gradient ``backward`` accumulates."""
        if requires_grad and not B.is_inexact(self._data.dtype):
            raise GradError(f"only floating and complex tensors can require grad, got dtype "
                            f"{self.dtype}")
        if not requires_grad and self.node is not None:
            raise GradError("requires_grad_(False) on a non-leaf; use detach() instead")
        self.requires_grad = bool(requires_grad)
        return self

    def backward(self, gradient=None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: Sequence[Tensor] | None = None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (PyTorch semantics).

        ``gradient`` is the cotangent, required unless ``self`` has one element. The graph is
        freed afterwards unless ``retain_graph``; ``create_graph`` records the backward pass
        itself, for higher-order derivatives.
        """
        if not B.is_inexact(self._data.dtype):
            raise GradError(f"backward: the output has integer dtype {self.dtype}")
        if not self.requires_grad:
            raise GradError(_no_graph("backward: tensor does not require grad and has no graph "
                                      "(did you compute it under no_grad, or from data only?)"))
        cots = _default_cotangents([self], [gradient])
        if retain_graph is None:
            retain_graph = create_graph
        run_backward([self], cots, retain_graph=retain_graph, create_graph=create_graph,
                     targets=backward_inputs(inputs), accumulate=True)

    def register_hook(self, fn: Callable) -> RemovableHandle:
        """Call ``fn(grad)`` when the gradient here is computed; a returned tensor (of the
        gradient's shape and dtype) replaces it. ``retain_grad``'s copy is taken after every
        such hook, as in PyTorch."""
        if not self.requires_grad:
            raise GradError("register_hook: tensor does not require grad")
        if self.node is not None:
            if self.node.hooks is None:
                self.node.hooks = []
            hooks = self.node.hooks
        else:
            if self._hooks is None:
                self._hooks = []
            hooks = self._hooks
        hooks.append(fn)
        return RemovableHandle(hooks, fn)

    def retain_grad(self) -> None:
        """Keep ``.grad`` on a non-leaf after backward (leaves always keep it); calling it
        again changes nothing, as in PyTorch. The gradient kept is the one after this
        tensor's other hooks, and of its current value when an in-place op changed it since
        (:class:`.autodiff.RetainGrad`)."""
        node = self.node
        if node is None:
            return
        h = retaining(self)
        if h is None:
            RetainGrad(self, node)
        elif h.node is not node:
            h.move_to(node)

    @property
    def retains_grad(self) -> bool:
        """Whether retain_grad() keeps this non-leaf's .grad."""
        return self.node is not None and retaining(self) is not None

    # --- in-place bookkeeping -------------------------------------------------------------
    def _ensure_version(self) -> list:
        if self._version is None:
            self._version = [0]
        return self._version

    def _bump(self) -> None:
        """Record an in-place change, so a backward that saved the old value can refuse."""
        if self._version is not None:
            self._version[0] += 1

    def _add_view(self, view: Tensor) -> None:
        """``view`` views this tensor's array: it takes the version counter (a write into the
        memory through any of them moves it on for all, as PyTorch's shared counter) and is
        listed in it, oldest first (weakly), so that an in-place op recorded on either can
        bring the others up to date (:func:`.ops.index.refresh_views`)."""
        cell = self._ensure_version()
        if len(cell) == 1:
            cell.append([])
        refs = cell[1]
        n = len(refs)
        if n >= 16 and not n & (n - 1):  # at each power of two: forget the views gone
            refs[:] = [r for r in refs if r() is not None]
        refs.append(weakref.ref(view))
        view._version = cell

    def _live_views(self) -> list:
        """The views (and ``detach()``es) made of this tensor that are alive and listed with
        it: each is rebuilt by the op that made it when an in-place op recorded on this tensor
        points it at a new array (:func:`.ops.index.refresh_views`)."""
        cell = self._version
        if cell is None or len(cell) < 2:
            return []
        out = []
        for r in cell[1]:
            v = r()
            entry = getattr(v, "_view", None) if v is not None and v is not self else None
            if entry is not None and (entry[0]() if entry[1] is None else entry[0]) is self:
                out.append(v)
        return out

    def _rebound(self, new=None) -> None:
        """Before the tensor is pointed at a new array ``new`` (an in-place op recorded for
        autograd writes the node's own array): a counter of its own moves on, so a backward
        that saved the old value refuses, as PyTorch's would; a counter shared with views is
        left, since their arrays, and what any node saved of them, are unchanged (the views
        are brought up to date instead).

        A tensor outside the graph until now (no node, no grad) may share its memory with
        handles the engine does not list (``.data``, a leaf's ``detach()``, ``numpy()``,
        ``from_numpy``'s array): its old memory takes the new values too, as PyTorch's in-place
        op writes it (``delta.data[:n] = x.clamp(...)``), and the counter moves on for all."""
        cell = self._version
        if new is not None and self.node is None and not self.requires_grad:
            old = self._data
            if (new is not old and type(new) is type(old) and new.shape == old.shape
                    and new.dtype == old.dtype
                    and getattr(getattr(old, "flags", None), "writeable", True)
                    and modes().jit is None):
                B.backend_of(old).xp.copyto(old, new)
                if cell is not None:
                    cell[0] += 1
        if cell is not None:
            if len(cell) > 1:
                self._version = None
            else:
                cell[0] += 1
        if RETAINING:  # retain_grad's hook follows the tensor to its new node
            h = RETAINING.get(id(self))
            if h is not None and h.ref() is self:
                RETAIN_MOVED.append(h)

    def _check_inplace(self, what: str) -> None:
        if modes().grad_enabled and self.requires_grad and self.node is None:
            raise GradError(f"{what}: a leaf tensor that requires grad cannot be changed in "
                            "place while recording; wrap the update in nodegrad.no_grad()")

    def zero_(self) -> Tensor:
        return self._assign("zero_", 0)

    def fill_(self, value) -> Tensor:
        """Set every element to ``value``: a number or a 0-d tensor (PyTorch's rule)."""
        check_fill_value(value)
        return self._assign("fill_", check_fill_fits("fill_", value, self.dtype))

    def copy_(self, src) -> Tensor:
        """Copy ``src``'s values into this tensor in place (same shape after broadcasting)."""
        self._check_inplace("copy_")
        src_data = src._data if isinstance(src, Tensor) else src
        be = B.backend_of(self._data)
        if B.is_array(src_data) and B.backend_of(src_data) is not be:
            src = src_data = be.asarray(B.backend_of(src_data).to_host(src_data))
        return self._assign("copy_", src)

    def _assign(self, what: str, value) -> Tensor:
        """``self[...] = value`` in place; under a jit trace a recorded write, so each replay
        writes again (with that call's value when ``value`` is a traced tensor)."""
        self._check_inplace(what)
        if getattr(value, "level", None) is not None:  # a vmap tracer (batching sits above)
            raise TypeError(f"{what}: inside vmap an unbatched tensor cannot be changed in place "
                            "with a batched value; build the result out of place")
        rec = modes().jit
        if rec is not None:
            rec.mutate(what, _set_all, self, value)
        else:
            v = value._data if isinstance(value, Tensor) else value
            try:
                self._data[...] = v
            except ValueError as e:
                if not getattr(getattr(self._data, "flags", None), "writeable", True):
                    raise ValueError(f"{what}: cannot write into this tensor's array, a "
                                     "read-only view (an expanded or overlapping one, or a "
                                     "frozen array); clone() it first") from None
                if "broadcast" not in str(e):
                    raise ValueError(f"{what}: {e}") from None
                raise ShapeError(f"{what}: a value of shape {tuple(getattr(v, 'shape', ()))} "
                                 f"does not broadcast to this tensor's shape "
                                 f"{tuple(self.shape)}") from None
        self._bump()
        return self

    def ones_like(self) -> Tensor:
        return Tensor._of(B.backend_of(self._data).xp.ones_like(self._data))


def _drop_grad(ts: tuple) -> None:
    """``t.grad = None`` for each ``t`` of ``ts``, written in a jitted step (the performance
    guide's ``p.grad = None`` for ``zero_grad()``): recorded, so each replay clears the
    gradients again (the jit's passes take it for ``zero_grad()`` of those tensors)."""
    for t in ts:
        t._grad = None


def _grad_recorded(rec, t: Tensor, value: Tensor) -> bool:
    """Record ``t.grad = value`` in a jit trace as a step each replay repeats: a value the step
    computed comes from the program, a tensor made in the step and held by nothing else
    (``zeros_like(p)``) is a constant of it. A tensor held elsewhere (a variable, a buffer made
    outside) is left to run eagerly: backward adds into it in place on every call, which a
    replay would not repeat. False where the caller is to assign it as eager code does."""
    if id(value._data) not in rec.slot:
        if sys.getrefcount(value) > 4:  # (this frame's, the setter's, its caller's, the call's)
            if rec.fallback is None:
                rec.fallback = (
                    f"the .grad of a tensor of shape {tuple(t.shape)} was set to a tensor "
                    "held elsewhere, into which backward adds on every call (a replay would "
                    "not); assign a new tensor (p.grad = ng.zeros_like(p)) or write into it "
                    "(p.grad.copy_(v))")
            return False
        rec.const(value._data)  # (nothing else holds it: _put_grad copies it, here too)
    rec.effect(_put_grad, ((t,), value), {})
    return True


def _put_grad(ts: tuple, value) -> None:
    """``t.grad = value`` for the ``t`` of ``ts``, written in a jitted step (``p.grad =
    zeros_like(p)``): recorded, so each replay assigns it again (the gradients of successive
    calls added up before). A copy of the value, in the traced call too: backward adds into
    the ``.grad`` in place, which must change neither a constant of the program nor a buffer
    it reuses."""
    ts[0]._grad = type(value).make(value._data.copy())


def _check_grad(t: Tensor, value) -> None:
    """Why ``value`` cannot be assigned as ``t.grad`` (PyTorch's checks and messages)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of type "
                        f"{type(value).__name__}")
    if value is t:
        raise GradError("assigned grad: can't assign a tensor as its own grad")
    if value.device != t.device:
        raise DeviceError(f"assigned grad has data located on {value.device}, different from "
                          f"the tensor's device {t.device}")
    if tuple(value.shape) != tuple(t.shape):
        raise ShapeError(f"assigned grad has shape {tuple(value.shape)}, but the tensor has "
                         f"shape {tuple(t.shape)}; they must match")
    if value.dtype != t.dtype:
        raise DTypeError(f"assigned grad has dtype {value.dtype}, but the tensor has dtype "
                         f"{t.dtype}; they must match")


def _set_all(a, value) -> None:
    a[...] = value


# --- printing ---------------------------------------------------------------------------------
# set_printoptions' choices; None: NumPy's shortest form that tells the values apart
_PRINT_DEFAULTS = {"precision": None, "threshold": 1000, "edgeitems": 3, "linewidth": 75,
                   "sci_mode": None}
_PRINT_PROFILES = {"default": _PRINT_DEFAULTS,
                   "short": {"precision": 2, "threshold": 1000, "edgeitems": 2, "linewidth": 80},
                   "full": {"precision": 4, "threshold": float("inf"), "edgeitems": 3,
                            "linewidth": 80}}
_PRINT = dict(_PRINT_DEFAULTS)


def set_printoptions(precision: int | None = None, threshold: float | None = None,
                     edgeitems: int | None = None, linewidth: int | None = None,
                     profile: str | None = None, sci_mode: bool | None = None) -> None:
    """How tensors print, as ``torch.set_printoptions``: ``precision`` digits after the point
    (fixed, like PyTorch's), more than ``threshold`` elements summarised to ``edgeitems`` at
    each end, lines of ``linewidth``, ``sci_mode`` True/False forcing or forbidding scientific
    notation (None: automatic). ``profile`` ("default", "short", "full") sets them all first;
    the default profile prints as NumPy does (shortest round-tripping digits, 75 columns)."""
    if profile is not None:
        if profile not in _PRINT_PROFILES:
            raise ValueError(f"set_printoptions: profile must be one of "
                             f"{sorted(_PRINT_PROFILES)}, got {profile!r}")
        _PRINT.update(_PRINT_DEFAULTS)
        _PRINT.update(_PRINT_PROFILES[profile])
    for name, value in (("precision", precision), ("threshold", threshold),
                        ("edgeitems", edgeitems), ("linewidth", linewidth)):
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"set_printoptions: {name} must be a non-negative number, got "
                                 f"{value!r}")
            _PRINT[name] = value
    if sci_mode is not None or profile is not None:
        _PRINT["sci_mode"] = sci_mode


def _scientific(finite, digits: int) -> Callable:
    """A formatter writing every float in scientific notation, padded to one width (as
    PyTorch's sci_mode); the widest text comes from the extremes of the finite values."""
    np = B.np

    def text(v) -> str:
        return np.format_float_scientific(v, precision=digits, unique=False)

    probes = [np.nan, -np.inf] if finite.size == 0 else [finite.min(), finite.max()]
    nonzero = np.abs(finite[finite != 0])
    if nonzero.size:
        probes += [nonzero.min() * (-1 if (finite < 0).any() else 1)]
    width = max(len(text(v)) for v in probes)
    return lambda v: text(v).rjust(width)


def _format(a) -> str:
    """The text of host array ``a`` inside ``tensor(...)``, under :func:`set_printoptions`."""
    np = B.np
    if a.dtype == B.bfloat16:  # printed as the float32 values it holds (exactly)
        a = a.astype(float32)
    p, sci = _PRINT["precision"], _PRINT["sci_mode"]
    opts = {"threshold": _PRINT["threshold"], "edgeitems": _PRINT["edgeitems"],
            "max_line_width": _PRINT["linewidth"], "separator": ", ", "prefix": "tensor("}
    if a.dtype.kind == "f":
        finite = a[np.isfinite(a)]
        integral = finite.size == 0 or bool((finite == np.round(finite)).all())
        if p is not None:
            opts["precision"] = p
            opts["floatmode"] = "maxprec" if integral and sci is not True else "fixed"
        if sci is False:
            opts["suppress_small"] = True
        elif sci is True:
            opts["formatter"] = {"float_kind": _scientific(finite, 4 if p is None else p)}
    if opts["threshold"] == float("inf"):
        opts["threshold"] = a.size + 1
    return np.array2string(a, **opts)


# --- creation -------------------------------------------------------------------------------
def _default_complex():
    """PyTorch's default complex dtype: complex64 beside float32, complex128 beside float64."""
    return B.np.result_type(B.DEFAULT_FLOAT, B.np.complex64)


def _real_item(t, op: str):
    """``t.item()`` for float() and int(): a complex value's real part when its imaginary part
    is 0, else PyTorch's refusal."""
    v = t.item()
    if isinstance(v, complex):
        if v.imag != 0:
            raise ValueError(f"{op}() of a complex tensor with a nonzero imaginary part ({v})")
        return v.real
    return v


_PY_KINDS = {bool: "b", int: "i", float: "f", complex: "c"}


class _Leaves:
    """What nested lists and tuples hold (:func:`_scan`): the kinds of their Python numbers
    ("b", "i", "f", "c"), the dtypes of their NumPy scalars, arrays and tensors, whether a
    tensor is among them and whether anything else is (None, a string)."""

    __slots__ = ("kinds", "typed", "tensor", "other")

    def __init__(self):
        self.kinds: set = set()
        self.typed: set = set()
        self.tensor = self.other = False


def _scan(data, out: _Leaves) -> _Leaves:
    """One pass over ``data``'s leaves (a flat list of Python numbers at C speed)."""
    types = set(map(type, data))
    for t in types:
        k = _PY_KINDS.get(t)
        if k is not None:
            out.kinds.add(k)
    if types.issubset(_PY_KINDS):
        return out
    for d in data:
        if type(d) in _PY_KINDS:
            continue
        if isinstance(d, list | tuple):
            _scan(d, out)
        elif isinstance(d, Tensor):
            out.tensor = True
            out.typed.add(d.dtype)
        elif isinstance(d, B.generic) or B.is_array(d):
            out.typed.add(d.dtype)
        elif isinstance(d, bool | int | float | complex):  # subclasses of Python numbers
            out.kinds.add(_PY_KINDS[bool if isinstance(d, bool) else int if isinstance(d, int)
                                    else float if isinstance(d, float) else complex])
        else:
            out.other = True
    return out


def _untensor(data):
    """Nested lists and tuples with their tensors replaced by host arrays (NumPy would read a
    complex 0-d tensor through float())."""
    if isinstance(data, Tensor):
        if getattr(data, "level", None) is not None:
            return data  # a vmap tracer: _infer's own error
        d = data._data
        return d if type(d) is B.ndarray else B.backend_of(d).to_host(d)
    if isinstance(data, list | tuple):
        return [_untensor(d) for d in data]
    return data


def _list_dtype(leaves: _Leaves):
    """PyTorch's dtype for a list's leaves: each NumPy scalar, array or tensor with its own
    dtype, a Python bool, int, float or complex number with bool, int64, the default float or
    the default complex, promoted together (``[np.float16(1.5), 2]`` is float16,
    ``[np.complex64(1j), 1.0]`` complex64, a list of float64 tensors float64); None where no
    typed leaf is among them or one has a dtype PyTorch lacks (NumPy's inference stands)."""
    if not leaves.typed:
        return None
    defaults = {"b": bool_, "i": int64, "f": B.DEFAULT_FLOAT, "c": _default_complex()}
    out = None
    try:
        for dt in leaves.typed | {defaults[k] for k in leaves.kinds}:
            out = dt if out is None else torch_promote_types(out, dt)
    except TypeError:
        return None
    return out


def _wide_ints(data, kinds: set):
    """``data`` holding an int beyond int64 (NumPy inferred object, or float64 from mixing
    int64 with uint64) as PyTorch reads it: a float or complex tensor where a float or complex
    number is among them, else the overflow PyTorch raises."""
    if "c" in kinds:
        return B.np.asarray(data, dtype=B.np.complex128)
    if "f" in kinds:
        return B.np.asarray(data, dtype=float64)
    raise OverflowError("tensor: a Python int beyond int64's range (-2**63 to 2**63 - 1), "
                        "PyTorch's integer; pass dtype= a float dtype to keep it")


def _infer(data, dtype, backend: B.Backend):
    """Array for ``data``: Python floats become float32, arrays keep their dtype."""
    dtype = B.as_dtype(dtype)
    if isinstance(data, Tensor):
        if getattr(data, "level", None) is not None:  # a vmap tracer: its array is poison
            raise TypeError("tensor: inside vmap a batched tensor cannot be copied into a new "
                            "tensor; use x.clone() (or x.detach()) instead")
        data = data._data
    if B.is_array(data):
        if data.dtype.kind in "OUSMmV" and data.dtype != B.bfloat16:
            raise DTypeError(f"tensor: cannot make a tensor from an array of dtype {data.dtype} "
                             "(numbers only: bool, integers, floats)")
        src = B.backend_of(data)
        if src is not backend:
            data = src.to_host(data)
        if dtype == bfloat16:  # rounded as PyTorch rounds float64 (B.cast)
            data = B.cast(data, dtype)
        return backend.asarray(data, dtype=dtype).copy()
    if hasattr(data, "__dlpack__") and not isinstance(data, list | tuple):
        return backend.asarray(from_dlpack(data).numpy(), dtype=dtype).copy()
    leaves = _scan(data, _Leaves()) if isinstance(data, list | tuple) else None
    if leaves is not None and leaves.tensor:
        data = _untensor(data)
    if dtype == bfloat16:  # Python floats are float64 first, rounded as PyTorch's (B.cast)
        a = B.np.asarray(data)
        if a.dtype.kind == "c":
            raise TypeError("tensor: complex values cannot be converted to bfloat16")
        a = B.cast(a, dtype)
    else:
        a = B.np.asarray(data) if dtype is None else B.np.asarray(data, dtype=dtype)
    if dtype is None and leaves is not None:
        if not leaves.typed and not leaves.other and "i" in leaves.kinds and (
                a.dtype.kind == "O" or (a.dtype == float64 and leaves.kinds <= {"i", "b"})):
            a = _wide_ints(data, leaves.kinds)  # an int beyond int64
        typed = _list_dtype(leaves)
        if typed is not None:
            return backend.asarray(a if typed == a.dtype else B.cast(a, typed))
    if dtype is None and a.dtype == float64 and not isinstance(data, B.generic):
        a = a.astype(B.DEFAULT_FLOAT)  # Python floats: the default float (a NumPy float64
        # scalar, alone or in a list, keeps its dtype, as PyTorch)
    if dtype is None and a.dtype.kind == "c" and not isinstance(data, B.generic):
        a = a.astype(_default_complex())  # Python complex numbers: the default complex dtype
    if dtype is None and a.dtype == B.np.uint64 and not isinstance(data, B.generic):
        raise OverflowError("tensor: a Python int of 2**63 or more does not fit int64, "
                            "PyTorch's integer (pass dtype= for another)")
    if a.dtype.kind in "OUS":
        raise DTypeError(f"tensor: cannot make a tensor from {type(data).__name__} data "
                         f"(NumPy infers dtype {a.dtype})")
    return backend.asarray(a)


def _finish(data, requires_grad: bool) -> Tensor:
    if requires_grad and not B.is_inexact(data.dtype):
        raise GradError(f"only floating and complex tensors can require grad, got dtype "
                        f"{data.dtype}")
    t = Tensor._of(data, None, bool(requires_grad))
    if modes().anomaly:
        note_creation(t)  # so an anomaly error can say where this tensor came from
    return t


# --- the default device of factories -------------------------------------------------------------
_DEFAULT_DEVICE = ["cpu"]  # set_default_device's, for every thread


def set_default_device(device) -> None:
    """Put tensors that factories make without ``device=`` (``tensor``, ``zeros``, ``arange``,
    ``randn``, a new layer's parameters, ...) on ``device``, in every thread; None or "cpu"
    for the CPU again. PyTorch's ``torch.set_default_device``. Functions given a tensor
    (``zeros_like``, ``.to()``) keep following it."""
    _DEFAULT_DEVICE[0] = B.get_backend(device).name  # an unknown or absent device raises here


def get_default_device() -> str:
    """This thread's device for factories (a :class:`default_device` block's, else
    :func:`set_default_device`'s)."""
    return modes().device or _DEFAULT_DEVICE[0]


class default_device:
    """``with ng.default_device("cuda"): model = nn.Linear(3, 4)``: inside the block this
    thread's factories make their tensors on ``device`` (as ``with torch.device("cuda"):``);
    blocks nest, and another thread keeps its own default."""

    def __init__(self, device):
        self.name = B.get_backend(device).name

    def __enter__(self) -> default_device:
        m = modes()
        self.prev, m.device = m.device, self.name
        return self

    def __exit__(self, *exc) -> None:
        modes().device = self.prev


def _device(device):
    """``device``, or the default device where it is None."""
    return device if device is not None else get_default_device()


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new leaf tensor holding a copy of ``data``.

    Python floats become float32 (the default), Python ints int64; NumPy arrays keep their
    dtype unless ``dtype`` is given. ``device`` is ``'cpu'``, ``'cuda'`` or ``'cuda:N'``
    (default: :func:`get_default_device`).
    """
    be = B.get_backend(_device(device))
    return _finish(_infer(data, dtype, be), requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like :func:`tensor`, but shares memory with an array already of that dtype and device."""
    if isinstance(data, Tensor):  # as PyTorch: the tensor itself, or data.to(dtype, device)
        if dtype is None and device is None:
            return data
        return data.to(device=device, dtype=dtype)
    be = B.get_backend(_device(device))
    if B.is_array(data) and B.backend_of(data) is be:
        return Tensor._of(data if dtype is None else data.astype(dtype, copy=False))
    return _finish(_infer(data, dtype, be), False)


def from_numpy(a) -> Tensor:
    """A tensor sharing memory with the NumPy array ``a``."""
    if not isinstance(a, B.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(a).__name__}")
    dt = a.dtype
    if dt != bfloat16 and (dt.kind not in "biufc" or dt.itemsize > 16 or (
            dt.kind == "f" and dt.itemsize > 8)):
        raise TypeError(f"from_numpy: cannot share an array of dtype {dt} (bool, integers, "
                        "floats and complex numbers only)")
    if not dt.isnative:
        raise ValueError(f"from_numpy: the array's byte order ({dt.str}) is not this machine's; "
                         "convert it first with a.astype(a.dtype.newbyteorder('='))")
    return Tensor._of(a)


def from_dlpack(obj) -> Tensor:
    """A tensor sharing memory with any DLPack producer (PyTorch, JAX, CuPy, NumPy)."""
    if isinstance(obj, Tensor):  # its own tensor (a vmap tracer included): the same memory
        return obj
    be = B.dlpack_backend(obj)
    return Tensor._of(be.from_dlpack(obj))


def _shape_arg(shape) -> tuple:
    """Sizes given one by one or as one sequence, as a tuple of ints (a float is refused, not
    truncated: PyTorch's sizes are ints)."""
    if len(shape) == 1 and isinstance(shape[0], list | tuple):
        shape = shape[0]
    out = []
    for s in shape:
        try:
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(f"a size must be an int, got {type(s).__name__} {s!r} in shape "
                            f"{tuple(shape)}") from None
    return tuple(out)


def _sized(op: str, shape: tuple, size) -> tuple:
    """The shape from positional sizes or PyTorch's ``size=`` keyword (one of the two)."""
    if size is None:
        return shape
    if shape:
        raise TypeError(f"{op}: give the shape positionally or as size=, not both")
    return (size,) if isinstance(size, int) else (tuple(size),)


def _numpy_form(op: str, shape: tuple, dtype) -> tuple:
    """NumPy's and JAX's ``zeros(shape, dtype)`` (a sequence of sizes, then the dtype
    positionally) as ``(shape, dtype)``; PyTorch's sizes one by one pass through unchanged."""
    if len(shape) == 2 and isinstance(shape[0], list | tuple) and isinstance(
            shape[1], B.np.dtype | type | str):
        if dtype is not None:
            raise TypeError(f"{op}: dtype given twice ({shape[1]!r} and dtype={dtype!r})")
        return (shape[0],), shape[1]
    return shape, dtype


def _filled(op: str, fill: Callable, shape, dtype, device, requires_grad) -> Tensor:
    shape, dtype = _numpy_form(op, shape, dtype)
    be = B.get_backend(_device(device))
    dtype = B.DEFAULT_FLOAT if dtype is None else B.as_dtype(dtype)
    shape = _shape_arg(shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"{op}: sizes must be non-negative, got shape {shape}")
    with be.scope():
        return _finish(fill(be.xp, shape, dtype), requires_grad)


def zeros(*shape, dtype=None, device=None, requires_grad: bool = False, size=None) -> Tensor:
    return _filled("zeros", lambda xp, s, d: xp.zeros(s, d), _sized("zeros", shape, size), dtype,
                   device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad: bool = False, size=None) -> Tensor:
    return _filled("ones", lambda xp, s, d: xp.ones(s, d), _sized("ones", shape, size), dtype,
                   device, requires_grad)


def empty(*shape, dtype=None, device=None, requires_grad: bool = False, size=None) -> Tensor:
    return _filled("empty", lambda xp, s, d: xp.empty(s, d), _sized("empty", shape, size), dtype,
                   device, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``shape`` filled with ``fill_value``; its dtype, as PyTorch's, from the
    value: bool, int64 for an int, the default float for a float, the default complex for a
    complex (a one-element tensor or NumPy scalar counts as its Python number)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if isinstance(fill_value, Tensor | B.generic):
        fill_value = range_scalar("full", fill_value)
    if dtype is None and isinstance(fill_value, bool):
        dtype = bool_
    elif dtype is None and isinstance(fill_value, int):
        dtype = int64
    elif dtype is None and isinstance(fill_value, complex):
        dtype = _default_complex()
    fill_value = check_fill_fits("full", fill_value,
                                 dtype if dtype is not None else B.DEFAULT_FLOAT)
    if isinstance(fill_value, float) and dtype is not None and B.as_dtype(dtype) == bfloat16:
        fill_value = B.np.float32(fill_value)  # rounded as PyTorch's fill (B.cast)
    return _filled("full", lambda xp, s, d: xp.full(s, fill_value, d), (shape,), dtype, device,
                   requires_grad)


def _like(x: Tensor, dtype, device):
    return (x.dtype if dtype is None else dtype), (x.device if device is None else device)


def _batched_as(x, out: Tensor) -> Tensor:
    """``out`` made like ``x``: inside vmap, batched as ``x`` is when ``x`` is batched
    (torch.func's ``*_like``), so it may then take batched values in place."""
    lift = getattr(type(x), "lift_like", None)  # BatchTracer's (nodegrad.batching)
    return out if lift is None else lift(x, out)


class MemoryFormat:
    """A memory layout request, PyTorch's ``torch.memory_format``: nodegrad's arrays are
    C-contiguous, so every format gives the same values and these are accepted, not acted on."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"nodegrad.{self.name}"


contiguous_format = MemoryFormat("contiguous_format")
preserve_format = MemoryFormat("preserve_format")
channels_last = MemoryFormat("channels_last")
channels_last_3d = MemoryFormat("channels_last_3d")
legacy_contiguous_format = MemoryFormat("legacy_contiguous_format")  # in F.gumbel_softmax's code
_MEMORY_FORMATS = ("contiguous_format", "preserve_format", "channels_last", "channels_last_3d",
                   "legacy_contiguous_format")


def _constant_name(v) -> str:
    """The name of a layout or memory-format constant: nodegrad's (``.name``) or PyTorch's
    (``torch.<name>``); "" for anything else (strings included, as PyTorch)."""
    if isinstance(v, str):
        return ""
    name = getattr(v, "name", None)
    if isinstance(name, str):
        return name
    text = str(v)
    return text.removeprefix("torch.") if text.startswith("torch.") else ""


def check_layout(op: str, layout=None, memory_format=None) -> None:
    """PyTorch's ``layout=`` and ``memory_format=`` creation arguments: nodegrad's arrays are
    dense and C-ordered, so ``strided`` and the memory formats (nodegrad's or PyTorch's
    constants, e.g. ``torch.preserve_format``) are accepted and change nothing; anything else
    is refused."""
    if layout is not None and _constant_name(layout) != "strided":
        raise TypeError(f"{op}: layout must be nodegrad.strided (nodegrad's tensors are "
                        f"dense), got {layout!r}")
    if memory_format is not None and _constant_name(memory_format) not in _MEMORY_FORMATS:
        raise TypeError(f"{op}: memory_format must be one of "
                        f"{', '.join('nodegrad.' + n for n in _MEMORY_FORMATS)}, "
                        f"got {memory_format!r}")


def zeros_like(x: Tensor, dtype=None, device=None, requires_grad: bool = False, *,
               layout=None, memory_format=None) -> Tensor:
    """Zeros shaped like ``x``, in its dtype and on its device unless given."""
    if layout is not None or memory_format is not None:
        check_layout("zeros_like", layout, memory_format)
    d, dev = _like(x, dtype, device)
    return _batched_as(x, zeros(x.shape, dtype=d, device=dev, requires_grad=requires_grad))


def ones_like(x: Tensor, dtype=None, device=None, requires_grad: bool = False, *,
              layout=None, memory_format=None) -> Tensor:
    """Ones shaped like ``x``, in its dtype and on its device unless given."""
    if layout is not None or memory_format is not None:
        check_layout("ones_like", layout, memory_format)
    d, dev = _like(x, dtype, device)
    return _batched_as(x, ones(x.shape, dtype=d, device=dev, requires_grad=requires_grad))


def full_like(x: Tensor, fill_value, dtype=None, device=None,
              requires_grad: bool = False, *, layout=None, memory_format=None) -> Tensor:
    """``fill_value`` shaped like ``x``, in its dtype and on its device unless given."""
    if layout is not None or memory_format is not None:
        check_layout("full_like", layout, memory_format)
    d, dev = _like(x, dtype, device)
    out = full(x.shape, fill_value, dtype=d, device=dev, requires_grad=requires_grad)
    return _batched_as(x, out)


def empty_like(x: Tensor, dtype=None, device=None, requires_grad: bool = False, *,
               layout=None, memory_format=None) -> Tensor:
    """An uninitialised tensor shaped like ``x``, in its dtype and on its device unless
    given."""
    if layout is not None or memory_format is not None:
        check_layout("empty_like", layout, memory_format)
    d, dev = _like(x, dtype, device)
    return _batched_as(x, empty(x.shape, dtype=d, device=dev, requires_grad=requires_grad))


def write_out(op: str, out, result: Tensor, *, differentiable: bool = False) -> Tensor:
    """PyTorch's ``out=``: ``result`` written into the tensor ``out``, which is returned.

    ``out`` must have the result's dtype and device, and its shape (an empty ``out`` is
    resized, as PyTorch does without a warning). A leaf ``out`` that requires grad is refused
    while recording. ``differentiable`` ops (those whose PyTorch form copies into ``out``, such
    as ``tensordot``) leave ``out`` in the graph, as ``out.copy_(result)``; the others refuse,
    as PyTorch's, when an argument requires grad while recording."""
    if not isinstance(out, Tensor):
        raise TypeError(f"{op}: out must be a Tensor, got {type(out).__name__}")
    if out.dtype != result.dtype:
        raise DTypeError(f"{op}: expected out of dtype {result.dtype} (the result's), got "
                         f"{out.dtype}")
    if out.backend is not result.backend:
        raise DeviceError(f"{op}: expected out on {result.device} (the result's device), got "
                          f"{out.device}")
    recording = modes().grad_enabled
    if recording and out.requires_grad and out.node is None:
        raise GradError(f"{op}: out is a leaf tensor that requires grad; it cannot be written "
                        "in place while recording (use nodegrad.no_grad() or drop out=)")
    if recording and not differentiable and (result.requires_grad or out.requires_grad):
        raise GradError(f"{op}: functions with out= do not support automatic differentiation, "
                        "but an argument requires grad; call it without out= (or under "
                        "nodegrad.no_grad())")
    if out.shape != result.shape:
        if out._data.size:
            raise ShapeError(f"{op}: out has shape {tuple(out.shape)} but the result has shape "
                             f"{tuple(result.shape)}; pass an out of that shape (or an empty "
                             "one, which is resized)")
        out._bump()
        out._data = B.backend_of(out._data).xp.empty(result.shape, out.dtype)
    if differentiable:
        return out.copy_(result)
    return out._assign(op, result)


def write_results(op: str, out, result):
    """``out=`` for any op: :func:`write_out` for one result, or each of a tuple of results
    (``max(x, dim)``, ``sort``, ``frexp``) into the matching tensor of a tuple or list ``out``;
    the result's own type (a named tuple stays one) holding the ``out`` tensors."""
    if isinstance(result, Tensor):
        if isinstance(out, tuple | list) and len(out) == 1:
            out = out[0]  # NumPy's one-element tuple
        return write_out(op, out, result)
    if isinstance(result, tuple) and result and all(isinstance(r, Tensor) for r in result):
        if not isinstance(out, tuple | list) or len(out) != len(result):
            got = f"{len(out)} tensors" if isinstance(out, tuple | list) else type(out).__name__
            raise TypeError(f"{op}: out must be a tuple of {len(result)} tensors (one per "
                            f"result), got {got}")
        done = [write_out(op, o, r) for o, r in zip(out, result)]
        return type(result)(*done) if hasattr(result, "_fields") else tuple(done)
    raise TypeError(f"{op}: out= is not supported here: the result is a "
                    f"{type(result).__name__}, not tensors")


# PyTorch's factories given ``out=`` and no dtype (device) make their values in out's
_FACTORIES = frozenset("empty eye full linspace logspace ones rand randint randn randperm "
                       "zeros".split())


def _factory_out(op: str, out: Tensor, result: Tensor) -> Tensor:
    """A factory's result written into ``out``, which then no longer requires grad, as
    PyTorch's (``arange(1, n + 1, out=param)`` under no_grad leaves ``param`` frozen: code
    that means to train it calls ``param.requires_grad_()`` after)."""
    write_out(op, out, result)
    out.requires_grad = False
    return out


def with_out(fn: Callable, name: str | None = None) -> Callable:
    """``fn`` taking PyTorch's and NumPy's ``out=`` keyword: the result is computed as without
    it, then written into ``out`` (:func:`write_results`), which is returned. A factory
    (``zeros``, ``linspace``, ...) without ``dtype=``/``device=`` takes out's, as PyTorch's."""
    op = name or fn.__name__
    factory = op in _FACTORIES

    def call(*args, out=None, **kwargs):
        if factory and isinstance(out, Tensor):
            if kwargs.get("dtype") is None:
                kwargs["dtype"] = out.dtype
            if kwargs.get("device") is None:
                kwargs["device"] = out.device
        result = fn(*args, **kwargs)
        if factory and isinstance(out, Tensor):
            return _factory_out(op, out, result)
        return result if out is None else write_results(op, out, result)

    call.__name__ = call.__qualname__ = op.rsplit(".", 1)[-1]  # the public name
    call.__doc__ = fn.__doc__
    call.__module__, call.__wrapped__ = fn.__module__, fn
    return call


def take_out(namespace: dict, names: str, prefix: str = "") -> None:
    """Give the functions ``names`` of a module's ``namespace`` the ``out=`` keyword
    (:func:`with_out`; errors name them ``prefix + name``)."""
    for n in names.split():
        namespace[n] = with_out(namespace[n], prefix + n)


def range_scalar(op: str, v, complex_ok: bool = False):
    """A Python number from a number, a NumPy scalar or a one-element tensor (read eagerly);
    complex numbers where ``complex_ok`` (linspace's and logspace's ends)."""
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ShapeError(f"{op}: expects a number or a one-element tensor, got a tensor "
                             f"of shape {tuple(v.shape)}")
        v = v.item()
    elif isinstance(v, B.generic):
        v = v.item()
    if not isinstance(v, int | float) and not (complex_ok and isinstance(v, complex)):
        raise TypeError(f"{op}: expects a real number, got {type(v).__name__}")
    return v


def range_dtype(op: str, ends: tuple, dtype):
    """linspace's and logspace's dtype: ``dtype``, else the default complex for a complex end
    and the default float otherwise; a complex end with a real dtype raises, as PyTorch's."""
    cplx = any(isinstance(v, complex) for v in ends)
    dt = B.as_dtype(dtype) or (_default_complex() if cplx else B.DEFAULT_FLOAT)
    if cplx and dt.kind != "c":
        raise TypeError(f"{op}: complex ends {ends} cannot be cast to {dt}")
    return dt


def _arange_values(start, stop, step, dt):
    """PyTorch's arange on the host: the bounds cast to the accumulation type (int64 for
    integer dtypes, float32 for half types, else float64), the length ceil((stop - start) /
    step) in double (int64: integer arithmetic on the cast bounds), and the values
    start + i * step in the accumulation type, cast to ``dt`` at the end."""
    np_ = B.np
    dt = np_.dtype(dt)
    acc = np_.int64 if dt.kind in "iub" else np_.float32 if dt.itemsize <= 2 else np_.float64
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ValueError(f"arange: the range must be finite, got {start} -> {stop} by {step}")
    xstart, xstop, xstep = (acc(int(v) if acc is np_.int64 else v) for v in (start, stop, step))
    if xstep == 0:
        what = "" if step == 0 else f" (it truncates to 0 in the integer dtype {dt})"
        raise ValueError(f"arange: step must be nonzero, got {step}{what}")
    if not ((xstep > 0 and xstop >= xstart) or (xstep < 0 and xstop <= xstart)):
        raise ValueError(f"arange: the bounds {start} -> {stop} are inconsistent with the sign "
                         f"of step {step} (PyTorch refuses an empty range of the wrong sign)")
    if dt == int64:
        sgn = 1 if xstep > 0 else -1  # the bounds agree with it: both sides have its sign
        size = abs(int(xstop) - int(xstart) + int(xstep) - sgn) // abs(int(xstep))
    else:
        size = math.ceil((float(stop) - float(start)) / float(step))
    values = xstart + xstep * np_.arange(max(size, 0), dtype=acc)
    return values.astype(dt)


def arange(start=None, stop=None, step=1, dtype=None, device=None,
           requires_grad: bool = False, *, end=None, out=None, layout=None) -> Tensor:
    """Evenly spaced values in [start, stop), as PyTorch computes them: int64 for integer
    arguments (one-element tensors and NumPy scalars count as their numbers), else the default
    float dtype; a zero step, an infinite bound or bounds against the step's sign are errors.
    ``end=`` is PyTorch's name for stop (``arange(end=3)``), ``out`` receives the result (its
    dtype is the result's when ``dtype`` is not given)."""
    if end is not None:
        if stop is not None:
            raise TypeError("arange: give stop or PyTorch's end=, not both")
        stop = end
        if start is None:
            start = 0
    if start is None:
        raise TypeError("arange: missing the end of the range")
    if stop is None:
        start, stop = 0, start
    if layout is not None:
        check_layout("arange", layout)
    start, stop, step = (range_scalar("arange", v) for v in (start, stop, step))
    if dtype is None and isinstance(out, Tensor):  # PyTorch's: out's dtype and device
        dtype = out.dtype
        device = out.device if device is None else device
    if dtype is None:
        ints = all(isinstance(v, int) for v in (start, stop, step))
        dtype = int64 if ints else B.DEFAULT_FLOAT
    dt = B.as_dtype(dtype)
    be = B.get_backend(_device(device))
    with be.scope():
        a = be.xp.asarray(_arange_values(start, stop, step, dt), dtype=dt)
    r = _finish(a, requires_grad) if requires_grad else Tensor._of(a)
    return r if out is None else _factory_out("arange", out, r)


def torch_range(start=0, end=None, step=1, *, dtype=None, device=None,
                requires_grad: bool = False) -> Tensor:
    """PyTorch's deprecated ``torch.range``: ``start, start + step, ...`` up to and including
    ``end``, in the default float dtype whatever the arguments (``dtype=`` chooses), with
    PyTorch's warning; :func:`arange` excludes the end. Not in ``from nodegrad import *``,
    which leaves Python's ``range`` alone."""
    import warnings

    if end is None:
        raise TypeError("range: missing the end (torch.range(start, end, step) includes it)")
    start, end, step = (range_scalar("range", v) for v in (start, end, step))
    if step == 0:
        raise ValueError("range: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"range: the bounds {start} and {end} are inconsistent with the step "
                         f"sign of {step}")
    warnings.warn("torch.range is deprecated and will be removed in a future release because "
                  "its behavior is inconsistent with Python's range builtin. Instead, use "
                  "torch.arange, which produces values in [start, end).", UserWarning,
                  stacklevel=2)
    n = math.floor((end - start) / step) + 1
    dt = B.as_dtype(B.DEFAULT_FLOAT if dtype is None else dtype)
    be = B.get_backend(_device(device))
    with be.scope():
        a = be.xp.asarray(B.np.asarray(start + B.np.arange(n) * float(step)).astype(dt))
    return _finish(a, requires_grad) if requires_grad else Tensor._of(a)


def _linspace_values(start, stop, steps: int, dt):
    """PyTorch's linspace on the host: integer dtypes truncate the ends first and step in
    double; float dtypes step in their own precision. Below halfway from the start, above it
    back from the end (so both ends are exact), each value one fused multiply-add (for float32,
    float64 and integers), as PyTorch's kernel."""
    np_ = B.np
    dt = np_.dtype(dt)
    k = np_.arange(steps)
    if dt.kind in "iub":
        s, e = float(int(start)), float(int(stop))
        ct = np_.float64
    else:
        ct = dt.type if dt.kind == "f" else np_.result_type(dt, np_.float64).type
        s, e = ct(start), ct(stop)
    if steps == 1:
        return np_.full(1, s).astype(dt)
    step = (ct(e) - ct(s)) / ct(max(steps - 1, 1))
    kk = k.astype(ct)
    with np_.errstate(over="ignore", invalid="ignore"):
        if dt.kind in "iub" or (dt.kind == "f" and dt.itemsize >= 4):  # fused multiply-adds
            low, high = k < steps // 2, ct(steps - 1) - kk
            v = np_.where(low, _fma(step, kk, s), _fma(-step, high, e))
        else:
            v = np_.where(k < steps // 2, ct(s) + step * kk, ct(e) - step * (ct(steps - 1) - kk))
    return v.astype(dt)


def _fma(a, b, c):
    """a * b + c rounded once, elementwise (float32 in float64, where the product is exact;
    float64 by Dekker's exact product and a compensated sum, off by an ulp in rare cases)."""
    np_ = B.np
    if np_.dtype(type(c)).itemsize < 8:
        return np_.float64(a) * b.astype(np_.float64) + np_.float64(c)
    a, b, c = np_.float64(a), b.astype(np_.float64), np_.float64(c)
    p = a * b

    def split(x):  # x = hi + lo, each with at most 26 significant bits
        t = 134217729.0 * x
        hi = t - (t - x)
        return hi, x - hi

    (ah, al), (bh, bl) = split(a), split(b)
    err = ((ah * bh - p) + ah * bl + al * bh) + al * bl  # p + err = a * b exactly
    s = p + c
    bb = s - p
    low = (p - (s - bb)) + (c - bb)  # s + low = p + c exactly
    out = s + (low + err)
    return np_.where(np_.isfinite(out), out, p + c)


def linspace(start, stop=None, num: int | None = None, dtype=None, device=None,
             requires_grad: bool = False, *, end=None, steps: int | None = None,
             endpoint: bool = True) -> Tensor:
    """``num`` (PyTorch's ``steps``; NumPy's default 50) evenly spaced values from ``start``
    to ``stop`` (PyTorch's ``end=``), both included (``stop`` left out with NumPy's
    ``endpoint=False``), computed as PyTorch computes them; the default float dtype unless
    ``dtype`` is given."""
    if end is not None:
        if stop is not None:
            raise TypeError("linspace: give stop or PyTorch's end=, not both")
        stop = end
    if stop is None:
        raise TypeError("linspace: missing the end of the range")
    if steps is not None:
        if num is not None:
            raise TypeError("linspace: give num or PyTorch's steps=, not both")
        num = steps
    num = 50 if num is None else num
    if isinstance(num, bool) or not isinstance(num, int | B.np.integer):
        raise TypeError(f"linspace: the number of steps must be an int, got {type(num).__name__}")
    if num < 0:
        raise ValueError(f"linspace: number of steps must be non-negative, got {num}")
    start, stop = (range_scalar("linspace", v, True) for v in (start, stop))
    dt = range_dtype("linspace", (start, stop), dtype)
    be = B.get_backend(_device(device))
    if not isinstance(endpoint, bool):
        raise TypeError(f"linspace: endpoint must be a bool, got {type(endpoint).__name__}")
    n = int(num) if endpoint or not num else int(num) + 1  # without the end: one more, cut
    with be.scope():
        a = be.xp.asarray(_linspace_values(start, stop, n, dt), dtype=dt)[:int(num)]
    return _finish(a, requires_grad) if requires_grad else Tensor._of(a)


def eye(n: int, m: int | None = None, dtype=None, device=None,
        requires_grad: bool = False, *, k: int = 0) -> Tensor:
    """The ``n`` x ``m`` identity; ``k`` (NumPy's and JAX's) puts the ones on the k-th
    diagonal (above the main one for k > 0)."""
    n, m = _shape_arg((n, n if m is None else m))
    if n < 0 or m < 0:
        raise ValueError(f"eye: n and m must be non-negative, got n={n}, m={m}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"eye: k must be an int, got {type(k).__name__}")
    be = B.get_backend(_device(device))
    with be.scope():
        a = be.xp.eye(n, m, k, dtype=B.as_dtype(dtype) or B.DEFAULT_FLOAT)
    return _finish(a, requires_grad) if requires_grad else Tensor._of(a)
