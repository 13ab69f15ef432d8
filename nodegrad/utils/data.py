"""``torch.utils.data``: :mod:`nodegrad.data` under PyTorch's name (the same objects)."""

from ..data import *  # noqa: F401,F403
from ..data import __all__  # noqa: F401
