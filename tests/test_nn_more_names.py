"""nn names added for PyTorch parity, against torch: RNNBase/RNNCellBase, FractionalMaxPool3d,
CrossMapLRN2d, the deprecated upsample_* and nn.init names, sparse_, and
parametrizations.orthogonal (its three maps, with and without trivialization)."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as NF
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = {"atol": 1e-10, "rtol": 1e-9}


# --- recurrent base classes -----------------------------------------------------------------
def test_rnn_base_classes_as_torch():
    for layer in (nn.RNN(2, 3), nn.GRU(2, 3), nn.LSTM(2, 3)):
        assert isinstance(layer, nn.RNNBase)
    for cell in (nn.RNNCell(2, 3), nn.GRUCell(2, 3), nn.LSTMCell(2, 3)):
        assert isinstance(cell, nn.RNNCellBase) and not isinstance(cell, nn.RNNBase)
    m = nn.RNNBase("LSTM", 3, 4, num_layers=2, batch_first=True, dtype="float64")
    t = torch.nn.RNNBase("LSTM", 3, 4, num_layers=2, batch_first=True, dtype=torch.float64)
    assert sorted(m.state_dict()) == sorted(t.state_dict())
    for k, v in t.state_dict().items():
        assert tuple(m.state_dict()[k].shape) == tuple(v.shape)
    m.load_state_dict({k: ng.tensor(v.numpy()) for k, v in t.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    out, (h, c) = m(ng.tensor(x))
    tl = torch.nn.LSTM(3, 4, 2, batch_first=True, dtype=torch.float64)
    tl.load_state_dict(t.state_dict())
    ref, (rh, rc) = tl(torch.tensor(x))
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(c.numpy(), rc.detach().numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="RNNBase: mode must be one of"):
        nn.RNNBase("CELL", 2, 3)


# --- fractional max pooling in 3-d ----------------------------------------------------------
@pytest.mark.parametrize("kw", [{"kernel_size": 2, "output_size": (4, 5, 6)},
                                {"kernel_size": (2, 3, 2), "output_ratio": (0.5, 0.6, 0.7)},
                                {"kernel_size": 3, "output_size": 1}])
def test_fractional_max_pool3d_matches_torch(rng, kw):
    x, s = rng.standard_normal((2, 3, 7, 8, 9)), rng.random((2, 3, 3))
    compare_with_torch(
        lambda t: NF.fractional_max_pool3d(t, _random_samples=ng.tensor(s), **kw),
        lambda t: TF.fractional_max_pool3d(t, _random_samples=torch.tensor(s), **kw), x, **TOL)
    y, i = NF.fractional_max_pool3d_with_indices(ng.tensor(x), _random_samples=ng.tensor(s),
                                                 **kw)
    ty, ti = TF.fractional_max_pool3d_with_indices(torch.tensor(x),
                                                   _random_samples=torch.tensor(s), **kw)
    np.testing.assert_array_equal(i.numpy(), ti.numpy())
    m = nn.FractionalMaxPool3d(return_indices=True, _random_samples=ng.tensor(s), **kw)
    tm = torch.nn.FractionalMaxPool3d(return_indices=True, _random_samples=torch.tensor(s),
                                      **kw)
    np.testing.assert_array_equal(m(ng.tensor(x))[1].numpy(), tm(torch.tensor(x))[1].numpy())
    # unbatched (C, T, H, W)
    np.testing.assert_array_equal(
        NF.fractional_max_pool3d(ng.tensor(x[0]), _random_samples=ng.tensor(s[:1]), **kw).numpy(),
        TF.fractional_max_pool3d(torch.tensor(x[0]), _random_samples=torch.tensor(s[:1]),
                                 **kw).numpy())


def test_fractional_max_pool3d_errors_and_random_windows():
    x = ng.randn(1, 2, 6, 6, 6)
    assert nn.FractionalMaxPool3d(2, output_ratio=0.5)(x).shape == (1, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="FractionalMaxPool3d: give either"):
        nn.FractionalMaxPool3d(2)
    with pytest.raises(ng.ShapeError, match="fractional_max_pool3d: expected"):
        NF.fractional_max_pool3d(ng.randn(2, 6, 6), 2, 3)
    with pytest.raises(ng.ShapeError, match=r"_random_samples must have shape \(N, C, 3\)"):
        NF.fractional_max_pool3d(x, 2, 3, _random_samples=ng.zeros(1, 2, 2))


# --- CrossMapLRN2d --------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "c"), [(1, 4), (2, 5), (3, 6), (5, 9), (4, 3), (7, 2)])
def test_cross_map_lrn2d_values_match_torch(rng, size, c):
    x = rng.standard_normal((2, c, 3, 2))
    m = nn.CrossMapLRN2d(size, alpha=0.5, beta=0.6, k=1.5)
    t = torch.nn.CrossMapLRN2d(size, alpha=0.5, beta=0.6, k=1.5)
    np.testing.assert_allclose(m(ng.tensor(x)).numpy(), t(torch.tensor(x)).numpy(), **TOL)
    assert repr(m) == repr(t)
    # torch's legacy backward is not its forward's derivative: check by finite differences
    assert ng.gradcheck(m, x)


def test_cross_map_lrn2d_refuses_non_4d():
    with pytest.raises(ValueError, match="CrossMapLRN2d: Expected input to be 4D"):
        nn.CrossMapLRN2d(3)(ng.randn(2, 3, 4))


# --- deprecated resampling names --------------------------------------------------------------
def test_upsample_nearest_and_bilinear_match_torch(rng):
    x = rng.standard_normal((1, 2, 3, 4))
    for f, tf, kw in ((NF.upsample_nearest, TF.upsample_nearest, {"scale_factor": 2}),
                      (NF.upsample_nearest, TF.upsample_nearest, {"size": (5, 7)}),
                      (NF.upsample_bilinear, TF.upsample_bilinear, {"size": (5, 7)}),
                      (NF.upsample_bilinear, TF.upsample_bilinear, {"scale_factor": 2})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compare_with_torch(lambda t: f(t, **kw), lambda t: tf(t, **kw), x, **TOL)
    with pytest.warns(UserWarning, match="upsample_bilinear is deprecated"):
        NF.upsample_bilinear(ng.tensor(x), scale_factor=2)
    with pytest.raises(ng.ShapeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NF.upsample_bilinear(ng.randn(1, 2, 3), scale_factor=2)


# --- nn.init ---------------------------------------------------------------------------------
OLD = ["uniform", "normal", "constant", "eye", "dirac", "xavier_uniform", "xavier_normal",
       "kaiming_uniform", "kaiming_normal", "orthogonal", "sparse"]


@pytest.mark.parametrize("name", OLD)
def test_deprecated_init_names_warn_and_call_the_new_ones(name):
    assert hasattr(torch.nn.init, name)
    args = {"constant": (0.5,), "sparse": (0.5,)}.get(name, ())
    shape = (4, 3, 3) if name == "dirac" else (4, 3)
    ng.manual_seed(3)
    w = ng.empty(*shape)
    with pytest.warns(FutureWarning, match=f"nn.init.{name}` is now deprecated"):
        getattr(nn.init, name)(w, *args)
    ng.manual_seed(3)
    ref = getattr(nn.init, name + "_")(ng.empty(*shape), *args)
    np.testing.assert_array_equal(w.numpy(), ref.numpy())


def test_sparse_init_zeros_per_column_like_torch():
    for rows, cols, sparsity in ((10, 4, 0.25), (7, 3, 0.5), (5, 2, 0.0)):
        w = nn.init.sparse_(ng.empty(rows, cols, dtype="float64"), sparsity, std=0.5)
        t = torch.nn.init.sparse_(torch.empty(rows, cols), sparsity, std=0.5)
        np.testing.assert_array_equal((w.numpy() == 0).sum(0), (t.numpy() == 0).sum(0))
        assert 0.2 < w.numpy()[w.numpy() != 0].std() < 1.0
    with pytest.raises(ValueError, match="sparse_: only 2-d tensors"):
        nn.init.sparse_(ng.empty(2, 2, 2), 0.1)


# --- parametrizations.orthogonal ------------------------------------------------------------
MAPS = ["matrix_exp", "cayley", "householder"]


def _pair(shape, omap, triv, W):
    tm = torch.nn.Linear(shape[1], shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        tm.weight.copy_(torch.tensor(W))
    torch.nn.utils.parametrizations.orthogonal(tm, orthogonal_map=omap, use_trivialization=triv)
    m = nn.Linear(shape[1], shape[0], bias=False, dtype="float64")
    m.weight.data[...] = W
    nn.utils.parametrizations.orthogonal(m, orthogonal_map=omap, use_trivialization=triv)
    return m, tm


@pytest.mark.parametrize("triv", [True, False])
@pytest.mark.parametrize("omap", MAPS)
@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 5)])
def test_orthogonal_forward_equals_torch_for_the_same_original(rng, shape, omap, triv):
    m, tm = _pair(shape, omap, triv, rng.standard_normal(shape))
    assert sorted(m.state_dict()) == sorted(tm.state_dict())
    pl, tpl = m.parametrizations.weight, tm.parametrizations.weight
    if triv:  # the base of a non-square weight is completed with random columns: copy it
        pl[0].base.data[...] = tpl[0].base.numpy()
    pl.original.data[...] = tpl.original.detach().numpy()
    np.testing.assert_allclose(m.weight.numpy(), tm.weight.detach().numpy(), atol=1e-12)
    R = rng.standard_normal(shape) * 0.3
    with torch.no_grad():
        tpl.original.copy_(torch.tensor(R))
    pl.original.data[...] = R
    np.testing.assert_allclose(m.weight.numpy(), tm.weight.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize(("omap", "triv"), [("matrix_exp", True), ("cayley", True),
                                            ("householder", True), ("householder", False)])
def test_orthogonal_initial_state_equals_torch(rng, omap, triv):
    W = rng.standard_normal((4, 4)) if triv else rng.standard_normal((5, 3))
    m, tm = _pair(W.shape, omap, triv, W)
    pl, tpl = m.parametrizations.weight, tm.parametrizations.weight
    np.testing.assert_allclose(pl.original.numpy(), tpl.original.detach().numpy(), atol=1e-12)
    if triv:
        np.testing.assert_allclose(pl[0].base.numpy(), tpl[0].base.numpy(), atol=1e-12)
    np.testing.assert_allclose(m.weight.numpy(), tm.weight.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("omap", MAPS)
def test_orthogonal_training_keeps_the_weight_orthogonal(rng, omap):
    m = nn.Linear(3, 5, bias=False, dtype="float64")
    nn.utils.parametrizations.orthogonal(m, orthogonal_map=omap)
    opt = ng.optim.SGD(m.parameters(), lr=0.1)
    x, y = ng.tensor(rng.standard_normal((8, 3))), ng.tensor(rng.standard_normal((8, 5)))
    before = m.weight.numpy().copy()
    for _ in range(5):
        opt.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        opt.step()
    W = m.weight.numpy()
    assert np.abs(W - before).max() > 1e-3  # it trained
    np.testing.assert_allclose(W.T @ W, np.eye(3), atol=1e-10)


def test_orthogonal_errors():
    with pytest.raises(ValueError, match="orthogonal_map has to be one of"):
        nn.utils.parametrizations.orthogonal(nn.Linear(2, 2), orthogonal_map="qr")
    with pytest.raises(ValueError, match="expected a matrix or batch"):
        nn.utils.parametrizations.orthogonal(nn.Linear(2, 2), "bias")
    m = nn.utils.parametrizations.orthogonal(nn.Linear(3, 3, dtype="float64"),
                                             use_trivialization=False)
    with pytest.raises(NotImplementedError, match="not possible to assign"):
        m.weight = ng.eye(3, dtype="float64")
