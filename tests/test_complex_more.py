"""Complex tensors in reductions, products, scans, indexing, the LU family and the rest of
``linalg`` against PyTorch: values, and gradients of real losses by PyTorch's convention
(z.grad = dL/dx + i dL/dy), with finite differences where PyTorch has no reference; ops that
compare values (max, sort, ...) refuse complex tensors by name, as PyTorch does."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _c(shape, seed=0, dtype=np.complex128):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _is_complex(m, t) -> bool:
    return t.dtype.is_complex if m is torch else t.dtype.kind == "c"


def _floating(m, t) -> bool:
    return (t.dtype.is_floating_point or t.dtype.is_complex) if m is torch \
        else t.dtype.kind in "fc"


def _loss(m, y):
    """A real loss of every float or complex output: |y|², Re and Im with fixed weights."""
    if isinstance(y, tuple | list):
        return sum(_loss(m, t) for t in y if _floating(m, t))
    if _is_complex(m, y):
        return (y.abs() ** 2).sum() + (m.real(y) * 0.3).sum() - (m.imag(y) * 0.7).sum()
    return (y * y).sum() + (y * 0.3).sum()


def _run(m, f, arrays):
    xs = [m.tensor(a, requires_grad=np.iscomplexobj(a)) for a in arrays]
    y = f(m, m.linalg, *xs)
    grads = (m.autograd.grad(_loss(m, y), [x for x in xs if x.requires_grad])
             if any(x.requires_grad for x in xs) else ())
    return y, grads


def _np(t):
    return t.detach().resolve_conj().numpy() if hasattr(t, "resolve_conj") else t.numpy()


def _same(ours, theirs, tol):
    if isinstance(ours, tuple | list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _same(a, b, tol)
        return
    a, b = ours.numpy(), _np(theirs)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def check(f, *arrays, tol=1e-9):
    """f(m, la, *tensors) in nodegrad and PyTorch: the same values and input gradients."""
    y, g = _run(ng, f, arrays)
    ty, tg = _run(torch, f, arrays)
    _same(y, ty, tol)
    for a, b in zip(g, tg):
        assert a.dtype == _np(b).dtype
        np.testing.assert_allclose(a.numpy(), _np(b), rtol=tol * 100, atol=tol * 100)


A, B, V, W = _c((3, 3), 1), _c((3, 3), 2), _c((3,), 3), _c((3,), 4)
A4, B4 = _c((4, 3), 5), _c((4, 2), 6)
IDX = np.array([[0, 1, 2], [2, 0, 1]])
MASK = np.array([[True, False, True], [False, True, False], [True, True, False]])


def _pad(m, x):
    return (torch.nn.functional.pad if m is torch else ng.nn.functional.pad)(x, (1, 2))


REDUCTIONS = {
    "sum": (lambda m, la, x: x.sum(0), A),
    "sum_all": (lambda m, la, x: x.sum((0, 1), keepdim=True), A),
    "mean": (lambda m, la, x: x.mean(1), A),
    "var": (lambda m, la, x: x.var(0, correction=1), A),
    "var0": (lambda m, la, x: m.var(x, correction=0), A),
    "std": (lambda m, la, x: x.std(1, correction=1), A),
    "prod": (lambda m, la, x: m.prod(x, 0), A),
    "prod_all": (lambda m, la, x: m.prod(x), A),
    "prod_zero": (lambda m, la, x: m.prod(x * m.tensor(np.array([1.0, 0.0, 1.0])), 1), A),
    "cumprod": (lambda m, la, x: m.cumprod(x, 1), A),
    "cumprod_zero": (lambda m, la, x: m.cumprod(x * m.tensor(np.array([1.0, 0.0, 1.0])), 1),
                     A),
    "cumsum": (lambda m, la, x: m.cumsum(x, 0), A),
    "logsumexp": (lambda m, la, x: m.logsumexp(x, 1), A),
    "trace": (lambda m, la, x: m.trace(x), A),
    "diagonal": (lambda m, la, x: m.diagonal(x, 1), A),
    "tril": (lambda m, la, x: m.tril(x), A),
    "diff": (lambda m, la, x: m.diff(x, dim=1), A),
    "trapezoid": (lambda m, la, x: m.trapezoid(x), A),
    "cumulative_trapezoid": (lambda m, la, x: m.cumulative_trapezoid(x), A),
    "cov": (lambda m, la, x: m.cov(x), A),
    "corrcoef": (lambda m, la, x: m.corrcoef(x), A),
    "var_mean": (lambda m, la, x: m.var_mean(x, 1), A),
    "std_mean": (lambda m, la, x: m.std_mean(x, 0), A),
    "dist": (lambda m, la, x: m.dist(x, x * x), A),
    "renorm": (lambda m, la, x: m.renorm(x, 2, 0, 1.5), A),
    "norm": (lambda m, la, x: m.norm(x, p=1, dim=0), A),
}

PRODUCTS = {
    "kron": (lambda m, la, x, y: m.kron(x, y), A, B),
    "tensordot": (lambda m, la, x, y: m.tensordot(x, y, dims=1), A, B),
    "einsum": (lambda m, la, x, y: m.einsum("ij,jk->ik", x, y), A, B),
    "matmul": (lambda m, la, x, y: x @ y, A, B),
    "mv": (lambda m, la, x, y: m.mv(x, y), A, V),
    "outer": (lambda m, la, x, y: m.outer(x, y), V, W),
    "inner": (lambda m, la, x, y: m.inner(x, y), V, W),
    "vdot": (lambda m, la, x, y: m.vdot(x, y), V, W),
    "dot": (lambda m, la, x, y: m.dot(x, y), V, W),
    "addmm": (lambda m, la, x, y: m.addmm(x, x, y), A, B),
    "baddbmm": (lambda m, la, x, y: m.baddbmm(x[None], x[None], y[None]), A, B),
    "vecdot": (lambda m, la, x, y: la.vecdot(x, y), A, B),
    "vecdot_dim0": (lambda m, la, x, y: la.vecdot(x, y, dim=0), A, B),
    "cross": (lambda m, la, x, y: la.cross(x, y), A, B),
    "multi_dot": (lambda m, la, x, y: la.multi_dot([x, y, x]), A, B),
    "lerp": (lambda m, la, x, y: m.lerp(x, y, 0.3), A, B),
}

INDEXING = {
    "masked_fill": (lambda m, la, x: x.masked_fill(m.tensor(MASK), 2.0), A),
    "index_add": (lambda m, la, x, y: x.index_add(0, m.tensor(np.array([2, 0, 1])), y), A, B),
    "scatter_add": (lambda m, la, x, y: x.scatter_add(1, m.tensor(IDX), y[:2]), A, B),
    "scatter": (lambda m, la, x, y: x.scatter(1, m.tensor(IDX), y[:2]), A, B),
    "index_copy": (lambda m, la, x, y: x.index_copy(0, m.tensor(np.array([2, 0, 1])), y), A,
                   B),
    "gather": (lambda m, la, x: m.gather(x, 1, m.tensor(IDX)), A),
    "where": (lambda m, la, x, y: m.where(m.tensor(MASK), x, y), A, B),
    "flip": (lambda m, la, x: m.flip(x, [0]), A),
    "roll": (lambda m, la, x: m.roll(x, 1, 1), A),
    "cat": (lambda m, la, x, y: m.cat([x, y], 1), A, B),
    "stack": (lambda m, la, x, y: m.stack([x, y]), A, B),
    "pad": (lambda m, la, x: _pad(m, x), A),
    "repeat": (lambda m, la, x: x.repeat(2, 1), A),
    "index_select": (lambda m, la, x: m.index_select(x, 0, m.tensor(np.array([2, 0, 0]))), A),
    "unfold": (lambda m, la, x: x.unfold(1, 2, 1), A),
    "masked_select": (lambda m, la, x: m.masked_select(x, m.tensor(MASK)), A),
    "masked_scatter": (lambda m, la, x, y: x.masked_scatter(m.tensor(MASK), y), A, B),
    "index_put_accumulate": (lambda m, la, x, y: x.index_put((m.tensor(np.array([0, 0])),),
                                                             y[:2], accumulate=True), A, B),
    "take": (lambda m, la, x: m.take(x, m.tensor(np.array([0, 4, 8, 4]))), A),
    "block_diag": (lambda m, la, x, y: m.block_diag(x, y), A, B),
    "diag_embed": (lambda m, la, x: m.diag_embed(x), A),
    "rot90": (lambda m, la, x: m.rot90(x), A),
}

ELEMENTWISE = {
    "sgn": (lambda m, la, x: m.sgn(x), A),
    "sgn_zero": (lambda m, la, x: m.sgn(x * m.tensor(np.array([1.0, 0.0, 1.0]))), A),
    "abs": (lambda m, la, x: m.abs(x), A),
    "sqrt": (lambda m, la, x: m.sqrt(x), A),
    "rsqrt": (lambda m, la, x: m.rsqrt(x), A),
    "log": (lambda m, la, x: m.log(x), A),
    "exp": (lambda m, la, x: m.exp(x), A),
    "pow": (lambda m, la, x: x ** 2.5, A),
    "pow_complex": (lambda m, la, x, y: x ** y, A, B),
    "tanh": (lambda m, la, x: m.tanh(x), A),
    "sigmoid": (lambda m, la, x: m.sigmoid(x), A),
    "asin": (lambda m, la, x: m.asin(x * 0.3), A),
    "acos": (lambda m, la, x: m.acos(x * 0.3), A),
    "atan": (lambda m, la, x: m.atan(x * 0.3), A),
    "asinh": (lambda m, la, x: m.asinh(x * 0.3), A),
    "acosh": (lambda m, la, x: m.acosh(x), A),  # both half-planes
    "atanh": (lambda m, la, x: m.atanh(x * 0.3), A),
    "polar": (lambda m, la, x, y: m.polar(m.real(x).abs(), m.imag(y)), A, B),
    "view_as_real": (lambda m, la, x: m.view_as_real(x) * 2, A),
    "view_as_complex": (lambda m, la, x: m.view_as_complex(m.view_as_real(x) * 2) * x, A),
}


def _lu_all(m, la, x, y):
    LU, piv = la.lu_factor(x)
    return (*la.lu(x), LU, la.lu_solve(LU, piv, y), la.lu_solve(LU, piv, y, adjoint=True),
            la.lu_solve(LU, piv, y, left=False), la.lu_solve(LU, piv, y, left=False,
                                                              adjoint=True))


LINALG = {
    "lu_family": (_lu_all, A, B),
    "lu_factor_ex": (lambda m, la, x: la.lu_factor_ex(x)[0], A),
    "lu_wide": (lambda m, la, x: la.lu(x.mT), A4),
    "lu_tall": (lambda m, la, x: la.lu(x), A4),
    "lu_unpack": (lambda m, la, x: m.lu_unpack(*la.lu_factor(x)), A),
    "solve_triangular": (lambda m, la, x, y: la.solve_triangular(
        m.tril(x) + 3 * m.eye(3), y, upper=False), A, B),
    "solve_triangular_right": (lambda m, la, x, y: la.solve_triangular(
        m.triu(x) + 3 * m.eye(3), y, upper=True, left=False, unitriangular=True), A, B),
    "lstsq": (lambda m, la, x, y: la.lstsq(x, y, driver="gelsd")[:2], A4, B4),
    "lstsq_vector": (lambda m, la, x, y: la.lstsq(x, y[:, 0]).solution, A4, B4),
    "matrix_exp": (lambda m, la, x: la.matrix_exp(x), A),
    "matrix_exp_big": (lambda m, la, x: la.matrix_exp(x * 3), A),
    "matrix_power_neg": (lambda m, la, x: la.matrix_power(x, -2), A),
    "matrix_power_pos": (lambda m, la, x: la.matrix_power(x, 3), A),
    "matrix_power_zero": (lambda m, la, x: la.matrix_power(x, 0) + x, A),
    "householder_product": (lambda m, la, x, y: la.householder_product(x, y[:2] * 0.5), A4, V),
    "householder_of_geqrf": (lambda m, la, x: la.householder_product(*m.geqrf(x.detach())) * x,
                             A4),
    "ormqr": (lambda m, la, x, y, z: m.ormqr(x, y, z), A4, V, B4),
    "ormqr_adjoint": (lambda m, la, x, y, z: m.ormqr(x, y, z, transpose=True), A4, V, B4),
    "ormqr_adjoint_right": (lambda m, la, x, y, z: m.ormqr(x, y, z.mT, left=False,
                                                           transpose=True), A4, V, B4),
    "cond": (lambda m, la, x: la.cond(x), A),
    "cond_m2": (lambda m, la, x: la.cond(x, -2), A),
    "cond_nuc": (lambda m, la, x: la.cond(x, "nuc"), A),
    "inv_ex": (lambda m, la, x: la.inv_ex(x), A),
    "solve_ex": (lambda m, la, x, y: la.solve_ex(x, y), A, B),
    "cholesky_ex": (lambda m, la, x: la.cholesky_ex(x @ x.mH + m.eye(3), upper=True), A),
    "cholesky_solve": (lambda m, la, x, y: m.cholesky_solve(y, la.cholesky(x @ x.mH + m.eye(3))),
                       A, B),
    "cholesky_solve_upper": (lambda m, la, x, y: m.cholesky_solve(
        y, la.cholesky(x @ x.mH + m.eye(3), upper=True), upper=True), A, B),
    "cholesky_inverse": (lambda m, la, x: m.cholesky_inverse(la.cholesky(x @ x.mH + m.eye(3))),
                         A),
    "logdet": (lambda m, la, x: m.logdet(x), A),
    "tensorsolve": (lambda m, la, x, y: la.tensorsolve(x, y[0]), A, B),
    "tensorinv": (lambda m, la, x: la.tensorinv(x, ind=1), A),
    "vander": (lambda m, la, x: la.vander(x), V),
    "triangular_solve": (lambda m, la, x, y: m.triangular_solve(y, m.triu(x) + 3 * m.eye(3)),
                         A, B),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_and_scans(name):
    f, *xs = REDUCTIONS[name]
    check(f, *xs)


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_products(name):
    f, *xs = PRODUCTS[name]
    check(f, *xs)


@pytest.mark.parametrize("name", sorted(INDEXING))
def test_indexing_and_shapes(name):
    f, *xs = INDEXING[name]
    check(f, *xs)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise(name):
    f, *xs = ELEMENTWISE[name]
    check(f, *xs)


@pytest.mark.parametrize("name", sorted(LINALG))
def test_linalg(name):
    f, *xs = LINALG[name]
    check(f, *xs, tol=1e-8)


def test_svd_lowrank_of_complex_matrices():
    """With q = min(m, n) the sketch spans A: the exact singular values and their gradient."""
    a = _c((5, 3), 11)
    for fn in (lambda x: ng.svd_lowrank(x, q=3),
               lambda x: ng.pca_lowrank(x, q=3, center=False)):
        x = ng.tensor(a, requires_grad=True)
        U, S, V = fn(x)
        assert U.dtype == V.dtype == np.complex128 and S.dtype == np.float64
        np.testing.assert_allclose((U.numpy() * S.numpy()) @ V.numpy().conj().T, a, atol=1e-10)
        S.sum().backward()
        t = torch.tensor(a, requires_grad=True)
        torch.linalg.svdvals(t).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-8, atol=1e-8)


def test_lu_pivots_are_lapacks():
    """The pivot is the largest |Re| + |Im| (LAPACK's izamax), not the largest modulus."""
    a = np.array([[0.9 + 0.9j, 1.0], [1.2 + 0j, 2.0]])  # |.| picks row 0, |Re|+|Im| row 0
    b = np.array([[1.3 + 0j, 1.0], [0.95 + 0.95j, 2.0]])  # |.|: row 0 (1.3 < 1.34), LAPACK row 1
    for m in (a, b, _c((2, 5, 5), 8)):
        LU, piv = ng.linalg.lu_factor(ng.tensor(m))
        tLU, tpiv = torch.linalg.lu_factor(torch.tensor(m))
        np.testing.assert_array_equal(piv.numpy(), tpiv.numpy())
        np.testing.assert_allclose(LU.numpy(), tLU.numpy(), rtol=1e-12, atol=1e-12)


def test_singular_complex_matrices_give_info_and_nan_as_pytorch():
    s = np.array([[1, 2], [2, 4]], dtype=complex) * (1 + 1j)
    inv, info = ng.linalg.inv_ex(ng.tensor(s))
    tinv, tinfo = torch.linalg.inv_ex(torch.tensor(s))
    assert int(info.item()) == int(tinfo.item()) == 2
    assert np.isnan(inv.numpy().real).all() and np.isnan(inv.numpy().imag).all()
    with pytest.raises(ng.linalg.LinAlgError):
        ng.linalg.inv_ex(ng.tensor(s), check_errors=True)
    h = np.array([[1, 2j], [-2j, 1]])  # Hermitian, not positive definite
    _, info = ng.linalg.cholesky_ex(ng.tensor(h))
    assert int(info.item()) == int(torch.linalg.cholesky_ex(torch.tensor(h)).info.item()) == 2
    assert int(ng.linalg.matrix_rank(ng.tensor(s)).item()) == 1
    assert float(ng.linalg.cond(ng.tensor(s), 1).item()) == float("inf")


def _fd(f, a, eps=1e-6):
    """dL/dx + i dL/dy of the real scalar f(tensor) by central differences."""
    g = np.zeros(a.shape, np.complex128)
    for idx in np.ndindex(a.shape):
        for unit in (1.0, 1j):
            e = np.zeros(a.shape, a.dtype)
            e[idx] = unit * eps
            g[idx] += unit * (f(ng.tensor(a + e)).item() - f(ng.tensor(a - e)).item()) / (2 * eps)
    return g


@pytest.mark.parametrize("p", [1, -1, float("inf"), float("-inf"), "fro"])
def test_cond_norm_orders(p):
    """Values against PyTorch; gradients by finite differences (PyTorch's backward of these
    orders fails for complex inputs with an in-place error)."""
    ours = ng.linalg.cond(ng.tensor(A), p)
    theirs = torch.linalg.cond(torch.tensor(A), p)
    _same(ours, theirs, 1e-10)
    x = ng.tensor(A, requires_grad=True)
    ng.linalg.cond(x, p).backward()
    np.testing.assert_allclose(x.grad.numpy(), _fd(lambda t: ng.linalg.cond(t, p), A),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hermitian", [False, True])
def test_matrix_rank(hermitian):
    x = _c((2, 4, 2), 9)
    a = x @ np.conj(np.swapaxes(x, -1, -2))  # rank 2 of 4, Hermitian
    ours = ng.linalg.matrix_rank(ng.tensor(a), hermitian=hermitian)
    theirs = torch.linalg.matrix_rank(torch.tensor(a), hermitian=hermitian)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert ours.dtype == np.int64


def test_lstsq_fields_match_torch_for_every_driver():
    for driver in (None, "gels", "gelsy", "gelsd", "gelss"):
        ours = ng.linalg.lstsq(ng.tensor(A4), ng.tensor(B4), driver=driver)
        theirs = torch.linalg.lstsq(torch.tensor(A4), torch.tensor(B4), driver=driver)
        for a, b in zip(ours, theirs):
            _same(a, b, 1e-9)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex64_and_complex128_values(dtype):
    a, b = A.astype(dtype), B.astype(dtype)
    tol = 1e-4 if dtype == np.complex64 else 1e-10
    x, y, tx, ty = ng.tensor(a), ng.tensor(b), torch.tensor(a), torch.tensor(b)
    LA, TLA = ng.linalg, torch.linalg
    pairs = [(LA.lu_factor(x)[0], TLA.lu_factor(tx)[0]), (LA.matrix_exp(x), TLA.matrix_exp(tx)),
             (LA.matrix_power(x, -3), TLA.matrix_power(tx, -3)),
             (LA.lu_solve(*LA.lu_factor(x), y), TLA.lu_solve(*TLA.lu_factor(tx), ty)),
             (LA.cond(x), TLA.cond(tx)), (LA.vecdot(x, y), TLA.vecdot(tx, ty)),
             (ng.prod(x, 0), torch.prod(tx, 0)), (ng.cumprod(x, 1), torch.cumprod(tx, 1)),
             (ng.logdet(x), torch.logdet(tx)), (x.var(0, correction=1), tx.var(0))]
    for i, (ours, theirs) in enumerate(pairs):
        assert ours.dtype == theirs.numpy().dtype, i
        np.testing.assert_allclose(ours.numpy(), _np(theirs), rtol=tol, atol=tol, err_msg=str(i))


def test_real_matrices_keep_real_results():
    a = np.random.default_rng(10).standard_normal((3, 3))
    for f in (lambda la, x: la.lu_factor(x)[0], lambda la, x: la.matrix_exp(x),
              lambda la, x: la.cond(x), lambda la, x: la.vecdot(x, x)):
        assert f(ng.linalg, ng.tensor(a)).dtype == np.float64


def test_forward_mode_through_complex_sgn_and_acosh():
    y = ng.tensor(np.array([0.5, -1.0, 0.3]))

    def f(x):
        z = ng.complex(x, y)
        return (ng.sgn(z) * (1 + 2j) + ng.acosh(z) * (0.5 - 1j)).real.sum()

    x, u = np.array([0.3, -0.7, -1.5]), np.array([1.0, -2.0, 0.5])
    _, t = ng.jvp(f, (ng.tensor(x),), (ng.tensor(u),))
    e = 1e-6
    fd = (f(ng.tensor(x + e * u)).item() - f(ng.tensor(x - e * u)).item()) / (2 * e)
    np.testing.assert_allclose(t.item(), fd, rtol=1e-6)


def test_nansum_of_complex_skips_nan_entries():
    """PyTorch's CPU nansum refuses complex tensors; NumPy's skips NaN entries, as here."""
    a = A.copy()
    a[0, 1] = complex(np.nan, 1.0)
    x = ng.tensor(a, requires_grad=True)
    out = ng.nansum(x, 0)
    np.testing.assert_allclose(out.numpy(), np.nansum(np.where(np.isnan(a), 0, a), 0))
    out.real.sum().backward()
    expect = np.ones_like(a)
    expect[0, 1] = 0
    np.testing.assert_array_equal(x.grad.numpy(), expect)


REFUSED = {
    "max": lambda m, x: m.max(x), "min": lambda m, x: m.min(x),
    "max_dim": lambda m, x: m.max(x, 0), "amax": lambda m, x: m.amax(x),
    "amin": lambda m, x: m.amin(x, 0), "aminmax": lambda m, x: m.aminmax(x),
    "argmax": lambda m, x: m.argmax(x), "argmin": lambda m, x: m.argmin(x, 1),
    "sort": lambda m, x: m.sort(x), "argsort": lambda m, x: m.argsort(x),
    "msort": lambda m, x: m.msort(x), "topk": lambda m, x: m.topk(x, 2),
    "kthvalue": lambda m, x: m.kthvalue(x, 1), "median": lambda m, x: m.median(x),
    "nanmedian": lambda m, x: m.nanmedian(x, 0), "mode": lambda m, x: m.mode(x),
    "unique": lambda m, x: m.unique(x),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ordering_ops_refuse_complex_as_pytorch(name):
    f = REFUSED[name]
    with pytest.raises((RuntimeError, NotImplementedError, TypeError)):
        f(torch, torch.tensor(A))
    op = {"max_dim": "max"}.get(name, name)
    with pytest.raises(ng.DTypeError, match=rf"^{op}: complex tensors have no order"):
        f(ng, ng.tensor(A))


def test_ordering_ops_refuse_complex_methods_too():
    x = ng.tensor(A)
    for call, op in ((lambda: x.max(), "max"), (lambda: x.argmax(), "argmax"),
                     (lambda: x.sort(), "sort"), (lambda: x.topk(1), "topk")):
        with pytest.raises(ng.DTypeError, match=op):
            call()


def test_lex_argsort_keeps_numpys_order_for_complex():
    from nodegrad.ops.sort import lex_argsort

    a = np.array([1 + 2j, 1 - 1j, -3 + 0j, 1 + 2j])
    np.testing.assert_array_equal(lex_argsort(ng.tensor(a)).numpy(),
                                  np.argsort(a, kind="stable"))


def test_bad_dtypes_are_named():
    with pytest.raises(ng.DTypeError, match="lu_solve: LU and B must have one dtype"):
        ng.linalg.lu_solve(*ng.linalg.lu_factor(ng.tensor(A)), ng.tensor(B.real))
    with pytest.raises(ng.DTypeError, match="vecdot: x and y must have one dtype"):
        ng.linalg.vecdot(ng.tensor(V), ng.tensor(W.real))
    with pytest.raises(ng.DTypeError, match="vecdot: expected floating-point or complex"):
        ng.linalg.vecdot(ng.tensor(np.arange(3)), ng.tensor(np.arange(3)))
    with pytest.raises(ng.DTypeError, match="lstsq: A and B must have one dtype"):
        ng.linalg.lstsq(ng.tensor(A4), ng.tensor(B4.real))
    with pytest.raises(ng.DTypeError, match="matrix_exp: expected a float32 or float64, "
                                            "complex64 or complex128 tensor"):
        ng.linalg.matrix_exp(ng.tensor(np.eye(2, dtype=np.int64)))


def test_logcumsumexp_of_complex():
    check(lambda m, la, x: m.logcumsumexp(x, 1), A)
    big = np.array([[-800 + 1j, 0.5j, 3 + 2j], [1000 + 1j, 999 - 2j, 1 + 0j]])
    check(lambda m, la, x: m.logcumsumexp(x, 1), big)
