"""Regression tests: data-parallel training (DistributedDataParallel against PyTorch's rules,
torch.distributed's collective functions, SyncBatchNorm's statistics far from zero) and
checkpoints (safetensors names, dtypes and metadata). Multi-process cases run 2 ranks under
mpirun through tests/_dist_probe_worker.py, on shared memory and loopback only, each under a
timeout."""

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
from nodegrad import distributed as dist
from nodegrad import nn
from nodegrad.distributed import (DistributedDataParallel, DistributedSampler, SingleProcess,
                                  SyncBatchNorm)
from nodegrad.distributed.launch import find_mpirun, mpirun_command

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_dist_probe_worker.py"

_why = None
if importlib.util.find_spec("mpi4py") is None:
    _why = "mpi4py is not installed (pip install 'nodegrad[mpi]')"
elif find_mpirun() is None:
    _why = "no mpirun/mpiexec in this environment"
mpi = pytest.mark.skipif(_why is not None, reason=str(_why))


def _mpirun(scenario: str, out: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """The probe worker on 2 ranks; past ``timeout`` the whole job is killed and the test
    fails."""
    cmd = mpirun_command(2, [sys.executable, str(WORKER), scenario, str(out)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        so, se = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate()
        pytest.fail(f"{cmd} ran past {timeout} s:\n{so}\n{se}")
    return subprocess.CompletedProcess(cmd, p.returncode, so, se)


# --- DistributedDataParallel in one process ------------------------------------------------
class _World2(SingleProcess):
    """A stand-in world of two ranks that notes each collective (values unchanged)."""

    world_size = 2

    def __init__(self):
        self.events = []

    def iallreduce(self, a, op="sum"):
        self.events.append("allreduce")
        return super().iallreduce(a, op)

    def broadcast(self, a, root=0):
        self.events.append("broadcast")
        return a


def _bn_model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ddp_averages_gradients_in_eval_mode():
    """PyTorch prepares the allreduce whenever grad mode is on (outside no_sync), in train
    and eval mode alike; nodegrad left eval-mode gradients local (ranks drifted apart)."""
    w = _World2()
    ddp = DistributedDataParallel(_bn_model(), w)
    ddp.eval()
    w.events.clear()
    ddp(ng.randn(5, 3)).sum().backward()
    assert "allreduce" in w.events
    w.events.clear()
    with ng.no_grad():
        ddp(ng.randn(5, 3))
    with ddp.no_sync():
        ddp(ng.randn(5, 3)).sum().backward()
    assert "allreduce" not in w.events


def test_ddp_broadcasts_buffers_as_pytorch():
    """Rank 0's buffers go out before a forward that follows a synchronised one (PyTorch's
    require_forward_param_sync): every training step, and the first evaluation after training
    (nodegrad skipped it, so ranks evaluated with their own batch-norm statistics)."""
    w = _World2()
    ddp = DistributedDataParallel(_bn_model(), w)
    n_buffers = len(list(ddp.module.buffers()))

    def broadcasts(fn):
        w.events.clear()
        fn()
        return w.events.count("broadcast") // n_buffers
    x = ng.randn(5, 3)
    assert broadcasts(lambda: ddp(x).sum().backward()) == 1
    assert broadcasts(lambda: ddp(x).sum().backward()) == 1
    ddp.eval()
    with ng.no_grad():
        assert broadcasts(lambda: ddp(x)) == 1  # the first evaluation takes rank 0's
        assert broadcasts(lambda: ddp(x)) == 0
    ddp.train()
    assert broadcasts(lambda: ddp(x).sum().backward()) == 0  # after a no_grad forward
    assert broadcasts(lambda: ddp(x).sum().backward()) == 1


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x, use_b=True):
        y = self.a(x)
        return y + self.b(x) if use_b else y


def test_ddp_find_unused_parameters():
    """PyTorch's flag: parameters the forward's graph does not reach count as done, so a step
    that leaves a branch out still averages; one unused everywhere keeps its .grad (None)."""
    ng.manual_seed(0)
    model, ref = _Branchy(), _Branchy()
    ref.load_state_dict(model.state_dict())
    ddp = DistributedDataParallel(model, SingleProcess(), find_unused_parameters=True,
                                  bucket_cap_mb=1e-5)
    x = ng.randn(4, 3)
    for use_b in (False, True, False):
        for m in (model, ref):
            m.zero_grad(set_to_none=True)
        ddp(x, use_b).sum().backward()
        ref(x, use_b).sum().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-6)
    ddp(x, False)  # a forward without a backward, then the next step: no error
    ddp(x, False).sum().backward()
    assert "find_unused_parameters=True" in repr(ddp)


def test_ddp_find_unused_parameters_reads_dataclasses_and_names_a_hidden_output():
    import dataclasses

    @dataclasses.dataclass
    class Out:
        y: object

    class Boxed:
        def __init__(self, y):
            self.y = y

    class M(nn.Module):
        def __init__(self, box):
            super().__init__()
            self.a, self.box = nn.Linear(3, 2), box

        def forward(self, x):
            return self.box(self.a(x))
    m = M(Out)
    DistributedDataParallel(m, SingleProcess(), find_unused_parameters=True)(
        ng.randn(2, 3)).y.sum().backward()
    assert m.a.weight.grad is not None
    ddp = DistributedDataParallel(M(Boxed), SingleProcess(), find_unused_parameters=True)
    with pytest.raises(dist.DistributedError, match="outputs did not reach got a gradient"):
        ddp(ng.randn(2, 3)).y.sum().backward()


def test_torch_distributed_functions_in_one_process():
    t = ng.tensor([1.0, 2.0])
    assert dist.all_reduce(t, dist.ReduceOp.SUM) is None and t.numpy().tolist() == [1.0, 2.0]
    work = dist.all_reduce(t, dist.ReduceOp.AVG, async_op=True)
    work.wait()
    outs = [ng.zeros(2)]
    dist.all_gather(outs, t)
    assert outs[0].numpy().tolist() == [1.0, 2.0]
    out = ng.zeros(2, dtype=ng.int64)
    dist.reduce_scatter(out, [ng.tensor([3, 4])])
    assert out.numpy().tolist() == [3, 4]
    assert dist.get_rank() == 0 and dist.get_world_size() == 1
    dist.barrier()
    with pytest.raises(ValueError, match="tensor_list must be a list of 1"):
        dist.all_gather([ng.zeros(2), ng.zeros(2)], t)
    with pytest.raises(ValueError, match="op must be a ReduceOp"):
        dist.all_reduce(t, "median")
    with pytest.raises(ValueError, match="contiguous"):
        dist.all_reduce(ng.zeros(3, 4).T)


def test_sampler_empty_dataset_error_says_so():
    with pytest.raises(ValueError, match="the dataset is empty"):
        DistributedSampler(range(0), num_replicas=2, rank=0)


def test_convert_sync_batchnorm_keeps_affine_and_tracking():
    """convert_sync_batchnorm left affine/track_running_stats (and a missing weight/bias)
    behind: printing the layer or training one without affine raised AttributeError."""
    for affine, track in [(False, False), (True, False), (False, True)]:
        bn = nn.BatchNorm1d(3, affine=affine, track_running_stats=track)
        sync = SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn))[0]
        assert (sync.affine, sync.track_running_stats) == (affine, track)
        assert "SyncBatchNorm(3" in repr(sync)
        np.testing.assert_allclose(sync(ng.randn(4, 3) + 5).numpy().mean(0), 0, atol=1e-5)


# --- 2 ranks ---------------------------------------------------------------------------------
@mpi
def test_collectives_ddp_and_mismatch_on_two_ranks(tmp_path):
    r = _mpirun("collectives", tmp_path)
    assert (tmp_path / "collectives.json").exists(), r.stdout + r.stderr
    res = json.loads((tmp_path / "collectives.json").read_text())
    assert [k for k, good in res["all_reduce"] if not good] == []  # bool ops raised in MPI
    assert res["allgather_0d"] == [[2], [1.5, 2.5]]  # was (2, 1): a 0-d array became 1-d
    assert res["broadcast_0d"] == 8 and res["broadcast_f16"] == [0.0, 0.0, 0.0]
    assert res["all_gather"] == [[0.0, 1.0], [10.0, 11.0]]
    assert res["all_gather_into_tensor"] == [0.0, 1.0, 10.0, 11.0]
    assert res["reduce_scatter"] == [1, 3] and res["reduce_scatter_tensor"] == [0.0, 3.0]
    assert res["eval_grads_agree"] is True
    assert res["unused_grads"] == {"a.weight": 0.0, "a.bias": 0.0, "b.weight": 0.0,
                                   "b.bias": 0.0, "c.weight": None, "c.bias": None}
    assert res["unused_next_step"] is True
    # different sizes: rank 0 names the failed collective and the cause; rank 1 times out
    assert "allreduce of 3 values (float64) failed in MPI" in res["mismatch"]
    assert "same size and dtype" in res["mismatch"]
    other = json.loads((tmp_path / "collectives-1.json").read_text())["mismatch"]
    assert "did not complete within 3 s" in other and "another size" in other


@mpi
def test_sync_batchnorm_far_from_zero_matches_torch(tmp_path):
    """float32 input around 1000 on uneven batches (2 and 7): the global variance came from
    E[x²] - E[x]², which cancels (errors of 0.06 in the output, 0.8 in the weight's gradient,
    NaN further out); combining each rank's centred statistics stays within float32's
    rounding of PyTorch's float64 result."""
    r = _mpirun("syncbn", tmp_path)
    assert (tmp_path / "syncbn.json").exists(), r.stdout + r.stderr
    err = json.loads((tmp_path / "syncbn.json").read_text())
    for k, (ours, torch32) in err.items():
        assert ours <= max(20 * torch32, 2e-4), (k, ours, torch32)


# --- checkpoints -----------------------------------------------------------------------------
def test_save_refuses_the_reserved_metadata_name(tmp_path):
    """A tensor named '__metadata__' was written into a file no reader can open."""
    with pytest.raises(ValueError, match="'__metadata__' is reserved"):
        ng.save({"__metadata__": ng.ones(2)}, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_save_names_dtypes_safetensors_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match=r"'z' has dtype timedelta64\[s\], which safetensors "):
        ng.save({"a": ng.ones(2), "z": np.zeros(2, "timedelta64[s]")}, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="expected a mapping"):
        ng.save([ng.ones(2)], tmp_path / "m.safetensors")


def test_load_names_a_dtype_nodegrad_cannot_hold(tmp_path):
    """A float8 tensor was reported as a truncated or corrupt file."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    path = tmp_path / "f8.safetensors"
    save_file({"w": torch.zeros(3).to(torch.float8_e4m3fn)}, str(path))
    with pytest.raises(ng.CheckpointError, match="'w' .* has dtype F8_E4M3") as e:
        ng.load(path)
    assert "corrupt" not in str(e.value)


def test_load_returns_metadata_another_writer_stored(tmp_path):
    """safetensors.torch's string metadata came back as {}."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(2)}, str(path), metadata={"format": "pt", "epoch": "3"})
    _, meta = ng.load(path, with_metadata=True)
    assert meta == {"format": "pt", "epoch": "3"}
    ng.save({"a": ng.ones(2)}, path, {"epoch": 3})
    assert ng.load(str(path), with_metadata=True)[1] == {"epoch": 3}


def test_every_dtype_round_trips_through_both_readers(tmp_path):
    pytest.importorskip("torch")
    from safetensors.torch import load_file
    base = np.array([[0, 1, 2], [3, 4, 5]])
    state = {dt: ng.tensor(base.astype(dt)) for dt in
             ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32",
              "float64")}
    state["complex64"] = ng.tensor((base + 1j * base).astype(np.complex64))
    state["scalar"] = ng.tensor(2.5)
    state["empty"] = ng.zeros(0, 3)
    a = ng.arange(12.0).reshape(3, 4)
    state["transposed"], state["strided"], state["view"] = a.T, a[:, ::2], a[1]
    path = tmp_path / "all.safetensors"
    ng.save(state, path)
    back, theirs = ng.load(path), load_file(str(path))
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k].numpy(), v.numpy())
        np.testing.assert_array_equal(theirs[k].numpy(), v.numpy())
        assert str(theirs[k].dtype).removeprefix("torch.") == str(v.dtype), k


def test_a_writer_failing_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    ng.save({"a": ng.ones(3)}, path)

    def fail(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        ng.save({"a": ng.zeros(3)}, path)
    monkeypatch.undo()
    assert ng.load(path)["a"].numpy().tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
