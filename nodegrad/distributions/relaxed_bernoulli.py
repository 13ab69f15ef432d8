"""The relaxed (Concrete / Gumbel-softmax) Bernoulli distribution and its logit form."""

from __future__ import annotations


from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import BinaryParams, Distribution, _shape
from .transformed_distribution import TransformedDistribution
from .transforms import SigmoidTransform
from .utils import clamp_probs


class LogitRelaxedBernoulli(BinaryParams, Distribution):
    """The logit of a relaxed Bernoulli sample: (logit U + logits) / temperature."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, temperature: Tensor | float, probs: Tensor | float | None = None,
                 logits: Tensor | float | None = None, validate_args: bool | None = None):
        self._binary(type(self).__name__, probs, logits)
        self.temperature = temperature if isinstance(temperature, Tensor) else ng.tensor(
            float(temperature), dtype=self._param.dtype, device=self._param.device)
        super().__init__(tuple(self._param.shape), validate_args=validate_args)

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        probs = clamp_probs(self.probs.expand(*shape))
        u = clamp_probs(ng.rand(shape, dtype=probs.dtype, device=probs.device,
                                generator=generator))
        return (ng.log(u) - ng.log1p(-u) + ng.log(probs) - ng.log1p(-probs)) / self.temperature

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = ng.broadcast_tensors(self.logits, value)
        diff = logits - value * self.temperature
        return ng.log(self.temperature) + diff - 2 * ng.log1p(ng.exp(diff))


class RelaxedBernoulli(TransformedDistribution):
    """A relaxed Bernoulli on (0, 1) with ``temperature`` and ``probs`` (or ``logits``):
    sigmoid of a LogitRelaxedBernoulli sample; reparameterised samples."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, temperature: Tensor | float, probs: Tensor | float | None = None,
                 logits: Tensor | float | None = None, validate_args: bool | None = None):
        base = LogitRelaxedBernoulli(temperature, probs, logits, validate_args=False)
        super().__init__(base, SigmoidTransform(), validate_args=validate_args)

    def _given_param(self, name):  # validated (and named in errors) as this class's own
        return self.base_dist.__dict__.get(name)

    @property
    def temperature(self) -> Tensor:
        return self.base_dist.temperature

    @property
    def logits(self) -> Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> Tensor:
        return self.base_dist.probs
