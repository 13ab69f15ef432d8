"""PyTorch's indexing and rearranging ops against PyTorch on the edge cases the op matrix does
not draw: repeated indices, ties and zeros in scatter_reduce, empty dims, nonzero, squeeze and
gather's PyTorch semantics, and the errors for bad indices."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import functional as NF
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")


def cmp(f, tf, *arrays):
    compare_with_torch(f, tf, *arrays, atol=1e-10, rtol=1e-8)


def test_gather_follows_torch_with_an_index_smaller_than_the_input():
    x = np.arange(12.0).reshape(3, 4)
    i = np.array([[2, 0], [1, 1]])  # smaller than x in dim 1: NumPy's rule would refuse it
    cmp(lambda t, i: t.gather(1, i), lambda t, i: t.gather(1, i), x, i)
    cmp(lambda t, i: ng.gather(t, 0, i), lambda t, i: torch.gather(t, 0, i), x, i)
    with pytest.raises((IndexError, ng.ShapeError), match="take_along_axis"):
        ng.take_along_axis(ng.tensor(x), ng.tensor(i), 1)  # NumPy's broadcasting rule stays


def test_squeeze_dim_follows_torch():
    x = ng.zeros(2, 1, 3)
    assert x.squeeze(0).shape == (2, 1, 3)  # a length != 1 stays
    assert x.squeeze(1).shape == (2, 3)
    assert x.squeeze(dim=(0, 1)).shape == (2, 3)
    assert x.squeeze().shape == (2, 3)
    s = ng.tensor(5.0)
    assert s.squeeze(0).shape == () and float(s.squeeze(0)) == 5.0
    assert tuple(torch.zeros(2, 1, 3).squeeze(0).shape) == (2, 1, 3)
    with pytest.raises(ng.ShapeError, match="squeeze"):  # NumPy's rule under axis=
        ng.squeeze(x, axis=0)


def test_repeated_indices_add_up():
    x = np.zeros((3, 2))
    i = np.array([[0, 2], [0, 0], [0, 1]])
    s = np.arange(6.0).reshape(3, 2) + 1
    cmp(lambda t, i, u: ng.scatter_add(t, 0, i, u), lambda t, i, u: t.scatter_add(0, i, u),
        x, i, s)
    cmp(lambda t, u: t.index_add(0, ng.tensor([1, 1, 1]), u),
        lambda t, u: t.index_add(0, torch.tensor([1, 1, 1]), u), x, s)
    cmp(lambda t, u: t.put(ng.tensor([0, 0, -1]), u, accumulate=True),
        lambda t, u: t.put(torch.tensor([0, 0, -1]), u, accumulate=True), x, s[0, :1].repeat(3))
    cmp(lambda t: t.index_select(0, ng.tensor([2, 2, 0])),
        lambda t: t.index_select(0, torch.tensor([2, 2, 0])), s)
    cmp(lambda t: t.index_fill(1, ng.tensor([0, 0]), 7.0),
        lambda t: t.index_fill(1, torch.tensor([0, 0]), 7.0), s)


@pytest.mark.parametrize("reduce", ["sum", "prod", "mean", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_reduce_ties_zeros_and_untouched_positions(reduce, include_self):
    x = np.array([1.0, 5.0, 2.0, 0.0])
    s = np.array([5.0, 3.0, 5.0, 0.0, 2.0])  # ties with x and among themselves, a zero
    i = np.array([1, 1, 1, 0, 0])  # position 2 and 3 untouched
    cmp(lambda t, u: t.scatter_reduce(0, ng.tensor(i), u, reduce, include_self=include_self),
        lambda t, u: t.scatter_reduce(0, torch.tensor(i), u, reduce,
                                      include_self=include_self), x, s)


def test_scatter_reduce_prod_with_one_zero_per_group():
    x = np.array([2.0, 3.0])
    s = np.array([0.0, 4.0, 0.5, 1.5])
    i = np.array([0, 0, 1, 1])
    for inc in (True, False):
        cmp(lambda t, u: ng.scatter_reduce(t, 0, ng.tensor(i), u, "prod", include_self=inc),
            lambda t, u: torch.scatter_reduce(t, 0, torch.tensor(i), u, "prod",
                                              include_self=inc), x, s)
    assert ng.gradcheck(lambda t, u: ng.scatter_reduce(t, 0, ng.tensor(i), u, "prod"),
                        np.array([0.0, 3.0]), s)


def test_empty_dims():
    x = np.zeros((0, 3))
    cmp(lambda t: t.index_select(1, ng.tensor([2, 0])),
        lambda t: t.index_select(1, torch.tensor([2, 0])), x)
    cmp(lambda t: t.gather(0, ng.zeros(0, 2, dtype=ng.int64)),
        lambda t: t.gather(0, torch.zeros(0, 2, dtype=torch.int64)), x)
    cmp(lambda t: t.repeat(2, 0), lambda t: t.repeat(2, 0), x[:1].reshape(1, 0) + np.ones((1, 0)))
    cmp(lambda t: ng.roll(t, 2, 1), lambda t: torch.roll(t, 2, 1), x)
    cmp(lambda t: t.masked_select(ng.tensor(np.zeros((0, 3), bool))),
        lambda t: t.masked_select(torch.zeros(0, 3, dtype=torch.bool)), x)
    assert ng.nonzero(ng.zeros(0, 3)).shape == (0, 2)


def test_nonzero_argwhere_and_one_argument_where():
    x = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])
    t = torch.tensor(x)
    np.testing.assert_array_equal(ng.nonzero(ng.tensor(x)).numpy(), torch.nonzero(t).numpy())
    np.testing.assert_array_equal(ng.argwhere(ng.tensor(x)).numpy(), torch.argwhere(t).numpy())
    assert ng.nonzero(ng.tensor(x)).dtype == ng.int64
    for a, b in zip(ng.where(ng.tensor(x) != 0), torch.where(t != 0)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(ng.tensor(x).nonzero(as_tuple=True), t.nonzero(as_tuple=True)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for v in (0.0, 3.0):  # 0-d, as PyTorch
        assert ng.nonzero(ng.tensor(v)).shape == tuple(torch.nonzero(torch.tensor(v)).shape)
    with pytest.raises(TypeError, match="nonzero"):
        ng.vmap(ng.nonzero)(ng.ones(2, 3))


@pytest.mark.parametrize(("op", "call"), [
    ("gather", lambda x: ng.gather(x, 1, ng.tensor([[0, 4]]))),
    ("gather", lambda x: x.gather(0, ng.tensor([[-1]]))),
    ("scatter", lambda x: x.scatter(1, ng.tensor([[5]]), 1.0)),
    ("scatter_add", lambda x: ng.scatter_add(x, 0, ng.tensor([[3]]), ng.ones(1, 1))),
    ("scatter_reduce", lambda x: x.scatter_reduce(0, ng.tensor([[7]]), ng.ones(1, 1), "amax")),
    ("index_select", lambda x: x.index_select(1, ng.tensor([0, 4]))),
    ("index_add", lambda x: x.index_add(0, ng.tensor([-1]), ng.ones(1, 4))),
    ("index_copy", lambda x: x.index_copy(0, ng.tensor([3]), ng.ones(1, 4))),
    ("index_fill", lambda x: x.index_fill(0, ng.tensor([-4]), 0.0)),
    ("take", lambda x: ng.take(x, ng.tensor([12]))),
    ("put", lambda x: x.put(ng.tensor([-13]), ng.ones(1))),
])
def test_out_of_range_index_names_the_op_what_and_the_range(op, call):
    x = ng.ones(3, 4)
    with pytest.raises(IndexError, match=rf"{op}: index -?\d+ is out of range .*expected"):
        call(x)


def test_bad_arguments_raise_nodegrad_errors():
    x = ng.ones(3, 4)
    with pytest.raises(ng.DTypeError, match="gather: index must be an integer"):
        x.gather(0, ng.tensor([[0.5]]))
    with pytest.raises(ng.ShapeError, match="gather: index has 1 dims but input has 2"):
        x.gather(0, ng.tensor([0]))
    with pytest.raises(ng.ShapeError, match="exceeds input shape"):
        x.gather(0, ng.zeros(1, 5, dtype=ng.int64))
    with pytest.raises(ng.DTypeError, match="masked_fill: mask must be a bool"):
        x.masked_fill(ng.ones(3, 4), 0.0)
    with pytest.raises(ng.ShapeError, match="masked_scatter: the mask selects 12 positions"):
        x.masked_scatter(ng.ones(3, 4) > 0, ng.ones(5))
    with pytest.raises(ng.ShapeError, match="index_add: source has shape"):
        x.index_add(0, ng.tensor([0]), ng.ones(2, 4))
    with pytest.raises(ValueError, match="scatter_reduce: reduce must be one of"):
        x.scatter_reduce(0, ng.zeros(1, 1, dtype=ng.int64), ng.ones(1, 1), "max")
    with pytest.raises(IndexError, match="narrow: start 3 and length 2"):
        x.narrow(0, 3, 2)
    with pytest.raises(ng.ShapeError, match="pad: widths"):
        NF.pad(ng.ones(1, 1, 3), (3, 0), mode="reflect")
    with pytest.raises(ng.ShapeError, match="unflatten: sizes"):
        x.unflatten(1, (3, 2))


def test_indexing_ops_inside_vmap_batch_the_index_too():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((5, 3, 4))
    idx = rng.integers(0, 3, (5, 2, 4))
    got = ng.vmap(lambda x, i: ng.gather(x, 0, i))(ng.tensor(xs), ng.tensor(idx))
    want = torch.gather(torch.tensor(xs), 1, torch.tensor(idx)).numpy()
    np.testing.assert_allclose(got.numpy(), want)
    got = ng.vmap(lambda x, i: x.scatter_reduce(1, i, x[:2], "amax", include_self=False))(
        ng.tensor(xs), ng.tensor(idx[:, :, :2] % 4))
    want = torch.stack([torch.tensor(x).scatter_reduce(1, torch.tensor(i), torch.tensor(x[:2]),
                                                       "amax", include_self=False)
                        for x, i in zip(xs, idx[:, :, :2] % 4)]).numpy()
    np.testing.assert_allclose(got.numpy(), want)


def test_rearranging_ops_that_return_several_tensors():
    x = np.arange(24.0).reshape(2, 3, 4)
    for d in range(3):
        for a, b in zip(ng.unbind(ng.tensor(x), d), torch.unbind(torch.tensor(x), d)):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    a, b = np.arange(3.0), np.arange(2.0)
    for ix in ("ij", "xy"):
        for g, h in zip(ng.meshgrid(ng.tensor(a), ng.tensor(b), indexing=ix),
                        torch.meshgrid(torch.tensor(a), torch.tensor(b), indexing=ix)):
            np.testing.assert_array_equal(g.numpy(), h.numpy())
        for g, h in zip(ng.meshgrid(ng.tensor(a), ng.tensor(b), indexing=ix),
                        np.meshgrid(a, b, indexing=ix)):
            np.testing.assert_array_equal(g.numpy(), h)
    t1, t2 = ng.atleast_2d(ng.tensor(1.0), ng.tensor(a))
    assert t1.shape == (1, 1) and t2.shape == (1, 3)


def test_numpy_names_keep_numpy_semantics():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(ng.repeat(ng.tensor(x), 2).numpy(), np.repeat(x, 2))
    np.testing.assert_array_equal(ng.repeat(ng.tensor(x), [1, 2], axis=0).numpy(),
                                  np.repeat(x, [1, 2], axis=0))
    np.testing.assert_array_equal(ng.tensor(x).repeat(2, 1).numpy(),
                                  torch.tensor(x).repeat(2, 1).numpy())
    for mode in ("reflect", "symmetric", "edge", "wrap"):
        np.testing.assert_array_equal(ng.pad(ng.tensor(x), ((1, 4), (2, 0)), mode).numpy(),
                                      np.pad(x, ((1, 4), (2, 0)), mode))
    np.testing.assert_array_equal(ng.trace(ng.tensor(np.arange(24.0).reshape(2, 3, 4)), 1, 1, 2
                                           ).numpy(), np.trace(np.arange(24.0).reshape(2, 3, 4),
                                                               1, 1, 2))
