"""ng.linalg's options and call forms against torch.linalg: the triangle that ``UPLO``,
``upper`` and ``hermitian`` read (on non-symmetric input), pinv's and matrix_rank's tolerances,
lstsq's fields per driver, linalg.norm's ord/dim rules, and empty inputs; values and gradients
in float64, finite differences where the gradient is at a rank-deficient point."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
LA, TL = ng.linalg, torch.linalg
TOL = {"atol": 1e-10, "rtol": 1e-9}


def _spd_with_junk(rng, n, upper, batch=()):
    """A matrix whose ``upper`` (else lower) triangle is an SPD matrix's, the other one junk."""
    a = rng.standard_normal(batch + (n, n))
    spd = a @ np.swapaxes(a, -1, -2) + n * np.eye(n)
    junk = 9 * rng.standard_normal(batch + (n, n))
    if upper:
        return np.triu(spd) + np.tril(junk, -1)
    return np.tril(spd) + np.triu(junk, 1)


# --- the triangle read ----------------------------------------------------------------------
@pytest.mark.parametrize("upper", [False, True])
def test_cholesky_reads_the_triangle_upper_names(rng, upper):
    a = _spd_with_junk(rng, 4, upper, (2,))
    compare_with_torch(lambda t: LA.cholesky(t, upper=upper),
                       lambda t: TL.cholesky(t, upper=upper), a, **TOL)
    compare_with_torch(lambda t: LA.cholesky_ex(t, upper=upper).L,
                       lambda t: TL.cholesky_ex(t, upper=upper).L, a, **TOL)
    compare_with_torch(lambda t: ng.cholesky(t, upper=upper),
                       lambda t: torch.cholesky(t, upper=upper), a[0], **TOL)


@pytest.mark.parametrize("upper", [False, True])
def test_cholesky_ex_info_comes_from_the_triangle_read(rng, upper):
    a = _spd_with_junk(rng, 4, upper, (2,))
    a[1, 2, 2] = -5.0  # the third leading minor of the second matrix is not positive definite
    got, want = LA.cholesky_ex(ng.tensor(a), upper=upper), TL.cholesky_ex(torch.tensor(a),
                                                                         upper=upper)
    np.testing.assert_array_equal(got.info.numpy(), want.info.numpy())
    assert want.info.tolist() == [0, 3]
    np.testing.assert_allclose(got.L.numpy()[0], want.L.numpy()[0], **TOL)


@pytest.mark.parametrize("uplo", ["L", "U"])
def test_eigh_and_eigvalsh_read_the_uplo_triangle(rng, uplo):
    a = rng.standard_normal((2, 5, 5))  # not symmetric: only the UPLO triangle counts
    compare_with_torch(lambda t: LA.eigvalsh(t, UPLO=uplo),
                       lambda t: TL.eigvalsh(t, UPLO=uplo), a, **TOL)
    w, v = LA.eigh(ng.tensor(a), UPLO=uplo)
    tri = np.tril(a) if uplo == "L" else np.triu(a)
    sym = tri + np.swapaxes(tri, -1, -2) - np.eye(5) * np.diagonal(a, 0, -2, -1)[..., None, :]
    rebuilt = (v.numpy() * w.numpy()[..., None, :]) @ np.swapaxes(v.numpy(), -1, -2)
    np.testing.assert_allclose(rebuilt, sym, atol=1e-12)
    # eigenvectors are unique up to sign (which LAPACK builds choose differently): compare
    # values and gradients of a sign-free function of them
    compare_with_torch(lambda t: (lambda r: r[1] * r[1] + r[0][..., None, :])(LA.eigh(t, uplo)),
                       lambda t: (lambda r: r[1] * r[1] + r[0][..., None, :])(TL.eigh(t, uplo)),
                       a, **TOL)


def test_pinv_hermitian_reads_the_lower_triangle(rng):
    a = rng.standard_normal((2, 5, 5))  # not symmetric
    # the values are PyTorch's; the gradient is the true one, none for the unread upper
    # triangle, which PyTorch's backward gives the general pinv's
    compare_with_torch(lambda t: LA.pinv(t, hermitian=True),
                       lambda t: TL.pinv(t.tril() + t.tril(-1).mT, hermitian=True), a, **TOL)
    x = ng.tensor(a, requires_grad=True)
    LA.pinv(x, hermitian=True).sum().backward()
    assert not np.triu(x.grad.numpy(), 1).any()
    assert ng.gradcheck(lambda t: LA.pinv(t, hermitian=True), a[0])
    s = a + np.swapaxes(a, -1, -2)
    compare_with_torch(lambda t: LA.pinv(t, hermitian=True),
                       lambda t: TL.pinv(t.tril() + t.tril(-1).mT, hermitian=True), s, **TOL)
    np.testing.assert_allclose(LA.pinv(ng.tensor(s), hermitian=True).numpy(),
                               np.linalg.pinv(s), atol=1e-12)
    assert ng.gradcheck(lambda t: LA.pinv(t + t.mT, hermitian=True), a[0], order=2)


def test_pinv_hermitian_rank_deficient_matches_torch_and_finite_differences(rng):
    v = rng.standard_normal((5, 2))
    compare_with_torch(lambda t: LA.pinv(t @ t.mT, hermitian=True),
                       lambda t: TL.pinv(t @ t.mT, hermitian=True), v, **TOL)
    assert ng.gradcheck(lambda t: LA.pinv(t @ t.mT, hermitian=True), v, order=2)
    with pytest.raises(ng.ShapeError, match="pinv: A must be square"):
        LA.pinv(ng.zeros(2, 3), hermitian=True)


def test_matrix_rank_hermitian_reads_the_lower_triangle():
    a = np.array([[0.0, 5.0], [0.0, 0.0]])  # rank 1, but its lower triangle is 0
    assert int(LA.matrix_rank(ng.tensor(a))) == 1
    assert int(LA.matrix_rank(ng.tensor(a), hermitian=True)) == \
        int(TL.matrix_rank(torch.tensor(a), hermitian=True)) == 0
    b = np.array([[1.0, 0.0], [0.0, -3.0]])  # negative eigenvalues count by |λ|
    assert int(LA.matrix_rank(ng.tensor(b), hermitian=True)) == 2


# --- pinv's and matrix_rank's tolerances ----------------------------------------------------
_AT, _RT = np.array([0.0, 0.5, 3.0]), np.array([0.4, 0.0, 0.1])


@pytest.mark.parametrize("form", ["rcond", "rcond_kw", "rcond_hermitian", "rtol_none", "atol",
                                  "atol_rtol", "atol_tensor", "rtol_tensor_hermitian",
                                  "both_tensors", "rcond_tensor", "atol_0d", "broadcast"])
def test_pinv_call_forms_match_torch(rng, form):
    a = rng.standard_normal((3, 4, 4))

    def run(mod, f):
        t = mod.tensor
        forms = {
            "rcond": lambda x: f(x, 0.3), "rcond_kw": lambda x: f(x, rcond=0.3),
            "rcond_hermitian": lambda x: f(x, 0.3, True),
            "rtol_none": lambda x: f(x, rtol=None), "atol": lambda x: f(x, atol=0.5),
            "atol_rtol": lambda x: f(x, atol=0.5, rtol=0.3),
            "atol_tensor": lambda x: f(x, atol=t(_AT)),
            "rtol_tensor_hermitian": lambda x: f(x, rtol=t(_RT), hermitian=True),
            "both_tensors": lambda x: f(x, atol=t(_AT), rtol=t(_RT)),
            "rcond_tensor": lambda x: f(x, t(_RT)), "atol_0d": lambda x: f(x, atol=t(0.5)),
            "broadcast": lambda x: f(x[0], rtol=t(_RT)),
        }
        return forms[form]

    # hermitian=True reads the lower triangle; PyTorch's backward then gives the unread upper
    # triangle the general pinv's gradient, so its twin builds the symmetric matrix first
    compare_with_torch(run(ng, LA.pinv), run(torch, TL.pinv) if "hermitian" not in form else
                       (lambda x: run(torch, TL.pinv)(x.tril() + x.tril(-1).mT)), a, **TOL)


def test_pinv_refuses_rcond_with_atol_and_keeps_empty_shapes(rng):
    with pytest.raises(TypeError, match="linalg.pinv: give rcond"):
        LA.pinv(ng.zeros(2, 2), 0.1, atol=0.2)
    for shape in ((3, 0, 4), (3, 4, 0), (0, 4, 4)):
        x = np.zeros(shape)
        got = LA.pinv(ng.tensor(x), atol=ng.tensor(_AT[:shape[0]]))
        assert got.shape == tuple(TL.pinv(torch.tensor(x)).shape)
    assert LA.pinv(ng.zeros(3, 0, 0), hermitian=True).shape == (3, 0, 0)


@pytest.mark.parametrize(("sa", "sb"), [((3, 1), (3, 1)), ((3, 2), (3, 2)), ((3, 1), (50, 1))])
def test_pinv_gradient_at_rank_deficient_input_is_torchs_and_exact(rng, sa, sb):
    """pinv(a bᵀ) has rank < min(m, n): the constant-rank rule is the true derivative there."""
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    compare_with_torch(lambda x, y: LA.pinv(x @ y.mT), lambda x, y: TL.pinv(x @ y.mT), a, b,
                       **TOL)
    assert ng.gradcheck(lambda x, y: LA.pinv(x @ y.mT), a, b)


def test_matrix_rank_call_forms_match_torch(rng):
    a = rng.standard_normal((3, 4, 4))
    a[1] = np.triu(a[1])
    a[1, 2, 2] = 0.0
    cases = [((), {}), ((), {"hermitian": True}), ((0.5,), {}), ((0.5, True), {}),
             ((), {"atol": 1.0}), ((), {"rtol": 0.3}), ((), {"atol": 1.0, "rtol": 0.1}),
             ((), {"atol": "T"}), ((), {"rtol": "T", "hermitian": True})]
    for args, kw in cases:
        nk = {k: ng.tensor(_AT) if v == "T" else v for k, v in kw.items()}
        tk = {k: torch.tensor(_AT) if v == "T" else v for k, v in kw.items()}
        got = LA.matrix_rank(ng.tensor(a), *args, **nk)
        want = TL.matrix_rank(torch.tensor(a), *args, **tk)
        assert got.dtype == ng.int64
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=f"{args} {kw}")
    f32 = a.astype(np.float32)
    np.testing.assert_array_equal(LA.matrix_rank(ng.tensor(f32), atol=ng.tensor(_AT)).numpy(),
                                  TL.matrix_rank(torch.tensor(f32), atol=torch.tensor(_AT)))
    assert LA.matrix_rank(ng.zeros(2, 0, 3)).numpy().tolist() == [0, 0]


# --- lstsq ----------------------------------------------------------------------------------
@pytest.mark.parametrize("driver", [None, "gels", "gelsy", "gelsd", "gelss"])
@pytest.mark.parametrize(("sa", "sb"), [((5, 3), (5, 2)), ((2, 5, 3), (2, 5, 2)),
                                        ((3, 5), (3, 2)), ((5, 3), (5,)), ((2, 5, 3), (2, 5)),
                                        ((4, 0), (4, 2)), ((0, 3), (0, 2))])
def test_lstsq_fields_per_driver_match_torch(rng, driver, sa, sb):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    if driver == "gels" and 0 in sa:
        return  # PyTorch's gels gives zero residuals for n = 0 (LAPACK leaves B untouched)
    got = LA.lstsq(ng.tensor(a), ng.tensor(b), driver=driver)
    want = TL.lstsq(torch.tensor(a), torch.tensor(b), driver=driver)
    for name, g, w in zip(got._fields, got, want):
        assert g.shape == tuple(w.shape), name
        assert str(g.dtype) == str(w.dtype).replace("torch.", ""), name
        np.testing.assert_allclose(g.numpy(), w.numpy(), **TOL, err_msg=name)


def test_lstsq_rank_deficient_and_rcond(rng):
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    a[:, 2] = a[:, 1]
    for driver in ("gelsy", "gelsd", "gelss"):  # rank 2 < n: no residuals
        got = LA.lstsq(ng.tensor(a), ng.tensor(b), driver=driver)
        want = TL.lstsq(torch.tensor(a), torch.tensor(b), driver=driver)
        assert got.residuals.shape == (0,) == tuple(want.residuals.shape)
        assert int(got.rank) == int(want.rank) == 2
        np.testing.assert_allclose(got.solution.numpy(), want.solution.numpy(), **TOL)
    c = rng.standard_normal((5, 3))
    got = LA.lstsq(ng.tensor(c), ng.tensor(b), rcond=0.5, driver="gels")  # gels ignores rcond
    want = TL.lstsq(torch.tensor(c), torch.tensor(b), rcond=0.5, driver="gels")
    np.testing.assert_allclose(got.solution.numpy(), want.solution.numpy(), **TOL)
    np.testing.assert_allclose(got.residuals.numpy(), want.residuals.numpy(), **TOL)


@pytest.mark.parametrize("driver", ["gels", "gelsd"])
def test_lstsq_gradients_of_solution_and_residuals_match_torch(rng, driver):
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))

    def f(mod):
        return lambda x, y: (lambda r: r.solution.sum(0) + r.residuals)(
            mod.lstsq(x, y, driver=driver))

    compare_with_torch(f(LA), f(TL), a, b, **TOL)


# --- norms ----------------------------------------------------------------------------------
_INF = float("inf")


@pytest.mark.parametrize(("shape", "args", "kw"), [
    ((5,), (None,), {}), ((5,), (), {"dim": 0, "ord": None}), ((3, 4), (), {}),
    ((3, 4), (2,), {}), ((3, 4), (-2,), {}), ((3, 4), (1,), {}), ((3, 4), (-1,), {}),
    ((3, 4), (_INF,), {}), ((3, 4), (-_INF,), {}), ((3, 4), ("fro",), {}),
    ((3, 4), ("nuc",), {}), ((2, 3, 4), (), {}), ((2, 3, 4), (None, (1, 2)), {}),
    ((2, 3, 4), (2, (0, 2)), {"keepdim": True}), ((2, 3, 4), (3, 1), {"keepdim": True}),
    ((2, 3, 4), (0.5, -1), {}), ((3, 4), (), {"keepdim": True}), ((5,), (3,), {}),
    ((3, 4), (None, 1), {})])
def test_linalg_norm_follows_torch_linalg_norm(rng, shape, args, kw):
    compare_with_torch(lambda t: LA.norm(t, *args, **kw), lambda t: TL.norm(t, *args, **kw),
                       rng.standard_normal(shape), **TOL)


def test_linalg_norm_errors_and_dtype(rng):
    with pytest.raises(ng.ShapeError, match="linalg.norm: with ord and no dim, A must be 1-d"):
        LA.norm(ng.zeros(2, 2, 2), 2)
    with pytest.raises(ng.ShapeError, match="linalg.norm: dim must"):
        LA.norm(ng.zeros(2, 2, 2), dim=(0, 1, 2))
    with pytest.raises(ValueError, match="linalg.norm: ord 'fro' is a matrix norm"):
        LA.norm(ng.zeros(2, 2), "fro", 0)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for f, tf in ((LA.norm, TL.norm), (LA.vector_norm, TL.vector_norm),
                  (LA.matrix_norm, TL.matrix_norm)):
        got = f(ng.tensor(x), dtype=ng.float64)
        want = tf(torch.tensor(x), dtype=torch.float64)
        assert got.dtype == ng.float64
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


# --- empty and degenerate inputs ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 0), (2, 0, 0), (0, 3, 3)])
def test_ldl_factor_and_solve_of_empty_matrices(shape):
    a = np.zeros(shape)
    got, want = LA.ldl_factor_ex(ng.tensor(a)), TL.ldl_factor_ex(torch.tensor(a))
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        assert str(g.dtype) == str(w.dtype).replace("torch.", "")
    assert LA.ldl_factor(ng.tensor(a)).LD.shape == shape
    b = np.zeros(shape[:-1] + (2,))
    x = LA.ldl_solve(got.LD, got.pivots, ng.tensor(b))
    assert x.shape == tuple(TL.ldl_solve(want.LD, want.pivots, torch.tensor(b)).shape)


@pytest.mark.parametrize(("sa", "st"), [((0, 0), (0,)), ((5, 5), (0,)), ((2, 5, 3), (2, 0))])
def test_householder_product_without_reflectors_has_zero_gradients(rng, sa, st):
    a = ng.tensor(rng.standard_normal(sa), requires_grad=True)
    tau = ng.tensor(rng.standard_normal(st), requires_grad=True)
    q = LA.householder_product(a, tau)
    np.testing.assert_array_equal(
        q.numpy(), TL.householder_product(torch.tensor(a.numpy()), torch.tensor(tau.numpy())))
    (q * 2.0).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.zeros(sa))
    assert tau.grad.shape == st


def test_vander_of_a_0d_tensor_is_one_point():
    for x in (2.0, 2):
        got, want = LA.vander(ng.tensor(x), N=3), TL.vander(torch.tensor(x), N=3)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert got.shape == (1, 3) and str(got.dtype) == str(want.dtype).replace("torch.", "")


def test_torch_lu_call_forms(rng):
    a = rng.standard_normal((4, 5))
    lu, piv, info = ng.lu(ng.tensor(a), True, True, out=None)
    tlu, tpiv, tinfo = torch.lu(torch.tensor(a), True, True)
    np.testing.assert_allclose(lu.numpy(), tlu.numpy(), **TOL)
    np.testing.assert_array_equal(piv.numpy(), tpiv.numpy())
    np.testing.assert_array_equal(info.numpy(), tinfo.numpy())
    with pytest.raises(TypeError, match="lu: out= is not supported"):
        ng.lu(ng.tensor(a), out=(ng.zeros(4, 5), ng.zeros(4)))


def test_matrix_power_zero_is_connected_one_is_a_copy_and_integers_work(rng):
    a = rng.standard_normal((2, 3, 3))
    for n in (0, 1):
        compare_with_torch(lambda t: LA.matrix_power(t, n),  # noqa: B023
                           lambda t: TL.matrix_power(t, n), a, **TOL)  # noqa: B023
    x = ng.tensor(a, requires_grad=True)
    LA.matrix_power(x, 0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros_like(a))
    assert LA.matrix_power(x, 1) is not x
    xi = np.array([[1, 2], [3, 4]])
    for n in (0, 3):
        got = LA.matrix_power(ng.tensor(xi), n)
        assert got.dtype == ng.int64
        np.testing.assert_array_equal(got.numpy(), TL.matrix_power(torch.tensor(xi), n))
    with pytest.raises(ng.DTypeError, match="matrix_power: a negative power inverts A"):
        LA.matrix_power(ng.tensor(xi), -1)
