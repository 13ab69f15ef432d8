"""Activations, linear maps, prelu and one_hot against PyTorch: values at the edges, result
shapes, gradients and the errors PyTorch raises."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
F = ng.nn.functional
TF = torch.nn.functional


def _outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - only whether it raised is compared
        return None, e


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsigmoid_large_input_is_positive_zero(dtype):
    x = np.array([np.inf, 1000.0, 800.0, -0.0, 3.0, -5.0, -np.inf], dtype=dtype)
    want = TF.logsigmoid(torch.tensor(x)).numpy()
    got = F.logsigmoid(ng.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (np.signbit(got) == np.signbit(want)).all()


@pytest.mark.parametrize("x_shape, w_shape, b_shape", [
    ((2, 3), (3,), None), ((3,), (3,), None), ((0,), (0,), None), ((2, 5, 3), (3,), None),
    ((3,), (3,), ()), ((2, 3), (4, 3), (1,)), ((2, 3), (4, 3), ()), ((5, 2, 3), (4, 3), (2, 4)),
    ((2, 3), (4, 3), (2, 1)),
])
def test_linear_1d_weight_and_broadcast_bias(x_shape, w_shape, b_shape):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in (x_shape, w_shape)]
    if b_shape is not None:
        arrays.append(rng.standard_normal(b_shape))
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    ns = [ng.tensor(a, requires_grad=True) for a in arrays]
    yt, yn = TF.linear(*ts), F.linear(*ns)
    assert tuple(yn.shape) == tuple(yt.shape)
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=1e-12)
    (yt ** 2).sum().backward()
    (yn ** 2).sum().backward()
    for t, n in zip(ts, ns):
        np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("x_shape, w_shape, b_shape", [
    ((2, 3), (4, 3), (3,)), ((2, 3), (4, 3), (3, 4)), ((2, 3), (4,), None),
    ((2, 3), (3,), (2,)), ((2, 3), (4, 2, 3), None),
])
def test_linear_refuses_what_pytorch_refuses(x_shape, w_shape, b_shape):
    def args(lib):
        b = None if b_shape is None else lib.ones(b_shape)
        return lib.ones(x_shape), lib.ones(w_shape), b
    assert _outcome(lambda: TF.linear(*args(torch)))[1] is not None
    with pytest.raises(ng.ShapeError, match="linear"):
        F.linear(*args(ng))


@pytest.mark.parametrize("x_shape, w_shape", [
    ((2, 0, 3), (0,)), ((2, 0), (1,)), ((2, 3), ()), ((3,), (1,)), ((2, 3, 4), (3,)),
    ((2, 3), (1, 1)), ((2, 3), (3, 1)), ((3,), (3,)), ((3,), (0,)),
])
def test_prelu_weight_shapes(x_shape, w_shape):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    want, terr = _outcome(lambda: TF.prelu(torch.tensor(x), torch.tensor(w)))
    if terr is not None:
        with pytest.raises(ng.ShapeError, match="prelu"):
            F.prelu(ng.tensor(x), ng.tensor(w))
        return
    got = F.prelu(ng.tensor(x), ng.tensor(w))
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("num_classes", [0, -1, -2])
def test_one_hot_of_empty_labels_needs_classes(num_classes):
    with pytest.raises(RuntimeError):
        TF.one_hot(torch.zeros(0, dtype=torch.int64), num_classes)
    with pytest.raises(ValueError, match="one_hot"):
        F.one_hot(ng.tensor(np.zeros(0, dtype=np.int64)), num_classes)
    assert F.one_hot(ng.tensor(np.zeros(0, dtype=np.int64)), 3).shape == (0, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 200])  # the short form and the one-pass loop on long arrays
def test_hardswish_is_negative_zero_from_minus_three_down(dtype, n):
    x = np.tile(np.array([-3.0, -5.0, -1e30, -0.0, 0.0, -1.0, 3.0, 7.0]), n).astype(dtype)
    want = TF.hardswish(torch.tensor(x)).numpy()
    got = F.hardswish(ng.tensor(x)).numpy()
    np.testing.assert_array_equal(got, want)
    assert (np.signbit(got) == np.signbit(want)).all()


@pytest.mark.parametrize("name, args", [
    ("Softplus", ()), ("Softplus", (2, 1)), ("Softshrink", ()), ("Softshrink", (1.0,)),
    ("Hardshrink", ()), ("Hardshrink", (0.25,)), ("GLU", ()), ("GLU", (0,)),
])
def test_activation_module_repr(name, args):
    assert repr(getattr(ng.nn, name)(*args)).split("  #")[0] == repr(getattr(torch.nn, name)(*args))


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "bool"])
def test_dropout_p1_keeps_an_integer_dtype(dtype):
    x = np.array([1, 0, 1, 1]).astype(dtype)
    want = TF.dropout(torch.tensor(x), 1.0, True)
    got = F.dropout(ng.tensor(x), 1.0, True)
    assert str(got.dtype) == str(want.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("lower, upper", [(-0.1, 0.3), (-0.5, -0.1), (0.2, 0.2), (0.5, 0.1)])
def test_rrelu_bounds_checked_as_pytorch(lower, upper):
    x = np.array([-1.0, 2.0, -3.0, 0.0])
    want, terr = _outcome(lambda: TF.rrelu(torch.tensor(x), lower, upper, False))
    if terr is not None:
        with pytest.raises(ValueError, match="rrelu"):
            F.rrelu(ng.tensor(x), lower, upper, False)
        return
    np.testing.assert_allclose(F.rrelu(ng.tensor(x), lower, upper, False).numpy(), want.numpy())
    got = F.rrelu(ng.tensor(x), lower, upper, True).numpy()  # a drawn in [lower, upper]
    slopes = got[[0, 2]] / x[[0, 2]]
    assert ((slopes >= lower - 1e-12) & (slopes <= upper + 1e-12)).all()
    assert got[1] == 2.0


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (64, 9), (6, 300), (2, 3, 70)])
def test_softmax_rows_with_infinities(name, dtype, shape):
    """A row holding +inf (for softmin -inf) is NaN throughout, as PyTorch's (inf - inf); an
    all -inf row is NaN, a row with some -inf has zeros there."""
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    f = x.reshape(-1, shape[-1])
    f[0, 0] = np.inf
    f[1] = -np.inf
    f[2, 1] = np.nan
    f[3, :2] = (np.inf, -np.inf)
    f[4, 0] = -np.inf
    f[5, -1] = -np.inf
    want = getattr(TF, name)(torch.tensor(x), -1).numpy()
    got = getattr(F, name)(ng.tensor(x), -1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
