"""Scans along one axis: cumsum, cumprod (exact gradients with zeros), cummax/cummin (values
gathered at running arg-extremes, so the gradient reaches the selected elements) and a stable
logcumsumexp. Batching shifts the axis past the batch axis, as for reductions.
"""

from __future__ import annotations

import math
from collections import namedtuple

from .. import _backend as B
from ..autodiff import is_grad_enabled
from ..batching import reduce_rule
from ..errors import DTypeError
from ..primitive import primitive
from .elementwise import astype, exp, log, logical_and, where
from .index import take_along_axis
from .reduce import _RED, _kept, _spread, _sum, int64_accumulator
from ..tensor import Tensor
from .shape import (expand_dims, flip, moveaxis, norm_axes, norm_axis, pad, reshape,
                    scalar_dims, transpose)

CumExtreme = namedtuple("CumExtreme", ["values", "indices"])


def _scan(name, fwd, vjp=None, jvp=None, saves="inputs", promote=True, doc=None):
    p = primitive(name, fwd, vjp, kind="scan", jvp=jvp, saves=saves, promote=promote, doc=doc)
    p.batch = reduce_rule(p)  # one int ``axis``: shifted past the batch axis
    return p


def _reverse(fn, t, axis):
    """``fn`` run from the end of ``axis`` to its start."""
    return flip(fn(flip(t, axis), axis=axis), axis)


# --- cumsum ----------------------------------------------------------------------------------
_WIDE = {"f": "float64", "F": "complex128"}  # float32 / complex64 codes: their accumulators


def _widened(fn, x, axis):
    """``fn(x, axis)`` for a running sum, product or logaddexp, accumulated in double precision
    for float32 and complex64 and rounded once, as PyTorch's CPU kernels do: a float32 phase
    summed over a few thousand samples drifts by many ulps otherwise (float16: see
    ``accumulated``)."""
    wide = _WIDE.get(x.dtype.char)
    if wide is None:
        return fn(x, axis)
    return fn(x.astype(wide), axis).astype(x.dtype)


_cumsum = _scan("cumsum", lambda xp, x, axis: _widened(
                    lambda a, ax: B.accumulated(xp.cumsum, a, ax), x, axis),
                lambda g, ans, x, axis: _reverse(_cumsum, g, axis), saves="none",
                jvp="linear", doc="Running sum along an axis.")


# --- cumprod ---------------------------------------------------------------------------------
def _zero_masks(x, axis):
    """(before the first zero, at the first zero) along ``axis``."""
    z = x == 0
    seen = _cumsum(z, axis=axis)
    return seen == 0, logical_and(z, seen == 1)


def _cumprod_vjp(g, ans, x, axis):
    if x.shape[axis] == 1:  # the identity: no quotient by x (a subnormal x lost g·ans/x)
        return g
    if is_grad_enabled():  # a graph of the gradient is wanted: the polynomial form
        return _cumprod_vjp_poly(g, x, axis)
    # before the first zero x_k: revcumsum(g·ans)/x (ans is 0 from k on); at x_k: the sum over
    # j >= k of g_j times the product of the others, a cumprod with x_k set to 1; after: 0.
    # (Exact, but constant in the zero pattern, so not for a second derivative at zeros.)
    before, first = _zero_masks(x, axis)
    part1 = _reverse(_cumsum, g * ans, axis) / where(before, x, 1)
    part2 = _reverse(_cumsum, g * _cumprod(where(first, 1, x), axis=axis), axis)
    return where(before, part1, where(first, part2, 0))


def _cumprod_vjp_poly(g, x, axis):
    """sum_{j>=i} g_j prod_{m<=j, m!=i} x_m through an n×n table per lane: O(n²), but a
    polynomial in x, so its own derivatives are right at zeros too (PyTorch does the same)."""
    n = x.shape[axis]
    xl, gl = moveaxis(x, axis, -1), moveaxis(g, axis, -1)
    xp = x.backend.xp
    eye = Tensor._of(xp.eye(n, dtype=bool))
    upper = Tensor._of(xp.triu(xp.ones((n, n), dtype=bool)))
    table = _cumprod(where(eye, 1, expand_dims(xl, -2)), axis=xl.ndim)  # [.., i, j]
    out = _sum(where(upper, expand_dims(gl, -2) * table, 0), axis=(xl.ndim,), keepdims=False)
    return moveaxis(out, -1, axis)


def _cumprod_jvp(ts, ans, x, axis):
    t = ts[0]
    if x.shape[axis] == 1:  # the identity
        return t
    before, first = _zero_masks(x, axis)
    inner = ans * _cumsum(where(before, t / where(before, x, 1), 0), axis=axis)
    tk = _sum(where(first, t, 0), axis=(axis,), keepdims=True)
    return where(before, inner, tk * _cumprod(where(first, 1, x), axis=axis))


_cumprod = _scan("cumprod", lambda xp, x, axis: _widened(
                     lambda a, ax: B.accumulated(xp.cumprod, a, ax), x, axis),
                 _cumprod_vjp,
                 jvp=_cumprod_jvp, saves="both",
                 doc="Running product along an axis; exact gradients with zeros in the input.")


# --- cummax / cummin -------------------------------------------------------------------------
def _cumarg_fwd(xp, x, axis, largest):
    if x.dtype.kind == "c":  # no order (PyTorch refuses too)
        op = "cummax" if largest else "cummin"
        raise DTypeError(f"{op}: complex tensors have no order, so {op} is not defined for "
                         f"them (got {x.dtype})")
    be = B.backend_of(x)
    vals = be.accumulate("maximum" if largest else "minimum", x, axis)
    hit = x == vals  # a new extreme or a tie: PyTorch keeps the latest index
    if x.dtype.kind == "f":
        hit = hit | xp.isnan(x)  # NaN propagates with its index
    ar = xp.arange(x.shape[axis]).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    return be.accumulate("maximum", xp.where(hit, ar, 0), axis)


_cumarg = _scan("cumarg", _cumarg_fwd, promote=False,
                doc="Index of the running max (largest=True) or min along an axis.")


# --- logcumsumexp ----------------------------------------------------------------------------
def _lcse_fwd(xp, x, axis):
    if x.dtype.kind == "c":
        return _lcse_complex(xp, x, axis)
    be = B.backend_of(x)
    return _widened(lambda a, ax: be.accumulate("logaddexp", a, ax), x, axis)


def _lcse_complex(xp, x, axis):
    """Complex logcumsumexp, a step along the axis at a time (vectorised over the rest), by
    PyTorch's rule: of the running value and the next element, the one with the larger real
    part keeps its imaginary part (no wrap into (-pi, pi]), plus log1p(e^(smaller - larger));
    a NaN in either part gives NaN, two equal infinite real parts their own cases."""
    xm = xp.moveaxis(x, axis, 0)
    out = xp.empty_like(xm)
    if xm.shape[0]:
        acc = out[0] = xm[0]
        nan = xp.asarray(complex(B.np.nan, B.np.nan), dtype=x.dtype)
        for k in range(1, xm.shape[0]):
            y = xm[k]
            running_lower = ~(y.real < acc.real)  # ties: the running value is the smaller
            lo, hi = xp.where(running_lower, acc, y), xp.where(running_lower, y, acc)
            with B.np.errstate(all="ignore"):
                val = xp.log1p(xp.exp(lo - hi)) + hi
                inf = ~xp.isfinite(lo.real) & (lo.real == hi.real)
                if inf.any():
                    val = xp.where(inf, xp.where(lo.real < 0, lo,
                                                 xp.log(xp.exp(lo) + xp.exp(hi))), val)
            acc = out[k] = xp.where(xp.isnan(acc) | xp.isnan(y), nan, val)
    return xp.moveaxis(out, 0, axis)


def _lcse_cvjp(g, ans, x, axis):
    """For complex x (PyTorch's convention): conj of sum_{j>=i} conj(g_j) e^(x_i - ans_j), as
    exp(x_i + reverse-logcumsumexp(log conj(g) - ans)); a complex log needs no sign split."""
    return exp(_reverse(_logcumsumexp, log(g.conj()) - ans, axis) + x).conj()


def _log_parts(t, dtype):
    """log|t| where t > 0 and where t < 0 (a quarter of the dtype's lowest value elsewhere:
    its exp is 0, and adding x or subtracting the output cannot overflow)."""
    low = B.finfo(dtype).min / 4
    la = log(where(t == 0, 1, t * (2 * (t > 0).astype(dtype) - 1)))
    return where(t > 0, la, low), where(t < 0, la, low)


def _lcse_vjp(g, ans, x, axis):
    # PyTorch's (and TensorFlow's) rule: sum_{j>=i} g_j e^(x_i - ans_j), split by the sign of g
    pos, neg = _log_parts(g, g.dtype)
    return (exp(_reverse(_logcumsumexp, pos - ans, axis) + x)
            - exp(_reverse(_logcumsumexp, neg - ans, axis) + x))


def _lcse_jvp(ts, ans, x, axis):
    if ts[0].dtype.kind == "c" or x.dtype.kind == "c":  # a complex log needs no sign split
        return exp(_logcumsumexp(log(ts[0].astype(ans.dtype)) + x, axis=axis) - ans)
    pos, neg = _log_parts(ts[0], ts[0].dtype)
    return (exp(_logcumsumexp(pos + x, axis=axis) - ans)
            - exp(_logcumsumexp(neg + x, axis=axis) - ans))


_logcumsumexp = _scan("logcumsumexp", _lcse_fwd, _lcse_vjp, jvp=_lcse_jvp, saves="both",
                      doc="log of the running sum of exp along an axis, without overflow.")
_logcumsumexp.complex = (_lcse_cvjp,)


# --- public functions (PyTorch's dim=, NumPy's axis=) ----------------------------------------
def _axis(x, dim, axis, op):
    d = dim if dim is not None else axis
    if d is None:
        raise TypeError(f"{op}: pass the axis to scan along (dim=)")
    return norm_axis(d, x.ndim if x.ndim else 1, op)


def _on_1d(fn, x, ax):
    """Run a scan on a 0-d tensor as on a length-1 vector (PyTorch allows dim 0 / -1)."""
    if x.ndim:
        return fn(x, ax)
    out = fn(reshape(x, (1,)), 0)
    return tuple(reshape(o, ()) for o in out) if isinstance(out, tuple) else reshape(out, ())


def cumsum(x, dim: int | None = None, *, axis: int | None = None, dtype=None):
    """Running sum along ``dim`` (in ``dtype`` when given: the input cast first, as
    PyTorch)."""
    if dtype is not None:  # the sum in dtype, not int64 for an integer one
        return astype(cumsum(astype(x, dtype), dim, axis=axis), dtype)
    return _on_1d(lambda t, a: _cumsum(t, axis=a), int64_accumulator(x),
                  _axis(x, dim, axis, "cumsum"))


def cumprod(x, dim: int | None = None, *, axis: int | None = None, dtype=None):
    """Running product along ``dim`` (in ``dtype`` when given, as PyTorch); gradients are
    exact with zeros in the input."""
    if dtype is not None:  # the product in dtype, not int64 for an integer one
        return astype(cumprod(astype(x, dtype), dim, axis=axis), dtype)
    return _on_1d(lambda t, a: _cumprod(t, axis=a), int64_accumulator(x),
                  _axis(x, dim, axis, "cumprod"))


def _cumextreme(x, dim, axis, largest, op):
    def run(t, a):
        idx = _cumarg(t, axis=a, largest=largest)
        return CumExtreme(take_along_axis(t, idx, a), idx)

    out = _on_1d(run, x, _axis(x, dim, axis, op))
    return CumExtreme(*out)


def cummax(x, dim: int | None = None, *, axis: int | None = None) -> CumExtreme:
    """(values, indices) of the running maximum; the gradient goes to the selected elements."""
    return _cumextreme(x, dim, axis, True, "cummax")


def cummin(x, dim: int | None = None, *, axis: int | None = None) -> CumExtreme:
    """(values, indices) of the running minimum."""
    return _cumextreme(x, dim, axis, False, "cummin")


def logcumsumexp(x, dim: int | None = None, *, axis: int | None = None):
    """log Σ_{i<=j} exp(x_i) along ``dim``, stable for large |x| and -inf entries."""
    return _on_1d(lambda t, a: _logcumsumexp(t, axis=a), x, _axis(x, dim, axis, "logcumsumexp"))


# --- prod: a reduction whose exact gradient at zeros is built from exclusive cumprods ---------
def _prod_partials(x, ans, axis, keepdims):
    """∂prod/∂x_i = the product of the others: ans/x_i without zeros; with one zero, the
    product of the rest at the zero and 0 elsewhere; with two or more zeros, 0. When a graph
    of the gradient is wanted, the product of exclusive cumprods from both sides instead: a
    polynomial, so second derivatives at zeros are right too."""
    if is_grad_enabled():
        return _prod_partials_poly(x, axis)
    ans = _kept(ans, x, axis, keepdims)
    z = x == 0
    nz = _sum(z, axis=axis, keepdims=True)
    rest = _prod(where(z, 1, x), axis=axis, keepdims=True)
    return where(nz == 0, ans / where(z, 1, x), where(logical_and(nz == 1, z), rest, 0))


def _prod_partials_poly(x, axis):
    red = tuple(range(x.ndim)) if axis is None else axis
    keep = tuple(i for i in range(x.ndim) if i not in red)
    perm = keep + red
    xt = transpose(x, perm)
    lead = tuple(xt.shape[:len(keep)])
    n = math.prod(xt.shape[len(keep):])
    if n == 0:
        return x * 0
    flat = reshape(xt, lead + (n,))
    ones = ((0, 0),) * len(lead)
    left = _cumprod(pad(flat[..., :-1], ones + ((1, 0),), constant_values=1.0), axis=len(lead))
    right = flip(_cumprod(flip(pad(flat[..., 1:], ones + ((0, 1),), constant_values=1.0),
                                 len(lead)), axis=len(lead)), len(lead))
    g = reshape(left * right, tuple(xt.shape))
    inv = tuple(sorted(range(x.ndim), key=lambda i: perm[i]))
    return transpose(g, inv)


_prod = primitive(
    "prod", lambda xp, x, axis, keepdims: xp.prod(x, axis=axis, keepdims=keepdims),
    lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims)
    * _prod_partials(x, ans, axis, keepdims),
    saves="both", kind=_RED,
    jvp=lambda ts, ans, x, axis, keepdims: _sum(ts[0] * _prod_partials(x, ans, axis, keepdims),
                                                axis=axis, keepdims=keepdims),
    doc="Product over axes; exact gradients with zeros in the input.")


def prod(x, dim=None, keepdim: bool = False, *, axis=None, keepdims: bool = False,
         dtype=None):
    """Product over ``dim`` (an int, a tuple, or None for all), in ``dtype`` when given (the
    input cast first, as PyTorch); zeros are handled exactly."""
    if dtype is not None:
        x = astype(x, dtype)
    # PyTorch's dim 0 / -1 of a 0-d tensor is the whole of it; NumPy's axis= keeps NumPy's rule
    ax = scalar_dims(dim, x.ndim, "prod") if dim is not None else axis
    out = _prod(int64_accumulator(x), axis=norm_axes(ax, x.ndim, "prod"),
                keepdims=bool(keepdim or keepdims))
    # NumPy multiplies small integers in int64; a dtype asked for is the result's, as PyTorch
    return out if dtype is None or out.dtype == x.dtype else astype(out, x.dtype)
