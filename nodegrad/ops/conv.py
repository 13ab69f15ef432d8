"""Convolution as three fused primitives that are each other's VJPs.

``conv`` (N-d cross-correlation with stride, padding, dilation and groups, bias added in place)
is one matrix product over the input's strided windows (im2col). Its input gradient
``conv_input_grad`` is the transposed convolution: one product of the output gradient with the
kernel, folded back with one strided add per kernel tap. Its weight gradient
``conv_weight_grad`` is one product of the output gradient with the windows. The three are
bilinear and close under differentiation, so gradients of any order stay inside them.
"""

from __future__ import annotations

import itertools
import math

from .. import _backend as B
from ..batching import batched, front, size_of
from ..primitive import primitive
from .elementwise import _relu_grad, _relu_grad_fwd, relu
from .reduce import _sum
from .shape import broadcast_to, reshape


def _out_size(length: int, k: int, s: int, p: int, d: int) -> int:
    return (length + 2 * p - d * (k - 1) - 1) // s + 1


def _out_shape(xshape, wshape, stride, padding, dilation) -> tuple:
    return (xshape[0], wshape[0]) + tuple(
        _out_size(n, k, s, p, d)
        for n, k, s, p, d in zip(xshape[2:], wshape[2:], stride, padding, dilation))


def _channels_last(x):
    """(N, C, *spatial) as (N, *spatial, C): a view (contiguous when ``x`` came from conv)."""
    return x.transpose((0,) + tuple(range(2, x.ndim)) + (1,))


def _cols(xp, x, k, stride, padding, dilation, groups, out=None):
    """The windows of ``x`` as columns (G, N·P, K·Cg), channels innermost, and the output's
    spatial shape (the first ``out`` positions when given: a transposed convolution's output
    padding may leave room for more windows than its input had). Windows of a channels-last
    array are runs of whole rows, so the one copy here moves contiguous blocks; with numba
    loaded, one pass makes that copy (:func:`_cols_in_one_pass`)."""
    if type(x) is B.ndarray:
        key = (x.shape, x.strides, x.dtype, k, stride, padding, dilation, groups, out,
               B.cpu_kernels() is not None)
        plan = _COLS_PLANS.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            if len(_COLS_PLANS) >= COLS_PLANS_MAX:
                _COLS_PLANS.clear()
            plan = _COLS_PLANS[key] = _cols_plan(x, k, stride, padding, dilation, groups, out)
        if plan is not None:
            return plan(x)
    nd = len(k)
    n, c = x.shape[:2]
    xl = _channels_last(x)
    if out is None:
        out = tuple(_out_size(m, ki, s, p, d)
                    for m, ki, s, p, d in zip(x.shape[2:], k, stride, padding, dilation))
    npos, kk, g = math.prod(out), math.prod(k), groups
    if g == 1 and type(x) is not B.ndarray:  # CUDA: one kernel
        cols = B.im2col_cuda(x, tuple(k), tuple(stride), tuple(padding), tuple(dilation), out)
        if cols is not None:
            return cols, out
    first = g == 1 and _taps_first(c, k, dilation, out)
    padded = (n,) + tuple(m + 2 * p for m, p in zip(x.shape[2:], padding)) + (c,)
    mem = _cols_in_one_pass(xl, k, stride, padding, dilation, out, first, padded) if g == 1 \
        else None
    if mem is None:
        if any(padding):  # zeros and one copy: xp.pad's machinery costs more than the copy
            xpad = xp.zeros(padded, dtype=x.dtype)
            xpad[(slice(None),) + tuple(slice(p, p + m) for p, m in
                                        zip(padding, x.shape[2:]))] = xl
            xl = xpad
        win = B.backend_of(xl).as_strided(xl, (n,) + out + k + (c,),
                                          _window_strides(xl.strides, stride, dilation))
        if g > 1:
            win = win.reshape((n,) + out + k + (g, c // g))  # (N, *out, *k, G, Cg)
            perm = (1 + 2 * nd,) + tuple(range(1 + 2 * nd)) + (2 + 2 * nd,)
            return win.transpose(perm).reshape(g, n * npos, kk * (c // g)), out
        if not first:
            return win.reshape(1, n * npos, kk * c), out
        mem = xp.ascontiguousarray(win.transpose(
            tuple(range(1 + nd, 2 + 2 * nd)) + tuple(range(1 + nd))))  # (*k, C, N, *out)
    if first:
        return mem.reshape(1, kk * c, n * npos).transpose(0, 2, 1), out
    return mem.reshape(1, n * npos, kk * c), out


def _taps_first(c: int, k: tuple, dilation: tuple, out: tuple) -> bool:
    """Whether one group's windows are copied taps-major, (*k, C, N, *out): for one input
    channel, where the runs are then whole output rows rather than one kernel row (~3x
    faster; strided, a window row of a few taps costs more per element than the copy:
    MNIST-1D's first layer, 1900 windows of 5, ~17 against ~35 µs). The product takes the
    transposed view as it is."""
    return c == 1 and out[-1] > (k[-1] if dilation[-1] == 1 else 1)


COLS_PLANS_MAX = 256
_COLS_PLANS: dict = {}  # layout and parameters -> _cols_plan's form (or None)
_UNPLANNED = object()


def _cols_plan(x, k, stride, padding, dilation, groups, out):
    """:func:`_cols` for NumPy inputs laid out as ``x`` where it is one pass of
    :func:`._backend.im2col` (one group, numba loaded), its decisions made once per layout
    (a convolution's few shapes repeat every step): ``f(x) -> (columns, output size)``, the
    same kernel call and views, so the same values, without ~10 µs of checks and shape
    arithmetic per call; None where _cols takes another way."""
    if groups != 1 or B.cpu_kernels() is None:
        return None
    nd = len(k)
    n, c = x.shape[:2]
    if out is None:
        out = tuple(_out_size(m, ki, s, p, d)
                    for m, ki, s, p, d in zip(x.shape[2:], k, stride, padding, dilation))
    npos, kk = math.prod(out), math.prod(k)
    first = _taps_first(c, k, dilation, out)
    padded = (n,) + tuple(m + 2 * p for m, p in zip(x.shape[2:], padding)) + (c,)
    xl = _channels_last(x)
    if not first:  # _cols_in_one_pass's rules
        if k[-1] * c < 16:
            return None
        st = _c_strides(padded, xl.itemsize) if any(padding) else xl.strides
        ws = _window_strides(st, stride, dilation)
        shape = (padded[0],) + out + k + (c,)
        if _merges(shape[:1 + nd], ws[:1 + nd]) and _merges(shape[1 + nd:], ws[1 + nd:]):
            return None
    form = B.im2col_form(xl, k, stride, padding, dilation, out, first)
    if form is None:
        return None
    perm = (0,) + tuple(range(2, x.ndim)) + (1,)
    if first:
        rows = (1, kk * c, n * npos)

        def plan(x):
            return form(x.transpose(perm)).reshape(rows).transpose(0, 2, 1), out
    else:
        rows = (1, n * npos, kk * c)

        def plan(x):
            return form(x.transpose(perm)).reshape(rows), out

    return plan


def _window_strides(st: tuple, stride: tuple, dilation: tuple) -> tuple:
    """The strides of the windows (N, *out, *k, C) of a channels-last array of strides ``st``."""
    nd = len(stride)
    return (st[:1] + tuple(st[1 + i] * stride[i] for i in range(nd))
            + tuple(st[1 + i] * dilation[i] for i in range(nd)) + st[-1:])


def _cols_in_one_pass(xl, k, stride, padding, dilation, out, first, padded):
    """The copy of :func:`_cols` for one group by :func:`._backend.im2col` (numba loaded, one
    or two spatial axes): (N, *out, *k, C), or (*k, C, N, *out) with ``first``, as _cols
    makes it. None where it does not apply, or where the windows already lie as rows (_cols
    then takes them as they are, no copy), or where their rows are too short for the loop to
    beat NumPy's gather (under 16 elements)."""
    if B.cpu_kernels() is None:
        return None
    if not first:
        c = padded[-1]
        if k[-1] * c < 16:
            return None
        st = _c_strides(padded, xl.itemsize) if any(padding) else xl.strides
        ws, nd = _window_strides(st, stride, dilation), len(k)
        shape = (padded[0],) + out + k + (c,)
        if _merges(shape[:1 + nd], ws[:1 + nd]) and _merges(shape[1 + nd:], ws[1 + nd:]):
            return None
    return B.im2col(xl, k, stride, padding, dilation, out, first)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    """The strides of a C-ordered array of ``shape``."""
    out = [itemsize]
    for m in reversed(shape[1:]):
        out.append(out[-1] * m)
    return tuple(reversed(out))


def _merges(shape: tuple, strides: tuple) -> bool:
    """Whether these axes reshape into one without a copy (NumPy's rule: each stride is the
    next axis's extent times its stride, axes of extent one aside)."""
    axes = [(m, s) for m, s in zip(shape, strides) if m != 1]
    return all(a[1] == b[0] * b[1] for a, b in zip(axes, axes[1:]))


def _kernel_rows(w, groups):
    """The weight (O, Cg, *k) as (G, Og, K·Cg), channels innermost like the columns."""
    nd = w.ndim - 2
    o, cg = w.shape[:2]
    wt = w.reshape((groups, o // groups, cg) + tuple(w.shape[2:]))
    return wt.transpose((0, 1) + tuple(range(3, 3 + nd)) + (2,)).reshape(groups, o // groups, -1)


def _grad_rows(xp, g, groups):
    """The output gradient (N, O, *out) as rows (G, N·P, Og)."""
    n, o = g.shape[:2]
    nd = g.ndim - 2
    gg = g.reshape((n, groups, o // groups) + g.shape[2:])
    perm = (1, 0) + tuple(range(3, 3 + nd)) + (2,)
    return gg.transpose(perm).reshape(groups, n * math.prod(g.shape[2:]), o // groups)


def _conv_fwd(xp, x, w, b, stride, padding, dilation, groups):
    if x.dtype is _F16 and type(x) is B.ndarray:  # on the CPU: computed in float32 and rounded
        # once, as PyTorch's CPU kernels (the product rounded, then the bias added, rounds twice)
        return _conv_fwd(xp, x.astype(_F32), w.astype(_F32), None if b is None else
                         b.astype(_F32), stride, padding, dilation, groups).astype(_F16)
    cols, out = _cols(xp, x, tuple(w.shape[2:]), stride, padding, dilation, groups)
    return _conv_of_cols(x, w, b, cols, out, groups)


def _conv_of_cols(x, w, b, cols, out, groups, with_relu: bool = False):
    """The convolution from the input's columns (:func:`_cols`); ``with_relu`` (one group and
    a bias): the bias and the ReLU after it in one pass over the product."""
    nd = x.ndim - 2
    o = w.shape[0]
    n = x.shape[0]
    if groups == 1:  # the kernel as (K·C, O) columns: a plain product, faster than against
        # the transposed rows for small ones (500 x 75 x 25: 23 against 29 µs), the same bits
        wc = w.transpose(tuple(range(2, 2 + nd)) + (1, 0)).reshape(-1, o)
        if not wc.flags.c_contiguous:  # one input channel: a view; C-ordered for the blocks
            wc = wc.copy()
        y = B.matmul_row_blocks(cols[0], wc)                                     # (N·P, O)
        if b is not None:  # in place, one loop (1900 x 25: 9 against 19 µs), NumPy's bits
            y = B.add_bias_relu(y, b) if with_relu else B.add_bias(y, b)
        y = y.reshape((n,) + out + (o,))
        return y.transpose((0, 1 + nd) + tuple(range(1, 1 + nd)))      # (N, O, *out), a view
    og = o // groups
    wt = _kernel_rows(w, groups)                                        # (G, Og, K·Cg)
    y = B.matmul(cols, wt.transpose(0, 2, 1))                                    # (G, N·P, Og)
    if b is not None:
        y += b.reshape(groups, 1, og)
    y = y.reshape((groups, n) + out + (og,))
    perm = (1, 0, 2 + nd) + tuple(range(2, 2 + nd))
    return y.transpose(perm).reshape((n, o) + out)


_F16, _F32 = B.np.dtype("float16"), B.np.dtype("float32")


def _conv_relu_fwd(xp, x, w, b, stride, padding, dilation, groups):
    """``relu(conv(...))``: host float32 with one group and a bias adds the bias and takes the
    maximum in one pass over the product (:func:`._backend.add_bias_relu`, the same bits as the
    add and then relu); anything else is conv's forward and then relu's."""
    if (groups == 1 and b is not None and type(x) is B.ndarray and x.dtype == _F32
            and w.dtype == _F32 and b.dtype == _F32):
        cols, out = _cols(xp, x, tuple(w.shape[2:]), stride, padding, dilation, groups)
        return _conv_of_cols(x, w, b, cols, out, groups, with_relu=True)
    return relu.fwd(xp, _conv_fwd(xp, x, w, b, stride, padding, dilation, groups))


def _input_grad_fwd(xp, g, w, stride, padding, dilation, groups, shape):
    """Transposed convolution: every output position's window gradient, folded back. float16
    is computed in float32 and rounded once, as PyTorch's CPU kernels do: the fold adds each
    tap's contribution in turn, and float16 sums (natively float16 on CPUs with AVX512-FP16)
    would round at every add."""
    if g.dtype == _F16 or w.dtype == _F16:
        return _input_grad_fwd(xp, g.astype(_F32), w.astype(_F32), stride, padding, dilation,
                               groups, shape).astype(_F16)
    nd = g.ndim - 2
    n, c = shape[:2]
    cg, k = w.shape[1], tuple(w.shape[2:])
    out = tuple(g.shape[2:])
    if groups == 1 and any(s > 1 for s in stride) and math.prod(k) <= 32 and type(
            g) is B.ndarray:  # on CUDA the one product below takes fewer launches
        return _input_grad_strided(xp, g, w, stride, padding, dilation, shape)
    rows = _grad_rows(xp, g, groups)                                     # (G, N·P, Og)
    cols = B.matmul(rows, _kernel_rows(w, groups))                               # (G, N·P, K·Cg)
    cols = cols.reshape((groups, n) + out + k + (cg,))
    if groups > 1:  # (N, *out, *k, G, Cg): channels innermost, as in the buffer below
        cols = cols.transpose(tuple(range(1, 2 + 2 * nd)) + (0, 2 + 2 * nd))
    cols = cols.reshape((n,) + out + k + (c,))
    padded = tuple(s + 2 * p for s, p in zip(shape[2:], padding))
    buf = xp.zeros((n,) + padded + (c,), dtype=cols.dtype)
    for taps in itertools.product(*(range(ki) for ki in k)):
        dst = tuple(slice(t * d, t * d + s * (m - 1) + 1, s)
                    for t, m, s, d in zip(taps, out, stride, dilation))
        buf[(slice(None),) + dst] += cols[(slice(None),) * (1 + nd) + taps]
    buf = buf[(slice(None),) + tuple(slice(p, p + s) for p, s in zip(padding, shape[2:]))]
    return buf.transpose((0, 1 + nd) + tuple(range(1, 1 + nd)))


def _input_grad_strided(xp, g, w, stride, padding, dilation, shape):
    """The transposed convolution of a strided ``conv`` (one group): one product per kernel
    tap, each tap's product added into a zeroed padded buffer in tap order. The gradient's rows
    go positions first and the buffer too, so each add moves whole (N, C) blocks instead of
    C-long runs (~1.5x faster at 16 channels). With one or two spatial axes and numba loaded,
    the products go into one stack and one numba pass adds them up (:func:`._backend.fold_taps`:
    the same adds in the same order, so the same bits, without the padded buffer; J3's second
    layer: ~130 against ~180 µs). With one axis the rows go batch first (a view of a
    channels-last gradient), with numba or without (the products' rows in one order: a BLAS
    may round a row by its place), and the result comes out channels-last."""
    nd = g.ndim - 2
    n, c = shape[:2]
    out = tuple(g.shape[2:])
    k = tuple(w.shape[2:])
    taps = list(itertools.product(*(range(ki) for ki in k)))
    # each tap's (O, C) weights, C-ordered (tiny copies) for B.matmul_row_blocks
    wts = [xp.ascontiguousarray(w[(slice(None), slice(None)) + t]) for t in taps]
    if nd <= 2 and type(g) is B.ndarray and B.cpu_kernels() is not None:
        if nd == 1:
            rows = _channels_last(g).reshape(-1, g.shape[1])               # (N·P, O)
            blocks = (n,) + out + (c,)
        else:
            rows = g.transpose(tuple(range(2, 2 + nd)) + (0, 1)).reshape(-1, g.shape[1])
            blocks = out + (n, c)                                          # (P·N, O) rows
        parts = xp.empty((len(taps), rows.shape[0], c), rows.dtype)
        for j, wt in enumerate(wts):
            B.matmul_row_blocks(rows, wt, parts[j])
        buf = B.fold_taps(parts.reshape((len(taps),) + blocks), tuple(shape[2:]), k, stride,
                          padding, dilation)
        if buf is not None and nd == 1:  # (N, L, C)
            return buf.transpose(0, 2, 1)                                  # (N, C, L)
        if buf is not None:  # (L0, L1, N, C)
            return buf.transpose((nd, nd + 1) + tuple(range(nd)))          # (N, C, *spatial)
    # each tap's product on the fold's rows (a BLAS's bits may depend on a row's place in
    # the product: OpenBLAS's Haswell kernels), added into a zeroed padded buffer in tap order
    # as the fold adds them: the same bits, with numba or without
    if nd == 1 and type(g) is B.ndarray:
        rows, lead, first = _channels_last(g).reshape(-1, g.shape[1]), (n,), 1  # (N·P, O)
    else:
        rows = g.transpose(tuple(range(2, 2 + nd)) + (0, 1)).reshape(-1, g.shape[1])
        lead, first = (), 0                                                # (P·N, O)
    padded = tuple(s + 2 * p for s, p in zip(shape[2:], padding))
    tail = () if first else (n,)
    buf = None
    for t, wt in zip(taps, wts):
        part = B.matmul_row_blocks(rows, wt).reshape(lead + out + tail + (c,))
        if buf is None:
            buf = xp.zeros(lead + padded + tail + (c,), dtype=part.dtype)
        buf[(slice(None),) * first + tuple(slice(ti * d, ti * d + s * (m - 1) + 1, s) for ti,
                                           m, s, d in zip(t, out, stride, dilation))] += part
    buf = buf[(slice(None),) * first + tuple(slice(p, p + s)
                                             for p, s in zip(padding, shape[2:]))]
    if first:  # (N, L, C)
        return buf.transpose(0, 2, 1)                                      # (N, C, L)
    return buf.transpose((nd, nd + 1) + tuple(range(nd)))                  # (N, C, *spatial)


def _weight_grad_fwd(xp, x, g, stride, padding, dilation, groups, shape):
    cols, _ = _cols(xp, x, tuple(shape[2:]), stride, padding, dilation, groups,
                    g.shape[2:])                                         # (G, N·P, K·Cg)
    return _weight_grad_of_cols(xp, g, cols, groups, shape)


def _weight_grad_of_cols(xp, g, cols, groups, shape):
    """The weight gradient from the input's columns (:func:`_cols`)."""
    k = tuple(shape[2:])
    nd = len(k)
    rows = _grad_rows(xp, g, groups)                                     # (G, N·P, Og)
    if groups == 1:
        r, c = rows[0].T, cols[0]  # r F-ordered; c too where the columns are taps-first
        # two F-ordered operands: the transposed product, both untransposed for BLAS (a 2-D
        # CNN's first layer, 16 x 8192 x 9: 50 against 100 µs, with the same bits)
        # both in blocks of the inner dimension where the small-matrix kernels then take them
        dw = B.matmul_k_blocks(c.T, r.T).T if B.f_ordered(c) else B.matmul_k_blocks(r, c)
    else:
        dw = B.matmul(rows.transpose(0, 2, 1), cols)                             # (G, Og, K·Cg)
    dw = dw.reshape((shape[0],) + k + (shape[1],))                       # (O, *k, Cg)
    return xp.ascontiguousarray(dw.transpose((0, 1 + nd) + tuple(range(1, 1 + nd))))


# --- the VJPs, JVPs and batching rules ----------------------------------------------------------
def _conv_like(x, w, g, **p):
    """conv(x, w) cut to the positions of ``g`` (an output-padded transposed convolution's
    adjoint sees only the windows its input had)."""
    y = _conv(x, w, None, **p)
    if tuple(y.shape[2:]) != tuple(g.shape[2:]):
        y = y[(slice(None), slice(None)) + tuple(slice(0, m) for m in g.shape[2:])]
    return y


def _conv_db(g, ans, x, w, b, **p):
    return _sum(g, axis=(0,) + tuple(range(2, g.ndim)), keepdims=False)


def _conv_jvp(ts, ans, x, w, b, stride, padding, dilation, groups):
    tx, tw, tb = ts
    p = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = None if tx is None else _conv(tx, w, None, **p)
    if tw is not None:
        c = _conv(x, tw, None, **p)
        out = c if out is None else out + c
    if tb is not None:
        shape = _out_shape(x.shape, w.shape, stride, padding, dilation)
        c = broadcast_to(reshape(tb, (-1,) + (1,) * (len(shape) - 2)), shape)
        out = c if out is None else out + c
    return out


def _merge(v, bd, n):
    """(B, N, C, ...) from a batched operand, then (N, B·C, ...): the batch becomes groups."""
    v = batched(v, bd, n)
    v = v.moveaxis(0, 1)
    return v.reshape((v.shape[0], -1) + tuple(v.shape[3:]))


def _conv_batch(vals, bdims, stride, padding, dilation, groups):
    (x, w, b), (bx, bw, bb) = vals, bdims
    p = dict(stride=stride, padding=padding, dilation=dilation)
    if bw is None and bb is None:  # a batch of inputs through one kernel: fold it into N
        x = front(x, bx)
        y = _conv(x.reshape((-1,) + tuple(x.shape[2:])), w, b, groups=groups, **p)
        return y.reshape(tuple(x.shape[:2]) + tuple(y.shape[1:])), 0
    n = size_of(vals, bdims)
    w = batched(w, bw, n)
    o = w.shape[1]
    wm = w.reshape((-1,) + tuple(w.shape[2:]))
    bm = None if b is None else batched(b, bb, n).reshape((-1,))
    y = _conv(_merge(x, bx, n), wm, bm, groups=groups * n, **p)            # (N, B·O, *out)
    return y.reshape((y.shape[0], n, o) + tuple(y.shape[2:])).moveaxis(1, 0), 0


def _input_grad_batch(vals, bdims, stride, padding, dilation, groups, shape):
    (g, w), (bg, bw) = vals, bdims
    p = dict(stride=stride, padding=padding, dilation=dilation)
    if bw is None:
        g = front(g, bg)
        m = g.shape[0]
        dx = _conv_input_grad(g.reshape((-1,) + tuple(g.shape[2:])), w, groups=groups,
                              shape=(m * shape[0],) + tuple(shape[1:]), **p)
        return dx.reshape((m,) + tuple(shape)), 0
    n = size_of(vals, bdims)
    wm = batched(w, bw, n)
    wm = wm.reshape((-1,) + tuple(wm.shape[2:]))
    dx = _conv_input_grad(_merge(g, bg, n), wm, groups=groups * n,
                          shape=(shape[0], n * shape[1]) + tuple(shape[2:]), **p)
    return dx.reshape((shape[0], n) + tuple(shape[1:])).moveaxis(1, 0), 0


def _weight_grad_batch(vals, bdims, stride, padding, dilation, groups, shape):
    (x, g), (bx, bg) = vals, bdims
    n = size_of(vals, bdims)
    dw = _conv_weight_grad(_merge(x, bx, n), _merge(g, bg, n), stride=stride, padding=padding,
                           dilation=dilation, groups=groups * n,
                           shape=(n * shape[0],) + tuple(shape[1:]))
    return dw.reshape((n,) + tuple(shape)), 0


def _conv_relu_vjp(needs, g, ans, x, w, b, **p):
    gz = _relu_grad(g, ans)  # relu's VJP, then conv's rules on it
    return (_conv_input_grad(gz, w, shape=tuple(x.shape), **p) if needs[0] else None,
            _conv_weight_grad(x, gz, shape=tuple(w.shape), **p) if needs[1] else None,
            _conv_db(gz, ans, x, w, b) if b is not None and needs[2] else None)


def _conv_relu_raw(needs, g, ans, x, w, b, **p):
    """relu's and conv's ``vjp_raw`` in turn: the same arrays as the two ops' backward."""
    return _conv_raw(needs, _relu_grad_fwd(B.np, g, ans), ans, x, w, b, **p)


def _conv_relu_jvp(ts, ans, x, w, b, **p):
    t = _conv_jvp(ts, ans, x, w, b, **p)
    return None if t is None else _relu_grad(t, ans)


def _conv_relu_batch(vals, bdims, **p):
    y, d = _conv_batch(vals, bdims, **p)
    return relu(y), d


def _conv_raw(needs, g, ans, x, w, b, **p):
    """The three rules above on host arrays (``vjp_raw``): the same forwards and sum."""
    return (_input_grad_fwd(B.np, g, w, shape=tuple(x.shape), **p) if needs[0] else None,
            _weight_grad_fwd(B.np, x, g, shape=tuple(w.shape), **p) if needs[1] else None,
            B.sum_outer(g, (0,) + tuple(range(2, g.ndim)), False) if needs[2] else None)


_conv = primitive(
    "conv", _conv_fwd,
    (lambda g, ans, x, w, b, **p: _conv_input_grad(g, w, shape=tuple(x.shape), **p),
     lambda g, ans, x, w, b, **p: _conv_weight_grad(x, g, shape=tuple(w.shape), **p),
     _conv_db),
    kind="linalg", jvp=_conv_jvp, batch=_conv_batch, operands="all", vjp_raw=_conv_raw,
    doc="N-d convolution (cross-correlation) as one product over strided windows, bias in place.")
_conv_input_grad = primitive(
    "conv_input_grad", _input_grad_fwd,
    (lambda c, ans, g, w, shape, **p: _conv_like(c, w, g, **p),
     lambda c, ans, g, w, shape, **p: _conv_weight_grad(c, g, shape=tuple(w.shape), **p)),
    kind="linalg", jvp="multilinear", batch=_input_grad_batch, operands="all",
    doc="Transposed convolution of g (the input gradient of conv) into an input of ``shape``.")
_conv_weight_grad = primitive(
    "conv_weight_grad", _weight_grad_fwd,
    (lambda c, ans, x, g, shape, **p: _conv_input_grad(g, c, shape=tuple(x.shape), **p),
     lambda c, ans, x, g, shape, **p: _conv_like(x, c, g, **p)),
    kind="linalg", jvp="multilinear", batch=_weight_grad_batch, operands="all",
    doc="The weight gradient of conv: a product of g with the input's windows, of ``shape``.")

_conv_relu = primitive(
    "conv_relu", _conv_relu_fwd, vjp_all=_conv_relu_vjp, saves="both", kind="linalg",
    jvp=_conv_relu_jvp, batch=_conv_relu_batch, operands="all", vjp_raw=_conv_relu_raw,
    doc="max(conv(x, W) + b, 0): a convolution and the ReLU after it, the bias and the "
        "maximum in one pass over the product; the values and gradients of the two ops.")


SHARED_COLUMNS_MAX = 1 << 24
"""Bytes of a convolution's gathered columns up to which a compiled program keeps them from
the forward for the weight gradient (:func:`conv_shared_forms`); larger ones are gathered again,
as eager does, so that a replay's peak memory stays near eager's."""


def conv_shared_forms(xp, params: dict, grad_params: dict):
    """Replay forms of a ``conv`` (``params``) and the ``conv_weight_grad`` (``grad_params``,
    the same and the weight's shape) a compiled program runs later on the same input: the
    forward keeps the input's windows as columns and the weight gradient multiplies those
    instead of gathering them again (the same columns, so the same bits), up to
    :data:`SHARED_COLUMNS_MAX` bytes. A weight gradient given another input or output size
    gathers its own."""
    stride, padding, dilation, groups = (
        params[k] for k in ("stride", "padding", "dilation", "groups"))
    shape, wgrad = grad_params["shape"], _conv_weight_grad.fwd
    kept: list = [None]  # (input, columns, output size) of the last forward

    def forward(x, w, b=None):
        cols, out = _cols(xp, x, tuple(w.shape[2:]), stride, padding, dilation, groups)
        keep = tuple(w.shape) == shape and cols.nbytes <= SHARED_COLUMNS_MAX
        kept[0] = (x, cols, out) if keep else None
        return _conv_of_cols(x, w, b, cols, out, groups)

    def weight_grad(x, g):
        kp, kept[0] = kept[0], None
        if kp is not None and kp[0] is x and kp[2] == tuple(g.shape[2:]):
            return _weight_grad_of_cols(xp, g, kp[1], groups, shape)
        return wgrad(xp, x, g, **grad_params)

    return forward, weight_grad


def conv(x, weight, bias=None, *, stride: tuple, padding: tuple, dilation: tuple,
         groups: int = 1):
    """Convolution of x (N, C, *spatial) with weight (O, C/groups, *kernel), PyTorch's layout;
    stride, padding and dilation are tuples with one entry per spatial axis (checked by the
    caller, :func:`nodegrad.nn.functional.conv1d` and friends)."""
    return _conv(x, weight, bias, stride=tuple(stride), padding=tuple(padding),
                 dilation=tuple(dilation), groups=int(groups))


def conv_relu(x, weight, bias=None, *, stride: tuple, padding: tuple, dilation: tuple,
              groups: int = 1):
    """``relu(conv(x, weight, bias, ...))`` as one primitive (what ``nn.Sequential`` runs for a
    convolution followed by a ``ReLU``): one pass over the product for the bias and the ReLU,
    one node to record, and the same bits as the two ops."""
    return _conv_relu(x, weight, bias, stride=tuple(stride), padding=tuple(padding),
                      dilation=tuple(dilation), groups=int(groups))


def conv_transpose(x, weight, *, stride: tuple, padding: tuple, dilation: tuple, groups: int,
                   shape: tuple):
    """Transposed convolution of x (N, C, *spatial) with weight (C, O/groups, *kernel) into an
    output of ``shape``: the input gradient of the convolution with that weight."""
    return _conv_input_grad(x, weight, stride=tuple(stride), padding=tuple(padding),
                            dilation=tuple(dilation), groups=int(groups), shape=tuple(shape))
