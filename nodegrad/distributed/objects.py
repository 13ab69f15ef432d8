"""Collectives on picklable Python objects: torch.distributed's ``broadcast_object_list``,
``all_gather_object``, ``gather_object`` and ``scatter_object_list``.

Objects travel as pickles between the processes of this one job only: a pickle can run any code
when it is loaded, so these functions trust every rank of the job, as PyTorch's do. Never feed
them (or ``pickle``) data that came from outside the job; use tensors for data.
"""

from __future__ import annotations

import pickle
from typing import Any

from .. import _backend as B
from .collectives import _group, _group_rank
from .comm import Communicator


def _dumps(obj: Any, fn: str) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise TypeError(f"{fn}: the object cannot be pickled ({type(e).__name__}: {e})") from e


def _check_len(fn: str, what: str, lst, n: int, exact: bool = True) -> None:
    if not isinstance(lst, list) or (len(lst) != n if exact else len(lst) < n):
        got = len(lst) if isinstance(lst, list) else type(lst).__name__
        need = f"{n}" if exact else f"at least {n}"
        raise ValueError(f"{fn}: {what} must be a list of {need} element(s), got {got}")


def broadcast_object_list(object_list: list, src: int | None = None,
                          group: Communicator | None = None, device=None,
                          group_src: int | None = None) -> None:
    """Replace the elements of ``object_list`` with rank ``src``'s (every rank passes a list of
    the same length)."""
    g = _group(group)
    if g is None:
        return
    fn = "broadcast_object_list"
    root = _group_rank(g, src, group_src, fn, "src")
    if not isinstance(object_list, list):
        raise TypeError(f"{fn}: object_list must be a list, got {type(object_list).__name__}")
    data = g.allgather_bytes(_dumps(object_list, fn) if g.rank == root else b"")[root]
    if g.rank == root:
        return
    got = pickle.loads(data)  # noqa: S301 - a pickle from a rank of this job
    if len(got) != len(object_list):
        raise ValueError(f"{fn}: rank {root} sent {len(got)} object(s), this rank's list has "
                         f"{len(object_list)}")
    object_list[:] = got


def all_gather_object(object_list: list, obj: Any, group: Communicator | None = None) -> None:
    """Write rank r's ``obj`` into ``object_list[r]`` on every rank."""
    g = _group(group)
    if g is None:
        return
    _check_len("all_gather_object", "object_list", object_list, g.world_size)
    for i, b in enumerate(g.allgather_bytes(_dumps(obj, "all_gather_object"))):
        object_list[i] = pickle.loads(b)  # noqa: S301 - a pickle from a rank of this job


def gather_object(obj: Any, object_gather_list: list | None = None, dst: int | None = None,
                  group: Communicator | None = None, group_dst: int | None = None) -> None:
    """Write rank r's ``obj`` into ``object_gather_list[r]`` on rank ``dst`` (the other ranks
    pass no list)."""
    g = _group(group)
    if g is None:
        return
    fn = "gather_object"
    root = _group_rank(g, dst, group_dst, fn, "dst")
    if g.rank == root:
        _check_len(fn, "object_gather_list", object_gather_list, g.world_size)
    elif object_gather_list:
        raise ValueError(f"{fn}: object_gather_list must not be given on a rank other than dst")
    every = g.allgather_bytes(_dumps(obj, fn))
    if g.rank == root:
        for i, b in enumerate(every):
            object_gather_list[i] = pickle.loads(b)  # noqa: S301 - from a rank of this job


def scatter_object_list(scatter_object_output_list: list,
                        scatter_object_input_list: list | None = None, src: int | None = None,
                        group: Communicator | None = None,
                        group_src: int | None = None) -> None:
    """Write ``scatter_object_input_list[r]`` of rank ``src`` into rank r's
    ``scatter_object_output_list[0]``."""
    g = _group(group)
    if g is None:
        return
    fn, n = "scatter_object_list", g.world_size
    root = _group_rank(g, src, group_src, fn, "src")
    _check_len(fn, "scatter_object_output_list", scatter_object_output_list, 1, exact=False)
    np = B.np
    counts = np.zeros(n, np.int64)
    send = np.zeros(0, np.uint8)
    if g.rank == root:
        _check_len(fn, "scatter_object_input_list", scatter_object_input_list, n)
        parts = [_dumps(o, fn) for o in scatter_object_input_list]
        counts[:] = [len(p) for p in parts]
        send = np.frombuffer(b"".join(parts), np.uint8)
    g.broadcast(counts, root)
    recv = np.empty(int(counts[g.rank]), np.uint8)
    send_counts = counts.tolist() if g.rank == root else [0] * n
    recv_counts = [0] * n
    recv_counts[root] = int(counts[g.rank])
    g.alltoallv(send, send_counts, recv, recv_counts)
    scatter_object_output_list[0] = pickle.loads(recv.tobytes())  # noqa: S301 - this job's
