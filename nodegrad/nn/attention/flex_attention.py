"""PyTorch's FlexAttention, dense: softmax(score_mod(q kᵀ · scale) masked by mask_mod) v.

``score_mod(score, b, h, q_idx, kv_idx)`` and ``mask_mod(b, h, q_idx, kv_idx)`` are called
once, on the whole score tensor (B, H, L, S) and on broadcastable int64 index tensors
b (B, 1, 1, 1), h (1, H, 1, 1), q_idx (1, 1, L, 1) and kv_idx (1, 1, 1, S), rather than per
element as PyTorch's (which vmaps them): elementwise arithmetic, comparisons, ``ng.where``
and indexing a table with all indices at once (``bias[h, q_idx, kv_idx]``) broadcast to
(B, H, L, S) and give PyTorch's results. Everything is a differentiable nodegrad expression,
so gradients reach q, k, v and any tensor score_mod captures (a learned bias table). The full
score matrix is materialised (as PyTorch's eager path, which compiles nothing here either);
a :class:`BlockMask` keeps PyTorch's API and block statistics, and its dense mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from ... import _backend as B
from ... import ops
from ...autodiff import no_grad
from ...errors import DTypeError, ShapeError, count_arg
from ...tensor import Tensor, arange, ones
from .. import functional as F

__all__ = ["BlockMask", "flex_attention", "create_block_mask", "create_mask", "noop_mask",
           "and_masks", "or_masks", "AuxRequest", "AuxOutput"]


class AuxRequest(NamedTuple):
    """Which extra outputs ``flex_attention(..., return_aux=AuxRequest(...))`` returns."""

    lse: bool = False
    max_scores: bool = False


class AuxOutput(NamedTuple):
    """The extra outputs asked for (None where not): ``lse`` the log-sum-exp and
    ``max_scores`` the largest modified score of each query row, both (B, H, L)."""

    lse: Tensor | None = None
    max_scores: Tensor | None = None

_DEFAULT_BLOCK = 128


def noop_mask(b, h, q_idx, kv_idx):
    """The mask_mod that keeps every (query, key) pair (a True scalar tensor)."""
    return ones((), dtype="bool", device=b.device)


def and_masks(*mask_mods: Callable) -> Callable:
    """A mask_mod keeping the pairs that every one of ``mask_mods`` keeps."""
    for m in mask_mods:
        if not callable(m):
            raise TypeError(f"and_masks: expected mask_mod functions, got {m!r}")

    def mask(b, h, q_idx, kv_idx):
        out = noop_mask(b, h, q_idx, kv_idx)
        for m in mask_mods:
            out = out & m(b, h, q_idx, kv_idx)
        return out

    return mask


def or_masks(*mask_mods: Callable) -> Callable:
    """A mask_mod keeping the pairs that any one of ``mask_mods`` keeps."""
    for m in mask_mods:
        if not callable(m):
            raise TypeError(f"or_masks: expected mask_mod functions, got {m!r}")

    def mask(b, h, q_idx, kv_idx):
        out = ~noop_mask(b, h, q_idx, kv_idx)
        for m in mask_mods:
            out = out | m(b, h, q_idx, kv_idx)
        return out

    return mask


def _indices(B: int, H: int, L: int, S: int, device) -> tuple[Tensor, ...]:
    """Broadcastable int64 index tensors b, h, q_idx, kv_idx for a (B, H, L, S) score grid."""
    return tuple(arange(n, dtype="int64", device=device).reshape(shape) for n, shape in
                 ((B, (B, 1, 1, 1)), (H, (1, H, 1, 1)), (L, (1, 1, L, 1)), (S, (1, 1, 1, S))))


def _dim(op: str, v, name: str, allow_none: bool = False) -> int:
    if v is None and allow_none:
        return 1
    return count_arg(op, name, v, 1)


def create_mask(mod_fn: Callable, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
                device=None) -> Tensor:
    """The dense boolean mask (B, H, Q_LEN, KV_LEN) of a mask_mod (True: attend), B or H of
    None broadcasting as 1, as PyTorch's ``create_mask``."""
    op = "create_mask"
    if not callable(mod_fn):
        raise TypeError(f"{op}: mod_fn must be a function of (b, h, q_idx, kv_idx), "
                        f"got {mod_fn!r}")
    shape = (_dim(op, B, "B", True), _dim(op, H, "H", True), _dim(op, Q_LEN, "Q_LEN"),
             _dim(op, KV_LEN, "KV_LEN"))
    with no_grad():
        m = mod_fn(*_indices(*shape, device))
    if not isinstance(m, Tensor) or m.dtype.kind != "b":
        raise DTypeError(f"{op}: mask_mod must return a boolean tensor, got "
                         f"{getattr(m, 'dtype', type(m).__name__)}")
    return ops.broadcast_to(m, shape).clone()


class BlockMask:
    """Which (query, key) pairs take part, as PyTorch's BlockMask: made by
    :func:`create_block_mask`, with its ``shape``, ``seq_lengths``, ``BLOCK_SIZE``,
    ``mask_mod``, ``sparsity()`` and ``to_dense()`` (the block-level (B, H, Lb, Sb) int32
    map of blocks holding any kept pair). It holds the dense element mask, applied exactly."""

    def __init__(self, mask: Tensor, mask_mod: Callable, BLOCK_SIZE: tuple[int, int]) -> None:
        self.mask = mask
        self.mask_mod = mask_mod
        self.BLOCK_SIZE = BLOCK_SIZE
        self.seq_lengths = tuple(mask.shape[-2:])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, Q_LEN, KV_LEN)."""
        return tuple(self.mask.shape)

    def _blocks(self) -> Tensor:
        B, H, L, S = self.shape
        bq, bk = self.BLOCK_SIZE
        nq, nk = -(-L // bq), -(-S // bk)
        m = F.pad(self.mask, (0, nk * bk - S, 0, nq * bq - L), value=False)
        return m.reshape(B, H, nq, bq, nk, bk).any(dim=(3, 5))

    def to_dense(self) -> Tensor:
        """The (B, H, Q blocks, KV blocks) int32 map: 1 where a block holds a kept pair."""
        return self._blocks().astype("int32")

    def sparsity(self) -> float:
        """Percentage of the mask's area in blocks holding no kept pair (a kernel skips them):
        100 (1 - kept blocks · block area / numel), PyTorch's formula."""
        kept = float(self._blocks().sum().item())
        return 100.0 * (1.0 - kept * self.BLOCK_SIZE[0] * self.BLOCK_SIZE[1] / self.numel())

    def numel(self) -> int:
        """The number of (b, h, q, kv) positions the mask covers."""
        return int(self.mask.numel())

    def __repr__(self) -> str:
        return (f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%, "
                f"BLOCK_SIZE={self.BLOCK_SIZE})")


def create_block_mask(mask_mod: Callable, B: int | None, H: int | None, Q_LEN: int,
                      KV_LEN: int, device=None,
                      BLOCK_SIZE: int | tuple[int, int] = _DEFAULT_BLOCK,
                      _compile: bool = False) -> BlockMask:
    """A :class:`BlockMask` from ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (True: attend)
    over (B, H, Q_LEN, KV_LEN); B or H None broadcasts over batch or heads."""
    bs = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else tuple(BLOCK_SIZE)
    if len(bs) != 2 or not all(isinstance(b, int) and b > 0 for b in bs):
        raise ValueError(f"create_block_mask: BLOCK_SIZE must be a positive int or a pair, "
                         f"got {BLOCK_SIZE!r}")
    mask = create_mask(mask_mod, B, H, Q_LEN, KV_LEN, device)
    return BlockMask(mask, mask_mod, bs)


def flex_attention(query: Tensor, key: Tensor, value: Tensor, score_mod: Callable | None = None,
                   block_mask: BlockMask | None = None, scale: float | None = None,
                   enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: dict | None = None, *,
                   return_aux: AuxRequest | None = None
                   ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, AuxOutput]:
    """Attention over query (B, Hq, L, E), key (B, Hkv, S, E), value (B, Hkv, S, Ev):
    softmax over S of score_mod(q kᵀ · scale, b, h, q_idx, kv_idx), masked by ``block_mask``,
    times v -> (B, Hq, L, Ev). ``scale`` defaults to 1/√E; ``enable_gqa`` lets Hq be a multiple
    of Hkv (each key/value head serving Hq/Hkv query heads). A query with no kept key gets a
    zero output (and a log-sum-exp of -inf). ``return_lse`` also returns the natural-log
    log-sum-exp of the modified scores, (B, Hq, L); ``return_aux=AuxRequest(lse=...,
    max_scores=...)`` returns (out, AuxOutput) instead. ``kernel_options`` tune PyTorch's
    compiled kernels and are accepted and unused here (there is no kernel to tune)."""
    op = "flex_attention"
    if return_aux is not None and (return_lse or not isinstance(return_aux, AuxRequest)):
        raise ValueError(f"{op}: return_aux must be an AuxRequest and cannot be combined "
                         f"with return_lse, got return_aux={return_aux!r}, "
                         f"return_lse={return_lse}")
    if kernel_options is not None and not isinstance(kernel_options, dict):
        raise TypeError(f"{op}: kernel_options must be a dict or None, got "
                        f"{type(kernel_options).__name__}")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            raise ShapeError(f"{op}: {name} must be a 4-d tensor (B, H, L, E), got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    if not query.dtype == key.dtype == value.dtype or not B.is_float(query.dtype):
        raise DTypeError(f"{op}: query, key and value must share a floating dtype, got "
                         f"{query.dtype}, {key.dtype} and {value.dtype}")
    Bq, Hq, L, E = query.shape
    Bk, Hk, S, Ek = key.shape
    if Ek != E or value.shape[2] != S or value.shape[:2] != key.shape[:2] or Bk != Bq:
        raise ShapeError(f"{op}: expected key (B, Hkv, S, E) and value (B, Hkv, S, Ev) for "
                         f"query (B, Hq, L, E) = {tuple(query.shape)}, got key "
                         f"{tuple(key.shape)} and value {tuple(value.shape)}")
    if Hk != Hq:
        if not enable_gqa or Hq % Hk:
            raise ShapeError(f"{op}: query has {Hq} heads and key/value {Hk}: pass "
                             f"enable_gqa=True with Hq a multiple of Hkv" if Hq % Hk == 0
                             else f"{op}: query heads {Hq} must be a multiple of key/value "
                             f"heads {Hk} (grouped-query attention)")
        key = ops.repeat_interleave(key, Hq // Hk, dim=1)
        value = ops.repeat_interleave(value, Hq // Hk, dim=1)
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    scores = ops.matmul(query, key.swapaxes(-1, -2)) * scale
    if score_mod is not None:
        full = (Bq, Hq, L, S)
        got = score_mod(scores, *_indices(Bq, Hq, L, S, query.device))
        try:
            fits = isinstance(got, Tensor) and tuple(
                ops.broadcast_shapes(tuple(got.shape), full)) == full
        except (ValueError, ShapeError):
            fits = False
        if not fits:
            raise ShapeError(f"{op}: score_mod must return a tensor broadcastable to the "
                             f"scores' shape {full}, got "
                             f"{getattr(got, 'shape', type(got).__name__)}")
        scores = got.astype(query.dtype) if got.dtype != query.dtype else got
        if tuple(scores.shape) != full:
            scores = ops.broadcast_to(scores, full)
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(f"{op}: block_mask must be a BlockMask (create_block_mask), "
                            f"got {type(block_mask).__name__}")
        mb, mh, ml, ms = block_mask.shape
        if (ml, ms) != (L, S) or mb not in (1, Bq) or mh not in (1, Hq):
            raise ShapeError(f"{op}: block_mask of shape {block_mask.shape} does not fit the "
                             f"scores (B, H, L, S) = {(Bq, Hq, L, S)}")
        scores = ops.where(block_mask.mask, scores, -math.inf)
    # softmax with the row maximum held constant; rows with nothing kept give zeros
    with no_grad():
        top = scores.amax(dim=-1, keepdim=True)
        top = ops.where(ops.isfinite(top), top, 0.0)
    p = ops.exp(scores - top)
    denom = p.sum(dim=-1, keepdim=True)
    safe = ops.where(denom > 0, denom, 1.0)
    out = ops.matmul(p / safe, value)
    if return_aux is not None:
        lse = (ops.log(denom) + top).squeeze(-1) if return_aux.lse else None
        mx = scores.amax(dim=-1) if return_aux.max_scores else None
        return out, AuxOutput(lse, mx)
    if not return_lse:
        return out
    return out, (ops.log(denom) + top).squeeze(-1)
