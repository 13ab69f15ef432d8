"""ng.testing.assert_close and make_tensor against torch.testing: outcomes, error types and
messages (dtype names aside), default tolerances per dtype, nesting, make_tensor's ranges."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.testing import assert_close, make_tensor

torch = pytest.importorskip("torch")


def _t(*a, dtype=None):
    return ng.tensor(*a, dtype=dtype)


def _pt(*a, dtype=None):
    return torch.tensor(*a, dtype=getattr(torch, dtype) if dtype else None)


NAN, INF = float("nan"), float("inf")
# (actual, expected, options) built by a tensor constructor, so each runs in both libraries
CASES = {
    "float_mismatch": (lambda T: (T([1., 2., 3.]), T([1., 2.5, 3.])), {}),
    "int_exact": (lambda T: (T([1, 2, 7]), T([1, 5, 3])), {}),
    "int_zero_expected": (lambda T: (T([1, 2], dtype="int32"), T([1, 0], dtype="int32")), {}),
    "bool": (lambda T: (T([True, False]), T([True, True])), {}),
    "scalar_tensor": (lambda T: (T(1.), T(1.5)), {}),
    "2d_index": (lambda T: (T([[1., 2.], [3, 4]]), T([[1., 2.], [3, 4.1]])), {}),
    "nan": (lambda T: (T([NAN]), T([NAN])), {}),
    "nan_equal": (lambda T: (T([NAN, 1.]), T([NAN, 1.])), {"equal_nan": True}),
    "inf": (lambda T: (T([INF]), T([-INF])), {}),
    "inf_same": (lambda T: (T([INF, -INF]), T([INF, -INF])), {}),
    "zero_expected": (lambda T: (T([0., 1.]), T([1., 1.])), {}),
    "float16_tol": (lambda T: (T([1., 2.], dtype="float16"), T([1., 2.01], dtype="float16")), {}),
    "float16_within": (lambda T: (T([1000.], dtype="float16"), T([1000.5], dtype="float16")),
                       {}),
    "float64_within": (lambda T: (T([1.], dtype="float64"), T([1. + 5e-8], dtype="float64")),
                       {}),
    "float32_within": (lambda T: (T([1.]), T([1. + 5e-6])), {}),
    "complex": (lambda T: (T([1 + 1j], dtype="complex64"), T([1 + 2j], dtype="complex64")), {}),
    "dtype_mismatch": (lambda T: (T([1.]), T([1.], dtype="float64")), {}),
    "dtype_promoted": (lambda T: (T([1, 2]), T([1., 2.5])), {"check_dtype": False}),
    "shape": (lambda T: (T([1., 2.]), T([1., 2., 3.])), {}),
    "explicit_tol": (lambda T: (T([1., 2.]), T([1., 2.1])), {"rtol": 0, "atol": 0.05}),
    "explicit_tol_ok": (lambda T: (T([1., 2.]), T([1., 2.1])), {"rtol": 0.1, "atol": 0.0}),
    "int_atol": (lambda T: (T([1, 2]), T([1, 3])), {"rtol": 0.0, "atol": 2}),
    "msg_str": (lambda T: (T([1., 2.]), T([1., 2.1])), {"msg": "custom"}),
    "msg_callable": (lambda T: (T([1., 2.]), T([1., 2.1])), {"msg": lambda m: f"H\n{m}\nF"}),
    "equal": (lambda T: (T([1., 2.]), T([1., 2.])), {}),
    "list_of_tensors": (lambda T: ([T(1.), T(2.)], [T(1.), T(3.)]), {}),
    "nested": (lambda T: ((1.0, {"w": T([1., 5.])}), [1.0, {"w": T([1., 2.])}]), {}),
    "tensor_vs_number": (lambda T: (T([1.]), 1.0), {}),
    "tensor_vs_ndarray": (lambda T: (T([1.]), np.array([1.], dtype=np.float32)), {}),
}
PLAIN = {
    "numbers": (1.0, 1.5, {}), "ints": (1, 2, {}), "int_vs_float": (1.0, 1, {}),
    "int_vs_float_unchecked": (1.0, 1, {"check_dtype": False}),
    "bools": (True, False, {}), "none": (None, 1, {}), "nones": (None, None, {}),
    "complex_numbers": (1 + 1j, 1 + 2j, {}), "np_scalars": (np.float32(1.0), np.float32(1.5), {}),
    "strings": ("a", "a", {}), "seq_len": ([1.0], [1.0, 2.0], {}),
    "tuple_vs_list": ([1.0], (1.0,), {}),
    "mapping_keys": ({"a": 1.0}, {"b": 1.0}, {}),
    "mapping_values": ({"a": [1.0, 2.0]}, {"a": [1.0, 2.5]}, {}),
    "ndarrays": (np.array([1.]), np.array([1.5]), {}),
    "ndarray_ints": (np.array([1, 2]), np.array([1, 2]), {}),
    "one_tol": (1.0, 1.0, {"rtol": 0.1}),
}


def _outcome(fn, a, e, kw):
    try:
        fn(a, e, **kw)
    except Exception as err:  # noqa: BLE001  (the type and message are what is compared)
        msg = str(err).replace("torch.", "").replace("<class 'Tensor'>",
                                                     "<class 'nodegrad.tensor.Tensor'>")
        return type(err).__name__, msg
    return "ok", ""


@pytest.mark.parametrize("name", sorted(CASES))
def test_tensor_cases_match_torch(name):
    make, kw = CASES[name]
    got = _outcome(assert_close, *make(_t), kw)
    ref = _outcome(torch.testing.assert_close, *make(_pt), kw)
    if name == "shape":
        ref = (ref[0], ref[1].replace("Size([2])", "(2,)").replace("Size([3])", "(3,)"))
    assert got == ref


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_cases_match_torch(name):
    a, e, kw = PLAIN[name]
    assert _outcome(assert_close, a, e, kw) == _outcome(torch.testing.assert_close, a, e, kw)


def test_default_tolerances_per_dtype():
    for dt, (rtol, atol) in {"float16": (1e-3, 1e-5), "float32": (1.3e-6, 1e-5),
                             "float64": (1e-7, 1e-7), "complex64": (1.3e-6, 1e-5),
                             "complex128": (1e-7, 1e-7)}.items():
        x = ng.ones(3, dtype=dt)
        with pytest.raises(AssertionError, match=rf"up to {atol} allowed\)\n.*up to {rtol} "):
            assert_close(x, x * 2)


def test_check_stride_and_device_flags():
    base = ng.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3))
    t = base.T.contiguous()
    assert_close(base.T, t)
    with pytest.raises(AssertionError, match=r"attribute 'stride\(\)' do not match"):
        assert_close(base.T, t, check_stride=True)
    assert_close(base, base, check_device=False, check_layout=False)


def test_requires_grad_tensors_compare():
    x = ng.ones(2, requires_grad=True)
    assert_close(x * 1, ng.ones(2))


def test_make_tensor_ranges_and_dtypes():
    for dt, lo, hi in [("float16", -9, 9), ("float32", -9, 9), ("float64", -9, 9),
                       ("int8", -9, 10), ("uint8", 0, 10), ("int64", -9, 10)]:
        x = make_tensor(50, 4, dtype=dt)
        assert x.shape == (50, 4) and x.dtype == np.dtype(dt)
        v = x.numpy()
        assert v.min() >= lo and v.max() < hi and len(np.unique(v)) > 1
    c = make_tensor((30,), dtype=ng.complex64, low=2, high=3).numpy()
    assert c.dtype == np.complex64 and np.all((c.real >= 2) & (c.real < 3) & (c.imag >= 2))
    b = make_tensor(100, dtype=ng.bool_).numpy()
    assert b.dtype == bool and b.any() and not b.all()
    assert make_tensor((), dtype=ng.float32).shape == ()


def test_make_tensor_options_and_seed():
    x = make_tensor(2, 3, dtype=ng.float32, noncontiguous=True, requires_grad=True)
    t = torch.testing.make_tensor(2, 3, dtype=torch.float32, device="cpu", noncontiguous=True)
    assert not x.is_contiguous() and x.stride() == t.stride() and x.requires_grad and x.is_leaf
    assert np.all(make_tensor(20, dtype=ng.int64, low=0, high=1,
                              exclude_zero=True).numpy() == 1)
    z = make_tensor(20, dtype=ng.float32, low=0, high=1e-40, exclude_zero=True).numpy()
    assert np.all(z != 0)
    ng.manual_seed(3)
    a = make_tensor(5, dtype=ng.float32)
    ng.manual_seed(3)
    assert_close(a, make_tensor(5, dtype=ng.float32))


@pytest.mark.parametrize("kw", [{"dtype": "int64", "low": 5, "high": 2},
                                {"dtype": "uint8", "low": -5, "high": -2},
                                {"dtype": "int64", "requires_grad": True},
                                {"dtype": "float32", "low": float("nan")}])
def test_make_tensor_errors_match_torch(kw):
    with pytest.raises(ValueError) as ours:
        make_tensor(3, **kw)
    with pytest.raises(ValueError) as ref:
        torch.testing.make_tensor(3, device="cpu", **{**kw, "dtype": getattr(torch, kw["dtype"])})
    assert str(ours.value) == str(ref.value).replace("torch.", "")


def test_make_tensor_unsupported_dtype():
    with pytest.raises(TypeError, match="not supported by make_tensor"):
        make_tensor(3, dtype=np.dtype("datetime64[s]"))


def test_allow_subclasses_false_refuses_a_parameter_against_a_tensor():
    p = ng.nn.Parameter(ng.ones(2))
    assert_close(p, ng.ones(2))
    with pytest.raises(TypeError, match="No comparison pair.*Parameter"):
        assert_close(p, ng.ones(2), allow_subclasses=False)
    with pytest.raises(TypeError, match="No comparison pair.*Parameter"):
        torch.testing.assert_close(torch.nn.Parameter(torch.ones(2)), torch.ones(2),
                                   allow_subclasses=False)
