"""The program the distributed tests start on N ranks: ``python _dist_worker.py SCENARIO OUT ...``.

``equiv``: N ranks with per-rank batch B against one process with batch N*B (computed on rank
0), for an MLP, the MNIST-1D CNN and a batch-norm model under SyncBatchNorm (float64 and
float32 each); the sampler's coverage; no_sync accumulation; mismatched models. Rank 0 writes
the largest differences to OUT/equiv-N.json.
``fit RUN_DIR EPOCHS BATCH [MODE STEP]``: fit(distributed=True) with checkpoints into RUN_DIR;
MODE ``kill`` SIGKILLs the last rank at STEP, ``raise`` raises there, ``killwrite`` SIGKILLs
rank 0 inside its STEP-th checkpoint write, ``resume`` continues the run.
Rank 0 writes the final weights to RUN_DIR/final.safetensors.
``elastic RUN_DIR EPOCHS BATCH [MODE STEP]``: as ``fit`` on shuffled data (also in one process,
without mpirun), each rank appending the samples of every step to RUN_DIR/seen-MODE-RANK.jsonl.
``equiv-device``: ``equiv``'s MLP and SyncBatchNorm model with DDP on the stand-in CUDA
device of ``_fakecupy``, against one process on the CPU.
``stall``: rank 1 skips a collective; rank 0 must time out.
"""

import json
import os
import signal
import sys
import time

import numpy as np

import nodegrad as ng
from nodegrad import nn
from nodegrad.distributed import (DistributedDataParallel, DistributedError, DistributedSampler,
                                  SyncBatchNorm, init)
from nodegrad.nn import functional as F

K = 3  # optimiser steps compared


def data(n, shape, classes, seed, dtype):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(dtype), rng.integers(0, classes, n)


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))


def bn_model():
    return nn.Sequential(nn.Conv1d(2, 5, 3, padding=1), nn.BatchNorm1d(5), nn.ReLU(),
                         nn.Flatten(), nn.Linear(40, 12), nn.BatchNorm1d(12), nn.Tanh(),
                         nn.Linear(12, 3))


def diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float(np.max(np.abs(sa[k].numpy().astype(np.float64)
                                   - sb[k].numpy().astype(np.float64)))) for k in sa)


def train_pair(w, make, x, y, B, dtype, sync_bn=False, lr=0.1, device="cpu"):
    """K SGD steps: DDP on this rank's slices vs one process on the full batches (the DDP
    model and its batches on ``device``; the reference on the CPU)."""
    ng.manual_seed(0)
    model = make().to(device=device, dtype=dtype)
    ref = make().to(dtype=dtype)
    ref.load_state_dict(model.state_dict())
    if sync_bn:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets
    opt = ng.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ropt = ng.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    N, r = w.world_size, w.rank
    for k in range(K):
        g = slice(k * N * B, (k + 1) * N * B)
        xl = ng.tensor(x[g][r * B:(r + 1) * B], device=device)
        yl = ng.tensor(y[g][r * B:(r + 1) * B], device=device)
        opt.zero_grad()
        F.cross_entropy(ddp(xl), yl).backward()
        opt.step()
        ropt.zero_grad()
        F.cross_entropy(ref(ng.tensor(x[g])), ng.tensor(y[g])).backward()
        ropt.step()
    model.eval()
    ref.eval()
    xe = ng.tensor(x[:8])
    out = float(np.max(np.abs(model(xe.to(device)).numpy() - ref(xe).numpy())))
    return max(diff(model, ref), out)


def _addr(hexaddr: str) -> str:
    """An address of /proc/net/tcp{,6} (little-endian hex words) as text."""
    import ipaddress
    host = hexaddr.split(":")[0]
    raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
    return str(ipaddress.ip_address(raw))


def tcp_sockets() -> list:
    """[local, remote] addresses of this process's TCP sockets (Linux; [] elsewhere)."""
    if not os.path.isdir("/proc/self/fd"):
        return []
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    found.append([_addr(cols[1]), _addr(cols[2])])
    return found


def allreduce_errors(w) -> list:
    """The communicator's allreduce (ring and MPI's own) against NumPy on every rank's data:
    sizes around the ring's threshold and below the number of ranks, each op and dtype, the
    same bits on every rank, several allreduces in flight finished in reverse order."""
    bad = []
    N, r = w.world_size, w.rank
    for n in (0, 1, N - 1, w.ring_min * N - 1, w.ring_min * N, w.ring_min * N + N + 1):
        for dt in (np.float32, np.float64, np.int64):
            for op in ("sum", "mean", "max", "min"):
                if op == "mean" and dt is np.int64:
                    continue
                full = (np.random.default_rng(n).standard_normal((N, n)) * 100).astype(dt)
                a = full[r].copy()
                w.allreduce(a, op)
                want = {"sum": full.sum(0), "mean": full.sum(0) / N, "max": full.max(0),
                        "min": full.min(0)}[op].astype(dt)
                tol = 1e-4 if dt is np.float32 else 1e-10
                if not np.allclose(a, want, rtol=tol, atol=tol):
                    bad.append(f"{op} of {n} {dt.__name__}")
                every = w.allgather(a)
                if not np.array_equal(every, np.broadcast_to(every[0], every.shape)):
                    bad.append(f"{op} of {n} {dt.__name__} differs between ranks")
    arrs = [np.full(w.ring_min * N + i, float(r + i)) for i in range(5)]
    works = [w.iallreduce(x) for x in arrs]
    for k in reversed(works):
        k.wait()
    for i, x in enumerate(arrs):
        if not np.all(x == sum(q + i for q in range(N))):
            bad.append(f"allreduce {i} of 5 in flight")
    return bad


def equiv(out_dir):
    w = init(timeout=60)
    N = w.world_size
    res = {"allreduce": allreduce_errors(w)}
    w.ring_min = 1  # the models' small buckets go round the ring too
    x, y = data(N * 4 * K, (6,), 4, 1, np.float64)
    res["mlp_float64"] = train_pair(w, mlp, x, y, 4, ng.float64)
    res["mlp_float32"] = train_pair(w, mlp, x.astype(np.float32), y, 4, ng.float32)
    x, y = data(N * 3 * K, (40,), 10, 2, np.float64)
    res["cnn_float64"] = train_pair(w, ng.models.mnist1d.CNN, x, y, 3, ng.float64)
    res["cnn_float32"] = train_pair(w, ng.models.mnist1d.CNN, x.astype(np.float32), y, 3,
                                    ng.float32)
    x, y = data(N * 5 * K, (2, 8), 3, 3, np.float64)
    res["syncbn_float64"] = train_pair(w, bn_model, x, y, 5, ng.float64, sync_bn=True)
    res["syncbn_float32"] = train_pair(w, bn_model, x.astype(np.float32), y, 5, ng.float32,
                                       sync_bn=True, lr=0.05)

    # no_sync: two accumulated micro-batches then a synchronised one = one step on all three
    ng.manual_seed(0)
    model, ref = mlp().to(dtype=ng.float64), mlp().to(dtype=ng.float64)
    ref.load_state_dict(model.state_dict())
    ddp = DistributedDataParallel(model)
    x, y = data(N * 4 * 3, (6,), 4, 4, np.float64)
    for k in range(3):
        g = slice(k * N * 4, (k + 1) * N * 4)
        lo = slice(g.start + w.rank * 4, g.start + (w.rank + 1) * 4)
        if k < 2:
            with ddp.no_sync():
                F.cross_entropy(ddp(ng.tensor(x[lo])), ng.tensor(y[lo])).backward()
        else:
            F.cross_entropy(ddp(ng.tensor(x[lo])), ng.tensor(y[lo])).backward()
        F.cross_entropy(ref(ng.tensor(x[g])), ng.tensor(y[g])).backward()
    res["no_sync"] = max(float(np.max(np.abs(a.grad.numpy() - b.grad.numpy())))
                         for a, b in zip(model.parameters(), ref.parameters()))
    # after the accumulation the gradients differ between ranks only if no_sync leaked
    allg = w.allgather(np.concatenate([p.grad.numpy().ravel() for p in model.parameters()]))
    res["no_sync_ranks_agree"] = bool(np.all(allg == allg[0]))

    # the sampler: every sample once per epoch (padding repeats at most N - 1)
    cover = {}
    for n in (40, 37):
        for epoch in (0, 1):
            s = DistributedSampler(range(n), seed=5)
            mine = np.zeros(s.num_samples, np.int64) + s.indices(epoch)
            every = w.allgather(mine).ravel()
            counts = np.bincount(every, minlength=n)
            cover[f"{n}/{epoch}"] = [int(counts.min()), int(counts.max()), int(counts.sum()),
                                     len(every)]
    res["sampler"] = cover
    order0 = w.allgather(DistributedSampler(range(40), seed=5).indices(0))
    order1 = w.allgather(DistributedSampler(range(40), seed=5).indices(1))
    res["sampler_epochs_differ"] = bool(np.any(order0 != order1))

    # a model that differs between ranks: a clear error on every rank, at the start
    try:
        DistributedDataParallel(nn.Linear(3, 2 + (w.rank == N - 1)))
        res["mismatch"] = None
    except DistributedError as e:
        res["mismatch"] = str(e)
    res["world_size"] = N
    res["tcp"] = w.allgather_json(tcp_sockets())  # every rank's: loopback only
    res["local_ranks"] = w.allgather_json(w.local_rank)  # one machine: local = global rank
    if w.rank == 0:
        with open(os.path.join(out_dir, f"equiv-{N}.json"), "w") as f:
            json.dump(res, f)


class Fail(ng.train.Callback):
    """At step ``at`` the last rank kills itself or raises."""

    def __init__(self, mode, step):
        self.mode, self.at = mode, step

    def on_batch_end(self, tr, logs):
        if tr.step == self.at and tr.dist.comm.rank == tr.dist.comm.world_size - 1:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError(f"failing on purpose at step {self.at}")


def die_in_checkpoint_write(nth: int) -> None:
    """SIGKILL this process in its ``nth`` checkpoint write: the new file is complete under
    its temporary name, the rename into place has not happened."""
    real, seen = os.replace, [0]

    def replace(src, dst, *a, **k):
        if os.path.basename(str(dst)) == "checkpoint.safetensors":
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace


def fit(run_dir, epochs, batch, mode="", step=0):
    w = init(timeout=60)
    if mode == "killwrite" and w.rank == 0:
        die_in_checkpoint_write(int(step))
    ng.manual_seed(0)
    x, y = data(96, (6,), 4, 7, np.float32)
    model = mlp()
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    tl = ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=int(batch))
    cbs = [Fail(mode, int(step))] if mode in ("kill", "raise") else []
    ng.train.fit(model, F.cross_entropy, opt, tl, epochs=int(epochs), callbacks=cbs,
                 run_dir=run_dir, checkpoint_every=2, resume=mode == "resume", progress=False,
                 distributed=True)
    if w.rank == 0:
        ng.save(model.state_dict(), os.path.join(run_dir, "final.safetensors"))


class Recording(ng.data.ArrayDataset):
    """An ArrayDataset that notes the indices the loader gathers."""

    def __init__(self, *arrays):
        super().__init__(*arrays)
        self.taken = []

    def gather(self, idx):
        self.taken.append(np.asarray(idx).tolist())
        return super().gather(idx)


class Seen(ng.train.Callback):
    """Appends each step's samples (this rank's) to a file, flushed at once."""

    def __init__(self, ds, path):
        self.ds, self.f = ds, open(path, "a")

    def on_batch_end(self, tr, logs):
        idx = [i for b in self.ds.taken for i in b]
        self.ds.taken.clear()
        self.f.write(json.dumps({"step": tr.step, "epoch": tr.epoch, "idx": idx}) + "\n")
        self.f.flush()


def elastic(run_dir, epochs, batch, mode="", step=0):
    w = init(timeout=60)
    ng.manual_seed(0)
    x, y = data(96, (6,), 4, 7, np.float32)
    ds = Recording(x, y)
    model = mlp()
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    tl = ng.data.DataLoader(ds, batch_size=int(batch), shuffle=True, seed=3, prefetch=0)
    cbs = [Seen(ds, os.path.join(run_dir, f"seen-{mode or 'run'}-{w.rank}.jsonl"))]
    cbs += [Fail(mode, int(step))] if mode in ("kill", "raise") else []
    ng.train.fit(model, F.cross_entropy, opt, tl, epochs=int(epochs), callbacks=cbs,
                 run_dir=run_dir, checkpoint_every=2, resume=mode == "resume", progress=False,
                 distributed=True)
    if w.rank == 0:
        ng.save(model.state_dict(), os.path.join(run_dir, "final.safetensors"))


def equiv_device(out_dir):
    """``equiv``'s models with DDP (and SyncBatchNorm) on the stand-in CUDA device of
    ``_fakecupy``: device gradients cross the ranks through host copies."""
    import _fakecupy

    with _fakecupy.installed():
        w = init(timeout=60)
        N = w.world_size
        res = {}
        x, y = data(N * 4 * K, (6,), 4, 1, np.float64)
        res["mlp_float64"] = train_pair(w, mlp, x, y, 4, ng.float64, device="cuda")
        x, y = data(N * 5 * K, (2, 8), 3, 3, np.float64)
        res["syncbn_float64"] = train_pair(w, bn_model, x, y, 5, ng.float64, sync_bn=True,
                                           device="cuda")
        res["syncbn_float32"] = train_pair(w, bn_model, x.astype(np.float32), y, 5,
                                           ng.float32, sync_bn=True, lr=0.05, device="cuda")
        if w.rank == 0:
            with open(os.path.join(out_dir, f"equiv-device-{N}.json"), "w") as f:
                json.dump(res, f)


def stall(out_dir):
    w = init(timeout=3)
    a = np.ones(4)
    if w.rank == 1:
        time.sleep(60)  # never joins: rank 0 must give up after its timeout
    w.allreduce(a)


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    {"equiv": equiv, "equiv-device": equiv_device, "fit": fit, "elastic": elastic,
     "stall": stall}[scenario](*args)
