"""``nn.utils.stateless`` as PyTorch users know it: run a module with other tensors in place
of its parameters and buffers (PyTorch deprecates it for ``func.functional_call``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from ..module import Module
from ..module import functional_call as _call
from .parametrize import _overridden, is_parametrized

__all__ = ["functional_call"]


def _tied(module: Module, given: dict) -> dict:
    """``given`` plus, for each tensor it replaces that the module holds under other names
    too (tied weights), those names with the same replacement."""
    names: dict = {}
    for mp, m in module.named_modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is not None:
                    names.setdefault(id(t), []).append(f"{mp}.{k}" if mp else k)
    out = dict(given)
    for group in names.values():
        for n in group:
            if n in given:
                for alias in group:
                    out.setdefault(alias, given[n])
    return out


def functional_call(module: Module, parameter_and_buffer_dicts: Mapping | Sequence[Mapping],
                    args=None, kwargs: dict | None = None, *, tie_weights: bool = True,
                    strict: bool = False):
    """``module(*args, **kwargs)`` with the tensors of ``parameter_and_buffer_dicts`` (dotted
    name -> tensor; one dict or several, which must not share names) in place of its own,
    which are restored afterwards. ``args`` that is not a tuple is the one argument. With
    ``strict`` every parameter and buffer must be given. A parametrized tensor given under its
    own name (``"weight"``) is used as it is, its parametrizations not run (as PyTorch); give
    ``"parametrizations.weight.original"`` to run them on another original."""
    warnings.warn("nn.utils.stateless.functional_call is deprecated (as in PyTorch); use "
                  "nodegrad.func.functional_call", FutureWarning, stacklevel=2)
    return call(module, parameter_and_buffer_dicts, args, kwargs, tie_weights=tie_weights,
                strict=strict)


def call(module: Module, parameter_and_buffer_dicts: Mapping | Sequence[Mapping], args=None,
         kwargs: dict | None = None, *, tie_weights: bool = True, strict: bool = False):
    """``torch.func.functional_call``'s semantics (see :func:`functional_call`), without the
    deprecation: ``nodegrad.func.functional_call``."""
    dicts = ([parameter_and_buffer_dicts] if isinstance(parameter_and_buffer_dicts, Mapping)
             else list(parameter_and_buffer_dicts))
    merged: dict = {}
    for d in dicts:
        if not isinstance(d, Mapping):
            raise TypeError(f"functional_call: expected dicts of tensors, got "
                            f"{type(d).__name__}")
        clash = set(merged) & set(d)
        if clash:
            raise ValueError(f"functional_call: {sorted(clash)} appear in more than one dict")
        merged.update(d)
    if strict:
        own = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
        missing, unexpected = sorted(own - set(merged)), sorted(set(merged) - own)
        if missing or unexpected:
            raise RuntimeError(f"functional_call (strict=True): missing {missing}, "
                               f"unexpected {unexpected}")
    if tie_weights:
        merged = _tied(module, merged)
    args = () if args is None else args if isinstance(args, tuple) else (args,)
    # a parametrized tensor given by its own name replaces the parametrization's output
    # (its originals are given as "<path>.parametrizations.<name>.original")
    plain = {}
    for name in list(merged):
        mp, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(mp)
        except AttributeError:
            continue
        if is_parametrized(owner, leaf):
            plain[(owner, leaf)] = merged.pop(name)
    if not plain:
        return _call(module, merged, *args, **(kwargs or {}))
    with _overridden(plain):
        return _call(module, merged, *args, **(kwargs or {}))
