"""Special functions and integer arithmetic (lgamma, digamma, erfinv, gcd, ...), as functions
and Tensor methods.

The special functions run SciPy's (``cupyx.scipy.special`` on CUDA) through the backend and
keep the operands' float dtype; integer and bool inputs compute in float64 and give float32, as
PyTorch does. Gradients are PyTorch's, written with tensor ops so higher orders work: digamma's
uses polygamma(1, x), polygamma(n)'s polygamma(n + 1). Where PyTorch defines no gradient
(igamma and igammac in ``input``, zeta in ``input``) a backward that needs one raises.
"""

from __future__ import annotations

import math
from collections import namedtuple

from .. import _backend as B
from ..batching import elementwise_rule
from ..errors import DTypeError, GradError
from ..primitive import primitive
from ..tensor import Tensor, ones_like, zeros_like
from .elementwise import (_compared, _ordered, _sgn, _x_over, astype, copysign, equal, exp, exp2,
                          floor_divide, less, log, logical_and, logical_not, logical_or, minimum,
                          multiply, power, sign, sin, square, where, xlogy)
from .index import take
from .reduce import any as _any
from .shape import reshape
from .sort import searchsorted, sort

__all__ = [
    "lgamma", "digamma", "polygamma", "mvlgamma", "multigammaln", "erfc", "erfinv", "erfcx",
    "i0", "i0e", "i1", "i1e", "ndtr", "ndtri", "log_ndtr", "logit", "entr", "xlog1py",
    "igamma", "igammac", "zeta", "sgn", "signbit", "heaviside", "nextafter", "ldexp", "frexp",
    "float_power", "gcd", "lcm", "fmax", "fmin", "isneginf", "isposinf", "isreal", "isin",
]

_EW = "elementwise"
_J = "vjp"  # elementwise: the Jacobian is diagonal, so the VJP rules are the JVP rules
Frexp = namedtuple("Frexp", ["mantissa", "exponent"])

_2_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_SQRT_PI_OVER_2 = math.sqrt(math.pi) / 2.0
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / _SQRT_2PI
_LOG_PI = math.log(math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_ERFCX_ASYMPTOTIC = 10.0


# --- forwards through the backend's special functions ----------------------------------------
def _backend_of(xs):
    """The backend of the first array operand (the CPU's for numbers only)."""
    for v in xs:
        if B.is_array(v):
            return B.backend_of(v)
    return B.CPU


def _float_dtype(xs):
    """The float dtype of the array operands (None when none is a float array)."""
    for v in xs:
        dt = getattr(v, "dtype", None)
        if dt is not None and dt.kind == "f":
            return dt
    return None


def _as_float(xs):
    """Integer and bool arrays as float64 (SciPy's kernels are for floats)."""
    return [v.astype(B.float64) if B.is_array(v) and v.dtype.kind in "biu" else v for v in xs]


def _kept(out, dt):
    """``out`` in the operands' float dtype ``dt`` (SciPy may answer in float64)."""
    if dt is None or getattr(out, "dtype", dt) == dt:
        return out
    return out.astype(dt)


def _scipy(name: str):
    """The forward ``scipy.special.<name>(*operands)`` in the operands' float dtype."""
    def fwd(xp, *xs):
        return _kept(_backend_of(xs).special(name, *_as_float(xs)), _float_dtype(xs))
    return fwd


# lgamma(2 + e) = sum_k c_k e^k with c_1 = 1 - Euler's gamma, c_k = (-1)^k (zeta(k) - 1) / k
_LGAMMA_AT_2 = (0.42278433509846713, 0.3224670334241132, -0.0673523010531981,
                0.020580808427784546, -0.007385551028673986, 0.0028905103307415234,
                -0.001192753911703261, 0.0005096695247430425, -0.00022315475845357939,
                9.945751278180853e-05, -4.492623673813314e-05, 2.050721277567069e-05,
                -9.439488275268397e-06, 4.374866789907488e-06, -2.039215753801366e-06,
                9.55141213040742e-07, -4.492469198764566e-07, 2.1207184805554665e-07,
                -1.0043224823968099e-07, 4.7698101693639804e-08)


def _lgamma_fixed(xp, x, out):
    """SciPy's float64 gammaln ``out`` mended where it loses digits that C's lgamma
    (PyTorch's) keeps: near the zeros 1 and 2, where its error is absolute, not relative (a
    2.5x error at 1 - 2**-53), by the Taylor series at 2 (and lgamma(1 + e) = lgamma(2 + e) -
    log1p(e)); below the smallest normal number, where it gives inf, by -log|x| (the next
    term, Euler's gamma times x, is far below the rounding); and at -inf, where C gives inf.
    Float32 and float16 are computed in float64 by SciPy and need only the last."""
    if x.dtype == B.float64:
        with B.np.errstate(all="ignore"):
            i = abs(abs(x - 1.5) - 0.5) < 0.2  # within 0.2 of 1 or of 2
            if i.any():
                v = x[i]
                near2 = abs(v - 2.0) < 0.2
                e = xp.where(near2, v - 2.0, v - 1.0)
                series = 0.0
                for c in reversed(_LGAMMA_AT_2):
                    series = (series + c) * e
                out = xp.array(out, copy=True)  # a 0-d input gives a NumPy scalar
                out[i] = xp.where(near2, series, series - xp.log1p(e))
            out = xp.where((x != 0) & (abs(x) < xp.finfo(x.dtype).tiny), -xp.log(abs(x)), out)
    return xp.where(x == -math.inf, math.inf, out)


def _lgamma_fwd(xp, x):
    dt = _float_dtype((x,))
    out = _backend_of((x,)).special("gammaln", *_as_float((x,)))
    if dt is not None:
        out = _lgamma_fixed(xp, x, out)
    elif type(x) is float and x == -math.inf:
        out = math.inf
    return _kept(out, dt)


def _polygamma_fwd(xp, x, n):
    be = _backend_of((x,))
    return _kept(be.special("polygamma", be.asarray(n), *_as_float((x,))), _float_dtype((x,)))


def _erfinv_fwd(xp, x):
    """SciPy's erfinv, keeping the sign of a zero (erfinv(-0.0) is -0.0, as PyTorch's)."""
    dt = _float_dtype((x,))
    out = _kept(_backend_of((x,)).erfinv(*_as_float((x,))), dt)
    return out if dt is None else xp.where(x == 0, x, out)


# --- gamma family ----------------------------------------------------------------------------
lgamma = primitive("lgamma", _lgamma_fwd, lambda g, ans, x: g * digamma(x), kind=_EW, jvp=_J,
                   doc="log|Gamma(x)|; +inf at the poles 0, -1, -2, ... and at -inf.")
digamma = primitive("digamma", _scipy("digamma"),
                    lambda g, ans, x: g * _polygamma(x, n=1), kind=_EW, jvp=_J,
                    doc="The digamma function psi(x) = d/dx lgamma(x); -inf at 0, NaN at the "
                        "negative integers (as PyTorch).")
_polygamma = primitive("polygamma", _polygamma_fwd,
                       lambda g, ans, x, n: g * _polygamma(x, n=n + 1), kind=_EW, jvp=_J,
                       doc="The n-th derivative of digamma (n >= 1; n = 0 is digamma).")


def _order(op: str, n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise DTypeError(f"{op}: {name} must be a Python int, got {type(n).__name__} {n!r}")
    return n


def polygamma(n: int, input):
    """The ``n``-th derivative of the digamma function (``n = 0``: digamma itself)."""
    n = _order("polygamma", n)
    if n < 0:
        raise ValueError(f"polygamma: n must be a non-negative integer, got {n}")
    return digamma(input) if n == 0 else _polygamma(input, n=n)


def mvlgamma(input, p: int):
    """The multivariate log-gamma function of dimension ``p``:
    sum_{i<p} lgamma(x - i/2) + p (p-1)/4 log(pi). As PyTorch, values x <= (p-1)/2 give inf or
    NaN rather than an error."""
    p = _order("mvlgamma", p, "p")
    if p < 1:
        raise ValueError(f"mvlgamma: p must be an integer >= 1, got {p}")
    if isinstance(input, Tensor) and input.dtype == B.float16:
        # in float32, rounded once: in float16, x - i/2 can round onto a pole (-1.999 - 1
        # is -3.0) and the sum gathers p roundings
        return astype(mvlgamma(astype(input, B.float32), p), B.float16)
    out = lgamma(input)
    for i in range(1, p):
        out = out + lgamma(input - i / 2)
    return out + p * (p - 1) / 4 * _LOG_PI


def multigammaln(input, p: int):
    """``torch.special.multigammaln``: the multivariate log-gamma function (``mvlgamma``)."""
    return mvlgamma(input, p)


def _lgamma_of(a):
    """lgamma of a tensor, or of a Python number as a Python float (keeps the tensor's dtype)."""
    if isinstance(a, Tensor):
        return lgamma(a)
    try:
        return math.lgamma(a)
    except ValueError:  # a pole
        return math.inf


def _no_grad(op: str, arg: str):
    def rule(*args, **params):
        raise GradError(f"{op}: there is no gradient with respect to {arg} (PyTorch defines "
                        f"none); detach it or differentiate with respect to the other input")
    return rule


def _igamma_dx(g, ans, a, x):
    """d/dx P(a, x) = x^(a-1) e^-x / Gamma(a), the power as xlogy: 1 (not NaN) at a = 1,
    x = 0, where the exponential distribution's CDF has slope 1."""
    return g * exp(xlogy(a - 1, x) - x - _lgamma_of(a))


igamma = primitive("igamma", _scipy("gammainc"), (_no_grad("igamma", "input (a)"), _igamma_dx),
                   kind=_EW, jvp=_J,
                   doc="The regularized lower incomplete gamma function P(a, x) (scipy's "
                       "gammainc); differentiable in x only, as PyTorch.")
igammac = primitive("igammac", _scipy("gammaincc"),
                    (_no_grad("igammac", "input (a)"),
                     lambda g, ans, a, x: -_igamma_dx(g, ans, a, x)),
                    kind=_EW, jvp=_J,
                    doc="The regularized upper incomplete gamma function Q(a, x) = 1 - P(a, x) "
                        "(scipy's gammaincc); differentiable in x only, as PyTorch.")
zeta = primitive("zeta", _scipy("zeta"),
                 (_no_grad("zeta", "input (the exponent x)"),
                  lambda g, ans, x, q: g * -x * zeta(x + 1, q)),
                 kind=_EW, jvp=_J,
                 doc="The Hurwitz zeta function sum_k (k + q)**-x; differentiable in q only, "
                     "as PyTorch.")

# --- error function family and the normal distribution ----------------------------------------
erfc = primitive("erfc", _scipy("erfc"),
                 lambda g, ans, x: g * (exp(-(x * x)) * -_2_OVER_SQRT_PI), kind=_EW, jvp=_J,
                 doc="The complementary error function 1 - erf(x), accurate for large x.")
def _erfinv_vjp(g, ans, x):
    """sqrt(pi)/2 exp(erfinv(x)^2), erfinv(x) recomputed: the node keeps only x, as PyTorch's,
    so the output may change in place afterwards."""
    y = erfinv(x)
    return g * (exp(y * y) * _SQRT_PI_OVER_2)


erfinv = primitive("erfinv", _erfinv_fwd, _erfinv_vjp, saves="inputs", kind=_EW, jvp=_J,
                   doc="The inverse error function on [-1, 1]: +-inf at +-1, NaN outside.")


def _erfcx_slope(ans, x):
    """d/dx erfcx(x) = 2x erfcx(x) - 2/sqrt(pi). For x >= 10 the two terms agree to x**-2
    and the difference loses its digits (all of them in float32 by x = 1e4, in float64 by
    1e8): there, the asymptotic series 2/sqrt(pi) sum_{k>=1} (-1)^k (2k-1)!! / (2 x^2)^k,
    whose 14 terms are exact to float64's rounding from x = 10 on. float16 computes in
    float32, erfcx too (from float16's erfcx the difference is 4% off at x = 5)."""
    if x.dtype == B.float16:
        x32 = astype(x, B.float32)
        return astype(_erfcx_slope(erfcx(x32), x32), B.float16)
    big = x >= _ERFCX_ASYMPTOTIC
    s = 0.5 / square(where(big, x, _ERFCX_ASYMPTOTIC))
    series = 0.0
    for k in range(14, 0, -1):  # Horner: (2k-1)!! s^k, each step's factor -(2k-1) s
        series = (series + 1.0) * (s * -(2 * k - 1))
    return where(big, series * _2_OVER_SQRT_PI, x * ans * 2 - _2_OVER_SQRT_PI)


erfcx = primitive("erfcx", _scipy("erfcx"),
                  lambda g, ans, x: g * _erfcx_slope(ans, x), saves="both",
                  kind=_EW, jvp=_J,
                  doc="The scaled complementary error function exp(x**2) erfc(x).")
ndtr = primitive("ndtr", _scipy("ndtr"),
                 lambda g, ans, x: g * (exp(x * x * -0.5) * _INV_SQRT_2PI), kind=_EW, jvp=_J,
                 doc="The standard normal CDF.")
ndtri = primitive("ndtri", _scipy("ndtri"),
                  lambda g, ans, x: g * (exp(ans * ans * 0.5) * _SQRT_2PI), saves="out",
                  kind=_EW, jvp=_J,
                  doc="The inverse of the standard normal CDF: +-inf at 1 and 0, NaN outside.")


def _log_ndtr_vjp(g, ans, x):
    """d/dx log ndtr(x) = pdf(x) / ndtr(x): for x < 0 as sqrt(2/pi) / erfcx(-x/sqrt(2)), which
    neither underflows nor subtracts (exp(-(log_ndtr(x) + x^2/2)) cancels ~x^2/2 and is wrong
    in float32 from x ~ -40 and NaN in float64 at -1e300); for x >= 0, where ndtr(x) >= 1/2,
    directly (x held at 40, past which the pdf is below float64's smallest number)."""
    neg = x < 0
    left = _SQRT_2_OVER_PI / erfcx(where(neg, x, 0) * -_INV_SQRT_2)
    xr = where(neg, 0, minimum(x, 40.0))
    right = exp(xr * xr * -0.5) * _INV_SQRT_2PI / ndtr(xr)
    return g * where(neg, left, right)


log_ndtr = primitive("log_ndtr", _scipy("log_ndtr"), _log_ndtr_vjp, kind=_EW, jvp=_J,
                     doc="log of the standard normal CDF, accurate far in the lower tail.")

# --- modified Bessel functions ----------------------------------------------------------------
i0 = primitive("i0", _scipy("i0"), lambda g, ans, x: g * i1(x), kind=_EW, jvp=_J,
               doc="The modified Bessel function of the first kind, order 0.")
i0e = primitive("i0e", _scipy("i0e"), lambda g, ans, x: g * (i1e(x) - sign(x) * ans),
                saves="both", kind=_EW, jvp=_J,
                doc="The exponentially scaled i0: exp(-|x|) i0(x).")


def _i1_over_x(ans, x, scale=None):
    """i1(x)/x (times exp(-|x|) when ``scale``): the quotient near 0, where i1(x) ~ x/2 is a
    subnormal for tiny x and dividing loses its digits, from the series 1/2 + x^2/16 (the
    next term, x^4/384, is below float64's rounding for |x| < 1e-3)."""
    small = abs(x) < 1e-3
    xs = where(small, x, 0)  # the series only where it is used: no inf * 0 in its gradient
    series = xs * xs * 0.0625 + 0.5
    if scale is not None:
        series = series * scale
    return where(small, series, ans / where(small, 1, x))


def _i1_vjp(g, ans, x):
    return g * (i0(x) - _i1_over_x(ans, x))


def _i1e_vjp(g, ans, x):
    return g * (i0e(x) - ans * sign(x) - _i1_over_x(ans, x, exp(-abs(x))))


i1 = primitive("i1", _scipy("i1"), _i1_vjp, saves="both", kind=_EW, jvp=_J,
               doc="The modified Bessel function of the first kind, order 1.")
i1e = primitive("i1e", _scipy("i1e"), _i1e_vjp, saves="both", kind=_EW, jvp=_J,
                doc="The exponentially scaled i1: exp(-|x|) i1(x).")


# --- Bessel functions of the first and second kinds, Airy's Ai ---------------------------------
def _over_x(ans, x, series):
    """f(x)/x for an odd f with f(x) ~ x series(x) near 0: the series below |x| < 1e-3, where
    dividing a tiny f(x) by x loses its digits (or divides 0 by 0)."""
    small = abs(x) < 1e-3
    return where(small, series(where(small, x, 0)), ans / where(small, 1, x))


def _j1_over_x(ans, x):
    return _over_x(ans, x, lambda v: 0.5 - v * v * 0.0625)


bessel_j0 = primitive("bessel_j0", _scipy("j0"), lambda g, ans, x: g * -bessel_j1(x), kind=_EW,
                      jvp=_J, doc="The Bessel function of the first kind, order 0; "
                                  "d/dx j0 = -j1.")
bessel_j1 = primitive("bessel_j1", _scipy("j1"),
                      lambda g, ans, x: g * (bessel_j0(x) - _j1_over_x(ans, x)), saves="both",
                      kind=_EW, jvp=_J,
                      doc="The Bessel function of the first kind, order 1; "
                          "d/dx j1 = j0 - j1/x.")
bessel_y0 = primitive("bessel_y0", _scipy("y0"), lambda g, ans, x: g * -bessel_y1(x), kind=_EW,
                      jvp=_J, doc="The Bessel function of the second kind, order 0 (x > 0; "
                                  "-inf at 0, NaN below); d/dx y0 = -y1.")
bessel_y1 = primitive("bessel_y1", _scipy("y1"),
                      lambda g, ans, x: g * (bessel_y0(x) - ans / x), saves="both", kind=_EW,
                      jvp=_J, doc="The Bessel function of the second kind, order 1 (x > 0); "
                                  "d/dx y1 = y0 - y1/x.")
modified_bessel_k0 = primitive(
    "modified_bessel_k0", _scipy("k0"), lambda g, ans, x: g * -modified_bessel_k1(x), kind=_EW,
    jvp=_J, doc="The modified Bessel function of the second kind, order 0 (x > 0); "
                "d/dx k0 = -k1.")
modified_bessel_k1 = primitive(
    "modified_bessel_k1", _scipy("k1"),
    lambda g, ans, x: g * -(modified_bessel_k0(x) + ans / x), saves="both", kind=_EW, jvp=_J,
    doc="The modified Bessel function of the second kind, order 1 (x > 0); "
        "d/dx k1 = -k0 - k1/x.")
scaled_modified_bessel_k0 = primitive(
    "scaled_modified_bessel_k0", _scipy("k0e"),
    lambda g, ans, x: g * (ans - scaled_modified_bessel_k1(x)), saves="both", kind=_EW, jvp=_J,
    doc="exp(x) k0(x), which stays representable for large x; its derivative k0e - k1e.")
scaled_modified_bessel_k1 = primitive(
    "scaled_modified_bessel_k1", _scipy("k1e"),
    lambda g, ans, x: g * (ans - scaled_modified_bessel_k0(x) - ans / x), saves="both",
    kind=_EW, jvp=_J, doc="exp(x) k1(x); its derivative k1e - k0e - k1e/x.")


def _airy_far(x, i: int):
    """Ai (i = 0) or Ai' (i = 1) at finite x past |x| ~ 1e6, where SciPy's ``airy`` gives
    NaN: 0 for x > 0 (both underflow from x ~ 105); for x = -z < 0 the first two terms of
    the asymptotic expansion with zeta = 2/3 z^(3/2) (DLMF 9.7.9-10; the next are below
    zeta**-2 ~ 1e-18). Once zeta overflows (z > 1e205) the phase is lost: Ai, whose
    amplitude is then below 1e-51, is 0; Ai', whose amplitude is above 1e51, NaN. At +-inf
    both stay NaN, as in SciPy and PyTorch."""
    np = B.np
    with np.errstate(all="ignore"):
        z = -np.minimum(x, 0.0)
        zeta = z * np.sqrt(z) * (2.0 / 3.0)
        c, s = np.cos(zeta - math.pi / 4), np.sin(zeta - math.pi / 4)
        if i == 0:
            far = (c + s * (5.0 / 72.0) / zeta) / (np.sqrt(math.pi) * np.sqrt(np.sqrt(z)))
        else:
            far = (s + c * (7.0 / 72.0) / zeta) * (np.sqrt(np.sqrt(z)) / np.sqrt(math.pi))
        far = np.where(np.isfinite(zeta), far, 0.0 if i == 0 else math.nan)
        return np.where(np.isfinite(x), np.where(x > 0, 0.0, far), math.nan)


def _airy(i: int):
    """Ai (i = 0) or Ai' (i = 1) by SciPy's ``airy`` on the host (CuPy has none) in float64
    (its float32 loop is no more accurate), mended past |x| ~ 1e6 where it gives NaN, the
    result back on the operand's device in the operand's float dtype."""
    def fwd(xp, x):
        be = _backend_of((x,))
        (v,) = _as_float((x,))
        host = B.np.asarray(be.to_host(v) if B.is_array(v) else v, dtype=B.float64)
        out = B.CPU.special("airy", host)[i]
        out = B.np.where(B.np.isnan(out) & ~B.np.isnan(host), _airy_far(host, i), out)
        return _kept(be.asarray(out), _float_dtype((x,)))
    return fwd


airy_ai = primitive("airy_ai", _airy(0), lambda g, ans, x: g * airy_ai_prime(x), kind=_EW,
                    jvp=_J, doc="The Airy function Ai(x), a solution of y'' = x y.")
airy_ai_prime = primitive("airy_ai_prime", _airy(1),
                          lambda g, ans, x: g * (x * airy_ai(x)), kind=_EW, jvp=_J,
                          doc="Ai'(x), the derivative of the Airy function (Ai'' = x Ai).")

_SPH_J0 = (-1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0, -1.0 / 39916800.0,
           1.0 / 6227020800.0)


def spherical_bessel_j0(input):
    """The spherical Bessel function j0(x) = sin(x)/x (1 at 0, 0 at +-inf), by PyTorch's
    formula: its Taylor series below |x| < 0.5, where the quotient loses digits."""
    if not isinstance(input, Tensor):
        raise TypeError(f"spherical_bessel_j0: expected a tensor, got {type(input).__name__}")
    if input.dtype == B.bfloat16:
        raise DTypeError("spherical_bessel_j0: bfloat16 is not supported (as PyTorch); convert "
                         "with .float()")
    x = input if input.dtype.kind == "f" else astype(input, B.float32)
    small = abs(x) < 0.5
    xs = where(small, x, 0)  # the series only where it is used: no inf * 0 in its gradient
    x2 = xs * xs
    series = _SPH_J0[-1]
    for c in reversed(_SPH_J0[:-1]):
        series = x2 * series + c
    series = x2 * series + 1.0
    finite = abs(x) != math.inf
    safe = where(logical_or(small, logical_not(finite)), 1.0, x)
    return where(small, series, where(finite, sin(safe) / safe, 0.0))


# --- classical orthogonal polynomials ---------------------------------------------------------
# Each kind: P_1 = a y + b; P_{k+1} = (A_k y + B_k) P_k - C_k P_{k-1}, with y = x or (shifted)
# y = 2x - 1. The coefficients give the derivatives too, by differentiating the recurrence.
_POLY_P1 = {"chebyshev_t": (1.0, 0.0), "chebyshev_u": (2.0, 0.0), "chebyshev_v": (2.0, -1.0),
            "chebyshev_w": (2.0, 1.0), "hermite_h": (2.0, 0.0), "hermite_he": (1.0, 0.0),
            "laguerre_l": (-1.0, 1.0), "legendre_p": (1.0, 0.0)}


def _poly_coeffs(base: str, k: int):
    """(A_k, B_k, C_k) of the step from P_k to P_{k+1}."""
    if base.startswith("chebyshev"):
        return 2.0, 0.0, 1.0
    if base == "hermite_h":
        return 2.0, 0.0, 2.0 * k
    if base == "hermite_he":
        return 1.0, 0.0, float(k)
    if base == "laguerre_l":
        return -1.0 / (k + 1), (2 * k + 1) / (k + 1), k / (k + 1)
    return (2 * k + 1) / (k + 1), 0.0, k / (k + 1)  # legendre_p


def _poly_degree(xp, n):
    """PyTorch's integer degree: n truncated towards 0; NaN and +-inf count as -1 (value 0)."""
    n = xp.asarray(n)
    if n.dtype.kind == "f":
        n = xp.where(xp.isfinite(n), xp.trunc(xp.where(xp.isfinite(n), n, 0)), -1)
    return n.astype(B.int64)


def _poly_recurrence(xp, x, n, base: str, order: int):
    """The ``order``-th derivative (in y) of P_n(y) by the differentiated three-term recurrence,
    for every element's own n (0 where n < 0)."""
    a, b = _POLY_P1[base]
    d = [xp.ones_like(x)] + [xp.zeros_like(x)] * order  # D^j P_0
    e = [a * x + b, xp.full_like(x, a)] + [xp.zeros_like(x)] * (order - 1)  # D^j P_1
    e = e[:order + 1]
    out = xp.where(n == 0, d[order], xp.where(n == 1, e[order], 0.0))
    top = int(n.max()) if n.size else 0
    for k in range(1, top):
        ak, bk, ck = _poly_coeffs(base, k)
        new = [(ak * x + bk) * e[j] + (j * ak * e[j - 1] if j else 0.0) - ck * d[j]
               for j in range(order + 1)]
        d, e = e, new
        out = xp.where(n == k + 1, e[order], out)
    return out


def _poly_value(xp, x, n, base: str, shifted: bool):
    """P_n(x) by PyTorch's algorithm: its recurrences in its operation order, the closed forms
    (cos(n acos y), ...) it uses for large n inside (-1, 1), and its exact values at the ends."""
    y = x + x - 1.0 if shifted else x
    a, b = _POLY_P1[base]
    p, q = xp.ones_like(x), (y + y + b if a == 2.0 and base.startswith("chebyshev") else
                             {"hermite_h": x + x, "hermite_he": x, "laguerre_l": 1.0 - x,
                              "legendre_p": x, "chebyshev_t": y}[base])
    out = xp.where(n == 0, 1.0, xp.where(n == 1, q, 0.0))
    top = int(n.max()) if n.size else 0
    for k in range(1, top):
        if base.startswith("chebyshev"):
            r = (y + y) * q - p
        elif base == "hermite_h":
            r = (x + x) * q - (2 * k) * p
        elif base == "hermite_he":
            r = x * q - k * p
        elif base == "laguerre_l":
            r = (((k + k) + (1.0 - x)) * q - k * p) / (k + 1)
        else:
            r = ((k + k + 1) * x * q - k * p) / (k + 1)
        p, q = q, r
        out = xp.where(n == k + 1, r, out)
    nf = n.astype(x.dtype)
    odd = (n % 2) == 1
    if base.startswith("chebyshev"):
        inside = abs(y) < 1.0
        with B.np.errstate(all="ignore"):
            th = xp.arccos(xp.where(inside, y, 0.0))
            if base == "chebyshev_t":
                closed, lim = xp.cos(nf * th), 6
            elif base == "chebyshev_u":
                s = xp.sin(th)
                closed = xp.where(s != 0, xp.sin((nf + 1) * th) / s,
                                  (nf + 1) * xp.cos((nf + 1) * th) / y)
                lim = 6 if shifted else 8
            elif base == "chebyshev_v":
                closed = xp.where(xp.sin(th / 2.0) != 1.0,
                                  xp.cos((nf + 0.5) * th) / xp.cos(th / 2.0),
                                  xp.where(odd, -(nf + nf + 1), nf + nf + 1))
                lim = 6 if shifted else 8
            else:
                closed = xp.where(xp.cos(th / 2.0) != 1.0,
                                  xp.sin((nf + 0.5) * th) / xp.sin(th / 2.0),
                                  xp.where(y > 0, nf + nf + 1, xp.where(odd, -1.0, 1.0)))
                lim = 6 if shifted else 8
        out = xp.where((n > lim) & inside, closed, out)
        hi = {"chebyshev_t": 1.0, "chebyshev_u": nf + 1, "chebyshev_v": 1.0,
              "chebyshev_w": nf + nf + 1}[base]
        lo = {"chebyshev_t": xp.where(odd, -1.0, 1.0), "chebyshev_u": xp.where(odd, -(nf + 1),
              nf + 1), "chebyshev_v": xp.where(odd, -(nf + nf + 1), nf + nf + 1),
              "chebyshev_w": xp.where(odd, -1.0, 1.0)}[base]
        if shifted:
            out = xp.where(x == 0.0, lo, xp.where(x == 1.0, hi, out))
        else:
            out = xp.where(x == 1.0, hi, xp.where(x == -1.0, lo, out))
    elif base == "legendre_p":
        out = xp.where(x == 1.0, 1.0, xp.where(x == -1.0, xp.where(odd, -1.0, 1.0), out))
    elif base == "laguerre_l":
        out = xp.where(x == 0.0, 1.0, out)
    elif base.startswith("hermite"):
        out = xp.where(n > (128 if x.dtype == B.float32 else 512), math.nan, out)
    return xp.where(n < 0, 0.0, out)


def _poly_fwd(xp, x, n, kind, order):
    dt = _float_dtype((x, n)) or B.float32  # integer operands give float32, as PyTorch
    x = xp.asarray(x).astype(dt, copy=False)
    n = _poly_degree(xp, n)
    x, n = xp.broadcast_arrays(x, n)
    shifted = kind.startswith("shifted_")
    base = kind[len("shifted_"):] if shifted else kind
    with B.np.errstate(all="ignore"):
        if order == 0:
            out = _poly_value(xp, x, n, base, shifted)
        else:
            y = x + x - 1.0 if shifted else x
            out = _poly_recurrence(xp, y, n, base, order) * (2.0 ** order if shifted else 1.0)
    return xp.asarray(out, dtype=dt)


orthogonal_polynomial = primitive(
    "orthogonal_polynomial", _poly_fwd,
    (lambda g, ans, x, n, kind, order: g * orthogonal_polynomial(x, n, kind=kind,
                                                                 order=order + 1),
     lambda g, ans, x, n, kind, order: zeros_like(g)),  # the degree is truncated: a step
    kind=_EW, jvp=_J,
    doc="The ``order``-th derivative in x of a classical orthogonal polynomial of degree n "
        "(kind: chebyshev_t/u/v/w, their shifted_ forms, hermite_h/he, laguerre_l, "
        "legendre_p); order 0 is PyTorch's value. The degree n is truncated to an integer: "
        "its gradient is 0.")


# --- logit, entropy, xlog1py -----------------------------------------------------------------
def _logit_fwd(xp, x, eps):
    """log(z / (1 - z)) with z = x clamped as PyTorch clamps (below eps: eps, else above
    1 - eps: 1 - eps, so an eps past 1/2 still sends small x up). float16 computes in
    float32 and rounds once: in float16, 1 - x and the quotient each round (79 units off
    at 0.4963, in PyTorch too) and 1 - 1e-6 is 1, which makes logit(x, 1e-6) inf at x >= 1."""
    (x,) = _as_float((x,))
    half = getattr(x, "dtype", None) == B.float16
    z = x.astype(B.float32) if half else x
    if eps is not None:
        z = xp.where(z < eps, eps, xp.where(z > 1 - eps, 1 - eps, z))
        z = z.astype(B.float32 if half else x.dtype, copy=False) if B.is_array(x) else z
    out = xp.log(z / (1 - z))
    return out.astype(B.float16) if half else out


def _logit_vjp(g, ans, x, eps):
    if eps is None:
        return where(logical_or(x < 0, x > 1), math.nan, g / (x * (1 - x)))
    clamped = logical_or(x < eps, x > 1 - eps)
    xs = where(clamped, 0.5, x)  # 1/(x(1-x)) only where used: a finite second derivative at 0
    return where(clamped, 0, g / (xs * (1 - xs)))


_logit = primitive("logit", _logit_fwd, _logit_vjp, kind=_EW, jvp=_J,
                   doc="log(x / (1 - x)), x first clamped to [eps, 1 - eps] when eps is given "
                       "(the gradient is 0 outside that interval).")


def logit(input, eps: float | None = None):
    """log(p / (1 - p)); with ``eps``, p is clamped to [eps, 1 - eps] first (a negative eps,
    as None, clamps nothing: PyTorch's rule)."""
    if eps is not None:
        eps = float(eps)
        if eps < 0:
            eps = None
    return _logit(input, eps=eps)


entr = primitive("entr", _scipy("entr"), lambda g, ans, x: g * -(log(x) + 1), kind=_EW, jvp=_J,
                 doc="-x log(x) for x > 0, 0 at 0, -inf for x < 0 (elementwise entropy).")


def _xlog1py_fwd(xp, x, y):
    dt = xp.result_type(x, y)
    dt = dt if dt.kind == "f" else B.float64
    safe = xp.asarray(xp.where(x == 0, 0, y), dtype=dt)
    out = xp.where(x == 0, 0, x * xp.log1p(safe)).astype(dt, copy=False)
    return xp.where(xp.isnan(y), xp.nan, out).astype(dt, copy=False)


xlog1py = primitive(
    "xlog1py", _xlog1py_fwd,
    (lambda g, ans, x, y: where(logical_and(x == 0, y <= -1), 0, xlog1py(g, y)),
     lambda g, ans, x, y: g * _x_over(x, y + 1)),
    kind=_EW, jvp=_J, doc="x * log1p(y), 0 where x == 0 (unless y is NaN).")


# --- NaN-ignoring maximum and minimum ---------------------------------------------------------
def _fmax_self(x, y):
    """Where fmax takes x: x >= y, or y is NaN (PyTorch's gradient routing; ties go to x)."""
    return logical_or(x >= y, y != y)


def _fmin_self(x, y):
    return logical_or(x <= y, y != y)


fmax = primitive("fmax", _ordered("fmax", lambda xp, x, y: xp.fmax(x, y)),
                 (lambda g, ans, x, y: where(_fmax_self(x, y), g, 0),
                  lambda g, ans, x, y: where(_fmax_self(x, y), 0, g)),
                 kind=_EW, jvp=_J,
                 doc="Elementwise max ignoring NaN (NaN only where both are); ties give the "
                     "gradient to the first input, as PyTorch.")
fmin = primitive("fmin", _ordered("fmin", lambda xp, x, y: xp.fmin(x, y)),
                 (lambda g, ans, x, y: where(_fmin_self(x, y), g, 0),
                  lambda g, ans, x, y: where(_fmin_self(x, y), 0, g)),
                 kind=_EW, jvp=_J,
                 doc="Elementwise min ignoring NaN (NaN only where both are); ties give the "
                     "gradient to the first input, as PyTorch.")


# --- no gradient: float bits, integer arithmetic, step -----------------------------------------
def _kinds(op: str, kinds: str, expected: str, f):
    """A forward that refuses operands whose dtype kind is not in ``kinds``: ``expected`` says
    what the op takes."""
    def fwd(xp, *xs):
        for v in xs:
            k = {bool: "b", int: "i", float: "f"}.get(type(v)) or getattr(v, "dtype", B.bool_).kind
            if k not in kinds:
                dt = getattr(v, "dtype", type(v).__name__)
                raise DTypeError(f"{op}: expected {expected}, got {dt}")
        return f(xp, *xs)
    return fwd


def _nextafter_fwd(xp, x, y):
    arrays = [v for v in (x, y) if B.is_array(v)]
    if not arrays or any(not B.is_float(v.dtype) for v in arrays):
        raise DTypeError(f"nextafter: expected a floating-point tensor and a float tensor or "
                         f"number (as PyTorch), got {getattr(x, 'dtype', type(x).__name__)} and "
                         f"{getattr(y, 'dtype', type(y).__name__)}")
    # a number beside a bfloat16 tensor rounded to bfloat16, as a comparison's (PyTorch's), so
    # the step is bfloat16's (ml_dtypes before 0.7 would promote it to float32 instead)
    return xp.nextafter(*_compared(x, y))


nextafter = primitive("nextafter", _nextafter_fwd,
                      (lambda g, ans, x, y: where(equal(x, y), 0, g),
                       lambda g, ans, x, y: zeros_like(g)), kind=_EW,
                      jvp=_J, doc="The next float after x towards y; its gradient is 1 in x "
                      "(0 where x == y, which gives y) and 0 in y, as PyTorch's.")
# bfloat16's next float, not float32's (which rounds back to x): NumPy's loop for ml_dtypes
nextafter.bf16_native = True
_INTS = "integer operands (not bool or float, as PyTorch)"
gcd = primitive("gcd", _kinds("gcd", "iu", _INTS, lambda xp, x, y: xp.gcd(x, y)), kind=_EW,
                doc="Greatest common divisor, non-negative; gcd(0, 0) = 0 (integers only).")
lcm = primitive("lcm", _kinds("lcm", "iu", _INTS, lambda xp, x, y: xp.lcm(x, y)), kind=_EW,
                doc="Least common multiple, non-negative; 0 if either is 0 (integers only).")


def _heaviside_fwd(xp, x, values):
    dt = xp.result_type(x, values)
    return xp.where(x == 0, values, x > 0).astype(dt, copy=False)


_heaviside = primitive("heaviside", _heaviside_fwd, kind=_EW,
                       doc="0 for x < 0 (and NaN), values at 0, 1 for x > 0 (no gradient).")


def heaviside(input, values):
    """The Heaviside step: 0 where input < 0 (or NaN), ``values`` where it is 0, 1 where it is
    positive. Tensors of two dtypes are refused, as in PyTorch; no gradient."""
    if isinstance(input, Tensor) and isinstance(values, Tensor) and input.dtype != values.dtype:
        raise DTypeError(f"heaviside: input and values must have the same dtype (as PyTorch), "
                         f"got {input.dtype} and {values.dtype}")
    for v in (input, values):  # complex numbers have no sign to step on
        if isinstance(v, complex) or (isinstance(v, Tensor) and v.dtype.kind == "c"):
            raise DTypeError(f"heaviside: complex operands are not supported, got "
                             f"{v.dtype if isinstance(v, Tensor) else v!r}")
    return _heaviside(input, values)


def _frexp_exponent_fwd(xp, x):
    if _float_dtype((x,)) is None and type(x) is not float:
        raise DTypeError(f"frexp: expected a floating-point tensor (as PyTorch), got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    return xp.frexp(x)[1].astype(B.int32, copy=False)


_frexp_exponent = primitive("frexp_exponent", _frexp_exponent_fwd, promote=False,
                            doc="frexp's exponent e, x = m * 2**e with 0.5 <= |m| < 1 (int32).")
_frexp_exponent.batch = elementwise_rule(_frexp_exponent)  # elementwise, but gives int32


def frexp(input) -> Frexp:
    """(mantissa, exponent): input = mantissa * 2**exponent with 0.5 <= |mantissa| < 1 (0, inf
    and NaN keep their value with exponent 0); the exponent is int32. The mantissa's gradient
    is g / 2**exponent, as PyTorch."""
    e = _frexp_exponent(input)
    half = floor_divide(e, 2)  # 2**e in two exact halves: 2**e alone overflows for the largest x
    m = input / exp2(astype(half, input.dtype)) / exp2(astype(e - half, input.dtype))
    return Frexp(m, e)


# --- composites -------------------------------------------------------------------------------
def ldexp(input, other):
    """input * 2**other. An integer exponent is taken in input's float dtype."""
    if not isinstance(other, Tensor):
        try:
            scale = 2.0 ** other
        except OverflowError:
            scale = math.inf
        return multiply(input, scale)
    if (isinstance(input, Tensor) and B.is_float(input.dtype) and other.dtype.kind in "biu"):
        other = astype(other, input.dtype)  # a complex exponent stays complex (PyTorch's)
    return multiply(input, power(2.0, other))


def _float64(op: str, v, cplx: bool = False):
    """``v`` in float64, or complex128 where ``cplx`` (an operand is complex: PyTorch's
    float_power then works in complex128); Python numbers stay numbers."""
    if isinstance(v, Tensor):
        return astype(v, B.np.complex128 if cplx else B.float64)
    if isinstance(v, complex):
        return v
    return complex(v) if cplx else float(v)


def float_power(input, exponent):
    """input ** exponent computed in float64 whatever the operands' dtypes (PyTorch's rule);
    gradients return to each input in its own dtype."""
    if not isinstance(input, Tensor) and not isinstance(exponent, Tensor):
        raise TypeError(f"float_power: expected a tensor operand, got {type(input).__name__} "
                        f"and {type(exponent).__name__}")
    cplx = any(isinstance(v, complex) or (isinstance(v, Tensor) and v.dtype.kind == "c")
               for v in (input, exponent))
    return power(_float64("float_power", input, cplx), _float64("float_power", exponent, cplx))


def _real_only(op: str, x) -> None:
    if x.dtype.kind == "c":
        raise DTypeError(f"{op}: complex tensors are not supported, got {x.dtype}")


def sgn(input):
    """The sign -1, 0 or 1 of a real tensor, 0 for NaN (zero gradient); z / |z| (0 at 0) of a
    complex one, as PyTorch."""
    if input.dtype.kind == "c":
        return _sgn(input)  # z / |z| (0 at 0), differentiable through divide and abs
    if B.is_float(input.dtype):
        return where(input != input, 0, sign(input))
    return sign(input)


def signbit(input):
    """True where the sign bit is set: negative numbers, -0.0 and NaN with a sign."""
    _real_only("signbit", input)
    if B.is_float(input.dtype):
        return less(copysign(1.0, input), 0)
    return less(input, 0)


def isposinf(input):
    """True where input is +inf."""
    return equal(input, math.inf)


def isneginf(input):
    """True where input is -inf."""
    return equal(input, -math.inf)


def isreal(input):
    """True where the imaginary part is 0: everywhere for a real tensor."""
    if input.dtype.kind == "c":
        return equal(input.imag, 0)
    return ones_like(input, dtype=B.bool_)


def isin(elements, test_elements, *, assume_unique: bool = False, invert: bool = False):
    """True where an element of ``elements`` occurs in ``test_elements`` (either may be a
    number); ``invert`` negates. NaN matches nothing. Sort and binary search: O((n + m) log m).
    ``assume_unique`` is accepted for PyTorch's signature and changes nothing."""
    e_t, t_t = isinstance(elements, Tensor), isinstance(test_elements, Tensor)
    for v, is_t in ((elements, e_t), (test_elements, t_t)):
        if not is_t and (isinstance(v, bool | complex) or not isinstance(v, int | float)):
            raise TypeError(f"isin: expected tensors or real numbers, got {type(v).__name__}")
    if not (e_t or t_t):
        raise TypeError("isin: expected at least one tensor operand, got two numbers")
    if not t_t:
        hit = equal(elements, test_elements)
    elif not e_t:
        hit = _any(equal(test_elements, elements))
    else:
        flat = reshape(test_elements, (-1,))
        n = flat.shape[0]
        if n == 0:
            hit = logical_and(equal(elements, elements), False)
        else:
            s = sort(flat).values
            i = searchsorted(s, elements)
            hit = equal(take(s, where(i < n, i, n - 1)), elements)
    return logical_not(hit) if invert else hit


# --- Tensor methods (the names torch.Tensor has) ----------------------------------------------
from .methods import register  # noqa: E402

register({
    "lgamma": lgamma, "digamma": digamma,
    "polygamma": lambda self, n: polygamma(n, self),
    "mvlgamma": lambda self, p: mvlgamma(self, p),
    "erfc": erfc, "erfinv": erfinv, "i0": i0,
    "logit": lambda self, eps=None: logit(self, eps),
    "sgn": sgn, "signbit": signbit, "heaviside": heaviside, "nextafter": nextafter,
    "ldexp": ldexp, "frexp": frexp, "float_power": float_power, "gcd": gcd, "lcm": lcm,
    "fmax": fmax, "fmin": fmin, "isneginf": isneginf, "isposinf": isposinf, "isreal": isreal,
    "igamma": igamma, "igammac": igammac,
})
