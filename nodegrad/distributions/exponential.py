"""The Exponential distribution with rate λ."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import Distribution, _shape, broadcast_all


class Exponential(Distribution):
    """Exponential with ``rate`` (mean 1 / rate); reparameterised samples."""

    arg_constraints = {"rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, rate: Tensor | float, validate_args: bool | None = None):
        (self.rate,) = broadcast_all(rate)
        super().__init__(tuple(self.rate.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return 1 / self.rate

    @property
    def mode(self) -> Tensor:
        return ng.zeros_like(self.rate)

    @property
    def stddev(self) -> Tensor:
        return 1 / self.rate

    @property
    def variance(self) -> Tensor:
        return self.rate ** -2

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        u = ng.rand(shape, dtype=self.rate.dtype, device=self.rate.device, generator=generator)
        return -ng.log1p(-u) / self.rate  # Exp(1) by inversion, u in [0, 1): finite

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return ng.log(self.rate) - self.rate * value

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return 1 - ng.exp(-self.rate * value)

    def icdf(self, value: Tensor) -> Tensor:
        return -ng.log1p(-value) / self.rate

    def entropy(self) -> Tensor:
        return 1.0 - ng.log(self.rate)
