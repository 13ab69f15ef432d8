"""O1-O5: one optimiser step on ~1M float32 parameters in 50 tensors, against PyTorch (foreach).

The model's shapes are 25 weight matrices 200x200 and 25 biases of 200 (1,005,000 parameters);
the gradients are fixed, so only the update is timed. PyTorch runs its multi-tensor
(``foreach=True``) implementation. The floor is the same update written by hand in NumPy on
one preallocated flat array per state (no gathering of gradients): what nodegrad's flat path
can at best reach with NumPy calls. O1-O4 take nodegrad's default (the fused kernel where numba is
installed), O5 its NumPy update (``fused=False``). Run: ``python -m benchmarks.optim_step
[--quick]``.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ._harness import Workload, main

SHAPES = [(200, 200), (200,)] * 25
LR = 1e-3


def make_data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d = {}
    for i, s in enumerate(SHAPES):
        d[f"p{i}"] = rng.standard_normal(s, dtype=np.float32) * np.float32(0.05)
        d[f"g{i}"] = rng.standard_normal(s, dtype=np.float32) * np.float32(0.01)
    return d


def _split(d: dict) -> tuple[list, list]:
    n = len(SHAPES)
    return [d[f"p{i}"] for i in range(n)], [d[f"g{i}"] for i in range(n)]


def nodegrad_step(d: dict, algo: str = "adam", flat: bool = True, in_place: bool = False,
                  fused: bool | None = None):
    import nodegrad as ng

    ps_np, gs_np = _split(d)
    ps = [ng.tensor(p, requires_grad=True) for p in ps_np]
    if algo == "adam":
        opt = ng.optim.Adam(ps, lr=LR, flat=flat, fused=fused)
    else:
        opt = ng.optim.SGD(ps, lr=LR, momentum=0.9, flat=flat, fused=fused)
    for p, g in zip(ps, gs_np):
        p.grad = ng.tensor(g)
    if in_place:  # gradients accumulated into zero_grad(set_to_none=False)'s flat buffer
        opt.zero_grad(set_to_none=False)
        for p, g in zip(ps, gs_np):
            p.grad.data[...] = g

    def step():
        opt.step()
        return ps[0].detach()

    return step


def torch_step(d: dict, algo: str = "adam"):
    import torch

    ps_np, gs_np = _split(d)
    ps = [torch.tensor(p, requires_grad=True) for p in ps_np]
    for p, g in zip(ps, gs_np):
        p.grad = torch.from_numpy(g)
    if algo == "adam":
        opt = torch.optim.Adam(ps, lr=LR, foreach=True)
    else:
        opt = torch.optim.SGD(ps, lr=LR, momentum=0.9, foreach=True)

    def step():
        opt.step()
        return ps[0]

    return step


def _adam_flat(p, g, m, v, tmp, t: int, b1: float = 0.9, b2: float = 0.999) -> None:
    np.subtract(g, m, out=tmp)
    tmp *= 1 - b1
    m += tmp
    v *= b2
    np.multiply(g, g, out=tmp)
    tmp *= 1 - b2
    v += tmp
    s = (1 - b2 ** t) ** 0.5
    np.sqrt(v, out=tmp)
    tmp += 1e-8 * s
    np.divide(m, tmp, out=tmp)
    tmp *= LR * s / (1 - b1 ** t)
    p -= tmp


def _sgd_flat(p, g, m, tmp, t: int, mu: float = 0.9) -> None:
    if t == 1:
        np.copyto(m, g)
    else:
        m *= mu
        m += g
    np.multiply(m, LR, out=tmp)
    p -= tmp


def numpy_floor(d: dict, algo: str = "adam"):
    """The update by hand on flat arrays, gradients already flat: the same passes, no Python."""
    ps_np, gs_np = _split(d)
    p = np.concatenate([a.ravel() for a in ps_np])
    g = np.concatenate([a.ravel() for a in gs_np])
    m, v, tmp = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
    n0 = ps_np[0].size
    t = [0]

    def step():
        t[0] += 1
        if algo == "adam":
            _adam_flat(p, g, m, v, tmp, t[0])
        else:
            _sgd_flat(p, g, m, tmp, t[0])
        return p[:n0]

    return step


WORKLOADS = [
    Workload("O1", "Adam step, 1M params in 50 tensors (flat)", make_data,
             nodegrad_step, torch_step, numpy_floor, floor_name="NumPy flat Adam"),
    Workload("O2", "SGD momentum step, 1M params / 50 tensors", make_data,
             partial(nodegrad_step, algo="sgd"), partial(torch_step, algo="sgd"),
             partial(numpy_floor, algo="sgd"), floor_name="NumPy flat SGD"),
    Workload("O3", "Adam step, grads in place (zero_grad False)", make_data,
             partial(nodegrad_step, in_place=True), torch_step, numpy_floor,
             floor_name="NumPy flat Adam"),
    Workload("O4", "Adam step, per-tensor path (flat=False)", make_data,
             partial(nodegrad_step, flat=False), torch_step, numpy_floor,
             floor_name="NumPy flat Adam"),
    Workload("O5", "Adam step, NumPy update (fused=False)", make_data,
             partial(nodegrad_step, fused=False), torch_step, numpy_floor,
             floor_name="NumPy flat Adam"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
