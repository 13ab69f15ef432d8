"""PyTorch's global switches that a training script sets or reads, with what they mean here.

nodegrad computes with NumPy (or CuPy) and its BLAS, which expose none of these knobs, so most
switches are recorded and read back rather than obeyed; each docstring says what changes and
what does not. ``set_deterministic_debug_mode`` is torch's other spelling of
:func:`nodegrad.use_deterministic_algorithms` and shares its flag.
"""

from __future__ import annotations

import os

from .threads import (are_deterministic_algorithms_enabled,
                      is_deterministic_algorithms_warn_only_enabled, use_deterministic_algorithms)

_STATE = {"matmul_precision": "highest", "warn_always": False, "interop_threads": None}


def set_flush_denormal(mode: bool) -> bool:
    """PyTorch's switch for flushing subnormal floats to zero on the CPU. NumPy cannot set the
    processor's flush-to-zero / denormals-are-zero flags, so nothing changes and this returns
    False, which is how ``torch.set_flush_denormal`` reports a CPU that does not support it."""
    if not isinstance(mode, bool):
        raise TypeError(f"set_flush_denormal: mode must be a bool, got {mode!r}")
    return False


_PRECISIONS = ("highest", "high", "medium")


def set_float32_matmul_precision(precision: str) -> None:
    """Record PyTorch's float32 matrix-product precision ('highest', 'high' or 'medium').
    NumPy's and CuPy's BLAS always multiply float32 in float32 (no TF32 or bfloat16 passes),
    so results are those of 'highest' whatever is set; the value is read back by
    :func:`get_float32_matmul_precision`."""
    if precision not in _PRECISIONS:
        raise ValueError(f"set_float32_matmul_precision: precision must be one of "
                         f"{', '.join(repr(p) for p in _PRECISIONS)}, got {precision!r}")
    _STATE["matmul_precision"] = precision


def get_float32_matmul_precision() -> str:
    """The precision last given to :func:`set_float32_matmul_precision` ('highest' at
    start)."""
    return _STATE["matmul_precision"]


def set_warn_always(b: bool) -> None:
    """Record PyTorch's "warn always" flag. nodegrad's warnings go through Python's
    ``warnings`` module, whose filters (``warnings.simplefilter('always')``) decide how often
    each is shown; the flag is read back by :func:`is_warn_always_enabled`."""
    if not isinstance(b, bool):
        raise TypeError(f"set_warn_always: expected a bool, got {b!r}")
    _STATE["warn_always"] = b


def is_warn_always_enabled() -> bool:
    """Whether :func:`set_warn_always` turned the flag on (False at start)."""
    return _STATE["warn_always"]


def get_num_interop_threads() -> int:
    """PyTorch's inter-op thread count: the value set, else the CPU count (torch's default).
    nodegrad runs one op after another and has no inter-op pool, so the number only reads
    back; :func:`nodegrad.set_num_threads` limits the threads inside ops."""
    n = _STATE["interop_threads"]
    return n if n is not None else (os.cpu_count() or 1)


def set_num_interop_threads(num: int) -> None:
    """Record PyTorch's inter-op thread count (a positive int; see
    :func:`get_num_interop_threads`)."""
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"set_num_interop_threads: expected a positive int, got {num!r}")
    _STATE["interop_threads"] = num


_DEBUG_MODES = {"default": 0, "warn": 1, "error": 2}


def set_deterministic_debug_mode(debug_mode: int | str) -> None:
    """PyTorch's other spelling of :func:`nodegrad.use_deterministic_algorithms`: 0 or
    'default' turns the flag off, 1 or 'warn' on with ``warn_only=True``, 2 or 'error' on."""
    mode = _DEBUG_MODES.get(debug_mode, debug_mode) if isinstance(debug_mode, str) \
        else debug_mode
    if isinstance(mode, bool) or mode not in (0, 1, 2):
        raise ValueError(f"set_deterministic_debug_mode: debug_mode must be 0, 1, 2 or "
                         f"'default', 'warn', 'error', got {debug_mode!r}")
    use_deterministic_algorithms(mode > 0, warn_only=mode == 1)


def get_deterministic_debug_mode() -> int:
    """0, 1 or 2 as :func:`set_deterministic_debug_mode` (read from the determinism flag of
    :func:`nodegrad.use_deterministic_algorithms`)."""
    if not are_deterministic_algorithms_enabled():
        return 0
    return 1 if is_deterministic_algorithms_warn_only_enabled() else 2


__all__ = ["set_flush_denormal", "set_float32_matmul_precision",
           "get_float32_matmul_precision", "set_warn_always", "is_warn_always_enabled",
           "get_num_interop_threads", "set_num_interop_threads", "set_deterministic_debug_mode",
           "get_deterministic_debug_mode"]
