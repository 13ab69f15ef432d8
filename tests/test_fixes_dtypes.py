"""Result dtypes against PyTorch's type promotion: the fixed cases, and a compact sweep of
representative operators over every dtype pair that fails on any new difference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError

torch = pytest.importorskip("torch")

DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
          "complex64", "complex128"]
INTS = ["bool", "uint8", "int8", "int16", "int32", "int64"]
VALS = np.array([[1, 2, 3], [4, 1, 5]])


def _np(dt, vals=VALS):
    a = np.asarray(vals)
    return (a % 2 == 1) if dt == "bool" else a.astype(dt)


def _pair(dt, vals=VALS):
    a = _np(dt, vals)
    return ng.tensor(a.copy()), torch.from_numpy(a.copy())


def _name(dt) -> str:
    return str(dt).replace("torch.", "")


def _same(n, t, rtol=1e-5):
    """``n`` (nodegrad) has ``t``'s (PyTorch) dtype and values."""
    assert _name(n.dtype) == _name(t.dtype)
    tv = t.detach().resolve_conj().numpy()
    np.testing.assert_allclose(np.asarray(n.numpy()), tv, rtol=rtol, atol=1e-6)


# --- a complex Python number on the left promotes as on the right ---------------------------------
_LEFT = {"add": lambda s, x: s + x, "mul": lambda s, x: s * x, "sub": lambda s, x: s - x,
         "div": lambda s, x: s / x, "pow": lambda s, x: s ** x,
         "ng.add": lambda s, x: (ng.add if isinstance(x, ng.Tensor) else torch.add)(s, x),
         "ng.mul": lambda s, x: (ng.mul if isinstance(x, ng.Tensor) else torch.mul)(s, x)}


@pytest.mark.parametrize("dt", ["bool", "uint8", "int32", "int64", "float32", "float64"])
@pytest.mark.parametrize("op", sorted(_LEFT))
def test_complex_number_on_the_left(op, dt):
    if op == "sub" and dt == "bool":
        pytest.skip("PyTorch refuses - with a bool tensor (nodegrad counts it as 0/1)")
    n, t = _pair(dt)
    _same(_LEFT[op](1.5 + 0.5j, n), _LEFT[op](1.5 + 0.5j, t))


# --- elementwise ops ----------------------------------------------------------------------------
@pytest.mark.parametrize("dt", ["complex64", "complex128"])
def test_sigmoid_of_complex_keeps_the_imaginary_part(dt):
    z = (VALS - 2.5) + 1j * (VALS[::-1] - 3)
    n, t = _pair(dt, z)
    _same(ng.sigmoid(n), torch.sigmoid(t))
    _same(n.sigmoid(), t.sigmoid())


def test_heaviside_refuses_complex():
    n, _ = _pair("complex64")
    for args in ((n, n), (n, 1.0), (ng.tensor([1.0, -1.0]), 0.5j)):
        with pytest.raises(DTypeError, match="heaviside: complex"):
            ng.heaviside(*args)


def test_square_of_bool_is_int64():
    n, t = _pair("bool")
    _same(ng.square(n), torch.square(t))


@pytest.mark.parametrize("dt", ["int32", "int64", "uint8"])
def test_integer_fmod_by_zero_raises(dt):
    n, _ = _pair(dt)
    with pytest.raises(ZeroDivisionError, match="fmod"):
        ng.fmod(n, ng.tensor(_np(dt, [[1, 0, 1], [1, 1, 1]])))
    with pytest.raises(ZeroDivisionError, match="fmod"):
        ng.fmod(n, 0)
    _same(ng.fmod(n, 2), torch.fmod(torch.from_numpy(_np(dt)), 2))


def test_ldexp_with_a_complex_exponent():
    n, t = _pair("float32")
    en, et = _pair("complex64", VALS + 0.5j)
    _same(ng.ldexp(n, en), torch.ldexp(t, et))


def test_xlogy_refuses_complex_instead_of_dropping_the_imaginary_part():
    n, _ = _pair("float32")
    with pytest.raises(DTypeError, match="xlogy"):
        ng.xlogy(n, ng.tensor(_np("complex64", VALS + 1j)))


@pytest.mark.parametrize("dt", ["complex64", "complex128"])
def test_sgn_isreal_of_complex(dt):
    z = np.array([1 + 1j, 0j, -2j, 3 + 0j])
    n, t = _pair(dt, z)
    _same(ng.sgn(n), torch.sgn(t))
    _same(n.sgn(), t.sgn())
    assert ng.isreal(n).tolist() == torch.isreal(t).tolist()


# --- statistics and norms -----------------------------------------------------------------------
@pytest.mark.parametrize("dt", ["complex64", "complex128"])
@pytest.mark.parametrize("op", ["cov", "corrcoef"])
def test_cov_corrcoef_of_complex(op, dt):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 6)) + 1j * rng.standard_normal((3, 6))
    n, t = _pair(dt, z)
    _same(getattr(ng, op)(n), getattr(torch, op)(t), rtol=1e-4)


@pytest.mark.parametrize("a,b", [("int64", "float32"), ("uint8", "float64"),
                                 ("complex64", "int32"), ("complex128", "complex128"),
                                 ("float32", "float32")])
@pytest.mark.parametrize("p", [2, 1, 0, float("inf")])
def test_dist_promotes_as_pytorch(a, b, p):
    na, ta = _pair(a)
    nb, tb = _pair(b, VALS * 0.5 if b[0] in "fc" else VALS[::-1])
    _same(ng.dist(na, nb, p), torch.dist(ta, tb, p))


def test_dist_of_two_integer_tensors_raises():
    n, _ = _pair("int64")
    with pytest.raises(DTypeError, match="dist"):
        ng.dist(n, n)


@pytest.mark.parametrize("dt", ["complex64", "complex128"])
def test_vector_norm_of_complex(dt):
    n, t = _pair(dt, VALS + 1j * VALS[::-1])
    for o in (2, 1, float("inf")):
        _same(ng.linalg.vector_norm(n, o), torch.linalg.vector_norm(t, o))
    x = ng.tensor(_np(dt, VALS + 1j * VALS[::-1]), requires_grad=True)
    tx = torch.from_numpy(_np(dt, VALS + 1j * VALS[::-1])).requires_grad_()
    ng.linalg.vector_norm(x).backward()
    torch.linalg.vector_norm(tx).backward()
    _same(x.grad, tx.grad)


# --- reductions' dtype= -------------------------------------------------------------------------
@pytest.mark.parametrize("src", ["bool", "uint8", "int32", "float32"])
@pytest.mark.parametrize("dt", ["int16", "int32", "int64", "float32", "float64", "complex64"])
@pytest.mark.parametrize("op", ["sum", "mean", "nansum", "nanmean"])
def test_reduction_dtype_keyword(op, src, dt):
    n, t = _pair(src)
    if op in ("mean", "nanmean") and dt[0] not in "fc":
        with pytest.raises(DTypeError, match=op):
            getattr(ng, op)(n, dtype=getattr(ng, dt))
        return
    if op.startswith("nan") and dt[0] == "c":
        pytest.skip("PyTorch's nansum has no complex kernel on the CPU")
    if op == "nanmean" and src[0] not in "fc":
        t = t.to(getattr(torch, dt))  # PyTorch's nanmean refuses integer inputs outright
    _same(getattr(ng, op)(n, dtype=getattr(ng, dt)),
          getattr(torch, op)(t, dtype=getattr(torch, dt)))
    _same(getattr(ng, op)(n, 1, dtype=getattr(ng, dt)),
          getattr(torch, op)(t, 1, dtype=getattr(torch, dt)))


def test_can_store_is_pytorchs_in_place_rule():
    for a in DTYPES:
        for b in DTYPES:
            assert ng.dtypes.can_store(a, b) == torch.can_cast(getattr(torch, a),
                                                               getattr(torch, b)), (a, b)


@pytest.mark.parametrize("op", ["add_", "sub_", "mul_", "clamp_", "bitwise_and_"])
def test_in_place_int16_into_uint8_wraps_as_pytorch(op):
    n, t = _pair("uint8", [[1, 2, 200]])
    m, s = _pair("int16", [[3, -4, 100]])
    getattr(n, op)(m)
    getattr(t, op)(s)
    _same(n, t)


# --- the compact sweep ----------------------------------------------------------------------------
_BINARY = ["add", "sub", "mul", "div", "floor_divide", "remainder", "fmod", "pow", "maximum",
           "minimum", "eq", "lt", "ge", "bitwise_and", "bitwise_xor", "logical_and", "atan2",
           "xlogy"]
_UNARY = ["neg", "abs", "exp", "sqrt", "sigmoid", "square", "sin", "tanh", "floor", "sign",
          "logical_not", "bitwise_not", "isnan", "reciprocal", "log1p", "sum", "prod", "mean",
          "cumsum", "amax", "argmax", "any", "all", "count_nonzero"]
_SCALARS = [True, 3, 2.5, 1.5 + 0.5j]
# known differences left as they are: a bool tensor ** a Python bool (PyTorch answers bool,
# nodegrad refuses two bools), and any/all of uint8 (PyTorch's legacy uint8 result, NumPy's bool)
_KNOWN = {("pow", ("bool", "bool")), ("__pow__", ("bool", "bool")), ("any", ("uint8",)),
          ("all", ("uint8",))}


def _outcome(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return f(), None
        except Exception as e:  # noqa: BLE001
            return None, e


def _allowed(tr, te, nr, ne, dts) -> bool:
    """Differences the README documents: nodegrad's refusal of mixed float precisions, NumPy's
    lack of complex32, and answers where PyTorch only lacks a kernel or refuses bool `-`."""
    if ne is not None and te is None:  # nodegrad refuses: only mixed precisions
        floats = [d for d in dts if d[0] in "fc"]
        return isinstance(ne, DTypeError) and "mixed" in str(ne) and len(floats) == 2
    if te is not None and ne is None:  # PyTorch refuses: kernel gaps, bool subtraction
        msg = str(te)
        return (isinstance(te, NotImplementedError) or "bool tensor is not supported" in msg
                or "bool tensors is not supported" in msg or "complex" in msg.lower()
                or "could not infer output dtype" in msg or "does not support bool" in msg
                or "expected input to have floating" in msg)
    return _name(tr.dtype) == "complex32" and _name(nr.dtype) == "complex64"


def _check(nf, tf, dts, bad, op=None):
    if (op, dts) in _KNOWN:
        return
    tr, te = _outcome(tf)
    nr, ne = _outcome(nf)
    if (te is None) == (ne is None):
        if te is None:
            tdt = [_name(r.dtype) for r in tr] if isinstance(tr, tuple) else _name(tr.dtype)
            ndt = [_name(r.dtype) for r in nr] if isinstance(nr, tuple) else _name(nr.dtype)
            if tdt != ndt and not _allowed(tr, te, nr, ne, dts):
                bad.append((dts, tdt, ndt))
        return
    if not _allowed(tr, te, nr, ne, dts):
        bad.append((dts, te and repr(te)[:80], ne and repr(ne)[:80]))


@pytest.mark.parametrize("op", _BINARY)
def test_sweep_binary(op):
    nf, tf = getattr(ng, op), getattr(torch, op)
    bad: list = []
    for a in DTYPES:
        na, ta = _pair(a)
        for b in DTYPES:
            nb, tb = _pair(b, VALS[::-1])
            _check(lambda: nf(na, nb), lambda: tf(ta, tb), (a, b), bad, op)
        for z in ("int64", "float64", "complex128"):  # a 0-d tensor counts as a scalar
            n0, t0 = _pair(z, 2)
            _check(lambda: nf(na, n0), lambda: tf(ta, t0), (a, "0d " + z), bad, op)
        for s in _SCALARS:
            if op in ("add", "sub", "mul", "div", "pow", "eq", "lt", "ge", "remainder",
                      "floor_divide", "fmod", "bitwise_and", "bitwise_xor"):
                _check(lambda: nf(na, s), lambda: tf(ta, s), (a, type(s).__name__), bad, op)
    assert not bad, bad


@pytest.mark.parametrize("op", ["__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
                                "__rmul__", "__truediv__", "__pow__", "__rpow__", "__and__",
                                "__or__", "__lt__", "__eq__", "__floordiv__", "__mod__"])
def test_sweep_operators_with_numbers(op):
    bad: list = []
    for a in DTYPES:
        na, ta = _pair(a)
        for s in _SCALARS:
            _check(lambda: getattr(na, op)(s), lambda: getattr(ta, op)(s),
                   (a, type(s).__name__), bad, op)
    assert not bad, bad


@pytest.mark.parametrize("op", _UNARY)
def test_sweep_unary_and_reductions(op):
    nf, tf = getattr(ng, op), getattr(torch, op)
    bad: list = []
    for a in DTYPES:
        na, ta = _pair(a)
        _check(lambda: nf(na), lambda: tf(ta), (a,), bad, op)
        if op in ("sum", "prod", "mean", "cumsum", "amax", "argmax"):
            _check(lambda: nf(na, 1), lambda: tf(ta, 1), (a, "dim 1"), bad, op)
    assert not bad, bad


@pytest.mark.parametrize("op", ["add_", "sub_", "mul_", "div_"])
def test_sweep_in_place_refusals(op):
    """An in-place result that cannot be stored (float into int, int into bool) raises."""
    bad: list = []
    for a in ["bool", "int64", "float32"]:
        for b in DTYPES:
            if b == "bool" and op == "sub_":
                continue  # nodegrad counts a bool operand of - as 0/1 (README), PyTorch refuses
            na, ta = _pair(a)
            nb, tb = _pair(b, VALS[::-1])
            tr, te = _outcome(lambda: getattr(ta, op)(tb))
            nr, ne = _outcome(lambda: getattr(na, op)(nb))
            if te is not None and ne is None:
                bad.append((a, b, repr(te)[:60]))
            if te is None and ne is None and na.dtype != np.dtype(a):
                bad.append((a, b, "dtype changed"))
    assert not bad, bad


def test_mean_method_with_an_integer_dtype_raises_as_pytorch():
    x = ng.tensor([1, 2, 4])
    with pytest.raises(ng.DTypeError, match="floating-point or complex"):
        x.mean(dtype=ng.int64)
    assert x.sum(dtype=ng.int32).dtype == np.int32


def test_block_diag_promotes_as_pytorch_with_a_0d_tensor_as_a_scalar():
    torch = pytest.importorskip("torch")
    got = ng.block_diag(ng.ones(2, 2, dtype=ng.uint8), ng.tensor(3))
    want = torch.block_diag(torch.ones(2, 2, dtype=torch.uint8), torch.tensor(3))
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    x = ng.ones(2, requires_grad=True)
    y = ng.tensor(2.0, dtype=ng.float64, requires_grad=True)
    out = ng.block_diag(x, y)
    assert out.dtype == np.float32
    out.sum().backward()
    assert y.grad.dtype == np.float64 and float(y.grad) == 1.0
    with pytest.raises(DTypeError, match="block_diag: .*float32 and float64"):
        ng.block_diag(ng.ones(2), ng.ones(2, dtype=ng.float64))


def test_a_list_of_float64_tensors_or_arrays_stays_float64_as_torch():
    torch = pytest.importorskip("torch")
    a = np.array([1.0, 2.0])
    t, tt = ng.tensor(a), torch.tensor(a)
    assert str(ng.tensor([t[0], t[1]]).dtype) == "float64"
    assert torch.tensor([tt[0], tt[1]]).dtype == torch.float64
    assert str(ng.tensor([a, a]).dtype) == str(torch.tensor(np.stack([a, a])).dtype)[6:]
    assert str(ng.asarray([t, t]).dtype) == "float64"
    assert str(ng.tensor([1.5, 2.0]).dtype) == "float32"  # Python floats: the default
