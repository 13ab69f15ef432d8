"""NumPy's nan-aware reductions and statistics (nodegrad.ops.numpy_stats) against NumPy: values,
dtypes, shapes, NaN / all-NaN / empty inputs, warnings and errors; float64 gradients by central
differences, and against PyTorch where it has the same function; one jit and one vmap check."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.testing import gradcheck

NAN = np.nan
_EXC = (ValueError, TypeError, IndexError, ZeroDivisionError)


def _data():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4, 5))
    a[0, 1, 2] = a[1, 3, 0] = a[2, 0, 4] = NAN
    a[1, 2, :] = NAN  # an all-NaN lane along the last axis
    return {
        "vec": rng.normal(size=7),
        "vec_nan": np.array([3.0, NAN, 1.0, 2.0, NAN, 5.0]),
        "all_nan": np.array([NAN, NAN, NAN]),
        "mat": rng.normal(size=(4, 5)),
        "cube_nan": a,
        "ties": np.array([[1.0, 3.0, 3.0, 2.0], [2.0, 2.0, NAN, 0.5]]),
        "empty": np.zeros((0,)),
        "empty_rows": np.zeros((0, 3)),
        "ints": np.array([[3, 1, 4, 1], [5, 9, 2, 6]]),
    }


DATA = _data()
AXES = {"vec": [None, 0], "vec_nan": [None, 0, -1], "all_nan": [None, 0],
        "mat": [None, 0, 1, (0, 1)], "cube_nan": [None, 0, -1, (0, 2)],
        "ties": [None, 0, 1], "empty": [None, 0], "empty_rows": [None, 0, 1],
        "ints": [None, 0, 1]}


def _run(f, *args, **kw):
    """(result or exception, whether a RuntimeWarning was raised)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            r = f(*args, **kw)
        except _EXC as e:
            return e, False
    return r, any(issubclass(x.category, RuntimeWarning) for x in w)


def _same(ours, ref, rtol=1e-12, atol=1e-12):
    if isinstance(ref, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(ref)
        for o, r in zip(ours, ref):
            _same(o, r, rtol, atol)
        return
    a, b = np.asarray(ours.numpy()), np.asarray(ref)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def _agree(name, ng_fn, np_fn, *args, **kw):
    """Both give the same values/dtype/shape and warn alike, or both raise (ours naming the
    function)."""
    ref, ref_warned = _run(np_fn, *args, **kw)
    ng_args = [ng.tensor(a) if isinstance(a, np.ndarray) else a for a in args]
    ours, our_warned = _run(ng_fn, *ng_args, **kw)
    if isinstance(ref, Exception):
        assert isinstance(ours, Exception), f"numpy raised {ref!r}, nodegrad returned {ours}"
        assert isinstance(ours, type(ref)) or isinstance(ref, IndexError | TypeError), \
            (ours, ref)
        assert name in str(ours)
        return
    assert not isinstance(ours, Exception), f"nodegrad raised {ours!r}, numpy gave {ref}"
    _same(ours, ref)
    assert our_warned == ref_warned, (our_warned, ref_warned)


# --- values against NumPy ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nanmax", "nanmin", "nanprod", "ptp"])
@pytest.mark.parametrize("key", list(AXES))
def test_nan_reductions_match_numpy(name, key):
    for axis in AXES[key]:
        for kd in (False, True):
            _agree(name, getattr(ng, name), getattr(np, name), DATA[key], axis=axis, keepdims=kd)


@pytest.mark.parametrize("name", ["nanvar", "nanstd"])
@pytest.mark.parametrize("key", list(AXES))
def test_nanvar_nanstd_match_numpy(name, key):
    for axis in AXES[key]:
        for ddof, kd in ((0, False), (1, True), (4, False)):
            _agree(name, getattr(ng, name), getattr(np, name), DATA[key], axis=axis, ddof=ddof,
                   keepdims=kd)


@pytest.mark.parametrize("name", ["nanargmax", "nanargmin"])
@pytest.mark.parametrize("key", list(DATA))
def test_nanargmax_nanargmin_match_numpy(name, key):
    x = DATA[key]
    for axis in [None] + list(range(x.ndim)):
        _agree(name, getattr(ng, name), getattr(np, name), x, axis=axis)
        _agree(name, getattr(ng, name), getattr(np, name), x, axis=axis, keepdims=True)


@pytest.mark.parametrize("name", ["nancumsum", "nancumprod"])
@pytest.mark.parametrize("key", list(DATA))
def test_nan_scans_match_numpy(name, key):
    x = DATA[key]
    for axis in [None] + list(range(x.ndim)):
        _agree(name, getattr(ng, name), getattr(np, name), x, axis=axis)


@pytest.mark.parametrize("name", ["cumulative_sum", "cumulative_prod"])
@pytest.mark.parametrize("key", list(DATA))
@pytest.mark.parametrize("initial", [False, True])
def test_cumulative_match_numpy(name, key, initial):
    x = DATA[key]
    for axis in [None] + list(range(x.ndim)):
        _agree(name, getattr(ng, name), getattr(np, name), x, axis=axis,
               include_initial=initial)
    _agree(name, getattr(ng, name), getattr(np, name), np.array(2.5), include_initial=initial)


METHODS = ["inverted_cdf", "averaged_inverted_cdf", "closest_observation",
           "interpolated_inverted_cdf", "hazen", "weibull", "linear", "median_unbiased",
           "normal_unbiased", "lower", "higher", "midpoint", "nearest"]


@pytest.mark.parametrize("name", ["percentile", "nanpercentile"])
@pytest.mark.parametrize("key", list(AXES))
def test_percentile_matches_numpy(name, key):
    for axis in AXES[key]:
        for q in (50, 0, 100, 37.5, [10.0, 90.0], [[5, 25], [75, 95]]):
            if name == "nanpercentile" and np.ndim(q) == 2 and isinstance(axis, tuple):
                continue  # NumPy's nanpercentile puts a 2-d q's dims elsewhere for two axes
            for kd in (False, True):
                _agree(name, getattr(ng, name), getattr(np, name), DATA[key], q, axis=axis,
                       keepdims=kd)


@pytest.mark.parametrize("name", ["percentile", "nanpercentile"])
@pytest.mark.parametrize("method", METHODS)
def test_percentile_methods_match_numpy(name, method):
    for key in ("vec", "vec_nan", "ties", "ints", "cube_nan"):
        for axis in (None, -1):
            _agree(name, getattr(ng, name), getattr(np, name), DATA[key],
                   np.array([0.0, 12.5, 25.0, 50.0, 62.5, 99.0, 100.0]), axis=axis,
                   method=method)


@pytest.mark.parametrize("name", ["percentile", "nanpercentile"])
def test_weighted_percentile_matches_numpy(name):
    rng = np.random.default_rng(1)
    x = DATA["cube_nan"]
    w = rng.uniform(0.0, 2.0, size=x.shape)
    w[0, 0, :2] = 0.0
    fn_ng, fn_np = getattr(ng, name), getattr(np, name)
    for q in (0.0, 30.0, [10.0, 50.0, 100.0]):
        _agree(name, fn_ng, fn_np, x, q, axis=-1, method="inverted_cdf", weights=w)
        _agree(name, fn_ng, fn_np, x, q, axis=(0, 2), method="inverted_cdf", weights=w)
    _agree(name, fn_ng, fn_np, DATA["vec"], 40, method="inverted_cdf",
           weights=np.arange(7.0))


def test_average_matches_numpy():
    x = DATA["mat"]
    w = np.arange(1.0, 21.0).reshape(4, 5)
    for axis in (None, 0, 1, (0, 1), (1, 0)):
        for kd in (False, True):
            for ret in (False, True):
                _agree("average", ng.average, np.average, x, axis=axis, returned=ret,
                       keepdims=kd)
                _agree("average", ng.average, np.average, x, axis=axis, weights=w,
                       returned=ret, keepdims=kd)
    _agree("average", ng.average, np.average, x, axis=1, weights=np.arange(5.0))
    _agree("average", ng.average, np.average, x, axis=(1, 0), weights=w.T, returned=True)
    _agree("average", ng.average, np.average, DATA["ints"], axis=1, returned=True)
    _agree("average", ng.average, np.average, DATA["ints"], weights=DATA["ints"])
    _agree("average", ng.average, np.average, DATA["empty"])
    _agree("average", ng.average, np.average, DATA["vec_nan"])


def test_histogram_bin_edges_matches_numpy():
    x = DATA["mat"]
    for bins in (1, 3, 10, [0.0, 0.5, 2.0], "auto", "fd", "sturges", "sqrt"):
        _agree("histogram_bin_edges", ng.histogram_bin_edges, np.histogram_bin_edges, x,
               bins=bins)
        _agree("histogram_bin_edges", ng.histogram_bin_edges, np.histogram_bin_edges, x,
               bins=bins, range=(-1.0, 1.0))
    for data in (np.zeros(0), np.full(4, 2.0), DATA["ints"], x.astype(np.float32)):
        _agree("histogram_bin_edges", ng.histogram_bin_edges, np.histogram_bin_edges, data,
               bins=4)
    _agree("histogram_bin_edges", ng.histogram_bin_edges, np.histogram_bin_edges,
           x.astype(np.float32), bins=4, range=(0, 2))


def test_histogram2d_matches_numpy():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=50), rng.normal(size=50)
    x[3], y[4] = x.max(), y.min()
    w = rng.uniform(size=50)
    for kw in ({}, {"bins": 4}, {"bins": (3, 5)}, {"bins": [np.linspace(-1, 1, 4), 6]},
               {"bins": np.linspace(-2, 2, 5)}, {"range": [(-1, 1), (0, 2)]},
               {"density": True}, {"weights": w}, {"weights": w, "density": True, "bins": 3}):
        _agree("histogram2d", ng.histogram2d, np.histogram2d, x, y, **kw)
    _agree("histogram2d", ng.histogram2d, np.histogram2d, x.astype(np.float32),
           y.astype(np.float32), bins=4)
    _agree("histogram2d", ng.histogram2d, np.histogram2d, np.zeros(0), np.zeros(0), bins=2)
    _agree("histogram2d", ng.histogram2d, np.histogram2d, np.array([1, 2, 2]),
           np.array([0, 0, 5]), bins=2)


def test_interp_matches_numpy():
    xp_ = np.array([0.0, 1.0, 1.0, 2.5, 4.0])
    fp_ = np.array([1.0, 3.0, 2.0, -1.0, 0.5])
    x = np.array([-1.0, 0.0, 0.3, 1.0, 1.7, 2.5, 3.9, 4.0, 5.0, NAN])
    _agree("interp", ng.interp, np.interp, x, xp_, fp_)
    _agree("interp", ng.interp, np.interp, x, xp_, fp_, left=-7.0, right=9.0)
    _agree("interp", ng.interp, np.interp, x.astype(np.float32), xp_, fp_)
    _agree("interp", ng.interp, np.interp, x, np.array([2.0]), np.array([5.0]))
    _agree("interp", ng.interp, np.interp, x, np.array([0.0, 1.0, 3.0]),
           np.array([0.0, np.inf, 1.0]))
    _agree("interp", ng.interp, np.interp, np.array([-170.0, 10.0, 190.0, 355.0]),
           np.array([350.0, 10.0, 180.0]), np.array([1.0, 2.0, 3.0]), period=360)
    _agree("interp", ng.interp, np.interp, np.array(0.5), np.array([0.0, 1.0]),
           np.array([0.0, 2.0]))


def test_digitize_matches_numpy():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, NAN])
    for bins in (np.array([0.0, 1.0, 2.0]), np.array([2.0, 1.0, 0.0]), np.array([1.0]),
                 np.array([0.0, 1.0, 1.0, 2.0]), np.zeros(0)):
        for right in (False, True):
            _agree("digitize", ng.digitize, np.digitize, x, bins, right=right)
    _agree("digitize", ng.digitize, np.digitize, DATA["ints"], np.array([2, 4, 6]))


# --- dtypes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8, np.int64, np.bool_])
def test_dtypes_match_numpy(dtype):
    x = np.array([[1, 0, 3], [2, 5, 1]]).astype(dtype)
    for name in ("nanmax", "nanmin", "nanargmax", "nanprod", "nancumsum", "nancumprod",
                 "nanvar", "nanstd", "average", "ptp", "cumulative_sum", "cumulative_prod"):
        kw = {"axis": 1}
        _agree(name, getattr(ng, name), getattr(np, name), x, **kw)
    for name in ("percentile", "nanpercentile"):
        for method in ("linear", "lower", "nearest", "midpoint"):
            _agree(name, getattr(ng, name), getattr(np, name), x, 40, axis=1, method=method)
    if dtype is not np.bool_:
        _agree("interp", ng.interp, np.interp, x[0], np.array([0.0, 2.0, 4.0]),
               np.array([1.0, 0.0, 1.0]))


def test_float32_stays_float32():
    x = ng.tensor(np.array([[1.0, NAN, 3.0], [2.0, 5.0, 1.0]], np.float32))
    for f in (ng.nanmax, ng.nanmin, ng.nanprod, ng.nancumsum, ng.nanvar, ng.nanstd,
              ng.average, ng.ptp):
        assert f(x).dtype == ng.float32
    assert ng.nanpercentile(x, 30.0, axis=1).dtype == ng.float32
    assert ng.percentile(x, ng.tensor(np.float32(30.0))).dtype == ng.float32
    # a float64 array of q widens, as NumPy
    assert ng.percentile(x, np.array([30.0])).dtype == ng.float64


# --- errors ------------------------------------------------------------------------------------
def test_bad_input_errors_name_the_function():
    x = ng.tensor(DATA["mat"])
    with pytest.raises(ValueError, match=r"percentile: percentiles must be in the range"):
        ng.percentile(x, 101)
    with pytest.raises(ValueError, match=r"nanpercentile: percentiles must be in the range"):
        ng.nanpercentile(x, [-1.0, 50.0])
    with pytest.raises(ValueError, match=r"percentile: 'foo' is not a valid method"):
        ng.percentile(x, 50, method="foo")
    with pytest.raises(ValueError, match="only method 'inverted_cdf' supports weights"):
        ng.percentile(x, 50, weights=np.ones((4, 5)))
    with pytest.raises(ValueError, match="nanmax: axis 2 is out of bounds"):
        ng.nanmax(x, axis=2)
    with pytest.raises(ValueError, match="ptp: axis -3 is out of bounds"):
        ng.ptp(x, axis=-3)
    with pytest.raises(ValueError, match="average: weights of shape"):
        ng.average(x, axis=1, weights=np.ones(4))
    with pytest.raises(TypeError, match="average: axis must be given"):
        ng.average(x, weights=np.ones(5))
    with pytest.raises(ZeroDivisionError, match="average: the weights sum to zero"):
        ng.average(x, axis=1, weights=np.zeros(5))
    with pytest.raises(ValueError, match="nanargmax: All-NaN slice"):
        ng.nanargmax(ng.tensor(DATA["cube_nan"]), axis=2)
    with pytest.raises(ValueError, match="cumulative_sum: .*axis= is required"):
        ng.cumulative_sum(x)
    with pytest.raises(ValueError, match="digitize: bins must be monotonically"):
        ng.digitize(x, np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="interp: fp and xp are not of the same length"):
        ng.interp(x, np.array([0.0, 1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="histogram_bin_edges: max must be larger than min"):
        ng.histogram_bin_edges(x, 3, range=(1, 0))
    with pytest.raises(ValueError, match="histogram_bin_edges: bins must be positive"):
        ng.histogram_bin_edges(x, 0)
    with pytest.raises(ValueError, match="nanvar: ddof and correction"):
        ng.nanvar(x, ddof=1, correction=1)
    with pytest.raises(TypeError, match="ptp: a boolean tensor"):
        ng.ptp(ng.tensor(np.array([True, False])))


def test_out_receives_the_result():
    x = ng.tensor(np.array([[1.0, NAN], [2.0, 3.0], [NAN, 5.0]]))
    buf = ng.tensor(np.zeros(3))
    assert ng.nanmax(x, 1, buf) is buf
    np.testing.assert_array_equal(buf.numpy(), [1.0, 3.0, 5.0])


def test_namespace_and_methods():
    for name in ("nanmax", "percentile", "average", "interp", "digitize", "histogram2d"):
        assert name in ng.__all__ or hasattr(ng, name)
        assert not hasattr(ng.Tensor, name)  # NumPy-only names are not Tensor methods


# --- gradients -----------------------------------------------------------------------------------
GX = np.array([[0.3, -1.2, 2.1, 0.7], [1.5, 0.2, -0.4, 2.9], [-0.8, 1.1, 0.6, -2.2]])


@pytest.mark.parametrize("f", [
    lambda x: ng.nanmax(x, axis=1),
    lambda x: ng.nanmin(x, axis=0, keepdims=True),
    lambda x: ng.nanprod(x, axis=1),
    lambda x: ng.nancumsum(x, axis=1),
    lambda x: ng.nancumprod(x, axis=0),
    lambda x: ng.nanvar(x, axis=1, ddof=1),
    lambda x: ng.nanstd(x, axis=0),
    lambda x: ng.ptp(x, axis=1),
    lambda x: ng.cumulative_prod(x, axis=1, include_initial=True),
    lambda x: ng.average(x, axis=1, weights=ng.tensor(np.array([1.0, 2.0, 3.0, 4.0]))),
    lambda x: ng.percentile(x, [10.0, 50.0, 85.0], axis=1),
    lambda x: ng.nanpercentile(x, 30.0, axis=(0, 1), method="hazen"),
], ids=lambda f: "")
def test_gradients_central_differences(f):
    gradcheck(f, GX)


def test_gradients_with_nan_entries_skip_them():
    x = ng.tensor(np.array([[1.0, NAN, 3.0], [2.0, 5.0, NAN]]), requires_grad=True)
    ng.nanmax(x, axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 1], [0, 1, 0]])
    x.grad = None
    ng.nanvar(x).backward()
    g = x.grad.numpy()
    assert np.isnan(g).tolist() == [[False] * 3] * 2 and g[0, 1] == 0 and g[1, 2] == 0


def test_average_gradient_in_weights():
    w = np.array([0.5, 1.0, 2.0, 1.5])
    gradcheck(lambda x, w: ng.average(x, axis=1, weights=w), GX, w)


def test_histogram2d_gradient_in_weights_and_bin_edges_in_data():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=12), rng.normal(size=12)
    gradcheck(lambda w: ng.histogram2d(x, y, bins=(2, 3), weights=w, density=True)[0],
              rng.uniform(0.5, 1.5, size=12))
    gradcheck(lambda a: ng.histogram_bin_edges(a, 4), x)


def test_weighted_percentile_gradient_reaches_the_picked_entries():
    w = np.abs(GX) + 0.1
    gradcheck(lambda a: ng.nanpercentile(a, [0.0, 33.0, 100.0], axis=1,
                                         method="inverted_cdf", weights=w), GX)


def test_interp_gradient_in_x_and_fp():
    xp_ = np.array([0.0, 1.0, 2.5, 4.0])
    gradcheck(lambda x, fp: ng.interp(x, xp_, fp), np.array([-0.5, 0.4, 1.3, 3.2, 4.5]),
              np.array([1.0, 3.0, -1.0, 0.5]))


torch = pytest.importorskip("torch")


def _grads(fn_ng, fn_t, x):
    a = ng.tensor(x, requires_grad=True)
    t = torch.tensor(x, requires_grad=True)
    out_a, out_t = fn_ng(a), fn_t(t)
    np.testing.assert_allclose(out_a.numpy(), out_t.detach().numpy(), rtol=1e-12,
                               equal_nan=True)
    out_a.sum().backward()
    out_t.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-12)


def test_gradients_match_torch_where_torch_has_the_function():
    x = DATA["ties"]
    _grads(lambda a: ng.nanpercentile(a, [25.0, 50.0, 80.0], axis=1),
           lambda t: torch.nanquantile(t, torch.tensor([0.25, 0.5, 0.8], dtype=t.dtype), 1),
           x)
    y = np.nan_to_num(x, nan=-1.0)  # torch's quantile has no NaN skipping
    _grads(lambda a: ng.percentile(a, 70.0, axis=0, method="lower"),
           lambda t: torch.quantile(t, 0.7, 0, interpolation="lower"), y)
    _grads(lambda a: ng.nanmax(a, axis=1), lambda t: torch.amax(t, 1), y)
    _grads(lambda a: ng.nanmin(a), lambda t: torch.amin(t), y)
    _grads(lambda a: ng.nanprod(a, axis=1), lambda t: torch.prod(t, 1), y)
    _grads(lambda a: ng.nanstd(a, axis=1, ddof=1), lambda t: torch.std(t, 1), y)
    _grads(lambda a: ng.nancumsum(a, axis=1), lambda t: torch.cumsum(t, 1), y)


# --- transforms ----------------------------------------------------------------------------------
def test_jit_and_vmap():
    x = np.random.default_rng(3).normal(size=(4, 6))
    x[1, 2] = NAN
    f = ng.jit(lambda a: ng.nanpercentile(a, 40.0, axis=1) + ng.nanstd(a, axis=1), fuse=False)
    want = np.nanpercentile(x, 40.0, axis=1) + np.nanstd(x, axis=1)
    for _ in range(2):
        np.testing.assert_allclose(f(ng.tensor(x)).numpy(), want, rtol=1e-12)
    g = ng.vmap(lambda r: ng.nanmax(r) - ng.average(r, weights=ng.tensor(np.arange(1.0, 7.0))))
    want = np.nanmax(x, axis=1) - np.average(x, axis=1, weights=np.arange(1.0, 7.0))
    np.testing.assert_allclose(g(ng.tensor(x)).numpy(), want, rtol=1e-12, equal_nan=True)
    h = ng.vmap(lambda r: ng.interp(r, ng.tensor(np.array([-1.0, 0.0, 2.0])),
                                    ng.tensor(np.array([0.0, 1.0, -1.0]))))
    want = np.stack([np.interp(r, [-1.0, 0.0, 2.0], [0.0, 1.0, -1.0]) for r in x])
    np.testing.assert_allclose(h(ng.tensor(x)).numpy(), want, rtol=1e-12)
