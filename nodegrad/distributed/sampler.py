"""DistributedSampler: each rank's share of the dataset, a fresh seeded order every epoch."""

from __future__ import annotations

from collections.abc import Iterator

from .. import _backend as B
from .comm import get_world

np = B.np


class DistributedSampler:
    """The indices rank ``rank`` of ``num_replicas`` reads in an epoch (PyTorch's semantics).

    Every rank draws the same permutation of ``range(len(dataset))`` from ``(seed, epoch)``
    (with ``shuffle``; the order a shuffling ``DataLoader`` with this seed draws), pads it by
    repeating its first indices to a multiple of ``num_replicas`` (or, with ``drop_last``,
    drops the tail) and takes every ``num_replicas``-th index from position ``rank``. So each
    sample is read exactly once per epoch across the ranks, up to the at most
    ``num_replicas - 1`` padded repeats, and N ranks with batch B read, step by step, the
    batches of N*B that one process reads. Pass it as ``DataLoader(ds, batch_size,
    sampler=...)``; the loader calls :meth:`indices` with its epoch, so its resumable position
    keeps working, also on another number of ranks (``indices(epoch, start)``).
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            w = get_world()
            num_replicas = w.world_size if num_replicas is None else num_replicas
            rank = w.rank if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {num_replicas}), "
                             f"got {rank}")
        self.dataset_len = len(dataset)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        self._explicit = False  # set_epoch was called: its epoch decides a loader's order
        n, r = self.dataset_len, self.num_replicas
        self.num_samples = n // r if drop_last else -(-n // r)
        self.total_size = self.num_samples * r
        if n == 0:
            raise ValueError("DistributedSampler: the dataset is empty")
        if self.num_samples == 0:
            raise ValueError(f"DistributedSampler: {n} samples cannot give each of {r} ranks "
                             "one with drop_last=True")

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """The epoch :meth:`__iter__` draws its order from (as in PyTorch). Once it is called,
        a ``DataLoader`` reading this sampler draws this epoch's order too, as PyTorch's does
        (call it every epoch, as there); until then the loader's own epoch count decides."""
        self.epoch = int(epoch)
        self._explicit = True

    def epoch_of(self, loader_epoch: int) -> int:
        """The epoch whose order a ``DataLoader`` at ``loader_epoch`` reads: the one given to
        :meth:`set_epoch`, once it has been called, else the loader's."""
        return self.epoch if self._explicit else int(loader_epoch)

    def size(self, start: int = 0) -> int:
        """How many indices this rank reads of an epoch's order from global position ``start``."""
        n, r = max(self.dataset_len - int(start), 0), self.num_replicas
        return n // r if self.drop_last else -(-n // r)

    def indices(self, epoch: int, start: int = 0) -> np.ndarray:
        """This rank's indices in ``epoch``; from ``start`` on, the rest of the epoch's order
        (after a resume that consumed ``start`` samples on another number of ranks) split the
        same way: padded by repeating its first indices, or its tail dropped."""
        n = self.dataset_len
        if self.shuffle:
            ss = np.random.SeedSequence(self.seed, spawn_key=(int(epoch), 0))
            order = np.random.default_rng(ss).permutation(n)
        else:
            order = np.arange(n)
        order = order[int(start):]
        total = self.size(start) * self.num_replicas
        if total > len(order) and len(order):  # pad by repeating the start (more than once
            order = np.resize(order, total)  # when tiny)
        return order[:total][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch).tolist())

    def state_dict(self) -> dict:
        return {"seed": self.seed, "num_replicas": self.num_replicas, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def order_state(self) -> dict:
        """What fixes every epoch's global order (the same on every rank, for any number)."""
        return {"num_samples": self.dataset_len, "shuffle": self.shuffle,
                "seed": self.seed if self.shuffle else None}

    def __repr__(self) -> str:
        return (f"DistributedSampler(rank {self.rank} of {self.num_replicas}, "
                f"{self.num_samples} samples, shuffle={self.shuffle}, seed={self.seed})")
