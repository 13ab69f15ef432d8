"""Creation, conversion and fill values as PyTorch's: Python ints beyond int64, lists holding
complex 0-d tensors, complex ends of linspace/logspace, a single logspace step, bfloat16 casts
to integers, complex dtypes in the dtype queries, from_numpy's refusals, fill values a dtype
cannot hold, masked_fill/index_fill keeping the input's dtype, and the small API forms
(complex(), div_(rounding_mode=), numpy(force=), scalar_tensor of a NumPy scalar)."""

import itertools

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _both(expr: str):
    """``expr`` with X as torch and as nodegrad: (torch's result or error, nodegrad's)."""
    out = []
    for lib in (torch, ng):
        try:
            out.append(eval(expr, {"X": lib, "np": np}))
        except Exception as e:  # noqa: BLE001 - the error is the answer compared
            out.append(e)
    return out


def _values(t):
    if isinstance(t, BaseException):
        return "error"
    if hasattr(t, "resolve_conj"):
        return t.resolve_conj().numpy().tolist(), str(t.dtype).split(".")[-1]
    return t.numpy().tolist(), str(t.dtype)


@pytest.mark.parametrize("expr", [
    "X.tensor([X.tensor(1+1j)])", "X.tensor([X.tensor(1+1j)], dtype=X.complex128)",
    "X.tensor([X.tensor(1.5), X.tensor(2.5)])", "X.tensor([X.tensor(1.5, dtype=X.float64), 2.0])",
    "X.tensor([[X.tensor(1), 2], [3, 4]])",
    "X.tensor([0, 2**63])", "X.tensor([-2**63 - 1])", "X.tensor([2**63, True])",
    "X.tensor([1, 2**64, 1.5])", "X.tensor([10**20, 1j])", "X.tensor([1+2j], dtype=X.bfloat16)",
    "X.logspace(3.333, 1.5, 1, dtype=X.int64)", "X.logspace(-3, -1, 1, base=0.5, dtype=X.uint8)",
    "X.logspace(2.5, 3, 1, base=2, dtype=X.int8)",
    "X.logspace(0, 1, 2, dtype=X.complex64)", "X.logspace(1j, 2, 2, dtype=X.float32)",
    "X.linspace(0, 1j, 3)", "X.linspace(0, 1j, 3, dtype=X.float32)",
    "X.linspace(-1, 2, 4, dtype=X.complex128)",
    "X.tensor([-2.5, 128., 300., -1e10], dtype=X.bfloat16).to(X.uint8)",
    "X.tensor([1e10, float('nan'), -float('inf'), 3.7], dtype=X.bfloat16).to(X.int32)",
    "X.full((2,), float('nan'), dtype=X.int32)", "X.full((2,), 1e40)",
    "X.full((2,), 1+2j, dtype=X.int64)", "X.full_like(X.tensor([1]), 1e40)",
    "X.full((2,), 70000., dtype=X.float16)", "X.full((2,), float('inf'), dtype=X.float16)",
    "X.full((2,), 2.7, dtype=X.int32)", "X.full((2,), 1+0j, dtype=X.float32)",
    "X.zeros(2).fill_(1e40)", "X.zeros(2, dtype=X.int32).fill_(float('nan'))",
    "X.zeros(2, dtype=X.complex64).fill_(1e40)", "X.zeros(2).new_full((2,), 1e40)",
    "X.tensor([1, 2]).masked_fill(X.tensor([True, False]), 2.7)",
    "X.tensor([1, 2]).masked_fill_(X.tensor([True, False]), 2.5)",
    "X.tensor([1, 2]).masked_fill(X.tensor([True, False]), X.tensor(2.5))",
    "X.tensor([True, False]).masked_fill(X.tensor([True, False]), 2.5)",
    "X.tensor([1, 2], dtype=X.uint8).masked_fill(X.tensor([True, False]), 300)",
    "X.tensor([1., 2.]).masked_fill(X.tensor([True, False]), X.tensor(2.5, dtype=X.float64))",
    "X.tensor([1., 2.], dtype=X.float16).masked_fill(X.tensor([True, False]), -1e9)",
    "X.tensor([1, 2]).index_fill(0, X.tensor([0]), -2.5)",
    "X.tensor([1, 2]).index_fill_(0, X.tensor([0]), 2.5)",
    "X.scalar_tensor(np.float32(1.5))", "X.scalar_tensor(X.tensor(2.5))",
    "X.tensor([5]).div_(2, rounding_mode='floor')",
    "X.tensor([-5.]).div_(2, rounding_mode='trunc')",
    "X.tensor([5]).divide_(2, rounding_mode='trunc')",
])
def test_values_and_errors_as_pytorch(expr):
    want, got = _both(expr)
    if isinstance(want, BaseException):
        assert isinstance(got, BaseException), f"{expr}: PyTorch raises, nodegrad gave {got}"
        return
    assert not isinstance(got, BaseException), f"{expr}: nodegrad raised {got!r}"
    assert _values(got) == _values(want)


def test_complex_logspace():
    """PyTorch computes a complex64 logspace in complex64; nodegrad in complex128, rounded
    once: the same to float32's precision."""
    want, got = _both("X.logspace(1j, 2, 3)")
    assert got.dtype == ng.complex64
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("expr", ["complex(X.tensor(1+2j))", "int(X.tensor(1+0j))",
                                  "float(X.tensor(2+0j))", "complex(X.tensor(3))",
                                  "complex(X.tensor([1.5]))", "float(X.tensor(2+1j))"])
def test_python_conversions(expr):
    want, got = _both(expr)
    assert isinstance(got, BaseException) == isinstance(want, BaseException)
    if not isinstance(want, BaseException):
        assert got == want and type(got) is type(want)


def test_dtype_queries_take_complex_dtypes():
    names = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
             "float32", "float64", "complex64", "complex128"]
    for a, b in itertools.product(names, names):
        want = torch.promote_types(getattr(torch, a), getattr(torch, b))
        assert str(ng.promote_types(getattr(ng, a), getattr(ng, b))) == str(want).split(".")[-1]
        assert ng.can_cast(getattr(ng, a), getattr(ng, b)) == \
            torch.can_cast(getattr(torch, a), getattr(torch, b))
    for name in ("complex64", "complex128"):
        want, got = torch.finfo(getattr(torch, name)), ng.finfo(getattr(ng, name))
        assert (got.eps, got.max, got.bits, got.dtype) == \
            (want.eps, want.max, want.bits, str(want.dtype))


@pytest.mark.parametrize("a", [np.arange(3, dtype=">f4"), np.array(["a"]),
                               np.array([1], dtype=object), np.array([1.0], dtype=np.longdouble),
                               np.array(["2020"], dtype="datetime64[D]")])
def test_from_numpy_refuses_what_pytorch_refuses(a):
    with pytest.raises((TypeError, ValueError)):
        torch.from_numpy(a)
    with pytest.raises((TypeError, ValueError), match="from_numpy"):
        ng.from_numpy(a)


def test_numpy_force_gives_a_writable_array_of_a_graph_tensor():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    assert not x.numpy().flags.writeable
    a = x.numpy(force=True)
    assert a.tolist() == [1.0, 2.0]
    assert torch.tensor([1.0], requires_grad=True).numpy(force=True).tolist() == [1.0]


@pytest.mark.parametrize("data", [
    [np.float16(1.5), 2], [np.float16(1.5), 2.5], [np.complex64(1 + 1j), 1.0],
    [np.float32(1.5), 2], [np.int32(3), 2], [np.int8(3), True], [np.float16(1), np.float32(2)],
    [np.int32(1), 2.5], [np.float64(1.5), 2.5], [[np.float16(1)], [2]], [np.uint8(3), -1],
    [1.5, 2.5], [1j, 2.0], [np.float32(1), 1j], [np.complex128(1j), np.float32(1)],
    [np.float16(1), 1j], [np.float64(2), 1j]])
def test_numpy_scalars_in_lists_promote_as_pytorch(data):
    """A NumPy scalar counts with its own dtype beside Python numbers (the default dtypes)."""
    want = torch.tensor(data)
    got = ng.tensor(data)
    assert str(got.dtype) == str(want.dtype).split(".")[-1]
    assert got.tolist() == want.tolist()
