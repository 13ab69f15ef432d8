"""Self-attention as one primitive (``ops.attention``, what ``scaled_dot_product_attention``
takes without a mask or dropout): its numba loops over (batch, head) units, half of them on
OpenBLAS's worker, give the NumPy form's bits (forward and VJP, strided views, causal or not,
NaN and infinities), so eager code has the same bits with numba and without, the raw VJP the
rules' bits, and a jitted step eager's; layouts the loops do not take go to the NumPy form."""

import numpy as np
import pytest

pytest.importorskip("numba")

import nodegrad as ng  # noqa: E402
from nodegrad import _backend as B  # noqa: E402
from nodegrad.primitive import REGISTRY  # noqa: E402
from tests._threads import at_once  # noqa: E402
from tests.test_backend import jitted_training_equals_eager  # noqa: E402


@pytest.fixture
def loops(monkeypatch):
    """A function that turns the numba loops on (True) or off (False); found afresh, so the
    first use's check runs."""
    import numba  # noqa: F401 - loaded, as eager training or a compiled program loads it

    monkeypatch.setattr(B._Attention, "looked", False)
    monkeypatch.setattr(B._Attention, "sgemm", 0)

    def turn(on: bool) -> None:
        monkeypatch.setattr(B, "_kernels", None if on else False)
        assert (B.cpu_kernels() is not None) == on

    turn(True)
    q = np.ones((2, 2, 64, 64), np.float32)
    if B.attention(q, q, q, 0.5, True) is None:
        pytest.skip("NumPy's OpenBLAS does not export an ILP64 cblas_sgemm")
    return turn


def _qkv(shape, seed=0, special=False):
    """q, k, v as views of one (..., L, 3·heads·E) projection, split and put heads first, as a
    GPT block makes them (4-D shapes), or plain arrays (3-D); ``special``: NaN, ±inf and large
    values in some rows."""
    rng = np.random.default_rng(seed)
    if len(shape) == 4:
        b, h, n, e = shape
        x = rng.standard_normal((b, n, 3 * h * e)).astype(np.float32)
        q, k, v = (z.reshape(b, n, h, e).transpose(0, 2, 1, 3) for z in np.split(x, 3, axis=2))
    else:
        q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    if special:
        q[(0,) * (q.ndim - 2) + (1, 0)] = np.nan
        k[(0,) * (k.ndim - 2) + (3, 1)] = np.inf
        q[(0,) * (q.ndim - 2) + (5,)] = 3e4
    return q, k, v


SHAPES = [(12, 4, 64, 32), (3, 2, 64, 24), (8, 48, 16), (2, 130, 8)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("special", [False, True])
def test_the_loops_give_the_numpy_forms_bits(loops, shape, causal, special):
    q, k, v = _qkv(shape, 1, special)
    rng = np.random.default_rng(2)
    g = rng.standard_normal(q.shape[:-3] + (q.shape[-2],) + q.shape[-3:-2] + q.shape[-1:]
                            if q.ndim == 4 else q.shape).astype(np.float32)
    if q.ndim == 4:  # the cotangent of y.transpose(1, 2): a transposed view
        g = g.transpose(0, 2, 1, 3)
    for scale in (0.125, 0.61):
        y, d = B.attention(q, k, v, scale, causal), B.attention_grad(g, q, k, v, scale, causal)
        assert y is not None and d is not None
        want_y = B.attention_form(np, q, k, v, scale, causal)
        want_d = B.attention_form(np, q, k, v, scale, causal, g)
        assert y.tobytes() == want_y.tobytes() and d.tobytes() == want_d.tobytes()
        assert np.isnan(y).any() == special


@pytest.mark.parametrize("on", [True, False], ids=["loops", "numpy-form"])
def test_results_are_laid_out_as_the_queries_as_pytorchs(loops, on):
    """The output and the gradients follow the queries' memory order, as PyTorch's: heads split
    from one projection give a y whose ``transpose(1, 2).contiguous()`` is free and gradients
    whose reshape back to the projection's width is a view (the strides PyTorch gives for the
    same model), with the bits of contiguous inputs; contiguous queries give contiguous
    results. The same with the loops and with the NumPy form."""
    torch = pytest.importorskip("torch")
    F = ng.nn.functional
    loops(on)
    x = np.random.default_rng(3).standard_normal((3, 64, 3 * 4 * 16)).astype(np.float32)
    g = np.random.default_rng(4).standard_normal((3, 4, 64, 16)).astype(np.float32)

    def heads(lib, t):
        q, k, v = t.split(64, dim=2)
        return [z.view(3, 64, 4, 16).transpose(1, 2) for z in (q, k, v)]

    qkv = ng.tensor(x, requires_grad=True)
    q, k, v = heads(ng, qkv)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads = ng.autograd.grad(y, [q, k, v], ng.tensor(g))
    tq, tk, tv = heads(torch, torch.tensor(x, requires_grad=True))
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    tgrads = torch.autograd.grad(ty, [tq, tk, tv], torch.tensor(g))
    assert y.stride() == ty.stride() == (4096, 16, 64, 1)
    assert [d.stride() for d in grads] == [d.stride() for d in tgrads]
    assert y.transpose(1, 2).is_contiguous() and grads[0].transpose(1, 2).is_contiguous()
    plain = [ng.tensor(np.ascontiguousarray(t.numpy()), requires_grad=True) for t in (q, k, v)]
    yc = F.scaled_dot_product_attention(*plain, is_causal=True)
    assert yc.is_contiguous() and y.numpy().tobytes() == yc.numpy().tobytes()
    for d, dc, td in zip(grads, ng.autograd.grad(yc, plain, ng.tensor(g)), tgrads):
        assert dc.is_contiguous() and d.numpy().tobytes() == dc.numpy().tobytes()
        np.testing.assert_allclose(d.numpy(), td.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("on", [True, False], ids=["loops", "numpy-form"])
def test_broadcast_queries_give_contiguous_results_with_the_bits_of_copies(loops, on):
    """Queries expanded along the batch (stride 0) give C-ordered results (a broadcast axis is
    laid out outermost), with the bits of the same attention on copies, forward and VJP."""
    F = ng.nn.functional
    loops(on)
    rng = np.random.default_rng(6)
    q1 = ng.tensor(rng.standard_normal((1, 2, 64, 16)).astype(np.float32), requires_grad=True)
    k, v = (ng.tensor(rng.standard_normal((8, 2, 64, 16)).astype(np.float32),
                      requires_grad=True) for _ in range(2))
    q = q1.expand(8, 2, 64, 16)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    qc = ng.tensor(np.ascontiguousarray(q.numpy()), requires_grad=True)
    yc = F.scaled_dot_product_attention(qc, k, v, is_causal=True)
    assert y.is_contiguous() and y.numpy().tobytes() == yc.numpy().tobytes()
    g = ng.tensor(rng.standard_normal(y.shape).astype(np.float32))
    d = ng.autograd.grad(y, [q, k, v], g)
    dc = ng.autograd.grad(yc, [qc, k, v], g)
    assert all(a.is_contiguous() and a.numpy().tobytes() == b.numpy().tobytes()
               for a, b in zip(d, dc))


def test_one_blas_thread_and_many_threads_give_the_same_bits(loops):
    """Units split with OpenBLAS's worker, on one thread (OpenBLAS set to one), and from four
    threads at once: the same bits."""
    from threadpoolctl import threadpool_limits

    q, k, v = _qkv((12, 4, 64, 32), 3)
    want = B.attention(q, k, v, 0.2, True), B.attention_grad(q, q, k, v, 0.2, True)
    with threadpool_limits(1):
        one = B.attention(q, k, v, 0.2, True), B.attention_grad(q, q, k, v, 0.2, True)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, want))
    got = [None] * 4

    def run(i):
        for _ in range(10):
            got[i] = B.attention(q, k, v, 0.2, True), B.attention_grad(q, q, k, v, 0.2, True)

    errors, stuck = at_once(run, 4, timeout=120)
    assert not errors and not stuck
    for pair in got:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(pair, want))


def test_other_arrays_go_to_the_numpy_form(loops):
    """float64, small, unit-stride-less or mixed shapes: None (the NumPy form runs)."""
    q, k, v = _qkv((4, 2, 64, 32))
    assert B.attention(q, k, v, 0.5, False) is not None
    assert B.attention(*(a.astype(np.float64) for a in (q, k, v)), 0.5, False) is None
    assert B.attention(q[:1, :1, :8], k[:1, :1, :8], v[:1, :1, :8], 0.5, False) is None
    wide = np.ones((4, 2, 64, 64), np.float32)[..., ::2]  # a row of stride 2
    assert B.attention(wide, k, v, 0.5, False) is None
    assert B.attention(q, k[:, :, :32], v, 0.5, False) is None
    assert B.attention(q[..., None, :, :], k[..., None, :, :], v[..., None, :, :], 0.5,
                       False) is None  # 5-D
    assert B.attention_grad(v, q, k, v, 0.5, False) is None  # g v^T a syrk in NumPy's matmul
    assert B.attention_grad(v.copy(), q, k, v, 0.5, False) is not None
    loops(False)
    assert B.attention(q, k, v, 0.5, False) is None


def _sdpa_grads(q, k, v, g, causal):
    ts = [ng.tensor(a, requires_grad=True) for a in (q, k, v)]
    y = ng.nn.functional.scaled_dot_product_attention(*ts, is_causal=causal)
    assert y.node.prim.name == "attention"
    (y * ng.tensor(g)).sum().backward()
    return [a.tobytes() for a in [y.numpy()] + [t.grad.numpy() for t in ts]]


@pytest.mark.parametrize("causal", [False, True])
def test_eager_values_and_gradients_are_the_same_with_and_without_numba(loops, causal):
    q, k, v = _qkv((6, 4, 64, 16), 4)
    g = np.random.default_rng(5).standard_normal(q.shape).astype(np.float32)
    runs = []
    for on in (True, False):
        loops(on)
        runs.append(_sdpa_grads(q, k, v, g, causal))
    assert runs[0] == runs[1]


def test_the_raw_vjp_gives_the_rules_bits(loops, monkeypatch):
    q, k, v = _qkv((6, 4, 64, 16), 6)
    g = np.random.default_rng(7).standard_normal(q.shape).astype(np.float32)
    raw = _sdpa_grads(q, k, v, g, True)
    monkeypatch.setattr(REGISTRY["attention"], "vjp_raw", None)
    assert _sdpa_grads(q, k, v, g, True) == raw


def test_the_torch_values_in_float32(loops):
    torch = pytest.importorskip("torch")
    q, k, v = _qkv((6, 4, 64, 16), 8)
    g = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    y = torch.nn.functional.scaled_dot_product_attention(*ts, is_causal=True)
    y.backward(torch.tensor(g))
    ours = _sdpa_grads(q, k, v, g, True)
    for got, want in zip(ours, [y.detach().numpy()] + [t.grad.numpy() for t in ts]):
        np.testing.assert_allclose(np.frombuffer(got, np.float32).reshape(want.shape), want,
                                   rtol=1e-4, atol=2e-6)


class _Block(ng.nn.Module):
    """Each example a sequence of 64 tokens of width 16, four heads of causal attention."""

    def __init__(self):
        super().__init__()
        self.inp, self.qkv = ng.nn.Linear(30, 64 * 16), ng.nn.Linear(16, 48)
        self.out = ng.nn.Linear(64 * 16, 3)

    def forward(self, x):
        q, k, v = self.qkv(self.inp(x).view(-1, 64, 16)).split(16, dim=-1)
        q, k, v = (z.view(-1, 64, 4, 4).transpose(1, 2) for z in (q, k, v))
        y = ng.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(-1, 64 * 16))


def test_a_jitted_attention_model_equals_eager(loops):
    ng.manual_seed(0)
    jitted_training_equals_eager(_Block(), ng.optim.AdamW, steps=3, lr=1e-2)


def test_second_order_through_the_rules():
    """A gradient of a gradient (create_graph) takes the composite's rules: finite differences
    agree in float64."""
    rng = np.random.default_rng(11)
    q, k, v = (ng.tensor(rng.standard_normal((2, 5, 3)), requires_grad=True) for _ in range(3))
    assert ng.gradcheck(lambda a, b, c: ng.nn.functional.scaled_dot_product_attention(
        a, b, c, is_causal=True), q, k, v, order=2)


def test_shapes_the_primitive_does_not_take_are_refused_by_name():
    for shapes in (((2, 3), (2, 4), (2, 3)), ((3,), (3,), (3,))):
        with pytest.raises(ng.errors.ShapeError, match="attention: expected queries, keys"):
            ng.attention(*[ng.ones(s) for s in shapes], scale=1.0, causal=False)
