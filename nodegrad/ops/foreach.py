"""PyTorch's ``torch._foreach_*`` functions: one op over each tensor of a list (EMA updates,
hand-written optimisers, gradient clipping code call them).

Each is the op applied tensor by tensor, with the same arguments PyTorch takes (by position or
under PyTorch's keyword names: ``scalar=``, ``scalars=``, ``other=``, ``exponent=``,
``weight=``/``weights=``, ``value=``): a list of
tensors and, for binary ops, a number, a list of numbers, a tensor or a list of tensors; the
results come as a tuple (the names ending in ``_`` change the tensors in place and return
None). PyTorch fuses the loop into
few kernels on a GPU; here each tensor's op is its own call, so the results are the single
ops' results bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import ShapeError
from ..tensor import Tensor
from .reduce import vector_norm

UNARY = ("abs", "acos", "asin", "atan", "ceil", "cos", "cosh", "erf", "erfc", "exp", "expm1",
         "floor", "frac", "lgamma", "log", "log10", "log1p", "log2", "neg", "reciprocal",
         "round", "rsqrt", "sigmoid", "sign", "sin", "sinh", "sqrt", "tan", "tanh", "trunc")
BINARY = ("add", "sub", "mul", "div", "pow", "clamp_min", "clamp_max", "maximum", "minimum")


def _tensors(op: str, xs) -> list:
    """The list argument, checked: a sequence of tensors."""
    if isinstance(xs, Tensor) or not isinstance(xs, Sequence):
        raise TypeError(f"_foreach_{op}: expected a list or tuple of tensors, got "
                        f"{type(xs).__name__}")
    for x in xs:
        if not isinstance(x, Tensor):
            raise TypeError(f"_foreach_{op}: expected a list of tensors, got an element of "
                            f"type {type(x).__name__}")
    return list(xs)


def _others(op: str, other, n: int) -> list:
    """The second operand per tensor: a number or a tensor for all, or a list of either."""
    if isinstance(other, Tensor) or not isinstance(other, Sequence):
        return [other] * n
    if len(other) != n:
        raise ShapeError(f"_foreach_{op}: got {n} tensors but {len(other)} second operands "
                         "(the two lists must have the same length)")
    return list(other)


def _unary(name: str) -> tuple[Callable, Callable]:
    def out_of_place(self):
        return tuple(getattr(x, name)() for x in _tensors(name, self))

    def in_place(self):
        for x in _tensors(name + "_", self):
            getattr(x, name + "_")()
        return self  # the list given, as PyTorch's in-place forms return it

    out_of_place.__doc__ = f"``[x.{name}() for x in self]``."
    in_place.__doc__ = f"``x.{name}_()`` for each tensor of ``self``; ``self``."
    return out_of_place, in_place


_MISSING = object()


def _second(op: str, other, kw: dict, names: tuple[str, ...]):
    """The second operand, given by position or under one of PyTorch's keyword names for it
    (``scalar``, ``scalars``, ``other``, ``exponent``, ``weight``...: one of them)."""
    for k in kw:
        if k not in names:
            raise TypeError(f"_foreach_{op}() got an unexpected keyword argument {k!r}")
    given = list(kw.values()) + ([] if other is _MISSING else [other])
    if len(given) != 1:
        raise TypeError(f"_foreach_{op}: expected one second operand (by position or as one "
                        f"of {', '.join(names)}), got {len(given)}")
    v = given[0]
    if isinstance(v, Tensor) and "scalars" in kw and v.ndim == 1:
        v = v.tolist()  # a 1-D tensor of per-tensor numbers, as PyTorch takes ``scalars``
    return v


def _binary(name: str) -> tuple[Callable, Callable]:
    names = ("exponent",) if name == "pow" else ("other", "scalar", "scalars")

    def apply(x, y, alpha, inplace: bool):
        if name in ("maximum", "minimum") and not isinstance(y, Tensor):
            y = x.new_full((), y)
        if alpha is not None:  # add/sub's alpha
            return getattr(x, name + "_" if inplace else name)(y, alpha=alpha)
        fn = getattr(x, name + "_", None) if inplace else getattr(x, name)
        if fn is None:  # maximum_/minimum_: the op, then the copy into x
            return x.copy_(getattr(x, name)(y))
        return fn(y)

    def out_of_place(self, other=_MISSING, *, alpha=None, **kw):
        other = _second(name, other, kw, names)
        if not isinstance(self, Sequence) and name == "pow":  # pow(number, list)
            return tuple(x.new_full((), self) ** x for x in _tensors(name, other))
        xs = _tensors(name, self)
        return tuple(apply(x, y, alpha, False) for x, y in zip(xs, _others(name, other, len(xs))))

    def in_place(self, other=_MISSING, *, alpha=None, **kw):
        other = _second(name + "_", other, kw, names)
        xs = _tensors(name + "_", self)
        for x, y in zip(xs, _others(name + "_", other, len(xs))):
            apply(x, y, alpha, True)
        return self

    out_of_place.__doc__ = (f"``x.{name}(y)`` for each tensor ``x`` of ``self`` and its ``y`` "
                            "(a number, a tensor, or one of a list of either).")
    in_place.__doc__ = f"``x.{name}_(y)`` for each tensor of ``self``; ``self``."
    return out_of_place, in_place


def _pointwise(name: str):
    names = ("value", "scalars")

    def values(op: str, value, kw: dict):
        return 1 if value is _MISSING and not kw else _second(op, value, kw, names)

    def out_of_place(self, tensor1, tensor2, value=_MISSING, **kw):
        xs = _tensors(name, self)
        vs = _others(name, values(name, value, kw), len(xs))
        return tuple(getattr(x, name)(a, b, value=v) for x, a, b, v in
                     zip(xs, _tensors(name, tensor1), _tensors(name, tensor2), vs))

    def in_place(self, tensor1, tensor2, value=_MISSING, **kw):
        xs = _tensors(name + "_", self)
        vs = _others(name + "_", values(name + "_", value, kw), len(xs))
        for x, a, b, v in zip(xs, _tensors(name, tensor1), _tensors(name, tensor2), vs):
            getattr(x, name + "_")(a, b, value=v)
        return self

    out_of_place.__doc__ = f"``x.{name}(t1, t2, value=v)`` for each tensor of ``self``."
    in_place.__doc__ = f"``x.{name}_(t1, t2, value=v)`` for each tensor of ``self``; ``self``."
    return out_of_place, in_place


def _foreach_lerp(self, tensors1, weight=_MISSING, **kw) -> tuple:
    """``x.lerp(end, weight)`` for each tensor ``x`` of ``self`` (``weight`` a number, a
    tensor, or a list of either; ``weights=`` as PyTorch names a list of tensors)."""
    xs = _tensors("lerp", self)
    weight = _second("lerp", weight, kw, ("weight", "weights"))
    return tuple(x.lerp(e, w) for x, e, w in zip(xs, _tensors("lerp", tensors1),
                                                 _others("lerp", weight, len(xs))))


def _foreach_lerp_(self, tensors1, weight=_MISSING, **kw):
    """``x.lerp_(end, weight)`` for each tensor of ``self``: an EMA's update; ``self``."""
    xs = _tensors("lerp_", self)
    weight = _second("lerp_", weight, kw, ("weight", "weights"))
    for x, e, w in zip(xs, _tensors("lerp_", tensors1), _others("lerp_", weight, len(xs))):
        x.lerp_(e, w)
    return self


def _foreach_copy_(self, src, non_blocking: bool = False):
    """``x.copy_(s)`` for each tensor of ``self`` and of ``src``; ``self``."""
    xs, ss = _tensors("copy_", self), _tensors("copy_", src)
    if len(xs) != len(ss):
        raise ShapeError(f"_foreach_copy_: got {len(xs)} tensors but {len(ss)} sources")
    for x, s in zip(xs, ss):
        x.copy_(s)
    return self


def _foreach_zero_(self):
    """``x.zero_()`` for each tensor of ``self``; ``self``."""
    for x in _tensors("zero_", self):
        x.zero_()
    return self


def _foreach_clone(self) -> tuple:
    """``x.clone()`` for each tensor of ``self``."""
    return tuple(x.clone() for x in _tensors("clone", self))


def _foreach_norm(self, ord=2, dtype=None) -> tuple:
    """The vector ``ord``-norm of each tensor of ``self`` (0-d tensors, as PyTorch's), in
    ``dtype`` when given."""
    xs = _tensors("norm", self)
    return tuple(vector_norm(x if dtype is None else x.to(dtype), ord) for x in xs)


def _foreach_max(self) -> tuple:
    """The largest entry of each tensor of ``self`` (0-d tensors)."""
    return tuple(x.max() for x in _tensors("max", self))


def namespace() -> dict:
    """Every ``_foreach_*`` function by name, for the top-level namespace."""
    ns: dict = {}
    for name in UNARY:
        ns[f"_foreach_{name}"], ns[f"_foreach_{name}_"] = _unary(name)
    for name in BINARY:
        ns[f"_foreach_{name}"], ns[f"_foreach_{name}_"] = _binary(name)
    for name in ("addcmul", "addcdiv"):
        ns[f"_foreach_{name}"], ns[f"_foreach_{name}_"] = _pointwise(name)
    for fn in (_foreach_lerp, _foreach_lerp_, _foreach_copy_, _foreach_zero_, _foreach_clone,
               _foreach_norm, _foreach_max):
        ns[fn.__name__] = fn
    for k, fn in ns.items():
        fn.__name__ = fn.__qualname__ = k
    return ns
