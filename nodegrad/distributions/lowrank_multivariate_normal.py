"""The multivariate Normal with a low-rank plus diagonal covariance W Wᵀ + diag(D)."""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import Distribution, _shape
from .multivariate_normal import _batch_mahalanobis


def _batch_capacitance_tril(W: Tensor, D: Tensor) -> Tensor:
    """Cholesky factor of the capacitance matrix I + Wᵀ D⁻¹ W (m x m, cheap for small rank)."""
    m = W.shape[-1]
    K = (W.mT / D[..., None, :]) @ W
    return ng.linalg.cholesky(K + ng.eye(m, dtype=W.dtype, device=W.device))


def _batch_lowrank_logdet(W: Tensor, D: Tensor, cap_tril: Tensor) -> Tensor:
    """log det(W Wᵀ + D) by the matrix determinant lemma."""
    return 2 * ng.sum(ng.log(ng.diagonal(cap_tril, 0, -2, -1)), -1) + ng.sum(ng.log(D), -1)


def _batch_lowrank_mahalanobis(W: Tensor, D: Tensor, x: Tensor, cap_tril: Tensor) -> Tensor:
    """xᵀ (W Wᵀ + D)⁻¹ x by the Woodbury identity."""
    Wt_Dinv = W.mT / D[..., None, :]
    Wt_Dinv_x = ng.matmul(Wt_Dinv, x[..., None])[..., 0]
    return ng.sum(x ** 2 / D, -1) - _batch_mahalanobis(cap_tril, Wt_Dinv_x)


class LowRankMultivariateNormal(Distribution):
    """Normal over vectors with mean ``loc`` and covariance ``cov_factor @ cov_factor.mT +
    diag(cov_diag)``; log_prob and entropy cost O(n m²) by Woodbury and the determinant lemma."""

    arg_constraints = {"loc": constraints.real_vector,
                       "cov_factor": constraints.independent(constraints.real, 2),
                       "cov_diag": constraints.independent(constraints.positive, 1)}
    support = constraints.real_vector
    has_rsample = True
    _param_event_dims = {"loc": 1, "cov_factor": 2, "cov_diag": 1}

    def __init__(self, loc: Tensor, cov_factor: Tensor, cov_diag: Tensor,
                 validate_args: bool | None = None):
        if loc.ndim < 1:
            raise ValueError(f"LowRankMultivariateNormal: loc must be at least "
                             f"one-dimensional, got shape {tuple(loc.shape)}")
        n = loc.shape[-1]
        if cov_factor.ndim < 2 or cov_factor.shape[-2] != n:
            raise ValueError(f"LowRankMultivariateNormal: cov_factor must be a batch of "
                             f"matrices with shape {n} x m, got shape {tuple(cov_factor.shape)}")
        if cov_diag.ndim < 1 or cov_diag.shape[-1] != n:
            raise ValueError(f"LowRankMultivariateNormal: cov_diag must be a batch of vectors "
                             f"with shape ({n},), got shape {tuple(cov_diag.shape)}")
        loc_, self.cov_factor, diag_ = ng.broadcast_tensors(loc[..., None], cov_factor,
                                                            cov_diag[..., None])
        self.loc, self.cov_diag = loc_[..., 0], diag_[..., 0]
        self._unbroadcasted_cov_factor = cov_factor
        self._unbroadcasted_cov_diag = cov_diag
        self._capacitance_tril = _batch_capacitance_tril(cov_factor, cov_diag)
        super().__init__(tuple(self.loc.shape[:-1]), (n,), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> LowRankMultivariateNormal:
        new = super().expand(batch_shape, _instance)
        return new

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        v = ng.sum(self._unbroadcasted_cov_factor ** 2, -1) + self._unbroadcasted_cov_diag
        return v.expand(*(self._batch_shape + self._event_shape))

    @property
    def scale_tril(self) -> Tensor:
        n = self._event_shape[0]
        d_sqrt = ng.sqrt(self._unbroadcasted_cov_diag)[..., None]
        Dinvsqrt_W = self._unbroadcasted_cov_factor / d_sqrt
        K = Dinvsqrt_W @ Dinvsqrt_W.mT + ng.eye(n, dtype=d_sqrt.dtype, device=d_sqrt.device)
        L = d_sqrt * ng.linalg.cholesky(K)
        return L.expand(*(self._batch_shape + self._event_shape + self._event_shape))

    @property
    def covariance_matrix(self) -> Tensor:
        W = self._unbroadcasted_cov_factor
        cov = W @ W.mT + ng.diag_embed(self._unbroadcasted_cov_diag)
        return cov.expand(*(self._batch_shape + self._event_shape + self._event_shape))

    @property
    def precision_matrix(self) -> Tensor:
        W, D = self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag
        Wt_Dinv = W.mT / D[..., None, :]
        batch = ng.broadcast_shapes(tuple(self._capacitance_tril.shape[:-2]),
                                    tuple(Wt_Dinv.shape[:-2]))
        m, n = Wt_Dinv.shape[-2], Wt_Dinv.shape[-1]
        A = ng.linalg.solve_triangular(self._capacitance_tril.expand(*batch, m, m),
                                       Wt_Dinv.expand(*batch, m, n), upper=False)
        P = ng.diag_embed(1 / D) - A.mT @ A
        return P.expand(*(self._batch_shape + self._event_shape + self._event_shape))

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        W = self._unbroadcasted_cov_factor
        w_shape = shape[:-1] + (W.shape[-1],)
        eps_w = ng.randn(w_shape, dtype=self.loc.dtype, device=self.loc.device,
                         generator=generator)
        eps_d = ng.randn(shape, dtype=self.loc.dtype, device=self.loc.device,
                         generator=generator)
        return (self.loc + ng.matmul(W, eps_w[..., None])[..., 0]
                + ng.sqrt(self._unbroadcasted_cov_diag) * eps_d)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        diff = value - self.loc
        W, D = self._unbroadcasted_cov_factor, self._unbroadcasted_cov_diag
        M = _batch_lowrank_mahalanobis(W, D, diff, self._capacitance_tril)
        log_det = _batch_lowrank_logdet(W, D, self._capacitance_tril)
        return -0.5 * (self._event_shape[0] * math.log(2 * math.pi) + log_det + M)

    def entropy(self) -> Tensor:
        log_det = _batch_lowrank_logdet(self._unbroadcasted_cov_factor,
                                        self._unbroadcasted_cov_diag, self._capacitance_tril)
        h = 0.5 * (self._event_shape[0] * (1.0 + math.log(2 * math.pi)) + log_det)
        return h.expand(*self._batch_shape) if self._batch_shape else h
