"""The fused optimiser updates for the CPU: numba kernels, one pass over the flat buffers.

Imported only when a fused step first runs (importing nodegrad never imports numba); compiled
with ``cache=True``, so later processes load the machine code from numba's disk cache. Every
kernel repeats its NumPy path's operations in the same order and dtype (the scalars come in
already cast to the arrays' dtype, numba contracts nothing into FMAs without ``fastmath``), so
both paths give the same bits.

``adam_half_job`` gives a C callback that runs half of a large float32 Adam update on
OpenBLAS's worker thread, called through ``_backend.pool_split``.

Every kernel takes ``(p, g, *state, k, flags)``: flat arrays, ``k`` its scalars as one array of
the parameters' dtype (``k[0]`` the weight decay), ``flags`` a bit set: 1 negates the gradient
(``maximize``), 2 adds ``k[0] * p`` to it (L2 weight decay), 4 multiplies ``p`` by ``k[0]``
first (decoupled decay, ``k[0] = 1 - lr λ``); bits from 8 on are the algorithm's options.
"""

from __future__ import annotations

import math

import numba

from .._cpu_kernels import POOL_ARGS, _callback, f32_at

_OPTS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


@numba.njit(inline="always", **_OPTS)
def _transform(g, p, flags, wd):
    """The gradient transforms of ``Optimizer._transform``: maximize, then weight decay."""
    if flags & 1:
        g = -g
    if flags & 2:
        g = g + p * wd
    elif flags & 4:
        p = p * wd
    return g, p


@numba.njit(**_OPTS)
def adam(p, g, m, v, vmax, k, flags):
    """Adam/AdamW: ``m``, ``v`` (and ``vmax`` with AMSGrad, flag 8) and ``p`` in one pass."""
    wd, omb1, b2, omb2, eps_s, step = k[0], k[1], k[2], k[3], k[4], k[5]
    amsgrad = (flags & 8) != 0
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], flags, wd)
        mi = m[i]
        mi = mi + (gi - mi) * omb1
        m[i] = mi
        vi = v[i] * b2 + (gi * gi) * omb2
        v[i] = vi
        if amsgrad:
            vm = vmax[i]
            if vi > vm or vi != vi:  # np.maximum: NaN wins
                vm = vi
            vmax[i] = vm
            vi = vm
        p[i] = pi - (mi / (math.sqrt(vi) + eps_s)) * step


@numba.njit(**_OPTS)
def sgd(p, g, buf, k, flags):
    """SGD; flags 8 momentum (``buf``), 16 first step (``buf`` = g), 32 dampening, 64 Nesterov."""
    wd, mu, omd, lr = k[0], k[1], k[2], k[3]
    mode, first = (flags & 8) != 0, (flags & 16) != 0
    damp, nesterov = (flags & 32) != 0, (flags & 64) != 0
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], flags, wd)
        d = gi
        if mode:
            if first:
                b = gi
            elif damp:
                b = buf[i] * mu + gi * omd
            else:
                b = buf[i] * mu + gi
            buf[i] = b
            d = b * mu + gi if nesterov else b
        p[i] = pi - d * lr


@numba.njit(**_OPTS)
def rmsprop(p, g, v, gavg, buf, k, flags):
    """RMSprop; flags 8 centred (``gavg``), 16 momentum (``buf``)."""
    wd, alpha, oma, eps, mom, lr = k[0], k[1], k[2], k[3], k[4], k[5]
    centered, mom_on = (flags & 8) != 0, (flags & 16) != 0
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], flags, wd)
        vi = v[i] * alpha + (gi * gi) * oma
        v[i] = vi
        if centered:
            ai = gavg[i]
            ai = ai + (gi - ai) * oma
            gavg[i] = ai
            r = math.sqrt(vi - ai * ai)
        else:
            r = math.sqrt(vi)
        d = gi / (r + eps)
        if mom_on:
            b = buf[i] * mom + d
            buf[i] = b
            d = b
        p[i] = pi - d * lr


@numba.njit(**_OPTS)
def adagrad(p, g, s, k, flags):
    """Adagrad: the running sum of squares and ``p`` in one pass."""
    wd, eps, clr = k[0], k[1], k[2]
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], flags, wd)
        si = s[i] + gi * gi
        s[i] = si
        p[i] = pi - (gi / (math.sqrt(si) + eps)) * clr


def adam_half_job() -> int:
    """The address of :func:`_adam_half` as a C callback (made on first use)."""
    return _callback(_adam_half)


def _adam_half(argp):
    """One half of a float32 Adam/AdamW update (without AMSGrad) split with OpenBLAS's worker
    thread (``_backend.pool_split``, its argument block): the flags, the first and last
    element, 1, the scalars' address, then p, g, m and v's."""
    a = numba.carray(argp, (POOL_ARGS,), numba.int64)
    lo, n = a[1], a[2] - a[1]
    p = f32_at(a[5], lo, n)
    adam(p, f32_at(a[6], lo, n), f32_at(a[7], lo, n), f32_at(a[8], lo, n), p,
         f32_at(a[4], 0, 6), a[0])
