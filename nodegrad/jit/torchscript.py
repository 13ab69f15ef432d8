"""TorchScript's decorators and queries under ``nodegrad.jit``, as they behave in eager PyTorch.

Model code written for PyTorch marks methods ``@torch.jit.ignore`` or ``@torch.jit.unused``,
asks ``torch.jit.is_scripting()`` and annotates attributes ``Final[...]``. Outside a script
these change nothing, and nodegrad never scripts, so they are the same no-ops here: a ported
model keeps them as written. ``torch.jit.script`` and ``script_method`` (RWKV's and Hyena's
``@torch.jit.script`` functions, ``torch.jit.ScriptModule`` subclasses) return what they are
given: a scripted function computes what the Python one does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _marker(name: str):
    def mark(fn: Any = None, **kwargs: Any):
        if fn is None:  # ``@torch.jit.ignore(drop=True)``: the decorator itself
            return lambda f: mark(f)
        if not callable(fn):
            raise TypeError(f"jit.{name}: expected a function or method to mark, got "
                            f"{type(fn).__name__}")
        return fn
    mark.__name__ = mark.__qualname__ = name
    mark.__doc__ = (f"``torch.jit.{name}``: marks ``fn`` for TorchScript, which nodegrad never "
                    "runs; returns ``fn`` unchanged (keywords such as ``drop=`` accepted).")
    return mark


ignore = _marker("ignore")
unused = _marker("unused")
export = _marker("export")
script = _marker("script")
script.__doc__ = ("``torch.jit.script``: PyTorch compiles ``fn`` (a function, method or "
                  "module) to TorchScript, which computes what ``fn`` does; nodegrad never "
                  "scripts and returns ``fn`` unchanged.")
script_method = _marker("script_method")


def is_scripting() -> bool:
    """``torch.jit.is_scripting()``: False, as in eager PyTorch (nodegrad never scripts)."""
    return False


def is_tracing() -> bool:
    """``torch.jit.is_tracing()``: False, as in eager PyTorch (no TorchScript tracer here)."""
    return False


def annotate(the_type: Any, the_value: Any) -> Any:
    """``torch.jit.annotate(T, value)``: a type hint for TorchScript; returns ``value``."""
    return the_value


__all__ = ["ignore", "unused", "export", "script", "script_method", "is_scripting",
           "is_tracing", "annotate", "Final"]
