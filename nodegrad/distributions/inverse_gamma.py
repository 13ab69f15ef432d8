"""The inverse-gamma distribution: 1 / X for X ~ Gamma."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .gamma import Gamma
from .transformed_distribution import TransformedDistribution
from .transforms import PowerTransform


class InverseGamma(TransformedDistribution):
    """1 / X with X ~ Gamma(concentration, rate); reparameterised samples."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, concentration: Tensor | float, rate: Tensor | float,
                 validate_args: bool | None = None):
        base = Gamma(concentration, rate, validate_args=False)
        neg_one = -ng.ones_like(base.rate)
        super().__init__(base, PowerTransform(neg_one), validate_args=validate_args)

    @property
    def concentration(self) -> Tensor:
        return self.base_dist.concentration

    @property
    def rate(self) -> Tensor:
        return self.base_dist.rate

    @property
    def mean(self) -> Tensor:
        c = self.concentration
        return ng.where(c > 1, self.rate / ng.where(c > 1, c - 1, 1.0), float("inf"))

    @property
    def mode(self) -> Tensor:
        return self.rate / (self.concentration + 1)

    @property
    def variance(self) -> Tensor:
        c = self.concentration
        cs = ng.where(c > 2, c, 3.0)
        return ng.where(c > 2, self.rate ** 2 / ((cs - 1) ** 2 * (cs - 2)), float("inf"))

    def entropy(self) -> Tensor:
        c = self.concentration
        return c + ng.log(self.rate) + ng.lgamma(c) - (1 + c) * ng.digamma(c)
