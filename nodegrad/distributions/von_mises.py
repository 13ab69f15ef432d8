"""The von Mises (circular normal) distribution."""

from __future__ import annotations

import math

from nodegrad.random import _gen, _sample
from nodegrad.tensor import Tensor

from . import _ng as ng
from . import constraints
from .distribution import Distribution, _shape, broadcast_all

# polynomial approximations of log I0 and log I1 (Abramowitz and Stegun 9.8), as PyTorch's
_I0_SMALL = [1.0, 3.5156229, 3.0899424, 1.2067492, 0.2659732, 0.360768e-1, 0.45813e-2]
_I0_LARGE = [0.39894228, 0.1328592e-1, 0.225319e-2, -0.157565e-2, 0.916281e-2,
             -0.2057706e-1, 0.2635537e-1, -0.1647633e-1, 0.392377e-2]
_I1_SMALL = [0.5, 0.87890594, 0.51498869, 0.15084934, 0.2658733e-1, 0.301532e-2, 0.32411e-3]
_I1_LARGE = [0.39894228, -0.3988024e-1, -0.362018e-2, 0.163801e-2, -0.1031555e-1,
             0.2282967e-1, -0.2895312e-1, 0.1787654e-1, -0.420059e-2]


def _eval_poly(y: Tensor, coef: list) -> Tensor:
    result = coef[-1]
    for c in reversed(coef[:-1]):
        result = c + y * result
    return result


def _log_modified_bessel_fn(x: Tensor, order: int = 0) -> Tensor:
    """log I_order(x) for x > 0, order 0 or 1."""
    small_c, large_c = (_I0_SMALL, _I0_LARGE) if order == 0 else (_I1_SMALL, _I1_LARGE)
    y = (x / 3.75) ** 2
    small = _eval_poly(y, small_c)
    if order == 1:
        small = ng.abs(x) * small
    small = ng.log(small)
    xl = ng.where(x < 3.75, 3.75, x)  # keeps the unused branch finite
    large = xl - 0.5 * ng.log(xl) + ng.log(_eval_poly(3.75 / xl, large_c))
    return ng.where(x < 3.75, small, large)


def _von_mises_array(gen, loc: Tensor, kappa: Tensor, shape: tuple):
    """Best and Fisher's (1979) rejection sampler, in float64, as PyTorch runs it."""
    with gen.backend.scope():
        xp = gen.backend.xp
        k = xp.broadcast_to(kappa._data.astype("float64"), shape)
        mu = xp.broadcast_to(loc._data.astype("float64"), shape)
        tau = 1 + xp.sqrt(1 + 4 * k ** 2)
        rho = (tau - xp.sqrt(2 * tau)) / (2 * k)
        r = xp.where(k < 1e-5, 1 / k + k, (1 + rho ** 2) / (2 * rho))
        x = xp.zeros(shape, dtype="float64")
        done = xp.zeros(shape, dtype=bool)
        while not bool(done.all()):
            u = gen.random((3,) + tuple(shape), "float64")
            z = xp.cos(math.pi * u[0])
            f = (1 + r * z) / (r + z)
            c = k * (r - f)
            with xp.errstate(divide="ignore", invalid="ignore"):
                accept = ((c * (2 - c) - u[1]) > 0) | (xp.log(c / u[1]) + 1 - c >= 0)
            accept &= ~done
            x = xp.where(accept, xp.sign(u[2] - 0.5) * xp.arccos(xp.clip(f, -1, 1)), x)
            done |= accept
        out = (x + math.pi + mu) % (2 * math.pi) - math.pi
        return out.astype(loc._data.dtype)


class VonMises(Distribution):
    """Von Mises on the circle with mean direction ``loc`` and ``concentration`` κ; samples by
    rejection (no reparameterised samples, as in PyTorch)."""

    arg_constraints = {"loc": constraints.real, "concentration": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, loc: Tensor | float, concentration: Tensor | float,
                 validate_args: bool | None = None):
        self.loc, self.concentration = broadcast_all(loc, concentration)
        super().__init__(tuple(self.loc.shape), validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (self.concentration * ng.cos(value - self.loc) - math.log(2 * math.pi)
                - _log_modified_bessel_fn(self.concentration, 0))

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        shape = self._extended_shape(_shape(sample_shape))
        loc, k = self.loc.detach(), self.concentration.detach()
        return _sample("von_mises", _von_mises_array, _gen(generator, loc.device), loc, k,
                       shape, shape_at=2)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        k = self.concentration
        return 1 - ng.exp(_log_modified_bessel_fn(k, 1) - _log_modified_bessel_fn(k, 0))
