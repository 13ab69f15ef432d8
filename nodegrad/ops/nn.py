"""Fused primitives for stability and speed: logsumexp, softmax, log_softmax, binary and
softmax cross-entropy, linear, the GRU gate update and the GRU layer's whole time loop.

Each subtracts the maximum before exponentiating (the notes' log-sum-exp trick), so logits of
±1e4 give finite values and finite gradients.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ..autodiff import modes
from ..batching import batched, front, rank_up, size_of
from ..errors import ShapeError
from ..tensor import ones
from ..primitive import primitive
from .elementwise import _sigmoid as _sigmoid_np
from .elementwise import (_sigmoid_grad, _tanh_grad, exp, log, log1p, maximum, sigmoid,
                          tanh)
from .reduce import _sum
from .shape import (broadcast_to, concatenate, expand_dims, keepdims_shape, moveaxis, norm_axes,
                    norm_axis, reshape, stack, swapaxes, transpose)


def _shifted(xp, x, axis):
    # max has no identity: an empty tensor takes the sum (zeros of the same shape) as its shift
    m = xp.max(x, axis=axis, keepdims=True) if x.size else xp.sum(x, axis=axis, keepdims=True)
    return x - xp.where(xp.isfinite(m), m, 0), m


def _log_pos(xp, s):
    # log of a sum of exponentials: -inf, without a divide-by-zero warning, where the sum is 0
    # (an empty axis, or every input -inf); elsewhere the sum is >= 1 after the shift
    ok = s > 0
    return xp.where(ok, xp.log(xp.where(ok, s, 1)), -xp.inf)


def _lse_fwd(xp, x, axis, keepdims):
    z, m = _shifted(xp, x, axis)
    out = _log_pos(xp, xp.sum(xp.exp(z), axis=axis, keepdims=True)) + xp.where(xp.isfinite(m), m, 0)
    return out if keepdims else xp.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def _lse_vjp(g, ans, x, axis, keepdims):
    shape = keepdims_shape(x.shape, axis)
    if not keepdims:
        g, ans = reshape(g, shape), reshape(ans, shape)
    return broadcast_to(g, x.shape) * exp(x - ans)


def _lse_jvp(ts, ans, x, axis, keepdims):
    a = ans if keepdims else reshape(ans, keepdims_shape(x.shape, axis))
    return _sum(ts[0] * exp(x - a), axis=axis, keepdims=keepdims)


_logsumexp = primitive("logsumexp", _lse_fwd, _lse_vjp, saves="both", kind="reduce",
                       jvp=_lse_jvp,
                       doc="log(sum(exp(x))) over axes, with the max subtracted first.")


def logsumexp(x, axis=None, keepdims: bool = False):
    """log Σ exp(x) over ``axis``, stable for large |x|; its gradient is the softmax."""
    return _logsumexp(x, axis=norm_axes(axis, x.ndim, "logsumexp"), keepdims=bool(keepdims))


def _softmax_fwd(xp, x, axis):
    z, _ = _shifted(xp, x, axis)
    e = xp.exp(z)
    return e / xp.sum(e, axis=axis, keepdims=True)


def _log_softmax_fwd(xp, x, axis):
    z, _ = _shifted(xp, x, axis)
    return z - _log_pos(xp, xp.sum(xp.exp(z), axis=axis, keepdims=True))


_softmax = primitive(
    "softmax", _softmax_fwd,
    lambda g, ans, x, axis: ans * (g - _sum(g * ans, axis=(axis,), keepdims=True)),
    saves="out", kind="reduce", doc="exp(x) / sum(exp(x)) along an axis.",
    jvp="vjp")  # the softmax Jacobian diag(s) - s sᵀ is symmetric
_log_softmax = primitive(
    "log_softmax", _log_softmax_fwd,
    lambda g, ans, x, axis: g - exp(ans) * _sum(g, axis=(axis,), keepdims=True),
    saves="out", kind="reduce", doc="x - logsumexp(x) along an axis.",
    jvp=lambda ts, ans, x, axis: ts[0] - _sum(ts[0] * exp(ans), axis=(axis,), keepdims=True))


def softmax(x, axis: int = -1):
    """Probabilities along ``axis``: exp(x - max) normalised."""
    return _softmax(x, axis=norm_axis(axis, x.ndim, "softmax"))


def log_softmax(x, axis: int = -1):
    """Log-probabilities along ``axis``: x - logsumexp(x), without overflow."""
    return _log_softmax(x, axis=norm_axis(axis, x.ndim, "log_softmax"))


# --- binary cross-entropy -------------------------------------------------------------------
_BCE_EPS = 9.99999996e-13  # PyTorch's EPSILON (1e-12 as a float32) under p(1 - p)


def _clamped_log(xp, x, at):
    # max(log x, -100) without a divide-by-zero warning where x == 0 (NaN still propagates)
    return xp.where(at, -100.0, xp.maximum(xp.log(xp.where(at, 1, x)), -100.0))


def _bce_fwd(xp, p, t):
    return -(t * _clamped_log(xp, p, p == 0) + (1 - t) * _clamped_log(xp, 1 - p, p == 1))


_bce = primitive(
    "binary_cross_entropy", _bce_fwd,
    (lambda g, ans, p, t: g * (p - t) / maximum(p * (1 - p), _BCE_EPS),
     lambda g, ans, p, t: g * (log1p(-p) - log(p))),
    kind="elementwise", jvp="vjp",
    doc="-[t log p + (1 - t) log(1 - p)], logs clamped at -100 and the gradient's "
        "denominator p(1 - p) at 1e-12, as PyTorch: finite at p = 0 or 1.")


def binary_cross_entropy(p, t):
    """Elementwise BCE of probabilities ``p`` against targets ``t`` (PyTorch's values and
    gradients, finite for a saturated p of exactly 0 or 1)."""
    return _bce(p, t)


# --- affine ---------------------------------------------------------------------------------
def _linear_fwd(xp, x, w, b):
    out = B.matmul(x, w.T)
    if b is not None:
        out += b  # in place into the product, as addmm: no second batch-sized array
    return out


def _linear_dw(g, ans, x, w, b):
    if g.ndim == 2:  # the usual (batch, out) case: no reshapes to bind
        return g.mT @ x
    return reshape(g, (-1, g.shape[-1])).mT @ reshape(x, (-1, x.shape[-1]))


def _linear_db(g, ans, x, w, b):
    return _sum(g, axis=tuple(range(g.ndim - 1)), keepdims=False) if g.ndim > 1 else g


def _linear_jvp(ts, ans, x, w, b):
    tx, tw, tb = ts
    out = None if tx is None else _linear(tx, w, None)
    if tw is not None:
        out = _linear(x, tw, None) if out is None else out + _linear(x, tw, None)
    if tb is not None:
        out = broadcast_to(tb, x.shape[:-1] + w.shape[:1]) if out is None else out + tb
    return out


def _linear_batch(vals, bdims):
    (x, w, b), (bx, bw, bb) = vals, bdims
    if bw is None and bb is None:  # a batch of inputs through one layer: still one product
        return _linear(front(x, bx), w, b), 0
    n = size_of(vals, bdims)
    x, w = batched(x, bx, n), batched(w, bw, n)
    lead = x.shape[1:-1]
    if not lead:  # one row per example: W_i x_i, so the weights' cotangent is the contiguous
        # outer product g_i x_iᵀ (the matmul rule's broadcast multiply), shaped as the weights
        out = reshape(w @ expand_dims(x, -1), (n, w.shape[1]))
        if b is not None:
            out = out + (b if bb is None else front(b, bb))
        return out, 0
    out = reshape(reshape(x, (n, -1, x.shape[-1])) @ swapaxes(w, -1, -2),
                  (n,) + lead + (w.shape[1],))
    if b is not None:
        out = out + (b if bb is None else rank_up(b, bb, len(lead) + 1))
    return out, 0


_linear = primitive("linear", _linear_fwd,
                    (lambda g, ans, x, w, b: g @ w, _linear_dw, _linear_db), kind="linalg",
                    jvp=_linear_jvp, batch=_linear_batch, operands="all",
                    doc="x Wᵀ + b in one product with the bias added in place.")


def linear(x, weight, bias=None):
    """x Wᵀ + b (weight of shape (out, in)) as one primitive: one product, no extra buffer."""
    return _linear(x, weight, bias)


# --- softmax cross-entropy against class indices ----------------------------------------------
def _ce_keep(xp, t, ignore_index, reduction, dtype):
    """Each target's weight: 1 (0 where ignored), over the kept count for a mean."""
    keep = xp.ones(t.shape, dtype) if ignore_index is None else (t != ignore_index).astype(dtype)
    if reduction == "mean":
        count = keep.sum()
        keep = keep / count if count else xp.full(t.shape, xp.nan, dtype)
    return keep


def _plain(x, t, axis, ignore_index, reduction) -> bool:
    """The common case: (batch, classes) NumPy logits, a reduced loss, no target ignored. Then
    fewer array passes give bit-identical values (non-finite results take the general path)."""
    return (type(x) is B.ndarray and x.ndim == 2 and axis == 1 and reduction != "none"
            and x.shape[0] > 0 and x.shape[1] > 0 and t.shape == x.shape[:1]
            and (ignore_index is None or (ignore_index < 0 and t.min() >= 0)))


def _ce_fwd_plain(xp, x, t, reduction):
    m = x.max(axis=1, keepdims=True)
    if not math.isfinite(m.sum()):  # an infinite or NaN row: the general path's care
        return None
    z = x - m
    lse = xp.log(xp.exp(z).sum(axis=1))
    total = (lse - z[xp.arange(x.shape[0]), t]).sum()
    return total / x.dtype.type(x.shape[0]) if reduction == "mean" else total


def _ce_grad_plain(xp, x, g, t, reduction):
    m = x.max(axis=1, keepdims=True)
    if not math.isfinite(m.sum()):
        return None
    p = x - m
    xp.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)
    n = x.shape[0]
    p[xp.arange(n), t] -= 1
    one = x.dtype.type(1)
    p *= (one / x.dtype.type(n) if reduction == "mean" else one) * g
    return p


def _ce_fwd(xp, x, t, axis, ignore_index, reduction):
    if _plain(x, t, axis, ignore_index, reduction):
        out = _ce_fwd_plain(xp, x, t, reduction)
        if out is not None:
            return out
    logp = _log_softmax_fwd(xp, x, axis)
    safe = t if ignore_index is None else xp.where(t != ignore_index, t, 0)
    if logp.ndim == 2 and axis == 1:  # (batch, classes): one gather, no index arrays built
        picked = logp[xp.arange(logp.shape[0]), safe]
    else:
        picked = xp.take_along_axis(logp, xp.expand_dims(safe, axis), axis).squeeze(axis)
    loss = -picked * _ce_keep(xp, t, ignore_index, reduction if reduction != "mean" else "sum",
                              x.dtype)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    keep = _ce_keep(xp, t, ignore_index, "sum", x.dtype).sum()
    return total / keep if keep else xp.asarray(xp.nan, dtype=x.dtype)


def _ce_grad_fwd(xp, x, g, t, axis, ignore_index, reduction):
    if getattr(g, "ndim", 0) == 0 and _plain(x, t, axis, ignore_index, reduction):
        out = _ce_grad_plain(xp, x, g, t, reduction)
        if out is not None:
            return out
    s = _ce_keep(xp, t, ignore_index, reduction, x.dtype) * g   # each target's cotangent
    p = _softmax_fwd(xp, x, axis)
    safe = t if ignore_index is None else xp.where(t != ignore_index, t, 0)
    if p.ndim == 2 and axis == 1:  # (batch, classes): subtract the one-hot in place
        p[xp.arange(p.shape[0]), safe] -= 1
        p *= s[:, None]
        return p
    onehot = xp.zeros_like(p)
    xp.put_along_axis(onehot, xp.expand_dims(safe, axis), 1, axis)
    p -= onehot
    p *= xp.expand_dims(s, axis)
    return p


def _ce_weights(x, g, t, axis, ignore_index, reduction):
    """Each target's cotangent g·keep (/count for a mean), with the class axis restored."""
    keep = _ce_keep_p(t, ignore_index=ignore_index, reduction=reduction, dtype=x.dtype)
    return expand_dims(keep * g, axis)


def _ce_grad_dx(c, ans, x, g, t, axis, ignore_index, reduction):
    s = _softmax(x, axis=axis)
    cs = c * _ce_weights(x, g, t, axis, ignore_index, reduction)
    return s * (cs - _sum(cs * s, axis=(axis,), keepdims=True))


def _ce_grad_dg(c, ans, x, g, t, axis, ignore_index, reduction):
    # d/dg of (softmax(x) - onehot)·keep·g: the same map with a unit g, contracted with c
    per = _sum(c * _ce_grad(x, 1.0, t, axis=axis, ignore_index=ignore_index,
                            reduction=reduction), axis=(axis,), keepdims=False)
    return per if reduction == "none" else _sum(per, axis=tuple(range(per.ndim)), keepdims=False)


def _ce_jvp(ts, ans, x, t, axis, ignore_index, reduction):
    d = _ce_grad(x, 1.0, t, axis=axis, ignore_index=ignore_index, reduction=reduction) * ts[0]
    return _sum(d, axis=(axis,) if reduction == "none" else tuple(range(d.ndim)), keepdims=False)


def _ce_grad_jvp(ts, ans, x, g, t, axis, ignore_index, reduction):
    tx, tg = ts[0], ts[1]
    out = None
    if tx is not None:  # the softmax's JVP, weighted per target
        s = _softmax(x, axis=axis)
        out = s * (tx - _sum(tx * s, axis=(axis,), keepdims=True)) * _ce_weights(
            x, g, t, axis, ignore_index, reduction)
    if tg is not None:
        c = _ce_grad(x, tg, t, axis=axis, ignore_index=ignore_index, reduction=reduction)
        out = c if out is None else out + c
    return out


def _keep_batch(vals, bdims, ignore_index, reduction, dtype):
    t = front(vals[0], bdims[0])
    keep = _ce_keep_p(t, ignore_index=ignore_index, dtype=dtype,
                      reduction="sum" if reduction == "mean" else reduction)
    if reduction == "mean":  # each example's own count
        rest = tuple(range(1, t.ndim))
        keep = keep / (_sum(keep, axis=rest, keepdims=True) if rest else keep)
    return keep, 0


def _merged(v, bd, n):
    """A batched operand (B, N, ...) as (B·N, ...); a 0-d example becomes (B,)."""
    v = batched(v, bd, n)
    return v.reshape((-1,) + tuple(v.shape[2:])) if v.ndim > 1 else v


def _ce_batch(vals, bdims, axis, ignore_index, reduction):
    (x, t), (bx, bt) = vals, bdims
    n = size_of(vals, bdims)
    xb, tb = batched(x, bx, n), batched(t, bt, n)
    ax = axis if xb.ndim > 2 else 1
    loss = _ce(_merged(xb, 0, n), _merged(tb, 0, n), axis=ax, ignore_index=ignore_index,
               reduction="none")
    loss = loss.reshape(tuple(tb.shape))                                 # (B, ...)
    if reduction == "none":
        return loss, 0
    rest = tuple(range(1, loss.ndim))
    total = _sum(loss, axis=rest, keepdims=False) if rest else loss
    if reduction == "sum":
        return total, 0
    keep = _ce_keep_p(tb, ignore_index=ignore_index, reduction="sum", dtype=x.dtype)
    count = _sum(keep, axis=rest, keepdims=False) if rest else keep
    return total / count, 0


def _ce_grad_batch(vals, bdims, axis, ignore_index, reduction):
    (x, g, t), (bx, bg, bt) = vals, bdims
    n = size_of(vals, bdims)
    xb, tb = batched(x, bx, n), batched(t, bt, n)
    ax = axis if xb.ndim > 2 else 1
    rest = tuple(range(1, tb.ndim))
    if bg is None:
        gb = g if isinstance(g, float | int) else broadcast_to(g, (n,) + tuple(g.shape))
    else:
        gb = front(g, bg)
    if reduction != "none":  # one g per example: spread it over that example's targets
        if not isinstance(gb, float | int):
            gb = gb.reshape((n,) + (1,) * len(rest))
        if reduction == "mean":
            keep = _ce_keep_p(tb, ignore_index=ignore_index, reduction="sum", dtype=x.dtype)
            count = _sum(keep, axis=rest, keepdims=True) if rest else keep
            gb = gb / count
        gb = broadcast_to(gb, tuple(tb.shape))
    elif isinstance(gb, float | int):
        gb = broadcast_to(gb, tuple(tb.shape))
    dx = _ce_grad(_merged(xb, 0, n), _merged(gb, 0, n), _merged(tb, 0, n), axis=ax,
                  ignore_index=ignore_index, reduction="none")
    return dx.reshape(tuple(xb.shape)), 0


_ce_keep_p = primitive(
    "cross_entropy_weights", lambda xp, t, ignore_index, reduction, dtype: _ce_keep(
        xp, t, ignore_index, reduction, dtype), promote=False,
    batch=_keep_batch,
    doc="Each class target's weight: 1, 0 where ignored, over the kept count for a mean.")
_ce_grad = primitive(
    "cross_entropy_grad", _ce_grad_fwd, (_ce_grad_dx, _ce_grad_dg, None), kind="nn",
    jvp=_ce_grad_jvp, batch=_ce_grad_batch, operands=(0, 1),
    doc="(softmax(x) - onehot(t))·g·keep (/count): the logits' gradient of cross_entropy.")
_ce = primitive(
    "cross_entropy", _ce_fwd, (lambda g, ans, x, t, **p: _ce_grad(x, g, t, **p), None),
    kind="nn", jvp=_ce_jvp, batch=_ce_batch, operands=None,
    doc="Softmax cross-entropy of logits against class indices, in one pass.")


# --- the GRU gate update ---------------------------------------------------------------------
def _gru_fwd(xp, gi, gh, h):
    n_h = h.shape[-1]
    rz = _sigmoid_np(xp, gi[..., :2 * n_h] + gh[..., :2 * n_h])
    n = gh[..., 2 * n_h:] * rz[..., :n_h]
    n += gi[..., 2 * n_h:]
    xp.tanh(n, out=n)
    out = h - n
    out *= rz[..., n_h:]
    out += n
    return out


def _gru_parts(gi, gh, h):
    """r, z, n and hₙ (the h-side of n's pre-activation) as tensors, for the rules."""
    n_h = h.shape[-1]
    rz = sigmoid(gi[..., :2 * n_h] + gh[..., :2 * n_h])
    ghn = gh[..., 2 * n_h:]
    r = rz[..., :n_h]
    return rz, r, rz[..., n_h:], tanh(gi[..., 2 * n_h:] + r * ghn), ghn


def _gru_vjp(needs, c, ans, gi, gh, h):
    rz, r, z, n, ghn = _gru_parts(gi, gh, h)
    cz = c * z
    da = _tanh_grad(c - cz, n)                                # n's pre-activation
    drz = _sigmoid_grad(concatenate([da * ghn, c * (h - n)], -1), rz)
    return (concatenate([drz, da], -1) if needs[0] else None,
            concatenate([drz, da * r], -1) if needs[1] else None,
            cz if needs[2] else None)


def _gru_jvp(ts, ans, gi, gh, h):
    tgi, tgh, th = ts
    rz, r, z, n, ghn = _gru_parts(gi, gh, h)
    n_h = h.shape[-1]
    ta = [t[..., :2 * n_h] for t in (tgi, tgh) if t is not None]
    if not ta:  # only h moves
        return z * th
    trz = _sigmoid_grad(ta[0] if len(ta) == 1 else ta[0] + ta[1], rz)
    tn = trz[..., :n_h] * ghn
    if tgi is not None:
        tn = tn + tgi[..., 2 * n_h:]
    if tgh is not None:
        tn = tn + r * tgh[..., 2 * n_h:]
    tn = _tanh_grad(tn, n)
    out = tn + trz[..., n_h:] * (h - n) - z * tn
    return out if th is None else out + z * th


def _gru_batch(vals, bdims):
    """Batch axis first; an unbatched operand gets length-1 axes to broadcast against it."""
    rank = max(v.ndim - (b is not None) for v, b in zip(vals, bdims))
    ops = [rank_up(v, b, rank) if b is not None else
           reshape(v, (1,) * (rank + 1 - v.ndim) + tuple(v.shape)) for v, b in zip(vals, bdims)]
    return _gru(*ops), 0


_gru = primitive(
    "gru_update", _gru_fwd, vjp_all=_gru_vjp, kind="nn", jvp=_gru_jvp, batch=_gru_batch,
    operands="all",
    doc="GRU's gates from gi = x Wᵢₕᵀ + bᵢₕ and gh = h Wₕₕᵀ + bₕₕ (gate order r, z, n): "
        "h' = n + z (h - n), n = tanh(gi_n + r gh_n), in one bind.")


def gru_update(gi, gh, h):
    """One GRU step's gate update: r, z = σ(gi + gh) on the first 2H columns,
    n = tanh(gi_n + r ⊙ gh_n), h' = (1 - z) ⊙ n + z ⊙ h; the operands broadcast."""
    return _gru(gi, gh, h)


# --- the GRU layer's time loop ---------------------------------------------------------------
# One primitive for all T steps (both directions at once: D stacks directions, each with its own
# weights), so a step costs a few array calls instead of a dozen primitives; its VJP is one
# reverse loop (a second primitive) plus matrix products over all steps at once.
def _gru_scan_fwd(xp, gi, w, b, h0):
    # features before batch inside ((D, 3H, N) per step): each gate a contiguous block, so the
    # elementwise calls run over whole blocks, not rows of H elements
    steps, n_dir, batch, n_g = gi.shape
    n_h, dt = n_g // 3, gi.dtype
    gi, wt, b = _gru_halved(xp, gi, w, b)
    out = xp.empty((steps, n_dir, n_h, batch), dtype=dt)
    gh = xp.empty((n_dir, n_g, batch), dtype=dt)
    rz = xp.empty((n_dir, 2 * n_h, batch), dt)
    n = xp.empty((n_dir, n_h, batch), dtype=dt)
    h = xp.swapaxes(h0, -1, -2)
    for t in range(steps):
        xp.matmul(wt, h, out=gh)
        gh += b
        git = gi[t]
        xp.add(git[:, :2 * n_h], gh[:, :2 * n_h], out=rz)
        _sigmoid_halved(xp, rz)
        xp.multiply(gh[:, 2 * n_h:], rz[:, :n_h], out=n)
        n += git[:, 2 * n_h:]
        xp.tanh(n, out=n)
        h_new = out[t]
        xp.subtract(h, n, out=h_new)
        h_new *= rz[:, n_h:]
        h_new += n
        h = h_new
    return xp.ascontiguousarray(xp.swapaxes(out, -1, -2))


def _gru_halved(xp, gi, w, b):
    """gi (T, D, 3H, N), Wₕₕ (D, 3H, H) and b (D, 3H, 1) laid out features first, with the r and
    z rows halved (exact), so their pre-activations come out as x/2 for σ(x) = (1 + tanh(x/2))/2."""
    n_h = w.shape[-2]
    gi = xp.swapaxes(gi, -1, -2).copy()
    wt = xp.swapaxes(w, -1, -2).copy()
    b = b[:, :, None].copy()
    for v in (gi[..., :2 * n_h, :], wt[:, :2 * n_h], b[:, :2 * n_h]):
        v *= 0.5
    return gi, wt, b


def _sigmoid_halved(xp, x):
    """σ into ``x`` from x/2: (1 + tanh(x/2)) / 2, saturating without overflow."""
    xp.tanh(x, out=x)
    x *= 0.5
    x += 0.5
    return x


_GRU_CHUNK = 1 << 15  # about this many state elements' gates are recomputed at once


def _gru_gate_factors(xp, hprev, gi, wt, b):
    """The factors k with d(pre-activations) = dh_t * k for a few steps at once (features before
    batch, r and z rows halved), k (…, 5, H, N): r, z, n's pre-activation a, the h-side n (a·r),
    and z itself (h_{t-1}'s direct share)."""
    n_h = hprev.shape[-2]
    gh = xp.matmul(wt, hprev)
    gh += b
    rz = gi[..., :2 * n_h, :] + gh[..., :2 * n_h, :]
    _sigmoid_halved(xp, rz)
    r, z, ghn = rz[..., :n_h, :], rz[..., n_h:, :], gh[..., 2 * n_h:, :]
    n = r * ghn
    n += gi[..., 2 * n_h:, :]
    xp.tanh(n, out=n)
    k = xp.empty(tuple(n.shape[:-2]) + (5,) + tuple(n.shape[-2:]), dtype=n.dtype)
    kr, kz, ka, kn = k[..., 0, :, :], k[..., 1, :, :], k[..., 2, :, :], k[..., 3, :, :]
    xp.multiply(n, n, out=ka)
    xp.subtract(1, ka, out=ka)
    xp.subtract(1, z, out=kz)
    ka *= kz                                                  # (1 - z)(1 - n²)
    kz *= z
    xp.subtract(hprev, n, out=kn)
    kz *= kn                                                  # (h - n) z (1 - z)
    xp.subtract(1, r, out=kr)
    kr *= r
    kr *= ghn
    kr *= ka                                                  # a gₕₙ r (1 - r)
    xp.multiply(ka, r, out=kn)
    k[..., 4, :, :] = z
    return k


def _gru_scan_grad_fwd(xp, g, hs, gi, w, b, h0):
    steps, n_dir, batch, n_g = gi.shape
    n_h, dt = n_g // 3, gi.dtype
    out = xp.empty((n_dir, 5, n_h, steps, batch), dtype=dt)
    if steps == 0:
        return out.reshape(n_dir, 5 * n_h, steps, batch)
    gi, wt, b = _gru_halved(xp, gi, w, b)
    g, hs, h0 = (xp.swapaxes(v, -1, -2) for v in (g, hs, h0))
    # h_{t-1} receives w (dr, dz, a·r): as one product over the planes (r, z, a, a·r)
    w4 = xp.zeros((n_dir, n_h, 4 * n_h), dtype=dt)
    w4[..., :2 * n_h], w4[..., 3 * n_h:] = w[..., :2 * n_h], w[..., 2 * n_h:]
    dh = g[steps - 1].copy()
    back = xp.empty((n_dir, n_h, batch), dtype=dt)
    chunk = max(1, _GRU_CHUNK // (n_dir * n_h * batch))
    for t1 in range(steps, 0, -chunk):
        t0 = max(0, t1 - chunk)
        hprev = hs[t0 - 1:t1 - 1] if t0 else xp.concatenate([h0[None], hs[:t1 - 1]], 0)
        k = _gru_gate_factors(xp, xp.ascontiguousarray(hprev), gi[t0:t1], wt, b)
        for t in range(t1 - 1, t0 - 1, -1):
            o = out[..., t, :]                                               # (D, 5, H, N)
            xp.multiply(dh[:, None], k[t - t0], out=o)
            xp.matmul(w4, o[:, :4].reshape(n_dir, 4 * n_h, batch), out=back)
            dprev = o[:, 4]
            dprev += back
            if t:
                xp.add(g[t - 1], dprev, out=dh)
    return out.reshape(n_dir, 5 * n_h, steps, batch)


def _gru_scan_parts_vjp(g, ans, gi, w, b, h0):
    """The cotangents from the reverse loop (no graph of the gradient is wanted): gi's, the
    blocks of gh's as (D, T·N, ·) and h0's."""
    parts = _gru_scan_grad(g, ans, gi, w, b, h0)                    # (D, 5H, T, N)
    n_dir, n_p, steps, batch = parts.shape
    n_h = n_p // 5
    flat = reshape(parts, (n_dir, n_p, steps * batch))
    return (transpose(parts[:, :3 * n_h], (2, 0, 3, 1)),
            [flat[:, :2 * n_h], flat[:, 3 * n_h:4 * n_h]], swapaxes(parts[:, 4 * n_h:, 0], 1, 2))


def _gru_scan_steps_vjp(g, ans, gi, w, b, h0):
    """The same cotangents step by step with gru_update's VJP (differentiable: create_graph, and
    every transform, see it)."""
    steps, n_dir, batch, n_g = gi.shape
    hprev = concatenate([expand_dims(h0, 0), ans[:steps - 1]], 0)
    gh = hprev @ w + expand_dims(b, 1)
    wt = swapaxes(w, -1, -2)
    dgis, dghs = [], []
    dh = g[steps - 1]
    for t in range(steps - 1, -1, -1):
        dgi, dgh, dprev = _gru_vjp((True, True, True), dh, ans[t], gi[t], gh[t], hprev[t])
        dgis.append(dgi)
        dghs.append(dgh)
        dh = dprev + dgh @ wt
        if t:
            dh = g[t - 1] + dh
    dgh = reshape(transpose(stack(dghs[::-1]), (1, 3, 0, 2)), (n_dir, n_g, steps * batch))
    return stack(dgis[::-1]), [dgh], dh


def _gru_scan_vjp(needs, g, ans, gi, w, b, h0):
    steps, n_dir, batch, n_g = gi.shape
    if steps == 0:
        return tuple(x * 0 if need else None for x, need in zip((gi, w, b, h0), needs))
    m = modes()
    fast = not (m.grad_enabled or m.traces)
    dgi, dgh, dh0 = (_gru_scan_parts_vjp if fast else _gru_scan_steps_vjp)(g, ans, gi, w, b, h0)
    dw = db = None
    if needs[1] or needs[2]:  # Σ over steps and batch of dgh_tᵀ [h_{t-1}, 1]: one product per
        # direction (and block of gh) gives the weight's gradient and, from the ones, the bias's
        n_h = h0.shape[-1]
        one = ones(1, 1, 1, 1, dtype=ans.dtype, device=ans.device)
        hprev = concatenate([concatenate([expand_dims(h0, 0), ans[:steps - 1]], 0),
                             broadcast_to(one, (steps, n_dir, batch, 1))], -1)
        hp = reshape(moveaxis(hprev, 1, 0), (n_dir, steps * batch, n_h + 1))
        dwb = [blk @ hp for blk in dgh]                               # (D, ·, H + 1)
        dwb = swapaxes(dwb[0] if len(dwb) == 1 else concatenate(dwb, 1), 1, 2)
        dw, db = dwb[:, :n_h], dwb[:, n_h]
    return (dgi if needs[0] else None, dw if needs[1] else None, db if needs[2] else None,
            dh0 if needs[3] else None)


def _gru_scan_jvp(ts, ans, gi, w, b, h0):
    tgi, tw, tb, th = ts
    steps = gi.shape[0]
    hprev = concatenate([expand_dims(h0, 0), ans[:steps - 1]], 0)
    gh = hprev @ w + expand_dims(b, 1)
    outs = []
    for t in range(steps):
        tgh = None
        for part in (None if th is None else th @ w, None if tw is None else hprev[t] @ tw,
                     None if tb is None else expand_dims(tb, 1)):
            if part is not None:
                tgh = part if tgh is None else tgh + part
        th = _gru_jvp((None if tgi is None else tgi[t], tgh, th), ans[t], gi[t], gh[t],
                      hprev[t])
        outs.append(th)
    return stack(outs) if outs else ans * 0


def _dir_merged(v, bd, size, lead: int):
    """``v`` batched along a new axis right before its direction axis (axis ``lead``), merged
    with it: the batch becomes more directions, each with its own weights and states."""
    v = batched(v, bd, size)                                         # batch first
    if lead:
        v = moveaxis(v, 0, lead)
    shape = tuple(v.shape)
    return reshape(v, shape[:lead] + (shape[lead] * shape[lead + 1],) + shape[lead + 2:])


def _gru_scan_batch(vals, bdims):
    size = size_of(vals, bdims)
    gi, w, b, h0 = (_dir_merged(v, bd, size, lead) for v, bd, lead in
                    zip(vals, bdims, (1, 0, 0, 0)))
    out = _gru_scan(gi, w, b, h0)
    shape = tuple(out.shape)
    return reshape(out, (shape[0], size, shape[1] // size) + shape[2:]), 1


def _gru_scan_grad_batch(vals, bdims):
    size = size_of(vals, bdims)
    args = [_dir_merged(v, bd, size, lead) for v, bd, lead in
            zip(vals, bdims, (1, 1, 1, 0, 0, 0))]
    out = _gru_scan_grad(*args)                                       # directions first
    shape = tuple(out.shape)
    return reshape(out, (size, shape[0] // size) + shape[1:]), 0


_gru_scan = primitive(
    "gru_scan", _gru_scan_fwd, vjp_all=_gru_scan_vjp, kind="nn", jvp=_gru_scan_jvp,
    batch=_gru_scan_batch, saves="both", operands="all",
    doc="A GRU's states over T steps, each direction d with its own weights: h_t = "
        "gru_update(gi_t, h_{t-1} w + b, h_{t-1}), gi (T, D, N, 3H), w (D, H, 3H), b (D, 3H).")
_gru_scan_grad = primitive(
    "gru_scan_grad", _gru_scan_grad_fwd, kind="nn", batch=_gru_scan_grad_batch, operands="all",
    doc="gru_scan's reverse loop: per step the cotangents of gi_t (3H: r, z and n's "
        "pre-activation a), of the h-side n (a·r) and of h_{t-1}, laid out (D, 5H, T, N).")


def gru_scan(gi, w, b, h0):
    """A GRU layer's time loop: the states h_t (T, D, N, H) from the input projections
    gi (T, D, N, 3H) (x Wᵢₕᵀ + bᵢₕ), the recurrent weights w (D, H, 3H) (Wₕₕᵀ), their bias
    b (D, 3H) and the initial states h0 (D, N, H); D directions (or layers) run side by side."""
    shapes = [tuple(getattr(t, "shape", ())) for t in (gi, w, b, h0)]
    ok = len(shapes[0]) == 4 and len(shapes[3]) == 3 and shapes[0][-1] == 3 * shapes[3][-1]
    if ok:
        steps, n_dir, batch, n_g = shapes[0]
        ok = (shapes[1] == (n_dir, n_g // 3, n_g) and shapes[2] == (n_dir, n_g)
              and shapes[3] == (n_dir, batch, n_g // 3))
    if not ok:
        raise ShapeError(f"gru_scan: expected gi (T, D, N, 3H), w (D, H, 3H), b (D, 3H) and h0 "
                         f"(D, N, H), got {', '.join(str(s) for s in shapes)}")
    return _gru_scan(gi, w, b, h0)
