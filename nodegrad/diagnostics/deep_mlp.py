"""The deep, narrow-to-wide MLP of the notes' initialisation experiments, and the experiment.

``DeepMLP(depth=10, width=500, activation="tanh", init="small_normal")`` is
``fc1 → tanh1 → … → fc10 → tanh10 → out``: ``depth`` hidden layers of ``width`` units, each a
Linear layer followed by an activation module (so every activation has its own name in a
:class:`~nodegrad.diagnostics.stats.LayerReport`), then a Linear read-out. ``init`` is any
``nn.init.SCHEMES`` name (or callable) for the weights; with any scheme but ``"default"`` the
biases start at zero, as the notes' variance argument assumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .. import nn
from ..random import manual_seed
from ..tensor import Tensor, as_tensor
from .stats import LayerReport, layer_stats

ACTIVATIONS: Mapping[str, type] = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
                                   "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class DeepMLP(nn.Module):
    """``depth`` × (Linear(width) → activation), then Linear(classes); inputs are flattened."""

    def __init__(self, input_size: int = 40, depth: int = 10, width: int = 500,
                 classes: int = 10, activation: str = "tanh", init="default"):
        super().__init__()
        for what, v in (("input_size", input_size), ("depth", depth), ("width", width),
                        ("classes", classes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DeepMLP: {what} must be an integer >= 1, got {v!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"DeepMLP: unknown activation {activation!r}; expected one of "
                             f"{', '.join(ACTIVATIONS)}")
        self.depth, self.activation = depth, activation
        sizes = [input_size] + [width] * depth
        for i in range(1, depth + 1):
            setattr(self, f"fc{i}", nn.Linear(sizes[i - 1], sizes[i], init=init))
            setattr(self, f"{activation}{i}", ACTIVATIONS[activation]())
        self.out = nn.Linear(width, classes, init=init)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], -1)
        for i in range(1, self.depth + 1):
            h = getattr(self, f"{self.activation}{i}")(getattr(self, f"fc{i}")(h))
        return self.out(h)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, activation={self.activation!r}"


def init_comparison(x, y=None, *, activation: str = "tanh",
                    schemes: Sequence[str] = ("small_normal", "xavier", "he"), depth: int = 10,
                    width: int = 500, classes: int = 10, seed: int = 0,
                    bins: int = 50) -> dict[str, LayerReport]:
    """The notes' experiment: one :func:`layer_stats` report per initialisation scheme for the
    same deep MLP on the same inputs ``x`` (and labels ``y``, for gradient statistics).
    Each model is built after ``manual_seed(seed)``."""
    if isinstance(schemes, str) or not schemes:
        raise ValueError(f"init_comparison: schemes must be a non-empty sequence of names, got "
                         f"{schemes!r}")
    x = as_tensor(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"init_comparison: x must be a non-empty batch (N, ...), got shape "
                         f"{tuple(x.shape)}")
    reports = {}
    for s in schemes:
        manual_seed(seed)
        model = DeepMLP(math.prod(x.shape[1:]), depth, width, classes, activation, init=s)
        reports[s] = layer_stats(model, x, y, bins=bins)
    return reports
