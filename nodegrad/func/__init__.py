"""Function transforms in the JAX style, on the same engine as ``Tensor.backward``."""

from .grad import grad, value_and_grad, vjp
from .jvp import hessian, hvp, jacfwd, jacrev, jvp, linearize
from .vmap import vmap
from .tree import (register_dataclass, register_pytree_node, tree_flatten, tree_leaves, tree_map,
                   tree_structure, tree_unflatten)
from .module_state import (functional_call, functionalize, grad_and_value,
                           replace_all_batch_norm_modules_, stack_module_state)
from .checkpoint import remat
from .custom import custom_jvp, custom_vjp

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "linearize", "jacfwd", "jacrev", "hessian",
           "hvp", "vmap", "functional_call", "register_pytree_node", "register_dataclass",
           "tree_flatten", "tree_leaves", "tree_map", "tree_structure", "tree_unflatten",
           "grad_and_value", "stack_module_state", "functionalize",
           "replace_all_batch_norm_modules_", "remat", "custom_jvp", "custom_vjp"]
