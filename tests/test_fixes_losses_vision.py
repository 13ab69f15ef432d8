"""Regression tests for the losses and the vision/pooling functional ops against PyTorch: the
first of tied maxima takes a max pool's gradient, avg_pool's divisor_override, lp_pool's zero
windows, the hinge losses' gradient at the hinge, class-weight and weight-shape checks, binary
cross-entropy targets, triplet margins, empty batches, max_unpool's output_size range, scalar
pairwise distances, cosine_similarity's eps clamp, broadcast targets of kl_div and
soft_margin_loss, pdist's p and inf-norm ties (pdist, cdist), and antialiased (bilinear,
bicubic, Lanczos) interpolation."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _grads(fn_ng, fn_t, *arrays, wrt=(0,)):
    """(ours, theirs): the gradients of sum(fn(*arrays)) for the arrays at positions ``wrt``."""
    na = [ng.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    ta = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    fn_ng(*na).sum().backward()
    fn_t(*ta).sum().backward()
    return [na[i].grad.numpy() for i in wrt], [ta[i].grad.numpy() for i in wrt]


def _close_grads(fn_ng, fn_t, *arrays, wrt=(0,), rtol=1e-10):
    ours, theirs = _grads(fn_ng, fn_t, *arrays, wrt=wrt)
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o, t, rtol=rtol, atol=1e-12)


# --- max pooling: the first of tied maxima takes the gradient ---------------------------------
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kw", [dict(kernel_size=2, stride=1),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
def test_max_pool_ties_give_the_whole_gradient_to_the_first_maximum(nd, kw):
    x = np.ones((2, 1) + (5,) * nd)  # all tied, as the zeros after a ReLU
    x[1, 0, 1] = 0.0
    name = f"max_pool{nd}d"
    _close_grads(lambda t: getattr(F, name)(t, **kw), lambda t: getattr(TF, name)(t, **kw), x)
    # with return_indices the same gradient (it always was)
    _close_grads(lambda t: getattr(F, name)(t, **kw, return_indices=True)[0],
                 lambda t: getattr(TF, name)(t, **kw, return_indices=True)[0], x)


def test_max_pool_values_under_no_grad_and_with_grad_agree():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6))
    x[0, 0, 0, 0] = np.nan
    x[1, 1] = -np.inf
    with ng.no_grad():
        plain = F.max_pool2d(ng.tensor(x), 3, 2, 1).numpy()
    recorded = F.max_pool2d(ng.tensor(x, requires_grad=True), 3, 2, 1).detach().numpy()
    theirs = TF.max_pool2d(torch.tensor(x), 3, 2, 1).numpy()
    np.testing.assert_array_equal(plain, theirs)
    np.testing.assert_array_equal(recorded, theirs)


def test_max_pool_gradient_under_grad_and_vmap_takes_the_first_maximum():
    x = ng.tensor(np.ones((3, 1, 1, 4)))
    g = ng.vmap(ng.grad(lambda t: F.max_pool1d(t, 2, 1).sum()))(x)
    np.testing.assert_array_equal(g.numpy()[:, 0, 0], np.tile([1.0, 1.0, 1.0, 0.0], (3, 1)))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pools_and_grid_sample_take_an_empty_batch(nd):
    x = np.zeros((0, 2) + (6,) * nd)
    for fn in ("max_pool", "adaptive_max_pool"):
        name = f"{fn}{nd}d"
        arg = dict(kernel_size=2) if fn == "max_pool" else dict(output_size=2)
        y, i = getattr(F, name)(ng.tensor(x), **arg, return_indices=True)
        ty, ti = getattr(TF, name)(torch.tensor(x), **arg, return_indices=True)
        assert y.shape == tuple(ty.shape) and i.shape == tuple(ti.shape)
    pooled = np.zeros((0, 2) + (3,) * nd)
    out = getattr(F, f"max_unpool{nd}d")(ng.tensor(pooled), ng.tensor(pooled.astype(np.int64)), 2)
    assert out.shape == (0, 2) + (6,) * nd
    if nd > 1:
        grid = np.zeros((0, 3, 3, 2) if nd == 2 else (0, 3, 3, 3, 3))
        y = F.grid_sample(ng.tensor(x), ng.tensor(grid), align_corners=False)
        assert y.shape == tuple(TF.grid_sample(torch.tensor(x), torch.tensor(grid),
                                               align_corners=False).shape)


def test_avg_pool_divisor_override_zero_or_float_raises():
    x = ng.tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    with pytest.raises(ValueError, match="avg_pool2d: divisor_override must not be zero"):
        F.avg_pool2d(x, 2, divisor_override=0)  # was silently the plain mean
    with pytest.raises(TypeError, match="avg_pool3d: divisor_override must be an int"):
        F.avg_pool3d(ng.zeros(1, 1, 2, 2, 2), 2, divisor_override=2.5)
    np.testing.assert_array_equal(
        F.avg_pool2d(x, 2, divisor_override=np.int64(-3)).numpy(),
        TF.avg_pool2d(torch.arange(16.0).double().reshape(1, 1, 4, 4), 2,
                      divisor_override=-3).numpy())


# --- lp_pool: a window of zeros has gradient 0, not NaN ---------------------------------------
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_lp_pool_window_of_zeros_has_zero_gradient(p):
    x = np.random.default_rng(1).random((1, 2, 6, 6))
    x[0, 0, :2, :2] = 0.0
    x[0, 1] = 0.0
    _close_grads(lambda t: F.lp_pool2d(t, p, 2), lambda t: TF.lp_pool2d(t, p, 2), x)
    ours = F.lp_pool2d(ng.tensor(x), p, 2).numpy()
    np.testing.assert_allclose(ours, TF.lp_pool2d(torch.tensor(x), p, 2).numpy(), rtol=1e-12)


# --- hinge losses: the gradient passes at the hinge (PyTorch's clamp_min) ---------------------
def test_margin_ranking_loss_gradient_at_tied_scores():
    x = np.array([0.5, 1.0, 2.0])
    y = np.array([1.0, -1.0, 1.0])
    _close_grads(F.margin_ranking_loss, TF.margin_ranking_loss, x, x.copy(), y, wrt=(0, 1))


def test_hinge_embedding_loss_gradient_at_the_margin():
    x = np.array([0.5, 1.0, 2.0])
    _close_grads(lambda a, t: F.hinge_embedding_loss(a, t, margin=1.0),
                 lambda a, t: TF.hinge_embedding_loss(a, t, margin=1.0), x, -np.ones(3))


def test_cosine_embedding_loss_gradient_at_the_margin_and_zero_vectors():
    a = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    b = np.array([[1.0, -2.0, 0.3], [0.3, 0.1, 2.0]])
    _close_grads(F.cosine_embedding_loss, TF.cosine_embedding_loss, a, b,
                 np.array([-1.0, 1.0]), wrt=(0, 1), rtol=1e-7)  # (gradients of ~1e5)


# --- class weights, BCE targets and weights -----------------------------------------------------
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss", "multi_margin_loss"])
@pytest.mark.parametrize("c", [3, 7])
def test_class_weight_must_have_one_entry_per_class(fn, c):
    x = np.random.default_rng(2).standard_normal((4, 5))
    t = np.array([0, 1, 2, 3])
    with pytest.raises(ng.ShapeError, match=rf"{fn}: weight must be a 1-D tensor with one "
                                            r"entry per class \(5\)"):
        getattr(F, fn)(ng.tensor(x), ng.tensor(t), weight=ng.ones(c, dtype="float64"))
    with pytest.raises(RuntimeError):
        getattr(TF, fn)(torch.tensor(x), torch.tensor(t), weight=torch.ones(c).double())


def test_cross_entropy_weight_of_probability_targets_is_checked():
    x = ng.tensor(np.zeros((2, 5)))
    with pytest.raises(ng.ShapeError, match="cross_entropy: weight"):
        F.cross_entropy(x, ng.tensor(np.full((2, 5), 0.2)), weight=ng.ones(3, dtype="float64"))


def test_cross_entropy_probability_targets_refuse_ignore_index():
    x = np.zeros((2, 5))
    p = np.full((2, 5), 0.2)
    with pytest.raises(ValueError, match="ignore_index .* class-probability"):
        F.cross_entropy(ng.tensor(x), ng.tensor(p), ignore_index=1)
    with pytest.raises(RuntimeError, match="ignore_index"):
        TF.cross_entropy(torch.tensor(x), torch.tensor(p), ignore_index=1)
    # the default (-100) is fine, as in PyTorch
    np.testing.assert_allclose(F.cross_entropy(ng.tensor(x), ng.tensor(p)).item(),
                               TF.cross_entropy(torch.tensor(x), torch.tensor(p)).item())


@pytest.mark.parametrize("target", [2.0, -0.5, float("nan")])
def test_binary_cross_entropy_target_outside_zero_one_raises(target):
    with pytest.raises(ValueError, match="binary_cross_entropy: target must hold values in"):
        F.binary_cross_entropy(ng.tensor([0.3, 0.6]), ng.tensor([target, 1.0]))


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_bce_with_logits_weight_must_not_enlarge_the_input(name):
    x, t = ng.tensor([0.3, -0.5]), ng.tensor([1.0, 0.0])
    with pytest.raises(ng.ShapeError, match=rf"{name} of shape \(3, 2\) must broadcast"):
        F.binary_cross_entropy_with_logits(x, t, **{name: ng.ones(3, 2)})
    with pytest.raises(ng.ShapeError, match=r"weight of shape \(3, 2\) must broadcast"):
        F.binary_cross_entropy(ng.tensor([0.3, 0.5]), t, weight=ng.ones(3, 2))
    # broadcasting up to the input's shape stays allowed
    y = F.binary_cross_entropy_with_logits(ng.tensor(np.zeros((4, 2))), ng.tensor(np.ones((4, 2))),
                                           **{name: ng.tensor(np.array([1.0, 2.0]))})
    ty = TF.binary_cross_entropy_with_logits(torch.zeros(4, 2).double(), torch.ones(4, 2).double(),
                                             **{name: torch.tensor([1.0, 2.0]).double()})
    np.testing.assert_allclose(y.item(), ty.item())


# --- triplet_margin_loss: PyTorch's margin and rank rules ---------------------------------------
def test_triplet_margin_loss_margin_and_ranks():
    a = ng.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="triplet_margin_loss: margin must be greater than 0"):
        F.triplet_margin_loss(a, a, a, margin=-1.0)
    with pytest.raises(ng.ShapeError, match="same number of dims"):
        F.triplet_margin_loss(a[0], a, a)
    r = np.random.default_rng(3)
    x, p, n = (r.standard_normal((2, 3, 4)) for _ in range(3))  # distances over the last axis
    for red in ("mean", "none"):
        ours = F.triplet_margin_loss(ng.tensor(x), ng.tensor(p), ng.tensor(n), reduction=red)
        theirs = TF.triplet_margin_loss(torch.tensor(x), torch.tensor(p), torch.tensor(n),
                                        reduction=red)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)


# --- distances ---------------------------------------------------------------------------------
@pytest.mark.parametrize("keepdim", [False, True])
def test_pairwise_distance_of_scalars(keepdim):
    ours = F.pairwise_distance(ng.tensor(1.0), ng.tensor(2.5), keepdim=keepdim)
    theirs = TF.pairwise_distance(torch.tensor(1.0), torch.tensor(2.5), keepdim=keepdim)
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_cosine_similarity_gradient_through_the_eps_clamp():
    """PyTorch clamps the norms in place outside autograd: the norm's gradient still flows."""
    r = np.random.default_rng(6)
    a, b = r.standard_normal((5, 4)) * 1e-5, r.standard_normal((5, 4))
    a[0] = 0.0
    _close_grads(lambda x, y: F.cosine_similarity(x, y, eps=1e-3) * ng.tensor(np.arange(5.0)),
                 lambda x, y: TF.cosine_similarity(x, y, eps=1e-3) * torch.arange(5.0).double(),
                 a, b, wrt=(0, 1), rtol=1e-8)


@pytest.mark.parametrize("reduction", ["sum", "none", "batchmean"])
def test_kl_div_and_soft_margin_loss_broadcast_the_target(reduction):
    r = np.random.default_rng(7)
    x, t = r.standard_normal((2, 3)), r.random(3)
    _close_grads(lambda a, b: F.kl_div(a, b, reduction=reduction),
                 lambda a, b: TF.kl_div(a, b, reduction=reduction), x, t, wrt=(0, 1))
    if reduction != "batchmean":
        _close_grads(lambda a, b: F.soft_margin_loss(a, b, reduction=reduction),
                     lambda a, b: TF.soft_margin_loss(a, b, reduction=reduction), x,
                     np.sign(t - 0.5))


def test_pdist_and_cdist_inf_norm_give_every_tied_maximum_the_gradient():
    a = np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [3.0, -1.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    inf = float("inf")
    _close_grads(lambda x: F.pdist(x, p=inf) * ng.tensor(np.arange(1.0, 7.0)),
                 lambda x: TF.pdist(x, p=inf) * torch.arange(1.0, 7.0).double(), a)
    _close_grads(lambda x: F.cdist(x, ng.tensor(b), p=inf),
                 lambda x: torch.cdist(x, torch.tensor(b), p=inf), a)
    # pairwise_distance (a vector norm) shares the gradient among ties, as PyTorch's
    _close_grads(lambda x: F.pairwise_distance(x, ng.tensor(a[::-1].copy()), p=inf, eps=0),
                 lambda x: TF.pairwise_distance(x, torch.tensor(a[::-1].copy()), p=inf, eps=0),
                 a)


def test_pdist_negative_p_raises():
    with pytest.raises(ValueError, match="pdist: p must be non-negative"):
        F.pdist(ng.ones(3, 4), p=-1.0)


# --- max_unpool: PyTorch's output_size range ----------------------------------------------------
def test_max_unpool_output_size_out_of_range_raises():
    y, i = F.max_pool1d(ng.tensor(np.arange(10.0)[None, None]), 2, return_indices=True)
    with pytest.raises(ValueError, match=r"max_unpool1d: output_size \(13,\) is invalid"):
        F.max_unpool1d(y, i, 2, output_size=[13])
    # within one stride of the default, and the (N, C, L) form, as PyTorch
    ty, ti = TF.max_pool1d(torch.arange(10.0).double()[None, None], 2, return_indices=True)
    for size in ([11], [1, 1, 11]):
        np.testing.assert_array_equal(F.max_unpool1d(y, i, 2, output_size=size).numpy(),
                                      TF.max_unpool1d(ty, ti, 2, output_size=size).numpy())


# --- interpolate: antialias and Lanczos ---------------------------------------------------------
@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("kw", [dict(size=(5, 4)), dict(size=(30, 3)),
                                dict(scale_factor=(0.45, 2.2)), dict(size=(1, 1))])
def test_interpolate_antialias_matches_torch(mode, kw):
    x = np.random.default_rng(4).standard_normal((2, 3, 17, 13))
    for ac in ((False, True) if mode != "lanczos" else (False,)):
        _close_grads(lambda t: F.interpolate(t, mode=mode, antialias=True, align_corners=ac,
                                             **kw) * ng.tensor(np.arange(1.0, 2.0, 1 / 3)[:, None,
                                                                                          None]),
                     lambda t: TF.interpolate(t, mode=mode, antialias=True, align_corners=ac,
                                              **kw) * torch.tensor(np.arange(1.0, 2.0, 1 / 3)[
                                                  :, None, None]), x)
        ours = F.interpolate(ng.tensor(x.astype(np.float32)), mode=mode, antialias=True,
                             align_corners=ac, **kw)
        theirs = TF.interpolate(torch.tensor(x.astype(np.float32)), mode=mode, antialias=True,
                                align_corners=ac, **kw)
        assert ours.dtype == ng.float32
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "lanczos"])
def test_interpolate_antialias_uint8_matches_torch_bit_for_bit(mode):
    x = np.random.default_rng(5).integers(0, 256, (1, 3, 37, 29)).astype(np.uint8)
    for kw in (dict(size=(5, 4)), dict(scale_factor=0.3), dict(size=(37, 10)),
               dict(size=(60, 7))):
        ours = F.interpolate(ng.tensor(x), mode=mode, antialias=True, **kw).numpy()
        theirs = TF.interpolate(torch.tensor(x), mode=mode, antialias=True, **kw).numpy()
        np.testing.assert_array_equal(ours, theirs)


def test_interpolate_antialias_and_lanczos_argument_errors():
    x = ng.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="antialias=True applies to the modes"):
        F.interpolate(ng.zeros(1, 1, 4), size=2, mode="linear", antialias=True)
    with pytest.raises(ValueError, match="'lanczos' .* needs antialias=True"):
        F.interpolate(x, size=2, mode="lanczos")
    with pytest.raises(ValueError, match="'lanczos' .* align_corners False"):
        F.interpolate(x, size=2, mode="lanczos", antialias=True, align_corners=True)


def test_interpolate_antialias_keeps_an_infinite_pixel_local():
    x = np.zeros((1, 1, 9, 9))
    x[0, 0, -1, -1] = np.inf
    ours = F.interpolate(ng.tensor(x), size=(3, 3), mode="bilinear", antialias=True).numpy()
    theirs = TF.interpolate(torch.tensor(x), size=(3, 3), mode="bilinear",
                            antialias=True).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_interpolate_size_as_a_tensor_and_native_channel_shuffle():
    x = np.arange(2 * 6 * 3.0).reshape(2, 6, 3)
    assert F.interpolate(ng.tensor(x[None]), size=ng.tensor(4)).shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(F.native_channel_shuffle(ng.tensor(x), 3).numpy(),
                                  TF.native_channel_shuffle(torch.tensor(x), 3).numpy())
