"""Initialisation checks: symmetric units (constant init stays symmetric under training) and
the variance of signals across depth for He, Xavier and N(0, 0.01²) initialisations."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics.init_checks import (format_symmetric_units, format_variance_table,
                                              layer_variances, symmetric_units,
                                              variance_across_depth, variance_verdict)
from nodegrad.nn import functional as F


def _constant_mlp(c=0.05):
    model = ng.models.create("mnist1d_mlp", seed=0)
    for p in model.parameters():
        nn.init.constant_(p, c)
    return model


def test_random_init_has_no_symmetric_units():
    assert symmetric_units(ng.models.create("mnist1d_mlp", seed=0)) == []
    assert symmetric_units(ng.models.create("mnist1d_cnn", seed=0)) == []
    assert "no symmetric units" in format_symmetric_units([])


def test_constant_init_is_found_and_stays_symmetric_under_training():
    model = _constant_mlp()
    found = {f["param"]: f for f in symmetric_units(model)}
    assert set(found) == {"linear1.weight", "linear2.weight", "linear3.weight"}
    assert found["linear1.weight"]["groups"] == [list(range(100))]
    assert found["linear1.weight"]["bias"] == "linear1.bias"
    assert found["linear1.weight"]["outgoing"] == "linear2.weight"
    assert found["linear1.weight"]["stuck"] and found["linear2.weight"]["stuck"]
    assert found["linear3.weight"]["outgoing"] is None and not found["linear3.weight"]["stuck"]

    data = ng.data.datasets.mnist1d()
    x, y = ng.tensor(data.x_train[:500]), ng.tensor(data.y_train[:500])
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05                       # it did learn something
    w1 = model.linear1.weight.numpy()
    assert np.abs(w1 - 0.05).max() > 1e-3                      # the weights moved ...
    assert np.abs(w1 - w1[0]).max() <= 1e-6                    # ... all rows together
    after = {f["param"]: f for f in symmetric_units(model, atol=1e-6)}
    assert after["linear1.weight"]["stuck_groups"] == [list(range(100))]
    assert after["linear2.weight"]["stuck_groups"] == [list(range(100))]
    assert "linear3.weight" not in after                       # the output rows separated
    text = format_symmetric_units(list(after.values()))
    assert "linear1.weight: 100 units, 1 distinct (groups of 100); stuck" in text


def test_exact_match_treats_signed_zeros_as_equal():
    layer = nn.Linear(2, 3)
    layer.weight.data[...] = np.array([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0]])
    layer.bias.data[...] = 0.0
    for atol in (0.0, 1e-300):  # the exact (bytes) path and the tolerance path agree
        (found,) = symmetric_units(layer, atol=atol)
        assert found["groups"] == [[0, 1]]


def test_two_equal_units_are_separable_until_their_outgoing_weights_match_too():
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    with ng.no_grad():
        model[0].weight.data[4] = model[0].weight.data[1]
        model[0].bias.data[4] = model[0].bias.data[1]
    (f,) = symmetric_units(model)
    assert f["param"] == "0.weight" and f["groups"] == [[1, 4]]
    assert f["outgoing"] == "2.weight" and not f["stuck"]
    with ng.no_grad():
        model[2].weight.data[:, 4] = model[2].weight.data[:, 1]
    (f,) = symmetric_units(model)
    assert f["stuck_groups"] == [[1, 4]] and f["stuck"]
    with ng.no_grad():
        model[0].bias.data[4] += 1e-6                          # a bias apart, within atol
    assert symmetric_units(model) == []
    assert symmetric_units(model, atol=1e-5)[0]["groups"] == [[1, 4]]


def test_conv_filters_and_flattened_outgoing_weights():
    model = ng.models.create("mnist1d_cnn", seed=0)
    for p in model.parameters():
        nn.init.constant_(p, 0.1)
    found = {f["param"]: f for f in symmetric_units(model)}
    assert found["conv1.weight"]["groups"] == [list(range(25))]
    assert found["conv1.weight"]["outgoing"] == "conv2.weight"
    assert found["conv3.weight"]["outgoing"] == "linear.weight"     # through the flatten
    assert found["conv3.weight"]["stuck"]
    with ng.no_grad():                                          # unit 7's outgoing columns
        model.linear.weight.data[:, 7 * 5:8 * 5] = 0.3
    f3 = {f["param"]: f for f in symmetric_units(model)}["conv3.weight"]
    assert f3["stuck_groups"] == [[i for i in range(25) if i != 7]]


@pytest.mark.parametrize("init, act, z2_over_z1", [
    ("he", "relu", 1.0),             # n·(2/n)·½
    ("xavier", "relu", 0.5),         # n·(1/n)·½: halves per layer
    ("small_normal", "relu", 128 * 1e-4 / 2),
    ("lecun", "linear", 1.0),
])
def test_variance_per_layer_follows_fan_in_times_sigma_squared(init, act, z2_over_z1):
    rows = variance_across_depth(init, act, depth=6, width=128, n_samples=500, seed=0)
    assert [r["layer"] for r in rows] == list(range(1, 7))
    z1 = rows[0]["preact_var"]
    assert z1 == pytest.approx({"he": 2.0, "xavier": 1.0, "small_normal": 0.0128,
                                "lecun": 1.0}[init], rel=0.15)   # input variance is 1
    ratios = [b["preact_var"] / a["preact_var"] for a, b in zip(rows, rows[1:])]
    assert np.median(ratios) == pytest.approx(z2_over_z1, rel=0.2)


def test_he_preserves_relu_and_small_normal_collapses():
    he = variance_across_depth("he", "relu", depth=10, width=128, n_samples=500)
    assert 0.4 < he[-1]["act_ratio"] < 2.5 and 0.4 < he[0]["grad_ratio"] < 2.5
    assert variance_verdict(he[-1]["act_ratio"]) == "preserved"
    small = variance_across_depth("small_normal", "relu", depth=10, width=128, n_samples=500)
    assert small[-1]["act_ratio"] < 1e-15 and small[0]["grad_ratio"] < 1e-15
    assert variance_verdict(small[-1]["act_ratio"]) == "vanishes"
    xt = variance_across_depth("xavier", "tanh", depth=10, width=128, n_samples=500)
    assert 1e-2 < xt[-1]["act_ratio"] < 1                   # a slow, not exponential, decay
    table = format_variance_table(small)
    assert "vanishes" in table.splitlines()[-1] and len(table.splitlines()) == 12
    assert variance_verdict(10.0) == "explodes"


def test_layer_variances_on_a_model_and_batch():
    data = ng.data.datasets.digits()
    model = ng.models.create("digits_mlp", seed=0)
    x = ng.tensor(data.x_train[:256])
    rows = layer_variances(model, x, seed=1)
    assert [r["name"] for r in rows] == ["linear1", "dropout", "linear2"]
    h = model.linear1(x.reshape(256, 64)).numpy()
    assert rows[0]["forward_var"] == pytest.approx(float(h.var()), rel=1e-5)
    assert rows[-1]["backward_var"] == pytest.approx(1.0, rel=0.2)   # N(0, 1) cotangent
    assert rows[0]["weight_grad_var"] > 0 and rows[1]["weight_grad_var"] is None
    assert all(p.grad is None for p in model.parameters())


def test_bad_input():
    with pytest.raises(TypeError, match="symmetric_units: expected an nn.Module"):
        symmetric_units("model")
    with pytest.raises(ValueError, match="atol"):
        symmetric_units(nn.Linear(2, 2), atol=-1)
    with pytest.raises(ValueError, match="variance_across_depth: unknown init 'glorious'"):
        variance_across_depth("glorious", "relu")
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        variance_across_depth("he", "swish2")
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got 0"):
        variance_across_depth("he", "relu", depth=0)
