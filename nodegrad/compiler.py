"""``torch.compiler``'s queries and hints, for code that asks whether it is being compiled
(timm's layers do): under :func:`nodegrad.compile` / :func:`nodegrad.jit` a function runs once,
as it is traced, and that call sees ``is_compiling()`` True; replays run the captured program.
Also ``reset()`` (forget every program) and ``disable`` (a function that always runs as
written)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from .autodiff import modes

__all__ = ["is_compiling", "is_dynamo_compiling", "is_exporting", "allow_in_graph",
           "assume_constant_result", "reset", "disable"]


def is_compiling() -> bool:
    """``torch.compiler.is_compiling()``: True while a ``jit``/``compile`` trace is recording
    (the branch taken then is the one the program keeps), False in eager code."""
    return modes().jit is not None


def is_dynamo_compiling() -> bool:
    """``torch.compiler.is_dynamo_compiling()``: :func:`is_compiling` (one tracer here)."""
    return is_compiling()


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()``: False (``torch.export`` has no counterpart here; ONNX
    export traces with :mod:`nodegrad.onnx`)."""
    return False


def _check_callable(op: str, fn) -> Callable:
    if not callable(fn):
        raise TypeError(f"compiler.{op}: expected a function, got {type(fn).__name__}")
    return fn


def allow_in_graph(fn: Callable) -> Callable:
    """``torch.compiler.allow_in_graph``: ``fn`` itself; the tracer records whatever Python it
    runs, so nothing needs to be allowed in."""
    return _check_callable("allow_in_graph", fn)


def assume_constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result``: ``fn`` itself; its result is read once, as
    the trace runs, as every Python value the traced function reads is."""
    return _check_callable("assume_constant_result", fn)


def reset() -> None:
    """``torch.compiler.reset()`` (``torch._dynamo.reset()``): forget the captured programs of
    every compiled and jitted function, so that their next calls trace again (between
    experiments in one process, after changing what a traced function reads as constant)."""
    from .jit.api import reset_all

    reset_all()


def disable(fn: Callable | None = None, recursive: bool = True, *, reason: str | None = None):
    """``torch.compiler.disable``: ``fn`` runs as written on every call, never from a captured
    program. Where a ``compile``d (or jitted) function calls it while being traced, that
    signature runs eagerly from then on (PyTorch's graph break; ``last.reason`` names ``fn``,
    and ``fullgraph=True`` refuses it); elsewhere it is ``fn``. A decorator, with or without
    arguments; ``recursive`` is accepted as PyTorch's (the functions ``fn`` calls run as written
    too)."""
    if not isinstance(recursive, bool):
        raise TypeError(f"compiler.disable: recursive must be True or False, got "
                        f"{type(recursive).__name__}")

    def wrap(f):
        _check_callable("disable", f)
        if hasattr(f, "training") and callable(getattr(f, "modules", None)):
            raise TypeError("compiler.disable: expected a function, got a module; decorate its "
                            "forward (Model.forward = ng.compiler.disable(Model.forward))")
        name = getattr(f, "__qualname__", type(f).__name__)
        why = f"compiler.disable: {name} runs as written" + (f" ({reason})" if reason else "")

        @functools.wraps(f)
        def disabled(*args, **kwargs):
            rec = modes().jit
            if rec is None:
                return f(*args, **kwargs)
            if rec.fallback is None:  # the signature runs eagerly: nothing here is recorded
                rec.fallback = why
            return rec._run_untraced(f, args, kwargs)

        return disabled

    return wrap if fn is None else wrap(fn)
