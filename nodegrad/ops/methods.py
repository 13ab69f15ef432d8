"""Tensor operators and methods, attached in one table (JAX's array_methods pattern).

Methods follow PyTorch's names (``x.sum(dim=1)``, ``x.transpose(0, 1)``, ``x.view(...)``) and
also take NumPy's ``axis=``/``keepdims=``. ``x.max(dim=1)`` returns (values, indices) as in
PyTorch; ``x.max(axis=1)`` returns values as in NumPy. In-place operators mutate when no graph
is being recorded; otherwise they record the out-of-place op and rebind the tensor to it, and a
backward that saved the old value then refuses (as PyTorch's version counter does).
"""

from __future__ import annotations

import warnings
from collections import namedtuple

from .. import _backend as B
from ..autodiff import mode
from ..batching import BatchTracer, rebind_batched, recording, refuse_batched_into
from ..dtypes import can_store
from ..errors import DeviceError, DTypeError, GradError, ShapeError
from ..primitive import ROUNDS_NUMBER, Primitive, bind, int_range_error, low_number
from ..tensor import Tensor, check_layout
from . import elementwise as E
from . import index as I
from . import linalg as L
from . import nn as N
from . import reduce as R
from . import arrange as A
from . import arrange as AR
from .at import IndexUpdateHelper
from . import shape as S

MaxMin = namedtuple("MaxMin", ["values", "indices"])


def _axis(axis, dim):
    if dim is not None:
        if axis is not None:
            raise TypeError("pass either axis= (NumPy) or dim= (PyTorch), not both")
        return dim
    return axis


def _keep(keepdims, keepdim):
    return bool(keepdims or keepdim)


def _cast(self, dtype):
    """``self`` in ``dtype`` first, PyTorch's ``dtype=`` of a sum or a mean (None: as it is)."""
    return self if dtype is None else E.astype(self, dtype)


def _reducer(fn):
    def method(self, axis=None, keepdims=False, *, dim=None, keepdim=False, dtype=None):
        ax = _axis(axis, dim)
        if ax is not None and self.ndim == 0:  # PyTorch: a scalar's dim 0 / -1 is all of it
            ax = S.scalar_dims(ax, 0, fn.__name__)
        if dtype is not None and fn in (R.sum, R.mean):  # their own dtype= (a mean refuses
            return fn(self, ax, _keep(keepdims, keepdim), dtype=dtype)  # an integer dtype)
        out = fn(_cast(self, dtype), ax, _keep(keepdims, keepdim))
        if dtype is not None and out.dtype != dtype:  # an int64 sum asked for int32 (wraps
            out = E.astype(out, dtype)  # as PyTorch's int32 accumulation does)
        return out

    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__
    return method


_UNSET = object()


def _extreme(fn, argfn):
    def method(self, *args, axis=None, keepdims=_UNSET, dim=None, keepdim=False, other=None):
        if other is not None:  # x.max(other=y): PyTorch's keyword of the elementwise form
            if args or dim is not None or axis is not None or not isinstance(other, Tensor):
                raise TypeError(f"{fn.__name__}(other=): the elementwise form takes one tensor, "
                                f"got {type(other).__name__}")
            args = (other,)
        if len(args) > 2:
            raise TypeError(f"{fn.__name__}: expected at most 2 positional arguments (dim, "
                            f"keepdim), got {len(args)}")
        if args:
            first = args[0]
            if isinstance(first, Tensor):  # x.max(y): PyTorch's elementwise form
                return (E.maximum if fn is R.max else E.minimum)(self, first)
            if (isinstance(first, int | B.np.integer) and not isinstance(first, bool)
                    and keepdims is _UNSET):  # NumPy's keepdims= keeps NumPy's axis
                if dim is not None:  # x.max(1): PyTorch's dim, (values, indices)
                    raise TypeError(f"{fn.__name__}: got dim twice")
                dim = int(first)
                if len(args) > 1:
                    keepdim = args[1]
            else:  # a tuple of axes or None: NumPy's axis
                axis = first
                if len(args) > 1:
                    keepdims = args[1]
        k = _keep(False if keepdims is _UNSET else keepdims, keepdim)
        if (dim is not None or axis is not None) and self.ndim == 0:  # a scalar's dim 0 / -1
            S.scalar_dims(_axis(axis, dim), 0, fn.__name__)  # (PyTorch): the whole of it
            if dim is None:
                return fn(self, None, k)
            return MaxMin(fn(self, None, k), argfn(self, None, k))
        if dim is not None and axis is None:
            R.ordered(fn.__name__, self)  # named as called (the indices come first below)
            R.nonempty(fn.__name__, self.shape, S.norm_axis(dim, self.ndim, fn.__name__),
                       IndexError)  # PyTorch's error type for x.max(dim) over an empty dim
            idx = argfn(self, dim, True)
            # the values as picked at the indices: their gradient goes to that one entry of
            # tied extremes, as PyTorch's (amax and max() without dim share it among ties)
            vals = I.take_along_axis(self, idx, dim)
            if not k:
                vals, idx = S.squeeze(vals, dim), S.squeeze(idx, dim)
            return MaxMin(vals, idx)
        return fn(self, axis, k)

    method.__name__ = fn.__name__
    method.__doc__ = fn.__doc__ + (" With a dim (``x.max(1)``, ``dim=1``: PyTorch's) returns "
                                   "(values, indices); ``axis=`` is NumPy's, values only.")
    return method



def _stat(fn):
    def method(self, *args, axis=_UNSET, ddof=None, keepdims=_UNSET, dim=_UNSET,
               keepdim=_UNSET, correction=None, unbiased=None):
        # PyTorch's method: x.std(), x.std(1), x.std(1, True, True) (dim, unbiased, keepdim)
        # and its keywords use correction=1; NumPy's keywords (axis=, ddof=, keepdims=) ddof=0
        name = fn.__name__
        if len(args) > 3:
            raise TypeError(f"{name}: at most (dim, unbiased, keepdim) positionally, got "
                            f"{len(args)} arguments")
        if args and isinstance(args[0], bool):  # x.std(True): PyTorch's unbiased, not a dim
            args = (None,) + args
        if args:
            if dim is not _UNSET or axis is not _UNSET:
                raise TypeError(f"{name}: got the dim positionally and by keyword")
            dim = args[0]
        if len(args) > 1:
            if unbiased is not None or correction is not None or ddof is not None:
                raise TypeError(f"{name}: got the correction positionally and by keyword")
            if isinstance(args[1], bool):
                unbiased = args[1]
            else:
                correction = args[1]
        if len(args) > 2:
            if keepdim is not _UNSET or keepdims is not _UNSET:
                raise TypeError(f"{name}: got keepdim positionally and by keyword")
            keepdim = args[2]
        numpy_call = axis is not _UNSET or keepdims is not _UNSET or ddof is not None
        if correction is None:
            correction = ddof if ddof is not None else (
                int(unbiased) if unbiased is not None else 0 if numpy_call else 1)
        elif ddof is not None or unbiased is not None:
            raise TypeError(f"{name}: pass one of ddof= (NumPy), correction= or "
                            "unbiased= (PyTorch)")
        ax = _axis(None if axis is _UNSET else axis, None if dim is _UNSET else dim)
        if ax is not None and self.ndim == 0:  # PyTorch: a scalar's dim 0 / -1 is all of it
            ax = S.scalar_dims(ax, 0, name)
        keep = _keep(keepdims is not _UNSET and keepdims, keepdim is not _UNSET and keepdim)
        return fn(self, ax, correction, keep)

    method.__name__ = fn.__name__
    method.__doc__ = (f"PyTorch's ``x.{fn.__name__}(dim, unbiased, keepdim)``: with no NumPy "
                      "keyword the correction is 1 (N - 1), as PyTorch's; NumPy's "
                      "``axis=``/``ddof=``/``keepdims=`` give NumPy's ddof=0 default.")
    return method


def _cast_method(dtype, name: str):
    """``x.float()`` and the like: ``x`` in ``dtype``; PyTorch's ``memory_format=`` is
    accepted (nodegrad's arrays have one layout, so the values are the same)."""
    def method(self, memory_format=None):
        if memory_format is not None:
            check_layout(name, memory_format=memory_format)
        return E.astype(self, dtype)

    method.__name__ = name
    method.__doc__ = f"The tensor in {B.np.dtype(dtype).name} (PyTorch's ``{name}()``)."
    return method


_FORMAT_RANKS = {"channels_last": 4, "channels_last_3d": 5}


def fits_memory_format(op: str, x: Tensor, memory_format, strict: bool) -> bool:
    """Whether ``x``'s rank suits ``memory_format`` (``channels_last`` needs 4 dims,
    ``channels_last_3d`` 5); ``strict`` raises instead, as PyTorch's ``to`` and ``contiguous``
    do, so a layout meant for another rank is not silently ignored."""
    check_layout(op, memory_format=memory_format)
    name = getattr(memory_format, "name", None) or str(memory_format).removeprefix("torch.")
    rank = _FORMAT_RANKS.get(name)
    if rank is None or x.ndim == rank:
        return True
    if strict:
        raise ShapeError(f"{op}: memory_format {name} needs a {rank}-d tensor, got shape "
                         f"{tuple(x.shape)}")
    return False


def _contiguous(self, memory_format=None):
    """``self`` when its array is C-contiguous, else a C-contiguous copy (differentiable);
    PyTorch's ``memory_format=`` is accepted (every layout holds the same values) where it
    suits the tensor's rank."""
    if memory_format is not None:
        fits_memory_format("contiguous", self, memory_format, strict=True)
    return self if self._data.flags.c_contiguous else S.copy(self)  # (array.copy() is C order)


def _transpose_method(self, *dims, dim0=None, dim1=None):
    """Two dims: swap them (PyTorch; also as ``dim0=, dim1=``). A full permutation: permute
    (NumPy). None: reverse."""
    if dim0 is not None or dim1 is not None:
        if len(dims) == 1 and dim0 is None and dim1 is not None:  # x.transpose(0, dim1=1)
            dims = (dims[0], dim1)
        elif dims or dim0 is None or dim1 is None:
            raise TypeError("transpose: pass both dim0= and dim1=, or the dims positionally")
        else:
            dims = (dim0, dim1)
    if len(dims) == 2 and all(isinstance(d, int | B.np.integer) for d in dims):
        return S.swapaxes(self, int(dims[0]), int(dims[1]))
    if not dims:
        return S.transpose(self)
    return S.transpose(self, S.shape_arg(dims))


def _to(self, *args, device=None, dtype=None, non_blocking: bool = False,  # noqa: ARG001
        copy: bool = False, memory_format=None):
    """``to(device)``, ``to(dtype)``, ``to(other)`` or both, as PyTorch's (its trailing
    positional bools are ``non_blocking`` then ``copy``); differentiable. ``copy=True`` always
    returns a new tensor; ``non_blocking`` and ``memory_format`` change nothing here."""
    flags = []
    for a in args:
        if isinstance(a, bool):
            flags.append(a)
        elif isinstance(a, str) or isinstance(a, B.Backend):
            device = a
        elif isinstance(a, Tensor):
            device, dtype = a.device, a.dtype
        else:
            dtype = a
    if flags:
        if len(flags) > 2:
            raise TypeError(f"to: at most two positional flags (non_blocking, copy), got {flags}")
        copy = flags[1] if len(flags) > 1 else copy  # flags[0]: non_blocking
    if memory_format is not None:
        fits_memory_format("to", self, memory_format, strict=True)
    out = self
    if dtype is not None:
        out = E.astype(out, dtype)
    if device is not None:
        out = S.to_device(out, device)
    if copy and out is self:
        out = S.copy(self)
    return out


def _needs_graph(self, other) -> bool:
    return mode.grad_enabled and (self.requires_grad or (isinstance(other, Tensor)
                                                         and other.requires_grad))


def _rebind(self, result: Tensor) -> Tensor:
    old = self._version
    self._rebound(result._data)  # the new value's readers watch the result's counter
    self._data, self.node, self.requires_grad = result._data, result.node, result.requires_grad
    if result._version is not None:
        self._version = result._version
    if old is not None and len(old) > 1:  # views of the old array show the new value
        I.refresh_views(self, old[1])
    return self


def inplace_source(self) -> Tensor:
    """Another handle on the same value and graph position, with its own version counter: what
    an in-place op recorded on ``self`` computes from. Of a tensor outside the graph, a copy:
    its memory takes the result afterwards (``Tensor._rebound``), so no node saves memory that
    changes under it."""
    d = self._data
    if self.node is None and not self.requires_grad:
        d = d.copy()
    return Tensor._of(d, self.node, self.requires_grad)


# ``t == "mean"`` or ``t == [1, 2]``: not compared elementwise, Python's answer (False), as
# PyTorch's (``reduction == "mean"`` where reduction may be a tensor)
_NOT_COMPARED = (str, bytes, list, tuple, dict, set)

_UFUNCS = {"add": "add", "subtract": "subtract", "multiply": "multiply", "divide": "true_divide"}


def _inplace(op, name):
    ufunc = _UFUNCS[op.name]
    scaled = op.name in ("add", "subtract")  # x.add_(y, alpha=a): PyTorch's x ± a·y

    def method(self, other, *rest, alpha=1):
        if rest and scaled:  # x.add_(alpha, other), PyTorch's deprecated order
            alpha, (other,) = _alpha_first(name, other, rest, alpha)
        elif rest:
            raise TypeError(f"{name}: takes 1 positional operand, got {1 + len(rest)}")
        if alpha != 1:
            if not scaled:
                raise TypeError(f"{name}: unexpected keyword argument 'alpha'")
            if isinstance(alpha, float) and self.dtype.kind in "iub":
                raise DTypeError(f"{name}: for integer tensors alpha must not be a float, got "
                                 f"{alpha!r}")
            other = E.multiply(other, alpha)
        if type(self) is BatchTracer:  # inside vmap: each example changes
            result = op(self, other)
            I.write_through(self, result, name)
            return rebind_batched(name, self, result)
        refuse_batched_into(name, other)
        if _needs_graph(self, other):
            if self.node is None and self.requires_grad:
                raise GradError(f"{name}: a leaf tensor that requires grad cannot be changed in "
                                "place while recording; wrap the update in nodegrad.no_grad()")
            result = op(inplace_source(self), other)
            I.write_through(self, result, name)
            return _rebind(self, result)
        rec = recording()
        if rec is not None:  # a traced forward (ONNX export): the write as the op it records
            result = op(self, other)
            if not can_store(result.dtype, self.dtype):
                raise DTypeError(f"{name}: result type {result.dtype} can't be cast to the "
                                 f"desired output type {self.dtype} of the tensor changed in "
                                 "place")
            if result.shape != self.shape:
                raise ShapeError(f"{name}: an operand of shape {getattr(other, 'shape', ())} "
                                 f"does not broadcast in place into shape {self.shape}")
            if result.dtype != self.dtype:
                result = E.astype(result, self.dtype)
            self.backend.xp.copyto(self._data, result._data, casting="unsafe")
            self._bump()
            rec.inplace(self, result)
            return self
        be = self.backend
        o = other._data if isinstance(other, Tensor) else other
        if type(o) is int and self.dtype.kind in "iu" and not (
                B.np.iinfo(self.dtype).min <= o <= B.np.iinfo(self.dtype).max):
            raise int_range_error(name, o, self.dtype)  # PyTorch wraps (README: refused)
        if B.is_array(o):
            if B.backend_of(o) is not be:
                raise DeviceError(f"{name}: operands are on different devices "
                                  f"({be.name} and {B.backend_of(o).name})")
            if (B.is_float(o.dtype) and B.is_float(self.dtype) and o.dtype != self.dtype
                    and o.ndim):  # a 0-d operand counts as a scalar (type promotion)
                raise DTypeError(f"{name}: mixed float dtypes {self.dtype} and {o.dtype}")
        fn = getattr(be.xp, ufunc)
        try:
            rec = mode.jit
            if self.dtype in _LOW and be.xp is B.np:  # computed in float32, rounded once
                run = _in_float32(name, fn)
                if rec is not None:
                    rec.mutate(name, run, self, other)
                else:
                    run(self._data, o)
            elif rec is not None:  # under a jit trace: replayed in place on the same array
                rec.mutate(name, lambda a, b: fn(a, b, out=a, casting="same_kind"), self, other)
            else:
                fn(self._data, o, out=self._data, casting="same_kind")
        except TypeError:  # NumPy's same_kind refused: int tensor += 0.5, or uint8 += int16
            res = fn(self._data, o)  # the result apart (rare): is it PyTorch-storable?
            if not can_store(res.dtype, self.dtype):
                raise DTypeError(f"{name}: result type {res.dtype} can't be cast to the "
                                 f"desired output type {self.dtype} of the tensor changed in "
                                 "place") from None
            # PyTorch's rule allows it (int16 into uint8 wraps), NumPy's same_kind not
            if rec is not None:
                rec.mutate(name, lambda a, b: be.xp.copyto(a, fn(a, b), casting="unsafe"),
                           self, other)
            else:
                be.xp.copyto(self._data, res, casting="unsafe")
        except ValueError as e:
            if getattr(self._data, "flags", None) is not None and not self._data.flags.writeable:
                raise ValueError(f"{name}: cannot write into this tensor's array, a read-only "
                                 "view (an expanded or overlapping one, or a frozen array); "
                                 "clone() it first") from None
            raise ShapeError(f"{name}: an operand of shape {getattr(o, 'shape', ())} does not "
                             f"broadcast in place into shape {self.shape}: {e}") from None
        self._bump()
        return self

    method.__name__ = name
    return method


_LOW = (B.float16, B.bfloat16)


def _in_float32(name: str, fn):
    """``a = fn(a, b)`` in place for a host float16 or bfloat16 ``a``, as the op out of place
    and PyTorch's CPU kernels compute it: in float32, rounded to ``a``'s dtype once, a Python
    number rounded first only for add and subtract (NumPy's float16 ufunc rounds it for every
    op: ``x.mul_(2.0**40)`` made 0 * inf = NaN)."""
    rounds = fn.__name__ in ROUNDS_NUMBER

    def run(a, b):
        if B.is_array(b) and b.dtype == a.dtype:
            b = b.astype(B.float32)
        elif rounds and (type(b) is float or type(b) is int):
            b = low_number(b, a.dtype)
        res = fn(a.astype(B.float32), b)
        if not can_store(res.dtype, a.dtype):
            raise DTypeError(f"{name}: result type {res.dtype} can't be cast to the desired "
                             f"output type {a.dtype} of the tensor changed in place")
        with B.np.errstate(over="ignore"):
            a[...] = B.cast(res, a.dtype)
    return run


def _setitem(self, index, value):
    if type(self) is BatchTracer:  # inside vmap: the batch is updated functionally, per example
        new = I.index_update(self, index, value)
        if type(new) is not BatchTracer or new.level is not self.level:
            raise TypeError("setitem: inside vmap a tensor can take values batched at its own "
                            "level only; build the result with where() or index_update")
        I.write_through(self, new, "setitem")
        self.val, self.bdim = new.val, new.bdim
        return
    refuse_batched_into("setitem", value, *(index if type(index) is tuple else (index,)))
    split = I.ints_first(index)
    if split is not None:  # x[0, :, [1, 2]] = v is x[0][:, [1, 2]] = v (PyTorch's order)
        I.getitem(self, split[0])[split[1]] = value
        return
    if _needs_graph(self, value):
        if self.node is None and self.requires_grad:
            raise GradError("setitem: a leaf tensor that requires grad cannot be changed in "
                            "place while recording; wrap the update in nodegrad.no_grad()")
        if isinstance(value, Tensor) and value.dtype != self.dtype:
            value = E.astype(value, self.dtype)  # PyTorch copies the value in x's dtype
        result = I.index_update(inplace_source(self), index, value)
        I.write_through(self, result, "setitem")
        _rebind(self, result)
        return
    v = I.drop_leading_ones(value._data if isinstance(value, Tensor) else value)
    if B.is_array(v) and B.backend_of(v) is not self.backend:
        v = self.backend.asarray(B.backend_of(v).to_host(v))
    idx = I.norm_index(index, self.backend, "setitem", self.ndim)
    rec = mode.jit
    if rec is not None:  # under a jit trace: replayed in place on the same array
        rec.mutate("setitem", lambda a, b: a.__setitem__(idx, b), self, value, params=idx)
    else:
        try:
            self._data[idx] = v
        except IndexError as e:
            raise IndexError(f"setitem: index {index!r} does not fit shape {self.shape}: "
                             f"{e}") from None
        except ValueError as e:
            if getattr(self._data, "flags", None) is None or self._data.flags.writeable:
                if "broadcast" not in str(e):
                    raise ValueError(f"setitem: {e}") from None
                raise ShapeError(f"setitem: a value of shape {getattr(v, 'shape', ())} does not "
                                 f"broadcast to x[{index!r}] of a tensor of shape {self.shape}: "
                                 f"{e}") from None
            raise ValueError(f"setitem: cannot write into this tensor's array, a read-only view "
                             f"(an expanded or overlapping one, or a frozen array): {e}; clone() "
                             "it first") from None
    self._bump()


def _view(self, *shape, dtype=None, size=None):
    """``x.view(*shape)``: the same memory in a new shape, refused where the strides need a
    copy (PyTorch's rule; ``reshape`` copies instead). ``x.view(dtype)`` reads the same bytes
    as ``dtype`` (a view without a gradient; a size that differs changes the last dim);
    PyTorch's ``size=`` keyword takes the shape as well."""
    if size is not None:
        if shape:
            raise TypeError("view: pass the shape positionally or as size=, not both")
        shape = (size,)
    if (len(shape) == 1 and dtype is None
            and not isinstance(shape[0], int | list | tuple | B.np.integer | Tensor)):
        dtype = shape[0]  # x.view(ng.int32)
    if dtype is not None:
        if shape and shape[0] is not dtype:
            raise TypeError("view: pass a shape or a dtype, not both")
        return _view_dtype(self, dtype)
    out = S.reshape(self, *shape)
    d, r = self._data, out._data
    if r is not d and r.size and type(self) is Tensor and r.base is not (
            d if d.base is None else d.base) and _strided_as_torch(self):
        raise ShapeError(f"view: a tensor of shape {tuple(self.shape)} and strides "
                         f"{self.stride()} cannot be viewed as shape {tuple(r.shape)} (its "
                         "dims span memory that is not contiguous); use reshape(), which "
                         "copies, or contiguous().view()")
    return out


def _strided_as_torch(t: Tensor) -> bool:
    """Whether ``t`` is a view (of a view ...) of a C-ordered tensor, so its strides are the
    ones PyTorch's tensor would have. An op's own output may be laid out otherwise (a linear
    layer's F order, a convolution's channels last), where PyTorch's is contiguous: ``view``
    then copies rather than refuse what PyTorch allows."""
    base = getattr(t, "_view", None)
    if base is None:
        return False
    while base is not None:
        t = base[0] if base[1] is not None else base[0]()  # detach() keeps a weak reference
        if t is None:
            return False
        base = getattr(t, "_view", None)
    return bool(t._data.flags.c_contiguous)


def _view_dtype(self, dtype):
    """``x.view(dtype)``: x's bytes read as ``dtype``, sharing x's memory and version
    counter (PyTorch's ``view(dtype)``, which has no gradient)."""
    try:
        dt = B.as_dtype(dtype)
    except TypeError:
        raise TypeError(f"view: expected a shape or a dtype, got {dtype!r}") from None
    d = self._data
    a, b = d.dtype.itemsize, dt.itemsize
    if a != b:
        what = f"to view {d.dtype} as {dt} (different element sizes)"
        if d.ndim == 0:
            raise ShapeError(f"view: a 0-d tensor cannot be viewed {what}")
        if d.shape[-1] != 1 and d.strides[-1] != a:
            raise ShapeError(f"view: the last dim's stride must be 1 {what}, got "
                             f"{d.strides[-1] // a}")
        if (d.shape[-1] * a) % b:
            raise ShapeError(f"view: the last dim's size times {a} bytes must be divisible by "
                             f"{b} {what}, got size {d.shape[-1]}")
    try:
        r = d.view(dt)
    except ValueError as e:
        raise ShapeError(f"view: cannot view {d.dtype} of shape {tuple(d.shape)} as {dt}: "
                         f"{e}") from None
    t = Tensor._of(r)
    self._add_alias(t)  # one memory, one version counter, as detach()
    return t


def _r(op):
    return lambda self, other: op(other, self)


def scalar_first(name: str, first, rest: tuple, keyword: str) -> tuple:
    """PyTorch's deprecated overloads that put the scale first, as code written before
    PyTorch 1.5 does (``p.add_(-lr, grad)``, ``v.addcmul_(1 - beta2, g, g)``): ``(scale,
    operands)`` with PyTorch's warning; ``(None, (first,))`` when no operand follows."""
    if not rest:
        return None, (first,)
    if not isinstance(first, int | float | complex) or isinstance(first, bool):
        raise TypeError(f"{name}: takes the scale as the keyword {keyword}=; got "
                        f"{1 + len(rest)} positional operands")
    warnings.warn(f"This overload of {name} is deprecated: {name}(Number {keyword}, Tensor "
                  f"...); use {name}(Tensor ..., *, Number {keyword}=...)", UserWarning,
                  stacklevel=4)  # the caller of add_ / addcmul
    return first, rest


def scaled(name: str, base, other, alpha):
    """``alpha · other`` for PyTorch's ``base ± alpha · other`` (add, sub, rsub): a float
    alpha is refused for integer operands; a number ``other`` times a number ``alpha`` stays a
    Python number (weakly typed, as the other operand of any op: a float64 0-d ``base`` keeps
    its dtype, where a default-float tensor would be refused beside it)."""
    kinds = [v.dtype.kind for v in (base, other) if isinstance(v, Tensor)]
    if isinstance(alpha, float) and kinds and all(k in "iub" for k in kinds):
        raise DTypeError(f"{name}: for integer tensors alpha must not be a float, got "
                         f"{alpha!r}")
    if isinstance(other, int | float | complex) and isinstance(alpha, int | float | complex):
        return other * alpha
    return E.multiply(other, alpha)


def _alpha_first(name: str, first, rest: tuple, alpha) -> tuple:
    """``(alpha, (other,))`` from ``add(alpha, other)``, the deprecated order."""
    if alpha != 1 or len(rest) != 1:
        raise TypeError(f"{name}: expected (other, *, alpha=1) or the deprecated "
                        f"(alpha, other); got {1 + len(rest)} positional operands"
                        + (f" and alpha={alpha!r}" if alpha != 1 else ""))
    return scalar_first(name, first, rest, "alpha")


def _with_alpha(op, name: str):
    """``x.add(y, alpha=a)``/``x.sub(y, alpha=a)``: PyTorch's ``x ± a·y``."""
    def method(self, other, *rest, alpha=1):
        if rest:  # x.add(alpha, other), PyTorch's deprecated order
            alpha, (other,) = _alpha_first(name, other, rest, alpha)
        if alpha == 1:
            return op(self, other)
        return op(self, scaled(name, self, other, alpha))

    method.__name__ = name
    return method


def _permute(self, *dims, **kw):
    """PyTorch's permute: the dims positionally, as one sequence, or as ``dims=``."""
    return S.permute(self, *dims, **kw)


def _split_method(self, split_size_or_sections=None, dim: int = 0, *, split_size=None):
    """PyTorch's split: parts of ``split_size`` along ``dim`` (the last may be shorter), or of
    the listed sizes."""
    if split_size is not None:
        if split_size_or_sections is not None:
            raise TypeError("split: pass split_size once")
        split_size_or_sections = split_size
    return S.split_sizes(self, split_size_or_sections, dim)


_methods = {
    # operators
    "__add__": E.add, "__radd__": _r(E.add), "__sub__": E.subtract, "__rsub__": _r(E.subtract),
    "__mul__": E.multiply, "__rmul__": _r(E.multiply), "__truediv__": E.divide,
    "__rtruediv__": _r(E.divide), "__pow__": E.power, "__rpow__": _r(E.power),
    "__mod__": E.remainder, "__rmod__": _r(E.remainder), "__floordiv__": E.floor_divide,
    "__rfloordiv__": _r(E.floor_divide), "__matmul__": L.matmul, "__rmatmul__": _r(L.matmul),
    "__neg__": E.negative, "__pos__": lambda self: self, "__abs__": E.abs,
    # t == None is False, as PyTorch's (not an elementwise comparison)
    "__eq__": lambda self, o: False if o is None else NotImplemented if isinstance(
        o, _NOT_COMPARED) else E.equal(self, o),
    "__ne__": lambda self, o: True if o is None else NotImplemented if isinstance(
        o, _NOT_COMPARED) else E.not_equal(self, o),
    "__lt__": E.less, "__le__": E.less_equal,
    "__gt__": E.greater, "__ge__": E.greater_equal, "__and__": E.bitwise_and,
    "__rand__": _r(E.bitwise_and), "__or__": E.bitwise_or, "__ror__": _r(E.bitwise_or),
    "__xor__": E.bitwise_xor, "__rxor__": _r(E.bitwise_xor), "__invert__": E.bitwise_not,
    "__lshift__": E.left_shift, "__rlshift__": _r(E.left_shift),
    "__rshift__": E.right_shift, "__rrshift__": _r(E.right_shift),
    "__getitem__": I.getitem, "__setitem__": _setitem,
    "__iadd__": _inplace(E.add, "add_"), "__isub__": _inplace(E.subtract, "sub_"),
    "__imul__": _inplace(E.multiply, "mul_"), "__itruediv__": _inplace(E.divide, "div_"),
    "add_": _inplace(E.add, "add_"), "sub_": _inplace(E.subtract, "sub_"),
    "mul_": _inplace(E.multiply, "mul_"), "div_": _inplace(E.divide, "div_"),
    # arithmetic and elementwise functions
    "add": _with_alpha(E.add, "add"), "sub": _with_alpha(E.subtract, "sub"),
    "mul": E.multiply, "div": E.divide,
    "pow": lambda self, exponent: E.power(self, exponent),
    "neg": E.negative, "exp": E.exp, "expm1": E.expm1, "log": E.log, "log1p": E.log1p,
    "sqrt": E.sqrt, "square": E.square, "abs": E.abs, "sign": E.sign, "sin": E.sin,
    "cos": E.cos, "tan": E.tan, "tanh": E.tanh, "sigmoid": E.sigmoid, "relu": E.relu,
    "erf": E.erf, "floor": E.floor, "ceil": E.ceil, "round": E.round,
    "isnan": E.isnan, "isinf": E.isinf, "isfinite": E.isfinite,
    "maximum": E.maximum, "minimum": E.minimum,
    "bitwise_and": E.bitwise_and, "bitwise_or": E.bitwise_or, "bitwise_xor": E.bitwise_xor,
    "bitwise_not": E.bitwise_not, "bitwise_left_shift": E.left_shift,
    "bitwise_right_shift": E.right_shift, "logical_and": E.logical_and,
    "logical_or": E.logical_or, "logical_xor": E.logical_xor, "logical_not": E.logical_not,
    "clip": lambda self, min=None, max=None: E.clip(self, min, max),
    "clamp": lambda self, min=None, max=None: E.clip(self, min, max),
    # reductions
    "sum": _reducer(R.sum), "mean": _reducer(R.mean), "any": _reducer(R.any),
    "all": _reducer(R.all), "max": _extreme(R.max, R.argmax), "min": _extreme(R.min, R.argmin),
    "argmax": _reducer(R.argmax), "argmin": _reducer(R.argmin),
    "var": _stat(R.var), "std": _stat(R.std),
    "logsumexp": _reducer(N.logsumexp),
    "softmax": lambda self, axis=None, *, dim=None, dtype=None: N.softmax(
        self, axis, dim=dim, dtype=dtype),
    "log_softmax": lambda self, axis=None, *, dim=None, dtype=None: N.log_softmax(
        self, axis, dim=dim, dtype=dtype),
    # shapes
    "reshape": S.reshape, "view": _view, "flatten": S.flatten, "ravel": S.ravel,
    "squeeze": lambda self, dim=None, *, axis=None: (S.squeeze(self, axis) if axis is not None
                                                     else S.squeeze(self, dim=dim)
                                                     if dim is not None else S.squeeze(self)),
    "unsqueeze": lambda self, dim=None, *, axis=None: S.expand_dims(self, _axis(axis, dim)),
    "expand_dims": S.expand_dims, "expand": S.expand,
    "expand_as": lambda self, other: S.broadcast_to(self, other.shape),
    "broadcast_to": S.broadcast_to, "sum_to": S.sum_to, "permute": _permute,
    "transpose": _transpose_method, "swapaxes": S.swapaxes, "moveaxis": S.moveaxis,
    "flip": lambda self, axis=None, *more, dims=None: S.flip(
        self, _axis((axis, *more) if more else axis, dims)),  # x.flip(0, 1) as PyTorch
    "split": _split_method, "chunk": S.chunk, "clone": S.clone, "copy": S.copy,
    "contiguous": _contiguous,
    "matmul": L.matmul,
    "take_along_axis": I.take_along_axis,
    # PyTorch's indexing ops
    "gather": I.gather, "scatter": I.scatter, "scatter_add": I.scatter_add,
    "scatter_reduce": I.scatter_reduce, "index_select": I.index_select,
    "index_add": I.index_add, "index_copy": I.index_copy, "index_fill": I.index_fill,
    "masked_fill": I.masked_fill, "masked_scatter": I.masked_scatter,
    "masked_select": I.masked_select, "take": I.take, "put": I.put, "nonzero": I.nonzero,
    "argwhere": I.argwhere,
    # PyTorch's rearranging ops
    "repeat": A.tensor_repeat, "repeat_interleave": A.repeat_interleave, "tile": A.tile,
    "roll": A.roll, "tril": A.tril, "triu": A.triu, "diag": A.diag, "diagonal": A.diagonal,
    "diag_embed": A.diag_embed, "trace": A.trace, "unflatten": A.unflatten,
    "narrow": A.narrow, "unbind": A.unbind, "movedim": A.movedim, "view_as": A.view_as,
    "rot90": A.rot90, "flipud": A.flipud, "fliplr": A.fliplr,
    # dtypes and devices
    "astype": E.astype, "type": E.astype, "to": _to,
    "float": _cast_method(B.float32, "float"), "double": _cast_method(B.float64, "double"),
    "half": _cast_method(B.float16, "half"), "long": _cast_method(B.int64, "long"),
    "int": _cast_method(B.int32, "int"), "short": _cast_method(B.np.dtype("int16"), "short"),
    "char": _cast_method(B.np.dtype("int8"), "char"),
    "byte": _cast_method(B.np.dtype("uint8"), "byte"),
    "bool": _cast_method(B.bool_, "bool"),
    "cpu": lambda self: S.to_device(self, "cpu"),
    "cuda": lambda self, device=0: S.to_device(self, f"cuda:{device}" if isinstance(device, int)
                                               else device),
}

_properties = {
    "T": property(lambda self: S.transpose(self), doc="All axes reversed."),
    "mT": property(lambda self: S.swapaxes(self, -1, -2), doc="Last two axes swapped."),
}


def _as_method(name: str, fn):
    """Primitives are not descriptors: wrap them so ``x.exp()`` passes ``x`` as the first input."""
    if not isinstance(fn, Primitive):
        return fn
    if fn.name in _BINARY:
        def method(self, other):
            return bind(fn, (self, other), _NO_PARAMS)
    else:
        def method(self, *args, **params):
            if params:  # PyTorch's operand names as keywords: x.lerp(end=y, weight=w)
                names = getattr(fn, "keywords", None)
                if names is not None and not names.isdisjoint(params):
                    args = names.bind((self, *args), params)[1:]
            return bind(fn, (self, *args), params)
    method.__name__ = name
    method.__doc__ = fn.__doc__
    return method


_NO_PARAMS: dict = {}
_BINARY = {"add", "subtract", "multiply", "divide", "power", "remainder", "floor_divide",
           "matmul", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
           "logical_and", "logical_or", "logical_xor", "maximum", "minimum", "bitwise_and",
           "bitwise_or", "bitwise_xor", "left_shift", "right_shift"}


def install() -> None:
    """Attach the operators and methods to Tensor."""
    for name, fn in _methods.items():
        setattr(Tensor, name, _as_method(name, fn))
    for name, prop in _properties.items():
        setattr(Tensor, name, prop)
    Tensor.__hash__ = object.__hash__  # defining __eq__ must not make tensors unhashable
    Tensor.__iter__ = lambda self: (self[i] for i in range(len(self)))


install()


# --- the wider operator surface (PyTorch's Tensor methods) ------------------------------------
def _is_nonzero(self) -> bool:
    """PyTorch's ``is_nonzero``: the truth of a one-element tensor (an error otherwise)."""
    if self._data.size != 1:
        raise ValueError(f"is_nonzero: expected a tensor with one element, got shape "
                         f"{tuple(self.shape)}")
    return bool(self.reshape(()))


def _install_more() -> None:
    from .. import random as Rnd
    from . import activation as A
    from . import scan as C
    from . import sort as O

    # dim= (PyTorch) or axis= (NumPy) for a function whose second argument is the dim;
    # own_dtype: the function takes dtype= itself (its result in that dtype, not int64)
    def dimmed(fn, own_dtype=False):
        def method(self, dim=None, *args, axis=None, dtype=None, **kw):
            if own_dtype and dtype is not None:
                return fn(self, _axis(axis, dim), *args, dtype=dtype, **kw)
            return fn(_cast(self, dtype), _axis(axis, dim), *args, **kw)

        method.__name__, method.__doc__ = fn.__name__, fn.__doc__
        return method

    more = {
        "asin": E.asin, "acos": E.acos, "atan": E.atan, "atan2": E.atan2, "sinh": E.sinh,
        "cosh": E.cosh, "asinh": E.asinh, "acosh": E.acosh, "atanh": E.atanh, "log2": E.log2,
        "log10": E.log10, "exp2": E.exp2, "rsqrt": E.rsqrt, "reciprocal": E.reciprocal,
        "hypot": E.hypot, "copysign": E.copysign, "logaddexp": E.logaddexp,
        "logaddexp2": E.logaddexp2,
        "lerp": lambda self, end, weight: E.lerp(self, end, weight), "fmod": E.fmod,
        "xlogy": E.xlogy,
        "sinc": E.sinc, "deg2rad": E.deg2rad, "rad2deg": E.rad2deg, "nan_to_num": E.nan_to_num,
        "clamp_min": E.clamp_min, "clamp_max": E.clamp_max, "frac": E.frac,
        "isclose": E.isclose, "allclose": E.allclose, "div": E.div, "divide": E.div,
        "hardshrink": A.hardshrink, "trunc": E.trunc,
        "cumsum": dimmed(C.cumsum, True), "cumprod": dimmed(C.cumprod, True),
        "cummax": dimmed(C.cummax), "cummin": dimmed(C.cummin),
        "logcumsumexp": dimmed(C.logcumsumexp),
        "prod": C.prod, "amax": R.amax, "amin": R.amin, "aminmax": R.aminmax,
        "nansum": R.nansum, "nanmean": R.nanmean, "count_nonzero": R.count_nonzero,
        "norm": R.norm, "median": O.median, "quantile": O.quantile, "sort": O.sort,
        "argsort": O.argsort, "topk": O.topk, "kthvalue": O.kthvalue, "unique": O.unique,
        "floor_divide": E.floor_divide, "remainder": E.remainder,
        "diagflat": AR.diagflat,
        "is_same_size": lambda self, other: tuple(self.shape) == tuple(other.shape),
        "is_nonzero": _is_nonzero,
        "bernoulli": Rnd.bernoulli, "multinomial": Rnd.multinomial, "normal_": Rnd.normal_,
        "uniform_": Rnd.uniform_,
    }
    _methods.update(more)
    for name, fn in more.items():
        setattr(Tensor, name, _as_method(name, fn))


_install_more()


def register(table: dict) -> None:
    """Attach more methods to Tensor (the other op families' PyTorch names)."""
    _methods.update(table)
    for name, fn in table.items():
        setattr(Tensor, name, _as_method(name, fn))


def _at(self) -> IndexUpdateHelper:
    """JAX's ``x.at[index].set(v)`` (``add``, ``get``, ...): functional index updates."""
    return IndexUpdateHelper(self)


Tensor.at = property(_at)


def _volatile(self) -> bool:
    """PyTorch's removed ``Variable.volatile``: always False, with PyTorch's warning."""
    warnings.warn("volatile was removed (Variable.volatile is always False)", UserWarning,
                  stacklevel=2)
    return False


def _set_volatile(self, value) -> None:
    """Setting ``volatile`` (the 2017 DQN tutorial's ``v.volatile = False``) does nothing, with
    PyTorch's warning: use ``no_grad()``."""
    warnings.warn("volatile was removed and now has no effect. Use `with nodegrad.no_grad():` "
                  "instead.", UserWarning, stacklevel=2)


Tensor.volatile = property(_volatile, _set_volatile)
