"""PyTorch's ``torch.backends`` switches: ``cudnn``, ``cuda.matmul``, ``cuda``'s attention kernels
and ``mps``.

nodegrad computes with NumPy on the CPU and CuPy on CUDA devices and calls no cuDNN kernels, so
no algorithm is chosen by these switches: they are recorded and read back so that training
scripts which set them run unchanged, and each says what it does here. Two are tied to the
switches they stand for in PyTorch: ``cuda.matmul.allow_tf32`` is the float32 matmul precision
(True is 'high', False 'highest', as torch's) and ``cudnn.deterministic`` reads and sets only
its own flag, as PyTorch's (which also leaves ``use_deterministic_algorithms`` untouched).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .nn.attention import _ACTIVE, _ALL, SDPBackend, enabled_backends
from .settings import get_float32_matmul_precision, set_float32_matmul_precision

__all__ = ["cudnn", "cuda", "mps"]


def _flag(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"backends.{owner}.{name}: expects a bool, got "
                        f"{type(value).__name__} {value!r}")
    return value


class _Flags:
    """A module-like object whose switches are settable attributes; an unknown name raises
    (a misspelt switch would otherwise be set and silently ignored)."""

    _name = ""
    _switches: tuple[str, ...] = ()

    def __setattr__(self, name: str, value) -> None:
        if name not in self._switches and not hasattr(type(self), name):
            raise AttributeError(f"backends.{self._name} has no switch {name!r} "
                                 f"(known: {', '.join(self._switches)})")
        object.__setattr__(self, name, _flag(self._name, name, value)
                           if name in self._switches else value)

    def __repr__(self) -> str:
        vals = ", ".join(f"{n}={getattr(self, n)}" for n in self._switches)
        return f"<nodegrad.backends.{self._name}: {vals}>"


class CudnnModule(_Flags):
    """``torch.backends.cudnn``. nodegrad calls no cuDNN kernels, so ``enabled``,
    ``benchmark``, ``deterministic`` and ``allow_tf32`` select nothing: convolutions are
    matrix products over window views, the same algorithm every call and deterministic
    whatever is set. The flags keep PyTorch's defaults (enabled, allow_tf32 True;
    benchmark, deterministic False) and are read back as set."""

    _name = "cudnn"
    _switches = ("enabled", "benchmark", "deterministic", "allow_tf32")

    def __init__(self) -> None:
        for n, v in zip(self._switches, (True, False, False, True)):
            object.__setattr__(self, n, v)

    @staticmethod
    def is_available() -> bool:
        """False: nodegrad's kernels never go through cuDNN."""
        return False

    @staticmethod
    def version() -> None:
        """None, as PyTorch's when cuDNN is not available."""
        return None

    @contextmanager
    def flags(self, enabled: bool = False, benchmark: bool = False, benchmark_limit: int = 10,
              deterministic: bool = False, allow_tf32: bool = True,
              fp32_precision: str = "none", depthwise_kernel: str = "auto") -> Iterator[None]:
        """PyTorch's ``with torch.backends.cudnn.flags(enabled=False):`` (Hugging Face's CTC
        losses run in one): every switch as given, PyTorch's defaults for the others, for
        the block; the previous values come back after it."""
        before = {n: getattr(self, n) for n in self._switches}
        try:
            for n, v in zip(self._switches, (enabled, benchmark, deterministic, allow_tf32)):
                setattr(self, n, v)
            yield
        finally:
            for n, v in before.items():
                object.__setattr__(self, n, v)


class _Matmul(_Flags):
    """``torch.backends.cuda.matmul``. ``allow_tf32`` is PyTorch's other spelling of the
    float32 matmul precision (True is 'high', False 'highest'); the reduced-precision
    reduction flags are recorded only (CuPy's float16 products accumulate as cuBLAS does)."""

    _name = "cuda.matmul"
    _switches = ("allow_fp16_reduced_precision_reduction",
                 "allow_bf16_reduced_precision_reduction")

    def __init__(self) -> None:
        for n in self._switches:
            object.__setattr__(self, n, True)

    @property
    def allow_tf32(self) -> bool:
        return get_float32_matmul_precision() != "highest"

    @allow_tf32.setter
    def allow_tf32(self, value: bool) -> None:
        set_float32_matmul_precision("high" if _flag(self._name, "allow_tf32", value)
                                     else "highest")

    def __repr__(self) -> str:
        return f"<nodegrad.backends.cuda.matmul: allow_tf32={self.allow_tf32}>"


class CudaModule:
    """``torch.backends.cuda``: ``matmul`` switches, ``is_built()`` and the switches of the
    kernels behind scaled_dot_product_attention (``enable_flash_sdp(False)``,
    ``flash_sdp_enabled()``, the deprecated ``sdp_kernel(...)`` block). Those are the backends
    :func:`nodegrad.nn.attention.sdpa_kernel` records, read and set in the same place, as
    PyTorch's; nodegrad has the one math implementation, so they change no result."""

    def __init__(self) -> None:
        self.matmul = _Matmul()

    @staticmethod
    def is_built() -> bool:
        """Whether CUDA support is installed: CuPy can be imported (without importing it;
        a GPU need not be present, as torch's answer for a CUDA build)."""
        return importlib.util.find_spec("cupy") is not None

    @staticmethod
    def flash_sdp_enabled() -> bool:
        """Whether the flash-attention kernel is allowed (recorded only)."""
        return SDPBackend.FLASH_ATTENTION in enabled_backends()

    @staticmethod
    def mem_efficient_sdp_enabled() -> bool:
        """Whether the memory-efficient kernel is allowed (recorded only)."""
        return SDPBackend.EFFICIENT_ATTENTION in enabled_backends()

    @staticmethod
    def math_sdp_enabled() -> bool:
        """Whether the math kernel is allowed (nodegrad's only one, used whatever is set)."""
        return SDPBackend.MATH in enabled_backends()

    @staticmethod
    def cudnn_sdp_enabled() -> bool:
        """Whether the cuDNN attention kernel is allowed (recorded only)."""
        return SDPBackend.CUDNN_ATTENTION in enabled_backends()

    @staticmethod
    def enable_flash_sdp(enabled: bool) -> None:
        """Allow or forbid the flash-attention kernel (recorded only)."""
        _enable_sdp("enable_flash_sdp", SDPBackend.FLASH_ATTENTION, enabled)

    @staticmethod
    def enable_mem_efficient_sdp(enabled: bool) -> None:
        """Allow or forbid the memory-efficient kernel (recorded only)."""
        _enable_sdp("enable_mem_efficient_sdp", SDPBackend.EFFICIENT_ATTENTION, enabled)

    @staticmethod
    def enable_math_sdp(enabled: bool) -> None:
        """Allow or forbid the math kernel (recorded only: nodegrad computes with it anyway,
        as PyTorch does on the CPU)."""
        _enable_sdp("enable_math_sdp", SDPBackend.MATH, enabled)

    @staticmethod
    def enable_cudnn_sdp(enabled: bool) -> None:
        """Allow or forbid the cuDNN attention kernel (recorded only)."""
        _enable_sdp("enable_cudnn_sdp", SDPBackend.CUDNN_ATTENTION, enabled)

    @staticmethod
    @contextmanager
    def sdp_kernel(enable_flash: bool = True, enable_math: bool = True,
                   enable_mem_efficient: bool = True,
                   enable_cudnn: bool = True) -> Iterator[None]:
        """PyTorch's deprecated block form (a FutureWarning, as torch's): within it, only the
        kernels enabled here are allowed; the previous switches come back after it."""
        warnings.warn("backends.cuda.sdp_kernel() is deprecated, as in PyTorch: use "
                      "nn.attention.sdpa_kernel()", FutureWarning, stacklevel=3)
        chosen = {SDPBackend.FLASH_ATTENTION: enable_flash, SDPBackend.MATH: enable_math,
                  SDPBackend.EFFICIENT_ATTENTION: enable_mem_efficient,
                  SDPBackend.CUDNN_ATTENTION: enable_cudnn}
        for on in chosen.values():
            _flag("cuda", "sdp_kernel", on)
        _ACTIVE.append(tuple(b for b in _ALL if chosen.get(b, True)))
        try:
            yield
        finally:
            _ACTIVE.pop()


def _enable_sdp(name: str, backend: SDPBackend, enabled: bool) -> None:
    """Add ``backend`` to the allowed attention kernels, or take it out (in the innermost
    ``sdpa_kernel`` block, which restores the outer switches when it ends, as PyTorch's)."""
    on = _flag("cuda", name, enabled)
    _ACTIVE[-1] = tuple(b for b in _ALL if (b is backend and on) or
                        (b is not backend and b in _ACTIVE[-1]))


class MpsModule:
    """``torch.backends.mps``: Apple's Metal backend, which nodegrad does not have."""

    @staticmethod
    def is_available() -> bool:
        """False: nodegrad has no Metal backend."""
        return False

    @staticmethod
    def is_built() -> bool:
        """False: nodegrad has no Metal backend."""
        return False


cudnn = CudnnModule()
cuda = CudaModule()
mps = MpsModule()

# ``import torch.backends.cudnn as cudnn``, the common spelling, imports the switches as submodules
for _sub, _obj in (("cudnn", cudnn), ("cuda", cuda), ("mps", mps)):
    sys.modules[f"{__name__}.{_sub}"] = _obj
del _sub, _obj
