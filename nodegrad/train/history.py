"""What a run recorded: :class:`History` (one row per epoch) and :class:`StepLog` (one row per
optimiser step).

With a run directory the per-step rows go to ``steps.jsonl``, one JSON object a line, appended
as the run goes; a checkpoint records only how many rows and bytes the file held when it was
written, and a resumed run cuts the file back to that point. So a checkpoint's size does not
grow with the steps, memory stays flat, and no step is lost or written twice.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

STEPS_FILE = "steps.jsonl"


class StepLog(Sequence):
    """Per-step rows (dicts): in memory, or appended to a JSON-lines file at ``path``.

    In file mode at most ``buffer`` rows wait in memory; :meth:`flush` appends them. The rows
    are the file's first ``bytes`` bytes plus those waiting; anything after that point in the
    file (a run killed after its last checkpoint) is cut off by the next flush.
    """

    def __init__(self, path: str | os.PathLike | None = None, rows: int = 0, size: int = 0,
                 buffer: int = 1024):
        self.path = None if path is None else Path(path)
        self._pending: list[dict] = []  # memory mode: every row
        self._rows, self._size, self.buffer = int(rows), int(size), int(buffer)

    @classmethod
    def resume(cls, path: str | os.PathLike, rows: int, size: int) -> StepLog:
        """The log at a checkpoint that recorded ``rows`` rows in ``size`` bytes of ``path``."""
        path = Path(path)
        have = path.stat().st_size if path.exists() else 0
        if have < size:  # the file was cut short or replaced: keep its whole lines
            data = path.read_bytes()[:have] if have else b""
            size = data.rfind(b"\n") + 1
            n = data[:size].count(b"\n")
            warnings.warn(f"{path} holds {n} of the {rows} steps the checkpoint recorded; the "
                          "per-step history continues after them", RuntimeWarning, stacklevel=3)
            rows = n
        log = cls(path, rows, size)
        log.flush()  # cut off the steps after the checkpoint now, not at the first flush
        return log

    @property
    def position(self) -> dict:
        """Rows and bytes in the file (after a flush): what a checkpoint records."""
        self.flush()
        return {"rows": self._rows, "bytes": self._size}

    def append(self, row: dict) -> None:
        self._pending.append(row)
        if self.path is not None and len(self._pending) >= self.buffer:
            self.flush(sync=False)

    def extend(self, rows: Iterable[dict]) -> None:
        for r in rows:
            self.append(r)

    def flush(self, sync: bool = True) -> None:
        """Append the waiting rows to the file (cutting it at the known end first)."""
        if self.path is None:
            return
        data = "".join(json.dumps(r) + "\n" for r in self._pending).encode()
        if not data and self.path.exists() and self.path.stat().st_size == self._size:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "r+b" if self.path.exists() else "wb") as f:
                f.seek(self._size)
                f.truncate()
                f.write(data)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
        except OSError as e:  # name the file (a failed write names none)
            if e.errno is None or e.filename is not None:
                raise
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        self._rows += len(self._pending)
        self._size += len(data)
        self._pending = []

    def _stored(self) -> Iterator[dict]:
        if self.path is None or not self._size:
            return
        with open(self.path, "rb") as f:
            left = self._size
            for line in f:
                if left <= 0:
                    break
                left -= len(line)
                yield json.loads(line)

    def __iter__(self) -> Iterator[dict]:
        yield from self._stored()
        yield from list(self._pending)

    def __len__(self) -> int:
        return self._rows + len(self._pending)

    def __getitem__(self, i):
        if self.path is None:
            return self._pending[i]
        if not isinstance(i, int):
            return list(self)[i]
        j = i + len(self) if i < 0 else i
        if not 0 <= j < len(self):
            raise IndexError(f"StepLog index {i} out of range ({len(self)} rows)")
        if j >= self._rows:
            return self._pending[j - self._rows]
        return next(itertools.islice(self._stored(), j, None))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        where = f", in {self.path}" if self.path is not None else ""
        return f"StepLog({len(self)} rows{where})"


class History:
    """What a run recorded: one row per epoch (``epochs``) and per step (``steps``)."""

    def __init__(self, epochs: list | None = None, steps: Sequence | None = None,
                 stop_reason: str | None = None):
        self.epochs: list[dict] = epochs or []
        if not isinstance(steps, StepLog):
            log = StepLog()
            log.extend(steps or [])
            steps = log
        self.steps: StepLog = steps
        self.stop_reason = stop_reason

    def __getitem__(self, key: str) -> list:
        """The column ``key`` of the epoch rows (None where absent)."""
        return [r.get(key) for r in self.epochs]

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}

    def best(self, monitor: str = "val_loss", mode: str = "min") -> dict:
        """The epoch row with the best ``monitor`` (the first, on a tie); epochs where it is NaN
        or missing are passed over, as early stopping passes them over."""
        if mode not in ("min", "max"):
            raise ValueError(f"History.best: mode must be 'min' or 'max', got {mode!r}")
        logged = [r for r in self.epochs if r.get(monitor) is not None]
        if not logged:
            raise KeyError(f"History.best: {monitor!r} was never logged")
        rows = [r for r in logged if not math.isnan(r[monitor])]
        if not rows:
            raise KeyError(f"History.best: {monitor!r} is NaN in every epoch")
        pick = min if mode == "min" else max
        return pick(rows, key=lambda r: r[monitor])

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": list(self.steps), "stop_reason": self.stop_reason}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(list(d["epochs"]), list(d.get("steps", [])), d.get("stop_reason"))

    def __repr__(self) -> str:
        return f"History({len(self.epochs)} epochs, {len(self.steps)} steps, last={self.last})"
