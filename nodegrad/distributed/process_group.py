"""torch.distributed's process-group set-up over this package's communicators.

``init_process_group`` makes the world: MPI when the job was started by ``mpirun`` (or the
launcher), else a world of one process, which needs no MPI at all. The ranks come from the MPI
launcher, so ``init_method`` may only be ``None`` or ``"env://"`` and ``world_size``/``rank``,
when given, are checked against it. ``backend="gloo"`` (PyTorch's CPU backend) is run by MPI
under that name; ``"nccl"`` keeps tensors on the GPU (CuPy's NCCL, one GPU per rank).
``new_group`` makes a sub-communicator the collectives take as ``group=``.
"""

from __future__ import annotations

import importlib.util
import os

from .. import _backend as B
from . import comm as _comm
from .collectives import GroupMember, _group, _seconds
from .comm import Communicator, DistributedError, init, launched_under_mpi

_BACKENDS = ("mpi", "gloo", "nccl")
_initialised = False  # by init_process_group (an implicit world from init() does not count)
_groups: list[Communicator] = []  # the sub-groups new_group made, freed with the world


def is_available() -> bool:
    """True: the package's distributed support is always importable (a world of one runs
    without MPI)."""
    return True


def is_mpi_available() -> bool:
    """True when mpi4py is installed (``pip install 'nodegrad[mpi]'``)."""
    return importlib.util.find_spec("mpi4py") is not None


def is_gloo_available() -> bool:
    """True: the ``"gloo"`` backend name is served by MPI (or by the world of one process)."""
    return True


def is_nccl_available() -> bool:
    """True when CuPy is installed and sees a GPU (NCCL comes with CuPy)."""
    return B.cuda_available()


def is_torchelastic_launched() -> bool:
    """False: jobs start under ``mpirun``, never under torchrun's elastic agent."""
    return False


def _backend_name(backend, fn: str) -> str:
    if backend is None:
        return "mpi"
    name = str(backend).lower()
    if name not in _BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {_BACKENDS} ('gloo' runs over MPI), got "
                         f"{backend!r}")
    return name


def init_process_group(backend: str | None = None, init_method: str | None = None,
                       timeout=None, world_size: int = -1, rank: int = -1, store=None,
                       group_name: str = "", pg_options=None, device_id=None) -> None:
    """Make the default group (the world) that every collective uses, as PyTorch's
    ``init_process_group``; ``timeout`` (a ``timedelta`` or seconds) bounds each collective.

    Start several ranks with ``mpirun -n N python script.py`` (or ``python -m
    nodegrad.distributed.launch -n N script.py``); without a launcher the world is this one
    process (``world_size`` 1 or -1)."""
    global _initialised
    fn = "init_process_group"
    name = _backend_name(backend, fn)
    if _initialised:
        raise ValueError("trying to initialize the default process group twice!")
    if init_method not in (None, "env://"):
        raise ValueError(f"{fn}: init_method must be None or 'env://', got {init_method!r}: the "
                         "ranks find each other through the MPI launcher (mpirun), not a "
                         "TCP or file rendezvous")
    if store is not None:
        raise ValueError(f"{fn}: a store is not used: the MPI launcher (mpirun) connects the "
                         "ranks; leave store=None")
    secs = _seconds(timeout, fn)
    under_mpi = launched_under_mpi()
    env_ws = os.environ.get("WORLD_SIZE", "")
    if not under_mpi and (world_size > 1 or (env_ws.isdigit() and int(env_ws) > 1)):
        n = world_size if world_size > 1 else int(env_ws)
        raise DistributedError(f"{fn}: a world of {n} ranks needs the processes started by MPI: "
                               f"mpirun -n {n} python SCRIPT (or python -m "
                               f"nodegrad.distributed.launch -n {n} SCRIPT); torchrun and "
                               "MASTER_ADDR rendezvous are not supported")
    if name == "nccl" and not is_nccl_available():
        raise DistributedError(f"{fn}: backend 'nccl' needs CuPy and a GPU "
                               "(pip install 'nodegrad[cuda]'); use 'mpi' or 'gloo' on the CPU")
    world = init(secs, backend="mpi" if under_mpi else "auto")
    if world_size not in (-1, world.world_size):
        raise ValueError(f"{fn}: world_size={world_size}, but the launcher started "
                         f"{world.world_size} rank(s)")
    if rank not in (-1, world.rank):
        raise ValueError(f"{fn}: rank={rank}, but the launcher made this process rank "
                         f"{world.rank}")
    if name == "nccl":
        from .nccl import NCCLCommunicator
        world = NCCLCommunicator(world)
        _comm._world = world
    world.backend = name
    _initialised = True


def destroy_process_group(group: Communicator | None = None) -> None:
    """Free ``group`` (a group from :func:`new_group`), or with None every group and the world,
    so that :func:`init_process_group` may run again."""
    global _initialised
    if group is not None:
        if isinstance(group, Communicator):
            group.free()
            if group in _groups:
                _groups.remove(group)
        return
    for g in _groups:
        g.free()
    _groups.clear()
    if _comm._world is not None:
        host = getattr(_comm._world, "host", None)
        _comm._world.free()
        if host is not None:
            host.free()
    _comm._world = None
    _initialised = False


def new_group(ranks: list[int] | None = None, timeout=None, backend: str | None = None,
              pg_options=None, use_local_synchronization: bool = False, group_desc=None,
              device_id=None, sort_ranks: bool = True):
    """A group of the world ranks ``ranks`` (None: all), for the collectives' ``group=``.
    Every rank of the world calls it (only the members with ``use_local_synchronization``);
    the others get ``GroupMember.NON_GROUP_MEMBER``. Group ranks follow the sorted ranks."""
    fn = "new_group"
    _backend_name(backend, fn)
    world = _group(None)
    n = world.world_size
    rs = list(range(n)) if ranks is None else [int(r) for r in ranks]
    if len(set(rs)) != len(rs) or any(not 0 <= r < n for r in rs):
        raise ValueError(f"{fn}: ranks must be distinct world ranks in [0, {n}), got {ranks}")
    if sort_ranks:
        rs.sort()
    if use_local_synchronization and world.rank not in rs:
        return GroupMember.NON_GROUP_MEMBER
    g = world.split(rs, sync=not use_local_synchronization)
    if g is None:
        return GroupMember.NON_GROUP_MEMBER
    g.global_ranks = rs
    secs = _seconds(timeout, fn)
    if secs is not None:
        g.timeout = secs
    _groups.append(g)
    return g


def get_backend(group: Communicator | None = None) -> str:
    """The backend's name: ``"mpi"``, ``"gloo"`` (when asked for by that name) or ``"nccl"``."""
    g = _group(group)
    if g is None:
        raise ValueError("get_backend: this rank is not a member of the group")
    return g.backend
