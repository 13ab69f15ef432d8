"""``torch.nn.modules.padding``: the padding modules."""

from ..layers.padding import *  # noqa: F403
