"""``torch.autograd.functional`` under its import path, so ``from nodegrad.autograd.functional
import jacobian`` works as PyTorch's does; the functions live in
:mod:`nodegrad.func.autograd_functional`."""

from ..func.autograd_functional import __all__, hessian, hvp, jacobian, jvp, vhp, vjp  # noqa: F401
