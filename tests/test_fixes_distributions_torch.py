"""Regression tests for nodegrad.distributions: the exponential-family KL of Wishart
distributions (a scalar natural parameter beside a matrix one) at every batch shape, the
validation of Multinomial's total_count, and the submodules PyTorch's package holds as
attributes. References are PyTorch (float64), the closed-form Wishart KL and Monte Carlo."""

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import special

import nodegrad as ng
import nodegrad.distributions as D

torch = pytest.importorskip("torch")
TD = torch.distributions
_ROOT = Path(__file__).resolve().parents[1]

_S = [[2.0, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 1.5]]


def _spd(rng, batch, p=3):
    a = rng.standard_normal(batch + (p, p))
    return a @ np.swapaxes(a, -1, -2) + p * np.eye(p)


def _wishart_kl_closed_form(n0, v0, n1, v1):
    """KL(W(n0, V0) ‖ W(n1, V1)) for numpy batches: -n1/2 log|V1⁻¹V0| + n0/2 (tr(V1⁻¹V0) - p)
    + log Γp(n1/2) - log Γp(n0/2) + (n0 - n1)/2 ψp(n0/2)."""
    p = v0.shape[-1]
    m = np.linalg.solve(v1, v0)
    logdet = np.linalg.slogdet(m)[1]
    trace = np.trace(m, axis1=-2, axis2=-1)
    mvdigamma = sum(special.digamma(n0 / 2 - i / 2) for i in range(p))
    return (-n1 / 2 * logdet + n0 / 2 * (trace - p) + special.multigammaln(n1 / 2, p)
            - special.multigammaln(n0 / 2, p) + (n0 - n1) / 2 * mvdigamma)


def _wisharts(df0, s0, df1, s1):
    ngp = D.Wishart(ng.tensor(df0), covariance_matrix=ng.tensor(s0))
    ngq = D.Wishart(ng.tensor(df1), covariance_matrix=ng.tensor(s1))
    tp = TD.Wishart(torch.tensor(df0), covariance_matrix=torch.tensor(s0))
    tq = TD.Wishart(torch.tensor(df1), covariance_matrix=torch.tensor(s1))
    return ngp, ngq, tp, tq


# --- Wishart KL: each natural parameter's term summed over its own event dims --------------
def test_wishart_kl_matches_torch_at_batch_shape_scalar():
    # the df term is a scalar: summing it over the matrix event dims failed on a 0-d tensor
    s = np.array(_S)
    ngp, ngq, tp, tq = _wisharts(np.float64(4.5), s, np.float64(5.0), np.eye(3))
    got = D.kl_divergence(ngp, ngq).numpy()
    assert got.shape == ()
    np.testing.assert_allclose(got, TD.kl_divergence(tp, tq).detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(got, _wishart_kl_closed_form(4.5, s, 5.0, np.eye(3)),
                               rtol=1e-10)


def test_wishart_kl_matches_torch_at_batch_shape_3():
    # PyTorch's batched value is right only where p and q share df: it sums the df term over
    # two trailing dims, which for batch (3,) sums it across the batch; so each element is
    # compared with PyTorch's KL of that element alone, and the batch with equal dfs whole
    rng = np.random.default_rng(0)
    df0, df1 = np.array([3.5, 4.0, 7.25]), np.array([5.0, 3.0, 6.0])
    s0, s1 = _spd(rng, (3,)), _spd(rng, (3,))
    ngp, ngq, _, _ = _wisharts(df0, s0, df1, s1)
    got = D.kl_divergence(ngp, ngq).numpy()
    assert got.shape == (3,)
    for i in range(3):
        _, _, tp, tq = _wisharts(df0[i], s0[i], df1[i], s1[i])
        np.testing.assert_allclose(got[i], TD.kl_divergence(tp, tq).detach().numpy(),
                                   rtol=1e-9)
    np.testing.assert_allclose(got, _wishart_kl_closed_form(df0, s0, df1, s1), rtol=1e-9)
    ngp, ngq, tp, tq = _wisharts(df0, s0, df0, s1)
    np.testing.assert_allclose(D.kl_divergence(ngp, ngq).numpy(),
                               TD.kl_divergence(tp, tq).detach().numpy(), rtol=1e-9)


def test_wishart_kl_at_batch_shape_2_3_against_the_closed_form():
    # PyTorch is no reference here: it sums the df term over the last two dims as if they were
    # event dims, i.e. across the (2, 3) batch, and returns negative values
    rng = np.random.default_rng(1)
    df0 = rng.uniform(3.0, 8.0, (2, 3))
    df1 = rng.uniform(3.0, 8.0, (2, 3))
    s0, s1 = _spd(rng, (2, 3)), _spd(rng, (2, 3))
    p = D.Wishart(ng.tensor(df0), covariance_matrix=ng.tensor(s0))
    q = D.Wishart(ng.tensor(df1), covariance_matrix=ng.tensor(s1))
    got = D.kl_divergence(p, q).numpy()
    assert got.shape == (2, 3)
    assert (got >= 0).all()
    np.testing.assert_allclose(got, _wishart_kl_closed_form(df0, s0, df1, s1), rtol=1e-9)
    # each element alone is the KL of the unbatched pair
    for i in range(2):
        for j in range(3):
            one = D.kl_divergence(
                D.Wishart(ng.tensor(df0[i, j]), covariance_matrix=ng.tensor(s0[i, j])),
                D.Wishart(ng.tensor(df1[i, j]), covariance_matrix=ng.tensor(s1[i, j])))
            np.testing.assert_allclose(got[i, j], one.numpy(), rtol=1e-10)


def test_wishart_kl_at_batch_shape_2_3_against_monte_carlo():
    rng = np.random.default_rng(2)
    df0 = rng.uniform(4.0, 8.0, (2, 3))
    df1 = rng.uniform(4.0, 8.0, (2, 3))
    s0, s1 = _spd(rng, (2, 3)), _spd(rng, (2, 3))
    p = D.Wishart(ng.tensor(df0), covariance_matrix=ng.tensor(s0))
    q = D.Wishart(ng.tensor(df1), covariance_matrix=ng.tensor(s1))
    ng.manual_seed(0)
    x = p.sample((20000,))
    diff = (p.log_prob(x) - q.log_prob(x)).numpy()
    mc, se = diff.mean(0), diff.std(0) / np.sqrt(diff.shape[0])
    got = D.kl_divergence(p, q).numpy()
    assert (np.abs(got - mc) < 5 * se + 1e-3).all(), (got, mc, se)


def test_wishart_kl_broadcasts_batch_shapes():
    # p unbatched against a batch of q: each element is the KL against that q
    rng = np.random.default_rng(3)
    s0, s1 = _spd(rng, ()), _spd(rng, (3,))
    df1 = np.array([4.0, 5.5, 9.0])
    p = D.Wishart(ng.tensor(6.0, dtype=ng.float64), covariance_matrix=ng.tensor(s0))
    q = D.Wishart(ng.tensor(df1), covariance_matrix=ng.tensor(s1))
    got = D.kl_divergence(p, q).numpy()
    np.testing.assert_allclose(got, _wishart_kl_closed_form(6.0, s0, df1, s1), rtol=1e-9)


def test_wishart_kl_gradient_matches_the_closed_form():
    # PyTorch's Bregman form detaches p's natural parameters, so its gradient in p is no
    # reference: the closed form differentiated by torch.autograd is
    s = np.array(_S)
    df = ng.tensor(4.5, dtype=ng.float64, requires_grad=True)
    c = ng.tensor(s, requires_grad=True)
    D.kl_divergence(D.Wishart(df, covariance_matrix=c),
                    D.Wishart(ng.tensor(5.0, dtype=ng.float64), ng.eye(3, dtype=ng.float64))
                    ).backward()
    tdf = torch.tensor(4.5, dtype=torch.float64, requires_grad=True)
    tc = torch.tensor(s, requires_grad=True)
    n1, p = 5.0, 3
    m = tc  # V1 = I
    mvdigamma = sum(torch.digamma(tdf / 2 - i / 2) for i in range(p))
    kl = (-n1 / 2 * torch.logdet(m) + tdf / 2 * (torch.trace(m) - p)
          + torch.mvlgamma(torch.tensor(n1 / 2, dtype=torch.float64), p)
          - torch.mvlgamma(tdf / 2, p) + (tdf - n1) / 2 * mvdigamma)
    kl.backward()
    np.testing.assert_allclose(df.grad.numpy(), tdf.grad.numpy(), rtol=1e-8)
    # a symmetric matrix's gradient: compare the symmetric parts
    g, tg = c.grad.numpy(), tc.grad.numpy()
    np.testing.assert_allclose(g + g.T, tg + tg.T, rtol=1e-8, atol=1e-12)


# --- Multinomial: total_count >= 0, checked as PyTorch's inner Binomial checks it ----------
@pytest.fixture
def _defaults_restored():
    ng_default = D.Distribution._validate_default
    torch_default = TD.Distribution._validate_args
    TD.Distribution.set_default_validate_args(True)
    yield
    D.Distribution.set_default_validate_args(ng_default)
    TD.Distribution.set_default_validate_args(torch_default)


def _raises(make) -> bool:
    try:
        make()
    except ValueError:
        return True
    return False


@pytest.mark.usefixtures("_defaults_restored")
@pytest.mark.parametrize("default", [True, False])
@pytest.mark.parametrize("validate_args", [True, None, False])
@pytest.mark.parametrize("total_count", [-1, -5, 0, 3])
def test_multinomial_negative_total_count_refused_as_torch(default, validate_args,
                                                           total_count):
    # PyTorch's Multinomial builds its Binomial with the default setting, so validate_args
    # does not decide: a negative count raises whenever validation is on by default
    D.Distribution.set_default_validate_args(default)
    TD.Distribution.set_default_validate_args(default)
    probs = [0.2, 0.3, 0.5]
    torch_raises = _raises(lambda: TD.Multinomial(total_count, torch.tensor(probs),
                                                  validate_args=validate_args))
    ng_raises = _raises(lambda: D.Multinomial(total_count, ng.tensor(probs),
                                              validate_args=validate_args))
    assert ng_raises == torch_raises
    assert ng_raises == (default and total_count < 0)


@pytest.mark.usefixtures("_defaults_restored")
def test_multinomial_negative_total_count_message():
    with pytest.raises(ValueError, match="total_count"):
        D.Multinomial(-1, ng.tensor([0.5, 0.5]), validate_args=True)
    with pytest.raises(ValueError, match="total_count"):
        D.Multinomial(-1, logits=ng.tensor([0.0, 1.0]))


@pytest.mark.usefixtures("_defaults_restored")
def test_multinomial_valid_total_count_unchanged():
    m = D.Multinomial(4, ng.tensor([[0.25, 0.75], [0.5, 0.5]]), validate_args=False)
    np.testing.assert_allclose(m.mean.numpy(), [[1.0, 3.0], [2.0, 2.0]])
    np.testing.assert_allclose(m.expand((3, 2)).mean.numpy()[2], [[1.0, 3.0], [2.0, 2.0]])


# --- submodules as attributes of the package ----------------------------------------------
def _torch_submodules():
    return sorted(k for k, v in vars(TD).items() if isinstance(v, types.ModuleType))


def test_torch_submodule_names_are_attributes_after_a_plain_import():
    # in a fresh interpreter: here other tests may already have imported a submodule
    names = _torch_submodules()
    assert "log_normal" in names and "one_hot_categorical" in names
    code = ("import types, nodegrad as ng\n"
            f"names = {names!r}\n"
            "missing = [n for n in names if not isinstance(getattr(ng.distributions, n, None),"
            " types.ModuleType)]\n"
            "assert not missing, missing\n"
            "assert ng.distributions.log_normal.LogNormal is ng.distributions.LogNormal\n"
            "assert (ng.distributions.one_hot_categorical.OneHotCategorical\n"
            "        is ng.distributions.OneHotCategorical)\n"
            "assert ng.distributions.kl.kl_divergence is ng.distributions.kl_divergence\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", ["log_normal", "one_hot_categorical", "kl", "transforms",
                                  "constraints", "normal", "utils", "wishart"])
def test_submodule_imports_first_without_a_cycle(name):
    # importing the submodule before anything else of nodegrad must work
    code = f"import nodegrad.distributions.{name} as m; import nodegrad as ng; " \
           f"assert ng.distributions.{name} is m"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
