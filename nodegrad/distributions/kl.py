"""KL divergence KL(p ‖ q) between distributions, dispatched on the pair of types."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from . import _ng as ng
from nodegrad.tensor import Tensor

from .bernoulli import Bernoulli
from .beta import Beta
from .binomial import Binomial
from .categorical import Categorical, OneHotCategorical
from .cauchy import Cauchy
from .continuous_bernoulli import ContinuousBernoulli
from .dirichlet import Dirichlet
from .distribution import Distribution, _concrete, _follow_partner, _sum_rightmost
from .exp_family import ExponentialFamily
from .exponential import Exponential
from .gamma import Gamma
from .geometric import Geometric
from .gumbel import EULER, Gumbel
from .half_normal import HalfNormal
from .independent import Independent
from .laplace import Laplace
from .lognormal import LogNormal
from .lowrank_multivariate_normal import LowRankMultivariateNormal
from .multivariate_normal import MultivariateNormal, _batch_mahalanobis, _half_log_det
from .normal import Normal
from .pareto import Pareto
from .poisson import Poisson
from .transformed_distribution import TransformedDistribution
from .uniform import Uniform

__all__ = ["kl_divergence", "register_kl"]

_KL_REGISTRY: dict[tuple[type, type], Callable] = {}
_INF = float("inf")


def register_kl(type_p: type, type_q: type) -> Callable:
    """Decorator registering ``fn(p, q)`` as KL(p ‖ q) for p of ``type_p``, q of ``type_q``
    (subclasses included; the most specific registered pair wins)."""
    if not (isinstance(type_p, type) and issubclass(type_p, Distribution)
            and isinstance(type_q, type) and issubclass(type_q, Distribution)):
        raise TypeError("register_kl: expected two subclasses of Distribution")

    def decorator(fn: Callable) -> Callable:
        _KL_REGISTRY[type_p, type_q] = fn
        return fn

    return decorator


def _dispatch(tp: type, tq: type) -> Callable | None:
    """The rule for the pair, as PyTorch picks it: the registered pair most specific in p's
    type, ties broken by q's; a RuntimeWarning when the pair most specific in q's type first
    is another one (register a rule for the exact pair to settle it)."""
    matches = [(tp.__mro__.index(a), tq.__mro__.index(b), a, b)
               for a, b in _KL_REGISTRY if issubclass(tp, a) and issubclass(tq, b)]
    if not matches:
        return None
    left = min(matches, key=lambda m: (m[0], m[1]))
    right = min(matches, key=lambda m: (m[1], m[0]))
    if left is not right:
        warnings.warn(f"Ambiguous kl_divergence({tp.__name__}, {tq.__name__}). Please "
                      f"register_kl({left[2].__name__}, {right[3].__name__})", RuntimeWarning,
                      stacklevel=3)
    return _KL_REGISTRY[left[2], left[3]]


def kl_divergence(p: Distribution, q: Distribution) -> Tensor:
    """KL(p ‖ q) = E_p[log p − log q], one value per batch element (differentiable)."""
    fn = _dispatch(type(p), type(q))
    if fn is None:
        raise NotImplementedError(f"No KL(p || q) is implemented for p of type "
                                  f"{type(p).__name__} and q of type {type(q).__name__}")
    return fn(_follow_partner(p, q), _follow_partner(q, p))


@register_kl(Normal, Normal)
def _kl_normal_normal(p: Normal, q: Normal) -> Tensor:
    var_ratio = (p.scale / q.scale) ** 2
    t1 = ((p.loc - q.loc) / q.scale) ** 2
    return 0.5 * (var_ratio + t1 - 1 - ng.log(var_ratio))


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p: Bernoulli, q: Bernoulli) -> Tensor:
    t1 = p.probs * (ng.softplus(-q.logits) - ng.softplus(-p.logits))
    t1 = ng.where(p.probs == 0, 0.0, ng.where(q.probs == 0, _INF, t1))
    t2 = (1 - p.probs) * (ng.softplus(q.logits) - ng.softplus(p.logits))
    t2 = ng.where(p.probs == 1, 0.0, ng.where(q.probs == 1, _INF, t2))
    return t1 + t2


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p: Categorical, q: Categorical) -> Tensor:
    t = p.probs * (p.logits - q.logits)
    qz, pz = ng.broadcast_tensors(q.probs == 0, p.probs == 0)
    t = ng.where(pz, 0.0, ng.where(qz, _INF, t))
    return ng.sum(t, -1)


@register_kl(OneHotCategorical, OneHotCategorical)
def _kl_onehot_onehot(p: OneHotCategorical, q: OneHotCategorical) -> Tensor:
    return _kl_categorical_categorical(p._categorical, q._categorical)


@register_kl(Uniform, Uniform)
def _kl_uniform_uniform(p: Uniform, q: Uniform) -> Tensor:
    result = ng.log((q.high - q.low) / (p.high - p.low))
    return ng.where((q.low > p.low) | (q.high < p.high), _INF, result)


@register_kl(Exponential, Exponential)
def _kl_exponential_exponential(p: Exponential, q: Exponential) -> Tensor:
    rate_ratio = q.rate / p.rate
    return rate_ratio - 1 - ng.log(rate_ratio)


@register_kl(Laplace, Laplace)
def _kl_laplace_laplace(p: Laplace, q: Laplace) -> Tensor:
    scale_ratio = p.scale / q.scale
    loc_abs_diff = ng.abs(p.loc - q.loc)
    return (-ng.log(scale_ratio) + loc_abs_diff / q.scale
            + scale_ratio * ng.exp(-loc_abs_diff / p.scale) - 1)


@register_kl(Beta, Beta)
def _kl_beta_beta(p: Beta, q: Beta) -> Tensor:
    p1, p0, q1, q0 = p.concentration1, p.concentration0, q.concentration1, q.concentration0
    sum_p, sum_q = p1 + p0, q1 + q0
    t1 = ng.lgamma(q1) + ng.lgamma(q0) + ng.lgamma(sum_p)
    t2 = ng.lgamma(p1) + ng.lgamma(p0) + ng.lgamma(sum_q)
    t3 = (p1 - q1) * ng.digamma(p1)
    t4 = (p0 - q0) * ng.digamma(p0)
    t5 = (sum_q - sum_p) * ng.digamma(sum_p)
    return t1 - t2 + t3 + t4 + t5


@register_kl(Gamma, Gamma)
def _kl_gamma_gamma(p: Gamma, q: Gamma) -> Tensor:
    t1 = q.concentration * ng.log(p.rate / q.rate)
    t2 = ng.lgamma(q.concentration) - ng.lgamma(p.concentration)
    t3 = (p.concentration - q.concentration) * ng.digamma(p.concentration)
    t4 = (q.rate - p.rate) * (p.concentration / p.rate)
    return t1 + t2 + t3 + t4


@register_kl(MultivariateNormal, MultivariateNormal)
def _kl_mvn_mvn(p: MultivariateNormal, q: MultivariateNormal) -> Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError("KL-divergence between two Multivariate Normals with different event "
                         "shapes cannot be computed")
    pL, qL = p._unbroadcasted_scale_tril, q._unbroadcasted_scale_tril
    half_term1 = _half_log_det(qL) - _half_log_det(pL)
    n = p.event_shape[0]
    batch = ng.broadcast_shapes(tuple(qL.shape[:-2]), tuple(pL.shape[:-2]))
    m = ng.linalg.solve_triangular(qL.expand(*batch, n, n), pL.expand(*batch, n, n),
                                   upper=False)
    term2 = ng.sum(m * m, (-2, -1))  # tr(Σq⁻¹ Σp)
    term3 = _batch_mahalanobis(qL, q.loc - p.loc)
    return half_term1 + 0.5 * (term2 + term3 - n)


@register_kl(Independent, Independent)
def _kl_independent_independent(p: Independent, q: Independent) -> Tensor:
    if p.reinterpreted_batch_ndims != q.reinterpreted_batch_ndims:
        raise NotImplementedError("KL(Independent || Independent) needs equal "
                                  "reinterpreted_batch_ndims")
    result = kl_divergence(p.base_dist, q.base_dist)
    return _sum_rightmost(result, p.reinterpreted_batch_ndims)


@register_kl(LogNormal, LogNormal)
def _kl_lognormal_lognormal(p: LogNormal, q: LogNormal) -> Tensor:
    """exp is a bijection, so the KL of the log-normals is that of their normals."""
    return _KL_REGISTRY[Normal, Normal](p, q)


def _no_kl(p: Distribution, q: Distribution) -> Tensor:
    raise NotImplementedError(f"No KL(p || q) is implemented for p of type {type(p).__name__} "
                              f"and q of type {type(q).__name__} (their supports differ)")


register_kl(LogNormal, Normal)(_no_kl)
register_kl(Normal, LogNormal)(_no_kl)


@register_kl(Dirichlet, Dirichlet)
def _kl_dirichlet_dirichlet(p: Dirichlet, q: Dirichlet) -> Tensor:
    a, b = p.concentration, q.concentration
    sum_a = a.sum(-1)
    return (ng.lgamma(sum_a) - ng.lgamma(b.sum(-1)) - (ng.lgamma(a) - ng.lgamma(b)).sum(-1)
            + ((a - b) * (ng.digamma(a) - ng.digamma(sum_a)[..., None])).sum(-1))


# --- the families added with the transforms ----------------------------------------------------
@register_kl(TransformedDistribution, TransformedDistribution)
def _kl_transformed_transformed(p: TransformedDistribution, q: TransformedDistribution):
    """Equal bijections leave KL unchanged: the KL of the base distributions."""
    if p.transforms != q.transforms:
        raise NotImplementedError("KL(TransformedDistribution || TransformedDistribution) "
                                  "needs equal transforms")
    if p.event_shape != q.event_shape:
        raise NotImplementedError("KL(TransformedDistribution || TransformedDistribution) "
                                  "needs equal event shapes")
    return kl_divergence(p.base_dist, q.base_dist)


@register_kl(ExponentialFamily, ExponentialFamily)
def _kl_expfamily_expfamily(p: ExponentialFamily, q: ExponentialFamily) -> Tensor:
    """The Bregman divergence of the log normalizer, for two members of one family.

    Each natural parameter's term <θq - θp, ∇F(θp)> is summed over that parameter's own event
    dims (its dims past p's batch shape: none for a scalar one such as Wishart's df), so the
    terms of parameters of different ranks never sum across batch elements."""
    if type(p) is not type(q):
        raise NotImplementedError(f"No KL(p || q) is implemented for p of type "
                                  f"{type(p).__name__} and q of type {type(q).__name__}")
    p_np, q_np = list(p._natural_params), list(q._natural_params)
    lg = p._log_normalizer(*p_np)
    grads = ng.func_grad(lambda *a: ng.sum(p._log_normalizer(*a)),
                         argnums=tuple(range(len(p_np))))(*p_np)
    result = q._log_normalizer(*q_np) - lg
    n_batch = len(p.batch_shape)
    for a, b, g in zip(p_np, q_np, grads):
        result = result - _sum_rightmost((b - a) * g, max(a.ndim - n_batch, 0))
    return result


@register_kl(Binomial, Binomial)
def _kl_binomial_binomial(p: Binomial, q: Binomial) -> Tensor:
    if _concrete() and bool(ng.any(p.total_count < q.total_count)):
        raise NotImplementedError("KL between Binomials where q.total_count > p.total_count "
                                  "is not implemented")
    kl = p.total_count * (p.probs * (p.logits - q.logits) + ng.log1p(-p.probs)
                          - ng.log1p(-q.probs))
    return ng.where(p.total_count > q.total_count, _INF, kl)


@register_kl(Geometric, Geometric)
def _kl_geometric_geometric(p: Geometric, q: Geometric) -> Tensor:
    return -p.entropy() - ng.log1p(-q.probs) / p.probs - q.logits


@register_kl(Cauchy, Cauchy)
def _kl_cauchy_cauchy(p: Cauchy, q: Cauchy) -> Tensor:
    t1 = ng.log((p.scale + q.scale) ** 2 + (p.loc - q.loc) ** 2)
    return t1 - ng.log(4 * p.scale * q.scale)


@register_kl(HalfNormal, HalfNormal)
def _kl_halfnormal_halfnormal(p: HalfNormal, q: HalfNormal) -> Tensor:
    return _kl_normal_normal(p.base_dist, q.base_dist)


@register_kl(Gumbel, Gumbel)
def _kl_gumbel_gumbel(p: Gumbel, q: Gumbel) -> Tensor:
    ct1, ct2, ct3 = p.scale / q.scale, q.loc / q.scale, p.loc / q.scale
    t1 = -ng.log(ct1) - ct2 + ct3
    t2 = ct1 * EULER
    t3 = ng.exp(ct2 + ng.lgamma(1 + ct1) - ct3)
    return t1 + t2 + t3 - (1 + EULER)


@register_kl(Pareto, Pareto)
def _kl_pareto_pareto(p: Pareto, q: Pareto) -> Tensor:
    scale_ratio, alpha_ratio = p.scale / q.scale, q.alpha / p.alpha
    result = q.alpha * ng.log(scale_ratio) - ng.log(alpha_ratio) + alpha_ratio - 1
    return ng.where(p.scale < q.scale, _INF, result)


@register_kl(ContinuousBernoulli, ContinuousBernoulli)
def _kl_cb_cb(p: ContinuousBernoulli, q: ContinuousBernoulli) -> Tensor:
    t1 = p.mean * (p.logits - q.logits)
    t2 = p._cont_bern_log_norm() + ng.log1p(-p.probs)
    t3 = -q._cont_bern_log_norm() - ng.log1p(-q.probs)
    return t1 + t2 + t3


def _kl_gaussians(p, q) -> Tensor:
    """KL between two multivariate Normals (either parametrisation) through dense factors."""
    if p.event_shape != q.event_shape:
        raise ValueError("KL-divergence between two (Low Rank) Multivariate Normals with "
                         "different event shapes cannot be computed")
    n = p.event_shape[0]
    pL, qL = p.scale_tril, q.scale_tril
    batch = ng.broadcast_shapes(tuple(qL.shape[:-2]), tuple(pL.shape[:-2]))
    pL, qL = pL.expand(*batch, n, n), qL.expand(*batch, n, n)
    m = ng.linalg.solve_triangular(qL, pL, upper=False)
    term2 = ng.sum(m * m, (-2, -1))
    term3 = _batch_mahalanobis(qL, q.loc - p.loc)
    return _half_log_det(qL) - _half_log_det(pL) + 0.5 * (term2 + term3 - n)


register_kl(LowRankMultivariateNormal, LowRankMultivariateNormal)(_kl_gaussians)
register_kl(LowRankMultivariateNormal, MultivariateNormal)(_kl_gaussians)
register_kl(MultivariateNormal, LowRankMultivariateNormal)(_kl_gaussians)


# --- across families: KL(p ‖ q) = −H(p) + E_p[−log q(X)] --------------------------------------
# Each cross-entropy below is −log q's expectation written with the moments of p that it needs;
# where q has no density on part of p's support the KL is infinite.
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _infinite(x: Tensor, q: Distribution) -> Tensor:
    """inf of ``x``'s dtype over the batch shape of p (whose parameter ``x`` is) and q."""
    shape = ng.broadcast_shapes(tuple(x.shape), tuple(q.batch_shape))
    return ng.full(shape, _INF, dtype=x.dtype, device=x.device)


def _xent_normal(q: Normal, mean: Tensor, var: Tensor) -> Tensor:
    """E[−log N(X; μ, σ)] = log σ + log(2π)/2 + (Var X + (E X − μ)²) / (2σ²)."""
    return (ng.log(q.scale) + _HALF_LOG_2PI
            + (var + (mean - q.loc) ** 2) / (2 * q.scale ** 2))


def _xent_exponential(q: Exponential, mean: Tensor) -> Tensor:
    """E[−log Exp(X; r)] = −log r + r E X (X ≥ 0)."""
    return q.rate * mean - ng.log(q.rate)


def _xent_gamma(q: Gamma, mean: Tensor, mean_log: Tensor) -> Tensor:
    """E[−log Gamma(X; a, b)] = log Γ(a) − a log b − (a − 1) E log X + b E X (X > 0)."""
    a, b = q.concentration, q.rate
    return ng.lgamma(a) - a * ng.log(b) - (a - 1) * mean_log + b * mean


def _xent_gumbel(q: Gumbel, mean: Tensor, log_mgf: Tensor) -> Tensor:
    """E[−log Gumbel(X; μ, β)] = log β + E z + E e^(−z), z = (X − μ) / β; ``log_mgf`` is
    log E e^(−z), which each caller has in closed form."""
    return ng.log(q.scale) + (mean - q.loc) / q.scale + ng.exp(log_mgf)


def _xent_beta(q: Beta, mean_log: Tensor, mean_log1m: Tensor) -> Tensor:
    """E[−log Beta(X; α, β)] = log B(α, β) − (α − 1) E log X − (β − 1) E log(1 − X)."""
    a, b = q.concentration1, q.concentration0
    lbeta = ng.lgamma(a) + ng.lgamma(b) - ng.lgamma(a + b)
    return lbeta - (a - 1) * mean_log - (b - 1) * mean_log1m


def _xent_cb(q: ContinuousBernoulli, mean: Tensor) -> Tensor:
    """E[−log CB(X; λ)] = −log C(λ) − E X logit λ − log(1 − λ) (X in [0, 1])."""
    return -q._cont_bern_log_norm() - mean * q.logits - ng.log1p(-q.probs)


def _xent_pareto(q: Pareto, mean_log: Tensor) -> Tensor:
    """E[−log Pareto(X; m, α)] = −log α − α log m + (α + 1) E log X (X ≥ m)."""
    return -ng.log(q.alpha) - q.alpha * ng.log(q.scale) + (q.alpha + 1) * mean_log


def _uniform_mean_log(low: Tensor, high: Tensor) -> Tensor:
    """E log X for X ~ U(low, high) on [0, ∞): (h log h − l log l) / (h − l) − 1."""
    return (ng.xlogy(high, high) - ng.xlogy(low, low)) / (high - low) - 1


def _in_unit(p: Uniform) -> tuple[Tensor, Tensor, Tensor]:
    """(outside, low, high): whether U(low, high) leaves [0, 1], and its ends moved inside
    where it does (the masked values stay finite, and so do their gradients)."""
    outside = (p.low < 0) | (p.high > 1)
    return outside, ng.where(outside, 0.25, p.low), ng.where(outside, 0.75, p.high)


@register_kl(Poisson, Poisson)
def _kl_poisson_poisson(p: Poisson, q: Poisson) -> Tensor:
    """Σ_k p(k) (k log(λp/λq) − λp + λq) = λp log(λp/λq) − λp + λq (λp = 0: λq)."""
    return ng.xlogy(p.rate, p.rate) - ng.xlogy(p.rate, q.rate) - p.rate + q.rate


@register_kl(Bernoulli, Poisson)
def _kl_bernoulli_poisson(p: Bernoulli, q: Poisson) -> Tensor:
    """log q(x) = x log λ − λ on x in {0, 1} (log x! = 0)."""
    return -p.entropy() - ng.xlogy(p.probs, q.rate) + q.rate


@register_kl(Poisson, Bernoulli)
def _kl_poisson_bernoulli(p: Poisson, q: Bernoulli) -> Tensor:
    """Infinite: p has mass above 1; a point mass at 0 (rate 0) has −log q(0)."""
    return ng.where(p.rate == 0, -ng.log1p(-q.probs), _INF)


@register_kl(Poisson, Binomial)
def _kl_poisson_binomial(p: Poisson, q: Binomial) -> Tensor:
    """Infinite: p has mass above total_count; a point mass at 0 (rate 0) has −log q(0)."""
    return ng.where(p.rate == 0, -q.total_count * ng.log1p(-q.probs), _INF)


@register_kl(Beta, ContinuousBernoulli)
def _kl_beta_cb(p: Beta, q: ContinuousBernoulli) -> Tensor:
    return -p.entropy() + _xent_cb(q, p.mean)


@register_kl(Beta, Exponential)
def _kl_beta_exponential(p: Beta, q: Exponential) -> Tensor:
    return -p.entropy() + _xent_exponential(q, p.mean)


@register_kl(Beta, Gamma)
def _kl_beta_gamma(p: Beta, q: Gamma) -> Tensor:
    a, b = p.concentration1, p.concentration0
    mean_log = ng.digamma(a) - ng.digamma(a + b)
    return -p.entropy() + _xent_gamma(q, p.mean, mean_log)


@register_kl(Beta, Normal)
def _kl_beta_normal(p: Beta, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


def _kl_unit_uniform(p, q: Uniform) -> Tensor:
    """KL from a distribution on [0, 1] to a uniform: finite only where q covers [0, 1]."""
    result = -p.entropy() + ng.log(q.high - q.low)
    return ng.where((q.low > 0) | (q.high < 1), _INF, result)


@register_kl(Beta, Uniform)
def _kl_beta_uniform(p: Beta, q: Uniform) -> Tensor:
    return _kl_unit_uniform(p, q)


@register_kl(ContinuousBernoulli, Exponential)
def _kl_cb_exponential(p: ContinuousBernoulli, q: Exponential) -> Tensor:
    return -p.entropy() + _xent_exponential(q, p.mean)


@register_kl(ContinuousBernoulli, Normal)
def _kl_cb_normal(p: ContinuousBernoulli, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


@register_kl(ContinuousBernoulli, Uniform)
def _kl_cb_uniform(p: ContinuousBernoulli, q: Uniform) -> Tensor:
    """q = U(0, 1) included: finite (PyTorch's is inf)."""
    return _kl_unit_uniform(p, q)


@register_kl(Exponential, Gamma)
def _kl_exponential_gamma(p: Exponential, q: Gamma) -> Tensor:
    mean_log = -EULER - ng.log(p.rate)
    return -p.entropy() + _xent_gamma(q, p.mean, mean_log)


@register_kl(Exponential, Gumbel)
def _kl_exponential_gumbel(p: Exponential, q: Gumbel) -> Tensor:
    # E e^(−X/β) = r / (r + 1/β)
    log_mgf = q.loc / q.scale - ng.log1p(1 / (p.rate * q.scale))
    return -p.entropy() + _xent_gumbel(q, p.mean, log_mgf)


@register_kl(Exponential, Normal)
def _kl_exponential_normal(p: Exponential, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


@register_kl(Gamma, Exponential)
def _kl_gamma_exponential(p: Gamma, q: Exponential) -> Tensor:
    return -p.entropy() + _xent_exponential(q, p.mean)


@register_kl(Gamma, Gumbel)
def _kl_gamma_gumbel(p: Gamma, q: Gumbel) -> Tensor:
    # E e^(−X/β) = (1 + 1/(bβ))^(−a)
    log_mgf = q.loc / q.scale - p.concentration * ng.log1p(1 / (p.rate * q.scale))
    return -p.entropy() + _xent_gumbel(q, p.mean, log_mgf)


@register_kl(Gamma, Normal)
def _kl_gamma_normal(p: Gamma, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


@register_kl(Gumbel, Normal)
def _kl_gumbel_normal(p: Gumbel, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


@register_kl(Laplace, Normal)
def _kl_laplace_normal(p: Laplace, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


@register_kl(Normal, Gumbel)
def _kl_normal_gumbel(p: Normal, q: Gumbel) -> Tensor:
    # E e^(−(X − μq)/β) = exp(−(μ − μq)/β + σ²/(2β²))
    log_mgf = -(p.loc - q.loc) / q.scale + 0.5 * (p.scale / q.scale) ** 2
    return -p.entropy() + _xent_gumbel(q, p.loc, log_mgf)


@register_kl(Normal, Laplace)
def _kl_normal_laplace(p: Normal, q: Laplace) -> Tensor:
    # E|X − m| for X ~ N(μ, σ), d = μ − m: σ √(2/π) exp(−d²/(2σ²)) + d erf(d / (σ√2))
    d = p.loc - q.loc
    mean_abs = (p.scale * math.sqrt(2 / math.pi) * ng.exp(-0.5 * (d / p.scale) ** 2)
                + d * ng.erf(d / (p.scale * math.sqrt(2))))
    return -p.entropy() + ng.log(2 * q.scale) + mean_abs / q.scale


def _pareto_alpha(p: Pareto, need: float) -> tuple[Tensor, Tensor]:
    """(infinite, alpha): where ``alpha <= need`` the moment the KL needs is infinite, and so
    is the KL; there alpha is replaced by ``need + 1``, so the masked values (and their
    gradients) stay finite."""
    infinite = p.alpha <= need
    return infinite, ng.where(infinite, need + 1.0, p.alpha)


def _pareto_mean(m: Tensor, a: Tensor) -> Tensor:
    return a * m / (a - 1)


@register_kl(Pareto, Exponential)
def _kl_pareto_exponential(p: Pareto, q: Exponential) -> Tensor:
    infinite, a = _pareto_alpha(p, 1.0)
    result = -p.entropy() + _xent_exponential(q, _pareto_mean(p.scale, a))
    return ng.where(infinite, _INF, result)


@register_kl(Pareto, Gamma)
def _kl_pareto_gamma(p: Pareto, q: Gamma) -> Tensor:
    infinite, a = _pareto_alpha(p, 1.0)
    mean_log = ng.log(p.scale) + 1 / p.alpha
    result = -p.entropy() + _xent_gamma(q, _pareto_mean(p.scale, a), mean_log)
    return ng.where(infinite, _INF, result)


@register_kl(Pareto, Normal)
def _kl_pareto_normal(p: Pareto, q: Normal) -> Tensor:
    infinite, a = _pareto_alpha(p, 2.0)
    m = p.scale
    var = m ** 2 * a / ((a - 1) ** 2 * (a - 2))
    result = -p.entropy() + _xent_normal(q, _pareto_mean(m, a), var)
    return ng.where(infinite, _INF, result)


@register_kl(Uniform, Beta)
def _kl_uniform_beta(p: Uniform, q: Beta) -> Tensor:
    outside, lo, hi = _in_unit(p)
    mean_log = _uniform_mean_log(lo, hi)
    mean_log1m = _uniform_mean_log(1 - hi, 1 - lo)
    result = -ng.log(hi - lo) + _xent_beta(q, mean_log, mean_log1m)
    return ng.where(outside, _INF, result)


@register_kl(Uniform, ContinuousBernoulli)
def _kl_uniform_cb(p: Uniform, q: ContinuousBernoulli) -> Tensor:
    outside, lo, hi = _in_unit(p)
    result = -ng.log(hi - lo) + _xent_cb(q, (lo + hi) / 2)
    return ng.where(outside, _INF, result)


@register_kl(Uniform, Exponential)
def _kl_uniform_exponential(p: Uniform, q: Exponential) -> Tensor:
    result = -p.entropy() + _xent_exponential(q, p.mean)
    return ng.where(p.low < 0, _INF, result)


@register_kl(Uniform, Gamma)
def _kl_uniform_gamma(p: Uniform, q: Gamma) -> Tensor:
    outside = p.low < 0
    lo = ng.where(outside, 0.0, p.low)
    hi = ng.where(outside, 1.0, p.high)
    result = -ng.log(hi - lo) + _xent_gamma(q, (lo + hi) / 2, _uniform_mean_log(lo, hi))
    return ng.where(outside, _INF, result)


@register_kl(Uniform, Gumbel)
def _kl_uniform_gumbel(p: Uniform, q: Gumbel) -> Tensor:
    # E e^(−(X − μ)/β) = β (e^(−(l − μ)/β) − e^(−(h − μ)/β)) / (h − l)
    width = p.high - p.low
    log_mgf = (ng.log(q.scale / width) - (p.low - q.loc) / q.scale
               + ng.log(-ng.expm1(-width / q.scale)))
    return -p.entropy() + _xent_gumbel(q, p.mean, log_mgf)


@register_kl(Uniform, Normal)
def _kl_uniform_normal(p: Uniform, q: Normal) -> Tensor:
    return -p.entropy() + _xent_normal(q, p.mean, p.variance)


@register_kl(Uniform, Pareto)
def _kl_uniform_pareto(p: Uniform, q: Pareto) -> Tensor:
    outside = p.low < q.scale
    lo = ng.where(outside, q.scale, p.low)
    hi = ng.where(outside, q.scale + 1.0, p.high)
    result = -ng.log(hi - lo) + _xent_pareto(q, _uniform_mean_log(lo, hi))
    return ng.where(outside, _INF, result)


def _support_mismatch(param: str) -> Callable:
    """KL(p ‖ q) = inf: p puts mass where q has no density (``param``: p's tensor to shape
    the result after)."""
    def kl(p: Distribution, q: Distribution) -> Tensor:
        return _infinite(getattr(p, param), q)
    return kl


for _p, _param, _qs in [
        (Beta, "concentration1", (Pareto,)),
        (ContinuousBernoulli, "probs", (Pareto,)),
        (Exponential, "rate", (Beta, ContinuousBernoulli, Pareto, Uniform)),
        (Gamma, "concentration", (Beta, ContinuousBernoulli, Pareto, Uniform)),
        (Gumbel, "loc", (Beta, ContinuousBernoulli, Exponential, Gamma, Pareto, Uniform)),
        (Laplace, "loc", (Beta, ContinuousBernoulli, Exponential, Gamma, Pareto, Uniform)),
        (Normal, "loc", (Beta, ContinuousBernoulli, Exponential, Gamma, Pareto, Uniform)),
        (Pareto, "scale", (Beta, ContinuousBernoulli, Uniform))]:
    for _q in _qs:
        register_kl(_p, _q)(_support_mismatch(_param))
