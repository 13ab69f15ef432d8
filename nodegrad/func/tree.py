"""Pytrees: nested tuples, lists and dicts of tensors, flattened to a list of leaves and back.

Transforms take and return whole trees (``grad(f)(params)`` with ``params`` a dict gives a dict
of gradients). Other containers, such as modules, register a flatten/unflatten pair.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

_registry: dict[type, tuple[Callable, Callable]] = {}


def register_pytree_node(cls: type, flatten: Callable, unflatten: Callable) -> None:
    """Teach the tree functions a container: ``flatten(x) -> (children, aux)``,
    ``unflatten(aux, children) -> x``."""
    _registry[cls] = (flatten, unflatten)


class _Keys(tuple):
    """A dict's keys, sorted (the leaves' order, and what structures compare by, as in JAX),
    remembering the dict's own order in ``order`` so that a rebuilt dict iterates as the
    original did: ``grad(f)(params).values()`` zips with ``params.values()``, as in
    ``torch.func``."""

    order: tuple

    def __new__(cls, d: dict) -> _Keys:
        keys = super().__new__(cls, sorted(d))
        keys.order = tuple(d)
        return keys


def _dict_items(keys: Sequence, children: list) -> list:
    """``(key, child)`` pairs in the original dict's order."""
    by_key = dict(zip(keys, children))
    return [(k, by_key[k]) for k in getattr(keys, "order", keys)]


register_pytree_node(tuple, lambda t: (list(t), None), lambda aux, c: tuple(c))
register_pytree_node(list, lambda t: (list(t), None), lambda aux, c: list(c))
register_pytree_node(dict, lambda d: ([d[k] for k in sorted(d)], _Keys(d)),
                     lambda keys, c: dict(_dict_items(keys, c)))
register_pytree_node(OrderedDict, lambda d: (list(d.values()), list(d)),  # insertion order
                     lambda keys, c: OrderedDict(zip(keys, c)))
register_pytree_node(defaultdict, lambda d: ([d[k] for k in sorted(d)],
                                             (d.default_factory, _Keys(d))),
                     lambda aux, c: defaultdict(aux[0], _dict_items(aux[1], c)))


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

    def unflatten(self, leaves) -> Any:
        """This structure with ``leaves`` in it (JAX's ``PyTreeDef.unflatten``)."""
        return tree_unflatten(self, leaves)

    def flatten_up_to(self, tree: Any) -> list:
        """The subtrees of ``tree`` at this structure's leaves (JAX's ``flatten_up_to``): this
        structure must be a prefix of ``tree``'s, else a ValueError says where they differ."""
        out: list = []
        _up_to(self, tree, out, "")
        return out


_LEAF = TreeDef(None, None, ())


def _namedtuple_node(kind: type) -> tuple[Callable, Callable]:
    """A namedtuple class (sort's and max's results, a user's) is a node, as in JAX."""
    entry = _registry[kind] = (lambda t: (list(t), None), lambda aux, c: kind(*c))
    return entry


def _node(x) -> tuple:
    """``(kind, (flatten, unflatten))`` of the container ``x``; ``(None, None)`` for a leaf."""
    kind = type(x)
    entry = _registry.get(kind)
    if entry is None and isinstance(x, tuple) and hasattr(kind, "_fields"):
        entry = _namedtuple_node(kind)
    if entry is None:
        kind = _registered_base(x)
        if kind is None:
            return None, None
        entry = _registry[kind]
    return kind, entry


def _flatten(x, leaves: list, is_leaf) -> TreeDef:
    if is_leaf is not None and is_leaf(x):
        leaves.append(x)
        return _LEAF
    if x is None:
        return TreeDef(type(None), None, ())
    kind, entry = _node(x)
    if kind is None:
        leaves.append(x)
        return _LEAF
    children, aux = entry[0](x)
    return TreeDef(kind, aux, tuple([_flatten(c, leaves, is_leaf) for c in children]))


def tree_flatten(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> tuple[list, TreeDef]:
    """The leaves of ``tree`` in a fixed order (dict keys sorted) and its structure.
    ``is_leaf(x)`` true makes ``x`` a leaf even where it is a container (JAX's)."""
    # module-level recursion, not a nested function calling itself: such a closure is a
    # reference cycle that would keep the leaves (whole batches of gradients) alive until the
    # cyclic garbage collector runs
    leaves: list = []
    return leaves, _flatten(tree, leaves, is_leaf)


def _unflatten(td: TreeDef, it):
    if td.kind is None:
        return next(it)
    if td.kind is type(None):
        return None
    return _registry[td.kind][1](td.aux, [_unflatten(c, it) for c in td.children])


def tree_unflatten(treedef: TreeDef, leaves) -> Any:
    """Rebuild a tree of ``treedef``'s shape from ``leaves`` (exactly one per leaf)."""
    leaves = list(leaves)
    n = treedef.num_leaves
    if len(leaves) != n:
        raise ValueError(f"tree_unflatten: the structure {treedef} has {n} leaves, got "
                         f"{len(leaves)}")
    return _unflatten(treedef, iter(leaves))


def tree_leaves(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list:
    """The leaves of ``tree`` (see :func:`tree_flatten`)."""
    return tree_flatten(tree, is_leaf)[0]


def tree_structure(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> TreeDef:
    """The structure of ``tree`` without its leaves (JAX's ``tree_structure``)."""
    return tree_flatten(tree, is_leaf)[1]


def _kind_name(td: TreeDef) -> str:
    return "None" if td.kind is type(None) else f"a {td.kind.__name__}"


def _up_to(td: TreeDef, x, out: list, path: str) -> None:
    """:meth:`TreeDef.flatten_up_to` for the subtree ``x`` found at ``path``."""
    where = path or "the top"
    if td.kind is None:
        out.append(x)
        return
    if td.kind is type(None):
        if x is not None:
            raise ValueError(f"tree structures differ at {where}: None in the first tree, "
                             f"{type(x).__name__} in the other")
        return
    kind, entry = (type(None), None) if x is None else _node(x)
    if kind is not td.kind:
        got = "a leaf" if kind is None else ("None" if x is None else f"a {kind.__name__}")
        raise ValueError(f"tree structures differ at {where}: {_kind_name(td)} in the first "
                         f"tree, {got} ({type(x).__name__}) in the other")
    children, aux = entry[0](x)
    if aux != td.aux or len(children) != len(td.children):
        if td.kind in (dict, OrderedDict):
            what = f"keys {list(td.aux)} and {list(aux)}"
        elif len(children) != len(td.children):
            what = f"{len(td.children)} and {len(children)} children"
        else:
            what = f"metadata {td.aux!r} and {aux!r}"
        raise ValueError(f"tree structures differ at {where}: {_kind_name(td)} with {what}")
    for k, (c, sub) in enumerate(zip(td.children, children)):
        key = td.aux[k] if td.kind in (dict, OrderedDict) else k
        _up_to(c, sub, out, f"{path}[{key!r}]")


def tree_map(fn: Callable, tree: Any, *rest: Any,
             is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """``fn`` applied leafwise over ``tree`` and ``rest`` (JAX's ``tree_map``): each tree of
    ``rest`` has ``tree``'s structure or one with subtrees where ``tree`` has leaves (those
    subtrees are passed whole); other structures raise a ValueError naming where they differ."""
    leaves, td = tree_flatten(tree, is_leaf)
    others = [td.flatten_up_to(r) for r in rest]
    return tree_unflatten(td, [fn(*xs) for xs in zip(leaves, *others)])


def broadcast_prefix(prefix: Any, tree: Any, what: str,
                     is_leaf: Callable[[Any], bool] | None = None) -> list:
    """One entry of ``prefix`` per leaf of ``tree``: a leaf of ``prefix`` (None counts as one,
    as in JAX's ``in_axes``) applies to the whole subtree of ``tree`` at its place."""
    pre, td = tree_flatten(prefix, lambda x: x is None or (is_leaf is not None and is_leaf(x)))
    try:
        subs = td.flatten_up_to(tree)
    except ValueError as e:
        raise ValueError(f"{what} is not a prefix of the arguments' tree: {e}") from None
    out: list = []
    for p, sub in zip(pre, subs):
        out.extend([p] * len(tree_leaves(sub)))
    return out


def register_dataclass(cls: type, data_fields: Sequence[str] | None = None,
                       meta_fields: Sequence[str] | None = None) -> type:
    """Make the dataclass ``cls`` a tree node (JAX's ``register_dataclass``): its
    ``data_fields`` are children, its ``meta_fields`` part of the structure. Without them, the
    fields marked ``field(metadata={"static": True})`` are meta and the others data. Returns
    ``cls`` (usable as a decorator)."""
    import dataclasses

    if data_fields is None and meta_fields is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"register_dataclass: {cls.__name__} is not a dataclass; pass "
                            "data_fields and meta_fields")
        fs = [f for f in dataclasses.fields(cls) if f.init]
        meta_fields = [f.name for f in fs if f.metadata.get("static", False)]
        data_fields = [f.name for f in fs if not f.metadata.get("static", False)]
    elif data_fields is None or meta_fields is None:
        raise TypeError("register_dataclass: pass both data_fields and meta_fields, or neither")
    data, meta = tuple(data_fields), tuple(meta_fields)

    def flatten(x):
        return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in meta)

    def unflatten(aux, children):
        return cls(**dict(zip(data, children)), **dict(zip(meta, aux)))

    register_pytree_node(cls, flatten, unflatten)
    return cls
