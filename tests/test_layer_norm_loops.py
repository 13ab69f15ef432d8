"""Layer norm's loops (``_backend.layer_norm``, ``layer_norm_grads``): where numba is loaded, the
forward and the first-order VJP of host float arrays run as one pass over blocks of rows whose
sums follow NumPy's own reductions (a row's pairwise sum, the leading axes row by row), and give
the NumPy form's bits and the tensor rules' bits, over many row lengths, one or two normalised
axes, with and without the affine parameters, in float32 and float64, with constant rows, large
offsets, NaN and infinities; a jitted step equals eager."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import _backend as B
from tests.test_backend import jitted_training_equals_eager

N = importlib.import_module("nodegrad.ops.nn")

LENGTHS = (1, 2, 7, 8, 9, 64, 127, 128, 129, 256, 512, 768, 1000, 1025, 2048)
EPS = 1e-5


@pytest.fixture
def loops(monkeypatch):
    """A function that turns the numba loops on (True) or off (False)."""
    pytest.importorskip("numba")
    import numba  # noqa: F401 - loaded, as eager training or a compiled program loads it

    def turn(on: bool) -> None:
        monkeypatch.setattr(B, "_kernels", None if on else False)
        assert (B.cpu_kernels() is not None) == on

    return turn


def _tail(n: int, k: int) -> tuple:
    if k == 1:
        return (n,)
    a = next(d for d in (16, 8, 4, 2, 1) if n % d == 0)
    return (a, n // a)


def _case(n: int, k: int, dtype, seed: int):
    """An input whose rows normalise over ``n`` elements (``k`` axes), at least 1024 elements
    (the loops' minimum), some rows constant, offset by 1e4, or holding NaN and infinities."""
    rng = np.random.default_rng(seed)
    rows = max(3, -(-1100 // n)) if seed % 2 else max(3, -(-5000 // n))
    x = rng.standard_normal((rows, n))
    x[1] = 0.75  # a constant row: variance 0
    x[2] = x[2] * 1e-3 + 1e4  # a large offset
    if rows > 4 and n > 1:
        x[3, n // 2] = np.nan
        x[4, 0] = np.inf
    if rows > 6 and n > 1:
        x[5, :] = -np.inf
        x[6, -1] = 1e30
    x = x.astype(dtype)
    shape = (rows,) + _tail(n, k) if seed % 3 else (1, rows) + _tail(n, k)
    return x.reshape(shape), rng


def _same(a, b) -> bool:
    """Equal bits, NaN's payload aside (NumPy's and a loop's NaN may carry another sign)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = np.isnan(a)
    return bool((nan == np.isnan(b)).all()) and a[~nan].tobytes() == b[~nan].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2])
def test_loops_give_the_numpy_forms_and_the_rules_bits(loops, dtype, k):
    for i, n in enumerate(LENGTHS):
        x, rng = _case(n, k, dtype, i)
        tail = x.shape[x.ndim - k:]
        g = rng.standard_normal(x.shape).astype(dtype)
        for affine in ((None, None), ("w", None), (None, "b"), ("w", "b")):
            w, b = (None if a is None else rng.standard_normal(tail).astype(dtype)
                    for a in affine)
            loops(False)
            want = N._ln_fwd(np, x, w, b, k, EPS)
            grads = N._ln_raw((True, True, True), g, None, x, w, b, k, EPS)
            assert B.layer_norm(x, w, b, k, EPS) is None
            loops(True)
            assert B.layer_norm(x, w, b, k, EPS) is not None
            got = N._ln_fwd(np, x, w, b, k, EPS)
            assert _same(got, want), (n, k, affine)
            for needs in ((True, True, True), (True, False, False), (False, True, False),
                          (False, False, True)):
                raw = N._ln_raw(needs, g, None, x, w, b, k, EPS)
                # rows of one element: NumPy adds the leading axes pairwise (the NumPy form)
                assert (B.layer_norm_grads(needs, g, x, w, k, EPS) is None) == (n == 1)
                for j in range(3):
                    expect = grads[j] if needs[j] and (j != 1 or w is not None) else None
                    assert _same(raw[j], expect), (n, k, affine, needs, j)
        if n in (9, 512, 1025):  # the tensor rules (recorded ops), on the last affine case
            rules = N._ln_vjp((True, True, True), ng.tensor(g), None, ng.tensor(x),
                              ng.tensor(w), ng.tensor(b), k, EPS)
            raw = N._ln_raw((True, True, True), g, None, x, w, b, k, EPS)
            for a, r in zip(raw, rules, strict=True):
                assert _same(a, r.numpy()), (n, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_broadcast_cotangent_gives_the_numpy_forms_bits(loops, dtype):
    """``y.sum().backward()`` hands the VJP one value broadcast (strides 0): the loops read it
    in place and sum it as the NumPy form does."""
    for n in (128, 512, 1000):
        x, rng = _case(n, 1, dtype, 1)
        w = rng.standard_normal(n).astype(dtype)
        g = np.broadcast_to(dtype(1), x.shape)
        for wt in (None, w):
            loops(False)
            want = N._ln_raw((True, True, True), g, None, x, wt, None, 1, EPS)
            loops(True)
            assert B.layer_norm_grads((True, True, True), g, x, wt, 1, EPS) is not None
            got = N._ln_raw((True, True, True), g, None, x, wt, None, 1, EPS)
            for a, r in zip(got, want, strict=True):
                assert _same(a, r), n


def test_the_loops_leave_other_arrays_to_the_numpy_form(loops):
    """Small, transposed, mixed-dtype or mis-shaped inputs take the NumPy form (None)."""
    loops(True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    w = np.ones(128, np.float32)
    assert B.layer_norm(x, w, None, 1, EPS) is not None
    assert B.layer_norm(x[:4], w, None, 1, EPS) is None  # under 1024 elements
    assert B.layer_norm(np.asfortranarray(x), w, None, 1, EPS) is None
    assert B.layer_norm(x, w.astype(np.float64), None, 1, EPS) is None
    assert B.layer_norm(x, np.ones((1, 128), np.float32), None, 1, EPS) is None
    assert B.layer_norm(x, None, w[::-1], 1, EPS) is None  # a reversed view
    assert B.layer_norm(x, None, np.ones(256, np.float32)[::2], 1, EPS) is None
    assert B.layer_norm(x, None, None, 3, EPS) is None
    ro = x.copy()
    ro.flags.writeable = False  # read-only inputs are read in place
    assert _same(B.layer_norm(ro, w, w, 1, EPS), B.layer_norm(x, w, w, 1, EPS))
    needs = (True, True, True)
    assert B.layer_norm_grads(needs, x.copy(), x, w, 1, EPS) is not None
    assert B.layer_norm_grads(needs, np.asfortranarray(x), x, w, 1, EPS) is None
    assert B.layer_norm_grads(needs, x.astype(np.float64), x, w, 1, EPS) is None
    loops(False)
    assert B.layer_norm(x, w, None, 1, EPS) is None


def test_eager_forward_and_backward_equal_the_numpy_form(loops):
    """Through the public op: forward, and the gradients of x, weight and bias, bit for bit
    with the loops and without."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 64, 128)).astype(np.float32)
    w, b = (rng.standard_normal(128).astype(np.float32) for _ in range(2))
    g = rng.standard_normal(x.shape).astype(np.float32)
    runs = []
    for on in (False, True):
        loops(on)
        xs, ws, bs = (ng.tensor(a, requires_grad=True) for a in (x, w, b))
        y = ng.nn.functional.layer_norm(xs, (128,), ws, bs)
        (y * ng.tensor(g)).sum().backward()
        runs.append([a.tobytes() for a in (y.numpy(), xs.grad.numpy(), ws.grad.numpy(),
                                           bs.grad.numpy())])
    assert runs[0] == runs[1]


def test_a_jitted_layer_norm_model_with_the_loops_equals_eager(loops):
    loops(True)
    jitted_training_equals_eager(ng.nn.Sequential(
        ng.nn.Linear(30, 160), ng.nn.LayerNorm(160), ng.nn.GELU(), ng.nn.Linear(160, 3)),
        ng.optim.AdamW, steps=3, lr=1e-2)
    jitted_training_equals_eager(ng.nn.Sequential(
        ng.nn.Linear(30, 40), ng.nn.LayerNorm(40), ng.nn.Linear(40, 3)),
        ng.optim.AdamW, steps=3, lr=1e-2)
