"""Scaled dot-product attention as one primitive: ``softmax(q kᵀ · scale [+ causal mask]) v``
over (..., L, E) queries, keys and values of one shape (self-attention), the form nanoGPT's
blocks call.

The forward and the first-order VJP run :func:`._backend.attention_form` (its products,
NumPy's row maxima, the exp of the shifted scores by ``exp32_neg`` in float32, NumPy's
pairwise row sums), and on host float32 arrays its numba loops, one (batch, head) unit at a
time with the unit's scores in cache and half of the units on OpenBLAS's worker thread, the
same bits. The VJP is one more primitive, ``attention_grad`` (dq, dk and dv stacked), in
eager code and in a compiled program alike; where the gradient is itself differentiated
(``create_graph``) or transformed (vmap, jvp) the rules are the composite's tensor ops.
"""

from __future__ import annotations

from .. import _backend as B
from ..autodiff import modes
from ..batching import batched, size_of
from ..errors import ShapeError
from ..primitive import primitive
from ..tensor import Tensor
from .linalg import matmul
from .nn import softmax
from .reduce import _sum
from .shape import swapaxes


def _fwd(xp, q, k, v, scale, causal):
    if xp is B.np:
        out = B.attention(q, k, v, scale, causal)
        if out is not None:
            return out
    return B.attention_form(xp, q, k, v, scale, causal)


def _grad_fwd(xp, g, q, k, v, scale, causal):
    if xp is B.np:
        out = B.attention_grad(g, q, k, v, scale, causal)
        if out is not None:
            return out
    return B.attention_form(xp, q, k, v, scale, causal, g)


def _grad_batch(vals, bdims, scale, causal):
    n = size_of(vals, bdims)
    g, q, k, v = (batched(x, b, n) for x, b in zip(vals, bdims, strict=True))
    return _attention_grad(g, q, k, v, scale=scale, causal=causal), 1


_attention_grad = primitive(
    "attention_grad", _grad_fwd, kind="nn", operands="all", batch=_grad_batch,
    doc="attention's VJP (dq, dk, dv stacked on a new first axis), in one bind: eager and "
        "compiled backward passes run it; its own derivatives are the composite's.")


def _mT(t):
    return swapaxes(t, -1, -2)


def _weights(q, k, scale, causal):
    """The softmax weights as tensor ops (the rules' form)."""
    s = matmul(q * scale, _mT(k))
    if causal:
        xp = q.backend.xp
        n = q.shape[-2]
        s = s + Tensor._of(xp.where(xp.tril(xp.ones((n, n), dtype=bool)), 0, -xp.inf)
                           .astype(q.dtype))
    return softmax(s, -1)


def _vjp(needs, g, ans, q, k, v, scale, causal):
    m = modes()
    if not m.grad_enabled and not m.traces:  # a first-order backward, eager or traced
        packed = _attention_grad(g, q, k, v, scale=scale, causal=causal)
        return tuple(packed[i] if needs[i] else None for i in range(3))
    p = _weights(q, k, scale, causal)
    dv = matmul(_mT(p), g) if needs[2] else None
    dq = dk = None
    if needs[0] or needs[1]:
        dp = matmul(g, _mT(v))
        ds = (dp - _sum(dp * p, axis=(p.ndim - 1,), keepdims=True)) * p
        if needs[0]:
            dq = matmul(ds, k) * scale
        if needs[1]:
            dk = matmul(_mT(ds), q * scale)
    return dq, dk, dv


def _raw(needs, g, ans, q, k, v, scale, causal):
    if g.dtype.char not in "fd":  # bind runs lower floats through float32
        return None
    packed = _grad_fwd(B.np, g, q, k, v, scale, causal)
    return tuple(packed[i] if needs[i] else None for i in range(3))


def _jvp(ts, ans, q, k, v, scale, causal):
    tq, tk, tv = ts
    p = _weights(q, k, scale, causal)
    ds = None
    if tq is not None:
        ds = matmul(tq * scale, _mT(k))
    if tk is not None:
        t = matmul(q * scale, _mT(tk))
        ds = t if ds is None else ds + t
    out = None
    if ds is not None:
        out = matmul((ds - _sum(p * ds, axis=(p.ndim - 1,), keepdims=True)) * p, v)
    if tv is not None:
        t = matmul(p, tv)
        out = t if out is None else out + t
    return out


def _batch(vals, bdims, scale, causal):
    n = size_of(vals, bdims)
    q, k, v = (batched(x, b, n) for x, b in zip(vals, bdims, strict=True))
    return _attention(q, k, v, scale=scale, causal=causal), 0


_attention = primitive(
    "attention", _fwd, vjp_all=_vjp, jvp=_jvp, batch=_batch, kind="nn", operands="all",
    vjp_raw=_raw,
    doc="softmax(q kᵀ · scale [+ causal mask]) v over (..., L, E) of one shape, in one node.")


def attention(q, k, v, *, scale: float, causal: bool):
    """Self-attention of (..., L, E) queries, keys and values of one shape as one primitive
    (``nn.functional.scaled_dot_product_attention`` takes it without a mask or dropout)."""
    shapes = [tuple(getattr(t, "shape", ())) for t in (q, k, v)]
    if len(shapes[0]) < 2 or shapes.count(shapes[0]) != 3:
        raise ShapeError(f"attention: expected queries, keys and values of one shape (..., L, "
                         f"E), got {shapes[0]}, {shapes[1]} and {shapes[2]} (other shapes, masks "
                         "and dropout: nn.functional.scaled_dot_product_attention)")
    return _attention(q, k, v, scale=float(scale), causal=bool(causal))
