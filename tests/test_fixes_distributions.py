"""Regression tests for nodegrad.distributions: Student's t at large degrees of freedom,
Poisson, Binomial, NegativeBinomial, Gamma, Beta and Dirichlet log_prob and the Gamma, Beta
and Dirichlet entropies at large counts and shapes (saddle-point and series forms),
enumerate_support on every distribution and on Independent, shapes given as non-integers or
negative sizes, MixtureSameFamily whose mixture and component batch shapes differ, and
Multinomial sampling. References are PyTorch (float64), mpmath and closed forms."""

import math

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.distributions as D

torch = pytest.importorskip("torch")
TD = torch.distributions


def _t(x):
    return ng.tensor(np.asarray(x, dtype=np.float64))


# --- StudentT: log_prob and entropy without the cancellation of two huge lgamma values ------
def test_student_t_large_df_tends_to_the_normal():
    # at df >= 1e12 the t density differs from the normal one by O(1/df); lgamma(df/2) is
    # ~1e16 there, so lgamma(df/2) - lgamma((df+1)/2) lost everything (1e15 gave log_prob +1.5
    # instead of -1.42, a density above one)
    df = _t([1e12, 1e15, 1e20, 1e100])
    scale = 2.0
    d = D.StudentT(df, 0.5, scale)
    n = D.Normal(_t(0.5), _t(scale))
    x = _t(1.25)
    np.testing.assert_allclose(d.log_prob(x).numpy(), n.log_prob(x).numpy().repeat(4),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(d.entropy().numpy(), n.entropy().numpy().repeat(4),
                               rtol=0, atol=1e-10)


def test_student_t_matches_torch_across_the_series_threshold():
    df = np.array([0.3, 1.0, 3.0, 20.0, 49.9, 50.0, 50.1, 80.0, 300.0])
    x = np.array([-2.0, 0.3, 1.7])[:, None]
    dn = ng.tensor(df, requires_grad=True)
    dt = torch.tensor(df, requires_grad=True)
    lp_n = D.StudentT(dn, 0.2, 1.5).log_prob(_t(x))
    lp_t = TD.StudentT(dt, 0.2, 1.5).log_prob(torch.tensor(x))
    np.testing.assert_allclose(lp_n.detach().numpy(), lp_t.detach().numpy(), rtol=1e-12)
    (gn,) = ng.autodiff.grad(lp_n.sum(), [dn])
    (gt,) = torch.autograd.grad(lp_t.sum(), [dt])
    np.testing.assert_allclose(gn.numpy(), gt.numpy(), rtol=1e-9, atol=1e-15)
    h_n = D.StudentT(dn, 0.2, 1.5).entropy()
    h_t = TD.StudentT(dt, 0.2, 1.5).entropy()
    np.testing.assert_allclose(h_n.detach().numpy(), h_t.detach().numpy(), rtol=1e-12)
    (gn,) = ng.autodiff.grad(h_n.sum(), [dn])
    (gt,) = torch.autograd.grad(h_t.sum(), [dt])
    # torch's trigamma is good to ~2e-9 here (df = 3: -0.123201467217 against the true
    # -0.123201467030)
    np.testing.assert_allclose(gn.numpy(), gt.numpy(), rtol=1e-8, atol=1e-15)


def test_student_t_large_df_entropy_gradient_is_the_series_one():
    # d/d(df) of the entropy is -1/df^2 (1 + O(1/df)): torch's digamma difference is noise here
    df = ng.tensor(np.array([1e4, 1e8]), requires_grad=True)
    (g,) = ng.autodiff.grad(D.StudentT(df).entropy().sum(), [df])
    np.testing.assert_allclose(g.numpy(), -1.0 / np.array([1e4, 1e8]) ** 2, rtol=2e-4)


def test_student_t_float32_large_df():
    # float32 lost it from df ~ 1e6 (log_prob(1) was -1.5, not -1.4189; torch gives the same)
    d = D.StudentT(ng.tensor([1e6, 1e8, 1e15], dtype=ng.float32))
    h = d.entropy()
    lp = d.log_prob(ng.tensor(1.0, dtype=ng.float32))
    assert h.dtype == lp.dtype == ng.float32
    np.testing.assert_allclose(h.numpy(), 0.5 * math.log(2 * math.pi * math.e), rtol=1e-6)
    np.testing.assert_allclose(lp.numpy(), -0.5 - 0.5 * math.log(2 * math.pi), rtol=1e-6)


# --- Poisson, Binomial, Gamma: log_prob without lgamma cancellation ------------------------
mp = pytest.importorskip("mpmath")
mp.mp.dps = 40


def _mp_poisson(k, m):
    k, m = mp.mpf(float(k)), mp.mpf(float(m))
    return float(k * mp.log(m) - m - mp.loggamma(k + 1))


def _mp_gamma(x, a, b):
    x, a, b = (mp.mpf(float(v)) for v in (x, a, b))
    return float(a * mp.log(b) + (a - 1) * mp.log(x) - b * x - mp.loggamma(a))


def _mp_binomial(k, n, p):
    k, n, p = (mp.mpf(float(v)) for v in (k, n, p))
    out = mp.loggamma(n + 1) - mp.loggamma(k + 1) - mp.loggamma(n - k + 1)
    return float(out + (k * mp.log(p) if k else 0) + ((n - k) * mp.log1p(-p) if n > k else 0))


# relative to max(1, |log_prob|); in float32 the rounding of the inputs themselves moves these
# log densities by up to ~2e-5 (|d log_prob / dx| * ulp(x) at shape 1e6), the old forms by 1e-2
_TOL = {np.float32: 3e-5, np.float64: 1e-13}


def _check(got, ref, dtype):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref)
    assert np.all(np.abs(got - ref) <= _TOL[dtype] * np.maximum(1, np.abs(ref))), (got, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_poisson_log_prob_large_rate(dtype):
    # float32 gave -7.0 for rate = k = 1e6 (true -7.8267), float64 was good to 1e-8 only
    rate = np.array([1e6, 1e6, 1e9, 1e9, 3.5, 3.5], dtype=dtype)
    k = np.array([1e6, 1003000, 1e9, 999940032, 0, 7], dtype=dtype)
    got = D.Poisson(ng.tensor(rate)).log_prob(ng.tensor(k))
    assert str(got.dtype) == np.dtype(dtype).name
    _check(got.numpy(), [_mp_poisson(a, b) for a, b in zip(k, rate)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gamma_log_prob_large_concentration(dtype):
    # float32 gave 4.75 at concentration = rate = 1e5, x = 1 (true 4.8375)
    big = 1e9 if dtype == np.float64 else 1e7  # float32 holds neither 1e9 - 1 nor its b x
    a = np.array([1e5, 1e6, big, 2.0, 0.5, 30.0], dtype=dtype)
    b = np.array([1e5, 2e6, big, 3.0, 2.0, 7.0], dtype=dtype)
    x = np.array([1.0, 0.5005, 1.00002, 0.2, 0.3, 4.0], dtype=dtype)
    got = D.Gamma(ng.tensor(a), ng.tensor(b)).log_prob(ng.tensor(x)).numpy()
    _check(got, [_mp_gamma(*v) for v in zip(x, a, b)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binomial_log_prob_large_count(dtype):
    # float32 was off by 0.13 at n = 1e6, k = n / 2 and by O(n eps) at k = 0 and k = n
    n = np.array([1e6, 1e6, 1e6, 1e6, 1e9, 1e9, 10.0, 10.0], dtype=dtype)
    p = np.array([0.5, 0.25, 0.25, 0.25, 0.5, 0.001, 0.3, 0.3], dtype=dtype)
    k = np.array([5e5, 0, 1, 1e6, 5e8, 1000300, 0, 4], dtype=dtype)
    got = D.Binomial(ng.tensor(n), ng.tensor(p)).log_prob(ng.tensor(k)).numpy()
    # the reference takes p as the sigmoid of the logits the distribution works with
    pl = 1 / (1 + np.exp(-np.log(p.astype(np.float64) / (1 - p.astype(np.float64)))))
    _check(got, [_mp_binomial(a, b, c) for a, b, c in zip(k, n, pl)], dtype)


def _mp_negbin(k, r, p):
    k, r, p = (mp.mpf(float(v)) for v in (k, r, p))
    return float(mp.loggamma(k + r) - mp.loggamma(r) - mp.loggamma(k + 1) + r * mp.log1p(-p)
                 + k * mp.log(p))


def _mp_beta(x, a, b):
    x, a, b = (mp.mpf(float(v)) for v in (x, a, b))
    return float((a - 1) * mp.log(x) + (b - 1) * mp.log1p(-x) - mp.log(mp.beta(a, b)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_binomial_log_prob_large_count(dtype):
    # float32 gave -7.375 at r = k = 1e6, p = 1/2 (true -8.1733) and +896 at r = k = 1e9
    r = np.array([1e6, 1e9, 5.0, 0.5, 3.0], dtype=dtype)
    p = np.array([0.5, 0.5, 0.5, 0.999, 0.25], dtype=dtype)
    k = np.array([1e6, 1e9, 3.0, 400.0, 0.0], dtype=dtype)
    got = D.NegativeBinomial(ng.tensor(r), ng.tensor(p)).log_prob(ng.tensor(k)).numpy()
    _check(got, [_mp_negbin(*v) for v in zip(k, r, p)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_beta_log_prob_large_concentration(dtype):
    # float32 gave 6 at a = b = 1e6, x = 1/2 (true 7.0285) and 0 at a = b = 1e9 (true 10.48)
    a = np.array([1e6, 1e9, 1e5, 2.0, 3.0, 0.5], dtype=dtype)
    b = np.array([1e6, 1e9, 3e5, 3.0, 1e6, 0.7], dtype=dtype)
    x = np.array([0.5, 0.5, 0.25, 0.3, 1e-6, 0.2], dtype=dtype)
    got = D.Beta(ng.tensor(a), ng.tensor(b)).log_prob(ng.tensor(x)).numpy()
    _check(got, [_mp_beta(*v) for v in zip(x, a, b)], dtype)


def _mp_dirichlet(x, c):
    c = [mp.mpf(float(v)) for v in c]
    x = [mp.mpf(float(v)) for v in x]
    return float(mp.loggamma(sum(c)) - sum(mp.loggamma(v) for v in c)
                 + sum((ci - 1) * mp.log(xi) for ci, xi in zip(c, x)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dirichlet_log_prob_large_concentration(dtype):
    # float32 gave 8 for 15.56 at concentration (1, 2, 3) * 1e6; x = (1/4, 1/4, 1/2) is exact
    c = np.array([[1e6, 1e6, 2e6], [1e4, 1e4, 2e4], [2.0, 3.0, 1.5], [0.5, 2.0, 3.0]],
                 dtype=dtype)
    x = np.array([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]],
                 dtype=dtype)
    got = D.Dirichlet(ng.tensor(c)).log_prob(ng.tensor(x)).numpy()
    _check(got, [_mp_dirichlet(*v) for v in zip(x, c)], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gamma_beta_dirichlet_entropy_large_concentration(dtype):
    # float32 Gamma(1e6, 2.5e6).entropy() was off by 0.4, Beta(1e6, 2.5e6) by 1.1, Dirichlet
    # by 6.6; float64 by up to 1e-5 at 1e9
    a = np.array([0.5, 5.0, 20.0, 1e2, 1e4, 1e6, 1e9], dtype=dtype)
    b = (2.5 * a).astype(dtype)
    c = np.stack([a, 2 * a, 3 * a], -1).astype(dtype)

    def ent_gamma(a, b):
        a, b = mp.mpf(float(a)), mp.mpf(float(b))
        return float(a - mp.log(b) + mp.loggamma(a) + (1 - a) * mp.digamma(a))

    def ent_dirichlet(c):
        c = [mp.mpf(float(v)) for v in c]
        a0, k = sum(c), len(c)
        return float(sum(mp.loggamma(v) for v in c) - mp.loggamma(a0)
                     - (k - a0) * mp.digamma(a0) - sum((v - 1) * mp.digamma(v) for v in c))

    tol = {np.float32: 2e-6, np.float64: 1e-13}[dtype]
    got = D.Gamma(ng.tensor(a), ng.tensor(b)).entropy().numpy()
    np.testing.assert_allclose(got, [ent_gamma(*v) for v in zip(a, b)], rtol=0, atol=tol)
    got = D.Beta(ng.tensor(a), ng.tensor(b)).entropy().numpy()
    ref = [ent_dirichlet(v) for v in zip(a, b)]
    np.testing.assert_allclose(got, ref, rtol=0, atol=5 * tol)
    got = D.Dirichlet(ng.tensor(c)).entropy().numpy()
    np.testing.assert_allclose(got, [ent_dirichlet(v) for v in c], rtol=0, atol=20 * tol)


def test_count_log_probs_match_torch_values_and_gradients():
    # moderate parameters (where the plain lgamma form is accurate), the support's edges and,
    # without validation, values outside it: the same numbers and gradients as PyTorch
    rate = np.array([0.0, 0.5, 3.0, 40.0, 200.0, 3.0])
    kp = np.array([0.0, 1.0, 0.0, 38.0, 190.0, -1.5])
    n = np.array([0.0, 5.0, 10.0, 10.0, 50.0, 7.0, 7.0])
    kb = np.array([0.0, 0.0, 10.0, 3.0, 25.0, 8.0, 2.5])
    logits = np.array([0.3, -1.0, 2.0, 0.1, -0.4, 0.2, 1.5])
    a = np.array([0.5, 1.0, 1.9, 2.0, 2.5, 30.0, 300.0, 3.0])
    b = np.array([1.5, 0.7, 2.0, 1.0, 1.2, 0.9, 1.1, 2.0])
    x = np.array([0.3, 1.0, 2.0, 0.0, 1e-300, 5.0, 250.0, -1.0])

    r = np.array([5.0, 10.0, 3.5, 0.5, 40.0, 2.0])
    kn = np.array([0.0, 10.0, 3.0, 1.0, 60.0, 1.5])
    nl = np.array([0.2, -0.3, 1.0, 2.5, -1.5, 0.1])
    a1 = np.array([0.5, 1.0, 2.0, 2.5, 30.0, 3.0, 2.0])
    a0 = np.array([0.7, 2.0, 2.0, 1.5, 40.0, 300.0, 2.0])
    xb = np.array([0.3, 1.0, 0.0, 0.9, 0.45, 1e-300, 1 - 1e-16])
    dc = np.array([[0.5, 2.0, 3.0], [25.0, 30.0, 40.0], [20.0, 20.0, 300.0], [1.0, 1.0, 1.0],
                   [100.0, 0.5, 3.0]])
    dx = np.array([[0.2, 0.3, 0.5], [0.25, 0.25, 0.5], [0.1, 0.2, 0.7], [0.0, 0.5, 0.5],
                   [0.6, 0.1, 0.3]])
    params = (rate, n, logits, a, b, r, nl, a1, a0, dc)

    def build(lib, t):
        return [lib.Poisson(t(rate), validate_args=False).log_prob(t(kp)),
                lib.Binomial(t(n), logits=t(logits), validate_args=False).log_prob(t(kb)),
                lib.Gamma(t(a), t(b), validate_args=False).log_prob(t(x)),
                lib.NegativeBinomial(t(r), logits=t(nl), validate_args=False).log_prob(t(kn)),
                lib.Beta(t(a1), t(a0), validate_args=False).log_prob(t(xb)),
                lib.Dirichlet(t(dc), validate_args=False).log_prob(t(dx)),
                lib.Gamma(t(a), t(b)).entropy(), lib.Beta(t(a1), t(a0)).entropy(),
                lib.Dirichlet(t(dc)).entropy()]

    ours = [ng.tensor(v, requires_grad=True) for v in params]
    theirs = [torch.tensor(v, requires_grad=True) for v in params]
    it_o, it_t = iter(ours), iter(theirs)
    lo = {id(v): next(it_o) for v in params}
    lt = {id(v): next(it_t) for v in params}
    got = build(D, lambda v: lo.get(id(v), ng.tensor(v)))
    ref = build(TD, lambda v: lt.get(id(v), torch.tensor(v)))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.detach().numpy(), r.detach().numpy(), rtol=1e-12,
                                   atol=1e-12)
    w = [np.linspace(0.5, 1.5, g.shape[0]) for g in got]  # weights for the gradients
    gs = ng.autodiff.grad(sum((g * ng.tensor(wi)).sum() for g, wi in zip(got, w)), ours)
    rs = torch.autograd.grad(sum((r * torch.tensor(wi)).sum() for r, wi in zip(ref, w)),
                             theirs)
    for g, r in zip(gs, rs):
        ok = np.isfinite(r.numpy())  # torch: nan at rate 0 (0 * inf), ours 0 there
        # the entropies' gradients go through trigamma, torch's good to ~1e-9 relative
        np.testing.assert_allclose(g.numpy()[ok], r.numpy()[ok], rtol=1e-8, atol=1e-12)


def test_binomial_total_count_gradient_at_the_support_edges():
    # d/dn at fixed k = n is digamma(n + 1) - digamma(1) + log(1 - p), not log(1 - p)
    n = ng.tensor(np.array([4.0, 12.0]), requires_grad=True)
    lp = D.Binomial(n, logits=_t([0.3, -0.2])).log_prob(_t([4.0, 0.0]))
    (g,) = ng.autodiff.grad(lp.sum(), [n])
    nt = torch.tensor(np.array([4.0, 12.0]), requires_grad=True)
    ref = TD.Binomial(nt, logits=torch.tensor(np.array([0.3, -0.2]))).log_prob(
        torch.tensor(np.array([4.0, 0.0])))
    (gr,) = torch.autograd.grad(ref.sum(), [nt])
    np.testing.assert_allclose(lp.detach().numpy(), ref.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(g.numpy(), gr.numpy(), rtol=1e-12)


# --- enumerate_support ----------------------------------------------------------------------
def test_enumerate_support_on_every_distribution():
    # PyTorch's base class raises NotImplementedError; nodegrad's had no such method
    with pytest.raises(NotImplementedError, match="Normal"):
        D.Normal(_t(0.0), _t(1.0)).enumerate_support()


def test_independent_enumerate_support_without_reinterpreted_dims():
    p = [[0.3, 0.4, 0.9]]
    got = D.Independent(D.Bernoulli(_t(p)), 0)
    ref = TD.Independent(TD.Bernoulli(torch.tensor(p)), 0)
    assert got.has_enumerate_support and ref.has_enumerate_support
    for expand in (True, False):
        np.testing.assert_array_equal(got.enumerate_support(expand).numpy(),
                                      ref.enumerate_support(expand).numpy())
    with pytest.raises(NotImplementedError, match="cartesian product"):
        D.Independent(D.Bernoulli(_t(p)), 1).enumerate_support()


# --- Multinomial.sample: counts by scatter-add ------------------------------------------------
def test_multinomial_sample_counts():
    ng.manual_seed(0)
    p = np.random.default_rng(0).dirichlet(np.ones(50), size=2)
    d = D.Multinomial(400, _t(p))
    s = d.sample((300,))
    assert s.shape == (300, 2, 50) and s.dtype == ng.float64
    np.testing.assert_array_equal(s.numpy().sum(-1), 400.0)
    sd = np.sqrt(400 * p * (1 - p) / 300)
    np.testing.assert_array_less(np.abs(s.numpy().mean(0) - 400 * p), 5 * sd + 1e-12)
    assert d.expand((3, 2)).sample((4,)).shape == (4, 3, 2, 50)


# --- shapes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2.7,), 2.5, (3, 1.5)])
def test_sample_shape_not_integer_is_an_error(shape):
    # (2.7,) used to draw shape (2,) silently; torch.Size raises TypeError
    d = D.Normal(_t(0.0), _t(1.0))
    with pytest.raises(TypeError, match="sample_shape"):
        d.sample(shape)


def test_sample_shape_negative_is_a_clear_error():
    d = D.Normal(_t([0.0, 1.0]), _t(1.0))
    with pytest.raises(ValueError, match="non-negative"):
        d.sample((-1,))
    with pytest.raises(ValueError, match="non-negative"):
        d.expand((-2, 2))
    assert d.sample((np.int64(3),)).shape == (3, 2)


# --- MixtureSameFamily whose mixture and component batch shapes differ ------------------------
@pytest.mark.parametrize("w, m", [
    ([0.3, 0.7], [[0.0, 10.0], [100.0, 1000.0]]),           # one mixture for a batch
    ([[0.3, 0.7]], [[0.0, 10.0], [100.0, 1000.0]]),         # mixture batch (1,)
    ([[0.3, 0.7], [0.9, 0.1]], [[0.0, 10.0]]),              # component batch (1,)
])
def test_mixture_batch_broadcast_samples(w, m):
    ng.manual_seed(0)
    d = D.MixtureSameFamily(D.Categorical(_t(w)), D.Normal(_t(m), _t(0.01)))
    assert d.batch_shape == (2,)
    assert d.log_prob(_t(np.zeros((3, 2)))).shape == (3, 2)
    s = d.sample((4000,))
    assert s.shape == (4000, 2)
    mean = d.mean.numpy()
    sd = np.sqrt(d.variance.numpy())
    np.testing.assert_array_less(np.abs(s.numpy().mean(0) - mean), 5 * sd / np.sqrt(4000))


def test_mixture_batch_broadcast_with_event_dims():
    comp = D.Independent(D.Normal(_t(np.zeros((3, 2, 4))), _t(1.0)), 1)
    d = D.MixtureSameFamily(D.Categorical(_t([0.3, 0.7])), comp)
    assert (d.batch_shape, d.event_shape) == ((3,), (4,))
    s = d.sample((5,))
    assert s.shape == (5, 3, 4)
    assert d.log_prob(s).shape == (5, 3)
    assert d.expand((2, 3)).sample().shape == (2, 3, 4)
