"""Numba loops for the eager ops that NumPy runs in more than one pass over memory (or in
many small calls).

``relu`` (NumPy's ``maximum`` against zero checks for NaN and, against kept zeros, reads a
third array) and ``relu_grad`` (a multiply by a boolean mask, which NumPy casts first: two
passes and a temporary) each become one loop that reads its inputs once and writes its result
once: 1.5-2x faster for arrays that are no longer in cache; ``add_bias_relu`` adds a linear
layer's bias and applies the ReLU after it in one pass over the product. Softmax cross-entropy
on narrow rows (``ce_shift``, ``ce_grad``) takes two loops around NumPy's ``exp``, ``log`` and
sums in place of a dozen short NumPy calls. ``outer_stack`` writes stacks of outer products (a
vmap'ed layer's per-example weight gradients) row by row, where NumPy's einsum and broadcast
multiply run 3-8x slower. ``fold_taps_1d``/``_2d`` add a strided transposed convolution's per-tap
products into its input gradient in one pass, where NumPy zeroes a padded buffer and makes one
strided add per tap. ``im2col_2d`` gathers a convolution's windows (one or two spatial axes)
in one pass that copies whole runs and writes the padding's zeros in place, where NumPy zeroes
a padded copy and then gathers the strided windows. :mod:`._backend` calls them only
when numba is imported already (by a fused optimiser, a compiled program): importing numba
costs ~0.5 s, more than these loops save in thousands of steps. Compiled with ``cache=True``,
so later processes load the machine code from disk.

Each loop computes every element with NumPy's operations in NumPy's order and in the arrays'
dtype, so the bits are NumPy's (an outer product is one multiply per element):
``maximum(x, 0)`` keeps ``x`` where it is greater or NaN, else returns the zero (so ``-0.0``
becomes ``0.0``); ``g * (ans != 0)`` multiplies by one or zero; a fold adds each element's
taps to a zero in NumPy's tap order. ``erf32`` is float32 erf in float32 arithmetic (three
polynomial pieces, all computed and then selected, so the loop vectorises), with the bits of
:mod:`._backend`'s NumPy form of the same operations; ``gelu32`` and ``gelu32_grad`` inline it
into the exact GELU's forward and VJP; ``exp32_neg`` (exp of non-positive float32 arguments in
float32 arithmetic) computes GELU's density for the VJP (``gelu32_density``) likewise.
The cross-entropy loops leave every transcendental function and every sum to NumPy; what they
compute (row maxima, shifts, picks, quotients) is exact or one rounding in the dtype.
"""

from __future__ import annotations

import math

import numba
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_U = numba.uint64  # an unsigned index: no wraparound check
_OPTS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


@intrinsic
def _wide(typingctx):
    """Marks the kernel that calls it to vectorise with the widest registers the CPU has.

    LLVM's tuning for Intel's AVX-512 chips prefers 256-bit vectors (its
    ``prefer-vector-width``, to spare the clock speed that 512-bit work can cost), so these
    loops ran 8 float32 lanes on such chips. The long polynomial loops (erf, exp, the GELU
    and its VJP) and attention's row loops take 8-12 % less time on 16 (the GELU of 768 × 512
    float32: 380 against 420 µs on one thread), and they run between OpenBLAS's products,
    whose AVX-512 kernels use those units anyway; the short-row loops (layer norm's rows of
    128) ran slower, so only the former call it. On AVX2 it changes nothing. Each element's
    operations stay the same (no contraction, no reordering: LLVM vectorises no in-order sum
    without ``fastmath``), so the bits do too."""
    def codegen(context, builder, signature, args):
        # llvmlite's FunctionAttributes accepts only LLVM's keyword attributes: the string
        # attribute goes into the set as LLVM's IR writes it
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen


@numba.njit(**_OPTS)
def relu(x, out, zero):
    """``out = maximum(x, zero)`` over flat arrays, ``zero`` a 0 of their dtype."""
    for i in range(x.size):
        a = x[i]
        out[i] = a if (a > zero or a != a) else zero


@numba.njit(**_OPTS)
def add_bias(m, b, down):
    """``m += b`` in place for a C-ordered matrix ``m``: ``b`` along each row (m[i, j] += b[j]),
    or with ``down`` down each column (m[i, j] += b[i], a transposed view's rows)."""
    n, k = m.shape
    if down:
        for i in range(n):
            bi = b[i]
            for j in range(k):
                m[i, j] += bi
    else:
        for i in range(n):
            for j in range(k):
                m[i, j] += b[j]


@numba.njit(**_OPTS)
def add_bias_relu(m, b, down, zero):
    """``m = maximum(m + b, zero)`` in place, ``b`` laid along as in :func:`add_bias`: a linear
    layer's bias and the ReLU after it in the pass that adds the bias (the same adds and
    maxima, so the bits of the two ops)."""
    n, k = m.shape
    if down:
        for i in range(n):
            bi = b[i]
            for j in range(k):
                a = m[i, j] + bi
                m[i, j] = a if (a > zero or a != a) else zero
    else:
        for i in range(n):
            for j in range(k):
                a = m[i, j] + b[j]
                m[i, j] = a if (a > zero or a != a) else zero


@numba.njit(**_OPTS)
def relu_grad(g, ans, out, zero, one):
    """``out = g * (ans != 0)`` over flat arrays, ``zero`` and ``one`` of their dtype: ``ans``
    is relu's output (never negative), so a NaN there passes ``g`` as a positive one does."""
    for i in range(g.size):
        out[i] = g[i] * one if ans[i] != zero else g[i] * zero


@numba.njit(**_OPTS)
def scatter_rows(out, index, values):
    """``out[index[i]] += values[i]`` for each row ``i`` in order (``np.add.at``'s order, so its
    bits) on 2-D ``out`` and ``values``; False, writing nothing, where an index is out of
    range (NumPy then raises its error). An embedding's gradient: ~30x faster than add.at."""
    n = out.shape[0]
    for i in range(index.shape[0]):
        if index[i] < -n or index[i] >= n:
            return False
    for i in range(index.shape[0]):
        j = index[i]
        if j < 0:
            j += n
        for c in range(out.shape[1]):
            out[j, c] += values[i, c]
    return True


@numba.njit(**_OPTS)
def ce_shift(x, t, z, picked):
    """``z[j, i] = x[i, j] - max(x[i])`` (z the transposed shift) and ``picked[i] = z[t[i], i]``
    for (n, c) logits ``x`` and n integer targets; returns 1 when a target is not a class
    (0..c-1), 2 when a row's maximum is not finite (NaN or inf: the caller's general path),
    else 0."""
    n, c = x.shape
    for i in range(n):
        ti = t[i]
        if ti < 0 or ti >= c:
            return 1
        m = x[i, 0]
        for j in range(1, c):
            v = x[i, j]
            if v > m or v != v:
                m = v
        if not m - m == 0:
            return 2
        for j in range(c):
            z[j, i] = x[i, j] - m
        picked[i] = z[ti, i]
    return 0


@numba.njit(**_OPTS)
def ce_grad(p, s, t, scale, one):
    """In place, ``p[j, i] = (p[j, i] / s[i] - (j == t[i])) * scale`` for the (c, n)
    exponentials ``p``, their column sums ``s`` and n targets (NumPy's divide, subtract at the
    target and multiply, in that order, in the dtype)."""
    c, n = p.shape
    for j in range(c):
        for i in range(n):
            q = p[j, i] / s[i]
            if t[i] == j:
                q = q - one
            p[j, i] = q * scale


@numba.njit(**_OPTS)
def outer_stack(x, y, out):
    """``out[b, i, j] = x[b, i] * y[b, j]`` for (B, m) ``x``, (B, n) ``y`` and (B, m, n)
    ``out``."""
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            a = x[b, i]
            for j in range(y.shape[1]):
                out[b, i, j] = a * y[b, j]


@numba.njit(**_OPTS)
def fold_taps_1d(parts, out, stride, pad, dil, zero):
    """A strided transposed 1-D convolution's fold: ``out[n, l, c]`` (N, L, C) is ``zero``
    plus, tap by tap in order, ``parts[t, n, p, c]`` (K, N, P, C) for each tap ``t`` whose
    window ``p = (l + pad - t dil) / stride`` is whole and in range: the adds, and their order,
    of zeroing a padded buffer and adding each tap's product into it."""
    nk, nb, npos, nc = parts.shape
    for lo in range(out.shape[1]):
        for b in range(nb):
            for c in range(nc):
                out[b, lo, c] = zero
        for t in range(nk):
            q = lo + pad - t * dil
            if q < 0 or q % stride != 0 or q // stride >= npos:
                continue
            p = q // stride
            for b in range(nb):
                for c in range(nc):
                    out[b, lo, c] += parts[t, b, p, c]


@numba.njit(**_OPTS)
def fold_taps_2d(parts, out, k1, s0, s1, p0, p1, d0, d1, zero):
    """:func:`fold_taps_1d` over two axes, positions first: ``parts`` (K0·K1, P0, P1, N, C)
    with the taps in row-major order (``k1`` taps along the second axis), ``out``
    (L0, L1, N, C). Each add moves a whole (N, C) block: written channels-last, an image's
    C-long runs lie a multiple of 4 KiB apart for some sizes (8 x 8 x 16 floats) and the loop
    ran ~3x slower."""
    nk, n0, n1, nb, nc = parts.shape
    for a in range(out.shape[0]):
        for e in range(out.shape[1]):
            for b in range(nb):
                for c in range(nc):
                    out[a, e, b, c] = zero
            for t in range(nk):
                t0, t1 = t // k1, t % k1
                q0 = a + p0 - t0 * d0
                q1 = e + p1 - t1 * d1
                if (q0 < 0 or q0 % s0 != 0 or q0 // s0 >= n0 or q1 < 0 or q1 % s1 != 0
                        or q1 // s1 >= n1):
                    continue
                i0, i1 = q0 // s0, q1 // s1
                for b in range(nb):
                    for c in range(nc):
                        out[a, e, b, c] += parts[t, i0, i1, b, c]


@numba.njit(inline="always", **_OPTS)
def _span(off, step, m, n):
    """The ``t`` in 0..n-1 with 0 <= off + t step < m, as a range (lo, hi), lo <= hi <= n."""
    if step == 1:  # no division (tens of cycles) for the common case
        lo, hi = max(0, -off), min(n, m - off)
    else:
        lo, hi = max(0, -(off // step)), min(n, -((off - m) // step))
    lo = min(lo, n)
    return lo, max(lo, hi)


@numba.njit(**_OPTS)
def im2col_2d(x, out, dims, s0, s1, p0, p1, d0, d1, taps_first, zero):
    """A convolution's windows, flat: ``x`` the channels-last (N, H, W, C) input, ``out``
    (N, OH, OW, KH, KW, C) with element ``x[n, i s0 - p0 + a d0, j s1 - p1 + b d1, c]``, or
    ``zero`` where that falls in the padding; with ``taps_first`` (one channel) the same
    elements in (KH, KW, C, N, OH, OW) order. ``dims`` = (N, H, W, C, OH, OW, KH,
    KW). Runs of the input are copied as runs: a window row's KW·C elements, or an output
    row's OW. Indices are unsigned (``_U``): numba then adds no negative-index wraparound,
    which kept these copies from vectorising (3-7x slower)."""
    nb, h, w, nc, oh, ow, kh, kw = dims
    o = _U(0)
    if taps_first:  # one channel (the caller's rule)
        for a in range(kh):
            for b in range(kw):
                off = b * d1 - p1
                j0, j1 = _span(off, s1, w, ow)
                for n in range(nb):
                    for i in range(oh):
                        r = i * s0 - p0 + a * d0
                        if r < 0 or r >= h:
                            for j in range(ow):
                                out[o + _U(j)] = zero
                        else:
                            src = _U((n * h + r) * w + off + j0 * s1)
                            for j in range(j0):
                                out[o + _U(j)] = zero
                            dst = o + _U(j0)
                            if s1 == 1:  # runs of the input: a copy that vectorises
                                for j in range(j1 - j0):
                                    out[dst + _U(j)] = x[src + _U(j)]
                            else:
                                for j in range(j1 - j0):
                                    out[dst + _U(j)] = x[src + _U(j * s1)]
                            for j in range(j1, ow):
                                out[o + _U(j)] = zero
                        o += _U(ow)
        return
    row = kw * nc
    for n in range(nb):
        for i in range(oh):
            for j in range(ow):
                off = j * s1 - p1
                b0, b1 = _span(off, d1, w, kw)
                for a in range(kh):
                    r = i * s0 - p0 + a * d0
                    if r < 0 or r >= h:
                        for t in range(row):
                            out[o + _U(t)] = zero
                    else:
                        base = (n * h + r) * w * nc
                        for t in range(b0 * nc):
                            out[o + _U(t)] = zero
                        if d1 == 1:
                            src = _U(base + off * nc)
                            for t in range(b0 * nc, b1 * nc):
                                out[o + _U(t)] = x[src + _U(t)]
                        else:
                            for b in range(b0, b1):
                                src = _U(base + (off + b * d1) * nc)
                                dst = o + _U(b * nc)
                                for c in range(nc):
                                    out[dst + _U(c)] = x[src + _U(c)]
                        for t in range(b1 * nc, row):
                            out[o + _U(t)] = zero
                    o += _U(row)


@numba.njit(inline="always")
def _erf32_of(v, near, mid, tail, ends):
    """erf of float32 ``v`` in float32 arithmetic: ``_backend.erf32``'s three polynomials
    (``near``, ``mid``, ``tail``: 7, 11 and 11 coefficients, highest first) and pieces
    (``ends``: 1, 2.25, ERF32_ONE, then the centres 1.625 and 3), its operations in its order,
    so its bits. Horner's steps spelt out, the near piece and the farther one (mid's or tail's
    coefficients, picked per step: one polynomial's work for the two) computed, then selected,
    not branched to, so that LLVM vectorises the loops that inline it (8 lanes)."""
    one = numba.float32(1)
    a = abs(v)
    u = v * v
    q = near[0]
    q = q * u + near[1]
    q = q * u + near[2]
    q = q * u + near[3]
    q = q * u + near[4]
    q = q * u + near[5]
    q = q * u + near[6]
    small = v + v * q
    m = a < ends[1]
    t = a - (ends[3] if m else ends[4])
    p = mid[0] if m else tail[0]
    p = p * t + (mid[1] if m else tail[1])
    p = p * t + (mid[2] if m else tail[2])
    p = p * t + (mid[3] if m else tail[3])
    p = p * t + (mid[4] if m else tail[4])
    p = p * t + (mid[5] if m else tail[5])
    p = p * t + (mid[6] if m else tail[6])
    p = p * t + (mid[7] if m else tail[7])
    p = p * t + (mid[8] if m else tail[8])
    p = p * t + (mid[9] if m else tail[9])
    p = p * t + (mid[10] if m else tail[10])
    big = one - p
    big = big if a < ends[2] else one
    big = -big if v < numba.float32(0) else big
    res = small if a < ends[0] else big
    return v if v != v else res


@numba.njit(**_OPTS)
def erf32(x, out, near, mid, tail, ends):
    """``out = erf(x)`` for flat float32 arrays (:func:`_erf32_of`)."""
    _wide()
    for i in range(x.size):
        out[i] = _erf32_of(x[i], near, mid, tail, ends)


@numba.njit(**_OPTS)
def gelu32(x, out, near, mid, tail, ends, c, half, one):
    """``out = (half * x) * (one + erf(x * c))`` in float32 (``ops.elementwise``'s exact GELU,
    its operations in its order, ``c`` the float32 1/√2), for flat float32 arrays."""
    _wide()
    for i in range(x.size):
        xi = x[i]
        out[i] = (half * xi) * (one + _erf32_of(xi * c, near, mid, tail, ends))


@intrinsic
def _pow2(typingctx, n):
    """2**n as a float32 for an integral float32 ``n`` in [-126, 127], by its bits."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        k = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(k, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@numba.njit(inline="always")
def _exp32_neg_of(a, poly, consts):
    """exp of float32 ``a`` <= 0 (or NaN) in float32 arithmetic: ``_backend.exp32_neg``'s
    operations in its order, so its bits. ``consts``: the lowest argument kept, log2(e), the
    rounding constant 1.5·2**23, ln 2's two parts, one; ``poly`` e**r's coefficients. The scale
    2**n is made from its bits, in two steps where the result is subnormal; selects, not
    branches, so the loops that inline it vectorise. Below ``lo`` (whose result, as every
    lower argument's, is +0) the result is that 0, selected, and the lane computes e**0: a
    subnormal product costs a microcode assist per element on Intel's cores (the causal
    mask's -inf scores made attention's exp 7x slower there)."""
    lo, log2e, big, c1, c2, one = consts
    zero = numba.float32(0)
    dead = a < lo
    b = zero if dead else a
    b = b if b == b else lo * zero
    n = (b * log2e + big) - big
    r = (b - n * c1) - n * c2
    p = poly[0]
    p = p * r + poly[1]
    p = p * r + poly[2]
    p = p * r + poly[3]
    p = p * r + poly[4]
    p = p * r + poly[5]
    p = (p * (r * r) + r) + one
    low = n < numba.float32(-100)
    s1 = _pow2(n + numba.float32(64) if low else n)
    s2 = numba.float32(2.0 ** -64) if low else one
    res = (p * s1) * s2
    return a if a != a else (zero if dead else res)


@numba.njit(**_OPTS)
def exp32_neg(x, out, poly, consts):
    """``out = exp(x)`` for flat float32 arrays of non-positive values (:func:`_exp32_neg_of`)."""
    _wide()
    for i in range(x.size):
        out[i] = _exp32_neg_of(x[i], poly, consts)


@numba.njit(**_OPTS)
def gelu32_density(x, p, poly, consts, mhalf):
    """``p = exp((x * x) * mhalf)`` (``mhalf`` -1/2), exp as :func:`exp32_neg`: the exact GELU
    VJP's exp, a loop of its own (inlined into :func:`gelu32_grad`'s, the two took 1.4 ms for
    12 x 64 x 512 elements against 1.0 apart)."""
    _wide()
    for i in range(x.size):
        xi = x[i]
        p[i] = _exp32_neg_of((xi * xi) * mhalf, poly, consts)


@numba.njit(**_OPTS)
def gelu32_grad(g, x, p, out, near, mid, tail, ends, c, half, one, c2):
    """``out = g * (cdf + x * pdf)``, ``cdf = (erf(x * c) + one) * half``, ``pdf = p * c2``
    (``p`` from :func:`gelu32_density`, ``c2`` the float32 1/√(2π)), in float32:
    ``ops.elementwise``'s exact GELU VJP, its operations in its order."""
    _wide()
    for i in range(x.size):
        xi = x[i]
        cdf = (_erf32_of(xi * c, near, mid, tail, ends) + one) * half
        out[i] = g[i] * (cdf + xi * (p[i] * c2))


@numba.njit(**_OPTS)
def select(c, a, b, out):
    """``out = where(c, a, b)`` over flat arrays of one dtype, without a branch per element."""
    for i in range(out.size):
        out[i] = a[i] if c[i] else b[i]


@numba.njit(**_OPTS)
def select_else(c, a, b, out):
    """``out = where(c, a, b)`` over flat arrays, ``b`` a scalar of their dtype."""
    for i in range(out.size):
        out[i] = a[i] if c[i] else b


@numba.njit(**_OPTS)
def select_scalars(c, a, b, out):
    """``out = where(c, a, b)`` for two scalars of out's dtype."""
    for i in range(out.size):
        out[i] = a if c[i] else b


@numba.njit(**_OPTS)
def neg_abs(x, out):
    """``out = -|x|`` over flat arrays (sigmoid's argument of exp)."""
    for i in range(x.size):
        out[i] = -abs(x[i])


@numba.njit(**_OPTS)
def sigmoid_of_exp(x, e, out, one):
    """``out = 1 / (1 + e)`` where ``x >= 0``, else ``e / (1 + e)``, ``e = exp(-|x|)``, in the
    arrays' dtype (``one`` a 1 of it): ``ops.elementwise``'s sigmoid after its exp."""
    for i in range(x.size):
        ei = e[i]
        d = one + ei
        out[i] = one / d if x[i] >= 0 else ei / d


@numba.njit(**_OPTS)
def sigmoid_grad(g, ans, out, one):
    """``out = g * ((1 - ans) * ans)`` over flat arrays of one dtype (``one`` a 1 of it)."""
    for i in range(g.size):
        a = ans[i]
        out[i] = g[i] * ((one - a) * a)


@numba.njit(**_OPTS)
def leaky(x, out, slope):
    """``out = x`` where ``x > 0``, else ``x * slope`` (leaky_relu, and its VJP with ``x`` the
    cotangent where ``c`` decides: :func:`leaky_grad`), in the arrays' dtype."""
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@numba.njit(**_OPTS)
def leaky_grad(g, x, out, slope):
    """``out = g`` where ``x > 0``, else ``g * slope``: leaky_relu's VJP."""
    for i in range(x.size):
        v = g[i]
        out[i] = v if x[i] > 0 else v * slope


@numba.njit(**_OPTS)
def silu_of_exp(x, e, out, one, zero, inf):
    """``out = x * (1 / (e + 1))``, ``e = exp(-x)``, with -0.0 at ``x = -inf`` (ops.activation's
    silu forward and its limit, its operations in its order)."""
    for i in range(x.size):
        v = x[i]
        y = v * (one / (e[i] + one))
        out[i] = -zero if v == -inf else y


@numba.njit(**_OPTS)
def silu_grad_of_exp(g, x, e, out, one, zero, inf):
    """``out = ((((1 - s) * x) + 1) * s) * g``, ``s = 1 / (e + 1)``, ``e = exp(-x)``, with the
    limits ``g * 0`` at ``x = -inf`` and ``g`` at ``+inf`` (ops.activation's silu gradient)."""
    for i in range(x.size):
        v, gi = x[i], g[i]
        s = one / (e[i] + one)
        r = (((one - s) * v + one) * s) * gi
        out[i] = gi * zero if v == -inf else (gi if v == inf else r)


@numba.njit(**_OPTS)
def hardswish(x, out, three, six, zero):
    """``out = x`` from 3 up, ``zero`` from -3 down, ``x * ((x + 3) / 6)`` between (NaN stays
    NaN): ops.activation's hardswish, its operations in its order, in the arrays' dtype."""
    for i in range(x.size):
        v = x[i]
        out[i] = v if v >= three else (zero if v <= -three else v * ((v + three) / six))


@numba.njit(**_OPTS)
def hardswish_grad(g, x, out, three, half, zero):
    """``out = g`` from 3 up, ``zero`` from -3 down, ``g * (x / 3 + 1/2)`` between: hardswish's
    VJP rule, its operations in its order."""
    for i in range(x.size):
        v, gi = x[i], g[i]
        out[i] = gi if v >= three else (zero if v <= -three else gi * (v / three + half))


# --- softmax ---
# softmax and log_softmax over the last axis of C-ordered (rows, n) arrays, around NumPy's exp
# (and log of the row sums): each row's maximum and shift, then its sum and divide (or
# subtract), in the NumPy form's operations and order. A row's sum is NumPy's:
# ``np.add.reduce`` over a contiguous axis is 0 plus the pairwise sum of its elements
# (:func:`_pairwise`).


@intrinsic
def _lanes8(typingctx, a, lo, blocks):
    """``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))`` for the running sums
    ``r_l = a[lo + l] + a[lo + 8 + l] + ...`` over ``blocks`` (>= 1) blocks of eight elements of
    the C-ordered float array ``a``: the eight sums in one vector register. numba leaves LLVM's
    SLP vectoriser off, so the same eight sums written as scalars ran one add at a time (a
    128-element row: 4x slower); each lane adds in the scalars' order, the same bits."""
    if not (isinstance(a, types.Array) and a.layout == "C"
            and a.dtype in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        ary, start, count = args
        vty = ir.VectorType(context.get_value_type(a.dtype), 8)
        i64, align = ir.IntType(64), a.dtype.bitwidth // 8
        data = context.make_array(a)(context, builder, ary).data
        base = builder.bitcast(builder.gep(data, [start]), vty.as_pointer())
        first = builder.load(base, align=align)
        entry = builder.block
        loop = builder.append_basic_block("lanes8.loop")
        done = builder.append_basic_block("lanes8.done")
        one = ir.Constant(i64, 1)
        builder.cbranch(builder.icmp_signed(">", count, one), loop, done)
        builder.position_at_end(loop)
        i, acc = builder.phi(i64), builder.phi(vty)
        nxt = builder.fadd(acc, builder.load(builder.gep(base, [i]), align=align))
        inc = builder.add(i, one)
        i.add_incoming(one, entry)
        i.add_incoming(inc, loop)
        acc.add_incoming(first, entry)
        acc.add_incoming(nxt, loop)
        builder.cbranch(builder.icmp_signed("<", inc, count), loop, done)
        builder.position_at_end(done)
        res = builder.phi(vty)
        res.add_incoming(first, entry)
        res.add_incoming(nxt, loop)
        r = [builder.extract_element(res, ir.Constant(ir.IntType(32), k)) for k in range(8)]
        f = builder.fadd
        return f(f(f(r[0], r[1]), f(r[2], r[3])), f(f(r[4], r[5]), f(r[6], r[7])))
    return a.dtype(a, types.uint64, types.int64), codegen


@numba.njit(inline="always", **_OPTS)
def _pairwise_block(a, lo, n, zero):
    """:func:`_pairwise` of up to 128 elements: below 8 in turn from ``zero``, else in eight
    running sums combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)) (:func:`_lanes8`), then the
    tail in turn. Indices are unsigned (``_U``, as in :func:`im2col_2d`): no wraparound
    checks."""
    if n < 8:
        res = zero
        for i in range(n):
            res += a[lo + _U(i)]
        return res
    end = n - n % 8
    res = _lanes8(a, lo, end // 8)
    for j in range(end, n):
        res += a[lo + _U(j)]
    return res


@numba.njit(**_OPTS)
def _pairwise(a, lo, n, zero):
    """``a[lo:lo + n]``'s sum by NumPy's ``pairwise_sum`` (numpy/_core/src/umath/
    loops_utils.h.src), its adds in its order: up to 128 elements as :func:`_pairwise_block`;
    above, the two halves' sums, split at n/2 less its remainder by 8."""
    if n <= 128:
        return _pairwise_block(a, lo, n, zero)
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(a, lo, n2, zero) + _pairwise(a, lo + _U(n2), n - n2, zero)


@numba.njit(inline="always", **_OPTS)
def _row_sum(a, lo, n, zero):
    """The sum of the row ``a[lo:lo + n]`` as ``np.add.reduce`` adds a contiguous axis:
    ``zero`` (its identity, where it starts) plus the pairwise sum of the elements (so an
    all -0.0 row sums to 0.0, as NumPy's). Up to 128 elements inline, without the call to
    the recursive :func:`_pairwise` (~13 ns a row)."""
    if n <= 128:
        return zero + _pairwise_block(a, lo, n, zero)
    return zero + _pairwise(a, lo, n, zero)


# --- layer norm ---
# Layer normalisation over flat C-ordered rows of ``n``, one row at a time while it is in
# cache: ops.nn's rules in their order, each step one rounding in the dtype, and their sums as
# NumPy's ``np.add.reduce`` adds a C-ordered array (the rules' ``layer_norm_sum``): a row's as
# :func:`_row_sum`, the leading axes' (the weight's and bias's gradients) row by row from zero.
@numba.njit(inline="always", **_OPTS)
def _ln_row_stats(x, o, n, nf, eps, zero, one, d):
    """(μ, 1/σ) of the row ``x[o:o + n]``: ``μ = Σx / n``, ``1/σ = 1 / sqrt(Σ(x - μ)² / n +
    eps)``, the squares in the scratch ``d[:n]``."""
    mu = _row_sum(x, o, n, zero) / nf
    for j in range(n):
        t = x[o + _U(j)] - mu
        d[_U(j)] = t * t
    return mu, one / math.sqrt(_row_sum(d, _U(0), n, zero) / nf + eps)


@numba.njit(**_OPTS)
def ln_forward(x, w, b, out, d, n, nf, eps, zero, one, has_w, has_b):
    """``out = ((x - μ) · (1/σ)) · w + b`` by rows (without the weight or the bias where
    ``has_w`` / ``has_b`` are false: ``w``, ``b`` then unread); ``d`` a scratch of ``n``."""
    for i in range(x.size // n):
        o = _U(i * n)
        mu, r = _ln_row_stats(x, o, n, nf, eps, zero, one, d)
        if has_w and has_b:
            for j in range(n):
                out[o + _U(j)] = ((x[o + _U(j)] - mu) * r) * w[_U(j)] + b[_U(j)]
        elif has_w:
            for j in range(n):
                out[o + _U(j)] = ((x[o + _U(j)] - mu) * r) * w[_U(j)]
        elif has_b:
            for j in range(n):
                out[o + _U(j)] = ((x[o + _U(j)] - mu) * r) + b[_U(j)]
        else:
            for j in range(n):
                out[o + _U(j)] = (x[o + _U(j)] - mu) * r


@numba.njit(**_OPTS)
def ln_backward(x, g, w, dx, dw, db, d, n, nf, eps, zero, one, has_w, want_dx, want_dw,
                want_db):
    """Layer norm's VJP for cotangent ``g``, with ``x̂ = (x - μ) · (1/σ)`` and ``v = g · w``
    (``g`` without the weight): ``dx = ((v - Σv / n) - x̂ · (Σ(v x̂) / n)) · (1/σ)`` by rows,
    ``dw = Σ g x̂`` and ``db = Σ g`` over the rows, each where wanted (the others unwritten);
    ``d`` a scratch of ``3 n``."""
    if want_dw:
        for j in range(n):
            dw[_U(j)] = zero
    if want_db:
        for j in range(n):
            db[_U(j)] = zero
    nv, np_ = _U(n), _U(2 * n)  # v at d[n:2n], v x̂ at d[2n:3n]
    for i in range(x.size // n):
        o = _U(i * n)
        mu, r = _ln_row_stats(x, o, n, nf, eps, zero, one, d)
        if want_dx:
            for j in range(n):
                gj = g[o + _U(j)]
                vj = gj * w[_U(j)] if has_w else gj
                d[nv + _U(j)] = vj
                d[np_ + _U(j)] = vj * ((x[o + _U(j)] - mu) * r)
            m1 = _row_sum(d, nv, n, zero) / nf
            m2 = _row_sum(d, np_, n, zero) / nf
            for j in range(n):
                dx[o + _U(j)] = ((d[nv + _U(j)] - m1) - ((x[o + _U(j)] - mu) * r) * m2) * r
        if want_dw:
            for j in range(n):
                dw[_U(j)] += g[o + _U(j)] * ((x[o + _U(j)] - mu) * r)
        if want_db:
            for j in range(n):
                db[_U(j)] += g[o + _U(j)]


@numba.njit(inline="always")
def _row_max(x, o, n):
    """(the maximum of the row ``x[o:o + n]``, whether it holds a NaN), in eight running maxima
    (~4x faster than one chain of compares, which LLVM does not split: a float maximum is not
    reassociated without fast-math). NumPy's maximum up to the sign of a zero."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[o]
    bad = False
    end = n - n % 8
    for b in range(0, end, 8):
        p = o + _U(b)
        v0, v1, v2, v3 = x[p], x[p + _U(1)], x[p + _U(2)], x[p + _U(3)]
        v4, v5, v6, v7 = x[p + _U(4)], x[p + _U(5)], x[p + _U(6)], x[p + _U(7)]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
        bad |= ((v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3) | (v4 != v4)
                | (v5 != v5) | (v6 != v6) | (v7 != v7))
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(end, n):
        v = x[o + _U(j)]
        m = v if v > m else m
        bad |= v != v
    return m, bad


@numba.njit(**_OPTS)
def softmax_shift(x, z, n, zero):
    """``z = x - where(m == -inf, zero, m)``, ``m`` each row's maximum (NaN where it holds a
    NaN; +inf makes the row NaN, as PyTorch's softmax), for flat C-ordered ``x`` and ``z`` of
    rows of ``n``: the shift before the exp, in one
    pass. The maximum is taken in eight running maxima and a NaN flag (~4x faster than one
    chain; NumPy's max over short rows costs ~0.1 µs a row). It is NumPy's up to the sign of
    a zero maximum, which changes no result: the shifted zeros differ only in sign, their exp
    is 1 either way, and both signs there mean two zeros, so a sum >= 2 whose log, subtracted,
    is no zero."""
    for r in range(x.size // n):
        o = _U(r * n)
        m, bad = _row_max(x, o, n)
        sh = zero if bad or (m < zero and not m - m == zero) else m
        for j in range(n):
            z[o + _U(j)] = x[o + _U(j)] - sh


@numba.njit(**_OPTS)
def softmax_divide(e, n, zero):
    """``e /= e.sum(axis=1, keepdims=True)`` in place for flat C-ordered rows of ``n`` (each row
    summed as :func:`_row_sum`), one row at a time while it is in cache."""
    for r in range(e.size // n):
        o = _U(r * n)
        s = _row_sum(e, o, n, zero)
        for j in range(n):
            e[o + _U(j)] = e[o + _U(j)] / s


@numba.njit(**_OPTS)
def row_sums(e, s, n, zero):
    """``s = e.sum(axis=1)`` for flat C-ordered rows of ``n``, each as :func:`_row_sum`."""
    for r in range(s.size):
        s[r] = _row_sum(e, _U(r * n), n, zero)


@numba.njit(**_OPTS)
def subtract_rows(z, c, n):
    """``z -= c[:, None]`` in place for flat C-ordered rows of ``n``: log_softmax's last
    step."""
    for r in range(c.size):
        cr = c[r]
        o = _U(r * n)
        for j in range(n):
            z[o + _U(j)] = z[o + _U(j)] - cr


@numba.njit(**_OPTS)
def softmax_grad(g, ans, s, out, n):
    """``out = ans * (g - s[:, None])`` for flat C-ordered rows of ``n`` (``out`` may be
    ``g``): softmax's VJP rule after its sum, ``s`` the rows' sums of g * ans."""
    for r in range(s.size):
        sr = s[r]
        o = _U(r * n)
        for j in range(n):
            out[o + _U(j)] = ans[o + _U(j)] * (g[o + _U(j)] - sr)


@numba.njit(**_OPTS)
def log_softmax_grad(g, e, s, out, n):
    """``out = g - e * s[:, None]`` for flat C-ordered rows of ``n`` (``out`` may be ``e``):
    log_softmax's VJP rule, ``e = exp(ans)`` and ``s`` the rows' sums of g."""
    for r in range(s.size):
        sr = s[r]
        o = _U(r * n)
        for j in range(n):
            out[o + _U(j)] = g[o + _U(j)] - e[o + _U(j)] * sr


# --- loops split with OpenBLAS's worker thread ----------------------------------------------
# A long loop runs in two halves, the second on the worker thread of NumPy's OpenBLAS
# (``_backend.pool_split``): OpenBLAS's ``exec_blas`` takes a queue of two jobs, runs the first
# on the calling thread and hands the second to its worker, which after a matrix product still
# spins waiting for work. A thread of our own would compete with that spinning worker for the
# second core (the GELU loops in halves on one made a W9 step 2.2x slower); on OpenBLAS's own
# worker the halves gain as its products do. Each job is ``_pool_job`` with an argument block of
# POOL_ARGS int64s: the loop's kind, its first and last row, the row length, the address of the
# float32 constants (``_backend._BlasPool.consts``) and of up to four flat float32 arrays.
POOL_ARGS = 9
QUEUE_BYTES = 168
"""sizeof(blas_queue_t) in OpenBLAS 0.3 on x86-64 Linux: routine, position, assigned, args,
range_m, range_n, sa, sb, next (8 bytes each), a pthread mutex (40) and condition (48), mode
and status (4 each)."""
_Q_ROUTINE, _Q_ARGS, _Q_NEXT, _Q_MODE = 0, 3, 8, 20  # int64 slots (mode: the low half of 20)
BLAS_PTHREAD = 0x4000  # a job's mode: call routine(args)

GELU, GELU_DENSITY, GELU_GRAD, SOFTMAX_SHIFT, SOFTMAX_DIVIDE = range(5)
MULTIPLY, ADD, SUBTRACT, OUTER, SUM = range(5, 10)
"""The loops ``pool_job`` runs, on float32 arrays. MULTIPLY, ADD and SUBTRACT: ``p2 = p0 op
p1`` elementwise, ``p3[0]`` (the half from 0) or ``p3[1]`` set to 1 where it made an inf or a
NaN; OUTER: rows of the per-example outer products ``p2[r] = p0[r] · p1[r // m]``
(``m`` the constants' last entry); SUM: the pairwise sum (NumPy's order) of each half of
``p0`` into ``p1[0]`` (the half from 0) or ``p1[1]``."""


@intrinsic
def _pointer(typingctx, address):
    """An integer address as a void pointer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
    return types.voidptr(types.int64), codegen


@intrinsic
def _exec_blas(typingctx, fn, num, queue):
    """``exec_blas(num, queue)`` through its address ``fn`` (``int exec_blas(BLASLONG,
    blas_queue_t *)``)."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.IntType(32), [i64, ir.IntType(8).as_pointer()])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [args[1], builder.inttoptr(args[2], ir.IntType(8).as_pointer())])
    return types.int32(types.int64, types.int64, types.int64), codegen


@numba.njit(inline="always")
def f32_at(address, start, size):
    """``size`` float32s from element ``start`` of the array at ``address``."""
    return numba.carray(_pointer(address + 4 * start), (size,), numba.float32)


@numba.njit(inline="always")
def _t5(c, o):
    return (c[o], c[o + 1], c[o + 2], c[o + 3], c[o + 4])


@numba.njit(inline="always")
def _t6(c, o):
    return (c[o], c[o + 1], c[o + 2], c[o + 3], c[o + 4], c[o + 5])


@numba.njit(inline="always")
def _t7(c, o):
    return (c[o], c[o + 1], c[o + 2], c[o + 3], c[o + 4], c[o + 5], c[o + 6])


@numba.njit(inline="always")
def _t11(c, o):
    return (c[o], c[o + 1], c[o + 2], c[o + 3], c[o + 4], c[o + 5], c[o + 6], c[o + 7],
            c[o + 8], c[o + 9], c[o + 10])


def _pool_job(argp):
    """One half of a split loop (see above): rows ``lo`` to ``hi`` (of ``n`` elements) of the
    arrays. The constants: erf32's near (7), mid (11), tail (11) and ends (5), then 1/√2, 1/2,
    1, 1/√(2π) and -1/2, exp32_neg's polynomial (6) and constants (6)."""
    _wide()
    a = numba.carray(argp, (POOL_ARGS,), numba.int64)
    kind, lo, hi, n = a[0], a[1], a[2], a[3]
    c = f32_at(a[4], 0, 51)
    near, mid, tail, ends = _t7(c, 0), _t11(c, 7), _t11(c, 18), _t5(c, 29)
    b, m = lo * n, (hi - lo) * n
    p0, p1, p2, p3 = a[5], a[6], a[7], a[8]
    if kind == GELU:
        gelu32(f32_at(p0, b, m), f32_at(p1, b, m), near, mid, tail, ends, c[34], c[35], c[36])
    elif kind == GELU_DENSITY:
        gelu32_density(f32_at(p0, b, m), f32_at(p1, b, m), _t6(c, 39), _t6(c, 45), c[38])
    elif kind == GELU_GRAD:
        gelu32_grad(f32_at(p0, b, m), f32_at(p1, b, m), f32_at(p2, b, m), f32_at(p3, b, m),
                    near, mid, tail, ends, c[34], c[35], c[36], c[37])
    elif kind == SOFTMAX_SHIFT:
        softmax_shift(f32_at(p0, b, m), f32_at(p1, b, m), n, numba.float32(0))
    elif kind == SOFTMAX_DIVIDE:
        softmax_divide(f32_at(p0, b, m), n, numba.float32(0))
    elif kind <= SUBTRACT:
        x, y, out = f32_at(p0, b, m), f32_at(p1, b, m), f32_at(p2, b, m)
        bad = 0  # an inf or NaN made (o - o is then NaN): the caller redoes the op as NumPy's
        if kind == MULTIPLY:  # ufunc, which warns (or raises) under its np.errstate
            for i in range(m):
                o = x[i] * y[i]
                out[i] = o
                bad |= numba.int32(o - o != 0)
        elif kind == ADD:
            for i in range(m):
                o = x[i] + y[i]
                out[i] = o
                bad |= numba.int32(o - o != 0)
        else:
            for i in range(m):
                o = x[i] - y[i]
                out[i] = o
                bad |= numba.int32(o - o != 0)
        f32_at(p3, 0, 2)[0 if lo == 0 else 1] = numba.float32(bad)
    elif kind == OUTER:
        rows = numba.int64(f32_at(a[4], 51, 1)[0])  # m, the rows of one example's product
        x, y, out = f32_at(p0, lo, hi - lo), f32_at(p1, 0, (hi + rows - 1) // rows * n), \
            f32_at(p2, b, m)
        for r in range(hi - lo):
            xr, yo, o = x[r], _U((lo + r) // rows * n), _U(r * n)
            for j in range(n):
                out[o + _U(j)] = xr * y[yo + _U(j)]
    elif kind == SUM:
        f32_at(p1, 0, 2)[0 if lo == 0 else 1] = _pairwise(f32_at(p0, b, m), _U(0), m,
                                                           numba.float32(0))


_CALLBACKS: dict = {}


def _callback(fn) -> int:
    """The address of ``fn`` compiled as a C callback ``void (void *)``, made on first use (not
    on import: a process that imports this module and runs none of its loops pays nothing)."""
    cb = _CALLBACKS.get(fn)
    if cb is None:
        cb = _CALLBACKS[fn] = numba.cfunc(types.void(types.voidptr), cache=True)(fn)
    return cb.address


def pool_job() -> int:
    """The address of :func:`_pool_job` as a C callback."""
    return _callback(_pool_job)


@numba.njit(**_OPTS)
def pool_run(exec_blas, job, q, args, kind, rows, n, split, consts, p0, p1, p2, p3):
    """Loop ``kind`` over ``rows`` rows of ``n``: rows up to ``split`` on this thread, the rest
    on OpenBLAS's worker, through ``exec_blas`` (its address; ``job``: :func:`pool_job`'s),
    ``q`` and ``args`` zeroed int64 arrays of (2, QUEUE_BYTES // 8) and (2, POOL_ARGS) for the
    queue and the argument blocks, ``consts`` the float32 constants, ``p0``-``p3`` the loop's
    flat float32 arrays. Returns exec_blas's status."""
    for t in range(2):
        args[t, 0] = kind
        args[t, 1] = 0 if t == 0 else split
        args[t, 2] = split if t == 0 else rows
        args[t, 3] = n
        args[t, 4] = consts.ctypes.data
        args[t, 5] = p0.ctypes.data
        args[t, 6] = p1.ctypes.data
        args[t, 7] = p2.ctypes.data
        args[t, 8] = p3.ctypes.data
    return exec_two(exec_blas, job, q, args)


# --- attention ------------------------------------------------------------------------------
# softmax(q kᵀ · scale [+ causal mask]) v and its VJP, one (batch, head) unit at a time, each
# unit's scores and weights in a scratch that stays in cache (a stack of them is ~4x a core's
# L2 in a small GPT). The products are OpenBLAS's ``cblas_sgemm`` (NumPy's library, ILP64,
# through its address), called with the flags and leading dimensions NumPy's matmul passes for
# the arrays of ``ops.attention``'s NumPy form, so they give its products' bits; between them
# that form's operations in its order: NumPy's row maxima, exp32_neg, pairwise row sums. Units
# split between this thread and OpenBLAS's worker (its products stay single-threaded: each is
# below OpenBLAS's threading threshold, which the caller checks).
ATT_ARGS = 35
"""The argument block (int64s): 0 the job (ATT_FORWARD, ATT_BACKWARD), 1-2 the first and last
unit, 3 heads, 4 L, 5 S, 6 E (the rows, keys and width), 7 cblas_sgemm's address, 8 causal,
9-12 q's address and its element strides by batch, head and row, 13-16 k's, 17-20 v's, 21-24
the output's (forward: y's) or the cotangent's (backward), 25 the unit's scratch (float32: L·E
+ 2·L·S + S), 26 the float32 constants (scale, exp32_neg's polynomial (6) and constants (6)),
27-29 dq, dk and dv's addresses (backward), 30-31 the transpose flags of the products that
read k and v as NumPy would pass them (q kᵀ and g vᵀ: 112 for a transposed right operand, as
NumPy's matmul passes a swapped-axes view), 32-34 dq, dk and dv's strides by batch, head and
row (one layout for the three). A result's row stride is the products' ``ldc``, which places
the rows and changes no sum."""
ATT_FORWARD, ATT_BACKWARD = 0, 1
_NOTRANS, _TRANS = 111, 112


@intrinsic
def _sgemm(typingctx, fn, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """``cblas_sgemm(RowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)`` through its
    address ``fn`` (ILP64: 64-bit sizes), ``a``, ``b`` and ``c`` addresses."""
    def codegen(context, builder, signature, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vp = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, vp, i64, vp,
                                               i64, f32, vp, i64])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        one, zero = ir.Constant(f32, 1.0), ir.Constant(f32, 0.0)

        def ptr(v):
            return builder.inttoptr(v, vp)

        builder.call(f, [ir.Constant(i32, 101), builder.trunc(args[1], i32),
                         builder.trunc(args[2], i32), args[3], args[4], args[5], one,
                         ptr(args[6]), args[7], ptr(args[8]), args[9], zero, ptr(args[10]),
                         args[11]])
        return context.get_dummy_value()
    return types.void(*([types.int64] * 12)), codegen


@numba.njit(inline="always", **_OPTS)
def _att_base(a, at, u, heads):
    """The address of unit ``u``'s matrix of the array described at ``a[at:at + 4]``."""
    return a[at] + 4 * ((u // heads) * a[at + 1] + (u % heads) * a[at + 2])


@numba.njit(inline="always", **_OPTS)
def _att_weights(a, u, qs, p, c):
    """Unit ``u``'s scaled queries ``qs`` (L x E) and softmax weights ``p`` (L x S), both
    C-ordered scratch, as the NumPy form: q·scale, (q·scale) kᵀ, plus the causal mask's 0 or
    -inf, then each row less its maximum (NaN where it holds one), exp32_neg, over its sum."""
    heads, rows, keys, width, sg = a[3], a[4], a[5], a[6], a[7]
    q0, qr = _att_base(a, 9, u, heads), a[12]
    scale, poly, consts = c[0], _t6(c, 1), _t6(c, 7)
    zero = numba.float32(0)
    for i in range(rows):
        src = f32_at(q0, i * qr, width)
        for j in range(width):
            qs[_U(i * width + j)] = src[j] * scale
    _sgemm(sg, _NOTRANS, a[30], rows, keys, width, qs.ctypes.data, width,
           _att_base(a, 13, u, heads), a[16], p.ctypes.data, keys)
    ninf = numba.float32(-math.inf)
    for i in range(rows):
        o = _U(i * keys)
        if a[8]:
            for j in range(keys):
                p[o + _U(j)] = p[o + _U(j)] + (zero if j <= i else ninf)
        m, nan = _row_max(p, o, keys)
        if nan:
            m = zero * ninf
        for j in range(keys):
            p[o + _U(j)] = _exp32_neg_of(p[o + _U(j)] - m, poly, consts)
        s = _row_sum(p, o, keys, zero)
        for j in range(keys):
            p[o + _U(j)] = p[o + _U(j)] / s


@numba.njit(**_OPTS)
def attention_units(a):
    """Units ``a[1]`` to ``a[2]`` of the forward or backward (see ATT_ARGS)."""
    _wide()
    heads, rows, keys, width, sg = a[3], a[4], a[5], a[6], a[7]
    c = f32_at(a[26], 0, 13)
    qs = f32_at(a[25], 0, rows * width)
    p = f32_at(a[25], rows * width, rows * keys)
    for u in range(a[1], a[2]):
        _att_weights(a, u, qs, p, c)
        k0, v0, x0 = _att_base(a, 13, u, heads), _att_base(a, 17, u, heads), \
            _att_base(a, 21, u, heads)
        if a[0] == ATT_FORWARD:  # y = p v
            _sgemm(sg, _NOTRANS, _NOTRANS, rows, width, keys, p.ctypes.data, keys, v0, a[20],
                   x0, a[24])
            continue
        dp = f32_at(a[25], rows * width + rows * keys, rows * keys)
        t = f32_at(a[25], rows * width + 2 * rows * keys, keys)
        off, gr = 4 * ((u // heads) * a[32] + (u % heads) * a[33]), a[34]
        # dv = pᵀ g; dp = g vᵀ; ds = (dp - Σ dp·p) · p; dq = (ds k) · scale; dk = dsᵀ (q·scale)
        _sgemm(sg, _TRANS, _NOTRANS, keys, width, rows, p.ctypes.data, keys, x0, a[24],
               a[29] + off, gr)
        _sgemm(sg, _NOTRANS, a[31], rows, keys, width, x0, a[24], v0, a[20], dp.ctypes.data,
               keys)
        zero = numba.float32(0)
        for i in range(rows):
            o = _U(i * keys)
            for j in range(keys):
                t[j] = dp[o + _U(j)] * p[o + _U(j)]
            r = _row_sum(t, _U(0), keys, zero)
            for j in range(keys):
                dp[o + _U(j)] = (dp[o + _U(j)] - r) * p[o + _U(j)]
        _sgemm(sg, _NOTRANS, _NOTRANS, rows, width, keys, dp.ctypes.data, keys, k0, a[16],
               a[27] + off, gr)
        dq = f32_at(a[27] + off, 0, (rows - 1) * gr + width)
        for i in range(rows):
            o = _U(i * gr)
            for j in range(width):
                dq[o + _U(j)] = dq[o + _U(j)] * c[0]
        _sgemm(sg, _TRANS, _NOTRANS, keys, width, rows, dp.ctypes.data, keys, qs.ctypes.data,
               width, a[28] + off, gr)


def _attention_job(argp):
    """One thread's share of :func:`attention_units`, as an ``exec_blas`` job."""
    _wide()
    attention_units(numba.carray(argp, (ATT_ARGS,), numba.int64))


def attention_job() -> int:
    """The address of :func:`_attention_job` as a C callback."""
    return _callback(_attention_job)


@numba.njit(**_OPTS)
def exec_two(exec_blas, job, q, args):
    """The two jobs ``job(args[0])`` (on this thread) and ``job(args[1])`` (on OpenBLAS's
    worker) through ``exec_blas``; ``q`` a zeroed int64 (2, QUEUE_BYTES // 8) queue. Returns
    exec_blas's status."""
    width = args.shape[1]
    for t in range(2):
        q[t, _Q_ROUTINE] = job
        q[t, _Q_ARGS] = args.ctypes.data + t * width * 8
        q[t, _Q_MODE] = BLAS_PTHREAD
    q[0, _Q_NEXT] = q.ctypes.data + QUEUE_BYTES
    return _exec_blas(exec_blas, 2, q.ctypes.data)
