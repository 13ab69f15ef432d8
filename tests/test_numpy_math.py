"""NumPy's elementwise math, polynomials, convolution, windows and predicates: values and
dtypes against NumPy (float32, float64, integers, bools, inf/NaN/±0), float64 gradients by
central differences, PyTorch where it has the same function, and jit and vmap."""

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError, JitError, ShapeError
from nodegrad.testing import gradcheck

NAN, INF = float("nan"), float("inf")
EDGE = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 0.5, -0.5, 1e-300, 5e-324, 1e300, INF, -INF,
                 NAN, 27.0, -8.0, 123.456])
INTS = ["int8", "uint8", "int16", "int32", "int64", "bool"]


def _t(a):
    return ng.tensor(np.asarray(a))


def _same(ours, ref, rtol=0.0, atol=0.0, signed_zeros=True) -> None:
    """Equal (or close) values, NaN where NumPy has NaN, the same shape and dtype."""
    a = np.asarray(ours.numpy() if isinstance(ours, ng.Tensor) else ours)
    b = np.asarray(ref)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if rtol or atol:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(a, b)
    if signed_zeros and a.dtype.kind == "f":
        z = (b == 0)
        np.testing.assert_array_equal(np.signbit(a[z]), np.signbit(b[z]))


def _inputs(dtype):
    if dtype in ("float32", "float64"):
        with np.errstate(over="ignore"):
            return [EDGE.astype(dtype), EDGE[:6].astype(dtype).reshape(2, 3),
                    np.array(-3.5, dtype), np.zeros((0,), dtype)]
    if dtype == "bool":
        return [np.array([True, False, True]), np.array(False)]
    info = np.iinfo(dtype)
    return [np.array([0, 1, 7, info.max, info.min], dtype),
            np.arange(6, dtype=dtype).reshape(3, 2), np.array(3, dtype)]


# --- elementwise math ------------------------------------------------------------------------
UNARY = ["cbrt", "fabs", "rint", "degrees", "radians", "spacing"]


@pytest.mark.parametrize("dtype", ["float32", "float64"] + INTS)
@pytest.mark.parametrize("name", UNARY)
def test_unary_float_functions_match_numpy(name, dtype):
    for x in _inputs(dtype):
        with np.errstate(all="ignore"):
            ref = getattr(np, name)(x)
            if name == "spacing" and ref.dtype == np.float16:  # NumPy's float16 loop alone
                ref = np.where(x < 0, -np.spacing(-x.astype(ref.dtype)), ref)  # goes up
        tol = {"float16": 1e-3, "float32": 1e-6}.get(str(ref.dtype), 0.0)  # one rounding
        _same(getattr(ng, name)(_t(x)), ref, rtol=tol if name in ("degrees", "radians") else 0)


def test_unary_float_functions_take_numbers_and_refuse_complex():
    _same(ng.fabs([-8.0, 2.0]), np.fabs([-8.0, 2.0]))
    _same(ng.cbrt(-27.0), np.asarray(np.cbrt(-27.0)))
    assert ng.cbrt is ng.primitives["cbrt"]
    for name in UNARY:
        with pytest.raises(DTypeError, match=name):
            getattr(ng, name)(ng.tensor(np.array([1 + 1j])))


def test_cbrt_gradient_matches_and_is_inf_at_zero():
    x = np.array([-8.0, -0.3, 0.7, 27.0, 1e-3])
    gradcheck(ng.cbrt, x, order=2)
    t = ng.tensor(np.array([0.0, 8.0]), requires_grad=True)
    ng.cbrt(t).sum().backward()
    assert t.grad.numpy()[0] == INF and t.grad.numpy()[1] == pytest.approx(1 / 12)
    t32 = ng.tensor(np.array([8.0], np.float32), requires_grad=True)
    ng.cbrt(t32).sum().backward()
    assert t32.grad.dtype == np.float32


def test_rint_fabs_degrees_gradients():
    x = np.array([0.3, -1.2, 2.7])
    gradcheck(ng.fabs, x)
    gradcheck(ng.degrees, x)
    gradcheck(ng.radians, x)
    for f in (ng.rint, ng.spacing):
        t = ng.tensor(x, requires_grad=True)
        f(t).sum().backward()
        np.testing.assert_array_equal(t.grad.numpy(), 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16", "int64", "uint8", "bool"])
def test_modf_matches_numpy_signs_and_infinities(dtype):
    for x in _inputs(dtype):
        frac, whole = ng.modf(_t(x))
        rf, rw = np.modf(x)
        _same(frac, rf)
        _same(whole, rw)


def test_modf_gradient_is_one_and_zero():
    x = np.array([-3.5, -0.25, 0.75, 2.2])
    gradcheck(lambda t: ng.modf(t)[0], x)
    t = ng.tensor(np.array([-3.0, 2.0, -0.5]), requires_grad=True)
    frac, whole = ng.modf(t)
    (frac + whole).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_mod_and_divmod_match_numpy(dtype):
    x = np.array([7, -7, 5, -5, 0, 9], dtype)
    y = np.array([2, 2, -3, -3, 4, 9], dtype)
    _same(ng.mod(_t(x), _t(y)), np.mod(x, y))
    q, r = ng.divmod(_t(x), _t(y))
    rq, rr = np.divmod(x, y)
    _same(q, rq)
    _same(r, rr)
    if dtype.startswith("float"):
        e = np.array([INF, NAN, 1.0, -1.0, 3.0], dtype)
        d = np.array([2.0, 2.0, INF, INF, 0.0], dtype)
        with np.errstate(all="ignore"):
            _same(ng.mod(_t(e), _t(d)), np.mod(e, d))
            q, r = ng.divmod(_t(e), _t(d))
            _same(q, np.divmod(e, d)[0])
            _same(r, np.divmod(e, d)[1])


def test_mod_integer_division_by_zero_raises():
    with pytest.raises(ZeroDivisionError, match="remainder"):
        ng.mod(_t([5, 3]), _t([0, 1]))


def test_mod_gradient():
    gradcheck(lambda a, b: ng.mod(a, b), np.array([5.3, -2.2, 7.9]), np.array([2.0, 3.0, -4.0]))


def test_conjugate_is_a_differentiable_copy_for_reals_and_conjugates_complex():
    x = ng.tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = ng.conjugate(x)
    assert y is not x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])
    c = np.array([1 + 2j, -3 - 1j])
    try:  # complex tensors go to conj: conjugated where it supports them, else its clear error
        ref = ng.conj(ng.tensor(c))
    except DTypeError:
        with pytest.raises(DTypeError, match="conj"):
            ng.conjugate(ng.tensor(c))
    else:
        _same(ref, np.conjugate(c))
        _same(ng.conjugate(ng.tensor(c)), np.conjugate(c))
    _same(ng.conjugate(_t(np.array([1, 2], np.int16))), np.array([1, 2], np.int16))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "int64", "bool"])
@pytest.mark.parametrize("decimals", [0, 2, -1])
def test_around_matches_numpy(dtype, decimals):
    if dtype == "bool" and decimals:
        return
    x = (np.array([15, 25, -35, 0, 44, 127]) if dtype.startswith("int") else
         np.array([True, False]) if dtype == "bool" else
         np.array([1.235, -2.5, 0.5, 1.5, -0.125, NAN, INF, 1234.5]))
    x = x.astype(dtype)
    _same(ng.around(_t(x), decimals), np.around(x, decimals), signed_zeros=False)
    if dtype.startswith("int") and decimals >= 0:
        _same(ng.around(_t(x), decimals=decimals), x)


def test_around_refuses_a_float_decimals():
    with pytest.raises(DTypeError, match="around"):
        ng.around(_t([1.5]), 1.5)


@pytest.mark.parametrize("name", ["invert", "bitwise_invert"])
def test_invert_matches_numpy(name):
    for x in (np.array([0, 1, -128, 127], np.int8), np.array([0, 255], np.uint8),
              np.array([True, False]), np.array([2**40, -1], np.int64)):
        _same(getattr(ng, name)(_t(x)), np.invert(x))
    with pytest.raises(DTypeError, match=name):
        getattr(ng, name)(_t([1.0]))


def test_bitwise_count_matches_numpy():
    for x in (np.array([0, 1, -1, 7, -128, 127], np.int8), np.array([255, 3], np.uint8),
              np.array([-(2**63), 2**63 - 1, -5], np.int64), np.array([True, False]),
              np.array([2**64 - 1, 0], np.uint64), np.arange(6, dtype=np.int32).reshape(2, 3)):
        _same(ng.bitwise_count(_t(x)), np.bitwise_count(x))
    with pytest.raises(DTypeError, match="bitwise_count"):
        ng.bitwise_count(_t([1.0]))


def test_bitwise_count_every_byte_and_under_jit():
    v = np.concatenate([np.arange(256, dtype=np.uint64) << np.uint64(k) for k in range(0, 64, 8)]
                       + [np.array([2**64 - 1, 0x0123456789ABCDEF], np.uint64)])
    _same(ng.bitwise_count(_t(v)), np.bitwise_count(v))
    f = ng.jit(ng.bitwise_count)
    for x in (np.array([3, -7], np.int32), np.array([255, -1], np.int32)):
        _same(f(_t(x)), np.bitwise_count(x))


# --- polynomials -----------------------------------------------------------------------------
P = np.array([2.0, -3.0, 0.5, 4.0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_polyval_matches_numpy(dtype):
    x = np.array([[0.0, 1.5, -2.0], [3.0, -0.5, 10.0]], dtype)
    p = P.astype(dtype)
    _same(ng.polyval(_t(p), _t(x)), np.polyval(p, x), rtol=1e-6 if dtype == "float32" else 1e-15)
    _same(ng.polyval(_t(p), _t(np.array(2.0, dtype))), np.asarray(np.polyval(p, dtype and
                                                                          np.array(2.0, dtype))))
    with np.errstate(invalid="ignore"):
        _same(ng.polyval([1.0, 2.0], _t(np.array([INF, NAN]))),
              np.polyval([1.0, 2.0], np.array([INF, NAN])))
    _same(ng.polyval(_t(np.zeros(0)), _t(x.astype("float64"))), np.polyval([], x.astype("f8")))


def test_polyval_integers_and_mixed():
    _same(ng.polyval(_t([1, 2, 3]), _t([2, -1])), np.polyval([1, 2, 3], np.array([2, -1])))
    _same(ng.polyval(_t([1.5, 2.0]), _t([2, -1])), np.polyval([1.5, 2.0], np.array([2, -1])))


def test_polyval_gradients():
    gradcheck(lambda p, x: ng.polyval(p, x), P, np.array([0.3, -1.2, 2.0]), order=2)


@pytest.mark.parametrize("m", [0, 1, 2, 3, 4, 6])
def test_polyder_polyint_match_numpy(m):
    for p in (P, np.array([3.0]), np.array([1, 2, 3, 4, 5])):
        _same(ng.polyder(_t(p), m), np.polyder(p, m))
        _same(ng.polyint(_t(p), m), np.polyint(p, m), rtol=1e-15)
    _same(ng.polyint(_t(P), m, k=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
          np.polyint(P, m, k=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), rtol=1e-15)
    _same(ng.polyint(_t(P), m, k=2.5), np.polyint(P, m, k=2.5), rtol=1e-15)


def test_polyder_polyint_keep_float32_and_refuse_bad_orders():
    p = ng.tensor(P.astype(np.float32))
    assert ng.polyder(p).dtype == np.float32 and ng.polyint(p).dtype == np.float32
    np.testing.assert_allclose(ng.polyint(p, 2).numpy(), np.polyint(P, 2), rtol=1e-6)
    with pytest.raises(ValueError, match="polyder"):
        ng.polyder(p, -1)
    with pytest.raises(ValueError, match="polyint"):
        ng.polyint(p, -1)
    with pytest.raises(ValueError, match="polyint"):
        ng.polyint(p, 3, k=[1.0, 2.0])


def test_polyder_polyint_gradients():
    gradcheck(lambda p: ng.polyder(p, 2), P)
    gradcheck(lambda p, k: ng.polyint(p, 2, k=k), P, np.array([0.5, -1.0]))


@pytest.mark.parametrize("a1, a2", [([1.0, 2.0, 3.0], [4.0, 5.0]), ([1.0], [2.0, 3.0, 4.0]),
                                    ([1, 2], [3, 4]), (2.0, [1.0, 1.0])])
def test_polyadd_polysub_polymul_match_numpy(a1, a2):
    a1, a2 = np.asarray(a1), np.asarray(a2)
    for name in ("polyadd", "polysub", "polymul"):
        _same(getattr(ng, name)(_t(a1), _t(a2)), getattr(np, name)(a1, a2))


def test_polymul_polyadd_gradients():
    a, b = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.25])
    for name in ("polyadd", "polysub", "polymul"):
        gradcheck(getattr(ng, name), a, b)


@pytest.mark.parametrize("u, v", [([1.0, -3.0, 2.0, 5.0], [1.0, 1.0]), ([3.0, 5.0, 2.0], [2.0, 1]),
                                  ([1.0, 2.0], [1.0, 2.0, 3.0]), ([4, 0, -1], [2, 1]),
                                  ([1.0, -2.0, 1.0], [1.0, -1.0])])
def test_polydiv_matches_numpy(u, v):
    q, r = ng.polydiv(_t(u), _t(v))
    rq, rr = np.polydiv(u, v)
    _same(q, rq, rtol=1e-14, atol=1e-14)
    _same(r, rr, rtol=1e-14, atol=1e-14, signed_zeros=False)


def test_polydiv_gradient_and_zero_leading_divisor():
    gradcheck(lambda u, v: ng.polydiv(u, v)[0], np.array([1.0, 4.0, -2.0, 3.0]),
              np.array([2.0, 0.5]))
    gradcheck(lambda u, v: ng.polydiv(u, v)[1], np.array([1.0, 4.0, -2.0, 3.0]),
              np.array([2.0, 0.5, 1.5]))
    with pytest.raises(ZeroDivisionError, match="polydiv"):
        ng.polydiv(_t([1.0, 2.0]), _t([0.0, 1.0]))


def test_polyfit_matches_numpy():
    rng = np.random.default_rng(0)
    x = np.linspace(-2, 3, 11)
    y = 1.5 * x**3 - x + 0.3 + 0.1 * rng.standard_normal(11)
    for deg in (0, 1, 3, 5):
        _same(ng.polyfit(_t(x), _t(y), deg), np.polyfit(x, y, deg), rtol=1e-9, atol=1e-12)
    w = rng.uniform(0.5, 2.0, 11)
    _same(ng.polyfit(_t(x), _t(y), 2, w=_t(w)), np.polyfit(x, y, 2, w=w), rtol=1e-9)
    y2 = np.stack([y, 2 * y - x], 1)
    _same(ng.polyfit(_t(x), _t(y2), 2, w=_t(w)), np.polyfit(x, y2, 2, w=w), rtol=1e-9)
    _same(ng.polyfit(_t(np.arange(6)), _t(np.arange(6) ** 2), 2),
          np.polyfit(np.arange(6), np.arange(6) ** 2, 2), rtol=1e-9, atol=1e-12)
    c, res, rank, s, rcond = ng.polyfit(_t(x), _t(y), 3, full=True)
    rc, rres, rrank, rs, rrcond = np.polyfit(x, y, 3, full=True)
    _same(res, rres, rtol=1e-9)
    assert rank == rrank and rcond == rrcond
    _same(s, rs, rtol=1e-12)
    for cov in (True, "unscaled"):
        c, v = ng.polyfit(_t(x), _t(y2), 2, cov=cov)
        _same(v, np.polyfit(x, y2, 2, cov=cov)[1], rtol=1e-8)
        c, v = ng.polyfit(_t(x), _t(y), 2, cov=cov)
        _same(v, np.polyfit(x, y, 2, cov=cov)[1], rtol=1e-8)


def test_polyfit_float32_and_errors():
    x = np.linspace(0, 1, 8).astype(np.float32)
    c = ng.polyfit(_t(x), _t(x * x), 2)
    assert c.dtype == np.float32
    np.testing.assert_allclose(c.numpy(), [1, 0, 0], atol=1e-4)
    with pytest.raises(ValueError, match="polyfit.*deg"):
        ng.polyfit(_t(x), _t(x), -1)
    with pytest.raises(TypeError, match="polyfit.*same length"):
        ng.polyfit(_t(x), _t(x[:3]), 1)
    with pytest.raises(TypeError, match="polyfit.*1-d x"):
        ng.polyfit(_t(x[None]), _t(x), 1)
    with pytest.raises(TypeError, match="polyfit.*w"):
        ng.polyfit(_t(x), _t(x), 1, w=_t(x[:2]))


def test_polyfit_gradients_through_data_and_weights():
    x = np.linspace(-1, 2, 7)
    y = np.cos(x)
    w = np.linspace(0.5, 1.5, 7)
    gradcheck(lambda x, y, w: ng.polyfit(x, y, 2, w=w), x, y, w)


@pytest.mark.parametrize("p", [[1, -3, 2], [1.0, 0.0, 1.0], [0, 0, 1, -2, 0, 0], [3.0],
                               [0.0, 0.0], [2.0, -4.0], [1, -6, 11, -6], [1.0, 0, 0, 0, -1]])
def test_roots_matches_numpy(p):
    got, ref = ng.roots(_t(p)), np.roots(p)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_allclose(np.sort_complex(got.numpy()), np.sort_complex(ref), atol=1e-12)


def test_roots_float32_and_shape_error():
    assert ng.roots(_t(np.array([1, 0, 1], np.float32))).dtype == np.complex64
    with pytest.raises(ShapeError, match="roots"):
        ng.roots(_t(np.ones((2, 2))))


def test_poly_matches_numpy_and_differentiates():
    for z in ([1.0, 2.0, -3.0], [2, 3], [0.5], np.array([1.0, 2.0], np.float32)):
        _same(ng.poly(_t(z)), np.poly(z), rtol=1e-6)
    assert ng.poly(_t(np.zeros(0))) == np.poly([]) == 1.0
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    _same(ng.poly(_t(m)), np.poly(m), rtol=1e-12)
    r = np.array([[0.0, -1.0], [1.0, 0.0]])  # complex conjugate eigenvalues: real polynomial
    _same(ng.poly(_t(r)), np.poly(r), atol=1e-15)
    gradcheck(ng.poly, np.array([0.5, -1.0, 2.0]))
    with pytest.raises(ValueError, match="poly"):
        ng.poly(_t(np.ones((2, 3))))


# --- convolution -----------------------------------------------------------------------------
SEQS = [([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, -1.0, 2.0]), ([1.0, 2.0], [3.0, -1.0, 0.5, 2.0]),
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), ([2.0], [1.0, -1.0, 3.0]), ([1.0, 2.0, 3.0], [2.0]),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("name", ["convolve", "correlate"])
def test_convolve_correlate_match_numpy(name, dtype, mode):
    for a, v in SEQS:
        a, v = np.asarray(a).astype(dtype), np.asarray(v).astype(dtype)
        _same(getattr(ng, name)(_t(a), _t(v), mode), getattr(np, name)(a, v, mode),
              rtol=1e-6 if dtype == "float32" else 1e-15)


def test_convolve_default_modes_and_gradients():
    a, v = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.25, 1.0, -1.5, 2.0, 0.5])
    _same(ng.convolve(_t(a), _t(v)), np.convolve(a, v), rtol=1e-15)
    _same(ng.correlate(_t(a), _t(v)), np.correlate(a, v), rtol=1e-15)
    for mode in ("full", "same", "valid"):
        gradcheck(lambda x, y, m=mode: ng.convolve(x, y, m), a, v)
        gradcheck(lambda x, y, m=mode: ng.correlate(x, y, m), a, v)
        gradcheck(lambda x, y, m=mode: ng.correlate(x, y, m), v, a[:2])


def test_correlate_valid_matches_torch_conv1d():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    a, v = rng.standard_normal(9), rng.standard_normal(4)
    ref = torch.nn.functional.conv1d(torch.tensor(a)[None, None], torch.tensor(v)[None, None])
    np.testing.assert_allclose(ng.correlate(_t(a), _t(v)).numpy(), ref.numpy().ravel(),
                               rtol=1e-14)


def test_convolve_errors_name_the_function():
    with pytest.raises(ValueError, match="convolve: a cannot be empty"):
        ng.convolve(_t(np.zeros(0)), _t([1.0]))
    with pytest.raises(ValueError, match="correlate: v cannot be empty"):
        ng.correlate(_t([1.0]), _t(np.zeros(0)))
    with pytest.raises(ValueError, match="convolve: mode"):
        ng.convolve(_t([1.0]), _t([1.0]), "circular")
    with pytest.raises(ShapeError, match="convolve"):
        ng.convolve(_t(np.ones((2, 2))), _t([1.0]))
    with pytest.raises(DTypeError, match="convolve"):
        ng.convolve(_t(np.ones(3, np.float32)), _t(np.ones(2)))
    with pytest.raises(DTypeError, match="correlate"):
        ng.correlate(_t(np.ones(3) * 1j), _t(np.ones(2)))


# --- unwrap, trim_zeros ----------------------------------------------------------------------
def test_unwrap_matches_numpy():
    rng = np.random.default_rng(2)
    phase = np.cumsum(rng.uniform(-2.5, 2.5, (3, 20)), axis=1)
    wrapped = np.angle(np.exp(1j * phase))
    for axis in (-1, 1):
        _same(ng.unwrap(_t(wrapped), axis=axis), np.unwrap(wrapped, axis=axis), rtol=1e-14)
    _same(ng.unwrap(_t(wrapped.T), axis=0), np.unwrap(wrapped.T, axis=0), rtol=1e-14)
    _same(ng.unwrap(_t(wrapped), discont=4.0), np.unwrap(wrapped, discont=4.0), rtol=1e-14)
    w32 = wrapped.astype(np.float32)
    _same(ng.unwrap(_t(w32)), np.unwrap(w32), rtol=1e-5)
    ints = np.array([0, 1, 7, 3, 11, 2, 5])
    _same(ng.unwrap(_t(ints), period=6), np.unwrap(ints, period=6))
    _same(ng.unwrap(_t(ints), period=5), np.unwrap(ints, period=5))
    _same(ng.unwrap(_t(ints)), np.unwrap(ints), rtol=1e-14)
    _same(ng.unwrap(_t([1.0])), np.unwrap([1.0]))
    _same(ng.unwrap(_t([0.0, 3.0, 6.0, 9.5])), np.unwrap([0.0, 3.0, 6.0, 9.5]), rtol=1e-15)


def test_unwrap_gradient_is_identity():
    x = np.array([0.1, 3.0, -3.0, 2.9, -2.8])
    gradcheck(ng.unwrap, x)


@pytest.mark.parametrize("trim", ["fb", "f", "b", "BF"])
def test_trim_zeros_matches_numpy(trim):
    for x in (np.array([0, 0, 1, 0, 2, 0, 0]), np.array([0.0, 0.0]), np.array([3.0, 0.0]),
              np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 0]]), np.zeros((2, 3))):
        _same(ng.trim_zeros(_t(x), trim), np.trim_zeros(x, trim))
        for axis in range(x.ndim):
            _same(ng.trim_zeros(_t(x), trim, axis=axis), np.trim_zeros(x, trim, axis=axis))


def test_trim_zeros_gradient_errors_and_jit():
    t = ng.tensor(np.array([0.0, 2.0, 0.0, 3.0, 0.0]), requires_grad=True)
    ng.trim_zeros(t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0, 1, 1, 1, 0])
    with pytest.raises(ValueError, match="trim_zeros"):
        ng.trim_zeros(t, "x")
    with pytest.raises(JitError, match="trim_zeros"):
        ng.jit(ng.trim_zeros)(ng.tensor(np.array([0.0, 1.0])))


# --- vecdot, matvec, vecmat ------------------------------------------------------------------
def test_vecdot_matvec_vecmat_match_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 1, 4)), rng.standard_normal((3, 4))
    _same(ng.vecdot(_t(a), _t(b)), np.vecdot(a, b), rtol=1e-14)
    c, d = rng.standard_normal((3, 4, 2)), rng.standard_normal((1, 4, 2))
    _same(ng.vecdot(_t(c), _t(d), axis=1), np.vecdot(c, d, axis=1), rtol=1e-14)
    m, v = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((3, 4))
    _same(ng.matvec(_t(m), _t(v)), np.matvec(m, v), rtol=1e-14)
    u, n = rng.standard_normal((2, 1, 5)), rng.standard_normal((3, 5, 4))
    _same(ng.vecmat(_t(u), _t(n)), np.vecmat(u, n), rtol=1e-14)
    i, j = np.arange(6, dtype=np.int32).reshape(2, 3), np.arange(3, dtype=np.int32)
    _same(ng.vecdot(_t(i), _t(j)), np.vecdot(i, j))
    _same(ng.matvec(_t(i), _t(j)), np.matvec(i, j))
    _same(ng.vecmat(_t(j[:2]), _t(i)), np.vecmat(j[:2], i))
    f = np.float32
    _same(ng.vecdot(_t(a.astype(f)), _t(b.astype(f))), np.vecdot(a.astype(f), b.astype(f)),
          rtol=1e-6)


def test_vecdot_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    ref = torch.linalg.vecdot(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(ng.vecdot(_t(a), _t(b)).numpy(), ref.numpy(), rtol=1e-14)


def test_vecdot_matvec_vecmat_gradients_and_errors():
    rng = np.random.default_rng(5)
    gradcheck(ng.vecdot, rng.standard_normal((2, 3)), rng.standard_normal(3))
    gradcheck(ng.matvec, rng.standard_normal((2, 3)), rng.standard_normal(3))
    gradcheck(ng.vecmat, rng.standard_normal(2), rng.standard_normal((2, 3)))
    with pytest.raises(ShapeError, match="vecdot"):
        ng.vecdot(_t(np.ones(3)), _t(np.ones(1)))
    with pytest.raises(ShapeError, match="matvec"):
        ng.matvec(_t(np.ones((2, 3))), _t(np.ones(2)))
    with pytest.raises(ShapeError, match="matvec"):
        ng.matvec(_t(np.ones(3)), _t(np.ones(3)))
    with pytest.raises(ShapeError, match="vecmat"):
        ng.vecmat(_t(np.ones(3)), _t(np.ones((2, 3))))


# --- windows ---------------------------------------------------------------------------------
WINDOWS = ["hamming", "hanning", "blackman", "bartlett"]


@pytest.mark.parametrize("M", [-2, 0, 1, 2, 3, 8, 51])
def test_windows_match_numpy(M):
    for name in WINDOWS:
        _same(getattr(ng, name)(M), getattr(np, name)(M))
    for beta in (0.0, 5.0, 14.0):
        _same(ng.kaiser(M, beta), np.kaiser(M, beta))


@pytest.mark.parametrize("M", [2, 3, 8, 51])
def test_windows_match_torch_symmetric_windows(M):
    torch = pytest.importorskip("torch")
    pairs = {"hamming": torch.hamming_window, "hanning": torch.hann_window,
             "blackman": torch.blackman_window, "bartlett": torch.bartlett_window}
    for name, fn in pairs.items():
        ref = fn(M, periodic=False, dtype=torch.float64).numpy()
        np.testing.assert_allclose(getattr(ng, name)(M).numpy(), ref, rtol=1e-12, atol=1e-15)
    ref = torch.kaiser_window(M, periodic=False, beta=8.0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(ng.kaiser(M, 8.0).numpy(), ref, rtol=1e-12)


def test_windows_refuse_non_numbers():
    with pytest.raises(DTypeError, match="hamming"):
        ng.hamming("5")
    with pytest.raises(DTypeError, match="kaiser"):
        ng.kaiser(5, None)


# --- predicates and dtype helpers ------------------------------------------------------------
def test_iscomplex_and_objects():
    c = np.array([1 + 0j, 2 + 1j, -1j])
    _same(ng.iscomplex(ng.tensor(c)), np.iscomplex(c))
    _same(ng.iscomplex(_t(np.ones((2, 3)))), np.iscomplex(np.ones((2, 3))))
    assert ng.iscomplexobj(ng.tensor(c)) and not ng.isrealobj(ng.tensor(c))
    assert not ng.iscomplexobj(_t([1.0])) and ng.isrealobj(_t([1]))
    assert ng.iscomplexobj([1 + 0j]) and ng.isrealobj(3.0)


def test_isdtype_and_issubdtype_accept_nodegrad_and_numpy_dtypes():
    assert ng.isdtype(ng.float32, "real floating") and ng.isdtype(np.float64, "numeric")
    assert not ng.isdtype(ng.int64, ("real floating", "bool"))
    assert ng.isdtype(ng.int8, "signed integer") and ng.isdtype(ng.uint8, "integral")
    assert ng.isdtype(ng.float32, ng.float32) and not ng.isdtype(ng.float32, np.float64)
    assert ng.issubdtype(ng.float32, np.floating) and not ng.issubdtype(ng.int64, np.floating)
    assert ng.issubdtype(ng.tensor([1]).dtype, np.integer)
    with pytest.raises(TypeError, match="isdtype"):
        ng.isdtype(ng.tensor([1.0]), "numeric")
    with pytest.raises(ValueError, match="isdtype"):
        ng.isdtype(ng.float32, "floats")
    with pytest.raises(TypeError, match="issubdtype"):
        ng.issubdtype(ng.tensor([1.0]), np.floating)


def test_real_if_close_and_sort_complex():
    c = np.array([2.1 + 4e-14j, 5.2 + 3e-15j])
    _same(ng.real_if_close(ng.tensor(c)), np.real_if_close(c))
    _same(ng.real_if_close(ng.tensor(c), tol=1000), np.real_if_close(c, tol=1000))
    _same(ng.real_if_close(ng.tensor(c + 1j)), np.real_if_close(c + 1j))
    x = _t([1.0, 2.0])
    assert ng.real_if_close(x) is x
    for a in (np.array([5, 3, 6, 2, 1]), np.array([3, 1], np.int8),
              np.array([1 + 2j, 2 - 1j, 3 - 2j, 3 - 3j, 3 + 5j]), np.array([2.0, -1.0], "f4")):
        _same(ng.sort_complex(ng.tensor(a)), np.sort_complex(a))


def test_common_type_and_min_scalar_type():
    f32, i8 = _t(np.ones(2, np.float32)), _t(np.ones(2, np.int8))
    assert ng.common_type(f32) is np.float32 and ng.common_type(i8) is np.float64
    assert ng.common_type(f32, _t(np.ones(1))) is np.float64
    assert ng.common_type(f32, np.ones(1, np.float16)) is np.float32
    with pytest.raises(TypeError, match="common_type"):
        ng.common_type(1.0)
    assert ng.min_scalar_type(10) == np.min_scalar_type(10)
    assert ng.min_scalar_type(_t(np.array(300))) == np.dtype("uint16")
    assert ng.min_scalar_type(_t(np.array([300]))) == np.dtype("int64")
    assert ng.min_scalar_type(-1.5) == np.min_scalar_type(-1.5)


# --- transforms ------------------------------------------------------------------------------
def test_jit_replays_cbrt_polyval_and_convolve():
    p, k = _t(P), _t([0.5, -1.0, 2.0])

    def f(x):
        return ng.convolve(ng.polyval(p, ng.cbrt(x)), k, "same")

    g = ng.jit(f)
    for x in (np.array([1.0, -8.0, 27.0, 0.5]), np.array([2.0, 3.0, -1.0, 4.0])):
        np.testing.assert_allclose(g(_t(x)).numpy(), f(_t(x)).numpy(), rtol=1e-15)
        ref = np.convolve(np.polyval(P, np.cbrt(x)), [0.5, -1.0, 2.0], "same")
        np.testing.assert_allclose(g(_t(x)).numpy(), ref, rtol=1e-14)


def test_vmap_over_convolve_modf_and_vecdot():
    rng = np.random.default_rng(6)
    a, v = rng.standard_normal((3, 6)), rng.standard_normal(3)
    out = ng.vmap(lambda r: ng.convolve(r, _t(v), "valid"))(_t(a))
    np.testing.assert_allclose(out.numpy(), [np.convolve(r, v, "valid") for r in a], rtol=1e-14)
    frac = ng.vmap(lambda r: ng.modf(r)[0])(_t(a * 3))
    np.testing.assert_array_equal(frac.numpy(), np.modf(a * 3)[0])
    dots = ng.vmap(lambda r: ng.vecdot(r[:3], _t(v)))(_t(a))
    np.testing.assert_allclose(dots.numpy(), np.vecdot(a[:, :3], v), rtol=1e-14)
    np.testing.assert_allclose(ng.vmap(ng.cbrt)(_t(a)).numpy(), np.cbrt(a), rtol=1e-15)
    assert math.isfinite(float(ng.vmap(ng.spacing)(_t(a)).numpy()[0, 0]))


def test_polyval_list_coefficients_take_the_tensor_dtype():
    x = ng.tensor(np.array([3.0, -2.0], np.float32))
    y = ng.polyval([1.0, 0.0, -1.0], x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), np.array([8.0, 3.0], np.float32))
    assert ng.polyval(ng.tensor(np.array([1.0, 2.0])), [1, 2]).dtype == np.float64
