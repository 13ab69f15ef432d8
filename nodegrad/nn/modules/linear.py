"""``torch.nn.modules.linear``: ``Linear``, ``Bilinear`` and ``Identity``."""

from ..layers.linear import Identity, Linear  # noqa: F401
from ..layers.linear_extra import Bilinear  # noqa: F401
