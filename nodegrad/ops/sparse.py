"""Sparse COO tensors: PyTorch's ``torch.sparse_coo_tensor``, ``torch.sparse`` and ``torch.spmm``.

A :class:`SparseTensor` holds ``indices`` (int64, ``(sparse_dim, nnz)``) and ``values``
(``(nnz, *dense_dims)``, an ordinary tensor that may carry a graph) and a shape. Every operation
on it is written with the engine's differentiable primitives (gathers and scatter-adds along the
indices), so gradients, ``jit`` and the checks come for free, and no dense copy of the sparse
operand is ever made: ``sparse.mm(A, X)`` costs ``nnz * X.shape[1]`` multiply-adds, as a graph
convolution wants. Operations PyTorch does not define on sparse tensors (and those nodegrad does
not yet) raise and name ``to_dense()``.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, tensor, zeros
from .aliases import Layout
from ..primitive import DEFERRING
from .index import _scatter, norm_index

__all__ = ["SparseTensor", "SparseCsrTensor", "sparse_coo", "sparse_csr", "sparse_coo_tensor",
           "sparse_csr_tensor", "spmm", "mm", "addmm", "sum", "softmax", "log_softmax",
           "to_sparse", "to_sparse_csr", "sparse_mask", "FloatTensor", "DoubleTensor"]

sparse_coo = Layout("sparse_coo")
sparse_csr = Layout("sparse_csr")


def _dense(op: str, x) -> Tensor:
    if isinstance(x, (SparseTensor, SparseCsrTensor)):
        raise TypeError(f"{op}: expected a dense tensor here, got a sparse COO tensor of shape "
                        f"{list(x.shape)} (call .to_dense() on it)")
    return x if isinstance(x, Tensor) else tensor(x)


def _csr_rows(xp, crow):
    """The row of each stored entry of a CSR matrix: how many row ends lie at or before it
    (a search, not ``repeat`` by counts, which CuPy does not take as an array)."""
    nnz = int(crow[-1]) if crow.shape[0] else 0
    return xp.searchsorted(crow[1:], xp.arange(nnz), side="right").astype(xp.int64)


def _linear(xp, idx, shape: tuple):
    """Row-major positions of the index columns ``idx`` (sparse_dim, nnz) in ``shape``."""
    if idx.shape[0] == 0:
        return xp.zeros(idx.shape[1], dtype=xp.int64)
    return xp.ravel_multi_index(tuple(idx), shape)


class SparseTensor:
    """A sparse COO tensor (PyTorch's ``layout=torch.sparse_coo``); build it with
    :func:`sparse_coo_tensor` or ``x.to_sparse()``.

    Duplicate index columns add up (an *uncoalesced* tensor, as PyTorch keeps them until
    :meth:`coalesce`). Differentiable in its values: a tensor made with ``requires_grad=True``
    is a leaf whose ``.grad`` is sparse with its coalesced pattern; one made from values that
    require grad sends the gradient on to them.
    """

    __slots__ = ("_i", "_v", "_size", "_coalesced", "_leaf")
    is_sparse = True
    layout = sparse_coo
    __array_priority__ = 1000  # NumPy defers `array @ S` to S

    def __init__(self, indices: Tensor, values: Tensor, size: tuple, coalesced: bool,
                 leaf: bool = False):
        self._i, self._v, self._size = indices, values, tuple(size)
        self._coalesced, self._leaf = coalesced, leaf

    # --- what it is -------------------------------------------------------------------------
    @property
    def shape(self):
        from .aliases import Size
        return Size(self._size)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self._size[dim]

    def dim(self) -> int:
        return len(self._size)

    ndim = property(dim)

    def numel(self) -> int:
        return math.prod(self._size)

    def sparse_dim(self) -> int:
        return int(self._i.shape[0])

    def dense_dim(self) -> int:
        return len(self._size) - self.sparse_dim()

    def _nnz(self) -> int:
        return int(self._i.shape[1])

    @property
    def dtype(self):
        return self._v.dtype

    @property
    def device(self):
        return self._v.device

    @property
    def backend(self):
        return self._v.backend

    def is_coalesced(self) -> bool:
        return self._coalesced

    def _indices(self) -> Tensor:
        return self._i

    def _values(self) -> Tensor:
        return self._v

    def indices(self) -> Tensor:
        """The index columns (sparse_dim, nnz); only of a coalesced tensor, as PyTorch's."""
        self._need_coalesced("indices")
        return self._i

    def values(self) -> Tensor:
        """The values (nnz, *dense_dims), differentiable; only of a coalesced tensor."""
        self._need_coalesced("values")
        return self._v

    def _need_coalesced(self, op: str) -> None:
        if not self._coalesced:
            raise RuntimeError(f"{op}: cannot take it from an uncoalesced sparse tensor (its "
                               "indices may repeat); call .coalesce() first")

    # --- gradients ----------------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._v.requires_grad

    @property
    def is_leaf(self) -> bool:
        return self._leaf or not self._v.requires_grad

    def requires_grad_(self, requires_grad: bool = True) -> SparseTensor:
        if not self.is_leaf:
            raise RuntimeError("requires_grad_: this sparse tensor is not a leaf (its values "
                               "come from a computation); use .detach() first")
        self._v = self._v.detach().requires_grad_(requires_grad)
        self._leaf = requires_grad
        return self

    @property
    def grad(self) -> SparseTensor | None:
        """A leaf's gradient: sparse, with the coalesced pattern of its indices (one value for
        each distinct position, as PyTorch's)."""
        g = self._v.grad if self._leaf else None
        if g is None:
            return None
        xp = self._i.backend.xp
        lin = _linear(xp, self._i._data, self._size[:self.sparse_dim()])
        _, first = xp.unique(lin, return_index=True)
        return SparseTensor(Tensor._of(self._i._data[:, first]), Tensor._of(g._data[first]),
                            self._size, True)

    @grad.setter
    def grad(self, value) -> None:
        if value is not None:
            raise TypeError("grad: a sparse tensor's gradient can only be cleared (set to None)")
        self._v.grad = None

    def detach(self) -> SparseTensor:
        return SparseTensor(self._i, self._v.detach(), self._size, self._coalesced)

    def clone(self) -> SparseTensor:
        return SparseTensor(self._i.clone(), self._v.clone(), self._size, self._coalesced)

    # --- conversions --------------------------------------------------------------------------
    def coalesce(self) -> SparseTensor:
        """The same tensor with its index columns sorted and distinct, repeats added up
        (differentiable in the values)."""
        if self._coalesced:
            return self
        xp = self._i.backend.xp
        nd = self.sparse_dim()
        lin = _linear(xp, self._i._data, self._size[:nd])
        uniq, inverse = xp.unique(lin, return_inverse=True)
        idx = xp.stack(xp.unravel_index(uniq, self._size[:nd])) if nd else (
            xp.zeros((0, uniq.shape[0]), dtype=xp.int64))
        shape = (int(uniq.shape[0]),) + tuple(self._v.shape[1:])
        values = _scatter(self._v, index=norm_index(Tensor._of(inverse.reshape(-1)), self.backend,
                                                    "coalesce"), shape=shape)
        return SparseTensor(Tensor._of(idx.astype(xp.int64)), values, self._size, True)

    def to_dense(self, dtype=None) -> Tensor:
        """The dense tensor (repeated positions added up), differentiable in the values."""
        nd = self.sparse_dim()
        index = norm_index(tuple(Tensor._of(r) for r in self._i._data), self.backend, "to_dense")
        out = _scatter(self._v, index=index, shape=self._size) if nd else self._v.sum(0)
        return out if dtype is None else out.to(dtype)

    def to_sparse(self, sparse_dim: int | None = None) -> SparseTensor:
        if sparse_dim is not None and sparse_dim != self.sparse_dim():
            raise ValueError(f"to_sparse: this tensor has sparse_dim {self.sparse_dim()}; "
                             f"cannot change it to {sparse_dim} (go through .to_dense())")
        return self

    to_sparse_coo = to_sparse

    def to_sparse_csr(self) -> SparseCsrTensor:
        return to_sparse_csr(self)

    def to(self, *args, **kwargs) -> SparseTensor:
        """``values.to(...)`` (dtype, device); the indices follow the device."""
        v = self._v.to(*args, **kwargs)
        i = self._i if v.device == self._i.device else self._i.to(v.device)
        return SparseTensor(i, v, self._size, self._coalesced, self._leaf and v is self._v)

    def double(self) -> SparseTensor:
        return self.to(B.np.float64)

    def float(self) -> SparseTensor:
        return self.to(B.np.float32)

    def cpu(self) -> SparseTensor:
        return self.to("cpu")

    def __array__(self, *args, **kwargs):
        raise TypeError(f"a sparse COO tensor of shape {list(self._size)} has no dense array; "
                        "call .to_dense() first")

    def __repr__(self) -> str:
        return (f"tensor(indices={self._i!r},\n       values={self._v!r},\n       "
                f"size={self._size}, nnz={self._nnz()}, layout=nodegrad.sparse_coo)")

    def __len__(self) -> int:
        if not self._size:
            raise TypeError("len() of a 0-d sparse tensor")
        return self._size[0]

    # --- arithmetic -----------------------------------------------------------------------------
    def _with_values(self, v: Tensor, coalesced: bool | None = None) -> SparseTensor:
        return SparseTensor(self._i, v, self._size,
                            self._coalesced if coalesced is None else coalesced)

    def __neg__(self) -> SparseTensor:
        return self._with_values(-self._v)

    def mul(self, other):
        """``self * other``: a number scales the values; a dense tensor of the same shape is
        read at the stored positions (the result stays sparse); two sparse tensors refuse."""
        if isinstance(other, SparseTensor):
            return self._mul_sparse(other)
        if isinstance(other, Tensor) and other.ndim:
            if tuple(other.shape) != self._size:
                raise ShapeError(f"mul: a sparse tensor of shape {list(self._size)} times a "
                                 f"dense one of shape {list(other.shape)}: the shapes must match")
            s = self.coalesce()
            picked = other[tuple(Tensor._of(r) for r in s._i._data)]
            return s._with_values(s._v * picked)
        return self._with_values(self._v * other)

    __mul__ = __rmul__ = multiply = mul

    def _mul_sparse(self, other: SparseTensor) -> SparseTensor:
        """Two sparse tensors of one shape: the product at the positions both store."""
        if other._size != self._size or other.sparse_dim() != self.sparse_dim():
            raise ShapeError(f"mul: sparse shapes {list(self._size)} and {list(other._size)} "
                             "differ")
        a, b = self.coalesce(), other.coalesce()
        xp = a._i.backend.xp
        nd = a.sparse_dim()
        la, lb = (_linear(xp, t._i._data, a._size[:nd]) for t in (a, b))
        pos = xp.minimum(xp.searchsorted(lb, la), max(int(lb.shape[0]) - 1, 0))
        both = (lb[pos] == la) if lb.shape[0] else xp.zeros(la.shape, dtype=bool)
        ia, ib = xp.nonzero(both)[0], pos[both]
        values = a._v[Tensor._of(ia)] * b._v[Tensor._of(ib)].to(a._v.dtype)
        return SparseTensor(Tensor._of(a._i._data[:, ia]), values, a._size, True)

    def div(self, other):
        if isinstance(other, (SparseTensor, Tensor)) and getattr(other, "ndim", 0):
            raise TypeError("div: a sparse tensor is only divided by a number or a 0-d tensor")
        return self._with_values(self._v / other)

    __truediv__ = divide = div

    def add(self, other, *, alpha=1):
        """``self + alpha * other`` for another sparse tensor of the same shape (indices put
        together, coalesced when both were); PyTorch refuses a dense ``other`` here (write
        ``dense + sparse``)."""
        if not isinstance(other, SparseTensor):
            raise TypeError("add(sparse, dense) is not supported, as in PyTorch; write "
                            "add(dense, sparse) (a dense result) or call .to_dense()")
        if other._size != self._size or other.sparse_dim() != self.sparse_dim():
            raise ShapeError(f"add: sparse shapes {list(self._size)} and {list(other._size)} "
                             "differ")
        ov = other._v if alpha == 1 else other._v * alpha
        from .shape import concatenate
        both = SparseTensor(Tensor._of(self.backend.xp.concatenate([self._i._data, other._i._data],
                                                               axis=1)),
                            concatenate([self._v, ov.to(self._v.dtype)], 0), self._size, False)
        return both.coalesce() if self._coalesced and other._coalesced else both

    __add__ = add

    def __sub__(self, other):
        return self.add(other, alpha=-1)

    def __radd__(self, other):  # dense + sparse is dense, as PyTorch's
        return _dense("add", other) + self.to_dense()

    def __rsub__(self, other):
        return _dense("sub", other) - self.to_dense()

    def pow(self, exponent) -> SparseTensor:
        """The values (coalesced) to a positive power, which keeps zeros zero."""
        if not (type(exponent) in (int, float) and exponent > 0):
            raise TypeError(f"pow: a sparse tensor takes a positive number as the exponent, got "
                            f"{exponent!r} (call .to_dense() first)")
        c = self.coalesce()
        return c._with_values(c._v ** exponent)

    __pow__ = pow

    def t(self) -> SparseTensor:
        """The transpose of a sparse matrix (uncoalesced, as PyTorch's)."""
        if self.dim() != 2 or self.sparse_dim() != 2:
            raise ShapeError(f"t: expected a sparse matrix, got shape {list(self._size)} with "
                             f"sparse_dim {self.sparse_dim()}")
        return SparseTensor(Tensor._of(self._i._data[::-1].copy()), self._v, self._size[::-1],
                            False)

    def transpose(self, dim0: int, dim1: int) -> SparseTensor:
        nd = self.sparse_dim()
        d0, d1 = (d % self.dim() for d in (dim0, dim1))
        if d0 >= nd or d1 >= nd:
            raise ShapeError("transpose: only the sparse dims of a sparse tensor are swapped "
                             f"here (dims {dim0}, {dim1}; sparse_dim {nd})")
        order = list(range(nd))
        order[d0], order[d1] = d1, d0
        size = list(self._size)
        size[d0], size[d1] = size[d1], size[d0]
        return SparseTensor(Tensor._of(self._i._data[order]), self._v, tuple(size), False)

    def mm(self, other):
        return mm(self, other)

    def matmul(self, other):
        if isinstance(other, Tensor) and other.ndim == 1:
            return mm(self, other.unsqueeze(1)).squeeze(1)
        return mm(self, other)

    __matmul__ = matmul

    def __rmatmul__(self, other):  # dense @ sparse = (sparse.T @ dense.T).T
        d = _dense("matmul", other)
        if d.ndim == 1:
            return mm(self.t(), d.unsqueeze(1)).squeeze(1)
        return mm(self.t(), d.T).T

    def sum(self, dim=None, keepdim: bool = False, dtype=None):
        """:func:`sum` (``torch.sparse.sum``); ``keepdim`` is refused, as PyTorch's."""
        if keepdim:
            raise TypeError("sum: keepdim=True is not defined on a sparse COO tensor; call "
                            ".to_dense() first")
        return sum(self, dim, dtype=dtype)

    @classmethod
    def __nodegrad_bind__(cls, prim, args: tuple, params: dict):
        """An engine primitive met a sparse operand: the few PyTorch defines run here; any
        other raises and names ``to_dense()``."""
        sp = [a for a in args if isinstance(a, SparseTensor)]
        name = prim.name
        if name == "matmul" and len(args) == 2:
            a, b = args
            return a.matmul(b) if isinstance(a, SparseTensor) else b.__rmatmul__(a)
        if name == "multiply" and len(args) == 2:
            a, b = args
            return a.mul(b) if isinstance(a, SparseTensor) else b.mul(a)
        if name in ("add", "subtract") and len(args) == 2 and not params:
            a, b = args
            if isinstance(a, SparseTensor):
                return a.add(b) if name == "add" else a - b
            return b.__radd__(a) if name == "add" else b.__rsub__(a)
        if name == "divide" and len(args) == 2 and isinstance(args[0], SparseTensor):
            return args[0].div(args[1])
        if name == "sum" and len(args) == 1 and not params.get("keepdims"):
            return sum(args[0], params.get("axis"))
        if (name == "power" and len(args) == 2 and isinstance(args[0], SparseTensor)
                and type(args[1]) in (int, float) and args[1] > 0):
            return args[0].pow(args[1])
        if len(args) == 1 and not params and name in _ZERO_KEEPING:
            s = sp[0].coalesce()
            return s._with_values(prim(s._v))
        raise TypeError(f"{name}: not defined on a sparse COO tensor (shape "
                        f"{list(sp[0]._size)}); call .to_dense() first")


# unary functions with f(0) = 0: applied to the (coalesced) values, as PyTorch's sparse kernels
_ZERO_KEEPING = frozenset((
    "negative", "abs", "sin", "sinh", "tan", "tanh", "asin", "asinh", "atan", "atanh", "sqrt",
    "square", "expm1", "log1p", "sign", "sgn", "floor", "ceil", "trunc", "round", "relu",
    "erf", "erfinv", "deg2rad", "rad2deg", "frac", "conj", "nan_to_num"))


def _int_indices(indices, device) -> Tensor:
    i = indices if isinstance(indices, Tensor) else tensor(indices, device=device)
    if i.dtype.kind not in "iu":
        raise DTypeError(f"sparse_coo_tensor: indices must be integers, got {i.dtype}")
    return i.detach().to(B.np.int64) if i.dtype != B.np.int64 else i.detach()


def sparse_coo_tensor(indices, values, size=None, *, dtype=None, device=None,
                      requires_grad: bool = False, check_invariants: bool | None = None,
                      is_coalesced: bool | None = None) -> SparseTensor:
    """PyTorch's ``torch.sparse_coo_tensor``: the tensor of ``size`` whose entry at each index
    column ``indices[:, k]`` is ``values[k]`` (repeats add up) and zero elsewhere.

    ``indices`` is ``(sparse_dim, nnz)``; ``values`` is ``(nnz, *dense_dims)``; ``size``
    defaults to one past the largest index on each sparse dim. Values that require grad keep
    their graph (the gradient flows back to them); ``requires_grad=True`` makes a leaf.
    """
    v = values if isinstance(values, Tensor) else tensor(values, dtype=dtype, device=device)
    if dtype is not None and v.dtype != dtype:
        v = v.to(dtype)
    if device is not None:
        v = v.to(device)
    i = _int_indices(indices, v.device)
    if i.ndim != 2:
        raise ShapeError(f"sparse_coo_tensor: indices must be 2-D (sparse_dim, nnz), got shape "
                         f"{list(i.shape)}")
    if v.ndim == 0:
        raise ShapeError("sparse_coo_tensor: values must have at least one dim (nnz, ...), "
                         "got a 0-d tensor")
    nd, nnz = int(i.shape[0]), int(i.shape[1])
    if int(v.shape[0]) != nnz:
        raise ShapeError(f"sparse_coo_tensor: indices have {nnz} columns but values have "
                         f"{v.shape[0]} entries (shape {list(v.shape)})")
    xp = i.backend.xp
    if nnz and bool((i._data < 0).any()):
        raise ValueError("sparse_coo_tensor: indices must not be negative")
    found = [int(m) + 1 for m in i._data.max(axis=1)] if nnz else [0] * nd
    if size is None:
        size = tuple(found) + tuple(v.shape[1:])
    else:
        size = tuple(int(s) for s in size)
        if len(size) != nd + v.ndim - 1:
            raise ShapeError(f"sparse_coo_tensor: size {list(size)} has {len(size)} dims but "
                             f"indices give {nd} sparse and values {v.ndim - 1} dense dims")
        if tuple(size[nd:]) != tuple(v.shape[1:]):
            raise ShapeError(f"sparse_coo_tensor: the dense dims of size {list(size[nd:])} "
                             f"differ from the values' {list(v.shape[1:])}")
        for d in range(nd):
            if found[d] > size[d]:
                raise ValueError(f"sparse_coo_tensor: size is inconsistent with indices: for "
                                 f"dim {d}, size is {size[d]} but found index {found[d] - 1}")
    if is_coalesced is None:
        lin = _linear(xp, i._data, size[:nd])
        is_coalesced = nnz <= 1 and nd > 0 or bool(nnz > 1 and (lin[1:] > lin[:-1]).all())
    leaf = bool(requires_grad)
    if leaf:
        if v.requires_grad and not v.is_leaf:
            raise RuntimeError("sparse_coo_tensor: requires_grad=True makes a leaf; its values "
                               "come from a computation (detach them first)")
        v = v.detach().requires_grad_(True)
    return SparseTensor(i, v, size, bool(is_coalesced), leaf)


def to_sparse(x, sparse_dim: int | None = None) -> SparseTensor:
    """``x.to_sparse()``: the coalesced sparse COO tensor of a dense one's nonzero entries
    (its first ``sparse_dim`` dims sparse, default all), differentiable in the values."""
    if isinstance(x, SparseTensor):
        return x.to_sparse(sparse_dim)
    x = _dense("to_sparse", x)
    nd = x.ndim if sparse_dim is None else int(sparse_dim)
    if not 0 < nd <= x.ndim:
        raise ValueError(f"to_sparse: sparse_dim must be in 1..{x.ndim}, got {sparse_dim}")
    xp = x.backend.xp
    d = x._data
    keep = d != 0 if nd == x.ndim else (d != 0).reshape(d.shape[:nd] + (-1,)).any(-1)
    idx = xp.stack(xp.nonzero(keep)).astype(xp.int64)
    values = x[tuple(Tensor._of(r) for r in idx)]
    return SparseTensor(Tensor._of(idx), values, tuple(x.shape), True)


class SparseCsrTensor:
    """A sparse CSR matrix (PyTorch's ``layout=torch.sparse_csr``): row ``r``'s entries are
    ``values[crow[r]:crow[r + 1]]`` at columns ``col_indices[crow[r]:crow[r + 1]]``. Build it
    with :func:`sparse_csr_tensor` or ``x.to_sparse_csr()``; its products, sums and conversions
    go through the COO form (:meth:`to_sparse`), so gradients reach values that require grad.
    """

    __slots__ = ("_crow", "_col", "_v", "_size")
    is_sparse = False  # PyTorch's is_sparse names COO only
    is_sparse_csr = True
    layout = sparse_csr
    __array_priority__ = 1000

    def __init__(self, crow: Tensor, col: Tensor, values: Tensor, size: tuple):
        self._crow, self._col, self._v, self._size = crow, col, values, tuple(size)

    shape = SparseTensor.shape
    size = SparseTensor.size
    dim = SparseTensor.dim
    ndim = SparseTensor.ndim
    numel = SparseTensor.numel
    dtype = SparseTensor.dtype
    device = SparseTensor.device
    backend = SparseTensor.backend
    requires_grad = SparseTensor.requires_grad

    def _nnz(self) -> int:
        return int(self._v.shape[0])

    def crow_indices(self) -> Tensor:
        return self._crow

    def col_indices(self) -> Tensor:
        return self._col

    def values(self) -> Tensor:
        return self._v

    def to_sparse(self, sparse_dim: int | None = None) -> SparseTensor:
        """The COO form (coalesced when each row's columns are sorted and distinct)."""
        if sparse_dim not in (None, 2):
            raise ValueError(f"to_sparse: a CSR matrix has 2 sparse dims, got {sparse_dim}")
        xp = self._crow.backend.xp
        crow = self._crow._data
        rows = _csr_rows(xp, crow)
        idx = xp.stack([rows, self._col._data.astype(xp.int64)])
        lin = _linear(xp, idx, self._size)
        ordered = lin.shape[0] <= 1 or bool((lin[1:] > lin[:-1]).all())
        return SparseTensor(Tensor._of(idx), self._v, self._size, ordered)

    to_sparse_coo = to_sparse

    def to_sparse_csr(self) -> SparseCsrTensor:
        return self

    def to_dense(self, dtype=None) -> Tensor:
        return self.to_sparse().to_dense(dtype)

    def _with_values(self, v: Tensor) -> SparseCsrTensor:
        return SparseCsrTensor(self._crow, self._col, v, self._size)

    def detach(self) -> SparseCsrTensor:
        return self._with_values(self._v.detach())

    def to(self, *args, **kwargs) -> SparseCsrTensor:
        v = self._v.to(*args, **kwargs)
        if v.device == self._crow.device:
            return self._with_values(v)
        return SparseCsrTensor(self._crow.to(v.device), self._col.to(v.device), v, self._size)

    double = SparseTensor.double
    float = SparseTensor.float

    def __neg__(self) -> SparseCsrTensor:
        return self._with_values(-self._v)

    def mul(self, other):
        """``self * number`` (a CSR matrix); anything else goes through the COO form."""
        if isinstance(other, (SparseTensor, SparseCsrTensor, Tensor)) and getattr(
                other, "ndim", 0):
            return self.to_sparse().mul(other)
        return self._with_values(self._v * other)

    __mul__ = __rmul__ = multiply = mul

    def div(self, other):
        return self._with_values(SparseTensor.div(self.to_sparse(), other)._v)

    __truediv__ = divide = div

    def matmul(self, other):
        return self.to_sparse().matmul(other)

    mm = __matmul__ = matmul

    def __rmatmul__(self, other):
        return self.to_sparse().__rmatmul__(other)

    def __array__(self, *args, **kwargs):
        raise TypeError(f"a sparse CSR tensor of shape {list(self._size)} has no dense array; "
                        "call .to_dense() first")

    def __repr__(self) -> str:
        return (f"tensor(crow_indices={self._crow!r},\n       col_indices={self._col!r},\n"
                f"       values={self._v!r}, size={self._size}, nnz={self._nnz()}, "
                "layout=nodegrad.sparse_csr)")

    @classmethod
    def __nodegrad_bind__(cls, prim, args: tuple, params: dict):
        """A primitive met a CSR operand: zero-keeping unary functions keep the CSR form;
        products and the rest go through the COO form."""
        if len(args) == 1 and not params and prim.name in _ZERO_KEEPING:
            return args[0]._with_values(prim(args[0]._v))
        coo = tuple(a.to_sparse() if isinstance(a, SparseCsrTensor) else a for a in args)
        return SparseTensor.__nodegrad_bind__(prim, coo, params)


def sparse_csr_tensor(crow_indices, col_indices, values, size=None, *, dtype=None, device=None,
                      requires_grad: bool = False,
                      check_invariants: bool | None = None) -> SparseCsrTensor:
    """PyTorch's ``torch.sparse_csr_tensor``: a sparse matrix in compressed-row form. ``size``
    defaults to (rows, one past the largest column). Values that require grad keep their
    graph; a leaf with ``requires_grad=True`` is refused (PyTorch's gradient of such a leaf is
    dense: build it from values that require grad, or use COO). ``check_invariants=True`` also
    checks that each row's columns are sorted and distinct, as PyTorch's."""
    if requires_grad:
        raise NotImplementedError("sparse_csr_tensor: requires_grad=True is not supported; "
                                  "make the values require grad (the gradient reaches them) "
                                  "or use sparse_coo_tensor")
    v = values if isinstance(values, Tensor) else tensor(values, dtype=dtype, device=device)
    if dtype is not None and v.dtype != dtype:
        v = v.to(dtype)
    if device is not None:
        v = v.to(device)
    crow = _int_indices(crow_indices, v.device)
    col = _int_indices(col_indices, v.device)
    if crow.ndim != 1 or col.ndim != 1 or v.ndim != 1:
        raise ShapeError("sparse_csr_tensor: crow_indices, col_indices and values must be 1-D "
                         f"(got shapes {list(crow.shape)}, {list(col.shape)}, {list(v.shape)})")
    nnz = int(col.shape[0])
    if int(v.shape[0]) != nnz:
        raise ShapeError(f"sparse_csr_tensor: {nnz} column indices but {v.shape[0]} values")
    c = crow._data
    if c.shape[0] == 0 or int(c[0]) != 0 or int(c[-1]) != nnz or bool((c[1:] < c[:-1]).any()):
        raise ValueError("sparse_csr_tensor: crow_indices must start at 0, never decrease and "
                         f"end at nnz ({nnz}); got {c.tolist()}")
    if nnz and int(col._data.min()) < 0:
        raise ValueError("sparse_csr_tensor: col_indices must not be negative")
    if check_invariants and nnz > 1:  # PyTorch's invariant: columns sorted and distinct in rows
        xp = col.backend.xp
        rows = _csr_rows(xp, c)
        if bool(((col._data[1:] <= col._data[:-1]) & (rows[1:] == rows[:-1])).any()):
            raise ValueError("sparse_csr_tensor: the column indices of each row must be sorted "
                             "and distinct")
    ncols = int(col._data.max()) + 1 if nnz else 0
    if size is None:
        size = (int(c.shape[0]) - 1, ncols)
    size = tuple(int(n) for n in size)
    if len(size) != 2 or size[0] != int(c.shape[0]) - 1 or ncols > size[1]:
        raise ValueError(f"sparse_csr_tensor: size {list(size)} does not fit "
                         f"{int(c.shape[0]) - 1} rows and columns up to {ncols - 1}")
    return SparseCsrTensor(crow, col, v, size)


def to_sparse_csr(x) -> SparseCsrTensor:
    """``x.to_sparse_csr()``: a dense matrix's nonzero entries (or a COO matrix, coalesced)
    in compressed-row form, differentiable in the values."""
    if isinstance(x, SparseCsrTensor):
        return x
    s = x.coalesce() if isinstance(x, SparseTensor) else to_sparse(x)
    if s.dim() != 2 or s.sparse_dim() != 2:
        raise ShapeError(f"to_sparse_csr: expected a matrix, got shape {list(s.shape)}")
    xp = s._i.backend.xp
    counts = xp.bincount(s._i._data[0], minlength=s._size[0])
    crow = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(counts).astype(xp.int64)])
    return SparseCsrTensor(Tensor._of(crow), Tensor._of(s._i._data[1].copy()), s._v, s._size)


DEFERRING.update((SparseTensor, SparseCsrTensor))


def sparse_mask(x, mask: SparseTensor) -> SparseTensor:
    """PyTorch's ``x.sparse_mask(mask)``: the entries of dense ``x`` at ``mask``'s index
    columns (its pattern, repeats and coalesced flag kept), differentiable in ``x``."""
    x = _dense("sparse_mask", x)
    if not isinstance(mask, SparseTensor):
        raise TypeError(f"sparse_mask: the mask must be a sparse tensor, got "
                        f"{type(mask).__name__}")
    if tuple(x.shape) != mask._size:
        raise ShapeError(f"sparse_mask: the tensor's shape {list(x.shape)} differs from the "
                         f"mask's {list(mask._size)}")
    values = x[tuple(Tensor._of(r) for r in mask._i._data)]
    return SparseTensor(mask._i, values, mask._size, mask._coalesced)


def _legacy(dtype_name: str):
    def build(indices, values, size=None):
        return sparse_coo_tensor(indices, values, size, dtype=getattr(B.np, dtype_name))

    build.__name__ = {"float32": "FloatTensor", "float64": "DoubleTensor"}[dtype_name]
    build.__doc__ = (f"PyTorch's legacy ``torch.sparse.{build.__name__}(indices, values, size)``"
                     f" (pygcn's): :func:`sparse_coo_tensor` with {dtype_name} values.")
    return build


FloatTensor = _legacy("float32")
DoubleTensor = _legacy("float64")


def mm(mat1, mat2):
    """PyTorch's ``torch.sparse.mm``: a sparse matrix times a dense one (a dense result,
    differentiable in both; ``nnz * mat2.shape[1]`` multiply-adds), or two sparse matrices
    (a sparse result)."""
    if isinstance(mat1, SparseCsrTensor):
        mat1 = mat1.to_sparse()
    if isinstance(mat2, SparseCsrTensor):
        mat2 = mat2.to_sparse()
    if not isinstance(mat1, SparseTensor):
        if isinstance(mat2, SparseTensor):
            return mat2.__rmatmul__(mat1)
        raise TypeError("sparse.mm: expected a sparse first operand, got "
                        f"{type(mat1).__name__}; use ng.mm for dense matrices")
    if mat1.dim() != 2 or mat1.sparse_dim() != 2:
        raise ShapeError(f"sparse.mm: expected a sparse matrix (2 sparse dims), got shape "
                         f"{list(mat1.shape)} with sparse_dim {mat1.sparse_dim()}")
    if isinstance(mat2, SparseTensor):
        return to_sparse(mm(mat1, mat2.to_dense()))
    d = _dense("sparse.mm", mat2)
    if d.ndim != 2:
        raise ShapeError(f"sparse.mm: mat2 must be a matrix, got shape {list(d.shape)}")
    if d.dtype != mat1.dtype:
        raise DTypeError(f"sparse.mm: the sparse matrix is {mat1.dtype} but mat2 is {d.dtype} "
                         "(convert one with .to(dtype))")
    m, k = mat1._size
    if int(d.shape[0]) != k:
        raise ShapeError(f"sparse.mm: shapes {list(mat1._size)} and {list(d.shape)} cannot be "
                         f"multiplied ({k} columns against {d.shape[0]} rows)")
    rows, cols = (Tensor._of(r) for r in mat1._i._data)
    contrib = mat1._v.unsqueeze(1) * d[cols]  # (nnz, n): each stored entry times its row of X
    return _scatter(contrib, index=norm_index(rows, d.backend, "sparse.mm"),
                    shape=(m, int(d.shape[1])))


def spmm(input, mat2):
    """``torch.spmm``: :func:`mm` of a sparse matrix and a dense one."""
    return mm(input, mat2)


def addmm(mat, mat1, mat2, *, beta=1.0, alpha=1.0):
    """``beta * mat + alpha * (mat1 @ mat2)`` with ``mat1`` sparse (PyTorch's
    ``torch.sparse.addmm``)."""
    prod = mm(mat1, mat2)
    prod = prod if alpha == 1 else prod * alpha
    base = _dense("sparse.addmm", mat)
    return prod + (base if beta == 1 else base * beta)


def sum(input: SparseTensor, dim=None, dtype=None):
    """PyTorch's ``torch.sparse.sum``: over all dims a dense 0-d tensor; over some of the
    sparse dims a sparse tensor of the rest (dense when none is left)."""
    if not isinstance(input, SparseTensor):
        raise TypeError(f"sparse.sum: expected a sparse tensor, got {type(input).__name__}")
    v = input._v if dtype is None else input._v.to(dtype)
    if dim is None:
        return v.sum()
    dims = sorted({d % input.dim() for d in ((dim,) if isinstance(dim, int) else dim)})
    nd = input.sparse_dim()
    dense_dims = [d - nd + 1 for d in dims if d >= nd]
    if dense_dims:
        v = v.sum(tuple(dense_dims))
    keep = [d for d in range(nd) if d not in dims]
    if len(keep) == nd:
        return SparseTensor(input._i, v, tuple(s for d, s in enumerate(input._size)
                                               if d not in dims), input._coalesced)
    if not keep:
        return v.sum(0)
    size = tuple(s for d, s in enumerate(input._size) if d not in dims)
    return SparseTensor(Tensor._of(input._i._data[keep]), v, size, False).coalesce()


def _grouped(op: str, input: SparseTensor, dim: int):
    """The coalesced tensor and, for each stored entry, the number of its slice along ``dim``
    (the entries softmax normalises together)."""
    if not isinstance(input, SparseTensor):
        raise TypeError(f"{op}: expected a sparse tensor, got {type(input).__name__}")
    s = input.coalesce()
    nd = s.sparse_dim()
    d = dim % s.dim()
    if d >= nd:
        raise ShapeError(f"{op}: dim {dim} is a dense dim; only sparse dims here")
    xp = s._i.backend.xp
    rest = [k for k in range(nd) if k != d]
    key = _linear(xp, s._i._data[rest], tuple(s._size[k] for k in rest))
    _, group = xp.unique(key, return_inverse=True)
    return s, group.reshape(-1), int(group.max()) + 1 if group.size else 0


def _group_log_normaliser(v: Tensor, group, n: int, backend):
    """``log(sum(exp(v)))`` for each group, gathered back to each entry, stably (shifted by
    the group's largest value, which carries no gradient)."""
    g = Tensor._of(group.reshape((-1,) + (1,) * (v.ndim - 1)))
    g = g.expand(tuple(v.shape)) if v.ndim > 1 else g
    rest = tuple(v.shape[1:])
    top = zeros((n,) + rest, dtype=v.dtype, device=v.device).scatter_reduce(
        0, g, v.detach(), "amax", include_self=False)
    shift = top[Tensor._of(group)]
    e = (v - shift).exp()
    total = _scatter(e, index=norm_index(Tensor._of(group), backend, "softmax"), shape=(n,) + rest)
    return shift + total[Tensor._of(group)].log()


def softmax(input: SparseTensor, dim: int, *, dtype=None) -> SparseTensor:
    """PyTorch's ``torch.sparse.softmax``: softmax along ``dim`` over the stored entries only
    (unstored ones count as minus infinity); sparse, with the coalesced pattern."""
    s, group, n = _grouped("sparse.softmax", input, dim)
    v = s._v if dtype is None else s._v.to(dtype)
    return s._with_values((v - _group_log_normaliser(v, group, n, s.backend)).exp(), True)


def log_softmax(input: SparseTensor, dim: int, *, dtype=None) -> SparseTensor:
    """PyTorch's ``torch.sparse.log_softmax``: :func:`softmax`'s log, computed stably."""
    s, group, n = _grouped("sparse.log_softmax", input, dim)
    v = s._v if dtype is None else s._v.to(dtype)
    return s._with_values(v - _group_log_normaliser(v, group, n, s.backend), True)

