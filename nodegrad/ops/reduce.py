"""Reductions: sum, mean, max/min (ties split evenly), var/std, argmax/argmin, any/all."""

from __future__ import annotations

import warnings

from ..autodiff import no_grad
from ..primitive import primitive
from .elementwise import astype, sqrt, where
from .shape import broadcast_to, keepdims_shape, norm_axes, reshape

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


_sum = primitive("sum", lambda xp, x, axis, keepdims: xp.sum(x, axis=axis, keepdims=keepdims),
                 lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims),
                 saves="none", kind=_RED, jvp="linear", doc="Sum over axes.")
_mean = primitive(
    "mean", lambda xp, x, axis, keepdims: xp.mean(x, axis=axis, keepdims=keepdims),
    lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims) / _count(x.shape, axis),
    saves="none", kind=_RED, jvp="linear", doc="Mean over axes.")


def _extreme_vjp(g, ans, x, axis, keepdims):
    """Route g to the positions that attained the extreme, split evenly among ties."""
    if not keepdims:
        ans = reshape(ans, keepdims_shape(x.shape, axis))
    hit = astype(x == ans, g.dtype)
    return _spread(g, x, axis, keepdims) * hit / _sum(hit, axis=axis, keepdims=True)


def _extreme_jvp(ts, ans, x, axis, keepdims):
    """The mean of the tangent over the positions that attained the extreme."""
    if not keepdims:
        ans = reshape(ans, keepdims_shape(x.shape, axis))
    hit = astype(x == ans, ts[0].dtype)
    return (_sum(ts[0] * hit, axis=axis, keepdims=keepdims)
            / _sum(hit, axis=axis, keepdims=keepdims))


_max = primitive("max", lambda xp, x, axis, keepdims: xp.max(x, axis=axis, keepdims=keepdims),
                 _extreme_vjp, saves="both", kind=_RED, jvp=_extreme_jvp,
                 doc="Maximum over axes; tied maxima share the gradient evenly.")
_min = primitive("min", lambda xp, x, axis, keepdims: xp.min(x, axis=axis, keepdims=keepdims),
                 _extreme_vjp, saves="both", kind=_RED, jvp=_extreme_jvp,
                 doc="Minimum over axes; tied minima share the gradient evenly.")
_argmax = primitive("argmax", lambda xp, x, axis, keepdims: xp.argmax(x, axis=axis,
                                                                      keepdims=keepdims),
                    kind=_RED, promote=False, doc="Index of the maximum (no gradient).")
_argmin = primitive("argmin", lambda xp, x, axis, keepdims: xp.argmin(x, axis=axis,
                                                                      keepdims=keepdims),
                    kind=_RED, promote=False, doc="Index of the minimum (no gradient).")
_any = primitive("any", lambda xp, x, axis, keepdims: xp.any(x, axis=axis, keepdims=keepdims),
                 kind=_RED, promote=False, doc="True if any element is nonzero.")
_all = primitive("all", lambda xp, x, axis, keepdims: xp.all(x, axis=axis, keepdims=keepdims),
                 kind=_RED, promote=False, doc="True if every element is nonzero.")


def sum(x, axis=None, keepdims: bool = False):
    """Sum over ``axis`` (an int, a tuple, or None for all)."""
    return _sum(x, axis=norm_axes(axis, x.ndim, "sum"), keepdims=bool(keepdims))


def mean(x, axis=None, keepdims: bool = False):
    """Arithmetic mean over ``axis``."""
    return _mean(x, axis=norm_axes(axis, x.ndim, "mean"), keepdims=bool(keepdims))


def max(x, axis=None, keepdims: bool = False):
    """Largest value over ``axis`` (NumPy's max / amax; ties share the gradient)."""
    return _max(x, axis=norm_axes(axis, x.ndim, "max"), keepdims=bool(keepdims))


def min(x, axis=None, keepdims: bool = False):
    """Smallest value over ``axis`` (ties share the gradient)."""
    return _min(x, axis=norm_axes(axis, x.ndim, "min"), keepdims=bool(keepdims))


def _one_axis(axis, ndim, op):
    if axis is None:
        return None
    return norm_axes(axis, ndim, op)[0]


def argmax(x, axis: int | None = None, keepdims: bool = False):
    """Index of the largest value (flattened when ``axis`` is None)."""
    return _argmax(x, axis=_one_axis(axis, x.ndim, "argmax"), keepdims=bool(keepdims))


def argmin(x, axis: int | None = None, keepdims: bool = False):
    """Index of the smallest value (flattened when ``axis`` is None)."""
    return _argmin(x, axis=_one_axis(axis, x.ndim, "argmin"), keepdims=bool(keepdims))


def any(x, axis=None, keepdims: bool = False):
    return _any(x, axis=norm_axes(axis, x.ndim, "any"), keepdims=bool(keepdims))


def all(x, axis=None, keepdims: bool = False):
    return _all(x, axis=norm_axes(axis, x.ndim, "all"), keepdims=bool(keepdims))


def var(x, axis=None, ddof: int = 0, keepdims: bool = False):
    """Variance over ``axis`` with NumPy's ``ddof`` (0: population; PyTorch's default is 1).

    With ``ddof`` >= N it divides by 0, as PyTorch: inf, or NaN where all values are equal."""
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
    return _sum(centred * centred, axis=axes, keepdims=bool(keepdims)) / n


def std(x, axis=None, ddof: int = 0, keepdims: bool = False):
    """Standard deviation, sqrt(var); its gradient is 0 where the deviation is 0 (PyTorch),
    not 0 * inf."""
    v = var(x, axis, ddof, keepdims)
    zero = v == 0
    return where(zero, 0, sqrt(where(zero, 1, v)))
