"""Pictures of gradient flow (matplotlib, headless Agg), drawn as the notes draw them.

- :func:`plot_activation_grid`: histograms of each layer's activations, one row per
  initialisation scheme and one column per layer, with the std per layer at the end of each
  row: the notes' deep-network figure where the activations of later layers collapse under
  N(0, 0.01²) and keep their spread under Xavier (tanh) or He (ReLU).
- :func:`plot_layer_profile`: one report across depth (activation std, gradient RMS, dead and
  saturated shares per layer).
- :func:`plot_grad_norms`, :func:`plot_unit_fractions`, :func:`plot_update_ratios` and
  :func:`plot_training`: a :class:`~nodegrad.diagnostics.callback.GradientFlowMonitor` record
  over training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import _backend as B
from ..train.plots import _plt
from .stats import RECTIFIERS, SATURATING, LayerRecord, LayerReport

np = B.np

SCHEME_LABELS = {"small_normal": "N(0, 0.01²)", "xavier": "Xavier N(0, 2/(n_in+n_out))",
                 "xavier_uniform": "Xavier uniform", "lecun": "simple Xavier N(0, 1/n_in)",
                 "he": "He N(0, 2/n_in)", "kaiming": "He N(0, 2/n_in)",
                 "he_uniform": "He uniform", "default": "default U(±1/√n_in)",
                 "orthogonal": "orthogonal", "zeros": "zeros"}


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    _plt().close(fig)
    return path


# --- one report, or one per scheme --------------------------------------------------------------
def _grid_layers(report: LayerReport, layers) -> list[tuple[int, LayerRecord]]:
    """The columns of :func:`plot_activation_grid`: ``(number, record)``, the number counting
    the layers of the chosen kind from 1 (it stays the layer's own when only some are drawn)."""
    if layers is not None:
        return [(j + 1, report[k]) for j, k in enumerate(layers)]
    for pick in (lambda r: r.applied == "module", lambda r: r.applied == "next",
                 lambda r: True):
        recs = [r for r in report if pick(r) and r.activation.hist]
        if recs:
            break
    cols = list(enumerate(recs, 1))
    if len(cols) > 12:  # keep the figure readable: evenly spaced, first and last included
        idx = np.unique(np.linspace(0, len(cols) - 1, 12).round().astype(int))
        cols = [cols[i] for i in idx]
    return cols


def _rebin(r: LayerRecord, edges: np.ndarray, drop_zeros: bool) -> np.ndarray:
    """The layer's histogram moved onto common ``edges`` as fractions of all entries: its
    cumulative counts, linear within each of its own bins, read at the new edges."""
    s = r.activation
    counts = np.asarray(s.hist, dtype=np.float64)
    own = np.asarray(s.edges, dtype=np.float64)
    if drop_zeros and s.zero_frac:
        k = min(max(int(np.searchsorted(own, 0.0, side="right")) - 1, 0), len(counts) - 1)
        counts[k] = max(counts[k] - s.zero_frac * s.n, 0.0)
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    if own[-1] - own[0] < (edges[1] - edges[0]) * 1e-6:  # a collapsed layer: one spike
        at = np.clip(np.searchsorted(edges, own[0], side="right") - 1, 0, len(edges) - 2)
        h = np.zeros(len(edges) - 1)
        h[at] = cdf[-1]
    else:
        h = np.diff(np.interp(edges, own, cdf))
    return h / max(s.n, 1)


def _row_range(recs: Sequence[LayerRecord]) -> tuple[float, float]:
    """tanh: [-1, 1]; sigmoid: [0, 1]; otherwise up to the largest mean + 5 std of the row (at
    most its largest value), so that a few outliers do not squeeze the histograms."""
    kind = recs[0].nonlinearity if recs[0].applied == "module" else None
    if kind == "tanh":
        return -1.0, 1.0
    if kind == "sigmoid":
        return 0.0, 1.0
    hi = max(min(max(abs(r.activation.min), abs(r.activation.max)),
                 abs(r.activation.mean) + 5 * r.activation.std) for r in recs)
    hi = hi if hi > 0 and math.isfinite(hi) else 1.0
    return (0.0, hi) if kind in RECTIFIERS else (-hi, hi)


def plot_activation_grid(reports: Mapping[str, LayerReport], path: str | os.PathLike, *,
                         layers: Sequence[str] | None = None, title: str | None = None,
                         bins: int = 40) -> Path:
    """Rows: the reports (e.g. one per init scheme, keyed by scheme name); columns: the layers'
    activation histograms on one x-range per row, then the std per layer (log scale).

    By default the columns are the nonlinearity outputs (or, without activation modules, the
    layers that feed one). For ReLU rows the exact zeros are left out of the histogram and
    their share is written in the panel; collapsed layers show as a spike at 0.
    """
    if not reports:
        raise ValueError("plot_activation_grid: no reports to draw")
    cols = {k: _grid_layers(v, layers) for k, v in reports.items()}
    rows = {k: [r for _, r in v] for k, v in cols.items()}
    if any(not recs or any(not r.activation.hist for r in recs) for recs in rows.values()):
        raise ValueError("plot_activation_grid: the reports have no histograms; take them with "
                         "layer_stats(..., bins=50) rather than bins=0")
    plt = _plt()
    ncol = max(len(v) for v in rows.values()) + 1
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.55 * ncol + 1.2, 1.7 * len(rows) + 0.6),
                             squeeze=False, dpi=80)
    for i, (key, recs) in enumerate(rows.items()):
        lo, hi = _row_range(recs)
        edges = np.linspace(lo, hi, bins + 1)
        relu = recs[0].applied == "module" and recs[0].nonlinearity in RECTIFIERS
        for j, r in enumerate(recs):
            ax = axes[i, j]
            frac = _rebin(r, edges, relu)
            ax.stairs(frac, edges, fill=True, color="C0", alpha=0.8)
            ax.set_xlim(lo, hi)
            ax.set_yticks([])
            ax.tick_params(labelsize=6)
            note = f"μ {r.activation.mean:.2g}\nσ {r.activation.std:.2g}"
            if relu:
                note += f"\n0s {100 * r.activation.zero_frac:.0f}%"
            ax.text(0.97, 0.95, note, transform=ax.transAxes, ha="right", va="top", fontsize=6)
            if i == 0:
                ax.set_title(f"layer {cols[key][j][0]}\n{r.name}" if layers is None else r.name,
                             fontsize=7)
        for j in range(len(recs), ncol - 1):
            axes[i, j].axis("off")
        axes[i, 0].set_ylabel(SCHEME_LABELS.get(key, key), fontsize=7)
        ax = axes[i, -1]
        stds = [r.activation.std for r in recs]
        ax.semilogy([k for k, _ in cols[key]], stds, "o-", ms=3, color="C3")
        if i:
            ax.sharey(axes[0, -1])
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_title("std per layer", fontsize=7)
        if i == len(rows) - 1:
            ax.set_xlabel("layer", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_profile(report: LayerReport, path: str | os.PathLike,
                       title: str | None = None) -> Path:
    """One report across depth: activation std and the RMS of d(loss)/d(activation) per layer
    (log scale), parameter gradient norm per weighted layer, dead and saturated shares."""
    plt = _plt()
    recs = list(report)
    x = np.arange(1, len(recs) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=80)
    ax = axes[0]
    ax.semilogy(x, [r.activation.std or np.nan for r in recs], "o-", ms=3, label="activation std")
    grads = [r.grad.rms if r.grad is not None and r.grad.rms else np.nan for r in recs]
    if not all(np.isnan(grads)):
        ax.semilogy(x, grads, "s-", ms=3, label="RMS of d loss / d activation")
    ax.set_title("signal forward and backward", fontsize=9)
    ax = axes[1]
    w = [(i, r.param_grad_norm, r.param_norm) for i, r in zip(x, recs)
         if r.param_grad_norm is not None]
    if w:
        ax.semilogy([a for a, _, _ in w], [g or np.nan for _, g, _ in w], "o-", ms=3,
                    label="‖∇θ L‖")
        ax.semilogy([a for a, _, _ in w], [g / n if n else np.nan for _, g, n in w], "s-",
                    ms=3, label="‖∇θ L‖ / ‖θ‖")
    ax.set_title("parameter gradients", fontsize=9)
    ax = axes[2]
    dead = [100 * r.dead_frac if r.dead_frac is not None else np.nan for r in recs]
    sat = [100 * r.saturated_frac if r.saturated_frac is not None else np.nan for r in recs]
    ax.bar(x - 0.2, np.nan_to_num(dead), width=0.4, label="dead ReLUs %")
    ax.bar(x + 0.2, np.nan_to_num(sat), width=0.4, label="saturated %")
    ax.set_ylim(0, 100)
    ax.set_title("dead and saturated units", fontsize=9)
    for ax in axes:
        ax.set_xticks(x, [r.name for r in recs], rotation=90, fontsize=6)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --- over training ------------------------------------------------------------------------------
def _series_axes(title: str, ylabel: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=90)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _finish_series(fig, ax, n: int, path) -> Path:
    if n:
        ax.legend(fontsize=6, ncol=2 if n > 8 else 1, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def _values(col: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in col], dtype=np.float64)


def plot_grad_norms(record: dict, path: str | os.PathLike) -> Path:
    """‖∇θ L‖ of each weighted layer over training (log scale), shallow to deep in colour."""
    steps = record["steps"]
    layers = {k: v for k, v in record["layers"].items()
              if any(g is not None for g in v["grad_norm"])}
    fig, ax = _series_axes("gradient norm per layer", "‖∇θ L‖ (layer's parameters)")
    for c, (name, v) in zip(_colours(len(layers)), layers.items()):
        ax.semilogy(steps, _values(v["grad_norm"]), color=c, lw=1.2, label=name)
    return _finish_series(fig, ax, len(layers), path)


def plot_unit_fractions(record: dict, path: str | os.PathLike, kinds=RECTIFIERS) -> Path:
    """The share of dead ReLUs (``kinds=RECTIFIERS``) or saturated units (``SATURATING``) of
    each layer over training."""
    dead = tuple(kinds) == tuple(RECTIFIERS)
    key = "dead_frac" if dead else "saturated_frac"
    layers = {k: v for k, v in record["layers"].items() if v.get("nonlinearity") in kinds
              and any(f is not None for f in v.get(key, []))}
    fig, ax = _series_axes("dead ReLUs per layer" if dead else "saturated units per layer",
                           "dead units %" if dead else "saturated entries %")
    for c, (name, v) in zip(_colours(len(layers)), layers.items()):
        ax.plot(record["steps"], 100 * _values(v[key]), color=c, lw=1.2, label=name)
    ax.set_ylim(-2, 102)
    return _finish_series(fig, ax, len(layers), path)


def plot_update_ratios(record: dict, path: str | os.PathLike, weights_only: bool = True) -> Path:
    """‖Δθ‖/‖θ‖ per parameter and step (log scale); the dashed line marks the 1e-3 rule of
    thumb. Biases are left out unless ``weights_only=False``."""
    params = {k: v for k, v in record["params"].items()
              if (not weights_only or k.rsplit(".", 1)[-1].startswith("weight"))
              and any(r is not None for r in v.get("update_ratio", []))}
    fig, ax = _series_axes("update size relative to weight size", "‖Δθ‖ / ‖θ‖")
    for c, (name, v) in zip(_colours(len(params)), params.items()):
        ax.semilogy(record["steps"], _values(v["update_ratio"]), color=c, lw=1.2, label=name)
    ax.axhline(1e-3, color="k", ls="--", lw=1)
    return _finish_series(fig, ax, len(params), path)


def plot_training(record: dict, out_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """All pictures of a record into ``out_dir``: ``{prefix}grad_norms.png``,
    ``{prefix}dead_relus.png`` (with rectifier layers), ``{prefix}saturation.png`` (with tanh or
    sigmoid layers) and ``{prefix}update_ratios.png``."""
    out = Path(out_dir)
    paths = [plot_grad_norms(record, out / f"{prefix}grad_norms.png")]
    kinds = {v.get("nonlinearity") for v in record["layers"].values()}
    if kinds & set(RECTIFIERS):
        paths.append(plot_unit_fractions(record, out / f"{prefix}dead_relus.png", RECTIFIERS))
    if kinds & set(SATURATING):
        paths.append(plot_unit_fractions(record, out / f"{prefix}saturation.png", SATURATING))
    paths.append(plot_update_ratios(record, out / f"{prefix}update_ratios.png"))
    return paths
