"""Learning curves as PNGs (matplotlib, headless Agg): training vs validation loss and accuracy
with the early-stopping point marked, the learning rate over steps, a confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path

from .. import _backend as B
from .loop import History

np = B.np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


#: metric names (or parts of them) where higher is better; the others (losses, errors): lower
_HIGHER_BETTER = ("acc", "f1", "r2", "top", "precision", "recall", "auc")


def _mode(monitor: str) -> str:
    return "max" if any(k in monitor for k in _HIGHER_BETTER) else "min"


def plot_curves(history: History, path: str | os.PathLike, best_epoch: int | None = None,
                monitor: str = "val_loss") -> Path:
    """Loss (and accuracy, when logged) per epoch, train vs validation; the best epoch of
    ``monitor`` (or ``best_epoch``, 1-based) marked: the generalisation gap made visible."""
    plt = _plt()
    ep = history["epoch"]
    panels = [k for k in ("loss", "accuracy") if any(v is not None for v in history[k])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    if best_epoch is None and any(v is not None and v == v for v in history[monitor]):
        best_epoch = history.best(monitor, _mode(monitor))["epoch"]
    for ax, k in zip(axes[0], panels):
        ax.plot(ep, history[k], label=f"train {k}")
        if any(v is not None for v in history[f"val_{k}"]):
            ax.plot(ep, history[f"val_{k}"], label=f"validation {k}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="k", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel(k)
        ax.legend()
        ax.grid(alpha=0.3)
    if history.stop_reason:
        fig.suptitle(history.stop_reason, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_lr(history: History, path: str | os.PathLike) -> Path:
    """The learning rate used at every optimiser step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([s["step"] for s in history.steps], [s["lr"] for s in history.steps])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(cm: np.ndarray, path: str | os.PathLike, labels=None) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts (or, normalised,
    fractions to two decimals)."""
    plt = _plt()
    cm = np.asarray(cm)
    n = len(cm)
    fig, ax = plt.subplots(figsize=(0.45 * n + 2.5, 0.45 * n + 2))
    ax.imshow(cm, cmap="Blues")
    labels = labels if labels is not None else list(range(n))
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            text = f"{cm[i, j]:.2f}" if B.is_float(cm.dtype) else str(cm[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_run(history: History, run_dir: str | os.PathLike, cm: np.ndarray | None = None,
             best_epoch: int | None = None) -> list[Path]:
    """All of the above into ``run_dir``: curves.png, lr.png and confusion.png."""
    run_dir = Path(run_dir)
    out = [plot_curves(history, run_dir / "curves.png", best_epoch),
           plot_lr(history, run_dir / "lr.png")]
    if cm is not None:
        out.append(plot_confusion(cm, run_dir / "confusion.png"))
    return out
