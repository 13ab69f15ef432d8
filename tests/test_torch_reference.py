"""nodegrad against PyTorch in float32 and float64: values, result dtypes and gradients for the
case table of ``_opcases``, plus the cases where the conventions need care (ties, ddof, huge
logits, repeated indices, im2col windows)."""

import numpy as np
import pytest
from _opcases import CASES, calls, drawn

import nodegrad as ng
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = (np.float32, np.float64)
TOL = {np.float32: {"atol": 1e-5, "rtol": 1e-4}, np.float64: {"atol": 1e-10, "rtol": 1e-8}}
TABLE = [pytest.param(c, lay, dt, id=f"{c.name}-{lay}-{dt.__name__}")
         for c in CASES if c.has_torch for lay in c.layouts for dt in DTYPES]


def compare(ng_fn, torch_fn, *arrays, dtype=np.float64):
    """compare_with_torch with the float arrays cast to ``dtype`` and its tolerances."""
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    compare_with_torch(ng_fn, torch_fn, *arrays, **TOL[dtype])


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize(("case", "layout", "dtype"), TABLE)
@drawn(3)
def test_matches_torch(case, layout, dtype, data):
    call = data.draw(calls(case, layout))
    if call.torch_fn is not None:  # e.g. a negative-step slice, which torch lacks
        compare(call.fn, call.torch_fn, *call.args, dtype=dtype)


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("axis", [0, -1])
def test_stable_log_space_ops_at_huge_logits(float_dtype, scale, axis):
    x = np.array([[1.0, -1.0, 0.5, 0.0], [-1.0, -0.5, 1.0, 1.0], [0.25, 1.0, -1.0, 0.0]]) * scale
    ops = [(lambda t: ng.logsumexp(t, axis), lambda t: torch.logsumexp(t, axis)),
           (lambda t: ng.softmax(t, axis), lambda t: torch.softmax(t, axis)),
           (lambda t: ng.log_softmax(t, axis), lambda t: torch.log_softmax(t, axis))]
    for f, tf in ops:
        t = ng.tensor(x.astype(float_dtype), requires_grad=True)
        y = f(t)
        w = np.linspace(-1, 1, y.numel()).reshape(y.shape).astype(float_dtype)
        (y * ng.tensor(w)).sum().backward()
        assert np.isfinite(y.numpy()).all() and np.isfinite(t.grad.numpy()).all()
        compare(f, tf, x, dtype=float_dtype)


def test_var_std_ddof_against_torch_correction(rng, float_dtype):
    x = rng.standard_normal((3, 5))
    # nodegrad's default is the population variance (ddof=0), torch's is unbiased
    compare(lambda t: ng.var(t, 1), lambda t: torch.var(t, 1, correction=0), x, dtype=float_dtype)
    compare(lambda t: ng.std(t, 0), lambda t: torch.std(t, 0, correction=0), x, dtype=float_dtype)
    compare(lambda t: ng.var(t, ddof=1), lambda t: torch.var(t), x, dtype=float_dtype)
    compare(lambda t: ng.std(t, (0, 1), ddof=1, keepdims=True),
            lambda t: torch.std(t, (0, 1), keepdim=True), x, dtype=float_dtype)
    compare(lambda t: t.var(dim=1, correction=1), lambda t: t.var(dim=1), x, dtype=float_dtype)


def test_max_min_ties_split_like_amax(float_dtype):
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0], [5.0, -5.0, 5.0, 5.0]])
    for axis in (None, 0, 1, (0, 1)):
        dims = tuple(range(2)) if axis is None else axis
        for keep in (False, True):
            compare(lambda t: ng.max(t, axis, keepdims=keep),
                    lambda t: torch.amax(t, dims, keep), x, dtype=float_dtype)
            compare(lambda t: ng.min(-t, axis, keepdims=keep),
                    lambda t: torch.amin(-t, dims, keep), x, dtype=float_dtype)
    t = ng.tensor(x[1].astype(float_dtype), requires_grad=True)
    ng.max(t).backward()
    np.testing.assert_allclose(t.grad.numpy(), [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)


def test_maximum_minimum_ties_split_like_torch(float_dtype):
    x = np.array([1.0, 2.0, 3.0, -1.0])
    y = np.array([1.0, 0.0, 3.0, 2.0])
    compare(ng.maximum, torch.maximum, x, y, dtype=float_dtype)
    compare(ng.minimum, torch.minimum, x, y, dtype=float_dtype)
    compare(lambda a: ng.maximum(a, ng.flip(a)), lambda a: torch.maximum(a, a.flip(0)),
            np.array([1.0, 2.0, 2.0, 1.0]), dtype=float_dtype)


def test_repeated_indices_count_in_the_gradient(float_dtype):
    x = np.arange(12.0).reshape(3, 4)
    idx = np.array([0, 2, 0, 0, -1])
    compare(lambda t: t[idx], lambda t: t[torch.as_tensor(idx)], x, dtype=float_dtype)
    compare(lambda t: t[idx, idx[:1]], lambda t: t[torch.as_tensor(idx), torch.as_tensor(idx[:1])],
            x, dtype=float_dtype)
    t = ng.tensor(x.astype(float_dtype), requires_grad=True)
    t[idx].sum().backward()
    np.testing.assert_array_equal(t.grad.numpy()[:, 0], [3, 0, 2])
    i = np.array([[0, 0, 3], [1, 1, 1], [2, 0, 2]])
    compare(lambda t, i: ng.take_along_axis(t, i, 1), lambda t, i: torch.gather(t, 1, i), x, i,
            dtype=float_dtype)


def test_matmul_one_d_and_broadcast_batches(rng, float_dtype):
    pairs = [((4,), (4,)), ((4,), (4, 3)), ((2, 4), (4,)), ((5, 2, 4), (4,)), ((4,), (5, 4, 3)),
             ((5, 1, 2, 4), (3, 4, 2)), ((5, 2, 4), (4, 3)), ((2, 4), (5, 4, 3))]
    for sa, sb in pairs:
        compare(ng.matmul, torch.matmul, rng.standard_normal(sa), rng.standard_normal(sb),
                dtype=float_dtype)
        compare(lambda a, b: a @ b, lambda a, b: a @ b, rng.standard_normal(sa),
                rng.standard_normal(sb), dtype=float_dtype)


def test_split_stack_concatenate(rng, float_dtype):
    x = rng.standard_normal((6, 4))
    for sections in (3, [1, 4], [0, 2, 2, 6]):
        n = len(np.split(x, sections))
        for k in range(n):
            compare(lambda t: ng.split(t, sections, 0)[k],
                    lambda t: torch.tensor_split(t, sections, 0)[k], x, dtype=float_dtype)
    for k in range(3):
        compare(lambda t: t.split([2, 1, 1], 1)[k], lambda t: t.split([2, 1, 1], 1)[k], x,
                dtype=float_dtype)
    compare(lambda a, b: ng.stack([a, b, a], 1), lambda a, b: torch.stack([a, b, a], 1), x, x + 1,
            dtype=float_dtype)
    compare(lambda a, b: ng.concatenate([a, b[:, :0], b], 1),
            lambda a, b: torch.cat([a, b[:, :0], b], 1), x, x, dtype=float_dtype)


@pytest.mark.parametrize(("k", "stride", "dilation"), [(2, 1, 1), (3, 2, 1), (2, 1, 2),
                                                       ((2, 3), (2, 1), (1, 2))])
def test_windows_match_unfold_im2col(rng, float_dtype, k, stride, dilation):
    """Windows of an (N, C, H, W) image, laid out as F.unfold (im2col) lays them out."""
    x = rng.standard_normal((2, 3, 6, 7))
    kh, kw = (k, k) if isinstance(k, int) else k

    def cols(t):
        w = ng.sliding_window_view(t, (kh, kw), (2, 3), stride=stride, dilation=dilation)
        n, c, oh, ow = w.shape[:4]
        return w.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)

    compare(cols, lambda t: F.unfold(t, (kh, kw), dilation=dilation, stride=stride), x,
            dtype=float_dtype)
    s = stride if isinstance(stride, int) else stride[0]
    compare(lambda t: ng.sliding_window_view(t, kh, 3, stride=s), lambda t: t.unfold(3, kh, s),
            x, dtype=float_dtype)
