"""Student's t distribution."""

from __future__ import annotations

from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .chi2 import Chi2
from .distribution import _LOG_2PI, Distribution, _shape, broadcast_all


_SERIES_FROM = 25.0  # x = df / 2 from which the asymptotic series below are used


def _split(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(big, x_big, x_small)``: the mask x >= _SERIES_FROM and ``x`` on either side of it,
    with safe stand-ins elsewhere so neither branch makes NaN values or gradients."""
    big = x >= _SERIES_FROM
    return big, ng.where(big, x, _SERIES_FROM), ng.where(big, 1.0, x)


def _lgamma_half_shift(x: Tensor) -> Tensor:
    """lgamma(x + 1/2) - lgamma(x) - log(x) / 2, without the cancellation of two huge lgamma
    values for large x (at df = 1e15 it costs O(1) in log_prob and entropy): the asymptotic
    series -1/(8x) + 1/(192x³) - 1/(640x⁵) + 17/(14336x⁷) there (error < 1e-15 from x = 25)."""
    big, xb, xs = _split(x)
    r = 1.0 / xb
    r2 = r * r
    series = r * (-1.0 / 8 + r2 * (1.0 / 192 + r2 * (-1.0 / 640 + r2 * (17.0 / 14336))))
    direct = ng.lgamma(xs + 0.5) - ng.lgamma(xs) - 0.5 * ng.log(xs)
    return ng.where(big, series, direct)


def _digamma_half_shift(x: Tensor) -> Tensor:
    """(x + 1/2)(digamma(x + 1/2) - digamma(x)) - 1/2, by the derivative of the series of
    :func:`_lgamma_half_shift` for large x, where the digamma difference cancels."""
    big, xb, xs = _split(x)
    r = 1.0 / xb
    r2 = r * r
    tail = r2 * (1.0 / 8 + r2 * (-1.0 / 64 + r2 * (1.0 / 128 + r2 * (-17.0 / 2048))))
    series = 0.25 * r + (xb + 0.5) * tail
    direct = (xs + 0.5) * (ng.digamma(xs + 0.5) - ng.digamma(xs)) - 0.5
    return ng.where(big, series, direct)


class StudentT(Distribution):
    """Student's t with ``df`` degrees of freedom, location ``loc`` and scale ``scale``;
    reparameterised samples X / sqrt(Z / df) with X normal and Z ~ Chi2(df)."""

    arg_constraints = {"df": constraints.positive, "loc": constraints.real,
                       "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, df: Tensor | float, loc: Tensor | float = 0.0,
                 scale: Tensor | float = 1.0, validate_args: bool | None = None):
        self.df, self.loc, self.scale = broadcast_all(df, loc, scale)
        super().__init__(tuple(self.df.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return ng.where(self.df <= 1, float("nan"), self.loc)

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        df = self.df
        big = ng.where(df > 2, df, 3.0)
        v = self.scale ** 2 * big / (big - 2)
        inf_or_nan = ng.where(df > 1, ng.full_like(df, float("inf")), float("nan"))
        return ng.where(df > 2, v, inf_or_nan)

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        x = ng.randn(shape, dtype=self.df.dtype, device=self.df.device, generator=generator)
        z = Chi2(self.df, validate_args=False).rsample(sample_shape, generator=generator)
        y = x * ng.rsqrt(z / self.df)
        return self.loc + self.scale * y

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        df = self.df
        y = (value - self.loc) / self.scale
        # z = log(scale) + log(pi df)/2 + lgamma(df/2) - lgamma((df+1)/2)
        z = ng.log(self.scale) + 0.5 * _LOG_2PI - _lgamma_half_shift(0.5 * df)
        return -0.5 * (df + 1.0) * ng.log1p(y ** 2 / df) - z

    def entropy(self) -> Tensor:
        # log(scale) + (df+1)/2 (digamma((df+1)/2) - digamma(df/2)) + log(df)/2
        # + lbeta(df/2, 1/2), arranged so that no two large terms cancel
        x = 0.5 * self.df
        return (ng.log(self.scale) + 0.5 * _LOG_2PI + 0.5 + _digamma_half_shift(x)
                - _lgamma_half_shift(x))
