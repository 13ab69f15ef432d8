"""Function forms of the recurrent cells and of attention, and the time loop the RNN layers run.

Everything is composed from primitives, so gradients (and gradients of gradients) come from the
engine. A recurrent layer loops over time only: the input projection x Wᵢₕᵀ is one matrix product
over many steps, each step does one product h Wₕₕᵀ for all gates (and both directions of a
bidirectional layer at once), and the gates are slices of it. Attention is softmax(q kᵀ/√d + mask) v
with the max-subtracting softmax, so large scores stay finite.
"""

from __future__ import annotations

import math
from functools import partial
from collections.abc import Sequence

from .. import _backend as B
from .. import lax, ops
from ..amp import autocast, lower_in_region
from ..autodiff import is_grad_enabled, modes
from ..batching import values
from ..errors import DTypeError, ShapeError
from ..ops.nn import gru_scan, gru_update
from ..random import Generator
from ..tensor import Tensor, ones, zeros
from . import functional as F

__all__ = ["rnn_cell", "gru_cell", "lstm_cell", "scaled_dot_product_attention",
           "multi_head_attention"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}


# --- the gate updates, shared by the cells and the layers ---------------------------------
def _act(mode: str):
    return ops.relu if mode == "RNN_RELU" else ops.tanh


def _gru_update(gi: Tensor, gh: Tensor, h: Tensor, n_h: int) -> Tensor:
    """GRU, gates (r, z, n): n = tanh(iₙ + r ⊙ hₙ), h' = (1 - z) ⊙ n + z ⊙ h = n + z ⊙ (h - n).

    ``gi`` = x Wᵢₕᵀ + bᵢₕ and ``gh`` = h Wₕₕᵀ + bₕₕ, both (..., 3H); r and z see their sum.
    """
    return gru_update(gi, gh, h)  # one fused primitive (nodegrad.ops.nn), not ~16


def _lstm_update(a: Tensor, c: Tensor, n_h: int) -> tuple[Tensor, Tensor]:
    """LSTM, gates (i, f, g, o) of the summed pre-activations ``a``: c' = f c + i g, h' = o tanh c'.

    One sigmoid over all four gates (the g part is unused) saves three slices per step.
    """
    s = ops.sigmoid(a)
    g = ops.tanh(a[..., 2 * n_h:3 * n_h])
    c = s[..., n_h:2 * n_h] * c + s[..., :n_h] * g
    return s[..., 3 * n_h:] * ops.tanh(c), c


# --- cells ------------------------------------------------------------------------------------
def _cell_args(op: str, x: Tensor, h, w_ih: Tensor, w_hh: Tensor, gates: int):
    """Check a cell's shapes; return x and h as 2-d tensors and whether to drop the batch axis."""
    n_h, n_in = w_hh.shape[1], w_ih.shape[1]
    if tuple(w_ih.shape) != (gates * n_h, n_in) or tuple(w_hh.shape) != (gates * n_h, n_h):
        raise ShapeError(f"{op}: expected w_ih of shape ({gates}*H, I) and w_hh of shape "
                         f"({gates}*H, H), got {tuple(w_ih.shape)} and {tuple(w_hh.shape)}")
    if x.ndim not in (1, 2) or x.shape[-1] != n_in:
        raise ShapeError(f"{op}: expected input of shape (N, {n_in}) or ({n_in},), got "
                         f"{tuple(x.shape)}")
    unbatched = x.ndim == 1
    if unbatched:
        x = ops.reshape(x, (1, n_in))
    want = (x.shape[0], n_h)
    hs = [] if h is None else list(h) if isinstance(h, tuple | list) else [h]
    for i, t in enumerate(hs):
        if unbatched:  # as PyTorch: an unbatched input takes only unbatched (H,) states
            if tuple(t.shape) != (n_h,):
                raise ShapeError(f"{op}: expected hidden state of shape ({n_h},) for the "
                                 f"unbatched input, got {tuple(t.shape)}")
            t = hs[i] = ops.reshape(t, (1, n_h))
        if tuple(t.shape) != want:
            shape = (n_h,) if unbatched else want
            raise ShapeError(f"{op}: expected hidden state of shape {shape}, got "
                             f"{tuple(t.shape)}")
    return x, hs, unbatched


def _zeros_state(x: Tensor, n_h: int) -> Tensor:
    return Tensor._of(x.backend.xp.zeros((x.shape[0], n_h), dtype=x.dtype))


def rnn_cell(input: Tensor, hx: Tensor | None, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None = None, b_hh: Tensor | None = None,
             nonlinearity: str = "tanh") -> Tensor:
    """One Elman step h' = act(x Wᵢₕᵀ + bᵢₕ + h Wₕₕᵀ + bₕₕ), act tanh or relu (hx None: zeros)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    x, hs, unbatched = _cell_args("rnn_cell", input, hx, w_ih, w_hh, 1)
    h = hs[0] if hs else _zeros_state(x, w_hh.shape[1])
    a = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    h = ops.relu(a) if nonlinearity == "relu" else ops.tanh(a)
    return ops.reshape(h, h.shape[1:]) if unbatched else h


def gru_cell(input: Tensor, hx: Tensor | None, w_ih: Tensor, w_hh: Tensor,
             b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> Tensor:
    """One GRU step with PyTorch's gate order (r, z, n) and n = tanh(Wᵢₙx + bᵢₙ + r(Wₕₙh + bₕₙ))."""
    x, hs, unbatched = _cell_args("gru_cell", input, hx, w_ih, w_hh, 3)
    n_h = w_hh.shape[1]
    h = hs[0] if hs else _zeros_state(x, n_h)
    h = _gru_update(F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh), h, n_h)
    return ops.reshape(h, h.shape[1:]) if unbatched else h


def lstm_cell(input: Tensor, hx: tuple[Tensor, Tensor] | None, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One LSTM step, gates (i, f, g, o) as PyTorch; ``hx`` = (h, c) or None; returns (h', c')."""
    x, hs, unbatched = _cell_args("lstm_cell", input, hx, w_ih, w_hh, 4)
    n_h = w_hh.shape[1]
    if hs and len(hs) != 2:
        raise ValueError("lstm_cell: hx must be a pair (h, c)")
    h, c = hs if hs else (_zeros_state(x, n_h), _zeros_state(x, n_h))
    h, c = _lstm_update(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh), c, n_h)
    if unbatched:
        h, c = ops.reshape(h, h.shape[1:]), ops.reshape(c, c.shape[1:])
    return h, c


# --- the time loop of one layer -----------------------------------------------------------
# How many elements of memory traffic cost about as much as one more op's overhead (~15 µs).
_OP_ELEMS = 1 << 15


def _chunk_len(steps: int, step_elems: int, x_elems: int, x_grad: bool, recording: bool) -> int:
    """Time steps per input-projection matrix product.

    Without a graph, all of them (one product). With one, the backward of slicing a step out of
    a chunk writes a whole chunk, and that of slicing a chunk out of the input the whole input,
    so one product for all steps would make backward quadratic in time; k ≈ √(cost per chunk /
    cost per step) balances the two and keeps it ~linear.
    """
    if not recording:
        return steps
    k = round(math.sqrt(((x_elems if x_grad else 0) + _OP_ELEMS) / max(step_elems, 1)))
    return max(1, min(steps, k))


def _stack_dirs(ts: Sequence[Tensor]) -> Tensor:
    """(D, ...) from one tensor per direction."""
    return ops.expand_dims(ts[0], 0) if len(ts) == 1 else ops.stack(ts)


def recurrent_layer(x: Tensor, h0: Tensor, c0: Tensor | None, weights: Sequence[tuple],
                    mode: str, batch_first: bool = False,
                    proj: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run one (bi)directional recurrent layer over a sequence.

    ``x`` (T, N, I); ``h0``/``c0`` (D, N, H); ``weights`` one (w_ih, w_hh, b_ih, b_hh) per
    direction (biases may be None); ``mode`` "RNN_TANH", "RNN_RELU", "GRU" or "LSTM". Returns the
    output (T, N, D·H), h_n (D, N, H) and c_n (LSTM) or None. Both directions run together: the
    reverse one reads the time-flipped input, the input projection of a chunk of steps is one
    product (D, k·N, I) @ (D, I, G·H), and each step one product (D, N, H) @ (D, H, G·H).
    ``batch_first``: the output will be read batch-first (a GRU then lays it out so in memory).
    ``proj`` (LSTM): one w_hr (P, H) per direction, PyTorch's ``proj_size``: h = (o ⊙ tanh c)
    w_hrᵀ, so h0, h_n and the output have P features and c0, c_n keep H.
    """
    if getattr(modes().autocast, "state", None):  # autocast: the whole layer in the region's
        # low precision, as PyTorch's CPU list has its RNN layer (a float32 carry would meet
        # low-precision products inside the loop)
        flat = lower_in_region(x, h0, c0, *(w for ws in weights for w in ws), *(proj or ()))
        x, h0, c0, rest = flat[0], flat[1], flat[2], flat[3:]
        k = len(weights[0])
        weights = [tuple(rest[i * k:(i + 1) * k]) for i in range(len(weights))]
        proj = None if not proj else list(rest[len(weights) * k:])
    steps, batch, n_in = x.shape
    n_dir, n_h = len(weights), (h0 if c0 is None else c0).shape[-1]
    m = modes()
    scan = steps > 0 and (m.jit is not None or not (m.traces or m.anomaly))
    if scan and mode == "GRU":
        return _gru_layer(x, h0, weights, batch_first)
    # stacked per direction and made contiguous once, so every product below is a plain GEMM
    w_ih = ops.copy(ops.swapaxes(_stack_dirs([w[0] for w in weights]), 1, 2))   # (D, I, GH)
    w_hh = ops.copy(ops.swapaxes(_stack_dirs([w[1] for w in weights]), 1, 2))
    w_hh = ops.expand_dims(w_hh, 1)                                              # (D, 1, H, GH)
    w_hr = None if not proj else ops.copy(ops.swapaxes(_stack_dirs(list(proj)), 1, 2))  # (D, H, P)
    n_g = w_ih.shape[-1]
    b_ih = b_hh = None
    if weights[0][2] is not None:
        b_ih = ops.expand_dims(_stack_dirs([w[2] for w in weights]), 1)          # (D, 1, GH)
        b_hh = ops.reshape(_stack_dirs([w[3] for w in weights]), (n_dir, 1, 1, n_g))
        if mode != "GRU":  # the biases only add up, so fold b_hh into the input projection
            b_ih, b_hh = b_ih + ops.reshape(b_hh, b_ih.shape), None
        else:  # GRU's b_hn sits inside r ⊙ (·): broadcast once, not summed back every step
            b_hh = ops.broadcast_to(b_hh, (n_dir, 1, batch, n_g))
    xd = ops.expand_dims(x, 0) if n_dir == 1 else ops.stack([x, ops.flip(x, 0)])  # (D, T, N, I)
    if scan:
        # one lax.scan: under jit one loop instruction, not T copies (eagerly it is also faster
        # than stepping here); under vmap, ONNX export and anomaly mode every step is seen
        h, c, y = _scan_steps(xd, h0, c0, w_ih, w_hh, b_ih, mode, w_hr)
        return _finish(y, h, c, h0, c0)
    recording = is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *(w for ws in weights for w in ws)))
    k = _chunk_len(steps, n_dir * batch * n_g, xd.numel(), x.requires_grad, recording)
    h = ops.expand_dims(h0, 1)                                                   # (D, 1, N, H)
    c = None if c0 is None else ops.expand_dims(c0, 1)
    act = _act(mode)
    w_hr = None if w_hr is None else ops.expand_dims(w_hr, 1)                    # (D, 1, H, P)
    outs = []
    for start in range(0, steps, k):
        xs = xd if k >= steps else xd[:, start:start + k]
        n = xs.shape[1]
        gis = ops.reshape(xs, (n_dir, n * batch, n_in)) @ w_ih
        if b_ih is not None:
            gis = gis + b_ih
        gis = ops.reshape(gis, (n_dir, n, batch, n_g))                           # (D, k, N, GH)
        for j in range(n):
            gi = gis if n == 1 else gis[:, j:j + 1]
            gh = h @ w_hh
            if mode == "GRU":
                h = _gru_update(gi, gh if b_hh is None else gh + b_hh, h, n_h)
            elif mode == "LSTM":
                h, c = _lstm_update(gi + gh, c, n_h)
                if w_hr is not None:
                    h = h @ w_hr
            else:
                h = act(gi + gh)
            outs.append(h)
    return _finish(ops.concatenate(outs, 1), h, c, h0, c0)


def _finish(y: Tensor, h: Tensor, c, h0: Tensor, c0):
    """The layer's results from the per-direction outputs y (D, T, N, H) and final states."""
    if y.shape[0] == 1:
        y = ops.reshape(y, y.shape[1:])
    else:
        y = ops.concatenate([y[0], ops.flip(y[1], 0)], -1)
    h_n = ops.reshape(h, tuple(h0.shape))
    return y, h_n, None if c is None else ops.reshape(c, tuple(c0.shape))


def _gru_layer(x: Tensor, h0: Tensor, weights: Sequence[tuple], batch_first: bool):
    """A GRU layer as one ``gru_scan``: the input projection of every step and direction is one
    product, features first (D, 3H, T·N), and the reverse direction walks the steps backwards
    inside the loop, so nothing is flipped or transposed here; with ``batch_first`` the output
    is laid out batch-major for the caller's swap back. Returns (y, h_n, None)."""
    steps, batch, n_in = x.shape
    n_dir, n_h = len(weights), h0.shape[-1]
    w_ih = _joined([w[0] for w in weights])                                      # (D·3H, I)
    w_hh = _joined([w[1] for w in weights], (n_dir, 3 * n_h, n_h))             # (D, 3H, H)
    xt = ops.reshape(ops.moveaxis(x, -1, 0), (n_in, steps * batch))              # (I, T·N)
    if weights[0][2] is None:
        b = zeros(n_dir, 3 * n_h, dtype=x.dtype, device=x.device)
        gi = w_ih @ xt
    else:
        b = _joined([w[3] for w in weights], (n_dir, 3 * n_h))
        b_ih = _joined([w[2] for w in weights], (n_dir * 3 * n_h, 1))           # (D·3H, 1)
        if n_in <= 3 * n_h:  # few inputs: the bias as one more input row of ones, so one
            # product gives the projection and, backward, both gradients
            one = ones(1, steps * batch, dtype=x.dtype, device=x.device)
            gi = ops.concatenate([w_ih, b_ih], -1) @ ops.concatenate([xt, one], 0)
        else:
            gi = w_ih @ xt + b_ih
    gi = ops.reshape(gi, (n_dir, 3 * n_h, steps, batch))
    ys = gru_scan(gi, w_hh, b, h0, reverse=(False, True)[:n_dir], batch_major=batch_first)
    last = [steps - 1, 0][:n_dir]  # each direction's final state: its last step in time order
    return ops.reshape(ys, (steps, batch, n_dir * n_h)), ys[last, :, list(range(n_dir))], None


def _joined(ts: Sequence[Tensor], shape: tuple | None = None) -> Tensor:
    """The per-direction tensors one after the other along their first axis, reshaped to
    ``shape``: one concatenate and one reshape (a stack adds a reshape per tensor, forward and
    backward)."""
    t = ts[0] if len(ts) == 1 else ops.concatenate(list(ts), 0)
    return t if shape is None else ops.reshape(t, shape)


def _scan_steps(xd: Tensor, h0: Tensor, c0, w_ih: Tensor, w_hh: Tensor, b_ih,
                mode: str, w_hr: Tensor | None = None):
    """The time loop as one ``lax.scan`` (the input projection of all steps is one product):
    the final h (D, N, H), c (LSTM) and the outputs (D, T, N, H); ``w_hr`` (D, H, P) an LSTM's
    projection of h."""
    n_dir, steps, batch, n_in = xd.shape
    n_h, n_g = (h0 if c0 is None else c0).shape[-1], w_ih.shape[-1]
    xs = ops.reshape(xd, (n_dir, steps * batch, n_in))
    if b_ih is not None and n_in <= n_g:  # few inputs: the bias as one more input column of
        # ones, so one product gives the projection and, backward, both gradients
        one = ops.broadcast_to(ones(1, 1, 1, dtype=xd.dtype, device=xd.device),
                               (n_dir, steps * batch, 1))
        xs, w_ih, b_ih = ops.concatenate([xs, one], -1), ops.concatenate([w_ih, b_ih], 1), None
    gis = xs @ w_ih
    if b_ih is not None:
        gis = gis + b_ih
    gis = ops.moveaxis(ops.reshape(gis, (n_dir, steps, batch, n_g)), 1, 0)      # (T, D, N, GH)
    w_hh = ops.reshape(w_hh, (n_dir, h0.shape[-1], n_g))
    lstm = mode == "LSTM"
    consts = [w_hh] if w_hr is None else [w_hh, w_hr]
    carry, ys = lax.scan_cached(("recurrent_layer", mode, w_hr is not None),
                                partial(_step, mode, n_h), consts,
                                [h0] if c0 is None else [h0, c0], [gis])
    ys = ys[0]
    return carry[0], carry[1] if lstm else None, ops.moveaxis(ys, 1, 0)


def _step(mode: str, n_h: int, consts: list, carry: list, x: list) -> tuple[list, list]:
    """One time step of an RNN or LSTM layer as a scan body: the new carry (h or h, c), y = h."""
    gh = carry[0] @ consts[0]
    gi = x[0]
    if mode == "LSTM":
        h, c = _lstm_update(gi + gh, carry[1], n_h)
        if len(consts) > 1:  # proj_size: h = (o ⊙ tanh c) w_hrᵀ
            h = h @ consts[1]
        return [h, c], [h]
    h = _act(mode)(gi + gh)
    return [h], [h]


# --- attention --------------------------------------------------------------------------------
def _as_tensor(m, like: Tensor) -> Tensor:
    if isinstance(m, Tensor):
        return m
    return Tensor._of(like.backend.asarray(m))


def _mask_bias(mask, like: Tensor, masked_when: bool) -> Tensor:
    """An additive mask: a boolean one becomes 0 / -inf (-inf where ``mask == masked_when``),
    a float one is used as given (in ``like``'s dtype)."""
    m = _as_tensor(mask, like)
    if m.dtype.kind == "b":  # with ops, so a jitted step reads each call's mask
        xp = like.backend.xp
        with like.backend.scope():
            neg, zero = (Tensor._of(xp.full((), v, like.dtype)) for v in (-xp.inf, 0))
        return ops.where(m if masked_when else ~m, neg, zero)
    if not B.is_float(m.dtype):
        raise TypeError(f"attention: a mask must be boolean or floating, got {m.dtype}")
    return m if m.dtype == like.dtype else ops.astype(m, like.dtype)


def _causal_bias(n_q: int, n_k: int, like: Tensor) -> Tensor:
    xp = like.backend.xp
    keep = xp.tril(xp.ones((n_q, n_k), dtype=bool))
    return Tensor._of(xp.where(keep, 0, -xp.inf).astype(like.dtype))


def _attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float,
            scale: float, generator: Generator | None,
            live: bool = False) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ · scale + bias) v; returns the output and the (dropped-out) weights.

    A query whose every key is masked (its bias row all -inf) gets zero weights, so a zero
    output and zero gradients, as PyTorch's scaled_dot_product_attention (not 0/0 = NaN).
    ``live``: the bias leaves every query a key (a causal mask: key 0), so no row is checked
    (nor, traced, masked again on every call)."""
    scores = (q * scale) @ k.mT
    dead = None
    if bias is not None and live:
        scores = scores + bias
    elif bias is not None:
        # traced (jit, an export, vmap): a later call's mask may hide a whole row
        traced = modes().jit is not None or bool(modes().traces)
        if B.is_float(bias.dtype) and (traced or bool(
                bias.backend.xp.isneginf(values(bias)).any())):
            dead = ops.all(bias == -math.inf, axis=-1, keepdims=True)
            if not traced and not bool(values(dead).any()):
                dead = None
        scores = scores + (bias if dead is None else ops.where(dead, 0.0, bias))
    w = ops.softmax(scores, -1)
    if dead is not None:
        w = ops.where(dead, 0.0, w)
    if dropout_p > 0:
        w = F.dropout(w, dropout_p, True, generator=generator)
    return w @ v, w


def _repeat_heads(t: Tensor, heads: int, what: str) -> Tensor:
    """(..., Hk, S, E) -> (..., heads, S, E), each key/value head serving heads/Hk query heads
    in turn (PyTorch's repeat_interleave for grouped-query attention)."""
    if t.ndim < 3 or heads % t.shape[-3]:
        raise ShapeError(f"scaled_dot_product_attention: with enable_gqa the {what} heads "
                         f"(axis -3 of {tuple(t.shape)}) must divide the {heads} query heads")
    r = heads // t.shape[-3]
    if r == 1:
        return t
    lead, (hk, s, e) = tuple(t.shape[:-3]), tuple(t.shape[-3:])
    t = ops.broadcast_to(ops.expand_dims(t, -3), lead + (hk, r, s, e))
    return ops.reshape(t, lead + (hk * r, s, e))


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    """The broadcast of two shapes, None where they do not broadcast."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False,
                                 generator: Generator | None = None) -> Tensor:
    """softmax(q kᵀ / √E + mask) v over (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev).

    As PyTorch's function of this name: a boolean ``attn_mask`` marks with True the pairs that
    TAKE PART (the opposite of MultiheadAttention's masks); a float one is added to the scores;
    a query with no key to attend to gets zeros. ``enable_gqa``: key and value may have fewer
    heads (axis -3) than the query, each shared by a group of query heads. ``dropout_p`` drops
    attention weights whenever it is > 0 (pass 0 in evaluation).
    """
    if query.ndim < 2 or key.ndim < 2 or value.ndim < 2:
        raise ShapeError(f"scaled_dot_product_attention: expected query (..., L, E), key "
                         f"(..., S, E) and value (..., S, Ev), got {tuple(query.shape)}, "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ShapeError(f"scaled_dot_product_attention: query (..., L, E) and key (..., S, E) "
                         f"must share E and key and value must share S, got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
    if enable_gqa and query.ndim >= 3:
        key = _repeat_heads(key, query.shape[-3], "key")
        value = _repeat_heads(value, query.shape[-3], "value")
    lead = _broadcast(tuple(query.shape[:-2]), tuple(key.shape[:-2]))
    if lead is None or _broadcast(lead, tuple(value.shape[:-2])) is None:
        hint = " (key and value with fewer heads than the query need enable_gqa=True)" if (
            not enable_gqa and query.ndim >= 3 and key.ndim >= 3
            and 0 < key.shape[-3] < query.shape[-3]) else ""
        raise ShapeError(f"scaled_dot_product_attention: the batch dimensions of query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} do not broadcast{hint}")
    query, key, value = lower_in_region(query, key, value)  # autocast: PyTorch's lower list
    if not query.dtype == key.dtype == value.dtype:
        raise DTypeError(f"scaled_dot_product_attention: query, key and value must share a "
                         f"dtype, got {query.dtype}, {key.dtype} and {value.dtype}")
    if not B.is_float(query.dtype):
        raise DTypeError(f"scaled_dot_product_attention: expected floating-point query, key and "
                         f"value (as PyTorch), got {query.dtype}")
    if isinstance(attn_mask, Tensor) and B.is_float(attn_mask.dtype) \
            and attn_mask.dtype not in (query.dtype, B.float32):
        raise DTypeError(f"scaled_dot_product_attention: a float attn_mask must be float32 or "
                         f"the query's dtype {query.dtype} (as PyTorch), got {attn_mask.dtype}")
    low = query.dtype
    if low in (B.bfloat16, B.float16) and query.device == "cpu":
        # computed in float32 and rounded once, as PyTorch's CPU kernel (the products and the
        # softmax in half precision would round at every step)
        def up(t):
            return t if not isinstance(t, Tensor) or t.dtype != low else ops.astype(t, B.float32)
        with autocast("cpu", enabled=False):
            out = scaled_dot_product_attention(
                up(query), up(key), up(value), up(attn_mask), dropout_p, is_causal, scale,
                False, generator)
        return ops.astype(out, low)
    if (attn_mask is None and dropout_p == 0 and query.shape == key.shape == value.shape
            and query.shape[-1] > 0 and query.shape[-2] > 0 and query.dtype.char in "fd"):
        # self-attention without a mask or dropout: one primitive (ops.attention)
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        return ops.attention(query, key, value, scale=scale, causal=is_causal)
    n_q, n_k = query.shape[-2], key.shape[-2]
    bias = _causal_bias(n_q, n_k, query) if is_causal else \
        None if attn_mask is None else _mask_bias(attn_mask, query, masked_when=False)
    if bias is not None:
        scores = lead + (n_q, n_k)
        if _broadcast(tuple(bias.shape), scores) != scores:
            raise ShapeError(f"scaled_dot_product_attention: attn_mask of shape "
                             f"{tuple(bias.shape)} does not broadcast to the scores' shape "
                             f"(..., L={n_q}, S={n_k}) of query {tuple(query.shape)} and key "
                             f"{tuple(key.shape)}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    return _attend(query, key, value, bias, dropout_p, scale, generator,
                   is_causal and n_k > 0)[0]


def multi_head_attention(query: Tensor, key: Tensor, value: Tensor, num_heads: int,
                         in_proj_weight: Tensor | None, in_proj_bias: Tensor | None,
                         out_proj_weight: Tensor, out_proj_bias: Tensor | None, *,
                         key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                         average_attn_weights: bool = True, is_causal: bool = False,
                         dropout_p: float = 0.0, training: bool = True,
                         q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
                         v_proj_weight: Tensor | None = None,
                         bias_k: Tensor | None = None, bias_v: Tensor | None = None,
                         add_zero_attn: bool = False, static_k: Tensor | None = None,
                         static_v: Tensor | None = None,
                         generator: Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """PyTorch's multi-head attention on sequence-first inputs: query (L, N, E), key (S, N, Ek),
    value (S, N, Ev), or unbatched (L, E) etc. Returns (output (L, N, E), weights or None).

    Masks follow ``nn.MultiheadAttention``: in a boolean ``attn_mask`` ((L, S) or (N·heads, L, S))
    or ``key_padding_mask`` ((N, S)) True means NOT allowed to attend; float masks are added.
    Weights are (N, L, S) averaged over heads, or (N, heads, L, S); dropout acts on them.
    ``is_causal`` without ``attn_mask`` masks future positions. ``bias_k``/``bias_v`` (1, 1, E)
    are appended to the projected keys and values of every sequence and ``add_zero_attn``
    appends a zero key and value to each head, each with a mask column that allows it (the
    masks stay given for the S keys of the inputs). ``static_k``/``static_v`` (N·heads, S', d)
    replace the projected keys/values (the masks then cover S' keys).
    """
    op = "multi_head_attention"
    batched = query.ndim == 3
    if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
        raise ShapeError(f"{op}: expected query (L, N, E), key (S, N, Ek), value (S, N, Ev) or "
                         f"all unbatched, got {tuple(query.shape)}, {tuple(key.shape)}, "
                         f"{tuple(value.shape)}")
    if not batched:
        query, key, value = (ops.expand_dims(t, 1) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = _as_tensor(key_padding_mask, query)
            key_padding_mask = ops.expand_dims(key_padding_mask, 0)
    n_q, batch, embed = query.shape
    n_k = key.shape[0]
    if key.shape[:2] != (n_k, batch) or value.shape[:2] != (n_k, batch):
        raise ShapeError(f"{op}: key and value must be (S, N={batch}, ·) with one S, got "
                         f"{tuple(key.shape)} and {tuple(value.shape)}")
    if embed % num_heads:
        raise ValueError(f"{op}: embed_dim {embed} is not divisible by num_heads {num_heads}")
    d = embed // num_heads
    # projections: one product for self-attention with the packed weight, else three
    if q_proj_weight is None:
        if in_proj_weight is None or tuple(in_proj_weight.shape) != (3 * embed, embed):
            got = None if in_proj_weight is None else tuple(in_proj_weight.shape)
            raise ShapeError(f"{op}: expected in_proj_weight of shape ({3 * embed}, {embed}), "
                             f"got {got}")
        if query is key and key is value:
            q, k, v = ops.split(F.linear(query, in_proj_weight, in_proj_bias), 3, -1)
        else:
            ws = ops.split(in_proj_weight, 3, 0)
            bs = [None] * 3 if in_proj_bias is None else ops.split(in_proj_bias, 3, 0)
            q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), ws, bs))
    else:
        bs = [None] * 3 if in_proj_bias is None else ops.split(in_proj_bias, 3, 0)
        q, k, v = (F.linear(t, w, b) for t, w, b in zip(
            (query, key, value), (q_proj_weight, k_proj_weight, v_proj_weight), bs))

    extra = 0  # keys and values appended to the inputs' n_k
    if (bias_k is None) != (bias_v is None):
        raise ValueError(f"{op}: give both bias_k and bias_v, or neither")
    if bias_k is not None:
        for b, what in ((bias_k, "bias_k"), (bias_v, "bias_v")):
            if b.ndim > 3 or b.numel() != embed or b.shape[-1] != embed:
                raise ShapeError(f"{op}: expected {what} of shape (1, 1, {embed}) (or "
                                 f"({embed},), as PyTorch repeats it), got {tuple(b.shape)}")
        bias_k, bias_v = (ops.reshape(b, (1, 1, embed)) for b in (bias_k, bias_v))
        k = ops.concatenate([k, ops.broadcast_to(bias_k, (1, batch, embed))], 0)
        v = ops.concatenate([v, ops.broadcast_to(bias_v, (1, batch, embed))], 0)
        extra += 1

    def heads(t, n):  # (n, N, E) -> (N, heads, n, d)
        return ops.transpose(ops.reshape(t, (n, batch, num_heads, d)), (1, 2, 0, 3))

    q, k, v = heads(q, n_q), heads(k, n_k + extra), heads(v, n_k + extra)
    for t, what in ((static_k, "static_k"), (static_v, "static_v")):
        if t is None:
            continue
        if bias_k is not None:
            raise ValueError(f"{op}: bias_k/bias_v cannot be added to a {what}")
        if t.ndim != 3 or t.shape[0] != batch * num_heads or t.shape[2] != d:
            raise ShapeError(f"{op}: expected {what} of shape ({batch * num_heads}, S, {d}), "
                             f"got {tuple(t.shape)}")
        t = ops.reshape(t, (batch, num_heads, t.shape[1], d))
        if what == "static_k":
            k = t
        else:
            v = t
    if k.shape[2] != v.shape[2]:
        raise ShapeError(f"{op}: {k.shape[2]} keys but {v.shape[2]} values")
    n_k = k.shape[2] - extra
    if add_zero_attn:
        zero = zeros(batch, num_heads, 1, d, dtype=k.dtype, device=k.device)
        k, v = ops.concatenate([k, zero], 2), ops.concatenate([v, zero], 2)
        extra += 1
    bias = None
    if attn_mask is not None:
        m = _mask_bias(attn_mask, q, masked_when=True)
        if tuple(m.shape) == (batch * num_heads, n_q, n_k):
            m = ops.reshape(m, (batch, num_heads, n_q, n_k))
        elif tuple(m.shape) != (n_q, n_k):
            raise ShapeError(f"{op}: expected attn_mask of shape ({n_q}, {n_k}) or "
                             f"({batch * num_heads}, {n_q}, {n_k}), got {tuple(m.shape)}")
        bias = m
    elif is_causal:
        bias = _causal_bias(n_q, n_k, q)
    if key_padding_mask is not None:
        m = _mask_bias(key_padding_mask, q, masked_when=True)
        if tuple(m.shape) != (batch, n_k):
            raise ShapeError(f"{op}: expected key_padding_mask of shape ({batch}, {n_k}), got "
                             f"{tuple(m.shape)}")
        m = ops.reshape(m, (batch, 1, 1, n_k))
        bias = m if bias is None else bias + m
    if bias is not None and extra:  # the appended keys may be attended from every query
        pad = zeros(*(tuple(bias.shape[:-1]) + (extra,)), dtype=bias.dtype, device=bias.device)
        bias = ops.concatenate([bias, pad], -1)
    p = dropout_p if training else 0.0
    out, w = _attend(q, k, v, bias, p, 1.0 / math.sqrt(d), generator)           # (N, h, L, d)
    out = ops.reshape(ops.transpose(out, (2, 0, 1, 3)), (n_q, batch, embed))
    out = F.linear(out, out_proj_weight, out_proj_bias)
    if not need_weights:
        w = None
    elif average_attn_weights:
        w = ops.mean(w, axis=1)
    if not batched:
        out = ops.reshape(out, (n_q, embed))
        if w is not None:
            w = ops.reshape(w, w.shape[1:])
    return out, w


def multi_head_attention_forward(
        query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
        in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None,
        bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor,
        out_proj_bias: Tensor | None, training: bool = True, key_padding_mask=None,
        need_weights: bool = True, attn_mask=None, use_separate_proj_weight: bool = False,
        q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
        v_proj_weight: Tensor | None = None, static_k: Tensor | None = None,
        static_v: Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
    """``torch.nn.functional.multi_head_attention_forward``: :func:`multi_head_attention`
    with PyTorch's positional signature. ``embed_dim_to_check`` must be the query's last
    dimension; the separate projection weights are read only with
    ``use_separate_proj_weight``; ``is_causal`` is a hint that needs ``attn_mask`` (as in
    PyTorch)."""
    op = "multi_head_attention_forward"
    if query.shape[-1] != embed_dim_to_check:
        raise ShapeError(f"{op}: expected a query of embed_dim {embed_dim_to_check}, got "
                         f"{query.shape[-1]}")
    if is_causal and attn_mask is None:
        raise RuntimeError(f"{op}: is_causal is a hint for a given causal attn_mask; pass the "
                           "mask too")
    if use_separate_proj_weight:
        if q_proj_weight is None or k_proj_weight is None or v_proj_weight is None:
            raise ValueError(f"{op}: use_separate_proj_weight=True needs q_proj_weight, "
                             "k_proj_weight and v_proj_weight")
    else:
        q_proj_weight = k_proj_weight = v_proj_weight = None
    return multi_head_attention(
        query, key, value, num_heads, in_proj_weight, in_proj_bias, out_proj_weight,
        out_proj_bias, key_padding_mask=key_padding_mask, need_weights=need_weights,
        attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
        dropout_p=dropout_p, training=training, q_proj_weight=q_proj_weight,
        k_proj_weight=k_proj_weight, v_proj_weight=v_proj_weight, bias_k=bias_k, bias_v=bias_v,
        add_zero_attn=add_zero_attn, static_k=static_k, static_v=static_v)
