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

from collections.abc import Callable, Sequence

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
