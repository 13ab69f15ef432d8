"""matrix_norm of empty matrices and cond of empty or singular ones, as PyTorch's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nodegrad as ng

_ORDS = ["fro", "nuc", 1, -1, 2, -2, math.inf, -math.inf]


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 3), (0, 0)])
@pytest.mark.parametrize("ord", _ORDS)
def test_matrix_norm_of_an_empty_matrix(shape, ord):
    """The maximum-type norms (2, 1, inf) of an empty matrix raised; PyTorch gives 0. The
    minimum-type ones have nothing to take a minimum over: both refuse."""
    try:
        want = torch.linalg.matrix_norm(torch.zeros(shape), ord)
    except (IndexError, RuntimeError):
        with pytest.raises(ng.errors.ShapeError, match="minimum over nothing|empty"):
            ng.linalg.matrix_norm(ng.zeros(*shape), ord)
        return
    got = ng.linalg.matrix_norm(ng.zeros(*shape), ord)
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("p", [None, "fro", "nuc", 1, -1, math.inf, -math.inf, 2, -2])
def test_cond_of_empty_and_singular_matrices(p):
    """cond raised LinAlgError for a singular matrix (PyTorch: inf) and IndexError for an
    empty one (PyTorch: 0)."""
    for a in (np.zeros((0, 0)), np.zeros((2, 0, 0))):
        got = ng.linalg.cond(ng.tensor(a), p)
        want = torch.linalg.cond(torch.tensor(a), p)
        assert tuple(got.shape) == tuple(want.shape)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    a = np.array([[[1.0, 2.0], [2.0, 4.0]], [[1.0, 0.5], [0.0, 2.0]]])
    got = ng.linalg.cond(ng.tensor(a), p).numpy()
    want = torch.linalg.cond(torch.tensor(a), p).numpy()
    if p == -2:  # σ_min/σ_max: 0, or the float's limit by SVD
        assert got[0] < 1e-15 and want[0] < 1e-15
    else:  # singular: inf, or the float's limit by SVD
        assert got[0] > 1e15 and want[0] > 1e15
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    if p not in (None, 2, -2):
        assert math.isinf(got[0])
        x = ng.tensor(a[1], requires_grad=True)  # the gradient where the matrix is regular
        ng.linalg.cond(x, p).backward()
        t = torch.tensor(a[1], requires_grad=True)  # (torch's cond itself has no backward)
        (torch.linalg.matrix_norm(t, p) * torch.linalg.matrix_norm(torch.linalg.inv(t), p)
         ).backward()
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)
