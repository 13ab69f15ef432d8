"""Tensor methods with PyTorch's meaning where PyTorch's user would expect it (against
PyTorch): positional ``max(dim)``, integer division by zero, ``sum(dtype=)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nodegrad as ng


@pytest.mark.parametrize("name", ["max", "min"])
def test_a_positional_dim_gives_values_and_indices(name):
    """``_, pred = out.max(1)`` unpacked the values (or failed to) instead of the indices."""
    x = np.array([[1.0, 5.0, 3.0], [4.0, 5.0, 0.0], [2.0, 2.0, 9.0]])
    for args in ((1,), (0,), (-1, True), (1, False)):
        got = getattr(ng.tensor(x), name)(*args)
        want = getattr(torch.tensor(x), name)(*args)
        np.testing.assert_array_equal(got.values.numpy(), want.values.numpy())
        np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
        _, idx = got
        np.testing.assert_array_equal(idx.numpy(), want.indices.numpy())
    t = ng.tensor(x)
    np.testing.assert_array_equal(getattr(t, name)(axis=1).numpy(),  # NumPy's axis: values
                                  getattr(x, name)(axis=1))
    assert getattr(t, name)((0, 1)).item() == getattr(x, name)()
    assert getattr(t, name)().item() == getattr(x, name)()
    with pytest.raises(TypeError, match="dim twice"):
        getattr(t, name)(1, dim=0)


@pytest.mark.parametrize("op", [lambda a, b: a // b, lambda a, b: a % b,
                                lambda a, b: ng.div(a, b, rounding_mode="trunc"),
                                lambda a, b: ng.div(a, b, rounding_mode="floor")])
def test_integer_division_by_zero_raises(op):
    """It returned 0 with NumPy's warning; PyTorch raises."""
    a = ng.tensor([5, -5])
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        op(a, 0)
    with pytest.raises(ZeroDivisionError):
        op(a, ng.tensor([1, 0]))
    assert op(a, ng.tensor([2, 3])).shape == (2,)  # non-zero divisors as before


def test_sum_in_an_integer_dtype_gives_that_dtype():
    """sum(dtype=int32) summed in int64 and returned int64."""
    for dt, tdt in ((ng.int32, torch.int32), (ng.int16, torch.int16), (ng.float64, torch.float64)):
        x = [[1, 2], [3, 40000]]
        got = ng.tensor(x).sum(dtype=dt)
        want = torch.tensor(x).sum(dtype=tdt)
        assert str(got.dtype) == str(want.dtype).replace("torch.", "")
        assert got.item() == want.item()
        got = ng.tensor(x).sum(1, dtype=dt)
        np.testing.assert_array_equal(got.numpy(), torch.tensor(x).sum(1, dtype=tdt).numpy())


def test_small_protocol_points_as_pytorch():
    t = ng.tensor([1.0, 2.0])
    assert (t == None) is False and (t != None) is True  # noqa: E711
    tt = torch.tensor([1.0, 2.0])
    for other in ("mean", [1.0, 2.0], (1.0, 2.0)):  # Python's answer, as PyTorch's
        assert (t == other) is (tt == other) is False
        assert (t != other) is (tt != other) is True
    assert (t == ng.tensor([1.0, 2.0])).tolist() == [True, True]
    assert f"{ng.tensor(3.14159):.2f}" == "3.14"
    with pytest.raises(TypeError, match="0-d"):
        f"{t:.2f}"
    assert ng.zeros(2, 3).size(-1) == 3
    with pytest.raises(IndexError, match="dim 5 is out of range"):
        ng.zeros(2, 3).size(5)
    with pytest.raises(IndexError):
        ng.zeros(()).size(0)
    a = ng.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="read-only view"):
        a.expand(3, 2)[0, 0] = 9.0
    with pytest.raises(ValueError, match="read-only view"):
        a.expand(3, 2).add_(1)


def test_an_int_beyond_int64_is_refused():
    """tensor([2**63]) became uint64 silently; PyTorch refuses it."""
    with pytest.raises(OverflowError, match="int64"):
        ng.tensor([2 ** 63])
    assert ng.tensor([2 ** 63 - 1]).dtype == ng.int64


def test_integer_powers_with_negative_exponent_tensors_and_bool_sign():
    """NumPy refuses integers to negative integer powers; PyTorch answers for a tensor
    exponent (a scalar one is refused by both). sign of a bool raised NumPy's TypeError."""
    base, exp = [2, 1, -1, 0, -2, 3, -1, 5], [-1, -1, -1, -1, -2, -3, -2, 2]
    got = ng.tensor(base) ** ng.tensor(exp)
    want = torch.tensor(base) ** torch.tensor(exp)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert got.dtype == ng.int64
    with pytest.raises(ValueError, match="negative integer powers"):
        ng.tensor([2]) ** -1
    np.testing.assert_array_equal(ng.tensor([True, False]).sign().numpy(),
                                  torch.tensor([True, False]).sign().numpy())


def test_functional_hessian_needs_a_single_element_and_t_of_a_vector_is_a_view():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ng.errors.ShapeError, match="single element"):
        ng.autograd.functional.hessian(lambda v: v * v, x)
    h = ng.autograd.functional.hessian(lambda v: (v ** 3).sum().reshape(1), x)
    np.testing.assert_array_equal(h.numpy(), [[6.0, 0.0], [0.0, 12.0]])
    assert ng.hessian(lambda v: v * v)(x).shape == (2, 2, 2)  # JAX's: any output
    v = x.t()  # PyTorch: a new tensor (a view), not x itself
    assert v is not x and not v.is_leaf


def test_a_numpy_float64_scalar_in_a_list_keeps_float64():
    for data in ([1.0, np.float64(2.0)], [[1.0], [np.float64(2.0)]], [np.float32(1.0), 2.0],
                 [1.0, 2.0], np.float64(1.0)):
        assert str(ng.tensor(data).dtype) == str(torch.tensor(data).dtype).replace("torch.", "")


_ZERO_D_OK = ["flip(0)", "flip(-1)", "movedim(0, -1)", "movedim(-1, 0)", "movedim((0,), (-1,))",
              "sum(-1)", "mean(0)", "amax(-1)", "softmax(-1)", "cumsum(0)", "squeeze(-1)",
              "unsqueeze(-1)", "transpose(0, -1)"]
_ZERO_D_REFUSED = ["narrow(0, 0, 1)", "unbind(0)", "chunk(1, 0)", "unflatten(0, (1,))",
                   "movedim(1, 0)", "flip(1)"]


@pytest.mark.parametrize("call", _ZERO_D_OK)
def test_a_0d_tensor_takes_dim_0_or_minus_1_as_pytorch(call):
    """``movedim`` of a 0-d tensor failed inside (an IndexError of a list), ``flip(0)`` and
    ``flip(-1)`` refused what PyTorch returns as it is; the value and its gradient as
    PyTorch's."""
    x = ng.tensor(1.5, requires_grad=True)
    t = torch.tensor(1.5, requires_grad=True)
    got, want = eval(f"x.{call}"), eval(f"t.{call}")
    assert tuple(got.shape) == tuple(want.shape), call
    np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy())
    (got * 3).sum().backward()
    (want * 3).sum().backward()
    assert x.grad.item() == t.grad.item()


@pytest.mark.parametrize("call", _ZERO_D_REFUSED)
def test_a_0d_tensor_refuses_a_real_dim_with_the_ops_name(call):
    """``narrow``, ``unbind``, ``chunk`` and ``unflatten`` of a 0-d tensor raised "tuple index
    out of range" from inside; now an error naming the op, where PyTorch refuses too."""
    with pytest.raises(Exception):  # noqa: B017 - PyTorch's own types differ by op
        eval(f"torch.tensor(1.5).{call}")
    with pytest.raises((ng.ShapeError, IndexError), match=call.split("(")[0]):
        eval(f"ng.tensor(1.5).{call}")
