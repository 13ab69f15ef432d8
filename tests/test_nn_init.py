"""Initialisers: sample statistics against their formulas; fans for conv kernels."""

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import init


def _w(*shape):
    return ng.empty(*shape)


@pytest.mark.parametrize("fn,var", [
    (lambda w: init.xavier_uniform_(w), lambda fi, fo: 2.0 / (fi + fo)),
    (lambda w: init.xavier_normal_(w), lambda fi, fo: 2.0 / (fi + fo)),
    (lambda w: init.lecun_normal_(w), lambda fi, fo: 1.0 / fi),
    (lambda w: init.kaiming_normal_(w, nonlinearity="relu"), lambda fi, fo: 2.0 / fi),
    (lambda w: init.kaiming_uniform_(w, nonlinearity="relu"), lambda fi, fo: 2.0 / fi),
    (lambda w: init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
     lambda fi, fo: 2.0 / fo),
    (lambda w: init.normal_(w, 0.0, 0.01), lambda fi, fo: 1e-4),
    (lambda w: init.uniform_(w, -1, 1), lambda fi, fo: 1.0 / 3),
])
@pytest.mark.parametrize("shape", [(300, 400), (64, 32, 5), (32, 16, 3, 3)])
def test_variance_matches_formula(fn, var, shape):
    ng.manual_seed(0)
    w = fn(_w(*shape))
    fi, fo = init.fan_in_and_fan_out(w)
    assert fi == shape[1] * math.prod(shape[2:]) and fo == shape[0] * math.prod(shape[2:])
    assert w.numpy().var() == pytest.approx(var(fi, fo), rel=0.05)
    assert abs(w.numpy().mean()) < 0.05 * math.sqrt(var(fi, fo)) + 1e-3


def test_constant_orthogonal_and_gain():
    assert init.constant_(_w(3, 3), 0.5).numpy().tolist() == [[0.5] * 3] * 3
    assert init.zeros_(_w(2)).numpy().sum() == 0 and init.ones_(_w(2)).numpy().sum() == 2
    q = init.orthogonal_(_w(6, 4)).numpy()
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        init.calculate_gain("swishy")
    with pytest.raises(ValueError, match="at least 2 dims"):
        init.xavier_normal_(_w(3))


def test_layer_defaults_and_init_choice():
    ng.manual_seed(0)
    lin = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    assert lin.weight.numpy().max() <= bound and lin.weight.numpy().min() >= -bound
    assert lin.weight.numpy().var() == pytest.approx(bound ** 2 / 3, rel=0.05)
    he = nn.Linear(400, 300, init="he")
    assert he.weight.numpy().var() == pytest.approx(2 / 400, rel=0.05)
    assert he.bias.numpy().sum() == 0
    conv = nn.Conv2d(16, 8, 3, init="xavier")
    assert conv.weight.numpy().var() == pytest.approx(2 / (16 * 9 + 8 * 9), rel=0.15)
    custom = nn.Linear(3, 2, init=lambda w: init.constant_(w, 0.1))
    assert custom.weight.numpy().tolist() == [[pytest.approx(0.1)] * 3] * 2
    with pytest.raises(ValueError, match="unknown scheme"):
        nn.Linear(3, 2, init="magic")


def test_seeded_init_reproduces():
    ng.manual_seed(5)
    a = nn.Linear(10, 10).weight.numpy().copy()
    ng.manual_seed(5)
    np.testing.assert_array_equal(a, nn.Linear(10, 10).weight.numpy())


def test_trunc_normal_eye_and_dirac_as_pytorch():
    """trunc_normal_ samples N(mean, std²) cut to [a, b] (its mean and spread as the truncated
    law's, within sampling error); eye_ and dirac_ (with groups) equal PyTorch's."""
    from scipy.stats import truncnorm

    torch = pytest.importorskip("torch")
    w = ng.empty(300, 400, dtype=ng.float64)
    ng.nn.init.trunc_normal_(w, mean=0.1, std=0.5, a=-0.5, b=1.0,
                             generator=ng.random.Generator(seed=0))
    x = w.numpy()
    law = truncnorm((-0.5 - 0.1) / 0.5, (1.0 - 0.1) / 0.5, loc=0.1, scale=0.5)
    assert -0.5 <= x.min() and x.max() <= 1.0
    assert abs(x.mean() - law.mean()) < 4 * law.std() / np.sqrt(x.size)
    assert abs(x.std() - law.std()) < 0.01
    with pytest.raises(ValueError, match="trunc_normal_: expected a < b"):
        ng.nn.init.trunc_normal_(w, a=1.0, b=0.0)
    e = ng.empty(3, 5)
    np.testing.assert_array_equal(ng.nn.init.eye_(e).numpy(),
                                  torch.nn.init.eye_(torch.empty(3, 5)).numpy())
    for shape, groups in (((4, 2, 3, 3), 2), ((6, 3, 5), 1), ((2, 4, 3, 3, 3), 1)):
        d = ng.nn.init.dirac_(ng.empty(*shape), groups)
        np.testing.assert_array_equal(
            d.numpy(), torch.nn.init.dirac_(torch.empty(*shape), groups).numpy())
    ml = ng.nn.ModuleList([ng.nn.ReLU(), ng.nn.Tanh()])
    ml.insert(1, ng.nn.Sigmoid())
    ml.insert(0, ng.nn.ELU())
    assert [type(m).__name__ for m in ml] == ["ELU", "ReLU", "Sigmoid", "Tanh"]
    assert list(dict(ml.named_children())) == ["0", "1", "2", "3"]
