"""Op-matrix cases of :mod:`nodegrad.ops.complex`, :mod:`nodegrad.fft` (stft too) and the
complex ``linalg.eig`` (appended to
``_opcases.CASES``): real inputs and real outputs around the complex ops, so the float64
gradcheck covers their VJPs on both parts."""

from __future__ import annotations

import numpy as np
from _opcases import Call, _batch, arr, case, shapes
from hypothesis import strategies as st

import nodegrad as ng

_LAST = ("vector", "matrix", "3d", "size1", "noncontig")  # at least one axis, none empty
_PAIR = ("scalar", "vector", "matrix", "3d", "size1", "noncontig")


def _pair(fn):
    def build(draw, layout):
        s = draw(shapes(layout, 1))[0]
        return Call(fn, (arr(draw, s), arr(draw, s, "pos")))
    return build


def _one(fn):
    def build(draw, layout):
        return Call(fn, (arr(draw, draw(shapes(layout, 1))[0]),))
    return build


def _parts(x, y):
    z = ng.complex(x, y)
    w = ng.conj(z) * ng.complex(y, x)
    return ng.real(w) + ng.imag(z * z) + ng.angle(ng.complex(y, x))


case("complex_parts", _pair(_parts), prims=("complex", "conj", "real", "imag", "angle"),
     layouts=_PAIR, has_torch=False)
case("view_as_real_complex", _one(lambda x: ng.view_as_real(
    ng.view_as_complex(ng.stack([x, x * x], -1)) ** 2)),
     prims=("view_as_real", "view_as_complex"), layouts=_PAIR, has_torch=False)
case("fft_c2c", _one(lambda x: ng.view_as_real(ng.fft.ifft(ng.fft.fft(x) * x, norm="ortho"))),
     prims=("fft_c2c",), layouts=_LAST, has_torch=False)
case("fft_r2c_c2r", _one(lambda x: ng.fft.irfft(ng.fft.rfft(x) * ng.fft.rfft(x * x),
                                                n=x.shape[-1])),
     prims=("fft_r2c", "fft_c2r"), layouts=_LAST, has_torch=False)


def _eig_input(draw, layout):
    """A real matrix whose eigenvalues are far apart: 2x2 blocks [[10k, 5], [-5, 10k]] on the
    diagonal (eigenvalues 10k ± 5i), a lone 10k last for odd n, plus a small random part."""
    n = draw(st.integers(1, 4))
    lead = _batch(draw, layout)
    base = np.zeros((n, n))
    for k in range(0, n, 2):
        base[k, k] = 10.0 * (k + 1)
        if k + 1 < n:
            base[k + 1, k + 1] = 10.0 * (k + 1)
            base[k, k + 1], base[k + 1, k] = 5.0, -5.0
    return arr(draw, lead + (n, n)) * 0.3 + base


def _eig_real(a):
    """Order- and phase-invariant real parts of eig, flattened: power sums of the eigenvalues,
    and the eigenvalue-weighted sums of each unit eigenvector's projector v vᴴ and of |v|².
    (LAPACK's order of the eigenvalues changes where a perturbation couples the blocks of a
    block-diagonal matrix, and an eigenvector against one of its entries is not smooth where
    that entry is 0: functions of either fail a finite-difference check there.) Eigenvalues
    are scaled to order 1 first, so the central differences do not lose digits to rounding."""
    w, v = ng.linalg.eig(a)
    w = w * 0.05  # outputs of order 1: with eigenvalues ~40, w³ ~ 1e5 rounds the differences
    proj = v[..., :, None, :] * ng.conj(v[..., None, :, :])
    weighted = (proj * w[..., None, None, :]).sum(-1)
    mags = ((v * ng.conj(v)).real * ng.exp(-4 * (w * ng.conj(w)).real)[..., None, :]).sum(-1)
    return ng.concatenate([ng.view_as_real(w.sum(-1)).reshape(-1),
                           ng.view_as_real((w ** 3).sum(-1)).reshape(-1),
                           ng.view_as_real(weighted).reshape(-1), mags.reshape(-1),
                           ng.view_as_real(((ng.linalg.eigvals(a) * 0.05) ** 2).sum(-1))
                           .reshape(-1)])


case("eig", lambda draw, layout: Call(_eig_real, (_eig_input(draw, layout),)), prims=("eig",),
     layouts=("matrix", "3d", "size1", "noncontig"), has_torch=False)


def _stft_round(x):
    """stft then istft of a real signal (1-d or a batch), a weight on the spectrum between."""
    w = ng.tensor(np.array([0.5, 1.0, 1.0, 0.5]))
    s = ng.stft(x, 4, hop_length=1, window=w, pad_mode="constant", return_complex=True)
    return ng.istft(s * s.abs(), 4, hop_length=1, window=w, length=x.shape[-1])


case("stft_istft", _one(_stft_round), prims=("fft_r2c", "fft_c2r", "getitem"),
     layouts=("vector", "matrix"), has_torch=False)


# --- complex inputs to real-written rules: reductions, scans, elementwise, scatters ----------
def _z(x, y):
    return ng.complex(x, y)


def _cpair(fn, re="real", im="pos"):
    """fn(x, y) of two real arrays of one shape (domains ``re`` and ``im``)."""
    def build(draw, layout):
        s = draw(shapes(layout, 1))[0]
        return Call(fn, (arr(draw, s, re), arr(draw, s, im)))
    return build


def _prod_scan(x, y):
    z = _z(x, y * 0.5)
    return ng.concatenate([ng.view_as_real(ng.prod(z, -1)).reshape(-1),
                           ng.view_as_real(ng.cumprod(z, -1)).reshape(-1),
                           ng.view_as_real(ng.prod(z)).reshape(-1)])


def _inverse_trig(x, y):
    z = _z(x, y)  # Re z away from 0 and Im z > 0: off every branch cut
    out = (ng.asin(z * 0.4) + ng.acos(z * 0.4) * 0.5 + ng.atan(z) + ng.asinh(z)
           + ng.acosh(z) * 0.3 + ng.acosh(-z) * 0.2 + ng.atanh(z * 0.4))
    return ng.view_as_real(out)


def _lerp_lse(x, y):
    z, w = _z(x, y), _z(y, x)
    return ng.concatenate([ng.view_as_real(ng.lerp(z, w, 0.3)).reshape(-1),
                           ng.view_as_real(ng.logsumexp(z, -1)).reshape(-1)])


def _scatter_sgn(x, y):
    z = _z(x, y)
    n = z.shape[-1]
    idx = ng.broadcast_to(ng.arange(n - 1, -1, -1, device=z.device), z.shape)
    s = z.scatter(-1, idx, z * z)
    return ng.view_as_real(s) + ng.view_as_real(ng.sgn(z))


case("complex_prod_cumprod", _cpair(_prod_scan), prims=("prod", "cumprod"), layouts=_LAST,
     has_torch=False)
case("complex_inverse_trig", _cpair(_inverse_trig, "nonzero"),
     prims=("asin", "acos", "atan", "asinh", "acosh", "atanh"), layouts=_PAIR, has_torch=False)
case("complex_lerp_logsumexp", _cpair(_lerp_lse), prims=("lerp", "logsumexp"), layouts=_LAST,
     has_torch=False)
def _windows(x, y):
    z = _z(x, y)
    w = ng.sliding_window_view(z, 1, axis=-1)  # overlapping windows: the primitive itself
    return ng.view_as_real(w * w)


case("complex_windows", _cpair(_windows), prims=("sliding_window_view",), layouts=_LAST,
     has_torch=False)
case("complex_scatter_sgn", _cpair(_scatter_sgn), prims=("scatter_along_axis",),
     layouts=_LAST, has_torch=False)


# --- complex matrices through the LU family, powers, exponentials, Householder products ----
_SQ = ("matrix", "3d", "size1")


def _cmat(draw, layout, n=None, m=None):
    """Two real (re, im) arrays of one well-conditioned complex matrix batch: a dominant
    diagonal, so pivots and ranks do not change under small perturbations."""
    n = n or draw(st.integers(1, 4))
    m = m or n
    lead = _batch(draw, layout)
    re = arr(draw, lead + (m, n)) * 0.3 + (n + 1) * np.eye(m, n)
    return re, arr(draw, lead + (m, n)) * 0.3


def _flat(*ts):
    return ng.concatenate([ng.view_as_real(t).reshape(-1) if t.dtype.kind == "c"
                           else t.reshape(-1) for t in ts])


def _lu_all(re, im, bre, bim):
    a, b = _z(re, im), _z(bre, bim)
    LA = ng.linalg
    P, L, U = LA.lu(a)
    LU, piv = LA.lu_factor(a)
    return _flat(L, U, LA.lu_solve(LU, piv, b), LA.lu_solve(LU, piv, b, adjoint=True),
                 LA.lu_solve(LU, piv, b.mH, left=False))


def _lu_build(draw, layout):
    re, im = _cmat(draw, layout)
    return Call(_lu_all, (re, im, arr(draw, re.shape), arr(draw, re.shape)))


def _powers(re, im):
    a = _z(re, im)
    LA = ng.linalg
    return _flat(LA.matrix_exp(a * 0.2), LA.matrix_power(a, -2), LA.matrix_power(a, 3),
                 LA.cholesky_solve(a, LA.cholesky(a @ a.mH)), LA.cond(a), LA.cond(a, "fro"),
                 LA.vecdot(a, a * 1j + 1))


def _pow_build(draw, layout):
    return Call(_powers, _cmat(draw, layout))


def _lstsq_house(re, im, bre, bim):
    a, b = _z(re, im), _z(bre, bim)
    LA = ng.linalg
    tau = ng.complex(ng.tanh(bre[..., 0, :]), ng.tanh(bim[..., 0, :])) * 0.5
    return _flat(LA.lstsq(a, b).solution, LA.householder_product(a, tau),
                 ng.logdet(a))


def _lstsq_build(draw, layout):
    n = draw(st.integers(1, 3))
    re, im = _cmat(draw, layout, n, n)
    return Call(_lstsq_house, (re, im, arr(draw, re.shape), arr(draw, re.shape)))


case("complex_lu", _lu_build, prims=("solve_triangular", "take_along_axis"), layouts=_SQ,
     has_torch=False)
case("complex_matrix_functions", _pow_build, prims=("matmul", "inv"), layouts=_SQ,
     has_torch=False)
case("complex_lstsq_householder", _lstsq_build, prims=("pinv", "slogdet"), layouts=_SQ,
     has_torch=False)
case("complex_logcumsumexp",
     _cpair(lambda x, y: ng.view_as_real(ng.logcumsumexp(_z(x, y), -1))),
     prims=("logcumsumexp",), layouts=_LAST, has_torch=False)
