"""The training loop: :func:`fit` (minibatch training with callbacks, validation, checkpoints
and exact resume), :func:`evaluate` and :func:`predict`.

Modes switch automatically: ``model.train()`` while fitting, ``model.eval()`` and ``no_grad``
for validation and prediction (dropout off, batch norm on running statistics); each of them
leaves the model in the mode it found it in.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import _backend as B
from ..autodiff import no_grad
from ..data import ArrayDataset, DataLoader
from ..io import CheckpointError, remove_stale_temps
from ..jit import jit as _jit
from ..nn import Module
from ..nn.layers.dropout import Dropout, _DropoutVariant
from ..nn.module import module_device
from ..optim import Optimizer
from ..optim.lr_scheduler import LRScheduler
from ..random import default_generator
from ..tensor import Tensor
from . import checkpoint as C
from .callbacks import Callback, HistoryWriter, LRSchedule, NaNGuard, ProgressBar
from .history import STEPS_FILE, History, StepLog
from .metrics import METRICS

np = B.np


def _split_batch(batch) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        if "x" not in batch and "input" not in batch:
            raise ValueError(f"a dict batch holds its inputs under 'x' or 'input' (and targets "
                           f"under 'y' or 'target'); got the keys {sorted(map(str, batch))}")
        return batch["x"] if "x" in batch else batch["input"], batch.get("y", batch.get("target"))
    if isinstance(batch, list | tuple):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def _host(t) -> np.ndarray:
    a = t.numpy() if isinstance(t, Tensor) else t
    return B.backend_of(a).to_host(a) if B.is_array(a) else np.asarray(a)


def _first_leaf(x):
    """The first tensor or array (with a batch axis) in ``x``: itself, or inside a dict, list
    or tuple (a batch of several inputs)."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, list | tuple):
        for v in x:
            if (leaf := _first_leaf(v)) is not None:
                return leaf
        return None
    return x if getattr(x, "ndim", 0) >= 1 else None


def _batch_len(x, y) -> int:
    """Samples in a batch: the leading size of its first tensor, so that a dict or tuple of
    inputs counts its samples, not its keys (``len`` of a dict is its number of entries)."""
    leaf = _first_leaf(x)
    if leaf is None:
        leaf = _first_leaf(y)
    return int(leaf.shape[0]) if leaf is not None else len(x)


def _primary(out):
    """The output the metrics score: the model's output, or the first one of a tuple/list."""
    return out[0] if isinstance(out, list | tuple) and out else out


def _host_tree(out):
    """A model's output on the host: an array, or a tuple of arrays for a tuple/list output."""
    if isinstance(out, list | tuple):
        return tuple(_host(o) for o in out)
    return _host(out)


def _concat(outs: list):
    """Concatenate per-batch outputs (arrays, or tuples of arrays element by element)."""
    if isinstance(outs[0], tuple):  # a per-batch scalar (an auxiliary loss) is stacked
        return tuple(np.concatenate(parts) if parts[0].ndim else np.stack(parts)
                     for parts in zip(*outs))
    return np.concatenate(outs)


def _check_count(value, name: str, lo: int) -> int:
    """``value`` as an int >= ``lo``; a fraction, a smaller count or a bool is an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"fit: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _windows(batches: Iterable, k: int):
    """The batches in lists of ``k`` (the last one of an epoch may be shorter)."""
    it = iter(batches)
    while window := list(itertools.islice(it, k)):
        yield window


def _batches(loader) -> int | None:
    """Batches per epoch, or None for a loader of unknown length (an unsized iterable)."""
    try:
        return len(loader)
    except TypeError:
        return None


def _next_epoch(loader) -> int:
    """The epoch a loader's next iteration should draw: the one after any it has started
    (0 for a fresh loader, ``e`` after ``set_epoch(e)``), so that training again with the same
    loader continues its sequence of orders instead of replaying epoch 0."""
    try:
        state = loader.state_dict()
    except (AttributeError, TypeError):
        return 0
    return int(state["epoch"]) + (1 if state.get("batch") else 0)


def _loader_state(loader) -> dict | None:
    """A loader's position for a checkpoint; None for a plain iterable (a list of batches),
    which a resumed run re-reads from the start of the epoch, skipping the batches done."""
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def _no_batches(fn: str, loader) -> ValueError:
    """The error for a loader that yields nothing, with what makes it empty."""
    ds = getattr(loader, "dataset", None)
    parts = []
    if ds is not None and hasattr(ds, "__len__"):
        parts.append(f"{len(ds)} samples")
    for k in ("batch_size", "drop_last"):
        if hasattr(loader, k):
            parts.append(f"{k}={getattr(loader, k)}")
    why = f" ({', '.join(parts)})" if parts else ""
    hint = ("; lower batch_size or pass drop_last=False" if getattr(loader, "drop_last", False)
            else "")
    return ValueError(f"{fn}: the loader yields no batches{why}{hint}")


# metrics that are not a mean over samples: in the training columns they are computed on the
# epoch's outputs as a whole (as Keras's stateful F1Score and R2Score), not averaged over batches
_EPOCH_METRICS = ("f1", "balanced_accuracy", "r2")


def _metric_fns(metrics) -> dict[str, Callable]:
    out = {}
    for m in metrics or ():
        if callable(m):
            out[getattr(m, "__name__", "metric")] = m
        elif m in METRICS:
            out[m] = METRICS[m]
        else:
            raise ValueError(f"unknown metric {m!r}; choose from {sorted(METRICS)} or pass a "
                             "callable (y_true, outputs) -> float")
    return out


def evaluate(model: Module, loader: Iterable, loss_fn: Callable | None = None,
             metrics: Sequence = ("accuracy",)) -> dict[str, float]:
    """Mean loss (weighted by samples) and ``metrics`` of ``model`` over ``loader`` (eval mode,
    no gradients); the metrics score the first output of a model that returns a tuple."""
    fns = _metric_fns(metrics)
    was = model.training
    model.eval()
    outs, ys, total, n = [], [], 0.0, 0
    try:
        with no_grad():
            for batch in loader:
                x, y = _split_batch(batch)
                out = model(x)
                k = _batch_len(x, y)
                if loss_fn is not None:
                    total += float(loss_fn(out, y).item()) * k
                n += k
                outs.append(_host(_primary(out)))
                ys.append(_host(y))
    finally:
        model.train(was)
    if not outs:
        raise _no_batches("evaluate", loader)
    res: dict[str, float] = {}
    if loss_fn is not None:
        res["loss"] = total / max(n, 1)
    if fns:
        o, t = np.concatenate(outs), np.concatenate(ys)
        res.update({k: float(f(t, o)) for k, f in fns.items()})
    return res


def predict(model: Module, data, batch_size: int = 512) -> np.ndarray | tuple:
    """The model's outputs on ``data`` (a loader, a Tensor or an array) as one host array (a
    tuple of them for a model that returns a tuple); a tensor's or an array's batches go to
    the model's device."""
    if isinstance(data, Tensor | np.ndarray) or B.is_array(data):
        data = DataLoader(ArrayDataset(_host(data)), batch_size=batch_size,
                          device=module_device(model))
    was = model.training
    model.eval()
    outs = []
    try:
        with no_grad():
            for batch in data:
                outs.append(_host_tree(model(_split_batch(batch)[0])))
    finally:
        model.train(was)
    if not outs:
        raise _no_batches("predict", data)
    return _concat(outs)


class Trainer:
    """One training run; :func:`fit` builds and runs it. Callbacks receive it and may read
    ``model``, ``optimizer``, ``epoch`` (0-based, current), ``step`` (optimiser steps done),
    ``batch`` (batches of this epoch done), ``history``, ``last_loss``, ``resumed_from``
    (epoch, step and batch where a resumed run continued and the wall time spent before it;
    None otherwise), ``epoch_base`` (the loader's epoch of this run's epoch 0: the one after
    those the loader already started, so fitting again continues its orders), ``wall_time``
    (seconds, over all sessions of a resumed run), ``is_main`` (False on the ranks other than
    0 of a distributed run, which write no files) and set ``stop_training``. With ``jit``, a
    step for which a callback's ``eager_step`` attribute is true runs eagerly (its module hooks
    run, as a replay's would not), with the same results."""

    def __init__(self, model: Module, loss_fn: Callable, optimizer: Optimizer,
                 train_loader: DataLoader, val_loader: Iterable | None = None, epochs: int = 1,
                 callbacks: Sequence[Callback] = (), metrics: Sequence = ("accuracy",),
                 scheduler: LRScheduler | None = None, scheduler_interval: str = "step",
                 run_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                 resume: bool = False, config: dict | None = None, progress: bool = True,
                 nan_guard: bool = True, jit: bool = False,
                 distributed: bool | None = None, accumulate: int = 1):
        self.accumulate = _check_count(accumulate, "accumulate", 1)
        if jit and self.accumulate > 1:
            raise ValueError("fit: jit=True captures one batch per step; with accumulate="
                             f"{self.accumulate} leave jit off")
        # --- distributed (see train/distributed.py): DDP model, sharded loader, rank 0 writes
        self.dist = None
        if distributed is not False:
            from .distributed import setup
            self.dist = setup(distributed, model, train_loader)
        self.net = model
        if self.dist is not None:
            model, self.net, train_loader = self.dist.model, self.dist.net, self.dist.loader
        self.is_main = self.dist is None or self.dist.is_main
        progress = progress and self.is_main
        # ---
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        # with jit, zero_grad + forward + loss + backward are one captured program; callbacks
        # between backward and the update, and the update itself, run as without jit
        self._jit = bool(jit)
        self._forward_backward = (_jit(self._forward_backward_eager, state=(model, optimizer))
                                  if jit else self._forward_backward_eager)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs = _check_count(epochs, "epochs", 0)
        self.metric_fns = _metric_fns(metrics)
        # the built-in metrics of the whole epoch (by name): targets and outputs kept until its
        # end (in a distributed run each rank's batches are averaged instead)
        self._whole = [k for k in self.metric_fns
                       if k in _EPOCH_METRICS and self.dist is None]
        self._seen: dict[str, list] = {"y": [], "out": []}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.config = dict(config or {})
        self.model_info = {"model": type(model).__name__}
        cbs: list[Callback] = []
        if progress:
            cbs.append(ProgressBar())
        if nan_guard:
            cbs.append(NaNGuard())
        if scheduler is not None:
            cbs.append(LRSchedule(scheduler, scheduler_interval))
        cbs += list(callbacks)
        if self.run_dir is not None and self.is_main:
            cbs.append(HistoryWriter(self.run_dir))
        self.callbacks = cbs
        self.epoch = self.step = self.batch = 0
        # the loader's epoch of this run's epoch 0: a second fit over the same loader goes on
        # with the loader's next orders (restored from a checkpoint on resume)
        self.epoch_base = _next_epoch(train_loader)
        steps = (StepLog(self.run_dir / STEPS_FILE) if self.run_dir is not None and self.is_main
                 else None)
        self.history = History(steps=steps)
        self.stop_training, self.stop_reason = False, None
        self.last_loss = float("nan")
        self._acc: dict[str, float] = {}
        self._step_lr: float | None = None  # the rate of the last training step
        self._train_time = 0.0
        self._wall_before, self._t_start = 0.0, time.perf_counter()
        self.resumed_from: dict | None = None
        self.threads = C.blas_threads()
        if resume:
            self.restore()

    # --- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        if self.run_dir is None:
            raise ValueError("Trainer: checkpoints need a run_dir")
        return self.run_dir / C.FILENAME

    @property
    def wall_time(self) -> float:
        """Seconds since this run began, summed over the sessions of a resumed run."""
        return self._wall_before + time.perf_counter() - self._t_start

    def state_dict(self) -> dict:
        """Everything but the weights that a resumed run needs to continue bit-identically.

        The per-step rows stay in their file (flushed here); the state holds how far it reached.
        """
        return {"epoch": self.epoch, "step": self.step, "batch": self.batch,
                "epoch_base": self.epoch_base, "acc": self._acc_total(),
                "seen": {k: np.concatenate(v) for k, v in self._seen.items() if v},
                "train_time": self._train_time, "wall_time": self.wall_time,
                "threads": self.threads,
                "stop_training": self.stop_training, "stop_reason": self.stop_reason,
                "history": {"epochs": self.history.epochs, "stop_reason": self.history.stop_reason},
                "steps": self.history.steps.position, "loader": _loader_state(self.train_loader),
                "rng": default_generator("cpu").get_state(),
                "optimizer": self.optimizer.state_dict(),
                "callbacks": [[type(c).__name__, st] for c in self.callbacks
                              if (st := c.state_dict())],
                "model_info": self.model_info, "config": self.config}

    def _stateful(self) -> list[Callback]:
        return [c for c in self.callbacks if c.state_dict()]

    def _acc_total(self) -> dict:
        """The epoch's running sums (over all ranks in a distributed run: a collective)."""
        if self.dist is None:
            return dict(self._acc)
        return self.dist.sum_dict(self._acc, ["n", "loss", *self.metric_fns])

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # on every rank (it sums over them); rank 0 writes
        if self.is_main:
            C.save_checkpoint(self.checkpoint_path, self.model, state)

    def restore(self) -> None:
        """Continue from the run directory's checkpoint (after deleting the temporary files a
        killed write left); warn when the BLAS thread counts differ from the run's."""
        path = self.checkpoint_path
        if self.is_main:
            remove_stale_temps(self.run_dir)
        if not path.exists():
            raise CheckpointError(f"cannot resume: no checkpoint in {self.run_dir}")
        s = C.load_checkpoint(path, self.model)
        if s["model_info"] != self.model_info:
            raise CheckpointError(f"{path} was saved from {s['model_info']['model']}, not "
                                  f"{self.model_info['model']}")
        mine = self._stateful()
        names = [type(c).__name__ for c in mine]
        saved = [n for n, _ in s["callbacks"]]
        if names != saved:
            raise CheckpointError(f"cannot resume: the run had the stateful callbacks {saved}, "
                                  f"now {names}")
        self.optimizer.load_state_dict(s["optimizer"])
        for c, (_, st) in zip(mine, s["callbacks"]):
            c.load_state_dict(st)
        if s["loader"] is not None and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(s["loader"])
        default_generator("cpu").set_state(s["rng"])
        self.epoch, self.step, self.batch = s["epoch"], s["step"], s["batch"]
        self.epoch_base = int(s.get("epoch_base", 0))
        self._acc, self._train_time = dict(s["acc"]) if self.is_main else {}, s["train_time"]
        self._seen = {k: [s.get("seen", {})[k]] if k in s.get("seen", {}) else []
                      for k in ("y", "out")}
        self.stop_training, self.stop_reason = s["stop_training"], s["stop_reason"]
        self._wall_before = float(s.get("wall_time", s["train_time"]))
        h = s["history"]
        if not self.is_main:  # the other ranks of a distributed run keep no per-step rows
            steps = None
        elif "steps" in s:
            steps = StepLog.resume(self.run_dir / STEPS_FILE, s["steps"]["rows"],
                                   s["steps"]["bytes"])
        else:  # a checkpoint from before steps.jsonl: its rows move to the file
            steps = StepLog(self.run_dir / STEPS_FILE)
            steps.extend(h.get("steps", []))
            steps.flush()
        self.history = History(list(h["epochs"]), steps, h.get("stop_reason"))
        self.resumed_from = {"epoch": self.epoch + 1, "step": self.step, "batch": self.batch,
                             "wall_time": self._wall_before}
        device = module_device(self.model)
        if device != "cpu" and any(m.p for m in self.model.modules()
                                   if isinstance(m, Dropout | _DropoutVariant)):
            warnings.warn(f"resuming {self.run_dir} on {device}: a device's random generator "
                          "cannot save its state, so the dropout masks from here on differ "
                          "from an uninterrupted run's (on the CPU they are the same)",
                          RuntimeWarning, stacklevel=2)
        if diff := C.threads_differ(s.get("threads", {}), self.threads):
            what = ", ".join(f"{k} {a} then, {b} now" for k, (a, b) in sorted(diff.items()))
            warnings.warn(f"resuming {self.run_dir} with other BLAS thread counts ({what}): the "
                          "weights may differ in the last bits from an uninterrupted run",
                          RuntimeWarning, stacklevel=2)

    # --- the loop -------------------------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        for c in self.callbacks:
            getattr(c, hook)(self, *args)

    def _lr(self) -> float:
        lr = self.optimizer.param_groups[0]["lr"]
        return float(lr(self.optimizer.step_count + 1) if callable(lr) else lr)

    def _forward_backward_eager(self, x, y):
        self.optimizer.zero_grad()
        out = self.net(x)
        loss = self.loss_fn(out, y)
        loss.backward()
        return loss, out

    def _accumulated_backward(self, window: list) -> list:
        """Gradients of the mean loss over the samples of several batches: each batch's
        (mean) loss weighted by its share of the samples, so the step is the one a batch of
        them all would take. Returns (x, y, out, loss) per batch."""
        self.optimizer.zero_grad()
        parts = [_split_batch(b) for b in window]
        sizes = [_batch_len(x, y) for x, y in parts]
        total = sum(sizes)
        done = []
        for i, ((x, y), n) in enumerate(zip(parts, sizes)):
            # data parallel: the ranks average the window's summed gradients once, at its end
            quiet = (self.net.no_sync() if i < len(parts) - 1 and hasattr(self.net, "no_sync")
                     else contextlib.nullcontext())
            with quiet:
                out = self.net(x)
                loss = self.loss_fn(out, y)
                (loss * (n / total)).backward()
            done.append((x, y, out, float(loss.item())))
        return done

    def _train_step(self, window: list) -> None:
        """One optimiser step over a window of ``accumulate`` batches (usually one)."""
        if len(window) == 1 and self.accumulate == 1:
            x, y = _split_batch(window[0])
            fb = self._forward_backward
            if self._jit and any(getattr(c, "eager_step", False) for c in self.callbacks):
                # a callback reads this step's forward through module hooks, which a replay
                # of the captured program does not run: this step runs eagerly (the same
                # numbers)
                fb = self._forward_backward_eager
            loss, out = fb(x, y)
            done = [(x, y, out, float(loss.item()))]
        else:
            done = self._accumulated_backward(window)
        sizes = [_batch_len(x, y) for x, y, _, _ in done]
        local_loss = (done[0][3] if len(done) == 1
                      else sum(n * lo for n, (_, _, _, lo) in zip(sizes, done)) / sum(sizes))
        self.last_loss = local_loss
        if self.dist is not None:  # every rank logs and acts on the same (mean) loss
            self.last_loss = self.dist.mean(local_loss)
        self._call("on_after_backward")
        lr = self._step_lr = self._lr()
        self.optimizer.step()
        self.step += 1
        self.batch += len(window)
        acc = self._acc
        for n, (_, y, out, batch_loss) in zip(sizes, done):
            acc["n"] = acc.get("n", 0) + n
            acc["loss"] = acc.get("loss", 0.0) + batch_loss * n
            if self.metric_fns:
                t, o = _host(y), _host(_primary(out).detach())
                for k, f in self.metric_fns.items():
                    if k not in self._whole:
                        acc[k] = acc.get(k, 0.0) + float(f(t, o)) * n
                if self._whole:
                    self._seen["y"].append(t)
                    self._seen["out"].append(o)
        self.history.steps.append({"step": self.step, "epoch": self.epoch + 1,
                                   "loss": self.last_loss, "lr": lr})
        self._call("on_batch_end", {"step": self.step, "loss": self.last_loss, "lr": lr})

    def _end_epoch(self, t0: float) -> None:
        acc = self._acc_total()
        n = max(acc.get("n", 0), 1)
        self._train_time += time.perf_counter() - t0
        row = {"epoch": self.epoch + 1, "step": self.step, "loss": acc.get("loss", 0.0) / n}
        row.update({k: acc.get(k, 0.0) / n for k in self.metric_fns})
        if self._whole and self._seen["y"]:
            t, o = (np.concatenate(self._seen[k]) for k in ("y", "out"))
            row.update({k: float(self.metric_fns[k](t, o)) for k in self._whole})
        if self.val_loader is not None:
            v = evaluate(self.model, self.val_loader, self.loss_fn, list(self.metric_fns))
            row.update({f"val_{k}": val for k, val in v.items()})
        # the rate this epoch's last step trained with (a per-step schedule has moved on since)
        last = self._step_lr
        row["lr"] = self._lr() if last is None or not acc.get("n") else last
        row["time"] = round(self._train_time, 3)
        self.history.epochs.append(row)
        self._call("on_epoch_end", row)
        self.epoch, self.batch, self._acc = self.epoch + 1, 0, {}
        self._seen = {"y": [], "out": []}

    def fit(self) -> History:
        """Train until ``epochs`` are done or a callback stops the run; returns the history."""
        loader = self.train_loader
        if _batches(loader) == 0:
            raise _no_batches("fit", loader)
        if self.val_loader is not None and _batches(self.val_loader) == 0:
            # the validation at the first epoch's end would fail: say so before training
            raise _no_batches("evaluate", self.val_loader)
        was = self.model.training
        try:
            if self.dist is None:
                history = self._fit()
            else:  # an error on one rank ends the job, naming the rank, instead of a hang
                from ..distributed import abort_on_error
                with abort_on_error(self.dist.comm):
                    history = self._fit()
        except BaseException:
            with contextlib.suppress(OSError):  # keep the steps so far, and the first error
                self.history.steps.flush(sync=False)
            raise
        finally:
            self.model.train(was)  # the mode the model had when fit was called
        self.history.steps.flush(sync=False)
        return history

    def _fit(self) -> History:
        self.model.train()
        self._call("on_train_begin")
        loader = self.train_loader
        while self.epoch < self.epochs and not self.stop_training:
            if self.batch == 0:
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(self.epoch_base + self.epoch)
                self._call("on_epoch_begin")
            t0 = time.perf_counter()
            started = self.batch
            batches = iter(loader)
            if started and not hasattr(loader, "load_state_dict"):
                # a plain iterable (a list of batches) resumed mid-epoch: skip those done
                batches = itertools.islice(batches, started, None)
            for window in _windows(batches, self.accumulate):
                self._train_step(window)
                every = self.checkpoint_every
                if self.run_dir is not None and every and self.step % every == 0 \
                        and self.batch < (_batches(loader) or self.batch + 1):
                    self._train_time += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                if self.stop_training:
                    break
            if started == 0 and self.batch == 0:
                raise _no_batches("fit", loader)
            self._end_epoch(t0)
            if self.run_dir is not None:
                self.save_checkpoint()
        self.history.stop_reason = self.stop_reason
        self._call("on_train_end")
        return self.history


def fit(model: Module, loss_fn: Callable, optimizer: Optimizer,
        train_loader: DataLoader | Iterable,
        val_loader: Iterable | None = None, epochs: int = 1, callbacks: Sequence[Callback] = (),
        metrics: Sequence = ("accuracy",), scheduler: LRScheduler | None = None,
        scheduler_interval: str = "step", run_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, resume: bool = False, config: dict | None = None,
        progress: bool = True, nan_guard: bool = True, jit: bool = False,
        distributed: bool | None = None, accumulate: int = 1) -> History:
    """Train ``model`` for ``epochs`` over ``train_loader``; returns the :class:`History`.

    Each epoch ends with validation on ``val_loader`` (``val_*`` entries) and, with a
    ``run_dir``, a resumable checkpoint (also every ``checkpoint_every`` steps) plus
    ``history.csv``/``history.json`` and the per-step rows appended to ``steps.jsonl``.
    ``resume=True`` continues from ``run_dir``'s checkpoint and ends with the weights an
    uninterrupted run would have had, bit for bit (with the same BLAS thread count: a warning
    says when it differs). A loader without batches is a ``ValueError``. The model trains in
    train mode and ends in the mode it had when ``fit`` was called. Fitting again with the same
    loader continues its epochs (new shuffles), as iterating it again would. ``train_loader``
    may also be a list of batches (any iterable that gives them again each epoch); a resumed
    run skips the batches of the epoch done. The training columns of the metrics are their
    means over the epoch's batches, weighted by samples, except ``"f1"``,
    ``"balanced_accuracy"`` and ``"r2"``, which are not means over samples: they score the
    epoch's outputs as a whole (as Keras's stateful metrics).
    ``scheduler`` steps after every optimiser step (``scheduler_interval="epoch"``: every
    epoch; ReduceLROnPlateau: every epoch on ``val_loss``). A progress bar and a NaN guard are on
    by default. ``jit=True`` captures each step's forward and backward once per batch shape
    (:func:`nodegrad.jit`) and replays them, with the same results as without.
    ``accumulate=k`` takes one optimiser step per ``k`` batches (the last of an epoch may
    have fewer), on the gradient of the mean loss over their samples: the step of a batch
    ``k`` times larger, holding the activations of one batch at a time (a step, its row in
    ``steps.jsonl``, a ``checkpoint_every`` count and a per-step schedule are then per ``k``
    batches; not with ``jit``).
    ``distributed=True`` (or ``None`` when launched by ``mpirun``) trains data-parallel over
    the ranks: see :mod:`nodegrad.train.distributed` and docs/distributed.md.
    """
    return Trainer(model, loss_fn, optimizer, train_loader, val_loader, epochs, callbacks,
                   metrics, scheduler, scheduler_interval, run_dir, checkpoint_every, resume,
                   config, progress, nan_guard, jit, distributed, accumulate).fit()
