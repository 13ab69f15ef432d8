"""Elementwise math and ``torch.special`` functions against PyTorch: values (signs of zero,
NaN), gradients at edge points, and the operands PyTorch refuses."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _same(a, b):
    """Equal values, NaN where NaN, and the same sign on every zero."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def _grads(name, *arrays):
    """The gradients of sum(f(*arrays)) for ``name`` in torch and in nodegrad (float64)."""
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    getattr(torch, name)(*ts).sum().backward()
    ns = [ng.tensor(a, requires_grad=True) for a in arrays]
    getattr(ng, name)(*ns).sum().backward()
    return [t.grad.numpy() for t in ts], [n.grad.numpy() for n in ns]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erfinv_keeps_the_sign_of_zero(dtype):
    x = np.array([-0.0, 0.0, -0.5, 0.5, 1.0, -1.0], dtype=dtype)
    _same(ng.erfinv(ng.tensor(x)).numpy(), torch.erfinv(torch.tensor(x)).numpy())
    _same(ng.special.erfinv(ng.tensor(x)).numpy(),
          torch.special.erfinv(torch.tensor(x)).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divisor", [3.0, -3.0, 2.0, -2.0])
def test_remainder_zero_has_the_sign_of_the_dividend(dtype, divisor):
    x = np.array([0.0, -0.0, 4.0, -4.0, 6.0, -6.0, 1.0, -1.0], dtype=dtype)
    y = np.full_like(x, divisor)
    _same(ng.remainder(ng.tensor(x), ng.tensor(y)).numpy(),
          torch.remainder(torch.tensor(x), torch.tensor(y)).numpy())
    _same(ng.remainder(ng.tensor(x), divisor).numpy(),
          torch.remainder(torch.tensor(x), divisor).numpy())
    _same((ng.tensor(x) % divisor).numpy(), (torch.tensor(x) % divisor).numpy())


def test_nextafter_gradient_is_zero_where_x_equals_y():
    x = np.array([-3.5, 1.0, 0.0, -0.0, 2.0, np.inf, np.nan, 5.0])
    y = np.array([-3.5, 2.0, -0.0, 0.0, np.nan, np.inf, np.nan, 5.0 + 1e-15])
    want, got = _grads("nextafter", x, y)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("other", [np.array([True, False]), True])
def test_subtract_refuses_two_bools(other):
    mask = np.array([True, False])
    for a, b in ((mask, other), (other, mask)):
        ta = torch.tensor(a) if isinstance(a, np.ndarray) else a
        tb = torch.tensor(b) if isinstance(b, np.ndarray) else b
        with pytest.raises(RuntimeError):
            torch.sub(ta, tb)
        na = ng.tensor(a) if isinstance(a, np.ndarray) else a
        nb = ng.tensor(b) if isinstance(b, np.ndarray) else b
        with pytest.raises(ng.errors.DTypeError, match="subtract"):
            ng.subtract(na, nb)


@pytest.mark.parametrize("other", [np.array([1.0, 2.0]), np.array([1, 2]), 2.5, 3])
def test_subtract_counts_a_bool_operand_with_a_number_as_0_or_1(other):
    """nodegrad's documented answer where PyTorch refuses (``1 - done`` of a bool mask)."""
    mask = np.array([True, False])
    for a, b in ((mask, other), (other, mask)):
        na = ng.tensor(a) if isinstance(a, np.ndarray) else a
        nb = ng.tensor(b) if isinstance(b, np.ndarray) else b
        want = torch.sub(torch.tensor(np.asarray(a) * 1 if np.asarray(a).dtype == bool else a),
                         torch.tensor(np.asarray(b) * 1 if np.asarray(b).dtype == bool else b))
        np.testing.assert_array_equal(ng.subtract(na, nb).numpy(), want.numpy())


@pytest.mark.parametrize("name", ["floor_divide", "fmod", "remainder"])
@pytest.mark.parametrize("shape", [(0,), (0, 3), (2, 0)])
def test_integer_division_of_an_empty_tensor_by_zero_is_empty(name, shape):
    x = np.zeros(shape, dtype=np.int64)
    y = np.zeros((1,), dtype=np.int64)
    want = getattr(torch, name)(torch.tensor(x), torch.tensor(y)).numpy()
    got = getattr(ng, name)(ng.tensor(x), ng.tensor(y)).numpy()
    assert got.shape == want.shape and got.dtype == want.dtype
    with pytest.raises(ZeroDivisionError):
        getattr(ng, name)(ng.tensor(np.ones(3, dtype=np.int64)), ng.tensor(y))


def test_fmod_refuses_two_bools():
    a, b = np.array([True, False]), np.array([True, True])
    with pytest.raises(NotImplementedError):
        torch.fmod(torch.tensor(a), torch.tensor(b))
    with pytest.raises(ng.errors.DTypeError, match="fmod"):
        ng.fmod(ng.tensor(a), ng.tensor(b))
    _same(ng.fmod(ng.tensor(a), ng.tensor(np.array([2, 2]))).numpy(),
          torch.fmod(torch.tensor(a), torch.tensor(np.array([2, 2]))).numpy())


@pytest.mark.parametrize("kw", [{"atol": float("inf")}, {"rtol": float("inf")},
                                {"atol": float("inf"), "equal_nan": True}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isclose_with_an_infinite_tolerance_keeps_inf_close_only_to_itself(kw, dtype):
    a = np.array([np.inf, -np.inf, np.inf, 1.0, np.nan, np.nan, 1e30], dtype=dtype)
    b = np.array([1e-8, -89.0, np.inf, -np.inf, np.nan, 2.0, -1e30], dtype=dtype)
    want = torch.isclose(torch.tensor(a), torch.tensor(b), **kw).numpy()
    np.testing.assert_array_equal(ng.isclose(ng.tensor(a), ng.tensor(b), **kw).numpy(), want)
    assert ng.allclose(ng.tensor(a[:1]), ng.tensor(b[:1]), **kw) is torch.allclose(
        torch.tensor(a[:1]), torch.tensor(b[:1]), **kw)


@pytest.mark.parametrize("decimals", [1, 2, 3, 5, -1, -2])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_decimals_of_half_precision_works_in_float32(dtype, decimals):
    x = np.array([1.2345, 65.43, 123.456, -0.125, 0.0049, 6000.5, 60000.0, -0.0], np.float32)
    want = torch.round(torch.tensor(x).to(getattr(torch, dtype)), decimals=decimals)
    got = ng.round(ng.astype(ng.tensor(x), getattr(ng, dtype)), decimals=decimals)
    assert str(got.dtype) == dtype
    _same(ng.astype(got, ng.float32).numpy(), want.float().numpy())
    _same(ng.astype(ng.special.round(ng.astype(ng.tensor(x), getattr(ng, dtype)),
                                     decimals=decimals), ng.float32).numpy(),
          want.float().numpy())


@pytest.mark.parametrize("name,kw", [
    *[(n, k) for n in ("entr", "erfcx", "i0e", "i1", "i1e", "ndtr", "ndtri", "log_ndtr",
                       "bessel_j0", "bessel_y1", "modified_bessel_i0", "modified_bessel_k1")
      for k in ("input", "x")],
    *[(n, "x") for n in ("scaled_modified_bessel_k0", "scaled_modified_bessel_k1", "airy_ai",
                         "spherical_bessel_j0")],
])
def test_special_functions_take_pytorchs_keyword(name, kw):
    x = np.array([0.3, 0.6])
    want = getattr(torch.special, name)(**{kw: torch.tensor(x)}).numpy()
    np.testing.assert_allclose(getattr(ng.special, name)(**{kw: ng.tensor(x)}).numpy(), want,
                               rtol=1e-6)


@pytest.mark.parametrize("name,kw", [
    ("xlog1py", {"input": np.array([0.3, 0.6]), "other": np.array([0.5, 2.0])}),
    ("zeta", {"input": np.array([2.3, 3.6]), "other": np.array([0.5, 2.0])}),
    ("chebyshev_polynomial_t", {"x": np.array([0.3, 0.6]), "n": np.array([2.0, 3.0])}),
    ("hermite_polynomial_he", {"x": np.array([0.3, 0.6]), "n": np.array([2.0, 3.0])}),
    ("legendre_polynomial_p", {"x": np.array([0.3, 0.6]), "n": np.array([2.0, 3.0])}),
])
def test_special_binary_functions_take_pytorchs_keywords(name, kw):
    want = getattr(torch.special, name)(**{k: torch.tensor(v) for k, v in kw.items()})
    got = getattr(ng.special, name)(**{k: ng.tensor(v) for k, v in kw.items()})
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10)


def test_special_softmax_takes_dtype_positionally():
    x = np.array([[0.3, 0.6], [1.0, -2.0]], np.float32)
    want = torch.special.softmax(torch.tensor(x), 1, torch.float64)
    got = ng.special.softmax(ng.tensor(x), 1, ng.float64)
    assert got.dtype == ng.float64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


def test_negating_a_bool_tensor_is_refused_naming_the_op():
    with pytest.raises(RuntimeError):
        torch.neg(torch.tensor([True, False]))
    for f in (ng.neg, ng.negative, lambda t: -t):
        with pytest.raises(ng.errors.DTypeError, match="negative"):
            f(ng.tensor(np.array([True, False])))
