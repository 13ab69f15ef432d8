"""The Wishart distribution over positive-definite matrices, parametrised through a Cholesky
factor of its scale matrix, with reparameterised samples by the Bartlett decomposition."""

from __future__ import annotations

import math
import warnings

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .chi2 import Chi2
from .distribution import _concrete, _float_dtype, _shape
from .exp_family import ExponentialFamily
from .multivariate_normal import parametrisation, scale_tril_of
from .transforms import _vec_to_tril_matrix

_LOG_2 = math.log(2.0)


def _mvdigamma(x: Tensor, p: int) -> Tensor:
    """The multivariate digamma function: sum_{i<p} digamma(x - i/2), the derivative of
    ``mvlgamma(x, p)``."""
    offsets = ng.arange(p, dtype=x.dtype, device=x.device) / 2
    return ng.sum(ng.digamma(x[..., None] - offsets), -1)


class Wishart(ExponentialFamily):
    """Wishart with ``df`` degrees of freedom (> dim - 1) and scale matrix Σ given by exactly
    one of ``covariance_matrix`` (Σ), ``precision_matrix`` (Σ⁻¹) or ``scale_tril`` (the lower
    Cholesky factor of Σ); its mean is ``df * Σ``.

    Everything is computed from the Cholesky factor (a given covariance or precision matrix is
    factored once). Samples are reparameterised (Bartlett decomposition: chi-squared diagonal
    through Gamma's implicit gradient, normal strict lower triangle)."""

    support = constraints.positive_definite
    has_rsample = True
    _mean_carrier_measure = 0
    _param_event_dims = {"df": 0, "covariance_matrix": 2, "precision_matrix": 2,
                         "scale_tril": 2}

    @property
    def arg_constraints(self) -> dict[str, constraints.Constraint]:
        return {"covariance_matrix": constraints.positive_definite,
                "precision_matrix": constraints.positive_definite,
                "scale_tril": constraints.lower_cholesky,
                "df": constraints.greater_than(self._event_shape[-1] - 1)}

    def __init__(self, df: Tensor | float, covariance_matrix: Tensor | None = None,
                 precision_matrix: Tensor | None = None, scale_tril: Tensor | None = None,
                 validate_args: bool | None = None):
        given = {k: v for k, v in (("covariance_matrix", covariance_matrix),
                                   ("precision_matrix", precision_matrix),
                                   ("scale_tril", scale_tril)) if v is not None}
        if len(given) != 1:
            raise ValueError("Wishart: exactly one of covariance_matrix or precision_matrix or "
                             f"scale_tril may be specified, got {sorted(given) or 'none'}")
        ((name, mat),) = given.items()
        if not isinstance(mat, Tensor):
            raise TypeError(f"Wishart: {name} must be a Tensor, got {type(mat).__name__}")
        if mat.ndim < 2 or mat.shape[-1] != mat.shape[-2]:
            raise ValueError(f"Wishart: {name} must be a batch of square matrices, got shape "
                             f"{tuple(mat.shape)}")
        if not isinstance(df, (Tensor, int, float)):
            raise TypeError(f"Wishart: df must be a Tensor or a number, got {type(df).__name__}")
        dtype = _float_dtype([mat] + ([df] if isinstance(df, Tensor) else []))
        mat = mat.astype(dtype)
        p = mat.shape[-1]
        if isinstance(df, Tensor):
            df = df.astype(dtype)
        else:
            df = ng.tensor(float(df), dtype=dtype, device=mat.device)
        batch_shape = ng.broadcast_shapes(tuple(mat.shape[:-2]), tuple(df.shape))
        self.df = df.expand(*batch_shape)
        if _concrete():
            with ng.no_grad():
                if bool(ng.any(self.df <= p - 1)):
                    raise ValueError(f"Wishart: df expected to be greater than dim - 1 = {p - 1}"
                                     f", got df={df}")
                if bool(ng.any(self.df < p)):
                    warnings.warn("Wishart: low df values detected; singular samples are "
                                  "highly likely to occur for dim - 1 < df < dim.",
                                  stacklevel=2)
        setattr(self, name, mat.expand(*batch_shape, p, p))
        super().__init__(batch_shape, (p, p), validate_args=validate_args)
        self._unbroadcasted_scale_tril = scale_tril_of(name, mat)

    def __getattr__(self, name):  # the parametrisations not given, computed on demand
        if name.startswith("_"):  # copy and pickle probe an instance with no attributes yet
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return parametrisation(self, name, self._event_shape)

    def _df_matrix(self) -> Tensor:
        return self.df.reshape(self._batch_shape + (1, 1))

    @property
    def mean(self) -> Tensor:
        return self._df_matrix() * self.covariance_matrix

    @property
    def mode(self) -> Tensor:
        """(df - dim - 1) Σ, NaN where df <= dim + 1 (no mode inside the support)."""
        factor = self.df - self._event_shape[-1] - 1
        factor = ng.where(factor > 0, factor, math.nan)
        return factor.reshape(self._batch_shape + (1, 1)) * self.covariance_matrix

    @property
    def variance(self) -> Tensor:
        V = self.covariance_matrix
        d = ng.diagonal(V, 0, -2, -1)
        return self._df_matrix() * (V ** 2 + d[..., :, None] * d[..., None, :])

    def _bartlett(self, sample_shape: tuple, generator) -> Tensor:
        """L A Aᵀ Lᵀ with A lower triangular: sqrt(chi2(df - i)) on the diagonal and standard
        normals below it."""
        L = self._unbroadcasted_scale_tril
        p = self._event_shape[-1]
        chi2_df = self.df[..., None] - ng.arange(p, dtype=L.dtype, device=L.device)
        chi2 = Chi2(chi2_df.expand(*self._batch_shape, p), validate_args=False)
        diag = ng.clamp(ng.sqrt(chi2.rsample(sample_shape, generator=generator)),
                        min=float(ng.finfo(L.dtype).eps))
        m = p * (p - 1) // 2
        normal = ng.randn(sample_shape + self._batch_shape + (m,), dtype=L.dtype,
                          device=L.device, generator=generator)
        A = ng.diag_embed(diag) + _vec_to_tril_matrix(normal, diag=-1)
        chol = L @ A
        return chol @ chol.mT

    def rsample(self, sample_shape=(), max_try_correction: int | None = None, *,
                generator=None) -> Tensor:
        """A reparameterised sample. The Bartlett draw can be numerically singular (mostly for
        dim - 1 < df < dim); such samples are redrawn up to ``max_try_correction`` times
        (default 10; 3 where values are not known to Python, e.g. under ``nodegrad.jit``),
        after which a singular sample may remain (its log_prob is then -inf)."""
        sample_shape = _shape(sample_shape)
        concrete = _concrete()
        if max_try_correction is None:
            max_try_correction = 10 if concrete else 3
        sample = self._bartlett(sample_shape, generator)
        with ng.no_grad():
            singular = ~self.support.check(sample.detach())
        if concrete:
            if not bool(ng.any(singular)):
                return sample
            warnings.warn("Wishart: singular sample detected.", stacklevel=2)
        for _ in range(max_try_correction):
            redraw = self._bartlett(sample_shape, generator)
            sample = ng.where(singular[..., None, None], redraw, sample)
            with ng.no_grad():
                singular = ~self.support.check(sample.detach())
            if concrete and not bool(ng.any(singular)):
                break
        return sample

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        nu, p = self.df, self._event_shape[-1]
        L = self._unbroadcasted_scale_tril
        half_log_det = ng.sum(ng.log(ng.diagonal(L, 0, -2, -1)), -1)
        trace = ng.sum(ng.diagonal(ng.cholesky_solve(value, L), 0, -2, -1), -1)
        return (-nu * (p * _LOG_2 / 2 + half_log_det) - ng.mvlgamma(nu / 2, p)
                + (nu - p - 1) / 2 * ng.linalg.slogdet(value).logabsdet - trace / 2)

    def entropy(self) -> Tensor:
        nu, p = self.df, self._event_shape[-1]
        L = self._unbroadcasted_scale_tril
        half_log_det = ng.sum(ng.log(ng.diagonal(L, 0, -2, -1)), -1)
        h = ((p + 1) * (p * _LOG_2 / 2 + half_log_det) + ng.mvlgamma(nu / 2, p)
             - (nu - p - 1) / 2 * _mvdigamma(nu / 2, p) + nu * p / 2)
        return h.expand(*self._batch_shape) if self._batch_shape else h

    @property
    def _natural_params(self) -> tuple[Tensor, Tensor]:
        return -self.precision_matrix / 2, (self.df - self._event_shape[-1] - 1) / 2

    def _log_normalizer(self, x: Tensor, y: Tensor) -> Tensor:
        p = self._event_shape[-1]
        return ((y + (p + 1) / 2) * (-ng.linalg.slogdet(-2 * x).logabsdet + _LOG_2 * p)
                + ng.mvlgamma(y + (p + 1) / 2, p))
