"""PyTorch's splitting, slice-scatter, index and counting ops and window functions
(nodegrad.ops.slicing) against PyTorch: values and dtypes on several shapes (negative dims,
lengths 0 and 1), float64 gradients, central-difference gradchecks, the errors, and jit/vmap."""

import itertools
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import JitError
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
warnings.filterwarnings("ignore", message="index_reduce", category=UserWarning)

NAN = float("nan")


def same(got, want, atol=1e-12):
    """Values, shapes and dtypes of nodegrad results equal PyTorch's (tuples elementwise)."""
    if isinstance(want, tuple | list):
        assert isinstance(got, tuple | list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want):
            same(g, w, atol)
        return
    w = want.detach().numpy()
    assert str(got.dtype) == str(want.dtype).removeprefix("torch."), (got.dtype, want.dtype)
    assert tuple(got.shape) == w.shape, (tuple(got.shape), w.shape)
    np.testing.assert_allclose(got.numpy(), w, atol=atol, rtol=1e-7, equal_nan=True)


def grad_same(f, tf, *arrays):
    """Values and gradients (a random cotangent) against PyTorch in float64."""
    compare_with_torch(f, tf, *arrays, atol=1e-10, rtol=1e-8)


def joined(parts, cat):
    """Pieces weighted by their position and joined, so each piece's gradient differs."""
    return cat([p * float(k + 1) for k, p in enumerate(parts)], -1 if parts[0].ndim else 0)


rng = np.random.default_rng(0)
SHAPES = [(0,), (1,), (7,), (3, 4), (2, 0, 3), (2, 3, 5)]


# --- splitting -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_tensor_split_matches_torch(shape):
    x = rng.standard_normal(shape)
    for dim in range(-len(shape), len(shape)):
        n = shape[dim]
        for ios in (1, 2, 3, n + 2, [1], [0, 2], [-1, 5], [3, 1], [n + 4], []):
            same(ng.tensor_split(ng.tensor(x), ios, dim), torch.tensor_split(torch.tensor(x),
                                                                              ios, dim))
    same(ng.tensor(x).tensor_split(ng.tensor(2)), torch.tensor(x).tensor_split(torch.tensor(2)))
    same(ng.tensor_split(ng.tensor(x), ng.tensor([1, 2])),
         torch.tensor_split(torch.tensor(x), torch.tensor([1, 2])))


def test_tensor_split_gradients():
    x = rng.standard_normal((3, 7))
    grad_same(lambda t: joined(ng.tensor_split(t, 3, -1), ng.cat),
              lambda t: joined(torch.tensor_split(t, 3, -1), torch.cat), x)
    grad_same(lambda t: joined(t.tensor_split([1, 5], 1), ng.cat),
              lambda t: joined(t.tensor_split([1, 5], 1), torch.cat), x)


@pytest.mark.parametrize(("name", "shape", "arg"), [
    ("hsplit", (6,), 3), ("hsplit", (6,), [1, 4]), ("hsplit", (2, 6), 2), ("hsplit", (2, 6, 1), 3),
    ("hsplit", (2, 0), 2), ("vsplit", (4, 3), 2), ("vsplit", (4, 3), [3]),
    ("vsplit", (1, 3, 2), 1), ("dsplit", (1, 2, 6), 3), ("dsplit", (1, 2, 6, 2), [2, 5]),
])
def test_hsplit_vsplit_dsplit_match_torch(name, shape, arg):
    x = rng.standard_normal(shape)
    same(getattr(ng, name)(ng.tensor(x), arg), getattr(torch, name)(torch.tensor(x), arg))
    same(getattr(ng.tensor(x), name)(arg), getattr(torch.tensor(x), name)(arg))


def test_split_with_sizes_matches_torch():
    x = rng.standard_normal((3, 5))
    for sizes, dim in (([1, 4], 1), ([5, 0], -1), ([3], 0), ([0, 1, 2], -2)):
        same(ng.split_with_sizes(ng.tensor(x), sizes, dim),
             torch.split_with_sizes(torch.tensor(x), sizes, dim))
    grad_same(lambda t: joined(t.split_with_sizes([2, 0, 3], 1), ng.cat),
              lambda t: joined(t.split_with_sizes([2, 0, 3], 1), torch.cat), x)


# --- one slice: read, copy, write ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (4,), (3, 4), (2, 0, 3), (2, 3, 4)])
def test_select_and_narrow_copy_match_torch(shape):
    x = rng.standard_normal(shape)
    for dim in range(-len(shape), len(shape)):
        n = shape[dim]
        for i in {0, n - 1, -n} if n else ():
            grad_same(lambda t: ng.select(t, dim, i), lambda t: torch.select(t, dim, i), x)
            grad_same(lambda t: t.select(dim, i), lambda t: t.select(dim, i), x)
        for start, length in ((0, n), (n, 0), (-n, min(n, 1))):
            same(ng.narrow_copy(ng.tensor(x), dim, start, length),
                 torch.narrow_copy(torch.tensor(x), dim, start, length))
            # gradients against narrow: torch's narrow_copy backward drops a negative start
            grad_same(lambda t: t.narrow_copy(dim, start, length),
                      lambda t: t.narrow(dim, start, length).clone(), x)


def test_narrow_copy_does_not_share_memory():
    x = ng.tensor([1.0, 2.0, 3.0])
    y = ng.narrow_copy(x, 0, 0, 2)
    y += 10
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("shape", [(1,), (5,), (3, 4), (2, 3, 4), (0, 3)])
def test_select_scatter_values_and_gradients(shape):
    x = rng.standard_normal(shape)
    for dim in range(-len(shape), len(shape)):
        n = shape[dim]
        for i in {0, n - 1, -n} if n else ():
            src = rng.standard_normal(shape[:dim % len(shape)] + shape[dim % len(shape) + 1:])
            grad_same(lambda t, s: ng.select_scatter(t, s, dim, i),
                      lambda t, s: torch.select_scatter(t, s, dim, i), x, src)


@pytest.mark.parametrize(("shape", "dim", "start", "end", "step"), [
    ((5,), 0, None, None, 1), ((5,), 0, 1, None, 2), ((5,), -1, -3, 4, 1), ((5,), 0, -10, 2, 3),
    ((5,), 0, 4, 2, 1), ((5,), 0, 7, 9, 1), ((3, 4), 1, 1, 3, 1), ((3, 4), -2, None, None, 2),
    ((2, 3, 4), 2, 0, 4, 3), ((2, 0, 4), 0, 1, 2, 1), ((1, 1), 1, 0, 1, 1),
])
def test_slice_scatter_values_and_gradients(shape, dim, start, end, step):
    x = rng.standard_normal(shape)
    k = len(range(*slice(start, end, step).indices(shape[dim])))
    ax = dim % len(shape)
    src = rng.standard_normal(shape[:ax] + (k,) + shape[ax + 1:])
    grad_same(lambda t, s: ng.slice_scatter(t, s, dim, start, end, step),
              lambda t, s: torch.slice_scatter(t, s, dim, start, end, step), x, src)
    grad_same(lambda t, s: t.slice_scatter(s, dim=dim, start=start, end=end, step=step),
              lambda t, s: t.slice_scatter(s, dim=dim, start=start, end=end, step=step), x, src)


@pytest.mark.parametrize(("shape", "offset", "dim1", "dim2"), [
    ((3, 4), 0, 0, 1), ((3, 4), 1, 0, 1), ((3, 4), -2, 0, 1), ((3, 4), 5, 0, 1),
    ((4, 3), 0, 1, 0), ((2, 3, 4), 1, 0, 2), ((2, 3, 4), -1, -1, 0), ((2, 3, 4), 0, 1, -1),
    ((1, 1), 0, 0, 1), ((0, 3), 0, 0, 1), ((3, 3, 0), 0, 0, 1),
])
def test_diagonal_scatter_values_and_gradients(shape, offset, dim1, dim2):
    x = rng.standard_normal(shape)
    want = torch.diagonal(torch.tensor(x), offset, dim1, dim2).shape
    src = rng.standard_normal(tuple(want))
    grad_same(lambda t, s: ng.diagonal_scatter(t, s, offset, dim1, dim2),
              lambda t, s: torch.diagonal_scatter(t, s, offset, dim1, dim2), x, src)
    grad_same(lambda t, s: t.diagonal_scatter(s, offset, dim1, dim2),
              lambda t, s: t.diagonal_scatter(s, offset, dim1, dim2), x, src)


def test_scatters_keep_float32():
    x, s = ng.zeros(3, 4), ng.ones(4)
    assert ng.select_scatter(x, s, 0, 1).dtype == ng.float32
    assert ng.slice_scatter(x, ng.ones(1, 4), 0, 2).dtype == ng.float32
    assert ng.diagonal_scatter(x, ng.ones(3)).dtype == ng.float32
    assert ng.index_put(x, (ng.tensor([0]),), ng.tensor(1.0), True).dtype == ng.float32


# --- indices ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("xshape", "ishape", "dim"), [
    ((3, 4), (3, 2), 1), ((3, 4), (1, 5), -1), ((1, 4), (3, 2), 1), ((3, 4), (2, 1), 0),
    ((2, 3, 4), (2, 1, 6), -1), ((2, 3, 4), (1, 3, 1), 0), ((3, 4), (3, 0), 1),
    ((5,), (7,), 0), ((0, 4), (0, 2), 1),
])
def test_take_along_dim_broadcasts_and_matches_torch(xshape, ishape, dim):
    x = rng.standard_normal(xshape)
    n = xshape[dim]
    i = rng.integers(-n, n, ishape) if n else np.zeros(ishape, np.int64)
    grad_same(lambda t: ng.take_along_dim(t, ng.tensor(i), dim),
              lambda t: torch.take_along_dim(t, torch.tensor(i), dim), x)
    grad_same(lambda t: t.take_along_dim(ng.tensor(i), dim=dim),
              lambda t: t.take_along_dim(torch.tensor(i), dim=dim), x)


def test_take_along_dim_without_dim_flattens_both():
    x = rng.standard_normal((3, 4))
    i = np.array([[11, 0, 5], [5, 5, 3]])
    grad_same(lambda t: ng.take_along_dim(t, ng.tensor(i)),
              lambda t: torch.take_along_dim(t, torch.tensor(i)), x)
    grad_same(lambda t: ng.take_along_dim(t, ng.tensor(0)),
              lambda t: torch.take_along_dim(t, torch.tensor(0)), np.array(2.5))


@pytest.mark.parametrize("accumulate", [False, True])
def test_index_put_matches_torch(accumulate):
    x = rng.standard_normal((3, 4, 2))
    cases = [
        ((np.array([0, 0, 2]), np.array([1, 1, 3])), (3, 2)),  # repeated positions
        ((np.array([0, 2]),), (4, 2)),
        ((np.array([[0], [2]]), np.array([1, 3])), (2, 2, 2)),  # indices broadcast together
        ((np.array([0, -1]), np.array([1, 1]), np.array([0, 1])), (1,)),  # values broadcast
        ((x[..., 0] > 0,), (2,)),
        ((np.array([], np.int64),), (0, 4, 2)),
    ]
    for idx, vshape in cases:
        v = rng.standard_normal(vshape)
        grad_same(lambda t, u: ng.index_put(t, tuple(map(ng.tensor, idx)), u, accumulate),
                  lambda t, u: torch.index_put(t, tuple(map(torch.tensor, idx)), u, accumulate),
                  x, v)
        grad_same(lambda t, u: t.index_put(tuple(map(ng.tensor, idx)), u, accumulate=accumulate),
                  lambda t, u: t.index_put(tuple(map(torch.tensor, idx)), u,
                                           accumulate=accumulate), x, v)


def test_index_put_accumulate_sums_repeats_and_int_tensors_work():
    x = ng.zeros(3, dtype=ng.int64)
    out = ng.index_put(x, (ng.tensor([1, 1, 1, 0]),), ng.tensor([1, 2, 3, 4]), accumulate=True)
    np.testing.assert_array_equal(out.numpy(), [4, 6, 0])
    assert out.dtype == ng.int64
    np.testing.assert_array_equal(x.numpy(), [0, 0, 0])  # out of place


@pytest.mark.parametrize("reduce", ["prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_index_reduce_values_and_gradients(reduce, include_self):
    x = rng.standard_normal((3, 4, 2))
    for dim, index in ((0, [0, 2, 0, 0]), (1, [3, 3, 1]), (-1, [1, 1, 1]), (1, [])):
        shape = list(x.shape)
        shape[dim] = len(index)
        s = rng.standard_normal(shape)
        i = np.array(index, np.int64)
        grad_same(lambda t, u: ng.index_reduce(t, dim, ng.tensor(i), u, reduce,
                                               include_self=include_self),
                  lambda t, u: torch.index_reduce(t, dim, torch.tensor(i), u, reduce,
                                                  include_self=include_self), x, s)
        grad_same(lambda t, u: t.index_reduce(dim, ng.tensor(i), u, reduce,
                                              include_self=include_self),
                  lambda t, u: t.index_reduce(dim, torch.tensor(i), u, reduce,
                                              include_self=include_self), x, s)


def test_index_reduce_ties_zeros_and_integers():
    x = np.array([2.0, 0.0, 5.0])
    s = np.array([2.0, 0.0, 2.0, 3.0])
    i = np.array([0, 1, 0, 1])
    for reduce in ("prod", "amax", "amin"):
        grad_same(lambda t, u: t.index_reduce(0, ng.tensor(i), u, reduce),
                  lambda t, u: t.index_reduce(0, torch.tensor(i), u, reduce), x, s)
    xi, si = np.array([1, -1, 3]), np.array([2, 2, -2, -2])
    for inc in (True, False):
        same(ng.index_reduce(ng.tensor(xi), 0, ng.tensor(i), ng.tensor(si), "mean",
                             include_self=inc),
             torch.index_reduce(torch.tensor(xi), 0, torch.tensor(i), torch.tensor(si), "mean",
                                include_self=inc))
    same(ng.index_reduce(ng.tensor(2.0), 0, ng.tensor(0), ng.tensor(3.0), "prod"),
         torch.index_reduce(torch.tensor(2.0), 0, torch.tensor(0), torch.tensor(3.0), "prod"))


@pytest.mark.parametrize(("shape", "dim", "size", "step"), [
    ((7,), 0, 3, 1), ((7,), 0, 3, 2), ((7,), -1, 7, 5), ((7,), 0, 1, 1), ((7,), 0, 0, 2),
    ((3, 5), 1, 2, 2), ((3, 5), 0, 3, 1), ((2, 3, 4), -2, 2, 1), ((2, 0, 4), 2, 2, 1),
    ((2, 0, 4), 1, 0, 1), ((), 0, 1, 1), ((), -1, 0, 3),
])
def test_unfold_matches_torch(shape, dim, size, step):
    x = rng.standard_normal(shape)
    grad_same(lambda t: t.unfold(dim, size, step), lambda t: t.unfold(dim, size, step), x)


def test_unfold_overlapping_windows_add_gradients():
    t = ng.tensor(np.arange(5.0), requires_grad=True)
    t.unfold(0, 3, 1).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [1.0, 2.0, 3.0, 2.0, 1.0])


# --- index grids -----------------------------------------------------------------------------
@pytest.mark.parametrize(("row", "col", "offset"), [
    (3, 3, 0), (3, 4, 1), (4, 3, -1), (0, 4, 0), (3, 3, -10), (3, 3, 10), (1, 1, 0), (5, 2, -2),
])
def test_tril_triu_indices_match_torch(row, col, offset):
    same(ng.tril_indices(row, col, offset), torch.tril_indices(row, col, offset))
    same(ng.triu_indices(row, col, offset), torch.triu_indices(row, col, offset))
    same(ng.tril_indices(row, col, offset, dtype=ng.int32),
         torch.tril_indices(row, col, offset, dtype=torch.int32))


def test_unravel_index_matches_torch():
    for idx, shape in (([5, -1, 30, 0], (2, 3, 4)), ([[1, 2], [0, 7]], (4, 2)), (3, (5,)),
                       ([], (2, 2)), (4, ())):
        idx = np.array(idx, np.int64)
        same(ng.unravel_index(ng.tensor(idx), shape),
             torch.unravel_index(torch.tensor(idx), shape))
    same(ng.unravel_index(ng.tensor([7], dtype=ng.int32), 10),
         torch.unravel_index(torch.tensor([7], dtype=torch.int32), 10))


@pytest.mark.parametrize("n", [0, 1, 2, 4])
@pytest.mark.parametrize("r", [0, 1, 2, 3])
@pytest.mark.parametrize("with_replacement", [False, True])
def test_combinations_match_torch(n, r, with_replacement):
    x = rng.standard_normal(n)
    same(ng.combinations(ng.tensor(x), r, with_replacement),
         torch.combinations(torch.tensor(x), r, with_replacement))
    if r and n:
        grad_same(lambda t: ng.combinations(t, r, with_replacement=with_replacement),
                  lambda t: torch.combinations(t, r, with_replacement=with_replacement), x)


def test_broadcast_shapes_tensors_and_stacks():
    for shapes in (((2, 1), (3,), 1, ()), ((0, 1), (4,)), ((),), ()):
        assert ng.broadcast_shapes(*shapes) == tuple(torch.broadcast_shapes(*shapes))
    grad_same(lambda a, b: ng.cat([t.reshape(-1) for t in ng.broadcast_tensors(a, b)]) * 1.0,
              lambda a, b: torch.cat([t.reshape(-1) for t in torch.broadcast_tensors(a, b)]),
              rng.standard_normal((3, 1)), rng.standard_normal(2))
    a, b, c = (rng.standard_normal(s) for s in ((3,), (3, 2), (3, 1)))
    grad_same(lambda a, b, c: ng.column_stack([a, b, c]),
              lambda a, b, c: torch.column_stack([a, b, c]), a, b, c)
    grad_same(lambda a, b: ng.column_stack((a, b)), lambda a, b: torch.column_stack((a, b)),
              np.array(1.0), np.array(2.0))
    grad_same(lambda a, b: ng.row_stack([a, b]), lambda a, b: torch.row_stack([a, b]),
              rng.standard_normal(2), rng.standard_normal((3, 2)))


@pytest.mark.parametrize(("start", "end", "steps", "base"), [
    (0, 2, 3, 10.0), (-1, 2, 7, 10.0), (2, -3, 6, 2.0), (0.5, 1.5, 1, 3.0), (0, 1, 0, 10.0),
    (0, 10, 11, 2.0),
])
def test_logspace_matches_torch(start, end, steps, base):
    same(ng.logspace(start, end, steps, base), torch.logspace(start, end, steps, base), 1e-5)
    same(ng.logspace(start, end, steps, base, dtype=ng.float64),
         torch.logspace(start, end, steps, base, dtype=torch.float64))
    same(ng.logspace(start, end, steps, base, dtype=ng.int64),
         torch.logspace(start, end, steps, base, dtype=torch.int64))


# --- counting --------------------------------------------------------------------------------
def test_bincount_matches_torch_including_dtypes():
    x = np.array([0, 3, 3, 1, 7, 3])
    for minlength in (0, 3, 10):
        same(ng.bincount(ng.tensor(x), minlength=minlength),
             torch.bincount(torch.tensor(x), minlength=minlength))
    for w in (rng.standard_normal(6).astype(np.float32), rng.standard_normal(6),
              np.arange(6), np.arange(6, dtype=np.int32), np.ones(6, bool),
              np.ones(6, np.float16)):
        same(ng.tensor(x).bincount(ng.tensor(w)), torch.tensor(x).bincount(torch.tensor(w)),
             1e-6)
    for dt in (np.int32, np.uint8):
        same(ng.bincount(ng.tensor(x.astype(dt))), torch.bincount(torch.tensor(x.astype(dt))))
    same(ng.bincount(ng.zeros(0, dtype=ng.int64)), torch.bincount(torch.zeros(0, dtype=torch.long)))
    same(ng.bincount(ng.zeros(0, dtype=ng.int64), minlength=2),
         torch.bincount(torch.zeros(0, dtype=torch.long), minlength=2))


def test_bincount_is_differentiable_in_weights():
    x = np.array([2, 0, 2, 2])
    assert ng.gradcheck(lambda w: ng.bincount(ng.tensor(x), w, 4), rng.standard_normal(4))
    w = ng.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    (ng.bincount(ng.tensor(x), w) * ng.tensor([1.0, 10.0, 100.0])).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [100.0, 1.0, 100.0, 100.0])


HIST = np.array([1.0, 2.0, 1.0, 2.5, 4.0, -1.0, 0.1, 3.0, 3.0, 0.7])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histc_matches_torch(dtype):
    x = HIST.astype(dtype)
    for args in ((), (4,), (4, 0, 3), (5, -1, 4), (3, 2, 2), (7, 0.1, 0.7), (1,), (6, 3, 3)):
        same(ng.histc(ng.tensor(x), *args), torch.histc(torch.tensor(x), *args))
        same(ng.tensor(x).histc(*args), torch.tensor(x).histc(*args))
    for y in (np.array([2.0, 2.0]), np.zeros(0), np.array([1.0, NAN, 5.0]),
              rng.standard_normal((4, 5)), np.array(3.5)):
        y = y.astype(dtype)
        kw = {"min": 0.0, "max": 2.0} if np.isnan(y).any() else {}
        same(ng.histc(ng.tensor(y), 6, **kw), torch.histc(torch.tensor(y), 6, **kw))


def test_histc_bins_follow_torchs_float32_arithmetic():
    x = np.linspace(-1, 1, 2001, dtype=np.float32)  # many values on or near bin edges
    for bins in (3, 7, 10, 100):
        same(ng.histc(ng.tensor(x), bins), torch.histc(torch.tensor(x), bins))
        same(ng.histc(ng.tensor(x), bins, -0.3, 0.9), torch.histc(torch.tensor(x), bins, -0.3,
                                                                   0.9))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_matches_torch(dtype):
    x = HIST.astype(dtype)
    t = torch.tensor(x)
    w = rng.random(x.shape).astype(dtype)
    for bins, kw in ((4, {}), (3, {"range": (0.0, 3.0)}), (5, {"density": True}),
                     (2, {"range": (1.0, 1.0)}), (4, {"weight": True}),
                     (4, {"weight": True, "density": True, "range": (-0.5, 3.5)})):
        ng_kw = dict(kw, weight=ng.tensor(w)) if "weight" in kw else kw
        t_kw = dict(kw, weight=torch.tensor(w)) if "weight" in kw else kw
        same(tuple(ng.histogram(ng.tensor(x), bins, **ng_kw)),
             tuple(torch.histogram(t, bins, **t_kw)), 1e-6)
    edges = np.array([-1.0, 0.5, 1.0, 3.0, 3.5], dtype)
    same(tuple(ng.tensor(x).histogram(ng.tensor(edges), weight=ng.tensor(w), density=True)),
         tuple(t.histogram(torch.tensor(edges), weight=torch.tensor(w), density=True)), 1e-6)
    for y in (np.array([2.0, 2.0]), np.zeros(0), rng.standard_normal((3, 4))):
        y = y.astype(dtype)
        same(tuple(ng.histogram(ng.tensor(y), 3)), tuple(torch.histogram(torch.tensor(y), 3)),
             1e-6)
    res = ng.histogram(ng.tensor(x), 4)
    assert res.hist is res[0] and res.bin_edges is res[1]


@pytest.mark.parametrize(("data", "dim"), [
    ([1, 1, 2, 2, 3, 1, 1, 2], None), ([[1, 1], [1, 1], [2, 3]], 0), ([[1, 1], [1, 1], [2, 3]], 1),
    ([[1, 1], [1, 1], [2, 3]], None), ([[1, 1], [1, 1], [2, 3]], -2), ([NAN, NAN, 1.0], None),
    ([], None), (3.0, None), ([5], 0), ([True, True, False], None),
])
def test_unique_consecutive_matches_torch(data, dim):
    x = np.array(data)
    for inv, cnt in itertools.product((False, True), repeat=2):
        # keywords: torch's function form misreads positional flags
        same(ng.unique_consecutive(ng.tensor(x), inv, cnt, dim),
             torch.unique_consecutive(torch.tensor(x), return_inverse=inv, return_counts=cnt,
                                      dim=dim))
    same(ng.tensor(x).unique_consecutive(return_counts=True, dim=dim),
         torch.tensor(x).unique_consecutive(return_counts=True, dim=dim))


def test_unique_consecutive_on_empty_slices():
    x = np.zeros((0, 2))
    same(ng.unique_consecutive(ng.tensor(x), True, True, dim=0),
         torch.unique_consecutive(torch.tensor(x), True, True, dim=0))
    x = np.zeros((2, 0))
    same(ng.unique_consecutive(ng.tensor(x), True, True, dim=1),
         torch.unique_consecutive(torch.tensor(x), True, True, dim=1))


# --- order statistics ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (6,), (16,), (4, 5), (3, 4, 6), (0, 4), (2, 1)])
def test_mode_matches_torch_on_lanes_up_to_16(shape):
    x = rng.integers(0, 3, shape).astype(np.float64)
    for dim in range(-len(shape), len(shape)):
        if shape[dim] == 0:
            continue
        for keepdim in (False, True):
            same(tuple(ng.mode(ng.tensor(x), dim, keepdim)),
                 tuple(torch.mode(torch.tensor(x), dim, keepdim)))
        grad_same(lambda t: ng.mode(t, dim).values, lambda t: torch.mode(t, dim).values, x)


def test_mode_ties_pick_the_smallest_value_and_its_last_occurrence():
    x = ng.tensor([[3.0, 1.0, 3.0, 1.0, 2.0], [2.0, 2.0, 5.0, 5.0, 5.0]])
    v, i = x.mode()
    np.testing.assert_array_equal(v.numpy(), [1.0, 5.0])
    np.testing.assert_array_equal(i.numpy(), [3, 4])
    v, i = ng.mode(ng.tensor(7))  # 0-d, integer
    assert v.shape == () and int(v) == 7 and int(i) == 0 and i.dtype == ng.int64
    same(tuple(ng.mode(ng.tensor([True, False, True]))),
         tuple(torch.mode(torch.tensor([True, False, True]))))


def test_mode_on_long_lanes_returns_an_occurrence_of_torchs_value():
    x = rng.integers(0, 4, (5, 50))
    v, i = ng.mode(ng.tensor(x))
    tv, _ = torch.mode(torch.tensor(x))
    np.testing.assert_array_equal(v.numpy(), tv.numpy())
    np.testing.assert_array_equal(np.take_along_axis(x, i.numpy()[:, None], 1)[:, 0], v.numpy())
    last = [np.nonzero(row == m)[0][-1] for row, m in zip(x, v.numpy())]
    np.testing.assert_array_equal(i.numpy(), last)


def test_msort_matches_torch():
    for shape in ((5,), (4, 3), (0, 2), (2, 3, 4)):
        x = rng.standard_normal(shape)
        grad_same(ng.msort, torch.msort, x)
        grad_same(lambda t: t.msort(), lambda t: t.msort(), x)
    grad_same(ng.msort, torch.msort, np.array(1.5))


NANS = np.array([[NAN, 1.0, 3.0, 2.0, 0.5], [NAN, NAN, NAN, NAN, NAN],
                 [4.0, NAN, 1.0, NAN, -2.0], [0.3, 0.1, 0.2, 0.4, -0.1]])


def test_nanmedian_matches_torch():
    for x in (NANS, NANS.T, NANS[:, :1], rng.standard_normal((3, 4, 2))):
        for dim in range(-x.ndim, x.ndim):
            for keepdim in (False, True):
                got, want = ng.nanmedian(ng.tensor(x), dim, keepdim), torch.nanmedian(
                    torch.tensor(x), dim, keepdim)
                same(got.values, want.values)
                some = ~np.all(np.isnan(x), axis=dim, keepdims=keepdim)  # torch: any NaN
                np.testing.assert_array_equal(got.indices.numpy()[some],
                                              want.indices.numpy()[some])
        same(ng.nanmedian(ng.tensor(x)), torch.nanmedian(torch.tensor(x)))
    grad_same(lambda t: t.nanmedian(1).values, lambda t: t.nanmedian(1).values, NANS[[0, 2, 3]])
    grad_same(lambda t: ng.nanmedian(t), lambda t: torch.nanmedian(t), NANS[3])
    same(ng.nanmedian(ng.tensor([NAN, NAN])), torch.nanmedian(torch.tensor([NAN, NAN])))
    same(ng.nanmedian(ng.zeros(0)), torch.nanmedian(torch.zeros(0)))
    same(tuple(ng.nanmedian(ng.tensor([3, 1, 2]), 0)), tuple(torch.nanmedian(torch.tensor([3, 1,
                                                                                          2]), 0)))


@pytest.mark.parametrize("interpolation", ["linear", "lower", "higher", "midpoint", "nearest"])
def test_nanquantile_matches_torch(interpolation):
    q = np.array([0.0, 0.25, 0.5, 0.9, 1.0])
    for x in (NANS, NANS.T, rng.standard_normal((3, 4, 2))):
        for dim in [None] + list(range(-x.ndim, x.ndim)):
            for keepdim in (False, True):
                for qq in (0.3, q):
                    qn = ng.tensor(qq) if isinstance(qq, np.ndarray) else qq
                    qt = torch.tensor(qq) if isinstance(qq, np.ndarray) else qq
                    same(ng.nanquantile(ng.tensor(x), qn, dim, keepdim,
                                        interpolation=interpolation),
                         torch.nanquantile(torch.tensor(x), qt, dim, keepdim,
                                           interpolation=interpolation))
    x = NANS[[0, 2, 3]]
    grad_same(lambda t: t.nanquantile(ng.tensor(q[1:4]), 1, interpolation=interpolation),
              lambda t: t.nanquantile(torch.tensor(q[1:4]), 1, interpolation=interpolation), x)
    x32 = NANS.astype(np.float32)
    same(ng.nanquantile(ng.tensor(x32), 0.4, 1), torch.nanquantile(torch.tensor(x32), 0.4, 1),
         1e-6)


def test_gradcheck_by_central_differences():
    x = rng.standard_normal((3, 4))
    assert ng.gradcheck(lambda t, s: ng.slice_scatter(t, s, 1, 1, None, 2), x,
                        rng.standard_normal((3, 2)))
    assert ng.gradcheck(lambda t, s: ng.diagonal_scatter(t, s, 1), x, rng.standard_normal(3))
    assert ng.gradcheck(lambda t: t.unfold(1, 2, 1) ** 2, x)
    assert ng.gradcheck(lambda t: ng.take_along_dim(t, ng.tensor([[3, -1, 0]]), 1), x)
    assert ng.gradcheck(lambda t, s: ng.index_reduce(t, 0, ng.tensor([2, 0, 2]), s, "prod"), x,
                        rng.standard_normal((3, 4)))
    assert ng.gradcheck(lambda t, s: ng.index_put(t, (ng.tensor([0, 0]), ng.tensor([1, 1])), s,
                                                  accumulate=True), x, rng.standard_normal(2))
    assert ng.gradcheck(lambda t: ng.nanquantile(t, 0.35, 1), np.where(x > 1, NAN, x))
    assert ng.gradcheck(lambda t: ng.combinations(t, 2, True), x[0])


# --- window functions ------------------------------------------------------------------------
WINDOWS = ["hann_window", "hamming_window", "blackman_window", "bartlett_window",
           "kaiser_window"]


@pytest.mark.parametrize("name", WINDOWS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 8, 51])
@pytest.mark.parametrize("periodic", [True, False])
def test_windows_match_torch(name, n, periodic):
    same(getattr(ng, name)(n), getattr(torch, name)(n), 1e-6)
    same(getattr(ng, name)(n, periodic), getattr(torch, name)(n, periodic), 1e-6)
    same(getattr(ng, name)(n, periodic, dtype=ng.float64),
         getattr(torch, name)(n, periodic, dtype=torch.float64))


def test_window_parameters_match_torch():
    same(ng.hamming_window(9, False, 0.6, 0.3), torch.hamming_window(9, False, 0.6, 0.3), 1e-6)
    same(ng.kaiser_window(9, True, 5.0), torch.kaiser_window(9, True, 5.0), 1e-6)
    w = ng.hann_window(4, requires_grad=True)
    assert w.requires_grad and w.dtype == ng.float32


# --- errors ----------------------------------------------------------------------------------
I64 = ng.int64


@pytest.mark.parametrize(("error", "match", "call"), [
    (ng.ShapeError, "tensor_split", lambda: ng.tensor_split(ng.ones(4), 0)),
    (ng.ShapeError, "tensor_split", lambda: ng.tensor_split(ng.tensor(1.0), 2)),
    (ng.ShapeError, "tensor_split: axis 1", lambda: ng.tensor_split(ng.ones(4), 2, 1)),
    (ng.ShapeError, "tensor_split", lambda: ng.tensor_split(ng.ones(4), ng.tensor([[1]]))),
    (ng.DTypeError, "tensor_split", lambda: ng.tensor_split(ng.ones(4), [1.5])),
    (ng.DTypeError, "tensor_split", lambda: ng.tensor_split(ng.ones(4), ng.tensor([1.0]))),
    (ng.ShapeError, "hsplit: dim 0 of length 10", lambda: ng.hsplit(ng.ones(10), 3)),
    (ng.ShapeError, "hsplit: dim 1 of length 5", lambda: ng.hsplit(ng.ones(2, 5), 2)),
    (ng.ShapeError, "hsplit", lambda: ng.hsplit(ng.ones(4), 0)),
    (ng.ShapeError, "vsplit: expected a tensor with at least 2", lambda: ng.vsplit(ng.ones(4), 2)),
    (ng.ShapeError, "dsplit: expected a tensor with at least 3",
     lambda: ng.dsplit(ng.ones(2, 2), 1)),
    (ng.ShapeError, "split_with_sizes", lambda: ng.split_with_sizes(ng.ones(4), [1, 2])),
    (ng.ShapeError, "split_with_sizes", lambda: ng.split_with_sizes(ng.ones(4), [5, -1])),
    (IndexError, "select: index 4", lambda: ng.select(ng.ones(3, 4), 1, 4)),
    (IndexError, "select: index -4", lambda: ng.ones(3, 4).select(0, -4)),
    (IndexError, "select: cannot be applied to a 0-d", lambda: ng.select(ng.tensor(1.0), 0, 0)),
    (ng.ShapeError, "select: axis 2", lambda: ng.select(ng.ones(3, 4), 2, 0)),
    (IndexError, "narrow_copy", lambda: ng.narrow_copy(ng.ones(4), 0, 3, 2)),
    (ng.ShapeError, "select_scatter: src has shape \\(3, 1\\)",
     lambda: ng.select_scatter(ng.zeros(3, 4), ng.ones(3, 1), 1, 0)),
    (IndexError, "select_scatter: index 4", lambda: ng.select_scatter(ng.zeros(3, 4),
                                                                       ng.ones(3), 1, 4)),
    (ng.DTypeError, "select_scatter: src has dtype float64",
     lambda: ng.select_scatter(ng.zeros(3, 4), ng.ones(3, dtype=ng.float64), 1, 0)),
    (ng.ShapeError, "slice_scatter: step", lambda: ng.slice_scatter(ng.zeros(3), ng.ones(3),
                                                                    step=0)),
    (ng.ShapeError, "slice_scatter: src has shape \\(2, 4\\), expected \\(3, 4\\)",
     lambda: ng.slice_scatter(ng.zeros(3, 4), ng.ones(2, 4))),
    (ng.ShapeError, "slice_scatter: axis 2", lambda: ng.slice_scatter(ng.zeros(3, 4),
                                                                      ng.ones(3, 4), 2)),
    (ng.ShapeError, "diagonal_scatter: src", lambda: ng.diagonal_scatter(ng.zeros(3, 4),
                                                                         ng.ones(2))),
    (ng.ShapeError, "diagonal_scatter: dim1 and dim2",
     lambda: ng.diagonal_scatter(ng.zeros(3, 3), ng.ones(3), 0, 1, 1)),
    (ng.ShapeError, "diagonal_scatter: expected a tensor with at least 2",
     lambda: ng.diagonal_scatter(ng.zeros(3), ng.ones(3))),
    (ng.DTypeError, "take_along_dim: indices must be an integer",
     lambda: ng.take_along_dim(ng.ones(3, 4), ng.tensor([[1.0]]), 1)),
    (ng.ShapeError, "take_along_dim: input has 2 dims but indices have 1",
     lambda: ng.take_along_dim(ng.ones(3, 4), ng.tensor([1]), 1)),
    (ng.ShapeError, "take_along_dim: input \\(3, 4\\) and indices \\(1, 2\\)",
     lambda: ng.take_along_dim(ng.ones(3, 4), ng.tensor([[1, 0]]), 0)),
    (IndexError, "take_along_dim: index 4", lambda: ng.take_along_dim(ng.ones(3, 4),
                                                                      ng.tensor([[4]]), 1)),
    (IndexError, "take_along_dim: index -1", lambda: ng.take_along_dim(ng.ones(3, 4),
                                                                       ng.tensor([-1]))),
    (ng.ShapeError, "take_along_dim: axis 2", lambda: ng.take_along_dim(ng.ones(3, 4),
                                                                        ng.tensor([[1]]), 2)),
    (ng.DTypeError, "index_put: indices must be integer or bool",
     lambda: ng.index_put(ng.ones(3), (ng.tensor([0.0]),), ng.tensor(1.0))),
    (IndexError, "index_put", lambda: ng.index_put(ng.ones(3), (ng.tensor([3]),),
                                                   ng.tensor(1.0))),
    (IndexError, "index_put: 3 indices", lambda: ng.index_put(
        ng.ones(3, 4), (ng.tensor([0]),) * 3, ng.tensor(1.0))),
    (ng.ShapeError, "index_put: values of shape \\(3,\\)", lambda: ng.index_put(
        ng.ones(3, 4), (ng.tensor([0, 1]),), ng.ones(3))),
    (ng.DTypeError, "index_put: values has dtype float64", lambda: ng.index_put(
        ng.ones(3, 4), (ng.tensor([0, 1]),), ng.ones(1, dtype=ng.float64))),
    (ValueError, "index_reduce: reduce must be one of", lambda: ng.index_reduce(
        ng.ones(3), 0, ng.tensor([0]), ng.ones(1), "sum")),
    (IndexError, "index_reduce: index 3", lambda: ng.index_reduce(
        ng.ones(3), 0, ng.tensor([3]), ng.ones(1), "prod")),
    (IndexError, "index_reduce: index -1", lambda: ng.index_reduce(
        ng.ones(3), 0, ng.tensor([-1]), ng.ones(1), "prod")),
    (ng.ShapeError, "index_reduce: source has shape", lambda: ng.index_reduce(
        ng.ones(3, 2), 0, ng.tensor([0, 1]), ng.ones(3, 2), "amax")),
    (ng.DTypeError, "index_reduce: index must be an integer", lambda: ng.index_reduce(
        ng.ones(3), 0, ng.tensor([0.0]), ng.ones(1), "amax")),
    (ng.DTypeError, "index_reduce: source has dtype", lambda: ng.index_reduce(
        ng.ones(3), 0, ng.tensor([0]), ng.ones(1, dtype=ng.float64), "amax")),
    (ng.ShapeError, "index_reduce: index must be 0-d or 1-d", lambda: ng.index_reduce(
        ng.ones(3), 0, ng.tensor([[0]]), ng.ones(1), "amax")),
    (ng.ShapeError, "unfold: a window of 6", lambda: ng.ones(5).unfold(0, 6, 1)),
    (ng.ShapeError, "unfold: step", lambda: ng.ones(5).unfold(0, 2, 0)),
    (ng.ShapeError, "unfold: size", lambda: ng.ones(5).unfold(0, -1, 1)),
    (ng.ShapeError, "unfold: axis 1", lambda: ng.ones(5).unfold(1, 2, 1)),
    (ng.ShapeError, "unfold: a window of 2", lambda: ng.tensor(1.0).unfold(0, 2, 1)),
    (ng.ShapeError, "tril_indices: row and col", lambda: ng.tril_indices(-1, 3)),
    (ng.DTypeError, "triu_indices: dtype", lambda: ng.triu_indices(3, 3, dtype=ng.float32)),
    (ng.DTypeError, "unravel_index", lambda: ng.unravel_index(ng.tensor([1.0]), (2, 3))),
    (ng.DTypeError, "unravel_index", lambda: ng.unravel_index(ng.tensor([True]), (2,))),
    (ng.ShapeError, "unravel_index", lambda: ng.unravel_index(ng.tensor([0]), (-1,))),
    (IndexError, "unravel_index", lambda: ng.unravel_index(ng.tensor([0]), (0,))),
    (ng.ShapeError, "combinations: expected a 1-d", lambda: ng.combinations(ng.ones(2, 2))),
    (ng.ShapeError, "combinations: r", lambda: ng.combinations(ng.ones(3), -1)),
    (ng.ShapeError, "broadcast_shapes", lambda: ng.broadcast_shapes((2, 3), (4,))),
    (ng.ShapeError, "broadcast_shapes", lambda: ng.broadcast_shapes((2, -1))),
    (ng.ShapeError, "column_stack", lambda: ng.column_stack([])),
    (ng.ShapeError, "logspace: steps", lambda: ng.logspace(0, 1, -1)),
    (ng.ShapeError, "bincount: expected non-negative", lambda: ng.bincount(ng.tensor([-1]))),
    (ng.DTypeError, "bincount: expected an integer", lambda: ng.bincount(ng.tensor([1.0]))),
    (ng.DTypeError, "bincount: expected an integer", lambda: ng.bincount(ng.tensor([True]))),
    (ng.ShapeError, "bincount: expected a 1-d", lambda: ng.bincount(ng.tensor([[1]]))),
    (ng.ShapeError, "bincount: expected a 1-d", lambda: ng.bincount(ng.tensor(1))),
    (ng.ShapeError, "bincount: minlength", lambda: ng.bincount(ng.tensor([1]), minlength=-1)),
    (ng.ShapeError, "bincount: weights", lambda: ng.bincount(ng.tensor([1, 2]), ng.ones(1))),
    (ng.DTypeError, "histc: expected a floating-point", lambda: ng.histc(ng.tensor([1, 2]))),
    (ng.ShapeError, "histc: max must be larger", lambda: ng.histc(ng.ones(2), 4, 3, 1)),
    (ng.ShapeError, "histc: the range", lambda: ng.histc(ng.tensor([1.0, float("inf")]), 4)),
    (ng.ShapeError, "histc: the range", lambda: ng.histc(ng.tensor([1.0, NAN]), 4)),
    (ng.ShapeError, "histc: bins", lambda: ng.histc(ng.ones(2), 0)),
    (TypeError, "histogram: range", lambda: ng.histogram(ng.ones(2), ng.tensor([0.0, 1.0]),
                                                         range=(0.0, 1.0))),
    (ng.ShapeError, "histogram: range min", lambda: ng.histogram(ng.ones(2), 4,
                                                                 range=(3.0, 1.0))),
    (ng.ShapeError, "histogram: a tensor of bin edges must be 1-d",
     lambda: ng.histogram(ng.ones(2), ng.ones(1, 2))),
    (ng.ShapeError, "histogram: expected at least 2 bin edges",
     lambda: ng.histogram(ng.ones(2), ng.ones(1))),
    (ng.ShapeError, "histogram: bins", lambda: ng.histogram(ng.ones(2), 0)),
    (ng.ShapeError, "histogram: weight has shape", lambda: ng.histogram(ng.ones(2), 3,
                                                                        weight=ng.ones(3))),
    (ng.DTypeError, "histogram: weight has dtype", lambda: ng.histogram(
        ng.ones(2), 3, weight=ng.ones(2, dtype=ng.float64))),
    (ng.DTypeError, "histogram: bin edges have dtype", lambda: ng.histogram(
        ng.ones(2), ng.ones(3, dtype=ng.float64))),
    (ng.DTypeError, "histogram: expected a floating-point", lambda: ng.histogram(
        ng.tensor([1, 2]), 3)),
    (ng.ShapeError, "histogram: the range", lambda: ng.histogram(ng.tensor([1.0, NAN]), 3)),
    (ng.ShapeError, "unique_consecutive: shape \\(2, 0\\)", lambda: ng.unique_consecutive(
        ng.ones(2, 0), dim=0)),
    (ng.ShapeError, "unique_consecutive: dim 0 given for a 0-d", lambda: ng.unique_consecutive(
        ng.tensor(1.0), dim=0)),
    (ng.ShapeError, "unique_consecutive: axis 2", lambda: ng.unique_consecutive(
        ng.ones(3), dim=2)),
    (IndexError, "mode: reduction dim 1 is empty", lambda: ng.mode(ng.ones(3, 0), 1)),
    (ng.ShapeError, "mode: axis 2", lambda: ng.mode(ng.ones(2), 2)),
    (IndexError, "nanmedian: reduction dim 1 is empty", lambda: ng.nanmedian(ng.ones(2, 0), 1)),
    (ng.ShapeError, "nanquantile: the input is empty", lambda: ng.nanquantile(ng.zeros(0), 0.5)),
    (ng.ShapeError, "nanquantile: the input is empty", lambda: ng.nanquantile(ng.ones(0, 3), 0.5,
                                                                              dim=1)),
    (ng.DTypeError, "nanquantile: expected a floating-point", lambda: ng.nanquantile(
        ng.tensor([1, 2]), 0.5)),
    (ValueError, "nanquantile: q values must lie in", lambda: ng.nanquantile(ng.ones(2), 1.5)),
    (ng.DTypeError, "nanquantile: q has dtype", lambda: ng.nanquantile(
        ng.ones(2), ng.tensor([0.5], dtype=ng.float64))),
    (ValueError, "nanquantile: interpolation", lambda: ng.nanquantile(
        ng.ones(2), 0.5, interpolation="foo")),
    (ng.ShapeError, "nanquantile: q must be a number or a 1-d", lambda: ng.nanquantile(
        ng.ones(2), ng.tensor([[0.5]]))),
    (ng.ShapeError, "hann_window: window_length", lambda: ng.hann_window(-1)),
    (ng.DTypeError, "kaiser_window: expects a floating-point", lambda: ng.kaiser_window(
        3, dtype=ng.int64)),
])
def test_bad_input_raises_errors_naming_the_op(error, match, call):
    with pytest.raises(error, match=match):
        call()


# --- jit and vmap ----------------------------------------------------------------------------
JITTED = {
    "tensor_split": lambda x: ng.cat(ng.tensor_split(x, 3, 1)[::-1], 1),
    "select_scatter": lambda x: ng.select_scatter(x, x[:, 0] * 2, 1, -1),
    "slice_scatter": lambda x: ng.slice_scatter(x, x[:, :3] + 1, 1, 1, None, 2),
    "diagonal_scatter": lambda x: ng.diagonal_scatter(x, x[0, :3] * 3, 1),
    "take_along_dim": lambda x: ng.take_along_dim(x, ng.argsort(x, 1), 1),
    "index_reduce": lambda x: ng.index_reduce(x, 1, ng.tensor([0, 0, 3]), x[:, :3], "amax"),
    "unfold": lambda x: x.unfold(1, 2, 2).sum(-1),
    "mode": lambda x: ng.mode(ng.round(x), 1),
    "nanmedian": lambda x: ng.nanmedian(x, 0),
    "nanquantile": lambda x: ng.nanquantile(x, 0.3, 1),
    "histc": lambda x: ng.histc(x, 5),
    "histogram": lambda x: ng.histogram(x, 4),
    "unravel_index": lambda x: ng.unravel_index(ng.argmax(x, 1), (2, 3)),
}


def _arrays(tree):
    return [t.numpy() for t in ng.tree_flatten(tree)[0]]


@pytest.mark.parametrize("name", sorted(JITTED))
def test_jit_replays_with_eager_values(name):
    f = JITTED[name]
    a = rng.standard_normal((3, 6)) * 2
    b = rng.standard_normal((3, 6)) * 3
    jf = ng.jit(f)
    for x in (a, b, a[::-1].copy()):  # the later calls replay the trace
        got, want = jf(ng.tensor(x)), f(ng.tensor(x))
        assert type(got) is type(want)
        for g, w in zip(_arrays(got), _arrays(want)):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", sorted(JITTED))
def test_vmap_matches_a_loop(name):
    f = JITTED[name]
    xs = rng.standard_normal((4, 3, 6)) * 2
    got = ng.vmap(f)(ng.tensor(xs))
    loop = [_arrays(f(ng.tensor(x))) for x in xs]
    for k, g in enumerate(_arrays(got)):
        np.testing.assert_allclose(g, np.stack([r[k] for r in loop]), atol=1e-6)


def test_vmap_batches_the_source_of_scatters_and_weights():
    xs, ss = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 2))
    got = ng.vmap(lambda x, s: ng.slice_scatter(x, s, 1, 0, 4, 2))(ng.tensor(xs), ng.tensor(ss))
    want = torch.stack([torch.slice_scatter(torch.tensor(x), torch.tensor(s), 1, 0, 4, 2)
                        for x, s in zip(xs, ss)])
    same(got, want)
    ws = rng.standard_normal((4, 5))
    idx = ng.tensor([0, 2, 2, 1, 0])
    got = ng.vmap(lambda w: ng.bincount(idx, w))(ng.tensor(ws))
    want = torch.stack([torch.bincount(torch.tensor([0, 2, 2, 1, 0]), torch.tensor(w))
                        for w in ws])
    same(got, want)


def test_value_dependent_shapes_are_refused_under_jit_and_vmap():
    x = ng.tensor([1, 1, 2, 0])
    with pytest.raises(JitError, match="bincount"):
        ng.jit(lambda t: ng.bincount(t))(x)
    with pytest.raises(JitError, match="unique_consecutive"):
        ng.jit(lambda t: ng.unique_consecutive(t, return_counts=True))(x)
    with pytest.raises(TypeError, match="bincount: .* cannot run inside vmap"):
        ng.vmap(ng.bincount)(ng.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="unique_consecutive: .* cannot run inside vmap"):
        ng.vmap(ng.unique_consecutive)(ng.tensor([[1, 2]]))
    # a constant (not an input of the jitted function) has known values: no refusal
    c = ng.tensor([0, 2, 2])
    np.testing.assert_array_equal(ng.jit(lambda t: t * ng.bincount(c))(ng.ones(3, dtype=ng.int64)
                                                                       ).numpy(), [1, 0, 2])


def test_tensor_methods_exist_like_torch():
    names = ["tensor_split", "hsplit", "vsplit", "dsplit", "split_with_sizes", "select",
             "narrow_copy", "select_scatter", "slice_scatter", "diagonal_scatter",
             "take_along_dim", "index_put", "index_reduce", "unfold", "bincount", "histc",
             "histogram", "unique_consecutive", "mode", "msort", "nanmedian", "nanquantile"]
    for name in names:
        assert hasattr(torch.Tensor, name)
        assert callable(getattr(ng.Tensor, name)), name
    funcs = ["tril_indices", "triu_indices", "unravel_index", "combinations", "broadcast_shapes",
             "broadcast_tensors", "column_stack", "row_stack", "logspace", "hann_window",
             "hamming_window", "blackman_window", "bartlett_window", "kaiser_window"]
    for name in [n for n in names if n != "unfold"] + funcs:
        assert callable(getattr(ng, name)), name
    assert not hasattr(ng, "unfold")  # torch has only the method (nn.functional.unfold is im2col)


def test_on_a_second_device_matches_the_cpu(cuda):
    x = rng.standard_normal((3, 6))

    def run(dev):
        t = ng.tensor(x, device=dev)
        i = ng.tensor([0, 2, 2, 1], device=dev)
        one = ng.tensor(1.0, dtype=ng.float64, device=dev)
        return [
            *ng.tensor_split(t, 4, 1), ng.select_scatter(t, t[0], 0, 2),
            ng.slice_scatter(t, t[:, :3], 1, 0, None, 2), ng.diagonal_scatter(t, t[0, :3], 1),
            ng.take_along_dim(t, ng.argsort(t, 1), 1), ng.take_along_dim(t, i),
            ng.index_put(t, (i[:2], i[2:]), one, True), ng.index_put(t, (t > 0,), one),
            ng.index_reduce(t, 1, i, t[:, :4], "mean"), t.unfold(1, 2, 2),
            *ng.mode(ng.round(t), 1), *ng.nanmedian(t, 1), ng.nanquantile(t, 0.3, 1),
            ng.histc(t, 4), *ng.histogram(t, 4), ng.bincount(i), ng.bincount(i, t[0, :4]),
            *ng.unique_consecutive(i, True, True, 0), *ng.unique_consecutive(t, True, True),
            ng.combinations(t[0, :3]), *ng.unravel_index(i, (2, 2)), ng.column_stack([t, t]),
            ng.tril_indices(3, 4, device=dev), ng.logspace(0, 1, 3, device=dev),
            ng.kaiser_window(5, device=dev),
        ]

    on_device, on_cpu = run("cuda"), run("cpu")
    assert len(on_device) == len(on_cpu)
    for a, b in zip(on_device, on_cpu):
        assert a.device.startswith("cuda") and a.dtype == b.dtype, (a.device, a.dtype, b.dtype)
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", ["select_scatter", "slice_scatter", "diagonal_scatter",
                                  "take_along_dim", "index_reduce", "unfold", "mode",
                                  "nanmedian", "nanquantile"])
def test_forward_mode_agrees_with_reverse_mode(name):
    f = (lambda t: ng.mode(t, 1)) if name == "mode" else JITTED[name]  # no rounding
    x = ng.tensor(rng.standard_normal((3, 6)) * 2)

    def first(t):
        out = f(t)
        return out[0] if isinstance(out, tuple) else out

    fwd, rev = ng.jacfwd(first)(x), ng.jacrev(first)(x)
    assert fwd.shape == tuple(first(x).shape) + (3, 6)
    assert float(abs(fwd).sum()) > 0
    np.testing.assert_allclose(fwd.numpy(), rev.numpy(), atol=1e-12)
