"""Reductions: sum, mean, max/min (ties split evenly), var/std, argmax/argmin, any/all."""

from __future__ import annotations

import warnings

from .. import _backend as B
from ..autodiff import no_grad
from ..errors import DTypeError, ShapeError
from ..primitive import primitive
from .elementwise import astype, sqrt, where
from .shape import broadcast_to, keepdims_shape, norm_axes, reshape, scalar_dims

_RED = "reduce"


def _count(shape, axes) -> int:
    n = 1
    for i, s in enumerate(shape):
        if axes is None or i in axes:
            n *= s
    return n


def _spread(g, x, axis, keepdims):
    """g (reduced over ``axis``) broadcast back to x's shape."""
    if not keepdims:
        g = reshape(g, keepdims_shape(x.shape, axis))
    return broadcast_to(g, x.shape)


_sum = primitive("sum", lambda xp, x, axis, keepdims: B.sum_outer(x, axis, keepdims),
                 lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims),
                 saves="none", kind=_RED, jvp="linear", doc="Sum over axes.")
def _mean_fwd(xp, x, axis, keepdims):
    """The sum (:func:`_backend.sum_outer`) over the count: NumPy's own mean adds axes that are
    not innermost in memory one at a time, so a float32 mean over (N, H, W) of a channels-last
    activation drifted by ~n·eps (BatchNorm's batch mean 10x less exact than PyTorch's)."""
    if x.dtype.kind != "f" or x.dtype.itemsize < 4 or x.size == 0:
        return xp.mean(x, axis=axis, keepdims=keepdims)
    return B.sum_outer(x, axis, keepdims) / _count(x.shape, axis)


_mean = primitive(
    "mean", _mean_fwd,
    lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims) / _count(x.shape, axis),
    saves="none", kind=_RED, jvp="linear", doc="Mean over axes.")


def _attained(x, ans, dtype):
    """1 where ``x`` attained the extreme ``ans``, else 0; a NaN extreme was attained by the
    NaN entries (PyTorch's ``x.max()``), so one NaN does not make every gradient entry NaN."""
    return astype(x == ans, dtype) + astype(x != x, dtype) * astype(ans != ans, dtype)


def _extreme_vjp(g, ans, x, axis, keepdims):
    """Route g to the positions that attained the extreme, split evenly among ties."""
    if not keepdims:
        ans = reshape(ans, keepdims_shape(x.shape, axis))
    hit = _attained(x, ans, g.dtype)
    return _spread(g, x, axis, keepdims) * hit / _sum(hit, axis=axis, keepdims=True)


def _extreme_jvp(ts, ans, x, axis, keepdims):
    """The mean of the tangent over the positions that attained the extreme."""
    if not keepdims:
        ans = reshape(ans, keepdims_shape(x.shape, axis))
    hit = _attained(x, ans, ts[0].dtype)
    return (_sum(ts[0] * hit, axis=axis, keepdims=keepdims)
            / _sum(hit, axis=axis, keepdims=keepdims))


def ordered(op: str, x) -> None:
    """Refuse a complex array or tensor in an op that compares values (complex numbers have
    no order; PyTorch refuses them too)."""
    dt = getattr(x, "dtype", None)
    if dt is not None and dt.kind == "c":
        raise DTypeError(f"{op}: complex tensors have no order, so {op} is not defined for "
                         f"them (got {dt}); compare their abs() or real parts instead")


def nonempty(op: str, shape: tuple, axis, error: type[Exception] = ShapeError) -> None:
    """Refuse a max/min/argmax/argmin over an empty dim (``axis`` an int, a tuple, or None for
    all): an empty dim has no extreme. NumPy raises a ValueError there (``error``'s default, a
    ValueError), PyTorch an IndexError; both name the op and the empty dim."""
    axes = range(len(shape)) if axis is None else axis if isinstance(axis, tuple) else (axis,)
    for a in axes:
        if shape[a] == 0:
            raise error(f"{op}: reduction dim {a} is empty (shape {tuple(shape)}); an empty "
                        f"dim has no {op.removeprefix('arg')}imum")


def _ordered_fwd(op: str, name: str):
    """The forward of the reduction ``xp.<name>`` behind :func:`ordered`'s check."""
    def fwd(xp, x, axis, keepdims):
        ordered(op, x)
        return getattr(xp, name)(x, axis=axis, keepdims=keepdims)
    return fwd


_max = primitive("max", _ordered_fwd("max", "max"),
                 _extreme_vjp, saves="both", kind=_RED, jvp=_extreme_jvp,
                 doc="Maximum over axes; tied maxima share the gradient evenly.")
_min = primitive("min", _ordered_fwd("min", "min"),
                 _extreme_vjp, saves="both", kind=_RED, jvp=_extreme_jvp,
                 doc="Minimum over axes; tied minima share the gradient evenly.")
_argmax = primitive("argmax", _ordered_fwd("argmax", "argmax"),
                    kind=_RED, promote=False, doc="Index of the maximum (no gradient).")
_argmin = primitive("argmin", _ordered_fwd("argmin", "argmin"),
                    kind=_RED, promote=False, doc="Index of the minimum (no gradient).")
_any = primitive("any", lambda xp, x, axis, keepdims: xp.any(x, axis=axis, keepdims=keepdims),
                 kind=_RED, promote=False, doc="True if any element is nonzero.")
_all = primitive("all", lambda xp, x, axis, keepdims: xp.all(x, axis=axis, keepdims=keepdims),
                 kind=_RED, promote=False, doc="True if every element is nonzero.")


def int64_accumulator(x):
    """``x`` as int64 where it holds unsigned integers: PyTorch sums and multiplies every
    integer dtype in int64 (NumPy unsigned ones in uint64, which mixes with int64 as float64)."""
    dt = getattr(x, "dtype", None)
    return astype(x, B.int64) if dt is not None and dt.kind == "u" else x


def _in(x, dtype):
    """``x`` cast to ``dtype`` first: a reduction's ``dtype=`` (None: as it is)."""
    return x if dtype is None else astype(x, dtype)


def _mean_in(x, dtype, op: str):
    """``x`` cast to a mean's ``dtype=``, which must be a float or complex dtype (PyTorch's
    rule: a mean truncated to an integer dtype would be a silently wrong answer)."""
    if dtype is None:
        return x
    if not B.is_inexact(B.np.dtype(dtype)):
        raise DTypeError(f"{op}: dtype= must be a floating-point or complex dtype, got "
                         f"{B.np.dtype(dtype)}")
    return astype(x, dtype)


def _out(out, dtype):
    """A reduction's result in ``dtype`` (an int64 sum asked for int32 wraps, as PyTorch's)."""
    return out if dtype is None or out.dtype == dtype else astype(out, dtype)


def sum(x, axis=None, keepdims: bool = False, *, dtype=None):
    """Sum over ``axis`` (an int, a tuple, or None for all); integers and bools give int64.
    ``dtype=`` casts the input first and gives that dtype (NumPy's and PyTorch's keyword)."""
    out = _sum(int64_accumulator(_in(x, dtype)), axis=norm_axes(axis, x.ndim, "sum"),
               keepdims=bool(keepdims))
    return out if dtype is None else _out(out, dtype)


def mean(x, axis=None, keepdims: bool = False, *, dtype=None):
    """Arithmetic mean over ``axis``; ``dtype=`` casts the input first."""
    out = _mean(_mean_in(x, dtype, "mean"), axis=norm_axes(axis, x.ndim, "mean"),
                keepdims=bool(keepdims))
    return out if dtype is None else _out(out, dtype)


def max(x, axis=None, keepdims: bool = False):
    """Largest value over ``axis`` (NumPy's max / amax; ties share the gradient)."""
    axis = norm_axes(axis, x.ndim, "max")
    nonempty("max", x.shape, axis)
    return _max(x, axis=axis, keepdims=bool(keepdims))


def min(x, axis=None, keepdims: bool = False):
    """Smallest value over ``axis`` (ties share the gradient)."""
    axis = norm_axes(axis, x.ndim, "min")
    nonempty("min", x.shape, axis)
    return _min(x, axis=axis, keepdims=bool(keepdims))


def _one_axis(axis, ndim, op):
    if axis is None:
        return None
    return norm_axes(axis, ndim, op)[0]


def argmax(x, axis: int | None = None, keepdims: bool = False):
    """Index of the largest value (flattened when ``axis`` is None)."""
    axis = _one_axis(scalar_dims(axis, x.ndim, "argmax"), x.ndim, "argmax")  # 0-d: 0 / -1 is all
    nonempty("argmax", x.shape, axis)
    return _argmax(x, axis=axis, keepdims=bool(keepdims))


def argmin(x, axis: int | None = None, keepdims: bool = False):
    """Index of the smallest value (flattened when ``axis`` is None)."""
    axis = _one_axis(scalar_dims(axis, x.ndim, "argmin"), x.ndim, "argmin")  # 0-d: 0 / -1 is all
    nonempty("argmin", x.shape, axis)
    return _argmin(x, axis=axis, keepdims=bool(keepdims))


def _truth_dtype(out, x):
    """An any/all result: bool, but uint8 for a uint8 input (PyTorch's rule)."""
    return astype(out, x.dtype) if x.dtype == B.np.uint8 else out


def any(x, axis=None, keepdims: bool = False):
    """Whether any element over ``axis`` is nonzero (uint8 for a uint8 input, as PyTorch)."""
    return _truth_dtype(_any(x, axis=norm_axes(axis, x.ndim, "any"), keepdims=bool(keepdims)), x)


def all(x, axis=None, keepdims: bool = False):
    """Whether every element over ``axis`` is nonzero (uint8 for a uint8 input, as PyTorch)."""
    return _truth_dtype(_all(x, axis=norm_axes(axis, x.ndim, "all"), keepdims=bool(keepdims)), x)


def _ddof(op: str, axis, ddof, correction, unbiased):
    """(axis, ddof) from NumPy's ``ddof`` or PyTorch's ``correction=``/``unbiased=``; a bool
    where the axis goes is PyTorch's ``unbiased`` (``torch.var(x, True)``), never an axis."""
    if isinstance(axis, bool):
        if unbiased is not None:
            raise TypeError(f"{op}: got unbiased twice (a bool where the axis goes is "
                            "PyTorch's unbiased)")
        axis, unbiased = None, axis
    if correction is not None or unbiased is not None:
        if ddof or (correction is not None and unbiased is not None):
            raise TypeError(f"{op}: pass one of ddof= (NumPy), correction= or unbiased= "
                            "(PyTorch)")
        ddof = correction if correction is not None else int(unbiased)
    return axis, ddof


def var(x, axis=None, ddof: int = 0, keepdims: bool = False, *, correction: int | None = None,
        unbiased: bool | None = None):
    """Variance over ``axis`` with NumPy's ``ddof`` (0: population; PyTorch's default is 1);
    PyTorch's ``correction=`` and ``unbiased=`` are taken too, and ``var(x, True)`` means
    PyTorch's ``unbiased=True`` over all entries.

    With ``ddof`` >= N it divides by 0, as PyTorch: inf, or NaN where all values are equal."""
    axis, ddof = _ddof("var", axis, ddof, correction, unbiased)
    if x.dtype in (B.float16, B.bfloat16):  # worked in float32 and rounded once, as PyTorch's:
        # float16 squares of deviations over 256 would overflow, and a bfloat16 mean and
        # deviations would each round
        return astype(var(astype(x, B.float32), axis, ddof, keepdims), x.dtype)
    axes = norm_axes(axis, x.ndim, "var")
    n = _count(x.shape, axes) - ddof
    if n <= 0:  # inf/NaN, not -0.0 or a negative variance from 0 / -k; with the mean held
        # constant the gradient is inf * (x - mean), not NaN from the mean's path
        warnings.warn(f"var: ddof (correction) {ddof} leaves {n} degrees of freedom "
                      f"({n + ddof} values per result): the result is inf, or NaN where they "
                      "are all equal", RuntimeWarning, stacklevel=3)
        n = 0.0
        with no_grad():
            m = _mean(x, axis=axes, keepdims=True)
    else:
        m = _mean(x, axis=axes, keepdims=True)
    centred = x - m
    if x.dtype.kind == "c":  # |x - mean|^2, a real variance as PyTorch's
        re, im = centred.real, centred.imag
        return _sum(re * re + im * im, axis=axes, keepdims=bool(keepdims)) / n
    return _sum(centred * centred, axis=axes, keepdims=bool(keepdims)) / n


def std(x, axis=None, ddof: int = 0, keepdims: bool = False, *, correction: int | None = None,
        unbiased: bool | None = None):
    """Standard deviation, sqrt(var) (the same arguments); its gradient is 0 where the
    deviation is 0 (PyTorch), not 0 * inf."""
    axis, ddof = _ddof("std", axis, ddof, correction, unbiased)
    if x.dtype in (B.float16, B.bfloat16):  # in float32, rounded once (a float16 variance
        # over 65504 is inf)
        return astype(std(astype(x, B.float32), axis, ddof, keepdims), x.dtype)
    v = var(x, axis, ddof, keepdims)
    zero = v == 0
    return where(zero, 0, sqrt(where(zero, 1, v)))


# === more reductions: prod, amax/amin, nan-aware, counts, norms, moments =======================
import math as _math  # noqa: E402
from collections import namedtuple as _namedtuple  # noqa: E402

from ..errors import DTypeError as _DTypeError  # noqa: E402
from ..errors import ShapeError as _ShapeError  # noqa: E402
from .elementwise import abs as _abs  # noqa: E402
from .elementwise import isnan as _isnan  # noqa: E402
from .elementwise import sign as _sign  # noqa: E402
from .elementwise import where as _where  # noqa: E402
from .shape import norm_axis  # noqa: E402
from .shape import transpose as _transpose  # noqa: E402
from .shape import squeeze as _squeeze  # noqa: E402

MinMax = _namedtuple("MinMax", ["min", "max"])


def _kept(ans, x, axis, keepdims):
    return ans if keepdims else reshape(ans, keepdims_shape(x.shape, axis))


def _numpy_axis(op: str, dim, keepdim: bool, axis, keepdims) -> tuple:
    """PyTorch's ``dim``/``keepdim`` or NumPy's ``axis``/``keepdims`` (not both of a pair)."""
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{op}: give dim= (PyTorch) or axis= (NumPy), not both")
        dim = axis
    if keepdims is not None:
        if keepdim:
            raise TypeError(f"{op}: give keepdim= (PyTorch) or keepdims= (NumPy), not both")
        keepdim = keepdims
    return dim, bool(keepdim)


def amax(x, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):
    """Largest value over ``dim`` (NumPy's ``axis``); tied maxima share the gradient evenly
    (PyTorch's amax)."""
    ordered("amax", x)
    dim, keepdim = _numpy_axis("amax", dim, keepdim, axis, keepdims)
    return max(x, scalar_dims(dim, x.ndim, "amax"), keepdim)


def amin(x, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool | None = None):
    """Smallest value over ``dim`` (NumPy's ``axis``); tied minima share the gradient evenly
    (PyTorch's amin)."""
    ordered("amin", x)
    dim, keepdim = _numpy_axis("amin", dim, keepdim, axis, keepdims)
    return min(x, scalar_dims(dim, x.ndim, "amin"), keepdim)


def aminmax(x, *, dim=None, keepdim: bool = False) -> MinMax:
    """(min, max) over ``dim`` (all when None)."""
    ordered("aminmax", x)
    dim = scalar_dims(dim, x.ndim, "aminmax")
    return MinMax(min(x, dim, keepdim), max(x, dim, keepdim))


def nansum(x, dim=None, keepdim: bool = False, *, dtype=None):
    """Sum treating NaN as zero (NaNs get no gradient); ``dtype=`` casts the input first."""
    x = _in(x, dtype)
    return _out(sum(_where(_isnan(x), 0, x), scalar_dims(dim, x.ndim, "nansum"), keepdim), dtype)


def nanmean(x, dim=None, keepdim: bool = False, *, dtype=None):
    """Mean of the non-NaN entries (NaN where there are none, as PyTorch: there the
    gradient is NaN too); ``dtype=`` casts the input first."""
    x = _mean_in(x, dtype, "nanmean")
    dim = scalar_dims(dim, x.ndim, "nanmean")
    ok = ~_isnan(x)
    return sum(_where(ok, x, 0), dim, keepdim) / astype(sum(ok, dim, keepdim), x.dtype)


def count_nonzero(x, dim=None):
    """How many entries are nonzero over ``dim`` (int64); an empty tuple or list of dims
    counts over all of them, as PyTorch's."""
    if isinstance(dim, tuple | list) and not dim:
        dim = None
    return sum(x != 0, scalar_dims(dim, x.ndim, "count_nonzero"))


def _moments_args(op, x, dim, unbiased, correction):
    """(dim, correction) of PyTorch's var_mean/std_mean: ``op(x, True)`` is ``unbiased``,
    ``correction`` defaults to 1, and a 0-d ``x`` takes dim 0 or -1."""
    if isinstance(dim, bool):
        if unbiased is not None:
            raise TypeError(f"{op}: got unbiased twice (a bool where dim goes is unbiased)")
        dim, unbiased = None, dim
    if unbiased is not None:
        if correction is not None:
            raise TypeError(f"{op}: pass correction= or unbiased=, not both")
        correction = int(unbiased)
    return scalar_dims(dim, x.ndim, op), 1 if correction is None else correction


def var_mean(x, dim=None, unbiased: bool | None = None, keepdim: bool = False, *,
             correction: int | None = None):
    """(var, mean) over ``dim`` with PyTorch's default ``correction=1`` (unbiased);
    ``unbiased=False`` (or ``correction=0``) divides by N."""
    dim, c = _moments_args("var_mean", x, dim, unbiased, correction)
    return var(x, dim, c, keepdim), mean(x, dim, keepdim)


def std_mean(x, dim=None, unbiased: bool | None = None, keepdim: bool = False, *,
             correction: int | None = None):
    """(std, mean) over ``dim`` with PyTorch's default ``correction=1``; ``unbiased=False``
    (or ``correction=0``) divides by N."""
    dim, c = _moments_args("std_mean", x, dim, unbiased, correction)
    return std(x, dim, c, keepdim), mean(x, dim, keepdim)


# --- norms -----------------------------------------------------------------------------------
_INF = _math.inf


def _vn_fwd(xp, x, ord, axis, keepdims):
    a = xp.abs(x)
    if a.dtype == B.float16:  # summed in float32 and rounded once, as PyTorch: no overflow of
        a = a.astype(B.float32)  # the squares (300² > float16's largest, 65504)
    if ord == _INF:
        out = xp.max(a, axis=axis, keepdims=keepdims)
    elif ord == -_INF:
        out = xp.min(a, axis=axis, keepdims=keepdims)
    elif ord == 0:
        out = xp.sum(a != 0, axis=axis, keepdims=keepdims)
    elif ord == 1:
        out = xp.sum(a, axis=axis, keepdims=keepdims)
    elif ord == 2:
        out = xp.sqrt(xp.sum(a * a, axis=axis, keepdims=keepdims))
    else:
        out = xp.sum(a ** ord, axis=axis, keepdims=keepdims) ** (1.0 / ord)
    return xp.asarray(out).astype(x.dtype, copy=False)


def _vn_partials(x, ans, ord, axis, keepdims):
    """∂‖x‖/∂x with PyTorch's conventions: 0 where the norm is 0; ties of ±inf split evenly."""
    n = _kept(ans, x, axis, keepdims)
    if ord == 0:  # a count: piecewise constant, so 0 everywhere (x * 0 is NaN at ±inf)
        return astype(x == x, x.dtype) * 0  # 0 in x's dtype (NaN too)
    if ord == 1:
        return _sign(x)
    if ord in (_INF, -_INF):
        hit = _attained(_abs(x), n, x.dtype)
        return _sign(x) * hit / _sum(hit, axis=axis, keepdims=True)
    zero = n == 0
    if ord == 2:
        return _where(zero, 0, x / _where(zero, 1, n))
    ax = _abs(_where(x == 0, 1, x))
    if ord < 1:
        return _sign(x) * _where(x == 0, 0, ax ** (ord - 1)) * n ** (1 - ord)
    return _sign(x) * _where(x == 0, 0, ax ** (ord - 1)) * _where(
        zero, 0, 1 / _where(zero, 1, n) ** (ord - 1))


_vector_norm = primitive(
    "vector_norm", _vn_fwd,
    lambda g, ans, x, ord, axis, keepdims: _spread(g, x, axis, keepdims)
    * _vn_partials(x, ans, ord, axis, keepdims),
    saves="both", kind=_RED,
    jvp=lambda ts, ans, x, ord, axis, keepdims: _sum(
        ts[0] * _vn_partials(x, ans, ord, axis, keepdims), axis=axis, keepdims=keepdims),
    doc="The p-norm over axes (p = 0, ±inf, or any real), PyTorch's gradient conventions.")


def _float_only(x, op):
    if not B.is_float(x.dtype):
        raise _DTypeError(f"{op}: expected a floating-point tensor, got dtype {x.dtype}")


def vector_norm(x, ord=2, dim=None, keepdim: bool = False):
    """‖x‖_ord over ``dim`` (all entries when None), as ``torch.linalg.vector_norm``; a
    complex tensor's is the norm of its magnitudes (a real tensor of its width)."""
    if x.dtype.kind == "c":
        x = _abs(x)
    _float_only(x, "vector_norm")
    if isinstance(ord, str) or isinstance(ord, bool):
        raise ValueError(f"vector_norm: ord must be a number, got {ord!r}")
    axis = norm_axes(scalar_dims(dim, x.ndim, "vector_norm"), x.ndim, "vector_norm")
    ord = float(ord)
    if ord < 0:  # no identity: a negative norm over zero entries is undefined, as in PyTorch
        for a in range(x.ndim) if axis is None else axis:
            if x.shape[a] == 0:
                raise _ShapeError(f"vector_norm: cannot take the {ord:g} norm over axis {a}, "
                                  f"which is empty (shape {tuple(x.shape)}); a negative order "
                                  f"has no value for zero entries")
    return _vector_norm(x, ord=ord, axis=axis, keepdims=bool(keepdim))


def _svdvals(a, op, ord):
    from .linalg import svdvals  # singular values come with the linear-algebra family

    return svdvals(a)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim: bool = False):
    """Matrix norms over the two axes ``dim``: 'fro', 'nuc', ±inf, ±1, ±2 (torch.linalg)."""
    _float_only(A, "matrix_norm")
    if A.ndim < 2:
        raise _ShapeError(f"matrix_norm: expected at least 2 dims, got shape {tuple(A.shape)}")
    if len(tuple(dim)) != 2:
        raise _ShapeError(f"matrix_norm: dim must name two axes, got {dim!r}")
    d0, d1 = (norm_axis(int(d), A.ndim, "matrix_norm") for d in dim)
    if d0 == d1:
        raise _ShapeError(f"matrix_norm: dim must name two different axes, got {dim!r}")
    if ord == "fro":
        return vector_norm(A, 2, (d0, d1), keepdim)
    if ord in ("nuc", 2, -2):
        perm = tuple(i for i in range(A.ndim) if i not in (d0, d1)) + (d0, d1)
        s = _svdvals(_transpose(A, perm), "matrix_norm", ord)
        if ord == -2 and s.shape[-1] == 0:
            raise _ShapeError(f"matrix_norm: ord -2 of an empty matrix (shape "
                              f"{tuple(A.shape)}) is a minimum over nothing")
        # an empty matrix's 2-norm is 0 (a sum over nothing), as PyTorch's
        out = sum(s, -1) if ord == "nuc" or s.shape[-1] == 0 else (
            max(s, -1) if ord == 2 else min(s, -1))
        if keepdim:
            for d in sorted((d0, d1)):
                out = reshape(out, out.shape[:d] + (1,) + out.shape[d:])
        return out
    if ord in (_INF, -_INF, 1, -1):
        inner, outer = (d1, d0) if ord in (_INF, -_INF) else (d0, d1)
        s = vector_norm(A, 1, inner, keepdim=True)
        if s.shape[outer] == 0 and ord < 0:
            raise _ShapeError(f"matrix_norm: ord {ord} of an empty matrix (shape "
                              f"{tuple(A.shape)}) is a minimum over nothing")
        # over no rows or columns the maximum is 0 (a sum over nothing), as PyTorch's
        out = (sum if s.shape[outer] == 0 else max if ord > 0 else min)(s, outer, keepdims=True)
        return out if keepdim else _squeeze(out, (d0, d1))
    raise ValueError(f"matrix_norm: ord must be 'fro', 'nuc', inf, -inf, 1, -1, 2 or -2, "
                     f"got {ord!r}")


def norm(x, p="fro", dim=None, keepdim: bool = False, out=None, dtype=None):
    """``torch.norm``: the Frobenius / p vector norm over ``dim``, or 'nuc' over two dims;
    ``dtype`` casts x first, ``out`` receives the result (PyTorch's, differentiable)."""
    if dtype is not None:
        x = x.astype(dtype)
    if p == "nuc":
        r = matrix_norm(x, "nuc", (-2, -1) if dim is None else dim, keepdim)
    else:
        r = vector_norm(x, 2 if p in ("fro", None) else p, dim, keepdim)
    if out is None:
        return r
    from ..tensor import write_out
    return write_out("norm", out, r, differentiable=True)
