"""Python numbers meeting tensors as PyTorch's CPU kernels treat them: comparisons in the
tensor's dtype (float16, bfloat16) or the default float (an integer tensor against a float),
float16/bfloat16 in-place arithmetic computed in float32 and rounded once, integer division by
a bool zero refused, and a rounded division of integers by a float kept in float32."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

_CMP = ("eq", "ne", "lt", "le", "gt", "ge")


def _same(t, n) -> None:
    assert str(t.dtype).split(".")[-1] == str(n.dtype).split(".")[-1]
    if t.dtype.is_floating_point:
        np.testing.assert_array_equal(n.numpy().astype(np.float64), t.double().numpy())
    else:
        np.testing.assert_array_equal(n.numpy(), t.numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", _CMP)
def test_comparisons_round_the_number_to_the_tensor_dtype(dtype, op):
    values = [0.1, 1.0, 65504.0, -0.3, 3.3333]
    tt = torch.tensor(values, dtype=getattr(torch, dtype))
    nt = ng.tensor(values, dtype=getattr(ng, dtype))
    for v in (0.1, 1.0, 3.3333, -0.3, 65520.0, 70000, 1e10, -1e10, 2):
        _same(getattr(torch, op)(tt, v), getattr(ng, op)(nt, v))
        _same(getattr(tt, f"__{op}__")(v), getattr(nt, f"__{op}__")(v))


@pytest.mark.parametrize("op", _CMP)
def test_integer_tensor_against_a_float_compares_in_the_default_float(op):
    values = [16777216, 3, -7, 2**40 + 1]
    for v in (16777217.0, 3.5, 3.0, -7.0, float(2**40)):
        want = getattr(torch, op)(torch.tensor(values), v)
        got = getattr(ng, op)(ng.tensor(values), v)
        _same(want, got)
    # the number on the left, and integer numbers compared exactly
    assert (16777217.0 == ng.tensor([16777216])).tolist() == [True]
    assert (ng.tensor([16777217]) == 16777216).tolist() == [False]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", ["add_", "sub_", "mul_", "div_"])
def test_low_precision_in_place_ops_compute_in_float32(dtype, op):
    values = [0.0, 1.0, 0.3, 1.7, 3.1, -2.5, 60000.0]
    for v in (2.0 ** 40, 0.1, 1e-10, 3.3, -7.0):
        t = torch.tensor(values, dtype=getattr(torch, dtype))
        n = ng.tensor(values, dtype=getattr(ng, dtype))
        getattr(t, op)(v)
        with np.errstate(all="ignore"):
            getattr(n, op)(v)
        _same(t, n)
        out_of_place = getattr(ng.tensor(values, dtype=getattr(ng, dtype)), op[:-1])(v)
        _same(t, out_of_place)  # the same bits as the op out of place
    t, n = (lib.tensor([0.3, 1.7], dtype=lib.float16) for lib in (torch, ng))
    t += torch.tensor([0.01, 0.02], dtype=torch.float16)
    n += ng.tensor([0.01, 0.02], dtype=ng.float16)
    _same(t, n)


def test_low_precision_in_place_refuses_a_complex_result():
    t = ng.tensor([1.0], dtype=ng.float16)
    with pytest.raises(ng.DTypeError, match="add_: result type complex"):
        t += 1j


def test_low_precision_in_place_under_jit():
    def step(x):
        x.mul_(2.0 ** 40)
        return x

    f = ng.jit(step)
    for _ in range(3):
        x = ng.tensor([0.0, 1.0], dtype=ng.float16)
        with np.errstate(all="ignore"):
            out = f(x)
        assert out.tolist()[0] == 0.0 and np.isinf(out.tolist()[1])


@pytest.mark.parametrize("expr", ["x % False", "x // False", "x.div(False, rounding_mode='trunc')",
                                  "x.fmod(False)"])
def test_integer_division_by_a_bool_zero_raises(expr):
    x = torch.tensor([7])
    with pytest.raises(RuntimeError):
        eval(expr, {"x": x})
    x = ng.tensor([7])
    with pytest.raises(ZeroDivisionError):
        eval(expr, {"x": x})
    assert eval(expr.replace("False", "True"), {"x": ng.tensor([7])}).tolist() == \
        eval(expr.replace("False", "True"), {"x": torch.tensor([7])}).tolist()


@pytest.mark.parametrize("dtype", ["int64", "int32", "int8", "bool"])
@pytest.mark.parametrize("mode", ["trunc", "floor"])
def test_rounded_division_of_integers_by_a_float_is_float32(dtype, mode):
    values = [7, -7, 0, 1] if dtype != "bool" else [True, False, True, False]
    for v in (2.5, -0.3, 0.1):
        want = torch.div(torch.tensor(values, dtype=getattr(torch, dtype)), v,
                         rounding_mode=mode)
        got = ng.div(ng.tensor(values, dtype=getattr(ng, dtype)), v, rounding_mode=mode)
        _same(want, got)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("op", ["add", "sub", "rsub", "mul", "div", "pow", "remainder", "fmod"])
def test_low_precision_ops_with_a_number_as_pytorch(dtype, op):
    """add, sub, pow, remainder, fmod take the number rounded to the tensor's dtype, mul and div
    keep it in float32 (PyTorch's CPU kernels), out of place and, for the in-place forms, in
    place too."""
    values = np.random.default_rng(0).uniform(-4, 4, 500).astype(np.float32)
    if op == "pow":
        values = np.abs(values)
    tt = torch.tensor(values, dtype=getattr(torch, dtype))
    nt = ng.tensor(values, dtype=getattr(ng, dtype))
    for v in (0.1, 3.3333, 1e-3, 2049, -7.25):
        if op == "pow" and v < 0:
            continue
        with np.errstate(all="ignore"):
            _same(getattr(torch, op)(tt, v), getattr(ng, op)(nt, v))
            if op in ("add", "sub", "mul", "div"):
                t, n = tt.clone(), ng.tensor(nt)
                getattr(t, op + "_")(v)
                getattr(n, op + "_")(v)
                _same(t, n)
