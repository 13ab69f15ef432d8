"""Distances and the margin, ranking, count and sequence losses against PyTorch (float64, rtol
1e-7): every reduction and option, degenerate inputs, the modules, and the errors. The op
matrix (``_opcases``) covers their gradients under gradcheck, vmap and jvp."""

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
F, TF = nn.functional, torch.nn.functional
TOL = {"rtol": 1e-7, "atol": 1e-10}
REDS = ("mean", "sum", "none")


@pytest.fixture
def rng():
    return np.random.default_rng(21)


def test_distances(rng):
    x1, x2 = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    compare_with_torch(F.cosine_similarity, TF.cosine_similarity, x1, x2, **TOL)
    compare_with_torch(lambda a, b: F.cosine_similarity(a, b, dim=0),
                       lambda a, b: TF.cosine_similarity(a, b, dim=0), x1, x2[:1], **TOL)
    # a zero vector: similarity 0 and a finite gradient, as PyTorch
    compare_with_torch(F.cosine_similarity, TF.cosine_similarity, np.zeros((2, 3)), x2[:2, :3],
                       **TOL)
    for p in (1.0, 2.0, 3.0, 0.5, math.inf):
        compare_with_torch(lambda a, b: F.pairwise_distance(a, b, p=p, keepdim=True),
                           lambda a, b: TF.pairwise_distance(a, b, p=p, keepdim=True), x1, x2,
                           **TOL)
        compare_with_torch(lambda a, b: F.cdist(a, b, p=p), lambda a, b: torch.cdist(a, b, p=p),
                           rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), **TOL)
    compare_with_torch(F.pairwise_distance, TF.pairwise_distance, x1, x1.copy(), **TOL)
    compare_with_torch(F.cdist, torch.cdist, x1, x1.copy(), **TOL)  # zero distances: grad 0


@pytest.mark.parametrize("reduction", REDS)
def test_pair_and_triplet_losses(rng, reduction):
    x1, x2, x3 = (rng.standard_normal((4, 5)) for _ in range(3))
    y = np.array([1, -1, 1, -1])
    r = {"reduction": reduction}
    compare_with_torch(
        lambda a, b: F.cosine_embedding_loss(a, b, ng.tensor(y), margin=0.2, **r),
        lambda a, b: TF.cosine_embedding_loss(a, b, torch.tensor(y), margin=0.2, **r),
        x1, x2, **TOL)
    compare_with_torch(
        lambda a, b: F.cosine_embedding_loss(a, b, ng.tensor(-1), **r),
        lambda a, b: TF.cosine_embedding_loss(a, b, torch.tensor(-1), **r), x1[0], x2[0], **TOL)
    yf = y.astype(float)
    compare_with_torch(lambda a, b: F.margin_ranking_loss(a, b, ng.tensor(yf), 0.3, **r),
                       lambda a, b: TF.margin_ranking_loss(a, b, torch.tensor(yf), 0.3, **r),
                       x1[:, 0], x2[:, 0], **TOL)
    for swap in (False, True):
        for p in (1.0, 2.0, 1.5):
            kw = {"swap": swap, "p": p, "margin": 0.5, **r}
            compare_with_torch(lambda a, b, c: F.triplet_margin_loss(a, b, c, **kw),
                               lambda a, b, c: TF.triplet_margin_loss(a, b, c, **kw),
                               x1, x2, x3, **TOL)
    s = np.sign(x2)
    compare_with_torch(lambda a: F.hinge_embedding_loss(a, ng.tensor(s), 0.5, **r),
                       lambda a: TF.hinge_embedding_loss(a, torch.tensor(s), 0.5, **r), x1,
                       **TOL)


@pytest.mark.parametrize("reduction", REDS)
def test_classification_losses(rng, reduction):
    x = rng.standard_normal((4, 5))
    t, w = np.array([0, 3, 4, 1]), rng.random(5)
    r = {"reduction": reduction}
    for p in (1, 2):
        compare_with_torch(
            lambda a: F.multi_margin_loss(a, ng.tensor(t), p=p, margin=0.7, weight=ng.tensor(w),
                                          **r),
            lambda a: TF.multi_margin_loss(a, torch.tensor(t), p=p, margin=0.7,
                                           weight=torch.tensor(w), **r), x, **TOL)
    compare_with_torch(lambda a: F.multi_margin_loss(a, ng.tensor(2), **r),
                       lambda a: TF.multi_margin_loss(a, torch.tensor(2), **r), x[0], **TOL)
    y = (rng.random((4, 5)) > 0.5).astype(float)
    for scale in (1.0, 50.0):  # large logits stay finite
        compare_with_torch(
            lambda a: F.multilabel_soft_margin_loss(a, ng.tensor(y), weight=ng.tensor(w), **r),
            lambda a: TF.multilabel_soft_margin_loss(a, torch.tensor(y), weight=torch.tensor(w),
                                                     **r), x * scale, **TOL)
        compare_with_torch(lambda a: F.soft_margin_loss(a, ng.tensor(2 * y - 1), **r),
                           lambda a: TF.soft_margin_loss(a, torch.tensor(2 * y - 1), **r),
                           x * scale, **TOL)


@pytest.mark.parametrize("reduction", REDS)
def test_likelihood_losses(rng, reduction):
    x = np.abs(rng.standard_normal((4, 5))) + 0.1
    t = rng.poisson(2.0, (4, 5)).astype(float)
    r = {"reduction": reduction}
    for log_input in (True, False):
        for full in (False, True):
            kw = {"log_input": log_input, "full": full, **r}
            compare_with_torch(lambda a: F.poisson_nll_loss(a, ng.tensor(t), **kw),
                               lambda a: TF.poisson_nll_loss(a, torch.tensor(t), **kw), x, **TOL)
    target = rng.standard_normal((4, 5))
    for vshape in ((4, 5), (4,), (4, 1)):
        var = rng.random(vshape) + 0.1
        var.flat[0] = 1e-9  # below eps: clamped, the gradient passes through (PyTorch)
        for full in (False, True):
            compare_with_torch(
                lambda a, v: F.gaussian_nll_loss(a, ng.tensor(target), v, full=full, **r),
                lambda a, v: TF.gaussian_nll_loss(a, torch.tensor(target), v, full=full, **r),
                x, var, **TOL)


def _ctc_data(seed=1):
    g = np.random.default_rng(seed)
    t, n, c, s = 12, 4, 6, 5
    z = g.standard_normal((t, n, c))
    tg = g.integers(1, c, (n, s))
    tg[1, 1] = tg[1, 0]  # a repeated label needs a blank between
    return z, tg, np.array([12, 10, 7, 3]), np.array([5, 3, 0, 2])


@pytest.mark.parametrize("reduction", REDS)
def test_ctc_loss_matches_torch(reduction):
    """Through log_softmax, as CTC is used (PyTorch's CTC gradient is the one for logits
    behind a log_softmax; nodegrad's is the exact derivative in log_probs, which agrees after
    the log_softmax)."""
    z, tg, il, tl = _ctc_data()
    for blank, targets in ((0, tg), (3, np.where(tg == 3, 1, tg))):
        compare_with_torch(
            lambda a: F.ctc_loss(ng.log_softmax(a, axis=2), ng.tensor(targets), ng.tensor(il),
                                 ng.tensor(tl), blank=blank, reduction=reduction),
            lambda a: TF.ctc_loss(a.log_softmax(2), torch.tensor(targets), torch.tensor(il),
                                  torch.tensor(tl), blank=blank, reduction=reduction), z, **TOL)
    lp = np.log(np.random.default_rng(3).dirichlet(np.ones(6), size=(12, 4)))
    compare_with_torch(  # values straight from log-probabilities
        lambda a: F.ctc_loss(a, ng.tensor(tg), ng.tensor(il), ng.tensor(tl), reduction=reduction),
        lambda a: TF.ctc_loss(a, torch.tensor(tg), torch.tensor(il), torch.tensor(tl),
                              reduction=reduction), lp, grad=False, **TOL)
    ng.gradcheck(lambda a: F.ctc_loss(a, ng.tensor(tg), ng.tensor(il), ng.tensor(tl),
                                      reduction=reduction), lp)


def test_ctc_loss_formats_and_impossible_alignments():
    z, tg, il, tl = _ctc_data(2)
    cat = np.concatenate([tg[i, :tl[i]] for i in range(4)])
    compare_with_torch(
        lambda a: F.ctc_loss(ng.log_softmax(a, axis=2), ng.tensor(cat), tuple(il), tuple(tl)),
        lambda a: TF.ctc_loss(a.log_softmax(2), torch.tensor(cat), tuple(il), tuple(tl)), z,
        **TOL)
    compare_with_torch(  # unbatched (T, C)
        lambda a: F.ctc_loss(ng.log_softmax(a, axis=1), ng.tensor(tg[0]), ng.tensor(12),
                             ng.tensor(5)),
        lambda a: TF.ctc_loss(a.log_softmax(1), torch.tensor(tg[0]), torch.tensor(12),
                              torch.tensor(5)), z[:, 0], **TOL)
    short = np.array([12, 10, 7, 1])  # 2 labels cannot fit in 1 frame: infinite loss
    compare_with_torch(
        lambda a: F.ctc_loss(ng.log_softmax(a, axis=2), ng.tensor(tg), ng.tensor(short),
                             ng.tensor(tl), reduction="none", zero_infinity=True),
        lambda a: TF.ctc_loss(a.log_softmax(2), torch.tensor(tg), torch.tensor(short),
                              torch.tensor(tl), reduction="none", zero_infinity=True), z, **TOL)
    lp = ng.log_softmax(ng.tensor(z), axis=2)
    got = F.ctc_loss(lp, ng.tensor(tg), ng.tensor(short), ng.tensor(tl), reduction="none")
    want = TF.ctc_loss(torch.tensor(z).log_softmax(2), torch.tensor(tg), torch.tensor(short),
                       torch.tensor(tl), reduction="none")
    np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)
    assert np.isinf(got.numpy()[3])
    zero = np.array([12, 10, 0, 3])  # no frames and an empty target: loss 0
    got = F.ctc_loss(lp, ng.tensor(tg), ng.tensor(zero), ng.tensor(tl), reduction="none")
    want = TF.ctc_loss(torch.tensor(z).log_softmax(2), torch.tensor(tg), torch.tensor(zero),
                       torch.tensor(tl), reduction="none")
    np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


def test_modules_call_the_functions(rng):
    x1, x2, x3 = (ng.tensor(rng.standard_normal((3, 4))) for _ in range(3))
    y = ng.tensor(np.array([1.0, -1.0, 1.0]))
    pairs = [
        (nn.CosineSimilarity(dim=0), F.cosine_similarity(x1, x2, dim=0), (x1, x2)),
        (nn.PairwiseDistance(p=1.0), F.pairwise_distance(x1, x2, p=1.0), (x1, x2)),
        (nn.CosineEmbeddingLoss(0.1), F.cosine_embedding_loss(x1, x2, y, 0.1), (x1, x2, y)),
        (nn.MarginRankingLoss(0.2, "sum"), F.margin_ranking_loss(x1[:, 0], x2[:, 0], y, 0.2,
                                                                 "sum"), (x1[:, 0], x2[:, 0], y)),
        (nn.TripletMarginLoss(swap=True), F.triplet_margin_loss(x1, x2, x3, swap=True),
         (x1, x2, x3)),
        (nn.HingeEmbeddingLoss(), F.hinge_embedding_loss(x1, ng.sign(x2)), (x1, ng.sign(x2))),
        (nn.MultiMarginLoss(p=2), F.multi_margin_loss(x1, ng.tensor([0, 1, 3]), p=2),
         (x1, ng.tensor([0, 1, 3]))),
        (nn.MultiLabelSoftMarginLoss(), F.multilabel_soft_margin_loss(x1, x2 > 0),
         (x1, x2 > 0)),
        (nn.SoftMarginLoss("none"), F.soft_margin_loss(x1, ng.sign(x2), "none"),
         (x1, ng.sign(x2))),
        (nn.PoissonNLLLoss(full=True), F.poisson_nll_loss(x1, ng.abs(x2), full=True),
         (x1, ng.abs(x2))),
        (nn.GaussianNLLLoss(), F.gaussian_nll_loss(x1, x2, ng.abs(x3)), (x1, x2, ng.abs(x3))),
    ]
    for mod, want, args in pairs:
        np.testing.assert_allclose(mod(*args).numpy(), want.numpy(), rtol=1e-12)
    z, tg, il, tl = _ctc_data()
    lp = ng.log_softmax(ng.tensor(z), axis=2)
    np.testing.assert_allclose(nn.CTCLoss(reduction="sum")(lp, tg, il, tl).numpy(),
                               F.ctc_loss(lp, tg, il, tl, reduction="sum").numpy())


def test_errors():
    x = ng.ones((3, 4))
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        F.multi_margin_loss(x, ng.tensor([0, 1, 2]), p=3)
    with pytest.raises(IndexError, match="target 7 is out of range"):
        F.multi_margin_loss(x, ng.tensor([0, 7, 2]))
    with pytest.raises(ValueError, match="var has negative"):
        F.gaussian_nll_loss(x, x, -ng.ones((3, 4)))
    with pytest.raises(ng.ShapeError, match="var of shape"):
        F.gaussian_nll_loss(x, x, ng.ones((2, 4)))
    with pytest.raises(ng.ShapeError, match="cdist"):
        F.cdist(ng.ones((3, 4)), ng.ones((3, 5)))
    with pytest.raises(ValueError, match="reduction"):
        F.soft_margin_loss(x, x, reduction="avg")
    lp = ng.log_softmax(ng.ones((5, 2, 3)), axis=2)
    tg = ng.tensor([[1, 2], [1, 1]])
    with pytest.raises(ValueError, match="blank=3"):
        F.ctc_loss(lp, tg, [5, 5], [2, 2], blank=3)
    with pytest.raises(IndexError, match="out of range"):
        F.ctc_loss(lp, ng.tensor([[1, 5], [1, 1]]), [5, 5], [2, 2])
    with pytest.raises(ValueError, match="input_lengths"):
        F.ctc_loss(lp, tg, [6, 5], [2, 2])
    with pytest.raises(ng.ShapeError, match="one entry per batch"):
        F.ctc_loss(lp, tg, [5], [2, 2])
    with pytest.raises(ng.ShapeError, match=r"\(T, N, C\)"):
        F.ctc_loss(ng.ones(3), tg, [5, 5], [2, 2])


def test_distances_of_nan_inputs_are_nan_as_in_torch():
    """A NaN coordinate gives a NaN distance (it gave 0, a silent wrong answer), for every p."""
    torch = pytest.importorskip("torch")
    a = np.array([[1.0, np.nan], [0.0, 1.0], [2.0, 2.0]], np.float32)
    for p in (1.0, 2.0, 3.0):
        got = ng.cdist(ng.tensor(a), ng.tensor(a), p=p).numpy()
        want = torch.cdist(torch.tensor(a), torch.tensor(a), p=p).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # torch's p = inf kernel drops NaNs (an ordered max); nodegrad's max keeps them
    assert np.isnan(ng.cdist(ng.tensor(a), ng.tensor(a), p=float("inf")).numpy()[0]).all()
    b = ng.tensor(a[::-1].copy())
    got = nn.functional.pairwise_distance(ng.tensor(a), b).numpy()
    np.testing.assert_array_equal(np.isnan(got), [True, False, True])
