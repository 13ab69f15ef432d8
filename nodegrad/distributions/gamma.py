"""The Gamma distribution, and the standard-gamma sampler Gamma, Beta and Dirichlet draw through,
with PyTorch's implicit reparameterisation gradient."""

from __future__ import annotations

from . import _ng as ng
from nodegrad.func.custom import custom_vjp
from nodegrad.random import _gen, _sample
from nodegrad.tensor import Tensor

from . import constraints
from .distribution import Distribution, _shape, broadcast_all
from .saddle_point import (_HALF_LOG_2PI, SERIES_FROM, digamma_tail, log_poisson,
                           stirlerr)


def _standard_gamma_array(gen, concentration: Tensor, shape: tuple):
    """Gamma(concentration, 1) samples of ``shape`` as an array in concentration's dtype."""
    with gen.backend.scope():
        alpha = concentration._data
        out = gen.rng.standard_gamma(alpha.astype("float64"), size=shape)
        tiny = float(ng.finfo(alpha.dtype).tiny)
        return out.clip(tiny, None).astype(alpha.dtype)  # 0 underflows log_prob; torch clamps


def standard_gamma(concentration: Tensor, sample_shape=(), *, generator=None) -> Tensor:
    """Gamma(concentration, 1) samples of shape ``sample_shape + concentration.shape``,
    drawn through nodegrad's generator (a jitted function draws afresh on each call)."""
    shape = _shape(sample_shape) + tuple(concentration.shape)
    c = concentration.detach()
    return _sample("standard_gamma", _standard_gamma_array, _gen(generator, c.device), c, shape,
                   shape_at=1)


_UV = ((0.16009398, -0.094634809, 0.025146376, -0.0030648343,
        1, 0.32668115, 0.10406089, 0.0014179084),
       (0.53487893, 0.1298071, 0.065735949, -0.0015649758,
        0.16639465, 0.020070113, -0.0035938915, -0.00058392623),
       (0.040121004, -0.0065914022, -0.0026286047, -0.0013441777,
        0.017050642, -0.0021309326, 0.00085092367, -1.5247877e-07))


def standard_gamma_grad(alpha: Tensor, x: Tensor) -> Tensor:
    """d x / d alpha of a Gamma(alpha, 1) sample ``x`` held at its CDF level u = F(x; alpha):
    -(dF/dalpha) / (dF/dx), by the approximations of Jankowiak and Obermeyer ("Pathwise
    derivatives beyond the reparameterization trick", 2018), which PyTorch also uses: a Taylor
    series for x < 0.8, a saddle-point expansion for alpha > 8, else their bivariate rational
    fit (whose coefficients are ``_UV``)."""
    with ng.no_grad():
        alpha, x = ng.broadcast_tensors(alpha.detach(), x.detach())
        small = x < 0.8
        xs = ng.where(small, x, 0.5)
        # Taylor series of the CDF and its alpha-derivative
        numer, denom = ng.ones_like(alpha), alpha
        s1, s2 = numer / denom, numer / (denom * denom)
        for i in range(1, 6):
            numer = numer * (-xs / i)
            denom = denom + 1
            s1 = s1 + numer / denom
            s2 = s2 + numer / (denom * denom)
        pow_xa = xs ** alpha
        pdf = xs ** (alpha - 1) * ng.exp(-xs)
        cdf_alpha = (ng.log(xs) - ng.digamma(alpha)) * pow_xa * s1 - pow_xa * s2
        taylor = -cdf_alpha / pdf
        taylor = ng.where(ng.isnan(taylor), 0.0, taylor)
        # saddle point, large alpha: near the mode, and away from it
        big = alpha > 8.0
        a = ng.where(big, alpha, 10.0)
        xb = ng.where(big & ~small, x, 9.0)
        near = (0.9 * a <= xb) & (xb <= 1.1 * a)
        n1 = 1 + 24 * a * (1 + 12 * a)
        n2 = 1440 * a * a + 6 * xb * (53 - 120 * xb) - 65 * xb * xb / a + a * (107 + 3600 * xb)
        mid = n1 * n2 / (1244160 * a ** 4)
        xf = ng.where(near, 0.5 * a, xb)  # keeps the far formula finite where it is not used
        den = ng.sqrt(8 * a)
        term2 = den / (a - xf)
        term3 = (xf - a - a * ng.log(xf / a)) ** -1.5
        term23 = ng.where(xf < a, term2 - term3, term2 + term3)
        term1 = ng.log(xf / a) * term23 - ng.sqrt(2 / a) * (a + xf) / ((a - xf) * (a - xf))
        stirling = 1 + 1 / (12 * a) * (1 + 1 / (24 * a))
        far = -stirling * xf * term1 / den
        saddle = ng.where(near, mid, far)
        # bivariate rational approximation
        xr = ng.where(small, 1.0, x)
        u, v = ng.log(xr / alpha), ng.log(alpha)
        c = [_UV[0][i] + u * (_UV[1][i] + u * _UV[2][i]) for i in range(8)]
        p = c[0] + v * (c[1] + v * (c[2] + v * c[3]))
        q = c[4] + v * (c[5] + v * (c[6] + v * c[7]))
        rational = ng.exp(p / q)
        return ng.where(small, taylor, ng.where(big, saddle, rational))


@custom_vjp
def _reparam_gamma(alpha: Tensor, x: Tensor) -> Tensor:
    return x


def _reparam_fwd(alpha, x):
    return x, (alpha, x)


def _reparam_bwd(res, g):
    alpha, x = res
    return g * standard_gamma_grad(alpha, x), None


_reparam_gamma.defvjp(_reparam_fwd, _reparam_bwd)


def standard_gamma_rsample(concentration: Tensor, sample_shape=(), *,
                           generator=None) -> Tensor:
    """Gamma(concentration, 1) samples whose gradient in ``concentration`` is the implicit
    reparameterisation one (PyTorch's ``_standard_gamma``); ``concentration`` is expanded to
    ``sample_shape + concentration.shape``."""
    shape = _shape(sample_shape) + tuple(concentration.shape)
    alpha = concentration.expand(*shape)
    x = standard_gamma(alpha.detach(), generator=generator)
    return _reparam_gamma(alpha, x)


class Gamma(Distribution):
    """Gamma with shape ``concentration`` and ``rate`` (mean concentration / rate).

    Reparameterised samples: the gradient in ``concentration`` is the implicit one,
    -(dF/dalpha)/(dF/dx) for the gamma CDF F, as in PyTorch."""

    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, concentration: Tensor | float, rate: Tensor | float,
                 validate_args: bool | None = None):
        self.concentration, self.rate = broadcast_all(concentration, rate)
        super().__init__(tuple(self.rate.shape), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.concentration / self.rate

    @property
    def mode(self) -> Tensor:
        return ng.clamp((self.concentration - 1) / self.rate, min=0)

    @property
    def variance(self) -> Tensor:
        return self.concentration / self.rate ** 2

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        x = standard_gamma_rsample(self.concentration.expand(*shape), generator=generator)
        x = x / self.rate.expand(*shape)
        tiny = float(ng.finfo(x.dtype).tiny)
        return x + (ng.clamp(x.detach(), min=tiny) - x.detach())  # clamp, gradient kept

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        c, r = self.concentration, self.rate
        plain = ng.xlogy(c, r) + ng.xlogy(c - 1, value) - r * value - ng.lgamma(c)
        # from concentration 2 on, rate * Poisson(c - 1; rate x) by saddle point: the plain
        # form cancels lgamma(c) against (c - 1) log(rate x), both of size c log c
        c, r, value = ng.broadcast_tensors(c, r, value.astype(c.dtype))
        rx = r * value
        use = (c >= 2) & (rx > 0) & ng.isfinite(rx) & ng.isfinite(c)
        cs, rs, rxs = ng.where(use, c, 2.0), ng.where(use, r, 1.0), ng.where(use, rx, 1.0)
        saddle = ng.log(rs) + log_poisson(cs - 1, rxs)
        return ng.where(use, saddle, plain)

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return ng.igamma(self.concentration, self.rate * value)

    def entropy(self) -> Tensor:
        c = self.concentration
        plain = c - ng.log(self.rate) + ng.lgamma(c) + (1.0 - c) * ng.digamma(c)
        # for large c, lgamma(c) and (1 - c) digamma(c) (each ~ c log c) cancel: written with
        # stirlerr and the digamma series, log(2 pi c) / 2 + 1/2 - log(rate) + small terms
        big = c >= SERIES_FROM
        cb = ng.where(big, c, SERIES_FROM)
        series = (stirlerr(cb) + 0.5 * ng.log(cb) + _HALF_LOG_2PI + 0.5 - 0.5 / cb
                  + (cb - 1) * digamma_tail(cb) - ng.log(self.rate))
        return ng.where(big, series, plain)
