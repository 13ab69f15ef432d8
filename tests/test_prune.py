"""nodegrad.prune: masks survive optimisers, checkpoints and resume; magnitude pruning picks the
hand-known weights; rewinding is bit-exact; IMP keeps the expected fractions of weights."""

import copy

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, prune, train
from nodegrad.nn import functional as F


def _mlp(seed=0, sizes=(6, 10, 3)):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]))


def _batch(seed=0, n=32, d=6, k=3):
    r = np.random.default_rng(seed)
    return ng.tensor(r.standard_normal((n, d)).astype(np.float32)), ng.tensor(r.integers(0, k, n))


def _bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


OPTIMISERS = {
    "sgd_momentum_wd": lambda ps: ng.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05),
    "sgd_nesterov_wd": lambda ps: ng.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                               weight_decay=0.05),
    "adam_l2": lambda ps: ng.optim.Adam(ps, lr=0.02, weight_decay=0.05),
    "adamw": lambda ps: ng.optim.AdamW(ps, lr=0.02, weight_decay=0.1),
}


@pytest.mark.parametrize("set_to_none", [True, False], ids=["grad_none", "grad_flat_buffer"])
@pytest.mark.parametrize("opt_name", list(OPTIMISERS))
def test_masked_weights_stay_exactly_zero_through_optimiser_steps(opt_name, set_to_none):
    model = _mlp()
    opt = OPTIMISERS[opt_name](model.parameters())  # built before pruning: flat views in place
    prune.l1_unstructured(model[0], "weight", 0.6)
    prune.l1_unstructured(model[2], "weight", 0.3)
    m0, m2 = model[0].weight_mask.numpy() == 1, model[2].weight_mask.numpy() == 1
    assert (~m0).sum() == 36 and (~m2).sum() == 9  # round(0.6 * 60), round(0.3 * 30)
    w0 = model[0].weight.numpy().copy()
    x, y = _batch()
    for _ in range(60):
        opt.zero_grad(set_to_none=set_to_none)
        F.cross_entropy(model(x), y).backward()
        assert np.all(model[0].weight.grad.numpy()[~m0] == 0)
        opt.step()
    w = model[0].weight.numpy()
    assert np.all(w[~m0] == 0) and np.all(model[2].weight.numpy()[~m2] == 0)
    assert np.all(w[m0] != w0[m0])  # every kept weight still trains
    for p, st in opt.state.items():  # optimiser state never left zero where pruned
        if p is model[0].weight:
            for v in st.values():
                if hasattr(v, "shape") and tuple(v.shape) == m0.shape:  # (not the 0-d step)
                    assert np.all(np.asarray(v)[~m0] == 0)
    # the flat buffer the optimiser updates is the parameter's memory
    assert np.shares_memory(model[0].weight.data, opt._buckets[0][0].flat)


def test_pruning_mid_run_stays_exact_and_optimizer_state_can_be_cleared():
    model = _mlp(1)
    opt = ng.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _batch(1)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    prune.l1_unstructured(model[0], "weight", 0.5)
    keep = model[0].weight_mask.numpy() == 1
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()  # stale momentum would move them; the step post-hook re-masks
    assert np.all(model[0].weight.numpy()[~keep] == 0)
    with ng.no_grad():
        out = model(x).numpy()  # the forward re-applies the mask too
    assert np.all(model[0].weight.numpy()[~keep] == 0)
    w, b = model[0].weight.numpy(), model[0].bias.numpy()
    h = np.maximum(x.numpy() @ (w * keep).T + b, 0)
    ref = h @ model[2].weight.numpy().T + model[2].bias.numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert prune.mask_optimizer_state(opt, model) == 1
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert np.all(model[0].weight.numpy()[~keep] == 0)


def test_masks_in_state_dict_survive_save_and_load(tmp_path):
    model = _mlp(2)
    prune.global_magnitude(prune.prunable_weights(model), 0.5)
    sd = model.state_dict()
    assert {"0.weight_mask", "2.weight_mask"} <= set(sd)
    path = tmp_path / "pruned.safetensors"
    ng.save(sd, path)
    loaded = ng.load(path)
    fresh = _mlp(99)
    with pytest.raises(ng.ShapeError, match="unexpected: 0.weight_mask"):
        fresh.load_state_dict(loaded)
    assert prune.restore_masks(fresh, loaded) == ["0.weight", "2.weight"]
    fresh.load_state_dict(loaded)
    for k, v in model.state_dict().items():
        assert np.array_equal(fresh.state_dict()[k].numpy(), v.numpy()), k
    keep = fresh[0].weight_mask.numpy() == 1
    assert 0 < keep.sum() < keep.size
    opt = ng.optim.Adam(fresh.parameters(), lr=0.05)
    x, y = _batch(2)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(fresh(x), y).backward()
        opt.step()
    assert np.all(fresh[0].weight.numpy()[~keep] == 0)


def _fit(model, run_dir, epochs, resume=False):
    d = ng.data.datasets.blobs(n=96, classes=3, dim=6, seed=0, n_test=32)
    tl = ng.data.DataLoader(d.train, batch_size=16, shuffle=True, seed=0)
    opt = ng.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    return train.fit(model, F.cross_entropy, opt, tl, epochs=epochs, run_dir=run_dir,
                     resume=resume, progress=False)


def test_train_fit_checkpoint_resume_keeps_masks_bit_identical(tmp_path):
    full = _mlp(3)
    prune.global_magnitude(prune.prunable_weights(full), 0.7)
    masks = prune.get_masks(full)
    half = copy.deepcopy(full)
    _fit(full, tmp_path / "full", epochs=3)
    _fit(half, tmp_path / "half", epochs=1)
    resumed = _mlp(42)  # other initial weights: everything must come from the checkpoint
    for m, n in prune.prunable_weights(resumed):
        prune.identity(m, n)  # the structure only: masks and weights come from the checkpoint
    _fit(resumed, tmp_path / "half", epochs=3, resume=True)
    for k, v in full.state_dict().items():
        assert np.array_equal(resumed.state_dict()[k].numpy(), v.numpy()), k
    for name, keep in masks.items():
        assert np.array_equal(prune.get_masks(resumed)[name], keep)
        w = dict(resumed.named_parameters())[name].numpy()
        assert np.all(w[~keep] == 0) and np.all(w[keep] != 0)


def test_l1_unstructured_prunes_the_hand_known_elements():
    layer = nn.Linear(3, 2)
    with ng.no_grad():
        layer.weight.copy_(ng.tensor([[0.5, -0.1, 2.0], [-0.3, 0.1, -4.0]]))
    prune.l1_unstructured(layer, "weight", 0.5)  # round(0.5 * 6) = 3: |0.1| (first), 0.1, 0.3
    expect = np.array([[1, 0, 1], [0, 0, 1]], bool)
    assert np.array_equal(layer.weight_mask.numpy() == 1, expect)
    np.testing.assert_array_equal(layer.weight.numpy(), [[0.5, 0, 2.0], [0, 0, -4.0]])
    prune.l1_unstructured(layer, "weight", 1)  # an int is a count, of the 3 still alive: 0.5
    np.testing.assert_array_equal(layer.weight.numpy(), [[0, 0, 2.0], [0, 0, -4.0]])
    prune.l1_unstructured(layer, "weight", 0.0)
    assert int(layer.weight_mask.numpy().sum()) == 2
    ties = nn.Linear(4, 1)
    with ng.no_grad():
        ties.weight.copy_(ng.tensor([[1.0, -1.0, 1.0, 3.0]]))
    prune.l1_unstructured(ties, "weight", 2)  # equal magnitudes: the earlier ones go first
    np.testing.assert_array_equal(ties.weight_mask.numpy(), [[0, 0, 1, 1]])
    prune.l1_unstructured(ties, "weight", 1.0)
    assert not ties.weight.numpy().any()
    assert prune.sparsity(ties)["weight"]["sparsity"] == 1.0


def test_global_magnitude_ranks_weights_across_layers():
    def two():
        model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
        with ng.no_grad():
            model[0].weight.copy_(ng.tensor([[0.01, 0.02], [0.03, 0.04], [0.05, 5.0]]))
            model[1].weight.copy_(ng.tensor([[1.0, -2.0, 3.0], [-4.0, 0.06, 6.0]]))
        return model

    g = two()
    assert prune.global_magnitude(prune.prunable_weights(g), 0.5) == 6
    np.testing.assert_array_equal(g[0].weight_mask.numpy(), [[0, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(g[1].weight_mask.numpy(), [[1, 1, 1], [1, 0, 1]])
    rep = prune.sparsity(g)
    assert rep["0.weight"]["pruned"] == 5 and rep["1.weight"]["pruned"] == 1
    assert rep.masked_sparsity == 0.5 and rep.pruned == 6 and rep.total == 6 + 3 + 6 + 2
    assert "0.bias" in str(rep) and "(no mask)" in str(rep)
    layer_wise = two()
    for m, n in prune.prunable_weights(layer_wise):
        prune.l1_unstructured(m, n, 0.5)
    assert int(layer_wise[0].weight_mask.numpy().sum()) == 3  # each layer loses half
    assert int(layer_wise[1].weight_mask.numpy().sum()) == 3


def test_bad_arguments_get_clear_errors():
    layer = nn.Linear(3, 2)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"amount=.* is not a fraction in \[0, 1\]"):
            prune.l1_unstructured(layer, "weight", bad)
    with pytest.raises(ValueError, match="amount=7 weights, but Linear.weight has 6 unpruned"):
        prune.l1_unstructured(layer, "weight", 7)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="amount must be a float fraction"):
            prune.l1_unstructured(layer, "weight", bad)
    with pytest.raises(ValueError, match="Linear has no parameter named 'wieght'; its "
                                         "parameters: weight, bias"):
        prune.l1_unstructured(layer, "wieght", 0.5)
    model = _mlp()
    with pytest.raises(ValueError, match=r"no parameter named '0.weight'.*\(model.linear1"):
        prune.l1_unstructured(model, "0.weight", 0.5)
    with pytest.raises(ValueError, match=r"global_magnitude: amount=2.0 is not a fraction"):
        prune.global_magnitude(prune.prunable_weights(model), 2.0)
    with pytest.raises(ValueError, match="global_magnitude: got no parameters"):
        prune.global_magnitude([], 0.5)
    with pytest.raises(ValueError, match=r"listed twice"):
        prune.global_magnitude([(model[0], "weight"), (model[0], "weight")], 0.5)
    with pytest.raises(ValueError, match=r"mask for Linear.weight has shape \(3,\), the param"):
        prune.apply_mask(layer, "weight", [1, 0, 1])
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        prune.apply_mask(layer, "weight", np.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="remove: parameter 'bias' of Linear has no mask"):
        prune.remove(layer, "bias")
    with pytest.raises(ValueError, match="apply_masks: Sequential has no parameter named 'x.w'"):
        prune.apply_masks(model, {"x.w": np.ones(3)})
    with pytest.raises(TypeError, match="expected an nn.Module, got list"):
        prune.sparsity([1, 2])
    with pytest.raises(ValueError, match="rounds must be an int >= 0"):
        prune.iterative_magnitude_pruning(_mlp, lambda m, c: 0.0, -1)
    with pytest.raises(ValueError, match=r"amount_per_round must be a fraction in \(0, 1\)"):
        prune.iterative_magnitude_pruning(_mlp, lambda m, c: 0.0, 1, 1.0)
    with pytest.raises(ValueError, match="rewind must be 'init' or a step count"):
        prune.iterative_magnitude_pruning(_mlp, lambda m, c: 0.0, 1, rewind="start")
    with pytest.raises(ValueError, match="never reported step 3"):
        prune.iterative_magnitude_pruning(_mlp, lambda m, c: 0.5, 1, rewind=3)
    with pytest.raises(ValueError, match="without 'accuracy'"):
        prune.iterative_magnitude_pruning(_mlp, lambda m, c: {"acc": 1.0}, 1)


def test_rewind_restores_the_saved_weights_bit_for_bit():
    model = _mlp(4)
    saved = prune.snapshot(model)
    prune.l1_unstructured(model[0], "weight", 0.5)
    keep = model[0].weight_mask.numpy() == 1
    opt = ng.optim.Adam(model.parameters(), lr=0.05)
    x, y = _batch(4)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert not np.array_equal(model[2].weight.numpy(), saved["2.weight"])
    prune.rewind(model, saved)
    w = model[0].weight.numpy()
    assert np.array_equal(_bits(w[keep]), _bits(saved["0.weight"][keep]))
    assert np.all(w[~keep] == 0)
    for k in ("0.bias", "2.weight", "2.bias"):
        assert np.array_equal(_bits(model.state_dict()[k].numpy()), _bits(saved[k])), k
    assert "0.weight_mask" not in saved
    with pytest.raises(ValueError, match="rewind: the snapshot does not fit"):
        prune.rewind(nn.Linear(2, 2), saved)


def test_remove_makes_the_mask_permanent():
    model = _mlp(5)
    prune.l1_unstructured(model[0], "weight", 0.5)
    keep = model[0].weight_mask.numpy() == 1
    x, y = _batch(5)
    with ng.no_grad():
        before = model(x).numpy()
    param = model[0].weight
    prune.remove(model[0], "weight")
    assert model[0].weight is param and "0.weight_mask" not in model.state_dict()
    assert not prune.is_pruned(model) and np.all(param.numpy()[~keep] == 0)
    with ng.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), before)
    F.cross_entropy(model(x), y).backward()  # no hook any more: pruned weights get gradients
    assert np.any(param.grad.numpy()[~keep] != 0)


def test_grad_through_functional_call_is_masked():
    model = _mlp(6)
    prune.l1_unstructured(model[0], "weight", 0.5)
    keep = model[0].weight_mask.numpy() == 1
    x, y = _batch(6)
    g = ng.grad(lambda mdl: F.cross_entropy(mdl(x), y))(model)
    assert np.all(g[0].weight.numpy()[~keep] == 0) and np.any(g[0].weight.numpy()[keep] != 0)
    params = {k: ng.tensor(v.numpy() + 1.0) for k, v in model.named_parameters()}
    out = nn.functional_call(model, params, x)
    assert model._modules["0"]._parameters["weight"] is dict(model.named_parameters())["0.weight"]
    w = params["0.weight"].numpy() * keep
    h = np.maximum(x.numpy() @ w.T + params["0.bias"].numpy(), 0)
    ref = h @ params["2.weight"].numpy().T + params["2.bias"].numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def _digits_imp(rounds, amount, rewind, scope="layer", control=True, steps=12):
    d = ng.data.datasets.digits(flat=True)
    seen, at_step = [], {}

    class Record(train.Callback):
        def on_batch_end(self, tr, logs):
            at_step.setdefault(tr.step, {k: v.numpy().copy()
                                         for k, v in tr.model.state_dict().items()})

    def build(seed):
        ng.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def train_fn(model, ctx):
        start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        seen.append((ctx.round, ctx.kind, ctx.start_step, ctx.fraction_remaining, start))
        loader = ng.data.DataLoader(d.train, batch_size=64, shuffle=True, seed=ctx.round)
        opt = ng.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        epochs = -(-steps // len(loader))
        cbs = ctx.callbacks + ([Record()] if ctx.kind == "dense" else [])
        train.fit(model, F.cross_entropy, opt, loader, epochs=epochs, callbacks=cbs,
                  progress=False)
        test = ng.data.DataLoader(d.test, batch_size=512)
        return train.evaluate(model, test)
    res = prune.iterative_magnitude_pruning(build, train_fn, rounds, amount, rewind=rewind,
                                            scope=scope, control=control, seed=0)
    return res, seen, build, at_step


def test_imp_produces_the_expected_sparsity_sequence_and_rewinds_to_init():
    res, seen, build, _ = _digits_imp(rounds=3, amount=0.5, rewind="init")
    sizes = [64 * 16, 16 * 10]
    assert res.fractions == prune.expected_fractions(3, 0.5, sizes)
    assert res.fractions == [1.0, 0.5, 0.25, 0.125]  # halves divide exactly here
    assert [(s[0], s[1]) for s in seen] == [(0, "dense"), (1, "ticket"), (1, "control"),
                                           (2, "ticket"), (2, "control"), (3, "ticket"),
                                           (3, "control")]
    init = build(0).state_dict()
    prev = None
    for r in res.rounds[1:]:
        masks = r.masks
        assert set(masks) == {"0.weight", "2.weight"}
        frac = [m.mean() for m in masks.values()]
        assert frac == [r.fraction_remaining] * 2  # layer-wise: every layer keeps the same share
        if prev is not None:
            assert all(np.all(prev[k] >= masks[k]) for k in masks)  # pruned stay pruned
        prev = masks
        start = next(s[4] for s in seen if s[0] == r.round and s[1] == "ticket")
        for k, keep in masks.items():  # the ticket starts from theta_0, bit for bit
            assert np.array_equal(_bits(start[k][keep]), _bits(init[k].numpy()[keep]))
            assert np.all(start[k][~keep] == 0)
        ctrl = next(s[4] for s in seen if s[0] == r.round and s[1] == "control")
        assert np.array_equal(ctrl["0.weight_mask"] == 1, masks["0.weight"])
        assert not np.array_equal(ctrl["0.weight"], start["0.weight"])  # a fresh initialisation
        assert 0.0 <= r.control_accuracy <= 1.0
    assert res.rounds[0].accuracy > 0.5  # 12 SGD steps on digits learn something
    assert "| 3 | 12.5 % |" in res.table()
    assert prune.sparsity(res.model).fraction_remaining == 0.125


def test_imp_late_rewinding_and_global_scope():
    res, seen, _, at_step = _digits_imp(rounds=2, amount=0.2, rewind=3, scope="global",
                                        control=False)
    total = 64 * 16 + 16 * 10
    alive = total - round(0.2 * total)
    alive2 = alive - round(0.2 * alive)
    assert res.fractions == [1.0, alive / total, alive2 / total]
    assert [s[2] for s in seen] == [0, 3, 3]  # the tickets are told where they were rewound to
    theta3 = at_step[3]  # the dense run's weights after its third optimiser step
    for r in (1, 2):
        start = seen[r][4]
        for k, keep in res.rounds[r].masks.items():
            assert np.array_equal(_bits(start[k][keep]), _bits(theta3[k][keep])), (r, k)
            assert np.all(start[k][~keep] == 0)
        for k in ("0.bias", "2.bias"):  # biases are rewound as well
            assert np.array_equal(_bits(start[k]), _bits(theta3[k]))
    assert not np.array_equal(theta3["0.weight"], seen[0][4]["0.weight"])  # theta_3 != theta_0
    fr = [m.mean() for m in res.rounds[1].masks.values()]
    assert fr[0] != fr[1]  # global ranking prunes the layers unevenly
    assert all(r.control_accuracy is None for r in res.rounds)


def test_imp_with_a_hand_written_loop_layer_rates_and_rounding():
    starts = []

    def build(seed):
        ng.manual_seed(seed)
        return nn.Sequential(nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 3))

    def train_fn(model, ctx):  # "training" adds 1 to every weight per step, 5 steps
        starts.append({k: v.numpy().copy() for k, v in model.state_dict().items()})
        for step in range(1, 6):
            with ng.no_grad():
                for p in model.parameters():
                    p += 1.0
            ctx.on_step(model, step)
        return {"accuracy": 0.5, "loss": 1.0}

    res = prune.iterative_magnitude_pruning(build, train_fn, 2, 0.3, rewind=2,
                                            layer_amounts={"2.weight": 0.1}, control=False)
    alive0 = [70, 70 - round(0.3 * 70), 49 - round(0.3 * 49)]  # 70, 49, 34
    alive2 = [21, 21 - round(0.1 * 21), 19 - round(0.1 * 19)]  # 21, 19, 17
    assert res.fractions == [(a + b) / 91 for a, b in zip(alive0, alive2)]
    assert [int(r.masks["2.weight"].sum()) for r in res.rounds[1:]] == alive2[1:]
    init = build(0).state_dict()
    for r, start in zip(res.rounds[1:], starts[1:]):  # rewound to theta_2 = theta_0 + 2
        for k, keep in r.masks.items():
            theta2 = (init[k].numpy() + np.float32(1.0)) + np.float32(1.0)
            assert np.array_equal(_bits(start[k][keep]), _bits(theta2[keep]))
    assert res.rounds[1].metrics == {"accuracy": 0.5, "loss": 1.0}
    assert res.layer_amounts == {"2.weight": 0.1}
    with pytest.raises(ValueError, match="layer_amounts needs scope='layer'"):
        prune.iterative_magnitude_pruning(build, train_fn, 1, 0.3, scope="global",
                                          layer_amounts={"2.weight": 0.1})
    with pytest.raises(ValueError, match=r"layer_amounts names \['3.weight'\], which are not"):
        prune.iterative_magnitude_pruning(build, train_fn, 1, 0.3,
                                          layer_amounts={"3.weight": 0.1})
