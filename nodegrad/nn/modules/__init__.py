"""``torch.nn.modules``: the layers under the submodule paths PyTorch programs import them
from (``from torch.nn.modules.loss import _Loss``, ``torch.nn.modules.batchnorm._BatchNorm``,
``torch.nn.modules.utils._pair``, ``torch.nn.modules.module.register_module_forward_hook``)."""

from ..layers import *  # noqa: F403
from ..layers import __all__ as _layers
from ..module import Module
from . import (activation, batchnorm, container, conv, dropout, flatten, instancenorm,  # noqa: F401
               linear, loss, module, normalization, padding, pooling, rnn, sparse, transformer,
               utils)

__all__ = ["Module", *_layers]
