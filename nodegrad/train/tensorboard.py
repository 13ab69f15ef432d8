"""The :class:`TensorBoard` callback: :func:`~nodegrad.train.fit`'s history as TensorBoard
scalars, with optional weight and gradient histograms and per-step losses.

Every epoch writes each number of its history row (``loss``, ``val_loss``, the metrics and
``lr``, under the same names) at the epoch's 1-based number, so the curves and
``history.csv`` agree. A resumed run reopens the same directory with ``purge_step`` set to the
epoch it continues from, so TensorBoard drops what the interrupted session wrote after its
last checkpoint and no step appears twice.
"""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING

from .. import _backend as B
from ..utils.tensorboard import SummaryWriter, _tbx
from .callbacks import Callback

if TYPE_CHECKING:
    from .loop import Trainer

_NOT_SCALARS = ("epoch", "step", "time")


def _every(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"TensorBoard: {name} must be an integer >= 0 (0: off), got {value!r}")
    return int(value)


class TensorBoard(Callback):
    """Log each epoch's losses, metrics and learning rate to TensorBoard event files in
    ``log_dir``, at the epoch number (1-based, as in the history).

    ``histogram_every=k`` adds histograms of every parameter (``weights/<name>``) and of its
    gradient from the epoch's last step (``grads/<name>``) every ``k`` epochs;
    ``step_every=k`` logs the training loss and learning rate of every ``k``-th optimiser step
    to the run ``<log_dir>/steps``, at the step number. Only rank 0 of a distributed run
    writes. Needs the tensorboardX package (``pip install 'nodegrad[tensorboard]'``)."""

    def __init__(self, log_dir: str | os.PathLike, histogram_every: int = 0,
                 step_every: int = 0, flush_secs: int = 120):
        _tbx()  # fail when the callback is made, not at the end of the first epoch
        if not isinstance(log_dir, str | os.PathLike) or not os.fspath(log_dir):
            raise TypeError(f"TensorBoard: log_dir must be a path, got {log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.histogram_every = _every(histogram_every, "histogram_every")
        self.step_every = _every(step_every, "step_every")
        self.flush_secs = flush_secs
        self.writer: SummaryWriter | None = None
        self.step_writer: SummaryWriter | None = None

    def on_train_begin(self, tr: Trainer) -> None:
        self.close()
        if not getattr(tr, "is_main", True):
            return
        at = getattr(tr, "resumed_from", None)
        # a resumed run: the events of the interrupted session past the checkpoint are dropped
        epoch_purge = at["epoch"] if at is not None else None
        step_purge = at["step"] + 1 if at is not None else None
        self.writer = SummaryWriter(self.log_dir, purge_step=epoch_purge,
                                    flush_secs=self.flush_secs)
        if self.step_every:
            self.step_writer = SummaryWriter(os.path.join(self.log_dir, "steps"),
                                             purge_step=step_purge, flush_secs=self.flush_secs)

    def on_batch_end(self, tr: Trainer, logs: dict) -> None:
        w = self.step_writer
        if w is None or tr.step % self.step_every:
            return
        for k in ("loss", "lr"):
            if isinstance(logs.get(k), numbers.Real):
                w.add_scalar(k, float(logs[k]), tr.step)

    def on_epoch_end(self, tr: Trainer, logs: dict) -> None:
        w = self.writer
        if w is None:
            return
        epoch = int(logs.get("epoch", tr.epoch + 1))
        for k, v in logs.items():
            if k not in _NOT_SCALARS and isinstance(v, numbers.Real) \
                    and not isinstance(v, bool):
                w.add_scalar(k, float(v), epoch)
        if self.histogram_every and epoch % self.histogram_every == 0:
            for name, p in tr.model.named_parameters():
                _histogram(w, f"weights/{name}", p, epoch)
                if p.grad is not None:
                    _histogram(w, f"grads/{name}", p.grad, epoch)
        # on disk before the checkpoint that follows: a resumed run continues from here
        w.flush()
        if self.step_writer is not None:
            self.step_writer.flush()

    def on_train_end(self, tr: Trainer) -> None:
        self.close()

    def close(self) -> None:
        """Close the event files (the next fit opens new ones)."""
        for w in (self.writer, self.step_writer):
            if w is not None:
                w.close()
        self.writer = self.step_writer = None


def _histogram(w: SummaryWriter, tag: str, t, epoch: int) -> None:
    """A histogram of ``t``, skipped when it holds no element or a non-finite one (a NaN
    weight is the NaN guard's to report, not the logger's)."""
    a = t.numpy()
    if a.size == 0 or not B.np.isfinite(a).all():
        return
    w.add_histogram(tag, a, epoch)


__all__ = ["TensorBoard"]
