"""``torch.accelerator``: the device-agnostic questions that PyTorch's current tutorials ask
before choosing a device, ``device = ng.accelerator.current_accelerator().type if
ng.accelerator.is_available() else "cpu"``.

nodegrad's one accelerator is CUDA through CuPy, so each function answers for ``"cuda"``; the
ones that need a device raise :class:`~nodegrad.errors.DeviceError` when none is available, as
PyTorch's raise.
"""

from __future__ import annotations

from . import _backend as B
from . import cuda as _cuda
from .backends import cuda as _cuda_build
from .errors import DeviceError

__all__ = ["is_available", "current_accelerator", "device_count", "current_device_index",
           "current_device_idx", "synchronize"]


def is_available() -> bool:
    """Whether an accelerator can be used now: CuPy is installed and sees a GPU."""
    return _cuda.is_available()


def current_accelerator(check_available: bool = False) -> B.Device | None:
    """``device("cuda")`` (no index) when CUDA support is installed (CuPy importable), else
    None; with ``check_available=True`` also None when no GPU is usable now."""
    if not isinstance(check_available, bool):
        raise TypeError(f"accelerator.current_accelerator: check_available must be a bool, got "
                        f"{type(check_available).__name__}")
    if not _cuda_build.is_built() or (check_available and not is_available()):
        return None
    return B.Device("cuda")


def device_count() -> int:
    """The number of accelerator devices (0 without one)."""
    return _cuda.device_count()


def _need(what: str) -> None:
    if not is_available():
        raise DeviceError(f"accelerator.{what}: no accelerator is available (CuPy with a CUDA "
                          "device is needed)")


def current_device_index() -> int:
    """The index of the device ``"cuda"`` names (0); raises without an accelerator."""
    _need("current_device_index")
    return _cuda.current_device()


current_device_idx = current_device_index


def synchronize(device=None, /) -> None:
    """Wait for the work queued on ``device`` (an index, ``"cuda:N"``, default the current
    one); raises without an accelerator."""
    _need("synchronize")
    _cuda.synchronize(device)
