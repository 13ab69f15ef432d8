"""NumPy's nan-aware reductions and statistics that PyTorch's namespace lacks (``nanmax``,
``percentile``, ``average``, ``ptp`` ...), with NumPy's meaning and gradients.

Everything here is a composition of existing primitives (where, the reductions and scans,
argsort and take_along_axis, searchsorted, scatter_add), so VJP, JVP, vmap and jit rules come
from them; no primitive is declared. The arguments, dtypes, NaN and empty-input results,
warnings and errors are NumPy's: integers sum in int64 (unsigned ones in uint64), means and
variances of integers are float64, and an all-NaN slice warns (or raises, for nanargmax).
Checks that depend on the values (an all-NaN slice, weights summing to zero, monotonic bins)
read them as the other validations do, so under ``jit`` they see the traced example only.
"""

from __future__ import annotations

import math
import operator
import warnings

from .. import _backend as B
from ..batching import values
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, write_out
from . import index as I
from . import shape as S
from .elementwise import astype, floor, isfinite, isnan, maximum, minimum, remainder, round, where
from .reduce import _sum
from .reduce import all as _all
from .reduce import argmax as _argmax
from .reduce import argmin as _argmin
from .reduce import max as _max
from .reduce import min as _min
from .scan import _cumprod, _cumsum, _prod
from .sort import _numpy_quantile, argsort, searchsorted

__all__ = [
    "nanmax", "nanmin", "nanargmax", "nanargmin", "nanprod", "nancumsum", "nancumprod",
    "nanvar", "nanstd", "percentile", "nanpercentile", "average", "ptp", "cumulative_sum",
    "cumulative_prod", "histogram_bin_edges", "histogram2d", "interp", "digitize",
]

_NAN = math.nan
_INF = math.inf


# --- helpers ---------------------------------------------------------------------------------
def _t(a, like: Tensor | None = None) -> Tensor:
    """``a`` as a tensor (an array-like becomes one with NumPy's dtype, on ``like``'s device)."""
    if isinstance(a, Tensor):
        return a
    xp = like.backend.xp if like is not None else B.np
    return Tensor._of(xp.asarray(a))


def _axes_in_order(op: str, axis, ndim: int) -> tuple | None:
    """NumPy's ``axis`` (None, an int or a tuple) as non-negative ints in the order given; a
    0-d tensor has no axes (NumPy's AxisError)."""
    if axis is None:
        return None
    seq = tuple(axis) if isinstance(axis, tuple | list) else (axis,)
    out = []
    for a in seq:
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{op}: axis must be an integer or a tuple of integers, got "
                            f"{axis!r}") from None
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} is out of bounds for a tensor with {ndim} dims")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axis!r}")
    return tuple(out)


def _axes(op: str, axis, ndim: int) -> tuple | None:
    ax = _axes_in_order(op, axis, ndim)
    return None if ax is None else tuple(sorted(ax))


def _one_axis(op: str, axis, ndim: int) -> int | None:
    if isinstance(axis, tuple | list):
        raise TypeError(f"{op}: axis must be an integer or None, got {axis!r}")
    ax = _axes(op, axis, ndim)
    return None if ax is None else ax[0]


def _count(shape, axes) -> int:
    return math.prod(s for i, s in enumerate(shape) if axes is None or i in axes)


def _kept_shape(shape, axes) -> tuple:
    return tuple(1 if axes is None or i in axes else s for i, s in enumerate(shape))


def _dropped(t: Tensor, shape, axes, keepdims: bool) -> Tensor:
    """``t`` (reduced with keepdims) without the reduced axes unless ``keepdims``."""
    if keepdims:
        return t
    return S.reshape(t, tuple(s for i, s in enumerate(shape) if axes is not None
                              and i not in axes))


def _out(op: str, out, r: Tensor) -> Tensor:
    return r if out is None else write_out(op, out, r, differentiable=True)


def _need_entries(op: str, x: Tensor, axes, reduction: str) -> None:
    if _count(x.shape, axes) == 0:
        raise ValueError(f"{op}: zero-size array to reduction operation {reduction} which has "
                         f"no identity (shape {tuple(x.shape)}, axis "
                         f"{'None' if axes is None else axes})")


def _accumulator(x: Tensor, dtype) -> Tensor:
    """``x`` in the dtype NumPy sums and multiplies it in: ``dtype`` when given, else int64
    for bools and signed integers, uint64 for unsigned ones, the float dtype itself."""
    if dtype is not None:
        return astype(x, B.np.dtype(dtype))
    kind = x.dtype.kind
    if kind in "bi" and x.dtype != B.int64:
        return astype(x, B.int64)
    if kind == "u" and x.dtype != B.np.dtype("uint64"):
        return astype(x, B.np.dtype("uint64"))
    return x


def _inexact(x: Tensor, dtype=None) -> Tensor:
    """``x`` in ``dtype``, or float64 for bools and integers (NumPy's means and variances)."""
    if dtype is not None:
        return astype(x, B.np.dtype(dtype))
    return astype(x, B.float64) if x.dtype.kind in "biu" else x


def _warn(op: str, msg: str) -> None:
    warnings.warn(f"{op}: {msg}", RuntimeWarning, stacklevel=3)


def _any(mask: Tensor) -> bool:
    return bool(values(mask).any())


# --- nanmax / nanmin / nanargmax / nanargmin / ptp ------------------------------------------
def _nan_extreme(op, a, axis, out, keepdims, largest):
    x = _t(a)
    axes = _axes(op, axis, x.ndim)
    _need_entries(op, x, axes, "fmax" if largest else "fmin")
    red = _max if largest else _min
    if not B.is_float(x.dtype):
        return _out(op, out, red(x, axes, bool(keepdims)))
    nan = isnan(x)
    m = red(where(nan, -_INF if largest else _INF, x), axes, bool(keepdims))
    none = _all(nan, axes, bool(keepdims))
    if _any(none):
        _warn(op, "All-NaN slice encountered")
    return _out(op, out, where(none, _NAN, m))


def nanmax(a, axis=None, out=None, keepdims: bool = False) -> Tensor:
    """The largest value over ``axis`` ignoring NaN (NaN, with a RuntimeWarning, where a slice
    is all NaN); tied maxima share the gradient evenly, as PyTorch's amax."""
    return _nan_extreme("nanmax", a, axis, out, keepdims, True)


def nanmin(a, axis=None, out=None, keepdims: bool = False) -> Tensor:
    """The smallest value over ``axis`` ignoring NaN (NaN, with a RuntimeWarning, where a
    slice is all NaN); tied minima share the gradient evenly, as PyTorch's amin."""
    return _nan_extreme("nanmin", a, axis, out, keepdims, False)


def _nan_arg(op, a, axis, out, keepdims, largest):
    x = _t(a)
    ax = _one_axis(op, axis, x.ndim)
    if _count(x.shape, None if ax is None else (ax,)) == 0:
        raise ValueError(f"{op}: attempt to get {'argmax' if largest else 'argmin'} of an "
                         f"empty sequence (shape {tuple(x.shape)}, axis {ax})")
    if B.is_float(x.dtype):
        nan = isnan(x)
        if _any(_all(nan, None if ax is None else (ax,))):
            raise ValueError(f"{op}: All-NaN slice encountered (shape {tuple(x.shape)}, axis "
                             f"{ax}): no index to return")
        x = where(nan, -_INF if largest else _INF, x)
    r = (_argmax if largest else _argmin)(x, ax, bool(keepdims))
    return _out(op, out, r)


def nanargmax(a, axis: int | None = None, out=None, *, keepdims: bool = False) -> Tensor:
    """Index of the largest value ignoring NaN (flattened when ``axis`` is None); an all-NaN
    slice raises ValueError, as NumPy."""
    return _nan_arg("nanargmax", a, axis, out, keepdims, True)


def nanargmin(a, axis: int | None = None, out=None, *, keepdims: bool = False) -> Tensor:
    """Index of the smallest value ignoring NaN; an all-NaN slice raises ValueError."""
    return _nan_arg("nanargmin", a, axis, out, keepdims, False)


def ptp(a, axis=None, out=None, keepdims: bool = False) -> Tensor:
    """Peak to peak, max - min over ``axis`` (in the input's dtype: integers wrap, as NumPy);
    the gradient is the max's minus the min's, ties shared evenly."""
    x = _t(a)
    if x.dtype.kind == "b":
        raise DTypeError("ptp: a boolean tensor has no subtraction (cast it to an integer "
                         "dtype first)")
    axes = _axes("ptp", axis, x.ndim)
    _need_entries("ptp", x, axes, "maximum")
    return _out("ptp", out, _max(x, axes, bool(keepdims)) - _min(x, axes, bool(keepdims)))


# --- nanprod / nancumsum / nancumprod / cumulative_sum / cumulative_prod ------------------------
def _nan_as(x: Tensor, fill: float) -> Tensor:
    return where(isnan(x), fill, x) if B.is_inexact(x.dtype) else x


def nanprod(a, axis=None, dtype=None, out=None, keepdims: bool = False) -> Tensor:
    """Product over ``axis`` treating NaN as 1 (1 for no entries); integers multiply in int64
    (unsigned in uint64). Exact gradients with zeros; NaNs get none."""
    x = _t(a)
    axes = _axes("nanprod", axis, x.ndim)
    x = _accumulator(_nan_as(x, 1.0), dtype)
    return _out("nanprod", out, _prod(x, axis=axes, keepdims=bool(keepdims)))


def _scan_axis(op, x, axis):
    if axis is None:
        return S.reshape(x, (-1,)), 0
    return x, _one_axis(op, axis, x.ndim)


def nancumsum(a, axis: int | None = None, dtype=None, out=None) -> Tensor:
    """Running sum along ``axis`` (of the flattened input when None) treating NaN as 0."""
    x, ax = _scan_axis("nancumsum", _t(a), axis)
    return _out("nancumsum", out, _cumsum(_accumulator(_nan_as(x, 0.0), dtype), axis=ax))


def nancumprod(a, axis: int | None = None, dtype=None, out=None) -> Tensor:
    """Running product along ``axis`` (of the flattened input when None) treating NaN as 1;
    exact gradients with zeros."""
    x, ax = _scan_axis("nancumprod", _t(a), axis)
    return _out("nancumprod", out, _cumprod(_accumulator(_nan_as(x, 1.0), dtype), axis=ax))


def _cumulative(op, scan, identity, x, axis, dtype, out, include_initial):
    x = _t(x)
    if x.ndim == 0:
        x = S.reshape(x, (1,))
    if axis is None:
        if x.ndim > 1:
            raise ShapeError(f"{op}: for tensors with more than one dimension axis= is "
                             f"required, got shape {tuple(x.shape)}")
        ax = 0
    else:
        ax = _one_axis(op, axis, x.ndim)
    r = scan(_accumulator(x, dtype), axis=ax)
    if include_initial:
        shape = tuple(1 if i == ax else s for i, s in enumerate(r.shape))
        first = Tensor._of(r.backend.xp.full(shape, identity, dtype=r.dtype))
        r = S.concatenate([first, r], ax)
    return _out(op, out, r)


def cumulative_sum(x, /, *, axis: int | None = None, dtype=None, out=None,
                   include_initial: bool = False) -> Tensor:
    """NumPy 2's running sum along ``axis`` (needed above 1-d); ``include_initial`` starts
    with the sum of nothing, 0, so the result is one longer."""
    return _cumulative("cumulative_sum", _cumsum, 0, x, axis, dtype, out, include_initial)


def cumulative_prod(x, /, *, axis: int | None = None, dtype=None, out=None,
                    include_initial: bool = False) -> Tensor:
    """NumPy 2's running product along ``axis`` (needed above 1-d); ``include_initial``
    starts with 1; exact gradients with zeros."""
    return _cumulative("cumulative_prod", _cumprod, 1, x, axis, dtype, out, include_initial)


# --- nanvar / nanstd -------------------------------------------------------------------------
def _nanvar(op, a, axis, dtype, ddof, keepdims, correction):
    if correction is not None:
        if ddof != 0:
            raise ValueError(f"{op}: ddof and correction can't be provided simultaneously")
        ddof = correction
    x = _t(a)
    if x.dtype.kind == "c":
        raise DTypeError(f"{op}: complex input is not supported, got {x.dtype}")
    axes = _axes(op, axis, x.ndim)
    exact = x.dtype.kind in "biu"  # no NaN: NumPy's var, which divides by max(dof, 0)
    x = _inexact(x, dtype)
    nan = isnan(x)
    cnt = _sum(astype(~nan, x.dtype), axis=axes, keepdims=True)
    none = cnt == 0
    mean = _sum(where(nan, 0.0, x), axis=axes, keepdims=True) / where(none, 1.0, cnt)
    dev = where(nan, 0.0, x - mean)
    dof = cnt - float(ddof)
    bad = dof <= 0
    if _any(bad):
        _warn(op, "Degrees of freedom <= 0 for slice.")
    ss = _sum(dev * dev, axis=axes, keepdims=True)
    worst = where(ss == 0, _NAN, where(ss == 0, 1.0, ss) * _INF) if exact else _NAN
    v = where(bad, worst, ss / where(bad, 1.0, dof))
    return _dropped(v, x.shape, axes, bool(keepdims))


def nanvar(a, axis=None, dtype=None, out=None, ddof: float = 0, keepdims: bool = False, *,
           correction: float | None = None) -> Tensor:
    """Variance of the non-NaN values over ``axis``, dividing by N - ``ddof`` (NumPy's
    ``correction=`` is the same); NaN with a RuntimeWarning where N - ddof <= 0. Integers
    give float64."""
    return _out("nanvar", out, _nanvar("nanvar", a, axis, dtype, ddof, keepdims, correction))


def nanstd(a, axis=None, dtype=None, out=None, ddof: float = 0, keepdims: bool = False, *,
           correction: float | None = None) -> Tensor:
    """Standard deviation of the non-NaN values, sqrt(nanvar) (the same arguments); its
    gradient is 0 where the deviation is 0, as PyTorch's std."""
    v = _nanvar("nanstd", a, axis, dtype, ddof, keepdims, correction)
    zero = v == 0
    return _out("nanstd", out, where(zero, 0.0, where(zero, 1.0, v) ** 0.5))


# --- average ---------------------------------------------------------------------------------
def _weights_like(op: str, weights, x: Tensor, order) -> Tensor:
    """``weights`` laid out to broadcast against ``x``: the shape of ``x``, or (with ``axis``)
    the lengths of the axes in ``order``, placed on those axes (NumPy's rule)."""
    w = _t(weights, x)
    if tuple(w.shape) == tuple(x.shape):
        return w
    if order is None:
        raise TypeError(f"{op}: axis must be given when the shapes of a {tuple(x.shape)} and "
                        f"weights {tuple(w.shape)} differ")
    want = tuple(x.shape[ax] for ax in order)
    if tuple(w.shape) != want:
        raise ShapeError(f"{op}: weights of shape {tuple(w.shape)} do not match a "
                         f"{tuple(x.shape)} along axis {order}: expected the shape of a or "
                         f"{want}")
    w = S.transpose(w, tuple(sorted(range(len(order)), key=lambda i: order[i])))
    return S.reshape(w, tuple(s if i in order else 1 for i, s in enumerate(x.shape)))


def average(a, axis=None, weights=None, returned: bool = False, *, keepdims: bool = False):
    """The (weighted) mean over ``axis``: sum(a * w) / sum(w), differentiable in both.
    ``weights`` have a's shape or, with ``axis``, the lengths of those axes; weights summing to
    zero raise ZeroDivisionError. ``returned`` also gives the sum of the weights (the count
    without weights), broadcast to the result's shape."""
    x = _t(a)
    order = _axes_in_order("average", axis, x.ndim)
    axes = None if order is None else tuple(sorted(order))
    kd = bool(keepdims)
    if weights is None:
        xf = _inexact(x)
        n = _count(x.shape, axes)
        s = _sum(xf, axis=axes, keepdims=kd)
        if n == 0:
            _warn("average", "Mean of empty slice")
            avg = s * _NAN
        else:
            avg = s / float(n)
        scl = Tensor._of(avg.backend.xp.full(tuple(avg.shape), n, dtype=avg.dtype))
    else:
        w = _weights_like("average", weights, x, order)
        dt = B.np.result_type(x.dtype, w.dtype, *(("f8",) if x.dtype.kind in "biu" else ()))
        xf, wf = astype(x, dt), astype(w, dt)
        scl = _sum(S.broadcast_to(wf, tuple(x.shape)) if axes is None else wf, axis=axes,
                   keepdims=kd)
        if _any(scl == 0):
            raise ZeroDivisionError(f"average: the weights sum to zero along axis {order}, so "
                                    f"they cannot be normalized")
        avg = _sum(xf * wf, axis=axes, keepdims=kd) / scl
    if not returned:
        return avg
    if tuple(scl.shape) != tuple(avg.shape):
        scl = S.broadcast_to(scl, tuple(avg.shape))
    return avg, scl


# --- percentile / nanpercentile ----------------------------------------------------------------
def _h_and_f(alpha: float, beta: float):
    """Hyndman & Fan's continuous virtual index n q + alpha + q (1 - alpha - beta) - 1."""
    return lambda n, q: n * q + (alpha + q * (1 - alpha - beta)) - 1


def _boundary(index, odd_only: bool):
    """The discrete methods' order statistic: floor(index) where the fraction is 0 (for
    closest_observation only at odd floors), else the next one; never below 0."""
    prev = floor(index)
    at = (index - prev) == 0
    if odd_only:
        at = at & (remainder(prev, 2.0) == 1)
    return maximum(where(at, prev, prev + 1.0), 0.0)


# name -> (virtual index from (count, q), discrete?, gamma fix from (gamma, index) or None)
_METHODS = {
    "inverted_cdf": (lambda n, q: _boundary(n * q - 1.0, False), True, None),
    "averaged_inverted_cdf": (lambda n, q: n * q - 1.0, False,
                              lambda g, i: where(g == 0, 0.5, 1.0)),
    "closest_observation": (lambda n, q: _boundary(n * q - 1.5, True), True, None),
    "interpolated_inverted_cdf": (_h_and_f(0.0, 1.0), False, None),
    "hazen": (_h_and_f(0.5, 0.5), False, None),
    "weibull": (_h_and_f(0.0, 0.0), False, None),
    "linear": (lambda n, q: (n - 1.0) * q, False, None),
    "median_unbiased": (_h_and_f(1 / 3.0, 1 / 3.0), False, None),
    "normal_unbiased": (_h_and_f(3 / 8.0, 3 / 8.0), False, None),
    "lower": (lambda n, q: floor((n - 1.0) * q), True, None),
    "higher": (lambda n, q: -floor(-((n - 1.0) * q)), True, None),
    "midpoint": (lambda n, q: 0.5 * (floor((n - 1.0) * q) - floor(-((n - 1.0) * q))), False,
                 lambda g, i: where(remainder(i, 1.0) == 0, 0.0, 0.5)),
    "nearest": (lambda n, q: round((n - 1.0) * q), True, None),
}


def _lanes(x: Tensor, axes, n: int) -> tuple:
    """``x`` with the reduced ``axes`` moved last and merged into one: (lanes, rest shape)."""
    if axes is None:
        return S.reshape(x, (n,)), ()
    keep = tuple(i for i in range(x.ndim) if i not in axes)
    rest = tuple(x.shape[i] for i in keep)
    return S.reshape(S.transpose(x, keep + axes), rest + (n,)), rest


def _pick(xs: Tensor, idx: Tensor, hi: int) -> Tensor:
    """Entries of the sorted lanes ``xs`` at float positions ``idx`` (..., m), clipped."""
    i = astype(minimum(maximum(idx, 0.0), float(max(hi, 0))), B.int64)
    return I.take_along_axis(xs, S.broadcast_to(i, tuple(xs.shape[:-1]) + (i.shape[-1],)), -1)


def _quantile(op, a, q, axis, out, method, keepdims, weights, skip_nan, scale):
    x = _t(a)
    if x.dtype.kind == "c":
        raise DTypeError(f"{op}: a must hold real numbers, got {x.dtype}")
    if method not in _METHODS:
        raise ValueError(f"{op}: {method!r} is not a valid method; expected one of "
                         f"{tuple(_METHODS)}")
    weak = type(q) in (int, float)
    qt = _t(q, x)
    if qt.ndim > 2:
        raise ShapeError(f"{op}: q must be a scalar, 1-d or 2-d, got shape {tuple(qt.shape)}")
    if qt.dtype.kind not in "biu" and not B.is_float(qt.dtype):
        raise DTypeError(f"{op}: q must be real, got {qt.dtype}")
    qdt = qt.dtype if B.is_float(qt.dtype) else B.float64
    qf = astype(qt, qdt) / float(scale)
    qv = values(qf)
    if qv.size and not bool(((qv >= 0) & (qv <= 1)).all()):
        what = "percentiles must be in the range [0, 100]" if scale == 100 else \
            "quantiles must be in the range [0, 1]"
        raise ValueError(f"{op}: {what}, got {values(qt).tolist()}")
    discrete = _METHODS[method][1]
    if weights is not None and method != "inverted_cdf":
        raise ValueError(f"{op}: only method 'inverted_cdf' supports weights, got {method!r}")
    if x.dtype.kind == "b" and not (discrete or weights is not None):
        raise DTypeError(f"{op}: method {method!r} interpolates, which a boolean tensor cannot "
                         "(cast it to a number dtype first)")
    if discrete or weights is not None:
        dt = x.dtype
    elif x.dtype.kind in "iu":
        dt = B.float64
    else:
        dt = x.dtype if weak else B.np.result_type(x.dtype, qdt)
    order = _axes_in_order(op, axis, x.ndim)
    axes = None if order is None else tuple(sorted(order))
    n = _count(x.shape, axes)
    if skip_nan and x.numel() == 0:  # NumPy answers nanmean(a, axis) here, without q's dims
        rest = tuple(s for i, s in enumerate(x.shape) if axes is not None and i not in axes)
        if n == 0 and math.prod(rest):
            _warn(op, "Mean of empty slice")
        kept = _kept_shape(x.shape, axes) if keepdims else rest
        return _out(op, out, Tensor._of(x.backend.xp.full(kept, _NAN, dtype=_inexact(x).dtype)))
    lanes, rest = _lanes(x, axes, n)
    m = qf.numel()
    qshape = tuple(qt.shape)
    shape = qshape + (_kept_shape(x.shape, axes) if keepdims else rest)
    if n == 0:
        if not skip_nan:
            raise IndexError(f"{op}: no entries to take a percentile of (shape "
                             f"{tuple(x.shape)}, axis {order})")
        if math.prod(rest):
            _warn(op, "Mean of empty slice")
        return _out(op, out, Tensor._of(x.backend.xp.full(shape, _NAN, dtype=dt)))
    w = None
    if weights is not None:
        w = _weights_like(op, weights, x, order)
        if _any(w < 0):
            raise ValueError(f"{op}: weights must be non-negative")
        w = _lanes(S.broadcast_to(w, tuple(x.shape)), axes, n)[0]
    srt = argsort(lanes, -1)  # stable; NaN sorts last
    xs = I.take_along_axis(lanes, srt, -1)  # (*rest, n)
    nan_kind = B.is_float(x.dtype)
    isn = isnan(xs) if nan_kind else None
    if skip_nan and nan_kind:
        cnt = astype(_sum(~isn, axis=(xs.ndim - 1,), keepdims=True), qdt)  # (*rest, 1)
    else:
        cnt = Tensor._of(x.backend.xp.full(rest + (1,), n, dtype=qdt))
    qb = S.reshape(qf, (1,) * len(rest) + (m,))
    if w is not None:
        res = _weighted_pick(op, xs, I.take_along_axis(w, srt, -1), isn, qb, skip_nan, qdt)
    elif discrete:
        res = _pick(xs, _METHODS[method][0](cnt, qb), n - 1)
    else:
        index, _, fix = _METHODS[method]
        vi = index(cnt, qb)  # (*rest, m)
        prev = floor(vi)
        gamma = vi - prev if fix is None else fix(vi - prev, vi)
        above, below = vi >= cnt - 1.0, vi < 0
        prev = where(above, cnt - 1.0, where(below, 0.0, prev))
        nxt = where(above, cnt - 1.0, where(below, 0.0, prev + 1.0))
        lo, hi = astype(_pick(xs, prev, n - 1), dt), astype(_pick(xs, nxt, n - 1), dt)
        g = astype(gamma, dt)
        diff = hi - lo
        res = where(g >= 0.5, hi - diff * (1.0 - g), lo + diff * g)  # NumPy's two-sided lerp
    if nan_kind:
        last = xs[..., n - 1:n]
        if skip_nan:
            none = isnan(xs[..., 0:1])
            if _any(none):
                _warn(op, "All-NaN slice encountered")
            res = where(none, _NAN, res)
        else:
            res = where(isnan(last), _NAN, res)
    res = S.moveaxis(res, -1, 0)  # (m, *rest)
    return _out(op, out, S.reshape(res, shape))


def _weighted_pick(op, xs, ws, isn, qb, skip_nan, qdt):
    """The weighted inverted-CDF quantile: the first sorted entry whose cumulative weight
    share reaches q (NumPy's only weighted method)."""
    ws = astype(ws, B.float64)
    if skip_nan and isn is not None:
        ws = where(isn, 0.0, ws)
    last = xs.ndim - 1
    total = _sum(ws, axis=(last,), keepdims=True)
    empty = total != total  # no slice is left without entries...
    if skip_nan and isn is not None:  # ...but an all-NaN one (NaN, as unweighted)
        empty = (total == 0) & isn[..., -1:]
    tv = values(where(empty, 1.0, total))
    if not bool(B.np.isfinite(tv).all()) or bool((tv == 0).any()):
        raise ValueError(f"{op}: the weights include NaN or inf, or are all zero in a slice")
    cdf = astype(_cumsum(ws, axis=last) / where(empty, 1.0, total), qdt)
    cdf = where(cdf == 0, -1.0, cdf)
    below = S.expand_dims(cdf, -2) < S.expand_dims(qb, -1)  # (*rest, m, n)
    k = _sum(below, axis=(below.ndim - 1,), keepdims=False)
    n = xs.shape[-1]
    return _pick(xs, astype(minimum(k, n - 1), qdt), n - 1)


_numpy_quantile[0] = _quantile  # NumPy's forms of sort.quantile and sort.median


def percentile(a, q, axis=None, out=None, overwrite_input: bool = False,
               method: str = "linear", keepdims: bool = False, *, weights=None) -> Tensor:
    """The ``q``-th percentiles (0..100; a number, or q's shape leads the result) over ``axis``
    with NumPy's 13 ``method``s; a slice with NaN gives NaN. ``weights`` (method
    'inverted_cdf' only) weight the entries. The gradient goes to the one or two sorted
    entries each result interpolates (ties: the stably sorted one)."""
    return _quantile("percentile", a, q, axis, out, method, keepdims, weights, False, 100)


def nanpercentile(a, q, axis=None, out=None, overwrite_input: bool = False,
                  method: str = "linear", keepdims: bool = False, *, weights=None) -> Tensor:
    """``percentile`` of the non-NaN values; NaN, with a RuntimeWarning, for a slice without
    any."""
    return _quantile("nanpercentile", a, q, axis, out, method, keepdims, weights, True, 100)


# --- histogram_bin_edges / histogram2d ----------------------------------------------------------
def _range_pair(op: str, rng) -> tuple:
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: range must be a pair (min, max), got {rng!r}") from None
    if lo > hi:
        raise ValueError(f"{op}: max must be larger than min in range, got ({lo}, {hi})")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{op}: the supplied range [{lo}, {hi}] is not finite")
    return lo, hi


def _equal_edges(op: str, x: Tensor, n: int, rng, out_dtype) -> Tensor:
    """NumPy's ``n`` equal bins over ``rng`` or the data's [min, max] (widened by 0.5 each way
    when they agree), as np.linspace computes them; differentiable in the data's min and max."""
    xp = x.backend.xp
    if rng is not None or x.numel() == 0:
        lo, hi = _range_pair(op, rng) if rng is not None else (0.0, 1.0)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = Tensor._of(xp.linspace(lo, hi, n + 1))
        return edges if out_dtype is None else astype(edges, out_dtype)
    dt = x.dtype if B.is_float(x.dtype) else B.float64
    lo, hi = astype(_min(x), dt), astype(_max(x), dt)
    a, b = float(values(lo).min()), float(values(hi).max())  # every example's, inside vmap
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{op}: the autodetected range [{a}, {b}] is not finite")
    same = lo == hi
    lo, hi = where(same, lo - 0.5, lo), where(same, hi + 0.5, hi)
    k = Tensor._of(xp.arange(n + 1, dtype=dt))
    step = (hi - lo) / float(n)
    y = k * step + lo
    if n >= 1:  # the last edge is exactly the maximum
        y = S.concatenate([y[:n], S.reshape(hi, (1,))], 0)
    return y if out_dtype is None else astype(y, out_dtype)


def _array_edges(op: str, bins, like: Tensor, what: str) -> Tensor:
    e = _t(bins, like)
    if e.ndim != 1:
        raise ShapeError(f"{op}: {what} must be a number or 1-d, got shape {tuple(e.shape)}")
    ev = values(e)
    if ev.shape[0] > 1 and bool((ev[:-1] > ev[1:]).any()):
        raise ValueError(f"{op}: {what} must increase monotonically, when an array")
    return e


def _bin_count(op: str, bins, what: str = "bins") -> int:
    try:
        n = operator.index(bins)
    except TypeError:
        raise TypeError(f"{op}: {what} must be an integer, a string, or an array, got "
                        f"{bins!r}") from None
    if n < 1:
        raise ValueError(f"{op}: {what} must be positive, when an integer, got {n}")
    return n


def histogram_bin_edges(a, bins=10, range=None, weights=None) -> Tensor:
    """The bin edges np.histogram would use: ``bins`` equal bins (an int, or one of NumPy's
    estimators such as 'auto', 'fd', 'sturges') over ``range`` or the data's range, or the
    given monotonic edges. float32 data keep float32 edges; integers give float64."""
    op = "histogram_bin_edges"
    x = S.reshape(_t(a), (-1,))
    if x.dtype.kind == "b":
        x = astype(x, B.np.dtype("uint8"))
    if weights is not None and tuple(_t(weights, x).shape) != tuple(_t(a).shape):
        raise ShapeError(f"{op}: weights should have the same shape as a "
                         f"{tuple(_t(a).shape)}, got {tuple(_t(weights, x).shape)}")
    bin_type = x.dtype if B.is_float(x.dtype) else B.float64
    if isinstance(bins, str):
        if weights is not None:
            raise TypeError(f"{op}: estimating the number of bins ({bins!r}) is not "
                            "supported for weighted data")
        x._concrete(f"{op} with bins={bins!r} (the number of bins depends on the values)")
        host = B.np.asarray(x.numpy())
        try:
            n = B.np.histogram_bin_edges(host, bins, range).shape[0] - 1
        except ValueError as e:
            raise ValueError(f"{op}: {e}") from None
        return _equal_edges(op, x, n, range, bin_type)
    if isinstance(bins, Tensor) and bins.ndim == 1 or not isinstance(bins, Tensor) and \
            B.np.ndim(bins) == 1:
        return _array_edges(op, bins, x, "bins")
    if B.np.ndim(values(bins) if isinstance(bins, Tensor) else bins) != 0:
        raise ShapeError(f"{op}: bins must be 1-d, when an array")
    n = _bin_count(op, int(values(bins)) if isinstance(bins, Tensor) else bins)
    return _equal_edges(op, x, n, range, bin_type)


def _same_float(a: Tensor, b: Tensor) -> tuple:
    dt = B.np.result_type(a.dtype, b.dtype)
    return (a if a.dtype == dt else astype(a, dt)), (b if b.dtype == dt else astype(b, dt))


def histogram2d(x, y, bins=10, range=None, density: bool | None = None, weights=None):
    """(H, xedges, yedges): the 2-d histogram of the points (x[i], y[i]), H[i, j] counting the
    points in xedges[i] <= x < xedges[i+1] and likewise for y (the last bins include their
    right edge). ``bins``: an int or a pair of ints or edge arrays; ``range``: a pair of
    (min, max); ``weights`` sum instead of counting (H is float64, differentiable in them);
    ``density`` divides by the total and the bin areas."""
    op = "histogram2d"
    xt, yt = _t(x), _t(y)
    xt, yt = _same_float(xt, _t(yt, xt))
    if xt.ndim != 1 or tuple(xt.shape) != tuple(yt.shape):
        raise ShapeError(f"{op}: x and y must be 1-d with the same length, got shapes "
                         f"{tuple(xt.shape)} and {tuple(yt.shape)}")
    try:
        nb = len(bins) if not isinstance(bins, Tensor) else (bins.shape[0] if bins.ndim else 0)
    except TypeError:
        nb = 0
    if isinstance(bins, Tensor) and bins.ndim == 0:
        bins = [bins, bins]
    elif nb == 0 and not isinstance(bins, Tensor):
        bins = [bins, bins]
    elif nb != 2:
        if nb == 1:
            raise ValueError(f"{op}: bins must be an int, an array, or a pair of them, got one "
                             "entry")
        bins = [bins, bins]
    if range is None:
        range = (None, None)
    elif len(range) != 2:
        raise ValueError(f"{op}: range must hold one (min, max) pair per axis, got {range!r}")
    edges, idx = [], []
    for i, (col, b, r) in enumerate(zip((xt, yt), bins, range)):
        what = f"bins[{i}]"
        if isinstance(b, Tensor) and b.ndim == 1 or not isinstance(b, Tensor) and \
                B.np.ndim(b) == 1:
            e = _array_edges(op, b, col, what)
        elif B.np.ndim(values(b) if isinstance(b, Tensor) else b) == 0:
            nbins = _bin_count(op, int(values(b)) if isinstance(b, Tensor) else b, what)
            e = _equal_edges(op, col, nbins, r, None)
        else:
            raise ShapeError(f"{op}: {what} must be a scalar or 1d array")
        c, ce = _same_float(col, e)
        k = searchsorted(ce, c, right=True)
        last = ce[e.shape[0] - 1:e.shape[0]]
        k = where(c == last, k - 1, k)  # the right edge belongs to the last bin
        edges.append(e)
        idx.append(k)
    nx, ny = edges[0].shape[0] - 1, edges[1].shape[0] - 1
    ix, iy = idx
    inside = (ix >= 1) & (ix <= nx) & (iy >= 1) & (iy <= ny)
    flat = where(inside, (ix - 1) * ny + (iy - 1), 0)
    if weights is None:
        w = Tensor._of(xt.backend.xp.ones(tuple(xt.shape), dtype=B.float64))
    else:
        w = _t(weights, xt)
        if tuple(w.shape) != tuple(xt.shape):
            raise ShapeError(f"{op}: weights must have one entry per point, shape "
                             f"{tuple(xt.shape)}, got {tuple(w.shape)}")
        w = astype(w, B.float64)
    size = max(nx, 0) * max(ny, 0)
    h = I.scatter_add(Tensor._of(xt.backend.xp.zeros((size,), dtype=B.float64)), 0, flat,
                      where(inside, w, 0.0))
    h = S.reshape(h, (max(nx, 0), max(ny, 0)))
    if density:
        dx = astype(edges[0][1:] - edges[0][:-1], B.float64)
        dy = astype(edges[1][1:] - edges[1][:-1], B.float64)
        h = h / S.reshape(dx, (nx, 1)) / S.reshape(dy, (1, ny)) / _sum(h, axis=None,
                                                                          keepdims=False)
    return h, edges[0], edges[1]


# --- interp / digitize -------------------------------------------------------------------------
def interp(x, xp, fp, left=None, right=None, period=None) -> Tensor:
    """NumPy's 1-d piecewise-linear interpolation of the points (xp, fp) at ``x`` (xp
    increasing), in float64: ``left``/``right`` (default fp[0]/fp[-1]) outside, or periodic
    with ``period``. Differentiable in x (the segment's slope), fp, and xp."""
    op = "interp"
    xq = _t(x)
    xs, fs = _t(xp, xq), _t(fp, xq)
    if fs.dtype.kind == "c" or xq.dtype.kind == "c" or xs.dtype.kind == "c":
        raise DTypeError(f"{op}: complex values are not supported, got {fs.dtype}")
    if xs.ndim != 1 or fs.ndim != 1:
        raise ShapeError(f"{op}: xp and fp must be 1-d sequences, got shapes "
                         f"{tuple(xs.shape)} and {tuple(fs.shape)}")
    if xs.shape[0] != fs.shape[0]:
        raise ShapeError(f"{op}: fp and xp are not of the same length ({fs.shape[0]} and "
                         f"{xs.shape[0]})")
    if xs.shape[0] == 0:
        raise ValueError(f"{op}: array of sample points (xp) is empty")
    xq, xs, fs = (t if t.dtype == B.float64 else astype(t, B.float64) for t in (xq, xs, fs))
    if period is not None:
        period = abs(float(values(period) if isinstance(period, Tensor) else period))
        if period == 0:
            raise ValueError(f"{op}: period must be a non-zero value")
        left = right = None
        xq, xs = remainder(xq, period), remainder(xs, period)
        srt = argsort(xs, -1)
        xs, fs = I.take_along_axis(xs, srt, 0), I.take_along_axis(fs, srt, 0)
        xs = S.concatenate([xs[-1:] - period, xs, xs[0:1] + period], 0)
        fs = S.concatenate([fs[-1:], fs, fs[0:1]], 0)
    n = xs.shape[0]
    first_x, last_x = xs[0], xs[n - 1]
    first_f, last_f = fs[0], fs[n - 1]
    if n == 1:
        r = S.broadcast_to(first_f, tuple(xq.shape))
    else:
        j = minimum(maximum(searchsorted(xs, xq, right=True) - 1, 0), n - 2)
        x0, x1 = I.take(xs, j), I.take(xs, j + 1)
        f0, f1 = I.take(fs, j), I.take(fs, j + 1)
        with B.np.errstate(invalid="ignore"):  # infinite fp: NumPy's fallbacks below, quietly
            dx = x1 - x0
            slope = (f1 - f0) / where(dx == 0, 1.0, dx)  # dx is 0 only where a later case wins
            r = slope * (xq - x0) + f0
            r = where(isnan(r), slope * (xq - x1) + f1, r)  # the other end, as NumPy
            r = where(isnan(r) & (f0 == f1), f0, r)
            r = where((xq == x0) & ~isfinite(slope), f0, r)
    lv = first_f if left is None else _t(left, xq)
    rv = last_f if right is None else _t(right, xq)
    r = where(xq < first_x, lv if lv.dtype == B.float64 else astype(lv, B.float64), r)
    r = where(xq > last_x, rv if rv.dtype == B.float64 else astype(rv, B.float64), r)
    r = where(xq == last_x, last_f, r)
    return r if n == 1 else where(isnan(xq), xq, r)  # one point: NaN reads fp[0], as NumPy


def digitize(x, bins, right: bool = False) -> Tensor:
    """The index of the bin each value falls in, for monotonic ``bins`` (increasing:
    bins[i-1] <= x < bins[i], or with ``right`` bins[i-1] < x <= bins[i]; decreasing
    likewise reversed). int64; no gradient."""
    op = "digitize"
    xt = _t(x)
    b = _t(bins, xt)
    if xt.dtype.kind == "c":
        raise DTypeError(f"{op}: x may not be complex, got {xt.dtype}")
    if b.ndim != 1:
        raise ShapeError(f"{op}: bins must be 1-d, got shape {tuple(b.shape)}")
    bv = values(b)
    inc = bool((bv[1:] >= bv[:-1]).all())
    if not inc and not bool((bv[1:] <= bv[:-1]).all()):
        raise ValueError(f"{op}: bins must be monotonically increasing or decreasing")
    if b.shape[0] == 0:
        return Tensor._of(xt.backend.xp.zeros(tuple(xt.shape), dtype=B.int64))
    if inc:
        return searchsorted(b, xt, right=not right)
    return b.shape[0] - searchsorted(S.flip(b, 0), xt, right=not right)
