"""Module ensembles and the remaining ``torch.func`` helpers.

``stack_module_state`` stacks the parameters and buffers of several same-shaped modules along a
new leading axis, so one ``vmap(functional_call)`` runs the whole ensemble in one batched pass:

>>> import nodegrad as ng
>>> models = [ng.nn.Linear(3, 2) for _ in range(4)]
>>> params, buffers = ng.func.stack_module_state(models)
>>> run = lambda p, x: ng.func.functional_call(models[0], p, x)
>>> ng.vmap(run, in_axes=(0, None))(params, ng.randn(5, 3)).shape
(4, 5, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from ..ops.shape import stack
from ..tensor import Tensor
from .grad import value_and_grad


def _stacked_leaf(tensors: Sequence[Tensor], name: str) -> Tensor:
    """The tensors stacked as a new leaf that requires grad when they all do (mixed: refused)."""
    wants = [t.requires_grad for t in tensors]
    if any(wants) and not all(wants):
        raise ValueError(f"stack_module_state: parameter {name!r} requires grad in some models "
                         "but not in others; expected all or none")
    out = stack([t.detach() for t in tensors], 0)
    return out.requires_grad_() if all(wants) else out


def stack_module_state(models: Sequence) -> tuple[dict, dict]:
    """``(params, buffers)``: each dotted name mapped to that tensor of every model stacked on
    a new axis 0, as ``torch.func.stack_module_state``. The stacked parameters are new leaves
    (gradients reach them, not the models); the models must share type and train/eval mode."""
    models = list(models)
    if not models:
        raise ValueError("stack_module_state: expected at least one model, got 0")
    if len({m.training for m in models}) > 1:
        raise ValueError("stack_module_state: expected all models to be in the same mode "
                         "(all training or all eval)")
    if len({type(m) for m in models}) > 1:
        raise ValueError(f"stack_module_state: expected models of one type, got "
                         f"{sorted({type(m).__name__ for m in models})}")

    def stacked(named: list[dict], what: str) -> dict:
        names = list(named[0])
        for k, d in enumerate(named[1:], 1):
            if list(d) != names:
                raise ValueError(f"stack_module_state: model {k} has {what} {sorted(d)}, "
                                 f"model 0 has {sorted(names)}")
        for name in names:
            shapes = {tuple(d[name].shape) for d in named}
            if len(shapes) > 1:
                raise ValueError(f"stack_module_state: {what[:-1]} {name!r} has shapes "
                                 f"{sorted(shapes)} across the models; expected one")
        return {name: _stacked_leaf([d[name] for d in named], name) for name in names}

    params = stacked([dict(m.named_parameters()) for m in models], "parameters")
    buffers = stacked([{k: b for k, b in m.named_buffers() if b is not None} for m in models],
                      "buffers")
    return params, buffers


def grad_and_value(func: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """``torch.func.grad_and_value``: a function returning ``(gradient, value)``; with
    ``has_aux``, ``(gradient, (value, aux))``. ``func`` returns a scalar."""
    vg = value_and_grad(func, argnums, has_aux)

    def wrapped(*args, **kwargs):
        value, g = vg(*args, **kwargs)
        return g, value

    wrapped.__name__ = f"grad_and_value({getattr(func, '__name__', 'f')})"
    return wrapped


def functionalize(func: Callable, *, remove: str = "mutations") -> Callable:
    """``torch.func.functionalize``: ``func`` itself in effect. nodegrad's transforms already
    trace in-place updates as out-of-place values, so there is nothing to rewrite."""
    if remove not in ("mutations", "mutations_and_views"):
        raise ValueError(f"functionalize: remove must be 'mutations' or "
                         f"'mutations_and_views', got {remove!r}")

    def wrapped(*args, **kwargs):
        return func(*args, **kwargs)

    wrapped.__name__ = f"functionalize({getattr(func, '__name__', 'f')})"
    wrapped.__doc__ = func.__doc__
    return wrapped


def replace_all_batch_norm_modules_(root):
    """Make every batch-norm layer in ``root`` use batch statistics only (no running buffers,
    ``track_running_stats`` False), in place, as ``torch.func``'s: such layers then run under
    vmap without writing shared running statistics. Returns ``root``."""
    from ..nn.layers.norm import _BatchNorm  # modules sit above the transforms

    for m in root.modules():
        if isinstance(m, _BatchNorm):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                m.register_buffer(name, None)
            m.track_running_stats = False
    return root


__all__ = ["stack_module_state", "grad_and_value", "functionalize",
           "replace_all_batch_norm_modules_"]


_MISSING = object()  # a name the module did not have: a temporary attribute, deleted after


def _merged(dicts) -> dict:
    dicts = [dicts] if isinstance(dicts, Mapping) else list(dicts)
    merged: dict = {}
    for d in dicts:
        if not isinstance(d, Mapping):
            raise TypeError(f"functional_call: expected dicts of tensors, got "
                            f"{type(d).__name__}")
        clash = set(merged) & set(d)
        if clash:
            raise ValueError(f"functional_call: {sorted(clash)} appear in more than one dict")
        merged.update(d)
    return merged


def _untied(module, given: dict) -> dict:
    """``given`` with each tensor the module holds under several names (tied weights) replaced
    under all of them; several names of one tied tensor given different tensors (objects, not
    values: PyTorch's rule) raise."""
    names: dict = {}
    for n, t in [*module.named_parameters(remove_duplicate=False),
                 *module.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(n)
    out = dict(given)
    for group in names.values():
        mine = [n for n in group if n in given]
        if len(group) < 2 or not mine:
            continue
        if len({id(given[n]) for n in mine}) > 1:
            raise ValueError(f"functional_call got multiple values for keys {sorted(group)}, "
                             "which are tied. Consider using tie_weights=False")
        for n in group:
            out[n] = given[mine[0]]
    return out


def _swap_in(module, name: str, t) -> tuple:
    """Put ``t`` at dotted ``name`` (a parameter, buffer or tensor attribute; a name the module
    lacks becomes a temporary attribute, as in PyTorch); return how to undo it."""
    mp, _, leaf = name.rpartition(".")
    if not leaf:
        raise KeyError(f"functional_call: bad tensor name {name!r}")
    owner = module.get_submodule(mp)  # AttributeError for a missing submodule (PyTorch's)
    for store in (owner._parameters, owner._buffers):
        if leaf in store:
            old = store[leaf]
            store[leaf] = t
            return store, leaf, old
    d = owner.__dict__
    old = d.get(leaf, _MISSING)
    cur = getattr(owner, leaf, None) if old is _MISSING else old
    if cur is not None and not isinstance(cur, Tensor):
        raise TypeError(f"functional_call: {type(owner).__name__}.{leaf} is a "
                        f"{type(cur).__name__}, not a tensor, and cannot be replaced")
    d[leaf] = t
    return d, leaf, old


def functional_call(module, parameter_and_buffer_dicts: Mapping | Sequence[Mapping],
                    args: Any = None, kwargs: dict | None = None, *, tie_weights: bool = True,
                    strict: bool = False) -> Any:
    """``torch.func.functional_call``: ``module(*args, **kwargs)`` with the tensors of
    ``parameter_and_buffer_dicts`` (dotted name -> tensor; one dict, or a tuple of dicts such as
    parameters and buffers, which must not share names) in place of its own; the module is
    restored afterwards, whatever happens. ``args`` that is not a tuple is the one argument.
    A name the module lacks is set as an attribute for the call. ``tie_weights``: a tensor the
    module holds under several names is replaced under all of them (given one tensor at
    most); ``strict``: every parameter and buffer name must be given, after that expansion.
    A parametrized tensor given by its own name is used as it is (its parametrizations not
    run). (``nn.functional_call(model, params, *args)`` is the short form.)"""
    from ..nn.module import _STRUCTURE
    from ..nn.utils.parametrize import _overridden, is_parametrized

    merged = _merged(parameter_and_buffer_dicts)
    if tie_weights:
        merged = _untied(module, merged)
    if strict:
        own = {n for n, _ in module.named_parameters(remove_duplicate=False)} | \
            {n for n, _ in module.named_buffers(remove_duplicate=False)}
        missing, unexpected = sorted(own - set(merged)), sorted(set(merged) - own)
        if missing or unexpected:
            raise RuntimeError(f"functional_call (strict=True): missing {missing}, "
                               f"unexpected {unexpected}")
    args = () if args is None else args if isinstance(args, tuple) else (args,)
    plain = {}  # parametrized tensors given by their own names: used as given
    for name in list(merged):
        mp, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(mp)
        except AttributeError:
            continue
        if is_parametrized(owner, leaf):
            plain[(owner, leaf)] = merged.pop(name)
    undo = []
    try:
        for name, t in merged.items():
            undo.append(_swap_in(module, name, t))
        _STRUCTURE[0] += 1  # a compiled module reads the tensors it holds again (jit)
        with _overridden(plain) if plain else nullcontext():
            return module(*args, **(kwargs or {}))
    finally:
        for store, leaf, old in reversed(undo):
            if old is _MISSING:
                del store[leaf]
            else:
                store[leaf] = old
        _STRUCTURE[0] += 1
