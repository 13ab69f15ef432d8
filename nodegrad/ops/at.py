"""JAX's functional index updates: ``x.at[index].set(v)``, ``.add(v)``, ``.get()``, ...

Each returns a new tensor (``x`` is unchanged), differentiable in ``x`` and the value, under
``grad``, ``vmap`` (per-example indices too) and ``jit``. ``add`` sums values sent to a repeated
position, as JAX's scatter-add. The read-modify-write forms (``multiply``, ``divide``,
``power``, ``min``, ``max``, ``apply``) take basic indices only (ints, slices, None, ``...``):
with index arrays JAX applies every repeat, which one gather and one write would not.
"""

from __future__ import annotations

from collections.abc import Callable

from ..tensor import Tensor
from . import elementwise as E
from . import index as I

_BASIC = (int, slice, type(None), type(Ellipsis))


class _IndexedRef:
    """``x.at[index]``: the updates at ``index``, each giving a new tensor."""

    __slots__ = ("x", "index")

    def __init__(self, x: Tensor, index) -> None:
        self.x, self.index = x, index

    def _value(self, v, op: str) -> Tensor:
        """``v`` as a tensor of ``x``'s dtype on its device (JAX casts the update)."""
        x = self.x
        if not isinstance(v, Tensor):
            return Tensor._of(x.backend.asarray(v, dtype=x.dtype))
        return v if v.dtype == x.dtype else E.astype(v, x.dtype)

    def _basic_only(self, op: str) -> None:
        parts = self.index if isinstance(self.index, tuple) else (self.index,)
        if not all(isinstance(p, _BASIC) and not isinstance(p, bool) for p in parts):
            raise NotImplementedError(
                f"at[...].{op}: index arrays are not supported here (JAX applies the update "
                "again for each repeat of a position); use ints and slices, or .set with "
                "values computed for unique positions")

    def get(self, *, indices_are_sorted: bool = False, unique_indices: bool = False,
            mode: str | None = None, fill_value=None) -> Tensor:
        """``x[index]``."""
        _modes("get", mode, fill_value)
        return I.getitem(self.x, self.index)

    def set(self, values, *, indices_are_sorted: bool = False, unique_indices: bool = False,
            mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] = values`` (``values`` broadcast)."""
        _modes("set", mode)
        return I.index_update(self.x, self.index, self._value(values, "set"))

    def add(self, values, *, indices_are_sorted: bool = False, unique_indices: bool = False,
            mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``values`` added at ``index``; repeats add up."""
        _modes("add", mode)
        v = self._value(values, "add")
        return I.index_add_at(self.x, self.index, v)

    def subtract(self, values, **kw) -> Tensor:
        """A copy of ``x`` with ``values`` subtracted at ``index``; repeats add up."""
        return self.add(E.negative(self._value(values, "subtract")), **kw)

    def _rmw(self, op: str, fn: Callable, values, mode) -> Tensor:
        _modes(op, mode)
        self._basic_only(op)
        old = I.getitem(self.x, self.index)
        return I.index_update(self.x, self.index, self._value(fn(old, values), op))

    def multiply(self, values, *, indices_are_sorted: bool = False,
                 unique_indices: bool = False, mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] *= values`` (basic indices)."""
        return self._rmw("multiply", E.multiply, values, mode)

    mul = multiply

    def divide(self, values, *, indices_are_sorted: bool = False,
               unique_indices: bool = False, mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] /= values`` (basic indices)."""
        return self._rmw("divide", E.divide, values, mode)

    def power(self, values, *, indices_are_sorted: bool = False,
              unique_indices: bool = False, mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] **= values`` (basic indices)."""
        return self._rmw("power", E.power, values, mode)

    def min(self, values, *, indices_are_sorted: bool = False,  # noqa: A003
            unique_indices: bool = False, mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] = minimum(x[index], values)`` (basic indices)."""
        return self._rmw("min", E.minimum, values, mode)

    def max(self, values, *, indices_are_sorted: bool = False,  # noqa: A003
            unique_indices: bool = False, mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] = maximum(x[index], values)`` (basic indices)."""
        return self._rmw("max", E.maximum, values, mode)

    def apply(self, func: Callable, *, indices_are_sorted: bool = False,
              unique_indices: bool = False, mode: str | None = None) -> Tensor:
        """A copy of ``x`` with ``x[index] = func(x[index])`` (basic indices)."""
        return self._rmw("apply", lambda old, _: func(old), None, mode)

    def __repr__(self) -> str:
        return f"_IndexedRef(index={self.index!r})"


def _modes(op: str, mode, fill_value=None) -> None:
    """JAX's out-of-bounds modes: only the default (indices in bounds, as NumPy requires)."""
    if mode not in (None, "promise_in_bounds") or fill_value is not None:
        raise NotImplementedError(f"at[...].{op}: mode={mode!r} (fill_value={fill_value!r}) is "
                                  "not supported; indices must be in bounds (the default)")


class IndexUpdateHelper:
    """What ``x.at`` returns: ``x.at[index]`` names the positions to update."""

    __slots__ = ("x",)

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __getitem__(self, index) -> _IndexedRef:
        return _IndexedRef(self.x, index)

    def __repr__(self) -> str:
        return "IndexUpdateHelper"


__all__ = ["IndexUpdateHelper"]
