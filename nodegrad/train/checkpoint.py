"""Resumable checkpoints: one safetensors file holding everything a run needs to continue.

``checkpoint.safetensors`` in the run directory holds the model's weights (``model/<name>``),
the optimiser's state arrays and every other array of state (``state/...``); its JSON metadata
holds the rest: epoch, step, position of the loader within the epoch, RNG states, scheduler and
callback state, the per-epoch history, how far ``steps.jsonl`` (the per-step history) reached,
the BLAS thread counts and config. It is written atomically (:func:`nodegrad.io.atomic_write`),
so a run killed at any moment leaves the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import _backend as B
from ..io import CheckpointError, load, save
from ..nn import Module
from ..tensor import Tensor

np = B.np
FILENAME = "checkpoint.safetensors"


def _encode(obj: Any, arrays: dict, path: str) -> Any:
    """JSON-able form of ``obj``; arrays move into ``arrays`` under their path."""
    if isinstance(obj, Tensor):
        obj = obj.numpy()
    if B.is_array(obj) and getattr(obj, "ndim", 0) >= 0 and not isinstance(obj, np.generic):
        arrays[path] = obj
        return {"__array__": path}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, arrays, f"{path}/{k}") for k, v in obj.items()}
        return {"__intkeys__": {str(k): _encode(v, arrays, f"{path}/{k}")
                                for k, v in obj.items()}}
    if isinstance(obj, list | tuple):
        return [_encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    return obj


def _decode(obj: Any, arrays: dict) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        if set(obj) == {"__intkeys__"}:
            return {int(k): _decode(v, arrays) for k, v in obj["__intkeys__"].items()}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def blas_threads() -> dict[str, int | str]:
    """The thread count of each loaded BLAS (threadpoolctl when installed), else the variables
    that set it: matrix products may sum in another order with another count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        env = {f"env:{k}": os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS") if k in os.environ}
        return {**env, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1}
    return {f"{i['internal_api']}:{i.get('prefix', '')}": int(i["num_threads"])
            for i in threadpool_info() if i.get("user_api") == "blas"}


def threads_differ(saved: dict, now: dict) -> dict[str, tuple]:
    """The entries (in both) whose thread counts differ: {name: (saved, now)}."""
    return {k: (saved[k], now[k]) for k in saved.keys() & now.keys() if saved[k] != now[k]}


def save_checkpoint(path: str | os.PathLike, model: Module, state: dict) -> None:
    """Write ``model``'s weights and the training ``state`` (nested, arrays allowed) atomically."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays: dict = {}
    meta = _encode(state, arrays, "state")
    tensors.update(arrays)
    save(tensors, path, meta)


def check_compatible(model: Module, weights: dict[str, Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` when ``weights`` do not fit ``model`` (another model)."""
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in weights.items()}
    for k in model._optional_keys() - set(theirs):  # e.g. a tied weight's second name
        mine.pop(k, None)
    if mine != theirs:
        missing = sorted(set(mine) - set(theirs))[:3]
        extra = sorted(set(theirs) - set(mine))[:3]
        shapes = [k for k in set(mine) & set(theirs) if mine[k] != theirs[k]][:3]
        raise CheckpointError(f"{where} holds weights of another model (missing {missing}, "
                              f"unexpected {extra}, other shapes {shapes})")


def load_checkpoint(path: str | os.PathLike, model: Module | None = None) -> dict:
    """Read a checkpoint: load the weights into ``model`` (checked) and return the state."""
    path = Path(path)
    tensors, meta = load(path, with_metadata=True)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    arrays = {k: v.numpy() for k, v in tensors.items() if k.startswith("state/")}
    if model is not None:
        check_compatible(model, weights, str(path))
        model.load_state_dict(weights)
    state = _decode(meta, arrays)
    state["_weights"] = weights
    return state
