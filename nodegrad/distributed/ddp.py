"""DistributedDataParallel: the same model on every rank, gradients averaged over the ranks.

At construction the ranks compare their parameter names, shapes and dtypes (a clear error when
they differ) and take rank 0's parameters and buffers. In training, a gradient hook on every
parameter copies its gradient into a flat bucket as the backward pass produces it; a full bucket
starts its (nonblocking) allreduce at once, so communication overlaps the rest of backward.
When the last gradient has arrived every bucket is waited for, divided by the world size and
written back into ``.grad``. ``no_sync()`` skips all this for gradient accumulation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .. import _backend as B
from ..autodiff import is_grad_enabled
from ..nn.module import Module
from ..tensor import Tensor
from .comm import Communicator, DistributedError, get_world


class _Bucket:
    __slots__ = ("index", "params", "offsets", "flat", "pending", "work")

    def __init__(self, index: int, params: list, xp, dtype):
        self.index, self.params = index, params
        self.offsets, n = [], 0
        for p in params:
            self.offsets.append(n)
            n += p.data.size
        self.flat = xp.zeros(n, dtype=dtype)
        self.pending = len(params)
        self.work = None

    def view(self, i: int):
        p = self.params[i]
        o = self.offsets[i]
        return self.flat[o:o + p.data.size].reshape(p.shape)


def signature(module: Module) -> list:
    """Names, shapes and dtypes of the parameters and buffers (what every rank must agree on)."""
    ps = [[k, list(v.shape), str(v.dtype)] for k, v in module.named_parameters()]
    bs = [[k, list(v.shape), str(v.dtype)] for k, v in module.named_buffers()]
    return ps + [["buffer:" + k, s, d] for k, s, d in bs]


def check_same_model(module: Module, comm: Communicator) -> None:
    """Raise :class:`DistributedError` on every rank when the ranks' models differ."""
    sigs = comm.allgather_json(signature(module))
    for r, s in enumerate(sigs):
        if s != sigs[0]:
            a = {k: (sh, d) for k, sh, d in sigs[0]}
            b = {k: (sh, d) for k, sh, d in s}
            diff = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)][:3]
            what = "; ".join(f"{k}: {a.get(k, 'missing')} on rank 0, {b.get(k, 'missing')} on "
                             f"rank {r}" for k in diff)
            raise DistributedError(f"DistributedDataParallel: the model on rank {r} differs "
                                   f"from rank 0's ({what})")


class DistributedDataParallel(Module):
    """Wrap ``module`` so that ``loss.backward()`` leaves the gradient averaged over all ranks
    (PyTorch's name and behaviour; the state dict keys gain a ``module.`` prefix).

    Args:
        module: the model, the same architecture on every rank.
        comm: the communicator (default: the world from :func:`nodegrad.distributed.init`).
        bucket_cap_mb: size of a gradient bucket, one allreduce each.
        broadcast_buffers: take rank 0's buffers (batch norm statistics) at every training
            forward, as PyTorch does.
        overlap: start a bucket's allreduce as soon as it is full (True) or only after the
            whole backward pass (False, for measuring what the overlap buys).

    Every parameter that requires grad must receive a gradient in each synchronised backward
    pass (PyTorch's ``find_unused_parameters=False``); the next forward says which did not.
    A training forward without a backward (e.g. a loss only looked at) is fine.
    """

    def __init__(self, module: Module, comm: Communicator | None = None,
                 bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True,
                 overlap: bool = True):
        super().__init__()
        self.module = module
        self.comm = comm if comm is not None else get_world()
        self.broadcast_buffers = bool(broadcast_buffers)
        self.overlap = bool(overlap)
        self._sync = True
        self._armed = False
        check_same_model(module, self.comm)
        for t in list(module.parameters()) + list(module.buffers()):
            self.comm.broadcast(t.data)
            t._bump()
        params = [p for p in module.parameters() if p.requires_grad]
        self._buckets = self._make_buckets(params, bucket_cap_mb)
        self._where: dict[int, tuple[_Bucket, int]] = {}
        self._handles = []
        for b in self._buckets:
            for i, p in enumerate(b.params):
                self._where[id(p)] = (b, i)
                self._handles.append(p.register_hook(self._hook_for(p)))

    @staticmethod
    def _make_buckets(params: list, cap_mb: float) -> list[_Bucket]:
        """Buckets in reverse registration order (roughly the order backward produces the
        gradients), one dtype and device each, at most ``cap_mb`` megabytes (or one tensor)."""
        cap = max(int(cap_mb * 2**20), 1)
        groups: list[list] = []
        key, size = None, 0
        for p in reversed(params):
            k = (str(p.dtype), p.device)
            nbytes = p.data.nbytes
            if not groups or k != key or size + nbytes > cap:
                groups.append([])
                key, size = k, 0
            groups[-1].append(p)
            size += nbytes
        return [_Bucket(i, g, B.backend_of(g[0].data).xp, g[0].dtype)
                for i, g in enumerate(groups)]

    # --- forward ------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self._armed and self._got:  # a backward ran but left parameters out
            missing = [n for n, p in self.module.named_parameters()
                       if id(p) in self._where and not self._arrived(p)]
            self._armed = False
            raise DistributedError(
                "DistributedDataParallel: the last backward pass gave no gradient to "
                f"{missing[:5]}; every parameter that requires grad must take part in the loss "
                "(or set requires_grad=False on the unused ones)")
        if self.training and is_grad_enabled():
            if self.broadcast_buffers and self.comm.world_size > 1:
                for t in self.module.buffers():
                    self.comm.broadcast(t.data)
            if self._sync and self._buckets:
                for b in self._buckets:
                    b.pending, b.work = len(b.params), None
                self._next = 0  # the next bucket to start: every rank starts them in order
                self._left = len(self._buckets)
                self._got: set[int] = set()
                self._armed = True
        return self.module(*args, **kwargs)

    def _arrived(self, p) -> bool:
        return id(p) in self._got

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside, backward only accumulates local gradients (no communication); the first
        synchronised backward after it averages the accumulated sum."""
        prev, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = prev

    # --- backward -----------------------------------------------------------------------------
    def _hook_for(self, p):
        def hook(g):
            if not self._armed or id(p) in self._got:
                return None
            self._got.add(id(p))
            b, i = self._where[id(p)]
            v = b.view(i)
            if p.grad is None:
                v[...] = g.data
            else:  # gradients accumulated under no_sync: their sum is what is averaged
                B.backend_of(v).xp.add(p.grad.data, g.data, out=v)
            b.pending -= 1
            if b.pending == 0 and self.overlap:
                self._start_ready()
            else:
                self._poke()
            if len(self._got) == len(self._where):
                return self._finish(p)
            return None
        return hook

    def _start_ready(self) -> None:
        bs = self._buckets
        while self._next < len(bs) and bs[self._next].pending == 0:
            b = bs[self._next]
            b.work = self.comm.iallreduce(b.flat, "sum")
            self._next += 1

    def _poke(self) -> None:
        """Let MPI progress the allreduces in flight (it advances them only inside its calls)."""
        for b in self._buckets[:self._next]:
            if b.work is not None and not b.work.done:
                b.work.test()

    def _finish(self, last) -> Tensor:
        """Wait for every bucket, average, write back into ``.grad``; return the last
        parameter's gradient (the engine stores it after this hook)."""
        self._start_ready()
        inv = 1.0 / self.comm.world_size
        out = None
        for b in self._buckets:
            b.work.wait()
            b.flat *= b.flat.dtype.type(inv)
            for i, p in enumerate(b.params):
                v = b.view(i)
                if p is last:
                    out = Tensor(v.copy())
                else:
                    p.grad.data[...] = v
                    p.grad._bump()
        last.grad = None
        self._armed = False
        return out

    def extra_repr(self) -> str:
        return (f"world_size={self.comm.world_size}, buckets={len(self._buckets)}, "
                f"overlap={self.overlap}")
