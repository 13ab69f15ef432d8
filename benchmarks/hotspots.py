"""Profile nodegrad's step of one workload with cProfile: ``python -m benchmarks.hotspots W1``.

Prints the functions with the most own time and a breakdown of the step by where the time goes
(each nodegrad file, NumPy's C functions, Python builtins), in µs per step. cProfile adds a
fixed cost to every Python call, so Python-level code looks heavier than it is; compare the
shares between runs rather than reading them as wall time. NumPy ufuncs (np.add, np.matmul, ...)
are invisible to cProfile: their time is the own time of the op's forward (``_matmul_fwd``).
Like the harness's worker, it first runs a tiny step of the usual ops, so the paths taken where
numba is loaded (fused updates, the eager loops) are the ones profiled.
OpenBLAS runs on one thread here by default: with two, its products slow down ~50x under
cProfile (the profiler and its spinning worker thread interfere), which would hide everything.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections import defaultdict

from . import all_workloads
from ._harness import _framework_ready, _openblas, set_blas_threads


def _area(filename: str, name: str) -> str:
    """Where a profiled function lives: 'nodegrad/<file>', 'numpy (C)', 'builtins', ..."""
    path = filename.replace("\\", "/")
    if "/nodegrad/" in path:
        return "nodegrad/" + path.split("/nodegrad/", 1)[1]
    if filename == "~":  # C functions
        return "numpy (C)" if "numpy" in name or "ufunc" in name else "builtins (C)"
    if "/numpy/" in path:
        return "numpy (Python)"
    return "other Python"


def profile(workload_id: str, steps: int | None, top: int, sort: str) -> None:
    by_id = {w.id.upper(): w for w in all_workloads()}
    w = by_id.get(workload_id.upper())
    if w is None:
        raise SystemExit(f"unknown workload {workload_id!r}; choose from {', '.join(by_id)}")
    _framework_ready("nodegrad")  # as the harness's worker: numba's loops loaded, as they are there
    step = w.nodegrad(w.data())
    step()  # one-off costs (state allocation, the fused optimiser kernels' start-up) not timed
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    per = (time.perf_counter() - t0) / 10
    steps = steps or max(10, int(3.0 / per))  # about 3 s unprofiled
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    print(f"# {w.id} {w.label}: nodegrad step, {steps} steps profiled; "
          f"{per * 1e6:.0f} µs/step unprofiled, {total / steps * 1e6:.0f} µs/step under cProfile"
          f" (OpenBLAS threads: {_openblas().get('openblas_threads', '?')})")
    areas: dict = defaultdict(float)
    for (filename, _, name), (_, _, tt, _, _) in stats.stats.items():
        areas[_area(filename, name)] += tt
    print("\n# own time by area (µs/step under cProfile, share)")
    for area, tt in sorted(areas.items(), key=lambda kv: -kv[1]):
        print(f"{tt / steps * 1e6:9.1f}  {tt / total:6.1%}  {area}")
    print(f"\n# top {top} functions by {sort}")
    stats.sort_stats(sort)
    stats.print_stats(top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", nargs="?", default="W1", help="workload id (default W1)")
    p.add_argument("--steps", type=int, help="steps to profile (default: about 3 s worth)")
    p.add_argument("--top", type=int, default=25, help="functions to list")
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads while profiling (default 1; 0 leaves the default)")
    args = p.parse_args(argv)
    if args.blas_threads and not set_blas_threads(args.blas_threads):
        print("# could not set the OpenBLAS thread count; matmul times may be inflated")
    os.environ.setdefault("COLUMNS", "160")
    profile(args.workload, args.steps, args.top, args.sort)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
