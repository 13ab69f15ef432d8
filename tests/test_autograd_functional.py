"""``ng.autograd.functional`` against ``torch.autograd.functional``: same calls, same nesting."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import ShapeError

torch = pytest.importorskip("torch")
A, T = ng.autograd.functional, torch.autograd.functional
R = np.random.default_rng(0)
a, b = R.standard_normal(3), R.standard_normal((2, 3))
v1, v2 = R.standard_normal((2, 3)), R.standard_normal(3)


def one(lib):
    return lambda x: lib.tanh(x) * 2


def scalar(lib):
    return lambda x, y: (lib.sin(x) * y).sum()


def two(lib):
    return lambda x, y: (lib.sin(x) * y, x.exp())


def N(*xs):
    return tuple(ng.tensor(x, dtype=ng.float64) for x in xs)


def Tt(*xs):
    return tuple(torch.tensor(x) for x in xs)


def same(got, want):
    if isinstance(want, tuple | list):  # torch returns a list from vectorised forward mode
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w)
    else:
        assert isinstance(got, ng.Tensor) and got.node is None  # detached: create_graph=False
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-14)


CALLS = {
    "jacobian-one": (lambda L, M, X: M.jacobian(one(L), X(a)[0])),
    "jacobian-two-by-two": (lambda L, M, X: M.jacobian(two(L), X(a, b))),
    "jacobian-forward": (lambda L, M, X: M.jacobian(
        scalar(L), X(a, b), vectorize=True, strategy="forward-mode")),
    "hessian-one": (lambda L, M, X: M.hessian(lambda x: (x ** 3).sum(), X(a)[0])),
    "hessian-blocks": (lambda L, M, X: M.hessian(scalar(L), X(a, b))),
    "vjp": (lambda L, M, X: M.vjp(two(L), X(a, b), X(v1, v2))),
    "vjp-scalar": (lambda L, M, X: M.vjp(scalar(L), X(a, b))),
    "jvp": (lambda L, M, X: M.jvp(two(L), X(a, b), X(v2, v1))),
    "hvp": (lambda L, M, X: M.hvp(scalar(L), X(a, b), X(v2, v1))),
    "vhp": (lambda L, M, X: M.vhp(scalar(L), X(a, b), X(v2, v1))),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_results_and_their_nesting_equal_torch(name):
    call = CALLS[name]
    same(call(ng, A, N), call(torch, T, Tt))


def test_create_graph_keeps_results_differentiable():
    x = ng.tensor(a, dtype=ng.float64, requires_grad=True)
    _, g = A.vjp(lambda x: (x ** 3).sum(), x, create_graph=True)
    g.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * a, rtol=1e-13)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="single-element"):
        A.vjp(one(ng), N(a)[0])
    with pytest.raises(ShapeError, match=r"must match shapes \[\(3,\)\]"):
        A.jvp(one(ng), N(a)[0], N(b)[0])
    with pytest.raises(ng.errors.GradError, match="independent of input 1"):
        A.jacobian(lambda x, y: x * 2, (N(a)[0], N(b)[0]), strict=True)
    with pytest.raises(TypeError, match="a tensor or a tuple of tensors"):
        A.hessian(scalar(ng), (a, b))
    with pytest.raises(ValueError, match="strategy"):
        A.jacobian(one(ng), N(a)[0], strategy="both")
