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
