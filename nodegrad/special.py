"""PyTorch's ``torch.special`` namespace: special functions under their SciPy/PyTorch names.

>>> import nodegrad as ng
>>> ng.special.expit(ng.tensor([0.0]))
tensor([0.5])
"""

from __future__ import annotations

from .ops import astype, reshape
from .ops import digamma
from .ops import digamma as psi
from .ops import entr, erf, erfc, erfcx, erfinv, exp2, expm1, i0, i0e, i1, i1e, log1p
from .ops import igamma as gammainc
from .ops import igammac as gammaincc
from .ops import lgamma as gammaln
from .ops import log_ndtr, logit, multigammaln, ndtr, ndtri, polygamma, sinc, xlog1py, xlogy
from .ops import log_softmax as _log_softmax
from .ops import logsumexp as _logsumexp
from .ops import round as _round
from .ops import sigmoid as expit
from .ops import softmax as _softmax
from .ops import zeta

__all__ = [
    "digamma", "entr", "erf", "erfc", "erfcx", "erfinv", "exp2", "expit", "expm1", "gammainc",
    "gammaincc", "gammaln", "i0", "i0e", "i1", "i1e", "log1p", "log_ndtr", "log_softmax",
    "logit", "logsumexp", "multigammaln", "ndtr", "ndtri", "polygamma", "psi", "round", "sinc",
    "softmax", "xlog1py", "xlogy", "zeta",
]


def _scalar_as_vector(f, input, dim, *args):
    """``f`` on a 0-d input as on one element along ``dim`` 0 or -1 (PyTorch's rule)."""
    if input.ndim == 0 and isinstance(dim, int) and dim in (0, -1):
        return reshape(f(reshape(input, (1,)), 0, *args), ())
    return f(input, dim, *args)


def logsumexp(input, dim, keepdim: bool = False):
    """log(sum(exp(input))) over ``dim`` (an int or a tuple), computed stably."""
    return _scalar_as_vector(_logsumexp, input, dim, keepdim)


def softmax(input, dim: int, *, dtype=None):
    """Softmax along ``dim``; ``dtype`` casts the input first (as PyTorch)."""
    return _scalar_as_vector(_softmax, input if dtype is None else astype(input, dtype), dim)


def log_softmax(input, dim: int, *, dtype=None):
    """log(softmax) along ``dim``, computed stably; ``dtype`` casts the input first."""
    return _scalar_as_vector(_log_softmax, input if dtype is None else astype(input, dtype),
                             dim)


def round(input, *, decimals: int = 0):
    """Round half to even, to ``decimals`` decimal places (negative: to tens, hundreds, ...),
    by PyTorch's formula: round(x * 10**d) / 10**d (round(x / 10**-d) * 10**-d for d < 0)."""
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        raise TypeError(f"round: decimals must be an int, got {type(decimals).__name__}")
    if decimals == 0:
        return _round(input)
    if decimals > 0:
        scale = 10.0 ** decimals
        return _round(input * scale) / scale
    scale = 10.0 ** -decimals
    return _round(input / scale) * scale
