"""Complex tensors in autodiff, PyTorch's convention: for a real loss L of z = x + iy,
z.grad = dL/dx + i dL/dy. Values and gradients against torch, central finite differences on
the real and imaginary parts, dtype promotion with complex operands, and the error cases."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(1)


def _c(shape, dtype=np.complex128):
    return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dtype)


def _r(shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def _lib_loss(y, w, lib):
    """A real loss of y with weights w (complex y: both parts weighted)."""
    if lib is torch:
        y = y.resolve_conj()
        if y.is_complex():
            return (torch.view_as_real(y) * torch.tensor(w)).sum()
        return (y * torch.tensor(w[..., 0])).sum()
    if y.dtype.kind == "c":
        return (ng.view_as_real(y) * ng.tensor(w)).sum()
    return (y * ng.tensor(w[..., 0])).sum()


def check_torch(f_ng, f_t, *xs, tol=1e-10):
    """Values, dtypes and gradients (for every input) of f_ng against f_t on the same data."""
    ins_n = [ng.tensor(x, requires_grad=True) for x in xs]
    ins_t = [torch.tensor(x, requires_grad=True) for x in xs]
    yn = f_ng(*ins_n)
    yt = f_t(*ins_t).resolve_conj()
    assert str(yn.dtype) == str(yt.dtype).replace("torch.", "")
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=tol, atol=tol)
    real_dt = np.float32 if yn.dtype in (np.float32, np.complex64) else np.float64
    w = RNG.standard_normal(tuple(yt.shape) + (2,)).astype(real_dt)
    _lib_loss(yn, w, ng).backward()
    _lib_loss(yt, w, torch).backward()
    for a, b in zip(ins_n, ins_t):
        assert a.grad.dtype == a.dtype
        np.testing.assert_allclose(a.grad.numpy(), b.grad.resolve_conj().numpy(), rtol=tol,
                                   atol=tol)


def _put(z):
    y = z * 1
    y[1:, :2] = z[:2, 2:] ** 2
    return y * z


UNARY = {
    "negative": (lambda z: -z, lambda z: -z),
    "conj": (ng.conj, torch.conj),
    "conj_physical": (ng.conj_physical, torch.conj_physical),
    "real": (ng.real, torch.real),
    "imag": (ng.imag, torch.imag),
    "real_attr": (lambda z: z.real, lambda z: z.real),
    "imag_attr": (lambda z: z.imag, lambda z: z.imag),
    "abs": (ng.abs, torch.abs),
    "angle": (ng.angle, torch.angle),
    "exp": (ng.exp, torch.exp),
    "log": (ng.log, torch.log),
    "sqrt": (ng.sqrt, torch.sqrt),
    "square": (ng.square, torch.square),
    "reciprocal": (ng.reciprocal, torch.reciprocal),
    "sin": (ng.sin, torch.sin),
    "cos": (ng.cos, torch.cos),
    "tanh": (ng.tanh, torch.tanh),
    "pow_int": (lambda z: z ** 3, lambda z: z ** 3),
    "pow_float": (lambda z: z ** 2.5, lambda z: z ** 2.5),
    "pow_complex_scalar": (lambda z: z ** (0.5 + 1j), lambda z: z ** (0.5 + 1j)),
    "sum": (lambda z: z.sum(), lambda z: z.sum()),
    "sum_axis": (lambda z: z.sum(0), lambda z: z.sum(0)),
    "mean": (lambda z: z.mean(1), lambda z: z.mean(1)),
    "reshape": (lambda z: z.reshape(2, 6), lambda z: z.reshape(2, 6)),
    "transpose": (lambda z: z.T * 1j, lambda z: z.T * 1j),
    "index": (lambda z: z[1:, ::2] * z[0, 1], lambda z: z[1:, ::2] * z[0, 1]),
    "fancy_index": (lambda z: z[[0, 2, 2], 1:], lambda z: z[[0, 2, 2], 1:]),
    "view_as_real": (ng.view_as_real, torch.view_as_real),
    "mH": (lambda z: z.mH @ z, lambda z: z.mH @ z),
    "abs_squared": (lambda z: z * z.conj(), lambda z: z * z.conj()),
    "flip_roll": (lambda z: ng.flip(z, 0) * ng.roll(z, 1, 1), lambda z: torch.flip(z, [0])
                  * torch.roll(z, 1, 1)),
    "cumsum": (lambda z: ng.cumsum(z, 1) * z, lambda z: torch.cumsum(z, 1) * z),
    "expand": (lambda z: z[:1].expand(3, 4) * z, lambda z: z[:1].expand(3, 4) * z),
    "setitem": (_put, _put),
    "var": (lambda z: z.var(dim=1), lambda z: z.var(dim=1)),  # real: |z - mean|^2
    "std": (lambda z: z.std(dim=0), lambda z: z.std(dim=0)),
    "exp_sum_chain": (lambda z: (z.exp() * z).sum(1) / z[:, 0],
                      lambda z: (z.exp() * z).sum(1) / z[:, 0]),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_matches_torch(name):
    f_ng, f_t = UNARY[name]
    check_torch(f_ng, f_t, _c((3, 4)))


BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "subtract": (lambda a, b: a - b, lambda a, b: a - b),
    "multiply": (lambda a, b: a * b, lambda a, b: a * b),
    "divide": (lambda a, b: a / b, lambda a, b: a / b),
    "power": (lambda a, b: a ** b, lambda a, b: a ** b),
    "broadcast_mul": (lambda a, b: a * b[:1], lambda a, b: a * b[:1]),
    "matmul": (lambda a, b: a @ b.T, lambda a, b: a @ b.T),
    "einsum": (lambda a, b: ng.einsum("ij,kj->ik", a, b),
               lambda a, b: torch.einsum("ij,kj->ik", a, b)),
    "dot": (lambda a, b: ng.dot(a[0], b[1]), lambda a, b: torch.dot(a[0], b[1])),
    "vdot": (lambda a, b: ng.vdot(a[0], b[1]), lambda a, b: torch.vdot(a[0], b[1])),
    "cat": (lambda a, b: ng.cat([a, b * 2], 1), lambda a, b: torch.cat([a, b * 2], 1)),
    "stack": (lambda a, b: ng.stack([a, b], 0), lambda a, b: torch.stack([a, b], 0)),
    "where": (lambda a, b: ng.where(a.real > 0, a, b), lambda a, b: torch.where(a.real > 0, a, b)),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_matches_torch(name):
    f_ng, f_t = BINARY[name]
    check_torch(f_ng, f_t, _c((3, 4)), _c((3, 4)))


MIXED = {
    "mul": (lambda x, z: x * z, lambda x, z: x * z),
    "add": (lambda x, z: z + x, lambda x, z: z + x),
    "div": (lambda x, z: x / z, lambda x, z: x / z),
    "complex_scalar": (lambda x, z: x * (2 - 1j) + z, lambda x, z: x * (2 - 1j) + z),
    "complex": (lambda x, z: ng.complex(x, z.imag), lambda x, z: torch.complex(x, z.imag)),
    "polar": (lambda x, z: ng.polar(x.abs() + 0.1, z.real),
              lambda x, z: torch.polar(x.abs() + 0.1, z.real)),
    "view_as_complex": (lambda x, z: ng.view_as_complex(ng.stack([x, z.imag], -1)) * z,
                        lambda x, z: torch.view_as_complex(torch.stack([x, z.imag], -1)) * z),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_real_and_complex_inputs_match_torch(name):
    """A real input that meets complex numbers gets the real part of the gradient."""
    f_ng, f_t = MIXED[name]
    check_torch(f_ng, f_t, _r((3, 4)), _c((3, 4)))


def test_single_precision_kept():
    check_torch(lambda a, b: (a * b).exp() / b, lambda a, b: (a * b).exp() / b,
                _c((3,), np.complex64), _c((3,), np.complex64), tol=2e-5)
    check_torch(lambda x, z: x * z, lambda x, z: x * z, _r((3,), np.float32),
                _c((3,), np.complex64), tol=2e-5)
    check_torch(lambda z: z.abs(), lambda z: z.abs(), _c((3,), np.complex64), tol=2e-6)


def _fd_check(f, *xs, eps=1e-6):
    """Each input's gradient of the real scalar f against central differences on the real and
    the imaginary part of every element, separately."""
    ts = [ng.tensor(x, requires_grad=True) for x in xs]
    f(*ts).backward()
    for i, x in enumerate(xs):
        flat = x.reshape(-1)
        num = np.zeros(flat.shape, dtype=x.dtype)
        steps = (1.0, 1j) if x.dtype.kind == "c" else (1.0,)
        for k in range(flat.size):
            for step in steps:
                vals = []
                for sgn in (1, -1):
                    p = flat.copy()
                    p[k] += sgn * eps * step
                    args = [ng.tensor(p.reshape(x.shape)) if j == i else ng.tensor(y)
                            for j, y in enumerate(xs)]
                    vals.append(f(*args).item())
                num[k] += (vals[0] - vals[1]) / (2 * eps) * step
        g = ts[i].grad.numpy().reshape(-1)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(g).max()))


@pytest.mark.parametrize("f", [
    lambda z, w: (z * w).abs().sum(),
    lambda z, w: (z / w).angle().sum(),
    lambda z, w: ng.log(z * z + w).imag.sum(),
    lambda z, w: (ng.sqrt(z) ** w).real.sum(),
    lambda z, w: ((z @ w.T * 0.3).exp() * 0.1).abs().pow(2).sum(),
    lambda z, w: ng.view_as_real(ng.polar(z.abs(), w.real)).sum(),
], ids=["abs_mul", "angle_div", "log_imag", "sqrt_pow_real", "matmul_exp_abs2", "polar"])
def test_gradients_by_finite_differences(f):
    _fd_check(f, _c((2, 3)), _c((2, 3)))


def test_second_order_matches_torch():
    z = _c((4,))
    zn = ng.tensor(z, requires_grad=True)
    zt = torch.tensor(z, requires_grad=True)
    (gn,) = ng.autograd.grad((zn * zn.exp()).abs().sum(), zn, create_graph=True)
    (gt,) = torch.autograd.grad((zt * zt.exp()).abs().sum(), zt, create_graph=True)
    np.testing.assert_allclose(gn.numpy(), gt.detach().numpy(), rtol=1e-10)
    gn.abs().sum().backward()
    gt.abs().sum().backward()
    np.testing.assert_allclose(zn.grad.numpy(), zt.grad.numpy(), rtol=1e-9)


def test_complex_requires_grad_and_backward_rules():
    z = ng.tensor(_c((3,)), requires_grad=True)
    assert z.requires_grad
    ng.zeros(2, dtype=np.complex64).requires_grad_()
    with pytest.raises(ng.GradError, match="only for real scalar outputs"):
        (z * z).sum().backward()
    with pytest.raises(ng.GradError, match="explicitly"):
        (z * z).backward()
    with pytest.raises(ng.GradError, match="floating and complex"):
        ng.tensor([1, 2], requires_grad=True)
    # an explicit complex cotangent is PyTorch's vector-Jacobian product
    v = _c((3,))
    (z * z).backward(ng.tensor(v))
    np.testing.assert_allclose(z.grad.numpy(), v * np.conj(2 * z.detach().numpy()))


def test_unchecked_op_refuses_a_complex_gradient():
    z = ng.tensor(_c((3,)), requires_grad=True)
    with pytest.raises(ng.GradError, match="sinc"):
        ng.sinc(z).abs().sum().backward()
    with pytest.raises(ng.DTypeError, match="maximum: complex tensors have no order"):
        ng.maximum(z, z * 2)  # an op that needs an order refuses complex forward (PyTorch's)


def test_promotion_with_complex():
    f32, f64 = ng.ones(2), ng.ones(2, dtype=ng.float64)
    c64 = ng.ones(2, dtype=np.complex64)
    assert (f32 * 1j).dtype == np.complex64
    assert (f64 * 1j).dtype == np.complex128
    assert (ng.arange(3) * 1j).dtype == np.complex64
    assert (f32 * c64).dtype == np.complex64
    assert (c64 * 2.0).dtype == np.complex64
    assert (f32 * ng.tensor(1j, dtype=np.complex128)).dtype == np.complex64
    assert (c64 * np.complex128(2j)).dtype == np.complex64
    with pytest.raises(ng.DTypeError, match="mixed precisions"):
        f64 * c64
    assert ng.abs(ng.tensor(_c((2,)))).dtype == np.float64  # was float32
    assert ng.abs(ng.tensor(_c((2,), np.complex64))).dtype == np.float32


def test_complex_and_view_errors():
    with pytest.raises(ng.DTypeError, match="same dtype"):
        ng.complex(ng.ones(2), ng.ones(2, dtype=ng.float64))
    with pytest.raises(ng.DTypeError, match="float32 or float64"):
        ng.complex(ng.tensor([1, 2]), ng.tensor([1, 2]))
    with pytest.raises(ng.ShapeError, match="size 2"):
        ng.view_as_complex(ng.ones(3))
    with pytest.raises(ng.DTypeError, match="complex tensor"):
        ng.view_as_real(ng.ones(3))
    with pytest.raises(ng.DTypeError, match="non-complex"):
        ng.ones(2).imag
    assert ng.complex(ng.ones(2), ng.ones(2)).dtype == np.complex64


def test_real_results_bit_identical():
    """Real-valued ops keep exactly the arrays their rules computed before complex support."""
    x, y = np.abs(_r((5,))) + 0.1, _r((5,))
    cases = [
        (lambda a, b: a * b, y, x),
        (lambda a, b: a / b, 1 / y, -1 * ((x / y) / y)),
        (lambda a, b: (-a).abs() + b.exp(), -1 * np.sign(-x), np.exp(y)),
        (lambda a, b: a.sqrt() + b, 1 / (np.sqrt(x) * 2), np.ones(5)),
    ]
    for f, gx, gy in cases:
        xt, yt = ng.tensor(x, requires_grad=True), ng.tensor(y, requires_grad=True)
        f(xt, yt).backward(ng.ones(5, dtype=ng.float64))
        assert np.array_equal(xt.grad.numpy(), gx)
        assert np.array_equal(yt.grad.numpy(), gy)
    a = ng.tensor(_r((3, 4), np.float32), requires_grad=True)
    b = ng.tensor(_r((4, 2), np.float32), requires_grad=True)
    g = _r((3, 2), np.float32)
    (a @ b).backward(ng.tensor(g))
    assert a.grad.dtype == np.float32
    assert np.array_equal(a.grad.numpy(), g @ b.detach().numpy().T)
    assert np.array_equal(b.grad.numpy(), a.detach().numpy().T @ g)


def test_anomaly_mode_sees_complex_infinities():
    z = ng.tensor(np.array([0j, 1 + 1j]), requires_grad=True)
    with pytest.raises(ng.AnomalyError, match="forward of 'log'"):
        with ng.detect_anomaly(), np.errstate(divide="ignore"):
            ng.log(z)


def test_pytorch_complex_dtype_names_and_casts():
    assert ng.complex64 == np.complex64 and ng.cfloat == ng.complex64
    assert ng.complex128 == np.complex128 and ng.cdouble == ng.complex128
    x = ng.tensor([1.0, -2.0])
    assert x.cfloat().dtype == np.complex64 and x.cdouble().dtype == np.complex128
    assert ng.zeros(2, dtype=ng.cdouble).dtype == np.complex128
    with pytest.raises(ng.DTypeError, match="complex64 and float64"):
        ng.ones(2, dtype=ng.complex64) * ng.ones(2, dtype=ng.float64)


def test_sigmoid_of_complex_values_and_gradients_match_torch():
    torch = pytest.importorskip("torch")
    z = np.array([1 + 1j, -0.5 + 2j, 0.25 - 0.75j])
    a = ng.tensor(z, requires_grad=True)
    t = torch.tensor(z, requires_grad=True)
    np.testing.assert_allclose(ng.sigmoid(a).numpy(), torch.sigmoid(t).detach().numpy(),
                               rtol=1e-12)
    ng.sigmoid(a).abs().sum().backward()
    torch.sigmoid(t).abs().sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-10)


def test_float_power_of_complex_works_in_complex128_with_gradients_as_torch():
    torch = pytest.importorskip("torch")
    z = np.array([1 + 1j, 2 - 1j])
    a, t = ng.tensor(z, requires_grad=True), torch.tensor(z, requires_grad=True)
    ng.float_power(a, 2.5).abs().sum().backward()
    torch.float_power(t, 2.5).abs().sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-12)
    x = np.array([2.0, 3.0])
    b, u = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ng.float_power(b, 1j).real.sum().backward()
    torch.float_power(u, 1j).real.sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), u.grad.numpy(), rtol=1e-12)


def test_pairwise_distance_of_complex_is_a_real_norm_as_torch():
    torch = pytest.importorskip("torch")
    a, b = np.array([[1 + 1j, 2], [0.5j, -1]]), np.array([[0, 1j], [1, 1 + 1j]])
    x, tx = ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    got = ng.nn.functional.pairwise_distance(x, ng.tensor(b))
    want = torch.nn.functional.pairwise_distance(tx, torch.tensor(b))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12)
    got.sum().backward()
    want.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-10)
