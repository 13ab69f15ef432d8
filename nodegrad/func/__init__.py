"""Function transforms in the JAX style, on the same engine as ``Tensor.backward``."""

from .grad import grad, value_and_grad, vjp
from .jvp import hessian, hvp, jacfwd, jacrev, jvp, linearize
from .vmap import vmap
from .tree import (register_dataclass, register_pytree_node, tree_flatten, tree_leaves, tree_map,
                   tree_structure, tree_unflatten)
from .module_state import (functionalize, grad_and_value, replace_all_batch_norm_modules_,
                           stack_module_state)
from .checkpoint import remat
from .custom import custom_jvp, custom_vjp

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "linearize", "jacfwd", "jacrev", "hessian",
           "hvp", "vmap", "functional_call", "register_pytree_node", "register_dataclass",
           "tree_flatten", "tree_leaves", "tree_map", "tree_structure", "tree_unflatten",
           "grad_and_value", "stack_module_state", "functionalize",
           "replace_all_batch_norm_modules_", "remat", "custom_jvp", "custom_vjp"]


def functional_call(module, parameter_and_buffer_dicts, args=None, kwargs: dict | None = None,
                    *, tie_weights: bool = True, strict: bool = False):
    """``torch.func.functional_call``: ``module(*args, **kwargs)`` with the tensors of
    ``parameter_and_buffer_dicts`` (dotted name -> tensor; one dict, or a tuple of dicts such as
    parameters and buffers, which must not share names) in place of its own, restored
    afterwards; to pair with vmap and grad. ``args`` that is not a tuple is the one argument.
    ``tie_weights``: a tensor the module holds under several names is replaced under all of
    them; ``strict``: every parameter and buffer must be given. (``nn.functional_call(model,
    params, *args)`` is the short form.)"""
    from ..nn.utils.stateless import call

    return call(module, parameter_and_buffer_dicts, args, kwargs, tie_weights=tie_weights,
                strict=strict)
