"""Memory stays flat over a long training loop, and backward frees the graph it ran through.

tracemalloc sees NumPy's array buffers as well as Python objects, so a graph, gradient or
cache that survives from step to step shows up as growth between step 200 and step 2000.
"""

import gc
import tracemalloc
import weakref

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.autodiff import Node

STEPS, BASELINE_STEP = 2000, 200
SLACK = 256 * 1024  # bytes of growth tolerated between the two readings


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 8), dtype=np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True))
    params = [rng.standard_normal((8, 32), dtype=np.float32) * np.float32(0.5),
              np.zeros(32, np.float32),
              rng.standard_normal((32, 1), dtype=np.float32) * np.float32(0.2),
              np.zeros(1, np.float32)]
    return ng.tensor(x), ng.tensor(y), params


def _loss(params, x, y):
    w1, b1, w2, b2 = params
    h = ng.relu(x @ w1 + b1)
    return ((h @ w2 + b2 - y) ** 2).mean()


def _torch_style():
    """MLP 8-32-1, ``loss.backward()`` and an SGD update under no_grad."""
    x, y, arrays = _data()
    params = [ng.tensor(a, requires_grad=True) for a in arrays]

    def step():
        loss = _loss(params, x, y)
        loss.backward()
        with ng.no_grad():
            for p in params:
                p -= 0.05 * p.grad
                p.grad = None
        return loss

    return step


def _jax_style():
    """The same model through ``value_and_grad`` with a functional SGD update."""
    x, y, arrays = _data()
    params = [ng.tensor(a) for a in arrays]
    vg = ng.value_and_grad(_loss)

    def step():
        loss, grads = vg(params, x, y)
        params[:] = [p - 0.05 * g for p, g in zip(params, grads)]
        return loss

    return step


@pytest.mark.parametrize("make_step", [_torch_style, _jax_style], ids=["backward", "grad"])
def test_memory_flat_over_training(make_step):
    step = make_step()
    first = float(step())
    tracemalloc.start()
    try:
        for i in range(1, STEPS):
            loss = step()
            if i + 1 == BASELINE_STEP:
                gc.collect()
                base, base_snap = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
        gc.collect()
        end, end_snap = tracemalloc.get_traced_memory()[0], tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert float(loss) < first  # the loop really trains
    if end - base >= SLACK:
        top = end_snap.compare_to(base_snap, "lineno")[:8]
        growth = "\n".join(str(s) for s in top)
        pytest.fail(f"traced memory grew by {(end - base) / 1024:.0f} KiB between step "
                    f"{BASELINE_STEP} and step {STEPS}; largest growth:\n{growth}")


def _live_nodes() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Node)


def _freed(ref: weakref.ref) -> str | None:
    """None when ``ref`` died by reference counting, else what keeps its target."""
    if ref() is None:
        return None
    gc.collect()
    return "a reference cycle (freed only by gc)" if ref() is None else "a live reference"


def _graph(retain_graph: bool):
    w = ng.tensor(np.full((4, 3), 0.5, np.float32), requires_grad=True)
    x = ng.tensor(np.ones((2, 4), np.float32))
    h = ng.tanh(x @ w)  # an intermediate that the next multiply saves for its VJP
    loss = (h * h).sum()
    ref = weakref.ref(h)
    del h
    assert ref() is not None, "the graph should keep the saved intermediate until backward"
    loss.backward(retain_graph=retain_graph)
    return w, loss, ref


def test_backward_frees_saved_intermediates():
    w, loss, ref = _graph(retain_graph=False)
    assert w.grad is not None
    held = _freed(ref)
    assert held is None, f"after backward() the saved intermediate is still held by {held}"


def test_retain_graph_keeps_saved_intermediates():
    w, loss, ref = _graph(retain_graph=True)
    assert ref() is not None
    loss.backward()  # a second pass works, then frees
    assert _freed(ref) is None


def test_dropping_the_output_frees_every_node():
    gc.collect()
    before = _live_nodes()
    step = _torch_style()
    loss = step()
    assert _live_nodes() > before  # the last loss still holds its (emptied) graph
    del loss
    assert _live_nodes() == before, "Nodes outlived the loss that owned them"


def test_per_example_gradients_freed_by_reference_counting():
    """vmap(grad) leaves no reference cycle behind: a dropped batch of gradients is freed at
    once, not at the next garbage collection (which let a W8 step's memory grow 3x)."""
    w = ng.tensor(np.full((3, 4), 0.5, np.float32))
    xs = ng.tensor(np.ones((5, 4), np.float32))
    per_example = ng.vmap(ng.grad(lambda p, x: ng.tanh(ng.linear(x, p["w"])).sum()),
                          in_axes=(None, 0))
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        g = per_example({"w": w}, xs)["w"]
        assert g.shape == (5, 3, 4)
        ref = weakref.ref(g)
        del g
        held = _freed(ref)
    finally:
        if enabled:
            gc.enable()
    assert held is None, f"a dropped per-example gradient is still held by {held}"


def test_tree_flatten_leaves_no_cycle():
    leaf = ng.tensor(np.ones(3, np.float32))
    ref = weakref.ref(leaf)
    leaves, td = ng.func.tree_flatten({"a": [leaf, (leaf, None)]})
    back = ng.func.tree_unflatten(td, leaves)
    assert back["a"][1][0] is leaf and back["a"][1][1] is None
    del leaves, back, leaf
    assert _freed(ref) is None
