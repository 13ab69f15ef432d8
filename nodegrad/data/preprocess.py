"""Preprocessing fitted on training data only: invertible, and serialisable to JSON.

Call ``fit(x_train)`` once, then ``transform`` any split with the training statistics (so no
test information leaks in) and ``inverse_transform`` to map back. Statistics are computed in
float64; outputs keep a floating input's dtype (float32 stays float32). ``to_json`` stores the
parameters and fitted statistics exactly; ``Preprocessor.from_json`` rebuilds any of them.
"""

from __future__ import annotations

import json
from typing import Any

from .. import _backend as B
from ..errors import ShapeError
from .dataset import _host, check_labels

np = B.np
_REGISTRY: dict[str, type[Preprocessor]] = {}


def _axes(axis, ndim: int) -> tuple:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axes))


def _finite64(obj: Preprocessor, x) -> np.ndarray:
    """``x`` as float64 for fitting, refusing NaN and Inf: one would turn the fitted statistics
    (a mean, a range, a covariance) and then every transformed value of its feature into NaN."""
    x = _host(x).astype(B.float64)
    if x.size == 0:
        raise ValueError(f"{type(obj).__name__}.fit: the training data is empty (shape "
                         f"{x.shape}); the fitted statistics would be NaN")
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{type(obj).__name__}.fit: the training data holds {int(bad.sum())} "
                         f"NaN or Inf value(s) (the first at index {first}: {x[first]}); the "
                         "fitted statistics would be NaN. Drop or impute them before fitting")
    return x


def _out_dtype(x: np.ndarray):
    return x.dtype if B.is_float(x.dtype) else B.float32


def _encode(v):
    if isinstance(v, np.ndarray):
        return {"__array__": str(v.dtype), "shape": list(v.shape), "data": v.ravel().tolist()}
    if isinstance(v, tuple):
        return list(v)
    return v


def _decode(v):
    if isinstance(v, dict) and "__array__" in v:
        return np.asarray(v["data"], dtype=v["__array__"]).reshape(v["shape"])
    return v


class Preprocessor:
    """Base: ``fit``, ``transform``, ``inverse_transform``, ``to_json``/``from_json``.

    Subclasses list their constructor arguments in ``_params`` and fitted attributes (names
    ending in ``_``) in ``_state``. Calling an instance transforms (``rng`` is ignored), so a
    fitted preprocessor can serve as a DataLoader ``transform``.
    """

    _params: tuple[str, ...] = ()
    _state: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _REGISTRY[cls.__name__] = cls

    @property
    def fitted(self) -> bool:
        return all(getattr(self, k, None) is not None for k in self._state)

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}: call fit(x_train) before transforming")

    def fit(self, x) -> Preprocessor:
        raise NotImplementedError

    def transform(self, x) -> np.ndarray:
        raise NotImplementedError

    def inverse_transform(self, z) -> np.ndarray:
        raise NotImplementedError

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)

    def __call__(self, x, rng=None) -> np.ndarray:
        return self.transform(x)

    # --- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._require_fit()
        return {"type": type(self).__name__,
                "params": {k: _encode(getattr(self, k)) for k in self._params},
                "state": {k: _encode(getattr(self, k)) for k in self._state}}

    def to_json(self) -> str:
        """Parameters and fitted statistics as JSON (floats round-trip exactly)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        kind = _REGISTRY.get(d.get("type"))
        if kind is None or not issubclass(kind, cls):
            raise ValueError(f"from_json: {d.get('type')!r} is not a {cls.__name__}")
        obj = kind(**{k: _decode(v) for k, v in d["params"].items()})
        for k, v in d["state"].items():
            setattr(obj, k, _decode(v))
        return obj

    @classmethod
    def from_json(cls, text: str) -> Preprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._params)
        return f"{type(self).__name__}({args}{'' if self.fitted else ', unfitted'})"


class _Elementwise(Preprocessor):
    """Per-dimension affine maps ``z = (x - shift_) * scale_``, statistics over ``axis``."""

    _state = ("shift_", "scale_")

    def _check(self, x: np.ndarray) -> None:
        self._require_fit()
        if x.ndim != self.shift_.ndim or any(
                s != 1 and s != d for s, d in zip(self.shift_.shape, x.shape)):
            raise ShapeError(f"{type(self).__name__}: fitted on samples of shape "
                             f"{self.shift_.shape[1:]}, got input of shape {x.shape}")

    def transform(self, x) -> np.ndarray:
        x = _host(x)
        self._check(x)
        return B.cast((x - self.shift_) * self.scale_, _out_dtype(x))

    def inverse_transform(self, z) -> np.ndarray:
        z = _host(z)
        self._check(z)
        return B.cast(z / self.scale_ + self.shift_, _out_dtype(z))


class Standardize(_Elementwise):
    """Per-dimension ``z = (x - mean) / std`` with the training mean and std over ``axis``.

    ``axis=0`` standardises every feature (pixel, position) separately; e.g. ``(0, 2, 3)``
    standardises per channel. A std below ``eps`` counts as 1 (constant features only centre).
    """

    _params = ("axis", "eps")

    def __init__(self, axis: int | tuple = 0, eps: float = 1e-8):
        self.axis, self.eps = axis, eps
        self.shift_ = self.scale_ = None

    def fit(self, x) -> Standardize:
        x = _finite64(self, x)
        axes = _axes(self.axis, x.ndim)
        mean = x.mean(axis=axes, keepdims=True)
        std = x.std(axis=axes, keepdims=True)
        # a constant feature far from zero has a mean off by rounding, hence a std of the order
        # n * eps * |mean| (as scikit-learn bounds it): it counts as constant, and one that is
        # exactly constant is centred on its value, so it becomes exactly 0 and is not blown up
        n = int(np.prod([x.shape[a] for a in axes]))
        rounding = n * np.finfo(B.float64).eps * np.abs(mean)
        constant = (std < self.eps) | (std <= rounding)
        exact = x.min(axis=axes, keepdims=True) == x.max(axis=axes, keepdims=True)
        self.shift_ = np.where(exact, x.min(axis=axes, keepdims=True), mean)
        self.scale_ = 1.0 / np.where(constant, 1.0, std)
        return self

    @property
    def mean_(self) -> np.ndarray:
        return self.shift_

    @property
    def std_(self) -> np.ndarray:
        return 1.0 / self.scale_


class MinMaxScale(_Elementwise):
    """Per-dimension map of the training range [min, max] onto ``feature_range`` (over ``axis``).

    Constant features (max - min below ``eps``) are only shifted to the lower end.
    """

    _params = ("feature_range", "axis", "eps")

    def __init__(self, feature_range: tuple[float, float] = (0.0, 1.0), axis: int | tuple = 0,
                 eps: float = 1e-12):
        lo, hi = feature_range
        if not hi > lo:
            raise ValueError(f"MinMaxScale: feature_range {feature_range} must be increasing")
        self.feature_range, self.axis, self.eps = (float(lo), float(hi)), axis, eps
        self.shift_ = self.scale_ = None

    def fit(self, x) -> MinMaxScale:
        x = _finite64(self, x)
        axes = _axes(self.axis, x.ndim)
        lo, hi = self.feature_range
        xmin, xmax = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        span = xmax - xmin
        self.scale_ = (hi - lo) / np.where(span < self.eps, 1.0, span)
        self.shift_ = xmin - lo / self.scale_  # so that z = (x - shift) * scale maps min to lo
        return self


class _Whiten(Preprocessor):
    """Shared fit: mean and eigendecomposition of the training covariance (denominator N - 1)."""

    _state = ("mean_", "components_", "variances_", "feature_shape_")

    def fit(self, x):
        x = _host(x)
        if x.ndim < 2 or len(x) < 2:
            raise ShapeError(f"{type(self).__name__}: need at least 2 samples (N, ...), "
                             f"got shape {x.shape}")
        flat = _finite64(self, x.reshape(len(x), -1))
        self.feature_shape_ = tuple(x.shape[1:])
        self.mean_ = flat.mean(axis=0)
        xc = flat - self.mean_
        lam, u = np.linalg.eigh(xc.T @ xc / (len(x) - 1))
        lam, u = np.clip(lam[::-1], 0.0, None), u[:, ::-1]  # largest variance first
        u *= np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])  # fixed signs
        k = len(lam) if self.n_components is None else self.n_components
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(lam):
            raise ValueError(f"{type(self).__name__}: n_components must be an int in "
                             f"[1, {len(lam)}] (the number of features) or None, got "
                             f"{self.n_components!r}")
        if not self.eps > 0 and lam[k - 1] == 0:
            raise ValueError(f"{type(self).__name__}.fit: eps={self.eps} and the training data "
                             f"has {int(np.sum(lam[:k] == 0))} direction(s) of zero variance; "
                             "whitening them divides by zero. Use eps > 0"
                             + (" or fewer n_components" if "n_components" in self._params
                                else ""))
        self.variances_, self.components_ = lam[:k], u[:, :k]
        return self

    def _flat(self, x, dim: int) -> tuple[np.ndarray, Any]:
        self._require_fit()
        x = _host(x)
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != dim:
            raise ShapeError(f"{type(self).__name__}: expected samples of {dim} values, "
                             f"got input of shape {x.shape}")
        return flat.astype(B.float64), _out_dtype(x)

    @property
    def _scale(self) -> np.ndarray:
        return np.sqrt(self.variances_ + self.eps)


class PCAWhiten(_Whiten):
    """``z = (x - mean) U / sqrt(λ + eps)``: decorrelated components of unit variance.

    ``U`` holds the covariance eigenvectors by decreasing eigenvalue ``λ``; the output is
    (N, n_components) (all dimensions by default, then exactly invertible).
    """

    _params = ("eps", "n_components")

    def __init__(self, eps: float = 1e-5, n_components: int | None = None):
        self.eps, self.n_components = eps, n_components
        self.mean_ = self.components_ = self.variances_ = self.feature_shape_ = None

    def transform(self, x) -> np.ndarray:
        flat, dtype = self._flat(x, len(self.mean_))
        return ((flat - self.mean_) @ self.components_ / self._scale).astype(dtype)

    def inverse_transform(self, z) -> np.ndarray:
        z, dtype = self._flat(z, len(self.variances_))
        x = (z * self._scale) @ self.components_.T + self.mean_
        return x.reshape(len(x), *self.feature_shape_).astype(dtype)


class ZCAWhiten(_Whiten):
    """``z = (x - mean) U diag(1/sqrt(λ + eps)) Uᵀ``: whitened yet closest to the input.

    Keeps the input's shape (images stay images); ``eps`` damps the noisiest directions.
    """

    _params = ("eps",)
    n_components = None

    def __init__(self, eps: float = 1e-5):
        self.eps = eps
        self.mean_ = self.components_ = self.variances_ = self.feature_shape_ = None

    def transform(self, x) -> np.ndarray:
        flat, dtype = self._flat(x, len(self.mean_))
        u = self.components_
        z = ((flat - self.mean_) @ u / self._scale) @ u.T
        return z.reshape(len(z), *self.feature_shape_).astype(dtype)

    def inverse_transform(self, z) -> np.ndarray:
        flat, dtype = self._flat(z, len(self.mean_))
        u = self.components_
        x = ((flat @ u) * self._scale) @ u.T + self.mean_
        return x.reshape(len(x), *self.feature_shape_).astype(dtype)


class OneHot(Preprocessor):
    """Integer labels (N,) to one-hot rows (N, classes); the inverse is the argmax.

    ``classes`` defaults to ``max(label) + 1`` on the training labels.
    """

    _params = ("classes", "dtype")
    _state = ("classes_",)

    def __init__(self, classes: int | None = None, dtype: str = "float32"):
        self.classes, self.dtype = classes, str(B.as_dtype(dtype))
        self.classes_ = None

    def fit(self, y) -> OneHot:
        y = _host(y)
        if self.classes is None:
            check_labels(y, 2**62)
            self.classes_ = int(y.max()) + 1
        else:
            check_labels(y, self.classes)
            self.classes_ = int(self.classes)
        return self

    def transform(self, y) -> np.ndarray:
        self._require_fit()
        y = _host(y)
        check_labels(y, self.classes_)
        return (y[..., None] == np.arange(self.classes_)).astype(self.dtype)

    def inverse_transform(self, z) -> np.ndarray:
        self._require_fit()
        return _host(z).argmax(axis=-1).astype(B.int64)
