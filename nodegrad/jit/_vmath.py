"""Vectorisable float32 tanh, sin and cos for the CPU kernels (the C library's are scalar calls).

Each function widens its float32 argument to float64, evaluates there with only arithmetic,
comparisons and selections (no calls, no branches, so LLVM vectorises the kernel's loop), and
rounds once to float32: the float64 error (< 1e-10 relative) is far below float32's half ulp, so
results are the correctly rounded ones but for rare near-ties. Exhaustive sweeps against float64
libm: tanh at most 0.5003 ulps (776 of the 2.1e9 positive floats not correctly rounded), sin and
cos correctly rounded for every |x| <= SINCOS_MAX (tests/test_jit_vmath.py sweeps a sample).
``SOURCE`` is pasted into each kernel module that uses them, so the kernel cache key (a hash of
the module's source) changes with it. sin and cos reduce exactly only for |x| <= SINCOS_MAX:
a kernel flags other arguments (and NaN, inf) and is then rerun with the C library's functions.

``_vtanh32`` is the exception: a tanh evaluated in float32 itself (twice the lanes of the float64
ones), within 1.5 ulps like NumPy's own, for the GRU loop kernels (:mod:`.loops`), which take
three tanh per hidden unit and step and would otherwise spend most of their time in them.
"""

from __future__ import annotations

SINCOS_MAX = 2.0 ** 24  # the three-part reduction below is exact up to here (k < 2**24)

SOURCE = '''
# --- vectorisable float32 tanh, sin, cos (nodegrad/jit/_vmath.py) ---
from llvmlite import ir as _v_ir
from numba.core import cgutils as _v_cgutils
from numba.extending import intrinsic as _v_intrinsic


@_v_intrinsic
def _vfma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma: one instruction, vectorised like the rest), for three
    float64 or three float32 operands."""
    if not (a == b == c and a in (numba.float64, numba.float32)):
        return None
    wide = a == numba.float64

    def codegen(context, builder, signature, args):
        t = _v_ir.DoubleType() if wide else _v_ir.FloatType()
        f = _v_cgutils.get_or_insert_function(builder.module, _v_ir.FunctionType(t, [t] * 3),
                                             "llvm.fma.f64" if wide else "llvm.fma.f32")
        return builder.call(f, args)

    return a(a, a, a), codegen

_V_MAGIC = 6755399441055744.0  # 1.5 * 2**52: x + MAGIC - MAGIC rounds x to an integer
_V_LOG2E = 1.4426950408889634
_V_LN2_HI = 0.6931471803691238  # ln 2 in 32 bits: k * LN2_HI is exact
_V_LN2_LO = 1.9082149292705877e-10
_V_2_PI = 0.6366197723675814
_V_PIO2_1 = 1.570796325802803  # pi/2 = PIO2_1 + PIO2_2 + PIO2_3, 29 + 29 + 53 bits
_V_PIO2_2 = 9.920935774287987e-10
_V_PIO2_3 = 2.2517417741562176e-18
_V_SINCOS_MAX = 16777216.0


@numba.njit
def _vexp_neg(y):
    """exp(y) for y in [-21, 0] (float64): y = k ln2 + r, |r| <= ln2/2, Taylor to r**9."""
    k = (y * _V_LOG2E + _V_MAGIC) - _V_MAGIC
    r = _vfma(-k, _V_LN2_LO, _vfma(-k, _V_LN2_HI, y))
    p = 2.7557319223985893e-06
    p = _vfma(p, r, 2.48015873015873e-05)
    p = _vfma(p, r, 0.0001984126984126984)
    p = _vfma(p, r, 0.001388888888888889)
    p = _vfma(p, r, 0.008333333333333333)
    p = _vfma(p, r, 0.041666666666666664)
    p = _vfma(p, r, 0.16666666666666666)
    p = _vfma(p, r, 0.5)
    p = _vfma(p, r, 1.0)
    p = _vfma(p, r, 1.0)
    scale = numpy.int64((numpy.int64(k) + 1023) << 52).view(numpy.float64)
    return p * scale


@numba.njit
def _vtanh(x):
    """tanh of a float32, in float64: a Taylor polynomial below 1/8, (1 - e)/(1 + e) with
    e = exp(-2|x|) above, |x| clamped at 10 (tanh is 1.0f from 9.01 on)."""
    y = numpy.float64(x)
    a = abs(y)
    s = a if a <= 10.0 else 10.0  # inf and NaN too (NaN is put back at the end)
    e = _vexp_neg(-2.0 * s)
    t = (1.0 - e) / (1.0 + e)
    s2 = s * s
    p = 0.021869488536155203
    p = _vfma(p, s2, -0.05396825396825397)
    p = _vfma(p, s2, 0.13333333333333333)
    p = _vfma(p, s2, -0.3333333333333333)
    p = _vfma(s, s2 * p, s)
    t = p if s < 0.125 else t
    return numpy.float32(math.copysign(t, y)) if x == x else x


_V_F32 = numpy.float32


@numba.njit(inline="always")
def _vtanh32(x):
    """tanh of a float32 evaluated in float32 (16 lanes a vector, where _vtanh has 8), within
    1.5 ulps as NumPy's own: an odd polynomial below atanh(1/2), (1 - e)/(1 + e) with
    e = exp(-2|x|) = 2**k p(r) above, |x| clamped at 9 (tanh is 1.0f from 9.01 on)."""
    t = min(abs(x), _V_F32(9.0))
    u = t * t
    p = _vfma(u, _V_F32(-0.006269583334880303), _V_F32(0.02106762132656632))
    p = _vfma(p, u, _V_F32(-0.05385109097626726))
    p = _vfma(p, u, _V_F32(0.13332571510023208))
    p = _vfma(p, u, _V_F32(-0.33333316991545575))
    small = _vfma(t * u, p, t)
    m = t * _V_F32(-2.0)
    k = _vfma(m, _V_F32(1.4426950408889634), _V_F32(12582912.0))
    k = k - _V_F32(12582912.0)  # m log2(e) rounded to an integer
    r = _vfma(k, _V_F32(-0.693145751953125), m)  # m - k ln 2, ln 2 in two parts
    r = _vfma(k, _V_F32(-1.428606765330187e-06), r)
    q = _vfma(r, _V_F32(0.0013751408180418467), _V_F32(0.008368919081647441))
    q = _vfma(q, r, _V_F32(0.041669533395562716))
    q = _vfma(q, r, _V_F32(0.16666518437203998))
    q = _vfma(q, r, _V_F32(0.49999988592958267))
    q = _vfma(q, r, _V_F32(1.0))
    q = _vfma(q, r, _V_F32(1.0))
    e = q * numpy.int32((numpy.int32(k) + 127) << 23).view(numpy.float32)
    big = (_V_F32(1.0) - e) / (_V_F32(1.0) + e)
    v = small if t < _V_F32(0.5493061443340549) else big
    return math.copysign(v, x) if x == x else x


@numba.njit
def _vsincos(x, odd):
    """sin (odd=0) or cos (odd=1) of a float32 with |x| <= SINCOS_MAX, in float64: x = k pi/2
    + r, exactly (three-part Cody-Waite), Taylor polynomials on |r| <= pi/4."""
    y = numpy.float64(x)
    y = y if abs(y) <= _V_SINCOS_MAX else 0.0  # flagged by _vbad, rerun with libm
    k = (y * _V_2_PI + _V_MAGIC) - _V_MAGIC
    r = _vfma(-k, _V_PIO2_3, _vfma(-k, _V_PIO2_2, _vfma(-k, _V_PIO2_1, y)))
    r2 = r * r
    s = -7.647163731819816e-13
    s = _vfma(s, r2, 1.6059043836821613e-10)
    s = _vfma(s, r2, -2.505210838544172e-08)
    s = _vfma(s, r2, 2.7557319223985893e-06)
    s = _vfma(s, r2, -0.0001984126984126984)
    s = _vfma(s, r2, 0.008333333333333333)
    s = _vfma(s, r2, -0.16666666666666666)
    s = _vfma(r, r2 * s, r)
    c = 4.779477332387385e-14
    c = _vfma(c, r2, -1.1470745597729725e-11)
    c = _vfma(c, r2, 2.08767569878681e-09)
    c = _vfma(c, r2, -2.755731922398589e-07)
    c = _vfma(c, r2, 2.48015873015873e-05)
    c = _vfma(c, r2, -0.001388888888888889)
    c = _vfma(c, r2, 0.041666666666666664)
    c = _vfma(c, r2, -0.5)
    c = _vfma(r2, c, 1.0)
    q = numpy.int64(k) + odd
    v = c if q & 1 else s
    return numpy.float32(-v if q & 2 else v)


@numba.njit
def _vsin(x):
    """sin x; x itself below 2**-12 (where it is the rounded sin x), which keeps -0.0."""
    v = _vsincos(x, 0)
    return x if abs(x) < 0.000244140625 else v


@numba.njit
def _vcos(x):
    return _vsincos(x, 1)


@numba.njit
def _vbad(x):
    """Whether sin/cos of ``x`` must come from the C library (NaN, inf, |x| > SINCOS_MAX)."""
    return not (abs(x) <= _V_SINCOS_MAX)
# --- end of vectorisable functions ---
'''

# float32 kernels: op -> template calling SOURCE's functions (the others keep fuse's)
TEMPLATES32 = {
    "tanh": "_vtanh({a})",
    "sin": "_vsin({a})",
    "cos": "_vcos({a})",
    "sin_grad": "({a} * _vcos({b}))",
    "cos_grad": "(-({a} * _vsin({b})))",
}
# ops whose argument (a or b) must be checked with _vbad: the kernel is rerun with the C library
# when one is out of range
RANGED = {"sin": "a", "cos": "a", "sin_grad": "b", "cos_grad": "b"}
