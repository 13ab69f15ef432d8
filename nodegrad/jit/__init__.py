"""Capture a function or a whole training step into a program of backend operations, replay it.

``jit(f)`` traces ``f`` on its first call per input signature (recording every primitive's
forward, the backward's VJPs, gradient accumulation and the optimiser's update) and replays
the recorded operations on later calls, without the Tensor and Node machinery. The program is
optimised (:mod:`.passes`: CSE, constant folding, kept and reused buffers) and its elementwise
chains are fused into compiled kernels (:mod:`.fuse`) before the first replay.
"""

from .api import Jitted, disable_jit, jit
from .program import Instr, Program, eliminate_dead_code
from .trace import Recorder
from .torchscript import (Final, annotate, export, ignore, is_scripting, is_tracing, script,
                          script_method, unused)

jit.disable_jit = disable_jit  # so ``nodegrad.jit.disable_jit`` reads when jit is the function
# TorchScript's eager no-ops, so ``torch.jit.ignore`` and friends in ported models read too
for _name, _value in [("ignore", ignore), ("unused", unused), ("export", export),
                      ("script", script), ("script_method", script_method),
                      ("is_scripting", is_scripting), ("is_tracing", is_tracing),
                      ("annotate", annotate), ("Final", Final)]:
    setattr(jit, _name, _value)

__all__ = ["jit", "disable_jit", "Jitted", "Program", "Instr", "Recorder", "eliminate_dead_code"]
