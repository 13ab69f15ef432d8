"""Complex linear algebra against PyTorch: ``linalg.eig``/``eigvals`` and complex inputs to the
other decompositions, solves and norms; values for complex128 and complex64, gradients of real
losses (phase-invariant where eigen/singular vectors enter) against torch and by central
differences on the real and imaginary parts separately."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

LA, TLA = ng.linalg, torch.linalg


def _c(shape, seed=0, dtype=np.complex128):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _hpd(n, seed=0, batch=()):
    x = _c(batch + (n, n), seed)
    return x @ np.conj(np.swapaxes(x, -1, -2)) + n * np.eye(n)


def _weights(shape, seed=7):
    return np.random.default_rng(seed).standard_normal(shape)


def _ng_grad(f, a):
    x = ng.tensor(a, requires_grad=True)
    loss = f(ng, LA, x).sum()
    loss.backward()
    return float(loss.item()), x.grad.numpy()


def _torch_grad(f, a):
    x = torch.tensor(a, requires_grad=True)
    loss = f(torch, TLA, x).sum()
    loss.backward()
    return float(loss.item()), x.grad.numpy()


def _fd(f, a, eps=1e-6):
    """dL/dx + i dL/dy by central differences on each real and imaginary part."""
    def val(z):
        return float(f(ng, LA, ng.tensor(z)).sum().item())

    g = np.zeros(a.shape, np.complex128)
    for idx in np.ndindex(a.shape):
        for unit in (1.0, 1j):
            e = np.zeros(a.shape, a.dtype)
            e[idx] = unit * eps
            d = (val(a + e) - val(a - e)) / (2 * eps)
            g[idx] += d * unit
    return g


def _check(f, a, fd=True, tol=1e-7):
    v, g = _ng_grad(f, a)
    tv, tg = _torch_grad(f, a)
    np.testing.assert_allclose(v, tv, rtol=1e-9, atol=1e-9)
    assert g.dtype == a.dtype
    np.testing.assert_allclose(g, tg, rtol=tol, atol=tol)
    if fd:
        np.testing.assert_allclose(g, _fd(f, a), rtol=1e-5, atol=1e-6)


def _re(m, t):
    return m.real(t)


# --- losses, written once for both libraries (m: the module, la: its linalg) ----------------
W3 = _weights((3, 3))
W3b = _weights((3, 3), 8)
V1, V2, V3 = np.array([1.0, 2.0, 3.0]), np.array([1.0, -2.0, 3.0]), np.array([1.0, -2.0, 0.5])


def _abs2(m, t):
    return m.real(t) ** 2 + m.imag(t) ** 2


def _wsum(m, t, w):
    return (t * m.tensor(w)).sum()


def _mul(res, i, j):
    return res[i] @ res[j]


def _eig_both(m, res):
    """Each eigenvector against its first entry's conjugate: phase-invariant."""
    w, v = res
    return _wsum(m, m.real(v * m.conj(v[..., :1, :])), W3) + m.imag(w).sum()


LOSSES = {
    "inv": lambda m, la, a: _wsum(m, m.real(la.inv(a)), W3) + _wsum(m, m.imag(la.inv(a)), W3b),
    "solve": lambda m, la, a: _wsum(m, _abs2(m, la.solve(a, a @ a + 1)), W3),
    "det": lambda m, la, a: m.real(la.det(a)) + 2 * m.imag(la.det(a)),
    "slogdet": lambda m, la, a: (m.real(la.slogdet(a)[0]) - 0.5 * m.imag(la.slogdet(a)[0])
                                 + la.slogdet(a)[1]),
    "qr": lambda m, la, a: (_wsum(m, m.real(la.qr(a)[0]), W3) + _wsum(m, m.imag(la.qr(a)[1]), W3b)
                            + _wsum(m, m.real(la.qr(a)[1]), W3)),
    "svd": lambda m, la, a: (_wsum(m, _abs2(m, la.svd(a)[0]), W3) + la.svd(a)[1].sum()
                             + _wsum(m, _abs2(m, la.svd(a)[2]), W3b)),
    "svd_uv": lambda m, la, a: _wsum(m, m.real(_mul(la.svd(a), 0, 2)), W3),
    "svdvals": lambda m, la, a: (la.svdvals(a) * m.tensor(V3)).sum(),
    "eigh": lambda m, la, a: (_wsum(m, _abs2(m, la.eigh(a + a.mH)[1]), W3)
                              + (la.eigh(a + a.mH)[0] * m.tensor(V1)).sum()),
    "eigvalsh": lambda m, la, a: (la.eigvalsh(a + a.mH) * m.tensor(V2)).sum(),
    "pinv": lambda m, la, a: (_wsum(m, m.real(la.pinv(a)), W3)
                              + _wsum(m, m.imag(la.pinv(a)), W3b)),
    "pinv_hermitian": lambda m, la, a: _wsum(m, _abs2(m, la.pinv(a + a.mH, hermitian=True)),
                                             W3),
    "eig_values": lambda m, la, a: (m.real(la.eig(a)[0]) * m.tensor(V1)).sum()
    + m.imag(la.eig(a)[0]).sum() * 0.5,
    "eig_vectors": lambda m, la, a: _wsum(m, _abs2(m, la.eig(a)[1]), W3),
    "eig_both": lambda m, la, a: _eig_both(m, la.eig(a)),
    "eigvals": lambda m, la, a: (m.real(la.eigvals(a)) ** 2).sum() + m.imag(la.eigvals(a)).sum(),
    "fro": lambda m, la, a: la.matrix_norm(a),
    "nuc": lambda m, la, a: la.matrix_norm(a, "nuc"),
    "spec": lambda m, la, a: la.matrix_norm(a, 2) + la.matrix_norm(a, -2),
    "inf1": lambda m, la, a: la.matrix_norm(a, float("inf")) + la.matrix_norm(a, -1),
    "vec": lambda m, la, a: la.vector_norm(a) + la.vector_norm(a, 1) + la.vector_norm(a, 3),
    "norm": lambda m, la, a: la.norm(a) + la.norm(a, "nuc") + la.norm(a[0], 2),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_torch_and_finite_differences(name):
    _check(LOSSES[name], _c((3, 3), 1))


def test_cholesky_hermitian_positive_definite():
    def f(m, la, a):
        h = a @ a.mH + 3 * m.tensor(np.eye(3))
        return (_wsum(m, m.real(la.cholesky(h)), W3) + _wsum(m, m.imag(la.cholesky(h)), W3b)
                + _wsum(m, m.real(la.cholesky(h, upper=True)), W3b))

    _check(f, _c((3, 3), 2))


@pytest.mark.parametrize("shape", [(4, 2), (2, 4)])
def test_rectangular_qr_svd_pinv(shape):
    w = _weights(shape)
    wt = _weights(shape[::-1])

    def f(m, la, a):
        q, r = la.qr(a)
        u, s, vh = la.svd(a, full_matrices=False)
        return (_wsum(m, m.real(q @ r), w) + (q.abs() ** 2).sum(-1)[0] + s[0]
                + _wsum(m, m.real(u @ vh), w) + _wsum(m, m.imag(la.pinv(a)), wt))

    _check(f, _c(shape, 3))


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_values_match_torch(dtype):
    a = _c((2, 3, 3), 4, dtype)
    h = _hpd(3, 5, (2,)).astype(dtype)
    x, t = ng.tensor(a), torch.tensor(a)
    hx, ht = ng.tensor(h), torch.tensor(h)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.complex64 else dict(rtol=1e-10, atol=1e-10)
    pairs = [
        (LA.inv(x), TLA.inv(t)), (LA.solve(x, hx), TLA.solve(t, ht)), (LA.det(x), TLA.det(t)),
        (LA.slogdet(x)[0], TLA.slogdet(t)[0]), (LA.slogdet(x)[1], TLA.slogdet(t)[1]),
        (LA.cholesky(hx), TLA.cholesky(ht)), (LA.cholesky(hx, upper=True),
                                              TLA.cholesky(ht, upper=True)),
        (LA.qr(x)[1].abs(), TLA.qr(t)[1].abs()), (LA.svdvals(x), TLA.svdvals(t)),
        (LA.svd(x)[1], TLA.svd(t)[1]), (LA.eigvalsh(hx), TLA.eigvalsh(ht)),
        (LA.eigh(hx)[0], TLA.eigh(ht)[0]), (LA.pinv(x), TLA.pinv(t)),
        (LA.pinv(hx, hermitian=True), TLA.pinv(ht, hermitian=True)),
        (LA.eigvals(x), TLA.eigvals(t)), (LA.eig(x)[0], TLA.eig(t)[0]),
        (LA.matrix_norm(x, "nuc"), TLA.matrix_norm(t, "nuc")),
        (LA.matrix_norm(x, -2, keepdim=True), TLA.matrix_norm(t, -2, keepdim=True)),
        (LA.matrix_norm(x, 1), TLA.matrix_norm(t, 1)),
        (LA.vector_norm(x, 3, dim=1), TLA.vector_norm(t, 3, dim=1)),
    ]
    for i, (ours, theirs) in enumerate(pairs):
        theirs = theirs.numpy()
        assert ours.dtype == theirs.dtype, (i, ours.dtype, theirs.dtype)
        np.testing.assert_allclose(ours.numpy(), theirs, err_msg=str(i), **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.complex64])
def test_eig_values_and_vectors_up_to_phase(dtype):
    a = (_c((2, 4, 4), 6) if np.dtype(dtype).kind == "c" else
         np.random.default_rng(6).standard_normal((2, 4, 4))).astype(dtype)
    w, v = LA.eig(ng.tensor(a))
    tw, tv = TLA.eig(torch.tensor(a))
    assert w.dtype == tw.numpy().dtype and v.dtype == tv.numpy().dtype
    assert w.dtype == (np.complex64 if dtype in (np.float32, np.complex64) else np.complex128)
    tol = 1e-4 if np.dtype(dtype).itemsize in (4, 8) else 1e-10
    # LAPACK builds may list the eigenvalues in other orders: torch's matched to ours
    order = np.abs(w.numpy()[..., :, None] - tw.numpy()[..., None, :]).argmin(-1)
    tw = np.take_along_axis(tw.numpy(), order, -1)
    tv = np.take_along_axis(tv.numpy(), order[..., None, :], -1)
    np.testing.assert_allclose(w.numpy(), tw, rtol=tol, atol=tol)
    vv, tvv = v.numpy(), tv
    np.testing.assert_allclose(np.linalg.norm(vv, axis=-2), 1, rtol=tol)
    # the same vectors up to a phase each: |<v, v_torch>| = 1
    inner = np.abs((np.conj(vv) * tvv).sum(-2))
    np.testing.assert_allclose(inner, 1, rtol=tol, atol=tol)
    np.testing.assert_allclose(a @ vv, vv * w.numpy()[..., None, :], rtol=tol * 10,
                               atol=tol * 10)


def test_eig_of_real_matrix_gradient_is_real():
    a = np.random.default_rng(9).standard_normal((2, 3, 3))
    f = LOSSES["eig_both"]
    v, g = _ng_grad(f, a)
    tv, tg = _torch_grad(f, a)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, tg, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize(("op", "loss"), [
    ("eig", lambda la, a: la.eig(a)[1].real.sum()),
    ("eigh", lambda la, a: la.eigh(a + a.mH)[1].imag.sum()),
    ("svd", lambda la, a: la.svd(a)[0].real.sum()),
])
def test_phase_dependent_loss_is_refused_as_in_torch(op, loss):
    a = _c((3, 3), 10)
    t = torch.tensor(a, requires_grad=True)
    with pytest.raises(RuntimeError, match="ill-defined"):
        loss(TLA, t).backward()
    x = ng.tensor(a, requires_grad=True)
    with pytest.raises(ng.GradError, match="ill-defined"):
        loss(LA, x).backward()


def test_eigvals_gradient_finite_with_repeated_eigenvalues():
    a = np.diag([2.0, 2.0, 1.0]).astype(np.complex128) + np.triu(np.ones((3, 3)), 1) * 0.5
    x = ng.tensor(a, requires_grad=True)
    ng.real(LA.eigvals(x)).sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_real_inputs_keep_real_rules():
    a = np.random.default_rng(11).standard_normal((3, 3))
    for f in (lambda m, la, a: la.det(a), lambda m, la, a: la.slogdet(a)[1],
              lambda m, la, a: (la.inv(a) * la.pinv(a)).sum() + la.matrix_norm(a, "nuc"),
              lambda m, la, a: (la.qr(a)[0] * la.eigh(a + a.mT)[0]).sum()):
        v, g = _ng_grad(f, a)
        tv, tg = _torch_grad(f, a)
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, tg, rtol=1e-7, atol=1e-8)


def test_real_dtype_errors_name_complex():
    with pytest.raises(ng.DTypeError, match="complex128"):
        LA.inv(ng.tensor(np.eye(2, dtype=np.int64)))


@pytest.mark.parametrize("name", ["eig_both", "svd", "eigh", "qr", "slogdet", "pinv", "nuc"])
def test_batched_gradients_match_torch(name):
    _check(LOSSES[name], _c((2, 3, 3), 12), fd=False)


@pytest.mark.parametrize("n", [3, 8])
def test_det_of_singular_complex_matrix(n):
    """The cofactor gradient (minors up to 6, the SVD above) for complex A."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((n, n - 1)) + 1j * rng.standard_normal((n, n - 1))
    a = x @ rng.standard_normal((n - 1, n))
    _check(lambda m, la, a: m.real(la.det(a)) + 2 * m.imag(la.det(a)), a, fd=False, tol=1e-9)


_Y = _weights((3, 3), 20)
_U = _weights((3, 3), 21)
_HERM_EYE = np.eye(3) * 3


def _mk(x):
    return ng.complex(x, ng.tensor(_Y))


JVP = {
    "inv": lambda x: ng.real(LA.inv(_mk(x))).sum(),
    "det": lambda x: ng.imag(LA.det(_mk(x))),
    "cholesky": lambda x: (ng.imag(LA.cholesky(_mk(x) @ _mk(x).mH + ng.tensor(_HERM_EYE)))
                           * ng.tensor(_U)).sum(),
    "svdvals": lambda x: (LA.svdvals(_mk(x)) * ng.tensor(V1)).sum(),
    "eigvalsh": lambda x: (LA.eigvalsh(_mk(x) + _mk(x).mH) * ng.tensor(V1)).sum(),
    "qr": lambda x: (ng.imag(LA.qr(_mk(x))[1]) * ng.tensor(_U)).sum()
    + (ng.real(LA.qr(_mk(x))[0]) * ng.tensor(_U)).sum(),
    "qr_wide": lambda x: (ng.imag(LA.qr(_mk(x)[:2])[1]) * ng.tensor(_U[:2])).sum()
    + (ng.real(LA.qr(_mk(x)[:2])[0]) * ng.tensor(_U[:2, :2])).sum(),
    "slogdet": lambda x: LA.slogdet(_mk(x))[1] + ng.imag(LA.slogdet(_mk(x))[0]),
    "pinv": lambda x: (ng.real(LA.pinv(_mk(x)[:2])) * ng.tensor(_U[:, :2])).sum(),
    "pinv_hermitian": lambda x: (ng.imag(LA.pinv(_mk(x) + _mk(x).mH, hermitian=True))
                                 * ng.tensor(_U)).sum(),
    "nuc": lambda x: LA.matrix_norm(_mk(x), "nuc"),
    "eigh": lambda x: (LA.eigh(_mk(x) + _mk(x).mH)[1].abs() * ng.tensor(_U)).sum()
    + (LA.eigh(_mk(x) + _mk(x).mH)[0] * ng.tensor(V1)).sum(),
    "eig": lambda x: (LA.eig(_mk(x))[1].abs() * ng.tensor(_U)).sum()
    + ng.imag(LA.eig(_mk(x))[0]).sum(),
}


@pytest.mark.parametrize("name", sorted(JVP))
def test_forward_mode_through_complex_matrices(name):
    """A real function whose inside is complex: ng.jvp against central differences."""
    f = JVP[name]
    x, t = _weights((3, 3), 22), _weights((3, 3), 23)
    _, tan = ng.jvp(f, (ng.tensor(x),), (ng.tensor(t),))
    e = 1e-6
    fd = (f(ng.tensor(x + e * t)).item() - f(ng.tensor(x - e * t)).item()) / (2 * e)
    np.testing.assert_allclose(float(tan.item()), fd, rtol=1e-6, atol=1e-7)


def test_forward_mode_complex_svd_vectors_refused():
    with pytest.raises(ng.GradError, match="forward-mode"):
        ng.jvp(lambda x: LA.svd(_mk(x))[0].abs().sum(), (ng.tensor(_U),), (ng.tensor(_U),))
