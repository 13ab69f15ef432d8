"""Edge values where a naive rule gives NaN or a wrong sign: PyTorch's numbers instead.

std of a constant, ``x ** 0`` at 0, and variances with ``correction >= N``; each forward and
gradient against PyTorch.
"""

import warnings

import numpy as np
import pytest

import nodegrad as ng


def _both(fn_ng, fn_torch, x, cotangent=None):
    """Values and gradients of ``fn`` in nodegrad and PyTorch (float64)."""
    torch = pytest.importorskip("torch")
    xo, xt = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degrees of freedom <= 0, 0 / 0
        yo, yt = fn_ng(xo), fn_torch(xt)
        v = np.ones(yo.shape) if cotangent is None else cotangent
        yo.backward(ng.tensor(v))
        yt.backward(torch.tensor(v))
    return yo.numpy(), yt.detach().numpy(), xo.grad.numpy(), xt.grad.numpy()


def _same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert (np.signbit(a) == np.signbit(b)).all(), (a, b)  # no -0.0 where torch has 0.0


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("correction", [0, 1])
def test_std_of_a_constant_has_gradient_zero(axis, correction):
    x = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])
    if axis == 0:
        x = x.T.copy()
    kw = {} if axis is None else {"dim": axis}
    yo, yt, go, gt = _both(lambda t: t.std(correction=correction, **kw),
                           lambda t: t.std(correction=correction, **kw), x)
    _same(yo, yt)
    _same(go, gt)
    assert np.isfinite(go).all()


def test_std_of_an_exact_constant_is_zero_with_zero_gradient_at_higher_order():
    x = ng.tensor([3.0, 3.0, 3.0, 3.0], requires_grad=True)
    s = ng.std(x)
    (g,) = ng.autodiff.grad(s, [x], create_graph=True)
    assert s.item() == 0.0 and (g.numpy() == 0).all()
    assert ng.gradcheck(lambda a: ng.std(a, 0, 1), np.array([[1.0, 3.0], [2.0, 5.0]]), order=2)


@pytest.mark.parametrize("x", [[0.0, 1.0, -2.0], [0.0, 0.0]])
def test_power_zero_at_zero_has_gradient_zero(x):
    torch = pytest.importorskip("torch")
    x = np.array(x)
    yo, yt, go, gt = _both(lambda t: t ** 0, lambda t: t ** 0, x)
    _same(yo, yt)
    _same(go, gt)
    # a tensor exponent: 0 where the exponent is 0, also at x = 0; y's gradient as torch
    y = np.array([0.0, 0.0, 1.0])[: len(x)]
    yo_, yt_ = ng.tensor(y, requires_grad=True), torch.tensor(y, requires_grad=True)
    _, _, go, gt = _both(lambda t: t ** yo_, lambda t: t ** yt_, x)
    _same(go, gt)
    np.testing.assert_allclose(yo_.grad.numpy(), yt_.grad.numpy())
    # finite and exact at second order where the exponent is 0 but x is not
    assert ng.gradcheck(lambda a, b: a ** b, np.array([0.5, 2.0]), np.array([0.0, 0.0]),
                        order=2)
    assert ng.gradcheck(lambda a: a ** 0, np.array([0.0, 1.5]), order=2)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("correction", [3, 4, 5])
@pytest.mark.parametrize("fn", ["var", "std"])
def test_variance_with_correction_at_least_n_is_inf_or_nan(fn, correction):
    """N = 3 values: dividing by max(N - correction, 0) = 0 gives inf, or NaN for a constant,
    as PyTorch, never -2.33 or -0.0; the gradient is non-finite, never a plausible number."""
    x = np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 2.0]])
    yo, yt, go, gt = _both(lambda t: getattr(t, fn)(dim=1, correction=correction),
                           lambda t: getattr(t, fn)(dim=1, correction=correction), x)
    np.testing.assert_array_equal(yo, [np.inf, np.nan])
    np.testing.assert_array_equal(yo, yt)
    assert not np.isfinite(go).any()
    if correction == 3:  # for correction > N along a dim torch's rule 2 / (N - c) gives
        np.testing.assert_array_equal(go, gt)  # finite gradients of an inf; we keep inf
    # the whole tensor: same values; the gradient is inf * (x - mean) (torch: +inf everywhere)
    for row in x:
        yo, yt, go, _ = _both(lambda t: getattr(t, fn)(correction=correction),
                              lambda t: getattr(t, fn)(correction=correction), row)
        np.testing.assert_array_equal(yo, yt)
        assert not np.isfinite(go).any()
    with pytest.warns(RuntimeWarning, match=r"var: ddof \(correction\) 4 leaves -1 degrees"):
        ng.tensor([1.0, 2.0, 4.0]).var(correction=4)


def test_variance_with_correction_at_least_n_inside_vmap():
    x = ng.tensor([[1.0, 2.0, 4.0], [2.0, 2.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(ng.vmap(lambda r: ng.var(r, ddof=5))(x).numpy(),
                                      [np.inf, np.nan])
        g = ng.vmap(ng.grad(lambda r: ng.var(r, ddof=3)))(x).numpy()
    np.testing.assert_array_equal(g, [[-np.inf, -np.inf, np.inf], [np.nan] * 3])


def test_elementwise_primitives_take_python_numbers_like_the_rest():
    import math

    for f, ref in ((ng.erf, math.erf(0.5)), (ng.gelu, 0.5 * 0.5 * (1 + math.erf(0.5 / 2 ** 0.5))),
                   (ng.exp, math.exp(0.5))):
        out = f(0.5)  # erf and gelu asked a backend of a Python float (a DeviceError)
        assert out.dtype == ng.float32 and abs(out.item() - ref) < 1e-6


def test_float16_sums_accumulate_in_float32_as_torch():
    """A float16 sum or running sum adds in float32 and rounds once, as PyTorch's: NumPy's
    float16 accumulator stalls (10,000 times 0.1 down a column gave 256, not 1000)."""
    torch = pytest.importorskip("torch")
    v = np.full((10000, 3), 0.1, np.float16)
    x, t = ng.tensor(v), torch.tensor(v)
    pairs = [(x.sum(0), t.sum(0)), (x.sum(), t.sum()), (x.cumsum(0), t.cumsum(0)),
             (ng.jit(lambda a: (a * 2).sum(0))(x), (t * 2).sum(0)),
             (x[:20].cumprod(0), t[:20].cumprod(0))]
    for got, want in pairs:
        assert got.dtype == ng.float16
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_round_to_decimals_as_torch():
    torch = pytest.importorskip("torch")
    x = [1.2345, 2.5555, 1234.5, 1250.0, -0.125, 0.5, 1.5]
    for d in (0, 1, 2, -1, -2):
        want = torch.round(torch.tensor(x), decimals=d).numpy()
        np.testing.assert_array_equal(ng.round(ng.tensor(x), decimals=d).numpy(), want)
        np.testing.assert_array_equal(ng.tensor(x).round(decimals=d).numpy(), want)
    with pytest.raises(TypeError, match="decimals must be an int"):
        ng.round(ng.tensor(x), decimals=1.5)


def test_torch_method_forms_dtype_flip_and_keepdim():
    """x.sum/mean/prod/cumsum/cumprod take PyTorch's dtype= (the input cast first), x.flip
    its dims as several arguments, and x.std(dim, keepdim=True) PyTorch's correction=1 (it
    silently used NumPy's ddof=0: keepdim= is PyTorch's own keyword)."""
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).standard_normal((3, 4))
    x, t = ng.tensor(a), torch.tensor(a)
    for name, args in [("sum", (1,)), ("mean", (0,)), ("prod", (1,)), ("cumsum", (1,)),
                       ("cumprod", (0,))]:
        got = getattr(x, name)(*args, dtype=ng.float32)
        want = getattr(t, name)(*args, dtype=torch.float32)
        assert got.dtype == ng.float32
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(x.flip(0, 1).numpy(), t.flip(0, 1).numpy())
    for f in ("std", "var"):
        np.testing.assert_allclose(getattr(x, f)(1, keepdim=True).numpy(),
                                   getattr(t, f)(1, keepdim=True).numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.std(1).numpy(), t.std(1).numpy(), rtol=1e-12)  # PyTorch's
    np.testing.assert_allclose(x.std(axis=1).numpy(), np.std(a, 1), rtol=1e-12)  # NumPy's


def test_method_keywords_as_torch():
    """PyTorch's keyword and argument forms of common methods: unsqueeze(dim=), permute(dims=),
    transpose(dim0=, dim1=), split(split_size=), add/sub(alpha=), pow(exponent=),
    lerp(end=, weight=), and x.max(y)/x.min(y) elementwise (each raised)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    forms = [lambda t: t.unsqueeze(dim=0), lambda t: t.permute(dims=(1, 0, 2)),
             lambda t: t.transpose(dim0=0, dim1=2), lambda t: t.split(split_size=2, dim=2)[1],
             lambda t: t.sub(t * 3, alpha=2), lambda t: t.add(1.0, alpha=3),
             lambda t: t.pow(exponent=2), lambda t: t.lerp(end=t * 2, weight=0.3),
             lambda t: t.max(t * 0.5), lambda t: t.min(t * 0.5)]
    for f in forms:
        np.testing.assert_allclose(f(ng.tensor(x)).numpy(), f(torch.tensor(x)).numpy(),
                                   rtol=1e-12)
    y = ng.tensor(x.copy())
    y.add_(ng.tensor(x), alpha=2)
    np.testing.assert_allclose(y.numpy(), 3 * x, rtol=1e-12)
    with pytest.raises(ng.DTypeError, match="alpha must not be a float"):
        ng.tensor([1, 2]).add(ng.tensor([1, 1]), alpha=0.5)
