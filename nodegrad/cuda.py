"""``torch.cuda``'s everyday functions, for scripts that ask about the GPU before choosing a
device: ``device = "cuda" if ng.cuda.is_available() else "cpu"``.

nodegrad's CUDA devices are CuPy's; ``"cuda"`` always names ``"cuda:0"``. Without CuPy or a GPU
``is_available()`` is False, ``device_count()`` 0, and the seeding and cache functions do
nothing (as PyTorch's); the ones that need a device raise :class:`~nodegrad.errors.DeviceError`.
"""

from __future__ import annotations

import functools
import sys
import types

from . import _backend as B
from . import amp as _amp
from .errors import DeviceError
from .ops.aliases import _TYPE_NAMES, TensorType
from .tensor import Tensor

__all__ = ["amp", "is_available", "device_count", "current_device", "synchronize", "manual_seed",
           "manual_seed_all", "empty_cache", "memory_allocated", "memory_reserved",
           "is_bf16_supported", *_TYPE_NAMES.values()]


def is_available() -> bool:
    """Whether CuPy is installed and sees a GPU."""
    return B.cuda_available()


def device_count() -> int:
    """The number of GPUs (0 without CuPy or a GPU)."""
    return B.cuda_device_count()


def is_bf16_supported(including_emulation: bool = True) -> bool:
    """Whether bfloat16 tensors can live on the GPU: always False, as CuPy's arrays have no
    bfloat16 (PyTorch's answer without a GPU too), so scripts that ask before choosing an
    autocast dtype pick float16 with a GradScaler."""
    if not isinstance(including_emulation, bool):
        raise TypeError(f"cuda.is_bf16_supported: including_emulation must be a bool, got "
                        f"{type(including_emulation).__name__}")
    return False


def _index(device, what: str) -> int:
    """The GPU index ``device`` names (None: the current one, ``"cuda"``'s: 0)."""
    if device is None:
        device = "cuda"
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    if not is_available():
        raise DeviceError(f"cuda.{what}: no GPU is available (CuPy with a CUDA device is needed)")
    be = B.get_backend(device)
    if be.device_id is None:
        raise DeviceError(f"cuda.{what}: expected a CUDA device, got {device!r}")
    return be.device_id


def current_device() -> int:
    """The index of the GPU ``"cuda"`` names (0)."""
    return _index(None, "current_device")


def synchronize(device=None) -> None:
    """Wait for the work queued on ``device`` (an index, ``"cuda:N"``, default ``"cuda"``), as
    a timing of GPU code must before it reads the clock."""
    B.cuda_synchronize(_index(device, "synchronize"))


def manual_seed(seed: int) -> None:
    """Seed the default generator of every GPU (nothing without one); ``ng.manual_seed`` seeds
    them and the CPU's."""
    from .random import default_generator

    for i in range(device_count()):
        default_generator(f"cuda:{i}").manual_seed(seed)


manual_seed_all = manual_seed


def empty_cache() -> None:
    """Give the memory CuPy's pools cache back to the driver (nothing when CuPy is not loaded)."""
    B.cuda_free_cached()


def memory_allocated(device=None) -> int:
    """Bytes held by live arrays on ``device``."""
    return B.cuda_pool_bytes(_index(device, "memory_allocated"), False)


def memory_reserved(device=None) -> int:
    """Bytes CuPy's pool holds on ``device``, its cached blocks included."""
    return B.cuda_pool_bytes(_index(device, "memory_reserved"), True)


# ``torch.cuda.amp``: autocast and GradScaler for "cuda", importable as nodegrad.cuda.amp too
amp = types.ModuleType(__name__ + ".amp", "torch.cuda.amp's names: autocast and GradScaler for "
                       "'cuda', custom_fwd and custom_bwd.")
amp.autocast = _amp.CudaAutocast
amp.GradScaler = _amp.CudaGradScaler
amp.custom_fwd = functools.partial(_amp.custom_fwd, device_type="cuda")
amp.custom_bwd = functools.partial(_amp.custom_bwd, device_type="cuda")
sys.modules[amp.__name__] = amp


class _CudaTensorType(TensorType):
    """``torch.cuda.FloatTensor`` and its kin: ``isinstance(x, ng.cuda.FloatTensor)`` holds for a
    float32 tensor on a GPU only (the check DCGAN's ``forward`` makes before ``data_parallel``);
    calling one makes the tensor on ``"cuda"``."""

    is_cuda = True

    def __repr__(self) -> str:
        return f"<class 'nodegrad.cuda.{self.__name__}'>"

    def __instancecheck__(self, obj) -> bool:
        return (isinstance(obj, Tensor) and obj.dtype == self.dtype
                and obj.backend.device_id is not None)

    def __call__(self, *args, device=None, size=None) -> Tensor:
        return super().__call__(*args, device="cuda" if device is None else device, size=size)


for _dt, _name in _TYPE_NAMES.items():
    globals()[_name] = _CudaTensorType(_name, B.np.dtype(_dt))
del _dt, _name
