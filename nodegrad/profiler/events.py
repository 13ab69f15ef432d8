"""What a profile records: one :class:`FunctionEvent` per timed range, their averages by name
(:class:`FunctionEventAvg`), and :class:`EventList`, which prints them as PyTorch's table and
writes them as a Chrome trace.

Times are in microseconds, as PyTorch's. An event's total time runs from its start to its end;
its self time is the total less the totals of the ranges nested directly inside it (on the same
thread), so the self times of all events add up to the time covered by top-level ranges.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable

#: what ``table(sort_by=...)`` accepts (PyTorch's keys; "cuda" and "device" name the same times)
SORT_KEYS = ("cpu_time", "cuda_time", "device_time", "cpu_time_total", "cuda_time_total",
             "device_time_total", "self_cpu_time_total", "self_cuda_time_total",
             "self_device_time_total", "cpu_memory_usage", "self_cpu_memory_usage", "count")
_CATEGORY = {"op": "cpu_op", "backward": "cpu_op", "user": "user_annotation",
             "optimizer": "user_annotation", "step": "user_annotation", "jit": "python_function"}


class FunctionEvent:
    """One timed range: an op's forward, a node's backward, or a named user range."""

    __slots__ = ("id", "name", "kind", "thread", "start_us", "end_us", "input_shapes", "stack",
                 "self_cpu_memory_usage", "cpu_memory_usage", "device_time_total",
                 "cpu_parent", "cpu_children")

    def __init__(self, id: int, name: str, kind: str, thread: int, start_us: float,
                 input_shapes: list | None = None, stack: list | None = None,
                 parent: FunctionEvent | None = None) -> None:
        self.id = id
        self.name = name
        self.kind = kind
        self.thread = thread
        self.start_us = start_us
        self.end_us: float | None = None
        self.input_shapes = input_shapes if input_shapes is not None else []
        self.stack = stack if stack is not None else []
        self.self_cpu_memory_usage = 0
        self.cpu_memory_usage = 0
        self.device_time_total = 0.0
        self.cpu_parent = parent
        self.cpu_children: list[FunctionEvent] = []

    key = property(lambda self: self.name, doc="the name the averages group by")
    count = property(lambda self: 1, doc="one call (an average counts its events)")
    time_range = property(lambda self: (self.start_us, self.end_us), doc="(start, end) in µs")
    is_user_annotation = property(lambda self: self.kind in ("user", "step", "optimizer"),
                                  doc="whether a record_function range made it")

    @property
    def cpu_time_total(self) -> float:
        """Wall time from start to end, in µs."""
        return self.end_us - self.start_us

    cpu_time = cpu_time_total

    @property
    def self_cpu_time_total(self) -> float:
        """Total time less that of the ranges directly inside, in µs."""
        return self.cpu_time_total - sum(c.cpu_time_total for c in self.cpu_children)

    @property
    def self_device_time_total(self) -> float:
        """Device time less that of the ranges directly inside, in µs."""
        return self.device_time_total - sum(c.device_time_total for c in self.cpu_children)

    cuda_time_total = property(lambda self: self.device_time_total)
    self_cuda_time_total = property(lambda self: self.self_device_time_total)
    device_time = cuda_time = cuda_time_total

    def __repr__(self) -> str:
        return (f"<FunctionEvent id={self.id} name={self.name!r} "
                f"cpu_time_total={self.cpu_time_total:.3f}us "
                f"self_cpu_time_total={self.self_cpu_time_total:.3f}us "
                f"input_shapes={self.input_shapes}>")


class FunctionEventAvg:
    """The events of one name (and input shapes or stack, when grouped so): sums and count."""

    def __init__(self, key: str, input_shapes: list | None = None,
                 stack: list | None = None) -> None:
        self.key = key
        self.input_shapes = input_shapes if input_shapes is not None else []
        self.stack = stack if stack is not None else []
        self.count = 0
        self.cpu_time_total = 0.0
        self.self_cpu_time_total = 0.0
        self.device_time_total = 0.0
        self.self_device_time_total = 0.0
        self.cpu_memory_usage = 0
        self.self_cpu_memory_usage = 0
        self.is_user_annotation = False

    def add(self, e) -> FunctionEventAvg:
        """Add an event's (or another average's) times, memory and count."""
        self.count += e.count
        self.cpu_time_total += e.cpu_time_total
        self.self_cpu_time_total += e.self_cpu_time_total
        self.device_time_total += e.device_time_total
        self.self_device_time_total += e.self_device_time_total
        self.cpu_memory_usage += e.cpu_memory_usage
        self.self_cpu_memory_usage += e.self_cpu_memory_usage
        self.is_user_annotation = e.is_user_annotation
        return self

    name = property(lambda self: self.key)
    cpu_time = property(lambda self: self.cpu_time_total / max(self.count, 1),
                        doc="mean total time per call, in µs")
    device_time = property(lambda self: self.device_time_total / max(self.count, 1),
                           doc="mean device time per call, in µs")
    cuda_time = device_time
    cuda_time_total = property(lambda self: self.device_time_total)
    self_cuda_time_total = property(lambda self: self.self_device_time_total)

    def __repr__(self) -> str:
        return (f"<FunctionEventAvg key={self.key!r} count={self.count} "
                f"self_cpu_time_total={self.self_cpu_time_total:.3f}us "
                f"cpu_time_total={self.cpu_time_total:.3f}us input_shapes={self.input_shapes}>")


class EventList(list):
    """A list of events (or of averages) that prints as a table and averages by name."""

    def __init__(self, events: Iterable = (), *, use_device: bool = False,
                 profile_memory: bool = False, with_shapes: bool = False,
                 with_stack: bool = False) -> None:
        super().__init__(events)
        self._use_device = use_device
        self._profile_memory = profile_memory
        self._with_shapes = with_shapes
        self._with_stack = with_stack

    def _like(self, events: Iterable) -> EventList:
        return EventList(events, use_device=self._use_device,
                         profile_memory=self._profile_memory, with_shapes=self._with_shapes,
                         with_stack=self._with_stack)

    @property
    def self_cpu_time_total(self) -> float:
        """The sum of the self times, in µs: the time covered by top-level ranges."""
        return sum(e.self_cpu_time_total for e in self)

    def key_averages(self, group_by_input_shape: bool = False,
                     group_by_stack_n: int = 0) -> EventList:
        """One :class:`FunctionEventAvg` per name, in order of first appearance; with
        ``group_by_input_shape`` per (name, input shapes), with ``group_by_stack_n`` per
        (name, innermost n stack frames)."""
        if not isinstance(group_by_stack_n, int) or group_by_stack_n < 0:
            raise ValueError(f"key_averages: group_by_stack_n must be an int >= 0, got "
                             f"{group_by_stack_n!r}")
        groups: dict = {}
        for e in self:
            key = (e.key, str(e.input_shapes) if group_by_input_shape else None,
                   tuple(e.stack[:group_by_stack_n]) if group_by_stack_n else None)
            avg = groups.get(key)
            if avg is None:
                avg = groups[key] = FunctionEventAvg(
                    e.key, e.input_shapes if group_by_input_shape else None,
                    list(e.stack[:group_by_stack_n]) if group_by_stack_n else None)
            avg.add(e)
        out = self._like(groups.values())
        out._with_shapes = self._with_shapes and group_by_input_shape
        out._with_stack = self._with_stack and group_by_stack_n > 0
        return out

    def total_average(self) -> FunctionEventAvg:
        """All events summed into one average named "Total"."""
        avg = FunctionEventAvg("Total")
        for e in self:
            avg.add(e)
        return avg

    def table(self, sort_by: str | None = "self_cpu_time_total", row_limit: int = 100,
              max_name_column_width: int = 55, max_shapes_column_width: int = 80,
              top_level_events_only: bool = False) -> str:
        """PyTorch's profiler table: one row per entry, sorted by ``sort_by`` (descending;
        None keeps the order), at most ``row_limit`` rows (a value <= 0 shows all)."""
        if sort_by is not None and sort_by not in SORT_KEYS:
            raise ValueError(f"table: unknown sort_by {sort_by!r}; expected None or one of "
                             f"{', '.join(SORT_KEYS)}")
        if not isinstance(row_limit, int):
            raise TypeError(f"table: row_limit must be an int, got {type(row_limit).__name__}")
        return _table(self, sort_by, row_limit, max_name_column_width, max_shapes_column_width,
                      top_level_events_only)

    def __str__(self) -> str:
        return self.table()

    def export_chrome_trace(self, path: str | os.PathLike) -> None:
        """Write the events as Chrome trace JSON (chrome://tracing, Perfetto) to ``path``, whole
        or not at all: a temporary file in the same folder, then renamed over ``path``."""
        if any(not isinstance(e, FunctionEvent) for e in self):
            raise TypeError("export_chrome_trace: needs the events themselves (profile.events()),"
                            " not their averages")
        write_json_atomic(path, chrome_trace(self), "export_chrome_trace")


def chrome_trace(events: Iterable[FunctionEvent]) -> dict:
    """The events as a Chrome trace object: one complete ("X") event per range."""
    pid = os.getpid()
    trace = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
              "args": {"name": "nodegrad"}}]
    for e in events:
        args: dict = {"External id": e.id, "Self CPU time (us)": round(e.self_cpu_time_total, 3)}
        if e.input_shapes:
            args["Input Dims"] = e.input_shapes
        if e.cpu_memory_usage:
            args["CPU memory (bytes)"] = e.self_cpu_memory_usage
        if e.device_time_total:
            args["Device time (us)"] = round(e.device_time_total, 3)
        if e.stack:
            args["Call stack"] = ";".join(e.stack)
        trace.append({"name": e.name, "ph": "X", "cat": _CATEGORY.get(e.kind, "cpu_op"),
                      "ts": round(e.start_us, 3), "dur": round(e.cpu_time_total, 3),
                      "pid": pid, "tid": e.thread, "args": args})
    return {"schemaVersion": 1, "displayTimeUnit": "ms", "traceEvents": trace}


def write_json_atomic(path: str | os.PathLike, obj, what: str) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file renamed over it, so a reader
    never sees half a file and a failure leaves an existing file as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- the table ------------------------------------------------------------------------------
def format_time(us: float) -> str:
    """Microseconds as PyTorch prints them: s, ms or us with three decimals."""
    if abs(us) >= 1e6:
        return f"{us / 1e6:.3f}s"
    if abs(us) >= 1e3:
        return f"{us / 1e3:.3f}ms"
    return f"{us:.3f}us"


def format_memory(nbytes: int) -> str:
    """Bytes as PyTorch prints them: Gb, Mb, Kb (two decimals) or B."""
    k = 1024
    for unit, size in (("Gb", k ** 3), ("Mb", k ** 2), ("Kb", k)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes} B"


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "0.00%"


def _table(events: EventList, sort_by, row_limit: int, name_width: int, shapes_width: int,
           top_level_only: bool) -> str:
    rows = [e for e in events if not (top_level_only and getattr(e, "cpu_parent", None))]
    self_total = sum(e.self_cpu_time_total for e in events)
    device_total = sum(e.self_device_time_total for e in events)
    if sort_by is not None:
        rows.sort(key=lambda e: getattr(e, sort_by), reverse=True)
    if row_limit > 0:
        rows = rows[:row_limit]
    use_device, memory = events._use_device, events._profile_memory
    shapes, stack = events._with_shapes, events._with_stack
    name_w = max(4, min(name_width, max((len(e.key) for e in rows), default=4)))
    heads = ["Self CPU %", "Self CPU", "CPU total %", "CPU total", "CPU time avg"]
    if use_device:
        heads += ["Self CUDA", "Self CUDA %", "CUDA total", "CUDA time avg"]
    if memory:
        heads += ["CPU Mem", "Self CPU Mem"]
    heads.append("# of Calls")
    shapes_w = 0
    if shapes:
        shapes_w = max(12, min(shapes_width, max((len(str(e.input_shapes)) for e in rows),
                                                 default=12)))
    widths = [name_w] + [12] * len(heads) + ([shapes_w] if shapes else [])
    titles = ["Name"] + heads + (["Input Shapes"] if shapes else [])
    if stack:
        widths.append(max(15, min(80, max((len(s) for e in rows for s in e.stack[:1]),
                                          default=15))))
        titles.append("Source Location")
    line = "  ".join("-" * w for w in widths)

    def fmt(cells):
        return "  ".join(str(c)[:w].rjust(w) for c, w in zip(cells, widths))

    out = [line, fmt(titles), line]
    for e in rows:
        name = e.key if len(e.key) <= name_w else e.key[:name_w - 3] + "..."
        cells = [name, _pct(e.self_cpu_time_total, self_total),
                 format_time(e.self_cpu_time_total), _pct(e.cpu_time_total, self_total),
                 format_time(e.cpu_time_total), format_time(e.cpu_time)]
        if use_device:
            cells += [format_time(e.self_device_time_total),
                      _pct(e.self_device_time_total, device_total),
                      format_time(e.device_time_total), format_time(e.device_time)]
        if memory:
            cells += [format_memory(e.cpu_memory_usage), format_memory(e.self_cpu_memory_usage)]
        cells.append(e.count)
        if shapes:
            s = str(e.input_shapes)
            cells.append(s if len(s) <= shapes_w else s[:shapes_w - 3] + "...")
        if stack:
            cells.append(e.stack[0] if e.stack else "")
        out.append(fmt(cells))
    out.append(line)
    out.append(f"Self CPU time total: {format_time(self_total)}")
    if use_device:
        out.append(f"Self CUDA time total: {format_time(device_total)}")
    return "\n".join(out) + "\n"
