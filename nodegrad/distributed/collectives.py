"""torch.distributed's collective functions on tensors, over the world's communicator.

``all_reduce``, ``broadcast``, ``all_gather``, ``all_gather_into_tensor``, ``reduce_scatter``,
``reduce_scatter_tensor`` and ``barrier`` with PyTorch's arguments and meaning: they write into
the tensors they are given (in place, outside autograd) and, with ``async_op=True``, return a
:class:`~nodegrad.distributed.comm.Work` to ``wait()`` on (``all_reduce``, ``reduce`` and the
reduce-scatters progress in the background until then; the others have finished already).
``group`` is a communicator (default: the world of :func:`~nodegrad.distributed.comm.init`, or
one from :func:`new_group`); ``src`` and ``dst`` are world ranks (``group_src``/``group_dst``:
ranks within ``group``), as in PyTorch.
Every rank must call the same collectives in the same order with tensors of the same shape and
dtype; a rank outside ``group`` returns None at once. ``reduce``, ``gather``, ``scatter``,
``all_to_all`` and ``all_to_all_single`` complete the set; point-to-point messages and Python
objects live in :mod:`~nodegrad.distributed.p2p` and :mod:`~nodegrad.distributed.objects`.
"""

from __future__ import annotations

import datetime
import operator
from collections.abc import Sequence

from .. import _backend as B
from ..tensor import Tensor
from .comm import Communicator, DistributedError, Work, get_world


class ReduceOp:
    """PyTorch's reduction names (``dist.ReduceOp.SUM``); ``AVG`` needs a floating tensor,
    ``BAND``/``BOR``/``BXOR`` (bitwise and, or, xor) an integer or bool one."""

    SUM = "sum"
    AVG = "mean"
    MAX = "max"
    MIN = "min"
    PRODUCT = "prod"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


_OP_NAMES = {"sum": "sum", "avg": "mean", "mean": "mean", "max": "max", "min": "min",
             "prod": "prod", "product": "prod", "band": "band", "bor": "bor", "bxor": "bxor"}
_BITWISE = {"band": "bitwise_and", "bor": "bitwise_or", "bxor": "bitwise_xor"}


def _op(op, fn: str) -> str:
    name = _OP_NAMES.get(str(op).lower()) if isinstance(op, str) else None
    if name is None:
        raise ValueError(f"{fn}: op must be a ReduceOp (SUM, AVG, MAX, MIN, PRODUCT, BAND, BOR, "
                         f"BXOR), got {op!r}")
    return name


class _Gathered(Work):
    """A product or bitwise reduction, which the communicators do not reduce: every rank's
    values gathered and combined in rank order (a product of bools is a logical and)."""

    def __init__(self, g: Communicator, a, name: str):
        every = g.allgather(a)
        xp = B.backend_of(a).xp
        if name == "prod":
            a[...] = xp.all(every, axis=0) if a.dtype == bool else xp.prod(every, axis=0,
                                                                              dtype=a.dtype)
        else:
            f, out = getattr(xp, _BITWISE[name]), every[0].copy()
            for row in every[1:]:
                f(out, row, out=out)
            a[...] = out
        super().__init__(g)


def _reduce(g: Communicator, a, op, fn: str) -> Work:
    name = _op(op, fn)
    if name in _BITWISE and a.dtype.kind not in "biu":
        raise TypeError(f"{fn}: ReduceOp.{name.upper()} needs an integer or bool tensor, got "
                        f"{a.dtype}")
    return _Gathered(g, a, name) if name == "prod" or name in _BITWISE else g.iallreduce(a, name)


class _NonMember:
    """What :func:`new_group` returns on a rank outside the group (PyTorch's
    ``GroupMember.NON_GROUP_MEMBER``): collectives on it return None at once."""

    def __repr__(self) -> str:
        return "NON_GROUP_MEMBER"


class GroupMember:
    """PyTorch's group markers: ``WORLD`` (None, the default group) and ``NON_GROUP_MEMBER``."""

    WORLD = None
    NON_GROUP_MEMBER = _NonMember()


class group:  # noqa: N801 - PyTorch's name (dist.group.WORLD)
    """``dist.group.WORLD``: the default group (None, as ``group=None``)."""

    WORLD = None


def _group(group) -> Communicator | None:
    """The communicator of ``group`` (None: the world); None on a rank outside it."""
    if group is None:
        return get_world()
    if isinstance(group, _NonMember):
        return None
    if not isinstance(group, Communicator):
        raise TypeError(f"group must be None or a group from new_group, got "
                        f"{type(group).__name__}")
    return group


def _seconds(timeout, fn: str) -> float | None:
    """A timeout given as PyTorch's ``timedelta`` or as seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{fn}: timeout must be a positive timedelta or number of seconds, got "
                         f"{timeout!r}")
    return float(timeout)


def _group_rank(g: Communicator, rank, group_rank, fn: str, what: str,
                default: int | None = 0) -> int:
    """The rank within ``g`` that a world rank ``rank`` or a ``group_rank`` names (PyTorch's
    ``src``/``group_src``, ``dst``/``group_dst``)."""
    if rank is not None and group_rank is not None:
        raise ValueError(f"{fn}: give {what} or group_{what}, not both")
    if group_rank is None:
        r = default if rank is None else rank
        if r is None:
            raise ValueError(f"{fn}: {what} (or group_{what}) is required")
        r = operator.index(r)
        if g.global_ranks is not None:
            if r not in g.global_ranks:
                raise ValueError(f"{fn}: {what}={r} is not a rank of the group (its world "
                                 f"ranks are {g.global_ranks})")
            return g.global_ranks.index(r)
        group_rank = r
    group_rank = operator.index(group_rank)
    if not 0 <= group_rank < g.world_size:
        raise ValueError(f"{fn}: {what} must be a rank in [0, {g.world_size}), got {group_rank}")
    return group_rank


def _world_rank(g: Communicator, group_rank: int) -> int:
    return group_rank if g.global_ranks is None else g.global_ranks[group_rank]


def get_global_rank(group: Communicator | None, group_rank: int) -> int:
    """The world rank of ``group_rank`` in ``group`` (torch.distributed.get_global_rank)."""
    g = _group(group)
    if g is None:
        raise ValueError("get_global_rank: this rank is not a member of the group")
    return _world_rank(g, _group_rank(g, None, group_rank, "get_global_rank", "group_rank"))


def get_group_rank(group: Communicator | None, global_rank: int) -> int:
    """The rank within ``group`` of world rank ``global_rank`` (torch.distributed's)."""
    g = _group(group)
    if g is None:
        raise ValueError("get_group_rank: this rank is not a member of the group")
    return _group_rank(g, global_rank, None, "get_group_rank", "global_rank")


def get_process_group_ranks(group: Communicator | None) -> list[int]:
    """The world ranks of ``group``'s members, in group-rank order."""
    g = _group(group)
    if g is None:
        raise ValueError("get_process_group_ranks: this rank is not a member of the group")
    return list(range(g.world_size)) if g.global_ranks is None else list(g.global_ranks)


def _array(t, fn: str, what: str = "tensor"):
    """The array a collective writes into: a tensor's own, contiguous, outside autograd."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {what} must be a nodegrad Tensor, got {type(t).__name__}")
    a = t._data
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {what} must be contiguous (call .contiguous() first), got "
                         f"strides {t.stride()} for shape {tuple(t.shape)}")
    return a


class _Then(Work):
    """A collective in flight whose ``wait()`` also writes its result where it belongs."""

    def __init__(self, inner: Work, finish):
        self._inner, self._then, self.done = inner, finish, False

    def test(self) -> bool:
        return self._inner.test()

    @property
    def source(self) -> int | None:
        return self._inner.source

    def wait(self, timeout=None) -> bool:
        self._inner.wait()
        if not self.done:
            self.done = True
            if self._then is not None:
                self._then()
        return True


def _done(work: Work | None, async_op: bool, finish=None) -> Work | None:
    """Finish now (returning None) or hand back a Work whose ``wait()`` finishes."""
    w = _Then(work if work is not None else Work(None), finish)
    if async_op:
        return w
    w.wait()
    return None


def get_rank(group: Communicator | None = None) -> int:
    """This process's rank in ``group`` (torch.distributed.get_rank; -1 outside it)."""
    g = _group(group)
    return -1 if g is None else g.rank


def get_world_size(group: Communicator | None = None) -> int:
    """The number of ranks in ``group`` (torch.distributed.get_world_size; -1 outside it)."""
    g = _group(group)
    return -1 if g is None else g.world_size


def all_reduce(tensor: Tensor, op=ReduceOp.SUM, group: Communicator | None = None,
               async_op: bool = False) -> Work | None:
    """Reduce ``tensor`` over the ranks in place: every rank ends with the result."""
    g = _group(group)
    if g is None:
        return None
    a = _array(tensor, "all_reduce")
    w = _reduce(g, a, op, "all_reduce")
    return _done(w, async_op, tensor._bump)


def broadcast(tensor: Tensor, src: int | None = None, group: Communicator | None = None,
              async_op: bool = False, group_src: int | None = None) -> Work | None:
    """Overwrite ``tensor`` in place with rank ``src``'s values."""
    g = _group(group)
    if g is None:
        return None
    root = _group_rank(g, src, group_src, "broadcast", "src")
    g.broadcast(_array(tensor, "broadcast"), root)
    return _done(None, async_op, tensor._bump)


def reduce(tensor: Tensor, dst: int | None = None, op=ReduceOp.SUM,
           group: Communicator | None = None, async_op: bool = False,
           group_dst: int | None = None) -> Work | None:
    """Reduce ``tensor`` over the ranks into rank ``dst``'s ``tensor``; the other ranks'
    tensors are left as they were."""
    g = _group(group)
    if g is None:
        return None
    root = _group_rank(g, dst, group_dst, "reduce", "dst")
    buf = _array(tensor, "reduce").copy()
    w = _reduce(g, buf, op, "reduce")

    def finish():
        if g.rank == root:
            tensor._data[...] = buf
            tensor._bump()
    return _done(w, async_op, finish)


def _check_list(fn: str, what: str, ts, n: int, like: Tensor) -> None:
    if not isinstance(ts, (list, tuple)) or len(ts) != n:
        got = len(ts) if isinstance(ts, (list, tuple)) else type(ts).__name__
        raise ValueError(f"{fn}: {what} must be a list of {n} tensors (one per rank), got {got}")
    for i, t in enumerate(ts):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {what}[{i}] must be a nodegrad Tensor, got "
                            f"{type(t).__name__}")
        _check_out(fn, t, like.shape, like.dtype, f"{what}[{i}]")


def gather(tensor: Tensor, gather_list: list | None = None, dst: int | None = None,
           group: Communicator | None = None, async_op: bool = False,
           group_dst: int | None = None) -> Work | None:
    """Write rank r's ``tensor`` into ``gather_list[r]`` on rank ``dst`` (the other ranks pass
    no list)."""
    g = _group(group)
    if g is None:
        return None
    root = _group_rank(g, dst, group_dst, "gather", "dst")
    a = _array(tensor, "gather")
    if g.rank == root:
        _check_list("gather", "gather_list", gather_list, g.world_size, tensor)
    elif gather_list:
        raise ValueError("gather: gather_list must not be given on a rank other than dst "
                         f"(rank {g.rank} of the group got {len(gather_list)} tensors)")
    every = g.gather(a, root)
    if g.rank == root:
        for t, row in zip(gather_list, every):
            t._data[...] = row
            t._bump()
    return _done(None, async_op)


def scatter(tensor: Tensor, scatter_list: list | None = None, src: int | None = None,
            group: Communicator | None = None, async_op: bool = False,
            group_src: int | None = None) -> Work | None:
    """Write ``scatter_list[r]`` of rank ``src`` into rank r's ``tensor`` (the other ranks
    pass no list)."""
    g = _group(group)
    if g is None:
        return None
    root = _group_rank(g, src, group_src, "scatter", "src")
    a = _array(tensor, "scatter")
    stacked = None
    if g.rank == root:
        _check_list("scatter", "scatter_list", scatter_list, g.world_size, tensor)
        stacked = B.backend_of(a).xp.stack([t._data for t in scatter_list])
    elif scatter_list:
        raise ValueError("scatter: scatter_list must not be given on a rank other than src "
                         f"(rank {g.rank} of the group got {len(scatter_list)} tensors)")
    g.scatter(stacked, a, root)
    return _done(None, async_op, tensor._bump)


def _exchange(g: Communicator, fn: str, send, send_counts: list[int], recv,
              recv_counts: list[int]) -> None:
    """An all-to-all of element counts, checked first: what each rank sends to each must be
    what that rank expects (a clear error instead of MPI's truncation or a short read)."""
    every = g.allgather(B.np.asarray(send_counts + recv_counts, B.np.int64))
    n = g.world_size
    sends, recvs = every[:, :n], every[:, n:]
    bad = [(i, j) for i in range(n) for j in range(n) if sends[i, j] != recvs[j, i]]
    if bad:
        i, j = bad[0]
        raise DistributedError(f"{fn}: rank {i} sends {sends[i, j]} values to rank {j}, which "
                               f"expects {recvs[j, i]} from it (group ranks)")
    g.alltoallv(send, send_counts, recv, recv_counts)


def all_to_all(output_tensor_list: list, input_tensor_list: list,
               group: Communicator | None = None, async_op: bool = False) -> Work | None:
    """Send ``input_tensor_list[r]`` to rank r and receive rank r's into
    ``output_tensor_list[r]`` (sizes may differ per pair; one dtype)."""
    g = _group(group)
    if g is None:
        return None
    fn, n = "all_to_all", g.world_size
    for what, ts in (("output_tensor_list", output_tensor_list),
                     ("input_tensor_list", input_tensor_list)):
        if not isinstance(ts, (list, tuple)) or len(ts) != n:
            got = len(ts) if isinstance(ts, (list, tuple)) else type(ts).__name__
            raise ValueError(f"{fn}: {what} must be a list of {n} tensors (one per rank), got "
                             f"{got}")
    ins = [_array(t, fn, f"input_tensor_list[{i}]") for i, t in enumerate(input_tensor_list)]
    outs = [_array(t, fn, f"output_tensor_list[{i}]") for i, t in enumerate(output_tensor_list)]
    dtypes = {str(a.dtype) for a in ins + outs}
    if len(dtypes) != 1:
        raise TypeError(f"{fn}: every tensor must have one dtype, got {sorted(dtypes)}")
    xp = B.backend_of(ins[0]).xp
    send = xp.concatenate([a.reshape(-1) for a in ins])
    recv = xp.empty(sum(a.size for a in outs), outs[0].dtype)
    _exchange(g, fn, send, [a.size for a in ins], recv, [a.size for a in outs])
    o = 0
    for t, a in zip(output_tensor_list, outs):
        a[...] = recv[o:o + a.size].reshape(a.shape)
        o += a.size
        t._bump()
    return _done(None, async_op)


def _splits(fn: str, what: str, sizes, t: Tensor, n: int) -> list[int]:
    rows = t.shape[0] if t.ndim else 1
    if sizes is None or len(sizes) == 0:
        if rows % n:
            raise ValueError(f"{fn}: {what}'s dim 0 ({rows}) must divide by the world size "
                             f"{n} when no split sizes are given")
        return [rows // n] * n
    sizes = [operator.index(k) for k in sizes]
    if len(sizes) != n or sum(sizes) != rows or min(sizes) < 0:
        raise ValueError(f"{fn}: {what} split sizes must be {n} non-negative numbers adding up "
                         f"to its dim 0 ({rows}), got {sizes}")
    return sizes


def all_to_all_single(output: Tensor, input: Tensor, output_split_sizes: list | None = None,
                      input_split_sizes: list | None = None,
                      group: Communicator | None = None,
                      async_op: bool = False) -> Work | None:
    """Split ``input`` along dim 0 (``input_split_sizes`` rows per rank, else equally), send
    block r to rank r, and write the blocks received into ``output`` in rank order."""
    g = _group(group)
    if g is None:
        return None
    fn, n = "all_to_all_single", g.world_size
    a, o = _array(input, fn, "input"), _array(output, fn, "output")
    if a.dtype != o.dtype:
        raise TypeError(f"{fn}: output and input must have one dtype, got {o.dtype} and "
                        f"{a.dtype}")
    if tuple(a.shape[1:]) != tuple(o.shape[1:]):
        raise ValueError(f"{fn}: output and input must agree beyond dim 0, got shapes "
                         f"{tuple(o.shape)} and {tuple(a.shape)}")
    row = 1
    for k in a.shape[1:]:
        row *= k
    ins = _splits(fn, "input", input_split_sizes, input, n)
    outs = _splits(fn, "output", output_split_sizes, output, n)
    _exchange(g, fn, a, [k * row for k in ins], o, [k * row for k in outs])
    output._bump()
    return _done(None, async_op)


def _check_out(fn: str, out: Tensor, shape: tuple, dtype, what: str) -> None:
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"{fn}: {what} must have shape {tuple(shape)} and dtype {dtype}, got "
                         f"{tuple(out.shape)} and {out.dtype}")


def all_gather(tensor_list: list, tensor: Tensor, group: Communicator | None = None,
               async_op: bool = False) -> Work | None:
    """Write rank r's ``tensor`` into ``tensor_list[r]`` (one tensor of its shape and dtype
    per rank), on every rank."""
    g = _group(group)
    if g is None:
        return None
    a = _array(tensor, "all_gather")
    if not isinstance(tensor_list, list) or len(tensor_list) != g.world_size:
        n = len(tensor_list) if isinstance(tensor_list, list) else type(tensor_list).__name__
        raise ValueError(f"all_gather: tensor_list must be a list of {g.world_size} tensors "
                         f"(one per rank), got {n}")
    for i, t in enumerate(tensor_list):
        _check_out("all_gather", t, tensor.shape, tensor.dtype, f"tensor_list[{i}]")
    every = g.allgather(a)
    for t, row in zip(tensor_list, every):
        t._data[...] = row
        t._bump()
    return _done(None, async_op)


def all_gather_into_tensor(output_tensor: Tensor, input_tensor: Tensor,
                           group: Communicator | None = None,
                           async_op: bool = False) -> Work | None:
    """Every rank's ``input_tensor`` concatenated along dim 0 (or stacked, for an output of
    shape ``(world_size, *input.shape)``) into ``output_tensor``."""
    g = _group(group)
    if g is None:
        return None
    a = _array(input_tensor, "all_gather_into_tensor", "input_tensor")
    n, shp = g.world_size, tuple(input_tensor.shape)
    cat = ((n * shp[0],) + shp[1:]) if shp else (n,)
    if tuple(output_tensor.shape) not in (cat, (n,) + shp):
        raise ValueError(f"all_gather_into_tensor: output_tensor must have shape {cat} (or "
                         f"{(n,) + shp}) for {n} ranks' {shp}, got {tuple(output_tensor.shape)}")
    _check_out("all_gather_into_tensor", output_tensor, output_tensor.shape,
               input_tensor.dtype, "output_tensor")
    output_tensor._data[...] = g.allgather(a).reshape(output_tensor.shape)
    output_tensor._bump()
    return _done(None, async_op)


def reduce_scatter_tensor(output: Tensor, input: Tensor, op=ReduceOp.SUM,
                          group: Communicator | None = None,
                          async_op: bool = False) -> Work | None:
    """Reduce ``input`` (dim 0 of size ``world_size * output.shape[0]``) over the ranks and
    write rank r's block of the result into ``output``."""
    g = _group(group)
    if g is None:
        return None
    a = _array(input, "reduce_scatter_tensor", "input")
    n = g.world_size
    shp = tuple(output.shape)
    want = ((n * shp[0],) + shp[1:]) if shp else (n,)
    if tuple(input.shape) not in (want, (n,) + shp):
        raise ValueError(f"reduce_scatter_tensor: input must have shape {want} for {n} ranks "
                         f"and an output of shape {shp}, got {tuple(input.shape)}")
    _check_out("reduce_scatter_tensor", output, shp, input.dtype, "output")
    buf = a.copy()
    w = _reduce(g, buf, op, "reduce_scatter_tensor")

    def finish():
        output._data[...] = buf.reshape((n,) + shp)[g.rank]
        output._bump()
    return _done(w, async_op, finish)


def reduce_scatter(output: Tensor, input_list: Sequence[Tensor], op=ReduceOp.SUM,
                   group: Communicator | None = None, async_op: bool = False) -> Work | None:
    """Reduce ``input_list[r]`` over the ranks into ``output`` on rank r (one input of
    ``output``'s shape and dtype per rank)."""
    g = _group(group)
    if g is None:
        return None
    _array(output, "reduce_scatter", "output")
    if len(input_list) != g.world_size:
        raise ValueError(f"reduce_scatter: input_list must hold {g.world_size} tensors (one per "
                         f"rank), got {len(input_list)}")
    for i, t in enumerate(input_list):
        _check_out("reduce_scatter", t, output.shape, output.dtype, f"input_list[{i}]")
    xp = B.backend_of(output._data).xp
    buf = xp.stack([t._data for t in input_list])
    w = _reduce(g, buf, op, "reduce_scatter")

    def finish():
        output._data[...] = buf[g.rank]
        output._bump()
    return _done(w, async_op, finish)


def barrier(group: Communicator | None = None, async_op: bool = False,
            device_ids=None) -> Work | None:
    """Return once every rank has called it."""
    g = _group(group)
    if g is None:
        return None
    g.barrier()
    return _done(None, async_op)


def monitored_barrier(group: Communicator | None = None, timeout=None,
                      wait_all_ranks: bool = False) -> None:
    """A barrier that names the ranks that do not arrive: rank 0 waits ``timeout`` (a
    ``timedelta`` or seconds; default the group's) for the others, then raises
    :class:`DistributedError` naming the first missing rank (every missing rank with
    ``wait_all_ranks=True``); the ranks that did arrive raise it too."""
    g = _group(group)
    if g is None:
        return None
    t = _seconds(timeout, "monitored_barrier")
    g.monitored_barrier(g.timeout if t is None else t, bool(wait_all_ranks))
    return None
