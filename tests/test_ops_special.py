"""Special functions, integer and float arithmetic and ``nodegrad.special`` against PyTorch:
values in float64 and float32 (dtype kept), gradients (first and second order), the edge values
PyTorch documents (poles, +-1 of erfinv, logit's clamp, NaN rules of fmax/fmin), integer ops on
negatives and zeros, the errors that name the op, and the functions under jit, vmap and the
stand-in device. The op matrix (``_opcases_special``) adds gradcheck, jvp and vmap per layout."""

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
TS = torch.special

INF, NAN = math.inf, math.nan
TOL = {np.float32: {"atol": 1e-5, "rtol": 1e-4}, np.float64: {"atol": 1e-10, "rtol": 1e-8}}


def same(got, want, rtol=1e-12, atol=0.0):
    """nodegrad's tensor equals torch's: dtype, shape, NaN and infinities where they are."""
    want_np = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert str(got.dtype) == str(want_np.dtype), (got.dtype, want_np.dtype)
    assert got.shape == want_np.shape
    np.testing.assert_allclose(got.numpy(), want_np, rtol=rtol, atol=atol, equal_nan=True)


def compare(f, tf, *arrays, dtype=np.float64, **tol):
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    compare_with_torch(f, tf, *arrays, **(tol or TOL[dtype]))


# --- unary special functions: values and gradients against torch ------------------------------
GRID = np.array([-3.7, -2.5, -1.5, -0.6, -0.25, 0.0, 0.3, 0.5, 1.0, 1.7, 2.0, 3.5, 6.0])
UNIT = np.array([-0.99, -0.7, -0.3, 0.0, 0.2, 0.6, 0.95])
PROB = np.array([0.01, 0.2, 0.5, 0.8, 0.99])
POS = np.array([0.05, 0.3, 1.0, 2.5, 7.0, 30.0])
UNARY = [  # (name, nodegrad, torch, values)
    ("lgamma", ng.lgamma, torch.lgamma, GRID),
    ("digamma", ng.digamma, torch.digamma, GRID),
    ("trigamma", lambda x: ng.polygamma(1, x), lambda t: torch.polygamma(1, t), GRID),
    ("polygamma2", lambda x: ng.polygamma(2, x), lambda t: torch.polygamma(2, t), POS),
    ("polygamma0", lambda x: ng.polygamma(0, x), lambda t: torch.polygamma(0, t), POS),
    ("mvlgamma", lambda x: ng.mvlgamma(x, 4), lambda t: torch.mvlgamma(t, 4), POS + 1.6),
    ("erfc", ng.erfc, torch.erfc, GRID),
    ("erfinv", ng.erfinv, torch.erfinv, UNIT),
    ("erfcx", ng.erfcx, TS.erfcx, GRID),
    ("i0", ng.i0, torch.i0, GRID),
    ("i0e", ng.i0e, TS.i0e, GRID[GRID != 0]),
    ("i1", ng.i1, TS.i1, GRID),
    ("i1e", ng.i1e, TS.i1e, GRID),
    ("ndtr", ng.ndtr, TS.ndtr, GRID),
    ("ndtri", ng.ndtri, TS.ndtri, PROB),
    ("log_ndtr", ng.log_ndtr, TS.log_ndtr, np.concatenate([GRID, [-20.0, -9.0, 12.0]])),
    ("logit", ng.logit, torch.logit, PROB),
    ("entr", ng.entr, TS.entr, POS),
]
UNARY_IDS = [u[0] for u in UNARY]


@pytest.mark.parametrize(("name", "f", "tf", "x"), UNARY, ids=UNARY_IDS)
def test_unary_values_and_gradients_match_torch_in_float64(name, f, tf, x):
    compare(f, tf, x)


@pytest.mark.parametrize(("name", "f", "tf", "x"), UNARY, ids=UNARY_IDS)
def test_unary_float32_stays_float32_and_matches_torch(name, f, tf, x):
    compare(f, tf, x, dtype=np.float32, rtol=2e-5, atol=2e-5)
    assert f(ng.tensor(x.astype(np.float32))).dtype == np.float32


@pytest.mark.parametrize(("name", "f", "tf", "x"), UNARY, ids=UNARY_IDS)
def test_unary_gradcheck(name, f, tf, x):
    keep = np.abs(x - np.round(x)) > 0.05 if name in ("lgamma", "digamma", "trigamma") else (
        x != 0)  # finite differences: off the poles of the gamma family and the kinks at 0
    assert ng.gradcheck(f, x[keep & (np.abs(x) < 7)] if name != "mvlgamma" else x)


SECOND = ["lgamma", "digamma", "trigamma", "erfinv", "erfcx", "i1", "i1e", "i0e", "ndtri",
          "log_ndtr", "logit", "entr"]


@pytest.mark.parametrize("name", SECOND)
def test_second_derivatives_match_torch(name):
    _, f, tf, x = UNARY[UNARY_IDS.index(name)]
    x = x[x != 0]
    xt = ng.tensor(x)
    gx = ng.grad(lambda a: f(a).sum())(xt)
    hx = ng.grad(lambda a: ng.grad(lambda b: f(b).sum())(a).sum())(xt)
    t = torch.tensor(x, requires_grad=True)
    (tg,) = torch.autograd.grad(tf(t).sum(), t, create_graph=True)
    (th,) = torch.autograd.grad(tg.sum(), t)
    same(gx, tg, rtol=1e-8)
    same(hx, th, rtol=1e-7, atol=1e-10)


def test_integer_inputs_give_float32():
    i = ng.tensor(np.array([1, 2, 5]))
    ti = torch.tensor([1, 2, 5])
    for f, tf in [(ng.lgamma, torch.lgamma), (ng.digamma, torch.digamma),
                  (lambda x: ng.polygamma(2, x), lambda t: torch.polygamma(2, t)),
                  (ng.erfinv, torch.erfinv), (ng.i0, torch.i0), (ng.logit, torch.logit),
                  (ng.erfc, torch.erfc), (ng.ndtr, TS.ndtr), (ng.entr, TS.entr),
                  (lambda x: ng.mvlgamma(x, 2), lambda t: torch.mvlgamma(t, 2)),
                  (lambda x: ng.xlog1py(x, x), lambda t: TS.xlog1py(t, t)),
                  (lambda x: ng.igamma(x, x), lambda t: torch.igamma(t.float(), t.float()))]:
        same(f(i), tf(ti), rtol=1e-6)


# --- edge values ------------------------------------------------------------------------------
EDGES = np.array([-INF, -3.0, -2.0, -1.0, -0.0, 0.0, 1.0, 2.0, INF, NAN])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gamma_poles_give_torchs_inf_and_nan(dtype):
    x = EDGES.astype(dtype)
    same(ng.lgamma(ng.tensor(x)), torch.lgamma(torch.tensor(x)), rtol=1e-6)
    same(ng.digamma(ng.tensor(x)), torch.digamma(torch.tensor(x)), rtol=1e-6)
    assert ng.lgamma(ng.tensor(x)).numpy()[0] == INF  # lgamma(-inf) = +inf, as C and torch
    np.testing.assert_array_equal(ng.digamma(ng.tensor(x)).numpy()[3:6], [NAN, INF, -INF])
    # the gradient of lgamma is digamma, poles included
    same(ng.grad(lambda t: ng.lgamma(t).sum())(ng.tensor(x[1:])),
         ng.digamma(ng.tensor(x[1:])))


def test_inverse_functions_at_the_ends_of_their_domain():
    x = np.array([-1.5, -1.0, -0.0, 0.0, 1.0, 1.5, NAN])
    same(ng.erfinv(ng.tensor(x)), torch.erfinv(torch.tensor(x)))
    np.testing.assert_array_equal(ng.erfinv(ng.tensor(x)).numpy()[1:5], [-INF, -0.0, 0.0, INF])
    p = np.array([-0.5, 0.0, 0.5, 1.0, 2.0])
    same(ng.ndtri(ng.tensor(p)), TS.ndtri(torch.tensor(p)))
    compare(ng.erfinv, torch.erfinv, np.array([-1.0, 1.0]))  # gradient inf at +-1
    e = np.array([-1.0, 0.0, INF])
    same(ng.entr(ng.tensor(e)), TS.entr(torch.tensor(e)))
    e = np.array([-INF, -40.0, INF])
    same(ng.log_ndtr(ng.tensor(e)), TS.log_ndtr(torch.tensor(e)), rtol=1e-12)


def test_bessel_gradients_at_zero_are_torchs():
    for f, tf in [(ng.i1, TS.i1), (ng.i1e, TS.i1e), (ng.i0, torch.i0), (ng.i0e, TS.i0e)]:
        compare(f, tf, np.array([0.0, -0.0, 1.0]))
    g = ng.grad(lambda t: ng.i1(t).sum())(ng.tensor(np.array([0.0])))
    assert g.numpy()[0] == 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logit_clamps_with_eps_as_torch(dtype):
    x = np.array([-0.5, 0.0, 0.1, 0.2, 0.25, 0.5, 0.75, 0.8, 1.0, 1.5, NAN, -INF])
    for eps in (None, 0.2, 0.0, -0.1):
        same(ng.logit(ng.tensor(x.astype(dtype)), eps),
             torch.logit(torch.tensor(x.astype(dtype)), eps), rtol=1e-6)
        keep = ~np.isnan(x) & ~np.isinf(x)
        compare(lambda t: ng.logit(t, eps), lambda t: torch.logit(t, eps), x[keep], dtype=dtype)
    clamped = ng.logit(ng.tensor(np.array([0.0, 0.01, 0.99, 1.0])), eps=0.1).numpy()
    np.testing.assert_allclose(clamped, [-math.log(9)] * 2 + [math.log(9)] * 2, rtol=1e-12)


def test_fmax_fmin_nan_rules_and_tie_gradients_are_torchs():
    x = np.array([1.0, 2.0, NAN, NAN, 1.0, -0.5])
    y = np.array([1.0, 1.0, 1.0, NAN, NAN, 3.0])
    for f, tf in [(ng.fmax, torch.fmax), (ng.fmin, torch.fmin)]:
        compare(f, tf, x, y)
        compare(f, tf, x, y, dtype=np.float32)
    same(ng.fmax(ng.tensor([1, 5, -2]), ng.tensor([3, 2, -2])),
         torch.fmax(torch.tensor([1, 5, -2]), torch.tensor([3, 2, -2])))
    assert ng.fmax(ng.tensor(x), ng.tensor(y)).numpy()[2] == 1.0  # NaN loses to a number


# --- binary special functions -----------------------------------------------------------------
def test_xlog1py_matches_torch_at_zero_and_minus_one():
    x = np.array([0.0, 0.0, 0.0, 1.5, -2.0, 0.0, 2.0])
    y = np.array([-1.0, -2.0, NAN, 1.0, 0.5, 3.0, -1.0])
    same(ng.xlog1py(ng.tensor(x), ng.tensor(y)), TS.xlog1py(torch.tensor(x), torch.tensor(y)))
    keep = np.arange(7) != 2
    # (0, -1) is left out of the gradients: d/dy is 0 there, PyTorch's x/(1 + y) is NaN
    compare(ng.xlog1py, TS.xlog1py, x[keep][1:-1], y[keep][1:-1])
    same(ng.xlog1py(ng.tensor(x), 2.0), TS.xlog1py(torch.tensor(x), 2.0))


@pytest.mark.parametrize(("f", "tf"), [(ng.igamma, torch.igamma), (ng.igammac, torch.igammac)])
def test_incomplete_gamma_values_and_gradient_in_x(f, tf):
    a = np.array([0.5, 1.0, 2.5, 4.0, 0.0, -1.0, 2.0])
    x = np.array([0.3, 1.0, 3.0, 0.5, 1.0, 1.0, 0.0])
    same(f(ng.tensor(a), ng.tensor(x)), tf(torch.tensor(a), torch.tensor(x)), rtol=1e-12)
    ok = a > 0
    compare(lambda t: f(ng.tensor(a[ok]), t), lambda t: tf(torch.tensor(a[ok]), t), x[ok])
    compare(lambda t: f(ng.tensor(a[ok].astype(np.float32)), t),
            lambda t: tf(torch.tensor(a[ok].astype(np.float32)), t), x[ok], dtype=np.float32)
    assert ng.gradcheck(lambda t: f(ng.tensor(a[:4]), t), x[:4])


def test_zeta_values_and_gradient_in_q():
    s = np.array([2.0, 3.0, 1.5, 4.0, 0.5, 1.0])
    q = np.array([1.0, 2.5, 0.7, -1.5, 2.0, 1.0])
    same(ng.zeta(ng.tensor(s), ng.tensor(q)), TS.zeta(torch.tensor(s), torch.tensor(q)),
         rtol=1e-12)
    compare(lambda t: ng.zeta(ng.tensor(s[:3]), t), lambda t: TS.zeta(torch.tensor(s[:3]), t),
            q[:3])
    same(ng.zeta(2.0, ng.tensor(q[:3])), TS.zeta(2.0, torch.tensor(q[:3])), rtol=1e-12)


@pytest.mark.parametrize("op", ["igamma", "igammac", "zeta"])
def test_no_gradient_in_the_first_input_raises_as_torch(op):
    a = ng.tensor(np.array([2.0, 3.0]), requires_grad=True)
    x = ng.tensor(np.array([1.5, 0.5]), requires_grad=True)
    with pytest.raises(ng.GradError, match=f"{op}: there is no gradient"):
        getattr(ng, op)(a, x).sum().backward()
    g = ng.grad(lambda t: getattr(ng, op)(a.detach(), t).sum())(x)  # the second input is fine
    assert np.isfinite(g.numpy()).all()


# --- polygamma and mvlgamma arguments ---------------------------------------------------------
def test_polygamma_higher_orders_match_torch():
    x = np.array([0.3, 1.0, 2.5, 7.0])
    for n in range(1, 5):
        compare(lambda t: ng.polygamma(n, t), lambda t: torch.polygamma(n, t), x,
                rtol=1e-8, atol=1e-8)
        compare(lambda t: t.polygamma(n), lambda t: t.polygamma(n), x, dtype=np.float32)


def test_bad_orders_raise_errors_that_name_the_op():
    x = ng.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="polygamma: n must be a non-negative integer, got -1"):
        ng.polygamma(-1, x)
    with pytest.raises(ng.DTypeError, match="polygamma: n must be a Python int, got float"):
        ng.polygamma(1.0, x)
    with pytest.raises(ValueError, match="mvlgamma: p must be an integer >= 1, got 0"):
        ng.mvlgamma(x, 0)
    with pytest.raises(ng.DTypeError, match="mvlgamma: p must be a Python int"):
        ng.mvlgamma(x, 2.5)


def test_mvlgamma_below_its_domain_gives_torchs_values():
    x = np.array([0.5, 1.0, 1.2, 3.0])
    same(ng.mvlgamma(ng.tensor(x), 3), torch.mvlgamma(torch.tensor(x), 3), rtol=1e-12)
    same(ng.special.multigammaln(ng.tensor(x), 2), TS.multigammaln(torch.tensor(x), 2),
         rtol=1e-12)


# --- integer arithmetic -----------------------------------------------------------------------
INTS_A = np.array([0, 0, -4, 6, -9, 12, 7, 0, -15, 2**40])
INTS_B = np.array([0, 5, 6, -4, -6, 18, 13, -3, -25, 2**20 * 6])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16])
def test_gcd_and_lcm_match_torch_on_negatives_and_zeros(dtype):
    a, b = INTS_A.astype(dtype), INTS_B.astype(dtype)
    if dtype != np.int64:
        a, b = a[:-1], b[:-1]
    for f, tf in [(ng.gcd, torch.gcd), (ng.lcm, torch.lcm)]:
        same(f(ng.tensor(a), ng.tensor(b)), tf(torch.tensor(a), torch.tensor(b)))
        same(f(ng.tensor(a), 6), tf(torch.tensor(a), torch.tensor(6, dtype=torch.tensor(a).dtype)))
    assert ng.gcd(ng.tensor([0]), ng.tensor([0])).tolist() == [0]
    same(ng.tensor(a).gcd(ng.tensor(b)), torch.tensor(a).gcd(torch.tensor(b)))


def test_gcd_and_lcm_refuse_floats_and_bools():
    with pytest.raises(ng.DTypeError, match="gcd: expected integer operands.*float32"):
        ng.gcd(ng.tensor([4.0]), ng.tensor([6.0]))
    with pytest.raises(ng.DTypeError, match="lcm: expected integer operands.*float"):
        ng.lcm(ng.tensor([4]), 2.5)
    with pytest.raises(ng.DTypeError, match="gcd: expected integer operands.*bool"):
        ng.gcd(ng.tensor([True]), ng.tensor([False]))


# --- float arithmetic -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frexp_matches_torch_including_subnormals_and_specials(dtype):
    info = np.finfo(dtype)
    x = np.array([3.0, -0.1, 0.0, -0.0, 1.0, 0.5, INF, -INF, NAN, info.max, -info.max,
                  info.tiny, info.smallest_subnormal, -3 * info.smallest_subnormal], dtype)
    m, e = ng.frexp(ng.tensor(x))
    tm, te = torch.frexp(torch.tensor(x))
    same(m, tm, rtol=0)
    same(e, te, rtol=0)
    assert e.dtype == np.int32 and m.dtype == dtype
    np.testing.assert_array_equal(np.signbit(m.numpy()), np.signbit(tm.numpy()))
    compare(lambda t: ng.frexp(t).mantissa, lambda t: torch.frexp(t).mantissa,
            np.array([3.0, -0.1, 1e-30, 0.7]), dtype=dtype)
    with pytest.raises(ng.DTypeError, match="frexp: expected a floating-point tensor.*int64"):
        ng.frexp(ng.tensor([1, 2]))


def test_ldexp_float_power_and_nextafter_dtypes_and_values():
    ix, ie = np.array([1, 2, -3]), np.array([3, -1, 0])
    same(ng.ldexp(ng.tensor(ix), ng.tensor(ie)), torch.ldexp(torch.tensor(ix), torch.tensor(ie)))
    x64 = np.array([1.5, -0.75, 3.0])
    same(ng.ldexp(ng.tensor(x64), ng.tensor(ie)), torch.ldexp(torch.tensor(x64),
                                                              torch.tensor(ie)), rtol=0)
    same(ng.tensor(x64).ldexp(ng.tensor(ie)), torch.tensor(x64).ldexp(torch.tensor(ie)), rtol=0)
    x32 = ng.tensor(x64.astype(np.float32))
    assert ng.ldexp(x32, ng.tensor(ie)).dtype == np.float32
    assert ng.ldexp(x32, 2).tolist() == [6.0, -3.0, 12.0]
    compare(ng.ldexp, torch.ldexp, x64, np.array([0.5, -1.25, 2.0]))
    # float_power: float64 whatever the inputs, gradients back in the input's dtype
    same(ng.float_power(ng.tensor(ix), 3), torch.float_power(torch.tensor(ix), 3))
    same(ng.float_power(x32, ng.tensor(np.float32(0.5))),
         torch.float_power(torch.tensor(x64.astype(np.float32)), torch.tensor(0.5)))
    compare(ng.float_power, torch.float_power, np.array([2.0, 0.5, 0.0]),
            np.array([0.5, 3.0, 2.0]), dtype=np.float32)
    same(ng.float_power(2, ng.tensor(ix)), torch.float_power(2, torch.tensor(ix)))
    # nextafter: one ulp, in the operands' dtype
    for dt in (np.float32, np.float64):
        a, b = np.array([1.0, 0.0, -1.0, INF], dt), np.array([2.0, -1.0, -1.0, 0.0], dt)
        same(ng.nextafter(ng.tensor(a), ng.tensor(b)),
             torch.nextafter(torch.tensor(a), torch.tensor(b)), rtol=0)
    with pytest.raises(ng.DTypeError, match="nextafter: expected a floating-point"):
        ng.nextafter(ng.tensor([1, 2]), ng.tensor([2, 3]))
    # a complex operand: complex128, as PyTorch's
    z = np.array([1j, 2 - 1j], np.complex64)
    same(ng.float_power(ng.tensor(z), 2), torch.float_power(torch.tensor(z), 2))
    same(ng.float_power(ng.tensor(np.array([2.0, 3.0], np.float32)), 1j),
         torch.float_power(torch.tensor(np.array([2.0, 3.0], np.float32)), 1j))


# --- predicates and signs ---------------------------------------------------------------------
SPECIALS = np.array([-INF, -2.5, -0.0, 0.0, 1.5, INF, NAN, -NAN])


@pytest.mark.parametrize("values", [SPECIALS, SPECIALS.astype(np.float32),
                                    np.array([-3, 0, 4]), np.array([True, False])],
                         ids=["float64", "float32", "int64", "bool"])
def test_predicates_and_signs_match_torch(values):
    x, t = ng.tensor(values), torch.tensor(values)
    for name in ("signbit", "isneginf", "isposinf", "isreal", "sgn"):
        if name == "sgn" and values.dtype == bool:
            continue
        same(getattr(ng, name)(x), getattr(torch, name)(t))
        same(getattr(x, name)(), getattr(t, name)())
    if values.dtype.kind == "f":
        np.testing.assert_array_equal(ng.signbit(x).numpy()[2:4], [True, False])  # -0.0


def test_heaviside_matches_torch_and_refuses_mixed_dtypes():
    x = np.array([-1.5, -0.0, 0.0, 2.0, NAN, INF])
    v = np.array([0.5, 0.5, 0.25, 0.5, 0.5, 0.5])
    same(ng.heaviside(ng.tensor(x), ng.tensor(v)), torch.heaviside(torch.tensor(x),
                                                                   torch.tensor(v)))
    same(ng.heaviside(ng.tensor([-2, 0, 3]), ng.tensor([7])),
         torch.heaviside(torch.tensor([-2, 0, 3]), torch.tensor([7])))
    with pytest.raises(ng.DTypeError, match="heaviside: .*same dtype.*float64 and int64"):
        ng.heaviside(ng.tensor(x), ng.tensor([1]))
    out = ng.heaviside(ng.tensor(x, requires_grad=True), ng.tensor(v, requires_grad=True))
    assert not out.requires_grad  # no gradient, as torch


ISIN = [
    (np.array([1, 2, 3, 4]), np.array([2, 4, 9])),
    (np.array([[1.0, NAN], [2.5, -0.0]]), np.array([NAN, 0.0, 1.0])),
    (np.array([1, 2, 3]), np.array([[3.0, 1.5], [2.0, 7.0]])),
    (np.array([5, 6]), np.zeros(0, np.int64)),
    (np.zeros((0, 2)), np.array([1.0])),
    (np.array(3), np.array([1, 3])),
    (np.array([10, -10, 3, 5]), np.array([5, 3])),  # beyond either end of the sorted tests
]


@pytest.mark.parametrize(("e", "t"), ISIN, ids=range(len(ISIN)))
@pytest.mark.parametrize("invert", [False, True])
def test_isin_matches_torch(e, t, invert):
    same(ng.isin(ng.tensor(e), ng.tensor(t), invert=invert),
         torch.isin(torch.tensor(e), torch.tensor(t), invert=invert))
    same(ng.isin(ng.tensor(e), ng.tensor(t), assume_unique=True, invert=invert),
         torch.isin(torch.tensor(e), torch.tensor(t), invert=invert))


def test_isin_with_numbers_and_bad_operands():
    t = ng.tensor([1, 2, 3])
    same(ng.isin(2, t), torch.isin(2, torch.tensor([1, 2, 3])))
    same(ng.isin(t, 2), torch.isin(torch.tensor([1, 2, 3]), 2))
    same(ng.isin(ng.tensor([1.0, NAN]), NAN), torch.isin(torch.tensor([1.0, NAN]), NAN))
    with pytest.raises(TypeError, match="isin: expected tensors or real numbers, got list"):
        ng.isin(t, [1, 2])
    with pytest.raises(TypeError, match="isin: expected at least one tensor"):
        ng.isin(1, 2)


# --- nodegrad.special -------------------------------------------------------------------------
def test_special_namespace_names_are_torchs():
    assert set(ng.special.__all__) <= set(dir(TS))
    for name in ng.special.__all__:
        assert callable(getattr(ng.special, name)), name
    assert ng.special.psi is ng.digamma and ng.special.gammaln is ng.lgamma
    assert ng.special.gammainc is ng.igamma and ng.special.expit is ng.sigmoid


SPECIAL_UNARY = ["expit", "logit", "erf", "erfc", "erfcx", "erfinv", "digamma", "psi",
                 "gammaln", "i0", "i0e", "i1", "i1e", "ndtr", "ndtri", "log_ndtr", "entr",
                 "sinc", "exp2", "expm1", "log1p"]


@pytest.mark.parametrize("name", SPECIAL_UNARY)
def test_special_unary_functions_match_torch_special(name, float_dtype):
    x = np.array([0.05, 0.3, 0.5, 0.7, 0.95])
    compare(getattr(ng.special, name), getattr(TS, name), x, dtype=float_dtype)


def test_special_functions_with_arguments_match_torch_special():
    x, y = np.array([[0.5, 1.5, 2.0], [3.0, 0.2, 1.1]]), np.array([[1.0, 0.5, 2.5]])
    for name in ("xlogy", "xlog1py", "gammainc", "gammaincc", "zeta"):
        same(getattr(ng.special, name)(ng.tensor(x + 1.0), ng.tensor(y)),
             getattr(TS, name)(torch.tensor(x + 1.0), torch.tensor(y)), rtol=1e-12)
    compare(lambda t: ng.special.polygamma(2, t), lambda t: TS.polygamma(2, t), x)
    compare(lambda t: ng.special.multigammaln(t, 2), lambda t: TS.multigammaln(t, 2), x + 1)
    compare(lambda t: ng.special.logit(t, eps=0.25), lambda t: TS.logit(t, eps=0.25), x / 4)
    for dim in (0, 1, -1):
        compare(lambda t: ng.special.softmax(t, dim), lambda t: TS.softmax(t, dim), x)
        compare(lambda t: ng.special.log_softmax(t, dim), lambda t: TS.log_softmax(t, dim), x)
        compare(lambda t: ng.special.logsumexp(t, dim, True),
                lambda t: TS.logsumexp(t, dim, True), x)
    compare(lambda t: ng.special.logsumexp(t, (0, 1)), lambda t: TS.logsumexp(t, (0, 1)), x)
    compare(lambda t: ng.special.softmax(t, 0), lambda t: TS.softmax(t, 0), np.array(1.5))
    sm = ng.special.softmax(ng.tensor(x.astype(np.float32)), 1, dtype="float64")
    same(sm, TS.softmax(torch.tensor(x.astype(np.float32)), 1, dtype=torch.float64))


@pytest.mark.parametrize("decimals", [0, 1, 2, 3, -1, -2])
def test_special_round_with_decimals_matches_torch(decimals, float_dtype):
    x = np.array([1.2345, -2.5, 0.125, 15.0, 150.0, -1234.5678, 0.5, 2.675]).astype(float_dtype)
    same(ng.special.round(ng.tensor(x), decimals=decimals),
         TS.round(torch.tensor(x), decimals=decimals), rtol=0)


# --- methods, transforms and the device -------------------------------------------------------
def test_tensor_methods_are_torchs():
    x = np.array([0.3, 0.6, 1.7])
    t, tt = ng.tensor(x), torch.tensor(x)
    calls = [lambda a: a.lgamma(), lambda a: a.digamma(), lambda a: a.polygamma(2),
             lambda a: a.mvlgamma(2), lambda a: a.erfc(), lambda a: (a / 2).erfinv(),
             lambda a: a.i0(), lambda a: (a / 2).logit(), lambda a: (a / 2).logit(0.2),
             lambda a: a.sgn(), lambda a: a.heaviside(a), lambda a: a.float_power(2),
             lambda a: a.fmax(a * 0 + 1), lambda a: a.fmin(a * 0 + 1), lambda a: a.igamma(a),
             lambda a: a.igammac(a), lambda a: a.frexp()[0], lambda a: a.nextafter(a * 2)]
    for c in calls:
        same(c(t), c(tt), rtol=1e-8, atol=1e-12)


def test_special_functions_under_jit():
    def f(x, t):
        m, e = ng.frexp(x)
        return (ng.lgamma(x) + ng.polygamma(1, x) * m + ng.erfinv(ng.tanh(x)) + ng.logit(
            ng.sigmoid(x), 1e-3) + ng.igamma(x, x * 2) + e.astype("float64")
            + ng.where(ng.isin(t, ng.tensor([1, 3])), 1.0, 0.0).sum())

    jf = ng.jit(f)
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        x = ng.tensor(rng.uniform(0.2, 3.0, (3, 4)))
        t = ng.tensor(rng.integers(0, 5, (3,)))
        np.testing.assert_allclose(jf(x, t).numpy(), f(x, t).numpy(), rtol=1e-12)
    g = ng.jit(ng.grad(lambda x: ng.digamma(x).sum()))(x)
    same(g, ng.polygamma(1, x))


def test_special_functions_under_vmap_equal_a_loop():
    rng = np.random.default_rng(0)
    xs = rng.uniform(0.3, 3.0, (4, 5))
    ts = rng.integers(0, 4, (4, 3))

    def f(x, t):
        return (ng.mvlgamma(x, 2) * ng.ndtr(x) + ng.xlog1py(x, x) + ng.fmax(x, 1.0)
                + ng.isin(ng.round(x), t.astype("float64")).astype("float64"))

    got = ng.vmap(f)(ng.tensor(xs), ng.tensor(ts))
    want = np.stack([f(ng.tensor(x), ng.tensor(t)).numpy() for x, t in zip(xs, ts)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # per-example gradients of the composite and the primitives
    per = ng.vmap(ng.grad(lambda x, t: f(x, t).sum()))(ng.tensor(xs), ng.tensor(ts))
    loop = np.stack([ng.grad(lambda x: f(x, ng.tensor(t)).sum())(ng.tensor(x)).numpy()
                     for x, t in zip(xs, ts)])
    np.testing.assert_allclose(per.numpy(), loop, rtol=1e-12)


def test_special_functions_on_the_device(cuda):
    x = np.array([0.3, 0.6, 1.7, 2.5])
    for f in (ng.lgamma, ng.digamma, lambda t: ng.polygamma(2, t), ng.erfinv, ng.i1e,
              ng.log_ndtr, lambda t: ng.zeta(2.5, t), lambda t: ng.frexp(t).mantissa,
              lambda t: ng.isin(t, t[1:3]), ng.signbit, ng.sgn,
              lambda t: ng.gcd(ng.round(t * 10).astype("int64"), 6)):
        for dt in (np.float32, np.float64):
            want = f(ng.tensor(x.astype(dt)))
            xd = ng.tensor(x.astype(dt), device=cuda, requires_grad=True)
            got = f(xd)
            assert got.device.startswith("cuda") and got.dtype == want.dtype
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
            if got.requires_grad:
                got.sum().backward()
                assert xd.grad.device.startswith("cuda")
