"""Reductions' result dtypes and values against PyTorch's for non-float inputs."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _pair(a):
    return torch.tensor(a), ng.tensor(np.asarray(a))


@pytest.mark.parametrize("op", ["any", "all"])
@pytest.mark.parametrize("dt", [np.uint8, np.int8, np.int32, np.bool_, np.float32])
@pytest.mark.parametrize("dim", [None, 0, -1, (0, 1)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_any_all_dtype_as_torch(op, dt, dim, keepdim):
    a = np.array([[0, 3, 0], [1, 2, 5]], dtype=dt)
    t, x = _pair(a)
    if dim is None:
        want, got = getattr(torch, op)(t), getattr(x, op)()
    else:
        want = getattr(torch, op)(t, dim=dim, keepdim=keepdim)
        got = getattr(ng, op)(x, dim=dim, keepdim=keepdim)
    assert str(got.dtype) == str(want.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_any_uint8_under_jit_and_vmap():
    a = np.array([[0, 3], [0, 0]], dtype=np.uint8)
    x = ng.tensor(a)
    want = torch.tensor(a).any(dim=1)
    for got in (ng.vmap(lambda r: r.any())(x), ng.jit(lambda r: r.any(dim=1))(x)):
        assert got.dtype == ng.uint8
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("dt", [np.int32, np.uint8, np.float32])
@pytest.mark.parametrize("dim", [0, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_arg_extreme_of_0d_as_torch(op, dt, dim, keepdim):
    t, x = _pair(np.asarray(3, dtype=dt))
    want = getattr(torch, op)(t, dim, keepdim)
    got = getattr(ng, op)(x, dim, keepdim)
    assert got.dtype == ng.int64 and got.shape == tuple(want.shape)
    assert int(got.item()) == int(want.item())


def test_arg_extreme_of_0d_bad_dim_raises():
    x = ng.tensor(np.float32(1.0))
    with pytest.raises(ng.errors.ShapeError):
        ng.argmax(x, 1)
