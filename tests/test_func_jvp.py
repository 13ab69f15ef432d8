"""Forward mode: jvp for every primitive case of ``_opcases`` (against finite differences and
against the VJP, ⟨v, J u⟩ = ⟨Jᵀ v, u⟩), Jacobians, Hessians, HVPs and torch.func."""

import numpy as np
import pytest
from _opcases import CASES, CASES_BY_NAME, ORDER2, calls, recorded, drawn

import nodegrad as ng

LAYOUTS = ("matrix", "rank", "noncontig")
MATRIX = [pytest.param(c, lay, id=f"{c.name}-{lay}") for c in CASES
          for lay in LAYOUTS if lay in c.layouts]


def test_every_differentiable_primitive_has_a_jvp_rule():
    missing = sorted(n for n, p in ng.primitives.items() if p.differentiable and p.jvp is None)
    assert not missing, f"differentiable primitives without a JVP rule: {missing}"


def test_every_differentiable_primitive_is_exercised():
    named = {p for c in CASES for p in c.prims}
    missing = sorted(n for n, p in ng.primitives.items()
                     if p.differentiable and n not in named and n != "alias")
    assert not missing


def _split(call, rng):
    """The float arguments as float64 tensors, a closure over the others, random tangents."""
    arrs = [np.array(a) for a in call.args]
    fl = [i for i, a in enumerate(arrs) if a.dtype.kind == "f"]

    def f(*xs):
        full = list(arrs)
        for i, x in zip(fl, xs):
            full[i] = x
        full = [a if isinstance(a, ng.Tensor) else ng.tensor(a) for a in full]
        return call.fn(*full)

    xs = tuple(ng.tensor(arrs[i].astype(np.float64)) for i in fl)
    us = tuple(ng.tensor(rng.standard_normal(x.shape)) for x in xs)
    return f, xs, us


def _flat(out):
    return ng.tree_flatten(out)[0]


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
@pytest.mark.parametrize(("case", "layout"), MATRIX)
@drawn(2)
def test_jvp_matches_vjp_and_finite_differences(case, layout, data):
    call = data.draw(calls(case, layout))
    rng = np.random.default_rng(0)
    f, xs, us = _split(call, rng)
    out, tout = ng.jvp(f, xs, us)
    outs, touts = _flat(out), _flat(tout)
    # <v, J u> == <J^T v, u>
    vs = [ng.tensor(rng.standard_normal(o.shape)) for o in outs]
    _, fn = ng.vjp(f, *xs)
    cots = fn(ng.tree_unflatten(ng.tree_flatten(out)[1], vs))
    lhs = sum(float((v.numpy() * t.numpy()).sum()) for v, t in zip(vs, touts))
    rhs = sum(float((c.numpy() * u.numpy()).sum()) for c, u in zip(cots, us))
    assert np.isclose(lhs, rhs, rtol=1e-6, atol=1e-8), (lhs, rhs)
    # central differences along u
    eps = case.tol.get("eps", 1e-6)
    plus = _flat(f(*(x + u * eps for x, u in zip(xs, us))))
    minus = _flat(f(*(x - u * eps for x, u in zip(xs, us))))
    for t, p, m in zip(touts, plus, minus):
        fd = (p.numpy() - m.numpy()) / (2 * eps)
        np.testing.assert_allclose(t.numpy(), fd, atol=1e-5 * max(1, case.tol.get("atol", 1)),
                                   rtol=1e-3)


@pytest.mark.parametrize("name", ["multiply", "exp", "tanh", "softmax", "matmul", "max",
                                  "take_along_axis", "concatenate", "linear", "einsum"])
@drawn(1)
def test_jvp_records_the_named_primitives(name, data):
    case = CASES_BY_NAME[name]
    call = data.draw(calls(case, "matrix"))
    assert set(case.prims) <= recorded(call)


@pytest.mark.parametrize("name", ORDER2[:12])
@drawn(1)
def test_second_order_forward_over_reverse(name, data):
    """jvp of the VJP (the tangent pass through a backward graph) against reverse-over-reverse."""
    call = data.draw(calls(CASES_BY_NAME[name], "matrix"))
    rng = np.random.default_rng(1)
    f, xs, us = _split(call, rng)
    v = [ng.tensor(rng.standard_normal(o.shape)) for o in _flat(f(*xs))]

    def scalar(*xs):
        zero = ng.tensor(0.0, dtype=ng.float64)
        return sum(((o * w).sum() for o, w in zip(_flat(f(*xs)), v)), zero)

    _, hv = ng.hvp(scalar, xs, us)
    hv = hv if isinstance(hv, tuple) else (hv,)
    g = ng.grad(lambda *xs: sum(((gi * u).sum() for gi, u in
                                 zip(ng.grad(scalar, tuple(range(len(xs))))(*xs), us)),
                                ng.tensor(0.0, dtype=ng.float64)), tuple(range(len(xs))))(*xs)
    for a, b in zip(hv, g):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8)


def _fd_jacobian(f, x, eps=1e-6):
    x = x.numpy()
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = eps
        e = e.reshape(x.shape)
        cols.append((f(ng.tensor(x + e)).numpy() - f(ng.tensor(x - e)).numpy()) / (2 * eps))
    out = f(ng.tensor(x)).numpy()
    return np.stack(cols, -1).reshape(out.shape + x.shape)


def _mlp(x):
    w = ng.tensor(np.linspace(-1, 1, 12).reshape(4, 3))
    return ng.tanh(w @ x) * ng.softmax(w @ x, axis=0).max(0, keepdims=True)


def test_jacobians_match_finite_differences():
    x = ng.tensor(np.random.default_rng(2).standard_normal((3, 2)))
    fd = _fd_jacobian(_mlp, x)
    assert fd.shape == (4, 2, 3, 2)
    np.testing.assert_allclose(ng.jacfwd(_mlp)(x).numpy(), fd, atol=1e-7)
    np.testing.assert_allclose(ng.jacrev(_mlp)(x).numpy(), fd, atol=1e-7)
    # torch.func.jacrev's chunk_size bounds the rows computed at once: the same Jacobian
    np.testing.assert_array_equal(ng.func.jacrev(_mlp, chunk_size=1)(x).numpy(),
                                  ng.jacrev(_mlp)(x).numpy())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            ng.jacrev(_mlp, chunk_size=bad)


def test_hessian_matches_finite_differences_and_reverse_over_reverse():
    def f(x):
        return (ng.log_softmax(x, axis=0) * ng.sin(x)).sum() + ng.logsumexp(x * x)

    x = ng.tensor(np.random.default_rng(3).standard_normal(5))
    h = ng.hessian(f)(x).numpy()
    fd = _fd_jacobian(ng.grad(f), x)
    np.testing.assert_allclose(h, fd, atol=1e-6)
    np.testing.assert_allclose(h, ng.jacrev(ng.jacrev(f))(x).numpy(), atol=1e-10)
    np.testing.assert_allclose(h, h.T, atol=1e-10)
    _, hv = ng.hvp(f, (x,), (ng.ones_like(x),))
    np.testing.assert_allclose(hv.numpy(), h.sum(1), atol=1e-10)


def test_jacobian_trees_and_argnums():
    def f(a, b):
        return {"s": (a * b).sum(), "p": a * 2.0}

    a, b = ng.tensor([1.0, 2.0]), ng.tensor([3.0, 4.0])
    for jac in (ng.jacfwd, ng.jacrev):
        j = jac(f, argnums=(0, 1))(a, b)
        np.testing.assert_allclose(j["s"][0].numpy(), [3.0, 4.0])
        np.testing.assert_allclose(j["s"][1].numpy(), [1.0, 2.0])
        np.testing.assert_allclose(j["p"][0].numpy(), 2 * np.eye(2))
        np.testing.assert_allclose(j["p"][1].numpy(), np.zeros((2, 2)))
        assert jac(f)(a, b)["p"].shape == (2, 2)


def test_jvp_composes_with_itself_and_with_grad():
    x = ng.tensor(0.7, dtype=ng.float64)
    one = ng.tensor(1.0, dtype=ng.float64)

    def d(f):
        return lambda x: ng.jvp(f, (x,), (one,))[1]

    assert np.isclose(float(d(d(ng.sin))(x)), -np.sin(0.7))
    assert np.isclose(float(ng.grad(d(ng.exp))(x)), np.exp(0.7))
    assert np.isclose(float(d(ng.grad(ng.tanh))(x)), -2 * np.tanh(0.7) / np.cosh(0.7) ** 2)


def test_jvp_errors_and_zero_tangents():
    x = ng.tensor([1.0, 2.0])
    with pytest.raises(ng.GradError, match="shape"):
        ng.jvp(ng.exp, (x,), (ng.tensor([1.0]),))
    out, t = ng.jvp(lambda x: ng.tensor([5.0]), (x,), (x,))  # output independent of x
    np.testing.assert_array_equal(t.numpy(), [0.0])
    assert not t.requires_grad and not out.requires_grad


def test_against_torch_func():
    torch = pytest.importorskip("torch")
    from torch.func import hessian as thess
    from torch.func import jvp as tjvp

    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 4))
    xv, uv = rng.standard_normal(4), rng.standard_normal(4)

    def f(x, lib):
        if lib is ng:
            return (ng.tanh(ng.tensor(w) @ x) ** 2).sum() + ng.logsumexp(x)
        return (torch.tanh(torch.tensor(w) @ x) ** 2).sum() + torch.logsumexp(x, 0)

    o, t = ng.jvp(lambda x: f(x, ng), (ng.tensor(xv),), (ng.tensor(uv),))
    to, tt = tjvp(lambda x: f(x, torch), (torch.tensor(xv),), (torch.tensor(uv),))
    assert np.isclose(float(t), float(tt)) and np.isclose(float(o), float(to))
    np.testing.assert_allclose(ng.hessian(lambda x: f(x, ng))(ng.tensor(xv)).numpy(),
                               thess(lambda x: f(x, torch))(torch.tensor(xv)).numpy(),
                               atol=1e-10)


def test_has_aux_in_jvp_linearize_and_the_jacobians():
    """JAX's and torch.func's ``has_aux``: f returns (output, aux); aux comes back as is."""
    x = ng.tensor([1.0, 2.0, 3.0], dtype=ng.float64)
    u = ng.tensor([1.0, 0.5, -1.0], dtype=ng.float64)

    def f(x):
        return (x ** 3).sum(), {"sq": x * x}

    out, tan, aux = ng.jvp(f, (x,), (u,), has_aux=True)
    assert float(out) == 36.0
    assert float(tan) == pytest.approx(float((3 * x.numpy() ** 2 * u.numpy()).sum()))
    np.testing.assert_array_equal(aux["sq"].numpy(), [1.0, 4.0, 9.0])
    out, fn, aux = ng.linearize(f, x, has_aux=True)
    assert float(fn(u)) == float(tan) and set(aux) == {"sq"}
    for jac in (ng.jacrev, ng.jacfwd, ng.func.jacrev, ng.func.jacfwd):
        j, a = jac(lambda x: (x ** 2, x.sum()), has_aux=True)(x)
        np.testing.assert_array_equal(j.numpy(), np.diag(2 * x.numpy()))
        assert float(a) == 6.0
    h, aux = ng.hessian(f, has_aux=True)(x)
    np.testing.assert_array_equal(h.numpy(), np.diag(6 * x.numpy()))
    np.testing.assert_array_equal(aux["sq"].numpy(), [1.0, 4.0, 9.0])
    per = ng.vmap(ng.jacrev(lambda x: (x ** 2, x.sum()), has_aux=True))(ng.ones((2, 3)))
    assert tuple(per[0].shape) == (2, 3, 3) and per[1].numpy().tolist() == [3.0, 3.0]
    with pytest.raises(ng.GradError, match="jvp: has_aux=True needs f to return"):
        ng.jvp(lambda x: x * 2, (x,), (u,), has_aux=True)
