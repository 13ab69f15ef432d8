"""PyTorch's ``torch.special`` namespace: special functions under their SciPy/PyTorch names.

>>> import nodegrad as ng
>>> ng.special.expit(ng.tensor([0.0]))
tensor([0.5])
"""

from __future__ import annotations

from ._backend import bfloat16 as _BF16
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
from .ops.special import (airy_ai, bessel_j0, bessel_j1, bessel_y0, bessel_y1,
                          modified_bessel_k0, modified_bessel_k1, orthogonal_polynomial,
                          scaled_modified_bessel_k0, scaled_modified_bessel_k1,
                          spherical_bessel_j0)
from .ops import keywords as _keywords
from .tensor import Tensor, take_out

__all__ = [
    "airy_ai", "bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "chebyshev_polynomial_t",
    "chebyshev_polynomial_u", "chebyshev_polynomial_v", "chebyshev_polynomial_w",
    "hermite_polynomial_h", "hermite_polynomial_he", "laguerre_polynomial_l",
    "legendre_polynomial_p", "modified_bessel_i0", "modified_bessel_i1", "modified_bessel_k0",
    "modified_bessel_k1", "scaled_modified_bessel_k0", "scaled_modified_bessel_k1",
    "shifted_chebyshev_polynomial_t", "shifted_chebyshev_polynomial_u",
    "shifted_chebyshev_polynomial_v", "shifted_chebyshev_polynomial_w", "spherical_bessel_j0",
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


def softmax(input, dim: int, dtype=None):
    """Softmax along ``dim``; ``dtype`` casts the input first (as PyTorch, whose
    ``special.softmax`` takes it positionally too, unlike ``log_softmax``)."""
    return _scalar_as_vector(_softmax, input if dtype is None else astype(input, dtype), dim)


def log_softmax(input, dim: int, *, dtype=None):
    """log(softmax) along ``dim``, computed stably; ``dtype`` casts the input first."""
    return _scalar_as_vector(_log_softmax, input if dtype is None else astype(input, dtype),
                             dim)


def round(input, *, decimals: int = 0):
    """Round half to even, to ``decimals`` decimal places (negative: to tens, hundreds, ...),
    by PyTorch's formula (``ng.round``'s, which this is with keyword-only ``decimals``)."""
    return _round(input, decimals)


def modified_bessel_i0(input):
    """The modified Bessel function of the first kind, order 0 (``i0``); d/dx = i1."""
    return i0(input)


def modified_bessel_i1(input):
    """The modified Bessel function of the first kind, order 1 (``i1``); d/dx = i0 - i1/x."""
    return i1(input)


# --- classical orthogonal polynomials, PyTorch's (input, n) signature ---------------------------
def _polynomial(op: str, kind: str, input, n):
    """P_n(input) for a tensor or number ``input`` and degree ``n`` (a tensor or number,
    broadcast, truncated towards 0; negative degrees give 0). Differentiable in ``input``."""
    for name, v in (("input", input), ("n", n)):
        if not isinstance(v, Tensor) and (isinstance(v, bool | complex)
                                          or not isinstance(v, int | float)):
            raise TypeError(f"{op}: {name} must be a tensor or a real number, got "
                            f"{type(v).__name__}")
        if isinstance(v, Tensor) and v.dtype == _BF16:
            raise TypeError(f"{op}: bfloat16 is not supported (as PyTorch); convert {name} "
                            "with .float()")
        if isinstance(v, Tensor) and v.dtype.kind not in "biuf":
            raise TypeError(f"{op}: {name} must be a real tensor, got {v.dtype}")
    if not isinstance(input, Tensor) and not isinstance(n, Tensor):
        raise TypeError(f"{op}: expected input or n to be a tensor, got two numbers")
    return orthogonal_polynomial(input, n, kind=kind, order=0)


def chebyshev_polynomial_t(input, n):
    """The Chebyshev polynomial of the first kind T_n(x): T_n(cos t) = cos(n t)."""
    return _polynomial("chebyshev_polynomial_t", "chebyshev_t", input, n)


def chebyshev_polynomial_u(input, n):
    """The Chebyshev polynomial of the second kind U_n: U_n(cos t) = sin((n+1)t) / sin t."""
    return _polynomial("chebyshev_polynomial_u", "chebyshev_u", input, n)


def chebyshev_polynomial_v(input, n):
    """The Chebyshev polynomial of the third kind V_n: V_n(cos t) = cos((n+1/2)t) / cos(t/2)."""
    return _polynomial("chebyshev_polynomial_v", "chebyshev_v", input, n)


def chebyshev_polynomial_w(input, n):
    """The Chebyshev polynomial of the fourth kind W_n: W_n(cos t) = sin((n+1/2)t) / sin(t/2)."""
    return _polynomial("chebyshev_polynomial_w", "chebyshev_w", input, n)


def shifted_chebyshev_polynomial_t(input, n):
    """T_n(2x - 1): the first-kind Chebyshev polynomial moved to [0, 1]."""
    return _polynomial("shifted_chebyshev_polynomial_t", "shifted_chebyshev_t", input, n)


def shifted_chebyshev_polynomial_u(input, n):
    """U_n(2x - 1): the second-kind Chebyshev polynomial moved to [0, 1]."""
    return _polynomial("shifted_chebyshev_polynomial_u", "shifted_chebyshev_u", input, n)


def shifted_chebyshev_polynomial_v(input, n):
    """V_n(2x - 1): the third-kind Chebyshev polynomial moved to [0, 1]."""
    return _polynomial("shifted_chebyshev_polynomial_v", "shifted_chebyshev_v", input, n)


def shifted_chebyshev_polynomial_w(input, n):
    """W_n(2x - 1): the fourth-kind Chebyshev polynomial moved to [0, 1]."""
    return _polynomial("shifted_chebyshev_polynomial_w", "shifted_chebyshev_w", input, n)


def hermite_polynomial_h(input, n):
    """The physicists' Hermite polynomial H_n (H_{k+1} = 2x H_k - 2k H_{k-1}); NaN past
    degree 512 (128 in float32), as PyTorch."""
    return _polynomial("hermite_polynomial_h", "hermite_h", input, n)


def hermite_polynomial_he(input, n):
    """The probabilists' Hermite polynomial He_n (He_{k+1} = x He_k - k He_{k-1}); NaN past
    degree 512 (128 in float32), as PyTorch."""
    return _polynomial("hermite_polynomial_he", "hermite_he", input, n)


def laguerre_polynomial_l(input, n):
    """The Laguerre polynomial L_n ((k+1) L_{k+1} = (2k+1-x) L_k - k L_{k-1})."""
    return _polynomial("laguerre_polynomial_l", "laguerre_l", input, n)


def legendre_polynomial_p(input, n):
    """The Legendre polynomial P_n ((k+1) P_{k+1} = (2k+1) x P_k - k P_{k-1})."""
    return _polynomial("legendre_polynomial_p", "legendre_p", input, n)


take_out(globals(), """
    chebyshev_polynomial_t chebyshev_polynomial_u chebyshev_polynomial_v
    chebyshev_polynomial_w hermite_polynomial_h hermite_polynomial_he laguerre_polynomial_l
    legendre_polynomial_p logit logsumexp modified_bessel_i0 modified_bessel_i1 multigammaln
    polygamma round shifted_chebyshev_polynomial_t shifted_chebyshev_polynomial_u
    shifted_chebyshev_polynomial_v shifted_chebyshev_polynomial_w spherical_bessel_j0
""", "special.")

# PyTorch's keyword names: its schemas call most operands ``self`` (``input`` from Python, which
# takes ``x`` too), the Bessel-type functions added later ``x``, the polynomials ``x, n``
_EITHER = (("input", "x"),)
_keywords.apply(globals(), None, {
    **{n: _EITHER for n in """entr erfcx i0e i1 i1e ndtr ndtri log_ndtr bessel_j0 bessel_j1
        bessel_y0 bessel_y1 modified_bessel_i0 modified_bessel_i1 modified_bessel_k0
        modified_bessel_k1""".split()},
    **{n: ("x",) for n in """scaled_modified_bessel_k0 scaled_modified_bessel_k1 airy_ai
        spherical_bessel_j0""".split()},
    "xlog1py": ("input", "other"), "zeta": ("input", "other"),
    **{n: (("x", "input"), "n") for n in """chebyshev_polynomial_t chebyshev_polynomial_u
        chebyshev_polynomial_v chebyshev_polynomial_w shifted_chebyshev_polynomial_t
        shifted_chebyshev_polynomial_u shifted_chebyshev_polynomial_v
        shifted_chebyshev_polynomial_w hermite_polynomial_h hermite_polynomial_he
        laguerre_polynomial_l legendre_polynomial_p""".split()},
})
