"""J1, J3, J5: the W1, W3 and W5 steps under ``nodegrad.jit`` (captured once, then replayed).

Same data, weights and PyTorch step as W1/W3/W5; the floor column is nodegrad eager, so its
ratio is jit / eager. J1 and J3 jit the whole training step (forward, backward, optimiser update,
zero_grad) with ``state=(model, opt)``; J5 jits ``value_and_grad`` of the 100-op chain, as JAX
users write it.
"""

from __future__ import annotations

from functools import partial

from . import conv, mlp, overhead
from ._harness import Workload, main


def _jit_train_step(model, opt, x, y):
    import nodegrad as ng
    from nodegrad.nn import functional as F

    def train_step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step = ng.jit(train_step, state=(model, opt))
    return lambda: step(x, y)


def mlp_jit(d: dict):
    import nodegrad as ng
    from nodegrad import nn

    n = mlp._layers(d)
    layers = []
    for i in range(n):
        w = d[f"w{i}"]
        lin = nn.Linear(*w.shape)
        lin.load_state_dict({"weight": ng.tensor(w.T.copy()), "bias": ng.tensor(d[f"b{i}"])})
        layers += [lin, nn.ReLU()] if i < n - 1 else [lin]
    model = nn.Sequential(*layers)
    opt = ng.optim.SGD(model.parameters(), lr=mlp.LR)
    return _jit_train_step(model, opt, ng.tensor(d["x"]), ng.tensor(d["y"]))


def conv_jit(d: dict, spec: dict):
    import nodegrad as ng
    from nodegrad import nn

    model = conv._build(ng, nn, spec, d, ng.tensor)
    opt = ng.optim.Adam(model.parameters(), lr=spec["lr"])
    return _jit_train_step(model, opt, ng.tensor(d["x"]), ng.tensor(d["y"]))


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


WORKLOADS = [
    Workload("J1", "W1 under jit (MLP SGD step); floor = nodegrad eager", mlp.make_data,
             mlp_jit, mlp_torch, mlp_eager, floor_name="nodegrad eager"),
    Workload("J3", "W3 under jit (MNIST-1D CNN, Adam); floor = nodegrad eager",
             partial(conv.make_data, conv.CNN1D), conv_jit_1d, conv_torch, conv_eager,
             floor_name="nodegrad eager"),
    Workload("J5", "W5 under jit (value_and_grad of 100 ops); floor = nodegrad eager",
             overhead.make_data, chain_value_and_grad, chain_torch, chain_eager,
             floor_name="nodegrad eager", unit="µs/op", scale=1e6 / overhead.N_OPS),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
