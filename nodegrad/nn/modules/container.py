"""``torch.nn.modules.container``: ``Sequential``, ``ModuleList``, ``ModuleDict`` and the
parameter containers."""

from ..layers.container import *  # noqa: F403
