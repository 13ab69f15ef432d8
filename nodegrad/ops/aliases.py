"""PyTorch's other names for existing ops, the in-place ``*_`` forms and tensor metadata.

Imported last by :mod:`nodegrad.ops`, so the in-place forms cover every family's methods.

Aliases (``ng.arccos``, ``x.multiply``, ``ng.sub(x, y, alpha=2)``, ...) are the existing ops
under PyTorch's names; a name another family or :mod:`nodegrad.ops` already defines is left to
it. One name means two things: ``ng.equal`` stays NumPy's elementwise ``x == y`` (PyTorch's
``torch.eq``), while the method ``x.equal(y)`` is PyTorch's ``Tensor.equal``, one Python bool
(same shape and values).

An in-place form ``x.op_(...)`` computes ``x.op(...)`` and stores it in ``x``, as PyTorch's:

* while a graph is being recorded (grad mode on and ``x`` or an operand requires grad), the
  out-of-place result is recorded and ``x`` is rebound to it; when ``x`` is a view, its base
  takes the change too (:func:`.index.write_through`), and views of ``x``'s old array become
  views of the new one (:func:`.index.refresh_views`); its own version counter moves on, so a
  backward that saved the old value refuses (a counter shared with views stays: their arrays
  are unchanged), and a leaf that requires grad refuses at once;
* otherwise the result is written into ``x``'s array; it must have ``x``'s shape (an operand
  cannot grow ``x`` by broadcasting: ShapeError) and a dtype ``x`` can hold (an int tensor's
  ``sqrt_`` is a DTypeError, as PyTorch's "result type Float can't be cast to Long"); under
  :func:`nodegrad.jit` the write is recorded so each replay writes in place too.

The metadata forms (``t_``, ``transpose_``, ``squeeze_``, ``unsqueeze_``, ``swapaxes_``,
``swapdims_``) rebind ``x`` to the reshaped value instead of writing.
"""

from __future__ import annotations

import builtins
import math
import mmap
import sys
import weakref
from collections import namedtuple
from collections.abc import Callable
from functools import partial

from .. import _backend as B
from .. import autodiff as _autodiff
from .. import random as _random
from ..autodiff import RemovableHandle, creation_site, modes
from ..batching import BatchTracer, rebind_batched, recording, refuse_batched_into
from ..dtypes import can_store
from ..errors import DeviceError, DTypeError, GradError, ShapeError
from ..tensor import (Size, Tensor, _batched_as, _is_size, _shape_arg, check_fill_value,
                      from_dlpack, full, get_default_device, tensor)
from . import arrange as _arrange
from . import elementwise as E
from . import index as I
from . import products as _products
from . import reduce as _reduce
from . import shape as S
from . import slicing as _slicing
from . import special as _special
from .complex import (adjoint, angle, conj, conj_physical, imag, is_conj, is_neg, real,
                      resolve_conj, resolve_neg, view_as_complex, view_as_real)
from .methods import fits_memory_format, inplace_source as _alias, register, scaled

_Number = int | float | bool


# === aliases: functions =========================================================================
def sub(input, other, *, alpha=1) -> Tensor:
    """PyTorch's sub: ``input - alpha * other``."""
    return E.subtract(input, _scaled("sub", input, other, alpha))


def rsub(input, other, *, alpha=1) -> Tensor:
    """PyTorch's rsub: ``other - alpha * input`` (sub with the operands swapped)."""
    return E.subtract(other, _scaled("rsub", other, input, alpha))


def _scaled(op: str, base, x, alpha):
    return x if alpha == 1 else scaled(op, base, x, alpha)


def clamp(input, min=None, max=None) -> Tensor:  # noqa: A002  (PyTorch's names)
    """PyTorch's clamp: ``input`` limited to [min, max]; at least one bound is required."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min or max must not be None")
    return E.clip(input, min, max)


def clip(input, min=None, max=None, *, a_min=None, a_max=None) -> Tensor:  # noqa: A002
    """``input`` limited to [min, max], either bound None for none: PyTorch's and JAX's
    ``min=``/``max=`` names and NumPy's ``a_min``/``a_max`` (positional bounds as all three)."""
    if a_min is not None or a_max is not None:
        if min is not None or max is not None:
            raise TypeError("clip: pass min/max (PyTorch, JAX) or a_min/a_max (NumPy), not both")
        min, max = a_min, a_max  # noqa: A001
    return E.clip(input, min, max)


def concat(tensors, dim: int = 0) -> Tensor:
    """PyTorch's concat (cat): join ``tensors`` along ``dim``, with cat's rule for legacy
    empty tensors."""
    return S.cat(tensors, dim)


def swapdims(input, dim0: int, dim1: int) -> Tensor:
    """PyTorch's swapdims (swapaxes): ``input`` with ``dim0`` and ``dim1`` exchanged."""
    return S.swapaxes(input, dim0, dim1)


def fix(input) -> Tensor:
    """PyTorch's fix (trunc): round toward zero; integer tensors come back unchanged."""
    if input.dtype.kind in "iub":
        return S.copy(input)
    return E.trunc(input)


def positive(input) -> Tensor:
    """PyTorch's positive: ``input`` itself (``+x``); bool tensors refuse, as PyTorch's."""
    if input.dtype.kind == "b":
        raise DTypeError("positive: the + operator is not supported on a bool tensor")
    return input


def numel(input) -> int:
    """The number of elements of ``input``."""
    return input.numel()


def detach(input) -> Tensor:
    """``input.detach()``: the same values, cut from the graph."""
    return input.detach()


def t(input) -> Tensor:
    """PyTorch's t: a 2-d tensor transposed, a 0-d or 1-d one as it is."""
    if input.ndim > 2:
        raise ShapeError(f"t: expects a tensor of at most 2 dimensions, got shape "
                         f"{tuple(input.shape)}")
    return S.swapaxes(input, 0, 1) if input.ndim == 2 else input


def is_floating_point(input) -> bool:
    """Whether ``input`` has a floating-point dtype."""
    return B.is_float(input.dtype)


def is_complex(input) -> bool:
    """Whether ``input`` has a complex dtype."""
    return input.dtype.kind == "c"


_FUNCTIONS: dict[str, Callable] = {
    "absolute": E.abs, "arccos": E.acos, "arccosh": E.acosh, "arcsin": E.asin,
    "arcsinh": E.asinh, "arctan": E.atan, "arctan2": E.atan2, "arctanh": E.atanh,
    "true_divide": E.divide, "eq": E.equal, "ne": E.not_equal, "lt": E.less,
    "le": E.less_equal, "gt": E.greater, "ge": E.greater_equal, "mul": E.multiply,
    "sub": sub, "neg": E.negative, "div": E.div, "pow": E.power, "rsub": rsub, "clamp": clamp,
    "clip": clip,
    "concat": concat, "swapdims": swapdims, "fix": fix, "positive": positive, "numel": numel,
    "detach": detach, "t": t, "adjoint": adjoint, "is_floating_point": is_floating_point,
    "is_complex": is_complex,
}


# === aliases and metadata: methods ==============================================================
def _subtract_method(self, other, *, alpha=1) -> Tensor:
    """PyTorch's subtract: ``self - alpha * other``."""
    return sub(self, other, alpha=alpha)


def _where_method(self, condition, y) -> Tensor:
    """PyTorch's ``x.where(condition, y)``: ``where(condition, x, y)``."""
    return I.where(condition, self, y)


def _equal(self, other) -> bool:
    """PyTorch's ``Tensor.equal``: True when ``other`` has this shape and these values (NaN is
    never equal). The function ``nodegrad.equal`` is elementwise (NumPy's, PyTorch's ``eq``)."""
    if not isinstance(other, Tensor):
        raise TypeError(f"equal: expected a tensor, got {type(other).__name__}")
    if other.backend is not self.backend:
        raise DeviceError(f"equal: tensors are on different devices ({self.device} and "
                          f"{other.device})")
    self._concrete("equal()")
    other._concrete("equal()")
    if self.shape != other.shape:
        return False
    return bool(self.backend.xp.array_equal(self._data, other._data))


def _type_as(self, other) -> Tensor:
    """``self`` cast to ``other``'s dtype (differentiable between floats)."""
    if not isinstance(other, Tensor):
        raise TypeError(f"type_as: expected a tensor, got {type(other).__name__}")
    return E.astype(self, other.dtype)


def _reshape_as(self, other) -> Tensor:
    """``self`` reshaped to ``other``'s shape."""
    return S.reshape(self, tuple(other.shape))


def _sum_to_size(self, *size) -> Tensor:
    """``self`` summed down to ``size``, which must broadcast to ``self``'s shape."""
    size = _shape_arg(size)
    lead = self.ndim - len(size)
    if lead < 0 or any(s not in (1, n) for s, n in zip(size, self.shape[lead:])):
        raise ShapeError(f"sum_to_size: size {list(size)} is not expandable to size "
                         f"{list(self.shape)}")
    return S.sum_to(self, size)


def _stride(self, dim: int | None = None):
    """The strides in elements (PyTorch's), or the one of ``dim``."""
    item = self._data.itemsize
    strides = tuple(s // item for s in self._data.strides)
    if dim is None:
        return strides
    n = self.ndim
    if not -n <= dim < n:
        raise IndexError(f"stride: dimension {dim} out of range for a tensor with {n} "
                         "dimensions")
    return strides[dim]


def _address(a) -> int:
    """The address of an array's first element (host memory, or the device's for CuPy)."""
    if B.backend_of(a).device_id is None:
        return a.__array_interface__["data"][0]
    return a.data.ptr


def _root(a):
    """The array whose memory ``a`` views (through NumPy's as_strided too, whose result's base
    is a stand-in object holding the array it views)."""
    while True:
        base = a.base
        if base is not None and not B.is_array(base) and B.is_array(getattr(base, "base", None)):
            base = base.base
        if not B.is_array(base):
            return a
        a = base


def _storage_offset(self) -> int:
    """Elements between the start of the memory this array views and its first element."""
    a = self._data
    return (_address(a) - _address(_root(a))) // a.itemsize


def _new(self, dtype, device):
    return (self.dtype if dtype is None else dtype), (self.device if device is None else device)


def _new_zeros(self, *size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Zeros of ``size``, with this tensor's dtype and device unless given; inside vmap,
    batched as this tensor is (torch.func's ``new_*``), as are new_ones/new_full/new_empty."""
    d, dev = _new(self, dtype, device)
    return _batched_as(self, full(_shape_arg(size), 0, dtype=d, device=dev,
                                  requires_grad=requires_grad))


def _new_ones(self, *size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Ones of ``size``, with this tensor's dtype and device unless given."""
    d, dev = _new(self, dtype, device)
    return _batched_as(self, full(_shape_arg(size), 1, dtype=d, device=dev,
                                  requires_grad=requires_grad))


def _new_empty(self, *size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """An uninitialised tensor of ``size`` (zeros here), with this tensor's dtype and device."""
    return _new_zeros(self, *size, dtype=dtype, device=device, requires_grad=requires_grad)


def _new_empty_strided(self, size, stride, *, dtype=None, device=None,
                       requires_grad: bool = False, **_layout) -> Tensor:
    """PyTorch's ``new_empty_strided``: ``new_empty(size)``; the strides it asks for are a
    memory layout, and arrays here have one."""
    if len(tuple(stride)) != len(tuple(size)):
        raise ShapeError(f"new_empty_strided: {len(tuple(size))} dims but {len(tuple(stride))} "
                         "strides")
    return _new_empty(self, *tuple(size), dtype=dtype, device=device,
                      requires_grad=requires_grad)


def _new_full(self, size, fill_value, *, dtype=None, device=None,
              requires_grad: bool = False) -> Tensor:
    """``fill_value`` in ``size`` (a tuple), with this tensor's dtype and device unless given."""
    if not isinstance(size, list | tuple):
        raise TypeError(f"new_full: size must be a tuple of ints, got {type(size).__name__}")
    d, dev = _new(self, dtype, device)
    return _batched_as(self, full(tuple(size), fill_value, dtype=d, device=dev,
                                  requires_grad=requires_grad))


def _new_tensor(self, data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A copy of ``data`` with this tensor's dtype and device unless given (PyTorch's)."""
    d, dev = _new(self, dtype, device)
    return tensor(data, dtype=d, device=dev, requires_grad=requires_grad)


def _bfloat16(self, memory_format=None) -> Tensor:
    """The tensor in bfloat16 (PyTorch's ``bfloat16()``)."""
    return E.astype(self, B.bfloat16)


def _get_device(self) -> int:
    """-1 on the CPU, else the CUDA device's index."""
    i = self.backend.device_id
    return -1 if i is None else i


def _is_signed(self) -> bool:
    """Whether the dtype holds negative values (PyTorch's: False for bool and uint8)."""
    return self.dtype.kind in "ifc" or self.dtype == B.bfloat16


_METHODS: dict[str, Callable] = {
    "absolute": E.abs, "arccos": E.acos, "arccosh": E.acosh, "arcsin": E.asin,
    "arcsinh": E.asinh, "arctan": E.atan, "arctan2": E.atan2, "arctanh": E.atanh,
    "multiply": E.multiply, "subtract": _subtract_method, "negative": E.negative,
    "true_divide": E.divide, "greater": E.greater, "greater_equal": E.greater_equal,
    "less": E.less, "less_equal": E.less_equal, "not_equal": E.not_equal, "eq": E.equal,
    "ne": E.not_equal, "lt": E.less, "le": E.less_equal, "gt": E.greater,
    "ge": E.greater_equal, "swapdims": S.swapaxes, "fix": fix, "positive": positive,
    "where": _where_method, "equal": _equal, "type_as": _type_as, "reshape_as": _reshape_as,
    "sum_to_size": _sum_to_size, "t": t, "adjoint": adjoint,
    # metadata
    "is_contiguous": lambda self, memory_format=None: bool(self._data.flags.c_contiguous) and (
        memory_format is None
        or fits_memory_format("is_contiguous", self, memory_format, strict=False)),
    "stride": _stride, "storage_offset": _storage_offset,
    "data_ptr": lambda self: _address(self._data),
    "element_size": lambda self: self._data.itemsize, "nelement": lambda self: self._data.size,
    "ndimension": lambda self: self._data.ndim, "is_floating_point": is_floating_point,
    "is_complex": is_complex, "is_signed": _is_signed, "get_device": _get_device,
    # constructors and casts
    "new_zeros": _new_zeros, "new_ones": _new_ones, "new_full": _new_full,
    "new_empty": _new_empty, "new_empty_strided": _new_empty_strided,
    "new_tensor": _new_tensor,
    "bfloat16": _bfloat16,
}


# === in-place forms =============================================================================
def _any_requires_grad(args: tuple, kwargs: dict) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            if a.requires_grad:
                return True
        elif isinstance(a, list | tuple):
            if any(isinstance(b, Tensor) and b.requires_grad for b in a):
                return True
    return False


def _check_target(self, name: str) -> None:
    if not isinstance(self, Tensor):
        raise TypeError(f"{name}: expected a tensor to change in place, got "
                        f"{type(self).__name__}")
    if isinstance(self, BatchTracer):
        raise TypeError(f"{name}: a batched tensor inside vmap cannot be changed in place; use "
                        f"the out-of-place {name[:-1]}")


def _refuse_leaf(self: Tensor, name: str) -> None:
    if self.node is None and self.requires_grad:
        raise GradError(f"{name}: a leaf tensor that requires grad cannot be changed in place "
                        "while recording; wrap the update in nodegrad.no_grad()")


def _from_outside(rec, t: Tensor) -> bool:
    """Whether the traced step got ``t``'s array from outside (an input, a closed-over tensor)
    rather than making it: rebinding such a tensor is not something a replay can repeat."""
    s = rec.slot.get(id(t._data))
    return s is None or not any(i.out == s and i.kind != "load" for i in rec.instrs)


def _rebind(self: Tensor, result: Tensor, name: str) -> Tensor:
    """Point ``self`` at ``result`` (value, graph position); the old value's version moves on."""
    rec = modes().jit
    if rec is not None and rec.fallback is None and _from_outside(rec, self):
        rec.fallback = (f"'{name}' rebinds a tensor the step did not make (at "
                        f"{creation_site()})")
    old = self._version
    self._rebound(result._data)
    self._data, self.node, self.requires_grad = result._data, result.node, result.requires_grad
    if result._version is not None:  # a node that saved result's array watches this counter
        self._version = result._version
    if old is not None and len(old) > 1:  # views of the old array show the new value
        I.refresh_views(self, old[1])
    return self


def _div_inplace(plain: Callable) -> Callable:
    """``x.div_(y, rounding_mode=...)``: PyTorch's rounded division in place (``plain``, the
    true division's in-place method, without one)."""
    name = plain.__name__

    def div_(self, other, *, rounding_mode: str | None = None):
        if rounding_mode is None:
            return plain(self, other)
        return apply_inplace(self, name, E.div, other, rounding_mode=rounding_mode)
    div_.__name__ = name
    return div_


def _fitted(self: Tensor, result, name: str) -> Tensor:
    """``result`` checked to fit in place into ``self``: a tensor of its shape, in a dtype it can
    hold (PyTorch's rule: no float into int, no number into bool)."""
    if not isinstance(result, Tensor):
        raise TypeError(f"{name}: the op gave {type(result).__name__}, not a tensor")
    if result.shape != self.shape:
        raise ShapeError(f"{name}: the result has shape {tuple(result.shape)}, which does not "
                         f"fit in place into shape {tuple(self.shape)} (an in-place op cannot "
                         "broadcast its tensor to a larger shape)")
    if result.dtype != self.dtype and not can_store(result.dtype, self.dtype):
        raise DTypeError(f"{name}: result type {result.dtype} can't be cast to the desired "
                         f"output type {self.dtype} of the tensor changed in place")
    return result


def _copy_into(a, r) -> None:
    B.backend_of(a).xp.copyto(a, r, casting="unsafe")  # _fitted checked PyTorch's rule


def apply_inplace(self: Tensor, name: str, fn: Callable, *args, **kwargs) -> Tensor:
    """Store ``fn(self, *args, **kwargs)`` in ``self`` with PyTorch's in-place semantics
    (see the module docstring); returns ``self``. ``name`` (``"exp_"``) is for errors."""
    if type(self) is BatchTracer:  # inside vmap: each example changes (torch.func's rule)
        result = fn(self, *args, **kwargs)
        if isinstance(result, Tensor) and result.dtype != self.dtype:
            result = _fitted(self, result, name).astype(self.dtype)
        I.write_through(self, result, name)  # a batched slice's base changes too
        return rebind_batched(name, self, result)
    _check_target(self, name)
    refuse_batched_into(name, *args, *kwargs.values())
    m = modes()
    if m.grad_enabled and (self.requires_grad or _any_requires_grad(args, kwargs)):
        _refuse_leaf(self, name)
        result = _fitted(self, fn(_alias(self), *args, **kwargs), name)
        result = E.astype(result, self.dtype)
        I.write_through(self, result, name)  # a slice's base changes too (PyTorch's views)
        return _rebind(self, result, name)
    result = _fitted(self, fn(self, *args, **kwargs), name)
    try:
        rec = m.jit
        if rec is not None:  # under a jit trace: replayed in place on the same array
            rec.mutate(name, _copy_into, self, result)
        else:
            _copy_into(self._data, result._data)
    except ValueError as e:  # a read-only array (a broadcast view, a frozen NumPy array)
        raise ValueError(f"{name}: cannot write into this tensor's array ({e}); clone() it "
                         "first") from None
    self._bump()
    trace = recording()
    if trace is not None:  # a traced forward (ONNX export): self now holds the result
        trace.inplace(self, result)
    return self


def _assigning(name: str) -> Callable:
    """``zero_``, ``fill_`` or ``copy_`` (Tensor's own writes) recorded while a graph is: the
    tensor takes the value, broadcast to its shape in its dtype, as a recorded op, so a zero
    gradient reaches its old value (it stays in the graph, as in PyTorch) and the source's
    gradient comes from it (the raw write left the old graph in place: a silently wrong
    gradient); a slice's base changes too."""
    raw = getattr(Tensor, name)

    def method(self, *args):
        value = 0 if name == "zero_" else args[0] if args else None
        if type(self) is BatchTracer and len(args) == (0 if name == "zero_" else 1):
            # inside vmap each example takes the value (torch.func's rule): a result batched
            # at the tracer's own level, equal to the value everywhere (NaN entries too)
            return apply_inplace(self, name, lambda t: I.where(t == t, value, value))
        if not (modes().grad_enabled and isinstance(self, Tensor)
                and type(self) is not BatchTracer
                and (self.requires_grad or (isinstance(value, Tensor) and value.requires_grad))):
            return raw(self, *args)
        if len(args) != (0 if name == "zero_" else 1):
            raise TypeError(f"{name}: expected {0 if name == 'zero_' else 1} argument, got "
                            f"{len(args)}")
        if name == "fill_":
            check_fill_value(value)
        self._check_inplace(name)
        if isinstance(value, Tensor):
            if value.device != self.device:
                value = value.to(self.device)
            new = S.broadcast_to(E.astype(value, self.dtype), tuple(self.shape))
            new = E.add(new, full(tuple(self.shape), 0, dtype=self.dtype, device=self.device))
        else:
            new = full(tuple(self.shape), value, dtype=self.dtype, device=self.device)
        if self.requires_grad:  # still in the graph, its old value getting a zero gradient
            new = E.where(full((), True, device=self.device), new, _alias(self))
        I.write_through(self, new, name)
        return _rebind(self, new, name)

    method.__name__ = name
    method.__doc__ = raw.__doc__
    return method


def _inplace_method(name: str) -> Callable:
    base = name[:-1]

    def method(self, *args, **kwargs):
        return apply_inplace(self, name, getattr(Tensor, base), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"In place: ``x.{base}(...)`` stored into ``x``, which is returned."
    return method


def _in_graph(t: Tensor) -> bool:
    return t.requires_grad or t.node is not None


def _reshape_inplace_method(name: str, base: str) -> Callable:
    def method(self, *args, **kwargs):
        _check_target(self, name)
        fn = getattr(Tensor, base)
        # views follow their base by the op that made them from its shape: an in-place op
        # recorded later would rebuild them wrongly, so where autograd is involved a shape
        # change of a view, or of a tensor with live views, is refused; outside it the views
        # keep their memory and stop following (``x, y = dataset[i]; x.unsqueeze_(0)``)
        live = self._live_views() if type(self) is Tensor else []
        if live:
            if _in_graph(self) or any(_in_graph(v) for v in live):
                raise GradError(f"{name}: cannot change the shape of a tensor in place while "
                                "views of it are alive in a recorded graph (they follow it by "
                                f"the shape they were made from); use the out-of-place {base}()")
            for v in live:
                v._view = None
        entry = getattr(self, "_view", None)
        if entry is not None and entry[1] is not None:
            if _in_graph(self) or _in_graph(entry[0]):
                raise GradError(f"{name}: cannot change the shape of a view in place while it "
                                "is in a recorded graph (it follows its base by the op that "
                                f"made it); use the out-of-place {base}()")
            self._view = None
        if modes().grad_enabled and self.requires_grad:
            _refuse_leaf(self, name)
            return _rebind(self, fn(_alias(self), *args, **kwargs), name)
        if self.node is not None:
            raise GradError(f"{name}: cannot change the shape of a tensor that is part of a "
                            "recorded graph (its gradient would no longer fit); detach() it "
                            "first")
        result = fn(self, *args, **kwargs)
        rec = modes().jit
        if rec is not None and rec.fallback is None and _from_outside(rec, self):
            rec.fallback = (f"'{name}' rebinds a tensor the step did not make (at "
                            f"{creation_site()})")
        self._bump()
        self._data = result._data  # a leaf stays a leaf (and keeps requires_grad)
        return self

    method.__name__ = name
    method.__doc__ = f"In place: ``x`` becomes ``x.{base}(...)`` (a view of its memory)."
    return method


def _fill_diagonal_(self, fill_value, wrap: bool = False) -> Tensor:
    """PyTorch's fill_diagonal_: ``fill_value`` on the main diagonal (all dims of one length
    beyond 2-d); with ``wrap`` a tall matrix's diagonal restarts every ``cols + 1`` rows."""
    if self.ndim < 2:
        raise ShapeError(f"fill_diagonal_: expected at least 2 dimensions, got shape "
                         f"{tuple(self.shape)}")
    if self.ndim > 2 and len(set(self.shape)) != 1:
        raise ShapeError(f"fill_diagonal_: all dimensions must have one length, got shape "
                         f"{tuple(self.shape)}")
    if isinstance(fill_value, Tensor) or not isinstance(fill_value, _Number):
        raise TypeError(f"fill_diagonal_: fill_value must be a number, got "
                        f"{type(fill_value).__name__}")
    be = self.backend
    shape = tuple(self.shape)
    if self.ndim == 2:
        rows, cols = shape
        step = cols + 1
        end = rows * cols if wrap else min(rows, cols) * cols
    else:
        n = shape[0]
        step = sum(n ** i for i in range(self.ndim))
        end = n ** self.ndim
    with be.scope():
        mask = be.xp.zeros(self._data.size, dtype=B.bool_)
        mask[0:end:step] = True
        mask = Tensor._of(mask.reshape(shape))
        value = Tensor._of(be.xp.asarray(fill_value, dtype=self.dtype))
    return apply_inplace(self, "fill_diagonal_", lambda x: E.where(mask, value, x))


def _float_power_(self, exponent) -> Tensor:
    """PyTorch's float_power_: only a float64 tensor can hold float_power's float64 result."""
    if self.dtype != B.float64:
        raise DTypeError(f"float_power_: the tensor has dtype {self.dtype}, but float_power's "
                         "result is float64; only a float64 tensor can be changed in place")
    return apply_inplace(self, "float_power_", Tensor.float_power, exponent)


# PyTorch's in-place Tensor methods, written down once; each is attached where nodegrad's
# Tensor has the method without the underscore (and not the in-place form already)
_TORCH_INPLACE = (
    "abs_", "absolute_", "acos_", "acosh_", "addbmm_", "addcdiv_", "addcmul_", "addmm_",
    "addmv_", "addr_", "arccos_", "arccosh_", "arcsin_", "arcsinh_", "arctan2_", "arctan_",
    "arctanh_", "asin_", "asinh_", "atan2_", "atan_", "atanh_", "baddbmm_", "bitwise_and_",
    "bitwise_left_shift_", "bitwise_not_", "bitwise_or_", "bitwise_right_shift_",
    "bitwise_xor_", "ceil_", "clamp_", "clamp_max_", "clamp_min_", "clip_", "conj_physical_",
    "copysign_", "cos_", "cosh_", "cumprod_", "cumsum_", "deg2rad_", "digamma_", "divide_",
    "eq_", "erf_", "erfc_", "erfinv_", "exp2_", "exp_", "expm1_", "fix_", "float_power_",
    "floor_", "floor_divide_", "fmod_", "frac_", "gcd_", "ge_", "greater_", "greater_equal_",
    "gt_", "heaviside_", "hypot_", "i0_", "igamma_", "igammac_", "index_add_", "index_copy_",
    "index_fill_", "index_put_", "index_reduce_", "lcm_", "ldexp_", "le_", "lerp_", "less_",
    "less_equal_", "lgamma_", "log10_", "log1p_", "log2_", "log_", "logical_and_",
    "logical_not_", "logical_or_", "logical_xor_", "logit_", "lt_", "masked_fill_",
    "masked_scatter_", "multiply_", "mvlgamma_", "nan_to_num_", "ne_", "neg_", "negative_",
    "nextafter_", "not_equal_", "polygamma_", "pow_", "put_", "rad2deg_", "reciprocal_",
    "relu_", "remainder_", "renorm_", "round_", "rsqrt_", "scatter_", "scatter_add_",
    "scatter_reduce_", "sgn_", "sigmoid_", "sign_", "sin_", "sinc_", "sinh_", "sqrt_",
    "square_", "subtract_", "tan_", "tanh_", "tril_", "triu_", "true_divide_", "trunc_",
    "xlogy_",
)
_RESHAPE_INPLACE = {"t_": "t", "transpose_": "transpose", "squeeze_": "squeeze",
                    "unsqueeze_": "unsqueeze", "swapaxes_": "swapaxes", "swapdims_": "swapdims"}
_SPECIAL_INPLACE = {"fill_diagonal_": (None, _fill_diagonal_),
                    "float_power_": ("float_power", _float_power_)}

# PyTorch's in-place functions (``torch.exp_(x)``): ``nodegrad.exp_(x)`` where Tensor has the
# method; the activations without one are defined below
_TORCH_TOP_INPLACE = (
    "abs_", "acos_", "acosh_", "addmv_", "arccos_", "arccosh_", "arcsin_", "arcsinh_",
    "arctan_", "arctanh_", "asin_", "asinh_", "atan_", "atanh_", "ceil_", "clamp_",
    "clamp_max_", "clamp_min_", "clip_", "conj_physical_", "cos_", "cosh_", "deg2rad_",
    "detach_", "erf_", "erfc_", "exp2_", "exp_", "expm1_", "fill_", "fix_", "floor_", "frac_",
    "gcd_", "i0_", "index_put_", "lcm_", "ldexp_", "log10_", "log1p_", "log2_", "log_",
    "logit_", "nan_to_num_", "neg_", "negative_", "rad2deg_", "reciprocal_", "relu_",
    "round_", "rsqrt_", "sigmoid_", "sin_", "sinc_", "sinh_", "sqrt_", "square_", "tan_",
    "tanh_", "trunc_", "xlogy_", "zero_",
)


def _top_level(name: str) -> Callable:
    def fn(input, *args, **kwargs):
        if not isinstance(input, Tensor):  # the method decides about batched tensors
            raise TypeError(f"{name}: expected a tensor to change in place, got "
                            f"{type(input).__name__}")
        return getattr(input, name)(*args, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``input.{name}(...)``: changes ``input`` in place and returns it."
    return fn


def celu_(input, alpha: float = 1.0) -> Tensor:
    """In-place celu."""
    from .activation import celu

    return apply_inplace(input, "celu_", celu, alpha)


def selu_(input) -> Tensor:
    """In-place selu."""
    from .activation import selu

    return apply_inplace(input, "selu_", selu)


def threshold_(input, threshold: float, value: float) -> Tensor:
    """In-place threshold: ``value`` where ``input <= threshold``."""
    from .activation import threshold as _threshold

    return apply_inplace(input, "threshold_", _threshold, threshold, value)


# === gradient hooks ============================================================================
_POST_HOOKS = _autodiff.POST_ACCUMULATE  # id(leaf) -> (weak reference to it, its hooks)


def _forget(table: dict, key: int, ref) -> None:
    entry = table.get(key)
    if entry is not None and entry[0] is ref:
        del table[key]


def _register_post_accumulate_grad_hook(self, hook: Callable) -> RemovableHandle:
    """Call ``hook(tensor)`` each time backward has accumulated this leaf's ``.grad``."""
    if not callable(hook):
        raise TypeError(f"register_post_accumulate_grad_hook: expected a callable, got "
                        f"{type(hook).__name__}")
    if not self.requires_grad:
        raise GradError("register_post_accumulate_grad_hook: tensor does not require grad")
    if self.node is not None:
        raise GradError("register_post_accumulate_grad_hook: only a leaf accumulates .grad; "
                        "this tensor was computed (use register_hook)")
    key = id(self)
    entry = _POST_HOOKS.get(key)
    if entry is None or entry[0]() is not self:
        entry = _POST_HOOKS[key] = (weakref.ref(self, partial(_forget, _POST_HOOKS, key)), [])
    entry[1].append(hook)
    return RemovableHandle(entry[1], hook)


_PROPERTIES = {
    "is_cpu": property(lambda self: self.backend.device_id is None, doc="On the CPU?"),
    "itemsize": property(lambda self: self._data.itemsize, doc="Bytes per element."),
}


# === more of PyTorch's names: predicates, creation, real-valued complex views, copies =========
class Layout:
    """A memory layout, PyTorch's ``torch.layout``: ``strided`` (dense), ``sparse_coo`` or
    ``sparse_csr``."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"nodegrad.{self.name}"


strided = Layout("strided")

_TYPE_NAMES = {"float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor",
               "int64": "LongTensor", "int32": "IntTensor", "int16": "ShortTensor",
               "int8": "CharTensor", "uint8": "ByteTensor", "bool": "BoolTensor"}


def _tensor_type_name(x: Tensor) -> str:
    name = _TYPE_NAMES.get(x.dtype.name, f"{x.dtype.name}Tensor")
    return f"nodegrad.{name}" if x.backend.device_id is None else f"nodegrad.cuda.{name}"


def typename(obj) -> str:
    """A type's name as PyTorch's ``torch.typename``: ``'nodegrad.FloatTensor'`` for a float32
    tensor (torch's names under ``nodegrad.``), else the object's module-qualified class name."""
    if isinstance(obj, Tensor):
        return _tensor_type_name(obj)
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if not isinstance(obj, type) and not callable(obj):
        module, qual = type(obj).__module__, type(obj).__qualname__
    return qual if module in ("builtins", "__builtin__", None) else f"{module}.{qual}"


class TensorType:
    """PyTorch's legacy typed constructors (``ng.FloatTensor``, ``ng.LongTensor``, ...), which
    ported scripts use: ``FloatTensor(data)`` is ``ng.tensor(data, dtype=float32)`` (a copy; a
    tensor of that dtype comes back as a detached alias), ``FloatTensor(2, 3)`` a zero-filled
    tensor of that shape (PyTorch's is uninitialised), ``FloatTensor()`` an empty one;
    ``isinstance(x, ng.FloatTensor)`` and ``x.type(ng.FloatTensor)`` work as PyTorch's."""

    def __init__(self, name: str, dtype):
        self.__name__ = self.__qualname__ = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<class 'nodegrad.{self.__name__}'>"

    def __instancecheck__(self, obj) -> bool:
        return isinstance(obj, Tensor) and obj.dtype == self.dtype

    def __call__(self, *args, device=None, size=None) -> Tensor:
        if size is not None:
            if args:
                raise TypeError(f"{self.__name__}: got both positional arguments and size=")
            return full(_shape_arg(tuple(size)), 0, dtype=self.dtype, device=device)
        if not args:
            return tensor(B.np.zeros(0, self.dtype), device=device)
        if (len(args) > 1 or not isinstance(args[0], Tensor)) and all(map(_is_size, args)):
            shape = tuple(int(a) for a in args)  # a 0-d integer tensor among them is a size
            if any(a < 0 for a in shape):
                raise ValueError(f"{self.__name__}: negative dimension in size {shape}")
            return full(shape, 0, dtype=self.dtype, device=device)
        if len(args) > 1:
            raise TypeError(f"{self.__name__}: expected one data argument (a sequence, array "
                            f"or tensor) or integer sizes, got {len(args)} arguments of types "
                            f"{[type(a).__name__ for a in args]}")
        data = args[0]
        if isinstance(data, Tensor):
            if data.dtype != self.dtype:
                raise TypeError(f"{self.__name__}: expected a tensor of dtype "
                                f"{B.np.dtype(self.dtype).name}, got {data.dtype.name} (use "
                                f"x.to(...) or x.type({self.__name__}) to convert)")
            return data.detach()
        if isinstance(data, (str, bytes, bool, float, complex)):
            raise TypeError(f"{self.__name__}: data must be a sequence, array or tensor of "
                            f"numbers (or integer sizes), got {type(data).__name__}")
        try:
            array = B.np.asarray(data).astype(self.dtype)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self.__name__}: cannot make a tensor of this data: {err}") \
                from None
        return tensor(array, device=device)


def _legacy_types() -> dict[str, TensorType]:
    return {name: TensorType(name, B.np.dtype(dt)) for dt, name in _TYPE_NAMES.items()}


_LEGACY_TYPES = _legacy_types()


def _type_method(self, dtype=None, non_blocking: bool = False, **kwargs):
    """PyTorch's ``x.type()``: with no argument the type's name (``'nodegrad.FloatTensor'``);
    with a dtype, a legacy type (``ng.FloatTensor``) or such a name, ``x`` cast to it."""
    if dtype is None:
        return _tensor_type_name(self)
    if isinstance(dtype, TensorType):
        dtype = dtype.dtype
    if isinstance(dtype, str):
        want = dtype.rsplit(".", 1)[-1]
        names = {v: k for k, v in _TYPE_NAMES.items()}
        if want not in names:
            raise TypeError(f"type: unknown tensor type name {dtype!r}, expected one of "
                            f"{sorted(names)}")
        dtype = names[want]
    return E.astype(self, dtype)


def is_tensor(obj) -> bool:
    """Whether ``obj`` is a nodegrad Tensor."""
    return isinstance(obj, Tensor)


def is_storage(obj) -> bool:
    """Always False: nodegrad tensors hold backend arrays, there are no storage objects."""
    return False


def is_nonzero(input) -> bool:
    """Whether the one element of ``input`` is nonzero (more elements raise), PyTorch's."""
    return input.is_nonzero()


def is_same_size(input, other) -> bool:
    """Whether the two tensors have the same shape."""
    return input.is_same_size(other)


def is_signed(input) -> bool:
    """Whether ``input``'s dtype holds negative values (False for bool and uint8)."""
    return _is_signed(input)


def scalar_tensor(s, *, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A 0-d tensor holding the number ``s``, in the default float dtype unless ``dtype``."""
    if isinstance(s, Tensor) and s.numel() == 1 or isinstance(s, B.generic):
        s = s.item()  # a one-element tensor or NumPy scalar: its number (PyTorch's Scalar)
    if not isinstance(s, int | float | bool):
        raise TypeError(f"scalar_tensor: expected a number, got {type(s).__name__}")
    return tensor(s, dtype=B.DEFAULT_FLOAT if dtype is None else dtype, device=device,
                  requires_grad=requires_grad)


def asarray(obj, *, dtype=None, device=None, copy: bool | None = None,
            requires_grad: bool | None = None) -> Tensor:
    """PyTorch's ``torch.asarray``: ``obj`` (tensor, array, DLPack producer, buffer, number or
    sequence) as a tensor, sharing memory when dtype and device allow. ``copy=True`` always
    copies, ``copy=False`` refuses to; ``requires_grad`` defaults to the tensor's own."""
    if isinstance(obj, Tensor):
        keep = ((dtype is None or B.as_dtype(dtype) == obj.dtype)
                and (device is None or B.get_backend(device) is obj.backend))
        if not keep and copy is False:
            raise ValueError(f"asarray: copy=False but {obj.dtype} on {obj.device} cannot be "
                             f"aliased as dtype={dtype}, device={device}")
        rg = obj.requires_grad if requires_grad is None else bool(requires_grad)
        out = obj if keep else obj.to(device=device, dtype=dtype)
        if copy:
            out = S.copy(out)
        if rg == out.requires_grad:
            return out
        if not rg:
            return out.detach()
        return out.detach().requires_grad_() if out.node is None else out
    be = B.get_backend(device if device is not None else get_default_device())
    if isinstance(obj, bytes | bytearray | memoryview):
        if dtype is None:
            raise TypeError("asarray: a buffer needs dtype= to be read")
        obj = B.np.frombuffer(obj, dtype=B.as_dtype(dtype))
    if B.is_array(obj) or hasattr(obj, "__dlpack__"):
        arr = obj if B.is_array(obj) else from_dlpack(obj)._data
        same = B.backend_of(arr) is be and (dtype is None or arr.dtype == B.as_dtype(dtype))
        if not same and copy is False:
            raise ValueError(f"asarray: copy=False but an array of {arr.dtype} cannot be "
                             f"aliased as dtype={dtype} on {be.name}")
        if same:
            out = Tensor._of(arr.copy() if copy else arr)
        else:
            out = tensor(arr, dtype=dtype, device=be.name)
    else:
        if copy is False:
            raise ValueError(f"asarray: copy=False but a {type(obj).__name__} has no memory "
                             "to share")
        out = tensor(obj, dtype=dtype, device=be.name)
    return out.requires_grad_() if requires_grad else out


def empty_strided(size, stride, *, dtype=None, layout=None, device=None,
                  requires_grad: bool = False, pin_memory: bool = False) -> Tensor:
    """A tensor of ``size`` laid out with ``stride`` (in elements) over fresh memory, as
    PyTorch's ``empty_strided``; its values are zeros here."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
        raise ValueError(f"empty_strided: size {list(size)} and stride {list(stride)} must be "
                         "non-negative and of one length")
    dt = B.DEFAULT_FLOAT if dtype is None else B.as_dtype(dtype)
    be = B.get_backend(device if device is not None else get_default_device())
    extent = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride))
    with be.scope():
        buf = be.xp.zeros(max(extent, 1), dt)
        arr = be.xp.lib.stride_tricks.as_strided(buf, size, tuple(s * dt.itemsize
                                                                  for s in stride))
    t = Tensor._of(arr)
    return t.requires_grad_() if requires_grad else t


def frombuffer(buffer, *, dtype, count: int = -1, offset: int = 0,
               requires_grad: bool = False) -> Tensor:
    """A 1-d CPU tensor sharing memory with a Python buffer (bytes, bytearray, memoryview,
    array.array), as ``torch.frombuffer``: ``count`` elements of ``dtype`` from byte
    ``offset`` (-1: to the end)."""
    dt = B.as_dtype(dtype)
    try:
        arr = B.np.frombuffer(buffer, dtype=dt, count=count, offset=offset)
    except (TypeError, ValueError) as e:
        raise ValueError(f"frombuffer: cannot read {count} elements of {dt} at byte {offset} "
                         f"of a {type(buffer).__name__}: {e}") from None
    t = Tensor._of(arr)
    return t.requires_grad_() if requires_grad else t


def _storage_positions(x: Tensor):
    """Each element's position (in elements) in the memory its array views, row-major."""
    np = B.np
    a = x._data
    pos = np.full((), _storage_offset(x), dtype=np.int64)
    for d, (n, st) in enumerate(zip(a.shape, a.strides)):
        shape = [1] * a.ndim
        shape[d] = n
        pos = pos + (np.arange(n, dtype=np.int64) * (st // a.itemsize)).reshape(shape)
    return np.broadcast_to(pos, a.shape).reshape(-1)


def _strided_index(input, size, stride, storage_offset, op: str):
    """For each element of ``as_strided(input, size, stride, storage_offset)``, the position of
    the element of ``input`` (row-major) that sits at its memory address; a ValueError naming
    ``op`` when an address holds none of ``input``'s elements."""
    np = B.np
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
        raise ValueError(f"{op}: size {list(size)} and stride {list(stride)} must be "
                         "non-negative and of one length")
    have = _storage_positions(input)
    off = _storage_offset(input) if storage_offset is None else int(storage_offset)
    want = np.full((), off, dtype=np.int64)
    for d, (n, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[d] = n
        want = want + (np.arange(n, dtype=np.int64) * st).reshape(shape)
    want = np.broadcast_to(want, size).reshape(-1)
    order = np.argsort(have, kind="stable")
    sorted_pos = have[order]
    k = np.searchsorted(sorted_pos, want)
    k_ok = np.minimum(k, max(sorted_pos.size - 1, 0))
    if want.size and (sorted_pos.size == 0 or not bool((sorted_pos[k_ok] == want).all())):
        raise ValueError(f"{op}: size {list(size)}, stride {list(stride)} and offset "
                         f"{off} reach memory outside the elements of the input of shape "
                         f"{tuple(input.shape)}")
    return order[k_ok].reshape(size)


def as_strided(input, size, stride, storage_offset: int | None = None) -> Tensor:
    """PyTorch's ``as_strided``: the elements at ``storage_offset + sum(i_k * stride[k])`` of
    the memory ``input`` views (its own offset by default), as a differentiable gather, so the
    result is a new tensor and overlapping positions add their gradients."""
    index = _strided_index(input, size, stride, storage_offset, "as_strided")
    return I.take(input, Tensor._of(input.backend.asarray(index)))


def as_strided_scatter(input, src, size, stride, storage_offset: int | None = None) -> Tensor:
    """PyTorch's ``as_strided_scatter``: a copy of ``input`` with ``src`` written where
    ``input.as_strided(size, stride, storage_offset)`` reads (differentiable in both: ``input``
    gets the gradient outside those places, ``src`` the gradient at them). ``src`` must have
    shape ``size``; where positions overlap the last write wins."""
    op = "as_strided_scatter"
    if not isinstance(input, Tensor) or not isinstance(src, Tensor):
        raise TypeError(f"{op}: input and src must be tensors, got {type(input).__name__} and "
                        f"{type(src).__name__}")
    if tuple(src.shape) != tuple(int(s) for s in size):
        raise ShapeError(f"{op}: src has shape {tuple(src.shape)}, expected size "
                         f"{tuple(int(s) for s in size)}")
    index = _strided_index(input, size, stride, storage_offset, op).reshape(-1)
    flat = S.reshape(input, (-1,))
    out = I.index_update(flat, Tensor._of(input.backend.asarray(index)),
                         S.reshape(E.astype(src, input.dtype), (-1,)))
    return S.reshape(out, tuple(input.shape))


def _as_strided_(self, size, stride, storage_offset: int | None = None) -> Tensor:
    """PyTorch's ``as_strided_``: ``self`` becomes the strided view of its memory. Outside a
    recorded graph its array becomes a true view (writes reach the memory it shares); while
    recording, ``self`` is rebound to the differentiable ``as_strided`` (a leaf that requires
    grad refuses, as PyTorch's)."""
    name = "as_strided_"
    _check_target(self, name)
    index = _strided_index(self, size, stride, storage_offset, name)
    if modes().grad_enabled and self.requires_grad:
        _refuse_leaf(self, name)
        out = I.take(_alias(self), Tensor._of(self.backend.asarray(index)))
        return _rebind(self, out, name)
    if self.node is not None:
        raise GradError(f"{name}: cannot restride a tensor that is part of a recorded graph "
                        "(its gradient would no longer fit); detach() it first")
    self._concrete(name)
    a = self._data
    size = tuple(int(s) for s in size)
    if index.size:  # strides from the element the first output position reads
        first = B.np.unravel_index(int(index.reshape(-1)[0]), a.shape) if a.ndim else ()
        base = a[tuple(slice(int(i), int(i) + 1) for i in first)] if a.ndim else a
        view = self.backend.xp.lib.stride_tricks.as_strided(
            base, size, tuple(int(st) * a.itemsize for st in stride))
    else:
        view = self.backend.xp.empty(size, a.dtype)
    self._bump()
    self._data = view
    return self


def _copied(fn: Callable, name: str) -> Callable:
    def op(input, *args, **kwargs):
        out = fn(input, *args, **kwargs)
        if isinstance(out, list | tuple):
            return type(out)(S.copy(o) for o in out)
        return S.copy(out)

    op.__name__ = name
    op.__qualname__ = name
    op.__doc__ = (f"PyTorch's ``{name}``: ``{name[:-5]}`` with its result in new memory "
                  "(differentiable, never a view).")
    return op


def _split(input, split_size_or_sections, dim: int = 0):
    """PyTorch's split: pieces of ``split_size`` along ``dim`` (the last may be shorter), or
    pieces of the listed sizes."""
    if isinstance(split_size_or_sections, int):
        n, k = input.shape[dim], split_size_or_sections
        if k <= 0 and n:
            raise ValueError(f"split: split_size must be positive, got {k}")
        sizes = [k] * (n // k) + ([n % k] if n % k else []) if n else [0]
        return tuple(_slicing.split_with_sizes(input, sizes, dim))
    return tuple(_slicing.split_with_sizes(input, list(split_size_or_sections), dim))


def _slice(input, dim: int = 0, start: int | None = None, end: int | None = None,
           step: int = 1) -> Tensor:
    idx = [slice(None)] * input.ndim
    idx[dim] = slice(start, end, step)
    return input[tuple(idx)]


def _squeeze(input, dim=None) -> Tensor:
    return S.squeeze(input) if dim is None else S.squeeze(input, dim=dim)  # PyTorch's dim


def constant_pad_nd(input, pad, value=0.0) -> Tensor:
    """PyTorch's ``constant_pad_nd``: ``F.pad(input, pad, value=value)`` (negative widths
    crop)."""
    return _arrange.torch_pad(input, pad, "constant", value)


def fill(input, value) -> Tensor:
    """PyTorch's out-of-place ``torch.fill``: a new tensor of input's shape and dtype holding
    ``value`` (a number or a 0-d tensor, which gets the gradient; input gets none)."""
    if isinstance(value, Tensor) and value.ndim:
        raise ShapeError(f"fill: value must be a number or a 0-d tensor, got shape "
                         f"{tuple(value.shape)}")
    full_mask = Tensor._of(input.backend.xp.ones(input.shape, bool))
    out = E.where(full_mask, value, E.multiply(input, 0) if input.requires_grad else input)
    return out if out.dtype == input.dtype else E.astype(out, input.dtype)


def empty_permuted(size, physical_layout, *, dtype=None, layout=None, device=None,
                   requires_grad: bool = False, pin_memory: bool = False) -> Tensor:
    """PyTorch's ``empty_permuted``: ``empty(size)``; the physical order of the dims it asks
    for is a memory layout, and arrays here have one."""
    order = tuple(physical_layout)
    if sorted(order) != list(builtins.range(len(tuple(size)))):
        raise ValueError(f"empty_permuted: physical_layout must be a permutation of the "
                         f"{len(tuple(size))} dims, got {order}")
    from ..tensor import empty
    return empty(*tuple(size), dtype=dtype, device=device, requires_grad=requires_grad)


def resize_as_(input, the_template) -> Tensor:
    """PyTorch's ``torch.resize_as_``: ``input.resize_as_(the_template)``."""
    return input.resize_as_(the_template)


_COPY_FORMS = {
    "view_copy": lambda input, size: S.reshape(input, *_shape_arg((size,))),
    "permute_copy": lambda input, dims: S.permute(input, *dims),
    "transpose_copy": lambda input, dim0, dim1: S.swapaxes(input, dim0, dim1),
    "t_copy": t,
    "unsqueeze_copy": lambda input, dim: S.unsqueeze(input, dim),
    "squeeze_copy": _squeeze,
    "unfold_copy": lambda input, dimension, size, step: input.unfold(dimension, size, step),
    "expand_copy": lambda input, size, *, implicit=False: S.expand(input, *_shape_arg((size,))),
    "diagonal_copy": lambda input, offset=0, dim1=0, dim2=1: _arrange.diagonal(
        input, offset, dim1, dim2),
    "select_copy": lambda input, dim, index: _slicing.select(input, dim, index),
    "slice_copy": _slice,
    "unbind_copy": lambda input, dim=0: _arrange.unbind(input, dim),
    "split_copy": _split,
    "split_with_sizes_copy": lambda input, split_sizes, dim=0: tuple(
        _slicing.split_with_sizes(input, list(split_sizes), dim)),
    "detach_copy": lambda input: input.detach(),
    "alias_copy": lambda input: input,
    "as_strided_copy": as_strided,
}


def unsafe_split(tensor, split_size_or_sections, dim: int = 0) -> tuple:
    """PyTorch's ``unsafe_split``: ``split`` (nodegrad's pieces never alias, so it is safe)."""
    return _split(tensor, split_size_or_sections, dim)


def unsafe_chunk(input, chunks: int, dim: int = 0) -> tuple:
    """PyTorch's ``unsafe_chunk``: ``chunk`` (safe here: pieces never alias)."""
    return tuple(S.chunk(input, chunks, dim))


def nonzero_static(input, *, size: int, fill_value: int = -1) -> Tensor:
    """PyTorch's ``nonzero_static``: ``nonzero``'s (n, ndim) indices cut or padded with
    ``fill_value`` to exactly ``size`` rows, a shape known before the values."""
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"nonzero_static: size must be a non-negative int, got {size!r}")
    idx = I.nonzero(input)._data[:size]
    xp = input.backend.xp
    pad = xp.full((size - idx.shape[0], idx.shape[1]), fill_value, dtype=B.int64)
    return Tensor._of(xp.concatenate([idx, pad], axis=0))


def bitwise_left_shift(input, other) -> Tensor:
    """PyTorch's name for ``left_shift``: ``input << other``."""
    return E.left_shift(input, other)


def bitwise_right_shift(input, other) -> Tensor:
    """PyTorch's name for ``right_shift``: ``input >> other`` (arithmetic for signed ints)."""
    return E.right_shift(input, other)


HistogramDD = namedtuple("histogramdd", ["hist", "bin_edges"])


def _histogram_by_edges(xp, pts, edges: list, w, density: bool):
    """PyTorch's histogram over given bin edges (one 1-d array per dim): a point counts when
    each coordinate lies in [first edge, last edge] (NaN never does), in the bin found by
    binary search, the last bin closed on the right."""
    n = pts.shape[0]
    keep = xp.ones(n, dtype=B.bool_)
    flat = xp.zeros(n, dtype=B.int64)
    nbins = []
    for k, e in enumerate(edges):
        nb = e.shape[0] - 1
        x = pts[:, k]
        keep &= (x >= e[0]) & (x <= e[-1])
        pos = xp.searchsorted(e, x, side="right") - 1
        flat = flat * nb + xp.clip(pos, 0, nb - 1)
        nbins.append(nb)
    total = math.prod(nbins)
    hist = xp.bincount(flat[keep], weights=None if w is None else w[keep], minlength=total)
    hist = hist.astype(B.float64).reshape(nbins)
    if density:  # an empty histogram or a zero-width bin gives NaN, as PyTorch's
        with B.np.errstate(divide="ignore", invalid="ignore"):
            hist = hist / hist.sum()
            for k, e in enumerate(edges):
                shape = [1] * len(edges)
                shape[k] = -1
                hist = hist / xp.diff(e).reshape(shape)
    return hist


def histogramdd(input, bins, *, range=None, weight=None,  # noqa: A002  (PyTorch's names)
                density: bool = False) -> HistogramDD:
    """PyTorch's ``histogramdd``: counts (or ``weight`` sums) of the points in the last dim of
    ``input`` over a grid of bins, with the bin edges of each dim. ``bins`` is one count, a
    count per dim or a list of 1-d tensors of edges (one per dim, in input's dtype, which
    then decide alone: ``range`` is ignored, as PyTorch does); ``range`` the flat
    [min0, max0, min1, max1, ...] (default: the data's extent); the last bin includes its
    right edge. Not differentiable."""
    if input.dtype.kind != "f" or input.ndim < 1:
        raise DTypeError(f"histogramdd: expected a floating tensor of points (…, D), got "
                         f"{input.dtype} of shape {tuple(input.shape)}")
    input._concrete("histogramdd (the counts leave the graph)")
    if any(type(t) is BatchTracer for t in (input, weight, *(
            bins if isinstance(bins, list | tuple) else ()))):
        raise TypeError("histogramdd: inside vmap the counts of a batched tensor are not "
                        "supported (they leave the graph); loop over the examples")
    d = input.shape[-1]
    pts = input._data.reshape(-1, d)
    xp = input.backend.xp
    if isinstance(bins, int):
        bins = [bins] * d
    if len(bins) != d:
        raise ValueError(f"histogramdd: {len(bins)} bin specifications for {d}-d points")
    w = None if weight is None else weight._data.reshape(-1)
    if any(isinstance(b, Tensor) for b in bins):
        for k, b in enumerate(bins):
            if not isinstance(b, Tensor) or b.ndim != 1 or b.shape[0] < 2:
                got = (f"shape {tuple(b.shape)}" if isinstance(b, Tensor)
                       else type(b).__name__)
                raise ValueError(f"histogramdd: bins for dim {k} must be a 1-d tensor of at "
                                 f"least 2 edges (as for every other dim), got {got}")
            if b.dtype != input.dtype:
                raise DTypeError(f"histogramdd: bins for dim {k} have dtype {b.dtype}, "
                                 f"expected input's {input.dtype}")
        edges = [b._data for b in bins]
        hist = _histogram_by_edges(xp, pts, edges, w, density)
        return HistogramDD(Tensor._of(hist.astype(input.dtype)),
                           tuple(Tensor._of(e.copy()) for e in edges))
    pairs = None
    if range is not None:
        if len(range) != 2 * d:
            raise ValueError(f"histogramdd: range needs 2 numbers per dim ({2 * d}), got "
                             f"{len(range)}")
        pairs = [(float(range[2 * k]), float(range[2 * k + 1])) for k in builtins.range(d)]
    hist, edges = xp.histogramdd(pts, bins=bins, range=pairs, weights=w, density=density)
    return HistogramDD(Tensor._of(hist.astype(input.dtype)),
                       tuple(Tensor._of(e.astype(input.dtype)) for e in edges))


_FUNCTIONS.update(_LEGACY_TYPES)
_FUNCTIONS.update({
    "histogramdd": histogramdd, "Size": Size, "strided": strided, "typename": typename,
    "is_tensor": is_tensor, "is_storage": is_storage, "is_nonzero": is_nonzero,
    "is_same_size": is_same_size, "is_signed": is_signed, "scalar_tensor": scalar_tensor,
    "asarray": asarray, "empty_strided": empty_strided, "frombuffer": frombuffer,
    "as_strided": as_strided,
    "unsafe_split": unsafe_split, "unsafe_chunk": unsafe_chunk,
    "nonzero_static": nonzero_static, "real": real, "imag": imag, "conj": conj,
    "resolve_conj": resolve_conj, "resolve_neg": resolve_neg, "is_conj": is_conj,
    "is_neg": is_neg, "angle": angle, "bitwise_left_shift": bitwise_left_shift,
    "bitwise_right_shift": bitwise_right_shift, "constant_pad_nd": constant_pad_nd,
    "fill": fill, "empty_permuted": empty_permuted, "resize_as_": resize_as_,
    "conj_physical": conj_physical,
    **{name: _copied(fn, name) for name, fn in _COPY_FORMS.items()},
})


# --- the matching methods ------------------------------------------------------------------------
def _cpu_values(self: Tensor, op: str) -> None:
    if self.backend.device_id is not None:
        raise DeviceError(f"{op} is only implemented on CPU tensors, got one on {self.device}")
    if self.requires_grad:
        raise GradError(f"{op}: cannot call a Python function on the values of a tensor that "
                        "requires grad (it is not differentiable); use x.detach()")
    self._concrete(op)


def _map_values(self: Tensor, op: str, fn: Callable, *others) -> Tensor:
    _cpu_values(self, op)
    np = B.np
    arrs = [np.broadcast_to(o._data if isinstance(o, Tensor) else np.asarray(o), self.shape)
            for o in others]
    out = np.frompyfunc(fn, 1 + len(others), 1)(self._data, *arrs)
    self._data[...] = np.asarray(out, dtype=object).astype(self.dtype)
    self._bump()
    return self


def _apply_(self, callable: Callable) -> Tensor:  # noqa: A002  (PyTorch's name)
    """Replace each element by ``callable(element)`` in place (CPU, slow: Python per element)."""
    return _map_values(self, "apply_", callable)


def _map_(self, tensor: Tensor, callable: Callable) -> Tensor:  # noqa: A002
    """Replace each element by ``callable(element, other)``, ``tensor`` broadcast to this."""
    return _map_values(self, "map_", callable, tensor)


def _map2_(self, x: Tensor, y: Tensor, callable: Callable) -> Tensor:  # noqa: A002
    """Replace each element by ``callable(element, x_element, y_element)`` in place."""
    return _map_values(self, "map2_", callable, x, y)


def _resize_(self, *sizes, memory_format=None) -> Tensor:
    """PyTorch's ``resize_``: the elements in row-major order, cut or extended to the new
    number and reshaped; refused for a tensor that requires grad (also under no_grad, as
    PyTorch's). As PyTorch's storage: the memory from the tensor's offset is read row-major
    (a transposed tensor's strides are reset) and only grows, so a tensor shrunk and grown
    again gets its old values back; elements beyond the memory are zeros (PyTorch's are
    uninitialised)."""
    if self.requires_grad:
        raise GradError("resize_: cannot resize a tensor that requires grad")
    if type(self) is BatchTracer:
        raise TypeError("resize_: inside vmap a batched tensor cannot change its shape in "
                        "place; build the result out of place (reshape, pad, a slice)")
    self._concrete("resize_")
    shape = _shape_arg(sizes)
    if any(s < 0 for s in shape):
        raise ValueError(f"resize_: sizes must be non-negative, got {list(shape)}")
    xp = self.backend.xp
    n = 1
    for s in shape:
        n *= s
    if tuple(shape) == tuple(self.shape):  # as PyTorch's: the same shape changes nothing
        return self
    a = self._data
    root = _root(a)
    start = _storage_offset(self)
    flat_root = root.flags.c_contiguous and root.dtype == a.dtype
    if flat_root and start + n <= root.size:  # the memory from the offset, read row-major
        new = root.reshape(-1)[start:start + n]  # (strides reset, as PyTorch's)
    elif flat_root:
        new = xp.zeros(start + n, self.dtype)  # the memory grows, old values kept
        new[:root.size] = root.reshape(-1)
        new = new[start:]
    else:
        flat = a.reshape(-1)
        new = (xp.ascontiguousarray(flat[:n]) if n <= flat.size else
               xp.concatenate([flat, xp.zeros(n - flat.size, self.dtype)]))
    self._data = new.reshape(shape)
    self._bump()
    return self


def _set_(self, source=None, storage_offset: int | None = None, size=None,
          stride=None) -> Tensor:
    """PyTorch's ``set_``: this tensor takes ``source``'s memory, shape and strides (writes
    through either reach both), keeping its ``requires_grad`` and its place among the
    parameters, as ``t.data = source``; with ``size`` (and ``stride``, row-major by default;
    ``storage_offset`` in elements from the start of the memory ``source`` views), the view of
    that memory they describe, within source's elements; with no source, an empty tensor.
    Refused for a leaf that requires grad while recording, for a tensor in a recorded graph,
    and for another dtype or device, as PyTorch's."""
    name = "set_"
    self._check_inplace(name)
    if type(self) is BatchTracer:
        raise TypeError("set_: inside vmap a batched tensor cannot take other memory; build "
                        "the result out of place")
    if self.node is not None and modes().grad_enabled:
        raise GradError("set_: cannot replace the memory of a tensor that is part of a recorded "
                        "graph; detach() it first")
    self._concrete(name)
    if source is None:
        if size is not None or stride is not None or storage_offset is not None:
            raise TypeError("set_: size, stride and storage_offset need a source")
        new = Tensor._of(self.backend.xp.empty((0,), self.dtype))
    else:
        if not isinstance(source, Tensor) or type(source) is BatchTracer:
            raise TypeError(f"set_: expected a tensor source, got {type(source).__name__}")
        if source.dtype != self.dtype:
            raise DTypeError(f"set_: cannot set a {self.dtype} tensor to the memory of a "
                             f"{source.dtype} one; convert the source first")
        if source.device != self.device:
            raise DeviceError(f"set_: the source is on {source.device}, this tensor on "
                              f"{self.device}; move one first")
        new = Tensor._of(source._data)
        if size is not None:
            size = _shape_arg((size,))
            if stride is None:
                stride, step = [], 1
                for n in reversed(size):
                    stride.insert(0, step)
                    step *= builtins.max(int(n), 1)
            _as_strided_(new, size, stride, storage_offset)
        elif stride is not None or storage_offset is not None:
            raise TypeError("set_: stride and storage_offset need a size")
    Tensor.data.fset(self, new._data)
    self._bump()
    return self


def _resize_as_(self, the_template: Tensor, memory_format=None) -> Tensor:
    """``resize_`` to ``the_template``'s shape."""
    return _resize_(self, *the_template.shape)


def _share_memory_(self) -> Tensor:
    """PyTorch's ``share_memory_``: move a CPU tensor's values into shared memory (an
    anonymous shared mapping), so processes forked afterwards (``multiprocessing`` with the
    'fork' start method, as DataLoader workers on Linux) see each other's in-place writes.
    Spawned processes get a pickled copy instead (NumPy arrays pickle by value), and views
    taken before the move keep the old memory. GPU tensors are left as they are (as
    PyTorch's)."""
    if self.backend.device_id is not None or _is_shared(self):
        return self
    if type(self) is BatchTracer:
        raise TypeError("share_memory_: a batched tensor inside vmap cannot be moved")
    self._concrete("share_memory_")
    a = self._data
    buf = mmap.mmap(-1, builtins.max(a.nbytes, 1))
    shared = B.np.frombuffer(buf, dtype=a.dtype, count=a.size).reshape(a.shape)
    shared[...] = a
    self._data = shared
    return self


def _is_shared(self) -> bool:
    """PyTorch's ``is_shared``: whether the values live in shared memory (after
    ``share_memory_``; a GPU tensor counts as shared, as PyTorch's)."""
    if self.backend.device_id is not None:
        return True
    buf = _root(self._data).base
    return isinstance(buf.obj if isinstance(buf, memoryview) else buf, mmap.mmap)


def _as_subclass(self, cls) -> Tensor:
    """PyTorch's ``as_subclass``: the same values as an instance of ``cls`` (a subclass of
    Tensor), sharing memory and attached to the graph: gradients flow back to ``self``."""
    if not (isinstance(cls, type) and issubclass(cls, Tensor)):
        raise TypeError(f"as_subclass: cls must be a subclass of nodegrad.Tensor, got {cls!r}")
    src = _reshape_view(self) if self.requires_grad else self
    out = Tensor.__new__(cls)
    Tensor.__init__(out, src._data, src.node, src.requires_grad)
    return out


def _reshape_view(self: Tensor) -> Tensor:
    """``self`` through one recorded identity op (a view of its memory with a graph node)."""
    return S.reshape(self, tuple(self.shape))


def _chalf(self, memory_format=None) -> Tensor:
    raise DTypeError("chalf: NumPy, and so nodegrad, has no complex32 (chalf) dtype; the "
                     "complex dtypes are complex64 (.cfloat()) and complex128 (.cdouble())")


_SEGMENT_REDUCES = ("sum", "mean", "max", "amax", "min", "amin", "prod")


def segment_reduce(data, reduce: str, *, lengths=None, indices=None, offsets=None,
                   axis: int = 0, unsafe: bool = False, initial=None) -> Tensor:
    """PyTorch's ``segment_reduce``: ``data`` cut along ``axis`` into consecutive segments of
    ``lengths`` (or between ``offsets``), each reduced by ``reduce`` ('sum', 'mean', 'max' /
    'amax', 'min' / 'amin', 'prod'). ``lengths`` has shape ``data.shape[:axis] + (S,)``.
    An empty segment gives ``initial`` if given, else 0 (sum), 1 (prod), -inf (max), inf (min)
    or NaN (mean); with ``initial`` each segment also reduces it in (a mean adds it to the sum
    and divides by the length, as PyTorch's). Differentiable in ``data`` (ties of max and min
    share the gradient)."""
    op = "segment_reduce"
    if reduce not in _SEGMENT_REDUCES:
        raise ValueError(f"{op}: reduce must be one of sum, prod, mean, amax (max) or amin "
                         f"(min), got {reduce!r}")
    if not isinstance(data, Tensor) or not B.is_float(data.dtype):
        raise DTypeError(f"{op}: data must be a floating-point tensor, got "
                         f"{getattr(data, 'dtype', type(data).__name__)}")
    if indices is not None:
        raise NotImplementedError(f"{op}: indices-based reduction is not supported (as in "
                                  "PyTorch); pass lengths or offsets")
    if (lengths is None) == (offsets is None):
        raise ValueError(f"{op}: pass exactly one of lengths and offsets")
    np = B.np
    ax = S.norm_axis(axis, data.ndim, op)
    if lengths is not None:
        lens = np.asarray(lengths.numpy() if isinstance(lengths, Tensor) else lengths)
    else:
        offs = np.asarray(offsets.numpy() if isinstance(offsets, Tensor) else offsets)
        lens = np.diff(offs, axis=-1)
        if offs.ndim and offs.shape[-1] and bool((offs[..., 0] != 0).any()) and not unsafe:
            raise ValueError(f"{op}: offsets must start at 0, got {offs.tolist()}")
    if lens.dtype.kind not in "iu" or lens.ndim != ax + 1 or \
            tuple(lens.shape[:-1]) != tuple(data.shape[:ax]):
        raise ShapeError(f"{op}: lengths must be integers of shape data.shape[:axis] + (S,) = "
                         f"{tuple(data.shape[:ax])} + (S,), got {lens.dtype} {lens.shape}")
    if bool((lens < 0).any()):
        raise ValueError(f"{op}: lengths must be non-negative, got {lens.tolist()}")
    if not unsafe and bool((lens.sum(axis=-1) != data.shape[ax]).any()):
        raise ValueError(f"{op}: each row of lengths must add up to data.shape[{ax}] = "
                         f"{data.shape[ax]}, got sums {lens.sum(axis=-1).tolist()}")
    rest = tuple(data.shape[ax + 1:])
    kind = {"amax": "max", "amin": "min"}.get(reduce, reduce)
    empty = {"sum": 0.0, "prod": 1.0, "max": -math.inf, "min": math.inf, "mean": math.nan}
    rows = []
    for lead in np.ndindex(*lens.shape[:-1]):
        segs, start = [], 0
        for n in lens[lead].tolist():
            piece = data[lead + (slice(start, start + n),)]
            start += n
            if n == 0:
                value = empty[kind] if initial is None else initial
                segs.append(full(rest, value, dtype=data.dtype, device=data.device))
                continue
            if kind in ("max", "min"):
                r = (_reduce.amax if kind == "max" else _reduce.amin)(piece, 0)
                if initial is not None:
                    r = (E.maximum if kind == "max" else E.minimum)(r, initial)
            elif kind == "prod":
                r = piece.prod(dim=0) * (1 if initial is None else initial)
            else:
                r = _reduce.sum(piece, 0) + (0 if initial is None else initial)
                if kind == "mean":
                    r = r / n
            segs.append(E.astype(r, data.dtype))
        rows.append(S.stack(segs, 0) if segs else
                    full((0,) + rest, 0, dtype=data.dtype, device=data.device))
    out = S.stack(rows, 0)
    return S.reshape(out, tuple(lens.shape) + rest)


def _new_method(self, *args, device=None) -> Tensor:
    """PyTorch's deprecated ``x.new(...)``: no arguments an empty tensor, ints (or a Size) an
    uninitialised (here zero) tensor of that shape, a sequence a tensor of those values, all in
    ``x``'s dtype and on its device; a tensor of ``x``'s dtype is returned sharing memory."""
    dev = self.device if device is None else device
    if not args:
        return full((0,), 0, dtype=self.dtype, device=dev)
    if len(args) == 1 and isinstance(args[0], Tensor):
        if args[0].dtype != self.dtype:
            raise TypeError(f"new: expected a tensor of dtype {self.dtype}, got "
                            f"{args[0].dtype}")
        return Tensor._of(args[0]._data)
    if len(args) == 1 and isinstance(args[0], Size):
        args = tuple(args[0])
    if all(map(_is_size, args)):  # ints, NumPy integers, 0-d integer tensors: PyTorch's sizes
        return full(tuple(int(a) for a in args), 0, dtype=self.dtype, device=dev)
    if len(args) == 1:
        return tensor(args[0], dtype=self.dtype, device=dev)
    raise TypeError(f"new: expected sizes (ints), one sequence of values or one tensor, got "
                    f"{', '.join(type(a).__name__ for a in args)}")


def _dim_order(self, *, ambiguity_check: bool = False) -> tuple:
    """The dims from outermost to innermost in memory (largest stride first)."""
    st = _stride(self)
    return tuple(sorted(range(self.ndim), key=lambda d: -st[d]))


def _pin_memory(self, device=None) -> Tensor:
    """``self`` on the CPU (host arrays need no pinning to be copied to a GPU here); a GPU
    tensor cannot be pinned, as in PyTorch."""
    if self.backend.device_id is not None:
        raise DeviceError(f"pin_memory: only CPU tensors can be pinned, got one on "
                          f"{self.device}")
    return self


_METHODS.update({
    "as_strided": as_strided, "unsafe_split": unsafe_split,
    "unsafe_chunk": unsafe_chunk, "nonzero_static": nonzero_static, "apply_": _apply_,
    "map_": _map_, "map2_": _map2_, "resize_": _resize_, "resize_as_": _resize_as_, "set_": _set_,
    "new": _new_method, "dim_order": _dim_order, "pin_memory": _pin_memory,
    "to_dense": lambda self, dtype=None, *, masked_grad=None: (
        self if dtype is None else E.astype(self, dtype)),
    "is_pinned": lambda self, device=None: False,
    "is_inference": lambda self: False,
    "as_strided_": _as_strided_, "as_strided_scatter": as_strided_scatter,
    "share_memory_": _share_memory_, "is_shared": _is_shared, "as_subclass": _as_subclass,
    "chalf": _chalf,
})


def get_device(input) -> int:
    """PyTorch's ``torch.get_device``: -1 for a CPU tensor, else its CUDA device's index."""
    if not isinstance(input, Tensor):
        raise TypeError(f"get_device: expected a tensor, got {type(input).__name__}")
    return _get_device(input)


def is_inference(input) -> bool:
    """PyTorch's ``torch.is_inference``: False. Tensors made under ``inference_mode`` are
    plain tensors without a graph here; there are no inference tensors to tell apart."""
    if not isinstance(input, Tensor):
        raise TypeError(f"is_inference: expected a tensor, got {type(input).__name__}")
    return False


def as_strided_(input, size, stride, storage_offset: int | None = None) -> Tensor:
    """PyTorch's ``torch.as_strided_``: ``input.as_strided_(size, stride, storage_offset)``."""
    if not isinstance(input, Tensor):
        raise TypeError(f"as_strided_: expected a tensor, got {type(input).__name__}")
    return _as_strided_(input, size, stride, storage_offset)


def unsafe_split_with_sizes(input, split_sizes, dim: int = 0) -> tuple:
    """PyTorch's ``unsafe_split_with_sizes``: ``split_with_sizes`` (the pieces never alias
    here, so it is safe)."""
    return tuple(_slicing.split_with_sizes(input, list(split_sizes), dim))


def _is_set_to(self, tensor: Tensor) -> bool:
    """PyTorch's ``is_set_to``: whether both tensors view the same memory with one shape,
    one set of strides and one offset."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"is_set_to: expected a tensor, got {type(tensor).__name__}")
    a, b = self._data, tensor._data
    return (self.device == tensor.device and a.dtype == b.dtype and a.shape == b.shape
            and a.strides == b.strides and _address(a) == _address(b))


def to_dlpack(tensor: Tensor):
    """PyTorch's ``torch.to_dlpack``: a DLPack capsule of the tensor's array (shared memory),
    for another library's ``from_dlpack``."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"to_dlpack: expected a tensor, got {type(tensor).__name__}")
    return tensor.__dlpack__()


_METHODS.update({"unsafe_split_with_sizes": unsafe_split_with_sizes,
                 "is_set_to": _is_set_to,
                 "const_data_ptr": lambda self: _address(self._data)})


_FUNCTIONS.update({
    "unsafe_split_with_sizes": unsafe_split_with_sizes, "to_dlpack": to_dlpack,
    "view_as_real_copy": _copied(view_as_real, "view_as_real_copy"),
    "view_as_complex_copy": _copied(view_as_complex, "view_as_complex_copy"),
    "as_strided_": as_strided_, "as_strided_scatter": as_strided_scatter,
    "segment_reduce": segment_reduce, "get_device": get_device, "is_inference": is_inference,
})

_MORE_PROPERTIES = {
    "layout": property(lambda self: strided, doc="Always nodegrad.strided (dense arrays)."),
    "is_sparse": property(lambda self: False, doc="False: a Tensor is dense (see ng.sparse)."),
    "is_sparse_csr": property(lambda self: False, doc="False: a Tensor is dense."),
    "is_meta": property(lambda self: False, doc="False: every tensor holds values."),
    "is_quantized": property(lambda self: False, doc="False: no quantized dtypes."),
    "output_nr": property(lambda self: 0, doc="0: each recorded node has one output."),
}


# === installation ===============================================================================
def _taken() -> set:
    """The names :mod:`nodegrad.ops` and the other families already give (left to them)."""
    pkg = sys.modules[__package__]
    names = set(vars(pkg))
    for mod in (_products, _special, _slicing):
        names.update(getattr(mod, "__all__", ()))
    return names


def _install() -> list:
    """Attach the methods, properties and in-place forms; return the function names to export."""
    table = {k: v for k, v in _METHODS.items() if not hasattr(Tensor, k)}
    table["register_post_accumulate_grad_hook"] = _register_post_accumulate_grad_hook
    table.update({k: v for k, v in {
        "bernoulli_": _random.bernoulli_, "cauchy_": _random.cauchy_,
        "exponential_": _random.exponential_, "geometric_": _random.geometric_,
        "log_normal_": _random.log_normal_, "random_": _random.random_,
    }.items() if not hasattr(Tensor, k)})
    table["type"] = _type_method  # methods.py's astype, plus the no-argument form
    register(table)
    for k, prop in {**_PROPERTIES, **_MORE_PROPERTIES}.items():
        if not hasattr(Tensor, k):
            setattr(Tensor, k, prop)
    more = {}
    for name, base in _RESHAPE_INPLACE.items():
        if hasattr(Tensor, base) and not hasattr(Tensor, name):
            more[name] = _reshape_inplace_method(name, base)
    for name, (base, fn) in _SPECIAL_INPLACE.items():
        if (base is None or hasattr(Tensor, base)) and not hasattr(Tensor, name):
            more[name] = fn
    for name in _TORCH_INPLACE:
        if name not in more and hasattr(Tensor, name[:-1]) and not hasattr(Tensor, name):
            more[name] = _inplace_method(name)
    register(more)
    # the augmented assignments PyTorch does in place (``h ^= k * prime``, ``i //= 2``), as its
    # in-place methods: without them Python rebinds the name to a new tensor, and a view of
    # the tensor, or another name for it, keeps the old values
    augmented = {"__ifloordiv__": "floor_divide_", "__imod__": "remainder_", "__ipow__": "pow_",
                 "__iand__": "bitwise_and_", "__ior__": "bitwise_or_",
                 "__ixor__": "bitwise_xor_", "__ilshift__": "bitwise_left_shift_",
                 "__irshift__": "bitwise_right_shift_"}
    register({k: getattr(Tensor, m) for k, m in augmented.items()
              if hasattr(Tensor, m) and not hasattr(Tensor, k)})
    for name in ("zero_", "fill_", "copy_"):
        setattr(Tensor, name, _assigning(name))
    Tensor.div_, Tensor.divide_ = _div_inplace(Tensor.div_), _div_inplace(Tensor.divide_)

    taken = _taken()
    exported = [k for k in _FUNCTIONS if k not in taken]
    mod = sys.modules[__name__]
    for name in _TORCH_TOP_INPLACE:
        if name not in taken and hasattr(Tensor, name):
            setattr(mod, name, _top_level(name))
            exported.append(name)
    for name in ("celu_", "selu_", "threshold_"):  # rrelu_ is nn.functional's (its generator)
        if name not in taken:
            exported.append(name)
    return exported


def _export(names: list) -> None:
    mod = sys.modules[__name__]
    for name in names:
        if name in _FUNCTIONS:
            setattr(mod, name, _FUNCTIONS[name])


__all__: list[str] = _install()
_export(__all__)
