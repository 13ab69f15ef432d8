"""W2: one training step of a ReLU MLP 784-1024-1024-10 on a batch of 256 random inputs.

Adam with lr 1e-3 in both frameworks, as the shared target defines it. The floor is the step's
eight matrix products alone
(three forward, five backward; no input gradient) in NumPy, into preallocated outputs: the
'GEMM floor' that no framework running on this BLAS can beat.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ._harness import Workload, main
from .mlp import make_data, nodegrad_step, torch_step

SIZES = (784, 1024, 1024, 10)
BATCH = 256
LR = 1e-3


def gemm_floor(d: dict):
    """The matrix products of one forward and backward pass, nothing else."""
    n = sum(1 for k in d if k.startswith("w"))
    ws = [d[f"w{i}"] for i in range(n)]
    x = d["x"]
    batch = x.shape[0]
    zs = [np.empty((batch, w.shape[1]), np.float32) for w in ws]
    dws = [np.empty_like(w) for w in ws]
    gs = [np.empty((batch, w.shape[0]), np.float32) for w in ws]
    g_out = np.random.default_rng(1).standard_normal(zs[-1].shape, dtype=np.float32) / batch

    def step():
        h = x
        for w, z in zip(ws, zs):
            h = np.matmul(h, w, out=z)
        g = g_out
        for i in reversed(range(n)):
            np.matmul((zs[i - 1] if i else x).T, g, out=dws[i])
            if i:
                g = np.matmul(g, ws[i].T, out=gs[i])
        return None

    return step


WORKLOADS = [
    Workload("W2", "MLP 784-1024-1024-10, Adam, batch 256",
             partial(make_data, SIZES, BATCH), partial(nodegrad_step, lr=LR, optimizer="Adam"),
             partial(torch_step, lr=LR, optimizer="Adam"), gemm_floor, floor_name="GEMM floor"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
