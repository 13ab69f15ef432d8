"""Indexing, views and in-place writes checked against PyTorch: a 0-d integer tensor indexes
as an int, setitem casts its value while recording, ``view`` shares memory or refuses,
``view(dtype)``, ``unfold`` is a view of its input, ``fill_`` takes a number or a 0-d tensor."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

A = np.arange(24.0).reshape(2, 3, 4)


def test_a_0d_integer_tensor_indexes_as_an_int():
    """PyTorch selects with a 0-d integer tensor (a view), so a slice between it and an index
    array does not send the array's dims to the front, as NumPy's 0-d array would."""
    for idx in (lambda m: (m.tensor(1), slice(None), [0, 1]),
                lambda m: ([0, 1], m.tensor(2), [0, 0]),
                lambda m: (slice(None), m.tensor(-1), m.tensor([3, 1]))):
        want = torch.tensor(A)[idx(torch)]
        got = ng.tensor(A)[idx(ng)]
        assert tuple(got.shape) == tuple(want.shape)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    x, t = ng.tensor(A), torch.tensor(A)
    x[ng.tensor(1), :, [0, 1]] = ng.tensor([[7.0, 8.0]] * 3, dtype=ng.float64)
    t[torch.tensor(1), :, [0, 1]] = torch.tensor([[7.0, 8.0]] * 3, dtype=torch.float64)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    x[ng.tensor(0)][1] = -1.0  # a view: the write reaches x
    assert (x[0, 1] == -1.0).all()


def test_a_0d_integer_tensor_index_keeps_gradients_and_views_while_recording():
    a = ng.tensor(A, requires_grad=True)
    y = a * 1
    y[ng.tensor(1)][0] = 5.0
    (y * y).sum().backward()
    t = torch.tensor(A, requires_grad=True)
    z = t * 1
    z[torch.tensor(1)][0] = 5.0
    (z * z).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), z.detach().numpy())
    np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy())


def test_setitem_while_recording_casts_the_value_to_the_tensors_dtype():
    def run(m):
        x = m.tensor(A, requires_grad=True)
        v = m.tensor([1.5, 2.5], requires_grad=True)  # float32 into float64
        y = x.clone()
        y[0, 0, :2] = v
        (y * y).sum().backward()
        return y, x.grad, v.grad
    got, want = run(ng), run(torch)
    for g, w in zip(got, want):
        assert str(g.dtype).split(".")[-1] == str(w.dtype).split(".")[-1]
        np.testing.assert_allclose(g.detach().numpy(), w.detach().numpy())


def test_setitem_errors_name_setitem_and_the_shapes():
    x = ng.zeros(3, 4)
    with pytest.raises(ng.ShapeError, match=r"setitem: a value of shape \(2,\)"):
        x[:, 1] = ng.ones(2)
    with pytest.raises(IndexError, match=r"setitem: .*shape \(3, 4\).*index 5"):
        x[[0, 5]] = 1.0


def test_view_shares_memory_or_refuses():
    x = ng.arange(12.0).reshape(3, 4)
    for f in (lambda v: v.t().view(-1), lambda v: v[:, :2].view(-1)):
        with pytest.raises(ng.ShapeError, match="view: .*reshape"):
            f(x)
        with pytest.raises(RuntimeError):  # PyTorch refuses the same
            f(torch.arange(12.0).reshape(3, 4))
    v = x[:, 1:].view(3, 3, 1)
    v.mul_(10)
    assert x[0].tolist() == [0.0, 10.0, 20.0, 30.0]
    x = ng.arange(12.0).reshape(3, 4)
    assert x.t().contiguous().view(-1).tolist() == torch.arange(12.0).reshape(3, 4).t(
        ).contiguous().view(-1).tolist()
    # an op's own layout (a convolution's is channels last) is not a view: PyTorch's output
    # is contiguous there, so view works
    c = ng.nn.Conv2d(2, 3, 3)(ng.randn(2, 2, 5, 5))
    assert tuple(c[0].view(-1).shape) == (27,)


def test_view_dtype_reads_the_same_bytes():
    t = torch.arange(6.0).reshape(2, 3)
    x = ng.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(x.view(ng.int32).numpy(), t.view(torch.int32).numpy())
    np.testing.assert_array_equal(x.view(ng.float16).numpy(), t.view(torch.float16).numpy())
    assert tuple(x.view(ng.float16).shape) == (2, 6)
    x.view(ng.int32).zero_()  # the same memory
    assert x.sum().item() == 0.0
    with pytest.raises(ng.ShapeError, match="divisible"):
        ng.ones(3).view(ng.float64)
    with pytest.raises(ng.ShapeError, match="stride"):
        ng.ones(3, 2).t().view(ng.float16)


@pytest.mark.parametrize("dim,size,step", [(1, 2, 2), (1, 2, 3), (0, 1, 1), (2, 4, 4),
                                           (1, 3, 1), (1, 1, 4)])
def test_unfold_is_a_view_of_its_input(dim, size, step):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 7, 4))
    w = rng.standard_normal((3, 7, 4))
    overlap = step < size or (a.shape[dim] - size) // step * step + step > a.shape[dim]

    def run(m):
        x = m.tensor(a, requires_grad=True)
        y = x * 1
        u = y.unfold(dim, size, step)
        y.mul_(2)  # the base's change shows in the view taken before it
        seen = u.detach().numpy().copy()
        if not overlap:
            u.add_(1)  # and the view's change reaches the base
        (y * m.tensor(w)).sum().backward()
        return seen, y.detach().numpy(), x.grad.numpy()

    for g, t in zip(run(ng), run(torch)):
        np.testing.assert_allclose(g, t)
    if not overlap:
        x, t = ng.tensor(a), torch.tensor(a)
        x.unfold(dim, size, step).mul_(10)
        t.unfold(dim, size, step).mul_(10)
        np.testing.assert_allclose(x.numpy(), t.numpy())


def test_unfold_shares_the_version_counter():
    x = ng.arange(6.0, requires_grad=True)
    y = x * 1
    z = (y.unfold(0, 3, 1) ** 2).sum()
    with ng.no_grad():
        y.mul_(2)  # writes the memory the product saved, through the base
    with pytest.raises(ng.InplaceError):
        z.backward()
    with pytest.raises(ng.ShapeError, match="unfold"):
        (ng.arange(6.0, requires_grad=True) * 1).unfold(0, 3, 1).mul_(2)


def test_fill_takes_a_number_or_a_0d_tensor():
    x = ng.zeros(2, 3)
    with pytest.raises(ng.ShapeError, match="fill_: .*0-d"):
        x.fill_(ng.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(RuntimeError):
        torch.zeros(2, 3).fill_(torch.tensor([1.0, 2.0, 3.0]))
    assert x.fill_(ng.tensor(2.5)).tolist() == [[2.5] * 3] * 2


def test_a_detached_tensor_shows_in_place_changes_recorded_on_its_source():
    """``detach()`` shares memory in PyTorch, so it shows a later in-place op on the tensor it
    came from, even one recorded for autograd; it holds neither that tensor nor its graph."""
    def run(m):
        x = m.ones(3, requires_grad=True)
        y = x * 1
        d, e = y.detach(), y[1:].detach()
        y.mul_(2)
        y[0] = 7.0
        return d.tolist(), e.tolist()
    assert run(ng) == run(torch)
    import gc
    import weakref
    x = ng.ones(3, requires_grad=True)
    y = (x * 2).exp()
    ref = weakref.ref(y)
    d = y.detach()
    del y
    gc.collect()
    assert ref() is None and d.tolist() == [pytest.approx(7.389056, rel=1e-6)] * 3
    y = x * 1
    y.detach().detach_()  # a detached tensor is no view: detach_ is fine
    assert y.view(ng.int32).tolist() == [1065353216] * 3


def test_a_list_index_that_is_not_one_index_array_is_refused_clearly():
    x = ng.arange(6.0).reshape(2, 3)
    for idx in ([ng.tensor([0, 1]), 1], [slice(0, 1), 1], [[0, 1], [1]]):
        with pytest.raises(TypeError, match="list index must hold ints or bools"):
            x[idx]
        with pytest.raises(TypeError, match="setitem: a list index"):
            x[idx] = 1.0
    assert tuple(x[[1, 0]].shape) == (2, 3)


def test_copy_into_a_shape_the_source_does_not_broadcast_to_names_copy():
    x = ng.zeros(3, 4)
    with pytest.raises(ng.ShapeError, match=r"copy_: a value of shape \(2, 3, 4\)"):
        x.copy_(ng.ones(2, 3, 4))
    with pytest.raises(RuntimeError):
        torch.zeros(3, 4).copy_(torch.ones(2, 3, 4))
    assert x.copy_(ng.ones(4)).sum().item() == 12.0


def test_sliding_windows_share_their_inputs_version_counter():
    """NumPy's as_strided result has a stand-in base object: the windows are linked to the
    array it holds, so a no_grad change of a saved input is caught, as in PyTorch."""
    x = ng.ones(4, requires_grad=True)
    y = x * 1
    w = ng.sliding_window_view(y, 3)
    z = (w * w).sum()
    with ng.no_grad():
        y.mul_(2)
    with pytest.raises(ng.errors.InplaceError):
        z.backward()


def test_recorded_fill_takes_a_number_or_a_0d_tensor():
    y = ng.ones(4, requires_grad=True) * 1
    with pytest.raises(ng.errors.ShapeError, match="fill_"):
        y.fill_(ng.tensor([1.0, 2.0, 3.0, 4.0]))
    y.fill_(ng.tensor(2.0))
    assert (y.numpy() == 2.0).all()
