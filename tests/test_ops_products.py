"""PyTorch's matrix-product family, the linear-algebra Tensor methods and the numerical
calculus/statistics ops (nodegrad/ops/products.py) against PyTorch: values, dtypes, first and
second derivatives, finite differences, jit and vmap, and the errors that name the op."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError, ShapeError
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")

TOL = {np.float32: {"atol": 2e-4, "rtol": 2e-3}, np.float64: {"atol": 1e-10, "rtol": 1e-8}}


def _r(*shape, seed=0):
    return np.random.default_rng(seed + 7 * len(shape) + sum(shape)).standard_normal(shape)


def _spd(n=3, seed=0):
    a = _r(n, n, seed=seed)
    return a @ a.T + n * np.eye(n)


def _chol(n=3, seed=0):
    return np.linalg.cholesky(_spd(n, seed))


def _upper(n=3, seed=0):
    return np.triu(_r(n, n, seed=seed)) + 3 * np.eye(n)


COORDS = np.array([0.0, 0.4, 1.3, 1.7, 2.9])  # nonuniform sample points
POS = np.random.default_rng(5).uniform(0.5, 2.0, 6)  # positive weights


def compare(f, tf, *arrays, dtype=np.float64, grad=True, **tol):
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    compare_with_torch(f, tf, *arrays, grad=grad, **(tol or TOL[dtype]))


# (id, nodegrad function, torch function, inputs); every floating input is differentiated.
CASES = [
    ("t", ng.t, torch.t, [_r(2, 3)]),
    ("t_vector_method", lambda x: x.t() * 2, lambda x: x.t() * 2, [_r(3)]),
    ("mm", ng.mm, torch.mm, [_r(2, 3), _r(3, 4)]),
    ("mm_method", lambda a, b: a.mm(b), lambda a, b: a.mm(b), [_r(1, 3), _r(3, 2)]),
    ("bmm", ng.bmm, torch.bmm, [_r(2, 2, 3), _r(2, 3, 4)]),
    ("mv", ng.mv, torch.mv, [_r(2, 3), _r(3)]),
    ("dot", ng.dot, torch.dot, [_r(4), _r(4, seed=1)]),
    ("vdot_method", lambda a, b: a.vdot(b), lambda a, b: a.vdot(b), [_r(4), _r(4, seed=1)]),
    ("inner", ng.inner, torch.inner, [_r(2, 3), _r(4, 2, 3)]),
    ("inner_scalar", ng.inner, torch.inner, [_r(), _r(4, 3)]),
    ("ger", ng.ger, torch.ger, [_r(2), _r(3)]),
    ("outer_method", lambda a, b: a.outer(b), lambda a, b: a.outer(b), [_r(2), _r(3)]),
    ("addmm", lambda a, b, c: ng.addmm(a, b, c, beta=0.5, alpha=-2),
     lambda a, b, c: torch.addmm(a, b, c, beta=0.5, alpha=-2), [_r(3), _r(2, 3), _r(3, 3)]),
    ("addmm_method", lambda a, b, c: a.addmm(b, c), lambda a, b, c: a.addmm(b, c),
     [_r(2, 3), _r(2, 4), _r(4, 3)]),
    ("addmv", lambda a, b, c: ng.addmv(a, b, c, beta=0.5, alpha=2),
     lambda a, b, c: torch.addmv(a, b, c, beta=0.5, alpha=2), [_r(2), _r(2, 3), _r(3)]),
    ("addbmm", lambda a, b, c: ng.addbmm(a, b, c, beta=0.5, alpha=2),
     lambda a, b, c: torch.addbmm(a, b, c, beta=0.5, alpha=2), [_r(2, 4), _r(3, 2, 3),
                                                                _r(3, 3, 4)]),
    ("baddbmm", lambda a, b, c: a.baddbmm(b, c, beta=1.5, alpha=0.5),
     lambda a, b, c: a.baddbmm(b, c, beta=1.5, alpha=0.5), [_r(1, 4), _r(3, 2, 3),
                                                           _r(3, 3, 4)]),
    ("addr", lambda a, b, c: ng.addr(a, b, c, beta=0.5, alpha=2),
     lambda a, b, c: torch.addr(a, b, c, beta=0.5, alpha=2), [_r(2, 3), _r(2), _r(3)]),
    ("addcmul", lambda a, b, c: ng.addcmul(a, b, c, value=0.3),
     lambda a, b, c: torch.addcmul(a, b, c, value=0.3), [_r(2, 3), _r(3), _r(2, 1)]),
    ("addcdiv", lambda a, b, c: a.addcdiv(b, c, value=-0.7),
     lambda a, b, c: a.addcdiv(b, c, value=-0.7), [_r(2, 3), _r(3), _r(2, 1) + 3]),
    ("kron", ng.kron, torch.kron, [_r(2, 3), _r(4)]),
    ("kron_3d", lambda a, b: a.kron(b), lambda a, b: a.kron(b), [_r(2, 3, 1), _r(2, 2)]),
    ("chain_matmul", lambda a, b, c: ng.chain_matmul(a, b, c),
     lambda a, b, c: torch.linalg.multi_dot([a, b, c]), [_r(2, 3), _r(3, 4), _r(4, 1)]),
    ("tensordot_lists", lambda a, b: ng.tensordot(a, b, dims=([1, 0], [0, 2])),
     lambda a, b: torch.tensordot(a, b, dims=([1, 0], [0, 2])), [_r(2, 3, 4), _r(3, 5, 2)]),
    ("tensordot_int", ng.tensordot, torch.tensordot, [_r(2, 3, 4), _r(3, 4, 2)]),
    ("tensordot_0", lambda a, b: ng.tensordot(a, b, 0), lambda a, b: torch.tensordot(a, b, 0),
     [_r(2, 3), _r(2)]),
    ("det", ng.det, torch.det, [_r(2, 3, 3)]),
    ("logdet", lambda a: a.logdet(), lambda a: a.logdet(), [_spd()]),
    ("slogdet", lambda a: ng.slogdet(a).logabsdet, lambda a: torch.slogdet(a).logabsdet,
     [_r(3, 3)]),
    ("inverse", lambda a: a.inverse(), lambda a: a.inverse(), [_spd()]),
    ("pinverse", ng.pinverse, torch.pinverse, [_r(3, 2)]),
    ("matrix_power", lambda a: a.matrix_power(3), lambda a: a.matrix_power(3), [_r(3, 3) / 2]),
    ("matrix_power_neg", lambda a: ng.matrix_power(a, -2), lambda a: torch.matrix_power(a, -2),
     [_spd()]),
    ("matrix_exp", lambda a: a.matrix_exp(), lambda a: a.matrix_exp(), [_r(3, 3)]),
    ("cholesky", lambda a: a.cholesky(), lambda a: a.cholesky(), [_spd()]),
    ("cholesky_upper", lambda a: ng.cholesky(a, upper=True),
     lambda a: torch.cholesky(a, upper=True), [_spd()]),
    # torch's backward gives the factor's unread triangle a gradient; compared through tril/triu
    ("cholesky_solve", lambda b, f: b.cholesky_solve(f.tril()),
     lambda b, f: b.cholesky_solve(f.tril()), [_r(3, 2), _chol()]),
    ("cholesky_solve_upper", lambda b, f: ng.cholesky_solve(b, f.triu(), True),
     lambda b, f: torch.cholesky_solve(b, f.triu(), True), [_r(2, 3, 2), _chol().T]),
    ("cholesky_inverse", lambda f: f.tril().cholesky_inverse(),
     lambda f: f.tril().cholesky_inverse(), [_chol()]),
    ("cholesky_inverse_upper", lambda f: ng.cholesky_inverse(f.triu(), upper=True),
     lambda f: torch.cholesky_inverse(f.triu(), upper=True), [_chol().T]),
    ("qr", lambda a: ng.qr(a).Q * 1 + ng.qr(a).R.sum(),
     lambda a: torch.qr(a).Q * 1 + torch.qr(a).R.sum(), [_r(4, 3)]),
    ("svd_S", lambda a: a.svd().S, lambda a: a.svd().S, [_r(4, 3)]),
    ("svd_UV", lambda a: (lambda u, s, v: u @ v.T * s.sum())(*ng.svd(a)),
     lambda a: (lambda u, s, v: u @ v.T * s.sum())(*torch.svd(a)), [_r(4, 3)]),
    ("svd_V_wide", lambda a: (lambda u, s, v: v * v.sum(0))(*ng.svd(a)),
     lambda a: (lambda u, s, v: v * v.sum(0))(*torch.svd(a)), [_r(2, 3)]),
    ("triangular_solve", lambda b, a: ng.triangular_solve(b, a).solution,
     lambda b, a: torch.triangular_solve(b, a).solution, [_r(3, 2), _upper()]),
    ("triangular_solve_method", lambda b, a: b.triangular_solve(a, False, True, True)[0],
     lambda b, a: b.triangular_solve(a, False, True, True)[0], [_r(2, 3, 2), _r(3, 3)]),
    ("cross_default_dim", ng.cross, torch.cross, [_r(3, 4), _r(3, 4, seed=1)]),
    ("cross_method", lambda a, b: a.cross(b, dim=-1), lambda a, b: a.cross(b, dim=-1),
     [_r(4, 3), _r(1, 3)]),
    ("diff", lambda a, p, q: ng.diff(a, 2, 0, prepend=p, append=q),
     lambda a, p, q: torch.diff(a, 2, 0, prepend=p, append=q), [_r(4, 3), _r(2, 3), _r(1, 3)]),
    ("diff_method", lambda a: a.diff(), lambda a: a.diff(), [_r(2, 5)]),
    ("gradient", lambda a: ng.gradient(a)[1] * ng.gradient(a)[0],
     lambda a: torch.gradient(a)[1] * torch.gradient(a)[0], [_r(4, 5)]),
    ("gradient_edge2", lambda a: ng.gradient(a, spacing=0.5, dim=0, edge_order=2)[0],
     lambda a: torch.gradient(a, spacing=0.5, dim=0, edge_order=2)[0], [_r(4, 5)]),
    ("gradient_spacings", lambda a: ng.gradient(a, spacing=[2.0, 0.5])[0],
     lambda a: torch.gradient(a, spacing=[2.0, 0.5])[0], [_r(3, 5)]),
    ("gradient_coords", lambda a, c: ng.gradient(a, spacing=[c], dim=1)[0],
     lambda a, c: torch.gradient(a, spacing=[c], dim=1)[0], [_r(4, 5), COORDS]),
    ("gradient_coords_edge2", lambda a, c: ng.gradient(a, spacing=(c,), dim=-1,
                                                       edge_order=2)[0],
     lambda a, c: torch.gradient(a, spacing=(c,), dim=-1, edge_order=2)[0], [_r(5), COORDS]),
    ("trapezoid_dx", lambda y: ng.trapezoid(y, dx=0.3), lambda y: torch.trapezoid(y, dx=0.3),
     [_r(4, 5)]),
    ("trapezoid_x", lambda y, x: ng.trapezoid(y, x, dim=0),
     lambda y, x: torch.trapezoid(y, x, dim=0), [_r(5, 4), COORDS]),
    ("trapezoid_x_2d", ng.trapezoid, torch.trapezoid, [_r(3, 5), np.sort(_r(3, 5), axis=1)]),
    ("trapz", lambda y, x: ng.trapz(y, x), lambda y, x: torch.trapz(y, x), [_r(2, 5), COORDS]),
    ("cumulative_trapezoid_x", ng.cumulative_trapezoid, torch.cumulative_trapezoid,
     [_r(4, 5), COORDS]),
    ("cumulative_trapezoid_dx", lambda y: ng.cumulative_trapezoid(y, dx=2, dim=0),
     lambda y: torch.cumulative_trapezoid(y, dx=2, dim=0), [_r(4, 5)]),
    ("cov", ng.cov, torch.cov, [_r(3, 6)]),
    ("cov_method_correction0", lambda x: x.cov(correction=0),
     lambda x: x.cov(correction=0), [_r(2, 6)]),
    ("cov_weights", lambda x, w: ng.cov(x, fweights=ng.tensor([1, 2, 1, 3, 1, 1]), aweights=w),
     lambda x, w: torch.cov(x, fweights=torch.tensor([1, 2, 1, 3, 1, 1]), aweights=w),
     [_r(3, 6), POS]),
    ("cov_aweights_1d", lambda x, w: ng.cov(x, aweights=w, correction=2),
     lambda x, w: torch.cov(x, aweights=w, correction=2), [_r(6), POS]),
    ("corrcoef", lambda x: x.corrcoef(), lambda x: x.corrcoef(), [_r(3, 6)]),
    ("dist", lambda a, b: ng.dist(a, b, 3), lambda a, b: torch.dist(a, b, 3), [_r(3, 6), _r(6)]),
    ("dist_method_inf", lambda a, b: a.dist(b, float("inf")),
     lambda a, b: a.dist(b, float("inf")), [_r(3, 2), _r(3, 2, seed=1)]),
    ("cdist", ng.cdist, torch.cdist, [_r(3, 6), _r(2, 6)]),
    ("renorm", lambda a: ng.renorm(a, 2, 0, 1.5), lambda a: torch.renorm(a, 2, 0, 1.5),
     [_r(4, 3)]),
    ("renorm_method_p1", lambda a: a.renorm(1, -1, 2.0), lambda a: a.renorm(1, -1, 2.0),
     [_r(2, 3, 4)]),
    ("frobenius_norm", lambda a: ng.frobenius_norm(a, (0, 1)),
     lambda a: torch.frobenius_norm(a, (0, 1)), [_r(3, 4)]),
    ("nuclear_norm", ng.nuclear_norm, torch.nuclear_norm, [_r(3, 4)]),
    ("nuclear_norm_dims", lambda a: ng.nuclear_norm(a, (0, 2), True),
     lambda a: torch.nuclear_norm(a, (0, 2), True), [_r(3, 2, 4)]),
]


@pytest.mark.parametrize("name,f,tf,arrays", CASES, ids=[c[0] for c in CASES])
def test_values_dtypes_and_gradients_match_torch(name, f, tf, arrays, float_dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's deprecation notes
        compare(f, tf, *arrays, dtype=float_dtype)


def test_vander_matches_torch_values_and_finite_differences(float_dtype):
    x = np.array([0.5, -1.2, 2.0, 0.0])
    for kw in ({}, {"N": 3}, {"N": 5, "increasing": True}, {"N": 1}, {"N": 0}):
        compare(lambda t: ng.vander(t, **kw), lambda t: torch.vander(t, **kw), x,  # noqa: B023
                dtype=float_dtype, grad=False)
    ng.gradcheck(lambda t: ng.vander(t, 4), x, order=2)  # torch's vander has no backward
    assert ng.vander(ng.tensor([1, 2, 3])).dtype == ng.int64
    assert ng.vander(ng.tensor([True, False])).dtype == ng.int64
    np.testing.assert_array_equal(ng.vander(ng.tensor([1, 2, 3]), 3).numpy(),
                                  torch.vander(torch.tensor([1, 2, 3]), 3).numpy())


# --- second derivatives: grad of grad against torch's create_graph --------------------------
def _second(f, tf, x, *consts):
    """The gradient and a Hessian-vector product of sum(f(x, *consts)) in both libraries."""
    v = np.linspace(-1, 1, x.size).reshape(x.shape)
    cs = [ng.tensor(c) for c in consts]
    tcs = [torch.tensor(c) for c in consts]

    def first(a):
        return ng.grad(lambda b: f(b, *cs).sum())(a)

    gx = first(ng.tensor(x))
    hx = ng.grad(lambda a: (first(a) * ng.tensor(v)).sum())(ng.tensor(x))
    tt = torch.tensor(x, requires_grad=True)
    (tg,) = torch.autograd.grad(tf(tt, *tcs).sum(), tt, create_graph=True)
    (th,) = torch.autograd.grad((tg * torch.tensor(v)).sum(), tt)
    return gx.numpy(), tg.detach().numpy(), hx.numpy(), th.numpy()


SECOND = [
    ("mm", lambda a, b: ng.mm(a * a, b), lambda a, b: torch.mm(a * a, b), _r(2, 3), _r(3, 2)),
    ("addmm", lambda a, b: ng.addmm(a.sum(0), a, a.t() @ b, alpha=2),
     lambda a, b: torch.addmm(a.sum(0), a, a.t() @ b, alpha=2), _r(3, 3), _r(3, 3)),
    ("baddbmm", lambda a, b: ng.baddbmm(a, a, b * a), lambda a, b: torch.baddbmm(a, a, b * a),
     _r(2, 3, 3), _r(2, 3, 3)),
    ("kron", lambda a: ng.kron(a, a), lambda a: torch.kron(a, a), _r(2, 3)),
    ("tensordot", lambda a, b: ng.tensordot(a * a, b, ([0], [1])),
     lambda a, b: torch.tensordot(a * a, b, ([0], [1])), _r(3, 2), _r(2, 3)),
    ("logdet", lambda a: ng.logdet(a @ a.t() + 3 * ng.eye(3, dtype=ng.float64)),
     lambda a: torch.logdet(a @ a.t() + 3 * torch.eye(3, dtype=torch.float64)), _r(3, 3)),
    ("cholesky_inverse",
     lambda a: ng.cholesky_inverse(ng.cholesky(a @ a.t() + 3 * ng.eye(3, dtype=ng.float64))),
     lambda a: torch.cholesky_inverse(torch.cholesky(a @ a.t() + 3 * torch.eye(
         3, dtype=torch.float64))), _r(3, 3)),
    ("cov", lambda x, w: ng.cov(x, aweights=w), lambda x, w: torch.cov(x, aweights=w),
     _r(3, 6), POS),
    ("corrcoef", ng.corrcoef, torch.corrcoef, _r(3, 6)),
    ("dist", lambda a, b: ng.dist(a, b, 3), lambda a, b: torch.dist(a, b, 3), _r(3, 4),
     _r(4)),
    ("renorm", lambda a: ng.renorm(a, 3, 1, 1.0), lambda a: torch.renorm(a, 3, 1, 1.0),
     _r(3, 4)),
    ("gradient_coords", lambda y, c: ng.gradient(y * y, spacing=[c], edge_order=2)[0],
     lambda y, c: torch.gradient(y * y, spacing=[c], edge_order=2)[0], _r(5), COORDS),
    ("trapezoid_in_x", lambda x, y: ng.trapezoid(y, x * x), lambda x, y: torch.trapezoid(
        y, x * x), COORDS, _r(5)),
    ("cumulative_trapezoid", lambda y: ng.cumulative_trapezoid(y * y, dx=0.5),
     lambda y: torch.cumulative_trapezoid(y * y, dx=0.5), _r(2, 5)),
    ("diff", lambda a: ng.diff(a * a, 2), lambda a: torch.diff(a * a, 2), _r(2, 5)),
    ("svd", lambda a: ng.svd(a).S, lambda a: torch.svd(a).S, _r(3, 2)),
]


@pytest.mark.parametrize("name,f,tf,x,consts", [(c[0], c[1], c[2], c[3], c[4:])
                                                 for c in SECOND], ids=[c[0] for c in SECOND])
def test_second_derivatives_match_torch(name, f, tf, x, consts):
    gx, tg, hx, th = _second(f, tf, x, *consts)
    np.testing.assert_allclose(gx, tg, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(hx, th, rtol=1e-8, atol=1e-9)


# --- central finite differences -------------------------------------------------------------
GRADCHECK = [
    ("tensordot", lambda a, b: ng.tensordot(a, b, ([0, 2], [2, 0])), _r(2, 3, 2),
     _r(2, 4, 2)),
    ("kron", ng.kron, _r(2, 2), _r(3)),
    ("addbmm", lambda a, b, c: ng.addbmm(a, b, c, beta=0.3, alpha=-1.5), _r(2, 2), _r(3, 2, 2),
     _r(3, 2, 2)),
    ("addcdiv", lambda a, b, c: ng.addcdiv(a, b, c, value=2), _r(3), _r(3), _r(3) + 4),
    ("cov_weights", lambda x, w: ng.cov(x, aweights=w), _r(2, 6), POS),
    ("corrcoef", ng.corrcoef, _r(3, 5)),
    ("gradient_coords", lambda y, c: ng.gradient(y, spacing=[c], edge_order=2)[0], _r(5),
     COORDS),
    ("trapezoid_x", lambda y, x: ng.trapezoid(y, x), _r(2, 5), COORDS),
    ("cumulative_trapezoid_x", lambda y, x: ng.cumulative_trapezoid(y, x), _r(2, 5), COORDS),
    ("renorm", lambda a: ng.renorm(a, 2, 0, 1.0), _r(3, 4) * 2),
    ("cholesky_inverse", lambda f: ng.cholesky_inverse(f), _chol()),
    ("logdet", ng.logdet, _spd()),
    ("svd_V", lambda a: ng.svd(a).V * ng.svd(a).V[0], _r(3, 3)),
    ("triangular_solve_T", lambda b, a: ng.triangular_solve(b, a, True, True)[0], _r(3, 2),
     _upper()),
    ("cross", lambda a, b: ng.cross(a, b), _r(3, 2), _r(3, 2, seed=1)),
]


@pytest.mark.parametrize("name,f,arrays", [(c[0], c[1], c[2:]) for c in GRADCHECK],
                         ids=[c[0] for c in GRADCHECK])
def test_gradcheck_by_central_differences(name, f, arrays):
    assert ng.gradcheck(f, *arrays)


def test_gradcheck_detects_a_wrong_gradient():
    """The finite-difference check used above fails on a function whose gradient is wrong."""
    def bad(a):
        return ng.mm(a, a.detach())  # value a @ a, gradient missing the second factor

    with pytest.raises(AssertionError):
        ng.gradcheck(bad, _r(2, 2))


# --- float32 stays float32 ------------------------------------------------------------------
F32 = [
    lambda a, b: ng.mm(a, b), lambda a, b: ng.addmm(a, a, b, beta=0.5, alpha=2),
    lambda a, b: ng.tensordot(a, b, 1), lambda a, b: ng.kron(a, b),
    lambda a, b: ng.addcdiv(a, a, b * b + 1, value=0.5), lambda a, b: ng.inverse(a @ a.t() + 3),
    lambda a, b: ng.logdet(a @ a.t() + ng.eye(3)), lambda a, b: ng.cov(a),
    lambda a, b: ng.corrcoef(a * b), lambda a, b: ng.gradient(a, spacing=0.5)[0],
    lambda a, b: ng.trapezoid(a, dx=0.5), lambda a, b: ng.cumulative_trapezoid(a),
    lambda a, b: ng.renorm(a, 2, 0, 0.5), lambda a, b: ng.vander(a[0]),
    lambda a, b: ng.dist(a, b), lambda a, b: ng.svd(a).V, lambda a, b: ng.diff(a),
    lambda a, b: ng.cholesky_inverse(ng.cholesky(a @ a.t() + 3)),
]


@pytest.mark.parametrize("k", range(len(F32)))
def test_float32_inputs_give_float32_values_and_gradients(k):
    a = ng.tensor(_r(3, 3).astype(np.float32), requires_grad=True)
    b = ng.tensor(_r(3, 3, seed=1).astype(np.float32), requires_grad=True)
    out = F32[k](a, b)
    assert out.dtype == ng.float32
    out.sum().backward()
    assert a.grad.dtype == ng.float32


# --- PyTorch's special rules ----------------------------------------------------------------
def test_beta_zero_ignores_nan_and_inf_in_input():
    nan = float("nan")
    cases = [
        (ng.addmm, torch.addmm, np.full((2, 3), nan), _r(2, 4), _r(4, 3)),
        (ng.addmv, torch.addmv, np.full(2, np.inf), _r(2, 4), _r(4)),
        (ng.addbmm, torch.addbmm, np.full((2, 3), nan), _r(5, 2, 4), _r(5, 4, 3)),
        (ng.baddbmm, torch.baddbmm, np.full((5, 2, 3), nan), _r(5, 2, 4), _r(5, 4, 3)),
        (ng.addr, torch.addr, np.full((2, 3), nan), _r(2), _r(3)),
    ]
    for f, tf, *xs in cases:
        got = f(*[ng.tensor(x) for x in xs], beta=0, alpha=2).numpy()
        want = tf(*[torch.tensor(x) for x in xs], beta=0, alpha=2).numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # beta != 0 propagates, as in PyTorch
    assert np.isnan(ng.addmm(ng.tensor(np.full((2, 3), nan)), ng.tensor(_r(2, 4)),
                             ng.tensor(_r(4, 3)), beta=1e-3).numpy()).all()


def test_logdet_is_nan_for_negative_and_minus_inf_for_zero_determinants():
    for a in (np.diag([-1.0, 2.0, 3.0]), np.diag([0.0, 2.0, 3.0]), np.diag([-1.0, -2.0, 3.0])):
        got, want = ng.logdet(ng.tensor(a)).numpy(), torch.logdet(torch.tensor(a)).numpy()
        np.testing.assert_array_equal(got, want)
    assert np.isnan(float(ng.logdet(ng.tensor(np.diag([-1.0, 2.0])))))
    assert float(ng.logdet(ng.tensor(np.diag([0.0, 2.0])))) == -np.inf
    # the gradient at a negative determinant is 0, as torch's where
    a = ng.tensor(np.diag([-1.0, 2.0]), requires_grad=True)
    ng.logdet(a).backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.zeros((2, 2)))


def test_svd_returns_v_and_compute_uv_false_gives_zero_factors():
    a = _r(4, 3)
    u, s, v = ng.svd(ng.tensor(a))
    np.testing.assert_allclose((u.numpy() * s.numpy()) @ v.numpy().T, a, atol=1e-12)
    u, s, v = ng.tensor(a).svd(some=False)
    assert u.shape == (4, 4) and v.shape == (3, 3)
    np.testing.assert_allclose(u.numpy()[:, :3] * s.numpy() @ v.numpy().T, a, atol=1e-12)
    b = _r(2, 4, 3)
    got, want = ng.svd(ng.tensor(b), compute_uv=False), torch.svd(torch.tensor(b),
                                                                  compute_uv=False)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-12)
    assert not got.U.numpy().any() and not got.V.numpy().any()


def test_qr_some_false_is_complete():
    a = _r(4, 2)
    q, r = ng.tensor(a).qr(some=False)
    tq, tr = torch.qr(torch.tensor(a), some=False)
    assert q.shape == (4, 4) and r.shape == (4, 2) and tuple(tq.shape) == q.shape
    np.testing.assert_allclose(q.numpy() @ r.numpy(), a, atol=1e-12)
    np.testing.assert_allclose(np.abs(r.numpy()), np.abs(tr.numpy()), atol=1e-12)


def test_triangular_solve_returns_a_copy_of_the_coefficient_that_carries_gradient():
    b, a = _r(3, 2), _r(3, 3)
    compare(lambda b, a: (lambda x, m: x.sum() * m)(*ng.triangular_solve(b, a, False)),
            lambda b, a: (lambda x, m: x.sum() * m)(*torch.triangular_solve(b, a, False)),
            b, a)
    x, m = ng.triangular_solve(ng.tensor(b), ng.tensor(a))
    np.testing.assert_array_equal(m.numpy(), a)


def test_cross_default_dim_is_the_first_dim_of_length_3():
    a, b = _r(3, 3, 4), _r(3, 3, 4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want = torch.cross(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(ng.cross(ng.tensor(a), ng.tensor(b)).numpy(), want, atol=1e-12)
    np.testing.assert_allclose(ng.cross(ng.tensor(a), ng.tensor(b), dim=1).numpy(),
                               torch.cross(torch.tensor(a), torch.tensor(b), dim=1).numpy(),
                               atol=1e-12)


def test_diff_on_bools_and_past_the_length():
    x = np.array([True, False, False, True])
    np.testing.assert_array_equal(ng.diff(ng.tensor(x)).numpy(),
                                  torch.diff(torch.tensor(x)).numpy())
    assert ng.diff(ng.tensor(_r(3)), n=5).shape == (0,)
    assert ng.diff(ng.tensor(_r(3)), n=0).shape == (3,)
    xi = np.array([[1, 4, 9], [2, 2, 7]])
    np.testing.assert_array_equal(ng.diff(ng.tensor(xi), dim=0).numpy(),
                                  torch.diff(torch.tensor(xi), dim=0).numpy())


def test_gradient_of_integers_and_over_several_dims():
    x = np.array([1, 2, 4, 8])
    got, want = ng.gradient(ng.tensor(x)), torch.gradient(torch.tensor(x))
    assert len(got) == 1 and got[0].dtype == ng.float32
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy())
    a = _r(3, 4, 5)
    got = ng.gradient(ng.tensor(a), dim=[2, 0], spacing=[0.5, 2.0], edge_order=2)
    want = torch.gradient(torch.tensor(a), dim=[2, 0], spacing=[0.5, 2.0], edge_order=2)
    assert len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-12)
    quad = ng.tensor(COORDS ** 2)  # edge_order=2 is exact on a quadratic
    (d,) = ng.gradient(quad, spacing=[ng.tensor(COORDS)], edge_order=2)
    np.testing.assert_allclose(d.numpy(), 2 * COORDS, atol=1e-12)


def test_trapezoid_without_samples_is_zero_and_one_sample_is_empty():
    y = _r(2, 0)
    for f, tf in ((ng.trapezoid, torch.trapezoid),
                  (ng.cumulative_trapezoid, torch.cumulative_trapezoid)):
        got, want = f(ng.tensor(y)), tf(torch.tensor(y))
        assert got.shape == tuple(want.shape)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert ng.cumulative_trapezoid(ng.tensor(_r(3, 1))).shape == (3, 0)
    assert float(ng.trapezoid(ng.tensor([1.0, 3.0]), dx=2)) == 4.0


def test_cov_edge_cases_match_torch():
    x = _r(6)
    out = ng.cov(ng.tensor(x))
    assert out.shape == () and np.isclose(float(out), np.var(x, ddof=1))
    with pytest.warns(RuntimeWarning, match="degrees of freedom"):
        got = ng.cov(ng.tensor(np.array([1.0, 2.0])), correction=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.cov(torch.tensor([1.0, 2.0]), correction=2)
    assert float(got) == float(want) == np.inf
    xi = np.array([[1, 2, 4], [0, 1, 1]])
    got = ng.cov(ng.tensor(xi))
    assert got.dtype == ng.float32
    np.testing.assert_allclose(got.numpy(), torch.cov(torch.tensor(xi)).numpy(), rtol=1e-6)
    fw = np.array([1, 0, 2, 1, 3, 1])
    np.testing.assert_allclose(
        ng.cov(ng.tensor(_r(2, 6)), fweights=ng.tensor(fw)).numpy(),
        torch.cov(torch.tensor(_r(2, 6)), fweights=torch.tensor(fw)).numpy(), rtol=1e-12)
    assert np.isnan(float(ng.corrcoef(ng.tensor(np.ones(4)))))
    assert float(ng.corrcoef(ng.tensor(_r(4)))) == 1.0


def test_renorm_leaves_small_slices_and_scales_large_ones():
    a = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    got = ng.renorm(ng.tensor(a), 2, 0, 1.0).numpy()
    np.testing.assert_allclose(got, torch.renorm(torch.tensor(a), 2, 0, 1.0).numpy())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), [1.0, 0.5, 0.0], atol=1e-6)


def test_chain_matmul_of_one_matrix_is_a_copy():
    a = ng.tensor(_r(2, 3), requires_grad=True)
    out = ng.chain_matmul(a)
    np.testing.assert_array_equal(out.numpy(), a.numpy())
    (out * 2).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.full((2, 3), 2.0))


def test_methods_are_attached_with_torch_tensor_names():
    names = ["t", "mm", "bmm", "mv", "dot", "vdot", "inner", "outer", "ger", "addmm", "addmv",
             "addbmm", "baddbmm", "addr", "addcmul", "addcdiv", "kron", "det", "logdet",
             "slogdet", "inverse", "pinverse", "matrix_power", "matrix_exp", "cholesky",
             "cholesky_solve", "cholesky_inverse", "qr", "svd", "triangular_solve", "cross",
             "diff", "cov", "corrcoef", "dist", "renorm"]
    for n in names:
        assert hasattr(torch.Tensor, n), n
        assert callable(getattr(ng.Tensor, n, None)), n
    a = _spd()
    np.testing.assert_allclose(ng.tensor(a).det().numpy(), np.linalg.det(a))
    np.testing.assert_allclose(ng.tensor(a).pinverse().numpy(), np.linalg.pinv(a), atol=1e-12)


# --- jit and vmap ---------------------------------------------------------------------------
def _pos_grid(rows):
    return np.cumsum(np.random.default_rng(3).uniform(0.5, 1.0, (rows, 5)), axis=1)


TRACED = [
    ("mm", lambda a, b: ng.mm(a, b), _r(4, 2, 3), _r(4, 3, 2)),
    ("addmm", lambda a, b: ng.addmm(a.sum(0), a, b, beta=0.5, alpha=2), _r(4, 3, 3),
     _r(4, 3, 3)),
    ("bmm", lambda a, b: ng.bmm(a, b), _r(4, 2, 2, 3), _r(4, 2, 3, 2)),
    ("tensordot", lambda a, b: ng.tensordot(a, b, ([0], [1])), _r(4, 3, 2), _r(4, 2, 3)),
    ("kron", ng.kron, _r(4, 2, 3), _r(4, 2)),
    ("logdet", lambda a, b: ng.logdet(a @ a.t() + ng.eye(3, dtype=ng.float64)) * b.sum(),
     _r(4, 3, 3), _r(4, 2)),
    ("cov", lambda a, w: ng.cov(a, aweights=w), _r(4, 3, 5), np.abs(_r(4, 5)) + 0.5),
    ("corrcoef", lambda a, b: ng.corrcoef(a) * b.sum(), _r(4, 3, 5), _r(4, 2)),
    ("gradient", lambda a, c: ng.gradient(a, spacing=[c], dim=1, edge_order=2)[0],
     _r(4, 3, 5), _pos_grid(4)),
    ("trapezoid", ng.trapezoid, _r(4, 3, 5), _pos_grid(4)),
    ("cumulative_trapezoid", lambda a, b: ng.cumulative_trapezoid(a, dx=0.5) * b.sum(),
     _r(4, 3, 5), _r(4, 2)),
    ("renorm", lambda a, b: ng.renorm(a, 2, 1, 1.0) * b.sum(), _r(4, 3, 5), _r(4, 2)),
    ("diff", lambda a, b: ng.diff(a, 2, 0, append=b[None]), _r(4, 3, 2), _r(4, 2)),
    ("vander", lambda a, b: ng.vander(a, 4) * b.sum(), _r(4, 3), _r(4, 2)),
    ("svd", lambda a, b: ng.svd(a).V * b.sum(), _r(4, 3, 2), _r(4, 2)),
    ("cholesky_inverse", lambda a, b: ng.cholesky_inverse(
        ng.cholesky(a @ a.mT + ng.eye(3, dtype=ng.float64))) * b.sum(), _r(4, 3, 3), _r(4, 2)),
]


@pytest.mark.parametrize("name,f,xs,ys", TRACED, ids=[c[0] for c in TRACED])
def test_jit_and_vmap_give_eager_values(name, f, xs, ys):
    a, b = ng.tensor(xs), ng.tensor(ys)
    eager = np.stack([f(a[i], b[i]).numpy() for i in range(len(xs))])
    np.testing.assert_allclose(ng.vmap(f)(a, b).numpy(), eager, rtol=1e-10, atol=1e-12)
    jf = ng.jit(f)
    for i in range(len(xs)):
        np.testing.assert_allclose(jf(a[i], b[i]).numpy(), eager[i], rtol=1e-10, atol=1e-12)

    def g(x, y):
        return ng.grad(lambda t: (f(t, y) ** 2).sum())(x)

    jg = ng.jit(g)
    for i in (0, 1):
        np.testing.assert_allclose(jg(a[i], b[i]).numpy(), g(a[i], b[i]).numpy(), rtol=1e-9,
                                   atol=1e-12)
    tangent = ng.jvp(lambda t: f(t, b[0]), (a[0],), (ng.ones_like(a[0]),))[1]
    eps = 1e-6
    fd = (f(a[0] + eps, b[0]) - f(a[0] - eps, b[0])).numpy() / (2 * eps)
    np.testing.assert_allclose(tangent.numpy(), fd, rtol=1e-5, atol=1e-6)


# --- errors that name the op ----------------------------------------------------------------
def _T(*shape, dtype=np.float64):
    return ng.tensor(np.ones(shape, dtype))


ERRORS = [
    (lambda: ng.t(_T(2, 2, 2)), ShapeError, "t: .*at most 2 dims"),
    (lambda: ng.mm(_T(3), _T(3, 2)), ShapeError, "mm: input must be a matrix"),
    (lambda: ng.mm(_T(2, 3), _T(4, 2)), ShapeError, r"mm: shapes \(2, 3\) and \(4, 2\)"),
    (lambda: ng.mm(_T(2, 2), _T(2, 2, dtype=np.float32)), DTypeError, "mm: .*one dtype"),
    (lambda: ng.mm(ng.tensor([[1, 2]]), _T(2, 1)), DTypeError, "mm: .*int64"),
    (lambda: ng.bmm(_T(2, 2, 3), _T(3, 3, 2)), ShapeError, "bmm: batches"),
    (lambda: ng.bmm(_T(2, 3), _T(3, 2)), ShapeError, "bmm: batch1 must be a batch"),
    (lambda: ng.mv(_T(2, 3), _T(2)), ShapeError, "mv: mat of shape"),
    (lambda: ng.mv(_T(2, 3), _T(3, 1)), ShapeError, "mv: vec must be a vector"),
    (lambda: ng.dot(_T(2, 2), _T(2, 2)), ShapeError, "dot: expected two 1-d"),
    (lambda: ng.dot(_T(2), _T(3)), ShapeError, "dot: vectors of different lengths"),
    (lambda: ng.vdot(_T(2), _T(2, dtype=np.float32)), DTypeError, "vdot"),
    (lambda: ng.inner(_T(2, 3), _T(2)), ShapeError, "inner: the last dims"),
    (lambda: ng.inner(_T(2, 3), _T(3, dtype=np.float32)), DTypeError, "inner: .*one dtype"),
    (lambda: ng.ger(_T(2, 2), _T(2)), ShapeError, "ger: input must be a vector"),
    (lambda: _T(2, 2).outer(_T(2)), ShapeError, "outer: input must be a vector"),
    (lambda: ng.addmm(_T(3), _T(2, 2), _T(2, 2)), ShapeError, r"addmm: input of shape \(3,\)"),
    (lambda: ng.addmm(_T(2, 2), _T(2, 3), _T(2, 2)), ShapeError, "addmm: mat1"),
    (lambda: ng.addmv(_T(3), _T(2, 3), _T(3)), ShapeError, "addmv: input"),
    (lambda: ng.addbmm(_T(2, 2), _T(2, 2, 3), _T(3, 3, 2)), ShapeError, "addbmm: batches"),
    (lambda: ng.baddbmm(_T(3, 2, 2), _T(2, 2, 3), _T(2, 3, 2)), ShapeError, "baddbmm: input"),
    (lambda: ng.addr(_T(2, 2), _T(2, 2), _T(2)), ShapeError, "addr: vec1"),
    (lambda: ng.addcdiv(_T(2), ng.tensor([1, 2]), ng.tensor([1, 2])), DTypeError, "addcdiv"),
    (lambda: ng.chain_matmul(), ShapeError, "chain_matmul: expected one or more"),
    (lambda: ng.chain_matmul(_T(2)), ShapeError, "chain_matmul: matrix 0 must be 2-d"),
    (lambda: ng.chain_matmul(_T(2, 3), _T(2, 3)), ShapeError, "multi_dot"),
    (lambda: ng.tensordot(_T(2, 3), _T(3, 4), -1), ShapeError, "tensordot: dims must be >= 0"),
    (lambda: ng.tensordot(_T(2, 3), _T(3, 4), 3), ShapeError, "tensordot: dims=3"),
    (lambda: ng.tensordot(_T(2, 3), _T(3, 4), (1, 0)), TypeError, "tensordot: each half"),
    (lambda: ng.tensordot(_T(2, 3), _T(3, 4), ([1], [1])), ShapeError,
     "tensordot: contracted dims must match"),
    (lambda: ng.tensordot(_T(2, 3), _T(3, 4), ([1, 0], [0])), ShapeError,
     "tensordot: both dimension lists"),
    (lambda: ng.logdet(_T(2, 3)), ShapeError, "slogdet"),
    (lambda: _T(3).det(), ShapeError, "det"),
    (lambda: ng.cholesky_solve(_T(3, 2), _T(3, 2)), ShapeError, "cholesky_solve: the Cholesky"),
    (lambda: ng.cholesky_solve(_T(2, 2), _T(3, 3)), ShapeError,
     "cholesky_solve: the right-hand side"),
    (lambda: ng.cholesky_inverse(_T(3)), ShapeError, "cholesky_inverse"),
    (lambda: ng.triangular_solve(_T(2, 1), _T(3, 3)), ShapeError, "triangular_solve: b"),
    (lambda: ng.triangular_solve(_T(3, 1), _T(3, 2)), ShapeError, "triangular_solve: A"),
    (lambda: ng.cross(_T(2, 2), _T(2, 2)), ShapeError, "cross: no dim of length 3"),
    (lambda: ng.cross(_T(4, 3), _T(3)), ShapeError, "cross: .*same number of dims"),
    (lambda: ng.cross(_T(3, 2), _T(3, 2), dim=1), ShapeError, "cross: dim 1 must have length"),
    (lambda: ng.diff(ng.tensor(1.0)), ShapeError, "diff: .*0-d"),
    (lambda: ng.diff(_T(3), n=-1), ValueError, "diff: the order"),
    (lambda: ng.diff(_T(2, 3), prepend=_T(3)), ShapeError, "diff: prepend"),
    (lambda: ng.diff(_T(2, 3), dim=0, append=_T(1, 2)), ShapeError, "diff: append"),
    (lambda: ng.gradient(_T(3, 4), spacing=[2.0]), ShapeError, "gradient: spacing has 1"),
    (lambda: ng.gradient(_T(1, 4)), ShapeError, "gradient: dim 0"),
    (lambda: ng.gradient(_T(3), edge_order=3), ValueError, "gradient: edge_order"),
    (lambda: ng.gradient(_T(4), spacing=[_T(3)]), ShapeError, "gradient: coordinates"),
    (lambda: ng.gradient(_T(3, 4), dim=[0, -2]), ShapeError, "gradient: a dim repeats"),
    (lambda: ng.gradient(_T(4), spacing=_T(4)), TypeError, "gradient: coordinates go in a list"),
    (lambda: ng.trapezoid(_T(3), _T(3), dx=1), TypeError, "trapezoid: pass either"),
    (lambda: ng.trapezoid(_T(3, 4), _T(3)), ShapeError, "trapezoid: x has 3 points"),
    (lambda: ng.trapezoid(_T(3, 4), _T(2, 4)), ShapeError, "trapezoid: x of shape"),
    (lambda: ng.cumulative_trapezoid(ng.tensor(1.0)), ShapeError, "cumulative_trapezoid"),
    (lambda: ng.cov(_T(2, 2, 2)), ShapeError, "cov: expected at most 2 dims"),
    (lambda: ng.cov(_T(2, 3), fweights=_T(3)), DTypeError, "cov: fweights"),
    (lambda: ng.cov(_T(2, 3), aweights=ng.tensor([1, 1, 1])), DTypeError, "cov: aweights"),
    (lambda: ng.cov(_T(2, 3), fweights=ng.tensor([1, 1])), ShapeError, "cov: fweights has 2"),
    (lambda: ng.cov(_T(2, 3), aweights=ng.tensor([1.0, -1.0, 1.0])), ValueError,
     "cov: aweights cannot be negative"),
    (lambda: ng.cov(_T(2, 3), fweights=ng.tensor([0, 0, 0])), ValueError, "cov: the weights"),
    (lambda: ng.corrcoef(_T(2, 2, 2)), ShapeError, "corrcoef"),
    (lambda: ng.dist(ng.tensor([1, 2]), ng.tensor([1, 2])), DTypeError, "dist"),
    (lambda: ng.renorm(_T(3), 2, 0, 1.0), ShapeError, "renorm: input needs at least 2"),
    (lambda: ng.renorm(_T(3, 3), 0, 0, 1.0), ValueError, "renorm: p must be positive"),
    (lambda: ng.renorm(_T(3, 3), 2, 0, -1.0), ValueError, "renorm: maxnorm"),
    (lambda: ng.vander(_T(2, 2)), ShapeError, "vander: x must be 1-d"),
    (lambda: ng.vander(_T(2), N=-1), ValueError, "vander: N"),
    (lambda: ng.frobenius_norm(_T(2, 2, 2), (0, 1, 2)), ShapeError, "frobenius_norm"),
]


@pytest.mark.parametrize("k", range(len(ERRORS)))
def test_bad_inputs_raise_errors_naming_the_op(k):
    fn, exc, match = ERRORS[k]
    with pytest.raises(exc, match=match):
        fn()
