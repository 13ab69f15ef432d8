"""``torch.compiler``'s queries and hints, for code that asks whether it is being compiled
(timm's layers do): under :func:`nodegrad.compile` / :func:`nodegrad.jit` a function runs once,
as it is traced, and that call sees ``is_compiling()`` True; replays run the captured program."""

from __future__ import annotations

from collections.abc import Callable

from .autodiff import modes

__all__ = ["is_compiling", "is_dynamo_compiling", "is_exporting", "allow_in_graph",
           "assume_constant_result"]


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
