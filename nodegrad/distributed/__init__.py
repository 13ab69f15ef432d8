"""Data-parallel training over MPI: the communicator, DistributedDataParallel, the sampler.

Launch N copies with ``mpirun -np N`` (or ``python -m nodegrad.distributed.launch -n N``);
:func:`init` finds the world, :class:`DistributedDataParallel` averages gradients over it and
:class:`DistributedSampler` gives each rank its share of the data. Without MPI the same code
runs as a world of one process.
"""

from ..nn.layers.sync_norm import SyncBatchNorm
from .comm import (Communicator, DistributedError, MPICommunicator, SingleProcess, Work,
                   abort_on_error, get_world, init, is_initialized, launched_under_mpi, rank,
                   world_size)
from .ddp import DistributedDataParallel, check_same_model
from .sampler import DistributedSampler

__all__ = ["Communicator", "DistributedDataParallel", "DistributedError", "DistributedSampler",
           "MPICommunicator", "SingleProcess", "SyncBatchNorm", "Work", "abort_on_error",
           "check_same_model", "get_world", "init", "is_initialized", "launched_under_mpi",
           "rank", "world_size"]
