"""Transfer learning on MNIST-1D: pretrain on digits 0-4, fine-tune on a few labelled 5-9s.

The MNIST-1D paper's CNN is trained on the digits 0-4 (about 2,000 signals). The task that
matters is then the digits 5-9 with only N labelled examples per class. Three ways to learn it,
each with the same budget of full-batch Adam steps and no validation set (with 10 labels per
class there is none to spare):

  scratch    a fresh CNN trained on the N·5 examples
  head only  the pretrained convolutions frozen, a fresh linear head trained (lr 1e-2)
  all layers everything trained, the pretrained convolutions with a smaller lr (1e-3) than the
             fresh head (1e-2), via ``param_groups``

Test accuracy on all test signals of the digits 5-9, mean ± std over seeds (each seed draws
another labelled subset and another initialisation). Writes transfer_accuracy.png to ``--out``
(default runs/examples/transfer_learning; ``--out docs/figures`` regenerates the docs' figure).

    python examples/transfer_learning.py                  # about a minute on 2 cores
    python examples/transfer_learning.py --seeds 2 --per-class 10 --steps 100   # a quick look
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np

import nodegrad as ng
from nodegrad import models, train
from nodegrad.nn import functional as F
from nodegrad.train import transfer as T

METHODS = ("scratch", "head only", "all layers")


def loader(x, y, batch_size, shuffle=False, seed=0):
    ds = ng.data.ArrayDataset(x, y)
    return ng.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, seed=seed)


def pretrain(d, epochs: int, path: pathlib.Path) -> float:
    """Train the CNN on digits 0-4, save its weights, return its test accuracy on 0-4."""
    tr, te = d.y_train < 5, d.y_test < 5
    model = models.create("mnist1d_cnn", seed=0, classes=5)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    train.fit(model, F.cross_entropy, opt,
              loader(d.x_train[tr], d.y_train[tr], 100, shuffle=True, seed=0),
              epochs=epochs, progress=False)
    ng.save(model.state_dict(), path)  # what a pretrained checkpoint on disk looks like
    return train.evaluate(model, loader(d.x_test[te], d.y_test[te], 1000))["accuracy"]


def subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` examples of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in np.unique(y)])


def build(method: str, pretrained: pathlib.Path, seed: int, verbose: bool = False):
    """The model and optimiser of one method."""
    model = models.create("mnist1d_cnn", seed=1000 + seed, classes=5)
    if method == "scratch":
        return model, ng.optim.Adam(model.parameters(), lr=1e-2)
    report = T.load_pretrained(model, pretrained)  # all of it, strict: names and shapes match
    T.replace_head(model, 5, seed=2000 + seed)      # the head for 0-4 is no use: a fresh one
    if verbose:
        print(report)
    if method == "head only":
        T.freeze(model)
        T.unfreeze(model, "linear")
        if verbose:
            print(T.trainable_summary(model))
        return model, ng.optim.Adam(T.param_groups(model, {"linear": 1e-2}))
    return model, ng.optim.Adam(T.param_groups(model, {"linear": 1e-2}, default_lr=1e-3))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--steps", type=int, default=200, help="full-batch Adam steps per run")
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--out", default="runs/examples/transfer_learning",
                    help="folder for the figures (default %(default)s; "
                         "--out docs/figures regenerates the docs' figures)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    d = ng.data.datasets.mnist1d()
    tmp = tempfile.TemporaryDirectory()
    path = pathlib.Path(tmp.name) / "cnn_digits0-4.safetensors"
    acc0 = pretrain(d, args.pretrain_epochs, path)
    print(f"pretrained on digits 0-4 ({(d.y_train < 5).sum()} signals): test accuracy on 0-4 "
          f"{acc0:.3f}")

    pool = np.flatnonzero(d.y_train >= 5)
    te = d.y_test >= 5
    test = loader(d.x_test[te], d.y_test[te] - 5, 1000)
    full = models.create("mnist1d_cnn", seed=0, classes=5)  # the ceiling: every 5-9 label
    train.fit(full, F.cross_entropy, ng.optim.Adam(full.parameters(), lr=1e-2),
              loader(d.x_train[pool], d.y_train[pool] - 5, 100, shuffle=True, seed=0),
              epochs=args.pretrain_epochs, progress=False)
    ceiling = train.evaluate(full, test)["accuracy"]
    print(f"reference: trained from scratch on all {len(pool)} labelled 5-9 signals: test "
          f"accuracy on 5-9 {ceiling:.3f}")
    res = {m: {n: [] for n in args.per_class} for m in METHODS}
    for n in args.per_class:
        for s in range(args.seeds):
            idx = pool[subset(d.y_train[pool], n, seed=s)]
            x, y = d.x_train[idx], d.y_train[idx] - 5
            for m in METHODS:
                model, opt = build(m, path, s, verbose=(n == args.per_class[0] and s == 0
                                                        and m != "scratch"))
                train.fit(model, F.cross_entropy, opt, loader(x, y, len(y)),
                          epochs=args.steps, progress=False)
                res[m][n].append(train.evaluate(model, test)["accuracy"])
    tmp.cleanup()

    print(f"\ntest accuracy on digits 5-9 ({te.sum()} signals), mean ± std over {args.seeds} "
          f"seeds, {args.steps} full-batch Adam steps")
    print("| labelled per class | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for n in args.per_class:
        cells = [f"{np.mean(res[m][n]):.3f} ± {np.std(res[m][n]):.3f}" for m in METHODS]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    plot(res, args.per_class, pathlib.Path(args.out) / "transfer_accuracy.png", ceiling,
         len(pool))
    return {"pretrained": acc0, "ceiling": ceiling, "results": res}


def plot(res: dict, ns: list, path: str, ceiling: float, n_all: int) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m, mark in zip(METHODS, "osd"):
        mean = [np.mean(res[m][n]) for n in ns]
        std = [np.std(res[m][n]) for n in ns]
        ax.errorbar(ns, mean, yerr=std, marker=mark, capsize=3, label=m)
    ax.axhline(ceiling, color="gray", ls=":", label=f"scratch, all {n_all} labels")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (digits 5-9)")
    ax.set_ylabel("test accuracy on 5-9")
    ax.set_title("MNIST-1D CNN pretrained on digits 0-4", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
