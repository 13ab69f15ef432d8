"""LU with partial pivoting and the other compositions of torch.linalg, against torch."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import LinAlgError, ShapeError

torch = pytest.importorskip("torch")
R = np.random.default_rng(0)
SHAPES = [(4, 4), (2, 3, 3), (5, 3), (3, 5), (1, 1)]


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.asarray(a.detach().numpy() if hasattr(a, "detach") else a),
                               b.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lu_factor_lu_and_unpack_equal_torch(shape):
    A = R.standard_normal(shape)
    LU, piv = ng.linalg.lu_factor(ng.tensor(A))
    tLU, tpiv = torch.linalg.lu_factor(torch.tensor(A))
    close(LU, tLU)
    assert piv.dtype == ng.int32 and (piv.numpy() == tpiv.numpy()).all()
    for got, want in zip(ng.linalg.lu(ng.tensor(A)), torch.linalg.lu(torch.tensor(A))):
        close(got, want)
    for got, want in zip(ng.linalg.lu_unpack(LU, piv), torch.lu_unpack(tLU, tpiv)):
        close(got, want)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_lu_gradients_equal_torch(shape):
    A = R.standard_normal(shape)
    W = R.standard_normal(shape)
    x, t = ng.tensor(A, requires_grad=True), torch.tensor(A, requires_grad=True)
    _, L_, U = ng.linalg.lu(x)
    _, tL, tU = torch.linalg.lu(t)
    (L_.sum() + (U ** 2).sum()).backward()
    (tL.sum() + (tU ** 2).sum()).backward()
    close(x.grad, t.grad, 1e-10)
    x, t = ng.tensor(A, requires_grad=True), torch.tensor(A, requires_grad=True)
    (ng.linalg.lu_factor(x).LU * ng.tensor(W)).sum().backward()
    (torch.linalg.lu_factor(t).LU * torch.tensor(W)).sum().backward()
    close(x.grad, t.grad, 1e-10)


def test_lu_gradcheck_second_order_and_jit():
    A = R.standard_normal((3, 3)) + 2 * np.eye(3)
    assert ng.gradcheck(lambda a: ng.linalg.lu_factor(a).LU, ng.tensor(A), order=2)
    f = ng.jit(lambda a: ng.linalg.lu_factor(a))
    for _ in range(2):  # a replay picks each call's pivots
        B = R.standard_normal((3, 3))
        got, want = f(ng.tensor(B)), torch.linalg.lu_factor(torch.tensor(B))
        close(got.LU, want.LU)
        assert (got.pivots.numpy() == want.pivots.numpy()).all()
    per = ng.vmap(lambda a: ng.linalg.lu_factor(a).LU)(ng.tensor(R.standard_normal((4, 3, 3))))
    assert per.shape == (4, 3, 3)


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("adjoint", [False, True])
def test_lu_solve_equals_torch_in_values_and_gradients(left, adjoint):
    A, B = R.standard_normal((2, 4, 4)), R.standard_normal((2, 4, 3))
    B = B if left else np.swapaxes(B, -1, -2)
    a, b = ng.tensor(A, requires_grad=True), ng.tensor(B, requires_grad=True)
    ta, tb = torch.tensor(A, requires_grad=True), torch.tensor(B, requires_grad=True)
    x = ng.linalg.lu_solve(*ng.linalg.lu_factor(a), b, left=left, adjoint=adjoint)
    tx = torch.linalg.lu_solve(*torch.linalg.lu_factor(ta), tb, left=left, adjoint=adjoint)
    close(x, tx, 1e-10)
    (x ** 2).sum().backward()
    (tx ** 2).sum().backward()
    close(a.grad, ta.grad, 1e-8)
    close(b.grad, tb.grad, 1e-8)


def test_torch_lu_names_and_methods():
    A, b = R.standard_normal((3, 3)), R.standard_normal((3, 2))
    LU, piv, info = ng.lu(ng.tensor(A), get_infos=True)
    tLU, tpiv = torch.linalg.lu_factor(torch.tensor(A))
    close(LU, tLU)
    assert info.item() == 0
    np.testing.assert_allclose(ng.lu_solve(ng.tensor(b), LU, piv).numpy(),
                               np.linalg.solve(A, b), rtol=1e-10)
    np.testing.assert_allclose(ng.tensor(b).lu_solve(*ng.tensor(A).lu()).numpy(),
                               np.linalg.solve(A, b), rtol=1e-10)


def test_singular_matrices_give_infos_as_torch():
    S = np.array([[1.0, 2.0], [2.0, 4.0]])
    _, _, info = ng.linalg.lu_factor_ex(ng.tensor(S))
    assert info.item() == torch.linalg.lu_factor_ex(torch.tensor(S)).info.item() == 2
    with pytest.raises(LinAlgError, match="zero pivot"):
        ng.linalg.lu_factor_ex(ng.tensor(S), check_errors=True)
    inv, info = ng.linalg.inv_ex(ng.tensor(S))
    assert info.item() == torch.linalg.inv_ex(torch.tensor(S)).info.item()
    assert np.isnan(inv.numpy()).all()
    res, info = ng.linalg.solve_ex(ng.tensor(np.stack([S, np.eye(2)])), ng.ones(2, 2, 1,
                                                                               dtype=ng.float64))
    assert info.numpy().tolist() == [2, 0] and np.isnan(res.numpy()[0]).all()
    np.testing.assert_array_equal(res.numpy()[1], np.ones((2, 1)))
    N = np.array([[1.0, 2.0], [2.0, 1.0]])
    L_, info = ng.linalg.cholesky_ex(ng.tensor(N))
    assert info.item() == torch.linalg.cholesky_ex(torch.tensor(N)).info.item() == 2
    good = ng.linalg.cholesky_ex(ng.tensor(np.eye(2) * 4))
    assert good.info.item() == 0 and good.L.numpy()[0, 0] == 2


def test_rank_cond_vecdot_diagonal_vander_tensor_ops_equal_torch():
    M = R.standard_normal((2, 3, 3))
    low = np.ones((3, 3))
    assert ng.linalg.matrix_rank(ng.tensor(low)).item() == 1
    np.testing.assert_array_equal(ng.linalg.matrix_rank(ng.tensor(M)).numpy(),
                                  torch.linalg.matrix_rank(torch.tensor(M)).numpy())
    for p in (None, 2, -2, "fro", "nuc", np.inf, -np.inf, 1, -1):
        close(ng.linalg.cond(ng.tensor(M), p), torch.linalg.cond(torch.tensor(M), p), 1e-10)
    x, y = R.standard_normal((4, 3)), R.standard_normal((3,))
    close(ng.linalg.vecdot(ng.tensor(x), ng.tensor(y)),
          torch.linalg.vecdot(torch.tensor(x), torch.tensor(y)))
    close(ng.linalg.diagonal(ng.tensor(M), offset=1),
          torch.linalg.diagonal(torch.tensor(M), offset=1))
    v = R.standard_normal((2, 3))
    close(ng.linalg.vander(ng.tensor(v), N=4), torch.linalg.vander(torch.tensor(v), N=4))
    T = R.standard_normal((6, 2, 3))
    close(ng.linalg.tensorinv(ng.tensor(T), 1), torch.linalg.tensorinv(torch.tensor(T), 1),
          1e-10)
    A4, B4 = R.standard_normal((2, 3, 6)), R.standard_normal((2, 3))
    close(ng.linalg.tensorsolve(ng.tensor(A4), ng.tensor(B4)),
          torch.linalg.tensorsolve(torch.tensor(A4), torch.tensor(B4)), 1e-10)
    with pytest.raises(ShapeError, match="tensorinv"):
        ng.linalg.tensorinv(ng.tensor(R.standard_normal((2, 3))), 1)
    with pytest.raises(ShapeError, match="lu_solve"):
        ng.linalg.lu_solve(*ng.linalg.lu_factor(ng.tensor(M)), ng.ones(2, 2, 1,
                                                                       dtype=ng.float64))
