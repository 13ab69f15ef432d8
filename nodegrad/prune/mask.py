"""Binary masks on parameters: pruned weights are exactly zero, before, during and after training.

Design. A mask is a persistent buffer ``<name>_mask`` on the module that owns the parameter
(same dtype and device as the parameter, 1 = kept, 0 = pruned), so it is part of
``state_dict()``, ``ng.save``/``ng.load`` and :func:`nodegrad.train.fit` checkpoints. The
parameter keeps its name and its identity (optimisers built before pruning still hold it); these
cheap mechanisms keep the pruned entries at exactly zero:

1. ``apply_mask`` multiplies the parameter by the mask in place. Optimisers keep parameters as
   views of one flat buffer per group, so writing into ``p.data`` writes into that buffer too.
2. A gradient hook on the parameter multiplies its gradient by the mask, so ``p.grad`` is exactly
   zero at pruned positions. Every elementwise optimiser in :mod:`nodegrad.optim` then maps
   (θ=0, g=0, state=0) to (θ=0, state=0): SGD's momentum buffer stays 0, L2 decay adds λ·0,
   AdamW's decoupled decay gives 0·(1-ηλ) = 0, Adam's moments stay 0 and its step is
   0/(0+ε) = 0. The parameter itself is exactly zero after every step, provided the
   optimiser's state at pruned positions is zero: build the optimiser after pruning (as
   :func:`~nodegrad.prune.iterative_magnitude_pruning` does) or call
   :func:`mask_optimizer_state` once. L-BFGS also keeps its search directions inside the mask
   (:meth:`_GradMask.post_step_mask`), so its line search evaluates masked weights only.
2b. A global optimiser step post-hook, installed when something is first pruned, multiplies
   every masked parameter an optimiser holds by its mask after each ``step()``: so pruned
   weights are exactly zero in ``p.data`` after every step whatever the update (Muon's dense
   orthogonalised step, Adam with moments left from before pruning). Under :func:`nodegrad.jit`
   it runs on every replay of the step, as the step's other hooks do.
3. A forward pre-hook multiplies ``p.data`` by the mask in place before each forward (a no-op,
   value for value, while 1. and 2. hold). So the network computes with exactly the masked
   weights whatever happened in between: an optimiser with stale state, code writing into
   ``p.data``, ``load_state_dict`` of unmasked weights. No version bump: two forwards before one
   backward stay legal. Under :func:`nodegrad.jit` the product is recorded as an in-place change
   of the parameter, so every replay re-masks as an eager call does.
4. A state-dict pre-hook does the same before ``state_dict()`` collects the module, so every
   saved state dict and checkpoint holds exact zeros whatever the optimiser did.

Cost per masked parameter: one elementwise product with the weight per forward, one with its
gradient per backward and one with the weight per optimiser step, no extra graph node, no
renamed parameter. PyTorch's
``torch.nn.utils.prune`` instead reparametrises ``weight = weight_orig * weight_mask``; that is
exact too but renames the parameter, leaves the pruned entries of ``weight_orig`` drifting under
weight decay, and makes ``module.weight`` a non-leaf recomputed each forward. Under
``functional_call`` (``ng.grad`` on a module, ``vmap``) a substituted plain tensor ``t`` enters
the forward as ``t * mask``, so its gradient is masked too.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

from .. import _backend as B
from ..autodiff import modes
from ..nn import Module, Parameter
from ..optim.base import GRAD_FREE, register_optimizer_step_post_hook
from ..tensor import Tensor

np = B.np
SUFFIX = "_mask"


# --- validation helpers ---------------------------------------------------------------------
def _check_module(module, fn: str) -> None:
    if not isinstance(module, Module):
        raise TypeError(f"{fn}: expected an nn.Module, got {type(module).__name__}")


def _param(module: Module, name: str, fn: str) -> Parameter:
    """The parameter ``name`` of ``module`` (not a submodule's), or a clear error."""
    _check_module(module, fn)
    if not isinstance(name, str):
        raise TypeError(f"{fn}: the parameter name must be a str, got {type(name).__name__}")
    p = module._parameters.get(name)
    if p is None:
        have = ", ".join(k for k, v in module._parameters.items() if v is not None) or "none"
        hint = " (give the module that owns it and its local name, e.g. (model.linear1, " \
               "'weight'))" if "." in name else ""
        raise ValueError(f"{fn}: {type(module).__name__} has no parameter named {name!r}; its "
                         f"parameters: {have}{hint}")
    if not isinstance(p, Parameter):
        raise TypeError(f"{fn}: {type(module).__name__}.{name} is a {type(p).__name__}, not a "
                        "Parameter (is the module inside functional_call?)")
    if not B.is_float(p.dtype):
        raise TypeError(f"{fn}: {type(module).__name__}.{name} has dtype {p.dtype}; only "
                        "floating parameters can be masked")
    return p


def _as_mask(mask, p: Tensor, fn: str, what: str):
    """``mask`` as a 0/1 array of ``p``'s dtype on ``p``'s device (checked)."""
    if isinstance(mask, Tensor):
        mask = mask.numpy()
    elif B.is_array(mask):
        mask = B.backend_of(mask).to_host(mask)
    m = np.asarray(mask)
    if m.shape != tuple(p.shape):
        raise ValueError(f"{fn}: the mask for {what} has shape {m.shape}, the parameter has "
                         f"shape {tuple(p.shape)}")
    if m.dtype != np.bool_:
        if (m.dtype.kind not in "biu" and not B.is_float(m.dtype)) \
                or not np.all((m == 0) | (m == 1)):
            raise ValueError(f"{fn}: the mask for {what} must hold only 0 and 1 (or be boolean)"
                             f", got dtype {m.dtype}")
    return B.backend_of(p._data).asarray(m.astype(p.dtype))


# --- the hooks ------------------------------------------------------------------------------
class _GradMask:
    """Gradient hook: the gradient of a masked parameter, masked (exact zeros where pruned)."""

    __slots__ = ("module", "name")

    def __init__(self, module: Module, name: str):
        self.module, self.name = module, name

    def __call__(self, g):
        mask = self.module._buffers.get(self.name + SUFFIX)
        return None if mask is None else g * mask

    def post_step_mask(self):
        """The 0/1 array the parameter is multiplied by after each optimiser step (and L-BFGS's
        directions inside its line search), so the pruned entries stay exactly zero; None once
        the mask is gone."""
        mask = self.module._buffers.get(self.name + SUFFIX)
        return None if mask is None else mask._data


def _has_grad_hook(module: Module, name: str, p: Tensor) -> bool:
    return any(isinstance(h, _GradMask) and h.module is module and h.name == name
               for h in (p._hooks or ()))


def _ensure_grad_hook(module: Module, name: str, p: Tensor) -> None:
    """Install the gradient hook on ``p`` (a deep copy or a new Parameter arrives without it)."""
    if p.requires_grad and not _has_grad_hook(module, name, p):
        p.register_hook(_GradMask(module, name))
        _changed()


# --- re-masking after each optimiser step -----------------------------------------------------
_GENERATION = [0]  # bumped whenever a parameter gains or loses its mask hook
#: optimizer -> (generation, number of groups, [(parameter, its _GradMask)]) for the step hook
_MASKED_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STEP_HOOK: list = []  # the handle of the global step post-hook, once installed


def _changed() -> None:
    """Something was (un)pruned: the step hook looks the optimisers' masks up again; installed
    on first use, so optimisers pay nothing in a program that never prunes."""
    _GENERATION[0] += 1
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_remask_after_step))


def _masked_of(optimizer) -> list:
    """``[(parameter, _GradMask)]`` for the masked parameters ``optimizer`` holds (cached until
    a mask is added or removed or a parameter group is added)."""
    key = (_GENERATION[0], len(optimizer.param_groups))
    hit = _MASKED_OF.get(optimizer)
    if hit is not None and hit[0] == key:
        return hit[1]
    pairs = [(p, h) for g in optimizer.param_groups for p in g["params"]
             for h in (p._hooks or ()) if isinstance(h, _GradMask)]
    _MASKED_OF[optimizer] = (key, pairs)
    return pairs


def _remask_after_step(optimizer, args, kwargs) -> None:
    """The global step post-hook: zero the pruned entries of the optimizer's masked parameters
    (an update that mixes entries, or state from before pruning, may have moved them). It runs
    inside the step, also when a jit replay calls it, so it changes the arrays directly."""
    for p, h in _masked_of(optimizer):
        m = h.post_step_mask()
        if m is not None:
            _multiply_into(p._data, m)


setattr(_remask_after_step, GRAD_FREE, True)  # it never reads .grad


class _ForwardMask:
    """Forward pre-hook: re-apply the mask of parameter ``name`` before the forward runs.

    Stateless but for the name, so the hook lists a deep copy shares stay correct.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module: Module, args):
        p = module._parameters.get(self.name)
        mask = module._buffers.get(self.name + SUFFIX)
        if p is None or mask is None:
            return None
        if isinstance(p, Parameter):
            _ensure_grad_hook(module, self.name, p)
            remask(p, mask)
        else:  # a tensor substituted by functional_call: mask it in the graph, for this call
            swapped = module.__dict__.setdefault("_prune_swapped", {})
            swapped[self.name] = p
            module._parameters[self.name] = p * mask
        return None


class _ForwardRestore:
    """Forward hook: put back a tensor that :class:`_ForwardMask` swapped for ``t * mask``."""

    __slots__ = ("name",)
    replay_safe = True  # under jit: the swap is Python bookkeeping, the product is recorded

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module: Module, args, out):
        swapped = module.__dict__.get("_prune_swapped")
        if swapped and self.name in swapped:
            module._parameters[self.name] = swapped.pop(self.name)
        return None


class _StateDictMask:
    """State-dict pre-hook: re-apply the mask of parameter ``name`` before ``state_dict()``
    collects the module, so saved weights are exactly zero where pruned whatever moved them
    since the last forward (an optimiser with stale state)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __call__(self, module: Module, prefix: str, keep_vars: bool) -> None:
        p = module._parameters.get(self.name)
        mask = module._buffers.get(self.name + SUFFIX)
        if isinstance(p, Parameter) and mask is not None:
            remask(p, mask)


def _hooked(module: Module, name: str) -> bool:
    return any(isinstance(h, _ForwardMask) and h.name == name for h in module._forward_pre_hooks)


def _masked(module: Module, name: str) -> bool:
    """Parameter ``name`` of ``module`` carries a live mask (buffer and hook)."""
    return _hooked(module, name) and (name + SUFFIX) in module._buffers


def _multiply_into(a, m) -> None:
    B.backend_of(a).xp.multiply(a, m, out=a)


def remask(p: Tensor, mask: Tensor) -> None:
    """Zero ``p``'s pruned entries in place: through the optimiser's flat-buffer views too.

    Under a jit trace the product is recorded as an in-place change of ``p``, so every replay
    re-masks too (the weights a replay computes with are those an eager call would use)."""
    rec = modes().jit
    if rec is not None:
        rec.mutate("remask", _multiply_into, p, mask)
    else:
        _multiply_into(p._data, mask._data)


# --- public API -----------------------------------------------------------------------------
def is_pruned(module: Module, name: str | None = None) -> bool:
    """Whether parameter ``name`` of ``module`` carries a mask (any parameter, for None)."""
    _check_module(module, "is_pruned")
    if name is None:
        return any(_masked(m, n) for m in module.modules() for n in m._parameters)
    return _masked(module, name)


def apply_mask(module: Module, name: str, mask) -> Module:
    """Mask parameter ``name`` of ``module`` with ``mask`` (1 keep, 0 prune; shape of the
    parameter). An existing mask is combined with it (pruned weights stay pruned); the pruned
    weights become exactly zero now and stay zero through training. Returns ``module``."""
    p = _param(module, name, "apply_mask")
    m = _as_mask(mask, p, "apply_mask", f"{type(module).__name__}.{name}")
    key = name + SUFFIX
    old = module._buffers.get(key)
    if old is not None and _hooked(module, name):
        m = m * old._data
    if key in module._parameters or (key in module._modules):
        raise ValueError(f"apply_mask: {type(module).__name__} already has a parameter or "
                         f"submodule named {key!r}")
    if old is not None and old.shape == m.shape:
        old._data[...] = m  # in place: whoever holds the buffer sees the new mask
        old._bump()
    else:
        module.register_buffer(key, Tensor._of(m))
    remask(p, module._buffers[key])
    p._bump()
    _changed()
    if not _hooked(module, name):
        module.register_forward_pre_hook(_ForwardMask(name))
        module.register_forward_hook(_ForwardRestore(name))
    if not any(isinstance(h, _StateDictMask) and h.name == name
               for h in module._state_dict_pre_hooks):
        module.register_state_dict_pre_hook(_StateDictMask(name))
    _ensure_grad_hook(module, name, p)
    return module


def identity(module: Module, name: str) -> Module:
    """Attach an all-ones mask (nothing pruned): gives ``module`` the ``<name>_mask`` entry, e.g.
    before loading a pruned state dict into it."""
    p = _param(module, name, "identity")
    return apply_mask(module, name, np.ones(p.shape, dtype=bool))


def remove(module: Module, name: str) -> Module:
    """Make the pruning of parameter ``name`` permanent: the weight keeps its zeros, the mask
    buffer and hooks go. The Parameter object is kept (optimisers still hold it)."""
    p = _param(module, name, "remove")
    key = name + SUFFIX
    if not _masked(module, name):
        raise ValueError(f"remove: parameter {name!r} of {type(module).__name__} has no mask "
                         "(prune it first)")
    mask = module._buffers.pop(key)
    module._non_persistent.discard(key)
    remask(p, mask)
    p._bump()
    module._forward_pre_hooks[:] = [h for h in module._forward_pre_hooks
                                    if not (isinstance(h, _ForwardMask) and h.name == name)]
    module._forward_hooks[:] = [h for h in module._forward_hooks
                                if not (isinstance(h, _ForwardRestore) and h.name == name)]
    module._state_dict_pre_hooks[:] = [h for h in module._state_dict_pre_hooks
                                       if not (isinstance(h, _StateDictMask) and h.name == name)]
    module._structure[0] += 1  # a jitted forward traced with the re-mask traces again
    if p._hooks:
        p._hooks[:] = [h for h in p._hooks
                       if not (isinstance(h, _GradMask) and h.module is module and h.name == name)]
    _changed()
    return module


def masked_parameters(model: Module) -> list[tuple[str, Module, str]]:
    """``(dotted name, owning module, local name)`` of every masked parameter in ``model``."""
    _check_module(model, "masked_parameters")
    out = []
    for mp, m in model.named_modules():
        for n, p in m._parameters.items():
            if p is not None and _masked(m, n):
                out.append((f"{mp}.{n}" if mp else n, m, n))
    return out


def get_masks(model: Module) -> dict:
    """Host boolean copies of every mask in ``model``, by the parameter's dotted name."""
    return {full: m._buffers[n + SUFFIX].numpy() != 0 for full, m, n in masked_parameters(model)}


def _resolve(model: Module, dotted: str, fn: str) -> tuple[Module, str]:
    """The module owning dotted parameter name ``dotted`` and the local name."""
    mp, _, leaf = dotted.rpartition(".")
    try:
        owner = model.get_submodule(mp)
    except AttributeError:
        owner = None
    if owner is None or owner._parameters.get(leaf) is None:
        names = [n for n, _ in model.named_parameters()]
        raise ValueError(f"{fn}: {type(model).__name__} has no parameter named {dotted!r}; its "
                         f"parameters: {', '.join(names)}")
    return owner, leaf


def apply_masks(model: Module, masks: Mapping) -> Module:
    """Apply ``{dotted parameter name: mask}`` (e.g. from :func:`get_masks`) to ``model``."""
    _check_module(model, "apply_masks")
    for dotted, mask in masks.items():
        owner, leaf = _resolve(model, dotted, "apply_masks")
        apply_mask(owner, leaf, mask)
    return model


def restore_masks(model: Module, state_dict: Mapping) -> list[str]:
    """Attach the masks held in ``state_dict`` (keys ``<param>_mask``) to an unpruned ``model``,
    so that ``model.load_state_dict(state_dict)`` then fits. Returns the masked names."""
    _check_module(model, "restore_masks")
    params = dict(model.named_parameters())
    done = []
    for key, value in state_dict.items():
        if not key.endswith(SUFFIX) or key[:-len(SUFFIX)] not in params:
            continue
        dotted = key[:-len(SUFFIX)]
        owner, leaf = _resolve(model, dotted, "restore_masks")
        if not is_pruned(owner, leaf):
            apply_mask(owner, leaf, value)
        else:
            owner._buffers[leaf + SUFFIX]._data[...] = _as_mask(value, params[dotted],
                                                               "restore_masks", dotted)
        done.append(dotted)
    return done


def mask_optimizer_state(optimizer, model: Module) -> int:
    """Zero ``optimizer``'s per-element state (momentum, Adam moments...) at pruned positions of
    ``model``'s masked parameters, for pruning in the middle of a run with the same optimiser.
    Returns how many parameters had state."""
    owners = {id(m._parameters[n]): m._buffers[n + SUFFIX] for _, m, n in masked_parameters(model)}
    count = 0
    for p, entry in optimizer.state.items():
        mask = owners.get(id(p))
        if mask is None:
            continue
        count += 1
        for v in entry.values():
            v = v._data if isinstance(v, Tensor) else v  # (live state: tensors on its buffers)
            if B.is_array(v) and v.shape == mask.shape:
                B.backend_of(v).xp.multiply(v, mask._data, out=v)
    return count


def prunable_weights(model: Module, exclude: Iterable[str] = ()) -> list[tuple[Module, str]]:
    """``(module, "weight")`` for every weight matrix or kernel (ndim >= 2) in ``model``: the
    parameters lottery-ticket pruning removes (biases and norm scales are kept), minus the
    modules whose dotted names are in ``exclude``."""
    _check_module(model, "prunable_weights")
    skip = set(exclude)
    out = []
    for mp, m in model.named_modules():
        w = m._parameters.get("weight")
        if w is not None and w.ndim >= 2 and mp not in skip:
            out.append((m, "weight"))
    if not out:
        raise ValueError(f"prunable_weights: {type(model).__name__} has no weight matrix or "
                         "kernel to prune")
    return out
