r"""Gradient flow over training: a :func:`nodegrad.train.fit` callback that records, every
``every`` steps, per layer the gradient norm, the activation std and the shares of dead ReLUs
and saturated units, and per parameter the relative size of the optimiser's update.

The recorded steps are the first and every ``every``-th after it (1-based: 1, every + 1,
2·every + 1, …), so the picture starts at initialisation. On a recorded step:

- forward hooks on the layers (as :func:`~nodegrad.diagnostics.stats.layer_modules` chooses
  them) keep the training forward pass's outputs; validation passes (eval mode) are ignored.
  With ``fit(..., jit=True)`` the recorded steps run eagerly (:attr:`eager_step`), since a
  replayed program runs no hooks; the others are replayed;
- ``on_after_backward`` reads each layer's parameter gradient norm ‖∇θ L‖ (before any clipping
  done by callbacks listed after this one) and copies the parameters;
- ``on_batch_end``, after the optimiser step, records ‖Δθ‖/‖θ‖ = ‖θ_after − θ_before‖ /
  ‖θ_before‖ for every parameter (None where ‖θ_before‖ = 0, e.g. biases initialised to zero).
  For plain SGD this is lr·‖∇θ L‖/‖θ‖; a common rule of thumb wants it near 1e-3.

The record is JSON-able (:attr:`GradientFlowMonitor.record`), saved in checkpoints through
``state_dict`` so a resumed run continues it, and written with pictures to the run directory.
"""

from __future__ import annotations

import json
import math
import os
import warnings as _warnings
from pathlib import Path

from .. import _backend as B
from ..io import atomic_write
from ..train.callbacks import Callback
from .stats import (first_tensor, graph_kinds, layer_modules, module_kind,
                    unit_fractions)

RECORD_FILE = "gradient_flow.json"


def _norm(a) -> float:
    """‖a‖₂ with one BLAS dot product (float16 and friends in float32)."""
    xp = B.backend_of(a).xp
    a = a.ravel()
    if a.dtype not in (xp.float32, xp.float64):
        a = a.astype(xp.float32)
    return math.sqrt(float(xp.dot(a, a)))


class GradientFlowMonitor(Callback):
    """Record gradient flow every ``every`` steps (the first step included).

    ``run_dir`` (default: the run directory ``fit`` was given, if any) receives
    ``gradient_flow.json`` at the end of every epoch and of training, and with ``plots=True``
    the pictures of :func:`nodegrad.diagnostics.plots.plot_training` at the end.
    """

    def __init__(self, every: int = 10, run_dir: str | os.PathLike | None = None,
                 plots: bool = True):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"GradientFlowMonitor: every must be an integer >= 1, got "
                             f"{every!r}")
        self.every, self.plots = every, plots
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.record: dict = {"every": every, "steps": [], "loss": [], "layers": {},
                             "params": {}}
        self._handles: list = []
        self._armed = False
        self._acts: dict = {}
        self._kinds: dict = {}
        self._before: dict | None = None
        self._row: dict | None = None

    # --- hooks ----------------------------------------------------------------------------------
    def _install(self, model) -> None:
        self.remove()
        self._layers = layer_modules(model)
        self._model = model
        for name, m in self._layers:
            self._handles.append(m.register_forward_hook(self._keep(name, m)))
        self._handles.append(model.register_forward_hook(self._finish))

    def _keep(self, name: str, m):
        def hook(mod, inputs, out):
            if not self._armed or not self._model.training or name in self._acts:
                return None
            t = first_tensor(out)
            if t is not None:
                self._acts[name] = (m, t.node, t._data)
            return None
        return hook

    def _finish(self, model, inputs, out) -> None:
        """After the whole forward pass: which functional nonlinearity each layer feeds."""
        if not self._armed or not model.training:
            return None
        nodes = {node: n for n, (_, node, _) in self._acts.items() if node is not None}
        exclude = {node for m, node, _ in self._acts.values()
                   if module_kind(m) is not None and node is not None}
        self._kinds = graph_kinds(first_tensor(out), nodes, exclude)
        return None

    def remove(self) -> None:
        """Take the forward hooks off the model (done at the end of training)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _arm(self, tr) -> None:
        self._armed = tr.step % self.every == 0
        self._acts, self._kinds = {}, {}

    @property
    def eager_step(self) -> bool:
        """Whether the coming step is recorded: ``fit`` then runs it eagerly under ``jit``, so
        the forward hooks see its activations."""
        return self._armed

    # --- the callback ---------------------------------------------------------------------------
    def on_train_begin(self, tr) -> None:
        if self.run_dir is None and tr.run_dir is not None:
            self.run_dir = tr.run_dir
        self._install(tr.model)
        self._arm(tr)

    def on_after_backward(self, tr) -> None:
        if not self._armed:
            return
        self._armed = False
        layers: dict = {}
        params: dict = {}
        self._before = {}
        if not self._acts and self._layers:
            _warnings.warn(f"GradientFlowMonitor: the forward hooks saw no training-mode "
                           f"activations on step {tr.step + 1} (a compiled model runs no hooks "
                           "when it replays); act_std, dead_frac and saturated_frac are None "
                           "for it", RuntimeWarning, stacklevel=2)
        for name, m in self._layers:
            entry: dict = {"type": type(m).__name__}
            own = "" if m is tr.model else name
            sq, seen = 0.0, False
            for pname, p in m.named_parameters():
                full = f"{own}.{pname}" if own else pname
                g = None if p.grad is None else _norm(p.grad._data)
                params[full] = {"layer": name, "norm": _norm(p._data), "grad_norm": g}
                self._before[full] = (p, B.backend_of(p._data).xp.array(p._data, copy=True))
                if g is not None:
                    sq, seen = sq + g ** 2, True
            entry["grad_norm"] = math.sqrt(sq) if seen else None
            if name in self._acts:
                _, _, a = self._acts[name]
                kind, applied = module_kind(m), "module"
                if kind is None:
                    kind = self._kinds.get(name)
                    applied = "next" if kind else None
                dead, sat = unit_fractions(a, kind, applied)
                xp = B.backend_of(a).xp
                entry.update(act_std=float(xp.std(a.astype(xp.float64, copy=False))),
                             dead_frac=dead, saturated_frac=sat, nonlinearity=kind)
            layers[name] = entry
        self._acts = {}
        self._row = {"layers": layers, "params": params, "loss": tr.last_loss}

    def on_batch_end(self, tr, logs) -> None:
        if self._row is not None:
            for full, (p, before) in self._before.items():
                n0 = self._row["params"][full]["norm"]
                step = _norm(p._data - before)
                self._row["params"][full]["update_ratio"] = step / n0 if n0 > 0 else None
            self._append(tr.step, self._row)
            self._row, self._before = None, None
        self._arm(tr)

    def _append(self, step: int, row: dict) -> None:
        rec = self.record
        k = len(rec["steps"])
        rec["steps"].append(step)
        loss = row["loss"]
        rec["loss"].append(loss if math.isfinite(loss) else None)
        for group, keys in (("layers", ("grad_norm", "act_std", "dead_frac", "saturated_frac")),
                            ("params", ("grad_norm", "norm", "update_ratio"))):
            table = rec[group]
            for name, entry in row[group].items():
                if name not in table:
                    meta = {m: entry[m] for m in ("type", "layer", "nonlinearity")
                            if m in entry}
                    table[name] = {**meta, **{c: [None] * k for c in keys}}
                elif entry.get("nonlinearity") and not table[name].get("nonlinearity"):
                    table[name]["nonlinearity"] = entry["nonlinearity"]
                for c in keys:
                    v = entry.get(c)
                    table[name][c].append(v if v is None or math.isfinite(v) else None)
            for col in table.values():
                for c in keys:
                    if len(col[c]) < k + 1:
                        col[c].append(None)

    def on_epoch_end(self, tr, logs) -> None:
        self.write()

    def on_train_end(self, tr) -> None:
        self.remove()
        self.write()
        if self.plots and self.run_dir is not None and self.record["steps"]:
            from .plots import plot_training

            plot_training(self.record, self.run_dir)

    def write(self) -> Path | None:
        """Write the record to ``run_dir/gradient_flow.json`` (if there is a run directory)."""
        if self.run_dir is None:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / RECORD_FILE
        atomic_write(path, json.dumps(self.record, indent=1).encode())
        return path

    def state_dict(self) -> dict:
        return {"every": self.every, "record": self.record}  # encoded at once by the checkpoint

    def load_state_dict(self, state: dict) -> None:
        if state["every"] != self.every:
            raise ValueError(f"GradientFlowMonitor: the checkpoint recorded every "
                             f"{state['every']} steps, this callback every {self.every}")
        self.record = json.loads(json.dumps(state["record"]))
