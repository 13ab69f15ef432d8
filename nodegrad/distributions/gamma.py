"""The Gamma distribution, and the standard-gamma sampler Gamma and Beta draw through."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.random import _draw, _gen
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import Distribution, _shape, broadcast_all


def _standard_gamma_array(gen, concentration: Tensor, shape: tuple):
    """Gamma(concentration, 1) samples of ``shape`` as an array in concentration's dtype."""
    with gen.backend.scope():
        alpha = concentration.data
        out = gen.rng.standard_gamma(alpha.astype("float64"), size=shape)
        tiny = float(ng.finfo(alpha.dtype).tiny)
        return out.clip(tiny, None).astype(alpha.dtype)  # 0 underflows log_prob; torch clamps


def standard_gamma(concentration: Tensor, sample_shape=(), *, generator=None) -> Tensor:
    """Gamma(concentration, 1) samples of shape ``sample_shape + concentration.shape``,
    drawn through nodegrad's generator (a jitted function draws afresh on each call)."""
    shape = _shape(sample_shape) + tuple(concentration.shape)
    c = concentration.detach()
    return Tensor(_draw(_standard_gamma_array, _gen(generator, c.device), c, shape))


class Gamma(Distribution):
    """Gamma with shape ``concentration`` and ``rate`` (mean concentration / rate).

    Samples carry no gradient (``has_rsample`` is False): nodegrad has no reparameterised
    gamma sampler."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.nonnegative

    def __init__(self, concentration: Tensor | float, rate: Tensor | float,
                 validate_args: bool | None = None):
        self.concentration, self.rate = broadcast_all(concentration, rate)
        super().__init__(tuple(self.rate.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.concentration / self.rate

    @property
    def mode(self) -> Tensor:
        return ng.clamp((self.concentration - 1) / self.rate, min=0)

    @property
    def variance(self) -> Tensor:
        return self.concentration / self.rate ** 2

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        with ng.no_grad():
            c = self.concentration.detach().expand(*shape)
            x = standard_gamma(c, generator=generator) / self.rate.detach()
            return ng.clamp(x, min=float(ng.finfo(x.dtype).tiny))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        c, r = self.concentration, self.rate
        return ng.xlogy(c, r) + ng.xlogy(c - 1, value) - r * value - ng.lgamma(c)

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return ng.igamma(self.concentration, self.rate * value)

    def entropy(self) -> Tensor:
        c = self.concentration
        return c - ng.log(self.rate) + ng.lgamma(c) + (1.0 - c) * ng.digamma(c)
