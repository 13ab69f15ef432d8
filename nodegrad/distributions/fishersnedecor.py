"""The Fisher-Snedecor (F) distribution."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import Distribution, _shape, broadcast_all
from .gamma import Gamma


class FisherSnedecor(Distribution):
    """F(df1, df2): the ratio of two scaled chi-squared variables; reparameterised samples."""

    arg_constraints = {"df1": constraints.positive, "df2": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, df1: Tensor | float, df2: Tensor | float,
                 validate_args: bool | None = None):
        self.df1, self.df2 = broadcast_all(df1, df2)
        super().__init__(tuple(self.df1.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        df2 = ng.where(self.df2 <= 2, float("nan"), self.df2)
        return df2 / (df2 - 2)

    @property
    def mode(self) -> Tensor:
        mode = (self.df1 - 2) / self.df1 * self.df2 / (self.df2 + 2)
        return ng.where(self.df1 <= 2, float("nan"), mode)

    @property
    def variance(self) -> Tensor:
        df2 = ng.where(self.df2 <= 4, float("nan"), self.df2)
        return 2 * df2 ** 2 * (self.df1 + df2 - 2) / (self.df1 * (df2 - 2) ** 2 * (df2 - 4))

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        x1 = Gamma(self.df1 * 0.5, self.df1, validate_args=False).rsample(
            sample_shape, generator=generator).reshape(shape)
        x2 = Gamma(self.df2 * 0.5, self.df2, validate_args=False).rsample(
            sample_shape, generator=generator).reshape(shape)
        tiny = float(ng.finfo(x2.dtype).tiny)
        x2 = x2 + (ng.clamp(x2.detach(), min=tiny) - x2.detach())
        y = x1 / x2
        return y + (ng.clamp(y.detach(), min=tiny) - y.detach())

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        ct1, ct2, ct3 = self.df1 * 0.5, self.df2 * 0.5, self.df1 / self.df2
        t1 = ng.lgamma(ct1 + ct2) - ng.lgamma(ct1) - ng.lgamma(ct2)
        t2 = ct1 * ng.log(ct3) + (ct1 - 1) * ng.log(value)
        t3 = (ct1 + ct2) * ng.log1p(ct3 * value)
        return t1 + t2 - t3
