"""PyTorch's ``torch.autograd`` names on nodegrad's engine: ``Function`` for an op with its own
backward, and the engine's entry points (``grad``, ``backward``) and modes.

>>> import nodegrad as ng
>>> class Cube(ng.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     def backward(ctx, g):
...         (x,) = ctx.saved_tensors
...         return 3 * x ** 2 * g
>>> x = ng.tensor([2.0], requires_grad=True)
>>> Cube.apply(x).sum().backward()
>>> x.grad
tensor([12.])
"""

from __future__ import annotations

from .autodiff import backward, detect_anomaly, enable_grad, grad, no_grad, set_grad_enabled
from .func import autograd_functional as functional
from .func.custom import Function, FunctionCtx, once_differentiable

__all__ = ["Function", "FunctionCtx", "once_differentiable", "functional", "grad", "backward",
           "no_grad", "enable_grad", "set_grad_enabled", "detect_anomaly"]
