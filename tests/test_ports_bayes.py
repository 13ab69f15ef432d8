"""Probabilistic deep learning with ``distributions``, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``), with
``nn = lib.nn``, ``F = lib.nn.functional``, ``D = lib.distributions``, in the style of the
papers' and tutorials' code: Bayes by Backprop, variational regression with ``kl_divergence``,
exact, sparse and deep-kernel Gaussian processes, mixture density networks, normalizing flows,
heteroscedastic and evidential regression, hand-written SVI, Langevin steps and conformal
quantiles. Both runs start from the same weights and see the same reparameterisation noise (a
stream drawn once by PyTorch's generator and fed to both libraries' standard-normal draws), so
losses, gradients and parameters agree step by step in float64.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import (_one_torch_thread, arrays, assert_same, both, draw,  # noqa: F401
                    float64_one_thread, seeded_build)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("float64_one_thread")


@contextlib.contextmanager
def fed_noise(lib, seed: int = 0):
    """Inside, ``lib``'s distributions draw their standard-normal noise (``rsample``) from one
    stream PyTorch's seeded generator makes, the same for both libraries call by call."""
    g = torch.Generator().manual_seed(seed)

    def next_eps(shape):
        return torch.randn(tuple(shape), generator=g, dtype=torch.float64)

    if lib is torch:
        import torch.distributions.lowrank_multivariate_normal as tl
        import torch.distributions.multivariate_normal as tm
        import torch.distributions.normal as tn
        import torch.distributions.studentT as ts
        import torch.distributions.utils as tu
        mods = (tn, tm, tl, ts, tu)
        olds = [m._standard_normal for m in mods]
        for m in mods:
            m._standard_normal = lambda shape, dtype, device: next_eps(shape).to(dtype)
        try:
            yield
        finally:
            for m, old in zip(mods, olds):
                m._standard_normal = old
    else:
        import nodegrad.distributions._ng as nd
        old = nd.randn
        nd.randn = lambda shape, dtype=None, device=None, generator=None: \
            ng.tensor(next_eps(shape).numpy()).astype(dtype)
        try:
            yield
        finally:
            nd.randn = old


@contextlib.contextmanager
def fed_gamma(lib, seed: int = 0):
    """Inside, ``lib``'s standard-gamma draws (Gamma, Chi2, StudentT ``rsample``) come from one
    stream PyTorch's seeded generator makes; each library attaches its own implicit
    reparameterisation gradient to the same samples."""
    g = torch.Generator().manual_seed(seed)
    if lib is torch:
        import torch.distributions.gamma as tg
        old = tg._standard_gamma
        tg._standard_gamma = lambda c: torch._standard_gamma(c, generator=g)
        try:
            yield
        finally:
            tg._standard_gamma = old
    else:
        import nodegrad.distributions.gamma as ngam
        old = ngam._standard_gamma_array

        def draw_gamma(gen, concentration, shape):
            c = torch.tensor(np.broadcast_to(concentration.numpy(), shape).copy())
            return torch._standard_gamma(c, generator=g).numpy()

        ngam._standard_gamma_array = draw_gamma
        try:
            yield
        finally:
            ngam._standard_gamma_array = old


def grads(params) -> list:
    """Each parameter's gradient (None where it has none) as float64 arrays."""
    return [None if p.grad is None else np.array(p.grad.detach().numpy(), np.float64)
            for p in params]


RNG = np.random.default_rng(0)
X1 = np.sort(RNG.uniform(-3, 3, (24, 1)), axis=0)
Y1 = np.sin(X1[:, 0]) + 0.1 * X1[:, 0] ** 2 + 0.2 * RNG.standard_normal(24)
X2 = RNG.standard_normal((32, 3))
Y2 = (X2 @ np.array([1.5, -2.0, 0.5]) + 0.3 * RNG.standard_normal(32) > 0).astype(np.float64)


# 1. Bayes by Backprop (Blundell et al. 2015): Gaussian posterior with softplus rho, a
#    scale-mixture prior, Monte-Carlo KL; and the local reparameterisation trick ---------------

def bbb_network(lib, local: bool = False):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions

    class ScaleMixturePrior:
        def __init__(self, pi, sigma1, sigma2):
            self.pi = pi
            self.n1 = D.Normal(0, sigma1)
            self.n2 = D.Normal(0, sigma2)

        def log_prob(self, w):
            p1 = lib.exp(self.n1.log_prob(w))
            p2 = lib.exp(self.n2.log_prob(w))
            return lib.log(self.pi * p1 + (1 - self.pi) * p2).sum()

    class BayesianLinear(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.weight_mu = nn.Parameter(lib.empty(n_out, n_in).uniform_(-0.2, 0.2))
            self.weight_rho = nn.Parameter(lib.empty(n_out, n_in).uniform_(-5, -4))
            self.bias_mu = nn.Parameter(lib.empty(n_out).uniform_(-0.2, 0.2))
            self.bias_rho = nn.Parameter(lib.empty(n_out).uniform_(-5, -4))
            self.prior = ScaleMixturePrior(0.5, math.exp(-0), math.exp(-6))
            self.log_prior = 0
            self.log_variational_posterior = 0

        def forward(self, x):
            w_sigma = lib.log1p(lib.exp(self.weight_rho))
            b_sigma = F.softplus(self.bias_rho)
            if local:
                act_mu = F.linear(x, self.weight_mu, self.bias_mu)
                act_var = F.linear(x ** 2, w_sigma ** 2, b_sigma ** 2)
                q = D.Normal(act_mu, act_var.sqrt())
                kl = D.kl_divergence(D.Normal(self.weight_mu, w_sigma), D.Normal(0.0, 1.0)).sum()
                kl = kl + D.kl_divergence(D.Normal(self.bias_mu, b_sigma),
                                          D.Normal(0.0, 1.0)).sum()
                self.log_variational_posterior, self.log_prior = kl, lib.zeros(())
                return q.rsample()
            qw = D.Normal(self.weight_mu, w_sigma)
            qb = D.Normal(self.bias_mu, b_sigma)
            w, b = qw.rsample(), qb.rsample()
            self.log_prior = self.prior.log_prob(w) + self.prior.log_prob(b)
            self.log_variational_posterior = qw.log_prob(w).sum() + qb.log_prob(b).sum()
            return F.linear(x, w, b)

    class BayesianNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = BayesianLinear(1, 16)
            self.l2 = BayesianLinear(16, 1)

        def forward(self, x):
            return self.l2(F.relu(self.l1(x)))

        def log_prior(self):
            return self.l1.log_prior + self.l2.log_prior

        def log_variational_posterior(self):
            return self.l1.log_variational_posterior + self.l2.log_variational_posterior

        def sample_elbo(self, x, y, samples=2, num_batches=3):
            outputs = lib.zeros(samples, x.shape[0])
            log_priors = lib.zeros(samples)
            log_vps = lib.zeros(samples)
            for i in range(samples):
                outputs[i] = self(x).squeeze(-1)
                log_priors[i] = self.log_prior()
                log_vps[i] = self.log_variational_posterior()
            nll = -D.Normal(outputs, 0.2).log_prob(y.expand_as(outputs)).sum(1).mean()
            loss = (log_vps.mean() - log_priors.mean()) / num_batches + nll
            return loss, nll

    return BayesianNetwork()


def bayes_by_backprop(lib, local: bool = False, steps: int = 4):
    net = seeded_build(lib, lambda lib: bbb_network(lib, local))
    opt = lib.optim.Adam(net.parameters(), lr=1e-2)
    x, y = lib.tensor(X1), lib.tensor(Y1)
    rec = {"loss": [], "nll": [], "g": []}
    with fed_noise(lib, 1):
        for _ in range(steps):
            opt.zero_grad()
            loss, nll = net.sample_elbo(x, y)
            loss.backward()
            rec["g"].append(grads(net.parameters()))
            opt.step()
            rec["loss"].append(loss.item())
            rec["nll"].append(nll.item())
        with lib.no_grad():
            preds = lib.stack([net(x) for _ in range(3)])
    rec["mean"], rec["std"] = preds.mean(0), preds.std(0)
    rec["w"] = arrays(net.state_dict())
    return rec


@pytest.mark.parametrize("local", [False, True])
def test_bayes_by_backprop(local):
    got = both(bayes_by_backprop, local)
    assert bool((got["std"] > 0).all())


# 2. variational regression without a VAE: a mean-field Normal posterior over weights with
#    rsample and analytic kl_divergence (Normal/Normal, Independent/Independent, and a
#    full-covariance MultivariateNormal posterior against a MultivariateNormal prior) -----------

def variational_regression(lib, form: str = "normal", steps: int = 5):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    phi = lib.tensor(np.concatenate([X2, np.ones((32, 1))], 1))
    y = lib.tensor(Y2 * 2 - 1)
    mu = nn.Parameter(lib.tensor(draw(4, seed=3)) * 0.1)
    rho = nn.Parameter(lib.full((4,), -3.0))
    raw_tril = nn.Parameter(lib.tensor(draw(4, 4, seed=4)) * 0.05)
    log_noise = nn.Parameter(lib.tensor(-1.0))
    params = [mu, rho, raw_tril, log_noise]
    opt = lib.optim.Adam(params, lr=0.05)
    rec = {"loss": [], "kl": [], "g": []}
    with fed_noise(lib, 2):
        for _ in range(steps):
            opt.zero_grad()
            if form == "normal":
                q = D.Normal(mu, F.softplus(rho))
                p = D.Normal(lib.zeros_like(mu), lib.ones_like(mu))
                kl = D.kl_divergence(q, p).sum()
                w = q.rsample((3,))
            elif form == "independent":
                q = D.Independent(D.Normal(mu, F.softplus(rho)), 1)
                p = D.Independent(D.Normal(lib.zeros(4), 2.0 * lib.ones(4)), 1)
                kl = D.kl_divergence(q, p)
                w = q.rsample((3,))
                assert q.batch_shape == () and q.event_shape == (4,)
            else:
                L = lib.tril(raw_tril, -1) + lib.diag_embed(F.softplus(rho))
                q = D.MultivariateNormal(mu, scale_tril=L)
                cov = 0.5 * lib.eye(4) + 0.5
                p = D.MultivariateNormal(lib.zeros(4), covariance_matrix=cov)
                kl = D.kl_divergence(q, p)
                w = q.rsample((3,))
                rec.setdefault("ent", []).append(q.entropy())
            pred = w @ phi.T  # (3, 32)
            lik = D.Normal(pred, lib.exp(log_noise))
            nll = -lik.log_prob(y).sum(-1).mean()
            loss = nll + kl
            loss.backward()
            rec["g"].append(grads(params))
            opt.step()
            rec["loss"].append(loss.item())
            rec["kl"].append(kl.item())
    rec["p"] = [p.detach() for p in params]
    return rec


@pytest.mark.parametrize("form", ["normal", "independent", "mvn"])
def test_variational_regression_kl(form):
    both(variational_regression, form)


# 3. exact GP regression as the GPyTorch tutorials compute it by hand: RBF and Matern-5/2
#    kernels, Cholesky, cholesky_solve, the marginal likelihood as
#    MultivariateNormal(scale_tril=).log_prob, hyperparameters trained with Adam through softplus

def rbf(lib, x1, x2, lengthscale, outputscale):
    d2 = lib.cdist(x1 / lengthscale, x2 / lengthscale).pow(2)
    return outputscale * lib.exp(-0.5 * d2)


def matern52(lib, x1, x2, lengthscale, outputscale):
    diff = (x1.unsqueeze(-2) - x2.unsqueeze(-3)) / lengthscale
    r = lib.sqrt(diff.pow(2).sum(-1).clamp_min(1e-15))
    s5 = math.sqrt(5) * r
    return outputscale * (1 + s5 + 5.0 / 3.0 * r ** 2) * lib.exp(-s5)


def exact_gp(lib, kernel: str = "rbf", steps: int = 8):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    k = rbf if kernel == "rbf" else matern52
    dt = lib.get_default_dtype()
    x, y = lib.tensor(X1, dtype=dt), lib.tensor(Y1, dtype=dt)
    xs = lib.linspace(-3.5, 3.5, 7).unsqueeze(-1)
    raw = nn.ParameterDict({"lengthscale": nn.Parameter(lib.tensor(0.0)),
                            "outputscale": nn.Parameter(lib.tensor(0.0)),
                            "noise": nn.Parameter(lib.tensor(-1.0)),
                            "mean": nn.Parameter(lib.tensor(0.0))})
    opt = lib.optim.Adam(raw.parameters(), lr=0.1)
    rec = {"mll": [], "hyp": [], "g": []}
    n = x.shape[0]
    for _ in range(steps):
        opt.zero_grad()
        ls, os_ = F.softplus(raw["lengthscale"]), F.softplus(raw["outputscale"])
        noise = F.softplus(raw["noise"]) + 1e-4
        K = k(lib, x, x, ls, os_) + noise * lib.eye(n)
        L = lib.linalg.cholesky(K)
        mvn = D.MultivariateNormal(raw["mean"].expand(n), scale_tril=L)
        mll = mvn.log_prob(y) / n
        (-mll).backward()
        rec["g"].append(grads(raw.parameters()))
        opt.step()
        rec["mll"].append(mll.item())
        rec["hyp"].append([ls.item(), os_.item(), noise.item()])
    with lib.no_grad():
        ls, os_ = F.softplus(raw["lengthscale"]), F.softplus(raw["outputscale"])
        noise = F.softplus(raw["noise"]) + 1e-4
        L = lib.linalg.cholesky(k(lib, x, x, ls, os_) + noise * lib.eye(n))
        alpha = lib.cholesky_solve((y - raw["mean"]).unsqueeze(-1), L)
        Ks = k(lib, xs, x, ls, os_)
        mean = raw["mean"] + (Ks @ alpha).squeeze(-1)
        v = lib.linalg.solve_triangular(L, Ks.T, upper=False)
        var = os_ - v.pow(2).sum(0)
        cov = k(lib, xs, xs, ls, os_) - v.T @ v + 1e-6 * lib.eye(7)
        pred = D.MultivariateNormal(mean, covariance_matrix=cov)
        lower, upper = mean - 2 * var.sqrt(), mean + 2 * var.sqrt()
    rec.update(mean=mean, var=var, lower=lower, upper=upper, pvar=pred.variance,
               pstd=pred.stddev, ptril=pred.scale_tril, logdet=2 * L.diagonal().log().sum())
    return rec


@pytest.mark.parametrize("kernel", ["rbf", "matern52"])
def test_exact_gp_marginal_likelihood(kernel):
    both(exact_gp, kernel)


def batch_gp(lib, steps: int = 5):
    """A batch-independent two-output GP: one kernel per output (hyperparameters of shape
    (2, 1, 1)), a batch of MultivariateNormal marginal likelihoods, Adam with StepLR."""
    F, D = lib.nn.functional, lib.distributions
    x = lib.tensor(X1)
    Y = lib.stack([lib.tensor(Y1), lib.tensor(np.cos(X1[:, 0]))], 0)
    raw_ls, raw_os = lib.nn.Parameter(lib.zeros(2, 1, 1)), lib.nn.Parameter(lib.zeros(2, 1, 1))
    raw_noise, mean = lib.nn.Parameter(lib.full((2, 1, 1), -1.0)), lib.nn.Parameter(lib.zeros(2, 1))
    params = [raw_ls, raw_os, raw_noise, mean]
    opt = lib.optim.Adam(params, lr=0.1)
    sched = lib.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    n = x.shape[0]
    xb = x.unsqueeze(0).expand(2, n, 1)
    rec = {"loss": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        ls, os_ = F.softplus(raw_ls), F.softplus(raw_os)
        K = os_ * lib.exp(-0.5 * lib.cdist(xb / ls, xb / ls).pow(2))
        K = K + (F.softplus(raw_noise) + 1e-4) * lib.eye(n)
        mvn = D.MultivariateNormal(mean.expand(2, n), covariance_matrix=K)
        loss = -mvn.log_prob(Y).sum() / n
        loss.backward()
        rec["g"].append(grads(params))
        opt.step()
        sched.step()
        rec["loss"].append(loss.item())
    with lib.no_grad():
        alpha = lib.cholesky_solve((Y - mean).unsqueeze(-1), lib.linalg.cholesky(K))
    rec.update(alpha=alpha, tril=mvn.scale_tril, var=mvn.variance, ent=mvn.entropy(),
               shape=[list(mvn.batch_shape), list(mvn.event_shape)])
    return rec


def test_batch_independent_multioutput_gp():
    both(batch_gp)


def test_exact_gp_float32():
    """GPyTorch's default precision: the same program with float32 as the default dtype."""
    try:
        torch.set_default_dtype(torch.float32)
        ng.set_default_dtype(ng.float32)
        got = both(exact_gp, "rbf", tol=2e-5)
    finally:
        torch.set_default_dtype(torch.float64)
        ng.set_default_dtype(ng.float64)
    assert got["mean"].dtype == ng.float32


# 4. a sparse variational GP (SVGP, Hensman et al.) with whitening: q(u) = N(m, S S^T) over
#    whitened inducing values, KL to N(0, I), the closed-form expected Gaussian log-likelihood,
#    inducing locations learned; then deep kernel learning (an MLP feature map under an RBF GP) --

def svgp(lib, steps: int = 6, whiten: bool = True):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    x, y = lib.tensor(X1), lib.tensor(Y1)
    m_ind = 5
    Z = nn.Parameter(lib.linspace(-2.5, 2.5, m_ind).unsqueeze(-1))
    q_mu = nn.Parameter(lib.zeros(m_ind))
    q_sqrt_raw = nn.Parameter(lib.tensor(draw(m_ind, m_ind, seed=5)) * 0.1)
    raw_ls, raw_os, raw_noise = (nn.Parameter(lib.tensor(v)) for v in (0.0, 0.5, -1.0))
    params = [Z, q_mu, q_sqrt_raw, raw_ls, raw_os, raw_noise]
    opt = lib.optim.Adam(params, lr=0.05)
    rec = {"elbo": [], "kl": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        ls, os_, noise = F.softplus(raw_ls), F.softplus(raw_os), F.softplus(raw_noise)
        Kuu = rbf(lib, Z, Z, ls, os_) + 1e-6 * lib.eye(m_ind)
        Kuf = rbf(lib, Z, x, ls, os_)
        Lu = lib.linalg.cholesky(Kuu)
        S = lib.tril(q_sqrt_raw, -1) + lib.diag_embed(lib.exp(q_sqrt_raw.diagonal()))
        q_u = D.MultivariateNormal(q_mu, scale_tril=S)
        if whiten:
            A = lib.linalg.solve_triangular(Lu, Kuf, upper=False)  # L^-1 Kuf
            prior = D.MultivariateNormal(lib.zeros(m_ind), scale_tril=lib.eye(m_ind))
        else:
            A = lib.cholesky_solve(Kuf, Lu)  # Kuu^-1 Kuf
            prior = D.MultivariateNormal(lib.zeros(m_ind), scale_tril=Lu)
        f_mean = A.T @ q_mu
        SA = S.T @ A
        if whiten:
            f_var = os_ - A.pow(2).sum(0) + SA.pow(2).sum(0)
        else:
            f_var = os_ - (Kuf * A).sum(0) + SA.pow(2).sum(0)
        ell = (D.Normal(f_mean, noise.sqrt()).log_prob(y) - 0.5 * f_var / noise).sum()
        kl = D.kl_divergence(q_u, prior)
        elbo = ell - kl
        (-elbo / x.shape[0]).backward()
        rec["g"].append(grads(params))
        opt.step()
        rec["elbo"].append(elbo.item())
        rec["kl"].append(kl.item())
    rec["p"] = [p.detach() for p in params]
    return rec


@pytest.mark.parametrize("whiten", [True, False])
def test_svgp_whitened_inducing_points(whiten):
    both(svgp, whiten=whiten)


def dkl_model(lib):
    nn = lib.nn

    class FeatureExtractor(nn.Sequential):
        def __init__(self):
            super().__init__()
            self.add_module("linear1", nn.Linear(3, 16))
            self.add_module("relu1", nn.ReLU())
            self.add_module("linear2", nn.Linear(16, 2))

    class DKL(nn.Module):
        def __init__(self):
            super().__init__()
            self.feature_extractor = FeatureExtractor()
            self.scale_to_bounds = nn.Tanh()
            self.raw_lengthscale = nn.Parameter(lib.zeros(1, 2))
            self.raw_noise = nn.Parameter(lib.tensor(-2.0))

        def forward(self, x):
            return self.scale_to_bounds(self.feature_extractor(x))

    return DKL()


def deep_kernel_learning(lib, steps: int = 5):
    F, D = lib.nn.functional, lib.distributions
    model = seeded_build(lib, dkl_model)
    x, y = lib.tensor(X2), lib.tensor(Y2 - 0.5)
    opt = lib.optim.Adam([{"params": model.feature_extractor.parameters()},
                          {"params": [model.raw_lengthscale, model.raw_noise], "lr": 0.05}],
                         lr=0.01)
    rec = {"loss": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        z = model(x)
        ls = F.softplus(model.raw_lengthscale)
        K = rbf(lib, z, z, ls, 1.0)
        K = K + (F.softplus(model.raw_noise) + 1e-4) * lib.eye(32)
        mll = D.MultivariateNormal(lib.zeros(32), covariance_matrix=K).log_prob(y)
        loss = -mll / 32
        loss.backward()
        rec["g"].append(grads(model.parameters()))
        opt.step()
        rec["loss"].append(loss.item())
    rec["w"] = arrays(model.state_dict())
    return rec


def test_deep_kernel_learning():
    both(deep_kernel_learning)


# 5. a mixture density network (Bishop): MixtureSameFamily(Categorical, Independent(Normal)),
#    its log_prob, mean, variance, a univariate mixture's cdf, and the shapes it reports ---------

def mdn_model(lib, k: int = 3, d: int = 2):
    nn = lib.nn

    class MDN(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Sequential(nn.Linear(3, 16), nn.Tanh())
            self.pi = nn.Linear(16, k)
            self.mu = nn.Linear(16, k * d)
            self.sigma = nn.Linear(16, k * d)

        def forward(self, x):
            D = lib.distributions
            h = self.hidden(x)
            mix = D.Categorical(logits=self.pi(h))
            mu = self.mu(h).view(-1, k, d)
            sigma = lib.nn.functional.elu(self.sigma(h)).add(1 + 1e-6).view(-1, k, d)
            comp = D.Independent(D.Normal(mu, sigma), 1)
            return D.MixtureSameFamily(mix, comp)

    return MDN()


def mdn(lib, steps: int = 4):
    D = lib.distributions
    model = seeded_build(lib, mdn_model)
    x = lib.tensor(X2)
    y = lib.stack([lib.tensor(Y2), lib.tensor(np.sin(X2[:, 0]))], -1)
    opt = lib.optim.RMSprop(model.parameters(), lr=1e-2)
    rec = {"nll": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        gmm = model(x)
        nll = -gmm.log_prob(y).mean()
        nll.backward()
        rec["g"].append(grads(model.parameters()))
        opt.step()
        rec["nll"].append(nll.item())
    with lib.no_grad():
        gmm = model(x)
        rec["mean"], rec["var"] = gmm.mean, gmm.variance
        rec["shape"] = [list(gmm.batch_shape), list(gmm.event_shape),
                        list(gmm.component_distribution.batch_shape),
                        list(gmm.mixture_distribution.probs.shape),
                        list(gmm.sample((5,)).shape)]
        rec["grid"] = gmm.log_prob(y.unsqueeze(1).expand(32, 4, 2).transpose(0, 1))
        uni = D.MixtureSameFamily(D.Categorical(probs=gmm.mixture_distribution.probs),
                                  D.Normal(gmm.component_distribution.base_dist.loc[..., 0],
                                           gmm.component_distribution.base_dist.scale[..., 0]))
        t = lib.linspace(-2, 2, 5).unsqueeze(-1)
        rec["cdf"] = uni.cdf(t)
        rec["uni"] = [uni.log_prob(t), uni.mean, uni.variance, uni.stddev]
    rec["w"] = arrays(model.state_dict())
    return rec


def test_mixture_density_network():
    got = both(mdn)
    assert got["shape"] == [[32], [2], [32, 3], [32, 3], [5, 32, 2]]


# 6. normalizing flows with TransformedDistribution and distributions.transforms: fixed
#    bijections (affine, sigmoid, tanh, exp, power, ComposeTransform, inverses), and a
#    learnable planar flow written as a Transform subclass, trained by maximum likelihood --------

def fixed_flows(lib):
    D = lib.distributions
    T = D.transforms
    base = D.Normal(lib.tensor([0.3, -0.2]), lib.tensor([1.2, 0.7]))
    rec = {}
    chains = {
        "logit_normal": [T.AffineTransform(0.5, 2.0), T.SigmoidTransform()],
        "tanh": [T.TanhTransform(cache_size=1)],
        "compose": [T.ComposeTransform([T.AffineTransform(-1.0, 0.5), T.ExpTransform(),
                                        T.PowerTransform(lib.tensor(1.5))])],
        "inverse": [T.SigmoidTransform(), T.SigmoidTransform().inv, T.AffineTransform(1.0, -3.0)],
    }
    x = lib.tensor([[0.1, 0.4], [0.8, 0.05], [0.6, 0.5]])
    with fed_noise(lib, 6):
        for name, ts in chains.items():
            d = D.TransformedDistribution(base, ts)
            if name == "inverse":
                v = lib.tensor([[0.5, -4.0], [2.0, -0.5], [0.1, 1.0]])
            elif name == "compose":
                v = x + 0.2
            elif name == "tanh":
                v = x * 2 - 1
            else:
                v = x
            s = d.rsample((4,))
            rec[name] = {"lp": d.log_prob(v), "s": s, "lp_s": d.log_prob(s),
                         "shape": [list(d.batch_shape), list(d.event_shape)]}
            if name != "inverse":
                rec[name]["cdf"] = d.cdf(v)
                rec[name]["icdf"] = d.icdf(lib.tensor([0.2, 0.9]))
    t = T.ComposeTransform([T.AffineTransform(0.0, 2.0), T.TanhTransform()])
    u = lib.tensor([-0.4, 0.1, 0.9])
    y = t(u)
    rec["ladj"] = [t.log_abs_det_jacobian(u, y), t.inv(y), t.inv.log_abs_det_jacobian(y, u)]
    rec["sign"] = [int(T.AffineTransform(0.0, -2.0).sign), int(T.SigmoidTransform().sign)]
    return rec


def test_fixed_flows():
    both(fixed_flows)


def planar_flow(lib, steps: int = 5):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    constraints, T = D.constraints, D.transforms

    class PlanarTransform(T.Transform):
        domain = constraints.real_vector
        codomain = constraints.real_vector
        bijective = True

        def __init__(self, u, w, b):
            super().__init__(cache_size=1)
            self.u, self.w, self.b = u, w, b

        def _u_hat(self):
            wu = (self.w * self.u).sum()
            return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w ** 2).sum()

        def _call(self, z):
            return z + self._u_hat() * lib.tanh(z @ self.w + self.b).unsqueeze(-1)

        def log_abs_det_jacobian(self, z, y):
            psi = (1 - lib.tanh(z @ self.w + self.b) ** 2).unsqueeze(-1) * self.w
            return lib.log(lib.abs(1 + psi @ self._u_hat()) + 1e-8)

    params = []
    flows = []
    for i in range(2):
        u = nn.Parameter(lib.tensor(draw(2, seed=10 + i)) * 0.5)
        w = nn.Parameter(lib.tensor(draw(2, seed=20 + i)) * 0.5)
        b = nn.Parameter(lib.zeros(()))
        params += [u, w, b]
        flows.append(PlanarTransform(u, w, b))
    base = D.MultivariateNormal(lib.zeros(2), lib.eye(2))
    opt = lib.optim.Adam(params, lr=0.05)
    data = lib.tensor(np.stack([X1[:, 0], Y1], -1))
    rec = {"kl": [], "g": []}
    with fed_noise(lib, 7):
        for _ in range(steps):
            opt.zero_grad()
            flow = D.TransformedDistribution(base, flows)
            z = flow.rsample((16,))  # the reverse-KL objective needs the cached inverse
            target = D.MultivariateNormal(lib.tensor([0.5, -0.5]),
                                          lib.tensor([[1.0, 0.6], [0.6, 1.0]]))
            kl = (flow.log_prob(z) - target.log_prob(z)).mean()
            fwd = -sum(f.log_abs_det_jacobian(data, f(data)).mean() for f in flows)
            loss = kl + 0.1 * fwd
            loss.backward()
            rec["g"].append(grads(params))
            opt.step()
            rec["kl"].append(kl.item())
    rec["p"] = [p.detach() for p in params]
    return rec


def test_planar_flow_transform_subclass():
    both(planar_flow)


# 7. heteroscedastic regression (Nix & Weigend; Kendall & Gal): a mean and a variance head,
#    trained with Normal.log_prob, GaussianNLLLoss (full, eps, reductions, a shared variance)
#    and the beta-NLL of Seitzer et al. ---------------------------------------------------------

def hetero_model(lib):
    nn = lib.nn

    class HeteroNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(1, 16), nn.SiLU(), nn.Linear(16, 16), nn.SiLU())
            self.mean = nn.Linear(16, 1)
            self.logvar = nn.Linear(16, 1)

        def forward(self, x):
            h = self.body(x)
            return self.mean(h), self.logvar(h).clamp(-6, 6)

    return HeteroNet()


def heteroscedastic(lib, form: str = "log_prob", steps: int = 5):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    model = seeded_build(lib, hetero_model)
    x, y = lib.tensor(X1), lib.tensor(Y1).unsqueeze(-1)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.GaussianNLLLoss(full=True, eps=1e-6, reduction="mean")
    rec = {"loss": [], "g": [], "extra": []}
    for _ in range(steps):
        opt.zero_grad()
        mu, logvar = model(x)
        var = logvar.exp()
        if form == "log_prob":
            loss = -D.Normal(mu, var.sqrt()).log_prob(y).mean()
        elif form == "gaussian_nll":
            loss = crit(mu, y, var)
            rec["extra"].append([F.gaussian_nll_loss(mu, y, var, reduction="sum"),
                                 F.gaussian_nll_loss(mu.squeeze(-1), y.squeeze(-1),
                                                     var[:1, 0].expand(24)),
                                 F.gaussian_nll_loss(mu, y, var.mean().reshape(1, 1) * 1e-9,
                                                     eps=1e-3, reduction="none")])
        else:  # beta-NLL: each point's NLL weighted by its stop-gradient variance ** beta
            nll = 0.5 * ((y - mu) ** 2 / var + logvar)
            loss = (nll * var.detach() ** 0.5).mean()
        loss.backward()
        rec["g"].append(grads(model.parameters()))
        opt.step()
        rec["loss"].append(loss.item())
    rec["w"] = arrays(model.state_dict())
    return rec


@pytest.mark.parametrize("form", ["log_prob", "gaussian_nll", "beta_nll"])
def test_heteroscedastic_regression(form):
    both(heteroscedastic, form)


def test_gaussian_nll_loss_bad_variance():
    crit = ng.nn.GaussianNLLLoss()
    mu, y = ng.zeros(4, 1), ng.ones(4, 1)
    with pytest.raises((ValueError, RuntimeError), match="negative|var"):
        crit(mu, y, -ng.ones(4, 1))


# 8. deep evidential regression (Amini et al. 2020): a Normal-Inverse-Gamma head, its negative
#    log-likelihood (a Student-t) and the evidence regulariser ----------------------------------

def evidential_model(lib):
    nn = lib.nn

    class DenseNormalGamma(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.dense = nn.Linear(n_in, 4 * n_out)

        def forward(self, x):
            F = lib.nn.functional
            gamma, lognu, logalpha, logbeta = lib.split(self.dense(x), 1, dim=-1)
            nu, alpha, beta = F.softplus(lognu), F.softplus(logalpha) + 1, F.softplus(logbeta)
            return lib.cat([gamma, nu, alpha, beta], dim=-1)

    return nn.Sequential(nn.Linear(1, 16), nn.ReLU(), DenseNormalGamma(16, 1))


def evidential(lib, steps: int = 5, coeff: float = 1e-2):
    model = seeded_build(lib, evidential_model)
    x, y = lib.tensor(X1), lib.tensor(Y1).unsqueeze(-1)
    opt = lib.optim.Adam(model.parameters(), lr=5e-3)

    def nig_nll(y, gamma, v, alpha, beta):
        two_blambda = 2 * beta * (1 + v)
        nll = 0.5 * lib.log(math.pi / v) - alpha * lib.log(two_blambda) \
            + (alpha + 0.5) * lib.log(v * (y - gamma) ** 2 + two_blambda) \
            + lib.lgamma(alpha) - lib.lgamma(alpha + 0.5)
        return nll.mean()

    def nig_reg(y, gamma, v, alpha, beta):
        return (lib.abs(y - gamma) * (2 * v + alpha)).mean()

    rec = {"loss": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        gamma, v, alpha, beta = model(x).unbind(-1)
        yy = y.squeeze(-1)
        loss = nig_nll(yy, gamma, v, alpha, beta) + coeff * nig_reg(yy, gamma, v, alpha, beta)
        loss.backward()
        rec["g"].append(grads(model.parameters()))
        opt.step()
        rec["loss"].append(loss.item())
    with lib.no_grad():
        gamma, v, alpha, beta = model(x).unbind(-1)
        aleatoric = beta / (alpha - 1)
        epistemic = beta / (v * (alpha - 1))
        t = lib.distributions.StudentT(2 * alpha, gamma, lib.sqrt(beta * (1 + v) / (v * alpha)))
        rec["pred"] = [aleatoric, epistemic, t.log_prob(y.squeeze(-1)), t.variance, t.entropy()]
    rec["w"] = arrays(model.state_dict())
    return rec


def test_deep_evidential_regression():
    both(evidential)


# 9. stochastic variational inference of a Bayesian logistic regression in the Pyro style,
#    written by hand: a LowRankMultivariateNormal guide over the weights, a Gamma-distributed
#    prior precision with a LogNormal guide, Bernoulli(logits=) likelihood, analytic entropies
#    and KLs, and the Beta/Gamma/Dirichlet/Bernoulli pieces such models use -------------------

def svi_logistic(lib, steps: int = 5, num_particles: int = 2, tau_guide: str = "lognormal"):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    x = lib.tensor(np.concatenate([X2, np.ones((32, 1))], 1))
    y = lib.tensor(Y2)
    loc = nn.Parameter(lib.zeros(4))
    cov_factor = nn.Parameter(lib.tensor(draw(4, 2, seed=8)) * 0.1)
    raw_diag = nn.Parameter(lib.full((4,), -2.0))
    tau_loc, tau_raw = nn.Parameter(lib.tensor(0.0)), nn.Parameter(lib.tensor(-1.0))
    params = [loc, cov_factor, raw_diag, tau_loc, tau_raw]
    opt = lib.optim.Adam(params, lr=0.05, betas=(0.9, 0.99))
    rec = {"elbo": [], "g": [], "ent": []}
    with fed_noise(lib, 9), fed_gamma(lib, 10):
        for _ in range(steps):
            opt.zero_grad()
            q_w = D.LowRankMultivariateNormal(loc, cov_factor, F.softplus(raw_diag))
            if tau_guide == "lognormal":
                q_tau = D.LogNormal(tau_loc, F.softplus(tau_raw))
            else:  # a Gamma guide: implicit reparameterisation gradients
                q_tau = D.Gamma(F.softplus(tau_loc) + 0.5, F.softplus(tau_raw) + 0.5)
            p_tau = D.Gamma(lib.tensor(2.0), lib.tensor(1.0))
            elbo = 0.0
            for _ in range(num_particles):
                w = q_w.rsample()
                tau = q_tau.rsample()
                p_w = D.Independent(D.Normal(lib.zeros(4), tau.rsqrt().expand(4)), 1)
                log_lik = D.Bernoulli(logits=x @ w).log_prob(y).sum()
                elbo = elbo + log_lik + p_w.log_prob(w) + p_tau.log_prob(tau) \
                    - q_w.log_prob(w) - q_tau.log_prob(tau)
            loss = -elbo / num_particles
            loss.backward()
            rec["g"].append(grads(params))
            opt.step()
            rec["elbo"].append(-loss.item())
            rec["ent"].append([q_w.entropy(), q_tau.entropy()])
    with lib.no_grad():
        q_w = D.LowRankMultivariateNormal(loc, cov_factor, F.softplus(raw_diag))
        full = D.MultivariateNormal(q_w.mean, covariance_matrix=q_w.covariance_matrix)
        prior = D.MultivariateNormal(lib.zeros(4), scale_tril=2.0 * lib.eye(4))
        rec["post"] = [q_w.variance, q_w.scale_tril, q_w.precision_matrix, full.log_prob(loc),
                       D.kl_divergence(q_w, prior), D.kl_divergence(full, prior),
                       D.kl_divergence(q_w, full)]
        probs = D.Bernoulli(logits=x @ loc).probs
        rec["probs"] = probs
    rec["p"] = [p.detach() for p in params]
    return rec


@pytest.mark.parametrize("tau_guide", ["lognormal", "gamma"])
def test_svi_bayesian_logistic_regression(tau_guide):
    both(svi_logistic, tau_guide=tau_guide)


def student_t_samples(lib):
    """StudentT and Chi2 reparameterised samples (normal and gamma noise fed) and the
    gradients of a loss on them with respect to df, loc and scale."""
    D = lib.distributions
    df = lib.tensor([1.5, 4.0, 30.0], requires_grad=True)
    loc = lib.tensor([0.0, 1.0, -1.0], requires_grad=True)
    scale = lib.tensor([1.0, 0.5, 2.0], requires_grad=True)
    with fed_noise(lib, 22), fed_gamma(lib, 23):
        t = D.StudentT(df, loc, scale).rsample((4,))
        c = D.Chi2(df).rsample((2,))
        g = D.Gamma(df, scale).rsample()
    loss = (t.tanh() ** 2).sum() + c.log().sum() + g.sqrt().sum()
    return {"t": t, "c": c, "g": g, "grad": lib.autograd.grad(loss, [df, loc, scale])}


def test_student_t_chi2_gamma_rsample_gradients():
    both(student_t_samples)


def distribution_pieces(lib):
    D = lib.distributions
    a = lib.tensor([0.5, 2.0, 3.5], requires_grad=True)
    b = lib.tensor([1.5, 0.7, 2.0], requires_grad=True)
    v = lib.tensor([0.2, 0.5, 0.9])
    beta, gamma = D.Beta(a, b), D.Gamma(a, b)
    dirichlet = D.Dirichlet(a)
    bern = D.Bernoulli(logits=lib.tensor([-3.0, 0.0, 40.0]))
    normal = D.Normal(a, b)
    out = {
        "beta": [beta.log_prob(v), beta.entropy(), beta.mean, beta.variance, beta.mode],
        "gamma": [gamma.log_prob(v + 1), gamma.entropy(), D.Gamma(a.detach(), b).cdf(v + 1),
                  gamma.mean, gamma.variance],
        "dirichlet": [dirichlet.log_prob(lib.tensor([0.2, 0.3, 0.5])), dirichlet.entropy(),
                      dirichlet.mean, dirichlet.variance],
        "bernoulli": [bern.log_prob(lib.tensor([1.0, 0.0, 1.0])), bern.entropy(), bern.probs,
                      bern.mean, bern.variance],
        "normal": [normal.cdf(v), normal.icdf(v), normal.entropy(), normal.log_prob(v)],
        "kl": [D.kl_divergence(beta, D.Beta(b, a)), D.kl_divergence(gamma, D.Gamma(b, a)),
               D.kl_divergence(dirichlet, D.Dirichlet(b)),
               D.kl_divergence(bern, D.Bernoulli(probs=lib.tensor([0.3, 0.5, 0.7])))],
    }
    total = sum(lib.stack([t.sum() for t in group]).sum() for group in out.values())
    ga, gb = lib.autograd.grad(total, [a, b])
    out["grad"] = [ga, gb]
    return out


def test_distribution_pieces_values_and_grads():
    ref, got = distribution_pieces(torch), distribution_pieces(ng)
    grad_ref, grad_got = ref.pop("grad"), got.pop("grad")
    assert_same(got, ref)
    # the entropies' gradients hold trigamma, which PyTorch computes to ~5e-10 relative in
    # float64 (nodegrad's agrees with SciPy's to 1 ulp)
    assert_same(grad_got, grad_ref, 1e-8)


# 10. stochastic-gradient Langevin dynamics (Welling & Teh) with torch.randn_like-style noise
#     fed from one stream, and split-conformal prediction intervals from quantiles -------------

def sgld(lib, steps: int = 6, lr: float = 1e-3):
    F = lib.nn.functional
    model = seeded_build(lib, hetero_model)
    x, y = lib.tensor(X1), lib.tensor(Y1).unsqueeze(-1)
    n = x.shape[0]
    n_params = sum(p.numel() for p in model.parameters())
    noise = draw(steps, n_params, seed=11)  # what torch.randn_like(p) draws, parameter by parameter
    rec = {"u": [], "w": []}
    samples = []
    for t in range(steps):
        mu, logvar = model(x)
        log_lik = -F.gaussian_nll_loss(mu, y, logvar.exp(), reduction="sum", full=True)
        log_prior = sum(-0.5 * (p ** 2).sum() for p in model.parameters())
        u = -(log_lik + log_prior)
        model.zero_grad()
        u.backward()
        with lib.no_grad():
            offset = 0
            for p in model.parameters():
                eps = lib.tensor(noise[t, offset:offset + p.numel()]).view_as(p)
                offset += p.numel()
                p.add_(-0.5 * lr * p.grad + math.sqrt(lr) * eps)
        rec["u"].append(u.item() / n)
        if t >= steps // 2:
            samples.append(model(x)[0].detach())
    post = lib.stack(samples)
    rec["post"] = [post.mean(0), post.var(0, unbiased=True), post.std(0, correction=0)]
    rec["w"] = arrays(model.state_dict())
    return rec


def test_sgld_langevin_steps():
    both(sgld)


def conformal(lib, alpha: float = 0.1):
    rng = np.random.default_rng(12)
    cal_pred, cal_y = lib.tensor(rng.standard_normal(50)), lib.tensor(rng.standard_normal(50))
    test_pred = lib.tensor(rng.standard_normal(7))
    logits = lib.tensor(rng.standard_normal((50, 4)))
    labels = lib.tensor(rng.integers(0, 4, 50))
    n = cal_y.shape[0]
    level = math.ceil((n + 1) * (1 - alpha)) / n
    scores = (cal_y - cal_pred).abs()
    rec = {}
    for how in ["linear", "lower", "higher", "midpoint", "nearest"]:
        rec[how] = lib.quantile(scores, level, interpolation=how)
    qhat = lib.quantile(scores, level, interpolation="higher")
    rec["interval"] = lib.stack([test_pred - qhat, test_pred + qhat], -1)
    rec["kth"] = scores.kthvalue(math.ceil((n + 1) * (1 - alpha))).values
    # adaptive prediction sets (APS) for a classifier
    probs = logits.softmax(-1)
    srt, idx = probs.sort(dim=-1, descending=True)
    cum = srt.cumsum(-1)
    cal_scores = cum.gather(-1, lib.argsort(idx, -1).gather(-1, labels.unsqueeze(-1)))
    qa = lib.quantile(cal_scores.squeeze(-1), level, interpolation="higher")
    sets = (cum - srt) <= qa
    rec["aps"] = [qa, sets.sum(-1).double(), lib.quantile(scores, lib.tensor([0.1, 0.5, 0.9])),
                  lib.nanquantile(lib.where(scores > 1.5, float("nan"), scores), 0.8),
                  scores.view(5, 10).quantile(0.75, dim=1, keepdim=True)]
    return rec


def test_conformal_quantiles():
    both(conformal)


# 11. user-defined distributions as PyTorch's documentation writes them: a Distribution subclass
#     with arg_constraints, support, rsample, log_prob and its own expand (through
#     _get_checked_instance), a KL registered for it with register_kl, and a TransformedDistribution
#     subclass (a logit-normal posterior) fitted by VI ------------------------------------------

def custom_distributions(lib, steps: int = 4):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    constraints = D.constraints

    class Kumaraswamy(D.Distribution):
        arg_constraints = {"a": constraints.positive, "b": constraints.positive}
        support = constraints.unit_interval
        has_rsample = True

        def __init__(self, a, b, validate_args=None):
            self.a, self.b = D.utils.broadcast_all(a, b)
            super().__init__(self.a.shape, validate_args=validate_args)

        def expand(self, batch_shape, _instance=None):
            new = self._get_checked_instance(Kumaraswamy, _instance)
            new.a = self.a.expand(batch_shape)
            new.b = self.b.expand(batch_shape)
            super(Kumaraswamy, new).__init__(batch_shape, validate_args=False)
            new._validate_args = self._validate_args
            return new

        def rsample(self, sample_shape=()):
            shape = self._extended_shape(sample_shape)
            eps = D.utils._standard_normal(shape, dtype=self.a.dtype, device=self.a.device)
            u = D.Normal(0.0, 1.0).cdf(eps)
            return (1 - (1 - u).pow(1 / self.b)).pow(1 / self.a)

        def log_prob(self, x):
            if self._validate_args:
                self._validate_sample(x)
            return lib.log(self.a) + lib.log(self.b) + (self.a - 1) * lib.log(x) \
                + (self.b - 1) * lib.log1p(-x.pow(self.a))

    @D.register_kl(Kumaraswamy, D.Beta)
    def _kl_kumaraswamy_beta(p, q):
        x = p.rsample((4,))
        return (p.log_prob(x) - q.log_prob(x)).mean(0)

    class LogitNormal(D.TransformedDistribution):
        arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
        support = constraints.unit_interval
        has_rsample = True

        def __init__(self, loc, scale, validate_args=None):
            base = D.Normal(loc, scale, validate_args=validate_args)
            super().__init__(base, D.transforms.SigmoidTransform(), validate_args=validate_args)

        def expand(self, batch_shape, _instance=None):
            new = self._get_checked_instance(LogitNormal, _instance)
            return super().expand(batch_shape, _instance=new)

        @property
        def loc(self):
            return self.base_dist.loc

        @property
        def scale(self):
            return self.base_dist.scale

    heads = lib.tensor([7.0, 2.0, 9.0])
    n = 10.0
    raw_a, raw_b = nn.Parameter(lib.zeros(3)), nn.Parameter(lib.zeros(3))
    loc, raw_scale = nn.Parameter(lib.zeros(3)), nn.Parameter(lib.full((3,), -1.0))
    params = [raw_a, raw_b, loc, raw_scale]
    opt = lib.optim.Adam(params, lr=0.1)
    prior = D.Beta(lib.full((3,), 2.0), lib.full((3,), 2.0))
    rec = {"loss": [], "g": []}
    with fed_noise(lib, 13):
        for _ in range(steps):
            opt.zero_grad()
            q1 = Kumaraswamy(F.softplus(raw_a) + 0.5, F.softplus(raw_b) + 0.5)
            q2 = LogitNormal(loc, F.softplus(raw_scale))
            loss = 0.0
            for q in (q1, q2):
                p = q.rsample((2,))
                lik = D.Binomial(n, probs=p).log_prob(heads).mean(0)
                if q is q1:
                    kl = D.kl_divergence(q1, prior)
                else:
                    kl = (q.log_prob(p) - prior.log_prob(p)).mean(0)
                loss = loss - (lik - kl).sum()
            loss.backward()
            rec["g"].append(grads(params))
            opt.step()
            rec["loss"].append(loss.item())
    q1e, q2e = q1.expand((2, 3)), q2.expand((2, 3))
    x = lib.tensor([0.2, 0.5, 0.8])
    rec["expand"] = [list(q1e.batch_shape), q1e.log_prob(x), list(q2e.batch_shape),
                     q2e.log_prob(x), q2e.loc, q2e.cdf(x), str(q2e.support),
                     D.utils._sum_rightmost(q1e.log_prob(x), 1)]
    rec["p"] = [p.detach() for p in params]
    with pytest.raises(ValueError):
        q1.log_prob(lib.tensor([0.2, 1.5, 0.3]))
    with pytest.raises(ValueError):
        LogitNormal(loc, -lib.ones(3))
    return rec


def test_custom_distribution_subclasses():
    both(custom_distributions)


def test_base_expand_refuses_a_subclass_with_its_own_init():
    class Scaled(ng.distributions.Normal):
        def __init__(self, loc, factor):
            super().__init__(loc, 2.0 * factor)

    d = Scaled(ng.zeros(2), 1.0)
    with pytest.raises(NotImplementedError, match="custom .expand"):
        d._get_checked_instance(ng.distributions.Normal)
    assert type(d._get_checked_instance(Scaled)) is Scaled


# 12. particle methods on a mixture target: Stein variational gradient descent (Liu & Wang,
#     the autograd form: scores and kernel gradients by autograd.grad, an RBF kernel with the
#     median heuristic, the update handed to Adam through .grad) and Metropolis-adjusted
#     Langevin steps with fed proposal noise and uniforms ----------------------------------------

def mixture_target(lib):
    D = lib.distributions
    mix = D.Categorical(probs=lib.tensor([0.3, 0.7]))
    comp = D.Independent(D.Normal(lib.tensor([[-2.0, 0.0], [2.0, 1.0]]),
                                  lib.tensor([[0.6, 1.0], [1.0, 0.5]])), 1)
    return D.MixtureSameFamily(mix, comp)


def svgd(lib, steps: int = 5):
    target = mixture_target(lib)

    class RBF:
        def __call__(self, X, Y):
            XX = X.matmul(X.t())
            XY = X.matmul(Y.t())
            YY = Y.matmul(Y.t())
            dnorm2 = -2 * XY + XX.diag().unsqueeze(1) + YY.diag().unsqueeze(0)
            h = lib.median(dnorm2.detach()) / (2 * math.log(X.size(0) + 1))
            return (-dnorm2 / (2 * h)).exp()

    K = RBF()
    X = lib.tensor(draw(10, 2, seed=14))
    X.requires_grad_(True)
    opt = lib.optim.Adam([X], lr=0.1)
    rec = {"phi": [], "lp": []}
    for _ in range(steps):
        Xd = X.detach().requires_grad_(True)
        log_prob = target.log_prob(Xd)
        score = lib.autograd.grad(log_prob.sum(), Xd)[0]
        K_XX = K(Xd, Xd.detach())
        grad_K = -lib.autograd.grad(K_XX.sum(), Xd)[0]
        phi = (K_XX.detach().matmul(score) + grad_K) / Xd.size(0)
        opt.zero_grad()
        X.grad = -phi
        opt.step()
        rec["phi"].append(phi)
        rec["lp"].append(log_prob.mean().item())
    rec["X"] = X.detach()
    return rec


def test_svgd_particles():
    both(svgd)


def mala(lib, steps: int = 6, eps: float = 0.1):
    target = mixture_target(lib)
    noise = draw(steps, 16, 2, seed=15)
    uniforms = draw(steps, 16, seed=16, kind="rand")

    def score(x):
        x = x.detach().requires_grad_()
        lp = target.log_prob(x)
        return lp.detach(), lib.autograd.grad(lp.sum(), x)[0]

    def log_q(to, frm, g):
        return -((to - frm - eps * g) ** 2).sum(-1) / (4 * eps)

    x = lib.tensor(draw(16, 2, seed=17))
    rec = {"acc": [], "x": []}
    lp, g = score(x)
    for t in range(steps):
        prop = x + eps * g + math.sqrt(2 * eps) * lib.tensor(noise[t])
        lp_p, g_p = score(prop)
        log_alpha = lp_p - lp + log_q(x, prop, g_p) - log_q(prop, x, g)
        accept = lib.log(lib.tensor(uniforms[t])) < log_alpha
        x = lib.where(accept.unsqueeze(-1), prop, x)
        lp = lib.where(accept, lp_p, lp)
        g = lib.where(accept.unsqueeze(-1), g_p, g)
        rec["acc"].append(accept.double().mean().item())
        rec["x"].append(x)
    rec["alpha"] = log_alpha.clamp(max=0).exp()
    return rec


def test_mala_steps():
    both(mala)


def kl_dispatch(lib):
    """A Monte-Carlo KL registered for a guide family against any distribution: PyTorch picks
    the rule most specific in p's type (warning that the pair is ambiguous) over the built-in
    Normal/Normal rule; a rule for the exact pair settles it."""
    import warnings

    D = lib.distributions

    class GuideNormal(D.Normal):
        pass

    class PriorNormal(D.Normal):
        pass

    @D.register_kl(GuideNormal, D.Distribution)
    def _mc_kl(p, q):
        x = p.loc + p.scale * lib.tensor([-1.0, 0.0, 1.0]).unsqueeze(-1)
        return (p.log_prob(x) - q.log_prob(x)).mean(0)

    @D.register_kl(D.Distribution, PriorNormal)
    def _prior_kl(p, q):
        return lib.zeros(p.batch_shape)

    q = GuideNormal(lib.tensor([0.3, -0.2]), lib.tensor([0.5, 2.0]))
    prior = PriorNormal(0.0, 1.0)
    rec = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec["mc"] = D.kl_divergence(q, D.Normal(0.0, 1.0))
        rec["ambiguous"] = D.kl_divergence(q, prior)
        rec["warned"] = [str(w.message).split(".")[0] for w in caught
                         if issubclass(w.category, RuntimeWarning)]

    @D.register_kl(GuideNormal, PriorNormal)
    def _exact(p, q):
        return lib.full(p.batch_shape, 7.0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec["exact"] = D.kl_divergence(q, prior)
    return rec


def test_register_kl_dispatch_order():
    got = both(kl_dispatch)
    assert got["warned"] == ["Ambiguous kl_divergence(GuideNormal, Normal)",
                             "Ambiguous kl_divergence(GuideNormal, PriorNormal)"]
    assert float(got["ambiguous"].sum()) != 0.0  # the guide's rule, not the prior's


# 13. a Laplace approximation of the Bayesian logistic regression: the MAP by L-BFGS (strong
#     Wolfe line search, closure), the Hessian of the negative log posterior by
#     autograd.functional.hessian, MultivariateNormal(precision_matrix=), the probit predictive
#     approximation and a last-layer GLM predictive with fed noise --------------------------------

def laplace(lib, prior_prec: float = 1.0):
    D = lib.distributions
    x = lib.tensor(np.concatenate([X2, np.ones((32, 1))], 1))
    y = lib.tensor(Y2)
    w = lib.zeros(4, requires_grad=True)
    opt = lib.optim.LBFGS([w], lr=1, max_iter=20, line_search_fn="strong_wolfe",
                          tolerance_grad=1e-9, tolerance_change=1e-12, history_size=10)

    def neg_log_post(w):
        lik = D.Bernoulli(logits=x @ w).log_prob(y).sum()
        prior = D.Normal(lib.zeros(4), prior_prec ** -0.5).log_prob(w).sum()
        return -(lik + prior)

    losses = []

    def closure():
        opt.zero_grad()
        loss = neg_log_post(w)
        loss.backward()
        losses.append(loss.item())
        return loss

    opt.step(closure)
    w_map = w.detach()
    H = lib.autograd.functional.hessian(neg_log_post, w_map)
    post = D.MultivariateNormal(w_map, precision_matrix=H)
    xs = lib.tensor(draw(5, 3, seed=18))
    phi = lib.cat([xs, lib.ones(5, 1)], 1)
    mean = phi @ w_map
    var = (phi @ post.covariance_matrix * phi).sum(-1)
    kappa = 1 / lib.sqrt(1 + math.pi * var / 8)
    probit = lib.sigmoid(kappa * mean)
    with fed_noise(lib, 19):
        samples = post.rsample((4,))
    mc = lib.sigmoid(samples @ phi.T).mean(0)
    J = lib.autograd.functional.jacobian(lambda w: lib.sigmoid(x[:3] @ w), w_map)
    return {"losses": losses[-3:], "n": len(losses) > 3, "w": w_map, "H": H,
            "cov": post.covariance_matrix, "tril": post.scale_tril, "probit": probit, "mc": mc,
            "J": J, "logdet": lib.logdet(H), "evidence": -neg_log_post(w_map)
            + 0.5 * 4 * math.log(2 * math.pi) - 0.5 * lib.logdet(H)}


def test_laplace_approximation():
    both(laplace)


def laplace_func(lib):
    """The Laplace pieces in the torch.func style: per-example score vectors by vmap(grad) and
    the empirical Fisher, the Hessian by func.hessian, Jacobians of the predictive by jacrev,
    and distributions built inside vmap."""
    D, func = lib.distributions, lib.func
    x = lib.tensor(np.concatenate([X2, np.ones((32, 1))], 1))
    y = lib.tensor(Y2)
    w = lib.tensor([0.3, -0.2, 0.1, 0.05])

    def log_lik(w, xi, yi):
        return D.Bernoulli(logits=xi @ w).log_prob(yi)

    scores = func.vmap(func.grad(log_lik), in_dims=(None, 0, 0))(w, x, y)
    hess = func.hessian(lambda w: -D.Bernoulli(logits=x @ w).log_prob(y).sum()
                        - D.Normal(0.0, 1.0).log_prob(w).sum())(w)
    jac = func.jacrev(lambda w: D.Bernoulli(logits=x[:5] @ w).probs)(w)
    mvn = func.jacrev(lambda m: D.MultivariateNormal(m, scale_tril=2 * lib.eye(4)).log_prob(x))(w)
    mix = func.vmap(lambda xi: D.MixtureSameFamily(
        D.Categorical(logits=xi[:2]), D.Normal(xi[2:], 1.0)).log_prob(lib.tensor(0.3)))(x)
    return {"scores": scores, "fisher": scores.T @ scores / 32, "hess": hess, "jac": jac,
            "mvn": mvn, "mix": mix}


def test_laplace_func_transforms():
    both(laplace_func)


# 14. distributions built once, before the loop, from leaf parameters (a guide and a prior
#     that only view their parameters): each step's backward runs again through the same
#     broadcast views, which saved nothing, as PyTorch allows ---------------------------------

def built_once(lib, steps: int = 3):
    nn, D = lib.nn, lib.distributions
    mu = nn.Parameter(lib.tensor([0.0, 1.0]))
    sd = nn.Parameter(lib.tensor([1.0, 2.0]))
    shared = nn.Parameter(lib.tensor(0.5))
    loc = nn.Parameter(lib.zeros(2))
    opt = lib.optim.SGD([mu, sd, shared, loc], lr=0.1, momentum=0.5)
    q = D.Normal(mu, sd)
    q_shared = D.Independent(D.Normal(shared, sd), 1)  # the scalar broadcast: an expand view
    q_mvn = D.MultivariateNormal(loc, scale_tril=lib.eye(2))
    bern = D.Bernoulli(logits=mu)
    x = lib.tensor([[0.5, -0.5], [1.5, 0.2]])
    rec = {"loss": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        loss = -(q.log_prob(x).sum() + q_shared.log_prob(x).sum() + q_mvn.log_prob(x).sum()
                 + bern.log_prob(lib.tensor([1.0, 0.0])).sum())
        loss.backward()
        rec["g"].append(grads([mu, sd, shared, loc]))
        opt.step()
        rec["loss"].append(loss.item())
    rec["p"] = [mu, sd, shared, loc]
    return rec


def test_distributions_built_once_before_the_loop():
    both(built_once)


def test_backward_again_through_nodes_that_saved_nothing():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x.expand(3, 2).reshape(6)[1:] + 1  # views, a slice and an add: nothing saved
    y.sum().backward()
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 6.0])
    z = x.exp()  # exp keeps its output: spent after one backward, as in PyTorch
    z.sum().backward()
    with pytest.raises(ng.GradError, match="second time"):
        z.sum().backward()


# 15. a neural spline flow (Durkan et al. 2019) as nflows writes its rational-quadratic spline:
#     softmax bin widths and heights, cumsum knots padded with F.pad, the bin found by
#     searchsorted, gathered parameters, linear tails, the inverse by the quadratic formula ------

def rq_spline(lib, inputs, uw, uh, ud, inverse=False, bound=3.0, min_w=1e-3, min_h=1e-3,
              min_d=1e-3):
    F = lib.nn.functional
    inside = (inputs >= -bound) & (inputs <= bound)
    ud = F.pad(ud, pad=(1, 1))
    const = math.log(math.exp(1 - min_d) - 1)
    ud = lib.cat([lib.full_like(ud[..., :1], const), ud[..., 1:-1],
                  lib.full_like(ud[..., :1], const)], -1)
    x = lib.where(inside, inputs, lib.zeros_like(inputs))
    n = uw.shape[-1]
    widths = min_w + (1 - min_w * n) * F.softmax(uw, dim=-1)
    cumwidths = F.pad(lib.cumsum(widths, dim=-1), pad=(1, 0), mode="constant", value=0.0)
    cumwidths = 2 * bound * cumwidths - bound
    cumwidths = lib.cat([cumwidths[..., :1] * 0 - bound, cumwidths[..., 1:-1],
                         cumwidths[..., -1:] * 0 + bound], -1)
    widths = cumwidths[..., 1:] - cumwidths[..., :-1]
    derivs = min_d + F.softplus(ud)
    heights = min_h + (1 - min_h * n) * F.softmax(uh, dim=-1)
    cumheights = F.pad(lib.cumsum(heights, dim=-1), pad=(1, 0), mode="constant", value=0.0)
    cumheights = 2 * bound * cumheights - bound
    cumheights = lib.cat([cumheights[..., :1] * 0 - bound, cumheights[..., 1:-1],
                          cumheights[..., -1:] * 0 + bound], -1)
    heights = cumheights[..., 1:] - cumheights[..., :-1]
    locs = (cumheights if inverse else cumwidths).detach().contiguous()
    locs = lib.cat([locs[..., :-1], locs[..., -1:] + 1e-6], -1)
    idx = (lib.searchsorted(locs, x[..., None].contiguous(), right=True) - 1).clamp(0, n - 1)
    in_cw, in_w = cumwidths.gather(-1, idx)[..., 0], widths.gather(-1, idx)[..., 0]
    in_ch, in_h = cumheights.gather(-1, idx)[..., 0], heights.gather(-1, idx)[..., 0]
    delta = heights / widths
    in_delta = delta.gather(-1, idx)[..., 0]
    in_d = derivs.gather(-1, idx)[..., 0]
    in_d1 = derivs[..., 1:].gather(-1, idx)[..., 0]
    if inverse:
        a = (x - in_ch) * (in_d + in_d1 - 2 * in_delta) + in_h * (in_delta - in_d)
        b = in_h * in_d - (x - in_ch) * (in_d + in_d1 - 2 * in_delta)
        c = -in_delta * (x - in_ch)
        disc = b.pow(2) - 4 * a * c
        root = (2 * c) / (-b - lib.sqrt(disc))
        out = root * in_w + in_cw
        t1m = root * (1 - root)
        den = in_delta + (in_d + in_d1 - 2 * in_delta) * t1m
        dnum = in_delta.pow(2) * (in_d1 * root.pow(2) + 2 * in_delta * t1m
                                  + in_d * (1 - root).pow(2))
        lad = -(lib.log(dnum) - 2 * lib.log(den))
    else:
        theta = (x - in_cw) / in_w
        t1m = theta * (1 - theta)
        num = in_h * (in_delta * theta.pow(2) + in_d * t1m)
        den = in_delta + (in_d + in_d1 - 2 * in_delta) * t1m
        out = in_ch + num / den
        dnum = in_delta.pow(2) * (in_d1 * theta.pow(2) + 2 * in_delta * t1m
                                  + in_d * (1 - theta).pow(2))
        lad = lib.log(dnum) - 2 * lib.log(den)
    out = lib.where(inside, out, inputs)
    lad = lib.where(inside, lad, lib.zeros_like(lad))
    return out, lad


def spline_flow_model(lib, bins: int = 5):
    nn = lib.nn

    class Coupling(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 3 * bins - 1))

        def forward(self, z, inverse=False):
            z1, z2 = z[:, :1], z[:, 1:]
            p = self.net(z1)
            uw, uh, ud = p[:, :bins], p[:, bins:2 * bins], p[:, 2 * bins:]
            uw, uh = uw / math.sqrt(16), uh / math.sqrt(16)
            y2, lad = rq_spline(lib, z2[:, 0], uw, uh, ud, inverse=inverse)
            out = lib.cat([z1, y2[:, None]], 1)
            return (out if inverse else out.flip(1)), lad

    return nn.ModuleList([Coupling(), Coupling()])


def spline_flow(lib, steps: int = 4):
    D = lib.distributions
    flows = seeded_build(lib, spline_flow_model)
    base = D.Independent(D.Normal(lib.zeros(2), lib.ones(2)), 1)
    data = lib.tensor(np.stack([X1[:, 0], 2 * Y1 + 4], -1))  # some points in the linear tails
    opt = lib.optim.Adam(flows.parameters(), lr=5e-3)
    rec = {"nll": [], "g": []}
    for _ in range(steps):
        opt.zero_grad()
        z, total = data, lib.zeros(data.shape[0])
        for f in flows:
            z, lad = f(z)
            total = total + lad
        nll = -(base.log_prob(z) + total).mean()
        nll.backward()
        rec["g"].append(grads(flows.parameters()))
        opt.step()
        rec["nll"].append(nll.item())
    with lib.no_grad():
        z, rec["lad"] = data, lib.zeros(data.shape[0])
        for f in flows:
            z, lad = f(z)
            rec["lad"] = rec["lad"] + lad
        x, back = z, lib.zeros(data.shape[0])
        for f in reversed(flows):
            x, lad = f(x.flip(1), inverse=True)
            back = back + lad
    rec.update(z=z, x=x, back=back)
    rec["w"] = arrays(flows.state_dict())
    return rec


def test_neural_spline_flow():
    got = both(spline_flow)
    np.testing.assert_allclose(got["x"].numpy(), np.stack([X1[:, 0], 2 * Y1 + 4], -1),
                               atol=1e-8)  # the inverse undoes the flow
    np.testing.assert_allclose(got["back"].numpy(), -got["lad"].numpy(), atol=1e-8)


# 16. Bayes by Backprop in the torch.func style: one Normal posterior per named parameter, a
#     batch of weight samples run through functional_call under vmap, and a deep ensemble
#     stacked with stack_module_state ----------------------------------------------------------

def mlp_1d(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))


def functional_bbb(lib, steps: int = 3, samples: int = 4):
    D, func = lib.distributions, lib.func
    net = seeded_build(lib, mlp_1d)
    names = [n for n, _ in net.named_parameters()]
    mus = {n: lib.nn.Parameter(p.detach().clone()) for n, p in net.named_parameters()}
    rhos = {n: lib.nn.Parameter(lib.full_like(p, -4.0)) for n, p in net.named_parameters()}
    params = [*mus.values(), *rhos.values()]
    opt = lib.optim.Adam(params, lr=1e-2)
    x, y = lib.tensor(X1), lib.tensor(Y1)

    def predict(p):
        return func.functional_call(net, p, (x,)).squeeze(-1)

    rec = {"loss": [], "g": []}
    with fed_noise(lib, 21):
        for _ in range(steps):
            opt.zero_grad()
            qs = {n: D.Normal(mus[n], lib.nn.functional.softplus(rhos[n])) for n in names}
            preds = func.vmap(predict)({n: q.rsample((samples,)) for n, q in qs.items()})
            nll = -D.Normal(preds, 0.2).log_prob(y).sum(-1).mean()
            kl = sum(D.kl_divergence(q, D.Normal(0.0, 1.0)).sum() for q in qs.values())
            loss = nll + kl / x.shape[0]
            loss.backward()
            rec["g"].append(grads(params))
            opt.step()
            rec["loss"].append(loss.item())
    members = [seeded_build(lib, mlp_1d, seed=s) for s in range(3)]
    stacked, buffers = func.stack_module_state(members)
    rec["ensemble"] = func.vmap(
        lambda p, b: func.functional_call(members[0], (p, b), (x,)))(stacked, buffers)
    return rec


def test_functional_bayes_by_backprop_and_ensemble():
    both(functional_bbb)


# 17. argument and value validation, supports, shapes and expand, as the programs above meet
#     them (a bad scale, a value outside the support, a mismatched mixture, ...) ---------------

def validation_and_shapes(lib):
    D = lib.distributions
    T = D.transforms
    bad = {
        "normal_scale": lambda: D.Normal(0.0, -1.0),
        "normal_nan_loc": lambda: D.Normal(lib.tensor(float("nan")), 1.0),
        "beta_value": lambda: D.Beta(2.0, 3.0).log_prob(lib.tensor(1.5)),
        "gamma_value": lambda: D.Gamma(2.0, 3.0).log_prob(lib.tensor(-1.0)),
        "bernoulli_value": lambda: D.Bernoulli(logits=lib.tensor(0.3)).log_prob(lib.tensor(0.5)),
        "bernoulli_both": lambda: D.Bernoulli(probs=lib.tensor(0.3), logits=lib.tensor(0.3)),
        "bernoulli_probs": lambda: D.Bernoulli(probs=lib.tensor(1.3)),
        "dirichlet_value": lambda: D.Dirichlet(lib.ones(3)).log_prob(lib.tensor([0.2, 0.2, 0.2])),
        "mvn_not_pd": lambda: D.MultivariateNormal(lib.zeros(2),
                                                   lib.tensor([[1.0, 2.0], [2.0, 1.0]])),
        "mvn_two": lambda: D.MultivariateNormal(lib.zeros(2), lib.eye(2), scale_tril=lib.eye(2)),
        "mvn_scalar_loc": lambda: D.MultivariateNormal(lib.tensor(0.0), lib.eye(2)),
        "mvn_tril": lambda: D.MultivariateNormal(lib.zeros(2),
                                                 scale_tril=lib.tensor([[1.0, 1.0], [0.0, 1.0]])),
        "mvn_value_shape": lambda: D.MultivariateNormal(lib.zeros(3, 2), lib.eye(2)).log_prob(
            lib.ones(4, 2)),
        "lowrank_factor": lambda: D.LowRankMultivariateNormal(lib.zeros(3), lib.ones(2, 1),
                                                              lib.ones(3)),
        "categorical_value": lambda: D.Categorical(logits=lib.zeros(3)).log_prob(lib.tensor(3)),
        "mixture_mix": lambda: D.MixtureSameFamily(D.Normal(0.0, 1.0),
                                                   D.Normal(lib.zeros(3), 1.0)),
        "mixture_k": lambda: D.MixtureSameFamily(D.Categorical(logits=lib.zeros(4)),
                                                 D.Normal(lib.zeros(3), 1.0)),
        "mixture_value": lambda: D.MixtureSameFamily(
            D.Categorical(logits=lib.zeros(3)),
            D.Independent(D.Normal(lib.zeros(3, 2), 1.0), 1)).log_prob(lib.zeros(3)),
        "independent_ndims": lambda: D.Independent(D.Normal(lib.zeros(3), 1.0), 2),
        "uniform_order": lambda: D.Uniform(1.0, 0.0),
        "uniform_value": lambda: D.Uniform(0.0, 1.0).log_prob(lib.tensor(1.5)),
        "lognormal_value": lambda: D.LogNormal(0.0, 1.0).log_prob(lib.tensor(-1.0)),
        "studentt_df": lambda: D.StudentT(-1.0),
        "flow_value": lambda: D.TransformedDistribution(
            D.Normal(0.0, 1.0), [T.SigmoidTransform()]).log_prob(lib.tensor(1.5)),
        "nll_reduction": lambda: lib.nn.functional.gaussian_nll_loss(
            lib.zeros(3, 2), lib.ones(3, 2), lib.ones(3, 2), reduction="bad"),
        "kl_missing": lambda: D.kl_divergence(D.MixtureSameFamily(
            D.Categorical(logits=lib.zeros(3)), D.Normal(lib.arange(3.0), 1.0)),
            D.Normal(0.0, 1.0)),
        "kl_event": lambda: D.kl_divergence(D.MultivariateNormal(lib.zeros(2), lib.eye(2)),
                                            D.MultivariateNormal(lib.zeros(3), lib.eye(3))),
        "mixture_entropy": lambda: D.MixtureSameFamily(
            D.Categorical(logits=lib.zeros(3)), D.Normal(lib.arange(3.0), 1.0)).entropy(),
    }
    rec = {"kl_support": D.kl_divergence(D.Normal(0.0, 1.0), D.Beta(1.0, 1.0))}  # infinite
    for name, make in bad.items():
        try:
            make()
            rec[name] = "no error"
        except (ValueError, NotImplementedError) as e:
            rec[name] = type(e).__name__
    mix = D.MixtureSameFamily(D.Categorical(logits=lib.zeros(3)),
                              D.Normal(lib.arange(3.0), 1.0))
    flow = D.TransformedDistribution(D.Normal(lib.zeros(2), 1.0), [T.SigmoidTransform()])
    expanded = {
        "normal": D.Normal(lib.zeros(3), 1.0).expand([5, 3]),
        "independent": D.Independent(D.Normal(lib.zeros(2, 3), 1.0), 1).expand([6, 2]),
        "mvn": D.MultivariateNormal(lib.zeros(2), lib.eye(2)).expand((4,)),
        "lowrank": D.LowRankMultivariateNormal(lib.zeros(3), lib.ones(3, 1),
                                               lib.ones(3)).expand((4,)),
        "mixture": mix.expand((4, 2)),
        "flow": flow.expand((4, 2)),
        "beta": D.Beta(lib.ones(2), 2.0).expand((4, 2)),
        "dirichlet": D.Dirichlet(lib.ones(3)).expand((4,)),
        "bernoulli": D.Bernoulli(logits=lib.zeros(2)).expand((4, 2)),
    }
    values = {"normal": lib.zeros(5, 3), "independent": lib.ones(6, 2, 3),
              "mvn": lib.ones(4, 2), "lowrank": lib.ones(4, 3), "mixture": lib.ones(4, 2),
              "flow": lib.full((4, 2), 0.5), "beta": lib.full((4, 2), 0.3),
              "dirichlet": lib.full((4, 3), 1 / 3), "bernoulli": lib.ones(4, 2)}
    for name, d in expanded.items():
        rec["expand_" + name] = [list(d.batch_shape), list(d.event_shape), str(d.support),
                                 d.log_prob(values[name])]
    rec["support"] = [str(d.support) for d in [
        D.Normal(0.0, 1.0), D.Beta(1.0, 1.0), D.Gamma(1.0, 1.0), D.Dirichlet(lib.ones(2)),
        D.Bernoulli(0.3), D.Uniform(0.0, 2.0), D.LogNormal(0.0, 1.0), D.HalfNormal(1.0),
        D.TransformedDistribution(D.Normal(0.0, 1.0), [T.TanhTransform()])]]
    rec["event_dim"] = [d.support.event_dim for d in [
        D.Independent(D.Normal(lib.zeros(2), 1.0), 1), D.Dirichlet(lib.ones(2)),
        D.MultivariateNormal(lib.zeros(2), lib.eye(2)), D.Normal(0.0, 1.0)]]
    mdn_support = D.MixtureSameFamily(D.Categorical(logits=lib.zeros(3)), D.Independent(
        D.Normal(lib.zeros(3, 2), 1.0), 1)).support
    uniforms = D.MixtureSameFamily(D.Categorical(logits=lib.zeros(2)),
                                   D.Uniform(lib.tensor([0.0, 1.0]), lib.tensor([2.0, 3.0])))
    rec["mixture_support"] = [mdn_support.check(lib.ones(5, 4, 2)), repr(mdn_support),
                              uniforms.support.check(lib.tensor([0.5, 1.5, 2.5])),
                              uniforms.log_prob(lib.tensor([1.2, 1.8]))]
    rec["unvalidated"] = D.Uniform(0.0, 1.0, validate_args=False).log_prob(
        lib.tensor([1.5, 0.5, 1.0, 0.0]))
    rec["flags"] = [[d.has_rsample, d.has_enumerate_support] for d in [
        D.Normal(0.0, 1.0), D.Bernoulli(0.3), D.Gamma(1.0, 1.0), mix,
        D.Independent(D.Bernoulli(lib.full((2,), 0.3)), 1)]]
    rec["sample_shape"] = [list(D.MultivariateNormal(lib.zeros(3, 1, 2), lib.eye(2).expand(
        4, 2, 2)).sample((5,)).shape), list(mix.sample((2, 3)).shape)]
    return rec


def test_validation_supports_shapes_expand():
    got = both(validation_and_shapes)
    assert "no error" not in [v for k, v in got.items() if isinstance(v, str)]


# 18. SWA-Gaussian in miniature (Maddox et al.): a model holding its Gaussian prior as a
#     MultivariateNormal attribute, MAP steps, the running first and second moments, a low-rank
#     deviation matrix, and an AveragedModel (which deep-copies the model, prior included) -----

def swag_model(lib):
    nn, D = lib.nn, lib.distributions

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1))
            n = sum(p.numel() for p in self.body.parameters())
            self.prior = D.MultivariateNormal(lib.zeros(n), scale_tril=2.0 * lib.eye(n))

        def forward(self, x):
            return self.body(x)

        def log_prior(self):
            flat = lib.cat([p.reshape(-1) for p in self.body.parameters()])
            return self.prior.log_prob(flat)

    return Net()


def swag(lib, steps: int = 6, rank: int = 3):
    import copy

    nn, D = lib.nn, lib.distributions
    model = seeded_build(lib, swag_model)
    swa = lib.optim.swa_utils.AveragedModel(model)
    frozen = copy.deepcopy(model)  # a snapshot: its prior and weights are its own
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = lib.tensor(X1), lib.tensor(Y1).unsqueeze(-1)
    mean = sq = None
    devs, rec = [], {"loss": []}
    for t in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y) - model.log_prior() / x.shape[0]
        loss.backward()
        opt.step()
        rec["loss"].append(loss.item())
        swa.update_parameters(model)
        w = lib.cat([p.detach().reshape(-1) for p in model.body.parameters()])
        mean = w if mean is None else (mean * t + w) / (t + 1)
        sq = w ** 2 if sq is None else (sq * t + w ** 2) / (t + 1)
        devs = (devs + [w - mean])[-rank:]
    diag = (sq - mean ** 2).clamp(min=1e-12)
    post = D.LowRankMultivariateNormal(mean, lib.stack(devs, -1) / math.sqrt(2 * (rank - 1)),
                                       diag / 2)
    rec.update(swa=arrays(swa.module.state_dict()), n=float(swa.n_averaged),
               swa_prior=swa.module.log_prior(), frozen_prior=frozen.log_prior(),
               post=[post.log_prob(mean), post.entropy(), post.variance])
    return rec


def test_swag_deep_copies_a_model_holding_a_prior():
    both(swag)


def test_transforms_pickle_and_copy_after_inv():
    """A flow's transforms are pickled (a checkpoint, a worker process) and copied after their
    inverse was used: the weakly held inverse is left out and made again, as in PyTorch."""
    import copy
    import pickle

    T = ng.distributions.transforms
    t = T.ComposeTransform([T.AffineTransform(1.0, 2.0), T.TanhTransform(cache_size=1)])
    x = ng.tensor([0.1, -0.4])
    y = t(x)
    np.testing.assert_allclose(t.inv(y).numpy(), x.numpy(), rtol=1e-6)  # inv is now held
    for clone in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t), copy.copy(t),
                  pickle.loads(pickle.dumps(t.inv)).inv):
        np.testing.assert_allclose(clone.inv(clone(x)).numpy(), x.numpy(), rtol=1e-6)
        np.testing.assert_allclose(clone(x).numpy(), y.numpy(), rtol=1e-6)


def test_copy_distributions_with_parametrisations_on_demand():
    """MultivariateNormal and Wishart compute their other parametrisations on first access:
    copy and deepcopy (EMA and SWA models, target networks) still work, as in PyTorch."""
    import copy

    D = ng.distributions
    for d in (D.MultivariateNormal(ng.zeros(2), precision_matrix=2 * ng.eye(2)),
              D.Wishart(df=3.0, covariance_matrix=ng.eye(2))):
        for clone in (copy.copy(d), copy.deepcopy(d)):
            np.testing.assert_allclose(clone.covariance_matrix.numpy(),
                                       d.covariance_matrix.numpy())
    with pytest.raises(AttributeError, match="no attribute '_missing'"):
        D.MultivariateNormal(ng.zeros(2), ng.eye(2))._missing


def test_quantile_refuses_q_of_another_dtype_and_distributions_pickle():
    """q in another float dtype is refused by name (torch.quantile's rule); a distribution whose
    parameters are views (a mixture's broadcast ones) pickles, as a tensor pickles as a leaf."""
    import pickle

    with pytest.raises(ng.errors.DTypeError, match="quantile"):
        ng.quantile(ng.ones(3, dtype=ng.float64), ng.tensor([0.5], dtype=ng.float32))
    D = ng.distributions
    m = D.MixtureSameFamily(D.Categorical(logits=ng.zeros(2)), D.Normal(ng.zeros(2), 1.0))
    back = pickle.loads(pickle.dumps(m))
    x = ng.tensor([0.3, -1.0])
    np.testing.assert_array_equal(back.log_prob(x).numpy(), m.log_prob(x).numpy())
    v = ng.ones(3, requires_grad=True).expand(2, 3)
    w = pickle.loads(pickle.dumps(v))
    assert w.shape == (2, 3) and w.requires_grad and w.grad_fn is None
