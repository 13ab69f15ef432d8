"""``nn.utils.rnn`` as PyTorch users know it: variable-length sequences padded into one batch,
or packed (:class:`PackedSequence`) so that recurrent layers stop each one at its own end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ... import _backend as B
from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor, float16, float32, float64, full, int32, int64, tensor

__all__ = ["pad_sequence", "unpad_sequence", "PackedSequence", "pack_padded_sequence",
           "pad_packed_sequence", "pack_sequence", "unpack_sequence", "invert_permutation"]


def pad_sequence(sequences: Sequence[Tensor], batch_first: bool = False,
                 padding_value: float = 0.0, padding_side: str = "right") -> Tensor:
    """Tensors (L_i, *) of one trailing shape, padded with ``padding_value`` to the longest
    length L and stacked: (L, B, *), or (B, L, *) with ``batch_first``; ``padding_side``
    'left' pads before each sequence. Differentiable in every sequence (PyTorch's)."""
    seqs = list(sequences)
    if not seqs:
        raise ValueError("pad_sequence: expected at least one sequence")
    if padding_side not in ("right", "left"):
        raise ValueError(f"pad_sequence: padding_side must be 'right' or 'left', got "
                         f"{padding_side!r}")
    trail = tuple(seqs[0].shape[1:])
    want = "(L" + "".join(f", {n}" for n in trail) + (")" if trail else ",)")
    for i, s in enumerate(seqs):
        if s.ndim < 1 or tuple(s.shape[1:]) != trail:
            raise ShapeError(f"pad_sequence: sequence {i} has shape {tuple(s.shape)}; expected "
                             f"{want}")
    longest = max(s.shape[0] for s in seqs)
    padded = []
    for s in seqs:
        extra = longest - s.shape[0]
        widths = ((extra, 0) if padding_side == "left" else (0, extra),) + ((0, 0),) * len(trail)
        padded.append(ops.pad(s, widths, constant_values=padding_value) if extra else s)
    return ops.stack(padded, 0 if batch_first else 1)


def unpad_sequence(padded_sequences: Tensor, lengths, batch_first: bool = False) -> list:
    """The inverse of :func:`pad_sequence` (right padding): the first ``lengths[i]`` steps of
    each sequence."""
    x = padded_sequences if batch_first else ops.swapaxes(padded_sequences, 0, 1)
    lengths = [int(n) for n in (lengths.numpy() if isinstance(lengths, Tensor) else lengths)]
    if len(lengths) != x.shape[0]:
        raise ShapeError(f"unpad_sequence: {len(lengths)} lengths for a batch of {x.shape[0]}")
    return [x[i, :n] for i, n in enumerate(lengths)]


# --- packed sequences ------------------------------------------------------------------------
class _PackedFields(NamedTuple):
    data: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None


class PackedSequence(_PackedFields):
    """A batch of variable-length sequences, step-major without padding (PyTorch's namedtuple).

    ``data`` (sum of lengths, *) holds step 0 of every sequence, then step 1 of those still
    running, and so on, the sequences ordered longest first; ``batch_sizes`` (int64, one per
    step) says how many rows each step has; ``sorted_indices`` maps that order to the caller's
    batch order (None when the batch came sorted) and ``unsorted_indices`` is its inverse. Make
    one with :func:`pack_padded_sequence` or :func:`pack_sequence`, not by hand.
    """

    __slots__ = ()

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if batch_sizes is None:  # PyTorch also accepts the pair (data, batch_sizes)
            if not (isinstance(data, tuple | list) and len(data) == 2):
                raise TypeError("PackedSequence: expected data and batch_sizes, or the pair "
                                f"(data, batch_sizes), got {type(data).__name__} alone")
            data, batch_sizes = data
        if unsorted_indices is None:
            unsorted_indices = invert_permutation(sorted_indices)
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs) -> PackedSequence:
        """The same sequences with ``data`` moved or cast (``Tensor.to``'s arguments); the
        indices follow ``data``'s device, ``batch_sizes`` stays on the host, as PyTorch.
        ``self`` when nothing changes."""
        return self._with_data(self.data.to(*args, **kwargs))

    def _with_data(self, data: Tensor) -> PackedSequence:
        if data is self.data:
            return self
        dev = data.device

        def move(t):
            return None if t is None else t.to(dev)

        return type(self)(data, self.batch_sizes, move(self.sorted_indices),
                          move(self.unsorted_indices))

    def cpu(self) -> PackedSequence:
        """``data`` (and the indices) on the CPU."""
        return self._with_data(self.data.cpu())

    def cuda(self, device=None) -> PackedSequence:
        """``data`` (and the indices) on a GPU (``device``: its index or name)."""
        return self._with_data(self.data.cuda() if device is None else self.data.cuda(device))

    def pin_memory(self) -> PackedSequence:
        """``data`` pinned, as ``Tensor.pin_memory`` (CPU tensors need no pinning here)."""
        return self._with_data(self.data.pin_memory())

    def is_pinned(self) -> bool:
        """Whether ``data`` is in pinned memory."""
        return self.data.is_pinned()

    # the dtype casts of ``data``, as PyTorch's PackedSequence has them
    def double(self) -> PackedSequence:
        return self.to(dtype=float64)

    def float(self) -> PackedSequence:
        return self.to(dtype=float32)

    def half(self) -> PackedSequence:
        return self.to(dtype=float16)

    def long(self) -> PackedSequence:
        return self.to(dtype=int64)

    def int(self) -> PackedSequence:
        return self.to(dtype=int32)

    def short(self) -> PackedSequence:
        return self.to(dtype=B.np.dtype("int16"))

    def char(self) -> PackedSequence:
        return self.to(dtype=B.np.dtype("int8"))

    def byte(self) -> PackedSequence:
        return self.to(dtype=B.np.dtype("uint8"))

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda


def _host_ints(t, fn: str, what: str, floats: bool = False):
    """``t`` (a Tensor or a sequence of ints) as a 1-D int64 host array. With ``floats``,
    whole-number floats are taken too (PyTorch converts lengths to int64); a fraction is
    refused rather than truncated."""
    if isinstance(t, Tensor):
        t._concrete(f"{fn}: {what}")  # Python reads the values: under jit, not frozen silently
    a = t.backend.to_host(t._data) if isinstance(t, Tensor) else B.np.asarray(t)
    kinds = "iuf" if floats else "iu"
    if a.ndim != 1 or (a.size and a.dtype.kind not in kinds
                       and not (floats and B.is_float(a.dtype))):
        raise TypeError(f"{fn}: {what} must be a 1-D sequence of integers, got "
                        f"{a.dtype} of shape {a.shape}")
    if B.is_float(a.dtype) and not (B.np.isfinite(a) & (a == B.np.trunc(a))).all():
        raise ValueError(f"{fn}: {what} must be whole numbers, got {a.tolist()}")
    return a.astype(B.np.int64)


def _index(a) -> Tensor:
    return tensor(B.np.asarray(a, dtype=B.np.int64))


def invert_permutation(permutation: Tensor | None) -> Tensor | None:
    """The permutation q with q[p[i]] = i (None for None): how PackedSequence undoes its sort."""
    if permutation is None:
        return None
    p = _host_ints(permutation, "invert_permutation", "the permutation")
    if not B.np.array_equal(B.np.sort(p), B.np.arange(p.size)):
        raise ValueError(f"invert_permutation: expected a permutation of 0..{p.size - 1}, got "
                         f"{p.tolist()}")
    inv = B.np.empty_like(p)
    inv[p] = B.np.arange(p.size)
    out = _index(inv)
    return out.to(permutation.device) if isinstance(permutation, Tensor) else out


def _pack(padded: Tensor, lengths, order, batch_first: bool) -> PackedSequence:
    """Pack ``padded`` ((T, N, *) or (N, T, *)) whose sequence b has ``lengths[b]`` steps,
    longest first in ``order`` (None: as given). One gather, so gradients flow to ``padded``."""
    np = B.np
    n = lengths.size
    steps = padded.shape[1] if batch_first else padded.shape[0]
    perm = np.arange(n) if order is None else order
    sl = lengths[perm]
    bs = (sl[None, :] > np.arange(sl[0])[:, None]).sum(1)
    t = np.repeat(np.arange(bs.size), bs)
    s = np.arange(t.size) - np.repeat(np.cumsum(bs) - bs, bs)
    b = perm[s]
    rows = b * steps + t if batch_first else t * n + b
    flat = ops.reshape(padded, (-1,) + tuple(padded.shape[2:]))
    data = ops.index_select(flat, 0, _index(rows).to(padded.device))
    sorted_idx = None if order is None else _index(order).to(padded.device)
    return PackedSequence(data, _index(bs), sorted_idx, None)


def pack_padded_sequence(input: Tensor, lengths, batch_first: bool = False,
                         enforce_sorted: bool = True) -> PackedSequence:
    """Pack a padded batch (T, N, *) ((N, T, *) with ``batch_first``) whose sequence b has
    ``lengths[b]`` valid steps, so recurrent layers skip the padding. With ``enforce_sorted``
    the lengths must not increase; otherwise the batch is sorted here (stable, longest first)
    and the order is kept in ``sorted_indices``. Differentiable in ``input``."""
    fn = "pack_padded_sequence"
    if not isinstance(input, Tensor) or input.ndim < 2:
        got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        want = "(N, T, *)" if batch_first else "(T, N, *)"
        raise ShapeError(f"{fn}: expected input of shape {want}, got {got}")
    lens = _host_ints(lengths, fn, "lengths", floats=True)
    n, steps = (input.shape[0], input.shape[1]) if batch_first else (input.shape[1],
                                                                     input.shape[0])
    if lens.size != n:
        raise ShapeError(f"{fn}: expected {n} lengths (one per sequence of the batch), got "
                         f"{lens.size}")
    if lens.size == 0:
        raise ValueError(f"{fn}: cannot pack an empty batch (no lengths)")
    if (lens <= 0).any():
        raise ValueError(f"{fn}: every length must be greater than 0, got {lens.tolist()}")
    if lens.max() > steps:
        raise ValueError(f"{fn}: a length of {int(lens.max())} exceeds the {steps} steps of the "
                         "input")
    if enforce_sorted:
        if (B.np.diff(lens) > 0).any():
            raise ValueError(f"{fn}: lengths must be sorted in decreasing order when "
                             f"enforce_sorted=True, got {lens.tolist()}; pass "
                             "enforce_sorted=False to pack an unsorted batch")
        order = None
    else:
        order = B.np.argsort(-lens, kind="stable")
    return _pack(input, lens, order, batch_first)


def _packed_lengths(sequence: PackedSequence, fn: str):
    """(batch sizes, lengths in sorted order, sorted order) of a PackedSequence, on the host."""
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"{fn}: expected a PackedSequence, got {type(sequence).__name__}")
    bs = _host_ints(sequence.batch_sizes, fn, "batch_sizes")
    if bs.size == 0 or (B.np.diff(bs) > 0).any() or bs[-1] <= 0:
        raise ValueError(f"{fn}: batch_sizes must be positive and non-increasing, got "
                         f"{bs.tolist()}")
    n = int(bs[0])
    sl = (bs[None, :] > B.np.arange(n)[:, None]).sum(1)
    perm = (B.np.arange(n) if sequence.sorted_indices is None
            else _host_ints(sequence.sorted_indices, fn, "sorted_indices"))
    return bs, sl, perm


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False,
                        padding_value: float = 0.0,
                        total_length: int | None = None) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`pack_padded_sequence`: the padded batch (T, N, *) ((N, T, *) with
    ``batch_first``) in the caller's order, padded with ``padding_value`` to the longest length
    or to ``total_length``, and the int64 lengths. Differentiable in ``sequence.data``."""
    fn = "pad_packed_sequence"
    np = B.np
    bs, sl, perm = _packed_lengths(sequence, fn)
    data = sequence.data
    steps = bs.size
    if data.ndim < 1 or data.shape[0] != int(bs.sum()):
        raise ShapeError(f"{fn}: batch_sizes add up to {int(bs.sum())} rows but data has shape "
                         f"{tuple(data.shape)}")
    if total_length is not None:
        if total_length < steps:
            raise ValueError(f"{fn}: expected total_length to be at least the length of the "
                             f"longest sequence ({steps}), got {total_length}")
        steps = int(total_length)
    pos = np.empty_like(perm)
    pos[perm] = np.arange(perm.size)        # each sequence's place in the sorted order
    lens = sl[pos]
    off = np.zeros(steps, np.int64)
    off[:bs.size] = np.cumsum(bs) - bs
    t = np.arange(steps)[:, None]
    idx = np.where(t < lens[None, :], off[:, None] + pos[None, :], data.shape[0])
    if batch_first:
        idx = idx.T
    trail = tuple(data.shape[1:])
    pad = full((1,) + trail, padding_value, dtype=data.dtype, device=data.device)
    out = ops.index_select(ops.concatenate([data, pad], 0), 0,
                           _index(idx.reshape(-1)).to(data.device))
    return ops.reshape(out, idx.shape + trail), _index(lens)


def pack_sequence(sequences: Sequence[Tensor], enforce_sorted: bool = True) -> PackedSequence:
    """Pack a list of tensors (L_i, *) (longest first unless ``enforce_sorted`` is False)."""
    seqs = list(sequences)
    if not seqs:
        raise ValueError("pack_sequence: expected at least one sequence")
    return pack_padded_sequence(pad_sequence(seqs), [s.shape[0] for s in seqs],
                                enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: PackedSequence) -> list:
    """The inverse of :func:`pack_sequence`: the list of tensors (L_i, *), in the caller's
    order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
