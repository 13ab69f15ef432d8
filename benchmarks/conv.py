"""W3: convolution training steps against PyTorch eager and the matmul floor.

W3 is the MNIST-1D paper's CNN: Conv1d 1->25 k5 s2 p1, then 25->25 k3 s2 p1 twice, ReLU after
each, Linear 125 -> 10; softmax cross-entropy, Adam 1e-2, batch 100 of length-40 signals.
W3b is a small 2-D CNN on 8x8 digits-shaped images: Conv2d 1->16 k3 p1, Conv2d 16->32 k3 s2 p1,
ReLU, Linear 512 -> 10; Adam 1e-3, batch 128. Both frameworks build the model from the same
NumPy weights with their own layers. The floor is the step's matrix products alone, at the
shapes of an im2col convolution (forward, weight gradients, and input gradients except for the
first layer), in NumPy.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from ._harness import Workload, main

# (in, out, kernel, stride, padding) per conv layer, then the classifier (in, out)
CNN1D = dict(convs=[(1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1)], fc=(125, 10),
             input=(100, 1, 40), lr=1e-2)
CNN2D = dict(convs=[(1, 16, 3, 1, 1), (16, 32, 3, 2, 1)], fc=(512, 10), input=(128, 1, 8, 8),
             lr=1e-3)


def make_data(spec: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    nd = len(spec["input"]) - 2
    d = {"x": rng.standard_normal(spec["input"], dtype=np.float32),
         "y": rng.integers(0, spec["fc"][1], spec["input"][0])}
    for i, (ci, co, k, _, _) in enumerate(spec["convs"]):
        bound = (ci * k ** nd) ** -0.5
        d[f"c{i}.weight"] = rng.uniform(-bound, bound, (co, ci) + (k,) * nd).astype(np.float32)
        d[f"c{i}.bias"] = rng.uniform(-bound, bound, co).astype(np.float32)
    fi, fo = spec["fc"]
    d["fc.weight"] = rng.uniform(-fi ** -0.5, fi ** -0.5, (fo, fi)).astype(np.float32)
    d["fc.bias"] = rng.uniform(-fi ** -0.5, fi ** -0.5, fo).astype(np.float32)
    return d


def _build(lib, nn, spec: dict, d: dict, tensor):
    nd = len(spec["input"]) - 2
    conv = nn.Conv1d if nd == 1 else nn.Conv2d
    layers = []
    for ci, co, k, s, p in spec["convs"]:
        layers += [conv(ci, co, k, stride=s, padding=p), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(*spec["fc"])]
    model = nn.Sequential(*layers)
    names = [f"c{i}" for i in range(len(spec["convs"]))]
    state = {}
    for i, n in enumerate(names):
        state[f"{2 * i}.weight"], state[f"{2 * i}.bias"] = (tensor(d[f"{n}.weight"]),
                                                            tensor(d[f"{n}.bias"]))
    last = 2 * len(names) + 1
    state[f"{last}.weight"], state[f"{last}.bias"] = tensor(d["fc.weight"]), tensor(d["fc.bias"])
    model.load_state_dict(state)
    return model


def nodegrad_step(d: dict, spec: dict):
    import nodegrad as ng
    from nodegrad import nn
    from nodegrad.nn import functional as F

    model = _build(ng, nn, spec, d, ng.tensor)
    opt = ng.optim.Adam(model.parameters(), lr=spec["lr"])
    x, y = ng.tensor(d["x"]), ng.tensor(d["y"])

    def step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def torch_step(d: dict, spec: dict):
    import torch

    from .mlp import torch_training_step

    model = _build(torch, torch.nn, spec, d, torch.from_numpy)
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    return torch_training_step(model, opt, torch.from_numpy(d["x"]), torch.from_numpy(d["y"]))


def matmul_floor(d: dict, spec: dict):
    """The im2col products of one step: (N·P, C·K) x (C·K, O) forward, its two gradients."""
    n = spec["input"][0]
    size = list(spec["input"][2:])
    shapes = []
    for i, (ci, co, k, s, p) in enumerate(spec["convs"]):
        size = [(L + 2 * p - k) // s + 1 for L in size]
        rows, inner = n * math.prod(size), ci * k ** len(size)
        shapes.append((rows, inner, co, i > 0))
    shapes.append((n, spec["fc"][0], spec["fc"][1], True))
    rng = np.random.default_rng(0)
    mats = [(rng.standard_normal((r, c), dtype=np.float32),
             rng.standard_normal((c, o), dtype=np.float32),
             rng.standard_normal((r, o), dtype=np.float32), grad_in) for r, c, o, grad_in in shapes]

    def step():
        for a, w, _, _ in mats:
            a @ w
        for a, w, g, grad_in in reversed(mats):
            a.T @ g
            if grad_in:
                g @ w.T
        return None

    return step


WORKLOADS = [
    Workload("W3", "MNIST-1D CNN (3 Conv1d + Linear), Adam, batch 100",
             partial(make_data, CNN1D), partial(nodegrad_step, spec=CNN1D),
             partial(torch_step, spec=CNN1D), partial(matmul_floor, spec=CNN1D),
             floor_name="matmul floor"),
    Workload("W3b", "2-D CNN (2 Conv2d + Linear) on 8x8, Adam, batch 128",
             partial(make_data, CNN2D), partial(nodegrad_step, spec=CNN2D),
             partial(torch_step, spec=CNN2D), partial(matmul_floor, spec=CNN2D),
             floor_name="matmul floor"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
