"""Convolution, pooling and resampling beyond conv1d/2d: transposed and 3-D convolution, pooling
with ``ceil_mode``/indices, unpooling, adaptive max and power-average pooling, im2col
(``unfold``/``fold``), pixel shuffles and ``interpolate`` — all in PyTorch's semantics.

Every function is a composite of primitives, so gradients of any order come from the engine. A
transposed convolution is the input gradient of a convolution, the ``conv_input_grad``
primitive: one matrix product gives every window's contribution and one strided add per kernel
tap (never per position) folds the overlapping windows back.
"""

from __future__ import annotations

import math
import operator
import struct

from .. import _backend as B
from .. import ops
from ..amp import float32_in_region
from ..autodiff import modes, no_grad
from ..batching import values
from ..errors import DTypeError, ShapeError
from ..ops.index import _scatter_along
from ..ops.window import fold_windows
from ..tensor import Tensor
from . import functional as F
from .losses import _values_only

_SPATIAL = F._SPATIAL


def _ints(v, n: int, name: str, op: str) -> tuple:
    return F._tuple(v, n, name, op)


def _crop(x: Tensor, starts: tuple, sizes: tuple) -> Tensor:
    """x[..., a:a+n, b:b+m] on the trailing ``len(starts)`` axes (a view when nothing is cut)."""
    nd = len(starts)
    if all(s == 0 and n == x.shape[x.ndim - nd + i] for i, (s, n) in enumerate(zip(starts,
                                                                                  sizes))):
        return x
    return x[(slice(None),) * (x.ndim - nd) + tuple(slice(s, s + n) for s, n in
                                                     zip(starts, sizes))]


# --- convolution ------------------------------------------------------------------------------
def conv3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """3-D convolution: input (N, C, D, H, W) or unbatched (C, D, H, W), weight (O, C/groups,
    KD, KH, KW)."""
    return F._conv(input, weight, bias, stride, padding, dilation, groups, 3, "conv3d",
                   _SPATIAL[3])


def _conv_transpose(x, w, b, stride, padding, output_padding, groups, dilation, nd, op):
    if F._unbatched(x, nd, op, _SPATIAL[nd]):
        return F._squeeze0(_conv_transpose(ops.expand_dims(x, 0), w, b, stride, padding,
                                           output_padding, groups, dilation, nd, op))
    if not isinstance(w, Tensor) or w.ndim != nd + 2:
        raise ShapeError(f"{op}: weight must have {nd + 2} dims (in, out/groups, *kernel), got "
                         f"{None if not isinstance(w, Tensor) else tuple(w.shape)}")
    if not (B.is_float(x.dtype) and B.is_float(w.dtype)) and \
            (x.dtype != w.dtype or x.dtype.kind not in "iu"):
        raise DTypeError(f"{op}: expected floating input and weight (or both of one integer "
                         f"dtype), got {x.dtype} and {w.dtype}")
    n, c = x.shape[:2]
    cin, og = w.shape[:2]
    k = tuple(w.shape[2:])
    if groups < 1 or c != cin or cin % groups:
        raise ShapeError(f"{op}: input has {c} channels but the weight {tuple(w.shape)} expects "
                         f"{cin} (in channels, divisible by groups={groups})")
    s = _ints(stride, nd, "stride", op)
    p = _ints(padding, nd, "padding", op)
    op_ = _ints(output_padding, nd, "output_padding", op)
    d = _ints(dilation, nd, "dilation", op)
    if min(s + d) < 1 or min(p + op_) < 0:
        raise ValueError(f"{op}: stride and dilation must be positive and padding and "
                         f"output_padding non-negative, got stride={s}, dilation={d}, "
                         f"padding={p}, output_padding={op_}")
    if any(o >= max(si, di) for o, si, di in zip(op_, s, d)):
        raise ValueError(f"{op}: output_padding {op_} must be smaller than stride {s} or "
                         f"dilation {d}")
    in_sp = tuple(x.shape[2:])
    if n and c and 0 in in_sp:  # as PyTorch's
        raise ShapeError(f"{op}: an empty input must have no samples or no channels, got "
                         f"{tuple(x.shape)}")
    full = tuple((li - 1) * si + di * (ki - 1) + 1 + oi
                 for li, si, di, ki, oi in zip(in_sp, s, d, k, op_))
    out_sp = tuple(f - 2 * pi for f, pi in zip(full, p))
    if min(out_sp) < 1:
        raise ShapeError(f"{op}: input {tuple(x.shape)} with kernel {k}, stride {s}, padding {p}"
                         f" gives an empty output {out_sp}")
    y = ops.conv_transpose(x, w, stride=s, padding=p, dilation=d, groups=groups,
                           shape=(n, groups * og) + out_sp)
    if b is not None:
        y = y + ops.reshape(b, (groups * og,) + (1,) * nd)
    return y


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed 1-D convolution (the input gradient of conv1d): input (N, C, L) or (C, L),
    weight (C, O/groups, K)."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, 1, "conv_transpose1d")


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed 2-D convolution: input (N, C, H, W) or (C, H, W), weight (C, O/groups, KH,
    KW)."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, 2, "conv_transpose2d")


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed 3-D convolution: input (N, C, D, H, W) or (C, D, H, W), weight (C,
    O/groups, kd, kh, kw)."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, 3, "conv_transpose3d")


# --- pooling ----------------------------------------------------------------------------------
def _pool_setup(x, kernel, stride, padding, dilation, ceil_mode, nd, op):
    """Kernel, stride, padding, dilation, output size and the extra right padding ceil_mode
    needs; PyTorch's rule: the last window must start inside the input or the left padding."""
    F._check_input(x, nd, op, _SPATIAL[nd])
    k = _ints(kernel, nd, "kernel_size", op)
    empty = isinstance(stride, tuple | list) and not stride  # (PyTorch's default too)
    s = k if stride is None or empty else _ints(stride, nd, "stride", op)
    p = _ints(padding, nd, "padding", op)
    d = _ints(dilation, nd, "dilation", op)
    if min(k + s + d) < 1 or min(p) < 0:
        raise ValueError(f"{op}: kernel_size, stride and dilation must be positive and padding "
                         f"non-negative, got {k}, {s}, {d}, {p}")
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise ValueError(f"{op}: padding {p} must be at most half the kernel {k}")
    out, extra = [], []
    for li, ki, si, pi, di in zip(x.shape[2:], k, s, p, d):
        span = di * (ki - 1) + 1
        o = (li + 2 * pi - span + (si - 1 if ceil_mode else 0)) // si + 1
        if ceil_mode and (o - 1) * si >= li + pi:
            o -= 1
        out.append(o)
        extra.append(max((o - 1) * si + span - li - 2 * pi, 0))
    if min(out) < 1:  # (with ceil_mode a kernel longer than the padded input still gives one)
        F._check_window(x, k, d, p, op)
        raise ShapeError(f"{op}: input {tuple(x.shape)} with kernel {k}, stride {s}, padding "
                         f"{p}, dilation {d} gives an empty output {tuple(out)}")
    return k, s, p, d, tuple(out), tuple(extra)


def _windows(x, k, s, p, d, extra, value):
    nd = len(k)
    if any(p) or any(extra):
        x = ops.pad(x, ((0, 0),) * (x.ndim - nd) + tuple((pi, pi + e) for pi, e in zip(p, extra)),
                    constant_values=value)
    return ops.sliding_window_view(x, k, axis=tuple(range(x.ndim - nd, x.ndim)), stride=s,
                                   dilation=d)


def _last_nan(x: Tensor, flat: Tensor, arg: Tensor) -> Tensor:
    """``arg`` (the first maximum along the last axis of ``flat``), but the last NaN where a
    window holds one: PyTorch's scan keeps the latest NaN it meets (its index and gradient)."""
    if not B.is_float(x.dtype) or (modes().jit is None and not
                                    bool(x.backend.xp.isnan(values(x)).any())):
        return arg
    nan = ops.isnan(flat)
    last = (flat.shape[-1] - 1) - ops.argmax(ops.flip(nan, -1), axis=-1, keepdims=True)
    return ops.where(ops.any(nan, axis=-1, keepdims=True), last, arg)


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, nd, op):
    if F._unbatched(x, nd, op, _SPATIAL[nd]):
        return F._squeeze0(_max_pool(ops.expand_dims(x, 0), kernel_size, stride, padding,
                                     dilation, ceil_mode, return_indices, nd, op))
    k, s, p, d, out, extra = _pool_setup(x, kernel_size, stride, padding, dilation, ceil_mode,
                                         nd, op)
    win = _windows(x, k, s, p, d, extra, -math.inf)
    if not return_indices and _values_only():
        # the same values; the max over windows is what ONNX export recognises as a MaxPool
        return ops.max(win, axis=tuple(range(2 + nd, 2 + 2 * nd)))
    # the first maximum in scan order takes the whole gradient, as PyTorch's (tied maxima, such
    # as the zeros after a ReLU, are common); also faster than a max over the window axes
    flat = ops.reshape(win, tuple(win.shape[:2 + nd]) + (math.prod(k),))  # (N may be 0)
    arg = _last_nan(x, flat, ops.argmax(flat, axis=-1, keepdims=True))
    pwin = None
    if any(p) or return_indices:  # each window position's flat index in the input (-1: padding)
        xp = x.backend.xp
        pos = Tensor._of(xp.arange(math.prod(x.shape[2:]), dtype=xp.int64).reshape(x.shape[2:]))
        pwin = ops.reshape(_windows(pos, k, s, p, d, extra, -1), out + (-1,))
    if any(p):  # a window of -inf inputs ties with its left padding: PyTorch picks the first
        # position inside the input (its index and gradient), never the padding
        picked = ops.take_along_axis(ops.broadcast_to(pwin, tuple(flat.shape)), arg, -1)
        arg = ops.where(picked < 0, ops.argmax(pwin >= 0, axis=-1, keepdims=True), arg)
    y = ops.squeeze(ops.take_along_axis(flat, arg, -1), -1)
    if not return_indices:
        return y
    idx = ops.take_along_axis(ops.broadcast_to(pwin, tuple(flat.shape)), arg, -1)
    return y, ops.squeeze(idx, -1).detach()


def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Max over sliding windows of (N, C, L) or (C, L); the first of tied maxima takes the
    gradient (PyTorch's), and ``return_indices`` also returns its flat index in the input."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 1,
                     "max_pool1d")


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Max over sliding windows of (N, C, H, W) or (C, H, W); see ``max_pool1d`` for ties and
    indices."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 2,
                     "max_pool2d")


def max_pool3d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Max over sliding windows of (N, C, D, H, W) or (C, D, H, W); see ``max_pool1d`` for ties
    and indices. Under CPU autocast, without indices, it runs in float32 (PyTorch's list)."""
    if not return_indices:
        (input,) = float32_in_region(input, cpu_only=True)
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices, 3,
                     "max_pool3d")


def _box_count(length, k, s, p, extra, out, inside_pad, xp, dtype):
    """How many counted positions each window along one axis covers (PyTorch's divisor)."""
    mark = xp.concatenate([xp.full(p, 1.0 if inside_pad else 0.0), xp.ones(length),
                           xp.full(p, 1.0 if inside_pad else 0.0), xp.zeros(extra)])
    cs = xp.concatenate([xp.zeros(1), xp.cumsum(mark)])
    starts = xp.arange(out) * s
    return (cs[starts + k] - cs[starts]).astype(dtype)


def _int_divide(total: Tensor, div) -> Tensor:
    """An integer sum over a nonzero divisor (an int, or positive counts), rounded toward zero
    (PyTorch's integer pools)."""
    if isinstance(div, int) and div < 0:
        total, div = -total, -div
    q = ops.abs(total) // div
    return ops.where(total < 0, -q, q)


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
              nd, op):
    if F._unbatched(x, nd, op, _SPATIAL[nd]):
        return F._squeeze0(_avg_pool(ops.expand_dims(x, 0), kernel_size, stride, padding,
                                     ceil_mode, count_include_pad, divisor_override, nd, op))
    k, s, p, d, out, extra = _pool_setup(x, kernel_size, stride, padding, 1, ceil_mode, nd, op)
    if nd == 3 and any(li < ki for li, ki in zip(x.shape[2:], k)):
        # PyTorch's 3-d kernel refuses it even where padding or ceil_mode would make it fit
        raise ShapeError(f"{op}: input {tuple(x.shape)} is smaller than the kernel {k} (without "
                         f"padding)")
    if divisor_override is not None:
        try:
            divisor_override = operator.index(divisor_override)
        except TypeError:
            raise TypeError(f"{op}: divisor_override must be an int, got "
                            f"{type(divisor_override).__name__}") from None
        if divisor_override == 0:
            raise ValueError(f"{op}: divisor_override must not be zero")
    win = _windows(x, k, s, p, d, extra, 0)
    total = ops.sum(win, axis=tuple(range(2 + nd, 2 + 2 * nd)))
    whole = x.dtype.kind in "iu"  # integer input stays integer, truncating (PyTorch's)
    if divisor_override is not None:
        if whole:
            return _narrow(_int_divide(total, int(divisor_override)), x.dtype)
        return total / float(divisor_override)
    if not any(extra) and (count_include_pad or not any(p)):
        if whole:
            return _narrow(_int_divide(total, math.prod(k)), x.dtype)
        return total / float(math.prod(k))
    xp = x.backend.xp
    div = 1 if whole else 1.0
    for i in range(nd):
        c = _box_count(x.shape[2 + i], k[i], s[i], p[i], extra[i], out[i], count_include_pad,
                       xp, total.dtype)
        div = div * c.reshape((-1,) + (1,) * (nd - 1 - i))
    if whole:
        return _narrow(_int_divide(total, Tensor._of(xp.maximum(div, 1))), x.dtype)
    return total / Tensor._of(div)


def _narrow(mean: Tensor, dtype) -> Tensor:
    """An integer pool's means, divided in the sum's wide type, back in the input's dtype (a
    uint8 sum narrowed before dividing would wrap around)."""
    return mean if mean.dtype == dtype else ops.astype(mean, dtype)


def avg_pool1d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Mean over sliding windows of (N, C, L) or (C, L); padding counts unless
    ``count_include_pad`` is False; windows that ``ceil_mode`` adds past the padding count
    only what they cover. Integer input gives integer means, rounded toward zero (PyTorch's)."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1,
                     "avg_pool1d")


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """Mean over sliding windows of (N, C, H, W) or (C, H, W), PyTorch's divisor rules (see
    avg_pool1d)."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, 2, "avg_pool2d")


def avg_pool3d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """Mean over sliding windows of (N, C, D, H, W) or (C, D, H, W), PyTorch's divisor
    rules; in float32 under CPU autocast (PyTorch's list)."""
    (input,) = float32_in_region(input, cpu_only=True)
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, 3, "avg_pool3d")


def _lp_pool(x, norm_type, kernel_size, stride, ceil_mode, nd, op):
    k = _ints(kernel_size, nd, "kernel_size", op)
    if not norm_type or not math.isfinite(float(norm_type)):
        raise ValueError(f"{op}: norm_type must be a finite non-zero power, got {norm_type}")
    # an integer power of integer input stays integer (averaged rounding toward zero), as
    # PyTorch's pow: a float power makes it float32
    whole = x.dtype.kind in "iu" and isinstance(norm_type, int | B.np.integer)
    powered = x ** (int(norm_type) if whole else float(norm_type))
    if nd == 3:  # autocast: PyTorch's lp_pool3d averages with avg_pool3d, a float32 op
        (powered,) = float32_in_region(powered, cpu_only=True)
    out = _avg_pool(powered, k, stride, 0, ceil_mode, True, None, nd, op)
    v = out * float(math.prod(k))  # (PyTorch's sign(out)·relu(|out|) is out itself)
    # a window of zeros has value 0 (inf for p < 0) and gradient 0, as PyTorch's, not the
    # NaN of the root's infinite slope at 0 times the zero inner derivative
    zero = v == 0
    root = ops.where(zero, 1.0, v) ** (1.0 / norm_type)
    return ops.where(zero, 0.0 if norm_type > 0 else math.inf, root)


def lp_pool1d(input: Tensor, norm_type: float, kernel_size, stride=None,
              ceil_mode: bool = False) -> Tensor:
    """(Σ xᵖ)^(1/p) over sliding windows of (N, C, L) or (C, L) (p = ``norm_type``), as
    PyTorch."""
    return _lp_pool(input, norm_type, kernel_size, stride, ceil_mode, 1, "lp_pool1d")


def lp_pool2d(input: Tensor, norm_type: float, kernel_size, stride=None,
              ceil_mode: bool = False) -> Tensor:
    """(Σ xᵖ)^(1/p) over sliding windows of (N, C, H, W)."""
    return _lp_pool(input, norm_type, kernel_size, stride, ceil_mode, 2, "lp_pool2d")


def lp_pool3d(input: Tensor, norm_type: float, kernel_size, stride=None,
              ceil_mode: bool = False) -> Tensor:
    """(Σ xᵖ)^(1/p) over sliding windows of (N, C, D, H, W)."""
    return _lp_pool(input, norm_type, kernel_size, stride, ceil_mode, 3, "lp_pool3d")


def _max_unpool(x, indices, kernel_size, stride, padding, output_size, nd, op):
    # autocast: PyTorch's CPU list has max_unpool2d and 3d (its 1d runs as 2d)
    (x,) = float32_in_region(x, cpu_only=True)
    if F._unbatched(x, nd, op, _SPATIAL[nd]):
        if isinstance(indices, Tensor) and indices.ndim == x.ndim:
            indices = ops.expand_dims(indices, 0)
        return F._squeeze0(_max_unpool(ops.expand_dims(x, 0), indices, kernel_size, stride,
                                       padding, output_size, nd, op))
    k = _ints(kernel_size, nd, "kernel_size", op)
    s = k if stride is None else _ints(stride, nd, "stride", op)
    p = _ints(padding, nd, "padding", op)
    default = tuple((li - 1) * si - 2 * pi + ki for li, si, pi, ki in zip(x.shape[2:], s, p, k))
    if output_size is None:
        out = default
    else:
        out = tuple(int(o) for o in output_size)
        if len(out) == nd + 2:
            out = out[2:]
        if len(out) != nd:
            raise ShapeError(f"{op}: output_size {output_size!r} must give {nd} spatial sizes "
                             f"(or {nd + 2} with N and C)")
        # PyTorch's range: within one stride of the default size (a size further off would
        # lay the flat indices out on a different grid)
        for a, (o, dft, si) in enumerate(zip(out, default, s)):
            if not dft - si < o < dft + si:
                raise ValueError(f"{op}: output_size {out} is invalid: size {a} must lie "
                                 f"strictly between {dft - si} and {dft + si}")
    if not isinstance(indices, Tensor) or tuple(indices.shape) != tuple(x.shape) or \
            indices.dtype.kind not in "iu":
        raise ShapeError(f"{op}: indices must be an integer tensor of the input's shape "
                         f"{tuple(x.shape)}, got {getattr(indices, 'shape', indices)!r}")
    n, c = x.shape[:2]
    size = math.prod(out)
    idx = ops.reshape(indices, (n, c, math.prod(x.shape[2:])))  # (N may be 0)
    if size == 0:  # an empty output, whatever the indices, as PyTorch's
        return ops.reshape(ops.reshape(x, (n, c, math.prod(x.shape[2:])))[..., :0],
                           (n, c) + out)
    iv = values(indices)
    if iv.size and (int(iv.min()) < 0 or int(iv.max()) >= size):
        raise IndexError(f"{op}: index {int(iv.max()) if iv.max() >= size else int(iv.min())} "
                         f"is out of range for an output of size {out}")
    flat = ops.reshape(x, (n, c, math.prod(x.shape[2:])))
    y = _scatter_along(flat, idx, axis=2, shape=(n, c, size))
    with no_grad():
        ones = Tensor._of(x.backend.xp.ones(flat.shape, flat.dtype))
        count = _scatter_along(ones, idx, axis=2, shape=(n, c, size))
    if iv.size and (modes().jit is not None or float(values(count).max()) > 1):
        # (under a jit trace always: a later call's indices may repeat where these do not)
        # a position picked by several windows holds its value once (PyTorch writes, not adds)
        # while each window still receives the full gradient there, as PyTorch's backward does
        # (an infinite value stays itself, where its sum less itself would be NaN)
        once = (y / ops.maximum(count, 1.0)).detach()
        finite = ops.where(ops.isfinite(y), y, 0.0)
        y = ops.where(count > 1, once - (finite.detach() - finite), y)
    return ops.reshape(y, (n, c) + out)


def max_unpool1d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """Put each value back at its ``max_pool1d`` index in zeros of the unpooled size."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 1,
                       "max_unpool1d")


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """Put each value back at its ``max_pool2d`` index (flat over H·W) in zeros."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 2,
                       "max_unpool2d")


def max_unpool3d(input: Tensor, indices: Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> Tensor:
    """Put each value back at its ``max_pool3d`` index (flat over D·H·W) in zeros."""
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 3,
                       "max_unpool3d")


def _adaptive_bins(xp, n: int, size: int):
    """Each of ``size`` bins' member indices (PyTorch's edges [⌊i n/s⌋, ⌈(i+1) n/s⌉)), padded
    to the widest bin by repeating the bin's last member (which changes neither max nor argmax)."""
    lo = (xp.arange(size) * n) // size
    hi = -((-(xp.arange(size) + 1) * n) // size)
    width = int((hi - lo).max())
    return xp.minimum(lo[:, None] + xp.arange(width)[None, :], hi[:, None] - 1)


def _adaptive_max(x, output_size, return_indices, nd, op):
    if F._unbatched(x, nd, op, _SPATIAL[nd]):
        return F._squeeze0(_adaptive_max(ops.expand_dims(x, 0), output_size, return_indices,
                                         nd, op))
    sizes = F._adaptive_sizes(output_size, x, nd, op)
    if 0 in x.shape[2:]:
        raise ShapeError(f"{op}: expected non-empty spatial axes, got input {tuple(x.shape)}")
    if min(sizes) == 0:  # an empty output, as PyTorch's
        y = F._adaptive_empty(x, sizes)
        if not return_indices:
            return y
        return y, Tensor._of(x.backend.xp.zeros(tuple(y.shape), dtype=x.backend.xp.int64))
    if min(sizes) < 1 or any(li < 1 for li in x.shape[2:]):
        raise ShapeError(f"{op}: output_size {sizes} and the spatial sizes of "
                         f"{tuple(x.shape)} must be positive")
    xp = x.backend.xp
    bins = [_adaptive_bins(xp, li, si) for li, si in zip(x.shape[2:], sizes)]
    # index grids (o1, w1, o2, w2, ...) per axis -> gathered (N, C, o1, w1, o2, w2, ...)
    grid = []
    for i, b in enumerate(bins):
        shape = [1] * (2 * nd)
        shape[2 * i:2 * i + 2] = b.shape
        grid.append(b.reshape(shape))
    g = x[(slice(None), slice(None)) + tuple(grid)]
    perm = (0, 1) + tuple(2 + 2 * i for i in range(nd)) + tuple(3 + 2 * i for i in range(nd))
    width = math.prod(b.shape[1] for b in bins)  # (not -1: N may be 0)
    flat = ops.reshape(ops.transpose(g, perm), (x.shape[0], x.shape[1]) + sizes + (width,))
    arg = _last_nan(x, flat, ops.argmax(flat, axis=-1, keepdims=True))
    y = ops.squeeze(ops.take_along_axis(flat, arg, -1), -1)
    if not return_indices:
        return y
    pos = xp.arange(math.prod(x.shape[2:]), dtype=xp.int64).reshape(x.shape[2:])
    pflat = Tensor._of(pos[tuple(grid)].transpose(tuple(q - 2 for q in perm[2:]))
                   .reshape(sizes + (-1,)))
    idx = ops.take_along_axis(ops.broadcast_to(pflat, tuple(flat.shape)), arg, -1)
    return y, ops.squeeze(idx, -1).detach()


def adaptive_max_pool1d(input: Tensor, output_size, return_indices: bool = False):
    """Max over ``output_size`` bins along L of (N, C, L) or (C, L) (PyTorch's bin edges); the
    first maximum of each bin takes the gradient."""
    return _adaptive_max(input, output_size, return_indices, 1, "adaptive_max_pool1d")


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """Max over an (oh, ow) grid of bins of (N, C, H, W) or (C, H, W); ``None`` keeps that
    axis's size."""
    return _adaptive_max(input, output_size, return_indices, 2, "adaptive_max_pool2d")


def adaptive_max_pool3d(input: Tensor, output_size, return_indices: bool = False):
    """Max over an (od, oh, ow) grid of bins of (N, C, D, H, W) or (C, D, H, W); in float32
    under CPU autocast (PyTorch's list)."""
    (input,) = float32_in_region(input, cpu_only=True)
    return _adaptive_max(input, output_size, return_indices, 3, "adaptive_max_pool3d")


# --- im2col -----------------------------------------------------------------------------------
def _pair_exact(v, name: str, op: str) -> tuple:
    """An int or exactly two ints: ``fold`` and ``unfold`` take no other length, as PyTorch."""
    if not isinstance(v, int | B.np.integer) and len(v) != 2:
        raise ValueError(f"{op}: {name} must be an int or 2 ints, got {v!r}")
    return _ints(v, 2, name, op)


def unfold(input: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """im2col: (N, C, H, W) -> (N, C·kh·kw, L), one column per sliding window (PyTorch order)."""
    op = "unfold"
    x = input
    unbatched = isinstance(x, Tensor) and x.ndim == 3
    if unbatched:
        x = ops.expand_dims(x, 0)
    F._check_input(x, 2, op, "(N, C, H, W) or (C, H, W)")
    k = _pair_exact(kernel_size, "kernel_size", op)
    d = _pair_exact(dilation, "dilation", op)
    p = _pair_exact(padding, "padding", op)
    s = _pair_exact(stride, "stride", op)
    n, c = x.shape[:2]
    F._check_window(x, k, d, p, op)
    win = _windows(x, k, s, p, d, (0, 0), 0.0)                       # (N, C, oh, ow, kh, kw)
    blocks = win.shape[2] * win.shape[3]
    cols = ops.reshape(ops.transpose(win, (0, 1, 4, 5, 2, 3)), (n, c * k[0] * k[1], blocks))
    return cols[0] if unbatched else cols


def fold(input: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """col2im: (N, C·kh·kw, L) -> (N, C, H, W), overlapping windows added (unfold's adjoint)."""
    op = "fold"
    x = input
    unbatched = isinstance(x, Tensor) and x.ndim == 2
    if unbatched:
        x = ops.expand_dims(x, 0)
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ShapeError(f"{op}: expected input of shape (N, C·kh·kw, L) or (C·kh·kw, L), got "
                         f"{getattr(x, 'shape', x)!r}")
    size = _pair_exact(output_size, "output_size", op)
    k = _pair_exact(kernel_size, "kernel_size", op)
    d = _pair_exact(dilation, "dilation", op)
    p = _pair_exact(padding, "padding", op)
    s = _pair_exact(stride, "stride", op)
    padded = tuple(o + 2 * pi for o, pi in zip(size, p))
    blocks = tuple((li - di * (ki - 1) - 1) // si + 1 for li, di, ki, si in zip(padded, d, k, s))
    n, ck, nb = x.shape
    kk = k[0] * k[1]
    if ck % kk or nb != blocks[0] * blocks[1] or min(blocks) < 1:
        raise ShapeError(f"{op}: input {tuple(x.shape)} must have C·{kk} rows and "
                         f"{blocks[0]}·{blocks[1]} = {blocks[0] * blocks[1]} columns for "
                         f"output_size {size}, kernel {k}, padding {p}, stride {s}")
    c = ck // kk
    win = ops.transpose(ops.reshape(x, (n, c) + k + blocks), (0, 1, 4, 5, 2, 3))
    y = _crop(fold_windows(win, (n, c) + padded, (2, 3), stride=s, dilation=d), p, size)
    return y[0] if unbatched else y


# --- pixel shuffles ---------------------------------------------------------------------------
def channel_shuffle(input: Tensor, groups: int) -> Tensor:
    """(N, C, *) with C = g·k channels as g groups of k -> the channels interleaved (k groups of
    g), as ShuffleNet mixes grouped convolutions' outputs (PyTorch's channel_shuffle)."""
    x = input
    g = int(groups)
    if not isinstance(x, Tensor) or x.ndim < 3 or g < 1 or x.shape[1] % g:
        raise ShapeError(f"channel_shuffle: expected (N, C, *) with C divisible by groups, got "
                         f"{getattr(x, 'shape', x)!r} and groups={groups}")
    n, c, *rest = x.shape
    y = ops.reshape(x, (n, g, c // g, *rest))
    return ops.reshape(ops.swapaxes(y, 1, 2), (n, c, *rest))


def native_channel_shuffle(input: Tensor, groups: int) -> Tensor:
    """PyTorch's name for ``channel_shuffle`` without its dispatch: the same result."""
    return channel_shuffle(input, groups)


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C·r², H, W) -> (*, C, H·r, W·r): channels become r×r sub-pixel blocks."""
    x = input
    r = int(upscale_factor)
    if not isinstance(x, Tensor) or x.ndim < 3 or r < 1 or x.shape[-3] % (r * r):
        raise ShapeError(f"pixel_shuffle: expected (*, C·{r}², H, W) with a positive factor, got "
                         f"{getattr(x, 'shape', x)!r} and upscale_factor={upscale_factor}")
    *lead, c, h, w = x.shape
    lead, c = tuple(lead), c // (r * r)
    m = len(lead)
    y = ops.reshape(x, lead + (c, r, r, h, w))
    y = ops.transpose(y, tuple(range(m)) + tuple(m + i for i in (0, 3, 1, 4, 2)))
    return ops.reshape(y, lead + (c, h * r, w * r))


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H·r, W·r) -> (*, C·r², H, W): the inverse of ``pixel_shuffle``."""
    x = input
    r = int(downscale_factor)
    if not isinstance(x, Tensor) or x.ndim < 3 or r < 1 or x.shape[-1] % r or x.shape[-2] % r:
        raise ShapeError(f"pixel_unshuffle: expected (*, C, H·{r}, W·{r}) with a positive factor, "
                         f"got {getattr(x, 'shape', x)!r} and downscale_factor="
                         f"{downscale_factor}")
    *lead, c, h, w = x.shape
    lead = tuple(lead)
    m = len(lead)
    y = ops.reshape(x, lead + (c, h // r, r, w // r, r))
    y = ops.transpose(y, tuple(range(m)) + tuple(m + i for i in (0, 2, 4, 1, 3)))
    return ops.reshape(y, lead + (c * r * r, h // r, w // r))


# --- interpolation ----------------------------------------------------------------------------
_MODES = {"nearest": (1, 2, 3), "nearest-exact": (1, 2, 3), "linear": (1,), "bilinear": (2,),
          "bicubic": (2,), "trilinear": (3,), "area": (1, 2, 3), "lanczos": (2,)}
_AA_MODES = ("bilinear", "bicubic", "lanczos")


def _take(x: Tensor, idx, axis: int) -> Tensor:
    return x[(slice(None),) * axis + (idx,)]


def _weights(w, x: Tensor, axis: int) -> Tensor:
    return Tensor._of(w.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - axis - 1)))


def _f32(v: float) -> float:
    """``v`` rounded to float32, as C's ``floorf`` sees a double argument."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _keys_near(u, a: float = -0.75):
    """Keys' cubic kernel for distances in [0, 1] (PyTorch's ``cubic_convolution1``)."""
    return ((a + 2) * u - (a + 3)) * u * u + 1


def _keys_far(u, a: float = -0.75):
    """Keys' cubic kernel for distances in [1, 2] (PyTorch's ``cubic_convolution2``)."""
    return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a


def _cubic(t):
    """The weights of the 4 taps around each source point at fraction ``t`` (PyTorch's A = -0.75
    and evaluation order, so float32 weights agree bit for bit)."""
    return _keys_far(t + 1), _keys_near(t), _keys_near(1 - t), _keys_far((1 - t) + 1)


def _source(xp, n: int, out: int, scale, align_corners: bool, ct, clamp: bool):
    """Each output position's source coordinate in dtype ``ct`` (PyTorch's
    ``area_pixel_compute_source_index``: float32 for every input but float64, whose coordinates
    are float64); ``clamp`` lifts negative ones to 0 (all but bicubic)."""
    dst = xp.arange(out).astype(ct)
    if align_corners:
        return dst * (ct.type(n - 1) / ct.type(out - 1) if out > 1 else ct.type(0))
    sc = ct.type(1.0 / scale) if scale else ct.type(n) / ct.type(out)
    src = (dst + ct.type(0.5)) * sc - ct.type(0.5)
    return xp.maximum(src, ct.type(0)) if clamp else src


def _floor_index(xp, src, n: int):
    """PyTorch's ``min(floorf(src), n - 1)``: the floor taken in float32 even for float64."""
    return xp.minimum(xp.floor(src.astype(B.float32)).astype(xp.int64), n - 1)


def _nearest_index(xp, n: int, out: int, scale, mode: str, ct, pixelwise: bool):
    """The source pixel of each output position in the nearest modes, as PyTorch's CPU kernels
    pick it. ``pixelwise`` is PyTorch's 2-D kernel for small outputs (``nearest_idx``): float32
    scale whatever the dtype, an unchanged axis copied and a doubled one halved exactly."""
    if pixelwise:
        ct = B.float32
        if mode == "nearest" and out == n:
            return xp.arange(out)
        if mode == "nearest" and out == 2 * n:
            return xp.arange(out) // 2
    sc = ct.type(1.0 / scale) if scale else ct.type(n) / ct.type(out)
    dst = xp.arange(out)
    if mode == "nearest":
        src = dst.astype(ct) * sc
    elif pixelwise:  # (i + 0.5) * scale in float64, as C promotes it
        src = (dst + 0.5) * float(sc)
    else:
        src = xp.maximum((dst.astype(ct) + ct.type(0.5)) * sc - ct.type(0.5), ct.type(0)) + 0.5
    return _floor_index(xp, src, n)


def _resample_axis(x, axis, out, scale, mode, align_corners, pixelwise=False):
    xp = x.backend.xp
    n = x.shape[axis]
    # coordinates in float32 whatever the input (float64 alone keeps float64), as PyTorch: an
    # integer or float16 dtype cannot hold fractional or large source indices
    ct = B.float64 if x.dtype == B.float64 else B.float32
    if mode in ("nearest", "nearest-exact"):
        return _take(x, _nearest_index(xp, n, out, scale, mode, ct, pixelwise), axis)
    if mode == "bicubic":
        src = _source(xp, n, out, scale, align_corners, ct, clamp=False)
        i0 = _floor_index(xp, src, n)
        taps = _cubic(xp.clip(src - i0.astype(ct), 0, 1))
        y = None
        for j, w in enumerate(taps):
            term = _take(x, xp.clip(i0 - 1 + j, 0, n - 1), axis) * _weights(w, x, axis)
            y = term if y is None else y + term
        return y
    if out == n:  # PyTorch's linear modes copy an axis whose size does not change
        return x
    src = _source(xp, n, out, scale, align_corners, ct, clamp=True)
    i0 = _floor_index(xp, src, n)
    lam = xp.clip(src - i0.astype(ct), 0, 1)
    i1 = xp.minimum(i0 + 1, n - 1)
    return _take(x, i0, axis) * _weights(1 - lam, x, axis) + \
        _take(x, i1, axis) * _weights(lam, x, axis)


def _uint8_taps(n: int, out: int, scale, cubic: bool, align_corners: bool):
    """PyTorch's uint8 linear/cubic taps along one axis: each output's first source index, its
    int16 weights (border taps folded onto the edge pixel, as the float path clamps them) and
    the fixed-point precision, computed in float64 as ``_compute_index_ranges_int16_weights``."""
    taps = 4 if cubic else 2
    support = taps // 2
    if align_corners:
        sc = (n - 1) / (out - 1) if out > 1 else 0.0
    else:
        sc = 1.0 / scale if scale else n / out
    firsts, rows, wmax = [], [], 0.0
    for i in range(out):
        real = sc * i if align_corners else sc * (i + 0.5) - 0.5
        if not (align_corners or cubic) and real < 0:
            real = 0.0
        idx = min(math.floor(_f32(real)), n - 1)
        lam = min(max(real - idx, 0.0), 1.0)
        lo = idx - support + 1
        first = max(lo, 0)
        size = min(max(min(idx + support + 1, n) - first, 0), taps)
        w = [0.0] * taps
        k = 0
        for j in range(taps):
            u = abs(j + 1 - support - lam)
            if cubic:
                v = _keys_near(u) if u < 1.0 else _keys_far(u) if u < 2.0 else 0.0
            else:
                v = 1.0 - u if u < 1.0 else 0.0
            if lo + j <= 0:
                k = 0
            elif lo + j >= n - 1:
                k = size - 1
            w[k] += v
            wmax = max(wmax, w[k])
            k += 1
        firsts.append(first)
        rows.append([wj if j < size else 0.0 for j, wj in enumerate(w)])
    return (firsts,) + _quantised(rows, wmax)


def _sinc(u: float) -> float:
    return 1.0 if u == 0.0 else math.sin(u * math.pi) / (u * math.pi)


def _aa_filter(u: float, mode: str) -> float:
    """The antialiasing filters at distance ``u`` >= 0: triangle, Keys a = -0.5, Lanczos-3 (PIL's
    and PyTorch's)."""
    if mode == "bicubic":
        return _keys_near(u, -0.5) if u < 1.0 else _keys_far(u, -0.5) if u < 2.0 else 0.0
    if mode == "lanczos":
        return _sinc(u) * _sinc(u / 3.0) if u < 3.0 else 0.0
    return 1.0 - u if u < 1.0 else 0.0


def _aa_taps(n: int, out: int, scale, mode: str, align_corners: bool):
    """PyTorch's antialiased taps along one axis (``_compute_weights_aa``, in float64): the
    mode's filter stretched by the downscale factor, so each output averages every input pixel
    it covers; each output's first source index, its weights (normalised to sum to 1,
    zero-padded to the widest) and how many are taps."""
    if align_corners:
        sc = (n - 1) / (out - 1) if out > 1 else 0.0
    else:
        sc = 1.0 / scale if scale else n / out
    half = {"bicubic": 2.0, "lanczos": 3.0}.get(mode, 1.0)
    support = half * sc if sc >= 1.0 else half
    width = math.ceil(support) * 2 + 1
    inv = 1.0 / sc if sc >= 1.0 else 1.0
    firsts, rows, counts = [], [], []
    for i in range(out):
        center = sc * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        size = min(max(min(int(center + support + 0.5), n) - first, 0), width)
        w = []
        for j in range(size):
            w.append(_aa_filter(abs((j + first - center + 0.5) * inv), mode))
        total = sum(w)
        if total != 0.0:
            w = [v / total for v in w]
        firsts.append(first)
        rows.append(w + [0.0] * (width - size))
        counts.append(size)
    return firsts, rows, B.np.asarray(counts)


def _quantised(rows, wmax: float):
    """float taps as PyTorch's uint8 kernels hold them: int16 with the finest precision that
    keeps ``wmax`` (the largest weight) in range."""
    prec = 0
    while prec < 22 and int(0.5 + wmax * (1 << (prec + 1))) < (1 << 15):
        prec += 1
    one = 1 << prec
    q = [[int(v * one - 0.5) if v * one < 0 else int(v * one + 0.5) for v in r] for r in rows]
    return q, prec


def _resample_axis_aa(x, axis, out, scale, mode, align_corners):
    """One axis of an antialiased bilinear or bicubic resize (PyTorch's ``antialias=True``):
    a weighted sum of gathered taps, so the gradient is the exact transpose; uint8 in PyTorch's
    fixed point."""
    n = x.shape[axis]
    if out == n:  # (PyTorch's separable kernel skips an axis whose size does not change)
        return x
    xp = x.backend.xp
    firsts, rows, counts = _aa_taps(n, out, scale, mode, align_corners)
    if x.dtype == B.as_dtype("uint8"):
        q, prec = _quantised(rows, max(max(r) for r in rows))
        return _fixed_point_taps(x, axis, xp.asarray(firsts, dtype=xp.int64),
                                 xp.asarray(q, dtype=xp.int32), prec)
    first = xp.asarray(firsts, dtype=xp.int64)
    weights = xp.asarray(rows, dtype=B.float64)
    y = None
    for j in range(weights.shape[1]):
        term = _take(x, xp.minimum(first + j, n - 1), axis) * _weights(weights[:, j], x, axis)
        if (counts <= j).any():  # a padding tap: 0, not 0 · x (an inf pixel would give NaN)
            keep = xp.asarray(counts > j).reshape((-1,) + (1,) * (x.ndim - axis - 1))
            term = ops.where(Tensor._of(keep), term, 0.0)
        y = term if y is None else y + term
    return y


def _fixed_point_taps(x, axis, first, weights, prec: int):
    """Σ_j w_j · x[first + j] in int32 plus half a unit, shifted down by ``prec`` bits and
    clamped to [0, 255]: PyTorch's uint8 resampling arithmetic."""
    n = x.shape[axis]
    xp = x.backend.xp
    xi = ops.astype(x, B.int32)
    y = None
    for j in range(weights.shape[1]):
        term = _take(xi, xp.minimum(first + j, n - 1), axis) * \
            Tensor._of(weights[:, j].reshape((-1,) + (1,) * (x.ndim - axis - 1)))
        y = term if y is None else y + term
    y = ops.floor_divide(y + (1 << (prec - 1)), 1 << prec)
    return ops.astype(ops.clip(y, 0, 255), x.dtype)


def _resample_axis_uint8(x, axis, out, scale, mode, align_corners):
    """One axis of a uint8 linear or cubic resize in PyTorch's fixed point: int16 weights, an
    integer dot product plus half a unit, shifted down and clamped to [0, 255] (so each axis's
    result is rounded, as PyTorch's separable uint8 kernel)."""
    n = x.shape[axis]
    if out == n:
        return x
    xp = x.backend.xp
    firsts, q, prec = _uint8_taps(n, out, scale, mode == "bicubic", align_corners)
    return _fixed_point_taps(x, axis, xp.asarray(firsts, dtype=xp.int64),
                             xp.asarray(q, dtype=xp.int32), prec)


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                antialias: bool = False) -> Tensor:
    """Resize the spatial axes of (N, C, ...) as PyTorch: ``nearest``, ``nearest-exact``,
    ``linear``/``bilinear``/``trilinear``, ``bicubic`` (A = -0.75, clamped borders) and ``area``;
    ``align_corners`` maps corner pixel centres onto each other. Separable: one axis at a time;
    the linear modes copy an axis whose size is unchanged. Source indices are computed in float32
    (float64 for float64 input) exactly as PyTorch's, so nearest modes pick the same pixels for
    every dtype; uint8 input takes the linear and cubic modes in PyTorch's fixed point (rounded
    and clamped to [0, 255]), other integer dtypes only the nearest modes. ``antialias=True``
    ('bilinear', 'bicubic', and 'lanczos', which needs it) widens the filter by the downscale
    factor, as PyTorch and PIL: each output pixel averages all the input pixels it covers
    instead of sampling a few."""
    op = "interpolate"
    x = input
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise ShapeError(f"{op}: expected (N, C, ...) with 1 to 3 spatial axes, got "
                         f"{getattr(x, 'shape', x)!r}")
    nd = x.ndim - 2
    if mode not in _MODES:
        raise ValueError(f"{op}: mode must be one of {sorted(_MODES)}, got {mode!r}")
    if nd not in _MODES[mode]:
        ranks = " or ".join(str(d + 2) for d in _MODES[mode])
        raise ShapeError(f"{op}: mode {mode!r} takes {ranks}-d input, got {tuple(x.shape)}")
    if antialias and (mode not in _AA_MODES or nd != 2):
        raise ValueError(f"{op}: antialias=True applies to the modes {_AA_MODES} of 4-d input "
                         f"(N, C, H, W), got mode {mode!r} with input {tuple(x.shape)}")
    if mode == "lanczos" and (align_corners or not antialias):
        raise ValueError(f"{op}: mode 'lanczos' (Lanczos-3, PIL's) needs antialias=True and "
                         f"align_corners False, got antialias={antialias}, "
                         f"align_corners={align_corners}")
    if align_corners is not None and mode in ("nearest", "nearest-exact", "area"):
        raise ValueError(f"{op}: align_corners only applies to the linear and cubic modes, "
                         f"not {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: give exactly one of size and scale_factor")
    if size is not None:
        if isinstance(size, Tensor):  # a 0-d or 1-d integer tensor, as PyTorch accepts
            size = size.tolist()
        out = _ints(size, nd, "size", op)
        scales = (None,) * nd
    else:
        scales = tuple(float(f) for f in ((scale_factor,) * nd if isinstance(
            scale_factor, int | float) else scale_factor))
        if len(scales) != nd or min(scales) <= 0:
            raise ValueError(f"{op}: scale_factor must be positive, one per spatial axis, got "
                             f"{scale_factor!r}")
        out = tuple(int(math.floor(li * f)) for li, f in zip(x.shape[2:], scales))
        if recompute_scale_factor:
            scales = (None,) * nd
    if mode == "area":  # adaptive average pooling, which takes an empty output (PyTorch's)
        if min(out) < 0:
            raise ShapeError(f"{op}: output size {out} must be non-negative in mode 'area'")
    elif min(out) < 1:
        raise ShapeError(f"{op}: output size {out} must be positive in mode {mode!r}")
    if mode == "area":
        return (F.adaptive_avg_pool1d(x, out[0]) if nd == 1 else
                F.adaptive_avg_pool2d(x, out) if nd == 2 else F.adaptive_avg_pool3d(x, out))
    nearest = mode in ("nearest", "nearest-exact")
    if x.dtype.kind in "iub" and not nearest:
        if x.dtype != B.as_dtype("uint8"):
            raise DTypeError(f"{op}: mode {mode!r} takes floating or uint8 input, got {x.dtype}")
        # PyTorch's uint8 kernel: one axis at a time, last first, each rounded in fixed point
        resample = _resample_axis_aa if antialias else _resample_axis_uint8
        y = x
        for i in reversed(range(nd)):
            y = resample(y, 2 + i, out[i], scales[i], mode, bool(align_corners))
        return y
    half = x.dtype == B.float16 and not nearest
    y = ops.astype(x, B.float32) if half else x  # weighed in float32, as PyTorch's CPU kernels
    if antialias:  # PyTorch's separable antialiased kernel: the last axis first
        for i in reversed(range(nd)):
            y = _resample_axis_aa(y, 2 + i, out[i], scales[i], mode, bool(align_corners))
        return ops.astype(y, B.float16) if half else y
    # PyTorch's 2-D nearest modes take another kernel (another index rule) for small outputs
    pixelwise = nearest and nd == 2 and sum(out) <= 128
    for i in range(nd):
        if out[i] != x.shape[2 + i] or not nearest or scales[i]:
            y = _resample_axis(y, 2 + i, out[i], scales[i], mode, bool(align_corners),
                               pixelwise)
    return ops.astype(y, B.float16) if half else y


def upsample(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
             align_corners: bool | None = None) -> Tensor:
    """``interpolate`` under its older name."""
    return interpolate(input, size, scale_factor, mode, align_corners)
