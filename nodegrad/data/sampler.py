"""Samplers: which dataset indices an epoch reads, in what order (PyTorch's ``torch.utils.data``).

Iterating a sampler yields indices (a :class:`BatchSampler`: lists of them), as in PyTorch. The
random samplers draw from an ``ng.Generator`` (``generator=``) or, without one, from ng's default
CPU generator (seeded by ``ng.manual_seed``). Each pass takes one seed from that generator and
derives its whole order from it, so the DataLoader can read the order as one index array (its
vectorised gathering needs no per-index Python) and record that seed in its ``state_dict``: a
restored loader replays the rest of the epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any

from .. import _backend as B
from ..random import Generator, default_generator
from ..tensor import Tensor

np = B.np


def _positive_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0


def _check_generator(owner: str, generator: Any) -> None:
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"{owner}: generator must be an ng.Generator or None, "
                        f"got {type(generator).__module__}.{type(generator).__qualname__}")


def _draw_seed(generator: Generator | None) -> int:
    """One seed from ``generator`` (ng's default CPU generator when None): a pass's order."""
    g = default_generator("cpu") if generator is None else generator
    return int(g.integers(0, 2**63 - 1, ()))


def _host_rng(seed: int) -> np.random.Generator:
    """The NumPy stream of an ``ng.Generator`` seeded with ``seed`` (orders live on the host)."""
    return Generator("cpu", seed).rng


class Sampler:
    """Base class of samplers: ``__iter__`` yields dataset indices, ``__len__`` counts them.

    Subclass it and define both to drive a DataLoader with your own order; the loader then
    iterates the sampler once per epoch (calling its ``set_epoch(epoch)`` first, if it has one).
    """

    def __init__(self, data_source: Sized | None = None) -> None:
        pass  # accepted for PyTorch compatibility, unused as there

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")


class _Seeded(Sampler):
    """A sampler whose pass is a pure function of one seed: ``_order(_draw())``."""

    def _draw(self) -> int | None:
        """The seed of the next pass (None: the order is fixed)."""
        return None

    def _order(self, seed: int | None) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        order = self._order(self._draw())
        yield from order.tolist() if isinstance(order, np.ndarray) else order


class _Draws:
    """``k`` draws with replacement from ``[0, n)`` (uniform, or with probabilities ``p``) of
    one seed, made a block at a time from its stream as they are read (every read of an index
    gives the same number), never held whole: makemore's endless loader asks
    ``RandomSampler(replacement=True, num_samples=10**10)``."""

    BLOCK = 1 << 16

    def __init__(self, seed: int, n: int, k: int, p: np.ndarray | None = None) -> None:
        self.seed, self.n, self.k, self.p = seed, n, k, p
        self._restart()

    def _restart(self) -> None:
        self._rng = _host_rng(self.seed)
        self._next = 0  # the block the stream makes next
        self._blocks: dict[int, np.ndarray] = {}  # the last two made

    def _block(self, j: int) -> np.ndarray:
        if j not in self._blocks:
            if j < self._next:  # behind the stream: replay it from the seed
                self._restart()
            while self._next <= j:
                size = min(self.BLOCK, self.k - self._next * self.BLOCK)
                self._blocks[self._next] = (
                    self._rng.integers(0, self.n, size, dtype=B.int64) if self.p is None
                    else self._rng.choice(self.n, size, p=self.p).astype(B.int64, copy=False))
                self._blocks.pop(self._next - 2, None)
                self._next += 1
        return self._blocks[j]

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self.k)
            if step != 1:
                raise IndexError(f"RandomSampler: the order reads slices of step 1, got {step}")
            parts = [self._block(j)[max(start - j * self.BLOCK, 0):stop - j * self.BLOCK]
                     for j in range(start // self.BLOCK, -(-stop // self.BLOCK))]
            return np.concatenate(parts) if parts else np.empty(0, dtype=B.int64)
        i = int(i) + (self.k if int(i) < 0 else 0)
        if not 0 <= i < self.k:
            raise IndexError(f"RandomSampler: index {i} out of range for {self.k} draws")
        return self._block(i // self.BLOCK)[i % self.BLOCK]

    def __iter__(self) -> Iterator[int]:
        for j in range(-(-self.k // self.BLOCK)):
            yield from self._block(j).tolist()


class SequentialSampler(_Seeded):
    """``0, 1, ..., len(data_source) - 1`` in order."""

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __len__(self) -> int:
        return len(self.data_source)

    def _order(self, seed: int | None) -> np.ndarray:
        return np.arange(len(self.data_source), dtype=B.int64)


class RandomSampler(_Seeded):
    """Random indices of ``data_source``: a fresh permutation per pass, or, with ``replacement``,
    ``num_samples`` independent uniform draws.

    Without replacement, ``num_samples`` (default ``len(data_source)``) may exceed the length:
    whole permutations follow each other, the last one cut short (as in PyTorch).
    """

    def __init__(self, data_source: Sized, replacement: bool = False,
                 num_samples: int | None = None, generator: Generator | None = None) -> None:
        if not isinstance(replacement, bool):
            raise TypeError("RandomSampler: replacement should be a boolean value, but got "
                            f"replacement={replacement!r}")
        _check_generator("RandomSampler", generator)
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = generator
        if not _positive_int(self.num_samples):
            raise ValueError("RandomSampler: num_samples should be a positive integer value, "
                             f"but got num_samples={self.num_samples!r}")

    @property
    def num_samples(self) -> int:
        """Indices per pass (the dataset's current length unless given)."""
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __len__(self) -> int:
        return int(self.num_samples)

    def _draw(self) -> int:
        return _draw_seed(self.generator)

    def _order(self, seed: int | None) -> np.ndarray | _Draws:
        n, k = len(self.data_source), int(self.num_samples)
        if n == 0:
            raise ValueError("RandomSampler: the data source is empty")
        if self.replacement and k > _Draws.BLOCK:  # drawn as read, not held whole
            return _Draws(seed, n, k)
        rng = _host_rng(seed)
        if self.replacement:
            return rng.integers(0, n, k, dtype=B.int64)
        whole, rest = divmod(k, n)
        parts = [rng.permutation(n) for _ in range(whole)] + [rng.permutation(n)[:rest]]
        return np.concatenate(parts).astype(B.int64, copy=False)


class SubsetRandomSampler(_Seeded):
    """The given ``indices`` in a fresh random order every pass, without replacement."""

    def __init__(self, indices: Iterable[int], generator: Generator | None = None) -> None:
        _check_generator("SubsetRandomSampler", generator)
        idx = np.asarray(list(indices) if not hasattr(indices, "__len__") else indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError("SubsetRandomSampler: indices must be a 1-d sequence of ints, got "
                            f"dtype {idx.dtype} and shape {idx.shape}")
        self.indices = indices
        self._idx = idx.astype(B.int64, copy=False)
        self.generator = generator

    def __len__(self) -> int:
        return len(self._idx)

    def _draw(self) -> int:
        return _draw_seed(self.generator)

    def _order(self, seed: int | None) -> np.ndarray:
        return self._idx[_host_rng(seed).permutation(len(self._idx))]


class WeightedRandomSampler(_Seeded):
    """``num_samples`` indices in ``[0, len(weights))``, index i with probability proportional to
    ``weights[i]``; without ``replacement`` each index at most once (successive draws, each
    among those not drawn yet, as ``torch.multinomial``).

    The weights need not sum to one. Unlike PyTorch, weights that cannot be sampled (negative,
    not finite, all zero, or fewer non-zero than ``num_samples`` without replacement) are
    refused here, when the sampler is made, rather than at the first pass.
    """

    def __init__(self, weights, num_samples: int, replacement: bool = True,
                 generator: Generator | None = None) -> None:
        if not _positive_int(num_samples):
            raise ValueError("WeightedRandomSampler: num_samples should be a positive integer "
                             f"value, but got num_samples={num_samples!r}")
        if not isinstance(replacement, bool):
            raise ValueError("WeightedRandomSampler: replacement should be a boolean value, but "
                             f"got replacement={replacement!r}")
        _check_generator("WeightedRandomSampler", generator)
        w = weights.numpy() if isinstance(weights, Tensor) else weights
        w = np.asarray(w, dtype=B.float64)
        if w.ndim != 1:
            raise ValueError("WeightedRandomSampler: weights should be a 1d sequence but given "
                             f"weights have shape {tuple(w.shape)}")
        if w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("WeightedRandomSampler: weights must be finite, non-negative and "
                             f"not all zero, got {w if w.size <= 8 else w[:8]}")
        if not replacement and np.count_nonzero(w) < num_samples:
            raise ValueError(f"WeightedRandomSampler: num_samples={num_samples} without "
                             f"replacement needs as many non-zero weights, got "
                             f"{np.count_nonzero(w)}")
        self.weights = Tensor._of(w)
        self._p = w / w.sum()
        self.num_samples = int(num_samples)
        self.replacement = replacement
        self.generator = generator

    def __len__(self) -> int:
        return self.num_samples

    def _draw(self) -> int:
        return _draw_seed(self.generator)

    def _order(self, seed: int | None) -> np.ndarray | _Draws:
        if self.replacement and self.num_samples > _Draws.BLOCK:  # drawn as read
            return _Draws(seed, len(self._p), self.num_samples, self._p)
        rng = _host_rng(seed)
        out = rng.choice(len(self._p), self.num_samples, replace=self.replacement, p=self._p)
        return out.astype(B.int64, copy=False)


class BatchSampler(Sampler):
    """Groups the indices of ``sampler`` (a Sampler or any iterable of ints) into lists of
    ``batch_size``; the last, shorter one is dropped with ``drop_last``.

    Passed as ``DataLoader(ds, batch_sampler=...)`` it fixes every batch (the loader then takes
    no ``batch_size``, ``shuffle``, ``sampler`` or ``drop_last``).
    """

    def __init__(self, sampler: Sampler | Iterable[int], batch_size: int,
                 drop_last: bool) -> None:
        if not _positive_int(batch_size):
            raise ValueError("BatchSampler: batch_size should be a positive integer value, but "
                             f"got batch_size={batch_size!r}")
        if not isinstance(drop_last, bool):
            raise ValueError("BatchSampler: drop_last should be a boolean value, but got "
                             f"drop_last={drop_last!r}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if _seeded(self.sampler):
            for b in self._order(self._draw()):
                yield b.tolist()
            return
        batch: list[int] = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def _draw(self) -> int | None:
        return self.sampler._draw() if _seeded(self.sampler) else None  # type: ignore[union-attr]

    def _order(self, seed: int | None) -> list[np.ndarray]:
        """The pass's batches as index arrays (the inner order split every ``batch_size``)."""
        if _seeded(self.sampler):
            order = self.sampler._order(seed)  # type: ignore[union-attr]
        else:
            order = np.fromiter(iter(self.sampler), dtype=B.int64)
        bs = self.batch_size
        stop = len(order) - len(order) % bs if self.drop_last else len(order)
        return [order[i:i + bs] for i in range(0, stop, bs)]


_OWN_ITERS = (_Seeded.__iter__, BatchSampler.__iter__)


def _seeded(sampler: Any) -> bool:
    """Whether ``sampler``'s passes can be read as ``_order(_draw())`` (one of ours, with its own
    ``__iter__``: a subclass that overrides it is iterated like any sampler)."""
    return isinstance(sampler, _Seeded | BatchSampler) and type(sampler).__iter__ in _OWN_ITERS
