"""Lottery tickets on MNIST-1D: winning tickets vs random re-initialisation, and where the
surviving first-layer weights sit.

Iterative magnitude pruning (Frankle & Carbin) of the MNIST-1D paper's MLP (40-100-100-10,
``models.create("mnist1d_mlp")``): train, prune a fraction of each layer's remaining weights by
magnitude (the output layer at half the rate, as Frankle & Carbin), rewind the survivors to
their initial values, train again. Each round's masks are also trained from a fresh random
initialisation (the control). Prints a table of test accuracy against the fraction of weights
remaining and writes two PNGs to ``--out`` (default runs/examples/lottery_ticket_mnist1d;
``--out docs/figures`` regenerates the docs' figures):

- ``lottery_accuracy.png``: accuracy vs weights remaining, winning tickets vs random re-init;
- ``lottery_first_layer.png``: the first layer's masks (hidden units x the 40 input positions)
  and the fraction of surviving weights per input position, round by round.

Run: ``python examples/lottery_ticket_mnist1d.py`` (defaults: 8 rounds of 36 % per hidden
layer, 3000 Adam steps per training, 2 seeds: 34 trainings, about 2.5 minutes on 2 busy CPU
cores). ``--steps 6000`` is the paper's training budget (about 4 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import nodegrad as ng  # noqa: E402
from nodegrad import models, prune, train  # noqa: E402
from nodegrad.nn import functional as F  # noqa: E402



def _one_blas_thread():
    """The MLP's matrices are tiny (batch 100 x 100 units): one BLAS thread is several times
    faster than two on a busy 2-core machine. Uses threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def make_train_fn(data, steps: int, lr: float, batch_size: int, seed: int):
    """Adam (the paper's lr 1e-2, batch 100) for ``steps`` steps; returns the final test
    accuracy (no early stopping, no selection on the test set) and the final train accuracy."""
    test = ng.data.DataLoader(data.test, batch_size=1000)

    def train_fn(model, ctx):
        loader = ng.data.DataLoader(data.train, batch_size=batch_size, shuffle=True,
                                    seed=1000 * seed + ctx.round)
        opt = ng.optim.Adam(model.parameters(), lr=lr)
        epochs = max(1, round((steps - ctx.start_step) / len(loader)))
        h = train.fit(model, F.cross_entropy, opt, loader, epochs=epochs,
                      callbacks=ctx.callbacks, progress=False)
        res = train.evaluate(model, test)
        return {"accuracy": res["accuracy"], "train_accuracy": h.last["accuracy"]}

    return train_fn


def first_layer_masks(result) -> list[tuple[float, np.ndarray]]:
    """(fraction remaining, mask of linear1.weight: hidden units x input positions) per round."""
    return [(r.fraction_remaining, r.masks["linear1.weight"]) for r in result.rounds[1:]]


def plot_accuracy(runs, path: Path) -> None:
    fr = np.array(runs[0].fractions)
    tick = np.array([r.accuracies for r in runs]) * 100
    ctrl = np.array([[np.nan if a is None else a for a in r.control_accuracies]
                     for r in runs], dtype=float) * 100
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    x = fr * 100
    for y, xs, c, label in ((tick, x, "C0", "winning ticket (rewound to init)"),
                            (ctrl[:, 1:], x[1:], "C3", "same mask, random re-init")):
        ax.plot(xs, y.mean(axis=0), "o-", color=c, label=label)
        if len(runs) > 1:
            ax.fill_between(xs, y.min(axis=0), y.max(axis=0), color=c, alpha=0.15)
    ax.axhline(tick[:, 0].mean(), color="k", ls="--", lw=1, label="dense network")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xlim(x.max() * 1.15, x.min() / 1.15)
    ticks = [t for t in (100, 64, 41, 26, 17, 11, 7, 4, 3, 2, 1) if x.min() * 0.95 <= t]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t}" for t in ticks])
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST-1D MLP: lottery tickets ({len(runs)} seed(s), band = min-max)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _order(mask: np.ndarray) -> np.ndarray:
    """Units sorted by the centre of their surviving inputs (units with none go last)."""
    pos = np.arange(mask.shape[1])
    n = mask.sum(1)
    centre = np.where(n > 0, (mask * pos).sum(1) / np.maximum(n, 1), np.inf)
    return np.argsort(centre, kind="stable")


def class_information(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per input position, eta squared: the share of the signal's variance explained by the
    class (between-class variance / total variance). Near 0 where a position says nothing."""
    mu = x.mean(axis=0)
    between = sum((y == c).sum() * (x[y == c].mean(axis=0) - mu) ** 2 for c in np.unique(y))
    return between / len(x) / x.var(axis=0)


def adjacency(masks: list[np.ndarray], reps: int = 500, seed: int = 0) -> dict:
    """Local connectivity test: adjacent pairs (positions i, i+1) among each unit's surviving
    inputs, summed over ``masks`` (one per seed), against a null in which every unit keeps as
    many inputs, drawn with its layer's per-position frequencies but no preference for
    neighbours. Returns observed, expected (null mean), ratio and the one-sided p-value."""
    def pairs(m):
        return int((m[:, 1:] & m[:, :-1]).sum())

    rng = np.random.default_rng(seed)
    observed = sum(pairs(m) for m in masks)
    null = np.zeros(reps)
    for m in masks:
        p = m.mean(axis=0) + 1e-12
        p = p / p.sum()
        for r in range(reps):
            draw = np.zeros_like(m)
            for u, n in enumerate(m.sum(axis=1)):
                if n:
                    draw[u, rng.choice(m.shape[1], int(n), replace=False, p=p)] = True
            null[r] += pairs(draw)
    expected = float(null.mean())
    return {"observed": observed, "expected": expected,
            "ratio": observed / max(expected, 1e-12),
            "p": float((1 + (null >= observed).sum()) / (1 + reps))}


def position_profile(masks: list[np.ndarray]) -> np.ndarray:
    """Per input position: the fraction of first-layer weights that survive (mean over seeds)."""
    return np.mean([m.mean(axis=0) for m in masks], axis=0)


def plot_first_layer(runs, data, path: Path) -> dict:
    per_round = [first_layer_masks(r) for r in runs]
    n_rounds = len(per_round[0])
    show = sorted({n_rounds // 2 - 1, n_rounds - 1}) if n_rounds > 1 else [0]
    fig = plt.figure(figsize=(11, 4.2))
    gs = fig.add_gridspec(1, len(show) + 1, width_ratios=[1] * len(show) + [1.6])
    for i, k in enumerate(show):
        mask = per_round[0][k][1]
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(mask[_order(mask)], aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set_title(f"first-layer mask, {100 * mask.mean():.1f} % kept\n(seed 0, units sorted "
                     "by centre)", fontsize=9)
        ax.set_xlabel("input position")
        ax.set_ylabel("hidden unit")
    ax = fig.add_subplot(gs[0, -1])
    pos = np.arange(data.x_train.shape[1])
    profiles = {}
    for k in range(n_rounds):
        prof = position_profile([pr[k][1] for pr in per_round])
        kept = prof.mean()  # the first layer's kept fraction
        profiles[f"{kept:.4f}"] = prof.tolist()
        ax.plot(pos, prof / kept, lw=1.2, color=plt.cm.viridis(k / max(n_rounds - 1, 1)),
                label=f"{100 * kept:.1f} % kept")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax2 = ax.twinx()
    ax2.plot(pos, class_information(data.x_train, data.y_train), color="0.4", lw=1.2, ls="--")
    ax2.set_ylabel("class information η² of the input (dashed)", color="0.3", fontsize=8)
    ax2.set_ylim(bottom=0)
    ax.set_xlabel("input position")
    ax.set_ylabel("surviving fraction / layer's kept fraction")
    ax.set_title("where the first layer's surviving weights sit\n(1 = uniform; mean over seeds)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return profiles


def central_share(masks: list[np.ndarray], lo: int = 10, hi: int = 30) -> float:
    """Share of the surviving first-layer weights in positions lo..hi-1 (the central half)."""
    return float(np.mean([m[:, lo:hi].sum() / max(m.sum(), 1) for m in masks]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--amount", type=float, default=0.36, help="pruned per round, per layer")
    p.add_argument("--output-amount", type=float, default=None,
                   help="rate of the output layer (default: half of --amount)")
    p.add_argument("--steps", type=int, default=3000, help="Adam steps per training")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--scope", choices=("layer", "global"), default="layer")
    p.add_argument("--out", default="runs/examples/lottery_ticket_mnist1d",
                   help="folder for the figures (default %(default)s; "
                        "--out docs/figures regenerates the docs' figures)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    data = ng.data.datasets.mnist1d()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    out_amount = args.amount / 2 if args.output_amount is None else args.output_amount
    rates = {"linear3.weight": out_amount} if args.scope == "layer" else None
    t0 = time.perf_counter()
    runs = []
    with _one_blas_thread():
        for s in range(args.seeds):
            def build(seed, s=s):
                return models.create("mnist1d_mlp", seed=10_000 * s + seed)

            res = prune.iterative_magnitude_pruning(
                build, make_train_fn(data, args.steps, args.lr, args.batch_size, s),
                args.rounds, args.amount, rewind="init", scope=args.scope, control=True,
                layer_amounts=rates)
            runs.append(res)
            print(f"seed {s}: done after {time.perf_counter() - t0:.0f} s")
    elapsed = time.perf_counter() - t0

    tick = np.array([r.accuracies for r in runs]) * 100
    ctrl = np.array([[np.nan if a is None else a for a in r.control_accuracies]
                     for r in runs], dtype=float) * 100
    train_acc = np.array([[x.metrics["train_accuracy"] for x in r.rounds] for r in runs]) * 100
    rate = f"{100 * args.amount:.0f} % per layer, output layer {100 * out_amount:.0f} %" \
        if rates else f"{100 * args.amount:.0f} % globally"
    print(f"\nMNIST-1D MLP, {args.rounds} rounds of {rate}, {args.steps} Adam steps per "
          f"training, {args.seeds} seed(s); test accuracy, mean (min-max) over seeds\n")
    print("| weights remaining | first layer | winning ticket | random re-init | "
          "ticket train acc. |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    first = [1.0] + [m.mean() for m in (r.masks["linear1.weight"] for r in runs[0].rounds[1:])]
    for i, frac in enumerate(runs[0].fractions):
        def cell(y):
            if np.all(np.isnan(y)):
                return "—"
            return f"{np.nanmean(y):.1f} ({np.nanmin(y):.1f}–{np.nanmax(y):.1f})"
        print(f"| {100 * frac:.1f} % | {100 * first[i]:.1f} % | {cell(tick[:, i])} | "
              f"{cell(ctrl[:, i])} | {np.mean(train_acc[:, i]):.1f} |")
        rows.append({"fraction_remaining": frac, "ticket": tick[:, i].tolist(),
                     "control": ctrl[:, i].tolist(), "ticket_train": train_acc[:, i].tolist()})

    plot_accuracy(runs, out / "lottery_accuracy.png")
    profiles = plot_first_layer(runs, data, out / "lottery_first_layer.png")
    eta = class_information(data.x_train, data.y_train)
    print("\n| first layer kept | central 20 positions' share of survivors | kept at 5+5 edge "
          "positions | kept at central 20 | corr(kept, η²) | adjacent pairs: observed / chance "
          "(p) |")
    print("|---:|---:|---:|---:|---:|---:|")
    spatial = []
    for k in range(1, args.rounds + 1):
        ms = [r.rounds[k].masks["linear1.weight"] for r in runs]
        prof = position_profile(ms)
        row = {"first_layer_kept": float(np.mean([m.mean() for m in ms])),
               "central_share": central_share(ms),
               "edge_kept": float(np.r_[prof[:5], prof[-5:]].mean()),
               "central_kept": float(prof[10:30].mean()),
               "corr_eta2": float(np.corrcoef(prof, eta)[0, 1]),
               "adjacency": adjacency(ms)}
        spatial.append(row)
        print(f"| {100 * row['first_layer_kept']:.1f} % | {100 * row['central_share']:.1f} % | "
              f"{100 * row['edge_kept']:.1f} % | {100 * row['central_kept']:.1f} % | "
              f"{row['corr_eta2']:.2f} | {row['adjacency']['observed']} / "
              f"{row['adjacency']['expected']:.1f} ({row['adjacency']['p']:.3f}) |")
    print(f"{2 * args.rounds * args.seeds + args.seeds} trainings in {elapsed:.0f} s; figures in "
          f"{out}")
    masks = [[r.masks["linear1.weight"].astype(int).tolist() for r in res.rounds[1:]]
             for res in runs]
    summary = {"args": vars(args), "rows": rows, "spatial": spatial, "first_layer_masks": masks,
               "position_profiles": profiles, "eta2": eta.tolist(), "seconds": elapsed}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
