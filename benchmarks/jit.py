"""J1-J5, J8, J9: the W1-W5, W8 and W9 steps under ``nodegrad.jit`` (captured once, then replayed).

Same data, weights and PyTorch step as W1-W5/W8/W9; the floor column is nodegrad eager, so its
ratio is jit / eager, and the JAX column (when ``jax`` is installed) is JAX's ``jit`` of the
same step from the same weights (``benchmarks/jax_steps.py``). J1-J4 and J9 jit the whole
training step (forward, backward, optimiser update, zero_grad; J9's gradient clipping too) with
``state=(model, opt)``; J4's GRU runs
its 40 steps as one ``lax.scan``; J5 jits ``value_and_grad`` of the 100-op chain and J8
``vmap(grad(loss))`` with the squared norms, as JAX users write them. The ``1st`` column is
the first call (trace and compile) of nodegrad and JAX.
"""

from __future__ import annotations

from functools import partial

from . import conv, gru_step, jax_steps, mlp, mlp_large, overhead, per_example, transformer
from ._harness import Workload, main


def training_step(model, opt, x, y, jit: bool = True):
    """A zero-argument cross-entropy training step of ``model`` on ``x``, ``y``, under
    ``ng.jit`` (the state captured: model and optimiser) or eager."""
    import nodegrad as ng
    from nodegrad.nn import functional as F

    def train_step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step = ng.jit(train_step, state=(model, opt)) if jit else train_step
    return lambda: step(x, y)


def mlp_jit(d: dict, lr: float = mlp.LR, optimizer: str = "SGD"):
    import nodegrad as ng

    model = mlp.nodegrad_model(d)
    opt = getattr(ng.optim, optimizer)(model.parameters(), lr=lr)
    return training_step(model, opt, ng.tensor(d["x"]), ng.tensor(d["y"]))


def gru_jit(d: dict):
    """W4's BiGRU step under jit: the GRU's time loop is one scan in the captured program."""
    import nodegrad as ng
    from nodegrad import nn
    from nodegrad.nn import functional as F

    gru = nn.GRU(1, gru_step.HIDDEN, batch_first=True, bidirectional=True)
    fc = nn.Linear(2 * gru_step.HIDDEN * gru_step.STEPS, gru_step.CLASSES)
    gru.load_state_dict({k: d[k] for k in gru_step._GRU_KEYS})
    fc.load_state_dict({"weight": d["fc.weight"], "bias": d["fc.bias"]})
    opt = ng.optim.Adam(list(gru.parameters()) + list(fc.parameters()), lr=gru_step.LR)

    @ng.jit(state=(gru, fc, opt))
    def step(x, y):
        out, _ = gru(x)
        loss = F.cross_entropy(fc(out.reshape(x.shape[0], -1)), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    x, y = ng.tensor(d["x"]), ng.tensor(d["y"])
    return lambda: step(x, y)


def per_example_jit(d: dict):
    """W8 under jit: ``jit(vmap(grad(loss)))`` and the squared norms, one captured program."""
    ng, params, loss, x, y = per_example._nodegrad_setup(d)
    pe = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))

    @ng.jit
    def norms(p, x, y):
        g = pe(p, x, y)
        total = None
        for v in g.values():
            s = (v * v).sum()
            total = s if total is None else total + s
        return total

    return lambda: norms(params, x, y)


def gpt_jit(d: dict):
    """W9's GPT step under jit, written as W9's: zero_grad, backward, clip, AdamW."""
    import nodegrad as ng

    model, opt, eager = transformer.model_and_step(ng, d)
    step = ng.jit(eager, state=(model, opt))
    x, y = ng.from_numpy(d["x"]), ng.from_numpy(d["y"])
    return lambda: step(x, y)


def conv_jit(d: dict, spec: dict):
    import nodegrad as ng
    from nodegrad import nn

    model = conv._build(ng, nn, spec, d, ng.tensor)
    opt = ng.optim.Adam(model.parameters(), lr=spec["lr"])
    return training_step(model, opt, ng.tensor(d["x"]), ng.tensor(d["y"]))


def conv_model_jit(d: dict):
    """W3's step with only the model jitted (``ng.jit(model)``, as ``torch.compile(model)``):
    its forward and backward replayed as two programs, the loss, ``backward`` and Adam eager."""
    import nodegrad as ng
    from nodegrad import nn

    model = conv._build(ng, nn, conv.CNN1D, d, ng.tensor)
    opt = ng.optim.Adam(model.parameters(), lr=conv.CNN1D["lr"])
    return training_step(ng.jit(model), opt, ng.tensor(d["x"]), ng.tensor(d["y"]), jit=False)


def _chain(x, w, b):
    import nodegrad as ng

    h = x
    for _ in range(overhead.CYCLES):
        h = ng.sin(ng.tanh(h * w + b) * 0.5)
    return h.sum()


def chain_value_and_grad(d: dict, jit: bool = True):
    import nodegrad as ng

    x, w, b = (ng.tensor(d[k]) for k in "xwb")
    f = ng.value_and_grad(_chain, argnums=(0, 1, 2))
    if jit:
        f = ng.jit(f)
    return lambda: f(x, w, b)[0]


# Thin wrappers: a worker process finds its workload through the builder's module (this one).
def mlp_torch(d: dict):
    return mlp.torch_step(d)


def mlp_eager(d: dict):
    return mlp.nodegrad_step(d)


def conv_jit_1d(d: dict):
    return conv_jit(d, conv.CNN1D)


def conv_torch(d: dict):
    return conv.torch_step(d, conv.CNN1D)


def conv_eager(d: dict):
    return conv.nodegrad_step(d, conv.CNN1D)


def chain_torch(d: dict):
    return overhead.torch_chain(d)


def chain_eager(d: dict):
    return chain_value_and_grad(d, jit=False)


def mlp_large_jit(d: dict):
    return mlp_jit(d, lr=mlp_large.LR, optimizer="Adam")


def mlp_large_torch(d: dict):
    return mlp.torch_step(d, lr=mlp_large.LR, optimizer="Adam")


def mlp_large_eager(d: dict):
    return mlp.nodegrad_step(d, lr=mlp_large.LR, optimizer="Adam")


def gru_torch(d: dict):
    return gru_step.torch_step(d)


def gru_eager(d: dict):
    return gru_step.nodegrad_step(d)


def per_example_torch(d: dict):
    return per_example.torch_vmap(d)


def per_example_eager(d: dict):
    return per_example.nodegrad_vmap(d)


def gpt_torch(d: dict):
    return transformer.torch_step(d)


def gpt_eager(d: dict):
    return transformer.nodegrad_step(d)


# the floor: nodegrad eager, in a worker warmed up as the W workloads' nodegrad workers are
_EAGER = {"floor_name": "nodegrad eager", "floor_framework": "nodegrad"}
WORKLOADS = [
    Workload("J1", "W1 under jit (MLP SGD step); floor = nodegrad eager", mlp.make_data,
             mlp_jit, mlp_torch, mlp_eager, **_EAGER, jax=jax_steps.mlp_sgd),
    Workload("J2", "W2 under jit (MLP 784-1024-1024-10, Adam)",
             partial(mlp.make_data, mlp_large.SIZES, mlp_large.BATCH), mlp_large_jit,
             mlp_large_torch, mlp_large_eager, **_EAGER,
             jax=jax_steps.mlp_large_adam),
    Workload("J3", "W3 under jit (MNIST-1D CNN, Adam); floor = nodegrad eager",
             partial(conv.make_data, conv.CNN1D), conv_jit_1d, conv_torch, conv_eager,
             **_EAGER, jax=jax_steps.cnn1d_adam),
    Workload("J3m", "W3 with jit(model) only (forward and backward programs)",
             partial(conv.make_data, conv.CNN1D), conv_model_jit, conv_torch, conv_eager,
             **_EAGER),
    Workload("J4", "W4 under jit (BiGRU T=40 as one scan, Adam)", gru_step.make_data, gru_jit,
             gru_torch, gru_eager, **_EAGER, jax=jax_steps.bigru_adam),
    Workload("J5", "W5 under jit (value_and_grad of 100 ops); floor = nodegrad eager",
             overhead.make_data, chain_value_and_grad, chain_torch, chain_eager,
             **_EAGER, unit="µs/op", scale=1e6 / overhead.N_OPS,
             jax=jax_steps.chain_value_and_grad),
    Workload("J8", "W8 under jit (per-example grads, vmap(grad))", per_example.make_data,
             per_example_jit, per_example_torch, per_example_eager, **_EAGER,
             jax=jax_steps.per_example_grads),
    Workload("J9", "W9 under jit (GPT 4 x 128, context 64, AdamW, clipped)",
             transformer.make_data, gpt_jit, gpt_torch, gpt_eager, **_EAGER,
             jax=jax_steps.gpt_adamw),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
