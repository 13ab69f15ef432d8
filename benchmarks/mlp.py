"""W1: one SGD training step of a ReLU MLP 40-100-100-10 on a batch of 100 (MNIST-1D's shape).

Softmax cross-entropy, SGD with lr 0.1. Both frameworks as their users write it
(``nn.Sequential``, ``F.cross_entropy``, ``optim.SGD``) from the same weights; the floor is the
same step written by hand in NumPy. The builders here also serve W2.
"""

from __future__ import annotations

import numpy as np

from ._harness import Workload, main

SIZES = (40, 100, 100, 10)
BATCH = 100
LR = 0.1


def make_data(sizes=SIZES, batch=BATCH, seed=0) -> dict:
    """Random inputs and labels, He-initialised weights ``w{i}`` (in, out), small biases."""
    rng = np.random.default_rng(seed)
    d = {"x": rng.standard_normal((batch, sizes[0]), dtype=np.float32),
         "y": rng.integers(0, sizes[-1], batch)}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        d[f"w{i}"] = rng.standard_normal((a, b), dtype=np.float32) * np.float32((2 / a) ** 0.5)
        d[f"b{i}"] = rng.uniform(-0.1, 0.1, b).astype(np.float32)
    return d


def _layers(d: dict) -> int:
    return sum(1 for k in d if k.startswith("w"))


def nodegrad_model(d: dict):
    """The MLP of ``d``'s weights as an ``nn.Sequential`` of Linear and ReLU layers."""
    import nodegrad as ng
    from nodegrad import nn

    n = _layers(d)
    layers = []
    for i in range(n):
        w = d[f"w{i}"]
        lin = nn.Linear(*w.shape)
        lin.load_state_dict({"weight": ng.tensor(np.ascontiguousarray(w.T)),
                             "bias": ng.tensor(d[f"b{i}"])})
        layers += [lin, nn.ReLU()] if i < n - 1 else [lin]
    return nn.Sequential(*layers)


def torch_model(d: dict):
    """The same MLP in PyTorch."""
    import torch

    n = _layers(d)
    layers = []
    for i in range(n):
        w = d[f"w{i}"]
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(d[f"b{i}"]))
        layers += [lin, torch.nn.ReLU()] if i < n - 1 else [lin]
    return torch.nn.Sequential(*layers)


def nodegrad_step(d: dict, lr: float = LR, optimizer: str = "SGD"):
    """The step as a nodegrad user writes it: nn.Sequential, F.cross_entropy, an optimiser."""
    import nodegrad as ng
    from nodegrad.nn import functional as F

    model = nodegrad_model(d)
    opt = getattr(ng.optim, optimizer)(model.parameters(), lr=lr)
    x, y = ng.tensor(d["x"]), ng.tensor(d["y"])

    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def torch_training_step(model, opt, x, y):
    """A zero-argument PyTorch cross-entropy training step, as its users write it."""
    import torch.nn.functional as F

    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def torch_step(d: dict, lr: float = LR, optimizer: str = "SGD"):
    import torch

    model = torch_model(d)
    opt = getattr(torch.optim, optimizer)(model.parameters(), lr=lr)
    return torch_training_step(model, opt, torch.from_numpy(d["x"]), torch.from_numpy(d["y"]))


def numpy_sgd(d: dict, lr: float = LR):
    """The whole step by hand: forward, softmax cross-entropy gradient, backward, update."""
    n = _layers(d)
    ws = [d[f"w{i}"] for i in range(n)]
    bs = [d[f"b{i}"] for i in range(n)]
    x, y = d["x"], d["y"]
    rows = np.arange(len(y))
    inv_n = 1.0 / len(y)

    def step():
        acts = [x]
        h = x
        for i in range(n):
            h = h @ ws[i]
            h += bs[i]
            if i < n - 1:
                np.maximum(h, 0, out=h)
            acts.append(h)
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        loss = np.log(s[:, 0]).mean() - z[rows, y].mean()
        g = e / s
        g[rows, y] -= 1
        g *= inv_n
        for i in reversed(range(n)):
            a = acts[i]
            dw, db = a.T @ g, g.sum(axis=0)
            if i > 0:
                g = g @ ws[i].T
                g *= a > 0
            ws[i] -= lr * dw
            bs[i] -= lr * db
        return loss

    return step


WORKLOADS = [
    Workload("W1", "MLP 40-100-100-10, SGD, batch 100", make_data, nodegrad_step, torch_step,
             numpy_sgd, floor_name="NumPy step"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
