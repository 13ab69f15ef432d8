"""Modes are per thread, as in PyTorch: grad and inference mode, vmap levels and transform
depth set in one thread never reach another (anomaly mode, as PyTorch's, reaches every thread),
and concurrent training is exact."""

import sys
import threading

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn as nn
import nodegrad.nn.functional as F

TIMEOUT = 30  # seconds any wait may take before the test fails instead of hanging


def _join(threads, errors):
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]


def _while_other_thread_inside(enter, check):
    """Run ``check()`` here while another thread sits inside the context ``enter()``."""
    inside, release = threading.Event(), threading.Event()
    errors = []

    def worker():
        try:
            with enter():
                inside.set()
                assert release.wait(TIMEOUT)
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            errors.append(e)
        finally:
            inside.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    assert inside.wait(TIMEOUT)
    try:
        check()
    finally:
        release.set()
        _join([t], errors)


def _in_new_thread(fn):
    """``fn()`` evaluated in a fresh thread; its result or its exception comes back."""
    out, errors = [], []

    def worker():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    _join([t], errors)
    return out[0]


def _records() -> bool:
    """True when this thread records the graph: the gradient of sum(x*x) comes out as 2x."""
    x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x * x).sum()
    if not y.requires_grad:
        return False
    y.backward()
    return np.array_equal(x.grad.numpy(), [2.0, 4.0, 6.0])


GRAD_OFF = {"no_grad": ng.no_grad, "set_grad_enabled(False)": lambda: ng.set_grad_enabled(False),
            "inference_mode": ng.inference_mode}


@pytest.mark.parametrize("name", list(GRAD_OFF))
def test_grad_off_in_one_thread_does_not_leak(name):
    def check():
        assert ng.is_grad_enabled()
        assert not ng.is_inference_mode_enabled()
        assert _records()

    _while_other_thread_inside(GRAD_OFF[name], check)
    assert ng.is_grad_enabled()


def test_anomaly_mode_in_one_thread_reaches_another_as_in_pytorch():
    def check():
        assert ng.is_anomaly_enabled()
        with pytest.warns(RuntimeWarning), pytest.raises(ng.AnomalyError):
            ng.log(ng.tensor([-1.0]))  # NaN from a finite input: an error in anomaly mode

    _while_other_thread_inside(ng.detect_anomaly, check)
    assert not ng.is_anomaly_enabled()


def test_enable_grad_in_one_thread_does_not_leak_into_no_grad():
    with ng.no_grad():
        def check():
            assert not ng.is_grad_enabled()
            x = ng.tensor([1.0], requires_grad=True)
            assert not (x * 2).requires_grad

        _while_other_thread_inside(ng.enable_grad, check)


def test_backward_in_one_thread_does_not_stop_recording_in_another():
    """A backward pass turns recording off in its own thread only (here held inside a hook)."""
    inside, release = threading.Event(), threading.Event()
    errors = []

    def worker():
        try:
            x = ng.tensor([1.0, 2.0], requires_grad=True)
            y = x * 3.0

            def hold(g):
                inside.set()
                assert release.wait(TIMEOUT)
                return g

            y.register_hook(hold)
            y.sum().backward()
            assert np.array_equal(x.grad.numpy(), [3.0, 3.0])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            inside.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    assert inside.wait(TIMEOUT)
    try:
        assert ng.is_grad_enabled() and _records()
    finally:
        release.set()
        _join([t], errors)


@pytest.mark.parametrize("name", ["no_grad", "inference_mode", "detect_anomaly"])
def test_new_thread_starts_with_default_modes(name):
    enter = {"no_grad": ng.no_grad, "inference_mode": ng.inference_mode,
             "detect_anomaly": ng.detect_anomaly}[name]
    with enter():
        modes = _in_new_thread(lambda: (ng.is_grad_enabled(), ng.is_inference_mode_enabled(),
                                        ng.is_anomaly_enabled(), _records()))
    # anomaly mode is the process's, as PyTorch's: a new thread sees it on
    assert modes == (True, False, name == "detect_anomaly", True)


def test_vmap_in_one_thread_does_not_batch_another():
    x = ng.tensor([1.0, 2.0, 3.0])
    got = []
    inside, release = threading.Event(), threading.Event()
    errors = []

    def per_example(row):
        inside.set()
        assert release.wait(TIMEOUT)
        return (row * row).sum()

    def worker():
        try:
            got.append(ng.vmap(per_example)(ng.tensor([[1.0, 2.0], [3.0, 4.0]])))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            inside.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    assert inside.wait(TIMEOUT)
    try:
        y = ng.exp(x)
        assert type(y) is ng.Tensor and y.shape == (3,)
        g = ng.grad(lambda v: (v * v).sum())(x)
        assert g.shape == (3,) and np.array_equal(g.numpy(), [2.0, 4.0, 6.0])
        _, t_out = ng.jvp(lambda v: v * v, (x,), (ng.ones(3),))
        assert np.array_equal(t_out.numpy(), [2.0, 4.0, 6.0])
    finally:
        release.set()
        _join([t], errors)
    assert np.array_equal(got[0].numpy(), [5.0, 25.0])  # and the vmap itself is unharmed


def test_transform_in_one_thread_does_not_make_another_higher_order():
    """While another thread evaluates f under grad, this thread's grad is first order."""
    x = ng.tensor([1.0, 2.0])
    inside, release = threading.Event(), threading.Event()
    errors = []

    def f(v):
        inside.set()
        assert release.wait(TIMEOUT)
        return (v * v).sum()

    def worker():
        try:
            ng.grad(f)(ng.tensor([1.0]))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            inside.set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    assert inside.wait(TIMEOUT)
    try:
        value, g = ng.value_and_grad(lambda v: (v * v).sum())(x)
        assert not value.requires_grad and not g.requires_grad
        assert np.array_equal(g.numpy(), [2.0, 4.0])
    finally:
        release.set()
        _join([t], errors)


def test_inference_mode_as_torch():
    """Recording off inside, back after; ``inference_mode(False)`` and ``enable_grad`` turn it
    on again; works as a decorator with and without arguments."""
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    with ng.inference_mode():
        assert ng.is_inference_mode_enabled() and not ng.is_grad_enabled()
        assert not (x * 2).requires_grad
        with ng.inference_mode(False):
            assert not ng.is_inference_mode_enabled() and (x * 2).requires_grad
        with ng.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad
    assert not ng.is_inference_mode_enabled() and (x * 2).requires_grad

    @ng.inference_mode
    def bare(v):
        return (v * 2).requires_grad, ng.is_inference_mode_enabled()

    @ng.inference_mode(False)
    def off(v):
        return (v * 2).requires_grad, ng.is_inference_mode_enabled()

    assert bare(x) == (False, True)
    with ng.no_grad():
        assert off(x) == (True, False)
    assert ng.is_grad_enabled() and not ng.is_inference_mode_enabled()


# --- two training loops at once give exactly the sequential weights ----------------------------
def _task(seed: int, sizes: tuple, loss_fn, act):
    """A small model, its data and loss: the initial weights are kept to restart from."""
    ng.manual_seed(seed)
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), act(), nn.Linear(sizes[1], sizes[2]))
    r = np.random.default_rng(seed)
    x = ng.tensor(r.standard_normal((16, sizes[0])).astype(np.float32))
    if loss_fn is F.cross_entropy:
        y = ng.tensor(r.integers(0, sizes[2], 16))
    else:
        y = ng.tensor(r.standard_normal((16, sizes[2])).astype(np.float32))
    init = [p.numpy().copy() for p in model.parameters()]
    return model, init, x, y, loss_fn


def _train(task, steps: int = 8) -> list:
    model, init, x, y, loss_fn = task
    with ng.no_grad():
        for p, w in zip(model.parameters(), init):
            p.data[...] = w
    opt = ng.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        with ng.no_grad():  # an evaluation between steps switches the mode on and off
            model(x)
    return [p.numpy().copy() for p in model.parameters()]


def test_two_threads_train_exactly_as_sequential_runs():
    tasks = [_task(1, (6, 16, 3), F.cross_entropy, nn.Tanh),
             _task(2, (5, 12, 2), F.mse_loss, nn.ReLU)]
    expected = [_train(t) for t in tasks]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up at once
    try:
        for _ in range(50):
            start = threading.Barrier(2, timeout=TIMEOUT)
            results, errors = [None, None], []

            def run(i):
                try:
                    start.wait()
                    results[i] = _train(tasks[i])
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
            for t in threads:
                t.start()
            _join(threads, errors)
            for got, want in zip(results, expected):
                for a, b in zip(got, want):
                    assert np.array_equal(a, b)
    finally:
        sys.setswitchinterval(old)


# --- anomaly mode names the input that already held NaN ---------------------------------------
def test_anomaly_names_input_that_already_held_nan_leaf_made_outside():
    x = ng.tensor([[0.5, float("nan"), 1.0]], requires_grad=True)
    with ng.detect_anomaly(), pytest.raises(ng.AnomalyError) as e:
        F.log_softmax(x, axis=-1)
    msg = str(e.value)
    assert "input of 'log_softmax' already held NaN" in msg
    assert "leaf tensor" in msg and "before detect_anomaly" in msg


def test_anomaly_names_input_that_already_held_nan_with_its_creation_site():
    with ng.detect_anomaly():
        x = ng.tensor([[0.5, float("nan"), 1.0]], requires_grad=True)  # the creation site
        line = sys._getframe().f_lineno - 1
        with pytest.raises(ng.AnomalyError) as e:
            F.log_softmax(x, axis=-1)
    msg = str(e.value)
    assert "input of 'log_softmax' already held NaN" in msg
    assert f"test_threads.py:{line}" in msg


def test_anomaly_names_the_op_that_produced_a_nan_input():
    x = ng.tensor([[0.5, float("nan"), 1.0]], requires_grad=True)
    h = x * 2.0  # recorded before anomaly mode was on
    with ng.detect_anomaly(), pytest.raises(ng.AnomalyError) as e:
        F.log_softmax(h, axis=-1)
    msg = str(e.value)
    assert "input of 'log_softmax' already held NaN" in msg and "'multiply'" in msg


def test_anomaly_in_backward_names_an_input_that_already_held_nan():
    x = ng.tensor([[0.5, float("nan"), 1.0]], requires_grad=True)
    y = F.log_softmax(x, axis=-1).sum()  # forward outside anomaly mode: nothing checked
    with ng.detect_anomaly(), pytest.raises(ng.AnomalyError) as e:
        y.backward()
    msg = str(e.value)
    assert "backward of 'log_softmax'" in msg
    assert "input of 'log_softmax' already held NaN" in msg and "leaf tensor" in msg


def test_anomaly_still_lets_a_nan_input_through_when_the_output_is_finite():
    x = ng.tensor([float("nan"), 1.0])
    with ng.detect_anomaly():
        y = ng.where(ng.tensor([False, True]), x, 0.0)
    assert np.array_equal(y.numpy(), [0.0, 1.0])
