"""Collectives between GPUs over NCCL (through CuPy), set up over MPI.

Rank 0 draws NCCL's unique id and broadcasts it over the MPI communicator; every rank then
joins the NCCL communicator. Gradients stay on the device. Small metadata still goes over MPI.
"""

from __future__ import annotations

from typing import Any

from .. import _backend as B
from .comm import Communicator, Work, _check_op, get_world


class NCCLCommunicator(Communicator):
    """Allreduce and broadcast of CuPy arrays over NCCL; ``host`` (an MPI or one-process
    communicator) carries the unique id, the metadata and barriers. One GPU per rank."""

    def __init__(self, host: Communicator | None = None):
        self.host = host if host is not None else get_world()
        self.rank, self.world_size = self.host.rank, self.host.world_size
        self.timeout = self.host.timeout
        self.backend = "nccl"
        uid = self.host.broadcast_json(B.nccl_unique_id() if self.rank == 0 else None)
        self.nccl = B.NcclComm(self.world_size, uid, self.rank)

    def __repr__(self) -> str:
        return f"NCCLCommunicator(rank={self.rank}, world_size={self.world_size})"

    def iallreduce(self, a, op: str = "sum") -> Work:
        _check_op(op, a)
        self.nccl.allreduce(a, "sum" if op == "mean" else op)  # queued on the stream
        n = self.world_size

        def finish():
            if op == "mean":
                a[...] /= n
        return Work(self, finish)

    def broadcast(self, a, root: int = 0):
        self.nccl.broadcast(a, root)
        return a

    def allgather(self, a):
        return B.backend_of(a).asarray(self.host.allgather(B.backend_of(a).to_host(a)))

    def allgather_json(self, obj: Any) -> list:
        return self.host.allgather_json(obj)

    def broadcast_json(self, obj: Any, root: int = 0) -> Any:
        return self.host.broadcast_json(obj, root)

    def barrier(self) -> None:
        self.nccl.synchronize()
        self.host.barrier()

    # what NCCL does not carry here goes over the host communicator (device arrays are copied)
    def isend(self, a, dst: int, tag: int = 0) -> Work:
        self.nccl.synchronize()
        return self.host.isend(a, dst, tag)

    def irecv(self, a, src: int | None = None, tag: int = 0) -> Work:
        self.nccl.synchronize()
        return self.host.irecv(a, src, tag)

    def gather(self, a, root: int = 0):
        self.nccl.synchronize()
        return self.host.gather(a, root)

    def scatter(self, stacked, out, root: int = 0):
        self.nccl.synchronize()
        return self.host.scatter(stacked, out, root)

    def alltoallv(self, send, send_counts: list[int], recv, recv_counts: list[int]):
        self.nccl.synchronize()
        return self.host.alltoallv(send, send_counts, recv, recv_counts)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return self.host.allgather_bytes(data)

    def split(self, ranks: list[int], sync: bool = True) -> Communicator | None:
        """A sub-group over the host communicator (its collectives copy device arrays)."""
        return self.host.split(ranks, sync)

    def monitored_barrier(self, timeout: float, wait_all_ranks: bool = False) -> None:
        self.nccl.synchronize()
        self.host.monitored_barrier(timeout, wait_all_ranks)

    def abort(self, code: int = 1) -> None:
        self.host.abort(code)
