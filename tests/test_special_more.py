"""torch.special's Bessel and Airy functions and its orthogonal polynomials against PyTorch:
values in float64 and float32 (edges included), result dtypes, tensor degrees, and the
derivatives nodegrad adds (PyTorch has none) against identities written with torch's own
functions."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
TS = torch.special

EDGES = [0.0, -0.0, 1.0, -1.0, 0.5, math_inf := float("inf"), -math_inf]
GRID = np.concatenate([np.linspace(-6, 6, 61), np.geomspace(1e-6, 40, 25), EDGES])

# torch's Cephes ports lose digits that SciPy keeps (j1(7): 5e-6 relative): compare at that
BESSEL = ["bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_i0",
          "modified_bessel_i1", "modified_bessel_k0", "modified_bessel_k1",
          "scaled_modified_bessel_k0", "scaled_modified_bessel_k1", "spherical_bessel_j0",
          "airy_ai"]


@pytest.mark.parametrize("name", BESSEL)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bessel_and_airy_values_match_torch(name, dtype):
    x = GRID.astype(dtype)
    with np.errstate(all="ignore"):
        got = getattr(ng.special, name)(ng.tensor(x))
    ref = getattr(TS, name)(torch.tensor(x)).numpy()
    assert got.dtype == ref.dtype
    tol = 2e-6 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(got.numpy(), ref, rtol=tol, atol=tol, equal_nan=True)


MPMATH = [  # 17-digit references (mpmath at 30 digits), where torch's float64 is off by ~1e-8
    ("bessel_j0", 7.0, 0.30007927051955559), ("bessel_j1", 7.0, -0.0046828234823458326),
    ("bessel_y0", 7.0, -0.025949743967209266), ("airy_ai", -3.0, -0.37881429367765806),
    ("modified_bessel_k1", 2.5, 0.07389081634774707), ("bessel_y1", 0.3, -2.2931051383885293),
]


@pytest.mark.parametrize(("name", "x", "ref"), MPMATH, ids=[m[0] for m in MPMATH])
def test_float64_values_are_accurate(name, x, ref):
    got = getattr(ng.special, name)(ng.tensor(np.array([x])))
    np.testing.assert_allclose(got.numpy(), [ref], rtol=1e-14)


def test_integer_inputs_give_float32_as_torch():
    i = np.array([1, 2, 3])
    for name in ("bessel_j0", "airy_ai", "modified_bessel_k1"):
        out = getattr(ng.special, name)(ng.tensor(i))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.numpy(), getattr(TS, name)(torch.tensor(i)).numpy(),
                                   rtol=1e-5)


def _grad(f, x):
    t = ng.tensor(x, requires_grad=True)
    f(t).sum().backward()
    return t.grad.numpy()


DERIVATIVES = [  # d/dx f as PyTorch's functions of x
    ("bessel_j0", lambda t: -TS.bessel_j1(t)),
    ("bessel_j1", lambda t: TS.bessel_j0(t) - TS.bessel_j1(t) / t),
    ("bessel_y0", lambda t: -TS.bessel_y1(t)),
    ("bessel_y1", lambda t: TS.bessel_y0(t) - TS.bessel_y1(t) / t),
    ("modified_bessel_i0", lambda t: TS.modified_bessel_i1(t)),
    ("modified_bessel_k0", lambda t: -TS.modified_bessel_k1(t)),
    ("modified_bessel_k1", lambda t: -TS.modified_bessel_k0(t) - TS.modified_bessel_k1(t) / t),
    ("scaled_modified_bessel_k0",
     lambda t: TS.scaled_modified_bessel_k0(t) - TS.scaled_modified_bessel_k1(t)),
    ("scaled_modified_bessel_k1", lambda t: TS.scaled_modified_bessel_k1(t) * (1 - 1 / t)
     - TS.scaled_modified_bessel_k0(t)),
    ("spherical_bessel_j0", lambda t: (torch.cos(t) - torch.sin(t) / t) / t),
]


@pytest.mark.parametrize(("name", "deriv"), DERIVATIVES, ids=[d[0] for d in DERIVATIVES])
def test_bessel_derivatives_match_identities_in_torch(name, deriv):
    x = np.array([0.3, 0.9, 1.7, 2.5, 4.0, 6.5])
    ref = deriv(torch.tensor(x)).numpy()
    np.testing.assert_allclose(_grad(getattr(ng.special, name), x), ref, rtol=1e-6, atol=1e-8)


def test_derivatives_at_zero_and_airy_second_derivative():
    # j1'(0) = 1/2 and j1(x)/x's series where the quotient would be 0/0
    np.testing.assert_allclose(_grad(ng.special.bessel_j1, np.array([0.0, 1e-9])), [0.5, 0.5])
    np.testing.assert_allclose(_grad(ng.special.spherical_bessel_j0, np.array([0.0])), [0.0])
    x = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    # Ai'' = x Ai: the second derivative by grad of grad
    d2 = ng.grad(lambda a: ng.grad(lambda b: ng.special.airy_ai(b).sum())(a).sum())(ng.tensor(x))
    np.testing.assert_allclose(d2.numpy(), x * TS.airy_ai(torch.tensor(x)).numpy(), atol=1e-7)
    h = 1e-6  # Ai' by central differences of torch's Ai
    fd = (TS.airy_ai(torch.tensor(x + h)) - TS.airy_ai(torch.tensor(x - h))).numpy() / (2 * h)
    np.testing.assert_allclose(_grad(ng.special.airy_ai, x), fd, atol=1e-6)


POLYS = ["chebyshev_polynomial_t", "chebyshev_polynomial_u", "chebyshev_polynomial_v",
         "chebyshev_polynomial_w", "shifted_chebyshev_polynomial_t",
         "shifted_chebyshev_polynomial_u", "shifted_chebyshev_polynomial_v",
         "shifted_chebyshev_polynomial_w", "hermite_polynomial_h", "hermite_polynomial_he",
         "laguerre_polynomial_l", "legendre_polynomial_p"]
PX = np.concatenate([np.linspace(-1.5, 1.5, 31), [-1.0, 1.0, 0.0, 0.5, np.inf, -np.inf]])


@pytest.mark.parametrize("name", POLYS)
def test_polynomial_values_match_torch(name):
    f, tf = getattr(ng.special, name), getattr(TS, name)
    for n in (-2, 0, 1, 2, 3, 6, 7, 9, 12, 25):  # the closed forms start past 6 or 8
        for dt, tol in ((np.float64, 1e-11), (np.float32, 1e-4)):
            x = PX.astype(dt)
            with np.errstate(all="ignore"):
                got = f(ng.tensor(x), n)
            ref = tf(torch.tensor(x), n).numpy()
            assert got.dtype == ref.dtype
            np.testing.assert_allclose(got.numpy(), ref, rtol=tol, atol=tol, equal_nan=True,
                                       err_msg=f"{name} n={n} {dt.__name__}")


def test_polynomial_degree_forms_match_torch():
    x = np.linspace(-1.2, 1.2, 7)
    n = np.array([[0], [3], [-1], [11]])
    for name in ("chebyshev_polynomial_u", "hermite_polynomial_he", "laguerre_polynomial_l"):
        f, tf = getattr(ng.special, name), getattr(TS, name)
        np.testing.assert_allclose(f(ng.tensor(x), ng.tensor(n)).numpy(),
                                   tf(torch.tensor(x), torch.tensor(n)).numpy(), rtol=1e-11)
        # a float degree is truncated towards zero; a number x with a tensor of degrees
        np.testing.assert_allclose(f(ng.tensor(x), 2.7).numpy(),
                                   tf(torch.tensor(x), 2.7).numpy(), rtol=1e-12)
        got = f(0.5, ng.tensor(np.array([1, 4])))
        ref = tf(0.5, torch.tensor([1, 4]))
        assert got.dtype == np.float32 and str(ref.dtype) == "torch.float32"
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-6)
    # Hermite's degree cap: NaN past 512 (float64), as torch
    got = ng.special.hermite_polynomial_h(ng.tensor(np.array([0.1])), 513)
    assert np.isnan(got.numpy()).all()
    assert np.isnan(TS.hermite_polynomial_h(torch.tensor([0.1], dtype=torch.float64), 513)).all()


POLY_DERIVS = [  # d/dx P_n as torch polynomials (n = 5)
    ("chebyshev_polynomial_t", lambda t: 5 * TS.chebyshev_polynomial_u(t, 4)),
    ("hermite_polynomial_h", lambda t: 10 * TS.hermite_polynomial_h(t, 4)),
    ("hermite_polynomial_he", lambda t: 5 * TS.hermite_polynomial_he(t, 4)),
    ("laguerre_polynomial_l",
     lambda t: -sum(TS.laguerre_polynomial_l(t, k) for k in range(5))),
    ("legendre_polynomial_p",
     lambda t: sum((2 * k + 1) * TS.legendre_polynomial_p(t, k) for k in (0, 2, 4))),
    ("shifted_chebyshev_polynomial_t", lambda t: 10 * TS.chebyshev_polynomial_u(2 * t - 1, 4)),
    ("chebyshev_polynomial_v",  # V_n = U_n - U_{n-1}; U_n' = ((n+1) T_{n+1} - x U_n)/(x^2 - 1)
     lambda t: sum(s * ((m + 1) * TS.chebyshev_polynomial_t(t, m + 1)
                        - t * TS.chebyshev_polynomial_u(t, m)) / (t * t - 1)
                   for s, m in ((1, 5), (-1, 4)))),
]


@pytest.mark.parametrize(("name", "deriv"), POLY_DERIVS, ids=[d[0] for d in POLY_DERIVS])
def test_polynomial_derivatives_match_identities_in_torch(name, deriv):
    x = np.array([-1.7, -0.6, 0.1, 0.45, 0.8, 1.3])
    f = getattr(ng.special, name)
    np.testing.assert_allclose(_grad(lambda t: f(t, 5), x), deriv(torch.tensor(x)).numpy(),
                               rtol=1e-9, atol=1e-9)


def test_polynomial_second_derivative_and_no_gradient_in_the_degree():
    x = ng.tensor(np.array([0.2, -0.7]))
    # T_3 = 4x^3 - 3x: T_3'' = 24 x
    d2 = ng.grad(lambda a: ng.grad(
        lambda b: ng.special.chebyshev_polynomial_t(b, 3).sum())(a).sum())(x)
    np.testing.assert_allclose(d2.numpy(), 24 * x.numpy())
    n = ng.tensor(np.array([2.0, 3.0]), requires_grad=True)
    out = ng.special.legendre_polynomial_p(x, n)
    out.sum().backward()  # the degree is truncated to an integer: a step, gradient 0
    np.testing.assert_array_equal(n.grad.numpy(), [0.0, 0.0])


def test_polynomials_refuse_bad_arguments():
    with pytest.raises(TypeError, match="chebyshev_polynomial_t: expected input or n"):
        ng.special.chebyshev_polynomial_t(0.5, 3)
    with pytest.raises(TypeError, match="legendre_polynomial_p: n must be a tensor or a real"):
        ng.special.legendre_polynomial_p(ng.tensor([0.5]), "3")
    with pytest.raises(TypeError, match="spherical_bessel_j0: expected a tensor"):
        ng.special.spherical_bessel_j0([0.5])
