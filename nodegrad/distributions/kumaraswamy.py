"""The Kumaraswamy distribution on (0, 1), a Beta look-alike with a closed-form CDF."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import broadcast_all
from .gumbel import EULER
from .transformed_distribution import TransformedDistribution
from .transforms import AffineTransform, PowerTransform
from .uniform import Uniform


def _moments(a: Tensor, b: Tensor, n: int) -> Tensor:
    """E[X^n] = b B(1 + n / a, b)."""
    arg1 = 1 + n / a
    return b * ng.exp(ng.lgamma(arg1) + ng.lgamma(b) - ng.lgamma(arg1 + b))


class Kumaraswamy(TransformedDistribution):
    """Kumaraswamy(concentration1 a, concentration0 b): density a b x^(a-1) (1 - x^a)^(b-1);
    reparameterised samples (1 - U^(1/b))^(1/a)."""

    arg_constraints = {"concentration1": constraints.positive,
                       "concentration0": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, concentration1: Tensor | float, concentration0: Tensor | float,
                 validate_args: bool | None = None):
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        base = Uniform(ng.zeros_like(self.concentration0), ng.ones_like(self.concentration0),
                       validate_args=False)
        transforms = [PowerTransform(1 / self.concentration0), AffineTransform(1.0, -1.0),
                      PowerTransform(1 / self.concentration1)]
        super().__init__(base, transforms, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return _moments(self.concentration1, self.concentration0, 1)

    @property
    def mode(self) -> Tensor:
        a, b = self.concentration1, self.concentration0
        log_mode = ng.log1p(-b) / b - ng.log1p(-b * a)  # PyTorch's expression
        return ng.exp(ng.where((b < 1) | (a < 1), float("nan"), log_mode))

    @property
    def variance(self) -> Tensor:
        return _moments(self.concentration1, self.concentration0, 2) - self.mean ** 2

    def entropy(self) -> Tensor:
        a, b = self.concentration1, self.concentration0
        t1, t0 = 1 - 1 / a, 1 - 1 / b
        h0 = ng.digamma(b + 1) + EULER
        return t0 + t1 * h0 - ng.log(a) - ng.log(b)
