"""PyTorch's top-level (``torch.*``) forms of nn.functional's work, with torch's own arguments.

``torch.embedding(weight, indices)`` takes its operands in the other order from
``F.embedding(input, weight)``, ``torch.kl_div(input, target, 1)`` takes the reduction as an
int (0 none, 1 mean, 2 sum), ``torch.grid_sampler`` takes its modes as ints, and the
``native_*`` forms return the statistics a backward pass would keep. Each function here is a
thin form over nn.functional (the same code computes the values and gradients), exported as
``nodegrad.<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import _backend as B
from .. import ops
from ..autodiff import is_grad_enabled, no_grad
from ..errors import DTypeError, GradError, ShapeError
from ..ops.aliases import apply_inplace
from ..random import default_generator, keep_mask
from ..tensor import Tensor, ones, zeros
from . import functional as F
from .norm_functional import _check_p, _update_running, renorm_rows_

_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


def _reduction(op: str, reduction) -> str:
    """torch's int reduction (0 none, 1 mean, 2 sum) as nn.functional's name (names pass)."""
    if isinstance(reduction, str) and reduction in ("none", "mean", "sum"):
        return reduction
    if isinstance(reduction, int) and not isinstance(reduction, bool) and reduction in \
            _REDUCTIONS:
        return _REDUCTIONS[reduction]
    raise ValueError(f"{op}: reduction must be 0, 1 or 2 (none, mean, sum), got {reduction!r}")


def _tensor(op: str, name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor, got {type(x).__name__}")
    return x


# === embeddings ================================================================================
def embedding(weight: Tensor, indices: Tensor, padding_idx: int = -1,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """``torch.embedding``: the rows of ``weight`` at ``indices`` (operands in the other order
    from ``F.embedding``); ``padding_idx`` >= 0 names a row that gets no gradient, a negative
    one (the default -1) none, as torch's low-level form."""
    pad = None if padding_idx is None or padding_idx < 0 else int(padding_idx)
    return F.embedding(_tensor("embedding", "indices", indices), weight, pad,
                       scale_grad_by_freq=scale_grad_by_freq, sparse=sparse)


def embedding_bag(weight: Tensor, indices: Tensor, offsets: Tensor,
                  scale_grad_by_freq: bool = False, mode: int = 0, sparse: bool = False,
                  per_sample_weights: Tensor | None = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch.embedding_bag``: ``(output, offset2bag, bag_size, max_indices)`` with ``mode``
    0 sum, 1 mean, 2 max and 1-d ``indices`` cut into bags at ``offsets``. ``output`` is
    ``F.embedding_bag``'s (with its gradients); the other three are the index tensors torch's
    CPU kernel returns: each index's bag (empty for a float32/float16 sum without padding,
    which torch's fast path skips), each bag's size not counting ``padding_idx`` (mean and
    max; for sum zeros, one per offset) and, for max, each bag's arg-max row per feature
    (mean: the bag sizes; sum: zeros). A negative ``padding_idx`` means none."""
    op = "embedding_bag"
    if mode not in (0, 1, 2) or isinstance(mode, bool):
        raise ValueError(f"{op}: mode must be 0 (sum), 1 (mean) or 2 (max), got {mode!r}")
    idx, offs = _tensor(op, "indices", indices), _tensor(op, "offsets", offsets)
    if idx.ndim != 1 or offs.ndim != 1:
        raise ShapeError(f"{op}: expected 1-d indices and offsets, got shapes "
                         f"{tuple(idx.shape)} and {tuple(offs.shape)}")
    if idx.dtype.kind not in "iu" or offs.dtype.kind not in "iu":
        raise DTypeError(f"{op}: indices and offsets must be integers, got {idx.dtype} and "
                         f"{offs.dtype}")
    pad = None if padding_idx is None or padding_idx < 0 else int(padding_idx)
    out = F.embedding_bag(idx, weight, offs, scale_grad_by_freq=scale_grad_by_freq,
                          mode=("sum", "mean", "max")[mode], sparse=sparse,
                          per_sample_weights=per_sample_weights,
                          include_last_offset=include_last_offset, padding_idx=pad)
    np = B.np
    ix, of = np.asarray(idx.numpy()).astype(np.int64), np.asarray(offs.numpy()).astype(np.int64)
    n_bags = out.shape[0]
    starts = of[:n_bags]
    ends = np.append(of[1:n_bags + 1] if include_last_offset else of[1:], ix.size)[:n_bags]
    ends = np.minimum(ends, ix.size)
    bag_of = np.zeros(ix.size, np.int64)
    sizes = np.zeros(n_bags, np.int64)
    kept = ix != pad if pad is not None else np.ones(ix.size, bool)
    for b, (s, e) in enumerate(zip(starts, ends)):
        bag_of[s:e] = b
        sizes[b] = int(kept[s:e].sum()) if e > s else 0
    fast = mode == 0 and pad is None and weight.dtype in (B.float32, B.float16)
    offset2bag = np.zeros(0, np.int64) if fast else bag_of
    if mode == 0:  # torch's forward-only kernel sizes these by the offsets, its autograd
        # kernel by the bags (they differ with include_last_offset)
        grads = is_grad_enabled() and (weight.requires_grad or (
            per_sample_weights is not None and per_sample_weights.requires_grad))
        k = n_bags if grads else of.size
        bag_size, max_idx = np.zeros(k, np.int64), np.zeros(k, np.int64)
    elif mode == 1:
        bag_size, max_idx = sizes, sizes.copy()
    else:
        bag_size = sizes
        w = np.asarray(weight.detach().numpy())
        max_idx = np.zeros((n_bags, w.shape[1]), np.int64)
        for b, (s, e) in enumerate(zip(starts, ends)):
            rows = ix[s:e][kept[s:e]]
            if rows.size:
                max_idx[b] = rows[np.argmax(w[rows], axis=0)]
    return (out,) + tuple(Tensor._of(weight.backend.asarray(a))
                          for a in (offset2bag, bag_size, max_idx))


def embedding_renorm_(input: Tensor, indices: Tensor, max_norm: float,
                      norm_type: float) -> Tensor:
    """``torch.embedding_renorm_``: the rows of ``input`` (an embedding weight) named by
    ``indices`` whose ``norm_type``-norm exceeds ``max_norm`` are scaled down to it, in place
    and unrecorded (what ``F.embedding``'s ``max_norm`` does); returns ``input``."""
    op = "embedding_renorm_"
    w, idx = _tensor(op, "input", input), _tensor(op, "indices", indices)
    if w.ndim != 2 or idx.dtype.kind not in "iu":
        raise ShapeError(f"{op}: expected a 2-d weight and integer indices, got "
                         f"{tuple(w.shape)} and {idx.dtype}")
    if w.node is None and w.requires_grad and is_grad_enabled():
        raise GradError(f"{op}: a leaf tensor that requires grad cannot be changed in place "
                        "while recording; wrap the call in nodegrad.no_grad()")
    if idx.numel():
        renorm_rows_(w, idx._data.reshape(-1), max_norm, norm_type)
    return w


# === normalisation =============================================================================
def batch_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None,
               running_mean: Tensor | None, running_var: Tensor | None, training: bool,
               momentum: float, eps: float, cudnn_enabled: bool) -> Tensor:
    """``torch.batch_norm``: ``F.batch_norm`` with torch's low-level argument order (weight
    and bias before the running statistics; ``cudnn_enabled`` is accepted and ignored)."""
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                        eps)


def instance_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                  running_mean: Tensor | None, running_var: Tensor | None,
                  use_input_stats: bool, momentum: float, eps: float,
                  cudnn_enabled: bool) -> Tensor:
    """``torch.instance_norm``: ``F.instance_norm`` with torch's low-level argument order
    (``cudnn_enabled`` is accepted and ignored)."""
    return F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats,
                           momentum, eps)


def _stats(x: Tensor, axes: tuple, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The mean, biased variance and ``1 / sqrt(var + eps)`` over ``axes``, kept as size-1
    axes."""
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.mean((x - mean) ** 2, axis=axes, keepdims=True)
    return mean, var, 1.0 / ops.sqrt(var + eps)


def _in_float32(x: Tensor) -> bool:
    """Whether ``x`` is float16, worked in float32 and rounded once (as torch's kernels: in
    float16 the squares of entries over 256 overflow)."""
    return x.dtype == B.float16


def _back(half: bool, *ts: Tensor) -> tuple:
    return tuple(ops.astype(t, B.float16) for t in ts) if half else ts


def native_layer_norm(input: Tensor, normalized_shape: Sequence[int], weight: Tensor | None,
                      bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.native_layer_norm``: ``(output, mean, rstd)``, the layer norm over the trailing
    ``normalized_shape`` axes and its statistics, shaped ``input.shape[:-k] + (1,) * k``
    (``rstd = 1 / sqrt(var + eps)``, the biased variance); all three differentiable."""
    op = "native_layer_norm"
    x = _tensor(op, "input", input)
    ns = (int(normalized_shape),) if isinstance(normalized_shape, int) else \
        tuple(int(s) for s in normalized_shape)
    k = len(ns)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != ns:
        raise ShapeError(f"{op}: input {tuple(x.shape)} must end in normalized_shape {ns}")
    half = _in_float32(x)
    xf = ops.astype(x, B.float32) if half else x
    mean, _, rstd = _stats(xf, tuple(range(x.ndim - k, x.ndim)), eps)
    y = (xf - mean) * rstd
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return _back(half, y, mean, rstd)


def native_batch_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                      running_mean: Tensor | None, running_var: Tensor | None, training: bool,
                      momentum: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.native_batch_norm``: ``(output, save_mean, save_invstd)``. Training: the batch
    mean and ``1 / sqrt(biased var + eps)`` per channel (C,), and the running statistics, if
    given, move by ``momentum`` (toward the unbiased variance, as ``F.batch_norm``). Eval:
    the running statistics normalise and the two saved tensors are empty (0,), as torch's."""
    op = "native_batch_norm"
    x = _tensor(op, "input", input)
    if x.ndim < 2:
        raise ShapeError(f"{op}: expected (N, C, ...) input, got {tuple(x.shape)}")
    c = x.shape[1]
    shape = (1, c) + (1,) * (x.ndim - 2)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: training=False needs running_mean and running_var")
        y = F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
        return y, zeros(0, dtype=x.dtype, device=x.device), zeros(0, dtype=x.dtype,
                                                                    device=x.device)
    axes = (0,) + tuple(range(2, x.ndim))
    count = x.numel() // max(c, 1)
    if count < 2:
        raise ValueError(f"{op}: need more than one value per channel when training, got "
                         f"input of shape {tuple(x.shape)}")
    half = _in_float32(x)
    xf = ops.astype(x, B.float32) if half else x
    mean, var, invstd = _stats(xf, axes, eps)
    if running_mean is not None and running_var is not None:
        with no_grad():
            _update_running(running_mean, running_var, mean, var, momentum,
                            count / (count - 1))
    y = (xf - mean) * invstd
    if weight is not None:
        y = y * ops.reshape(weight, shape)
    if bias is not None:
        y = y + ops.reshape(bias, shape)
    return _back(half, y, ops.reshape(mean, (c,)), ops.reshape(invstd, (c,)))


def native_group_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, N: int,
                      C: int, HxW: int, group: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.native_group_norm``: ``(output, mean, rstd)``, the group norm of input
    (N, C, ...) with ``HxW`` elements per channel, and its statistics per sample and group,
    shaped (N, group)."""
    op = "native_group_norm"
    x = _tensor(op, "input", input)
    if x.ndim < 2 or (x.shape[0], x.shape[1], math.prod(x.shape[2:])) != (N, C, HxW):
        raise ShapeError(f"{op}: input {tuple(x.shape)} does not match N={N}, C={C}, "
                         f"HxW={HxW}")
    if group < 1 or C % group:
        raise ShapeError(f"{op}: C={C} must be divisible by group={group}")
    half = _in_float32(x)
    xf = ops.astype(x, B.float32) if half else x
    g = ops.reshape(xf, (N, group, (C // group) * HxW))
    mean, _, rstd = _stats(g, (2,), eps)
    y = ops.reshape((g - mean) * rstd, tuple(x.shape))
    shape = (C,) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * ops.reshape(weight, shape)
    if bias is not None:
        y = y + ops.reshape(bias, shape)
    return _back(half, y, ops.reshape(mean, (N, group)), ops.reshape(rstd, (N, group)))


def native_norm(input: Tensor, p=2, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
    """``torch.native_norm``: the ``p``-norm of all elements, or over ``dim`` (torch's kernel
    serves sparse tensors only; this is its dense meaning, ``torch.norm``'s)."""
    x = _tensor("native_norm", "input", input)
    p = 2 if p is None else p
    return ops.norm(x, p, dim, keepdim, dtype=dtype)


def norm_except_dim(v: Tensor, pow: int = 2, dim: int = 0) -> Tensor:  # noqa: A002
    """``torch.norm_except_dim``: the ``pow``-norm over every axis but ``dim``, kept as size-1
    axes (weight norm's ``g``); ``dim=-1`` gives the norm of the whole tensor (0-d)."""
    op = "norm_except_dim"
    v = _tensor(op, "v", v)
    if dim == -1:
        return ops.norm(v, pow)
    if not 0 <= dim < v.ndim:
        raise ShapeError(f"{op}: dim {dim} is out of range for a tensor with {v.ndim} dims "
                         "(-1 means the whole tensor)")
    axes = tuple(a for a in range(v.ndim) if a != dim)
    return ops.norm(v, pow, axes, True) if axes else ops.abs(v)


# === losses with torch's int reduction ===========================================================
# Called without a reduction, torch's top-level forms return the unreduced losses (their Python
# bindings do, whatever the schemas' ``reduction=Mean`` says): 0 is the default here too.
def kl_div(input: Tensor, target: Tensor, reduction: int = 0, *,
           log_target: bool = False) -> Tensor:
    """``torch.kl_div``: the elementwise KL terms reduced by ``reduction`` (0 none, the default
    as torch's, 1 mean over every element, 2 sum; torch's low-level form has no 'batchmean')."""
    return F.kl_div(input, target, reduction=_reduction("kl_div", reduction),
                    log_target=log_target)


def ctc_loss(log_probs: Tensor, targets, input_lengths, target_lengths, blank: int = 0,
             reduction: int = 0, zero_infinity: bool = False) -> Tensor:
    """``torch.ctc_loss``: ``F.ctc_loss`` with the reduction as an int (0 none, 1 mean of the
    losses divided by the target lengths, 2 sum)."""
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank,
                      _reduction("ctc_loss", reduction), zero_infinity)


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                        margin: float = 1.0, p: float = 2.0, eps: float = 1e-6,
                        swap: bool = False, reduction: int = 0) -> Tensor:
    """``torch.triplet_margin_loss``: ``F.triplet_margin_loss`` with an int reduction."""
    return F.triplet_margin_loss(anchor, positive, negative, margin, p, eps, swap,
                                 reduction=_reduction("triplet_margin_loss", reduction))


def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0,
                          reduction: int = 0) -> Tensor:
    """``torch.cosine_embedding_loss``: ``F.cosine_embedding_loss`` with an int reduction."""
    return F.cosine_embedding_loss(input1, input2, target, margin,
                                   reduction=_reduction("cosine_embedding_loss", reduction))


def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0,
                        reduction: int = 0) -> Tensor:
    """``torch.margin_ranking_loss``: ``F.margin_ranking_loss`` with an int reduction."""
    return F.margin_ranking_loss(input1, input2, target, margin,
                                 reduction=_reduction("margin_ranking_loss", reduction))


def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0,
                         reduction: int = 0) -> Tensor:
    """``torch.hinge_embedding_loss``: ``F.hinge_embedding_loss`` with an int reduction."""
    return F.hinge_embedding_loss(input, target, margin,
                                  reduction=_reduction("hinge_embedding_loss", reduction))


def poisson_nll_loss(input: Tensor, target: Tensor, log_input: bool, full: bool, eps: float,
                     reduction: int) -> Tensor:
    """``torch.poisson_nll_loss``: ``F.poisson_nll_loss`` with every argument required, in
    torch's order, and an int reduction."""
    return F.poisson_nll_loss(input, target, log_input, full, eps=eps,
                              reduction=_reduction("poisson_nll_loss", reduction))


# === sampling grids ============================================================================
_INTERPOLATION = ("bilinear", "nearest", "bicubic")
_PADDING = ("zeros", "border", "reflection")


def grid_sampler(input: Tensor, grid: Tensor, interpolation_mode: int, padding_mode: int,
                 align_corners: bool) -> Tensor:
    """``torch.grid_sampler``: ``F.grid_sample`` with torch's int codes, interpolation 0
    bilinear, 1 nearest, 2 bicubic and padding 0 zeros, 1 border, 2 reflection."""
    op = "grid_sampler"
    if isinstance(interpolation_mode, bool) or interpolation_mode not in (0, 1, 2):
        raise ValueError(f"{op}: interpolation_mode must be 0 (bilinear), 1 (nearest) or 2 "
                         f"(bicubic), got {interpolation_mode!r}")
    if isinstance(padding_mode, bool) or padding_mode not in (0, 1, 2):
        raise ValueError(f"{op}: padding_mode must be 0 (zeros), 1 (border) or 2 "
                         f"(reflection), got {padding_mode!r}")
    return F.grid_sample(input, grid, _INTERPOLATION[interpolation_mode],
                         _PADDING[padding_mode], bool(align_corners))


def grid_sampler_2d(input: Tensor, grid: Tensor, interpolation_mode: int, padding_mode: int,
                    align_corners: bool) -> Tensor:
    """``torch.grid_sampler_2d``: :func:`grid_sampler` of a 4-d input (N, C, H, W)."""
    if not isinstance(input, Tensor) or input.ndim != 4:
        raise ShapeError(f"grid_sampler_2d: expected a 4-d input (N, C, H, W), got "
                         f"{getattr(input, 'shape', input)!r}")
    return grid_sampler(input, grid, interpolation_mode, padding_mode, align_corners)


def grid_sampler_3d(input: Tensor, grid: Tensor, interpolation_mode: int, padding_mode: int,
                    align_corners: bool) -> Tensor:
    """``torch.grid_sampler_3d``: :func:`grid_sampler` of a 5-d input (N, C, D, H, W)."""
    if not isinstance(input, Tensor) or input.ndim != 5:
        raise ShapeError(f"grid_sampler_3d: expected a 5-d input (N, C, D, H, W), got "
                         f"{getattr(input, 'shape', input)!r}")
    return grid_sampler(input, grid, interpolation_mode, padding_mode, align_corners)


def affine_grid_generator(theta: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    """``torch.affine_grid_generator``: ``F.affine_grid`` with ``align_corners`` required."""
    return F.affine_grid(theta, size, bool(align_corners))


# === recurrent cells ===========================================================================
def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """``torch.gru_cell``: one GRU step, the next hidden state (N, H)."""
    return F.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)


def lstm_cell(input: Tensor, hx: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``torch.lstm_cell``: one LSTM step from ``hx = [h, c]``, the next ``(h, c)``."""
    if not isinstance(hx, list | tuple) or len(hx) != 2:
        raise TypeError(f"lstm_cell: hx must be a list or tuple (h, c) of two tensors, got "
                        f"{type(hx).__name__}")
    return F.lstm_cell(input, tuple(hx), w_ih, w_hh, b_ih, b_hh)


def rnn_tanh_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """``torch.rnn_tanh_cell``: ``tanh(x w_ih^T + b_ih + h w_hh^T + b_hh)``."""
    return F.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, "tanh")


def rnn_relu_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """``torch.rnn_relu_cell``: ``relu(x w_ih^T + b_ih + h w_hh^T + b_hh)``."""
    return F.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, "relu")


# === forms whose arguments differ from nn.functional's ===========================================
def dropout(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.dropout(input, p, train)``: nn.functional's dropout under torch's argument name
    ``train`` (the reference formula of ``scaled_dot_product_attention`` in PyTorch's documentation
    writes ``torch.dropout(attn_weight, dropout_p, train=True)``)."""
    return F.dropout(input, p, train)


def alpha_dropout(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.alpha_dropout(input, p, train)``: nn.functional's alpha_dropout, torch's names."""
    return F.alpha_dropout(input, p, train)


def feature_alpha_dropout(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.feature_alpha_dropout(input, p, train)``: nn.functional's, torch's names."""
    return F.feature_alpha_dropout(input, p, train)


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5,
               cudnn_enable: bool = True) -> Tensor:
    """``torch.layer_norm``: nn.functional's, with torch's trailing ``cudnn_enable`` (a kernel
    choice, which selects nothing here)."""
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5,
               cudnn_enabled: bool = True) -> Tensor:
    """``torch.group_norm``: nn.functional's, with torch's trailing ``cudnn_enabled`` (a kernel
    choice, which selects nothing here)."""
    return F.group_norm(input, num_groups, weight, bias, eps)


def rrelu(input: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          generator=None) -> Tensor:
    """``torch.rrelu(input, lower, upper, training, generator)``: nn.functional's rrelu, whose
    fifth positional argument is ``inplace`` rather than the generator."""
    return F.rrelu(input, lower, upper, training, generator=generator)


# === dropout forms =============================================================================
def feature_dropout(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.feature_dropout``: while training, zero whole channels (axis 1 of each sample,
    one draw per (sample, channel)) with probability ``p`` and scale the rest by 1/(1-p);
    the kernel behind dropout1d/2d/3d, for any input of two or more axes."""
    op = "feature_dropout"
    _check_p(p, op)
    x = _tensor(op, "input", input)
    if x.ndim < 2:
        raise ShapeError(f"{op}: expected input of two or more axes (N, C, ...), got "
                         f"{tuple(x.shape)}")
    if not train or p == 0:
        return x
    if p == 1:
        return x * 0.0
    mask = keep_mask(default_generator(x.device), tuple(x.shape[:2]) + (1,) * (x.ndim - 2),
                     x.dtype, p, 1.0 / (1.0 - p))
    return x * mask


def dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.dropout_``: ``dropout(input, p, train)`` stored into ``input``."""
    return F.dropout(input, p, train, inplace=True)


def alpha_dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.alpha_dropout_``: ``alpha_dropout(input, p, train)`` stored into ``input``."""
    return F.alpha_dropout(input, p, train, inplace=True)


def feature_dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.feature_dropout_``: ``feature_dropout(input, p, train)`` stored into
    ``input``."""
    return apply_inplace(input, "feature_dropout_", feature_dropout, p, train)


def feature_alpha_dropout_(input: Tensor, p: float, train: bool) -> Tensor:
    """``torch.feature_alpha_dropout_``: ``feature_alpha_dropout(input, p, train)`` stored into
    ``input``."""
    return F.feature_alpha_dropout(input, p, train, inplace=True)


def native_dropout(input: Tensor, p: float, train: bool | None) -> tuple[Tensor, Tensor]:
    """``torch.native_dropout``: ``(output, mask)`` with the boolean mask of kept units;
    ``train`` True or None drops with probability ``p`` (kept units scaled by 1/(1-p)),
    False gives a copy of the input and an all-True mask."""
    op = "native_dropout"
    _check_p(p, op)
    x = _tensor(op, "input", input)
    if train is False:
        return x * 1, ones(*x.shape, dtype=B.bool_, device=x.device)
    if p == 1:
        return x * 0.0, zeros(*x.shape, dtype=B.bool_, device=x.device)
    keep = keep_mask(default_generator(x.device), tuple(x.shape), x.dtype, p,
                     1.0 / (1.0 - p))
    return x * keep, keep != 0


# === convolution ===============================================================================
def _one(v) -> int | tuple:
    """torch's int lists: a one-element list stands for every spatial axis."""
    t = tuple(int(s) for s in v) if isinstance(v, list | tuple) else int(v)
    return t[0] if isinstance(t, tuple) and len(t) == 1 else t


def convolution(input: Tensor, weight: Tensor, bias: Tensor | None, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                output_padding: Sequence[int], groups: int) -> Tensor:
    """``torch.convolution``: the 1-, 2- or 3-d convolution (or, ``transposed``, transposed
    convolution) that ``weight``'s rank names, with torch's full argument list
    (``output_padding`` is read only when ``transposed``, as torch's)."""
    op = "convolution"
    w = _tensor(op, "weight", weight)
    nd = w.ndim - 2
    if nd not in (1, 2, 3):
        raise ShapeError(f"{op}: weight must have 3, 4 or 5 axes (1-, 2- or 3-d), got "
                         f"{tuple(w.shape)}")
    s, pd, dl = _one(stride), _one(padding), _one(dilation)
    if transposed:
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        return fn(input, w, bias, s, pd, _one(output_padding), groups, dl)
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return fn(input, w, bias, s, pd, dl, groups)


conv_tbc = F.conv_tbc
native_channel_shuffle = F.channel_shuffle  # torch's kernel name for channel_shuffle

__all__ = ["embedding", "embedding_bag", "batch_norm", "instance_norm", "native_layer_norm",
           "native_batch_norm", "native_group_norm", "native_norm", "norm_except_dim",
           "kl_div", "ctc_loss", "triplet_margin_loss", "cosine_embedding_loss",
           "margin_ranking_loss", "hinge_embedding_loss", "poisson_nll_loss", "grid_sampler",
           "affine_grid_generator", "gru_cell", "lstm_cell", "rnn_tanh_cell", "rnn_relu_cell",
           "dropout", "alpha_dropout", "feature_alpha_dropout", "layer_norm", "group_norm",
           "rrelu", "feature_dropout", "dropout_", "alpha_dropout_", "feature_dropout_",
           "feature_alpha_dropout_", "native_dropout", "convolution", "conv_tbc",
           "embedding_renorm_", "grid_sampler_2d", "grid_sampler_3d", "native_channel_shuffle"]
