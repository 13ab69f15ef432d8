"""More activations (PyTorch's set): hardtanh, hardswish, silu, mish and glu as primitives
(hardtanh for PyTorch's gradient of 0 on the bounds; the others fused, so that one bind computes
each and their gradients stay finite where a composition's ``g · x`` would overflow), the rest
as exact compositions of elementwise primitives. Each also has a function in ``nn.functional``
and a module in ``nn``.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ..errors import ShapeError
from ..primitive import primitive
from .elementwise import (_sigmoid, _sigmoid_grad, abs, clip, expm1, logical_and, logical_or,
                          sigmoid, softplus, tanh, where)
from .nn import softmax
from .shape import concatenate, norm_axis, split

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _hardtanh_vjp(g, ans, x, min_val, max_val):
    # 0 on and beyond the bounds, else g: a NaN input (NaN out) gets g, as relu's, not a
    # silent 0 (PyTorch's formula; its vectorised loop gives 0 there, its scalar one g)
    outside = logical_or(x <= min_val, x >= max_val)
    return where(outside, 0.0, g)


_hardtanh = primitive(
    "hardtanh", lambda xp, x, min_val, max_val: xp.clip(x, min_val, max_val), _hardtanh_vjp,
    kind="elementwise", jvp="vjp",
    doc="x clipped to [min_val, max_val]; the gradient is 0 on and beyond the bounds, else 1.")


def hardtanh(x, min_val: float = -1.0, max_val: float = 1.0):
    """x clipped to [min_val, max_val] (PyTorch's gradient: 0 on the bounds). An integer x
    stays integer, its bounds truncated toward zero, as PyTorch's."""
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val {min_val} must not exceed max_val {max_val}")
    if getattr(getattr(x, "dtype", None), "kind", "f") in "iu":
        if x.dtype.kind == "u" and min(min_val, max_val) < 0:
            raise ValueError(f"hardtanh: cannot clip an unsigned tensor ({x.dtype}) to negative "
                             f"bounds [{min_val}, {max_val}]")
        return clip(x, int(min_val), int(max_val))
    return _hardtanh(x, min_val=float(min_val), max_val=float(max_val))


def relu6(x):
    """min(max(x, 0), 6)."""
    return hardtanh(x, 0.0, 6.0)


def hardsigmoid(x):
    """relu6(x + 3) / 6: a piecewise-linear sigmoid."""
    return hardtanh(x + 3.0, 0.0, 6.0) / 6.0


def _hardswish_fwd(xp, x):
    x = _floating(xp, x)
    out = B.hardswish(x)  # these operations in one pass, where numba is loaded
    if out is not None:
        return out
    with B.np.errstate(**_QUIET):  # x (x + 3) overflows for huge x: that x takes its own piece
        mid = x * ((x + 3) / 6)
    # a NaN fails both tests and stays NaN; -0 from -3 down, as PyTorch's x · 0 there
    return B.where(x >= 3, x, B.where(x <= -3, xp.full((), -0.0, x.dtype), mid))


def _hardswish_vjp(g, ans, x):
    """g from 3 up, 0 from −3 down, g (x / 3 + 1/2) between (PyTorch's pieces); NaN at NaN."""
    return where(x >= 3.0, g, where(x <= -3.0, 0.0, g * (x / 3.0 + 0.5)))


def _hardswish_raw(needs, g, ans, x):
    """The rule on host arrays in one pass (:func:`._backend.hardswish`), its bits."""
    dx = B.hardswish(x, g)
    return None if dx is None else (dx,)


_hardswish = primitive(
    "hardswish", _hardswish_fwd, _hardswish_vjp, kind="elementwise", jvp="vjp",
    vjp_raw=_hardswish_raw,
    doc="x relu6(x + 3) / 6 in one bind: x from 3 up, 0 from -3 down (no overflow).")


def hardswish(x):
    """x · relu6(x + 3) / 6 (MobileNetV3), one primitive: x itself from 3 up and 0 from −3
    down, so the value at max is max (not x (x + 3) = inf) and the gradient at ±inf is
    PyTorch's 1 and 0, not inf · 0."""
    return _hardswish(x)


def nonpositive_part(x):
    """x where x <= 0, else 0: what the exponential branch of elu-like activations sees (no
    overflow), with gradient exactly 1 there (``minimum(x, 0)`` would halve it at 0)."""
    return where(x > 0, 0.0, x)


def _elu(x, alpha):
    return where(x > 0, x, expm1(nonpositive_part(x)) * alpha)


def selu(x):
    """scale · elu(x, alpha) with the self-normalising constants of Klambauer et al."""
    return _elu(x, _SELU_ALPHA) * _SELU_SCALE


def celu(x, alpha: float = 1.0):
    """x for x > 0, else alpha·(exp(x / alpha) − 1)."""
    if alpha == 0:
        raise ValueError("celu: alpha must be nonzero")
    return where(x > 0, x, expm1(nonpositive_part(x) / alpha) * alpha)


# --- silu and mish: one primitive each, and one for each gradient ----------------------------
# Forwards on raw arrays, in the dtype of x (integers and bools as float32, as sigmoid's).
# exp may overflow to inf and a quotient by 0 give inf on purpose: each formula below turns
# those into the limit (sigmoid 0 or 1, tanh(softplus) 0 or 1), never into NaN, for every
# finite x. Only x = ±inf meets inf · 0; there the result is the limit of the function (or of
# its slope), set afterwards where the result came out NaN.
_QUIET = {"over": "ignore", "divide": "ignore", "invalid": "ignore"}


def _floating(xp, x, like=None):
    """``x`` as an array of a floating (or complex) dtype: integers and bools as float32, a
    Python number in the dtype of ``like`` (a gradient's other operand) where that is float."""
    dt = getattr(like, "dtype", None)
    x = xp.asarray(x, dtype=dt if not B.is_array(x) and dt is not None and dt.kind == "f"
                   else None)
    return x if x.dtype.kind in "fc" else x.astype(B.float32)


def _limits(xp, r, x, at_neg, at_pos):
    """``r`` with ``at_neg`` where x is -inf and ``at_pos`` where x is +inf, when any of ``r``
    is NaN (the one place the formulas meet inf · 0); otherwise ``r`` itself, unselected."""
    if x.dtype.kind != "f" or not xp.isnan(r).any():
        return r
    return B.where(x == -math.inf, at_neg, B.where(x == math.inf, at_pos, r))


def _times(xp, t, g):
    """t · g, into ``t`` (a new array of the result's shape and dtype) where g fits it."""
    if getattr(g, "shape", None) == t.shape and g.dtype == t.dtype:
        return xp.multiply(t, g, out=t)
    return t * g


def _sigmoid_of(xp, x):
    """1 / (1 + e⁻ˣ) as a new array: 0 where e⁻ˣ overflows, 1 at +inf."""
    s = xp.asarray(xp.exp(-x))
    s += 1
    return xp.reciprocal(s, out=s)


def _silu_fwd(xp, x):
    x = _floating(xp, x)
    out = B.silu(x)  # these operations in three passes, where numba is loaded
    if out is not None:
        return out
    with B.np.errstate(**_QUIET):
        s = _sigmoid_of(xp, x)
        y = xp.multiply(x, s, out=s)  # PyTorch's x / (1 + e⁻ˣ), to its rounding
    return _limits(xp, y, x, -0.0, math.inf)


def _silu_grad_fwd(xp, g, x):
    """g · s (1 + x (1 − s)), s = sigmoid(x): where x (1 − s) could be large (x → −max), s
    is 0 first; where x is large (→ max), 1 − s is 0 first: no intermediate overflows."""
    x = _floating(xp, x, g)
    out = B.silu(x, g)  # these operations in three passes, where numba is loaded
    if out is not None:
        return out
    with B.np.errstate(**_QUIET):
        s = _sigmoid_of(xp, x)
        t = xp.asarray(1 - s)
        t *= x
        t += 1
        t *= s
        r = _times(xp, t, g)
    return _limits(xp, r, x, g * 0, g)


def _tanh_softplus(xp, e):
    """tanh(softplus(x)) from e = eˣ: n / (n + 2) with n = e (e + 2), written 1 / (1 + 2 / n)
    so that e = inf gives 1 and e = 0 gives 0 (no inf / inf)."""
    t = xp.asarray(e + 2)
    t *= e
    xp.divide(2, t, out=t)
    t += 1
    return xp.reciprocal(t, out=t)


def _mish_fwd(xp, x):
    x = _floating(xp, x)
    with B.np.errstate(**_QUIET):
        t = _tanh_softplus(xp, xp.exp(x))
        y = xp.multiply(x, t, out=t)
    return _limits(xp, y, x, -0.0, math.inf)


def _mish_grad_fwd(xp, g, x):
    """g · (T + x s (1 − T²)), T = tanh(softplus(x)), s = sigmoid(x) (PyTorch's formula): x s
    is 0 first where x → −max, 1 − T² is 0 where x → max: no intermediate overflows."""
    x = _floating(xp, x, g)
    with B.np.errstate(**_QUIET):
        e = xp.asarray(xp.exp(x))
        tsp = _tanh_softplus(xp, e)
        xp.reciprocal(e, out=e)  # s = 1 / (1 + e⁻ˣ): 0 where eˣ is 0, 1 where it is inf
        e += 1
        s = xp.reciprocal(e, out=e)
        w = xp.asarray(tsp * tsp)
        xp.subtract(1, w, out=w)
        s *= x
        s *= w
        s += tsp
        r = _times(xp, s, g)
    return _limits(xp, r, x, g * 0, g)


def _finite_part(x):
    """x with ±inf as 0 (NaN stays): the second derivatives below are s (1 − s)-scaled, 0 at
    ±inf, where the unscaled factor x (…) would give inf · 0."""
    return where(abs(x) == math.inf, 0.0, x)


def _silu_dd(c, out, g, x):
    """c · g · silu''(x), silu'' = s (1 − s) (2 + x (1 − 2 s)), with x scaled by s (1 − s)
    before it meets its large factor."""
    s = sigmoid(x)
    q = s * (1 - s)
    return c * g * (q * 2 + (q * _finite_part(x)) * (1 - s * 2))


def _mish_dd(c, out, g, x):
    """c · g · mish''(x), mish'' = q (2 + x (1 − s − 2 s T)) with q = s (1 − T²)."""
    s, t = sigmoid(x), tanh(softplus(x))
    q = s * (1 - t * t)
    return c * g * (q * 2 + (q * _finite_part(x)) * (1 - s - s * t * 2))


_silu_grad = primitive(
    "silu_grad", _silu_grad_fwd,
    (lambda c, out, g, x: _silu_grad(c, x), _silu_dd), kind="elementwise", jvp="vjp",
    doc="g silu'(x): silu's VJP in one bind, finite for every finite x.")
_silu = primitive(
    "silu", _silu_fwd, lambda g, ans, x: _silu_grad(g, x), kind="elementwise", jvp="vjp",
    doc="x sigmoid(x) (swish) in one pass, without overflow; 0 at -inf.")
_mish_grad = primitive(
    "mish_grad", _mish_grad_fwd,
    (lambda c, out, g, x: _mish_grad(c, x), _mish_dd), kind="elementwise", jvp="vjp",
    doc="g mish'(x): mish's VJP in one bind, finite for every finite x.")
_mish = primitive(
    "mish", _mish_fwd, lambda g, ans, x: _mish_grad(g, x), kind="elementwise", jvp="vjp",
    doc="x tanh(softplus(x)) in one pass, without overflow; 0 at -inf.")


def silu(x):
    """x · sigmoid(x) (swish), one primitive: finite gradients for every finite x (a cotangent
    times x never overflows), PyTorch's values, and the limits 0 (value and slope) at -inf and
    slope 1 at +inf, where PyTorch's formula gives NaN."""
    return _silu(x)


def mish(x):
    """x · tanh(softplus(x)), one primitive: as :func:`silu`, finite gradients for every finite
    x and the limits at ±inf."""
    return _mish(x)


def logsigmoid(x):
    """log(sigmoid(x)) = −softplus(−x), finite for large |x|; written 0 − softplus(−x) so that
    where softplus(−x) underflows (x large, +inf) the result is +0, as PyTorch's, not −0."""
    return 0.0 - softplus(-x)


def softsign(x):
    """x / (1 + |x|)."""
    return x / (abs(x) + 1.0)


def softmin(x, dim: int = -1, dtype=None):
    """softmax(−x) along ``dim`` (in ``dtype`` when given, as PyTorch's)."""
    return softmax(-x, dim, dtype=dtype)


def tanhshrink(x):
    """x − tanh(x)."""
    return x - tanh(x)


def softshrink(x, lambd: float = 0.5):
    """x − lambd above lambd, x + lambd below −lambd, else 0."""
    if lambd < 0:
        raise ValueError(f"softshrink: lambd must be non-negative, got {lambd}")
    # a NaN input takes the outer branch (NaN out, gradient g, as PyTorch's formula)
    middle = logical_and(x >= -lambd, x <= lambd)
    return where(middle, 0.0, where(x > lambd, x - lambd, x + lambd))


def hardshrink(x, lambd: float = 0.5):
    """x where |x| > lambd, else 0."""
    # a NaN input stays NaN with gradient g (PyTorch's formula), never a silent 0
    return where(abs(x) <= lambd, 0.0, x)


def threshold(x, threshold: float, value: float):
    """x where x > threshold, else ``value`` (cast to an integer x's dtype, as PyTorch's); a
    NaN x stays NaN with gradient 1, as in PyTorch."""
    if getattr(getattr(x, "dtype", None), "kind", "f") in "iu":
        value = int(value)
    return where(x <= threshold, value, x)


def _halves(x, axis):
    """The two halves of ``x`` along ``axis`` (views)."""
    n = x.shape[axis] // 2
    lead = (slice(None),) * axis
    return x[lead + (slice(0, n),)], x[lead + (slice(n, None),)]


def _glu_fwd(xp, x, axis):
    a, b = _halves(_floating(xp, x), axis)
    return a * _sigmoid(xp, b)  # sigmoid's own forward: the bits of a · sigmoid(b)


def _glu_vjp(g, ans, x, axis):
    """(g s, g · a s (1 − s)) with s = sigmoid(b): a is scaled by s (1 − s) <= 1/4 before it
    meets g, so a = ±max gives PyTorch's finite gradient, not g · a = inf."""
    a, b = split(x, 2, axis)
    s = sigmoid(b)
    return concatenate([g * s, g * _sigmoid_grad(a, s)], axis)


def _glu_jvp(ts, ans, x, axis):
    if ts[0] is None:
        return None
    a, b = split(x, 2, axis)
    ta, tb = split(ts[0], 2, axis)
    s = sigmoid(b)
    return ta * s + tb * _sigmoid_grad(a, s)


# kind "reduce": its batching rule moves ``axis`` past the batch axis, as glu needs
_glu = primitive("glu", _glu_fwd, _glu_vjp, kind="reduce", jvp=_glu_jvp,
                 doc="a · sigmoid(b) for the halves a, b of x along ``axis``, in one bind.")


def glu(x, dim: int = -1):
    """Gated linear unit: a · sigmoid(b) for the two halves a, b of ``x`` along ``dim``, one
    primitive whose gradient stays finite where a composition's g · a would overflow."""
    ax = norm_axis(dim, x.ndim, "glu") if x.ndim else None
    if ax is None or x.shape[ax] % 2:
        raise ShapeError(f"glu: dim {dim} must have even length, got shape {tuple(x.shape)}")
    return _glu(x, axis=ax)
