"""softmax and log_softmax over the last axis by numba's loops (nodegrad._backend's
softmax_last, log_softmax_last and their VJPs): the bits of the NumPy forms and of the VJP
rules, row sums in NumPy's pairwise order, for many row lengths and for -inf, NaN, inf and
large entries; eager with or without numba and jitted alike."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import _backend as B
from nodegrad.ops import nn as N

LENGTHS = (1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 136, 255, 256, 257, 1000, 4097)


@pytest.fixture
def kernels(monkeypatch):
    """The compiled loops (numba imported, as a training run imports it)."""
    pytest.importorskip("numba")
    monkeypatch.setattr(B, "_kernels", None)
    k = B.cpu_kernels()
    assert k is not None
    return k


def _numpy_form(monkeypatch, fn, *args):
    """``fn(*args)`` with the numba loops off: the NumPy forms."""
    with monkeypatch.context() as m:
        m.setattr(B, "_kernels", False)
        return fn(*args)


def _same_bits(got, want) -> bool:
    """The same shape, dtype and bytes, NaN anywhere matching NaN (whose payload the order
    of NaN operands in an add may change)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    nan = np.isnan(want)
    return bool((np.isnan(got) == nan).all()) and got[~nan].tobytes() == want[~nan].tobytes()


def _logits(rng, shape, dt, scale=4.0):
    x = rng.standard_normal(shape) * scale
    x *= np.exp(rng.uniform(-3, 3, shape))  # mixed magnitudes: the order of the adds shows
    return x.astype(dt)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_row_sums_are_numpys_reduce(kernels, dt):
    """row_sums adds each row as np.add.reduce over a contiguous last axis (pairwise), for
    every length up to 300 and long ones, mixed signs, -0.0 (an all -0.0 row sums to 0.0) and
    infinities."""
    rng = np.random.default_rng(0)
    zero = dt(0)
    for n in (*range(1, 301), 511, 512, 513, 1000, 1024, 1031, 4097, 8193, 20000):
        e = _logits(rng, (5, n), dt, 1e3)
        e[1, :: 3] = -0.0
        e[2, -1] = np.inf
        e[3] = -0.0
        s = np.empty(5, dt)
        kernels.row_sums(e.reshape(-1), s, n, zero)
        assert _same_bits(s, np.add.reduce(e, axis=1)), n
        assert _same_bits(s, np.sum(e.reshape(5, 1, n), axis=-1, keepdims=True).reshape(5)), n


def _cases(rng, dt):
    """(x, what) pairs: rows of many lengths, stacked shapes, and special values."""
    for n in LENGTHS:
        rows = max(2, -(-B.RELU_MIN_SIZE // n))
        x = _logits(rng, (rows, n), dt)
        yield x, f"{n}"  # up to NARROW_ROWS: the narrow form's order
        yield x.reshape(1, rows, n), f"{n}, 3-d"  # NumPy's pairwise order
    yield _logits(rng, (12, 4, 64, 64), dt), "attention"
    yield _logits(rng, (768, 65), dt), "loss"
    yield _logits(rng, (64, 32), dt), "narrow"
    yield _logits(rng, (128, 10), dt), "narrow 10"
    big = np.finfo(dt).max / 2
    x = _logits(rng, (48, 24), dt)
    x[:, 0] = big  # the maxima's sum overflows: the narrow form's general path
    yield x, "narrow, overflowing maxima"
    for shape in ((64, 32), (40, 65), (3, 8, 130), (1, 300, 5)):
        x = _logits(rng, shape, dt)
        f = x.reshape(-1, shape[-1])
        f[0, ::2] = -np.inf  # masked attention
        f[1] = -np.inf  # a fully masked row: NaN (softmax) as the NumPy form gives
        f[2, 3] = np.nan
        f[3, -1] = np.inf
        f[3, 1] = np.inf
        f[4, :2] = (np.inf, -np.inf)
        f[5] *= np.finfo(dt).max / 10  # large values
        f[6] = 0.0
        f[6, 1::2] = -0.0
        f[7, 0] = -0.0
        f[7, 1:] = -1e4
        f[8, 0] = np.nan  # where the running maxima start
        f[9, -1] = np.nan  # in the tail after the blocks of eight
        yield x, f"special {shape}"


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_forwards_give_the_numpy_forms_bits(kernels, monkeypatch, dt):
    rng = np.random.default_rng(1)
    for x, what in _cases(rng, dt):
        ax = x.ndim - 1
        if not N._narrow(x, ax):  # narrow rows: the transposed form, faster
            assert B.softmax_last(x, ax) is not None
        for fwd in (N._softmax_fwd, N._log_softmax_fwd):
            with np.errstate(all="ignore"):
                want = _numpy_form(monkeypatch, fwd, np, x, ax)
                got = fwd(np, x, ax)
            assert got.flags.c_contiguous and _same_bits(got, want), (fwd.__name__, what)


def test_the_loops_take_only_last_axis_c_ordered_float_arrays(kernels):
    rng = np.random.default_rng(2)
    x = _logits(rng, (64, 48), np.float32)
    assert B.softmax_last(x, 1) is not None
    for arr, ax in ((x, 0), (np.asfortranarray(x), 1), (x[:, ::2], 1), (x[:8], 1),
                    (x.astype(np.float16), 1)):
        assert B.softmax_last(arr, ax) is None
        assert B.log_softmax_last(arr, ax, N._log_pos) is None
    g = np.ones_like(x)
    assert B.softmax_last_grad(g, x, 0) is None
    assert B.softmax_last_grad(g.astype(np.float64), x, 1) is None
    assert B.log_softmax_last_grad(g[:, :1], x, 1) is None


def test_first_order_backward_takes_the_loops(kernels, monkeypatch):
    """A plain backward calls the VJP loops; one that records a graph does not (the rules)."""
    calls = []
    for name in ("softmax_last_grad", "log_softmax_last_grad"):
        fn = getattr(B, name)
        monkeypatch.setattr(B, name, lambda *a, fn=fn: calls.append(1) or fn(*a))
    x = _logits(np.random.default_rng(5), (4, 16, 64), np.float32)
    for op in (ng.softmax, ng.log_softmax):
        _grads(x, np.ones_like(x), op, False)
        _grads(x, np.ones_like(x), op, True)
    assert len(calls) == 2


def test_no_numba_no_loops(monkeypatch):
    monkeypatch.setattr(B, "_kernels", False)
    x = np.ones((64, 48), np.float32)
    assert B.softmax_last(x, 1) is None
    assert B.log_softmax_last_grad(x, x, 1) is None


def _grads(x, g, op, create_graph):
    t = ng.tensor(x, requires_grad=True)
    op(t, -1).backward(ng.tensor(g), create_graph=create_graph)
    return t.grad.numpy()


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_vjps_give_the_rules_bits(kernels, monkeypatch, dt):
    """The first-order backward (vjp_raw, in loops) against the rules (a backward that records
    a graph runs them) and against the backward without numba, with a C-ordered, a Fortran
    and a broadcast cotangent."""
    rng = np.random.default_rng(3)
    for x, what in _cases(rng, dt):
        if what.startswith("special"):
            x = np.where(np.isfinite(x), x, 0).astype(dt)  # gradients of finite rows
        g0 = rng.standard_normal(x.shape).astype(dt)
        for g in (g0, np.asfortranarray(g0), np.broadcast_to(g0[..., :1], x.shape)):
            for op, prim in ((ng.softmax, N._softmax), (ng.log_softmax, N._log_softmax)):
                ans = prim.fwd(np, x, x.ndim - 1)
                assert prim.vjp_raw((True,), g, ans, x, axis=x.ndim - 1) is not None
                with np.errstate(all="ignore"):
                    got = _grads(x, g, op, False)
                    want = _grads(x, g, op, True)
                    plain = _numpy_form(monkeypatch, _grads, x, g, op, False)
                assert _same_bits(got, want), (op.__name__, what)
                assert _same_bits(got, plain), (op.__name__, what)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("op", [ng.softmax, ng.log_softmax])
def test_jitted_steps_give_eager_bits(kernels, op, fuse):
    """A jitted forward and backward (the rules, replayed) against eager (the loops), on
    attention-like scores."""
    rng = np.random.default_rng(4)
    w = ng.tensor(rng.standard_normal((64, 64)).astype(np.float32))

    def loss(x):
        return (op(ng.matmul(x, w) * 0.125, -1) * w[0]).sum()

    def fwd(x):
        return op(ng.matmul(x, w) * 0.125, -1)

    g = ng.grad(loss)
    jg, jf = ng.jit(g, fuse=fuse), ng.jit(fwd, fuse=fuse)
    for _ in range(3):
        x = ng.tensor(_logits(rng, (4, 64, 64), np.float32, 1.0))
        assert _same_bits(jg(x).numpy(), g(x).numpy())
        assert _same_bits(jf(x).numpy(), fwd(x).numpy())
