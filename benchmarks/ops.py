"""Single ops against PyTorch: ``python -m benchmarks.ops [names...]``.

Times each op's forward, and forward plus backward (``op(x).sum().backward()``), on one float32
array of a transformer MLP's activations (12 x 64 x 512) in nodegrad and in PyTorch, both in
this process on one thread each (numba loaded first, as a training run loads it), and prints the
ratios, worst first. A screen for ops whose eager form is far from PyTorch's (an op done by a
scalar library loop, a mispredicted branch per element), not a measure of whole steps: those
are the workloads' (``python -m benchmarks``), timed in separate processes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPE = (12, 64, 512)

# name: (module path in both libraries, input domain, extra positional arguments)
OPS = {
    "exp": ("exp", "real", ()), "log": ("log", "positive", ()), "sqrt": ("sqrt", "positive", ()),
    "tanh": ("tanh", "real", ()), "sigmoid": ("sigmoid", "real", ()), "erf": ("erf", "real", ()),
    "erfc": ("erfc", "real", ()), "log1p": ("log1p", "positive", ()),
    "relu": ("nn.functional.relu", "real", ()), "gelu": ("nn.functional.gelu", "real", ()),
    "silu": ("nn.functional.silu", "real", ()), "mish": ("nn.functional.mish", "real", ()),
    "leaky_relu": ("nn.functional.leaky_relu", "real", ()),
    "elu": ("nn.functional.elu", "real", ()), "selu": ("nn.functional.selu", "real", ()),
    "softplus": ("nn.functional.softplus", "real", ()),
    "hardswish": ("nn.functional.hardswish", "real", ()),
    "hardtanh": ("nn.functional.hardtanh", "real", ()),
    "logsigmoid": ("nn.functional.logsigmoid", "real", ()),
    "softmax": ("nn.functional.softmax", "real", (-1,)),
    "log_softmax": ("nn.functional.log_softmax", "real", (-1,)),
    "layer_norm": ("nn.functional.layer_norm", "real", ((SHAPE[-1],),)),
}


def _get(lib, path: str):
    for part in path.split("."):
        lib = getattr(lib, part)
    return lib


def _best(f, reps: int = 3, n: int = 10) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def measure(names: list[str]) -> list[tuple]:
    """(name, forward µs nodegrad, PyTorch, forward+backward µs nodegrad, PyTorch) per op."""
    import numba  # noqa: F401 - loaded, as eager training loads it (the one-pass loops)
    import threadpoolctl
    import torch

    import nodegrad as ng

    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)
    rng = np.random.default_rng(0)
    real = rng.standard_normal(SHAPE).astype(np.float32)
    data = {"real": real, "positive": np.abs(real) + np.float32(0.1)}
    rows = []
    for name in names:
        path, domain, extra = OPS[name]
        x = data[domain]
        ours, theirs = _get(ng, path), _get(torch, path)
        a = ng.tensor(x.copy(), requires_grad=True)
        b = torch.tensor(x.copy(), requires_grad=True)
        rows.append((name, _best(lambda: ours(a, *extra)), _best(lambda: theirs(b, *extra)),
                     _best(lambda: ours(a, *extra).sum().backward()),
                     _best(lambda: theirs(b, *extra).sum().backward())))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"ops to time (default all: {', '.join(OPS)})")
    args = parser.parse_args(argv)
    names = args.names or list(OPS)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        parser.error(f"unknown ops {unknown}; known: {', '.join(OPS)}")
    rows = measure(names)
    print(f"# one float32 array {SHAPE}, one thread each, µs; ratios nodegrad / PyTorch")
    print(f"{'op':14s} {'fwd ng':>9s} {'fwd PT':>9s} {'ratio':>6s}   {'f+b ng':>9s} "
          f"{'f+b PT':>9s} {'ratio':>6s}")
    for name, f_ng, f_pt, b_ng, b_pt in sorted(rows, key=lambda r: -r[1] / r[2]):
        print(f"{name:14s} {f_ng:9.0f} {f_pt:9.0f} {f_ng / f_pt:6.1f}   {b_ng:9.0f} {b_pt:9.0f} "
              f"{b_ng / b_pt:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
