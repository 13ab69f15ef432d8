"""The Dirichlet distribution over the probability simplex."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import Distribution, _shape
from .beta import _clamp_st
from .gamma import standard_gamma_rsample


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
        return ((ng.xlogy(a - 1, value)).sum(-1) + ng.lgamma(a.sum(-1))
                - ng.lgamma(a).sum(-1))

    def entropy(self) -> Tensor:
        a = self.concentration
        k = a.shape[-1]
        a0 = a.sum(-1)
        return (ng.lgamma(a).sum(-1) - ng.lgamma(a0) - (k - a0) * ng.digamma(a0)
                - ((a - 1) * ng.digamma(a)).sum(-1))
