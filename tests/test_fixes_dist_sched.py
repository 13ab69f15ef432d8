"""Regression tests: distribution gradients at kinks, the KL pairs across families, and the
learning-rate schedules' PyTorch semantics inside SequentialLR / ChainedScheduler, custom
``get_lr()`` schedules, ``LinearLR(total_iters=0)`` and the deprecated ``step(epoch)``."""

import itertools
import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.distributions as ND
from nodegrad.distributions.bernoulli import _bce_with_logits

torch = pytest.importorskip("torch")
TD = torch.distributions


# --- helpers -------------------------------------------------------------------------------------
def _ng_t(v, grad=False):
    return ng.tensor(np.array(v, dtype=np.float64), requires_grad=grad)


def _torch_t(v, grad=False):
    return torch.tensor(v, dtype=torch.float64, requires_grad=grad)


def _value_and_grads(build, params):
    """``build(M, tensors, const)`` summed and differentiated, in nodegrad and in PyTorch:
    [(value, [grad per param])] for each library."""
    out = []
    for lib in ("ng", "torch"):
        mk = _ng_t if lib == "ng" else _torch_t
        M = ND if lib == "ng" else TD
        ts = [mk(p, grad=True) for p in params]
        y = build(M, ts, mk)
        value = np.array(y.detach().numpy(), dtype=np.float64)
        grads = None
        if np.all(np.isfinite(value)):
            y.sum().backward()
            grads = [np.zeros_like(value) if t.grad is None else t.grad.numpy() for t in ts]
        out.append((value, grads))
    return out


def _assert_same(build, params, rtol=1e-10, atol=1e-12):
    (v1, g1), (v2, g2) = _value_and_grads(build, params)
    np.testing.assert_allclose(v1, v2, rtol=rtol, atol=atol)
    assert (g1 is None) == (g2 is None)
    if g1 is not None:
        for a, b in zip(g1, g2):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


# --- 1. gradients of the Bernoulli family at logits 0 --------------------------------------------
KINK_CASES = {
    "bernoulli_probs_log_prob_1": lambda M, t, c: M.Bernoulli(probs=t[0]).log_prob(c([1.0, 1.0])),
    "bernoulli_probs_log_prob_0": lambda M, t, c: M.Bernoulli(probs=t[0]).log_prob(c([0.0, 0.0])),
    "bernoulli_logits_log_prob": lambda M, t, c: M.Bernoulli(logits=t[0] - 0.5).log_prob(
        c([1.0, 0.0])),
    "bernoulli_entropy": lambda M, t, c: M.Bernoulli(logits=t[0] - 0.5).entropy(),
    "geometric_logits_entropy": lambda M, t, c: M.Geometric(logits=t[0] - 0.5).entropy(),
    "geometric_probs_entropy": lambda M, t, c: M.Geometric(probs=t[0]).entropy(),
    "geometric_kl": lambda M, t, c: M.kl_divergence(M.Geometric(logits=t[0] - 0.5),
                                                    M.Geometric(probs=c([0.3, 0.7]))),
    "cb_logits_log_prob": lambda M, t, c: M.ContinuousBernoulli(logits=t[0] - 0.5).log_prob(
        c([0.3, 0.9])),
    "cb_probs_log_prob": lambda M, t, c: M.ContinuousBernoulli(probs=t[0]).log_prob(
        c([0.3, 0.9])),
    "binomial_logits_log_prob": lambda M, t, c: M.Binomial(5, logits=t[0] - 0.5).log_prob(
        c([2.0, 5.0])),
    "bernoulli_kl": lambda M, t, c: M.kl_divergence(M.Bernoulli(logits=t[0] - 0.5),
                                                    M.Bernoulli(logits=c([0.3, -2.0]))),
}


@pytest.mark.parametrize("name", sorted(KINK_CASES))
def test_gradients_at_probs_one_half_match_torch(name):
    """probs = 0.5 (logits = 0), where a max(l, 0) + log1p(exp(-|l|)) split takes the wrong
    one-sided gradients: e.g. d/dp Bernoulli(p).log_prob(1) is 2, not 0."""
    _assert_same(KINK_CASES[name], [[0.5, 0.5]])


EXTREME_CASES = {
    "bernoulli_log_prob": lambda M, t, c: M.Bernoulli(logits=t[0]).log_prob(c([1.0, 0.0] * 3)),
    "bernoulli_entropy": lambda M, t, c: M.Bernoulli(logits=t[0]).entropy(),
    "cb_log_prob": lambda M, t, c: M.ContinuousBernoulli(logits=t[0]).log_prob(c([0.3] * 6)),
    "cb_entropy": lambda M, t, c: M.ContinuousBernoulli(logits=t[0]).entropy(),
    "binomial_log_prob": lambda M, t, c: M.Binomial(4, logits=t[0]).log_prob(c([4.0] * 6)),
}


@pytest.mark.parametrize("name", sorted(EXTREME_CASES))
def test_extreme_logits_stay_finite_and_match_torch(name):
    _assert_same(EXTREME_CASES[name], [[0.0, 100.0, -100.0, 800.0, -800.0, 1e-9]])


def test_bce_helper_is_finite_with_the_sigmoid_gradient_everywhere():
    logits = np.array([0.0, 1e-9, -3.0, 100.0, -100.0, 800.0, -800.0])
    target = np.array([1.0, 0.0, 0.25, 1.0, 0.0, 0.0, 1.0])
    x = _ng_t(logits, grad=True)
    y = _bce_with_logits(x, _ng_t(target))
    y.sum().backward()
    tx = _torch_t(logits, grad=True)
    ty = torch.nn.functional.binary_cross_entropy_with_logits(tx, _torch_t(target),
                                                              reduction="none")
    ty.sum().backward()
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(x.grad.numpy()))
    exact = target * np.logaddexp(0, -logits) + (1 - target) * np.logaddexp(0, logits)
    np.testing.assert_allclose(y.numpy(), exact, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-40)
    sig = lambda v: 1 / (1 + np.exp(-np.clip(v, -700, 700)))  # noqa: E731
    exact_grad = (1 - target) * sig(logits) - target * sig(-logits)  # sigmoid(l) - t
    np.testing.assert_allclose(x.grad.numpy(), exact_grad, rtol=1e-12, atol=1e-300)


def test_geometric_entropy_is_finite_when_probs_underflow():
    """H = softplus(-l) + e^(-l) softplus(l): 801 at logits -800 (probs 0 in float64), where
    the BCE / probs form gives 0/0."""
    logits = [-800.0, -100.0, -30.0, 0.0, 30.0, 800.0]
    x = _ng_t(logits, grad=True)
    h = ND.Geometric(logits=x).entropy()
    h.sum().backward()
    sp = np.logaddexp(0, np.array(logits))
    want = np.logaddexp(0, -np.array(logits)) + np.array(
        [1.0, 1.0, math.log1p(math.exp(-30)) / math.exp(-30), math.log(2),
         math.exp(-30) * sp[4], 0.0])
    np.testing.assert_allclose(h.numpy(), want, rtol=1e-12)
    assert np.all(np.isfinite(x.grad.numpy()))
    np.testing.assert_allclose(x.grad.numpy()[[0, 1, 3]], [-1.0, -1.0, -math.log(2)], rtol=1e-9)


def test_laplace_cdf_and_icdf_gradients_at_the_median():
    """sign(d) |d| forms have gradient 0 at d = 0 (PyTorch's too); the density there is
    1 / (2 scale) and the quantile's slope 2 scale: finite differences agree."""
    loc, scale = _ng_t([0.3], grad=True), _ng_t([1.5], grad=True)
    x = _ng_t([0.3], grad=True)
    ND.Laplace(loc, scale).cdf(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1 / 3.0], rtol=1e-12)
    np.testing.assert_allclose(loc.grad.numpy(), [-1 / 3.0], rtol=1e-12)
    np.testing.assert_allclose(scale.grad.numpy(), [0.0], atol=1e-15)
    u = _ng_t([0.5], grad=True)
    scale = _ng_t([1.5], grad=True)
    ND.Laplace(_ng_t([0.3]), scale).icdf(u).sum().backward()
    np.testing.assert_allclose(u.grad.numpy(), [3.0], rtol=1e-12)
    np.testing.assert_allclose(scale.grad.numpy(), [0.0], atol=1e-15)
    # away from the median: PyTorch's values and gradients, and the lower tail to full
    # relative precision (PyTorch's 0.5 + 0.5 expm1(...) loses digits there)
    _assert_same(lambda M, t, c: M.Laplace(t[0], t[1]).cdf(c([-3.0, 0.5, 2.0, 9.0])),
                 [[0.1] * 4, [1.5] * 4], rtol=1e-12, atol=1e-300)
    tail = ND.Laplace(_ng_t([0.1]), _ng_t([1.5])).cdf(_ng_t([-40.0])).numpy()
    np.testing.assert_allclose(tail, [0.5 * math.exp(-40.1 / 1.5)], rtol=1e-14)
    _assert_same(lambda M, t, c: M.Laplace(c([0.1] * 4), t[0]).icdf(t[1]),
                 [[1.5] * 4, [1e-6, 0.3, 0.7, 1 - 1e-6]])


# --- 7. KL divergences across families -----------------------------------------------------------
PARAMS = {  # two batch entries each, inside every support the pairs below need
    "Beta": [[0.7, 2.5], [1.3, 4.0]],
    "ContinuousBernoulli": [[0.3, 0.8]],
    "Exponential": [[0.5, 2.0]],
    "Gamma": [[0.8, 3.0], [1.5, 0.6]],
    "Gumbel": [[0.2, -1.0], [0.7, 1.6]],
    "Laplace": [[0.2, -1.0], [0.7, 1.6]],
    "Normal": [[0.3, -0.5], [0.8, 1.7]],
    "Pareto": [[0.5, 1.2], [2.5, 3.5]],
    "Uniform": [[0.1, 0.3], [0.6, 0.95]],
    "Poisson": [[0.7, 3.0]],
    "Bernoulli": [[0.3, 0.8]],
    "Binomial": [[5.0, 5.0], [0.3, 0.8]],
}
FINITE = [("Bernoulli", "Poisson"), ("Poisson", "Poisson"), ("Beta", "ContinuousBernoulli"),
          ("Beta", "Exponential"), ("Beta", "Gamma"), ("Beta", "Normal"),
          ("ContinuousBernoulli", "Exponential"), ("ContinuousBernoulli", "Normal"),
          ("Exponential", "Gamma"), ("Exponential", "Gumbel"), ("Exponential", "Normal"),
          ("Gamma", "Exponential"), ("Gamma", "Gumbel"), ("Gamma", "Normal"),
          ("Gumbel", "Normal"), ("Laplace", "Normal"), ("Normal", "Gumbel"),
          ("Normal", "Laplace"), ("Pareto", "Exponential"), ("Pareto", "Gamma"),
          ("Pareto", "Normal"), ("Uniform", "Beta"), ("Uniform", "ContinuousBernoulli"),
          ("Uniform", "Exponential"), ("Uniform", "Gamma"), ("Uniform", "Gumbel"),
          ("Uniform", "Normal")]
SPECIAL = {  # pairs whose q must cover p's support
    ("Beta", "Uniform"): ([[0.7, 2.5], [1.3, 4.0]], [[-0.5, 0.0], [1.5, 1.0]]),
    ("ContinuousBernoulli", "Uniform"): ([[0.3, 0.8]], [[-1.0, -0.2], [2.0, 1.5]]),
    ("Uniform", "Pareto"): ([[1.3, 2.0], [1.9, 4.0]], [[0.5, 1.2], [2.5, 3.5]]),
}


def _kl_builder(pn, qn, n_p):
    def build(M, ts, _):
        return M.kl_divergence(getattr(M, pn)(*ts[:n_p], validate_args=False),
                               getattr(M, qn)(*ts[n_p:], validate_args=False))
    return build


@pytest.mark.parametrize("pq", FINITE + sorted(SPECIAL), ids=lambda pq: "_".join(pq))
def test_kl_across_families_matches_torch(pq):
    """Values and gradients (all parameters of p and q) of each pair PyTorch registers."""
    pn, qn = pq
    pp, qp = SPECIAL.get(pq, (PARAMS[pn], PARAMS[qn]))
    _assert_same(_kl_builder(pn, qn, len(pp)), pp + qp)


INFINITE = [(p, q) for p, qs in [
    ("Beta", ["Pareto"]), ("ContinuousBernoulli", ["Pareto"]),
    ("Exponential", ["Beta", "ContinuousBernoulli", "Pareto", "Uniform"]),
    ("Gamma", ["Beta", "ContinuousBernoulli", "Pareto", "Uniform"]),
    ("Gumbel", ["Beta", "ContinuousBernoulli", "Exponential", "Gamma", "Pareto", "Uniform"]),
    ("Laplace", ["Beta", "ContinuousBernoulli", "Exponential", "Gamma", "Pareto", "Uniform"]),
    ("Normal", ["Beta", "ContinuousBernoulli", "Exponential", "Gamma", "Pareto", "Uniform"]),
    ("Pareto", ["Beta", "ContinuousBernoulli", "Uniform"]),
    ("Poisson", ["Bernoulli", "Binomial"])] for q in qs]


@pytest.mark.parametrize("pq", INFINITE, ids=lambda pq: "_".join(pq))
def test_kl_with_a_support_mismatch_is_infinite_as_torch(pq):
    pn, qn = pq
    (v1, _), (v2, _) = _value_and_grads(_kl_builder(pn, qn, len(PARAMS[pn])),
                                        PARAMS[pn] + PARAMS[qn])
    assert np.all(np.isinf(v1)) and np.all(v1 > 0)
    np.testing.assert_array_equal(v1, v2)


def test_infinite_kl_takes_the_broadcast_batch_shape():
    p = ND.Normal(_ng_t([0.0]), _ng_t([1.0]))
    q = ND.Exponential(_ng_t([[1.0, 2.0, 3.0]] * 2))
    kl = ND.kl_divergence(p, q)
    assert tuple(kl.shape) == (2, 3) and bool(ng.all(kl == math.inf))


def test_every_kl_pair_torch_registers_is_registered():
    from nodegrad.distributions.kl import _KL_REGISTRY as OURS
    from torch.distributions.kl import _KL_REGISTRY as THEIRS
    ours = {(a.__name__, b.__name__) for a, b in OURS}
    missing = [(a.__name__, b.__name__) for a, b in THEIRS
               if (a.__name__, b.__name__) not in ours]
    assert missing == []


@pytest.mark.parametrize("pq,pp,qp", [
    (("Pareto", "Exponential"), [[1.0, 1.0], [0.8, 2.5]], [[1.5, 0.7]]),
    (("Pareto", "Gamma"), [[1.0, 1.0], [1.0, 2.5]], [[1.5, 0.7], [1.2, 2.0]]),
    (("Pareto", "Normal"), [[1.0, 1.0], [2.0, 2.5]], [[0.3, 0.3], [1.2, 2.0]]),
    (("Uniform", "Beta"), [[-0.1, 0.2], [0.5, 0.7]], [[1.5, 0.7], [1.2, 2.0]]),
    (("Uniform", "Beta"), [[0.1, 0.2], [1.5, 0.7]], [[1.5, 0.7], [1.2, 2.0]]),
    (("Uniform", "Exponential"), [[-0.1, 0.2], [0.5, 0.7]], [[1.5, 0.7]]),
    (("Uniform", "Gamma"), [[-0.1, 0.05], [0.5, 0.7]], [[1.5, 0.7], [1.2, 2.0]]),
    (("Uniform", "Pareto"), [[0.4, 1.3], [2.0, 2.0]], [[0.5, 1.2], [2.5, 3.5]]),
    (("Beta", "Uniform"), [[0.7, 2.5], [1.3, 4.0]], [[0.1, -0.2], [1.5, 1.2]]),
])
def test_kl_is_infinite_where_a_moment_or_the_support_is_missing(pq, pp, qp):
    """The infinite entries as PyTorch's, and finite gradients for the others (the masked
    ones computed from stand-in parameters, so no 0 * inf)."""
    pn, qn = pq
    build = _kl_builder(pn, qn, len(pp))
    ts = [_ng_t(v, grad=True) for v in pp + qp]
    kl = build(ND, ts, _ng_t)
    tkl = build(TD, [_torch_t(v) for v in pp + qp], _torch_t)
    v, tv = kl.numpy(), tkl.numpy()
    assert np.isinf(v).any() and not np.isinf(v).all()
    np.testing.assert_array_equal(np.isinf(v), np.isinf(tv))
    np.testing.assert_allclose(v[np.isfinite(v)], tv[np.isfinite(tv)], rtol=1e-10)
    ng.where(ng.isinf(kl), 0.0, kl).sum().backward()
    for t in ts:
        assert t.grad is None or np.all(np.isfinite(t.grad.numpy()))


def test_kl_where_torch_is_not_exact_at_a_boundary():
    """A Uniform(0, 1) covers a ContinuousBernoulli's support: −H(p), where PyTorch's
    comparisons (>=, <=) give inf; the same for KL(U(0, 1) ‖ CB). A Poisson of rate 0 is a
    point mass at 0: KL to a Bernoulli is −log q(0)."""
    cb = ND.ContinuousBernoulli(probs=_ng_t([0.3, 0.8]))
    u = ND.Uniform(_ng_t([0.0, 0.0]), _ng_t([1.0, 1.0]))
    np.testing.assert_allclose(ND.kl_divergence(cb, u).numpy(), -cb.entropy().numpy(),
                               rtol=1e-12)
    # KL(U(0, 1) ‖ CB) = −∫ log q: the midpoint rule on PyTorch's log_prob
    x = (np.arange(200000) + 0.5) / 200000
    tcb = TD.ContinuousBernoulli(probs=_torch_t([0.3, 0.8]))
    quad = -tcb.log_prob(_torch_t(x[:, None])).numpy().mean(0)
    np.testing.assert_allclose(ND.kl_divergence(u, cb).numpy(), quad, rtol=1e-8)
    kl = ND.kl_divergence(ND.Poisson(_ng_t([0.0, 2.0])), ND.Bernoulli(probs=_ng_t([0.3, 0.3])))
    np.testing.assert_allclose(kl.numpy(), [-math.log(0.7), math.inf])


def test_poisson_kl_with_rate_zero():
    kl = ND.kl_divergence(ND.Poisson(_ng_t([0.0, 1.0])), ND.Poisson(_ng_t([2.0, 0.0])))
    np.testing.assert_allclose(kl.numpy(), [2.0, math.inf])


# --- schedules: shared helpers -------------------------------------------------------------------
S = ng.optim.lr_scheduler

SCHED = {
    "Exp": lambda L, o: L.ExponentialLR(o, 0.9),
    "Step": lambda L, o: L.StepLR(o, 3, 0.5),
    "Mult": lambda L, o: L.MultiplicativeLR(o, [lambda t: 0.95, lambda t: 0.9 if t % 2 else 0.99]),
    "Lambda": lambda L, o: L.LambdaLR(o, [lambda t: 1 / (t + 1), lambda t: 0.8 ** t]),
    "Linear": lambda L, o: L.LinearLR(o, 0.25, 1.0, 4),
    "Const": lambda L, o: L.ConstantLR(o, 0.5, 3),
    "Cos": lambda L, o: L.CosineAnnealingLR(o, 5, eta_min=0.01),
}
MORE = {
    "MStep": lambda L, o: L.MultiStepLR(o, [2, 4, 4], 0.5),
    "Poly": lambda L, o: L.PolynomialLR(o, 4, 2.0),
    "CAWR": lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, 2, 0.01),
    "Cos_past_T_max": lambda L, o: L.CosineAnnealingLR(o, 3),
}


def _opt(lib, params=None):
    mk = torch.zeros if lib is torch else ng.zeros
    ps = params or [mk(2, requires_grad=True), mk(3, requires_grad=True)]
    return lib.optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.1,
                         momentum=0.9)


def _lrs(lib, build, n=20):
    o = _opt(lib)
    s = build(lib.optim.lr_scheduler, o)
    out = [[g["lr"] for g in o.param_groups]]
    for _ in range(n):
        o.step()
        s.step()
        out.append([g["lr"] for g in o.param_groups])
    return np.array(out)


def _same_as_torch(build, n=20):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(_lrs(ng, build, n), _lrs(torch, build, n), rtol=1e-12,
                                   atol=1e-15)


# --- 2. SequentialLR -----------------------------------------------------------------------------
def test_sequential_then_multiplicative_keeps_multiplying():
    build = lambda L, o: L.SequentialLR(  # noqa: E731
        o, [L.ExponentialLR(o, 0.9), L.MultiplicativeLR(o, lambda t: 0.95)], milestones=[4])
    got = _lrs(ng, build, 5)[1:, 0]
    np.testing.assert_allclose(got, [0.09, 0.081, 0.0729, 0.069255, 0.06579225], rtol=1e-12)
    _same_as_torch(build)


@pytest.mark.parametrize("size", [2, 3])
def test_sequential_matches_torch_for_every_combination(size):
    """Every sequence of 2 or 3 of the seven schedules, two parameter groups."""
    milestones = [[3], [6]] if size == 2 else [[2, 6], [4, 5]]
    for combo in itertools.product(sorted(SCHED), repeat=size):
        for ms in milestones:
            _same_as_torch(lambda L, o, c=combo, m=ms: L.SequentialLR(
                o, [SCHED[k](L, o) for k in c], m))


@pytest.mark.parametrize("name", sorted(MORE))
def test_sequential_matches_torch_with_the_other_schedules(name):
    for other in ("Mult", "Exp", "Cos"):
        for pair in ((name, other), (other, name)):
            _same_as_torch(lambda L, o, p=pair: L.SequentialLR(
                o, [{**SCHED, **MORE}[k](L, o) for k in p], [5]), n=25)


def _resumed(build, n, resume_at):
    """lrs of an nodegrad run rebuilt at ``resume_at`` (optimizer from its state dict, schedule
    with last_epoch=resume_at - 1)."""
    ps = [ng.zeros(2, requires_grad=True), ng.zeros(3, requires_grad=True)]
    o = _opt(ng, ps)
    s = build(S, o, -1)
    out = []
    for k in range(n):
        if k == resume_at:
            saved = o.state_dict()
            o = _opt(ng, ps)
            o.load_state_dict(saved)
            s = build(S, o, k - 1)
        o.step()
        s.step()
        out.append([g["lr"] for g in o.param_groups])
    return out


@pytest.mark.parametrize("build", [
    lambda L, o, at: L.SequentialLR(o, [L.ExponentialLR(o, 0.9),
                                        L.MultiplicativeLR(o, lambda t: 0.95)], [4],
                                    last_epoch=at),
    lambda L, o, at: L.SequentialLR(o, [L.LinearLR(o, 0.2, 1.0, 3), L.CosineAnnealingLR(o, 4),
                                        L.MultiplicativeLR(o, lambda t: 0.9)], [3, 8],
                                    last_epoch=at),
    lambda L, o, at: L.ChainedScheduler([L.LambdaLR(o, lambda t: 1 / (t + 1), last_epoch=at),
                                         L.StepLR(o, 3, 0.1, last_epoch=at)]),
    lambda L, o, at: L.ChainedScheduler([L.CosineAnnealingLR(o, 4, 0.01, last_epoch=at),
                                         L.ExponentialLR(o, 0.9, last_epoch=at)]),
])
def test_resumed_sequences_and_chains_continue_the_run(build):
    """Resumed with last_epoch=k, the rates are the uninterrupted run's, bit for bit, which is
    PyTorch's uninterrupted run."""
    straight = _resumed(build, 16, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(straight, _lrs(torch, lambda L, o: build(L, o, -1), 16)[1:],
                                   rtol=1e-12)
    for at in (1, 4, 5, 9, 12):
        assert _resumed(build, 16, at) == straight


# --- 3. ChainedScheduler -------------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda L, o: L.ChainedScheduler([L.LambdaLR(o, lambda t: 1 / (t + 1)), L.StepLR(o, 3, 0.1)]),
    lambda L, o: L.ChainedScheduler([L.CosineAnnealingLR(o, 4, eta_min=0.01),
                                     L.ExponentialLR(o, 0.9)]),
    lambda L, o: L.ChainedScheduler([L.CosineAnnealingLR(o, 3), L.StepLR(o, 2, 0.5)]),
    lambda L, o: L.ChainedScheduler([L.ConstantLR(o, 0.1, 4), L.ExponentialLR(o, 0.9)], o),
], ids=["lambda_step", "cosine_eta_min", "cosine_past_T_max", "constant_exponential"])
def test_chained_matches_torch(build):
    _same_as_torch(build, n=25)


@pytest.mark.parametrize("size", [2, 3])
def test_chained_matches_torch_for_every_combination(size):
    names = sorted({**SCHED, **MORE})
    combos = itertools.product(names, repeat=size) if size == 2 else itertools.permutations(
        sorted(SCHED), 3)
    for combo in combos:
        _same_as_torch(lambda L, o, c=combo: L.ChainedScheduler(
            [{**SCHED, **MORE}[k](L, o) for k in c]))


# --- 4. get_lr(): PyTorch's extension point ------------------------------------------------------
def _custom(L):
    class Warm(L.LRScheduler):
        def get_lr(self):
            return [b * min(1, (self.last_epoch + 1) / 4) for b in self.base_lrs]

    class HalveEven(L.LRScheduler):  # chainable: acts on the current lrs
        def get_lr(self):
            cur = [g["lr"] for g in self.optimizer.param_groups]
            if self._is_initial or self.last_epoch % 2:
                return cur
            return [lr * 0.5 for lr in cur]

    return Warm, HalveEven


@pytest.mark.parametrize("build", [
    lambda L, o: _custom(L)[0](o),
    lambda L, o: _custom(L)[1](o),
    lambda L, o: L.SequentialLR(o, [_custom(L)[0](o), _custom(L)[1](o), L.ExponentialLR(o, 0.9)],
                                [5, 9]),
    lambda L, o: L.SequentialLR(o, [L.ExponentialLR(o, 0.9), _custom(L)[1](o)], [4]),
    lambda L, o: L.ChainedScheduler([L.StepLR(o, 2, 0.5), _custom(L)[1](o), _custom(L)[0](o)]),
], ids=["warm", "halve", "sequential", "sequential_chainable", "chained"])
def test_a_schedule_defining_get_lr_steps_as_torch(build):
    _same_as_torch(build, n=14)
    got = _lrs(ng, lambda L, o: _custom(L)[0](o), 4)[:, 0]
    np.testing.assert_allclose(got, [0.025, 0.05, 0.075, 0.1, 0.1])


def test_a_schedule_defining_neither_says_so():
    class Bare(S.LRScheduler):
        pass

    with pytest.raises(NotImplementedError, match=r"Bare.get_lr: .*get_lr\(\).*lr_at\(t\)"):
        Bare(_opt(ng))


@pytest.mark.parametrize("name", sorted({**SCHED, **MORE}))
def test_builtin_get_lr_is_torchs(name):
    """Called between steps (with PyTorch's warning), get_lr() gives what PyTorch's gives: its
    chainable form from the current lrs, or its closed form."""
    make = {**SCHED, **MORE}[name]
    got = []
    for lib in (ng, torch):
        o = _opt(lib)
        s = make(lib.optim.lr_scheduler, o)
        seen = []
        for _ in range(7):
            o.step()
            s.step()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                seen.append(s.get_lr())
            assert any("get_last_lr()" in str(x.message) for x in w)
        got.append(seen)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-12)


# --- 5. LinearLR(total_iters=0) ------------------------------------------------------------------
def test_linear_lr_with_zero_total_iters_stays_at_start_factor():
    build = lambda L, o: L.LinearLR(o, 0.5, total_iters=0)  # noqa: E731
    np.testing.assert_allclose(_lrs(ng, build, 4)[:, 0], [0.05] * 5)
    _same_as_torch(build, n=6)
    _same_as_torch(lambda L, o: L.ChainedScheduler([L.LinearLR(o, 0.5, total_iters=0),
                                                    L.ExponentialLR(o, 0.9)]), n=6)


@pytest.mark.parametrize("build", [
    lambda L, o: L.ConstantLR(o, 0.5, total_iters=0),
    lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, 0.5, 0), L.ExponentialLR(o, 0.9)], [3]),
    lambda L, o: L.SequentialLR(o, [L.ExponentialLR(o, 0.9), L.ConstantLR(o, 0.5, 0)], [3]),
    lambda L, o: L.ChainedScheduler([L.ConstantLR(o, 0.5, 0), L.ExponentialLR(o, 0.9)]),
], ids=["alone", "first", "second", "chained"])
def test_constant_lr_with_zero_total_iters_as_torch(build):
    _same_as_torch(build, n=6)


# --- 6. the deprecated step(epoch) ---------------------------------------------------------------
EPOCHS = [None, 6, None, None, 2, None, 9, 0, None]


@pytest.mark.parametrize("name", sorted(SCHED) + ["MStep", "Poly", "Cyclic", "OneCycle"])
def test_step_with_an_epoch_warns_and_jumps_as_torch(name):
    make = {**SCHED, **MORE,
            "Cyclic": lambda L, o: L.CyclicLR(o, 0.01, 0.1, 3),
            "OneCycle": lambda L, o: L.OneCycleLR(o, 0.5, 40)}[name]
    rows = []
    for lib in (ng, torch):
        o = _opt(lib)
        s = make(lib.optim.lr_scheduler, o)
        seen = []
        for e in EPOCHS:
            o.step()
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                s.step() if e is None else s.step(e)
            deprecations = [x for x in w if x.category is UserWarning
                            and "epoch parameter in `scheduler.step()`" in str(x.message)]
            assert len(deprecations) == (e is not None)
            seen.append([g["lr"] for g in o.param_groups] + [g["momentum"] for g in
                                                             o.param_groups] + [s.last_epoch])
        rows.append(seen)
    np.testing.assert_allclose(rows[0], rows[1], rtol=1e-12)


def test_step_lr_with_an_epoch_uses_the_closed_form():
    o = _opt(ng)
    s = S.StepLR(o, 3)
    with pytest.warns(UserWarning, match="The epoch parameter in `scheduler.step\\(\\)` was not "
                                         "necessary"):
        s.step(6)
    assert s.last_epoch == 6 and s.get_last_lr() == pytest.approx([0.1 * 0.01, 0.05 * 0.01])


def test_plateau_and_warmup_take_an_epoch():
    for lib in (ng, torch):
        o = _opt(lib)
        s = lib.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0)
        with pytest.warns(UserWarning, match="epoch parameter"):
            s.step(1.0)
            s.step(1.0, 7)
        assert s.last_epoch == 7
    o = _opt(ng)
    w = S.LinearWarmup(S.StepLR(o, 3, 0.5), 4, 0.5)
    with pytest.warns(UserWarning, match="epoch parameter"):
        w.step(6)
    assert w.last_epoch == 6 and w.inner.last_epoch == 6
    assert w.get_last_lr() == pytest.approx([0.1 * 0.25, 0.05 * 0.25])


def test_a_nested_chain_restarts_as_built_at_a_milestone():
    o = _opt(ng)
    chain = S.ChainedScheduler([S.StepLR(o, 2, 0.5), S.ExponentialLR(o, 0.9)])
    s = S.SequentialLR(o, [S.LinearLR(o, 0.5, 1.0, 2), chain], [3])
    got = []
    for _ in range(6):
        o.step()
        s.step()
        got.append(o.param_groups[0]["lr"])
    np.testing.assert_allclose(got, [0.075, 0.1, 0.1, 0.09, 0.0405, 0.03645], rtol=1e-12)
    with pytest.raises(NotImplementedError, match="SequentialLR.get_lr: a composite"):
        s.get_lr()
