"""The later distribution families, transforms and reparameterised gamma samples, against
torch.distributions in float64 (values and gradients)."""

import math

import numpy as np
import pytest
import torch
import torch.distributions as TD

import nodegrad as ng
import nodegrad.distributions as D
from nodegrad.distributions import constraints as C
from nodegrad.distributions.gamma import standard_gamma_grad

RNG = np.random.default_rng(1)


def _pos(*shape, lo=0.5, hi=2.5):
    return RNG.uniform(lo, hi, shape)


def _real(*shape):
    return RNG.standard_normal(shape)


def _unit(*shape):
    return RNG.uniform(0.1, 0.9, shape)


def _simplex(*shape):
    p = RNG.uniform(0.1, 1.0, shape)
    return p / p.sum(-1, keepdims=True)


# name -> (ng class, torch class, params, value, keyword params that stay plain numbers)
CASES = {
    "binomial": (D.Binomial, TD.Binomial, {"probs": _unit(2, 3)},
                 RNG.integers(0, 6, (2, 3)).astype(float), {"total_count": 5}),
    "binomial_logits": (D.Binomial, TD.Binomial, {"logits": _real(3)},
                        RNG.integers(0, 4, (2, 3)).astype(float), {"total_count": 4}),
    "multinomial": (D.Multinomial, TD.Multinomial, {"probs": _simplex(2, 4)},
                    np.array([[1.0, 2.0, 0.0, 3.0], [0.0, 0.0, 6.0, 0.0]]), {"total_count": 6}),
    "geometric": (D.Geometric, TD.Geometric, {"probs": _unit(2, 3)},
                  RNG.integers(0, 5, (2, 3)).astype(float), {}),
    "negative_binomial": (D.NegativeBinomial, TD.NegativeBinomial,
                          {"total_count": _pos(3), "probs": _unit(2, 3)},
                          RNG.integers(0, 7, (2, 3)).astype(float), {}),
    "cauchy": (D.Cauchy, TD.Cauchy, {"loc": _real(2, 3), "scale": _pos(3)}, _real(2, 3), {}),
    "half_cauchy": (D.HalfCauchy, TD.HalfCauchy, {"scale": _pos(2, 3)}, _pos(2, 3), {}),
    "half_normal": (D.HalfNormal, TD.HalfNormal, {"scale": _pos(2, 3)}, _pos(2, 3), {}),
    "student_t": (D.StudentT, TD.StudentT, {"df": _pos(2, 3, lo=2.5, hi=6), "loc": _real(3),
                                            "scale": _pos(3)}, _real(2, 3), {}),
    "chi2": (D.Chi2, TD.Chi2, {"df": _pos(2, 3, lo=1, hi=5)}, _pos(2, 3), {}),
    "gumbel": (D.Gumbel, TD.Gumbel, {"loc": _real(2, 3), "scale": _pos(3)}, _real(2, 3), {}),
    "weibull": (D.Weibull, TD.Weibull, {"scale": _pos(2, 3), "concentration": _pos(3, lo=1.2)},
                _pos(2, 3), {}),
    "pareto": (D.Pareto, TD.Pareto, {"scale": _pos(2, 3, lo=0.5, hi=1.0),
                                     "alpha": _pos(3, lo=2.5, hi=4)}, _pos(2, 3, lo=1.1, hi=3),
               {}),
    "inverse_gamma": (D.InverseGamma, TD.InverseGamma, {"concentration": _pos(2, 3, lo=2.5,
                                                                              hi=4),
                                                        "rate": _pos(3)}, _pos(2, 3), {}),
    "kumaraswamy": (D.Kumaraswamy, TD.Kumaraswamy, {"concentration1": _pos(2, 3, lo=1.2),
                                                    "concentration0": _pos(3, lo=1.2)},
                    _unit(2, 3), {}),
    "fisher_snedecor": (D.FisherSnedecor, TD.FisherSnedecor,
                        {"df1": _pos(2, 3, lo=3, hi=6), "df2": _pos(3, lo=5, hi=9)},
                        _pos(2, 3), {}),
    "logistic_normal": (D.LogisticNormal, TD.LogisticNormal, {"loc": _real(2, 3),
                                                              "scale": _pos(3)},
                        _simplex(2, 4), {}),
    "continuous_bernoulli": (D.ContinuousBernoulli, TD.ContinuousBernoulli,
                             {"probs": np.array([[0.1, 0.4995, 0.8], [0.3, 0.6, 0.95]])},
                             _unit(2, 3), {}),
    "relaxed_bernoulli": (D.RelaxedBernoulli, TD.RelaxedBernoulli, {"logits": _real(2, 3)},
                          _unit(2, 3), {"temperature": 0.7}),
    "relaxed_one_hot": (D.RelaxedOneHotCategorical, TD.RelaxedOneHotCategorical,
                        {"probs": _simplex(2, 4)}, _simplex(2, 4), {"temperature": 0.6}),
    "low_rank_mvn": (D.LowRankMultivariateNormal, TD.LowRankMultivariateNormal,
                     {"loc": _real(2, 3), "cov_factor": _real(3, 2), "cov_diag": _pos(3)},
                     _real(2, 3), {}),
    "von_mises": (D.VonMises, TD.VonMises, {"loc": _real(2, 3), "concentration":
                                            np.array([0.5, 3.0, 9.0])}, _real(2, 3), {}),
    "generalized_pareto": (D.GeneralizedPareto, TD.GeneralizedPareto,
                           {"loc": _real(2, 3), "scale": _pos(3),
                            "concentration": np.array([0.3, 0.0, 0.2])},
                           _real(2, 3) ** 2 + 2.5, {}),
    "gamma": (D.Gamma, TD.Gamma, {"concentration": _pos(2, 3), "rate": _pos(3)}, _pos(2, 3), {}),
}

NAMES = sorted(CASES)


@pytest.fixture(autouse=True)
def _torch_float64():
    """PyTorch's GeneralizedPareto builds float32 constants from the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _build(name):
    cls, tcls, params, value, extra = CASES[name]
    ours = {k: ng.tensor(v, dtype=ng.float64, requires_grad=True) for k, v in params.items()}
    theirs = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in params.items()}
    kw = dict(extra)
    if "temperature" in kw:
        t = kw.pop("temperature")
        return (cls(ng.tensor(t, dtype=ng.float64), **ours, **kw),
                tcls(torch.tensor(t, dtype=torch.float64), **theirs, **kw), ours, theirs, value)
    return cls(**ours, **kw), tcls(**theirs, **kw), ours, theirs, value


def _close(a, b, rtol=1e-9, atol=1e-11):
    a = a.numpy() if isinstance(a, ng.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_torch(name):
    d, t, ours, theirs, value = _build(name)
    assert d.batch_shape == tuple(t.batch_shape) and d.event_shape == tuple(t.event_shape)
    assert d.has_rsample == t.has_rsample
    lp = d.log_prob(ng.tensor(value))
    tlp = t.log_prob(torch.tensor(value))
    _close(lp, tlp)
    lp.sum().backward()
    tlp.sum().backward()
    for k in ours:
        _close(ours[k].grad, theirs[k].grad, rtol=1e-7, atol=1e-9)
    for prop in ("mean", "variance", "mode"):
        try:
            want = getattr(t, prop)
        except NotImplementedError:
            continue
        _close(getattr(d, prop), want, rtol=1e-7)
    try:
        want = t.entropy()
    except NotImplementedError:
        want = None
    if want is not None:
        _close(d.entropy(), want, rtol=1e-7)
    if name in ("cauchy", "half_cauchy", "half_normal", "gumbel", "weibull", "pareto",
                "continuous_bernoulli", "generalized_pareto", "kumaraswamy"):
        _close(d.cdf(ng.tensor(value)), t.cdf(torch.tensor(value)), rtol=1e-7)
        q = _unit(2, 3)
        if name not in ("gumbel", "weibull", "pareto", "kumaraswamy"):  # torch: no icdf there
            _close(d.icdf(ng.tensor(q)), t.icdf(torch.tensor(q)), rtol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_expand_sample_and_seeds(name):
    d, t, _, _, _ = _build(name)
    assert d.support.event_dim == t.support.event_dim
    assert d.support.is_discrete == t.support.is_discrete
    assert set(d.arg_constraints) == set(t.arg_constraints)
    e = d.expand((4,) + d.batch_shape)
    assert e.batch_shape == (4,) + d.batch_shape and e.event_shape == d.event_shape
    ng.manual_seed(3)
    s = e.sample((2,))
    ng.manual_seed(3)
    s2 = e.sample((2,))
    assert tuple(s.shape) == (2, 4) + d.batch_shape + d.event_shape
    np.testing.assert_array_equal(s.numpy(), s2.numpy())
    assert not s.requires_grad and np.all(np.isfinite(d.log_prob(s).numpy()) |
                                          (name == "relaxed_one_hot"))
    assert tuple(e.log_prob(s).shape) == (2, 4) + d.batch_shape
    with ng.no_grad():
        assert bool(ng.all(d.support.check(s))) or name == "relaxed_one_hot"
    if d.has_rsample:
        r = d.rsample((3,))
        params = [v for v in d.__dict__.values() if isinstance(v, ng.Tensor) and
                  v.requires_grad]
        assert r.requires_grad or not params


MOMENTS = ["binomial", "geometric", "negative_binomial", "half_normal", "student_t", "chi2",
           "gumbel", "weibull", "pareto", "inverse_gamma", "kumaraswamy", "fisher_snedecor",
           "continuous_bernoulli", "von_mises", "generalized_pareto", "multinomial",
           "low_rank_mvn"]


@pytest.mark.parametrize("name", MOMENTS)
def test_sample_moments(name):
    d, _, _, _, _ = _build(name)
    ng.manual_seed(0)
    n = 40000
    s = d.sample((n,)).numpy()
    mean, var = d.mean.detach().numpy(), d.variance.detach().numpy()
    if name == "von_mises":  # circular: compare the mean resultant direction and length
        loc = d.loc.detach().numpy()
        np.testing.assert_allclose(np.angle(np.exp(1j * s).mean(0) * np.exp(-1j * loc)), 0,
                                   atol=0.05)
        np.testing.assert_allclose(1 - np.abs(np.exp(1j * s).mean(0)), var, atol=0.02)
        return
    finite = np.isfinite(var)
    se = np.sqrt(np.where(finite, var, 1.0) / n)
    assert np.all(np.abs(s.mean(0) - mean)[finite] < 6 * se[finite] + 1e-12), name


def test_standard_gamma_grad_matches_torch_and_implicit_derivative():
    a = np.array([0.1, 0.5, 1.0, 3.0, 7.0, 9.0, 20.0, 20.0, 20.0, 50.0, 2.0, 2.0])
    x = np.array([0.05, 0.3, 2.0, 1.0, 10.0, 9.5, 5.0, 21.0, 40.0, 45.0, 0.79, 0.81])
    got = standard_gamma_grad(ng.tensor(a), ng.tensor(x)).numpy()
    want = torch._standard_gamma_grad(torch.tensor(a), torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # -(dF/da) / (dF/dx) by central differences of the regularised incomplete gamma function
    h = 1e-6
    dFda = (ng.igamma(ng.tensor(a + h), ng.tensor(x)) -
            ng.igamma(ng.tensor(a - h), ng.tensor(x))).numpy() / (2 * h)
    pdf = np.exp((a - 1) * np.log(x) - x - np.array([math.lgamma(v) for v in a]))
    np.testing.assert_allclose(got, -dFda / pdf, rtol=5e-3, atol=1e-6)


def test_gamma_rsample_gradient_is_the_implicit_one():
    alpha = ng.tensor([0.4, 2.0, 12.0], dtype=ng.float64, requires_grad=True)
    rate = ng.tensor([1.5, 0.5, 2.0], dtype=ng.float64, requires_grad=True)
    ng.manual_seed(0)
    x = D.Gamma(alpha, rate).rsample((5,))
    x.sum().backward()
    xs = x.detach().numpy() * rate.detach().numpy()  # the standard gamma draws
    da = torch._standard_gamma_grad(torch.tensor(np.broadcast_to([0.4, 2.0, 12.0], xs.shape)
                                                 .copy()), torch.tensor(xs)).numpy()
    np.testing.assert_allclose(alpha.grad.numpy(), (da / rate.detach().numpy()).sum(0),
                               rtol=1e-10)
    np.testing.assert_allclose(rate.grad.numpy(), (-x.detach().numpy()
                                                   / rate.detach().numpy()).sum(0), rtol=1e-10)


@pytest.mark.parametrize("which", ["gamma", "beta", "dirichlet", "chi2"])
def test_reparameterised_gradient_of_an_expectation(which):
    """Monte-Carlo d/dθ E[f(X)] against the analytic derivative of the mean."""
    ng.manual_seed(1)
    n = 40000
    if which == "gamma":
        a = ng.tensor([0.7, 3.0], dtype=ng.float64, requires_grad=True)
        s = D.Gamma(a, 2.0).rsample((n,))
        (s ** 2).mean(0).sum().backward()  # E[X²] = a (a + 1) / 4
        want = (2 * a.detach().numpy() + 1) / 4
        got = a.grad.numpy()
    elif which == "chi2":
        df = ng.tensor([1.5, 4.0], dtype=ng.float64, requires_grad=True)
        D.Chi2(df).rsample((n,)).mean(0).sum().backward()  # E[X] = df
        got, want = df.grad.numpy(), np.ones(2)
    elif which == "beta":
        a = ng.tensor([0.8, 2.0], dtype=ng.float64, requires_grad=True)
        b = ng.tensor([1.5, 3.0], dtype=ng.float64, requires_grad=True)
        D.Beta(a, b).rsample((n,)).mean(0).sum().backward()  # E[X] = a / (a + b)
        av, bv = a.detach().numpy(), b.detach().numpy()
        got = np.concatenate([a.grad.numpy(), b.grad.numpy()])
        want = np.concatenate([bv / (av + bv) ** 2, -av / (av + bv) ** 2])
    else:
        c = ng.tensor([0.5, 1.0, 2.5], dtype=ng.float64, requires_grad=True)
        s = D.Dirichlet(c).rsample((n,))
        s[:, 0].mean().backward()  # E[X0] = c0 / sum c
        cv = c.detach().numpy()
        tot = cv.sum()
        want = -cv[0] / tot ** 2 * np.ones(3)
        want[0] += 1 / tot
        got = c.grad.numpy()
    np.testing.assert_allclose(got, want, rtol=0.08, atol=0.01)


def test_more_kl_pairs_match_torch():
    def both(cls, tcls, **params):
        return (cls(**{k: ng.tensor(v) for k, v in params.items()}),
                tcls(**{k: torch.tensor(v) for k, v in params.items()}))

    pairs = [
        (D.Cauchy, TD.Cauchy, dict(loc=_real(3), scale=_pos(3)), dict(loc=_real(3),
                                                                      scale=_pos(3))),
        (D.Gumbel, TD.Gumbel, dict(loc=_real(3), scale=_pos(3)), dict(loc=_real(3),
                                                                      scale=_pos(3))),
        (D.HalfNormal, TD.HalfNormal, dict(scale=_pos(3)), dict(scale=_pos(3))),
        (D.Geometric, TD.Geometric, dict(probs=_unit(3)), dict(probs=_unit(3))),
        (D.Pareto, TD.Pareto, dict(scale=_pos(3), alpha=_pos(3)), dict(scale=_pos(3),
                                                                       alpha=_pos(3))),
        (D.ContinuousBernoulli, TD.ContinuousBernoulli, dict(probs=_unit(3)),
         dict(probs=_unit(3))),
        (D.InverseGamma, TD.InverseGamma, dict(concentration=_pos(3), rate=_pos(3)),
         dict(concentration=_pos(3), rate=_pos(3))),
        (D.Chi2, TD.Chi2, dict(df=_pos(3)), dict(df=_pos(3))),
        (D.LowRankMultivariateNormal, TD.LowRankMultivariateNormal,
         dict(loc=_real(2, 3), cov_factor=_real(3, 2), cov_diag=_pos(3)),
         dict(loc=_real(3), cov_factor=_real(3, 1), cov_diag=_pos(3))),
    ]
    for cls, tcls, pp, qp in pairs:
        p, tp = both(cls, tcls, **pp)
        q, tq = both(cls, tcls, **qp)
        _close(D.kl_divergence(p, q), TD.kl_divergence(tp, tq), rtol=1e-8)
    p, tp = both(D.Binomial, TD.Binomial, total_count=np.array([5.0, 5.0]),
                 probs=_unit(2))
    q, tq = both(D.Binomial, TD.Binomial, total_count=np.array([5.0, 3.0]), probs=_unit(2))
    _close(D.kl_divergence(p, q), TD.kl_divergence(tp, tq))
    mvn = D.MultivariateNormal(ng.tensor(_real(3)), scale_tril=ng.tensor(np.diag(_pos(3))))
    lr = D.LowRankMultivariateNormal(ng.tensor(_real(3)), ng.tensor(_real(3, 1)),
                                     ng.tensor(_pos(3)))
    tm = TD.MultivariateNormal(torch.tensor(mvn.loc.numpy()),
                               scale_tril=torch.tensor(mvn.scale_tril.numpy()))
    tl = TD.LowRankMultivariateNormal(torch.tensor(lr.loc.numpy()),
                                      torch.tensor(lr.cov_factor.numpy()),
                                      torch.tensor(lr.cov_diag.numpy()))
    _close(D.kl_divergence(mvn, lr), TD.kl_divergence(tm, tl), rtol=1e-8)
    _close(D.kl_divergence(lr, mvn), TD.kl_divergence(tl, tm), rtol=1e-8)


# --- transforms ---------------------------------------------------------------------------------
def _transforms():
    loc, scale = _real(3), _pos(3)
    return [
        ("exp", D.ExpTransform(), TD.ExpTransform(), _real(2, 3)),
        ("affine", D.AffineTransform(ng.tensor(loc), ng.tensor(scale)),
         TD.AffineTransform(torch.tensor(loc), torch.tensor(scale)), _real(2, 3)),
        ("affine_event", D.AffineTransform(1.0, -2.0, event_dim=1),
         TD.AffineTransform(1.0, -2.0, event_dim=1), _real(2, 3)),
        ("sigmoid", D.SigmoidTransform(), TD.SigmoidTransform(), _real(2, 3)),
        ("tanh", D.TanhTransform(), TD.TanhTransform(), _real(2, 3)),
        ("softplus", D.SoftplusTransform(), TD.SoftplusTransform(), _real(2, 3)),
        ("power", D.PowerTransform(ng.tensor(1.7, dtype=ng.float64)),
         TD.PowerTransform(torch.tensor(1.7, dtype=torch.float64)),
         _pos(2, 3)),
        ("stick", D.StickBreakingTransform(), TD.StickBreakingTransform(), _real(2, 3)),
        ("compose", D.ComposeTransform([D.ExpTransform(), D.AffineTransform(1.0, 3.0)]),
         TD.ComposeTransform([TD.ExpTransform(), TD.AffineTransform(1.0, 3.0)]), _real(2, 3)),
        ("independent", D.IndependentTransform(D.SigmoidTransform(), 1),
         TD.IndependentTransform(TD.SigmoidTransform(), 1), _real(2, 3)),
        ("reshape", D.ReshapeTransform((3,), (3, 1)), TD.ReshapeTransform((3,), (3, 1)),
         _real(2, 3)),
        ("cat", D.CatTransform([D.ExpTransform(), D.AffineTransform(0.0, 2.0)], -1, [1, 2]),
         TD.CatTransform([TD.ExpTransform(), TD.AffineTransform(0.0, 2.0)], -1, [1, 2]),
         _real(2, 3)),
        ("stack", D.StackTransform([D.ExpTransform(), D.TanhTransform(), D.ExpTransform()], 1),
         TD.StackTransform([TD.ExpTransform(), TD.TanhTransform(), TD.ExpTransform()], 1),
         _real(2, 3)),
        ("cdf", D.CumulativeDistributionTransform(D.Normal(ng.tensor(0.5, dtype=ng.float64),
                                                    ng.tensor(2.0, dtype=ng.float64))),
         TD.CumulativeDistributionTransform(TD.Normal(torch.tensor(0.5, dtype=torch.float64),
                                                      torch.tensor(2.0, dtype=torch.float64))),
         _real(2, 3)),
    ]


@pytest.mark.parametrize("case", _transforms(), ids=lambda c: c[0])
def test_transforms_match_torch(case):
    _, ours, theirs, x = case
    xn = ng.tensor(x, dtype=ng.float64, requires_grad=True)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, yt = ours(xn), theirs(xt)
    _close(y, yt)
    _close(ours.inv(y), x, rtol=1e-7, atol=1e-9)
    ladj, tladj = ours.log_abs_det_jacobian(xn, y), theirs.log_abs_det_jacobian(xt, yt)
    _close(ladj, tladj)
    (y.sum() + ladj.sum()).backward()
    (yt.sum() + tladj.sum()).backward()
    _close(xn.grad, xt.grad, rtol=1e-7)
    assert ours.bijective == theirs.bijective
    assert ours.domain.event_dim == theirs.domain.event_dim
    assert ours.codomain.event_dim == theirs.codomain.event_dim
    assert ours.forward_shape((5, 2, 3)) == tuple(theirs.forward_shape((5, 2, 3)))
    assert ours.inverse_shape(tuple(y.shape)) == tuple(theirs.inverse_shape(yt.shape))
    with ng.no_grad():
        assert bool(ng.all(ours.codomain.check(y.detach())))


def test_non_bijective_transforms_and_lower_cholesky():
    x = _real(2, 3, 3)
    for ours, theirs in ((D.AbsTransform(), TD.AbsTransform()),
                         (D.SoftmaxTransform(), TD.SoftmaxTransform()),
                         (D.LowerCholeskyTransform(), TD.LowerCholeskyTransform()),
                         (D.PositiveDefiniteTransform(), TD.PositiveDefiniteTransform())):
        y, yt = ours(ng.tensor(x)), theirs(torch.tensor(x))
        _close(y, yt)
        _close(ours.inv(y), theirs.inv(yt), rtol=1e-7, atol=1e-9)
        assert not ours.bijective
    assert D.identity_transform(ng.tensor(x)).numpy() is not None
    np.testing.assert_array_equal(D.identity_transform(ng.tensor(x)).numpy(), x)


def test_transform_cache_inverse_and_signs():
    t = D.ExpTransform(cache_size=1)
    x = ng.tensor([0.3, -1.0])
    y = t(x)
    assert t(x) is y and t.inv(y) is x and t.inv.inv is t
    assert D.ExpTransform()(x) is not D.ExpTransform()(x)
    u = D.ExpTransform()
    assert u.with_cache(1)._cache_size == 1 and u.with_cache(0) is u
    with pytest.raises(ValueError, match="cache_size"):
        D.ExpTransform(cache_size=2)
    assert D.AffineTransform(0.0, -2.0).sign == -1 and D.ExpTransform().sign == 1
    c = D.ComposeTransform([D.ExpTransform(), D.AffineTransform(0.0, -1.0)])
    assert c.sign == -1 and c.inv.inv is c
    assert D.ExpTransform() == D.ExpTransform() and D.ExpTransform() != D.SigmoidTransform()


CONSTRAINTS = [C.real, C.positive, C.nonnegative, C.greater_than(1.5), C.greater_than_eq(-1.0),
               C.less_than(2.0), C.unit_interval, C.interval(-1.0, 3.0),
               C.half_open_interval(0.0, 2.0), C.simplex, C.real_vector,
               C.independent(C.positive, 1),
               C.cat([C.positive, C.real, C.unit_interval], -1, [1, 1, 1]),
               C.stack([C.positive, C.real, C.unit_interval], -1)]


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=repr)
def test_biject_to_and_transform_to(constraint):
    x = ng.tensor(_real(4, 3), requires_grad=True)
    for registry in (D.biject_to, D.transform_to):
        t = registry(constraint)
        y = t(x)
        with ng.no_grad():
            ok = constraint.check(y)
        assert bool(ng.all(ok)), (constraint, y)
    t = D.biject_to(constraint)
    assert t.bijective
    y = t(x)
    if constraint is C.simplex:
        x = ng.tensor(x.detach().numpy()[:, :2])
        y = t(x)
    _close(t.inv(y), x.detach(), rtol=1e-6, atol=1e-6)


def test_biject_to_matrices_and_unknown_constraint():
    t = D.transform_to(C.lower_cholesky)
    y = t(ng.tensor(_real(3, 3)))
    assert bool(ng.all(C.lower_cholesky.check(y)))
    p = D.transform_to(C.positive_definite)(ng.tensor(_real(3, 3)))
    assert bool(ng.all(C.positive_definite.check(p)))
    with pytest.raises(NotImplementedError, match="Cannot transform"):
        D.biject_to(C.boolean)


def test_transformed_distribution_matches_torch():
    loc, scale = _real(2, 3), _pos(3)
    base = D.Normal(ng.tensor(loc), ng.tensor(scale))
    tbase = TD.Normal(torch.tensor(loc), torch.tensor(scale))
    d = D.TransformedDistribution(base, [D.TanhTransform(), D.AffineTransform(1.0, -2.0)])
    t = TD.TransformedDistribution(tbase, [TD.TanhTransform(), TD.AffineTransform(1.0, -2.0)])
    v = RNG.uniform(-0.9, 2.9, (2, 3))
    _close(d.log_prob(ng.tensor(v)), t.log_prob(torch.tensor(v)))
    _close(d.cdf(ng.tensor(v)), t.cdf(torch.tensor(v)))
    q = _unit(2, 3)
    _close(d.icdf(ng.tensor(q)), t.icdf(torch.tensor(q)))
    # vector events: a stick-breaking transform over an Independent base
    sb = D.TransformedDistribution(D.Normal(ng.tensor(loc), ng.tensor(scale)),
                                   D.StickBreakingTransform())
    tsb = TD.TransformedDistribution(tbase, TD.StickBreakingTransform())
    assert sb.batch_shape == (2,) and sb.event_shape == (4,)
    w = _simplex(2, 4)
    _close(sb.log_prob(ng.tensor(w)), tsb.log_prob(torch.tensor(w)))
    e = sb.expand((5, 2))
    assert e.batch_shape == (5, 2) and tuple(e.sample().shape) == (5, 2, 4)
    # KL through equal transforms
    d2 = D.LogNormal(ng.tensor(loc), ng.tensor(scale))
    d3 = D.LogNormal(ng.tensor(loc * 0.3), ng.tensor(scale + 1))
    _close(D.kl_divergence(D.TransformedDistribution(d2.base_dist, D.ExpTransform()),
                           D.TransformedDistribution(d3.base_dist, D.ExpTransform())),
           D.kl_divergence(d2.base_dist, d3.base_dist))


def test_mixture_same_family_matches_torch():
    logits, loc, scale = _real(2, 3), _real(2, 3), _pos(2, 3)
    d = D.MixtureSameFamily(D.Categorical(logits=ng.tensor(logits)),
                            D.Normal(ng.tensor(loc), ng.tensor(scale)))
    t = TD.MixtureSameFamily(TD.Categorical(logits=torch.tensor(logits)),
                             TD.Normal(torch.tensor(loc), torch.tensor(scale)))
    v = _real(4, 2)
    _close(d.log_prob(ng.tensor(v)), t.log_prob(torch.tensor(v)))
    _close(d.cdf(ng.tensor(v)), t.cdf(torch.tensor(v)))
    _close(d.mean, t.mean)
    _close(d.variance, t.variance)
    ng.manual_seed(0)
    s = d.sample((30000,))
    assert tuple(s.shape) == (30000, 2)
    np.testing.assert_allclose(s.numpy().mean(0), t.mean.numpy(), atol=0.05)
    mv = D.MixtureSameFamily(D.Categorical(logits=ng.tensor(logits)),
                             D.Independent(D.Normal(ng.tensor(_real(2, 3, 2)),
                                                    ng.tensor(_pos(2, 3, 2))), 1))
    assert mv.batch_shape == (2,) and mv.event_shape == (2,)
    assert tuple(mv.sample((5,)).shape) == (5, 2, 2)
    assert tuple(mv.log_prob(ng.tensor(_real(5, 2, 2))).shape) == (5, 2)
    with pytest.raises(ValueError, match="components"):
        D.MixtureSameFamily(D.Categorical(logits=ng.tensor(_real(4))),
                            D.Normal(ng.tensor(_real(3)), 1.0))


def test_straight_through_and_relaxed_samples():
    logits = ng.tensor(_real(2, 4), requires_grad=True)
    d = D.OneHotCategoricalStraightThrough(logits=logits)
    ng.manual_seed(0)
    s = d.rsample((3,))
    assert np.all(s.detach().numpy().sum(-1) == 1) and set(np.unique(s.detach().numpy())) <= {0, 1}
    (s * ng.arange(4, dtype=ng.float64)).sum().backward()
    assert np.any(logits.grad.numpy() != 0)
    r = D.RelaxedOneHotCategorical(ng.tensor(0.5), logits=ng.tensor(_real(2, 4)))
    x = r.rsample((5,))
    np.testing.assert_allclose(x.numpy().sum(-1), 1.0, rtol=1e-6)


def test_validation_errors_name_distribution_argument_and_value():
    cases = [(lambda: D.Cauchy(0.0, -1.0), "Cauchy", "scale"),
             (lambda: D.StudentT(-2.0), "StudentT", "df"),
             (lambda: D.Chi2(ng.tensor([1.0, -1.0])), "Chi2", "df"),
             (lambda: D.Weibull(1.0, -1.0), "Weibull", "concentration"),
             (lambda: D.LogNormal(0.0, -1.0), "LogNormal", "scale"),
             (lambda: D.Binomial(5, probs=1.5), "Binomial", "probs"),
             (lambda: D.Kumaraswamy(1.0, 0.0), "Kumaraswamy", "concentration0"),
             (lambda: D.RelaxedBernoulli(ng.tensor(0.5), probs=2.0), "RelaxedBernoulli",
              "probs"),
             (lambda: D.Geometric(0.0), "Geometric", "probs"),
             (lambda: D.VonMises(0.0, -1.0), "VonMises", "concentration")]
    for make, dist, arg in cases:
        with pytest.raises(ValueError) as err:
            make()
        msg = str(err.value)
        assert dist in msg and arg in msg, msg
    with pytest.raises(ValueError, match="support.*HalfNormal"):
        D.HalfNormal(1.0).log_prob(ng.tensor(-1.0))
    with pytest.raises(ValueError, match="Pareto"):
        D.Pareto(1.0, 2.0).log_prob(ng.tensor(0.5))
    with pytest.raises(ValueError, match="cov_factor"):
        D.LowRankMultivariateNormal(ng.tensor(_real(3)), ng.tensor(_real(2, 1)),
                                    ng.tensor(_pos(3)))
    with pytest.raises(NotImplementedError, match="total_count"):
        D.Multinomial(ng.tensor(3.0), probs=ng.tensor(_simplex(3)))


def test_jit_draws_afresh_and_gradients_flow():
    conc = ng.tensor([1.5, 3.0])

    @ng.jit
    def step(c):
        g = D.Gamma(c, 2.0).rsample((4,))
        st = D.StudentT(c).rsample()
        gu = D.Gumbel(ng.zeros(2), c).rsample()
        b = D.Binomial(5, probs=ng.tensor([0.3, 0.6])).sample()
        return g.sum() + st.sum() + gu.sum() + b.sum()

    ng.manual_seed(5)
    a1, a2 = float(step(conc)), float(step(conc))
    assert a1 != a2
    ng.manual_seed(5)
    assert float(step(conc)) == a1

    c = ng.tensor([1.5, 3.0], requires_grad=True)

    def loss(c):
        return D.Beta(c, 2.0).rsample((8,)).sum()

    g = ng.jit(ng.grad(loss))
    ng.manual_seed(0)
    g1 = g(c)
    g2 = g(c)
    assert np.all(np.isfinite(g1.numpy())) and not np.allclose(g1.numpy(), g2.numpy())


def test_lognormal_is_a_transformed_distribution():
    d = D.LogNormal(ng.tensor([0.2, -0.3]), ng.tensor([0.5, 1.5]))
    assert isinstance(d, D.TransformedDistribution)
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and tuple(e.loc.shape) in ((2,), (3, 2))
    assert "LogNormal" in repr(d)


def test_exponential_family_entropy_and_bregman_kl():
    from nodegrad.distributions.kl import _kl_expfamily_expfamily

    p = D.ContinuousBernoulli(ng.tensor([0.2, 0.7, 0.9], dtype=ng.float64))
    q = D.ContinuousBernoulli(ng.tensor([0.4, 0.3, 0.6], dtype=ng.float64))
    tp = TD.ContinuousBernoulli(torch.tensor([0.2, 0.7, 0.9], dtype=torch.float64))
    tq = TD.ContinuousBernoulli(torch.tensor([0.4, 0.3, 0.6], dtype=torch.float64))
    _close(D.ExponentialFamily.entropy(p), tp.entropy(), rtol=1e-10)
    _close(_kl_expfamily_expfamily(p, q), TD.kl_divergence(tp, tq), rtol=1e-10)
    with pytest.raises(NotImplementedError):
        _kl_expfamily_expfamily(p, D.ExponentialFamily())
