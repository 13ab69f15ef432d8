"""Probability distributions with PyTorch's ``torch.distributions`` API.

Samples are drawn through :mod:`nodegrad.random` (seeded by ``nodegrad.manual_seed``, or a
``generator=`` keyword; a jitted function draws afresh on each call); ``log_prob``,
``entropy``, ``rsample`` and ``kl_divergence`` are differentiable nodegrad expressions.
Transforms (:mod:`.transforms`) push distributions forward (``TransformedDistribution``) and
map unconstrained values onto constraints (``biject_to``, ``transform_to``).

>>> import nodegrad as ng
>>> import nodegrad.distributions as D
>>> d = D.Normal(ng.tensor([0.0, 1.0]), ng.tensor([1.0, 2.0]))
>>> d.log_prob(ng.tensor([0.0, 1.0])).shape
(2,)
"""

# every submodule PyTorch's package holds as an attribute (``log_normal`` and
# ``one_hot_categorical`` re-export classes defined elsewhere, so nothing else imports them)
from . import (  # noqa: F401
    bernoulli, beta, binomial, categorical, cauchy, chi2, constraint_registry, constraints,
    continuous_bernoulli, dirichlet, distribution, exp_family, exponential, fishersnedecor, gamma,
    generalized_pareto, geometric, gumbel, half_cauchy, half_normal, independent, inverse_gamma,
    kl, kumaraswamy, laplace, lkj_cholesky, log_normal, logistic_normal,
    lowrank_multivariate_normal, mixture_same_family, multinomial, multivariate_normal,
    negative_binomial, normal, one_hot_categorical, pareto, poisson, relaxed_bernoulli,
    relaxed_categorical, studentT, transformed_distribution, transforms, uniform, utils,
    von_mises, weibull, wishart)
from .bernoulli import Bernoulli
from .beta import Beta
from .binomial import Binomial
from .categorical import Categorical, OneHotCategorical, OneHotCategoricalStraightThrough
from .cauchy import Cauchy
from .chi2 import Chi2
from .constraint_registry import biject_to, transform_to
from .continuous_bernoulli import ContinuousBernoulli
from .dirichlet import Dirichlet
from .distribution import Distribution
from .exp_family import ExponentialFamily
from .exponential import Exponential
from .fishersnedecor import FisherSnedecor
from .gamma import Gamma
from .generalized_pareto import GeneralizedPareto
from .geometric import Geometric
from .gumbel import Gumbel
from .half_cauchy import HalfCauchy
from .half_normal import HalfNormal
from .independent import Independent
from .inverse_gamma import InverseGamma
from .kl import kl_divergence, register_kl
from .kumaraswamy import Kumaraswamy
from .laplace import Laplace
from .lkj_cholesky import LKJCholesky
from .logistic_normal import LogisticNormal
from .lognormal import LogNormal
from .lowrank_multivariate_normal import LowRankMultivariateNormal
from .mixture_same_family import MixtureSameFamily
from .multinomial import Multinomial
from .multivariate_normal import MultivariateNormal
from .negative_binomial import NegativeBinomial
from .normal import Normal
from .pareto import Pareto
from .poisson import Poisson
from .relaxed_bernoulli import LogitRelaxedBernoulli, RelaxedBernoulli
from .relaxed_categorical import ExpRelaxedCategorical, RelaxedOneHotCategorical
from .studentT import StudentT
from .transformed_distribution import TransformedDistribution
from .transforms import (AbsTransform, AffineTransform, CatTransform, ComposeTransform,
                         CorrCholeskyTransform, CumulativeDistributionTransform, ExpTransform,
                         IndependentTransform, LowerCholeskyTransform, PositiveDefiniteTransform,
                         PowerTransform, ReshapeTransform, SigmoidTransform, SoftmaxTransform,
                         SoftplusTransform, StackTransform, StickBreakingTransform,
                         TanhTransform, Transform, identity_transform)
from .uniform import Uniform
from .von_mises import VonMises
from .weibull import Weibull
from .wishart import Wishart

__all__ = ["AbsTransform", "AffineTransform", "Bernoulli", "Beta", "Binomial", "CatTransform",
           "Categorical", "Cauchy", "Chi2", "ComposeTransform", "ContinuousBernoulli",
           "CorrCholeskyTransform", "CumulativeDistributionTransform", "Dirichlet", "Distribution",
           "ExpRelaxedCategorical", "ExpTransform", "Exponential", "ExponentialFamily",
           "FisherSnedecor", "Gamma", "GeneralizedPareto", "Geometric", "Gumbel", "HalfCauchy",
           "HalfNormal", "Independent", "IndependentTransform", "InverseGamma", "Kumaraswamy",
           "LKJCholesky", "Laplace", "LogNormal", "LogisticNormal", "LogitRelaxedBernoulli",
           "LowRankMultivariateNormal", "LowerCholeskyTransform", "MixtureSameFamily",
           "Multinomial", "MultivariateNormal", "NegativeBinomial", "Normal", "OneHotCategorical",
           "OneHotCategoricalStraightThrough", "Pareto", "Poisson", "PositiveDefiniteTransform",
           "PowerTransform", "RelaxedBernoulli", "RelaxedOneHotCategorical", "ReshapeTransform",
           "SigmoidTransform", "SoftmaxTransform", "SoftplusTransform", "StackTransform",
           "StickBreakingTransform", "StudentT", "TanhTransform", "Transform",
           "TransformedDistribution", "Uniform", "VonMises", "Weibull", "Wishart", "biject_to",
           "constraints", "identity_transform", "kl_divergence", "register_kl", "transform_to",
           "transforms"]
