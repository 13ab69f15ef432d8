"""W5: per-op overhead — 100 elementwise ops on a 10x10 float32 tensor, then backward.

The chain repeats ``sin(tanh(h * w + b) * 0.5)`` 20 times (tensor-tensor, tensor-scalar and
unary ops; x, w and b require grad), then sums and runs backward. Time per step / 100 = µs per op,
forward and backward together. The floor is the same 100 forward calls on bare NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from ._harness import Workload, main

N_OPS = 100
CYCLES = N_OPS // 5  # five ops per cycle


def make_data(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(-1, 1, (10, 10)).astype(np.float32),
            "w": rng.uniform(0.5, 1.5, (10, 10)).astype(np.float32),
            "b": rng.uniform(-0.5, 0.5, (10, 10)).astype(np.float32)}


def nodegrad_chain(d: dict):
    import nodegrad as ng

    x, w, b = (ng.tensor(d[k], requires_grad=True) for k in "xwb")

    def step():
        h = x
        for _ in range(CYCLES):
            h = ng.sin(ng.tanh(h * w + b) * 0.5)
        loss = h.sum()
        loss.backward()
        x.grad = w.grad = b.grad = None
        return loss

    return step


def torch_chain(d: dict):
    import torch

    x, w, b = (torch.tensor(d[k], requires_grad=True) for k in "xwb")

    def step():
        h = x
        for _ in range(CYCLES):
            h = torch.sin(torch.tanh(h * w + b) * 0.5)
        loss = h.sum()
        loss.backward()
        x.grad = w.grad = b.grad = None
        return loss

    return step


def numpy_chain(d: dict):
    x, w, b = d["x"], d["w"], d["b"]

    def step():
        h = x
        for _ in range(CYCLES):
            h = np.sin(np.tanh(h * w + b) * 0.5)
        return h

    return step


WORKLOADS = [
    Workload("W5", "per-op overhead: 100 ops on 10x10, fwd+bwd", make_data, nodegrad_chain,
             torch_chain, numpy_chain, floor_name="NumPy fwd calls", unit="µs/op",
             scale=1e6 / N_OPS),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
