"""ZeroRedundancyOptimizer (torch.distributed.optim's): optimiser state sharded over the ranks.

Each parameter is owned by one rank (PyTorch's partition: every group's parameters, largest
first, each to the rank holding the fewest elements so far). A rank keeps the wrapped
optimiser's state for its own parameters only, steps them with the (already averaged)
gradients, and then every owner broadcasts its updated parameters, so all ranks end each step
with the same parameters as one optimiser over all of them would give, with about 1/N of the
state memory. ``consolidate_state_dict(to)`` gathers the whole state on one rank for saving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import _backend as B
from ..optim.base import Optimizer
from ..tensor import Tensor
from .collectives import _group
from .comm import Communicator
from .objects import gather_object

__all__ = ["ZeroRedundancyOptimizer"]


def _host_entry(e: dict) -> dict:
    """A state entry with its arrays and tensors on the host (to be pickled to another rank)."""
    out = {}
    for k, v in e.items():
        if isinstance(v, Tensor):
            v = Tensor._of(B.backend_of(v._data).to_host(v._data))
        elif B.is_array(v):
            v = B.backend_of(v).to_host(v)
        out[k] = v
    return out


class ZeroRedundancyOptimizer(Optimizer):
    """``optimizer_class(shard, **defaults)`` on each rank's share of ``params``; a step
    updates the share and broadcasts it (PyTorch's ``ZeroRedundancyOptimizer``).

    ``param_groups`` holds every parameter with the groups' hyperparameters (learning-rate
    schedulers change them here; each step passes them on to the shard's optimiser).
    ``state_dict()`` needs :meth:`consolidate_state_dict` first and is the state one
    ``optimizer_class`` over all parameters would have; ``load_state_dict`` takes such a dict
    on every rank and keeps each rank's share. ``process_group`` (a group from ``new_group``)
    shards over that group. ``parameters_as_bucket_view`` is accepted (parameters are
    broadcast in one flat buffer per owner and dtype either way); ``overlap_with_ddp`` is not
    supported.
    """

    def __init__(self, params: Iterable, optimizer_class: type[Optimizer],
                 process_group: Communicator | None = None,
                 parameters_as_bucket_view: bool = False, overlap_with_ddp: bool = False,
                 **defaults: Any):
        fn = "ZeroRedundancyOptimizer"
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)):
            raise TypeError(f"{fn}: optimizer_class must be a nodegrad optimiser class (e.g. "
                            f"nodegrad.optim.Adam), got {optimizer_class!r}")
        if overlap_with_ddp:
            raise NotImplementedError(f"{fn}: overlap_with_ddp=True is not supported; step "
                                      "after backward as usual")
        comm = _group(process_group)
        if comm is None:
            raise ValueError(f"{fn}: this rank is not a member of process_group")
        if isinstance(params, Tensor):
            raise TypeError(f"{fn}: params must be an iterable of tensors or dicts, got a Tensor")
        self._comm, self.process_group = comm, process_group
        self.optimizer_class = optimizer_class
        self.parameters_as_bucket_view = bool(parameters_as_bucket_view)
        self.defaults = dict(defaults)
        self.step_count = 0
        self._init_hooks()
        self.param_groups: list[dict] = []
        self._buckets = []
        self._owner: dict[int, int] = {}  # id(param) -> owning group rank
        self._sizes = [0] * comm.world_size
        self._consolidated: dict | None = None
        groups = list(params)
        if not groups:
            raise ValueError(f"{fn}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.optim: Optimizer | None = None
        for g in groups:
            self.add_param_group(g)

    @property
    def rank(self) -> int:
        return self._comm.rank

    @property
    def world_size(self) -> int:
        return self._comm.world_size

    def _shard(self, group: dict) -> list:
        """The parameters of ``group`` this rank owns, assigning owners to new ones (PyTorch's
        greedy partition: largest first, to the rank with the fewest elements)."""
        for p in sorted(group["params"], key=lambda t: t._data.size, reverse=True):
            if id(p) not in self._owner:
                r = min(range(len(self._sizes)), key=lambda i: self._sizes[i])
                self._owner[id(p)] = r
                self._sizes[r] += p._data.size
        return [p for p in group["params"] if self._owner[id(p)] == self.rank]

    def add_param_group(self, param_group: dict) -> None:
        """Add a group: its parameters are shared out and this rank's part joins the shard's
        optimiser."""
        if not isinstance(param_group, dict):
            raise TypeError("a parameter group must be a dict, got "
                            f"{type(param_group).__name__}")
        group = dict(param_group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        if ps and isinstance(ps[0], tuple):
            group.setdefault("param_names", [n for n, _ in ps])
            ps = [p for _, p in ps]
        for i, p in enumerate(ps):
            if not isinstance(p, Tensor):
                raise TypeError(f"ZeroRedundancyOptimizer: parameter {i} of group "
                                f"{len(self.param_groups)} is a {type(p).__name__}, not a Tensor")
            if id(p) in self._owner:
                raise ValueError(f"ZeroRedundancyOptimizer: parameter {i} of group "
                                 f"{len(self.param_groups)} appears more than once")
        group["params"] = ps
        local = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        local["params"] = self._shard(group)
        if self.optim is None:
            self.optim = self.optimizer_class([local], **self.defaults)
        else:
            self.optim.add_param_group(local)
        full = {k: v for k, v in self.optim.param_groups[-1].items() if k != "params"}
        full.update({k: v for k, v in group.items() if k != "params"})
        full["params"] = ps
        self.param_groups.append(full)

    def _push_hyper(self) -> None:
        for g, lg in zip(self.param_groups, self.optim.param_groups):
            for k, v in g.items():
                if k not in ("params", "param_names"):
                    lg[k] = v

    def step(self, closure: Callable[[], Any] | None = None):
        """Step this rank's parameters, then take every other rank's updated ones."""
        self._push_hyper()
        loss = self.optim.step(closure) if closure is not None else self.optim.step()
        self.step_count = self.optim.step_count
        self._sync_params()
        return loss

    def _sync_params(self) -> None:
        """Every owner broadcasts its parameters, in one flat buffer per (owner, dtype)."""
        comm = self._comm
        if comm.world_size == 1:
            return
        every = [p for g in self.param_groups for p in g["params"]]
        for r in range(comm.world_size):
            mine = [p for p in every if self._owner[id(p)] == r]
            kinds: dict[tuple, list] = {}
            for p in mine:
                kinds.setdefault((str(p.dtype), p.device), []).append(p)
            for ps in kinds.values():
                xp = B.backend_of(ps[0]._data).xp
                if comm.rank == r:
                    flat = xp.concatenate([p._data.reshape(-1) for p in ps])
                else:
                    flat = xp.empty(sum(p._data.size for p in ps), ps[0]._data.dtype)
                comm.broadcast(flat, r)
                if comm.rank != r:
                    o = 0
                    for p in ps:
                        p._data[...] = flat[o:o + p._data.size].reshape(p._data.shape)
                        o += p._data.size
                        p._bump()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients of every parameter (set to None, or zero in place)."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad._data[...] = 0
                    p.grad._bump()

    @property
    def state(self) -> dict:
        """This rank's share of the state, ``{param: {...}}``."""
        return self.optim.state

    def _index(self) -> tuple[list, list]:
        """(group, position) of every parameter in global index order, and this rank's
        parameters' global indices in the shard optimiser's index order."""
        where, glob = [], {}
        for gi, g in enumerate(self.param_groups):
            for pos, p in enumerate(g["params"]):
                glob[id(p)] = len(where)
                where.append((gi, pos))
        local = [glob[id(p)] for g in self.optim.param_groups for p in g["params"]]
        return where, local

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's share of the state on rank ``to`` (a rank of the group), for
        :meth:`state_dict` there. Every rank of the group calls it."""
        if not 0 <= to < self.world_size:
            raise ValueError(f"consolidate_state_dict: to must be a rank in [0, "
                             f"{self.world_size}), got {to}")
        _, local = self._index()
        sd = self.optim.state_dict()
        mine = {local[i]: _host_entry(e) for i, e in sd["state"].items()}
        out = [None] * self.world_size if self.rank == to else None
        dst = to if self._comm.global_ranks is None else self._comm.global_ranks[to]
        gather_object(mine, out, dst=dst, group=self.process_group)
        if self.rank != to:
            self._consolidated = None
            return
        state = {}
        for part in out:
            state.update(part)
        groups, start = [], 0
        for g, lg in zip(self.param_groups, sd["param_groups"]):
            saved = {k: v for k, v in lg.items() if k != "params"}
            saved.update({k: v for k, v in g.items() if k != "params"})
            saved["params"] = list(range(start, start + len(g["params"])))
            groups.append(saved)
            start += len(g["params"])
        self._consolidated = {"state": dict(sorted(state.items())), "param_groups": groups,
                              "step_count": sd.get("step_count", self.step_count)}

    def state_dict(self) -> dict:
        """The whole state (as one ``optimizer_class`` over every parameter would give) on the
        rank :meth:`consolidate_state_dict` gathered it to."""
        if self._consolidated is None:
            raise RuntimeError("ZeroRedundancyOptimizer.state_dict: the state has not been "
                               "consolidated on this rank; call consolidate_state_dict(to=...) "
                               "on every rank first and save from that rank")
        return self._consolidated

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a whole state (from :meth:`state_dict`, or from ``optimizer_class`` over the
        same parameters) on every rank; each keeps its share."""
        try:
            saved_groups, state = state_dict["param_groups"], state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError("ZeroRedundancyOptimizer.load_state_dict: expected a dict with "
                             "'state' and 'param_groups'") from None
        if len(saved_groups) != len(self.param_groups) or any(
                len(sg["params"]) != len(g["params"])
                for sg, g in zip(saved_groups, self.param_groups)):
            raise ValueError("ZeroRedundancyOptimizer.load_state_dict: the saved groups "
                             f"({[len(sg['params']) for sg in saved_groups]} parameters) do not "
                             "match this optimizer's "
                             f"({[len(g['params']) for g in self.param_groups]})")
        saved_idx = [i for sg in saved_groups for i in sg["params"]]
        _, local = self._index()
        local_state, groups, k = {}, [], 0
        for sg, lg in zip(saved_groups, self.optim.param_groups):
            n = len(lg["params"])
            groups.append({**{a: b for a, b in sg.items() if a != "params"},
                           "params": list(range(k, k + n))})
            k += n
        for li, gidx in enumerate(local):
            e = state.get(saved_idx[gidx])
            if e is not None:
                local_state[li] = e
        self.optim.load_state_dict({"state": local_state, "param_groups": groups,
                                    "step_count": state_dict.get("step_count", 0)})
        for sg, g in zip(saved_groups, self.param_groups):
            g.update({a: b for a, b in sg.items() if a not in ("params", "param_names")})
        self.step_count = self.optim.step_count
        self._consolidated = None

    def __repr__(self) -> str:
        return (f"ZeroRedundancyOptimizer({self.optimizer_class.__name__}, rank={self.rank}, "
                f"world_size={self.world_size}, local parameters="
                f"{sum(len(g['params']) for g in self.optim.param_groups)})")
