"""The generalized Pareto distribution (peaks over a threshold)."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import Distribution, _shape, broadcast_all


class GeneralizedPareto(Distribution):
    """GPD(loc, scale, concentration ξ): exponential tails at ξ = 0, heavy for ξ > 0, bounded
    above by loc - scale / ξ for ξ < 0; reparameterised samples by inversion."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive,
                       "concentration": constraints.real}
    has_rsample = True

    def __init__(self, loc: Tensor | float, scale: Tensor | float,
                 concentration: Tensor | float, validate_args: bool | None = None):
        self.loc, self.scale, self.concentration = broadcast_all(loc, scale, concentration)
        super().__init__(tuple(self.loc.shape), validate_args=validate_args)

    def _safe(self):
        """(ξ == 0 as PyTorch's isclose tests it, ξ with 1 where it is 0)."""
        c = self.concentration
        eq_zero = ng.abs(c) <= 1e-8
        return eq_zero, ng.where(eq_zero, 1.0, c)

    def _z(self, x: Tensor) -> Tensor:
        return (x - self.loc) / self.scale

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        u = ng.rand(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        return self.icdf(u)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = self._z(value)
        eq_zero, c = self._safe()
        y = 1 / c + ng.ones_like(z)
        nonzero = ng.where(y == 0, y, y * ng.log1p(c * z))
        return -ng.log(self.scale) - ng.where(eq_zero, z, nonzero)

    def log_survival_function(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = self._z(value)
        eq_zero, c = self._safe()
        return ng.where(eq_zero, -z, -ng.log1p(c * z) / c)

    def log_cdf(self, value: Tensor) -> Tensor:
        return ng.log1p(-ng.exp(self.log_survival_function(value)))

    def cdf(self, value: Tensor) -> Tensor:
        return ng.exp(self.log_cdf(value))

    def icdf(self, value: Tensor) -> Tensor:
        eq_zero, c = self._safe()
        logu = ng.log1p(-value)
        nonzero = self.loc + self.scale / c * ng.expm1(-c * logu)
        return ng.where(eq_zero, self.loc - self.scale * logu, nonzero)

    @property
    def mean(self) -> Tensor:
        c = self.concentration
        valid = c < 1
        result = self.loc + self.scale / (1 - ng.where(valid, c, 0.5))
        return ng.where(valid, result, float("nan"))

    @property
    def variance(self) -> Tensor:
        c = self.concentration
        valid = c < 0.5
        sc = ng.where(valid, c, 0.25)
        result = self.scale ** 2 / ((1 - sc) ** 2 * (1 - 2 * sc))
        return ng.where(valid, result, float("nan"))

    def entropy(self) -> Tensor:
        return (ng.log(self.scale) + self.concentration + 1).expand(*self._batch_shape)

    @property
    def mode(self) -> Tensor:
        return self.loc

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        lower = self.loc
        c = self.concentration
        upper = ng.where(c < 0, lower - self.scale / ng.where(c < 0, c, -1.0), float("inf"))
        return constraints.interval(lower, upper)
