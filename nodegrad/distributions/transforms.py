"""Transforms: invertible (or not) maps between constrained spaces, with log |det J| (PyTorch's
``torch.distributions.transforms``).

A transform maps a value from ``domain`` to ``codomain``; ``t.inv`` is its inverse and
``t.log_abs_det_jacobian(x, y)`` is log |dy/dx| summed over ``event_dim`` dims. With
``cache_size=1`` the last (x, y) pair is remembered, so ``t.inv(t(x))`` returns ``x`` itself.
"""

from __future__ import annotations

import math
import numbers
import weakref

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import _sum_rightmost

__all__ = ["AbsTransform", "AffineTransform", "CatTransform", "ComposeTransform",
           "CorrCholeskyTransform", "CumulativeDistributionTransform", "ExpTransform",
           "IndependentTransform", "LowerCholeskyTransform", "PositiveDefiniteTransform",
           "PowerTransform", "ReshapeTransform", "SigmoidTransform", "SoftmaxTransform",
           "SoftplusTransform", "StackTransform", "StickBreakingTransform", "TanhTransform",
           "Transform", "identity_transform"]


class Transform:
    """Base class: ``__call__`` maps x to y, ``inv`` is the inverse transform, ``sign`` the sign
    of the Jacobian (monotone elementwise maps), ``domain``/``codomain`` the constraints."""

    bijective = False
    domain: constraints.Constraint = constraints.real
    codomain: constraints.Constraint = constraints.real

    def __init__(self, cache_size: int = 0):
        if cache_size not in (0, 1):
            raise ValueError(f"{type(self).__name__}: cache_size must be 0 or 1, got "
                             f"{cache_size!r}")
        self._cache_size = cache_size
        self._cached_x_y = (None, None)
        self._inv = None

    def __getstate__(self) -> dict:
        """What pickle and ``copy`` keep: everything but a weakly held inverse (made again on
        first use), as PyTorch's ``Transform``."""
        state = self.__dict__.copy()
        if isinstance(state.get("_inv"), weakref.ref):
            state["_inv"] = None
        return state

    @property
    def event_dim(self) -> int:
        if self.domain.event_dim == self.codomain.event_dim:
            return self.domain.event_dim
        raise ValueError(f"{type(self).__name__}: domain and codomain have different event "
                         "dims; use .domain.event_dim or .codomain.event_dim")

    @property
    def inv(self) -> Transform:
        """The inverse transform (held weakly, so a transform and its inverse share a cache)."""
        inv = self._inv() if self._inv is not None else None
        if inv is None:
            inv = _InverseTransform(self)
            self._inv = weakref.ref(inv)
        return inv

    @property
    def sign(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement sign")

    def with_cache(self, cache_size: int = 1) -> Transform:
        """This transform with ``cache_size`` (a new one when it differs)."""
        if self._cache_size == cache_size:
            return self
        if type(self).__init__ is Transform.__init__:
            return type(self)(cache_size=cache_size)
        raise NotImplementedError(f"{type(self).__name__}.with_cache is not implemented")

    def __eq__(self, other) -> bool:
        return self is other

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    __hash__ = object.__hash__

    def __call__(self, x: Tensor) -> Tensor:
        if self._cache_size == 0:
            return self._call(x)
        x_old, y_old = self._cached_x_y
        if x is x_old:
            return y_old
        y = self._call(x)
        self._cached_x_y = x, y
        return y

    def _inv_call(self, y: Tensor) -> Tensor:
        if self._cache_size == 0:
            return self._inverse(y)
        x_old, y_old = self._cached_x_y
        if y is y_old:
            return x_old
        x = self._inverse(y)
        self._cached_x_y = x, y
        return x

    def _call(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement its forward")

    def _inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement its inverse")

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement "
                                  "log_abs_det_jacobian")

    def forward_shape(self, shape) -> tuple:
        """The shape of y for an x of ``shape``."""
        return tuple(shape)

    def inverse_shape(self, shape) -> tuple:
        """The shape of x for a y of ``shape``."""
        return tuple(shape)

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class _InverseTransform(Transform):
    """The inverse of a transform: calls its ``_inv_call`` and negates its log |det J|."""

    def __init__(self, transform: Transform):
        super().__init__(cache_size=transform._cache_size)
        self._inv: Transform = transform  # a strong reference, unlike Transform.inv

    @property
    def domain(self):
        return self._inv.codomain

    @property
    def codomain(self):
        return self._inv.domain

    @property
    def bijective(self):
        return self._inv.bijective

    @property
    def sign(self):
        return self._inv.sign

    @property
    def inv(self) -> Transform:
        return self._inv

    def with_cache(self, cache_size: int = 1) -> Transform:
        return self._inv.with_cache(cache_size).inv

    def __eq__(self, other) -> bool:
        return isinstance(other, _InverseTransform) and self._inv == other._inv

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inv!r})"

    def __call__(self, x: Tensor) -> Tensor:
        return self._inv._inv_call(x)

    def log_abs_det_jacobian(self, x, y):
        return -self._inv.log_abs_det_jacobian(y, x)

    def forward_shape(self, shape):
        return self._inv.inverse_shape(shape)

    def inverse_shape(self, shape):
        return self._inv.forward_shape(shape)


class ComposeTransform(Transform):
    """``parts`` applied in order; the empty composition is the identity."""

    def __init__(self, parts: list, cache_size: int = 0):
        parts = list(parts)
        for p in parts:
            if not isinstance(p, Transform):
                raise TypeError(f"ComposeTransform: expected Transforms, got {type(p).__name__}")
        if cache_size:
            parts = [p.with_cache(cache_size) for p in parts]
        super().__init__(cache_size=cache_size)
        self.parts = parts

    def __eq__(self, other):
        return isinstance(other, ComposeTransform) and self.parts == other.parts

    __hash__ = object.__hash__

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        if not self.parts:
            return constraints.real
        domain = self.parts[0].domain
        event_dim = self.parts[-1].codomain.event_dim
        for part in reversed(self.parts):
            event_dim += part.domain.event_dim - part.codomain.event_dim
            event_dim = max(event_dim, part.domain.event_dim)
        if event_dim > domain.event_dim:
            domain = constraints.independent(domain, event_dim - domain.event_dim)
        return domain

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        if not self.parts:
            return constraints.real
        codomain = self.parts[-1].codomain
        event_dim = self.parts[0].domain.event_dim
        for part in self.parts:
            event_dim += part.codomain.event_dim - part.domain.event_dim
            event_dim = max(event_dim, part.codomain.event_dim)
        if event_dim > codomain.event_dim:
            codomain = constraints.independent(codomain, event_dim - codomain.event_dim)
        return codomain

    @property
    def bijective(self):
        return all(p.bijective for p in self.parts)

    @property
    def sign(self):
        sign = 1
        for p in self.parts:
            sign = sign * p.sign
        return sign

    @property
    def inv(self) -> Transform:
        inv = self._inv() if self._inv is not None else None
        if inv is None:
            inv = ComposeTransform([p.inv for p in reversed(self.parts)])
            self._inv = weakref.ref(inv)
            inv._inv = weakref.ref(self)
        return inv

    def with_cache(self, cache_size: int = 1) -> Transform:
        if self._cache_size == cache_size:
            return self
        return ComposeTransform(self.parts, cache_size=cache_size)

    def __call__(self, x):
        for part in self.parts:
            x = part(x)
        return x

    def log_abs_det_jacobian(self, x, y):
        if not self.parts:
            return ng.zeros_like(x)
        xs = [x]
        for part in self.parts[:-1]:
            xs.append(part(xs[-1]))
        xs.append(y)
        terms = []
        event_dim = self.domain.event_dim
        for part, a, b in zip(self.parts, xs[:-1], xs[1:]):
            terms.append(_sum_rightmost(part.log_abs_det_jacobian(a, b),
                                        event_dim - part.domain.event_dim))
            event_dim += part.codomain.event_dim - part.domain.event_dim
        result = terms[0]
        for t in terms[1:]:
            result = result + t
        return result

    def forward_shape(self, shape):
        for part in self.parts:
            shape = part.forward_shape(shape)
        return tuple(shape)

    def inverse_shape(self, shape):
        for part in reversed(self.parts):
            shape = part.inverse_shape(shape)
        return tuple(shape)

    def __repr__(self):
        if not self.parts:
            return "ComposeTransform()"
        inner = ",\n    ".join(repr(p) for p in self.parts)
        return f"ComposeTransform(\n    {inner}\n)"


identity_transform = ComposeTransform([])


class IndependentTransform(Transform):
    """``base_transform`` with ``reinterpreted_batch_ndims`` more dims read as event dims:
    log |det J| is summed over them."""

    def __init__(self, base_transform: Transform, reinterpreted_batch_ndims: int,
                 cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        if not isinstance(reinterpreted_batch_ndims, int) or reinterpreted_batch_ndims < 0:
            raise ValueError("IndependentTransform: reinterpreted_batch_ndims must be an int "
                             f">= 0, got {reinterpreted_batch_ndims!r}")
        self.base_transform = base_transform.with_cache(cache_size)
        self.reinterpreted_batch_ndims = reinterpreted_batch_ndims

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return IndependentTransform(self.base_transform, self.reinterpreted_batch_ndims,
                                    cache_size=cache_size)

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        return constraints.independent(self.base_transform.domain,
                                       self.reinterpreted_batch_ndims)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return constraints.independent(self.base_transform.codomain,
                                       self.reinterpreted_batch_ndims)

    @property
    def bijective(self):
        return self.base_transform.bijective

    @property
    def sign(self):
        return self.base_transform.sign

    def _call(self, x):
        if x.ndim < self.domain.event_dim:
            raise ValueError(f"IndependentTransform: the input has {x.ndim} dims, expected at "
                             f"least {self.domain.event_dim}")
        return self.base_transform(x)

    def _inverse(self, y):
        if y.ndim < self.codomain.event_dim:
            raise ValueError(f"IndependentTransform: the input has {y.ndim} dims, expected at "
                             f"least {self.codomain.event_dim}")
        return self.base_transform.inv(y)

    def log_abs_det_jacobian(self, x, y):
        return _sum_rightmost(self.base_transform.log_abs_det_jacobian(x, y),
                              self.reinterpreted_batch_ndims)

    def forward_shape(self, shape):
        return self.base_transform.forward_shape(shape)

    def inverse_shape(self, shape):
        return self.base_transform.inverse_shape(shape)

    def __repr__(self):
        return f"IndependentTransform({self.base_transform!r}, {self.reinterpreted_batch_ndims})"


class ReshapeTransform(Transform):
    """Reshape the rightmost dims from ``in_shape`` to ``out_shape`` (same number of elements);
    log |det J| is 0."""

    bijective = True

    def __init__(self, in_shape, out_shape, cache_size: int = 0):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"ReshapeTransform: in_shape {self.in_shape} and out_shape "
                             f"{self.out_shape} have different numbers of elements")
        super().__init__(cache_size=cache_size)

    @constraints.dependent_property
    def domain(self):
        return constraints.independent(constraints.real, len(self.in_shape))

    @constraints.dependent_property
    def codomain(self):
        return constraints.independent(constraints.real, len(self.out_shape))

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return ReshapeTransform(self.in_shape, self.out_shape, cache_size=cache_size)

    def _call(self, x):
        batch = tuple(x.shape[:x.ndim - len(self.in_shape)])
        return x.reshape(batch + self.out_shape)

    def _inverse(self, y):
        batch = tuple(y.shape[:y.ndim - len(self.out_shape)])
        return y.reshape(batch + self.in_shape)

    def log_abs_det_jacobian(self, x, y):
        batch = tuple(x.shape[:x.ndim - len(self.in_shape)])
        return ng.zeros(batch, dtype=x.dtype, device=x.device)

    def _shape(self, shape, src, dst):
        shape = tuple(shape)
        if len(shape) < len(src) or shape[len(shape) - len(src):] != src:
            raise ValueError(f"ReshapeTransform: shape {shape} does not end in {src}")
        return shape[:len(shape) - len(src)] + dst

    def forward_shape(self, shape):
        return self._shape(shape, self.in_shape, self.out_shape)

    def inverse_shape(self, shape):
        return self._shape(shape, self.out_shape, self.in_shape)


class _Parameterless(Transform):
    """A transform without parameters: any two instances of one class are equal."""

    def __eq__(self, other):
        return isinstance(other, type(self))

    __hash__ = object.__hash__


class ExpTransform(_Parameterless):
    """y = exp(x)."""

    domain = constraints.real
    codomain = constraints.positive
    bijective = True
    sign = 1

    def _call(self, x):
        return ng.exp(x)

    def _inverse(self, y):
        return ng.log(y)

    def log_abs_det_jacobian(self, x, y):
        return x


class PowerTransform(Transform):
    """y = x ** exponent on the positive reals."""

    domain = constraints.positive
    codomain = constraints.positive
    bijective = True

    def __init__(self, exponent, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        (self.exponent,) = _as_tensors(exponent)

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return PowerTransform(self.exponent, cache_size=cache_size)

    @property
    def sign(self):
        return ng.sign(self.exponent)

    def __eq__(self, other):
        if not isinstance(other, PowerTransform):
            return False
        return bool(ng.all(self.exponent == other.exponent))

    __hash__ = object.__hash__

    def _call(self, x):
        return x ** self.exponent

    def _inverse(self, y):
        return y ** (1 / self.exponent)

    def log_abs_det_jacobian(self, x, y):
        return ng.log(ng.abs(self.exponent * y / x))

    def forward_shape(self, shape):
        return ng.broadcast_shapes(tuple(shape), tuple(self.exponent.shape))

    inverse_shape = forward_shape


def _as_tensors(*values):
    return tuple(v if isinstance(v, Tensor) else ng.tensor(float(v)) for v in values)


def _clipped_sigmoid(x: Tensor) -> Tensor:
    fi = ng.finfo(x.dtype)
    return ng.clamp(ng.sigmoid(x), float(fi.tiny), 1.0 - float(fi.eps))


class SigmoidTransform(_Parameterless):
    """y = sigmoid(x), clipped into (0, 1) so its inverse stays finite."""

    domain = constraints.real
    codomain = constraints.unit_interval
    bijective = True
    sign = 1

    def _call(self, x):
        return _clipped_sigmoid(x)

    def _inverse(self, y):
        fi = ng.finfo(y.dtype)
        y = ng.clamp(y, float(fi.tiny), 1.0 - float(fi.eps))
        return ng.log(y) - ng.log1p(-y)

    def log_abs_det_jacobian(self, x, y):
        return -ng.softplus(-x) - ng.softplus(x)


class SoftplusTransform(_Parameterless):
    """y = log(1 + exp(x))."""

    domain = constraints.real
    codomain = constraints.positive
    bijective = True
    sign = 1

    def _call(self, x):
        return ng.softplus(x)

    def _inverse(self, y):
        return ng.log(-ng.expm1(-y)) + y

    def log_abs_det_jacobian(self, x, y):
        return -ng.softplus(-x)


class TanhTransform(_Parameterless):
    """y = tanh(x); log |det J| in the stable form 2 (log 2 - x - softplus(-2x))."""

    domain = constraints.real
    codomain = constraints.interval(-1.0, 1.0)
    bijective = True
    sign = 1

    def _call(self, x):
        return ng.tanh(x)

    def _inverse(self, y):
        return ng.atanh(y)

    def log_abs_det_jacobian(self, x, y):
        return 2.0 * (math.log(2.0) - x - ng.softplus(-2.0 * x))


class AbsTransform(_Parameterless):
    """y = |x| (not injective: the inverse answers the positive root)."""

    domain = constraints.real
    codomain = constraints.positive

    def _call(self, x):
        return ng.abs(x)

    def _inverse(self, y):
        return y


class AffineTransform(Transform):
    """y = loc + scale * x, over ``event_dim`` trailing dims."""

    bijective = True

    def __init__(self, loc, scale, event_dim: int = 0, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        for name, v in (("loc", loc), ("scale", scale)):
            if not isinstance(v, (Tensor, numbers.Real)):
                raise TypeError(f"AffineTransform: {name} must be a Tensor or a number, got "
                                f"{type(v).__name__}")
        self.loc, self.scale, self._event_dim = loc, scale, event_dim

    @property
    def event_dim(self):
        return self._event_dim

    @constraints.dependent_property(is_discrete=False)
    def domain(self):
        if self._event_dim == 0:
            return constraints.real
        return constraints.independent(constraints.real, self._event_dim)

    @constraints.dependent_property(is_discrete=False)
    def codomain(self):
        return self.domain

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return AffineTransform(self.loc, self.scale, self._event_dim, cache_size=cache_size)

    def __eq__(self, other):
        if not isinstance(other, AffineTransform):
            return False
        for a, b in ((self.loc, other.loc), (self.scale, other.scale)):
            if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
                if a != b:
                    return False
            elif not bool(ng.all(_as_tensors(a)[0] == _as_tensors(b)[0])):
                return False
        return True

    __hash__ = object.__hash__

    @property
    def sign(self):
        if isinstance(self.scale, numbers.Real):
            return 1 if float(self.scale) > 0 else -1 if float(self.scale) < 0 else 0
        return ng.sign(self.scale)

    def _call(self, x):
        return self.loc + self.scale * x

    def _inverse(self, y):
        return (y - self.loc) / self.scale

    def log_abs_det_jacobian(self, x, y):
        shape = tuple(x.shape)
        scale = self.scale
        if isinstance(scale, numbers.Real):
            result = ng.full_like(x, math.log(abs(scale)))
        else:
            result = ng.log(ng.abs(scale))
        if self._event_dim:
            result = ng.sum(result.reshape(tuple(result.shape[:result.ndim - self._event_dim])
                                           + (-1,)), -1)
            shape = shape[:len(shape) - self._event_dim]
        return result.expand(*shape)

    def forward_shape(self, shape):
        return ng.broadcast_shapes(tuple(shape), tuple(getattr(self.loc, "shape", ())),
                                   tuple(getattr(self.scale, "shape", ())))

    inverse_shape = forward_shape


class SoftmaxTransform(_Parameterless):
    """Unconstrained vectors to the simplex by softmax (not injective: the inverse is log)."""

    domain = constraints.real_vector
    codomain = constraints.simplex

    def _call(self, x):
        probs = ng.exp(x - ng.max(x, -1, keepdims=True))
        return probs / ng.sum(probs, -1, keepdims=True)

    def _inverse(self, y):
        return ng.log(y)

    def forward_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"SoftmaxTransform: too few dimensions in shape {tuple(shape)}")
        return tuple(shape)

    inverse_shape = forward_shape


class StickBreakingTransform(_Parameterless):
    """R^(K-1) to the K-simplex by stick breaking: a bijection with a triangular Jacobian."""

    domain = constraints.real_vector
    codomain = constraints.simplex
    bijective = True

    @staticmethod
    def _offset_log(n: int, x: Tensor) -> Tensor:
        return ng.log(ng.arange(n, 0, -1, dtype=x.dtype, device=x.device))

    def _call(self, x):
        k = x.shape[-1]
        z = _clipped_sigmoid(x - self._offset_log(k, x))
        z_cumprod = ng.cumprod(1 - z, -1)
        pad = [(0, 0)] * (x.ndim - 1)
        return ng.pad(z, pad + [(0, 1)], constant_values=1) * \
            ng.pad(z_cumprod, pad + [(1, 0)], constant_values=1)

    def _inverse(self, y):
        y_crop = y[..., :-1]
        k = y_crop.shape[-1]
        sf = ng.clamp(1 - ng.cumsum(y_crop, -1), min=float(ng.finfo(y.dtype).tiny))
        return ng.log(y_crop) - ng.log(sf) + self._offset_log(k, y)

    def log_abs_det_jacobian(self, x, y):
        x = x - self._offset_log(x.shape[-1], x)
        return ng.sum(-x + ng.nn.functional.logsigmoid(x) + ng.log(y[..., :-1]), -1)

    def forward_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"StickBreakingTransform: too few dimensions in shape "
                             f"{tuple(shape)}")
        return tuple(shape[:-1]) + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"StickBreakingTransform: too few dimensions in shape "
                             f"{tuple(shape)}")
        return tuple(shape[:-1]) + (shape[-1] - 1,)


class LowerCholeskyTransform(_Parameterless):
    """Unconstrained square matrices to lower-triangular ones with a positive diagonal: keep
    the strict lower triangle, exponentiate the diagonal."""

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.lower_cholesky

    def _call(self, x):
        return ng.tril(x, -1) + ng.diag_embed(ng.exp(ng.diagonal(x, 0, -2, -1)))

    def _inverse(self, y):
        return ng.tril(y, -1) + ng.diag_embed(ng.log(ng.diagonal(y, 0, -2, -1)))


class PositiveDefiniteTransform(_Parameterless):
    """Unconstrained square matrices to positive-definite ones: L Lᵀ of the lower-Cholesky
    transform's L."""

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.positive_definite

    def _call(self, x):
        L = LowerCholeskyTransform()(x)
        return L @ L.mT

    def _inverse(self, y):
        return LowerCholeskyTransform().inv(ng.linalg.cholesky(y))


def _tril_matrix_to_vec(mat: Tensor, diag: int = 0) -> Tensor:
    """The entries on and below diagonal ``diag`` of the last two (square) dims, in row
    order, as the last dim."""
    n = mat.shape[-1]
    if not -n <= diag < n:
        raise ValueError(f"diag ({diag}) is outside [{-n}, {n - 1}]")
    rows, cols = ng.tril_indices(n, n, diag, device=mat.device)
    return mat[..., rows, cols]


def _vec_to_tril_matrix(vec: Tensor, diag: int = 0) -> Tensor:
    """The inverse of :func:`_tril_matrix_to_vec`: D x D matrices holding the last dim of
    ``vec`` on and below diagonal ``diag`` in row order, zeros elsewhere (differentiable)."""
    m = vec.shape[-1]
    # the positive root of D² + (1 + 2 diag) D - |diag| (diag + 1) - 2 m = 0
    b = 1 + 2 * diag
    n = round((-b + (b * b + 8 * m + 4 * abs(diag) * (diag + 1)) ** 0.5) / 2)
    rows, cols = ng.tril_indices(n, n, diag, device=vec.device) if n >= 1 else (None, None)
    if rows is None or rows.shape[0] != m:
        raise ValueError(f"The size of last dimension is {m} which cannot be expressed as the "
                         "lower triangular part of a square D x D matrix.")
    out = ng.zeros(tuple(vec.shape[:-1]) + (n, n), dtype=vec.dtype, device=vec.device)
    return ng.index_update(out, (Ellipsis, rows, cols), vec)


class CorrCholeskyTransform(_Parameterless):
    """Unconstrained vectors of length D(D-1)/2 to Cholesky factors of D x D correlation
    matrices (lower triangular, positive diagonal, unit-norm rows), PyTorch's map: the
    vector fills the strict lower triangle row by row, each entry goes through tanh into
    (-1, 1), and each row is made unit-norm by a signed stick-breaking on the squares.

    ``log_abs_det_jacobian`` is that of x against the strict lower triangle of y (the
    diagonal is determined by it)."""

    domain = constraints.real_vector
    codomain = constraints.corr_cholesky
    bijective = True

    def _call(self, x):
        eps = float(ng.finfo(x.dtype).eps)
        r = _vec_to_tril_matrix(ng.clamp(ng.tanh(x), -1 + eps, 1 - eps), diag=-1)
        # row i: y_ij = r_ij * prod_{k<j} sqrt(1 - r_ik²), and the diagonal takes what is left
        z1m_cumprod_sqrt = ng.cumprod(ng.sqrt(1 - r * r), -1)
        n = r.shape[-1]
        r = r + ng.eye(n, dtype=r.dtype, device=r.device)
        pad = [(0, 0)] * (r.ndim - 1) + [(1, 0)]
        return r * ng.pad(z1m_cumprod_sqrt[..., :-1], pad, constant_values=1)

    def _inverse(self, y):
        # undo the stick-breaking: r_ij = y_ij / sqrt(1 - sum_{k<j} y_ik²), then atanh
        left = 1 - ng.cumsum(y * y, -1)
        pad = [(0, 0)] * (y.ndim - 1) + [(1, 0)]
        left_before = ng.pad(left[..., :-1], pad, constant_values=1)
        t = _tril_matrix_to_vec(y, diag=-1) / ng.sqrt(_tril_matrix_to_vec(left_before, diag=-1))
        return (ng.log1p(t) - ng.log1p(-t)) / 2

    def log_abs_det_jacobian(self, x, y):
        # stick-breaking part: 1/2 sum log(1 - sum_{k<j} y_ik²) over j < i; diag=-2 reads the
        # running sum one column to the left, which is the shift it needs
        left = 1 - ng.cumsum(y * y, -1)
        stick_breaking = 0.5 * ng.sum(ng.log(_tril_matrix_to_vec(left, diag=-2)), -1)
        tanh = -2 * ng.sum(x + ng.softplus(-2 * x) - math.log(2.0), -1)
        return stick_breaking + tanh

    def forward_shape(self, shape):
        if len(shape) < 1:
            raise ValueError(f"CorrCholeskyTransform: too few dimensions in shape "
                             f"{tuple(shape)}")
        n = shape[-1]
        d = round((0.25 + 2 * n) ** 0.5 + 0.5)
        if d * (d - 1) // 2 != n:
            raise ValueError(f"CorrCholeskyTransform: the last dim {n} is not the size of the "
                             "strict lower triangle of a square matrix")
        return tuple(shape[:-1]) + (d, d)

    def inverse_shape(self, shape):
        if len(shape) < 2:
            raise ValueError(f"CorrCholeskyTransform: too few dimensions in shape "
                             f"{tuple(shape)}")
        if shape[-2] != shape[-1]:
            raise ValueError(f"CorrCholeskyTransform: the input of shape {tuple(shape)} is "
                             "not square")
        d = shape[-1]
        return tuple(shape[:-2]) + (d * (d - 1) // 2,)


class CatTransform(Transform):
    """Transforms ``tseq`` applied to consecutive pieces (of ``lengths``) along ``dim``."""

    def __init__(self, tseq, dim: int = 0, lengths=None, cache_size: int = 0):
        self.transforms = [t.with_cache(cache_size) for t in tseq]
        if not all(isinstance(t, Transform) for t in self.transforms):
            raise TypeError("CatTransform: expected a sequence of Transforms")
        super().__init__(cache_size=cache_size)
        self.lengths = [1] * len(self.transforms) if lengths is None else list(lengths)
        if len(self.lengths) != len(self.transforms):
            raise ValueError(f"CatTransform: expected one length per transform, got "
                             f"{len(self.lengths)} lengths for {len(self.transforms)} transforms")
        self.dim = dim

    @property
    def event_dim(self):
        return max(t.event_dim for t in self.transforms)

    @property
    def length(self):
        return sum(self.lengths)

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return CatTransform(self.transforms, self.dim, self.lengths, cache_size)

    def _pieces(self, x):
        if not -x.ndim <= self.dim < x.ndim or x.shape[self.dim] != self.length:
            raise ValueError(f"CatTransform: expected size {self.length} along dim {self.dim}, "
                             f"got shape {tuple(x.shape)}")
        start = 0
        for n in self.lengths:
            yield ng.narrow(x, self.dim, start, n)
            start += n

    def _call(self, x):
        return ng.concatenate([t(p) for t, p in zip(self.transforms, self._pieces(x))],
                              self.dim)

    def _inverse(self, y):
        return ng.concatenate([t.inv(p) for t, p in zip(self.transforms, self._pieces(y))],
                              self.dim)

    def log_abs_det_jacobian(self, x, y):
        terms = []
        for t, a, b in zip(self.transforms, self._pieces(x), self._pieces(y)):
            ladj = t.log_abs_det_jacobian(a, b)
            if t.event_dim < self.event_dim:
                ladj = _sum_rightmost(ladj, self.event_dim - t.event_dim)
            terms.append(ladj)
        dim = self.dim - x.ndim if self.dim >= 0 else self.dim
        dim = dim + self.event_dim
        if dim < 0:
            return ng.concatenate(terms, dim)
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out

    @property
    def bijective(self):
        return all(t.bijective for t in self.transforms)

    @constraints.dependent_property
    def domain(self):
        return constraints.cat([t.domain for t in self.transforms], self.dim, self.lengths)

    @constraints.dependent_property
    def codomain(self):
        return constraints.cat([t.codomain for t in self.transforms], self.dim, self.lengths)


class StackTransform(Transform):
    """Transforms ``tseq`` applied to the slices of ``dim``."""

    def __init__(self, tseq, dim: int = 0, cache_size: int = 0):
        self.transforms = [t.with_cache(cache_size) for t in tseq]
        if not all(isinstance(t, Transform) for t in self.transforms):
            raise TypeError("StackTransform: expected a sequence of Transforms")
        super().__init__(cache_size=cache_size)
        self.dim = dim

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return StackTransform(self.transforms, self.dim, cache_size)

    def _slices(self, z):
        if not -z.ndim <= self.dim < z.ndim or z.shape[self.dim] != len(self.transforms):
            raise ValueError(f"StackTransform: expected size {len(self.transforms)} along dim "
                             f"{self.dim}, got shape {tuple(z.shape)}")
        return [ng.select(z, self.dim, i) for i in range(z.shape[self.dim])]

    def _call(self, x):
        return ng.stack([t(s) for t, s in zip(self.transforms, self._slices(x))], self.dim)

    def _inverse(self, y):
        return ng.stack([t.inv(s) for t, s in zip(self.transforms, self._slices(y))], self.dim)

    def log_abs_det_jacobian(self, x, y):
        return ng.stack([t.log_abs_det_jacobian(a, b) for t, a, b in
                         zip(self.transforms, self._slices(x), self._slices(y))], self.dim)

    @property
    def bijective(self):
        return all(t.bijective for t in self.transforms)

    @constraints.dependent_property
    def domain(self):
        return constraints.stack([t.domain for t in self.transforms], self.dim)

    @constraints.dependent_property
    def codomain(self):
        return constraints.stack([t.codomain for t in self.transforms], self.dim)


class CumulativeDistributionTransform(Transform):
    """y = F(x), the CDF of a univariate ``distribution``: a copula transform into (0, 1);
    log |det J| is the log density."""

    bijective = True
    codomain = constraints.unit_interval
    sign = 1

    def __init__(self, distribution, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        self.distribution = distribution

    @property
    def domain(self):
        return self.distribution.support

    def with_cache(self, cache_size=1):
        if self._cache_size == cache_size:
            return self
        return CumulativeDistributionTransform(self.distribution, cache_size=cache_size)

    def _call(self, x):
        return self.distribution.cdf(x)

    def _inverse(self, y):
        return self.distribution.icdf(y)

    def log_abs_det_jacobian(self, x, y):
        return self.distribution.log_prob(x)
