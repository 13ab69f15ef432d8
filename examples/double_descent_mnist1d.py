"""Bias-variance and double descent on MNIST-1D: test error against the width of an MLP.

One-hidden-layer MLPs 40 -> h -> 10 (ReLU) with widths h from 1 to 512 are trained on a small
training subset of MNIST-1D whose labels are partly corrupted (each corrupted label replaced
by another class, drawn at random), with full-batch Adam, no regularisation (no weight decay,
no early stopping, no dropout) and a fixed number of steps, enough for the wide networks to fit
every training label, corrupted ones included. The test set (clean labels) measures how well
each width generalises.

Classical bias-variance reasoning predicts a U: narrow networks underfit (bias), wide ones
overfit (variance). Double descent (Belkin et al. 2019; Nakkiran et al. 2020) predicts that the
test error peaks near the interpolation threshold, where the network has just enough capacity
to fit the training set, and falls again beyond it. The figure marks both the width where the
training error first reaches zero and the width where the parameter count equals
(training samples) × (classes), the threshold Belkin et al. give for the squared loss.

Writes double_descent.png to ``--out`` (default runs/examples/double_descent_mnist1d;
``--out docs/figures`` regenerates the docs' figure) and prints the table.

    python examples/double_descent_mnist1d.py             # a few minutes on 2 cores
    python examples/double_descent_mnist1d.py --widths 4 16 64 --steps 500   # a quick look
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

CLASSES = 10


def noisy_subset(d, n: int, noise: float, seed: int):
    """``n`` training signals; a fraction ``noise`` of their labels changed to another class."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.x_train), n, replace=False)
    x, y = d.x_train[idx], d.y_train[idx].copy()
    flip = rng.permutation(n)[:round(noise * n)]
    y[flip] = (y[flip] + rng.integers(1, CLASSES, len(flip))) % CLASSES
    return x, y, flip


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, CLASSES))


def n_params(width: int) -> int:
    return 40 * width + width + width * CLASSES + CLASSES


def train_one(width: int, x, y, xt, yt, steps: int, lr: float, seed: int) -> dict:
    """Full-batch Adam on (x, y); train/test error and test loss at the end."""
    ng.manual_seed(seed)
    model = mlp(width)
    opt = ng.optim.Adam(model.parameters(), lr=lr)
    X, Y = ng.tensor(x), ng.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(X), Y)
        loss.backward()
        opt.step()
    model.eval()
    with ng.no_grad():
        out, out_t = model(X), model(ng.tensor(xt))
        test_loss = float(F.cross_entropy(out_t, ng.tensor(yt)).item())
    return {"train_err": float((out.numpy().argmax(1) != y).mean()),
            "test_err": float((out_t.numpy().argmax(1) != yt).mean()),
            "train_loss": float(loss.item()), "test_loss": test_loss}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--noise", type=float, default=0.15, help="fraction of labels corrupted")
    ap.add_argument("--widths", type=int, nargs="+",
                    default=[1, 2, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512])
    ap.add_argument("--steps", type=int, default=3000, help="full-batch Adam steps")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=2, help="initialisations averaged per width")
    ap.add_argument("--out", default="runs/examples/double_descent_mnist1d",
                    help="folder for the figures (default %(default)s; "
                         "--out docs/figures regenerates the docs' figures)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    d = ng.data.datasets.mnist1d()
    x, y, flip = noisy_subset(d, args.n_train, args.noise, seed=0)
    print(f"MNIST-1D: {args.n_train} training signals, {len(flip)} labels corrupted "
          f"({args.noise:.0%}); {len(d.y_test)} clean test signals; {args.steps} full-batch "
          f"Adam steps (lr {args.lr}), {args.seeds} seed(s) per width")
    rows = []
    for w in args.widths:
        t1 = time.perf_counter()
        runs = [train_one(w, x, y, d.x_test, d.y_test, args.steps, args.lr, seed=s)
                for s in range(args.seeds)]
        row = {"width": w, "params": n_params(w),
               **{k: float(np.mean([r[k] for r in runs])) for k in runs[0]},
               "test_err_std": float(np.std([r["test_err"] for r in runs])),
               "seconds": time.perf_counter() - t1}
        rows.append(row)
        print(f"  width {w:5d}: train error {row['train_err']:.3f}, test error "
              f"{row['test_err']:.3f}, test loss {row['test_loss']:.2f} "
              f"({row['seconds']:.0f} s)", flush=True)

    fits = [r["width"] for r in rows if r["train_err"] == 0.0]
    first_fit = fits[0] if fits else None
    belkin = (args.n_train * CLASSES - CLASSES) / (40 + 1 + CLASSES)  # n_params(h) = n K
    print("\n| width | parameters | train error | test error (mean ± std) | test loss |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['width']} | {r['params']:,} | {r['train_err']:.3f} | "
              f"{r['test_err']:.3f} ± {r['test_err_std']:.3f} | {r['test_loss']:.2f} |")
    hi = max(rows, key=lambda r: r["test_err"])
    lo = min(rows, key=lambda r: r["test_err"])
    peak = max(rows, key=lambda r: r["test_loss"])
    print(f"\ntraining error first reaches 0 at width {first_fit}; parameters = samples × "
          f"classes at width {belkin:.0f}")
    print(f"test error: {rows[0]['test_err']:.3f} at width {rows[0]['width']}, highest "
          f"{hi['test_err']:.3f} at width {hi['width']}, lowest {lo['test_err']:.3f} at width "
          f"{lo['width']}, {rows[-1]['test_err']:.3f} at width {rows[-1]['width']}")
    print(f"test loss: highest {peak['test_loss']:.2f} at width {peak['width']}, "
          f"{rows[-1]['test_loss']:.2f} at width {rows[-1]['width']}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    plot(rows, first_fit, belkin, args)
    return {"rows": rows, "first_fit": first_fit, "belkin": belkin}


def plot(rows: list, first_fit, belkin: float, args) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    w = [r["width"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.plot(w, [r["train_err"] for r in rows], "o-", label="train error (noisy labels)")
    ax.errorbar(w, [r["test_err"] for r in rows], yerr=[r["test_err_std"] for r in rows],
                fmt="s-", capsize=2, label="test error")
    ax2.plot(w, [r["test_loss"] for r in rows], "s-", color="C1", label="test loss")
    ax2.plot(w, [r["train_loss"] for r in rows], "o-", color="C0", label="train loss")
    ax2.set_yscale("log")
    for a in (ax, ax2):
        if first_fit:
            a.axvline(first_fit, color="k", ls="--", lw=1,
                      label=f"train error 0 from width {first_fit}")
        a.axvline(belkin, color="gray", ls=":", lw=1.2,
                  label=f"parameters = samples × classes ({belkin:.0f})")
        a.set_xscale("log")
        a.set_xlabel("hidden units (one hidden layer)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("error")
    ax2.set_ylabel("cross-entropy")
    fig.suptitle(f"MNIST-1D MLP: {args.n_train} training signals, {args.noise:.0%} labels "
                 f"corrupted, {args.steps} full-batch Adam steps", fontsize=10)
    fig.tight_layout()
    figure = pathlib.Path(args.out) / "double_descent.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
