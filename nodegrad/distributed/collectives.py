"""torch.distributed's collective functions on tensors, over the world's communicator.

``all_reduce``, ``broadcast``, ``all_gather``, ``all_gather_into_tensor``, ``reduce_scatter``,
``reduce_scatter_tensor`` and ``barrier`` with PyTorch's arguments and meaning: they write into
the tensors they are given (in place, outside autograd) and, with ``async_op=True``, return a
:class:`~nodegrad.distributed.comm.Work` to ``wait()`` on. ``group`` is a communicator (default:
the world of :func:`~nodegrad.distributed.comm.init`); every rank must call the same
collectives in the same order with tensors of the same shape and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _backend as B
from ..tensor import Tensor
from .comm import Communicator, Work, get_world


class ReduceOp:
    """PyTorch's reduction names (``dist.ReduceOp.SUM``); ``AVG`` needs a floating tensor."""

    SUM = "sum"
    AVG = "mean"
    MAX = "max"
    MIN = "min"
    PRODUCT = "prod"


_OP_NAMES = {"sum": "sum", "avg": "mean", "mean": "mean", "max": "max", "min": "min",
             "prod": "prod", "product": "prod"}


def _op(op, fn: str) -> str:
    name = _OP_NAMES.get(str(op).lower()) if isinstance(op, str) else None
    if name is None:
        raise ValueError(f"{fn}: op must be a ReduceOp (SUM, AVG, MAX, MIN, PRODUCT), "
                         f"got {op!r}")
    return name


class _Product(Work):
    """A product over the ranks, which the communicators do not reduce: every rank's values
    gathered, multiplied in rank order (a logical and for bools)."""

    def __init__(self, g: Communicator, a):
        every = g.allgather(a)
        xp = B.backend_of(a).xp
        a[...] = xp.all(every, axis=0) if a.dtype == bool else xp.prod(every, axis=0,
                                                                          dtype=a.dtype)
        super().__init__(g)


def _reduce(g: Communicator, a, op, fn: str) -> Work:
    name = _op(op, fn)
    return _Product(g, a) if name == "prod" else g.iallreduce(a, name)


def _group(group) -> Communicator:
    return get_world() if group is None else group


def _array(t, fn: str, what: str = "tensor"):
    """The array a collective writes into: a tensor's own, contiguous, outside autograd."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {what} must be a nodegrad Tensor, got {type(t).__name__}")
    a = t.data
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

    def wait(self):
        self._inner.wait()
        if not self.done:
            self.done = True
            if self._then is not None:
                self._then()


def _done(work: Work | None, async_op: bool, finish=None) -> Work | None:
    """Finish now (returning None) or hand back a Work whose ``wait()`` finishes."""
    w = _Then(work if work is not None else Work(None), finish)
    if async_op:
        return w
    w.wait()
    return None


def get_rank(group: Communicator | None = None) -> int:
    """This process's rank in ``group`` (torch.distributed.get_rank)."""
    return _group(group).rank


def get_world_size(group: Communicator | None = None) -> int:
    """The number of ranks in ``group`` (torch.distributed.get_world_size)."""
    return _group(group).world_size


def all_reduce(tensor: Tensor, op=ReduceOp.SUM, group: Communicator | None = None,
               async_op: bool = False) -> Work | None:
    """Reduce ``tensor`` over the ranks in place: every rank ends with the result."""
    a = _array(tensor, "all_reduce")
    w = _reduce(_group(group), a, op, "all_reduce")
    return _done(w, async_op, tensor._bump)


def broadcast(tensor: Tensor, src: int = 0, group: Communicator | None = None,
              async_op: bool = False) -> Work | None:
    """Overwrite ``tensor`` in place with rank ``src``'s values."""
    g = _group(group)
    if not 0 <= src < g.world_size:
        raise ValueError(f"broadcast: src must be a rank in [0, {g.world_size}), got {src}")
    g.broadcast(_array(tensor, "broadcast"), src)
    return _done(None, async_op, tensor._bump)


def _check_out(fn: str, out: Tensor, shape: tuple, dtype, what: str) -> None:
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"{fn}: {what} must have shape {tuple(shape)} and dtype {dtype}, got "
                         f"{tuple(out.shape)} and {out.dtype}")


def all_gather(tensor_list: list, tensor: Tensor, group: Communicator | None = None,
               async_op: bool = False) -> Work | None:
    """Write rank r's ``tensor`` into ``tensor_list[r]`` (one tensor of its shape and dtype
    per rank), on every rank."""
    g = _group(group)
    a = _array(tensor, "all_gather")
    if not isinstance(tensor_list, list) or len(tensor_list) != g.world_size:
        n = len(tensor_list) if isinstance(tensor_list, list) else type(tensor_list).__name__
        raise ValueError(f"all_gather: tensor_list must be a list of {g.world_size} tensors "
                         f"(one per rank), got {n}")
    for i, t in enumerate(tensor_list):
        _check_out("all_gather", t, tensor.shape, tensor.dtype, f"tensor_list[{i}]")
    every = g.allgather(a)
    for t, row in zip(tensor_list, every):
        t.data[...] = row
        t._bump()
    return _done(None, async_op)


def all_gather_into_tensor(output_tensor: Tensor, input_tensor: Tensor,
                           group: Communicator | None = None,
                           async_op: bool = False) -> Work | None:
    """Every rank's ``input_tensor`` concatenated along dim 0 (or stacked, for an output of
    shape ``(world_size, *input.shape)``) into ``output_tensor``."""
    g = _group(group)
    a = _array(input_tensor, "all_gather_into_tensor", "input_tensor")
    n, shp = g.world_size, tuple(input_tensor.shape)
    cat = ((n * shp[0],) + shp[1:]) if shp else (n,)
    if tuple(output_tensor.shape) not in (cat, (n,) + shp):
        raise ValueError(f"all_gather_into_tensor: output_tensor must have shape {cat} (or "
                         f"{(n,) + shp}) for {n} ranks' {shp}, got {tuple(output_tensor.shape)}")
    _check_out("all_gather_into_tensor", output_tensor, output_tensor.shape,
               input_tensor.dtype, "output_tensor")
    output_tensor.data[...] = g.allgather(a).reshape(output_tensor.shape)
    output_tensor._bump()
    return _done(None, async_op)


def reduce_scatter_tensor(output: Tensor, input: Tensor, op=ReduceOp.SUM,
                          group: Communicator | None = None,
                          async_op: bool = False) -> Work | None:
    """Reduce ``input`` (dim 0 of size ``world_size * output.shape[0]``) over the ranks and
    write rank r's block of the result into ``output``."""
    g = _group(group)
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
        output.data[...] = buf.reshape((n,) + shp)[g.rank]
        output._bump()
    return _done(w, async_op, finish)


def reduce_scatter(output: Tensor, input_list: Sequence[Tensor], op=ReduceOp.SUM,
                   group: Communicator | None = None, async_op: bool = False) -> Work | None:
    """Reduce ``input_list[r]`` over the ranks into ``output`` on rank r (one input of
    ``output``'s shape and dtype per rank)."""
    g = _group(group)
    _array(output, "reduce_scatter", "output")
    if len(input_list) != g.world_size:
        raise ValueError(f"reduce_scatter: input_list must hold {g.world_size} tensors (one per "
                         f"rank), got {len(input_list)}")
    for i, t in enumerate(input_list):
        _check_out("reduce_scatter", t, output.shape, output.dtype, f"input_list[{i}]")
    xp = B.backend_of(output.data).xp
    buf = xp.stack([t.data for t in input_list])
    w = _reduce(g, buf, op, "reduce_scatter")

    def finish():
        output.data[...] = buf[g.rank]
        output._bump()
    return _done(w, async_op, finish)


def barrier(group: Communicator | None = None, async_op: bool = False) -> Work | None:
    """Return once every rank has called it."""
    _group(group).barrier()
    return _done(None, async_op)
