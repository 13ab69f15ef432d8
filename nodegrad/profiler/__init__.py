"""Profiling, as PyTorch's ``torch.profiler``: time ops, backward steps, optimizer steps and
named ranges, print the averages as a table, write a Chrome trace.

>>> import nodegrad as ng
>>> x = ng.randn(64, 64, requires_grad=True)
>>> with ng.profiler.profile(record_shapes=True) as prof:
...     with ng.profiler.record_function("forward"):
...         y = (x @ x).relu().sum()
...     y.backward()
>>> [a.count for a in prof.key_averages() if a.key == "matmul_backward"]
[1]

Forward ops are named for their primitive (``matmul``), a node's backward ``<name>_backward``,
an optimizer step ``Optimizer.step#<Class>.step``, a call of an ``ng.jit`` function
``jit#<name>``. The hooks exist only while a profile runs: outside one nothing is timed and
nothing costs. A replayed ``ng.jit`` program runs captured backend calls rather than ops, so it
shows as its one ``jit#`` range (with its optimizer step inside), not op by op.
"""

from .events import EventList, FunctionEvent, FunctionEventAvg
from .profile import (ProfilerAction, ProfilerActivity, profile, record_function, schedule,
                      supported_activities)

__all__ = ["profile", "record_function", "schedule", "ProfilerActivity", "ProfilerAction",
           "supported_activities", "EventList", "FunctionEvent", "FunctionEventAvg"]
