"""Views share memory and version counters as PyTorch's do, and in-place changes through them
reach their base, with and without autograd recording (each case against PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nodegrad as ng

_VIEWS = {
    "t": lambda y: y.t(), "transpose": lambda y: y.transpose(0, 1), "view": lambda y: y.view(12),
    "reshape": lambda y: y.reshape(2, 6), "unsqueeze": lambda y: y.unsqueeze(0),
    "flatten": lambda y: y.flatten(), "permute": lambda y: y.permute(1, 0),
    "diagonal": lambda y: y.diagonal(), "row": lambda y: y[1], "element": lambda y: y[1, 2],
    "narrow": lambda y: y.narrow(1, 1, 2), "chain": lambda y: y.t()[1:].reshape(-1),
    "movedim": lambda y: y.movedim(0, 1), "unflatten": lambda y: y.unflatten(1, (2, 2)),
}
_OPS = {"mul_": lambda v, w: v.mul_(w), "exp_": lambda v, w: v.exp_(),
        "copy_": lambda v, w: v.copy_(w * 2), "add_": lambda v, w: v.add_(w)}


def _run(lib, view, op):
    rng = np.random.default_rng(0)
    x = lib.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = lib.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    y = x * 1
    v = view(y)
    op(v, view(w * 1))
    ((y * y).sum() + (v * 3).sum()).backward()
    return [None if a is None else a.detach().numpy().copy() for a in (y, v, x.grad, w.grad)]


@pytest.mark.parametrize("op", list(_OPS))
@pytest.mark.parametrize("view", list(_VIEWS))
def test_an_in_place_change_through_a_view_while_recording_reaches_the_base(view, op):
    """It changed only the view (a new array); the base and its gradient kept the old value."""
    got, want = _run(ng, _VIEWS[view], _OPS[op]), _run(torch, _VIEWS[view], _OPS[op])
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-12)


def test_a_base_without_grad_takes_a_recorded_value_written_into_its_slice():
    for lib in (ng, torch):
        w = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
        x = lib.zeros(2, 3)
        x[1].copy_(w * w)
        assert x.requires_grad
        np.testing.assert_array_equal(x.detach().numpy(), [[0, 0, 0], [1, 4, 9]])
        x.sum().backward()
        np.testing.assert_array_equal(w.grad.numpy(), [2, 4, 6])


def test_an_element_is_a_view():
    """Indexing down to one element gave NumPy's scalar copy: writes into it were lost."""
    a = ng.tensor([1.0, 2.0])
    a[0].add_(1)
    assert a.tolist() == [2.0, 2.0]
    for r in a:
        r.zero_()
    assert a.tolist() == [0.0, 0.0]
    b = ng.tensor([[1, 2], [3, 4]])
    b[0, 1].fill_(9)
    b.select(0, 1).mul_(5)
    assert b.tolist() == [[1, 9], [15, 20]]


def test_diagonal_is_a_view():
    a = ng.zeros(3, 4)
    a.diagonal().fill_(1.0)
    a.diagonal(1).add_(2.0)
    t = torch.zeros(3, 4)
    t.diagonal().fill_(1.0)
    t.diagonal(1).add_(2.0)
    np.testing.assert_array_equal(a.numpy(), t.numpy())


@pytest.mark.parametrize("make", [
    lambda a: a.flip(0), lambda a: a.fliplr(), lambda a: a.flipud(), lambda a: a.rot90(0),
    lambda a: a.rot90(2), lambda a: a.roll(0, 0), lambda a: a.roll(0), lambda a: a.repeat(1, 1),
    lambda a: a.tile((1, 1)), lambda a: ng.nn.functional.pad(a, (0, 0)),
    lambda a: ng.nn.functional.pad(a, (-1, 0)), lambda a: ng.nn.functional.pad(
        a[None], (0, 0), mode="reflect")[0],
])
def test_ops_that_pytorch_copies_do_not_share_memory(make):
    """flip was NumPy's view, and the identity cases (and pad's crops) returned the input's
    array or a view of it."""
    a = ng.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = make(a)
    before = b.numpy().copy()
    a.zero_()
    np.testing.assert_array_equal(b.numpy(), before)
    b.fill_(7.0)
    assert a.sum().item() == 0


@pytest.mark.parametrize("view", [lambda y: y[1:], lambda y: y.reshape(3, 1),
                                  lambda y: y.unsqueeze(0), lambda y: y.diagonal()
                                  if y.ndim == 2 else y[:2]])
def test_views_share_the_version_counter(view):
    """A change through a view under no_grad of a value saved for backward: PyTorch's error,
    not a silently wrong gradient."""
    for lib, err in ((torch, RuntimeError), (ng, ng.errors.InplaceError)):
        x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 2
        z = (y * y).sum()
        with lib.no_grad():
            view(y).zero_()
        with pytest.raises(err, match="in ?place"):
            z.backward()
    w = ng.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    z = (w * w).sum()
    with ng.no_grad():
        w.t().mul_(10)
    with pytest.raises(ng.errors.InplaceError):
        z.backward()


def test_a_recorded_write_into_a_slice_keeps_what_its_views_saved_valid():
    """x[1:] = x[1:] * x[1:] while recording: the write is a new array, so what the product
    saved of the slice is unchanged and the gradient is right (PyTorch refuses this one)."""
    for xs in ([1.0, 2.0, 3.0], [0.5, -1.0, 4.0]):
        a = ng.tensor(xs, requires_grad=True)
        y = a * 1
        y[0] = 1.0
        y[1:] = y[1:] * y[1:]
        (y ** 2).sum().backward()
        t = torch.tensor(xs, requires_grad=True)
        (torch.cat([torch.ones(1), t[1:] * t[1:]]) ** 2).sum().backward()
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy())


def test_writing_into_an_expanded_view_while_recording_is_refused_clearly():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    with pytest.raises(ng.errors.ShapeError, match="single memory location"):
        y.expand(3, 2).mul_(ng.ones(3, 2, requires_grad=True))


def _stale(lib, view, op):
    rng = np.random.default_rng(1)
    x = lib.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = lib.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    y = x * 1
    v = view(y)  # taken before the in-place op
    u = view(y).reshape(-1)[:2]  # a view of a view
    op(y, w * 1)
    ((v * 3).sum() + (u * 5).sum() + (y * y).sum()).backward()
    return [a.detach().numpy().copy() for a in (v, u, y, x.grad, w.grad)]


@pytest.mark.parametrize("op", ["mul_", "add_", "copy_"])
@pytest.mark.parametrize("view", ["t", "reshape", "row", "narrow", "diagonal", "chain"])
def test_views_taken_before_an_in_place_op_while_recording_show_it(view, op):
    """They kept the old array: old values, and gradients into the old graph."""
    got, want = _stale(ng, _VIEWS[view], _OPS[op]), _stale(torch, _VIEWS[view], _OPS[op])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_a_sibling_view_shows_an_in_place_op_through_another():
    for lib in (ng, torch):
        x = lib.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
        y = x * 1
        a, b = y[0], y.t()
        a.mul_(10)
        np.testing.assert_array_equal(b.detach().numpy(), [[10, 3], [20, 4]])
        b.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), [[10, 10], [1, 1]])


def test_a_node_that_saved_a_tensor_rebound_later_reads_its_value_from_then():
    """With views about, a recorded in-place op leaves the shared counter alone; a node that
    saved the tensor object itself read the new array (a silently wrong gradient)."""
    x = ng.tensor([0.5, 1.0], requires_grad=True)
    y = x * 1
    v = y[0]  # y's counter is now shared with a view
    z = y.sin()  # saves y
    y.mul_(2)
    (z.sum() + y.sum() + v * 10).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.cos([0.5, 1.0]) + 2 + np.array([20.0, 0.0]),
                               rtol=1e-6)
    x = ng.tensor([0.5, 1.0], requires_grad=True)  # no views: PyTorch's error, as before
    y = x * 1
    z = y.sin()
    y.mul_(2)
    with pytest.raises(ng.errors.InplaceError):
        z.sum().backward()


@pytest.mark.parametrize("write", ["t_setitem", "diagonal_fill", "reshape_mul", "t_mul_grad"])
def test_writes_through_views_inside_vmap_reach_the_base(write):
    """Inside vmap an in-place change of a transpose, diagonal or reshape view reaches the
    tensor it views, as in eager mode and under torch.func.vmap (it was lost silently)."""

    def program(lib, grad):
        def f(x):
            y = x.clone()
            if write == "t_setitem":
                y.t()[0] = 5.0
            elif write == "diagonal_fill":
                y.diagonal().fill_(7.0)
            elif write == "reshape_mul":
                y.reshape(-1).mul_(2.0)
            else:
                y.t().mul_(x.t())
            return y.sum() if grad else y
        return f

    x = np.arange(12.0).reshape(3, 2, 2)
    grad = write.endswith("grad")
    ng_f, t_f = program(ng, grad), program(torch, grad)
    got = ng.vmap(ng.grad(ng_f) if grad else ng_f)(ng.tensor(x))
    want = torch.func.vmap(torch.func.grad(t_f) if grad else t_f)(torch.tensor(x))
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(got.numpy()[1], (ng.grad(ng_f) if grad else ng_f)(
        ng.tensor(x[1])).numpy())


@pytest.mark.parametrize("write", ["t_fill", "diagonal_mul_grad", "slice_of_t"])
def test_writes_through_views_inside_nested_vmaps_reach_the_base(write):
    """The same inside two vmaps (the base's array is found under the inner tracer): the
    writes were lost silently."""

    def program(lib, grad):
        def f(x):
            y = x * 1
            if write == "t_fill":
                y.t()[0].fill_(5.0)
            elif write == "diagonal_mul_grad":
                y.diagonal().mul_(x.diagonal())
            else:
                y.t()[1, :1] = -1.0
            return y.sum() if grad else y
        return f

    x = np.arange(24.0).reshape(2, 3, 2, 2)
    grad = write.endswith("grad")
    ng_f, t_f = program(ng, grad), program(torch, grad)
    got = ng.vmap(ng.vmap(ng.grad(ng_f) if grad else ng_f))(ng.tensor(x))
    want = torch.func.vmap(torch.func.vmap(torch.func.grad(t_f) if grad else t_f))(
        torch.tensor(x))
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("write", ["imag_mul", "real_fill", "view_as_real_slice",
                                   "view_as_complex_mul", "grad"])
def test_writes_through_dtype_views_inside_vmap_reach_the_base(write):
    """``y.imag.mul_(2)``, ``view_as_real(y)[..., 0].fill_(0)``, ... inside vmap: the base takes
    the view's inverse of the new values (``complex(y.real, new)``), as under torch.func.vmap
    (the writes were lost silently), with gradients."""

    def program(lib):
        def f(t):
            if write == "grad":
                y = lib.complex(t, t * 2)
                y.imag.mul_(t)
                lib.view_as_real(y)[..., 0].mul_(t)
                return (y * y.conj()).real.sum()
            y = t * 1
            if write == "imag_mul":
                y.imag.mul_(2.0)
            elif write == "real_fill":
                y.real.fill_(0.5)
            elif write == "view_as_real_slice":
                lib.view_as_real(y)[..., 0].fill_(0.0)
            else:
                lib.view_as_complex(y).mul_(2j)
            return y
        return f

    rng = np.random.default_rng(3)
    if write == "grad":
        x = rng.standard_normal((3, 4))
    elif write == "view_as_complex_mul":
        x = rng.standard_normal((3, 2, 2))
    else:
        x = rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2))
    ng_f, t_f = program(ng), program(torch)
    if write == "grad":
        ng_f, t_f = ng.grad(ng_f), torch.func.grad(t_f)
    got = ng.vmap(ng_f)(ng.tensor(x))
    want = torch.func.vmap(t_f)(torch.tensor(x))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.numpy()[1], ng_f(ng.tensor(x[1])).numpy(), rtol=1e-12)
