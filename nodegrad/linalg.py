"""``ng.linalg``: PyTorch's ``torch.linalg`` on nodegrad's primitives, batched over leading axes.

Solves and decompositions are primitives (``nodegrad/ops/linalg.py``) with the standard matrix
rules for their gradients; the rest are compositions of them. Degenerate inputs behave as in
PyTorch: ``det`` of a singular matrix has a finite gradient (from the SVD); the gradients of
``eigh``'s eigenvectors and ``svd``'s singular vectors are infinite (or NaN) where eigenvalues
or singular values repeat, because those vectors are not unique there (PyTorch likewise), while
``eigvalsh`` and ``svdvals`` stay finite; ``inv``, ``solve`` and ``cholesky`` raise
:class:`LinAlgError` for singular or non-positive-definite matrices.
"""

from __future__ import annotations

from typing import NamedTuple

from . import _backend as _B
from .batching import values
from .errors import DTypeError, LinAlgError, ShapeError
from .ops import linalg as L
from .ops.reduce import matrix_norm, norm, vector_norm
from .ops.shape import broadcast_to, expand_dims, squeeze, stack, swapaxes
from .tensor import Tensor, tensor

__all__ = ["LinAlgError", "inv", "solve", "det", "slogdet", "cholesky", "cholesky_solve",
           "solve_triangular", "triangular_solve", "qr", "eigh", "eigvalsh", "svd", "svdvals",
           "pinv", "lstsq", "matrix_power", "matrix_exp", "cross", "multi_dot", "vector_norm",
           "matrix_norm", "norm"]


class SlogdetResult(NamedTuple):
    sign: Tensor
    logabsdet: Tensor


class QRResult(NamedTuple):
    Q: Tensor
    R: Tensor


class EighResult(NamedTuple):
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


def _mat(op: str, a, square: bool = True, name: str = "A") -> Tensor:
    """``a`` as a float tensor of matrices, checked (square if asked)."""
    a = _t(a)
    if a.dtype.kind != "f":
        raise DTypeError(f"linalg.{op}: expected a float32 or float64 tensor for {name}, got "
                         f"{a.dtype}")
    if a.ndim < 2:
        raise ShapeError(f"linalg.{op}: {name} must be a matrix or a batch of matrices "
                         f"(..., m, n), got shape {tuple(a.shape)}")
    if square and a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"linalg.{op}: {name} must be square (..., n, n), got shape "
                         f"{tuple(a.shape)}")
    return a


def _mT(x):
    return swapaxes(x, -1, -2)


# --- inverses and solves --------------------------------------------------------------------
def inv(A) -> Tensor:
    """Inverse of a square matrix; :class:`LinAlgError` if it is singular."""
    return L.inv(_mat("inv", A))


def solve(A, B, *, left: bool = True) -> Tensor:
    """X with A X = B (``left=False``: X A = B). B is a batch of vectors when its shape is
    ``A.shape[:-1]`` or it is 1-d (PyTorch's rule), else of matrices."""
    A = _mat("solve", A)
    B = _t(B)
    n = A.shape[-1]
    vector = B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1]))
    if vector:
        if B.shape[-1] != n:
            raise ShapeError(f"linalg.solve: A of shape {tuple(A.shape)} and B of shape "
                             f"{tuple(B.shape)} do not fit (B's last axis must be {n})")
        return squeeze(solve(A, expand_dims(B, -1) if left else expand_dims(B, -2),
                             left=left), -1 if left else -2)
    B = _mat("solve", B, square=False, name="B")
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
    A = _mat("solve_triangular", A)
    B = _mat("solve_triangular", B, square=False, name="B")
    n = A.shape[-1]
    if (B.shape[-2] if left else B.shape[-1]) != n:
        raise ShapeError(f"linalg.solve_triangular: A of shape {tuple(A.shape)} and B of shape "
                         f"{tuple(B.shape)} do not fit")
    if left:
        return L.solve_triangular(A, B, upper=upper, unitriangular=unitriangular)
    return _mT(L.solve_triangular(_mT(A), _mT(B), upper=not upper, unitriangular=unitriangular))


def triangular_solve(b, A, upper: bool = True, transpose: bool = False,
                     unitriangular: bool = False) -> TriangularSolveResult:
    """``torch.triangular_solve``: (X with op(T) X = b, a copy of A), op(T) = Tᵀ if
    ``transpose``."""
    A = _mat("triangular_solve", A)
    if transpose:
        x = solve_triangular(_mT(A), b, upper=not upper, unitriangular=unitriangular)
    else:
        x = solve_triangular(A, b, upper=upper, unitriangular=unitriangular)
    return TriangularSolveResult(x, A * 1)


def cholesky_solve(B, L_, upper: bool = False) -> Tensor:
    """``torch.cholesky_solve(B, L)``: X with A X = B for A = L Lᵀ (``upper``: A = Uᵀ U), given
    the Cholesky factor; two triangular solves."""
    L_ = _mat("cholesky_solve", L_, name="L")
    if upper:
        y = solve_triangular(_mT(L_), B, upper=False)
        return solve_triangular(L_, y, upper=True)
    y = solve_triangular(L_, B, upper=False)
    return solve_triangular(_mT(L_), y, upper=True)


# --- determinants ---------------------------------------------------------------------------
def det(A) -> Tensor:
    """Determinant (batched); the gradient is the cofactor matrix, finite for singular A."""
    return L.det(_mat("det", A))


def slogdet(A) -> SlogdetResult:
    """(sign, log|det A|): the log-determinant without overflow; the sign has no gradient."""
    p = L.slogdet(_mat("slogdet", A))
    return SlogdetResult(p[..., 0], p[..., 1])


# --- decompositions -------------------------------------------------------------------------
def cholesky(A, *, upper: bool = False) -> Tensor:
    """Cholesky factor of a symmetric positive-definite A (lower triangle read): L with
    A = L Lᵀ, or U = Lᵀ if ``upper``. :class:`LinAlgError` if A is not positive-definite."""
    lo = L.cholesky(_mat("cholesky", A))
    return _mT(lo) if upper else lo


def qr(A, mode: str = "reduced") -> QRResult:
    """A = Q R with orthonormal columns Q and upper-triangular R; ``mode`` 'reduced',
    'complete' or 'r' (Q empty), as PyTorch."""
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"linalg.qr: mode must be 'reduced', 'complete' or 'r', got {mode!r}")
    A = _mat("qr", A, square=False)
    pm = "complete" if mode == "complete" else "reduced"
    q, r = L._unpack(L.qr(A, mode=pm), L._qr_shapes(A.shape, pm))
    if mode == "r":
        q = Tensor(A.backend.xp.zeros((0,), dtype=A.dtype))
    return QRResult(q, r)


def _uplo(op: str, UPLO: str) -> str:
    if UPLO not in ("L", "U"):
        raise ValueError(f"linalg.{op}: UPLO must be 'L' or 'U', got {UPLO!r}")
    return UPLO


def eigh(A, UPLO: str = "L") -> EighResult:
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix, reading its
    ``UPLO`` triangle. The eigenvector gradient is not finite where eigenvalues repeat."""
    A = _mat("eigh", A)
    n = A.shape[-1]
    w, v = L._unpack(L.eigh(A, uplo=_uplo("eigh", UPLO)), ((n,), (n, n)))
    return EighResult(w, v)


def eigvalsh(A, UPLO: str = "L") -> Tensor:
    """Eigenvalues (ascending) of a symmetric matrix; the gradient is finite everywhere."""
    return L.eigvalsh(_mat("eigvalsh", A), uplo=_uplo("eigvalsh", UPLO))


def svd(A, full_matrices: bool = True, *, driver=None) -> SVDResult:
    """A = U diag(S) Vh, S descending. With ``full_matrices`` (PyTorch's default) the extra
    columns of U / rows of Vh are not unique and get no gradient, as in PyTorch."""
    A = _mat("svd", A, square=False)
    u, s, vh = L._unpack(L.svd(A, full_matrices=bool(full_matrices)),
                         L._svd_shapes(A.shape, bool(full_matrices)))
    return SVDResult(u, s, vh)


def svdvals(A, *, driver=None) -> Tensor:
    """Singular values, descending; the gradient is finite everywhere."""
    return L.svdvals(_mat("svdvals", A, square=False))


def _eps(A) -> float:
    return float(_B.np.finfo(A.dtype).eps)


def pinv(A, *, atol=None, rtol=None, hermitian: bool = False) -> Tensor:
    """Moore–Penrose pseudo-inverse; singular values ≤ max(atol, rtol·σ_max) count as zero
    (rtol defaults to max(m, n)·eps when atol is not given, as PyTorch)."""
    A = _mat("pinv", A, square=hermitian)
    if rtol is None:
        rtol = max(A.shape[-2:]) * _eps(A) if atol is None or atol <= 0 else 0.0
    return L.pinv(A, atol=float(atol or 0.0), rtol=float(rtol))


def lstsq(A, B, rcond=None, *, driver=None) -> LstsqResult:
    """Least-squares solution of A X ≈ B (minimum norm), as pinv(A) B, with PyTorch's fields:
    residuals when m > n and A has full rank (else empty), rank (not for 'gels'), and the
    singular values for the 'gelsd'/'gelss' drivers (else empty)."""
    A = _mat("lstsq", A, square=False)
    B = _mat("lstsq", B, square=False, name="B")
    if driver not in (None, "gels", "gelsy", "gelsd", "gelss"):
        raise ValueError(f"linalg.lstsq: unknown driver {driver!r}")
    m, n = A.shape[-2], A.shape[-1]
    if B.shape[-2] != m:
        raise ShapeError(f"linalg.lstsq: A of shape {tuple(A.shape)} and B of shape "
                         f"{tuple(B.shape)} need the same number of rows")
    rtol = max(m, n) * _eps(A) if rcond is None else float(rcond)
    x = L.matmul(pinv(A, rtol=rtol), B)
    xp = A.backend.xp
    empty = Tensor(xp.zeros((0,), dtype=A.dtype))
    s = svdvals(A)
    rank = (s > s[..., :1] * rtol).astype("int64").sum(-1) if min(m, n) else \
        Tensor(xp.zeros(A.shape[:-2], dtype="int64"))
    res = empty
    sv = values(A)
    if m > n and sv.size and bool((_B.np.linalg.matrix_rank(A.backend.to_host(sv)) == n).all()):
        d = L.matmul(A, x) - B
        res = (d * d).sum(-2)
    return LstsqResult(x, res, empty.astype("int64") if driver == "gels" else rank,
                       s if driver in ("gelsd", "gelss") else empty)


# --- powers and exponentials ----------------------------------------------------------------
def matrix_power(A, n: int) -> Tensor:
    """A to the integer power n (n < 0: of A⁻¹) by repeated squaring; n = 0 gives I."""
    A = _mat("matrix_power", A)
    if int(n) != n:
        raise TypeError(f"linalg.matrix_power: n must be an integer, got {n!r}")
    n = int(n)
    if n == 0:
        return broadcast_to(Tensor(A.backend.xp.eye(A.shape[-1], dtype=A.dtype)), A.shape)
    if n < 0:
        A, n = inv(A), -n
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
    A = _mat("matrix_exp", A)
    n = A.shape[-1]
    v = values(A)
    xp = A.backend.xp
    norm = float(xp.abs(v).sum(-2).max()) if v.size else 0.0
    s = 0
    while norm > 1 and s < 64:
        norm /= 2
        s += 1
    x = A * (0.5 ** s)
    eye = Tensor(xp.eye(n, dtype=A.dtype))
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
    if not shape or not -len(shape) <= dim < len(shape) or shape[dim] != 3:
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
