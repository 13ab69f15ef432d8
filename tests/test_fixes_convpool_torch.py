"""Convolution, pooling and normalisation layers against PyTorch: values, running statistics,
gradients and the errors PyTorch raises."""

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional


@pytest.mark.parametrize("x", [
    [1.0, np.inf, 2.0, -np.inf, 3.0, 0.0],
    [1.0, -np.inf, -np.inf, 0.5, np.inf, np.inf],
    [1.0, 5.0, 2.0, 7.0, 3.0, 0.0],
])
def test_max_unpool_repeated_index_keeps_infinite_values(x):
    # overlapping windows pick one position several times: it holds the value once, inf too
    x = np.array(x, dtype=np.float64)[None, None]
    y, idx = TF.max_pool1d(torch.tensor(x), 3, 1, return_indices=True)
    g = np.arange(1.0, 7.0).reshape(1, 1, 6)
    ty = y.detach().requires_grad_()
    want = TF.max_unpool1d(ty, idx, 3, 1, output_size=(6,))
    want.backward(torch.tensor(g))
    ny = ng.tensor(y.numpy(), requires_grad=True)
    got = F.max_unpool1d(ny, ng.tensor(idx.numpy()), 3, 1, output_size=(6,))
    got.backward(ng.tensor(g))
    np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    finite = np.isfinite(y.numpy())
    np.testing.assert_array_equal(ny.grad.numpy()[finite], ty.grad.numpy()[finite])


@pytest.mark.parametrize("stats", ["none", "mean only", "var only"])
@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_missing_running_statistics(stats, training):
    x = np.random.default_rng(0).standard_normal((4, 3))
    rm = None if stats in ("none", "var only") else np.zeros(3)
    rv = None if stats in ("none", "mean only") else np.ones(3)

    def run(lib, fn):
        def t(a):
            return None if a is None else lib.tensor(a)

        return fn(t(x), t(rm), t(rv), training=training)

    try:
        want = run(torch, TF.batch_norm).numpy()
    except (RuntimeError, ValueError):
        with pytest.raises(ValueError, match="batch_norm"):
            run(ng, F.batch_norm)
        return
    np.testing.assert_allclose(run(ng, F.batch_norm).numpy(), want, rtol=1e-12)


def test_batch_norm_empty_input_without_statistics_in_eval():
    x = np.zeros((0, 3))
    assert F.batch_norm(ng.tensor(x), None, None).shape == TF.batch_norm(
        torch.tensor(x), None, None).shape


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("cls", ["BatchNorm1d", "BatchNorm2d"])
def test_batchnorm_track_running_stats_turned_off(cls, momentum):
    # PyTorch: training then neither counts batches nor moves the statistics, and eval still
    # normalises by them
    rng = np.random.default_rng(1)
    tm = getattr(torch.nn, cls)(3, momentum=momentum).double()
    nm = getattr(ng.nn, cls)(3, momentum=momentum, dtype=ng.float64)
    shape = (4, 3) if cls == "BatchNorm1d" else (4, 3, 2, 2)
    for m in (tm, nm):
        m.train()
    for _ in range(2):  # some tracked steps first
        x = rng.standard_normal(shape)
        tm(torch.tensor(x))
        nm(ng.tensor(x))
    for m in (tm, nm):
        m.track_running_stats = False
    for training in (True, True, False):
        tm.train(training)
        nm.train(training)
        x = rng.standard_normal(shape) * 2 + 1
        np.testing.assert_allclose(nm(ng.tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(),
                                   rtol=1e-10, atol=1e-12)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            np.testing.assert_allclose(getattr(nm, name).numpy(),
                                       getattr(tm, name).numpy(), rtol=1e-12)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("extra", [-1, 0, 1, 2])
def test_conv_transpose_output_size_length(batched, extra):
    # output_size gives the spatial sizes, optionally led by the batch and channel sizes
    # (PyTorch's rule); another length is an error, not its last entries
    rng = np.random.default_rng(2)
    tm = torch.nn.ConvTranspose2d(2, 3, 3, stride=2).double()
    nm = ng.nn.ConvTranspose2d(2, 3, 3, stride=2, dtype=ng.float64)
    nm.weight._data[...] = tm.weight.detach().numpy()
    nm.bias._data[...] = tm.bias.detach().numpy()
    x = rng.standard_normal((1, 2, 4, 5) if batched else (2, 4, 5))
    size = list(x.shape[:-2]) + [10, 12]
    size = size[len(size) - 2 - extra:] if extra >= 0 else size[-1:]
    try:
        want = tm(torch.tensor(x), output_size=size).detach().numpy()
    except ValueError:
        with pytest.raises(ValueError, match="output_size"):
            nm(ng.tensor(x), output_size=size)
        return
    np.testing.assert_allclose(nm(ng.tensor(x), output_size=size).numpy(), want, rtol=1e-12)


def _same_error_or_values(tfn, nfn, x, **kw):
    """Both raise (nodegrad a ValueError naming the operation) or both give the same values."""
    try:
        want = tfn(torch.tensor(x), **kw).numpy()
    except RuntimeError:
        with pytest.raises(ValueError, match=nfn.__name__):
            nfn(ng.tensor(x), **kw)
        return
    np.testing.assert_allclose(nfn(ng.tensor(x), **kw).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("shape, kw", [
    ((1, 2, 2, 4, 4), dict(kernel_size=3, padding=1)),
    ((1, 2, 4, 3, 3), dict(kernel_size=4, ceil_mode=True)),
    ((2, 4, 2, 4, 1), dict(kernel_size=(2, 2, 2), padding=(0, 0, 1))),
    ((1, 2, 3, 3, 3), dict(kernel_size=3, padding=1)),
    ((2, 3, 4, 5), dict(kernel_size=(2, 2, 3), padding=1, ceil_mode=True)),
])
def test_avg_pool3d_input_smaller_than_kernel(shape, kw):
    # PyTorch's avg_pool3d needs the unpadded input at least as large as the kernel
    x = np.random.default_rng(3).standard_normal(shape)
    _same_error_or_values(TF.avg_pool3d, F.avg_pool3d, x, **kw)
    _same_error_or_values(TF.lp_pool3d, F.lp_pool3d, np.abs(x), norm_type=2, **{
        k: v for k, v in kw.items() if k != "padding"})


@pytest.mark.parametrize("kw", [
    dict(kernel_size=(2,)), dict(kernel_size=2, dilation=(1,)), dict(kernel_size=2, padding=(1,)),
    dict(kernel_size=2, stride=(1,)), dict(kernel_size=(2, 1, 1)), dict(kernel_size=[2, 1]),
    dict(kernel_size=2, stride=(2, 1), padding=[1, 0]),
])
def test_fold_unfold_take_an_int_or_two(kw):
    x = np.random.default_rng(4).standard_normal((1, 2, 4, 4))
    _same_error_or_values(TF.unfold, F.unfold, x, **kw)
    cols = TF.unfold(torch.tensor(x), 2).numpy()
    for size in ((4,), (4, 4), 4):
        _same_error_or_values(TF.fold, F.fold, cols, output_size=size, kernel_size=2)


@pytest.mark.parametrize("fn, xs, ws, kw", [
    ("conv2d", (1, 2, 0, 3), (1, 2, 1, 1), dict(padding=1)),
    ("conv2d", (1, 2, 0, 3), (1, 2, 2, 2), dict(padding="same")),
    ("conv1d", (2, 1, 0), (1, 1, 1), dict(padding=2)),
    ("conv3d", (1, 1, 2, 0, 2), (1, 1, 1, 1, 1), dict(padding=(0, 1, 0))),
    ("conv_transpose2d", (1, 2, 0, 3), (2, 1, 3, 3), {}),
    ("conv_transpose1d", (1, 2, 0), (2, 1, 3), dict(stride=2)),
    ("conv2d", (0, 2, 0, 3), (1, 2, 1, 1), dict(padding=1)),
    ("conv_transpose2d", (0, 2, 0, 3), (2, 1, 3, 3), {}),
])
def test_conv_empty_spatial_input(fn, xs, ws, kw):
    # PyTorch takes an empty input only when it has no samples or no channels
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    try:
        want = getattr(TF, fn)(torch.tensor(x), torch.tensor(w), **kw).numpy()
    except RuntimeError:
        with pytest.raises(ValueError, match=fn):
            getattr(F, fn)(ng.tensor(x), ng.tensor(w), **kw)
        return
    got = getattr(F, fn)(ng.tensor(x), ng.tensor(w), **kw).numpy()
    assert got.shape == want.shape


@pytest.mark.parametrize("fn, x, kw", [
    ("max_pool1d", [[[-np.inf, -np.inf, 2.0]]], dict(kernel_size=3, stride=1, padding=1)),
    ("max_pool1d", [[[-np.inf, -np.inf, -np.inf, 2.0]]],
     dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("max_pool2d", np.where(np.arange(20).reshape(1, 1, 4, 5) == 19, 1.0, -np.inf),
     dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool3d", np.full((1, 1, 2, 3, 3), -np.inf), dict(kernel_size=2, padding=1)),
])
def test_max_pool_all_minus_inf_window_never_picks_padding(fn, x, kw):
    # PyTorch gives such a window its first position inside the input: index and gradient
    x = np.asarray(x, dtype=np.float64)
    t = torch.tensor(x, requires_grad=True)
    ty, ti = getattr(TF, fn)(t, return_indices=True, **kw)
    ty.sum().backward()
    n = ng.tensor(x, requires_grad=True)
    ny, ni = getattr(F, fn)(n, return_indices=True, **kw)
    ny.sum().backward()
    np.testing.assert_array_equal(ni.numpy(), ti.numpy())
    np.testing.assert_array_equal(n.grad.numpy(), t.grad.numpy())
    m = ng.tensor(x, requires_grad=True)
    getattr(F, fn)(m, **kw).sum().backward()
    np.testing.assert_array_equal(m.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize("fn", ["adaptive_avg_pool1d", "adaptive_max_pool1d",
                                "adaptive_avg_pool2d", "adaptive_max_pool2d",
                                "adaptive_avg_pool3d", "adaptive_max_pool3d"])
@pytest.mark.parametrize("lead, at", [((1, 2), 0), ((0, 2), -1), ((2,), 0), ((0,), None)])
def test_adaptive_pool_empty_spatial_axis(fn, lead, at):
    # PyTorch refuses an empty spatial axis (the leading axis alone may be empty)
    nd = int(fn[-2])
    sp = [3] * nd
    if at is not None:
        sp[at] = 0
    x = np.zeros(lead + tuple(sp))
    try:
        want = getattr(TF, fn)(torch.tensor(x), 2)
    except RuntimeError:
        with pytest.raises(ValueError, match=fn):
            getattr(F, fn)(ng.tensor(x), 2)
        return
    want = want[0] if isinstance(want, tuple) else want
    assert getattr(F, fn)(ng.tensor(x), 2).shape == tuple(want.shape)


def test_max_unpool_empty_output_ignores_indices():
    x, idx = np.ones((2, 1, 1)), np.zeros((2, 1, 1), dtype=np.int64)
    want = TF.max_unpool1d(torch.tensor(x), torch.tensor(idx), 2, padding=1)
    got = F.max_unpool1d(ng.tensor(x), ng.tensor(idx), 2, padding=1)
    assert got.shape == tuple(want.shape) == (2, 1, 0)


@pytest.mark.parametrize("fn", ["layer_norm", "rms_norm"])
def test_norm_over_no_axes_raises(fn):
    x = np.ones((2, 3))
    with pytest.raises(RuntimeError):
        getattr(TF, fn)(torch.tensor(x), [])
    with pytest.raises(ValueError, match=fn):
        getattr(F, fn)(ng.tensor(x), [])


@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 0, 3, 3), (0, 2, 3)])
def test_local_response_norm_without_channels(shape):
    x = np.zeros(shape)
    want = TF.local_response_norm(torch.tensor(x), 2)
    assert F.local_response_norm(ng.tensor(x), 2).shape == tuple(want.shape)


@pytest.mark.parametrize("fn, kw", [
    ("max_pool1d", dict(kernel_size=3, stride=1)), ("max_pool2d", dict(kernel_size=2, padding=1)),
    ("max_pool3d", dict(kernel_size=2, stride=1)), ("adaptive_max_pool1d", dict(output_size=4)),
    ("adaptive_max_pool2d", dict(output_size=(3, 2))),
])
def test_max_pool_nan_takes_the_last_nan(fn, kw):
    # PyTorch's scan keeps the latest NaN of a window: its index and gradient
    rng = np.random.default_rng(6)
    nd = int(fn[-2])
    x = rng.integers(-2, 3, (2, 2) + (5,) * nd).astype(np.float64)
    x[rng.random(x.shape) < 0.3] = np.nan
    t = torch.tensor(x, requires_grad=True)
    ty, ti = getattr(TF, fn)(t, return_indices=True, **kw)
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(g))
    for indices in (True, False):
        n = ng.tensor(x, requires_grad=True)
        out = getattr(F, fn)(n, return_indices=indices, **kw)
        ny = out[0] if indices else out
        ny.backward(ng.tensor(g))
        np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)
        if indices:
            np.testing.assert_array_equal(out[1].numpy(), ti.numpy())


@pytest.mark.parametrize("fn, args", [("max_pool2d", (2,)), ("avg_pool2d", (2,)),
                                      ("lp_pool2d", (2.0, 2)), ("max_pool1d", (3,)),
                                      ("avg_pool3d", (2,))])
@pytest.mark.parametrize("stride", [[], ()])
def test_pool_empty_stride_is_the_kernel(fn, args, stride):
    nd = int(fn[-2])
    x = np.abs(np.random.default_rng(7).standard_normal((1, 2) + (6,) * nd))
    want = getattr(TF, fn)(torch.tensor(x), *args, stride=stride).numpy()
    got = getattr(F, fn)(ng.tensor(x), *args, stride=stride).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_instance_norm_eps_zero_constant_channel(dtype):
    # PyTorch's kernel takes a zero variance with eps = 0 as an inverse deviation of 0
    x = np.ones((3, 2, 4), dtype=dtype)
    x[:, 1] = np.arange(12.0).reshape(3, 4)
    g = np.random.default_rng(8).standard_normal(x.shape).astype(dtype)
    t = torch.tensor(x, requires_grad=True)
    want = TF.instance_norm(t, eps=0.0)
    want.backward(torch.tensor(g))
    n = ng.tensor(x, requires_grad=True)
    got = F.instance_norm(n, eps=0.0)
    got.backward(ng.tensor(g))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nd", [2, 3])
def test_fractional_max_pool_nan_takes_the_last_nan(nd):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2) + (6,) * nd)
    x[rng.random(x.shape) < 0.25] = np.nan
    samples = rng.random((2, 2, nd))
    fn = f"fractional_max_pool{nd}d"
    t = torch.tensor(x, requires_grad=True)
    ty, ti = getattr(TF, fn)(t, 2, output_size=3, return_indices=True,
                             _random_samples=torch.tensor(samples))
    g = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(g))
    n = ng.tensor(x, requires_grad=True)
    ny, ni = getattr(F, fn)(n, 2, output_size=3, return_indices=True,
                            _random_samples=ng.tensor(samples))
    ny.backward(ng.tensor(g))
    np.testing.assert_array_equal(ni.numpy(), ti.numpy())
    np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm_type", [1, 2, 3, 2.0, 1.5])
@pytest.mark.parametrize("fn, k", [("lp_pool1d", 3), ("lp_pool2d", 2), ("lp_pool3d", 2)])
def test_lp_pool_integer_input(fn, k, norm_type):
    # an int norm_type keeps integer input integer until the root (PyTorch's pow), so the
    # average rounds toward zero; a float one works in float32
    nd = int(fn[-2])
    x = np.random.default_rng(10).integers(-4, 5, (2, 2) + (5,) * nd)
    want = getattr(TF, fn)(torch.tensor(x), norm_type, k, ceil_mode=True)
    got = getattr(F, fn)(ng.tensor(x), norm_type, k, ceil_mode=True)
    assert str(got.dtype) == str(want.dtype).removeprefix("torch.")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, equal_nan=True)
