"""The Categorical distribution over {0, ..., K-1} and its one-hot form."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import Distribution, _shape, broadcast_all
from .utils import lazy_property, logits_to_probs, probs_to_logits


class Categorical(Distribution):
    """Category indices with (unnormalised) ``probs`` or ``logits`` over the last dim."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.independent(
        constraints.real, 1)}
    has_enumerate_support = True
    _param_event_dims = {"probs": 1, "logits": 1}

    def __init__(self, probs: Tensor | None = None, logits: Tensor | None = None,
                 validate_args: bool | None = None):
        if (probs is None) == (logits is None):
            raise ValueError(f"{type(self).__name__}: either `probs` or `logits` must be "
                             "specified, but not both.")
        if probs is not None:
            (probs,) = broadcast_all(probs)
            if probs.ndim < 1:
                raise ValueError("`probs` parameter must be at least one-dimensional.")
            self.probs = probs / ng.sum(probs, -1, keepdims=True)
            self._param = self.probs
        else:
            (logits,) = broadcast_all(logits)
            if logits.ndim < 1:
                raise ValueError("`logits` parameter must be at least one-dimensional.")
            self.logits = ng.log_softmax(logits, -1)  # normalised: logsumexp = 0
            self._param = self.logits
        self._num_events = self._param.shape[-1]
        super().__init__(tuple(self._param.shape[:-1]), validate_args=validate_args)

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits)

    def expand(self, batch_shape, _instance=None) -> Categorical:
        new = super().expand(batch_shape, _instance)
        new._param = new.__dict__["probs" if "probs" in self.__dict__ else "logits"]
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self._num_events - 1)

    @property
    def param_shape(self) -> tuple:
        return tuple(self._param.shape)

    @property
    def mean(self) -> Tensor:
        p = self._param
        return ng.full(self.batch_shape, float("nan"), dtype=p.dtype, device=p.device)

    @property
    def mode(self) -> Tensor:
        return ng.argmax(self.probs, -1)

    @property
    def variance(self) -> Tensor:
        return self.mean

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        sample_shape = _shape(sample_shape)
        n = 1
        for s in sample_shape:
            n *= s
        probs = self.probs  # computed (and cached) outside no_grad: it keeps its graph
        with ng.no_grad():
            probs_2d = probs.detach().reshape(-1, self._num_events)
            if n == 0 or probs_2d.shape[0] == 0:
                return ng.zeros(self._extended_shape(sample_shape), dtype=ng.int64,
                                device=probs_2d.device)
            samples_2d = ng.multinomial(probs_2d, n, True, generator=generator).mT
            return samples_2d.reshape(self._extended_shape(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = value.astype(ng.int64)[..., None]
        value, log_pmf = ng.broadcast_tensors(value, self.logits)
        return ng.gather(log_pmf, -1, value[..., :1])[..., 0]

    def entropy(self) -> Tensor:
        logits = ng.clamp(self.logits, min=float(ng.finfo(self.logits.dtype).min))
        return -ng.sum(logits * self.probs, -1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = ng.arange(self._num_events, dtype=ng.int64, device=self._param.device)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand(self._num_events, *self.batch_shape) if expand else values


class OverCategorical(Distribution):
    """A distribution built over a Categorical (``self._categorical``: OneHotCategorical,
    Multinomial, the relaxed categoricals): its ``probs``, ``logits``, ``param_shape``, and an
    ``expand`` that expands the Categorical."""

    def expand(self, batch_shape, _instance=None):
        new = type(self).__new__(type(self)) if _instance is None else _instance
        new.__dict__.update(self.__dict__)
        new._categorical = self._categorical.expand(batch_shape)
        new._batch_shape = _shape(batch_shape)
        return new

    @property
    def probs(self) -> Tensor:
        return self._categorical.probs

    @property
    def logits(self) -> Tensor:
        return self._categorical.logits

    @property
    def param_shape(self) -> tuple:
        return self._categorical.param_shape


class OneHotCategorical(OverCategorical):
    """Categorical with one-hot samples: events are vectors of length K."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.independent(
        constraints.real, 1)}
    support = constraints.one_hot
    has_enumerate_support = True

    def __init__(self, probs: Tensor | None = None, logits: Tensor | None = None,
                 validate_args: bool | None = None):
        self._categorical = Categorical(probs, logits, validate_args=validate_args)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=False)
        self._validate_args = self._categorical._validate_args

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        p = self.probs
        return ng.nn.functional.one_hot(ng.argmax(p, -1), p.shape[-1]).astype(p.dtype)

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        idx = self._categorical.sample(sample_shape, generator=generator)
        p = self.probs
        return ng.nn.functional.one_hot(idx, p.shape[-1]).astype(p.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self._categorical.log_prob(ng.argmax(value, -1))

    def entropy(self) -> Tensor:
        return self._categorical.entropy()

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n = self.event_shape[0]
        p = self.probs
        values = ng.eye(n, dtype=p.dtype, device=p.device)
        values = values.reshape((n,) + (1,) * len(self.batch_shape) + (n,))
        return values.expand(n, *self.batch_shape, n) if expand else values


class OneHotCategoricalStraightThrough(OneHotCategorical):
    """OneHotCategorical whose ``rsample`` passes the straight-through gradient: the one-hot
    sample's value, with the gradient of ``probs`` (Bengio et al., 2013)."""

    has_rsample = True

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        samples = self.sample(sample_shape, generator=generator)
        probs = self._categorical.probs
        return samples + (probs - probs.detach())
