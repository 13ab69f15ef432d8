"""Student's t distribution."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .chi2 import Chi2
from .distribution import Distribution, _shape, broadcast_all


class StudentT(Distribution):
    """Student's t with ``df`` degrees of freedom, location ``loc`` and scale ``scale``;
    reparameterised samples X / sqrt(Z / df) with X normal and Z ~ Chi2(df)."""

    arg_constraints = {"df": constraints.positive, "loc": constraints.real,
                       "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, df: Tensor | float, loc: Tensor | float = 0.0,
                 scale: Tensor | float = 1.0, validate_args: bool | None = None):
        self.df, self.loc, self.scale = broadcast_all(df, loc, scale)
        super().__init__(tuple(self.df.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return ng.where(self.df <= 1, float("nan"), self.loc)

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        df = self.df
        big = ng.where(df > 2, df, 3.0)
        v = self.scale ** 2 * big / (big - 2)
        inf_or_nan = ng.where(df > 1, ng.full_like(df, float("inf")), float("nan"))
        return ng.where(df > 2, v, inf_or_nan)

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        x = ng.randn(shape, dtype=self.df.dtype, device=self.df.device, generator=generator)
        z = Chi2(self.df, validate_args=False).rsample(sample_shape, generator=generator)
        y = x * ng.rsqrt(z / self.df)
        return self.loc + self.scale * y

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        df = self.df
        y = (value - self.loc) / self.scale
        z = (ng.log(self.scale) + 0.5 * ng.log(df) + 0.5 * math.log(math.pi)
             + ng.lgamma(0.5 * df) - ng.lgamma(0.5 * (df + 1.0)))
        return -0.5 * (df + 1.0) * ng.log1p(y ** 2 / df) - z

    def entropy(self) -> Tensor:
        df = self.df
        lbeta = ng.lgamma(0.5 * df) + math.lgamma(0.5) - ng.lgamma(0.5 * (df + 1))
        return (ng.log(self.scale) + 0.5 * (df + 1) * (ng.digamma(0.5 * (df + 1))
                                                       - ng.digamma(0.5 * df))
                + 0.5 * ng.log(df) + lbeta)
