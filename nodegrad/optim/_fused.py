"""Fused optimiser updates: one kernel reads p, g and the state once and writes p and the state.

An optimiser with a kernel names it, with its state arrays and scalars, in
:meth:`Optimizer.fused_args`; this module finds the kernel for a device: a numba function on the
CPU (:mod:`._fused_cpu`, imported on the first fused step, so importing nodegrad never imports
numba), a CuPy ``ElementwiseKernel`` built from the CUDA C below on a GPU. Both compute each
element with the NumPy path's operations, in its order and its dtype (no fused multiply-adds),
so the fused and NumPy paths give the same bits.

Every kernel is called as ``kernel(p, g, *state, neg, wd_mode, wd, *scalars)`` on flat arrays:
``neg`` negates the gradient (``maximize``), ``wd_mode`` 1 adds ``wd * p`` to it (L2 weight
decay), 2 multiplies ``p`` by ``wd`` first (decoupled: ``wd`` is then ``1 - lr λ``).
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


def missing(backend, dtype) -> str:
    """Why :func:`available` is False, for an error message."""
    if dtype not in DTYPES:
        return f"fused kernels exist for float32 and float64 parameters, these are {dtype}"
    return ("the fused update on the CPU is compiled by numba, which is not installed: "
            "pip install 'nodegrad[jit]'")


def kernel(backend, name: str):
    """The fused kernel ``name`` ("adam", "sgd", "rmsprop", "adagrad") for ``backend``."""
    if backend.device_id is None:
        from . import _fused_cpu  # imports numba

        return getattr(_fused_cpu, name)
    k = _cuda.get(backend)
    if k is None:
        k = _cuda.setdefault(backend, _CudaKernels(backend))
    return getattr(k, name)


# --- CUDA: the same updates as CuPy ElementwiseKernels --------------------------------------
# One kernel per combination of flags (compiled once per process, cached on disk by CuPy); the
# flags choose which state arrays it writes, the scalars arrive cast to the arrays' dtype T.
def _pre(neg: bool, wd_mode: int) -> str:
    src = "T gi = g; T pi = p;\n"
    if neg:
        src += "gi = -gi;\n"
    if wd_mode == 1:
        src += "gi = gi + pi * wd;\n"
    elif wd_mode == 2:
        src += "pi = pi * wd;\n"
    return src


class _CudaKernels:
    """The fused kernels of one CUDA device, with the CPU kernels' signatures."""

    def __init__(self, backend):
        self.backend = backend
        self.built: dict = {}

    def _get(self, key: tuple, scalars: str, outs: str, body: str):
        k = self.built.get(key)
        if k is None:
            name = "ng_" + "_".join(str(int(x)) if not isinstance(x, str) else x for x in key)
            k = self.backend.elementwise_kernel("T g, " + scalars, outs, body, name)
            self.built[key] = k
        return k

    def adam(self, p, g, m, v, vmax, neg, wd_mode, wd, omb1, b2, omb2, amsgrad, eps_s, step):
        key = ("adam", neg, wd_mode, amsgrad)
        k = self.built.get(key)
        if k is None:
            body = _pre(neg, wd_mode) + (
                "T mi = m + (gi - m) * omb1; m = mi;\n"
                "T vi = v * b2 + (gi * gi) * omb2; v = vi;\n")
            if amsgrad:
                body += "if (vi > vmax || vi != vi) vmax = vi;\nvi = vmax;\n"
            body += "p = pi - (mi / (sqrt(vi) + eps_s)) * step;"
            k = self._get(key, "T wd, T omb1, T b2, T omb2, T eps_s, T step",
                          "T p, T m, T v" + (", T vmax" if amsgrad else ""), body)
        outs = (p, m, v, vmax) if amsgrad else (p, m, v)
        k(g, wd, omb1, b2, omb2, eps_s, step, *outs)

    def sgd(self, p, g, buf, neg, wd_mode, wd, mode, first, mu, damp, omd, nesterov, lr):
        key = ("sgd", neg, wd_mode, mode, mode and first, mode and damp, mode and nesterov)
        k = self.built.get(key)
        if k is None:
            body = _pre(neg, wd_mode) + "T d = gi;\n"
            if mode:
                body += ("T b = gi;\n" if first else
                         "T b = buf * mu + gi * omd;\n" if damp else "T b = buf * mu + gi;\n")
                body += "buf = b;\n" + ("d = b * mu + gi;\n" if nesterov else "d = b;\n")
            body += "p = pi - d * lr;"
            k = self._get(key, "T wd, T mu, T omd, T lr", "T p, T buf" if mode else "T p", body)
        outs = (p, buf) if mode else (p,)
        k(g, wd, mu, omd, lr, *outs)

    def rmsprop(self, p, g, v, gavg, buf, neg, wd_mode, wd, alpha, oma, centered, eps, mom_on,
                mom, lr):
        key = ("rmsprop", neg, wd_mode, centered, mom_on)
        k = self.built.get(key)
        if k is None:
            body = _pre(neg, wd_mode) + "T vi = v * alpha + (gi * gi) * oma; v = vi;\n"
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
            k = self._get(key, "T wd, T alpha, T oma, T eps, T mom, T lr", outs, body)
        outs = (p, v) + ((gavg,) if centered else ()) + ((buf,) if mom_on else ())
        k(g, wd, alpha, oma, eps, mom, lr, *outs)

    def adagrad(self, p, g, s, neg, wd_mode, wd, eps, clr):
        key = ("adagrad", neg, wd_mode)
        k = self.built.get(key)
        if k is None:
            body = _pre(neg, wd_mode) + (
                "T si = s + gi * gi; s = si;\n"
                "p = pi - (gi / (sqrt(si) + eps)) * clr;")
            k = self._get(key, "T wd, T eps, T clr", "T p, T s", body)
        k(g, wd, eps, clr, p, s)
