"""The log-normal distribution: exp of a Normal(loc, scale)."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .normal import Normal


class LogNormal(Normal):
    """X = exp(Y) with Y ~ Normal(loc, scale); ``loc`` and ``scale`` are Y's parameters
    (PyTorch's ``LogNormal``). Reparameterised samples."""

    support = constraints.positive

    @property
    def mean(self) -> Tensor:
        return ng.exp(self.loc + self.scale ** 2 / 2)

    @property
    def mode(self) -> Tensor:
        return ng.exp(self.loc - self.scale ** 2)

    @property
    def variance(self) -> Tensor:
        s2 = self.scale ** 2
        return ng.expm1(s2) * ng.exp(2 * self.loc + s2)

    @property
    def stddev(self) -> Tensor:
        return ng.sqrt(self.variance)

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        return ng.exp(super().rsample(sample_shape, generator=generator))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        y = ng.log(value)
        return Normal.log_prob(Normal(self.loc, self.scale, validate_args=False), y) - y

    def cdf(self, value: Tensor) -> Tensor:
        return Normal(self.loc, self.scale, validate_args=False).cdf(ng.log(value))

    def icdf(self, value: Tensor) -> Tensor:
        return ng.exp(Normal(self.loc, self.scale, validate_args=False).icdf(value))

    def entropy(self) -> Tensor:
        return self.loc + 0.5 + ng.log(self.scale) + 0.5 * math.log(2 * math.pi)
