"""Losses against PyTorch (values and gradients, float64), extreme logits, and bad targets."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import functional as F

rng = np.random.default_rng(0)


def _check(ng_fn, torch_fn, x, *consts, atol=1e-10):
    torch = pytest.importorskip("torch")
    xo = ng.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    lo = ng_fn(xo, *[ng.tensor(c) if c is not None else None for c in consts])
    lt = torch_fn(xt, *[torch.tensor(c) if c is not None else None for c in consts])
    np.testing.assert_allclose(lo.numpy(), lt.detach().numpy(), atol=atol, rtol=1e-9)
    v = rng.standard_normal(lo.shape)
    lo.backward(ng.tensor(v))
    lt.backward(torch.tensor(v))
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), atol=atol, rtol=1e-9)
    assert np.isfinite(xo.grad.numpy()).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses(reduction):
    tf = pytest.importorskip("torch").nn.functional
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _check(lambda a, b: F.mse_loss(a, b, reduction),
           lambda a, b: tf.mse_loss(a, b, reduction=reduction), x, t)
    _check(lambda a, b: F.l1_loss(a, b, reduction),
           lambda a, b: tf.l1_loss(a, b, reduction=reduction), x, t)
    _check(lambda a, b: F.huber_loss(a, b, reduction, 0.5),
           lambda a, b: tf.huber_loss(a, b, reduction=reduction, delta=0.5), x, t)
    _check(lambda a, b: F.smooth_l1_loss(a, b, reduction, 0.5),
           lambda a, b: tf.smooth_l1_loss(a, b, reduction=reduction, beta=0.5), x, t)


@pytest.mark.parametrize("kw", [
    {}, {"reduction": "sum"}, {"reduction": "none"}, {"label_smoothing": 0.1},
    {"ignore_index": 2}, {"weight": True}, {"weight": True, "label_smoothing": 0.2},
    {"weight": True, "ignore_index": 1, "label_smoothing": 0.1},
])
def test_cross_entropy_class_targets(kw):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((6, 4))
    t = np.array([0, 1, 2, 3, 2, 1])
    w = rng.uniform(0.5, 2, 4) if kw.get("weight") else None
    kwt = dict(kw, weight=None if w is None else torch.tensor(w))
    kwo = dict(kw, weight=None if w is None else ng.tensor(w))
    _check(lambda a, b: F.cross_entropy(a, b, **kwo),
           lambda a, b: torch.nn.functional.cross_entropy(a, b, **kwt), x, t)


def test_cross_entropy_spatial_and_probability_targets():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = rng.standard_normal((2, 3, 5))
    t = rng.integers(0, 3, (2, 5))
    _check(lambda a, b: F.cross_entropy(a, b), lambda a, b: tf.cross_entropy(a, b), x, t)
    p = rng.dirichlet(np.ones(3), size=4)
    x2 = rng.standard_normal((4, 3))
    _check(lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1),
           lambda a, b: tf.cross_entropy(a, b, label_smoothing=0.1), x2, p)


def test_cross_entropy_extreme_logits_are_finite():
    torch = pytest.importorskip("torch")
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [3.0, 1e4, -1e4]])
    t = np.array([1, 0, 1])
    _check(F.cross_entropy, torch.nn.functional.cross_entropy, x, t, atol=1e-6)
    lo = F.cross_entropy(ng.tensor(x.astype(np.float32), requires_grad=True), ng.tensor(t))
    assert np.isfinite(lo.item()) and lo.dtype == ng.float32


def test_nll_bce_kl():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    logp = np.log(rng.dirichlet(np.ones(4), size=5))
    _check(F.nll_loss, tf.nll_loss, logp, np.array([0, 3, 1, 1, 2]))
    p, y = rng.uniform(0.05, 0.95, (3, 4)), rng.integers(0, 2, (3, 4)).astype(np.float64)
    _check(F.binary_cross_entropy, tf.binary_cross_entropy, p, y)
    z = rng.standard_normal((3, 4)) * 30
    pw = rng.uniform(0.5, 3, 4)
    _check(F.binary_cross_entropy_with_logits, tf.binary_cross_entropy_with_logits, z, y)
    _check(lambda a, b, c: F.binary_cross_entropy_with_logits(a, b, pos_weight=c),
           lambda a, b, c: tf.binary_cross_entropy_with_logits(a, b, pos_weight=c), z, y, pw)
    q = rng.dirichlet(np.ones(4), size=3)
    q[0, 1] = 0.0
    for red in ("batchmean", "sum"):
        _check(lambda a, b: F.kl_div(a, b, red), lambda a, b: tf.kl_div(a, b, reduction=red),
               np.log(rng.dirichlet(np.ones(4), size=3)), q)


def test_losses_gradcheck():
    x = rng.standard_normal((3, 4))
    t = ng.tensor([0, 3, 1])
    assert ng.gradcheck(lambda a: F.cross_entropy(a, t, label_smoothing=0.1), x, order=2)
    assert ng.gradcheck(lambda a, b: F.huber_loss(a, b), x, rng.standard_normal((3, 4)))


def test_bad_targets_and_shapes():
    x = ng.randn(3, 4)
    with pytest.raises(IndexError, match="target 4 is out of range for 4 classes"):
        F.cross_entropy(x, ng.tensor([0, 4, 1]))
    with pytest.raises(IndexError, match="target -1"):
        F.cross_entropy(x, ng.tensor([0, -1, 1]))
    F.cross_entropy(x, ng.tensor([0, -100, 1]))  # the default ignore_index is allowed
    with pytest.raises(ng.ShapeError, match=r"targets must have shape \(3,\)"):
        F.cross_entropy(x, ng.tensor([0, 1]))
    with pytest.raises(ng.ShapeError, match="mse_loss"):
        F.mse_loss(ng.ones(3), ng.ones(4))
    with pytest.warns(UserWarning, match="target size"):
        F.mse_loss(ng.ones(3), ng.ones(3, 1))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(ng.ones(3), ng.ones(3), "avg")
    with pytest.raises(ng.DTypeError):
        F.nll_loss(x, ng.tensor([0.0, 1.0, 2.0]))


def test_loss_modules():
    from nodegrad import nn
    x, t = ng.randn(4, 3), ng.tensor([0, 1, 2, 1])
    assert nn.CrossEntropyLoss()(x, t).item() == pytest.approx(F.cross_entropy(x, t).item())
    assert nn.MSELoss(reduction="sum")(x, x * 0).item() == pytest.approx((x * x).sum().item())


# --- saturated predictions: PyTorch's numbers, never NaN ------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0) in the target's gradient
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_at_zero_and_one_matches_torch(dtype, reduction):
    """p = 0 or 1 (a saturated sigmoid): the logs clamp at -100 and the gradient's denominator
    p(1 - p) at 1e-12, as PyTorch, so values and gradients are PyTorch's, finite in p."""
    torch = pytest.importorskip("torch")
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1e-13, 0.3], dtype)
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.25, 0.75, 0.5, 0.6], dtype)
    w = np.linspace(0.5, 2.0, 8).astype(dtype)
    po, to = ng.tensor(p, requires_grad=True), ng.tensor(t, requires_grad=True)
    pt, tt = torch.tensor(p, requires_grad=True), torch.tensor(t, requires_grad=True)
    lo = F.binary_cross_entropy(po, to, ng.tensor(w), reduction=reduction)
    lt = torch.nn.functional.binary_cross_entropy(pt, tt, torch.tensor(w), reduction=reduction)
    rtol = 1e-6 if dtype == "float32" else 1e-10  # rounding: the weight is applied first
    assert lo.dtype == dtype
    np.testing.assert_allclose(lo.numpy(), lt.detach().numpy(), rtol=rtol)
    v = np.linspace(-1.0, 2.0, 8).astype(dtype) if reduction == "none" else np.array(1.5, dtype)
    lo.backward(ng.tensor(v))
    lt.backward(torch.tensor(v))
    assert po.grad.dtype == dtype and np.isfinite(po.grad.numpy()).all()
    np.testing.assert_allclose(po.grad.numpy(), pt.grad.numpy(), rtol=rtol)
    np.testing.assert_allclose(to.grad.numpy(), tt.grad.numpy(), rtol=rtol)  # ±inf at 0 and 1


def test_binary_cross_entropy_refuses_non_probabilities():
    for bad in ([0.5, 1.5], [-0.1, 0.5], [np.nan, 0.5]):
        with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*with_logits"):
            F.binary_cross_entropy(ng.tensor(bad), ng.tensor([1.0, 0.0]))


@pytest.mark.parametrize("pos_weight", [None, [0.5, 2.0, 3.0, 1.0, 1.0]])
def test_binary_cross_entropy_with_logits_at_zero_and_far_out(pos_weight):
    """At x = 0 the gradient is sigmoid(0) - t (it was 1 - t: both kinks of the stable form
    took the subgradient 0); at |x| of 800 it stays finite and exact."""
    tf = pytest.importorskip("torch").nn.functional
    z = np.array([0.0, 0.0, 800.0, -800.0, 1e-3])
    y = np.array([0.3, 1.0, 0.0, 1.0, 0.5])
    if pos_weight is None:
        _check(F.binary_cross_entropy_with_logits, tf.binary_cross_entropy_with_logits, z, y,
               atol=1e-12)
    else:
        _check(lambda a, b, c: F.binary_cross_entropy_with_logits(a, b, pos_weight=c),
               lambda a, b, c: tf.binary_cross_entropy_with_logits(a, b, pos_weight=c), z, y,
               np.array(pos_weight), atol=1e-12)
    assert ng.gradcheck(lambda a: F.binary_cross_entropy_with_logits(a, ng.tensor(y)),
                        np.array([0.0, 0.5, -0.5, 2.0, -3.0]), order=2)


def test_float_class_labels_say_they_are_read_as_probabilities():
    x = ng.randn(4, 3)
    with pytest.raises(ng.ShapeError, match=r"float target is read as class probabilities "
                       r"\(soft labels\) and needs the input's shape \(4, 3\), got \(4,\);"
                       r".*integer tensor"):
        F.cross_entropy(x, ng.tensor([0.0, 1.0, 2.0, 1.0]))
