"""Special values against PyTorch: every shared elementwise op and activation on NaN, ±inf,
±0.0, subnormals, the float extremes and the op's own boundaries (relu at 0, hardtanh at its
bounds, threshold, softplus's threshold, ...), in float32 and float64, forward and gradient
(backward of a sum and of a random cotangent).

The rule where PyTorch disagrees with itself or with the mathematics: a NaN input never
silently vanishes from the gradient. A piecewise-linear op whose forward passes a NaN through
(relu, relu6, hardtanh, hardsigmoid, threshold, hard/softshrink, clamp) passes the incoming
gradient to it, as its linear piece would; a smooth op's gradient at NaN is NaN. PyTorch's own
answer for the piecewise ops depends on the tensor's length (its vectorised loops give 0, their
scalar tails the incoming gradient), so those NaNs are compared against our rule, not against
PyTorch. Every other place where we keep an answer different from PyTorch's is listed in
``KEPT`` with the reason, and checked there against the value we give.
"""

import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

DTYPES = [np.float32, np.float64]
NAN, INF = math.nan, math.inf


def specials(dt) -> np.ndarray:
    """NaN, ±inf, ±0, ±subnormal, ±tiny, ±max and the boundaries of the ops below."""
    fi = np.finfo(dt)
    sub = fi.smallest_subnormal
    return np.array([NAN, INF, -INF, 0.0, -0.0, sub, -sub, fi.tiny, -fi.tiny, fi.max, -fi.max,
                     1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0, 30.0,
                     100.0, -100.0, 1e-3, -1e-3, 0.25, 1.5, 10.0, 0.7, -17.0, 0.99999],
                    dtype=dt)


PAIR = np.array([NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -1.5])


def _f(mod, name, *a, **k):
    return lambda t: getattr(mod, name)(t, *a, **k)


def _prelu(t):
    return F.prelu(t, ng.tensor(np.array([0.25], t.numpy().dtype)))


# name: (nodegrad's function, PyTorch's function)
UNARY = {
    "relu": (ng.relu, torch.relu),
    "relu6": (F.relu6, TF.relu6),
    "leaky_relu": (_f(F, "leaky_relu", 0.1), _f(TF, "leaky_relu", 0.1)),
    "elu": (F.elu, TF.elu),
    "elu_alpha2": (_f(F, "elu", 2.0), _f(TF, "elu", 2.0)),
    "selu": (F.selu, TF.selu),
    "celu": (_f(F, "celu", 0.5), _f(TF, "celu", 0.5)),
    "gelu": (F.gelu, TF.gelu),
    "gelu_tanh": (_f(F, "gelu", approximate="tanh"), _f(TF, "gelu", approximate="tanh")),
    "silu": (F.silu, TF.silu),
    "mish": (F.mish, TF.mish),
    "softplus": (F.softplus, TF.softplus),
    "softplus_beta2_threshold3": (_f(F, "softplus", 2.0, 3.0), _f(TF, "softplus", 2.0, 3.0)),
    "hardtanh": (F.hardtanh, TF.hardtanh),
    "hardtanh_m2_3": (_f(F, "hardtanh", -2.0, 3.0), _f(TF, "hardtanh", -2.0, 3.0)),
    "hardsigmoid": (F.hardsigmoid, TF.hardsigmoid),
    "hardswish": (F.hardswish, TF.hardswish),
    "hardshrink": (F.hardshrink, TF.hardshrink),
    "softshrink": (F.softshrink, TF.softshrink),
    "tanhshrink": (F.tanhshrink, TF.tanhshrink),
    "threshold": (_f(F, "threshold", 0.5, -7.0), _f(TF, "threshold", 0.5, -7.0)),
    "logsigmoid": (F.logsigmoid, TF.logsigmoid),
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "tanh": (F.tanh, torch.tanh),
    "softsign": (F.softsign, TF.softsign),
    "rrelu_eval": (F.rrelu, _f(TF, "rrelu", training=False)),
    "prelu": (_prelu, lambda t: TF.prelu(t, torch.tensor([0.25], dtype=t.dtype))),
    "abs": (ng.abs, torch.abs),
    "sign": (ng.sign, torch.sign),
    "sqrt": (ng.sqrt, torch.sqrt),
    "rsqrt": (ng.rsqrt, torch.rsqrt),
    "log": (ng.log, torch.log),
    "log1p": (ng.log1p, torch.log1p),
    "log2": (ng.log2, torch.log2),
    "exp": (ng.exp, torch.exp),
    "exp2": (ng.exp2, torch.exp2),
    "expm1": (ng.expm1, torch.expm1),
    "square": (ng.square, torch.square),
    "reciprocal": (ng.reciprocal, torch.reciprocal),
    "sin": (ng.sin, torch.sin),
    "tanh_": (ng.tanh, torch.tanh),
    "asin": (ng.asin, torch.asin),
    "atanh": (ng.atanh, torch.atanh),
    "acosh": (ng.acosh, torch.acosh),
    "erf": (ng.erf, torch.erf),
    "erfc": (ng.special.erfc, torch.special.erfc),
    "erfinv": (ng.special.erfinv, torch.special.erfinv),
    "sinc": (ng.sinc, torch.sinc),
    "lgamma": (ng.lgamma, torch.lgamma),
    "digamma": (ng.digamma, torch.digamma),
    "logit": (ng.logit, torch.logit),
    "logit_eps": (_f(ng, "logit", eps=1e-6), _f(torch, "logit", eps=1e-6)),
    "frac": (ng.frac, torch.frac),
    "trunc": (ng.trunc, torch.trunc),
    "nan_to_num": (ng.nan_to_num, torch.nan_to_num),
    "clamp": (lambda t: ng.clamp(t, -1.0, 1.0), lambda t: torch.clamp(t, -1.0, 1.0)),
    "clamp_nan_min": (lambda t: ng.clamp(t, min=NAN), lambda t: torch.clamp(t, min=NAN)),
    "clamp_nan_max": (lambda t: ng.clamp(t, max=NAN), lambda t: torch.clamp(t, max=NAN)),
    "pow_0": (lambda t: t ** 0, lambda t: t ** 0),
    "pow_2": (lambda t: t ** 2, lambda t: t ** 2),
    "pow_3": (lambda t: t ** 3, lambda t: t ** 3),
    "pow_-1": (lambda t: t ** -1, lambda t: t ** -1),
    "pow_0.5": (lambda t: t ** 0.5, lambda t: t ** 0.5),
    "pow_-0.5": (lambda t: t ** -0.5, lambda t: t ** -0.5),
    "pow_1.5": (lambda t: t ** 1.5, lambda t: t ** 1.5),
    "rpow_2": (lambda t: 2.0 ** t, lambda t: 2.0 ** t),
    "rpow_0": (lambda t: 0.0 ** t, lambda t: 0.0 ** t),
    "rpow_-2": (lambda t: (-2.0) ** t, lambda t: (-2.0) ** t),
    "xlogy_self": (lambda t: ng.xlogy(t, t), lambda t: torch.xlogy(t, t)),
    "glu": (lambda t: F.glu(t.reshape(2, -1), 0), lambda t: TF.glu(t.reshape(2, -1), 0)),
}

BINARY = {
    "pow": (lambda a, b: a ** b, lambda a, b: a ** b),
    "atan2": (ng.atan2, torch.atan2),
    "hypot": (ng.hypot, torch.hypot),
    "fmod": (ng.fmod, torch.fmod),
    "remainder": (ng.remainder, torch.remainder),
    "maximum": (ng.maximum, torch.maximum),
    "minimum": (ng.minimum, torch.minimum),
    "fmax": (ng.fmax, torch.fmax),
    "fmin": (ng.fmin, torch.fmin),
    "copysign": (ng.copysign, torch.copysign),
    "xlogy": (ng.xlogy, torch.xlogy),
    "xlog1py": (ng.special.xlog1py, torch.special.xlog1py),
    "logaddexp": (ng.logaddexp, torch.logaddexp),
    "logaddexp2": (ng.logaddexp2, torch.logaddexp2),
    "divide": (lambda a, b: a / b, lambda a, b: a / b),
    "multiply": (lambda a, b: a * b, lambda a, b: a * b),
    "where": (lambda a, b: ng.where(a > b, a, b), lambda a, b: torch.where(a > b, a, b)),
    "clamp_min_tensor": (lambda a, b: ng.clamp(a, min=b), lambda a, b: torch.clamp(a, min=b)),
    "clamp_max_tensor": (lambda a, b: ng.clamp(a, max=b), lambda a, b: torch.clamp(a, max=b)),
    "lerp": (lambda a, b: ng.lerp(a, b, 0.3), lambda a, b: torch.lerp(a, b, 0.3)),
}

# Ops whose every value is one rounding of the same formula in both (or no rounding): compared
# bit for bit, signed zeros included.
EXACT = {"relu", "relu6", "hardtanh", "hardtanh_m2_3", "threshold", "hardshrink", "abs", "clamp",
         "clamp_nan_min", "clamp_nan_max", "trunc", "frac", "nan_to_num", "leaky_relu", "prelu",
         "maximum", "minimum", "fmax", "fmin", "copysign", "where", "clamp_min_tensor",
         "clamp_max_tensor", "pow_0", "square", "pow_2", "multiply", "divide", "softshrink"}

# Piecewise-linear ops whose NaN input gets the incoming gradient (the rule above); PyTorch's
# answer there depends on the tensor's length.
NAN_PASSES = {"relu6": 1.0, "hardtanh": 1.0, "hardtanh_m2_3": 1.0, "hardshrink": 1.0,
              "softshrink": 1.0, "hardsigmoid": 1.0 / 6.0, "clamp": 1.0}
# Smooth ops (and hardswish, whose middle piece is x(x + 3)/6) with a NaN gradient at NaN, as
# PyTorch's vectorised loops; its scalar tails give the linear piece's slope instead.
NAN_GRAD = {"elu", "elu_alpha2", "selu", "celu", "hardswish"}

# Inputs where we keep an answer other than PyTorch's: op -> [(input, (forward, gradient of
# the sum), why)]; a None part is compared with PyTorch as usual. "max" is the dtype's largest.
KEPT = {
    "gelu": [(INF, (INF, None), "x Phi(x) -> inf; PyTorch's vectorised erf form gives NaN"),
             ("max", ("max", None), "finite: x Phi(x) = x; PyTorch overflows 0.5 x (1 + erf)"),
             (-3.0, ("gelu(-3)", None), "float32: ours is x Phi(x) to 2 ulp, PyTorch's 1e-4 off"),
             (-6.0, (None, "rand"), "float32: 1 + erf(x/sqrt 2) cancels in both, unlike")],
    "gelu_tanh": [(INF, (None, 1.0), "the tanh form is x beyond |x| = 10: slope 1, not NaN"),
                  (-INF, (None, 0.0), "slope 0 (the form is 0 there), not NaN"),
                  ("max", (None, 1.0), "slope 1 (x^3 overflows in PyTorch's rule: NaN)"),
                  ("-max", (None, 0.0), "slope 0, as at -inf")],
    "hardswish": [(-INF, (0.0, None), "0 from -3 down, as the definition; PyTorch: -inf * 0"),
                  ("max", ("max", None), "x from 3 up; PyTorch overflows x (x + 3) / 6")],
    "hardsigmoid": [("any", (None, "1/6"), "float64: PyTorch's slope is float32's 1/6")],
    "abs": [(NAN, (None, NAN), "sign(NaN) is NaN here (PyTorch's sign gives 0): a NaN input "
                               "shows in abs's gradient rather than vanishing")],
    "sign": [(NAN, (NAN, None), "NumPy's sign(NaN) = NaN: the NaN propagates (PyTorch: 0)")],
    "logit_eps": [(NAN, (None, NAN), "NaN propagates; PyTorch's vectorised loop gives 0, its "
                                     "scalar one NaN")],
    "sinc": [(1e-3, (None, "series"), "float32: PyTorch's (cos - sinc)/x cancels (1.4 % off)"),
             (-1e-3, (None, "series"), "the same, mirrored"),
             ("max", (None, "tiny"), "finite x: a finite slope; PyTorch's rule gives NaN")],
    "digamma": [(lambda x: (x < 0) & (x == np.floor(x)), (None, INF),
                 "trigamma has a double pole at each negative integer (every float beyond "
                 "2**53 is one): +inf, where PyTorch gives a large finite number or NaN"),
                (-INF, (None, INF), "SciPy's trigamma(-inf) = inf; PyTorch gives NaN"),
                ("any", (None, "trigamma"), "float64: PyTorch's trigamma is 5e-10 off at 1 "
                                            "(pi²/6), SciPy's exact to rounding")],
    "pow_0.5": [(-INF, (None, 0.0), "IEEE pow(-inf, 0.5) = inf and its slope 0.5 inf^-0.5 = 0;"
                                    " PyTorch takes sqrt for **0.5 (NaN)"),
                (-0.0, (None, INF), "IEEE pow(-0, -0.5) = +inf; PyTorch's 1/sqrt(-0) = -inf")],
    "pow_-0.5": [(-INF, (0.0, None), "IEEE pow(-inf, -0.5) = 0; PyTorch's rsqrt(-inf) = NaN"),
                 (-0.0, (INF, None), "IEEE pow(-0, -0.5) = +inf; PyTorch's rsqrt(-0) = -inf")],
    "silu": [(-INF, (-0.0, 0.0), "the limits x sigmoid(x) -> 0 and slope -> 0; PyTorch's "
                                 "x / (1 + e^-x) is -inf / inf = NaN, its slope NaN"),
             (INF, (None, 1.0), "slope 1, the limit; PyTorch's x (1 - s) is inf * 0 = NaN")],
    "mish": [(-INF, (-0.0, 0.0), "as silu: the limits, where PyTorch's -inf * 0 gives NaN"),
             (INF, (None, 1.0), "slope 1, the limit; PyTorch: NaN")],
    "xlogy_self": [(0.0, (None, 0.0), "d/dx is PyTorch's 0 at x = 0, y <= 0 and d/dy = 0 (the "
                                      "function is 0 along y at x = 0); PyTorch's x/y: NaN"),
                   (-0.0, (None, 0.0), "the same at -0.0"),
                   ("max", (None, "rand"), "g (x / y), not PyTorch's (g x) / y: no overflow"),
                   (lambda x: (x != 0) & (np.abs(x) < np.finfo(x.dtype).tiny), (None, "rand"),
                    "subnormal x: g x rounds to a few bits in PyTorch's (g x) / y")],
}
def _either_nan(a, b, dt):
    return np.isnan(a) | np.isnan(b)


KEPT_BINARY = {
    # PyTorch gives the whole gradient to both operands when either is NaN (and to both at a
    # tie of NaNs); ours goes to the NaN operand (the one that is the result), halves at a NaN
    # tie, as at every other tie: the sum of the two gradients is g, not 2g
    "maximum": _either_nan, "minimum": _either_nan,
    # a NaN tensor bound is clamp's output: its gradient goes to the bound (maximum's rule) and
    # a NaN x passes its gradient (relu's); PyTorch gives 0 to both
    "clamp_min_tensor": _either_nan, "clamp_max_tensor": _either_nan,
    # float32 subnormal divisors: C's fmod is exact there; PyTorch gives NaN
    "fmod": lambda a, b, dt: (b != 0) & (np.abs(b) < np.finfo(dt).tiny),
    "remainder": lambda a, b, dt: (b != 0) & (np.abs(b) < np.finfo(dt).tiny),
    # log2(2^-1 + 2^-1) = 0 exactly (ours); PyTorch gives -1.06e-8 (float32), -4.8e-17
    "logaddexp2": lambda a, b, dt: (a == -1.0) & (b == -1.0),
    # at the origin hypot's gradient is 0 (hypot(x, 0) = |x|, abs's gradient at 0); PyTorch's
    # x / hypot is 0/0 = NaN from finite inputs
    "hypot": lambda a, b, dt: (a == 0) & (b == 0),
    # xlogy(0, y) = 0 for every y, so d/dy = 0 there; PyTorch's x / y is NaN at y = 0
    "xlogy": lambda a, b, dt: (a == 0) & (b == 0),
    "xlog1py": lambda a, b, dt: (a == 0) & (b == -1),
}


def _run(fn, xs, cot):
    out = fn(*xs)
    out.backward(cot)
    return out, [x.grad for x in xs]


def _both(ours, theirs, inputs, cot):
    """Forward values and input gradients of ``ours`` (nodegrad) and ``theirs`` (PyTorch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            xs = [ng.tensor(a, requires_grad=True) for a in inputs]
            y, gs = _run(ours, xs, ng.tensor(cot))
        ts = [torch.tensor(a, requires_grad=True) for a in inputs]
        yt, gts = _run(theirs, ts, torch.tensor(cot))
    as_np = [None if g is None else g.numpy() for g in gs]
    as_np_t = [None if g is None else g.numpy() for g in gts]
    return y.numpy(), yt.detach().numpy(), as_np, as_np_t


def _tol(dt):
    """Relative error of a few ulp, and an absolute one of two: a value that cancels (tanh's
    1 - ans², gelu's 1 + tanh near -1) is exact only to its inputs' rounding."""
    eps = float(np.finfo(dt).eps)
    return {"rtol": 2e-5 if dt == np.float32 else 1e-11, "atol": 2 * eps}


# Signed zeros compared in forward values only, and not where IEEE leaves the sign open (the
# larger of -0.0 and 0.0) or NumPy's maximum(x, 0), relu's form, differs (relu(-0.0) = 0.0;
# PyTorch's clamp keeps -0.0). A gradient's zero sign follows the order of a product with 0.
NO_ZERO_SIGN = {"relu", "fmax", "fmin", "maximum", "minimum", "clamp_min_tensor",
                "clamp_max_tensor"}


def _close(a, b, dt, exact, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, (what, a.dtype, b.dtype)
    if exact:
        np.testing.assert_array_equal(a, b, err_msg=what)
        if "gradient" in what or what.split()[0] in NO_ZERO_SIGN:
            return
        same = np.isnan(a) | (np.signbit(a) == np.signbit(b))
        assert same.all(), (what, a[~same], b[~same])
    else:
        np.testing.assert_allclose(a, b, equal_nan=True, err_msg=what, **_tol(dt))


def _kept_mask(name, x, dt):
    """Positions of ``x`` where ``KEPT`` (or the NaN rule) says ours differs from PyTorch's."""
    big = np.finfo(dt).max
    skip = np.zeros(x.shape, bool)
    if name in NAN_PASSES or name in NAN_GRAD:
        skip |= np.isnan(x)
    for v, _, _ in KEPT.get(name, []):
        if callable(v):
            with np.errstate(invalid="ignore"):
                skip |= v(x)
            continue
        if v == "any":
            return np.ones(x.shape, bool)
        if v in ("max", "-max"):
            skip |= np.abs(x) == big
        else:
            v = dt(v)
            skip |= (x == v) & (np.signbit(x) == np.signbit(v)) | (np.isnan(x) & np.isnan(v))
    return skip


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_matches_pytorch_on_special_values(name, dt):
    ours, theirs = UNARY[name]
    x = specials(dt)
    rng = np.random.default_rng(0)
    for cot in (np.ones(x.size, dt), rng.uniform(-2, 2, x.size).astype(dt)):
        if name == "glu":
            cot = cot[: x.size // 2].reshape(1, -1)
        y, yt, (g,), (gt,) = _both(ours, theirs, [x], cot)
        keep = ~_kept_mask(name, x, dt)
        if name == "glu":
            _close(y, yt, dt, False, "glu forward")
            _close(g, gt, dt, False, "glu gradient")
            continue
        exact = name in EXACT
        _close(y[keep], yt[keep], dt, exact, f"{name} forward")
        _close(g[keep], gt[keep], dt, exact, f"{name} gradient")


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_matches_pytorch_on_special_pairs(name, dt):
    ours, theirs = BINARY[name]
    a, b = (v.ravel().astype(dt) for v in np.meshgrid(PAIR, PAIR, indexing="ij"))
    if dt == np.float32:  # a subnormal divisor, where float32 libraries differ
        a, b = np.append(a, [1.0, -2.0]).astype(dt), np.append(b, [1e-40, 1e-40]).astype(dt)
    rng = np.random.default_rng(1)
    kept = KEPT_BINARY.get(name)
    keep = np.ones(a.shape, bool) if kept is None else ~kept(a, b, dt)
    for cot in (np.ones(a.size, dt), rng.uniform(-2, 2, a.size).astype(dt)):
        y, yt, gs, gts = _both(ours, theirs, [a, b], cot)
        exact = name in EXACT
        _close(y[keep], yt[keep], dt, exact, f"{name} forward")
        for i, (g, gt) in enumerate(zip(gs, gts)):
            if g is None or gt is None:  # no gradient on one side: zero on the other
                assert not np.any(g if g is not None else gt), (name, i)
                continue
            _close(g[keep], gt[keep], dt, exact, f"{name} gradient {i}")


# --- the answers we keep, checked as ours -----------------------------------------------------
def _grad_of_sum(fn, x):
    t = ng.tensor(x, requires_grad=True)
    with np.errstate(all="ignore"):
        y = fn(t)
        y.sum().backward()
    return y.numpy(), t.grad.numpy()


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", sorted(NAN_PASSES))
def test_piecewise_linear_ops_pass_the_gradient_to_a_nan_input(name, dt):
    x = np.array([NAN, 0.25, NAN], dt)
    y, g = _grad_of_sum(UNARY[name][0], x)
    assert np.isnan(y[[0, 2]]).all()
    assert g[0] == g[2] == np.array(NAN_PASSES[name], dt), (name, g)
    # PyTorch's own formula (its scalar loop, used for tensors shorter than one vector) agrees
    if name not in ("hardsigmoid", "clamp"):  # PyTorch's give 0 in every loop
        t = torch.tensor(x[:1], requires_grad=True)
        UNARY[name][1](t).sum().backward()
        assert t.grad.item() == g[0]


@pytest.mark.parametrize("name", ["relu", "threshold"])
def test_relu_and_threshold_keep_a_nan_and_its_gradient_like_pytorch_at_every_length(name):
    ours, theirs = UNARY[name]
    for n in (1, 7, 64, 3000):  # scalar tails, vector loops, numba's kernel (above 2048)
        x = np.linspace(-2, 2, n)
        x[:: max(1, n // 5)] = NAN
        y, yt, (g,), (gt,) = _both(ours, theirs, [x], np.ones(n))
        np.testing.assert_array_equal(y, yt)
        np.testing.assert_array_equal(g, gt)
        assert (g[np.isnan(x)] == 1).all()


@pytest.mark.parametrize("name", sorted(NAN_GRAD))
def test_smooth_activations_give_a_nan_gradient_at_nan(name):
    _, g = _grad_of_sum(UNARY[name][0], np.array([NAN, -1.0, 1.0]))
    assert np.isnan(g[0]) and np.isfinite(g[1:]).all()


def test_clamp_nan_bounds_follow_the_nan():
    """A NaN bound's gradient goes to the bound (the NaN is the output), a NaN x's to x."""
    x = ng.tensor([NAN, 1.0, 5.0], requires_grad=True)
    lo = ng.tensor([0.0, NAN, 0.0], requires_grad=True)
    hi = ng.tensor([2.0, 2.0, NAN], requires_grad=True)
    y = ng.clamp(x, lo, hi)
    assert np.isnan(y.numpy()).all()
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(lo.grad.numpy(), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(hi.grad.numpy(), [0.0, 0.0, 1.0])
    # a Python NaN bound: NaN out, no gradient to x (PyTorch's)
    _, g = _grad_of_sum(lambda t: ng.clamp(t, min=NAN), np.array([1.0, NAN]))
    np.testing.assert_array_equal(g, [0.0, 0.0])


def test_hypot_xlogy_and_xlog1py_have_no_nan_gradient_from_finite_inputs():
    a = ng.tensor(np.array([0.0, -0.0, 3.0]), requires_grad=True)
    b = ng.tensor(np.array([0.0, 0.0, 4.0]), requires_grad=True)
    ng.hypot(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 0.0, 0.6])
    np.testing.assert_array_equal(b.grad.numpy(), [0.0, 0.0, 0.8])
    for f, pole in ((ng.xlogy, 0.0), (ng.special.xlog1py, -1.0)):
        y = ng.tensor([pole, 1.0, NAN], requires_grad=True)
        f(ng.tensor([0.0, 0.0, 0.0]), y).sum().backward()
        np.testing.assert_array_equal(y.grad.numpy(), [0.0, 0.0, NAN])  # a NaN y stays
        assert ng.gradcheck(lambda p, q, f=f: f(p, q), np.array([0.5, 2.0]),
                            np.array([1.5, 3.0]), order=2)


def test_maximum_gives_the_gradient_to_the_nan_operand():
    a = ng.tensor([NAN, 1.0, NAN], requires_grad=True)
    b = ng.tensor([1.0, NAN, NAN], requires_grad=True)
    ng.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(b.grad.numpy(), [0.0, 1.0, 0.5])


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
def test_kept_answers_are_ours(dt):
    big = np.finfo(dt).max
    with np.errstate(all="ignore"):
        y, g = _grad_of_sum(F.gelu, np.array([INF, big], dt))
        assert y[0] == INF and y[1] == big
        y, g = _grad_of_sum(_f(F, "gelu", approximate="tanh"), np.array([INF, -INF, big, -big],
                                                                         dt))
        np.testing.assert_array_equal(g, [1.0, 0.0, 1.0, 0.0])
        for f in (F.silu, F.mish):
            y, g = _grad_of_sum(f, np.array([-INF, INF, big, -big], dt))
            np.testing.assert_array_equal(y, [-0.0, INF, big, -0.0])
            assert np.signbit(y[0]) and np.signbit(y[3])
            np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 0.0])
        y, _ = _grad_of_sum(F.hardswish, np.array([-INF, big], dt))
        np.testing.assert_array_equal(y, [0.0, big])
        _, g = _grad_of_sum(F.hardsigmoid, np.array([0.0], dt))
        assert g[0] == dt(1.0) / dt(6.0)
        _, g = _grad_of_sum(ng.abs, np.array([NAN], dt))
        assert np.isnan(g[0])
        assert np.isnan(ng.sign(ng.tensor(np.array([NAN], dt))).numpy()[0])
        _, g = _grad_of_sum(_f(ng, "logit", eps=1e-6), np.array([NAN], dt))
        assert np.isnan(g[0])
        _, g = _grad_of_sum(ng.digamma, np.array([-1.0, -2.0, -INF], dt))
        assert (g == INF).all()
        _, g = _grad_of_sum(lambda t: t ** 0.5, np.array([-INF, -0.0], dt))
        np.testing.assert_array_equal(g, [0.0, INF])
        y, _ = _grad_of_sum(lambda t: t ** -0.5, np.array([-INF, -0.0], dt))
        np.testing.assert_array_equal(y, [0.0, INF])
        if dt == np.float32:  # computed in float64; float64's pi x overflows (NaN, as PyTorch)
            _, g = _grad_of_sum(ng.sinc, np.array([big], dt))
            assert np.isfinite(g).all()


def test_gelu_and_sinc_are_closer_than_pytorch_in_float32():
    y, _ = _grad_of_sum(F.gelu, np.array([-3.0], np.float32))
    exact = -3.0 * 0.5 * math.erfc(3.0 / math.sqrt(2.0))
    assert abs(y[0] - exact) <= 16 * abs(np.spacing(np.float32(exact)))  # PyTorch: 1100 ulp
    _, g = _grad_of_sum(ng.sinc, np.array([1e-3], np.float32))
    x = float(np.float32(1e-3))
    exact = (math.cos(math.pi * x) - math.sin(math.pi * x) / (math.pi * x)) / x
    assert abs(g[0] - exact) <= 1e-6 * abs(exact)


def test_expm1_gradient_keeps_its_digits_near_minus_one():
    """d/dx expm1 = e**x from x (elu, selu and celu's negative branch): ans + 1 would round
    e**-17 to 5.96e-8 in float32 (45 % off); PyTorch's elu gradient is e**x too."""
    x = np.array([-17.0, -20.0, -6.0], np.float32)
    _, g = _grad_of_sum(ng.expm1, x)
    np.testing.assert_allclose(g, np.exp(x.astype(np.float64)), rtol=1e-6)
    _, g = _grad_of_sum(F.elu, x)
    t = torch.tensor(x, requires_grad=True)
    TF.elu(t).sum().backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)


# --- every form of relu agrees: eager, numba's kernels, the fused linear layer, jit -----------
def _relu_input(n, dt):
    x = np.random.default_rng(2).standard_normal(n).astype(dt)
    x[::7] = NAN
    x[1:5] = [0.0, -0.0, INF, -INF]
    return x


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("n", [12, 4096])
def test_relu_nan_gradient_in_every_form(n, dt):
    pytest.importorskip("numba")
    x = _relu_input(n, dt)
    c = np.random.default_rng(3).standard_normal(n).astype(dt)
    xt = torch.tensor(x, requires_grad=True)
    (torch.relu(xt) * torch.tensor(c)).sum().backward()
    want = xt.grad.numpy()

    def loss(t):
        return (ng.relu(t) * ng.tensor(c)).sum()

    for fuse in (False, True):
        step = ng.jit(ng.grad(loss), fuse=fuse)
        for _ in range(3):  # trace, then replays
            np.testing.assert_array_equal(step(ng.tensor(x)).numpy(), want)
    np.testing.assert_array_equal(ng.grad(loss)(ng.tensor(x)).numpy(), want)
    m = x.reshape(-1, 4)  # a Fortran-ordered input: the layout-copying path
    mt = ng.tensor(np.asfortranarray(m), requires_grad=True)
    (ng.relu(mt) * ng.tensor(c.reshape(m.shape))).sum().backward()
    np.testing.assert_array_equal(mt.grad.numpy(), want.reshape(m.shape))


@pytest.mark.parametrize("width", [3, 700])
def test_fused_linear_relu_passes_the_gradient_at_nan(width):
    from nodegrad import nn

    rng = np.random.default_rng(4)
    ng.manual_seed(4)  # the same weights whatever ran before
    lin = nn.Linear(5, width)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    x[2] = NAN
    xo = ng.tensor(x, requires_grad=True)
    nn.Sequential(lin, nn.ReLU())(xo).sum().backward()
    ref = torch.nn.Linear(5, width)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(lin.weight.numpy()))
        ref.bias.copy_(torch.tensor(lin.bias.numpy()))
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(ref(xt)).sum().backward()
    # each input gradient sums `width` float32 products in another order than PyTorch's: a
    # sum that cancels to near 0 keeps an absolute error of about eps * width * |w|
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-5,
                               atol=1e-6 * max(1, width // 16), equal_nan=True)
    np.testing.assert_allclose(lin.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=1e-4,
                               atol=1e-5, equal_nan=True)
    assert np.isnan(lin.weight.grad.numpy()).any()  # the NaN row reaches the weights


@pytest.mark.parametrize("name", ["relu6", "hardtanh", "threshold", "hardshrink", "softshrink",
                                  "hardsigmoid", "clamp", "elu", "leaky_relu"])
def test_jit_replay_matches_eager_at_special_values(name):
    x = specials(np.float64)
    fn = UNARY[name][0]

    def loss(t):
        return fn(t).sum()

    with np.errstate(all="ignore"):
        want = ng.grad(loss)(ng.tensor(x)).numpy()
        for fuse in (False, True):
            step = ng.jit(ng.grad(loss), fuse=fuse)
            for _ in range(2):
                np.testing.assert_array_equal(step(ng.tensor(x)).numpy(), want)
