"""JAX's names with JAX's semantics: tree utilities, vmap's axes specs and keyword arguments,
custom_vjp/custom_jvp, remat, aux outputs, allow_int and the lax additions (map,
associative_scan, stop_gradient), checked against jax in float64 where it is installed."""

import collections
import dataclasses
import functools

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import lax
from nodegrad.errors import GradError, ShapeError
from nodegrad.func import tree as tu

RNG = np.random.default_rng(0)
X = RNG.standard_normal((7, 3))
U = RNG.standard_normal((7, 3))
V = np.array([0.5, -1.0, 2.0, 30.0])


def T(a):
    return ng.tensor(np.asarray(a, dtype=np.float64))


@pytest.fixture(scope="module")
def jx():
    """jax in float64 (the setting is restored afterwards)."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


def _close(a, b, tol=1e-12):
    la = tu.tree_leaves(a)
    lb = [np.asarray(x) for x in tu.tree_leaves(b)]
    assert len(la) == len(lb)
    for p, q in zip(la, lb):
        p = p.numpy() if isinstance(p, ng.Tensor) else np.asarray(p)
        assert p.shape == q.shape
        np.testing.assert_allclose(p, q, rtol=tol, atol=tol)


# --- tree utilities ----------------------------------------------------------------------------
def test_tree_map_passes_subtrees_where_the_first_tree_has_leaves():
    # JAX: the first tree is a prefix of the others; ng zipped flat leaves ([(1, 3), (2, 4)])
    assert ng.func.tree_map(lambda u, v: (u, v), [1, 2], [[3, 4], 5]) == [(1, [3, 4]), (2, 5)]


@pytest.mark.parametrize("other", [[1, 2, 3], (1, 2), {"a": 1, "c": 2}])
def test_tree_map_refuses_trees_of_another_structure(other):
    first = {"a": 1, "b": 2} if isinstance(other, dict) else [1, 2]
    with pytest.raises(ValueError, match="structures differ"):
        ng.func.tree_map(lambda u, v: u + v, first, other)


def test_tree_unflatten_wants_one_leaf_per_place():
    td = ng.func.tree_flatten([1, (2, None)])[1]
    assert ng.func.tree_unflatten(td, [5, 6]) == [5, (6, None)]
    for leaves in ([1], [1, 2, 3]):
        with pytest.raises(ValueError, match="has 2 leaves, got"):
            ng.func.tree_unflatten(td, leaves)


def test_tree_is_leaf_structure_defaultdict_and_dataclass():
    assert ng.func.tree_map(len, {"a": [1, 2], "b": [3]},
                            is_leaf=lambda v: isinstance(v, list)) == {"a": 2, "b": 1}
    assert ng.func.tree_structure({"a": 1, "b": (2, 3)}).num_leaves == 3
    dd = collections.defaultdict(list, {"b": 1, "a": 2})
    out = ng.func.tree_map(lambda v: v * 2, dd)
    assert type(out) is collections.defaultdict and out == {"a": 4, "b": 2}

    @ng.func.register_dataclass
    @dataclasses.dataclass
    class Point:
        x: object
        y: object
        name: str = dataclasses.field(default="p", metadata={"static": True})

    p = Point(T([1.0, 2.0]), T(3.0), "q")
    assert len(ng.func.tree_leaves(p)) == 2
    g = ng.grad(lambda q: (q.x * q.y).sum())(p)
    assert isinstance(g, Point) and g.name == "q"
    np.testing.assert_allclose(g.x.numpy(), [3.0, 3.0])
    np.testing.assert_allclose(g.y.numpy(), 3.0)


# --- vmap --------------------------------------------------------------------------------------
def test_vmap_dict_in_axes_and_out_axes(jx):
    jnp = jx.numpy
    A, B = X[:4], U[:4].T
    got = ng.vmap(lambda p: p["a"] * p["b"], in_axes=({"a": 0, "b": 1},))({"a": T(A), "b": T(B)})
    want = jx.vmap(lambda p: p["a"] * p["b"], in_axes=({"a": 0, "b": 1},))({"a": A, "b": B})
    _close(got, want)
    got = ng.vmap(lambda a: {"y": a, "x": a * 2}, out_axes={"x": 1, "y": 0})(T(A))
    want = jx.vmap(lambda a: {"y": a, "x": a * 2}, out_axes={"x": 1, "y": 0})(A)
    _close(got, want)
    assert jnp is not None


def test_vmap_axes_that_are_not_a_prefix_raise():
    with pytest.raises(ValueError, match="prefix"):  # a list of axes for a dict
        ng.vmap(lambda p: p["a"] + p["b"], in_axes=([0, None],))({"a": T(X), "b": T(X)})
    with pytest.raises(ValueError, match="prefix"):  # a tuple of axes for one tensor
        ng.vmap(lambda a: a, in_axes=((0, 1),))(T(X))
    with pytest.raises(TypeError, match="ints or None"):
        ng.vmap(lambda a: a, in_axes=(0.5,))(T(X))


def test_vmap_maps_keyword_arguments_over_axis_0(jx):
    got = ng.vmap(lambda a, b: a * b)(T(X), b=T(U))
    want = jx.vmap(lambda a, b: a * b)(X, b=U)
    _close(got, want)
    got = ng.vmap(lambda a, b: a * b, in_axes=(1,))(T(X), b=T(U.T))
    np.testing.assert_allclose(got.numpy(), X.T * U.T)


def test_vmap_axis_size_axis_name_and_a_scalar_input():
    out = ng.vmap(lambda a: a * 2, in_axes=None, axis_size=3)(T([1.0, 2.0]))
    np.testing.assert_allclose(out.numpy(), np.tile([2.0, 4.0], (3, 1)))
    assert ng.vmap(lambda a: a, axis_name="i", spmd_axis_name="j")(T(X)).shape == (7, 3)
    with pytest.raises(ShapeError, match="axis_size is 5"):
        ng.vmap(lambda a: a, axis_size=5)(T(X))
    with pytest.raises(ShapeError, match="0-d"):
        ng.vmap(lambda a: a)(T(2.0))
    with pytest.raises(ShapeError, match=r"argument 1 \(shape \(3, 7\)\) has size 3"):
        ng.vmap(lambda a, b: a)(T(X), T(X.T))
    with pytest.raises(ShapeError, match=r"keyword argument 'b' \(shape \(3, 7\)\)"):
        ng.vmap(lambda a, b: a)(T(X), b=T(X.T))


# --- grad, vjp, jvp ----------------------------------------------------------------------------
def test_aux_outputs_are_cut_from_the_graph():
    x = T(V)
    _, aux = ng.grad(lambda a: ((a * a).sum(), {"k": a * 3}), has_aux=True)(x)
    assert not aux["k"].requires_grad
    *_, aux = ng.vjp(lambda a: (a * a, [a.sum()]), x, has_aux=True)
    assert not aux[0].requires_grad
    *_, aux = ng.jvp(lambda a: (a * a, a.sum()), (x,), (x,), has_aux=True)
    assert not aux.requires_grad
    # a list pair is accepted, as JAX does
    g, aux = ng.grad(lambda a: [(a * a).sum(), 1], has_aux=True)(x)
    np.testing.assert_allclose(g.numpy(), 2 * V)


def test_vjp_cotangent_dtype():
    _, fn = ng.vjp(ng.sin, T(V))
    g32 = fn(ng.tensor(np.ones(4, dtype=np.float32)))[0]  # cast, as backward's gradient=
    assert g32.dtype == ng.float64
    np.testing.assert_allclose(g32.numpy(), np.cos(V))
    with pytest.raises(GradError, match="cotangent dtype int64"):
        fn(ng.tensor([1, 1, 1, 1]))


def test_allow_int_and_integer_primals(jx):
    n = ng.tensor([1, 2, 3, 4])
    g, gn = ng.grad(lambda a, k: (a * k).sum(), argnums=(0, 1), allow_int=True)(T(V), n)
    np.testing.assert_allclose(g.numpy(), [1, 2, 3, 4])
    assert gn.dtype == n.dtype and not gn.numpy().any()
    with pytest.raises(GradError, match="allow_int=True"):
        ng.grad(lambda a, k: (a * k).sum(), argnums=1)(T(V), n)
    _, fn = ng.vjp(lambda a, k: a * k, T(V), n)  # jax.vjp takes integer primals
    ga, gk = fn(T(np.ones(4)))
    np.testing.assert_allclose(ga.numpy(), [1, 2, 3, 4])
    assert not gk.numpy().any()
    with pytest.raises(GradError, match="integer"):
        ng.jacrev(lambda a: a * 2.0)(n)
    with pytest.raises(NotImplementedError, match="holomorphic"):
        ng.grad(lambda a: a.sum(), holomorphic=True)


# --- custom rules ------------------------------------------------------------------------------
def test_custom_vjp_forward_may_call_the_function(jx):
    """JAX's idiom ``def fwd(k, x): return f(k, x), res``: the call inside fwd evaluates f."""

    def make(m, lib):
        @functools.partial(lib.custom_vjp, nondiff_argnums=(0,))
        def f(k, a):
            return m.sin(a) * k

        f.defvjp(lambda k, a: (f(k, a), (a,)), lambda k, res, g: (g * k * 10.0,))
        return f

    fn, fj = make(ng, ng), make(jx.numpy, jx)
    _close(ng.grad(lambda a: fn(3.0, a).sum())(T(V)), jx.grad(lambda a: fj(3.0, a).sum())(V))
    xs = np.stack([V, V + 1])
    _close(ng.vmap(ng.grad(lambda a: fn(3.0, a).sum()))(T(xs)),
           jx.vmap(jx.grad(lambda a: fj(3.0, a).sum()))(xs))


def _log1pexp(m, lib):
    @lib.custom_jvp
    def f(x):
        return m.log1p(m.exp(x))

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        ans = f(x)
        return ans, t * (1 - m.exp(-ans)) * 2.0  # twice the true derivative: the rule shows

    return f


def test_custom_jvp_forward_reverse_and_higher_orders():
    """The rule gives 2 sigmoid(x) for f' (twice the truth); reverse mode transposes it, and
    second derivatives differentiate the rule again, through f's own rule (as JAX does)."""
    fn = _log1pexp(ng, ng.func)
    u = np.array([1.0, 2.0, -1.0, 0.5])
    s = 1 / (1 + np.exp(-V))
    f = np.log1p(np.exp(V))
    d1, d2 = 2 * s, 4 * s * (1 - s)  # the rule, and the rule differentiated by the rule
    np.testing.assert_allclose(ng.jvp(fn, (T(V),), (T(u),))[1].numpy(), d1 * u)
    np.testing.assert_allclose(ng.grad(lambda a: fn(a).sum())(T(V)).numpy(), d1)
    np.testing.assert_allclose(ng.jacrev(fn)(T(V)).numpy(), np.diag(d1), atol=1e-15)
    np.testing.assert_allclose(ng.grad(lambda a: ng.grad(lambda b: fn(b).sum())(a).sum())(
        T(V)).numpy(), d2, atol=1e-15)
    np.testing.assert_allclose(ng.hessian(lambda a: (fn(a) ** 2).sum())(T(V)).numpy(),
                               np.diag(2 * d1 ** 2 + 2 * f * d2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ng.vmap(ng.grad(fn))(T(V)).numpy(), d1)
    x = ng.tensor(V, requires_grad=True)
    fn(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), d1)


def test_custom_jvp_defjvps_and_nondiff_argnums(jx):
    def make(m, lib):
        @lib.custom_jvp
        def g(a, b):
            return m.sin(a) * b

        g.defjvps(lambda ta, ans, a, b: m.cos(a) * b * ta * 3.0,
                  lambda tb, ans, a, b: m.sin(a) * tb)

        @functools.partial(lib.custom_jvp, nondiff_argnums=(0,))
        def h(k, a):
            return m.sin(a) * k

        @h.defjvp
        def h_jvp(k, primals, tangents):
            return h(k, primals[0]), m.cos(primals[0]) * tangents[0] * k * 5.0

        return g, h

    (gn, hn), (gj, hj) = make(ng, ng.func), make(jx.numpy, jx)
    u = V[::-1].copy()
    _close(ng.grad(lambda a, b: gn(a, b).sum(), argnums=(0, 1))(T(V), T(u)),
           jx.grad(lambda a, b: gj(a, b).sum(), argnums=(0, 1))(V, u))
    _close(ng.jvp(gn, (T(V), T(u)), (T(u), T(V))), jx.jvp(gj, (V, u), (u, V)))
    _close(ng.grad(lambda a: hn(2.0, a).sum())(T(V)), jx.grad(lambda a: hj(2.0, a).sum())(V))


def test_remat_forward_mode_and_jax_keywords(jx):
    jnp = jx.numpy
    w = RNG.standard_normal((3, 3))
    x, u = X[0], U[0]
    got = ng.jvp(lambda m: ng.remat(lambda v: ng.tanh(m @ v))(T(x)), (T(w),), (T(w * 0.3),))
    want = jx.jvp(lambda m: jx.checkpoint(lambda v: jnp.tanh(m @ v))(x), (w,), (w * 0.3,))
    _close(got, want)
    _close(ng.jacfwd(ng.remat(lambda v: ng.tanh(T(w) @ v) * v))(T(x)),
           jx.jacfwd(jx.checkpoint(lambda v: jnp.tanh(w @ v) * v))(x))
    _close(ng.jvp(ng.grad(ng.remat(lambda v: (ng.sin(v) * v).sum())), (T(x),), (T(u),)),
           jx.jvp(jx.grad(jx.checkpoint(lambda v: (jnp.sin(v) * v).sum())), (x,), (u,)))
    dec = ng.remat(prevent_cse=False, policy=lambda *a, **k: False, static_argnums=(1,))
    f = dec(lambda v, k: v * k)
    np.testing.assert_allclose(ng.grad(lambda v: f(v, 3.0).sum())(T(x)).numpy(), 3.0)


# --- lax ---------------------------------------------------------------------------------------
def test_scan_accepts_unroll():
    c, ys = lax.scan(lambda c, x: (c + x, c), T(X[0]), T(X), unroll=3)
    np.testing.assert_allclose(c.numpy(), X[0] + X.sum(0))
    with pytest.raises(ValueError, match="unroll"):
        lax.scan(lambda c, x: (c + x, c), T(X[0]), T(X), unroll=-1)


@pytest.mark.parametrize("batch_size", [None, 2, 7, 10])
def test_lax_map(jx, batch_size):
    jnp = jx.numpy
    got = lax.map(lambda r: {"a": ng.sin(r) * r.sum(), "b": r.prod()}, T(X),
                  batch_size=batch_size)
    want = jx.lax.map(lambda r: {"a": jnp.sin(r) * r.sum(), "b": r.prod()}, X,
                      batch_size=batch_size)
    _close(got, want)
    _close(ng.grad(lambda x: lax.map(lambda r: ng.sin(r).prod(), x).sum())(T(X)),
           jx.grad(lambda x: jx.lax.map(lambda r: jnp.sin(r).prod(), x).sum())(X))


def _affine(p, q):  # apply (a1, b1) then (a2, b2): associative, not commutative
    return (q[0] * p[0], q[0] * p[1] + q[1])


def _prefix(fn, elems: list) -> list:
    out = [elems[0]]
    for e in elems[1:]:
        out.append(fn(out[-1], e))
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 6])
@pytest.mark.parametrize("reverse", [False, True])
def test_associative_scan(n, reverse):
    """The inclusive prefix under fn (JAX's parallel recursion), against a plain loop: values,
    reverse, axis, gradients."""
    a, b = X[:n], U[:n]
    got = lax.associative_scan(_affine, (T(a), T(b)), reverse=reverse)
    order = list(range(n))[::-1] if reverse else list(range(n))
    ref = _prefix(_affine, [(a[i], b[i]) for i in order])
    if reverse:
        ref = ref[::-1]
    np.testing.assert_allclose(got[0].numpy(), np.stack([r[0] for r in ref]), rtol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), np.stack([r[1] for r in ref]), rtol=1e-12)
    np.testing.assert_allclose(lax.associative_scan(ng.maximum, T(a), axis=-1).numpy(),
                               np.maximum.accumulate(a, axis=1))

    def loop(x):
        steps = _prefix(_affine, [(x[i], ng.sin(x[i])) for i in range(n)])
        return ng.stack([s[1] for s in steps]).sum()

    g = ng.grad(lambda x: lax.associative_scan(_affine, (x, ng.sin(x)))[1].sum())(T(a))
    np.testing.assert_allclose(g.numpy(), ng.grad(loop)(T(a)).numpy(), rtol=1e-10, atol=1e-12)


def test_stop_gradient():
    x = T(X)
    g = ng.grad(lambda a: (lax.stop_gradient({"k": a})["k"] * a).sum())(x)
    np.testing.assert_allclose(g.numpy(), X)
    _, t = ng.jvp(lambda a: lax.stop_gradient(a) * a, (x,), (T(U),))
    np.testing.assert_allclose(t.numpy(), X * U)


def test_grad_refuses_a_one_element_vector_output_as_jax():
    """jax.grad and torch.func.grad refuse a (1,) output: only a 0-d output is a scalar."""
    with pytest.raises(ng.errors.GradError, match=r"scalar \(0-d\).*\(1,\)"):
        ng.grad(lambda x: (x * x).sum().reshape(1))(ng.ones(3))
    assert ng.grad(lambda x: (x * x).sum())(ng.ones(3)).shape == (3,)
