"""Transfer learning: loading with a report, head replacement, freezing, per-prefix lrs."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import models, nn
from nodegrad.nn import functional as F
from nodegrad.train import checkpoint as C
from nodegrad.train import transfer as T


def _mlp(out=3, seed=0):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, out))


def _arrays(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_strict_load_reports_the_old_head_and_copies_nothing():
    src, dst = _mlp(3, seed=0), _mlp(2, seed=1)
    before = _arrays(dst)
    with pytest.raises(ng.ShapeError) as e:
        T.load_pretrained(dst, src)
    msg = str(e.value)
    assert "2.weight: checkpoint (3, 6) vs model (2, 6)" in msg
    assert "2.bias: checkpoint (3,) vs model (2,)" in msg and "nothing was loaded" in msg
    for k, v in _arrays(dst).items():
        np.testing.assert_array_equal(v, before[k])


def test_non_strict_load_copies_what_fits_and_lists_the_rest():
    src, dst = _mlp(3, seed=0), _mlp(2, seed=1)
    head = dst[2].weight.numpy().copy()
    rep = T.load_pretrained(dst, src, strict=False)
    assert rep.loaded == ["0.weight", "0.bias"]
    assert rep.mismatched == [("2.weight", (3, 6), (2, 6)), ("2.bias", (3,), (2,))]
    assert not rep.ok and rep.missing == [] and rep.unexpected == []
    np.testing.assert_array_equal(dst[0].weight.numpy(), src[0].weight.numpy())
    np.testing.assert_array_equal(dst[2].weight.numpy(), head)  # left as it was
    assert "shape mismatch (not loaded): 2.weight" in str(rep)


def test_skip_missing_unexpected_and_rename():
    src, dst = _mlp(3, seed=0), _mlp(2, seed=1)
    rep = T.load_pretrained(dst, src, skip="2")  # strict, but the head is skipped on request
    assert rep.ok and rep.skipped == ["2.weight", "2.bias"] and len(rep.loaded) == 2
    state = {"module." + k: v for k, v in src.state_dict().items()}
    state["module.9.weight"] = ng.zeros(1)
    rep = T.load_pretrained(dst, state, strict=False, rename={"module": ""}, skip=["2"])
    assert rep.unexpected == ["9.weight"] and rep.loaded == ["0.weight", "0.bias"]
    small = {"0.weight": src[0].weight}
    rep = T.load_pretrained(dst, small, strict=False)
    assert rep.missing == ["0.bias", "2.weight", "2.bias"]
    with pytest.raises(ng.ShapeError, match="missing"):
        T.load_pretrained(dst, small)
    with pytest.raises(TypeError, match="load_pretrained: source must be"):
        T.load_pretrained(dst, 3.0)


def test_load_from_files_and_run_directories(tmp_path):
    src, dst = _mlp(3, seed=0), _mlp(3, seed=1)
    ng.save(src.state_dict(), tmp_path / "w.safetensors")
    assert T.load_pretrained(dst, tmp_path / "w.safetensors").ok
    np.testing.assert_array_equal(dst[2].bias.numpy(), src[2].bias.numpy())
    run = tmp_path / "run"
    C.save_checkpoint(run / C.FILENAME, src, {"epoch": 1})  # as train.fit writes it
    rep = T.load_pretrained(_mlp(3, seed=2), run)
    assert rep.ok and rep.loaded == ["0.weight", "0.bias", "2.weight", "2.bias"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="load_pretrained: .* is a directory without"):
        T.load_pretrained(dst, tmp_path / "empty")


def test_replace_module_and_head():
    m = _mlp(3)
    old = T.replace_module(m, "2", nn.Linear(6, 5))
    assert isinstance(old, nn.Linear) and old.out_features == 3
    assert m(ng.randn(4, 8)).shape == (4, 5)
    assert all(p is not old.weight for p in m.parameters())
    with pytest.raises(KeyError, match="replace_module: Sequential has no submodule '7'"):
        T.replace_module(m, "7", nn.Linear(6, 5))
    cnn = models.create("mnist1d_cnn", seed=0)
    new = T.replace_head(cnn, 4)
    assert cnn.linear is new and (new.in_features, new.out_features) == (125, 4)
    assert cnn(ng.randn(2, 40)).shape == (2, 4)
    with pytest.raises(ValueError, match="replace_head: Sequential has no Linear"):
        T.replace_head(nn.Sequential(nn.ReLU()), 3)
    with pytest.raises(TypeError, match="not a Linear"):
        T.replace_head(cnn, 3, name="conv1")


def test_frozen_parameters_get_no_gradient_and_no_update():
    m = _mlp(3)
    assert T.freeze(m, "0") == ["0.weight", "0.bias"]
    frozen = m[0].weight.numpy().copy()
    opt = ng.optim.SGD(m.parameters(), lr=0.5)  # even an optimiser holding them moves nothing
    x, y = ng.randn(16, 8), ng.tensor(np.arange(16) % 3)
    F.cross_entropy(m(x), y).backward()
    assert m[0].weight.grad is None and m[0].bias.grad is None
    assert m[2].weight.grad is not None
    head = m[2].weight.numpy().copy()
    opt.step()
    np.testing.assert_array_equal(m[0].weight.numpy(), frozen)
    assert not np.array_equal(m[2].weight.numpy(), head)
    groups = T.param_groups(m, {"2": 0.1})
    assert [n for g in groups for n, _ in g["params"]] == ["2.weight", "2.bias"]
    assert T.unfreeze(m, ["0"]) == ["0.weight", "0.bias"] and m[0].weight.requires_grad
    with pytest.raises(KeyError, match="freeze: no parameter of Sequential lies under '3'"):
        T.freeze(m, ["3"])


def test_prefixes_match_whole_name_components():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Linear(2, 2)
            self.conv10 = nn.Linear(2, 2)

    net = Net()
    assert T.freeze(net, "conv1") == ["conv1.weight", "conv1.bias"]
    assert net.conv10.weight.requires_grad
    assert T.matches("a.b.c", "a.b") and not T.matches("a.bc", "a.b") and T.matches("x", "")
    lines = T.trainable_summary(net).splitlines()
    assert [ln.split() for ln in lines] == [["conv1", "0", "/", "6", "trainable"],
                                            ["conv10", "6", "/", "6", "trainable"],
                                            ["total", "6", "/", "12", "trainable"]]


def test_param_group_learning_rates_are_applied():
    m = _mlp(3)
    groups = T.param_groups(m, {"0": 0.1, "2.bias": {"lr": 0.5}}, default_lr=0.01)
    assert [(g["prefix"], g["lr"]) for g in groups] == [("0", 0.1), ("2.bias", 0.5),
                                                        ("(default)", 0.01)]
    assert [n for n, _ in groups[2]["params"]] == ["2.weight"]
    before = _arrays(m)
    opt = ng.optim.SGD(groups, lr=123.0)  # the groups' lrs win over the optimiser default
    F.cross_entropy(m(ng.randn(8, 8)), ng.tensor(np.arange(8) % 3)).backward()
    grads = {k: p.grad.numpy().copy() for k, p in m.named_parameters()}
    opt.step()
    for k, lr in [("0.weight", 0.1), ("0.bias", 0.1), ("2.bias", 0.5), ("2.weight", 0.01)]:
        np.testing.assert_allclose(m.state_dict()[k].numpy(), before[k] - lr * grads[k],
                                   rtol=1e-6, atol=1e-7)
    longest = T.param_groups(m, {"": 1.0, "2": 2.0, ("2.weight", "0.bias"): 3.0})
    assert {g["prefix"]: [n for n, _ in g["params"]] for g in longest} == {
        "": ["0.weight"], "2": ["2.bias"], "2.weight,0.bias": ["0.bias", "2.weight"]}
    with pytest.raises(ValueError, match="param_groups: the trainable parameters 2.weight, "
                                         "2.bias match no prefix"):
        T.param_groups(m, {"0": 0.1})
    with pytest.raises(KeyError, match="lies under 'head'"):
        T.param_groups(m, {"head": 0.1}, default_lr=0.1)
    T.freeze(m)
    with pytest.raises(ValueError, match="no trainable parameters"):
        T.param_groups(m, {}, default_lr=0.1)


def test_fine_tune_head_with_fit_on_mnist1d():
    pytest.importorskip("mnist1d")
    d = ng.data.datasets.mnist1d()
    x, y = d.x_train[:300], d.y_train[:300]
    pre = models.create("mnist1d_cnn", seed=0)
    model = models.create("mnist1d_cnn", seed=1, classes=3)
    rep = T.load_pretrained(model, pre, skip="linear")
    assert rep.ok and rep.skipped == ["linear.weight", "linear.bias"]
    T.freeze(model)
    T.unfreeze(model, "linear")
    features = {k: v.numpy().copy() for k, v in model.state_dict().items() if "conv" in k}
    opt = ng.optim.Adam(T.param_groups(model, {"linear": 1e-2}))
    keep = y < 3
    ds = ng.data.ArrayDataset(x[keep], y[keep])
    h = ng.train.fit(model, F.cross_entropy, opt, ng.data.DataLoader(ds, 50, shuffle=True, seed=0),
                     epochs=3, progress=False)
    assert h["loss"][-1] < h["loss"][0]
    for k, v in features.items():
        np.testing.assert_array_equal(model.state_dict()[k].numpy(), v)


def test_pytorch_saved_safetensors_give_the_same_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")

    class TorchCNN(torch.nn.Module):  # the MNIST-1D CNN, with nodegrad's attribute names
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv1d(1, 25, 5, stride=2, padding=1)
            self.conv2 = torch.nn.Conv1d(25, 25, 3, stride=2, padding=1)
            self.conv3 = torch.nn.Conv1d(25, 25, 3, stride=2, padding=1)
            self.linear = torch.nn.Linear(125, 10)

        def forward(self, x):
            h = x.reshape(x.shape[0], 1, -1)
            for conv in (self.conv1, self.conv2, self.conv3):
                h = torch.relu(conv(h))
            return self.linear(h.flatten(1))

    torch.manual_seed(0)
    tm = TorchCNN()
    st.save_file(tm.state_dict(), str(tmp_path / "cnn.safetensors"))
    model = models.create("mnist1d_cnn", seed=5)
    rep = T.load_pretrained(model, tmp_path / "cnn.safetensors")
    assert rep.ok and len(rep.loaded) == 8
    x = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.tensor(x)).numpy()
    np.testing.assert_allclose(model(ng.tensor(x)).numpy(), want, rtol=1e-5, atol=1e-5)

    tseq = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 10))
    st.save_file(tseq.state_dict(), str(tmp_path / "mlp.safetensors"))
    dst = _mlp(5)
    rep = T.load_pretrained(dst, tmp_path / "mlp.safetensors", strict=False)
    assert rep.mismatched == [("2.weight", (10, 6), (5, 6)), ("2.bias", (10,), (5,))]
    with torch.no_grad():
        h = torch.relu(tseq[0](torch.tensor(x[:, :8]))).numpy()
    np.testing.assert_allclose(dst[1](dst[0](ng.tensor(x[:, :8]))).numpy(), h, rtol=1e-5,
                               atol=1e-6)
