"""Transposed and 3-D convolution, pooling with ceil_mode/indices, unpooling, adaptive max and
power-average pooling, unfold/fold, pixel shuffles and interpolate: values and gradients against
PyTorch (float64 and float32), finite differences, modules with PyTorch's weights, and errors."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional
rng = np.random.default_rng(0)


def _check(fn, tfn, *arrays, dtype=np.float64, outputs=1, ints=()):
    """fn(*tensors) and tfn(*torch tensors) agree in value, dtype and input gradients.

    Arrays at positions in ``ints`` are passed as integer tensors (no gradient)."""
    tol = dict(rtol=1e-7, atol=1e-10) if dtype == np.float64 else dict(rtol=1.3e-6, atol=1e-5)
    ours = [ng.tensor(a) if i in ints else ng.tensor(a.astype(dtype), requires_grad=True)
            for i, a in enumerate(arrays)]
    theirs = [torch.tensor(a) if i in ints else torch.tensor(a.astype(dtype), requires_grad=True)
              for i, a in enumerate(arrays)]
    yo, yt = fn(*ours), tfn(*theirs)
    if outputs == 2:
        (yo, io), (yt, it) = yo, yt
        np.testing.assert_array_equal(io.numpy(), it.numpy())
        assert io.dtype == np.int64
    assert tuple(yo.shape) == tuple(yt.shape) and yo.dtype == np.dtype(dtype)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), **tol)
    g = rng.standard_normal(yo.shape).astype(dtype)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    for i, (o, t) in enumerate(zip(ours, theirs)):
        if i not in ints:
            np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), err_msg=f"input {i}",
                                       **tol)


def _distinct(shape):
    """Values without ties (max pooling's gradient is then unambiguous)."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0


DTYPES = [np.float64, np.float32]


# --- convolution ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw,cin,cout,k", [
    (dict(), 4, 3, 3),
    (dict(stride=2, padding=1, output_padding=1), 4, 3, 3),
    (dict(stride=3, padding=2, dilation=2, output_padding=2, groups=2), 4, 6, 3),
    (dict(stride=2, dilation=3, output_padding=2, groups=4), 4, 4, 2),
])
def test_conv_transpose1d_matches_torch(kw, cin, cout, k, dtype):
    g = kw.get("groups", 1)
    x, w, b = (rng.standard_normal(s) for s in [(2, cin, 5), (cin, cout // g, k), (cout,)])
    _check(lambda x, w, b: F.conv_transpose1d(x, w, b, **kw),
           lambda x, w, b: TF.conv_transpose1d(x, w, b, **kw), x, w, b, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [
    dict(),
    dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0)),
    dict(stride=2, padding=1, dilation=(2, 1), groups=2, output_padding=1),
    dict(stride=(1, 3), padding=(0, 2), output_padding=(0, 2)),
])
def test_conv_transpose2d_matches_torch(kw, dtype):
    g = kw.get("groups", 1)
    x, w, b = (rng.standard_normal(s) for s in [(2, 4, 5, 4), (4, 6 // g, 3, 2), (6,)])
    _check(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw),
           lambda x, w, b: TF.conv_transpose2d(x, w, b, **kw), x, w, b, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_matches_torch(dtype):
    x, w, b = (rng.standard_normal(s) for s in [(2, 4, 5, 6, 4), (6, 2, 3, 2, 2), (6,)])
    kw = dict(stride=(2, 1, 1), padding=1, dilation=(1, 2, 1), groups=2)
    _check(lambda x, w, b: F.conv3d(x, w, b, **kw), lambda x, w, b: TF.conv3d(x, w, b, **kw),
           x, w, b, dtype=dtype)


# --- pooling ----------------------------------------------------------------------------------
POOLS = [
    ("max_pool1d", (2, 3, 10), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max_pool1d", (2, 3, 9), dict(kernel_size=2, dilation=2, ceil_mode=True)),
    ("max_pool2d", (2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=(1, 0), ceil_mode=True)),
    ("max_pool2d", (1, 2, 8, 7), dict(kernel_size=(2, 3), stride=(2, 1), dilation=(2, 1))),
    ("max_pool3d", (2, 2, 5, 6, 4), dict(kernel_size=2, stride=(2, 1, 2), padding=1)),
    ("max_pool3d", (1, 2, 5, 5, 5), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("avg_pool1d", (2, 3, 10), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("avg_pool1d", (2, 3, 10), dict(kernel_size=4, stride=3, padding=2,
                                    count_include_pad=False, ceil_mode=True)),
    ("avg_pool2d", (2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1,
                                      count_include_pad=False)),
    ("avg_pool2d", (2, 3, 7, 6), dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True)),
    ("avg_pool2d", (2, 3, 7, 6), dict(kernel_size=2, divisor_override=3)),
    ("avg_pool3d", (2, 2, 5, 6, 4), dict(kernel_size=2, stride=(2, 1, 2), padding=1,
                                         ceil_mode=True, count_include_pad=False)),
    ("avg_pool3d", (1, 2, 4, 5, 6), dict(kernel_size=(2, 3, 2))),
    ("lp_pool1d", (2, 3, 10), dict(norm_type=2, kernel_size=3, stride=2, ceil_mode=True)),
    ("lp_pool2d", (2, 3, 7, 6), dict(norm_type=3, kernel_size=(2, 3))),
    ("adaptive_max_pool1d", (2, 3, 10), dict(output_size=4)),
    ("adaptive_max_pool2d", (2, 3, 7, 9), dict(output_size=(3, 4))),
    ("adaptive_max_pool2d", (1, 2, 8, 6), dict(output_size=(4, 3))),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape,kw", POOLS)
def test_pooling_matches_torch(name, shape, kw, dtype):
    x = _distinct(shape)
    if name.startswith("lp"):
        x = np.abs(x) + 0.5  # PyTorch's lp_pool: a negative window sum of odd powers is NaN
    _check(lambda x: getattr(F, name)(x, **kw), lambda x: getattr(TF, name)(x, **kw), x,
           dtype=dtype)


@pytest.mark.parametrize("name,shape,kw", [p for p in POOLS if "max" in p[0]])
def test_pooling_indices_match_torch(name, shape, kw):
    _check(lambda x: getattr(F, name)(x, **kw, return_indices=True),
           lambda x: getattr(TF, name)(x, **kw, return_indices=True), _distinct(shape),
           outputs=2)


def test_max_pool_indices_pick_the_first_of_tied_maxima():
    x = np.zeros((1, 2, 6, 5))
    x[0, 1, ::2] = 1.0
    _check(lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True),
           lambda x: TF.max_pool2d(x, 3, 2, 1, return_indices=True), x, outputs=2)
    _check(lambda x: F.adaptive_max_pool2d(x, (4, 3), return_indices=True),
           lambda x: TF.adaptive_max_pool2d(x, (4, 3), return_indices=True), x, outputs=2)


@pytest.mark.parametrize("nd,shape,kw", [
    (1, (2, 3, 10), dict(kernel_size=2)),
    (1, (2, 3, 11), dict(kernel_size=3, stride=2, padding=1)),
    (2, (2, 3, 6, 7), dict(kernel_size=2)),
    (2, (2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),  # overlapping windows
])
def test_max_unpool_matches_torch(nd, shape, kw):
    pool, unpool = getattr(TF, f"max_pool{nd}d"), getattr(TF, f"max_unpool{nd}d")
    x = torch.tensor(_distinct(shape))
    y, idx = pool(x, **kw, return_indices=True)
    size = tuple(x.shape)
    _check(lambda y, i: getattr(F, f"max_unpool{nd}d")(y, i, **kw, output_size=size),
           lambda y, i: unpool(y, i, **kw, output_size=size), y.numpy(), idx.numpy(), ints=(1,))
    layer = getattr(nn, f"MaxUnpool{nd}d")(**kw)
    out = layer(ng.tensor(y.numpy()), ng.tensor(idx.numpy()), output_size=size)
    np.testing.assert_allclose(out.numpy(), unpool(y, idx, **kw, output_size=size).numpy())


def test_unfold_fold_match_torch():
    for kw in [dict(kernel_size=2), dict(kernel_size=(2, 3), dilation=(1, 2), padding=1,
                                         stride=(2, 1))]:
        x = rng.standard_normal((2, 3, 6, 7))
        _check(lambda x: F.unfold(x, **kw), lambda x: TF.unfold(x, **kw), x)
        cols = TF.unfold(torch.tensor(x), **kw).numpy()
        _check(lambda c: F.fold(c, (6, 7), **kw), lambda c: TF.fold(c, (6, 7), **kw), cols)
        _check(lambda c: F.fold(c, (6, 7), **kw), lambda c: TF.fold(c, (6, 7), **kw), cols[0])
    x = ng.tensor(rng.standard_normal((1, 2, 5, 5)))
    ones = F.fold(F.unfold(ng.tensor(np.ones((1, 2, 5, 5))), 3, padding=1), (5, 5), 3, padding=1)
    np.testing.assert_allclose(  # fold ∘ unfold multiplies by how many windows cover a pixel
        F.fold(F.unfold(x, 3, padding=1), (5, 5), 3, padding=1).numpy(), (x * ones).numpy())


def test_pixel_shuffle_matches_torch():
    x = rng.standard_normal((2, 18, 3, 4))
    _check(lambda x: F.pixel_shuffle(x, 3), lambda x: TF.pixel_shuffle(x, 3), x)
    _check(lambda x: F.pixel_unshuffle(x, 2), lambda x: TF.pixel_unshuffle(x, 2),
           rng.standard_normal((3, 2, 4, 6)))
    y = ng.tensor(x)
    np.testing.assert_array_equal(F.pixel_unshuffle(F.pixel_shuffle(y, 3), 3).numpy(), x)


INTERP = [
    ((2, 3, 5), dict(size=8, mode="nearest")),
    ((2, 3, 7), dict(scale_factor=0.6, mode="nearest")),
    ((2, 3, 5, 4), dict(scale_factor=(1.7, 2.5), mode="nearest")),
    ((2, 3, 5, 4), dict(size=(3, 9), mode="nearest-exact")),
    ((1, 2, 3, 4, 5), dict(scale_factor=2, mode="nearest")),
    ((2, 3, 5), dict(size=9, mode="linear")),
    ((2, 3, 5), dict(size=9, mode="linear", align_corners=True)),
    ((2, 3, 5, 4), dict(size=(7, 3), mode="bilinear")),
    ((2, 3, 5, 4), dict(scale_factor=1.5, mode="bilinear", align_corners=True)),
    ((2, 3, 5, 6), dict(scale_factor=(2.3, 0.7), mode="bilinear")),
    ((2, 3, 5, 4), dict(size=(9, 7), mode="bicubic")),
    ((2, 3, 6, 5), dict(size=(4, 3), mode="bicubic", align_corners=True)),
    ((2, 3, 5, 4), dict(scale_factor=2.5, mode="bicubic", recompute_scale_factor=True)),
    ((1, 2, 3, 4, 5), dict(size=(5, 4, 7), mode="trilinear")),
    ((2, 3, 9, 7), dict(size=(4, 3), mode="area")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kw", INTERP)
def test_interpolate_matches_torch(shape, kw, dtype):
    _check(lambda x: F.interpolate(x, **kw), lambda x: TF.interpolate(x, **kw),
           rng.standard_normal(shape), dtype=dtype)


def test_upsample_modules_match_torch():
    x = rng.standard_normal((2, 3, 4, 5))
    for ours, theirs in [(nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2)),
                         (nn.Upsample(size=(7, 3), mode="bicubic"),
                          torch.nn.Upsample(size=(7, 3), mode="bicubic")),
                         (nn.UpsamplingBilinear2d(scale_factor=2),
                          torch.nn.UpsamplingBilinear2d(scale_factor=2)),
                         (nn.UpsamplingNearest2d(size=(6, 6)),
                          torch.nn.UpsamplingNearest2d(size=(6, 6))),
                         (nn.PixelShuffle(1), torch.nn.PixelShuffle(1))]:
        _check(ours, theirs, x)


@pytest.mark.parametrize("f,shapes", [
    (lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1,
                                        dilation=2), [(2, 2, 4), (2, 3, 2), (3,)]),
    (lambda x, w: F.conv_transpose2d(x, w, stride=(2, 1), padding=1, groups=2),
     [(1, 4, 3, 3), (4, 1, 2, 3)]),
    (lambda x, w: F.conv3d(x, w, padding=1, stride=2), [(1, 2, 3, 3, 3), (2, 2, 2, 2, 2)]),
    (lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [(1, 2, 6, 5)]),
    (lambda x: F.lp_pool1d(ng.abs(x) + 0.5, 2, 3, 2), [(1, 2, 7)]),
    (lambda x: F.interpolate(x, size=(5, 3), mode="bicubic"), [(1, 2, 3, 4)]),
    (lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear"), [(1, 2, 3, 4)]),
    (lambda x: F.fold(x, (4, 5), 2, padding=1), [(1, 8, 30)]),
    (lambda x: F.unfold(x, 2, stride=2, dilation=1), [(1, 2, 4, 5)]),
])
def test_conv_pool_gradcheck(f, shapes):
    assert ng.gradcheck(f, *[rng.standard_normal(s) for s in shapes], atol=1e-6)


def test_conv_transpose_second_order_and_max_pool_gradcheck():
    x, w = rng.standard_normal((1, 2, 4)), rng.standard_normal((2, 2, 3))
    assert ng.gradcheck(lambda x, w: F.conv_transpose1d(x, w, stride=2), x, w, order=2)
    assert ng.gradcheck(lambda x: F.max_pool2d(x, 2, ceil_mode=True, return_indices=True)[0],
                        _distinct((1, 2, 5, 5)))
    assert ng.gradcheck(lambda x: F.adaptive_max_pool2d(x, (2, 3)), _distinct((1, 2, 5, 7)))


@pytest.mark.parametrize("ours,theirs,shape", [
    (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     lambda: torch.nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
     (2, 4, 5)),
    (lambda: nn.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), dilation=(1, 2), bias=False),
     lambda: torch.nn.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), dilation=(1, 2), bias=False),
     (2, 3, 4, 5)),
    (lambda: nn.Conv3d(2, 4, 2, padding=1), lambda: torch.nn.Conv3d(2, 4, 2, padding=1),
     (1, 2, 3, 4, 3)),
    (lambda: nn.MaxPool3d(2, ceil_mode=True), lambda: torch.nn.MaxPool3d(2, ceil_mode=True),
     (1, 2, 5, 4, 3)),
    (lambda: nn.AvgPool3d(2, padding=1, count_include_pad=False),
     lambda: torch.nn.AvgPool3d(2, padding=1, count_include_pad=False), (1, 2, 5, 4, 3)),
    (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), lambda: torch.nn.MaxPool2d(3, 2, 1,
                                                                               ceil_mode=True),
     (2, 3, 6, 6)),
    (lambda: nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     lambda: torch.nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 3, 8)),
    (lambda: nn.AdaptiveMaxPool1d(3), lambda: torch.nn.AdaptiveMaxPool1d(3), (2, 3, 8)),
    (lambda: nn.AdaptiveMaxPool2d((3, 2)), lambda: torch.nn.AdaptiveMaxPool2d((3, 2)),
     (2, 3, 7, 5)),
    (lambda: nn.LPPool1d(2, 3), lambda: torch.nn.LPPool1d(2, 3), (2, 3, 8)),
    (lambda: nn.LPPool2d(2, 2), lambda: torch.nn.LPPool2d(2, 2), (2, 3, 6, 4)),
    (lambda: nn.PixelShuffle(2), lambda: torch.nn.PixelShuffle(2), (2, 8, 3, 3)),
    (lambda: nn.PixelUnshuffle(2), lambda: torch.nn.PixelUnshuffle(2), (2, 2, 4, 6)),
    (lambda: nn.Unfold(2, padding=1), lambda: torch.nn.Unfold(2, padding=1), (2, 2, 3, 4)),
    (lambda: nn.Fold((3, 4), 2), lambda: torch.nn.Fold((3, 4), 2), (2, 8, 6)),
])
def test_conv_pool_modules_match_torch(ours, theirs, shape):
    o, t = ours().double(), theirs().double()
    o.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in t.state_dict().items()})
    assert [n for n, _ in o.named_parameters()] == [n for n, _ in t.named_parameters()]
    x = np.abs(_distinct(shape)) + 0.5
    _check(o, t, x)
    if not list(o.parameters()):
        return
    # parameters' gradients: one more pass
    xo, xt = ng.tensor(x), torch.tensor(x)
    yo, yt = o(xo), t(xt)
    g = rng.standard_normal(yo.shape)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    tp = dict(t.named_parameters())
    for name, p in o.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), rtol=1e-7, atol=1e-10)


def test_conv_transpose_default_init_is_pytorchs():
    m = nn.ConvTranspose2d(4, 6, 3, groups=2)
    assert m.weight.shape == (4, 3, 3, 3) and m.bias.shape == (6,)
    bound = 1 / np.sqrt(3 * 9)  # fan_in of the transposed weight: (out/groups)·k
    assert np.abs(m.weight.numpy()).max() <= bound and np.abs(m.bias.numpy()).max() <= bound
    assert m.weight.numpy().std() > bound / 3


def test_conv_transpose_output_size_argument():
    m = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    t = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1).double()
    m.double().load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                                t.state_dict().items()})
    x = rng.standard_normal((1, 2, 4, 4))
    out = m(ng.tensor(x), output_size=(8, 8))
    ref = t(torch.tensor(x), output_size=(8, 8))
    assert out.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*output_size \(10, 10\).*\(7, 7\) to "
                                         r"\(8, 8\)"):
        m(ng.tensor(x), output_size=(10, 10))


def test_conv_pool_errors_name_the_op():
    x = ng.ones(1, 2, 5)
    with pytest.raises(ng.ShapeError, match=r"conv_transpose1d: input has 2 channels"):
        F.conv_transpose1d(x, ng.ones(3, 2, 2))
    with pytest.raises(ValueError, match="conv_transpose1d: output_padding"):
        F.conv_transpose1d(x, ng.ones(2, 2, 2), stride=2, output_padding=2)
    with pytest.raises(ng.ShapeError, match=r"conv3d: expected input of shape \(N, C, D, H, W\)"):
        F.conv3d(x, ng.ones(2, 2, 1, 1, 1))
    with pytest.raises(ng.ShapeError, match=r"max_pool1d: kernel size \(7,\) is larger than "
                                            r"the padded input"):
        F.max_pool1d(x, 7)
    with pytest.raises(ValueError, match="avg_pool2d: padding"):
        F.avg_pool2d(ng.ones(1, 1, 4, 4), 2, padding=2)
    with pytest.raises(IndexError, match="max_unpool1d: index 9 is out of range"):
        F.max_unpool1d(ng.ones(1, 1, 2), ng.tensor(np.array([[[0, 9]]])), 2)
    with pytest.raises(ng.ShapeError, match="max_unpool1d: indices"):
        F.max_unpool1d(ng.ones(1, 1, 2), ng.tensor(np.array([[[0.0, 1.0]]])), 2)
    with pytest.raises(ng.ShapeError, match="fold: input"):
        F.fold(ng.ones(1, 8, 5), (4, 5), 2)
    with pytest.raises(ng.ShapeError, match="pixel_shuffle"):
        F.pixel_shuffle(ng.ones(1, 5, 2, 2), 2)
    with pytest.raises(ng.ShapeError, match="interpolate: mode 'bilinear' takes 4-d"):
        F.interpolate(x, size=4, mode="bilinear")
    with pytest.raises(ValueError, match="interpolate: align_corners"):
        F.interpolate(x, size=4, align_corners=True)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ng.DTypeError, match="conv_transpose1d: expected floating input"):
        F.conv_transpose1d(ng.tensor(np.ones((1, 2, 3), np.int64)), ng.ones(2, 2, 2))
    with pytest.raises(ValueError, match=r"ConvTranspose1d: in_channels \(3\)"):
        nn.ConvTranspose1d(3, 4, 2, groups=2)


COMPOSITES = [
    (lambda x, w: F.conv_transpose1d(x, w, stride=2, padding=1, output_padding=1),
     [(2, 4, 5), (4, 3, 3)]),
    (lambda x, w: F.conv_transpose2d(x, w, stride=2, groups=2), [(2, 4, 3, 3), (4, 1, 2, 2)]),
    (lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)[0], [(2, 2, 5, 6)]),
    (lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [(2, 3, 8)]),
    (lambda x: F.adaptive_max_pool2d(x, (2, 3)), [(2, 2, 5, 7)]),
    (lambda x: F.unfold(x, 2, padding=1), [(2, 2, 3, 4)]),
    (lambda x: F.fold(x, (3, 4), 2), [(2, 8, 6)]),
    (lambda x: F.pixel_shuffle(x, 2), [(2, 8, 2, 3)]),
    (lambda x: F.interpolate(x, size=(5, 3), mode="bicubic"), [(2, 2, 3, 4)]),
    (lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), [(2, 2, 3)]),
    (lambda x, w, b: F.group_norm(x, 2, w, b), [(2, 4, 5), (4,), (4,)]),
    (lambda x: F.local_response_norm(x, 3), [(2, 4, 5)]),
    (lambda x, w: F.rms_norm(x, 5, w), [(3, 5), (5,)]),
    (lambda a, b, w: F.bilinear(a, b, w), [(3, 2), (3, 4), (2, 2, 4)]),
]


@pytest.mark.parametrize("f,shapes", COMPOSITES)
def test_composites_under_vmap_and_jvp(f, shapes):
    """vmap over a leading batch equals a loop; the JVP equals the VJP's transpose."""
    batch = 3
    stacked = [rng.standard_normal((batch,) + s) for s in shapes]
    got = ng.vmap(f)(*[ng.tensor(a) for a in stacked]).numpy()
    want = np.stack([f(*[ng.tensor(a[i]) for a in stacked]).numpy() for i in range(batch)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    xs = [ng.tensor(a[0]) for a in stacked]
    us = [ng.tensor(rng.standard_normal(s)) for s in shapes]
    out, tout = ng.jvp(f, xs, us)
    v = rng.standard_normal(out.shape)
    ins = [ng.tensor(a[0], requires_grad=True) for a in stacked]
    (f(*ins) * ng.tensor(v)).sum().backward()
    lhs = float((tout.numpy() * v).sum())
    rhs = sum(float((i.grad.numpy() * u.numpy()).sum()) for i, u in zip(ins, us))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name,size", [("adaptive_avg_pool3d", (0, 2, 2)),
                                       ("adaptive_max_pool3d", (0, 2, 2)),
                                       ("adaptive_avg_pool2d", (2, 0)),
                                       ("adaptive_max_pool2d", (0, None)),
                                       ("adaptive_avg_pool1d", 0), ("adaptive_max_pool1d", 0)])
def test_adaptive_pool_to_an_empty_output_is_pytorchs(name, size):
    """An output size of 0 gives PyTorch's empty output (its gradient: zeros)."""
    nd = int(name[-2])
    x = np.random.default_rng(0).random((2, 3) + (4,) * nd)
    want = getattr(torch.nn.functional, name)(torch.tensor(x), size)
    xn = ng.tensor(x, requires_grad=True)
    got = getattr(ng.nn.functional, name)(xn, size)
    assert got.shape == tuple(want.shape)
    got.sum().backward()
    assert not xn.grad.numpy().any()
    if "max" in name:
        _, idx = getattr(ng.nn.functional, name)(xn, size, return_indices=True)
        assert idx.shape == got.shape and idx.dtype == ng.int64
