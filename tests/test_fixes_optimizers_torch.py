"""Optimisers against PyTorch's: argument checks, state before the first step, and steps."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _both(name: str, init: list, kw: dict):
    """The same float64 parameters in both libraries and each library's optimiser."""
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in init]
    tps = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    return ps, tps, getattr(ng.optim, name)(ps, **kw), getattr(torch.optim, name)(tps, **kw)


@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(lr=0), dict(lr=-0.0), dict(eps=0.0)])
def test_sparse_adam_refuses_a_zero_lr_or_eps_as_torch(kw):
    with pytest.raises(ValueError):
        torch.optim.SparseAdam([torch.nn.Parameter(torch.ones(2, 2))], **kw)
    with pytest.raises(ValueError, match="SparseAdam: invalid (lr|eps).*expected > 0"):
        ng.optim.SparseAdam([ng.tensor(np.ones((2, 2), np.float32), requires_grad=True)], **kw)


def test_sparse_adam_refuses_complex_parameters_as_torch():
    with pytest.raises(ValueError, match="complex"):
        torch.optim.SparseAdam([torch.nn.Parameter(torch.ones(2, 2, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="SparseAdam does not support complex"):
        ng.optim.SparseAdam([ng.tensor(np.ones((2, 2), np.complex64), requires_grad=True)])
