"""``torch.nn.modules.dropout``: the dropout modules."""

from ..layers.dropout import *  # noqa: F403
