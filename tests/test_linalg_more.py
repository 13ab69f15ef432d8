"""ng.linalg.matmul, householder_product and the LDLᵀ factorisation against torch.linalg:
values and gradients in float64, the same pivots and factors as LAPACK's Bunch-Kaufman, solves,
errors."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
TL = torch.linalg
TOL = {"atol": 1e-10, "rtol": 1e-9}


@pytest.mark.parametrize(("sa", "sb"), [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 4)),
                                        ((2, 1, 3, 4), (5, 4, 2)), ((4, 3), (3, 2))])
def test_matmul_matches_torch(rng, sa, sb):
    compare_with_torch(ng.linalg.matmul, TL.matmul, rng.standard_normal(sa),
                       rng.standard_normal(sb), **TOL)


def test_matmul_refuses_scalars():
    with pytest.raises(ng.ShapeError, match="linalg.matmul: both arguments need at least 1"):
        ng.linalg.matmul(ng.tensor(2.0), ng.tensor([1.0]))


@pytest.mark.parametrize(("shape", "k"), [((5, 3), 2), ((4, 4), 4), ((2, 6, 3), 3),
                                          ((3, 3), 0), ((2, 2, 4, 2), 1)])
def test_householder_product_matches_torch(rng, shape, k):
    A, tau = rng.standard_normal(shape), rng.standard_normal(shape[:-2] + (k,))
    compare_with_torch(ng.linalg.householder_product, TL.householder_product, A, tau, **TOL)


def test_householder_product_rebuilds_q_of_geqrf_and_has_finite_difference_gradients(rng):
    A = rng.standard_normal((5, 3))
    # torch.geqrf's compact form: householder_product of it is QR's Q
    a, tau = torch.geqrf(torch.tensor(A))
    Q = ng.linalg.householder_product(ng.tensor(a.numpy()), ng.tensor(tau.numpy()))
    np.testing.assert_allclose(Q.numpy(), TL.qr(torch.tensor(A)).Q.numpy(), atol=1e-12)
    assert ng.gradcheck(ng.linalg.householder_product, A, rng.standard_normal(3))
    assert ng.gradcheck(ng.linalg.householder_product, A, rng.standard_normal(2), order=2)


def test_householder_product_errors():
    with pytest.raises(ng.ShapeError, match=r"householder_product: input.shape\[-2\] must"):
        ng.linalg.householder_product(ng.zeros(2, 3), ng.zeros(1))
    with pytest.raises(ng.ShapeError, match=r"input.shape\[-1\] must be >= tau"):
        ng.linalg.householder_product(ng.zeros(4, 2), ng.zeros(3))
    with pytest.raises(ng.DTypeError, match="householder_product: expected a float"):
        ng.linalg.householder_product(ng.tensor([[1, 2], [3, 4]]), ng.zeros(1))


def _symmetric(rng, shape, kind):
    a = rng.standard_normal(shape)
    a = a + np.swapaxes(a, -1, -2)
    if kind == "small_diag":  # forces 2x2 pivots and interchanges
        idx = np.arange(shape[-1])
        a[..., idx, idx] *= 1e-3
    if kind == "upper_junk":  # only the lower triangle is read
        a = np.tril(a) + np.triu(rng.standard_normal(shape), 1)
    return a


@pytest.mark.parametrize("kind", ["plain", "small_diag", "upper_junk"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (5, 5), (3, 7, 7), (70, 70)])
def test_ldl_factor_equals_lapack_pivots_and_factors(rng, shape, kind):
    A = _symmetric(rng, shape, kind)
    LD, piv = ng.linalg.ldl_factor(ng.tensor(A))
    tLD, tpiv = TL.ldl_factor(torch.tensor(A))
    np.testing.assert_array_equal(piv.numpy(), tpiv.numpy())
    assert piv.dtype == np.int32 and LD.dtype == np.float64
    np.testing.assert_allclose(LD.numpy(), tLD.numpy(), atol=1e-11, rtol=1e-10)
    assert not LD.requires_grad


def test_ldl_factor_float32_and_2x2_blocks_pivot_as_lapack():
    A = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]], np.float32)
    LD, piv = ng.linalg.ldl_factor(ng.tensor(A))
    tLD, tpiv = TL.ldl_factor(torch.tensor(A))
    assert (piv.numpy() < 0).any()  # a 2x2 block was taken
    np.testing.assert_array_equal(piv.numpy(), tpiv.numpy())
    np.testing.assert_allclose(LD.numpy(), tLD.numpy(), rtol=1e-5, atol=1e-6)
    assert LD.dtype == np.float32


def test_ldl_factor_ex_reports_singular_pivots_and_ldl_factor_raises():
    A = np.zeros((2, 3, 3))
    A[1] = np.diag([1.0, 0.0, 2.0])
    out = ng.linalg.ldl_factor_ex(ng.tensor(A))
    ref = TL.ldl_factor_ex(torch.tensor(A))
    for got, want in zip(out, ref):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    with pytest.raises(ng.linalg.LinAlgError, match="ldl_factor: .*zero pivot at position 1"):
        ng.linalg.ldl_factor(ng.tensor(A))
    with pytest.raises(ng.linalg.LinAlgError, match="ldl_factor_ex"):
        ng.linalg.ldl_factor_ex(ng.tensor(A), check_errors=True)
    with pytest.raises(ng.ShapeError, match="ldl_factor_ex: A must be a batch of square"):
        ng.linalg.ldl_factor_ex(ng.zeros(2, 3))


@pytest.mark.parametrize(("sa", "sb"), [((4, 4), (4, 2)), ((2, 5, 5), (5, 1)),
                                        ((6, 6), (3, 6, 2)), ((1, 1), (1, 3))])
def test_ldl_solve_matches_torch_and_solves(rng, sa, sb):
    A = _symmetric(rng, sa, "small_diag")
    B = rng.standard_normal(sb)
    LD, piv = ng.linalg.ldl_factor(ng.tensor(A))
    tLD, tpiv = TL.ldl_factor(torch.tensor(A))
    X = ng.linalg.ldl_solve(LD, piv, ng.tensor(B))
    tX = TL.ldl_solve(tLD, tpiv, torch.tensor(B))
    np.testing.assert_allclose(X.numpy(), tX.numpy(), atol=1e-9, rtol=1e-9)
    np.testing.assert_allclose(A @ X.numpy(), np.broadcast_to(B, X.shape), atol=1e-9)


def test_ldl_solve_errors(rng):
    LD, piv = ng.linalg.ldl_factor(ng.tensor(_symmetric(rng, (3, 3), "plain")))
    with pytest.raises(ng.ShapeError, match="ldl_solve: B must have 3 rows"):
        ng.linalg.ldl_solve(LD, piv, ng.zeros(2, 1, dtype="float64"))
    with pytest.raises(ng.DTypeError, match="ldl_solve: pivots must be an integer"):
        ng.linalg.ldl_solve(LD, ng.tensor([1.0, 2.0, 3.0]), ng.zeros(3, 1, dtype="float64"))
    with pytest.raises(ValueError, match="ldl_solve: pivots must be LAPACK's"):
        ng.linalg.ldl_solve(LD, ng.tensor(np.array([0, 2, 3], np.int32)),
                            ng.zeros(3, 1, dtype="float64"))
