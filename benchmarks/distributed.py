"""Data-parallel scaling on this machine: ``python -m benchmarks.distributed [--ranks 1,2]``.

For each rank count the script starts itself under ``mpirun`` and measures, per model (W2: the
MLP 784-1024-1024-10 with Adam, batch 256 per rank; W3: the MNIST-1D CNN, batch 100 per rank):
the step time of DistributedDataParallel with the allreduce overlapping backward, the same with
the allreduce after backward (``overlap=False``), and the step without any communication
(``no_sync``: the compute alone). Then the allreduce of a buffer of the model's gradient size
through nodegrad's communicator against mpi4py's own ``Allreduce`` on the same buffer, as
algorithm bandwidth (bytes / time) and ring bus bandwidth (2(N-1)/N bytes / time).
Weak scaling: efficiency = step time on 1 rank / step time on N ranks (ideal 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _models():
    import nodegrad as ng
    from nodegrad import nn

    def w2():
        return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                             nn.Linear(1024, 10)), (784,), 256

    def w3():
        return ng.models.mnist1d.CNN(), (40,), 100
    return {"W2": w2, "W3": w3}


def _time_steps(step, steps: int, comm, warmup: int = 3) -> float:
    """Median seconds per step over ``steps`` (slowest rank of each step)."""
    for _ in range(warmup):
        step()
    comm.barrier()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        t = np.array([time.perf_counter() - t0])
        comm.allreduce(t, "max")
        times.append(float(t[0]))
    return statistics.median(times)


def worker(steps: int, out: str) -> None:
    import nodegrad as ng
    from nodegrad.distributed import DistributedDataParallel, init
    from nodegrad.nn import functional as F

    comm = init(timeout=600)
    res: dict = {"ranks": comm.world_size, "models": {}}
    for name, make in _models().items():
        ng.manual_seed(0)
        model, shape, batch = make()
        rng = np.random.default_rng(comm.rank)
        x = ng.tensor(rng.standard_normal((batch, *shape)).astype(np.float32))
        y = ng.tensor(rng.integers(0, 10, batch))
        row = {"params": sum(p.numel() for p in model.parameters()), "batch": batch}
        for mode in ("overlap", "after", "compute"):
            ddp = DistributedDataParallel(model, comm, overlap=mode == "overlap")
            opt = ng.optim.Adam(model.parameters(), lr=1e-4)

            def step(ddp=ddp, opt=opt, mode=mode):
                opt.zero_grad()
                if mode == "compute":
                    with ddp.no_sync():
                        F.cross_entropy(ddp(x), y).backward()
                else:
                    F.cross_entropy(ddp(x), y).backward()
                opt.step()
            row[mode] = _time_steps(step, steps, comm)
            for h in ddp._handles:  # the next wrapper registers its own hooks
                h.remove()
        nbytes = 4 * row["params"]
        buf = np.ones(row["params"], np.float32)
        row["bytes"] = nbytes
        mpi = getattr(comm, "comm", None)
        if mpi is None:
            row["allreduce_nodegrad"] = _time_steps(lambda: comm.allreduce(buf), steps, comm)
        else:  # alternated, so that a disturbance of the machine hits both alike
            from mpi4py import MPI
            ours, theirs = [], []
            for _ in range(steps):
                ours.append(_time_steps(lambda: comm.allreduce(buf), 1, comm, 1))
                theirs.append(_time_steps(lambda: mpi.Allreduce(MPI.IN_PLACE, buf), 1, comm,
                                          1))
            row["allreduce_nodegrad"] = statistics.median(ours)
            row["allreduce_mpi4py"] = statistics.median(theirs)
        res["models"][name] = row
    if comm.rank == 0:
        Path(out).write_text(json.dumps(res))


def run(ranks: int, steps: int) -> dict:
    from nodegrad.distributed.launch import mpirun_command

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "res.json")
        argv = [sys.executable, "-m", "benchmarks.distributed", "--worker", "--steps",
                str(steps), "--out", out]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}
        cmd = argv if ranks == 1 else mpirun_command(ranks, argv)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                           cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"{ranks} ranks failed:\n{r.stdout}\n{r.stderr}")
        return json.loads(Path(out).read_text())


def table(results: list[dict]) -> str:
    base = {m: r for m, r in results[0]["models"].items()} if results[0]["ranks"] == 1 else {}
    lines = ["| model | ranks | step, overlap (ms) | step, allreduce after backward (ms) | "
             "compute only (ms) | weak-scaling efficiency | allreduce nodegrad (ms) | "
             "allreduce mpi4py (ms) | bus bandwidth (GB/s) |", "|---" * 9 + "|"]
    for res in results:
        n = res["ranks"]
        for m, r in res["models"].items():
            eff = f"{base[m]['overlap'] / r['overlap']:.2f}" if m in base else "-"
            t = r["allreduce_nodegrad"]
            bus = f"{2 * (n - 1) / n * r['bytes'] / t / 1e9:.2f}" if n > 1 else "-"
            mp = r.get("allreduce_mpi4py")
            lines.append(f"| {m} ({r['params']:,} params, batch {r['batch']}/rank) | {n} | "
                         f"{1e3 * r['overlap']:.1f} | {1e3 * r['after']:.1f} | "
                         f"{1e3 * r['compute']:.1f} | {eff} | {1e3 * t:.2f} | "
                         f"{'-' if mp is None else f'{1e3 * mp:.2f}'} | {bus} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="rank counts, comma-separated")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--quick", action="store_true", help="5 steps per measurement")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    steps = 5 if a.quick else a.steps
    if a.worker:
        worker(steps, a.out)
        return 0
    results = [run(int(n), steps) for n in a.ranks.split(",")]
    print(f"{os.cpu_count()} CPUs, one BLAS thread per rank, {steps} timed steps each "
          "(median; the slowest rank per step)")
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
