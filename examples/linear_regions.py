"""The notes' piecewise-linear regions: how depth and width carve a ReLU network's input space.

Lecture 1 §3.2: "the more layers (and neurons per layer) you have, the richer the set of
piecewise linear regions". With ``nodegrad.diagnostics.regions`` (distinct activation patterns on
a grid) this counts the linear regions of randomly initialised (He) ReLU MLPs with two inputs on
the square [-1, 1]²:

1. at a fixed width, against depth; at a fixed depth, against width (mean over seeds);
2. at an equal parameter count (about ``--params``), shallow-and-wide against deep-and-narrow,
   with the regions coloured (linear_regions.png);
3. the depth advantage in principle: L layers of 2 ReLUs composed into the "tent map" carve
   [0, 1] into 2^L pieces, while one layer of 2L ReLUs gives at most 2L + 1.

    python examples/linear_regions.py            # about half a minute on 2 cores
    python examples/linear_regions.py --quick    # seconds
    python examples/linear_regions.py --out docs/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics import regions


def mlp(depth: int, width: int, seed: int, n_in: int = 2) -> nn.Sequential:
    """A ReLU MLP n_in → width (× depth) → 1: He weights, biases U(±1/√fan_in) (PyTorch's).

    (He initialisation alone zeroes the biases, and a bias-free ReLU net is positively
    homogeneous: its regions would all be cones from the origin.)
    """
    ng.manual_seed(seed)
    layers, d = [], n_in
    for _ in range(depth):
        lin = nn.Linear(d, width, init="he")
        nn.init.uniform_(lin.bias, -d ** -0.5, d ** -0.5)
        layers += [lin, nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 1))


def n_params(depth: int, width: int, n_in: int = 2) -> int:
    return (n_in + 1) * width + (depth - 1) * (width + 1) * width + width + 1


def width_for(params: int, depth: int) -> int:
    """The width whose depth-layer MLP has the parameter count closest to ``params``."""
    return min(range(1, 2000), key=lambda w: abs(n_params(depth, w) - params))


def tent_net(depth: int) -> nn.Sequential:
    """L layers of h(x) = 2 relu(x) - 4 relu(x - ½): the tent map composed L times, 2^L pieces."""
    layers: list = []
    for i in range(depth):
        lin = nn.Linear(1 if i == 0 else 2, 2)
        with ng.no_grad():
            w = np.array([[1.0], [1.0]]) if i == 0 else np.array([[2.0, -4.0], [2.0, -4.0]])
            lin.weight.data[:] = w.astype(np.float32)
            lin.bias.data[:] = np.array([0.0, -0.5], dtype=np.float32)
        layers += [lin, nn.ReLU()]
    out = nn.Linear(2, 1)
    with ng.no_grad():
        out.weight.data[:] = np.array([[2.0, -4.0]], dtype=np.float32)
        out.bias.data[:] = 0.0
    return nn.Sequential(*layers, out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/examples/linear_regions",
                    help="folder for the figure (default %(default)s; "
                         "--out docs/figures regenerates the docs' figure)")
    ap.add_argument("--params", type=int, default=1000, help="parameter budget of part 2")
    ap.add_argument("--n", type=int, default=400, help="grid points per side")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="coarse grid, one seed")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.seeds, a.params = 80, 1, 300
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def count(depth, width):
        return float(np.mean([regions.count_regions_2d(mlp(depth, width, s), 1.0, a.n)
                              for s in range(a.seeds)]))

    depths, widths = [1, 2, 3, 4, 6, 8], [4, 8, 16, 32, 64]
    by_depth = {d: count(d, 16) for d in depths}
    by_width = {w: count(3, w) for w in widths}
    print(f"Linear regions on [-1, 1]² ({a.n}×{a.n} grid, mean of {a.seeds} He-initialised "
          "nets)")
    print("width 16:  " + ", ".join(f"depth {d}: {c:.0f}" for d, c in by_depth.items()))
    print("depth 3:   " + ", ".join(f"width {w}: {c:.0f}" for w, c in by_width.items()))

    equal = []
    for depth in (1, 2, 3, 4, 6):
        w = width_for(a.params, depth)
        maps = [regions.region_map(mlp(depth, w, s), 1.0, a.n) for s in range(a.seeds)]
        equal.append((depth, w, n_params(depth, w), maps))
    print(f"\nEqual parameter count (about {a.params}):")
    print("| depth | width | parameters | ReLUs | regions |")
    print("|---|---|---|---|---|")
    for depth, w, p, maps in equal:
        print(f"| {depth} | {w} | {p} | {depth * w} | "
              f"{np.mean([m.count for m in maps]):.0f} |")

    # the ends of [0, 1] map to exactly 0 (a unit on its kink): sample just inside them
    tent = {L: regions.count_regions_line(tent_net(L), [1e-4], [1 - 1e-4], n=20_000)
            for L in range(1, 9)}
    print("\nPieces on [0, 1]: L layers of 2 ReLUs (tent map) vs the most one layer of 2L "
          "ReLUs can make (2L + 1)")
    print("| L | deep (2 per layer) | shallow bound (2L in one layer) |")
    print("|---|---|---|")
    for L in tent:
        print(f"| {L} | {tent[L]} | {2 * L + 1} |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 6.4))
    gs = fig.add_gridspec(2, 5, height_ratios=[1.15, 1])
    for i, (depth, w, p, maps) in enumerate(equal):
        regions.plot_region_map(maps[0], fig.add_subplot(gs[0, i]),
                                f"depth {depth} × width {w}\n{p} params: {maps[0].count} regions")
    ax = fig.add_subplot(gs[1, 0:2])
    ax.plot(list(by_depth), list(by_depth.values()), "o-", label="width 16, growing depth")
    ax.plot([d for d, *_ in equal], [np.mean([m.count for m in e[3]]) for e in equal], "s--",
            label=f"≈{a.params} params, growing depth")
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("regions on [-1, 1]²")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("at initialisation, against depth", fontsize=9)
    ax = fig.add_subplot(gs[1, 2])
    ax.plot(list(by_width), list(by_width.values()), "o-", color="C2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width (3 hidden layers)")
    ax.set_title("at initialisation, against width", fontsize=9)
    ax = fig.add_subplot(gs[1, 3:5])
    ax.plot(list(tent), list(tent.values()), "o-", label="L layers × 2 ReLUs (tent map)")
    ax.plot(list(tent), [2 * L + 1 for L in tent], "s--", color="grey",
            label="1 layer × 2L ReLUs: at most 2L + 1")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("L")
    ax.set_ylabel("pieces on [0, 1]")
    ax.legend(fontsize=8)
    ax.set_title("what depth can do: 2^L pieces from 2L ReLUs", fontsize=9)
    fig.suptitle("Linear regions of ReLU MLPs on a 2-D input (each colour one activation pattern)")
    fig.tight_layout()
    path = out / "linear_regions.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nfigure: {path} ({time.perf_counter() - t0:.1f} s)")
    return {"by_depth": by_depth, "by_width": by_width, "tent": tent,
            "equal": [(d, w, p, [m.count for m in maps]) for d, w, p, maps in equal]}


if __name__ == "__main__":
    main()
