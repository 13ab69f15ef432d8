"""``ng.autograd.profiler``: PyTorch's older profiler interface (``torch.autograd.profiler``),
the same recording as :class:`nodegrad.profiler.profile` behind its own signature."""

from __future__ import annotations

import os

from .events import EventList, FunctionEvent, FunctionEventAvg
from .profile import ProfilerActivity
from .profile import profile as _profile
from .profile import record_function


class profile:
    """``with ng.autograd.profiler.profile() as prof:`` times what runs inside, as
    ``torch.autograd.profiler.profile``; ``enabled=False`` makes it do nothing, ``use_cuda``
    (or ``use_device="cuda"``) adds device times."""

    def __init__(self, enabled: bool = True, *, use_cuda: bool = False,
                 use_device: str | None = None, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False) -> None:
        if use_device not in (None, "cpu", "cuda"):
            raise ValueError(f"autograd.profiler.profile: use_device must be None, 'cpu' or "
                             f"'cuda', got {use_device!r}")
        acts = [ProfilerActivity.CPU]
        if use_cuda or use_device == "cuda":
            acts.append(ProfilerActivity.CUDA)
        self.enabled = bool(enabled)
        self._prof = _profile(activities=acts, record_shapes=record_shapes,
                              profile_memory=profile_memory, with_stack=with_stack)
        self._entered = False

    def __enter__(self) -> profile:
        if self._entered:
            raise RuntimeError("autograd.profiler.profile: a profiler cannot be entered twice")
        self._entered = True
        if self.enabled:
            self._prof.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._prof.stop()
        return False

    @property
    def function_events(self) -> EventList:
        """Every recorded range, in the order they began."""
        return self._prof.events()

    def key_averages(self, group_by_input_shape: bool = False,
                     group_by_stack_n: int = 0) -> EventList:
        """The events summed by name (see :meth:`EventList.key_averages`)."""
        return self._prof.key_averages(group_by_input_shape, group_by_stack_n)

    def total_average(self) -> FunctionEventAvg:
        """All events summed into one average."""
        return self.function_events.total_average()

    @property
    def self_cpu_time_total(self) -> float:
        """The sum of every event's self time, in µs."""
        return self.function_events.self_cpu_time_total

    def table(self, sort_by: str | None = None, row_limit: int = 100, **kwargs) -> str:
        """The events as PyTorch's table, one row per event (see :meth:`EventList.table`)."""
        return self.function_events.table(sort_by=sort_by, row_limit=row_limit, **kwargs)

    def export_chrome_trace(self, path: str | os.PathLike) -> None:
        """Write the events as Chrome trace JSON (a temporary file renamed over ``path``)."""
        self._prof.export_chrome_trace(path)

    def __str__(self) -> str:
        return self.table()


__all__ = ["profile", "record_function", "EventList", "FunctionEvent", "FunctionEventAvg"]
