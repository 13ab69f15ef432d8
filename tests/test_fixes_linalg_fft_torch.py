"""ng.linalg and ng.fft against PyTorch: c2r sizes, sample frequencies, argument checks, the
complex Cholesky and Hermitian pinv gradients, lu_factor on singular input, PyTorch's keyword
names and lstsq's out=."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)


def _c(shape):
    return RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)


def _hpd(n, batch=(), dtype=np.complex128):
    x = _c(batch + (n, n)) if np.dtype(dtype).kind == "c" else RNG.standard_normal(batch + (n, n))
    return (x @ np.conj(np.swapaxes(x, -1, -2)) + n * np.eye(n)).astype(dtype)


def _grads(fn, a, w):
    """d Re<w, fn(A)> / dA from torch and from nodegrad."""
    t = torch.tensor(a, requires_grad=True)
    r = fn(torch, t) * torch.tensor(np.conj(w))
    (r.real if r.is_complex() else r).sum().backward()
    n = ng.tensor(a, requires_grad=True)
    r = fn(ng, n) * ng.tensor(np.conj(w))
    (ng.real(r) if r.dtype.kind == "c" else r).sum().backward()
    return t.grad.numpy(), n.grad.numpy()


# --- fft ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,s,dim", [
    ("irfftn", (-1,), None), ("irfftn", (-1, -1), None), ("irfftn", (4, -1), (1, 0)),
    ("irfft2", (3, -1), (-2, -1)), ("hfftn", (-1,), None), ("hfft2", (4, -1), (-2, -1)),
    ("hfftn", (-1, 6), None)])
def test_c2r_minus_one_is_default_size(name, s, dim):
    x = _c((3, 5))
    kw = {"s": s} if dim is None else {"s": s, "dim": dim}
    want = getattr(torch.fft, name)(torch.tensor(x), **kw).numpy()
    got = getattr(ng.fft, name)(ng.tensor(x), **kw).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7])
@pytest.mark.parametrize("d", [1.0, 0.5, 0.0, -0.0, -2.0])
def test_fftfreq_zero_spacing_and_empty(n, d):
    for f in ("fftfreq", "rfftfreq"):
        want = getattr(torch.fft, f)(n, d).numpy()
        got = getattr(ng.fft, f)(n, d).numpy()
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["fft", "ifft", "rfft", "irfft", "hfft", "ihfft"])
def test_1d_n_minus_one_refused(name):
    x = RNG.standard_normal(5)
    with pytest.raises(RuntimeError, match=r"Invalid number of data points \(-1\)"):
        getattr(torch.fft, name)(torch.tensor(x), n=-1)
    with pytest.raises(ValueError, match=r"Invalid number of data points \(-1\)"):
        getattr(ng.fft, name)(ng.tensor(x), n=-1)


@pytest.mark.parametrize("name", ["rfftn", "irfftn", "hfftn", "ihfftn", "rfft2", "irfft2"])
@pytest.mark.parametrize("kw", [{"dim": ()}, {"s": (), "dim": ()}])
def test_half_transforms_need_an_axis(name, kw):
    x = RNG.standard_normal((3, 5))
    with pytest.raises(RuntimeError, match="must transform at least one axis"):
        getattr(torch.fft, name)(torch.tensor(x), **kw)
    with pytest.raises(ValueError, match="must transform at least one axis"):
        getattr(ng.fft, name)(ng.tensor(x), **kw)


# --- cholesky ----------------------------------------------------------------------------------
def test_cholesky_complex_gradient_keeps_imaginary_diagonal():
    t = torch.tensor([[4.0 + 0j]], requires_grad=True)
    torch.linalg.cholesky(t)[0, 0].imag.backward()
    n = ng.tensor(np.array([[4.0 + 0j]]), requires_grad=True)
    ng.linalg.cholesky(n)[0, 0].imag.backward()
    np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy())
    np.testing.assert_allclose(n.grad.numpy(), [[0.25j]])


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.float64])
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("ex", [False, True])
def test_cholesky_gradient_as_torch(dtype, batch, upper, ex):
    a = _hpd(3, batch, dtype)
    w = (_c(a.shape) if np.dtype(dtype).kind == "c" else RNG.standard_normal(a.shape)).astype(dtype)

    def fn(lib, x):
        return lib.linalg.cholesky_ex(x, upper=upper).L if ex else \
            lib.linalg.cholesky(x, upper=upper)

    want, got = _grads(fn, a, w)
    tol = 1e-4 if dtype == np.complex64 else 1e-10
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    np.testing.assert_allclose(fn(ng, ng.tensor(a)).numpy(), fn(torch, torch.tensor(a)).numpy(),
                               atol=tol, rtol=tol)


# --- pinv(hermitian=True) ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("garbage", [False, True])
def test_pinv_hermitian_gradient_is_the_read_triangle_s(dtype, batch, garbage):
    """hermitian=True reads the lower triangle: its gradient is the derivative of what is
    computed (PyTorch's through the symmetric matrix the triangle stands for; PyTorch's own
    backward gives the unread triangle the general pinv's, which finite differences do not)."""
    x = (_c(batch + (3, 3)) if dtype == np.complex128 else
         RNG.standard_normal(batch + (3, 3)))
    a = x + np.conj(np.swapaxes(x, -1, -2))
    if garbage:  # the upper triangle is not read
        a = a + np.triu(RNG.standard_normal(a.shape), 1)
    w = _c(a.shape) if dtype == np.complex128 else RNG.standard_normal(a.shape)

    def fn(lib, m):
        if lib is torch:
            m = m.tril() + m.tril(-1).mH
        return lib.linalg.pinv(m, hermitian=True)
    want, got = _grads(fn, a, w)
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=1e-9)
    assert np.abs(np.triu(got, 1)).max() == 0


# --- lu_factor ----------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [[[1.0, 2.0], [2.0, 4.0]], [[[1.0, 0.0], [0.0, 1.0]],
                                                          [[0.0, 0.0], [0.0, 0.0]]]])
def test_lu_factor_singular_raises(a):
    with pytest.raises(RuntimeError) as t_err:
        torch.linalg.lu_factor(torch.tensor(a))
    with pytest.raises(ng.linalg.LinAlgError) as n_err:
        ng.linalg.lu_factor(ng.tensor(a))
    assert issubclass(ng.linalg.LinAlgError, RuntimeError)
    assert str(n_err.value).split(" and ")[0] == str(t_err.value).split(" and ")[0]
    info = ng.linalg.lu_factor_ex(ng.tensor(a)).info.numpy()
    np.testing.assert_array_equal(info, torch.linalg.lu_factor_ex(torch.tensor(a)).info.numpy())


def test_lu_factor_regular_unchanged():
    a = RNG.standard_normal((2, 3, 3))
    t, n = torch.linalg.lu_factor(torch.tensor(a)), ng.linalg.lu_factor(ng.tensor(a))
    np.testing.assert_allclose(n.LU.numpy(), t.LU.numpy(), atol=1e-12)
    np.testing.assert_array_equal(n.pivots.numpy(), t.pivots.numpy())


# --- PyTorch's keyword names, lstsq's out= ----------------------------------------------------
_SPD = np.array([[2.0, 0.5], [0.5, 1.0]])
_B = np.array([[1.0], [2.0]])
_KEYWORD_CALLS = {
    "cholesky": {}, "cholesky_ex": {}, "eigh": {}, "eigvalsh": {}, "eig": {}, "eigvals": {},
    "pinv": {}, "matrix_rank": {}, "matrix_exp": {}, "matrix_norm": {}, "vector_norm": {},
    "norm": {}, "cond": {}, "matrix_power": {"n": 3}, "ldl_factor": {}, "ldl_factor_ex": {},
    "lstsq": {"b": _B}, "solve_triangular": {"B": _B, "upper": True},
    "tensorsolve": {"other": _B[:, 0]}, "householder_product": {"tau": np.array([0.5, 0.2])},
}


def _flat(r):
    if isinstance(r, tuple):
        return [x for v in r for x in _flat(v)]
    return [np.asarray(r.numpy() if hasattr(r, "numpy") else r)]


@pytest.mark.parametrize("name", sorted(_KEYWORD_CALLS))
def test_input_keyword(name):
    kw = _KEYWORD_CALLS[name]
    want = getattr(torch.linalg, name)(
        input=torch.tensor(_SPD), **{k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                                     for k, v in kw.items()})
    got = getattr(ng.linalg, name)(
        input=ng.tensor(_SPD), **{k: ng.tensor(v) if isinstance(v, np.ndarray) else v
                                  for k, v in kw.items()})
    for g, w in zip(_flat(got), _flat(want), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-10)


def test_lstsq_out():
    a = RNG.standard_normal((4, 2))
    b = RNG.standard_normal((4, 3))
    out = (ng.empty(0, dtype=ng.float64), ng.empty(0, dtype=ng.float64),
           ng.empty(0, dtype=ng.int64), ng.empty(0, dtype=ng.float64))
    got = ng.linalg.lstsq(ng.tensor(a), ng.tensor(b), driver="gelsd", out=out)
    assert all(g is o for g, o in zip(got, out, strict=True))
    want = torch.linalg.lstsq(torch.tensor(a), torch.tensor(b), driver="gelsd")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-10)
