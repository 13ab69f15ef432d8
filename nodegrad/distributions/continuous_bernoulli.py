"""The continuous Bernoulli distribution on [0, 1] (Loaiza-Ganem and Cunningham, 2019)."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .bernoulli import _bce_with_logits
from .distribution import _concrete, _shape, broadcast_all
from .exp_family import ExponentialFamily
from .utils import clamp_probs, lazy_property, logits_to_probs, probs_to_logits


class ContinuousBernoulli(ExponentialFamily):
    """Density C(λ) λ^x (1 - λ)^(1-x) on [0, 1] with ``probs`` λ (or ``logits``); near λ = 1/2
    (inside ``lims``) Taylor expansions keep the normaliser stable. Reparameterised samples by
    inversion of the CDF."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval
    _mean_carrier_measure = 0
    has_rsample = True

    def __init__(self, probs: Tensor | float | None = None, logits: Tensor | float | None = None,
                 lims: tuple = (0.499, 0.501), validate_args: bool | None = None):
        if (probs is None) == (logits is None):
            raise ValueError("ContinuousBernoulli: either `probs` or `logits` must be "
                             "specified, but not both.")
        if probs is not None:
            (p,) = broadcast_all(probs)
            if validate_args is not False and _concrete() and not bool(ng.all(
                    constraints.unit_interval.check(p))):
                raise ValueError(f"Expected parameter probs (Tensor of shape {tuple(p.shape)}) "
                                 f"of distribution ContinuousBernoulli to satisfy the "
                                 f"constraint {constraints.unit_interval!r}, but found invalid "
                                 f"values:\n{p}")
            self.probs = clamp_probs(p)
            self._param = self.probs
        else:
            (self.logits,) = broadcast_all(logits)
            self._param = self.logits
        self._lims = lims
        super().__init__(tuple(self._param.shape), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> ContinuousBernoulli:
        new = super().expand(batch_shape, _instance)
        new._param = new.__dict__["probs" if "probs" in self.__dict__ else "logits"]
        return new

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> Tensor:
        return clamp_probs(logits_to_probs(self.logits, is_binary=True))

    @property
    def param_shape(self) -> tuple:
        return tuple(self._param.shape)

    def _outside_unstable_region(self) -> Tensor:
        return (self.probs <= self._lims[0]) | (self.probs > self._lims[1])

    def _cut_probs(self) -> Tensor:
        return ng.where(self._outside_unstable_region(), self.probs, self._lims[0])

    def _cont_bern_log_norm(self) -> Tensor:
        cut = self._cut_probs()
        below = ng.where(cut <= 0.5, cut, 0.0)
        above = ng.where(cut >= 0.5, cut, 1.0)
        log_norm = ng.log(ng.abs(ng.log1p(-cut) - ng.log(cut))) - ng.where(
            cut <= 0.5, ng.log1p(-2.0 * below), ng.log(2.0 * above - 1.0))
        x = (self.probs - 0.5) ** 2
        taylor = math.log(2.0) + (4.0 / 3.0 + 104.0 / 45.0 * x) * x
        return ng.where(self._outside_unstable_region(), log_norm, taylor)

    @property
    def mean(self) -> Tensor:
        cut = self._cut_probs()
        mus = cut / (2.0 * cut - 1.0) + 1.0 / (ng.log1p(-cut) - ng.log(cut))
        x = self.probs - 0.5
        taylor = 0.5 + (1.0 / 3.0 + 16.0 / 45.0 * x ** 2) * x
        return ng.where(self._outside_unstable_region(), mus, taylor)

    @property
    def variance(self) -> Tensor:
        cut = self._cut_probs()
        v = (cut * (cut - 1.0) / (1.0 - 2.0 * cut) ** 2
             + 1.0 / (ng.log1p(-cut) - ng.log(cut)) ** 2)
        x = (self.probs - 0.5) ** 2
        taylor = 1.0 / 12.0 - (1.0 / 15.0 - 128.0 / 945.0 * x) * x
        return ng.where(self._outside_unstable_region(), v, taylor)

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        p = self.probs
        u = ng.rand(shape, dtype=p.dtype, device=p.device, generator=generator)
        return self.icdf(u)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = ng.broadcast_tensors(self.logits, value.astype(self.logits.dtype))
        return -_bce_with_logits(logits, value) + self._cont_bern_log_norm()

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        cut = self._cut_probs()
        cdfs = (cut ** value * (1.0 - cut) ** (1.0 - value) + cut - 1.0) / (2.0 * cut - 1.0)
        unbounded = ng.where(self._outside_unstable_region(), cdfs, value)
        return ng.where(value <= 0.0, 0.0, ng.where(value >= 1.0, 1.0, unbounded))

    def icdf(self, value: Tensor) -> Tensor:
        cut = self._cut_probs()
        inv = ((ng.log1p(-cut + value * (2.0 * cut - 1.0)) - ng.log1p(-cut))
               / (ng.log(cut) - ng.log1p(-cut)))
        return ng.where(self._outside_unstable_region(), inv, value)

    def entropy(self) -> Tensor:
        log_p0, log_p1 = ng.log1p(-self.probs), ng.log(self.probs)
        return self.mean * (log_p0 - log_p1) - self._cont_bern_log_norm() - log_p0

    @property
    def _natural_params(self) -> tuple[Tensor]:
        return (self.logits,)

    def _log_normalizer(self, x: Tensor) -> Tensor:
        out = (x <= self._lims[0] - 0.5) | (x > self._lims[1] - 0.5)
        cut = ng.where(out, x, self._lims[0] - 0.5)
        log_norm = ng.log(ng.abs(ng.expm1(cut))) - ng.log(ng.abs(cut))
        taylor = 0.5 * x + x ** 2 / 24.0 - x ** 4 / 2880.0
        return ng.where(out, log_norm, taylor)
