"""PyTorch's ``torch.utils.benchmark``: :class:`Timer` runs a statement many times and returns
a :class:`Measurement` (times per run, median, mean, IQR) with PyTorch's repr.

``stmt`` and ``setup`` are Python source (run with ``globals``) or callables. A timing reads
the clock only after the GPUs the statement uses have finished their queued work (CuPy runs
kernels asynchronously): those holding a tensor or module found in ``globals`` or a callable's
closure, and the default device if it is a GPU. Without any, nothing is synchronised.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time
import timeit as _timeit
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from ..tensor import Tensor, get_default_device

__all__ = ["Timer", "Measurement", "TaskSpec", "select_unit"]

_IQR_WARN_THRESHOLD = 0.1
_IQR_GROSS_WARN_THRESHOLD = 0.25


def select_unit(t: float) -> tuple[str, float]:
    """The unit ('ns', 'us', 'ms' or 's') and its scale in seconds that shows ``t`` seconds
    as a number of order 1."""
    import math

    mag = math.floor(math.log10(t) // 3) if t > 0 else -3
    unit = {-3: "ns", -2: "us", -1: "ms"}.get(mag, "s")
    return unit, {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What was timed: the statement, its setup and the labels a report groups by."""

    stmt: str
    setup: str
    label: str | None = None
    sub_label: str | None = None
    description: str | None = None
    env: str | None = None
    num_threads: int = 1

    @property
    def title(self) -> str:
        """The label (or the statement) and sub-label, as a heading."""
        sub = f": {self.sub_label}" if self.sub_label else ""
        if self.label is not None:
            return self.label + sub
        if "\n" not in self.stmt:
            return self.stmt + sub
        return (f"stmt:{f' ({self.sub_label})' if self.sub_label else ''}\n"
                f"{textwrap.indent(self.stmt, '  ')}")

    def setup_str(self) -> str:
        if self.setup in ("pass", ""):
            return ""
        if "\n" in self.setup:
            return f"setup:\n{textwrap.indent(self.setup, '  ')}"
        return f"setup: {self.setup}"

    def summarize(self) -> str:
        sections = [self.title, self.description or "", self.setup_str()]
        return "\n".join(f"{s}\n" if "\n" in s else s for s in sections if s)


@dataclasses.dataclass(repr=False)
class Measurement:
    """Replicate timings of one statement: ``raw_times`` are seconds per block of
    ``number_per_run`` runs; ``times`` are seconds per run, summarised by ``median``,
    ``mean`` and ``iqr`` (75th minus 25th percentile, linear interpolation)."""

    number_per_run: int
    raw_times: list[float]
    task_spec: TaskSpec
    metadata: dict | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("stmt", "setup", "label", "sub_label", "description", "env",
                    "num_threads", "title"):
            return getattr(self.task_spec, name)
        raise AttributeError(f"'Measurement' object has no attribute {name!r}")

    @property
    def times(self) -> list[float]:
        return [t / self.number_per_run for t in self.raw_times]

    def _q(self, q: float) -> float:
        return float(B.np.quantile(B.np.asarray(self.times, dtype=B.np.float64), q))

    @property
    def median(self) -> float:
        return self._q(0.5)

    @property
    def mean(self) -> float:
        return float(B.np.mean(self.times))

    @property
    def iqr(self) -> float:
        return self._q(0.75) - self._q(0.25)

    def meets_confidence(self, threshold: float = _IQR_WARN_THRESHOLD) -> bool:
        """Whether the IQR is below ``threshold`` times the median."""
        return self.iqr / self.median < threshold

    @property
    def _warnings(self) -> tuple[str, ...]:
        if self.meets_confidence(_IQR_WARN_THRESHOLD):
            return ()
        why = ("This suggests significant environmental influence."
               if not self.meets_confidence(_IQR_GROSS_WARN_THRESHOLD)
               else "This could indicate system fluctuation.")
        return (f"  WARNING: Interquartile range is {self.iqr / self.median * 100:.1f}% of "
                f"the median measurement.\n           {why}",)

    @property
    def has_warnings(self) -> bool:
        return bool(self._warnings)

    def __repr__(self) -> str:
        n = len(self.times)
        med, p25, p75 = self.median, self._q(0.25), self._q(0.75)
        unit, scale = select_unit(med)
        nt = self.task_spec.num_threads
        lines = [f"<{type(self).__module__}.{type(self).__qualname__} object at "
                 f"{hex(id(self))}>", self.task_spec.summarize(),
                 f"  {'Median: ' if n > 1 else ''}{med / scale:.2f} {unit}"]
        if n >= 4:
            lines.append(f"  IQR:    {(p75 - p25) / scale:.2f} {unit} ({p25 / scale:.2f} to "
                         f"{p75 / scale:.2f})")
        lines.append(f"  {n} measurement{'s' if n > 1 else ''}, {self.number_per_run} runs "
                     f"{'per measurement,' if n > 1 else ','} {nt} thread{'s' if nt > 1 else ''}")
        lines.extend(self._warnings)
        return "\n".join(line for s in lines for line in s.split("\n"))


def _gpu_ids(values) -> set[int]:
    """The CUDA devices of the tensors (and modules' parameters) among ``values``."""
    ids: set[int] = set()
    for v in values:
        ts = [v] if isinstance(v, Tensor) else list(v.parameters()) if hasattr(
            v, "parameters") and callable(v.parameters) else []
        ids |= {t.backend.device_id for t in ts[:1] if isinstance(t, Tensor)
                and t.backend.device_id is not None}
    return ids


def _source(code, what: str) -> str | Callable:
    if callable(code):
        return code
    if not isinstance(code, str):
        raise TypeError(f"Timer: {what} must be Python source (a str) or a callable, "
                        f"got {type(code).__name__}")
    code = textwrap.dedent(code)
    return (code[1:] if code.startswith("\n") else code).rstrip() or "pass"


class Timer:
    """Time ``stmt`` as ``torch.utils.benchmark.Timer``: ``timeit(number)`` runs it
    ``number`` times once; ``blocked_autorange(min_run_time)`` picks a block size whose clock
    overhead is negligible and times blocks for at least ``min_run_time`` seconds;
    ``adaptive_autorange(threshold)`` times blocks until the IQR is below ``threshold``
    of the median. ``num_threads`` limits the BLAS threads while timing, as torch's;
    ``timer`` replaces the clock (``time.perf_counter``). The arguments keep torch's order;
    ``ng`` is available to a string ``stmt`` as torch's Timer provides ``torch``."""

    def __init__(self, stmt: str | Callable = "pass", setup: str | Callable = "pass",
                 global_setup: str = "", timer: Callable[[], float] | None = None,
                 globals: dict | None = None, label: str | None = None,
                 sub_label: str | None = None, description: str | None = None,
                 env: str | None = None, num_threads: int = 1,
                 language: str = "python") -> None:
        import nodegrad

        if language not in ("python", "py"):
            raise ValueError(f"Timer: only Python statements can be timed (language="
                             f"'python'), got {language!r}")
        if global_setup:
            raise ValueError(f"Timer: global_setup is for C++ statements only, got "
                             f"{global_setup!r}; put Python set-up code in setup")

        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(f"Timer: num_threads must be a positive int, got {num_threads!r}")
        if globals is not None and not isinstance(globals, dict):
            raise TypeError(f"Timer: globals must be a dict, got {type(globals).__name__}")
        stmt, setup = _source(stmt, "stmt"), _source(setup, "setup")
        self._globals = dict(globals or {})
        self._globals.setdefault("ng", nodegrad)  # as torch's Timer provides `torch`
        seen = list(self._globals.values())
        for fn in (stmt, setup):
            if callable(fn):
                seen += [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
                         if c.cell_contents is not None]
        gpus = _gpu_ids(seen)
        dev = str(get_default_device())
        if dev.startswith("cuda"):
            gpus.add(B.get_backend(dev).device_id)
        self._gpus = tuple(sorted(gpus))
        clock = timer or time.perf_counter

        def synced() -> float:
            for i in self._gpus:
                B.cuda_synchronize(i)
            return clock()

        self._timer = _timeit.Timer(stmt=stmt, setup=setup, timer=synced,
                                    globals=self._globals)

        def name(c) -> str:
            return f"{getattr(c, '__qualname__', type(c).__name__)}()" if callable(c) else c

        self._task_spec = TaskSpec(name(stmt), name(setup), label, sub_label, description,
                                   env, num_threads)

    def _threads(self):
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=self._task_spec.num_threads, user_api="blas")

    def _time(self, number: int) -> float:
        return max(self._timer.timeit(number), 1e-9)

    def timeit(self, number: int = 1000000) -> Measurement:
        """Run the statement ``number`` times (after a short warm-up) and time the lot."""
        if not isinstance(number, int) or number < 1:
            raise ValueError(f"Timer.timeit: number must be a positive int, got {number!r}")
        with self._threads():
            self._time(max(number // 100, 2))
            return Measurement(number, [self._time(number)], self._task_spec)

    def _block_size(self, min_run_time: float) -> int:
        overhead = float(B.np.median([self._time(0) for _ in range(5)]))
        number = 1
        while True:
            taken = self._time(number)
            if overhead / taken <= 1e-4 and taken >= min_run_time / 1000:
                break
            if taken > min_run_time or number * 10 > 2147483647:
                break
            number *= 10
        return number

    def _loop(self, number: int, stop: Callable[[list[float]], bool], min_run_time: float,
              max_run_time: float | None, callback) -> list[float]:
        total, can_stop, times = 0.0, False, []
        while total < min_run_time or not can_stop:
            t = self._time(number)
            times.append(t)
            total += t
            if callback:
                callback(number, t)
            can_stop = stop(times)
            if max_run_time and total > max_run_time:
                break
        return times

    def blocked_autorange(self, callback: Callable[[int, float], Any] | None = None,
                          min_run_time: float = 0.2) -> Measurement:
        """Time blocks of runs, the block size chosen so the clock's overhead is below 0.01%,
        until ``min_run_time`` seconds have been spent."""
        if not min_run_time > 0:
            raise ValueError(f"Timer.blocked_autorange: min_run_time must be positive, got "
                             f"{min_run_time}")
        with self._threads():
            number = self._block_size(min_run_time)
            times = self._loop(number, lambda ts: True, min_run_time, None, callback)
        return Measurement(number, times, self._task_spec)

    def adaptive_autorange(self, threshold: float = 0.1, *, min_run_time: float = 0.01,
                           max_run_time: float = 10.0,
                           callback: Callable[[int, float], Any] | None = None) -> Measurement:
        """Time blocks until more than 3 were taken, ``min_run_time`` has passed and the IQR
        is below ``threshold`` times the median, or ``max_run_time`` has passed."""
        if not (threshold > 0 and min_run_time > 0 and max_run_time > 0):
            raise ValueError(f"Timer.adaptive_autorange: threshold, min_run_time and "
                             f"max_run_time must be positive, got {threshold}, {min_run_time}, "
                             f"{max_run_time}")

        def stop(ts: list[float]) -> bool:
            return len(ts) > 3 and Measurement(number, ts, self._task_spec).meets_confidence(
                threshold)

        with self._threads():
            number = self._block_size(0.05)
            times = self._loop(number, stop, min_run_time, max_run_time, callback)
        return Measurement(number, times, self._task_spec)
