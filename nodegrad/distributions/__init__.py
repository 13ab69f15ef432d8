"""Probability distributions with PyTorch's ``torch.distributions`` API.

Samples are drawn through :mod:`nodegrad.random` (seeded by ``nodegrad.manual_seed``, or a
``generator=`` keyword; a jitted function draws afresh on each call); ``log_prob``,
``entropy``, ``rsample`` and ``kl_divergence`` are differentiable nodegrad expressions.

>>> import nodegrad as ng
>>> import nodegrad.distributions as D
>>> d = D.Normal(ng.tensor([0.0, 1.0]), ng.tensor([1.0, 2.0]))
>>> d.log_prob(ng.tensor([0.0, 1.0])).shape
(2,)
"""

from . import constraints
from .bernoulli import Bernoulli
from .beta import Beta
from .categorical import Categorical, OneHotCategorical
from .dirichlet import Dirichlet
from .distribution import Distribution
from .exponential import Exponential
from .gamma import Gamma
from .independent import Independent
from .kl import kl_divergence, register_kl
from .laplace import Laplace
from .lognormal import LogNormal
from .multivariate_normal import MultivariateNormal
from .normal import Normal
from .poisson import Poisson
from .uniform import Uniform

__all__ = ["Bernoulli", "Beta", "Categorical", "Dirichlet", "Distribution", "Exponential",
           "Gamma", "Independent", "Laplace", "LogNormal", "MultivariateNormal", "Normal",
           "OneHotCategorical",
           "Poisson", "Uniform", "constraints", "kl_divergence", "register_kl"]
