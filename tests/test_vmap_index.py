"""Index tensors batched inside ``vmap``: each example indexes with its own indices (an
embedding lookup or a per-example target inside a per-example gradient), for ``x[index]``,
``index_update``/``x[index] = v`` and ``index_put``, in every placement NumPy's advanced
indexing has, against a loop over the examples."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import functional as F

N = 3
SHAPE = (4, 5, 6)
rng = np.random.default_rng(0)


def _ints(shape, hi):
    return rng.integers(-hi, hi, shape)


B = "batched"  # an index tensor with one row of indices per example
# each pattern: the example's index, "B" standing for a batched (2, 3) index tensor into the
# axis it addresses and an ndarray for an unbatched one
PATTERNS = {
    "one": lambda: (B,),
    "two adjacent": lambda: (B, B),
    "after a slice": lambda: (slice(None), B),
    "split by a slice": lambda: (B, slice(1, 4), B),
    "int then slice then batched": lambda: (1, slice(None), B),
    "ellipsis": lambda: (Ellipsis, B),
    "none and unbatched": lambda: (None, B, _ints((3,), 5)),
    "unbatched then batched": lambda: (_ints((2, 1), 4), B, slice(None, None, 2)),
    "batched then int": lambda: (slice(None), B, -1),
    "mask then batched": lambda: (np.array([True, False, True, True]), B),
}


def _index(pattern, example_indices):
    """The example's index with its batched entries filled from ``example_indices``."""
    it = iter(example_indices)
    return tuple(next(it) if e is B else e for e in pattern)


def _batched_entries(pattern):
    """Per-example integer indices, (N, 2, 3), for each batched entry, in range of its axis."""
    out, axis = [], 0
    for e in pattern:
        if e is B:
            out.append(_ints((N, 2, 3), SHAPE[axis]))
        if isinstance(e, np.ndarray) and e.dtype == bool:
            axis += e.ndim
        elif e is Ellipsis:
            axis = len(SHAPE) - sum(1 for f in pattern[pattern.index(Ellipsis) + 1:]
                                    if f is not None)
        elif e is not None:
            axis += 1
    return out


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("x_batched", [True, False])
def test_getitem_with_batched_indices_equals_a_loop(name, x_batched):
    pattern = PATTERNS[name]()
    idx = _batched_entries(pattern)
    x = rng.standard_normal((N,) + SHAPE if x_batched else SHAPE)
    want = np.stack([ng.tensor(x[k] if x_batched else x)[_index(pattern, [i[k] for i in idx])]
                     .numpy() for k in range(N)])  # each example as indexed outside vmap

    def f(x, *ix):
        return x[_index(pattern, ix)]

    got = ng.vmap(f, in_axes=(0 if x_batched else None,) + (0,) * len(idx))(
        ng.tensor(x), *map(ng.tensor, idx))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("name", ["one", "split by a slice", "int then slice then batched",
                                  "none and unbatched"])
def test_gradients_through_batched_indices(name):
    """vmap of grad (each example's gradient) and grad of vmap (summed), in x and a weight."""
    pattern = PATTERNS[name]()
    idx = _batched_entries(pattern)
    x = rng.standard_normal(SHAPE)
    sub = tuple(ng.tensor(x)[_index(pattern, [i[0] for i in idx])].shape)
    w = rng.standard_normal(sub)

    def loss(x, *ix):
        return (x[_index(pattern, ix)] ** 2 * ng.tensor(w)).sum()

    per = ng.vmap(ng.grad(loss), in_axes=(None,) + (0,) * len(idx))(
        ng.tensor(x), *map(ng.tensor, idx)).numpy()
    for k in range(N):  # each example's gradient outside vmap, then by hand
        ex = [ng.tensor(i[k]) for i in idx]
        want = ng.grad(loss)(ng.tensor(x), *ex).numpy()
        np.testing.assert_allclose(per[k], want, rtol=1e-12)
        if name != "int then slice then batched":  # NumPy's index order is PyTorch's here
            by_hand = np.zeros_like(x)
            np.add.at(by_hand, _index(pattern, [i[k] for i in idx]), 2 * x[_index(
                pattern, [i[k] for i in idx])] * w)
            np.testing.assert_allclose(want, by_hand, rtol=1e-12)
    total = ng.grad(lambda x: ng.vmap(loss, in_axes=(None,) + (0,) * len(idx))(
        x, *map(ng.tensor, idx)).sum())(ng.tensor(x))
    np.testing.assert_allclose(total.numpy(), per.sum(0), rtol=1e-12)


@pytest.mark.parametrize("name", ["one", "two adjacent", "split by a slice", "ellipsis",
                                  "batched then int"])
@pytest.mark.parametrize("value_batched", [True, False])
def test_index_update_and_setitem_with_batched_indices(name, value_batched):
    pattern = PATTERNS[name]()
    x = rng.standard_normal((N,) + SHAPE)
    # distinct positions per example, so the written value does not depend on the write order
    idx, axis = [], 0
    for e in pattern:
        if e is B:
            idx.append(np.stack([rng.permutation(SHAPE[axis])[:2] for _ in range(N)]))
        if e is not None:
            axis += 1 if e is not Ellipsis else len(SHAPE) - 1 - axis
    sub = x[0][_index(pattern, [i[0] for i in idx])].shape
    v = rng.standard_normal((N,) + sub if value_batched else sub[-1:])

    want = x.copy()
    for k in range(N):
        want[k][_index(pattern, [i[k] for i in idx])] = v[k] if value_batched else v

    def update(x, v, *ix):
        return ng.index_update(x, _index(pattern, ix), v)

    def assign(x, v, *ix):
        y = x * 1.0
        y[_index(pattern, ix)] = v
        return y

    dims = (0, 0 if value_batched else None) + (0,) * len(idx)
    for f in (update, assign):
        got = ng.vmap(f, in_axes=dims)(ng.tensor(x), ng.tensor(v), *map(ng.tensor, idx))
        np.testing.assert_array_equal(got.numpy(), want)


def test_index_put_accumulates_repeated_batched_indices_and_its_gradient():
    x = rng.standard_normal((N, 5, 2))
    rows = np.array([[0, 0, 3], [4, 1, 4], [2, 2, 2]])
    v = rng.standard_normal((N, 3, 2))
    want = np.zeros_like(x)
    for k in range(N):
        np.add.at(want[k], rows[k], v[k])
    want += x  # index_put's order: the added values summed, then added to x
    put = ng.vmap(lambda x, r, v: ng.index_put(x, (r,), v, accumulate=True))
    got = put(ng.tensor(x), ng.tensor(rows), ng.tensor(v))
    np.testing.assert_array_equal(got.numpy(), want)
    g = ng.vmap(ng.grad(lambda v, x, r: (ng.index_put(x, (r,), v, accumulate=True) ** 2).sum()))(
        ng.tensor(v), ng.tensor(x), ng.tensor(rows)).numpy()
    for k in range(N):
        np.testing.assert_allclose(g[k], 2 * want[k][rows[k]], rtol=1e-12)


def test_a_batched_mask_updates_by_where_and_refuses_to_select():
    x = rng.standard_normal((N, 4, 3))
    mask = rng.random((N, 4)) < 0.5
    v = rng.standard_normal(3)
    got = ng.vmap(lambda x, m: ng.index_put(x, (m,), ng.tensor(v)))(ng.tensor(x),
                                                                     ng.tensor(mask))
    want = np.where(mask[..., None], v, x)
    np.testing.assert_array_equal(got.numpy(), want)
    added = ng.vmap(lambda x, m: ng.index_put(x, (m,), ng.tensor(v), accumulate=True))(
        ng.tensor(x), ng.tensor(mask))
    np.testing.assert_array_equal(added.numpy(), x + np.where(mask[..., None], v, 0))
    with pytest.raises(TypeError, match="batched boolean mask .* different number"):
        ng.vmap(lambda x, m: x[m])(ng.tensor(x), ng.tensor(mask))


def test_nested_vmaps_batch_indices_at_either_level():
    x = rng.standard_normal((2, N, 6))
    i = rng.integers(0, 6, (2, N, 4))
    both = ng.vmap(ng.vmap(lambda x, i: x[i]))(ng.tensor(x), ng.tensor(i))
    np.testing.assert_array_equal(both.numpy(), np.take_along_axis(x, i, 2))
    # the index batched by the outer vmap only, x by the inner only
    j = rng.integers(0, 6, (2, 4))
    inner = ng.vmap(lambda j: ng.vmap(lambda x: x[j])(ng.tensor(x[0])))(ng.tensor(j))
    np.testing.assert_array_equal(inner.numpy(), x[0][:, j].transpose(1, 0, 2))


def test_per_example_gradients_of_an_embedding_model_equal_a_loop():
    """The torch.func recipe (functional_call, grad, vmap) on a model that looks tokens up."""
    ng.manual_seed(0)
    model = ng.nn.Sequential(ng.nn.Embedding(10, 4), ng.nn.Flatten(), ng.nn.Linear(12, 3))
    tokens = ng.tensor(rng.integers(0, 10, (5, 3)))
    target = ng.tensor(rng.integers(0, 3, 5))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, t, y):
        out = ng.func.functional_call(model, p, (t[None],))
        return F.cross_entropy(out, y[None])

    per = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))(params, tokens, target)
    for k in range(5):
        model.zero_grad()
        F.cross_entropy(model(tokens[k:k + 1]), target[k:k + 1]).backward()
        for name, p in model.named_parameters():
            np.testing.assert_allclose(per[name][k].numpy(), p.grad.numpy(), rtol=1e-5,
                                       atol=1e-7)


def test_jit_of_vmap_with_batched_indices():
    x = ng.tensor(rng.standard_normal((6, 2)))
    i = ng.tensor(rng.integers(0, 6, (N, 4)))
    f = ng.jit(ng.vmap(lambda i: x[i] * 2, in_axes=0))
    np.testing.assert_array_equal(f(i).numpy(), x.numpy()[i.numpy()] * 2)
    np.testing.assert_array_equal(f(i).numpy(), x.numpy()[i.numpy()] * 2)


def test_an_unbatched_tensor_refuses_an_in_place_write_at_batched_indices():
    x = ng.zeros(5)

    def write(i):
        x[i] = 1.0
        return x

    with pytest.raises(TypeError, match="setitem: .* at batched indices"):
        ng.vmap(write)(ng.tensor([[0, 1], [2, 3]]))
    assert (x.numpy() == 0).all()


def test_a_scalar_index_per_example():
    """``logits[target]`` written for one example: a 0-d index tensor per example."""
    x = np.arange(12.0).reshape(3, 4)
    t = np.array([0, 3, -1])
    got = ng.vmap(lambda r, i: r[i])(ng.tensor(x), ng.tensor(t))
    np.testing.assert_array_equal(got.numpy(), x[np.arange(3), t])
    diag = ng.vmap(lambda i: ng.tensor(x)[i, i])(ng.tensor([0, 1, 2]))
    np.testing.assert_array_equal(diag.numpy(), [0.0, 5.0, 10.0])
    g = ng.vmap(ng.grad(lambda r, i: r[i] * 2))(ng.tensor(x), ng.tensor(t)).numpy()
    want = np.zeros_like(x)
    want[np.arange(3), t] = 2
    np.testing.assert_array_equal(g, want)
