"""ng.linalg against torch.linalg on inputs at the edges: nearly singular and non-finite
matrices, broadcast and empty batches, low-precision dtypes and PyTorch's call forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nodegrad as ng

LA = ng.linalg
TL = torch.linalg

# singular in exact arithmetic; elimination leaves a pivot of about 1e-16 (PyTorch: info 0)
_NEAR = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])


def test_inv_ex_and_solve_ex_of_a_nearly_singular_matrix_do_not_raise():
    """inv_ex/solve_ex raised LinAlgError (check_errors=False) when LAPACK called the matrix
    singular but elimination found no zero pivot (PyTorch: info 0, a huge finite result)."""
    a = ng.tensor(_NEAR)
    b = ng.tensor(np.ones((3, 1)))
    inv, info = LA.inv_ex(a)
    x, info2 = LA.solve_ex(a, b)
    _, _, want = TL.lu_factor_ex(torch.tensor(_NEAR))
    assert int(info.item()) == int(info2.item()) == int(want.item()) == 0
    assert np.isfinite(inv.numpy()).all() and np.isfinite(x.numpy()).all()
    np.testing.assert_allclose(_NEAR @ x.numpy(), b.numpy(), atol=1e-6)
    # batched, with an exactly singular and a regular matrix beside it
    batch = np.stack([_NEAR, np.zeros((3, 3)), np.eye(3) * 2])
    inv, info = LA.inv_ex(ng.tensor(batch))
    np.testing.assert_array_equal(info.numpy(), TL.inv_ex(torch.tensor(batch)).info.numpy())
    np.testing.assert_allclose(inv.numpy()[2], np.eye(3) / 2)
    assert np.isnan(inv.numpy()[1]).all()


def test_inv_ex_fallback_keeps_the_gradient():
    a = ng.tensor(np.stack([np.eye(2) * 2, np.zeros((2, 2))]), requires_grad=True)
    inv, info = LA.inv_ex(a)
    inv[0].sum().backward()
    np.testing.assert_allclose(a.grad.numpy()[0], -np.full((2, 2), 0.25))
    np.testing.assert_array_equal(a.grad.numpy()[1], 0.0)


def test_cholesky_of_a_nan_matrix_raises_as_pytorch():
    """A NaN in the read triangle gave a NaN factor silently; PyTorch raises (LAPACK's potrf
    treats NaN as not positive-definite) and cholesky_ex reports info."""
    a = np.array([[np.nan, 0.0], [1.0, 2.0]])
    with pytest.raises(TL.LinAlgError):
        TL.cholesky(torch.tensor(a))
    with pytest.raises(LA.LinAlgError, match="cholesky"):
        LA.cholesky(ng.tensor(a))
    got = LA.cholesky_ex(ng.tensor(a)).info
    assert int(got.item()) == int(TL.cholesky_ex(torch.tensor(a)).info.item()) == 1
    b = np.array([[4.0, np.nan], [1.0, 2.0]])  # NaN only in the unread triangle
    np.testing.assert_allclose(LA.cholesky(ng.tensor(b)).numpy(),
                               TL.cholesky(torch.tensor(b)).numpy())


@pytest.mark.parametrize("fn", ["svd", "svdvals", "pinv", "matrix_rank"])
def test_svd_of_non_finite_input_raises_linalg_error(fn):
    """A NaN matrix raised ValueError ('SVD did not converge'); PyTorch raises LinAlgError."""
    a = np.array([[np.nan, 1.0], [1.0, 2.0]])
    with pytest.raises(TL.LinAlgError):
        getattr(TL, fn)(torch.tensor(a))
    with pytest.raises(LA.LinAlgError, match="converge"):
        getattr(LA, fn)(ng.tensor(a))


@pytest.mark.parametrize("fn", [lambda m, a: m.linalg.slogdet(a)[1], lambda m, a: m.logdet(a)])
def test_slogdet_gradient_of_a_singular_matrix_is_a_clear_error(fn):
    """The backward raised 'inv: the matrix is singular' from inside the rule."""
    a = ng.tensor([[1.0, 2.0], [2.0, 4.0]], dtype="float64", requires_grad=True)
    y = fn(ng, a)
    assert y.item() == -np.inf
    with pytest.raises(LA.LinAlgError, match="slogdet.*singular.*infinite"):
        y.backward()


@pytest.mark.parametrize("lu_batch,b_batch", [((2, 1), (4,)), ((3, 1), (1, 4)), ((), (2,)),
                                              ((2,), ())])
@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("left", [True, False])
def test_lu_solve_broadcasts_batches(lu_batch, b_batch, adjoint, left):
    """lu_solve took the batch of B (or of LU), not their broadcast, and failed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal(lu_batch + (3, 3)) + 3 * np.eye(3)
    b = rng.standard_normal(b_batch + ((3, 2) if left else (2, 3)))
    want = TL.lu_solve(*TL.lu_factor(torch.tensor(a)), torch.tensor(b), left=left,
                       adjoint=adjoint)
    got = LA.lu_solve(*LA.lu_factor(ng.tensor(a)), ng.tensor(b), left=left, adjoint=adjoint)
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-10)


@pytest.mark.parametrize("adjoint,left", [(True, True), (False, False), (True, False)])
def test_lu_solve_of_empty_matrices(adjoint, left):
    """argmax of an empty sequence for 0x0 matrices with adjoint=True or left=False."""
    for batch in ((), (3,), (0,)):
        a = np.zeros(batch + (0, 0))
        b = np.zeros(batch + ((0, 2) if left else (2, 0)))
        want = TL.lu_solve(*TL.lu_factor(torch.tensor(a)), torch.tensor(b), left=left,
                           adjoint=adjoint)
        got = LA.lu_solve(*LA.lu_factor(ng.tensor(a)), ng.tensor(b), left=left,
                          adjoint=adjoint)
        assert tuple(got.shape) == tuple(want.shape)


@pytest.mark.parametrize("shape,q", [((6, 4), None), ((4, 6), None), ((2, 5, 3), 8),
                                     ((5, 3), 0)])
def test_svd_lowrank_with_q_above_the_rank_bound(shape, q):
    """The default q=6 raised for any matrix with fewer than 6 rows or columns; PyTorch returns
    min(q, m, n) components."""
    a = np.random.default_rng(1).standard_normal(shape)
    U, S, V = ng.svd_lowrank(ng.tensor(a), q=q)
    tU, tS, tV = torch.svd_lowrank(torch.tensor(a), q=q)
    assert (U.shape, S.shape, V.shape) == (tuple(tU.shape), tuple(tS.shape), tuple(tV.shape))
    if S.shape[-1] == min(shape[-2:]):  # every component: the exact SVD
        np.testing.assert_allclose(S.numpy(), tS.numpy(), rtol=1e-10)
        np.testing.assert_allclose(((U * S.unsqueeze(-2)) @ V.mT).numpy(), a, atol=1e-10)
    with pytest.raises(ValueError, match="q"):
        ng.svd_lowrank(ng.tensor(a), q=-1)
    with pytest.raises(ValueError, match="q"):  # pca_lowrank keeps its bound, as torch's
        ng.pca_lowrank(ng.tensor(a), q=min(shape[-2:]) + 1)


@pytest.mark.parametrize("uplo", ["l", "u"])
def test_eigh_takes_lowercase_uplo(uplo):
    """PyTorch reads UPLO case-insensitively; 'l' and 'u' raised."""
    a = np.random.default_rng(2).standard_normal((2, 4, 4))
    for fn in ("eigvalsh",):
        np.testing.assert_allclose(getattr(LA, fn)(ng.tensor(a), UPLO=uplo).numpy(),
                                   getattr(TL, fn)(torch.tensor(a), UPLO=uplo).numpy(),
                                   atol=1e-12)
    np.testing.assert_allclose(LA.eigh(ng.tensor(a), UPLO=uplo).eigenvalues.numpy(),
                               TL.eigh(torch.tensor(a), UPLO=uplo).eigenvalues.numpy(),
                               atol=1e-12)
    with pytest.raises(ValueError, match="UPLO"):
        LA.eigh(ng.tensor(a), UPLO="X")


@pytest.mark.parametrize("fn", ["inv", "det", "slogdet", "cholesky", "qr", "eigh", "svd",
                                "svdvals", "pinv", "lu_factor", "inv_ex"])
def test_float16_is_refused_by_name(fn):
    """float16 passed the dtype check and failed inside NumPy ('array type float16 is
    unsupported in linalg'), or silently factored; PyTorch's CPU refuses it."""
    a = ng.tensor(np.eye(3) * 2).astype("float16")
    with pytest.raises((RuntimeError, NotImplementedError)):
        getattr(TL, fn)(torch.eye(3, dtype=torch.float16))
    with pytest.raises(ng.errors.DTypeError, match=f"linalg.{fn}.*float16"):
        getattr(LA, fn)(a)


def test_float16_products_stay_allowed():
    """matrix_exp, matrix_power (n >= 0) and lu_unpack are products alone: PyTorch's CPU runs
    them in float16, and so does nodegrad."""
    a = np.array([[0.5, 0.25], [0.0, 0.5]])
    h, t = ng.tensor(a).astype("float16"), torch.tensor(a)
    for got, want in [(LA.matrix_exp(h), TL.matrix_exp(t)),  # (torch's float16 one is off)
                      (LA.matrix_power(h, 3), TL.matrix_power(t, 3))]:
        assert str(got.dtype) == "float16"
        np.testing.assert_allclose(got.numpy().astype(float), want.numpy(), rtol=2e-3)
    with pytest.raises(ng.errors.DTypeError, match="linalg.inv.*float16"):
        LA.matrix_power(h, -1)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (2, 4, 4), (2, 3, 5, 2), (0, 3), (2, 0, 4, 3)])
def test_geqrf_orgqr_ormqr_match_torch(shape):
    """PyTorch's Householder-form QR and its two consumers (missing before)."""
    from nodegrad.linalg_ldl import geqrf, orgqr, ormqr

    rng = np.random.default_rng(3)
    a = rng.standard_normal(shape)
    got, want = geqrf(ng.tensor(a)), torch.geqrf(torch.tensor(a))
    assert got._fields == ("a", "tau")
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape)
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-12)
    m, n = shape[-2:]
    if m >= n:
        np.testing.assert_allclose(orgqr(*got).numpy(), torch.orgqr(*want).numpy(), atol=1e-12)
    for left in (True, False):
        for transpose in (True, False):
            c = rng.standard_normal(shape[:-2] + ((m, 2) if left else (2, m)))
            np.testing.assert_allclose(
                ormqr(*got, ng.tensor(c), left, transpose).numpy(),
                torch.ormqr(*want, torch.tensor(c), left, transpose).numpy(), atol=1e-12)
    x = ng.tensor(a)
    assert x.geqrf().tau.shape == tuple(want.tau.shape)


@pytest.mark.parametrize("left,transpose", [(True, False), (True, True), (False, False),
                                            (False, True)])
def test_ormqr_gradients_match_torch(left, transpose):
    from nodegrad.linalg_ldl import ormqr

    rng = np.random.default_rng(4)
    ta, tt = torch.geqrf(torch.tensor(rng.standard_normal((4, 3))))
    c = rng.standard_normal((4, 2) if left else (2, 4))
    w = np.cos(np.arange(8.0)).reshape(c.shape)
    ts = [ta.clone().requires_grad_(), tt.clone().requires_grad_(),
          torch.tensor(c, requires_grad=True)]
    (torch.ormqr(*ts, left, transpose) * torch.tensor(w)).sum().backward()
    grads = ng.grad(lambda a, t, x: (ormqr(a, t, x, left, transpose) * ng.tensor(w)).sum(),
                    argnums=(0, 1, 2))(*[ng.tensor(t.detach().numpy()) for t in ts])
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g.numpy(), t.grad.numpy(), atol=1e-12)


def test_vecdot_refuses_integers_and_mixed_dtypes_as_torch():
    x = np.arange(3)
    with pytest.raises(RuntimeError):
        TL.vecdot(torch.tensor(x), torch.tensor(x))
    with pytest.raises(ng.errors.DTypeError, match="vecdot.*int64"):
        LA.vecdot(ng.tensor(x), ng.tensor(x))
    with pytest.raises(ng.errors.DTypeError, match="vecdot.*one dtype"):
        LA.vecdot(ng.ones(3, dtype="float32"), ng.ones(3, dtype="float64"))


def test_svd_driver_is_checked():
    """A misspelt driver was ignored silently; PyTorch's names are accepted as hints."""
    a = ng.tensor(np.eye(3))
    for fn in (LA.svd, LA.svdvals):
        with pytest.raises(ValueError, match="driver"):
            fn(a, driver="gesdd")
        fn(a, driver="gesvdj")


@pytest.mark.parametrize("b_shape,a_shape", [((2, 3, 3, 2), (3, 3)), ((3, 2), (2, 3, 3)),
                                             ((2, 1, 3, 2), (4, 3, 3))])
def test_triangular_solve_copies_a_with_the_broadcast_batch(b_shape, a_shape):
    """cloned_coefficient kept A's own shape; PyTorch's has the batch of the solution."""
    rng = np.random.default_rng(5)
    b, a = rng.standard_normal(b_shape), rng.standard_normal(a_shape) + 3 * np.eye(3)
    want = torch.triangular_solve(torch.tensor(b), torch.tensor(a))
    got = ng.triangular_solve(ng.tensor(b), ng.tensor(a))
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape)
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-12)


def test_norm_with_p_none_is_the_two_norm_as_pytorch():
    torch = pytest.importorskip("torch")
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    np.testing.assert_allclose(ng.norm(ng.tensor(a), None).numpy(),
                               torch.norm(torch.tensor(a), None).numpy())
    np.testing.assert_allclose(ng.tensor(a).norm(p=None, dim=1).numpy(),
                               torch.tensor(a).norm(p=None, dim=1).numpy())
