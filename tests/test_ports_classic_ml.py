"""Classic machine learning written in PyTorch tensors, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as people
write it in notebooks and small libraries: k-means (Lloyd and k-means++), PCA three ways (SVD,
``pca_lowrank``, the covariance's ``eigh``), ridge regression by ``linalg.solve``,
``lstsq`` and ``cholesky_solve``, logistic regression with L-BFGS and a strong Wolfe line
search, a Gaussian mixture fitted by EM in log space, t-SNE's affinities by binary search and
its gradient steps, spectral clustering, non-negative matrix factorisation by multiplicative
updates, a kernel SVM's dual by projected gradient, and kernel ridge regression with a
learned bandwidth. Data: scikit-learn's iris and digits tables, float64; every recorded value
must agree to rounding (eigenvectors and singular vectors compared up to sign).
"""

from __future__ import annotations

import numpy as np
import pytest

from _ports import both, float64_one_thread  # noqa: F401

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")
pytestmark = pytest.mark.usefixtures("float64_one_thread")

TOL = 1e-9


def iris():
    d = datasets.load_iris()
    x = (d.data - d.data.mean(0)) / d.data.std(0)
    return x, d.target.astype(np.int64)


def signs(v, lib):
    """Columns of ``v`` with the sign that makes each column's largest entry positive."""
    idx = v.abs().argmax(0)
    s = lib.sign(v.gather(0, idx[None]))
    return v * s


def test_kmeans_lloyd_and_plus_plus():
    x, _ = iris()
    picks = np.random.default_rng(0).random(3)

    def run(lib):
        X = lib.tensor(x)
        # k-means++ seeding with fixed uniforms in place of the sampler
        centers = [X[0]]
        for u in picks[:2]:
            d2 = lib.cdist(X, lib.stack(centers)).min(dim=1).values ** 2
            cdf = lib.cumsum(d2 / d2.sum(), 0)
            centers.append(X[lib.searchsorted(cdf, lib.tensor([u])).clamp(max=len(X) - 1)[0]])
        C = lib.stack(centers)
        inertia = []
        for _ in range(8):
            dist = lib.cdist(X, C)
            labels = dist.argmin(dim=1)
            inertia.append(dist.gather(1, labels[:, None]).pow(2).sum())
            sums = lib.zeros_like(C).index_add_(0, labels, X)
            counts = lib.bincount(labels, minlength=3).clamp(min=1).unsqueeze(1)
            C = sums / counts
        means = lib.zeros(3, X.shape[1], dtype=X.dtype).scatter_reduce(
            0, labels[:, None].expand_as(X), X, reduce="mean", include_self=False)
        return {"centers": C, "labels": labels.double(), "inertia": inertia, "means": means}

    both(run, tol=TOL)


def test_pca_three_ways_agree():
    x = datasets.load_digits().data[:300]

    def run(lib):
        X = lib.tensor(x)
        Xc = X - X.mean(0, keepdim=True)
        U, S, Vh = lib.linalg.svd(Xc, full_matrices=False)
        comps = signs(Vh[:5].T, lib)
        cov = Xc.T @ Xc / (len(X) - 1)
        evals, evecs = lib.linalg.eigh(cov)
        top = signs(evecs.flip(-1)[:, :5], lib)
        explained = (S ** 2 / (len(X) - 1))[:5]
        ratio = explained / lib.trace(cov)
        projected = Xc @ comps
        lib.manual_seed(0)  # a random sketch: the libraries' generators differ, so each
        _, S_low, _ = lib.pca_lowrank(X, q=8, center=True, niter=4)  # is checked on its own
        np.testing.assert_allclose(S_low[:3].numpy(), S[:3].numpy(), rtol=1e-4)
        return {"components": comps, "eigh": top, "explained": explained,
                "evals": evals.flip(-1)[:5], "ratio": ratio, "projected": projected[:10]}

    rec = both(run, tol=1e-7)
    np.testing.assert_allclose(rec["components"], rec["eigh"], atol=1e-8)


def test_ridge_three_solvers_and_kernel_ridge_bandwidth():
    d = datasets.load_diabetes()
    x, y = d.data[:200], d.target[:200]

    def run(lib):
        X, Y = lib.tensor(x), lib.tensor(y)[:, None]
        Xb = lib.cat([X, lib.ones(len(X), 1)], 1)
        A = Xb.T @ Xb + 0.1 * lib.eye(Xb.shape[1])
        w_solve = lib.linalg.solve(A, Xb.T @ Y)
        L = lib.linalg.cholesky(A)
        w_chol = lib.cholesky_solve(Xb.T @ Y, L)
        aug = lib.cat([Xb, np.sqrt(0.1) * lib.eye(Xb.shape[1])])
        w_lstsq = lib.linalg.lstsq(aug, lib.cat([Y, lib.zeros(Xb.shape[1], 1)])).solution
        # kernel ridge with a learned RBF bandwidth (leave-one-out style validation split)
        log_gamma = lib.tensor(0.0, requires_grad=True)
        opt = lib.optim.Adam([log_gamma], lr=0.1)
        tr, va = slice(0, 150), slice(150, 200)
        rec = []
        for _ in range(6):
            K = lib.exp(-lib.exp(log_gamma) * lib.cdist(X[tr], X[tr]) ** 2)
            alpha = lib.linalg.solve(K + 1.0 * lib.eye(150), Y[tr])
            Kv = lib.exp(-lib.exp(log_gamma) * lib.cdist(X[va], X[tr]) ** 2)
            loss = ((Kv @ alpha - Y[va]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.append([loss, log_gamma.detach().clone()])
        return {"solve": w_solve, "chol": w_chol, "lstsq": w_lstsq, "kernel": rec}

    rec = both(run, tol=1e-8)
    np.testing.assert_allclose(rec["solve"], rec["chol"], rtol=1e-8)
    np.testing.assert_allclose(rec["solve"], rec["lstsq"], rtol=1e-6)


def test_logistic_regression_with_lbfgs_strong_wolfe():
    x, y = iris()

    def run(lib):
        X, Y = lib.tensor(x), lib.tensor(y)
        W = lib.zeros(4, 3, requires_grad=True)
        b = lib.zeros(3, requires_grad=True)
        opt = lib.optim.LBFGS([W, b], lr=1, max_iter=20, history_size=5,
                              line_search_fn="strong_wolfe")
        losses = []

        def closure():
            opt.zero_grad()
            loss = lib.nn.functional.cross_entropy(X @ W + b, Y) + 1e-2 * (W ** 2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            losses.append(opt.step(closure))
        state = opt.state[W]
        return {"losses": losses, "W": W, "b": b, "func_evals": state["func_evals"],
                "n_iter": state["n_iter"]}

    both(run, tol=1e-8)


def test_gaussian_mixture_em_in_log_space():
    x, _ = iris()
    x = x[:, :2]

    def run(lib):
        X = lib.tensor(x)
        K, (n, d) = 3, X.shape
        mu = X[[0, 50, 100]].clone()
        cov = lib.eye(d).repeat(K, 1, 1)
        logpi = lib.full((K,), -np.log(K), dtype=lib.float64)
        lls = []
        for _ in range(10):
            dist = lib.distributions.MultivariateNormal(mu, covariance_matrix=cov)
            logp = dist.log_prob(X[:, None, :]) + logpi  # (n, K)
            ll = lib.logsumexp(logp, dim=1)
            lls.append(ll.mean())
            resp = (logp - ll[:, None]).exp()
            nk = resp.sum(0) + 1e-10
            mu = (resp.T @ X) / nk[:, None]
            diff = X[:, None, :] - mu[None]
            cov = lib.einsum("nk,nki,nkj->kij", resp, diff, diff) / nk[:, None, None]
            cov = cov + 1e-6 * lib.eye(d)
            logpi = lib.log(nk / n)
        return {"ll": lls, "mu": mu, "cov": cov, "pi": logpi.exp()}

    rec = both(run, tol=TOL)
    assert all(b >= a - 1e-12 for a, b in zip(rec["ll"], rec["ll"][1:]))  # EM never goes down


def test_tsne_affinities_and_gradient_steps():
    x = datasets.load_digits().data[:60] / 16.0
    y0 = np.random.default_rng(1).standard_normal((60, 2)) * 1e-2

    def run(lib):
        X = lib.tensor(x)
        D = lib.cdist(X, X) ** 2
        n, target = len(X), np.log(10.0)  # perplexity 10
        lo, hi = lib.full((n, 1), 1e-20), lib.full((n, 1), 1e20)
        beta = lib.ones(n, 1)
        eye = lib.eye(n, dtype=lib.bool)
        for _ in range(40):  # binary search of each row's precision, vectorised
            P = lib.exp(-D * beta).masked_fill(eye, 0.0)
            sumP = P.sum(1, keepdim=True)
            H = lib.log(sumP) + beta * (D * P).sum(1, keepdim=True) / sumP
            too_flat = H > target
            lo = lib.where(too_flat, beta, lo)
            hi = lib.where(too_flat, hi, beta)
            beta = lib.where(hi >= 1e20, beta * 2, (lo + hi) / 2)
        P = P / sumP
        P = (P + P.T) / (2 * n)
        Y = lib.tensor(y0, requires_grad=True)
        opt = lib.optim.SGD([Y], lr=50.0, momentum=0.5)
        kls = []
        for it in range(15):
            num = 1 / (1 + lib.cdist(Y, Y) ** 2)
            num = num.masked_fill(eye, 0.0)
            Q = (num / num.sum()).clamp_min(1e-12)
            exaggeration = 4.0 if it < 10 else 1.0
            kl = (exaggeration * P * (lib.log((exaggeration * P).clamp_min(1e-12)) - lib.log(Q)))
            kl = kl.sum()
            opt.zero_grad()
            kl.backward()
            opt.step()
            kls.append(kl)
        return {"beta": beta[:10], "P": P[:5, :8], "kl": kls, "Y": Y}

    both(run, tol=1e-8)


def test_spectral_clustering_nmf_and_svm_dual():
    x, y = iris()
    v = datasets.load_digits().data[:80]

    def run(lib):
        X = lib.tensor(x)
        W = lib.exp(-lib.cdist(X, X) ** 2 / 2)
        deg = W.sum(1)
        Dm = lib.diag(deg.rsqrt())
        Lsym = lib.eye(len(X)) - Dm @ W @ Dm
        evals, evecs = lib.linalg.eigh(Lsym)
        emb = signs(evecs[:, :3], lib)
        emb = emb / emb.norm(dim=1, keepdim=True)
        # NMF by Lee and Seung's multiplicative updates
        V = lib.tensor(v)
        g = np.random.default_rng(2)
        Wn, Hn = lib.tensor(g.random((80, 5))), lib.tensor(g.random((5, 64)))
        errs = []
        for _ in range(20):
            Hn = Hn * (Wn.T @ V) / (Wn.T @ Wn @ Hn + 1e-10)
            Wn = Wn * (V @ Hn.T) / (Wn @ Hn @ Hn.T + 1e-10)
            errs.append(lib.linalg.matrix_norm(V - Wn @ Hn))
        # a kernel SVM's dual (setosa against the rest) by projected gradient ascent
        t = lib.tensor(np.where(y == 0, 1.0, -1.0))
        K = lib.exp(-0.5 * lib.cdist(X, X) ** 2)
        Q = (t[:, None] * t[None, :]) * K
        alpha = lib.zeros(len(X))
        for _ in range(30):
            grad = 1 - Q @ alpha
            alpha = (alpha + 0.01 * grad).clamp(0, 1.0)
            alpha = alpha - t * (alpha @ t) / len(X)
            alpha = alpha.clamp(0, 1.0)
        dual = alpha.sum() - 0.5 * alpha @ Q @ alpha
        sv = (alpha > 1e-6).sum()
        return {"evals": evals[:4], "emb": emb[:10], "nmf": errs, "dual": dual,
                "support": sv.double(), "alpha": alpha[:10]}

    rec = both(run, tol=1e-8)
    assert all(b <= a + 1e-9 for a, b in zip(rec["nmf"], rec["nmf"][1:]))
