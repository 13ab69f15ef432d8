"""``torch.nn.modules.activation``: the activation modules and ``MultiheadAttention``."""

from ..layers.activation import *  # noqa: F403
from ..layers.attention import MultiheadAttention  # noqa: F401
