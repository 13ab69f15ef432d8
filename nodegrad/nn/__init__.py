"""Neural-network layers, losses and initialisers, in PyTorch's shape."""

from . import functional, init, utils
from .layers import *  # noqa: F403
from .layers import __all__ as _layers
from .module import Buffer, Module, Parameter, functional_call
from . import attention, parameter  # noqa: F401  (torch.nn.attention, torch.nn.parameter)
from . import modules  # noqa: F401,E402  (torch.nn.modules and its submodule paths)
from . import parallel  # noqa: F401,E402  (torch.nn.parallel)

__all__ = ["functional", "init", "utils", "Module", "Parameter", "Buffer", "functional_call",
           *_layers]
