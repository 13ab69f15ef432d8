"""Data-parallel training over MPI: the communicator, DistributedDataParallel, the sampler.

Launch N copies with ``mpirun -np N`` (or ``python -m nodegrad.distributed.launch -n N``);
:func:`init` finds the world, :class:`DistributedDataParallel` averages gradients over it and
:class:`DistributedSampler` gives each rank its share of the data. Without MPI the same code
runs as a world of one process. ``all_reduce``, ``broadcast``, ``all_gather``,
``reduce_scatter`` and friends are torch.distributed's functions on tensors; with
``init_process_group``, ``new_group``, point-to-point messages, object collectives and
:class:`~nodegrad.distributed.optim.ZeroRedundancyOptimizer`, a PyTorch DDP script ports by
changing its imports.
"""

from ..nn.layers.sync_norm import SyncBatchNorm
from . import optim
from .collectives import (GroupMember, ReduceOp, all_gather, all_gather_into_tensor, all_reduce,
                          all_to_all, all_to_all_single, barrier, broadcast, gather,
                          get_global_rank, get_group_rank, get_process_group_ranks, get_rank,
                          get_world_size, group, monitored_barrier, reduce, reduce_scatter,
                          reduce_scatter_tensor, scatter)
from .comm import (Communicator, DistributedError, MPICommunicator, SingleProcess, Work,
                   abort_on_error, get_world, init, is_initialized, launched_under_mpi, rank,
                   world_size)
from .ddp import DistributedDataParallel, check_same_model
from .objects import (all_gather_object, broadcast_object_list, gather_object,
                      scatter_object_list)
from .optim import ZeroRedundancyOptimizer
from .p2p import P2POp, batch_isend_irecv, irecv, isend, recv, send
from .process_group import (destroy_process_group, get_backend, init_process_group,
                            is_available, is_gloo_available, is_mpi_available,
                            is_nccl_available, is_torchelastic_launched, new_group)
from .sampler import DistributedSampler

__all__ = ["Communicator", "DistributedDataParallel", "DistributedError", "DistributedSampler",
           "GroupMember", "MPICommunicator", "P2POp", "ReduceOp", "SingleProcess",
           "SyncBatchNorm", "Work", "ZeroRedundancyOptimizer", "abort_on_error", "all_gather",
           "all_gather_into_tensor", "all_gather_object", "all_reduce", "all_to_all",
           "all_to_all_single", "barrier", "batch_isend_irecv", "broadcast",
           "broadcast_object_list", "check_same_model", "destroy_process_group", "gather",
           "gather_object", "get_backend", "get_global_rank", "get_group_rank",
           "get_process_group_ranks", "get_rank", "get_world", "get_world_size", "group",
           "init", "init_process_group", "irecv", "is_available", "is_gloo_available",
           "is_initialized", "is_mpi_available", "is_nccl_available",
           "is_torchelastic_launched", "isend", "launched_under_mpi", "monitored_barrier",
           "new_group", "optim", "rank", "recv", "reduce", "reduce_scatter",
           "reduce_scatter_tensor", "scatter", "scatter_object_list", "send", "world_size"]
