"""W8: per-example gradients of an MLP 40-100-100-10 (tanh, cross-entropy), batch 256.

nodegrad: ``vmap(grad(loss), in_axes=(None, 0, 0))`` — one batched forward and one backward for
all 256 examples. PyTorch: the same with ``torch.func.vmap(torch.func.grad(loss))``. The floor
column is nodegrad's Python loop (256 calls of ``grad(loss)`` on one example each), the
baseline that vmap replaces. Each step returns the sum of the squared per-example gradient
norms, so the three are checked against each other.
"""

from __future__ import annotations

import numpy as np

from ._harness import Workload, main

SIZES = (40, 100, 100, 10)
BATCH = 256


def make_data(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    d = {"x": rng.standard_normal((BATCH, SIZES[0]), dtype=np.float32),
         "y": rng.integers(0, SIZES[-1], BATCH)}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        d[f"w{i}"] = rng.standard_normal((b, a), dtype=np.float32) * np.float32((1 / a) ** 0.5)
        d[f"b{i}"] = rng.uniform(-0.1, 0.1, b).astype(np.float32)
    return d


def _nodegrad_setup(d: dict):
    import nodegrad as ng

    n = len(SIZES) - 1
    params = {k: ng.tensor(d[k]) for k in d if k[0] in "wb"}
    classes = ng.arange(SIZES[-1])

    def loss(p, x, y):
        h = x
        for i in range(n):
            h = ng.linear(h, p[f"w{i}"], p[f"b{i}"])
            if i < n - 1:
                h = ng.tanh(h)
        return -ng.where(classes == y, ng.log_softmax(h, axis=-1), 0.0).sum()

    return ng, params, loss, ng.tensor(d["x"]), ng.tensor(d["y"])


def _norms(grads: dict, lib) -> float:
    return float(sum((g * g).sum() for g in grads.values()))


def nodegrad_vmap(d: dict):
    ng, params, loss, x, y = _nodegrad_setup(d)
    per_example = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))

    def step():
        return _norms(per_example(params, x, y), ng)

    return step


def nodegrad_loop(d: dict):
    ng, params, loss, x, y = _nodegrad_setup(d)
    g = ng.grad(loss)
    rows = [(x[i], y[i]) for i in range(BATCH)]

    def step():
        return sum(_norms(g(params, xi, yi), ng) for xi, yi in rows)

    return step


def torch_vmap(d: dict):
    import torch
    from torch.func import grad, vmap

    n = len(SIZES) - 1
    params = {k: torch.from_numpy(d[k]) for k in d if k[0] in "wb"}
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])

    def loss(p, x, y):
        h = x
        for i in range(n):
            h = torch.nn.functional.linear(h, p[f"w{i}"], p[f"b{i}"])
            if i < n - 1:
                h = torch.tanh(h)
        return -torch.where(torch.arange(SIZES[-1]) == y, torch.log_softmax(h, -1), 0.0).sum()

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))

    def step():
        return _norms(per_example(params, x, y), torch)

    return step


WORKLOADS = [
    Workload("W8", "per-example grads, MLP 40-100-100-10, B=256", make_data, nodegrad_vmap,
             torch_vmap, nodegrad_loop, floor_name="nodegrad loop"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
