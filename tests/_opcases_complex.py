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
    """Phase-invariant real parts of eig: the eigenvalues, |V|^2 and each eigenvector against
    its first entry's conjugate, flattened."""
    w, v = ng.linalg.eig(a)
    rel = v * ng.conj(v[..., :1, :])
    return ng.concatenate([ng.view_as_real(w).reshape(-1), (v.abs() ** 2).reshape(-1),
                           ng.view_as_real(rel).reshape(-1),
                           ng.view_as_real(ng.linalg.eigvals(a) ** 2).reshape(-1)])


case("eig", lambda draw, layout: Call(_eig_real, (_eig_input(draw, layout),)), prims=("eig",),
     layouts=("matrix", "3d", "size1", "noncontig"), has_torch=False)


def _stft_round(x):
    """stft then istft of a real signal (1-d or a batch), a weight on the spectrum between."""
    w = ng.tensor(np.array([0.5, 1.0, 1.0, 0.5]))
    s = ng.stft(x, 4, hop_length=1, window=w, pad_mode="constant", return_complex=True)
    return ng.istft(s * s.abs(), 4, hop_length=1, window=w, length=x.shape[-1])


case("stft_istft", _one(_stft_round), prims=("fft_r2c", "fft_c2r", "getitem"),
     layouts=("vector", "matrix"), has_torch=False)
