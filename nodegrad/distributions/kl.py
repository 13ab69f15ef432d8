"""KL divergence KL(p ‖ q) between distributions, dispatched on the pair of types."""

from __future__ import annotations

from collections.abc import Callable

from . import _ng as ng
from nodegrad.tensor import Tensor

from .bernoulli import Bernoulli
from .beta import Beta
from .categorical import Categorical, OneHotCategorical
from .dirichlet import Dirichlet
from .distribution import Distribution, _sum_rightmost
from .exponential import Exponential
from .gamma import Gamma
from .independent import Independent
from .laplace import Laplace
from .lognormal import LogNormal
from .multivariate_normal import MultivariateNormal, _batch_mahalanobis, _half_log_det
from .normal import Normal
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
    matches = [(tp.__mro__.index(a), tq.__mro__.index(b), fn)
               for (a, b), fn in _KL_REGISTRY.items() if issubclass(tp, a) and issubclass(tq, b)]
    return min(matches, key=lambda m: (m[0] + m[1], m[0]))[2] if matches else None


def kl_divergence(p: Distribution, q: Distribution) -> Tensor:
    """KL(p ‖ q) = E_p[log p − log q], one value per batch element (differentiable)."""
    fn = _dispatch(type(p), type(q))
    if fn is None:
        raise NotImplementedError(f"No KL(p || q) is implemented for p of type "
                                  f"{type(p).__name__} and q of type {type(q).__name__}")
    return fn(p, q)


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


register_kl(LogNormal, Normal)(_no_kl)  # a subclass of Normal, on another support
register_kl(Normal, LogNormal)(_no_kl)


@register_kl(Dirichlet, Dirichlet)
def _kl_dirichlet_dirichlet(p: Dirichlet, q: Dirichlet) -> Tensor:
    a, b = p.concentration, q.concentration
    sum_a = a.sum(-1)
    return (ng.lgamma(sum_a) - ng.lgamma(b.sum(-1)) - (ng.lgamma(a) - ng.lgamma(b)).sum(-1)
            + ((a - b) * (ng.digamma(a) - ng.digamma(sum_a)[..., None])).sum(-1))
