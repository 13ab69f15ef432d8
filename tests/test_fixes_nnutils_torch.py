"""nn.init and nn.utils against PyTorch: parametrizations, clipping, pruning, fusion."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _chain_no_right_inverse(lib):
    """A Linear's weight parametrized twice, the second parametrization's right_inverse
    raising NotImplementedError."""
    P = lib.nn.utils.parametrize

    class Double(lib.nn.Module):
        def forward(self, x):
            return x * 2

    class PlusOne(lib.nn.Module):
        def forward(self, x):
            return x + 1

        def right_inverse(self, a):
            raise NotImplementedError

    m = lib.nn.Linear(3, 2)
    with lib.no_grad():
        m.weight.copy_(lib.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3)))
    P.register_parametrization(m, "weight", Double())
    P.register_parametrization(m, "weight", PlusOne())
    return m.weight.detach().numpy(), sorted(m.state_dict())


def test_chained_parametrization_without_right_inverse():
    tw, tk = _chain_no_right_inverse(torch)
    nw, nk = _chain_no_right_inverse(ng)
    np.testing.assert_allclose(nw, tw)
    assert nk == tk
