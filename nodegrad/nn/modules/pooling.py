"""``torch.nn.modules.pooling``: the pooling modules."""

from ..layers.conv import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d,  # noqa: F401
                           AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d)
from ..layers.pool import *  # noqa: F403
