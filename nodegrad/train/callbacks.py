"""Callbacks: hooks into :func:`nodegrad.train.fit` for progress, history, early stopping,
checkpoints of the best/last weights, learning-rate schedules, gradient clipping and a NaN guard.

A callback overrides any of ``on_train_begin``, ``on_epoch_begin``, ``on_after_backward``
(gradients exist, the optimiser has not stepped), ``on_batch_end``, ``on_epoch_end`` and
``on_train_end``; each receives the :class:`~nodegrad.train.loop.Trainer`. Callbacks that keep
state across epochs expose ``state_dict``/``load_state_dict`` so a resumed run continues exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _backend as B
from ..io import atomic_write, save
from ..optim.clip import clip_grad_norm_, clip_grad_value_
from ..optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

if TYPE_CHECKING:
    from .loop import Trainer

np = B.np


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinity (in the loss, a gradient or a parameter)."""


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, tr: Trainer) -> None: ...
    def on_epoch_begin(self, tr: Trainer) -> None: ...
    def on_after_backward(self, tr: Trainer) -> None: ...
    def on_batch_end(self, tr: Trainer, logs: dict) -> None: ...
    def on_epoch_end(self, tr: Trainer, logs: dict) -> None: ...
    def on_train_end(self, tr: Trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _is_interactive(stream) -> bool:
    ci = any(os.environ.get(k) for k in ("CI", "GITHUB_ACTIONS"))
    return bool(getattr(stream, "isatty", lambda: False)()) and not ci


def _fmt(logs: dict, keys) -> str:
    return "  ".join(f"{k} {logs[k]:.4g}" for k in keys if isinstance(logs.get(k), float | int))


class ProgressBar(Callback):
    """Epoch, step, loss, metrics, throughput and ETA: a live bar (tqdm if installed) on a
    terminal; in CI or when output is not a TTY, one line every ``max(1, epochs // lines)``
    epochs."""

    def __init__(self, stream=None, lines: int = 20, interactive: bool | None = None):
        self.stream = stream or sys.stdout
        self.lines = lines
        self.interactive = _is_interactive(self.stream) if interactive is None else interactive
        self._bar = None

    def on_train_begin(self, tr):
        self._t0, self._s0 = time.perf_counter(), tr.step
        try:
            k = getattr(tr, "accumulate", 1)  # optimiser steps of k batches
            self._total: int | None = tr.epochs * -(-len(tr.train_loader) // k)
        except TypeError:  # a stream of unknown length: steps and rate, without total or ETA
            self._total = None
        if self.interactive:
            try:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=self._total, initial=tr.step, file=self.stream,
                                 unit="step", dynamic_ncols=True)
            except ImportError:
                self._bar = None
        self._last = 0.0

    def _eta(self, tr) -> str:
        dt = time.perf_counter() - self._t0
        rate = (tr.step - self._s0) / dt if dt > 0 else 0.0
        if self._total is None:
            return f"{rate:.0f} steps/s"
        left = (self._total - tr.step) / rate if rate > 0 else 0.0
        return f"{rate:.0f} steps/s  ETA {left:.0f}s"

    def on_batch_end(self, tr, logs):
        if not self.interactive:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(epoch=tr.epoch + 1, loss=f"{logs['loss']:.4f}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last > 0.1:
            self._last = now
            total = "" if self._total is None else f"/{self._total}"
            self.stream.write(f"\repoch {tr.epoch + 1}/{tr.epochs}  step {tr.step}{total}"
                              f"  loss {logs['loss']:.4f}  {self._eta(tr)}   ")
            self.stream.flush()

    def on_epoch_end(self, tr, logs):
        every = max(1, tr.epochs // self.lines)
        if self.interactive and self._bar is not None:
            self._bar.set_postfix_str(_fmt(logs, [k for k in logs if k not in ("epoch", "step")]))
            return
        if self.interactive or (tr.epoch + 1) % every == 0 or tr.epoch + 1 == tr.epochs:
            keys = [k for k in logs if k not in ("epoch", "step", "time")]
            self.stream.write(("\r" if self.interactive else "")
                              + f"epoch {tr.epoch + 1}/{tr.epochs}  step {tr.step}  "
                              + _fmt(logs, keys) + f"  {self._eta(tr)}\n")
            self.stream.flush()

    def on_train_end(self, tr):
        if self._bar is not None:
            self._bar.close()


class HistoryWriter(Callback):
    """Write the per-epoch history to ``history.csv`` and ``history.json`` (atomically) in a
    run directory after every epoch; a resumed run rewrites them from its restored history.
    (The per-step rows are appended to ``steps.jsonl`` by the trainer.)"""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, tr, logs):
        # a callback before this one may have stopped the run at this epoch: its reason is part
        # of the history written now (the run may end here)
        tr.history.stop_reason = tr.stop_reason
        write_history(tr.history, self.run_dir)

    def on_train_end(self, tr):
        write_history(tr.history, self.run_dir)


def write_history(history, run_dir: Path) -> None:
    """history.csv and history.json: one row per epoch (the steps are in steps.jsonl)."""
    rows = history.epochs
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(Path(run_dir) / "history.csv", buf.getvalue().encode())
    doc = {"epochs": [{k: _json_number(v) for k, v in r.items()} for r in rows],
           "stop_reason": history.stop_reason, "steps": "steps.jsonl"}
    atomic_write(Path(run_dir) / "history.json",
                 json.dumps(doc, indent=1, allow_nan=False).encode())


def _json_number(v):
    """``v`` for strict JSON: a NaN or infinite float (a diverged loss) becomes null, which
    every JSON reader accepts (Python's ``NaN`` token is not JSON); history.csv keeps ``nan``."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _better(mode: str, a: float, best: float, min_delta: float) -> bool:
    return a < best - min_delta if mode == "min" else a > best + min_delta


class MonitorError(KeyError, ValueError):
    """A callback's ``monitor`` is not among the logged metrics (a KeyError for the missing
    key and a ValueError for the bad option; printed as its message, without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _missing_monitor(logs: dict, monitor: str, who: str) -> str:
    """Why ``monitor`` is not in ``logs``: what is logged, and what would log it."""
    hint = (" (val_* metrics come from validation: pass a val_loader to fit)"
            if monitor.startswith("val_") and not any(k.startswith("val_") for k in logs)
            else "")
    return (f"{who}: monitor {monitor!r} is not logged; the logged metrics are "
            f"{', '.join(sorted(logs))}{hint}")


def _monitored(logs: dict, monitor: str, who: str) -> float:
    if monitor not in logs:
        raise MonitorError(_missing_monitor(logs, monitor, who))
    return float(logs[monitor])


def _check_mode(mode: str, who: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"{who}: mode must be 'min' or 'max', got {mode!r}")
    return mode


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` (its absolute value, as Keras)
    for ``patience`` epochs; with ``restore_best_weights`` the model ends with the weights of
    its best epoch, whether the run stopped early or ran all its epochs (Keras restores only
    on a stop). With ``baseline``, as Keras, the patience counter restarts only on an epoch that
    also beats the baseline. A NaN ``monitor`` counts as no improvement. Each ``fit`` starts
    afresh (as Keras), so one instance can serve several runs; a resumed run continues from
    its checkpoint's state. A ``monitor`` that is not logged raises :class:`MonitorError` at
    the first epoch's end."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 10,
                 min_delta: float = 0.0, restore_best_weights: bool = True,
                 baseline: float | None = None):
        self.monitor, self.patience = monitor, int(patience)
        self.mode = _check_mode(mode, "EarlyStopping")
        self.min_delta, self.restore_best_weights = abs(float(min_delta)), restore_best_weights
        self.baseline = None if baseline is None else float(baseline)
        self._reset()

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_epoch, self.stopped_epoch = 0, -1, None
        self.best_weights: dict | None = None

    def on_train_begin(self, tr):
        if getattr(tr, "resumed_from", None) is None:  # a new run: no best from an earlier one
            self._reset()

    def on_epoch_end(self, tr, logs):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch = value, tr.epoch
            if self.restore_best_weights:
                self.best_weights = {k: np.array(v.numpy(), copy=True)
                                     for k, v in tr.model.state_dict().items()}
            beats_baseline = self.baseline is None \
                or _better(self.mode, value, self.baseline, self.min_delta)
            self.wait = 0 if beats_baseline else self.wait + 1
        else:
            self.wait += 1
        if self.wait and self.wait >= self.patience:
            self.stopped_epoch = tr.epoch
            tr.stop_training = True
            what = "improved" if self.baseline is None else f"beaten {self.baseline:.4g}"
            tr.stop_reason = (f"early stopping: {self.monitor} has not {what} for "
                              f"{self.patience} epochs (best {self.best:.4g} at epoch "
                              f"{self.best_epoch + 1})")

    def on_train_end(self, tr):
        # the best epoch's weights whenever a later epoch changed them, stopped or not
        last = tr.history.epochs[-1]["epoch"] - 1 if tr.history.epochs else None
        if self.restore_best_weights and self.best_weights is not None \
                and self.best_epoch != last:
            from ..tensor import Tensor
            tr.model.load_state_dict({k: Tensor._of(v) for k, v in self.best_weights.items()})

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self.best_weights = state["best_weights"]


class ModelCheckpoint(Callback):
    """Save the model's weights as ``best.safetensors`` (by ``monitor``) and/or
    ``last.safetensors`` in ``run_dir`` at the end of every epoch, with the epoch (1-based, as
    in the history), step and model in their metadata. A ``monitor`` that is not
    logged writes no ``best.safetensors`` and warns once, naming the logged metrics."""

    def __init__(self, run_dir: str | os.PathLike, monitor: str = "val_loss", mode: str = "min",
                 save_best: bool = True, save_last: bool = True):
        self.run_dir, self.monitor = Path(run_dir), monitor
        self.mode = _check_mode(mode, "ModelCheckpoint")
        self.save_best, self.save_last = save_best, save_last
        self.best = math.inf if mode == "min" else -math.inf
        self._warned = False

    def on_epoch_end(self, tr, logs):
        # the epoch as history.csv numbers it (1-based), so the two agree
        meta = {"epoch": tr.epoch + 1, "step": tr.step, **tr.model_info}
        main = getattr(tr, "is_main", True)
        if self.save_best and self.monitor not in logs and main and not self._warned:
            self._warned = True
            warnings.warn(_missing_monitor(logs, self.monitor, "ModelCheckpoint")
                          + "; best.safetensors is not written", RuntimeWarning, stacklevel=2)
        if not main:  # distributed: rank 0 writes, the others track
            if self.save_best and self.monitor in logs \
                    and _better(self.mode, float(logs[self.monitor]), self.best, 0.0):
                self.best = float(logs[self.monitor])
            return
        if self.save_last:
            save(tr.model.state_dict(), self.run_dir / "last.safetensors", meta)
        if self.save_best and self.monitor in logs:
            value = float(logs[self.monitor])
            if _better(self.mode, value, self.best, 0.0):
                self.best = value
                save(tr.model.state_dict(), self.run_dir / "best.safetensors",
                     {**meta, "monitor": self.monitor, "value": value})

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


class LRSchedule(Callback):
    """Step a scheduler after every optimiser step (``interval="step"``) or every epoch;
    :class:`ReduceLROnPlateau` steps each epoch with the value of ``monitor`` (the default
    ``"val_loss"`` falls back to the training ``"loss"`` in a run without validation; any other
    ``monitor`` that is not logged raises :class:`MonitorError`)."""

    def __init__(self, scheduler: LRScheduler, interval: str = "step",
                 monitor: str = "val_loss"):
        if interval not in ("step", "epoch"):
            raise ValueError(f"LRSchedule: interval must be 'step' or 'epoch', got {interval!r}")
        self.scheduler, self.monitor = scheduler, monitor
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)
        self.interval = "epoch" if self.plateau else interval

    def on_batch_end(self, tr, logs):
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, tr, logs):
        if self.plateau:
            key = self.monitor
            if key not in logs:
                if key != "val_loss" or any(k.startswith("val_") for k in logs):
                    raise MonitorError(_missing_monitor(logs, key, "LRSchedule"))
                key = "loss"  # no validation: the training loss
            self.scheduler.step(logs[key])
        elif self.interval == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class GradientClipping(Callback):
    """Clip gradients before each step: by global norm (``max_norm``) or elementwise (``value``)."""

    def __init__(self, max_norm: float | None = None, value: float | None = None):
        if (max_norm is None) == (value is None):
            raise ValueError("GradientClipping: give exactly one of max_norm and value")
        self.max_norm, self.value = max_norm, value

    def on_after_backward(self, tr):
        params = list(tr.model.parameters())
        if self.max_norm is not None:
            clip_grad_norm_(params, self.max_norm)
        else:
            clip_grad_value_(params, self.value)


def _first_nonfinite(named) -> str | None:
    for name, a in named:
        if a is not None and not bool(B.backend_of(a).xp.isfinite(a).all()):
            return name
    return None


class NaNGuard(Callback):
    """Stop with a :class:`NonFiniteError` naming the step and the first non-finite loss,
    gradient or parameter, instead of training on garbage."""

    def on_after_backward(self, tr):
        if not math.isfinite(tr.last_loss):
            raise NonFiniteError(f"step {tr.step + 1} (epoch {tr.epoch + 1}): the loss is "
                                 f"{tr.last_loss}; stopping before the update")
        bad = _first_nonfinite((n, None if p.grad is None else p.grad._data)
                               for n, p in tr.model.named_parameters())
        if bad:
            raise NonFiniteError(f"step {tr.step + 1} (epoch {tr.epoch + 1}): the gradient of "
                                 f"parameter '{bad}' is not finite (loss {tr.last_loss:.4g}); "
                                 "stopping before the update (try a lower lr or clipping)")

    def on_batch_end(self, tr, logs):
        bad = _first_nonfinite((n, p._data) for n, p in tr.model.named_parameters())
        if bad:
            raise NonFiniteError(f"step {tr.step} (epoch {tr.epoch + 1}): parameter '{bad}' "
                                 "became non-finite after the update")
