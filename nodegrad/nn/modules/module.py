"""``torch.nn.modules.module``: ``Module`` and the hooks that run for every module."""

from ..module import (Module, register_module_forward_hook,  # noqa: F401
                      register_module_forward_pre_hook)
