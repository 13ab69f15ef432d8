"""Optimisers, learning-rate schedules, gradient clipping and regularisation.

>>> import nodegrad as ng
>>> w = ng.tensor([1.0, -2.0], requires_grad=True)
>>> opt = ng.optim.SGD([w], lr=0.1)
>>> (w * w).sum().backward()
>>> opt.step()
>>> w
tensor([ 0.8, -1.6], requires_grad=True)
"""

from . import lr_scheduler, optimizer, swa_utils
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adafactor import Adafactor
from .adam import Adam
from .adamw import AdamW
from .asgd import ASGD
from .base import (Optimizer, register_optimizer_step_post_hook,
                   register_optimizer_step_pre_hook)
from .clip import clip_grad_norm_, clip_grad_value_
from .lbfgs import LBFGS
from .muon import Muon
from .nadam import NAdam
from .radam import Adamax, RAdam
from .regularisation import l2_penalty
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam",
           "RAdam", "Adamax", "Rprop", "ASGD", "Adafactor", "LBFGS", "Muon", "SparseAdam",
           "lr_scheduler", "optimizer", "swa_utils", "clip_grad_norm_", "clip_grad_value_",
           "l2_penalty",
           "register_optimizer_step_pre_hook", "register_optimizer_step_post_hook"]
