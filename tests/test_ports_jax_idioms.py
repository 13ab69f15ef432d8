"""JAX idioms ported to nodegrad by swapping ``jax``/``jnp`` for ``ng``: an optax-style optimiser
over pytrees, custom rules, structured loops and branches, vmap/Jacobian keywords, the tree
utilities and jax.numpy-heavy numerics (a Gaussian process, an HMM). Each program is written
once against a namespace ``L`` and run with JAX (float64) and nodegrad (eagerly, as written);
results agree to 1e-10.
"""

import inspect
import math
import types
from functools import partial

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import lax as nlax
from nodegrad.errors import JitError

try:  # the regressions at the end run without JAX; the comparisons skip
    import jax
    import jax.numpy as jnp
    import jax.scipy.linalg as jsl
except ImportError:
    jax = None


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """JAX in float64 and nodegrad's default dtype float64 (the port of jax_enable_x64), for
    this file only."""
    dt = ng.get_default_dtype()
    before = jax.config.jax_enable_x64 if jax else None
    if jax:
        jax.config.update("jax_enable_x64", True)
    ng.set_default_dtype(ng.float64)
    yield
    if jax:
        jax.config.update("jax_enable_x64", before)
    ng.set_default_dtype(dt)


J = None if jax is None else types.SimpleNamespace(
    name="jax", np=jnp, grad=jax.grad, value_and_grad=jax.value_and_grad, vmap=jax.vmap,
    jit=jax.jit, jvp=jax.jvp, vjp=jax.vjp, jacfwd=jax.jacfwd, jacrev=jax.jacrev,
    hessian=jax.hessian, linearize=jax.linearize, lax=jax.lax, custom_vjp=jax.custom_vjp,
    custom_jvp=jax.custom_jvp, checkpoint=jax.checkpoint, arr=jnp.asarray,
    tree_map=jax.tree_util.tree_map, tree_leaves=jax.tree_util.tree_leaves,
    tree_flatten=jax.tree_util.tree_flatten, tree_unflatten=jax.tree_util.tree_unflatten,
    tree_structure=jax.tree_util.tree_structure, logsumexp=jax.scipy.special.logsumexp,
    log_softmax=jax.nn.log_softmax, softmax=jax.nn.softmax, sigmoid=jax.nn.sigmoid,
    cholesky=jnp.linalg.cholesky,
    solve_lower=lambda a, b: jsl.solve_triangular(a, b, lower=True),
    solve_upper_t=lambda a, b: jsl.solve_triangular(a, b, lower=True, trans="T"))
N = types.SimpleNamespace(
    name="nodegrad", np=ng, grad=ng.grad, value_and_grad=ng.value_and_grad, vmap=ng.vmap,
    jit=ng.jit, jvp=ng.jvp, vjp=ng.vjp, jacfwd=ng.jacfwd, jacrev=ng.jacrev,
    hessian=ng.hessian, linearize=ng.linearize, lax=nlax, custom_vjp=ng.custom_vjp,
    custom_jvp=ng.custom_jvp, checkpoint=ng.remat, arr=ng.tensor,
    tree_map=ng.tree_map, tree_leaves=ng.tree_leaves, tree_flatten=ng.tree_flatten,
    tree_unflatten=ng.tree_unflatten, tree_structure=ng.tree_structure,
    logsumexp=ng.logsumexp, log_softmax=ng.log_softmax, softmax=ng.softmax,
    sigmoid=ng.sigmoid, cholesky=ng.linalg.cholesky,
    solve_lower=lambda a, b: ng.linalg.solve_triangular(a, b, upper=False),
    solve_upper_t=lambda a, b: ng.linalg.solve_triangular(a.T, b, upper=True))


def _np(t):
    if isinstance(t, dict):
        return {k: _np(v) for k, v in t.items()}
    if isinstance(t, (list, tuple)):
        return type(t)(_np(v) for v in t)
    if t is None or isinstance(t, (str, bool, int)):
        return t
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
    elif a is None or isinstance(a, (str, bool, int)):
        assert a == b, (path, a, b)
    else:
        assert a.shape == b.shape, (path, a.shape, b.shape)
        assert a.dtype.kind == b.dtype.kind, (path, a.dtype, b.dtype)
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10, err_msg=path)


PROGRAMS, EAGER = [], set()


def program(fn=None, *, eager=False):
    """Register a program; JAX runs it under one outer ``jax.jit`` (one compilation instead of
    one per op, which keeps this file fast), or eagerly where it returns Python values."""
    if fn is None:
        return partial(program, eager=eager)
    PROGRAMS.append(fn)
    if eager:
        EAGER.add(fn.__name__)
    return fn


R = np.random.default_rng(7)
X, YC = R.standard_normal((24, 4)), R.integers(0, 3, 24)
INIT = {"l1": {"w": R.standard_normal((4, 8)) * 0.5, "b": np.zeros(8)},
        "l2": {"w": R.standard_normal((8, 3)) * 0.5, "b": np.zeros(3)}}
XS = R.standard_normal((7, 2, 3))
M23 = R.standard_normal((2, 3))
V5 = R.standard_normal(5)


def _params(L, tree=INIT):
    return L.tree_map(L.arr, tree)


# --- 1. an optax-style optimiser: pure init/update functions over pytrees -------------------------
def warmup_cosine(L, peak=0.05, warmup=3.0, total=12.0):
    """A learning rate as a function of the step count (an integer array under jit)."""
    def schedule(count):
        warm = peak * L.np.minimum(1.0, count / warmup)
        cos = 0.5 * peak * (1 + L.np.cos(math.pi * L.np.minimum(count, total) / total))
        return L.np.where(count < warmup, warm, cos)
    return schedule


def adam(L, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    def init(params):
        return {"count": L.np.zeros((), L.np.int32), "mu": L.tree_map(L.np.zeros_like, params),
                "nu": L.tree_map(L.np.zeros_like, params)}

    def update(grads, state, params=None):
        count = state["count"] + 1
        mu = L.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["mu"], grads)
        nu = L.tree_map(lambda v, g: b2 * v + (1 - b2) * g ** 2, state["nu"], grads)
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        updates = L.tree_map(lambda m, v: -lr * (m / c1) / (L.np.sqrt(v / c2) + eps), mu, nu)
        return updates, {"count": count, "mu": mu, "nu": nu}

    return types.SimpleNamespace(init=init, update=update)


def apply_updates(L, params, updates):
    return L.tree_map(lambda p, u: p + u, params, updates)


def mlp(L, params, x):
    h = L.np.tanh(x @ params["l1"]["w"] + params["l1"]["b"])
    return h @ params["l2"]["w"] + params["l2"]["b"]


@program
def optax_style_training(L):
    opt = adam(L, warmup_cosine(L))
    params, x, y = _params(L), L.arr(X), L.arr(YC)

    def loss_fn(params, x, y):
        logits = mlp(L, params, x)
        logp = L.log_softmax(logits)
        nll = -L.np.mean(L.np.take_along_axis(logp, y[:, None], axis=-1))
        l2 = sum(L.np.sum(w ** 2) for w in L.tree_leaves(params))
        acc = L.np.mean((L.np.argmax(logits, axis=-1) == y).astype(logits.dtype))
        return nll + 1e-3 * l2, {"nll": nll, "acc": acc}

    @L.jit
    def train_step(params, opt_state, x, y):
        (loss, aux), grads = L.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return apply_updates(L, params, updates), opt_state, loss, aux

    opt_state = opt.init(params)
    history = []
    for _ in range(6):
        params, opt_state, loss, aux = train_step(params, opt_state, x, y)
        history.append((loss, aux["nll"], aux["acc"]))
    lrs = [warmup_cosine(L)(L.arr(np.array(t, np.int32))) for t in (0, 1, 3, 7, 12, 20)]
    return params, opt_state, history, lrs, L.jit(warmup_cosine(L))(L.arr(np.int32(5)))


@program
def minibatch_epochs(L):
    """Minibatches through a jitted step with the step count as an argument and a global-norm
    gradient clip (optax.clip_by_global_norm's formula)."""
    params, x, y = _params(L), L.arr(X), L.arr(YC)
    opt = adam(L, 0.02)

    def loss_fn(p, xb, yb):
        logp = L.log_softmax(mlp(L, p, xb))
        return -L.np.mean(L.np.take_along_axis(logp, yb[:, None], axis=1))

    def clip_by_global_norm(g, max_norm):
        norm = L.np.sqrt(sum(L.np.sum(t * t) for t in L.tree_leaves(g)))
        scale = L.np.minimum(1.0, max_norm / norm)
        return L.tree_map(lambda t: t * scale, g), norm

    @partial(L.jit, static_argnames=("max_norm",))
    def step(p, s, xb, yb, t, max_norm=0.5):
        value, g = L.value_and_grad(loss_fn)(p, xb, yb)
        g, norm = clip_by_global_norm(g, max_norm)
        u, s = opt.update(g, s)
        return apply_updates(L, p, u), s, value, norm * t

    state, out = opt.init(params), []
    for epoch in range(2):
        for i in range(0, 24, 8):
            params, state, value, norm = step(params, state, x[i:i + 8], y[i:i + 8],
                                              L.arr(np.float64(epoch + 1)))
            out.append((value, norm))
    return params, state["count"], out


# --- 2. custom rules ---------------------------------------------------------------------------
@program
def custom_vjp_idioms(L):
    @L.custom_vjp
    def clip_gradient(lo, hi, x):
        return x

    def clip_fwd(lo, hi, x):
        return x, (lo, hi)

    def clip_bwd(res, g):
        lo, hi = res
        return (None, None, L.np.clip(g, lo, hi))

    clip_gradient.defvjp(clip_fwd, clip_bwd)

    @L.custom_vjp
    def log1pexp(x):
        return L.np.where(x > 0, x + L.np.log1p(L.np.exp(-x)), L.np.log1p(L.np.exp(x)))

    def log1pexp_fwd(x):
        return log1pexp(x), x

    def log1pexp_bwd(x, g):
        return (g * L.sigmoid(x),)

    log1pexp.defvjp(log1pexp_fwd, log1pexp_bwd)

    @L.custom_vjp
    def scale_tree(p, s):  # pytree in, pytree out, a gradient per leaf
        return {"a": p["a"] * s, "b": p["b"] * s}

    scale_tree.defvjp(lambda p, s: (scale_tree(p, s), (p, s)),
                      lambda res, g: ({"a": g["a"] * res[1], "b": g["b"] * res[1]},
                                      L.np.sum(g["a"] * res[0]["a"]) + L.np.sum(g["b"]
                                                                               * res[0]["b"])))
    x = L.arr(np.array([-800.0, -3.0, 0.0, 2.0, 40.0, 800.0]))
    lo, hi = L.arr(np.array(-0.1)), L.arr(np.array(0.1))
    tree = {"a": L.arr(V5), "b": L.arr(V5[:2])}
    f = lambda p, s: L.np.sum(scale_tree(p, s)["a"] ** 2) + L.np.sum(  # noqa: E731
        L.np.sin(scale_tree(p, s)["b"]))
    return (L.grad(lambda x: L.np.sum(clip_gradient(lo, hi, x ** 2)))(L.arr(V5)),
            log1pexp(x), L.grad(lambda x: L.np.sum(log1pexp(x)))(x),
            L.vmap(L.grad(log1pexp))(x), L.jit(L.grad(lambda x: L.np.sum(log1pexp(x))))(x),
            L.grad(f, argnums=(0, 1))(tree, L.arr(1.5)),
            L.jit(L.grad(f, argnums=(0, 1)))(tree, L.arr(1.5)),
            L.grad(lambda x: L.np.sum(L.grad(lambda y: L.np.sum(log1pexp(y) * y))(x)))(x[1:5]))


@program
def custom_jvp_idioms(L):
    @partial(L.custom_jvp, nondiff_argnums=(0,))
    def app(f, x):
        return f(x)

    @app.defjvp
    def app_jvp(f, primals, tangents):
        (x,), (t,) = primals, tangents
        return f(x), 2.0 * t  # a deliberately "wrong" rule: the rule must be used

    @L.custom_jvp
    def safe_norm(x):
        return L.np.sqrt(L.np.sum(x ** 2))

    @safe_norm.defjvp
    def safe_norm_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        n = safe_norm(x)
        return n, L.np.where(n == 0, 0.0, L.np.sum(x * t) / L.np.where(n == 0, 1.0, n))

    @L.custom_jvp
    def softplus(x, beta):
        return L.np.log1p(L.np.exp(beta * x)) / beta

    softplus.defjvps(lambda t, ans, x, beta: t * L.sigmoid(beta * x),
                     lambda t, ans, x, beta: t * (x * L.sigmoid(beta * x) - ans) / beta)

    x, z = L.arr(V5), L.arr(np.zeros(3))
    b = L.arr(np.array(1.7))
    return (app(L.np.sin, x), L.grad(lambda x: L.np.sum(app(L.np.sin, x)))(x),
            L.jvp(partial(app, L.np.sin), (x,), (L.arr(np.ones(5)),)),
            L.grad(safe_norm)(x), L.grad(safe_norm)(z), L.jit(L.grad(safe_norm))(z),
            L.vmap(L.grad(safe_norm))(L.np.stack([x[:3], z])),
            L.grad(lambda x, b: L.np.sum(softplus(x, b)), argnums=(0, 1))(x, b),
            L.hessian(lambda x: L.np.sum(softplus(x, b)))(x))


@program
def stop_gradient_and_remat(L):
    sg = L.lax.stop_gradient
    x, w = L.arr(V5), L.arr(np.outer(V5, V5[::-1]) * 0.3)

    def straight_through_round(x):
        return x + sg(L.np.round(x * 4) / 4 - x)

    def td_loss(w, s, s2, r):
        target = r + 0.9 * sg(L.np.tanh(w @ s2))
        return L.np.sum((L.np.tanh(w @ s) - target) ** 2)

    @L.checkpoint
    def block(w, h):
        return L.np.tanh(w @ h) + h

    def deep(w, h):
        for _ in range(3):
            h = block(w, h)
        return L.np.sum(h ** 2)

    def deep_plain(w, h):
        for _ in range(3):
            h = L.np.tanh(w @ h) + h
        return L.np.sum(h ** 2)

    remat_scan = L.checkpoint(lambda w, h: L.lax.scan(
        lambda c, _: (L.np.tanh(w @ c), L.np.sum(c)), h, None, length=4))
    return (straight_through_round(x),
            L.grad(lambda x: L.np.sum(straight_through_round(x) ** 2))(x),
            L.grad(td_loss)(w, x, x[::-1], L.arr(np.ones(5))),
            L.jvp(lambda x: sg(x) * x, (x,), (L.arr(np.ones(5)),)),
            L.grad(deep, argnums=(0, 1))(w, x), L.grad(deep_plain, argnums=(0, 1))(w, x),
            L.jit(L.grad(deep))(w, x),
            L.grad(lambda w: L.np.sum(remat_scan(w, x)[1]))(w),
            L.vmap(L.grad(deep, argnums=1), in_axes=(None, 0))(w, L.np.stack([x, 2 * x])))


# --- 3. loops and branches -----------------------------------------------------------------------
@program
def lstm_scan(L):
    rng = np.random.default_rng(1)
    p = {"wx": L.arr(rng.standard_normal((3, 16)) * 0.4),
         "wh": L.arr(rng.standard_normal((4, 16)) * 0.4), "b": L.arr(np.zeros(16))}
    xs = {"x": L.arr(XS[:, 0]), "mask": L.arr(np.array([1.0, 1, 1, 1, 1, 0, 0]))}

    def cell(p, carry, inp):
        h, c = carry
        z = inp["x"] @ p["wx"] + h @ p["wh"] + p["b"]
        i, f, g, o = L.np.split(z, 4)
        c2 = L.sigmoid(f) * c + L.sigmoid(i) * L.np.tanh(g)
        h2 = L.sigmoid(o) * L.np.tanh(c2)
        m = inp["mask"]
        h2, c2 = m * h2 + (1 - m) * h, m * c2 + (1 - m) * c
        return (h2, c2), {"h": h2, "norm": L.np.sum(h2 ** 2)}

    def loss(p, xs, unroll=1, reverse=False):
        init = (L.np.zeros(4), L.np.zeros(4))
        (h, c), ys = L.lax.scan(partial(cell, p), init, xs, unroll=unroll, reverse=reverse)
        return L.np.sum(h) + L.np.sum(ys["norm"]) + L.np.mean(ys["h"][-1])

    return (L.value_and_grad(loss)(p, xs, unroll=3), L.grad(loss)(p, xs, reverse=True),
            L.jit(L.grad(loss), static_argnames=("unroll", "reverse"))(p, xs, unroll=True),
            L.vmap(L.grad(loss), in_axes=(None, {"x": 1, "mask": None}))(
                p, {"x": L.arr(XS), "mask": xs["mask"]}))


@program
def fori_and_while(L):
    xs = L.arr(V5)

    def horner(coef, x):  # fori_loop indexing with the loop counter
        return L.lax.fori_loop(0, coef.shape[0], lambda i, acc: acc * x + coef[i],
                               L.np.zeros_like(x))

    def power_iteration(a, n=15):
        def body(_, v):
            v = a @ v
            return v / L.np.linalg.norm(v)
        v = L.lax.fori_loop(0, n, body, L.np.ones(a.shape[0]) / math.sqrt(a.shape[0]))
        return v @ a @ v

    def bisect(f, lo, hi):
        def cond(state):
            lo, hi, it = state
            return (hi - lo > 1e-12) & (it < 100)

        def body(state):
            lo, hi, it = state
            mid = (lo + hi) / 2
            left = f(lo) * f(mid) <= 0
            return L.np.where(left, lo, mid), L.np.where(left, mid, hi), it + 1
        lo, hi, it = L.lax.while_loop(cond, body, (lo, hi, 0))
        return (lo + hi) / 2, it

    a = L.arr(np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]]))
    c = L.arr(np.array([0.5, -1.0, 2.0, 0.3]))
    f = lambda x: x ** 3 - 2.0  # noqa: E731
    return (horner(c, xs), L.grad(lambda c: L.np.sum(horner(c, xs)))(c),
            L.vmap(horner, in_axes=(None, 0))(c, xs), L.jit(horner)(c, xs),
            power_iteration(a), L.grad(lambda a: power_iteration(a))(a),
            L.jit(power_iteration, static_argnums=1)(a, 10),
            bisect(f, L.arr(0.0), L.arr(3.0)), L.jit(partial(bisect, f))(L.arr(0.0), L.arr(3.0)),
            L.vmap(lambda t: bisect(lambda x: x ** 3 - t, L.arr(0.0), L.arr(3.0))[0])(
                L.arr(np.array([1.0, 2.0, 8.0]))))


@program
def branches_under_transforms(L):
    def huber(x, delta=1.0):
        return L.lax.cond(L.np.abs(x) <= delta, lambda x: 0.5 * x ** 2,
                          lambda x: delta * (L.np.abs(x) - 0.5 * delta), x)

    def leaky(x):
        return L.lax.select(x > 0, x, 0.1 * x)

    def activation(kind, x):
        return L.lax.switch(kind, [L.np.tanh, L.sigmoid, lambda x: L.np.maximum(x, 0.0)], x)

    def tree_cond(flag, p):
        return L.lax.cond(flag, lambda p: {"a": p["a"] * 2, "b": p["b"]},
                          lambda p: {"a": p["a"], "b": p["b"] * 3}, p)

    x = L.arr(np.array([-3.0, -0.5, 0.2, 0.9, 2.5]))
    kinds = L.arr(np.array([0, 1, 2, 1, 0]))
    p = {"a": L.arr(V5), "b": L.arr(V5[:2])}
    return (L.vmap(huber)(x), L.vmap(L.grad(huber))(x), L.jit(L.vmap(L.grad(huber)))(x),
            L.grad(lambda x: L.np.sum(L.vmap(huber)(x)))(x),
            leaky(x), L.grad(lambda x: L.np.sum(leaky(x)))(x), L.vmap(L.grad(leaky))(x),
            L.vmap(activation)(kinds, x), L.vmap(L.grad(activation, argnums=1))(kinds, x),
            L.jit(L.grad(lambda k, x: L.np.sum(activation(k, x)), argnums=1))(L.arr(2), x),
            tree_cond(True, p), L.grad(lambda p: L.np.sum(tree_cond(False, p)["b"]))(p),
            L.vmap(tree_cond, in_axes=(0, None))(L.arr(np.array([True, False])), p))


@program
def functional_updates(L):
    """``x.at[...]``: a loop that fills an array, and each update under grad, vmap and jit."""
    x = L.arr(np.array([1.0, 2.0, -1.0, 0.5]))

    def smooth(x):
        def body(i, out):
            return out.at[i].set(out[i - 1] * 0.5 + x[i])
        return L.lax.fori_loop(1, x.shape[0], body, L.np.zeros_like(x).at[0].set(x[0]))

    def updates(x, v):
        idx = L.arr(np.array([0, 2, 0]))
        return (x.at[1].set(v), x.at[idx].add(v), x.at[1:3].multiply(v), x.at[-1].get(),
                x.at[0].max(v), x.at[:2].min(v), x.at[3].divide(v),
                x.at[2].power(2), x.at[idx].set(L.arr(np.array([7.0, 8.0, 7.0]))))

    total = lambda x, v: sum(L.np.sum(u ** 2) for u in updates(x, v))  # noqa: E731
    v = L.arr(1.5)
    return (smooth(x), L.grad(lambda x: L.np.sum(smooth(x) ** 2))(x), x.at[::2].apply(L.np.sin),
            L.vmap(smooth)(L.np.stack([x, 2 * x])), L.jit(smooth)(x), updates(x, v),
            L.grad(total, argnums=(0, 1))(x, v),
            L.vmap(lambda x, i: x.at[i].add(1.0))(L.np.stack([x, x, x]),
                                                  L.arr(np.array([0, 3, 1]))),
            L.jit(updates)(x, v))


@program
def dynamic_slices(L):
    """``lax.dynamic_slice`` and friends with traced starts: in loops, under vmap and grad."""
    x = L.arr(np.arange(20.0).reshape(4, 5) / 7)
    ds, dus = L.lax.dynamic_slice, L.lax.dynamic_update_slice

    def window_sums(x):
        return L.lax.fori_loop(0, 3, lambda i, acc: acc + L.lax.dynamic_slice_in_dim(
            x, i, 2, axis=1), L.np.zeros((4, 2)))

    def rows_doubled(x, order):
        def body(c, i):
            row = L.lax.dynamic_index_in_dim(x, i, 0, keepdims=False)
            return L.lax.dynamic_update_index_in_dim(c, L.np.sin(row) * 2, i, 0), None
        return L.lax.scan(body, L.np.zeros_like(x), order)[0]

    order = L.arr(np.array([2, 0, -1]))
    return (ds(x, (1, 2), (2, 3)), ds(x, (L.arr(3), L.arr(-1)), (2, 2)), ds(x, (-7, 4), (2, 2)),
            dus(x, L.np.ones((2, 2)), (L.arr(3), 1)),
            L.lax.dynamic_update_slice_in_dim(x, L.np.zeros((4, 2)), 4, 1),
            L.vmap(lambda i: ds(x, (i, i), (2, 2)))(L.arr(np.array([0, 1, 3]))),
            L.vmap(lambda r, i: dus(r, L.np.ones(2), (i,)))(x, L.arr(np.array([0, 1, 3, 4]))),
            L.grad(lambda u: L.np.sum(dus(x, u, (L.arr(2), 1)) ** 2))(L.np.ones((2, 3))),
            L.jit(lambda i: ds(x, (i, 0), (2, 5)))(L.arr(2)), window_sums(x),
            L.grad(lambda x: L.np.sum(window_sums(x) ** 2))(x), rows_doubled(x, order),
            L.grad(lambda x: L.np.sum(rows_doubled(x, order) ** 2))(x))


# --- 4. vmap / Jacobian keywords over pytrees ----------------------------------------------------
@program
def vmap_pytrees(L):
    params, x, y = _params(L), L.arr(X[:6]), L.arr(YC[:6])

    def loss(p, x, y):
        logp = L.log_softmax(mlp(L, p, x))
        return -logp[y], {"logp": logp}

    g, aux = L.vmap(L.grad(loss, has_aux=True), in_axes=(None, 0, 0))(params, x, y)
    (v, aux2), g2 = L.vmap(L.value_and_grad(loss, has_aux=True), in_axes=(None, 0, 0),
                           out_axes=((0, 1), {"l1": {"w": 2, "b": 0}, "l2": 0}))(params, x, y)
    stacked = L.tree_map(lambda a: L.np.stack([a, 2 * a]), params)
    ens = L.vmap(partial(mlp, L), in_axes=(0, None))  # an ensemble of two models on one batch
    both = L.vmap(L.vmap(lambda p, x: mlp(L, p, x), in_axes=(None, 0)), in_axes=(0, None))
    per = L.vmap(lambda p, x: mlp(L, p, x), in_axes=({"l1": {"w": None, "b": None},
                                                       "l2": 0}, None))
    half = {"l1": params["l1"], "l2": stacked["l2"]}
    out_tree = L.vmap(lambda x: {"s": L.np.sum(x), "x": x, "c": L.np.ones(2)},
                      out_axes={"s": 0, "x": 1, "c": None})(x)
    return (g, aux, v, aux2, g2, ens(stacked, x), both(stacked, x), per(half, x), out_tree,
            L.vmap(L.vmap(lambda a, b: a * b))(x, x),
            L.vmap(L.vmap(L.np.dot, (0, None)), (0, None))(L.np.stack([x, x + 1]), x[0]))


@program
def jacobians_of_pytrees(L):
    p = {"w": L.arr(np.array([[0.5, -0.3], [0.2, 0.8]])), "b": L.arr(np.array([0.1, -0.2]))}
    x = L.arr(np.array([0.7, -1.1]))

    def layer(p, x):
        y = L.np.tanh(p["w"] @ x + p["b"])
        return {"y": y, "n": L.np.sum(y ** 2)}

    def energy(p, x):
        return L.np.sum(L.np.tanh(p["w"] @ x + p["b"]) ** 2) + L.np.sum(p["w"] ** 4)

    return (L.jacfwd(layer)(p, x), L.jacrev(layer, argnums=(0, 1))(p, x),
            L.hessian(energy, argnums=(0, 1))(p, x),
            L.jacrev(lambda x: (layer(p, x)["y"], x * 2), has_aux=True)(x),
            L.jacfwd(lambda x: (layer(p, x)["n"], {"x": x}), has_aux=True)(x),
            L.vmap(L.jacrev(lambda x: layer(p, x)["y"]))(L.np.stack([x, -x])))


@program
def jvp_vjp_linearize(L):
    p = {"w": L.arr(np.array([[0.5, -0.3], [0.2, 0.8]])), "b": L.arr(np.array([0.1, -0.2]))}
    t = L.tree_map(L.np.ones_like, p)
    x = L.arr(np.array([0.7, -1.1]))

    def f(p, x):
        y = L.np.tanh(p["w"] @ x + p["b"])
        return y, {"mean": L.np.mean(y)}

    y, ty, aux = L.jvp(f, (p, x), (t, x), has_aux=True)
    y2, lin, aux2 = L.linearize(f, p, x, has_aux=True)
    y3, pull, aux3 = L.vjp(f, p, x, has_aux=True)
    out, pull_tree = L.vjp(lambda p: {"u": p["w"] @ x, "v": p["b"] ** 2}, p)
    grads = L.grad(lambda p, x, s: L.np.sum(f(p, x)[0]) * s, argnums=(0, 2))(p, x, L.arr(3.0))
    return (y, ty, aux, y2, lin(t, x), lin(p, -x), aux2, y3, pull(L.arr(np.array([1.0, -1.0]))),
            aux3, out, pull_tree({"u": L.arr(np.array([1.0, 2.0])), "v": L.np.ones(2)}), grads)


@program(eager=True)
def tree_utilities(L):
    tree = {"layers": [{"w": L.arr(np.ones((2, 2))), "b": None},
                       (L.arr(np.arange(3.0)), L.arr(2.0))],
            "opt": {"count": L.arr(np.int32(3)), "skip": None}}
    leaves, treedef = L.tree_flatten(tree)
    rebuilt = L.tree_unflatten(treedef, [x * 2 for x in leaves])
    doubled = L.tree_map(lambda x: x * 2, tree)
    pairs = L.tree_map(lambda x, y: x + y, tree, doubled)
    counts = L.tree_map(lambda x: None if x is None else x.shape, tree,
                        is_leaf=lambda x: x is None)
    nested = L.tree_map(lambda x: x, {"a": [1, 2], "b": (3, (4, None))})
    same = L.tree_structure(tree) == L.tree_structure(doubled)
    other = L.tree_structure(tree) == L.tree_structure({"layers": [], "opt": {}})
    return (len(leaves), leaves, rebuilt, doubled, pairs, counts is not None, nested,
            L.tree_leaves([None, (None,), {"a": None}]), L.tree_leaves(nested), same, other,
            treedef.num_leaves, L.tree_leaves(counts, is_leaf=lambda x: isinstance(x, tuple)))


@program
def numpy_creation_and_defaults(L):
    """jnp's creation signatures, keywords and reduction defaults (k=, axis=, axes=, ...)."""
    a = L.arr(M23)
    return (L.np.eye(4, k=1), L.np.eye(3, 4, k=-1), L.np.zeros((2,), L.np.int32),
            L.np.linspace(0.0, 2.0, 5, endpoint=False), L.np.linspace(-1.0, 1.0, 4),
            L.np.ones((2, 2), L.np.float64), L.np.var(a), L.np.std(a, axis=0),
            L.np.var(a, axis=1, ddof=1), L.np.mean(a, axis=(0, 1)), L.np.linalg.norm(a, axis=1),
            L.np.where(L.np.triu(L.np.ones((3, 3)), k=1) > 0, -1e9, 0.0),  # a causal mask
            L.np.tril(a, k=-1), L.np.diag(a[0], k=1), L.np.amax(a, axis=0),
            L.np.amin(a, axis=1, keepdims=True), L.np.tensordot(a, a, axes=([1], [1])),
            L.np.linalg.svd(a, compute_uv=False),
            L.grad(lambda a: L.np.sum(L.np.triu(a, k=1) * L.np.amax(a, axis=0)))(a))


# --- 5. jax.numpy-heavy numerics ----------------------------------------------------------------
GP_X = np.linspace(-2, 2, 9)[:, None] + 0.05 * R.standard_normal((9, 1))
GP_Y = np.sin(2 * GP_X[:, 0]) + 0.1 * R.standard_normal(9)
GP_XT = np.linspace(-2.5, 2.5, 4)[:, None]


@program
def gaussian_process(L):
    def kernel(params, a, b):
        sq = L.np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        ell, sf = L.np.exp(params["log_ell"]), L.np.exp(params["log_sf"])
        return sf ** 2 * L.np.exp(-0.5 * sq / ell ** 2)

    def nll(params, x, y):
        n = x.shape[0]
        k = kernel(params, x, x) + (L.np.exp(2 * params["log_sn"]) + 1e-9) * L.np.eye(n)
        chol = L.cholesky(k)
        z = L.solve_lower(chol, y[:, None])
        alpha = L.solve_upper_t(chol, z)
        return (0.5 * L.np.sum(y[:, None] * alpha) + L.np.sum(L.np.log(L.np.diagonal(chol)))
                + 0.5 * n * math.log(2 * math.pi))

    def predict(params, x, y, xt):
        n = x.shape[0]
        k = kernel(params, x, x) + L.np.exp(2 * params["log_sn"]) * L.np.eye(n)
        chol = L.cholesky(k)
        ks = kernel(params, x, xt)
        alpha = L.solve_upper_t(chol, L.solve_lower(chol, y[:, None]))
        v = L.solve_lower(chol, ks)
        mean = (ks.T @ alpha)[:, 0]
        var = L.np.diagonal(kernel(params, xt, xt)) - L.np.sum(v ** 2, axis=0)
        return mean, var

    params = {"log_ell": L.arr(np.log(0.7)), "log_sf": L.arr(0.0), "log_sn": L.arr(np.log(0.1))}
    x, y, xt = L.arr(GP_X), L.arr(GP_Y), L.arr(GP_XT)
    vg = L.jit(L.value_and_grad(nll))
    trace = []
    for _ in range(4):  # gradient descent on the marginal likelihood
        value, g = vg(params, x, y)
        params = L.tree_map(lambda p, g: p - 0.05 * g, params, g)
        trace.append(value)
    return (trace, params, g, L.jit(predict)(params, x, y, xt),
            L.grad(lambda le: nll({**params, "log_ell": le}, x, y))(params["log_ell"]))


HMM_OBS = np.array([[0, 1, 1, 2, 0, 2, 2, 1], [2, 2, 1, 0, 0, 1, 2, 0]])


@program
def hmm_forward(L):
    rng = np.random.default_rng(3)
    params = {"init": L.arr(rng.standard_normal(3)), "trans": L.arr(rng.standard_normal((3, 3))),
              "emit": L.arr(rng.standard_normal((3, 3)))}

    def log_likelihood(params, obs):
        log_pi = L.log_softmax(params["init"])
        log_a = L.log_softmax(params["trans"], axis=-1)
        log_b = L.log_softmax(params["emit"], axis=-1)

        def step(log_alpha, o):
            log_alpha = L.logsumexp(log_alpha[:, None] + log_a, axis=0) + log_b[:, o]
            return log_alpha, L.logsumexp(log_alpha)

        log_alpha0 = log_pi + log_b[:, obs[0]]
        final, running = L.lax.scan(step, log_alpha0, obs[1:])
        return L.logsumexp(final), running

    def posterior_first(params, obs):  # a marginal by differentiating log Z
        return L.grad(lambda p: log_likelihood(p, obs)[0])(params)["init"]

    obs = L.arr(HMM_OBS)
    batched = L.vmap(log_likelihood, in_axes=(None, 0))
    total = lambda p: L.np.sum(batched(p, obs)[0])  # noqa: E731
    return (L.jit(log_likelihood)(params, obs[0]), L.jit(L.value_and_grad(total))(params),
            L.vmap(posterior_first, in_axes=(None, 0))(params, obs))


@pytest.mark.parametrize("prog", PROGRAMS, ids=lambda p: p.__name__)
def test_program_matches_jax(prog):
    if jax is None:
        pytest.skip("JAX is not installed")
    want = prog(J) if prog.__name__ in EAGER else jax.jit(lambda: prog(J))()
    _close(_np(want), _np(prog(N)))


# --- regressions found by these ports (no JAX needed) --------------------------------------------
def test_creation_takes_numpys_arguments():
    # jnp.zeros((), jnp.int32) and np.ones(shape, dtype): the dtype was read as a size
    assert ng.zeros((), ng.int32).dtype == ng.int32 and ng.zeros((), ng.int32).shape == ()
    assert ng.ones((2, 3), "float64").dtype == ng.float64
    assert ng.empty([2], np.float32).shape == (2,)
    assert ng.zeros(2, 3).shape == (2, 3)  # PyTorch's sizes one by one still
    with pytest.raises(TypeError, match="zeros: dtype given twice"):
        ng.zeros((2,), ng.int32, dtype=ng.float64)
    # np.eye(n, m, k): the k-th diagonal (eye took no k)
    assert ng.eye(3, k=1).numpy().tolist() == np.eye(3, k=1).tolist()
    assert ng.eye(2, 4, k=-1).numpy().tolist() == np.eye(2, 4, k=-1).tolist()
    with pytest.raises(TypeError, match="eye: k must be an int"):
        ng.eye(3, k=0.5)
    # np.linspace(..., endpoint=False): the keyword was refused
    np.testing.assert_allclose(ng.linspace(2.0, -3.0, 7, endpoint=False).numpy(),
                               np.linspace(2.0, -3.0, 7, endpoint=False), rtol=1e-6)
    assert ng.linspace(0, 1, 0, endpoint=False).shape == (0,)


def test_numpy_keywords_on_torch_named_functions():
    # jnp.triu(x, k=1), jnp.amax(x, axis=0), jnp.tensordot(a, b, axes=...),
    # jnp.linalg.svd(x, compute_uv=False): the NumPy keywords were refused
    x = ng.tensor(np.arange(9.0).reshape(3, 3))
    assert ng.triu(x, k=1).tolist() == np.triu(np.arange(9.0).reshape(3, 3), k=1).tolist()
    assert x.tril(k=-1).tolist() == np.tril(np.arange(9.0).reshape(3, 3), k=-1).tolist()
    assert ng.diag(ng.tensor([1.0, 2.0]), k=-1).tolist() == np.diag([1.0, 2.0], k=-1).tolist()
    assert ng.amax(x, axis=0, keepdims=True).tolist() == [[6.0, 7.0, 8.0]]
    assert ng.tensordot(x, x, axes=1).tolist() == (x @ x).tolist()
    np.testing.assert_allclose(ng.linalg.svd(x, compute_uv=False).numpy(),
                               np.linalg.svd(x.numpy(), compute_uv=False), atol=1e-12)
    with pytest.raises(TypeError, match="triu: give diagonal= .* or k="):
        ng.triu(x, 1, k=1)
    with pytest.raises(TypeError, match="amax: give dim= .* or axis="):
        ng.amax(x, 0, axis=0)
    with pytest.raises(TypeError, match="tensordot: give dims= .* or axes="):
        ng.tensordot(x, x, 1, axes=1)


def test_fori_loop_body_indexes_with_the_counter_under_grad_and_vmap():
    # coef[i] with the loop counter: the interpreted body (grad, vmap) got the index twice,
    # and vmap over coef silently used the traced index
    c = ng.tensor(np.array([0.5, -1.0, 2.0, 0.3]))
    x = ng.tensor(V5)

    def horner(coef, x):
        return nlax.fori_loop(0, 4, lambda i, acc: acc * x + coef[i], ng.zeros_like(x))

    want = np.polyval(c.numpy(), V5)
    np.testing.assert_allclose(horner(c, x).numpy(), want, rtol=1e-12)
    g = ng.grad(lambda c: horner(c, x).sum())(c).numpy()
    np.testing.assert_allclose(g, [(V5 ** k).sum() for k in (3, 2, 1, 0)], rtol=1e-12)
    both = ng.vmap(horner, in_axes=(0, None))(ng.stack([c, 2 * c]), x).numpy()
    np.testing.assert_allclose(both, [want, 2 * want], rtol=1e-12)
    per = ng.vmap(ng.grad(lambda c, x: horner(c, x)), in_axes=(None, 0))(c, x).numpy()
    np.testing.assert_allclose(per, V5[:, None] ** np.arange(3, -1, -1), rtol=1e-12)


def test_scan_under_vmap_indexes_with_a_batched_scanned_int():
    # an HMM's log_b[:, o] with o scanned from a batch of sequences: the body was traced on
    # the tracer's poison (the most negative int64) and failed with an IndexError
    table = ng.tensor(R.standard_normal((3, 3)))
    obs = ng.tensor(HMM_OBS)

    def total(obs):
        return nlax.scan(lambda c, o: (c + table[:, o], c.sum()), ng.zeros(3), obs)[0]

    got = ng.vmap(total)(obs).numpy()
    np.testing.assert_allclose(got, [table.numpy()[:, o].sum(1) for o in HMM_OBS], rtol=1e-12)


def test_lax_select_is_jaxs_non_broadcasting_where():
    x = ng.tensor(np.array([-1.0, 2.0, -3.0]))
    assert nlax.select(x > 0, x, -x).tolist() == [1.0, 2.0, 3.0]
    assert nlax.select(ng.tensor(True), x, x * 0).tolist() == x.tolist()
    g = ng.grad(lambda x: nlax.select(x > 0, x * x, 0.5 * x).sum())(x)
    assert g.tolist() == [0.5, 4.0, 0.5]
    with pytest.raises(TypeError, match="select: pred must be bool"):
        nlax.select(x, x, x)
    with pytest.raises(TypeError, match="select: on_true and on_false must have one shape"):
        nlax.select(x > 0, x, x[:2])
    with pytest.raises(TypeError, match="select: pred must be a scalar or of shape"):
        nlax.select(ng.tensor([True, False]), x, x)


def test_at_updates_are_functional_and_refuse_what_they_cannot_do():
    x = ng.tensor(np.arange(4.0))
    assert x.at[ng.tensor([0, 0, 2])].add(1.0).tolist() == [2.0, 1.0, 3.0, 3.0]
    assert x.at[1].set(ng.tensor(5, dtype=ng.int64)).tolist() == [0.0, 5.0, 2.0, 3.0]
    assert x.at[ng.tensor([1, 3])].subtract(ng.tensor([1.0, 2.0])).tolist() == [0, 0, 2, 1]
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]  # unchanged
    with pytest.raises(NotImplementedError, match=r"at\[...\]\.multiply: index arrays"):
        x.at[ng.tensor([0, 0])].multiply(2.0)
    with pytest.raises(NotImplementedError, match="mode='drop'"):
        x.at[5].set(1.0, mode="drop")


def test_dynamic_slice_checks_its_arguments():
    x = ng.tensor(np.arange(6.0).reshape(2, 3))
    assert nlax.dynamic_slice(x, (0, 5), (1, 2)).tolist() == [[1.0, 2.0]]  # clamped
    assert nlax.dynamic_slice(x, (0, -1), (2, 1), allow_negative_indices=False).tolist() == [
        [0.0], [3.0]]  # a negative start is clamped to 0 without the wrap
    with pytest.raises(ValueError, match="dynamic_slice: need one start and one size per axis"):
        nlax.dynamic_slice(x, (0,), (1, 2))
    with pytest.raises(ValueError, match="slice sizes must be ints within"):
        nlax.dynamic_slice(x, (0, 0), (3, 1))
    with pytest.raises(TypeError, match="start indices must be integer scalars"):
        nlax.dynamic_slice(x, (0, ng.tensor(1.0)), (1, 1))
    with pytest.raises(TypeError, match="the update must have the operand's rank and dtype"):
        nlax.dynamic_update_slice(x, ng.ones(2, dtype=ng.float64), (0, 0))
    with pytest.raises(ValueError, match="dynamic_index_in_dim: axis must be an int"):
        nlax.dynamic_index_in_dim(x, 0, axis=2)


def test_randomness_is_generators_not_keys():
    """JAX's PRNGKey/split programs port to generators (nodegrad's documented choice): a seeded
    generator repeats its draws, and a loop body refuses to draw (pass the numbers in)."""
    g = ng.Generator().manual_seed(3)
    a = ng.randn(4, generator=g)
    g.manual_seed(3)
    assert (ng.randn(4, generator=g) == a).all().item()
    with pytest.raises(JitError, match="draw random numbers outside"):
        nlax.scan(lambda c, _: (c + ng.randn(2), c), ng.zeros(2), None, length=3)
    same = ng.vmap(lambda x: x + ng.randn(2), randomness="same")(ng.zeros(3, 2))
    assert (same[0] == same[1]).all().item()


_NAMES = "nondiff_argnames" in inspect.signature(ng.custom_vjp.__init__).parameters


@pytest.mark.skipif(not _NAMES, reason="custom rules without nondiff_argnames")
def test_custom_rules_take_nondiff_argnames_and_keywords():
    @partial(ng.custom_vjp, nondiff_argnames=("c",))
    def clip_gradient(x, c=0.5):
        return x

    clip_gradient.defvjp(lambda x, c: (x, None), lambda c, _, g: (ng.clip(g, -c, c),))
    x = ng.tensor(np.array([-2.0, 0.1, 3.0]))
    assert clip_gradient.nondiff_argnums == (1,)
    for f in (lambda x: clip_gradient(x) * 4, lambda x: clip_gradient(x, c=0.5) * 4,
              lambda x: clip_gradient(x=x) * 4):
        assert ng.grad(lambda x: f(x).sum())(x).tolist() == [0.5, 0.5, 0.5]

    @partial(ng.custom_jvp, nondiff_argnames=("n",))
    def power(x, n):
        return x ** n

    power.defjvp(lambda n, p, t: (p[0] ** n, n * p[0] ** (n - 1) * t[0]))
    assert ng.grad(lambda x: power(x, n=3).sum())(x).tolist() == (3 * x * x).tolist()
    with pytest.raises(ValueError, match="nondiff_argnames names 'k'"):
        ng.custom_vjp(lambda x: x, nondiff_argnames=("k",))


@pytest.mark.skipif("allow_int" not in inspect.signature(ng.jacrev).parameters,
                    reason="jacrev without allow_int")
def test_jacrev_allow_int():
    x, n = ng.tensor(np.array([0.5, 1.0])), ng.tensor(np.array([2, 3]))
    jx, jn = ng.jacrev(lambda x, n: ng.sin(x) * n, argnums=(0, 1), allow_int=True)(x, n)
    np.testing.assert_allclose(jx.numpy(), np.diag(np.cos([0.5, 1.0]) * [2, 3]), rtol=1e-12)
    assert jn.shape == (2, 2) and not jn.numpy().any()
    with pytest.raises(ng.GradError, match="allow_int=True"):
        ng.jacrev(lambda n: n * 1.0)(n)
