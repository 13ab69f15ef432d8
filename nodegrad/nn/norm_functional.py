"""Per-sample normalisation (group, instance, local-response and RMS norm), channel and alpha
dropout, the bilinear map and bags of embeddings, in PyTorch's semantics.

All are composites of primitives (their gradients of any order come from the engine).
"""

from __future__ import annotations

import math
import warnings

from .. import _backend as B
from .. import ops
from ..amp import float32_in_region
from ..autodiff import computes_with_values, effect, modes, no_grad
from ..batching import BatchTracer, lowered, values
from ..errors import DTypeError, ShapeError
from ..random import Generator, default_generator, keep_mask
from ..ops.shape import broadcast_to, expand_dims, moveaxis
from ..tensor import Tensor, _shape_arg


_HALF = (B.bfloat16, B.np.dtype("float16"))


def half_in_float32(x: Tensor, *params) -> bool:
    """Whether a norm of half-precision ``x`` (bfloat16, float16) with float32 parameters or
    statistics (an autocast region's float32 layers) runs in float32 and returns ``x``'s dtype,
    as PyTorch's mixed-dtype norms do (instead of mixing the widths)."""
    if x.dtype not in _HALF:
        return False
    given = [p for p in params if p is not None]
    return bool(given) and all(p.dtype == B.float32 for p in given)


def _affine(y: Tensor, weight, bias, shape) -> Tensor:
    if weight is not None:
        y = y * ops.reshape(weight, shape)
    if bias is not None:
        y = y + ops.reshape(bias, shape)
    return y


def _normalise(x: Tensor, axes, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``((x - mean) / sqrt(var + eps), mean, var)`` over ``axes``; float16 input is worked in
    float32 and the three rounded once, as PyTorch's CPU norms accumulate half precision."""
    if x.dtype == B.float16:
        return tuple(ops.astype(t, B.float16)
                     for t in _normalise(ops.astype(x, B.float32), axes, eps))
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.var(x, axis=axes, keepdims=True)
    return (x - mean) / ops.sqrt(var + eps), mean, var


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each sample over groups of channels (and all spatial axes), then scale and
    shift per channel: x (N, C, ...) with C divisible by ``num_groups``."""
    x = input
    if not isinstance(x, Tensor) or x.ndim < 2 or num_groups < 1 or x.shape[1] % num_groups:
        raise ShapeError(f"group_norm: expected (N, C, ...) with C divisible by num_groups="
                         f"{num_groups}, got {getattr(x, 'shape', x)!r}")
    if half_in_float32(x, weight, bias):
        return ops.astype(group_norm(ops.astype(x, B.float32), num_groups, weight, bias, eps),
                          x.dtype)
    if x.dtype in _HALF:  # worked in float32 and rounded once, as PyTorch's CPU kernel (the
        # affine step in half precision would round a second time)
        def f32(t):
            return None if t is None else ops.astype(t, B.float32)
        return ops.astype(group_norm(f32(x), num_groups, f32(weight), f32(bias), eps), x.dtype)
    n, c = x.shape[:2]
    per_group = (c // num_groups) * math.prod(x.shape[2:])  # (no -1: n may be 0)
    g = ops.reshape(x, (n, num_groups, per_group))
    y = ops.reshape(_normalise(g, (2,), eps)[0], tuple(x.shape))
    return _affine(y, weight, bias, (c,) + (1,) * (x.ndim - 2))


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of each sample over its spatial axes: x (N, C, ...).

    With running statistics and ``use_input_stats`` they move toward the batch average of the
    instance means and unbiased variances (PyTorch's rule); without ``use_input_stats`` the
    running statistics normalise instead."""
    x = input
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise ShapeError(f"instance_norm: expected (N, C, *spatial), got "
                         f"{getattr(x, 'shape', x)!r}")
    if momentum is None:  # (the layers pass 0.0 for their momentum=None, as PyTorch's)
        raise TypeError("instance_norm: momentum must be a float, got None")
    c = x.shape[1]
    shape = (c,) + (1,) * (x.ndim - 2)
    axes = tuple(range(2, x.ndim))
    if use_input_stats:
        count = math.prod(x.shape[2:])
        if count < 2:
            raise ValueError(f"instance_norm: need more than one spatial element per channel, "
                             f"got input of shape {tuple(x.shape)}")
        y, mean, var = _normalise(x, axes, eps)
        if eps == 0:  # PyTorch's kernel: a constant channel normalises to 0 with a zero
            # gradient (its inverse deviation is taken as 0), not to 0 / 0
            const = (var == 0).detach()
            xp = x.backend.xp
            ramp = Tensor._of(xp.arange(count, dtype=x.dtype).reshape(x.shape[2:]))
            y = ops.where(const, 0.0, _normalise(ops.where(const, ramp, x), axes, eps)[0])
        if running_mean is not None:
            with no_grad():
                bm = ops.mean(ops.reshape(mean, x.shape[:2]), axis=0)
                bv = ops.mean(ops.reshape(var, x.shape[:2]), axis=0) * \
                    x.dtype.type(count / (count - 1))
                _update_running(running_mean, running_var, bm, bv, momentum, 1.0)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running_mean and "
                             "running_var")
        y = (x - ops.reshape(running_mean, shape)) / ops.sqrt(ops.reshape(running_var, shape)
                                                               + eps)
    return _affine(y, weight, bias, shape)


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Tensor:
    """x / (k + alpha · mean of x² over ``size`` neighbouring channels)^beta (zero-padded
    neighbourhood, divided by ``size`` as PyTorch)."""
    x = input
    if not isinstance(x, Tensor) or x.ndim < 3 or size < 1:
        raise ShapeError(f"local_response_norm: expected (N, C, *spatial) and size >= 1, got "
                         f"{getattr(x, 'shape', x)!r} and size={size}")
    if x.shape[1] == 0:  # no channels: an empty result, as PyTorch's
        return x * 1
    sq = x * x
    if x.ndim > 3:  # autocast: PyTorch averages these with avg_pool3d, a float32 op
        (sq,) = float32_in_region(sq, cpu_only=True)
    sq = ops.pad(sq, ((0, 0), (size // 2, (size - 1) // 2)) + ((0, 0),) * (x.ndim - 2))
    win = ops.sliding_window_view(sq, size, axis=1)
    div = ops.sum(win, axis=-1) * (alpha / size) + k
    return x / div ** beta


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """x / √(mean(x²) + eps) over the trailing ``normalized_shape`` axes, times ``weight``;
    ``eps`` defaults to the machine epsilon of the dtype it is computed in, as PyTorch's
    kernel: float32's for float16 and bfloat16 (worked in float32, rounded once)."""
    x = input
    try:  # an int or a sequence of them; NumPy integers too
        ns = _shape_arg((normalized_shape,))
    except TypeError as e:
        raise TypeError(f"rms_norm: normalized_shape: {e}") from None
    if not ns:  # as PyTorch
        raise ValueError("rms_norm: normalized_shape must have at least one element, got ()")
    if not isinstance(x, Tensor) or tuple(x.shape[x.ndim - len(ns):]) != ns or x.ndim < len(ns):
        raise ShapeError(f"rms_norm: input {getattr(x, 'shape', x)!r} does not end in "
                         f"normalized_shape {ns}")
    if x.dtype in (B.float16, B.bfloat16):  # in float32 (the weight's product too), rounded once
        w = None if weight is None else ops.astype(weight, B.float32)
        return ops.astype(rms_norm(ops.astype(x, B.float32), ns, w, eps), x.dtype)
    if eps is None:
        eps = float(B.finfo(x.dtype).eps)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    y = x / ops.sqrt(ops.mean(x * x, axis=axes, keepdims=True) + eps)
    return y if weight is None else y * weight


# --- dropout variants -------------------------------------------------------------------------
@effect  # under nodegrad.jit a replayed step, as the statistics live outside the program
def _update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                    momentum: float | Tensor, unbias: float) -> None:
    """Move the running statistics toward the batch's: ``r <- (1 - m) r + m b``. ``momentum``
    may be a norm layer's batch counter instead (PyTorch's ``momentum=None``, a cumulative
    average): ``m = 1 / count``, read when the update runs, so a replayed step reads its own
    count, not the traced one's."""
    dt = mean.dtype
    if BatchTracer in (type(running_mean), type(running_var), type(mean), type(var),
                       type(momentum)):
        # inside vmap: batched statistics (an ensemble's stacked buffers) are updated per model
        if isinstance(momentum, Tensor):
            momentum = 1.0 / momentum.astype(dt)
        _write_batched(running_mean, running_mean * (1 - momentum)
                       + momentum * mean.reshape(running_mean.shape))
        _write_batched(running_var, running_var * (1 - momentum)
                       + momentum * var.reshape(running_var.shape) * unbias)
        return
    if isinstance(momentum, Tensor):
        momentum = 1.0 / int(momentum._data)
    m = dt.type(momentum)
    rm, rv = running_mean._data, running_var._data
    rm *= 1 - m
    rm += m * mean._data.reshape(rm.shape)
    rv *= 1 - m
    rv += m * var._data.reshape(rv.shape) * dt.type(unbias)
    running_mean._bump()
    running_var._bump()


@effect
def _count_batch(counter: Tensor) -> None:
    """Add one to a norm layer's batch counter (a replayed step under nodegrad.jit); inside
    vmap, to each model's counter of a batched (stacked) one."""
    if type(counter) is BatchTracer:
        _write_batched(counter, counter + 1)
        return
    counter._data += 1


_PER_EXAMPLE = ("batch/instance norm: inside vmap the running statistics cannot be updated in "
                "place from each example's statistics (they would store the tracer's NaN); as "
                "with torch.func, pass training=False or no running statistics (for modules: "
                "ng.func.replace_all_batch_norm_modules_(model))")


def _write_batched(target: Tensor, value: Tensor) -> None:
    """Store ``value`` in the memory under ``target`` (both seen inside the active vmaps):
    each batched level of ``target`` takes its own slice; a level where ``value`` is batched
    and ``target`` is not has no memory to take it, and is refused."""
    traces = modes().traces
    if type(target) is not BatchTracer:
        if any(type(value) is BatchTracer and value.level is lv for lv in traces):
            raise TypeError(_PER_EXAMPLE)
        target._data[...] = value._data.reshape(target._data.shape).astype(
            target._data.dtype, copy=False)
        target._bump()
        return
    i = traces.index(target.level)
    if any(type(value) is BatchTracer and value.level is lv for lv in traces[i + 1:]):
        raise TypeError(_PER_EXAMPLE)
    with lowered(i):
        if type(value) is BatchTracer and value.level is target.level:
            v = moveaxis(value.val, value.bdim, target.bdim)
        else:
            v = expand_dims(value, target.bdim)
        v = broadcast_to(v, tuple(target.val.shape))
        _write_batched(target.val, v)


def _check_p(p: float, op: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be in [0, 1], got {p}")


def _feature_dropout(x, p, training, generator, nd, op):
    _check_p(p, op)
    odd = isinstance(x, Tensor) and x.ndim not in (nd + 1, nd + 2)
    if not isinstance(x, Tensor) or (odd and (nd == 1 or x.ndim < 2)):
        raise ShapeError(f"{op}: expected (N, C, {nd} spatial axes) or unbatched (C, ...), got "
                         f"{getattr(x, 'shape', x)!r}")
    if odd:  # PyTorch 2.13 warns and still drops channels: (N, C) for 2-d, axis 0 for 3-d
        warnings.warn(f"{op}: received a {x.ndim}-d input, deprecated in PyTorch (it takes "
                      f"{nd + 1}-d or {nd + 2}-d input); whole slices along the leading "
                      f"{2 if nd == 2 else 1} axes are dropped, as PyTorch does", UserWarning,
                      stacklevel=3)
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    lead = x.ndim - nd  # 1 unbatched, 2 batched: one draw per channel of each sample
    if nd == 2 and x.ndim == 3:
        lead = 2  # PyTorch 2.13 reads 3-d input to dropout2d as (N, C, L)
    elif odd:
        lead = 2 if nd == 2 else 1  # dropout2d: (N, C); dropout3d: unbatched (C, ...)
    gen = generator or default_generator(x.device)
    mask = keep_mask(gen, tuple(x.shape[:lead]) + (1,) * (x.ndim - lead), x.dtype, p,
                     1.0 / (1.0 - p))
    return x * mask


def _in_place(input: Tensor, inplace, op: str, fn, *args, **kwargs) -> Tensor:
    """PyTorch's ``inplace=True``: ``fn(input, *args, **kwargs)`` stored into ``input``."""
    from .functional import _stored

    return _stored(input, inplace, op, fn, *args, **kwargs)


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              generator: Generator | None = None) -> Tensor:
    """Zero whole channels of (N, C, L) or (C, L) with probability ``p`` (inverted scaling);
    with ``inplace`` the result is stored into ``input``."""
    if inplace:
        return _in_place(input, inplace, "dropout1d", dropout1d, p, training,
                         generator=generator)
    return _feature_dropout(input, p, training, generator, 1, "dropout1d")


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              generator: Generator | None = None) -> Tensor:
    """Zero whole channels of (N, C, H, W) with probability ``p``; 3-d input is read as
    (N, C, L), as PyTorch 2.13 does (it warns that this will change; use dropout1d)."""
    if inplace:
        return _in_place(input, inplace, "dropout2d", dropout2d, p, training,
                         generator=generator)
    return _feature_dropout(input, p, training, generator, 2, "dropout2d")


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
              generator: Generator | None = None) -> Tensor:
    """Zero whole channels of (N, C, D, H, W) or (C, D, H, W) with probability ``p``."""
    if inplace:
        return _in_place(input, inplace, "dropout3d", dropout3d, p, training,
                         generator=generator)
    return _feature_dropout(input, p, training, generator, 3, "dropout3d")


_SELU_ALPHA_PRIME = 1.7580993408473766  # -λ·α of SELU: the value a dropped unit takes


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False,
                  inplace: bool = False, *, generator: Generator | None = None) -> Tensor:
    """Dropout for SELU networks: dropped units take SELU's negative saturation and an affine
    map a·x + b restores zero mean and unit variance (PyTorch's a and b)."""
    if inplace:
        return _in_place(input, inplace, "alpha_dropout", alpha_dropout, p, training,
                         generator=generator)
    x = input
    _check_p(p, "alpha_dropout")
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0.0
    al = _SELU_ALPHA_PRIME
    a = 1.0 / math.sqrt((al * al * p + 1) * (1 - p))
    gen = generator or default_generator(x.device)
    keep = keep_mask(gen, tuple(x.shape), x.dtype, p)
    b = (keep - 1) * x.dtype.type(al * a) + x.dtype.type(al * a * p)
    return x * (keep * x.dtype.type(a)) + b


# --- bilinear and bags of embeddings ----------------------------------------------------------
def bilinear(input1: Tensor, input2: Tensor, weight: Tensor,
             bias: Tensor | None = None) -> Tensor:
    """y_o = x1ᵀ W_o x2 + b_o: x1 (..., I1), x2 (..., I2), weight (O, I1, I2) -> (..., O)."""
    x1, x2 = input1, input2
    if weight.ndim != 3 or x1.shape[-1:] != weight.shape[1:2] or \
            x2.shape[-1:] != weight.shape[2:] or x1.shape[:-1] != x2.shape[:-1]:
        raise ShapeError(f"bilinear: need x1 (..., I1), x2 (..., I2) with the same leading "
                         f"shape and weight (O, I1, I2), got {tuple(x1.shape)}, "
                         f"{tuple(x2.shape)}, {tuple(weight.shape)}")
    o, i1, i2 = weight.shape
    t = x1 @ ops.reshape(ops.transpose(weight, (1, 0, 2)), (i1, o * i2))   # (..., O·I2)
    t = ops.reshape(t, tuple(x1.shape[:-1]) + (o, i2))
    y = ops.sum(t * ops.expand_dims(x2, -2), axis=-1)
    return y if bias is None else y + bias


def _bags(xp, idx, offsets, include_last_offset: bool, op: str):
    """(B, Lmax) positions into the flat input and their validity mask, for 1-D input."""
    n = idx.shape[0]
    off = offsets.astype(xp.int64)
    if off.ndim != 1 or (off.size and (int(off[0]) != 0 or bool((off[1:] < off[:-1]).any())
                                       or int(off[-1]) > n)):
        raise ValueError(f"{op}: offsets must be a 1-d non-decreasing sequence starting at 0 "
                         f"and at most the input length {n}, got {off.tolist()}")
    if include_last_offset and (off.size == 0 or int(off[-1]) != n):
        # PyTorch documents the CSR form (last offset = input length) but silently lets the
        # last bag run to the input's end when it is shorter; refuse instead of guessing
        raise ValueError(f"{op}: with include_last_offset=True the last offset must equal the "
                         f"input length {n} (CSR form), got offsets {off.tolist()}")
    ends = off[1:] if include_last_offset else xp.concatenate([off[1:], xp.array([n])])
    starts = off[:-1] if include_last_offset else off
    lens = ends - starts
    width = max(int(lens.max()) if lens.size else 0, 1)
    pos = starts[:, None] + xp.arange(width)[None, :]
    valid = xp.arange(width)[None, :] < lens[:, None]
    return xp.where(valid, pos, 0), valid


@effect  # under nodegrad.jit a replayed step: every call's indices are checked
def check_rows(idx: Tensor, n: int, op: str) -> None:
    """IndexError naming ``op`` unless every entry of integer tensor ``idx`` picks one of ``n``
    embedding rows (a negative one would silently wrap around in NumPy's indexing)."""
    v = values(idx)
    if v.size:
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi >= n:
            raise IndexError(f"{op}: index {lo if lo < 0 else hi} is out of range for {n} "
                             "embeddings")


def grad_by_freq(out: Tensor, rows, counted: Tensor, op: str) -> Tensor:
    """``out``, the embedding rows named by index array ``rows``, unchanged, but each row's
    gradient divided by how often its index occurs in ``counted`` (PyTorch's
    ``scale_grad_by_freq``). The counts are host work on ``counted``'s values: under a jit
    trace the signature runs eagerly; inside vmap they would span the whole batch."""
    if isinstance(counted, BatchTracer):
        raise NotImplementedError(f"{op}: scale_grad_by_freq=True inside vmap is not supported "
                                  "(the counts would span the whole batch)")
    computes_with_values(counted, "scale_grad_by_freq")
    xp = B.backend_of(out._data).xp
    uniq, counts = xp.unique(values(counted).reshape(-1), return_counts=True)
    scale = Tensor._of((1.0 / counts[xp.searchsorted(uniq, rows)]).astype(out.dtype)[..., None])
    scaled = out * scale
    return out.detach() + (scaled - scaled.detach())


def renorm_rows_(weight: Tensor, rows, max_norm: float, norm_type: float = 2.0) -> None:
    """PyTorch's ``embedding_renorm_``: the rows of ``weight`` that index array ``rows`` names
    whose ``norm_type``-norm exceeds ``max_norm`` are scaled down to it, in place, unrecorded
    (an embedding's ``max_norm``)."""
    with no_grad():
        rows = Tensor._of(B.backend_of(weight._data).xp.unique(rows))
        picked = weight[rows]
        size = ops.abs(picked)
        if norm_type == math.inf:  # the p-norm's limits and p = 0, as torch.norm has them
            norm = ops.max(size, axis=1, keepdims=True)
        elif norm_type == -math.inf:
            norm = ops.min(size, axis=1, keepdims=True)
        elif norm_type == 0:
            norm = ops.sum(ops.astype(size > 0, weight.dtype), axis=1, keepdims=True)
        else:
            norm = ops.sum(size ** norm_type, axis=1, keepdims=True) ** (1.0 / norm_type)
        scale = ops.where(norm > max_norm, max_norm / (norm + 1e-7), 1.0)
        weight[rows] = picked * ops.astype(scale, weight.dtype)


def embedding_bag(input: Tensor, weight: Tensor, offsets: Tensor | None = None,
                  max_norm: float | None = None, norm_type: float = 2.0,
                  scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                  per_sample_weights: Tensor | None = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> Tensor:
    """Sum, mean or max of each bag of embeddings: bags are the rows of a 2-D ``input`` or the
    slices of a 1-D one cut at ``offsets`` (padded to the longest bag and masked). Entries equal
    to ``padding_idx`` are left out; an empty bag gives zeros (PyTorch's rules). ``max_norm``
    first scales the looked-up rows down to that norm in ``weight`` itself (as
    :func:`embedding`); ``scale_grad_by_freq`` divides each row's gradient by how often its
    index occurs in ``input`` (sum and mean modes, as documented for PyTorch's)."""
    op = "embedding_bag"
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"{op}: mode must be 'sum', 'mean' or 'max', got {mode!r}")
    if sparse:
        raise ValueError(f"{op}: sparse=True is not supported (nodegrad's gradients are dense)")
    if scale_grad_by_freq and mode == "max":
        raise ValueError(f"{op}: max mode does not support scaling the gradient by the "
                         "frequency")
    if not isinstance(input, Tensor) or input.dtype.kind not in "iu":
        raise DTypeError(f"{op}: indices must be an integer tensor, got "
                         f"{getattr(input, 'dtype', type(input).__name__)}")
    if weight.ndim != 2:
        raise ShapeError(f"{op}: weight must be (num_embeddings, dim), got {tuple(weight.shape)}")
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"{op}: per_sample_weights need mode='sum', got {mode!r}")
        if tuple(per_sample_weights.shape) != tuple(input.shape):
            raise ShapeError(f"{op}: per_sample_weights {tuple(per_sample_weights.shape)} must "
                             f"have the input's shape {tuple(input.shape)}")
    xp = weight.backend.xp
    iv = values(input)
    num = weight.shape[0]
    if padding_idx is not None and not -num <= padding_idx < num:  # not taken modulo num
        raise ValueError(f"{op}: padding_idx must be within the number of embeddings, -{num} "
                         f"through {num - 1}, but got {padding_idx}")
    check_rows(input, num, op)
    if max_norm is not None and iv.size:
        computes_with_values(input, "embedding_bag's max_norm")
        renorm_rows_(weight, iv.reshape(-1), max_norm, norm_type)
    psw = per_sample_weights
    if input.ndim == 2:
        if offsets is not None:
            raise ValueError(f"{op}: offsets must be None for 2-d input (each row is a bag)")
        idx, valid = iv, xp.ones(iv.shape, dtype=bool)
    elif input.ndim == 1:
        if offsets is None:
            raise ValueError(f"{op}: 1-d input needs offsets (where each bag starts)")
        computes_with_values(input, "embedding_bag's bags of a 1-d input")  # gathered here
        pos, valid = _bags(xp, iv, values(offsets) if isinstance(offsets, Tensor) else
                           xp.asarray(offsets), include_last_offset, op)
        idx = iv[pos] if iv.size else xp.zeros(pos.shape, dtype=iv.dtype)
        if psw is not None:
            psw = psw[pos] if iv.size else None
    else:
        raise ShapeError(f"{op}: input must be 1-d (with offsets) or 2-d, got "
                         f"{tuple(input.shape)}")
    if padding_idx is not None:
        computes_with_values(input, "embedding_bag's padding_idx")
        valid = valid & (idx != (padding_idx % num))
    emb = weight[idx]                                                    # (B, Lmax, D)
    if scale_grad_by_freq and iv.size:
        emb = grad_by_freq(emb, idx, input, op)
    mask = Tensor._of(valid.astype(weight.dtype))
    count = mask._data.sum(1)
    if mode == "max":
        masked = ops.where(Tensor._of(valid[..., None]), emb, -math.inf)
        arg = ops.argmax(masked, axis=1, keepdims=True)
        out = ops.squeeze(ops.take_along_axis(masked, arg, 1), 1)
        return ops.where(Tensor._of(count[:, None] > 0), out, 0.0)
    w = mask if psw is None else mask * psw
    out = ops.sum(emb * ops.expand_dims(w, -1), axis=1)
    if mode == "mean":
        out = out / Tensor._of(xp.maximum(count, 1)[:, None])
    return out
