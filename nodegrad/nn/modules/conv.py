"""``torch.nn.modules.conv``: convolutions (and transposed ones) and their base ``_ConvNd``."""

from ..layers.conv import _ConvNd, Conv1d, Conv2d, Conv3d  # noqa: F401
from ..layers.conv_transpose import *  # noqa: F403
from ..layers.conv_transpose import _ConvTransposeNd  # noqa: F401
