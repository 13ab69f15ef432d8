"""``profile``, ``record_function`` and ``schedule``: PyTorch's ``torch.profiler`` on nodegrad.

A profile times every op's forward (named for its primitive, ``matmul``), every node's backward
(``matmul_backward``), optimizer steps and the user's ``record_function`` ranges, nested as
they ran; :meth:`profile.key_averages` sums them by name into PyTorch's table and
:meth:`profile.export_chrome_trace` writes them for chrome://tracing or Perfetto.
"""

from __future__ import annotations

import enum
import os
import warnings
from collections.abc import Callable, Iterable
from contextlib import ContextDecorator

from .. import _backend as B
from . import instrument as _ins
from .events import EventList, FunctionEvent


class ProfilerActivity(enum.Enum):
    """What a profile times: host time of every range (CPU), and device time (CUDA: the wall
    time of each op with the device synchronised before and after it, on a CuPy device)."""

    CPU = 0
    CUDA = 2


class ProfilerAction(enum.Enum):
    """What a schedule asks of a step: nothing, warm up, record, or record and hand it over."""

    NONE = 0
    WARMUP = 1
    RECORD = 2
    RECORD_AND_SAVE = 3


def supported_activities() -> set[ProfilerActivity]:
    """The activities this machine can time: CPU, and CUDA where CuPy sees a GPU."""
    out = {ProfilerActivity.CPU}
    if B.cuda_available():
        out.add(ProfilerActivity.CUDA)
    return out


def _count(name: str, v, least: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        raise ValueError(f"schedule: {name} must be an int >= {least}, got {v!r}")
    return v


def schedule(*, wait: int, warmup: int, active: int, repeat: int = 0,
             skip_first: int = 0) -> Callable[[int], ProfilerAction]:
    """PyTorch's profiler schedule: skip ``skip_first`` steps, then cycles of ``wait`` idle
    steps, ``warmup`` steps and ``active`` recorded steps (the last of which hands the trace to
    ``on_trace_ready``), ``repeat`` cycles (0: as long as the profile runs)."""
    wait, warmup = _count("wait", wait, 0), _count("warmup", warmup, 0)
    active, repeat = _count("active", active, 1), _count("repeat", repeat, 0)
    skip_first = _count("skip_first", skip_first, 0)
    cycle = wait + warmup + active

    def schedule_fn(step: int) -> ProfilerAction:
        if step < skip_first:
            return ProfilerAction.NONE
        step -= skip_first
        if repeat > 0 and step // cycle >= repeat:
            return ProfilerAction.NONE
        k = step % cycle
        if k < wait:
            return ProfilerAction.NONE
        if k < wait + warmup:
            return ProfilerAction.WARMUP
        return ProfilerAction.RECORD if k < cycle - 1 else ProfilerAction.RECORD_AND_SAVE

    return schedule_fn


_RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


class record_function(ContextDecorator):
    """A named range of the user's, as a context manager or a decorator; ranges nest. Outside
    a profile it does nothing (the cost of one check)."""

    def __init__(self, name: str, args: str | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"record_function: name must be a str, got {type(name).__name__}")
        self.name = name
        self.args = args
        self._open: list = []

    def _recreate_cm(self) -> record_function:  # a fresh one per decorated call (threads)
        return record_function(self.name, self.args)

    def __enter__(self) -> record_function:
        self._open.append(_ins.open_range(self.name, "user"))
        return self

    def __exit__(self, *exc) -> bool:
        if self._open:
            _ins.close_range(self._open.pop())
        return False


class profile:
    """Time what runs inside ``with profile(...) as prof:``, as PyTorch's ``torch.profiler``.

    ``activities``: :class:`ProfilerActivity` values (default: CPU, and CUDA where a GPU is
    seen); ``record_shapes`` keeps each op's input shapes, ``profile_memory`` the bytes of its
    output, ``with_stack`` the Python frames that called it. With a ``schedule`` (see
    :func:`schedule`) only the steps it marks active are recorded, counted by :meth:`step`,
    each in a ``ProfilerStep#N`` range; ``on_trace_ready(prof)`` runs when a recorded cycle ends
    (and at exit while recording).
    """

    def __init__(self, *, activities: Iterable[ProfilerActivity] | None = None,
                 schedule: Callable[[int], ProfilerAction] | None = None,
                 on_trace_ready: Callable | None = None, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False) -> None:
        if activities is None:
            acts = supported_activities()
        else:
            try:
                acts = set(activities)
            except TypeError:
                raise TypeError("profile: activities must be an iterable of ProfilerActivity, "
                                f"got {type(activities).__name__}") from None
            bad = [a for a in acts if not isinstance(a, ProfilerActivity)]
            if bad:
                raise TypeError(f"profile: activities must be ProfilerActivity values, got "
                                f"{bad[0]!r}")
        if ProfilerActivity.CUDA in acts and not B.cuda_available():
            warnings.warn("CUDA is not available, disabling CUDA profiling", stacklevel=2)
            acts.discard(ProfilerActivity.CUDA)
            acts.add(ProfilerActivity.CPU)  # host times still come (PyTorch would have none)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"profile: schedule must be callable, got {type(schedule).__name__}")
        if on_trace_ready is not None and not callable(on_trace_ready):
            raise TypeError("profile: on_trace_ready must be callable, got "
                            f"{type(on_trace_ready).__name__}")
        self.activities = acts
        self.schedule = schedule
        self.on_trace_ready = on_trace_ready
        self.record_shapes = bool(record_shapes)
        self.profile_memory = bool(profile_memory)
        self.with_stack = bool(with_stack)
        self.step_num = 0
        self.current_action = ProfilerAction.NONE
        self._running = False
        self._rec: _ins.Recorder | None = None  # the recording under way
        self._events: EventList | None = None  # the last finished one
        self._step_range: list = []

    # --- running --------------------------------------------------------------------------
    def __enter__(self) -> profile:
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        """Install the timing hooks and begin step 0 (recording it unless the schedule says
        otherwise)."""
        if self._running:
            raise RuntimeError("profile.start: this profile is already running")
        _ins.install()
        self._running = True
        self.step_num = 0
        try:
            self._enter_action(self._action(0))
        except BaseException:
            self._running = False
            _ins.uninstall()
            raise

    def stop(self) -> None:
        """End the recording (handing it to ``on_trace_ready`` if one was under way) and take
        the hooks out; they come out also if the handler raises."""
        if not self._running:
            return
        self._running = False
        try:
            if self._rec is not None:
                self._finish(hand_over=True)
        finally:
            self.current_action = ProfilerAction.NONE
            _ins.uninstall()

    def step(self) -> None:
        """Mark the end of a training step: the schedule decides what the next one does."""
        if not self._running:
            raise RuntimeError("profile.step: the profile is not running (use it in a with "
                               "block, or call start() first)")
        prev = self.current_action
        self.step_num += 1
        cur = self._action(self.step_num)
        self._close_step_range()
        if prev is ProfilerAction.RECORD_AND_SAVE or (prev in _RECORDING
                                                      and cur not in _RECORDING):
            self._finish(hand_over=True)
        self._enter_action(cur)

    def _action(self, step: int) -> ProfilerAction:
        if self.schedule is None:
            return ProfilerAction.RECORD
        a = self.schedule(step)
        if not isinstance(a, ProfilerAction):
            raise TypeError(f"profile: the schedule must return a ProfilerAction, got {a!r} "
                            f"for step {step}")
        return a

    def _enter_action(self, action: ProfilerAction) -> None:
        self.current_action = action
        if action in _RECORDING:
            if self._rec is None:
                self._rec = _ins.Recorder(self.record_shapes, self.profile_memory,
                                       self.with_stack,
                                       ProfilerActivity.CUDA in self.activities)
                _ins.activate(self._rec)
            if self.schedule is not None:
                self._step_range = _ins.open_range(f"ProfilerStep#{self.step_num}", "step")

    def _close_step_range(self) -> None:
        if self._step_range:
            _ins.close_range(self._step_range)
            self._step_range = []

    def _finish(self, hand_over: bool) -> None:
        self._close_step_range()
        rec, self._rec = self._rec, None
        _ins.deactivate(rec)
        self._events = EventList(rec.finish(), use_device=rec.device,
                                 profile_memory=rec.memory, with_shapes=rec.shapes,
                                 with_stack=rec.stack)
        if hand_over and self.on_trace_ready is not None:
            self.on_trace_ready(self)

    # --- results --------------------------------------------------------------------------
    def events(self) -> EventList:
        """The ranges of the last finished recording, in the order they began."""
        if self._events is None:
            if self._rec is not None:
                raise RuntimeError("profile.events: the recording is still under way; read the "
                                   "results after the with block (or in on_trace_ready)")
            return EventList(use_device=ProfilerActivity.CUDA in self.activities,
                             profile_memory=self.profile_memory,
                             with_shapes=self.record_shapes, with_stack=self.with_stack)
        return self._events

    def key_averages(self, group_by_input_shape: bool = False,
                     group_by_stack_n: int = 0) -> EventList:
        """The events summed by name (and input shapes, or innermost stack frames), in order of
        first appearance; ``.table()`` prints them."""
        return self.events().key_averages(group_by_input_shape, group_by_stack_n)

    def export_chrome_trace(self, path: str | os.PathLike) -> None:
        """Write the events as Chrome trace JSON to ``path`` (a temporary file renamed over it)."""
        self.events().export_chrome_trace(path)


__all__ = ["ProfilerActivity", "ProfilerAction", "profile", "record_function", "schedule",
           "supported_activities", "EventList", "FunctionEvent"]
