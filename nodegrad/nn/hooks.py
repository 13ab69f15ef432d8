"""A module's full backward hooks: gradients with respect to its inputs and outputs.

PyTorch's ``register_full_backward_pre_hook`` and ``register_full_backward_hook`` see all of a
call's output gradients at once (and may replace them before they enter the module), then all
of its input gradients at once (and may replace them before they leave it). A gradient hook on
each tensor cannot do that: the engine would send the first output's gradient into the module
before the second one is known. So the tensors are packed: the outputs that need gradients
are joined into one flat tensor and the caller gets views of it, so their gradients meet in
that one node, whose hook runs once with all of them; the inputs likewise. The packing is a
view for one tensor and one copy for several, paid only by modules that have such hooks.
"""

from __future__ import annotations

from ..errors import DTypeError
from ..ops import concatenate
from ..ops.shape import _reshape
from ..tensor import Tensor, zeros_like

__all__ = ["wrap_inputs", "wrap_outputs"]

# hooks of every module (``nn.modules.module.register_module_...``), run before a module's own
GLOBAL_BACKWARD_HOOKS: list = []
GLOBAL_BACKWARD_PRE_HOOKS: list = []
GLOBAL_BACKWARD_FULL: list = [None]  # full (True) or deprecated (False) global backward hooks
PARAMETER_REGISTRATION_HOOKS: list = []
BUFFER_REGISTRATION_HOOKS: list = []
MODULE_REGISTRATION_HOOKS: list = []


class _Call:
    """What one call's hooks share between its output and its input side."""

    __slots__ = ("module", "grad_output", "n_inputs", "input_slots")

    def __init__(self, module, n_inputs: int, input_slots: list) -> None:
        self.module = module
        self.grad_output: tuple = ()
        self.n_inputs = n_inputs
        self.input_slots = input_slots  # positions of the inputs that were packed

    def run_full_hooks(self, grad_input: tuple) -> tuple:
        """Call every full backward hook; a returned tuple replaces ``grad_input``."""
        for hook in [*GLOBAL_BACKWARD_HOOKS, *self.module._backward_hooks]:
            r = hook(self.module, grad_input, self.grad_output)
            if r is not None:
                grad_input = _checked(r, len(grad_input), "full backward hook", "grad_input")
        return grad_input


def _checked(r, n: int, what: str, name: str) -> tuple:
    r = tuple(r) if isinstance(r, list | tuple) else (r,)
    if len(r) != n:
        raise ValueError(f"{what}: returned {len(r)} gradients, expected {n} (one per "
                         f"entry of {name}, None where there is none)")
    return r


def _pack(tensors: list[Tensor], op: str):
    """One flat tensor holding ``tensors`` and views of it in their shapes."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise DTypeError(f"{op}: a module's backward hooks need the tensors of one call to "
                         f"share one dtype, got {sorted(str(d) for d in dtypes)}")
    flat = [_reshape(t, shape=(t._data.size,)) for t in tensors]
    joint = flat[0] if len(flat) == 1 else concatenate(flat)
    views, start = [], 0
    for t in tensors:
        part = joint if len(tensors) == 1 else joint[start:start + t._data.size]
        views.append(_reshape(part, shape=t.shape))
        start += t._data.size
    return joint, views


def _unpack(g: Tensor, views: list[Tensor], seen: list[bool]) -> list:
    out, start = [], 0
    for v, s in zip(views, seen):
        out.append(_reshape(g[start:start + v._data.size], shape=v.shape) if s else None)
        start += v._data.size
    return out


def _repack(grads, views: list[Tensor], g: Tensor) -> Tensor:
    parts = [_reshape(zeros_like(v) if r is None else r, shape=(v._data.size,))
             for r, v in zip(grads, views)]
    return parts[0] if len(parts) == 1 else concatenate(parts)


def _marker(seen: list[bool], i: int):
    def mark(g):
        seen[i] = True

    return mark


def wrap_inputs(module, args: tuple) -> tuple[tuple, _Call]:
    """Route the positional tensor inputs that need gradients through one packed node."""
    slots = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    call = _Call(module, len(args), slots)
    if not slots:
        return args, call
    joint, views = _pack([args[i] for i in slots], f"{type(module).__name__} inputs")
    seen = [False] * len(views)
    for k, v in enumerate(views):
        v.register_hook(_marker(seen, k))

    others = [(i, args[i]) for i, a in enumerate(args) if isinstance(a, Tensor) and i not in slots]

    def on_inputs(g):
        # as PyTorch: zeros for tensor inputs that got no gradient, None for other arguments
        grad_input = [None] * call.n_inputs
        for i, gi, v in zip(slots, _unpack(g, views, seen), views):
            grad_input[i] = zeros_like(v) if gi is None else gi
        for i, a in others:
            grad_input[i] = zeros_like(a)
        new = call.run_full_hooks(tuple(grad_input))
        return _repack([new[i] for i in slots], views, g)

    joint.register_hook(on_inputs)
    args = list(args)
    for i, v in zip(slots, views):
        args[i] = v
    return tuple(args), call


def wrap_outputs(out, call: _Call):
    """Route the outputs that need gradients through one packed node whose hook runs the
    backward pre-hooks (and the full hooks too when no input needs a gradient)."""
    single = isinstance(out, Tensor)
    outs = [out] if single else list(out) if isinstance(out, tuple | list) else None
    if outs is None:
        return out
    slots = [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o.requires_grad]
    if not slots:
        return out
    joint, views = _pack([outs[i] for i in slots], f"{type(call.module).__name__} outputs")
    seen = [False] * len(views)
    for k, v in enumerate(views):
        v.register_hook(_marker(seen, k))

    def on_outputs(g):
        grad_output = [None] * len(outs)
        for i, gi in zip(slots, _unpack(g, views, seen)):
            grad_output[i] = gi
        grad_output = tuple(grad_output)
        for hook in [*GLOBAL_BACKWARD_PRE_HOOKS, *call.module._backward_pre_hooks]:
            r = hook(call.module, grad_output)
            if r is not None:
                grad_output = _checked(r, len(outs), "full backward pre-hook", "grad_output")
        call.grad_output = grad_output
        if not call.input_slots:  # nothing flows on to the inputs: the full hooks run now
            call.run_full_hooks((None,) * call.n_inputs)
        return _repack([grad_output[i] for i in slots], views, g)

    joint.register_hook(on_outputs)
    for i, v in zip(slots, views):
        outs[i] = v
    if single:
        return outs[0]
    return type(out)(*outs) if hasattr(out, "_fields") else type(out)(outs)  # namedtuples too
