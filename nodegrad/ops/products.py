"""PyTorch's matrix-product family (mm, bmm, addmm, ...), linear-algebra methods, and
numerical calculus and statistics (diff, trapezoid, cov, ...), as functions and Tensor methods.

Everything here composes existing primitives (matmul, reshapes, slices, ``nodegrad.linalg``),
so gradients of any order, jvp, vmap and jit come from theirs. Names, argument order, defaults
and result shapes are PyTorch's; where PyTorch refuses an input (``mm`` of a vector, ``bmm``
with different batches, ``dot`` of matrices) these raise ShapeError or DTypeError naming the op.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

from .. import _backend as B
from .. import linalg as LA
from ..amp import float32_in_region, lower_in_region
from ..autodiff import modes
from ..linalg_lu import powers
from ..batching import values
from ..dtypes import result_type
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, tensor, write_out
from . import complex as CX
from . import elementwise as E
from . import index as I
from . import linalg as L
from . import reduce as R
from . import scan as C
from . import shape as S
from .methods import scalar_first

__all__: list[str] = [
    "t", "mm", "bmm", "mv", "dot", "vdot", "inner", "ger", "addmm", "addmv", "addbmm",
    "baddbmm", "addr", "addcmul", "addcdiv", "kron", "chain_matmul", "tensordot",
    "det", "logdet", "slogdet", "inverse", "pinverse", "matrix_power", "matrix_exp", "cholesky",
    "cholesky_solve", "cholesky_inverse", "qr", "svd", "triangular_solve", "cross",
    "diff", "gradient", "trapezoid", "trapz", "cumulative_trapezoid", "cov", "corrcoef", "dist",
    "renorm", "vander", "frobenius_norm", "nuclear_norm",
]


# --- checks ---------------------------------------------------------------------------------
def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else tensor(x)


def _as_is(fn, *args):
    """``fn(*args)`` with autocast's casts off: PyTorch's CPU autocast lists ``mm``, ``matmul``,
    ``addmm``, ... but not ``dot``, ``vdot``, ``inner``, ``mv`` or ``addmv``, which run in their
    operands' dtype even though nodegrad builds them from the matmul primitive."""
    m = modes()
    rule = m.autocast
    if rule is None:
        return fn(*args)
    m.autocast = None
    try:
        return fn(*args)
    finally:
        m.autocast = rule


def _shape(x) -> tuple:
    return tuple(x.shape)


def _ndim(op: str, x: Tensor, nd: int, name: str) -> None:
    if x.ndim != nd:
        kind = {1: "a vector (1-d)", 2: "a matrix (2-d)", 3: "a batch of matrices (3-d)"}[nd]
        raise ShapeError(f"{op}: {name} must be {kind}, got shape {_shape(x)}")


def _same_dtype(op: str, *xs: Tensor) -> None:
    """PyTorch's products refuse mixed dtypes (int with float too): no silent promotion."""
    dts = [x.dtype for x in xs]
    if any(d != dts[0] for d in dts):
        raise DTypeError(f"{op}: expected operands of one dtype, got "
                         f"{', '.join(str(d) for d in dts)}")


def _fits(op: str, what: str, shape: tuple, target: tuple) -> None:
    """``what`` of ``shape`` must broadcast to ``target`` (the result's shape)."""
    try:
        ok = tuple(B.np.broadcast_shapes(shape, target)) == tuple(target)
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"{op}: {what} of shape {shape} does not broadcast to the result's "
                         f"shape {tuple(target)}")


def _is(s, v) -> bool:
    """``s`` is the Python number ``v`` (a tensor coefficient is never special-cased)."""
    return isinstance(s, numbers.Number) and s == v


def _scaled(x, s):
    return x if _is(s, 1) else x * s


def _int_coefs(beta, alpha) -> tuple:
    """PyTorch's integer rule for beta and alpha: on integer tensors a float coefficient is
    truncated toward zero (its Scalar cast)."""
    return tuple(int(c) if isinstance(c, numbers.Real) and not isinstance(c, numbers.Integral)
                 else c for c in (beta, alpha))


def _addr_coefs(dtype, beta, alpha) -> None:
    """PyTorch's addr checks its coefficients against the result's dtype: a bool one only for
    a bool result, a float one only for a float or complex result."""
    for name, c in (("beta", beta), ("alpha", alpha)):
        if isinstance(c, bool) and dtype.kind != "b":
            raise DTypeError(f"addr: a bool {name} needs a bool result, got {dtype}")
        if (dtype.kind in "biu" and isinstance(c, numbers.Number)
                and not isinstance(c, numbers.Integral)):
            raise DTypeError(f"addr: for integer input, {name} must be an integer (the "
                             f"result is {dtype}), got {c!r}")


def _add_scaled(op: str, input, prod: Tensor, beta, alpha) -> Tensor:
    """beta·input + alpha·prod, input broadcast to prod's shape; beta = 0 ignores input, its
    NaN and Inf included (PyTorch's rule)."""
    _fits(op, "input", _shape(input), _shape(prod))
    if prod.dtype.kind in "iu":
        beta, alpha = _int_coefs(beta, alpha)
    out = _scaled(prod, alpha)
    if _is(beta, 0):
        return out
    return _scaled(input, beta) + out


def _sl(x: Tensor, ax: int, start=None, stop=None) -> Tensor:
    """x[start:stop] along axis ``ax``."""
    return x[(slice(None),) * ax + (slice(start, stop),)]


# --- products -------------------------------------------------------------------------------
def t(input) -> Tensor:
    """Transpose of a matrix; a 0-d or 1-d tensor's view of itself (PyTorch: at most 2-d)."""
    x = _t(input)
    if x.ndim > 2:
        raise ShapeError(f"t: expected a tensor with at most 2 dims, got shape {_shape(x)} "
                         "(use transpose(dim0, dim1) or mT)")
    return S.swapaxes(x, 0, 1) if x.ndim == 2 else S.reshape(x, tuple(x.shape))


def mm(input, mat2) -> Tensor:
    """Matrix product of two matrices (no broadcasting, unlike matmul); a sparse COO
    operand goes to ``sparse.mm``."""
    if not (isinstance(input, Tensor) and isinstance(mat2, Tensor)) and (
            hasattr(type(input), "__nodegrad_bind__") or hasattr(type(mat2), "__nodegrad_bind__")):
        return input @ mat2
    a, b = _t(input), _t(mat2)
    _ndim("mm", a, 2, "input")
    _ndim("mm", b, 2, "mat2")
    a, b = lower_in_region(a, b)  # autocast: both in its precision
    _same_dtype("mm", a, b)
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"mm: shapes {_shape(a)} and {_shape(b)} cannot be multiplied "
                         f"({a.shape[1]} columns against {b.shape[0]} rows)")
    return L.matmul(a, b)


def _bmm_check(op: str, a: Tensor, b: Tensor) -> None:
    _ndim(op, a, 3, "batch1")
    _ndim(op, b, 3, "batch2")
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ShapeError(f"{op}: batches of shapes {_shape(a)} and {_shape(b)} do not fit: "
                         f"expected batch2 of shape ({a.shape[0]}, {a.shape[2]}, p)")


def bmm(input, mat2) -> Tensor:
    """Batched matrix product (b, n, m) @ (b, m, p) -> (b, n, p); batches must be equal."""
    a, b = _t(input), _t(mat2)
    _bmm_check("bmm", a, b)
    a, b = lower_in_region(a, b)  # autocast: both in its precision
    _same_dtype("bmm", a, b)
    return L.matmul(a, b)


def _mv_check(op: str, a: Tensor, v: Tensor) -> None:
    _ndim(op, a, 2, "mat")
    _ndim(op, v, 1, "vec")
    if a.shape[1] != v.shape[0]:
        raise ShapeError(f"{op}: mat of shape {_shape(a)} and vec of shape {_shape(v)} do not "
                         f"fit (vec needs {a.shape[1]} entries)")


def mv(input, vec) -> Tensor:
    """Matrix-vector product (n, m) @ (m,) -> (n,)."""
    a, v = _t(input), _t(vec)
    _mv_check("mv", a, v)
    _same_dtype("mv", a, v)
    return _as_is(L.matmul, a, v)


def _dot(op: str, input, other) -> Tensor:
    a, b = _t(input), _t(other)
    if a.ndim != 1 or b.ndim != 1:
        raise ShapeError(f"{op}: expected two 1-d tensors, got shapes {_shape(a)} and "
                         f"{_shape(b)}")
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"{op}: vectors of different lengths {a.shape[0]} and {b.shape[0]}")
    _same_dtype(op, a, b)
    return _as_is(L.matmul, a, b)


def dot(input, other) -> Tensor:
    """Inner product of two 1-d tensors of equal length (PyTorch refuses other ranks)."""
    return _dot("dot", input, other)


def vdot(input, other) -> Tensor:
    """dot with the first operand conjugated (for real tensors, dot)."""
    a = _t(input)
    return _dot("vdot", a.conj() if a.dtype.kind == "c" else a, other)


def inner(input, other) -> Tensor:
    """Sum over the last dims: shape input.shape[:-1] + other.shape[:-1]; a 0-d operand
    multiplies."""
    a, b = _t(input), _t(other)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if a.shape[-1] != b.shape[-1]:
        raise ShapeError(f"inner: the last dims must match, got shapes {_shape(a)} and "
                         f"{_shape(b)}")
    dims = ([a.ndim - 1], [b.ndim - 1])
    if a.ndim == 1 and b.ndim == 1:  # PyTorch's two vectors go to dot: float32 under autocast
        return _as_is(_tensordot, "inner", a, b, dims)
    return _tensordot("inner", a, b, dims)  # to its tensordot: lowered under autocast


def _outer(op: str, input, vec2) -> Tensor:
    a, b = _t(input), _t(vec2)
    _ndim(op, a, 1, "input")
    _ndim(op, b, 1, "vec2")
    return L.outer(a, b)


def ger(input, vec2) -> Tensor:
    """Outer product of two vectors (PyTorch's older name for outer)."""
    return _outer("ger", input, vec2)


def _outer_method(self, vec2) -> Tensor:
    """Outer product of two vectors (1-d only, as torch.outer)."""
    return _outer("outer", self, vec2)


def addmm(input, mat1, mat2, *, beta=1, alpha=1) -> Tensor:
    """beta·input + alpha·(mat1 @ mat2), input broadcast to (n, p)."""
    a, b, c = lower_in_region(_t(input), _t(mat1), _t(mat2))  # autocast: all in its precision
    _ndim("addmm", b, 2, "mat1")
    _ndim("addmm", c, 2, "mat2")
    _same_dtype("addmm", a, b, c)
    if b.shape[1] != c.shape[0]:
        raise ShapeError(f"addmm: mat1 of shape {_shape(b)} and mat2 of shape {_shape(c)} "
                         "cannot be multiplied")
    return _add_scaled("addmm", a, L.matmul(b, c), beta, alpha)


def addmv(input, mat, vec, *, beta=1, alpha=1) -> Tensor:
    """beta·input + alpha·(mat @ vec), input broadcast to (n,)."""
    a, m, v = _t(input), _t(mat), _t(vec)
    _mv_check("addmv", m, v)
    _same_dtype("addmv", a, m, v)
    return _add_scaled("addmv", a, _as_is(L.matmul, m, v), beta, alpha)


def addbmm(input, batch1, batch2, *, beta=1, alpha=1) -> Tensor:
    """beta·input + alpha·Σ_b batch1[b] @ batch2[b]: the batch sum is one (n, b·m) @ (b·m, p)
    product."""
    a, b1, b2 = lower_in_region(_t(input), _t(batch1), _t(batch2))  # autocast's precision
    _bmm_check("addbmm", b1, b2)
    _same_dtype("addbmm", a, b1, b2)
    nb, n, m = b1.shape
    p = b2.shape[2]
    prod = L.matmul(S.reshape(S.permute(b1, 1, 0, 2), (n, nb * m)),
                    S.reshape(b2, (nb * m, p)))
    return _add_scaled("addbmm", a, prod, beta, alpha)


def baddbmm(input, batch1, batch2, *, beta=1, alpha=1) -> Tensor:
    """beta·input + alpha·(batch1 @ batch2), input broadcast to (b, n, p)."""
    a, b1, b2 = lower_in_region(_t(input), _t(batch1), _t(batch2))  # autocast's precision
    _bmm_check("baddbmm", b1, b2)
    _same_dtype("baddbmm", a, b1, b2)
    return _add_scaled("baddbmm", a, L.matmul(b1, b2), beta, alpha)


def addr(input, vec1, vec2, *, beta=1, alpha=1) -> Tensor:
    """beta·input + alpha·outer(vec1, vec2), input broadcast to (n, m), in the operands'
    promoted dtype; a bool result is ``(beta and input) or (alpha and outer)``, as PyTorch's."""
    a, v1, v2 = _t(input), _t(vec1), _t(vec2)
    _ndim("addr", v1, 1, "vec1")
    _ndim("addr", v2, 1, "vec2")
    dt = result_type(a, v1, v2)
    _addr_coefs(dt, beta, alpha)
    a, prod = (x if x.dtype == dt else x.astype(dt) for x in (a, L.outer(v1, v2)))
    if dt.kind != "b":
        return _add_scaled("addr", a, prod, beta, alpha)
    _fits("addr", "input", _shape(a), _shape(prod))
    out = prod & bool(alpha)
    return a | out if beta else out


def _value_first(name: str, tensor1, tensor2, rest: tuple, value) -> tuple:
    """``(tensor1, tensor2, value)``, also from PyTorch's deprecated ``(value, tensor1,
    tensor2)`` order that code before PyTorch 1.5 writes (``v.addcmul_(1 - b2, g, g)``)."""
    if not rest:
        return tensor1, tensor2, value
    if value != 1 or len(rest) != 1:
        raise TypeError(f"{name}: expected (input, tensor1, tensor2, *, value=1) or the "
                        f"deprecated (input, value, tensor1, tensor2); got {2 + len(rest)} "
                        "operands after input" + (f" and value={value!r}" if value != 1 else ""))
    value, (tensor1, tensor2) = scalar_first(name, tensor1, (tensor2, *rest), "value")
    return tensor1, tensor2, value


def addcmul(input, tensor1, tensor2, *rest, value=1) -> Tensor:
    """input + value·tensor1·tensor2 (all three broadcast). On three integer tensors a float
    ``value`` is truncated toward zero, as PyTorch casts it to the tensors' dtype (the result
    stays integer)."""
    tensor1, tensor2, value = _value_first("addcmul", tensor1, tensor2, rest, value)
    x, a, b = _t(input), _t(tensor1), _t(tensor2)
    if (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
            and all(t.dtype.kind in "iu" for t in (x, a, b))):
        value = int(value)
    return x + _scaled(a, value) * b


def addcdiv(input, tensor1, tensor2, *rest, value=1) -> Tensor:
    """input + value·tensor1/tensor2 (all three broadcast); two integer operands are refused,
    as in PyTorch (integer division there once truncated)."""
    tensor1, tensor2, value = _value_first("addcdiv", tensor1, tensor2, rest, value)
    a, b = _t(tensor1), _t(tensor2)
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        raise DTypeError(f"addcdiv: integer tensor1 and tensor2 ({a.dtype}, {b.dtype}) are not "
                         "supported; use input + value * tensor1 / tensor2")
    return _t(input) + _scaled(a, value) / b


def kron(input, other) -> Tensor:
    """Kronecker product; the operand with fewer dims gets leading 1s (shape ∏ a_i·b_i)."""
    a, b = _t(input), _t(other)
    nd = max(a.ndim, b.ndim)
    sa = (1,) * (nd - a.ndim) + _shape(a)
    sb = (1,) * (nd - b.ndim) + _shape(b)
    ai = S.reshape(a, tuple(d for s in sa for d in (s, 1)))
    bi = S.reshape(b, tuple(d for s in sb for d in (1, s)))
    return S.reshape(ai * bi, tuple(x * y for x, y in zip(sa, sb)))


def chain_matmul(*matrices, out: Tensor | None = None) -> Tensor:
    """Product of 2-d matrices in the cheapest order (deprecated in PyTorch for
    linalg.multi_dot); one matrix is returned as a copy. ``out=`` receives the product (not
    differentiable, as PyTorch's)."""
    if out is not None:
        return write_out("chain_matmul", out, chain_matmul(*matrices))
    ms = [_t(m) for m in matrices]
    if not ms:
        raise ShapeError("chain_matmul: expected one or more matrices")
    for i, m in enumerate(ms):
        if m.ndim != 2:
            raise ShapeError(f"chain_matmul: matrix {i} must be 2-d, got shape {_shape(m)}")
    if len(ms) == 1:
        return S.copy(ms[0])
    return LA.multi_dot(ms)


def _dims_list(d, op: str) -> list:
    if isinstance(d, Tensor):
        d = d.tolist()
    if not isinstance(d, list | tuple) or not all(isinstance(i, numbers.Integral) for i in d):
        raise TypeError(f"{op}: each half of dims must be a list of ints, got {d!r}")
    return [int(i) for i in d]


def tensordot(a, b, dims=2, out: Tensor | None = None, *, axes=None) -> Tensor:
    """Contract ``dims`` (NumPy's ``axes``) of a with dims of b: an int n pairs a's last n
    with b's first n, a pair of lists names them (``([1, 2], [0, 1])``). One matrix product
    after a reshape. ``out=`` receives the result and stays differentiable (PyTorch copies into
    it)."""
    if axes is not None:
        if dims != 2:
            raise TypeError("tensordot: give dims= (PyTorch) or axes= (NumPy), not both")
        dims = axes
    r = _tensordot("tensordot", _t(a), _t(b), dims)
    return r if out is None else write_out("tensordot", out, r, differentiable=True)


def _sum_keep(x: Tensor, ax: int) -> Tensor:
    """x summed over ``ax``, kept as a size-1 dim, in x's dtype."""
    s = R.sum(x, ax, keepdims=True)
    return s if s.dtype == x.dtype else E.astype(s, x.dtype)


def _tensordot(op: str, a: Tensor, b: Tensor, dims) -> Tensor:
    if isinstance(dims, Tensor) and dims.ndim == 0:
        dims = int(dims.item())
    if isinstance(dims, numbers.Integral):
        n = int(dims)
        if n < 0:
            raise ShapeError(f"{op}: dims must be >= 0, got {n}")
        if n > a.ndim or n > b.ndim:
            raise ShapeError(f"{op}: dims={n} exceeds the dims of the operands, shapes "
                             f"{_shape(a)} and {_shape(b)}")
        da, db = list(range(a.ndim - n, a.ndim)), list(range(n))
    else:
        if isinstance(dims, Tensor):
            dims = dims.tolist()
        if not isinstance(dims, list | tuple) or len(dims) != 2:
            raise TypeError(f"{op}: dims must be an int or a pair of lists, got {dims!r}")
        da, db = _dims_list(dims[0], op), _dims_list(dims[1], op)
        if len(da) != len(db):
            raise ShapeError(f"{op}: both dimension lists need the same length, got "
                             f"{da} and {db}")
        da = [S.norm_axis(i, a.ndim, op) for i in da]
        db = [S.norm_axis(i, b.ndim, op) for i in db]
        if len(set(da)) != len(da) or len(set(db)) != len(db):
            raise ShapeError(f"{op}: a dim repeats in dims {da} or {db}")
    _same_dtype(op, a, b)
    for i, j in zip(da, db):
        if a.shape[i] == b.shape[j]:
            continue
        if b.shape[j] == 1:  # PyTorch's broadcast of a size-1 contracted dim: sum the other
            a = _sum_keep(a, i)
        elif a.shape[i] == 1:
            b = _sum_keep(b, j)
        else:
            raise ShapeError(f"{op}: contracted dims must match (or one be 1), but a has size "
                             f"{a.shape[i]} in dim {i} and b has size {b.shape[j]} in dim {j}")
    fa = [i for i in range(a.ndim) if i not in da]
    fb = [j for j in range(b.ndim) if j not in db]
    k = math.prod(a.shape[i] for i in da)
    oa, ob = tuple(a.shape[i] for i in fa), tuple(b.shape[j] for j in fb)
    am = S.reshape(S.permute(a, *(fa + da)) if fa + da != list(range(a.ndim)) else a,
                   (math.prod(oa), k))
    bm = S.reshape(S.permute(b, *(db + fb)) if db + fb != list(range(b.ndim)) else b,
                   (k, math.prod(ob)))
    return S.reshape(L.matmul(am, bm), oa + ob)


# --- linear algebra with torch.Tensor's semantics -------------------------------------------
class SVDResult(NamedTuple):
    U: Tensor
    S: Tensor
    V: Tensor


def det(input) -> Tensor:
    """Determinant (batched); the gradient is the cofactor matrix, finite when singular."""
    return LA.det(input)


def logdet(input) -> Tensor:
    """log det A: NaN where the determinant is negative and -inf where it is 0 (PyTorch);
    the gradient is A⁻ᵀ where det > 0. Complex A: the complex log(det A) = log|det A| +
    i·angle(det A) (principal branch), as PyTorch."""
    sign, logabs = LA.slogdet(input)
    if sign.dtype.kind == "c":
        return CX.complex(logabs, CX.angle(sign))
    return E.where(sign == -1, float("nan"), logabs)


def slogdet(input) -> LA.SlogdetResult:
    """(sign, log|det A|), without overflow."""
    return LA.slogdet(input)


def inverse(input) -> Tensor:
    """Matrix inverse (LinAlgError if singular)."""
    return LA.inv(input)


def pinverse(input, rcond: float = 1e-15) -> Tensor:
    """Pseudo-inverse; singular values below rcond·σ_max count as zero (torch.pinverse); in
    float32 under CPU autocast (PyTorch lists pinverse, though not linalg.pinv)."""
    (input,) = float32_in_region(_t(input))
    return LA.pinv(input, atol=0.0, rtol=float(rcond))


def matrix_power(input, n: int) -> Tensor:
    """A to the integer power n (n < 0: of A⁻¹)."""
    return LA.matrix_power(input, n)


def matrix_exp(input) -> Tensor:
    """Matrix exponential."""
    return LA.matrix_exp(input)


def cholesky(input, upper: bool = False) -> Tensor:
    """Cholesky factor L (A = L Lᵀ), or U = Lᵀ when ``upper``."""
    return LA.cholesky(input, upper=upper)


def _cho_check(op: str, b: Tensor, f: Tensor) -> None:
    if f.ndim < 2 or f.shape[-1] != f.shape[-2]:
        raise ShapeError(f"{op}: the Cholesky factor must be a square matrix or a batch of them "
                         f"(..., n, n), got shape {_shape(f)}")
    if b.ndim < 2 or b.shape[-2] != f.shape[-1]:
        raise ShapeError(f"{op}: the right-hand side must be (..., {f.shape[-1]}, k) to fit a "
                         f"factor of shape {_shape(f)}, got shape {_shape(b)}")


def cholesky_solve(input, input2, upper: bool = False) -> Tensor:
    """X with A X = input, given A's Cholesky factor ``input2`` (torch's order: the
    right-hand side first); only the factor's lower (``upper``: upper) triangle is read."""
    b, f = _t(input), _t(input2)
    _cho_check("cholesky_solve", b, f)
    return LA.cholesky_solve(b, f, upper=upper)


def cholesky_inverse(input, upper: bool = False) -> Tensor:
    """A⁻¹ from A's Cholesky factor (A = L Lᵀ, or Uᵀ U when ``upper``): two triangular solves
    against I, reading only the factor's triangle (so the other triangle gets no gradient;
    PyTorch's formula gives it one that the forward does not use)."""
    (f,) = float32_in_region(_t(input))  # autocast: a float32 op (PyTorch's)
    if f.ndim < 2 or f.shape[-1] != f.shape[-2]:
        raise ShapeError(f"cholesky_inverse: expected a square matrix or a batch of them "
                         f"(..., n, n), got shape {_shape(f)}")
    eye = Tensor._of(f.backend.xp.eye(f.shape[-1], dtype=f.dtype))
    return LA.cholesky_solve(eye, f, upper=upper)


def qr(input, some: bool = True) -> LA.QRResult:
    """(Q, R): reduced when ``some`` (Q of shape (m, k)), complete otherwise (Q (m, m))."""
    return LA.qr(input, mode="reduced" if some else "complete")


def svd(input, some: bool = True, compute_uv: bool = True) -> SVDResult:
    """torch.svd: (U, S, V) with A = U diag(S) Vᵀ — V, not linalg.svd's Vh. ``some``: reduced
    factors; ``compute_uv=False``: U and V are zero matrices of shapes (m, m) and (n, n)."""
    (x,) = float32_in_region(_t(input))  # autocast: a float32 op (PyTorch's)
    if not compute_uv:
        s = LA.svdvals(x)
        xp = x.backend.xp
        lead, (m, n) = _shape(x)[:-2], _shape(x)[-2:]
        return SVDResult(Tensor._of(xp.zeros(lead + (m, m), dtype=x.dtype)), s,
                         Tensor._of(xp.zeros(lead + (n, n), dtype=x.dtype)))
    u, s, vh = LA.svd(x, full_matrices=not some)
    return SVDResult(u, s, S.swapaxes(vh, -1, -2))


def triangular_solve(input, A, upper: bool = True, transpose: bool = False,
                     unitriangular: bool = False) -> LA.TriangularSolveResult:
    """torch.triangular_solve(b, A): (X with op(T) X = b, a copy of A); T is A's upper
    (default) or lower triangle, op(T) = Tᵀ if ``transpose``."""
    b, a = _t(input), _t(A)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ShapeError(f"triangular_solve: A must be a square matrix or a batch of them "
                         f"(..., n, n), got shape {_shape(a)}")
    if b.ndim < 2 or b.shape[-2] != a.shape[-1]:
        raise ShapeError(f"triangular_solve: b must be (..., {a.shape[-1]}, k) to fit A of "
                         f"shape {_shape(a)}, got shape {_shape(b)}")
    return LA.triangular_solve(b, a, upper=upper, transpose=transpose,
                               unitriangular=unitriangular)


def cross(input, other, dim: int | None = None) -> Tensor:
    """Cross product of 3-vectors along ``dim``; dim=None takes input's first dim of length 3
    (torch.cross's rule, unlike linalg.cross's -1)."""
    a, b = _t(input), _t(other)
    if dim is None:
        dim = next((i for i, s in enumerate(a.shape) if s == 3), None)
        if dim is None:
            raise ShapeError(f"cross: no dim of length 3 in input of shape {_shape(a)}; pass "
                             "dim=")
    if a.ndim != b.ndim:
        raise ShapeError(f"cross: inputs need the same number of dims, got shapes {_shape(a)} "
                         f"and {_shape(b)}")
    ax = S.norm_axis(dim, a.ndim, "cross")
    if a.shape[ax] != 3 or b.shape[ax] != 3:
        raise ShapeError(f"cross: dim {dim} must have length 3 in both inputs, got shapes "
                         f"{_shape(a)} and {_shape(b)}")
    return LA.cross(a, b, dim=ax)


# --- calculus -------------------------------------------------------------------------------
def diff(input, n: int = 1, dim: int = -1, prepend=None, append=None, *,
         axis: int | None = None) -> Tensor:
    """n-th forward difference along ``dim`` (NumPy's ``axis``) (x[i+1] - x[i], for bools
    x[i+1] != x[i]), after concatenating ``prepend``/``append`` (same dims as input, same shape
    off ``dim``)."""
    if axis is not None:
        dim = axis
    x = _t(input)
    if x.ndim == 0:
        raise ShapeError("diff: expected a tensor with at least 1 dim, got a 0-d tensor")
    if int(n) != n or n < 0:
        raise ValueError(f"diff: the order n must be a non-negative integer, got {n!r}")
    ax = S.norm_axis(dim, x.ndim, "diff")
    if n == 0:  # PyTorch: the input as it is, without prepend/append
        return x
    parts = []
    for name, p in (("prepend", prepend), ("append", append)):
        if p is None:
            continue
        p = _t(p)
        if p.ndim != x.ndim or any(i != ax and p.shape[i] != x.shape[i]
                                   for i in range(x.ndim)):
            raise ShapeError(f"diff: {name} of shape {_shape(p)} must match input's shape "
                             f"{_shape(x)} except along dim {ax}")
        parts.append((name, p))
    if parts:
        pre = [p for k, p in parts if k == "prepend"]
        app = [p for k, p in parts if k == "append"]
        x = S.concatenate(pre + [x] + app, ax)
    for _ in range(int(n)):
        hi, lo = _sl(x, ax, 1), _sl(x, ax, None, -1)
        x = E.not_equal(hi, lo) if x.dtype.kind == "b" else hi - lo
    return x


def _as_dims(op: str, dim, ndim: int) -> list:
    if dim is None:
        return list(range(ndim))
    ds = [dim] if isinstance(dim, numbers.Integral) else list(dim)
    out = [S.norm_axis(int(d), ndim, op) for d in ds]
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: a dim repeats in dim={dim!r}")
    return out


def _grad_uniform(x: Tensor, ax: int, h, edge_order: int) -> Tensor:
    center = (_sl(x, ax, 2) - _sl(x, ax, None, -2)) / h
    if edge_order == 1:
        first = (_sl(x, ax, 1, 2) - _sl(x, ax, 0, 1)) / h
        last = (_sl(x, ax, -1) - _sl(x, ax, -2, -1)) / h
    else:
        first = (_sl(x, ax, 0, 1) * -1.5 + _sl(x, ax, 1, 2) * 2 - _sl(x, ax, 2, 3) * 0.5) / h
        last = (_sl(x, ax, -3, -2) * 0.5 + _sl(x, ax, -2, -1) * -2 + _sl(x, ax, -1) * 1.5) / h
    return S.concatenate([first, center / 2, last], ax)


def _grad_coords(x: Tensor, ax: int, c: Tensor, edge_order: int) -> Tensor:
    """Second-order central differences on the grid ``c`` (PyTorch's nonuniform formula)."""
    h = diff(c)
    shape = tuple(-1 if i == ax else 1 for i in range(x.ndim))
    h1, h2 = h[:-1], h[1:]
    a = S.reshape(-h2 / (h1 * (h1 + h2)), shape)
    b = S.reshape((h2 - h1) / (h1 * h2), shape)
    cc = S.reshape(h1 / (h2 * (h1 + h2)), shape)
    center = a * _sl(x, ax, None, -2) + b * _sl(x, ax, 1, -1) + cc * _sl(x, ax, 2)
    if edge_order == 1:
        first = (_sl(x, ax, 1, 2) - _sl(x, ax, 0, 1)) / h[0]
        last = (_sl(x, ax, -1) - _sl(x, ax, -2, -1)) / h[-1]
    else:
        d0, d1, e1, e2 = h[0], h[1], h[-1], h[-2]
        first = (-(2.0 * d0 + d1) / (d0 * (d0 + d1)) * _sl(x, ax, 0, 1)
                 + (d0 + d1) / (d0 * d1) * _sl(x, ax, 1, 2)
                 + (-d0) / (d1 * (d0 + d1)) * _sl(x, ax, 2, 3))
        last = (e1 / (e2 * (e1 + e2)) * _sl(x, ax, -3, -2)
                - (e1 + e2) / (e1 * e2) * _sl(x, ax, -2, -1)
                + (2 * e1 + e2) / (e1 * (e1 + e2)) * _sl(x, ax, -1))
    return S.concatenate([first, center, last], ax)


def gradient(input, *, spacing=1, dim=None, edge_order: int = 1) -> tuple:
    """Estimated derivative along each of ``dim`` (default all): second-order central
    differences inside, one-sided of order ``edge_order`` (1 or 2) at the ends. ``spacing``: a
    scalar step (None: 1), a list of steps, or a list of 1-d coordinate tensors (one per dim)."""
    x = _t(input)
    if spacing is None:
        spacing = 1
    dims = _as_dims("gradient", dim, x.ndim)
    if edge_order not in (1, 2):
        raise ValueError(f"gradient: edge_order must be 1 or 2, got {edge_order!r}")
    if isinstance(spacing, Tensor) and spacing.ndim > 0:
        raise TypeError("gradient: coordinates go in a list, one 1-d tensor per dim "
                        "(spacing=[t]); a bare spacing must be a scalar")
    if isinstance(spacing, list | tuple):
        if len(spacing) != len(dims):
            raise ShapeError(f"gradient: spacing has {len(spacing)} entries for {len(dims)} "
                             "dims (give one per dim, or one scalar)")
        steps = list(spacing)
    else:
        steps = [spacing] * len(dims)
    for d in dims:
        if x.shape[d] < edge_order + 1:
            raise ShapeError(f"gradient: dim {d} of input of shape {_shape(x)} has "
                             f"{x.shape[d]} points; edge_order={edge_order} needs at least "
                             f"{edge_order + 1}")
    out = []
    for d, h in zip(dims, steps):
        if isinstance(h, Tensor) and h.ndim > 0:
            if h.ndim != 1 or h.shape[0] != x.shape[d]:
                raise ShapeError(f"gradient: coordinates for dim {d} must be 1-d of length "
                                 f"{x.shape[d]}, got shape {_shape(h)}")
            out.append(_grad_coords(x, d, h, edge_order))
        else:
            out.append(_grad_uniform(x, d, h, edge_order))
    return tuple(out)


def _trap_setup(op: str, y, x, dx, dim: int):
    y = _t(y)
    if y.ndim == 0:
        raise ShapeError(f"{op}: y must have at least 1 dim, got a 0-d tensor")
    if x is not None and dx is not None:
        raise TypeError(f"{op}: pass either x (sample points) or dx (a spacing), not both")
    if y.dtype.kind == "b":
        raise DTypeError(f"{op}: bool y is not supported")
    return y, S.norm_axis(dim, y.ndim, op)


def _trap_dx(op: str, y: Tensor, x, ax: int) -> Tensor:
    """The spacings x[i+1] - x[i] shaped to broadcast against y's differences (PyTorch's
    rules: 1-d x lies along ``dim``, fewer dims get leading 1s)."""
    x = _t(x)
    if x.dtype.kind == "b":
        raise DTypeError(f"{op}: bool x is not supported")
    if x.ndim == 1:
        if x.shape[0] != y.shape[ax]:
            raise ShapeError(f"{op}: x has {x.shape[0]} points for {y.shape[ax]} samples of y "
                             f"along dim {ax}")
        x = S.reshape(x, tuple(x.shape[0] if i == ax else 1 for i in range(y.ndim)))
    elif x.ndim < y.ndim:
        x = S.reshape(x, (1,) * (y.ndim - x.ndim) + _shape(x))
    if x.ndim != y.ndim:
        raise ShapeError(f"{op}: x of shape {_shape(x)} has more dims than y of shape "
                         f"{_shape(y)}")
    dx = _sl(x, ax, 1) - _sl(x, ax, None, -1)
    dy_shape = tuple(max(s - 1, 0) if i == ax else s for i, s in enumerate(y.shape))
    try:
        B.np.broadcast_shapes(_shape(dx), dy_shape)
    except ValueError:
        raise ShapeError(f"{op}: x of shape {_shape(x)} does not broadcast against y of shape "
                         f"{_shape(y)}") from None
    return dx


def trapezoid(y, x=None, *, dx=None, dim: int = -1) -> Tensor:
    """∫ y along ``dim`` by the trapezoidal rule, at sample points ``x`` or with spacing
    ``dx`` (default 1); no samples give 0."""
    y, ax = _trap_setup("trapezoid", y, x, dx, dim)
    if y.shape[ax] == 0:
        shape = _shape(y)[:ax] + _shape(y)[ax + 1:]
        return Tensor._of(y.backend.xp.zeros(shape, dtype=y.dtype))
    if x is not None:
        d = _trap_dx("trapezoid", y, x, ax)
        return R.sum((_sl(y, ax, None, -1) + _sl(y, ax, 1)) * d, ax) / 2.0
    h = 1 if dx is None else dx
    ends = I.getitem(y, (slice(None),) * ax + (0,)) + I.getitem(y, (slice(None),) * ax + (-1,))
    return (R.sum(y, ax) - ends * 0.5) * h


def trapz(y, x=None, *, dx=None, dim: int = -1) -> Tensor:
    """PyTorch's older name for :func:`trapezoid`."""
    return trapezoid(y, x, dx=dx, dim=dim)


def cumulative_trapezoid(y, x=None, *, dx=None, dim: int = -1) -> Tensor:
    """Running trapezoidal integral along ``dim``: one entry fewer than y there."""
    y, ax = _trap_setup("cumulative_trapezoid", y, x, dx, dim)
    pair = _sl(y, ax, None, -1) + _sl(y, ax, 1)
    if x is not None:
        d = _trap_dx("cumulative_trapezoid", y, x, ax)
        return C.cumsum(pair * d, ax) / 2.0
    h = 1 if dx is None else dx
    return C.cumsum(pair * (h / 2.0), ax)


# --- statistics -----------------------------------------------------------------------------
def cov(input, *, correction: int = 1, fweights=None, aweights=None, rowvar: bool = True,
        bias: bool = False, ddof: int | None = None) -> Tensor:
    """Covariance of the rows (variables) of a 2-d input over its columns (observations); a
    1-d input is one variable. ``fweights`` (integer) repeat observations, ``aweights``
    (float) weigh them; the normaliser is NumPy's (Σw − correction·Σw·a/Σw with aweights).
    Size-1 dims of the result are squeezed. NumPy's ``rowvar=False`` (variables in columns),
    ``bias`` and ``ddof`` are taken too (``ddof`` over ``bias``, as ``np.cov``)."""
    if ddof is not None:
        correction = ddof
    elif bias:
        correction = 0
    x = _t(input)
    if not rowvar and x.ndim == 2:
        x = x.T
    if x.ndim > 2:
        raise ShapeError(f"cov: expected at most 2 dims (variables, observations), got shape "
                         f"{_shape(x)}")
    if x.dtype.kind == "b":
        raise DTypeError("cov: bool input is not supported")
    if x.ndim < 2:
        x = S.reshape(x, (1, -1))
    nobs = x.shape[1]
    # PyTorch's result dtype: input's float dtype (integers: the default) promoted with
    # aweights'; the weights are cast to it so the products below have one dtype
    dt = x.dtype if B.is_inexact(x.dtype) else B.DEFAULT_FLOAT
    if aweights is not None:
        aweights = _t(aweights)
    if aweights is not None and B.is_float(aweights.dtype):
        dt = B.np.promote_types(dt, aweights.dtype)
    if x.dtype != dt:
        x = E.astype(x, dt)
    w = None
    for name, wt, kinds in (("fweights", fweights, "iu"), ("aweights", aweights, "f")):
        if wt is None:
            continue
        wt = _t(wt)
        if wt.ndim > 1:
            raise ShapeError(f"cov: {name} must be 1-d, got shape {_shape(wt)}")
        if wt.dtype.kind not in kinds:
            kind = "an integer" if kinds == "iu" else "a floating"
            raise DTypeError(f"cov: {name} must have {kind} dtype, got {wt.dtype}")
        if math.prod(wt.shape) != nobs:
            raise ShapeError(f"cov: {name} has {math.prod(wt.shape)} entries for {nobs} "
                             "observations")
        v = values(wt)
        if nobs and bool((v < 0).any()):
            raise ValueError(f"cov: {name} cannot be negative")
        if name == "aweights":
            aweights = wt
        w = wt if w is None else E.astype(w, wt.dtype) * wt
    if w is None:
        avg = R.sum(x, 1) / nobs
        norm = nobs - correction
        if norm <= 0:
            warnings.warn("cov: degrees of freedom <= 0; the correction should be less than "
                          "the number of observations", RuntimeWarning, stacklevel=2)
            norm = 0
        xc = x - S.expand_dims(avg, 1)
        c = L.matmul(xc, _conj_t(xc))
    else:  # the weights' sums in their own dtype, as PyTorch's
        w = S.reshape(w, (-1,))
        wsum = R.sum(w)
        if not bool((values(wsum) != 0).all()):
            raise ValueError("cov: the weights sum to zero and cannot normalise")
        if correction != 0 and aweights is not None:
            norm = wsum - correction * R.sum(w * S.reshape(aweights, (-1,))) / wsum
        else:
            norm = wsum - correction
        if bool((values(norm) <= 0).any()):
            warnings.warn("cov: degrees of freedom <= 0; the correction should be less than "
                          "the number of observations", RuntimeWarning, stacklevel=2)
        norm = E.astype(E.where(norm <= 0, 0, norm), dt)
        w = E.astype(w, dt)
        avg = R.sum(x * w, 1) / E.astype(wsum, dt)
        xc = x - S.expand_dims(avg, 1)
        c = L.matmul(xc, _conj_t(xc * w))
    return S.squeeze(c / norm)


def _conj_t(x):
    """The conjugate transpose of a matrix (its transpose if real): cov's x·xᴴ."""
    t = S.swapaxes(x, 0, 1)
    return t.conj() if t.dtype.kind == "c" else t


def corrcoef(input) -> Tensor:
    """Pearson correlation coefficients of the rows (variables), clipped to [-1, 1]; a single
    variable gives c/c (1, or NaN for a constant)."""
    x = _t(input)
    if x.ndim > 2:
        raise ShapeError(f"corrcoef: expected at most 2 dims (variables, observations), got "
                         f"shape {_shape(x)}")
    c = cov(x)
    if c.ndim == 0:
        return c / c
    d = L._diag(c)
    sd = E.sqrt(d.real if d.dtype.kind == "c" else d)
    c = c / S.expand_dims(sd, 1)
    c = c / S.expand_dims(sd, 0)
    if c.dtype.kind == "c":  # real and imaginary parts clipped apart, as PyTorch and NumPy
        return E.clip(c.real, -1, 1) + E.clip(c.imag, -1, 1) * 1j
    return E.clip(c, -1, 1)


def dist(input, other, p: float = 2) -> Tensor:
    """p-norm of input - other (broadcast), over all entries; p = 0 counts nonzeros, ±inf
    takes the largest/smallest |difference|."""
    a, b = _t(input), _t(other)
    d = a - b  # promoted as PyTorch's: an integer tensor with a float one is that float
    if not B.is_inexact(d.dtype):
        raise DTypeError(f"dist: expected floating-point or complex tensors, got {a.dtype} and "
                         f"{b.dtype}")
    return R.vector_norm(d, ord=p)


def renorm(input, p: float, dim: int, maxnorm: float) -> Tensor:
    """Each slice along ``dim`` whose p-norm exceeds ``maxnorm`` scaled down to norm maxnorm
    (by maxnorm / (norm + 1e-7), as PyTorch); the others unchanged. Complex slices are
    measured by the norm of their moduli."""
    x = _t(input)
    if x.ndim < 2:
        raise ShapeError(f"renorm: input needs at least 2 dims, got shape {_shape(x)}")
    if not B.is_inexact(x.dtype):
        raise DTypeError(f"renorm: expected a floating-point or complex tensor, got {x.dtype}")
    if not p > 0:
        raise ValueError(f"renorm: p must be positive, got {p!r}")
    if not maxnorm >= 0:
        raise ValueError(f"renorm: maxnorm must be >= 0, got {maxnorm!r}")
    ax = S.norm_axis(dim, x.ndim, "renorm")
    rest = tuple(i for i in range(x.ndim) if i != ax)
    norm = R.vector_norm(E.abs(x) if x.dtype.kind == "c" else x, ord=p, dim=rest, keepdim=True)
    return x * E.where(norm > maxnorm, maxnorm / (norm + 1e-7), 1.0)


def vander(x, N: int | None = None, increasing: bool = False) -> Tensor:
    """Vandermonde matrix: columns x^(N-1), …, x, 1 (``increasing``: 1, x, …); integer and
    bool x give int64 (PyTorch)."""
    v = _t(x)
    if v.ndim != 1:
        raise ShapeError(f"vander: x must be 1-d, got shape {_shape(v)}")
    n = v.shape[0] if N is None else int(N)
    if n < 0:
        raise ValueError(f"vander: N must be non-negative, got {N!r}")
    if v.dtype.kind in "biu":
        v = E.astype(v, B.int64)
    out = powers(v, n)
    return out if increasing else S.flip(out, 1)


def frobenius_norm(input, dim, keepdim: bool = False) -> Tensor:
    """√Σ x² over ``dim`` (at most 2 dims; deprecated in PyTorch for linalg.norm)."""
    x = _t(input)
    ds = (dim,) if isinstance(dim, numbers.Integral) else tuple(dim)
    if len(ds) > 2:
        raise ShapeError(f"frobenius_norm: expected at most 2 dims, got dim={dim!r}")
    return R.vector_norm(x, ord=2, dim=ds, keepdim=keepdim)


def nuclear_norm(input, dim=(-2, -1), keepdim: bool = False) -> Tensor:
    """Sum of singular values of the matrices over ``dim`` (deprecated in PyTorch for
    linalg.matrix_norm(ord='nuc'))."""
    if isinstance(dim, bool):  # nuclear_norm(x, True): PyTorch's (input, keepdim) form
        dim, keepdim = (-2, -1), dim
    return R.matrix_norm(_t(input), ord="nuc", dim=tuple(dim), keepdim=keepdim)


# --- Tensor methods (the names torch.Tensor has) --------------------------------------------
def _register() -> None:
    from .methods import register

    register({
        "t": t, "mm": mm, "bmm": bmm, "mv": mv, "dot": dot, "vdot": vdot, "inner": inner,
        "outer": _outer_method, "ger": ger, "addmm": addmm, "addmv": addmv, "addbmm": addbmm,
        "baddbmm": baddbmm, "addr": addr, "addcmul": addcmul, "addcdiv": addcdiv, "kron": kron,
        "det": det, "logdet": logdet, "slogdet": slogdet, "inverse": inverse,
        "pinverse": pinverse, "matrix_power": matrix_power, "matrix_exp": matrix_exp,
        "cholesky": cholesky, "cholesky_solve": cholesky_solve,
        "cholesky_inverse": cholesky_inverse, "qr": qr, "svd": svd,
        "triangular_solve": triangular_solve, "cross": cross, "diff": diff, "cov": cov,
        "corrcoef": corrcoef, "dist": dist, "renorm": renorm,
    })


_register()
