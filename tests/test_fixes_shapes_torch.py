"""Shape and view ops checked against PyTorch: flatten's dim checks, moveaxis with sequences,
split of an empty dim, expand's and broadcast_to's -1, cat's legacy empty tensors (also
through concat and hstack), tile's spread sizes, repeat_interleave and unflatten refusals."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _run(fn, *arrays):
    """fn(module, *tensors) under PyTorch and nodegrad: (torch result, nodegrad result), each
    a list of tensors, or the exception type raised."""
    out = []
    for m in (torch, ng):
        try:
            r = fn(m, *(m.tensor(a) for a in arrays))
        except Exception as e:  # noqa: BLE001 - the comparison is of whether both raise
            out.append(type(e))
            continue
        out.append(list(r) if isinstance(r, list | tuple) else [r])
    return out


def _same(fn, *arrays):
    want, got = _run(fn, *arrays)
    assert not isinstance(want, type), f"PyTorch raised {want}"
    assert not isinstance(got, type), f"nodegrad raised {got}"
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape)
        assert str(g.dtype).split(".")[-1] == str(w.dtype).split(".")[-1]
        np.testing.assert_array_equal(g.detach().numpy(), w.detach().numpy())


def _both_raise(fn, *arrays):
    want, got = _run(fn, *arrays)
    assert isinstance(want, type), "PyTorch accepts this"
    assert isinstance(got, type) and issubclass(got, ng.ShapeError | TypeError | IndexError), got


A = np.arange(24.0).reshape(2, 3, 4)


@pytest.mark.parametrize("dims", [(1, 0), (-1, 0), (2, 1), (-1, -2)])
def test_flatten_start_dim_after_end_dim_raises(dims):
    _both_raise(lambda m, x: x.flatten(*dims), A)
    _both_raise(lambda m, x: m.flatten(x, *dims), A)


@pytest.mark.parametrize("dims", [(1, 0), (0, 1), (-2, 0), (0, -2)])
def test_flatten_of_a_0d_tensor_checks_its_dims(dims):
    _both_raise(lambda m, x: m.flatten(x, *dims), np.array(2.0))


@pytest.mark.parametrize("dims", [(0, 0), (-1, 0), (0, -1)])
def test_flatten_of_a_0d_tensor_gives_one_entry(dims):
    _same(lambda m, x: m.flatten(x, *dims), np.array(2.0))


@pytest.mark.parametrize("src,dst", [([0, 1], [2, 0]), ((2,), (0,)), ([], []), ((0, -1), (-1, 0))])
def test_moveaxis_takes_sequences(src, dst):
    _same(lambda m, x: m.moveaxis(x, src, dst), A)
    _same(lambda m, x: x.moveaxis(src, dst), A)


@pytest.mark.parametrize("src,dst", [(0, 0), (-1, 0), ([0], [-1]), ((), ())])
def test_moveaxis_of_a_0d_tensor(src, dst):
    _same(lambda m, x: m.moveaxis(x, src, dst), np.array(3.0))


@pytest.mark.parametrize("src,dst", [([0, 0], [1, 2]), ([0], [1, 2]), (3, 0)])
def test_moveaxis_refuses_what_pytorch_refuses(src, dst):
    _both_raise(lambda m, x: m.moveaxis(x, src, dst), A)


@pytest.mark.parametrize("sizes", [0, 2, []])
def test_split_of_an_empty_dim(sizes):
    e = np.zeros((2, 0, 3))
    _same(lambda m, x: x.split(sizes, 1), e)
    _same(lambda m, x: m.split(x, sizes, dim=1), e)


@pytest.mark.parametrize("sizes", [-1, [-1, 4], [5, -2]])
def test_split_refuses_negative_sizes(sizes):
    _both_raise(lambda m, x: x.split(sizes, 2), A)


@pytest.mark.parametrize("sizes", [(-1, 2, 3, 4), (2, -1, -1, 4), (-1, 3, 4)])
def test_expand_refuses_minus_one_in_a_new_leading_dim(sizes):
    _both_raise(lambda m, x: x.expand(*sizes), A[0])
    _both_raise(lambda m, x: x.expand(sizes), A[0])


def test_expand_refuses_fewer_sizes_than_dims():
    _both_raise(lambda m, x: x.expand(4), A[0])


@pytest.mark.parametrize("shape", [(2, -1, 4), (5, -1, 3, -1), (0, 2, -1, 4)])
def test_broadcast_to_keeps_a_size_for_minus_one(shape):
    _same(lambda m, x: m.broadcast_to(x, shape), A[:, :, :1] if shape[-1] == -1 else A)


def test_broadcast_to_minus_one_gradient():
    a = np.random.default_rng(0).standard_normal((3, 1))
    w = np.random.default_rng(1).standard_normal((2, 3, 5))
    grads = []
    for m in (torch, ng):
        x = m.tensor(a, requires_grad=True)
        (m.broadcast_to(x, (2, -1, 5)) * m.tensor(w)).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)


CAT_CASES = [
    lambda m: m.cat([m.zeros(0), m.zeros(0)], 1),
    lambda m: m.cat([m.zeros(0), m.zeros(0)], -5),
    lambda m: m.cat([m.zeros(2, 3, dtype=m.int64), m.zeros(0, dtype=m.float64)], 1),
    lambda m: m.cat([m.zeros(0, dtype=m.float64), m.ones(2, 3, dtype=m.int32)], -1),
    lambda m: m.concat([m.ones(2, 3), m.zeros(0)], dim=1),
    lambda m: m.concat([m.zeros(0), m.ones(2, 3)], dim=-2),
    lambda m: m.hstack([m.ones(2, 3), m.zeros(0)]),
    lambda m: m.hstack([m.ones(2, 3), m.zeros(0), m.ones(2, 1)]),
]


@pytest.mark.parametrize("case", range(len(CAT_CASES)))
def test_cat_leaves_out_legacy_empty_tensors(case):
    _same(lambda m: CAT_CASES[case](m))


@pytest.mark.parametrize("fn", [lambda m: m.cat([m.zeros(0), m.zeros(2, 3)], 2),
                                lambda m: m.concat([m.zeros(2, 3), m.zeros(0), m.zeros(3, 3)], 1),
                                lambda m: m.hstack([m.zeros(2, 3), m.zeros(0), m.zeros(3)])])
def test_cat_with_legacy_empty_tensors_still_checks_the_others(fn):
    _both_raise(lambda m: fn(m))


@pytest.mark.parametrize("reps", [(2, 1), (1, 2, 2), (3,)])
def test_tile_method_takes_spread_sizes(reps):
    _same(lambda m, x: x.tile(*reps), A[0])
    _same(lambda m, x: m.tile(x, dims=reps), A[0])


@pytest.mark.parametrize("dim", [0, -1, 1])
def test_repeat_interleave_with_a_dim_refuses_a_0d_tensor(dim):
    _both_raise(lambda m, x: m.repeat_interleave(x, 2, dim=dim), np.array(1.0))
    _same(lambda m, x: m.repeat_interleave(x, 2), np.array(1.0))


def test_unflatten_refuses_empty_sizes():
    _both_raise(lambda m, x: m.unflatten(x, 0, ()), np.zeros((1, 3)))
    _both_raise(lambda m, x: x.unflatten(-1, []), np.zeros((3, 1)))


@pytest.mark.parametrize("fn", [lambda m, x: m.broadcast_to(x, (1, 1, 2, 3)),
                                lambda m, x: x.expand(1, 2, 3),
                                lambda m, x: x.expand(1, -1, -1).contiguous(),
                                lambda m, x: x.expand_as(m.zeros(1, 2, 3)).view(-1)])
def test_expanding_by_new_length_1_dims_is_a_writable_view(fn):
    """No element is repeated, so PyTorch's view takes in-place writes, which reach the base."""
    bases = []
    for m in (torch, ng):
        x = m.tensor(A[0, :2, :3].copy())
        fn(m, x).mul_(2)
        bases.append(x.numpy().copy())
    np.testing.assert_array_equal(bases[1], bases[0])
    assert (bases[1] == 2 * A[0, :2, :3]).all()


def test_expanding_by_new_length_1_dims_gradient():
    a = np.random.default_rng(0).standard_normal((2, 3))
    w = np.random.default_rng(1).standard_normal((1, 1, 2, 3))
    grads = []
    for m in (torch, ng):
        x = m.tensor(a, requires_grad=True)
        (x.expand(1, 1, 2, 3) * m.tensor(w)).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)


@pytest.mark.parametrize("fn", [
    lambda m, x: m.split(x, split_size_or_sections=2),
    lambda m, x: m.split(x, split_size_or_sections=[1, 2], dim=1),
    lambda m, x: m.split(x, split_size_or_sections=3, dim=-1),
    lambda m, x: x.split(m.tensor(2)),
    lambda m, x: x.split(m.tensor(3), 2),
    lambda m, x: m.split(x, m.tensor(1), dim=0),
])
def test_split_takes_pytorchs_keyword_and_a_0d_size(fn):
    _same(fn, A)
