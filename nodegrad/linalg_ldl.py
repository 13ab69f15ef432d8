"""``torch.linalg``'s matrix product, Householder products (and PyTorch's ``geqrf``,
``orgqr``, ``ormqr``) and the LDLᵀ factorisation of symmetric matrices.

``householder_product`` is written with tensor ops, so its gradients, ``vmap`` and ``jit`` come
from them. ``ldl_factor`` is LAPACK's ``sytrf`` (Bunch-Kaufman diagonal pivoting, the lower
triangle) on the host, the routine PyTorch calls, so ``LD`` and ``pivots`` are PyTorch's: the
same 1x1 and 2x2 blocks and the same LAPACK-style pivots (1-based; a 2x2 block's two entries
both -p). ``ldl_solve`` is ``sytrs`` on those factors. Neither has a gradient, as in PyTorch (whose
backward raises "not implemented"): their outputs do not require grad.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import _backend as _B
from .amp import float32_op
from .errors import DTypeError, LinAlgError, ShapeError
from .ops.arrange import tril
from .ops.complex import conj as _conj
from .ops.elementwise import where
from .ops.linalg import _unpack
from .ops.linalg import geqrf as _geqrf
from .ops.linalg import matmul as _matmul
from .ops.shape import broadcast_to, expand_dims, swapaxes
from .tensor import Tensor, eye, tensor

__all__ = ["matmul", "householder_product", "ldl_factor", "ldl_factor_ex", "ldl_solve"]


class GeqrfResult(NamedTuple):
    a: Tensor
    tau: Tensor


class LDLFactorResult(NamedTuple):
    LD: Tensor
    pivots: Tensor


class LDLFactorExResult(NamedTuple):
    LD: Tensor
    pivots: Tensor
    info: Tensor


def _float_tensor(op: str, name: str, x, min_ndim: int, cplx: bool = False) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"linalg.{op}: {name} must be a tensor, got {type(x).__name__}")
    if x.dtype.kind != "f" or x.dtype.itemsize < 4:  # LAPACK has no half precision
        if not (cplx and x.dtype.kind == "c"):
            raise DTypeError(f"linalg.{op}: expected a float32 or float64"
                             f"{', complex64 or complex128' if cplx else ''} tensor for "
                             f"{name}, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ShapeError(f"linalg.{op}: {name} must have at least {min_ndim} dimensions, got "
                         f"shape {tuple(x.shape)}")
    return x


def matmul(input, other) -> Tensor:
    """The matrix product with PyTorch's broadcasting and 1-d rules (``torch.linalg.matmul``,
    an alias of ``torch.matmul``)."""
    if not isinstance(input, Tensor) or not isinstance(other, Tensor):
        raise TypeError(f"linalg.matmul: expected two tensors, got {type(input).__name__} and "
                        f"{type(other).__name__}")
    if input.ndim == 0 or other.ndim == 0:
        raise ShapeError(f"linalg.matmul: both arguments need at least 1 dimension, got shapes "
                         f"{tuple(input.shape)} and {tuple(other.shape)}")
    return _matmul(input, other)


@float32_op  # autocast: PyTorch lists orgqr and householder_product as float32 ops
def householder_product(A, tau) -> Tensor:
    """The first n columns of H_1 H_2 ... H_k, H_i = I - tau_i v_i v_iᴴ, where v_i is column i
    of ``A`` (m x n, m >= n >= k) below the diagonal with a 1 on it: the Q of a QR
    factorisation stored as LAPACK's ``geqrf`` leaves it. Real or complex; differentiable in
    A and tau."""
    A = _float_tensor("householder_product", "input", A, 2, cplx=True)
    tau = _float_tensor("householder_product", "tau", tau, 1, cplx=True)
    m, n = A.shape[-2], A.shape[-1]
    k = tau.shape[-1]
    if m < n:
        raise ShapeError(f"linalg.householder_product: input.shape[-2] must be >= "
                         f"input.shape[-1], got shape {tuple(A.shape)}")
    if n < k:
        raise ShapeError(f"linalg.householder_product: input.shape[-1] must be >= "
                         f"tau.shape[-1], got {n} and {k}")
    if tuple(tau.shape[:-1]) != tuple(A.shape[:-2]):
        raise ShapeError(f"linalg.householder_product: tau's batch shape must equal input's, "
                         f"got {tuple(tau.shape)} for input {tuple(A.shape)}")
    if A.dtype != tau.dtype:
        raise DTypeError(f"linalg.householder_product: input and tau must have one dtype, got "
                         f"{A.dtype} and {tau.dtype}")
    I = eye(m, n, dtype=A.dtype, device=A.device)
    if k == 0:  # no reflectors: I, still connected to A and tau (zero gradients, as PyTorch)
        none = Tensor._of(A.backend.xp.zeros((), dtype=bool))
        return where(none, A, I) + expand_dims(expand_dims(tau.sum(-1), -1), -1)
    V = tril(A, -1) + I  # the reflectors' vectors, unit diagonal
    Q = broadcast_to(I, tuple(A.shape))
    for i in range(k - 1, -1, -1):  # Q <- H_i Q, right to left
        v = V[..., :, i:i + 1]
        Q = Q - expand_dims(tau[..., i:i + 1], -1) * (v @ (_adj(v) @ Q))
    return Q


def _adj(v: Tensor) -> Tensor:
    """vᴴ of a batch of columns (vᵀ for real v)."""
    vt = swapaxes(v, -1, -2)
    return _conj(vt) if vt.dtype.kind == "c" else vt


@float32_op  # autocast: a float32 op (PyTorch's)
def geqrf(input) -> GeqrfResult:
    """``torch.geqrf``: LAPACK's QR in Householder form, (a, tau): R on and above the diagonal of
    ``a``, the reflectors' vectors below it, their min(m, n) scales in ``tau`` (what
    :func:`householder_product`/:func:`orgqr` and :func:`ormqr` take). No gradient, as in
    PyTorch."""
    A = _float_tensor("geqrf", "input", input, 2, cplx=True)
    m, n = A.shape[-2], A.shape[-1]
    a, tau = _unpack(_geqrf(A), ((m, n), (min(m, n),)))
    return GeqrfResult(a, tau)


def orgqr(input, tau) -> Tensor:
    """``torch.orgqr``: PyTorch's older name of :func:`householder_product`."""
    return householder_product(input, tau)


@float32_op  # autocast: a float32 op (PyTorch's)
def ormqr(input, tau, other, left: bool = True, transpose: bool = False) -> Tensor:
    """``torch.ormqr``: Q·other (``transpose``: Qᴴ·other, Qᵀ for real Q; ``left=False``:
    other·Q or other·Qᴴ) for the m x m Q = H_1 … H_k that :func:`geqrf`'s (input, tau) stand
    for, applying the reflectors one at a time (Q is never formed). Differentiable in all
    three."""
    A = _float_tensor("ormqr", "input", input, 2, cplx=True)
    tau = _float_tensor("ormqr", "tau", tau, 1, cplx=True)
    C = _float_tensor("ormqr", "other", other, 2, cplx=True)
    m, k = A.shape[-2], tau.shape[-1]
    if len({A.dtype, tau.dtype, C.dtype}) > 1:
        raise DTypeError(f"ormqr: input, tau and other must have one dtype, got {A.dtype}, "
                         f"{tau.dtype} and {C.dtype}")
    if k > min(m, A.shape[-1]):
        raise ShapeError(f"ormqr: tau may hold at most min(m, n) = {min(m, A.shape[-1])} "
                         f"scales for input of shape {tuple(A.shape)}, got {k}")
    if (C.shape[-2] if left else C.shape[-1]) != m:
        raise ShapeError(f"ormqr: other of shape {tuple(C.shape)} does not fit Q of size {m} "
                         f"({'rows' if left else 'columns'} of other must be {m})")
    V = tril(A[..., :, :k], -1) + eye(m, k, dtype=A.dtype, device=A.device)
    # Q C = H_1 (… (H_k C)); Qᴴ C = H_kᴴ (… (H_1ᴴ C)); C Q = ((C H_1) …) H_k; C Qᴴ the
    # reverse; H_iᴴ = I - conj(tau_i) v_i v_iᴴ
    order = range(k - 1, -1, -1) if left != transpose else range(k)
    for i in order:
        v = V[..., :, i:i + 1]
        t = expand_dims(tau[..., i:i + 1], -1)
        if transpose and t.dtype.kind == "c":
            t = _conj(t)
        if left:
            C = C - t * (v @ (_adj(v) @ C))
        else:
            C = C - t * ((C @ v) @ _adj(v))
    return C


def _host(x: Tensor):
    """A writable host copy of ``x``'s array."""
    return _B.np.array(x.numpy())


def _square(op: str, A) -> Tensor:
    A = _float_tensor(op, "A", A, 2)
    if A.shape[-1] != A.shape[-2]:
        raise ShapeError(f"linalg.{op}: A must be a batch of square matrices, got shape "
                         f"{tuple(A.shape)}")
    return A


def ldl_factor_ex(A, *, hermitian: bool = False, check_errors: bool = False) -> LDLFactorExResult:
    """The compact LDLᵀ factorisation of the symmetric ``A`` (its lower triangle is read) with
    Bunch-Kaufman pivoting: ``LD`` holds L's strict lower part and D's 1x1 and 2x2 blocks,
    ``pivots`` LAPACK's interchanges, ``info`` the first zero pivot (1-based; 0: none), per
    matrix. ``hermitian`` changes nothing for real matrices. No gradient (PyTorch has none)."""
    A = _square("ldl_factor_ex", A)
    np = _B.np
    a = _host(A)
    n = a.shape[-1]
    count = math.prod(A.shape[:-2])
    flat = a.reshape((count, n, n)).copy()
    piv = np.zeros(flat.shape[:2], np.int32)
    info = np.zeros(flat.shape[0], np.int32)
    for i in range(flat.shape[0]):
        flat[i], piv[i], info[i] = _B.sytrf(flat[i])
    if check_errors and info.any():
        raise LinAlgError(f"linalg.ldl_factor_ex: the factorization could not be completed: "
                          f"D has a zero pivot at position {int(info[info > 0][0])}")
    batch = tuple(A.shape[:-2])
    return LDLFactorExResult(tensor(flat.reshape(batch + (n, n)), device=A.device),
                             tensor(piv.reshape(batch + (n,)), device=A.device),
                             tensor(info.reshape(batch), device=A.device))


def ldl_factor(A, *, hermitian: bool = False) -> LDLFactorResult:
    """``ldl_factor_ex`` that raises :class:`LinAlgError` for a singular D (a zero pivot)."""
    LD, pivots, info = ldl_factor_ex(A, hermitian=hermitian)
    bad = _B.np.asarray(_host(info)).reshape(-1)
    if bad.any():
        raise LinAlgError(f"linalg.ldl_factor: the factorization could not be completed: D "
                          f"has a zero pivot at position {int(bad[bad > 0][0])} (the matrix "
                          f"is singular)")
    return LDLFactorResult(LD, pivots)


def ldl_solve(LD, pivots, B, *, hermitian: bool = False) -> Tensor:
    """X with A X = B from ``ldl_factor``'s ``LD`` and ``pivots`` (batches broadcast).
    No gradient (PyTorch has none)."""
    LD = _square("ldl_solve", LD)
    B = _float_tensor("ldl_solve", "B", B, 2)
    if not isinstance(pivots, Tensor) or pivots.dtype.kind not in "iu":
        raise DTypeError(f"linalg.ldl_solve: pivots must be an integer tensor, got "
                         f"{getattr(pivots, 'dtype', type(pivots).__name__)}")
    n = LD.shape[-1]
    if tuple(pivots.shape) != tuple(LD.shape[:-1]):
        raise ShapeError(f"linalg.ldl_solve: pivots must have shape LD.shape[:-1] = "
                         f"{tuple(LD.shape[:-1])}, got {tuple(pivots.shape)}")
    if B.shape[-2] != n:
        raise ShapeError(f"linalg.ldl_solve: B must have {n} rows to match LD of shape "
                         f"{tuple(LD.shape)}, got shape {tuple(B.shape)}")
    if LD.dtype != B.dtype:
        raise DTypeError(f"linalg.ldl_solve: LD and B must have one dtype, got {LD.dtype} and "
                         f"{B.dtype}")
    np = _B.np
    batch = np.broadcast_shapes(tuple(LD.shape[:-2]), tuple(B.shape[:-2]))
    count = math.prod(batch)
    a = np.broadcast_to(_host(LD), batch + (n, n)).reshape((count, n, n))
    p = np.broadcast_to(_host(pivots), batch + (n,)).reshape((count, n))
    b = np.broadcast_to(_host(B), batch + tuple(B.shape[-2:])).reshape(
        (count,) + tuple(B.shape[-2:]))
    out = b.copy()
    for i in range(out.shape[0] if n else 0):
        if p[i].min() < -n or p[i].max() > n or (p[i] == 0).any():
            raise ValueError(f"linalg.ldl_solve: pivots must be LAPACK's 1-based entries in "
                             f"[-{n}, {n}] without 0, got {p[i].tolist()}")
        out[i] = _B.sytrs(a[i], p[i], out[i])
    return tensor(out.reshape(batch + tuple(B.shape[-2:])), device=B.device)


def _register_methods() -> None:
    from .ops.methods import register

    register({"geqrf": geqrf, "orgqr": orgqr, "ormqr": ormqr})


_register_methods()
