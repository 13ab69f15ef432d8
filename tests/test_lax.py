"""nodegrad.lax: scan and fori_loop equal a Python loop; their VJP (a reverse scan), JVP and
batching rule match the loop's by finite differences in float64, PyTorch's GRU/LSTM, and jit
captures a loop as one instruction for the forward and one for the backward."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import lax, nn
from nodegrad.errors import DTypeError, JitError, ShapeError
from nodegrad.testing import gradcheck

from _opcases import graph_names

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 4)) * 0.5
XS = RNG.standard_normal((6, 3, 4))
H0 = RNG.standard_normal((3, 4))


def _cell(w):
    def f(h, x):
        h = ng.tanh(h @ w + x)
        return h, h * h
    return f


def _loop(f, init, xs, reverse=False):
    """The reference: the same body in a Python loop."""
    c, ys = init, [None] * xs.shape[0]
    order = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
    for t in order:
        c, ys[t] = f(c, xs[t])
    return c, ng.stack(ys)


def _close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.asarray(a.numpy()), np.asarray(b.numpy()), rtol=tol, atol=tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_python_loop(reverse):
    w, xs, h0 = ng.tensor(W), ng.tensor(XS), ng.tensor(H0)
    c, ys = lax.scan(_cell(w), h0, xs, reverse=reverse)
    c2, ys2 = _loop(_cell(w), h0, xs, reverse)
    _close(c, c2)
    _close(ys, ys2)
    assert ys.shape == (6, 3, 4)


def test_scan_trees_length_and_no_ys():
    xs = {"a": ng.tensor(XS), "b": ng.tensor(XS[:, 0])}

    def f(carry, x):
        h, n = carry
        return (h + x["a"].sum(0) * x["b"], n + 1.0), None

    (h, n), ys = lax.scan(f, (ng.zeros(4, dtype="float64"), ng.tensor(0.0, dtype="float64")), xs)
    assert ys is None and n.item() == 6.0
    np.testing.assert_allclose(h.numpy(), (XS.sum(1) * XS[:, 0]).sum(0))
    c, ys = lax.scan(lambda c, _: (c * 2.0, c), ng.tensor(1.0), None, length=4)
    assert c.item() == 16.0 and ys.numpy().tolist() == [1.0, 2.0, 4.0, 8.0]


def test_fori_loop():
    v = lax.fori_loop(0, 5, lambda i, v: v * 2 + i, ng.tensor(1.0, dtype="float64"))
    assert v.item() == 58.0  # 1 -> 2 -> 5 -> 12 -> 27 -> 58
    x = ng.tensor(2.0)
    assert lax.fori_loop(3, 3, lambda i, v: v * 0, x) is x
    with pytest.raises(TypeError, match="fori_loop: upper must be a Python int"):
        lax.fori_loop(0, 2.5, lambda i, v: v, x)


def test_scan_errors_name_the_problem():
    with pytest.raises(ShapeError, match="carry output 0 has shape"):
        lax.scan(lambda c, x: (ng.stack([c, c]), None), ng.zeros(3), ng.zeros((2, 3)))
    with pytest.raises(ShapeError, match="disagree"):
        lax.scan(lambda c, x: (c, None), ng.zeros(3), (ng.zeros((2, 3)), ng.zeros((4, 3))))
    with pytest.raises(JitError, match="scan: .*loop body"):
        lax.scan(lambda c, x: (c if x.sum() > 0 else -c, None), ng.zeros(3), ng.ones((2, 3)))
    with pytest.raises(JitError, match="random draw"):
        lax.scan(lambda c, x: (nn.functional.dropout(c, 0.5, True), None), ng.zeros(3),
                 ng.ones((2, 3)))
    with pytest.raises(DTypeError, match="share one dtype"):
        lax.scan(lambda c, x: (c, x), ng.zeros(3), ng.ones((2, 3), dtype="float64"))


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_gradcheck_float64(reverse):
    def f(w, xs, h0):
        c, ys = lax.scan(_cell(w), h0, xs, reverse=reverse)
        return c.sum() * 0.5 + ys.sum()

    gradcheck(f, W, XS, H0)
    gradcheck(f, W, XS[:3], H0, order=2)


def test_scan_vjp_equals_loop_vjp():
    w, xs, h0 = (ng.tensor(a, requires_grad=True) for a in (W, XS, H0))
    c, ys = lax.scan(_cell(w), h0, xs)
    (c.sum() + (ys * ys).sum()).backward()
    got = [t.grad.numpy() for t in (w, xs, h0)]
    for t in (w, xs, h0):
        t.grad = None
    c, ys = _loop(_cell(w), h0, xs)
    (c.sum() + (ys * ys).sum()).backward()
    for a, t in zip(got, (w, xs, h0)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_scan_jvp_equals_loop_jvp():
    t = tuple(RNG.standard_normal(a.shape) for a in (W, XS, H0))

    def via(loop):
        def f(w, xs, h0):
            c, ys = loop(_cell(w), h0, xs)
            return c, ys
        return ng.jvp(f, tuple(ng.tensor(a) for a in (W, XS, H0)), tuple(ng.tensor(a) for a in t))

    (c, ys), (tc, tys) = via(lax.scan)
    (c2, ys2), (tc2, tys2) = via(_loop)
    for a, b in ((c, c2), (ys, ys2), (tc, tc2), (tys, tys2)):
        _close(a, b)


def test_scan_vmap_equals_loop():
    ws = ng.tensor(RNG.standard_normal((5, 4, 4)) * 0.5)
    h0s = ng.tensor(RNG.standard_normal((5, 3, 4)))

    def f(w, h0):
        return lax.scan(_cell(w), h0, ng.tensor(XS))

    c, ys = ng.vmap(f)(ws, h0s)
    for k in range(5):
        c2, ys2 = _loop(_cell(ws[k]), h0s[k], ng.tensor(XS))
        _close(c[k], c2)
        _close(ys[k], ys2)
    # vmap over xs only (the batch axis of xs is not the time axis), and grad inside vmap
    xb = ng.tensor(RNG.standard_normal((2, 6, 3, 4)))
    c, ys = ng.vmap(lambda xs: lax.scan(_cell(ng.tensor(W)), ng.tensor(H0), xs))(xb)
    _close(ys[1], _loop(_cell(ng.tensor(W)), ng.tensor(H0), xb[1])[1])
    g = ng.vmap(ng.grad(lambda w, h0: lax.scan(_cell(w), h0, ng.tensor(XS))[0].sum()))(ws, h0s)
    g2 = ng.grad(lambda w: _loop(_cell(w), h0s[3], ng.tensor(XS))[0].sum())(ws[3])
    _close(g[3], g2)


def test_scan_float32_stays_float32():
    w, xs, h0 = (ng.tensor(a.astype(np.float32), requires_grad=True) for a in (W, XS, H0))
    c, ys = lax.scan(_cell(w), h0, xs)
    c.sum().backward()
    assert c.dtype == ys.dtype == w.grad.dtype == xs.grad.dtype == np.float32


def test_jit_scan_is_one_instruction_and_equals_eager():
    w = ng.tensor(W)

    def f(h0, xs):
        return lax.scan(_cell(w), h0, xs)

    jf = ng.jit(f, fuse=False)  # the body's passes alone change no bit
    h0, xs = ng.tensor(H0), ng.tensor(XS)
    for _ in range(2):
        (c, ys), (c2, ys2) = jf(h0, xs), f(h0, xs)
        assert np.array_equal(c.numpy(), c2.numpy()) and np.array_equal(ys.numpy(), ys2.numpy())
        xs = ng.tensor(XS[::-1].copy())
    names = [i.name for i in jf.program.instrs if i.kind == "op"]
    assert names.count("scan") == 1 and "tanh" not in names

    g = ng.jit(ng.grad(lambda w, h0, xs: lax.scan(_cell(w), h0, xs)[1].sum()), fuse=False)
    ge = ng.grad(lambda w, h0, xs: lax.scan(_cell(w), h0, xs)[1].sum())
    for _ in range(2):
        assert np.array_equal(g(w, h0, xs).numpy(), ge(w, h0, xs).numpy())
    names = [i.name for i in g.program.instrs if i.kind == "op"]
    assert names.count("scan") == 2 and "tanh" not in names  # forward, backward
    fwd, bwd = (i.fn.params["body"] for i in g.program.instrs if i.name == "scan")
    # the forward saves what the VJP reads, so the backward does not recompute the step
    assert "op tanh(" in str(fwd.program()) and "op tanh(" not in str(bwd.program())


def _jit_close(got, want):
    """Fused kernels may reorder arithmetic: 1e-6 relative in float32, 1e-12 in float64."""
    got, want = np.asarray(got.numpy()), np.asarray(want.numpy())
    tol = 1e-6 if want.dtype == np.float32 else 1e-12
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def _fused_ops(prog) -> int:
    return sum(len(i.group.members) for i in prog.instrs if i.kind == "fused")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_scan_fuses_its_body_and_equals_eager(dtype):
    pytest.importorskip("numba")
    w = ng.tensor(W.astype(dtype))
    b = ng.tensor(RNG.standard_normal(4).astype(dtype))

    def cell(h, x):
        h = ng.tanh(h @ w + x * 0.5 + b) * 0.9 + h * 0.1
        return h, ng.sigmoid(h) * h + 1.0

    def f(h0, xs):
        return lax.scan(cell, h0, xs)

    jf = ng.jit(f, fuse=True)
    h0, xs = ng.tensor(H0.astype(dtype)), ng.tensor(XS.astype(dtype))
    for _ in range(3):  # the carry and the stacked ys are new arrays on every call
        (c, ys), (c2, ys2) = jf(h0, xs), f(h0, xs)
        held = c.numpy().copy(), ys.numpy().copy()
        _jit_close(c, c2)
        _jit_close(ys, ys2)
        jf(ng.tensor(H0.astype(dtype) * 2), xs)  # a later call leaves these results alone
        assert np.array_equal(c.numpy(), held[0]) and np.array_equal(ys.numpy(), held[1])
        xs = ng.tensor(xs.numpy()[::-1].copy())
    (scan_i,) = [i for i in jf.program.instrs if i.name == "scan"]
    body = scan_i.fn.params["body"].program(scan_i.fn.params["fuse"])
    assert _fused_ops(body) >= 3 and "fused" in str(jf.program)

    loss = lambda w_, h0_, xs_: lax.scan(  # noqa: E731
        lambda h, x: (ng.tanh(h @ w_ + x) * 0.9 + h * 0.1, ng.sigmoid(h) * h), h0_, xs_)[1].sum()
    g, ge = ng.jit(ng.grad(loss, argnums=(0, 1, 2)), fuse=True), ng.grad(loss, argnums=(0, 1, 2))
    for _ in range(2):
        for a, e in zip(g(w, h0, xs), ge(w, h0, xs)):
            _jit_close(a, e)
    bodies = [i.fn.params["body"].program(True) for i in g.program.instrs if i.name == "scan"]
    assert len(bodies) == 2 and all(_fused_ops(p) >= 1 for p in bodies)


@pytest.mark.parametrize("mode", ["GRU", "LSTM", "RNN"])
def test_recurrent_layers_under_jit_use_one_scan(mode):
    ng.manual_seed(0)
    layer = getattr(nn, mode)(5, 7, num_layers=2, bidirectional=True)
    opt = ng.optim.SGD(layer.parameters(), lr=0.1)
    ng.manual_seed(0)
    twin = getattr(nn, mode)(5, 7, num_layers=2, bidirectional=True)
    opt2 = ng.optim.SGD(twin.parameters(), lr=0.1)

    def step(model, o, x):
        o.zero_grad()
        out = model(x)[0]
        loss = (out * out).mean()
        loss.backward()
        o.step()
        return loss

    jstep = ng.jit(lambda x: step(layer, opt, x), state=(layer, opt))
    for _ in range(3):
        x = ng.tensor(RNG.standard_normal((9, 4, 5)).astype(np.float32))
        a, b = jstep(x), step(twin, opt2, x)
        np.testing.assert_allclose(a.item(), b.item(), rtol=1e-5)
    for p, q in zip(layer.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    names = [i.name for i in jstep.program.instrs if i.kind == "op"]
    # per layer: the forward loop and its reverse loop (GRU: its own loop primitives)
    loops = ("gru_scan", "gru_scan_grad") if mode == "GRU" else ("scan", "scan")
    assert [n for n in names if n in loops] == [loops[0]] * 2 + [loops[1]] * 2
    assert names.count("tanh") == 0  # no step is unrolled into the outer program


@pytest.mark.parametrize("mode", ["GRU", "LSTM", "RNN"])
def test_recurrent_layers_with_fused_bodies_equal_eager_float64(mode):
    pytest.importorskip("numba")
    ng.manual_seed(1)
    layer = getattr(nn, mode)(5, 6, num_layers=1, dtype="float64")
    names = [n for n, _ in layer.named_parameters()]

    def loss(*ps_x):
        out = nn.functional_call(layer, dict(zip(names, ps_x[:-1])), ps_x[-1])[0]
        return (ng.tanh(out) * out).sum()

    argnums = tuple(range(len(names)))
    jl, el = ng.jit(ng.grad(loss, argnums=argnums), fuse=True), ng.grad(loss, argnums=argnums)
    ps = [p.detach() for p in layer.parameters()]
    for _ in range(2):
        x = ng.tensor(RNG.standard_normal((7, 3, 5)))
        for a, e in zip(jl(*ps, x), el(*ps, x)):
            _jit_close(a, e)
    if mode == "GRU":  # GRU's loops are primitives of their own, without a traced body (the
        # forward loop, the op that hands its states on, and the reverse loop)
        assert [i.name for i in jl.program.instrs if "gru_scan" in i.name] == [
            "gru_scan_loop", "gru_scan", "gru_scan_grad"]
        return
    scans = [i for i in jl.program.instrs if i.name == "scan"]
    assert len(scans) == 2 and all(i.fn.params["fuse"] for i in scans)
    assert any(_fused_ops(i.fn.params["body"].program(True)) for i in scans)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_jit_recurrent_matches_pytorch(mode):
    torch = pytest.importorskip("torch")
    tl = getattr(torch.nn, mode)(5, 6, num_layers=1, dtype=torch.float64)
    layer = getattr(nn, mode)(5, 6, num_layers=1, dtype="float64")
    layer.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in tl.state_dict().items()})
    x = RNG.standard_normal((7, 3, 5))

    jl = ng.jit(ng.grad(lambda *ps_x: nn.functional_call(
        layer, dict(zip([n for n, _ in layer.named_parameters()], ps_x[:-1])), ps_x[-1])[0]
        .square().sum(), argnums=tuple(range(4))))
    ps = [p.detach() for _, p in layer.named_parameters()]
    gs = jl(*ps, ng.tensor(x))
    xt = torch.tensor(x)
    (tl(xt)[0] ** 2).sum().backward()
    for g, (_, tp) in zip(gs, tl.named_parameters()):
        np.testing.assert_allclose(g.numpy(), tp.grad.numpy(), rtol=1e-10, atol=1e-10)
    names = [i.name for i in jl.program.instrs]
    assert names.count("scan") + names.count("gru_scan") + names.count("gru_scan_grad") == 2


def test_printed_program_shows_the_loop_body():
    w = ng.tensor(W)
    jf = ng.jit(lambda h0, xs: lax.scan(_cell(w), h0, xs))
    jf(ng.tensor(H0), ng.tensor(XS))
    text = str(jf.program)
    assert "op scan(" in text and "    |   %" in text and "tanh" in text


@pytest.mark.parametrize("mode,loop", [("GRU", "gru_scan"), ("LSTM", "scan")])
def test_recurrent_layer_scans_eagerly_but_steps_under_vmap(mode, loop):
    layer = getattr(nn, mode)(3, 4)
    x = ng.randn(5, 2, 3)
    out = layer(x)[0]
    assert out.node.prim.name != loop  # the outputs are sliced out of the loop's result
    names = graph_names([out])
    assert loop in names and "tanh" not in names
    per = ng.vmap(lambda xi: layer(xi)[0], in_axes=1, out_axes=1)(x)  # stepped, as before
    np.testing.assert_allclose(per.numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
