"""Loader's saddle-point pieces for log densities with large counts or shapes.

``lgamma(k + 1)`` grows like k log k, so a log density written as a sum of lgamma values and
``k log(rate)`` subtracts numbers near 1e7 to get one near -8 (Poisson at rate 1e6): float32
keeps no digit of it, float64 about eight. Loader (2000, "Fast and accurate computation of
binomial probabilities", the method of R's dbinom and dpois) writes the same densities with

* ``stirlerr(n) = lgamma(n + 1) - (n + 1/2) log n + n - log(2 pi) / 2`` (small for large n),
* ``bd0(x, m) = x log(x / m) + m - x`` (the deviance term, by a series when x is near m),

both of order one, e.g. ``log Poisson(k; m) = -stirlerr(k) - bd0(k, m) - log(2 pi k) / 2``.
The Gamma, Binomial, NegativeBinomial, Beta and Dirichlet log densities are built on these
two, and the Gamma and Beta entropies on ``stirlerr`` and :func:`digamma_tail`.
"""

from __future__ import annotations

import math

from nodegrad.tensor import Tensor

from . import _ng as ng

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_STIRLING_FROM = 10.0  # the series below is good to ~1e-14 from here on
_BD0_SERIES_BELOW = 0.1  # |x - m| / (x + m) under which bd0 uses its series
_BD0_TERMS = 9  # v^(2 * 9 + 1) < 1e-19 for |v| < 0.1
SERIES_FROM = 20.0  # digamma_tail's series is good to ~1e-18 (times x) from here on


def stirlerr(n: Tensor) -> Tensor:
    """``lgamma(n + 1) - (n + 1/2) log n + n - log(2 pi) / 2`` for n > 0: the asymptotic series
    1/(12n) - 1/(360n³) + 1/(1260n⁵) - 1/(1680n⁷) + 1/(1188n⁹) from n = 10, below that the
    definition evaluated in float64 (its terms are small there)."""
    big = n >= _STIRLING_FROM
    nb = ng.where(big, n, _STIRLING_FROM)
    r2 = 1.0 / (nb * nb)
    series = (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 * (1.0 / 1680
                                                                     - r2 / 1188)))) / nb
    ns = ng.where(big, 1.0, n).astype(ng.float64)
    direct = (ng.lgamma(ns + 1) - (ns + 0.5) * ng.log(ns) + ns - _HALF_LOG_2PI).astype(n.dtype)
    return ng.where(big, series, direct)


def bd0(x: Tensor, m: Tensor) -> Tensor:
    """``x log(x / m) + m - x`` for x >= 0, m > 0 (the deviance of x from m), without the
    cancellation of its terms when x is near m: there the series
    (x - m) v + 2x (v³/3 + v⁵/5 + ...), v = (x - m) / (x + m)."""
    d = x - m
    near = ng.abs(d) < _BD0_SERIES_BELOW * (x + m)
    xs, ms = ng.where(near, x, 1.0), ng.where(near, m, 2.0)  # stand-ins keep v finite
    v = (xs - ms) / (xs + ms)
    v2 = v * v
    term = 2 * xs * v
    series = (xs - ms) * v
    for j in range(1, _BD0_TERMS + 1):
        term = term * v2
        series = series + term / (2 * j + 1)
    # far from m: x (log x - log m) + m - x; not log(x / m), whose gradient in m passes
    # through x / m² and overflows for m near 1e-300 (a Gamma at x = 1e-300)
    pos = ~near & (x > 0)
    xf, mf = ng.where(pos, x, 1.0), ng.where(near, 1.0, m)
    far = ng.where(pos, xf * (ng.log(xf) - ng.log(mf)), 0.0) + mf - ng.where(near, 1.0, x)
    return ng.where(near, series, far)


def log_poisson(k: Tensor, m: Tensor) -> Tensor:
    """``k log m - m - lgamma(k + 1)`` for k > 0, m > 0, by saddle point:
    ``-stirlerr(k) - bd0(k, m) - log(2 pi k) / 2``."""
    return -stirlerr(k) - bd0(k, m) - 0.5 * ng.log(k) - _HALF_LOG_2PI


def log_binomial(k: Tensor, m: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """``lgamma(n + 1) - lgamma(k + 1) - lgamma(m + 1) + k log p + m log q`` with n = k + m,
    for k, m > 0 and n p, n q > 0 (``q`` = 1 - p, given so it keeps its precision), by saddle
    point: ``stirlerr(n) - stirlerr(k) - stirlerr(m) - bd0(k, n p) - bd0(m, n q)
    - log(2 pi k m / n) / 2``."""
    n = k + m
    return (stirlerr(n) - stirlerr(k) - stirlerr(m) - bd0(k, n * p) - bd0(m, n * q)
            - 0.5 * ng.log(k * (m / n)) - _HALF_LOG_2PI)


def digamma_tail(x: Tensor) -> Tensor:
    """``log x - 1/(2x) - digamma(x)`` for x >= SERIES_FROM (callers mask smaller x), by its
    asymptotic series 1/(12x²) - 1/(120x⁴) + 1/(252x⁶) - 1/(240x⁸) + 1/(132x¹⁰)."""
    r2 = 1.0 / (x * x)
    return r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 * (1.0 / 240
                                                                      - r2 / 132))))
