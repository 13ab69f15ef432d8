"""The four MNIST-1D paper models trained with nodegrad under the paper's protocol.

Adam, lr 1e-2, batch 100, 6,000 steps (150 epochs of the 4,000 training signals), PyTorch's
default init; test accuracy on the 1,000 test signals after the last step, for 3 seeds.
Prints a Markdown table beside the paper's figures (Greydanus & Kobak: 32 / 68 / 94 / 91 %).

    python benchmarks/mnist1d_models.py [--seeds 3] [--steps 6000] [--models cnn gru]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import nodegrad as ng
from nodegrad import models, train
from nodegrad.nn import functional as F

PAPER = {"logreg": 32, "mlp": 68, "cnn": 94, "gru": 91}


def run(name: str, seed: int, steps: int) -> tuple[float, float]:
    """Test accuracy and wall time of one model and seed."""
    d = ng.data.datasets.mnist1d()
    spec = models.REGISTRY[f"mnist1d_{name}"]
    model = models.create(spec.name, seed=seed)
    opt = ng.optim.Adam(model.parameters(), lr=spec.defaults["lr"],
                        weight_decay=spec.defaults["weight_decay"])
    bs = spec.defaults["batch_size"]
    loader = ng.data.DataLoader(d.train, batch_size=bs, shuffle=True, seed=seed)
    epochs = max(1, round(steps / len(loader)))
    t0 = time.perf_counter()
    train.fit(model, F.cross_entropy, opt, loader, epochs=epochs, progress=False)
    wall = time.perf_counter() - t0
    acc = train.evaluate(model, ng.data.DataLoader(d.test, batch_size=1000))["accuracy"]
    return acc, wall


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--models", nargs="+", default=list(PAPER), choices=list(PAPER))
    args = p.parse_args(argv)
    lines = ["| model | paper | nodegrad (mean ± std, "
             f"{args.seeds} seeds) | wall time per run (s) |", "|---|---|---|---|"]
    for name in args.models:
        accs, walls = zip(*(run(name, s, args.steps) for s in range(args.seeds)))
        a = 100 * np.asarray(accs)
        lines.append(f"| {name} | {PAPER[name]} % | {a.mean():.1f} ± {a.std():.1f} % | "
                     f"{np.mean(walls):.1f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
