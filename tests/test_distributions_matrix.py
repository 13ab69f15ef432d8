"""Matrix-valued distributions (Wishart, LKJCholesky) and CorrCholeskyTransform against
torch.distributions in float64: values, gradients, samples and argument errors."""

import math

import numpy as np
import pytest
import torch
import torch.distributions as TD
import torch.distributions.transforms as TT

import nodegrad as ng
import nodegrad.distributions as D
from nodegrad.distributions import constraints as C
from nodegrad.distributions import transforms as T

RNG = np.random.default_rng(7)


def _spd(p, batch=()):
    a = RNG.standard_normal(batch + (p, p))
    return a @ np.swapaxes(a, -1, -2) + p * np.eye(p)


def _close(a, b, rtol=1e-10, atol=1e-12):
    a = a.detach().numpy() if isinstance(a, ng.Tensor) else a
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def _matrix_param(kind, sigma):
    if kind == "covariance_matrix":
        return sigma
    if kind == "precision_matrix":
        return np.linalg.inv(sigma)
    return np.linalg.cholesky(sigma)


# name -> (df, Σ batch shape, df given as a plain number)
WISHART = {
    "unbatched": (np.array(5.5), (), False),
    "batched": (np.array([3.2, 7.0]), (2,), False),
    "df_broadcast": (np.array([[4.0], [9.5]]), (3,), False),
    "number_df": (np.array(6.0), (2,), True),
    "low_df": (np.array([2.5, 3.5, 4.0]), (3,), False),  # dim - 1 < df <= dim + 1: no mode
}
KINDS = ["covariance_matrix", "precision_matrix", "scale_tril"]


def _wishart(case, kind, requires_grad=False):
    df, batch, number = WISHART[case]
    sigma = _spd(3, batch)
    m = _matrix_param(kind, sigma)
    ng_df = float(df) if number else ng.tensor(df, requires_grad=requires_grad)
    ng_m = ng.tensor(m, requires_grad=requires_grad)
    # torch's Wishart cannot take a number df with a batch of matrices (its mean fails), so
    # torch always gets a tensor df broadcast to the batch
    t_batch = np.broadcast_shapes(df.shape, batch)
    t_df = torch.tensor(np.broadcast_to(df, t_batch).copy(), requires_grad=requires_grad)
    t_m = torch.tensor(m, requires_grad=requires_grad)
    d = D.Wishart(ng_df, **{kind: ng_m})
    t = TD.Wishart(t_df, **{kind: t_m})
    return d, t, (ng_df, ng_m), (t_df, t_m), sigma


@pytest.mark.filterwarnings("ignore:.*df")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(WISHART))
def test_wishart_values_match_torch(case, kind):
    d, t, _, _, sigma = _wishart(case, kind)
    assert d.batch_shape == tuple(t.batch_shape) and d.event_shape == tuple(t.event_shape) == (3, 3)
    assert set(d.arg_constraints) == set(t.arg_constraints)
    assert d.has_rsample and t.has_rsample
    for name in ["mean", "mode", "variance", "covariance_matrix", "precision_matrix",
                 "scale_tril"]:
        _close(getattr(d, name), getattr(t, name))
    _close(d.covariance_matrix, np.broadcast_to(sigma, d.batch_shape + (3, 3)))
    _close(d.entropy(), t.entropy())
    _close(D.ExponentialFamily.entropy(d), t.entropy(), rtol=1e-9)  # via the log normalizer
    x = _spd(3, (4,) + d.batch_shape)
    _close(d.log_prob(ng.tensor(x)), t.log_prob(torch.tensor(x)))
    x1 = _spd(3)  # one value against the whole batch
    _close(d.log_prob(ng.tensor(x1)), t.log_prob(torch.tensor(x1)))


def test_wishart_mode_is_nan_without_interior_mode():
    d = D.Wishart(ng.tensor([3.5, 4.0, 4.5]), covariance_matrix=ng.tensor(_spd(3)))
    mode = d.mode.numpy()
    assert np.isnan(mode[:2]).all() and np.isfinite(mode[2]).all()


def test_wishart_log_prob_is_a_density_in_one_dimension():
    # 1 x 1 Wishart(df, σ²) is Gamma(df / 2, rate 1 / (2 σ²))
    f64 = ng.float64
    d = D.Wishart(ng.tensor(3.7, dtype=f64), covariance_matrix=ng.tensor([[1.8]], dtype=f64))
    g = D.Gamma(ng.tensor(3.7 / 2, dtype=f64), ng.tensor(1 / (2 * 1.8), dtype=f64))
    x = ng.tensor([0.3, 1.0, 4.2], dtype=f64)
    _close(d.log_prob(x[:, None, None]), g.log_prob(x))
    _close(d.entropy(), g.entropy())


@pytest.mark.filterwarnings("ignore:.*df")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["unbatched", "batched", "df_broadcast", "low_df"])
def test_wishart_gradients_match_torch(case, kind):
    d, t, (ng_df, ng_m), (t_df, t_m), _ = _wishart(case, kind, requires_grad=True)
    x = _spd(3, (2,) + d.batch_shape)
    w = RNG.uniform(0.5, 1.5, (2,) + d.batch_shape)
    f = (d.log_prob(ng.tensor(x)) * ng.tensor(w)).sum() + d.entropy().sum()
    g_df, g_m = ng.autograd.grad(f, [ng_df, ng_m], retain_graph=True)
    tf = (t.log_prob(torch.tensor(x)) * torch.tensor(w)).sum() + t.entropy().sum()
    tg_df, tg_m = torch.autograd.grad(tf, [t_df, t_m], retain_graph=True)
    _close(g_df.sum(), tg_df.sum(), rtol=1e-8)  # df is broadcast differently for torch
    if ng_df.shape == t_df.shape:
        _close(g_df, tg_df, rtol=1e-8)
    if kind == "scale_tril":
        # the density reads only the lower triangle of scale_tril: its gradient is zero above
        # the diagonal (torch's cholesky_solve backward leaves values there, not masked)
        assert not np.triu(g_m.numpy(), 1).any()
        g_m, tg_m = np.tril(g_m.numpy()), np.tril(tg_m.numpy())
    _close(g_m, tg_m, rtol=1e-8, atol=1e-10)
    # mean and variance are differentiable too
    d.mean.sum().backward()
    t.mean.sum().backward()
    _close(ng_m.grad, t_m.grad, rtol=1e-9, atol=1e-10)


def test_wishart_sample_shapes_support_seeds_and_expand():
    sigma = _spd(3, (2,))
    d = D.Wishart(ng.tensor([4.0, 6.5]), covariance_matrix=ng.tensor(sigma))
    ng.manual_seed(11)
    s = d.sample((5, 4))
    ng.manual_seed(11)
    s2 = d.sample((5, 4))
    assert tuple(s.shape) == (5, 4, 2, 3, 3) and not s.requires_grad
    np.testing.assert_array_equal(s.numpy(), s2.numpy())
    assert not np.array_equal(s.numpy(), d.sample((5, 4)).numpy())
    a = s.numpy()
    np.testing.assert_allclose(a, np.swapaxes(a, -1, -2), atol=1e-12)
    assert (np.linalg.eigvalsh(a) > 0).all()
    assert bool(ng.all(C.positive_definite.check(s)))
    assert np.isfinite(d.log_prob(s).numpy()).all()
    e = d.expand((7, 2))
    assert e.batch_shape == (7, 2) and tuple(e.sample((3,)).shape) == (3, 7, 2, 3, 3)
    assert tuple(e.log_prob(s[:, :1]).shape) == (5, 7, 2) and tuple(e.entropy().shape) == (7, 2)
    _close(e.mean, np.broadcast_to(d.mean.numpy(), (7, 2, 3, 3)))
    assert tuple(d.sample().shape) == (2, 3, 3)
    assert tuple(D.Wishart(3.0, scale_tril=ng.eye(2, dtype=ng.float64)).sample(6).shape) == \
        (6, 2, 2)


def test_wishart_sample_moments():
    sigma = _spd(3)
    df = np.array([3.5, 8.0])
    d = D.Wishart(ng.tensor(df), covariance_matrix=ng.tensor(sigma))
    ng.manual_seed(0)
    n = 20000
    s = d.sample((n,)).numpy()
    mean, var = d.mean.numpy(), d.variance.numpy()
    np.testing.assert_allclose(mean, df[:, None, None] * sigma)
    se = np.sqrt(var / n)
    assert np.all(np.abs(s.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(s.var(0), var, rtol=0.1)


def test_wishart_rsample_gradients():
    df = ng.tensor([4.0, 7.5], requires_grad=True)
    L = ng.tensor(np.linalg.cholesky(_spd(3)), requires_grad=True)
    ng.manual_seed(2)
    s = D.Wishart(df, scale_tril=L).rsample((3,), max_try_correction=2)
    assert s.requires_grad and tuple(s.shape) == (3, 2, 3, 3)
    g_df, g_L = ng.autograd.grad((s * s).sum(), [df, L])
    assert np.isfinite(g_df.numpy()).all() and np.abs(g_df.numpy()).min() > 0
    assert np.isfinite(g_L.numpy()).all() and np.abs(g_L.numpy()).max() > 0
    # pathwise gradient of E[tr X] = df tr Σ: d/d df is tr Σ, d/dL is 2 df L
    ng.manual_seed(3)
    n = 20000
    s = D.Wishart(df, scale_tril=L).rsample((n,))
    g_df, g_L = ng.autograd.grad(ng.diagonal(s, 0, -2, -1).sum() / n, [df, L])
    Lv = L.detach().numpy()
    np.testing.assert_allclose(g_df.numpy(), np.trace(Lv @ Lv.T) * np.ones(2), rtol=0.05)
    np.testing.assert_allclose(g_L.numpy(), 2 * 11.5 * np.tril(Lv), rtol=0.05, atol=0.3)


def test_wishart_bad_arguments():
    eye = ng.eye(3, dtype=ng.float64)
    with pytest.raises(ValueError, match="exactly one of covariance_matrix"):
        D.Wishart(4.0)
    with pytest.raises(ValueError, match="exactly one of covariance_matrix"):
        D.Wishart(4.0, covariance_matrix=eye, scale_tril=eye)
    with pytest.raises(ValueError, match="df"):
        D.Wishart(2.0, covariance_matrix=eye, validate_args=True)
    with pytest.raises(ValueError, match="df"):
        D.Wishart(ng.tensor([5.0, 1.5]), covariance_matrix=eye, validate_args=True)
    with pytest.raises(ValueError, match="square"):
        D.Wishart(4.0, covariance_matrix=ng.ones(3))
    with pytest.raises(ValueError, match="covariance_matrix"):
        D.Wishart(4.0, covariance_matrix=-eye, validate_args=True)
    with pytest.raises(ValueError, match="scale_tril"):
        D.Wishart(4.0, scale_tril=ng.ones((3, 3)), validate_args=True)
    with pytest.warns(UserWarning, match="df"):
        D.Wishart(2.5, covariance_matrix=eye)
    d = D.Wishart(4.0, covariance_matrix=eye, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(-eye)
    with pytest.raises(ValueError, match="event_shape"):
        d.log_prob(ng.eye(2, dtype=ng.float64))


# --- LKJCholesky ------------------------------------------------------------------------------

def _corr_cholesky(dim, batch=()):
    x = RNG.standard_normal(batch + (dim * (dim - 1) // 2,))
    return TT.CorrCholeskyTransform()(torch.tensor(x)).numpy()


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("concentration", [0.5, 1.0, 3.7, "batch"])
def test_lkj_log_prob_matches_torch(dim, concentration):
    c = np.array([0.3, 1.0, 2.5, 10.0] if concentration == "batch" else concentration)
    d = D.LKJCholesky(dim, ng.tensor(c))
    t = TD.LKJCholesky(dim, torch.tensor(c))
    assert d.batch_shape == tuple(t.batch_shape) and d.event_shape == tuple(t.event_shape)
    assert not d.has_rsample and d.support is C.corr_cholesky
    x = _corr_cholesky(dim, (3,) + d.batch_shape)
    _close(d.log_prob(ng.tensor(x)), t.log_prob(torch.tensor(x)))


def test_lkj_log_prob_is_normalised_in_two_dimensions():
    # for dim 2, L = [[1, 0], [r, sqrt(1 - r²)]] and r has density ∝ (1 - r²)^(c - 1) on (-1, 1)
    c = 2.3
    r = np.linspace(-0.999, 0.999, 20001)
    L = np.zeros(r.shape + (2, 2))
    L[:, 0, 0], L[:, 1, 0], L[:, 1, 1] = 1, r, np.sqrt(1 - r * r)
    p = np.exp(D.LKJCholesky(2, ng.tensor(c)).log_prob(ng.tensor(L)).numpy())
    # the density is of the off-diagonal entry r (the free coordinate), so it integrates to 1
    assert abs(np.sum((p[1:] + p[:-1]) / 2 * np.diff(r)) - 1) < 1e-3


def test_lkj_log_prob_gradient_matches_torch():
    c = ng.tensor([0.7, 2.0], dtype=ng.float64, requires_grad=True)
    tc = torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True)
    x = _corr_cholesky(4, (3, 2))
    (g,) = ng.autograd.grad(D.LKJCholesky(4, c).log_prob(ng.tensor(x)).sum(), [c])
    (tg,) = torch.autograd.grad(TD.LKJCholesky(4, tc).log_prob(torch.tensor(x)).sum(), [tc])
    _close(g, tg)


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_lkj_samples(dim):
    d = D.LKJCholesky(dim, ng.tensor([0.5, 1.0, 4.0], dtype=ng.float64))
    ng.manual_seed(4)
    s = d.sample((6,))
    ng.manual_seed(4)
    s2 = d.sample((6,))
    assert tuple(s.shape) == (6, 3, dim, dim) and not s.requires_grad
    np.testing.assert_array_equal(s.numpy(), s2.numpy())
    a = s.numpy()
    np.testing.assert_array_equal(a, np.tril(a))
    assert (np.diagonal(a, 0, -2, -1) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diagonal(a @ np.swapaxes(a, -1, -2), 0, -2, -1), 1.0,
                               atol=1e-12)
    assert bool(ng.all(C.corr_cholesky.check(s)))
    assert np.isfinite(d.log_prob(s).numpy()).all()
    e = d.expand((2, 3))
    assert e.batch_shape == (2, 3) and tuple(e.sample((4,)).shape) == (4, 2, 3, dim, dim)
    assert tuple(e.log_prob(s[:, None]).shape) == (6, 2, 3)
    default = D.LKJCholesky(dim).sample()  # a number concentration: the default dtype
    assert tuple(default.shape) == (dim, dim) and default.dtype == ng.get_default_dtype()


@pytest.mark.parametrize("dim,c", [(2, 0.5), (3, 1.0), (4, 3.0), (5, 0.7)])
def test_lkj_sample_moments(dim, c):
    """Each off-diagonal correlation r of LKJ(dim, c) has (r + 1) / 2 ~ Beta(b, b) with
    b = c - 1 + dim / 2: mean 0, variance 1 / (2 c + dim - 1)."""
    ng.manual_seed(0)
    n = 20000
    L = D.LKJCholesky(dim, ng.tensor(c, dtype=ng.float64)).sample((n,)).numpy()
    M = L @ np.swapaxes(L, -1, -2)
    i, j = np.tril_indices(dim, -1)
    r = M[:, i, j]
    var = 1 / (2 * c + dim - 1)
    assert np.all(np.abs(r.mean(0)) < 5 * math.sqrt(var / n))
    np.testing.assert_allclose(r.var(0), var, rtol=0.05)


def test_lkj_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        D.LKJCholesky(1)
    with pytest.raises(ValueError, match="dim"):
        D.LKJCholesky(2.0)
    with pytest.raises(ValueError, match="concentration"):
        D.LKJCholesky(3, 0.0)
    with pytest.raises(ValueError, match="concentration"):
        D.LKJCholesky(3, ng.tensor([1.0, -2.0]))
    d = D.LKJCholesky(2, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        d.log_prob(ng.tensor([[1.0, 0.0], [0.5, 0.5]]))


# --- CorrCholeskyTransform ----------------------------------------------------------------------

@pytest.mark.parametrize("dim,batch", [(2, ()), (3, (4,)), (5, (2, 3))])
def test_corr_cholesky_transform_matches_torch(dim, batch):
    x = RNG.standard_normal(batch + (dim * (dim - 1) // 2,)) * 1.5
    t, tt = T.CorrCholeskyTransform(), TT.CorrCholeskyTransform()
    y = t(ng.tensor(x))
    ty = tt(torch.tensor(x))
    _close(y, ty, rtol=1e-12, atol=1e-14)
    assert bool(ng.all(C.corr_cholesky.check(y)))
    _close(t.inv(y), x, rtol=1e-9, atol=1e-10)
    _close(t.inv(y), tt.inv(ty), rtol=1e-12, atol=1e-12)
    _close(t.log_abs_det_jacobian(ng.tensor(x), y), tt.log_abs_det_jacobian(torch.tensor(x), ty))
    _close(t.inv.log_abs_det_jacobian(y, ng.tensor(x)),
           tt.inv.log_abs_det_jacobian(ty, torch.tensor(x)))
    assert t.forward_shape(x.shape) == tuple(tt.forward_shape(x.shape)) == batch + (dim, dim)
    assert t.inverse_shape(batch + (dim, dim)) == x.shape
    assert t.bijective and t.domain.event_dim == 1 and t.codomain.event_dim == 2


def test_corr_cholesky_jacobian_by_finite_differences():
    """log |det J| of x -> the strict lower triangle of y, by central differences."""
    dim = 4
    m = dim * (dim - 1) // 2
    x = RNG.standard_normal(m)
    t = T.CorrCholeskyTransform()
    i, j = np.tril_indices(dim, -1)

    def f(v):
        return t(ng.tensor(v)).numpy()[i, j]

    h = 1e-6
    J = np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(m)], -1)
    want = np.linalg.slogdet(J)[1]
    got = t.log_abs_det_jacobian(ng.tensor(x), t(ng.tensor(x))).item()
    assert abs(got - want) < 1e-6


def test_corr_cholesky_transform_gradients():
    x = RNG.standard_normal((2, 6))
    t = T.CorrCholeskyTransform()
    assert ng.gradcheck(lambda v: t(v), x)
    assert ng.gradcheck(lambda v: t.log_abs_det_jacobian(v, t(v)), x)
    # the inverse reads only the strict lower triangle; off it the derivatives are zero
    assert ng.gradcheck(lambda v: t.inv(v), t(ng.tensor(x)).numpy())
    tx = torch.tensor(x, requires_grad=True)
    ty = TT.CorrCholeskyTransform()(tx)
    w = RNG.standard_normal(ty.shape)
    (tg,) = torch.autograd.grad((ty * torch.tensor(w)).sum(), [tx])
    xv = ng.tensor(x, requires_grad=True)
    (g,) = ng.autograd.grad((t(xv) * ng.tensor(w)).sum(), [xv])
    _close(g, tg)


def test_corr_cholesky_constraint_and_registries():
    for registry in (D.biject_to, D.transform_to):
        tr = registry(C.corr_cholesky)
        assert isinstance(tr, T.CorrCholeskyTransform) and tr.codomain is C.corr_cholesky
    assert C.corr_cholesky.event_dim == 2 and not C.corr_cholesky.is_discrete
    good = _corr_cholesky(3, (2,))
    bad_norm = good * 1.01
    upper = np.swapaxes(good, -1, -2)
    neg_diag = good * np.array([1, 1, -1])[:, None]
    for v in (good, bad_norm, upper, neg_diag):
        _close(C.corr_cholesky.check(ng.tensor(v)).numpy(),
               TD.constraints.corr_cholesky.check(torch.tensor(v)).numpy())
    assert C.corr_cholesky.check(ng.tensor(good)).numpy().all()
    assert not C.corr_cholesky.check(ng.tensor(bad_norm)).numpy().any()
    # an LKJ prior pushed through the bijection: a reparametrisation-ready density on R^3
    x = ng.tensor(RNG.standard_normal(3), requires_grad=True)
    prior = D.LKJCholesky(3, ng.tensor(2.0, dtype=ng.float64))
    tr = D.biject_to(prior.support)
    y = tr(x)
    lp = prior.log_prob(y) + tr.log_abs_det_jacobian(x, y)
    (g,) = ng.autograd.grad(lp, [x])
    assert np.isfinite(g.numpy()).all()
