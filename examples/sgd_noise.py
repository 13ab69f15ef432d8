"""The notes' noisy gradients: full-batch gradient descent against minibatch SGD on MNIST-1D.

Lecture 1 §4.2 and lecture 3: a minibatch gradient is a cheap, noisy estimate of the full one, so
SGD makes many more updates for the same computation, and its noise is said to help
generalisation. The same MLP 40-100-100-10 (ReLU, the same initial weights) is trained with plain
SGD (lr 0.1, no momentum) for the same number of epochs at batch sizes 4000 (= the whole
training set: gradient descent), 500, 100 and 20. Measured:

* the training loss (on all 4,000 training signals) against epochs and against wall time;
* the gradient-noise scale B_noise = tr(Σ) / ‖G‖² (McCandlish et al., 2018) from per-example
  gradients ``ng.vmap(ng.grad(loss))`` at initialisation and after training: Σ is the covariance
  of the per-example gradients and G their mean; a batch of B has noise-to-signal
  E‖g_B − G‖² / ‖G‖² = B_noise / B;
* test accuracy and the train–test gap.

    python examples/sgd_noise.py           # under a minute on 2 cores
    python examples/sgd_noise.py --quick   # seconds
    python examples/sgd_noise.py --out docs/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F


def mlp(seed: int = 0) -> nn.Sequential:
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def noise_scale(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(B_noise, tr Σ, ‖G‖²) from the per-example gradients of the cross-entropy on (x, y)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(nn.functional_call(model, p, xi[None]), yi[None])

    per_example = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))(params, ng.tensor(x),
                                                                 ng.tensor(y))
    g = np.concatenate([v.numpy().reshape(len(x), -1) for v in per_example.values()], axis=1)
    mean = g.mean(0)
    tr = float(((g - mean) ** 2).sum(1).mean() * len(g) / (len(g) - 1))
    sq = float(mean @ mean)
    return tr / sq, tr, sq


def evaluate(model, x, y) -> tuple[float, float]:
    with ng.no_grad():
        logits = model(ng.tensor(x))
        return (float(F.cross_entropy(logits, ng.tensor(y)).item()),
                float((logits.numpy().argmax(1) == y).mean()))


def train(batch: int, data, epochs: int, lr: float, seed: int = 0) -> dict:
    model = mlp(seed)
    opt = ng.optim.SGD(model.parameters(), lr=lr)
    loader = ng.data.DataLoader(ng.data.TensorDataset(data.x_train, data.y_train),
                                batch_size=batch, shuffle=True, seed=seed)
    loss0 = evaluate(model, data.x_train, data.y_train)[0]
    hist = {"epoch": [0], "time": [0.0], "loss": [loss0],
            "test": [evaluate(model, data.x_test, data.y_test)[1]]}
    clock = 0.0
    for ep in range(1, epochs + 1):
        t0 = time.perf_counter()
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        clock += time.perf_counter() - t0  # training time only, not the evaluation below
        hist["epoch"].append(ep)
        hist["time"].append(clock)
        hist["loss"].append(evaluate(model, data.x_train, data.y_train)[0])
        hist["test"].append(evaluate(model, data.x_test, data.y_test)[1])
    hist["updates"] = epochs * len(loader)
    hist["sec_per_update"] = clock / hist["updates"]
    hist["train_acc"] = evaluate(model, data.x_train, data.y_train)[1]
    hist["test_loss"], hist["test_acc"] = evaluate(model, data.x_test, data.y_test)
    hist["model"] = model
    return hist


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/examples/sgd_noise",
                    help="folder for the figure (default %(default)s; "
                         "--out docs/figures regenerates the docs' figure)")
    ap.add_argument("--batches", type=int, nargs="+", default=[4000, 500, 100, 20])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--gd-epochs", type=int, default=400,
                    help="epochs (= updates) of full-batch GD, about the wall time of B=20")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--match-loss", type=float, default=1.6,
                    help="compare test accuracy where each run's training loss first reaches this")
    ap.add_argument("--noise-samples", type=int, default=1000)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.batches, a.epochs, a.gd_epochs, a.noise_samples = [4000, 100], 2, 3, 200
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    data = ng.data.datasets.mnist1d()
    xs, ys = data.x_train[:a.noise_samples], data.y_train[:a.noise_samples]
    b_init, tr_init, g_init = noise_scale(mlp(0), xs, ys)
    n = len(data.x_train)
    runs = {b: train(b, data, a.gd_epochs if b >= n else a.epochs, a.lr) for b in a.batches}

    print(f"MLP 40-100-100-10 (ReLU) on MNIST-1D, SGD lr {a.lr}, {a.epochs} epochs "
          f"({a.gd_epochs} for full-batch GD), same initial weights")
    print("| batch | updates | ms per update | training time (s) | final train loss | "
          "train acc. | test acc. | gap | B_noise after training | noise/signal B_noise/B |")
    print("|---" * 10 + "|")
    for b, h in runs.items():
        bn, _, _ = noise_scale(h["model"], xs, ys)
        h["b_noise"] = bn
        name = f"{b} (GD)" if b >= n else str(b)
        print(f"| {name} | {h['updates']} | {1e3 * h['sec_per_update']:.2f} | "
              f"{h['time'][-1]:.1f} | {h['loss'][-1]:.3f} | {100 * h['train_acc']:.1f} % | "
              f"{100 * h['test_acc']:.1f} % | {100 * (h['train_acc'] - h['test_acc']):.1f} | "
              f"{bn:.0f} | {bn / b:.2f} |")
    print(f"At initialisation: B_noise = {b_init:.0f} (tr Σ = {tr_init:.3g}, ‖G‖² = "
          f"{g_init:.3g}); noise/signal per batch: "
          + ", ".join(f"B={b}: {b_init / b:.2f}" for b in a.batches))
    print(f"At the first epoch whose training loss is <= {a.match_loss}:")
    for b, h in runs.items():
        hit = next((i for i, v in enumerate(h["loss"]) if v <= a.match_loss), None)
        h["matched"] = None if hit is None else (hit, h["test"][hit], h["time"][hit])
        print(f"  B={b}: " + ("not reached" if hit is None else
                              f"epoch {hit} ({h['time'][hit]:.1f} s), test accuracy "
                              f"{100 * h['test'][hit]:.1f} %"))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for b, h in runs.items():
        lab = f"B = {b}" + (" (full batch GD)" if b >= n else "")
        axes[0].plot(h["epoch"], h["loss"], label=lab)
        axes[1].plot(h["time"], h["loss"], label=lab)
    for ax, xl in zip(axes[:2], ("epoch", "training wall time (s)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("training loss (all 4,000 signals)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    axes[0].set_xlim(0, a.epochs)
    axes[0].axhline(a.match_loss, color="grey", ls=":", lw=0.8)
    axes[1].axhline(a.match_loss, color="grey", ls=":", lw=0.8)
    axes[0].set_title("loss against epochs (same computation per epoch)", fontsize=10)
    axes[1].set_title("loss against wall time", fontsize=10)
    ax = axes[2]
    bs = list(runs)
    pos = np.arange(len(bs))
    ax.bar(pos - 0.2, [100 * runs[b]["train_acc"] for b in bs], 0.4, label="train accuracy")
    ax.bar(pos + 0.2, [100 * runs[b]["test_acc"] for b in bs], 0.4, label="test accuracy")
    ax.set_xticks(pos, [f"B={b}\nnoise/signal\n{runs[b]['b_noise'] / b:.2g}" for b in bs],
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"at the end ({a.epochs} epochs, GD {a.gd_epochs}); noise/signal B_noise/B",
                 fontsize=10)
    fig.suptitle(f"Full-batch gradient descent vs minibatch SGD (lr {a.lr:g}) on MNIST-1D")
    fig.tight_layout()
    path = out / "sgd_noise.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nfigure: {path} ({time.perf_counter() - t_all:.1f} s)")
    return {"runs": {b: {k: v for k, v in h.items() if k != "model"} for b, h in runs.items()},
            "b_noise_init": b_init}


if __name__ == "__main__":
    main()
