"""Constraints: the sets parameters and values of a distribution must lie in (PyTorch's names).

``c.check(value)`` is a bool tensor over the batch: ``value.shape`` less ``c.event_dim`` trailing
dims, True where the value is valid. Distributions use them to validate arguments and samples.
"""

from __future__ import annotations

from . import _ng as ng
from nodegrad.tensor import Tensor

__all__ = ["Constraint", "MixtureSameFamilyConstraint", "boolean", "cat", "corr_cholesky",
           "dependent", "dependent_property", "greater_than", "greater_than_eq",
           "half_open_interval", "independent", "integer_interval", "interval", "is_dependent",
           "less_than", "lower_cholesky", "lower_triangular", "multinomial", "nonnegative",
           "nonnegative_integer", "one_hot", "positive", "positive_definite",
           "positive_integer", "positive_semidefinite", "real", "real_vector", "simplex",
           "square", "stack", "symmetric", "unit_interval"]


class Constraint:
    """A region of valid values; ``event_dim`` trailing dims make up one event."""

    is_discrete = False
    event_dim = 0

    def check(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.check: a Constraint subclass must "
                                  "define check(value) (a boolean tensor, True where valid)")

    def __repr__(self) -> str:
        return type(self).__name__.lstrip("_") + "()"


class _Dependent(Constraint):
    """A placeholder for a constraint that depends on other parameters (it cannot check)."""

    def __init__(self, *, is_discrete: bool = False, event_dim: int = 0):
        self.is_discrete, self.event_dim = is_discrete, event_dim

    def __call__(self, *, is_discrete: bool = False, event_dim: int = 0) -> _Dependent:
        return _Dependent(is_discrete=is_discrete, event_dim=event_dim)

    def check(self, value: Tensor) -> Tensor:
        raise ValueError("Cannot determine validity of dependent constraint")


def is_dependent(constraint) -> bool:
    """Whether ``constraint`` is a dependent placeholder (skipped by argument validation)."""
    return isinstance(constraint, _Dependent)


class dependent_property(property):
    """A property that is a constraint computed from the parameters (e.g. Uniform's support)."""

    def __init__(self, fn=None, *, is_discrete: bool = False, event_dim: int = 0):
        super().__init__(fn)
        self.is_discrete, self.event_dim = is_discrete, event_dim

    def __call__(self, fn) -> dependent_property:
        """Decorate ``fn`` when built with keywords: ``@dependent_property(event_dim=0)``."""
        return dependent_property(fn, is_discrete=self.is_discrete, event_dim=self.event_dim)


class _Real(Constraint):
    def check(self, value):
        return value == value  # False only at NaN


class _Boolean(Constraint):
    is_discrete = True

    def check(self, value):
        return (value == 0) | (value == 1)


class _GreaterThan(Constraint):
    def __init__(self, lower_bound):
        self.lower_bound = lower_bound

    def check(self, value):
        return value > self.lower_bound

    def __repr__(self):
        return f"GreaterThan(lower_bound={self.lower_bound})"


class _GreaterThanEq(_GreaterThan):
    def check(self, value):
        return value >= self.lower_bound

    def __repr__(self):
        return f"GreaterThanEq(lower_bound={self.lower_bound})"


class _LessThan(Constraint):
    def __init__(self, upper_bound):
        self.upper_bound = upper_bound

    def check(self, value):
        return value < self.upper_bound

    def __repr__(self):
        return f"LessThan(upper_bound={self.upper_bound})"


class _Interval(Constraint):
    def __init__(self, lower_bound, upper_bound):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def check(self, value):
        return (value >= self.lower_bound) & (value <= self.upper_bound)

    def __repr__(self):
        return (f"{type(self).__name__.lstrip('_')}(lower_bound={self.lower_bound}, "
                f"upper_bound={self.upper_bound})")


class _HalfOpenInterval(_Interval):
    def check(self, value):
        return (value >= self.lower_bound) & (value < self.upper_bound)


class _IntegerInterval(_Interval):
    is_discrete = True

    def check(self, value):
        return (value % 1 == 0) & (value >= self.lower_bound) & (value <= self.upper_bound)


class _IntegerGreaterThan(_GreaterThan):
    is_discrete = True

    def check(self, value):
        return (value % 1 == 0) & (value >= self.lower_bound)

    def __repr__(self):
        return f"IntegerGreaterThan(lower_bound={self.lower_bound})"


class _Independent(Constraint):
    """``base`` with its rightmost ``reinterpreted_batch_ndims`` batch dims read as event."""

    def __init__(self, base: Constraint, reinterpreted_batch_ndims: int):
        self.base, self.reinterpreted_batch_ndims = base, reinterpreted_batch_ndims

    @property
    def is_discrete(self):
        return self.base.is_discrete

    @property
    def event_dim(self):
        return self.base.event_dim + self.reinterpreted_batch_ndims

    def check(self, value):
        ok = self.base.check(value)
        for _ in range(self.reinterpreted_batch_ndims):
            ok = ng.all(ok, -1)
        return ok

    @property
    def base_constraint(self) -> Constraint:
        return self.base

    def __repr__(self):
        return f"IndependentConstraint({self.base!r}, {self.reinterpreted_batch_ndims})"


class _Multinomial(Constraint):
    """Non-negative integer count vectors summing to at most ``upper_bound``."""

    is_discrete = True
    event_dim = 1

    def __init__(self, upper_bound):
        self.upper_bound = upper_bound

    def check(self, value):
        return ng.all(value >= 0, -1) & (ng.sum(value, -1) <= self.upper_bound)


class _Cat(Constraint):
    """Constraints ``cseq`` applied to consecutive pieces (of ``lengths``) along ``dim``."""

    def __init__(self, cseq, dim: int = 0, lengths=None):
        self.cseq = list(cseq)
        self.lengths = [1] * len(self.cseq) if lengths is None else list(lengths)
        if len(self.lengths) != len(self.cseq):
            raise ValueError(f"cat: expected one length per constraint, got {len(self.lengths)} "
                             f"lengths for {len(self.cseq)} constraints")
        self.dim = dim

    @property
    def is_discrete(self):
        return any(c.is_discrete for c in self.cseq)

    @property
    def event_dim(self):
        return max(c.event_dim for c in self.cseq)

    def check(self, value):
        checks, start = [], 0
        for c, n in zip(self.cseq, self.lengths):
            checks.append(c.check(ng.narrow(value, self.dim, start, n)))
            start += n
        return ng.concatenate(checks, self.dim)


class _Stack(Constraint):
    """Constraints ``cseq`` applied to the slices of ``dim``."""

    def __init__(self, cseq, dim: int = 0):
        self.cseq, self.dim = list(cseq), dim

    @property
    def is_discrete(self):
        return any(c.is_discrete for c in self.cseq)

    @property
    def event_dim(self):
        dim = max(c.event_dim for c in self.cseq)
        return dim + 1 if self.dim + dim < 0 else dim

    def check(self, value):
        n = value.shape[self.dim]
        return ng.stack([self.cseq[i].check(ng.select(value, self.dim, i)) for i in range(n)],
                        self.dim)


class MixtureSameFamilyConstraint(Constraint):
    """The support of a mixture: its components' constraint, with the component dim reduced."""

    def __init__(self, base_constraint: Constraint):
        self.base_constraint = base_constraint

    @property
    def is_discrete(self):
        return self.base_constraint.is_discrete

    @property
    def event_dim(self):
        return self.base_constraint.event_dim

    def check(self, value):
        """One answer per batch element of ``value``: the components' constraint checked with
        the component dim put back (as PyTorch: it must hold for every component)."""
        if value.ndim < self.event_dim:
            raise ValueError(f"MixtureSameFamilyConstraint: expected a value of at least "
                             f"{self.event_dim} dims, got shape {tuple(value.shape)}")
        ok = self.base_constraint.check(ng.unsqueeze(value, -1 - self.event_dim))
        keep = value.ndim - self.event_dim
        return ng.all(ng.reshape(ok, tuple(ok.shape[:keep]) + (-1,)), -1)

    def __repr__(self) -> str:
        return f"MixtureSameFamilyConstraint({self.base_constraint!r})"


class _Simplex(Constraint):
    event_dim = 1

    def check(self, value):
        return ng.all(value >= 0, -1) & (ng.abs(ng.sum(value, -1) - 1) < 1e-6)


class _OneHot(Constraint):
    is_discrete = True
    event_dim = 1

    def check(self, value):
        return ng.all((value == 0) | (value == 1), -1) & (ng.sum(value, -1) == 1)


class _Square(Constraint):
    event_dim = 2

    def check(self, value):
        n, m = value.shape[-2], value.shape[-1]
        return ng.full(tuple(value.shape[:-2]), n == m, dtype=ng.bool_, device=value.device)


class _Symmetric(_Square):
    def check(self, value):
        if value.shape[-1] != value.shape[-2]:
            return super().check(value)
        return ng.all(ng.all(ng.abs(value - value.mT) <= 1e-6 * (1 + ng.abs(value)), -1), -1)


class _LowerTriangular(Constraint):
    event_dim = 2

    def check(self, value):
        return ng.all(ng.all(ng.tril(value) == value, -1), -1)


class _PositiveSemidefinite(_Symmetric):
    def check(self, value):
        return super().check(value) & ng.all(ng.linalg.eigvalsh(value) >= 0, -1)


class _LowerCholesky(Constraint):
    event_dim = 2

    def check(self, value):
        lower = ng.all(ng.all(ng.tril(value) == value, -1), -1)
        diag = ng.diagonal(value, 0, -2, -1)
        return lower & ng.all(diag > 0, -1)


class _CorrCholesky(Constraint):
    """Cholesky factors of correlation matrices: lower Cholesky with every row of unit
    Euclidean norm (so L Lᵀ has a unit diagonal), to a tolerance of 10 D eps for D x D."""

    event_dim = 2

    def check(self, value):
        tol = float(ng.finfo(value.dtype).eps) * value.shape[-1] * 10
        row_norm = ng.linalg.norm(value.detach(), dim=-1)
        unit_rows = ng.all(ng.abs(row_norm - 1.0) <= tol, -1)
        return _LowerCholesky().check(value) & unit_rows


class _PositiveDefinite(Constraint):
    event_dim = 2

    def check(self, value):
        sym = ng.all(ng.all(ng.abs(value - value.mT) <= 1e-6 * (1 + ng.abs(value)), -1), -1)
        return sym & ng.all(ng.linalg.eigvalsh(value) > 0, -1)


dependent = _Dependent()
real = _Real()
real_vector = _Independent(real, 1)
boolean = _Boolean()
positive = _GreaterThan(0.0)
nonnegative = _GreaterThanEq(0.0)
unit_interval = _Interval(0.0, 1.0)
nonnegative_integer = _IntegerGreaterThan(0)
simplex = _Simplex()
one_hot = _OneHot()
lower_cholesky = _LowerCholesky()
corr_cholesky = _CorrCholesky()
positive_definite = _PositiveDefinite()
positive_semidefinite = _PositiveSemidefinite()
positive_integer = _IntegerGreaterThan(1)
lower_triangular = _LowerTriangular()
square = _Square()
symmetric = _Symmetric()
less_than = _LessThan
multinomial = _Multinomial
cat = _Cat
stack = _Stack
greater_than = _GreaterThan
greater_than_eq = _GreaterThanEq
interval = _Interval
half_open_interval = _HalfOpenInterval
integer_interval = _IntegerInterval
independent = _Independent
