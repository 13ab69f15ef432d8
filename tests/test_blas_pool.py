"""Long float32 loops split in halves with OpenBLAS's worker thread (``_backend.pool_split``):
the same bits as the whole loop, in every thread and in a forked child, and never where the
user set OpenBLAS to one thread."""

import math
import multiprocessing
import platform
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

import nodegrad as ng  # noqa: E402
from nodegrad import _backend as B  # noqa: E402
from tests._threads import at_once  # noqa: E402

C, C2 = 1 / math.sqrt(2), 1 / math.sqrt(2 * math.pi)


@pytest.fixture
def pool(monkeypatch, request):
    """The pool, found, with OpenBLAS at two threads (restored afterwards); every split
    counted in ``calls`` as (kind, whether it ran)."""
    B._BlasPool.looked = False  # found again, so the first use's check runs in every test
    B._BlasPool.exec_blas = 0
    assert B.cpu_kernels() is not None
    if not B._BlasThreads.looked:
        B._BlasThreads.find()
    if B._BlasThreads.get is None:
        pytest.skip("NumPy is not linked with a pthreads OpenBLAS")
    users = B._BlasThreads.get()
    request.addfinalizer(lambda: B._BlasThreads.set(users))
    B._BlasThreads.set(2)
    calls = []
    real = B.pool_split

    def counted(kind, *a, **kw):
        ran = real(kind, *a, **kw)
        calls.append((kind if "job" not in kw else "adam", ran))
        return ran

    monkeypatch.setattr(B, "pool_split", counted)
    if (sys.platform != "linux" or platform.machine() != "x86_64"
            or getattr(B._BlasThreads.lib, "exec_blas", None) is None):
        pytest.skip("NumPy's OpenBLAS does not export exec_blas on x86-64 Linux")
    x = np.linspace(-5, 5, B.POOL_MIN, dtype=np.float32)
    B.gelu32(x, C)
    assert B._BlasPool.exec_blas  # found, and its first use gave the whole loop's values
    calls.clear()
    return calls


def _without_pool(f):
    keep = B._BlasPool.exec_blas
    B._BlasPool.exec_blas = 0
    try:
        return f()
    finally:
        B._BlasPool.exec_blas = keep


def _gelu_both(x, g):
    return B.gelu32(x, C), B.gelu32_grad(g, x, C, C2)


def _softmax_rows(shape, seed=0):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal(shape) * 4).astype(np.float32)
    n = shape[-1]
    flat = s.reshape(-1, n)
    later = np.arange(n)[None, :] > (np.arange(len(flat)) % n)[:, None]
    flat[later] = -np.inf  # a causal mask's
    flat[0] = np.nan  # a NaN row, a row with +inf, one all -inf, one with -0.0 maxima
    flat[1, :3] = np.inf
    flat[2] = -np.inf
    flat[3] = -0.0
    return s


def test_split_loops_give_the_whole_loops_bits(pool):
    rng = np.random.default_rng(0)
    for size in (B.POOL_MIN, B.POOL_MIN + 1, 3 * B.POOL_MIN + 17, 12 * 64 * 512):
        x = (rng.standard_normal(size) * 3).astype(np.float32)
        x[:5] = [np.nan, np.inf, -np.inf, -0.0, 1e-40]
        g = rng.standard_normal(size).astype(np.float32)
        for got, want in zip(_gelu_both(x, g), _without_pool(lambda: _gelu_both(x, g))):
            assert got.tobytes() == want.tobytes()
    for shape in ((12, 4, 64, 64), (B.POOL_MIN // 7 + 3, 7), (4, B.POOL_MIN + 5)):
        s = _softmax_rows(shape)
        ax = s.ndim - 1
        got = B.softmax_last(s, ax)
        assert got.tobytes() == _without_pool(lambda: B.softmax_last(s, ax)).tobytes()
        def log(xp, v):  # ops.nn's log of the sums
            return xp.log(v)

        with np.errstate(divide="ignore", invalid="ignore"):
            lsm = B.log_softmax_last(s, ax, log)
            want = _without_pool(lambda: B.log_softmax_last(s, ax, log))
        assert lsm.tobytes() == want.tobytes()
    ran = {k for k, r in pool if r}
    k = B.cpu_kernels()
    assert ran == {k.GELU, k.GELU_DENSITY, k.GELU_GRAD, k.SOFTMAX_SHIFT, k.SOFTMAX_DIVIDE}
    assert not any(r for k, r in pool if k is None)


def test_small_float64_and_one_thread_loops_stay_whole(pool):
    """Under POOL_MIN elements, in float64 (softmax), or with OpenBLAS set to one thread by
    the user, nothing goes to the worker."""
    x = np.ones(B.POOL_MIN - 1, np.float32)
    B.gelu32(x, C)
    assert pool == [(B.cpu_kernels().GELU, False)]
    pool.clear()
    B.softmax_last(np.zeros((1000, 64)), 1)
    assert pool == []
    B._BlasThreads.set(1)
    x = np.ones(4 * B.POOL_MIN, np.float32)
    want = _without_pool(lambda: B.gelu32(x, C))
    pool.clear()
    assert B.gelu32(x, C).tobytes() == want.tobytes()
    assert pool == [(B.cpu_kernels().GELU, False)]


def test_split_loops_from_many_threads_at_once(pool):
    """Four threads splitting GELU loops at once (each through OpenBLAS's queue) get each
    their own loop's values."""
    rng = np.random.default_rng(1)
    xs = [(rng.standard_normal(5 * B.POOL_MIN + i) * 3).astype(np.float32) for i in range(4)]
    want = [_without_pool(lambda x=x: _gelu_both(x, x)) for x in xs]
    got = [None] * 4

    def run(i):
        for _ in range(20):
            got[i] = _gelu_both(xs[i], xs[i])

    errors, stuck = at_once(run, 4, timeout=60)
    assert not errors and not stuck
    for g, w in zip(got, want):
        assert g[0].tobytes() == w[0].tobytes() and g[1].tobytes() == w[1].tobytes()
    assert sum(r for _, r in pool) >= 4 * 20 * 3


def _child_gelu(queue):
    x = np.linspace(-4, 4, 4 * B.POOL_MIN + 3, dtype=np.float32)
    queue.put((B.gelu32(x, C).tobytes(), bool(B._BlasPool.exec_blas)))


def test_split_loops_in_a_forked_child(pool):
    """A child forked after the pool was used (a data loader's worker) splits loops too:
    OpenBLAS starts its workers again after a fork."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_gelu, args=(queue,))
    child.start()
    got, used = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and used
    x = np.linspace(-4, 4, 4 * B.POOL_MIN + 3, dtype=np.float32)
    assert got == _without_pool(lambda: B.gelu32(x, C)).tobytes()


def test_a_gpt_blocks_step_has_the_same_bits_with_and_without_the_pool(pool):
    """Forward, backward and an AdamW step of a block with the exact GELU and causal
    attention, wide enough for its loops to split: the same loss and parameters."""
    def run():
        ng.manual_seed(0)
        fc, out = ng.nn.Linear(64, 256), ng.nn.Linear(256, 64)
        opt = ng.optim.AdamW(list(fc.parameters()) + list(out.parameters()), lr=1e-2)
        x = ng.tensor(np.random.default_rng(2).standard_normal((8, 64, 64)), dtype=ng.float32)
        losses = []
        for _ in range(3):
            q = x.view(8, 64, 4, 16).transpose(1, 2)
            y = ng.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            h = out(ng.nn.functional.gelu(fc(y.transpose(1, 2).reshape(8, 64, 64))))
            loss = (h * h).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.numpy().tobytes() for p in list(fc.parameters()) +
                        list(out.parameters())]

    got = run()
    # (the attention is one primitive, whose units split with the worker too: without the
    # pool they run on this thread)
    assert {k for k, r in pool if r} >= {B.cpu_kernels().GELU, B.cpu_kernels().GELU_GRAD}
    assert got == _without_pool(run)


@pytest.mark.parametrize("opt", ["Adam", "AdamW"])
def test_a_large_adam_update_in_halves_has_the_same_bits(pool, opt):
    """A float32 fused Adam/AdamW step over more than ADAM_POOL_MIN parameters runs in halves
    (the second on OpenBLAS's worker): the same parameters and state as in one pass; AMSGrad
    stays whole."""
    from nodegrad.optim import _fused

    def run(**kw):
        ng.manual_seed(0)
        layer = ng.nn.Linear(512, _fused.ADAM_POOL_MIN // 512 + 3)
        o = getattr(ng.optim, opt)(layer.parameters(), lr=1e-2, weight_decay=0.1, fused=True,
                                   **kw)
        x = ng.tensor(np.random.default_rng(3).standard_normal((16, 512)), dtype=ng.float32)
        for _ in range(3):
            o.zero_grad()
            (layer(x) ** 2).mean().backward()
            o.step()
        return [p.numpy().tobytes() for p in layer.parameters()], [
            a.tobytes() for s in o.state.values() for a in
            (s["exp_avg"].numpy(), s["exp_avg_sq"].numpy())]

    got = run()
    assert ("adam", True) in pool
    assert got == _without_pool(run)
    pool.clear()
    run(amsgrad=True)
    assert ("adam", True) not in pool
