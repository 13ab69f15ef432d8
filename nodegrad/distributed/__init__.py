"""Data-parallel training over MPI: the communicator, DistributedDataParallel, the sampler.

Launch N copies with ``mpirun -np N`` (or ``python -m nodegrad.distributed.launch -n N``);
:func:`init` finds the world, :class:`DistributedDataParallel` averages gradients over it and
:class:`DistributedSampler` gives each rank its share of the data. Without MPI the same code
runs as a world of one process. ``all_reduce``, ``broadcast``, ``all_gather``,
``reduce_scatter`` and friends are torch.distributed's functions on tensors.
"""

from ..nn.layers.sync_norm import SyncBatchNorm
from .collectives import (ReduceOp, all_gather, all_gather_into_tensor, all_reduce, barrier,
                          broadcast, get_rank, get_world_size, reduce_scatter,
                          reduce_scatter_tensor)
from .comm import (Communicator, DistributedError, MPICommunicator, SingleProcess, Work,
                   abort_on_error, get_world, init, is_initialized, launched_under_mpi, rank,
                   world_size)
from .ddp import DistributedDataParallel, check_same_model
from .sampler import DistributedSampler

__all__ = ["Communicator", "DistributedDataParallel", "DistributedError", "DistributedSampler",
           "MPICommunicator", "ReduceOp", "SingleProcess", "SyncBatchNorm", "Work",
           "abort_on_error", "all_gather", "all_gather_into_tensor", "all_reduce", "barrier",
           "broadcast", "check_same_model", "get_rank", "get_world", "get_world_size", "init",
           "is_initialized", "launched_under_mpi", "rank", "reduce_scatter",
           "reduce_scatter_tensor", "world_size"]
