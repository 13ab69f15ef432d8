"""The timing harness: interleaved repetitions, medians, ratios, the environment and the table.

A :class:`Workload` gives one step function per framework, all built from the same NumPy data.
By default each framework runs in a process of its own (a worker that builds its step once and
times blocks of steps on request), as a user runs one framework or the other: inside one process
PyTorch's and OpenBLAS's thread pools contend and flatter the slower library. ``--in-process``
keeps the old single-process mode, labelled as such. Every repetition times a block of steps of
each framework in turn (the order rotates), so slow drift of these shared machines hits all of
them alike. A time is the median over repetitions; a ratio is the median over repetitions of the
ratio within one repetition. Before and after each block a worker waits until none of its threads
is still spinning (see :func:`_settle`), so no framework pays for another one's idle BLAS/OpenMP
threads, and runs untimed steps for at least 50 ms first (:func:`_time_block`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path

import numpy as np

Step = Callable[[], object]
Factory = Callable[[dict], Step]
FRAMEWORKS = ("nodegrad", "torch", "floor", "jax")


@dataclass(frozen=True)
class Workload:
    """One benchmark: its data and a step builder per framework.

    Each builder receives a private copy of ``data()`` and returns a zero-argument ``step``.
    ``step()`` returns the loss (or the forward output, for a floor), which the harness compares
    once across frameworks before timing; a floor with nothing to compare returns None.
    Times are shown as seconds * ``scale`` in ``unit`` (W5: µs per op, scale = 1e6 / 100).
    """

    id: str
    label: str
    data: Callable[[], dict]
    nodegrad: Factory
    torch: Factory | None = None
    floor: Factory | None = None
    _: KW_ONLY  # the rest by name (a field added here once shifted positional units)
    floor_name: str = "NumPy"
    # the library whose warm-up step the floor's worker runs first, as every framework's worker
    # does ("nodegrad" where the floor is nodegrad eager: numba then imported as in W1-W8's
    # nodegrad workers, so eager takes its numba loops there too)
    floor_framework: str = "floor"
    unit: str = "ms/step"
    scale: float = 1e3
    jax: Factory | None = None  # JAX's jit of the same step: a reference column when installed


@dataclass(frozen=True)
class Settings:
    reps: int = 41          # timed repetitions per framework (median over them)
    block_s: float = 0.02   # each repetition runs enough steps to last about this long
    warm_s: float = 0.3     # warm-up time per framework before timing
    rewarm: int = 1         # untimed steps before each block (after waiting for quiet) ...
    rewarm_s: float = 0.05  # ... lasting at least this long (see _time_block)


DEFAULT = Settings()
QUICK = Settings(reps=15, block_s=0.01, warm_s=0.1)


# --- environment -----------------------------------------------------------------------------
def import_torch(disabled: bool = False):
    """The torch module, or None when it is not installed (or disabled by ``--no-torch``)."""
    if disabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def import_jax(disabled: bool = False):
    """The jax module, or None when it is not installed (``pip install nodegrad[bench]``)."""
    if disabled:
        return None
    try:
        import jax
    except ImportError:
        return None
    return jax


def _openblas_fn(name: str):
    """The OpenBLAS function ``name`` (e.g. 'get_corename') NumPy is linked with, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower()
                            and ln.split()[-1].startswith("/")})
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix in ("scipy_openblas_", "openblas_"):
                for suffix in ("64_", ""):
                    fn = getattr(lib, prefix + name + suffix, None)
                    if fn is not None:
                        return fn
    except (OSError, AttributeError, ValueError):
        pass
    return None


def _openblas() -> dict:
    """The OpenBLAS core type and thread count NumPy runs with (best effort, via ctypes)."""
    info: dict = {}
    core, nthreads = _openblas_fn("get_corename"), _openblas_fn("get_num_threads")
    if core is not None:
        core.restype = ctypes.c_char_p
        info["openblas_core"] = core().decode()
    if nthreads is not None:
        nthreads.restype = ctypes.c_int
        info["openblas_threads"] = nthreads()
    return info


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count for this process at run time (no environment variable)."""
    fn = _openblas_fn("set_num_threads")
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int]
    fn(int(n))
    return True


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git() -> str | None:
    """Short commit of the working tree, with '+dirty' when nodegrad/ has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "nodegrad"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def environment(torch, jax=None) -> dict:
    import nodegrad

    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "jax": jax.__version__ if jax is not None else None,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),  # read only, never set
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "nodegrad": nodegrad.__version__,
        "git": _git(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    env.update(_openblas())
    return env


def header(env: dict, settings: Settings, separate: bool = True) -> str:
    torch = "- (not installed, or --no-torch)" if env["torch"] is None else \
        f"{env['torch']} ({env['torch_threads']} threads)"
    blas = ""
    if "openblas_core" in env:
        blas = f" (OpenBLAS core {env['openblas_core']}, {env.get('openblas_threads')} threads)"
    return "\n".join([
        f"# nodegrad {env['nodegrad']} (git {env['git'] or '?'})  {env['date']}",
        f"# python {env['python']}  numpy {env['numpy']}{blas}  torch {torch}"
        f"  jax {env.get('jax') or '-'}",
        f"# OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or 'unset'}  cpus {env['cpu_count']}"
        f"  cpu {env['cpu']}",
        f"# median of {settings.reps} interleaved repetitions (~{settings.block_s * 1e3:g} ms "
        "each); ng/X = median of per-repetition ratios nodegrad / X, < 1: nodegrad is faster",
        "# 95% CI = a distribution-free 95 % interval for ng/PT's median (order statistics of "
        "the per-repetition ratios); one that holds 1.00 is a tie at this run's noise",
        "# each framework in its own process" if separate else
        "# IN-PROCESS mode: all frameworks in one process (their thread pools contend; "
        "ratios differ from what a user running one framework sees)",
        "# bg = cores busy with other processes meanwhile (above ~0.2 the figures are disturbed)",
        "# 1st = the first call of a step (for jit: trace and compile), ms, nodegrad / JAX",
    ])


# --- timing ----------------------------------------------------------------------------------
def _as_float(v) -> float | None:
    """A returned loss/output as one number (the sum of its elements) for the cross-check."""
    if v is None:
        return None
    if hasattr(v, "detach"):  # torch
        v = v.detach().cpu().numpy()
    return float(np.asarray(v, dtype=np.float64).sum())


def _check(values: dict) -> str:
    """'ok' when every framework's first-step value matches nodegrad's (rtol 1e-3)."""
    ref = values.get("nodegrad")
    others = {k: v for k, v in values.items() if k != "nodegrad" and v is not None}
    if ref is None or not others:
        return "-"
    if not np.isfinite(ref):
        return "nan"
    bad = [f"{k} {abs(v - ref) / max(abs(ref), 1e-12):.0e}" for k, v in others.items()
           if not abs(v - ref) <= 1e-3 * max(abs(ref), 1e-6)]
    return "ok" if not bad else "DIFF " + ",".join(bad)


def _settle(slice_s: float = 0.01, max_s: float = 0.5) -> float:
    """Sleep until the process stops using CPU (its BLAS/OpenMP worker threads stop spinning).

    OpenBLAS's workers spin for ~0.1 s after a multithreaded product and PyTorch's OpenMP
    workers for ~10 ms; on a 2-core machine they would steal a core from the next framework.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        c = time.process_time()
        time.sleep(slice_s)
        if time.process_time() - c < 0.1 * slice_s:
            break
    return time.perf_counter() - t0


def _busy() -> tuple[float, float, float]:
    """(wall s, CPU s used by the whole machine, CPU s used by this process) for load accounting."""
    wall, own = time.perf_counter(), time.process_time()
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        machine = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        machine = float("nan")
    return wall, machine, own


def background_cores(start: tuple, end: tuple) -> float | None:
    """Cores' worth of CPU that other processes used between two :func:`_busy` readings."""
    wall, machine, own = (b - a for a, b in zip(start, end))
    if not np.isfinite(machine) or wall <= 0:
        return None
    return max(0.0, (machine - own) / wall)


def _inner(step: Step, settings: Settings) -> int:
    """Warm ``step`` up and return how many calls fill one timed block."""
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < settings.warm_s:
        step()
        n += 1
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return max(1, round(settings.block_s / max(best, 1e-9)))


def _fresh(w: Workload) -> dict:
    """A private copy of the workload's data for one framework."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in w.data().items()}


def _time_block(step: Step, n: int, settings: Settings) -> float:
    """Seconds per step over one block of ``n`` steps, after quiet and the untimed re-warm:
    ``rewarm`` steps and at least ``rewarm_s`` seconds of them. A worker woken from the settle's
    sleep runs slower for a while on these VMs (W8's steps after a 0.2 s sleep: 3.2, 1.7, 1.5,
    1.4, 1.4, 1.4, 1.3, 1.2, 1.1 times a steady step, ~40 ms in all, PyTorch's alike but
    erratic), which a block of one or two steps measured instead of training's steady state."""
    _settle()
    t0 = time.perf_counter()
    done = 0
    while done < settings.rewarm or time.perf_counter() - t0 < settings.rewarm_s:
        step()
        done += 1
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def _factories(w: Workload, torch, jax) -> dict:
    return {"nodegrad": w.nodegrad, "torch": w.torch if torch is not None else None,
            "floor": w.floor, "jax": w.jax if jax is not None else None}


def measure(w: Workload, settings: Settings, torch, jax=None) -> dict:
    """In-process mode: build every framework's step here, cross-check, time them interleaved."""
    steps: dict[str, Step] = {}
    first: dict[str, float] = {}
    values: dict = {}
    for name, make in _factories(w, torch, jax).items():
        if make is not None:
            steps[name] = make(_fresh(w))
            t0 = time.perf_counter()
            values[name] = _as_float(steps[name]())
            first[name] = time.perf_counter() - t0
    check = _check(values)
    names = list(steps)
    inner = {name: _inner(steps[name], settings) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    start = _busy()
    for r in range(settings.reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(_time_block(steps[name], inner[name], settings))
    res = _summarise(w, samples, inner, check, first)
    res["background_cores"] = background_cores(start, _busy())
    return res


# --- one process per framework ---------------------------------------------------------------
def _find(module: str, wid: str) -> Workload:
    """The workload ``wid`` (how a worker finds its job): in the module that defines its step
    builder, else anywhere in the suite (a file may reuse another file's builders)."""
    import importlib

    mod = importlib.import_module(module)
    found = [w for w in getattr(mod, "WORKLOADS", ()) if w.id == wid]
    if not found:
        from benchmarks import all_workloads

        found = [w for w in all_workloads() if w.id == wid]
    if not found:
        raise LookupError(f"no workload {wid} in {module} or the suite")
    return found[0]


def _rss_kib(field: str = "VmRSS") -> int | None:
    """This process's resident size ("VmRSS") or its high-water mark ("VmHWM") in KiB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> int | None:
    """Reset the high-water mark to the current resident size (Linux's clear_refs) and return
    that size in KiB, or None where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _rss_kib()


def _framework_ready(framework: str) -> None:
    """Import the framework and run a tiny step of the usual ops (products, 1-D and 2-D
    convolutions, ReLU, cross-entropy, backward, Adam, SGD; for nodegrad with numba installed,
    the fused updates, which import numba, and a linear layer, a ReLU and a cross-entropy large
    enough for its numba loops), so that the memory baseline taken next already holds the
    libraries and kernels they load on first use, not the workload's data."""
    if framework == "torch":
        import torch as lib
        from torch.nn import functional as F

        tensor = lib.ones
    elif framework == "nodegrad":
        import nodegrad as lib
        from nodegrad.nn import functional as F

        tensor = lib.ones
    else:
        return
    x = tensor(2, 1, 4, 4, requires_grad=True)
    w = tensor(1, 1, 3, 3, requires_grad=True)
    y = F.conv2d(x, w).sum() + F.conv1d(x[:, :, 0], w[:, :, 0]).sum()
    logits = (x.reshape(2, 16) @ tensor(16, 3)).relu()
    tensor(100, 100) @ tensor(100, 100)  # a product large enough for a BLAS thread rule
    (F.cross_entropy(logits, lib.zeros(2, dtype=lib.int64)) + y).backward()
    fused = {"fused": True} if framework == "nodegrad" and _has_numba() else {}
    # numba too (fused updates, jit kernels, the eager loops): loaded here as a run that has
    # trained for 10 s has it (nodegrad imports it itself then), so the figures are training's
    # steady state, not its first seconds
    lib.optim.Adam([x, w], **fused).step()
    lib.optim.SGD([x, w], lr=0.1, **fused).step()
    if fused:  # the loops nodegrad's eager ReLU, bias add and cross-entropy take once numba
        big = tensor(32, 32, requires_grad=True)  # is loaded
        (F.linear(big, big, big[0]).relu() * big).sum().backward()
        narrow = tensor(32, 10, requires_grad=True)
        F.cross_entropy(narrow, lib.zeros(32, dtype=lib.int64)).backward()


def _has_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def _worker(module: str, wid: str, framework: str, settings: Settings, conn) -> None:
    """Build one framework's step, report its first value and block size, then time blocks of
    steps whenever the parent asks ("block"), until it says "stop". Each reply carries the
    process's peak resident memory above the baseline taken before the step was built."""
    try:
        w = _find(module, wid)
        _framework_ready(w.floor_framework if framework == "floor" else framework)
        w.data()  # once, discarded: the code that makes the data (NumPy's random generators,
        # ~2 MiB of pages on first use) then sits in the baseline of every framework alike;
        # the workload's own copy below is still counted
        gc.collect()
        base = _rss_kib()
        step = getattr(w, framework)(_fresh(w))
        t0 = time.perf_counter()
        value = _as_float(step())
        first = time.perf_counter() - t0
        n = _inner(step, settings)
        _settle()
        whole = _rss_kib("VmHWM")  # the high-water mark of building and warming up
        steady = _reset_hwm()  # after warm-up: what the timed steps add to the resident set
        conn.send(("ready", (value, first), n))
        while conn.recv() == "block":
            t = _time_block(step, n, settings)
            _settle()  # quiet before the parent hands the machine to the next framework
            hwm = _rss_kib("VmHWM")
            peak = None
            if base is not None and hwm is not None and whole is not None:
                peak = {"peak_bytes": (max(hwm, whole) - base) * 1024,
                        "step_peak_bytes": None if steady is None else (hwm - steady) * 1024}
            conn.send(("time", t, time.process_time(), peak))
    except BaseException as e:  # reported to the parent, which names the workload
        conn.send(("error", f"{type(e).__name__}: {e}", None))
    finally:
        conn.close()


class _Worker:
    """A framework's step living in its own (spawned) process."""

    def __init__(self, w: Workload, framework: str, settings: Settings):
        fn = getattr(w, framework)
        module = getattr(fn, "func", fn).__module__  # a functools.partial names its function's
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(module, w.id, framework, settings, child),
                                daemon=True)
        self.proc.start()
        child.close()
        self.name, self.cpu, self.peak = framework, 0.0, None
        (self.value, self.first), self.n = self._reply("ready")

    def _reply(self, kind: str):
        msg = self.conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"{self.name} worker failed: {msg[1]}")
        assert msg[0] == kind, msg
        if len(msg) > 3:
            self.peak = msg[3]
        return msg[1], msg[2]

    def block(self) -> float:
        self.conn.send("block")
        t, self.cpu = self._reply("time")
        return t

    def close(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


def measure_processes(w: Workload, settings: Settings, torch, jax=None) -> dict:
    """Each framework's step in its own process, built one after another, timed interleaved."""
    workers: dict[str, _Worker] = {}
    try:
        for name, make in _factories(w, torch, jax).items():
            if make is not None:
                workers[name] = _Worker(w, name, settings)
        check = _check({name: wk.value for name, wk in workers.items()})
        names = list(workers)
        samples: dict[str, list[float]] = {name: [] for name in names}
        cpu0 = {name: wk.cpu for name, wk in workers.items()}
        start = _busy()
        for r in range(settings.reps):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(workers[name].block())
        end = _busy()
    finally:
        for wk in workers.values():
            wk.close()
    res = _summarise(w, samples, {name: wk.n for name, wk in workers.items()}, check,
                     {name: wk.first for name, wk in workers.items()})
    for name, wk in workers.items():
        res[name].update(wk.peak or {"peak_bytes": None, "step_peak_bytes": None})
    mem = {name: wk.peak["peak_bytes"] for name, wk in workers.items() if wk.peak}
    res["memory_ratio_torch"] = (mem["nodegrad"] / mem["torch"]
                                 if "nodegrad" in mem and "torch" in mem else None)
    # the workers' CPU is ours: only the rest of the machine counts as background
    own = sum(wk.cpu - cpu0[name] for name, wk in workers.items())
    res["background_cores"] = background_cores(start, (end[0], end[1], end[2] + own))
    return res


def _summarise(w: Workload, samples: dict, inner: dict, check: str,
               first: dict | None = None) -> dict:
    res: dict = {"id": w.id, "label": w.label, "unit": w.unit, "floor_name": w.floor_name,
                 "check": check, "first_call_s": dict(first or {})}
    med = {}
    for name in FRAMEWORKS:
        s = samples.get(name)
        if not s:
            res[name] = None
            continue
        q1, _, q3 = (x * w.scale for x in statistics.quantiles(s, n=4)) if len(s) > 1 \
            else (s[0] * w.scale,) * 3
        med[name] = statistics.median(s) * w.scale
        res[name] = {"median": med[name], "q1": q1, "q3": q3, "steps_per_rep": inner[name],
                     "reps": len(s)}
    for other, key in (("torch", "ratio_torch"), ("floor", "ratio_floor"),
                       ("jax", "ratio_jax")):
        if other in med:
            # the ratio within each repetition, then the median: blocks of one repetition run
            # back to back, so a change of machine speed between repetitions cancels out
            ratios = [a / b for a, b in zip(samples["nodegrad"], samples[other])]
            res[key] = statistics.median(ratios)
            res[key + "_ci"] = median_interval(ratios)
            res[key + "_of_medians"] = med["nodegrad"] / med[other]
        else:
            res[key] = res[key + "_ci"] = res[key + "_of_medians"] = None
    return res


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple | None:
    """A distribution-free interval for the median of ``values``' population: the order
    statistics ``(x_(j), x_(n+1-j))`` for the largest ``j`` whose coverage,
    ``1 - 2 P(Binomial(n, 1/2) < j)``, is at least ``level`` (15 repetitions: the 4th and
    12th of the sorted ratios, 96.5 %). None where no such pair exists (under 6 values at 95 %).
    A ratio whose interval holds 1.0 is a tie at this run's noise."""
    xs = sorted(values)
    n = len(xs)
    below, best = 0.0, None  # P(B < j), for j = 1, 2, ...
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2 ** n
        if 1 - 2 * below < level:
            break
        best = j
    return None if best is None else (xs[best - 1], xs[n - best])


# --- the table -------------------------------------------------------------------------------
_COLS = (("id", 3, "<"), ("workload", 45, "<"), ("unit", 7, "<"), ("nodegrad", 8, ">"),
         ("PyTorch", 8, ">"), ("ng/PT", 6, ">"), ("95% CI", 9, "<"), ("floor", 8, ">"),
         ("ng/floor", 8, ">"),
         ("floor is", 15, "<"), ("JAX", 8, ">"), ("ng/JAX", 6, ">"), ("1st", 11, ">"),
         ("ng MiB", 6, ">"), ("PT MiB", 6, ">"), ("bg", 4, ">"), ("check", 5, "<"))


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{c:{a}{n}}" for c, (_, n, a) in zip(cells, _COLS)).rstrip()


def table_header() -> str:
    head = _row([c[0] for c in _COLS])
    return head + "\n" + "-" * len(head)


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _interval(ci) -> str:
    return "-" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"


def table_row(r: dict) -> str:
    def med(name):
        return None if r.get(name) is None else r[name]["median"]

    first = r.get("first_call_s") or {}
    firsts = "/".join(_num(None if first.get(k) is None else first[k] * 1e3, ".0f")
                      for k in ("nodegrad", "jax") if k == "nodegrad" or k in first)

    def mib(name):
        peak = None if r.get(name) is None else r[name].get("peak_bytes")
        return None if peak is None else peak / 2 ** 20

    return _row([r["id"], r["label"], r["unit"], _num(med("nodegrad"), ".3g"),
                 _num(med("torch"), ".3g"), _num(r["ratio_torch"], ".2f"),
                 _interval(r.get("ratio_torch_ci")), _num(med("floor"), ".3g"),
                 _num(r["ratio_floor"], ".2f"),
                 r["floor_name"] if r["floor"] is not None else "-",
                 _num(med("jax"), ".3g"), _num(r.get("ratio_jax"), ".2f"), firsts,
                 _num(mib("nodegrad"), ".1f"), _num(mib("torch"), ".1f"),
                 _num(r["background_cores"], ".1f"), r["check"]])


# --- command line ----------------------------------------------------------------------------
def parse_args(argv, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--reps", type=int, help="timed repetitions (default 41, quick 15)")
    p.add_argument("--only", metavar="IDS", help="comma-separated workload ids, e.g. W1,W5")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX column even if installed")
    p.add_argument("--in-process", action="store_true",
                   help="run every framework in this one process (their thread pools contend; "
                        "by default each framework runs in a process of its own)")
    return p.parse_args(argv)


def main(workloads: Sequence[Workload], argv=None, description: str = "",
         collect: list | None = None) -> int:
    """Time ``workloads``, print the table (row by row), optionally write JSON; each workload's
    result is also appended to ``collect`` when given (for a caller's own summary)."""
    args = parse_args(argv, description or __doc__.splitlines()[0])
    settings = QUICK if args.quick else DEFAULT
    if args.reps:
        settings = replace(settings, reps=args.reps)
    if args.only:
        wanted = {s.strip().upper() for s in args.only.split(",")}
        workloads = [w for w in workloads if w.id.upper() in wanted]
        if not workloads:
            print(f"no workload matches --only {args.only}", file=sys.stderr)
            return 2
    torch = import_torch(args.no_torch)
    jax = import_jax(args.no_jax) if any(w.jax is not None for w in workloads) else None
    env = environment(torch, jax)
    print(header(env, settings, separate=not args.in_process))
    print(table_header(), flush=True)
    run = measure if args.in_process else measure_processes
    results = []
    for w in workloads:
        r = run(w, settings, torch, jax)
        results.append(r)
        if collect is not None:
            collect.append(r)
        print(table_row(r), flush=True)
    if args.json:
        out = {"env": env, "mode": "in-process" if args.in_process else "separate processes",
               "settings": vars(args) | {"reps": settings.reps,
                                                     "block_s": settings.block_s},
               "results": results}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"# results written to {args.json}")
    return 0
