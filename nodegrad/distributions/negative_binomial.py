"""The negative binomial distribution: successes before ``total_count`` failures."""

from __future__ import annotations


from nodegrad.random import _gen, _sample
from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import BinaryParams, Distribution
from .gamma import Gamma
from .poisson import _poisson_array
from .saddle_point import log_binomial


class NegativeBinomial(BinaryParams, Distribution):
    """Successes (each with probability ``probs``) before ``total_count`` failures; sampled
    as a Gamma-Poisson mixture, as PyTorch does."""

    arg_constraints = {"total_count": constraints.greater_than_eq(0),
                       "probs": constraints.half_open_interval(0.0, 1.0),
                       "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, total_count: Tensor | float, probs: Tensor | float | None = None,
                 logits: Tensor | float | None = None, validate_args: bool | None = None):
        (self.total_count,) = self._binary("NegativeBinomial", probs, logits, total_count)
        super().__init__(tuple(self._param.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.total_count * ng.exp(self.logits)

    @property
    def mode(self) -> Tensor:
        return ng.clamp(ng.floor((self.total_count - 1) * ng.exp(self.logits)), min=0.0)

    @property
    def variance(self) -> Tensor:
        return self.mean / ng.sigmoid(-self.logits)

    @property
    def _gamma(self) -> Gamma:
        return Gamma(self.total_count, ng.exp(-self.logits), validate_args=False)

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        gamma = self._gamma  # built outside no_grad: cached logits keep their graph
        with ng.no_grad():
            rate = gamma.sample(sample_shape, generator=generator)
            return _sample("negative_binomial", _poisson_array, _gen(generator, rate.device),
                           rate, tuple(rate.shape), shape_at=1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n, logits = self.total_count, self.logits
        value = value.astype(logits.dtype)
        logsig = ng.nn.functional.logsigmoid
        unnormalized = n * logsig(-logits) + value * logsig(logits)
        norm = -ng.lgamma(n + value) + ng.lgamma(1.0 + value) + ng.lgamma(n)
        norm = ng.where(n + value == 0.0, 0.0, norm)
        plain = unnormalized - norm
        # for k > 0, r / (r + k) Binomial(k; r + k, p) by saddle point: the plain form cancels
        # lgamma terms of size (r + k) log(r + k) (float32 kept no digit at r = k = 1e6)
        p, q = ng.sigmoid(logits), ng.sigmoid(-logits)
        n, value, p, q = ng.broadcast_tensors(n, value, p, q)
        use = ((value > 0) & (n > 0) & ((n + value) * p > 0) & ((n + value) * q > 0)
               & ng.isfinite(n + value))
        ks, rs = ng.where(use, value, 1.0), ng.where(use, n, 1.0)
        saddle = (ng.log(rs / (rs + ks))
                  + log_binomial(ks, rs, ng.where(use, p, 0.5), ng.where(use, q, 0.5)))
        return ng.where(use, saddle, plain)
