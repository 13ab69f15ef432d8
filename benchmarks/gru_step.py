"""W4: one training step of the MNIST-1D paper's GRU: bidirectional GRU(1 -> 6) over 40 steps,
Linear 480 -> 10, batch 100, softmax cross-entropy.

Adam with lr 1e-2 in both frameworks, as the shared target defines it. Both use their library
layers (``nn.GRU``, ``nn.Linear``, ``F.cross_entropy``, ``optim.Adam``) from the same NumPy
weights. The floor is the step's matrix products alone
(per time step both directions at once; forward, then backward through time) in NumPy.
"""

from __future__ import annotations

import numpy as np

from ._harness import Workload, main

STEPS, HIDDEN, CLASSES, BATCH = 40, 6, 10, 100
LR = 1e-2
_GRU_KEYS = [f"{k}_l0{s}" for s in ("", "_reverse")
             for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def make_data(seed=0) -> dict:
    """MNIST-1D-shaped inputs (batch, 40, 1), labels, and PyTorch-default GRU/Linear weights."""
    rng = np.random.default_rng(seed)
    g, h = 3 * HIDDEN, HIDDEN

    def u(shape, fan):
        return rng.uniform(-fan ** -0.5, fan ** -0.5, shape).astype(np.float32)

    d = {"x": rng.standard_normal((BATCH, STEPS, 1), dtype=np.float32),
         "y": rng.integers(0, CLASSES, BATCH)}
    for k in _GRU_KEYS:
        shape = (g, 1) if k.startswith("weight_ih") else (g, h) if k.startswith("weight") else (g,)
        d[k] = u(shape, h)
    d["fc.weight"] = u((CLASSES, 2 * h * STEPS), 2 * h * STEPS)
    d["fc.bias"] = u((CLASSES,), 2 * h * STEPS)
    return d


def nodegrad_step(d: dict, lr: float = LR):
    import nodegrad as ng
    from nodegrad import nn
    from nodegrad.nn import functional as F

    gru = nn.GRU(1, HIDDEN, batch_first=True, bidirectional=True)
    fc = nn.Linear(2 * HIDDEN * STEPS, CLASSES)
    gru.load_state_dict({k: d[k] for k in _GRU_KEYS})
    fc.load_state_dict({"weight": d["fc.weight"], "bias": d["fc.bias"]})
    opt = ng.optim.Adam(list(gru.parameters()) + list(fc.parameters()), lr=lr)
    x, y = ng.tensor(d["x"]), ng.tensor(d["y"])

    def step():
        out, _ = gru(x)
        loss = F.cross_entropy(fc(out.reshape(BATCH, -1)), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def torch_step(d: dict, lr: float = LR):
    import torch
    import torch.nn.functional as F

    gru = torch.nn.GRU(1, HIDDEN, batch_first=True, bidirectional=True)
    fc = torch.nn.Linear(2 * HIDDEN * STEPS, CLASSES)
    gru.load_state_dict({k: torch.from_numpy(d[k]) for k in _GRU_KEYS})
    fc.load_state_dict({"weight": torch.from_numpy(d["fc.weight"]),
                        "bias": torch.from_numpy(d["fc.bias"])})
    opt = torch.optim.Adam(list(gru.parameters()) + list(fc.parameters()), lr=lr)
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])

    def step():
        out, _ = gru(x)
        loss = F.cross_entropy(fc(out.reshape(BATCH, -1)), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def gemm_floor(d: dict):
    """The step's matrix products alone: input projection, 40 recurrent products and the
    classifier forward; classifier, 40 × (state and weight gradient) and input-weight gradient
    backward. Both directions share each product (a stack of 2), as in nodegrad."""
    w_ih = np.stack([d["weight_ih_l0"].T, d["weight_ih_l0_reverse"].T])     # (2, 1, 3H)
    w_hh = np.stack([d["weight_hh_l0"].T, d["weight_hh_l0_reverse"].T])     # (2, H, 3H)
    w_fc = d["fc.weight"]
    xd = np.stack([d["x"].transpose(1, 0, 2), d["x"][:, ::-1].transpose(1, 0, 2)], 1)
    hs = np.zeros((STEPS + 1, 2, BATCH, HIDDEN), np.float32)
    gh = np.empty((2, BATCH, 3 * HIDDEN), np.float32)
    g3 = np.random.default_rng(1).standard_normal(gh.shape, dtype=np.float32)
    dh = np.empty((2, BATCH, HIDDEN), np.float32)
    dw = np.empty_like(w_hh)
    g_out = np.random.default_rng(2).standard_normal((BATCH, CLASSES), dtype=np.float32)

    def step():
        gi = xd @ w_ih                                                      # (T, 2, B, 3H)
        for t in range(STEPS):
            np.matmul(hs[t], w_hh, out=gh)
        feats = hs[1:].transpose(2, 0, 1, 3).reshape(BATCH, -1)
        feats @ w_fc.T
        g_out.T @ feats
        g_out @ w_fc
        for t in reversed(range(STEPS)):
            np.matmul(g3, w_hh.transpose(0, 2, 1), out=dh)
            np.matmul(hs[t].transpose(0, 2, 1), g3, out=dw)
        xd.reshape(-1, 2, BATCH, 1).transpose(1, 3, 0, 2).reshape(2, 1, -1) @ \
            gi.transpose(1, 0, 2, 3).reshape(2, -1, 3 * HIDDEN)
        return None

    return step


WORKLOADS = [
    Workload("W4", "BiGRU 1->6 T=40, Lin 480->10, Adam", make_data,
             nodegrad_step, torch_step, gemm_floor, floor_name="GEMM floor"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
