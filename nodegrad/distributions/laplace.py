"""The Laplace (double exponential) distribution."""

from __future__ import annotations

import math

from . import _ng as ng
from nodegrad.tensor import Tensor

from .distribution import _LocScale, _shape


class Laplace(_LocScale):
    """Laplace with location ``loc`` and scale ``scale``; reparameterised samples."""

    @property
    def stddev(self) -> Tensor:
        return math.sqrt(2) * self.scale

    @property
    def variance(self) -> Tensor:
        return 2 * self.scale ** 2

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        eps = float(ng.finfo(self.loc.dtype).eps)
        u = ng.rand(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        u = u * (2 - eps) + (eps - 1)  # in (-1, 1): log1p(-|u|) stays finite
        return self.loc - self.scale * ng.sign(u) * ng.log1p(-ng.abs(u))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -ng.log(2 * self.scale) - ng.abs(value - self.loc) / self.scale

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        d = value - self.loc
        return 0.5 - 0.5 * ng.sign(d) * ng.expm1(-ng.abs(d) / self.scale)

    def icdf(self, value: Tensor) -> Tensor:
        term = value - 0.5
        return self.loc - self.scale * ng.sign(term) * ng.log1p(-2 * ng.abs(term))

    def entropy(self) -> Tensor:
        return 1 + ng.log(2 * self.scale)
