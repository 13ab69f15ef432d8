"""``torch.nn.modules.flatten``: ``Flatten`` and ``Unflatten``."""

from ..layers.linear import Flatten  # noqa: F401
from ..layers.linear_extra import Unflatten  # noqa: F401
