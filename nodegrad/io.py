"""Checkpoints: tensors as safetensors plus JSON metadata, written atomically, never pickle.

``save`` writes to a temporary file in the same folder, flushes it to disk and renames it over
the target, so a crash leaves either the old file or the new one, never half of one. The format
is the one ``safetensors.torch`` reads and writes: state dicts move between nodegrad and
PyTorch when the names match.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from . import _backend as B
from .tensor import Tensor


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not a safetensors file."""


_META_KEY = "nodegrad"


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(state: Mapping[str, Tensor], path: str | os.PathLike,
         metadata: dict | None = None) -> None:
    """Save a flat mapping of tensors (e.g. ``model.state_dict()``) and JSON-able ``metadata``."""
    from safetensors.numpy import save

    arrays = {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise TypeError(f"save: keys must be strings, got {type(k).__name__}")
        a = v.numpy() if isinstance(v, Tensor) else v
        if not B.is_array(a):
            raise TypeError(f"save: {k!r} is {type(v).__name__}, not a tensor")
        h = B.backend_of(a).to_host(a)
        arrays[k] = h if h.flags.c_contiguous else h.copy(order="C")  # keeps 0-d arrays 0-d
    header = {_META_KEY: json.dumps(metadata or {})}
    atomic_write(path, save(arrays, metadata=header))


def load(path: str | os.PathLike, device=None, with_metadata: bool = False):
    """Load a safetensors file into a dict of tensors (and the metadata, if asked)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"load: no checkpoint at {path}")
    try:
        out = {}
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                out[k] = f.get_tensor(k)
    except Exception as e:  # safetensors raises its own error types for bad files
        raise CheckpointError(f"load: {path} is not a readable safetensors checkpoint "
                              f"(truncated or corrupt?): {e}") from e
    be = B.get_backend(device)
    tensors = {k: Tensor(be.asarray(v)) for k, v in out.items()}
    if not with_metadata:
        return tensors
    try:
        info = json.loads(meta.get(_META_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"load: metadata in {path} is not valid JSON: {e}") from e
    return tensors, info
