"""The Binomial distribution: successes in ``total_count`` Bernoulli trials."""

from __future__ import annotations

import math

from nodegrad.random import _gen, _sample
from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import BinaryParams, Distribution, _concrete, _shape
from .saddle_point import log_binomial


def _binomial_array(gen, n: Tensor, p: Tensor, shape: tuple):
    with gen.backend.scope():
        counts = n._data.astype("int64")
        return gen.rng.binomial(counts, p._data.astype("float64"), size=shape).astype(p._data.dtype)


class Binomial(BinaryParams, Distribution):
    """Binomial(total_count, probs) (or ``logits``): counts in {0, ..., total_count}."""

    arg_constraints = {"total_count": constraints.nonnegative_integer,
                       "probs": constraints.unit_interval, "logits": constraints.real}
    has_enumerate_support = True

    def __init__(self, total_count: Tensor | int = 1, probs: Tensor | float | None = None,
                 logits: Tensor | float | None = None, validate_args: bool | None = None):
        (self.total_count,) = self._binary("Binomial", probs, logits, total_count)
        super().__init__(tuple(self._param.shape), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.total_count)

    @property
    def mean(self) -> Tensor:
        return self.total_count * self.probs

    @property
    def mode(self) -> Tensor:
        return ng.minimum(ng.floor((self.total_count + 1) * self.probs), self.total_count)

    @property
    def variance(self) -> Tensor:
        return self.total_count * self.probs * (1 - self.probs)

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        probs = self.probs.detach()  # cached outside no_grad: it keeps its graph
        with ng.no_grad():
            n = self.total_count.detach().expand(*shape)
            p = probs.expand(*shape)
            return _sample("binomial", _binomial_array, _gen(generator, p.device), n, p, shape,
                           shape_at=2)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n, logits = self.total_count, self.logits
        value = value.astype(logits.dtype)
        # n log(1 + e^l), its gradient n sigmoid(l) at l = 0 too (no max/abs split)
        normalize = n * ng.softplus(logits, threshold=math.inf) - ng.lgamma(n + 1)
        plain = value * logits - ng.lgamma(value + 1) - ng.lgamma(n - value + 1) - normalize
        # the plain form cancels lgamma terms of size n log n (at n = 1e6 float32 kept no
        # digit): 0 < k < n by saddle point (Loader), k = 0 and k = n in closed form
        p, q = ng.sigmoid(logits), ng.sigmoid(-logits)
        n, value, p, q = ng.broadcast_tensors(n, value, p, q)
        m = n - value
        use = (value > 0) & (m > 0) & (n * p > 0) & (n * q > 0) & ng.isfinite(n)
        saddle = log_binomial(ng.where(use, value, 1.0), ng.where(use, m, 1.0),
                              ng.where(use, p, 0.5), ng.where(use, q, 0.5))
        # k = 0 or k = n: -n softplus(±logits), with the lgamma terms (exactly zero there)
        # kept for the gradient in total_count at fixed k
        lg_n, lg_k, lg_m = ng.lgamma(n + 1), ng.lgamma(value + 1), ng.lgamma(m + 1)
        edge = (-value * ng.softplus(-logits, threshold=math.inf)
                - m * ng.softplus(logits, threshold=math.inf)
                + ng.where(value == 0, (lg_n - lg_m) - lg_k, (lg_n - lg_k) - lg_m))
        return ng.where(use, saddle, ng.where(((value == 0) | (m == 0)) & (n >= 0), edge,
                                              plain))

    def _homogeneous_count(self, op: str) -> int:
        if not _concrete():
            raise NotImplementedError(f"Binomial.{op} needs concrete total_count values")
        n = int(ng.max(self.total_count))
        if int(ng.min(self.total_count)) != n:
            raise NotImplementedError(f"Inhomogeneous total count not supported by `{op}`.")
        return n

    def entropy(self) -> Tensor:
        self._homogeneous_count("entropy")
        lp = self.log_prob(self.enumerate_support(False))
        return -ng.sum(ng.exp(lp) * lp, 0)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n = self._homogeneous_count("enumerate_support")
        p = self._param
        values = ng.arange(1 + n, dtype=p.dtype, device=p.device)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand(n + 1, *self.batch_shape) if expand else values
