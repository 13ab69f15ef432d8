"""ng.linalg beyond the op matrix: degenerate inputs (singular, repeated eigenvalues, rank
deficiency), PyTorch's result fields and conventions, dtypes, and the errors where PyTorch
raises. The op matrix (``_opcases``) covers gradients, vmap and jvp of every function."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
LA = ng.linalg
TOL = {"rtol": 1e-7, "atol": 1e-10}


@pytest.fixture
def rng():
    return np.random.default_rng(13)


def test_float32_stays_float32_and_batches(rng):
    a = rng.standard_normal((2, 3, 4, 4)).astype(np.float32) + 4 * np.eye(4, dtype=np.float32)
    spd = a @ np.swapaxes(a, -1, -2)
    for f in (LA.inv, LA.det, lambda t: LA.slogdet(t).logabsdet, LA.matrix_exp, LA.svdvals,
              LA.pinv, lambda t: LA.cholesky(t), lambda t: LA.eigh(t).eigenvectors,
              lambda t: LA.qr(t).R, lambda t: LA.svd(t).U, LA.eigvalsh):
        out = f(ng.tensor(spd))
        assert out.dtype == np.float32
        assert out.shape[:2] == (2, 3)
    compare_with_torch(LA.inv, torch.linalg.inv, spd, rtol=1e-4, atol=1e-5)


def test_det_of_singular_matrices_has_the_cofactor_gradient():
    """det is a polynomial: at a singular matrix its gradient is the cofactor matrix, finite.
    (PyTorch 2.13 returns 0 for an exactly singular input; near-singular ones agree.)"""
    a = np.array([[0.0, 0.0], [0.0, 1.0]])
    t = ng.tensor(a, requires_grad=True)
    LA.det(t).backward()
    np.testing.assert_allclose(t.grad.numpy(), [[1.0, 0.0], [0.0, 0.0]], atol=1e-12)
    b = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])  # rank 2
    ng.gradcheck(LA.det, b)
    ng.gradcheck(LA.det, np.zeros((3, 3)))  # rank 0: the gradient is 0
    near = np.array([[1.0, 2.0], [2.0, 4.0 + 1e-6]])
    compare_with_torch(LA.det, torch.linalg.det, near, rtol=1e-6, atol=1e-10)
    c = rng_matrix(4)
    compare_with_torch(LA.det, torch.linalg.det, c, **TOL)


def test_det_has_finite_second_derivatives_at_every_rank():
    """Up to MINORS_MAX the singular cofactors are minors' determinants, so a matrix of rank
    n - 2 or less (where an SVD-based derivative divides by s_i² - s_j² = 0) still has the
    finite second derivative of a polynomial; above, the SVD rule stands."""
    from nodegrad.ops.linalg import MINORS_MAX

    rng = np.random.default_rng(3)
    for n in (2, 3, 4, MINORS_MAX):
        for rank in range(n):
            a = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, n))
            ng.gradcheck(LA.det, a, order=2)
    tiny = np.array([[5.5, 3e-162, -3e-162, 5.5], [5e-301, 5.0, 0.0, 5e-301],
                     [0.0, 5e-156, 5.0, 0.0], [3e-162, -3e-162, 5e-156, 3e-162]])
    ng.gradcheck(LA.det, tiny, order=2)  # a repeated column and a row of tiny entries
    ng.gradcheck(LA.det, np.zeros((2, 1, 1)), order=2)
    big = rng.standard_normal((MINORS_MAX + 1, MINORS_MAX + 1))
    big[:, -1] = big[:, 0]
    ng.gradcheck(LA.det, big)


def rng_matrix(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, n))


def test_slogdet_sign_and_negative_determinants():
    a = rng_matrix(4, 1)
    a = a if np.linalg.det(a) < 0 else a[::-1].copy()
    sign, logabs = LA.slogdet(ng.tensor(a))
    ts, tl = torch.linalg.slogdet(torch.tensor(a))
    assert float(sign) == float(ts) == -1.0
    np.testing.assert_allclose(float(logabs), float(tl), rtol=1e-12)
    compare_with_torch(lambda t: LA.slogdet(t)[1], lambda t: torch.linalg.slogdet(t)[1], a, **TOL)
    compare_with_torch(lambda t: LA.slogdet(t)[0] * 1, lambda t: torch.linalg.slogdet(t)[0] * 1,
                       a, **TOL)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the infinite eigenvector gradient
def test_eigh_repeated_eigenvalues():
    """Eigenvalues keep a finite gradient at a repeated eigenvalue (eigvalsh, or eigh's values
    alone); the eigenvectors' gradient is not finite there, in PyTorch too."""
    a = np.diag([1.0, 1.0, 3.0])
    for f, tf in ((LA.eigvalsh, torch.linalg.eigvalsh),
                  (lambda t: LA.eigh(t).eigenvalues, lambda t: torch.linalg.eigh(t).eigenvalues)):
        compare_with_torch(f, tf, a, **TOL)
    t = ng.tensor(a, requires_grad=True)
    v = LA.eigh(t).eigenvectors
    (v * ng.tensor(rng_matrix(3, 2))).sum().backward()
    tt = torch.tensor(a, requires_grad=True)
    (torch.linalg.eigh(tt).eigenvectors * torch.tensor(rng_matrix(3, 2))).sum().backward()
    assert not np.isfinite(t.grad.numpy()).all()
    assert not torch.isfinite(tt.grad).all()


def test_svd_rank_deficient_values_and_pinv():
    a = np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 0.5, 2.0])  # rank 1
    # zero singular values are kinks (|x|): values only there
    compare_with_torch(LA.svdvals, torch.linalg.svdvals, a, rtol=1e-7, atol=1e-10, grad=False)
    compare_with_torch(LA.pinv, torch.linalg.pinv, a, rtol=1e-7, atol=1e-10, grad=False)
    for kw in ({"atol": 0.5}, {"rtol": 0.1}, {"atol": 1e-3, "rtol": 0.2}):
        b = rng_matrix(4, 3)
        got = LA.pinv(ng.tensor(b), **kw).numpy()
        np.testing.assert_allclose(got, torch.linalg.pinv(torch.tensor(b), **kw).numpy(), **TOL)


def test_qr_modes_and_wide_matrices(rng):
    for shape in ((5, 3), (3, 5), (4, 4)):
        a = rng.standard_normal(shape)
        for mode in ("reduced", "complete"):
            q, r = LA.qr(ng.tensor(a), mode=mode)
            tq, tr = torch.linalg.qr(torch.tensor(a), mode=mode)
            np.testing.assert_allclose(q.numpy(), tq.numpy(), **TOL)
            np.testing.assert_allclose(r.numpy(), tr.numpy(), **TOL)
        q, r = LA.qr(ng.tensor(a), mode="r")
        assert q.shape == (0,)
        np.testing.assert_allclose(r.numpy(), torch.linalg.qr(torch.tensor(a), mode="r")[1],
                                   **TOL)
    t = ng.tensor(rng.standard_normal((5, 3)), requires_grad=True)
    with pytest.raises(ng.GradError, match="complete"):
        LA.qr(t, mode="complete").Q.sum().backward()


def test_lstsq_fields_like_torch(rng):
    a, b = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    got = LA.lstsq(ng.tensor(a), ng.tensor(b))
    want = torch.linalg.lstsq(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(got.solution.numpy(), want.solution.numpy(), **TOL)
    assert int(got.rank) == int(want.rank) == 3
    assert got.residuals.shape == tuple(want.residuals.shape) == (0,)  # gelsy: none
    wd = torch.linalg.lstsq(torch.tensor(a), torch.tensor(b), driver="gelsd")
    gd = LA.lstsq(ng.tensor(a), ng.tensor(b), driver="gelsd")
    np.testing.assert_allclose(gd.singular_values.numpy(), wd.singular_values.numpy(), **TOL)
    np.testing.assert_allclose(gd.residuals.numpy(), wd.residuals.numpy(), **TOL)
    wide = LA.lstsq(ng.tensor(a.T), ng.tensor(rng.standard_normal((3, 2))))
    assert wide.residuals.shape == (0,)


def test_matrix_exp_large_norm_and_known_values():
    rot = np.array([[0.0, -np.pi], [np.pi, 0.0]])  # exp is -I
    np.testing.assert_allclose(LA.matrix_exp(ng.tensor(rot)).numpy(), -np.eye(2), atol=1e-12)
    big = rng_matrix(4, 5) * 6
    compare_with_torch(LA.matrix_exp, torch.linalg.matrix_exp, big, rtol=1e-7, atol=1e-8)
    nil = np.triu(rng_matrix(3, 6), 1)
    compare_with_torch(LA.matrix_exp, torch.linalg.matrix_exp, nil, **TOL)


def test_matrix_power_and_multi_dot_edges(rng):
    a = rng.standard_normal((2, 3, 3)) + 3 * np.eye(3)
    for n in (0, 1, -1, 5, -3):
        compare_with_torch(lambda t: LA.matrix_power(t, n),
                           lambda t: torch.linalg.matrix_power(t, n), a, **TOL)
    ms = [rng.standard_normal(s) for s in ((7,), (7, 2), (2, 9), (9, 3), (3,))]
    compare_with_torch(lambda *t: LA.multi_dot(t), lambda *t: torch.linalg.multi_dot(t), *ms,
                       **TOL)


def test_einsum_diagonals_against_torch(rng):
    a = rng.standard_normal((3, 3, 2))
    for subs, ops in (("ii->i", (a[..., 0],)), ("ii", (a[..., 0],)), ("iij->j", (a,)),
                      ("iij->ij", (a,)), ("ii,ij->j", (a[..., 0], a[..., 1])),
                      ("...ii->...i", (np.moveaxis(a, 2, 0),))):
        compare_with_torch(lambda *t: ng.einsum(subs, *t), lambda *t: torch.einsum(subs, *t),
                           *ops, **TOL)
        ng.gradcheck(lambda *t: ng.einsum(subs, *t), *ops, order=2)


def test_cholesky_solve_and_triangular_solve(rng):
    x = rng.standard_normal((3, 3))
    spd = x @ x.T + 3 * np.eye(3)
    b = rng.standard_normal((3, 2))
    lo = np.linalg.cholesky(spd)
    for upper, fac in ((False, lo), (True, lo.T)):
        got = LA.cholesky_solve(ng.tensor(b), ng.tensor(fac), upper=upper).numpy()
        np.testing.assert_allclose(got, np.linalg.solve(spd, b), **TOL)
    sol, coef = LA.triangular_solve(ng.tensor(b), ng.tensor(lo), upper=False)
    np.testing.assert_allclose(sol.numpy(), np.linalg.solve(lo, b), **TOL)
    np.testing.assert_array_equal(coef.numpy(), lo)


def test_cross_broadcasts_batches(rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((1, 3))
    compare_with_torch(LA.cross, torch.linalg.cross, a, b, **TOL)
    compare_with_torch(lambda x, y: LA.cross(x, y, dim=0), lambda x, y: torch.linalg.cross(
        x, y, dim=0), a.T, b.T, **TOL)


def test_errors_where_torch_raises(rng):
    with pytest.raises(ng.ShapeError, match=r"linalg.inv: A must be square.*\(2, 3\)"):
        LA.inv(ng.ones((2, 3)))
    with pytest.raises(ng.ShapeError, match="matrix or a batch"):
        LA.det(ng.ones(3))
    with pytest.raises(ng.DTypeError, match="int64"):
        LA.inv(ng.tensor([[1, 0], [0, 1]]))
    with pytest.raises(LA.LinAlgError, match="inv: the matrix is singular"):
        LA.inv(ng.zeros((3, 3)))
    with pytest.raises(LA.LinAlgError, match="solve: the matrix is singular"):
        LA.solve(ng.zeros((2, 2)), ng.ones((2, 1)))
    with pytest.raises(LA.LinAlgError, match="cholesky: the matrix is not positive-definite"):
        LA.cholesky(ng.tensor(np.diag([1.0, -1.0])))
    with pytest.raises(ng.ShapeError, match="do not fit"):
        LA.solve(ng.eye(3), ng.ones((2, 1)))
    with pytest.raises(ng.ShapeError, match="same number of rows"):
        LA.lstsq(ng.ones((4, 2)), ng.ones((3, 1)))
    with pytest.raises(ng.ShapeError, match="length 3"):
        LA.cross(ng.ones((2, 4)), ng.ones((2, 4)))
    with pytest.raises(ng.ShapeError, match="do not chain"):
        LA.multi_dot([ng.ones((2, 3)), ng.ones((2, 3))])
    with pytest.raises(ValueError, match="mode"):
        LA.qr(ng.ones((2, 2)), mode="full")
    with pytest.raises(ValueError, match="UPLO"):
        LA.eigh(ng.eye(2), UPLO="X")
    assert issubclass(LA.LinAlgError, RuntimeError)  # as torch.linalg.LinAlgError


@pytest.mark.parametrize("sa,sb", [((3, 4, 1), (3, 1, 6)), ((3, 4, 5), (3, 5, 1)),
                                   ((2, 3, 4, 1), (2, 3, 1, 2))])
def test_matmul_stacked_outer_products_gradcheck(sa, sb):
    """The matmul VJPs' broadcast-multiply branches (inner size 1) in float64."""
    rng = np.random.default_rng(0)
    ng.gradcheck(ng.matmul, rng.standard_normal(sa), rng.standard_normal(sb), order=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_matmul_with_a_broadcast_operand_matches_numpy(dtype):
    """A stack of vectors against one matrix repeated along the batch axis (stride 0, as vmap
    broadcasts shared weights) takes one product: same values as NumPy's loop."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(1)
    w = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    shared = np.broadcast_to(w, (4, 7, 5))
    rows = (rng.standard_normal((4, 1, 7)) * 3).astype(dtype)
    cols = (rng.standard_normal((4, 5, 1)) * 3).astype(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12}
    for a, b in [(rows, shared), (shared, cols), (rows[:0], shared[:0]), (shared[:0], cols[:0])]:
        got = B.matmul(a, b)
        assert got.shape == np.matmul(a, b).shape and got.dtype == np.matmul(a, b).dtype
        np.testing.assert_allclose(got, np.matmul(a, b), **tol)
    w2 = np.broadcast_to(w, (3, 7, 5))  # batch sizes that differ: NumPy's own rules and error
    with pytest.raises(ValueError):
        B.matmul(rows, w2)
