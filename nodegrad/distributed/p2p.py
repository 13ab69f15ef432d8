"""Point-to-point messages between ranks: torch.distributed's ``send``, ``recv``, ``isend``,
``irecv``, ``P2POp`` and ``batch_isend_irecv``.

Tensors move as raw bytes over the communicator (MPI; device tensors through host copies), so
sender and receiver must agree on size and dtype: a receive of another size is an error naming
both. ``dst``/``src`` are world ranks (``group_dst``/``group_src``: ranks within ``group``);
messages between the same pair under the same ``tag`` arrive in the order they were sent.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from ..tensor import Tensor
from .collectives import _array, _group, _group_rank, _Then, _world_rank
from .comm import Communicator, Work


def _peer(g: Communicator, rank, group_rank, fn: str, what: str) -> int:
    r = _group_rank(g, rank, group_rank, fn, what, default=None)
    if r == g.rank:
        raise ValueError(f"{fn}: {what} must be another rank, got this rank's own ({r} in the "
                         "group)")
    return r


def _tag(g: Communicator, tag, fn: str) -> int:
    tag = operator.index(tag)
    ub = getattr(g, "tag_ub", 2**31 - 1)
    if not 0 <= tag <= ub:
        raise ValueError(f"{fn}: tag must be in [0, {ub}], got {tag}")
    return tag


def isend(tensor: Tensor, dst: int | None = None, group: Communicator | None = None,
          tag: int = 0, group_dst: int | None = None) -> Work | None:
    """Start sending ``tensor`` to rank ``dst``; ``wait()`` on the Work before changing it."""
    g = _group(group)
    if g is None:
        return None
    peer = _peer(g, dst, group_dst, "isend", "dst")
    return g.isend(_array(tensor, "isend"), peer, _tag(g, tag, "isend"))


def irecv(tensor: Tensor, src: int | None = None, group: Communicator | None = None,
          tag: int = 0, group_src: int | None = None) -> Work | None:
    """Start receiving into ``tensor`` from rank ``src`` (None: from any rank); the values are
    there once ``wait()`` returns."""
    g = _group(group)
    if g is None:
        return None
    peer = None if src is None and group_src is None else _peer(g, src, group_src, "irecv", "src")
    w = g.irecv(_array(tensor, "irecv"), peer, _tag(g, tag, "irecv"))
    return _Then(w, tensor._bump)


def send(tensor: Tensor, dst: int | None = None, group: Communicator | None = None,
         tag: int = 0, group_dst: int | None = None) -> None:
    """Send ``tensor`` to rank ``dst`` and return once it has been sent."""
    w = isend(tensor, dst, group, tag, group_dst)
    if w is not None:
        w.wait()


def recv(tensor: Tensor, src: int | None = None, group: Communicator | None = None,
         tag: int = 0, group_src: int | None = None) -> int:
    """Receive into ``tensor`` from rank ``src`` (None: any rank); returns the sender's world
    rank (-1 on a rank outside ``group``)."""
    w = irecv(tensor, src, group, tag, group_src)
    if w is None:
        return -1
    w.wait()
    return _world_rank(_group(group), w.source)


class P2POp:
    """One message of :func:`batch_isend_irecv`: ``op`` is :func:`isend` or :func:`irecv`."""

    def __init__(self, op: Callable, tensor: Tensor, peer: int | None = None,
                 group: Communicator | None = None, tag: int = 0,
                 group_peer: int | None = None):
        if op not in (isend, irecv):
            raise ValueError(f"P2POp: op must be isend or irecv (of nodegrad.distributed), got "
                             f"{op!r}")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"P2POp: tensor must be a nodegrad Tensor, got "
                            f"{type(tensor).__name__}")
        self.op, self.tensor, self.peer, self.group, self.tag = op, tensor, peer, group, tag
        self.group_peer = group_peer

    def __repr__(self) -> str:
        return f"P2POp({self.op.__name__}, peer={self.peer}, tag={self.tag})"


def batch_isend_irecv(p2p_op_list: list[P2POp]) -> list[Work]:
    """Start every send and receive of ``p2p_op_list`` at once (so a ring exchange cannot
    deadlock); returns their Works to wait on."""
    if not isinstance(p2p_op_list, (list, tuple)) or not all(
            isinstance(p, P2POp) for p in p2p_op_list):
        raise TypeError("batch_isend_irecv: expected a list of P2POp")
    if not p2p_op_list:
        raise ValueError("batch_isend_irecv: the list of operations is empty")
    works = []
    for p in p2p_op_list:
        w = p.op(p.tensor, p.peer, p.group, p.tag, p.group_peer)
        if w is not None:
            works.append(w)
    return works
