"""MixtureSameFamily: a categorical mixture of components from one distribution family."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .categorical import Categorical
from .distribution import Distribution, _shape


class MixtureSameFamily(Distribution):
    """A mixture whose weights are ``mixture_distribution`` (a Categorical over the rightmost
    batch dim of ``component_distribution``); log_prob by logsumexp over the components."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, mixture_distribution: Categorical,
                 component_distribution: Distribution, validate_args: bool | None = None):
        if not isinstance(mixture_distribution, Categorical):
            raise ValueError(f"MixtureSameFamily: mixture_distribution must be a Categorical, "
                             f"got {type(mixture_distribution).__name__}")
        if not isinstance(component_distribution, Distribution):
            raise ValueError(f"MixtureSameFamily: component_distribution must be a "
                             f"Distribution, got {type(component_distribution).__name__}")
        if not component_distribution.batch_shape:
            raise ValueError("MixtureSameFamily: component_distribution needs a batch dim for "
                             "the components, got batch_shape ()")
        mdbs = mixture_distribution.batch_shape
        cdbs = component_distribution.batch_shape[:-1]
        for s1, s2 in zip(reversed(mdbs), reversed(cdbs)):
            if s1 != 1 and s2 != 1 and s1 != s2:
                raise ValueError(f"MixtureSameFamily: mixture_distribution.batch_shape {mdbs} "
                                 f"is not compatible with component_distribution.batch_shape "
                                 f"{cdbs}")
        km = mixture_distribution.logits.shape[-1]
        kc = component_distribution.batch_shape[-1]
        if km != kc:
            raise ValueError(f"MixtureSameFamily: mixture_distribution has {km} components "
                             f"but component_distribution has {kc}")
        self._mixture_distribution = mixture_distribution
        self._component_distribution = component_distribution
        self._num_component = km
        self._event_ndims = len(component_distribution.event_shape)
        # the batch shape is that of both broadcast together (log_prob's shape), so a mixture
        # shared by a batch of components (mdbs ()) or the reverse samples to it too
        super().__init__(ng.broadcast_shapes(mdbs, cdbs), component_distribution.event_shape,
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> MixtureSameFamily:
        batch_shape = _shape(batch_shape)
        new = type(self).__new__(type(self)) if _instance is None else _instance
        new.__dict__.update(self.__dict__)
        new._component_distribution = self._component_distribution.expand(
            batch_shape + (self._num_component,))
        new._mixture_distribution = self._mixture_distribution.expand(batch_shape)
        new._batch_shape = batch_shape
        return new

    @constraints.dependent_property
    def support(self):
        return constraints.MixtureSameFamilyConstraint(self._component_distribution.support)

    @property
    def mixture_distribution(self) -> Categorical:
        return self._mixture_distribution

    @property
    def component_distribution(self) -> Distribution:
        return self._component_distribution

    def _pad(self, x: Tensor) -> Tensor:
        return ng.expand_dims(x, -1 - self._event_ndims)

    def _pad_mixture_dimensions(self, x: Tensor) -> Tensor:
        dist_batch = len(self.batch_shape)
        cat_batch = len(self._mixture_distribution.batch_shape)
        pad = 0 if cat_batch == 1 else dist_batch - cat_batch
        xs = tuple(x.shape)
        return x.reshape(xs[:-1] + (1,) * pad + xs[-1:] + (1,) * self._event_ndims)

    @property
    def mean(self) -> Tensor:
        probs = self._pad_mixture_dimensions(self._mixture_distribution.probs)
        return ng.sum(probs * self._component_distribution.mean, -1 - self._event_ndims)

    @property
    def variance(self) -> Tensor:
        probs = self._pad_mixture_dimensions(self._mixture_distribution.probs)
        comp = self._component_distribution
        mean_cond_var = ng.sum(probs * comp.variance, -1 - self._event_ndims)
        var_cond_mean = ng.sum(probs * (comp.mean - self._pad(self.mean)) ** 2,
                               -1 - self._event_ndims)
        return mean_cond_var + var_cond_mean

    def cdf(self, x: Tensor) -> Tensor:
        cdf_x = self._component_distribution.cdf(self._pad(x))
        return ng.sum(cdf_x * self._mixture_distribution.probs, -1)

    def log_prob(self, x: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(x)
        lp = self._component_distribution.log_prob(self._pad(x))
        log_mix = ng.log_softmax(self._mixture_distribution.logits, -1)
        return ng.logsumexp(lp + log_mix, -1)

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        sample_shape = _shape(sample_shape)
        with ng.no_grad():
            bs, es, k = self.batch_shape, self.event_shape, self._num_component
            gather_dim = len(sample_shape) + len(bs)
            mix = self._mixture_distribution.sample(sample_shape, generator=generator)
            comp = self._component_distribution.sample(sample_shape, generator=generator)
            # both broadcast to sample_shape + batch_shape (their batch shapes may differ)
            mdbs = self._mixture_distribution.batch_shape
            cdbs = self._component_distribution.batch_shape[:-1]
            mix = mix.reshape(sample_shape + (1,) * (len(bs) - len(mdbs)) + mdbs)
            comp = comp.reshape(sample_shape + (1,) * (len(bs) - len(cdbs)) + cdbs + (k,) + es)
            comp = comp.expand(*(sample_shape + bs + (k,) + es))
            idx = mix.reshape(tuple(mix.shape) + (1,) * (len(es) + 1))
            idx = idx.expand(*(sample_shape + bs + (1,) + es))
            return ng.squeeze(ng.take_along_axis(comp, idx, gather_dim), gather_dim)

    def __repr__(self) -> str:
        return (f"MixtureSameFamily(\n  {self._mixture_distribution!r},\n  "
                f"{self._component_distribution!r})")
