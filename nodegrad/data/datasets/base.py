"""What every built-in dataset returns (arrays plus metadata) and the on-disk cache.

The cache directory is ``$NODEGRAD_DATA`` if set, else ``$XDG_CACHE_HOME/nodegrad``, else
``~/.cache/nodegrad``; a ``root`` argument overrides all three. Files are written atomically
(a temporary file in the same directory, then a rename), so concurrent runs never read half a file.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ... import _backend as B
from ...io import atomic_write
from ..dataset import ArrayDataset

np = B.np


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset: what it is, where it comes from, and under which licence."""

    name: str
    description: str
    classes: int | None          # number of classes (None for regression)
    input_shape: tuple           # shape of one input sample
    source: str
    licence: str
    citation: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Splits:
    """Train and test arrays of a dataset plus its :class:`DatasetInfo`.

    ``x_*`` are float32 host arrays; ``y_*`` int64 labels (or float32 targets for regression).
    ``train``/``test`` wrap them as ArrayDatasets for a DataLoader.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: DatasetInfo

    @property
    def train(self) -> ArrayDataset:
        return ArrayDataset(self.x_train, self.y_train, classes=self.info.classes)

    @property
    def test(self) -> ArrayDataset:
        return ArrayDataset(self.x_test, self.y_test, classes=self.info.classes)

    def __iter__(self):
        """``x_train, y_train, x_test, y_test = splits``."""
        return iter((self.x_train, self.y_train, self.x_test, self.y_test))

    def __repr__(self) -> str:
        return (f"Splits({self.info.name}: train {self.x_train.shape}, test {self.x_test.shape}, "
                f"classes={self.info.classes})")


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory where generated datasets are cached (created on demand)."""
    if root is None:
        env = os.environ.get("NODEGRAD_DATA")
        if env:
            root = env
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
            root = os.path.join(base, "nodegrad")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_npz(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` atomically (temporary file + rename)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_npz(path: Path, keys) -> dict | None:
    """The arrays of a cache file, or None when it is missing, unreadable or incomplete (a
    truncated or corrupt file too: the caller then makes it again)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in keys}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return out


def stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Index arrays (train, test) with every class split in the same proportion."""
    from ..dataset import train_val_split

    train, test = train_val_split(ArrayDataset(y), test_fraction, seed=seed, stratify=y)
    return train.indices, test.indices
