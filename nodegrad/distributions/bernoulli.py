"""The Bernoulli distribution over {0, 1}."""

from __future__ import annotations

import math

from . import _ng as ng
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import BinaryParams, Distribution, _shape


def _bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Elementwise binary cross-entropy from logits: ``t softplus(-l) + (1 - t) softplus(l)``.

    That is ``softplus(l) - l t`` without its cancellation at large ``|l|`` (for t in {0, 1}
    each term is exact, so the value keeps its tiny tail), finite for any finite logit. The
    softplus primitive's gradient is ``sigmoid`` everywhere, so the total is
    ``sigmoid(l) - t`` at ``l = 0`` too, where a ``max(l, 0) + log1p(exp(-|l|))`` split would
    take the one-sided gradients of max and abs (probs 1/2).
    """
    return (target * ng.softplus(-logits, threshold=math.inf)
            + (1 - target) * ng.softplus(logits, threshold=math.inf))


class Bernoulli(BinaryParams, Distribution):
    """1 with probability ``probs`` (or ``sigmoid(logits)``), else 0. Give exactly one."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_enumerate_support = True

    def __init__(self, probs: Tensor | float | None = None, logits: Tensor | float | None = None,
                 validate_args: bool | None = None):
        self._binary("Bernoulli", probs, logits)
        super().__init__(tuple(self._param.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        p = self.probs
        return ng.where(p == 0.5, float("nan"), (p >= 0.5).astype(p.dtype))

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        probs = self.probs.detach()  # cached outside no_grad: it keeps its graph
        with ng.no_grad():
            return ng.bernoulli(probs.expand(*shape), generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = ng.broadcast_tensors(self.logits, value.astype(self.logits.dtype))
        return -_bce_with_logits(logits, value)

    def entropy(self) -> Tensor:
        return _bce_with_logits(self.logits, self.probs)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        p = self._param
        values = ng.arange(2, dtype=p.dtype, device=p.device).reshape(
            (2,) + (1,) * len(self.batch_shape))
        return values.expand(2, *self.batch_shape) if expand else values
