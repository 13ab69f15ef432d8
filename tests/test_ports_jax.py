"""JAX programs written once over the library, run with JAX (float64) and nodegrad's
JAX-style API on the same data; the results must agree to 1e-10."""

import types
from functools import partial

import numpy as np
import pytest

import nodegrad as ng

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """JAX in float64 for this file only (other files may compare with its float32)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


J = types.SimpleNamespace(
    name="jax", grad=jax.grad, value_and_grad=jax.value_and_grad, vmap=jax.vmap, jit=jax.jit,
    jvp=jax.jvp, vjp=jax.vjp, jacfwd=jax.jacfwd, jacrev=jax.jacrev, hessian=jax.hessian,
    linearize=jax.linearize, lax=jax.lax, tree_map=jax.tree_util.tree_map,
    custom_vjp=jax.custom_vjp, custom_jvp=jax.custom_jvp, remat=jax.checkpoint, arr=jnp.asarray,
    tanh=jnp.tanh, exp=jnp.exp, log1p=jnp.log1p, sqrt=jnp.sqrt, sin=jnp.sin, cos=jnp.cos,
    where=jnp.where, einsum=jnp.einsum, clip=jnp.clip, logaddexp=jnp.logaddexp,
    logsumexp=jax.scipy.special.logsumexp, sum=jnp.sum, mean=jnp.mean, zeros_like=jnp.zeros_like,
    norm=jnp.linalg.norm, log_softmax=jax.nn.log_softmax, softmax=jax.nn.softmax,
    relu=jax.nn.relu, take_along_axis=jnp.take_along_axis)
N = types.SimpleNamespace(
    name="nodegrad", grad=ng.grad, value_and_grad=ng.value_and_grad, vmap=ng.vmap, jit=ng.jit,
    jvp=ng.jvp, vjp=ng.vjp, jacfwd=ng.jacfwd, jacrev=ng.jacrev, hessian=ng.hessian,
    linearize=ng.linearize, lax=ng.lax, tree_map=ng.tree_map,
    custom_vjp=ng.custom_vjp, custom_jvp=ng.custom_jvp, remat=ng.remat, arr=ng.tensor,
    tanh=ng.tanh, exp=ng.exp, log1p=ng.log1p, sqrt=ng.sqrt, sin=ng.sin, cos=ng.cos,
    where=ng.where, einsum=ng.einsum, clip=ng.clip, logaddexp=ng.logaddexp,
    logsumexp=ng.logsumexp, sum=ng.sum, mean=ng.mean, zeros_like=ng.zeros_like,
    norm=ng.linalg.norm, log_softmax=ng.log_softmax, softmax=ng.softmax,
    relu=ng.relu, take_along_axis=ng.take_along_axis)


def _np(t):
    if isinstance(t, dict):
        return {k: _np(v) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        return type(t)(_np(v) for v in t)
    if isinstance(t, ng.Tensor):
        return t.numpy()
    return np.asarray(t)


def _close(a, b, path="out"):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (path, type(b), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a.shape == b.shape, (path, a.shape, b.shape)
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10, err_msg=path)


PROGRAMS = []


def program(fn):
    PROGRAMS.append(fn)
    return fn


R = np.random.default_rng(0)
X, Y, YC = R.standard_normal((16, 5)), (R.random(16) > 0.5) * 1.0, R.integers(0, 3, 16)
W1, W2 = R.standard_normal((5, 8)) * 0.3, R.standard_normal((8, 3)) * 0.3
XS, WX, WH = R.standard_normal((50, 3)), R.standard_normal((3, 6)) * 0.4, R.standard_normal((6, 6))
WH = WH * 0.4
V4, M34 = R.standard_normal(4), R.standard_normal((3, 4))


# --- 1. logistic regression and an MLP: pytree parameters, SGD and Adam under jit ---------------
@program
def logreg_sgd(L):
    params = {"w": L.arr(np.zeros(5)), "b": L.arr(np.array(0.0))}
    x, y = L.arr(X), L.arr(Y)

    def loss(p, x, y):
        z = x @ p["w"] + p["b"]
        return L.mean(L.logaddexp(0.0, z) - y * z), {"acc": L.mean((z > 0) == (y > 0.5))}

    @L.jit
    def step(p, x, y):
        (value, aux), g = L.value_and_grad(loss, has_aux=True)(p, x, y)
        return L.tree_map(lambda a, b: a - 0.5 * b, p, g), value, aux

    losses = []
    for _ in range(5):
        params, value, aux = step(params, x, y)
        losses.append(value)
    return params, losses, aux["acc"]


@program
def mlp_adam(L):
    params = [(L.arr(W1), L.arr(np.zeros(8))), (L.arr(W2), L.arr(np.zeros(3)))]
    x, y = L.arr(X), L.arr(YC)

    def loss(p, x, y):
        for i, (w, b) in enumerate(p):
            x = x @ w + b
            x = L.tanh(x) if i < len(p) - 1 else x
        return -L.mean(L.take_along_axis(L.log_softmax(x, axis=-1), y[:, None], axis=1))

    @L.jit
    def adam(p, m, v, t, x, y):
        value, g = L.value_and_grad(loss)(p, x, y)
        m = L.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = L.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        p = L.tree_map(lambda p, m, v: p - 0.01 * (m / (1 - 0.9 ** t))
                       / (L.sqrt(v / (1 - 0.999 ** t)) + 1e-8), p, m, v)
        return p, m, v, value

    m, v, losses = L.tree_map(L.zeros_like, params), L.tree_map(L.zeros_like, params), []
    for t in range(1, 6):
        params, m, v, value = adam(params, m, v, t, x, y)
        losses.append(value)
    return params, losses


@program
def argnums_pair(L):
    x, w = L.arr(X), L.arr(W1)
    f = lambda x, w, s: L.sum(L.tanh(x @ w) * s)  # noqa: E731
    return L.grad(f, argnums=(0, 1))(x, w, 2.0), L.value_and_grad(f, argnums=1)(x, w, 2.0)


# --- 2. per-example gradients and vmap's keywords -----------------------------------------------
@program
def per_example_grads(L):
    w, x, y = L.arr(W1[:, 0]), L.arr(X), L.arr(Y)
    loss = lambda w, x, y: (L.tanh(x @ w) - y) ** 2  # noqa: E731
    g = L.vmap(L.grad(loss), in_axes=(None, 0, 0))(w, x, y)
    g1 = L.vmap(L.grad(loss), in_axes=(None, 0, 0), out_axes=1)(w, x, y)
    return g, g1, L.vmap(L.norm)(g), L.sqrt(L.sum(g * g, axis=1))


@program
def vmap_forms(L):
    x, w = L.arr(X), L.arr(W1[:, 0])
    f = lambda p, x: L.sum(p["w"] * x) + p["b"]  # noqa: E731
    return (L.vmap(L.vmap(lambda a, b: L.sum(a * b), in_axes=(0, None)), in_axes=(None, 0))(x, x),
            L.vmap(L.vmap(lambda a, b: a * b, in_axes=(0, None)), in_axes=(None, 1),
                   out_axes=2)(x, x.T),
            L.vmap(lambda x: (x * 2, L.sum(x)), out_axes=(1, 0))(x),
            L.vmap(f, in_axes=({"w": None, "b": 0}, 0))({"w": w, "b": L.arr(Y)}, x),
            L.vmap(lambda p: p["w"] * 2, in_axes=({"w": 1},))({"w": x}),
            L.vmap(lambda w: w * 2, in_axes=None, axis_size=3)(w),
            L.vmap(lambda x: x + 1, spmd_axis_name="batch")(x),
            L.vmap(lambda x, *, s: x * s)(x, s=x))


# --- 3. Jacobians, Hessians, jvp / vjp / linearize ----------------------------------------------
@program
def jacobians(L):
    g = lambda x: L.sum(L.sin(x) * x ** 2) + L.logsumexp(x * x)  # noqa: E731
    h = lambda m, x: L.tanh(m @ x)  # noqa: E731
    x, m = L.arr(V4), L.arr(M34)
    return (L.jacfwd(L.jacrev(g))(x), L.hessian(g, holomorphic=False)(x),
            L.jacfwd(h, argnums=(0, 1))(m, x),
            L.jacrev(h, argnums=(0, 1))(m, x))


@program
def forward_and_reverse(L):
    p = {"w": L.arr(M34), "x": L.arr(V4)}
    t = {"w": L.arr(np.ones((3, 4))), "x": L.arr(V4 * 2)}
    h = lambda p: {"y": L.tanh(p["w"] @ p["x"]), "s": L.sum(p["x"] ** 3)}  # noqa: E731
    y, lin = L.linearize(lambda x: L.sin(x) * x, L.arr(V4))
    out, pull = L.vjp(lambda m, x: L.tanh(m @ x), L.arr(M34), L.arr(V4))
    cts = [pull(L.arr(c)) for c in (np.ones(3), np.array([1.0, -2.0, 0.5]), np.zeros(3))]
    y2, pull2, aux = L.vjp(lambda x: (x * 2, L.sum(x)), L.arr(V4), has_aux=True)
    gi = L.grad(lambda x, n: L.sum(x ** 2) * n, argnums=(0, 1), allow_int=True)(
        L.arr(V4), L.arr(np.array(3)))[0]
    return (L.jvp(h, (p,), (t,)), y, lin(L.arr(V4)), lin(L.arr(np.ones(4))), out, cts, y2,
            pull2(L.arr(V4)), aux, gi)


# --- 4. loops, branches, static arguments, remat ------------------------------------------------
@program
def rnn_scan(L):
    p, xs = {"wx": L.arr(WX), "wh": L.arr(WH)}, L.arr(XS)

    def loss(p, xs):
        def body(carry, x):
            h = L.tanh(x @ p["wx"] + carry["h"] @ p["wh"])
            return {"h": h, "acc": carry["acc"] + L.sum(h ** 2)}, L.sum(h)
        carry, ys = L.lax.scan(body, {"h": L.arr(np.zeros(6)), "acc": L.arr(np.array(0.0))}, xs)
        return carry["acc"] + L.sum(ys * ys)

    rev = L.lax.scan(lambda c, x: (c + x, c), L.arr(np.zeros(3)), xs, reverse=True)
    none = L.lax.scan(lambda c, _: (c * 1.1, c), L.arr(np.ones(2)), None, length=5)
    return L.value_and_grad(loss)(p, xs), L.jit(L.value_and_grad(loss))(p, xs), rev, none


@program
def loops(L):
    a = L.arr(np.array([2.0, 3.0, 10.0]))
    newton = lambda a: L.lax.fori_loop(0, 20, lambda i, x: 0.5 * (x + a / x), a)  # noqa: E731

    def doubling(x):
        return L.lax.while_loop(lambda c: c[0] < 100.0, lambda c: (c[0] * 2.0 + c[1], c[1] + 1),
                                (x, 0))

    unrolled = L.lax.fori_loop(0, 7, lambda i, x: 0.5 * (x + a / x), a, unroll=3)
    step = L.jit(lambda p, g: L.tree_map(lambda p, g: p - 0.1 * g, p, g), donate_argnums=(0,))
    return (newton(a), L.jit(newton)(a), L.grad(lambda a: L.sum(newton(a)))(a), unrolled,
            step({"w": a * 1.0}, {"w": a * 2.0}),
            doubling(L.arr(np.array(1.5))), L.jit(doubling)(L.arr(np.array(1.5))),
            L.vmap(doubling)(L.arr(np.array([1.5, 30.0, 200.0]))))


@program
def branches(L):
    def f(x, y):
        return L.lax.cond(L.sum(x) > 0, lambda a, b: L.sum(a * b), lambda a, b: L.sum(a - b), x, y)

    fns = [lambda x: x * 2, lambda x: L.sin(x), lambda x: x ** 3]
    x1, x2 = L.arr(np.array([1.0, 2.0])), L.arr(np.array([-1.0, -2.0]))
    y = L.arr(np.array([3.0, 4.0]))
    return (f(x1, y), f(x2, y), L.jit(f)(x1, y), L.jit(f)(x2, y),
            L.grad(f, argnums=(0, 1))(x1, y), L.grad(f, argnums=(0, 1))(x2, y),
            L.vmap(f, in_axes=(0, None))(L.arr(np.array([[1.0, 2.0], [-1.0, -2.0]])), y),
            [L.lax.switch(i, fns, x1) for i in (0, 1, 2, 5, -1)],
            L.jit(lambda i, x: L.lax.switch(i, fns, x))(L.arr(np.array(1)), x1),
            L.grad(lambda x: L.sum(L.lax.switch(2, fns, x)))(x1),
            L.vmap(lambda i, x: L.lax.switch(i, fns, x))(L.arr(np.array([0, 2])), x1))


@program
def static_args_and_remat(L):
    def f(x, n, mode="sq"):
        for _ in range(n):
            x = x * x if mode == "sq" else x + 1
        return x

    x = L.arr(np.array([1.1, 0.9]))
    g = L.jit(f, static_argnums=(1,), static_argnames=("mode",))
    h = L.jit(f, static_argnames=("n", "mode"))
    block = lambda w, x: L.tanh(w @ L.sin(x) + x)  # noqa: E731
    loss = lambda blk: lambda w, x: L.sum(blk(w, blk(w, x)) ** 2)  # noqa: E731
    w, v = L.arr(WH), L.arr(np.ones(6))
    return (g(x, 3), g(x, 2, mode="add"), h(x, n=2), h(x, n=1, mode="add"),
            L.grad(loss(block), argnums=(0, 1))(w, v),
            L.grad(loss(L.remat(block)), argnums=(0, 1))(w, v),
            L.jit(L.grad(loss(L.remat(block))))(w, v),
            L.grad(lambda v: L.sum(L.remat(f, static_argnums=(1,))(v, 2)))(x))


# --- 5. custom rules under jit and vmap ---------------------------------------------------------
@program
def custom_rules(L):
    @partial(L.custom_vjp, nondiff_argnums=(1,))
    def clip_grad(x, c):
        return x

    clip_grad.defvjp(lambda x, c: (x, None), lambda c, res, g: (L.clip(g, -c, c),))

    @L.custom_vjp
    def clip_between(x, lo, hi):
        return x

    clip_between.defvjp(lambda x, lo, hi: (x, (lo, hi)),
                        lambda res, g: (L.clip(g, res[0], res[1]), None, None))

    @L.custom_jvp
    def log1pexp(x):
        return L.log1p(L.exp(x))

    @log1pexp.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return log1pexp(x), t * (1 - 1 / (1 + L.exp(x)))

    x, w = L.arr(X[:6, :3] * 3), L.arr(W1[:3, 0])
    lo, hi = L.arr(np.array(-0.5)), L.arr(np.array(0.5))
    f = lambda w, x: L.sum(clip_grad(x @ w, 0.5) ** 2)  # noqa: E731
    f2 = lambda w, x: L.sum(clip_between(x @ w, lo, hi) ** 2)  # noqa: E731
    z = L.arr(np.array([-3.0, 0.0, 5.0, 50.0]))
    g = L.grad(lambda x: L.sum(log1pexp(x)))
    return (L.grad(f)(w, x), L.jit(L.grad(f))(w, x), L.vmap(L.grad(f), in_axes=(None, 0))(w, x),
            L.jit(L.vmap(L.grad(f2), in_axes=(None, 0)))(w, x), L.grad(f2)(w, x),
            log1pexp(z), g(z), L.jit(g)(z), L.jit(L.vmap(L.grad(log1pexp)))(z),
            L.jvp(log1pexp, (z,), (L.arr(np.ones(4)),)),
            L.hessian(lambda x: L.sum(log1pexp(x)))(z))


# --- 7. the array names these programs use ------------------------------------------------------
@program
def array_names(L):
    a, b = L.arr(M34), L.arr(W1[:4])
    return (L.where(a > 0, a, 0.0), L.einsum("ij,jk->ik", a, b), L.einsum("ij,ij", a, a),
            L.norm(a), L.clip(a, -0.5, 0.5), L.logaddexp(a, 0.0), L.softmax(a, axis=0),
            L.log_softmax(a), L.relu(a), L.logsumexp(a, axis=1, keepdims=True))


@pytest.mark.parametrize("prog", PROGRAMS, ids=lambda p: p.__name__)
def test_program_matches_jax(prog):
    _close(_np(prog(J)), _np(prog(N)))


def test_errors_match_jax_in_kind():
    """Misuse raises in both, with a message naming the problem."""
    x = np.ones(4)
    cases = [(lambda L: L.grad(lambda x: x * 2)(L.arr(x)), "scalar"),
             (lambda L: L.grad(lambda n: n * 2.0)(L.arr(np.array(3))), "allow_int"),
             (lambda L: L.grad(lambda x: L.sum(x), argnums=3)(L.arr(x)), "argnums"),
             (lambda L: L.vmap(lambda a, b: a + b)(L.arr(np.ones(3)), L.arr(x)), "size"),
             (lambda L: L.vmap(lambda a: a, in_axes=(0, 0))(L.arr(x)), "in_axes"),
             (lambda L: L.jvp(lambda x: x, (L.arr(x),), (L.arr(np.ones(3)),)), "shape")]
    for case, word in cases:
        for L in (J, N):
            with pytest.raises((TypeError, ValueError, RuntimeError)) as e:
                case(L)
            assert word in str(e.value), (L.name, str(e.value))
