"""Choosing what to prune: smallest magnitudes per layer or across layers, or at random.

``amount`` follows ``torch.nn.utils.prune``: a float in [0, 1] is the fraction of the weights
that are still unpruned (so pruning twice by 0.2 keeps 0.8² = 64 %), rounded to the nearest count
(Python's ``round``, ties to even); an int is a count. Already pruned weights are never counted
again. Ties in magnitude are broken by position (a stable sort: the earlier element goes first),
so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _backend as B
from ..nn import Module
from ..tensor import Tensor
from .mask import SUFFIX, _param, apply_mask

np = B.np


def _count(amount, remaining: int, fn: str, what: str) -> int:
    """The number of weights to prune for ``amount`` out of ``remaining`` unpruned ones."""
    if isinstance(amount, bool) or not isinstance(amount, int | float | np.integer | np.floating):
        raise TypeError(f"{fn}: amount must be a float fraction in [0, 1] or an int count, got "
                        f"{type(amount).__name__}")
    if isinstance(amount, int | np.integer):
        if amount < 0 or amount > remaining:
            raise ValueError(f"{fn}: amount={amount} weights, but {what} has {remaining} "
                             "unpruned weights (expected a count in [0, "
                             f"{remaining}] or a float fraction in [0, 1])")
        return int(amount)
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"{fn}: amount={amount} is not a fraction in [0, 1] (pass an int to "
                         "prune a number of weights)")
    return int(round(float(amount) * remaining))


def _host(t) -> np.ndarray:
    a = t._data if isinstance(t, Tensor) else t
    return B.backend_of(a).to_host(a) if B.is_array(a) else np.asarray(a)


def _current_mask(module: Module, name: str) -> np.ndarray:
    """The host boolean mask of ``module.name`` (all True when it has none)."""
    m = module._buffers.get(name + SUFFIX)
    p = module._parameters[name]
    if m is None:
        return np.ones(p.shape, dtype=bool)
    return _host(m) != 0


def _scores(module: Module, name: str, scores, fn: str) -> np.ndarray:
    p = module._parameters[name]
    if scores is None:
        return np.abs(_host(p)).astype(np.float64)
    s = np.asarray(_host(scores), dtype=np.float64)
    if s.shape != tuple(p.shape):
        raise ValueError(f"{fn}: scores for {type(module).__name__}.{name} have shape {s.shape}"
                         f", the parameter has shape {tuple(p.shape)}")
    return s


def _prune_lowest(keep: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """``keep`` with the ``k`` lowest-scoring kept entries switched off (stable: ties by index)."""
    flat = keep.reshape(-1).copy()
    alive = np.flatnonzero(flat)
    order = alive[np.argsort(scores.reshape(-1)[alive], kind="stable")]
    flat[order[:k]] = False
    return flat.reshape(keep.shape)


def l1_unstructured(module: Module, name: str, amount, scores=None) -> Module:
    """Prune the ``amount`` smallest-magnitude unpruned entries of parameter ``name`` (layer-wise
    magnitude pruning). ``scores`` (same shape) replaces ``|w|`` as the criterion."""
    _param(module, name, "l1_unstructured")
    keep = _current_mask(module, name)
    k = _count(amount, int(keep.sum()), "l1_unstructured", f"{type(module).__name__}.{name}")
    s = _scores(module, name, scores, "l1_unstructured")
    return apply_mask(module, name, _prune_lowest(keep, s, k))


def random_unstructured(module: Module, name: str, amount, seed: int | None = None) -> Module:
    """Prune ``amount`` unpruned entries of parameter ``name`` chosen uniformly at random (the
    random-pruning baseline); ``seed`` makes the choice reproducible."""
    _param(module, name, "random_unstructured")
    keep = _current_mask(module, name)
    k = _count(amount, int(keep.sum()), "random_unstructured", f"{type(module).__name__}.{name}")
    s = np.random.default_rng(seed).random(keep.shape)
    return apply_mask(module, name, _prune_lowest(keep, s, k))


def global_magnitude(parameters: Sequence[tuple[Module, str]], amount,
                     scores: Sequence | None = None) -> int:
    """Prune the ``amount`` smallest-magnitude unpruned weights among all ``parameters`` (a list
    of ``(module, name)``) ranked together, so layers lose different fractions. Returns the
    number of weights pruned. ``scores`` (one array per parameter) replaces ``|w|``."""
    fn = "global_magnitude"
    ps = list(parameters)
    if not ps:
        raise ValueError(f"{fn}: got no parameters; pass a list of (module, name) pairs, e.g. "
                         "prune.prunable_weights(model)")
    seen = set()
    for i, item in enumerate(ps):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"{fn}: parameters[{i}] must be a (module, name) pair, got "
                            f"{type(item).__name__}")
        p = _param(item[0], item[1], fn)
        if id(p) in seen:
            raise ValueError(f"{fn}: parameters[{i}] ({type(item[0]).__name__}.{item[1]}) is "
                             "listed twice")
        seen.add(id(p))
    if scores is not None and len(scores) != len(ps):
        raise ValueError(f"{fn}: got {len(scores)} score arrays for {len(ps)} parameters")
    keeps = [_current_mask(m, n) for m, n in ps]
    ss = [_scores(m, n, None if scores is None else scores[i], fn)
          for i, (m, n) in enumerate(ps)]
    remaining = sum(int(k.sum()) for k in keeps)
    k = _count(amount, remaining, fn, f"the {len(ps)} parameters together")
    keep_all = _prune_lowest(np.concatenate([x.reshape(-1) for x in keeps]),
                             np.concatenate([x.reshape(-1) for x in ss]), k)
    start = 0
    for (m, n), keep in zip(ps, keeps):
        size = keep.size
        apply_mask(m, n, keep_all[start:start + size].reshape(keep.shape))
        start += size
    return k
