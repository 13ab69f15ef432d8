"""Threads, as PyTorch users run them: concurrent backward passes that share a leaf (or a
retained non-leaf) add every gradient into ``.grad``; anomaly mode is one switch for the whole
process (a thread started by a server or a pool is checked too), with PyTorch's ``check_nan``;
threads with their own graphs, models and generators get exactly the single-thread results."""

import sys
import threading
import warnings

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn as nn

TIMEOUT = 30  # seconds any wait may take before the test fails instead of hanging


@pytest.fixture
def fast_switching():
    """Threads take turns as often as CPython allows, so interleavings show up at once."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _run(fns) -> list:
    """Run each of ``fns`` on its own thread, all released together; their results in order
    (an exception in one is raised here)."""
    bar = threading.Barrier(len(fns))
    out, errors = [None] * len(fns), []

    def work(i, fn):
        try:
            bar.wait(TIMEOUT)
            out[i] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, fn), daemon=True)
               for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return out


def test_concurrent_backward_into_a_shared_leaf_loses_no_update(fast_switching):
    """Two threads' backward passes reach one parameter: as in PyTorch, .grad is the sum of
    all of them (the read and write of .grad, and NumPy's += on a large array, which runs
    without the GIL, used to interleave and drop sums)."""
    n = 20
    for _ in range(20):
        w = ng.tensor(np.ones(1 << 18), requires_grad=True)

        def train(w=w):
            for _ in range(n):
                (w * 2.0).sum().backward()

        _run([train, train])
        g = w.grad.numpy()
        assert g.min() == g.max() == 2.0 * n * 2


def test_concurrent_backward_into_a_retained_gradient_loses_no_update(fast_switching):
    """A shared non-leaf with retain_grad() collects both threads' gradients too."""
    n = 100
    for _ in range(20):
        x = ng.tensor(np.ones(3), requires_grad=True)
        y = x * 1.0
        y.retain_grad()
        outs = [[(y * 2.0).sum() for _ in range(n)] for _ in range(2)]

        def train(mine):
            for o in mine:
                o.backward(retain_graph=True)

        _run([lambda o=outs[0]: train(o), lambda o=outs[1]: train(o)])
        assert y.grad.numpy().tolist() == [4.0 * n] * 3
        assert x.grad.numpy().tolist() == [4.0 * n] * 3


def _nan_in_backward() -> str:
    """Run a backward whose sqrt gradient at 0 is inf (times 0: NaN) and say what happened."""
    x = ng.tensor([0.0, 1.0], requires_grad=True)
    try:
        (x.sqrt() * 0.0).sum().backward()
    except ng.AnomalyError:
        return "raised"
    return "nan" if np.isnan(x.grad.numpy()[0]) else "finite"


def _in_new_thread(fn):
    return _run([fn])[0]


def test_anomaly_mode_covers_every_thread_as_in_pytorch():
    """``set_detect_anomaly(True)`` at the top of a script, then the training in a thread:
    PyTorch's anomaly mode is one switch for the process, so the thread's NaN raises instead
    of passing silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert _in_new_thread(_nan_in_backward) == "nan"
        ng.autograd.set_detect_anomaly(True)
        try:
            assert _in_new_thread(ng.is_anomaly_enabled)
            assert _in_new_thread(_nan_in_backward) == "raised"
        finally:
            ng.autograd.set_detect_anomaly(False)
        assert not _in_new_thread(ng.is_anomaly_enabled)
        with ng.detect_anomaly():
            assert _in_new_thread(ng.is_anomaly_enabled)
            assert _in_new_thread(_nan_in_backward) == "raised"
        assert not ng.is_anomaly_enabled()
        assert _in_new_thread(_nan_in_backward) == "nan"


def test_anomaly_mode_turned_on_in_a_thread_reaches_the_main_thread():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            _in_new_thread(lambda: ng.set_anomaly_enabled(True))
            assert ng.is_anomaly_enabled()
            assert _nan_in_backward() == "raised"
        finally:
            ng.set_anomaly_enabled(False)


@pytest.mark.parametrize("how", ["detect_anomaly", "set_detect_anomaly", "set_anomaly_enabled"])
def test_check_nan_false_keeps_the_mode_on_without_raising(how):
    """PyTorch's ``check_nan=False``: anomaly mode on, NaN in backward not an error."""
    def detect():
        ctx = ng.detect_anomaly(check_nan=False)
        ctx.__enter__()
        return ctx

    enter = {"detect_anomaly": detect,
             "set_detect_anomaly": lambda: ng.autograd.set_detect_anomaly(True, check_nan=False),
             "set_anomaly_enabled": lambda: ng.set_anomaly_enabled(True, check_nan=False)}[how]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            ctx = enter()
            assert ng.is_anomaly_enabled() and _in_new_thread(ng.is_anomaly_enabled)
            assert not ng.autograd.is_anomaly_check_nan_enabled()
            assert _nan_in_backward() == "nan"
            x = ng.tensor([0.0], requires_grad=True)
            assert np.isnan((x / x).numpy()[0])  # the forward check is off too
            if ctx is not None:
                ctx.__exit__(None, None, None)
                assert not ng.is_anomaly_enabled()
        finally:
            ng.set_anomaly_enabled(False)
    assert not ng.is_anomaly_enabled()
    with ng.detect_anomaly():
        assert ng.autograd.is_anomaly_check_nan_enabled()
        with ng.detect_anomaly(check_nan=False):
            assert not ng.autograd.is_anomaly_check_nan_enabled()
        assert ng.autograd.is_anomaly_check_nan_enabled()


def test_anomaly_check_nan_flags_match_torch():
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for check_nan in (True, False):
            with torch.autograd.detect_anomaly(check_nan=check_nan), \
                    ng.detect_anomaly(check_nan=check_nan):
                assert ng.is_anomaly_enabled() == torch.is_anomaly_enabled()
                assert (ng.autograd.is_anomaly_check_nan_enabled()
                        == torch.is_anomaly_check_nan_enabled())
                got = _in_new_thread(lambda: (ng.is_anomaly_enabled(),
                                              torch.is_anomaly_enabled()))
                assert got[0] == got[1]


def _own_graph(seed: int):
    rng = np.random.default_rng(seed)
    x = ng.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    w = ng.tensor(rng.standard_normal((5, 3)), requires_grad=True)
    gen = ng.Generator(seed=seed)
    for _ in range(30):
        noise = ng.randn(4, 3, dtype=ng.float64, generator=gen)
        ((x @ w).tanh() * noise).sum().backward()
    return x.grad.numpy().copy(), w.grad.numpy().copy()


def test_threads_with_their_own_graphs_and_generators_match_one_thread(fast_switching):
    want = [_own_graph(s) for s in range(6)]
    got = _run([lambda s=s: _own_graph(s) for s in range(6)])
    for (a, b), (c, d) in zip(want, got):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_inference_on_a_shared_model_while_another_thread_trains(fast_switching):
    """A served model in eval mode under no_grad / inference_mode in several threads, and a
    different model trained at the same time: each inference is the single-thread result."""
    ng.manual_seed(0)
    served = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                           nn.Linear(16, 3)).double().eval()
    x = ng.tensor(np.random.default_rng(1).standard_normal((8, 6)))
    with ng.no_grad():
        want = served(x).numpy().copy()

    def serve(mode):
        for _ in range(20):
            with mode():
                out = served(x)
            assert not out.requires_grad and np.array_equal(out.numpy(), want)
        return ng.is_grad_enabled()

    def train():
        model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        opt = ng.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(20):
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            opt.step()
        return all(p.grad is not None for p in model.parameters())

    assert _run([lambda: serve(ng.no_grad), lambda: serve(ng.inference_mode), train]) \
        == [True, True, True]
    assert all(p.grad is None for p in served.parameters())
