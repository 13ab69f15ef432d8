"""Elementwise primitives: arithmetic, transcendental functions, activations, comparisons.

Binary ops broadcast as NumPy does; the engine sums each cotangent back to its input's shape,
so the rules below are written for equal shapes. Operands of different dtypes are brought to
one by the engine (PyTorch's promotion, ``nodegrad.dtypes``); Python numbers never upcast.
"""

from __future__ import annotations

import cmath
import math

from .. import _backend as B
from ..errors import DTypeError
from ..primitive import bind as _bind
from ..primitive import primitive
from ..tensor import Tensor, zeros_like

_EW = "elementwise"
_ndarray = B.ndarray
_J = "vjp"  # elementwise: the Jacobian is diagonal, so the VJP rules are the JVP rules


def _as(mask, like):
    """A boolean mask as 0/1 in ``like``'s dtype."""
    return astype(mask, like.dtype)


def _no_bools(name, f):
    """A forward that refuses bool with bool, which PyTorch does not define for this op (NumPy
    would answer in int8)."""
    def fwd(xp, x, y, **params):
        if _is_bool(x) and _is_bool(y):
            raise DTypeError(f"{name}: not defined for two bool operands (as in PyTorch); "
                             "convert with .long() or .int() first")
        return f(xp, x, y, **params)
    return fwd


def _int_divisor(name: str, xp, x, y) -> None:
    """Refuse an integer division by zero, as PyTorch does (NumPy returns 0 with a warning);
    an empty dividend divides nothing, so it is not refused."""
    if getattr(x, "size", 1) == 0:
        return
    if getattr(y, "dtype", None) is not None or type(y) is int or type(y) is bool:
        if xp.result_type(x, y).kind in "iu" and not xp.all(y):
            raise ZeroDivisionError(f"{name}: integer division by zero")


def _int_division(name: str, f):
    """``f``, refusing integer division by zero first."""
    def fwd(xp, x, y, **params):
        _int_divisor(name, xp, x, y)
        return f(xp, x, y, **params)
    return fwd


def _is_bool(v) -> bool:
    return type(v) is bool or getattr(v, "dtype", None) == B.bool_


# --- arithmetic ------------------------------------------------------------------------------
def _binary(name: str):
    """The forward ``xp.<name>(x, y)``, in halves on two threads for large NumPy float arrays
    (:func:`._backend.binary_halves`)."""
    host = getattr(B.np, name)

    def fwd(xp, x, y):
        if xp is not _np:
            return getattr(xp, name)(x, y)
        if type(x) is _ndarray and x.size >= _SPLIT_MIN:
            out = B.binary_halves(host, x, y)
            if out is not None:
                return out
        return host(x, y)
    return fwd


_SPLIT_MIN = B.SPLIT_MIN
_NO: dict = {}  # no parameters (bind's third argument)
_np = B.np
_host_multiply = B.np.multiply
add = primitive("add", _binary("add"),
                (lambda g, ans, x, y: g, lambda g, ans, x, y: g), saves="none", kind=_EW, jvp=_J,
                doc="x + y, broadcasting.")
subtract = primitive("subtract", _no_bools("subtract", _binary("subtract")),
                     (lambda g, ans, x, y: g, lambda g, ans, x, y: -g), saves="none",
                     kind=_EW, jvp=_J,
                     doc="x - y, broadcasting (a bool operand with a number counts as 0/1, as "
                         "NumPy's; two bools are refused, as PyTorch does).")


def _multiply(xp, x, y):
    """``x * y``: the binary forward above, inlined (the most frequent op), with a vmapped
    layer's per-example weight gradients (stacks of outer products) by ``outer_stack``."""
    if xp is not _np:
        return xp.multiply(x, y)
    if type(x) is _ndarray:
        if x.ndim > 2 and getattr(y, "ndim", 0) > 2:
            out = B.outer_stack(x, y)
            if out is not None:
                return out
        if x.size >= _SPLIT_MIN:
            out = B.binary_halves(_host_multiply, x, y)
            if out is not None:
                return out
    return _host_multiply(x, y)


multiply = primitive("multiply", _multiply,
                     (lambda g, ans, x, y: g * y, lambda g, ans, x, y: g * x), kind=_EW, jvp=_J,
                     doc="x * y, broadcasting.")
multiply.cross = True  # d/dx reads y, d/dy reads x
divide = primitive("divide", lambda xp, x, y: xp.true_divide(x, y),
                   # -g·(x/y)/y, PyTorch's order: y·y underflows to 0 for tiny y (0/0 = NaN)
                   (lambda g, ans, x, y: g / y, lambda g, ans, x, y: -g * ((x / y) / y)),
                   kind=_EW, jvp=_J, doc="x / y (true division), broadcasting.")
def _negative_fwd(xp, x):
    try:
        return xp.negative(x)
    except TypeError:  # NumPy's refusal of a bool, reworded: the op and the way out
        if _is_bool(x):
            raise DTypeError("negative: not defined for a bool tensor (as in PyTorch); to "
                             "invert a mask use ~ or logical_not") from None
        raise


negative = primitive("negative", _negative_fwd, lambda g, ans, x: -g,
                     saves="none", kind=_EW, jvp=_J, doc="-x.")


def _log_base(x):
    if isinstance(x, Tensor):
        return log(where(x == 0, 1, x))
    return math.log(x) if x > 0 else (0.0 if x == 0 else math.nan)


def _power_dx(g, ans, x, y):
    """y x^(y-1); 0 where y == 0 and x^-1 is not finite (x^0 is constant in x: no 0 * inf at
    x = 0, at a tiny x whose x^-1 overflows or at NaN, as PyTorch). The masked exponent keeps
    higher orders finite there and exact elsewhere."""
    if not isinstance(y, Tensor):
        return g * 0 if y == 0 else g * y * x ** (y - 1)
    m = logical_and(y == 0, logical_not(isfinite(x ** -1.0)))
    return where(m, 0, g * y * x ** (where(m, 1, y) - 1))


def _power_dy(g, ans, x, y):
    """x^y log x; 0 where x == 0 and y >= 0 (PyTorch's), -inf where x == 0 and y < 0. x^y is
    recomputed: the node keeps only its inputs, so the output may change in place afterwards
    (PyG's ``deg.pow_(-0.5).masked_fill_(...)``), as PyTorch's pow allows."""
    ans = x ** y
    if not isinstance(x, Tensor):
        if x == 0:
            return g * where(y >= 0, 0, ans * -math.inf)
        return g * ans * _log_base(x)
    m = logical_and(x == 0, y >= 0)
    return g * where(m, 0, ans * log(where(m, 1, x)))


def _power_fwd(xp, x, y):
    """``x ** y``; integers to an array of integer exponents, some negative, as PyTorch gives
    them (1 for a base of 1, ±1 for -1, else 0), where NumPy refuses. A negative scalar
    exponent of an integer tensor is refused, as in both."""
    try:
        return xp.power(x, y)
    except ValueError:
        if not (getattr(y, "ndim", 0) and xp.result_type(x, y).kind in "iu"):
            raise
        neg = y < 0
        pos = xp.power(x, xp.where(neg, 0, y))
        unit = xp.where(x == 1, 1, xp.where(x == -1, 1 - 2 * (y % 2), 0))
        return xp.where(neg, unit, pos).astype(pos.dtype)


power = primitive(
    "power", _no_bools("power", _power_fwd),
    (_power_dx, _power_dy),
    saves="inputs", kind=_EW, jvp=_J, doc="x ** y; d/dy uses log x (0 where x == 0).")
def _remainder_fwd(xp, x, y):
    """x mod y with the sign of y; a zero result has the sign of x, as PyTorch's (fmod's zero
    kept), where NumPy's takes y's."""
    out = xp.remainder(x, y)
    if getattr(out, "dtype", None) is not None and out.dtype.kind == "f":
        out = xp.where(out == 0, xp.copysign(out, x), out).astype(out.dtype, copy=False)
    return out


remainder = primitive(
    "remainder", _no_bools("remainder", _int_division("remainder", _remainder_fwd)),
    (lambda g, ans, x, y: g, lambda g, ans, x, y: -g * floor_divide(x, y)),
    kind=_EW, jvp=_J, doc="x mod y with the sign of y (Python's %).")


def _zero(g, ans, *inputs, **params):
    """The VJP (and JVP) of a piecewise-constant function: zero almost everywhere. Such ops
    stay in the graph with this gradient, as in PyTorch and JAX, so that ``round(x).sum()``
    back-propagates zeros rather than failing for want of a graph."""
    return zeros_like(g)


def _ordered(name: str, f):
    """``f`` (a forward) refusing complex operands: complex numbers have no order, and PyTorch
    refuses them here (NumPy's lexicographic order would be a silent wrong answer)."""
    def fwd(xp, *args, **params):
        for a in args:
            if type(a) is complex or getattr(getattr(a, "dtype", None), "kind", "") == "c":
                raise DTypeError(f"{name}: complex tensors have no order, so {name} is not "
                                 f"defined for them (got {getattr(a, 'dtype', 'complex')})")
        return f(xp, *args, **params)
    return fwd


def _stepwise(name, f, doc, arity: int = 1, promote: bool = False):
    """A rounding-like elementwise op whose gradient is zero for every input."""
    return primitive(name, f, (_zero,) * arity, kind=_EW, jvp=_J, promote=promote, doc=doc)


floor_divide = _stepwise("floor_divide",
                         _no_bools("floor_divide", _int_division(
                             "floor_divide", lambda xp, x, y: xp.floor_divide(x, y))),
                         "x // y (zero gradient).", arity=2, promote=True)

# --- transcendental --------------------------------------------------------------------------
exp = primitive("exp", lambda xp, x: xp.exp(x), lambda g, ans, x: g * ans, saves="out",
                kind=_EW, jvp=_J, doc="e**x.")
# d/dx = e**x from x, not ans + 1: that loses every digit below ans's ulp near -1 (elu's
# gradient at x = -17 in float32 was 45 % off; PyTorch's elu uses e**x too)
expm1 = primitive("expm1", lambda xp, x: xp.expm1(x), lambda g, ans, x: g * exp(x),
                  saves="inputs", kind=_EW, jvp=_J, doc="e**x - 1, accurate near 0.")
log = primitive("log", lambda xp, x: xp.log(x), lambda g, ans, x: g / x, kind=_EW, jvp=_J,
                doc="Natural logarithm.")
log1p = primitive("log1p", lambda xp, x: xp.log1p(x), lambda g, ans, x: g / (x + 1),
                  kind=_EW, jvp=_J, doc="log(1 + x), accurate near 0.")
sqrt = primitive("sqrt", lambda xp, x: xp.sqrt(x), lambda g, ans, x: g / (ans * 2),
                 saves="out", kind=_EW, jvp=_J, doc="Square root.")
_BOOL = B.np.dtype(bool)


def _square(xp, x):
    if getattr(x, "dtype", None) is _BOOL:  # PyTorch squares a bool tensor as int64 (NumPy int8)
        x = x.astype(B.int64)
    return xp.square(x)


square = primitive("square", _square, lambda g, ans, x: g * (x * 2),
                   kind=_EW, jvp=_J, doc="x * x.")
def _sgn(x):
    """x / |x| (0 at 0) for complex x, differentiable: abs's gradient there, as PyTorch's."""
    zero = x == 0
    return where(zero, 0, x / where(zero, 1, abs(x)))


abs = primitive("abs", lambda xp, x: xp.abs(x),
                lambda g, ans, x: g * (sign(x) if x.dtype.kind != "c" else _sgn(x)), kind=_EW,
                jvp=(lambda t, ans, x: t * sign(x) if x.dtype.kind != "c"
                     else (t * _sgn(x).conj()).real,),
                doc="|x|; its gradient at 0 is 0 (x/|x| for complex x).")
sign = _stepwise("sign", _ordered("sign", lambda xp, x: x.copy() if getattr(
                     x, "dtype", None) == B.bool_ else xp.sign(x)),
                 "-1, 0 or 1 (zero gradient; a bool stays itself, as in PyTorch; complex "
                 "tensors refused: sgn is z / |z|).", promote=True)
def _trig(xp, name: str, x):
    """``xp.<name>(x)``, keeping a Python number a Python number (NumPy's float64 scalar would
    upcast a float32 operand)."""
    if B.is_array(x):
        return getattr(xp, name)(x)
    return getattr(cmath if isinstance(x, complex) else math, name)(x)


def _sin_grad_fwd(xp, g, x):
    if type(x) is _ndarray:  # the common case, without _trig's checks
        return g * xp.cos(x)
    return g * _trig(xp, "cos", x)


def _cos_grad_fwd(xp, g, x):
    out = g * (xp.sin(x) if type(x) is _ndarray else _trig(xp, "sin", x))
    if B.is_array(out):
        return xp.negative(out, out=out)  # in place: no second temporary
    return -out


_sin_grad = primitive(
    "sin_grad", _sin_grad_fwd,
    (lambda c, out, g, x: _sin_grad(c, x), lambda c, out, g, x: -(c * g * sin(x))),
    kind=_EW, jvp=_J, doc="g cos(x): sin's VJP in one bind, not two.")
_cos_grad = primitive(
    "cos_grad", _cos_grad_fwd,
    (lambda c, out, g, x: _cos_grad(c, x), lambda c, out, g, x: -(c * g * cos(x))),
    kind=_EW, jvp=_J, doc="-g sin(x): cos's VJP in one bind, not three.")
# (the VJPs bind their one op directly: a primitive's __call__ is one more Python frame per node)
sin = primitive("sin", lambda xp, x: xp.sin(x), lambda g, ans, x: _bind(_sin_grad, (g, x), _NO),
                kind=_EW, jvp=_J, doc="Sine.")
cos = primitive("cos", lambda xp, x: xp.cos(x), lambda g, ans, x: _bind(_cos_grad, (g, x), _NO),
                kind=_EW, jvp=_J, doc="Cosine.")
tan = primitive("tan", lambda xp, x: xp.tan(x), lambda g, ans, x: g * (ans * ans + 1),
                saves="out", kind=_EW, jvp=_J, doc="Tangent.")
def _tanh_grad_fwd(xp, g, ans):
    t = ans * ans
    if type(t) is _ndarray or B.is_array(t):
        xp.subtract(1, t, out=t)  # one temporary for 1 - ans², not two
    else:
        t = 1 - t
    return g * t


_tanh_grad = primitive(
    "tanh_grad", _tanh_grad_fwd,
    (lambda c, out, g, ans: _tanh_grad(c, ans), lambda c, out, g, ans: c * g * ans * -2),
    kind=_EW, jvp=_J, doc="g (1 - ans²): tanh's VJP from its output in one bind, not three.")
tanh = primitive("tanh", lambda xp, x: xp.tanh(x),
                 lambda g, ans, x: _bind(_tanh_grad, (g, ans), _NO),
                 saves="out", kind=_EW, jvp=_J, doc="Hyperbolic tangent.")
_SQRT_2_OVER_PI = 2.0 / math.sqrt(math.pi)
erf = primitive("erf", lambda xp, x: B.backend_of(xp.asarray(x)).erf(x),
                lambda g, ans, x: g * (exp(-(x * x)) * _SQRT_2_OVER_PI), kind=_EW, jvp=_J,
                doc="The error function.")


def _sigmoid(xp, x):
    kind = getattr(x, "dtype", B.float32).kind
    if kind == "c":  # complex: the formula as written (no real part to clip by sign)
        return 1 / (1 + xp.exp(-x))
    if kind != "f":  # ints and bools as float32, as PyTorch
        x = x.astype(B.float32)
    out = B.sigmoid(x)  # the same operations in three passes, where numba is loaded
    if out is not None:
        return out
    e = xp.exp(-xp.abs(x))
    return B.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_grad_fwd(xp, g, ans):
    out = B.sigmoid_grad(g, ans)  # the same operations in one pass, where numba is loaded
    if out is not None:
        return out
    t = 1 - ans
    if B.is_array(t):
        t *= ans
    else:
        t = t * ans
    return g * t


_sigmoid_grad = primitive(
    "sigmoid_grad", _sigmoid_grad_fwd,
    (lambda c, out, g, ans: _sigmoid_grad(c, ans), lambda c, out, g, ans: c * g * (1 - ans * 2)),
    kind=_EW, jvp=_J, doc="g ans (1 - ans): sigmoid's VJP from its output in one bind, not three.")
sigmoid = primitive("sigmoid", _sigmoid, lambda g, ans, x: _sigmoid_grad(g, ans), saves="out",
                    kind=_EW, jvp=_J, doc="1 / (1 + e**-x), computed without overflow.")

# --- activations -----------------------------------------------------------------------------
def _relu_grad_fwd(xp, g, ans):
    """g where relu's output ``ans`` is nonzero: positive, or NaN (a NaN input gets the
    incoming gradient, as in PyTorch, rather than a silent 0); ``ans`` is never negative."""
    dt = getattr(g, "dtype", None) or getattr(ans, "dtype", None)  # a Python g keeps float32
    if getattr(ans, "ndim", 0) and getattr(g, "shape", None) == ans.shape and ans.dtype == dt:
        if g.strides == ans.strides:  # one layout (C, or a wide layer's F): no copy needed
            if type(g) is _ndarray and type(ans) is _ndarray:
                out = B.relu_grad(g, ans)  # one pass where numba is loaded
                if out is not None:
                    return out
            return xp.multiply(g, ans != 0, dtype=dt)
        # g copied into ans's memory layout first: when the layouts differ (a conv's
        # channels-last output against a reshaped gradient) the masked multiply stays in one
        # order, ~2x faster; the values are the same products
        out = xp.empty_like(ans)
        xp.copyto(out, g)
        if type(ans) is _ndarray and B.relu_grad_dense(out, ans):  # numba's loop, in place
            return out
        return xp.multiply(out, ans != 0, out=out)
    return g * (ans != 0) if dt is None else xp.multiply(g, ans != 0, dtype=dt)


_relu_grad = primitive(
    "relu_grad", _relu_grad_fwd,
    (lambda c, out, g, ans: _relu_grad(c, ans), lambda c, out, g, ans: None), kind=_EW,
    jvp=(lambda t, out, g, ans: _relu_grad(t, ans), None),  # zero almost everywhere in ans
    doc="g where relu's output is nonzero (positive or NaN), else 0: relu's VJP in one bind.")
relu = primitive("relu", _ordered("relu", lambda xp, x: B.relu(x) if type(x) is B.ndarray
                                  else xp.maximum(x, 0)),
                 lambda g, ans, x: _relu_grad(g, ans),
                 saves="out", kind=_EW, jvp=_J,
                 doc="max(x, 0); its gradient is 0 at 0 and 1 at NaN (PyTorch's).",
                 vjp_raw=lambda needs, g, ans, x: (_relu_grad_fwd(B.np, g, ans),))
def _leaky_relu_fwd(xp, x, negative_slope):
    out = B.leaky_relu(x, negative_slope)  # one pass where numba is loaded, the same bits
    return B.where(x > 0, x, x * negative_slope) if out is None else out


def _leaky_relu_raw(needs, g, ans, x, negative_slope):
    """The rule's ``where(x > 0, g, g * negative_slope)`` on host arrays in one pass."""
    dx = B.leaky_relu(x, negative_slope, g)
    return None if dx is None else (dx,)


_leaky_relu = primitive(
    "leaky_relu", _leaky_relu_fwd,
    lambda g, ans, x, negative_slope: where(x > 0, g, g * negative_slope),
    kind=_EW, jvp=_J, vjp_raw=_leaky_relu_raw, doc="x for x > 0, else negative_slope * x.")


def leaky_relu(x, negative_slope: float = 0.01):
    """x for x > 0, else ``negative_slope * x``."""
    return _leaky_relu(x, negative_slope=float(negative_slope))


def _softplus_fwd(xp, x, beta, threshold):
    bx = x * beta
    soft = (xp.log1p(xp.exp(-xp.abs(bx))) + xp.maximum(bx, 0)) / beta
    return B.where(bx > threshold, x, soft)


_softplus = primitive(
    "softplus", _softplus_fwd,
    lambda g, ans, x, beta, threshold: g * where(x * beta > threshold, 1.0,
                                                 sigmoid(x * beta)).astype(g.dtype),
    kind=_EW, jvp=_J, doc="log(1 + e**(beta x)) / beta, linear above ``threshold``.")


def softplus(x, beta: float = 1.0, threshold: float = 20.0):
    """Smooth ReLU: log(1 + exp(beta * x)) / beta (x itself where beta * x > threshold)."""
    return _softplus(x, beta=float(beta), threshold=float(threshold))


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_fwd(xp, x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + xp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))
    x = xp.asarray(x)  # a Python number too, as every elementwise primitive takes
    out = B.gelu32(x, _INV_SQRT2)  # the same operations in one loop, where numba is loaded
    if out is not None:
        return out
    return 0.5 * x * (1 + B.backend_of(x).erf(x * _INV_SQRT2))


def _gelu_vjp(g, ans, x, approximate):
    if approximate == "tanh":
        t = tanh((x + x * x * x * 0.044715) * _GELU_C)
        # the second term is below 1e-30 for |x| >= 10 (tanh saturated); there it is taken at
        # 0 instead, as x³ overflows (float16 from 40 up) and would give inf · 0 = NaN
        xs = where(abs(x) < 10.0, x, 0.0)
        ts = tanh((xs + xs * xs * xs * 0.044715) * _GELU_C)
        d_inner = (xs * xs * (3 * 0.044715) + 1) * _GELU_C
        return g * ((t + 1) * 0.5 + xs * 0.5 * (1 - ts * ts) * d_inner)
    return _gelu_grad(g, x)


def _gelu_grad_fwd(xp, g, x):
    """``g * ((erf(x / √2) + 1) * 0.5 + x * (exp(x * x * -0.5) / √(2π)))``, these operations in
    this order: on host float32 arrays in two loops (:func:`._backend.gelu32_grad`, where numba is
    loaded), else in the backend's ufuncs, the same bits (float32 erf and exp computed in float32
    arithmetic either way)."""
    if type(x) is _ndarray:
        out = B.gelu32_grad(g, x, _INV_SQRT2, _INV_SQRT_2PI)
        if out is not None:
            return out
    if not B.is_array(x):  # a Python number stays one (a NumPy float64 would upcast g)
        cdf = (math.erf(x * _INV_SQRT2) + 1) * 0.5
        return g * (cdf + x * (math.exp(x * x * -0.5) * _INV_SQRT_2PI))
    cdf = (B.backend_of(x).erf(x * _INV_SQRT2) + 1) * 0.5
    return g * (cdf + x * (B.exp_nonpositive(xp, x * x * -0.5) * _INV_SQRT_2PI))


def _gelu_grad_dx(c, out, g, x):
    """The second derivative's rule: ``c g φ(x) (2 - x²)``, as GELU'' = φ (2 - x²)."""
    return c * g * (exp(x * x * -0.5) * _INV_SQRT_2PI) * (2 - x * x)


_gelu_grad = primitive(
    "gelu_grad", _gelu_grad_fwd, (lambda c, out, g, x: _gelu_grad(c, x), _gelu_grad_dx),
    kind=_EW, jvp=_J,
    doc="g (Φ(x) + x φ(x)): the exact GELU's VJP as one op, in eager and in a jit trace alike.")
_gelu = primitive("gelu", _gelu_fwd, _gelu_vjp, kind=_EW, jvp=_J,
                  doc="x * Phi(x) (exact, with erf) or its tanh approximation.")


def gelu(x, approximate: str = "none"):
    """Gaussian error linear unit; ``approximate='tanh'`` uses the tanh formula."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _gelu(x, approximate=approximate)


# --- selection -------------------------------------------------------------------------------
def _isnan01(v, g):
    """1 where ``v`` (a tensor or a number) is NaN, else 0, in g's dtype."""
    return _as(v != v, g) if isinstance(v, Tensor) else (1.0 if v != v else 0.0)


def _pick(g, a, b, largest: bool):
    """g where a beats b (is larger, or smaller), half of g at ties (PyTorch's convention for
    max/min of two). A NaN beats a number (it is the result) and ties with a NaN, so the
    gradient goes to the NaN operand rather than to neither."""
    na, nb = _isnan01(a, g), _isnan01(b, g)
    beats = _as(a > b if largest else a < b, g)
    return g * (beats + na * (1 - nb) + (_as(a == b, g) + na * nb) * 0.5)


maximum = primitive("maximum", _ordered("maximum", lambda xp, x, y: xp.maximum(x, y)),
                    (lambda g, ans, x, y: _pick(g, x, y, True),
                     lambda g, ans, x, y: _pick(g, y, x, True)),
                    kind=_EW, jvp=_J, doc="Elementwise max; ties split the gradient evenly.")
minimum = primitive("minimum", _ordered("minimum", lambda xp, x, y: xp.minimum(x, y)),
                    (lambda g, ans, x, y: _pick(g, x, y, False),
                     lambda g, ans, x, y: _pick(g, y, x, False)),
                    kind=_EW, jvp=_J, doc="Elementwise min; ties split the gradient evenly.")


def _nan_bound(b) -> bool:
    """Whether a Python bound of clip is NaN."""
    return isinstance(b, float) and b != b


def _clip_dx(g, ans, x, lo, hi):
    """g where clip passes x through: inside the bounds (inclusive) or x NaN (its gradient is
    g, as relu's, not a silent 0); 0 where a bound, or a NaN bound, gives the output."""
    if _nan_bound(lo) or _nan_bound(hi):
        return zeros_like(g)
    beyond = None
    for b, side in ((lo, less), (hi, greater)):
        if b is None:
            continue
        c = side(x, b)
        if isinstance(b, Tensor):
            c = logical_or(c, b != b)
        beyond = c if beyond is None else logical_or(beyond, c)
    return g if beyond is None else where(beyond, 0, g)


def _clip_dlo(g, ans, x, lo, hi):
    hit = x < lo
    if hi is not None:  # crossed bounds give hi, as in NumPy and PyTorch
        hit = logical_and(hit, lo <= hi)
    # a NaN bound is the output (NaN): the gradient goes to it, as maximum's to a NaN operand
    return g * _as(logical_or(hit, lo != lo), g)


def _clip_dhi(g, ans, x, lo, hi):
    hit = logical_or(x > hi, hi != hi)  # a NaN hi is the output
    if lo is not None:  # crossed bounds give hi; a NaN lo is the output instead
        hit = logical_and(logical_or(hit, lo > hi), lo == lo)
    return g * _as(hit, g)


clip = primitive(
    "clip", _ordered("clip", lambda xp, x, lo, hi: x.copy() if lo is None and hi is None
                     else xp.clip(x, lo, hi)),
    (_clip_dx, _clip_dlo, _clip_dhi),
    kind=_EW, jvp=_J,
    doc="Limit x to [lo, hi] (either may be None); gradient passes inside, inclusive.")


def _where_fwd(xp, cond, x, y):
    return B.where(cond, x, y)


where = primitive("where", _where_fwd,
                  (None, lambda g, ans, c, x, y: where(c, g, 0),
                   lambda g, ans, c, x, y: where(c, 0, g)),
                  kind=_EW, jvp=_J, operands=(1, 2), doc="x where cond is true, else y.")

# --- casts -----------------------------------------------------------------------------------
_astype = primitive("astype", lambda xp, x, dtype, src: B.cast(x, dtype),
                    lambda g, ans, x, dtype, src: astype(g, src), saves="none", kind=_EW,
                    jvp="linear",
                    promote=False, doc="Convert to another dtype (differentiable between floats).",
                    # a complex cotangent: its real part goes to a real source (PyTorch's rule)
                    complex=(lambda g, ans, x, dtype, src: astype(g if src.kind == "c"
                                                                  else g.real, src),))


def astype(x, dtype):
    """``x`` converted to ``dtype`` (the same tensor if it already has it)."""
    dtype = B.as_dtype(dtype)
    if x.dtype == dtype:
        return x
    return _astype(x, dtype=dtype, src=x.dtype)


# --- no gradient -----------------------------------------------------------------------------
def _nodiff(name, f, doc):
    return primitive(name, f, kind=_EW, promote=False, doc=doc)


def _compared(x, y) -> tuple:
    """A comparison's operands as PyTorch compares them where one is a Python float or int:
    in the tensor's dtype when it is a float (a float16 tensor == 0.1 compares with 0.1
    rounded to float16, out-of-range numbers as inf), in the default float when the tensor is
    an integer or bool and the number a float (int64 16777216 == 16777217.0 in float32)."""
    tx, ty = type(x), type(y)
    if tx in _NUMBERS:
        a, v = y, x
    elif ty in _NUMBERS:
        a, v = x, y
    else:
        return x, y
    dt = getattr(a, "dtype", None)
    if dt is None:
        return x, y
    if dt is B.bfloat16 or dt is B.float16:
        with B.np.errstate(over="ignore"):
            v = B.cast(B.np.asarray(float(v)), dt)
    elif dt.kind in "biu" and type(v) is float:
        a, v = a.astype(B.DEFAULT_FLOAT), B.DEFAULT_FLOAT.type(v)
    else:
        return x, y
    return (v, a) if tx in _NUMBERS else (a, v)


_NUMBERS = (int, float)


def _comparison(name: str, doc: str):
    ufunc = getattr(B.np, name)

    def fwd(xp, x, y):
        if type(x) in _NUMBERS or type(y) in _NUMBERS:
            x, y = _compared(x, y)
        return (ufunc if xp is B.np else getattr(xp, name))(x, y)
    return _nodiff(name, fwd, doc)


equal = _comparison("equal", "x == y.")
not_equal = _comparison("not_equal", "x != y.")
less = _comparison("less", "x < y.")
less_equal = _comparison("less_equal", "x <= y.")
greater = _comparison("greater", "x > y.")
greater_equal = _comparison("greater_equal", "x >= y.")
logical_and = _nodiff("logical_and", lambda xp, x, y: xp.logical_and(x, y), "x and y.")
logical_or = _nodiff("logical_or", lambda xp, x, y: xp.logical_or(x, y), "x or y.")
logical_xor = _nodiff("logical_xor", lambda xp, x, y: xp.logical_xor(x, y), "x xor y.")
logical_not = _nodiff("logical_not", lambda xp, x: xp.logical_not(x), "not x.")


def _integral(name, f):
    """A forward that refuses float operands: bitwise ops are for integer and bool tensors."""
    def fwd(xp, *xs):
        for v in xs:
            if type(v) is float or getattr(v, "dtype", B.bool_).kind not in "biu":
                dt = getattr(v, "dtype", type(v).__name__)
                raise DTypeError(f"{name}: needs integer or bool operands, got {dt}; use the "
                                 "logical_* functions or comparisons for float tensors")
        return f(xp, *xs)
    return fwd


bitwise_and = _nodiff("bitwise_and", _integral("bitwise_and", lambda xp, x, y: xp.bitwise_and(
    x, y)), "x & y: bitwise on integers, logical on bools.")
bitwise_or = _nodiff("bitwise_or", _integral("bitwise_or", lambda xp, x, y: xp.bitwise_or(
    x, y)), "x | y: bitwise on integers, logical on bools.")
bitwise_xor = _nodiff("bitwise_xor", _integral("bitwise_xor", lambda xp, x, y: xp.bitwise_xor(
    x, y)), "x ^ y: bitwise on integers, logical on bools.")
bitwise_not = _nodiff("bitwise_not", _integral("bitwise_not", lambda xp, x: xp.invert(x)),
                      "~x: bitwise on integers, logical on bools.")
left_shift = _nodiff("left_shift", _no_bools("left_shift", _integral(
    "left_shift", lambda xp, x, y: xp.left_shift(x, y))), "x << y, on integers.")
right_shift = _nodiff("right_shift", _no_bools("right_shift", _integral(
    "right_shift", lambda xp, x, y: xp.right_shift(x, y))), "x >> y (arithmetic), on integers.")
isnan = _nodiff("isnan", lambda xp, x: xp.isnan(x), "True where x is NaN.")
isinf = _nodiff("isinf", lambda xp, x: xp.isinf(x), "True where x is +-Inf.")
isfinite = _nodiff("isfinite", lambda xp, x: xp.isfinite(x), "True where x is finite.")
floor = _stepwise("floor", _ordered("floor", lambda xp, x: xp.floor(x)),
                  "Round down (zero gradient).")
ceil = _stepwise("ceil", _ordered("ceil", lambda xp, x: xp.ceil(x)), "Round up (zero gradient).")
_round = _stepwise("round", _ordered("round", lambda xp, x: xp.round(x)),
                   "Round half to even (zero gradient).")


def round(x, decimals: int = 0):  # noqa: A001  (NumPy's and PyTorch's name)
    """Round half to even, to ``decimals`` places (negative: tens, hundreds, ...) as
    PyTorch's ``round(x, decimals=)``: x·10^d rounded, over 10^d (zero gradient)."""
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        raise TypeError(f"round: decimals must be an int, got {decimals!r}")
    if decimals == 0:
        return _round(x)
    dt = getattr(x, "dtype", None)
    if dt == B.float16 or dt == B.bfloat16:  # in float32, rounded once, as PyTorch's: in
        # float16, x·10^d overflows (123.4 at d = 3) and each step rounds
        return astype(round(astype(x, B.float32), decimals), dt)
    if decimals > 0:
        scale = 10.0 ** decimals
        return divide(_round(multiply(x, scale)), scale)
    scale = 10.0 ** -decimals
    return multiply(_round(divide(x, scale)), scale)
trunc = _stepwise("trunc", _ordered("trunc", lambda xp, x: xp.trunc(x)),
                  "Round toward zero (zero gradient).")


# === more elementwise functions: inverse trig, hyperbolic, logs, pairs ========================
_LN2, _LN10 = math.log(2.0), math.log(10.0)

asin = primitive("asin", lambda xp, x: xp.arcsin(x), lambda g, ans, x: g / sqrt(1 - x * x),
                 kind=_EW, jvp=_J, doc="Inverse sine (arcsin).")
acos = primitive("acos", lambda xp, x: xp.arccos(x), lambda g, ans, x: -g / sqrt(1 - x * x),
                 kind=_EW, jvp=_J, doc="Inverse cosine (arccos).")
atan = primitive("atan", lambda xp, x: xp.arctan(x), lambda g, ans, x: g / (x * x + 1),
                 kind=_EW, jvp=_J, doc="Inverse tangent (arctan).")
def _atan2_recip(y, x):
    """1 / (x² + y²), 0 where that is 0: atan2 has no derivative at the origin, and PyTorch's
    gradient is 0 there (not 0/0's NaN)."""
    r = x * x + y * y
    zero = r == 0
    return where(zero, 0.0, 1 / where(zero, 1.0, r))


atan2 = primitive("atan2", lambda xp, y, x: xp.arctan2(y, x),
                  (lambda g, ans, y, x: g * x * _atan2_recip(y, x),
                   lambda g, ans, y, x: -g * y * _atan2_recip(y, x)),
                  kind=_EW, jvp=_J, doc="The angle of the point (x, y): atan2(y, x).")
sinh = primitive("sinh", lambda xp, x: xp.sinh(x), lambda g, ans, x: g * cosh(x), kind=_EW,
                 jvp=_J, doc="Hyperbolic sine.")
cosh = primitive("cosh", lambda xp, x: xp.cosh(x), lambda g, ans, x: g * sinh(x), kind=_EW,
                 jvp=_J, doc="Hyperbolic cosine.")
asinh = primitive("asinh", lambda xp, x: xp.arcsinh(x), lambda g, ans, x: g / sqrt(x * x + 1),
                  kind=_EW, jvp=_J, doc="Inverse hyperbolic sine.")
acosh = primitive("acosh", lambda xp, x: xp.arccosh(x), lambda g, ans, x: g / sqrt(x * x - 1),
                  kind=_EW, jvp=_J, doc="Inverse hyperbolic cosine (x >= 1).")
atanh = primitive("atanh", lambda xp, x: xp.arctanh(x), lambda g, ans, x: g / (1 - x * x),
                  kind=_EW, jvp=_J, doc="Inverse hyperbolic tangent (|x| < 1).")
log2 = primitive("log2", lambda xp, x: xp.log2(x), lambda g, ans, x: g / (x * _LN2), kind=_EW,
                 jvp=_J, doc="Base-2 logarithm.")
log10 = primitive("log10", lambda xp, x: xp.log10(x), lambda g, ans, x: g / (x * _LN10),
                  kind=_EW, jvp=_J, doc="Base-10 logarithm.")
exp2 = primitive("exp2", lambda xp, x: xp.exp2(x), lambda g, ans, x: g * ans * _LN2,
                 saves="out", kind=_EW, jvp=_J, doc="2**x.")
rsqrt = primitive("rsqrt", lambda xp, x: 1 / xp.sqrt(x),
                  lambda g, ans, x: g * (ans * ans * ans) * -0.5, saves="out", kind=_EW,
                  jvp=_J, doc="1 / sqrt(x).")
reciprocal = primitive("reciprocal", lambda xp, x: 1 / x, lambda g, ans, x: -g * (ans * ans),
                       saves="out", kind=_EW, jvp=_J, doc="1 / x.")


def _over_hypot(v, ans):
    """v / hypot, 0 at the origin (hypot(x, 0) is |x|, whose gradient at 0 is 0), not 0/0's
    NaN, which PyTorch gives there from finite inputs."""
    return v / where(ans == 0, 1, ans)


hypot = primitive("hypot", lambda xp, x, y: xp.hypot(x, y),
                  (lambda g, ans, x, y: g * _over_hypot(x, ans),
                   lambda g, ans, x, y: g * _over_hypot(y, ans)),
                  saves="both", kind=_EW, jvp=_J, doc="sqrt(x**2 + y**2) without overflow.")
copysign = primitive(
    "copysign", lambda xp, x, y: xp.copysign(x, y),
    (lambda g, ans, x, y: g * where(x == 0, 0, ans / where(x == 0, 1, x)),
     lambda g, ans, x, y: g * 0),
    saves="both", kind=_EW, jvp=_J,
    doc="|x| with the sign of y; y gets no gradient (as in PyTorch).")
# d/dx = e**x / (e**x + e**y) = sigmoid(x - y), PyTorch's form: exact where the sum rounds to
# the larger term (exp(x - ans) gives 1, not 1/2, for x = y = 1e38) and 1 for x = inf
_LN2 = math.log(2.0)
def _logaddexp_fwd(xp, x, y):
    """log(e**x + e**y); complex operands (NumPy's ufunc has no complex loop) shifted by the
    larger real part, as PyTorch's complex logaddexp."""
    if getattr(xp.result_type(x, y), "kind", "") != "c":
        return xp.logaddexp(x, y)
    m = xp.maximum(xp.real(x), xp.real(y))
    m = xp.where(xp.isfinite(m), m, 0)
    return m + xp.log(xp.exp(x - m) + xp.exp(y - m))


logaddexp = primitive("logaddexp", _logaddexp_fwd,
                      (lambda g, ans, x, y: g * sigmoid(x - y),
                       lambda g, ans, x, y: g * sigmoid(y - x)),
                      saves="inputs", kind=_EW, jvp=_J, doc="log(e**x + e**y), stable.")
logaddexp2 = primitive(
    "logaddexp2", lambda xp, x, y: xp.logaddexp2(x, y),
    (lambda g, ans, x, y: g * sigmoid((x - y) * _LN2),
     lambda g, ans, x, y: g * sigmoid((y - x) * _LN2)),
    saves="inputs", kind=_EW, jvp=_J, doc="log2(2**x + 2**y), stable.")


def _lerp_fwd(xp, a, b, w):
    # PyTorch's two-sided formula: exact at w = 0 and w = 1
    return xp.where(xp.abs(w) < 0.5, a + w * (b - a), b - (b - a) * (1 - w))


lerp = primitive("lerp", _lerp_fwd,
                 (lambda g, ans, a, b, w: g * (1 - w), lambda g, ans, a, b, w: g * w,
                  lambda g, ans, a, b, w: g * (b - a)),
                 kind=_EW, jvp=_J, doc="start + weight * (end - start).")
fmod = primitive("fmod", _no_bools("fmod", _int_division(
                     "fmod", lambda xp, x, y: xp.fmod(x, y))),
                 (lambda g, ans, x, y: g, lambda g, ans, x, y: -g * trunc(x / y)),
                 kind=_EW, jvp=_J, doc="C's fmod: x - trunc(x / y) * y (the sign of x).")


def _xlogy_fwd(xp, x, y):
    dt = xp.result_type(x, y)
    if dt.kind == "c":  # PyTorch has no complex xlogy; refused, never the real part alone
        raise DTypeError(f"xlogy: complex operands are not supported, got {dt}")
    dt = dt if dt.kind == "f" else B.float64
    safe = xp.asarray(xp.where(x == 0, 1, y), dtype=dt)
    out = xp.where(x == 0, 0, x * xp.log(safe)).astype(dt, copy=False)
    return xp.where(xp.isnan(y), xp.nan, out).astype(dt, copy=False)


def _x_over(x, y):
    """x / y, 0 where x == 0 and y is not NaN: xlogy(0, y) and xlog1py(0, y) are 0 for every
    y, so their y-derivative is 0 there, not 0/0's NaN at y = 0 (PyTorch's); a NaN y, whose
    NaN the forward keeps, keeps it in the gradient too."""
    zero = logical_and(x == 0, y == y)
    return x / where(zero, 1, y)


xlogy = primitive("xlogy", _xlogy_fwd,
                  (lambda g, ans, x, y: where(logical_and(x == 0, y <= 0), 0, _xlogy(g, y)),
                   lambda g, ans, x, y: g * _x_over(x, y)),
                  kind=_EW, jvp=_J, doc="x * log(y), 0 where x == 0 (even if y == 0).")
_xlogy = xlogy
_PI = math.pi


def _sinc_vjp(g, ans, x):
    """sinc x is recomputed from x (the node keeps only x, as PyTorch's, so the output may
    change in place afterwards)."""
    if x.dtype == B.float16:  # in float32, as the forward (pi·x overflows float16 past 20860)
        return astype(_sinc_vjp(astype(g, B.float32), None, astype(x, B.float32)), B.float16)
    if x.dtype == B.float32:  # cos(πx) − sinc x cancels: 1.5 % off at x = 1e-3 in float32,
        x64 = astype(x, B.float64)  # so both terms (sinc too, not the rounded ans) in float64
        return astype(_sinc_vjp(astype(g, B.float64), None, x64), B.float32)
    ans = sinc(x)
    # (cos(πx) − sinc x) / x, by its Taylor series −π²x/3 + π⁴x³/30 for |x| < 1e-3: exact to
    # rounding there (no cancellation), and its own derivative is right at 0 (second order)
    small = abs(x) < 1e-3
    x0 = where(small, x, 0)
    near = x0 * (_PI ** 2 / -3) + x0 * x0 * x0 * (_PI ** 4 / 30)
    far = (cos(x * _PI) - ans) / where(small, 1, x)
    return g * where(small, near, far)


def _sinc_fwd(xp, x):
    if getattr(x, "dtype", None) == B.float16:  # pi·x in float16 overflows: sin(inf) = NaN
        return xp.sinc(x.astype(B.float32)).astype(B.float16)
    return xp.sinc(x)


sinc = primitive("sinc", _sinc_fwd, _sinc_vjp, saves="inputs", kind=_EW, jvp=_J,
                 doc="sin(pi x) / (pi x), 1 at 0 (the normalised sinc).")


def _nan_to_num_fwd(xp, x, nan, posinf, neginf):
    if x.dtype.kind not in "fc":  # complex: each part replaced on its own, as PyTorch's
        return x.copy()
    if x.dtype.itemsize < 4:  # a replacement past float16's range is inf, quietly (PyTorch's)
        with B.np.errstate(over="ignore"):
            return xp.nan_to_num(x, copy=True, nan=nan, posinf=posinf, neginf=neginf)
    return xp.nan_to_num(x, copy=True, nan=nan, posinf=posinf, neginf=neginf)


_nan_to_num = primitive(
    "nan_to_num", _nan_to_num_fwd,
    lambda g, ans, x, nan, posinf, neginf: g * _as(isfinite(x), g),
    kind=_EW, jvp=_J, doc="NaN and +-Inf replaced by finite numbers; they get no gradient.")


def nan_to_num(x, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None):
    """NaN to ``nan``, +Inf to ``posinf``, -Inf to ``neginf`` (None: the dtype's largest and
    smallest finite values, bfloat16's and float16's own too, as PyTorch's)."""
    dt = getattr(x, "dtype", None)
    if dt is not None and dt.itemsize < 4 and B.is_float(dt) and None in (posinf, neginf):
        fi = B.finfo(dt)  # (bfloat16 is worked in float32, whose extremes would round to inf)
        posinf = float(fi.max) if posinf is None else posinf
        neginf = float(fi.min) if neginf is None else neginf
    return _nan_to_num(x, nan=float(nan), posinf=None if posinf is None else float(posinf),
                       neginf=None if neginf is None else float(neginf))


def deg2rad(x):
    """Degrees to radians."""
    return x * (_PI / 180.0)


def rad2deg(x):
    """Radians to degrees."""
    return x * (180.0 / _PI)


def clamp_min(x, min):
    """max(x, min) with clip's gradient rule (passes inside, inclusive)."""
    return clip(x, min, None)


def clamp_max(x, max):
    """min(x, max) with clip's gradient rule."""
    return clip(x, None, max)


def frac(x):
    """The fractional part x - trunc(x) (sign of x); its gradient is 1."""
    return x - trunc(x)


def _isclose_fwd(xp, a, b, rtol, atol, equal_nan):
    """NumPy's isclose; an infinite value is close only to itself, as PyTorch's (NumPy's
    finds inf close to any finite number once a tolerance is infinite)."""
    out = xp.isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)
    if math.isinf(rtol) or math.isinf(atol):
        out = out & ~((xp.isinf(a) | xp.isinf(b)) & (a != b))
    return out


_isclose = primitive("isclose", _isclose_fwd, kind=_EW, promote=False,
                     doc="|a - b| <= atol + rtol * |b|, elementwise.")


def isclose(a, b, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False):
    """True where |a - b| <= atol + rtol * |b| (NaNs equal only with ``equal_nan``)."""
    if rtol < 0 or atol < 0:
        raise ValueError(f"isclose: rtol and atol must be non-negative, got {rtol}, {atol}")
    return _isclose(a, b, rtol=float(rtol), atol=float(atol), equal_nan=bool(equal_nan))


def allclose(a, b, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> bool:
    """True when every pair is close (``isclose``); a Python bool, as in PyTorch."""
    return bool(isclose(a, b, rtol, atol, equal_nan)._data.all())


def _trunc_divide_fwd(xp, x, y):
    if xp.result_type(x, y).kind == "f":
        return xp.trunc(xp.true_divide(x, y))
    _int_divisor("trunc_divide", xp, x, y)
    q = xp.floor_divide(x, y)  # round toward zero: step back up where the signs differ
    return q + ((q * y != x) & ((x < 0) != (y < 0)))


trunc_divide = _stepwise("trunc_divide", _trunc_divide_fwd,
                         "x / y rounded toward zero (zero gradient).", arity=2, promote=True)


def div(input, other, *, rounding_mode: str | None = None):
    """PyTorch's divide: true division, or rounded with ``rounding_mode`` "trunc" / "floor"
    (rounded quotients have zero gradient, as PyTorch's)."""
    if rounding_mode is None:
        return divide(input, other)
    if rounding_mode == "floor":
        return floor_divide(input, other)
    if rounding_mode == "trunc":
        return trunc_divide(input, other)
    raise ValueError(f"divide: rounding_mode must be None, 'trunc' or 'floor', "
                     f"got {rounding_mode!r}")
