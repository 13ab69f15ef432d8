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
import dataclasses
from collections.abc import Iterator

from .. import _backend as B
from ..autodiff import Node, is_grad_enabled
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
            n += p._data.size
        self.flat = xp.zeros(n, dtype=dtype)
        self.pending = len(params)
        self.work = None

    def view(self, i: int):
        p = self.params[i]
        o = self.offsets[i]
        return self.flat[o:o + p._data.size].reshape(p.shape)


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
        broadcast_buffers: take rank 0's buffers (batch norm statistics) before every forward
            that follows a synchronised one (every training step), as PyTorch does.
        overlap: start a bucket's allreduce as soon as it is full (True) or only after the
            whole backward pass (False, for measuring what the overlap buys).
        find_unused_parameters: after each forward, walk the graph from its outputs and count
            the parameters it does not reach as done, so a model that leaves some out in a
            step still averages (PyTorch's flag and meaning: a parameter unused on every rank
            keeps its ``.grad``; one used on some rank gets the average, this rank adding 0).
        static_graph: PyTorch's promise that the set of used parameters never changes; here it
            enables the same unused-parameter handling as ``find_unused_parameters``.

    PyTorch's other keywords are accepted: ``process_group`` (a group from ``new_group``; the
    same as ``comm``), ``device_ids`` (None or one device: the module's), ``output_device``,
    ``dim``, ``init_sync`` (False skips taking rank 0's parameters at construction),
    ``check_reduction`` and ``gradient_as_bucket_view`` (no effect here: gradients are always
    written back into ``.grad``); ``mixed_precision`` and ``device_mesh`` must be None.

    Without ``find_unused_parameters`` every parameter that requires grad must receive a
    gradient in each synchronised backward pass; the next forward says which did not.
    A forward without a backward (e.g. a loss only looked at) is fine. As in PyTorch, what
    decides whether the next backward averages is whether gradients are enabled (and
    ``no_sync`` is off), not ``train()``/``eval()``: a model trained in eval mode (frozen batch
    norm statistics) still averages its gradients.
    """

    def __init__(self, module: Module, comm: Communicator | None = None,
                 bucket_cap_mb: float | None = 25.0, broadcast_buffers: bool | None = True,
                 overlap: bool = True, find_unused_parameters: bool = False, *,
                 device_ids: list | None = None, output_device=None, dim: int = 0,
                 process_group: Communicator | None = None, init_sync: bool = True,
                 check_reduction: bool = False, gradient_as_bucket_view: bool = False,
                 static_graph: bool = False, mixed_precision=None, device_mesh=None):
        super().__init__()
        fn = "DistributedDataParallel"
        if isinstance(comm, (list, tuple, int)) and not isinstance(comm, bool):
            if device_ids is not None:  # PyTorch's second positional argument
                raise TypeError(f"{fn}: device_ids given twice")
            comm, device_ids = None, comm
        if device_ids is not None:
            ids = [device_ids] if isinstance(device_ids, int) else list(device_ids)
            if len(ids) > 1:
                raise ValueError(f"{fn}: device_ids must be None or hold one device (one GPU "
                                 f"per rank), got {device_ids}")
        if process_group is not None:
            if comm is not None and comm is not process_group:
                raise ValueError(f"{fn}: give comm or process_group, not both")
            comm = process_group
        if comm is not None and not isinstance(comm, Communicator):
            raise TypeError(f"{fn}: process_group must be a group from new_group (or None), got "
                            f"{type(comm).__name__}; a rank outside the group cannot wrap a "
                            "model for it")
        for k, v in (("mixed_precision", mixed_precision), ("device_mesh", device_mesh)):
            if v is not None:
                raise NotImplementedError(f"{fn}: {k} is not supported; leave it None (use "
                                          "nodegrad.autocast for mixed precision)")
        self.module = module
        self.comm = comm if comm is not None else get_world()
        self.broadcast_buffers = True if broadcast_buffers is None else bool(broadcast_buffers)
        self.overlap = bool(overlap)
        self.static_graph = bool(static_graph)
        self.find_unused_parameters = bool(find_unused_parameters) or self.static_graph
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim
        if bucket_cap_mb is None:
            bucket_cap_mb = 25.0
        self._unused: set[int] = set()
        self._sync = True
        self._armed = False
        self._fired = False
        self._forward_sync = True  # PyTorch's require_forward_param_sync
        check_same_model(module, self.comm)
        for t in list(module.parameters()) + list(module.buffers()) if init_sync else ():
            self.comm.broadcast(t._data)
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
            nbytes = p._data.nbytes
            if not groups or k != key or size + nbytes > cap:
                groups.append([])
                key, size = k, 0
            groups[-1].append(p)
            size += nbytes
        return [_Bucket(i, g, B.backend_of(g[0]._data).xp, g[0].dtype)
                for i, g in enumerate(groups)]

    # --- forward ------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self._armed and self._fired:  # a backward ran but left parameters out
            missing = [n for n, p in self.module.named_parameters()
                       if id(p) in self._where and not self._arrived(p)]
            self._armed = False
            raise DistributedError(
                "DistributedDataParallel: the last backward pass gave no gradient to "
                f"{missing[:5]}; every parameter that requires grad must take part in the loss "
                "(or set requires_grad=False on the unused ones)")
        # As PyTorch: a forward with grad enabled outside no_sync prepares the gradient
        # allreduce, in train and in eval mode alike; rank 0's buffers are broadcast before a
        # forward that follows such a forward (so also before the first evaluation after
        # training, and on every training step).
        sync_backward = is_grad_enabled() and self._sync
        if (self._forward_sync and self.broadcast_buffers and self.comm.world_size > 1):
            for t in self.module.buffers():
                self.comm.broadcast(t._data)
                t._bump()
        self._forward_sync = sync_backward
        if sync_backward and self._buckets:
            for b in self._buckets:
                b.pending, b.work = len(b.params), None
            self._next = 0  # the next bucket to start: every rank starts them in order
            self._left = len(self._buckets)
            self._got: set[int] = set()
            self._fired = False  # a gradient hook has run since this forward
            self._unused = set()
            self._armed = True
        out = self.module(*args, **kwargs)
        if sync_backward and self._buckets and self.find_unused_parameters:
            self._mark_unused(out)
        return out

    def _mark_unused(self, out) -> None:
        """Count the parameters the graph of ``out`` does not reach as arrived, each adding
        its accumulated gradient (or zeros) to the average (PyTorch's unused parameters).
        Tensors are found in ``out`` as PyTorch finds them: in lists, tuples, dicts and
        dataclasses."""
        reached: set[int] = set()
        stack, seen = [], set()

        def visit(o):
            if isinstance(o, Tensor):
                reached.add(id(o))
                if o.node is not None:
                    stack.append(o.node)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    visit(v)
            elif isinstance(o, dict):
                for v in o.values():
                    visit(v)
            elif dataclasses.is_dataclass(o) and not isinstance(o, type):
                for f in dataclasses.fields(o):
                    visit(getattr(o, f.name))
        visit(out)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for q in n.parents:
                if type(q) is Node:
                    stack.append(q)
                elif q is not None:
                    reached.add(id(q))
        for b in self._buckets:
            for i, p in enumerate(b.params):
                if id(p) not in reached:
                    v = b.view(i)
                    if p.grad is None:
                        v[...] = 0
                    else:
                        v[...] = p.grad._data
                    self._got.add(id(p))
                    self._unused.add(id(p))
                    b.pending -= 1

    def _arrived(self, p) -> bool:
        return id(p) in self._got

    def _set_static_graph(self) -> None:
        """PyTorch's late ``static_graph=True`` (unused parameters handled from now on)."""
        self.static_graph = self.find_unused_parameters = True

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
            if not self._armed:
                return None
            if id(p) in self._unused:
                self._armed = False
                raise DistributedError(
                    "DistributedDataParallel(find_unused_parameters=True): a parameter the "
                    "forward's outputs did not reach got a gradient; return the tensors the "
                    "loss uses from forward (in tensors, lists, tuples, dicts or dataclasses)")
            if id(p) in self._got:
                return None
            self._got.add(id(p))
            self._fired = True
            b, i = self._where[id(p)]
            v = b.view(i)
            if p.grad is None:
                v[...] = g._data
            else:  # gradients accumulated under no_sync: their sum is what is averaged
                B.backend_of(v).xp.add(p.grad._data, g._data, out=v)
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
        unused = set()
        if self.find_unused_parameters:  # unused on every rank: .grad is left as it is
            order = [p for b in self._buckets for p in b.params]
            used = B.np.array([id(p) not in self._unused for p in order], B.np.uint8)
            self.comm.allreduce(used, "max")
            unused = {id(p) for p, u in zip(order, used) if not u}
        out = None
        for b in self._buckets:
            b.work.wait()
            b.flat *= b.flat.dtype.type(inv)
            for i, p in enumerate(b.params):
                v = b.view(i)
                if id(p) in unused:
                    continue
                if p is last:
                    out = Tensor._of(v.copy())
                elif p.grad is None:  # unused here, used on another rank
                    p.grad = Tensor._of(v.copy())
                else:
                    p.grad._data[...] = v
                    p.grad._bump()
        last.grad = None
        self._armed = False
        return out

    def extra_repr(self) -> str:
        return (f"world_size={self.comm.world_size}, buckets={len(self._buckets)}, "
                f"overlap={self.overlap}"
                + (", find_unused_parameters=True" if self.find_unused_parameters else ""))
