"""Pruning under jit and every optimiser, gradient flow under jit, L-BFGS and frozen parameters,
the diagnostics' warnings, region counts, figures and layer statistics, the ``diagnose``
command's step count and exit statuses, and the errors of transfer, curvature and regions."""

import json
import warnings as _warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, prune
from nodegrad import train as T
from nodegrad.cli import main
from nodegrad.diagnostics import DeepMLP, layer_stats, regions, warnings
from nodegrad.diagnostics import plots as P
from nodegrad.diagnostics.callback import GradientFlowMonitor
from nodegrad.diagnostics.curvature import model_hessian_eigenvalues
from nodegrad.nn import functional as F

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 8)).astype(np.float32)
Y = RNG.integers(0, 3, 120)


def _mlp(seed: int = 0) -> nn.Sequential:
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _loader(seed: int) -> ng.data.DataLoader:
    return ng.data.DataLoader(ng.data.ArrayDataset(X, Y), batch_size=30, shuffle=True, seed=seed)


def _weights(model) -> dict:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _pruned_max(model) -> float:
    """The largest |w| at a pruned position of any masked parameter (in storage)."""
    out = 0.0
    for _, m, n in prune.masked_parameters(model):
        w, mask = m._parameters[n].numpy(), m._buffers[n + "_mask"].numpy()
        out = max(out, float(np.abs(w[mask == 0]).max(initial=0.0)))
    return out


# --- 1. a pruned network under jit computes with the masked weights ------------------------------
def test_jit_equals_eager_bit_for_bit_with_adam_pruned_mid_run():
    runs = {}
    for jit in (False, True):
        model = _mlp()
        opt = ng.optim.Adam(model.parameters(), lr=1e-2)
        T.fit(model, F.cross_entropy, opt, _loader(0), epochs=1, progress=False, jit=jit)
        prune.global_magnitude(prune.prunable_weights(model), amount=0.7)  # stale moments
        h = T.fit(model, F.cross_entropy, opt, _loader(1), epochs=2, progress=False, jit=jit)
        runs[jit] = ([r["loss"] for r in h.steps], _weights(model))
    assert runs[False][0] == runs[True][0]
    for k, v in runs[False][1].items():
        np.testing.assert_array_equal(runs[True][1][k], v, err_msg=k)


def test_jit_equals_eager_bit_for_bit_with_muon():
    runs = {}
    for jit in (False, True):
        model = _mlp()
        prune.global_magnitude(prune.prunable_weights(model), amount=0.6)
        opt = ng.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.05)
        h = T.fit(model, F.cross_entropy, opt, _loader(0), epochs=2, progress=False, jit=jit)
        runs[jit] = [r["loss"] for r in h.steps]
    assert runs[False] == runs[True]


def test_a_jitted_forward_re_masks_weights_written_between_calls():
    model = _mlp()
    dense = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    prune.global_magnitude(prune.prunable_weights(model), amount=0.8)
    x, y = ng.tensor(X[:30]), ng.tensor(Y[:30])
    loss = ng.jit(lambda x, y: F.cross_entropy(model(x), y))
    masked = loss(x, y).item()
    loss(x, y)  # a replay
    for k, p in model.named_parameters():
        p.data[...] = dense[k]  # unmasked weights, as load_state_dict of dense ones writes
    assert loss(x, y).item() == masked == F.cross_entropy(model(x), y).item()


def test_a_jitted_forward_stops_masking_after_remove():
    model = _mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    step = ng.jit(lambda x: model(x).sum(), state=model)
    x = ng.tensor(X[:10])
    with ng.no_grad():
        step(x)
        step(x)
        prune.remove(model[0], "weight")
        model[0].weight.data[...] = 0.5  # no mask any more: these weights count
        assert step(x).item() == model(x).sum().item()


# --- 2. pruned weights are zero in storage after every step and in every saved state dict -------
def test_muon_keeps_pruned_weights_zero_after_every_step_and_in_checkpoints(tmp_path):
    model = _mlp()
    prune.global_magnitude(prune.prunable_weights(model), amount=0.6)
    opt = ng.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.05)
    x, y = ng.tensor(X[:30]), ng.tensor(Y[:30])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert _pruned_max(model) == 0.0  # straight after the step, before any forward
    ng.save(model.state_dict(), tmp_path / "muon.safetensors")
    state = ng.load(tmp_path / "muon.safetensors")
    for name in ("0.weight", "2.weight", "4.weight"):
        w, mask = state[name].numpy(), state[name + "_mask"].numpy()
        assert np.all(w[mask == 0] == 0) and np.any(w[mask == 1] != 0)


def test_saved_weights_are_zero_where_pruned_with_stale_adam_moments(tmp_path):
    model = _mlp()
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    T.fit(model, F.cross_entropy, opt, _loader(0), epochs=1, progress=False)
    prune.global_magnitude(prune.prunable_weights(model), amount=0.7)
    T.fit(model, F.cross_entropy, opt, _loader(1), epochs=1, progress=False,
          run_dir=tmp_path / "run")
    state = model.state_dict()
    for name in ("0.weight", "2.weight", "4.weight"):
        assert np.all(state[name].numpy()[state[name + "_mask"].numpy() == 0] == 0), name
    ckpt = ng.load(tmp_path / "run" / "checkpoint.safetensors")
    w, mask = ckpt["model/0.weight"].numpy(), ckpt["model/0.weight_mask"].numpy()
    assert np.all(w[mask == 0] == 0)


def test_lbfgs_keeps_pruned_weights_zero_with_a_history_from_before_pruning():
    model = _mlp()
    x, y = ng.tensor(X[:60]), ng.tensor(Y[:60])
    opt = ng.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    prune.global_magnitude(prune.prunable_weights(model), amount=0.5)
    opt.step(closure)
    assert _pruned_max(model) == 0.0


# --- 3. GradientFlowMonitor records the same under jit ----------------------------------------
def test_gradient_flow_monitor_records_the_same_with_jit():
    recs = {}
    for jit in (False, True):
        model = _mlp()
        monitor = GradientFlowMonitor(every=2, plots=False)
        h = T.fit(model, F.cross_entropy, ng.optim.Adam(model.parameters(), lr=1e-2),
                  _loader(0), epochs=2, callbacks=[monitor], progress=False, jit=jit)
        recs[jit] = (monitor.record, [r["loss"] for r in h.steps])
    assert recs[True] == recs[False]
    rec = recs[True][0]
    assert rec["steps"] == [1, 3, 5, 7]
    for name in ("1", "3"):
        assert None not in rec["layers"][name]["act_std"]
        assert None not in rec["layers"][name]["dead_frac"]


def test_gradient_flow_monitor_sees_a_compiled_model():
    """Its forward hooks store activations (they return nothing), so a compiled model runs
    them on every call (eagerly) and the monitor records what it records without compiling."""
    recs = []
    for compile_it in (False, True):
        model = _mlp()
        monitor = GradientFlowMonitor(every=1, plots=False)
        with _warnings.catch_warnings():
            _warnings.simplefilter("error", RuntimeWarning)
            T.fit(ng.compile(model) if compile_it else model, F.cross_entropy,
                  ng.optim.SGD(model.parameters(), lr=0.01), _loader(0), epochs=1,
                  callbacks=[monitor], progress=False)
        recs.append(monitor.record)
    # (the compiled model's names carry the _orig_mod. prefix)
    assert json.dumps(recs[0]) == json.dumps(recs[1]).replace("_orig_mod.", "")
    assert recs[1]["layers"] and all(None not in v["act_std"] for v in recs[1]["layers"].values())


# --- 4. L-BFGS leaves frozen parameters alone ------------------------------------------------
def test_lbfgs_does_not_move_a_parameter_frozen_after_some_steps():
    for search in (None, "strong_wolfe"):
        model = _mlp()
        x, y = ng.tensor(X[:60]), ng.tensor(Y[:60])
        opt = ng.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, line_search_fn=search)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        opt.step(closure)
        T.freeze(model, "0")
        frozen = [p.numpy().copy() for p in model[0].parameters()]
        head = model[4].weight.numpy().copy()
        opt.step(closure)
        for p, before in zip(model[0].parameters(), frozen):
            np.testing.assert_array_equal(p.numpy(), before)
        assert not np.array_equal(model[4].weight.numpy(), head)  # the others still train


# --- 5. the collapse warning compares like with like -----------------------------------------
def test_no_collapse_warning_for_a_large_first_pre_activation():
    x = ng.tensor(RNG.normal(size=(256, 40)).astype(np.float32))
    y = ng.tensor(RNG.integers(0, 10, 256))
    ng.manual_seed(0)
    net = DeepMLP(40, depth=3, width=32, activation="tanh", init="xavier")
    with ng.no_grad():
        net.fc1.weight.data[...] *= 30  # tanh1 saturates: its outputs keep a std near 1
    msgs = warnings(layer_stats(net, x, y))
    assert not any(m.startswith("activations collapse") for m in msgs), msgs
    assert any("tanh1: Tanh): " in m and "saturated" in m for m in msgs), msgs
    ng.manual_seed(0)
    small = warnings(layer_stats(DeepMLP(40, 6, 32, 10, "tanh", init="small_normal"), x, y))
    assert any(m.startswith("activations collapse") and "(tanh1: Tanh)" in m
               and "(tanh6: Tanh)" in m for m in small), small


# --- 6. no zero-width regions where a pre-activation is exactly 0 --------------------------
def _tent_net(depth: int) -> nn.Sequential:
    """The example's ``tent_net``: 2^depth pieces on [0, 1]."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "linear_regions.py"
    spec = importlib.util.spec_from_file_location("linear_regions_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tent_net(depth)


def test_count_regions_line_counts_no_zero_width_regions():
    for depth in (1, 2, 3, 4):
        net = _tent_net(depth)
        for n in (1025, 20001):  # samples on the kinks, where pre-activations are exactly 0
            assert regions.count_regions_line(net, [0.0], [1.0], n=n) == 2 ** depth, (depth, n)


def test_region_map_counts_no_zero_width_regions():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with ng.no_grad():  # relu(x) and relu(-x): one kink along x = 0, two regions
        net[0].weight.data[...] = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
        net[0].bias.data[...] = 0.0
    assert regions.count_regions_2d(net, n=51) == 2  # the grid's column x = 0 is on the kink
    assert regions.count_regions_2d(net, n=50) == 2


# --- 7. diagnose counts the steps taken when a NaN stops training -------------------------------
def test_diagnose_reports_the_steps_taken_when_the_loss_turns_inf(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", "--model", "deep_mlp", "--depth", "2", "--width", "16",
                 "--activation", "relu", "--dataset", "regression1d", "--batch-size", "64",
                 "--steps", "30", "--every", "5", "--lr", "1000", "--bins", "0",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "report.json").read_text())["training"]
    assert res["stopped"].startswith("step 3 ") and res["recorded_steps"] == [1]
    assert res["steps"] == 2 and "after 2 steps" in text


# --- 8. the activation grid numbers the layers it draws ---------------------------------------
def test_activation_grid_labels_the_layers_it_picks(tmp_path, monkeypatch):
    ng.manual_seed(0)
    x = ng.tensor(RNG.normal(size=(32, 8)).astype(np.float32))
    rep = layer_stats(DeepMLP(8, 20, 8, 3, "tanh"), x, bins=10)
    titles: list = []

    def keep(fig, path):
        titles.extend(ax.get_title() for ax in fig.axes)
        P._plt().close(fig)

    monkeypatch.setattr(P, "_save", keep)
    P.plot_activation_grid({"default": rep}, tmp_path / "a.png")
    numbered = [t for t in titles if t.startswith("layer ")]
    assert len(numbered) == 12
    for t in numbered:
        k, name = t.split("\n")
        assert name == "tanh" + k.split()[1], t  # "layer 20" is tanh20
    assert numbered[0].endswith("tanh1") and numbered[-1].endswith("tanh20")


# --- 9. dead ReLUs behind an in-place relu_ ---------------------------------------------------
class _InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 2)
        with ng.no_grad():
            self.fc.bias.data[:4] = -100.0  # half the units never fire

    def forward(self, x):
        h = self.fc(x)
        F.relu_(h)
        return self.out(h)


def test_layer_stats_finds_dead_relus_behind_an_in_place_relu():
    ng.manual_seed(0)
    rep = layer_stats(_InPlace(), ng.randn(16, 4), ng.randint(0, 2, (16,)))
    assert rep["fc"].nonlinearity == "relu" and rep["fc"].applied == "next"
    assert rep["fc"].dead_frac == 0.5


# --- 10. diagnose: exit status 2 for bad input ------------------------------------------------
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_diagnose_out_under_a_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    assert main(["diagnose", "--depth", "2", "--width", "8", "--out", str(out)]) == 2
    assert "is a file, not a directory" in _one_line(capsys)


def test_diagnose_device_without_its_backend_is_bad_input(tmp_path, capsys):
    try:
        ng._backend.get_backend("cuda")
    except Exception:  # no CuPy (the case under test), or no device
        pass
    else:
        pytest.skip("CUDA is available here")
    assert main(["diagnose", "--depth", "2", "--width", "8", "--device", "cuda",
                 "--out", str(tmp_path / "d")]) == 2
    assert _one_line(capsys).startswith("nodegrad: error: --device: ")


# --- 11. clear errors ----------------------------------------------------------------------
def test_freeze_with_a_number_names_what_it_expected():
    with pytest.raises(TypeError, match=r"freeze: prefixes must be a name prefix \(str\), an "
                                        r"iterable of them or None, got int \(3\)"):
        T.freeze(_mlp(), 3)


def test_hessian_eigenvalues_without_targets_says_so():
    with pytest.raises(TypeError, match="model_hessian_eigenvalues: y is None, and "
                                        "cross_entropy"):
        model_hessian_eigenvalues(_mlp(), F.cross_entropy, ng.tensor(X[:10]), None, k=1)
    with pytest.raises(TypeError, match="model_hessian_eigenvalues: x is None"):
        model_hessian_eigenvalues(_mlp(), F.cross_entropy, None, ng.tensor(Y[:10]), k=1)
    # a loss that ignores its target may still be given None
    vals = model_hessian_eigenvalues(nn.Linear(3, 2), lambda o, _: (o ** 2).sum(),
                                     ng.ones(4, 3), None, k=1)
    assert len(vals) == 1 and vals[0] > 0


def test_region_map_of_many_inputs_asks_for_the_slice():
    net = nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="region_map: the default slice .* pass u and v"):
        regions.region_map(net, n=10)
    u, v = np.eye(40)[0], np.eye(40)[1]
    assert regions.region_map(net, n=10, u=u, v=v).count >= 1
    with pytest.raises(ValueError, match="origin, u and v must be 1-D points of one size"):
        regions.region_map(net, n=10, u=u, v=v[:3])


def test_strict_load_failure_does_not_say_loaded():
    ng.manual_seed(0)
    src = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    dst = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ng.ShapeError) as e:
        T.load_pretrained(dst, src)
    first = str(e.value).splitlines()[0]
    assert first == ("load_pretrained from Sequential: nothing loaded; 2 would load, 0 skipped, "
                     "0 missing, 0 unexpected, 2 shape-mismatched")
    rep = T.load_pretrained(dst, src, strict=False)
    assert str(rep).splitlines()[0].startswith("load_pretrained from Sequential: 2 loaded, ")
