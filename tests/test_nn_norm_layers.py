"""GroupNorm, InstanceNorm, LocalResponseNorm, RMSNorm, Dropout1d/2d/3d, AlphaDropout, Bilinear,
EmbeddingBag and Unflatten: outputs and every gradient against PyTorch with the same weights
(float64 and float32), running statistics, finite differences, dropout statistics, errors."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
rng = np.random.default_rng(0)


def _tols(dtype):
    return dict(rtol=1e-7, atol=1e-10) if dtype == np.float64 else dict(rtol=1.3e-6, atol=1e-5)


def _load(ours, theirs, dtype):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    theirs.to(tdt)
    ours.double() if dtype == np.float64 else ours.float()
    with torch.no_grad():  # move the affine parameters off their 1 / 0 init
        for p in theirs.parameters():
            p.add_(torch.tensor(rng.standard_normal(tuple(p.shape)) * 0.3, dtype=tdt))
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})
    return ours


def _compare(ours, theirs, *inputs, dtype=np.float64, train=True, ints=()):
    """Same inputs through both: output, input gradients and parameter gradients agree."""
    tol = _tols(dtype)
    _load(ours, theirs, dtype)
    ours.train(train)
    theirs.train(train)
    xo = [ng.tensor(a) if i in ints else ng.tensor(a.astype(dtype), requires_grad=True)
          for i, a in enumerate(inputs)]
    xt = [torch.tensor(a) if i in ints else torch.tensor(a.astype(dtype), requires_grad=True)
          for i, a in enumerate(inputs)]
    yo, yt = ours(*xo), theirs(*xt)
    assert tuple(yo.shape) == tuple(yt.shape) and yo.dtype == np.dtype(dtype)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), **tol)
    g = rng.standard_normal(yo.shape).astype(dtype)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    for i, (o, t) in enumerate(zip(xo, xt)):
        if i not in ints:
            np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), err_msg=f"input {i}",
                                       **tol)
    tp = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(tp)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), err_msg=name, **tol)
    return ours, theirs


DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make,shape", [
    (lambda m: m.GroupNorm(3, 6), (4, 6, 5)),
    (lambda m: m.GroupNorm(2, 4, eps=1e-3), (2, 4, 3, 5)),
    (lambda m: m.GroupNorm(4, 4, affine=False), (3, 4, 7)),
    (lambda m: m.InstanceNorm1d(3), (4, 3, 6)),
    (lambda m: m.InstanceNorm1d(3, affine=True), (3, 6)),
    (lambda m: m.InstanceNorm2d(3, affine=True), (2, 3, 4, 5)),
    (lambda m: m.InstanceNorm3d(2, affine=True), (2, 2, 3, 4, 2)),
    (lambda m: m.LocalResponseNorm(3), (2, 5, 4)),
    (lambda m: m.LocalResponseNorm(4, alpha=0.1, beta=0.6, k=2.0), (2, 6, 3, 4)),
    (lambda m: m.RMSNorm(5), (3, 4, 5)),
    (lambda m: m.RMSNorm((4, 5), eps=1e-4), (3, 4, 5)),
    (lambda m: m.RMSNorm(5, elementwise_affine=False), (3, 5)),
])
def test_norms_match_torch(make, shape, dtype):
    _compare(make(nn), make(torch.nn), rng.standard_normal(shape) * 2 + 0.5, dtype=dtype)


def test_instance_norm_running_statistics_match_torch():
    ours, theirs = nn.InstanceNorm2d(3, track_running_stats=True, affine=True), \
        torch.nn.InstanceNorm2d(3, track_running_stats=True, affine=True)
    for _ in range(2):
        ours.zero_grad()
        theirs.zero_grad()
        _compare(ours, theirs, rng.standard_normal((4, 3, 3, 5)) * 3 + 1)
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(),
                               rtol=1e-10)
    np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy(), rtol=1e-10)
    x = rng.standard_normal((2, 3, 4, 4))
    ours.eval()
    theirs.eval()
    np.testing.assert_allclose(ours(ng.tensor(x)).numpy(),
                               theirs(torch.tensor(x)).detach().numpy(), rtol=1e-9)


def test_bilinear_matches_torch():
    for dtype in DTYPES:
        for bias in (True, False):
            _compare(nn.Bilinear(3, 4, 5, bias=bias), torch.nn.Bilinear(3, 4, 5, bias=bias),
                     rng.standard_normal((6, 3)), rng.standard_normal((6, 4)), dtype=dtype)
    _compare(nn.Bilinear(3, 2, 2), torch.nn.Bilinear(3, 2, 2), rng.standard_normal((2, 5, 3)),
             rng.standard_normal((2, 5, 2)))
    m = nn.Bilinear(9, 4, 5)
    assert np.abs(m.weight.numpy()).max() <= 1 / 3 and m.weight.numpy().std() > 0.1


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("case", ["2d", "offsets", "last_offset", "padding", "weights"])
def test_embedding_bag_matches_torch(mode, case):
    if case == "weights" and mode != "sum":
        pytest.skip("per_sample_weights only with mode='sum'")
    kw = dict(mode=mode)
    idx = rng.integers(0, 7, 9)
    offsets = np.array([0, 2, 2, 6])  # an empty bag in the middle
    psw = None
    if case == "2d":
        args = (idx.reshape(3, 3),)
    elif case == "last_offset":
        kw["include_last_offset"] = True
        args = (idx, np.array([0, 3, 3, 9]))
    else:
        args = (idx, offsets)
    if case == "padding":
        kw["padding_idx"] = int(idx[0])
    if case == "weights":
        psw = rng.standard_normal(9)
    ours, theirs = nn.EmbeddingBag(7, 4, **kw), torch.nn.EmbeddingBag(7, 4, **kw)
    ours.double()
    theirs.double()
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})
    a_o = [ng.tensor(a) for a in args]
    a_t = [torch.tensor(a) for a in args]
    kwo, kwt = {}, {}
    if psw is not None:
        wo, wt = ng.tensor(psw, requires_grad=True), torch.tensor(psw, requires_grad=True)
        kwo, kwt = dict(per_sample_weights=wo), dict(per_sample_weights=wt)
    yo, yt = ours(*a_o, **kwo), theirs(*a_t, **kwt)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-7, atol=1e-12)
    g = rng.standard_normal(yo.shape)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-7,
                               atol=1e-12)
    if psw is not None:
        np.testing.assert_allclose(wo.grad.numpy(), wt.grad.numpy(), rtol=1e-7)


def test_embedding_bag_padding_row_starts_at_zero_and_errors():
    m = nn.EmbeddingBag(5, 3, padding_idx=2)
    assert not m.weight.numpy()[2].any() and m.weight.numpy()[0].any()
    with pytest.raises(IndexError, match="embedding_bag: index 5 is out of range for 5"):
        m(ng.tensor(np.array([[1, 5]])))
    with pytest.raises(ValueError, match="embedding_bag: 1-d input needs offsets"):
        m(ng.tensor(np.array([1, 2])))
    with pytest.raises(ValueError, match="per_sample_weights need mode='sum'"):
        m(ng.tensor(np.array([[1, 2]])), per_sample_weights=ng.ones(1, 2))
    with pytest.raises(ng.DTypeError, match="embedding_bag: indices must be an integer"):
        m(ng.ones(2, 2))
    with pytest.raises(ValueError, match="offsets must be"):
        m(ng.tensor(np.array([1, 2])), ng.tensor(np.array([1])))


@pytest.mark.parametrize("norm_type", [2.0, 1.0])
def test_embedding_bag_max_norm_matches_torch(norm_type):
    """The looked-up rows are scaled down to max_norm in the weight itself, then bagged."""
    w = rng.standard_normal((7, 4)) * 2
    idx, offsets = rng.integers(0, 7, 9), np.array([0, 4])
    ours = nn.EmbeddingBag(7, 4, max_norm=1.0, norm_type=norm_type, mode="sum",
                           _weight=ng.tensor(w.copy()))
    theirs = torch.nn.EmbeddingBag(7, 4, max_norm=1.0, norm_type=norm_type, mode="sum",
                                   _weight=torch.tensor(w.copy()))
    yo, yt = ours(ng.tensor(idx), ng.tensor(offsets)), theirs(torch.tensor(idx),
                                                                torch.tensor(offsets))
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.weight.numpy(), theirs.weight.detach().numpy(), rtol=1e-12)
    untouched = sorted(set(range(7)) - set(idx.tolist()))
    np.testing.assert_array_equal(ours.weight.numpy()[untouched], w[untouched])


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bag_scale_grad_by_freq_divides_by_each_rows_count(mode):
    """Each row's gradient over how often its index occurs in the input: the bags of PyTorch's
    ``embedding(scale_grad_by_freq=True)`` rows, summed or averaged. (PyTorch 2.13's own
    embedding_bag gives a row seen once 1/2 in ``[[3, 3, 7]]``: its counts are misaligned.)"""
    idx, offsets = np.array([1, 2, 4, 5, 4, 3, 2, 9, 4]), np.array([0, 4])
    w = rng.standard_normal((10, 3))
    wo = ng.tensor(w, requires_grad=True)
    yo = F.embedding_bag(ng.tensor(idx), wo, ng.tensor(offsets), mode=mode,
                         scale_grad_by_freq=True)
    wt = torch.tensor(w, requires_grad=True)
    rows = torch.nn.functional.embedding(torch.tensor(idx), wt, scale_grad_by_freq=True)
    bags = [rows[:4], rows[4:]]
    yt = torch.stack([b.sum(0) if mode == "sum" else b.mean(0) for b in bags])
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(yo.shape)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(wo.grad.numpy(), wt.grad.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="max mode does not support scaling"):
        F.embedding_bag(ng.tensor(idx), wo, ng.tensor(offsets), mode="max",
                        scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="max mode does not support scaling"):
        nn.EmbeddingBag(10, 3, mode="max", scale_grad_by_freq=True)
    with pytest.raises(ValueError, match="sparse=True is not supported"):
        nn.EmbeddingBag(10, 3, sparse=True)


def test_unflatten_matches_torch():
    x = rng.standard_normal((2, 12, 3))
    for dim, size in [(1, (3, 4)), (-2, (2, -1, 3)), (2, (3, 1))]:
        np.testing.assert_array_equal(nn.Unflatten(dim, size)(ng.tensor(x)).numpy(),
                                      torch.nn.Unflatten(dim, size)(torch.tensor(x)).numpy())
    with pytest.raises(ng.ShapeError, match=r"Unflatten\(dim=1, unflattened_size=\(5, 2\)\)"):
        nn.Unflatten(1, (5, 2))(ng.tensor(x))


@pytest.mark.parametrize("cls,shape,channel_axes", [
    ("Dropout1d", (20, 30, 8), 2), ("Dropout1d", (30, 8), 1),
    ("Dropout2d", (20, 30, 3, 4), 2), ("Dropout2d", (30, 20, 4), 2),
    ("Dropout3d", (10, 30, 2, 3, 2), 2),
])
def test_channel_dropout_zeroes_whole_channels(cls, shape, channel_axes):
    layer = getattr(nn, cls)(0.4, generator=ng.Generator(seed=0))
    x = ng.tensor(rng.random(shape) + 1.0, requires_grad=True)
    y = layer(x)
    ratio = (y.numpy() / x.numpy()).reshape(int(np.prod(shape[:channel_axes])), -1)
    kept = np.isclose(ratio, 1 / 0.6).all(1)
    assert (kept | (ratio == 0).all(1)).all()     # each channel all kept or all dropped
    assert abs(1 - kept.mean() - 0.4) < 0.12
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy() / x.numpy())
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ng.ShapeError, match=cls.lower()):
        layer.train()(ng.ones(*shape[-1:]))


def test_alpha_dropout_keeps_mean_and_variance():
    x = ng.tensor(rng.standard_normal(400_000))
    y = F.alpha_dropout(x, 0.2, training=True, generator=ng.Generator(seed=3)).numpy()
    assert abs(y.mean()) < 0.01 and abs(y.std() - 1) < 0.01
    a = 1 / np.sqrt((1.7580993408473766 ** 2 * 0.2 + 1) * 0.8)
    dropped = np.isclose(y, -1.7580993408473766 * a * 0.8, rtol=0, atol=1e-12)
    assert abs(dropped.mean() - 0.2) < 0.01  # dropped units all take one value: -α'·a·(1 - p)
    m = nn.AlphaDropout(0.2)
    m.eval()
    assert m(x) is x
    xg = ng.tensor(rng.standard_normal(100), requires_grad=True)
    out = F.alpha_dropout(xg, 0.5, training=True, generator=ng.Generator(seed=1))
    out.sum().backward()
    assert set(np.round(xg.grad.numpy(), 12)) <= {0.0, round(1 / np.sqrt(
        (1.7580993408473766 ** 2 * 0.5 + 1) * 0.5), 12)}


_BAG, _OFFSETS = ng.tensor(np.array([0, 4, 1, 1, 3, 2])), ng.tensor(np.array([0, 2, 2]))


@pytest.mark.parametrize("f,shapes", [
    (lambda x, w, b: F.group_norm(x, 2, w, b), [(3, 4, 3), (4,), (4,)]),
    (lambda x, w, b: F.instance_norm(x, weight=w, bias=b), [(2, 3, 4), (3,), (3,)]),
    (lambda x: F.local_response_norm(x, 3, alpha=0.5), [(2, 4, 3)]),
    (lambda x, w: F.rms_norm(x, 3, w), [(2, 3), (3,)]),
    (lambda a, b, w, c: F.bilinear(a, b, w, c), [(3, 2), (3, 4), (2, 2, 4), (2,)]),
    (lambda w, p: F.embedding_bag(_BAG, w, _OFFSETS, mode="sum", per_sample_weights=p),
     [(5, 3), (6,)]),
    (lambda w: F.embedding_bag(_BAG, w, _OFFSETS, mode="mean", padding_idx=1), [(5, 3)]),
    (lambda w: F.embedding_bag(_BAG, w, _OFFSETS, mode="max"), [(5, 3)]),
])
def test_norm_layers_gradcheck(f, shapes):
    assert ng.gradcheck(f, *[rng.standard_normal(s) for s in shapes], atol=1e-6)
    assert ng.gradcheck(f, *[rng.standard_normal(s) for s in shapes], atol=1e-6, order=2)


def test_norm_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"GroupNorm: num_channels \(5\)"):
        nn.GroupNorm(2, 5)
    with pytest.raises(ng.ShapeError, match=r"GroupNorm\(2, 4\): expected \(N, 4, ...\)"):
        nn.GroupNorm(2, 4)(ng.ones(2, 3, 5))
    with pytest.raises(ng.ShapeError, match=r"InstanceNorm2d\(3\)"):
        nn.InstanceNorm2d(3, affine=True)(ng.ones(2, 4, 3, 3))
    with pytest.raises(ValueError, match="instance_norm: need more than one spatial"):
        nn.InstanceNorm1d(3)(ng.ones(2, 3, 1))
    with pytest.raises(ng.ShapeError, match="rms_norm: input"):
        nn.RMSNorm(4)(ng.ones(2, 3))
    with pytest.raises(ng.ShapeError, match="local_response_norm"):
        nn.LocalResponseNorm(2)(ng.ones(2, 3))
    with pytest.raises(ng.ShapeError, match="bilinear: need"):
        nn.Bilinear(3, 4, 2)(ng.ones(2, 3), ng.ones(2, 3))
