"""Per-layer statistics (nodegrad.diagnostics.stats), the gradient-flow callback and the plots,
checked against values computed by hand on small nets whose weights are set by hand."""

import copy
import json
import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics import plots as P
from nodegrad.diagnostics.callback import GradientFlowMonitor
from nodegrad.diagnostics.deep_mlp import DeepMLP, init_comparison
from nodegrad.diagnostics.stats import LayerReport, Summary, layer_stats, warnings
from nodegrad.nn import functional as F
from nodegrad.random import default_generator


def _set(p, values):
    p.data[...] = np.asarray(values, dtype=p.data.dtype)


X = np.array([[1, 2], [3, -1], [-2, 1], [0.5, 0.5]], dtype=np.float32)
Y = np.array([[0], [1], [0], [1]], dtype=np.float32)
W1 = np.array([[1, 0], [0, 1], [-1, -1]], dtype=np.float32)
B1 = np.array([0, 0, -10], dtype=np.float32)  # unit 3 is negative for every sample: dead
W2 = np.array([[1, -1, 2]], dtype=np.float32)
B2 = np.array([0.5], dtype=np.float32)


def hand_net():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    _set(model[0].weight, W1), _set(model[0].bias, B1)
    _set(model[2].weight, W2), _set(model[2].bias, B2)
    return model


def test_statistics_match_a_hand_computation():
    rep = layer_stats(hand_net(), ng.tensor(X), ng.tensor(Y), F.mse_loss, bins=7)
    # forward, by hand
    z = X @ W1.T + B1
    h = np.maximum(z, 0)
    out = h @ W2.T + B2
    r = out - Y
    assert rep.loss == pytest.approx(np.mean(r ** 2)) and rep.loss == pytest.approx(1.75)
    # backward, by hand: L = mean(r²) over 4 samples -> dL/dout = 2r/4
    g_out = 2 * r / 4
    g_h = g_out @ W2
    g_z = g_h * (z > 0)
    g_w2 = g_out.T @ h
    assert rep.names == ["0", "1", "2"]
    lin, relu, last = rep["0"], rep["1"], rep["2"]
    assert (lin.type, relu.type, lin.shape) == ("Linear", "ReLU", (4, 3))
    for rec, act, grad in ((lin, z, g_z), (relu, h, g_h), (last, out, g_out)):
        assert rec.activation.mean == pytest.approx(act.mean(), abs=1e-6)
        assert rec.activation.std == pytest.approx(act.std(), abs=1e-6)
        assert rec.activation.min == act.min() and rec.activation.max == act.max()
        assert rec.grad.mean == pytest.approx(grad.mean(), abs=1e-7)
        assert rec.grad.rms == pytest.approx(np.sqrt(np.mean(grad ** 2)), rel=1e-6)
        assert sum(rec.activation.hist) == act.size and len(rec.activation.edges) == 8
    np.testing.assert_allclose(relu.activation.hist, np.histogram(h, bins=7)[0])
    assert relu.activation.zero_frac == pytest.approx(np.mean(h == 0))
    # dead ReLUs: unit 3 only (units 1 and 2 are positive for some sample)
    assert relu.nonlinearity == "relu" and relu.applied == "module"
    assert relu.dead_frac == pytest.approx(1 / 3) and relu.saturated_frac is None
    assert lin.nonlinearity is None and lin.dead_frac is None  # the ReLU module counts them
    w = last.params[0]
    assert w.name == "2.weight" and w.grad.norm == pytest.approx(np.linalg.norm(g_w2), rel=1e-6)
    assert last.params[1].grad.mean == pytest.approx(g_out.sum(), abs=1e-6)
    assert last.param_norm == pytest.approx(math.sqrt((W2 ** 2).sum() + 0.25))


def test_functional_activations_are_found_in_the_graph():
    class Net(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.fc, self.out, self.act = nn.Linear(1, 3), nn.Linear(3, 1), act

        def forward(self, x):
            return self.out(getattr(self.fc(x), self.act)())

    x = ng.tensor([[1.0], [2.0], [3.0]])
    net = Net("relu")
    _set(net.fc.weight, [[1], [-1], [0]]), _set(net.fc.bias, [0, 0, -1])
    rec = layer_stats(net, x)["fc"]  # z = [x, -x, -1]: units 2 and 3 never positive
    assert (rec.nonlinearity, rec.applied) == ("relu", "next")
    assert rec.dead_frac == pytest.approx(2 / 3)
    assert layer_stats(net, x)["out"].nonlinearity is None
    assert "Linear→relu" in layer_stats(net, x).table()
    # tanh applied to the pre-activation: saturated where |z| > atanh(0.99) = 2.647
    net = Net("tanh")
    _set(net.fc.weight, [[1], [2], [-1]]), _set(net.fc.bias, [0, 0, 0])
    rec = layer_stats(net, x)["fc"]  # z = [1,2,3], [2,4,6], [-1,-2,-3]: 3, 4, 6, -3 saturate
    assert (rec.nonlinearity, rec.applied) == ("tanh", "next")
    assert rec.saturated_frac == pytest.approx(4 / 9) and rec.dead_frac is None


@pytest.mark.parametrize("act, xs, frac", [
    (nn.Tanh, [-4, -1, 0, 2.5, 3, 10], 0.5),        # |tanh| > 0.99 <=> |x| > 2.647
    (nn.Sigmoid, [-5, -4, 0, 4.5, 4.7, 10], 0.5),   # s < 0.01 or > 0.99 <=> |x| > 4.595
    (nn.ReLU, [-5, -4, 0, 4.5, 4.7, 10], None),
])
def test_saturation_thresholds(act, xs, frac):
    model = nn.Sequential(nn.Linear(1, 1), act())
    _set(model[0].weight, [[1]]), _set(model[0].bias, [0])
    rec = layer_stats(model, ng.tensor(np.array(xs, np.float32)[:, None]))["1"]
    assert rec.saturated_frac == (None if frac is None else pytest.approx(frac))


def test_dead_units_of_a_convolution_are_channel_positions():
    model = nn.Sequential(nn.Conv1d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6, 1))
    _set(model[0].weight, [[[1]], [[-1]]]), _set(model[0].bias, [0, 0])
    x = ng.tensor(np.array([[[1, -1, 2]], [[1, -2, -3]]], np.float32))
    rep = layer_stats(model, x)
    assert rep.names == ["0", "1", "3"]  # Flatten moves values only: not a layer
    # channel 0 = x, channel 1 = -x; never positive: (0, pos 1) and (1, pos 0) -> 2 of 6
    assert rep["1"].shape == (2, 2, 3) and rep["1"].dead_frac == pytest.approx(2 / 6)


def test_hooks_modes_buffers_grads_and_random_state_are_restored():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 3))
    model.eval()
    model[3].train()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    mean0 = model[1].running_mean.numpy().copy()
    model[0].weight.grad = ng.ones(8, 4)
    state = default_generator("cpu").get_state()
    x, y = ng.randn(16, 4), ng.randint(0, 3, (16,))
    state = default_generator("cpu").get_state()
    rep = layer_stats(model, x, y)  # cross-entropy for integer labels; train mode inside
    assert rep.training and rep.loss > 0
    assert default_generator("cpu").get_state() == state
    assert [m.training for m in model.modules()] == modes
    np.testing.assert_array_equal(model[1].running_mean.numpy(), mean0)
    assert all(not m._forward_hooks for m in model.modules())
    np.testing.assert_array_equal(model[0].weight.grad.numpy(), np.ones((8, 4)))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    assert rep.names == ["0", "1", "2", "4"]
    # without labels only forward statistics
    rep = layer_stats(model, x)
    assert rep.loss is None and all(r.grad is None for r in rep)
    assert all(p.grad is None for r in rep for p in r.params)


def test_report_indexing_table_and_json_round_trip():
    rep = layer_stats(hand_net(), ng.tensor(X), ng.tensor(Y), F.mse_loss)
    assert isinstance(rep, LayerReport) and len(rep) == 3 and rep[1] is rep["1"]
    assert [r.index for r in rep] == [1, 2, 3] and len(rep[1:]) == 2
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        rep["nope"]
    table = rep.table()
    assert "ReLU" in table and "33%" in table and "loss 1.75" in table
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    back = LayerReport.from_dict(d)
    assert back["1"].dead_frac == rep["1"].dead_frac
    assert back["2"].params[0].grad.norm == rep["2"].params[0].grad.norm
    s = Summary.of(np.array([1.0, np.nan, 3.0, np.inf]), bins=2)
    assert (s.n, s.nonfinite, s.mean) == (2, 2, 2.0)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="layer_stats: expected an nn.Module, got function"):
        layer_stats(lambda x: x, ng.ones(2, 2))
    with pytest.raises(ValueError, match="bins must be an integer >= 0, got -1"):
        layer_stats(hand_net(), X, bins=-1)
    with pytest.raises(ValueError, match="the loss must be a scalar tensor"):
        layer_stats(hand_net(), X, Y, loss_fn=lambda o, t: o - t)
    with pytest.raises(TypeError, match="warnings: expected a LayerReport"):
        warnings([])
    with pytest.raises(ValueError, match="DeepMLP: unknown activation 'elu'"):
        DeepMLP(activation="elu")


def test_warnings_name_the_layer_and_the_problem():
    msgs = warnings(layer_stats(hand_net(), ng.tensor(X), ng.tensor(Y), F.mse_loss))
    assert any(m.startswith("layer 2 (1: ReLU): 33% dead ReLUs") for m in msgs), msgs
    x = ng.tensor(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    y = ng.randint(0, 10, (64,))

    def deep(act, init, depth=6):
        ng.manual_seed(0)
        return warnings(layer_stats(DeepMLP(8, depth, 32, 10, act, init=init), x, y))

    small = deep("tanh", "small_normal")
    assert any(m.startswith("gradient norm shrinks 10^") and "vanishing" in m for m in small)
    assert any(m.startswith("activations collapse") and "tanh1" in m for m in small)
    assert deep("relu", "he", 4) == []
    big = deep("relu", lambda w: ng.nn.init.normal_(w, 0.0, 1.0), 5)
    assert any(m.startswith("exploding activations") for m in big), big
    sat = deep("tanh", lambda w: ng.nn.init.normal_(w, 0.0, 1.0), 3)
    assert any("tanh2: Tanh): " in m and "saturated (|tanh| > 0.99)" in m for m in sat), sat


def test_init_comparison_reproduces_the_notes_claims():
    x = ng.tensor(np.random.default_rng(0).normal(size=(128, 20)).astype(np.float32))
    relu = init_comparison(x, activation="relu", depth=6, width=128, bins=10)
    tanh = init_comparison(x, activation="tanh", depth=6, width=128, bins=10)

    def ratio(rep):  # std of the last hidden activation over the first's
        acts = [r for r in rep if r.applied == "module"]
        assert [r.name for r in acts][-1] == acts[0].name[:-1] + "6"
        return acts[-1].activation.std / acts[0].activation.std

    assert ratio(relu["small_normal"]) < 1e-3 and ratio(tanh["small_normal"]) < 1e-3
    assert 0.6 < ratio(relu["he"]) < 1.6       # He keeps a ReLU net's scale
    assert 0.05 < ratio(relu["xavier"]) < 0.4  # 1/n halves the variance per ReLU layer
    assert ratio(tanh["xavier"]) > 0.4


def _loader(x, y, batch, shuffle=False):
    return ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=batch, shuffle=shuffle,
                              seed=0)


def test_callback_records_at_the_right_steps():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)).astype(np.float32), rng.normal(size=(10, 2)).astype(
        np.float32)
    ng.manual_seed(0)
    model = nn.Linear(3, 2)
    cb = GradientFlowMonitor(every=3, plots=False)
    ng.train.fit(model, F.mse_loss, ng.optim.SGD(model.parameters(), lr=0.01), _loader(x, y, 1),
                 epochs=1, callbacks=[cb], metrics=[], progress=False)
    rec = cb.record
    assert rec["steps"] == [1, 4, 7, 10] and len(rec["loss"]) == 4
    assert list(rec["layers"]) == ["Linear"] and list(rec["params"]) == ["weight", "bias"]
    assert all(len(v) == 4 for v in rec["params"]["weight"].values() if isinstance(v, list))
    assert not model._forward_hooks  # taken off at the end of training


def test_update_ratio_equals_the_sgd_step_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
    ng.manual_seed(0)
    model = nn.Linear(3, 2)
    w, b = model.weight.numpy().astype(np.float64), model.bias.numpy().astype(np.float64)
    lr = 0.1
    cb = GradientFlowMonitor(every=1, plots=False)
    ng.train.fit(model, F.mse_loss, ng.optim.SGD(model.parameters(), lr=lr), _loader(x, y, 8),
                 epochs=2, callbacks=[cb], metrics=[], progress=False)
    rec = cb.record
    assert rec["steps"] == [1, 2]
    for k in range(2):
        r = x @ w.T + b - y                # L = mean(r²) over 8 x 2 entries
        gw, gb = 2 * r.T @ x / r.size, 2 * r.sum(0) / r.size
        p = rec["params"]
        assert p["weight"]["update_ratio"][k] == pytest.approx(
            lr * np.linalg.norm(gw) / np.linalg.norm(w), rel=1e-5)
        assert p["bias"]["update_ratio"][k] == pytest.approx(
            lr * np.linalg.norm(gb) / np.linalg.norm(b), rel=1e-5)
        assert p["weight"]["grad_norm"][k] == pytest.approx(np.linalg.norm(gw), rel=1e-5)
        assert rec["layers"]["Linear"]["grad_norm"][k] == pytest.approx(
            math.hypot(np.linalg.norm(gw), np.linalg.norm(gb)), rel=1e-5)
        assert rec["loss"][k] == pytest.approx(np.mean(r ** 2), rel=1e-5)
        w, b = w - lr * gw, b - lr * gb
    np.testing.assert_allclose(model.weight.numpy(), w, rtol=1e-5)


def _relu_net():
    ng.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def test_callback_matches_layer_stats_and_ignores_validation():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    model = _relu_net()
    init = copy.deepcopy(model)
    cb = GradientFlowMonitor(every=1, plots=False)
    ng.train.fit(model, F.cross_entropy, ng.optim.SGD(model.parameters(), lr=0.5),
                 _loader(x, y, 20), _loader(x, y, 40), epochs=2, callbacks=[cb], progress=False)
    rec = cb.record
    assert rec["steps"] == [1, 2, 3, 4]  # the validation passes add nothing
    first = layer_stats(init, ng.tensor(x[:20]), ng.tensor(y[:20]))
    for name in ("0", "1", "2", "3", "4"):
        assert rec["layers"][name]["act_std"][0] == pytest.approx(
            first[name].activation.std, rel=1e-5)
    for name in ("1", "3"):
        assert rec["layers"][name]["nonlinearity"] == "relu"
        assert rec["layers"][name]["dead_frac"][0] == pytest.approx(first[name].dead_frac)
    assert rec["layers"]["2"]["grad_norm"][0] == pytest.approx(first["2"].param_grad_norm,
                                                               rel=1e-5)
    assert rec["layers"]["1"]["grad_norm"] == [None] * 4  # a ReLU has no parameters


def test_callback_resumes_and_writes_its_files(tmp_path):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 5)).astype(np.float32), rng.integers(0, 3, 60)

    def run(run_dir, epochs, resume=False, plots=False):
        model = _relu_net()
        cb = GradientFlowMonitor(every=2, plots=plots)
        ng.train.fit(model, F.cross_entropy, ng.optim.Adam(model.parameters(), lr=0.01),
                     _loader(x, y, 20, shuffle=True), epochs=epochs, callbacks=[cb],
                     run_dir=run_dir, resume=resume, progress=False)
        return cb.record

    whole = run(tmp_path / "a", 4, plots=True)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    assert whole["steps"] == [1, 3, 5, 7, 9, 11] and resumed == whole
    saved = json.loads((tmp_path / "b" / "gradient_flow.json").read_text())
    assert saved == json.loads(json.dumps(whole))
    for f in ("grad_norms.png", "dead_relus.png", "update_ratios.png"):
        assert (tmp_path / "a" / f).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        GradientFlowMonitor(every=0)


def test_plots_write_pngs(tmp_path):
    x = ng.tensor(np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32))
    reps = init_comparison(x, activation="relu", schemes=("small_normal", "he"), depth=3,
                           width=16, bins=10)
    paths = [P.plot_activation_grid(reps, tmp_path / "grid.png", title="t"),
             P.plot_layer_profile(reps["he"], tmp_path / "profile.png")]
    record = {"every": 1, "steps": [1, 2], "loss": [1.0, 0.5],
              "layers": {"fc1": {"type": "Linear", "nonlinearity": "tanh",
                                 "grad_norm": [1.0, 0.5], "act_std": [1.0, 1.0],
                                 "dead_frac": [None, None], "saturated_frac": [0.1, 0.2]}},
              "params": {"fc1.weight": {"layer": "fc1", "grad_norm": [1.0, 0.5],
                                        "norm": [2.0, 2.0], "update_ratio": [1e-3, None]}}}
    paths += P.plot_training(record, tmp_path, prefix="t_")
    assert [p.name for p in paths[2:]] == ["t_grad_norms.png", "t_saturation.png",
                                           "t_update_ratios.png"]
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="plot_activation_grid: no reports"):
        P.plot_activation_grid({}, tmp_path / "x.png")


def test_init_comparison_takes_arrays_and_plots_need_histograms(tmp_path):
    x = np.random.default_rng(0).standard_normal((16, 40)).astype(np.float32)
    reports = init_comparison(x.tolist(), schemes=["he", "xavier"], depth=2, width=8)
    assert list(reports) == ["he", "xavier"] and len(reports["he"]) == 5
    with pytest.raises(ValueError, match="x must be a non-empty batch"):
        init_comparison(np.zeros((0, 40)), schemes=["he"])
    bare = init_comparison(x, schemes=["he"], depth=2, width=8, bins=0)
    with pytest.raises(ValueError, match="no histograms"):
        P.plot_activation_grid(bare, tmp_path / "grid.png")
