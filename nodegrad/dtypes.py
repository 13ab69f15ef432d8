"""Type promotion: the dtype an operation on operands of different dtypes computes in.

PyTorch's rules. The categories are bool < integer < float < complex. Operands come in three
priority levels: tensors with at least one dimension, 0-d tensors, Python numbers. Within a
level the dtypes are promoted (int8 with uint8 gives int16, int with float32 gives float32); a
lower level only matters when its category is higher (an int tensor times a 0-d float64 tensor
or a Python float gives float64 or float32; a 0-d int64 tensor does not widen an int8 tensor).
Python floats count as the default float32, Python ints as int64, Python complex numbers as the
default complex64; a complex operand of a lower level takes the width of the float tensor it
meets (float64 times 1j is complex128), as in PyTorch. One deliberate difference: float32 with
float64 in one level raises :class:`DTypeError` instead of computing in float64, and so do
any two different floats (bfloat16 and float16 included) and complex64 with float64 and complex128
with float32. bfloat16 (ml_dtypes' dtype, of NumPy kind "V") is a float here: an integer tensor
with a bfloat16 one gives bfloat16, a bfloat16 tensor with a Python float or a 0-d float32 tensor
stays bfloat16, a 0-d bfloat16 tensor with a float16 tensor gives float16, as in PyTorch.
"""

from __future__ import annotations

from . import _backend as B
from .errors import DTypeError

_np = B.np
# Python numbers (and NumPy scalars) stand for these dtypes, as PyTorch's wrapped numbers do
_SCALAR_DTYPES = {bool: B.bool_, int: B.int64, float: B.DEFAULT_FLOAT,
                  complex: _np.result_type(B.DEFAULT_FLOAT, _np.complex64)}
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}
_BF16 = B.bfloat16


def _kind(dt) -> str:
    """``dt.kind``, with bfloat16 (kind "V" in NumPy) as the float it is."""
    return "f" if dt == _BF16 else dt.kind


def _complex_of(f):
    """The complex dtype of float ``f``'s width (complex64 for float16 and float32)."""
    return _np.dtype(_np.complex128 if f.itemsize == 8 else _np.complex64)


def promote_types(a, b):
    """The dtype two operands of one level compute in (float32 with float64 raises)."""
    a, b = _np.dtype(a), _np.dtype(b)
    if a == b:
        return a
    ak, bk = _kind(a), _kind(b)
    if ak not in "biuf" or bk not in "biuf":
        if ak not in "biufc" or bk not in "biufc":
            odd = a if ak not in "biufc" else b
            raise DTypeError(f"cannot compute with {a} and {b}: {odd} does not promote with "
                             "nodegrad's dtypes (bool, integers, floats, bfloat16, complex)")
        c, o = (a, b) if ak == "c" else (b, a)
        if _kind(o) in "biu" or (_kind(o) == "f" and o.itemsize <= c.itemsize // 2):
            return c  # an integer, or a float of the same width or narrower
        raise DTypeError(f"mixed precisions {a} and {b}; nodegrad never promotes silently, "
                         "convert one explicitly (x.astype(...))")
    if ak == "f" and bk == "f":
        raise DTypeError(f"mixed float dtypes {a} and {b}; nodegrad never promotes silently, "
                         "convert one explicitly (x.astype(...), .float(), .double())")
    if ak == "f" or bk == "f":  # an integer or bool meets a float: the float wins
        return a if ak == "f" else b
    out = _np.promote_types(a, b)
    if out.kind == "f" and a.kind != "f" and b.kind != "f":  # uint64 with int64 in NumPy
        raise DTypeError(f"no integer dtype holds both {a} and {b}; convert one explicitly")
    return out


def _level_result(dts: list):
    out = None
    for d in dts:
        out = d if out is None else promote_types(out, d)
    return out


def _combine(higher, lower):
    """PyTorch's combine_categories: a lower level counts only if its category is higher."""
    if higher is None:
        return lower
    if lower is None or higher.kind == "c":
        return higher
    hk, lk = _kind(higher), _kind(lower)
    if lk == "c" and hk == "f":  # a complex number meets a float tensor
        return _complex_of(higher)
    if hk == "f":
        return higher
    if hk == "b" or _CATEGORY[lk] > _CATEGORY[hk]:
        return promote_types(higher, lower)
    return higher


def _key_of(a):
    """What promotion needs to know of an operand: (dtype, is_0d), a scalar type, or None."""
    t = type(a)
    if t is bool or t is int or t is float or t is complex:
        return t
    dt = getattr(a, "dtype", None)
    if dt is None:
        return None
    if isinstance(a, B.generic):  # a NumPy scalar counts as the Python number it holds
        return {"b": bool, "f": float, "c": complex}.get(_kind(dt), int)
    return (dt, a.ndim == 0)


def _compute(key: tuple):
    dims, zeros, scalars = [], [], []
    for k in key:
        if k is None:
            continue
        if type(k) is tuple:
            (zeros if k[1] else dims).append(k[0])
        else:
            scalars.append(_SCALAR_DTYPES[k])
    return _combine(_level_result(dims), _combine(_level_result(zeros),
                                                  _level_result(scalars)))


_CACHE: dict = {}


def result_type_of_keys(key: tuple):
    """:func:`result_type` from precomputed operand keys, cached by key (the hot path)."""
    out = _CACHE.get(key)
    if out is None:
        out = _CACHE[key] = _compute(key)
    return out


def result_type(*operands):
    """The dtype ``operands`` (tensors, arrays, Python numbers) compute in, as torch.result_type.

    Raises :class:`DTypeError` for float32 with float64 in the same level, by design.
    """
    out = result_type_of_keys(tuple(_key_of(a) for a in operands))
    if out is None:
        raise TypeError("result_type: expected at least one tensor or number")
    return out


class finfo:
    """Machine limits of a float (or a complex dtype's parts') dtype, PyTorch's
    ``torch.finfo``: ``bits``, and ``eps``,
    ``max``, ``min``, ``tiny``, ``smallest_normal``, ``resolution`` as Python floats (so
    ``finfo(x.dtype).max * 2`` is a Python number, not a float32 overflow), ``dtype`` the
    dtype's name; the default float dtype when none is given."""

    __slots__ = ("bits", "eps", "max", "min", "tiny", "smallest_normal", "resolution", "dtype")

    def __init__(self, dtype=None):
        dt = _np.dtype(B.DEFAULT_FLOAT if dtype is None else dtype)
        if dt.kind == "c":  # a complex dtype: its parts' float (PyTorch's)
            dt = _np.dtype(_np.float32 if dt.itemsize == 8 else _np.float64)
        if not B.is_float(dt):
            raise TypeError(f"finfo: expected a floating dtype, got {dt} (use iinfo)")
        f = B.finfo(dt)
        self.bits = int(f.bits)
        for name in ("eps", "max", "min", "tiny", "smallest_normal"):
            setattr(self, name, float(getattr(f, name)))
        self.resolution = 10.0 ** -int(f.precision)  # PyTorch's: exact, not rounded to dtype
        self.dtype = str(dt)

    def __repr__(self) -> str:
        return (f"finfo(resolution={self.resolution:g}, min={self.min:g}, max={self.max:g}, "
                f"eps={self.eps:g}, smallest_normal={self.smallest_normal:g}, "
                f"tiny={self.tiny:g}, dtype={self.dtype})")


def iinfo(dtype):
    """Limits of an integer dtype (``min``, ``max``, ``bits``), PyTorch's ``torch.iinfo``."""
    dt = _np.dtype(dtype)
    if dt.kind not in "iu":
        raise TypeError(f"iinfo: expected an integer dtype, got {dt} (use finfo)")
    return _np.iinfo(dt)


# --- PyTorch's dtype queries ---------------------------------------------------------------------
_TORCH_DTYPES = {_np.dtype(n) for n in ("bool", "uint8", "int8", "int16", "int32", "int64",
                                        "float16", "float32", "float64", "complex64",
                                        "complex128")} | {_BF16}


def _torch_dtype(dtype, op: str):
    try:
        dt = _np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: expected a dtype, got {dtype!r}") from None
    if dt not in _TORCH_DTYPES:
        raise TypeError(f"{op}: dtype {dt} is not one of nodegrad's (bool, uint8, int8, int16, "
                        "int32, int64, float16, bfloat16, float32, float64, complex64, "
                        "complex128)")
    return dt


def torch_promote_types(type1, type2):
    """PyTorch's ``torch.promote_types``: the smallest dtype both convert to without leaving
    their categories (bool < integer < float); float32 with float64 gives float64 here, and
    bfloat16 with float16 float32, as it is a question about dtypes (the operators themselves
    refuse such mixes, see above)."""
    a = _torch_dtype(type1, "promote_types")
    b = _torch_dtype(type2, "promote_types")
    ak, bk = _kind(a), _kind(b)
    if ak == "c" or bk == "c":  # complex, as wide as the widest float part (no complex32)
        width = max(x.itemsize // 2 if k == "c" else x.itemsize if k == "f" else 0
                    for x, k in ((a, ak), (b, bk)))
        return _np.dtype(_np.complex128 if width >= 8 else _np.complex64)
    if ak == "f" or bk == "f":
        if ak == "f" and bk == "f":
            if a != b and a.itemsize == b.itemsize:  # bfloat16 with float16: neither holds
                # the other's values
                return B.float32
            return a if a.itemsize > b.itemsize else b
        return a if ak == "f" else b
    return _np.promote_types(a, b)  # bool and integers: NumPy's lattice is PyTorch's here


def can_cast(from_, to) -> bool:
    """PyTorch's ``torch.can_cast``: whether PyTorch's casting rules allow storing ``from_``
    values in ``to`` (a float never goes to an integer, a number never to bool)."""
    a = _torch_dtype(from_, "can_cast")
    b = _torch_dtype(to, "can_cast")
    return _CATEGORY[_kind(a)] <= _CATEGORY[_kind(b)]  # bool < integers < floats


def can_store(src, dst) -> bool:
    """Whether an in-place op or ``out=`` may store a result of dtype ``src`` in a tensor of dtype
    ``dst``, PyTorch's rule: never to a lower category (complex to real, float to integer, a
    number to bool); within a category any width or signedness (int16 into uint8 wraps, as
    PyTorch's, where NumPy's ``same_kind`` refuses signed into unsigned)."""
    return _CATEGORY[_kind(_np.dtype(src))] <= _CATEGORY[_kind(_np.dtype(dst))]


# --- the default float dtype ----------------------------------------------------------------------
_DEFAULT_CHOICES = {_np.dtype(n) for n in ("float16", "float32", "float64")}


def get_default_dtype():
    """The float dtype Python floats and float factories (``tensor([1.0])``, ``zeros``,
    ``randn``, a new layer's parameters) give; float32 unless :func:`set_default_dtype`."""
    return B.DEFAULT_FLOAT


def set_default_dtype(d) -> None:
    """Make ``d`` (float16, float32 or float64) the default float dtype, as
    ``torch.set_default_dtype``: for factories, Python floats in promotion, integer inputs of
    float ops. Set it before building models; tensors that exist keep their dtypes."""
    try:
        dt = _np.dtype(d)
    except TypeError:
        dt = None
    if dt not in _DEFAULT_CHOICES:
        raise TypeError(f"set_default_dtype: only floating-point types are supported as the "
                        f"default type (float16, float32, float64), got {d!r}")
    from . import primitive

    B.DEFAULT_FLOAT = dt
    primitive.set_default_float(dt)  # bind's result dtype for integer inputs
    _SCALAR_DTYPES[float] = dt
    _SCALAR_DTYPES[complex] = _complex_of(dt)
    _CACHE.clear()


_LEGACY_FLOAT_TYPES = {"HalfTensor": "float16", "FloatTensor": "float32",
                       "DoubleTensor": "float64"}


def set_default_tensor_type(t) -> None:
    """PyTorch's deprecated ``set_default_tensor_type``, which code before PyTorch 2 calls
    (``'torch.cuda.FloatTensor'`` with a GPU, else ``'torch.FloatTensor'``): a float legacy type
    (``ng.DoubleTensor``, ``ng.cuda.FloatTensor``) or its name sets the default float dtype and
    the default device (a CUDA type's "cuda", else the CPU), with PyTorch's warning."""
    if isinstance(t, str):
        *where, name = t.split(".")
        cuda = "cuda" in where
    else:
        name, cuda = getattr(t, "__name__", None), bool(getattr(t, "is_cuda", False))
    if name not in _LEGACY_FLOAT_TYPES:
        raise TypeError(f"set_default_tensor_type: only floating-point types are supported as "
                        f"the default type (HalfTensor, FloatTensor, DoubleTensor, or their "
                        f"names), got {t!r}")
    import warnings

    from .tensor import set_default_device

    warnings.warn("set_default_tensor_type() is deprecated (as in PyTorch 2.1); use "
                  "set_default_dtype() and set_default_device() instead", UserWarning,
                  stacklevel=2)
    set_default_device("cuda" if cuda else "cpu")  # raises first when there is no GPU
    set_default_dtype(_LEGACY_FLOAT_TYPES[name])


__all__ = ["promote_types", "result_type", "finfo", "iinfo", "torch_promote_types", "can_cast",
           "can_store", "get_default_dtype", "set_default_dtype", "set_default_tensor_type"]
