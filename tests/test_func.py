"""JAX-style transforms: grad, value_and_grad, vjp, their composition, pytrees."""

import numpy as np
import pytest

import nodegrad as ng


def f3(x):
    return (x ** 3).sum()


def test_grad_matches_closed_form():
    x = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(ng.grad(f3)(x).numpy(), 3 * x ** 2, rtol=1e-6)


def test_grad_of_grad_and_third_order():
    x = ng.tensor(2.0)
    assert ng.grad(ng.grad(f3))(x).item() == pytest.approx(12.0)
    assert ng.grad(ng.grad(ng.grad(f3)))(x).item() == pytest.approx(6.0)


def test_hessian_vector_product():
    a = np.array([[3.0, 1.0], [1.0, 2.0]])
    A = ng.tensor(a, dtype=ng.float64)

    def f(x):
        return 0.5 * (x * (A @ x)).sum() + (x ** 4).sum()

    x = np.array([0.3, -0.7])
    v = ng.tensor([1.0, 2.0], dtype=ng.float64)
    hvp = ng.grad(lambda x: (ng.grad(f)(x) * v).sum())(ng.tensor(x, dtype=ng.float64))
    hessian = a + np.diag(12 * x ** 2)
    np.testing.assert_allclose(hvp.numpy(), hessian @ v.numpy(), rtol=1e-10)


def test_closure_over_outer_variable():
    # d/dy of [d/dx (x * y)^2 at x=1] = d/dy (2 y^2) = 4 y
    def inner(y):
        return ng.grad(lambda x: ((x * y) ** 2).sum())(ng.tensor(1.0)).sum()

    assert ng.grad(inner)(ng.tensor(3.0)).item() == pytest.approx(12.0)


def test_argnums_and_value_and_grad():
    def f(a, b):
        return (a * b).sum()

    a, b = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    ga, gb = ng.grad(f, argnums=(0, 1))(a, b)
    np.testing.assert_allclose(ga.numpy(), b)
    np.testing.assert_allclose(gb.numpy(), a)
    v, gb = ng.value_and_grad(f, argnums=1)(a, b)
    assert v.item() == pytest.approx(11.0) and not v.requires_grad
    np.testing.assert_allclose(gb.numpy(), a)


def test_has_aux():
    def f(x):
        loss = (x ** 2).sum()
        return loss, {"norm": loss.sqrt().item()}

    (g, aux) = ng.grad(f, has_aux=True)(np.array([3.0, 4.0]))
    np.testing.assert_allclose(g.numpy(), [6.0, 8.0])
    assert aux["norm"] == pytest.approx(5.0)
    (v, aux), g = ng.value_and_grad(f, has_aux=True)(np.array([3.0, 4.0]))
    assert v.item() == pytest.approx(25.0)


def test_pytree_arguments():
    params = {"w": ng.tensor([1.0, 2.0]), "b": ng.tensor(0.5), "layers": [ng.tensor(3.0)]}

    def loss(p, x):
        return ((p["w"] * x).sum() + p["b"] * p["layers"][0]) ** 2

    g = ng.grad(loss)(params, ng.tensor([1.0, 1.0]))
    assert set(g) == {"w", "b", "layers"} and isinstance(g["layers"], list)
    s = 2 * (3.0 + 1.5)
    np.testing.assert_allclose(g["w"].numpy(), [s, s])
    assert g["b"].item() == pytest.approx(s * 3.0)
    assert g["layers"][0].item() == pytest.approx(s * 0.5)


def test_unused_argument_gets_zeros():
    g = ng.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(np.ones(2), np.ones(3))
    np.testing.assert_allclose(g[1].numpy(), np.zeros(3))


def test_grad_does_not_touch_dot_grad():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    g = ng.grad(f3)(x)
    assert x.grad is None
    np.testing.assert_allclose(g.numpy(), [3.0, 12.0])


def test_grad_errors():
    with pytest.raises(ng.GradError, match="scalar"):
        ng.grad(lambda x: x * 2)(np.ones(3))
    with pytest.raises(ng.GradError, match="integer"):
        ng.grad(lambda x: x.sum())(np.arange(3))
    with pytest.raises(ng.GradError, match="aux"):
        ng.grad(lambda x: x.sum(), has_aux=True)(np.ones(2))
    with pytest.raises(ValueError, match="argnums"):
        ng.grad(f3, argnums=3)(np.ones(2))


def test_vjp_matches_jacobian_transpose():
    a = np.random.default_rng(0).standard_normal((3, 4))
    A = ng.tensor(a, dtype=ng.float64)
    x = np.random.default_rng(1).standard_normal(4)
    out, vjp_fn = ng.vjp(lambda x: ng.tanh(A @ x), x)
    v = np.array([1.0, -1.0, 0.5])
    (g,) = vjp_fn(v)
    jac = (1 - np.tanh(a @ x) ** 2)[:, None] * a
    np.testing.assert_allclose(g.numpy(), jac.T @ v, rtol=1e-10)
    (g2,) = vjp_fn(v)  # callable more than once
    np.testing.assert_allclose(g2.numpy(), g.numpy())
    with pytest.raises(ng.GradError, match="shape"):
        vjp_fn(np.ones(2))


def test_vjp_tree_output():
    out, vjp_fn = ng.vjp(lambda a, b: {"s": a + b, "p": a * b}, np.ones(2), np.full(2, 3.0))
    ga, gb = vjp_fn({"s": np.ones(2), "p": np.ones(2)})
    np.testing.assert_allclose(ga.numpy(), [4.0, 4.0])
    np.testing.assert_allclose(gb.numpy(), [2.0, 2.0])


def test_vmap_of_vjp_fn_gives_jacobian_rows():
    """torch.func's Jacobian idiom, vmap(vjp_fn)(cotangents): the VJPs run inside vmap, where
    a node's kept output stays unbatched and a vertex's several cotangents are batched."""
    rng = np.random.default_rng(0)
    a = ng.tensor(rng.standard_normal((3, 4)))
    x = ng.tensor(rng.standard_normal(4))

    def f(x):  # tanh keeps its output; x reaches the output along three paths
        return ng.tanh(a @ x) * ng.sin(x[:3]) + (x * x)[1:]

    out, vjp_fn = ng.vjp(f, x)
    (rows,) = ng.vmap(vjp_fn)(ng.eye(3, dtype=ng.float64))
    np.testing.assert_allclose(rows.numpy(), ng.jacrev(f)(x).numpy(), rtol=1e-12)
    cts = ng.tensor(rng.standard_normal((5, 3)))
    (per,) = ng.vmap(vjp_fn)(cts)
    loop = np.stack([vjp_fn(cts[k])[0].numpy() for k in range(5)])
    np.testing.assert_allclose(per.numpy(), loop, rtol=1e-12)


def test_vjp_fn_differentiated_again():
    """grad and jvp of a vjp function (reverse- and forward-over-reverse), as in JAX: the
    backward pass is recorded when the cotangent is itself differentiated (it gave zeros)."""
    rng = np.random.default_rng(1)
    a = ng.tensor(rng.standard_normal((3, 4)))
    x = ng.tensor(rng.standard_normal(4))

    def f(x):
        return ng.tanh(a @ x) * x[:3]

    jac = ng.jacrev(f)(x).numpy()
    _, vjp_fn = ng.vjp(f, x)
    c, t = ng.tensor(rng.standard_normal(3)), ng.tensor(rng.standard_normal(3))
    g = ng.grad(lambda c: (vjp_fn(c)[0] ** 2).sum())(c)
    np.testing.assert_allclose(g.numpy(), 2 * jac @ jac.T @ c.numpy(), rtol=1e-12)
    _, tan = ng.jvp(lambda c: vjp_fn(c)[0], (c,), (t,))
    np.testing.assert_allclose(tan.numpy(), jac.T @ t.numpy(), rtol=1e-12)
    assert not vjp_fn(c)[0].requires_grad  # outside a transform nothing is recorded


def test_grad_float32_stays_float32():
    g = ng.grad(lambda x: (x * 0.5).sum())(ng.ones(3))
    assert g.dtype == ng.float32


def test_tree_utilities():
    tree = {"b": [1, 2], "a": (3, None)}
    leaves, td = ng.tree_flatten(tree)
    assert leaves == [3, 1, 2]
    assert ng.tree_unflatten(td, [30, 10, 20]) == {"a": (30, None), "b": [10, 20]}
    assert ng.tree_map(lambda v: v * 2, [1, (2,)]) == [2, (4,)]


def test_namedtuples_and_ordered_dicts_are_tree_nodes_as_in_jax():
    from collections import OrderedDict, namedtuple

    Pair = namedtuple("Pair", ["a", "b"])
    leaves, td = ng.tree_flatten(Pair(ng.ones(2), (ng.zeros(1), 3)))
    assert len(leaves) == 3
    back = ng.tree_unflatten(td, leaves)
    assert type(back) is Pair and back.b[1] == 3
    g = ng.grad(lambda p: (p["a"] * p["b"]).sum())(
        OrderedDict(b=ng.ones(2), a=ng.tensor([2.0, 3.0])))
    assert type(g) is OrderedDict and list(g) == ["b", "a"]  # insertion order kept
    np.testing.assert_array_equal(g["b"].numpy(), [2.0, 3.0])
    per = ng.vmap(lambda t: t.max(dim=0))(ng.tensor([[1.0, 2.0], [4.0, 3.0]]))
    np.testing.assert_array_equal(per.indices.numpy(), [1, 0])


def test_func_functional_call_has_torch_funcs_signature():
    """``(module, dicts, args, kwargs, *, tie_weights, strict)``: a tuple of arguments is
    unpacked, anything else is the one argument; dicts merge; strict names what is missing."""
    ng.manual_seed(0)
    seq = ng.nn.Sequential(ng.nn.Linear(3, 4), ng.nn.ReLU(), ng.nn.Linear(4, 2))
    x = ng.randn(5, 3)
    params = {k: v * 2 for k, v in seq.named_parameters()}
    want = ng.linear(ng.relu(ng.linear(x, params["0.weight"], params["0.bias"])),
                     params["2.weight"], params["2.bias"])
    for args in (x, (x,)):
        got = ng.func.functional_call(seq, params, args)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    split = ({k: v for k, v in params.items() if k.startswith("0")},
             {k: v for k, v in params.items() if k.startswith("2")})
    np.testing.assert_array_equal(ng.func.functional_call(seq, split, (x,)).numpy(),
                                  want.numpy())
    lin = ng.nn.Linear(3, 2)
    y = ng.func.functional_call(lin, {"weight": params["2.weight"][:, :3]}, (),
                                {"input": x})
    np.testing.assert_array_equal(y.numpy(), ng.linear(x, params["2.weight"][:, :3],
                                                       lin.bias).numpy())
    with pytest.raises(RuntimeError, match=r"strict=True.*missing \['bias'\]"):
        ng.func.functional_call(lin, {"weight": lin.weight}, x, strict=True)
    g = ng.grad(lambda p: ng.func.functional_call(seq, p, (x,)).sum())(params)
    assert sorted(g) == sorted(params)
