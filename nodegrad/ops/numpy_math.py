"""NumPy's elementwise math, polynomials, convolution, windows and predicates that PyTorch's
namespace lacks (``cbrt``, ``polyval``, ``convolve``, ``hamming`` ...), with NumPy's meaning.

Names, argument names and defaults are NumPy's. Integer and bool inputs of the float functions
are promoted as NumPy promotes them (8-bit and bool to float16, 16-bit to float32, wider to
float64); float32 stays float32, also where NumPy would widen it through an int64 helper array
(``polyder``, ``polyint``). Everything composes existing primitives, so gradients, jvp, vmap
and jit come from theirs, but ``cbrt``: a primitive of its own, for the correctly rounded root
(27 gives 3.0, not 27 ** (1/3)) and its slope 1 / (3 cbrt(x)^2). Complex tensors are refused,
except by the predicates and ``conjugate``. Functions whose output size or dtype depends on
the values (``trim_zeros``, ``polydiv``'s remainder, ``roots``, ``real_if_close``) read the
values eagerly: inside ``jit`` they raise the jit's JitError, inside ``vmap`` a TypeError.
"""

from __future__ import annotations

import builtins
import math
import numbers
import operator

from .. import _backend as B
from ..batching import BatchTracer
from ..errors import DTypeError, ShapeError
from ..primitive import primitive
from ..tensor import Tensor
from . import index as I
from . import linalg as L
from . import shape as S
from .arrange import pad
from .elementwise import abs as _abs
from .elementwise import (astype, bitwise_and, bitwise_not, deg2rad, floor_divide, isinf, less,
                          logical_and, rad2deg, remainder, right_shift, sign, sqrt, square,
                          trunc, where)
from .elementwise import round as _round
from .products import diff, vander
from .reduce import sum as _sum
from .scan import cumsum
from .special import nextafter, signbit
from .window import sliding_window_view

__all__: list[str] = [
    "cbrt", "fabs", "rint", "degrees", "radians", "mod", "divmod", "modf", "spacing",
    "conjugate", "around", "invert", "bitwise_invert", "bitwise_count",
    "polyval", "polyder", "polyint", "polyadd", "polysub", "polymul", "polydiv", "polyfit",
    "roots", "poly", "convolve", "correlate", "unwrap", "trim_zeros", "vecdot", "matvec",
    "vecmat", "hamming", "hanning", "blackman", "bartlett", "kaiser", "iscomplex",
    "iscomplexobj", "isrealobj", "isdtype", "issubdtype", "real_if_close", "sort_complex",
    "common_type", "min_scalar_type",
]

_EW = "elementwise"
_J = "vjp"  # elementwise: the Jacobian is diagonal, so the VJP rules are the JVP rules
_np = B.np


# --- helpers ---------------------------------------------------------------------------------
def _arr(op: str, x) -> Tensor:
    """``x`` as a tensor; array-likes become NumPy's array of them (a list of floats is
    float64, as in NumPy)."""
    if isinstance(x, Tensor):
        return x
    try:
        a = _np.asarray(B.backend_of(x).to_host(x) if B.is_array(x) else x)
    except (TypeError, ValueError) as e:
        raise DTypeError(f"{op}: expected a tensor or array-like of numbers, got "
                         f"{type(x).__name__} ({e})") from None
    if a.dtype.kind not in "biufc" and a.dtype != B.bfloat16:
        raise DTypeError(f"{op}: expected numbers, got an array of dtype {a.dtype}")
    return Tensor._of(a)


def _real(op: str, x) -> Tensor:
    x = _arr(op, x)
    if x.dtype.kind == "c":
        raise DTypeError(f"{op}: complex tensors are not supported (got {x.dtype})")
    return x


def _float(op: str, x) -> Tensor:
    """``x`` in the float dtype a NumPy float ufunc computes it in (int8/uint8/bool: float16,
    16-bit: float32, wider: float64); floats unchanged."""
    x = _real(op, x)
    if x.dtype.kind in "biu":
        return astype(x, _np.result_type(x.dtype, _np.float16))
    return x


def _as_f64(op: str, x) -> Tensor:
    """``x + 0.0`` in NumPy: integers and bools become float64, floats stay."""
    x = _real(op, x)
    return astype(x, B.float64) if x.dtype.kind in "biu" else x


def _int(op: str, v, name: str) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise DTypeError(f"{op}: {name} must be an integer, got {v!r}") from None


def _1d(op: str, x, name: str = "input") -> Tensor:
    """``x`` as at least 1-d (``atleast_1d``), refusing more than one dimension."""
    x = _real(op, x)
    if x.ndim == 0:
        x = S.reshape(x, (1,))
    if x.ndim != 1:
        raise ShapeError(f"{op}: {name} must be 1-d, got shape {tuple(x.shape)}")
    return x


def _same_float(op: str, *xs) -> None:
    """Refuse two float operands of different precision (nodegrad never widens silently)."""
    fl = {x.dtype for x in xs if B.is_float(x.dtype)}
    if len(fl) > 1:
        raise DTypeError(f"{op}: mixed float dtypes {sorted(map(str, fl))}; convert one "
                         "explicitly (x.astype(...))")


def _no_vmap(op: str, *ts) -> None:
    if any(isinstance(t, BatchTracer) for t in ts):
        raise TypeError(f"{op}: the output depends on the values, so it cannot run inside vmap")


def _host(op: str, x: Tensor, what: str):
    """``x``'s values on the host, read eagerly (refused inside jit and vmap)."""
    _no_vmap(op, x)
    x._concrete(f"{op} ({what})")
    return x.backend.to_host(x._data)


def _const(like: Tensor, host, dtype=None) -> Tensor:
    """A constant tensor from host values on ``like``'s device."""
    a = like.backend.asarray(host)
    return Tensor._of(a if dtype is None else a.astype(dtype))


# --- elementwise math ------------------------------------------------------------------------
def _cbrt_fwd(xp, x):
    if getattr(x, "dtype", None) is not None and x.dtype.kind == "c":
        raise DTypeError(f"cbrt: complex tensors are not supported (got {x.dtype})")
    return xp.cbrt(x)


# promote=False: integers and bools go to NumPy's float (int8: float16, int64: float64)
cbrt = primitive("cbrt", _cbrt_fwd,
                 # d/dx x^(1/3) = 1 / (3 cbrt(x)^2): finite but at 0 (+inf there, as JAX's)
                 lambda g, ans, x: g / (square(ans) * 3), saves="out", kind=_EW, jvp=_J,
                 promote=False,
                 doc="The real cube root, elementwise (exact for perfect cubes, negative for "
                     "negative x, NumPy's float dtype for integers); its slope "
                     "1 / (3 cbrt(x)^2) is +inf at 0.")


def spacing(x) -> Tensor:
    """The gap between |x| and the next larger float, with x's sign (positive at ±0, NaN at
    ±inf and NaN, inf at the largest float), as NumPy's ``spacing`` for float32 and float64
    (NumPy's float16 loop alone measures negative numbers upward). Zero gradient."""
    x = _float("spacing", x)
    a = _abs(x.detach())
    with _np.errstate(invalid="ignore"):
        s = nextafter(a, math.inf) - a
    return where(less(x.detach(), 0), -s, s) + sign(x) * 0  # sign: a zero-gradient path


def fabs(x) -> Tensor:
    """|x| as a float (integers promoted as NumPy's ``fabs``); complex is refused."""
    return _abs(_float("fabs", x))


def rint(x) -> Tensor:
    """Round to the nearest integer, halves to even, as a float (zero gradient)."""
    return _round(_float("rint", x))


def degrees(x) -> Tensor:
    """Radians to degrees (NumPy's name of ``rad2deg``)."""
    return rad2deg(_float("degrees", x))


def radians(x) -> Tensor:
    """Degrees to radians (NumPy's name of ``deg2rad``)."""
    return deg2rad(_float("radians", x))


def mod(x1, x2) -> Tensor:
    """x1 mod x2 with the sign of x2 (NumPy's ``mod``, which is ``remainder``). An integer
    division by zero raises ZeroDivisionError, where NumPy warns and answers 0."""
    return remainder(x1, x2)


def divmod(x1, x2) -> tuple[Tensor, Tensor]:  # noqa: A001  (NumPy's name)
    """``(x1 // x2, x1 mod x2)`` elementwise, as NumPy's ``divmod``."""
    return floor_divide(x1, x2), remainder(x1, x2)


def modf(x) -> tuple[Tensor, Tensor]:
    """The fractional and integral parts, both with x's sign: modf(-3.5) = (-0.5, -3.0),
    modf(inf) = (0.0, inf), as NumPy. The fractional part has slope 1, the integral 0."""
    x = _float("modf", x)
    whole = trunc(x)
    neg = -x
    frac = where(signbit(x), -(neg - trunc(neg)), x - whole)  # -0.0 for negative integers
    zero = _const(x, _np.zeros((), x.dtype))
    frac = where(isinf(x), where(signbit(x), -zero, zero), frac)
    return frac, whole


def conjugate(x) -> Tensor:
    """The complex conjugate (NumPy's ``conjugate``): a complex tensor goes to its ``conj``
    method; a real one is copied (differentiable), as NumPy returns a new array where
    PyTorch's ``conj`` returns the input itself."""
    x = _arr("conjugate", x)
    if x.dtype.kind == "c":
        return x.conj()
    return S.clone(x)


def around(a, decimals: int = 0) -> Tensor:
    """Round half to even to ``decimals`` places, as NumPy's ``around``/``round``: integers
    stay integers (negative ``decimals`` round them to tens, hundreds ... in float64 and back),
    bools become float16."""
    decimals = _int("around", decimals, "decimals")
    a = _real("around", a)
    if a.dtype.kind in "iu":
        if decimals >= 0:
            return S.clone(a)
        return astype(_round(astype(a, B.float64), decimals=decimals), a.dtype)
    return _round(_float("around", a), decimals=decimals)


def _bitwise_input(op: str, x) -> Tensor:
    x = _arr(op, x)
    if x.dtype.kind not in "biu":
        raise DTypeError(f"{op}: expected an integer or bool tensor, got dtype {x.dtype}")
    return x


def invert(x) -> Tensor:
    """Bitwise NOT (logical NOT of bools), NumPy's name of ``bitwise_not``."""
    return bitwise_not(_bitwise_input("invert", x))


def bitwise_invert(x) -> Tensor:
    """Bitwise NOT, the array API's name of ``bitwise_not``."""
    return bitwise_not(_bitwise_input("bitwise_invert", x))


_M1, _M2, _M4, _H01 = (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F,
                       0x0101010101010101)


def _popcount64(v):
    """Set bits of each uint64 (SWAR: pairs, nibbles, bytes, then a byte sum by multiply)."""
    v = v - bitwise_and(right_shift(v, 1), _M1)
    v = bitwise_and(v, _M2) + bitwise_and(right_shift(v, 2), _M2)
    v = bitwise_and(v + right_shift(v, 4), _M4)
    return astype(right_shift(v * _H01, 56), B.np.uint8)


def bitwise_count(x) -> Tensor:
    """The number of 1 bits in the absolute value of each integer (uint8), as NumPy's
    ``bitwise_count``; bools count as 0 or 1. Not differentiable."""
    x = _bitwise_input("bitwise_count", x)
    if x.dtype.kind == "b":
        return astype(x, _np.uint8)
    if x.dtype.kind == "i":
        x = _abs(astype(x, B.int64))  # |int64 min| wraps to 2**63: one bit, as NumPy
    return _popcount64(astype(x, _np.uint64))


# --- polynomials (coefficients highest power first, as NumPy's poly* functions) ----------------
def polyval(p, x) -> Tensor:
    """The polynomial with coefficients ``p`` (highest power first) at ``x``, by Horner's rule
    from ``zeros_like(x)`` as NumPy (so inf gives NaN). Differentiable in ``p`` and ``x``.
    Coefficients given as a list (or array) take a float tensor ``x``'s dtype, and a list
    ``x`` takes float coefficients' dtype, so ``polyval([1, 0, -1], x32)`` stays float32."""
    given_p, given_x = isinstance(p, Tensor), isinstance(x, Tensor)
    p = _real("polyval", p)
    x = _real("polyval", x)
    if given_x and not given_p and B.is_float(x.dtype) and p.dtype != x.dtype:
        p = astype(p, x.dtype)
    elif given_p and not given_x and B.is_float(p.dtype) and x.dtype != p.dtype:
        x = astype(x, p.dtype)
    if p.ndim == 0:
        p = S.reshape(p, (1,))
    y = _const(x, x.backend.xp.zeros(tuple(x.shape), x.dtype))
    for i in range(p.shape[0]):
        y = y * x + p[i]
    return y


def _poly_float(op: str, p) -> Tensor:
    """Coefficients as at least 1-d, integers as float64."""
    return _as_f64(op, _1d(op, p, "p"))


def polyder(p, m: int = 1) -> Tensor:
    """The coefficients of the ``m``-th derivative of the polynomial ``p`` (empty when ``m``
    exceeds its degree). Integer coefficients stay integers, as in NumPy."""
    m = _int("polyder", m, "m")
    if m < 0:
        raise ValueError(f"polyder: the order of the derivative m must be >= 0, got {m}")
    p = _1d("polyder", p, "p")
    for _ in range(m):
        n = p.shape[0] - 1
        powers = _const(p, _np.arange(builtins.max(n, 0), 0, -1))
        p = p[:-1] * (powers if p.dtype.kind in "iub" else astype(powers, p.dtype))
    return p


def polyint(p, m: int = 1, k=None) -> Tensor:
    """The coefficients of the ``m``-th antiderivative of ``p``; ``k`` gives the ``m``
    integration constants (one value for all, or one per integration, last first applied),
    default zeros. Differentiable in ``p`` and a tensor ``k``."""
    m = _int("polyint", m, "m")
    if m < 0:
        raise ValueError(f"polyint: the order of the integral m must be >= 0, got {m}")
    p = _1d("polyint", p, "p")
    if m == 0:
        return p
    p = _as_f64("polyint", p)
    if k is None:
        k = _const(p, _np.zeros(m, p.dtype))
    k = _1d("polyint", k, "k")
    if k.dtype != p.dtype:
        k = astype(k, p.dtype)
    if k.shape[0] == 1 and m > 1:
        k = S.broadcast_to(k, (m,))
    if k.shape[0] < m:
        raise ValueError(f"polyint: k must be a scalar or a 1-d sequence of length 1 or >= m "
                         f"= {m}, got length {k.shape[0]}")
    for j in range(m):
        div = _const(p, _np.arange(p.shape[0], 0, -1), p.dtype)
        p = S.concatenate([p / div, k[j:j + 1]])
    return p


def _pad_front(p: Tensor, n: int) -> Tensor:
    return pad(p, [(n, 0)]) if n > 0 else p


def polyadd(a1, a2) -> Tensor:
    """The coefficients of the sum of two polynomials (the shorter padded at the front)."""
    a1, a2 = _1d("polyadd", a1, "a1"), _1d("polyadd", a2, "a2")
    n = builtins.max(a1.shape[0], a2.shape[0])
    return _pad_front(a1, n - a1.shape[0]) + _pad_front(a2, n - a2.shape[0])


def polysub(a1, a2) -> Tensor:
    """The coefficients of a1 - a2 (the shorter padded at the front)."""
    a1, a2 = _1d("polysub", a1, "a1"), _1d("polysub", a2, "a2")
    n = builtins.max(a1.shape[0], a2.shape[0])
    return _pad_front(a1, n - a1.shape[0]) - _pad_front(a2, n - a2.shape[0])


def polymul(a1, a2) -> Tensor:
    """The coefficients of the product of two polynomials (their full convolution)."""
    return _convolve("polymul", _1d("polymul", a1, "a1"), _1d("polymul", a2, "a2"), "full")


def polydiv(u, v) -> tuple[Tensor, Tensor]:
    """Quotient and remainder of polynomial division u = q v + r, as NumPy's ``polydiv``:
    float coefficients, the remainder's leading entries dropped while they are within 1e-8 of
    0 (its length depends on the values: refused inside jit). A divisor whose leading
    coefficient is 0 raises ZeroDivisionError (NumPy answers inf/NaN). Differentiable."""
    u, v = _poly_float("polydiv", u), _poly_float("polydiv", v)
    _same_float("polydiv", u, v)
    if float(_host("polydiv", v[:1], "the divisor's leading coefficient")[0]) == 0:
        raise ZeroDivisionError("polydiv: the divisor's leading coefficient is 0")
    m, n = u.shape[0] - 1, v.shape[0] - 1
    scale = 1.0 / v[0]
    qs = []
    r = u
    for k in range(m - n + 1):
        d = scale * r[k]
        qs.append(d)
        r = r - pad(d * v, [(k, m - n - k)])
    q = S.stack(qs) if qs else _const(u, _np.zeros(1, u.dtype))
    rh = _host("polydiv", r, "the remainder's length depends on its values")
    start = 0
    while rh.shape[0] - start > 1 and abs(rh[start]) <= 1e-8:
        start += 1
    return q, r[start:]


def polyfit(x, y, deg: int, rcond=None, full: bool = False, w=None, cov=False):
    """Least-squares polynomial fit of degree ``deg`` (coefficients highest power first), as
    NumPy: the Vandermonde columns scaled to unit norm, solved by the SVD pseudo-inverse with
    singular values below ``rcond`` (default len(x)·eps) times the largest cut; ``w`` weights
    the residuals. ``y`` may be 2-d (one fit per column). ``full`` also returns the residual
    sum of squares, rank, singular values and rcond; ``cov`` (True or "unscaled") the
    coefficients' covariance. Differentiable in x, y and w."""
    op = "polyfit"
    deg = _int(op, deg, "deg")
    if deg < 0:
        raise ValueError(f"{op}: expected deg >= 0, got {deg}")
    order = deg + 1
    x, y = _as_f64(op, x), _as_f64(op, y)
    if x.ndim != 1:
        raise TypeError(f"{op}: expected a 1-d x, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise TypeError(f"{op}: expected a non-empty x")
    if y.ndim < 1 or y.ndim > 2:
        raise TypeError(f"{op}: expected a 1-d or 2-d y, got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise TypeError(f"{op}: expected x and y of the same length, got {x.shape[0]} and "
                        f"{y.shape[0]}")
    _same_float(op, x, y)
    rcond = x.shape[0] * float(B.finfo(x.dtype).eps) if rcond is None else float(rcond)
    lhs, rhs = vander(x, order), y
    if w is not None:
        w = _as_f64(op, w)
        if w.ndim != 1:
            raise TypeError(f"{op}: expected 1-d weights w, got shape {tuple(w.shape)}")
        if w.shape[0] != y.shape[0]:
            raise TypeError(f"{op}: expected w and y of the same length, got {w.shape[0]} and "
                            f"{y.shape[0]}")
        _same_float(op, x, w)
        lhs = lhs * w[:, None]
        rhs = rhs * (w[:, None] if rhs.ndim == 2 else w)
    scale = sqrt(_sum(lhs * lhs, 0))
    lhs = lhs / scale
    c = L.matmul(L.pinv(lhs, atol=0.0, rtol=rcond), rhs)
    c = c / (scale[:, None] if c.ndim == 2 else scale)
    if not (full or cov):
        return c
    s = L.svdvals(lhs)
    sh = _host(op, s, "the rank")
    rank = int((sh > rcond * sh[0]).sum()) if sh.size else 0
    if rank == order and x.shape[0] > order:
        fit = L.matmul(lhs, c * (scale[:, None] if c.ndim == 2 else scale))
        resids = _sum(square(fit - rhs), 0)
        if resids.ndim == 0:
            resids = S.reshape(resids, (1,))
    else:
        resids = _const(x, _np.zeros(0, x.dtype))
    if full:
        return c, resids, rank, s, rcond
    vbase = L.inv(L.matmul(S.swapaxes(lhs, 0, 1), lhs)) / (scale[:, None] * scale[None, :])
    if cov == "unscaled":
        fac = 1.0
    else:
        if x.shape[0] <= order:
            raise ValueError(f"{op}: the number of data points ({x.shape[0]}) must exceed order "
                             f"({order}) to scale the covariance matrix")
        fac = resids / (x.shape[0] - order)
    return c, (vbase * fac if y.ndim == 1 else vbase[:, :, None] * fac)


def roots(p) -> Tensor:
    """The roots of the polynomial ``p`` (highest power first), as the eigenvalues of its
    companion matrix, with NumPy's dtypes: real when every root is real, else complex (a
    stored complex tensor). Leading zeros are dropped, trailing zeros give roots at 0. Read
    eagerly, not differentiable."""
    p = _1d("roots", p, "p")
    h = _host("roots", p, "its coefficients")
    nz = _np.nonzero(h)[0]
    if nz.size == 0:
        return _const(p, _np.array([]))
    trailing = h.shape[0] - int(nz[-1]) - 1
    h = h[int(nz[0]):int(nz[-1]) + 1]
    if h.dtype.kind not in "fc":
        h = h.astype(_np.float64)
    n = h.shape[0]
    if n > 1:
        a = _np.diag(_np.ones(n - 2, h.dtype), -1)
        a[0, :] = -h[1:] / h[0]
        r = _np.linalg.eigvals(a)
    else:
        r = _np.array([], h.dtype)
    return _const(p, _np.concatenate([r, _np.zeros(trailing, r.dtype)]))


def poly(seq_of_zeros):
    """The coefficients (highest power first, leading 1) of the monic polynomial with the given
    roots, or of a square matrix's characteristic polynomial, as NumPy's ``poly``; 1.0 for no
    roots. Differentiable in a 1-d real sequence of roots (a matrix goes through its
    eigenvalues, read eagerly)."""
    z = _real("poly", seq_of_zeros)
    if z.ndim == 0:
        z = S.reshape(z, (1,))
    if z.ndim == 2 and z.shape[0] == z.shape[1] and z.shape[0] != 0:
        ev = _np.linalg.eigvals(_host("poly", z, "a matrix's eigenvalues"))
        return _const(z, _np.poly(ev))
    if z.ndim != 1:
        raise ValueError(f"poly: input must be 1-d or a non-empty square 2-d matrix, got shape "
                         f"{tuple(z.shape)}")
    if z.shape[0] == 0:
        return 1.0
    if z.dtype != B.float32:
        z = astype(z, B.float64)
    a = _const(z, _np.ones(1, z.dtype))
    for i in range(z.shape[0]):  # multiply by (x - z_i)
        a = pad(a, [(0, 1)]) - z[i] * pad(a, [(1, 0)])
    return a


# --- convolution -----------------------------------------------------------------------------
_MODES = {"v": "valid", "s": "same", "f": "full", 0: "valid", 1: "same", 2: "full"}


def _mode(op: str, mode) -> str:
    key = mode.lower()[:1] if isinstance(mode, str) and mode else mode
    if isinstance(key, bool) or key not in _MODES:
        raise ValueError(f"{op}: mode must be 'valid', 'same' or 'full', got {mode!r}")
    return _MODES[key]


def _correlate_core(a: Tensor, v: Tensor, mode: str) -> Tensor:
    """sum_n a[n + k] v[n] over the lags of ``mode``, for len(a) >= len(v) (NumPy's
    placement: 'same' keeps len(a) outputs, centred with the extra one at the start)."""
    n2 = v.shape[0]
    left, right = {"valid": (0, 0), "same": (n2 // 2, n2 - 1 - n2 // 2),
                   "full": (n2 - 1, n2 - 1)}[mode]
    if left or right:
        a = pad(a, [(left, right)])
    return L.matmul(sliding_window_view(a, n2), v)


def _conv_inputs(op: str, a, v) -> tuple[Tensor, Tensor]:
    a, v = _1d(op, a, "a"), _1d(op, v, "v")
    if a.shape[0] == 0:
        raise ValueError(f"{op}: a cannot be empty")
    if v.shape[0] == 0:
        raise ValueError(f"{op}: v cannot be empty")
    _same_float(op, a, v)
    return a, v


def _convolve(op: str, a, v, mode) -> Tensor:
    a, v = _conv_inputs(op, a, v)
    if v.shape[0] > a.shape[0]:
        a, v = v, a
    return _correlate_core(a, S.flip(v, 0), _mode(op, mode))


def convolve(a, v, mode: str = "full") -> Tensor:
    """The discrete linear convolution of two 1-d sequences, as NumPy's ``convolve``: 'full'
    (len(a) + len(v) - 1 outputs), 'same' (max(len) outputs, centred) or 'valid' (only full
    overlaps). Differentiable in both; complex sequences are refused."""
    return _convolve("convolve", a, v, mode)


def correlate(a, v, mode: str = "valid") -> Tensor:
    """The cross-correlation c[k] = sum_n a[n + k] v[n] of two 1-d sequences, as NumPy's
    ``correlate`` (default 'valid'; a v longer than a gives the reversed correlation of v
    with a, as NumPy). Differentiable in both; complex sequences (NumPy conjugates v) are
    refused."""
    mode = _mode("correlate", mode)
    a, v = _conv_inputs("correlate", a, v)
    if v.shape[0] > a.shape[0]:
        return S.flip(_correlate_core(v, a, mode), 0)
    return _correlate_core(a, v, mode)


# --- phase unwrapping, trimming --------------------------------------------------------------
def unwrap(p, discont=None, axis: int = -1, *, period: float = 2 * math.pi) -> Tensor:
    """Unwrap jumps larger than ``discont`` (default period / 2) along ``axis`` by adding
    multiples of ``period``, as NumPy's ``unwrap`` (integer input with an integer period stays
    integer). The corrections are piecewise constant, so the gradient is the identity."""
    p = _real("unwrap", p)
    if p.ndim == 0:
        raise ShapeError("unwrap: expected at least 1 dimension, got a 0-d tensor")
    axis = _int("unwrap", axis, "axis")
    if not -p.ndim <= axis < p.ndim:
        raise ShapeError(f"unwrap: axis {axis} is out of range for {p.ndim} dims")
    axis %= p.ndim
    dt = _np.result_type(_np.int8 if p.dtype == B.bool_ else p.dtype, period)
    if dt.kind == "f" and p.dtype.kind == "f":
        dt = p.dtype  # NumPy's weak Python float keeps float32 float32
    if p.dtype != dt:
        p = astype(p, dt)
    if discont is None:
        discont = period / 2
    dd = diff(p.detach(), dim=axis)
    if dt.kind in "iu":
        high, rem = builtins.divmod(period, 2)
        ambiguous = rem == 0
    else:
        high, ambiguous = period / 2, True
    low = -high
    ddmod = remainder(dd - low, period) + low
    if ambiguous:
        ddmod = where(logical_and(ddmod == low, dd > 0), high, ddmod)
        if ddmod.dtype != dt:
            ddmod = astype(ddmod, dt)
    fix = where(less(_abs(dd), discont), 0, ddmod - dd)
    if fix.dtype != dt:
        fix = astype(fix, dt)
    head = I.getitem(p, (slice(None),) * axis + (slice(0, 1),))
    return S.concatenate([head, I.getitem(p, (slice(None),) * axis + (slice(1, None),))
                          + cumsum(fix, axis)], axis) if p.shape[axis] > 1 else S.clone(p)


def trim_zeros(filt, trim: str = "fb", axis=None) -> Tensor:
    """``filt`` without its leading ('f') and/or trailing ('b') zeros along ``axis`` (default:
    every axis, the smallest box holding the nonzero values), as NumPy's ``trim_zeros``. The
    size depends on the values: read eagerly, refused inside jit and vmap. Differentiable."""
    x = _arr("trim_zeros", filt)
    if not isinstance(trim, str) or trim.lower() not in ("fb", "bf", "f", "b"):
        raise ValueError(f"trim_zeros: unexpected character(s) in trim: {trim!r} (expected "
                         "'f', 'b' or 'fb')")
    trim = trim.lower()
    if axis is None:
        axes = tuple(range(x.ndim))
    else:
        axes = []
        for a in (axis if isinstance(axis, (tuple, list)) else (axis,)):
            a = _int("trim_zeros", a, "axis")
            if not -x.ndim <= a < x.ndim:
                raise ShapeError(f"trim_zeros: axis {a} is out of range for {x.ndim} dims")
            axes.append(a % x.ndim)
        axes = tuple(axes)
    if not axes:
        return x
    nz = _np.argwhere(_host("trim_zeros", x, "the output's size depends on the values"))
    if nz.shape[0] == 0:
        start = stop = [0] * x.ndim
    else:
        start = [int(i) for i in nz.min(0)] if "f" in trim else [None] * x.ndim
        stop = [int(i) + 1 for i in nz.max(0)] if "b" in trim else [None] * x.ndim
    return I.getitem(x, tuple(slice(start[d], stop[d]) if d in axes else slice(None)
                              for d in range(x.ndim)))


# --- NumPy 2's vector and matrix-vector products ---------------------------------------------
def _core(op: str, x, name: str, nd: int) -> Tensor:
    x = _real(op, x)
    if x.ndim < nd:
        raise ShapeError(f"{op}: {name} needs at least {nd} dim{'s' * (nd > 1)}, got shape "
                         f"{tuple(x.shape)}")
    return x


def vecdot(x1, x2, /, *, axis: int = -1) -> Tensor:
    """The dot product of vectors along ``axis``, broadcasting the other dims (NumPy 2's
    ``vecdot``); the vector lengths must match exactly. Integer inputs stay integers."""
    x1, x2 = _core("vecdot", x1, "x1", 1), _core("vecdot", x2, "x2", 1)
    axis = _int("vecdot", axis, "axis")
    for x in (x1, x2):
        if not -x.ndim <= axis < x.ndim:
            raise ShapeError(f"vecdot: axis {axis} is out of range for shape {tuple(x.shape)}")
    x1, x2 = S.moveaxis(x1, axis, -1), S.moveaxis(x2, axis, -1)
    if x1.shape[-1] != x2.shape[-1]:
        raise ShapeError(f"vecdot: the vectors' lengths differ: {x1.shape[-1]} and "
                         f"{x2.shape[-1]} (shapes {tuple(x1.shape)} and {tuple(x2.shape)})")
    _same_float("vecdot", x1, x2)
    return L.matmul(x1[..., None, :], x2[..., :, None])[..., 0, 0]


def matvec(x1, x2, /) -> Tensor:
    """Matrix times vector over the last axes, (..., m, n) with (..., n) to (..., m),
    broadcasting the leading dims (NumPy 2's ``matvec``)."""
    x1, x2 = _core("matvec", x1, "x1", 2), _core("matvec", x2, "x2", 1)
    if x1.shape[-1] != x2.shape[-1]:
        raise ShapeError(f"matvec: the matrix has {x1.shape[-1]} columns, the vector "
                         f"{x2.shape[-1]} entries (shapes {tuple(x1.shape)} and "
                         f"{tuple(x2.shape)})")
    _same_float("matvec", x1, x2)
    return L.matmul(x1, x2[..., :, None])[..., 0]


def vecmat(x1, x2, /) -> Tensor:
    """Vector times matrix over the last axes, (..., n) with (..., n, m) to (..., m),
    broadcasting the leading dims (NumPy 2's ``vecmat``)."""
    x1, x2 = _core("vecmat", x1, "x1", 1), _core("vecmat", x2, "x2", 2)
    if x1.shape[-1] != x2.shape[-2]:
        raise ShapeError(f"vecmat: the vector has {x1.shape[-1]} entries, the matrix "
                         f"{x2.shape[-2]} rows (shapes {tuple(x1.shape)} and "
                         f"{tuple(x2.shape)})")
    _same_float("vecmat", x1, x2)
    return L.matmul(x1[..., None, :], x2)[..., 0, :]


# --- NumPy's symmetric windows (float64, length M; M <= 0 gives an empty one) ----------------
def _window(op: str, M, fn, *args) -> Tensor:
    if isinstance(M, (bool, Tensor)) or not isinstance(M, numbers.Real):
        raise DTypeError(f"{op}: M must be a number (the window length), got {M!r}")
    return Tensor._of(_np.asarray(fn(M, *args), dtype=_np.float64))


def hamming(M: int) -> Tensor:
    """The symmetric Hamming window 0.54 + 0.46 cos(pi n / (M - 1)), n = 1-M, 3-M, ..., M-1."""
    return _window("hamming", M, _np.hamming)


def hanning(M: int) -> Tensor:
    """The symmetric Hann window 0.5 + 0.5 cos(pi n / (M - 1)) (zeros at both ends)."""
    return _window("hanning", M, _np.hanning)


def blackman(M: int) -> Tensor:
    """The symmetric Blackman window 0.42 + 0.5 cos(pi n/(M-1)) + 0.08 cos(2 pi n/(M-1))."""
    return _window("blackman", M, _np.blackman)


def bartlett(M: int) -> Tensor:
    """The symmetric triangular (Bartlett) window, zero at both ends."""
    return _window("bartlett", M, _np.bartlett)


def kaiser(M: int, beta: float) -> Tensor:
    """The symmetric Kaiser window I0(beta sqrt(1 - (2n/(M-1) - 1)^2)) / I0(beta)."""
    if isinstance(beta, (bool, Tensor)) or not isinstance(beta, numbers.Real):
        raise DTypeError(f"kaiser: beta must be a real number, got {beta!r}")
    return _window("kaiser", M, _np.kaiser, float(beta))


# --- predicates and dtype helpers ------------------------------------------------------------
def iscomplex(x) -> Tensor:
    """Elementwise whether the imaginary part is nonzero (all False for a real tensor)."""
    x = _arr("iscomplex", x)
    xp = x.backend.xp
    if x.dtype.kind == "c":
        return Tensor._of(xp.imag(x._data) != 0)
    return Tensor._of(xp.zeros(tuple(x.shape), B.bool_))


def _dtype_of(x):
    """The dtype of a tensor, array, dtype or type (None for other objects)."""
    if isinstance(x, Tensor) or B.is_array(x):
        return _np.dtype(x.dtype)
    try:
        return _np.dtype(x)
    except TypeError:
        return None


def iscomplexobj(x) -> bool:
    """Whether ``x`` (tensor, array, dtype or values) has a complex dtype, whatever values."""
    dt = _dtype_of(x) if isinstance(x, Tensor) or B.is_array(x) else None
    return (dt.kind == "c") if dt is not None else bool(_np.iscomplexobj(x))


def isrealobj(x) -> bool:
    """Whether ``x`` does not have a complex dtype (``not iscomplexobj(x)``)."""
    return not iscomplexobj(x)


def _as_dtype(op: str, d, name: str):
    if isinstance(d, Tensor) or B.is_array(d):
        raise TypeError(f"{op}: {name} must be a dtype, got a {type(d).__name__} (pass its "
                        ".dtype)")
    try:
        return _np.dtype(d)
    except TypeError:
        raise TypeError(f"{op}: {name} must be a dtype, got {d!r}") from None


def isdtype(dtype, kind) -> bool:
    """Whether ``dtype`` (nodegrad's or NumPy's) is of ``kind``: a dtype, one of 'bool',
    'signed integer', 'unsigned integer', 'integral', 'real floating', 'complex floating',
    'numeric', or a tuple of these (the array API's ``isdtype``)."""
    dt = _as_dtype("isdtype", dtype, "dtype")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    kinds = tuple(k if isinstance(k, str) else _as_dtype("isdtype", k, "kind") for k in kinds)
    try:
        return bool(_np.isdtype(dt, kinds))
    except (TypeError, ValueError) as e:
        raise type(e)(f"isdtype: {e}") from None


def issubdtype(arg1, arg2) -> bool:
    """Whether ``arg1`` is lower than or equal to ``arg2`` in NumPy's type hierarchy (dtypes of
    nodegrad or NumPy, scalar types, or abstract ones such as ``numpy.floating``)."""
    for a in (arg1, arg2):
        if isinstance(a, Tensor) or B.is_array(a):
            raise TypeError(f"issubdtype: expected dtypes or types, got a {type(a).__name__} "
                            "(pass its .dtype)")
    try:
        return bool(_np.issubdtype(arg1, arg2))
    except TypeError as e:
        raise TypeError(f"issubdtype: {e}") from None


def real_if_close(a, tol: float = 100) -> Tensor:
    """The real part of a complex tensor whose imaginary parts are all below ``tol`` machine
    epsilons (``tol`` <= 1: an absolute tolerance); anything else unchanged. Read eagerly."""
    a = _arr("real_if_close", a)
    if a.dtype.kind != "c":
        return a
    if tol > 1:
        tol = float(_np.finfo(a.dtype).eps) * tol
    h = _host("real_if_close", a, "whether to drop the imaginary part")
    if _np.all(_np.abs(h.imag) < tol):
        return _const(a, h.real)
    return a


def sort_complex(a) -> Tensor:
    """Sorted by real part, then imaginary part, as a complex tensor (int8/int16/uint8/uint16
    give complex64, other real dtypes complex128, as NumPy). Read eagerly, not
    differentiable."""
    a = _arr("sort_complex", a)
    h = _np.sort(_host("sort_complex", a, "a complex result"), axis=-1)
    if h.dtype.kind != "c":
        h = h.astype(_np.complex64 if h.dtype.char in "bhBH" else _np.complex128)
    return _const(a, h)


def common_type(*arrays):
    """The NumPy scalar type (inexact) that all inputs convert to: integers count as float64,
    as NumPy's ``common_type``; tensors and arrays are accepted."""
    if not arrays:
        raise TypeError("common_type: expected at least one tensor or array")
    probes = []
    for x in arrays:
        dt = _dtype_of(x) if isinstance(x, Tensor) or B.is_array(x) else None
        if dt is None:
            raise TypeError(f"common_type: expected tensors or arrays, got {type(x).__name__}")
        if dt.kind not in "biufc":
            raise TypeError(f"common_type: can't get a common type for dtype {dt}")
        probes.append(_np.empty(0, dt))
    try:
        return _np.common_type(*probes)
    except TypeError as e:
        raise TypeError(f"common_type: {e}") from None


def min_scalar_type(a):
    """The smallest NumPy dtype that holds the scalar ``a`` (a 0-d tensor is read as its
    value); a tensor or array with dimensions gives its own dtype, as NumPy."""
    if isinstance(a, Tensor):
        if a.ndim:
            return _np.dtype(a.dtype)
        a = _host("min_scalar_type", a, "the value")
    return _np.min_scalar_type(a)
