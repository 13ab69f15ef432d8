"""Regression tests for indexing, sorting and factory edge cases, checked against PyTorch:
values, dtypes, shapes and float64 gradients where PyTorch defines them."""

import math

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

NAN = float("nan")


def _same(ours, ref) -> None:
    """Equal values (NaN equal to NaN), shape and dtype name."""
    a = np.asarray(ours.numpy())
    b = ref.detach().numpy()
    assert a.shape == b.shape
    assert str(a.dtype) == str(b.dtype)
    np.testing.assert_array_equal(a, b)


# --- argmax / argmin with keepdim and no dim -------------------------------------------------
@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_arg_reduction_keepdim_without_dim_is_flat_index(name):
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    ours = getattr(ng, name)(ng.tensor(x), keepdim=True)
    _same(ours, getattr(torch, name)(torch.tensor(x), keepdim=True))


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_keepdim_without_dim_is_refused(name):
    with pytest.raises(TypeError, match=f"{name}.*keepdim"):
        getattr(ng, name)(ng.tensor([[1.0, 2.0]]), keepdim=True)


# --- nanmedian / median without dim: tied gradients shared as PyTorch -------------------------
@pytest.mark.parametrize("x", [[[2.0, 1.0, 2.0], [3.0, 2.0, NAN]], [NAN, NAN]])
def test_nanmedian_all_shares_gradient_among_ties(x):
    a = ng.tensor(np.array(x), requires_grad=True)
    ng.nanmedian(a).backward()
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.nanmedian(t).backward()
    np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy())
    assert ng.nanmedian(ng.tensor(np.array(x))).numpy().tobytes() == \
        torch.nanmedian(torch.tensor(x, dtype=torch.float64)).numpy().tobytes()


def test_median_of_empty_is_nan():
    _same(ng.median(ng.zeros(0)), torch.median(torch.zeros(0)))


# --- unique: each NaN is its own value, as PyTorch ------------------------------------------
def test_unique_keeps_nans_distinct():
    x = [1.0, NAN, 0.0, NAN, 1.0]
    ours = ng.unique(ng.tensor(x), return_inverse=True, return_counts=True)
    ref = torch.unique(torch.tensor(x), return_inverse=True, return_counts=True)
    for o, r in zip(ours, ref, strict=True):
        _same(o, r)


# --- tril / triu keep the dtype ------------------------------------------------------------
@pytest.mark.parametrize("name", ["tril", "triu"])
def test_triangles_keep_bool_dtype(name):
    x = np.ones((2, 3, 3), dtype=bool)
    _same(getattr(ng, name)(ng.tensor(x), 1), getattr(torch, name)(torch.tensor(x), 1))


# --- arange: PyTorch's length, values and errors ------------------------------------------
@pytest.mark.parametrize("args,dtype", [
    ((0, 1, 0.1), None), ((1, 2.5, 0.5), None), ((-1, 1, 0.2), "float64"), ((5, 0, -1.5), None),
    ((0, 5, 1.5), "int64"), ((0, 5, 1.5), "int32"), ((0, 10, 3), "float32"), ((7,), None),
])
def test_arange_length_and_dtype(args, dtype):
    ours = ng.arange(*args, dtype=dtype)
    ref = torch.arange(*args, dtype=None if dtype is None else getattr(torch, dtype))
    assert ours.shape == tuple(ref.shape) and str(ours.dtype) == str(ref.numpy().dtype)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-6, atol=1e-7)


def test_arange_float32_computes_in_double():
    # start + i * step in double, then cast: the middle of arange(-1, 1, 0.2) is ~0, not -6e-8
    assert abs(float(ng.arange(-1, 1, 0.2)[5])) < 1e-12


@pytest.mark.parametrize("args", [(3, 0), (0, 3, -1), (0, 3, 0), (0, math.inf)])
def test_arange_refuses_bad_ranges(args):
    with pytest.raises(ValueError, match="arange"):
        ng.arange(*args)


def test_arange_infers_dtype_from_tensor_and_numpy_bounds():
    assert ng.arange(ng.tensor(3)).dtype == ng.int64
    assert ng.arange(np.int64(3)).dtype == ng.int64
    assert ng.arange(ng.tensor(0.5), 3).dtype == ng.float32


# --- linspace: integer dtypes truncate the ends first ---------------------------------------
@pytest.mark.parametrize("a,b,n", [(-1.3, 7.9, 11), (-5, 3.3, 101), (3, -1.7, 9)])
@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_linspace_integer_dtype(a, b, n, dtype):
    _same(ng.linspace(a, b, n, dtype=dtype), torch.linspace(a, b, n, dtype=getattr(torch, dtype)))


def test_linspace_takes_pytorch_keywords():
    _same(ng.linspace(0, 1, steps=3), torch.linspace(0, 1, steps=3))
    _same(ng.linspace(0, end=2, steps=5), torch.linspace(0, end=2, steps=5))


# --- full / tensor: dtype inference ---------------------------------------------------------
@pytest.mark.parametrize("fill", [7, 7.0, True, 1j])
def test_full_dtype_from_value(fill):
    _same(ng.full((2,), fill), torch.full((2,), fill))


def test_full_with_tensor_value_uses_its_number():
    _same(ng.full((2,), ng.tensor(3)), torch.full((2,), torch.tensor(3)))
    _same(ng.full((2,), ng.tensor(2.5, dtype=ng.float64)),
          torch.full((2,), torch.tensor(2.5, dtype=torch.float64)))


def test_tensor_of_python_complex_is_complex64():
    _same(ng.tensor([1 + 2j, 3]), torch.tensor([1 + 2j, 3]))


# --- sizes: ints only, non-negative, size= keyword -----------------------------------------
@pytest.mark.parametrize("make", [lambda m: m.zeros(2, -1), lambda m: m.ones((-2,)),
                                  lambda m: m.empty(-1), lambda m: m.full((-1, 2), 1.0),
                                  lambda m: m.eye(-1), lambda m: m.eye(2, -1)])
def test_negative_sizes_are_refused(make):
    with pytest.raises(RuntimeError):
        make(torch)
    with pytest.raises(ValueError, match="non-negative"):
        make(ng)


def test_float_size_is_refused_not_truncated():
    with pytest.raises(TypeError, match="size must be an int"):
        ng.ones(2.5)


def test_zeros_takes_size_keyword():
    _same(ng.zeros(size=(2, 3)), torch.zeros(size=(2, 3)))
    _same(ng.ones(size=[1, 2], dtype=ng.int32), torch.ones(size=[1, 2], dtype=torch.int32))
