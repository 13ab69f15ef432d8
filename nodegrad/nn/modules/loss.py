"""``torch.nn.modules.loss``: the loss modules and their bases ``_Loss``, ``_WeightedLoss``."""

from ..layers.loss import *  # noqa: F403
from ..layers.loss import _Loss, _WeightedLoss  # noqa: F401
