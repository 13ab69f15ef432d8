"""The function form of every layer and loss (``nodegrad.nn.functional``, imported as F).

Layers here are compositions of primitives, so their gradients (and gradients of gradients)
come from the engine. Convolution is the fused ``conv`` primitive (:mod:`nodegrad.ops.conv`):
one matrix product over strided windows, with its input and weight gradients as primitives of
their own.
"""

from __future__ import annotations

import warnings as _warnings


from .. import _backend as B
from .. import ops
from ..autodiff import computes_with_values, effect, modes, no_grad
from ..batching import BatchTracer, values
from ..errors import DTypeError, ShapeError
from ..ops import activation as _A
from ..ops import nn as _ops_nn
from ..ops import where
from ..ops.aliases import apply_inplace
from ..ops.conv import conv_relu as _conv_relu_op
from ..random import Generator, default_generator, keep_mask
from ..tensor import Tensor, write_out
from ..amp import float32_in_region, lower_in_region
from .norm_functional import half_in_float32
from .losses import (_max_every_tie, binary_cross_entropy, binary_cross_entropy_with_logits,
                     cross_entropy, huber_loss, kl_div, l1_loss, mse_loss, nll_loss,
                     smooth_l1_loss)

__all__ = [
    "linear", "conv1d", "conv_tbc", "conv2d", "max_pool1d", "max_pool2d", "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "global_avg_pool", "dropout", "batch_norm",
    "layer_norm", "embedding", "one_hot", "relu", "leaky_relu", "prelu", "elu", "gelu",
    "sigmoid", "tanh", "softplus", "silu", "softmax", "log_softmax", "flatten",
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "cross_entropy", "nll_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "where",
    "rnn_cell", "gru_cell", "lstm_cell", "scaled_dot_product_attention", "multi_head_attention",
    "multi_head_attention_forward",
    "pad",
]


def _tuple(v, n: int, name: str, op: str) -> tuple:
    """An int or ``n`` ints as ``n`` ints; one int in a sequence is repeated, as PyTorch's."""
    t = (int(v),) * n if isinstance(v, int | B.np.integer) else tuple(int(i) for i in v)
    if len(t) != n:
        if len(t) != 1:
            raise ValueError(f"{op}: {name} must be an int or {n} ints, got {v!r}")
        t *= n
    return t


def _unbatched_form(what: str) -> str:
    return "(" + what[4:] if what.startswith("(N, ") else what


_SPATIAL = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _check_input(x: Tensor, nd: int, op: str, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor input, got {type(x).__name__}")
    if x.ndim != nd + 2:
        raise ShapeError(f"{op}: expected input of shape {what} or unbatched "
                         f"{_unbatched_form(what)}, got {tuple(x.shape)}")


def _unbatched(x: Tensor, nd: int, op: str, what: str) -> bool:
    """Whether ``x`` is the unbatched form (C, *spatial) of ``what`` (N, C, *spatial), which
    PyTorch computes as a batch of one; any other rank than these two is a ShapeError."""
    if isinstance(x, Tensor):
        if x.ndim == nd + 2:
            return False
        if x.ndim == nd + 1:
            return True
    _check_input(x, nd, op, what)  # raises
    return False


def _squeeze0(r):
    """A result (or a tuple of them) computed for a batch of one, without its batch axis."""
    if isinstance(r, tuple):
        return tuple(ops.squeeze(t, 0) for t in r)
    return ops.squeeze(r, 0)


def _check_window(x: Tensor, k: tuple, dilation: tuple, padding: tuple, op: str) -> None:
    """The kernel must fit in the padded input: say so in the layer's terms."""
    nd = len(k)
    size = tuple(x.shape[2 + i] + 2 * padding[i] for i in range(nd))
    span = tuple(d * (ki - 1) + 1 for ki, d in zip(k, dilation))
    if any(s > n for s, n in zip(span, size)):
        dil = f" with dilation {dilation} (spanning {span})" if max(dilation) > 1 else ""
        raise ShapeError(f"{op}: kernel size {k}{dil} is larger than the padded input "
                         f"{size} (input {tuple(x.shape)}, padding {padding}); use a smaller "
                         "kernel, more padding or a longer input")


def _check_dtype(x: Tensor, weight: Tensor, layer: str) -> None:
    """Refuse an input whose dtype differs from the weight's, as PyTorch's layers do: an integer
    input would otherwise be promoted silently, a float64 one raise deep inside the product.
    Inside an autocast region float ones may differ: the product casts both (amp.py)."""
    if x.dtype != weight.dtype and not (modes().autocast is not None and B.is_float(x.dtype)
                                        and B.is_float(weight.dtype)):
        how = ".float()" if weight.dtype == B.float32 else f".to({weight.dtype})"
        raise DTypeError(f"{layer}: the input has dtype {x.dtype} but the layer's weight is "
                         f"{weight.dtype}; convert the input with x{how} first")


# --- affine -----------------------------------------------------------------------------------
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x Wᵀ + b, the notes' affine map μ(A, x, b) with weight of shape (out, in). As PyTorch's,
    a 1-d weight (in,) without bias contracts the last axis away (x · w), and a bias that
    broadcasts to the output's shape, not only (out,), is added."""
    if weight.ndim == 1 and input.ndim and (bias is None or input.ndim == bias.ndim + 1 == 1):
        _check_dtype(input, weight, "Linear")
        if input.shape[-1] != weight.shape[0]:
            raise ShapeError(f"linear: input has {input.shape[-1]} features (shape "
                             f"{tuple(input.shape)}) but the weight expects {weight.shape[0]}")
        out = ops.matmul(input, weight)
        return out if bias is None else out + bias
    if bias is not None and weight.ndim == 2 and input.ndim and bias.shape != weight.shape[:1]:
        out = input.shape[:-1] + weight.shape[:1]
        try:
            fits = B.np.broadcast_shapes(bias.shape, out) == out
        except ValueError:
            fits = False
        if fits:
            return linear(input, weight) + bias
    _check_linear(input, weight, bias)
    return ops.linear(input, weight, bias)


def _linear_relu(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``relu(linear(input, weight, bias))`` as one op, with :func:`linear`'s checks: what
    ``nn.Sequential`` runs for a ``Linear`` followed by a ``ReLU`` (the same values and
    gradients, one pass less over the product)."""
    _check_linear(input, weight, bias)
    return _ops_nn.linear_relu(input, weight, bias)


def _check_linear(x, weight, bias) -> None:
    """:func:`linear`'s checks of its operands' dtypes and shapes."""
    _check_dtype(x, weight, "Linear")
    if weight.ndim == 2 and x.shape[-1:] != weight.shape[1:]:
        raise ShapeError(f"linear: input has {x.shape[-1] if x.ndim else 0} features (shape "
                         f"{tuple(x.shape)}) but the weight expects {weight.shape[1]}")
    if x.ndim == 0 or weight.ndim != 2 or (bias is not None and bias.shape != weight.shape[:1]):
        raise ShapeError(f"linear: need x (..., in), weight (out, in) and bias (out,); got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, "
                         f"{None if bias is None else tuple(bias.shape)}")


# --- convolution ------------------------------------------------------------------------------
def _same_padding(kernel: tuple, dilation: tuple) -> list:
    """PyTorch's ``padding='same'`` as (left, right) per spatial axis: d·(k − 1) in all, the
    odd one on the right."""
    out = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        out.append((total // 2, total - total // 2))
    return out


def _pad_widths(pairs) -> list:
    """Per-axis (before, after) pairs, first spatial axis first, as ``pad``'s flat widths (the
    last axis first)."""
    return [w for lo, hi in reversed(list(pairs)) for w in (lo, hi)]


def _string_padding(x, padding: str, kernel: tuple, stride: tuple, dilation: tuple, op: str):
    """``padding='valid'`` (none) or ``'same'`` (output as long as the input, stride 1 only): the
    input, padded first where 'same' needs one more on the right, and the symmetric padding."""
    if padding == "valid":
        return x, 0
    if padding != "same":
        raise ValueError(f"{op}: padding must be an int, a tuple, 'same' or 'valid', got "
                         f"{padding!r}")
    if any(s != 1 for s in stride):
        raise ValueError(f"{op}: padding='same' needs stride 1, got stride={stride}")
    pads = _same_padding(kernel, dilation)
    if any(lo != hi for lo, hi in pads):  # even kernels: the extra zero on the right first
        x = ops.arrange.torch_pad(x, _pad_widths((0, hi - lo) for lo, hi in pads))
    return x, tuple(lo for lo, _ in pads)


def _conv(x, w, b, stride, padding, dilation, groups, nd: int, op: str, what: str,
          relu: bool = False):
    if _unbatched(x, nd, op, what):
        return _squeeze0(_conv(ops.expand_dims(x, 0), w, b, stride, padding, dilation, groups,
                               nd, op, what, relu))
    _check_dtype(x, w, f"Conv{nd}d")
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    k = tuple(w.shape[2:])
    if w.ndim != nd + 2:
        raise ShapeError(f"{op}: weight must have {nd + 2} dims (out, in/groups, *kernel), got "
                         f"{tuple(w.shape)}")
    if groups < 1 or c != cg * groups or o % groups:
        raise ShapeError(f"{op}: input has {c} channels but the weight expects "
                         f"{cg} x groups={groups} (weight {tuple(w.shape)})")
    if n and c and 0 in x.shape[2:]:  # (padding would make room, but PyTorch refuses it)
        raise ShapeError(f"{op}: an empty input must have no samples or no channels, got "
                         f"{tuple(x.shape)}")
    stride = _tuple(stride, nd, "stride", op)
    dilation = _tuple(dilation, nd, "dilation", op)
    if isinstance(padding, str):
        x, padding = _string_padding(x, padding, k, stride, dilation, op)
    padding = _tuple(padding, nd, "padding", op)
    if min(stride + dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: stride and dilation must be positive and padding non-negative, "
                         f"got stride={stride}, dilation={dilation}, padding={padding}")
    if b is not None and tuple(b.shape) != (o,):
        raise ShapeError(f"{op}: bias must have shape ({o},), got {tuple(b.shape)}")
    _check_window(x, k, dilation, padding, op)
    return (_conv_relu_op if relu else ops.conv)(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _conv_relu(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
               groups: int, nd: int) -> Tensor:
    """``relu(conv{nd}d(...))`` as one op, with the convolution's checks: what
    ``nn.Sequential`` runs for a ``Conv1d``/``Conv2d``/``Conv3d`` followed by a ``ReLU`` (the
    same values and gradients, one pass less over the product)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, nd, f"conv{nd}d",
                 _SPATIAL[nd], relu=True)


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """1-D convolution (cross-correlation, as PyTorch): input (N, C, L) or unbatched (C, L),
    weight (O, C/groups, K)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d",
                 "(N, C, L)")


def conv_tbc(input: Tensor, weight: Tensor, bias: Tensor, pad: int = 0) -> Tensor:
    """PyTorch's ``conv_tbc``: a 1-D convolution of a time-major sequence, input (T, N, C),
    weight (K, C, O), bias (O,), ``pad`` steps of zeros at both ends; output (T', N, O)."""
    if input.ndim != 3 or weight.ndim != 3 or bias.ndim != 1:
        raise ShapeError(f"conv_tbc: expected input (T, N, C), weight (K, C, O) and bias (O,), "
                         f"got {tuple(input.shape)}, {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if weight.shape[1] != input.shape[2] or bias.shape[0] != weight.shape[2]:
        raise ShapeError(f"conv_tbc: weight {tuple(weight.shape)} must be (K, C={input.shape[2]}"
                         f", O) with O = the bias's {bias.shape[0]}")
    out = conv1d(ops.transpose(input, (1, 2, 0)), ops.transpose(weight, (2, 1, 0)), bias,
                 padding=pad)
    return ops.transpose(out, (2, 0, 1))


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution: input (N, C, H, W) or unbatched (C, H, W), weight (O, C/groups, KH,
    KW)."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d",
                 "(N, C, H, W)")


# --- pooling (max/avg pooling live in conv_functional with the other pooling) ----------
def _adaptive_axis(x, axis: int, size: int):
    n = x.shape[axis]
    if n % size == 0:
        shape = x.shape[:axis] + (size, n // size) + x.shape[axis + 1:]
        return ops.mean(ops.reshape(x, shape), axis=axis + 1)
    pieces = []
    for i in range(size):  # PyTorch's bins: [floor(i n / s), ceil((i + 1) n / s))
        lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
        idx = (slice(None),) * axis + (slice(lo, hi),)
        pieces.append(ops.mean(x[idx], axis=axis, keepdims=True))
    return ops.concatenate(pieces, axis=axis)


def _adaptive_sizes(output_size, x: Tensor, nd: int, op: str) -> tuple:
    """An adaptive pool's output size per spatial axis: an int for all of them or one per
    axis, where ``None`` keeps that axis's input size (PyTorch's rule)."""
    spatial = tuple(x.shape[x.ndim - nd:])
    if isinstance(output_size, int | B.np.integer):
        return (int(output_size),) * nd
    sizes = tuple(output_size)
    if len(sizes) != nd or not all(s is None or isinstance(s, int | B.np.integer)
                                   for s in sizes):
        raise ValueError(f"{op}: output_size must be an int or {nd} ints (None keeps an axis's "
                         f"size), got {output_size!r}")
    return tuple(n if s is None else int(s) for s, n in zip(sizes, spatial))


def _adaptive_empty(x, sizes: tuple):
    """An adaptive pool's output with an output size of 0 on some axis: an empty tensor of the
    output's shape (PyTorch's), still on the graph (its gradient is zeros)."""
    head = x[(slice(None), slice(None)) + tuple(slice(0, min(s, 1)) for s in sizes)]
    return ops.broadcast_to(head, tuple(x.shape[:2]) + tuple(sizes))


def _adaptive_avg(x, output_size, nd: int, op: str):
    if _unbatched(x, nd, op, _SPATIAL[nd]):
        return _squeeze0(_adaptive_avg(ops.expand_dims(x, 0), output_size, nd, op))
    sizes = _adaptive_sizes(output_size, x, nd, op)
    if 0 in x.shape[2:]:  # as PyTorch (the means of empty bins would be NaN)
        raise ShapeError(f"{op}: expected non-empty spatial axes, got input {tuple(x.shape)}")
    if 0 in sizes and min(sizes) == 0 and all(x.shape[2:]):
        return _adaptive_empty(x, sizes)
    for i, size in enumerate(sizes):
        if size < 1 and x.shape[2 + i]:
            raise ShapeError(f"{op}: output_size {output_size!r} must be positive, got {size}")
        x = _adaptive_axis(x, 2 + i, size)
    return x


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """Average into ``output_size`` bins along L of (N, C, L) or (C, L) (PyTorch's edges)."""
    return _adaptive_avg(input, output_size, 1, "adaptive_avg_pool1d")


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """Average (N, C, H, W) or (C, H, W) into an (oh, ow) grid of bins (``None`` keeps that
    axis)."""
    return _adaptive_avg(input, output_size, 2, "adaptive_avg_pool2d")


def adaptive_avg_pool3d(input: Tensor, output_size) -> Tensor:
    """Average (N, C, D, H, W) or (C, D, H, W) into an (od, oh, ow) grid of bins; in float32
    under CPU autocast (PyTorch's list)."""
    (input,) = float32_in_region(input, cpu_only=True)
    return _adaptive_avg(input, output_size, 3, "adaptive_avg_pool3d")


def global_avg_pool(x: Tensor) -> Tensor:
    """Mean over every spatial axis: (N, C, ...) -> (N, C)."""
    if x.ndim < 3:
        raise ShapeError(f"global_avg_pool: expected (N, C, ...) with spatial axes, got "
                         f"{tuple(x.shape)}")
    return ops.mean(x, axis=tuple(range(2, x.ndim)))


# --- regularisation and normalisation ---------------------------------------------------------
def _stored(input: Tensor, inplace, op: str, fn, *args, **kwargs) -> Tensor:
    """``fn(input, *args, **kwargs)`` stored into ``input``, which is returned: PyTorch's
    ``inplace=True`` (while a graph is being recorded, the result is recorded out of place and
    ``input`` rebound to it; see :func:`nodegrad.ops.aliases.apply_inplace`)."""
    if not isinstance(inplace, bool | int | B.np.bool_):
        raise TypeError(f"{op}: inplace must be a bool, got {inplace!r}"
                        + (" (pass mode= as a keyword)" if op == "dropout" else ""))
    return apply_inplace(input, op + "_", fn, *args, **kwargs)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            mode: str = "inverted", generator: Generator | None = None) -> Tensor:
    """Zero each unit with probability ``p``; both modes keep the expected activation.

    ``"inverted"`` (PyTorch's) scales kept units by 1/(1-p) while training and is the identity
    at test time. ``"classic"`` (the notes') masks while training and multiplies by the keep
    probability 1-p at test time. With ``inplace`` the result is stored into ``input``.
    """
    if inplace:
        return _stored(input, inplace, "dropout", dropout, p, training, mode=mode,
                       generator=generator)
    x = input
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if mode not in ("inverted", "classic"):
        raise ValueError(f"dropout: mode must be 'inverted' or 'classic', got {mode!r}")
    if not training:
        return x if mode == "inverted" or p == 0 else x * (1.0 - p)
    if p == 0:
        return x
    if p == 1:  # x · 0 in x's dtype (an integer or bool x stays so), as PyTorch's
        return x * 0.0 if B.is_float(x.dtype) else ops.astype(x * 0, x.dtype)
    gen = generator or default_generator(x.device)
    mask = keep_mask(gen, tuple(x.shape), x.dtype, p,
                     1.0 / (1.0 - p) if mode == "inverted" else 1.0)
    return x * mask


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel (axis 1) by batch statistics (training) or running ones (eval).

    In training the running statistics move by ``momentum`` toward the batch mean and the
    unbiased batch variance, as PyTorch does (``BatchNorm``'s ``momentum=None`` passes its
    batch counter instead: a cumulative average, ``1 / count``). An empty input (no samples,
    or no channels as PyTorch reads a 1-d one) gives an empty result and leaves the
    statistics as they were.
    """
    x = input
    if x.ndim < 2:
        if x.ndim == 1 and x.shape[0] == 0 and all(
                t is None or t.numel() == 0 for t in (running_mean, running_var, weight, bias)):
            return x * 1
        raise ShapeError(f"batch_norm: expected (N, C, ...) input, got {tuple(x.shape)}")
    if half_in_float32(x, running_mean, running_var, weight, bias):
        return ops.astype(batch_norm(ops.astype(x, B.float32), running_mean, running_var, weight,
                                     bias, training, momentum, eps), x.dtype)
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, c) + (1,) * (x.ndim - 2)
    half = x.dtype == B.float16  # worked in float32 and rounded once, as PyTorch's: float16

    def up(t):  # squares of deviations over 256 overflow, and the output would silently be 0
        return ops.astype(t, B.float32) if half and t is not None else t

    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must both be given or both "
                         "be None")
    if not training and running_mean is None and x.numel():
        raise ValueError("batch_norm: training=False normalises by running_mean and "
                         "running_var, which must be given (pass training=True to use the "
                         "batch's statistics)")
    if x.numel() == 0 and c:  # an empty batch: an empty result (zero gradients for the
        # affine parameters) and the running statistics as they were, as PyTorch
        y = x * 1
        if weight is not None:
            y = y * ops.reshape(weight, shape)
        return y if bias is None else y + ops.reshape(bias, shape)
    if training:
        count = x.numel() // c
        if training and count < 2:
            raise ValueError(f"batch_norm: need more than one value per channel when "
                             f"training, got input of shape {tuple(x.shape)}")
        if training and not eps > 0:  # a constant channel would divide 0 by 0
            raise ValueError(f"batch_norm: eps must be positive during training, got {eps}")
        mean = ops.mean(up(x), axis=axes, keepdims=True)
        var = ops.var(up(x), axis=axes, keepdims=True)
        if training and running_mean is not None:
            with no_grad():
                _update_running(running_mean, running_var, mean, var, momentum,
                                count / max(count - 1, 1))
    else:
        mean = up(ops.reshape(running_mean, shape))
        var = up(ops.reshape(running_var, shape))
    y = (up(x) - mean) / ops.sqrt(var + eps)
    if weight is not None:
        y = y * up(ops.reshape(weight, shape))
    if bias is not None:
        y = y + up(ops.reshape(bias, shape))
    return ops.astype(y, B.float16) if half else y


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` axes of each sample."""
    x = input
    ns = (normalized_shape,) if isinstance(normalized_shape, int | B.np.integer) \
        else tuple(normalized_shape)
    if not ns:  # as PyTorch
        raise ValueError("layer_norm: normalized_shape must have at least one element, got ()")
    if tuple(x.shape[x.ndim - len(ns):]) != ns:
        raise ShapeError(f"layer_norm: input {tuple(x.shape)} does not end in normalized_shape "
                         f"{ns}")
    if half_in_float32(x, weight, bias):
        return ops.astype(layer_norm(ops.astype(x, B.float32), ns, weight, bias, eps), x.dtype)
    if x.dtype in (B.float16, B.bfloat16):  # worked in float32 and rounded once, as
        # PyTorch's CPU kernels: in float16 the squares of entries over 256 overflow (the output
        # would silently be 0), in bfloat16 the affine step would round a second time
        def f32(t):
            return None if t is None else ops.astype(t, B.float32)
        return ops.astype(layer_norm(f32(x), ns, f32(weight), f32(bias), eps), x.dtype)
    if (x.dtype.kind == "f" and x.numel() and (weight is None or tuple(weight.shape) == ns)
            and (bias is None or tuple(bias.shape) == ns)):  # the usual case: one primitive
        return _ops_nn.layer_norm(x, weight, bias, k=len(ns), eps=eps)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.var(x, axis=axes, keepdims=True)
    y = (x - mean) / ops.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of ``weight`` picked by integer ``input``; gradients add up for repeated indices.
    The row ``padding_idx`` (negative counts from the end) gets no gradient, as PyTorch's. With
    ``max_norm`` the rows looked up whose ``norm_type``-norm exceeds it are first scaled down
    to it in ``weight`` itself (in place, unrecorded: PyTorch's ``embedding_renorm_``). With
    ``scale_grad_by_freq`` each row's gradient is divided by how often its index occurs in
    ``input`` (PyTorch's)."""
    idx = input
    if idx.dtype.kind not in "iu":
        raise DTypeError(f"embedding: indices must be integers, got {idx.dtype}")
    if sparse:
        raise NotImplementedError("embedding: sparse=True is not supported (nodegrad's "
                                  "gradients are dense)")
    n = weight.shape[0]
    check_rows(idx, n, "embedding")
    if max_norm is not None and idx.numel():
        computes_with_values(idx, "embedding's max_norm")
        renorm_rows_(weight, values(idx).reshape(-1), max_norm, norm_type)
    out = weight[idx]
    if scale_grad_by_freq and idx.numel():
        out = grad_by_freq(out, values(idx), idx, "embedding")
    if padding_idx is None:
        return out
    pad = _padding_index(padding_idx, n, "embedding")
    return ops.where(ops.expand_dims(idx == pad, -1), out.detach(), out)


def _padding_index(padding_idx: int, n: int, op: str) -> int:
    if not -n <= padding_idx < n:
        raise ValueError(f"{op}: padding_idx {padding_idx} must be within the {n} embeddings")
    return padding_idx % n


@effect  # under nodegrad.jit a replayed step: every call's labels are checked
def _check_one_hot(labels: Tensor, num_classes: int) -> None:
    d = values(labels)
    if d.size and (int(d.min()) < 0 or int(d.max()) >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes}), got range "
                         f"[{int(d.min())}, {int(d.max())}]")


def one_hot(tensor: Tensor, num_classes: int = -1, dtype=None) -> Tensor:
    """(…,) integer labels -> (…, num_classes) indicator vectors, int64 as PyTorch's (or
    ``dtype``); ``num_classes=-1`` takes one more than the largest label."""
    labels = tensor
    if labels.dtype.kind not in "iu":
        raise DTypeError(f"one_hot: labels must be integers, got {labels.dtype}")
    d = values(labels)
    if num_classes <= 0 and not d.size:  # PyTorch's: no classes to infer from empty labels
        raise ValueError(f"one_hot: cannot infer num_classes from empty labels (got "
                         f"num_classes={num_classes})")
    if num_classes == -1:
        computes_with_values(labels, "one_hot's inferred num_classes")
        if not d.size:
            raise ValueError("one_hot: cannot infer num_classes from empty labels")
        num_classes = int(d.max()) + 1
    dtype = B.int64 if dtype is None else dtype
    _check_one_hot(labels, num_classes)
    if isinstance(labels, BatchTracer) or modes().jit is not None:
        # inside vmap, or traced by jit (a replay makes each call's rows): recorded ops
        classes = Tensor._of(B.backend_of(d).xp.arange(num_classes))
        return ops.astype(ops.expand_dims(labels, -1) == classes, B.as_dtype(dtype))
    xp = B.backend_of(d).xp
    eye = xp.eye(num_classes, dtype=B.as_dtype(dtype))
    return Tensor._of(eye[d])


# --- activations: PyTorch's signatures; ``inplace=True`` stores the result into ``input`` -----
_relu, _leaky_relu, _gelu, _sigmoid, _tanh = ops.relu, ops.leaky_relu, ops.gelu, ops.sigmoid, \
    ops.tanh
_softplus, _softmax, _log_softmax = ops.softplus, ops.softmax, ops.log_softmax


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """max(input, 0)."""
    if inplace:
        return _stored(input, inplace, "relu", _relu)
    return _relu(input)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """min(max(input, 0), 6)."""
    if inplace:
        return _stored(input, inplace, "relu6", _A.relu6)
    return _A.relu6(input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """input for input > 0, else negative_slope·input."""
    if inplace:
        return _stored(input, inplace, "leaky_relu", _leaky_relu, negative_slope)
    return _leaky_relu(input, negative_slope)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x for x > 0, else alpha·(eˣ − 1); the exponential sees min(x, 0), so no overflow."""
    if inplace:
        return _stored(input, inplace, "elu", elu, alpha)
    return where(input > 0, input, ops.expm1(_A.nonpositive_part(input)) * alpha)


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    """scale · elu(x, alpha) with the self-normalising constants of Klambauer et al."""
    if inplace:
        return _stored(input, inplace, "selu", _A.selu)
    return _A.selu(input)


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x for x > 0, else alpha·(exp(x / alpha) − 1)."""
    if inplace:
        return _stored(input, inplace, "celu", _A.celu, alpha)
    return _A.celu(input, alpha)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    """input clipped to [min_val, max_val] (PyTorch's gradient: 0 on the bounds)."""
    if inplace:
        return _stored(input, inplace, "hardtanh", _A.hardtanh, min_val, max_val)
    return _A.hardtanh(input, min_val, max_val)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """relu6(x + 3) / 6: a piecewise-linear sigmoid."""
    if inplace:
        return _stored(input, inplace, "hardsigmoid", _A.hardsigmoid)
    return _A.hardsigmoid(input)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """x · relu6(x + 3) / 6 (MobileNetV3)."""
    if inplace:
        return _stored(input, inplace, "hardswish", _A.hardswish)
    return _A.hardswish(input)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """x·sigmoid(x) (swish), one fused primitive (finite gradients for every finite x)."""
    if inplace:
        return _stored(input, inplace, "silu", _A.silu)
    return _A.silu(input)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """x · tanh(softplus(x)), one fused primitive (finite gradients for every finite x)."""
    if inplace:
        return _stored(input, inplace, "mish", _A.mish)
    return _A.mish(input)


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """input where input > threshold, else ``value``."""
    if inplace:
        return _stored(input, inplace, "threshold", _A.threshold, threshold, value)
    return _A.threshold(input, threshold, value)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """x·Φ(x); ``approximate='tanh'`` for the tanh formula."""
    return _gelu(input, approximate)


def sigmoid(input: Tensor) -> Tensor:
    """1 / (1 + e⁻ˣ)."""
    return _sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    """The hyperbolic tangent."""
    return _tanh(input)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + e^(beta·x)) / beta, linear where beta·x > ``threshold``."""
    return _softplus(input, beta, threshold)


def logsigmoid(input: Tensor) -> Tensor:
    """log(sigmoid(x)) = −softplus(−x), finite for large |x|."""
    return _A.logsigmoid(input)


def softsign(input: Tensor) -> Tensor:
    """x / (1 + |x|)."""
    return _A.softsign(input)


def tanhshrink(input: Tensor) -> Tensor:
    """x − tanh(x)."""
    return _A.tanhshrink(input)


def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """x − lambd above lambd, x + lambd below −lambd, else 0."""
    return _A.softshrink(input, lambd)


def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """x where |x| > lambd, else 0."""
    return _A.hardshrink(input, lambd)


def glu(input: Tensor, dim: int = -1) -> Tensor:
    """Gated linear unit: a · sigmoid(b) for the two halves a, b of ``input`` along ``dim``."""
    return _A.glu(input, dim)


def _softmax_dim(name: str, ndim: int, dim: int | None, axis: int | None,
                 stacklevel: int) -> int | None:
    """PyTorch's implicit dimension when neither ``dim`` nor ``axis`` is given: 0 for 0-, 1- and
    3-D inputs, else 1, with its deprecation warning (an old convention; pass ``dim``)."""
    if dim is not None or axis is not None:
        return dim
    _warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call "
                   "to include dim=X as an argument.", UserWarning, stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None, *,
            axis: int | None = None) -> Tensor:
    """Probabilities along ``dim`` (NumPy's ``axis=`` is taken too), in ``dtype`` when given.
    Without either, PyTorch's implicit dimension (0 for 0-, 1- and 3-D inputs, else 1) with
    its deprecation warning."""
    dim = _softmax_dim("softmax", input.ndim, dim, axis, _stacklevel)
    return _softmax(input, axis, dim=dim, dtype=dtype)


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None, *,
                axis: int | None = None) -> Tensor:
    """Log-probabilities along ``dim``, without overflow (PyTorch's implicit dimension, with a
    warning, when not given)."""
    dim = _softmax_dim("log_softmax", input.ndim, dim, axis, _stacklevel)
    return _log_softmax(input, axis, dim=dim, dtype=dtype)


def softmin(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None, *,
            axis: int | None = None) -> Tensor:
    """softmax(−input) along ``dim`` in ``dtype`` when given (PyTorch's implicit dimension,
    with a warning, when not given)."""
    dim = _softmax_dim("softmin", input.ndim, dim, axis, _stacklevel)
    return _softmax(-input, axis, dim=dim, dtype=dtype)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """x for x > 0, else a·x with a learnable slope: one shared, or one per channel (axis 1).
    In an autocast region both run in its low precision, as PyTorch lists ``prelu``."""
    x, weight = lower_in_region(input, weight)
    if weight.ndim > 1:
        raise ShapeError(f"prelu: weight must be a scalar or 1-d tensor, got shape "
                         f"{tuple(weight.shape)}")
    if weight.numel() != 1:  # one slope per channel (none for an input of no channels)
        if x.ndim < 2 or x.shape[1] != weight.numel():
            raise ShapeError(f"prelu: {weight.numel()} slopes need input with that many "
                             f"channels on axis 1, got {tuple(x.shape)}")
        weight = ops.reshape(weight, (weight.numel(),) + (1,) * (x.ndim - 2))
    else:
        weight = ops.reshape(weight, ())
    return where(x > 0, x, x * weight)


def flatten(x: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    return ops.flatten(x, start_dim, end_dim)


from .rnn_functional import gru_cell, lstm_cell, multi_head_attention, rnn_cell, scaled_dot_product_attention  # noqa: E402, E501
from .rnn_functional import multi_head_attention_forward  # noqa: E402

# --- convolution, pooling and resampling beyond conv1d/2d (conv_functional) -------------------
from .conv_functional import (adaptive_max_pool1d, adaptive_max_pool2d, avg_pool1d,  # noqa: E402
                              adaptive_max_pool3d, avg_pool2d, avg_pool3d, channel_shuffle,
                              conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d,
                              lp_pool3d, max_unpool3d,
                              fold, interpolate, lp_pool1d, lp_pool2d, max_pool1d, max_pool2d,
                              max_pool3d, max_unpool1d, max_unpool2d, native_channel_shuffle,
                              pixel_shuffle, pixel_unshuffle, unfold, upsample)

__all__ += [
    "conv3d", "conv_transpose1d", "conv_transpose2d", "max_pool3d", "avg_pool3d",
    "max_unpool1d", "max_unpool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "lp_pool1d",
    "lp_pool2d", "unfold", "fold", "pixel_shuffle", "pixel_unshuffle", "interpolate", "upsample",
    "channel_shuffle", "conv_transpose3d", "max_unpool3d", "adaptive_max_pool3d", "lp_pool3d",
    "adaptive_avg_pool3d", "native_channel_shuffle",
]

# --- per-sample norms, dropout variants, bilinear, bags of embeddings (norm_functional) -------
from .norm_functional import (  # noqa: E402, F401
    _count_batch, _update_running, check_rows, grad_by_freq, renorm_rows_)
from .norm_functional import (alpha_dropout, bilinear, dropout1d, dropout2d,  # noqa: E402
                              dropout3d, embedding_bag, group_norm, instance_norm,
                              local_response_norm, rms_norm)

__all__ += [
    "group_norm", "instance_norm", "local_response_norm", "rms_norm", "dropout1d", "dropout2d",
    "dropout3d", "alpha_dropout", "bilinear", "embedding_bag",
]

# --- normalize ----------------------------------------------------------------------------------
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
              out: Tensor | None = None) -> Tensor:
    """x / max(‖x‖_p, eps) along ``dim`` (unit vectors; zero vectors stay zero); written into
    ``out`` when given (not differentiable then, as PyTorch's)."""
    if input.ndim == 0 and dim in (0, -1):  # a scalar is its own vector, as PyTorch's
        y = ops.reshape(normalize(ops.reshape(input, (1,)), p, 0, eps), ())
    else:
        y = input / ops.clamp_min(ops.vector_norm(input, p, dim, keepdim=True), eps)
    return y if out is None else write_out("normalize", out, y)


__all__ += ["celu", "glu", "hardshrink", "hardsigmoid", "hardswish", "hardtanh", "logsigmoid",
            "mish", "normalize", "relu6", "selu", "softmin", "softshrink", "softsign",
            "tanhshrink", "threshold"]


# --- PyTorch's pad: (left, right) widths from the last dim back; constant, reflect, replicate,
# circular; negative widths crop --------------------------------------------------------------
from ..ops.arrange import torch_pad as _torch_pad  # noqa: E402


def pad(input: Tensor, pad, mode: str = "constant", value: float | None = None) -> Tensor:
    """PyTorch's pad: ``pad`` lists (left, right) widths from the last dim backwards; modes
    constant, reflect, replicate and circular; negative widths crop (reflect and replicate
    still read the whole input: output j takes input reflect(j - left) or clip(j - left), as
    PyTorch's). Under CPU autocast, reflect (1-2 dims) and replicate (1-3 dims) run in
    float32, as PyTorch lists them."""
    if mode == "constant" or not isinstance(input, Tensor):
        return _torch_pad(input, pad, mode, value)
    widths = tuple(int(w) for w in pad)
    k = len(widths) // 2
    if (mode == "reflect" and k in (1, 2)) or (mode == "replicate" and k in (1, 2, 3)):
        (input,) = float32_in_region(input, cpu_only=True)
    if input.numel() == 0 and len(widths) % 2 == 0 and 0 < k <= input.ndim and \
            mode in ("reflect", "circular") and value in (None, 0):
        # nothing to reflect or wrap: only the padded dims must fit, as PyTorch checks them
        for i in range(k):
            n, (lo, hi) = input.shape[input.ndim - 1 - i], widths[2 * i:2 * i + 2]
            limit = n - 1 if mode == "reflect" else n
            if n == 0 or max(lo, hi) > limit or n + min(lo, 0) + min(hi, 0) < 0:
                break
        else:
            return _torch_pad(input, widths, "constant")
    return _torch_pad(input, widths, mode, value)


# --- distances and margin, ranking, count and sequence losses --------------------------------
from .losses import (cdist, cosine_embedding_loss, cosine_similarity, ctc_loss,  # noqa: E402
                     gaussian_nll_loss, hinge_embedding_loss, linear_cross_entropy,
                     margin_ranking_loss,
                     multi_margin_loss, multilabel_soft_margin_loss, pairwise_distance,
                     poisson_nll_loss, soft_margin_loss, triplet_margin_loss)

__all__ += ["linear_cross_entropy", "cosine_similarity", "pairwise_distance", "cdist",
            "cosine_embedding_loss",
            "margin_ranking_loss", "triplet_margin_loss", "hinge_embedding_loss",
            "multi_margin_loss", "multilabel_soft_margin_loss", "soft_margin_loss",
            "poisson_nll_loss", "gaussian_nll_loss", "ctc_loss"]


# --- randomised activations and sampling, condensed distances ---------------------------------
def rrelu(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          inplace: bool = False, generator: Generator | None = None) -> Tensor:
    """PyTorch's randomised leaky ReLU: x for x >= 0, else a·x with a ~ U[lower, upper] drawn
    per element while training and (lower + upper) / 2 otherwise. With ``inplace`` the result
    is stored into ``input``."""
    if inplace:
        return _stored(input, inplace, "rrelu", rrelu, lower, upper, training,
                       generator=generator)
    if not lower <= upper:  # PyTorch's only check: negative slopes are allowed
        raise ValueError(f"rrelu: expected lower <= upper, got lower={lower}, upper={upper}")
    if not training:
        return leaky_relu(input, (lower + upper) / 2)
    from ..random import uniform

    a = uniform(lower, upper, size=tuple(input.shape), dtype=input.dtype, device=input.device,
                generator=generator)
    return ops.where(input >= 0, input, input * a)


def gumbel_softmax(logits: Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10,
                   dim: int = -1, generator: Generator | None = None) -> Tensor:
    """A sample of softmax((logits + g) / tau), g Gumbel(0, 1) noise (Jang et al.); with
    ``hard`` the one-hot of its argmax in the forward and the soft sample's gradient (the
    straight-through estimator), as PyTorch's. ``eps`` is accepted for PyTorch's API."""
    if tau <= 0:
        raise ValueError(f"gumbel_softmax: tau must be positive, got {tau}")
    from ..random import rand

    u = rand(*logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    gumbels = -ops.log(-ops.log1p(-u))  # u in [0, 1): -log(1 - u) ~ Exp(1) > 0, never log 0
    y = softmax((logits + gumbels) / tau, dim)
    if not hard:
        return y
    shape = [1] * y.ndim
    shape[dim] = y.shape[dim]
    positions = Tensor._of(y.backend.xp.arange(y.shape[dim]).reshape(shape))
    y_hard = ops.astype(positions == ops.argmax(y, axis=dim, keepdims=True), y.dtype)
    return y_hard - y.detach() + y


def pdist(input: Tensor, p: float = 2.0) -> Tensor:
    """The p-norm distances between the rows of ``input`` (N, M), each pair once, in the
    order of the upper triangle (row i with rows i+1..N-1): N(N-1)/2 values, as PyTorch's."""
    if input.ndim != 2:
        raise ShapeError(f"pdist: expected a 2-D input (N, M), got {tuple(input.shape)}")
    if not p >= 0:
        raise ValueError(f"pdist: p must be non-negative, got {p}")
    n = input.shape[0]
    xp = input.backend.xp
    i, j = xp.triu_indices(n, 1)
    diff = input[Tensor._of(i)] - input[Tensor._of(j)]
    if p == float("inf"):  # PyTorch's pdist gives every tied maximum the whole gradient
        return _max_every_tie(ops.abs(diff), -1, False)
    return ops.vector_norm(diff, p, -1)


__all__ += ["rrelu", "gumbel_softmax", "pdist"]


# --- in-place activations (PyTorch's F.relu_, ...): the out-of-place result stored in input ----
from ..ops.aliases import celu_, selu_, threshold_  # noqa: E402


def relu_(input: Tensor) -> Tensor:
    """In-place relu; returns ``input``."""
    return apply_inplace(input, "relu_", relu)


def elu_(input: Tensor, alpha: float = 1.0) -> Tensor:
    """In-place elu; returns ``input``."""
    return apply_inplace(input, "elu_", elu, alpha)


def leaky_relu_(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """In-place leaky_relu; returns ``input``."""
    return apply_inplace(input, "leaky_relu_", leaky_relu, negative_slope)


def hardtanh_(input: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """In-place hardtanh; returns ``input``."""
    return apply_inplace(input, "hardtanh_", hardtanh, min_val, max_val)


def rrelu_(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3,
           training: bool = False, generator: Generator | None = None) -> Tensor:
    """In-place rrelu; returns ``input``."""
    return apply_inplace(input, "rrelu_", rrelu, lower, upper, training, False, generator)


__all__ += ["relu_", "elu_", "leaky_relu_", "hardtanh_", "celu_", "selu_", "rrelu_",
            "threshold_"]

from . import vision_functional as _vision  # noqa: E402
from .vision_functional import *  # noqa: E402, F403

__all__ += _vision.__all__


# --- PyTorch's deprecated resampling names -------------------------------------------------------
def upsample_nearest(input: Tensor, size=None, scale_factor=None) -> Tensor:
    """Nearest-neighbour upsampling: ``interpolate(input, size, scale_factor, "nearest")``.
    Deprecated in PyTorch (which warns, as this does) in favour of ``interpolate``."""
    _warnings.warn("nn.functional.upsample_nearest is deprecated. Use nn.functional.interpolate "
                   "instead.", stacklevel=2)
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size=None, scale_factor=None) -> Tensor:
    """Bilinear upsampling of (N, C, H, W) with ``align_corners=True``, as PyTorch's deprecated
    name (which warns, as this does) in favour of ``interpolate``."""
    _warnings.warn("nn.functional.upsample_bilinear is deprecated. Use "
                   "nn.functional.interpolate instead.", stacklevel=2)
    if not isinstance(input, Tensor) or input.ndim != 4:
        raise ShapeError(f"upsample_bilinear: expected (N, C, H, W) input, got "
                         f"{getattr(input, 'shape', type(input).__name__)}")
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)


__all__ += ["upsample_nearest", "upsample_bilinear"]
