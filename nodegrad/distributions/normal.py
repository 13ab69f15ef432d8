"""The Normal (Gaussian) distribution N(loc, scale²)."""

from __future__ import annotations

import math

from . import _ng as ng
from nodegrad.tensor import Tensor

from .distribution import _LOG_2PI, _LocScale, _shape


class Normal(_LocScale):
    """Normal with mean ``loc`` and standard deviation ``scale``; reparameterised samples."""

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return self.scale ** 2

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        eps = ng.randn(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        return self.loc + eps * self.scale

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -((value - self.loc) ** 2) / (2 * self.scale ** 2) - ng.log(self.scale) \
            - 0.5 * _LOG_2PI

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return 0.5 * (1 + ng.erf((value - self.loc) / (self.scale * math.sqrt(2))))

    def icdf(self, value: Tensor) -> Tensor:
        return self.loc + self.scale * ng.erfinv(2 * value - 1) * math.sqrt(2)

    def entropy(self) -> Tensor:
        return 0.5 + 0.5 * _LOG_2PI + ng.log(self.scale)
