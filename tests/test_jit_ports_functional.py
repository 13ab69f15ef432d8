"""JAX-style functional programs under ``ng.jit``: training loops over pytrees of parameters
with a hand-written update inside the jitted function, per-example gradients, higher-order
derivatives, MAML, static arguments, scanned RNNs. Each program runs eagerly (``jit`` the
identity) and jitted from the same data and seed: every value it returns agrees (bit for bit
without fusion; within 1e-6 relative in float32 and 1e-12 in float64 when fused), each jitted
function traces as often as its signatures say and replays otherwise, and where JAX is
installed the same program agrees with JAX's in float64."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.func import functional_call
from nodegrad.nn import functional as F

R = np.random.default_rng(0)
X, YC = R.standard_normal((16, 5)), R.integers(0, 3, 16)
W1, W2 = R.standard_normal((5, 8)) * 0.3, R.standard_normal((8, 3)) * 0.3
BATCHES = [(R.standard_normal((16, 5)), R.integers(0, 3, 16)) for _ in range(12)]
XS, WX, WH = R.standard_normal((12, 4, 3)), R.standard_normal((3, 6)) * 0.4, \
    R.standard_normal((6, 6)) * 0.4
TASKS = [(R.uniform(0.5, 2.0, (1, 1)), R.uniform(0, np.pi, (1, 1))) for _ in range(6)]
NOISE = [R.standard_normal((5, 3)) for _ in range(12)]


def _ng(dtype) -> types.SimpleNamespace:
    """nodegrad's JAX-style names, with arrays made in ``dtype`` (integer arrays kept)."""
    def arr(a):
        a = np.asarray(a)
        return ng.tensor(a.astype(dtype) if a.dtype.kind == "f" else a)

    return types.SimpleNamespace(
        name="nodegrad", grad=ng.grad, value_and_grad=ng.value_and_grad, vmap=ng.vmap,
        jvp=ng.jvp, vjp=ng.vjp, jacfwd=ng.jacfwd, jacrev=ng.jacrev, hessian=ng.hessian,
        lax=ng.lax, tree_map=ng.tree_map, arr=arr, tanh=ng.tanh, exp=ng.exp, log=ng.log,
        sqrt=ng.sqrt, sin=ng.sin, sum=ng.sum, mean=ng.mean, where=ng.where,
        zeros_like=ng.zeros_like, log_softmax=ng.log_softmax, take_along_axis=ng.take_along_axis,
        maximum=ng.maximum, minimum=ng.minimum, relu=ng.relu, dot=ng.dot, stack=ng.stack,
        logaddexp=ng.logaddexp)


def _jax() -> types.SimpleNamespace:
    import jax
    import jax.numpy as jnp

    return types.SimpleNamespace(
        name="jax", grad=jax.grad, value_and_grad=jax.value_and_grad, vmap=jax.vmap,
        jvp=jax.jvp, vjp=jax.vjp, jacfwd=jax.jacfwd, jacrev=jax.jacrev, hessian=jax.hessian,
        lax=jax.lax, tree_map=jax.tree_util.tree_map, arr=jnp.asarray, tanh=jnp.tanh,
        exp=jnp.exp, log=jnp.log, sqrt=jnp.sqrt, sin=jnp.sin, sum=jnp.sum, mean=jnp.mean,
        where=jnp.where, zeros_like=jnp.zeros_like, log_softmax=jax.nn.log_softmax,
        take_along_axis=jnp.take_along_axis, maximum=jnp.maximum, minimum=jnp.minimum,
        relu=jax.nn.relu, dot=jnp.dot, stack=jnp.stack, logaddexp=jnp.logaddexp)


class Jits:
    """The ``jit`` a program is written with: the identity for the eager run, ``ng.jit`` (kept,
    so the test can ask how often each traced and whether it replays) or ``jax.jit``."""

    def __init__(self, kind: str, fuse: bool | None = False) -> None:
        self.kind, self.fuse, self.made = kind, fuse, []

    def __call__(self, fn: Callable | None = None, **kw):
        if fn is None:
            return partial(self, **kw)
        if self.kind == "eager":
            return fn
        if self.kind == "jax":
            import jax

            return jax.jit(fn, **kw)
        j = ng.jit(fn, fuse=self.fuse, **kw)
        self.made.append(j)
        return j


PROGRAMS: dict[str, tuple] = {}


def program(traces: list[int], jax: bool = True, replays: list[bool] | None = None):
    """Register a program ``fn(L, jit)``: ``traces`` is how often each function it jits (in
    the order it makes them) traces; ``replays`` whether each one's last call replayed a
    program (default: all do); ``jax`` whether it runs on JAX too."""
    def deco(fn):
        PROGRAMS[fn.__name__] = (fn, traces, jax, replays or [True] * len(traces))
        return fn
    return deco


def _xent(L, logits, y):
    return -L.mean(L.take_along_axis(L.log_softmax(logits, axis=-1), y[:, None], axis=1))


def _mlp(L, p, x):
    for i, (w, b) in enumerate(p):
        x = x @ w + b
        x = L.tanh(x) if i < len(p) - 1 else x
    return x


# --- 1. training loops over pytrees, the update inside the jitted function ---------------------

@program(traces=[1])
def sgd_dict_params(L, jit):
    params = {"w": L.arr(np.zeros((5, 3))), "b": L.arr(np.zeros(3))}

    def loss(p, x, y):
        logits = x @ p["w"] + p["b"]
        return _xent(L, logits, y), {"acc": L.mean(L.arr(1.0) * (logits[:, 0] > logits[:, 1]))}

    @jit
    def update(p, x, y):
        (value, aux), g = L.value_and_grad(loss, has_aux=True)(p, x, y)
        return L.tree_map(lambda p, g: p - 0.5 * g, p, g), value, aux

    out = []
    for x, y in BATCHES:
        params, value, aux = update(params, L.arr(x), L.arr(y))
        out.append((value, aux["acc"]))
    return params, out


@program(traces=[1])
def adam_list_of_tuples(L, jit):
    params = [(L.arr(W1), L.arr(np.zeros(8))), (L.arr(W2), L.arr(np.zeros(3)))]

    @jit
    def adam(p, m, v, t, x, y):
        value, g = L.value_and_grad(lambda p: _xent(L, _mlp(L, p, x), y))(p)
        m = L.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = L.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        mhat = L.tree_map(lambda m: m / (1 - 0.9 ** t), m)
        vhat = L.tree_map(lambda v: v / (1 - 0.999 ** t), v)
        p = L.tree_map(lambda p, m, v: p - 0.01 * m / (L.sqrt(v) + 1e-8), p, mhat, vhat)
        return p, m, v, value

    m, v, losses = L.tree_map(L.zeros_like, params), L.tree_map(L.zeros_like, params), []
    for t, (x, y) in enumerate(BATCHES, 1):
        params, m, v, value = adam(params, m, v, L.arr(float(t)), L.arr(x), L.arr(y))
        losses.append(value)
    return params, m, v, losses


@program(traces=[1])
def jit_of_value_and_grad_update_outside(L, jit):
    params = {"l1": {"w": L.arr(W1), "b": L.arr(np.zeros(8))},
              "l2": {"w": L.arr(W2), "b": L.arr(np.zeros(3))}}

    def loss(p, x, y):
        h = L.relu(x @ p["l1"]["w"] + p["l1"]["b"])
        return _xent(L, h @ p["l2"]["w"] + p["l2"]["b"], y)

    vg = jit(L.value_and_grad(loss))
    momentum, losses = L.tree_map(L.zeros_like, params), []
    for x, y in BATCHES:
        value, g = vg(params, L.arr(x), L.arr(y))
        momentum = L.tree_map(lambda m, g: 0.9 * m + g, momentum, g)
        params = L.tree_map(lambda p, m: p - 0.1 * m, params, momentum)
        losses.append(value)
    return params, losses


# --- 2. per-example gradients: jit(vmap(grad)) and DP-SGD --------------------------------------

@program(traces=[1, 1])
def per_example_grads_dpsgd(L, jit):
    params = {"w": L.arr(W1[:, :3]), "b": L.arr(np.zeros(3))}

    def loss(p, x, y):  # one example
        logits = x @ p["w"] + p["b"]
        return -L.log_softmax(logits)[y]

    per_ex = jit(L.vmap(L.grad(loss), in_axes=(None, 0, 0)))

    @jit
    def dp_step(p, x, y, noise):
        g = L.vmap(L.grad(loss), in_axes=(None, 0, 0))(p, x, y)
        sq = sum(L.sum(t.reshape(t.shape[0], -1) ** 2, axis=1) for t in g.values())
        scale = L.minimum(1.0, 1.0 / (L.sqrt(sq) + 1e-6))
        clipped = L.tree_map(lambda t: t * scale.reshape((-1,) + (1,) * (t.ndim - 1)), g)
        summed = L.tree_map(lambda t: L.sum(t, axis=0), clipped)
        summed["w"] = summed["w"] + 0.5 * noise
        return L.tree_map(lambda p, g: p - 0.1 * g / x.shape[0], p, summed)

    first = per_ex(params, L.arr(X), L.arr(YC))
    for (x, y), n in zip(BATCHES, NOISE):
        params = dp_step(params, L.arr(x), L.arr(y), L.arr(n))
    return first, per_ex(params, L.arr(X), L.arr(YC)), params


# --- 3. jit inside other transforms ------------------------------------------------------------

@program(traces=[1, 2])
def vmap_of_jit_and_grad_of_jit(L, jit):
    def f(w, x):
        return L.sum(L.tanh(x @ w) ** 2)

    jf = jit(f)  # under vmap: runs the function as written
    batched = [L.vmap(jf, in_axes=(None, 0))(L.arr(W1), L.arr(x[:4])) for x, _ in BATCHES[:3]]
    jf(L.arr(W1), L.arr(X))  # traced once, outside any transform
    jg = jit(f)
    grads = [L.grad(jg)(L.arr(W1), L.arr(x)) for x, _ in BATCHES[:6]]  # the program pair
    vals = [L.value_and_grad(jg, argnums=1)(L.arr(W1), L.arr(x)) for x, _ in BATCHES[6:9]]
    return batched, grads, vals


@program(traces=[1, 1])
def jit_of_grad_of_grad(L, jit):
    def f(x):
        return L.sin(x) * x ** 3 + L.exp(-x * x)

    d2 = jit(L.grad(L.grad(f)))
    d2_all = jit(L.vmap(L.grad(L.grad(f))))
    xs = np.linspace(-2.0, 2.0, 7)
    return [d2(L.arr(v)) for v in xs], d2_all(L.arr(xs)), d2_all(L.arr(xs * 0.5))


@program(traces=[1, 1, 1, 1])
def hvp_hessian_jacobians(L, jit):
    w = {"a": L.arr(W1[:, 0]), "b": L.arr(W2[:, 0])}

    def loss(p, x):
        h = L.tanh(x @ p["a"])
        return L.sum(h * h) + L.sum(L.tanh(p["b"]) ** 3)

    @jit
    def hvp(p, v, x):  # forward over reverse
        return L.jvp(lambda p: L.grad(loss)(p, x), (p,), (v,))[1]

    @jit
    def newton_direction(a, x):  # on one leaf, a damped diagonal Newton step
        f = lambda a: loss({"a": a, "b": w["b"]}, x)  # noqa: E731
        H, g = L.hessian(f)(a), L.grad(f)(a)
        return g / (L.sum(H * L.arr(np.eye(5)), axis=1) + 10.0), H

    jf = jit(L.jacfwd(lambda a, x: L.tanh(x @ a)))
    jr = jit(L.jacrev(lambda a, x: L.tanh(x @ a)))
    out = []
    for k, (x, _) in enumerate(BATCHES[:5]):
        v = {"a": L.arr(NOISE[k][:, 0]), "b": L.arr(W2[:, 1])}
        out.append((hvp(w, v, L.arr(x)), newton_direction(w["a"], L.arr(x)),
                    jf(w["a"], L.arr(x)), jr(w["a"], L.arr(x))))
    return out


@program(traces=[1])
def grad_of_jitted_loss_over_a_pytree(L, jit):
    params = {"l1": (L.arr(W1), L.arr(np.zeros(8))), "l2": (L.arr(W2), L.arr(np.zeros(3)))}
    jloss = jit(lambda p, x, y: _xent(L, _mlp(L, [p["l1"], p["l2"]], x), y))
    vg = L.value_and_grad(jloss)  # the jitted loss replays as a forward and backward pair
    losses = []
    for x, y in BATCHES:
        value, g = vg(params, L.arr(x), L.arr(y))
        params = L.tree_map(lambda p, g: p - 0.2 * g, params, g)
        losses.append(value)
    return params, losses


# --- 4. MAML: inner SGD steps inside the jitted outer loss (second order) ----------------------

@program(traces=[1])
def maml_sine(L, jit):
    params = [(L.arr(R0[0]), L.arr(np.zeros(16))), (L.arr(R0[1]), L.arr(np.zeros(1)))]

    def net(p, x):
        return _mlp(L, p, x)

    def inner(p, x, y):
        return L.mean((net(p, x) - y) ** 2)

    def adapt(p, x, y):
        for _ in range(2):
            g = L.grad(inner)(p, x, y)
            p = L.tree_map(lambda p, g: p - 0.1 * g, p, g)
        return p

    def maml_loss(p, xa, ya, xb, yb):
        return inner(adapt(p, xa, ya), xb, yb)

    def batch_loss(p, xa, ya, xb, yb):
        return L.mean(L.vmap(maml_loss, in_axes=(None, 0, 0, 0, 0))(p, xa, ya, xb, yb))

    @jit
    def outer(p, xa, ya, xb, yb):
        value, g = L.value_and_grad(batch_loss)(p, xa, ya, xb, yb)
        return L.tree_map(lambda p, g: p - 0.01 * g, p, g), value

    losses = []
    for k in range(0, 6, 2):
        amp, phase = np.stack([t[0] for t in TASKS[k:k + 2]]), \
            np.stack([t[1] for t in TASKS[k:k + 2]])
        xa, xb = np.linspace(-5, 5, 5)[None, :, None] + phase, np.linspace(-4, 4, 5)[
            None, :, None] * np.ones_like(phase)
        ya, yb = amp * np.sin(xa + phase), amp * np.sin(xb + phase)
        params, value = outer(params, *(L.arr(a) for a in (xa, ya, xb, yb)))
        losses.append(value)
    return params, losses


R0 = (np.random.default_rng(1).standard_normal((1, 16)) * 0.5,
      np.random.default_rng(2).standard_normal((16, 1)) * 0.3)


# --- 5. static arguments and retracing ---------------------------------------------------------

@program(traces=[4, 3])
def static_args_change_between_calls(L, jit):
    def forward(p, x, activation, depth):
        for _ in range(depth):
            x = x @ p
            x = L.tanh(x) if activation == "tanh" else L.relu(x)
        return L.sum(x)

    f = jit(forward, static_argnames=("activation", "depth"))
    p = L.arr(np.eye(5) * 0.9 + 0.01)
    out = [f(p, L.arr(x), activation=a, depth=d) for (x, _), (a, d) in zip(
        BATCHES, [("tanh", 1), ("tanh", 1), ("relu", 1), ("tanh", 2), ("relu", 1), ("tanh", 1),
                  ("relu", 3), ("relu", 3)])]

    def loss(p, x, y, train):
        logits = x @ p
        return _xent(L, logits, y) + (0.01 * L.sum(p * p) if train else 0.0)

    vg = jit(L.value_and_grad(loss), static_argnums=(3,))
    w = L.arr(W1[:, :3])
    for (x, y), train, n in zip(BATCHES, [True, True, False, True, False, True],
                                [16, 16, 16, 8, 16, 8]):
        value, g = vg(w, L.arr(x[:n]), L.arr(y[:n]), train)
        w = w - 0.1 * g
        out.append(value)
    return out, w


# --- 6. loops: a scanned RNN, fori_loop, cond --------------------------------------------------

@program(traces=[1])
def scan_rnn_training(L, jit):
    params = {"wx": L.arr(WX), "wh": L.arr(WH), "wo": L.arr(W2[:6, :1])}

    def loss(p, xs, target):
        def cell(h, x):
            h = L.tanh(x @ p["wx"] + h @ p["wh"])
            return h, h @ p["wo"]
        h, ys = L.lax.scan(cell, L.arr(np.zeros((4, 6))), xs)
        return L.mean((ys[-1] - target) ** 2) + 0.1 * L.mean(h * h)

    @jit
    def step(p, xs, target):
        value, g = L.value_and_grad(loss)(p, xs, target)
        return L.tree_map(lambda p, g: p - 0.05 * g, p, g), value

    losses = []
    for k in range(10):
        xs = XS * (1 + 0.1 * k)
        params, value = step(params, L.arr(xs), L.arr(np.sin(xs.sum(axis=(0, 2)))[:, None]))
        losses.append(value)
    return params, losses


@program(traces=[1, 1])
def fori_loop_and_cond(L, jit):
    @jit
    def power_iteration(a, v):
        def body(i, v):
            v = a @ v
            return v / L.sqrt(L.sum(v * v))
        v = L.lax.fori_loop(0, 15, body, v)
        return v, v @ a @ v

    @jit
    def clipped_step(p, x, y):
        g = L.grad(lambda p: _xent(L, x @ p, y))(p)
        norm = L.sqrt(L.sum(g * g))
        g = L.lax.cond(norm > 0.2, lambda g: g * (0.2 / norm), lambda g: g, g)
        return p - 0.5 * g, norm

    a = X[:5].T @ X[:5] + np.eye(5)
    out = [power_iteration(L.arr(a * s), L.arr(np.ones(5))) for s in (1.0, 2.0, 0.5)]
    p = L.arr(np.zeros((5, 3)))
    for x, y in BATCHES:
        p, norm = clipped_step(p, L.arr(x), L.arr(y))
        out.append(norm)
    return out, p


@program(traces=[1, 1, 1])
def while_loop_switch_and_vjp(L, jit):
    @jit
    def newton_sqrt(a):  # a data-dependent trip count, replayed with each call's values
        def cond(s):
            x, it = s
            return (L.maximum(L.sum(x * x - a), -L.sum(x * x - a)) > 1e-9) & (it < 40)
        return L.lax.while_loop(cond, lambda s: (0.5 * (s[0] + a / s[0]), s[1] + 1),
                                (a, L.arr(np.array(0))))

    @jit
    def branch(i, x):
        return L.lax.switch(i, [lambda x: x * 2.0, L.sin, lambda x: x - 1.0], x)

    @jit
    def pullback(w, x, ct):
        out, back = L.vjp(lambda w, x: L.tanh(x @ w), w, x)
        return out, back(ct)

    out = [newton_sqrt(L.arr(np.array([s, 2.0 * s]))) for s in (2.0, 100.0, 1.0, 3.0)]
    out += [branch(L.arr(np.array(i)), L.arr(X[0])) for i in (0, 1, 2, 1, 7, -1)]
    out += [pullback(L.arr(W1), L.arr(x), L.arr(np.ones((16, 8)) * k))
            for k, (x, _) in enumerate(BATCHES[:4])]
    return out


@program(traces=[1, 1, 1])
def scan_bodies_take_inner_grads(L, jit):
    """Loop bodies that differentiate a tensor they close over: a meta-gradient through
    the inner gradients, per-ensemble-member gradients (vmap over the loop), gradient
    accumulation over microbatches."""
    w, xb = L.arr(W1[:, :3]), L.arr(XS[:4].transpose(1, 0, 2) @ np.ones((3, 5)))
    y = L.arr(np.arange(4) % 3)

    def loss(w, x):
        return _xent(L, L.tanh(x @ w), y)

    @jit
    def meta(w, xb):  # d/dw of the summed squared inner gradients
        def total(w):
            return L.lax.scan(lambda acc, x: (acc + L.sum(L.grad(loss)(w, x) ** 2), None),
                              L.arr(np.array(0.0)), xb)[0]
        return L.value_and_grad(total)(w)

    @jit
    def members(ws, xb):
        def one(w):
            return L.lax.scan(lambda acc, x: (acc + L.grad(loss)(w, x), None),
                              L.zeros_like(w), xb)[0]
        return L.vmap(one)(ws)

    @jit
    def accumulate(w, xb):
        def body(i, acc):
            return acc + L.grad(loss)(w, xb[i]) / 4.0
        return L.lax.fori_loop(0, 4, body, L.zeros_like(w))

    out = []
    for k in range(4):
        wk = w * (1.0 + 0.2 * k)
        out.append((meta(wk, xb), members(L.stack([wk, -wk]), xb), accumulate(wk, xb)))
    return out


# --- 7. modules as functions, randomness (nodegrad only: no JAX twin) --------------------------

def _model(L):
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return model.double() if L.arr(np.zeros(1)).dtype == ng.float64 else model


@program(traces=[1, 1], jax=False)
def functional_call_and_ensembles(L, jit):
    model = _model(L)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    @jit
    def step(p, m, x, y):
        value, g = L.value_and_grad(loss)(p, x, y)
        m = L.tree_map(lambda m, g: 0.9 * m + g, m, g)
        return L.tree_map(lambda p, m: p - 0.1 * m, p, m), m, value

    models = [_model(L) for _ in range(3)]
    for k, mod in enumerate(models):
        with ng.no_grad():
            for q in mod.parameters():
                q.mul_(1.0 + 0.1 * k)
    stacked, _ = ng.func.stack_module_state(models)
    ensemble = jit(L.vmap(lambda p, x: functional_call(model, p, (x,)), in_axes=(0, None)))
    m, out = L.tree_map(L.zeros_like, params), []
    for x, y in BATCHES:
        params, m, value = step(params, m, L.arr(x), L.arr(y))
        out.append((value, ensemble(stacked, L.arr(x))))
    return params, out


@program(traces=[1, 1], jax=False)
def random_draws_inside_jit(L, jit):
    params = {"w": L.arr(W1), "v": L.arr(W2)}

    def loss(p, x, y):  # dropout's mask: a fresh draw on every call, as eager draws it
        h = F.dropout(L.tanh(x @ p["w"]), 0.25, training=True)
        return _xent(L, h @ p["v"], y)

    @jit
    def noisy_step(p, x, y):  # SGLD: gradient step plus Gaussian noise
        g = L.grad(loss)(p, x, y)
        return L.tree_map(lambda p, g: p - 0.05 * g + 0.01 * ng.randn(*p.shape, dtype=p.dtype),
                          p, g)

    gen = ng.Generator().manual_seed(5)

    @jit
    def augment(x, gen):
        return x + 0.1 * ng.randn(x.shape, generator=gen, dtype=x.dtype)

    out = []
    for x, y in BATCHES:
        xa = augment(L.arr(x), gen)
        params = noisy_step(params, xa, L.arr(y))
        out.append(xa)
    return params, out


def _close(a, b, exact: bool, rtol: float, path: str = "out") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], exact, rtol, f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, exact, rtol, f"{path}[{i}]")
    else:
        a = a.numpy() if isinstance(a, ng.Tensor) else np.asarray(a)
        b = b.numpy() if isinstance(b, ng.Tensor) else np.asarray(b)
        assert a.shape == b.shape and (a.dtype == b.dtype or not exact), (path, a.shape, b.shape)
        if exact:
            assert a.tobytes() == b.tobytes(), f"{path}: {a} != {b}"
        else:
            # sums of terms of both signs (a Hessian's diagonal) round against their largest
            # entry: a kernel's float32 tanh one ulp off moves them by rtol of that entry
            scale = max(1.0, float(np.abs(a).max())) if a.size else 1.0
            np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale, err_msg=path)


def _replayed(j) -> bool:
    """Whether ``j``'s last call ran a captured program (or, differentiated, a program pair)."""
    last = j.last
    return last is not None and (last.program is not None or last.diff is not None)


def _run(name: str, dtype, jits: Jits):
    fn = PROGRAMS[name][0]
    ng.manual_seed(0)
    return fn(_ng(dtype), jits)


# numba compiles each fused program's kernels once per process (~0.5 s a kernel): the float64
# fused runs, and MAML's (the largest program), run under ``pytest -m slow``
HEAVY = {"maml_sine", "hvp_hessian_jacobians", "scan_bodies_take_inner_grads"}


def _cases():
    for name in PROGRAMS:
        for dt in ("float32", "float64"):
            for fuse in (False, None):
                slow = fuse is None and (dt == "float64" or name in HEAVY)
                kind = "fused" if fuse is None else "unfused"
                yield pytest.param(name, dt, fuse, id=f"{name}-{dt}-{kind}",
                                   marks=pytest.mark.slow if slow else ())


@pytest.fixture(autouse=True)
def _slow_only_when_asked(request):
    if request.node.get_closest_marker("slow") and "slow" not in (
            request.config.getoption("markexpr", "") or "").replace("not slow", ""):
        pytest.skip("a slow case: run with -m slow")


@pytest.mark.parametrize("name, dtype, fuse", _cases())
def test_jit_matches_eager(name, dtype, fuse):
    """The jitted program returns eager's values (bits without fusion) and really replays."""
    _, traces, _, replays = PROGRAMS[name]
    dtype = np.float32 if dtype == "float32" else np.float64
    ref = _run(name, dtype, Jits("eager"))
    jits = Jits("nodegrad", fuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = _run(name, dtype, jits)
    _close(ref, got, fuse is False, 1e-6 if dtype == np.float32 else 1e-12)
    assert [j.traces for j in jits.made] == traces
    assert [_replayed(j) for j in jits.made] == replays, [
        getattr(j.last, "reason", None) for j in jits.made]


@pytest.mark.parametrize("name", [n for n, p in PROGRAMS.items() if p[2]])
def test_matches_jax_float64(name):
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        ref = PROGRAMS[name][0](_jax(), Jits("jax"))
        ref = jax.tree_util.tree_map(np.asarray, ref)
    finally:
        jax.config.update("jax_enable_x64", before)
    got = _run(name, np.float64, Jits("nodegrad", False))
    _close(ref, got, False, 1e-10)


def test_python_number_arguments_retrace_and_warn():
    """A step count passed as a Python int is static (a JAX port would pass it traced): each
    value traces again, with eager's results, and jit warns once, naming the fix."""
    def bias_corrected(m, t):
        return m / (1 - 0.9 ** t)

    j = ng.jit(bias_corrected, fuse=False)
    m = ng.tensor(np.arange(3.0))
    with pytest.warns(RuntimeWarning, match="pass it as a tensor"):
        for t in range(1, 11):
            assert j(m, t).numpy().tobytes() == bias_corrected(m, t).numpy().tobytes()
    assert j.traces == 10
    jt = ng.jit(bias_corrected, fuse=False)
    for t in range(1, 11):  # as a tensor: one trace, every value replayed
        tt = ng.tensor(float(t))
        assert jt(m, tt).numpy().tobytes() == bias_corrected(m, tt).numpy().tobytes()
    assert jt.traces == 1 and _replayed(jt)


def test_shapes_cycle_through_a_small_cache():
    """More signatures than ``max_cache``: the oldest is evicted and traced again, with the
    same values every time."""
    f = ng.jit(ng.value_and_grad(lambda w, x: ng.sum(ng.tanh(x @ w) ** 2)), fuse=False,
               max_cache=2)
    w = ng.tensor(W1)
    for n in (4, 8, 16, 4, 8, 4):
        x = ng.tensor(X[:n])
        got, ref = f(w, x), ng.value_and_grad(lambda w, x: ng.sum(ng.tanh(x @ w) ** 2))(w, x)
        _close(ref, got, True, 0.0)
    assert f.traces == 5 and len(f.cache) == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("n", [7, 100, 3000])
def test_fused_sum_keeps_each_terms_arithmetic(n, dtype):
    """A kernel that only sums may reorder the sum's adds, never a term's own arithmetic:
    the Newton residuals ``sum(x * x - a)`` of ``x = sqrt(a)`` must not be added up as
    ``(r - a) + x * x``, whose rounding is that of ``a``, not of the residuals."""
    rng = np.random.default_rng(n)
    a = (1.0 + 99.0 * rng.random(n)).astype(dtype)
    x = np.sqrt(a)
    terms = (x * x - a).astype(np.float64)
    f = ng.jit(lambda x, a: ng.sum(x * x - a), fuse=True)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for _ in range(3):  # the trace, then replays of the kernel
        got = f(ng.tensor(x), ng.tensor(a)).item()
        assert abs(got - terms.sum()) <= rtol * np.abs(terms).sum(), (got, terms.sum())
    assert f.program.counts().get("fused", 0) == 1


def test_loop_body_reads_the_tensor_it_differentiates_not_a_copy():
    """A loop body that takes ``grad`` of a tensor it closes over captures that tensor (not
    grad's leaf on its memory): the loop's result does not claim to require grad (jit would
    run it eagerly), an outer gradient reaches the tensor, and a batched one is batched."""
    w, xs = ng.tensor(W1[:, :3]), ng.tensor(XS[:4].transpose(1, 0, 2) @ np.ones((3, 5)))

    def loss(w, x):
        return ng.sum(ng.tanh(x @ w) ** 2)

    def summed(w):
        return ng.lax.scan(lambda acc, x: (acc + ng.grad(loss)(w, x), None),
                           ng.zeros_like(w), xs)[0]

    assert not summed(w).requires_grad
    meta = ng.grad(lambda w: ng.sum(summed(w) ** 2))(w)
    h, eps = np.zeros_like(W1[:, :3]), 1e-6
    h[1, 2] = eps
    fd = (ng.sum(summed(ng.tensor(W1[:, :3] + h)) ** 2).item()
          - ng.sum(summed(ng.tensor(W1[:, :3] - h)) ** 2).item()) / (2 * eps)
    assert abs(meta.numpy()[1, 2] - fd) <= 1e-6 * max(1.0, abs(fd)), (meta.numpy()[1, 2], fd)
    batched = ng.vmap(summed)(ng.stack([w, 2 * w]))
    assert np.isfinite(batched.numpy()).all()
    np.testing.assert_allclose(batched.numpy()[1], summed(2 * w).numpy(), rtol=1e-12)


def _inner_transforms(L, scan) -> dict:
    def loss(w, x):
        return L.sum(L.tanh(x @ w) ** 2)

    def via_jvp(w, xb, v):
        return scan(lambda acc, x: (acc + L.jvp(lambda w: loss(w, x), (w,), (v,))[1], None),
                    L.arr(np.array(0.0)), xb)[0]

    def via_vjp(w, xb):
        return scan(lambda acc, x: (acc + L.vjp(lambda w: loss(w, x), w)[1](
            L.arr(np.array(1.0)))[0], None), L.zeros_like(w), xb)[0]

    def via_jacrev(w, xb):
        return scan(lambda acc, x: (acc + L.sum(L.jacrev(lambda w: L.tanh(x @ w))(w)), None),
                    L.arr(np.array(0.0)), xb)[0]

    return {"grad_of_jvp": lambda w, xb, v: L.grad(via_jvp)(w, xb, v),
            "grad_of_vjp": lambda w, xb, v: L.grad(lambda w: L.sum(via_vjp(w, xb) ** 2))(w),
            "grad_of_jacrev": lambda w, xb, v: L.grad(via_jacrev)(w, xb),
            "vmap_of_vjp": lambda w, xb, v: L.vmap(via_vjp, in_axes=(0, None))(
                L.stack([w, 2.0 * w]), xb)}


@pytest.mark.parametrize("kind", ["grad_of_jvp", "grad_of_vjp", "grad_of_jacrev", "vmap_of_vjp"])
def test_transforms_inside_loop_bodies_match_jax(kind):
    """``jvp``/``vjp``/``jacrev`` of a closed-over tensor inside a loop body, differentiated or
    batched from outside: JAX's values, eagerly and jitted (replayed)."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        w, xb, v = W1[:, :3], XS[:4].transpose(1, 0, 2) @ np.ones((3, 5)), NOISE[0]
        ref = np.asarray(_inner_transforms(_jax(), jax.lax.scan)[kind](w, xb, v))
    finally:
        jax.config.update("jax_enable_x64", before)
    f = _inner_transforms(_ng(np.float64), ng.lax.scan)[kind]
    args = (ng.tensor(w), ng.tensor(xb), ng.tensor(v))
    np.testing.assert_allclose(f(*args).numpy(), ref, rtol=1e-10, atol=1e-10)
    jf = ng.jit(f, fuse=False)
    for _ in range(2):
        assert jf(*args).numpy().tobytes() == f(*args).numpy().tobytes()
    assert jf.traces == 1 and _replayed(jf)


def test_numpy_batches_are_traced_as_inputs():
    """JAX users feed NumPy batches straight into the jitted update: Python indexing of a raw
    array argument (``y[:, None]``) is traced, so each replay reads that call's batch."""
    def update(w, x, y):
        def loss(w):
            return -L.mean(L.take_along_axis(L.log_softmax(x @ w, axis=-1), y[:, None], axis=1))
        value, g = L.value_and_grad(loss)(w)
        return w - 0.5 * g, value

    L = _ng(np.float64)
    j = ng.jit(update, fuse=False)
    w_eager = w_jit = ng.tensor(W1[:, :3])
    for x, y in BATCHES[:6]:
        w_eager, v_eager = update(w_eager, x, y)
        w_jit, v_jit = j(w_jit, x, y)
        _close((w_eager, v_eager), (w_jit, v_jit), True, 0.0)
    assert j.traces == 1 and _replayed(j)


def test_grad_through_a_jitted_adaptation_keeps_second_order_terms():
    """MAML with the inner SGD steps jitted on their own and differentiated from outside: the
    jitted adaptation replays as a forward and backward pair whose backward carries the
    inner gradients' own derivatives (eager's meta-gradient, not first-order MAML's)."""
    def inner(p, x, y):
        return ng.mean((ng.tanh(x @ p) - y) ** 2)

    def adapt(p, x, y):
        for _ in range(2):
            p = p - 0.5 * ng.grad(inner)(p, x, y)
        return p

    jadapt = ng.jit(adapt, fuse=False)
    rng = np.random.default_rng(9)
    p = ng.tensor(rng.standard_normal((3, 1)))
    for _ in range(3):
        xa, ya, xb, yb = (ng.tensor(rng.standard_normal(s)) for s in [(5, 3), (5, 1)] * 2)
        eager = ng.grad(lambda p: inner(adapt(p, xa, ya), xb, yb))(p)
        jitted = ng.grad(lambda p: inner(jadapt(p, xa, ya), xb, yb))(p)
        first_order = ng.grad(lambda q: inner(adapt(p, xa, ya).detach() + q - p, xb, yb))(p)
        np.testing.assert_allclose(jitted.numpy(), eager.numpy(), rtol=1e-12, atol=1e-14)
        assert not np.allclose(eager.numpy(), first_order.numpy())
    assert jadapt.traces == 1 and _replayed(jadapt)


def test_numpy_scalar_schedules_warn_like_python_numbers():
    """A cosine schedule computed with NumPy passes ``numpy.float64`` learning rates: static,
    so each value traces again (eager's results), and jit warns as for Python floats."""
    def sgd(w, g, lr):
        return w - lr * g

    j = ng.jit(sgd, fuse=False)
    w, g = ng.tensor(W1), ng.tensor(W1 * 0.5)
    with pytest.warns(RuntimeWarning, match="pass it as a tensor"):
        for t in range(10):
            lr = 0.05 * (1 + np.cos(np.pi * t / 10))
            assert j(w, g, lr).numpy().tobytes() == sgd(w, g, lr).numpy().tobytes()
    assert j.traces == 10
