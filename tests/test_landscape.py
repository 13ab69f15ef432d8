"""Loss landscapes: exact endpoints and centre, filter normalisation, restored parameters."""

import copy

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, train
from nodegrad.diagnostics import landscape as L
from nodegrad.nn import functional as F


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return x, y


def _loader(n=64):
    return ng.data.DataLoader(ng.data.ArrayDataset(*_data(n)), batch_size=24)


def _model(seed=0):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                         nn.Linear(8, 3))


def _trained(steps=30):
    m = _model()
    init = {k: v.clone() for k, v in m.state_dict().items()}
    opt = ng.optim.Adam(m.parameters(), lr=0.05)
    x, y = (ng.tensor(a) for a in _data())
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return m, init


def _snapshot(m):
    return {k: v.numpy().copy() for k, v in m.state_dict().items()}


def _loss_at(params, loader):
    """The loss with ``params`` loaded, as train.evaluate computes it (eval mode)."""
    m = _model(seed=9)
    m.load_state_dict(params)
    return train.evaluate(m, loader, F.cross_entropy, metrics=("accuracy",))


def test_interpolation_endpoints_are_exactly_the_two_losses():
    m, init = _trained()
    trained = {k: v.clone() for k, v in m.state_dict().items()}
    loader = _loader()
    al, losses, accs = L.interpolate(m, F.cross_entropy, loader, init, m, [0.0, 0.5, 1.0],
                                     with_accuracy=True)
    a, b = _loss_at(init, loader), _loss_at(trained, loader)
    assert losses[0] == a["loss"] and losses[2] == b["loss"]  # bit for bit
    assert accs[0] == a["accuracy"] and accs[2] == b["accuracy"]
    assert losses[2] < losses[0]
    mid = {k: ng.tensor((init[k].numpy() + trained[k].numpy()) / 2) if v.dtype.kind == "f"
           else v for k, v in trained.items()}
    np.testing.assert_allclose(losses[1], _loss_at(mid, loader)["loss"], rtol=1e-5)
    # from far away, a + (b - a) would round away from b: the endpoint must still be exact
    far = {k: v * 1000 + 7 if v.dtype.kind == "f" else v for k, v in init.items()}
    _, losses = L.interpolate(m, F.cross_entropy, loader, far, trained, [1.0, 0.0])
    assert losses[0] == b["loss"] and losses[1] == _loss_at(far, loader)["loss"]
    al, losses = L.interpolate(m, F.cross_entropy, loader, init, trained)  # default alphas
    assert len(al) == 31 and al[5] == 0.0 and al[25] == 1.0 and losses[25] == b["loss"]
    assert np.isfinite(losses).all()


def test_parameters_and_modes_are_restored_bit_exactly():
    m, init = _trained()
    m.train()
    m[1].eval()  # a mixed state must come back as it was
    before = _snapshot(m)
    ids = [id(p) for p in m.parameters()]
    datas = [p._data for p in m.parameters()]
    L.interpolate(m, F.cross_entropy, _loader(), init, m, [-0.5, 0.3, 1.5])
    L.surface_2d(m, F.cross_entropy, _loader(), n=3)
    after = _snapshot(m)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)  # running statistics untouched too
    assert [id(p) for p in m.parameters()] == ids
    assert all(p._data is d for p, d in zip(m.parameters(), datas))
    assert m.training and not m[1].training and m[3].training


def test_surface_centre_is_the_trained_loss_and_the_grid_is_symmetric():
    m, _ = _trained()
    loader = _loader()
    xs, ys, losses, accs = L.surface_2d(m, F.cross_entropy, loader, n=5, span=0.5,
                                        with_accuracy=True)
    np.testing.assert_array_equal(xs, [-0.5, -0.25, 0.0, 0.25, 0.5])
    np.testing.assert_array_equal(xs, ys)
    ref = train.evaluate(m, loader, F.cross_entropy)
    assert losses.shape == (5, 5) and losses[2, 2] == ref["loss"]
    assert accs[2, 2] == ref["accuracy"]
    assert np.all(np.delete(losses.ravel(), 12) != losses[2, 2])
    assert losses[2, 2] <= losses.min() + 0.05  # a trained net sits near the bottom


def test_a_surface_point_equals_the_loss_at_the_moved_parameters():
    m, _ = _trained()
    loader = _loader()
    d1 = L.random_direction(m, seed=3)
    d2 = {k: v * 0 for k, v in d1.items()}
    xs, ys, losses = L.surface_2d(m, F.cross_entropy, loader, n=2, directions=(d1, d2))
    assert list(xs) == [-1.0, 1.0]
    moved = {k: ng.tensor(v.numpy() + d1[k].numpy()) if k in d1 else v
             for k, v in m.state_dict().items()}
    np.testing.assert_allclose(losses[0, 1], _loss_at(moved, loader)["loss"], rtol=1e-5)
    np.testing.assert_allclose(losses[1, 1], losses[0, 1], rtol=1e-6)  # d2 = 0: y does nothing


def test_filter_normalised_directions_match_the_weights_filter_norms():
    ng.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6, 5))
    d = L.random_direction(m, seed=1)
    assert set(d) == {k for k, _ in m.named_parameters()}
    for name in ("0.weight", "4.weight"):
        w = m.state_dict()[name].numpy().reshape(len(d[name]), -1)
        dn = d[name].numpy().reshape(len(w), -1)
        np.testing.assert_allclose(np.linalg.norm(dn, axis=1), np.linalg.norm(w, axis=1),
                                   rtol=1e-5)
        assert not np.allclose(dn, w)  # a direction, not the weights themselves
    for name in ("0.bias", "1.weight", "1.bias", "4.bias"):  # biases and BN: not perturbed
        assert not d[name].numpy().any()
    keep = L.random_direction(m, seed=1, ignore_bias_bn=False)
    np.testing.assert_allclose(np.linalg.norm(keep["0.bias"].numpy()),
                               np.linalg.norm(m[0].bias.numpy()), rtol=1e-5)
    raw = L.random_direction(m, seed=1, filter_normalize=False)
    assert not np.allclose(np.linalg.norm(raw["4.weight"].numpy(), axis=1),
                           np.linalg.norm(m[4].weight.numpy(), axis=1), rtol=1e-2)
    again = L.random_direction(m, seed=1)
    np.testing.assert_array_equal(again["4.weight"].numpy(), d["4.weight"].numpy())
    other = L.random_direction(m, seed=2)
    assert not np.array_equal(other["4.weight"].numpy(), d["4.weight"].numpy())


def test_bad_inputs_name_the_function():
    m, init = _trained()
    loader = _loader()
    part = {k: v for k, v in init.items() if k != "0.bias"}
    with pytest.raises(ValueError, match="interpolate: params_a and params_b must name the same"
                                         ".*only in params_a: \\['0.bias'\\]"):
        L.interpolate(m, F.cross_entropy, loader, init, part)
    with pytest.raises(KeyError, match="interpolate: params_b has names that Sequential does "
                                       "not: 9.weight"):
        L.interpolate(m, F.cross_entropy, loader, init, {**init, "9.weight": ng.zeros(2)})
    bad = dict(init)
    bad["0.weight"] = ng.zeros(3, 3)
    with pytest.raises(ng.ShapeError, match="interpolate: params_b\\['0.weight'\\] has shape"):
        L.interpolate(m, F.cross_entropy, loader, init, bad)
    with pytest.raises(ValueError, match="interpolate: alphas must be"):
        L.interpolate(m, F.cross_entropy, loader, init, m, [])
    with pytest.raises(TypeError, match="interpolate: params_a must be a Module or a mapping"):
        L.interpolate(m, F.cross_entropy, loader, [1, 2], m)
    for n in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="surface_2d: n must be an int >= 2"):
            L.surface_2d(m, F.cross_entropy, loader, n=n)
    with pytest.raises(ValueError, match="surface_2d: span must be a positive number"):
        L.surface_2d(m, F.cross_entropy, loader, span=0)
    with pytest.raises(ValueError, match="surface_2d: batches is empty"):
        L.surface_2d(m, F.cross_entropy, [], n=3)
    with pytest.raises(ValueError, match="surface_2d: directions must be a pair"):
        L.surface_2d(m, F.cross_entropy, loader, n=3, directions=(init,))
    with pytest.raises(TypeError, match="interpolate: model must be a nodegrad Module"):
        L.interpolate(copy.copy, F.cross_entropy, loader, init, init)


def test_plots_write_pngs(tmp_path):
    m, init = _trained()
    x, y = _data()
    al, lo, ac = L.interpolate(m, F.cross_entropy, (x, y), init, m, np.linspace(0, 1, 5),
                               with_accuracy=True)
    p1 = L.plot_interpolation(al, {"train": lo}, tmp_path / "i.png", {"train": ac}, title="t")
    xs, ys, z = L.surface_2d(m, F.cross_entropy, (x, y), n=4)
    p2 = L.plot_surface(xs, ys, z, tmp_path / "s.png", title="s")
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ng.ShapeError, match="plot_surface: losses has shape"):
        L.plot_surface(xs, ys, z[:2], tmp_path / "bad.png")
