"""The notes' initialisation figures on MNIST-1D, and gradient flow over a short training run.

1. A deep tanh and a deep ReLU MLP (10 hidden layers of 500 units each) under
   N(0, 0.01²), Xavier and He initialisation: histograms of every layer's activations on 1,000
   MNIST-1D inputs (init_activations_{tanh,relu}.png), the std per layer as a
   table.
   Under N(0, 0.01²) the activations collapse towards zero layer after layer; Xavier keeps a
   tanh net's spread, He a ReLU net's.
2. A deep ReLU MLP (8 × 100, He init) trained for 400 steps with SGD (lr 0.05) and with Adam
   (lr 1e-2 and 1e-3), recorded every 10 steps by ``GradientFlowMonitor``: gradient norms, dead
   ReLUs and update/weight ratios of the Adam lr 1e-2 run as PNGs
   (training_flow_*.png), the dead shares of all three runs as a table.

The figures go to ``--out`` (default runs/examples/init_activations; ``--out docs/figures``
regenerates the docs' figures).

    python examples/init_activations.py              # one to three minutes on a 2-core CPU
    python examples/init_activations.py --quick      # 4 x 100 nets, 100 steps: seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nodegrad as ng
from nodegrad.diagnostics import plots as P
from nodegrad.diagnostics.callback import GradientFlowMonitor
from nodegrad.diagnostics.deep_mlp import DeepMLP, init_comparison
from nodegrad.diagnostics.stats import layer_stats, warnings
from nodegrad.nn import functional as F

SCHEMES = ("small_normal", "xavier", "he")


class StopAfter(ng.train.callbacks.Callback):
    """End training after ``steps`` optimiser steps, even mid-epoch."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_batch_end(self, tr, logs):
        tr.stop_training = tr.step >= self.steps


def std_table(reports: dict) -> str:
    """Std of each nonlinearity's output, one row per scheme."""
    names = [r.name for r in next(iter(reports.values())) if r.applied == "module"]
    head = f"{'init':<14}" + "".join(f"{n:>10}" for n in names)
    rows = [head]
    for s, rep in reports.items():
        rows.append(f"{s:<14}" + "".join(f"{rep[n].activation.std:>10.3g}" for n in names))
    return "\n".join(rows)


def train_run(data, opt_name: str, lr: float, depth: int, width: int, steps: int, every: int,
              seed: int = 0):
    ng.manual_seed(seed)
    model = DeepMLP(40, depth, width, 10, "relu", init="he")
    opt = (ng.optim.SGD if opt_name == "sgd" else ng.optim.Adam)(model.parameters(), lr=lr)
    loader = ng.data.DataLoader(data.train, batch_size=100, shuffle=True, seed=seed)
    monitor = GradientFlowMonitor(every=every)
    epochs = -(-steps // len(loader))
    hist = ng.train.fit(model, F.cross_entropy, opt, loader, epochs=epochs,
                        callbacks=[monitor, StopAfter(steps)], progress=False)
    return model, monitor.record, hist


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/examples/init_activations",
                    help="folder for the figures (default %(default)s; "
                         "--out docs/figures regenerates the docs' figures)")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="small nets and a short run")
    a = ap.parse_args(argv)
    if a.quick:
        a.depth, a.width, a.samples, a.steps = 4, 100, 256, 100
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ng.data.datasets.mnist1d()
    x, y = ng.tensor(data.x_train[:a.samples]), ng.tensor(data.y_train[:a.samples])
    results: dict = {}

    t0 = time.perf_counter()
    for act in ("tanh", "relu"):
        reps = init_comparison(x, y, activation=act, schemes=SCHEMES, depth=a.depth,
                               width=a.width)
        path = P.plot_activation_grid(
            reps, out / f"init_activations_{act}.png",
            title=f"{a.depth} x {a.width} {act} MLP on {a.samples} MNIST-1D inputs: activations "
                  "per layer")
        print(f"\n{act}: std of each layer's activations ({path})")
        print(std_table(reps))
        results[act] = reps
    print(f"({time.perf_counter() - t0:.1f} s)")

    print("\ntanh, N(0, 0.01²) at initialisation:")
    rep = results["tanh"]["small_normal"]
    print(rep.table())
    for w in warnings(rep):
        print("  warning:", w)

    t0 = time.perf_counter()
    depth, width = (8, 100) if not a.quick else (4, 50)
    every = max(1, a.steps // 40)
    runs = {}
    for name, lr in (("sgd", 0.05), ("adam", 1e-2), ("adam", 1e-3)):
        model, record, hist = train_run(data, name, lr, depth, width, a.steps, every)
        runs[f"{name} lr {lr:g}"] = (model, record, hist)
    paths = P.plot_training(runs["adam lr 0.01"][1], out, prefix="training_flow_")
    print(f"\n{depth} x {width} ReLU MLP, He init, {a.steps} steps of batch 100 "
          f"({time.perf_counter() - t0:.1f} s); pictures of the Adam lr 0.01 run: "
          + ", ".join(p.name for p in paths))
    rec = runs["sgd lr 0.05"][1]
    relus = [k for k, v in rec["layers"].items() if v.get("nonlinearity") == "relu"]
    print(f"{'dead ReLUs %':<22}" + "".join(f"{k:>8}" for k in relus))
    for name, (_, record, hist) in runs.items():
        for at in (0, -1):
            label = f"{name} step {record['steps'][at]}"
            print(f"{label:<22}" + "".join(
                f"{100 * record['layers'][k]['dead_frac'][at]:>8.0f}" for k in relus))
        print(f"{name:<22}train loss {hist.last['loss']:.3f}, accuracy "
              f"{100 * hist.last['accuracy']:.1f} % (last epoch)")
    model = runs["adam lr 0.01"][0]
    after = layer_stats(model, x, y)
    for w in warnings(after):
        print("  adam lr 0.01, after training, warning:", w)
    results["runs"] = runs
    return results


if __name__ == "__main__":
    main()
