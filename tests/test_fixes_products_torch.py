"""Products and running operations compared with PyTorch: dtypes, values, errors, gradients."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError

torch = pytest.importorskip("torch")


def _pair(a: np.ndarray):
    return ng.tensor(a), torch.tensor(a)


def _same(got, want) -> None:
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


# --- addr: the coefficients and the dtype are those of the promoted result -------------------
@pytest.mark.parametrize("dt_in,dt_vec,beta,alpha", [
    ("float64", "uint8", 0.5, 0.5),    # integer vectors, float result: float coefficients
    ("uint8", "float64", 0.5, 2),      # integer input, float result
    ("float64", "int64", 0, 1.5),      # beta = 0 still gives the promoted dtype
    ("bool", "bool", 2, 3),            # bool result: (beta and input) or (alpha and outer)
    ("bool", "bool", 0, 1),
    ("bool", "bool", 1, 0),
    ("bool", "bool", True, False),
])
def test_addr_result_dtype_and_coefficients(dt_in, dt_vec, beta, alpha):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 2)) * 3).astype(dt_in)
    v1, v2 = (rng.integers(0, 3, n).astype(dt_vec) for n in (3, 2))
    got = ng.addr(*(_pair(x)[0] for x in (a, v1, v2)), beta=beta, alpha=alpha)
    want = torch.addr(*(_pair(x)[1] for x in (a, v1, v2)), beta=beta, alpha=alpha)
    _same(got, want)


@pytest.mark.parametrize("dt,beta,alpha", [
    ("int64", True, 1), ("float64", 1, True),  # a bool coefficient needs a bool result
    ("bool", 1.0, 1), ("bool", 1, 0.5),        # a float one needs a float result
])
def test_addr_refuses_coefficients_like_torch(dt, beta, alpha):
    a = np.ones((2, 2), dt)
    v = np.ones(2, dt)
    with pytest.raises(RuntimeError):
        torch.addr(torch.tensor(a), torch.tensor(v), torch.tensor(v), beta=beta, alpha=alpha)
    with pytest.raises(DTypeError, match="addr"):
        ng.addr(ng.tensor(a), ng.tensor(v), ng.tensor(v), beta=beta, alpha=alpha)
