"""The loss functions and modules take every argument PyTorch's do, with PyTorch's meaning:
the deprecated size_average/reduce flags (values, gradients and the warning), the per-element
``weight`` of mse/l1/huber, PyTorch's parameter names and order, the scalar and one-sample
shapes of the margin losses, and negative orders of the pairwise distance (float64 against
PyTorch)."""

import inspect
import itertools
import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
F, TF = nn.functional, torch.nn.functional
TOL = {"rtol": 1e-10, "atol": 1e-12}
FLAGS = [fl for fl in itertools.product((None, True, False), repeat=2) if fl != (None, None)]


def _quiet(fn):
    """PyTorch's own deprecation warnings silenced (ours are checked separately)."""
    def run(*args):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    return run


def _cases(rng):
    """(name, differentiated inputs, constant inputs, keywords) of every loss with the flags."""
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    p = rng.uniform(0.05, 0.95, (4, 3))
    cls = np.array([0, 2, 1, 2])
    sgn = np.array([1.0, -1.0, -1.0, 1.0])
    mlm = np.array([[2, 0, -1], [1, -1, 0], [0, 1, 2], [-1, 0, 0]])
    pos = rng.uniform(0.5, 3.0, (4, 3))
    w3 = rng.uniform(0.5, 2.0, 3)
    return [
        ("mse_loss", (x, y), (), {}), ("l1_loss", (x, y), (), {}),
        ("smooth_l1_loss", (x, y), (), {}), ("soft_margin_loss", (x,), (np.sign(y),), {}),
        ("binary_cross_entropy", (p,), ((y > 0).astype(float),), {}),
        ("binary_cross_entropy_with_logits", (x,), (p,), {}),
        ("kl_div", (x, p), (), {}),
        ("cross_entropy", (x,), (cls,), {"weight": w3}),
        ("nll_loss", (x,), (cls,), {"weight": w3}),
        ("multi_margin_loss", (x,), (cls,), {"weight": w3}),
        ("multilabel_soft_margin_loss", (x,), ((y > 0).astype(float),), {"weight": w3}),
        ("multilabel_margin_loss", (x,), (mlm,), {}),
        ("hinge_embedding_loss", (x,), (np.sign(y),), {}),
        ("poisson_nll_loss", (x,), (pos,), {}),
        ("cosine_embedding_loss", (x, y), (sgn,), {}),
        ("margin_ranking_loss", (x[:, 0], y[:, 0]), (sgn,), {}),
        ("triplet_margin_loss", (x, y, p), (), {}),
    ]


def _call(lib, name, consts, kw, flags):
    """The loss of ``lib`` over the differentiated inputs, constants and keywords fixed."""
    fn = getattr(F if lib is ng else TF, name)
    make = ng.tensor if lib is ng else torch.tensor
    consts = [make(c) for c in consts]
    kw = {k: make(v) for k, v in kw.items()}
    return lambda *ts: fn(*ts, *consts, **kw, **flags)


@pytest.mark.parametrize("size_average,reduce", FLAGS)
def test_deprecated_flags_match_torch_with_a_warning(size_average, reduce):
    rng = np.random.default_rng(3)
    for name, arrays, consts, kw in _cases(rng):
        flags = {"size_average": size_average, "reduce": reduce}
        ours = _call(ng, name, consts, kw, flags)
        with pytest.warns(UserWarning, match=f"{name}: size_average and reduce are deprecated"):
            ours(*(ng.tensor(a) for a in arrays))
        compare_with_torch(_quiet(ours), _quiet(_call(torch, name, consts, kw, flags)),
                           *arrays, **TOL)


def test_unset_flags_do_not_warn_and_reduction_rules_as_torch():
    x, y = ng.tensor([1.0, 2.0]), ng.tensor([0.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert F.mse_loss(x, y, reduction="sum").item() == 5.0
    for (sa, rd), want in {(False, None): "sum", (None, False): "none", (False, False): "none",
                           (True, None): "mean", (0, 1): "sum"}.items():
        with pytest.warns(UserWarning, match=f"reduction='{want}'"):
            out = F.l1_loss(x, y, size_average=sa, reduce=rd, reduction="mean")
        assert out.shape == ((2,) if want == "none" else ())


def test_kl_div_batchmean_still_divides_after_the_flags():
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((3, 4)), rng.uniform(0.1, 1, (3, 4))
    for flags in ({"size_average": False}, {"reduce": False}, {"size_average": True}):
        compare_with_torch(_quiet(lambda a, b: F.kl_div(a, b, reduction="batchmean", **flags)),
                           _quiet(lambda a, b: TF.kl_div(a, b, reduction="batchmean", **flags)),
                           x, t, **TOL)


@pytest.mark.parametrize("name", ["L1Loss", "MSELoss", "SmoothL1Loss", "SoftMarginLoss",
                                  "BCELoss", "BCEWithLogitsLoss", "KLDivLoss", "NLLLoss",
                                  "CrossEntropyLoss", "CosineEmbeddingLoss", "MarginRankingLoss",
                                  "HingeEmbeddingLoss", "MultiMarginLoss", "MultiLabelMarginLoss",
                                  "MultiLabelSoftMarginLoss", "PoissonNLLLoss",
                                  "TripletMarginLoss"])
def test_modules_take_the_flags(name):
    for sa, rd in FLAGS:
        with pytest.warns(UserWarning, match=f"{name}: size_average and reduce"):
            ours = getattr(nn, name)(size_average=sa, reduce=rd)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = getattr(torch.nn, name)(size_average=sa, reduce=rd)
        assert ours.reduction == theirs.reduction


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


TORCH_LOSSES = sorted(n for n in dir(TF) if n.endswith("_loss") and not n.startswith("_")) + [
    "cross_entropy", "nll_loss", "kl_div", "binary_cross_entropy",
    "binary_cross_entropy_with_logits"]


@pytest.mark.parametrize("name", TORCH_LOSSES)
def test_function_signatures_are_torchs(name):
    """Names, order, kinds and defaults of every parameter, as in PyTorch."""
    assert _params(getattr(F, name)) == _params(getattr(TF, name))


@pytest.mark.parametrize("name", sorted(n for n in dir(torch.nn) if n.endswith("Loss")
                                        and hasattr(nn, n)) + ["PairwiseDistance",
                                                               "CosineSimilarity"])
def test_module_constructor_signatures_are_torchs(name):
    assert _params(getattr(nn, name).__init__) == _params(getattr(torch.nn, name).__init__)


def test_keyword_forms():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 1])
    both = [(ng.tensor, F), (torch.tensor, TF)]
    got = [f.cross_entropy(input=t(x), target=t(y)).item() for t, f in both]
    assert got[0] == pytest.approx(got[1], rel=1e-12)
    got = [f.nll_loss(input=t(x), target=t(y), weight=t(np.ones(3)), ignore_index=2,
                      reduction="sum").item() for t, f in both]
    assert got[0] == pytest.approx(got[1], rel=1e-12)
    got = [f.cosine_embedding_loss(input1=t(x), input2=t(x[::-1].copy()),
                                   target=t(np.array([1.0, -1, 1, -1]))).item()
           for t, f in both]
    assert got[0] == pytest.approx(got[1], rel=1e-12)
    got = [f.triplet_margin_loss(anchor=t(x), positive=t(x + 1), negative=t(x * 2)).item()
           for t, f in both]
    assert got[0] == pytest.approx(got[1], rel=1e-12)
    got = [f.poisson_nll_loss(input=t(x), target=t(np.abs(x)), log_input=True).item()
           for t, f in both]
    assert got[0] == pytest.approx(got[1], rel=1e-12)
    got = [f.gaussian_nll_loss(input=t(x), target=t(x * 0), var=0.5).item() for t, f in both]
    assert got[0] == pytest.approx(got[1], rel=1e-12)


def test_earlier_positional_forms_keep_their_meaning():
    """A reduction name where PyTorch has size_average is the earlier positional order."""
    rng = np.random.default_rng(4)
    a, b = ng.tensor(rng.standard_normal((3, 4))), ng.tensor(rng.uniform(0, 1, (3, 4)))
    cls = ng.tensor(np.array([0, 3, 1]))
    pw = ng.tensor(rng.uniform(0.5, 2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = [
            (F.mse_loss(a, b, "sum"), F.mse_loss(a, b, reduction="sum")),
            (F.smooth_l1_loss(a, b, "sum", 0.5), F.smooth_l1_loss(a, b, reduction="sum",
                                                                  beta=0.5)),
            (F.binary_cross_entropy_with_logits(a, b, None, "sum", pw),
             F.binary_cross_entropy_with_logits(a, b, reduction="sum", pos_weight=pw)),
            (F.kl_div(a, b, "batchmean", True),
             F.kl_div(a, b, reduction="batchmean", log_target=True)),
            (F.cross_entropy(a, cls, None, 1, "sum", 0.1),
             F.cross_entropy(a, cls, ignore_index=1, reduction="sum", label_smoothing=0.1)),
            (F.nll_loss(a, cls, None, 1, "sum"),
             F.nll_loss(a, cls, ignore_index=1, reduction="sum")),
            (F.soft_margin_loss(a, b, "none"), F.soft_margin_loss(a, b, reduction="none")),
            (nn.SmoothL1Loss("sum", 0.5)(a, b), F.smooth_l1_loss(a, b, reduction="sum",
                                                                 beta=0.5)),
            (nn.CrossEntropyLoss(None, 1, "sum", 0.1)(a, cls),
             F.cross_entropy(a, cls, ignore_index=1, reduction="sum", label_smoothing=0.1)),
            (nn.NLLLoss(None, 1, "none")(a, cls),
             F.nll_loss(a, cls, ignore_index=1, reduction="none")),
            (nn.BCEWithLogitsLoss(None, "sum", pw)(a, b),
             F.binary_cross_entropy_with_logits(a, b, reduction="sum", pos_weight=pw)),
            (nn.KLDivLoss("batchmean", True)(a, b),
             F.kl_div(a, b, reduction="batchmean", log_target=True)),
            (nn.PoissonNLLLoss(True, False, 1e-8, "sum")(a, b),
             F.poisson_nll_loss(a, b, reduction="sum")),
            (nn.MarginRankingLoss(0.2, "sum")(a[0], b[0], ng.tensor(np.ones(4))),
             F.margin_ranking_loss(a[0], b[0], ng.tensor(np.ones(4)), 0.2, reduction="sum")),
        ]
    for got, want in pairs:
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-14)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elementwise_weight_as_torch(name, reduction):
    """PyTorch's ``weight``: mse/l1 'mean' divides by Σ weight, huber's by the count; the
    gradient reaches the weight too."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((3, 4)) * 2, rng.standard_normal((3, 4))
    w = rng.uniform(0.1, 2.0, (3, 4))
    compare_with_torch(lambda a, b, c: getattr(F, name)(a, b, reduction=reduction, weight=c),
                       lambda a, b, c: getattr(TF, name)(a, b, reduction=reduction, weight=c),
                       x, y, w, **TOL)


def test_weight_shape_and_option_errors():
    x = ng.tensor(np.ones((2, 3)))
    for fn in (F.mse_loss, F.l1_loss, F.huber_loss):
        with pytest.raises(ValueError, match=r"weight must have the input's shape \(2, 3\)"):
            fn(x, x, weight=ng.tensor(np.ones(3)))
    with pytest.raises(ValueError, match="huber_loss: delta must be positive"):
        F.huber_loss(x, x, delta=0.0)
    with pytest.raises(ValueError, match="smooth_l1_loss: beta must be non-negative"):
        F.smooth_l1_loss(x, x, beta=-1.0)
    with pytest.raises(ValueError, match="TripletMarginLoss: margin must be greater than 0"):
        nn.TripletMarginLoss(margin=0.0)
    with pytest.raises(ValueError, match="MultiMarginLoss: only p = 1 and p = 2"):
        nn.MultiMarginLoss(p=3)
    with pytest.raises(ValueError, match="MultiMarginLoss: weight must be None or 1-D"):
        nn.MultiMarginLoss(weight=ng.tensor(np.ones((2, 2))))


def test_class_weights_are_buffers_as_in_torch():
    w = np.array([1.0, 2.0, 0.5])
    for name, kw in (("CrossEntropyLoss", {"weight": w}), ("NLLLoss", {"weight": w}),
                     ("BCEWithLogitsLoss", {"weight": w, "pos_weight": w}),
                     ("MultiMarginLoss", {"weight": w}), ("BCELoss", {})):
        ours = getattr(nn, name)(**{k: ng.tensor(v) for k, v in kw.items()})
        theirs = getattr(torch.nn, name)(**{k: torch.tensor(v) for k, v in kw.items()})
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multi_margin_scalar_and_single_sample_shapes(reduction):
    rng = np.random.default_rng(6)
    for shape, t, p in (((), np.array(0), 1), ((5,), np.array([2]), 2), ((1, 5), np.array(3), 1),
                        ((5,), np.array(4), 2), ((), np.array([0]), 2)):
        x = rng.standard_normal(shape)
        wt = rng.uniform(0.5, 2, shape[-1] if shape else 1)
        compare_with_torch(
            lambda a, c: F.multi_margin_loss(a, ng.tensor(t), p=p, margin=0.8, weight=c,
                                             reduction=reduction),
            lambda a, c: TF.multi_margin_loss(a, torch.tensor(t), p=p, margin=0.8, weight=c,
                                              reduction=reduction), x, wt, grad=False)
        compare_with_torch(
            lambda a: F.multi_margin_loss(a, ng.tensor(t), p=p, margin=0.8,
                                          weight=ng.tensor(wt), reduction=reduction),
            lambda a: TF.multi_margin_loss(a, torch.tensor(t), p=p, margin=0.8,
                                           weight=torch.tensor(wt), reduction=reduction),
            x, **TOL)
    with pytest.raises(ng.ShapeError, match="multi_margin_loss: for input \\(5,\\)"):
        F.multi_margin_loss(ng.tensor(np.ones(5)), ng.tensor(np.array([1, 2])))
    with pytest.raises(ng.ShapeError, match="multi_margin_loss: input must be"):
        F.multi_margin_loss(ng.tensor(np.ones((2, 1, 5))), ng.tensor(np.array([1, 2])))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_multilabel_margin_scalar_shapes(reduction):
    for x, t in ((np.array(0.7), np.array(0)), (np.array(-0.2), np.array(-1)),
                 (np.array([0.3]), np.array(0)), (np.array(0.3), np.array([0]))):
        compare_with_torch(
            lambda a: F.multilabel_margin_loss(a, ng.tensor(t), reduction=reduction),
            lambda a: TF.multilabel_margin_loss(a, torch.tensor(t), reduction=reduction),
            x, **TOL)
    with pytest.raises(ng.ShapeError, match="multilabel_margin_loss: expected input"):
        F.multilabel_margin_loss(ng.tensor(np.ones(5)), ng.tensor(np.array([1])))
    with pytest.raises(IndexError, match="multilabel_margin_loss: target 1 is out of range"):
        F.multilabel_margin_loss(ng.tensor(0.5), ng.tensor(np.array(1)))


@pytest.mark.parametrize("p", [-1.0, -2.0, -0.5, -math.inf, 0.5, 0.3])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_pairwise_distance_any_order(p, eps):
    """Negative orders (Σ |d|^p)^(1/p), 0 with gradient 0 at a zero entry; orders below 1 get
    gradient 0 at a zero entry too (PyTorch's)."""
    x1 = np.array([[1.0, 2.0, -3.0], [0.0, 1.0, 2.0], [2.0, -2.0, 1.0], [0.5, 0.5, -0.5]])
    x2 = np.zeros((4, 3))
    compare_with_torch(lambda a, b: F.pairwise_distance(a, b, p=p, eps=eps),
                       lambda a, b: TF.pairwise_distance(a, b, p=p, eps=eps), x1, x2, **TOL)
    compare_with_torch(lambda a, b: nn.PairwiseDistance(p, eps, keepdim=True)(a, b),
                       lambda a, b: torch.nn.PairwiseDistance(p, eps, keepdim=True)(a, b),
                       x1, np.random.default_rng(0).standard_normal(3), **TOL)


def test_cdist_rejects_negative_orders():
    x = ng.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cdist: p must be non-negative, got -1"):
        F.cdist(x, x, p=-1.0)


def test_cosine_similarity_of_scalars():
    for dim in (0, -1):
        compare_with_torch(lambda a, b: F.cosine_similarity(a, b, dim=dim),
                           lambda a, b: TF.cosine_similarity(a, b, dim=dim),
                           np.array(2.0), np.array(-3.0), **TOL)
    with pytest.raises(IndexError, match="cosine_similarity: dim 1 is out of range"):
        F.cosine_similarity(ng.tensor(1.0), ng.tensor(2.0))


@pytest.mark.parametrize("kw", [{}, {"swap": True}, {"margin": 2.0, "reduction": "none"}])
def test_triplet_with_distance_modules(kw):
    rng = np.random.default_rng(7)
    a, pos, neg = (rng.standard_normal((5, 6)) for _ in range(3))
    for ours, theirs in ((nn.PairwiseDistance(), torch.nn.PairwiseDistance()),
                         (nn.PairwiseDistance(p=-1.0), torch.nn.PairwiseDistance(p=-1.0)),
                         (nn.CosineSimilarity(), torch.nn.CosineSimilarity())):
        compare_with_torch(
            lambda x, y, z: F.triplet_margin_with_distance_loss(x, y, z,
                                                                distance_function=ours, **kw),
            lambda x, y, z: TF.triplet_margin_with_distance_loss(
                x, y, z, distance_function=theirs, **kw), a, pos, neg, **TOL)
        compare_with_torch(
            lambda x, y, z: nn.TripletMarginWithDistanceLoss(distance_function=ours, **kw)(
                x, y, z),
            lambda x, y, z: torch.nn.TripletMarginWithDistanceLoss(distance_function=theirs,
                                                                   **kw)(x, y, z),
            a, pos, neg, **TOL)


@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"reduction": "none"},
                                {"label_smoothing": 0.2}, {"ignore_index": 1}])
def test_linear_cross_entropy_as_torch(kw):
    """The logits of a linear head (K-dimensional too), with class indices or probabilities,
    bias and class weights: values and gradients of input, weight and bias."""
    from nodegrad.nn.losses import linear_cross_entropy

    rng = np.random.default_rng(8)
    cases = [((3,), (4, 3), rng.integers(0, 4, ())), ((8, 3), (4, 3), rng.integers(0, 4, 8)),
             ((4, 3), (2, 3, 3), rng.integers(0, 2, (4, 3)))]
    if "ignore_index" not in kw:
        cases += [((8, 3), (4, 3), rng.uniform(0, 1, (8, 4))),
                  ((4, 3), (2, 3, 3), rng.uniform(0, 1, (4, 2, 3)))]
    for xs, ws, t in cases:
        cw = rng.uniform(0.5, 2, ws[0])
        compare_with_torch(
            lambda x, w, b: linear_cross_entropy(x, w, ng.tensor(t), linear_bias=b,
                                                 weight=ng.tensor(cw), **kw),
            lambda x, w, b: TF.linear_cross_entropy(x, w, torch.tensor(t), linear_bias=b,
                                                    weight=torch.tensor(cw), **kw),
            rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[:-1]),
            **TOL)
    x = ng.tensor(rng.standard_normal((2, 3)))
    with pytest.raises(ng.ShapeError, match="linear_cross_entropy: linear_weight must be"):
        linear_cross_entropy(x, ng.tensor(np.ones((4, 2))), ng.tensor(np.array([0, 1])))
    with pytest.raises(ng.ShapeError, match="needs batched input"):
        linear_cross_entropy(x[0], ng.tensor(np.ones((4, 2, 3))), ng.tensor(np.array(0)))
    with pytest.raises(ValueError, match="ignore_index cannot be given"):
        linear_cross_entropy(x, ng.tensor(np.ones((4, 3))), ng.tensor(np.ones((2, 4)) / 4),
                             ignore_index=0)


@pytest.mark.parametrize("kw", [{}, {"out_features": (2, 3), "bias": True},
                                {"bias": True, "label_smoothing": 0.1, "reduction": "sum"}])
def test_linear_cross_entropy_module_as_torch(kw):
    from nodegrad.nn.layers.loss import LinearCrossEntropyLoss

    assert _params(LinearCrossEntropyLoss.__init__) == _params(
        torch.nn.LinearCrossEntropyLoss.__init__)
    rng = np.random.default_rng(9)
    ours = LinearCrossEntropyLoss(5, 4, dtype=ng.float64, **kw)
    theirs = torch.nn.LinearCrossEntropyLoss(5, 4, dtype=torch.float64, **kw)
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    x = rng.standard_normal((6, 5))
    t = rng.integers(0, 4, (6,) + kw.get("out_features", ()))
    got, want = ours(ng.tensor(x), ng.tensor(t)), theirs(torch.tensor(x), torch.tensor(t))
    got.backward()
    want.backward()
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), **TOL)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(dict(ours.named_parameters())[name].grad.numpy(),
                                   p.grad.numpy(), **TOL)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        LinearCrossEntropyLoss(5, 4, weight=ng.tensor(np.ones(3)))
