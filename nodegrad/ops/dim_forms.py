"""PyTorch's calls of the top-level functions that carry NumPy's names: ``ng.sum(x, dim=1)``,
``ng.max(x, dim=1)`` (values, indices), ``ng.max(a, b)``, ``ng.cat(ts, dim=1)``,
``ng.transpose(x, 0, 1)``, ``ng.split(x, 2, dim=1)``, ``ng.add(x, y, alpha=2)``.

Each function keeps NumPy's meaning for NumPy's arguments (``axis=``, positional axes); PyTorch's
keywords (``dim=``, ``keepdim=``, ``dims=``) and argument forms that NumPy's cannot mean (a tensor
as ``max``'s second argument, two axes for ``transpose``) get PyTorch's meaning, the one the
Tensor methods already have. One exception, where the two differ and PyTorch code is the more
common: ``max``/``min`` with one positional dimension (``torch.max(out, 1)``) return PyTorch's
(values, indices), as ``sort`` and ``median`` do; ``axis=`` keeps NumPy's values. Imported
last by :mod:`nodegrad.ops`, whose names these replace.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

from .. import _backend as B
from ..tensor import Tensor
from . import elementwise as E
from . import shape as S

_UNSET = object()

# functions whose Tensor method takes dim=/keepdim= with PyTorch's meaning
_METHOD_FORMS = ("sum", "mean", "max", "min", "argmax", "argmin", "logsumexp", "std", "var",
                 "all", "any", "amax", "amin", "nansum", "nanmean")

# of those, the ones NumPy lacks: their positional dims are PyTorch's (a 0-d tensor's dim 0)
_TORCH_ONLY = ("logsumexp",)


def _one_dim(a) -> bool:
    """Whether ``a`` is one dimension (an integer, not a bool): ``max(x, 1)`` is then
    PyTorch's; a tuple of axes or None stays NumPy's axis."""
    return isinstance(a, int | B.np.integer) and not isinstance(a, bool | B.np.bool_)


def _method_form(fn: Callable, name: str) -> Callable:
    @functools.wraps(fn)
    def f(input, *args, dim=_UNSET, keepdim=_UNSET, **kwargs):
        if name in ("max", "min") and args and isinstance(args[0], Tensor):  # torch.max(a, b)
            if len(args) > 1 or kwargs or dim is not _UNSET or keepdim is not _UNSET:
                raise TypeError(f"{name}(a, b): the elementwise form takes two tensors only")
            return (E.maximum if name == "max" else E.minimum)(input, args[0])
        if dim is _UNSET and keepdim is _UNSET:
            if name in ("max", "min") and args and _one_dim(args[0]) and not kwargs:
                # torch.max(x, 1): PyTorch's (values, indices), as x.max(1), sort and median
                return getattr(Tensor, name)(input, *args)
            if name in _TORCH_ONLY and args:  # PyTorch's function: positional dims are dim=
                return getattr(Tensor, name)(input, *args, **kwargs)
            return fn(input, *args, **kwargs)
        if args:  # PyTorch's positional dim with keyword keepdim: sum(x, -1, keepdim=True)
            if dim is not _UNSET:
                raise TypeError(f"{name}: pass the dimension as dim= (PyTorch) or positionally "
                                "(NumPy's axis), not both")
            if len(args) > (2 if name in ("std", "var") else 1):
                raise TypeError(f"{name}(input, dim, keepdim=): got {len(args)} positional "
                                "arguments after input; pass the others by keyword")
            dim = args[0]
            if len(args) == 2:  # std/var(input, dim, unbiased, keepdim=)
                kwargs["unbiased"] = args[1]
        if dim is not _UNSET:
            kwargs["dim"] = dim
        if keepdim is not _UNSET:
            kwargs["keepdim"] = keepdim
        if "dim" not in kwargs:  # keepdim alone: over everything, as PyTorch's
            if name in ("max", "min"):
                raise TypeError(f"{name}(input, keepdim=): keepdim needs a dim (PyTorch's "
                                f"{name} has no keepdim over all entries; use a{name})")
            # argmax/argmin take one dim; None is the flattened index, kept as 1 x ... x 1
            kwargs["dim"] = None if name in ("argmax", "argmin") else tuple(range(input.ndim))
        return getattr(Tensor, name)(input, **kwargs)

    f.__doc__ = (fn.__doc__ or "") + (" PyTorch's dim=/keepdim= keywords are taken too, with "
                                      "the meaning of the Tensor method.")
    return f


def _axis_alias(fn: Callable, torch_name: str = "dim") -> Callable:
    """``fn(x, ..., axis=)`` that also takes PyTorch's ``dim=`` (or ``dims=``) for the axis."""
    @functools.wraps(fn)
    def f(*args, **kwargs):
        if torch_name in kwargs:
            if "axis" in kwargs:
                raise TypeError(f"{fn.__name__}: pass either axis= (NumPy) or {torch_name}= "
                                "(PyTorch), not both")
            kwargs["axis"] = kwargs.pop(torch_name)
        return fn(*args, **kwargs)

    return f


def split(x, indices_or_sections=_UNSET, *args, axis=_UNSET, dim=_UNSET,
          split_size_or_sections=_UNSET):
    """NumPy's split (``indices_or_sections``: a count of equal parts, or cut positions);
    with PyTorch's ``dim=`` or ``split_size_or_sections=`` PyTorch's split (a part size, or the
    sizes of the parts).

    A list given without ``axis=`` whose entries add up to the axis length reads as PyTorch's
    part sizes as well as NumPy's cut positions (``torch.split(out, [n_users, n_items])``):
    it is split as NumPy's, with a warning that names both keywords."""
    if split_size_or_sections is not _UNSET:  # PyTorch's keyword: PyTorch's split
        if indices_or_sections is not _UNSET or axis is not _UNSET:
            raise TypeError("split: pass the sizes once, and the dimension as dim= (PyTorch)")
        if len(args) > 1:
            raise TypeError("split: takes (tensor, split_size_or_sections, dim)")
        d = args[0] if args else (0 if dim is _UNSET else dim)
        return Tensor.split(x, split_size_or_sections, d)
    if indices_or_sections is _UNSET:
        raise TypeError("split: missing indices_or_sections (NumPy) or split_size_or_sections "
                        "(PyTorch)")
    if dim is not _UNSET:
        if args or axis is not _UNSET:
            raise TypeError("split: pass the dimension once, as dim= (PyTorch) or axis= (NumPy)")
        return Tensor.split(x, indices_or_sections, dim)
    if axis is not _UNSET:
        if args:
            raise TypeError("split: axis given twice (positionally and as axis=)")
        return S.split(x, indices_or_sections, axis)
    if len(args) > 1:
        raise TypeError(f"split: takes (x, indices_or_sections, axis), got {2 + len(args)} "
                        "positional arguments")
    ax = args[0] if args else 0
    cuts = indices_or_sections
    if (isinstance(cuts, (list, tuple)) and cuts and isinstance(x, Tensor)
            and all(isinstance(c, int) for c in cuts) and -x.ndim <= ax < x.ndim
            and sum(cuts) == x.shape[ax]):
        warnings.warn(f"split: the list {list(cuts)} is read as NumPy's cut positions "
                      f"({len(cuts) + 1} parts); it adds up to the length of axis {ax}, as "
                      f"PyTorch's part sizes do: pass dim={ax} for PyTorch's split "
                      f"({len(cuts)} parts), or axis={ax} for NumPy's", UserWarning,
                      stacklevel=2)
    return S.split(x, cuts, ax)


def transpose(x, *axes):
    """NumPy's transpose (a permutation, or none: reversed axes); with two axes PyTorch's
    ``transpose(x, dim0, dim1)``, which swaps them."""
    if len(axes) == 2 and all(isinstance(a, int) for a in axes):
        return S.swapaxes(x, axes[0], axes[1])
    return S.transpose(x, *axes)


def _alpha_form(fn: Callable, method: str, old_order: bool = False) -> Callable:
    """``fn(input, other)`` that also takes PyTorch's ``alpha=`` (input + alpha * other, or
    input - alpha * other), with the Tensor method's meaning; with ``old_order`` also
    PyTorch's deprecated ``add(input, alpha, other)`` (``add`` and ``sub``, not ``subtract``)."""
    @functools.wraps(fn)
    def f(input, other, *args, alpha=_UNSET, **kwargs):
        if (old_order and alpha is _UNSET and len(args) == 1 and not kwargs
                and isinstance(input, Tensor) and isinstance(args[0], Tensor)):
            return getattr(Tensor, method)(input, other, args[0])
        if alpha is _UNSET:
            return fn(input, other, *args, **kwargs)
        if args or kwargs:
            raise TypeError(f"{method}(input, other, alpha=): no other arguments with alpha")
        if not isinstance(input, Tensor):  # a number first: input ± alpha * other
            return fn(input, E.multiply(other, alpha))
        return getattr(Tensor, method)(input, other, alpha=alpha)

    return f


def forms(namespace: dict) -> dict:
    """The replacements for ``namespace``'s functions (the names it has)."""
    out = {name: _method_form(namespace[name], name) for name in _METHOD_FORMS
           if name in namespace}
    for name, method in (("add", "add"), ("subtract", "sub"), ("sub", "sub")):
        if name in namespace:
            out[name] = _alpha_form(namespace[name], method, old_order=name != "subtract")
    for name in ("concatenate", "cat", "stack", "expand_dims", "unsqueeze"):
        if name in namespace:
            out[name] = _axis_alias(namespace[name])
    if "flip" in namespace:
        out["flip"] = _axis_alias(namespace["flip"], "dims")
    out["split"] = split
    out["transpose"] = transpose
    return out


__all__ = ["forms", "split", "transpose"]
