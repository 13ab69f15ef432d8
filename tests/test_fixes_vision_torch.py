"""PyTorch parity of pad (negative widths, empty results, out-of-range values), embedding_bag's
padding_idx range, grid_sample at non-finite coordinates and area interpolation to an empty
output: values and float64 gradients against torch.nn.functional."""

import itertools
import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

INF, NAN = np.inf, np.nan


def _both(fn_ng, fn_t, *arrays, grad=True, atol=1e-12):
    """Values and float64 gradients (of a random weighting of the output) agree."""
    tt = [torch.tensor(a, requires_grad=grad) for a in arrays]
    nt = [ng.tensor(a, requires_grad=grad) for a in arrays]
    yt, yn = fn_t(*tt), fn_ng(*nt)
    assert tuple(yn.shape) == tuple(yt.shape)
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), atol=atol, equal_nan=True)
    if not grad:
        return
    if yt.numel() == 0:  # (PyTorch's padding backwards leave such a gradient uninitialised)
        yn.sum().backward()
        for t in nt:
            np.testing.assert_array_equal(t.grad.numpy(), np.zeros(t.shape))
        return
    w = np.random.default_rng(0).standard_normal(tuple(yt.shape))
    (yt * torch.tensor(w)).sum().backward()
    (yn * ng.tensor(w)).sum().backward()
    for a, b in zip(tt, nt):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), atol=atol, equal_nan=True)


def _torch_error(f) -> bool:
    try:
        f()
    except Exception:  # noqa: BLE001
        return True
    return False


# --- pad: reflect and replicate read the whole input; circular wraps the cropped piece ----------
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_negative_widths_1d_match_torch(mode):
    for n in range(1, 6):
        x = np.arange(float(n)).reshape(1, n) * 1.5 + 0.25
        for lo, hi in itertools.product(range(-6, 6), repeat=2):
            if lo >= 0 and hi >= 0:
                continue
            def ft(t):
                return TF.pad(t, (lo, hi), mode=mode)
            def fn(t):
                return F.pad(t, (lo, hi), mode=mode)
            if _torch_error(lambda: ft(torch.tensor(x))):
                if mode != "circular":  # circular's errors include PyTorch's copy overlaps
                    with pytest.raises(ValueError):
                        fn(ng.tensor(x))
                continue
            if mode == "circular" and n + min(lo, 0) + min(hi, 0) <= 0 < n + lo + hi:
                with pytest.raises(ValueError):  # PyTorch reads uninitialised memory here
                    fn(ng.tensor(x))
                continue
            _both(fn, ft, x)


def test_pad_reflect_examples():
    def pad(v, w):
        return F.pad(ng.tensor(np.array([v], dtype=float)), w, mode="reflect").numpy()[0]

    np.testing.assert_array_equal(pad([0, 1, 2, 3], (-2, 2)), [2, 3, 2, 1])
    np.testing.assert_array_equal(pad([0, 1, 2], (2, -1)), [2, 1, 0, 1])
    np.testing.assert_array_equal(pad([0, 1, 2, 3], (-4, 2)), [2, 1])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("shape,widths", [
    ((2, 3, 4), (-2, 3, 2, -1)), ((1, 3, 5), (-4, 1, 0, 0)), ((2, 4, 5), (3, -4, -2, 2)),
    ((1, 2, 3, 4), (-1, 2, 1, -2, 1, -1)), ((2, 3, 4, 5), (2, -3, -2, 1, 0, 0)),
    ((1, 3, 4), (-4, 0, 0, 0)), ((1, 3, 4), (-4, 0, -3, 0)), ((1, 2, 3, 4), (-4, 0, 0, 0, -2, 0)),
    ((1, 3, 4), (-5, 0, 0, 0)), ((1, 3, 4), (-4, 0, 1, 1)), ((3, 4), (-1, -1)),
])
def test_pad_negative_widths_nd_match_torch(mode, shape, widths):
    x = np.random.default_rng(1).standard_normal(shape)
    pairs = [widths[i:i + 2] for i in range(0, len(widths), 2)]
    if mode == "circular" and any(max(lo, hi) > n + min(lo, 0) + min(hi, 0) for (lo, hi), n in
                                  zip(pairs, reversed(shape))):
        pytest.skip("PyTorch wraps past the cropped piece into uninitialised memory")
    def ft(t):
        return TF.pad(t, widths, mode=mode)
    def fn(t):
        return F.pad(t, widths, mode=mode)
    if _torch_error(lambda: ft(torch.tensor(x))):
        with pytest.raises(ValueError):
            fn(ng.tensor(x))
    else:
        _both(fn, ft, x)


def test_pad_circular_crop_to_empty():
    y = F.pad(ng.tensor(np.arange(4.0)).reshape(1, 1, 4), (0, -4), mode="circular")
    assert tuple(y.shape) == (1, 1, 0)
    _both(lambda t: F.pad(t, (-3, 0, -4, 1), mode="circular"),
          lambda t: TF.pad(t, (-3, 0, -4, 1), mode="circular"), np.ones((2, 4, 3)))


def test_pad_jit_and_vmap_with_negative_widths():
    x = ng.tensor(np.random.default_rng(2).standard_normal((3, 2, 5)))

    def f(t):
        return F.pad(t, (-2, 3), mode="reflect")

    expect = TF.pad(torch.tensor(x.numpy()), (-2, 3), mode="reflect").numpy()
    np.testing.assert_allclose(ng.jit(f)(x).numpy(), expect)
    np.testing.assert_allclose(ng.vmap(f)(x).numpy(), expect)


# --- pad, constant mode: crops beyond the dim and values that overflow the dtype -------------
@pytest.mark.parametrize("widths", [(-2, -3), (-4, 1), (2, -4), (-4, 4), (1, -4)])
def test_pad_constant_crop_past_the_dim_raises(widths):
    with pytest.raises(RuntimeError):
        TF.pad(torch.ones(4, 3), widths)
    with pytest.raises(ValueError, match="pad"):
        F.pad(ng.ones((4, 3)), widths)


@pytest.mark.parametrize("widths", [(-3, 0), (-3, 3), (-1, -2), (0, 0, -4, 1)])
def test_pad_constant_crop_to_empty_matches_torch(widths):
    _both(lambda t: F.pad(t, widths, value=2.0), lambda t: TF.pad(t, widths, value=2.0),
          np.random.default_rng(3).standard_normal((4, 3)))


@pytest.mark.parametrize("dtype,value", [
    ("float32", 1e300), ("float32", 3.5e38), ("float16", 1e5), ("float16", 65520.0),
    ("bfloat16", 1e300), ("int32", 2**40), ("int32", float("inf")), ("uint8", -1),
    ("int8", -129),
])
def test_pad_value_overflowing_the_dtype_raises(dtype, value):
    with pytest.raises(RuntimeError):
        TF.pad(torch.ones(2, dtype=getattr(torch, dtype)), (1, 1), value=value)
    with pytest.raises(OverflowError, match="pad"):
        F.pad(ng.ones(2, dtype=dtype), (1, 1), value=value)


@pytest.mark.parametrize("dtype,value", [
    ("float32", float("inf")), ("float32", float("nan")), ("float32", -3.4e38),
    ("float16", 65504.0), ("int32", 2.7), ("int32", -(2**31)), ("bool", 5), ("float64", 1e300),
])
def test_pad_value_that_fits_matches_torch(dtype, value):
    a = TF.pad(torch.ones(2, dtype=getattr(torch, dtype)), (1, 1), value=value)
    b = F.pad(ng.ones(2, dtype=dtype), (1, 1), value=value)
    np.testing.assert_array_equal(b.numpy().astype(float), a.double().numpy())


# --- embedding_bag: padding_idx must name a row --------------------------------------------------
@pytest.mark.parametrize("padding_idx", [4, 5, -5, 100])
def test_embedding_bag_padding_idx_out_of_range_raises(padding_idx):
    w = np.arange(12.0).reshape(4, 3)
    idx, off = np.array([0, 1, 2, 3]), np.array([0, 2])
    with pytest.raises(RuntimeError, match="padding_idx"):
        TF.embedding_bag(torch.tensor(idx), torch.tensor(w), torch.tensor(off),
                         padding_idx=padding_idx)
    with pytest.raises(ValueError, match="padding_idx must be within"):
        F.embedding_bag(ng.tensor(idx), ng.tensor(w), ng.tensor(off), mode="sum",
                        padding_idx=padding_idx)


@pytest.mark.parametrize("padding_idx", [-4, -1, 0, 3])
def test_embedding_bag_padding_idx_in_range_matches_torch(padding_idx):
    w = np.random.default_rng(4).standard_normal((4, 3))
    idx, off = np.array([0, 1, 2, 3, 3, 1]), np.array([0, 2, 5])
    _both(lambda t: F.embedding_bag(ng.tensor(idx), t, ng.tensor(off), mode="mean",
                                    padding_idx=padding_idx),
          lambda t: TF.embedding_bag(torch.tensor(idx), t, torch.tensor(off), mode="mean",
                                     padding_idx=padding_idx), w)


# --- grid_sample at ±inf and NaN coordinates ---------------------------------------------------
def _points(nd: int, finite=(0.3, -0.7)):
    vals = (INF, -INF, NAN) + finite
    pts = [p for p in itertools.product(vals, repeat=nd) if not all(np.isfinite(p))]
    return np.array(pts, dtype=np.float64)


def _grid(pts, nd):
    return pts.reshape((1,) + (1,) * (nd - 1) + (len(pts), nd)).repeat(2, axis=0)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_grid_sample_2d_nonfinite_values(mode, padding_mode, align_corners, dtype):
    x = np.random.default_rng(5).standard_normal((2, 3, 3, 4)).astype(dtype)
    g = _grid(_points(2), 2).astype(dtype)
    kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    a = TF.grid_sample(torch.tensor(x), torch.tensor(g), **kw).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = F.grid_sample(ng.tensor(x), ng.tensor(g), **kw).numpy()
    np.testing.assert_allclose(b, a, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_3d_nonfinite_values_and_grads(mode, padding_mode, align_corners):
    x = np.random.default_rng(6).standard_normal((2, 2, 3, 4, 5))
    g = _grid(_points(3), 3)
    kw = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _both(lambda a, b: F.grid_sample(a, b, **kw), lambda a, b: TF.grid_sample(a, b, **kw),
              x, g)


@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_2d_border_infinite_grads(align_corners):
    # (PyTorch's 2-D backward is only usable at ±inf under 'border': NaN crashes it there)
    x = np.random.default_rng(7).standard_normal((2, 2, 3, 4))
    pts = np.array([p for p in itertools.product((INF, -INF, 0.3, -0.6), repeat=2)])
    kw = dict(padding_mode="border", align_corners=align_corners)
    for mode in ("bilinear", "nearest"):
        _both(lambda a, b: F.grid_sample(a, b, mode=mode, **kw),
              lambda a, b: TF.grid_sample(a, b, mode=mode, **kw), x, _grid(pts, 2))


def test_grid_sample_2d_nan_lands_on_the_first_pixel():
    x = ng.tensor(np.arange(12.0).reshape(1, 1, 3, 4))
    g = ng.tensor(np.array([[[[INF, 0.0], [-INF, 0.0], [NAN, 0.0]]]]))
    for pm, want in (("border", [7.0, 4.0, 4.0]), ("reflection", [4.0, 4.0, 4.0])):
        for mode in ("bilinear", "nearest"):
            y = F.grid_sample(x, g, mode=mode, padding_mode=pm, align_corners=False)
            np.testing.assert_array_equal(y.numpy().ravel(), want)


# --- interpolate: 'area' takes an empty output, the other modes do not ---------------------------
@pytest.mark.parametrize("shape,kw", [
    ((1, 2, 3), dict(scale_factor=0.25)), ((1, 2, 3), dict(size=0)),
    ((2, 1, 3, 4), dict(size=(0, 2))), ((1, 2, 3, 4), dict(scale_factor=0.25)),
    ((2, 1, 3, 4, 5), dict(size=(2, 0, 3))), ((1, 1, 3, 4, 5), dict(scale_factor=(0.2, 1, 1))),
])
def test_interpolate_area_empty_output(shape, kw):
    x = np.random.default_rng(8).standard_normal(shape)
    # (PyTorch's adaptive_avg_pool backward refuses an empty grad_output: values only)
    _both(lambda t: F.interpolate(t, mode="area", **kw),
          lambda t: TF.interpolate(t, mode="area", **kw), x, grad=False)
    xn = ng.tensor(x, requires_grad=True)
    F.interpolate(xn, mode="area", **kw).sum().backward()
    np.testing.assert_array_equal(xn.grad.numpy(), np.zeros(shape))


@pytest.mark.parametrize("mode,shape", [
    ("nearest", (1, 1, 3)), ("nearest-exact", (1, 1, 3)), ("linear", (1, 1, 3)),
    ("bilinear", (1, 1, 3, 3)), ("bicubic", (1, 1, 3, 3)), ("trilinear", (1, 1, 3, 3, 3)),
])
def test_interpolate_other_modes_refuse_an_empty_output(mode, shape):
    size = (0,) + (2,) * (len(shape) - 3)
    with pytest.raises(RuntimeError):
        TF.interpolate(torch.ones(shape), size=size, mode=mode)
    with pytest.raises(ValueError, match="positive"):
        F.interpolate(ng.ones(shape), size=size, mode=mode)
