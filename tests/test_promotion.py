"""Type promotion follows PyTorch (categories bool < integer < float, 0-d tensors and Python
numbers count like scalars), except that float32 with float64 raises DTypeError by design."""

import itertools

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64"]
PAIRS = list(itertools.product(DTYPES, DTYPES))
X = np.array([0, 1, 2, 3, 5])  # as bool: F, T, T, T, T
Y = np.array([1, 2, 1, 3, 1])  # never 0: divisors and exponents; as bool: all True
COND = np.array([True, False, True, False, False])

# op name -> (nodegrad, torch), both called on two tensors
OPS = {
    "add": (lambda a, b: a + b, torch.add),
    "subtract": (lambda a, b: a - b, torch.sub),
    "multiply": (lambda a, b: a * b, torch.mul),
    "divide": (lambda a, b: a / b, torch.true_divide),
    "floor_divide": (lambda a, b: a // b, torch.floor_divide),
    "remainder": (lambda a, b: a % b, torch.remainder),
    "power": (lambda a, b: a ** b, torch.pow),
    "maximum": (ng.maximum, torch.maximum),
    "minimum": (ng.minimum, torch.minimum),
    "where": (lambda a, b: ng.where(ng.tensor(COND[:a.shape[0]] if a.ndim else True), a, b),
              lambda a, b: torch.where(torch.tensor(COND[:a.shape[0]] if a.ndim else True),
                                       a, b)),
    "clip": (lambda a, b: ng.clip(a, b, None), lambda a, b: torch.clamp(a, b, None)),
    "equal": (lambda a, b: a == b, torch.eq),
    "less": (lambda a, b: a < b, torch.lt),
    "greater_equal": (lambda a, b: a >= b, torch.ge),
    "bitwise_and": (lambda a, b: a & b, torch.bitwise_and),
    "bitwise_or": (lambda a, b: a | b, torch.bitwise_or),
    "bitwise_xor": (lambda a, b: a ^ b, torch.bitwise_xor),
    "left_shift": (lambda a, b: a << b, torch.bitwise_left_shift),
    "right_shift": (lambda a, b: a >> b, torch.bitwise_right_shift),
    "concatenate": (lambda a, b: ng.concatenate([a.reshape(-1), b.reshape(-1)]),
                    lambda a, b: torch.cat([a.reshape(-1), b.reshape(-1)])),
}


def _pair(a: str, b: str, shape_a=(5,), shape_b=(5,)):
    x, y = X.astype(a), Y.astype(b)
    x, y = x[:shape_a[0]] if shape_a else x[0], y[:shape_b[0]] if shape_b else y[0]
    x, y = np.array(x), np.array(y)
    return (ng.tensor(x), ng.tensor(y)), (torch.from_numpy(x), torch.from_numpy(y))


def _torch_or_error(tf, tx, ty):
    try:
        return tf(tx, ty)
    except RuntimeError:
        return None


def _check(name, a, b, shape_a=(5,), shape_b=(5,)):
    nf, tf = OPS[name]
    (nx, ny), (tx, ty) = _pair(a, b, shape_a, shape_b)
    want = _torch_or_error(tf, tx, ty)
    floats = {a, b} == {"float32", "float64"}
    if floats and (shape_a and shape_b or not shape_a and not shape_b):
        with pytest.raises(ng.DTypeError, match="float32.*float64|float64.*float32"):
            nf(nx, ny)  # nodegrad's documented choice: no silent float64
        return
    if want is None:
        if name == "subtract" and "bool" in (a, b):
            return  # PyTorch refuses any bool operand here; nodegrad follows NumPy (True is 1)
        with pytest.raises(ng.DTypeError, match=name):
            nf(nx, ny)
        return
    got = nf(nx, ny)
    assert str(got.dtype) == str(want.dtype).removeprefix("torch."), (name, a, b, got.dtype)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, err_msg=f"{name} {a} {b}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(OPS))
def test_every_dtype_pair_matches_torch(name):
    for a, b in PAIRS:
        _check(name, a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["add", "multiply", "divide", "maximum", "where", "less",
                                  "bitwise_or", "floor_divide"])
def test_zero_dim_tensors_count_like_scalars_within_a_category(name):
    # PyTorch: a 0-d tensor widens a dimensioned one only if its category is higher, so a 0-d
    # int64 leaves an int8 tensor int8 and a 0-d float64 leaves a float32 tensor float32 (no
    # DTypeError: the 0-d value is cast, as a Python float would be); two 0-d tensors promote.
    for a, b in PAIRS:
        _check(name, a, b, (), (5,))
        _check(name, a, b, (5,), ())
        _check(name, a, b, (), ())


SCALARS = [True, 2, 2.5]
SCALAR_OPS = {
    "add": lambda a, s: a + s, "radd": lambda a, s: s + a, "subtract": lambda a, s: a - s,
    "multiply": lambda a, s: a * s, "divide": lambda a, s: a / s, "rdivide": lambda a, s: s / a,
    "floor_divide": lambda a, s: a // s, "remainder": lambda a, s: a % s,
    "power": lambda a, s: a ** s, "less": lambda a, s: a < s, "equal": lambda a, s: a == s,
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(SCALAR_OPS))
def test_python_scalars_never_upcast_within_a_category(name):
    f = SCALAR_OPS[name]
    for a, s in itertools.product(DTYPES, SCALARS):
        x = Y.astype(a)  # no zeros: 2.5 / x stays finite
        if name == "power" and a == "bool" and s is True:
            continue  # torch answers bool ** True through a special path; nodegrad refuses
        try:
            want = f(torch.from_numpy(x), s)
        except RuntimeError:
            if name == "subtract" and (a == "bool" or s is True):
                continue  # PyTorch refuses a bool operand in a subtraction; nodegrad follows NumPy
            with pytest.raises(ng.DTypeError):
                f(ng.tensor(x), s)
            continue
        got = f(ng.tensor(x), s)
        assert str(got.dtype) == str(want.dtype).removeprefix("torch."), (name, a, s, got.dtype)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_python_ints_out_of_range_raise_instead_of_wrapping():
    i8 = ng.tensor(np.array([1, 2], "int8"))
    assert (i8 + 1).dtype == np.int8 and (2 * i8).tolist() == [2, 4]
    with pytest.raises(OverflowError, match="1000"):  # PyTorch wraps around to -24
        i8 + 1000


def test_result_type_matches_torch_over_levels():
    shapes = [(2,), ()]
    for (a, b), sa, sb in itertools.product(PAIRS, shapes, shapes):
        x, y = np.zeros(sa, a), np.zeros(sb, b)
        want = torch.result_type(torch.from_numpy(x), torch.from_numpy(y))
        if {a, b} == {"float32", "float64"} and len(sa) == len(sb):
            with pytest.raises(ng.DTypeError):
                ng.result_type(ng.tensor(x), ng.tensor(y))
            continue
        assert str(ng.result_type(ng.tensor(x), ng.tensor(y))) == str(want)[6:], (a, b, sa, sb)
    for a, s in itertools.product(DTYPES, SCALARS):
        want = torch.result_type(torch.zeros(2, dtype=getattr(torch, a)), s)
        assert str(ng.result_type(ng.tensor(np.zeros(2, a)), s)) == str(want)[6:]
    # a 0-d float64 with an int tensor and a Python float: the 0-d tensor's dtype wins
    three = (ng.tensor(np.zeros(2, "int8")), ng.tensor(1.0, dtype="float64"), 2.5)
    assert ng.result_type(*three) == np.float64


def test_integer_with_float32_gives_float32():
    i = ng.tensor([1, 2, 3])
    assert (i + ng.ones(3)).dtype == np.float32
    assert ng.minimum(i, ng.ones(3)).dtype == np.float32
    assert (i % ng.ones(3)).dtype == np.float32
    assert ng.where(i > 1, i, ng.zeros(3)).dtype == np.float32
    assert (i / i).dtype == np.float32  # integer true division: the default float
    assert (i.reshape(1, 3) @ ng.ones(3, 1)).dtype == np.float32


def test_gradients_flow_to_the_float_operand():
    w = np.array([0.5, -1.0, 2.0], np.float32)
    k = np.array([3, -2, 7])
    for fn in (lambda a, b: (a * b).sum(), lambda a, b: (b / a).sum(),
               lambda a, b: ng.maximum(a, b).sum() if isinstance(a, ng.Tensor)
               else torch.maximum(a, b).sum(),
               lambda a, b: (a ** b).sum()):
        x = ng.tensor(w, requires_grad=True)
        out = fn(x, ng.tensor(k))
        out.backward()
        tx = torch.tensor(w, requires_grad=True)
        tout = fn(tx, torch.tensor(k))
        tout.backward()
        assert out.dtype == np.float32 and x.grad.dtype == np.float32
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6)
    # a 0-d float64 leaf used with a float32 tensor computes in float32 but keeps its own dtype
    # in its gradient, as in PyTorch
    s = ng.tensor(1.5, dtype="float64", requires_grad=True)
    x = ng.tensor(w, requires_grad=True)
    (x * s).sum().backward()
    ts = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    tx = torch.tensor(w, requires_grad=True)
    (tx * ts).sum().backward()
    assert s.grad.dtype == np.float64 and x.grad.dtype == np.float32
    np.testing.assert_allclose(s.grad.numpy(), ts.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-6)


def test_gradients_and_vmap_see_promoted_operands():
    k = ng.tensor([1, 2, 3])
    g = ng.grad(lambda x: (x * k + ng.tensor(np.int8(2))).sum())(ng.ones(3))
    assert g.dtype == np.float32 and g.tolist() == [1.0, 2.0, 3.0]
    # inside vmap each example of a batched 0-d int64 is a 0-d tensor: it does not widen int8
    out = ng.vmap(lambda a, b: a + b, in_axes=(0, None))(ng.tensor([1, 2]),
                                                         ng.tensor(np.array([1, 2], "int8")))
    assert out.dtype == np.int8 and out.tolist() == [[2, 3], [3, 4]]


@pytest.mark.parametrize("layer, x", [
    (lambda: ng.nn.Linear(3, 2), np.ones((4, 3), "int64")),
    (lambda: ng.nn.Conv1d(2, 3, 3), np.ones((1, 2, 5), "int32")),
    (lambda: ng.nn.Conv2d(2, 3, 3), np.ones((1, 2, 5, 5), "uint8")),
    (lambda: ng.nn.Linear(3, 2), np.ones((4, 3), "bool")),
], ids=["Linear", "Conv1d", "Conv2d", "Linear-bool"])
def test_integer_input_into_a_layer_raises(layer, x):
    m = layer()
    name = type(m).__name__
    with pytest.raises(ng.DTypeError, match=rf"{name}: .*{x.dtype}.*\.float\(\)"):
        m(ng.tensor(x))
    fn = {"Linear": ng.nn.functional.linear, "Conv1d": ng.nn.functional.conv1d,
          "Conv2d": ng.nn.functional.conv2d}[name]
    args = (m.weight, m.bias)
    with pytest.raises(ng.DTypeError, match=rf"{name}: .*\.float\(\)"):
        fn(ng.tensor(x), *args)
    assert m(ng.tensor(x).float()).dtype == np.float32  # the suggested fix works
    with pytest.raises(ng.DTypeError, match=rf"{name}: .*float64"):
        m(ng.tensor(x.astype("float64")))
    with pytest.raises(RuntimeError):  # PyTorch refuses it too
        getattr(torch.nn, name)(*m.weight.shape[1::-1][:2] if name == "Linear" else
                                (m.weight.shape[1], m.weight.shape[0], 3))(torch.from_numpy(x))


def test_bitwise_operators_on_integers_and_bools():
    a, b = np.array([12, -7, 0, 255, 5]), np.array([10, 3, -1, 15, 2])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    na, nb = ng.tensor(a), ng.tensor(b)
    for f in (lambda x, y: x & y, lambda x, y: x | y, lambda x, y: x ^ y, lambda x, y: ~x,
              lambda x, y: x << 2, lambda x, y: x >> 1, lambda x, y: 6 & x, lambda x, y: 1 | x,
              lambda x, y: 3 ^ x, lambda x, y: x >> (y & 3), lambda x, y: 1 << (y & 7)):
        got, want = f(na, nb), f(ta, tb)
        assert got.dtype == np.int64 and got.tolist() == want.tolist()
    for fn, meth in ((ng.bitwise_and, "bitwise_and"), (ng.bitwise_or, "bitwise_or"),
                     (ng.bitwise_xor, "bitwise_xor"), (ng.left_shift, "bitwise_left_shift"),
                     (ng.right_shift, "bitwise_right_shift")):
        want = getattr(torch, meth)(ta, tb & 3).tolist()
        assert fn(na, nb & 3).tolist() == want == getattr(na, meth)(nb & 3).tolist()
    assert ng.bitwise_not(na).tolist() == na.bitwise_not().tolist() == (~ta).tolist()
    p, q = np.array([True, True, False, False]), np.array([True, False, True, False])
    for f in (lambda x, y: x & y, lambda x, y: x | y, lambda x, y: x ^ y, lambda x, y: ~x):
        got = f(ng.tensor(p), ng.tensor(q))
        want = f(torch.tensor(p), torch.tensor(q))
        assert got.dtype == np.bool_ and got.tolist() == want.tolist()
    u = ng.tensor(np.array([1, 200], "uint8"))
    assert (~u).tolist() == [254, 55]
    assert (u & ng.tensor(np.array([3, -1], "int8"))).dtype == "int16"


@pytest.mark.parametrize("f", [lambda x: x & x, lambda x: ~x, lambda x: x << 1,
                               lambda x: ng.bitwise_or(x, 1), lambda x: ng.tensor([1, 2]) & 1.5])
def test_bitwise_operators_refuse_floats(f):
    with pytest.raises(ng.DTypeError, match="integer or bool"):
        f(ng.ones(2))


def test_bitwise_ops_are_not_differentiable_but_compose_with_grad():
    x = ng.ones(3, requires_grad=True)
    m = (ng.tensor([1, 2, 3]) & 1).bool()
    y = ng.where(m, x * 2, x)
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 1.0, 2.0]
    assert not (ng.tensor([1, 2]) & ng.tensor([3, 1])).requires_grad


UNARY_FLOAT = ["sin", "cos", "tan", "exp", "expm1", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid",
               "atan", "sinh", "asinh", "erf"]


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "int32", "int64"])
def test_float_results_of_integers_are_float32_computed_in_float32(dtype):
    """NumPy computes float functions of 8-bit integers and bools in float16; PyTorch's result
    is float32's (exp of a uint8 image). nodegrad gives PyTorch's, eagerly and under jit."""
    v = np.array([1, 0, 1, 1] if dtype == "bool" else [3, 1, 2, 7]).astype(dtype)
    x, t = ng.tensor(v), torch.tensor(v)
    for name in UNARY_FLOAT:
        want = getattr(torch, name)(t)
        for f in (getattr(ng, name), ng.jit(getattr(ng, name))):
            for _ in range(2):  # a jitted function's trace, then its replay
                got = f(x)
                assert str(got.dtype) == "float32" == str(want.dtype)[6:], name
                np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=3e-7, err_msg=name)
    want = torch.atan2(t, t + 1)
    got = ng.atan2(x, x + 1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=3e-7)
    with np.errstate(all="ignore"):
        got = ng.softmax(x, 0).numpy()
    np.testing.assert_allclose(got, torch.softmax(t.float(), 0).numpy(), rtol=3e-7)


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "int32", "int64"])
def test_integer_sums_and_products_are_int64(dtype):
    """PyTorch accumulates every integer dtype (and bools) in int64; NumPy's unsigned sums are
    uint64, which with int64 gives float64."""
    v = np.array([1, 0, 1, 1] if dtype == "bool" else [200, 1, 2, 7]).astype(dtype)
    x, t = ng.tensor(v), torch.tensor(v)
    for got, want in [(x.sum(), t.sum()), (ng.sum(x, 0), t.sum(0)), (x.prod(), t.prod()),
                      (x.cumsum(0), t.cumsum(0)), (x.cumprod(0), t.cumprod(0))]:
        assert str(got.dtype) == "int64" == str(want.dtype)[6:]
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert str((x.sum() - ng.tensor(np.int64(5))).dtype) == "int64"


def test_float16_stays_float16_through_library_functions_and_kernels():
    """SciPy's erf answers float16 in float64, and numba has no float16: erf, gelu, the
    per-example outer products (vmap of a layer's gradient) and a strided convolution's input
    gradient keep float16 with numba loaded, and the group norm accumulates in float32."""
    pytest.importorskip("numba")
    ng.manual_seed(0)
    x = ng.randn(4, 6, dtype=ng.float16, requires_grad=True)
    assert ng.special.erf(x).dtype == ng.float16
    y = ng.nn.functional.gelu(x)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == ng.float16
    w = ng.randn(3, 6, dtype=ng.float16)
    per = ng.vmap(ng.grad(lambda w, xi: ng.tanh(ng.linear(xi, w)).sum()), in_axes=(None, 0))
    g = per(w, ng.randn(5, 6, dtype=ng.float16))  # one row each: the outer products
    assert g.dtype == ng.float16 and g.shape == (5, 3, 6)
    conv = ng.nn.Conv1d(3, 4, 3, stride=2, padding=1).half()
    xc = ng.randn(2, 3, 9, dtype=ng.float16, requires_grad=True)
    conv(xc).sum().backward()
    assert xc.grad.dtype == ng.float16
    xg = ng.randn(2, 4, 64, dtype=ng.float16) * 30 + 100
    got = ng.nn.functional.group_norm(xg, 2).numpy().astype(np.float64)
    want = ng.nn.functional.group_norm(xg.float(), 2).numpy().astype(np.float16)
    np.testing.assert_array_equal(got, want.astype(np.float64))  # float32 work, rounded once


# --- bfloat16 -------------------------------------------------------------------------------------
BF16_OPS = ["add", "subtract", "multiply", "divide", "maximum", "where", "clip", "equal", "less",
            "concatenate"]
BF16_SHAPES = [((5,), (5,)), ((5,), ()), ((), (5,)), ((), ())]


def _bf16_with(other: str, shape_a, shape_b):
    """A bfloat16 operand (exact small values) and one of dtype ``other``, in both libraries."""
    x = np.array(X[:shape_a[0]] if shape_a else X[0], np.float32)
    y = np.array(Y[:shape_b[0]] if shape_b else Y[0])
    if other == "bfloat16":
        y = y.astype(np.float32)
        return ((ng.tensor(x).astype(ng.bfloat16), ng.tensor(y).astype(ng.bfloat16)),
                (torch.from_numpy(x).bfloat16(), torch.from_numpy(y).bfloat16()))
    y = y.astype(other)
    return ((ng.tensor(x).astype(ng.bfloat16), ng.tensor(y)),
            (torch.from_numpy(x).bfloat16(), torch.from_numpy(y)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", BF16_OPS)
@pytest.mark.parametrize("other", DTYPES + ["float16", "bfloat16"])
def test_bfloat16_with_every_dtype_and_level_matches_torch(name, other):
    """PyTorch's table (an integer tensor with bfloat16 gives bfloat16, a 0-d bfloat16 with a
    float16 tensor float16, ...), except nodegrad's rule that two different floats of one level
    raise (bfloat16 with float16 is float32 in PyTorch, bfloat16 with float32 float32)."""
    nf, tf = OPS[name]
    for sa, sb in BF16_SHAPES:
        (nx, ny), (tx, ty) = _bf16_with(other, sa, sb)
        for (p, q), (tp, tq) in (((nx, ny), (tx, ty)), ((ny, nx), (ty, tx))):
            want = _torch_or_error(tf, tp, tq)
            floats = other in ("float16", "float32", "float64")
            if floats and ((p.ndim == 0) == (q.ndim == 0) or name == "concatenate"):
                with pytest.raises(ng.DTypeError, match="mixed float dtypes"):
                    nf(p, q)
                continue
            if want is None:
                if name == "subtract" and other == "bool":
                    continue  # PyTorch refuses any bool operand here (see _check)
                with pytest.raises(ng.DTypeError, match=name):
                    nf(p, q)
                continue
            got = nf(p, q)
            assert str(got.dtype) == str(want.dtype).removeprefix("torch."), (name, other, sa,
                                                                              sb, got.dtype)
            w = want.float() if want.dtype == torch.bfloat16 else want
            np.testing.assert_allclose(got.numpy().astype(np.float64),
                                       w.numpy().astype(np.float64), rtol=1e-2)


@pytest.mark.parametrize("s", SCALARS + [2.5j])
def test_bfloat16_with_python_numbers_matches_torch(s):
    x = ng.tensor(Y.astype(np.float32)).astype(ng.bfloat16)
    tx = torch.from_numpy(Y.astype(np.float32)).bfloat16()
    for f in (lambda a: a + s, lambda a: s * a, lambda a: a / s, lambda a: a < s)[
            :3 if isinstance(s, complex) else 4]:  # complex numbers have no order
        assert str(f(x).dtype) == str(f(tx).dtype).removeprefix("torch."), s


def test_bfloat16_dtype_queries_match_torch():
    names = DTYPES + ["float16", "bfloat16"]
    for a, b in itertools.product(names, names):
        ta, tb = getattr(torch, a), getattr(torch, b)
        assert str(ng.promote_types(getattr(ng, a), getattr(ng, b))) == str(
            torch.promote_types(ta, tb)).removeprefix("torch."), (a, b)
        assert ng.can_cast(getattr(ng, a), getattr(ng, b)) == torch.can_cast(ta, tb), (a, b)
