"""The Poisson distribution over the non-negative integers."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.random import _gen, _sample
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import Distribution, _shape, broadcast_all
from .saddle_point import log_poisson


def _poisson_array(gen, rate: Tensor, shape: tuple):
    with gen.backend.scope():
        lam = rate._data
        return gen.rng.poisson(lam.astype("float64"), size=shape).astype(lam.dtype)


class Poisson(Distribution):
    """Poisson with ``rate`` (mean and variance); samples are counts in rate's dtype."""

    arg_constraints = {"rate": constraints.nonnegative}
    support = constraints.nonnegative_integer

    def __init__(self, rate: Tensor | float, validate_args: bool | None = None):
        (self.rate,) = broadcast_all(rate)
        super().__init__(tuple(self.rate.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.rate

    @property
    def mode(self) -> Tensor:
        return ng.floor(self.rate)

    @property
    def variance(self) -> Tensor:
        return self.rate

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        r = self.rate.detach().expand(*shape)
        return _sample("poisson", _poisson_array, _gen(generator, r.device), r, shape, shape_at=1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        rate, value = ng.broadcast_tensors(self.rate, value.astype(self.rate.dtype))
        plain = ng.xlogy(value, rate) - rate - ng.lgamma(value + 1)
        # from k = 1 on, the saddle-point form: the plain one cancels terms of size k log k
        # (at rate 1e6 float32 kept no digit, float64 eight)
        use = (value >= 1) & (rate > 0) & ng.isfinite(value) & ng.isfinite(rate)
        saddle = log_poisson(ng.where(use, value, 1.0), ng.where(use, rate, 1.0))
        return ng.where(use, saddle, plain)
