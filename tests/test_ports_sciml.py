"""Scientific machine-learning programs written for PyTorch, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``): Gaussian-
process regression with learnt kernel hyperparameters, Bayesian linear and logistic regression
(evidence, Laplace approximation), a Kalman filter with an RTS smoother, an Euler-Maruyama
neural SDE, a Hamiltonian neural network, NeRF's rendering with hierarchical sampling,
normalising flows, LASSO by FISTA, matrix functions with gradients, Gaussian-mixture EM, a
Fourier neural operator and a physics-informed network.
Both runs start from the same parameters (PyTorch's seeded initial weights, copied through
NumPy) and see the same float64 data and noise, so losses, gradients and parameters agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

F64 = "float64"


def both(fn, tol: float = 1e-10):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    ref, got = fn(torch), fn(ng)
    assert_same(got, ref, tol)
    return got


def torch_init(lib, build):
    """``build(lib)`` in float64 holding PyTorch's seeded initial weights."""
    torch.manual_seed(0)
    init = {k: v.numpy().copy() for k, v in build(torch).double().state_dict().items()}
    model = build(lib).double()
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


# 1. Gaussian-process regression: marginal likelihood, softplus constraints, a Gamma hyperprior

_R = np.random.default_rng(0)
GP_X = _R.uniform(-3, 3, (16, 2))
GP_Y = np.sin(GP_X[:, 0]) * np.cos(GP_X[:, 1]) + 0.1 * _R.standard_normal(16)
GP_XS = _R.uniform(-3, 3, (5, 2))


def gp_regression(lib):
    F, D = lib.nn.functional, lib.distributions
    x, y, xs = lib.tensor(GP_X), lib.tensor(GP_Y), lib.tensor(GP_XS)

    class ExactGP(lib.nn.Module):
        def __init__(self):
            super().__init__()
            self.raw_lengthscale = lib.nn.Parameter(lib.zeros(2, dtype=lib.float64))
            self.raw_outputscale = lib.nn.Parameter(lib.tensor(0.5, dtype=lib.float64))
            self.raw_noise = lib.nn.Parameter(lib.tensor(-2.0, dtype=lib.float64))

        def kernel(self, a, b):
            ls = F.softplus(self.raw_lengthscale)
            d = lib.cdist(a / ls, b / ls, p=2.0)
            return F.softplus(self.raw_outputscale) * lib.exp(-0.5 * d.pow(2))

        def mll(self, x, y):
            n = x.shape[0]
            K = self.kernel(x, x) + (F.softplus(self.raw_noise) + 1e-6) * lib.eye(
                n, dtype=x.dtype)
            L = lib.linalg.cholesky(K)
            alpha = lib.cholesky_solve(y.unsqueeze(-1), L)
            nll = (0.5 * (y.unsqueeze(-1) * alpha).sum() + L.diagonal().log().sum()
                   + 0.5 * n * math.log(2 * math.pi))
            prior = D.Normal(0.0, 1.0)  # a log-normal hyperprior, from Python numbers
            return nll - prior.log_prob(lib.log(F.softplus(self.raw_lengthscale))).sum(), K

        def predict(self, x, y, xs):
            n = x.shape[0]
            K = self.kernel(x, x) + F.softplus(self.raw_noise) * lib.eye(n, dtype=x.dtype)
            L = lib.linalg.cholesky(K)
            Ks = self.kernel(x, xs)
            v = lib.linalg.solve_triangular(L, Ks, upper=False)
            alpha = lib.linalg.solve_triangular(
                L.T, lib.linalg.solve_triangular(L, y[:, None], upper=False), upper=True)
            return (Ks.T @ alpha).squeeze(-1), F.softplus(self.raw_outputscale) - (v * v).sum(0)

    gp = ExactGP()
    opt = lib.optim.Adam(gp.parameters(), lr=0.05)
    rec = []
    for _ in range(6):
        opt.zero_grad()
        loss, K = gp.mll(x, y)
        loss.backward()
        sign, logabs = lib.linalg.slogdet(K)
        rec.append([loss.item(), lib.logdet(K).item(), logabs.item(), sign.item(),
                    {k: p.grad for k, p in gp.named_parameters()}])
        opt.step()
    mean, var = gp.predict(x, y, xs)
    mean.sum().backward()  # the gradient of a prediction reaches the hyperparameters
    return rec, mean, var, {k: (p, p.grad) for k, p in gp.named_parameters()}


def test_gp_regression_marginal_likelihood():
    both(gp_regression)


# 2. Bayesian linear regression: evidence maximisation (type-II ML), predictive variances

_R = np.random.default_rng(10)
BLR_X = _R.uniform(-1, 1, 20)
BLR_Y = np.sin(3 * BLR_X) + 0.2 * _R.standard_normal(20)
BLR_XS = np.linspace(-1.2, 1.2, 7)


def bayes_linear(lib):
    D = lib.distributions

    def features(x, deg=4):
        return lib.stack([x ** k for k in range(deg + 1)], dim=-1)

    Phi, y, Phis = features(lib.tensor(BLR_X)), lib.tensor(BLR_Y), features(lib.tensor(BLR_XS))
    log_alpha = lib.tensor(0.0, dtype=lib.float64, requires_grad=True)
    log_beta = lib.tensor(1.0, dtype=lib.float64, requires_grad=True)
    opt = lib.optim.Adagrad([log_alpha, log_beta], lr=0.1, lr_decay=0.01)
    N, M = Phi.shape
    rec = []
    for _ in range(6):
        opt.zero_grad()
        alpha, beta = log_alpha.exp(), log_beta.exp()
        A = alpha * lib.eye(M, dtype=lib.float64) + beta * Phi.T @ Phi
        U = lib.linalg.cholesky(A, upper=True)
        Sn = lib.cholesky_inverse(lib.linalg.cholesky(A))
        mn = beta * Sn @ Phi.T @ y
        mn2 = beta * lib.cholesky_solve((Phi.T @ y).unsqueeze(1), U, upper=True).squeeze(1)
        E = beta / 2 * ((y - Phi @ mn) ** 2).sum() + alpha / 2 * mn @ mn
        log_ev = (M / 2 * log_alpha + N / 2 * log_beta - E - 0.5 * lib.logdet(A)
                  - N / 2 * math.log(2 * math.pi))
        zeros = lib.zeros(N, dtype=lib.float64)
        mvn = D.MultivariateNormal(zeros, covariance_matrix=Phi @ Phi.T / alpha
                                   + lib.eye(N, dtype=lib.float64) / beta)
        low_rank = D.LowRankMultivariateNormal(zeros, cov_factor=Phi / alpha.sqrt(),
                                               cov_diag=lib.ones(N, dtype=lib.float64) / beta)
        (-log_ev).backward()
        rec.append([-log_ev.item(), mvn.log_prob(y), low_rank.log_prob(y), low_rank.entropy(),
                    log_alpha.grad, log_beta.grad, Sn, mn, mn2])
        opt.step()
    with lib.no_grad():
        alpha, beta = log_alpha.exp(), log_beta.exp()
        Sn = lib.linalg.inv(alpha * lib.eye(M, dtype=lib.float64) + beta * Phi.T @ Phi)
        mean = Phis @ (beta * Sn @ Phi.T @ y)
        var = 1 / beta + lib.einsum("ij,jk,ik->i", Phis, Sn, Phis)
    return rec, mean, var, (Phis @ Sn * Phis).sum(-1) + 1 / beta


def test_bayesian_linear_regression_evidence():
    both(bayes_linear, 1e-9)


# 3. Bayesian logistic regression: MAP by L-BFGS, Laplace approximation, posterior predictive

_R = np.random.default_rng(1)
LR_X = _R.standard_normal((30, 3))
LR_Y = (_R.uniform(size=30) < 1 / (1 + np.exp(-LR_X @ [1.5, -2.0, 0.5]))).astype(np.float64)
LR_EPS = _R.standard_normal((5, 3))


def laplace_logistic(lib):
    F, D = lib.nn.functional, lib.distributions
    x, y = lib.tensor(LR_X), lib.tensor(LR_Y)
    w = lib.zeros(3, dtype=lib.float64, requires_grad=True)
    prior = D.Normal(0.0, 2.0)  # from Python numbers: evaluated in float64

    def neg_log_post(w):
        return (F.binary_cross_entropy_with_logits(x @ w, y, reduction="sum")
                - prior.log_prob(w).sum())

    opt = lib.optim.LBFGS([w], lr=1, max_iter=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = neg_log_post(w)
        loss.backward()
        return loss

    opt.step(closure)
    H = lib.autograd.functional.hessian(neg_log_post, w.detach())
    cov = lib.linalg.inv(H)
    L = lib.linalg.cholesky(cov)
    q = D.MultivariateNormal(w.detach(), scale_tril=L)
    q_prec = D.MultivariateNormal(w.detach(), precision_matrix=H)
    samples = w.detach() + lib.tensor(LR_EPS) @ L.T
    p0 = D.MultivariateNormal(lib.zeros(3, dtype=lib.float64),
                              scale_tril=2.0 * lib.eye(3, dtype=lib.float64))
    loc, tril = w.detach().clone().requires_grad_(True), L.clone().requires_grad_(True)
    D.MultivariateNormal(loc, scale_tril=tril).log_prob(samples).sum().backward()
    return [w, H, cov, q.log_prob(samples), q_prec.log_prob(samples), q_prec.scale_tril,
            q.entropy(), q.variance, D.kl_divergence(q, p0), lib.sigmoid(samples @ x.T).mean(0),
            loc.grad, tril.grad, list(q.rsample((4,)).shape)]


def test_bayesian_logistic_regression_laplace():
    both(laplace_logistic, 1e-8)


# 4. Kalman filter and RTS smoother, the process noise learnt by the likelihood

_R = np.random.default_rng(2)
KF_A = np.array([[1.0, 0.1], [0.0, 1.0]])
KF_H = np.array([[1.0, 0.0]])
KF_Z = np.zeros((12, 1))
_s = np.array([0.0, 1.0])
for _t in range(12):
    _s = KF_A @ _s + 0.05 * _R.standard_normal(2)
    KF_Z[_t] = KF_H @ _s + 0.3 * _R.standard_normal(1)


def kalman(lib):
    D = lib.distributions
    A, H, Z = lib.tensor(KF_A), lib.tensor(KF_H), lib.tensor(KF_Z)
    I2 = lib.eye(2, dtype=lib.float64)
    log_q = lib.nn.Parameter(lib.tensor(math.log(0.1), dtype=lib.float64))
    log_r = lib.nn.Parameter(lib.tensor([math.log(0.5)], dtype=lib.float64))
    opt = lib.optim.SGD([log_q, log_r], lr=0.01, momentum=0.9, nesterov=True)
    rec = []
    for _ in range(4):
        opt.zero_grad()
        Q, R = lib.exp(log_q) ** 2 * I2, lib.diag(lib.exp(2 * log_r))
        m, P, ll = lib.zeros(2, dtype=lib.float64), I2, 0.0
        ms, Ps, mps, Pps = [], [], [], []
        for t in range(len(KF_Z)):
            mp, Pp = A @ m, A @ P @ A.mT + Q
            S = H @ Pp @ H.T + R
            K = lib.linalg.solve(S, H @ Pp).T
            ll = ll + D.MultivariateNormal(H @ mp, S).log_prob(Z[t])
            m = mp + K @ (Z[t] - H @ mp)
            P = (I2 - K @ H) @ Pp
            P = 0.5 * (P + P.transpose(-1, -2))
            ms.append(m), Ps.append(P), mps.append(mp), Pps.append(Pp)
        sm, sP = [ms[-1]], [Ps[-1]]
        for t in range(len(KF_Z) - 2, -1, -1):
            G = Ps[t] @ A.T @ lib.linalg.inv(Pps[t + 1])
            sm.insert(0, ms[t] + G @ (sm[0] - mps[t + 1]))
            sP.insert(0, Ps[t] + G @ (sP[0] - Pps[t + 1]) @ G.T)
        sm, sP = lib.stack(sm), lib.stack(sP)
        loss = -ll + 0.1 * (sm[:, 1] ** 2).mean() + lib.linalg.det(sP).sum() + lib.trace(sP[3])
        loss.backward()
        rec.append([loss.item(), log_q.grad, log_r.grad, sm, sP.diagonal(dim1=-2, dim2=-1)])
        opt.step()
    return rec, log_q, log_r


def test_kalman_filter_rts_smoother():
    both(kalman)


# 5. A neural SDE by Euler-Maruyama (shared Brownian increments), learnt drift and diffusion

NOISE = np.random.default_rng(3).standard_normal((12, 6, 2))


def neural_sde(lib):
    nn = lib.nn

    class Drift(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch_init(lib, lambda lib: lib.nn.Sequential(
                lib.nn.Linear(3, 16), lib.nn.SiLU(), lib.nn.Linear(16, 2)))

        def forward(self, t, y):
            return self.net(lib.cat([y, t * lib.ones_like(y[:, :1])], dim=-1))

    class Diffusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_sigma = nn.Parameter(lib.full((2,), -1.0, dtype=lib.float64))

        def forward(self, t, y):
            return lib.exp(self.log_sigma).expand_as(y)

    f, g = Drift(), Diffusion()
    ts = lib.linspace(0, 1, len(NOISE) + 1, dtype=lib.float64)
    opt = lib.optim.RMSprop(list(f.parameters()) + list(g.parameters()), lr=1e-2, centered=True)
    rec = []
    for _ in range(3):
        opt.zero_grad()
        y = lib.zeros(6, 2, dtype=lib.float64) + 0.5
        path = [y]
        for i in range(len(NOISE)):
            dt = ts[i + 1] - ts[i]
            y = y + f(ts[i], y) * dt + g(ts[i], y) * lib.tensor(NOISE[i]) * lib.sqrt(dt)
            path.append(y)
        path = lib.stack(path, 0)
        loss = ((path[-1] - 1.0) ** 2).mean() + path.var(dim=1, unbiased=True).mean()
        loss.backward()
        rec.append([loss.item(), g.log_sigma.grad, f.net[0].weight.grad])
        opt.step()
    return rec


def test_neural_sde_euler_maruyama():
    both(neural_sde)


def test_randn_under_a_generator_repeats():
    gen = ng.Generator().manual_seed(123)
    a = ng.randn(3, 2, generator=gen, dtype=ng.float64)
    gen.manual_seed(123)
    np.testing.assert_array_equal(ng.randn(3, 2, generator=gen, dtype=ng.float64).numpy(),
                                  a.numpy())
    state = gen.get_state()
    b = ng.randn(4, generator=gen)
    gen.set_state(state)
    np.testing.assert_array_equal(ng.randn(4, generator=gen).numpy(), b.numpy())


# 6. A Hamiltonian neural network: the vector field from dH/dx (create_graph=True), trained

_R = np.random.default_rng(4)
HNN_X = _R.uniform(-1, 1, (24, 2))
HNN_DX = HNN_X[:, ::-1] * [1.0, -1.0] + 0.01 * _R.standard_normal((24, 2))


def hamiltonian_nn(lib):
    model = torch_init(lib, lambda lib: lib.nn.Sequential(
        lib.nn.Linear(2, 24), lib.nn.Tanh(), lib.nn.Linear(24, 24), lib.nn.Softplus(beta=2.0),
        lib.nn.Linear(24, 1, bias=False)))
    J = lib.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=lib.float64)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x, dx = lib.tensor(HNN_X), lib.tensor(HNN_DX)
    rec = []
    for _ in range(4):
        opt.zero_grad()
        xx = x.clone().requires_grad_(True)
        dH = lib.autograd.grad(model(xx).sum(), xx, create_graph=True)[0]
        dHdq, dHdp = dH.split(1, dim=1)
        field = lib.cat([dHdp, -dHdq], 1)
        loss = ((field - dx) ** 2).mean() + 1e-3 * ((dH @ J.T - field) ** 2).sum()
        loss.backward()
        rec.append([loss.item(), {k: p.grad for k, p in model.named_parameters()}])
        opt.step()
    z, path = lib.tensor([[0.5, 0.0]], dtype=lib.float64), []
    for _ in range(6):  # a rollout along the learnt field
        z = z.detach().requires_grad_()
        (dz,) = lib.autograd.grad(model(z).sum(), z)
        z = z + 0.1 * dz @ J.T
        path.append(z)
    return rec, path


def test_hamiltonian_neural_network():
    both(hamiltonian_nn)


# 7. NeRF: positional encoding, volume rendering, hierarchical sampling by searchsorted

_R = np.random.default_rng(5)
RAYS_O = _R.standard_normal((5, 3))
RAYS_D = _R.standard_normal((5, 3))
RAYS_D /= np.linalg.norm(RAYS_D, axis=-1, keepdims=True)
PIXELS = _R.uniform(size=(5, 3))
UNIFORM = _R.uniform(size=(5, 8))


def nerf(lib):
    F = lib.nn.functional

    def posenc(x, n_freqs):
        freqs = 2.0 ** lib.arange(n_freqs, dtype=x.dtype) * math.pi
        xb = (x[..., None, :] * freqs[:, None]).reshape(*x.shape[:-1], -1)
        return lib.cat([x, lib.sin(xb), lib.cos(xb)], dim=-1)

    def sample_pdf(bins, weights, u):
        weights = weights + 1e-5
        pdf = weights / lib.sum(weights, -1, keepdim=True)  # a positional dim, keyword keepdim
        cdf = lib.cumsum(pdf, -1)
        cdf = lib.cat([lib.zeros_like(cdf[..., :1]), cdf], -1)
        inds = lib.searchsorted(cdf, u.contiguous(), right=True)
        below = lib.max(lib.zeros_like(inds - 1), inds - 1)
        above = lib.min((cdf.shape[-1] - 1) * lib.ones_like(inds), inds)
        inds_g = lib.stack([below, above], -1)
        shape = [inds_g.shape[0], inds_g.shape[1], cdf.shape[-1]]
        cdf_g = lib.gather(cdf.unsqueeze(1).expand(shape), 2, inds_g)
        bins_g = lib.gather(bins.unsqueeze(1).expand(shape), 2, inds_g)
        denom = cdf_g[..., 1] - cdf_g[..., 0]
        denom = lib.where(denom < 1e-5, lib.ones_like(denom), denom)
        t = (u - cdf_g[..., 0]) / denom
        return bins_g[..., 0] + t * (bins_g[..., 1] - bins_g[..., 0])

    def render(model, ro, rd, z):
        pts = ro[..., None, :] + rd[..., None, :] * z[..., :, None]
        raw = model(lib.cat([posenc(pts, 3), posenc(rd[:, None].expand(pts.shape), 2)], -1))
        rgb, sigma = lib.sigmoid(raw[..., :3]), F.relu(raw[..., 3])
        dists = z[..., 1:] - z[..., :-1]
        dists = lib.cat([dists, lib.tensor([1e10], dtype=z.dtype).expand(dists[..., :1].shape)],
                        -1) * lib.norm(rd[..., None, :], dim=-1)
        alpha = 1.0 - lib.exp(-sigma * dists)
        ones = lib.ones((alpha.shape[0], 1), dtype=alpha.dtype)
        trans = lib.cumprod(lib.cat([ones, 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
        w = alpha * trans
        depth = lib.sum(w * z, -1)
        acc = w.sum(-1)
        disp = 1.0 / lib.max(1e-10 * lib.ones_like(depth), depth / acc)
        return lib.sum(w[..., None] * rgb, -2), depth, disp, w, lib.exp(-lib.cumsum(
            sigma * dists, dim=-1))

    model = torch_init(lib, lambda lib: lib.nn.Sequential(
        lib.nn.Linear(3 + 18 + 3 + 12, 24), lib.nn.ReLU(), lib.nn.Linear(24, 4)))
    opt = lib.optim.Adam(model.parameters(), lr=5e-3)
    ro, rd, target, u = (lib.tensor(a) for a in (RAYS_O, RAYS_D, PIXELS, UNIFORM))
    t_vals = lib.linspace(0.0, 1.0, steps=8, dtype=lib.float64)
    z = (2.0 * (1.0 - t_vals) + 6.0 * t_vals).expand([len(RAYS_O), 8])
    mids = 0.5 * (z[..., 1:] + z[..., :-1])
    upper, lower = lib.cat([mids, z[..., -1:]], -1), lib.cat([z[..., :1], mids], -1)
    z = lower + (upper - lower) * u  # stratified sampling
    rec = []
    for _ in range(3):
        opt.zero_grad()
        rgb, depth, disp, w, trans = render(model, ro, rd, z)
        z_fine = sample_pdf(0.5 * (z[..., 1:] + z[..., :-1]), w[..., 1:-1].detach(), u).detach()
        z_all, _ = lib.sort(lib.cat([z, z_fine], -1), -1)
        rgb_fine = render(model, ro, rd, z_all)[0]
        loss = lib.mean((rgb - target) ** 2) + lib.mean((rgb_fine - target) ** 2)
        loss.backward()
        rec.append([loss.item(), (-10.0 * lib.log10(loss)).item(), depth, disp, trans, z_fine,
                    model[0].weight.grad])
        opt.step()
    return rec


def test_nerf_volume_rendering_hierarchical_sampling():
    both(nerf, 1e-9)


# 8. Normalising flows with torch.distributions: affine + sigmoid, and affine couplings

_R = np.random.default_rng(6)
FLOW_X = np.concatenate([_R.normal(-1, 0.4, (20, 2)), _R.normal(1.5, 0.3, (20, 2))])


def affine_sigmoid_flow(lib):
    D = lib.distributions
    T = D.transforms
    loc = lib.nn.Parameter(lib.zeros(2, dtype=lib.float64))
    log_scale = lib.nn.Parameter(lib.zeros(2, dtype=lib.float64))
    base = D.Independent(D.Normal(lib.zeros(2, dtype=lib.float64),
                                  lib.ones(2, dtype=lib.float64)), 1)
    opt = lib.optim.Adam([loc, log_scale], lr=0.05)
    x = lib.sigmoid(lib.tensor(FLOW_X))
    rec = []
    for _ in range(5):
        opt.zero_grad()
        flow = D.TransformedDistribution(
            base, [T.AffineTransform(loc, lib.exp(log_scale)), T.SigmoidTransform()])
        loss = -flow.log_prob(x).mean()
        loss.backward()
        rec.append([loss.item(), loc.grad, log_scale.grad, list(flow.batch_shape),
                    list(flow.event_shape)])
        opt.step()
    z = lib.tensor(FLOW_X[:4])
    y = flow.transforms[1](flow.transforms[0](z))
    lognormal = D.LogNormal(loc, lib.exp(log_scale))
    via_exp = D.TransformedDistribution(D.Normal(loc, lib.exp(log_scale)), [T.ExpTransform()])
    v = lib.tensor([[0.5, 2.0], [1.5, 0.3]], dtype=lib.float64)
    tanh = D.TransformedDistribution(D.Normal(0.0, 1.0), [T.TanhTransform(cache_size=1)])
    return rec, [y, flow.transforms[1].inv(y), flow.transforms[0].log_abs_det_jacobian(z, y),
                 lognormal.log_prob(v), via_exp.log_prob(v), lognormal.entropy(),
                 tanh.log_prob(lib.tensor([-0.9, 0.1, 0.99], dtype=lib.float64)),
                 list(flow.rsample((7,)).shape)]


def test_affine_sigmoid_flow():
    both(affine_sigmoid_flow, 1e-9)


def coupling_flow(lib):
    D = lib.distributions
    T, C = D.transforms, D.constraints

    class Coupling(T.Transform):
        """RealNVP's affine coupling: one coordinate scales and shifts the other."""
        domain = C.real_vector
        codomain = C.real_vector
        bijective = True

        def __init__(self, net, flip):
            super().__init__()
            self.net, self.flip = net, flip

        def _split(self, x):
            a, b = x[..., :1], x[..., 1:]
            return (b, a) if self.flip else (a, b)

        def _join(self, a, b):
            return lib.cat((b, a) if self.flip else (a, b), dim=-1)

        def _call(self, x):
            a, b = self._split(x)
            s, t = self.net(a).chunk(2, dim=-1)
            return self._join(a, b * lib.exp(lib.tanh(s)) + t)

        def _inverse(self, y):
            a, b = self._split(y)
            s, t = self.net(a).chunk(2, dim=-1)
            return self._join(a, (b - t) * lib.exp(-lib.tanh(s)))

        def log_abs_det_jacobian(self, x, y):
            s, _ = self.net(self._split(x)[0]).chunk(2, dim=-1)
            return lib.tanh(s).sum(-1)

    nets = torch_init(lib, lambda lib: lib.nn.ModuleList([lib.nn.Sequential(
        lib.nn.Linear(1, 8), lib.nn.LeakyReLU(0.2), lib.nn.Linear(8, 2)) for _ in range(3)]))
    base = D.MultivariateNormal(lib.zeros(2, dtype=lib.float64), lib.eye(2, dtype=lib.float64))
    parts = [Coupling(n, i % 2 == 1) for i, n in enumerate(nets)]
    parts.insert(1, T.AffineTransform(lib.tensor([0.1, -0.1], dtype=lib.float64),
                                      lib.tensor([1.2, 0.8], dtype=lib.float64), event_dim=1))
    flow = D.TransformedDistribution(base, parts)
    opt = lib.optim.Adam(nets.parameters(), lr=1e-2)
    x = lib.tensor(FLOW_X)
    rec = []
    for _ in range(4):
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        rec.append([loss.item(), nets[0][0].weight.grad, nets[2][2].bias.grad])
        opt.step()
    y = x[:4]
    for t in flow.transforms:
        y = t(y)
    return rec, y, flow.transforms[-1].inv(y)


def test_realnvp_coupling_flow_custom_transform():
    both(coupling_flow, 1e-9)


# 9. LASSO by FISTA and ISTA: soft thresholding with sign/clamp and with where

_R = np.random.default_rng(7)
LASSO_A = _R.standard_normal((20, 8))
LASSO_B = LASSO_A @ np.array([0, 2.0, 0, 0, -1.5, 0, 0.8, 0]) + 0.05 * _R.standard_normal(20)


def lasso(lib):
    A, b = lib.tensor(LASSO_A), lib.tensor(LASSO_B)
    lam = 0.5
    lip = lib.linalg.matrix_norm(A, ord=2) ** 2
    step = 1.0 / lip
    x, x_prev, tk = lib.zeros(8, dtype=lib.float64), lib.zeros(8, dtype=lib.float64), 1.0
    rec = [lip.item(), (lib.linalg.svdvals(A)[0] ** 2).item()]
    for _ in range(20):
        t_next = (1 + math.sqrt(1 + 4 * tk ** 2)) / 2
        y = (x + ((tk - 1) / t_next) * (x - x_prev)).requires_grad_()
        (g,) = lib.autograd.grad(0.5 * ((A @ y - b) ** 2).sum(), y)
        v, x_prev, tk = y.detach() - step * g, x, t_next
        x = lib.sign(v) * lib.clamp(v.abs() - lam * step, min=0.0)
        t = lam * step
        x_where = lib.where(v > t, v - t, lib.where(v < -t, v + t, lib.zeros_like(v)))
        obj = 0.5 * ((A @ x - b) ** 2).sum() + lam * x.abs().sum()
        rec.append([obj.item(), x, x_where, int((x != 0).sum())])
    w = lib.zeros(8, dtype=lib.float64, requires_grad=True)
    for _ in range(8):  # ISTA with in-place updates under no_grad
        (0.5 * ((A @ w - b) ** 2).mean()).backward()
        with lib.no_grad():
            w -= 0.1 * w.grad
            w.copy_(lib.sign(w) * lib.clamp_min(w.abs() - 0.01, 0))
            w.grad.zero_()
        rec.append(w.detach().clone())
    z = lib.tensor([0.0, -0.0, 1.0, -2.0], dtype=lib.float64, requires_grad=True)
    (z.abs().sum() + lib.sign(z).sum() + lib.clamp(z, -1, 0.5).sum()
     + lib.nn.functional.softshrink(z, 0.5).sum()).backward()  # subgradients at the kinks
    return rec, z.grad


def test_lasso_proximal_gradient():
    both(lasso)


# 10. Matrix functions with gradients: eigh, svd, matrix_exp, lstsq, pinv, norms

_R = np.random.default_rng(8)
MF_W = _R.standard_normal((4, 4))
MF_S = MF_W @ MF_W.T + 4 * np.eye(4)
MF_R = _R.standard_normal((6, 3))
MF_B = _R.standard_normal((6, 2))
MF_BATCH = _R.standard_normal((2, 3, 3))


def matrix_functions(lib):
    LA = lib.linalg
    W = lib.nn.Parameter(lib.tensor(MF_W * 0.3))
    S = lib.nn.Parameter(lib.tensor(MF_S))
    R = lib.nn.Parameter(lib.tensor(MF_R))
    opt = lib.optim.SGD([W, S, R], lr=1e-3)
    rec = []
    for _ in range(3):
        opt.zero_grad()
        sym = 0.5 * (S + S.T)
        evals, evecs = LA.eigh(sym)
        sqrtm = evecs @ lib.diag_embed(evals.sqrt()) @ evecs.mT
        logm = (evecs * evals.log().unsqueeze(-2)) @ evecs.mT
        U, sv, Vh = LA.svd(R, full_matrices=False)
        Q = LA.matrix_exp(W - W.T)
        E = LA.matrix_exp(0.1 * W)
        sol = LA.lstsq(R, lib.tensor(MF_B)).solution
        P = LA.pinv(R)
        loss = (sqrtm.trace() + logm.trace() + (U[:, 0] ** 2 * sv[0]).sum() + sv.sum()
                + (Q @ Q.T - lib.eye(4, dtype=lib.float64)).pow(2).sum() + E.sum()
                + sol.pow(2).sum() + P.sum() + LA.matrix_norm(R, ord="nuc") + LA.norm(R)
                + LA.cond(sym) + (evecs[:, -1] ** 2).sum() + (Vh.abs() ** 2).sum()
                + LA.det(sym).log() + LA.slogdet(E).logabsdet)
        loss.backward()
        rec.append([loss.item(), W.grad, S.grad, R.grad, evals, sv, sol, P])
        opt.step()
    Bt = lib.tensor(MF_BATCH, requires_grad=True)
    out = (LA.matrix_exp(Bt).sum() + LA.svdvals(Bt).sum() + LA.pinv(Bt).sum()
           + LA.eigvalsh(Bt @ Bt.mT + lib.eye(3, dtype=lib.float64)).sum()
           + LA.matrix_power(Bt, 3).sum() + LA.inv_ex(Bt).inverse.sum()
           + LA.solve(Bt, Bt.sum(-1)).sum())
    out.backward()
    batched = LA.lstsq(lib.tensor(MF_R).expand(2, 6, 3), lib.tensor(MF_B).expand(2, 6, 2),
                       driver="gelsd")
    return rec, out.item(), Bt.grad, batched.solution, batched.rank


def test_matrix_functions_with_gradients():
    both(matrix_functions, 1e-8)


# 11. Gaussian-mixture EM (logsumexp responsibilities), then a mixture trained by Adam

_R = np.random.default_rng(9)
GMM_X = np.concatenate([_R.normal([-2, 0], 0.5, (20, 2)), _R.normal([2, 1], 0.7, (20, 2)),
                        _R.normal([0, 3], 0.4, (15, 2))])


def gmm(lib):
    D = lib.distributions
    x = lib.tensor(GMM_X)
    (N, d), K = x.shape, 3
    mu = x[[0, 25, 50]].clone()
    cov = lib.eye(d, dtype=lib.float64).repeat(K, 1, 1)
    log_pi = lib.full((K,), -math.log(K), dtype=lib.float64)
    rec = []
    for _ in range(6):
        lp = D.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x[:, None, :]) + log_pi
        ll = lib.logsumexp(lp, dim=1)
        resp = lib.exp(lp - ll[:, None])
        Nk = resp.sum(0)
        mu = (resp.T @ x) / Nk[:, None]
        diff = x[:, None, :] - mu[None]
        cov = (lib.einsum("nk,nki,nkj->kij", resp, diff, diff) / Nk[:, None, None]
               + 1e-6 * lib.eye(d, dtype=lib.float64))
        log_pi = lib.log(Nk) - math.log(N)
        rec.append([ll.sum().item(), mu, cov, log_pi])
    logits = lib.nn.Parameter(lib.zeros(K, dtype=lib.float64))
    locs = lib.nn.Parameter(lib.tensor(GMM_X[[0, 25, 50]]))
    raw_scale = lib.nn.Parameter(lib.zeros(K, d, dtype=lib.float64))
    opt = lib.optim.Adam([logits, locs, raw_scale], lr=0.05)
    for _ in range(4):
        opt.zero_grad()
        mixture = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(
            D.Normal(locs, lib.nn.functional.softplus(raw_scale)), 1))
        loss = -mixture.log_prob(x).mean()
        loss.backward()
        rec.append([loss.item(), logits.grad, locs.grad, raw_scale.grad, mixture.mean,
                    mixture.variance])
        opt.step()
    return rec


def test_gaussian_mixture_em_and_gradient():
    both(gmm)


# 12. A Fourier neural operator (rfft, complex weights trained by Adam) and a PINN (L-BFGS)

_R = np.random.default_rng(11)
FNO_U = _R.standard_normal((3, 1, 16))
FNO_V = _R.standard_normal((3, 1, 16))
FNO_W = (_R.standard_normal((2, 2, 5)) + 1j * _R.standard_normal((2, 2, 5))) / 4


def fourier_neural_operator(lib):
    nn = lib.nn

    class SpectralConv1d(nn.Module):
        def __init__(self, modes):
            super().__init__()
            self.modes = modes
            self.weights = nn.Parameter(lib.tensor(FNO_W, dtype=lib.complex128))

        def forward(self, x):
            x_ft = lib.fft.rfft(x)
            out_ft = lib.zeros(x.shape[0], self.weights.shape[1], x.size(-1) // 2 + 1,
                               dtype=lib.cdouble)
            out_ft[:, :, :self.modes] = lib.einsum("bix,iox->box", x_ft[:, :, :self.modes],
                                                   self.weights)
            return lib.fft.irfft(out_ft, n=x.size(-1))

    class FNO(nn.Module):
        def __init__(self):
            super().__init__()
            self.lift = torch_init(lib, lambda lib: lib.nn.Linear(2, 2))
            self.spectral = SpectralConv1d(5)
            self.pointwise = torch_init(lib, lambda lib: lib.nn.Conv1d(2, 2, 1))
            self.project = torch_init(lib, lambda lib: lib.nn.Linear(2, 1))

        def forward(self, x):
            grid = lib.linspace(0, 1, x.shape[-1], dtype=x.dtype).reshape(1, 1, -1).repeat(
                x.shape[0], 1, 1)
            x = self.lift(lib.cat((x, grid), dim=1).permute(0, 2, 1)).permute(0, 2, 1)
            x = nn.functional.gelu(self.spectral(x) + self.pointwise(x))
            return self.project(x.permute(0, 2, 1)).permute(0, 2, 1)

    model = FNO()
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    x, y = lib.tensor(FNO_U), lib.tensor(FNO_V)
    rec = []
    for _ in range(3):
        opt.zero_grad()
        loss = lib.norm(model(x) - y) / lib.norm(y)  # the relative L2 loss
        loss.backward()
        rec.append([loss.item(), lib.view_as_real(model.spectral.weights.grad),
                    model.lift.weight.grad])
        opt.step()
    return rec, lib.view_as_real(model.spectral.weights.detach())


def test_fourier_neural_operator_complex_weights():
    both(fourier_neural_operator, 1e-9)


def burgers_pinn(lib):
    nn = lib.nn
    net = torch_init(lib, lambda lib: lib.nn.Sequential(
        lib.nn.Linear(2, 12), lib.nn.Tanh(), lib.nn.Linear(12, 12), lib.nn.Tanh(),
        lib.nn.Linear(12, 1)))
    tx = lib.tensor(np.stack([np.linspace(0, 1, 10), np.linspace(-1, 1, 10)], 1),
                    requires_grad=True)
    opt = lib.optim.LBFGS(net.parameters(), lr=0.5, max_iter=4, history_size=3)
    rec = []

    def closure():
        opt.zero_grad()
        u = net(tx)
        du = lib.autograd.grad(u, tx, grad_outputs=lib.ones_like(u), create_graph=True)[0]
        u_t, u_x = du[:, 0:1], du[:, 1:2]
        u_xx = lib.autograd.grad(u_x, tx, lib.ones_like(u_x), create_graph=True)[0][:, 1:2]
        residual = u_t + u * u_x - (0.01 / math.pi) * u_xx
        loss = nn.functional.mse_loss(residual, lib.zeros_like(residual)) + lib.mean(
            (u[:3] + lib.sin(math.pi * tx[:3, 1:2])) ** 2)
        loss.backward()
        rec.append(loss.item())
        return loss

    for _ in range(2):
        opt.step(closure)
    return rec, dict(net.state_dict())


def test_burgers_pinn_lbfgs():
    both(burgers_pinn, 1e-9)


# regressions found by these ports

@pytest.mark.parametrize("name,args", [
    ("sum", (-1,)), ("mean", (0,)), ("max", (1,)), ("min", (0,)), ("argmax", (1,)),
    ("amax", (1,)), ("logsumexp", (1,)), ("std", (1,)), ("var", (1, False)), ("sum", ((0, 1),)),
])
def test_positional_dim_with_keyword_keepdim_as_pytorch(name, args):
    x = np.random.default_rng(0).standard_normal((3, 4))
    for keepdim in (True, False):
        want = getattr(torch, name)(torch.tensor(x), *args, keepdim=keepdim)
        got = getattr(ng, name)(ng.tensor(x), *args, keepdim=keepdim)
        assert_same(arr(list(got) if isinstance(got, tuple) else got),
                    arr(list(want) if isinstance(want, tuple) else want), 1e-12)
    with pytest.raises(TypeError, match="not both"):
        getattr(ng, name)(ng.tensor(x), args[0], dim=0, keepdim=True)
    with pytest.raises(TypeError, match="positional arguments after input"):
        getattr(ng, name)(ng.tensor(x), *args, None, None, keepdim=True)


NUMBER_BUILT = [
    ("Normal", (0.0, 1.0), 0.5), ("Beta", (2.0, 3.0), 0.25), ("Gamma", (2.0, 3.0), 0.5),
    ("Exponential", (2.0,), 0.5), ("Laplace", (0.0, 1.0), 0.5), ("Cauchy", (0.0, 1.0), 0.5),
    ("LogNormal", (0.0, 1.0), 0.5), ("StudentT", (3.0,), 0.5), ("HalfNormal", (1.0,), 0.5),
    ("Chi2", (3.0,), 0.5), ("Weibull", (1.0, 2.0), 0.5), ("Pareto", (1.0, 2.0), 2.5),
    ("InverseGamma", (2.0, 3.0), 0.5), ("VonMises", (0.0, 1.0), 0.5),
    ("Bernoulli", (0.25,), 1.0), ("Poisson", (2.0,), 1.0), ("Binomial", (5, 0.25), 1.0),
    ("Geometric", (0.25,), 1.0), ("FisherSnedecor", (3.0, 4.0), 0.5),
]


@pytest.mark.parametrize("name,args,v", NUMBER_BUILT)
def test_distribution_from_numbers_evaluates_in_the_values_dtype(name, args, v):
    """Parameters given as Python numbers follow a float64 value (0-d or not), as PyTorch's
    result is float64; the numbers here are exact in float32, so the float64 answer is PyTorch's
    with float64 parameters."""
    for value in (v, [v, v]):
        got = getattr(ng.distributions, name)(*args).log_prob(ng.tensor(value, dtype=ng.float64))
        targs = [torch.tensor(a, dtype=torch.float64) for a in args]
        want = getattr(torch.distributions, name)(*targs).log_prob(
            torch.tensor(value, dtype=torch.float64))
        assert got.dtype == ng.float64
        assert_same(got, want, 1e-12)


def test_lkj_cholesky_from_a_number_on_a_float64_factor():
    L = ng.distributions.transforms.CorrCholeskyTransform()(
        ng.tensor([0.3, -0.5, 0.8], dtype=ng.float64))
    got = ng.distributions.LKJCholesky(3, concentration=2.0).log_prob(L)
    want = torch.distributions.LKJCholesky(3, torch.tensor(2.0, dtype=torch.float64)).log_prob(
        torch.tensor(L.numpy()))
    assert got.dtype == ng.float64
    assert_same(got, want, 1e-12)


def test_distribution_from_float32_tensors_still_refuses_float64_values():
    """Only Python numbers are weakly typed: float32 tensors meeting float64 ones raise, the
    documented rule."""
    d = ng.distributions.Normal(ng.tensor([0.0]), ng.tensor([1.0]))
    with pytest.raises(ng.DTypeError, match="mixed float dtypes"):
        d.log_prob(ng.tensor([0.5], dtype=ng.float64))
    assert d.log_prob(ng.tensor([0.5])).dtype == ng.float32
    assert ng.distributions.Normal(0.0, 1.0).log_prob(ng.tensor([0.5])).dtype == ng.float32


@pytest.mark.parametrize("name,a,b", [
    ("Normal", (0.3, 1.5), (0.0, 1.0)), ("Gamma", (2.0, 1.5), (1.0, 1.0)),
    ("Beta", (2.0, 1.5), (1.0, 1.0)), ("Bernoulli", (0.25,), (0.5,)),
])
def test_kl_divergence_with_a_distribution_from_numbers(name, a, b):
    """KL between float64 0-d parameters and a prior from numbers (a scalar variational
    parameter against ``Normal(0., 1.)``) is float64, either way round."""
    D, TD = ng.distributions, torch.distributions
    for flip in (False, True):
        p = getattr(D, name)(*[ng.tensor(x, dtype=ng.float64) for x in a])
        tp = getattr(TD, name)(*[torch.tensor(x, dtype=torch.float64) for x in a])
        q = getattr(D, name)(*b)
        tq = getattr(TD, name)(*[torch.tensor(x, dtype=torch.float64) for x in b])
        if flip:
            p, q, tp, tq = q, p, tq, tp
        got = D.kl_divergence(p, q)
        assert got.dtype == ng.float64
        assert_same(got, TD.kl_divergence(tp, tq), 1e-12)
