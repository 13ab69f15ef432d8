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
from ..primitive import REGISTRY, primitive
from .elementwise import _sigmoid as _sigmoid_np
from .elementwise import _relu_grad, _relu_grad_fwd, relu
from .elementwise import (_sigmoid_grad, _tanh_grad, astype, exp, log, log1p, maximum,
                          sigmoid, sqrt, tanh)
from .reduce import _spread, _sum
from .shape import (broadcast_to, concatenate, expand_dims, flip, keepdims_shape, moveaxis,
                    norm_axes, norm_axis, reshape, stack, swapaxes, transpose)


def _shifted(xp, x, axis):
    # max has no identity: an empty tensor takes the sum (zeros of the same shape) as its shift
    m = xp.max(x, axis=axis, keepdims=True) if x.size else xp.sum(x, axis=axis, keepdims=True)
    return x - B.where(xp.isfinite(m), m, 0), m


def _softmax_shifted(xp, x, axis):
    """x less its maxima along ``axis`` for softmax and log_softmax: a row whose maximum is
    -inf (all -inf, or empty) is not shifted; one with +inf is, so the whole row is NaN
    (inf - inf), as PyTorch's softmax (logsumexp keeps :func:`_shifted`'s +inf)."""
    m = xp.max(x, axis=axis, keepdims=True) if x.size else xp.sum(x, axis=axis, keepdims=True)
    with B.np.errstate(invalid="ignore"):  # inf - inf: the NaN meant, without a warning
        return x - B.where(m == -xp.inf, 0, m)


def _log_pos(xp, s):
    # log of a sum of exponentials: -inf, without a divide-by-zero warning, where the sum is 0
    # (an empty axis, or every input -inf); elsewhere the sum is >= 1 after the shift, or NaN
    # (a NaN input), which stays NaN
    zero = s == 0
    return B.where(zero, -xp.inf, xp.log(B.where(zero, 1, s)))


def _lse_fwd(xp, x, axis, keepdims):
    z, m = _shifted(xp, x, axis)
    out = _log_pos(xp, xp.sum(xp.exp(z), axis=axis, keepdims=True)) + B.where(xp.isfinite(m), m, 0)
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
    if _narrow(x, axis):  # as log_softmax
        parts = _narrow_parts(x)
        if parts is not None:
            _, e, s = parts
            e /= s
            return B.np.ascontiguousarray(e.T)
    else:  # the same bits in loops around NumPy's exp where numba is loaded (slower than
        e = B.softmax_last(x, axis)  # the form above on narrow rows)
        if e is not None:
            return e
    e = xp.exp(_softmax_shifted(xp, x, axis))
    return e / xp.sum(e, axis=axis, keepdims=True)


def _log_softmax_fwd(xp, x, axis):
    if _narrow(x, axis):  # (100, 10): ~3x faster, the row sums in class order
        parts = _narrow_parts(x)
        if parts is not None:
            z, _, s = parts
            z -= B.np.log(s)
            return B.np.ascontiguousarray(z.T)
    else:  # as softmax's
        z = B.log_softmax_last(x, axis, _log_pos)
        if z is not None:
            return z
    z = _softmax_shifted(xp, x, axis)
    return z - _log_pos(xp, xp.sum(xp.exp(z), axis=axis, keepdims=True))


def _softmax_raw(needs, g, ans, x, axis):
    """The rule below on host arrays over the last axis (:func:`._backend.softmax_last_grad`:
    its sum, then one loop, so its bits); None otherwise (the rule runs)."""
    dx = B.softmax_last_grad(g, ans, axis)
    return None if dx is None else (dx,)


def _log_softmax_raw(needs, g, ans, x, axis):
    """As :func:`_softmax_raw`, for log_softmax's rule (:func:`._backend.
    log_softmax_last_grad`)."""
    dx = B.log_softmax_last_grad(g, ans, axis)
    return None if dx is None else (dx,)


_softmax = primitive(
    "softmax", _softmax_fwd,
    lambda g, ans, x, axis: ans * (g - _sum(g * ans, axis=(axis,), keepdims=True)),
    saves="out", kind="reduce", doc="exp(x) / sum(exp(x)) along an axis.",
    jvp="vjp", vjp_raw=_softmax_raw)  # the softmax Jacobian diag(s) - s sᵀ is symmetric
_log_softmax = primitive(
    "log_softmax", _log_softmax_fwd,
    lambda g, ans, x, axis: g - exp(ans) * _sum(g, axis=(axis,), keepdims=True),
    saves="out", kind="reduce", doc="x - logsumexp(x) along an axis.",
    jvp=lambda ts, ans, x, axis: ts[0] - _sum(ts[0] * exp(ans), axis=(axis,), keepdims=True),
    vjp_raw=_log_softmax_raw)


def _scalar_axis(axis, dim, op: str) -> None:
    a = dim if dim is not None else axis
    if a not in (None, 0, -1):
        raise ShapeError(f"{op}: dim {a} is out of range for a 0-d tensor; expected 0 or -1")


def _softmax_args(x, axis, dim, dtype, op: str):
    """The one axis of a softmax (NumPy's ``axis=`` or PyTorch's ``dim=``; the last by
    default) and ``x`` cast to ``dtype`` first (PyTorch's ``dtype=``)."""
    if axis is not None and dim is not None:
        raise TypeError(f"{op}: pass either axis= (NumPy) or dim= (PyTorch), not both")
    ax = -1 if axis is None and dim is None else axis if dim is None else dim
    if dtype is not None:
        x = astype(x, dtype)
    return x, norm_axis(ax, x.ndim, op)


def softmax(x, axis: int | None = None, *, dim: int | None = None, dtype=None):
    """Probabilities along ``axis`` (or ``dim``; the last by default): exp(x - max)
    normalised, in ``dtype`` when given."""
    if x.ndim == 0:  # PyTorch: a 0-d tensor is one entry along dim 0 (or -1)
        _scalar_axis(axis, dim, "softmax")
        return reshape(softmax(reshape(x, (1,)), axis, dim=dim, dtype=dtype), ())
    x, ax = _softmax_args(x, axis, dim, dtype, "softmax")
    return _softmax(x, axis=ax)


def log_softmax(x, axis: int | None = None, *, dim: int | None = None, dtype=None):
    """Log-probabilities along ``axis`` (or ``dim``; the last by default): x - logsumexp(x),
    without overflow, in ``dtype`` when given."""
    if x.ndim == 0:  # PyTorch: a 0-d tensor is one entry along dim 0 (or -1)
        _scalar_axis(axis, dim, "log_softmax")
        return reshape(log_softmax(reshape(x, (1,)), axis, dim=dim, dtype=dtype), ())
    x, ax = _softmax_args(x, axis, dim, dtype, "log_softmax")
    return _log_softmax(x, axis=ax)


# --- binary cross-entropy -------------------------------------------------------------------
_BCE_EPS = 9.99999996e-13  # PyTorch's EPSILON (1e-12 as a float32) under p(1 - p)


def _clamped_log(xp, x, at):
    # max(log x, -100) without a divide-by-zero warning where x == 0 (NaN still propagates)
    return B.where(at, -100.0, xp.maximum(xp.log(B.where(at, 1, x)), -100.0))


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
_F16, _F32 = B.np.dtype("float16"), B.np.dtype("float32")


def _linear_fwd(xp, x, w, b):
    if x.dtype is _F16 and type(x) is B.ndarray:  # on the CPU: computed in float32 and rounded
        # once, as PyTorch's addmm (the product rounded, then the bias added, would round twice)
        return _linear_fwd(xp, x.astype(_F32), w.astype(_F32),
                           None if b is None else b.astype(_F32)).astype(_F16)
    out = B.linear_product(x, w)  # transposed for a wide layer: F-ordered
    if b is not None:  # in place into the product, as addmm: no second batch-sized array
        out = B.add_bias(out, b)
    return out


def _linear_dx(g, ans, x, w, b):
    if g.ndim == 2 and B.f_ordered(getattr(x, "_data", None)):  # B.linear_input_grad's layout
        return (w.mT @ g.mT).mT
    return g @ w


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


def _linear_raw(needs, g, ans, x, w, b):
    """The three rules above on host arrays (``vjp_raw``): the same products and sum."""
    dw = None
    if needs[1]:
        dw = (B.matmul(g.T, x) if g.ndim == 2 else
              B.matmul(g.reshape(-1, g.shape[-1]).T, x.reshape(-1, x.shape[-1])))
    db = (B.sum_outer(g, tuple(range(g.ndim - 1)), False) if g.ndim > 1 else g) if needs[2] \
        else None
    return B.linear_input_grad(g, w, x) if needs[0] else None, dw, db


_linear = primitive("linear", _linear_fwd,
                    (_linear_dx, _linear_dw, _linear_db), kind="linalg",
                    jvp=_linear_jvp, batch=_linear_batch, operands="all", vjp_raw=_linear_raw,
                    doc="x Wᵀ + b in one product with the bias added in place.")


def linear(x, weight, bias=None):
    """x Wᵀ + b (weight of shape (out, in)) as one primitive: one product, no extra buffer."""
    return _linear(x, weight, bias)


def _linear_relu_fwd(xp, x, w, b):
    if x.dtype is _F16 and type(x) is B.ndarray:  # rounded once, as _linear_fwd's float16
        return _linear_relu_fwd(xp, x.astype(_F32), w.astype(_F32),
                                None if b is None else b.astype(_F32)).astype(_F16)
    out = B.linear_product(x, w)
    if b is None:
        return B.relu(out, out) if type(out) is B.ndarray else xp.maximum(out, 0, out=out)
    return B.add_bias_relu(out, b)  # the bias and the ReLU in one pass over the product


def _linear_relu_vjp(needs, g, ans, x, w, b):
    gz = _relu_grad(g, ans)  # relu's VJP, then linear's rules on it
    return (_linear_dx(gz, ans, x, w, b) if needs[0] else None,
            _linear_dw(gz, ans, x, w, b) if needs[1] else None,
            _linear_db(gz, ans, x, w, b) if b is not None and needs[2] else None)


def _linear_relu_raw(needs, g, ans, x, w, b):
    """relu's and linear's ``vjp_raw`` in turn: the same arrays as the two ops' backward."""
    return _linear_raw(needs, _relu_grad_fwd(B.np, g, ans), ans, x, w, b)


def _linear_relu_batch(vals, bdims):
    out, d = _linear_batch(vals, bdims)
    return relu(out), d


_linear_relu = primitive(
    "linear_relu", _linear_relu_fwd, vjp_all=_linear_relu_vjp, saves="both", kind="linalg",
    jvp=lambda ts, ans, x, w, b: (None if (t := _linear_jvp(ts, ans, x, w, b)) is None
                                  else _relu_grad(t, ans)),
    batch=_linear_relu_batch, operands="all", vjp_raw=_linear_relu_raw,
    doc="max(x Wᵀ + b, 0): a linear layer and the ReLU after it, the bias and the maximum "
        "in one pass over the product; the values and gradients of the two ops.")


def linear_relu(x, weight, bias=None):
    """``relu(linear(x, weight, bias))`` as one primitive (what ``nn.Sequential`` runs for a
    ``Linear`` followed by a ``ReLU``): one pass over the product for the bias and the ReLU,
    one node to record, and the same bits as the two ops."""
    return _linear_relu(x, weight, bias)


# --- layer normalisation ---------------------------------------------------------------------
# One primitive for what was ~13 binds (two means, a variance, the quotient, the affine step)
# forward and ~20 backward. Its forward and rules are written once (_ln_*), run on host arrays
# by the forward and the first-order VJP (vjp_raw) and on tensors by the rules, which higher
# derivatives and vmap differentiate: the same NumPy operations in the same order either way
# (the tensor ops' forwards), so the same bits. Its sums are NumPy's own reductions
# (layer_norm_sum: a row's pairwise sum, the leading axes row by row), whose order a loop can
# follow: where numba is loaded, the forward and the VJP run as one pass over the rows each
# (_backend.layer_norm, layer_norm_grads), the same bits. A first-order backward, eager or
# compiled, runs the VJP as one more primitive, layer_norm_grad.
def _ln_sum_fwd(xp, x, axis, keepdims):
    if xp is B.np:  # a C-ordered row as 0 plus its pairwise sum, leading axes row by row
        return xp.add.reduce(x, axis=axis, keepdims=keepdims)
    return xp.sum(x, axis=axis, keepdims=keepdims)


_ln_sum = primitive(
    "layer_norm_sum", _ln_sum_fwd, lambda g, ans, x, axis, keepdims: _spread(g, x, axis, keepdims),
    saves="none", kind="reduce", jvp="linear",
    doc="Sum over axes as NumPy's np.add.reduce adds them: layer norm's sums, in the order its "
        "loops follow.")


def _count(shape, axes) -> int:
    return math.prod(shape[a] for a in axes)


class _Arrays:
    """The few operations of the _ln_* formulas on one backend's arrays (``xp``): the
    primitives' forwards."""

    def __init__(self, xp):
        self.xp = xp

    def mean(self, a, axes):
        return _ln_sum_fwd(self.xp, a, axes, True) / _count(a.shape, axes)

    def sum(self, a, axes):
        return _ln_sum_fwd(self.xp, a, axes, False)

    def sqrt(self, a):
        return self.xp.sqrt(a)


_HOST = _Arrays(B.np)


class _Tensors:
    """The same operations on tensors, recorded."""

    @staticmethod
    def mean(a, axes):
        return _ln_sum(a, axis=axes, keepdims=True) / _count(a.shape, axes)

    @staticmethod
    def sum(a, axes):
        return _ln_sum(a, axis=axes, keepdims=False)

    sqrt = staticmethod(sqrt)


def _ln_norm(m, x, k: int, eps: float):
    """(x̂, 1/σ): x centred and scaled over its last ``k`` axes, and the scale (kept dims)."""
    axes = tuple(range(x.ndim - k, x.ndim))
    xc = x - m.mean(x, axes)
    rstd = 1 / m.sqrt(m.mean(xc * xc, axes) + eps)
    return xc * rstd, rstd


def _ln_fwd(xp, x, w, b, k, eps):
    if xp is B.np:  # the same operations and sums in one pass, where numba is loaded
        y = B.layer_norm(x, w, b, k, eps)
        if y is not None:
            return y
    y, _ = _ln_norm(_HOST if xp is B.np else _Arrays(xp), x, k, eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def _ln_grads(m, needs, g, x, w, k, eps, first: int = 0):
    """(dx, dw, db) of ``x̂ w + b`` for cotangent ``g`` (None where not needed); ``first``
    leading axes are a batch's (not summed)."""
    xhat, rstd = _ln_norm(m, x, k, eps)
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(first, x.ndim - k))
    dx = dw = db = None
    if needs[0]:
        gx = g if w is None else g * w
        dx = (gx - m.mean(gx, axes) - xhat * m.mean(gx * xhat, axes)) * rstd
    if needs[1] and w is not None:
        dw = m.sum(g * xhat, lead)
    if needs[2]:
        db = m.sum(g, lead)
    return dx, dw, db


def _ln_host_grads(needs, g, x, w, k, eps, out=None):
    """:func:`_ln_grads` on host arrays: in the loops where they take them, else NumPy's."""
    with B.np.errstate(divide="ignore", invalid="ignore"):  # as the rules' ops: no warnings
        res = B.layer_norm_grads(needs, g, x, w, k, eps, out)
        return res if res is not None else _ln_grads(_HOST, needs, g, x, w, k, eps)


def _ln_vjp(needs, g, ans, x, w, b, k, eps):
    m = modes()
    if (not m.grad_enabled and not m.traces and g._data.flags.c_contiguous
            and x._data.flags.c_contiguous):  # a first-order backward, eager or traced, of
        # C-ordered arrays (whose results the rules lay out C-ordered too, as the packed ones)
        want = (bool(needs[0]), bool(needs[1]) and w is not None, bool(needs[2]))
        packed = _layer_norm_grad(g, x, w, k=k, eps=eps, want=want)
        tail = x.shape[x.ndim - k:]
        out, at = [], 0
        for on, shape in zip(want, (x.shape, tail, tail)):
            size = math.prod(shape) if on else 0
            out.append(packed[at:at + size].reshape(shape) if on else None)
            at += size
        return tuple(out)
    return _ln_grads(_Tensors, needs, g, x, w, k, eps)


def _ln_raw(needs, g, ans, x, w, b, k, eps):
    if type(x) is not B.ndarray:
        return None
    return _ln_host_grads(needs, g, x, w, k, eps)


def _ln_grad_fwd(xp, g, x, w, k, eps, want):
    """The wanted (dx, dw, db) flattened one after the other in one array: written there by
    the loops where they take the arrays, else the rules' NumPy (or CuPy) form, joined."""
    if xp is B.np:
        tail = math.prod(x.shape[x.ndim - k:])
        out = xp.empty(sum(s for s, on in zip((x.size, tail, tail), want) if on), x.dtype)
        with xp.errstate(divide="ignore", invalid="ignore"):  # as _ln_host_grads
            if B.layer_norm_grads(want, g, x, w, k, eps, out) is not None:
                return out
            res = _ln_grads(_HOST, want, g, x, w, k, eps)
    else:
        res = _ln_grads(_Arrays(xp), want, g, x, w, k, eps)
    return xp.concatenate([r.reshape(-1) for r in res if r is not None])


def _ln_grad_batch(vals, bdims, k, eps, want):
    """A batch of examples: the rules with the batch axis first and kept out of the sums, each
    example's results joined as its own row."""
    n = size_of(vals, bdims)
    g, x = (batched(v, b, n) for v, b in zip(vals[:2], bdims[:2], strict=True))
    w = vals[2] if bdims[2] is None else rank_up(batched(vals[2], bdims[2], n), None,
                                                  x.ndim - 1)
    res = _ln_grads(_Tensors, want, g, x, w, k, eps, first=1)
    return concatenate([r.reshape((n, -1)) for r in res if r is not None], axis=1), 0


_layer_norm_grad = primitive(
    "layer_norm_grad", _ln_grad_fwd, kind="nn", operands="all", batch=_ln_grad_batch,
    doc="layer norm's VJP (the wanted dx, dw, db flattened one after the other) in one bind: "
        "eager and compiled first-order backward passes run it; its own derivatives are the "
        "rules'.")


def _ln_jvp(ts, ans, x, w, b, k, eps):
    tx, tw, tb = ts
    xhat, rstd = _ln_norm(_Tensors, x, k, eps)
    axes = tuple(range(x.ndim - k, x.ndim))
    out = None
    if tx is not None:
        out = (tx - _Tensors.mean(tx, axes) - xhat * _Tensors.mean(tx * xhat, axes)) * rstd
        if w is not None:
            out = out * w
    if tw is not None:
        out = xhat * tw if out is None else out + xhat * tw
    if tb is not None:
        out = broadcast_to(tb, x.shape) if out is None else out + tb
    return out


def _ln_batch(vals, bdims, k, eps):
    (x, w, b), (bx, bw, bb) = vals, bdims
    if bw is None and bb is None:  # a batch of inputs through one layer: the same op
        return _layer_norm(front(x, bx), w, b, k=k, eps=eps), 0
    n = size_of(vals, bdims)
    x = batched(x, bx, n)
    xhat, _ = _ln_norm(_Tensors, x, k, eps)
    rank = x.ndim - 1
    if w is not None:
        xhat = xhat * rank_up(batched(w, bw, n), None, rank)
    if b is not None:
        xhat = xhat + rank_up(batched(b, bb, n), None, rank)
    return xhat, 0


_layer_norm = primitive(
    "layer_norm", _ln_fwd, vjp_all=_ln_vjp, jvp=_ln_jvp, batch=_ln_batch, kind="nn",
    operands="all", vjp_raw=_ln_raw,
    doc="(x - mean) / sqrt(var + eps) over the last k axes, times w plus b, in one node.")


def layer_norm(x, weight=None, bias=None, *, k: int, eps: float):
    """Layer normalisation over the last ``k`` axes of ``x``; ``weight`` and ``bias`` (None or
    of those axes' shape) scale and shift the result: one primitive, for the ~13 ops of its
    formula."""
    return _layer_norm(x, weight, bias, k=int(k), eps=float(eps))


# --- softmax cross-entropy against class indices ----------------------------------------------
def _ce_keep(xp, t, ignore_index, reduction, dtype):
    """Each target's weight: 1 (0 where ignored), over the kept count for a mean (all zeros
    when every target is ignored: the mean is NaN, its gradient zero, as PyTorch's)."""
    keep = xp.ones(t.shape, dtype) if ignore_index is None else (t != ignore_index).astype(dtype)
    if reduction == "mean":
        count = keep.sum()
        if count:
            keep = keep / count
    return keep


def _plain(x, t, axis, ignore_index, reduction) -> bool:
    """The common case: (batch, classes) NumPy logits, a reduced loss, integer targets, none
    ignored. Then fewer array passes give bit-identical values; :func:`_ce_parts` checks that
    every target is a class and every row finite (else the general path)."""
    return (type(x) is B.ndarray and x.ndim == 2 and axis == 1 and reduction != "none"
            and x.shape[0] > 0 and x.shape[1] > 0 and t.shape == x.shape[:1]
            and (ignore_index is None or ignore_index < 0) and t.dtype.kind in "iu")


def _in_range(t, classes: int) -> bool:
    """Whether every integer target is a class index: one reduction checks both ends (a
    negative target is huge read as unsigned)."""
    u = t if t.dtype.kind == "u" else t.view(_UNSIGNED[t.dtype.itemsize])
    return int(B.np.maximum.reduce(u)) < classes


_UNSIGNED = {k: B.np.dtype(f"u{k}") for k in (1, 2, 4, 8)}


NARROW_ROWS = 32
"""Classes up to which softmax, log_softmax and softmax cross-entropy work on the transposed
logits (classes outer):
NumPy reduces, broadcasts and divides a short contiguous row one inner loop per row, and the
transposed arrays turn those into loops along the batch (100 x 10: 2.2 µs for the row maxima
against 5.6, 1.0 for the row sums against 4.2)."""


def _narrow_parts(x):
    """``z = x - max``, ``e = exp(z)`` and e's row sums for (rows, classes) logits, z and e
    transposed (classes outer, C-ordered) and summed in class order; None when a row's maximum
    is not finite (NaN, ±inf: the general path's care)."""
    np_ = B.np
    z = x.T.copy()
    m = np_.maximum.reduce(z, axis=0)
    if not math.isfinite(np_.add.reduce(m)):
        return None
    z -= m
    e = np_.exp(z)
    return z, e, np_.add.reduce(e, axis=0)


def _narrow(x, axis) -> bool:
    """Whether softmax over ``axis`` takes :func:`_narrow_parts`: NumPy float logits (rows,
    classes) with at most :data:`NARROW_ROWS` classes and 16 rows or more."""
    return (type(x) is B.ndarray and x.ndim == 2 and axis == 1 and x.shape[1] <= NARROW_ROWS
            and x.shape[0] >= 16 and x.dtype.kind == "f")


def _ce_parts(xp, x, t):
    """``z = x - max``, ``e = exp(z)``, e's row sums and the targets' entries of z (None: pick
    them by :func:`_targets_flat`) of plain logits, which the loss and its gradient share, and
    whether z and e are transposed; None when a target is not a class or a row is not finite
    (the general path's care). Narrow rows are worked on transposed, (classes, rows) C-ordered,
    and summed in order (NumPy's pairwise sum otherwise); by numba's loops where loaded."""
    n, c = x.shape
    if c <= NARROW_ROWS and n >= 16:
        k = B.ce_narrow(x, t)
        if k is not None:
            return None if k is False else (k[0], k[1], k[2], True, k[3])
        parts = _narrow_parts(x) if _in_range(t, c) else None
        return None if parts is None else parts + (True, None)
    if not _in_range(t, c):
        return None
    m = x.max(axis=1, keepdims=True)
    if not math.isfinite(m.sum()):
        return None
    z = x - m
    e = xp.exp(z)
    return z, e, e.sum(axis=1), False, None


def _targets_flat(parts, t):
    """Where each row's target lies in the parts' z (and e) flat in memory order, so picking
    them is one ``take`` (0.9 µs for 100 rows against 1.9 for ``z[arange, t]``); None when z
    is not C-ordered (strided logits: z keeps their layout)."""
    z, transposed = parts[0], parts[3]
    j = B.int64_indices(t)  # a uint8 target times the rows overflows; uint64 + int64 is a float
    if transposed:  # (class j, row i) at j * rows + i
        return j * z.shape[1] + B.row_starts(z.shape[1], 1)
    return B.row_starts(*z.shape) + j if z.flags.c_contiguous else None


def _ce_fwd_plain(xp, x, t, reduction, parts=None, at=None):
    parts = _ce_parts(xp, x, t) if parts is None else parts
    if parts is None:
        return None
    z, _, s, _, picked = parts
    if picked is None:
        at = _targets_flat(parts, t) if at is None else at
        picked = z[xp.arange(x.shape[0]), t] if at is None else z.reshape(-1).take(at)
    total = xp.add.reduce(xp.log(s) - picked)
    return xp.asarray(total / x.dtype.type(x.shape[0]) if reduction == "mean" else total)


def _ce_grad_plain(xp, x, g, t, reduction, parts=None, at=None):
    parts = _ce_parts(xp, x, t) if parts is None else parts
    if parts is None:
        return None
    _, p, s, transposed, picked = parts
    one = x.dtype.type(1)
    scale = (one / x.dtype.type(x.shape[0]) if reduction == "mean" else one) * g
    if picked is not None:  # numba's loops made the parts: one more does the rest
        out = B.ce_narrow_grad(p, s, t, scale)
        if out is not None:
            return out
    p /= s if transposed else s[:, None]
    at = _targets_flat(parts, t) if at is None else at
    if at is None:
        p[xp.arange(x.shape[0]), t] -= 1
    else:
        p.reshape(-1)[at] -= 1
    p *= scale
    return p.T if transposed else p


def ce_shared_forms(xp, params: dict):
    """Replay forms of a ``cross_entropy`` and the ``cross_entropy_grad`` a compiled program
    runs later on the same logits and targets: the forward keeps its exp and row sums and the
    gradient divides those instead of recomputing them (the same bits as the two forwards).
    A gradient given other logits than the last forward's recomputes. Narrow logits with
    numba's loops loaded take :func:`_ce_parts`' narrow path written out here (the same calls,
    fewer Python frames a step)."""
    fwd, grad = _ce.fwd, _ce_grad.fwd
    kept: list = [None]  # (logits, targets, parts, indices) of the last forward, for the gradient
    axis, ignore, reduction = params["axis"], params["ignore_index"], params["reduction"]
    mean = reduction == "mean"
    lean = xp is B.np and axis == 1 and reduction != "none" and (ignore is None or ignore < 0)
    nd, kinds, np_ = B.ndarray, _LEAN_DTYPES, B.np
    exp, log, add_reduce, asarray, empty = np_.exp, np_.log, np_.add.reduce, np_.asarray, np_.empty

    def loss(x, t):
        kept[0] = None
        k = B.cpu_kernels() if lean else None
        if (k is not None and type(x) is nd and type(t) is nd and x.ndim == 2
                and x.dtype in kinds and t.dtype.kind in "iu" and t.shape == x.shape[:1]
                and 16 <= x.shape[0] and 0 < x.shape[1] <= NARROW_ROWS):
            n, c = x.shape  # B.ce_narrow and _ce_fwd_plain, inlined
            z, picked = empty((c, n), x.dtype), empty(n, x.dtype)
            ti = B.int64_indices(t)
            if not k.ce_shift(x, ti, z, picked):
                e = exp(z)
                s = add_reduce(e, axis=0)
                kept[0] = (x, t, (z, e, s, True, picked), ti)
                total = add_reduce(log(s) - picked)
                return asarray(total / x.dtype.type(n) if mean else total)
        if _plain(x, t, axis, ignore, reduction):
            parts = _ce_parts(xp, x, t)
            if parts is not None:
                at = _targets_flat(parts, t) if parts[4] is None else None
                kept[0] = (x, t, parts, at)
                return _ce_fwd_plain(xp, x, t, reduction, parts, at)
        return fwd(xp, x, t, **params)

    def gradient(x, g, t):
        kp, kept[0] = kept[0], None
        if kp is None or kp[0] is not x or kp[1] is not t or getattr(g, "ndim", 0) != 0:
            return grad(xp, x, g, t, **params)
        parts = kp[2]
        if parts[4] is not None and type(kp[3]) is nd:  # the inlined narrow forward's
            e = parts[1]
            one = x.dtype.type(1)
            scale = (one / x.dtype.type(x.shape[0]) if mean else one) * g
            if getattr(scale, "dtype", None) == e.dtype and not getattr(scale, "ndim", 1):
                B.cpu_kernels().ce_grad(e, parts[2], kp[3], e.dtype.type(scale), one)
                return e.T  # B.ce_narrow_grad's
            return _ce_grad_plain(xp, x, g, t, reduction, parts, None)
        return _ce_grad_plain(xp, x, g, t, reduction, parts, kp[3])

    return loss, gradient


_LEAN_DTYPES = (B.np.dtype("float32"), B.np.dtype("float64"))


def check_class_targets(t, classes: int, ignore_index, op: str) -> None:
    """IndexError naming ``op`` unless every entry of integer array ``t`` is a class index
    (0..classes-1) or ``ignore_index``."""
    if B.count_bad_targets(t, classes, ignore_index) == 0:  # CUDA: one reduction
        return
    bad = (t < 0) | (t >= classes)
    if ignore_index is not None:
        bad &= t != ignore_index
    if bool(bad.any()):
        raise IndexError(f"{op}: target {int(t[bad].reshape(-1)[0])} is out of range for "
                         f"{classes} classes (expected 0..{classes - 1}"
                         + (f" or ignore_index={ignore_index})" if ignore_index is not None
                            else ")"))


def _check_targets(t, classes: int, ignore_index) -> None:
    """The targets' check in the loss's forward: a compiled program replays without the
    loss's own check, and NumPy would read -1 as the last class. On the host only (on a GPU
    the check would wait for the device every step)."""
    if type(t) is B.ndarray and t.dtype.kind in "iu" and t.size:
        check_class_targets(t, classes, ignore_index, "cross_entropy")


def _on_device_rows(x, t, axis, ignore_index, reduction) -> bool:
    """The common case on a GPU: (batch, classes) float32/float64 CuPy logits, integer targets,
    a reduced loss, a negative (or no) ignore_index: a few kernels (B.ce_rows_cuda)."""
    return (type(x) is not B.ndarray and x.ndim == 2 and axis == 1
            and reduction in ("mean", "sum") and x.shape[0] > 0 and x.shape[1] > 0
            and x.dtype in _LEAN_DTYPES and t.shape == x.shape[:1] and t.dtype.kind in "iu"
            and (ignore_index is None or ignore_index < 0))


def _ce_fwd(xp, x, t, axis, ignore_index, reduction):
    if _plain(x, t, axis, ignore_index, reduction):
        out = _ce_fwd_plain(xp, x, t, reduction)
        if out is not None:
            return out
    elif _on_device_rows(x, t, axis, ignore_index, reduction):
        return B.ce_rows_cuda(x, t, ignore_index, reduction == "mean")
    _check_targets(t, x.shape[axis], ignore_index)
    logp = _log_softmax_fwd(xp, x, axis)
    safe = t if ignore_index is None else xp.where(t != ignore_index, t, 0)
    if logp.ndim == 2 and axis == 1:  # (batch, classes): one gather, no index arrays built
        picked = logp[xp.arange(logp.shape[0]), safe]
    else:
        picked = xp.take_along_axis(logp, xp.expand_dims(safe, axis), axis).squeeze(axis)
    if ignore_index is not None:  # an ignored row's -inf (a masked one) counts 0, not NaN
        picked = xp.where(t != ignore_index, picked, 0)
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
    elif (type(g) is type(x) and g.ndim == 0
          and _on_device_rows(x, t, axis, ignore_index, reduction)):
        return B.ce_rows_grad_cuda(x, g, t, ignore_index, reduction == "mean")
    _check_targets(t, x.shape[axis], ignore_index)
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


def _merged_logits(xb, n):
    """Batched logits (B, N, C, ...) as (B·N, C, ...); one example's unbatched logits (C,)
    batched as (B, C) are already the rows."""
    return xb if xb.ndim == 2 else _merged(xb, 0, n)


def _ce_batch(vals, bdims, axis, ignore_index, reduction):
    (x, t), (bx, bt) = vals, bdims
    n = size_of(vals, bdims)
    xb, tb = batched(x, bx, n), batched(t, bt, n)
    ax = axis if xb.ndim > 2 else 1
    loss = _ce(_merged_logits(xb, n), _merged(tb, 0, n), axis=ax, ignore_index=ignore_index,
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
    dx = _ce_grad(_merged_logits(xb, n), _merged(gb, 0, n), _merged(tb, 0, n), axis=ax,
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
    vjp_raw=lambda needs, g, ans, x, t, **p: (_ce_grad_fwd(B.np, x, g, t, **p), None),
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
# Three primitives run a GRU layer's T steps, D directions at once (each with its own weights;
# a reversed one walks the steps from last to first): ``gru_scan_loop`` is the forward loop and
# keeps every step's state and gates; ``gru_scan`` is the differentiable op, whose output is the
# loop's states and whose VJP reads the kept gates, so the reverse loop (``gru_scan_grad``)
# recomputes nothing. Inside, a step's arrays are (rows, N), features first, the directions
# stacked in the rows and the gates major (r of every direction, then z, then n): each
# elementwise call covers one contiguous block, and the recurrent product of all directions is
# one 2-D GEMM with a block-diagonal weight.
def _reversed(reverse: tuple, d: int) -> bool:
    return bool(reverse) and bool(reverse[d])


def _gru_loop_fwd(xp, gi, w, b, h0, reverse=()):
    # the loop array, one slot of rows per step s (and one after the last): h_{s-1} (DH rows),
    # a row of ones (the bias column of the recurrent product), r and 1 - z (2DH), the h-side
    # n pre-activation gₙ = Wₕₙh + bₕₙ (DH) and n (DH); states in processing order
    n_dir, n_g, steps, batch = gi.shape
    n_h = n_g // 3
    dh, dt = n_dir * n_h, gi.dtype
    loop = xp.empty((steps + 1, 5 * dh + 1, batch), dtype=dt)
    loop[:, dh] = 1
    loop[-1, dh + 1:] = 0  # the slot after the last step holds only the final state
    loop[0, :dh].reshape(n_dir, n_h, batch)[...] = xp.swapaxes(h0, 1, 2)
    # the input side per step, gate-major ((T, 3, D, H, N)), r's rows halved and z's halved
    # and negated (exact), as their weight rows: σ(x) = (1 + tanh(x/2)) / 2 then needs no
    # scaling first and z's rows come out as 1 - z = σ(-x)
    scale = xp.asarray([0.5, -0.5, 1.0], dtype=dt)[:, None, None]
    gis = xp.empty((steps, 3, n_dir, n_h, batch), dtype=dt)
    wf = xp.zeros((3, n_dir, n_h, dh + 1), dtype=dt)
    for d in range(n_dir):
        src = gi[d].reshape(3, n_h, steps, batch).transpose(2, 0, 1, 3)  # (T, 3, H, N)
        xp.multiply(src[::-1] if _reversed(reverse, d) else src, scale, out=gis[:, :, d])
        wf[:, d, :, d * n_h:(d + 1) * n_h] = w[d].reshape(3, n_h, n_h)
        wf[:, d, :, dh] = b[d].reshape(3, n_h)
    wf *= scale[..., None]
    wf = wf.reshape(3 * dh, dh + 1)
    dot, add, mul, sub, tanh = xp.dot, xp.add, xp.multiply, xp.subtract, xp.tanh
    r1, r2, r3 = dh + 1, 3 * dh + 1, 4 * dh + 1
    loops = B.gru_loops_cuda(xp, dt, dh)
    if loops is not None:  # a small layer on CUDA: the whole loop in one kernel
        loops[0](loop, gis, wf)
        return loop
    step = B.gru_step_kernel(xp)
    if step is not None:  # CUDA: the product and one kernel a step, the same bits
        gir, giz, gin = (gis[:, j].reshape(steps, dh, batch) for j in range(3))
        for hin, g3, r, zc, ghn, n, h, h_new, ir, iz, inn in zip(
                loop[:-1, :r1], loop[:-1, r1:r3], loop[:-1, r1:r1 + dh], loop[:-1, r1 + dh:r2],
                loop[:-1, r2:r3], loop[:-1, r3:], loop[:-1, :dh], loop[1:, :dh], gir, giz, gin):
            dot(wf, hin, out=g3)
            step(ir, iz, ghn, inn, h, r, zc, n, h_new)
        return loop
    half = xp.full((2 * dh, batch), 0.5, dtype=dt)  # an array operand: cheaper than a scalar
    for hin, g3, rz, r, zc, ghn, n, h, h_new, girz, gin in zip(
            loop[:-1, :r1], loop[:-1, r1:r3], loop[:-1, r1:r2], loop[:-1, r1:r1 + dh],
            loop[:-1, r1 + dh:r2], loop[:-1, r2:r3], loop[:-1, r3:], loop[:-1, :dh],
            loop[1:, :dh], gis[:, :2].reshape(steps, 2 * dh, batch),
            gis[:, 2].reshape(steps, dh, batch)):
        dot(wf, hin, out=g3)                             # r/2, -z/2 and gₙ from h_{s-1}
        add(rz, girz, out=rz)
        tanh(rz, out=rz)
        mul(rz, half, out=rz)
        add(rz, half, out=rz)                            # r, 1 - z
        mul(ghn, r, out=n)
        add(n, gin, out=n)
        tanh(n, out=n)                                   # n = tanh(iₙ + r gₙ)
        sub(n, h, out=h_new)
        mul(h_new, zc, out=h_new)
        add(h_new, h, out=h_new)                         # h_s = h_{s-1} + (1 - z)(n - h_{s-1})
    return loop


def _gru_states(xp, loop, n_dir: int, reverse: tuple, batch_major: bool = False):
    """The states (T, N, D, H) in time order from a loop array; with ``batch_major`` laid out
    (N, T, D, H) in memory (a transposed view), as a batch-first layer's output is read."""
    steps, batch = loop.shape[0] - 1, loop.shape[2]
    dh = (loop.shape[1] - 1) // 5
    n_h = dh // n_dir
    out = xp.empty((batch, steps, n_dir, n_h) if batch_major else (steps, batch, n_dir, n_h),
                   dtype=loop.dtype)
    if batch_major:
        out = out.transpose(1, 0, 2, 3)
    hs = loop[1:, :dh].reshape(steps, n_dir, n_h, batch)
    for d in range(n_dir):
        src = hs[::-1, d] if _reversed(reverse, d) else hs[:, d]
        out[:, :, d] = src.transpose(0, 2, 1)
    return out


def _gru_scan_fwd(xp, gi, w, b, h0, loop, reverse=(), batch_major=False):
    return _gru_states(xp, loop, gi.shape[0], reverse, batch_major)


_GRU_CHUNK = 1 << 16  # about this many state elements' gate factors are computed per pass


def _gru_factors(xp, loop, o, dh_: int) -> None:
    """Into o's planes 1-5 (steps, 6, DH, N) the factors k of d(pre-activations) = dh_s k_s
    from the kept gates (loop's slots s to s + 1): z (h_{s-1}'s direct share), a r (gₙ),
    a gₙ r (1 - r) (r), (h_s - n)(1 - z) = (h_{s-1} - n) z (1 - z) (z), and a = (1 - z)(1 - n²)
    (n's pre-activation)."""
    r1, r2, r3 = dh_ + 1, 2 * dh_ + 1, 3 * dh_ + 1
    r, zc, ghn, n = loop[:-1, r1:r2], loop[:-1, r2:r3], loop[:-1, r3:r3 + dh_], loop[:-1, r3 + dh_:]
    kh, kn, kr, kz, ka = (o[:, i] for i in range(1, 6))
    one = o.dtype.type(1)
    xp.subtract(one, zc, out=kh)
    xp.multiply(n, n, out=ka)
    xp.subtract(one, ka, out=ka)
    ka *= zc
    xp.subtract(loop[1:, :dh_], n, out=kz)
    kz *= zc
    xp.multiply(ka, r, out=kn)
    xp.subtract(one, r, out=kr)
    kr *= ghn
    kr *= kn


def _gru_scan_grad_fwd(xp, g, loop, w, reverse=(), wgrad=True):
    # d(pre-activations) = dh_s * k_s with k from the kept gates (one pass over all steps), then
    # per step two calls: the products dh_s k_s, and one GEMM giving dh_{s-1} from them and g
    steps, batch, n_dir, n_h = g.shape
    dh_, n_g, dt = n_dir * n_h, 3 * n_h, g.dtype
    sizes = (n_dir * n_g * steps * batch, n_dir * n_g * n_h, n_dir * n_g, n_dir * batch * n_h)
    flat = xp.empty(sum(sizes), dtype=dt)
    ends = [sum(sizes[:i + 1]) for i in range(4)]
    dgi = flat[:ends[0]].reshape(n_dir, 3, n_h, steps, batch)
    dw = flat[ends[0]:ends[1]].reshape(n_dir, 3, n_h, n_h)
    db = flat[ends[1]:ends[2]].reshape(n_dir, 3, n_h)
    dh0 = flat[ends[2]:].reshape(n_dir, batch, n_h)
    if steps == 0:
        flat[...] = 0
        return flat
    # per step s the planes: g_{s-1}, dh z (h_{s-1}'s direct share), the cotangents of gₙ (a r),
    # of r's and z's pre-activations, and a (n's pre-activation); first the factors k
    o = xp.empty((steps, 6, dh_, batch), dtype=dt)
    gp = o[:, 0].reshape(steps, n_dir, n_h, batch)
    dh = xp.empty((dh_, batch), dtype=dt)
    for d in range(n_dir):
        src = g[:, :, d].transpose(0, 2, 1)                         # (T, H, N)
        if _reversed(reverse, d):
            src = src[::-1]
        gp[1:, d] = src[:-1]
        dh[d * n_h:(d + 1) * n_h] = src[-1]
    gp[0] = 0
    # dh_{s-1} = g_{s-1} + dh z + Wₕₕᵀ (d gₙ, d r, d z): one block-diagonal weight (DH, 5DH)
    # (its diagonal blocks [I, I, Wₙᵀ, Wᵣᵀ, W_zᵀ]: two copies a direction, few launches on CUDA)
    m = xp.zeros((n_dir, n_h, 5, n_dir, n_h), dtype=dt)
    blocks = w.reshape(n_dir, 3, n_h, n_h)[:, [2, 0, 1]].transpose(0, 3, 1, 2)  # (D, H, 3, H)
    eye = xp.eye(n_h, dtype=dt)[:, None]
    for d in range(n_dir):
        m[d, :, 2:, d] = blocks[d]
        m[d, :, :2, d] = eye
    m = m.reshape(dh_, 5 * dh_)
    mul, dot = xp.multiply, xp.dot
    chunk = max(1, _GRU_CHUNK // max(1, dh_ * batch))  # all steps of a small layer at once
    loops = B.gru_loops_cuda(xp, dt, dh_)
    per_step = None if loops is not None else list(zip(
        o[:, 1:], o[:, :5].reshape(steps, 5 * dh_, batch)))  # the step-by-step loop's views
    for t1 in range(steps, 0, -chunk):
        t0 = max(0, t1 - chunk)
        _gru_factors(xp, loop[t0:t1 + 1], o[t0:t1], dh_)
        if loops is not None:  # a small layer on CUDA: the chunk's steps in one kernel
            loops[1](o[t0:t1], dh, m)
            continue
        for ks, ins in reversed(per_step[t0:t1]):
            mul(ks, dh, out=ks)
            dot(m, ins, out=dh)
    dh0[...] = dh.reshape(n_dir, n_h, batch).transpose(0, 2, 1)
    da = o[:, 3:].reshape(steps, 3, n_dir, n_h, batch)                # r, z, a
    for d in range(n_dir):
        src = da[::-1, :, d] if _reversed(reverse, d) else da[:, :, d]
        dgi[d] = src.transpose(1, 2, 0, 3)
    if wgrad:  # Σ over steps and batch of d(gₙ, r, z) [h_{s-1}, 1]ᵀ, a product per step on
        # the planes as they lie (the block-diagonal blocks are the directions' gradients)
        full = xp.matmul(o[:, 2:5].reshape(steps, 3 * dh_, batch),
                         loop[:-1, :dh_ + 1].transpose(0, 2, 1)).sum(0)
        full = full.reshape(3, n_dir, n_h, dh_ + 1)  # planes gₙ, r, z; the gates go r, z, n
        for d in range(n_dir):
            cols = slice(d * n_h, (d + 1) * n_h)
            dw[d, :2], dw[d, 2] = full[1:, d, :, cols], full[0, d, :, cols]
            db[d, :2], db[d, 2] = full[1:, d, :, dh_], full[0, d, :, dh_]
    else:
        flat[ends[0]:ends[2]] = 0
    return flat


def _gru_scan_parts_vjp(needs, g, gi, w, b, h0, loop, reverse):
    """The cotangents from the reverse loop (no graph of the gradient is wanted)."""
    flat = _gru_scan_grad(g, loop, w, reverse=reverse, wgrad=bool(needs[1] or needs[2]))
    out, start = [], 0
    for x, need in zip((gi, w, b, h0), needs):
        size = math.prod(x.shape)
        out.append(reshape(flat[start:start + size], tuple(x.shape)) if need else None)
        start += size
    return tuple(out) + (None,)


def _in_order(v, reverse: tuple):
    """(T, D, ...) with the reversed directions' steps flipped: time order <-> processing order."""
    if not any(reverse):
        return v
    parts = [v[:, d:d + 1] for d in range(v.shape[1])]
    return concatenate([flip(p, 0) if rev else p for p, rev in zip(parts, reverse)], 1)


def _steps_form(gi, w, ans, reverse):
    """gi (T, D, N, 3H), Wₕₕᵀ (D, H, 3H) and the states (T, D, N, H) in processing order, for
    the step-by-step rules."""
    return (_in_order(transpose(gi, (2, 0, 3, 1)), reverse), swapaxes(w, 1, 2),
            _in_order(transpose(ans, (0, 2, 1, 3)), reverse))


def _gru_scan_steps_vjp(g, ans, gi, w, b, h0):
    """The cotangents step by step with gru_update's VJP, in processing order (differentiable:
    create_graph, and every transform, see it)."""
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
    return stack(dgis[::-1]), dgh, hprev, dh


def _gru_scan_vjp(needs, g, ans, gi, w, b, h0, loop, reverse=(), batch_major=False):
    n_dir, n_g, steps, batch = gi.shape
    if steps == 0:
        return tuple(x * 0 if need else None for x, need in zip((gi, w, b, h0), needs)) + (None,)
    m = modes()
    if not (m.grad_enabled or m.traces):
        return _gru_scan_parts_vjp(needs, g, gi, w, b, h0, loop, reverse)
    gic, wc, hs = _steps_form(gi, w, ans, reverse)
    dgi, dgh, hprev, dh0 = _gru_scan_steps_vjp(_in_order(transpose(g, (0, 2, 1, 3)), reverse),
                                               hs, gic, wc, b, h0)
    dw = db = None
    if needs[1] or needs[2]:  # Σ over steps and batch of dgh_tᵀ [h_{t-1}, 1]: one product per
        # direction gives the weight's gradient and, from the ones, the bias's
        one = ones(1, 1, 1, 1, dtype=ans.dtype, device=ans.device)
        hp = concatenate([hprev, broadcast_to(one, (steps, n_dir, batch, 1))], -1)
        dwb = dgh @ reshape(moveaxis(hp, 1, 0), (n_dir, steps * batch, n_g // 3 + 1))
        dw, db = dwb[..., :n_g // 3], dwb[..., n_g // 3]
    dgi = transpose(_in_order(dgi, reverse), (1, 3, 0, 2))
    return (dgi if needs[0] else None, dw if needs[1] else None, db if needs[2] else None,
            dh0 if needs[3] else None, None)


def _gru_scan_jvp(ts, ans, gi, w, b, h0, loop, reverse=(), batch_major=False):
    tgi, tw, tb, th = ts[:4]
    gi, w, hs = _steps_form(gi, w, ans, reverse)
    if tgi is not None:
        tgi = _in_order(transpose(tgi, (2, 0, 3, 1)), reverse)
    if tw is not None:
        tw = swapaxes(tw, 1, 2)
    steps = gi.shape[0]
    hprev = concatenate([expand_dims(h0, 0), hs[:steps - 1]], 0)
    gh = hprev @ w + expand_dims(b, 1)
    outs = []
    for t in range(steps):
        tgh = None
        for part in (None if th is None else th @ w, None if tw is None else hprev[t] @ tw,
                     None if tb is None else expand_dims(tb, 1)):
            if part is not None:
                tgh = part if tgh is None else tgh + part
        th = _gru_jvp((None if tgi is None else tgi[t], tgh, th), hs[t], gi[t], gh[t],
                      hprev[t])
        outs.append(th)
    out = stack(outs) if outs else hs * 0
    return transpose(_in_order(out, reverse), (0, 2, 1, 3))


def _dir_merged(v, bd, size):
    """``v`` batched along a new axis before its direction axis (the first), merged with it: the
    batch becomes more directions, each with its own weights and states."""
    v = batched(v, bd, size)                                         # batch first
    shape = tuple(v.shape)
    return reshape(v, (shape[0] * shape[1],) + shape[2:])


def _gru_scan_batch(vals, bdims, reverse=(), batch_major=False):
    size = size_of(vals, bdims)
    gi, w, b, h0 = (_dir_merged(v, bd, size) for v, bd in zip(vals[:4], bdims[:4]))
    n_dir = gi.shape[0] // size
    out = gru_scan(gi, w, b, h0, tuple(reverse) * size if reverse else (),  # a loop of its own
                   batch_major=batch_major)
    shape = tuple(out.shape)
    return reshape(out, shape[:2] + (size, n_dir) + shape[3:]), 2


def _per_example(name: str):
    """A batching rule that runs the primitive once per example (internal loops only vmap sees
    through when a test asks for it)."""
    def rule(vals, bdims, **params):
        size = size_of(vals, bdims)
        outs = [REGISTRY[name](*(v if bd is None else front(v, bd)[i]
                                     for v, bd in zip(vals, bdims)), **params)
                for i in range(size)]
        return stack(outs), 0
    return rule


_gru_scan_loop = primitive(
    "gru_scan_loop", _gru_loop_fwd, kind="nn", batch=_per_example("gru_scan_loop"),
    operands="all",
    doc="gru_scan's forward loop: per step h_{s-1}, 1, r, z, gₙ and n, (T+1, 5·DH + 1, N).")
_gru_scan = primitive(
    "gru_scan", _gru_scan_fwd, vjp_all=_gru_scan_vjp, kind="nn", jvp=_gru_scan_jvp,
    batch=_gru_scan_batch, saves="both", operands="all",
    doc="A GRU's states over T steps, each direction d with its own weights: h_t = "
        "gru_update(gi_t, h_{t-1} Wₕₕᵀ + b, h_{t-1}), gi (D, 3H, T, N), Wₕₕ (D, 3H, H), "
        "b (D, 3H), h0 (D, N, H), states (T, N, D, H); ``loop`` is gru_scan_loop's result.")
_gru_scan_grad = primitive(
    "gru_scan_grad", _gru_scan_grad_fwd, kind="nn", batch=_per_example("gru_scan_grad"),
    operands="all",
    doc="gru_scan's reverse loop: the cotangents of gi, Wₕₕ, b and h0, flattened one after "
        "the other, from the states' cotangent and the forward loop's gates.")


def gru_scan(gi, w, b, h0, reverse=(), batch_major: bool = False):
    """A GRU layer's time loop: the states (T, N, D, H) from the input projections gi (D, 3H, T, N)
    (Wᵢₕx + bᵢₕ, features first), the recurrent weights w (D, 3H, H) (Wₕₕ), their bias b (D, 3H)
    and the initial states h0 (D, N, H); D directions run side by side, those with ``reverse[d]``
    from the last step to the first (a bidirectional layer's backward direction). With
    ``batch_major`` the states are laid out (N, T, D, H) in memory (same values and shape)."""
    shapes = [tuple(getattr(t, "shape", ())) for t in (gi, w, b, h0)]
    ok = len(shapes[0]) == 4 and len(shapes[3]) == 3 and shapes[0][1] == 3 * shapes[3][-1]
    if ok:
        n_dir, n_g, steps, batch = shapes[0]
        ok = (shapes[1] == (n_dir, n_g, n_g // 3) and shapes[2] == (n_dir, n_g)
              and shapes[3] == (n_dir, batch, n_g // 3))
    if not ok:
        raise ShapeError(f"gru_scan: expected gi (D, 3H, T, N), w (D, 3H, H), b (D, 3H) and h0 "
                         f"(D, N, H), got {', '.join(str(s) for s in shapes)}")
    reverse = tuple(bool(r) for r in reverse)
    if reverse and len(reverse) != n_dir:
        raise ShapeError(f"gru_scan: expected one reverse flag per direction ({n_dir}), got "
                         f"{len(reverse)}")
    if not any(reverse):
        reverse = ()
    loop = _gru_scan_loop(gi, w, b, h0, reverse=reverse)
    return _gru_scan(gi, w, b, h0, loop, reverse=reverse, batch_major=bool(batch_major))
