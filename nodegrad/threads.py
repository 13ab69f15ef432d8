"""Threads and determinism, PyTorch's way: ``get_num_threads``/``set_num_threads`` for the BLAS
behind matrix products (through threadpoolctl) and the loops nodegrad splits in two, and
``use_deterministic_algorithms``, a flag that nodegrad's CPU ops satisfy already."""

from __future__ import annotations

import os


def get_num_threads() -> int:
    """The threads BLAS uses for matrix products (threadpoolctl's view; the CPU count if no
    BLAS reports one), nodegrad's counterpart of ``torch.get_num_threads``."""
    from threadpoolctl import threadpool_info

    counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else (os.cpu_count() or 1)


def set_num_threads(num: int) -> None:
    """Limit nodegrad's CPU work to ``num`` threads, as ``torch.set_num_threads``: the BLAS
    behind matrix products, and with 1 also the large elementwise loops, full sums and fused
    optimiser steps that otherwise run in halves on two threads."""
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {num!r}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=num, user_api="blas")


_DETERMINISTIC = {"mode": False, "warn_only": False}


def use_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """Record PyTorch's determinism flag. nodegrad's CPU ops are deterministic already (no
    atomics; sums in a fixed order), so nothing changes; the flag is read back by
    :func:`are_deterministic_algorithms_enabled`."""
    if not isinstance(mode, bool):
        raise TypeError(f"use_deterministic_algorithms: mode must be a bool, got {mode!r}")
    _DETERMINISTIC.update(mode=mode, warn_only=bool(warn_only))


def are_deterministic_algorithms_enabled() -> bool:
    """Whether :func:`use_deterministic_algorithms` turned the flag on."""
    return _DETERMINISTIC["mode"]


def is_deterministic_algorithms_warn_only_enabled() -> bool:
    """Whether the determinism flag was set with ``warn_only=True``."""
    return _DETERMINISTIC["warn_only"]


__all__ = ["get_num_threads", "set_num_threads", "use_deterministic_algorithms",
           "are_deterministic_algorithms_enabled", "is_deterministic_algorithms_warn_only_enabled"]
