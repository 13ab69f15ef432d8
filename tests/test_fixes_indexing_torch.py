"""Indexing, index/scatter ops and sorting compared with PyTorch."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _both(a, **kw):
    return ng.tensor(a, **kw), torch.tensor(a, **kw)


def _close(n, t, tol=1e-10):
    assert tuple(n.shape) == tuple(t.shape)
    assert str(n.dtype).split(".")[-1] == str(t.dtype).split(".")[-1]
    np.testing.assert_allclose(n.numpy(), t.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, index", [
    ((5, 0, 1), (3, ..., False)),
    ((0, 3, 1, 0), (slice(-2, -1, 2), 0, True, [])),
    ((4, 1), (..., None, [], False)),
    ((3, 1, 4), (False, True, 0, [0])),
    ((5, 1), (-5, ..., False, "F")),
    ((2, 3, 5, 2), (-1, True, "M", -1)),
    ((), (None, False, ..., "F")),
    ((3, 4), (1, True, [0, 2])),
])
def test_getitem_bool_scalars_index_a_new_dim_as_pytorch(shape, index):
    """A Python bool or a 0-d bool tensor adds a dim that an index array indexes: ints still
    select first, and an Ellipsis that covers no dims does not separate it from the arrays."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape)
    mask = rng.random(shape[-3:-1]) < 0.5 if len(shape) == 4 else None

    def conv(lib):
        out = []
        for i in index:
            if isinstance(i, str):
                i = lib.tensor(False) if i == "F" else lib.tensor(mask)
            out.append(i)
        return tuple(out)

    nx, tx = _both(a, requires_grad=True)
    nr, tr = nx[conv(ng)], tx[conv(torch)]
    _close(nr, tr)
    w = rng.standard_normal(tuple(tr.shape))
    (nr * ng.tensor(w)).sum().backward()
    (tr * torch.tensor(w)).sum().backward()
    _close(nx.grad, tx.grad)


@pytest.mark.parametrize("shape, index, vshape", [
    ((4,), True, (1, 1, 4)),
    ((2,), ..., (1, 2)),
    ((5, 5, 5), (None, 1), (1, 1, 5, 5)),
    ((1, 3), (), (1, 1, 3)),
    ((5, 4), (slice(None, None, 3), slice(None)), (1, 2, 4)),
    ((2,), ([],), (1, 0)),
    ((), (), (1,)),
    ((4,), -4, (1,)),
    ((5,), 2, (1, 1)),
])
@pytest.mark.parametrize("grad", [False, True])
def test_setitem_value_with_leading_ones(shape, index, vshape, grad):
    """PyTorch drops a value's leading dims of size 1 before it broadcasts to x[index]: the
    write works, and the value's gradient has the value's shape."""
    rng = np.random.default_rng(1)
    a, v = rng.standard_normal(shape), rng.standard_normal(vshape)
    nx, tx = _both(a, requires_grad=grad)
    nv, tv = _both(v, requires_grad=grad)
    ny, ty = nx.clone(), tx.clone()
    ny[index] = nv
    ty[index] = tv
    _close(ny, ty)
    if grad:
        w = rng.standard_normal(shape)
        (ny * ng.tensor(w)).sum().backward()
        (ty * torch.tensor(w)).sum().backward()
        _close(nx.grad, tx.grad)
        _close(nv.grad, tv.grad)


_WRITES = {
    "scatter": lambda M, x, s: M.scatter(x, 0, M.tensor([[0, 1, 0]]), s[:1]),
    "scatter_add": lambda M, x, s: M.scatter_add(x, 0, M.tensor([[0, 1, 0]]), s[:1]),
    "scatter_reduce": lambda M, x, s: M.scatter_reduce(x, 0, M.tensor([[0, 1, 0]]), s[:1],
                                                       "mean"),
    "scatter_inplace": lambda M, x, s: x.clone().scatter_(0, M.tensor([[0, 1, 0]]), s[:1]),
    "index_add": lambda M, x, s: M.index_add(x, 0, M.tensor([0, 1]), s),
    "index_copy": lambda M, x, s: M.index_copy(x, 0, M.tensor([0, 1]), s),
    "masked_scatter": lambda M, x, s: M.masked_scatter(x, x > 2, s),
    "put_": lambda M, x, s: x.clone().put_(M.tensor([0, 4]), s[0, :2]),
}


@pytest.mark.parametrize("op", sorted(_WRITES))
@pytest.mark.parametrize("xd, sd", [("float64", "int64"), ("int64", "float64"),
                                    ("int32", "int64"), ("float32", "bool")])
def test_writes_refuse_a_source_of_another_dtype(op, xd, sd):
    """PyTorch's scatters, index_add, index_copy, masked_scatter and put_ neither promote nor
    cast their source: a dtype that differs from the input's raises."""
    a = np.arange(6).reshape(2, 3)
    with pytest.raises(RuntimeError):
        _WRITES[op](torch, torch.tensor(a).to(getattr(torch, xd)),
                    torch.ones(2, 3).to(getattr(torch, sd)))
    with pytest.raises(ng.DTypeError, match=op.split("_inplace")[0].rstrip("_")):
        _WRITES[op](ng, ng.tensor(a).astype(getattr(ng, xd)), ng.ones(2, 3).astype(getattr(ng, sd)))
    same = _WRITES[op](ng, ng.tensor(a).astype(getattr(ng, xd)),
                       ng.ones(2, 3).astype(getattr(ng, xd)))
    ref = _WRITES[op](torch, torch.tensor(a).to(getattr(torch, xd)),
                      torch.ones(2, 3).to(getattr(torch, xd)))
    np.testing.assert_array_equal(same.numpy(), ref.numpy())


@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool"])
@pytest.mark.parametrize("alpha", [2.5, -2.7, True, 0, 3])
def test_index_add_alpha_in_the_input_integer_dtype(dtype, alpha):
    """For an integer (or bool) input PyTorch takes alpha in the input's dtype: 2.5 adds the
    source twice and the result keeps the input's dtype."""
    if dtype == "uint8" and alpha < 0:
        pytest.skip("negative alpha wraps in uint8")
    x, s = np.array([1, 0, 2]), np.array([3, 1])
    tx = torch.tensor(x).to(getattr(torch, dtype))
    nx = ng.tensor(x).astype(getattr(ng, dtype))
    tr = torch.index_add(tx, 0, torch.tensor([0, 0]), torch.tensor(s).to(tx.dtype), alpha=alpha)
    nr = ng.index_add(nx, 0, ng.tensor([0, 0]), ng.tensor(s).astype(nx.dtype), alpha=alpha)
    assert str(nr.dtype).split(".")[-1] == str(tr.dtype).split(".")[-1]
    np.testing.assert_array_equal(nr.numpy(), tr.numpy())


@pytest.mark.parametrize("op", ["median", "nanmedian"])
@pytest.mark.parametrize("a", [[-np.inf], [np.inf, 1.0, np.inf], [1.0, -np.inf, -np.inf, 2.0],
                               [np.inf, np.nan, 0.0]])
def test_median_without_dim_of_infinite_ties(op, a):
    """An infinite median shares its gradient among the entries equal to it (it was NaN)."""
    nx, tx = _both(np.array(a), requires_grad=True)
    nm, tm = getattr(ng, op)(nx), getattr(torch, op)(tx)
    np.testing.assert_array_equal(nm.numpy(), tm.detach().numpy())
    nm.backward()
    tm.backward()
    np.testing.assert_array_equal(nx.grad.numpy(), tx.grad.numpy())


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("int32", [False, True])
def test_searchsorted_rows_put_nan_values_last(side, int32):
    """With one sorted row per leading index, a NaN value goes after every entry (as with a
    1-d sequence, and in PyTorch)."""
    seq = np.array([[-1.0, 0.0, 0.0, 2.0], [-np.inf, 1.0, 3.0, np.inf]])
    v = np.array([[np.nan, 0.0, 5.0], [np.inf, np.nan, -np.inf]])
    n = ng.searchsorted(ng.tensor(seq), ng.tensor(v), side=side, out_int32=int32)
    t = torch.searchsorted(torch.tensor(seq), torch.tensor(v), side=side, out_int32=int32)
    assert str(n.dtype).split(".")[-1] == str(t.dtype).split(".")[-1]
    np.testing.assert_array_equal(n.numpy(), t.numpy())


@pytest.mark.parametrize("shape, dim", [((3, 3, 0), 1), ((0, 3), -1), ((0, 3, 0), 2),
                                        ((2, 0), 1), ((0, 2), 0)])
def test_unique_over_a_dim_with_another_empty_dim(shape, dim):
    """PyTorch's unique(dim=) refuses a tensor with an empty dim other than ``dim``."""
    a = np.zeros(shape, dtype=np.int64)
    try:
        ref = torch.unique(torch.tensor(a), dim=dim)
    except RuntimeError:
        with pytest.raises(ng.ShapeError, match="unique"):
            ng.unique(ng.tensor(a), dim=dim)
        return
    assert tuple(ng.unique(ng.tensor(a), dim=dim).shape) == tuple(ref.shape)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("index", [("u1",), ("u0",), (1, "u1"), ("u2",), ([0, 2], "u1", 1)])
def test_zero_dim_uint8_tensor_indexes_as_a_mask(index):
    """A 0-d uint8 tensor is PyTorch's (deprecated) byte mask, as a 0-d bool one: it adds a
    dim of size 1 or 0, it does not select as an integer."""
    a = np.arange(12.0).reshape(3, 4)

    def conv(lib):
        return tuple(lib.tensor(np.uint8(int(i[1]))) if isinstance(i, str) else i for i in index)

    nx, tx = _both(a, requires_grad=True)
    nr, tr = nx[conv(ng)], tx[conv(torch)]
    _close(nr, tr)
    ny, ty = nx.detach().clone(), tx.detach().clone()
    ny[conv(ng)] = -1.0
    ty[conv(torch)] = -1.0
    _close(ny, ty)


@pytest.mark.parametrize("expr", ["M.tril(t, 1.5)", "M.triu(t, True)", "M.rot90(t, 1.5)",
                                  "M.rot90(t, True)", "M.roll(t, [], [])", "M.roll(t, (), ())"])
def test_arrange_refuses_what_pytorch_refuses(expr):
    """tril/triu's diagonal and rot90's k are ints (a float or bool raises), and roll needs
    at least one shift."""
    a = np.arange(12.0).reshape(3, 4)
    with pytest.raises((TypeError, RuntimeError)):
        eval(expr, {"M": torch, "t": torch.tensor(a)})
    with pytest.raises((TypeError, ng.ShapeError), match=expr[2:].split("(")[0]):
        eval(expr, {"M": ng, "t": ng.tensor(a)})
    ok = expr.replace("1.5", "1").replace("True", "1").replace("[], []", "1, 0").replace(
        "(), ()", "(1,), (1,)")
    _close(eval(ok, {"M": ng, "t": ng.tensor(a)}), eval(ok, {"M": torch, "t": torch.tensor(a)}))
