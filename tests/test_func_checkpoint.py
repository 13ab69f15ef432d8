"""Activation checkpointing: the same values and gradients as without it (against PyTorch's
torch.utils.checkpoint too), dropout replayed, activations not kept, higher order, jit."""

import gc
import weakref

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.utils.checkpoint import checkpoint, checkpoint_sequential

torch = pytest.importorskip("torch")


def _mlp(lib, seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((8, 4)), rng.standard_normal(8), rng.standard_normal((3, 8)),
          rng.standard_normal(3)]
    if lib is torch:
        m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        m = m.double()
        for p, w in zip(m.parameters(), ws):
            p.data[...] = torch.tensor(w)
        return m
    m = nn.Sequential(nn.Linear(4, 8, dtype="float64"), nn.Tanh(),
                      nn.Linear(8, 3, dtype="float64"))
    for p, w in zip(m.parameters(), ws):
        p.data[...] = w
    return m


def test_values_and_gradients_match_torch_checkpoint():
    x = np.random.default_rng(1).standard_normal((5, 4))
    tm, nm = _mlp(torch), _mlp(ng)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.utils.checkpoint.checkpoint(tm, tx, use_reentrant=False)
    (ty ** 2).sum().backward()
    nx = ng.tensor(x, requires_grad=True)
    ny = checkpoint(nm, nx, use_reentrant=False)
    (ny ** 2).sum().backward()
    np.testing.assert_allclose(ny.numpy(), ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(nx.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    for p, q in zip(nm.parameters(), tm.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12)


def test_dropout_draws_the_same_masks_in_the_recomputation():
    m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    x = ng.randn(8, 4)
    grads = []
    for use in (False, True):
        m.zero_grad()
        ng.manual_seed(3)
        y = checkpoint(m, x) if use else m(x)
        y.sum().backward()
        grads.append([p.grad.numpy().copy() for p in m.parameters()])
        after = ng.rand(2)  # the stream goes on from the same place either way
        grads[-1].append(after.numpy())
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_the_segments_activations_are_not_kept():
    seen = []

    def segment(x):
        h = (x * 2).tanh()
        seen.append(weakref.ref(h))
        return (h * h).sum(1)

    x = ng.randn(3, 4, requires_grad=True)
    y = checkpoint(segment, x)
    gc.collect()
    assert seen[0]() is None  # dropped with the segment's graph
    y.sum().backward()  # the backward runs the segment again
    assert len(seen) == 2
    xv = x.detach().numpy()
    want = 2 * np.tanh(2 * xv) * (1 - np.tanh(2 * xv) ** 2) * 2
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5)


def test_higher_order_jit_and_trees():
    w = ng.tensor([0.5, -1.0, 2.0], dtype="float64", requires_grad=True)

    def f(v):
        return (v.sin() * v ** 2).sum()

    g2 = ng.grad(lambda v: ng.grad(ng.remat(f))(v).sum())(w)
    want = ng.grad(lambda v: ng.grad(f)(v).sum())(w)
    np.testing.assert_allclose(g2.numpy(), want.numpy(), rtol=1e-12)
    jitted = ng.jit(ng.grad(ng.remat(f)))
    for _ in range(2):
        np.testing.assert_allclose(jitted(w).numpy(), ng.grad(f)(w).numpy(), rtol=1e-12)

    def tree_fn(p, scale, *, shift):
        return {"a": p["u"] * scale + shift, "n": 3}, (p["v"] ** 2).sum()

    p = {"u": ng.tensor([1.0, 2.0], requires_grad=True), "v": ng.tensor([3.0], requires_grad=True)}
    out, s = checkpoint(tree_fn, p, 2.0, shift=1.0)
    assert out["n"] == 3
    (out["a"].sum() + s).backward()
    np.testing.assert_allclose(p["u"].grad.numpy(), [2.0, 2.0])
    np.testing.assert_allclose(p["v"].grad.numpy(), [6.0])


def test_an_input_changed_in_place_refuses_and_sequential_matches():
    x = ng.randn(3, requires_grad=True)
    y = x * 1.0
    z = checkpoint(lambda a: (a * a).sum(), y)
    with ng.no_grad():
        y.add_(1.0)
    with pytest.raises(ng.GradError, match="changed in place"):
        z.backward()
    m = _mlp(ng)
    x = ng.tensor(np.random.default_rng(2).standard_normal((4, 4)), requires_grad=True)
    ref = m(x)
    ref.sum().backward()
    want = [x.grad.numpy().copy()] + [p.grad.numpy().copy() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    out = checkpoint_sequential(m, 2, x)
    out.sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12)
    got = [x.grad.numpy()] + [p.grad.numpy() for p in m.parameters()]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match="debugging hooks"):
        checkpoint(m, x, debug=True)


def test_utils_data_is_the_data_package_under_torchs_name():
    from nodegrad.utils.data import DataLoader, TensorDataset

    assert DataLoader is ng.data.DataLoader and TensorDataset is ng.data.TensorDataset
