"""The Multinomial distribution: category counts of ``total_count`` draws."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .binomial import Binomial
from .categorical import Categorical, OverCategorical
from .distribution import _shape


class Multinomial(OverCategorical):
    """Counts over the last dim of ``probs``/``logits`` after ``total_count`` (an int)
    categorical draws; ``log_prob`` accepts any total (PyTorch's convention)."""

    arg_constraints = {"probs": constraints.simplex,
                       "logits": constraints.independent(constraints.real, 1)}

    def __init__(self, total_count: int = 1, probs: Tensor | None = None,
                 logits: Tensor | None = None, validate_args: bool | None = None):
        if not isinstance(total_count, int) or isinstance(total_count, bool):
            raise NotImplementedError(f"Multinomial: inhomogeneous total_count is not "
                                      f"supported; expected an int, got "
                                      f"{type(total_count).__name__}")
        self.total_count = total_count
        self._categorical = Categorical(probs=probs, logits=logits, validate_args=validate_args)
        # validated by the default setting whatever ``validate_args`` says, as PyTorch's inner
        # Binomial is: a negative total_count raises unless validation is off by default
        self._binomial = Binomial(total_count=total_count, probs=self.probs)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=False)
        self._validate_args = self._categorical._validate_args

    def expand(self, batch_shape, _instance=None) -> Multinomial:
        batch_shape = _shape(batch_shape)
        new = type(self).__new__(type(self)) if _instance is None else _instance
        new.__dict__.update(self.__dict__)
        new._categorical = self._categorical.expand(batch_shape)
        new._binomial = Binomial(self.total_count, probs=new._categorical.probs,
                                 validate_args=False)
        new._batch_shape = batch_shape
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.multinomial(self.total_count)

    @property
    def mean(self) -> Tensor:
        return self.probs * self.total_count

    @property
    def variance(self) -> Tensor:
        return self.total_count * self.probs * (1 - self.probs)

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        sample_shape = _shape(sample_shape)
        idx = self._categorical.sample((self.total_count,) + sample_shape, generator=generator)
        with ng.no_grad():
            # counts by scatter-add of the draws (a one-hot of them held total_count x the
            # sample x the categories: 40x slower at 1000 draws over 200 categories)
            idx = ng.moveaxis(idx, 0, -1)
            dtype, device = self.probs.dtype, self.probs.device
            counts = ng.zeros(self._extended_shape(sample_shape), dtype=dtype, device=device)
            return ng.scatter_add(counts, -1, idx, ng.ones(idx.shape, dtype=dtype,
                                                          device=device))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = ng.broadcast_tensors(self.logits, value.astype(self.logits.dtype))
        logits = ng.where((value == 0) & (logits == float("-inf")), 0.0, logits)
        return (ng.lgamma(ng.sum(value, -1) + 1) - ng.sum(ng.lgamma(value + 1), -1)
                + ng.sum(logits * value, -1))

    def entropy(self) -> Tensor:
        n = float(self.total_count)
        term1 = n * self._categorical.entropy() - ng.lgamma(ng.tensor(n + 1,
                                                                      dtype=self.probs.dtype))
        support = self._binomial.enumerate_support(expand=False)[1:]
        binomial_probs = ng.exp(self._binomial.log_prob(support))
        weights = ng.lgamma(support + 1)
        return term1 + ng.sum(binomial_probs * weights, (0, -1))
