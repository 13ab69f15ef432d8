"""The multivariate Normal distribution, parametrised through a Cholesky factor."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import _LOG_2PI, Distribution, _float_dtype, _shape


def _batch_mahalanobis(L: Tensor, x: Tensor) -> Tensor:
    """xᵀ (L Lᵀ)⁻¹ x over the last dim, by one triangular solve (L broadcasts over x's batch)."""
    batch = ng.broadcast_shapes(tuple(L.shape[:-2]), tuple(x.shape[:-1]))
    n = x.shape[-1]
    L = L.expand(*batch, n, n)
    x = x.expand(*batch, n)
    y = ng.linalg.solve_triangular(L, x[..., None], upper=False)[..., 0]
    return ng.sum(y * y, -1)


def _half_log_det(L: Tensor) -> Tensor:
    return ng.sum(ng.log(ng.diagonal(L, 0, -2, -1)), -1)


def _precision_to_scale_tril(P: Tensor) -> Tensor:
    """The lower Cholesky factor of P⁻¹, without forming the inverse (PyTorch's method)."""
    Lf = ng.linalg.cholesky(ng.flip(P, (-2, -1)))
    L_inv = ng.flip(Lf, (-2, -1)).mT
    eye = ng.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    return ng.linalg.solve_triangular(L_inv, eye.expand(*L_inv.shape), upper=False)


def scale_tril_of(name: str, mat: Tensor) -> Tensor:
    """The lower Cholesky factor of the covariance whichever of ``covariance_matrix``,
    ``precision_matrix`` or ``scale_tril`` (``name``) gave it."""
    if name == "scale_tril":
        return mat
    if name == "covariance_matrix":
        return ng.linalg.cholesky(mat)
    return _precision_to_scale_tril(mat)


def parametrisation(d, name: str, event: tuple) -> Tensor:
    """``scale_tril``, ``covariance_matrix`` or ``precision_matrix`` of a distribution ``d``
    holding ``_unbroadcasted_scale_tril``, computed on demand (its ``__getattr__``) and expanded
    to its batch shape and ``event``; AttributeError for other names."""
    L = d.__dict__.get("_unbroadcasted_scale_tril")
    if L is None:
        raise AttributeError(name)
    shape = d._batch_shape + event
    if name == "scale_tril":
        return L.expand(*shape)
    if name == "covariance_matrix":
        return (L @ L.mT).expand(*shape)
    if name == "precision_matrix":
        return ng.cholesky_inverse(L).expand(*shape)
    raise AttributeError(f"'{type(d).__name__}' object has no attribute '{name}'")


class MultivariateNormal(Distribution):
    """Normal over vectors with mean ``loc`` and exactly one of ``covariance_matrix``,
    ``precision_matrix`` or ``scale_tril`` (lower Cholesky factor of the covariance)."""

    arg_constraints = {"loc": constraints.real_vector,
                       "covariance_matrix": constraints.positive_definite,
                       "precision_matrix": constraints.positive_definite,
                       "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True
    _param_event_dims = {"loc": 1, "covariance_matrix": 2, "precision_matrix": 2,
                         "scale_tril": 2}

    def __init__(self, loc: Tensor, covariance_matrix: Tensor | None = None,
                 precision_matrix: Tensor | None = None, scale_tril: Tensor | None = None,
                 validate_args: bool | None = None):
        if loc.ndim < 1:
            raise ValueError("MultivariateNormal: loc must be at least one-dimensional.")
        given = [m for m in (covariance_matrix, precision_matrix, scale_tril) if m is not None]
        if len(given) != 1:
            raise ValueError("MultivariateNormal: exactly one of covariance_matrix or "
                             "precision_matrix or scale_tril may be specified.")
        mat = given[0]
        if mat.ndim < 2:
            raise ValueError("MultivariateNormal: the matrix argument must be at least "
                             "two-dimensional, with optional leading batch dimensions")
        dtype = _float_dtype([loc, mat])
        loc, mat = loc.astype(dtype), mat.astype(dtype)
        batch_shape = ng.broadcast_shapes(tuple(mat.shape[:-2]), tuple(loc.shape[:-1]))
        n = loc.shape[-1]
        if mat.shape[-2:] != (n, n):
            raise ValueError(f"MultivariateNormal: the matrix argument must be {n} x {n} to "
                             f"match loc, got shape {tuple(mat.shape)}")
        name = ("scale_tril" if scale_tril is not None else
                "covariance_matrix" if covariance_matrix is not None else "precision_matrix")
        setattr(self, name, mat.expand(*batch_shape, n, n))
        self.loc = loc.expand(*batch_shape, n)
        super().__init__(batch_shape, (n,), validate_args=validate_args)
        self._unbroadcasted_scale_tril = scale_tril_of(name, mat)

    def __getattr__(self, name):  # the parametrisations not given, computed on demand
        if name.startswith("_"):  # copy and pickle probe an instance with no attributes yet
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return parametrisation(self, name, self._event_shape + self._event_shape)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        L = self._unbroadcasted_scale_tril
        return ng.sum(L ** 2, -1).expand(*(self._batch_shape + self._event_shape))

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        eps = ng.randn(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        L = self._unbroadcasted_scale_tril
        return self.loc + ng.matmul(L, eps[..., None])[..., 0]

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        diff = value - self.loc
        L = self._unbroadcasted_scale_tril
        m = _batch_mahalanobis(L, diff)
        return -0.5 * (self._event_shape[0] * _LOG_2PI + m) - _half_log_det(L)

    def entropy(self) -> Tensor:
        n = self._event_shape[0]
        h = 0.5 * n * (1.0 + _LOG_2PI) + _half_log_det(self._unbroadcasted_scale_tril)
        return h.expand(*self._batch_shape) if self._batch_shape else h
