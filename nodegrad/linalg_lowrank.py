"""PyTorch's randomised low-rank factorisations, ``svd_lowrank`` and ``pca_lowrank``, built of
products, QR and SVD, so they are differentiable and run under jit and vmap."""

from __future__ import annotations

from . import linalg
from .errors import ShapeError
from .ops.complex import complex as _complex
from .ops.complex import real as _real
from .random import randn


def _approximate_basis(A, q, niter, M, generator):
    """An orthonormal (…, m, q) basis whose span nearly holds A's range (Halko et al., 2009,
    algorithm 4.4: a Gaussian sketch refined by ``niter`` power iterations, as torch's)."""
    if A.dtype.kind == "c":  # a complex Gaussian sketch: real and imaginary parts N(0, 1/2)
        rt = _real(A).dtype
        R = _complex(randn(A.shape[-1], q, dtype=rt, device=A.device, generator=generator),
                    randn(A.shape[-1], q, dtype=rt, device=A.device, generator=generator))
        R = R * 0.5 ** 0.5
    else:
        R = randn(A.shape[-1], q, dtype=A.dtype, device=A.device, generator=generator)
    X = A @ R if M is None else A @ R - M @ R
    Q = linalg.qr(X).Q
    for _ in range(niter):
        X = A.mH @ Q if M is None else A.mH @ Q - M.mH @ Q
        Q = linalg.qr(X).Q
        X = A @ Q if M is None else A @ Q - M @ Q
        Q = linalg.qr(X).Q
    return Q


def svd_lowrank(A, q: int | None = 6, niter: int | None = 2, M=None, *,
                generator=None):
    """``torch.svd_lowrank``: (U, S, V) of a rank-``q`` randomised SVD of ``A - M``
    (A ≈ U diag(S) Vᴴ, note V, not Vᴴ; real or complex A), from a Gaussian sketch with
    ``niter`` power iterations; min(q, m, n) components. Differentiable, as it is built of
    products, QR and SVD."""
    q = 6 if q is None else q
    niter = 2 if niter is None else niter
    if A.ndim < 2:
        raise ShapeError(f"svd_lowrank: expected a matrix or a batch of them, got shape "
                         f"{tuple(A.shape)}")
    if isinstance(q, bool) or int(q) != q or q < 0:
        raise ValueError(f"svd_lowrank: q must be a non-negative integer, got {q!r}")
    q = int(q)  # above min(m, n), the sketch spans all of A: min(q, m, n) components, as torch
    m, n = A.shape[-2:]
    if m < n:  # sketch the taller transpose
        Mt = None if M is None else M.mH
        Q = _approximate_basis(A.mH, q, niter, Mt, generator)
        Bt = A @ Q if M is None else A @ Q - M @ Q
        U, S, Vh = linalg.svd(Bt, full_matrices=False)
        return U, S, Q @ Vh.mH
    Q = _approximate_basis(A, q, niter, M, generator)
    Bm = Q.mH @ A if M is None else Q.mH @ A - Q.mH @ M
    U, S, Vh = linalg.svd(Bm, full_matrices=False)
    return Q @ U, S, Vh.mH


def pca_lowrank(A, q: int | None = None, center: bool = True, niter: int = 2, *,
                generator=None):
    """``torch.pca_lowrank``: (U, S, V) of :func:`svd_lowrank` of ``A`` with its column means
    removed (``center``); the principal directions are V's columns. ``q`` defaults to
    min(6, m, n)."""
    if A.ndim < 2:
        raise ShapeError(f"pca_lowrank: expected a matrix or a batch of them, got shape "
                         f"{tuple(A.shape)}")
    m, n = A.shape[-2:]
    q = min(6, m, n) if q is None else q
    if isinstance(q, bool) or int(q) != q or not 0 <= q <= min(m, n):
        raise ValueError(f"pca_lowrank: q must be a non-negative integer no greater than "
                         f"min(m, n) = {min(m, n)}, got {q!r}")
    if center:
        A = A - A.mean(dim=-2, keepdim=True)
    return svd_lowrank(A, q, niter=niter, generator=generator)


__all__ = ["svd_lowrank", "pca_lowrank"]
