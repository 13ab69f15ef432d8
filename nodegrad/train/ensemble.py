"""Ensembles: K members trained from different seeds (optionally on bootstrap samples); the
ensemble predicts the average of the members' class probabilities."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import _backend as B
from ..data import DataLoader, Subset
from ..nn import Module
from ..nn.module import module_device
from ..random import manual_seed
from .loop import History, fit, predict
from .metrics import accuracy

np = B.np


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _single_logit(z: np.ndarray) -> bool:
    """One logit per sample, (N,) or (N, 1): a binary model."""
    return z.ndim == 1 or z.ndim == 2 and z.shape[1] == 1


def _probabilities(z: np.ndarray) -> np.ndarray:
    """A member's logits as probabilities: sigmoid of a single logit (class 1's probability),
    softmax over the last axis otherwise."""
    z = z.astype(np.float64)
    if _single_logit(z):
        return np.exp(-np.logaddexp(0.0, -z))
    if z.ndim != 2:
        raise ValueError(f"Ensemble: expected member outputs of shape (N, C) or (N,), got "
                         f"{z.shape}")
    return _softmax(z)


@dataclass
class Ensemble:
    """Trained members, their histories, and the averaged-probability prediction. Members
    output logits: (N, C) (softmax) or one logit per sample, (N,) or (N, 1) (sigmoid)."""

    members: list[Module]
    histories: list[History] = field(default_factory=list)

    def predict_proba(self, data, batch_size: int = 512) -> np.ndarray:
        """Mean of the members' probabilities (float64): softmax rows (N, C), or for a binary
        model with one logit the probability of class 1, in the members' output shape."""
        return np.mean([_probabilities(predict(m, data, batch_size)) for m in self.members],
                       axis=0)

    def predict(self, data, batch_size: int = 512) -> np.ndarray:
        """The ensemble's classes (int64, (N,)): the argmax of the mean probabilities, or for
        one logit per sample, mean probability > 0.5."""
        p = self.predict_proba(data, batch_size)
        if _single_logit(p):
            return (p.reshape(len(p)) > 0.5).astype(np.int64)
        return p.argmax(-1)

    def evaluate(self, x, y) -> dict:
        """Accuracy of each member and of the ensemble on arrays ``x``, ``y``."""
        members = [accuracy(y, predict(m, x)) for m in self.members]
        return {"members": members, "member_mean": float(np.mean(members)),
                "ensemble": accuracy(y, self.predict(x))}


def train_ensemble(build: Callable[[], Module], make_optimizer: Callable, loss_fn: Callable,
                   dataset, k: int = 5, seed: int = 0, bootstrap: bool = False,
                   batch_size: int = 32, epochs: int = 10, val_loader: Iterable | None = None,
                   **fit_kwargs) -> Ensemble:
    """Train ``k`` members: member i is built and shuffled with seed ``seed + i`` and, with
    ``bootstrap``, trained on a sample of ``len(dataset)`` drawn with replacement. Batches go to
    the device ``build`` put the member on. With a ``run_dir`` (passed on to :func:`fit`),
    member i keeps its checkpoint and history in ``run_dir/member-i``, as ``nodegrad train
    --ensemble`` does, so that the members neither overwrite nor resume from each other."""
    run_dir = fit_kwargs.pop("run_dir", None)
    members, histories = [], []
    for i in range(k):
        manual_seed(seed + i)
        model = build()
        data = dataset
        if bootstrap:
            rng = np.random.default_rng(seed + i)
            data = Subset(dataset, rng.integers(0, len(dataset), len(dataset)))
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, seed=seed + i,
                            device=module_device(model))
        member_dir = None if run_dir is None else Path(run_dir) / f"member-{i}"
        histories.append(fit(model, loss_fn, make_optimizer(model), loader, val_loader,
                             epochs=epochs, run_dir=member_dir, **fit_kwargs))
        members.append(model)
    return Ensemble(members, histories)
