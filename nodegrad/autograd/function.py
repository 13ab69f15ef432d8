"""``torch.autograd.function``: where PyTorch programs import ``Function``, ``FunctionCtx`` and
``once_differentiable`` from (``from torch.autograd.function import once_differentiable``)."""

from ..func.custom import Function, FunctionCtx, once_differentiable

__all__ = ["Function", "FunctionCtx", "once_differentiable"]
