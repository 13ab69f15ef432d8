"""Tensor indexing in PyTorch's order: integers select before index arrays, a uint8 index is a
mask, an empty list is an empty integer index (each against PyTorch)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import nodegrad as ng

X = np.arange(120.0).reshape(2, 3, 4, 5)
_ELEMS = [0, -1, slice(None), slice(1, None), None, [0, 1], [1, 0]]


def _indices():
    for k in (2, 3):
        for idx in itertools.product(_ELEMS, repeat=k):
            yield idx
            yield idx + (Ellipsis,)


def _agrees(idx, rng) -> bool:
    """x[idx] read, written (with its gradient) and written in place as PyTorch does; False
    where PyTorch refuses the index."""
    try:
        want = torch.tensor(X)[idx]
    except (IndexError, RuntimeError):
        return False
    got = ng.tensor(X)[idx]
    assert tuple(got.shape) == tuple(want.shape), idx
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    v = rng.standard_normal(tuple(want.shape))
    xg = ng.tensor(X, requires_grad=True)
    y = xg * 1
    y[idx] = ng.tensor(v, requires_grad=True) * 2
    (y ** 2).sum().backward()
    xt = torch.tensor(X, requires_grad=True)
    yt = xt * 1
    yt[idx] = torch.tensor(v) * 2
    (yt ** 2).sum().backward()
    np.testing.assert_array_equal(y.detach().numpy(), yt.detach().numpy())
    np.testing.assert_array_equal(xg.grad.numpy(), xt.grad.numpy())
    a = ng.tensor(X.copy())
    a[idx] = ng.tensor(v)
    t = torch.tensor(X.copy())
    t[idx] = torch.tensor(v)
    np.testing.assert_array_equal(a.numpy(), t.numpy())
    return True


@pytest.mark.parametrize("k", range(4))
def test_mixed_indices_get_set_and_differentiate_as_pytorch(k):
    """x[0, :, [1, 2]] took NumPy's order (the array's dim first): a transposed result, and
    setitem refused PyTorch's value shape."""
    rng = np.random.default_rng(k)
    cases = sum(_agrees(idx, rng) for j, idx in enumerate(_indices()) if j % 4 == k)
    assert cases > 50


def test_an_empty_ellipsis_between_index_arrays_keeps_their_dims_in_place():
    """x[:, i, ..., j] of a 3-d x: the Ellipsis covers no dims, so i and j index adjacent dims
    and PyTorch keeps their dim in place, (x.shape[0], len(i)); NumPy's rule moved it to the
    front, and setitem refused PyTorch's value shape. An Ellipsis at every position of indices
    that address all four dims of X, or fewer."""
    rng = np.random.default_rng(0)
    cases = 0
    for n in (3, 4):
        for idx in itertools.product([[0, 1], [1, 0], slice(None), 0, None], repeat=n):
            for at in range(n + 1):
                cases += _agrees(idx[:at] + (Ellipsis,) + idx[at:], rng)
    assert cases > 500
    x = ng.tensor(X[0])
    assert tuple(x[:, [0, 1], ..., [2, 3]].shape) == (3, 2)


def test_a_uint8_index_is_a_mask_and_an_empty_list_an_empty_index():
    m = ng.tensor([10.0, 20.0, 30.0])
    with pytest.warns(UserWarning, match="uint8"):
        assert m[ng.tensor([1, 0, 1], dtype=ng.uint8)].tolist() == [10.0, 30.0]
    with pytest.warns(UserWarning, match="uint8"):
        m[ng.tensor([0, 1, 0], dtype=ng.uint8)] = 0.0
    assert m.tolist() == [10.0, 0.0, 30.0]
    z = ng.zeros(3, 2)
    assert tuple(z[[]].shape) == (0, 2)
    z[[]] = 5.0
    assert z.sum().item() == 0
