"""What ``fit(..., distributed=True)`` adds to a run: the model wrapped in
DistributedDataParallel, the training loader sharded by a DistributedSampler, the loss and the
epoch's sums averaged over the ranks, and files, logs and progress left to rank 0.
"""

from __future__ import annotations

from .. import _backend as B
from ..data import DataLoader
from ..distributed import (Communicator, DistributedDataParallel, DistributedSampler, init,
                           launched_under_mpi)
from ..nn import Module

np = B.np


class DistributedRun:
    """The distributed side of one :class:`~nodegrad.train.loop.Trainer`."""

    def __init__(self, model: Module, loader: DataLoader, comm: Communicator):
        self.comm = comm
        if isinstance(model, DistributedDataParallel):
            self.model, self.net = model.module, model
        else:
            self.model, self.net = model, DistributedDataParallel(model, comm)
        self.loader = shard(loader, comm)

    @property
    def is_main(self) -> bool:
        return self.comm.rank == 0

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks (the loss every rank then logs and acts on)."""
        a = np.array([value], np.float64)
        return float(self.comm.allreduce(a, "mean")[0])

    def sum_dict(self, d: dict, keys: list[str]) -> dict:
        """The entries ``keys`` of ``d`` (0 where missing) summed over the ranks, one allreduce."""
        a = np.array([float(d.get(k, 0.0)) for k in keys], np.float64)
        self.comm.allreduce(a, "sum")
        return dict(zip(keys, a.tolist()))


def shard(loader: DataLoader, comm: Communicator) -> DataLoader:
    """``loader`` itself when it already has a sampler (or one rank runs), else a loader over
    the same data whose DistributedSampler gives this rank its share: same batch size (per rank),
    shuffling seeded by the loader's seed, the same transform, device, dtype and workers."""
    sampler = getattr(loader, "sampler", None)  # a DataLoader's default one is not "given"
    if sampler is not None and sampler is not getattr(loader, "_default_sampler", None) \
            or comm.world_size == 1:
        return loader
    if not isinstance(loader, DataLoader):
        raise TypeError(f"fit(distributed=True): cannot shard a {type(loader).__name__}; pass a "
                        "DataLoader or one with a DistributedSampler")
    seed = comm.broadcast_json(loader.seed if loader.seed is not None else 0)
    sampler = DistributedSampler(loader.dataset, comm.world_size, comm.rank,
                                 shuffle=loader.shuffle, seed=seed, drop_last=loader.drop_last)
    workers = {} if not getattr(loader, "num_workers", 0) else dict(
        num_workers=loader.num_workers, prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers, worker_init_fn=loader.worker_init_fn,
        timeout=loader.timeout, multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(loader.dataset, loader.batch_size, drop_last=loader.drop_last, seed=seed,
                      collate_fn=loader.collate_fn, transform=loader.transform,
                      prefetch=loader.prefetch, device=loader.backend.name, dtype=loader.dtype,
                      sampler=sampler, **workers)


def setup(distributed: bool | None, model: Module, loader: DataLoader,
          timeout: float | None = None) -> DistributedRun | None:
    """A DistributedRun when asked (``True``) or, with ``None``, when launched by mpirun."""
    if distributed is None:
        distributed = launched_under_mpi()
    if not distributed:
        return None
    return DistributedRun(model, loader, init(timeout))
