"""PyTorch's import path ``torch.optim.optimizer``: the base class, the global step hooks and
the ``required`` marker of a hyperparameter with no default.

Code written against ``from torch.optim.optimizer import Optimizer`` ports by changing the
import only; the definitions live in :mod:`.base`.
"""

from .base import (Optimizer, register_optimizer_step_post_hook,
                   register_optimizer_step_pre_hook, required)

__all__ = ["Optimizer", "register_optimizer_step_pre_hook", "register_optimizer_step_post_hook",
           "required"]
