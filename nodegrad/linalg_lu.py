"""LU factorisation with partial pivoting, and the rest of ``torch.linalg``'s names that are
compositions: rank, condition number, the ``_ex`` forms, tensor inverses and solves.

The LU factorisation is Gaussian elimination written with tensor ops, one column a step (the
pivot chosen by ``argmax``, rows exchanged by a gather), so its gradient, second derivatives,
``vmap`` and ``jit`` come from those ops; LAPACK's ``getrf`` makes the same choices, so ``LU``
and ``pivots`` equal PyTorch's up to rounding. A zero pivot (a singular matrix) leaves its
column's multipliers at zero, as LAPACK does, instead of dividing by it. Complex matrices pivot
on |Re| + |Im|, LAPACK's choice for them, so their pivots are PyTorch's too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import _backend as _B
from .amp import float32_op, lower_in_region
from .autodiff import computes_with_values, modes
from .batching import values
from .errors import DTypeError, LinAlgError, ShapeError
from .ops.arrange import diagonal as _diagonal
from .ops.arrange import tril, triu
from .ops.complex import conj as _conj
from .ops.complex import imag as _imag
from .ops.complex import real as _real
from .ops.elementwise import abs as _abs
from .ops.elementwise import where
from .ops.index import take_along_axis
from .ops.reduce import argmax
from .ops.reduce import max as _max
from .ops.scan import cumprod
from .ops.reduce import sum as _sum
from .ops.shape import scalar_dims
from .ops.shape import broadcast_to, concatenate, expand_dims, reshape, swapaxes
from .tensor import Tensor, arange, eye, zeros

__all__ = ["lu_factor", "lu_factor_ex", "lu", "lu_unpack", "lu_solve", "matrix_rank", "cond",
           "vecdot", "diagonal", "vander", "inv_ex", "solve_ex", "cholesky_ex", "tensorinv",
           "tensorsolve"]


class LUFactorResult(NamedTuple):
    LU: Tensor
    pivots: Tensor


class LUFactorExResult(NamedTuple):
    LU: Tensor
    pivots: Tensor
    info: Tensor


class LUResult(NamedTuple):
    P: Tensor
    L: Tensor
    U: Tensor


class InvExResult(NamedTuple):
    inverse: Tensor
    info: Tensor


class SolveExResult(NamedTuple):
    result: Tensor
    info: Tensor


class CholeskyExResult(NamedTuple):
    L: Tensor
    info: Tensor


def _la():
    from . import linalg  # the sibling namespace (it imports this module at its end)

    return linalg


def _mT(x):
    return swapaxes(x, -1, -2)


def _mH(x):
    """The conjugate transpose of the last two axes (the transpose of a real tensor)."""
    return _conj(swapaxes(x, -1, -2))


def _pivot_size(x):
    """What LAPACK's ``i?amax`` compares to pick a pivot: |x|, or |Re x| + |Im x| for complex x
    (so the pivots are PyTorch's)."""
    if x.dtype.kind == "c":
        return _abs(_real(x)) + _abs(_imag(x))
    return _abs(x)


def _factor(A: Tensor, pivot: bool):
    """(LU, row order, pivots 1-based, info) of A (..., m, n) by right-looking elimination."""
    A = _la()._mat("lu_factor", A, square=False, cplx=True)
    m, n = A.shape[-2], A.shape[-1]
    k = min(m, n)
    batch = tuple(A.shape[:-2])
    be = A.backend
    rows = arange(m, device=A.device)
    order = broadcast_to(rows, batch + (m,))
    pivots, info = [], None
    W = A
    for j in range(k):
        if pivot:
            p = argmax(_pivot_size(W[..., j:, j]), -1) + j  # (...)
            swap = where(rows == j, expand_dims(p, -1), where(rows == expand_dims(p, -1), j, rows))
            W = take_along_axis(W, broadcast_to(expand_dims(swap, -1), batch + (m, n)), -2)
            order = take_along_axis(order, swap, -1)
            pivots.append(p + 1)
        else:
            pivots.append(broadcast_to(Tensor._of(be.asarray(j + 1)), batch))
        d = W[..., j, j]
        zero = d == 0
        if info is None:
            info = where(zero, j + 1, 0)
        else:
            info = where((info == 0) & zero, j + 1, info)
        if j + 1 < m:
            col = W[..., j + 1:, j] / expand_dims(where(zero, 1, d), -1)
            col = where(expand_dims(zero, -1), 0, col)
            below = W[..., j + 1:, j + 1:] - expand_dims(col, -1) * W[..., j:j + 1, j + 1:]
            lower = concatenate([W[..., j + 1:, :j], expand_dims(col, -1), below], -1)
            W = concatenate([W[..., :j + 1, :], lower], -2)
    piv = concatenate([expand_dims(p, -1) for p in pivots], -1).astype(_B.int32) if k else \
        zeros(batch + (0,), dtype=_B.int32, device=A.device)
    if info is None:
        info = zeros(batch, dtype=_B.int32, device=A.device)
    return W, order, piv, info.astype(_B.int32)


def lu_factor(A, *, pivot: bool = True) -> LUFactorResult:
    """(LU, pivots): L (unit lower, below the diagonal) and U packed in one matrix, and
    LAPACK's 1-based row interchanges, as ``torch.linalg.lu_factor``; differentiable."""
    LU, _, piv, info = _factor(A, pivot)
    _zero_pivot("torch.linalg.lu_factor", info)
    return LUFactorResult(LU, piv)


def _zero_pivot(op: str, info: Tensor) -> None:
    """Raise, as PyTorch's ``lu_factor``, where a factor's U has an exact zero on its diagonal
    (``lu_factor_ex`` returns that as ``info``). Under a jit trace the values are not known
    yet: that signature then runs eagerly, each call checking its own matrix."""
    d = values(info)  # inside vmap, the whole batch's
    rec = modes().jit
    if rec is not None and id(d) in rec.slot:
        computes_with_values(info, "lu_factor's zero-pivot check")
        return
    flat = _B.np.asarray(_B.backend_of(d).to_host(d)).reshape(-1)
    bad = [i for i in range(flat.size) if flat[i] != 0]
    if bad:
        where_ = f"(Batch element {bad[0]}): " if d.ndim else ""
        k = int(flat[bad[0]])
        raise LinAlgError(f"{op}: {where_}U[{k},{k}] is zero and using it on lu_solve would "
                          "result in a division by zero. If you still want to perform the "
                          "factorization, consider calling linalg.lu(A, pivot) or "
                          "linalg.lu_factor_ex(A, pivot)")


def lu_factor_ex(A, *, pivot: bool = True, check_errors: bool = False) -> LUFactorExResult:
    """:func:`lu_factor` with ``info``: 0, or k where U[k-1, k-1] is exactly zero."""
    LU, _, piv, info = _factor(A, pivot)
    if check_errors and bool((info.numpy() != 0).any()):
        raise LinAlgError("linalg.lu_factor_ex: the factorisation has a zero pivot (the matrix "
                          "is singular)")
    return LUFactorExResult(LU, piv, info)


def _unpack(LU: Tensor, order: Tensor | None, m: int, n: int):
    k = min(m, n)
    dev = LU.device
    Lm = tril(LU[..., :, :k], -1) + eye(m, k, dtype=LU.dtype, device=dev)
    Um = triu(LU[..., :k, :])
    if order is None:
        return None, Lm, Um
    # A[order] = L U, so A = P L U with P[order[i], i] = 1
    P = (expand_dims(order, -2) == expand_dims(arange(m, device=dev), -1)).astype(LU.dtype)
    return P, Lm, Um


def lu(A, *, pivot: bool = True) -> LUResult:
    """A = P L U (``torch.linalg.lu``): P a permutation, L unit lower (m, k), U upper (k, n)."""
    LU, order, _, _ = _factor(A, pivot)
    m, n = LU.shape[-2], LU.shape[-1]
    P, Lm, Um = _unpack(LU, order, m, n)
    if not pivot:
        P = zeros(tuple(LU.shape[:-2]) + (0, 0), dtype=LU.dtype, device=LU.device)
    return LUResult(P, Lm, Um)


def _order_from_pivots(pivots: Tensor, m: int) -> Tensor:
    """The row order that LAPACK's interchanges (1-based, applied in turn) produce."""
    batch = tuple(pivots.shape[:-1])
    rows = arange(m, device=pivots.device)
    order = broadcast_to(rows, batch + (m,))
    for j in range(pivots.shape[-1]):
        p = pivots[..., j].astype(_B.int64) - 1
        swap = where(rows == j, expand_dims(p, -1), where(rows == expand_dims(p, -1), j, rows))
        order = take_along_axis(order, swap, -1)
    return order


def lu_unpack(LU_data, LU_pivots, unpack_data: bool = True,
              unpack_pivots: bool = True) -> LUResult:
    """(P, L, U) from :func:`lu_factor`'s result (``torch.lu_unpack``)."""
    LU_data = _la()._mat("lu_unpack", LU_data, square=False, half=True, cplx=True)
    m, n = LU_data.shape[-2], LU_data.shape[-1]
    order = _order_from_pivots(LU_pivots, m) if unpack_pivots else None
    P, Lm, Um = _unpack(LU_data, order, m, n)
    empty = zeros((0,), dtype=LU_data.dtype, device=LU_data.device)
    return LUResult(P if unpack_pivots else empty, Lm if unpack_data else empty,
                    Um if unpack_data else empty)


def lu_solve(LU, pivots, B, *, left: bool = True, adjoint: bool = False) -> Tensor:
    """X with A X = B from A's :func:`lu_factor` (``adjoint``: Aᴴ X = B, Aᵀ for real A;
    ``left=False``: X A = B), as ``torch.linalg.lu_solve``; differentiable in LU and B."""
    la = _la()
    LU = la._mat("lu_solve", LU, cplx=True)
    B = la._mat("lu_solve", B, square=False, name="B", cplx=True)
    if LU.dtype != B.dtype:
        raise DTypeError(f"linalg.lu_solve: LU and B must have one dtype, got {LU.dtype} and "
                         f"{B.dtype}")
    n = LU.shape[-1]
    if (B.shape[-2] if left else B.shape[-1]) != n:
        raise ShapeError(f"linalg.lu_solve: LU of shape {tuple(LU.shape)} and B of shape "
                         f"{tuple(B.shape)} do not fit")
    if not left:  # X A = B  <=>  Aᴴ Xᴴ = Bᴴ
        return _mH(lu_solve(LU, pivots, _mH(B), left=True, adjoint=not adjoint))
    batch = tuple(_B.np.broadcast_shapes(tuple(LU.shape[:-2]), tuple(B.shape[:-2])))
    if n == 0:  # nothing to solve: an empty result of the broadcast shape
        return zeros(batch + tuple(B.shape[-2:]), dtype=B.dtype, device=B.device) + \
            (B.sum() + LU.sum()) * 0
    order = _order_from_pivots(pivots, n)
    if not adjoint:  # A = P L U:  L U X = Pᵀ B = B[order]
        idx = broadcast_to(expand_dims(order, -1), batch + (n, B.shape[-1]))
        Y = la.solve_triangular(LU, take_along_axis(broadcast_to(B, batch + tuple(B.shape[-2:])),
                                                    idx, -2), upper=False, unitriangular=True)
        return la.solve_triangular(LU, Y, upper=True)
    # Aᴴ = Uᴴ Lᴴ Pᵀ:  Uᴴ Z = B, Lᴴ W = Z, X = P W  (X[order] = W)
    Z = la.solve_triangular(_mH(LU), B, upper=False)
    W = la.solve_triangular(_mH(LU), Z, upper=True, unitriangular=True)
    inverse = argmax(expand_dims(order, -1) == arange(n, device=LU.device), -2)
    idx = broadcast_to(expand_dims(inverse, -1), tuple(W.shape[:-2]) + (n, W.shape[-1]))
    return take_along_axis(W, idx, -2)


# --- the rest of torch.linalg ---------------------------------------------------------------
def matrix_rank(A, tol=None, hermitian: bool = False, *, atol=None, rtol=None) -> Tensor:
    """How many singular values exceed max(atol, rtol·σ_max) (rtol defaults to
    max(m, n)·eps when atol is not given, as PyTorch); ``tol`` (PyTorch's older positional
    form) is atol with rtol 0. ``hermitian``: A is symmetric and only its lower triangle is
    read (|eigenvalues| for σ). atol and rtol may be tensors, one value per matrix. int64, no
    gradient."""
    la = _la()
    hermitian = bool(hermitian)
    A = la._mat("matrix_rank", A, square=hermitian, cplx=True)
    if tol is not None:
        if atol is not None or rtol is not None:
            raise TypeError("linalg.matrix_rank: give tol (PyTorch's older form) or atol/rtol, "
                            "not both")
        atol, rtol = tol, 0.0
    atol, rtol = la._tolerances("matrix_rank", A, atol, rtol)
    d = A.detach()
    s = _abs(la.eigvalsh(d)) if hermitian else la.svdvals(d)
    if not s.shape[-1]:
        return zeros(tuple(A.shape[:-2]), dtype=_B.int64, device=A.device)
    cut = la._cutoff(atol, rtol, _max(s, -1))
    return _sum((s.astype(_B.float64) > expand_dims(cut, -1)).astype(_B.int64), -1)


def cond(A, p=None) -> Tensor:
    """The condition number: σ_max/σ_min for ``p`` None or ±2, else ‖A‖_p ‖A⁻¹‖_p ('fro',
    'nuc', ±inf, ±1; inf for a singular matrix), as ``torch.linalg.cond``."""
    la = _la()
    A = la._mat("cond", A, square=p is not None and p not in (2, -2), cplx=True)
    if 0 in A.shape[-2:]:  # an empty matrix: 0, as PyTorch's
        return (A * 0).sum((-2, -1))
    if p is None or p in (2, -2):
        s = la.svdvals(A)
        hi, lo = s[..., 0], s[..., -1]
        return hi / lo if p in (None, 2) else lo / hi
    inv, info = inv_ex(A)
    value = la.matrix_norm(A, p) * la.matrix_norm(where(_expand_info(info), 0, inv), p)
    return where(info != 0, math.inf, value)  # singular: infinitely ill-conditioned


def vecdot(x, y, *, dim: int = -1) -> Tensor:
    """Dot products of the vectors along ``dim`` (broadcast), ``torch.linalg.vecdot``: float or
    complex tensors of one dtype, as PyTorch's; x is conjugated (Σ conj(x) y)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"linalg.vecdot: {name} must be a tensor, got {type(t).__name__}")
        if not _B.is_inexact(t.dtype):
            raise DTypeError(f"linalg.vecdot: expected floating-point or complex tensors, got "
                             f"{t.dtype} for {name}")
    x, y = lower_in_region(x, y)  # autocast: in its precision, as PyTorch lists vecdot
    if x.dtype != y.dtype:
        raise DTypeError(f"linalg.vecdot: x and y must have one dtype, got {x.dtype} and "
                         f"{y.dtype}")
    prod = _conj(x) * y  # of two 0-d tensors, dim 0 or -1 names the whole (PyTorch's)
    return _sum(prod, scalar_dims(dim, prod.ndim, "linalg.vecdot"))


def diagonal(A, *, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
    """``torch.linalg.diagonal``: the diagonal of the last two axes by default."""
    return _diagonal(A, offset, dim1, dim2)


def powers(v: Tensor, n: int) -> Tensor:
    """x⁰, x¹, …, x^(n-1) of each entry of ``v`` (..., m) along a new last axis: (..., m, n),
    a running product (exact gradients at zeros)."""
    xp = v.backend.xp
    lead = tuple(v.shape)
    if n == 0:
        return Tensor._of(xp.zeros(lead + (0,), dtype=v.dtype))
    ones = Tensor._of(xp.ones(lead + (1,), dtype=v.dtype))
    if n == 1:
        return ones
    rest = cumprod(broadcast_to(expand_dims(v, -1), lead + (n - 1,)), -1)
    return concatenate([ones, rest], -1)


def vander(x, *, N: int | None = None) -> Tensor:
    """Powers x⁰, x¹, …, x^(N-1) along a new last axis (``torch.linalg.vander``: increasing,
    batched over leading axes; a 0-d x is one point)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"linalg.vander: x must be a tensor, got {type(x).__name__}")
    if x.ndim == 0:  # one point, as PyTorch
        x = reshape(x, (1,))
    n = x.shape[-1] if N is None else int(N)
    if n < 1:
        raise ValueError(f"linalg.vander: N must be at least 1, got {n}")
    return powers(x, n)


def _nan(x: Tensor):
    """NaN of ``x``'s kind: nan + nan·i for a complex tensor, as PyTorch fills a failed one."""
    return complex(math.nan, math.nan) if x.dtype.kind == "c" else math.nan


def _ok(batch, device) -> Tensor:
    return zeros(batch, dtype=_B.int32, device=device)


def _expand_info(info) -> Tensor:
    """A batch of ``info`` flags broadcast over each matrix's two axes."""
    return expand_dims(expand_dims(info != 0, -1), -1)


def _solve_by_lu(op: str, A: Tensor, B: Tensor, left: bool, check_errors: bool):
    """(X, info) with A X = B (``left=False``: X A = B) from A's LU factorisation, for a batch
    that LAPACK's solver refused: a matrix with a zero pivot (info > 0) gets NaN; one whose
    pivot is merely tiny (a singular matrix after rounding) is solved with it, as PyTorch's
    ``getrf``/``getrs`` do, so X and info always agree."""
    LU, _, piv, info = _factor(A, True)
    bad = _expand_info(info)
    flags = _B.np.asarray(info.numpy()).reshape(-1) if check_errors else None
    if check_errors and flags.any():
        k = int(flags[flags != 0][0])
        raise LinAlgError(f"linalg.{op}: the matrix is singular (U[{k}, {k}] of its LU "
                          f"factorisation is zero)")
    safe = where(bad, eye(A.shape[-1], dtype=A.dtype, device=A.device), LU)
    X = lu_solve(safe, piv, B, left=left)  # the pivots of a bad matrix are valid ones too
    mask = info != 0
    while mask.ndim < X.ndim:
        mask = expand_dims(mask, -1)
    return where(mask, _nan(X), X), info


def inv_ex(A, *, check_errors: bool = False) -> InvExResult:
    """(inverse, info) as ``torch.linalg.inv_ex``: info 0 where the inverse exists; for a
    singular matrix info > 0 (its first zero pivot) and the inverse is NaN there."""
    la = _la()
    A = la._mat("inv_ex", A, cplx=True)
    try:
        return InvExResult(la.inv(A), _ok(tuple(A.shape[:-2]), A.device))
    except LinAlgError:
        pass
    I = broadcast_to(eye(A.shape[-1], dtype=A.dtype, device=A.device), tuple(A.shape))
    return InvExResult(*_solve_by_lu("inv_ex", A, I, True, check_errors))


def solve_ex(A, B, *, left: bool = True, check_errors: bool = False) -> SolveExResult:
    """(result, info) as ``torch.linalg.solve_ex`` (NaN where A is singular, info > 0)."""
    la = _la()
    A = la._mat("solve_ex", A, cplx=True)
    try:
        return SolveExResult(la.solve(A, B, left=left), _ok(tuple(A.shape[:-2]), A.device))
    except LinAlgError:
        pass
    B = la._t(B)
    vector = B.ndim == 1 or (B.ndim == A.ndim - 1 and tuple(B.shape) == tuple(A.shape[:-1]))
    if vector:  # PyTorch's rule, as linalg.solve
        X, info = _solve_by_lu("solve_ex", A, expand_dims(B, -1 if left else -2), left,
                               check_errors)
        return SolveExResult(X[..., 0] if left else X[..., 0, :], info)
    return SolveExResult(*_solve_by_lu("solve_ex", A, B, left, check_errors))


def cholesky_ex(A, *, upper: bool = False, check_errors: bool = False) -> CholeskyExResult:
    """(L, info) as ``torch.linalg.cholesky_ex``: info 0, or k where the leading k×k minor is
    not positive definite (L is NaN for that matrix); ``upper``: U with A = Uᴴ U, the upper
    triangle read."""
    la = _la()
    A = la._mat("cholesky_ex", A, cplx=True)
    try:
        return CholeskyExResult(la.cholesky(A, upper=upper), _ok(tuple(A.shape[:-2]), A.device))
    except LinAlgError:
        if check_errors:
            raise
    n = A.shape[-1]
    host = A.detach()
    if upper:  # the triangle read is the upper one: the lower one of Aᵀ
        host = _mT(host)
    flat = reshape(host, (math.prod(A.shape[:-2]), n, n))
    infos = []
    for i in range(flat.shape[0]):
        k = 0
        for k in range(1, n + 1):  # the first leading minor that is not positive definite
            try:
                la.cholesky(flat[i, :k, :k])
            except LinAlgError:
                break
        else:
            k = 0
        infos.append(k)
    info = Tensor._of(A.backend.asarray(infos, dtype=_B.int32).reshape(tuple(A.shape[:-2])))
    good = expand_dims(expand_dims(info == 0, -1), -1)
    safe = where(good, A, eye(n, dtype=A.dtype, device=A.device))
    return CholeskyExResult(where(good, la.cholesky(safe, upper=upper), _nan(A)), info)


def tensorinv(A, ind: int = 2) -> Tensor:
    """The inverse of A for ``tensordot(A, X, ind)``: shape A.shape[ind:] + A.shape[:ind]."""
    if ind <= 0:
        raise ValueError(f"linalg.tensorinv: ind must be positive, got {ind}")
    out_shape, in_shape = tuple(A.shape[:ind]), tuple(A.shape[ind:])
    rows, cols = math.prod(out_shape), math.prod(in_shape)
    if rows != cols:
        raise ShapeError(f"linalg.tensorinv: the product of the first {ind} dims "
                         f"{out_shape} must equal that of the rest {in_shape}")
    return reshape(_la().inv(reshape(A, (rows, cols))), in_shape + out_shape)


def tensorsolve(A, B, dims=None) -> Tensor:
    """X with tensordot(A, X, X.ndim) = B (``torch.linalg.tensorsolve``); ``dims`` are axes of
    A moved to the end first."""
    if dims is not None:
        from .ops.shape import moveaxis

        for i, d in enumerate(sorted(int(d) % A.ndim for d in dims)):
            A = moveaxis(A, d - i, -1)
    x_shape = tuple(A.shape[B.ndim:])
    rows = math.prod(tuple(B.shape))
    if rows != math.prod(x_shape):
        raise ShapeError(f"linalg.tensorsolve: A's trailing dims {x_shape} must hold as many "
                         f"entries as B's shape {tuple(B.shape)}")
    X = _la().solve(reshape(A, (rows, rows)), reshape(B, (rows,)))
    return reshape(X, x_shape)


# --- PyTorch's older names: torch.lu, torch.lu_solve, torch.lu_unpack, and their methods ------
@float32_op  # autocast: PyTorch's torch.lu runs _lu_with_info, a float32 op
def torch_lu(A, pivot: bool = True, get_infos: bool = False, out=None):
    """``torch.lu``: (LU, pivots) or, with ``get_infos``, (LU, pivots, infos). ``out`` is
    accepted only as None (its default): nodegrad returns new tensors."""
    if out is not None:
        raise TypeError("lu: out= is not supported; use the returned tensors")
    LU, _, piv, info = _factor(A, pivot)
    return (LU, piv, info) if get_infos else (LU, piv)


@float32_op  # autocast: PyTorch lists lu_solve (not linalg.lu_solve) as a float32 op
def torch_lu_solve(b, LU_data, LU_pivots) -> Tensor:
    """``torch.lu_solve(b, LU_data, LU_pivots)``: X with A X = b (note the argument order)."""
    return lu_solve(LU_data, LU_pivots, b)


def _register_methods() -> None:
    from .ops.methods import register

    register({"lu": torch_lu, "lu_solve": torch_lu_solve})


_register_methods()
