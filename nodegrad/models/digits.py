"""Models for scikit-learn's 8x8 digits: an MLP and a small 2D CNN."""

from __future__ import annotations

from .. import nn
from ..nn.layers.container import conv_relu, linear_relu
from ..tensor import Tensor


class DigitsMLP(nn.Module):
    """64 -> hidden -> 10 with a ReLU."""

    def __init__(self, hidden: int = 64, classes: int = 10, dropout: float = 0.0,
                 init="default"):
        super().__init__()
        self.linear1 = nn.Linear(64, hidden, init=init)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, classes, init=init)

    def forward(self, x: Tensor) -> Tensor:
        h = linear_relu(self.linear1, x.reshape(x.shape[0], 64))  # one fused op in eager mode
        return self.linear2(self.dropout(h))


class DigitsCNN(nn.Module):
    """conv 3x3 (16) -> pool -> conv 3x3 (32) -> pool -> 128 -> 10, on (N, 1, 8, 8) images."""

    def __init__(self, channels: int = 16, classes: int = 10, dropout: float = 0.0,
                 init="default"):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, init=init)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1, init=init)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * channels * 4, classes, init=init)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, 8, 8)
        h = self.pool(conv_relu(self.conv1, x))      # (N, C, 4, 4); each pair one fused op
        h = self.pool(conv_relu(self.conv2, h))      # (N, 2C, 2, 2)
        return self.linear(self.dropout(h.reshape(h.shape[0], -1)))
