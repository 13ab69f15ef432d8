"""The model zoo: plain modules a reader can follow, with the hyperparameters they train with.

>>> import nodegrad as ng
>>> from nodegrad import models
>>> model = models.create("mnist1d_cnn", seed=0)
>>> models.REGISTRY["mnist1d_cnn"].defaults["lr"]
0.01
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..nn import Module
from .digits import DigitsCNN, DigitsMLP
from .mnist1d import CNN, GRU, MLP, PAPER, LogisticRegression
from .regression import RegressionMLP


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: constructor, dataset it is made for, task and training defaults."""

    name: str
    build: Callable[..., Module]
    dataset: str
    task: str  # "classification" or "regression"
    description: str
    defaults: dict = field(default_factory=dict)


_DIGITS = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 64, "epochs": 20}
_REG = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 32, "epochs": 200}
_P = {k: v for k, v in PAPER.items() if k != "eval_every"}

REGISTRY: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("mnist1d_logreg", LogisticRegression, "mnist1d", "classification",
              "MNIST-1D paper: logistic regression (32 %)", dict(_P)),
    ModelSpec("mnist1d_mlp", MLP, "mnist1d", "classification",
              "MNIST-1D paper: MLP 40-100-100-10 (68 %)", dict(_P)),
    ModelSpec("mnist1d_cnn", CNN, "mnist1d", "classification",
              "MNIST-1D paper: 3-layer 1D CNN (94 %)", dict(_P)),
    ModelSpec("mnist1d_gru", GRU, "mnist1d", "classification",
              "MNIST-1D paper: bidirectional GRU (91 %)", dict(_P)),
    ModelSpec("digits_mlp", DigitsMLP, "digits", "classification",
              "digits: MLP 64-64-10", dict(_DIGITS)),
    ModelSpec("digits_cnn", DigitsCNN, "digits", "classification",
              "digits: small 2D CNN", dict(_DIGITS)),
    ModelSpec("regression_mlp", RegressionMLP, "regression1d", "regression",
              "1D regression: MLP 1-64-64-1 (tanh)", dict(_REG)),
]}


def create(name: str, seed: int | None = None, **kwargs) -> Module:
    """Build registry model ``name``, seeding ng's default generator first if ``seed`` is given."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(REGISTRY)}")
    if seed is not None:
        from ..random import manual_seed
        manual_seed(seed)
    return REGISTRY[name].build(**kwargs)


__all__ = ["CNN", "GRU", "MLP", "DigitsCNN", "DigitsMLP", "LogisticRegression", "ModelSpec",
           "PAPER", "REGISTRY", "RegressionMLP", "create"]
