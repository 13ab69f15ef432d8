"""Type promotion: the dtype an operation on operands of different dtypes computes in.

PyTorch's rules. The categories are bool < integer < float. Operands come in three priority
levels: tensors with at least one dimension, 0-d tensors, Python numbers. Within a level the
dtypes are promoted (int8 with uint8 gives int16, int with float32 gives float32); a lower level
only matters when its category is higher (an int tensor times a 0-d float64 tensor or a Python
float gives float64 or float32; a 0-d int64 tensor does not widen an int8 tensor). Python floats
count as the default float32, Python ints as int64. One deliberate difference: float32 with
float64 in one level raises :class:`DTypeError` instead of computing in float64.
"""

from __future__ import annotations

from . import _backend as B
from .errors import DTypeError

_np = B.np
# Python numbers (and NumPy scalars) stand for these dtypes, as PyTorch's wrapped numbers do
_SCALAR_DTYPES = {bool: B.bool_, int: B.int64, float: B.DEFAULT_FLOAT}
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def promote_types(a, b):
    """The dtype two operands of one level compute in (float32 with float64 raises)."""
    a, b = _np.dtype(a), _np.dtype(b)
    if a == b:
        return a
    if a.kind == "f" and b.kind == "f":
        raise DTypeError(f"mixed float dtypes {a} and {b}; nodegrad never promotes silently, "
                         "convert one explicitly (x.astype(...), .float(), .double())")
    if a.kind == "f" or b.kind == "f":  # an integer or bool meets a float: the float wins
        return a if a.kind == "f" else b
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
    if lower is None or higher.kind == "f" or higher.kind == "c":
        return higher
    if higher.kind == "b" or _CATEGORY[lower.kind] > _CATEGORY[higher.kind]:
        return promote_types(higher, lower)
    return higher


def _key_of(a):
    """What promotion needs to know of an operand: (dtype, is_0d), a scalar type, or None."""
    t = type(a)
    if t is bool or t is int or t is float:
        return t
    dt = getattr(a, "dtype", None)
    if dt is None:
        return None
    if isinstance(a, B.generic):  # a NumPy scalar counts as the Python number it holds
        return {"b": bool, "f": float}.get(dt.kind, int)
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


def finfo(dtype=None):
    """Machine limits of a float dtype (``eps``, ``max``, ``min``, ``tiny``, ``bits``,
    ``resolution``), PyTorch's ``torch.finfo``; the default float dtype when none is given."""
    dt = _np.dtype(_np.float32 if dtype is None else dtype)
    if dt.kind != "f":
        raise TypeError(f"finfo: expected a floating dtype, got {dt} (use iinfo)")
    return _np.finfo(dt)


def iinfo(dtype):
    """Limits of an integer dtype (``min``, ``max``, ``bits``), PyTorch's ``torch.iinfo``."""
    dt = _np.dtype(dtype)
    if dt.kind not in "iu":
        raise TypeError(f"iinfo: expected an integer dtype, got {dt} (use finfo)")
    return _np.iinfo(dt)


__all__ = ["promote_types", "result_type", "finfo", "iinfo"]
