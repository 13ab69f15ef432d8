"""The Geometric distribution: failures before the first success."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import BinaryParams, Distribution, _concrete, _shape


class Geometric(BinaryParams, Distribution):
    """Failures before the first success with success probability ``probs`` in (0, 1] (or
    ``logits``)."""

    arg_constraints = {"probs": constraints.interval(0.0, 1.0), "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, probs: Tensor | float | None = None, logits: Tensor | float | None = None,
                 validate_args: bool | None = None):
        self._binary("Geometric", probs, logits)
        super().__init__(tuple(self._param.shape), validate_args=validate_args)
        if self._validate_args and probs is not None and _concrete():
            if not bool(ng.all(self.probs > 0)):
                raise ValueError(f"Expected parameter probs (Tensor of shape "
                                 f"{tuple(self.probs.shape)}) of distribution Geometric to be "
                                 f"positive but found invalid values:\n{self.probs}")

    @property
    def mean(self) -> Tensor:
        return 1.0 / self.probs - 1.0

    @property
    def mode(self) -> Tensor:
        return ng.zeros_like(self.probs)

    @property
    def variance(self) -> Tensor:
        return (1.0 / self.probs - 1.0) / self.probs

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        p = self.probs.detach()
        with ng.no_grad():
            u = ng.rand(shape, dtype=p.dtype, device=p.device, generator=generator)
            u = ng.clamp(u, min=float(ng.finfo(p.dtype).tiny))
            return ng.floor(ng.log(u) / ng.log1p(-p))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value, probs = ng.broadcast_tensors(value.astype(self.probs.dtype), self.probs)
        probs = ng.where((probs == 1) & (value == 0), 0.0, probs)
        return value * ng.log1p(-probs) + ng.log(self.probs)

    def entropy(self) -> Tensor:
        # H = BCE(l, p) / p = softplus(-l) + e^(-l) softplus(l), the second term written as
        # log1p(u) / u (u = e^l) for l < 0: no 0/0 or inf * 0 when p underflows (l << 0)
        logits = self.logits
        neg = logits < 0
        u = ng.exp(ng.where(neg, logits, 0.0))
        below = ng.where(u > 0, ng.log1p(u) / ng.where(u > 0, u, 1.0), 1.0)
        pos = ng.where(neg, 0.0, logits)
        above = ng.exp(-pos) * ng.softplus(pos, threshold=math.inf)
        return ng.softplus(-logits, threshold=math.inf) + ng.where(neg, below, above)
