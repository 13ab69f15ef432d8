"""PyTorch's ``torch.nn.attention``: :class:`SDPBackend`, :func:`sdpa_kernel` and
:mod:`nodegrad.nn.attention.flex_attention`.

nodegrad has one implementation of ``scaled_dot_product_attention`` (the math one: scores,
softmax, product, on NumPy or CuPy), so :func:`sdpa_kernel` checks the backends it is given and
records them for the block, but selects nothing: every call computes the same way whatever is
listed (PyTorch's MATH backend)."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["SDPBackend", "sdpa_kernel", "flex_attention"]


class SDPBackend(enum.IntEnum):
    """PyTorch's names (and values) for the kernels behind scaled_dot_product_attention."""

    ERROR = -1
    MATH = 0
    FLASH_ATTENTION = 1
    EFFICIENT_ATTENTION = 2
    CUDNN_ATTENTION = 3
    OVERRIDEABLE = 4


_ALL = (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION, SDPBackend.OVERRIDEABLE)
_ACTIVE: list[tuple[SDPBackend, ...]] = [_ALL]


def enabled_backends() -> tuple[SDPBackend, ...]:
    """The backends the innermost :func:`sdpa_kernel` block listed (all of them outside one)."""
    return _ACTIVE[-1]


@contextmanager
def sdpa_kernel(backends: SDPBackend | Sequence[SDPBackend],
                set_priority: bool = False) -> Iterator[None]:
    """Within the block, allow only ``backends`` for scaled_dot_product_attention, as
    PyTorch's context manager. nodegrad has the one math implementation, so this validates
    and records the list (see :func:`enabled_backends`) and changes no result."""
    items = [backends] if isinstance(backends, SDPBackend) else backends
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise TypeError(f"sdpa_kernel: backends must be an SDPBackend or a list of them, "
                        f"got {backends!r}")
    for b in items:
        if not isinstance(b, SDPBackend):
            raise TypeError(f"sdpa_kernel: backends must be SDPBackend members "
                            f"(e.g. SDPBackend.MATH), got {b!r}")
        if b is SDPBackend.ERROR:
            raise ValueError("sdpa_kernel: SDPBackend.ERROR names no kernel and cannot be "
                             "enabled")
    if not isinstance(set_priority, bool):
        raise TypeError(f"sdpa_kernel: set_priority must be a bool, got {set_priority!r}")
    _ACTIVE.append(tuple(dict.fromkeys(items)))
    try:
        yield
    finally:
        _ACTIVE.pop()


from . import flex_attention  # noqa: E402
