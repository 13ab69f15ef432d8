"""Edge values, dtypes and shapes checked against PyTorch: values and gradients on the same
inputs (0, ±inf, NaN, huge and tiny entries; float16 where its range runs out)."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional
INF, NAN = float("inf"), float("nan")


def _both(f_ng, f_torch, *arrays, dtype="float64"):
    """(value, gradients) of ``f(*arrays).sum()`` in nodegrad and in PyTorch."""
    xs = [np.asarray(a, dtype=dtype) for a in arrays]
    n = [ng.tensor(x, requires_grad=True) for x in xs]
    t = [torch.tensor(x, requires_grad=True) for x in xs]
    yn, yt = f_ng(*n), f_torch(*t)
    gn = ng.autodiff.grad(yn.sum(), n)
    gt = torch.autograd.grad(yt.sum(), t)
    assert str(yn.dtype) == str(yt.dtype).removeprefix("torch.")
    for a, b in zip(gn, gt):
        assert str(a.dtype) == str(b.dtype).removeprefix("torch.")
    return ((yn.numpy(), [g.numpy() for g in gn]),
            (yt.detach().numpy(), [g.numpy() for g in gt]))


def _same(pair, rtol=1e-7):
    (vn, gn), (vt, gt) = pair
    np.testing.assert_allclose(vn, vt, rtol=rtol, atol=0)
    for a, b in zip(gn, gt):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0)


# --- losses -------------------------------------------------------------------------------
LOGITS = [[1.0, 2.0, 3.0], [-INF, 0.0, 1.0], [0.5, -INF, -INF], [2.0, 1.0, 0.0]]


@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"reduction": "none"},
                                {"label_smoothing": 0.1},
                                {"weight": [1.0, 2.0, 0.5]},
                                {"weight": [1.0, 2.0, 0.5], "label_smoothing": 0.2}])
def test_cross_entropy_ignores_masked_rows_without_nan(kw):
    # rows 1 and 2 are ignored and hold -inf logits (masked positions): they count nothing
    tgt = [0, -100, -100, 1]

    def f(lib, func):
        def run(x):
            k = dict(kw)
            if "weight" in k:
                k["weight"] = lib.tensor(np.array(k["weight"]))
            return func(x, lib.tensor(np.array(tgt)), **k)
        return run

    pair = _both(f(ng, F.cross_entropy), f(torch, TF.cross_entropy), LOGITS)
    assert np.isfinite(pair[0][0]).all()
    _same(pair, rtol=1e-12)


def test_cross_entropy_ignores_masked_positions_of_k_dim_logits():
    x = np.array(LOGITS).T[None]  # (1, 3 classes, 4 positions)
    tgt = np.array([[0, -100, -100, 1]])
    pair = _both(lambda a: F.cross_entropy(a, ng.tensor(tgt)),
                 lambda a: TF.cross_entropy(a, torch.tensor(tgt)), x)
    _same(pair, rtol=1e-12)
    pair = _both(lambda a: F.nll_loss(F.log_softmax(a, 1), ng.tensor(tgt)),
                 lambda a: TF.nll_loss(TF.log_softmax(a, 1), torch.tensor(tgt)), x)
    _same(pair, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cross_entropy_every_target_ignored_with_smoothing_is_nan_with_zero_gradient():
    x = [[1.0, 2.0], [3.0, 4.0]]
    (vn, gn), (vt, gt) = _both(
        lambda a: F.cross_entropy(a, ng.tensor([-100, -100]), label_smoothing=0.1),
        lambda a: TF.cross_entropy(a, torch.tensor([-100, -100]), label_smoothing=0.1), x)
    assert np.isnan(vn) and np.isnan(vt)
    assert (gn[0] == 0).all() and (gt[0] == 0).all()


X = np.array([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7], [0.1, 0.9, -2.2], [4.0, 1.0, 0.5]])


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"])
@pytest.mark.parametrize("shapes", [((4, 3), (3,)), ((4, 3), (4, 1)), ((3,), (4, 3)),
                                    ((1, 3), (4, 3))])
@pytest.mark.parametrize("kw", [{}, {"reduction": "none"}, {"reduction": "sum"}])
def test_regression_losses_broadcast_with_pytorchs_warning(name, shapes, kw):
    (sa, sb), n = shapes, int(np.prod(shapes[1]))
    a = X.reshape(-1)[: int(np.prod(sa))].reshape(sa)
    b = np.linspace(-1, 1, n).reshape(sb)
    with pytest.warns(UserWarning, match="target size") as rec:
        pair = _both(lambda u, v: getattr(F, name)(u, v, **kw),
                     lambda u, v: getattr(TF, name)(u, v, **kw), a, b)
    assert rec[0].filename == __file__  # the warning points at the caller
    _same(pair, rtol=1e-12)


def test_smooth_l1_with_beta_zero_broadcasts_and_unbroadcastable_shapes_raise():
    with pytest.warns(UserWarning, match="smooth_l1_loss: using a target size"):
        pair = _both(lambda u, v: F.smooth_l1_loss(u, v, beta=0.0),
                     lambda u, v: TF.smooth_l1_loss(u, v, beta=0.0), X, X[0])
    _same(pair, rtol=1e-12)
    for name in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"):
        with pytest.raises(ng.ShapeError, match=f"{name}: input shape \\(3,\\) and target "
                           "shape \\(4,\\) differ and do not broadcast"):
            getattr(F, name)(ng.ones(3), ng.ones(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.mse_loss(ng.ones(3), ng.ones(3))  # equal shapes: no warning


# --- activations ----------------------------------------------------------------------------
EDGES = [0.0, -0.0, 1e-8, -1e-8, 2.0, -2.0, 3.0, -3.0, 50.0, -50.0, 1e38, -1e38, INF, -INF]


@pytest.mark.parametrize("name", ["elu", "selu", "celu"])
def test_elu_family_gradient_at_zero_is_the_left_derivative(name):
    # PyTorch: alpha·scale at x <= 0 (1 for elu, 1.7581 for selu), not half of it
    pair = _both(getattr(F, name), getattr(TF, name), [0.0, -0.0, 0.5, -0.5, -20.0])
    _same(pair, rtol=1e-6)
    pair = _both(lambda x: F.elu(x, alpha=2.0), lambda x: TF.elu(x, alpha=2.0), [0.0, -1.0])
    _same(pair, rtol=1e-12)


def test_hardswish_gradient_is_finite_at_infinity():
    x = [v for v in EDGES if v != -INF]  # PyTorch's value there is -inf · 0 = NaN
    _same(_both(F.hardswish, TF.hardswish, x))
    (vn, gn), _ = _both(F.hardswish, TF.hardswish, [-INF, NAN])
    assert vn[0] == 0 and gn[0][0] == 0 and np.isnan(vn[1])


@pytest.mark.parametrize("name", ["softshrink", "hardshrink"])
def test_shrink_activations_propagate_nan(name):
    (vn, _), (vt, _) = _both(getattr(F, name), getattr(TF, name), [NAN, 0.2, -3.0, 1.0])
    np.testing.assert_array_equal(vn, vt)
    assert np.isnan(vn[0])


def test_gelu_tanh_float16_gradient_at_large_inputs():
    x = [6e4, -6e4, 100.0, -100.0, 9.0, -9.0, 11.0, 0.5]
    _same(_both(lambda t: F.gelu(t, approximate="tanh"),
                lambda t: TF.gelu(t, approximate="tanh"), x, dtype="float16"), rtol=1e-3)
    x = np.linspace(-12, 12, 49)
    _same(_both(lambda t: F.gelu(t, approximate="tanh"),
                lambda t: TF.gelu(t, approximate="tanh"), x), rtol=1e-6)


def test_sinc_float16_of_large_inputs_is_not_nan():
    (vn, gn), (vt, _) = _both(ng.sinc, torch.sinc, [6e4, -6e4, 3e4, 0.5], dtype="float16")
    np.testing.assert_allclose(vn.astype(float), vt.astype(float), atol=1e-3)
    assert np.isfinite(gn[0]).all() and gn[0].dtype == np.float16


# --- binary elementwise ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["logaddexp", "logaddexp2"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logaddexp_gradient_with_equal_huge_and_infinite_arguments(name, dtype):
    a = [1e38, -1e38, 3e4, INF, INF, 0.0, -INF, 1.0]
    b = [1e38, -1e38, 3e4, 0.0, -INF, INF, 2.0, 2.0]
    pair = _both(getattr(ng, name), getattr(torch, name), a, b, dtype=dtype)
    _same(pair, rtol=1e-6)
    assert ng.gradcheck(getattr(ng, name), np.array([0.3, -2.0]), np.array([1.0, 5.0]),
                        order=2)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_power_gradients_at_zero_exponent_and_zero_base():
    # d/dx x**0 is 0 for a tiny x whose x**-1 overflows and for NaN (PyTorch), not 0 · inf
    pair = _both(ng.power, torch.pow, [1e-45, NAN, 0.0, 2.0], [0.0, 0.0, -1.0, 0.0],
                 dtype="float32")
    _same(pair)
    # d/dy 0**y is -inf for y < 0 (inf · log 0), 0 for y >= 0
    _same(_both(lambda y: 0.0 ** y, lambda y: 0.0 ** y, [-1.0, -2.5, 0.0, 2.0]))
    assert ng.gradcheck(lambda a, b: a ** b, np.array([0.5, 2.0]), np.array([0.0, 0.0]),
                        order=2)


def test_divide_gradient_by_a_tiny_divisor():
    # y·y underflows to 0 in float32: -x/(y·y) would be 0/0 = NaN
    pair = _both(ng.divide, torch.div, [0.0, -0.0, INF, 1.0], [1e-45, 1e-45, 1e38, 3.0],
                 dtype="float32")
    _same(pair)


# --- reductions -----------------------------------------------------------------------------
def test_max_of_a_nan_tensor_sends_the_gradient_to_the_nan_only():
    x = [[NAN, 1.0, 2.0], [0.0, 0.0, 0.0]]
    pair = _both(lambda t: t.max(), lambda t: t.max(), x)
    _same(pair)
    (_, gn), _ = _both(lambda t: ng.amax(t, 1), lambda t: torch.amax(t, 1), x)
    # PyTorch's amax makes the whole row's gradient NaN; here only the NaN entry's is nonzero
    np.testing.assert_array_equal(gn[0], [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    (_, gn), _ = _both(lambda t: ng.linalg.vector_norm(t, INF, 1),
                       lambda t: torch.linalg.vector_norm(t, INF, 1), x)
    assert np.isfinite(gn[0][:, 1:]).all() and (gn[0][0, 1:] == 0).all()


def test_vector_norm_order_zero_has_zero_gradient_at_infinity():
    # a count of nonzeros: piecewise constant (PyTorch's graph does not even use the input)
    x = ng.tensor([[INF, -INF, 0.0], [NAN, 1.0, 2.0]], requires_grad=True)
    y = ng.linalg.vector_norm(x, 0, 1)
    np.testing.assert_array_equal(y.numpy(), [2.0, 3.0])
    (g,) = ng.autodiff.grad(y.sum(), [x])
    np.testing.assert_array_equal(g.numpy(), np.zeros((2, 3)))


@pytest.mark.parametrize("src", ["float32", "int64", "uint8", "bool"])
@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "uint8", "float16"])
def test_prod_returns_the_dtype_asked_for(src, dtype):
    x = np.array([1, 2, 100]).astype(src)
    tn, tt = ng.tensor(x), torch.tensor(x)
    for args in ((), (0,)):
        got = tn.prod(*args, dtype=dtype)
        want = tt.prod(*args, dtype=getattr(torch, dtype))
        assert str(got.dtype) == dtype and got.item() == want.item()
    assert str(ng.prod(tn, 0, dtype=dtype).dtype) == dtype


def test_float16_variance_and_std_are_worked_in_float32():
    # the squared deviations of float16 entries over 256 overflow float16
    x = [[300.0, -300.0, 0.0], [6e4, -6e4, 0.0]]
    pair = _both(lambda t: t.std(dim=1), lambda t: t.std(dim=1), x, dtype="float16")
    np.testing.assert_allclose(pair[0][0].astype(float), pair[1][0].astype(float), rtol=1e-3)
    assert np.isfinite(pair[0][1][0]).all() and pair[0][1][0].dtype == np.float16
    pair = _both(lambda t: t.var(dim=1), lambda t: t.var(dim=1), [[100.0, -100.0, 50.0]],
                 dtype="float16")
    _same(pair, rtol=1e-3)


def test_float16_layer_norm_of_large_entries():
    x = np.array([[300.0, -300.0, 0.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    w = np.array([1.0, 2.0, 0.5, 1.0])
    b = np.array([0.1, 0.0, 0.0, 1.0])
    pair = _both(lambda a, u, v: F.layer_norm(a, (4,), u, v),
                 lambda a, u, v: TF.layer_norm(a, (4,), u, v), x, w, b, dtype="float16")
    assert np.abs(pair[0][0][0, :2]).min() > 1  # not the overflowed 0
    _same(pair, rtol=5e-3)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_and_minimum_send_the_gradient_to_a_nan_operand(name):
    # the NaN is the result, so it gets the gradient (PyTorch gives 1 to both operands; the
    # old rule gave 0 to both, so a NaN never reached either gradient)
    f = getattr(ng, name)
    x = ng.tensor([NAN, 1.0, NAN, 2.0], requires_grad=True)
    y = ng.tensor([1.0, NAN, NAN, 2.0], requires_grad=True)
    gx, gy = ng.autodiff.grad(f(x, y).sum(), [x, y])
    np.testing.assert_array_equal(gx.numpy(), [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_array_equal(gy.numpy(), [0.0, 1.0, 0.5, 0.5])
    (g,) = ng.autodiff.grad(f(x, 2.0).sum(), [x])
    assert g.numpy()[0] == 1.0
    assert ng.gradcheck(f, np.array([0.5, -1.0, 2.0]), np.array([1.0, -2.0, 0.0]), order=2)


def test_float16_batch_norm_of_large_entries_and_its_running_statistics():
    x = (np.random.default_rng(0).standard_normal((8, 3, 5)) * 400).astype(np.float16)
    rn = [ng.tensor(np.zeros(3, np.float16)), ng.tensor(np.ones(3, np.float16))]
    rt = [torch.zeros(3, dtype=torch.float16), torch.ones(3, dtype=torch.float16)]
    w, b = [1.0, 2.0, 0.5], [0.0, 1.0, -1.0]
    pair = _both(lambda a, u, v: F.batch_norm(a, *rn, u, v, training=True),
                 lambda a, u, v: TF.batch_norm(a, *rt, u, v, training=True), x, w, b,
                 dtype="float16")
    assert np.abs(pair[0][0]).max() > 1  # not the overflowed 0
    np.testing.assert_allclose(pair[0][0].astype(float), pair[1][0].astype(float), atol=1e-2)
    for a, c in zip(rn, rt):
        assert a.dtype == np.float16
        np.testing.assert_allclose(a.numpy().astype(float), c.numpy().astype(float), rtol=1e-3)
    y = F.batch_norm(ng.tensor(x), *rn, training=False)
    want = TF.batch_norm(torch.tensor(x), *rt, training=False)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.numpy().astype(float), want.numpy().astype(float), atol=1e-3)


def test_float16_cosine_similarity_and_pairwise_distance_of_large_entries():
    x = np.array([[300.0, -300.0, 200.0, 100.0], [1.0, 2.0, 3.0, 4.0]], np.float16)
    pair = _both(lambda a: F.cosine_similarity(a, a * 0.5, dim=1),
                 lambda a: TF.cosine_similarity(a, a * 0.5, dim=1), x, dtype="float16")
    np.testing.assert_allclose(pair[0][0].astype(float), [1.0, 1.0], rtol=1e-3)
    np.testing.assert_allclose(pair[0][1][0].astype(float), pair[1][1][0], atol=1e-3)
    pair = _both(lambda a: F.pairwise_distance(a, a * 0.5),
                 lambda a: TF.pairwise_distance(a, a * 0.5), x, dtype="float16")
    assert np.isfinite(pair[0][0]).all()
    _same(pair, rtol=2e-3)


def test_cross_entropy_with_probabilities_counts_a_zero_probability_masked_class_as_zero():
    # PyTorch: 0 · -inf = NaN; the limit (the logit -50 below) is finite, as kl_div's 0 log 0
    t = np.array([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    x = ng.tensor(np.array([[-INF, 0.0, 1.0], [1.0, 2.0, 3.0]]), requires_grad=True)
    loss = F.cross_entropy(x, ng.tensor(t))
    (g,) = ng.autodiff.grad(loss, [x])
    xt = torch.tensor([[-50.0, 0.0, 1.0], [1.0, 2.0, 3.0]], dtype=torch.float64,
                      requires_grad=True)
    want = TF.cross_entropy(xt, torch.tensor(t))
    want.backward()
    np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), xt.grad.numpy(), atol=1e-20)


def test_sinc_second_derivative_at_zero():
    # d²/dx² sinc at 0 is -π²/3 (PyTorch gives NaN there, the old rule 0)
    x = np.array([0.0, 1e-5, -5e-4, 2e-3, 0.3, -2.5])
    assert ng.gradcheck(ng.sinc, x, order=2)
    t = ng.tensor(x[:1], requires_grad=True)
    (g,) = ng.autodiff.grad(ng.sinc(t).sum(), [t], create_graph=True)
    (h,) = ng.autodiff.grad(g.sum(), [t])
    np.testing.assert_allclose(h.numpy(), [-np.pi ** 2 / 3], rtol=1e-12)


def test_float16_transposed_convolution_rounds_once_as_torch():
    """The fold of a transposed convolution adds each tap's contribution in turn: in float16 it
    rounded at every add (natively float16 on CPUs with AVX512-FP16); PyTorch computes in
    float32 and rounds once, and so does nodegrad."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 7)).astype(np.float16) * 8
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16) * 8
    for kw in ({}, {"stride": 2, "padding": 1}, {"dilation": 2}):
        got = ng.nn.functional.conv_transpose2d(ng.tensor(x), ng.tensor(w), **kw)
        want = torch.nn.functional.conv_transpose2d(torch.tensor(x).float(),
                                                    torch.tensor(w).float(), **kw).half()
        assert got.dtype == ng.float16
        np.testing.assert_array_equal(got.numpy(), want.numpy())
