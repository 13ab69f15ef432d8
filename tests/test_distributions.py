"""nodegrad.distributions against torch.distributions: values, gradients, samples, KL."""

import math

import numpy as np
import pytest
import torch
import torch.distributions as TD

import nodegrad as ng
import nodegrad.distributions as D

RNG = np.random.default_rng(0)


def _pos(*shape):
    return RNG.uniform(0.5, 2.5, shape)


def _real(*shape):
    return RNG.standard_normal(shape)


def _spd(n, batch=()):
    a = RNG.standard_normal(batch + (n, n))
    return a @ np.swapaxes(a, -1, -2) + n * np.eye(n)


def _tril(n, batch=()):
    return np.linalg.cholesky(_spd(n, batch))


def _simplex(*shape):
    p = RNG.uniform(0.1, 1.0, shape)
    return p / p.sum(-1, keepdims=True)


# name -> (ng class, torch class, params, value maker(sample_shape) -> array, extra kwargs)
CASES = {
    "normal": (D.Normal, TD.Normal, {"loc": _real(2, 3), "scale": _pos(3)},
               lambda: _real(4, 2, 3)),
    "normal_scalar_scale": (D.Normal, TD.Normal, {"loc": _real(3), "scale": 0.7},
                            lambda: _real(3)),
    "uniform": (D.Uniform, TD.Uniform, {"low": _real(2, 1) - 3, "high": _real(3) + 3},
                lambda: RNG.uniform(-1.5, 1.5, (4, 2, 3))),
    "bernoulli_probs": (D.Bernoulli, TD.Bernoulli, {"probs": RNG.uniform(0.05, 0.95, (2, 3))},
                        lambda: RNG.integers(0, 2, (4, 2, 3)).astype(float)),
    "bernoulli_logits": (D.Bernoulli, TD.Bernoulli, {"logits": _real(3) * 3},
                         lambda: RNG.integers(0, 2, (2, 3)).astype(float)),
    "categorical_probs": (D.Categorical, TD.Categorical, {"probs": _pos(2, 4)},
                          lambda: RNG.integers(0, 4, (5, 2))),
    "categorical_logits": (D.Categorical, TD.Categorical, {"logits": _real(3, 4) * 2},
                           lambda: RNG.integers(0, 4, (5, 1))),
    "onehot": (D.OneHotCategorical, TD.OneHotCategorical, {"logits": _real(2, 4)},
               lambda: np.eye(4)[RNG.integers(0, 4, (5, 2))]),
    "exponential": (D.Exponential, TD.Exponential, {"rate": _pos(2, 3)},
                    lambda: _pos(4, 2, 3)),
    "laplace": (D.Laplace, TD.Laplace, {"loc": _real(3), "scale": _pos(2, 1)},
                lambda: _real(4, 2, 3)),
    "gamma": (D.Gamma, TD.Gamma, {"concentration": _pos(2, 3), "rate": _pos(3)},
              lambda: _pos(4, 2, 3)),
    "beta": (D.Beta, TD.Beta, {"concentration1": _pos(2, 3) + 1, "concentration0": _pos(3)},
             lambda: RNG.uniform(0.05, 0.95, (4, 2, 3))),
    "poisson": (D.Poisson, TD.Poisson, {"rate": _pos(2, 3) * 3},
                lambda: RNG.integers(0, 9, (4, 2, 3)).astype(float)),
    "mvn_cov": (D.MultivariateNormal, TD.MultivariateNormal,
                {"loc": _real(2, 3), "covariance_matrix": _spd(3)}, lambda: _real(4, 2, 3)),
    "mvn_tril": (D.MultivariateNormal, TD.MultivariateNormal,
                 {"loc": _real(3), "scale_tril": _tril(3, (2,))}, lambda: _real(4, 1, 3)),
    "mvn_prec": (D.MultivariateNormal, TD.MultivariateNormal,
                 {"loc": _real(2, 3), "precision_matrix": _spd(3, (2,))}, lambda: _real(2, 3)),
}
VALUES = {name: case[3]() for name, case in CASES.items()}
CONTINUOUS_CDF = ["normal", "uniform", "exponential", "laplace", "gamma"]


def _build(name, dtype=np.float64, requires_grad=False):
    ng_cls, t_cls, params, _ = CASES[name]
    ngp = {k: ng.tensor(np.asarray(v, dtype), requires_grad=requires_grad)
           if isinstance(v, np.ndarray) else v for k, v in params.items()}
    tp = {k: torch.tensor(np.asarray(v, dtype), requires_grad=requires_grad)
          if isinstance(v, np.ndarray) else v for k, v in params.items()}
    return ng_cls(**ngp), t_cls(**tp), ngp, tp


def _value(name):
    v = VALUES[name]
    as_int = name.startswith("categorical")
    return (ng.tensor(v.astype(np.int64 if as_int else np.float64)),
            torch.tensor(v.astype(np.int64 if as_int else np.float64)))


def _close(a, b, rtol=1e-10, atol=1e-10):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    np.testing.assert_allclose(a.numpy(), b, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("name", list(CASES))
def test_values_match_torch(name):
    d, t, _, _ = _build(name)
    assert d.batch_shape == tuple(t.batch_shape) and d.event_shape == tuple(t.event_shape)
    v, tv = _value(name)
    _close(d.log_prob(v), t.log_prob(tv))
    for attr in ("mean", "variance", "stddev", "mode"):
        if name.startswith("categorical") and attr == "mode":
            np.testing.assert_array_equal(d.mode.numpy(), t.mode.numpy())
            continue
        _close(getattr(d, attr), getattr(t, attr))
    if name != "poisson":
        _close(d.entropy(), t.entropy())
    if name in CONTINUOUS_CDF:
        _close(d.cdf(v), t.cdf(tv), rtol=1e-8)
        if name != "gamma":
            u = np.linspace(0.05, 0.95, 6).reshape(6, 1, 1)
            _close(d.icdf(ng.tensor(u)), t.icdf(torch.tensor(u)), rtol=1e-8)


@pytest.mark.parametrize("name", list(CASES))
def test_log_prob_and_entropy_gradients_match_torch(name):
    d, t, ngp, tp = _build(name, requires_grad=True)
    v, tv = _value(name)
    w = RNG.standard_normal(tuple(t.log_prob(tv).shape))
    out = (d.log_prob(v) * ng.tensor(w)).sum()
    tout = (t.log_prob(tv) * torch.tensor(w)).sum()
    if name != "poisson":
        out = out + d.entropy().sum()
        tout = tout + t.entropy().sum()
    out.backward()
    tout.backward()
    for k, p in ngp.items():
        if isinstance(p, ng.Tensor):
            _close(p.grad, tp[k].grad, rtol=1e-8, atol=1e-10)


RSAMPLE = ["normal", "uniform", "exponential", "laplace"]


@pytest.mark.parametrize("name", RSAMPLE + ["mvn_cov", "mvn_tril"])
def test_rsample_gradients_match_torch(name):
    """The same sample expressed in torch (through icdf of its cdf, or L⁻¹(x - loc) for the
    multivariate Normal) gives torch's reparameterised gradient: nodegrad's must equal it."""
    ng.manual_seed(3)
    d, t, ngp, tp = _build(name, requires_grad=True)
    assert d.has_rsample and t.has_rsample
    x = d.rsample((5,))
    if name.startswith("mvn"):
        L = d.scale_tril.detach().numpy()
        eps = np.linalg.solve(L, (x.detach().numpy() - d.loc.detach().numpy())[..., None])
        tx = t.loc + (t.scale_tril @ torch.tensor(eps))[..., 0]
    else:
        tx = t.icdf(torch.tensor(d.cdf(x).detach().numpy()))
    _close(x, tx, rtol=1e-7, atol=1e-9)
    w = RNG.standard_normal(tuple(x.shape))
    (ng.sin(x) * ng.tensor(w)).sum().backward()
    (torch.sin(tx) * torch.tensor(w)).sum().backward()
    for k, p in ngp.items():
        if isinstance(p, ng.Tensor):
            assert p.grad is not None and np.abs(p.grad.numpy()).sum() > 0
            _close(p.grad, tp[k].grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(CASES))
def test_sample_shapes_and_float32(name):
    d, t, _, _ = _build(name, dtype=np.float32)
    batch_event = d.batch_shape + d.event_shape
    for shape in [(), (3, 2)]:
        s = d.sample(shape)
        assert tuple(s.shape) == shape + batch_event
        assert s.dtype == (ng.int64 if name.startswith("categorical") else ng.float32)
        assert not s.requires_grad
        assert tuple(d.log_prob(s).shape) == shape + d.batch_shape
    v = VALUES[name]
    v = ng.tensor(v.astype(np.int64 if name.startswith("categorical") else np.float32))
    assert d.log_prob(v).dtype == ng.float32
    if name != "poisson":
        assert d.entropy().dtype == ng.float32
    if d.has_rsample:
        assert d.rsample((2,)).dtype == ng.float32
    else:
        with pytest.raises(NotImplementedError):
            d.rsample()


def test_rsample_flags_match_torch():
    for name in CASES:
        d, t, _, _ = _build(name)
        assert d.has_rsample == t.has_rsample or name in ("gamma", "beta"), name


N = 200_000


def _check_moments(s, mean, var):
    """Sample mean within 5 standard errors and variance within 5 of its standard errors
    (approximated through the fourth moment)."""
    s = s.numpy().astype(np.float64)
    mean, var = np.broadcast_to(mean, s.shape[1:]), np.broadcast_to(var, s.shape[1:])
    se = np.sqrt(var / len(s))
    assert np.all(np.abs(s.mean(0) - mean) < 5 * se + 1e-12), (s.mean(0), mean)
    m4 = ((s - s.mean(0)) ** 4).mean(0)
    se_var = np.sqrt(np.maximum(m4 - var ** 2, 1e-12) / len(s))
    assert np.all(np.abs(s.var(0) - var) < 5 * se_var + 1e-12), (s.var(0), var)


@pytest.mark.parametrize("name", ["normal", "uniform", "bernoulli_probs", "exponential",
                                  "laplace", "gamma", "beta", "poisson", "mvn_cov"])
def test_sample_moments(name):
    ng.manual_seed(11)
    d, t, _, _ = _build(name)
    s = d.sample((N,))
    _check_moments(s, t.mean.numpy(), t.variance.numpy())
    if name in ("gamma", "beta"):  # the whole law, not just two moments: a KS distance
        flat = s.numpy()[:, 0, 0]
        grid = np.quantile(flat, [0.1, 0.3, 0.5, 0.7, 0.9])
        cdf = TD.Gamma if name == "gamma" else None
        if cdf is not None:
            ref = t.cdf(torch.tensor(grid)[:, None, None])[:, 0, 0].numpy()
            np.testing.assert_allclose(ref, [0.1, 0.3, 0.5, 0.7, 0.9], atol=0.01)
        else:  # E[log x] = ψ(a) − ψ(a + b)
            a, b = t.concentration1[0, 0].item(), t.concentration0[0, 0].item()
            expect = torch.digamma(torch.tensor(a)) - torch.digamma(torch.tensor(a + b))
            assert abs(np.log(flat).mean() - expect.item()) < 0.01
    if name == "mvn_cov":
        s = s.numpy()[:, 0]
        np.testing.assert_allclose(np.cov(s.T), t.covariance_matrix[0].numpy(), atol=0.1)


def test_categorical_sample_frequencies():
    ng.manual_seed(5)
    p = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    s = D.Categorical(probs=ng.tensor(p)).sample((N,)).numpy()
    for row in range(2):
        freq = np.bincount(s[:, row], minlength=3) / N
        np.testing.assert_allclose(freq, p[row], atol=5 * np.sqrt(0.25 / N))
    oh = D.OneHotCategorical(probs=ng.tensor(p)).sample((N,)).numpy()
    assert np.all(oh.sum(-1) == 1)
    np.testing.assert_allclose(oh.mean(0), p, atol=5 * np.sqrt(0.25 / N))


def test_seeded_samples_reproduce_and_generator_keyword():
    d = D.Normal(ng.zeros(4), ng.ones(4))
    ng.manual_seed(1)
    a = d.sample((2,)).numpy()
    ng.manual_seed(1)
    b = d.sample((2,)).numpy()
    c = d.sample((2,)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)
    g1, g2 = ng.Generator(seed=9), ng.Generator(seed=9)
    np.testing.assert_array_equal(D.Gamma(2.0, 1.0).sample((5,), generator=g1).numpy(),
                                  D.Gamma(2.0, 1.0).sample((5,), generator=g2).numpy())


@pytest.mark.parametrize("name", list(CASES))
def test_expand(name):
    d, t, _, _ = _build(name)
    new_batch = (5,) + d.batch_shape
    e, te = d.expand(new_batch), t.expand(torch.Size(new_batch))
    assert e.batch_shape == new_batch and e.event_shape == d.event_shape
    v, tv = _value(name)
    while v.ndim > len(d.batch_shape + d.event_shape):
        v, tv = v[0], tv[0]
    _close(e.log_prob(v), te.log_prob(tv))
    assert tuple(e.sample((2,)).shape) == (2,) + new_batch + d.event_shape


def test_independent():
    loc, scale = _real(2, 3), _pos(2, 3)
    d = D.Independent(D.Normal(ng.tensor(loc), ng.tensor(scale)), 1)
    t = TD.Independent(TD.Normal(torch.tensor(loc), torch.tensor(scale)), 1)
    assert d.batch_shape == (2,) and d.event_shape == (3,) and d.has_rsample
    x = _real(4, 2, 3)
    _close(d.log_prob(ng.tensor(x)), t.log_prob(torch.tensor(x)))
    _close(d.entropy(), t.entropy())
    _close(d.mean, t.mean)
    assert tuple(d.rsample((3,)).shape) == (3, 2, 3)
    with pytest.raises(ValueError, match="reinterpreted_batch_ndims"):
        D.Independent(D.Normal(ng.zeros(3), 1.0), 2)


KL_PAIRS = ["normal", "bernoulli_probs", "categorical_probs", "exponential", "laplace",
            "gamma", "beta", "mvn_cov"]


@pytest.mark.parametrize("name", KL_PAIRS)
def test_kl_matches_torch(name):
    p, tp, ngp, tpp = _build(name, requires_grad=True)
    ng_cls, t_cls, params, _ = CASES[name]
    other = {}
    for k, v in params.items():  # q's parameters: perturbed, with a different batch shape
        v = np.asarray(v)
        if k in ("covariance_matrix",):
            other[k] = _spd(3, (2,))
        elif k == "probs" and name.startswith("categorical"):
            other[k] = _simplex(1, 4)
        elif k == "probs":  # torch's Bernoulli KL needs p and q of one shape
            other[k] = RNG.uniform(0.05, 0.95, v.shape)
        else:
            other[k] = v[..., -1:, :] * 1.3 + 0.1 if v.ndim >= 2 else v * 1.3 + 0.1
    q = ng_cls(**{k: ng.tensor(v) for k, v in other.items()})
    tq = t_cls(**{k: torch.tensor(v) for k, v in other.items()})
    kl, tkl = D.kl_divergence(p, q), TD.kl_divergence(tp, tq)
    _close(kl, tkl, rtol=1e-8)
    assert np.all(kl.numpy() >= -1e-12)
    kl.sum().backward()
    tkl.sum().backward()
    for k, g in ngp.items():
        assert g.grad is not None and np.abs(g.grad.numpy()).sum() > 0
        _close(g.grad, tpp[k].grad, rtol=1e-7, atol=1e-10)


def test_kl_uniform_independent_and_mvn_batches():
    p, q = D.Uniform(ng.tensor([0.0, -1.0]), 1.0), D.Uniform(ng.tensor([-1.0, 0.0]), 2.0)
    tp, tq = TD.Uniform(torch.tensor([0.0, -1.0]), 1.0), TD.Uniform(torch.tensor([-1.0, 0.0]),
                                                                     2.0)
    _close(D.kl_divergence(p, q), TD.kl_divergence(tp, tq))
    assert D.kl_divergence(p, q).numpy()[1] == np.inf
    loc, scale, loc2 = _real(2, 3), _pos(2, 3), _real(3)
    ip = D.Independent(D.Normal(ng.tensor(loc), ng.tensor(scale)), 1)
    iq = D.Independent(D.Normal(ng.tensor(loc2), 1.5), 1)
    tip = TD.Independent(TD.Normal(torch.tensor(loc), torch.tensor(scale)), 1)
    tiq = TD.Independent(TD.Normal(torch.tensor(loc2), 1.5), 1)
    _close(D.kl_divergence(ip, iq), TD.kl_divergence(tip, tiq))
    mp = D.MultivariateNormal(ng.tensor(loc), scale_tril=ng.tensor(_tril(3, (2,))))
    L = _tril(3)
    mq = D.MultivariateNormal(ng.tensor(loc2), scale_tril=ng.tensor(L))
    tmp = TD.MultivariateNormal(torch.tensor(loc), scale_tril=torch.tensor(mp.scale_tril.numpy()))
    tmq = TD.MultivariateNormal(torch.tensor(loc2), scale_tril=torch.tensor(L))
    _close(D.kl_divergence(mp, mq), TD.kl_divergence(tmp, tmq))
    # PyTorch registers Normal ‖ Exponential as infinite (q has no density below 0)
    assert D.kl_divergence(D.Normal(0.0, 1.0), D.Exponential(1.0)).item() == np.inf
    with pytest.raises(NotImplementedError, match="Normal.*Poisson"):
        D.kl_divergence(D.Normal(0.0, 1.0), D.Poisson(1.0))


def test_register_kl_most_specific_wins():
    class MyNormal(D.Normal):
        pass

    @D.register_kl(MyNormal, D.Normal)
    def _kl(p, q):
        return ng.tensor(-7.0)

    assert D.kl_divergence(MyNormal(0.0, 1.0), D.Normal(0.0, 1.0)).item() == -7.0
    assert D.kl_divergence(D.Normal(0.0, 1.0), MyNormal(1.0, 1.0)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("make, match", [
    (lambda: D.Normal(0.0, -1.0), r"scale.*Normal.*GreaterThan"),
    (lambda: D.Normal(ng.tensor([0.0, float("nan")]), 1.0), r"loc.*Normal.*Real"),
    (lambda: D.Bernoulli(probs=1.5), r"probs.*Bernoulli.*Interval"),
    (lambda: D.Bernoulli(), r"either `probs` or `logits`"),
    (lambda: D.Bernoulli(probs=0.5, logits=0.0), r"either `probs` or `logits`"),
    (lambda: D.Categorical(probs=ng.tensor([0.5, -0.1, 0.6])), r"probs.*Categorical.*Simplex"),
    (lambda: D.Uniform(1.0, 0.0), r"Uniform.*low"),
    (lambda: D.Exponential(ng.tensor([1.0, 0.0])), r"rate.*Exponential.*GreaterThan"),
    (lambda: D.Gamma(-1.0, 1.0), r"concentration.*Gamma"),
    (lambda: D.Beta(1.0, 0.0), r"concentration0.*Beta"),
    (lambda: D.Poisson(-1.0), r"rate.*Poisson"),
    (lambda: D.MultivariateNormal(ng.zeros(2), ng.tensor([[1.0, 2.0], [2.0, 1.0]])),
     r"covariance_matrix.*MultivariateNormal.*PositiveDefinite"),
    (lambda: D.MultivariateNormal(ng.zeros(2), scale_tril=ng.tensor([[1.0, 1.0], [0.0, 1.0]])),
     r"scale_tril.*MultivariateNormal.*LowerCholesky"),
    (lambda: D.Normal(0.0, 1.0).log_prob(ng.tensor(float("nan"))), r"support.*Normal"),
    (lambda: D.Exponential(1.0).log_prob(ng.tensor(-1.0)), r"support.*Exponential"),
    (lambda: D.Bernoulli(0.3).log_prob(ng.tensor(0.5)), r"support.*Bernoulli"),
    (lambda: D.Categorical(logits=ng.zeros(3)).log_prob(ng.tensor(3)), r"support.*Categorical"),
    (lambda: D.Poisson(2.0).log_prob(ng.tensor(1.5)), r"support.*Poisson"),
    (lambda: D.Beta(2.0, 2.0).log_prob(ng.tensor(1.5)), r"support.*Beta"),
    (lambda: D.Uniform(0.0, 1.0).log_prob(ng.tensor(2.0)), r"support.*Uniform"),
    (lambda: D.MultivariateNormal(ng.zeros(3), ng.eye(3)).log_prob(ng.zeros(2)), r"event_shape"),
])
def test_validation_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_validate_args_false_and_default_switch():
    assert np.isnan(D.Normal(0.0, -1.0, validate_args=False).log_prob(ng.tensor(0.0)).item())
    lp = D.Uniform(0.0, 1.0, validate_args=False).log_prob(ng.tensor([2.0, 0.5]))
    assert lp.numpy()[0] == -np.inf and lp.numpy()[1] == 0.0
    D.Distribution.set_default_validate_args(False)
    try:
        D.Normal(0.0, -1.0)
    finally:
        D.Distribution.set_default_validate_args(True)
    with pytest.raises(ValueError):
        D.Normal(0.0, -1.0)


def test_numerical_stability_matches_torch():
    logits = np.array([-200.0, -30.0, 0.0, 30.0, 200.0], np.float32)
    for value in (0.0, 1.0):
        v = np.full(5, value, np.float32)
        lp = D.Bernoulli(logits=ng.tensor(logits)).log_prob(ng.tensor(v))
        tlp = TD.Bernoulli(logits=torch.tensor(logits)).log_prob(torch.tensor(v))
        assert np.all(np.isfinite(lp.numpy()))
        _close(lp, tlp, rtol=1e-6, atol=1e-6)
    ent = D.Bernoulli(logits=ng.tensor(logits)).entropy()
    _close(ent, TD.Bernoulli(logits=torch.tensor(logits)).entropy(), rtol=1e-5, atol=1e-6)
    big = np.array([[1000.0, 0.0, -1000.0]], np.float32)
    c, tc = D.Categorical(logits=ng.tensor(big)), TD.Categorical(logits=torch.tensor(big))
    idx = np.array([0, 1, 2])[:, None]
    _close(c.log_prob(ng.tensor(idx)), tc.log_prob(torch.tensor(idx)), rtol=1e-6)
    _close(c.entropy(), tc.entropy(), atol=1e-6)
    p = np.array([0.0, 0.3, 0.7])
    c0, tc0 = D.Categorical(probs=ng.tensor(p)), TD.Categorical(probs=torch.tensor(p))
    _close(c0.entropy(), tc0.entropy())
    _close(c0.log_prob(ng.tensor([0, 2])), tc0.log_prob(torch.tensor([0, 2])))
    q = D.Categorical(probs=ng.tensor([0.5, 0.5, 0.0], dtype=ng.float64))
    tq = TD.Categorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    _close(D.kl_divergence(c0, q), TD.kl_divergence(tc0, tq))
    assert D.kl_divergence(c0, q).item() == np.inf


def test_vmap_log_prob():
    loc, scale, xs = _real(3), _pos(3), _real(5, 3)
    d = D.Normal(ng.tensor(loc), ng.tensor(scale))
    out = ng.vmap(lambda x: d.log_prob(x))(ng.tensor(xs))
    _close(out, d.log_prob(ng.tensor(xs)))
    locs = _real(4, 3)

    def lp(m):
        return D.MultivariateNormal(m, ng.tensor(_SPD3)).log_prob(ng.tensor(xs[0]))

    out = ng.vmap(lp)(ng.tensor(locs))
    ref = TD.MultivariateNormal(torch.tensor(locs), torch.tensor(_SPD3)).log_prob(
        torch.tensor(xs[0]))
    _close(out, ref)
    cat = ng.vmap(lambda lg: D.Categorical(logits=lg).log_prob(ng.tensor(1)))(ng.tensor(locs))
    _close(cat, TD.Categorical(logits=torch.tensor(locs)).log_prob(torch.tensor(1)))


_SPD3 = _spd(3)


def test_vae_loss_trains_under_jit_with_fresh_noise():
    ng.manual_seed(0)
    enc = ng.nn.Linear(6, 4)  # -> loc (2) and log-scale (2)
    dec = ng.nn.Linear(2, 6)
    model = ng.nn.ModuleList([enc, dec])
    opt = ng.optim.Adam(model.parameters(), lr=0.02)
    data = ng.tensor(np.random.default_rng(1).standard_normal((32, 2)) @
                     np.random.default_rng(2).standard_normal((2, 6)), dtype=ng.float32)
    prior = D.Normal(0.0, 1.0)

    def step(x):
        opt.zero_grad()
        h = enc(x)
        q = D.Normal(h[:, :2], ng.exp(h[:, 2:]))
        z = q.rsample()
        recon = ((dec(z) - x) ** 2).sum(-1)
        loss = (recon + D.kl_divergence(q, prior).sum(-1)).mean()
        loss.backward()
        opt.step()
        return loss, z

    jstep = ng.jit(step, state=(model, opt))
    losses, zs = [], []
    for _ in range(150):
        loss, z = jstep(data)
        losses.append(loss.item())
        zs.append(z.numpy())
    assert loss.dtype == ng.float32
    assert not np.allclose(zs[-1], zs[-2])  # fresh noise on every call
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])

    def draw(x):
        return D.Normal(x, 1.0).rsample((2,)) * 1

    jdraw = ng.jit(draw)
    x0 = ng.zeros(3)
    ng.manual_seed(4)
    a, b = jdraw(x0).numpy(), jdraw(x0).numpy()
    ng.manual_seed(4)
    c, e = jdraw(x0).numpy(), draw(x0).numpy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, e)  # the jitted draws follow the eager stream


def test_standard_normal_kl_closed_form():
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½(σ² + μ² − 1 − log σ²), the VAE regulariser."""
    mu, sigma = 0.3, 1.7
    kl = D.kl_divergence(D.Normal(mu, sigma), D.Normal(0.0, 1.0)).item()
    assert kl == pytest.approx(0.5 * (sigma ** 2 + mu ** 2 - 1 - math.log(sigma ** 2)), rel=1e-6)


def test_lognormal_and_dirichlet_equal_torch():
    TD = torch.distributions
    rng = np.random.default_rng(7)
    loc, sc = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    x, q = rng.uniform(0.2, 3, (2, 3)), rng.uniform(0.1, 0.9, 3)
    mine = D.LogNormal(ng.tensor(loc), ng.tensor(sc))
    theirs = TD.LogNormal(torch.tensor(loc), torch.tensor(sc))
    for name in ("mean", "mode", "variance", "stddev"):
        np.testing.assert_allclose(getattr(mine, name).numpy(), getattr(theirs, name).numpy(),
                                   rtol=1e-12)
    for got, want in ((mine.log_prob(ng.tensor(x)), theirs.log_prob(torch.tensor(x))),
                      (mine.cdf(ng.tensor(x)), theirs.cdf(torch.tensor(x))),
                      (mine.icdf(ng.tensor(q)), theirs.icdf(torch.tensor(q))),
                      (mine.entropy(), theirs.entropy())):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-14)
    other = (ng.tensor(loc * 0.5), ng.tensor(sc * 1.3))
    np.testing.assert_allclose(
        D.kl_divergence(mine, D.LogNormal(*other)).numpy(),
        TD.kl_divergence(theirs, TD.LogNormal(*(torch.tensor(o.numpy()) for o in other))).numpy(),
        rtol=1e-12)
    with pytest.raises(NotImplementedError, match="supports differ"):
        D.kl_divergence(mine, D.Normal(ng.tensor(loc), ng.tensor(sc)))
    a, b = rng.uniform(0.3, 3, (2, 4)), rng.uniform(0.3, 3, (2, 4))
    v = rng.dirichlet(np.ones(4), size=2)
    mine, theirs = D.Dirichlet(ng.tensor(a)), TD.Dirichlet(torch.tensor(a))
    for name in ("mean", "variance"):
        np.testing.assert_allclose(getattr(mine, name).numpy(), getattr(theirs, name).numpy(),
                                   rtol=1e-12)
    small = np.array([[0.5, 0.7, 0.2], [2.0, 3.0, 4.0]])
    np.testing.assert_allclose(D.Dirichlet(ng.tensor(small)).mode.numpy(),
                               TD.Dirichlet(torch.tensor(small)).mode.numpy(), rtol=1e-12)
    c = ng.tensor(a, requires_grad=True)
    tc = torch.tensor(a, requires_grad=True)
    D.Dirichlet(c).log_prob(ng.tensor(v)).sum().backward()
    TD.Dirichlet(tc).log_prob(torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(c.grad.numpy(), tc.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(mine.entropy().numpy(), theirs.entropy().numpy(), rtol=1e-12)
    np.testing.assert_allclose(D.kl_divergence(mine, D.Dirichlet(ng.tensor(b))).numpy(),
                               TD.kl_divergence(theirs, TD.Dirichlet(torch.tensor(b))).numpy(),
                               rtol=1e-10)
    ng.manual_seed(0)
    s = mine.sample((20000,))
    assert s.shape == (20000, 2, 4) and mine.has_rsample
    np.testing.assert_allclose(s.numpy().sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(s.numpy().mean(0), mine.mean.numpy(), atol=0.01)
    with pytest.raises(ValueError, match="simplex|support"):
        mine.log_prob(ng.tensor(np.full((2, 4), 0.5)))
