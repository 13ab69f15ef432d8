"""Hessian eigenvalues from Hessian-vector products: a quadratic with a known spectrum, a small
network against its full Hessian, saddles, repeated eigenvalues, float32, and bad input."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics.curvature import hessian_eigenvalues, model_hessian_eigenvalues
from nodegrad.nn import functional as F

LAM = np.array([5.0, 3.0, 1.0, 0.5, 0.1, -0.2, -1.5, -4.0])


def _quadratic(seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a = ng.tensor((q * LAM) @ q.T)                                   # spectrum LAM, float64
    return (lambda p: 0.5 * (p["x"] @ (a @ p["x"])) + p["x"].sum()), \
        {"x": ng.tensor(rng.standard_normal(8))}


@pytest.mark.parametrize("which, expected", [("LM", [5.0, -4.0, 3.0]), ("LA", [5.0, 3.0, 1.0]),
                                             ("SA", [-4.0, -1.5, -0.2])])
def test_quadratic_known_spectrum(which, expected):
    f, p = _quadratic()
    got = hessian_eigenvalues(f, p, k=3, which=which)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    got = hessian_eigenvalues(f, p, k=3, which=which, method="power", iters=400, tol=1e-12)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    got = hessian_eigenvalues(f, p, k=3, which=which, hvp="reverse")
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_lanczos_uses_few_products_and_stops_at_tol():
    from nodegrad.diagnostics import curvature

    f, p = _quadratic()
    calls = []
    orig = curvature._HVP.__call__

    def counting(self, v):
        calls.append(1)
        return orig(self, v)

    curvature._HVP.__call__ = counting
    try:
        hessian_eigenvalues(f, p, k=1, iters=30)
    finally:
        curvature._HVP.__call__ = orig
    assert len(calls) <= 8                      # never more than the dimension


def _small_model():
    ng.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = ng.randn(10, 3, dtype=ng.float64)
    y = ng.randn(10, 2, dtype=ng.float64)
    return m, x, y


def _full_hessian(m, x, y):
    names = [n for n, _ in m.named_parameters()]
    shapes = [tuple(p.shape) for p in m.parameters()]
    theta = ng.tensor(np.concatenate([p.numpy().ravel() for p in m.parameters()]))

    def flat(th):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            size = int(np.prod(s))
            ps[n] = th[i:i + size].reshape(s)
            i += size
        return F.mse_loss(ng.func.functional_call(m, ps, x), y)

    return ng.hessian(flat)(theta).numpy()


def test_small_network_matches_its_full_hessian():
    m, x, y = _small_model()
    h = _full_hessian(m, x, y)
    assert h.shape == (26, 26) and np.allclose(h, h.T)
    ev = np.linalg.eigvalsh(h)
    assert ev[0] < -0.1                          # this network is at a saddle, not a minimum
    lm = ev[np.argsort(-np.abs(ev))][:3]
    np.testing.assert_allclose(model_hessian_eigenvalues(m, F.mse_loss, x, y, k=3), lm,
                               rtol=1e-9)
    np.testing.assert_allclose(
        model_hessian_eigenvalues(m, F.mse_loss, x, y, k=2, which="SA"), ev[:2], rtol=1e-9)
    np.testing.assert_allclose(
        model_hessian_eigenvalues(m, F.mse_loss, x, y, k=1, which="LA", hvp="reverse"), ev[-1:],
        rtol=1e-9)
    power = model_hessian_eigenvalues(m, F.mse_loss, x, y, k=2, method="power", iters=500)
    np.testing.assert_allclose(power, lm[:2], rtol=1e-3)
    assert all(p.grad is None for p in m.parameters())


def test_float32_model_is_close_to_float64():
    m, x, y = _small_model()
    top64 = model_hessian_eigenvalues(m, F.mse_loss, x, y, k=2)
    m32 = m.float()
    top32 = model_hessian_eigenvalues(m32, F.mse_loss, x.float(), y.float(), k=2)
    np.testing.assert_allclose(top32, top64, rtol=1e-4)
    # float64 data with a float32 model is cast to the model's dtype
    assert np.allclose(model_hessian_eigenvalues(m32, F.mse_loss, x, y, k=1), top32[:1])


def test_saddle_and_repeated_eigenvalues():
    def saddle(p):
        return p[0] ** 2 - p[1] ** 2                          # Hessian diag(2, -2)

    p = [ng.tensor(0.3, dtype=ng.float64), ng.tensor(-0.1, dtype=ng.float64)]
    assert hessian_eigenvalues(saddle, p, which="SA") == pytest.approx([-2.0])
    assert hessian_eigenvalues(saddle, p, which="LA") == pytest.approx([2.0])
    bowl = {"w": ng.tensor(np.ones((2, 3)))}
    got = hessian_eigenvalues(lambda q: 1.5 * (q["w"] ** 2).sum(), bowl, k=4)
    np.testing.assert_allclose(got, [3.0] * 4)                # a fourfold eigenvalue


def test_linear_function_has_zero_curvature():
    w = {"w": ng.tensor(np.arange(3.0))}
    assert hessian_eigenvalues(lambda q: (q["w"] * 2.0).sum(), w, k=2) == [0.0, 0.0]


def test_logistic_regression_on_mnist1d_is_convex():
    data = ng.data.datasets.mnist1d()
    model = ng.models.create("mnist1d_logreg", seed=0).double()
    x, y = data.x_train[:200], data.y_train[:200]
    top = model_hessian_eigenvalues(model, F.cross_entropy, x, y, k=3, iters=40)
    low = model_hessian_eigenvalues(model, F.cross_entropy, x, y, k=1, which="SA", iters=40)
    assert top[0] > top[1] > top[2] > 0
    assert low[0] > -1e-8                        # softmax cross-entropy is convex in W, b
    power = model_hessian_eigenvalues(model, F.cross_entropy, x, y, k=1, method="power",
                                      iters=300)
    assert power[0] == pytest.approx(top[0], rel=1e-3)


def test_bad_input():
    f, p = _quadratic()
    with pytest.raises(ValueError, match="hessian_eigenvalues: k must be"):
        hessian_eigenvalues(f, p, k=0)
    with pytest.raises(ValueError, match="k=9 but the parameters have only 8"):
        hessian_eigenvalues(f, p, k=9)
    with pytest.raises(ValueError, match="method must be one of lanczos, power"):
        hessian_eigenvalues(f, p, method="qr")
    with pytest.raises(ValueError, match="which must be 'LM'"):
        hessian_eigenvalues(f, p, which="BE")
    with pytest.raises(ng.GradError, match="must return a scalar"):
        hessian_eigenvalues(lambda q: q["x"] * 2, p)
    with pytest.raises(TypeError, match="tree of tensors"):
        hessian_eigenvalues(f, {"x": "abc"})
    with pytest.raises(TypeError, match="model_hessian_eigenvalues: expected an nn.Module"):
        model_hessian_eigenvalues(lambda t: t, F.mse_loss, ng.ones(2), ng.ones(2))
