"""Spatial sampling (affine_grid, grid_sample), fractional max pooling, feature alpha dropout,
the adaptive softmax, the ``*_with_indices`` aliases and the multi-label margin, distance
triplet and NLLLoss2d losses against PyTorch: values and gradients in float64 (every grid_sample
mode, padding and corner convention, grids reaching outside [-1, 1]), float32 kept, reprs,
errors, a central-difference gradcheck, jit and vmap."""

import itertools
import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import DTypeError, ShapeError
from nodegrad.testing import compare_with_torch, gradcheck

torch = pytest.importorskip("torch")
F, TF = nn.functional, torch.nn.functional
TOL = {"rtol": 1e-10, "atol": 1e-12}
REDS = ("mean", "sum", "none")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _both(ours, theirs, arrays, rng, tol):
    """Values, dtype and the gradients of every float input of ours against torch's, for one
    random cotangent; torch's missing gradients count as zeros."""
    xo = [ng.tensor(a, requires_grad=True) for a in arrays]
    xt = [torch.tensor(a, requires_grad=True) for a in arrays]
    yo, yt = ours(*xo), theirs(*xt)
    assert str(yo.dtype) == str(yt.dtype).replace("torch.", "")
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), **tol)
    v = rng.standard_normal(tuple(yt.shape)).astype(arrays[0].dtype)
    (yo * ng.tensor(v)).sum().backward()
    (yt * torch.tensor(v)).sum().backward()
    for a, b in zip(xo, xt):
        got = np.zeros(a.shape) if a.grad is None else a.grad.numpy()
        want = np.zeros(a.shape) if b.grad is None else b.grad.numpy()
        np.testing.assert_allclose(got, want, **tol)


# --- grid_sample ------------------------------------------------------------------------------
_CASES = [(nd, mode, pad, ac)
          for nd, mode, pad, ac in itertools.product((2, 3), ("bilinear", "nearest", "bicubic"),
                                                     ("zeros", "border", "reflection"),
                                                     (False, True))
          if not (nd == 3 and mode == "bicubic")]


@pytest.mark.parametrize("nd,mode,pad,ac", _CASES)
def test_grid_sample_matches_torch(rng, nd, mode, pad, ac):
    """Random grids spanning [-2.5, 2.5] (outside the image on every side, several
    reflections deep), both gradients."""
    sp, out = ((5, 6), (4, 7)) if nd == 2 else ((3, 4, 5), (2, 3, 4))
    x = rng.standard_normal((2, 3) + sp)
    g = rng.uniform(-2.5, 2.5, (2,) + out + (nd,))
    kw = {"mode": mode, "padding_mode": pad, "align_corners": ac}
    _both(lambda a, b: F.grid_sample(a, b, **kw), lambda a, b: TF.grid_sample(a, b, **kw),
          [x, g], rng, TOL)
    # float32 stays float32 and agrees to float32 precision
    _both(lambda a, b: F.grid_sample(a, b, **kw), lambda a, b: TF.grid_sample(a, b, **kw),
          [x.astype(np.float32), g.astype(np.float32)], rng, {"rtol": 1e-4, "atol": 1e-4})


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
def test_grid_sample_on_borders_centres_and_ties(rng, mode, pad):
    """Points exactly on the borders (no grid gradient there in PyTorch), on pixel centres,
    halfway between them (nearest rounds half to even), far outside, and images one pixel
    wide."""
    edges = np.array([-1.0, 1.0, 0.0, 0.5, -0.5, 0.25, -5.3, 4.7, 3.1, -2.2, 1.5, -1.5])
    for (h, w), ac in itertools.product(((4, 5), (1, 5), (1, 1), (2, 2)), (False, True)):
        x = rng.standard_normal((1, 2, h, w))
        centres = np.arange(2 * w + 1) / w - 1
        for axis in (edges, centres):
            g = np.stack(np.meshgrid(axis, axis[::-1]), -1)[None]
            kw = {"mode": mode, "padding_mode": pad, "align_corners": ac}
            _both(lambda a, b: F.grid_sample(a, b, **kw),
                  lambda a, b: TF.grid_sample(a, b, **kw), [x, g], rng, TOL)


def test_grid_sample_nearest_gives_the_grid_no_gradient(rng):
    x = ng.tensor(rng.standard_normal((1, 1, 4, 4)), requires_grad=True)
    g = ng.tensor(rng.uniform(-1, 1, (1, 3, 3, 2)), requires_grad=True)
    (F.grid_sample(x, g, mode="nearest") * 2.0).sum().backward()
    assert g.grad is None or not g.grad.numpy().any()
    assert x.grad.numpy().sum() == pytest.approx(18.0)  # each of the 9 points reads one pixel


def test_grid_sample_gradcheck_bilinear_to_second_order(rng):
    """Central differences on input and grid, and on the gradient itself (points kept off the
    pixel lattice, where bilinear interpolation is smooth)."""
    x = rng.standard_normal((1, 2, 4, 5))
    g = rng.uniform(-1.2, 1.2, (1, 3, 2, 2))
    for pad in ("zeros", "border", "reflection"):
        gradcheck(lambda a, b: F.grid_sample(a, b, padding_mode=pad), x, g, order=2)
    gradcheck(lambda a, b: F.grid_sample(a, b, padding_mode="zeros", align_corners=True),
              rng.standard_normal((1, 1, 3, 3, 4)), rng.uniform(-1.1, 1.1, (1, 2, 2, 2, 3)))


def test_grid_sample_identity_and_constant_padding(rng):
    """The identity affine grid reproduces the image; zeros padding reads 0 outside, border
    padding the edge."""
    x = rng.standard_normal((2, 3, 5, 4))
    for ac in (False, True):
        grid = F.affine_grid(ng.tensor(np.tile(np.eye(2, 3), (2, 1, 1))), x.shape, ac)
        for mode in ("bilinear", "nearest", "bicubic"):
            y = F.grid_sample(ng.tensor(x), grid, mode, align_corners=ac)
            np.testing.assert_allclose(y.numpy(), x, atol=1e-12)
    far = ng.tensor(np.full((2, 1, 1, 2), 3.0))
    assert not F.grid_sample(ng.tensor(x), far).numpy().any()
    np.testing.assert_allclose(F.grid_sample(ng.tensor(x), far, padding_mode="border").numpy(),
                               x[:, :, -1:, -1:])


def test_spatial_transformer_rotation_matches_torch(rng):
    """affine_grid + grid_sample as in a spatial transformer: a rotation of the image, its
    gradients to the angle's matrix and the image; a quarter turn is np.rot90."""
    x = rng.standard_normal((2, 3, 8, 8))
    a = np.array([0.3, -1.1])
    theta = np.stack([np.array([[math.cos(t), -math.sin(t), 0.1], [math.sin(t), math.cos(t),
                                                                     -0.2]]) for t in a])

    def ours(img, th):
        return F.grid_sample(img, F.affine_grid(th, img.shape, False), align_corners=False)

    def theirs(img, th):
        return TF.grid_sample(img, TF.affine_grid(th, img.shape, False), align_corners=False)

    _both(ours, theirs, [x, theta], rng, TOL)
    quarter = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    y = ours(ng.tensor(x[:1]), ng.tensor(quarter)).numpy()
    np.testing.assert_allclose(y[0], np.rot90(x[0], 1, axes=(1, 2)), atol=1e-12)


@pytest.mark.parametrize("size", [(2, 3, 4, 5), (2, 1, 1, 3), (2, 3, 3, 4, 5), (2, 1, 2, 1, 3)])
@pytest.mark.parametrize("ac", [False, True])
def test_affine_grid_matches_torch(rng, size, ac):
    nd = len(size) - 2
    theta = rng.standard_normal((2, nd, nd + 1))
    with pytest.warns(UserWarning) if ac and 1 in size[2:] else _nullcontext():
        compare_with_torch(lambda t: F.affine_grid(t, size, ac),
                           lambda t: TF.affine_grid(t, size, ac), theta, **TOL)
        compare_with_torch(lambda t: F.affine_grid(t, size, ac),
                           lambda t: TF.affine_grid(t, size, ac), theta.astype(np.float32))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_grid_sample_under_jit_and_vmap_matches_eager(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    grids = [rng.uniform(-1.3, 1.3, (2, 3, 4, 2)) for _ in range(2)]
    f = ng.jit(lambda a, b: F.grid_sample(a, b, "bicubic", "reflection", True), fuse=False)
    for g in grids + grids:  # trace, then replay with new values
        eager = F.grid_sample(ng.tensor(x), ng.tensor(g), "bicubic", "reflection", True)
        np.testing.assert_array_equal(f(ng.tensor(x), ng.tensor(g)).numpy(), eager.numpy())
    grad = ng.grad(lambda a, b: F.grid_sample(a, b, padding_mode="border").sum(), argnums=(0, 1))
    jgrad = ng.jit(grad, fuse=False)
    for g in grids + grids:
        for e, j in zip(grad(ng.tensor(x), ng.tensor(g)), jgrad(ng.tensor(x), ng.tensor(g))):
            np.testing.assert_allclose(j.numpy(), e.numpy(), rtol=1e-12, atol=1e-14)
    per = ng.vmap(lambda a, b: F.grid_sample(a[None], b[None])[0])
    np.testing.assert_allclose(per(ng.tensor(x), ng.tensor(grids[0])).numpy(),
                               F.grid_sample(ng.tensor(x), ng.tensor(grids[0])).numpy(),
                               rtol=1e-12, atol=1e-14)


def test_grid_sample_and_affine_grid_errors():
    x, g = ng.zeros(2, 3, 4, 4), ng.zeros(2, 3, 3, 2)
    with pytest.raises(ShapeError, match=r"grid_sample: expected a 4-D .* got input \(2, 3, 4\)"):
        F.grid_sample(ng.zeros(2, 3, 4), g)
    with pytest.raises(ShapeError, match=r"grid_sample: .* grid must be \(N=2, \.\.\., 2\), got "
                                         r"\(1, 3, 3, 2\)"):
        F.grid_sample(x, ng.zeros(1, 3, 3, 2))
    with pytest.raises(ShapeError, match="grid must be"):
        F.grid_sample(x, ng.zeros(2, 3, 3, 3))
    with pytest.raises(DTypeError, match="grid_sample: .* same dtype, got float32 and float64"):
        F.grid_sample(x, g.double())
    with pytest.raises(ValueError, match="grid_sample: mode must be one of"):
        F.grid_sample(x, g, mode="trilinear")
    with pytest.raises(ValueError, match="grid_sample: padding_mode must be one of"):
        F.grid_sample(x, g, padding_mode="circular")
    with pytest.raises(ShapeError, match="grid_sample: bicubic interpolation only takes 4-D"):
        F.grid_sample(ng.zeros(1, 1, 2, 2, 2), ng.zeros(1, 1, 1, 1, 3), mode="bicubic")
    with pytest.raises(ShapeError, match=r"affine_grid: for size \(2, 3, 4, 4\) theta must be .*"
                                         r"\(2, 2, 3\), got \(2, 3, 4\)"):
        F.affine_grid(ng.zeros(2, 3, 4), (2, 3, 4, 4))
    with pytest.raises(ShapeError, match="affine_grid: size must be"):
        F.affine_grid(ng.zeros(2, 2, 3), (2, 3, 4))
    with pytest.raises(DTypeError, match="affine_grid: theta must be floating point"):
        F.affine_grid(ng.zeros(2, 2, 3, dtype="int64"), (2, 3, 4, 4))


# --- pooling ----------------------------------------------------------------------------------
def test_with_indices_aliases_match_torch(rng):
    for nd in (1, 2, 3):
        x = rng.standard_normal((2, 3) + (6,) * nd)
        yo, io = getattr(F, f"max_pool{nd}d_with_indices")(ng.tensor(x), 3, 2, 1)
        yt, it = getattr(TF, f"max_pool{nd}d_with_indices")(torch.tensor(x), 3, 2, 1)
        np.testing.assert_array_equal(yo.numpy(), yt.numpy())
        np.testing.assert_array_equal(io.numpy(), it.numpy())
        yo, io = getattr(F, f"adaptive_max_pool{nd}d_with_indices")(ng.tensor(x), 4)
        yt, it = getattr(TF, f"adaptive_max_pool{nd}d_with_indices")(torch.tensor(x), 4)
        np.testing.assert_array_equal(yo.numpy(), yt.numpy())
        np.testing.assert_array_equal(io.numpy(), it.numpy())


_FRACTIONAL = [((2, 3, 9, 11), 2, {"output_size": (4, 5)}),
               ((2, 3, 10, 7), (3, 2), {"output_ratio": (0.5, 0.6)}),
               ((3, 8, 8), 3, {"output_size": 6}),                        # unbatched
               ((1, 2, 5, 5), 2, {"output_size": (1, 4)}),
               ((1, 2, 25, 25), 2, {"output_size": (13, 17)})]


@pytest.mark.parametrize("shape,k,kw", _FRACTIONAL)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fractional_max_pool2d_matches_torch_with_fixed_samples(rng, shape, k, kw, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    n = shape[0] if len(shape) == 4 else 1
    s = rng.random((n, shape[-3], 2)).astype(dtype)
    yo, io = F.fractional_max_pool2d(ng.tensor(x), k, return_indices=True,
                                     _random_samples=ng.tensor(s), **kw)
    yt, it = TF.fractional_max_pool2d(torch.tensor(x), k, return_indices=True,
                                      _random_samples=torch.tensor(s), **kw)
    np.testing.assert_array_equal(io.numpy(), it.numpy())
    assert yo.dtype == dtype
    _both(lambda a: F.fractional_max_pool2d(a, k, _random_samples=ng.tensor(s), **kw),
          lambda a: TF.fractional_max_pool2d(a, k, _random_samples=torch.tensor(s), **kw),
          [x], rng, TOL)
    ours = nn.FractionalMaxPool2d(k, return_indices=True, _random_samples=ng.tensor(s), **kw)
    theirs = torch.nn.FractionalMaxPool2d(k, return_indices=True,
                                          _random_samples=torch.tensor(s), **kw)
    assert repr(ours) == repr(theirs)
    np.testing.assert_array_equal(ours(ng.tensor(x))[1].numpy(), theirs(torch.tensor(x))[1])


def test_fractional_max_pool2d_draws_from_the_generator(rng):
    """Without samples: drawn as rand(N, C, 2) from the generator (so torch given the same
    draw agrees), reproducible from a seed, different from another seed's windows."""
    x = rng.standard_normal((2, 4, 20, 20))
    run = [F.fractional_max_pool2d(ng.tensor(x), 2, output_size=11, return_indices=True,
                                   generator=ng.random.Generator(seed=s)) for s in (3, 3, 4)]
    np.testing.assert_array_equal(run[0][1].numpy(), run[1][1].numpy())
    assert not np.array_equal(run[0][1].numpy(), run[2][1].numpy())
    draw = ng.random.rand(2, 4, 2, dtype=np.float64, generator=ng.random.Generator(seed=4))
    yt, it = TF.fractional_max_pool2d(torch.tensor(x), 2, output_size=11, return_indices=True,
                                      _random_samples=torch.tensor(draw.numpy()))
    np.testing.assert_array_equal(run[2][1].numpy(), it.numpy())
    np.testing.assert_array_equal(run[2][0].numpy(), yt.numpy())
    layer = nn.FractionalMaxPool2d(3, output_ratio=0.5, generator=ng.random.Generator(seed=1))
    assert tuple(layer(ng.tensor(x)).shape) == (2, 4, 10, 10)


def test_fractional_max_pool2d_errors():
    x = ng.zeros(1, 2, 6, 6)
    with pytest.raises(ValueError, match="either an output_size or an output_ratio"):
        F.fractional_max_pool2d(x, 2)
    with pytest.raises(ShapeError, match=r"kernel \(4, 4\) is too large for output \(4, 4\)"):
        F.fractional_max_pool2d(x, 4, output_size=4)
    with pytest.raises(ShapeError, match=r"_random_samples must have shape \(N, C, 2\)"):
        F.fractional_max_pool2d(x, 2, output_size=3, _random_samples=ng.zeros(1, 3, 2))
    with pytest.raises(ShapeError, match="fractional_max_pool2d: expected"):
        F.fractional_max_pool2d(ng.zeros(6, 6), 2, output_size=3)
    with pytest.raises(ValueError, match="output_ratio must be between 0 and 1"):
        nn.FractionalMaxPool2d(2, output_ratio=1.5)
    with pytest.raises(ValueError, match="only one of output_size and output_ratio"):
        nn.FractionalMaxPool2d(2, output_size=3, output_ratio=0.5)


# --- feature alpha dropout --------------------------------------------------------------------
_ALPHA = 1.7580993408473766  # SELU's −λα


def test_feature_alpha_dropout_is_the_formula_with_a_fixed_mask(rng):
    """Same seed, same channel mask: y = keep·a·x + (keep − 1)·α'a + α'a·p per channel."""
    x = rng.standard_normal((4, 6, 3, 5))
    p = 0.3
    y = F.feature_alpha_dropout(ng.tensor(x), p, True, generator=ng.random.Generator(seed=9))
    keep = ng.random.Generator(seed=9).keep_mask((4, 6, 1, 1), np.float64, p)
    a = 1 / math.sqrt((_ALPHA ** 2 * p + 1) * (1 - p))
    np.testing.assert_allclose(y.numpy(), keep * a * x + (keep - 1) * _ALPHA * a
                               + _ALPHA * a * p, rtol=1e-13)
    assert 0 < keep.sum() < keep.size  # both kinds of channel occur
    # the same structure as torch's output: whole channels at −α'a(1 − p), the rest a·x + α'a·p
    yt = TF.feature_alpha_dropout(torch.tensor(x), p, True).numpy()
    for out in (y.numpy(), yt):
        dropped = np.isclose(out, -_ALPHA * a * (1 - p), rtol=1e-12).all(axis=(2, 3))
        kept = np.isclose(out, a * x + _ALPHA * a * p, rtol=1e-12).all(axis=(2, 3))
        assert (dropped ^ kept).all()


def test_feature_alpha_dropout_keeps_selu_statistics():
    """Zero mean and unit variance are kept for standard-normal input; about p of the
    channels are dropped; float32 stays float32; eval, p = 0 and p = 1 as torch."""
    x = np.random.default_rng(3).standard_normal((400, 50, 8, 8)).astype(np.float32)
    p = 0.2
    y = F.feature_alpha_dropout(ng.tensor(x), p, True, generator=ng.random.Generator(seed=2))
    assert y.dtype == np.float32
    out = y.numpy()
    assert abs(out.mean()) < 0.02 and abs(out.var() - 1) < 0.03
    const = (out.std(axis=(2, 3)) == 0).mean()
    assert abs(const - p) < 0.01
    xs = ng.tensor(x[:2])
    assert F.feature_alpha_dropout(xs, p, False) is xs
    assert F.feature_alpha_dropout(xs, 0.0, True) is xs
    np.testing.assert_array_equal(F.feature_alpha_dropout(xs, 1.0, True).numpy(),
                                  TF.feature_alpha_dropout(torch.tensor(x[:2]), 1.0, True))
    layer = nn.FeatureAlphaDropout(0.25)
    assert repr(layer) == repr(torch.nn.FeatureAlphaDropout(0.25))
    assert layer.eval()(xs) is xs
    with pytest.raises(ShapeError, match="feature_alpha_dropout: feature dropout needs at least"):
        F.feature_alpha_dropout(ng.zeros(5), 0.5, True)
    with pytest.raises(ValueError, match="p must be in"):
        F.feature_alpha_dropout(xs, 1.5, True)


# --- losses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDS)
def test_multilabel_margin_loss_matches_torch(rng, reduction):
    x = rng.standard_normal((5, 5))
    # targets ended by -1, a repeated class, all classes, none, entries after -1 ignored
    t = np.array([[3, 0, -1, 1, 2], [1, 1, 2, -1, -1], [-1, 2, 3, 4, 0], [0, 1, 2, 3, 4],
                  [4, -1, 4, 4, 4]])
    for xs, ts in ((x, t), (x[0], t[0])):
        compare_with_torch(
            lambda a: F.multilabel_margin_loss(a, ng.tensor(ts), reduction=reduction),
            lambda a: TF.multilabel_margin_loss(a, torch.tensor(ts), reduction=reduction), xs,
            **TOL)
    ours, theirs = nn.MultiLabelMarginLoss(reduction=reduction), torch.nn.MultiLabelMarginLoss(
        reduction=reduction)
    compare_with_torch(lambda a: ours(a, ng.tensor(t)), lambda a: theirs(a, torch.tensor(t)), x,
                       **TOL)
    with pytest.raises(IndexError, match="multilabel_margin_loss: target 5 is out of range"):
        F.multilabel_margin_loss(ng.tensor(x), ng.tensor(np.full((5, 5), 5)))
    with pytest.raises(IndexError, match="target -2 is out of range"):
        F.multilabel_margin_loss(ng.tensor(x[0]), ng.tensor(np.array([1, -1, -2, 0, 0])))
    with pytest.raises(ShapeError, match=r"multilabel_margin_loss: .* got \(5, 5\) and \(5, 4\)"):
        F.multilabel_margin_loss(ng.tensor(x), ng.tensor(t[:, :4]))


@pytest.mark.parametrize("reduction", REDS)
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_margin_with_distance_loss_matches_torch(rng, reduction, swap):
    a, p, n = (rng.standard_normal((6, 4)) for _ in range(3))
    kw = {"swap": swap, "reduction": reduction}
    compare_with_torch(lambda *t: F.triplet_margin_with_distance_loss(*t, margin=0.7, **kw),
                       lambda *t: TF.triplet_margin_with_distance_loss(*t, margin=0.7, **kw),
                       a, p, n, **TOL)
    compare_with_torch(
        lambda *t: F.triplet_margin_with_distance_loss(
            *t, distance_function=lambda u, v: 1 - F.cosine_similarity(u, v), **kw),
        lambda *t: TF.triplet_margin_with_distance_loss(
            *t, distance_function=lambda u, v: 1 - TF.cosine_similarity(u, v), **kw),
        a, p, n, **TOL)
    ours = nn.TripletMarginWithDistanceLoss(margin=2.0, **kw)
    theirs = torch.nn.TripletMarginWithDistanceLoss(margin=2.0, **kw)
    assert isinstance(ours.distance_function, nn.PairwiseDistance)
    compare_with_torch(ours, theirs, a, p, n, **TOL)
    ours = nn.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(p=1), **kw)
    theirs = torch.nn.TripletMarginWithDistanceLoss(
        distance_function=torch.nn.PairwiseDistance(p=1), **kw)
    compare_with_torch(ours, theirs, a[0], p[0], n[0], **TOL)  # unbatched


def test_triplet_margin_with_distance_loss_errors():
    a = ng.zeros(3, 4)
    with pytest.raises(ValueError, match="margin must be greater than 0, got 0"):
        F.triplet_margin_with_distance_loss(a, a, a, margin=0)
    with pytest.raises(ValueError, match="expected margin to be greater than 0, got -1"):
        nn.TripletMarginWithDistanceLoss(margin=-1)
    with pytest.raises(ShapeError, match="same number of dims, got 2-D, 1-D and 2-D"):
        F.triplet_margin_with_distance_loss(a, ng.zeros(4), a)
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.triplet_margin_with_distance_loss(a, a, a, reduction="avg")


def test_nll_loss_2d_is_nll_loss_with_a_warning(rng):
    x = rng.standard_normal((2, 4, 3, 5))
    t = rng.integers(0, 4, (2, 3, 5))
    t[0, 0, 0] = -100
    w = rng.random(4)
    with pytest.warns(FutureWarning, match="NLLLoss2d is deprecated"):
        ours = nn.NLLLoss2d(ng.tensor(w), reduction="sum")
    theirs = torch.nn.NLLLoss(torch.tensor(w), reduction="sum")
    assert isinstance(ours, nn.NLLLoss)
    compare_with_torch(lambda a: ours(a, ng.tensor(t)), lambda a: theirs(a, torch.tensor(t)), x,
                       **TOL)
    with pytest.warns(FutureWarning):
        assert nn.NLLLoss2d(reduce=False).reduction == "none"


# --- adaptive softmax -------------------------------------------------------------------------
def _asm_pair(head_bias, dtype=np.float64):
    torch.manual_seed(0)
    theirs = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 20, [4, 9, 15], div_value=2.0,
                                                 head_bias=head_bias).to(torch.float64)
    ours = nn.AdaptiveLogSoftmaxWithLoss(16, 20, [4, 9, 15], div_value=2.0,
                                         head_bias=head_bias, dtype=dtype)
    ours.load_state_dict({k: ng.tensor(v.detach().numpy().astype(dtype))
                          for k, v in theirs.state_dict().items()})
    return ours, theirs


def _strip(r: str) -> str:
    return "\n".join(line.split("  #")[0] for line in r.splitlines())


@pytest.mark.parametrize("head_bias", [False, True])
def test_adaptive_log_softmax_matches_torch(rng, head_bias):
    ours, theirs = _asm_pair(head_bias)
    assert _strip(repr(ours)) == repr(theirs)
    x = rng.standard_normal((7, 16))
    t = np.array([0, 5, 19, 3, 10, 15, 9])  # every cluster, and both edges of each
    xo, xt = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out_o, out_t = ours(xo, ng.tensor(t)), theirs(xt, torch.tensor(t))
    assert type(out_o).__name__ == "_ASMoutput" and out_o._fields == ("output", "loss")
    np.testing.assert_allclose(out_o.output.numpy(), out_t.output.detach().numpy(), **TOL)
    np.testing.assert_allclose(out_o.loss.numpy(), out_t.loss.detach().numpy(), **TOL)
    v = rng.standard_normal(7)
    (out_o.loss + (out_o.output * ng.tensor(v)).sum()).backward()
    (out_t.loss + (out_t.output * torch.tensor(v)).sum()).backward()
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), **TOL)
    grads_t = {k: p.grad for k, p in theirs.named_parameters()}
    for k, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), grads_t[k].numpy(), **TOL, err_msg=k)
    # log_prob normalises over all 20 classes and gives forward's outputs at the targets
    lp = ours.log_prob(ng.tensor(x)).numpy()
    np.testing.assert_allclose(lp, theirs.log_prob(torch.tensor(x)).detach().numpy(), **TOL)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(lp[np.arange(7), t], out_o.output.numpy(), **TOL)
    # unbatched
    one = ours(ng.tensor(x[2]), ng.tensor(np.array(19)))
    assert one.output.ndim == 0
    np.testing.assert_allclose(one.output.numpy(), out_t.output[2].item(), **TOL)


def test_adaptive_log_softmax_predict_and_errors(rng):
    ours, theirs = _asm_pair(True)
    x = rng.standard_normal((40, 16)) * 3
    np.testing.assert_array_equal(ours.predict(ng.tensor(x)).numpy(),
                                  theirs.predict(torch.tensor(x)).numpy())
    with torch.no_grad():  # all rows in the shortlist, then none of them
        for bias in (np.r_[np.full(4, 50.0), np.zeros(3)], np.r_[np.zeros(4), np.full(3, 50.0)]):
            theirs.head.bias.copy_(torch.tensor(bias))
            ours.head.bias.data[...] = bias
            want = theirs.log_prob(torch.tensor(x)).argmax(1).numpy()
            np.testing.assert_array_equal(ours.predict(ng.tensor(x)).numpy(), want)
            np.testing.assert_array_equal(theirs.predict(torch.tensor(x)).numpy(), want)
    with pytest.raises(ValueError, match="cutoffs should be a sequence of unique"):
        nn.AdaptiveLogSoftmaxWithLoss(8, 10, [5, 3])
    with pytest.raises(ValueError, match="cutoffs should be a sequence of unique"):
        nn.AdaptiveLogSoftmaxWithLoss(8, 10, [3, 10])
    with pytest.raises(ValueError, match="length larger than 0"):
        nn.AdaptiveLogSoftmaxWithLoss(8, 10, [])
    with pytest.raises(IndexError, match=r"target values should be in \[0, 19\], but values in "
                                         r"range \[0, 20\]"):
        ours(ng.tensor(x[:2]), ng.tensor(np.array([0, 20])))
    with pytest.raises(ShapeError, match="expected input"):
        ours(ng.tensor(x[:2]), ng.tensor(np.array([0, 1, 2])))
    with pytest.raises(ShapeError, match=r"log_prob: expected input \(N, in_features\)"):
        ours.log_prob(ng.tensor(x[0]))
