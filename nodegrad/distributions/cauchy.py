"""The Cauchy (Lorentz) distribution."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from .distribution import _LocScale, _shape


class Cauchy(_LocScale):
    """Cauchy with median ``loc`` and half-width ``scale``; no mean or variance (NaN, inf).
    Reparameterised samples by inversion, loc + scale tan(pi (u - 1/2))."""

    @property
    def mean(self) -> Tensor:
        return ng.full_like(self.loc, float("nan"))

    @property
    def variance(self) -> Tensor:
        return ng.full_like(self.loc, float("inf"))

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        u = ng.rand(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        return self.loc + ng.tan(math.pi * (u - 0.5)) * self.scale

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (-math.log(math.pi) - ng.log(self.scale)
                - ng.log1p(((value - self.loc) / self.scale) ** 2))

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return ng.atan((value - self.loc) / self.scale) / math.pi + 0.5

    def icdf(self, value: Tensor) -> Tensor:
        return ng.tan(math.pi * (value - 0.5)) * self.scale + self.loc

    def entropy(self) -> Tensor:
        return math.log(4 * math.pi) + ng.log(self.scale)
