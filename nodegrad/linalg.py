"""``ng.linalg``: PyTorch's ``torch.linalg`` on nodegrad's primitives, batched over leading axes.

Solves and decompositions are primitives (``nodegrad/ops/linalg.py``) with the standard matrix
rules for their gradients; the rest are compositions of them. Degenerate inputs behave as in
PyTorch: ``det`` of a singular matrix has a finite gradient (from the SVD); the gradients of
``eigh``'s eigenvectors and ``svd``'s singular vectors are infinite (or NaN) where eigenvalues
or singular values repeat, because those vectors are not unique there (PyTorch likewise), while
``eigvalsh`` and ``svdvals`` stay finite; ``inv``, ``solve`` and ``cholesky`` raise
:class:`LinAlgError` for singular or non-positive-definite matrices.

Complex matrices (complex64/complex128) go to ``eig``/``eigvals`` (any square matrix; complex
results for real ones too), ``inv``, ``solve``, ``solve_triangular``, ``det``, ``slogdet``
(complex sign), ``cholesky`` (Hermitian), ``qr``, ``svd``/``svdvals``, ``eigh``/``eigvalsh``
(Hermitian), ``pinv``, the norms, ``lstsq``, ``matrix_exp``, ``matrix_power``, the LU family
(``lu``, ``lu_factor``, ``lu_solve``; ``adjoint`` is the conjugate transpose), ``cond``,
``matrix_rank``, ``vecdot`` (conjugating x), ``householder_product`` and the ``_ex`` forms,
with PyTorch's gradients; a loss that depends on the phases of eigen- or singular vectors is
refused, as in PyTorch. The rest (``ldl_factor``, ``ldl_solve``) refuse them by name.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _backend as _B
from .amp import float32_in_region, float32_op
from .batching import front, values
from .errors import DTypeError, LinAlgError, ShapeError
from .ops import linalg as L
from .ops.complex import conj as _conj
from .ops.complex import real as _real
from .ops.elementwise import abs as _abs
from .ops.elementwise import where
from .ops.reduce import matrix_norm as _matrix_norm
from .ops.reduce import vector_norm as _vector_norm
from .ops.reduce import max as _max
from .ops.shape import broadcast_to, expand_dims, reshape, squeeze, stack, swapaxes
from .primitive import primitive
from .tensor import Tensor, take_out, tensor

__all__ = ["LinAlgError", "inv", "solve", "det", "slogdet", "cholesky", "cholesky_solve",
           "solve_triangular", "triangular_solve", "qr", "eig", "eigvals", "eigh", "eigvalsh",
           "svd", "svdvals", "pinv", "lstsq", "matrix_power", "matrix_exp", "cross", "multi_dot",
           "vector_norm", "matrix_norm", "norm"]


class SlogdetResult(NamedTuple):
    sign: Tensor
    logabsdet: Tensor


class QRResult(NamedTuple):
    Q: Tensor
    R: Tensor


class EighResult(NamedTuple):
    eigenvalues: Tensor
    eigenvectors: Tensor


class EigResult(NamedTuple):
    eigenvalues: Tensor
    eigenvectors: Tensor


class SVDResult(NamedTuple):
    U: Tensor
    S: Tensor
    Vh: Tensor


class LstsqResult(NamedTuple):
    solution: Tensor
    residuals: Tensor
    rank: Tensor
    singular_values: Tensor


class TriangularSolveResult(NamedTuple):
    solution: Tensor
    cloned_coefficient: Tensor


def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else tensor(x)


# the ops PyTorch's CPU autocast lists as float32 ops: a lower-precision operand runs in float32
_AUTOCAST_F32 = frozenset({
    "inv", "inv_ex", "solve", "cholesky", "cholesky_ex", "cholesky_solve", "triangular_solve",
    "lstsq", "qr", "svd", "svdvals", "eig", "eigvals", "eigh", "eigvalsh", "cond",
    "matrix_rank"})


def _mat(op: str, a, square: bool = True, name: str = "A", half: bool = False,
         cplx: bool = False) -> Tensor:
    """``a`` as a float (``cplx``: or complex) tensor of matrices, checked (square if asked).
    float16 only where ``half`` (products alone; LAPACK has no half precision, and PyTorch's
    CPU refuses it); under CPU autocast the ops PyTorch lists as float32 ops take it in
    float32."""
    a = _t(a)
    if op in _AUTOCAST_F32 and a.dtype.itemsize < 4:
        (a,) = float32_in_region(a)
    if not _B.is_float(a.dtype) or (a.dtype.itemsize < 4 and not half):
        if not (cplx and a.dtype.kind == "c"):
            raise DTypeError(f"linalg.{op}: expected a float32 or float64"
                             f"{', complex64 or complex128' if cplx else ''} tensor for {name}, "
                             f"got {a.dtype}")
    if a.ndim < 2:
        raise ShapeError(f"linalg.{op}: {name} must be a matrix or a batch of matrices "
                         f"(..., m, n), got shape {tuple(a.shape)}")
    if square and a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"linalg.{op}: {name} must be square (..., n, n), got shape "
                         f"{tuple(a.shape)}")
    return a


def _mT(x):
    return swapaxes(x, -1, -2)


def _mH(x):
    """The conjugate transpose of the last two axes (the transpose of a real tensor)."""
    return _conj(swapaxes(x, -1, -2))


# --- inverses and solves --------------------------------------------------------------------
def inv(A) -> Tensor:
    """Inverse of a square matrix; :class:`LinAlgError` if it is singular."""
    return L.inv(_mat("inv", A, cplx=True))


def solve(A, B, *, left: bool = True) -> Tensor:
    """X with A X = B (``left=False``: X A = B). B is a batch of vectors when its shape is
    ``A.shape[:-1]`` or it is 1-d (PyTorch's rule), else of matrices."""
    A = _mat("solve", A, cplx=True)
    B = _t(B)
    n = A.shape[-1]
    vector = B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1]))
    if vector:
        if B.shape[-1] != n:
            raise ShapeError(f"linalg.solve: A of shape {tuple(A.shape)} and B of shape "
                             f"{tuple(B.shape)} do not fit (B's last axis must be {n})")
        return squeeze(solve(A, expand_dims(B, -1) if left else expand_dims(B, -2),
                             left=left), -1 if left else -2)
    B = _mat("solve", B, square=False, name="B", cplx=True)
    if (B.shape[-2] if left else B.shape[-1]) != n:
        raise ShapeError(f"linalg.solve: A of shape {tuple(A.shape)} and B of shape "
                         f"{tuple(B.shape)} do not fit (A X = B needs B with {n} "
                         f"{'rows' if left else 'columns'})")
    if left:
        return L.solve(A, B)
    return _mT(L.solve(_mT(A), _mT(B)))


def solve_triangular(A, B, *, upper: bool, left: bool = True,
                     unitriangular: bool = False) -> Tensor:
    """X with T X = B (``left=False``: X T = B), T the upper or lower triangle of A (only that
    triangle is read; ``unitriangular``: its diagonal taken as ones)."""
    A = _mat("solve_triangular", A, cplx=True)
    B = _mat("solve_triangular", B, square=False, name="B", cplx=True)
    n = A.shape[-1]
    if (B.shape[-2] if left else B.shape[-1]) != n:
        raise ShapeError(f"linalg.solve_triangular: A of shape {tuple(A.shape)} and B of shape "
                         f"{tuple(B.shape)} do not fit")
    if left:
        return L.solve_triangular(A, B, upper=upper, unitriangular=unitriangular)
    return _mT(L.solve_triangular(_mT(A), _mT(B), upper=not upper, unitriangular=unitriangular))


@float32_op  # autocast: a float32 op (PyTorch's; linalg.solve_triangular is not)
def triangular_solve(b, A, upper: bool = True, transpose: bool = False,
                     unitriangular: bool = False) -> TriangularSolveResult:
    """``torch.triangular_solve``: (X with op(T) X = b, a copy of A), op(T) = Tᵀ if
    ``transpose``."""
    A = _mat("triangular_solve", A, cplx=True)
    if transpose:
        x = solve_triangular(_mT(A), b, upper=not upper, unitriangular=unitriangular)
    else:
        x = solve_triangular(A, b, upper=upper, unitriangular=unitriangular)
    # the copy of A has the broadcast batch, as PyTorch's
    return TriangularSolveResult(x, broadcast_to(A, tuple(x.shape[:-2]) + tuple(A.shape[-2:])) * 1)


@float32_op  # autocast: a float32 op (PyTorch's)
def cholesky_solve(B, L_, upper: bool = False) -> Tensor:
    """``torch.cholesky_solve(B, L)``: X with A X = B for A = L Lᴴ (``upper``: A = Uᴴ U), given
    the Cholesky factor (Lᴴ is Lᵀ for real L); two triangular solves."""
    L_ = _mat("cholesky_solve", L_, name="L", cplx=True)
    if upper:
        y = solve_triangular(_mH(L_), B, upper=False)
        return solve_triangular(L_, y, upper=True)
    y = solve_triangular(L_, B, upper=False)
    return solve_triangular(_mH(L_), y, upper=True)


# --- determinants ---------------------------------------------------------------------------
def det(A) -> Tensor:
    """Determinant (batched); the gradient is the cofactor matrix, finite for singular A."""
    return L.det(_mat("det", A, cplx=True))


def slogdet(A) -> SlogdetResult:
    """(sign, log|det A|): the log-determinant without overflow; the sign has no gradient."""
    p = L.slogdet(_mat("slogdet", A, cplx=True))
    if p.dtype.kind == "c":  # complex A: a complex sign, a real log|det|
        return SlogdetResult(p[..., 0], _real(p[..., 1]))
    return SlogdetResult(p[..., 0], p[..., 1])


# --- decompositions -------------------------------------------------------------------------
def cholesky(A, *, upper: bool = False) -> Tensor:
    """Cholesky factor of a symmetric positive-definite A: L with A = L Lᵀ, its lower triangle
    read, or (``upper``) U with A = Uᵀ U, its upper triangle read, as PyTorch.
    :class:`LinAlgError` if A is not positive-definite."""
    A = _mat("cholesky", A, cplx=True)
    return L.cholesky(A, upper=bool(upper))


def qr(A, mode: str = "reduced") -> QRResult:
    """A = Q R with orthonormal columns Q and upper-triangular R; ``mode`` 'reduced',
    'complete' or 'r' (Q empty), as PyTorch."""
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"linalg.qr: mode must be 'reduced', 'complete' or 'r', got {mode!r}")
    A = _mat("qr", A, square=False, cplx=True)
    pm = "complete" if mode == "complete" else "reduced"
    q, r = L._unpack(L.qr(A, mode=pm), L._qr_shapes(A.shape, pm))
    if mode == "r":
        q = Tensor._of(A.backend.xp.zeros((0,), dtype=A.dtype))
    return QRResult(q, r)


def _uplo(op: str, UPLO: str) -> str:
    """'L' or 'U', read case-insensitively as PyTorch does."""
    if not isinstance(UPLO, str) or UPLO.upper() not in ("L", "U"):
        raise ValueError(f"linalg.{op}: UPLO must be 'L' or 'U', got {UPLO!r}")
    return UPLO.upper()


def eigh(A, UPLO: str = "L") -> EighResult:
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix, reading its
    ``UPLO`` triangle. Each eigenvector's sign is the LAPACK build's choice (PyTorch's may pick
    the other). The eigenvector gradient is not finite where eigenvalues repeat."""
    A = _mat("eigh", A, cplx=True)
    n = A.shape[-1]
    w, v = L._unpack(L.eigh(A, uplo=_uplo("eigh", UPLO)), ((n,), (n, n)))
    return EighResult(_real(w), v)


def eigvalsh(A, UPLO: str = "L") -> Tensor:
    """Eigenvalues (ascending) of a symmetric matrix; the gradient is finite everywhere."""
    return L.eigvalsh(_mat("eigvalsh", A, cplx=True), uplo=_uplo("eigvalsh", UPLO))


def eig(A) -> EigResult:
    """Eigenvalues and eigenvectors of a general square matrix (real or complex), always
    complex, as ``torch.linalg.eig``: each eigenvector has norm 1, its phase LAPACK's choice
    (largest component real). Gradients are PyTorch's; a loss that depends on the
    eigenvectors' phases is refused (it is ill-defined), and the eigenvector gradient is not
    finite where eigenvalues repeat."""
    A = _mat("eig", A, cplx=True)
    n = A.shape[-1]
    w, v = L._unpack(L.eig(A), ((n,), (n, n)))
    return EigResult(w, v)


def eigvals(A) -> Tensor:
    """Eigenvalues of a general square matrix, complex (``torch.linalg.eigvals``)."""
    A = _mat("eigvals", A, cplx=True)
    return L._unpack(L.eig(A), ((A.shape[-1],), (A.shape[-1],) * 2))[0]


def _svd_driver(op: str, driver) -> None:
    """PyTorch's cuSOLVER choices are accepted as hints (one LAPACK routine serves here);
    anything else is a mistake worth naming."""
    if driver not in (None, "gesvd", "gesvdj", "gesvda"):
        raise ValueError(f"linalg.{op}: driver must be None, 'gesvd', 'gesvdj' or 'gesvda', "
                         f"got {driver!r}")


def svd(A, full_matrices: bool = True, *, driver=None,
        compute_uv: bool = True) -> SVDResult | Tensor:
    """A = U diag(S) Vh, S descending. With ``full_matrices`` (PyTorch's default) the extra
    columns of U / rows of Vh are not unique and get no gradient, as in PyTorch. NumPy's and
    JAX's ``compute_uv=False`` gives S alone (:func:`svdvals`)."""
    if not compute_uv:
        return svdvals(A, driver=driver)
    _svd_driver("svd", driver)
    A = _mat("svd", A, square=False, cplx=True)
    u, s, vh = L._unpack(L.svd(A, full_matrices=bool(full_matrices)),
                         L._svd_shapes(A.shape, bool(full_matrices)))
    return SVDResult(u, _real(s), vh)


def svdvals(A, *, driver=None) -> Tensor:
    """Singular values, descending; the gradient is finite everywhere."""
    _svd_driver("svdvals", driver)
    return L.svdvals(_mat("svdvals", A, square=False, cplx=True))


def _eps(A) -> float:
    return float(_B.np.finfo(A.dtype).eps)


def _tol(op: str, name: str, t):
    """A tolerance as a float, or a float64 tensor of one per matrix (``None`` kept)."""
    if t is None:
        return None
    if isinstance(t, Tensor):
        if t.dtype.kind not in "fiub":
            raise DTypeError(f"linalg.{op}: {name} must be a real number or tensor, got "
                             f"{t.dtype}")
        return float(t.item()) if t.ndim == 0 else t.detach().astype("float64")
    if isinstance(t, str) or not isinstance(t, int | float) and not hasattr(t, "__float__"):
        raise TypeError(f"linalg.{op}: {name} must be a number or a tensor, got "
                        f"{type(t).__name__}")
    return float(t)


def _tolerances(op: str, A: Tensor, atol, rtol):
    """PyTorch's (atol, rtol): atol defaults to 0; rtol to max(m, n)·eps, but to 0 where atol
    is given and positive. Each a float or a float64 tensor (one value per matrix)."""
    atol, rtol = _tol(op, "atol", atol), _tol(op, "rtol", rtol)
    if rtol is None:
        default = max(A.shape[-2:]) * _eps(A)
        if atol is None:
            rtol = default
        elif isinstance(atol, Tensor):
            rtol = (atol <= 0).astype("float64") * default
        else:
            rtol = 0.0 if atol > 0 else default
    return (0.0 if atol is None else atol), rtol


def _cutoff(atol, rtol, smax):
    """max(atol, rtol·σ_max) per matrix (σ_max a tensor of the batch's shape)."""
    scaled = smax.astype("float64") * rtol
    return where(scaled > atol, scaled, atol)


def _pinvh_fwd(xp, a, atol, rtol):
    n = a.shape[-1]
    if n == 0:
        return xp.zeros(a.shape, dtype=a.dtype)
    w, v = L._call("pinv", L.NO_CONVERGENCE, xp.linalg.eigh, a, UPLO="L")
    aw = xp.abs(w)
    keep = aw > xp.maximum(atol, rtol * aw.max(-1, keepdims=True))
    winv = xp.where(keep, 1 / xp.where(keep, w, 1), 0).astype(a.dtype)
    vt = xp.swapaxes(v, -1, -2)
    return xp.matmul(v * winv[..., None, :], xp.conj(vt) if a.dtype.kind == "c" else vt)


def _pinvh_batch(vals, bdims, **params):
    return _pinv_hermitian(front(vals[0], bdims[0]), **params), 0


_pinv_hermitian = primitive(
    "pinv_hermitian", _pinvh_fwd, L._pinv_vjp, saves="both", kind="linalg", jvp=L._pinv_jvp,
    batch=_pinvh_batch, complex=(L._pinv_cvjp,),
    doc="Pseudo-inverse of a symmetric matrix from its eigendecomposition (|λ| ≤ "
        "max(atol, rtol·max|λ|) cut); pinv's gradient. pinv(hermitian=True) builds the "
        "symmetric input from the lower triangle first, as PyTorch reads it.")


def pinv(A, rcond=None, hermitian: bool = False, *, atol=None, rtol=None) -> Tensor:
    """Moore–Penrose pseudo-inverse; singular values ≤ max(atol, rtol·σ_max) count as zero
    (rtol defaults to max(m, n)·eps when atol is not given, as PyTorch). ``rcond`` (PyTorch's
    older positional form) is rtol with atol 0. ``hermitian``: A is symmetric and only its
    lower triangle is read (an eigendecomposition, |λ| for σ). atol and rtol may be tensors,
    one value per matrix. The gradient is the constant-rank rule, exact at rank-deficient A."""
    hermitian = bool(hermitian)
    A = _mat("pinv", A, square=hermitian, cplx=True)
    if rcond is not None:
        if atol is not None or rtol is not None:
            raise TypeError("linalg.pinv: give rcond (PyTorch's older form) or atol/rtol, not "
                            "both")
        atol, rtol = 0.0, rcond
    atol, rtol = _tolerances("pinv", A, atol, rtol)
    if hermitian:  # the symmetric matrix the lower triangle stands for: its gradient is the
        # lower triangle's (the off-diagonal entries count twice), and none reaches the upper
        A = L._tri(A) + _conj(swapaxes(L._tri(A, k=-1), -1, -2))
    f = _pinv_hermitian if hermitian else L.pinv
    if not isinstance(atol, Tensor) and not isinstance(rtol, Tensor):
        return f(A, atol=atol, rtol=rtol)
    # a tolerance per matrix: each matrix's own cut, max(atol, rtol·σ_max), in turn
    m, n = A.shape[-2], A.shape[-1]
    d = A.detach()
    s = _abs(L.eigvalsh(d, uplo="L")) if hermitian else L.svdvals(d)
    smax = _max(s, -1) if min(m, n) else Tensor._of(A.backend.xp.zeros(A.shape[:-2]))
    tol = _cutoff(atol, rtol, smax)
    batch = tuple(tol.shape)
    cuts = A.backend.to_host(values(tol)).reshape(-1)
    flat = reshape(broadcast_to(A, batch + (m, n)), (cuts.size, m, n))
    if not cuts.size:
        return reshape(f(flat, atol=0.0, rtol=0.0), batch + (n, m))
    out = stack([f(flat[i], atol=float(c), rtol=0.0) for i, c in enumerate(cuts)])
    return reshape(out, batch + (n, m))


@float32_op  # autocast: a float32 op (PyTorch's), its products in float32 too
def lstsq(A, B, rcond=None, *, driver=None) -> LstsqResult:
    """Least-squares solution of A X ≈ B (minimum norm), as pinv(A) B, with PyTorch's fields
    for its CPU drivers ('gelsy', the default, 'gels', 'gelsd', 'gelss'): residuals (the
    squared residual of each column) when m > n, for 'gels' always, for 'gelsd'/'gelss' when
    every A has full rank, for 'gelsy' never (empty); rank (not for 'gels'); singular values
    for 'gelsd'/'gelss' (else empty). ``rcond`` cuts singular values below rcond·σ_max (not
    for 'gels', which assumes full rank). B may be a vector (or a batch of them), as in
    :func:`solve`."""
    A = _mat("lstsq", A, square=False, cplx=True)
    B = _t(B)
    if driver not in (None, "gels", "gelsy", "gelsd", "gelss"):
        raise ValueError(f"linalg.lstsq: driver must be None, 'gels', 'gelsy', 'gelsd' or "
                         f"'gelss', got {driver!r}")
    driver = driver or "gelsy"
    if B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1])):
        x, res, rank, sv = lstsq(A, expand_dims(B, -1), rcond, driver=driver)
        return LstsqResult(squeeze(x, -1), res, rank, sv)  # residuals keep their last axis
    B = _mat("lstsq", B, square=False, name="B", cplx=True)
    if A.dtype != B.dtype:
        raise DTypeError(f"linalg.lstsq: A and B must have one dtype, got {A.dtype} and "
                         f"{B.dtype}")
    m, n = A.shape[-2], A.shape[-1]
    if B.shape[-2] != m:
        raise ShapeError(f"linalg.lstsq: A of shape {tuple(A.shape)} and B of shape "
                         f"{tuple(B.shape)} need the same number of rows")
    # 'gels' (QR, full rank assumed) ignores rcond, as LAPACK's
    rtol = max(m, n) * _eps(A) if rcond is None or driver == "gels" else float(rcond)
    x = L.matmul(pinv(A, rtol=rtol), B)
    xp = A.backend.xp
    real_dt = _real(A).dtype  # residuals and singular values are real for complex A
    empty = Tensor._of(xp.zeros((0,), dtype=real_dt))
    rank = None
    if driver != "gels":
        s = svdvals(A).detach()
        rank = (s > s[..., :1] * rtol).astype("int64").sum(-1) if min(m, n) else \
            Tensor._of(xp.zeros(A.shape[:-2], dtype="int64"))
    full = driver == "gels" or (driver != "gelsy" and bool((values(rank) == n).all()))
    res = empty
    if m > n and full:
        d = L.matmul(A, x) - B
        res = (_real(d) ** 2 + d.imag ** 2 if d.dtype.kind == "c" else d * d).sum(-2)
    return LstsqResult(x, res, empty.astype("int64") if rank is None else rank,
                       svdvals(A) if driver in ("gelsd", "gelss") else empty)


# --- norms -----------------------------------------------------------------------------------
def _cast(x, dtype) -> Tensor:
    x = _t(x)
    return x if dtype is None else x.astype(dtype)


def _vn(x, ord, dim, keepdim) -> Tensor:
    """The vector norm; of |x| for complex x (a real result, gradient x/|x| · ...)."""
    return _vector_norm(_abs(x) if x.dtype.kind == "c" else x, ord, dim, keepdim)


def _mn(A, ord, dim, keepdim) -> Tensor:
    """The matrix norm; complex A: the entrywise ones of |A|, the spectral ones ('nuc', ±2)
    from A's singular values."""
    if A.dtype.kind != "c":
        return _matrix_norm(A, ord, dim, keepdim)
    if isinstance(ord, str) and ord == "nuc" or not isinstance(ord, str) and ord in (2, -2):
        if A.ndim < 2 or len(tuple(dim)) != 2:
            raise ShapeError(f"linalg.matrix_norm: expected A with at least 2 dims and two "
                             f"dims named, got shape {tuple(A.shape)} and dim={dim!r}")
        d0, d1 = (int(d) % A.ndim if -A.ndim <= int(d) < A.ndim else None for d in dim)
        if d0 is None or d1 is None or d0 == d1:
            raise ShapeError(f"linalg.matrix_norm: dim={dim!r} must name two different axes "
                             f"of a tensor of shape {tuple(A.shape)}")
        perm = tuple(i for i in range(A.ndim) if i not in (d0, d1)) + (d0, d1)
        s = L.svdvals(A.permute(*perm))
        if s.shape[-1] == 0:
            if ord == -2:
                raise ShapeError(f"linalg.matrix_norm: ord -2 of an empty matrix (shape "
                                 f"{tuple(A.shape)}) is a minimum over nothing")
            out = s.sum(-1)
        else:
            out = s.sum(-1) if ord == "nuc" else _max(s, -1) if ord == 2 else -_max(-s, -1)
        if keepdim:
            for d in sorted((d0, d1)):
                out = expand_dims(out, d)
        return out
    return _matrix_norm(_abs(A), ord, dim, keepdim)


def vector_norm(x, ord=2, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """‖x‖_ord over ``dim`` (all entries when None); ``dtype``: x is cast to it first. Complex
    x: the norm of |x|, real."""
    return _vn(_cast(x, dtype), ord, dim, keepdim)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim: bool = False, *, dtype=None) -> Tensor:
    """Matrix norms over the two axes ``dim``: 'fro', 'nuc', ±inf, ±1, ±2; ``dtype``: A is cast
    to it first. Complex A: a real norm ('nuc' and ±2 from its singular values)."""
    return _mn(_cast(A, dtype), ord, dim, keepdim)


def norm(A, ord=None, dim=None, keepdim: bool = False, *, dtype=None, axis=None,
         keepdims: bool | None = None) -> Tensor:
    """``torch.linalg.norm``: a vector norm over one dim, a matrix norm over two (``ord`` 2 is
    then the largest singular value, 1 the largest column sum, ...). Without ``dim``: ord None
    is the 2-norm of all entries, any other ord needs A 1-d (vector) or 2-d (matrix). NumPy's
    ``axis=`` and ``keepdims=`` (``np.linalg.norm``) name ``dim`` and ``keepdim``."""
    if axis is not None:
        if dim is not None:
            raise TypeError("linalg.norm: pass dim (PyTorch) or axis (NumPy), not both")
        dim = axis
    if keepdims is not None:
        keepdim = keepdims
    A = _cast(A, dtype)
    dims = None
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if len(dims) not in (1, 2):
            raise ShapeError(f"linalg.norm: dim must be an int or name 1 or 2 dims, got {dim!r}")
    if ord is None:  # the 2-norm of the entries (Frobenius over two dims)
        return _vn(A, 2, dims, keepdim)
    if dims is None:
        if A.ndim not in (1, 2):
            raise ShapeError(f"linalg.norm: with ord and no dim, A must be 1-d or 2-d, got "
                             f"shape {tuple(A.shape)}")
        dims = tuple(range(A.ndim))
    if len(dims) == 1:
        if isinstance(ord, str):
            raise ValueError(f"linalg.norm: ord {ord!r} is a matrix norm; it needs two dims, got "
                             f"dim={dim!r} for shape {tuple(A.shape)}")
        return _vn(A, ord, dims, keepdim)
    return _mn(A, ord, dims, keepdim)


# --- powers and exponentials ----------------------------------------------------------------
def matrix_power(A, n: int) -> Tensor:
    """A to the integer power n (n < 0: of A⁻¹, float or complex A only) by repeated squaring;
    n = 0 gives I (connected to A, with a zero gradient, as PyTorch). Integer A stays
    integer."""
    A = _t(A)
    if A.dtype.kind in "iu" and A.ndim >= 2 and A.shape[-1] == A.shape[-2]:
        if int(n) == n and n < 0:
            raise DTypeError(f"linalg.matrix_power: a negative power inverts A and needs a float "
                             f"tensor, got {A.dtype}")
    else:
        A = _mat("matrix_power", A, half=True, cplx=True)
    if isinstance(n, bool) or int(n) != n:
        raise TypeError(f"linalg.matrix_power: n must be an integer, got {n!r}")
    n = int(n)
    if n == 0:
        xp = A.backend.xp
        return where(Tensor._of(xp.zeros((), dtype=bool)), A,
                     Tensor._of(xp.eye(A.shape[-1], dtype=A.dtype)))
    if n < 0:
        A, n = inv(A), -n
    elif n == 1:
        return A.clone()  # a new tensor, as PyTorch's
    out = None
    while True:
        if n & 1:
            out = A if out is None else L.matmul(out, A)
        n >>= 1
        if not n:
            return out
        A = L.matmul(A, A)


_TAYLOR = 18  # terms of the Taylor series at ‖X‖₁ ≤ 1: remainder < 1/19! ≈ 8e-18


def matrix_exp(A) -> Tensor:
    """exp(A) by scaling and squaring: X = A / 2ˢ with ‖X‖₁ ≤ 1, an 18-term Taylor polynomial
    (Horner), then s squarings; the gradient is the engine's, through the same steps."""
    A = _mat("matrix_exp", A, half=True, cplx=True)
    n = A.shape[-1]
    v = values(A)
    xp = A.backend.xp
    norm = float(xp.abs(v).sum(-2).max()) if v.size else 0.0
    s = 0
    while norm > 1 and s < 64:
        norm /= 2
        s += 1
    x = A * (0.5 ** s)
    eye = Tensor._of(xp.eye(n, dtype=A.dtype))
    t = eye
    for k in range(_TAYLOR, 0, -1):
        t = eye + L.matmul(x, t) * (1.0 / k)
    for _ in range(s):
        t = L.matmul(t, t)
    return t


# --- products -------------------------------------------------------------------------------
def cross(input, other, *, dim: int = -1) -> Tensor:
    """Cross product of 3-vectors along ``dim`` (operands broadcast)."""
    a, b = _t(input), _t(other)
    if a.ndim != b.ndim:
        raise ShapeError(f"linalg.cross: inputs must have the same number of dimensions, got "
                         f"shapes {tuple(a.shape)} and {tuple(b.shape)}")
    shape = tuple(_B.np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
    if (not shape or not -len(shape) <= dim < len(shape)
            or a.shape[dim] != 3 or b.shape[dim] != 3):  # that dim is never broadcast
        raise ShapeError(f"linalg.cross: dim={dim} must have length 3, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    a, b = broadcast_to(a, shape), broadcast_to(b, shape)
    ax = dim % len(shape)

    def c(t, i):
        return t[(slice(None),) * ax + (i,)]

    return stack([c(a, 1) * c(b, 2) - c(a, 2) * c(b, 1), c(a, 2) * c(b, 0) - c(a, 0) * c(b, 2),
                  c(a, 0) * c(b, 1) - c(a, 1) * c(b, 0)], ax)


def multi_dot(tensors) -> Tensor:
    """A₁ A₂ … A_k in the cheapest order (dynamic programming over the chain); the first may be
    a row vector and the last a column vector (1-d), as PyTorch."""
    ts = [_t(t) for t in tensors]
    if len(ts) < 2:
        raise ValueError(f"linalg.multi_dot: expected at least 2 tensors, got {len(ts)}")
    first, last = ts[0].ndim == 1, ts[-1].ndim == 1
    if first:
        ts[0] = expand_dims(ts[0], 0)
    if last:
        ts[-1] = expand_dims(ts[-1], -1)
    for i, t in enumerate(ts):
        if t.ndim != 2:
            raise ShapeError(f"linalg.multi_dot: tensor {i} must be 2-d (1-d only first or last),"
                             f" got shape {tuple(t.shape)}")
        if i and ts[i - 1].shape[1] != t.shape[0]:
            raise ShapeError(f"linalg.multi_dot: tensors {i - 1} and {i} do not chain: shapes "
                             f"{tuple(ts[i - 1].shape)} and {tuple(t.shape)}")
    dims = [ts[0].shape[0]] + [t.shape[1] for t in ts]
    k = len(ts)
    cost = [[0] * k for _ in range(k)]
    split = [[0] * k for _ in range(k)]
    for length in range(1, k):
        for i in range(k - length):
            j = i + length
            cost[i][j] = float("inf")
            for m in range(i, j):
                c = cost[i][m] + cost[m + 1][j] + dims[i] * dims[m + 1] * dims[j + 1]
                if c < cost[i][j]:
                    cost[i][j], split[i][j] = c, m

    def chain(i, j):
        if i == j:
            return ts[i]
        m = split[i][j]
        return L.matmul(chain(i, m), chain(m + 1, j))

    out = chain(0, k - 1)
    if first:
        out = squeeze(out, 0)
    if last:
        out = squeeze(out, -1)
    return out


# --- LU and the compositions of torch.linalg (their own module, re-exported here) -------------
from .linalg_lu import *  # noqa: E402, F403
from .linalg_lu import __all__ as _more  # noqa: E402

__all__ += _more
from .linalg_ldl import *  # noqa: E402, F403
from .linalg_ldl import __all__ as _ldl  # noqa: E402

__all__ += _ldl


take_out(globals(), """
    cholesky cholesky_ex cond cross det eig eigh eigvals eigvalsh householder_product inv
    inv_ex ldl_factor ldl_factor_ex ldl_solve lu lu_factor lu_factor_ex lu_solve matmul
    matrix_norm matrix_power matrix_rank multi_dot norm pinv qr slogdet solve solve_ex
    solve_triangular svd svdvals tensorinv tensorsolve vecdot vector_norm lstsq
""", "linalg.")

from .ops import keywords as _keywords  # noqa: E402

_keywords.apply(globals(), None, _keywords.LINALG)
