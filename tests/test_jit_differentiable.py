"""``ng.jit`` of a function whose outputs require grad (its inputs do, or the parameters it
reads): each signature is captured as a forward and a backward program under one graph node,
so ``jit(model)(x)`` then ``loss.backward()`` replays both (PyTorch's ``torch.compile(model)``
use), with eager's gradients."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

rng = np.random.default_rng(0)


def _close(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * 1e-2)


def test_backward_through_a_replayed_call_equals_eager():
    f = ng.jit(lambda x, w: ng.tanh(x @ w).sum() + (w * w).mean())
    x = ng.tensor(rng.standard_normal((5, 3)))
    w = ng.tensor(rng.standard_normal((3, 2)), requires_grad=True)
    want = ng.grad(lambda w: ng.tanh(x @ w).sum() + (w * w).mean())(w).numpy()
    for _ in range(4):
        w.grad = None
        y = f(x, w)
        assert y.requires_grad
        y.backward()
        _close(w.grad.numpy(), want, 1e-12)
    assert f.traces == 1 and f.last.diff is not None


def _models(dtype, kind):
    def build():
        ng.manual_seed(0)
        if kind == "mlp":
            m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 16),
                              nn.Tanh(), nn.Linear(16, 3))
        else:
            # (no bias before batch norm: its gradient is rounding noise, which Adam scales up)
            m = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1, bias=False), nn.BatchNorm1d(4),
                              nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(16, 3))
        return m.to(dtype)

    return build(), build()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("dtype", [ng.float64, ng.float32])
def test_training_a_jitted_model_equals_eager(kind, dtype):
    """Dropout's masks come from the same stream in the same order; batch norm's running
    statistics move the same way; every parameter after 20 Adam steps agrees."""
    eager, compiled = _models(dtype, kind)
    cm = ng.jit(compiled)
    shape = (8, 6) if kind == "mlp" else (8, 1, 8)
    xs = [ng.tensor(rng.standard_normal(shape)).astype(dtype) for _ in range(3)]
    y = ng.tensor(rng.integers(0, 3, 8))
    opts = [ng.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    tol = 1e-10 if dtype == ng.float64 else 2e-5
    for step in range(20):
        x = xs[step % 3]
        losses = []
        for call, opt in ((eager, opts[0]), (cm, opts[1])):
            ng.manual_seed(step)
            opt.zero_grad()
            loss = F.cross_entropy(call(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        assert losses[1] == pytest.approx(losses[0], rel=tol)
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()):
        _close(b.numpy(), a.numpy(), tol)
    assert cm.last.diff is not None and cm.traces == 1


def test_train_and_eval_each_get_their_programs():
    ng.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    cm = ng.jit(m)
    x = ng.ones(3, 4)
    cm(x).sum().backward()
    m.eval()
    out = cm(x)
    np.testing.assert_array_equal(out.numpy(), m(x).numpy())  # no dropout in eval
    assert cm.traces == 2


def test_several_outputs_and_a_non_float_one():
    def f(x, w):
        h = x @ w
        return h.sum(), ng.relu(h), ng.argmax(h, 1)

    jf = ng.jit(f)
    x = ng.tensor(rng.standard_normal((4, 3)))
    w = ng.tensor(rng.standard_normal((3, 5)), requires_grad=True)
    for _ in range(3):
        w.grad = None
        s, r, idx = jf(x, w)
        assert idx.dtype.kind == "i" and not idx.requires_grad
        (2 * s + (r * r).sum()).backward()
        h = x.numpy() @ w.numpy()
        want = x.numpy().T @ (2 + 2 * np.maximum(h, 0))
        _close(w.grad.numpy(), want, 1e-12)
    np.testing.assert_array_equal(idx.numpy(), np.argmax(h, 1))


def test_the_same_tensor_twice_and_an_unused_one():
    jf = ng.jit(lambda a, b, c: (a * b).sum())
    a = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    c = ng.tensor([5.0], requires_grad=True)
    for _ in range(3):
        a.grad = None
        jf(a, a, c).backward()
        np.testing.assert_array_equal(a.grad.numpy(), [2.0, 4.0, 6.0])
        assert c.grad is None


def test_a_frozen_parameter_retraces_and_gets_no_gradient():
    ng.manual_seed(0)
    m = nn.Linear(3, 2)
    cm = ng.jit(m)
    x = ng.randn(4, 3)
    cm(x).sum().backward()
    cm(x).sum().backward()
    m.weight.requires_grad = False
    m.zero_grad()
    cm(x).sum().backward()
    assert m.weight.grad is None
    np.testing.assert_allclose(m.bias.grad.numpy(), [4.0, 4.0])


def test_a_leaf_hook_runs_once_per_backward():
    """A gradient hook on a parameter (or an input leaf) runs once per backward through a
    replayed call and changes the gradient once, as eagerly: it stays out of the compiled
    backward (it was in it and ran again on the leaf, doubling the gradient twice)."""
    rng = np.random.default_rng(4)
    x = ng.tensor(rng.standard_normal((6, 4)).astype(np.float32))
    lin = nn.Linear(4, 3)
    calls = []
    lin.weight.register_hook(lambda g: (calls.append(1), g * 2)[1])
    xin = ng.tensor(x.numpy(), requires_grad=True)
    xin.register_hook(lambda g: g * 3)
    jm = ng.jit(lambda v: ng.tanh(lin(v)).sum())
    for _ in range(3):
        lin.weight.grad = xin.grad = None
        jm(xin).backward()
        got = lin.weight.grad.numpy().copy(), xin.grad.numpy().copy()
        lin.weight.grad = xin.grad = None
        ng.tanh(lin(xin)).sum().backward()
        assert np.allclose(got[0], lin.weight.grad.numpy(), rtol=1e-6)
        assert np.allclose(got[1], xin.grad.numpy(), rtol=1e-6)
    assert len(calls) == 6 and jm.traces == 1  # once per backward, jitted or not


def test_batch_norm_cumulative_average_under_jit_equals_torch():
    """BatchNorm's momentum=None (1 / the batch count) under jit: each replay moves the
    running statistics by its own count (the traced call's 1/1 was baked in)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    ours, theirs = nn.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3, momentum=None)
    step = ng.jit(ours)
    for _ in range(5):
        x = rng.standard_normal((8, 3)).astype(np.float32) * 2 + 1
        step(ng.tensor(x))
        theirs(torch.tensor(x))
    assert step.traces == 1
    np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.detach().numpy(),
                               rtol=1e-5)


def test_second_derivatives_need_the_function_itself():
    jf = ng.jit(lambda w: (w ** 3).sum())
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    (g,) = ng.autograd.grad(jf(w), [w], create_graph=True)  # the traced call: eager's graph
    np.testing.assert_array_equal(g.numpy(), [3.0, 12.0])
    with pytest.raises(ng.GradError, match="not differentiable again"):
        ng.autograd.grad(jf(w), [w], create_graph=True)  # a replay: the compiled backward
    # ng.grad of a jitted function runs it eagerly: any order works
    h = ng.grad(ng.grad(lambda w: jf(w)))
    np.testing.assert_array_equal(h(ng.tensor(2.0)).numpy(), 12.0)


def test_a_jitted_model_on_the_device(cuda):
    eager, compiled = _models(ng.float32, "mlp")
    eager.to(cuda)
    compiled.to(cuda)
    cm = ng.jit(compiled)
    x = ng.tensor(rng.standard_normal((8, 6)).astype(np.float32), device=cuda)
    y = ng.tensor(rng.integers(0, 3, 8), device=cuda)
    opts = [ng.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]
    for step in range(5):
        for call, opt in ((eager, opts[0]), (cm, opts[1])):
            ng.manual_seed(step)
            opt.zero_grad()
            F.cross_entropy(call(x), y).backward()
            opt.step()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        _close(b.numpy(), a.numpy(), 2e-5)
    assert cm.last.diff is not None


def test_state_may_be_a_list():
    m = nn.Linear(2, 2)
    opt = ng.optim.SGD(m.parameters(), lr=0.1)
    f = ng.jit(lambda x: m(x).sum(), state=[m, opt])
    x = ng.randn(3, 2)
    assert float(f(x)) == float(m(x).sum())
