"""The log-normal distribution: exp of a Normal(loc, scale)."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .normal import Normal
from .transformed_distribution import TransformedDistribution
from .transforms import ExpTransform


class LogNormal(TransformedDistribution):
    """X = exp(Y) with Y ~ Normal(loc, scale); ``loc`` and ``scale`` are Y's parameters
    (PyTorch's ``LogNormal``, a transformed Normal). Reparameterised samples."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, loc: Tensor | float, scale: Tensor | float,
                 validate_args: bool | None = None):
        base = Normal(loc, scale, validate_args=False)
        super().__init__(base, ExpTransform(), validate_args=validate_args)

    @property
    def loc(self) -> Tensor:
        return self.base_dist.loc

    @property
    def scale(self) -> Tensor:
        return self.base_dist.scale

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

    def entropy(self) -> Tensor:
        return self.loc + 0.5 + ng.log(self.scale) + 0.5 * math.log(2 * math.pi)
