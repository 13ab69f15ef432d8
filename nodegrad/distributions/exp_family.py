"""ExponentialFamily: distributions p(x) = h(x) exp(<t(x), θ> - F(θ)), whose entropy and KL
follow from the log normalizer F by differentiation (Bregman divergence)."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from .distribution import Distribution


class ExponentialFamily(Distribution):
    """Base class: subclasses give ``_natural_params`` (θ), ``_log_normalizer(*θ)`` (F) and
    ``_mean_carrier_measure`` (E[log h(x)]); ``entropy`` is then F(θ) - <θ, ∇F(θ)> - E[log h]."""

    @property
    def _natural_params(self) -> tuple[Tensor, ...]:
        raise NotImplementedError(f"{type(self).__name__} does not give _natural_params")

    def _log_normalizer(self, *natural_params: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not give _log_normalizer")

    @property
    def _mean_carrier_measure(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not give _mean_carrier_measure")

    def entropy(self) -> Tensor:
        nparams = list(self._natural_params)
        lg = self._log_normalizer(*nparams)
        grads = ng.func_grad(lambda *p: ng.sum(self._log_normalizer(*p)),
                             argnums=tuple(range(len(nparams))))(*nparams)
        result = lg - self._mean_carrier_measure
        for p, g in zip(nparams, grads):
            result = result - ng.sum((p * g).reshape(self._batch_shape + (-1,)), -1)
        return result
