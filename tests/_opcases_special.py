"""Op-matrix cases of :mod:`nodegrad.ops.special` (appended to ``_opcases.CASES``)."""

from __future__ import annotations

import functools

import numpy as np
from _opcases import (
    DOMAINS,
    FORWARD,
    INTEGER_ONLY,
    MIXED_FORMS,
    NARY,
    SCALAR_FORMS,
    UNARY,
    Call,
    Forward,
    _f,
    _fw_inputs,
    _like_torch,
    arr,
    case,
    ew,
    shapes,
    torch,
)
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nodegrad as ng

DOMAINS.update({
    # lgamma, digamma, polygamma: positive, and negative at least 0.1 from the poles
    "gamma": st.one_of(_f(0.1, 4), st.builds(lambda k, f: k + f, st.integers(-3, -1),
                                             _f(0.1, 0.9))),
    # logit with eps = 0.25: away from the clamp's edges, where the gradient jumps to 0
    "logit_eps": _f(0.05, 0.95).filter(lambda v: abs(v - 0.25) > 0.05 and abs(v - 0.75) > 0.05),
    # frexp: +-m 2**e with 0.55 <= m <= 0.95, away from the powers of two where e steps
    "frexp": st.builds(lambda s, m, e: s * m * 2.0 ** e, st.sampled_from([-1.0, 1.0]),
                       _f(0.55, 0.95), st.integers(-3, 3)),
    "zeta_s": _f(1.5, 4),  # the Hurwitz zeta's exponent: > 1, where the series converges
})

# the gamma family
ew("lgamma", ng.lgamma, lambda t: torch.lgamma(t), "gamma")
ew("digamma", ng.digamma, lambda t: torch.digamma(t), "gamma")
ew("polygamma", lambda x: ng.polygamma(1, x), lambda t: torch.polygamma(1, t), "gamma")
ew("polygamma_3", lambda x: ng.polygamma(3, x), lambda t: torch.polygamma(3, t), "pos",
   prims=("polygamma",))
ew("mvlgamma", lambda x: ng.mvlgamma(x, 3), lambda t: torch.mvlgamma(t, 3), "gt1",
   prims=("lgamma",))
# the error function family and the normal distribution
ew("erfc", ng.erfc, lambda t: torch.erfc(t), "wide")
ew("erfinv", ng.erfinv, lambda t: torch.erfinv(t), "unit")
ew("erfcx", ng.erfcx, lambda t: torch.special.erfcx(t), "wide")
ew("ndtr", ng.ndtr, lambda t: torch.special.ndtr(t), "wide")
ew("ndtri", ng.ndtri, lambda t: torch.special.ndtri(t), "prob")
ew("log_ndtr", ng.log_ndtr, lambda t: torch.special.log_ndtr(t), "wide")
# modified Bessel functions (the scaled ones have a kink at 0: exp(-|x|))
ew("i0", ng.i0, lambda t: torch.i0(t), "wide")
ew("i0e", ng.i0e, lambda t: torch.special.i0e(t), "kink0")
ew("i1", ng.i1, lambda t: torch.special.i1(t), "wide")
ew("i1e", ng.i1e, lambda t: torch.special.i1e(t), "kink0")
# logit, entropy, xlog1py, NaN-ignoring max/min
ew("logit", ng.logit, lambda t: torch.logit(t), "prob")
ew("logit_eps", lambda x: ng.logit(x, 0.25), lambda t: torch.logit(t, 0.25), "logit_eps",
   prims=("logit",))
ew("entr", ng.entr, lambda t: torch.special.entr(t), "pos")
ew("xlog1py", ng.xlog1py, lambda x, y: torch.special.xlog1py(x, y), "nonzero", "log1p")
ew("fmax", ng.fmax, lambda x, y: torch.fmax(x, y), "grid", "offgrid")
ew("fmin", ng.fmin, lambda x, y: torch.fmin(x, y), "offgrid", "grid")
# composites: float arithmetic
ew("frexp", lambda x: ng.frexp(x).mantissa, lambda t: torch.frexp(t).mantissa, "frexp",
   prims=("divide",))
ew("ldexp", ng.ldexp, lambda x, e: torch.ldexp(x, e), "real", "real", prims=("multiply", "power"))
ew("float_power", ng.float_power, lambda x, y: torch.float_power(x, y), "pos", "real",
   prims=("power",))


def _second_only(name, fn, tfn, const, domain):
    """A binary op differentiable in its second operand only (PyTorch defines no gradient in
    the first): the first is a constant of the call, in the drawn input's dtype."""
    def build(draw, layout):
        sa, sx = draw(shapes(layout, 2))
        a = arr(draw, sa, const)
        return Call(lambda x: fn(ng.tensor(a.astype(x.dtype)), x), (arr(draw, sx, domain),),
                    lambda t: tfn(torch.tensor(a, dtype=t.dtype), t))

    case(name, build, (name,), NARY)


_second_only("igamma", ng.igamma, lambda a, x: torch.igamma(a, x), "pos", "pos")
_second_only("igammac", ng.igammac, lambda a, x: torch.igammac(a, x), "pos", "pos")
_second_only("zeta", ng.zeta, lambda s, q: torch.special.zeta(s, q), "zeta_s", "pos")
# Bessel and Airy functions, orthogonal polynomials: PyTorch has no gradient for them, so the
# matrix checks nodegrad's against finite differences only (values: test_special_more.py)
def _own(name, fn, domain, prims=None):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        return Call(fn, (arr(draw, s, domain),))

    case(name, build, prims, UNARY)


_S = ng.special
_own("bessel_j0", _S.bessel_j0, "wide")
_own("bessel_j1", _S.bessel_j1, "wide")
_own("bessel_y0", _S.bessel_y0, "pos")
_own("bessel_y1", _S.bessel_y1, "pos")
_own("modified_bessel_k0", _S.modified_bessel_k0, "pos")
_own("modified_bessel_k1", _S.modified_bessel_k1, "pos")
_own("scaled_modified_bessel_k0", _S.scaled_modified_bessel_k0, "pos")
_own("scaled_modified_bessel_k1", _S.scaled_modified_bessel_k1, "pos")
_own("airy_ai", _S.airy_ai, "wide")
_own("airy_ai_prime", ng.primitives["airy_ai_prime"], "wide")
_own("spherical_bessel_j0", _S.spherical_bessel_j0, "wide", prims=("sin", "where"))
for _k, _n in (("chebyshev_polynomial_t", 7), ("chebyshev_polynomial_u", 3),
               ("chebyshev_polynomial_v", 4), ("chebyshev_polynomial_w", 5),
               ("shifted_chebyshev_polynomial_t", 3), ("shifted_chebyshev_polynomial_u", 9),
               ("hermite_polynomial_h", 4), ("hermite_polynomial_he", 5),
               ("laguerre_polynomial_l", 6), ("legendre_polynomial_p", 5)):
    _own(_k, functools.partial(getattr(_S, _k), n=_n), "prob" if "shifted" in _k else "real",
         prims=("orthogonal_polynomial",))


def _poly_tensor_n(draw, layout):
    """A tensor of degrees (0 to 6, negative ones too) broadcast against x."""
    sx, sn = draw(shapes(layout, 2))
    n = draw(hnp.arrays(np.int64, sn, elements=st.integers(-1, 6)))
    return Call(lambda x: _S.shifted_chebyshev_polynomial_w(x, ng.tensor(n)),
                (arr(draw, sx, "prob"),))


case("orthogonal_polynomial", _poly_tensor_n, layouts=NARY)
# nodegrad.special's own wrappers
ew("special_softmax", lambda x: ng.special.softmax(x, -1),
   lambda t: torch.special.softmax(t, -1), "wide", prims=("softmax",))
ew("special_logsumexp", lambda x: ng.special.logsumexp(x, -1, True),
   lambda t: torch.special.logsumexp(t, -1, True), "wide", prims=("logsumexp",))
ew("special_log_softmax", lambda x: ng.special.log_softmax(x, -1),
   lambda t: torch.special.log_softmax(t, -1), "wide", prims=("log_softmax",))


# --- primitives without a gradient -----------------------------------------------------------
def _heaviside_ref(x, v):
    """np.heaviside with PyTorch's NaN (0: NaN is not positive) and the operands' dtype."""
    with np.errstate(invalid="ignore"):
        out = np.where(np.isnan(x), 0, np.heaviside(x, v))
    return out.astype(np.result_type(x, v))


def _heaviside_build(draw):
    kind = draw(st.sampled_from(["special", "int"]))  # one dtype for both, as PyTorch requires
    return _fw_inputs(kind, kind)(draw)


FORWARD.append(Forward("nextafter", ng.nextafter, np.nextafter,
                       _fw_inputs("special", "special")))
for _n in ("gcd", "lcm"):
    FORWARD.append(Forward(_n, getattr(ng, _n), _like_torch(getattr(np, _n)),
                           _fw_inputs(("int", "int8"), ("int", "uint8"))))
FORWARD.append(Forward("frexp_exponent", lambda x: ng.frexp(x).exponent,
                       lambda x: np.frexp(x)[1].astype(np.int32), _fw_inputs("special")))
FORWARD.append(Forward("heaviside", ng.heaviside, _heaviside_ref, _heaviside_build))

INTEGER_ONLY |= {"gcd", "lcm"}
SCALAR_FORMS.update({
    "polygamma": [lambda x: ng.polygamma(1, x), lambda x: ng.polygamma(3, x)],
    "logit": [ng.logit, lambda x: ng.logit(x, 0.25)],
    "xlog1py": [lambda x: ng.xlog1py(x, 2.0), lambda x: ng.xlog1py(2.0, x)],
    "igamma": [lambda x: ng.igamma(x, 1.5), lambda x: ng.igamma(2.0, x)],
    "igammac": [lambda x: ng.igammac(x, 1.5), lambda x: ng.igammac(2.0, x)],
    "zeta": [lambda x: ng.zeta(x, 2.0), lambda x: ng.zeta(2.5, x)],
    "fmax": [lambda x: ng.fmax(x, 0.5), lambda x: ng.fmax(0.5, x)],
    "fmin": [lambda x: ng.fmin(x, 0.5), lambda x: ng.fmin(0.5, x)],
    "nextafter": [lambda x: ng.nextafter(x, 2.0), lambda x: ng.nextafter(0.5, x)],
    "heaviside": [lambda x: ng.heaviside(x, 0.5)],
    **{n: [getattr(ng.special, n)] for n in (
        "bessel_j0", "bessel_j1", "bessel_y0", "bessel_y1", "modified_bessel_k0",
        "modified_bessel_k1", "scaled_modified_bessel_k0", "scaled_modified_bessel_k1",
        "airy_ai")},
    "airy_ai_prime": [ng.primitives["airy_ai_prime"]],
    "orthogonal_polynomial": [lambda x: ng.special.legendre_polynomial_p(x, 3),
                              lambda x: ng.special.hermite_polynomial_h(0.5, x),
                              lambda x: ng.special.chebyshev_polynomial_t(x, ng.tensor(2))],
})
MIXED_FORMS.update({
    "xlog1py": ng.xlog1py, "igamma": ng.igamma, "igammac": ng.igammac, "zeta": ng.zeta,
    "fmax": ng.fmax, "fmin": ng.fmin, "nextafter": ng.nextafter, "heaviside": ng.heaviside,
})
