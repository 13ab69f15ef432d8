"""Function transforms in the JAX style, on the same engine as ``Tensor.backward``."""

from .grad import grad, value_and_grad, vjp
from .tree import register_pytree_node, tree_flatten, tree_leaves, tree_map, tree_unflatten

__all__ = ["grad", "value_and_grad", "vjp", "register_pytree_node", "tree_flatten",
           "tree_leaves", "tree_map", "tree_unflatten"]
