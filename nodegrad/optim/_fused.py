"""Fused optimiser updates: one kernel reads p, g and the state once and writes p and the state.

An optimiser with a kernel names it, with its state arrays and scalars, in
:meth:`Optimizer.fused_args`; this module finds the kernel for a device: a numba function on the
CPU (:mod:`._fused_cpu`, imported on the first fused step, so importing nodegrad never imports
numba), a CuPy ``ElementwiseKernel`` built from the CUDA C below on a GPU. Both compute each
element with the NumPy path's operations, in its order and its dtype (no fused multiply-adds),
so the fused and NumPy paths give the same bits.

Every kernel is called as ``kernel(p, g, *state, k, flags)`` on flat arrays: ``k`` holds its
scalars in the parameters' dtype (:func:`scalars`; ``k[0]`` the weight decay), ``flags`` is a bit
set: 1 negates the gradient (``maximize``), 2 adds ``k[0] * p`` to it (L2 weight decay), 4
multiplies ``p`` by ``k[0]`` first (decoupled: ``k[0] = 1 - lr λ``), 8, 16, ... the algorithm's
options in the order :meth:`Optimizer.fused_args` lists them.
"""

from __future__ import annotations

import importlib.util
import sys

from .. import _backend as B

DTYPES = (B.float32, B.float64)
_cuda: dict = {}  # Backend -> its _CudaKernels


def available(backend, dtype) -> bool:
    """Whether a fused kernel can run on ``backend`` for ``dtype`` (numba found on the CPU)."""
    if dtype not in DTYPES:
        return False
    if backend.device_id is not None:
        return True
    if "numba" in sys.modules:
        return sys.modules["numba"] is not None
    return importlib.util.find_spec("numba") is not None


# fused=None on the CPU: a bucket of fewer elements keeps the NumPy update until numba is imported
# (by anyone: the bucket then switches, with the same bits). Numba's import and start-up cost
# ~1 s and ~120 MiB once per process, and the kernel saves ~2 ns per element and step over the
# NumPy update: below this size that takes thousands of steps to pay back, above it a few
# hundred (W2's 1.86 M parameters save ~4 ms a step).
AUTO_MIN_SIZE = 1 << 16


def auto(backend, dtype, size: int) -> bool:
    """Whether ``fused=None`` takes the kernel for a bucket of ``size`` elements."""
    if not available(backend, dtype):
        return False
    return backend.device_id is not None or size >= AUTO_MIN_SIZE or B.numba_loaded()


def missing(backend, dtype) -> str:
    """Why :func:`available` is False, for an error message."""
    if dtype not in DTYPES:
        return f"fused kernels exist for float32 and float64 parameters, these are {dtype}"
    return ("the fused update on the CPU is compiled by numba, which is not installed: "
            "pip install 'nodegrad[jit]'")


def scalars(backend, dtype, values: tuple):
    """A kernel's scalar arguments, each rounded to ``dtype`` as NumPy rounds a Python float:
    one host array for a numba kernel (one argument to unbox), a tuple on CUDA."""
    if backend.device_id is None:
        return B.CPU.asarray(values, dtype)
    return tuple(dtype.type(x) for x in values)


def load(backend) -> None:
    """Import (on the CPU: compile or load from numba's cache) the kernels' module; raises what
    the import raises (numba without a writable cache directory, a broken install)."""
    if backend.device_id is None:
        from . import _fused_cpu  # noqa: F401


_cpu: dict = {}  # name -> the loaded numba kernel (no import statement per step)


def kernel(backend, name: str):
    """The fused kernel ``name`` ("adam", "sgd", "rmsprop", "adagrad") for ``backend``."""
    if backend.device_id is None:
        k = _cpu.get(name)
        if k is None:
            from . import _fused_cpu  # imports numba

            k = _cpu.setdefault(name, _adam_cpu if name == "adam" else getattr(_fused_cpu, name))
        return k
    k = _cuda.get(backend)
    if k is None:
        k = _cuda.setdefault(backend, _CudaKernels(backend))
    return getattr(k, name)


ADAM_POOL_MIN = 1 << 17
"""Parameters from which a float32 Adam update runs in two halves, the second on OpenBLAS's
worker thread (the pass costs ~1 ns a parameter, the hand-over ~25 µs)."""


def _adam_cpu(p, g, m, v, vmax, k, flags) -> None:
    """The Adam kernel, in halves with OpenBLAS's worker (:func:`._backend.pool_split`) where
    it is large and float32 and without AMSGrad (the same bits: each element's update is its
    own)."""
    from . import _fused_cpu

    if flags & 8 or not B.pool_split(flags, p.size, 1, p, g, m, v, least=ADAM_POOL_MIN,
                                     job=_fused_cpu.adam_half_job(), consts=k):
        _fused_cpu.adam(p, g, m, v, vmax, k, flags)


# --- CUDA: the same updates as CuPy ElementwiseKernels --------------------------------------
# One kernel per combination of flags (compiled once per process, cached on disk by CuPy); the
# flags choose which state arrays it writes, the scalars arrive cast to the arrays' dtype T.
def _pre(flags: int) -> str:
    src = "T gi = g; T pi = p;\n"
    if flags & 1:
        src += "gi = -gi;\n"
    if flags & 2:
        src += "gi = gi + pi * wd;\n"
    elif flags & 4:
        src += "pi = pi * wd;\n"
    return src


class _CudaKernels:
    """The fused kernels of one CUDA device, with the CPU kernels' signatures."""

    def __init__(self, backend):
        self.backend = backend
        self.built: dict = {}

    def _get(self, key: tuple, scalars: str, outs: str, body: str):
        name = f"ng_{key[0]}_{key[1]}"
        k = self.built[key] = self.backend.elementwise_kernel("T g, " + scalars, outs, body, name)
        return k

    def adam(self, p, g, m, v, vmax, k, flags):
        key = ("adam", flags)
        kern = self.built.get(key)
        amsgrad = flags & 8
        if kern is None:
            body = _pre(flags) + (
                "T mi = m + (gi - m) * omb1; m = mi;\n"
                "T vi = v * b2 + (gi * gi) * omb2; v = vi;\n")
            if amsgrad:
                body += "if (vi > vmax || vi != vi) vmax = vi;\nvi = vmax;\n"
            body += "p = pi - (mi / (sqrt(vi) + eps_s)) * step;"
            kern = self._get(key, "T wd, T omb1, T b2, T omb2, T eps_s, T step",
                             "T p, T m, T v" + (", T vmax" if amsgrad else ""), body)
        kern(g, *k, *((p, m, v, vmax) if amsgrad else (p, m, v)))

    def sgd(self, p, g, buf, k, flags):
        mode = flags & 8
        key = ("sgd", flags if mode else flags & 7)
        kern = self.built.get(key)
        if kern is None:
            body = _pre(flags) + "T d = gi;\n"
            if mode:
                body += ("T b = gi;\n" if flags & 16 else "T b = buf * mu + gi * omd;\n"
                         if flags & 32 else "T b = buf * mu + gi;\n")
                body += "buf = b;\n" + ("d = b * mu + gi;\n" if flags & 64 else "d = b;\n")
            body += "p = pi - d * lr;"
            kern = self._get(key, "T wd, T mu, T omd, T lr", "T p, T buf" if mode else "T p",
                             body)
        kern(g, *k, *((p, buf) if mode else (p,)))

    def rmsprop(self, p, g, v, gavg, buf, k, flags):
        key = ("rmsprop", flags)
        kern = self.built.get(key)
        centered, mom_on = flags & 8, flags & 16
        if kern is None:
            body = _pre(flags) + "T vi = v * alpha + (gi * gi) * oma; v = vi;\n"
            if centered:
                body += ("T ai = gavg + (gi - gavg) * oma; gavg = ai;\n"
                         "T r = sqrt(vi - ai * ai);\n")
            else:
                body += "T r = sqrt(vi);\n"
            body += "T d = gi / (r + eps);\n"
            if mom_on:
                body += "T b = buf * mom + d; buf = b; d = b;\n"
            body += "p = pi - d * lr;"
            outs = "T p, T v" + (", T gavg" if centered else "") + (", T buf" if mom_on else "")
            kern = self._get(key, "T wd, T alpha, T oma, T eps, T mom, T lr", outs, body)
        kern(g, *k, p, v, *((gavg,) if centered else ()), *((buf,) if mom_on else ()))

    def adagrad(self, p, g, s, k, flags):
        key = ("adagrad", flags)
        kern = self.built.get(key)
        if kern is None:
            body = _pre(flags) + (
                "T si = s + gi * gi; s = si;\n"
                "p = pi - (gi / (sqrt(si) + eps)) * clr;")
            kern = self._get(key, "T wd, T eps, T clr", "T p, T s", body)
        kern(g, *k, p, s)
