"""PyTorch's other names for existing ops, the in-place ``*_`` forms and tensor metadata.

Imported last by :mod:`nodegrad.ops`, so the in-place forms cover every family's methods.

Aliases (``ng.arccos``, ``x.multiply``, ``ng.sub(x, y, alpha=2)``, ...) are the existing ops
under PyTorch's names; a name another family or :mod:`nodegrad.ops` already defines is left to
it. One name means two things: ``ng.equal`` stays NumPy's elementwise ``x == y`` (PyTorch's
``torch.eq``), while the method ``x.equal(y)`` is PyTorch's ``Tensor.equal``, one Python bool
(same shape and values).

An in-place form ``x.op_(...)`` computes ``x.op(...)`` and stores it in ``x``, as PyTorch's:

* while a graph is being recorded (grad mode on and ``x`` or an operand requires grad), the
  out-of-place result is recorded and ``x`` is rebound to it; its version counter moves on, so
  a backward that saved the old value refuses, and a leaf that requires grad refuses at once;
* otherwise the result is written into ``x``'s array; it must have ``x``'s shape (an operand
  cannot grow ``x`` by broadcasting: ShapeError) and a dtype ``x`` can hold (an int tensor's
  ``sqrt_`` is a DTypeError, as PyTorch's "result type Float can't be cast to Long"); under
  :func:`nodegrad.jit` the write is recorded so each replay writes in place too.

The metadata forms (``t_``, ``transpose_``, ``squeeze_``, ``unsqueeze_``, ``swapaxes_``,
``swapdims_``) rebind ``x`` to the reshaped value instead of writing.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from functools import partial

from .. import _backend as B
from .. import autodiff as _autodiff
from .. import random as _random
from ..autodiff import RemovableHandle, creation_site, modes
from ..batching import BatchTracer, rebind_batched, refuse_batched_into
from ..errors import DeviceError, DTypeError, GradError, ShapeError
from ..tensor import Tensor, _shape_arg, full, tensor
from . import elementwise as E
from . import index as I
from . import products as _products
from . import shape as S
from . import slicing as _slicing
from . import special as _special
from .methods import register

_Number = int | float | bool


# === aliases: functions =========================================================================
def sub(input, other, *, alpha=1) -> Tensor:
    """PyTorch's sub: ``input - alpha * other``."""
    return E.subtract(input, _scaled("sub", input, other, alpha))


def rsub(input, other, *, alpha=1) -> Tensor:
    """PyTorch's rsub: ``other - alpha * input`` (sub with the operands swapped)."""
    return E.subtract(other, _scaled("rsub", other, input, alpha))


def _scaled(op: str, base, x, alpha):
    if alpha == 1:
        return x
    kinds = [v.dtype.kind for v in (base, x) if isinstance(v, Tensor)]
    if isinstance(alpha, float) and kinds and all(k in "iub" for k in kinds):
        raise DTypeError(f"{op}: for integer tensors alpha must not be a float, got {alpha!r}")
    return E.multiply(x, alpha)


def clamp(input, min=None, max=None) -> Tensor:  # noqa: A002  (PyTorch's names)
    """PyTorch's clamp: ``input`` limited to [min, max]; at least one bound is required."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min or max must not be None")
    return E.clip(input, min, max)


def concat(tensors, dim: int = 0) -> Tensor:
    """PyTorch's concat (cat): join ``tensors`` along ``dim``."""
    return S.concatenate(tensors, dim)


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


def adjoint(input) -> Tensor:
    """PyTorch's adjoint: the last two axes swapped (and conjugated: real tensors only)."""
    return _matrix_transpose(input, "adjoint()")


def is_floating_point(input) -> bool:
    """Whether ``input`` has a floating-point dtype."""
    return input.dtype.kind == "f"


def is_complex(input) -> bool:
    """Whether ``input`` has a complex dtype."""
    return input.dtype.kind == "c"


_FUNCTIONS: dict[str, Callable] = {
    "absolute": E.abs, "arccos": E.acos, "arccosh": E.acosh, "arcsin": E.asin,
    "arcsinh": E.asinh, "arctan": E.atan, "arctan2": E.atan2, "arctanh": E.atanh,
    "true_divide": E.divide, "eq": E.equal, "ne": E.not_equal, "lt": E.less,
    "le": E.less_equal, "gt": E.greater, "ge": E.greater_equal, "mul": E.multiply,
    "sub": sub, "neg": E.negative, "div": E.div, "pow": E.power, "rsub": rsub, "clamp": clamp,
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
    return bool(self.backend.xp.array_equal(self.data, other.data))


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


def _contiguous_method(self, memory_format=None) -> Tensor:
    """``self`` when its array is C-contiguous, else a C-contiguous copy (differentiable)."""
    return self if self.data.flags.c_contiguous else S.copy(self)  # (array.copy() is C order)


def _stride(self, dim: int | None = None):
    """The strides in elements (PyTorch's), or the one of ``dim``."""
    item = self.data.itemsize
    strides = tuple(s // item for s in self.data.strides)
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


def _storage_offset(self) -> int:
    """Elements between the start of the memory this array views and its first element."""
    a = root = self.data
    while B.is_array(root.base):
        root = root.base
    return (_address(a) - _address(root)) // a.itemsize


def _matrix_transpose(x, what: str) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"tensor.{what} is only supported on matrices or batches of "
                         f"matrices; got shape {tuple(x.shape)}")
    if x.dtype.kind == "c":
        raise DTypeError(f"tensor.{what}: complex tensors are not supported (no conjugation)")
    return S.swapaxes(x, -1, -2)


def _H(self) -> Tensor:
    if self.ndim == 0:
        return self
    if self.ndim != 2:
        raise ShapeError(f"tensor.H is only supported on matrices (2-D tensors); got shape "
                         f"{tuple(self.shape)}")
    return _matrix_transpose(self, "H")


def _new(self, dtype, device):
    return (self.dtype if dtype is None else dtype), (self.device if device is None else device)


def _new_zeros(self, *size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Zeros of ``size``, with this tensor's dtype and device unless given."""
    d, dev = _new(self, dtype, device)
    return full(_shape_arg(size), 0, dtype=d, device=dev, requires_grad=requires_grad)


def _new_ones(self, *size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Ones of ``size``, with this tensor's dtype and device unless given."""
    d, dev = _new(self, dtype, device)
    return full(_shape_arg(size), 1, dtype=d, device=dev, requires_grad=requires_grad)


def _new_empty(self, *size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """An uninitialised tensor of ``size`` (zeros here), with this tensor's dtype and device."""
    return _new_zeros(self, *size, dtype=dtype, device=device, requires_grad=requires_grad)


def _new_full(self, size, fill_value, *, dtype=None, device=None,
              requires_grad: bool = False) -> Tensor:
    """``fill_value`` in ``size`` (a tuple), with this tensor's dtype and device unless given."""
    if not isinstance(size, list | tuple):
        raise TypeError(f"new_full: size must be a tuple of ints, got {type(size).__name__}")
    d, dev = _new(self, dtype, device)
    return full(tuple(size), fill_value, dtype=d, device=dev, requires_grad=requires_grad)


def _new_tensor(self, data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A copy of ``data`` with this tensor's dtype and device unless given (PyTorch's)."""
    d, dev = _new(self, dtype, device)
    return tensor(data, dtype=d, device=dev, requires_grad=requires_grad)


def _bfloat16(self, *args, **kwargs) -> Tensor:
    raise DTypeError("bfloat16: NumPy, and so nodegrad, has no bfloat16 dtype; the float dtypes "
                     "are float16 (.half()), float32 (.float()) and float64 (.double())")


def _get_device(self) -> int:
    """-1 on the CPU, else the CUDA device's index."""
    i = self.backend.device_id
    return -1 if i is None else i


def _is_signed(self) -> bool:
    """Whether the dtype holds negative values (PyTorch's: False for bool and uint8)."""
    return self.dtype.kind in "ifc"


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
    "contiguous": _contiguous_method,
    "is_contiguous": lambda self, memory_format=None: bool(self.data.flags.c_contiguous),
    "stride": _stride, "storage_offset": _storage_offset,
    "data_ptr": lambda self: _address(self.data),
    "element_size": lambda self: self.data.itemsize, "nelement": lambda self: self.data.size,
    "ndimension": lambda self: self.data.ndim, "is_floating_point": is_floating_point,
    "is_complex": is_complex, "is_signed": _is_signed, "get_device": _get_device,
    # constructors and casts
    "new_zeros": _new_zeros, "new_ones": _new_ones, "new_full": _new_full,
    "new_empty": _new_empty, "new_tensor": _new_tensor,
    "byte": lambda self: E.astype(self, B.np.dtype("uint8")),
    "char": lambda self: E.astype(self, B.np.dtype("int8")),
    "short": lambda self: E.astype(self, B.np.dtype("int16")),
    "bfloat16": _bfloat16,
}


# === in-place forms =============================================================================
def _alias(self: Tensor) -> Tensor:
    """Another handle on the same value and graph position, with its own version counter."""
    return Tensor(self.data, self.node, self.requires_grad)


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
    s = rec.slot.get(id(t.data))
    return s is None or not any(i.out == s and i.kind != "load" for i in rec.instrs)


def _rebind(self: Tensor, result: Tensor, name: str) -> Tensor:
    """Point ``self`` at ``result`` (value, graph position); the old value's version moves on."""
    rec = modes().jit
    if rec is not None and rec.fallback is None and _from_outside(rec, self):
        rec.fallback = (f"'{name}' rebinds a tensor the step did not make (at "
                        f"{creation_site()})")
    self._bump()
    self.data, self.node, self.requires_grad = result.data, result.node, result.requires_grad
    if result._version is not None:  # a node that saved result's array watches this counter
        self._version = result._version
    return self


def _fitted(self: Tensor, result, name: str) -> Tensor:
    """``result`` checked to fit in place into ``self``: a tensor of its shape, in a dtype it can
    hold (PyTorch's rule: no float into int, no number into bool)."""
    if not isinstance(result, Tensor):
        raise TypeError(f"{name}: the op gave {type(result).__name__}, not a tensor")
    if result.shape != self.shape:
        raise ShapeError(f"{name}: the result has shape {tuple(result.shape)}, which does not "
                         f"fit in place into shape {tuple(self.shape)} (an in-place op cannot "
                         "broadcast its tensor to a larger shape)")
    if result.dtype != self.dtype and not B.np.can_cast(result.dtype, self.dtype, "same_kind"):
        raise DTypeError(f"{name}: result type {result.dtype} can't be cast to the desired "
                         f"output type {self.dtype} of the tensor changed in place")
    return result


def _copy_into(a, r) -> None:
    B.backend_of(a).xp.copyto(a, r, casting="same_kind")


def apply_inplace(self: Tensor, name: str, fn: Callable, *args, **kwargs) -> Tensor:
    """Store ``fn(self, *args, **kwargs)`` in ``self`` with PyTorch's in-place semantics
    (see the module docstring); returns ``self``. ``name`` (``"exp_"``) is for errors."""
    if type(self) is BatchTracer:  # inside vmap: each example changes (torch.func's rule)
        result = fn(self, *args, **kwargs)
        if isinstance(result, Tensor) and result.dtype != self.dtype:
            result = _fitted(self, result, name).astype(self.dtype)
        return rebind_batched(name, self, result)
    _check_target(self, name)
    refuse_batched_into(name, *args, *kwargs.values())
    m = modes()
    if m.grad_enabled and (self.requires_grad or _any_requires_grad(args, kwargs)):
        _refuse_leaf(self, name)
        result = _fitted(self, fn(_alias(self), *args, **kwargs), name)
        return _rebind(self, E.astype(result, self.dtype), name)
    result = _fitted(self, fn(self, *args, **kwargs), name)
    try:
        rec = m.jit
        if rec is not None:  # under a jit trace: replayed in place on the same array
            rec.mutate(name, _copy_into, self, result)
        else:
            _copy_into(self.data, result.data)
    except ValueError as e:  # a read-only array (a broadcast view, a frozen NumPy array)
        raise ValueError(f"{name}: cannot write into this tensor's array ({e}); clone() it "
                         "first") from None
    self._bump()
    return self


def _inplace_method(name: str) -> Callable:
    base = name[:-1]

    def method(self, *args, **kwargs):
        return apply_inplace(self, name, getattr(Tensor, base), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"In place: ``x.{base}(...)`` stored into ``x``, which is returned."
    return method


def _reshape_inplace_method(name: str, base: str) -> Callable:
    def method(self, *args, **kwargs):
        _check_target(self, name)
        fn = getattr(Tensor, base)
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
        self.data = result.data  # a leaf stays a leaf (and keeps requires_grad)
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
        mask = be.xp.zeros(self.data.size, dtype=B.bool_)
        mask[0:end:step] = True
        mask = Tensor(mask.reshape(shape))
        value = Tensor(be.xp.asarray(fill_value, dtype=self.dtype))
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
        _check_target(input, name)
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


# === gradient hooks and retains_grad ===========================================================
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


_retain_grad = Tensor.retain_grad
_RETAINING: dict[int, tuple] = {}  # id(tensor) -> (weak reference to it, its retaining hook)


def _retains(self) -> tuple | None:
    entry = _RETAINING.get(id(self))
    node = self.node
    if (entry is None or entry[0]() is not self or node is None or node.hooks is None
            or not any(h is entry[1] for h in node.hooks)):
        return None
    return entry


def _retain_grad_once(self) -> None:
    """Keep ``.grad`` on a non-leaf after backward (leaves always keep it); calling it again
    changes nothing, as in PyTorch."""
    if self.node is None or _retains(self) is not None:
        return
    _retain_grad(self)
    key = id(self)
    _RETAINING[key] = (weakref.ref(self, partial(_forget, _RETAINING, key)), self.node.hooks[-1])


_PROPERTIES = {
    "H": property(_H, doc="The transpose of a matrix (real tensors; 0-d: itself)."),
    "mH": property(lambda self: _matrix_transpose(self, "mH"),
                   doc="The last two axes swapped (real tensors)."),
    "is_cpu": property(lambda self: self.backend.device_id is None, doc="On the CPU?"),
    "itemsize": property(lambda self: self.data.itemsize, doc="Bytes per element."),
    "retains_grad": property(lambda self: _retains(self) is not None,
                             doc="Whether retain_grad() keeps this non-leaf's .grad."),
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
    table["retain_grad"] = _retain_grad_once
    table.update({k: v for k, v in {
        "bernoulli_": _random.bernoulli_, "cauchy_": _random.cauchy_,
        "exponential_": _random.exponential_, "geometric_": _random.geometric_,
        "log_normal_": _random.log_normal_, "random_": _random.random_,
    }.items() if not hasattr(Tensor, k)})
    register(table)
    for k, prop in _PROPERTIES.items():
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
