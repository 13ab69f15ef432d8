"""The notes' bottleneck and PCA: a narrow linear layer learns the principal subspace.

Lecture 2 (Generalization): "a linear layer narrower than the layers around it ... interpret this
in the context of PCA". On MNIST-1D (40 inputs, centred with the training mean):

1. A linear autoencoder x ↦ x Eᵀ Dᵀ with a k-unit bottleneck (E: k × 40, D: 40 × k), trained by
   full-batch gradient descent (Adam) on the squared reconstruction error, for several k. Its
   decoder's column space is compared with PCA's top-k subspace (``data.PCAWhiten``) by the
   principal angles between them (``scipy.linalg.subspace_angles``), and its test reconstruction
   error with PCA's rank-k reconstruction.
2. A ReLU bottleneck as a regulariser: an MLP classifier 40-128-k-128-10 (ReLU everywhere) against
   the same net without the bottleneck (40-128-128-10), trained on a small training set; test
   accuracy, mean over seeds.

    python examples/bottleneck_pca.py           # about half a minute on 2 cores
    python examples/bottleneck_pca.py --quick   # seconds
    python examples/bottleneck_pca.py --out docs/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.linalg import subspace_angles

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F


def train_linear_ae(x: np.ndarray, k: int, steps: int, lr: float = 1e-2, seed: int = 0):
    """E (k × d), D (d × k) minimising mean ‖x - x Eᵀ Dᵀ‖² by full-batch Adam; the loss curve."""
    ng.manual_seed(seed)
    d = x.shape[1]
    E = ng.tensor(np.random.default_rng(seed).normal(0, d ** -0.5, (k, d)), dtype=ng.float32,
                  requires_grad=True)
    D = ng.tensor(np.random.default_rng(seed + 1).normal(0, k ** -0.5, (d, k)),
                  dtype=ng.float32, requires_grad=True)
    xt = ng.tensor(x)
    opt = ng.optim.Adam([E, D], lr=lr)
    sched = ng.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 100)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((xt - (xt @ E.T) @ D.T) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
    return E.numpy(), D.numpy(), losses


def classifier(k: int | None, seed: int) -> nn.Sequential:
    """40-128-k-128-10 with ReLUs (k=None: 40-128-128-10, no bottleneck)."""
    ng.manual_seed(seed)
    mid = [nn.Linear(128, k), nn.ReLU(), nn.Linear(k, 128)] if k else [nn.Linear(128, 128)]
    return nn.Sequential(nn.Linear(40, 128), nn.ReLU(), *mid, nn.ReLU(), nn.Linear(128, 10))


def accuracies(k, seed, xtr, ytr, xte, yte, epochs: int) -> tuple[float, float]:
    """(train, test) accuracy after ``epochs`` of Adam on (xtr, ytr)."""
    model = classifier(k, seed)
    opt = ng.optim.Adam(model.parameters(), lr=3e-3)
    loader = ng.data.DataLoader(ng.data.TensorDataset(xtr, ytr), batch_size=64, shuffle=True,
                                seed=seed)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    with ng.no_grad():
        return tuple(float((model(ng.tensor(x)).numpy().argmax(1) == y).mean())
                     for x, y in ((xtr, ytr), (xte, yte)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/examples/bottleneck_pca",
                    help="folder for the figure (default %(default)s; "
                         "--out docs/figures regenerates the docs' figure)")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10, 20])
    ap.add_argument("--steps", type=int, default=1500, help="autoencoder steps")
    ap.add_argument("--train", type=int, default=1000, help="classifier training examples")
    ap.add_argument("--epochs", type=int, default=40, help="classifier epochs")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.ks, a.steps, a.train, a.epochs, a.seeds = [2, 5], 300, 300, 3, 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = ng.data.datasets.mnist1d()
    mean = data.x_train.mean(0)
    xtr, xte = data.x_train - mean, data.x_test - mean
    pca = ng.data.PCAWhiten().fit(xtr)
    U = pca.components_  # (40, 40), by decreasing variance

    def pca_error(x, k):
        return float((((x - x @ U[:, :k] @ U[:, :k].T) ** 2).sum(1)).mean())

    ae = {}
    print(f"Linear autoencoder on MNIST-1D ({len(xtr)} train, {len(xte)} test), "
          f"{a.steps} full-batch Adam steps")
    print("| k | largest principal angle to PCA's top-k (°) | mean angle (°) | AE test error | "
          "PCA test error | AE / PCA |")
    print("|---|---|---|---|---|---|")
    for k in a.ks:
        E, D, losses = train_linear_ae(xtr, k, a.steps)
        ang = np.degrees(subspace_angles(D.astype(np.float64), U[:, :k]))
        rec = xte @ E.T @ D.T
        err, perr = float(((xte - rec) ** 2).sum(1).mean()), pca_error(xte, k)
        ae[k] = {"angles": ang, "err": err, "pca_err": perr, "losses": losses}
        print(f"| {k} | {ang.max():.2f} | {ang.mean():.2f} | {err:.3f} | {perr:.3f} | "
              f"{err / perr:.4f} |")
    # a k-subspace that misses the top direction by a lot still does far worse: the scale
    rand = [np.degrees(subspace_angles(np.random.default_rng(0).normal(size=(40, k)),
                                       U[:, :k])).max() for k in a.ks]
    print("(a random k-subspace: largest angle " + ", ".join(f"{r:.0f}°" for r in rand) + ")")

    rng = np.random.default_rng(0)
    idx = rng.permutation(len(xtr))[:a.train]
    xs, ys = data.x_train[idx], data.y_train[idx]
    acc, train_acc = {}, {}
    for k in [None, *a.ks]:
        runs = [accuracies(k, s, xs, ys, data.x_test, data.y_test, a.epochs)
                for s in range(a.seeds)]
        train_acc[k], acc[k] = [r[0] for r in runs], [r[1] for r in runs]
    print(f"\nReLU MLP 40-128-[k]-128-10, {a.train} training examples, {a.epochs} epochs of "
          f"Adam: test accuracy % (mean ± std over {a.seeds} seeds)")
    print("| bottleneck | " + " | ".join("none" if k is None else f"k = {k}" for k in acc) + " |")
    print("|---" * (len(acc) + 1) + "|")
    print("| test accuracy | " + " | ".join(
        f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" for v in acc.values()) + " |")
    print("| train accuracy | " + " | ".join(
        f"{100 * np.mean(v):.1f}" for v in train_acc.values()) + " |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    for k in a.ks:
        ax.plot(np.arange(1, k + 1), ae[k]["angles"], "o-", ms=3, label=f"k = {k}")
    ax.set_xlabel("principal angle, largest first")
    ax.set_ylabel("angle to PCA's top-k subspace (°)")
    ax.set_title("linear AE decoder vs PCA: principal angles", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(a.ks, [ae[k]["pca_err"] for k in a.ks], "s-", ms=9, mfc="none", label="PCA, rank k")
    ax.plot(a.ks, [ae[k]["err"] for k in a.ks], "o--", label="linear autoencoder, k units")
    ax.set_xlabel("k")
    ax.set_ylabel("test reconstruction error (sum of squares)")
    ax.set_title("reconstruction error", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    ks = a.ks
    m = [100 * np.mean(acc[k]) for k in ks]
    s = [100 * np.std(acc[k]) for k in ks]
    ax.errorbar(ks, m, s, fmt="o-", capsize=3, label="ReLU bottleneck of k units")
    base = 100 * np.mean(acc[None])
    ax.axhline(base, color="grey", ls="--", label=f"no bottleneck ({base:.1f} %)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bottleneck width k")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"classifier on {a.train} MNIST-1D examples", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle("A k-unit bottleneck on MNIST-1D")
    fig.tight_layout()
    path = out / "bottleneck_pca.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nfigure: {path} ({time.perf_counter() - t0:.1f} s)")
    return {"ae": ae, "accuracy": acc, "train_accuracy": train_acc}


if __name__ == "__main__":
    main()
