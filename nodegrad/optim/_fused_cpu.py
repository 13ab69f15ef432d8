"""The fused optimiser updates for the CPU: numba kernels, one pass over the flat buffers.

Imported only when a fused step first runs (importing nodegrad never imports numba); compiled
with ``cache=True``, so later processes load the machine code from numba's disk cache. Every
kernel repeats its NumPy path's operations in the same order and dtype (the scalars come in
already cast to the arrays' dtype, numba contracts nothing into FMAs without ``fastmath``), so
both paths give the same bits.

Shared arguments: ``neg`` negates the gradient (``maximize``); ``wd_mode`` 1 adds ``wd * p``
to it (L2 weight decay), 2 multiplies ``p`` by ``wd`` (decoupled: ``wd`` is ``1 - lr λ``).
"""

from __future__ import annotations

import math

import numba

_OPTS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


@numba.njit(inline="always", **_OPTS)
def _transform(g, p, neg, wd_mode, wd):
    """The gradient transforms of ``Optimizer._transform``: maximize, then weight decay."""
    if neg:
        g = -g
    if wd_mode == 1:
        g = g + p * wd
    elif wd_mode == 2:
        p = p * wd
    return g, p


@numba.njit(**_OPTS)
def adam(p, g, m, v, vmax, neg, wd_mode, wd, omb1, b2, omb2, amsgrad, eps_s, step):
    """Adam/AdamW: ``m``, ``v`` (and ``vmax`` with ``amsgrad``) and ``p`` in one pass."""
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], neg, wd_mode, wd)
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
def sgd(p, g, buf, neg, wd_mode, wd, mode, first, mu, damp, omd, nesterov, lr):
    """SGD; ``mode`` 0 without momentum, 1 with (``buf``, set to the gradient when ``first``)."""
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], neg, wd_mode, wd)
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
def rmsprop(p, g, v, gavg, buf, neg, wd_mode, wd, alpha, oma, centered, eps, mom_on, mom, lr):
    """RMSprop, plain or centred (``gavg``), with or without momentum (``buf``)."""
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], neg, wd_mode, wd)
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
def adagrad(p, g, s, neg, wd_mode, wd, eps, clr):
    """Adagrad: the running sum of squares and ``p`` in one pass."""
    for i in range(p.size):
        gi, pi = _transform(g[i], p[i], neg, wd_mode, wd)
        si = s[i] + gi * gi
        s[i] = si
        p[i] = pi - (gi / (math.sqrt(si) + eps)) * clr
