"""Array backends: NumPy on the CPU, CuPy on CUDA devices.

This is the only module that imports numpy or cupy. Everything that differs between the two
(scatter-add, strided windows, random generators, special functions, DLPack, synchronisation,
host copies) is one named method of :class:`Backend`; ops and optimisers call those and never
branch on the device themselves. :func:`matmul` is the one matrix product of the forward rules
(small CPU products on one BLAS thread).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import threading
import time

import ml_dtypes
import numpy as np

from .errors import BackendUnavailable, DeviceError, DTypeError

float32 = np.dtype("float32")
float64 = np.dtype("float64")
float16 = np.dtype("float16")
int32 = np.dtype("int32")
int64 = np.dtype("int64")
bool_ = np.dtype("bool")
bfloat16 = np.dtype(ml_dtypes.bfloat16)
"""PyTorch's bfloat16 (float32's top 16 bits), from ml_dtypes. NumPy knows it as a user dtype of
kind "V": ask :func:`is_float`, never ``dtype.kind``, whether a dtype is a float."""

DEFAULT_FLOAT = float32
_FLOAT_KINDS = "f"


def is_float(dtype) -> bool:
    """True for real floating dtypes, bfloat16 included (the real ones that carry gradients)."""
    return dtype.kind == "f" or dtype == bfloat16


def is_inexact(dtype) -> bool:
    """True for dtypes that can carry gradients: floats (bfloat16 included) and complex."""
    return dtype.kind in "fc" or dtype == bfloat16


def cast(a, dtype):
    """``a.astype(dtype)``, float64 going to bfloat16 through float32 as PyTorch's conversion
    does (rounded twice: a direct rounding differs where float32's lands on a bfloat16 tie),
    and bfloat16 to integers through float32 too (ml_dtypes gives 0 for values out of the
    integer's range, NaN and inf; PyTorch's CPU cast gives float32's results)."""
    if dtype is bfloat16 and a.dtype == float64:
        a = a.astype(float32)
    elif a.dtype == bfloat16 and np.dtype(dtype).kind in "iu":
        a = a.astype(float32)
    return a.astype(dtype)


def finfo(dtype):
    """Machine limits of real float ``dtype`` (ml_dtypes' for bfloat16, NumPy's otherwise)."""
    return ml_dtypes.finfo(dtype) if dtype == bfloat16 else np.finfo(dtype)


class Device(str):
    """A device name that reads as PyTorch's ``torch.device``: ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``, with ``.type`` and ``.index``. It *is* the string (``x.device == "cpu"``, a
    dict key, JSON), so code written for either form works; ``ng.device("cuda", 1)`` and
    ``ng.device(type="cuda", index=1)`` build one as PyTorch's constructor does."""

    __slots__ = ()

    def __new__(cls, type: str | Device = "cpu", index: int | None = None):  # noqa: A002
        if isinstance(type, Device) and index is None:
            return type
        if not isinstance(type, str):
            raise TypeError(f"device: expected a string such as 'cpu' or 'cuda:0', got "
                            f"{type!r}")
        name = type.strip().lower()
        kind, sep, num = name.partition(":")
        if kind not in ("cpu", "cuda") or (sep and not num.isdigit()):
            raise ValueError(f"device: unknown device {type!r}; expected 'cpu', 'cuda' or "
                             "'cuda:N'")
        if index is not None:
            if sep:
                raise ValueError(f"device: {type!r} already names an index; pass index= "
                                 "only with a bare type")
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"device: index must be an int >= 0, got {index!r}")
            name = f"{kind}:{index}"
        if kind == "cpu" and name != "cpu" and name != "cpu:0":
            raise ValueError(f"device: the CPU has index 0 only, got {type!r}")
        return str.__new__(cls, "cpu" if kind == "cpu" else name)

    @property
    def type(self) -> str:
        """``"cpu"`` or ``"cuda"``."""
        return self.partition(":")[0]

    @property
    def index(self) -> int | None:
        """The CUDA device's number, or None (the CPU, or ``"cuda"`` for the current one)."""
        num = self.partition(":")[2]
        return int(num) if num else None


class Backend:
    """One device: its array module ``xp`` and the few helpers where NumPy and CuPy differ."""

    __slots__ = ("name", "xp", "array_type", "device_id", "_special", "_strides")

    def __init__(self, name: str, xp, device_id: int | None = None):
        self.name = Device(name)  # a str: x.device == "cpu", and x.device.type as in PyTorch
        self.xp = xp
        self.array_type = xp.ndarray
        self.device_id = device_id
        self._special = None
        self._strides = None

    def __repr__(self) -> str:
        return f"device(type={self.name!r})"

    # --- arrays -----------------------------------------------------------------------------
    def asarray(self, data, dtype=None):
        """Array on this device (a copy only when the dtype or device changes)."""
        if self.device_id is None:
            return np.asarray(data, dtype=dtype)
        if dtype == bfloat16 or getattr(data, "dtype", None) == bfloat16:
            raise DTypeError(f"{self.name}: CuPy arrays have no bfloat16 (ml_dtypes' dtype is "
                             "NumPy's alone); convert to float16 or float32 first")
        with self.xp.cuda.Device(self.device_id):
            return self.xp.asarray(data, dtype=dtype)

    def scope(self):
        """A context in which new arrays and kernels land on this device."""
        if self.device_id is None:
            return _NULL
        return self.xp.cuda.Device(self.device_id)

    def to_host(self, a) -> np.ndarray:
        """A NumPy array with the same values (no copy on the CPU)."""
        return a if self.device_id is None else a.get()

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""
        if self.device_id is not None:
            self.xp.cuda.Device(self.device_id).synchronize()

    def from_dlpack(self, obj):
        return self.xp.from_dlpack(obj)

    # --- helpers where NumPy and CuPy differ -----------------------------------------------
    def scatter_add(self, out, index, values) -> None:
        """``out[index] += values`` with repeated indices counted once each (unbuffered)."""
        if self.device_id is None:
            if not _scatter_rows(out, index, values):
                np.add.at(out, index, values)
        elif not self._ufunc_at("add", out, index, values):
            import cupyx

            cupyx.scatter_add(out, index, values)

    def scatter_reduce(self, out, index, values, op: str) -> None:
        """``out[index] = op(out[index], values)`` for op "max", "min" or "multiply", repeated
        indices each applied (unbuffered; where CuPy has no product scatter, on the host)."""
        name = {"max": "maximum", "min": "minimum"}.get(op, op)
        if self.device_id is None:
            getattr(np, name).at(out, index, values)
        elif self._ufunc_at(name, out, index, values):
            return
        elif op in ("max", "min"):
            import cupyx

            getattr(cupyx, f"scatter_{op}")(out, index, values)
        else:
            host = out.get()
            np.multiply.at(host, tuple(i.get() if hasattr(i, "get") else i for i in index),
                           values.get())
            out[...] = self.xp.asarray(host)

    def _ufunc_at(self, ufunc: str, out, index, values) -> bool:
        """CuPy's ``ufunc.at`` where this CuPy has it for ``ufunc`` (its ``cupyx.scatter_*``
        functions are deprecated); False where it has not."""
        try:
            getattr(self.xp, ufunc).at(out, index, values)
        except (AttributeError, NotImplementedError):
            return False
        return True

    def as_strided(self, a, shape, strides):
        """A read-only strided view of ``a`` (strides in bytes)."""
        if self.device_id is None:
            return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=False)
        return self.xp.lib.stride_tricks.as_strided(a, shape, strides)

    def accumulate(self, ufunc: str, x, axis: int):
        """``xp.<ufunc>.accumulate(x, axis=axis)`` for maximum, minimum and logaddexp. CuPy has
        no accumulate for these: there an inclusive scan by doubling, log2(n) rounds of the ufunc
        on shifted views (maximum and minimum give the same values; logaddexp adds up in
        another order, so its last bits may differ)."""
        f = getattr(self.xp, ufunc)
        if self.device_id is None:
            return f.accumulate(x, axis=axis)
        out = self.xp.array(x, copy=True)
        n, lead = x.shape[axis], (slice(None),) * axis
        k = 1
        while k < n:  # out[i] = f(out[i], out[i - k]): each element then covers 2k inputs
            tail = lead + (slice(k, None),)
            out[tail] = f(out[tail], out[lead + (slice(0, n - k),)])
            k *= 2
        return out

    def _special_module(self):
        if self._special is None:
            if self.device_id is None:
                import scipy.special as special
            else:
                import cupyx.scipy.special as special
            self._special = special
        return self._special

    def erf(self, x):
        """The error function, elementwise, in x's float dtype (SciPy's has no float16 loop:
        it answers a float16 array in float64); float32 host arrays and scalars by
        :func:`erf32` (float32 arithmetic, within 1 ulp), float64 by SciPy."""
        if (type(x) is np.ndarray or type(x) is np.float32) and x.dtype == float32:
            return erf32(x)
        return _in_dtype_of(x, self._special_module().erf(x))

    def erfinv(self, x):
        """The inverse error function, elementwise (on (-1, 1)), in x's float dtype."""
        return _in_dtype_of(x, self._special_module().erfinv(x))

    def special(self, name: str, *args):
        """SciPy's special function ``name`` elementwise (``scipy.special`` on the CPU,
        ``cupyx.scipy.special`` on CUDA): gammaln, digamma, polygamma, zeta, gammainc, ..."""
        return getattr(self._special_module(), name)(*args)

    def copy_stream(self):
        """A side stream for host-to-device copies that overlap compute (None on the CPU)."""
        if self.device_id is None:
            return None
        with self.xp.cuda.Device(self.device_id):
            return self.xp.cuda.Stream(non_blocking=True)

    def upload(self, host_arrays, stream=None) -> list:
        """Host arrays on this device, copied on ``stream`` and finished on return.

        Made for a prefetch thread: the copies of the next batch run on the side stream while
        the default stream computes; on the CPU the arrays are returned as they are.
        """
        if self.device_id is None:
            return [np.asarray(a) for a in host_arrays]
        with self.xp.cuda.Device(self.device_id), stream if stream is not None else _NULL:
            out = [self.xp.asarray(a) for a in host_arrays]
        if stream is not None:
            stream.synchronize()
        return out

    def elementwise_kernel(self, in_params: str, out_params: str, operation: str, name: str):
        """A compiled CUDA elementwise kernel (CuPy's ``ElementwiseKernel``; CUDA devices only).

        Built without fused multiply-adds (``--fmad=false``), so each operation rounds as the
        separate NumPy/CuPy calls it replaces would.
        """
        if self.device_id is None:
            raise BackendUnavailable(f"elementwise_kernel '{name}': CUDA kernels need a CUDA "
                                     "device; this array is on the CPU")
        return self.xp.ElementwiseKernel(in_params, out_params, operation, name,
                                         options=("--fmad=false",))

    def generator(self, seed: int | None):
        """A fresh random generator for this device."""
        if self.device_id is None:
            return np.random.Generator(np.random.PCG64(seed))
        with self.xp.cuda.Device(self.device_id):
            return self.xp.random.default_rng(seed)  # XORWOW

    def permutation(self, rng, n: int):
        """A random permutation of ``range(n)`` from ``rng``, this device's generator.

        CuPy's generator has no ``permutation``: the order that sorts ``n`` uniform draws is a
        uniformly random permutation (float64 draws: a tie has odds of about n² / 2⁵⁴).
        """
        if self.device_id is None:
            return rng.permutation(n)
        return self.xp.argsort(rng.random(n, dtype=self.xp.float64))


class _NullScope:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _NullScope()
CPU = Backend("cpu", np)
_cuda: dict[int, Backend] = {}
_cupy = None


def _import_cupy():
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise BackendUnavailable(
                "CUDA devices need CuPy, which is not installed: "
                "pip install 'nodegrad[gpu]' (or a cupy-cudaXXx wheel matching your CUDA)"
            ) from e
        _cupy = cupy
    return _cupy


def cuda_backend(index: int) -> Backend:
    """The backend of CUDA device ``index`` (imports CuPy on first use)."""
    b = _cuda.get(index)
    if b is None:
        cupy = _import_cupy()
        n = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= index < n:
            raise DeviceError(f"device 'cuda:{index}' does not exist; this machine has {n} GPU(s)")
        # setdefault: one Backend per device even when two threads get here at once
        b = _cuda.setdefault(index, Backend(f"cuda:{index}", cupy, index))
    return b


def get_backend(device) -> Backend:
    """Resolve ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a Backend to a Backend."""
    if device is None or device is CPU:
        return CPU
    if isinstance(device, Backend):
        return device
    if not isinstance(device, str):
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    name = device.strip().lower()
    if name == "cpu":
        return CPU
    if name == "cuda" or name == "gpu":
        return cuda_backend(0)
    if name.startswith("cuda:") and name[5:].isdigit():
        return cuda_backend(int(name[5:]))
    raise DeviceError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")


def _in_dtype_of(x, out):
    """``out`` in float array ``x``'s dtype (a library function's wider result rounded once)."""
    dt = getattr(x, "dtype", None)
    if dt is not None and dt.kind == "f" and getattr(out, "dtype", dt) != dt:
        return out.astype(dt)
    return out


def backend_of(a) -> Backend:
    """The backend that owns array ``a``."""
    if type(a) is np.ndarray or isinstance(a, np.ndarray | np.generic):
        return CPU
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return cuda_backend(a.device.id)
    if hasattr(a, "_data") and hasattr(a, "requires_grad"):
        raise DeviceError(f"expected a NumPy or CuPy array, got a {type(a).__name__} (pass its "
                          "array: t.numpy(), or t.detach() to nodegrad's functions)")
    raise DeviceError(f"expected a NumPy or CuPy array, got {type(a).__name__}")


def cuda_available() -> bool:
    """True when CuPy is installed and sees at least one GPU."""
    try:
        cupy = _import_cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def cuda_version() -> str | None:
    """The CUDA runtime version CuPy runs on ("12.4"), or None without CuPy or a GPU."""
    if not cuda_available():
        return None
    v = int(_import_cupy().cuda.runtime.runtimeGetVersion())
    return f"{v // 1000}.{v % 1000 // 10}"


def cuda_device_count() -> int:
    """How many GPUs CuPy sees (0 without CuPy or a GPU)."""
    try:
        return int(_import_cupy().cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def cuda_synchronize(index: int) -> None:
    """Wait for every kernel queued on CUDA device ``index``."""
    cupy = cuda_backend(index).xp
    with cupy.cuda.Device(index):
        cupy.cuda.runtime.deviceSynchronize()


def cuda_pool_bytes(index: int, held: bool) -> int:
    """Bytes of CuPy's memory pool on device ``index`` in live arrays, or (``held``) all it
    holds, cached blocks included; 0 before CuPy was loaded."""
    if _cupy is None:
        return 0
    cuda_backend(index)
    with _cupy.cuda.Device(index):
        pool = _cupy.get_default_memory_pool()
        return int(pool.total_bytes() if held else pool.used_bytes())


def cuda_free_cached() -> None:
    """Return the cached blocks of CuPy's memory pools to the driver (when CuPy is loaded)."""
    if _cupy is not None:
        _cupy.get_default_memory_pool().free_all_blocks()
        _cupy.get_default_pinned_memory_pool().free_all_blocks()


def dlpack_backend(obj) -> Backend:
    """The backend for an object exporting ``__dlpack_device__``."""
    kind, index = obj.__dlpack_device__()
    if int(kind) == 1:  # kDLCPU
        return CPU
    if int(kind) in (2, 3):  # kDLCUDA, kDLCUDAHost
        return cuda_backend(int(index))
    raise DeviceError(f"from_dlpack: unsupported DLPack device type {kind}")


def as_dtype(dtype):
    """NumPy dtype from a dtype-like (None stays None)."""
    return None if dtype is None else np.dtype(dtype)


def format_array(a, prefix: str) -> str:
    """NumPy's text form of a host array, indented to follow ``prefix``."""
    return np.array2string(a, separator=", ", prefix=prefix)


def can_cast(src, dst) -> bool:
    """True when storing ``src`` values in ``dst`` stays within a kind (float to int does not)."""
    return bool(np.can_cast(src, dst, "same_kind"))


def is_array(x) -> bool:
    """True for a NumPy or CuPy array."""
    return isinstance(x, np.ndarray) or (_cupy is not None and isinstance(x, _cupy.ndarray))


def stand_ins(layouts: dict) -> dict:
    """NumPy arrays with the shapes, strides and dtypes of ``layouts`` (key -> (shape, strides,
    dtype)) that hold no memory of their own: views of one anonymous mapping as large as the
    largest of them, which the system backs with pages only where something reads or writes.
    A compiler pass inspects a traced array's layout after the array itself is gone (their
    values are meaningless: they overlap)."""
    import mmap

    spans = {}
    for k, (shape, strides, dtype) in layouts.items():
        dtype = np.dtype(dtype)
        if 0 in shape:
            spans[k] = (0, 0)
            continue
        lo = sum(min(0, st * (n - 1)) for n, st in zip(shape, strides))
        hi = sum(max(0, st * (n - 1)) for n, st in zip(shape, strides)) + dtype.itemsize
        spans[k] = (-lo, hi - lo)
    if not spans:
        return {}
    buf = mmap.mmap(-1, max(1, max(n for _, n in spans.values())))
    return {k: np.ndarray(shape, dtype, buf, spans[k][0], strides)
            for k, (shape, strides, dtype) in layouts.items()}


ndarray = np.ndarray
generic = np.generic
NUMPY_SCALARS = (np.number, np.bool_)
"""NumPy's number and bool scalars: values a jitted step compares as it compares Python's."""


# --- matrix products -------------------------------------------------------------------------
SMALL_PRODUCT = 1 << 25
"""Multiply-adds per matrix below which a product runs on one BLAS thread (~1 ms of one core).
The thread count follows from the product's shape alone: some shapes' bits depend on it (32 x
128 x 128, 25 x 1000 x 75), so a rule that looked at what ran before (the products after a
large one on the user's threads, while OpenBLAS's workers still spin) gave a model other bits
after an unrelated product, and a resumed run other bits than the run it continues."""

BLAS_ONE_THREAD = 1 << 18
"""Multiply-adds per matrix up to which OpenBLAS itself runs a product on one thread (its GEMM
rule, 65536 x GEMM_MULTITHREAD_THRESHOLD 4; matrix-vector products switch lower, at 9216, but
measured no slower with a busy second core): such products skip the thread-count switch,
~2 µs of a 100-row layer's 4-20 µs products."""


class _BlasThreads:
    """NumPy's OpenBLAS thread count: the library found by threadpoolctl on first use, its
    get/set functions then called directly (ctypes, ~0.2 µs each, for every small product)."""

    get = set = None
    looked = False
    arch = ""  # OpenBLAS's kernel family ("SkylakeX", "Haswell", ...), once found
    lib = None  # the library (ctypes), once found

    @classmethod
    def find(cls) -> bool:
        cls.looked = True
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # without threadpoolctl every product keeps BLAS's own threads
            return False
        for c in ThreadpoolController().select(internal_api="openblas").lib_controllers:
            if "numpy" not in c.filepath or c.threading_layer != "pthreads":
                continue
            cls.arch = getattr(c, "architecture", "") or ""
            cls.lib = c.dynlib
            for name in ("scipy_openblas_{}64_", "scipy_openblas_{}", "openblas_{}64_",
                         "openblas_{}"):
                get = getattr(c.dynlib, name.format("get_num_threads"), None)
                set_ = getattr(c.dynlib, name.format("set_num_threads"), None)
                if get is not None and set_ is not None:
                    cls.get, cls.set = get, set_
                    return True
        return False


POOL_MIN = 1 << 15
"""Elements from which a float32 loop of :mod:`._cpu_kernels` (the exact GELU's, softmax's)
runs in two halves, the second on OpenBLAS's worker thread (:func:`pool_split`)."""


class _BlasPool:
    """OpenBLAS's ``exec_blas`` (its thread pool's entry: a queue of jobs, the first run by the
    caller, the others by its workers), where NumPy's OpenBLAS 0.3 on x86-64 Linux exports it
    and a split loop gives the unsplit loop's values on first use; 0 elsewhere."""

    exec_blas = 0
    job = 0  # _cpu_kernels.pool_job()'s address
    looked = False
    consts = None  # the loops' float32 constants (_cpu_kernels._pool_job's order)

    @classmethod
    def find(cls, k) -> None:
        import ctypes
        import platform

        cls.looked = True
        if sys.platform != "linux" or platform.machine() != "x86_64" or not (
                _BlasThreads.get is not None or (not _BlasThreads.looked and _BlasThreads.find())):
            return
        lib = _BlasThreads.lib
        fn = getattr(lib, "exec_blas", None)
        config = next((getattr(lib, n) for n in ("scipy_openblas_get_config64_",
                                                 "scipy_openblas_get_config",
                                                 "openblas_get_config64_", "openblas_get_config")
                       if hasattr(lib, n)), None)
        if fn is None or config is None:
            return
        config.restype = ctypes.c_char_p
        if not (config() or b"").startswith(b"OpenBLAS 0.3."):
            return
        near, mid, tail, ends = _ERF32
        cls.consts = np.array(near + mid + tail + ends + (
            _INV_SQRT2_32, 0.5, 1.0, _INV_SQRT_2PI_32, -0.5) + _EXP32_POLY + _EXP32_CONSTS,
            float32)
        cls.job = k.pool_job()
        cls.exec_blas = ctypes.cast(fn, ctypes.c_void_p).value or 0
        x = np.linspace(-6, 6, POOL_MIN + 7, dtype=float32)  # the first use: a GELU both ways
        whole, halves = np.empty_like(x), np.empty_like(x)
        k.gelu32(x, whole, near, mid, tail, ends, *cls.consts[34:37])
        if _BlasThreads.get() < 2 or not pool_split(k.GELU, x.size, 1, x, halves) or not \
                np.array_equal(whole, halves):
            cls.exec_blas = 0


def pool_split(kind: int, rows: int, n: int, *arrays, job: int = 0, consts=None,
               least: int = POOL_MIN, split: int = 0) -> bool:
    """Run ``_cpu_kernels._pool_job``'s loop ``kind`` over ``rows`` rows of ``n`` elements of
    ``arrays`` (flat C-ordered float32 NumPy arrays, the loop's, in its order) in two halves,
    the first on this thread, the second on OpenBLAS's worker (:class:`_BlasPool`); False
    (nothing run) where that is not to be: under ``least`` elements, an array of another kind,
    numba not loaded, no ``exec_blas``, or OpenBLAS set to one thread. ``job`` and ``consts``:
    another job of the same argument block and its constants (the fused Adam update's).
    Elementwise loops and loops by rows give the same bits in halves. ``split``: the first
    row of the second half (by default the middle row, or for a flat loop the middle rounded
    to 64 bytes)."""
    if rows * n < least or rows < 2:
        return False
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != float32 or not a.flags.c_contiguous:
            return False
    k = cpu_kernels()
    if k is None:
        return False
    if not _BlasPool.looked:
        _BlasPool.find(k)
    if not _BlasPool.exec_blas or _BlasThreads.get() < 2:
        return False
    if not split:
        split = rows // 2 if n > 1 else (rows // 2 + 15) & ~15  # a flat loop: 64-byte halves
    split = min(split, rows)
    a = arrays + (arrays[0],) * (4 - len(arrays))
    queue = np.zeros((2, k.QUEUE_BYTES // 8), np.int64)
    return k.pool_run(_BlasPool.exec_blas, job or _BlasPool.job, queue,
                      np.zeros((2, k.POOL_ARGS), np.int64), kind, rows, n, split,
                      _BlasPool.consts if consts is None else consts, *a) == 0


# --- attention ------------------------------------------------------------------------------
def attention_form(xp, q, k, v, scale: float, causal: bool, g=None):
    """``softmax(q kᵀ · scale [+ causal mask]) v`` over (..., L, E) arrays of one shape, or with
    ``g`` its VJP stacked as (3, ...) (dq, dk, dv): ops.attention's definition in ``xp``'s
    operations. Host float32 takes :func:`exp32_neg` (the exp of the shifted scores) and NumPy's
    pairwise row sums, which :func:`attention` and :func:`attention_grad` reproduce row by row.
    Host results are laid out as ``q`` (:func:`ordered_like`), as the loops'."""
    qs = xp.empty(q.shape, q.dtype)
    xp.multiply(q, scale, out=qs)
    s = xp.matmul(qs, xp.swapaxes(k, -1, -2))
    if causal:
        n = q.shape[-2]
        s += xp.where(xp.tril(xp.ones((n, n), dtype=bool)), 0, -xp.inf).astype(q.dtype)
    s -= xp.max(s, axis=-1, keepdims=True)
    host = xp is np
    p = exp_nonpositive(xp, s)
    p /= (np.add.reduce(p, axis=-1, keepdims=True) if host
          else xp.sum(p, axis=-1, keepdims=True))
    if g is None:
        out = xp.matmul(p, v)
    else:
        out = xp.empty((3,) + q.shape, q.dtype)
        xp.matmul(xp.swapaxes(p, -1, -2), g, out=out[2])
        dp = xp.matmul(g, xp.swapaxes(v, -1, -2))
        t = dp * p
        r = (np.add.reduce(t, axis=-1, keepdims=True) if host
             else xp.sum(t, axis=-1, keepdims=True))
        ds = (dp - r) * p
        xp.multiply(xp.matmul(ds, k), scale, out=out[0])
        xp.matmul(xp.swapaxes(ds, -1, -2), qs, out=out[1])
    if host and not q.flags.c_contiguous:  # laid out as q, as the loops' (ordered_like)
        like = ordered_like(q, 1 if g is None else 3)
        like = like[0] if g is None else like
        np.copyto(like, out)
        out = like
    return out


class _Attention:
    """NumPy's ``cblas_sgemm`` (ILP64) for :func:`attention`'s loops, and whether they give
    :func:`attention_form`'s bits on first use (0 where not found or not)."""

    sgemm = 0
    job = 0
    looked = False

    @classmethod
    def find(cls, k) -> None:
        import ctypes

        cls.looked = True
        if not _BlasPool.looked:
            _BlasPool.find(k)
        lib = _BlasThreads.lib
        fn = next((getattr(lib, n) for n in ("scipy_cblas_sgemm64_", "cblas_sgemm64_")
                   if lib is not None and hasattr(lib, n)), None)
        if fn is None:
            return
        cls.sgemm = ctypes.cast(fn, ctypes.c_void_p).value or 0
        cls.job = k.attention_job()
        rng = np.random.default_rng(0)
        q, kk, v, g = (rng.standard_normal((2, 3, 16, 8), dtype=float32) for _ in range(4))
        for causal in (False, True):
            want = (attention_form(np, q, kk, v, 0.35, causal),
                    attention_form(np, q, kk, v, 0.35, causal, g))
            got = (_attention_run(k, q, kk, v, 0.35, causal, None, split=False),
                   _attention_run(k, q, kk, v, 0.35, causal, g, split=False))
            if not all(a is not None and a.tobytes() == b.tobytes() for a, b in zip(got, want)):
                cls.sgemm = 0
                return


ATTENTION_MIN = 1 << 14
"""Score entries (batch x heads x L x S) from which :func:`attention` runs its loops."""

_GEMM_SERIAL = 65536 * 4
"""OpenBLAS's threading threshold for one product (M·N·K, SMP_THRESHOLD_MIN times
GEMM_MULTITHREAD_THRESHOLD): below it a product runs on the calling thread, as the units on
OpenBLAS's worker must."""


def _att_layout(a) -> tuple | None:
    """(address, batch, head and row strides in elements) of a float32 (B, H, L, E) or (N, L, E)
    NumPy array whose rows NumPy's matmul passes to BLAS as they are (unit element stride, row
    stride at least E); None otherwise."""
    st = a.strides
    if st[-1] != 4 or st[-2] % 4 or st[-2] // 4 < a.shape[-1] or any(x % 4 for x in st):
        return None
    if a.ndim == 3:
        return a.ctypes.data, st[0] // 4, 0, st[1] // 4
    return a.ctypes.data, st[0] // 4, st[1] // 4, st[2] // 4


def ordered_like(q, n: int):
    """``n`` new arrays of ``q``'s shape and dtype laid out in its memory order (its axes by
    decreasing stride, as ``np.empty_like`` orders one; a broadcast axis, of stride 0,
    outermost), stacked on a new first axis. Attention's results follow its queries' layout,
    as PyTorch's do: the heads of a split projection (``qkv.split(...)``, ``view``,
    ``transpose(1, 2)``) give an output whose ``transpose(1, 2).contiguous()`` is free and
    gradients whose reshape back is a view."""
    perm = sorted(range(q.ndim), key=lambda i: (q.strides[i] != 0, -abs(q.strides[i])))
    buf = np.empty((n,) + tuple(q.shape[i] for i in perm), q.dtype)
    return buf.transpose((0,) + tuple(1 + perm.index(i) for i in range(q.ndim)))


def _attention_run(k, q, kk, v, scale: float, causal: bool, g, split: bool = True):
    """The loops' forward (``g`` None: y) or backward ((3, ...) dq, dk, dv) on checked arrays,
    laid out as ``q`` (:func:`ordered_like`); None where an array's layout is not one they
    take."""
    lays = [_att_layout(a) for a in (q, kk, v) + (() if g is None else (g,))]
    if any(x is None for x in lays) or (g is not None and lays[3] == lays[2]):
        return None  # (g the very array v: NumPy's matmul takes g vᵀ as a syrk, not a gemm)
    heads = q.shape[1] if q.ndim == 4 else 1
    units = q.size // (q.shape[-2] * q.shape[-1])
    n, e = q.shape[-2], q.shape[-1]
    out = ordered_like(q, 1 if g is None else 3)
    res = _att_layout(out[0])
    if res is None:  # rows not laid out as the loops write them: C order
        out = np.empty(out.shape, float32)
        res = _att_layout(out[0])
    if g is None:
        out = out[0]
        lays.append(res)
    scratch = n * e + 2 * n * n + n
    two = split and units >= 2 and n * n * e <= _GEMM_SERIAL and _BlasPool.exec_blas != 0 \
        and _BlasThreads.get() >= 2
    args = np.zeros((2, k.ATT_ARGS), np.int64)
    work = np.empty((2, scratch), float32)
    consts = np.array((scale,) + _EXP32_POLY + _EXP32_CONSTS, float32)
    half = units // 2 if two else units
    for t in range(2):
        a = args[t]
        a[0] = k.ATT_FORWARD if g is None else k.ATT_BACKWARD
        a[1], a[2] = (0, half) if t == 0 else (half, units)
        a[3:9] = heads, n, n, e, _Attention.sgemm, int(causal)
        for i, lay in enumerate(lays):
            a[9 + 4 * i:13 + 4 * i] = lay
        a[25], a[26] = work[t].ctypes.data, consts.ctypes.data
        if g is not None:
            a[27:30] = out[0].ctypes.data, out[1].ctypes.data, out[2].ctypes.data
            a[32:35] = res[1:]
        a[30] = a[31] = 112
    if two:
        queue = np.zeros((2, k.QUEUE_BYTES // 8), np.int64)
        if k.exec_two(_BlasPool.exec_blas, _Attention.job, queue, args) != 0:
            return None
    else:
        k.attention_units(args[0])
    return out


def _attention_ready(arrays) -> object | None:
    """The kernels where :func:`attention`'s loops take these arrays: float32 C-able NumPy
    arrays of one 3-D or 4-D shape, L and E of 2 or more, :data:`ATTENTION_MIN` scores or more,
    numba loaded and NumPy's cblas_sgemm found."""
    q = arrays[0]
    if type(q) is not np.ndarray or q.dtype != float32 or q.ndim not in (3, 4):
        return None
    for a in arrays[1:]:
        if type(a) is not np.ndarray or a.dtype != float32 or a.shape != q.shape:
            return None
    n, e = q.shape[-2], q.shape[-1]
    if n < 2 or e < 2 or q.size // e * n < ATTENTION_MIN:
        return None
    k = cpu_kernels()
    if k is None:
        return None
    if not _Attention.looked:
        _Attention.find(k)
    return k if _Attention.sgemm else None


def attention(q, k, v, scale: float, causal: bool):
    """:func:`attention_form`'s forward in numba loops over the (batch, head) units, the same
    bits (see ``_cpu_kernels``, attention), half of them on OpenBLAS's worker; None where
    :func:`_attention_ready` or the layouts say no."""
    kern = _attention_ready((q, k, v))
    return None if kern is None else _attention_run(kern, q, k, v, scale, causal, None)


def attention_grad(g, q, k, v, scale: float, causal: bool):
    """:func:`attention_form`'s VJP (3, ...) likewise; None where :func:`attention` would be."""
    kern = _attention_ready((q, k, v, g))
    return None if kern is None else _attention_run(kern, q, k, v, scale, causal, g)


# --- LAPACK's symmetric indefinite factorisation (host) ----------------------------------------
def sytrf(a):
    """LAPACK's ``sytrf`` (Bunch-Kaufman LDLᵀ, lower triangle) of one symmetric float32/float64
    host matrix, through SciPy: ``(LD, pivots, info)``, LD's lower triangle L's strict part
    and D's 1x1 and 2x2 blocks, pivots 1-based (a 2x2 block's two entries both -p), info the
    first zero pivot (1-based; 0: none), exactly as LAPACK (and PyTorch) give them."""
    from scipy.linalg import lapack

    ld, ipiv, info = lapack.get_lapack_funcs("sytrf", (a,))(a, lower=1)
    return np.tril(ld), ipiv.astype(np.int32), max(int(info), 0)


def sytrs(ld, ipiv, b):
    """LAPACK's ``sytrs``: X with A X = B from :func:`sytrf`'s factors of A (host arrays)."""
    from scipy.linalg import lapack

    x, info = lapack.get_lapack_funcs("sytrs", (ld, b))(ld, ipiv, b, lower=1)
    if info < 0:
        raise ValueError(f"sytrs: argument {-info} was invalid")
    return x


def sobol(dimension: int, scramble: bool, seed: int | None):
    """A Sobol' sequence generator: SciPy's ``scipy.stats.qmc.Sobol`` (Joe and Kuo's
    direction numbers, 30 bits as PyTorch's), with ``random(n)``, ``fast_forward(n)`` and
    ``reset()``; ``seed`` (an int or None) draws the scramble."""
    from scipy.stats import qmc

    return qmc.Sobol(dimension, scramble=scramble, bits=30, seed=np.random.default_rng(seed))


# --- host heap: keep freed array buffers for reuse ----------------------------------------------
# glibc returns a freed buffer of a few MiB to the kernel (munmap, or a trim of the heap top) and
# the next array of that size takes one page fault per 4 KiB page; on virtual machines that
# costs more than the arithmetic (a vmap(grad) step of 256 per-example gradients: ~3000 faults,
# half its time). Buffers up to 32 MiB therefore come from the heap, and up to 64 MiB of freed
# heap stays mapped for the next step. The peak resident set is unchanged; an explicit
# MALLOC_*_ or GLIBC_TUNABLES=glibc.malloc.* setting, or NODEGRAD_KEEP_FREED_MEMORY=0, leaves
# glibc's defaults.
HEAP_BUFFER_MAX = 32 << 20
HEAP_KEEP_FREE = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(env: dict | None = None) -> bool:
    """Tune glibc's malloc to reuse freed array buffers (True when applied; see above)."""
    import os

    env = os.environ if env is None else env
    if env.get("NODEGRAD_KEEP_FREED_MEMORY", "1") == "0" or "glibc.malloc" in env.get(
            "GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") and k.endswith("_") for k in env):
        return False  # the user chose malloc's settings (or none from us)
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
    except (AttributeError, ValueError, OSError):  # not glibc (macOS, Windows, musl)
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BUFFER_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP_FREE))


KEPT_FREED_MEMORY = keep_freed_memory()


def matmul(a, b):
    """``a @ b``, with a small CPU product on one BLAS thread.

    A second OpenBLAS thread gains little on a product under :data:`SMALL_PRODUCT` multiply-adds
    and, when other processes share the cores, waits for a descheduled thread (a W3b step ran
    ~20x slower); large products keep the thread count the user set.
    """
    if type(a) is not np.ndarray:
        if a.ndim == 2 and b.ndim == 2:
            return a.dot(b)  # CuPy's 2-D product by its shorter path (~half matmul's host time)
        return a @ b
    if a.ndim == 3 and b.ndim == 3 and (a.strides[0] == 0) != (b.strides[0] == 0):
        shared = _shared_product(a, b)
        if shared is not None:
            return shared
    return _matmul_small(a, b)


_add_reduce = np.add.reduce  # np.sum without its Python wrapper (same dtypes)


def diagonal_view(x, offset: int, axis1: int, axis2: int):
    """The ``offset`` diagonal of ``x``'s (axis1, axis2) planes as a last axis: a view that
    writes reach ``x`` through, as PyTorch's ``diagonal`` (NumPy's own view is read-only)."""
    d = x.diagonal(offset, axis1, axis2)
    if type(d) is np.ndarray and not d.flags.writeable and x.flags.writeable:
        d.flags.writeable = True
    return d


# --- large memory-bound loops on two cores ----------------------------------------------------
SPLIT_MIN = 1 << 19
"""Elements (2 MiB of float32) from which a full sum or a same-shape multiply, add or subtract
of C-ordered float arrays runs in two halves, one on a helper thread (NumPy releases the GIL
inside its loops), or for float32 with numba loaded as numba loops on OpenBLAS's worker
(:func:`_pool_halves`): such loops are limited by one core's memory rate (a 2.56 M-element
float32 multiply: 1.0 ms on one thread, 0.57 on two; W8's step was 7 % faster from 2^19 than
from 2^20, which left its 1.02 M-element arrays on one thread), where PyTorch uses its intra-op
threads. The halves give the one-thread result bit for bit (a sum is split where NumPy's
pairwise sum splits it)."""


class _Halves:
    """One helper thread that runs the second half of a loop while the caller runs the first.

    The caller takes the second half back when the helper has not begun it by the time the first
    is done (another process holds the other core; a thread is never waited for before it has
    begun), runs everything itself while another thread uses the helper, and carries its NumPy
    error state over. A forked child starts its own helper."""

    def __init__(self) -> None:
        self._use = threading.Lock()  # one caller at a time; others run both halves themselves
        self._cond = threading.Condition(threading.Lock())
        self._job = None  # (fn, args, errstate) waiting for the helper
        self._result = None  # (value, exception) of the helper's last job, until read
        self._pid = None
        self.enabled = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1) > 1

    def _start(self) -> None:
        self._job = self._result = None
        threading.Thread(target=self._loop, name="nodegrad-halves", daemon=True).start()
        self._pid = os.getpid()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while self._job is None:
                    cond.wait()
                fn, args, err = self._job
                self._job = None
            try:
                with np.errstate(**err):
                    res = (fn(*args), None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
                res = (None, e)
            fn = args = None  # hold no array past the job (a step's peak memory)
            with cond:
                self._result, res = res, None
                cond.notify_all()

    def run(self, fn, first: tuple, second: tuple):
        """``(fn(*first), fn(*second))``, the second on the helper where it begins in time."""
        if not self._use.acquire(blocking=False):
            return fn(*first), fn(*second)
        try:
            if self._pid != os.getpid():
                self._start()
            cond = self._cond
            job = (fn, second, np.geterr())
            with cond:
                self._job = job
                cond.notify()
            try:
                a = fn(*first)
            finally:  # the second half is taken back, or its result collected, in any case
                with cond:
                    begun = self._job is not job
                    self._job = None
                    if begun:
                        while self._result is None:
                            cond.wait()
                        (b, exc), self._result = self._result, None
            if not begun:
                return a, fn(*second)
            if exc is not None:
                raise exc
            return a, b
        finally:
            self._use.release()


_halves = _Halves()


def two_threads() -> bool:
    """Whether a loop may run in halves on two threads: more than one core is ours and the
    BLAS thread count (``set_num_threads``, threadpoolctl, ``OPENBLAS_NUM_THREADS``: the
    process's one intra-op setting, as PyTorch's) is above one."""
    if not _halves.enabled:
        return False
    get = _BlasThreads.get
    if get is None:
        if _BlasThreads.looked or not _BlasThreads.find():
            return True
        get = _BlasThreads.get
    return get() > 1


def _halvable(x) -> bool:
    return (type(x) is np.ndarray and x.size >= SPLIT_MIN and x.dtype.kind == "f"
            and x.dtype.itemsize >= 4 and x.flags.c_contiguous and two_threads())


_POOL_UFUNCS = {np.multiply: "MULTIPLY", np.add: "ADD", np.subtract: "SUBTRACT"}


def binary_halves(ufunc, x, y):
    """``ufunc(x, y)`` for two C-ordered float arrays of one shape and dtype from
    :data:`SPLIT_MIN` elements, in halves on two threads (float32 on OpenBLAS's worker, see
    :func:`_pool_halves`); None for any other operands."""
    if not (_halvable(x) and type(y) is np.ndarray and y.shape == x.shape
            and y.dtype == x.dtype and y.flags.c_contiguous):
        return None
    out = np.empty_like(x)
    xf, yf, of = x.reshape(-1), y.reshape(-1), out.reshape(-1)
    kind = _POOL_UFUNCS.get(ufunc)
    if kind is not None and x.dtype == float32 and _pool_halves():
        bad = np.zeros(2, float32)
        if pool_split(getattr(cpu_kernels(), kind), xf.size, 1, xf, yf, of, bad):
            if bad.any():  # an inf or NaN: NumPy's loop, for its warnings (the same values)
                ufunc(x, y, out=out)
            return out
    h = xf.size // 2
    _halves.run(ufunc, (xf[:h], yf[:h], of[:h]), (xf[h:], yf[h:], of[h:]))
    return out


def _pool_halves() -> bool:
    """Whether a memory-bound loop's float32 halves go to OpenBLAS's worker
    (:func:`pool_split`) rather than the halves helper: where numba's loops are loaded and the
    worker is found, and underflow is ignored (NumPy's default; the loops flag only an inf or a
    NaN they make, so ``np.errstate(under=...)`` keeps NumPy's own loops). The helper thread,
    woken from its wait, began its half 40-120 µs after the call on these VMs (W8's 2.56
    M-element multiply: the first half done in ~220 µs, the second ~125 µs after it);
    OpenBLAS's worker spins for ~0.1 s after each job, so the loops of a training step find it
    awake."""
    return cpu_kernels() is not None and np.geterr()["under"] == "ignore"


def sum_halves(x):
    """``np.add.reduce`` of all of a C-ordered float array from :data:`SPLIT_MIN` elements as
    the sum of two halves, each on its own thread, split where NumPy's pairwise summation splits
    it (half the length, less its remainder by 8), so the bits are NumPy's; None otherwise. A
    sum of zero (whose sign the split could change) is NumPy's own."""
    if not _halvable(x):
        return None
    flat = x.reshape(-1)
    h = flat.size // 2
    h -= h % 8
    parts = np.empty(2, float32)
    if x.dtype == float32 and _pool_halves() and pool_split(cpu_kernels().SUM, flat.size, 1,
                                                            flat, parts, split=h):
        a, b = parts  # numba's pairwise sums in NumPy's order: its bits (_cpu_kernels._pairwise)
        if not np.isfinite(a + b):  # NumPy's loops, for their warnings (the same value)
            a, b = _halves.run(_add_reduce, (flat[:h],), (flat[h:],))
    else:
        a, b = _halves.run(_add_reduce, (flat[:h],), (flat[h:],))
    total = x.dtype.type(0) + (a + b)
    return total if total != 0 else _add_reduce(flat)


def _fork_child() -> None:
    _halves._pid = None  # the helper thread is the parent's
    _halves._use = threading.Lock()
    _halves._cond = threading.Condition(threading.Lock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fork_child)


def sum_outer(x, axis, keepdims: bool):
    """``x.sum(axis, keepdims)``; a float array summed over all but a few axes that lie together
    in memory (a bias gradient: (N, C) over N, (N, C, H, W) over N, H, W in either layout) runs
    as products with ones: NumPy adds such reductions a few elements per inner loop (3-100x
    slower from 4096 elements; a (100, 25, 5) convolution's bias: 45 against 4 µs), and a
    leading axis row by row (2-5x slower than a matrix-vector product)."""
    if x.dtype == float16:  # float16 sums in float32, rounded once (as PyTorch's)
        return np.sum(x, axis=axis, keepdims=keepdims, dtype=float32).astype(float16)
    if type(x) is not np.ndarray:
        return np.sum(x, axis=axis, keepdims=keepdims)
    if (axis is None or (type(axis) is tuple and len(axis) == x.ndim)) and x.size >= SPLIT_MIN:
        total = sum_halves(x)
        if total is not None:
            total = np.asarray(total)
            return total.reshape((1,) * x.ndim) if keepdims else total
    if type(axis) is not tuple or x.dtype.kind != "f" or x.dtype.itemsize < 4 or x.size < 4096:
        return _add_reduce(x, axis=axis, keepdims=keepdims)
    return sum_form(x.shape, x.strides, x.dtype, axis, keepdims)(x)


def accumulated(fn, x, axis: int):
    """``fn(x, axis=axis)`` for a running sum or product; float16 accumulates in float32 and
    is rounded once, as PyTorch's (a float16 running sum of 0.1 stalls at 256 otherwise)."""
    if x.dtype == float16:
        return fn(x, axis=axis, dtype=float32).astype(float16)
    return fn(x, axis=axis)


def sums_as_numpy(x, axis, keepdims: bool) -> bool:
    """Whether :func:`sum_outer` sums NumPy array ``x`` with NumPy's own reduction (not in
    halves, not as products with ones): a kernel that adds in NumPy's order then has its bits.
    The answer is :func:`sum_form`'s, which marks its NumPy forms (a large full sum, which may
    go in halves, counts as not)."""
    if (axis is None or (type(axis) is tuple and len(axis) == x.ndim)) and x.size >= SPLIT_MIN:
        return False
    if x.dtype == float16:  # in float32 (sum_outer)
        return False
    if type(axis) is not tuple:  # sum_outer's own shortcut to NumPy's reduction
        return True
    return getattr(sum_form(x.shape, x.strides, x.dtype, axis, keepdims), "numpy", False)


@functools.lru_cache(maxsize=256)
def sum_form(shape: tuple, strides: tuple, dtype, axis, keepdims: bool):
    """``f(x)`` = :func:`sum_outer` ``(x, axis, keepdims)`` for NumPy arrays of this shape,
    dtype and strides (hashable): NumPy's reduction, or :func:`_sum_plan`'s products with
    ones, each chosen once per layout (sum_outer's, and a compiled program's replay form; the
    same calls, so the same bits). An array laid out otherwise goes back to sum_outer."""
    dtype = np.dtype(dtype)
    if dtype == float16:
        return functools.partial(sum_outer, axis=axis, keepdims=keepdims)  # in float32
    if not (type(axis) is tuple and dtype.kind == "f" and dtype.itemsize >= 4
            and math.prod(shape) >= 4096):  # NumPy's reduction in any layout
        anywhere = functools.partial(_add_reduce, axis=axis, keepdims=keepdims)
        anywhere.numpy = True  # NumPy's own order (sums_as_numpy)
        return anywhere
    plan = _sum_plan(shape, strides, dtype.itemsize, axis, keepdims)
    if plan is None:  # NumPy's reduction for this layout; another may take products

        def reduce(x):
            if x.strides != strides:
                return sum_outer(x, axis, keepdims)
            return _add_reduce(x, axis=axis, keepdims=keepdims)

        reduce.numpy = True
        return reduce
    order, a, k, b, out_shape = plan
    identity = order == tuple(range(len(shape)))
    first = product_for(1, a, k * b) if a > 1 else None
    ones_a = _filled(1, a, dtype) if a > 1 else None
    second = product_for(k, b, 1) if b > 1 else None
    ones_b = _filled(1, b, dtype) if b > 1 else None

    def form(x):
        if x.strides != strides:
            return sum_outer(x, axis, keepdims)
        m = (x if identity else x.transpose(order)).reshape(a, k * b)
        if first is not None:
            m = first(ones_a, m)
        out = m if second is None else second(m.reshape(k, b), ones_b)
        return out.reshape(out_shape)

    return form


PAIRWISE_ROWS = 1024
"""Length above which contiguous rows (a sum over the inner axes) keep NumPy's pairwise sum;
up to it a matrix-vector product adds them 2-7x faster (a wide layer's F-ordered bias gradient,
1024 rows of 256: 22 against 70 µs) with about the accuracy of NumPy's unrolled blocks of 128."""


def _sum_plan(shape: tuple, strides: tuple, itemsize: int, axis: tuple, keepdims: bool):
    """How :func:`sum_outer` sums an array of this layout: (axes in memory order, a, k, b, the
    result's shape), the array read as (a, k, b) C-ordered with the kept axes as k; None when
    NumPy's reduction is the better (few rows, long contiguous rows) or the only way (the kept
    axes not together in memory, gaps)."""
    nd = len(shape)
    red = {a % nd for a in axis}
    kept = [i for i in range(nd) if i not in red]
    order = sorted(range(nd), key=lambda i: -strides[i])  # memory order, outermost first
    pos = [order.index(i) for i in kept]
    if not kept or len(red) != len(axis) or pos != list(range(pos[0], pos[0] + len(pos))):
        return None
    step = itemsize
    for d in reversed(order):  # C-ordered once transposed to memory order (no gaps)
        if shape[d] != 1 and strides[d] != step:
            return None
        step *= shape[d]
    sizes = [shape[i] for i in order]
    lo, hi = pos[0], pos[-1] + 1
    a, k, b = (math.prod(sizes[:lo]), math.prod(sizes[lo:hi]), math.prod(sizes[hi:]))
    if a < 32 if b == 1 else a == 1 and b > PAIRWISE_ROWS:  # few rows; or long contiguous
        return None  # rows, where NumPy's pairwise sum is the more accurate
    out = tuple(1 if i in red else shape[i] for i in range(nd)) if keepdims else tuple(
        shape[i] for i in kept)
    return tuple(order), a, k, b, out


FILLED_MAX = 1 << 20
_FILLED: dict = {}  # (value, dtype) -> a read-only vector grown to the longest asked for


def _filled(value: float, n: int, dtype) -> np.ndarray:
    """n copies of ``value`` in ``dtype``, read-only (the ones of :func:`sum_outer`'s products,
    the zeros of :func:`relu`): a view of one kept vector per value and dtype, grown to the
    longest asked for up to FILLED_MAX (4 MiB of float32), made afresh above."""
    if n > FILLED_MAX:
        return np.full(n, value, dtype)
    v = _FILLED.get((value, dtype))
    if v is None or v.size < n:
        v = np.full(min(1 << max(n - 1, 0).bit_length(), FILLED_MAX), value, dtype)
        v.flags.writeable = False
        _FILLED[(value, dtype)] = v
    return v[:n]


@functools.lru_cache(maxsize=64)
def row_starts(rows: int, width: int) -> np.ndarray:
    """``arange(rows) * width`` (int64, read-only, kept): where each row of a C-ordered
    (rows, width) array starts in its flat view, so one row-wise pick is one ``take``."""
    out = np.arange(0, rows * width, width, dtype=np.int64)
    out.flags.writeable = False
    return out


RELU_MIN_SIZE = 1024
RELU_ZEROS_MAX = FILLED_MAX
_KERNEL_DTYPES = (float32, float64)
_kernels = None  # ._cpu_kernels once loaded; False when it failed to load


def numba_loaded() -> bool:
    """Whether numba is imported in this process (by anyone: a fused optimiser, a compiled
    program, the user), so that code using it pays no import."""
    return sys.modules.get("numba") is not None


# Eager work imports numba itself once it has gone on this long (seconds of optimiser steps, and
# of ops that would take one of the one-pass loops below but ran NumPy's form: see
# note_eager_work): the loops and the fused optimiser updates then run, with the same bits. As
# jit's rule (nodegrad.jit.api.UPGRADE_AFTER_S), a ski-rental one: numba's start-up (~1 s, and
# its kernels' load from the disk cache) costs at most a tenth of the time already spent, and a
# short script never pays it.
EAGER_NUMBA_AFTER_S = 10.0
STEP_GAP_S = 1.0  # a longer interval between two noted events counts as this much (a pause)


class _EagerClock:
    """Seconds of eager work counted so far and when the last event was noted."""

    last: float | None = None
    spent = 0.0
    done = False  # numba imported (or found missing): nothing left to count


def note_eager_work() -> None:
    """Count one event of eager work that numba would speed up (an optimiser step, an op that
    wanted :func:`cpu_kernels` without numba imported): add the interval since the previous
    one (at most :data:`STEP_GAP_S`) and import numba once :data:`EAGER_NUMBA_AFTER_S` have
    been counted (when it is installed and not imported yet). A training loop counts its
    steps, an inference loop (a model's evaluation, text generation) its activations, GELUs,
    softmaxes and layer norms. One clock read per event."""
    c = _EagerClock
    if c.done:
        return
    now = time.perf_counter()
    if c.last is not None:
        c.spent += min(now - c.last, STEP_GAP_S)
    c.last = now
    if c.spent < EAGER_NUMBA_AFTER_S:
        return
    c.done = True
    if not numba_loaded() and importlib.util.find_spec("numba") is not None:
        try:
            import numba  # noqa: F401 - loaded for cpu_kernels() and the fused updates
        except Exception:  # noqa: BLE001 - a broken install leaves NumPy's ops, the same bits
            pass


def _ln_rows(x, w, b, k: int, g=None):
    """(rows, n): ``x`` read as rows of its last ``k`` axes, for layer norm's loops; None where
    they do not take these arrays: not :func:`_loopable` (with ``g``), or a weight or bias not
    C-ordered of those axes' shape and ``x``'s dtype."""
    if not 1 <= k <= getattr(x, "ndim", 0) or not (_loopable(x) if g is None else
                                                   _loopable(x, g)):
        return None
    tail = x.shape[x.ndim - k:]
    for a in (w, b):
        if a is not None and (type(a) is not np.ndarray or a.dtype != x.dtype
                              or a.shape != tail or not a.flags.c_contiguous):
            return None
    n = math.prod(tail)
    return x.size // n, n


def _ln_consts(x, n: int, eps: float) -> tuple:
    """The loops' n, eps, 0 and 1 in ``x``'s dtype (eps rounded to it, as NumPy rounds a
    Python float added to an array)."""
    t = x.dtype.type
    return t(n), t(eps), t(0), t(1)


def layer_norm(x, w, b, k: int, eps: float) -> np.ndarray | None:
    """Layer norm over the last ``k`` axes, ``((x - μ) / σ) w + b``, in one numba pass per row:
    ops.nn's rules, the same operations in the same order and their sums as NumPy's
    ``np.add.reduce`` adds them, so the same bits (768 x 128 float32, forward and backward:
    ~300 µs against ~500 for the passes around OpenBLAS's gemv sums it replaced). None where
    :func:`_ln_rows` says no."""
    shape = _ln_rows(x, w, b, k)
    if shape is None:
        return None
    rows, n = shape
    out = np.empty(x.shape, x.dtype)
    none = x.reshape(-1)[:0]
    cpu_kernels().ln_forward(x.reshape(-1), none if w is None else w.reshape(-1),
                             none if b is None else b.reshape(-1), out.reshape(-1),
                             np.empty(n, x.dtype), n, *_ln_consts(x, n, eps), w is not None,
                             b is not None)
    return out


def layer_norm_grads(needs, g, x, w, k: int, eps: float, out=None) -> tuple | None:
    """Layer norm's first-order VJP (dx, dw, db), None where not needed, in one numba pass
    over the rows: ops.nn's rules (``dx = (v - mean(v) - x̂ mean(v x̂)) / σ`` with ``v = g w``,
    ``dw = Σ g x̂`` and ``db = Σ g`` over the leading axes), the same operations and sums, so
    the same bits. ``out``: a flat buffer the wanted results are written into, in that order
    (a compiled program's); None where :func:`_ln_rows` says no."""
    if type(g) is np.ndarray and g.shape == x.shape and g.size and not any(g.strides):
        g = np.ascontiguousarray(g)  # one value broadcast (y.sum().backward()): written out
    shape = _ln_rows(x, w, None, k, g)
    if shape is None or shape[1] == 1:  # rows of one: NumPy adds the leading axes pairwise
        return None
    rows, n = shape
    has_w = w is not None
    want = (bool(needs[0]), bool(needs[1]) and has_w, bool(needs[2]))
    parts, at = [], 0
    for s, on in zip((x.size, n, n), want):  # arrays of their own, or the parts of ``out``
        parts.append((np.empty(s, x.dtype) if out is None else out[at:at + s]) if on else
                     x.reshape(-1)[:0])
        at += s if on else 0
    cpu_kernels().ln_backward(x.reshape(-1), g.reshape(-1), w.reshape(-1) if has_w else
                              parts[0], *parts, np.empty(3 * n, x.dtype), n,
                              *_ln_consts(x, n, eps), has_w, *want)
    tail = x.shape[x.ndim - k:]
    return tuple(p.reshape(s) if on else None
                 for p, on, s in zip(parts, want, (x.shape, tail, tail)))


def cpu_kernels():
    """The one-pass loops of :mod:`._cpu_kernels` when numba is imported already (by a fused
    optimiser, a compiled program, or :func:`note_eager_work` once the calls that found it
    missing have gone on for :data:`EAGER_NUMBA_AFTER_S`), else None: importing numba for a
    short script's few calls would cost more than they save. A failed load (no writable cache
    directory) leaves NumPy's ops for good."""
    global _kernels
    k = _kernels
    if k is None:
        if not numba_loaded():
            note_eager_work()  # wanted often enough, numba is imported (the same bits)
            if not numba_loaded():
                return None
        try:
            from . import _cpu_kernels as k
        except Exception:  # noqa: BLE001 - any failure leaves NumPy's ops, which give the same bits
            k = False
        _kernels = k
    return k or None


SCATTER_ROWS_MIN = 2048
"""Elements of values from which :func:`_scatter_rows` takes a scatter-add by a loop."""


def _scatter_rows(out, index, values) -> bool:
    """``np.add.at(out, index, values)`` by one numba loop, adding row by row in the index's
    order (add.at's, so its bits), where numba is loaded and the scatter picks whole rows of
    ``out`` by one integer array (an embedding's or ``index_add``'s gradient: add.at takes
    ~1.2 ms for 768 rows of 128, the loop ~40 µs); False where it does not apply (nothing done).
    """
    if type(index) is tuple:
        if len(index) != 1:
            return False
        index = index[0]
    if (type(index) is not np.ndarray or index.dtype.kind not in "iu" or type(values) is not
            np.ndarray or values.size < SCATTER_ROWS_MIN or out.dtype != values.dtype
            or out.dtype not in _KERNEL_DTYPES or not out.ndim
            or values.shape != index.shape + out.shape[1:] or not out.flags.c_contiguous):
        return False
    k = cpu_kernels()
    if k is None:
        return False
    rows = index.reshape(-1)
    if rows.dtype != int64:
        if rows.dtype == np.uint64:  # (values past int64's range: add.at's error)
            return False
        rows = rows.astype(int64)
    width = int(np.prod(out.shape[1:], dtype=np.int64))
    return k.scatter_rows(out.reshape(out.shape[0], width), rows,
                          np.ascontiguousarray(values).reshape(rows.size, width))


def _flat_pair(x: np.ndarray, out: np.ndarray | None):
    """``x`` and a result array of its layout (``out``, or a new one), both as flat views in
    memory order; None when ``x`` is not densely laid out or ``out`` has another layout."""
    if out is None:
        if x.flags.c_contiguous:
            res = np.empty_like(x)
            return x.reshape(-1), res, res.reshape(-1)
        if min(x.strides) <= 0:
            return None
        flat, res = x.ravel("K"), np.empty_like(x)  # res: x's strides, x being dense
        dst = res.ravel("K")
        if flat.base is None or dst.base is None:  # not views: x is not dense
            return None
        return flat, res, dst
    if (x.flags.c_contiguous and out.flags.c_contiguous and out.shape == x.shape
            and out.dtype == x.dtype):
        return x.reshape(-1), out, out.reshape(-1)
    return None


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.maximum(x, 0, out=out)`` for NumPy arrays, faster. Against the scalar 0 NumPy runs
    2-3x slower than against an array of zeros of x's shape (100x100: 4.7 against 2.5 µs;
    256x1024: 118 against 42), so a float array of RELU_MIN_SIZE to RELU_ZEROS_MAX elements is
    compared with kept zeros: C-ordered as it is, densely laid out otherwise (a convolution's
    channels-last output) flat in memory order. Where numba is loaded (:func:`cpu_kernels`),
    float32 and float64 arrays take its one-pass loop instead, 1.5-2x faster again (it reads no
    zeros). The same values and the same layout as NumPy's."""
    n = x.size
    if n >= RELU_MIN_SIZE and x.dtype.kind == "f":
        k = cpu_kernels() if x.dtype in _KERNEL_DTYPES else None
        if k is None and n > RELU_ZEROS_MAX:
            return np.maximum(x, 0, out=out)
        if k is None and x.flags.c_contiguous:
            return np.maximum(x, _filled(0, n, x.dtype).reshape(x.shape), out=out)
        pair = _flat_pair(x, out) if k is not None or out is None else None
        if pair is not None:
            flat, res, dst = pair
            if k is None:
                np.maximum(flat, _filled(0, n, x.dtype), out=dst)
            else:
                k.relu(flat, dst, x.dtype.type(0))
            return res
    return np.maximum(x, 0, out=out)


# erf in float32 arithmetic (erf32): x + x·q(x²) for |x| < 1; 1 - P(|x| - 1.625) up to 2.25 and
# 1 - R(|x| - 3) up to ERF32_ONE, P and R approximating erfc there; ±1 from ERF32_ONE on. The
# polynomials were fitted by least squares on Chebyshev nodes (q weighted by 1/(1 + q), P and R
# absolute: erf = 1 - erfc needs erfc to ~3e-8 absolute) and rounded to float32 one coefficient
# at a time, lowest first, the others refitted after each (fit errors 1.5e-9, 1.2e-9, 1.2e-9).
# Highest power first, in Horner's order; mid and tail of one degree (the loop runs one
# Horner for both, picking either's coefficient at each step).
_ERF32_NEAR = (7.842288323445246e-05, -0.0008006793214008212, 0.005187962669879198,
               -0.026853643357753754, 0.1128358244895935, -0.3761262595653534,
               0.12837916612625122)
_ERF32_MID = (0.00025365431793034077, -0.001273390487767756, 0.0006252597668208182,
              0.0061302799731493, -0.014426086097955704, 0.0021442107390612364,
              0.04972013831138611, -0.1148412749171257, 0.130767360329628,
              -0.08047224581241608, 0.021556267514824867)
_ERF32_TAIL = (-1.2301814422244206e-05, 2.334477585463901e-06, 0.00012626574607566,
               -0.0003997115127276629, 0.0007429489633068442, -0.001014231238514185,
               0.0010433248244225979, -0.000789349724072963, 0.0004178387753199786,
               -0.00013924515224061906, 2.2089574486017227e-05)
ERF32_ONE = float.fromhex("0x1.f5a88ap+1")  # 3.919206: the least float32 whose erf rounds to 1
# the pieces' ends and centres: |x| < 1 near; < 2.25 mid (about 1.625); < ERF32_ONE tail (about 3)
_ERF32_ENDS = (1.0, 2.25, ERF32_ONE, 1.625, 3.0)
_ERF32 = tuple(tuple(float32.type(v) for v in c)
               for c in (_ERF32_NEAR, _ERF32_MID, _ERF32_TAIL, _ERF32_ENDS))
"""erf32's float32 constants as the loops take them: (near, mid, tail, ends)."""
_INV_SQRT2_32, _INV_SQRT_2PI_32 = float32.type(0.5 ** 0.5), float32.type((2 * np.pi) ** -0.5)
"""The exact GELU's 1/√2 and 1/√(2π) in float32, as its loops take them."""


def _horner32(coefs: tuple, t: np.ndarray) -> np.ndarray:
    """``coefs`` (float32, highest power first) at float32 ``t`` by Horner's rule: the
    kernel's multiply-then-add steps in its order (NumPy fuses no multiply-add), in place."""
    p = t * coefs[0]
    for c in coefs[1:-1]:
        p += c
        p *= t
    p += coefs[-1]
    return p


def _erf32_numpy(x: np.ndarray) -> np.ndarray:
    """:func:`erf32` by NumPy's ufuncs: every piece over the whole array, then selected (the
    kernel's ``_erf32_of`` picks mid's or tail's coefficients per element instead: the same
    operations on each element, in its order, so its bits), ``x``'s layout kept. (Gathering
    each piece's elements first saved little: NumPy's boolean gathers and scatters cost as much
    as the polynomials.)"""
    near, mid, tail, ends = _ERF32
    one = float32.type(1)
    with np.errstate(all="ignore"):  # the pieces not selected overflow at large x: inf - inf
        a = np.abs(x)
        small = _horner32(near, x * x)
        small *= x
        small += x  # x + x * q
        big = np.where(a < ends[1], _horner32(mid, a - ends[3]), _horner32(tail, a - ends[4]))
        np.subtract(one, big, out=big)
        np.copyto(big, one, where=~(a < ends[2]))
        np.negative(big, out=big, where=x < 0)
        out = np.where(a < ends[0], small, big)
        np.copyto(out, x, where=np.isnan(x))
    return out


def erf32(x):
    """erf of a float32 NumPy array or scalar, computed in float32: within 1 ulp of the
    correctly rounded value for every float32 (checked one by one: ~94% of them are correctly
    rounded), exactly odd, ±0 kept, ±1 from :data:`ERF32_ONE` on, NaN kept. Three polynomial
    pieces (:data:`_ERF32`), evaluated without branches by numba's loop where numba is loaded
    (:func:`cpu_kernels`; ~0.55 ms for 12 x 64 x 512 elements, SciPy's scalar loop 4.4), else by
    the same float32 operations in NumPy's ufuncs (~1.5x SciPy's time): the same bits either
    way. A 0-d array or a scalar gives a NumPy scalar, as a ufunc does."""
    return _float32_map("erf32", x, _erf32_numpy, _ERF32)


def _float32_map(name: str, x, numpy_form, consts: tuple):
    """``x`` (a float32 array or scalar) through the float32 function whose numba loop is
    ``_cpu_kernels.<name>`` (taking ``consts``) where numba is loaded, at any size (~4 µs a
    call, a NumPy form's ~50), else through ``numpy_form``, the same operations in NumPy's
    ufuncs (the same bits); ``x``'s layout kept, a NumPy scalar for a 0-d array or a scalar."""
    a = np.asarray(x)
    if a.dtype != float32:
        raise TypeError(f"{name}: expected a float32 array, got {a.dtype}")
    k = cpu_kernels() if a.size else None
    if k is None:
        out = numpy_form(a)
    else:
        flat, out, dst = _flat_pair(a, None) or _flat_pair(np.ascontiguousarray(a), None)
        getattr(k, name)(flat, dst, *consts)
    return out[()] if out.ndim == 0 else out


# exp of a non-positive float32 in float32 arithmetic (exp32_neg, the exact GELU's density):
# n = round(a·log2 e) by adding and subtracting 1.5·2**23, r = a - n·ln 2 in two parts (Cody and
# Waite's: n·C1 is exact for |n| <= 150), e**r by Cephes's degree-7 polynomial as 1 + r +
# r²·q(r), times 2**n (in two steps where the result is subnormal). Checked for every negative
# float32: within 1 ulp of the correctly rounded value, 99.6% of them correctly rounded.
_EXP32_POLY = tuple(float32.type(v) for v in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
    5.0000001201e-1))
_EXP32_CONSTS = tuple(float32.type(v) for v in (
    -104.0, 1.4426950408889634, 12582912.0, 0.693359375, -2.12194440e-4, 1.0))
"""(lowest argument kept: e**-104 rounds to 0; log2 e; 1.5·2**23; ln 2 as C1 + C2; one)."""


def _exp32_neg_numpy(a: np.ndarray) -> np.ndarray:
    """:func:`exp32_neg` by NumPy's ufuncs: the loop's operations on each element, in its
    order, so its bits (the scales 2**n from their bits, as the loop makes them: ``ldexp``
    costs ~10 ns an element); C-ordered, temporaries reused."""
    shape, a = a.shape, a.reshape(-1)  # 1-d, so that a 0-d array's steps stay arrays
    lo, log2e, big, c1, c2, one = _EXP32_CONSTS
    nan = np.isnan(a)
    nan = nan if nan.any() else None
    b = np.maximum(a, lo)  # a NaN stays NaN: computed as 0, then put back
    if nan is not None:
        b[nan] = 0
    dead = a < lo  # +0, as the loop selects it: computed as e**0, not as a subnormal
    dead = dead if dead.any() else None  # (an assist per element on Intel's cores)
    if dead is not None:
        b[dead] = 0
    n = b * log2e
    n += big
    n -= big
    t = n * c1
    r = np.subtract(b, t, out=b)
    r -= np.multiply(n, c2, out=t)
    q = _horner32(_EXP32_POLY, r)
    q *= np.multiply(r, r, out=t)
    q += r
    q += one
    e = n.astype(np.int32)  # n is integral, in [-151, 0]
    low = e < -100
    low = low if low.any() else None
    if low is not None:  # a subnormal result: 2**(n + 64), then 2**-64
        e[low] += 64
    e += 127
    e <<= 23
    q *= e.view(float32)
    if low is not None:
        q[low] *= float32.type(2.0 ** -64)
    if nan is not None:
        q[nan] = a[nan]
    if dead is not None:
        q[dead] = 0
    return q.reshape(shape)


def exp32_neg(x):
    """exp of a float32 NumPy array of non-positive values (or NaN), in float32 arithmetic:
    within 1 ulp of the correctly rounded value (:data:`_EXP32_POLY`), by numba's loop where
    numba is loaded, else the same operations in NumPy's ufuncs: the same bits either way (NumPy's
    own exp differs from both in ~40% of the values). Positive values are outside its range."""
    return _float32_map("exp32_neg", x, _exp32_neg_numpy, (_EXP32_POLY, _EXP32_CONSTS))


def exp_nonpositive(xp, a):
    """``xp.exp(a)`` for ``a`` <= 0, host float32 arrays and scalars by :func:`exp32_neg` (the
    bits of the loops that inline it), others by the backend's exp."""
    if (type(a) is np.ndarray or type(a) is np.float32) and a.dtype == float32:
        return exp32_neg(a)
    return xp.exp(a)


def _gelu_ready(x):
    """The kernels for :func:`gelu32` and :func:`gelu32_grad` on ``x``, or None: float32
    C-ordered NumPy arrays of RELU_MIN_SIZE elements or more, numba loaded."""
    if (type(x) is not np.ndarray or x.dtype != float32 or x.size < RELU_MIN_SIZE
            or not x.flags.c_contiguous):
        return None
    return cpu_kernels()


def gelu32(x, c: float):
    """``0.5 * x * (1 + erf(x * c))`` (``c`` = 1/√2) for a float32 NumPy array in the
    operations and order of ``ops.elementwise``'s exact GELU, erf as :func:`erf32`, so its bits,
    in one loop for its nine passes; None where :func:`_gelu_ready` says no."""
    k = _gelu_ready(x)
    if k is None:
        return None
    out = np.empty(x.shape, float32)
    flat, dst, c = x.reshape(-1), out.reshape(-1), float32.type(c)
    if c != _INV_SQRT2_32 or not pool_split(k.GELU, flat.size, 1, flat, dst):
        k.gelu32(flat, dst, *_ERF32, c, float32.type(0.5), float32.type(1))
    return out


def gelu32_grad(g, x, c: float, c2: float):
    """The exact GELU's VJP ``g * ((erf(x * c) + 1) * 0.5 + x * (exp(x * x * -0.5) * c2))``
    (``c2`` = 1/√(2π)) in the operations and order of its rules, erf as :func:`erf32` and exp
    as :func:`exp32_neg`, so their bits, in two loops for the rules' ~15 passes; None unless
    ``x`` is as :func:`_gelu_ready` asks and ``g`` a float32 NumPy array of its shape (copied to
    C order first where it is not: a sum's cotangent is a broadcast one)."""
    k = _gelu_ready(x)
    if k is None or type(g) is not np.ndarray or g.dtype != float32 or g.shape != x.shape:
        return None
    g = np.ascontiguousarray(g).reshape(-1)
    flat = x.reshape(-1)
    p = np.empty(flat.size, float32)
    out = np.empty(x.shape, float32)
    dst, c, c2 = out.reshape(-1), float32.type(c), float32.type(c2)
    pooled = c == _INV_SQRT2_32 and c2 == _INV_SQRT_2PI_32  # the pool's constants
    if not (pooled and pool_split(k.GELU_DENSITY, flat.size, 1, flat, p)):
        k.gelu32_density(flat, p, _EXP32_POLY, _EXP32_CONSTS, float32.type(-0.5))
    if not (pooled and pool_split(k.GELU_GRAD, flat.size, 1, g, flat, p, dst)):
        k.gelu32_grad(g, flat, p, dst, *_ERF32, c, float32.type(0.5), float32.type(1), c2)
    return out


def _loopable(*arrays) -> bool:
    """Whether the one-pass loops take these NumPy arrays: numba loaded, one float dtype of
    :data:`_KERNEL_DTYPES`, one shape of RELU_MIN_SIZE elements or more, C-ordered."""
    a = arrays[0]
    if (type(a) is not np.ndarray or a.dtype not in _KERNEL_DTYPES or a.size < RELU_MIN_SIZE
            or cpu_kernels() is None):
        return False
    return all(type(b) is np.ndarray and b.dtype == a.dtype and b.shape == a.shape
               and b.flags.c_contiguous for b in arrays)


def leaky_relu(x, slope: float, g=None):
    """``where(x > 0, x, x * slope)`` (``g`` given: ``where(x > 0, g, g * slope)``, its VJP)
    in one numba pass for the where's three, the same operations so the same bits; None where
    :func:`_loopable` says no."""
    if not _loopable(x) if g is None else not _loopable(x, g):
        return None
    out = np.empty(x.shape, x.dtype)
    s = x.dtype.type(slope)
    if g is None:
        cpu_kernels().leaky(x.reshape(-1), out.reshape(-1), s)
    else:
        cpu_kernels().leaky_grad(g.reshape(-1), x.reshape(-1), out.reshape(-1), s)
    return out


def silu(x, g=None):
    """silu's forward ``x * (1 / (exp(-x) + 1))`` (``g`` given: its gradient) as
    ops.activation computes it, limits at ±inf included, in NumPy's exp between two loops;
    None where :func:`_loopable` says no."""
    if not _loopable(x) if g is None else not _loopable(x, g):
        return None
    k, dt = cpu_kernels(), x.dtype.type
    e = np.negative(x)
    with np.errstate(over="ignore"):  # exp(-x) = inf is meant: s is then 0
        np.exp(e, out=e)
    out = np.empty(x.shape, x.dtype)
    args = (dt(1), dt(0), dt(np.inf))
    if g is None:
        k.silu_of_exp(x.reshape(-1), e.reshape(-1), out.reshape(-1), *args)
    else:
        k.silu_grad_of_exp(g.reshape(-1), x.reshape(-1), e.reshape(-1), out.reshape(-1), *args)
    return out


def hardswish(x, g=None):
    """ops.activation's hardswish (``g`` given: its VJP) in one numba pass for its seven (two
    of them selects), the same operations so the same bits; None where :func:`_loopable` says
    no."""
    if not _loopable(x) if g is None else not _loopable(x, g):
        return None
    dt, out = x.dtype.type, np.empty(x.shape, x.dtype)
    if g is None:
        # -0 from -3 down: PyTorch's x · 0 there
        cpu_kernels().hardswish(x.reshape(-1), out.reshape(-1), dt(3), dt(6), dt(-0.0))
    else:
        cpu_kernels().hardswish_grad(g.reshape(-1), x.reshape(-1), out.reshape(-1), dt(3),
                                     dt(0.5), dt(0))
    return out


def sigmoid(x) -> np.ndarray | None:
    """1 / (1 + e), or e / (1 + e) where x < 0, with e = exp(-|x|) (ops.elementwise's sigmoid,
    its operations in its order, so its bits) for a C-ordered float32/float64 NumPy array of
    RELU_MIN_SIZE elements or more where numba is loaded: NumPy's exp between two loops, three
    passes over memory instead of nine (one of them a where: see :func:`where`); else None."""
    if not _loopable(x):
        return None
    k, flat = cpu_kernels(), x.reshape(-1)
    e = np.empty_like(flat)
    k.neg_abs(flat, e)
    np.exp(e, out=e)
    out = np.empty(x.shape, x.dtype)
    k.sigmoid_of_exp(flat, e, out.reshape(-1), x.dtype.type(1))
    return out


def sigmoid_grad(g, ans) -> np.ndarray | None:
    """``g * ((1 - ans) * ans)``, sigmoid's VJP from its output, in one numba pass (the same
    operations in the same order, so the same bits) for C-ordered NumPy arrays of one shape
    and float dtype where numba is loaded; else None."""
    if not _loopable(g, ans):
        return None
    out = np.empty(g.shape, g.dtype)
    cpu_kernels().sigmoid_grad(g.reshape(-1), ans.reshape(-1), out.reshape(-1), g.dtype.type(1))
    return out


def _last_axis_loopable(x, axis) -> bool:
    """Whether the softmax loops take ``x`` over ``axis``: the last, :func:`_loopable`."""
    return axis == x.ndim - 1 and _loopable(x)


def _shifted_rows(x, axis: int):
    """The softmax loops' first pass: ``x`` less its rows' maxima, in a new array, with the
    kernels, a zero of its dtype and the row length; None where :func:`_last_axis_loopable`
    says no."""
    if not _last_axis_loopable(x, axis):
        return None
    k, zero, n = cpu_kernels(), x.dtype.type(0), x.shape[-1]
    z = np.empty(x.shape, x.dtype)
    flat, dst = x.reshape(-1), z.reshape(-1)
    if x.dtype != float32 or not pool_split(k.SOFTMAX_SHIFT, x.size // n, n, flat, dst):
        k.softmax_shift(flat, dst, n, zero)
    return z, k, zero, n


def softmax_last(x, axis: int):
    """``e / e.sum(axis, keepdims=True)``, ``e = exp(x - where(m == -inf, 0, m))`` and ``m``
    the rows' maxima (ops.nn's softmax) over the last axis of a C-ordered float32/float64 NumPy
    array where numba is loaded, else None: NumPy's exp between a loop that finds each row's
    maximum and shifts it and one that sums and divides it, in the NumPy form's operations and
    order, so its bits (the rows summed in NumPy's pairwise order: ``_cpu_kernels._pairwise``).
    Three passes for the form's six, and no NumPy reduction over short rows (~0.1 µs a row)."""
    shifted = _shifted_rows(x, axis)
    if shifted is None:
        return None
    e, k, zero, n = shifted
    flat = e.reshape(-1)
    np.exp(flat, out=flat)
    if e.dtype != float32 or not pool_split(k.SOFTMAX_DIVIDE, e.size // n, n, flat):
        k.softmax_divide(flat, n, zero)
    return e


def log_softmax_last(x, axis: int, log_pos):
    """``z - log_pos(e.sum(axis, keepdims=True))``, ``z`` the shifted ``x`` and ``e = exp(z)``
    (ops.nn's log_softmax, ``log_pos`` its log of the sums), as :func:`softmax_last`: NumPy's
    exp (and log of the sums) between loops that shift, sum and subtract."""
    shifted = _shifted_rows(x, axis)
    if shifted is None:
        return None
    z, k, zero, n = shifted
    flat = z.reshape(-1)
    s = np.empty(x.size // n, x.dtype)
    k.row_sums(np.exp(flat), s, n, zero)
    k.subtract_rows(flat, log_pos(np, s), n)
    return z


def _grad_ready(g, ans, axis) -> bool:
    """Whether the softmax VJP loops take ``g`` and ``ans``: ``ans`` as
    :func:`_last_axis_loopable` asks, ``g`` a NumPy array of its shape and dtype (any
    layout)."""
    return (_last_axis_loopable(ans, axis) and type(g) is np.ndarray and g.shape == ans.shape
            and g.dtype == ans.dtype)


def softmax_last_grad(g, ans, axis: int):
    """softmax's VJP ``ans * (g - sum(g * ans, axis, keepdims=True))`` over the last axis: the
    rule's product and its sum by :func:`sum_outer`, then one loop for the subtract and
    multiply, so the rule's bits; None where :func:`_grad_ready` says no."""
    if not _grad_ready(g, ans, axis):
        return None
    p = np.multiply(g, ans)  # the rule's product, in its layout: its sum's form depends on it
    s = sum_outer(p, (axis,), True)
    out = p if p.flags.c_contiguous else np.empty(ans.shape, ans.dtype)
    cpu_kernels().softmax_grad(np.ascontiguousarray(g).reshape(-1), ans.reshape(-1),
                               s.reshape(-1), out.reshape(-1), ans.shape[-1])
    return out


def log_softmax_last_grad(g, ans, axis: int):
    """log_softmax's VJP ``g - exp(ans) * sum(g, axis, keepdims=True)`` over the last axis: the
    rule's sum by :func:`sum_outer` and NumPy's exp, then one loop for the multiply and
    subtract, so the rule's bits; None where :func:`_grad_ready` says no."""
    if not _grad_ready(g, ans, axis):
        return None
    s = sum_outer(g, (axis,), True)
    e = np.exp(ans)
    flat = e.reshape(-1)
    cpu_kernels().log_softmax_grad(np.ascontiguousarray(g).reshape(-1), flat, s.reshape(-1),
                                   flat, ans.shape[-1])
    return e


WHERE_MIN_SIZE = 4096
"""Elements from which :func:`where` takes NumPy arrays by a branch-free select."""
_INTS = {1: np.dtype(np.int8), 2: np.dtype(np.int16), 4: np.dtype(np.int32),
         8: np.dtype(np.int64)}


def where(cond, a, b):
    """``xp.where(cond, a, b)``: NumPy's values, dtype and layout. NumPy's loop branches on each
    condition, so an unpredictable one (a ReLU-like op's signs) costs a mispredicted branch
    per element: 12 x 64 x 512 float32 in ~3.5 ms, 25x a multiply. A boolean NumPy condition of
    WHERE_MIN_SIZE elements or more, C-ordered, with operands that broadcast to its shape
    (copied to its layout where they have another) is selected branch-free instead: one
    numba loop where numba is loaded (:func:`cpu_kernels`; ~0.15 ms), else NumPy's integer
    ops on the values' bits (~0.8 ms). Either copies the chosen value's bits, so the result
    is np.where's to the bit."""
    if (type(cond) is not np.ndarray or cond.size < WHERE_MIN_SIZE or cond.dtype != np.bool_
            or not cond.flags.c_contiguous):
        return backend_of(cond).xp.where(cond, a, b)
    shape = cond.shape
    dt = np.result_type(a, b)
    ints = _INTS.get(dt.itemsize)
    if ints is None or dt.kind not in "biuf":
        return np.where(cond, a, b)
    ops = []
    for v in (a, b):
        if type(v) is np.ndarray and v.ndim:
            if v.shape != shape:  # broadcast against the condition (or a larger result)
                if np.broadcast_shapes(v.shape, shape) != shape:
                    return np.where(cond, a, b)
                v = np.broadcast_to(v, shape)
            # other layouts (a broadcast cotangent) copied: ~20x cheaper than NumPy's branches
            ops.append(v if v.dtype == dt and v.flags.c_contiguous
                       else np.ascontiguousarray(v, dt))
        elif isinstance(v, int | float | bool | np.generic) or (type(v) is np.ndarray):
            ops.append(np.asarray(v, dt))
        else:
            return np.where(cond, a, b)
    av, bv = ops
    out = np.empty(shape, dt)
    k = cpu_kernels() if dt in _SELECT_DTYPES else None
    if k is not None:
        c, o = cond.reshape(-1), out.reshape(-1)
        if av.ndim and bv.ndim:
            k.select(c, av.reshape(-1), bv.reshape(-1), o)
        elif av.ndim:
            k.select_else(c, av.reshape(-1), bv[()], o)
        elif bv.ndim:
            k.select_else(~c, bv.reshape(-1), av[()], o)
        else:
            k.select_scalars(c, av[()], bv[()], o)
        return out
    mask = cond.view(np.int8).astype(ints)  # 0 or 1, then 0 or all ones
    np.negative(mask, out=mask)
    ai, bi, oi = av.view(ints), bv.view(ints), out.view(ints)
    np.bitwise_xor(ai, bi, out=oi)  # b ^ ((a ^ b) & mask): a where the mask is set, else b
    np.bitwise_and(oi, mask, out=oi)
    np.bitwise_xor(oi, bi, out=oi)
    return out


_SELECT_DTYPES = frozenset(np.dtype(d) for d in ("float32", "float64", "int64", "int32", "bool"))


def _bias_loop(out, b, relu: bool) -> bool:
    """Whether :func:`cpu_kernels`' one-pass loop added bias ``b`` into ``out`` in place (and,
    with ``relu``, applied the ReLU): for a C- or F-ordered float matrix of RELU_MIN_SIZE
    elements or more and a bias of its dtype, where numba is loaded."""
    if (type(out) is np.ndarray and out.ndim == 2 and out.size >= RELU_MIN_SIZE
            and type(b) is np.ndarray and b.dtype == out.dtype and out.dtype in _KERNEL_DTYPES
            and b.shape == out.shape[1:]):
        k = cpu_kernels()
        flags = out.flags
        if k is not None and (flags.c_contiguous or flags.f_contiguous):
            m, down = (out, False) if flags.c_contiguous else (out.T, True)
            if relu:
                k.add_bias_relu(m, b, down, out.dtype.type(0))
            else:
                k.add_bias(m, b, down)
            return True
    return False


def add_bias(out, b):
    """``out += b`` in place (``b`` along the last axis of a linear layer's product) and
    ``out``; by :func:`_bias_loop` where it applies (256 x 1024 float32: 17-20 against 41-48
    µs; 100 x 100: 1.0 against 2.8). The same float adds, so the same bits."""
    if not _bias_loop(out, b, False):
        out += b
    return out


def add_bias_relu(out, b):
    """``out = maximum(out + b, 0)`` in place (a linear layer's product, its bias, then a ReLU)
    and ``out``: one pass by :func:`_bias_loop` where it applies, else the add and then NumPy's
    ``maximum`` into ``out``. The same bits either way."""
    if _bias_loop(out, b, True):
        return out
    out += b
    if type(out) is np.ndarray:
        return relu(out, out)
    return backend_of(out).xp.maximum(out, 0, out=out)


def relu_form(shape: tuple, dtype):
    """``f(x, out)`` = :func:`relu` ``(x, out)`` for NumPy arrays of this shape and dtype, the
    kept zeros taken once (a compiled program's replay form; the same bits). Where numba's
    loop applies, or the zeros do not, it is relu itself."""
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if (not RELU_MIN_SIZE <= n <= RELU_ZEROS_MAX or dtype.kind != "f"
            or (dtype in _KERNEL_DTYPES and cpu_kernels() is not None)):
        return relu
    z = _filled(0, n, dtype).reshape(shape)
    maximum = np.maximum

    def form(x, out=None):
        if x.flags.c_contiguous and x.shape == z.shape:
            return maximum(x, z, out=out)
        return relu(x, out)

    return form


def relu_grad(g: np.ndarray, ans: np.ndarray) -> np.ndarray | None:
    """``g * (ans != 0)`` (``ans`` is relu's output, so a NaN passes ``g``) in ``g``'s dtype
    for two NumPy arrays of one shape, float dtype and dense layout (C order, or a wide
    layer's F order), in one pass where numba is loaded
    (:func:`cpu_kernels`: 256x1024 float32 in 38 µs against NumPy's 81, which casts the mask
    first); None where the loop does not apply."""
    if (g.size < RELU_MIN_SIZE or g.dtype not in _KERNEL_DTYPES or g.dtype != ans.dtype
            or g.shape != ans.shape or g.strides != ans.strides):
        return None
    k = cpu_kernels()
    if k is None:
        return None
    pair = _flat_pair(g, None)
    if pair is None:
        return None
    gf, out, of = pair
    af = ans.reshape(-1) if ans.flags.c_contiguous else ans.ravel("K")
    k.relu_grad(gf, af, of, g.dtype.type(0), g.dtype.type(1))
    return out


def relu_grad_dense(out: np.ndarray, ans: np.ndarray) -> bool:
    """``out *= (ans != 0)`` in place by :func:`relu_grad`'s loop, for ``out`` laid out as
    ``ans`` (``np.empty_like``) and both dense in memory, walked flat in memory order (a
    convolution's channels-last activations: 47,500 floats in 46 against 58 µs with the
    mask); False where the loop does not apply (nothing written)."""
    if (out.size < RELU_MIN_SIZE or out.dtype not in _KERNEL_DTYPES or out.dtype != ans.dtype
            or out.strides != ans.strides or min(ans.strides, default=0) <= 0):
        return False
    k = cpu_kernels()
    if k is None:
        return False
    of, af = out.ravel("K"), ans.ravel("K")
    if of.base is None or af.base is None:  # a copy: not dense
        return False
    k.relu_grad(of, af, of, out.dtype.type(0), out.dtype.type(1))
    return True


def ce_narrow(x, t):
    """Softmax cross-entropy's shared parts of (n, c) float logits and n integer targets,
    worked transposed by the loops of :func:`cpu_kernels` around NumPy's ``exp`` and sum:
    ``(z, e, s, picked)`` with z = (x - row max)ᵀ, e = exp(z), s = e's column sums in order and
    picked = each row's target entry of z. False when a target is not a class or a row's
    maximum is not finite (the caller's general path); None where the loops do not apply."""
    if (type(x) is not np.ndarray or x.dtype not in _KERNEL_DTYPES or type(t) is not np.ndarray
            or t.dtype.kind not in "iu" or x.ndim != 2 or t.shape != x.shape[:1]):
        return None
    k = cpu_kernels()
    if k is None:
        return None
    n, c = x.shape
    z = np.empty((c, n), x.dtype)
    picked = np.empty(n, x.dtype)
    if k.ce_shift(x, int64_indices(t), z, picked):
        return False
    e = np.exp(z)
    return z, e, np.add.reduce(e, axis=0), picked


def ce_narrow_grad(e, s, t, scale):
    """The gradient of the loss from :func:`ce_narrow`'s parts, ``(e / s - onehot(t)) *
    scale``, written over ``e`` (c, n) and returned as its (n, c) transpose; None where the
    loops are not loaded or ``scale`` is not a 0-d value of e's dtype (NumPy then rounds the
    product in another dtype)."""
    k = cpu_kernels()
    if k is None or getattr(scale, "dtype", None) != e.dtype or getattr(scale, "ndim", 1):
        return None
    k.ce_grad(e, s, int64_indices(t), e.dtype.type(scale), e.dtype.type(1))
    return e.T


# --- CUDA: the (N, C) softmax cross-entropy in a few kernels -------------------------------------
_CE_CUDA: list = []


def _ce_cuda_kernels():
    """(sumexp, rows, grad): the CuPy kernels of :func:`ce_rows_cuda` and
    :func:`ce_rows_grad_cuda`, built once. ``rows`` reads each row's target logit from the raw
    (C-ordered) logits; an ignored row (``t == ignore``) counts for nothing."""
    if not _CE_CUDA:
        cupy = _import_cupy()
        sumexp = cupy.ReductionKernel("T x, T m", "T s", "exp(x - m)", "a + b", "s = a", "0",
                                      "ng_ce_sumexp")
        rows = cupy.ElementwiseKernel(
            "raw T x, T m, T s, I t, int64 c, int64 ignore", "T loss, T kept",
            "bool k = t != ignore; kept = k ? (T)1 : (T)0; "
            "loss = k ? (T)(log(s) + m - x[i * c + t]) : (T)0", "ng_ce_rows")
        grad = cupy.ElementwiseKernel(
            "T x, T m, T s, I t, T w, int64 c, int64 ignore", "T g",
            "g = t == ignore ? (T)0 : (T)((exp(x - m) / s - (T)(i % c == t)) * w)",
            "ng_ce_grad")
        _CE_CUDA.append((sumexp, rows, grad))
    return _CE_CUDA[0]


def ce_rows_cuda(x, t, ignore_index: int | None, mean: bool):
    """Softmax cross-entropy of CuPy logits ``x`` (N, C) against class indices ``t`` (N,)
    (checked: each a class or ``ignore_index``, which is negative), summed or averaged over the
    kept rows (NaN for the mean of none, as PyTorch): six kernel calls where the general path
    makes a dozen and waits for the device twice."""
    sumexp, rows, _ = _ce_cuda_kernels()
    if not x.flags.c_contiguous:
        x = x.copy()
    m = x.max(axis=1, keepdims=True)
    s = sumexp(x, m, axis=1, keepdims=True)
    ignore = -1 if ignore_index is None else int(ignore_index)
    loss, kept = rows(x, m[:, 0], s[:, 0], t, x.shape[1], ignore)
    total = loss.sum()
    return total / kept.sum() if mean else total


def ce_rows_grad_cuda(x, g, t, ignore_index: int | None, mean: bool):
    """The gradient of :func:`ce_rows_cuda` with respect to ``x`` for the cotangent ``g``
    (a 0-d array): softmax minus the one-hot target, times g (over the kept count for a
    mean); zero rows for ignored targets. Six kernel calls where the general path makes 15."""
    sumexp, _, grad = _ce_cuda_kernels()
    m = x.max(axis=1, keepdims=True)
    s = sumexp(x, m, axis=1, keepdims=True)
    ignore = -1 if ignore_index is None else int(ignore_index)
    w = g.astype(x.dtype, copy=False)
    if mean:
        w = w / (t != ignore).sum(dtype=x.dtype)
    return grad(x, m, s, t[:, None], w, x.shape[1], ignore)


# --- CUDA: the class-target check in one reduction ---------------------------------------------
_TARGETS_CUDA: list = []


def _targets_cuda_kernel():
    """The reduction of :func:`count_bad_targets`, built once."""
    if not _TARGETS_CUDA:
        _TARGETS_CUDA.append(_import_cupy().ReductionKernel(
            "I t, int64 c, int64 ignore, bool skip", "int64 bad",
            "((t < 0 || t >= c) && !(skip && t == ignore)) ? 1 : 0", "a + b", "bad = a", "0",
            "ng_bad_targets"))
    return _TARGETS_CUDA[0]


def count_bad_targets(t, classes: int, ignore_index) -> int | None:
    """How many entries of CuPy integer targets ``t`` are neither a class (0..classes-1) nor
    ``ignore_index``: one reduction and one wait for the device, where the array expression
    takes five launches first. None on the host."""
    if type(t) is np.ndarray:
        return None
    skip = ignore_index is not None
    return int(_targets_cuda_kernel()(t, classes, int(ignore_index) if skip else 0, skip))


# --- CUDA: a convolution's windows in one kernel ------------------------------------------------
_IM2COL_CUDA: dict = {}

_IM2COL_SRC = r"""
// Output element i of the (N P0 P1, K0 K1 C) columns reads its input element through the
// input's element strides, or is zero in the padding. A raw kernel: its launch costs the host
// a fraction of an elementwise kernel's with as many arguments.
extern "C" __global__ void ng_im2col(const T* x, T* y, const long long total,
        const long long kc, const long long c, const long long k1, const long long p0,
        const long long p1, const long long h, const long long w, const long long s0,
        const long long s1, const long long q0, const long long q1, const long long d0,
        const long long d1, const long long sn, const long long sc, const long long sh,
        const long long sw) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        long long col = i % kc, row = i / kc;
        long long ci = col % c, t = col / c, kb = t % k1, ka = t / k1;
        long long pj = row % p1, r2 = row / p1, pi = r2 % p0, nn = r2 / p0;
        long long hh = pi * s0 - q0 + ka * d0, ww = pj * s1 - q1 + kb * d1;
        y[i] = (hh >= 0 && hh < h && ww >= 0 && ww < w)
            ? x[nn * sn + ci * sc + hh * sh + ww * sw] : (T)0;
    }
}
"""


def _im2col_cuda_kernel(dtype):
    """The raw kernel of :func:`im2col_cuda` for float32 or float64, compiled once each."""
    key = np.dtype(dtype).name
    k = _IM2COL_CUDA.get(key)
    if k is None:
        t = "float" if np.dtype(dtype) == float32 else "double"
        mod = _import_cupy().RawModule(code=f"typedef {t} T;\n" + _IM2COL_SRC)
        k = _IM2COL_CUDA.setdefault(key, mod.get_function("ng_im2col"))
    return k


def im2col_cuda(x, k: tuple, stride: tuple, padding: tuple, dilation: tuple, out: tuple):
    """A CuPy convolution input's windows (N, C, *spatial; one or two spatial axes) at output
    positions ``out`` as columns (1, N·P, K·C), channels innermost, in one kernel: the layout
    ``ops.conv._cols`` makes with a padded copy, a strided view and a gather (three to four
    launches). The input is read where it lies when it, or its channels-last view, is
    C-ordered (a convolution's output is channels-last). None on the host, for more axes or
    for dtypes other than float32 and float64."""
    if type(x) is np.ndarray or len(k) not in (1, 2) or x.dtype not in (float32, float64):
        return None
    n, c = x.shape[:2]
    if len(k) == 1:  # as two axes, the first of extent one
        k, stride, padding, dilation = (1,) + k, (1,) + stride, (0,) + padding, (1,) + dilation
        out, spatial = (1,) + out, (1,) + tuple(x.shape[2:])
        x4 = x[:, :, None]
    else:
        spatial, x4 = tuple(x.shape[2:]), x
    # the kernel indexes its raw input by memory offset: an array C-ordered in some axis order
    mem = next((v for v in (x4, x4.transpose(0, 2, 3, 1)) if v.flags.c_contiguous), None)
    if mem is None:
        mem = x4 = _import_cupy().ascontiguousarray(x4)
    sn, sc, sh, sw = (st // x4.itemsize for st in x4.strides)
    kc = k[0] * k[1] * c
    y = _import_cupy().empty((n * out[0] * out[1], kc), x.dtype)
    if y.size:
        threads = 256
        blocks = min((y.size + threads - 1) // threads, 65535)
        args = (y.size, kc, c, k[1], out[0], out[1], spatial[0], spatial[1], *stride, *padding,
                *dilation, sn, sc, sh, sw)
        _im2col_cuda_kernel(x.dtype)((blocks,), (threads,),
                                     (mem, y, *(np.int64(v) for v in args)))
    return y.reshape(1, n * out[0] * out[1], kc)


# --- CUDA: a GRU layer's time step in one kernel -------------------------------------------------
_GRU_CUDA: list = []


def _gru_cuda_kernel():
    """The elementwise kernel of :func:`gru_step_kernel`, built once."""
    if not _GRU_CUDA:
        _GRU_CUDA.append(_import_cupy().ElementwiseKernel(
            "T gir, T giz, T ghn, T gin, T h", "T r, T zc, T n, T h1",
            "const T half = 0.5; "
            "T a = r + gir; a = tanh(a); a = a * half; a = a + half; r = a; "
            "T b = zc + giz; b = tanh(b); b = b * half; b = b + half; zc = b; "
            "T c = ghn * a; c = c + gin; c = tanh(c); n = c; "
            "T d = c - h; d = d * b; h1 = d + h",
            "ng_gru_step", options=("--fmad=false",)))
    return _GRU_CUDA[0]


def gru_step_kernel(xp):
    """On CUDA (``xp`` CuPy) the elementwise part of a GRU layer's time step as one kernel,
    ``k(gir, giz, ghn, gin, h, r, zc, n, h1)``: ``r`` and ``zc`` hold the recurrent product's
    halved pre-activations and become the reset gate and 1 - z, then ``n = tanh(gin + r ghn)``
    and ``h1 = h + (1 - z)(n - h)``; each operation rounded as the ten separate calls it
    replaces round it (no fused multiply-adds), so the same bits in a tenth of the launches.
    None on the host."""
    return None if xp is np else _gru_cuda_kernel()


GRU_LOOP_MAX = 32
"""State rows of a GRU layer (directions x hidden units) up to which a CUDA device runs each of
its time loops as one kernel (:func:`gru_loops_cuda`) rather than a product and a kernel a
step."""

_GRU_LOOPS: dict = {}

_GRU_LOOP_SRC = r"""
#define R (5 * DH + 1)
// The forward loop: one thread per batch column b, the state in registers. The loop array
// (steps + 1, R, n) holds per step h (DH rows), a row of ones, r, 1 - z, g_n and n; gis
// (steps, 3, DH, n) the input side, wf (3 DH, DH + 1) the recurrent weights with the bias
// column (r's and z's rows halved, z's negated, as the host code lays them out).
extern "C" __global__ void ng_gru_fwd(T* loop, const T* gis, const T* wf, const long long steps,
                                      const long long n) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n) return;
    const T half = 0.5;
    T h[DH], hn[DH];
    for (int i = 0; i < DH; i++) h[i] = loop[i * n + b];
    for (long long s = 0; s < steps; s++) {
        T* cur = loop + s * R * n;
        const T* gi = gis + s * 3 * DH * n;
        for (int i = 0; i < DH; i++) {
            const T* wr = wf + i * (DH + 1);
            const T* wz = wr + DH * (DH + 1);
            const T* wn = wz + DH * (DH + 1);
            T ar = 0, az = 0, an = 0;
            for (int j = 0; j < DH; j++) {
                ar = ar + wr[j] * h[j];
                az = az + wz[j] * h[j];
                an = an + wn[j] * h[j];
            }
            ar = ar + wr[DH]; az = az + wz[DH]; an = an + wn[DH];
            T a = ar + gi[i * n + b]; a = tanh(a); a = a * half; a = a + half;
            T z = az + gi[(DH + i) * n + b]; z = tanh(z); z = z * half; z = z + half;
            T c = an * a; c = c + gi[(2 * DH + i) * n + b]; c = tanh(c);
            T d = c - h[i]; d = d * z; hn[i] = d + h[i];
            cur[(DH + 1 + i) * n + b] = a;
            cur[(2 * DH + 1 + i) * n + b] = z;
            cur[(3 * DH + 1 + i) * n + b] = an;
            cur[(4 * DH + 1 + i) * n + b] = c;
        }
        T* nxt = cur + R * n;
        for (int i = 0; i < DH; i++) { h[i] = hn[i]; nxt[i * n + b] = hn[i]; }
    }
}

// The reverse loop over o (steps, 6, DH, n), from the last step to the first: planes 1-5 of
// each step times the state's cotangent dh, then dh = m (DH, 5 DH) times planes 0-4. dh (DH,
// n) comes in as the last step's and goes out as the initial state's.
extern "C" __global__ void ng_gru_bwd(T* o, T* dhio, const T* m, const long long steps,
                                      const long long n) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n) return;
    T dh[DH], dn[DH];
    for (int i = 0; i < DH; i++) dh[i] = dhio[i * n + b];
    for (long long s = steps - 1; s >= 0; s--) {
        T* os = o + s * 6 * DH * n;
        for (int p = 1; p < 6; p++)
            for (int i = 0; i < DH; i++) {
                T* q = os + (p * DH + i) * n + b;
                *q = *q * dh[i];
            }
        for (int i = 0; i < DH; i++) {
            const T* mi = m + i * 5 * DH;
            T acc = 0;
            for (int j = 0; j < 5 * DH; j++) acc = acc + mi[j] * os[j * n + b];
            dn[i] = acc;
        }
        for (int i = 0; i < DH; i++) dh[i] = dn[i];
    }
    for (int i = 0; i < DH; i++) dhio[i * n + b] = dh[i];
}
"""


def _gru_loop_kernels(dtype, dh: int):
    """The two CUDA kernels of :func:`gru_loops_cuda` for ``dtype`` and ``dh`` state rows,
    compiled once (without fused multiply-adds, as the per-step kernels)."""
    key = (np.dtype(dtype).name, dh)
    k = _GRU_LOOPS.get(key)
    if k is None:
        t = "float" if np.dtype(dtype) == float32 else "double"
        mod = _import_cupy().RawModule(code=f"#define DH {dh}\ntypedef {t} T;\n" + _GRU_LOOP_SRC,
                                       options=("--fmad=false",))
        k = _GRU_LOOPS.setdefault(key, (mod.get_function("ng_gru_fwd"),
                                        mod.get_function("ng_gru_bwd")))
    return k


def gru_loops_cuda(xp, dtype, dh: int):
    """On CUDA, for a GRU layer of ``dh`` state rows (up to :data:`GRU_LOOP_MAX`), float32 or
    float64, its two time loops as one kernel each, a thread per batch column:
    ``forward(loop, gis, wf)`` fills the loop array as ``ops.nn._gru_loop_fwd`` lays it out,
    ``reverse(o, dh, m)`` runs the reverse loop of ``ops.nn._gru_scan_grad_fwd`` over the steps
    of ``o``, ``dh`` in place. Two launches in place of a product and a kernel per step each
    way (a 40-step layer: 160). The sums of the recurrent products run in row order, so the bits
    are not cuBLAS's. None on the host, or for a larger layer or another dtype."""
    if xp is np or not 0 < dh <= GRU_LOOP_MAX or np.dtype(dtype) not in (float32, float64):
        return None
    fwd, bwd = _gru_loop_kernels(dtype, dh)

    def launch(kernel, arrays, steps, n):
        threads = 128
        kernel(((n + threads - 1) // threads,), (threads,), (*arrays, np.int64(steps),
                                                             np.int64(n)))

    def forward(loop, gis, wf):
        launch(fwd, (loop, gis, wf), loop.shape[0] - 1, loop.shape[2])

    def reverse(o, dh_, m):
        launch(bwd, (o, dh_, m), o.shape[0], o.shape[3])

    return forward, reverse


def int64_indices(t: np.ndarray) -> np.ndarray:
    """Integer class indices as int64 (itself when they are): the loops compile once, not per
    integer type, and index arithmetic cannot overflow a narrow type; an unsigned index beyond
    int64 turns negative, which a range check rejects."""
    return t if t.dtype == np.int64 else t.astype(np.int64)


def fold_taps(parts, spatial: tuple, kernel: tuple, stride: tuple, padding: tuple,
              dilation: tuple):
    """A strided transposed convolution's fold of its per-tap products into its input
    gradient, for one or two spatial axes (``spatial`` = L...), the taps in row-major order of
    ``kernel``: one numba pass, each element the zero and the taps' adds in the order of
    zeroing a padded buffer and adding each tap's product into it (the same bits), without the
    padded buffer. One axis: ``parts`` (K, N, P, C) into (N, L, C), channels-last as a
    convolution's output lies, so the gradient meets the activations below it in their layout
    (a ReLU's gradient then runs as one loop); two: (K, P0, P1, N, C) into (L0, L1, N, C)
    (see ``fold_taps_2d``). None without numba loaded, for other arrays or more axes."""
    nd = len(spatial)
    k = cpu_kernels()
    if (k is None or nd not in (1, 2) or type(parts) is not np.ndarray
            or parts.dtype not in _KERNEL_DTYPES or parts.ndim != nd + 3
            or not parts.flags.c_contiguous):
        return None
    zero = parts.dtype.type(0)
    if nd == 1:
        out = np.empty((parts.shape[1],) + tuple(spatial) + parts.shape[-1:], parts.dtype)
        k.fold_taps_1d(parts, out, stride[0], padding[0], dilation[0], zero)
    else:
        out = np.empty(tuple(spatial) + parts.shape[-2:], parts.dtype)
        k.fold_taps_2d(parts, out, kernel[1], *stride, *padding, *dilation, zero)
    return out


def im2col(xl, k: tuple, stride: tuple, padding: tuple, dilation: tuple, out: tuple,
           taps_first: bool):
    """A convolution's windows of C-ordered channels-last ``xl`` (N, *spatial, C), one or two
    spatial axes, at output positions ``out``: (N, *out, *k, C) contiguous, or with
    ``taps_first`` (*k, C, N, *out), the padding's zeros written in place. One numba pass
    copying whole runs instead of a zeroed padded copy and NumPy's strided gather (a copy
    either way, so the same values). None without numba loaded, for other arrays or more
    axes."""
    form = im2col_form(xl, k, stride, padding, dilation, out, taps_first)
    return None if form is None else form(xl)


def im2col_form(xl, k: tuple, stride: tuple, padding: tuple, dilation: tuple, out: tuple,
                taps_first: bool):
    """:func:`im2col` for arrays laid out as ``xl``, its checks and arguments settled once:
    ``f(xl) -> windows``, one kernel call (a convolution's plan, ``ops.conv``, keeps the form
    for its input's layout); None where the pass does not apply."""
    nd = len(k)
    kern = cpu_kernels()
    if (kern is None or nd not in (1, 2) or type(xl) is not np.ndarray
            or xl.dtype not in _KERNEL_DTYPES or not xl.flags.c_contiguous):
        return None
    n, c = xl.shape[0], xl.shape[-1]
    shape = k + (c, n) + out if taps_first else (n,) + out + k + (c,)
    size, dtype = math.prod(shape), xl.dtype
    if size == 0:
        return lambda xl: np.empty(shape, dtype)
    if nd == 1:  # as two axes, the first of length one
        sp, out, k = (1,) + xl.shape[1:2], (1,) + out, (1,) + k
        stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
    else:
        sp = xl.shape[1:3]
    args = ((n, *sp, c, *out, *k), *stride, *padding, *dilation, taps_first, dtype.type(0))
    im2col_2d, empty = kern.im2col_2d, np.empty

    def form(xl):
        mem = empty(size, dtype)
        im2col_2d(xl.reshape(-1), mem, *args)
        return mem.reshape(shape)

    return form


def outer_stack(x, y):
    """``x * y`` for stacks of outer products, x (..., m, 1) and y (..., 1, n) with the same
    leading axes and float dtype (a vmap'ed layer's per-example weight gradients): a numba loop
    where it is loaded (256 x 100 x 100: 0.26 against einsum's 1.9 ms), else an einsum (NumPy's
    broadcast multiply runs its inner loop over a broadcast axis here, ~1.6x slower); either,
    from :data:`SPLIT_MIN` elements, in halves on two threads. One multiply per element either way,
    so the bits are the multiply's. None for any other operands."""
    if (type(x) is not np.ndarray or type(y) is not np.ndarray or x.ndim != y.ndim
            or x.shape[-1] != 1 or y.shape[-2] != 1 or x.dtype != y.dtype
            or x.dtype.kind != "f" or x.shape[:-2] != y.shape[:-2]):
        return None
    k = cpu_kernels() if x.dtype in _KERNEL_DTYPES else None  # numba has no float16
    fn = _einsum_outer if k is None else k.outer_stack
    lead, m, n = x.shape[:-2], x.shape[-2], y.shape[-1]
    out = np.empty(lead + (m, n), x.dtype)
    if out.size:
        b = math.prod(lead)
        x, y, o = x.reshape(b, m), y.reshape(b, n), out.reshape(b, m, n)
        if out.size >= SPLIT_MIN and b > 1 and two_threads():  # memory-bound: two cores
            if x.dtype == float32 and k is not None and _outer_pool(x, y, o, m):
                return out
            h = b // 2
            _halves.run(fn, (x[:h], y[:h], o[:h]), (x[h:], y[h:], o[h:]))
        else:
            fn(x, y, o)
    return out


def _outer_pool(x, y, out, m: int) -> bool:
    """:func:`outer_stack`'s float32 loop in halves of its output rows on OpenBLAS's worker
    (:func:`pool_split`; ``m``, the rows of one example's product, goes in the constants);
    False where the pool is not to be used (nothing written)."""
    if not (_pool_halves() and m < 1 << 24 and x.flags.c_contiguous and y.flags.c_contiguous):
        return False
    k = cpu_kernels()
    if not _BlasPool.looked:
        _BlasPool.find(k)
    if _BlasPool.consts is None:
        return False
    consts = np.append(_BlasPool.consts, np.float32(m))
    return pool_split(k.OUTER, x.size, y.shape[1], x.reshape(-1), y.reshape(-1),
                      out.reshape(-1), consts=consts, least=0)


def _einsum_outer(x, y, out) -> None:
    """``out[b] = outer(x[b], y[b])`` for matrices ``x`` (b, m) and ``y`` (b, n)."""
    np.einsum("bi,bj->bij", x, y, out=out)


LINEAR_WIDE = 2
"""A linear layer with at least this many outputs per batch row takes its product transposed,
``x Wᵀ = (W xᵀ)ᵀ``: OpenBLAS runs such a product 5-20 % faster with the wide side as the rows
(784→1024 and 1024→1024 layers on a batch of 256: 2.2-2.4 against 2.6-2.9 ms, 2.7-3.0 against
3.6), and the same bits where x is C-ordered. The result is F-ordered, which the next layer's
product and the elementwise ops between them keep, and so does its input gradient (see
:func:`linear_input_grad`)."""


def linear_transposes(x, w) -> bool:
    """Whether :func:`linear_product` takes ``x @ w.T`` as ``(w @ x.T).T``: for a NumPy matrix
    ``x`` under a layer :data:`LINEAR_WIDE` times wider than its batch, or F-ordered already (the
    layer after a wide one: 256 x 1024 → 10 in 80-100 against 120 µs)."""
    if type(x) is not np.ndarray or x.ndim != 2:
        return False
    return w.shape[0] >= LINEAR_WIDE * x.shape[0] or f_ordered(x)


def linear_product(x, w):
    """``x @ w.T`` for a linear layer (``w`` of shape (out, in)), transposed and so F-ordered
    where :func:`linear_transposes` says, with a C-ordered copy of ``w.T`` where
    :func:`linear_copies_weight` says."""
    if linear_transposes(x, w):
        return matmul(w, x.T).T
    if linear_copies_weight(x, w):
        return matmul(x, np.ascontiguousarray(w.T))
    return matmul(x, w.T)


SMALL_KERNEL_MNK = 1_000_000
"""Multiply-adds up to which OpenBLAS's SkylakeX-family builds (:data:`SMALL_KERNEL_ARCHS`)
run a float32 product by their small-matrix kernels, which skip the packing of larger ones, but
not with a transposed right operand when the result has more than 1200 entries (or the inner
dimension is under 32)."""
SMALL_KERNEL_ARCHS = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})


def _small_kernels() -> bool:
    """Whether NumPy's OpenBLAS is of :data:`SMALL_KERNEL_ARCHS` (looked up once)."""
    if not _BlasThreads.looked:
        _BlasThreads.find()
    return _BlasThreads.arch in SMALL_KERNEL_ARCHS


ROW_BLOCKS_MAX = 16
"""Products of up to this many times :data:`SMALL_KERNEL_MNK` multiply-adds are split into
blocks by :func:`matmul_row_blocks` and :func:`matmul_k_blocks` (larger ones keep BLAS's
packed product, which pays off at their size)."""


def _small_blocks(a, b, per: int, total: int) -> int:
    """How many of ``per`` multiply-adds' units (rows, or terms of the inner dimension) one
    block of a ``total`` multiply-add float32 product ``a @ b`` holds so that the small-matrix
    kernels take it (a multiple of 16, 128 or more); 0 where the product is not split: other
    arrays or dtypes, a product the small kernels take whole, one of more than ROW_BLOCKS_MAX
    blocks, or other kernel families than :data:`SMALL_KERNEL_ARCHS`."""
    if (type(a) is not np.ndarray or type(b) is not np.ndarray or a.ndim != 2 or b.ndim != 2
            or a.dtype != float32 or b.dtype != float32
            or not SMALL_KERNEL_MNK < total <= ROW_BLOCKS_MAX * SMALL_KERNEL_MNK):
        return 0
    units = SMALL_KERNEL_MNK // per // 16 * 16
    if units < 128 or not _small_kernels():
        return 0
    return units


def matmul_row_blocks(a, b, out=None):
    """``a @ b`` (into NumPy array ``out`` when given) for a convolution's columns (rows of
    windows) or gradient rows and its kernel: on the SkylakeX-family kernels a float32 product
    of more than :data:`SMALL_KERNEL_MNK` multiply-adds (up to :data:`ROW_BLOCKS_MAX` times
    that) as blocks of rows, each small enough for the small-matrix kernels: faster than the
    packed product for the few channels of a convolution (1000 x 75 x 25: 47 against 56 µs;
    8192 x 9 x 16: 35 against 47; 2048 x 32 x 16: 22 against 28). Each block runs on one
    thread, whatever the thread count; the rows' sums are the small kernel's."""
    m = a.shape[0] if a.ndim == 2 else 0
    k, n = b.shape if b.ndim == 2 else (0, 0)
    rows = _small_blocks(a, b, k * n, m * k * n) if b.flags.c_contiguous else 0
    if not rows:
        return matmul(a, b) if out is None else matmul_into(a, b, out)
    if out is None:
        out = np.empty((m, n), a.dtype)
    for i in range(0, m, rows):
        np.matmul(a[i:i + rows], b, out=out[i:i + rows])
    return out


def matmul_k_blocks(a, b):
    """``a @ b`` for a convolution's weight gradient (a long inner dimension, the batch's
    positions): on the SkylakeX-family kernels a float32 product of more than
    :data:`SMALL_KERNEL_MNK` multiply-adds (up to :data:`ROW_BLOCKS_MAX` times that) as the
    sum of products over blocks of the inner dimension, each small enough for the small-matrix
    kernels (25 x 1000 x 75: 47 against 58 µs; 32 x 2048 x 144: 197 against 226). The blocks'
    sums are added in order, so the bits are the blocked sum's, the same wherever it runs (one
    thread, whatever the thread count), within the rounding of the whole product."""
    m, k = a.shape if a.ndim == 2 else (0, 0)
    n = b.shape[1] if b.ndim == 2 else 0
    terms = _small_blocks(a, b, m * n, m * k * n)
    if not terms:
        return matmul(a, b)
    out = np.matmul(a[:, :terms], b[:terms])
    part = np.empty_like(out)
    for i in range(terms, k, terms):
        np.matmul(a[:, i:i + terms], b[i:i + terms], out=part)
        out += part
    return out


def linear_copies_weight(x, w) -> bool:
    """Whether :func:`linear_product` multiplies by a C-ordered copy of ``w.T`` rather than the
    transposed view: for a float32 layer whose product the small-matrix kernels would take but
    for the transposed weight (:data:`SMALL_KERNEL_MNK`). The copy (the weight's size) costs
    less than the packed product it avoids: 100 x 100 x 100 in 22 against 26 µs, 100 x 40 x 100
    in 10 against 12, 16 x 100 x 100 in 7.5 against 9.2. Each row's sums are the small
    kernel's, so the bits differ from the transposed product's, the same in eager and compiled
    code."""
    if (type(x) is not np.ndarray or type(w) is not np.ndarray or x.ndim != 2 or w.ndim != 2
            or x.dtype != float32 or w.dtype != float32 or not x.flags.c_contiguous
            or not w.flags.c_contiguous):
        return False
    (m, k), n = x.shape, w.shape[0]
    if m < 16 or m * k * n > SMALL_KERNEL_MNK or (m * n <= 1200 and k >= 32):
        return False
    return _small_kernels()


def f_ordered(x) -> bool:
    """Whether ``x`` is a NumPy matrix laid out in F order only (a wide layer's output)."""
    return type(x) is np.ndarray and x.ndim == 2 and x.flags.f_contiguous and not \
        x.flags.c_contiguous


def linear_input_grad(g, w, x):
    """``g @ w``, the input gradient of a linear layer; where its input ``x`` is F-ordered (a
    wide layer's output), as ``(w.T @ g.T).T``, F-ordered too, so the elementwise gradients
    before the layer stay in one layout (a masked multiply across two layouts: 3x slower)."""
    if f_ordered(x) and g.ndim == 2:
        return matmul(w.T, g.T).T
    return matmul(g, w)


def matmul_into(a, b, out):
    """``a @ b`` written into NumPy array ``out`` (a compiled program's buffer), with
    :func:`matmul`'s shared-weight GEMM and small-product thread rules."""
    if type(a) is not np.ndarray or type(b) is not np.ndarray:
        if (a.ndim == 2 and b.ndim == 2 and type(a) is type(b) is type(out)
                and a.dtype == b.dtype == out.dtype and out.flags.c_contiguous):
            return a.dot(b, out=out)  # CuPy, as matmul() above
        return np.matmul(a, b, out=out)
    if (a.ndim == 3 and b.ndim == 3 and (a.strides[0] == 0) != (b.strides[0] == 0)
            and out.flags.c_contiguous and _shared_product(a, b, out) is not None):
        return out
    return _matmul_small(a, b, out)


def _matmul_small(a, b, out=None):
    """``np.matmul(a, b, out=out)``, on one BLAS thread when the product is small (see
    :func:`matmul` and :data:`SMALL_PRODUCT`). A stack of
    matrices times one matrix (a linear layer on (batch, tokens, features)) is one product of
    all their rows, as PyTorch folds it: NumPy runs one small GEMM per matrix of the stack
    (12 x 64 x 128 @ 128 x 384: 440-830 µs against 190)."""
    if a.ndim > 2 and b.ndim == 2:
        rows = _rows_of(a)
        if rows is not None and (out is None or out.flags.c_contiguous):
            flat = _matmul_small(rows, b, None if out is None else out.reshape(-1, b.shape[1]))
            return flat.reshape(a.shape[:-1] + b.shape[1:]) if out is None else out
    k = a.shape[-1] if a.ndim else 1
    m = a.shape[-2] if a.ndim > 1 else 1
    n = b.shape[-1] if b.ndim > 1 else 1
    mkn = m * k * n
    if mkn >= SMALL_PRODUCT or not _switches_threads(mkn):
        return np.matmul(a, b, out=out)
    threads = _BlasThreads.get()
    if threads == 1:
        return np.matmul(a, b, out=out)
    _BlasThreads.set(1)
    try:
        return np.matmul(a, b, out=out)
    finally:
        _BlasThreads.set(threads)


def _rows_of(a):
    """NumPy stack ``a`` (..., m, k) as its rows (M, k), a view; None where its leading axes
    do not merge without a copy (a transposed stack), or where it has no rows."""
    if not a.size:
        return None
    axes = [(m, s) for m, s in zip(a.shape[:-1], a.strides[:-1]) if m != 1]
    if any(x[1] != y[0] * y[1] for x, y in zip(axes, axes[1:])):
        return None
    return a.reshape(-1, a.shape[-1])


def product_for(m: int, k: int, n: int):
    """The function a compiled program calls for an (m, k) @ (k, n) NumPy product,
    ``f(a, b[, out])``: ``np.matmul`` itself where :func:`_matmul_small` would not change the
    thread count, else that wrapper. Decided once per program instead of per call."""
    return _matmul_small if _switches_threads(m * k * n) else np.matmul


def _switches_threads(mkn: int) -> bool:
    """Whether a product of ``mkn`` multiply-adds runs on one BLAS thread where the user's count
    is more: between BLAS_ONE_THREAD and SMALL_PRODUCT, when NumPy's OpenBLAS was found."""
    return BLAS_ONE_THREAD < mkn < SMALL_PRODUCT and (
        _BlasThreads.get is not None or (not _BlasThreads.looked and _BlasThreads.find()))


def _shared_product(a, b, out=None):
    """``a @ b`` for stacks of row (or column) vectors against one matrix repeated along the
    batch axis (stride 0, as vmap broadcasts unbatched weights): one GEMM instead of a loop of
    matrix-vector products, into C-contiguous ``out`` when given. None when the shapes are not
    of that form."""
    n = a.shape[0]
    if b.shape[0] != n or n == 0:
        return None
    if b.strides[0] == 0 and a.shape[1] == 1:  # (n, 1, k) @ shared (k, p)
        o = None if out is None else out.reshape(n, b.shape[2])
        return _matmul_small(a.reshape(n, a.shape[2]), b[0], o).reshape(n, 1, b.shape[2])
    if a.strides[0] == 0 and b.shape[2] == 1:  # shared (m, k) @ (n, k, 1)
        o = None if out is None else out.reshape(n, a.shape[1])
        return _matmul_small(b.reshape(n, b.shape[1]), a[0].T, o).reshape(n, a.shape[1], 1)
    return None


# --- NCCL (collectives between GPUs, through CuPy) ---------------------------------------------
class NcclComm:
    """A NCCL communicator over CuPy: in-place allreduce and broadcast of device arrays on the
    current stream. Made from the unique id rank 0 drew (:func:`nccl_unique_id`), which the
    ranks exchange over MPI, as ChainerMN did."""

    def __init__(self, world_size: int, unique_id, rank: int):
        from cupy.cuda import nccl
        self._nccl = nccl
        try:  # CuPy up to 13 takes the id as a tuple of chars
            self.comm = nccl.NcclCommunicator(world_size, tuple(unique_id), rank)
        except TypeError:  # CuPy 14 as bytes
            self.comm = nccl.NcclCommunicator(world_size, bytes(v % 256 for v in unique_id),
                                              rank)
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}
        self._types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
                       "float64": nccl.NCCL_FLOAT64, "int32": nccl.NCCL_INT32,
                       "int64": nccl.NCCL_INT64, "uint8": nccl.NCCL_UINT8}

    def _type(self, a):
        t = self._types.get(a.dtype.name)
        if t is None:
            raise TypeError(f"NCCL cannot reduce {a.dtype} arrays")
        return t

    def allreduce(self, a, op: str = "sum") -> None:
        s = _import_cupy().cuda.get_current_stream().ptr
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._type(a), self._ops[op], s)

    def broadcast(self, a, root: int = 0) -> None:
        s = _import_cupy().cuda.get_current_stream().ptr
        self.comm.bcast(a.data.ptr, a.size, self._type(a), root, s)

    def synchronize(self) -> None:
        _import_cupy().cuda.get_current_stream().synchronize()


def nccl_unique_id() -> list[int]:
    """A fresh NCCL unique id (drawn on rank 0 and sent to the others), as a list of ints."""
    _import_cupy()
    from cupy.cuda import nccl
    return [int(v) for v in nccl.get_unique_id()]


# --- discrete Fourier transforms ---------------------------------------------------------------
def fft(xp, kind: str, x, axes: tuple, norm: str, n_last: int | None = None):
    """The FFT ``kind`` of ``x`` over ``axes`` by the backend's pocketfft/cuFFT: "fft" and
    "ifft" (complex to complex), "rfft" (real to complex, the last axis halved) or "irfft"
    (complex to real, the last axis ``n_last`` long). Single precision stays single (complex64,
    float32), as in PyTorch, whatever the backend computes in."""
    f = xp.fft
    if kind == "fft":
        out = f.fftn(x, axes=axes, norm=norm)
    elif kind == "ifft":
        out = f.ifftn(x, axes=axes, norm=norm)
    elif kind == "rfft":
        out = f.rfftn(x, axes=axes, norm=norm)
    else:
        s = [x.shape[a] for a in axes[:-1]] + [n_last]
        out = f.irfftn(x, s=s, axes=axes, norm=norm)
    single = x.dtype.itemsize == (8 if x.dtype.kind == "c" else 4)
    want = (np.float32 if single else np.float64) if kind == "irfft" else \
        (np.complex64 if single else np.complex128)
    return out.astype(want, copy=False)


def fftfreq(xp, n: int, d: float, onesided: bool, dtype):
    """The sample frequencies of an ``n``-point DFT with spacing ``d`` (``rfftfreq`` when
    ``onesided``), as ``dtype``."""
    nd = n * d
    # PyTorch's ``arange * (1 / (n d))``: a zero n d gives ±inf, times 0 NaN, not an error
    scale = math.copysign(math.inf, nd) if nd == 0 else 1.0 / nd
    k = xp.arange(n // 2 + 1) if onesided else \
        xp.concatenate([xp.arange((n - 1) // 2 + 1), xp.arange(-(n // 2), 0)])
    acc = np.float64 if np.dtype(dtype).itemsize >= 8 else np.float32 if \
        np.dtype(dtype).itemsize == 4 else dtype  # in the dtype's precision, as PyTorch's
    with np.errstate(invalid="ignore", over="ignore"):
        return (k.astype(acc) * np.asarray(scale).astype(acc)).astype(dtype, copy=False)
