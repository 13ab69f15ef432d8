"""An MLP for 1D regression (e.g. ``datasets.regression1d``): R -> R."""

from __future__ import annotations

from .. import nn
from ..tensor import Tensor


class RegressionMLP(nn.Module):
    """1 -> hidden -> hidden -> 1 with tanh; inputs (N,) or (N, 1), outputs (N, 1)."""

    def __init__(self, hidden: int = 64, layers: int = 2, dropout: float = 0.0,
                 init="default"):
        super().__init__()
        sizes = [1] + [hidden] * layers
        self.hidden = nn.ModuleList([nn.Linear(a, b, init=init)
                                     for a, b in zip(sizes, sizes[1:])])
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1, init=init)

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], 1)
        for layer in self.hidden:
            h = self.dropout(layer(h).tanh())
        return self.out(h)
