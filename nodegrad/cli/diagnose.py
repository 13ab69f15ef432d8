"""``nodegrad diagnose``: per-layer activation and gradient statistics of a model at
initialisation, with warnings and pictures, and optionally their course over a short training.

The model is a zoo model (``--model mnist1d_cnn``) or the notes' deep MLP (``--model deep_mlp``
with ``--depth``, ``--width``, ``--activation``), initialised with ``--init`` (any
``nn.init.SCHEMES`` name). One batch of ``--batch-size`` training samples (drawn with
``--seed``) goes through :func:`nodegrad.diagnostics.stats.layer_stats`; the table and the
warnings are printed and written with the pictures to ``--out``:

- ``report.txt``, ``report.json`` (the statistics with histograms, the warnings, the options),
  ``activations.png`` (histogram per layer), ``profile.png`` (std, gradient RMS, dead and
  saturated shares across depth);
- with ``--steps N``: N training steps with a
  :class:`~nodegrad.diagnostics.callback.GradientFlowMonitor` recording every ``--every``
  steps: ``gradient_flow.json``, ``grad_norms.png``, ``dead_relus.png``/``saturation.png``,
  ``update_ratios.png``, and ``report_after.txt`` (the table after training);
- with ``--graph``: ``graph.dot`` and ``graph.svg`` of one training step's loss;
- with ``--curvature``: the three largest-magnitude Hessian eigenvalues of the loss at
  initialisation (Lanczos), printed and stored in ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings as _warnings
from collections.abc import Sequence
from pathlib import Path

from .. import _backend as B
from ..errors import DeviceError
from ..io import atomic_write
from ..train.callbacks import Callback
from .train import DATASETS, OPTIMIZERS, UsageError, _default_out, _loss_and_metrics, load_data

np = B.np

DEEP_MLP = "deep_mlp"
DEFAULTS = {"model": DEEP_MLP, "init": "default", "depth": 10, "width": 500,
            "activation": "tanh", "dataset": None, "batch_size": 256, "steps": 0, "every": None,
            "optimizer": None, "lr": None, "bins": 50, "seed": 0, "device": "cpu", "out": None,
            "overwrite": False, "graph": False, "curvature": False}
DEEP_MLP_TRAINING = {"optimizer": "sgd", "lr": 0.05}
_DEEP_ONLY = ("depth", "width", "activation")
# every file the command may write, so --overwrite replaces exactly these
OUTPUTS = ("report.txt", "report.json", "activations.png", "profile.png", "report_after.txt",
           "gradient_flow.json", "grad_norms.png", "dead_relus.png", "saturation.png",
           "update_ratios.png", "graph.dot", "graph.svg")


def parser(prog: str = "nodegrad diagnose") -> argparse.ArgumentParser:
    """The options of ``nodegrad diagnose`` (one-line errors, like the other subcommands)."""
    from ..models import REGISTRY
    from ..diagnostics.deep_mlp import ACTIVATIONS
    from ..nn.init import SCHEMES
    from .args import Parser, choice, count, float_in, positive_int

    d = DEFAULTS
    models = [DEEP_MLP, *REGISTRY]
    p = Parser(prog=prog, argument_default=argparse.SUPPRESS,
               description="Per-layer activation and gradient statistics of a model on one "
               "batch at initialisation: a table, warnings (dead ReLUs, saturation, vanishing "
               "or exploding gradients, collapsing activations) and pictures in --out; "
               "optionally their course over --steps training steps.")
    a = p.add_argument
    a("--model", type=choice(models, "model"), metavar="NAME",
      help=f"{DEEP_MLP} (the notes' deep MLP) or a zoo model: {', '.join(REGISTRY)} "
           f"(default {d['model']})")
    a("--init", type=choice(list(SCHEMES), "init"), metavar="NAME",
      help=f"weight init: {', '.join(SCHEMES)} (default {d['init']})")
    a("--depth", type=positive_int, help=f"{DEEP_MLP}: hidden layers (default {d['depth']})")
    a("--width", type=positive_int, help=f"{DEEP_MLP}: units per layer (default {d['width']})")
    a("--activation", type=choice(list(ACTIVATIONS), "activation"), metavar="NAME",
      help=f"{DEEP_MLP}: {', '.join(ACTIVATIONS)} (default {d['activation']})")
    a("--dataset", type=choice(list(DATASETS), "dataset"), metavar="NAME",
      help=f"one of: {', '.join(DATASETS)} (default: the model's own; mnist1d for "
           f"{DEEP_MLP})")
    a("--batch-size", type=positive_int,
      help=f"samples in the batch the statistics are taken on (default {d['batch_size']})")
    a("--steps", type=count, help="train this many steps, recording gradient flow (default 0)")
    a("--every", type=positive_int, metavar="K",
      help="with --steps: record every K steps (default: steps // 50, at least 1)")
    a("--optimizer", type=choice(list(OPTIMIZERS), "optimizer"), metavar="NAME",
      help=f"with --steps: one of {', '.join(OPTIMIZERS)} (default: the model's; "
           f"{DEEP_MLP_TRAINING['optimizer']} for {DEEP_MLP})")
    a("--lr", type=float_in(0.0, 1e3, lo_open=True),
      help=f"with --steps: learning rate (default: the model's; {DEEP_MLP_TRAINING['lr']} for "
           f"{DEEP_MLP})")
    a("--bins", type=count, help=f"histogram bins (default {d['bins']})")
    a("--seed", type=count, help=f"seed of the weights and the batch (default {d['seed']})")
    a("--device", help=f"cpu or cuda[:N] (default {d['device']})")
    a("--out", metavar="DIR", help="output directory (default runs/diagnose-MODEL-INIT-sSEED)")
    a("--overwrite", action="store_true", help="replace the files of an earlier diagnose in "
      "--out")
    a("--graph", action="store_true", help="also draw one training step's graph "
      "(graph.dot, graph.svg)")
    a("--curvature", action="store_true", help="also print the 3 largest-magnitude Hessian "
      "eigenvalues of the loss")
    return p


def _options(argv: Sequence[str]) -> dict:
    given = vars(parser().parse_args(list(argv)))
    o = {**DEFAULTS, **given}
    if o["model"] != DEEP_MLP:
        for k in _DEEP_ONLY:
            if k in given:
                raise UsageError(f"--{k} applies only to --model {DEEP_MLP}, not {o['model']}")
    if o["steps"] == 0:
        for k in ("every", "optimizer", "lr"):
            if k in given:
                raise UsageError(f"--{k} needs --steps N with N >= 1")
    if o["bins"] > 10_000:
        raise UsageError(f"--bins: expected at most 10000, got {o['bins']}")
    return o


def _resolve(o: dict) -> dict:
    from ..models import REGISTRY

    if o["model"] == DEEP_MLP:
        o["dataset"] = o["dataset"] or "mnist1d"
        o["task"] = "regression" if o["dataset"] == "regression1d" else "classification"
        train = DEEP_MLP_TRAINING
    else:
        spec = REGISTRY[o["model"]]
        o["dataset"] = o["dataset"] or spec.dataset
        if DATASETS[o["dataset"]] != spec.dataset:
            fits = [n for n, s in REGISTRY.items() if s.dataset == DATASETS[o["dataset"]]]
            raise UsageError(f"model {o['model']} is made for {spec.dataset}, not "
                             f"{o['dataset']}; models for {o['dataset']}: "
                             f"{', '.join(fits + [DEEP_MLP])}")
        o["task"] = spec.task
        train = spec.defaults
    try:
        B.get_backend(o["device"])
    except (DeviceError, ImportError) as e:  # an unknown device, or one without its backend
        raise UsageError(f"--device: {str(e).splitlines()[0]}") from None
    o["optimizer"] = o["optimizer"] or train["optimizer"]
    o["lr"] = o["lr"] or train["lr"]
    o["every"] = o["every"] or max(1, o["steps"] // 50)
    if o["out"] is None:
        o["out"] = _default_out(f"runs/diagnose-{o['model']}-{o['init']}-s{o['seed']}",
                                latest=o["overwrite"])
    return o


def _prepare_out(o: dict) -> Path:
    out = Path(o["out"])
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    for parent in out.parents:  # a directory cannot be made under a file
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is a file, not a directory")
            break
    if out.is_dir() and any(out.iterdir()):
        if not o["overwrite"]:
            raise UsageError(f"output directory {out} exists; pass --overwrite to replace its "
                             "diagnose files (or choose --out)")
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _build(o: dict, data):
    from .. import models
    from ..diagnostics.deep_mlp import DeepMLP
    from ..random import manual_seed

    if o["model"] == DEEP_MLP:
        manual_seed(o["seed"])
        size = int(np.prod(data.x_train.shape[1:]))
        classes = data.info.classes if o["task"] == "classification" else 1
        model = DeepMLP(size, o["depth"], o["width"], classes or 1, o["activation"],
                        init=o["init"])
    else:
        model = models.create(o["model"], seed=o["seed"], init=o["init"])
    return model.to(o["device"]) if o["device"] != "cpu" else model


def _batch(o: dict, data):
    from ..tensor import tensor

    n = len(data.x_train)
    idx = np.sort(np.random.default_rng(o["seed"]).choice(n, min(o["batch_size"], n),
                                                          replace=False))
    return (tensor(data.x_train[idx], device=o["device"]),
            tensor(data.y_train[idx], device=o["device"]))


class _StopAfter(Callback):
    """Stop ``fit`` after a number of optimiser steps (mid-epoch if need be)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_batch_end(self, tr, logs) -> None:
        if tr.step >= self.steps:
            tr.stop_training = True


def _train(o: dict, model, data, out: Path, say) -> tuple[dict, int, str | None]:
    """--steps: train with the gradient-flow callback; returns the record, the number of steps
    taken and why training stopped early (a non-finite loss or gradient), if it did."""
    from .. import data as D
    from .. import optim
    from .. import train as T
    from ..diagnostics.callback import GradientFlowMonitor
    from ..diagnostics.plots import plot_training

    loader = D.DataLoader(data.train, batch_size=o["batch_size"], shuffle=True, seed=o["seed"],
                          device=o["device"])
    opt = getattr(optim, OPTIMIZERS[o["optimizer"]])(model.parameters(), lr=o["lr"])
    monitor = GradientFlowMonitor(o["every"], run_dir=out)
    epochs = math.ceil(o["steps"] / len(loader))
    say(f"training {o['steps']} steps ({o['optimizer']} lr {o['lr']}, batch {o['batch_size']}),"
        f" recording every {o['every']} steps")
    stopped = None
    trainer = T.Trainer(model, _loss_and_metrics(o["task"])[0], opt, loader, epochs=epochs,
                        callbacks=[monitor, _StopAfter(o["steps"])], metrics=[], progress=False)
    try:
        trainer.fit()
    except T.NonFiniteError as e:
        stopped = str(e).splitlines()[0]
        monitor.remove()
        monitor.write()
        if monitor.record["steps"]:
            plot_training(monitor.record, out)
    return monitor.record, trainer.step, stopped  # the optimiser steps taken


def _graph(model, loss_fn, x, y, out: Path) -> list[str]:
    """One training step's loss graph as graph.dot (and graph.svg when Graphviz renders)."""
    import inspect

    try:
        from ..diagnostics.graph import draw_graph
    except ImportError as e:
        raise ImportError(f"--graph needs nodegrad.diagnostics.graph: {e}") from None
    model.train()
    loss = loss_fn(model(x), y)
    kw = {"params": dict(model.named_parameters())} \
        if "params" in inspect.signature(draw_graph).parameters else {}
    draw_graph(loss, out / "graph.dot", **kw)
    notes = []
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        draw_graph(loss, out / "graph.svg", **kw)
    if caught:
        notes.append(f"graph.svg not rendered: {str(caught[0].message).splitlines()[0]}")
    return notes


def _curvature(model, loss_fn, x, y, seed: int) -> list[float]:
    try:
        from ..diagnostics.curvature import model_hessian_eigenvalues
    except ImportError as e:
        raise ImportError(f"--curvature needs nodegrad.diagnostics.curvature: {e}") from None
    model.train()
    return [float(v) for v in model_hessian_eigenvalues(model, loss_fn, x, y, k=3,
                                                         method="lanczos", iters=30,
                                                         seed=seed)]


def run(argv: Sequence[str]) -> int:
    """``nodegrad diagnose ...``: returns the exit status."""
    from ..diagnostics import plots as P
    from ..diagnostics.stats import layer_stats, warnings

    o = _resolve(_options(argv))
    out = _prepare_out(o)
    say = print
    data = load_data(o["dataset"])
    model = _build(o, data)
    x, y = _batch(o, data)
    loss_fn = _loss_and_metrics(o["task"])[0]
    what = (f"{DEEP_MLP} depth {o['depth']} width {o['width']} {o['activation']}"
            if o["model"] == DEEP_MLP else o["model"])
    say(f"diagnosing {what}, init {o['init']}, on a batch of {len(x)} {o['dataset']} samples "
        f"(seed {o['seed']}) -> {out}")
    report = layer_stats(model, x, y, loss_fn, bins=o["bins"])
    found = warnings(report)
    text = report.table() + "\n\n" + ("warnings:\n" + "\n".join(f"  {w}" for w in found)
                                      if found else "no warnings")
    print(text)
    atomic_write(out / "report.txt", (text + "\n").encode())
    files = ["report.txt", "report.json"]
    result: dict = {"options": {k: v for k, v in o.items()}, "report": report.to_dict(),
                    "warnings": found}
    if o["bins"]:
        P.plot_activation_grid({o["init"]: report}, out / "activations.png",
                               title=f"{what}, init {o['init']}: activations per layer")
        files.append("activations.png")
    P.plot_layer_profile(report, out / "profile.png", title=f"{what}, init {o['init']}")
    files.append("profile.png")
    if o["curvature"]:
        eig = _curvature(model, loss_fn, x, y, o["seed"])
        result["hessian_eigenvalues"] = eig
        print("largest-magnitude Hessian eigenvalues of the loss: "
              + ", ".join(f"{v:.4g}" for v in eig))
    if o["graph"]:
        for note in _graph(model, loss_fn, x, y, out):
            print(note)
        files += [f for f in ("graph.dot", "graph.svg") if (out / f).exists()]
    if o["steps"]:
        record, done, stopped = _train(o, model, data, out, say)
        if stopped:
            print(f"training stopped early: {stopped}")
        after = layer_stats(model, x, y, loss_fn, bins=o["bins"])
        later = warnings(after)
        losses = [v for v in record["loss"] if v is not None]
        tail = (f"after {done} steps: batch loss "
                f"{after.loss:.4g} (was {report.loss:.4g})")
        after_text = after.table() + "\n\n" + ("warnings:\n" + "\n".join(
            f"  {w}" for w in later) if later else "no warnings")
        atomic_write(out / "report_after.txt", (after_text + "\n").encode())
        print(tail)
        for w in later:
            print(f"  {w}")
        result["training"] = {"steps": done, "stopped": stopped,
                              "recorded_steps": record["steps"],
                              "recorded_losses": losses, "report_after": after.to_dict(),
                              "warnings_after": later}
        files += ["report_after.txt"] + [f for f in OUTPUTS[5:10] if (out / f).exists()]
    atomic_write(out / "report.json", json.dumps(result, indent=1).encode())
    print(f"files in {out}: {', '.join(files)}")
    return 0
