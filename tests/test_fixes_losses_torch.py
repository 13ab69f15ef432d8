"""Losses against PyTorch: shapes it accepts or refuses, soft-label gradients, unbatched CTC."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _compare(name, args, grad=(), **kw):
    """Run F.<name> and torch's on the same float64 arrays; compare values, shapes and the
    gradients of the arguments whose positions are in ``grad``."""
    ta = [torch.tensor(a, requires_grad=i in grad) for i, a in enumerate(args)]
    na = [ng.tensor(a, requires_grad=i in grad) for i, a in enumerate(args)]
    tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    nkw = {k: ng.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    lt = getattr(TF, name)(*ta, **tkw)
    ln = getattr(F, name)(*na, **nkw)
    assert tuple(ln.shape) == tuple(lt.shape)
    np.testing.assert_allclose(ln.numpy(), lt.detach().numpy(), rtol=1e-10, atol=1e-12)
    if grad:
        v = np.random.default_rng(1).standard_normal(tuple(lt.shape))
        lt.backward(torch.tensor(v))
        ln.backward(ng.tensor(v))
        for i in grad:
            np.testing.assert_allclose(na[i].grad.numpy(), ta[i].grad.numpy(), rtol=1e-9,
                                       atol=1e-12)


def _raise_both(name, args, **kw):
    with pytest.raises((RuntimeError, ValueError, IndexError)):
        getattr(TF, name)(*[torch.tensor(a) for a in args], **kw)
    with pytest.raises((ValueError, IndexError, TypeError), match=name):  # nodegrad.errors
        getattr(F, name)(*[ng.tensor(a) for a in args], **kw)


rng = np.random.default_rng(0)


@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.2}, {"reduction": "none"},
                                {"weight": np.array([0.5, 2.0, 1.0])}])
def test_cross_entropy_soft_target_gradient_at_zero_probability(kw):
    # a class of probability 0 still has the target gradient -log p (distillation targets)
    p = np.array([[0.0, 0.3, 0.7], [0.5, 0.5, 0.0]])
    _compare("cross_entropy", [rng.standard_normal((2, 3)), p], grad=(0, 1), **kw)


@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("kw", [{}, {"reduction": "none"}, {"weight": np.ones(4) * 0.5},
                                {"ignore_index": 2}])
def test_unbatched_input_takes_a_one_element_target(name, kw):
    # (values only: PyTorch's backward of this form fails on its own size check)
    _compare(name, [rng.standard_normal(4), np.array([2])], **kw)
    _raise_both(name, [rng.standard_normal(4), np.array([1, 2])])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_probabilities_without_classes(reduction, smoothing):
    _compare("cross_entropy", [np.zeros((2, 0)), np.zeros((2, 0))], reduction=reduction,
             label_smoothing=smoothing)


@pytest.mark.parametrize("shapes", [((4, 1), (1, 4)), ((3,), (4, 1)), ((2, 3), (3,)),
                                    ((1, 4), (2, 3, 4)), ((2, 3), (2, 1))])
def test_multilabel_soft_margin_loss_broadcasts_the_target(shapes):
    x, t = (rng.standard_normal(s) for s in shapes)
    _compare("multilabel_soft_margin_loss", [x, t], grad=(0, 1), reduction="none")
    w = rng.uniform(0.5, 2, shapes[0][-1])
    _compare("multilabel_soft_margin_loss", [x, t], grad=(0,), weight=w)


def test_multilabel_soft_margin_loss_of_a_scalar_raises():
    _raise_both("multilabel_soft_margin_loss", [np.array(0.5), np.array(1.0)])


@pytest.mark.parametrize("shapes", [((), (2, 3)), ((3,), (2, 3)), ((1, 4), (3, 4))])
def test_soft_margin_loss_target_larger_than_input_raises(shapes):
    x, t = (rng.standard_normal(s) for s in shapes)
    _raise_both("soft_margin_loss", [x, np.sign(t)])
    _compare("soft_margin_loss", [t, np.sign(x)], grad=(0,), reduction="none")


@pytest.mark.parametrize("shapes", [((3,), (3,), ()), ((2, 3), (3,), (2, 3)),
                                    ((1, 3), (1, 3), (3,))])
def test_margin_ranking_loss_needs_equal_dims(shapes):
    _raise_both("margin_ranking_loss", [rng.standard_normal(s) for s in shapes])


def test_margin_ranking_loss_broadcasts_equal_dims():
    x1, x2, t = rng.standard_normal((4, 1)), rng.standard_normal((1, 3)), np.ones((4, 3))
    _compare("margin_ranking_loss", [x1, x2, t], grad=(0, 1), margin=0.5, reduction="none")


@pytest.mark.parametrize("kw", [{}, {"swap": True}, {"p": 1.0, "reduction": "none"}])
def test_triplet_margin_loss_of_scalars(kw):
    _compare("triplet_margin_loss", [np.array(1.0), np.array(2.5), np.array(0.25)],
             grad=(0, 1, 2), **kw)


@pytest.mark.parametrize("shapes", [((1, 3), (2, 3), (1,)), ((2, 3), (1, 3), (2,)),
                                    ((4, 1), (1, 3), (4,)), ((2, 3), (2, 3), (1,)),
                                    ((3,), (1,), ())])
def test_cosine_embedding_loss_broadcasts(shapes):
    x1, x2, t = (rng.standard_normal(s) for s in shapes)
    _compare("cosine_embedding_loss", [x1, x2, np.sign(t)], grad=(0, 1), reduction="none",
             margin=0.2)


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3), (3,)), ((2, 3), (2, 3), ()),
                                    ((3,), (3,), (1,))])
def test_cosine_embedding_loss_bad_target_raises(shapes):
    _raise_both("cosine_embedding_loss", [rng.standard_normal(s) for s in shapes])


@pytest.mark.parametrize("shape", [(2, 0), (0,)])
def test_multilabel_margin_loss_without_classes_raises(shape):
    _raise_both("multilabel_margin_loss", [np.zeros(shape), np.zeros(shape, np.int64)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_loss_unbatched_targets_are_concatenated(reduction):
    x = rng.standard_normal((5, 4))
    lp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    for tg, tl in [([1, 2], 2), ([[1, 2, 3]], 2), ([1, 2, 3], 3)]:
        _compare("ctc_loss", [lp, np.array(tg), np.array(5), np.array(tl)], reduction=reduction)
    # a 1-D target longer than its length is PyTorch's error, not a padded row
    _raise_both("ctc_loss", [lp, np.array([1, 2, 3]), np.array(5), np.array(2)])


def test_ctc_loss_of_an_empty_batch_raises():
    _raise_both("ctc_loss", [np.zeros((4, 0, 3)), np.zeros((0, 2), np.int64),
                             np.zeros(0, np.int64), np.zeros(0, np.int64)])


@pytest.mark.parametrize("name, dtypes", [
    ("mse_loss", ("int64", "int64")), ("l1_loss", ("int32", "int64")),
    ("smooth_l1_loss", ("int64", "bool")), ("huber_loss", ("int64", "float64")),
    ("soft_margin_loss", ("int64", "float64")), ("kl_div", ("float64", "int64")),
    ("kl_div", ("int64", "float64")), ("hinge_embedding_loss", ("int64", "float64")),
    ("binary_cross_entropy_with_logits", ("int64", "float64")),
    ("multilabel_soft_margin_loss", ("int64", "float64")),
    ("binary_cross_entropy", ("float64", "int64")), ("binary_cross_entropy", ("int64", "int64")),
    ("cross_entropy", ("int64", "int64")), ("nll_loss", ("int64", "int64")),
    ("multi_margin_loss", ("int64", "int64")),
])
def test_integer_operands_raise(name, dtypes):
    x, t = (np.array([[0, 1], [1, 0]]).astype(d) for d in dtypes)
    if name in ("cross_entropy", "nll_loss", "multi_margin_loss"):
        t = t[:, 0]
    with pytest.raises(RuntimeError):
        getattr(TF, name)(torch.tensor(x), torch.tensor(t))
    with pytest.raises(TypeError, match=name):  # DTypeError
        getattr(F, name)(ng.tensor(x), ng.tensor(t))


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss"])
def test_an_integer_input_with_a_float_target_is_accepted(name):
    _compare(name, [np.array([1, 2, 4]), np.array([0.5, 2.5, 1.0])])


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_kl_div_nan_and_infinite_targets(dtype):
    # a NaN target gave 0 (a NaN from a teacher vanished) and an infinite one inf
    vals = [np.inf, np.nan, 0.0, 1.0, 0.5, -1.0]
    x = np.array([v for v in vals for _ in vals], dtype)
    t = np.array(vals * len(vals), dtype)
    for reduction in ("none", "sum"):
        lt = TF.kl_div(torch.tensor(x), torch.tensor(t), reduction=reduction).numpy()
        ln = F.kl_div(ng.tensor(x), ng.tensor(t), reduction=reduction).numpy()
        np.testing.assert_allclose(ln, lt, rtol=1e-3)
    finite = np.abs(rng.standard_normal((3, 4)))
    finite[0, 0] = 0.0
    _compare("kl_div", [rng.standard_normal((3, 4)), finite], grad=(0,), reduction="batchmean")


@pytest.mark.parametrize("which", [2, 3])
def test_ctc_loss_float_lengths_raise(which):
    x = rng.standard_normal((6, 2, 4))
    args = [x - np.log(np.exp(x).sum(-1, keepdims=True)), np.array([[1, 3, 2], [2, 2, 0]]),
            np.array([6, 5]), np.array([3, 2])]
    args[which] = args[which].astype(np.float64)
    _raise_both("ctc_loss", args)


@pytest.mark.parametrize("name, kw", [
    ("cross_entropy", {}), ("cross_entropy", {"label_smoothing": 0.1}),
    ("cross_entropy", {"weight": np.zeros(0), "label_smoothing": 0.1}),
    ("nll_loss", {}), ("nll_loss", {"weight": np.zeros(0)}),
])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_losses_without_classes_and_every_target_ignored(name, kw, reduction):
    _compare(name, [np.zeros((2, 0)), np.array([1, 1])], grad=(0,), ignore_index=1,
             reduction=reduction, **kw)
