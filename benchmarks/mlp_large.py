"""W2: one training step of a ReLU MLP 784-1024-1024-10 on a batch of 256 random inputs.

Adam with lr 1e-3 in both frameworks, as the shared target defines it. The floor is the step's
eight matrix products alone
(three forward, five backward; no input gradient) in NumPy, into preallocated outputs, each laid
out as the fastest way known on this BLAS takes it: the weights as (out, in), the activations
and their gradients feature-major (``W hᵀ`` rather than ``h Wᵀ``, 5-6 % faster over the step
than batch-major products against (in, out) weights, the floor of earlier rounds): the
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
    ws = [np.ascontiguousarray(d[f"w{i}"].T) for i in range(n)]  # (out, in), as nn.Linear's
    x = d["x"]
    batch = x.shape[0]
    zts = [np.empty((w.shape[0], batch), np.float32) for w in ws]  # activations, transposed
    dws = [np.empty_like(w) for w in ws]
    gts = [np.empty((w.shape[1], batch), np.float32) for w in ws]
    g_out = np.random.default_rng(1).standard_normal((batch, ws[-1].shape[0]),
                                                     dtype=np.float32) / batch

    def step():
        ht = x.T
        for w, zt in zip(ws, zts):
            ht = np.matmul(w, ht, out=zt)
        g = g_out
        for i in reversed(range(n)):
            np.matmul(g.T, zts[i - 1].T if i else x, out=dws[i])
            if i:
                g = np.matmul(ws[i].T, g.T, out=gts[i]).T
        return None

    return step


WORKLOADS = [
    Workload("W2", "MLP 784-1024-1024-10, Adam, batch 256",
             partial(make_data, SIZES, BATCH), partial(nodegrad_step, lr=LR, optimizer="Adam"),
             partial(torch_step, lr=LR, optimizer="Adam"), gemm_floor, floor_name="GEMM floor"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
