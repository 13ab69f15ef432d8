"""A basic slice's gradient added into the engine's own pending sum in place
(``Primitive.add_into``): the bits of adding its zero-padded message, which a create_graph
backward (or a jit trace) still adds, with no array of the base's shape per part."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import autodiff


def _grads(f, *shapes, dtype=np.float32, create_graph=False, seed=0):
    rng = np.random.default_rng(seed)
    xs = [ng.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in shapes]
    f(*xs).backward(create_graph=create_graph)
    return [x.grad.detach().numpy().tobytes() for x in xs]


def _split_heads(x):
    q, k, v = x.split(4, dim=2)
    return (q * 2 + k * k - v.exp()).sum()


def _time_loop(x):
    h = ng.zeros((x.shape[0], x.shape[2]), dtype=x.dtype)
    for t in range(x.shape[1]):
        h = ng.tanh(x[:, t] + h * 0.5)
    return h.sum()


def _mixed(x):  # direct uses (whose messages may hold -0.0) before and after slices
    y = (x * -0.0).sum() + (x * 0.0).sum()
    y = y + sum(((p * -1.0) * 0.0).sum() for p in x.unbind(0))
    return y + x[1:, ::2].sum() * -0.0 + (x * x).sum()


def _negative_zero_parts(x):  # a part whose message is -0.0, before and after the others
    return ((x[:2] * -0.0).sum() + (x[2:4] * 2.0).sum() + (x[4:] * -0.0).sum()
            + (x[3:5] * -0.0).sum())


def _overlap(x):
    return (x[:, :5] * 3).sum() + (x[:, 3:] ** 2).sum() + x[:, 4].sum() + x[..., None][0].sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("f", [_split_heads, _time_loop, _mixed, _negative_zero_parts,
                               _overlap])
def test_slice_gradients_in_place_have_the_out_of_place_bits(f, dtype):
    shape = (6, 10, 12)
    assert _grads(f, shape, dtype=dtype) == _grads(f, shape, dtype=dtype, create_graph=True)


def test_slice_gradients_add_in_place(monkeypatch):
    """The parts' messages after the first go into the pending sum: one scatter, not three."""
    calls = []
    real = autodiff._apply_vjps

    def spy(n, g, *a, **k):
        calls.append(n.prim.name)
        return real(n, g, *a, **k)

    monkeypatch.setattr(autodiff, "_apply_vjps", spy)
    from nodegrad.ops import index

    scatters = []
    monkeypatch.setattr(index._scatter, "fwd",
                        lambda xp, *a, _f=index._scatter.fwd, **k: scatters.append(1) or _f(
                            xp, *a, **k))
    x = ng.tensor(np.ones((4, 9), np.float32), requires_grad=True)
    a, b, c = x.split(3, dim=1)
    (a.sum() + b.sum() * 2 + c.sum() * 3).backward()
    assert calls.count("getitem") == 3
    assert len(scatters) == 1
    assert np.array_equal(x.grad.numpy(), np.repeat([[1, 2, 3]] * 4, 3, axis=1))


def test_advanced_index_gradients_keep_the_scatter():
    """Repeated positions add in add.at's order: an advanced index is not added in place."""
    x = ng.tensor(np.arange(6, dtype=np.float32), requires_grad=True)
    y = x[[0, 0, 1]].sum() + x[[0, 2, 2]].sum() * 2 + x[1:3].sum()
    y.backward()
    assert np.array_equal(x.grad.numpy(), [4, 2, 5, 0, 0, 0])
