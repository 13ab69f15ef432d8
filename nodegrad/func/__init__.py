"""Function transforms in the JAX style, on the same engine as ``Tensor.backward``."""

from .grad import grad, value_and_grad, vjp
from .jvp import hessian, hvp, jacfwd, jacrev, jvp, linearize
from .vmap import vmap
from .tree import register_pytree_node, tree_flatten, tree_leaves, tree_map, tree_unflatten
from .module_state import (functionalize, grad_and_value, replace_all_batch_norm_modules_,
                           stack_module_state)
from .checkpoint import remat

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "linearize", "jacfwd", "jacrev", "hessian",
           "hvp", "vmap", "functional_call", "register_pytree_node", "tree_flatten",
           "tree_leaves", "tree_map", "tree_unflatten", "grad_and_value", "stack_module_state",
           "functionalize", "replace_all_batch_norm_modules_", "remat"]


def functional_call(module, params: dict | tuple | list, *args, **kwargs):
    """Call ``module`` with ``params`` (dotted name -> tensor) in place of its own tensors;
    the same as ``nodegrad.nn.functional_call``, here to pair with vmap and grad. As in
    ``torch.func``, ``params`` may be a tuple of dicts (e.g. parameters and buffers), merged."""
    from ..nn.module import functional_call as call

    if isinstance(params, tuple | list):
        merged: dict = {}
        for d in params:
            clash = merged.keys() & d.keys()
            if clash:
                raise ValueError(f"functional_call: {sorted(clash)} appear in more than one "
                                 "of the dicts")
            merged.update(d)
        params = merged
    return call(module, params, *args, **kwargs)
