"""``nn.utils.rnn`` as PyTorch users know it: variable-length sequences padded into one batch."""

from __future__ import annotations

from collections.abc import Sequence

from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor

__all__ = ["pad_sequence", "unpad_sequence"]


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
