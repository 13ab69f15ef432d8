"""JAX's ``jit`` of the J workloads' steps: the reference column of ``benchmarks.jit``.

Each builder takes the same NumPy data (so the same initial weights) as the nodegrad and
PyTorch steps and returns a step that runs one jitted update and returns the loss; parameters
and optimiser state live in the closure between calls. Adam is written out with PyTorch's
formula (no optax dependency). Only imported in a worker when ``jax`` is installed.
"""

from __future__ import annotations

from . import conv, gru_step, mlp, mlp_large, overhead, per_example, transformer


def _jax():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_platforms", "cpu")
    return jax, jnp


def _xent(jnp, jax, logits, y):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()


def _sgd(lr: float):
    def init(params):
        return ()

    def update(jax, params, grads, state):
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), state

    return init, update


def _adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """PyTorch's Adam: p -= lr · m̂ / (√v / √(1 - b2ᵗ) + eps), m̂ = m / (1 - b1ᵗ)."""

    def init(params):
        import jax
        import jax.numpy as jnp

        z = jax.tree_util.tree_map(jnp.zeros_like, params)
        return (z, z, jnp.zeros((), jnp.float32))

    def update(jax, params, grads, state):
        import jax.numpy as jnp

        m, v, t = state
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** t, jnp.sqrt(1 - b2 ** t)
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v) / c2 + eps), params, m, v)
        return params, (m, v, t)

    return init, update


def _adamw(lr: float, decay: dict, weight_decay: float, max_norm: float,
           b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """PyTorch's ``clip_grad_norm_`` (the gradients times min(1, max_norm / (‖g‖ + 1e-6)),
    ‖g‖ the norm of all of them) then AdamW: p *= 1 - lr · wd where ``decay[key]``, then Adam's
    update."""
    adam_init, adam_update = _adam(lr, b1, b2, eps)

    def update(jax, params, grads, state):
        import jax.numpy as jnp

        leaves = jax.tree_util.tree_leaves(grads)
        norm = jnp.sqrt(sum((g * g).sum() for g in leaves))
        coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
        grads = jax.tree_util.tree_map(lambda g: g * coef, grads)
        params = {k: p * (1 - lr * weight_decay) if decay[k] else p for k, p in params.items()}
        return adam_update(jax, params, grads, state)

    return adam_init, update


def _train(loss_fn, params: dict, opt, x, y):
    """A jitted step ``(params, state, x, y) -> (params, state, loss)`` in a closure."""
    jax, jnp = _jax()
    init, update = opt
    params = {k: jnp.asarray(v) for k, v in params.items()}
    state = [params, init(params)]
    x, y = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = update(jax, params, grads, opt_state)
        return params, opt_state, loss

    def run():
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss.block_until_ready()

    return run


def _mlp_loss(n: int):
    jax, jnp = _jax()

    def loss(p, x, y):
        h = x
        for i in range(n):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            if i < n - 1:
                h = jax.nn.relu(h)
        return _xent(jnp, jax, h, y)

    return loss


def mlp_sgd(d: dict):
    """J1: W1's MLP, SGD lr 0.1."""
    n = mlp._layers(d)
    ps = {k: d[k] for k in d if k[0] in "wb"}
    return _train(_mlp_loss(n), ps, _sgd(mlp.LR), d["x"], d["y"])


def mlp_large_adam(d: dict):
    """J2: W2's MLP 784-1024-1024-10, Adam lr 1e-3."""
    n = mlp._layers(d)
    ps = {k: d[k] for k in d if k[0] in "wb"}
    return _train(_mlp_loss(n), ps, _adam(mlp_large.LR), d["x"], d["y"])


def cnn1d_adam(d: dict):
    """J3: W3's MNIST-1D CNN (three Conv1d + ReLU, Linear), Adam lr 1e-2."""
    jax, jnp = _jax()
    spec = conv.CNN1D
    convs = spec["convs"]

    def loss(p, x, y):
        h = x
        for i, (_, _, _, s, pad) in enumerate(convs):
            h = jax.lax.conv_general_dilated(h, p[f"c{i}.weight"], (s,), [(pad, pad)],
                                             dimension_numbers=("NCH", "OIH", "NCH"))
            h = jax.nn.relu(h + p[f"c{i}.bias"][None, :, None])
        h = h.reshape(h.shape[0], -1) @ p["fc.weight"].T + p["fc.bias"]
        return _xent(jnp, jax, h, y)

    ps = {k: d[k] for k in d if k not in ("x", "y")}
    return _train(loss, ps, _adam(spec["lr"]), d["x"], d["y"])


def bigru_adam(d: dict):
    """J4: W4's bidirectional GRU(1 -> 6) over 40 steps (a ``lax.scan`` per direction),
    Linear 480 -> 10, Adam lr 1e-2."""
    jax, jnp = _jax()
    H = gru_step.HIDDEN

    def direction(x, w_ih, w_hh, b_ih, b_hh):  # x (T, B, I) -> (T, B, H)
        gi = x @ w_ih.T + b_ih

        def cell(h, g):
            gh = h @ w_hh.T + b_hh
            r = jax.nn.sigmoid(g[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(g[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
            return h, h

        _, hs = jax.lax.scan(cell, jnp.zeros((x.shape[1], H), x.dtype), gi)
        return hs

    def loss(p, x, y):
        xt = jnp.swapaxes(x, 0, 1)
        f = direction(xt, *(p[f"{k}_l0"] for k in ("weight_ih", "weight_hh", "bias_ih",
                                                    "bias_hh")))
        b = direction(xt[::-1], *(p[f"{k}_l0_reverse"] for k in ("weight_ih", "weight_hh",
                                                                  "bias_ih", "bias_hh")))[::-1]
        out = jnp.swapaxes(jnp.concatenate([f, b], -1), 0, 1).reshape(x.shape[0], -1)
        return _xent(jnp, jax, out @ p["fc.weight"].T + p["fc.bias"], y)

    ps = {k: d[k] for k in d if k not in ("x", "y")}
    return _train(loss, ps, _adam(gru_step.LR), d["x"], d["y"])


def chain_value_and_grad(d: dict):
    """J5: value_and_grad of the 100-op chain."""
    jax, jnp = _jax()

    def chain(x, w, b):
        h = x
        for _ in range(overhead.CYCLES):
            h = jnp.sin(jnp.tanh(h * w + b) * 0.5)
        return h.sum()

    f = jax.jit(jax.value_and_grad(chain, argnums=(0, 1, 2)))
    x, w, b = (jnp.asarray(d[k]) for k in "xwb")
    return lambda: f(x, w, b)[0].block_until_ready()


def per_example_grads(d: dict):
    """J8: per-example gradients (vmap of grad) of W8's tanh MLP, and their squared norms."""
    jax, jnp = _jax()
    n = len(per_example.SIZES) - 1
    classes = jnp.arange(per_example.SIZES[-1])

    def loss(p, x, y):
        h = x
        for i in range(n):
            h = h @ p[f"w{i}"].T + p[f"b{i}"]
            if i < n - 1:
                h = jnp.tanh(h)
        return -jnp.where(classes == y, jax.nn.log_softmax(h, axis=-1), 0.0).sum()

    @jax.jit
    def norms(p, x, y):
        g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x, y)
        return sum((v * v).sum() for v in jax.tree_util.tree_leaves(g))

    p = {k: jnp.asarray(v) for k, v in d.items() if k[0] in "wb"}
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"])
    return lambda: norms(p, x, y).block_until_ready()


def gpt_adamw(d: dict):
    """J9: W9's GPT (4 blocks of 128, 4 heads, context 64, exact GELU, causal attention, the
    embedding tied to the output), cross-entropy, gradients clipped to norm 1, AdamW lr 1e-3
    with weight decay 0.1 on the matrices."""
    jax, jnp = _jax()
    H, C, V = transformer.HEADS, transformer.WIDTH, transformer.VOCAB

    def layer_norm(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-5) * w + b

    def linear(p, name, x):
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def loss(p, x, y):
        B, L = x.shape
        h = p["wte.weight"][x] + p["wpe.weight"][:L]
        causal = jnp.tril(jnp.ones((L, L), bool))
        for i in range(transformer.LAYERS):
            b = f"h.{i}."
            qkv = linear(p, b + "attn", layer_norm(h, p[b + "ln1.weight"], p[b + "ln1.bias"]))
            q, k, v = (z.reshape(B, L, H, C // H).transpose(0, 2, 1, 3)
                       for z in jnp.split(qkv, 3, axis=-1))
            att = (q @ k.transpose(0, 1, 3, 2)) / jnp.sqrt(jnp.float32(C // H))
            att = jax.nn.softmax(jnp.where(causal, att, -jnp.inf), axis=-1)
            h = h + linear(p, b + "proj", (att @ v).transpose(0, 2, 1, 3).reshape(B, L, C))
            f = linear(p, b + "fc", layer_norm(h, p[b + "ln2.weight"], p[b + "ln2.bias"]))
            h = h + linear(p, b + "out", jax.nn.gelu(f, approximate=False))
        logits = layer_norm(h, p["lnf.weight"], p["lnf.bias"]) @ p["wte.weight"].T
        return _xent(jnp, jax, logits.reshape(-1, V), y.reshape(-1))

    keys = [k for k, _ in transformer._shapes()]
    ps = {k: d[k] for k in keys}
    opt = _adamw(1e-3, {k: d[k].ndim >= 2 for k in keys}, 0.1, 1.0)
    return _train(loss, ps, opt, d["x"], d["y"])
