"""Pytrees: nested tuples, lists and dicts of tensors, flattened to a list of leaves and back.

Transforms take and return whole trees (``grad(f)(params)`` with ``params`` a dict gives a dict
of gradients). Other containers, such as modules, register a flatten/unflatten pair.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

_registry: dict[type, tuple[Callable, Callable]] = {}


def register_pytree_node(cls: type, flatten: Callable, unflatten: Callable) -> None:
    """Teach the tree functions a container: ``flatten(x) -> (children, aux)``,
    ``unflatten(aux, children) -> x``."""
    _registry[cls] = (flatten, unflatten)


register_pytree_node(tuple, lambda t: (list(t), None), lambda aux, c: tuple(c))
register_pytree_node(list, lambda t: (list(t), None), lambda aux, c: list(c))
register_pytree_node(dict, lambda d: ([d[k] for k in sorted(d)], sorted(d)),
                     lambda keys, c: dict(zip(keys, c)))
register_pytree_node(OrderedDict, lambda d: (list(d.values()), list(d)),  # insertion order
                     lambda keys, c: OrderedDict(zip(keys, c)))


def _registered_base(x):
    """A registered class that ``x`` subclasses (e.g. Module for a Linear), else None."""
    for cls in _registry:
        if cls not in (tuple, list, dict) and isinstance(x, cls):
            return cls
    return None


class TreeDef:
    """The shape of a tree without its leaves."""

    __slots__ = ("kind", "aux", "children")

    def __init__(self, kind, aux, children):
        self.kind, self.aux, self.children = kind, aux, children

    def __eq__(self, other) -> bool:
        return (isinstance(other, TreeDef) and self.kind is other.kind and self.aux == other.aux
                and self.children == other.children)

    def __repr__(self) -> str:
        if self.kind is None:
            return "*"
        return f"{self.kind.__name__}({', '.join(map(repr, self.children))})"

    @property
    def num_leaves(self) -> int:
        return 1 if self.kind is None else sum(c.num_leaves for c in self.children)


_LEAF = TreeDef(None, None, ())


def _namedtuple_node(kind: type) -> tuple[Callable, Callable]:
    """A namedtuple class (sort's and max's results, a user's) is a node, as in JAX."""
    entry = _registry[kind] = (lambda t: (list(t), None), lambda aux, c: kind(*c))
    return entry


def _flatten(x, leaves: list) -> TreeDef:
    if x is None:
        return TreeDef(type(None), None, ())
    kind = type(x)
    entry = _registry.get(kind)
    if entry is None and isinstance(x, tuple) and hasattr(kind, "_fields"):
        entry = _namedtuple_node(kind)
    if entry is None:
        kind = _registered_base(x)
        if kind is None:
            leaves.append(x)
            return _LEAF
        entry = _registry[kind]
    children, aux = entry[0](x)
    return TreeDef(kind, aux, tuple([_flatten(c, leaves) for c in children]))


def tree_flatten(tree: Any) -> tuple[list, TreeDef]:
    """The leaves of ``tree`` in a fixed order (dict keys sorted) and its structure."""
    # module-level recursion, not a nested function calling itself: such a closure is a
    # reference cycle that would keep the leaves (whole batches of gradients) alive until the
    # cyclic garbage collector runs
    leaves: list = []
    return leaves, _flatten(tree, leaves)


def _unflatten(td: TreeDef, it):
    if td.kind is None:
        return next(it)
    if td.kind is type(None):
        return None
    return _registry[td.kind][1](td.aux, [_unflatten(c, it) for c in td.children])


def tree_unflatten(treedef: TreeDef, leaves) -> Any:
    """Rebuild a tree of ``treedef``'s shape from ``leaves``."""
    return _unflatten(treedef, iter(leaves))


def tree_leaves(tree: Any) -> list:
    return tree_flatten(tree)[0]


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise over one or more trees of the same structure."""
    leaves, td = tree_flatten(tree)
    others = [tree_flatten(r)[0] for r in rest]
    return tree_unflatten(td, [fn(*xs) for xs in zip(leaves, *others)])
