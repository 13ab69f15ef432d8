"""Function transforms in the JAX style, on the same engine as ``Tensor.backward``."""

from .grad import grad, value_and_grad, vjp
from .jvp import hessian, hvp, jacfwd, jacrev, jvp, linearize
from .vmap import vmap
from .tree import register_pytree_node, tree_flatten, tree_leaves, tree_map, tree_unflatten

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "linearize", "jacfwd", "jacrev", "hessian",
           "hvp", "vmap", "functional_call", "register_pytree_node", "tree_flatten",
           "tree_leaves", "tree_map", "tree_unflatten"]


def functional_call(module, params: dict, *args, **kwargs):
    """Call ``module`` with ``params`` (dotted name -> tensor) in place of its own tensors;
    the same as ``nodegrad.nn.functional_call``, here to pair with vmap and grad."""
    from ..nn.module import functional_call as call

    return call(module, params, *args, **kwargs)
