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
        # one smooth branch per side (each exp argument <= 0): a sign(d) |d| form has
        # gradient 0 at d = 0, where the density is 1 / (2 scale)
        d = value - self.loc
        below = d < 0
        lo = ng.exp(ng.where(below, d, 0.0) / self.scale)
        hi = ng.exp(-ng.where(below, 0.0, d) / self.scale)
        return ng.where(below, 0.5 * lo, 1 - 0.5 * hi)

    def icdf(self, value: Tensor) -> Tensor:
        # as cdf: a branch per side, so the gradient at the median is 2 scale, not 0
        term = value - 0.5
        below = term < 0
        lo = ng.log1p(2 * ng.where(below, term, 0.0))
        hi = ng.log1p(-2 * ng.where(below, 0.0, term))
        return self.loc + self.scale * ng.where(below, lo, -hi)

    def entropy(self) -> Tensor:
        return 1 + ng.log(2 * self.scale)
