"""jit's passes and fusion: CSE merges and respects in-place changes, constants fold, zero
buffers go, kept buffers never corrupt outputs or state, fused kernels match eager (bit for bit
without transcendental functions, else within 1e-6 relative in float32 and 1e-12 in float64) on
the op matrix and the zoo models, and without numba jit replays unfused."""

import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from _opcases import CASES, calls, drawn
from _zoo import train_step

import nodegrad as ng
from nodegrad import models
from nodegrad.jit import fuse as F

needs_numba = pytest.mark.skipif(F._get_numba() is None, reason="needs numba")
RTOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _close(got, want, what=""):
    """Within RTOL of eager, relative to each element or (near zero) to the array's scale."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if want.dtype.kind != "f":
        assert np.array_equal(got, want), what
        return
    rtol = RTOL.get(want.dtype, 1e-6)
    fin = np.isfinite(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), what
    assert np.array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)]), what
    scale = np.abs(want[fin]).max() if fin.any() else 0.0
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol * scale, err_msg=what)


def _leaves(out):
    return [o.numpy() if isinstance(o, ng.Tensor) else o for o in ng.tree_flatten(out)[0]]


def _check(f, *args, fuse=False, calls_=3):
    """jit(f) equals f on ``args`` for a few calls; bit for bit unless fused."""
    jf = ng.jit(f, fuse=fuse)
    for _ in range(calls_):
        got, want = _leaves(jf(*args)), _leaves(f(*args))
        for g, w in zip(got, want):
            assert _same(g, w) if not fuse else _close(g, w) is None
    return jf


# --- the passes -----------------------------------------------------------------------------
def test_cse_merges_the_same_op_on_the_same_inputs():
    def f(x, w):
        return ng.tanh(x @ w) * 2.0 + ng.tanh(x @ w) * 2.0

    jf = _check(f, ng.randn(4, 3), ng.randn(3, 5))
    c = jf.program.counts()
    assert c["cse"] == 3 and c["op"] == 4  # matmul, tanh, multiply, add


def test_cse_respects_in_place_changes():
    def f(x):
        y = x * 1.0
        a = y * 2.0
        b = y * 2.0  # the same op as a, but a changes below: b must keep its value
        a += 1.0
        y += 1.0
        c = y * 2.0  # y changed in between: not the same value as a or b
        return a, b, c

    jf = _check(f, ng.randn(3))
    assert "cse" not in jf.program.counts()


def test_constants_fold_and_zero_buffers_go():
    def f(x):
        c = ng.ones(3) * 2.0 + 1.0  # computed from constants only: folded once
        z = ng.zeros(3)  # a zero buffer that is only added to
        return (z + x * c) - ng.zeros(3)

    jf = _check(f, ng.randn(3))
    c = jf.program.counts()
    assert c["folded"] == 2 and c["zeros_dropped"] == 1  # g - zeros only: zeros + g keeps
    assert [i.name for i in jf.program.instrs] == ["multiply", "add"]  # -0.0's sign (+0.0)


def test_a_tensor_made_in_the_step_and_changed_in_place_starts_afresh():
    def f(x):
        h = ng.zeros(3)
        h += x
        h[0] = 5.0
        return h * 1.0

    jf = ng.jit(f)
    x = ng.randn(3)
    for _ in range(3):
        assert _same(jf(x).numpy(), f(x).numpy())


def test_kept_buffers_never_overwrite_returned_values():
    def f(x):
        h = ng.exp(x * 0.5)
        for _ in range(6):
            h = ng.tanh(h * 1.5 - 0.25) + h
        v = h.reshape(-1)  # a view of a result that is returned
        return v, h * 3.0, (h * h).sum()

    rng = np.random.default_rng(0)
    xs = [ng.tensor(rng.standard_normal((4, 5)).astype(np.float32)) for _ in range(4)]
    jf = ng.jit(f, fuse=False)
    kept = [(_leaves(jf(x)), _leaves(f(x))) for x in xs]
    for got, want in kept:  # earlier results are untouched by later calls
        for g, w in zip(got, want):
            assert _same(g, w)
    c = jf.program.counts()
    assert c["buffers"] >= 1 and c["reused"] >= 1 and c["in_place"] >= 1
    assert "->b" in str(jf.program) and "buffers:" in str(jf.program)


def test_kept_buffers_do_not_corrupt_training_state():
    from nodegrad import nn

    def run(jit):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 3))
        opt = ng.optim.Adam(model.parameters(), lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            loss = ng.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        s = ng.jit(step, state=(model, opt), fuse=False) if jit else step
        rng = np.random.default_rng(0)
        losses = [s(ng.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
                    ng.tensor(rng.integers(0, 3, 8))) for _ in range(6)]
        return [t.numpy() for t in losses], model, s

    le, me, _ = run(False)
    lj, mj, s = run(True)
    assert all(_same(a, b) for a, b in zip(le, lj))  # each returned loss kept its value
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n
    for a, b in zip(me.parameters(), mj.parameters()):
        assert _same(a.grad.numpy(), b.grad.numpy())
    assert s.program.plan.buffers


def test_accumulated_gradients_are_taken_without_a_copy_and_stay_intact():
    from nodegrad import nn

    def run(jit):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
        opt = ng.optim.Adam(model.parameters(), lr=1e-2)

        def step(x, y):
            loss = ng.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        s = ng.jit(step, state=(model, opt), fuse=False) if jit else step
        rng = np.random.default_rng(0)
        held, losses = [], []
        for _ in range(4):
            opt.zero_grad(set_to_none=True)
            losses.append(s(ng.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
                            ng.tensor(rng.integers(0, 3, 8))).numpy())
            held.append([(p.grad.data, p.grad.numpy().copy()) for p in model.parameters()])
        return losses, held, model, s

    le, he, me, _ = run(False)
    lj, hj, mj, s = run(True)
    assert s.program.counts().get("owned_grads", 0) >= 2
    assert all(_same(a, b) for a, b in zip(le, lj))
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n
    for call_e, call_j in zip(he, hj):  # a gradient taken over is never written by a later call
        for (_, want), (arr, snap) in zip(call_e, call_j):
            assert _same(arr, snap) and _same(arr, want)
    arrays = [arr for call in hj for arr, _ in call]
    assert len({id(a) for a in arrays}) == len(arrays)


def _per_example_norms():
    ng.manual_seed(0)
    sizes = (20, 64, 64, 5)
    p = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        p[f"w{i}"] = ng.randn(b, a) * (1 / a) ** 0.5
        p[f"b{i}"] = ng.zeros(b)

    def loss(p, x, y):
        h = x
        for i in range(3):
            h = ng.linear(h, p[f"w{i}"], p[f"b{i}"])
            h = ng.tanh(h) if i < 2 else h
        return -ng.where(ng.arange(5) == y, ng.log_softmax(h, axis=-1), 0.0).sum()

    pe = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))

    def norms(p, x, y):
        g = pe(p, x, y)
        return sum((v * v).sum() for v in g.values())

    rng = np.random.default_rng(0)
    x = ng.tensor(rng.standard_normal((128, 20)).astype(np.float32))
    y = ng.tensor(rng.integers(0, 5, 128))
    return norms, (p, x, y)


def test_a_replay_releases_dead_intermediates():
    import tracemalloc

    f, args = _per_example_norms()
    jf = _check(f, *args, fuse=False)
    prog = jf.program
    dels = [ln for lines in prog._releases().values() for ln in lines]
    assert len(dels) >= 5  # the per-example gradients and their squares are let go
    peaks = []
    for g in (jf, f):
        g(*args)
        tracemalloc.start()
        try:
            g(*args)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[0] <= peaks[1]


def _peak(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fuse", [False, True])
def test_a_trace_frees_what_eager_code_frees(fuse):
    """The trace holds the results of its operations weakly, so its first call peaks near
    eager's (a GPT step's went from 3x eager's to eager's); an array freed during the trace
    frees its id, which later results reuse, and the passes see its layout through a
    stand-in: the replays keep the eager bits (or fusion's tolerance)."""
    rng = np.random.default_rng(0)
    x = ng.tensor(rng.standard_normal((500, 400)).astype(np.float32))  # 0.8 MB
    w = ng.tensor(rng.standard_normal((400, 400)).astype(np.float32))
    n = x.numpy().nbytes

    def f(x, w):
        h = x
        for _ in range(20):  # 60 results of 0.8 MB; two or three alive at a time
            h = ng.tanh(h @ w.T * 0.05) + h
        return h.sum()

    g = ng.grad(f, argnums=(0, 1))
    g(x, w)
    eager = _peak(lambda: g(x, w))
    jg = ng.jit(g, fuse=fuse)
    first = _peak(lambda: jg(x, w))
    assert first < eager + 12 * n  # holding the 120 results of forward and backward: 96 MB
    for _ in range(3):
        for got, want in zip(jg(x, w), g(x, w)):
            assert _same(got.numpy(), want.numpy()) if not fuse else _close(got, want) is None
    x2 = ng.tensor(rng.standard_normal((500, 400)).astype(np.float32))
    for got, want in zip(jg(x2, w), g(x2, w)):
        assert _same(got.numpy(), want.numpy()) if not fuse else _close(got, want) is None


def test_stand_ins_have_the_layouts_and_no_memory():
    from nodegrad import _backend as B

    base = np.zeros((64, 2048), np.float32)
    arrays = {0: base, 1: base.T, 2: base[:, ::-2], 3: base[::-1][:0], 4: np.float64(2.0) * 1,
              5: np.zeros((3, 1, 5), np.int8)[:, :, 1:4]}
    layouts = {k: (np.asarray(a).shape, np.asarray(a).strides, np.asarray(a).dtype)
               for k, a in arrays.items()}
    layouts[6] = ((20_000, 20_000), (4, 80_000), np.dtype(np.float32))  # 1.6 GB, F-ordered
    got = _peak(lambda: B.stand_ins(layouts))
    assert got < 1 << 20
    ins = B.stand_ins(layouts)
    for k, (shape, strides, dtype) in layouts.items():
        v = ins[k]
        assert type(v) is np.ndarray and (v.shape, v.strides, v.dtype) == (shape, strides, dtype)
        if k in arrays:
            a = np.asarray(arrays[k])
            assert (v.flags.c_contiguous, v.flags.f_contiguous) == (
                a.flags.c_contiguous, a.flags.f_contiguous)
    assert ins[6].flags.f_contiguous and not ins[6].flags.c_contiguous
    assert float(ins[2].sum()) == 0.0  # readable, every element within the mapping


def test_a_result_laid_out_like_transposed_operands_gets_no_kept_buffer():
    def f(x):
        t = x.T
        return ((t * t) * 2.0).sum()

    x = ng.randn(300, 200)
    jf = _check(f, x, fuse=False)
    prog = jf.program
    sq = [i for i in prog.instrs if i.name == "multiply"][0]
    assert sq.out not in prog.plan.buf  # NumPy gives it the operands' (transposed) layout


def test_a_step_without_array_inputs_runs_on_its_states_backend():
    def run(jit):
        w = ng.tensor(np.linspace(-1.0, 1.0, 12).reshape(3, 4), requires_grad=True)
        opt = ng.optim.SGD([w], lr=0.1, momentum=0.9)

        def step():
            opt.zero_grad()
            loss = ((w * w) * 2.0 + w).sum()
            loss.backward()
            opt.step()
            return loss

        s = ng.jit(step, state=(w, opt), fuse=False) if jit else step
        return [s().numpy() for _ in range(4)], w.numpy(), s

    le, we, _ = run(False)
    lj, wj, s = run(True)
    assert all(_same(a, b) for a, b in zip(le, lj)) and _same(we, wj)
    assert s.program.backend is not None and s.program.plan is not None


def _in_threads(work, n: int) -> None:
    """``work(k)`` for k < n, each in a thread of its own, all started before any is joined."""
    ts = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in ts), "a thread did not finish within 60 s"


def test_a_second_thread_gets_its_own_buffers():
    jf = ng.jit(lambda x: ng.tanh(x * 2.0) * 3.0 + x, fuse=False)
    xs = [ng.randn(50, 50) for _ in range(2)]
    want = [(ng.tanh(x * 2.0) * 3.0 + x).numpy() for x in xs]
    jf(xs[0])
    jf(xs[0])
    bad = []

    def work(k):
        for _ in range(200):
            if not _same(jf(xs[k]).numpy(), want[k]):
                bad.append(k)

    _in_threads(work, 2)
    assert not bad


def test_threads_loading_at_once_write_and_import_each_kernel_once(tmp_path):
    """Eight threads loading the same new kernel sources at once (threads tracing in
    parallel): each file is written and imported once. Two threads of one process wrote the
    same temporary file, and the one whose rename came second failed, so its program ran
    unfused with a warning."""
    old, interval = F._cache_dir, sys.getswitchinterval()
    F.set_cache_dir(tmp_path)
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    sources = [f"def kernel():\n    return {k}\n" + "# padding\n" * 5000 for k in range(12)]
    start = threading.Barrier(8)
    got, errors = [], []

    def work(t):
        start.wait()
        for k, src in enumerate(sources):
            try:
                got.append((k, F._load(src)()))
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")

    try:
        _in_threads(work, 8)
    finally:
        F.set_cache_dir(old)
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert len(got) == 8 * len(sources) and all(v == k for k, v in got)
    assert len(list(tmp_path.glob("ngk_*.py"))) == len(sources)
    assert not list(tmp_path.glob(".*.tmp"))


def test_optimize_false_replays_the_trace_as_recorded():
    def f(x):
        return ng.exp(x) + ng.exp(x)

    jf = ng.jit(f, optimize=False)
    x = ng.randn(3)
    jf(x)
    assert [i.name for i in jf.program.instrs] == ["exp", "exp", "add"]
    assert _same(jf(x).numpy(), f(x).numpy())


# --- fusion ---------------------------------------------------------------------------------
@needs_numba
def test_arithmetic_chains_fuse_bit_for_bit():
    def f(x, b):
        h = ng.relu(x * 0.5 + b)
        return ng.where(h > 0.25, h * h - b, -h) / 3.0

    for dt in (ng.float32, ng.float64):
        x, b = ng.randn(40, 30, dtype=dt), ng.randn(30, dtype=dt)
        jf = ng.jit(f)
        for _ in range(3):
            assert _same(jf(x, b).numpy(), f(x, b).numpy())
        c = jf.program.counts()
        assert c["fused"] == 1 and c["fused_ops"] == 9 and "op" not in c
    text = str(jf.program)
    assert "fused" in text and "relu(" in text and "ops in one kernel" in text


@needs_numba
def test_kernels_over_whole_arrays_run_as_one_axis_in_any_layout():
    """Inputs of the kernel's shape (or all ones) let it loop over the elements as one axis; a
    transposed input is copied first, a (1, 1) one broadcast; the same bits as eager."""
    def f(x, y, s):
        h = (x * y + s) * 0.5 - y
        return h, ((x - s) * h).sum()

    for dt in (ng.float32, ng.float64):
        y, s = ng.randn(40, 30, dtype=dt), ng.randn(1, 1, dtype=dt)
        jf = ng.jit(f)
        for x in (ng.randn(40, 30, dtype=dt), ng.randn(30, 40, dtype=dt).T,
                  ng.randn(40, 30, dtype=dt)):
            (h, t), (eh, et) = jf(x, y, s), f(x, y, s)
            assert _same(h.numpy(), eh.numpy())
            _close(t, et)
        assert jf.program.counts()["fused"] == 1
    g = F.Group((40, 30), np.dtype(np.float32), [])
    one, full = ((1, 1), np.dtype(np.float32)), ((40, 30), np.dtype(np.float32))
    flat, specs, prologue, nd = F._flattened(g, [full, one, ((), np.dtype(np.float32))])
    assert flat.shape == (1200,) and [sp for sp, _ in specs] == [(1200,), (1,), ()]
    assert nd == 2 and len(prologue) == 2
    assert F._flattened(g, [full, ((30,), np.dtype(np.float32))])[3] is None  # broadcast rows


@needs_numba
def test_fused_gradients_match_within_tolerance():
    def loss(x, w, b):
        h = ng.tanh(x @ w + b)
        return (ng.sigmoid(h) * ng.exp(-h * h) + ng.relu(h)).sum()

    g = ng.value_and_grad(loss, argnums=(1, 2))
    jg = ng.jit(g)
    for dt in (ng.float32, ng.float64):
        x, w, b = ng.randn(8, 5, dtype=dt), ng.randn(5, 6, dtype=dt), ng.randn(6, dtype=dt)
        for _ in range(2):
            for a, e in zip(_leaves(jg(x, w, b)), _leaves(g(x, w, b))):
                _close(a, e)
        assert jg.program.counts().get("fused", 0) >= 2


def _kernels(jf) -> list:
    return [i for i in jf.program.instrs if i.kind == "fused"]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_after_a_convolution_loop_in_its_memory_order_with_the_eager_bits(dtype):
    """A convolution's result is laid out (N, L, C) in memory: the kernels of what is computed
    from it (relu, a broadcast scale, their gradients) loop in that order and lay their results
    out as NumPy did, so the convolutions that read them give the eager bits; a bias gradient
    that NumPy adds row by row is added in its kernel in that order (the same bits)."""
    from nodegrad.nn import functional as NF

    rng = np.random.default_rng(2)

    def t(*shape):
        return ng.tensor(rng.standard_normal(shape).astype(dtype))

    x, w1, b1, w2, b2, s = t(32, 3, 40), t(8, 3, 5), t(8), t(8, 8, 3), t(8), t(8, 1)

    def f(w1, b1, w2, b2, s):
        h = NF.relu(NF.conv1d(x, w1, b1, stride=2, padding=1)) * s
        h = NF.relu(NF.conv1d(h, w2, b2, stride=2, padding=1))
        return (h * h).sum()

    g = ng.grad(f, argnums=(0, 1, 2, 3, 4))
    jg = ng.jit(g, fuse=True)
    for _ in range(2):
        for got, want in zip(jg(w1, b1, w2, b2, s), g(w1, b1, w2, b2, s)):
            assert _same(got.numpy(), want.numpy())
    ks = _kernels(jg)  # (0, 2, 1): a convolution's result; (2, 0, 1): its input gradient's
    assert ks and all(k.group.perm in ((0, 2, 1), (2, 0, 1)) for k in ks)
    assert "loops in axis order (0, 2, 1)" in str(jg.program)
    assert any(k.group.layouts for k in ks)
    # the second layer's bias gradient (32 x 8 x 10 terms, NumPy's reduction eagerly) joined
    # the relu gradient's kernel after the convolution gradients had read that
    late = [k for k in ks if k.group.late]
    assert late and all(k.group.exact for k in late)
    assert not [i for i in jg.program.instrs if i.kind == "fused" and i.group.exact
                and not i.group.reduce]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_layers_bias_add_joins_its_activations_kernel_with_the_eager_bits(dtype):
    """With numba loaded, a ``linear`` read only by an op that joins a kernel (a ReLU) replays
    as the product alone and an ``add`` of the bias inside that kernel: a training step then
    gives eager's loss and parameters bit for bit. Each such product keeps the thread rule of
    its own shape; a layer whose output goes elsewhere (the loss), to two readers or to a
    transcendental op (whose kernel form has other bits than NumPy's) keeps its bias in place."""
    import numba  # noqa: F401  (the split waits for numba to be loaded)

    from nodegrad import _backend as B
    from nodegrad import nn
    from nodegrad.nn import functional as NF

    def run(jit):
        ng.manual_seed(0)
        a, b, d = nn.Linear(12, 128), nn.Linear(128, 128), nn.Linear(128, 16)
        e, c = nn.Linear(16, 16), nn.Linear(16, 5)
        model = nn.Sequential(a, b, d, e, c)
        for p in model.parameters():
            p.data = p.data.astype(dtype)
        opt = ng.optim.Adam(model.parameters(), lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            z = d(NF.relu(b(NF.relu(a(x)))))  # z: read by the ReLU and by the penalty
            loss = NF.cross_entropy(c(ng.tanh(e(NF.relu(z)))), y) + (z * z).mean() * 1e-3
            loss.backward()
            opt.step()
            return loss

        s = ng.jit(step, state=(model, opt), fuse=True) if jit else step
        rng = np.random.default_rng(1)
        losses = [s(ng.tensor(rng.standard_normal((32, 12)).astype(dtype)),
                    ng.tensor(rng.integers(0, 5, 32))).numpy() for _ in range(4)]
        return losses, model, s

    le, me, _ = run(False)
    lj, mj, sj = run(True)
    assert all(_same(x, y) for x, y in zip(lj, le))
    for x, y in zip(me.parameters(), mj.parameters()):
        assert _same(x.numpy(), y.numpy())
    prog = sj.program
    assert prog.stats.get("split_biases") == 2  # a's and b's
    assert sum(1 for k in _kernels(sj) if k.group.members[0].name == "add") == 2
    split = [i for i in prog.instrs if i.kind == "op" and i.name == "linear"
             and prog.consts.get(i.ins[2], 0) is None]
    forms = [i.fn.fast.__defaults__[0] for i in split]
    # both 4x wider than the batch: the transposed products (B.linear_product), F-ordered
    assert forms == [B.product_for(128, 12, 32), B.product_for(128, 128, 32)]


@needs_numba
@pytest.mark.parametrize("axis, keepdims", [((0, 1), True), ((0, 1), False), (1, False),
                                            (None, False), ((0, 2), True), (2, False)])
def test_kernels_on_permuted_arrays_with_broadcasts_and_sums(axis, keepdims):
    """Kernels over arrays laid out in another axis order, with inputs broadcast along some
    axes, 0-d ones and sums over any axes: eager's values (within the fused tolerance) and
    eager's layouts for the elementwise results."""
    rng = np.random.default_rng(8)
    x = ng.tensor(rng.standard_normal((6, 50, 9)).astype(np.float32))
    b = ng.tensor(rng.standard_normal((9, 1)).astype(np.float32))
    c = ng.tensor(np.float32(0.5))

    def f(x, b, c):
        x = x.permute(1, 2, 0)  # (50, 9, 6), its memory in axis order (2, 0, 1)
        t = x * b + c
        return (t * t - x).sum(axis=axis, keepdims=keepdims), ng.relu(t) * 2.0

    jf = _check(f, x, b, c, fuse=True)
    ks = _kernels(jf)
    assert ks and all(k.group.perm == (2, 0, 1) for k in ks)
    got, want = _leaves(jf(x, b, c)), _leaves(f(x, b, c))
    assert got[1].strides == want[1].strides and _same(got[1], want[1])
    # axis 1 is innermost in memory: a sum that keeps it adds in NumPy's order, with its bits
    (summing,) = [k for k in ks if k.group.reduce is not None]
    assert summing.group.exact == (axis in ((0, 2), 2))
    if summing.group.exact:
        assert _same(got[0], want[0])


@needs_numba
def test_a_kernel_writes_results_laid_out_otherwise_than_its_loops():
    """NumPy lays out ``where`` of a transposed and a C-ordered array in C order, while the
    kernel loops in the transposed one's order: its results, laid out as NumPy's, are written
    where they are (not into a one-axis copy), on every replay."""
    rng = np.random.default_rng(12)
    x = ng.tensor(rng.standard_normal((16, 33, 7)))
    b = ng.tensor(rng.standard_normal((7, 33, 16)))

    def f(x, b):
        t = x.permute(2, 1, 0) - 0.5
        t = ng.where(t > 0, t, b)
        return t * 2.0, t.reshape(-1)[:5] * 1.0, t.sum()

    jf = ng.jit(f, fuse=True)
    for _ in range(4):
        got, want = _leaves(jf(x, b)), _leaves(f(x, b))
        for g, w in zip(got, want):
            assert _close(g, w) is None
        assert got[0].strides == want[0].strides
    (k,) = _kernels(jf)
    assert k.group.perm is not None and k.group.layouts


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_sum_of_outer_axes_joins_its_kernel_late_with_numpys_bits(dtype):
    """A sum over the outer axes that NumPy adds row by row (few elements: no products with
    ones) is added in the kernel in the same order and dtype, from +0.0 as NumPy's (a column
    of -0.0 sums to +0.0): it joins the kernel even after a product has read its terms.
    A sum riding along so never makes a kernel of one op that is not worth one alone."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 50)).astype(dtype)
    x[:, 0] = -0.0
    x, y = ng.tensor(x), ng.tensor(np.abs(rng.standard_normal((40, 50))).astype(dtype))
    w = ng.tensor(rng.standard_normal((50, 7)).astype(dtype))

    def f(x, y):
        t = x * y + x
        return t @ w, t.sum(axis=0), t.sum(axis=0, keepdims=True)

    jf = ng.jit(f, fuse=True)
    for _ in range(2):
        for got, want in zip(_leaves(jf(x, y)), _leaves(f(x, y))):
            assert _same(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
    (k,) = _kernels(jf)
    assert k.group.reduce is not None and k.group.late and k.group.exact
    assert [i.name for i in jf.program.instrs if i.kind == "op"] == ["matmul", "sum"]

    def one(x):
        t = x * 2.0
        return t @ w, t.sum(axis=0)

    assert not _kernels(_check(one, x, fuse=True))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_full_sum_ends_a_fused_kernel_within_tolerance(dtype):
    rng = np.random.default_rng(3)

    def f(x, y):
        t = x * y + 0.25 * x
        return (t * t - y).sum(), t  # t is also returned: the kernel writes it and sums

    x = ng.tensor((rng.standard_normal((16, 20)) * 1e3).astype(dtype))
    y = ng.tensor(rng.standard_normal((16, 20)).astype(dtype))
    jf = _check(f, x, y, fuse=True)
    (k,) = _kernels(jf)
    assert k.group.reduce is not None and len(k.outs) == 2
    assert "= sum(" in str(jf.program) and jf.program.counts()["fused_ops"] == 6
    big = ng.tensor(rng.standard_normal((300, 300)).astype(dtype))
    jb = _check(lambda a: (a * a + a).sum(), big, fuse=True)  # only the sum leaves the kernel
    (k,) = _kernels(jb)
    assert k.group.reduce is not None and k.outs == tuple(jb.program.out_slots)
    assert not any(i.kind == "op" for i in jb.program.instrs)
    # a big sum whose kernel must also write its terms (exact arithmetic: no reassociation,
    # so one running sum) stays NumPy's pairwise sum
    jw = _check(lambda a: ((a * a + a).sum(), a * a + a), big, fuse=True)
    assert [i.name for i in jw.program.instrs if i.kind == "op"] == ["sum"]
    # ... but a sum over the outer axis adds whole rows (no running sum to split): it joins
    jp = _check(lambda a: ((a * a + a).sum(axis=0), a * a + a), big, fuse=True)
    (k,) = _kernels(jp)
    assert k.group.reduce is not None and len(k.outs) == 2 and "op" not in jp.program.counts()


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis, keepdims", [
    ((64, 30, 20), None, False), ((64, 30, 20), (1, 2), False), ((64, 30, 20), 0, False),
    ((64, 30, 20), (0, 2), True), ((64, 30, 20), -1, True), ((7, 5000), 1, False),
    ((3, 9000), None, True), ((300,), 0, False), ((256, 100), 0, False)])
def test_sums_over_axes_fuse_within_tolerance(dtype, shape, axis, keepdims):
    """A sum over any axes (bias gradients, per-example squared norms) ends the kernel of the
    elementwise work that feeds it, broadcast inputs included, for small and large sizes."""
    rng = np.random.default_rng(5)
    a = ng.tensor(rng.standard_normal(shape[:-1] + (1,)).astype(dtype))
    b = ng.tensor(rng.standard_normal(shape[-1:]).astype(dtype))
    c = ng.tensor(rng.standard_normal(shape).astype(dtype))

    def f(a, b, c):
        t = a * b + c
        return (t * t - 0.5 * c).sum(axis=axis, keepdims=keepdims)

    jf = _check(f, a, b, c, fuse=True)
    (k,) = _kernels(jf)
    assert k.group.reduce is not None and len(k.outs) == 1 and "op" not in jf.program.counts()
    assert all(spec[0] != shape for spec in jf.program.plan.buffers)  # no (shape) array kept


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sums_of_a_million_elements_are_accurate(dtype):
    """The kernel's blocked sums stay near the exact sum (math.fsum of float64 terms), about
    as close as NumPy's pairwise sum, on data with a large common offset (an error magnifier)."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(1 << 20) + 3.0).astype(dtype)
    y = rng.standard_normal((1024, 1024)).astype(dtype)
    cases = ((lambda v: v * v - v, None, x), (lambda v: v * 1.5 + 0.5, None, x),
             (lambda m: m * m, 1, y))
    for term, axis, a in cases:
        def f(v, term=term, axis=axis):
            return term(v).sum(axis=axis)

        jf = _check(f, ng.tensor(a), fuse=True)
        assert _kernels(jf)[0].group.reduce is not None
        got = jf(ng.tensor(a)).numpy().astype(np.float64)
        # the exact sum: of float64 terms (float32 data) or of the float64 terms, by fsum
        terms = term(ng.tensor(a.astype(np.float64))).numpy()
        exact = np.array([math.fsum(r) for r in terms.reshape(-1, terms.shape[-1])]) if (
            axis is not None) else math.fsum(terms)
        mine = np.max(np.abs(got - exact) / np.abs(exact))
        want = f(ng.tensor(a)).numpy().astype(np.float64)
        theirs = np.max(np.abs(want - exact) / np.abs(exact))
        # float32: rounding the float64-accurate sum once; float64: a few ulps of blocked sums
        ulps = 4 if dtype == np.float32 else 16
        assert mine <= max(2 * theirs, ulps * np.finfo(dtype).eps), (mine, theirs)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sums_propagate_nan_and_inf_as_numpy_does(dtype):
    x = np.ones((50, 200), dtype)
    x[3, 7] = np.nan
    x[10, 100] = np.inf
    x[20, 5] = np.inf
    x[20, 6] = -np.inf  # inf - inf in row 20
    x[30, 199] = -np.inf
    x[40, :] = np.finfo(dtype).max  # overflows to inf when squared
    for f in (lambda v: (v * v + v).sum(), lambda v: (v * 2.0 - v).sum(axis=1),
              lambda v: (v * 2.0 - v).sum(axis=0), lambda v: (v + 1.0).sum(axis=1) * 0.0,
              lambda v: (v * v).sum(axis=1, keepdims=True),
              lambda v: (ng.relu(v - 1.0) * 2.0).sum(axis=1)):  # relu keeps NaN, as NumPy
        with np.errstate(all="ignore"):
            jf = _check(f, ng.tensor(x), fuse=True)
        assert _kernels(jf) and _kernels(jf)[0].group.reduce is not None


@needs_numba
def test_per_example_squared_norms_fuse_without_the_outer_products():
    """jit(vmap(grad)) and the squared norms: each per-example outer product (the weight
    gradients) is squared and summed inside one kernel, never written (W8's pattern)."""
    rng = np.random.default_rng(0)
    params = {"w": ng.tensor(rng.standard_normal((30, 20)).astype(np.float32) * 0.2),
              "b": ng.tensor(rng.standard_normal(30).astype(np.float32) * 0.1)}
    x = ng.tensor(rng.standard_normal((64, 20)).astype(np.float32))

    def loss(p, x):
        return ng.tanh(ng.linear(x, p["w"], p["b"])).sum()

    pe = ng.vmap(ng.grad(loss), in_axes=(None, 0))

    def norms(p, x):
        g = pe(p, x)
        return (g["w"] * g["w"]).sum() + (g["b"] * g["b"]).sum(axis=1).sum()

    jf = _check(norms, params, x, fuse=True)
    text = str(jf.program)
    assert "= sum(" in text and "axis=(1,)" in text
    sums = [i for i in jf.program.instrs if i.kind == "op" and i.name == "sum"]
    assert [jf.program.meta[i.ins[0]][0] for i in sums] == [(64,)]  # the norms' sum only
    assert all(spec[0] != (64, 30, 20) for spec in jf.program.plan.buffers)


@needs_numba
def test_the_scalars_that_sums_leave_fuse_when_there_are_enough():
    """Adding up several fused sums (the squared norms of many gradients) is one kernel on 0-d
    arrays; two or three scalar ops are not worth a kernel call."""
    rng = np.random.default_rng(4)
    xs = [ng.tensor(rng.standard_normal((20, 30)).astype(np.float32)) for _ in range(5)]

    def many(*vs):
        total = None
        for v in vs:
            s = (v * v).sum()
            total = s if total is None else total + s
        return total

    jf = _check(many, *xs, fuse=True)
    kernels = _kernels(jf)
    assert len(kernels) == 6 and "op" not in jf.program.counts()
    assert [m.name for m in kernels[-1].group.members] == ["add"] * 4
    jf = _check(many, *xs[:3], fuse=True)  # two adds stay NumPy's
    assert [i.name for i in jf.program.instrs if i.kind == "op"] == ["add", "add"]


@needs_numba
def test_max_min_and_relu_kernels_keep_numpys_signed_zeros_and_nans():
    """NumPy's maximum(a, b) is a where a wins or is NaN, else b: maximum(-0.0, 0.0) is 0.0."""
    v = np.array([-0.0, 0.0, -1.0, 2.0, np.nan, -np.inf, np.inf], np.float32)
    a = ng.tensor(np.tile(v, 50 * len(v))[:2450].reshape(49, 50))
    b = ng.tensor(np.tile(np.roll(v, 3), 50 * len(v))[:2450].reshape(49, 50))

    def f(a, b):
        return ng.relu(a), ng.maximum(a, b), ng.minimum(a, b), ng.relu(a * 1.0 + b * 0.0)

    jf = ng.jit(f, fuse=True)
    for _ in range(2):
        for got, want in zip(_leaves(jf(a, b)), _leaves(f(a, b))):
            assert got.tobytes() == want.tobytes()
    assert all(i.kind != "op" for i in jf.program.instrs)  # each alone is a kernel too


@needs_numba
def test_one_slow_op_is_a_kernel_only_on_enough_elements(monkeypatch):
    w = ng.randn(64, 32)
    relu = ng.value_and_grad(lambda x: (ng.relu(x) @ w).sum() + (x * 2.0 + 1.0).exp().sum())
    big, small = ng.randn(64, 64), ng.randn(8, 64)
    kinds = {}
    for name, x in (("big", big), ("small", small), ("transposed", big.T)):
        jf = _check(relu, x, fuse=True)
        _check(relu, x, fuse=False)
        kinds[name] = {m.name for i in _kernels(jf) if len(i.group.members) == 1
                       for m in i.group.members}
    # a transposed input's relu is a kernel too: its loops run in the input's memory order and
    # its result is laid out as NumPy's (the product that reads it, the same bits: _check)
    assert kinds == {"big": {"relu"}, "small": set(), "transposed": {"relu"}}
    # a program with no other kernel leaves them to NumPy while numba is not loaded (its
    # start-up would cost a short run more than they save)
    single = ng.value_and_grad(lambda x: (ng.relu(x) @ w).sum())
    assert _kernels(_check(single, big, fuse=None))  # numba is loaded in this process
    monkeypatch.setattr(F, "_numba_loaded", lambda: False)
    jf = _check(single, big, fuse=None)
    assert not _kernels(jf) and jf.program.stats["kernels_waiting"] == 2  # relu, its gradient
    assert _kernels(_check(single, big, fuse=True))  # asked for: whatever numba's start-up


@needs_numba
def test_a_long_running_program_imports_numba_and_traces_again_with_its_kernels(monkeypatch):
    """Kernels left out for numba's start-up (single slow ops, a small optimiser's update)
    arrive once the program's replays have taken UPGRADE_AFTER_S: it is traced again with
    them, and every result keeps its bits (against eager with the NumPy update)."""
    from nodegrad import _backend as B
    from nodegrad.jit import api
    from nodegrad.nn import functional as NF

    loaded = [False]  # numba as this process would see it: imported by the upgrade
    monkeypatch.setattr(F, "_numba_loaded", lambda: loaded[0])
    monkeypatch.setattr(B, "numba_loaded", lambda: loaded[0])
    real = F._get_numba
    monkeypatch.setattr(F, "_get_numba", lambda: loaded.__setitem__(0, True) or real())
    monkeypatch.setattr(api, "UPGRADE_AFTER_S", 1e-9)  # upgrade after the first replay

    def build(**kw):
        ng.manual_seed(0)
        m = ng.nn.Sequential(ng.nn.Linear(64, 64), ng.nn.ReLU(), ng.nn.Linear(64, 10))
        return m, ng.optim.Adam(m.parameters(), lr=1e-2, **kw)

    def step(m, o, x, t):
        loss = NF.cross_entropy(m(x), t)
        loss.backward()
        o.step()
        o.zero_grad()
        return loss

    model, opt = build()
    buckets = [b for bs in opt._buckets for b in bs]
    for b in buckets:  # as if made before numba's import: the NumPy update until then
        b.fused, b.pending = False, True
    ref_model, ref_opt = build(fused=False)
    jstep = ng.jit(lambda x, t: step(model, opt, x, t), state=(model, opt))
    rng = np.random.default_rng(9)
    for k in range(4):
        x = ng.tensor(rng.standard_normal((50, 64)).astype(np.float32))
        t = ng.tensor(rng.integers(0, 10, 50))
        got, want = jstep(x, t), step(ref_model, ref_opt, x, t)
        assert _same(got.numpy(), want.numpy())
        if k == 0:  # traced without numba: its relu and relu_grad wait for it
            assert jstep.program.stats["kernels_waiting"] == 2 and not _kernels(jstep)
    assert loaded[0] and jstep.traces == 2  # imported after a replay, then traced again
    assert _kernels(jstep) and all(b.fused and not b.pending for b in buckets)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert _same(p.numpy(), q.numpy())


@needs_numba
def test_cpu_kernels_never_write_over_their_inputs():
    """LLVM vectorises a kernel's loop only where its arrays do not overlap."""
    def f(x, w):
        return ((ng.tanh(x @ w) * 2.0 + 1.0) @ w).sum()  # tanh's gradient reads a product

    jf = _check(ng.grad(f, argnums=1), ng.randn(64, 64), ng.randn(64, 64), fuse=True)
    buf = jf.program.plan.buf
    assert _kernels(jf)
    for i in _kernels(jf):
        assert not {buf.get(o) for o in i.outs} & {buf.get(a) for a in i.ins} - {None}


def test_cross_entropy_and_its_gradient_share_the_softmax_bit_for_bit():
    from nodegrad.nn import functional as NF

    def f(x, t):
        return ng.value_and_grad(lambda z: NF.cross_entropy(z, t))(x)

    rng = np.random.default_rng(0)
    t = ng.tensor(rng.integers(0, 10, 100))
    for dt in (np.float32, np.float64):
        x = ng.tensor((rng.standard_normal((100, 10)) * 5).astype(dt))
        jf = _check(f, x, t)
        forms = [i.fn.fast.__qualname__ for i in jf.program.instrs
                 if i.name.startswith("cross_entropy")]
        assert forms == ["ce_shared_forms.<locals>.loss", "ce_shared_forms.<locals>.gradient"]
        bad = x.numpy().copy()
        bad[3, 4] = np.inf  # a row that is not finite: both take the general path
        _check(f, ng.tensor(bad), t)
        loss, gradient = (i.fn.fast for i in jf.program.instrs
                          if i.name.startswith("cross_entropy"))
        other = (x.numpy() * 2).astype(dt)
        loss(x.numpy(), t.numpy())  # a gradient of other logits than the last loss's
        assert _same(gradient(other, dt(1), t.numpy()), f(ng.tensor(other), t)[1].numpy())


@needs_numba
def test_the_narrow_cross_entropy_forms_give_the_primitives_bits():
    """With numba's loops loaded, the replay forms of a narrow cross-entropy (the narrow path
    written out) give the bits of the primitives' forwards, for a mean and a sum, float32 and
    float64, and of a gradient scaled by a plain float; a target out of range still raises."""
    import importlib

    import numba  # noqa: F401 - the loops load once numba is imported

    N = importlib.import_module("nodegrad.ops.nn")
    rng = np.random.default_rng(1)
    t = rng.integers(0, 10, 100)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((100, 10)) * 5).astype(dt)
        for red in ("mean", "sum"):
            p = dict(axis=1, ignore_index=-100, reduction=red)
            loss, gradient = N.ce_shared_forms(np, p)
            for g in (dt(1), 0.5):
                want = N._ce.fwd(np, x, t, **p), N._ce_grad.fwd(np, x, g, t, **p)
                got = loss(x, t), gradient(x, g, t)
                assert _same(got[0], want[0]) and _same(got[1], want[1]), (dt, red, g)
    bad = t.copy()
    bad[7] = 10
    with pytest.raises(IndexError, match="cross_entropy"):
        loss(x, bad)


@pytest.mark.parametrize("nd", [1, 2])
def test_a_convolution_and_its_weight_gradient_share_the_columns_bit_for_bit(nd, monkeypatch):
    """A conv's windows gathered once per call for its forward and its weight gradient (1-D
    and 2-D, strided, padded, dilated, grouped, without bias): eager's bits; a weight gradient
    of another input than the last forward's, or of columns above the size kept, gathers its
    own."""
    from nodegrad.nn import functional as NF

    C = sys.modules["nodegrad.ops.conv"]  # the module (the package exports its function)

    conv = NF.conv1d if nd == 1 else NF.conv2d
    rng = np.random.default_rng(3)
    cases = [dict(stride=2, padding=1), dict(stride=1, padding=0, dilation=2),
             dict(stride=1, padding=1, groups=2)]
    for kw, bias in zip(cases, (True, False, True)):
        sp = (12,) * nd
        x = ng.tensor(rng.standard_normal((3, 4) + sp).astype(np.float32))
        w = ng.tensor(rng.standard_normal((6, 4 // kw.get("groups", 1)) + (3,) * nd)
                      .astype(np.float32))
        b = ng.tensor(rng.standard_normal(6).astype(np.float32)) if bias else None

        def f(x, w, b=b, kw=kw):
            def loss(x, w):
                return (ng.relu(conv(x, w, b, **kw)) ** 2).sum()
            return ng.value_and_grad(loss, argnums=(0, 1))(x, w)

        jf = _check(f, x, w)
        forms = [i.fn.fast.__qualname__ for i in jf.program.instrs
                 if i.name in ("conv", "conv_weight_grad")]
        assert forms == ["conv_shared_forms.<locals>.forward",
                         "conv_shared_forms.<locals>.weight_grad"], kw
        fwd, wgrad = (i.fn.fast for i in jf.program.instrs
                      if i.name in ("conv", "conv_weight_grad"))
        other = ng.tensor(x.numpy() * 2)
        g = conv(x, w, b, **kw).numpy()
        fwd(x.numpy(), w.numpy(), *([b.numpy()] if bias else []))
        want = ng.grad(lambda w: (conv(other, w, b, **kw) * ng.tensor(g)).sum())(w)
        assert _same(wgrad(other.numpy(), g), want.numpy())
        with monkeypatch.context() as m:
            m.setattr(C, "SHARED_COLUMNS_MAX", 0)
            _check(f, x, w)


def test_products_and_sums_replay_in_forms_chosen_once():
    """An MLP step's linears, matrix products, bias sums and relus replay through forms made
    at trace time (no per-call layout or thread-rule decisions), bit for bit as eager."""
    from nodegrad.nn import functional as NF

    rng = np.random.default_rng(6)
    ws = [ng.tensor(rng.standard_normal(s).astype(np.float32) * 0.1)
          for s in ((100, 40), (100,), (10, 100), (10,))]

    def f(x, t, *ws):
        def loss(w0, b0, w1, b1):
            h = ng.relu(NF.linear(x, w0, b0))
            return NF.cross_entropy(NF.linear(h, w1, b1), t)
        return ng.value_and_grad(loss, argnums=(0, 1, 2, 3))(*ws)

    x = ng.tensor(rng.standard_normal((64, 40)).astype(np.float32))
    t = ng.tensor(rng.integers(0, 10, 64))
    jf = _check(f, x, t, *ws)
    ns = jf.program._fn.__globals__
    forms = {i.name: getattr(ns.get(f"f{k}"), "__qualname__", "")
             for k, i in enumerate(jf.program.instrs) if i.kind == "op"}
    assert forms["linear"] == "_product_form.<locals>.linear"
    assert forms["sum"] == "sum_form.<locals>.form"
    assert forms["matmul"] in ("matmul", "_matmul_small")


def test_a_replayed_cross_entropy_refuses_targets_out_of_range():
    """The loss validates targets when traced; a replay given a target outside 0..C-1 (or
    negative) must still raise, never pick another row's logit from the flat array."""
    from nodegrad.nn import functional as NF

    f = ng.jit(ng.value_and_grad(lambda z, t: NF.cross_entropy(z, t)))
    rng = np.random.default_rng(5)
    x = ng.tensor(rng.standard_normal((8, 4)).astype(np.float32))
    f(x, ng.tensor(rng.integers(0, 4, 8)))
    for v in (4, 7, -1, -1 - 8 * 4):
        t = rng.integers(0, 4, 8)
        t[2] = v
        with pytest.raises(IndexError):
            f(x, ng.tensor(t))


def test_the_shared_softmax_is_not_mixed_up_between_threads():
    """Threads replaying one program concurrently: each gradient uses its own forward's exp
    (or recomputes it), never another thread's."""
    from nodegrad.nn import functional as NF

    f = ng.value_and_grad(lambda z, t: NF.cross_entropy(z, t))
    rng = np.random.default_rng(4)
    xs = [ng.tensor(rng.standard_normal((64, 10)).astype(np.float32) * (k + 1)) for k in range(3)]
    t = ng.tensor(rng.integers(0, 10, 64))
    want = [[v.numpy() for v in ng.tree_flatten(f(x, t))[0]] for x in xs]
    jf = ng.jit(f)
    jf(xs[0], t)
    jf(xs[0], t)
    bad = []

    def work(k):
        for _ in range(300):
            got = [v.numpy() for v in ng.tree_flatten(jf(xs[k], t))[0]]
            if not all(_same(g, w) for g, w in zip(got, want[k])):
                bad.append(k)

    _in_threads(work, 3)
    assert not bad


@needs_numba
def test_tanh_and_sigmoid_gradients_fuse_bit_for_bit():
    f = ng.grad(lambda x: (ng.tanh(x * 1.5) * 2.0 + ng.sigmoid(x) * x).sum())
    for dt in (ng.float32, ng.float64):
        jf = _check(f, ng.randn(300, 40, dtype=dt), fuse=False)  # the reference: unfused
        x = ng.randn(300, 40, dtype=dt)  # 12000 elements: no transcendental op joins a kernel
        jf = ng.jit(f, fuse=True)
        for _ in range(2):
            assert _same(jf(x).numpy(), f(x).numpy())
        fused = [m.name for i in jf.program.instrs if i.kind == "fused" for m in i.group.members]
        assert "tanh_grad" in fused and "sigmoid_grad" in fused


@pytest.mark.parametrize("fuse", [False, True])
def test_the_exact_gelu_gradient_is_one_op_in_a_trace(fuse):
    """A trace records the exact GELU's VJP as the one ``gelu_grad`` op eager's backward runs
    (its float32 loops where numba is loaded), not erf, exp and the passes between them, so
    the replay gives eager's bits, fused or not."""
    if fuse:
        pytest.importorskip("numba")
    f = ng.grad(lambda x: (ng.gelu(x * 1.5) * x).sum())
    for dt in (ng.float32, ng.float64):
        x = ng.randn(64, 50, dtype=dt)
        jf = ng.jit(f, fuse=fuse)
        for _ in range(2):
            assert _same(jf(x).numpy(), f(x).numpy())
        ops = [i.name for i in jf.program.instrs if i.kind == "op"]
        ops += [m.name for i in jf.program.instrs if i.kind == "fused" for m in i.group.members]
        assert ops.count("gelu_grad") == 1 and "erf" not in ops and "exp" not in ops


@needs_numba
def test_sin_and_cos_gradients_join_the_kernels():
    f = ng.grad(lambda x: (ng.sin(ng.cos(x * 1.5) * 2.0) * x).sum())
    for dt in (ng.float32, ng.float64):
        jf = _check(f, ng.randn(10, 10, dtype=dt), fuse=True)  # small: libm ops fuse
        fused = [m.name for i in jf.program.instrs if i.kind == "fused" for m in i.group.members]
        assert "sin_grad" in fused and "cos_grad" in fused
        assert not [i for i in jf.program.instrs if i.kind == "op" and i.name.endswith("_grad")]


@needs_numba
def test_kernels_are_written_to_the_cache_and_shared():
    def f(x):
        return ng.relu(x * 3.0 - 1.0)

    a, b = ng.jit(f), ng.jit(f)
    a(ng.randn(7, 3))
    b(ng.randn(7, 3))
    (ka,), (kb,) = ([i for i in j.program.instrs if i.kind == "fused"] for j in (a, b))
    assert ka.fn is kb.fn  # one source, one kernel, constants passed as arguments
    src = Path(sys.modules[ka.fn.py_func.__module__].__file__)
    assert src.parent == F.cache_dir() and "def kernel" in src.read_text()
    assert list((F.cache_dir() / "__pycache__").glob(src.stem + "*.nbi"))  # numba's disk cache


def test_without_numba_jit_replays_unfused(monkeypatch):
    monkeypatch.setattr(F, "_numba", None)
    assert not F.available(ng.randn(1).backend)

    def f(x):
        return ng.tanh(x * 2.0) * 3.0 + 1.0

    jf = _check(f, ng.randn(5, 4), fuse=None)  # the default: fuse where a compiler is there
    assert "fused" not in jf.program.counts()
    jf = _check(f, ng.randn(5, 4), fuse=True)  # asked for: still replays, unfused
    assert "fused" not in jf.program.counts()
    jf = _check(lambda x: (x * x - x).sum(axis=1), ng.randn(300, 400), fuse=True)  # a sum too
    assert "fused" not in jf.program.counts()


MATRIX = [pytest.param(c, id=c.name) for c in CASES if "matrix" in c.layouts]


@needs_numba
@pytest.mark.parametrize("case", MATRIX)
@drawn(1)
def test_fused_jit_matches_eager_on_every_case(case, data):
    call = data.draw(calls(case, "matrix"))
    args = [np.array(a) for a in call.args]
    jf = ng.jit(call.fn, fuse=True)
    for _ in range(2):
        got = _leaves(jf(*[ng.tensor(a) for a in args]))
        want = _leaves(call.fn(*[ng.tensor(a) for a in args]))
        for g, w in zip(got, want):
            if isinstance(w, np.ndarray):
                _close(g, w, case.name)
            else:
                assert g == w


def _zoo_batch(spec, rng):
    if spec.dataset == "mnist1d":
        x = rng.standard_normal((8, 40))
    elif spec.dataset == "digits":
        x = rng.standard_normal((8, 64))
    else:
        x = rng.standard_normal((8, 1))
    y = rng.integers(0, 10, 8) if spec.task == "classification" else rng.standard_normal((8, 1))
    return ng.tensor(x.astype(np.float32)), ng.tensor(y if y.dtype.kind == "i"
                                                      else y.astype(np.float32))


@needs_numba
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_zoo_models_train_the_same_under_fused_jit(name):
    spec = models.REGISTRY[name]
    lossf = (ng.nn.functional.cross_entropy if spec.task == "classification"
             else ng.nn.functional.mse_loss)

    def run(jit):
        model = models.create(name, seed=0)
        opt = ng.optim.Adam(model.parameters(), lr=1e-2)
        step = train_step(model, opt, lossf)
        s = ng.jit(step, state=(model, opt), fuse=True) if jit else step
        rng = np.random.default_rng(0)
        ng.manual_seed(1)
        losses = [s(*_zoo_batch(spec, rng)).numpy() for _ in range(20)]
        return losses, model

    le, me = run(False)
    lj, mj = run(True)
    for a, b in zip(lj, le):
        _close(a, b, name)
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        _close(b.numpy(), a.numpy(), f"{name}: {n}")


@pytest.mark.gpu
def test_fused_kernels_on_cuda():
    dev = "cuda"

    def f(x, b):
        h = ng.tanh(x * 0.5 + b)
        return ng.where(h > 0.25, h * h - b, -h) / 3.0 + ng.relu(h)

    x, b = ng.randn(40, 30, device=dev), ng.randn(30, device=dev)
    jf = ng.jit(f)
    for _ in range(3):
        _close(jf(x, b).numpy(), f(x, b).numpy())
    assert jf.program.counts()["fused"] >= 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_sums_on_cuda(dtype):
    """CuPy reduction kernels: full and partial sums of elementwise work, within tolerance."""
    rng = np.random.default_rng(2)
    a = ng.tensor(rng.standard_normal((64, 30, 1)).astype(dtype), device="cuda")
    b = ng.tensor(rng.standard_normal((64, 1, 20)).astype(dtype), device="cuda")
    for axis, keepdims in ((None, False), ((1, 2), False), (0, True)):
        def f(a, b):
            t = a * b
            return (t * t + 0.5 * a).sum(axis=axis, keepdims=keepdims)

        jf = ng.jit(f)
        for _ in range(2):
            _close(jf(a, b).numpy(), f(a, b).numpy())
        (k,) = _kernels(jf)  # the sum is the kernel's; 0.5 * a (another shape) stays an op
        assert k.group.reduce is not None
        assert not [i for i in jf.program.instrs if i.kind == "op" and i.name == "sum"]


@needs_numba
def test_a_cache_that_cannot_be_written_means_unfused_not_broken(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setattr(F, "_cache_dir", blocked / "kernels")
    monkeypatch.setattr(F, "_modules", {})

    def f(x):
        return ng.relu(x * 2.0 - 0.5) * 3.0

    with pytest.warns(RuntimeWarning, match="fusion failed"):
        jf = _check(f, ng.randn(6, 5), fuse=True)
    assert "fused" not in jf.program.counts()


def test_a_transposed_first_operand_joins_its_product():
    """A linear layer's weight gradient gᵀ x replays as one matmul_t instruction, with eager's
    bits (into a kept buffer where the plan gives one); a transpose read by anything else stays
    an instruction of its own."""
    def f(g, x):
        return g.T @ x

    def g2(g, x):
        gt = g.T
        return gt @ x, gt * 2.0

    rng = np.random.default_rng(0)
    g = ng.tensor(rng.standard_normal((100, 30)).astype(np.float32))
    x = ng.tensor(rng.standard_normal((100, 20)).astype(np.float32))
    jf = _check(f, g, x)
    names = [i.name for i in jf.program.instrs]
    assert "matmul_t" in names and "transpose" not in names
    assert jf.program.counts()["folded_transposes"] == 1
    assert "matmul_t(%" in str(jf.program)
    jg = _check(g2, g, x)
    assert "matmul_t" not in [i.name for i in jg.program.instrs]
