"""The Beta distribution on [0, 1]."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import Distribution, _shape, broadcast_all
from .gamma import standard_gamma_rsample
from .saddle_point import (_HALF_LOG_2PI, SERIES_FROM, digamma_tail, log_binomial,
                           stirlerr)


def _clamp_st(x: Tensor) -> Tensor:
    """``x`` clamped to [tiny, 1 - eps] for its dtype, with the gradient of the unclamped value
    (PyTorch clamps its Beta and Dirichlet samples the same way, in place)."""
    tiny, eps = float(ng.finfo(x.dtype).tiny), float(ng.finfo(x.dtype).eps)
    xd = x.detach()
    return x + (ng.clamp(xd, tiny, 1 - eps) - xd)


def _lbeta(a: Tensor, b: Tensor) -> Tensor:
    return ng.lgamma(a) + ng.lgamma(b) - ng.lgamma(a + b)


class Beta(Distribution):
    """Beta(concentration1, concentration0): density ∝ x^(c1-1) (1-x)^(c0-1).

    Reparameterised samples X / (X + Y) with X ~ Gamma(c1), Y ~ Gamma(c0), each carrying the
    implicit gamma gradient."""

    arg_constraints = {"concentration1": constraints.positive,
                       "concentration0": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, concentration1: Tensor | float, concentration0: Tensor | float,
                 validate_args: bool | None = None):
        self.concentration1, self.concentration0 = broadcast_all(concentration1,
                                                                 concentration0)
        super().__init__(tuple(self.concentration1.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.concentration1 / (self.concentration1 + self.concentration0)

    @property
    def mode(self) -> Tensor:
        """(c1 - 1) / (c1 + c0 - 2) with each c - 1 clamped at 0 (PyTorch's rule through
        Dirichlet's mode, which also gives 1 where both are below 1)."""
        a, b = self.concentration1, self.concentration0
        am1, bm1 = ng.clamp(a - 1, min=0), ng.clamp(b - 1, min=0)
        interior = am1 / (am1 + bm1)
        both_small = (a < 1) & (b < 1)
        return ng.where(both_small, 1.0, interior)

    @property
    def variance(self) -> Tensor:
        a, b = self.concentration1, self.concentration0
        total = a + b
        return a * b / (total ** 2 * (total + 1))

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        x = standard_gamma_rsample(self.concentration1.expand(*shape), generator=generator)
        y = standard_gamma_rsample(self.concentration0.expand(*shape), generator=generator)
        return _clamp_st(x / (x + y))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration1, self.concentration0
        plain = ng.xlogy(a - 1, value) + ng.xlog1py(b - 1, -value) - _lbeta(a, b)
        # from a, b = 2 on, (a + b - 1) Binomial(a - 1; a + b - 2, x) by saddle point: lbeta
        # and the two log terms, each of size a log a, cancel in the plain form
        a, b, value = ng.broadcast_tensors(a, b, value.astype(a.dtype))
        use = (a >= 2) & (b >= 2) & (value > 0) & (value < 1) & ng.isfinite(a + b)
        a_s, b_s = ng.where(use, a, 2.0), ng.where(use, b, 2.0)
        x = ng.where(use, value, 0.5)
        saddle = ng.log(a_s + b_s - 1) + log_binomial(a_s - 1, b_s - 1, x, 1 - x)
        return ng.where(use, saddle, plain)

    def entropy(self) -> Tensor:
        a, b = self.concentration1, self.concentration0
        total = a + b
        plain = (_lbeta(a, b) - (a - 1) * ng.digamma(a) - (b - 1) * ng.digamma(b)
                 + (total - 2) * ng.digamma(total))
        # for large a and b the lgamma and digamma terms (each ~ a log a) cancel: with
        # stirlerr and the digamma series only terms of order one are left
        big = (a >= SERIES_FROM) & (b >= SERIES_FROM)
        ab, bb = ng.where(big, a, SERIES_FROM), ng.where(big, b, SERIES_FROM)
        tb = ab + bb
        series = (stirlerr(ab) + stirlerr(bb) - stirlerr(tb) + _HALF_LOG_2PI
                  + 0.5 * (ng.log(ab) + ng.log(bb)) - 1.5 * ng.log(tb)
                  + 0.5 - 0.5 / ab - 0.5 / bb + 1.0 / tb + (ab - 1) * digamma_tail(ab)
                  + (bb - 1) * digamma_tail(bb) - (tb - 2) * digamma_tail(tb))
        return ng.where(big, series, plain)
