"""The four models of the MNIST-1D paper (Greydanus & Kobak), as plain modules.

Inputs are signals (N, 40) (a channel axis (N, 1, 40) is accepted too). The paper trains each
with Adam, lr 1e-2, no weight decay, batch 100, for 6,000 steps; :data:`PAPER` holds those.
"""

from __future__ import annotations

from .. import nn
from ..nn.layers.container import conv_relu, linear_relu
from ..tensor import Tensor

PAPER = {"optimizer": "adam", "lr": 1e-2, "weight_decay": 0.0, "batch_size": 100,
         "steps": 6000, "eval_every": 250}


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


class LogisticRegression(nn.Module):
    """One linear layer 40 -> 10 (the paper's 32 % baseline)."""

    def __init__(self, input_size: int = 40, classes: int = 10, init="default"):
        super().__init__()
        self.linear = nn.Linear(input_size, classes, init=init)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(_flat(x))


class MLP(nn.Module):
    """40 -> 100 -> 100 -> 10 with ReLUs (the paper's 68 %)."""

    def __init__(self, input_size: int = 40, hidden: int = 100, classes: int = 10,
                 dropout: float = 0.0, init="default"):
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden, init=init)
        self.linear2 = nn.Linear(hidden, hidden, init=init)
        self.linear3 = nn.Linear(hidden, classes, init=init)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(linear_relu(self.linear1, _flat(x)))  # the pair fused in eager mode
        h = self.dropout(linear_relu(self.linear2, h))
        return self.linear3(h)


class CNN(nn.Module):
    """Three strided 1D convolutions (25 channels; 40 -> 19 -> 10 -> 5), then 125 -> 10 (94 %)."""

    def __init__(self, channels: int = 25, classes: int = 10, dropout: float = 0.0,
                 init="default"):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1, init=init)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, init=init)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, init=init)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels * 5, classes, init=init)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, x.shape[-1])
        h = conv_relu(self.conv1, x)  # each pair one fused op in eager mode
        h = conv_relu(self.conv2, h)
        h = conv_relu(self.conv3, h)
        return self.linear(self.dropout(_flat(h)))


class GRU(nn.Module):
    """A bidirectional GRU (hidden 6) over the 40 steps; all outputs (40·12 = 480) -> 10 (91 %)."""

    def __init__(self, hidden: int = 6, length: int = 40, classes: int = 10,
                 dropout: float = 0.0, init="default"):
        super().__init__()
        self.rnn = nn.GRU(1, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * hidden * length, classes, init=init)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], x.shape[-1], 1)
        out, _ = self.rnn(x)
        return self.linear(self.dropout(_flat(out)))
