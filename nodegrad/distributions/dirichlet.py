"""The Dirichlet distribution over the probability simplex."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import Distribution, _shape
from .beta import _clamp_st
from .gamma import standard_gamma_rsample
from .saddle_point import _HALF_LOG_2PI, SERIES_FROM, bd0, digamma_tail, stirlerr


class Dirichlet(Distribution):
    """Dirichlet(concentration) over the simplex of the last axis (PyTorch's ``Dirichlet``).

    Reparameterised samples: normalised Gamma draws, each with the implicit gamma gradient."""

    arg_constraints = {"concentration": constraints.independent(constraints.positive, 1)}
    support = constraints.simplex
    has_rsample = True
    _param_event_dims = {"concentration": 1}

    def __init__(self, concentration: Tensor, validate_args: bool | None = None):
        if not isinstance(concentration, Tensor) or concentration.ndim < 1:
            raise ValueError("Dirichlet: concentration must be a tensor with at least one "
                             "dimension (the categories on its last axis)")
        self.concentration = concentration
        shape = tuple(concentration.shape)
        super().__init__(shape[:-1], shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.concentration / self.concentration.sum(-1, keepdims=True)

    @property
    def mode(self) -> Tensor:
        a = ng.clamp(self.concentration - 1, min=0)
        mode = a / a.sum(-1, keepdims=True)
        small = (self.concentration < 1).all(axis=-1, keepdims=True)
        # all below 1: every vertex is a mode; PyTorch answers the first one (its argmax of
        # the 0/0 row), and Beta's mode of 1 there follows from it
        first = (ng.arange(self.concentration.shape[-1]) == 0).astype(self.concentration.dtype)
        return ng.where(small, first, mode)

    @property
    def variance(self) -> Tensor:
        a0 = self.concentration.sum(-1, keepdims=True)
        return self.concentration * (a0 - self.concentration) / (a0 ** 2 * (a0 + 1))

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        g = standard_gamma_rsample(self.concentration.expand(*shape), generator=generator)
        return _clamp_st(g / g.sum(-1, keepdims=True))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a = self.concentration
        plain = ((ng.xlogy(a - 1, value)).sum(-1) + ng.lgamma(a.sum(-1))
                 - ng.lgamma(a).sum(-1))
        # with every a_i >= 1 and x_i > 0, by saddle point (as a multinomial): the plain form
        # cancels lgamma terms of size a log a (float32 gave 8 for 15.56 at a ~ 1e6)
        a, value = ng.broadcast_tensors(a, value.astype(a.dtype))
        use = ng.all((a >= 1) & (value > 0) & ng.isfinite(a), -1, keepdims=True)
        a_s, x = ng.where(use, a, 1.0), ng.where(use, value, 1.0)
        total = a_s.sum(-1, keepdims=True)
        m = total * x
        saddle = (stirlerr(total[..., 0]) - 0.5 * ng.log(total[..., 0])
                  + (-stirlerr(a_s) - bd0(a_s, m) + (m - a_s) + 0.5 * ng.log(a_s)
                     - ng.log(x)).sum(-1)
                  - (a.shape[-1] - 1) * _HALF_LOG_2PI)
        return ng.where(use[..., 0], saddle, plain)

    def entropy(self) -> Tensor:
        a = self.concentration
        k = a.shape[-1]
        a0 = a.sum(-1)
        plain = (ng.lgamma(a).sum(-1) - ng.lgamma(a0) - (k - a0) * ng.digamma(a0)
                 - ((a - 1) * ng.digamma(a)).sum(-1))
        # with every a_i large, the lgamma and digamma terms (each ~ a log a) cancel: with
        # stirlerr and the digamma series only terms of order one are left
        big = ng.all(a >= SERIES_FROM, -1, keepdims=True)
        ab = ng.where(big, a, SERIES_FROM)
        tb = ab.sum(-1)
        series = (stirlerr(ab).sum(-1) - stirlerr(tb) + (k - 1) * _HALF_LOG_2PI
                  + 0.5 * ng.log(ab).sum(-1) + (0.5 - k) * ng.log(tb) + 0.5 * k / tb
                  + 0.5 * (k - 1) - (0.5 / ab).sum(-1) + (k - tb) * digamma_tail(tb)
                  + ((ab - 1) * digamma_tail(ab)).sum(-1))
        return ng.where(big[..., 0], series, plain)
