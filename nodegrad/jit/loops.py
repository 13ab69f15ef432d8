"""Compiled forms of a GRU layer's time loops, for programs that fuse on the CPU.

Eagerly, ``gru_scan_loop`` runs a step in about ten NumPy calls (the recurrent product, then
the gates' elementwise work a call at a time) and ``gru_scan_grad`` in two per step plus passes
before and after: for the MNIST-1D GRU (hidden size 6, batch 100, 40 steps, two directions)
those calls, not arithmetic, are most of the time. Here each of the three loop primitives
becomes one numba kernel, written for the layer's hidden size (its sums over the hidden units
unrolled), that keeps a step's work in registers and vectorises it over the batch: the forward
loop ~4x, the reverse loop (its weight gradient one blocked product after the loop) ~2.5x and
the states' transposition ~3x faster than eager's at that size.

Only float32 layers with up to :data:`MAX_HIDDEN` units take them (above, the per-step products
dominate and OpenBLAS runs them better than unrolled sums). The kernels write the loop array in
eager's layout, so an op left eager reads it as eager's. Bits: tanh is :mod:`._vmath`'s float32
``_vtanh32`` (within 1.5 ulps, as NumPy's own), the products add in another order than
OpenBLAS's and every multiply-add is rounded once, so results are within the fused tolerance of
eager's (1e-6 relative), as a fused elementwise kernel's are. Kernels are cached on disk as
:mod:`.fuse`'s are.
"""

from __future__ import annotations

import math

from .. import _backend as B
from . import _vmath

MAX_HIDDEN = 16  # the largest hidden size compiled (3 x 16 weights unrolled per unit)
_OPTS = "cache=True, nogil=True, boundscheck=False, error_model='numpy'"


def _fma_sum(terms: list, start: str) -> str:
    """``start + Σ a * b`` over ``terms`` (pairs of names) as nested single-rounding fmas."""
    expr = start
    for a, b in terms:
        expr = f"_vfma({a}, {b}, {expr})"
    return expr


def _forward_source(n_h: int) -> str:
    """The forward loop: per step and direction, per hidden unit, over the batch: its three
    recurrent pre-activations (a row of Wₕₕ against h_{s-1}, plus the bias), the gates and the
    new state, written into the loop array as ``ops.nn._gru_loop_fwd`` lays it out."""
    units = range(n_h)
    weights = "\n".join(f"            w{g}{k} = w[d, {j * n_h} + i, {k}]"
                        for j, g in enumerate("rzn") for k in units)
    states = "\n".join(f"                h{k} = loop[s, hb + {k}, n]" for k in units)
    sums = {g: _fma_sum([(f"w{g}{k}", f"h{k}") for k in units], f"b{g}") for g in "rzn"}
    return f'''
@numba.njit({_OPTS})
def kernel(gi, w, b, h0, rev, loop):
    D, G, T, N = gi.shape
    H = {n_h}
    DH = D * H
    r1 = DH + 1
    one = numpy.float32(1.0)
    half = numpy.float32(0.5)
    for s in range(T + 1):
        for n in range(N):
            loop[s, DH, n] = one
    for q in range(r1, 5 * DH + 1):  # the slot after the last step holds only the final state
        for n in range(N):
            loop[T, q, n] = 0.0
    for d in range(D):
        for k in range(H):
            for n in range(N):
                loop[0, d * H + k, n] = h0[d, n, k]
    for s in range(T):
        for d in range(D):
          t = T - 1 - s if rev[d] else s
          hb = d * H
          for i in range(H):
            row = hb + i
{weights}
            br = b[d, i]
            bz = b[d, H + i]
            bn = b[d, 2 * H + i]
            ir = gi[d, i, t]
            iz = gi[d, H + i, t]
            i_n = gi[d, 2 * H + i, t]
            hp = loop[s, row]
            o_r = loop[s, r1 + row]
            o_z = loop[s, r1 + DH + row]
            o_g = loop[s, r1 + 2 * DH + row]
            o_n = loop[s, r1 + 3 * DH + row]
            o_h = loop[s + 1, row]
            for n in range(N):
{states}
                gr = {sums["r"]}
                gz = {sums["z"]}
                gn = {sums["n"]}
                r = _vfma(_vtanh32((ir[n] + gr) * half), half, half)
                zc = _vfma(_vtanh32((iz[n] + gz) * -half), half, half)
                nv = _vtanh32(_vfma(r, gn, i_n[n]))
                h = hp[n]
                o_r[n] = r
                o_z[n] = zc
                o_g[n] = gn
                o_n[n] = nv
                o_h[n] = _vfma(nv - h, zc, h)
'''


def _reverse_source(n_h: int) -> str:
    """The reverse loop: per step (last first), per unit over the batch, the cotangents of the
    gates' pre-activations from the kept gates (into ``dgi``, and into ``p`` with the recurrent
    product's gₙ side for the weight gradient, beside the states ``hs`` it pairs with); then
    per unit of h_{s-1}, dh_{s-1} = dh z + Wₕₕᵀ d(r, z, gₙ) + g_{s-1}, ``g`` the states'
    cotangent as (DH, T, N) rows in time order."""
    units = range(n_h)
    weights = "\n".join(f"            w{g}{i} = w[d, {j * n_h + i}, k]"
                        for j, g in enumerate("rzn") for i in units)
    loads = "\n".join(f"                p{g}{i} = p[d, {j}, {i}, t, n]"
                      for j, g in enumerate("rzn") for i in units)
    total = _fma_sum([(f"w{g}{i}", f"p{g}{i}") for i in units for g in "rzn"],
                     "x[n] * (one - zz[n])")
    return f'''
@numba.njit({_OPTS})
def kernel(g, loop, w, rev, dgi, p, hs, dh, dh0):
    T, N, D = g.shape[1], g.shape[2], dh0.shape[0]
    H = {n_h}
    DH = D * H
    r1 = DH + 1
    one = numpy.float32(1.0)
    for t in range(T):
        for n in range(N):
            hs[DH, t, n] = one
    for d in range(D):  # the last processed step's state gradient
        t = 0 if rev[d] else T - 1
        for k in range(H):
            for n in range(N):
                dh[d * H + k, n] = g[d * H + k, t, n]
    for s in range(T - 1, -1, -1):
        for d in range(D):
          t = T - 1 - s if rev[d] else s
          for i in range(H):
            row = d * H + i
            rr = loop[s, r1 + row]
            zz = loop[s, r1 + DH + row]
            gg = loop[s, r1 + 2 * DH + row]
            nn = loop[s, r1 + 3 * DH + row]
            hp = loop[s, row]
            x = dh[row]
            o_r = dgi[d, 0, i, t]
            o_z = dgi[d, 1, i, t]
            o_a = dgi[d, 2, i, t]
            p_r = p[d, 0, i, t]
            p_z = p[d, 1, i, t]
            p_n = p[d, 2, i, t]
            o_h = hs[row, t]
            for n in range(N):
                r = rr[n]
                zc = zz[n]
                nv = nn[n]
                h = hp[n]
                a = (x[n] * zc) * (one - nv * nv)
                dr = (a * gg[n]) * (r * (one - r))
                dz = (x[n] * (h - nv)) * (zc * (one - zc))
                o_r[n] = dr
                o_z[n] = dz
                o_a[n] = a
                p_r[n] = dr
                p_z[n] = dz
                p_n[n] = a * r
                o_h[n] = h
        for d in range(D):
          t = T - 1 - s if rev[d] else s
          tp = t + 1 if rev[d] else t - 1
          for k in range(H):
            row = d * H + k
{weights}
            zz = loop[s, r1 + DH + row]
            x = dh[row]
            for n in range(N):
{loads}
                acc = {total}
                if s > 0:
                    acc += g[row, tp, n]
                x[n] = acc
    for d in range(D):
        for k in range(H):
            for n in range(N):
                dh0[d, n, k] = dh[d * H + k, n]
'''


_STATES_SOURCE = f'''
@numba.njit({_OPTS})
def kernel(loop, rev, out):
    T, N, D, H = out.shape
    for d in range(D):
        for s in range(T):
            t = T - 1 - s if rev[d] else s
            for k in range(H):
                src = loop[s + 1, d * H + k]
                for n in range(N):
                    out[t, n, d, k] = src[n]
'''


def _module(body: str):
    """The kernel of ``body`` (with :mod:`._vmath`'s functions where it calls them), compiled
    and cached by :func:`.fuse._load`."""
    from .fuse import _load

    return _load("\n".join(["import math", "import numba", "import numpy", "",
                            _vmath.SOURCE if "_v" in body else "", body]))


def _flags(reverse, n_dir: int):
    return B.np.array([bool(reverse) and bool(reverse[d]) for d in range(n_dir)], B.bool_)


def _compiled(i, n_h: int, n_dir: int):
    """The replay function of GRU loop instruction ``i`` (hidden size ``n_h``)."""
    params = i.params
    rev = _flags(params.get("reverse", ()), n_dir)
    np = B.np
    if i.name == "gru_scan_loop":
        kernel = _module(_forward_source(n_h))

        def fn(gi, w, b, h0):
            steps, batch = gi.shape[2], gi.shape[3]
            loop = np.empty((steps + 1, 5 * n_dir * n_h + 1, batch), B.float32)
            kernel(gi, w, b, h0, rev, loop)
            return loop

    elif i.name == "gru_scan":
        kernel = _module(_STATES_SOURCE)
        major = bool(params.get("batch_major"))

        def fn(gi, w, b, h0, loop):
            steps, batch = gi.shape[2], gi.shape[3]
            if major:
                out = np.empty((batch, steps, n_dir, n_h), B.float32).transpose(1, 0, 2, 3)
            else:
                out = np.empty((steps, batch, n_dir, n_h), B.float32)
            kernel(loop, rev, out)
            return out

    else:
        kernel = _module(_reverse_source(n_h))
        wgrad = bool(params.get("wgrad", True))
        dh_, n_g = n_dir * n_h, 3 * n_h

        def fn(g, loop, w):
            steps, batch = g.shape[0], g.shape[1]
            sizes = (n_dir * n_g * steps * batch, n_dir * n_g * n_h, n_dir * n_g,
                     n_dir * batch * n_h)
            flat = np.empty(sum(sizes), B.float32)
            e0, e1, e2 = sizes[0], sizes[0] + sizes[1], sizes[0] + sizes[1] + sizes[2]
            dgi = flat[:e0].reshape(n_dir, 3, n_h, steps, batch)
            p = np.empty_like(dgi)
            hs = np.empty((dh_ + 1, steps, batch), B.float32)
            dh = np.empty((dh_, batch), B.float32)
            # the states' cotangent as (DH, T, N) rows, read along the batch in the loop (a
            # batch-first layer's arrives batch-major: read in place, 1.8x slower)
            gt = np.empty((dh_, steps, batch), B.float32)
            gt.reshape(n_dir, n_h, steps, batch)[...] = g.transpose(2, 3, 0, 1)
            kernel(gt, loop, w, rev, dgi, p, hs, dh, flat[e2:].reshape(n_dir, batch, n_h))
            if not wgrad:
                flat[e0:e2] = 0
                return flat
            # Σ over steps and batch of d(r, z, gₙ) [h_{s-1}, 1]ᵀ: one product, each
            # direction's rows against its own states' columns (and the ones: the bias)
            full = B.matmul_k_blocks(p.reshape(n_dir * n_g, steps * batch),
                                     hs.reshape(dh_ + 1, steps * batch).T)
            full = full.reshape(n_dir, n_g, dh_ + 1)
            dw = flat[e0:e1].reshape(n_dir, n_g, n_h)
            db = flat[e1:e2].reshape(n_dir, n_g)
            for d in range(n_dir):
                dw[d] = full[d, :, d * n_h:(d + 1) * n_h]
                db[d] = full[d, :, dh_]
            return flat

    fn.__name__ = i.name
    fn.converts = False
    fn.fast = fn
    fn.params = params
    return fn


def _shape(prog, a: int):
    spec = prog.meta.get(a)
    if spec is None and a in prog.consts:
        v = prog.consts[a]
        spec = (tuple(getattr(v, "shape", ())), getattr(v, "dtype", None))
    return spec


def _size(prog, i) -> tuple | None:
    """(hidden size, directions) of a GRU loop instruction the kernels take, else None."""
    specs = [_shape(prog, a) for a in i.ins]
    if any(s is None or s[1] != B.float32 for s in specs) or len(specs[0][0]) != 4:
        return None
    if i.name == "gru_scan_grad":  # g (T, N, D, H), loop, w (D, 3H, H)
        steps, _batch, n_dir, n_h = specs[0][0]
    else:  # gi (D, 3H, T, N), ...
        n_dir, n_g, steps, _batch = specs[0][0]
        n_h = n_g // 3
    if not 0 < n_h <= MAX_HIDDEN or math.prod(specs[0][0]) == 0:
        return None
    return n_h, n_dir


def compile_loops(prog, instrs: list) -> None:
    """Give each float32 GRU loop instruction of a CPU program (hidden size up to
    :data:`MAX_HIDDEN`, numba installed) its compiled replay function, compiled now. Like a
    fused group of several ops (:func:`.fuse.fuse`), and unlike a single slow op, a loop
    imports numba if no one has: a step's hundreds of NumPy calls repay the import within a
    few thousand steps."""
    if prog.backend is None or prog.backend.device_id is not None:
        return
    names = ("gru_scan_loop", "gru_scan", "gru_scan_grad")
    found = [(i, _size(prog, i)) for i in instrs if i.kind == "op" and i.name in names
             and isinstance(i.params, dict)]
    found = [(i, size) for i, size in found if size is not None]
    if not found:
        return
    from .fuse import _get_numba, traced_arg

    if _get_numba() is None:
        return
    for i, (n_h, n_dir) in found:
        fn = _compiled(i, n_h, n_dir)
        fn(*[traced_arg(prog, a) for a in i.ins])  # compiles (or loads) the kernel now
        i.fn = fn
    prog.stats["compiled_loops"] = len(found)
