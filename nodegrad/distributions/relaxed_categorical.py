"""The relaxed one-hot categorical (Concrete / Gumbel-softmax) distribution."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .categorical import Categorical, OverCategorical
from .distribution import _shape
from .transformed_distribution import TransformedDistribution
from .transforms import ExpTransform
from .utils import clamp_probs


class ExpRelaxedCategorical(OverCategorical):
    """The log of a relaxed one-hot categorical sample: log_softmax((logits + Gumbel noise) /
    temperature)."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, temperature: Tensor | float, probs: Tensor | None = None,
                 logits: Tensor | None = None, validate_args: bool | None = None):
        self._categorical = Categorical(probs, logits, validate_args=validate_args)
        p = self._categorical._param
        self.temperature = temperature if isinstance(temperature, Tensor) else ng.tensor(
            float(temperature), dtype=p.dtype, device=p.device)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=False)
        self._validate_args = self._categorical._validate_args

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        logits = self.logits
        u = clamp_probs(ng.rand(shape, dtype=logits.dtype, device=logits.device,
                                generator=generator))
        gumbels = -ng.log(-ng.log(u))
        scores = (logits + gumbels) / self.temperature
        return scores - ng.logsumexp(scores, -1, keepdims=True)

    def log_prob(self, value: Tensor) -> Tensor:
        k = self._categorical._num_events
        if self._validate_args:
            self._validate_sample(value)
        logits, value = ng.broadcast_tensors(self.logits, value)
        t = self.temperature
        log_scale = math.lgamma(k) + (k - 1) * ng.log(t)
        score = logits - value * t
        score = ng.sum(score - ng.logsumexp(score, -1, keepdims=True), -1)
        return score + log_scale


class RelaxedOneHotCategorical(TransformedDistribution):
    """A relaxed one-hot categorical on the simplex with ``temperature`` and ``probs`` (or
    ``logits``): exp of an ExpRelaxedCategorical sample; reparameterised samples."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, temperature: Tensor | float, probs: Tensor | None = None,
                 logits: Tensor | None = None, validate_args: bool | None = None):
        base = ExpRelaxedCategorical(temperature, probs, logits, validate_args=validate_args)
        super().__init__(base, ExpTransform(), validate_args=validate_args)

    def _given_param(self, name):  # validated by the base's Categorical
        return None

    @property
    def temperature(self) -> Tensor:
        return self.base_dist.temperature

    @property
    def logits(self) -> Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> Tensor:
        return self.base_dist.probs
