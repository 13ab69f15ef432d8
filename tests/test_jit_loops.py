"""jit's compiled GRU loops (nodegrad/jit/loops.py): each kernel against eager's primitive on
shapes that exercise its edges (one unit, the largest compiled hidden size, batches that are not
a multiple of the vector width, one step, reversed directions, batch-major states, strided
inputs), within the fused tolerance; a GRU trained under jit against eager; and the layers the
kernels leave to eager (float64, wide hidden sizes, no numba) keep eager's bits."""

import importlib

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.jit import fuse as F

pytest.importorskip("numba")
L = importlib.import_module("nodegrad.jit.loops")
ops_nn = importlib.import_module("nodegrad.ops.nn")


def _close(got, want, what=""):
    """Within 1e-6 of the array's scale, the fused kernels' tolerance in float32."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert np.isfinite(got).all(), what
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale, err_msg=what)


class _Instr:
    def __init__(self, name, params):
        self.name, self.params = name, params


def _forms(n_dir, n_h, reverse, batch_major=False):
    """The three compiled replay functions of one layer's loops."""
    return (L._compiled(_Instr("gru_scan_loop", {"reverse": reverse}), n_h, n_dir),
            L._compiled(_Instr("gru_scan", {"reverse": reverse, "batch_major": batch_major}),
                        n_h, n_dir),
            L._compiled(_Instr("gru_scan_grad", {"reverse": reverse, "wgrad": True}), n_h,
                        n_dir))


def _layer(rng, n_dir, n_h, steps, batch):
    f = np.float32
    gi = rng.standard_normal((n_dir, 3 * n_h, steps, batch)).astype(f)
    w = (rng.standard_normal((n_dir, 3 * n_h, n_h)) / np.sqrt(n_h)).astype(f)
    b = (rng.standard_normal((n_dir, 3 * n_h)) * 0.5).astype(f)
    h0 = (rng.standard_normal((n_dir, batch, n_h)) * 0.5).astype(f)
    return gi, w, b, h0


SHAPES = [  # (directions, hidden, steps, batch)
    (2, 6, 40, 100), (1, 1, 5, 3), (2, L.MAX_HIDDEN, 7, 17), (1, 3, 1, 33), (2, 2, 3, 1)]


@pytest.mark.parametrize("n_dir,n_h,steps,batch", SHAPES)
def test_kernels_match_the_eager_primitives(n_dir, n_h, steps, batch):
    rng = np.random.default_rng(n_h * 100 + steps)
    gi, w, b, h0 = _layer(rng, n_dir, n_h, steps, batch)
    reverse = (False, True)[:n_dir] if n_dir == 2 else ()
    fwd, states, grad = _forms(n_dir, n_h, reverse)
    want = ops_nn._gru_loop_fwd(np, gi, w, b, h0, reverse)
    got = fwd(gi, w, b, h0)
    _close(got, want, "loop")
    _close(states(gi, w, b, h0, got),
           ops_nn._gru_scan_fwd(np, gi, w, b, h0, want, reverse), "states")
    g = rng.standard_normal((steps, batch, n_dir, n_h)).astype(np.float32)
    want_g = ops_nn._gru_scan_grad_fwd(np, g, want, w, reverse)
    got_g = grad(g, got, w)
    sizes = [gi.size, w.size, b.size, h0.size]
    start = 0
    for name, size in zip(("gi", "w", "b", "h0"), sizes):
        _close(got_g[start:start + size], want_g[start:start + size], f"d{name}")
        start += size


def test_strided_inputs_batch_major_states_and_no_weight_gradient():
    rng = np.random.default_rng(3)
    n_dir, n_h, steps, batch = 2, 5, 6, 20
    gi, w, b, h0 = _layer(rng, n_dir, n_h, steps, batch)
    gi = np.ascontiguousarray(gi.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # (T, N) swapped
    reverse = (True, False)
    fwd, states, _ = _forms(n_dir, n_h, reverse, batch_major=True)
    loop = fwd(gi, w, b, h0)
    _close(loop, ops_nn._gru_loop_fwd(np, gi, w, b, h0, reverse))
    out = states(gi, w, b, h0, loop)
    want = ops_nn._gru_scan_fwd(np, gi, w, b, h0, loop, reverse, batch_major=True)
    assert np.array_equal(out, want) and out.strides == want.strides  # a copy: exact
    g = rng.standard_normal((batch, steps, n_dir, n_h)).astype(np.float32).transpose(1, 0, 2, 3)
    nograd = L._compiled(_Instr("gru_scan_grad", {"reverse": reverse, "wgrad": False}), n_h,
                         n_dir)
    got = nograd(g, loop, w)
    ref = ops_nn._gru_scan_grad_fwd(np, g, loop, w, reverse, wgrad=False)
    start, end = gi.size, gi.size + w.size + b.size
    assert not got[start:end].any()
    _close(got[:start], ref[:start])
    _close(got[end:], ref[end:])


def _train(model, jit, steps=20, batch_first=False):
    head = nn.Linear(12, 10)
    opt = ng.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-2)

    def step(x, y):
        opt.zero_grad()
        out = model(x)[0]
        last = out[:, -1] if batch_first else out[-1]
        loss = nn.functional.cross_entropy(head(last), y)
        loss.backward()
        opt.step()
        return loss

    run = ng.jit(step, state=(model, head, opt)) if jit else step
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        shape = (16, 12, 3) if batch_first else (12, 16, 3)
        x = ng.tensor(rng.standard_normal(shape).astype(np.float32))
        losses.append(run(x, ng.tensor(rng.integers(0, 10, 16))).item())
    return losses, model, head, run


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_gru_trains_under_jit_as_eagerly(batch_first):
    def make():
        ng.manual_seed(0)
        return nn.GRU(3, 6, num_layers=2, bidirectional=True, batch_first=batch_first)

    le, me, he, _ = _train(make(), False, batch_first=batch_first)
    ng.manual_seed(0)
    lj, mj, hj, run = _train(make(), True, batch_first=batch_first)
    np.testing.assert_allclose(lj, le, rtol=1e-5)
    for a, b in zip(list(mj.parameters()) + list(hj.parameters()),
                    list(me.parameters()) + list(he.parameters())):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert run.program.counts()["compiled_loops"] == 6  # two layers, three loops each


def _grad_step(dtype, n_h):
    """A bidirectional GRU's parameter gradients as a pure function, and its arguments."""
    ng.manual_seed(1)
    layer = nn.GRU(3, n_h, bidirectional=True, dtype=dtype)
    names = [n for n, _ in layer.named_parameters()]

    def loss(*ps_x):
        out = nn.functional_call(layer, dict(zip(names, ps_x[:-1])), ps_x[-1])[0]
        return (out * out).sum()

    x = ng.tensor(np.random.default_rng(1).standard_normal((5, 4, 3)).astype(dtype))
    args = [p.detach() for p in layer.parameters()] + [x]
    return ng.grad(loss, argnums=tuple(range(len(names)))), args


def _keeps_eager_bits(dtype, n_h):
    f, args = _grad_step(dtype, n_h)
    want = [t.numpy() for t in f(*args)]
    jf = ng.jit(f)
    for _ in range(3):
        for a, b in zip(jf(*args), want):
            assert np.array_equal(a.numpy(), b)
    assert "compiled_loops" not in jf.program.counts()


@pytest.mark.parametrize("dtype,n_h", [("float64", 4), ("float32", L.MAX_HIDDEN + 1)])
def test_other_layers_keep_the_eager_loops_and_bits(dtype, n_h):
    _keeps_eager_bits(dtype, n_h)


def test_without_numba_the_loops_stay_eager(monkeypatch):
    monkeypatch.setattr(F, "_numba", None)
    _keeps_eager_bits("float32", 4)


def test_printed_program_counts_the_compiled_loops():
    f, args = _grad_step("float32", 4)
    jf = ng.jit(f)
    want = f(*args)
    for _ in range(2):
        for a, b in zip(jf(*args), want):
            _close(a.numpy(), b.numpy())
    assert jf.program.counts()["compiled_loops"] == 3
    names = [i.name for i in jf.program.instrs if "gru_scan" in i.name]
    assert names == ["gru_scan_loop", "gru_scan", "gru_scan_grad"]



def test_loops_import_numba_as_a_fused_group_does(monkeypatch):
    """Where numba is not imported yet, a GRU's loops still compile (their hundreds of NumPy
    calls a step repay numba's import), unlike a single slow op, which waits for it."""
    monkeypatch.setattr(F, "_numba_loaded", lambda: False)
    f, args = _grad_step("float32", 4)
    jf = ng.jit(f)
    jf(*args)
    assert jf.program.counts()["compiled_loops"] == 3
