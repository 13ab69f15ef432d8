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
