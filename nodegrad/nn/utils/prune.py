"""``nn.utils.prune`` as PyTorch users know it: pruning as a re-parametrisation.

Pruning parameter ``name`` of a module moves it to the parameter ``name + '_orig'``, adds the
buffer ``name + '_mask'`` (1 keep, 0 prune, the parameter's dtype) and makes ``module.<name>``
a plain tensor, ``mask * orig``, recomputed before every forward by a forward pre-hook: the
pruning method itself, found in ``module._forward_pre_hooks``. Gradients reach ``<name>_orig``
masked; ``state_dict()``, ``named_parameters()`` and ``named_buffers()`` hold the same names in
the same order as PyTorch's, so pruned state dicts move between the two libraries. Pruning the
same parameter again stacks the methods in a :class:`PruningContainer`, each new mask computed
on what is still unpruned; :func:`remove` makes the pruning permanent.

This is PyTorch's API and semantics; :mod:`nodegrad.prune` is nodegrad's own (the parameter
keeps its name, the mask is applied in place) with lottery-ticket tools on top. One parameter
takes one of the two. Ties at the pruning threshold (equal magnitudes, e.g. zeros) go to the
lower indices first; PyTorch's CPU ``topk`` leaves them to its selection routine, so its choice
among equal entries may differ.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable

from ... import _backend as B
from ... import ops
from ...autodiff import no_grad
from ...errors import ShapeError
from ...random import rand, rand_like
from ...tensor import Tensor, ones_like, zeros_like
from ..module import Module, Parameter

__all__ = ["BasePruningMethod", "PruningContainer", "Identity", "RandomUnstructured",
           "L1Unstructured", "RandomStructured", "LnStructured", "CustomFromMask", "identity",
           "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
           "global_unstructured", "custom_from_mask", "remove", "is_pruned"]


class _ShapeMismatch(ShapeError, AssertionError):
    """Scores or masks of the wrong shape: a ShapeError, and the AssertionError PyTorch raises."""


class BasePruningMethod(ABC):
    """A pruning method: :meth:`compute_mask` says what to prune; :meth:`apply` installs the
    re-parametrisation; called as a forward pre-hook it recomputes ``module.<name>``."""

    _tensor_name: str | None = None
    PRUNING_TYPE: str

    def __call__(self, module: Module, inputs) -> None:
        """The forward pre-hook: ``module.<name>`` = ``<name>_mask * <name>_orig``."""
        setattr(module, self._tensor_name, self.apply_mask(module))

    @abstractmethod
    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The mask for the importance scores ``t``, on top of ``default_mask`` (the mask of
        earlier prunings, all ones at first): a tensor of ``t``'s shape."""

    def apply_mask(self, module: Module) -> Tensor:
        """The pruned tensor ``mask * orig`` of ``module`` (differentiable in ``orig``)."""
        if self._tensor_name is None:
            raise RuntimeError(f"{type(self).__name__}.apply_mask: {type(module).__name__} has "
                               "to be pruned first (the method knows no parameter name yet)")
        mask = getattr(module, self._tensor_name + "_mask")
        orig = getattr(module, self._tensor_name + "_orig")
        return mask.to(dtype=orig.dtype) * orig

    @classmethod
    def apply(cls, module: Module, name: str, *args, importance_scores: Tensor | None = None,
              **kwargs) -> BasePruningMethod:
        """Prune parameter ``name`` of ``module`` with ``cls(*args, **kwargs)``: the first time
        it becomes ``name + '_orig'`` with a mask buffer and a forward pre-hook; again, the
        method joins the existing one in a :class:`PruningContainer`. ``importance_scores``
        (the parameter's shape) replaces the parameter as what the mask is computed from."""
        op = f"{cls.__name__}.apply"
        if not isinstance(module, Module):
            raise TypeError(f"{op}: expected an nn.Module, got {type(module).__name__}")
        old, at = None, None
        for i, hook in enumerate(module._forward_pre_hooks):
            if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
                if old is not None:
                    raise RuntimeError(f"{op}: {type(module).__name__} has several pruning "
                                       f"hooks on {name!r}; use a PruningContainer")
                old, at = hook, i
        if old is None:
            _check_param(module, name, op)
        method = cls(*args, **kwargs)
        method._tensor_name = name
        orig = getattr(module, name)
        if importance_scores is not None:
            if tuple(importance_scores.shape) != tuple(orig.shape):
                raise _ShapeMismatch(f"{op}: importance_scores should have the same shape as "
                                     f"parameter {name} of {type(module).__name__}, got "
                                     f"{tuple(importance_scores.shape)} vs {tuple(orig.shape)}")
        else:
            importance_scores = orig
        if old is not None:
            del module._forward_pre_hooks[at]
            if isinstance(old, PruningContainer):
                old.add_pruning_method(method)
                method = old
            else:
                container = PruningContainer(old)
                container.add_pruning_method(method)
                method = container
        first = not isinstance(method, PruningContainer)
        params = list(module._parameters.items())  # their order, to restore on failure
        if first:
            module.register_parameter(name + "_orig", orig)
            delattr(module, name)
            default_mask = ones_like(orig)
        else:
            old_mask = module._buffers[name + "_mask"]
            default_mask = old_mask.detach().clone()
        try:
            with no_grad():
                mask = method.compute_mask(importance_scores, default_mask=default_mask)
            module.register_buffer(name + "_mask", mask.detach())
            setattr(module, name, method.apply_mask(module))
            module.register_forward_pre_hook(method)
        except Exception:
            if first:  # undo: the parameter is back under its name, nothing else changed
                module._buffers.pop(name + "_mask", None)
                module.__dict__.pop(name, None)
                module._parameters.clear()
                module._parameters.update(params)
                Module._structure[0] += 1
            else:  # the mask and the earlier methods stay as they were
                if isinstance(old, PruningContainer):
                    old._pruning_methods = old._pruning_methods[:-1]
                module._forward_pre_hooks.insert(at, old)
                module._buffers[name + "_mask"] = old_mask
            raise
        return method

    def prune(self, t: Tensor, default_mask: Tensor | None = None,
              importance_scores: Tensor | None = None) -> Tensor:
        """``t`` times the mask :meth:`compute_mask` gives (for ``importance_scores`` if given,
        on top of ``default_mask``, all ones if None); no module involved."""
        if importance_scores is not None:
            if tuple(importance_scores.shape) != tuple(t.shape):
                raise _ShapeMismatch(f"{type(self).__name__}.prune: importance_scores should "
                                     f"have the same shape as tensor t, got "
                                     f"{tuple(importance_scores.shape)} vs {tuple(t.shape)}")
        else:
            importance_scores = t
        default_mask = default_mask if default_mask is not None else ones_like(t)
        return t * self.compute_mask(importance_scores, default_mask=default_mask)

    def remove(self, module: Module) -> None:
        """Make the pruning permanent: ``<name>`` becomes a parameter again (the Parameter
        object of ``<name>_orig``, holding the pruned values); ``_orig`` and ``_mask`` go."""
        name = self._tensor_name
        if name is None:
            raise RuntimeError(f"{type(self).__name__}.remove: {type(module).__name__} has to "
                               "be pruned before pruning can be removed")
        weight = self.apply_mask(module)
        module.__dict__.pop(name, None)
        orig = module._parameters[name + "_orig"]
        with no_grad():
            orig.copy_(weight.detach())  # in place: optimisers holding it see the zeros
        delattr(module, name + "_orig")
        delattr(module, name + "_mask")
        setattr(module, name, orig)


class PruningContainer(BasePruningMethod):
    """The methods applied one after another to one parameter (iterative pruning): each new
    mask is computed on the still-unpruned entries (unstructured), channels (structured) or
    the whole tensor (global), and combined with the masks before it."""

    def __init__(self, *args: BasePruningMethod) -> None:
        self._pruning_methods: tuple[BasePruningMethod, ...] = ()
        if args and not isinstance(args[0], BasePruningMethod) and isinstance(args[0], Iterable):
            args = tuple(args[0])  # one iterable of methods
        if args:
            self._tensor_name = args[0]._tensor_name
        for method in args:
            self.add_pruning_method(method)

    def add_pruning_method(self, method: BasePruningMethod) -> None:
        """Append ``method``: it must act on the container's parameter."""
        if method is None:
            return
        if not isinstance(method, BasePruningMethod):
            raise TypeError(f"PruningContainer.add_pruning_method: {type(method)} is not a "
                            "BasePruningMethod subclass")
        if self._tensor_name is None and not self._pruning_methods:
            self._tensor_name = method._tensor_name
        elif self._tensor_name != method._tensor_name:
            raise ValueError("PruningContainer.add_pruning_method: can only add pruning "
                             f"methods acting on the parameter named '{self._tensor_name}'; "
                             f"found '{method._tensor_name}'")
        self._pruning_methods += (method,)

    def __len__(self) -> int:
        return len(self._pruning_methods)

    def __iter__(self):
        return iter(self._pruning_methods)

    def __getitem__(self, idx):
        return self._pruning_methods[idx]

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        """The latest method's mask, computed on the part of ``t`` that ``default_mask`` left
        unpruned (its ``PRUNING_TYPE`` says which part), merged into ``default_mask``."""
        if not self._pruning_methods:
            raise RuntimeError("PruningContainer.compute_mask: the container holds no method")
        method = self._pruning_methods[-1]
        kind = getattr(method, "PRUNING_TYPE", None)
        new_mask = default_mask.to(dtype=t.dtype)
        if kind == "unstructured":
            slc = default_mask == 1
        elif kind == "structured":
            if not hasattr(method, "dim"):
                raise AttributeError('PruningContainer: pruning methods of PRUNING_TYPE '
                                     '"structured" need to have the attribute `dim` defined.')
            n_dims = t.ndim
            dim = method.dim + n_dims if method.dim < 0 else method.dim
            if not 0 <= dim < n_dims:
                raise IndexError(f"PruningContainer: dim {method.dim} is out of bounds for a "
                                 f"tensor with {n_dims} dimensions")
            others = [d for d in range(n_dims) if d != dim]
            # a 1-d tensor has no other axes: PyTorch's sum over none of them is the sum of
            # all, a 0-d flag that selects the whole tensor as one row of channels (or none)
            keep_channel = (default_mask.sum(dim=others) if others else default_mask.sum()) != 0
            slc = (slice(None),) * dim + (keep_channel,)
        elif kind == "global":
            slc = (slice(None),) * t.ndim
        else:
            raise ValueError(f"PruningContainer: unrecognized PRUNING_TYPE {kind!r} of "
                             f"{type(method).__name__} (expected 'unstructured', 'structured' "
                             "or 'global')")
        partial = method.compute_mask(t[slc], default_mask=default_mask[slc])
        new_mask[slc] = partial.to(dtype=new_mask.dtype)
        return new_mask


class Identity(BasePruningMethod):
    """Prunes nothing: the re-parametrisation with a mask of ones."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask

    @classmethod
    def apply(cls, module: Module, name: str) -> Identity:  # type: ignore[override]
        return super().apply(module, name)


def _unstructured_mask(amount, t: Tensor, default_mask: Tensor, op: str, scores,
                       largest: bool) -> Tensor:
    """``default_mask`` with ``amount`` more entries of ``t`` zeroed: those whose ``scores()``
    are the largest (random draws) or the smallest (magnitudes)."""
    size = t.numel()
    k = _compute_nparams_toprune(amount, size)
    _validate_pruning_amount(k, size, op)
    mask = default_mask.clone()
    if k:
        mask.view(-1)[_topk_indices(scores(), k, largest=largest)] = 0
    return mask


class RandomUnstructured(BasePruningMethod):
    """Prune ``amount`` (int count or float fraction) of the unpruned entries at random
    (nodegrad's generator: ``ng.manual_seed`` makes it reproducible)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount) -> None:
        _validate_pruning_amount_init(amount, "RandomUnstructured")
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return _unstructured_mask(self.amount, t, default_mask, "RandomUnstructured",
                                  lambda: rand_like(t), largest=True)

    @classmethod
    def apply(cls, module: Module, name: str, amount) -> RandomUnstructured:  # type: ignore
        return super().apply(module, name, amount=amount)


class L1Unstructured(BasePruningMethod):
    """Prune ``amount`` (int count or float fraction) of the unpruned entries with the
    smallest absolute value (or importance score)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount) -> None:
        _validate_pruning_amount_init(amount, "L1Unstructured")
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return _unstructured_mask(self.amount, t, default_mask, "L1Unstructured",
                                  lambda: ops.abs(t), largest=False)

    @classmethod
    def apply(cls, module: Module, name: str, amount,  # type: ignore[override]
              importance_scores: Tensor | None = None) -> L1Unstructured:
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class RandomStructured(BasePruningMethod):
    """Prune ``amount`` (int count or float fraction) of the channels along ``dim`` at random."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, dim: int = -1) -> None:
        _validate_pruning_amount_init(amount, "RandomStructured")
        self.amount, self.dim = amount, dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        _validate_structured_pruning(t, "RandomStructured")
        _validate_pruning_dim(t, self.dim, "RandomStructured")
        n = t.shape[self.dim]
        k = _compute_nparams_toprune(self.amount, n)
        _validate_pruning_amount(k, n, "RandomStructured")
        if k == 0:
            return default_mask
        prob = rand(n, dtype=t.dtype, device=t.device)
        keep = prob > ops.kthvalue(prob, k).values
        mask = zeros_like(t)
        mask[(slice(None),) * (self.dim % t.ndim) + (keep,)] = 1
        mask *= default_mask.to(dtype=mask.dtype)
        return mask

    @classmethod
    def apply(cls, module: Module, name: str, amount,  # type: ignore[override]
              dim: int = -1) -> RandomStructured:
        return super().apply(module, name, amount=amount, dim=dim)


class LnStructured(BasePruningMethod):
    """Prune ``amount`` (int count or float fraction) of the channels along ``dim`` with the
    smallest L``n`` norm (``n`` as ``torch.norm``'s ``p``: int, float, inf, -inf, 'fro',
    'nuc')."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim: int = -1) -> None:
        _validate_pruning_amount_init(amount, "LnStructured")
        self.amount, self.n, self.dim = amount, n, dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        _validate_structured_pruning(t, "LnStructured")
        _validate_pruning_dim(t, self.dim, "LnStructured")
        size = t.shape[self.dim]
        k = _compute_nparams_toprune(self.amount, size)
        _validate_pruning_amount(k, size, "LnStructured")
        if k == 0:
            return default_mask
        dim = self.dim % t.ndim
        norm = ops.norm(t, p=self.n, dim=[d for d in range(t.ndim) if d != dim])
        keep = _topk_indices(norm, size - k, largest=True)
        mask = zeros_like(t)
        mask[(slice(None),) * dim + (keep,)] = 1
        mask *= default_mask.to(dtype=mask.dtype)
        return mask

    @classmethod
    def apply(cls, module: Module, name: str, amount, n, dim,  # type: ignore[override]
              importance_scores: Tensor | None = None) -> LnStructured:
        return super().apply(module, name, amount=amount, n=n, dim=dim,
                             importance_scores=importance_scores)


class CustomFromMask(BasePruningMethod):
    """Prune where the given ``mask`` is 0 (on top of earlier masks)."""

    PRUNING_TYPE = "global"

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        if tuple(default_mask.shape) != tuple(self.mask.shape):
            raise _ShapeMismatch(f"CustomFromMask: the mask has shape {tuple(self.mask.shape)}"
                                 f", the parameter {tuple(default_mask.shape)}")
        return default_mask * self.mask.to(dtype=default_mask.dtype)

    @classmethod
    def apply(cls, module: Module, name: str, mask: Tensor) -> CustomFromMask:  # type: ignore
        return super().apply(module, name, mask=mask)


# --- the functions --------------------------------------------------------------------------
def identity(module: Module, name: str) -> Module:
    """The pruning re-parametrisation of ``module.<name>`` with nothing pruned (a mask of ones):
    e.g. before loading a pruned state dict. Returns ``module``."""
    Identity.apply(module, name)
    return module


def random_unstructured(module: Module, name: str, amount) -> Module:
    """Prune ``amount`` (int count, or float fraction of the unpruned entries) of
    ``module.<name>`` at random. Returns ``module``."""
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module: Module, name: str, amount,
                    importance_scores: Tensor | None = None) -> Module:
    """Prune the ``amount`` (int count, or float fraction of the unpruned entries) entries of
    ``module.<name>`` with the smallest ``|w|`` (or ``importance_scores``). Returns ``module``."""
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module: Module, name: str, amount, dim: int) -> Module:
    """Prune ``amount`` (int count or float fraction) of the channels of ``module.<name>``
    along ``dim`` at random. Returns ``module``."""
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module: Module, name: str, amount, n, dim: int,
                  importance_scores: Tensor | None = None) -> Module:
    """Prune ``amount`` (int count or float fraction) of the channels of ``module.<name>``
    along ``dim`` with the smallest L``n`` norm. Returns ``module``."""
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def global_unstructured(parameters: Iterable[tuple[Module, str]], pruning_method: type,
                        importance_scores: dict | None = None, **kwargs) -> None:
    """Prune ``(module, name)`` pairs ranked together: ``pruning_method(**kwargs)`` (an
    unstructured method class, e.g. ``L1Unstructured`` with ``amount=``) computes one mask
    over all their unpruned entries, applied to each as :func:`custom_from_mask`.
    ``importance_scores`` maps ``(module, name)`` to scores used in place of the parameter."""
    if not isinstance(parameters, Iterable):
        raise TypeError("global_unstructured(): parameters is not an Iterable")
    parameters = list(parameters)
    importance_scores = importance_scores if importance_scores is not None else {}
    if not isinstance(importance_scores, dict):
        raise TypeError("global_unstructured(): importance_scores must be of type dict")
    if not parameters:
        raise ValueError("global_unstructured(): got no (module, name) pairs to prune")
    for i, item in enumerate(parameters):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Module)):
            raise TypeError(f"global_unstructured(): parameters[{i}] must be a (module, name) "
                            f"pair, got {type(item).__name__}")
    scores, masks = [], []
    for module, name in parameters:
        value = getattr(module, name)
        s = importance_scores.get((module, name), value)
        if tuple(s.shape) != tuple(value.shape):
            raise _ShapeMismatch(f"global_unstructured(): importance scores for {name} of "
                                 f"{type(module).__name__} have shape {tuple(s.shape)}, the "
                                 f"parameter {tuple(value.shape)}")
        scores.append(s.detach().reshape(-1))
        masks.append(getattr(module, name + "_mask", ones_like(value)).detach().reshape(-1))
    container = PruningContainer()
    container._tensor_name = "temp"
    method = pruning_method(**kwargs)
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError('global_unstructured(): only "unstructured" PRUNING_TYPE supported for '
                        f"the `pruning_method`. Found method {pruning_method} of type "
                        f"{method.PRUNING_TYPE}")
    container.add_pruning_method(method)
    dtype = scores[0].dtype
    with no_grad():
        final = container.compute_mask(ops.concatenate([s.to(dtype=dtype) for s in scores]),
                                       ops.concatenate([m.to(dtype=dtype) for m in masks]))
    start = 0
    for module, name in parameters:
        shape = tuple(getattr(module, name).shape)
        size = getattr(module, name).numel()
        custom_from_mask(module, name, mask=final[start:start + size].reshape(shape))
        start += size


def custom_from_mask(module: Module, name: str, mask: Tensor) -> Module:
    """Prune ``module.<name>`` where ``mask`` (its shape) is 0. Returns ``module``."""
    CustomFromMask.apply(module, name, mask)
    return module


def remove(module: Module, name: str) -> Module:
    """Make the pruning of ``module.<name>`` permanent: ``<name>`` is a parameter again, holding
    the pruned values; ``<name>_orig``, ``<name>_mask`` and the hook go. Returns ``module``."""
    for i, hook in enumerate(module._forward_pre_hooks):
        if isinstance(hook, BasePruningMethod) and hook._tensor_name == name:
            hook.remove(module)
            del module._forward_pre_hooks[i]
            Module._structure[0] += 1  # a jitted forward reads the hooks again
            return module
    raise ValueError(f"remove: parameter '{name}' of {type(module).__name__} has to be pruned "
                     "before pruning can be removed")


def is_pruned(module: Module) -> bool:
    """Whether ``module`` or any submodule carries a pruning hook of this module."""
    return any(isinstance(h, BasePruningMethod)
               for m in module.modules() for h in m._forward_pre_hooks)


# --- checks ---------------------------------------------------------------------------------
def _check_param(module: Module, name: str, op: str) -> None:
    """``name`` is a parameter of ``module`` that no other masking mechanism holds."""
    if not isinstance(name, str):
        raise TypeError(f"{op}: the parameter name must be a str, got {type(name).__name__}")
    p = module._parameters.get(name)
    if not isinstance(p, Parameter):
        have = ", ".join(k for k, v in module._parameters.items() if v is not None) or "none"
        raise AttributeError(f"{op}: {type(module).__name__} has no parameter named {name!r} "
                             f"to prune; its parameters: {have}")
    if name + "_mask" in module._buffers or name + "_orig" in module._parameters:
        raise RuntimeError(f"{op}: {type(module).__name__}.{name} already has a "
                           f"'{name}_mask' or '{name}_orig' (pruned with nodegrad.prune?); "
                           "one parameter takes one pruning mechanism: remove the other first")


def _validate_pruning_amount_init(amount, op: str) -> None:
    """``amount`` is an int >= 0 or a float in [0, 1] (PyTorch's errors)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"{op}: invalid type for amount: {amount!r}. Must be int or float.")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
            not isinstance(amount, numbers.Integral)
            and (float(amount) > 1.0 or float(amount) < 0.0)):
        raise ValueError(f"{op}: amount={amount} should either be a float in the range [0, 1] "
                         "or a non-negative integer")


def _validate_pruning_amount(amount, tensor_size: int, op: str) -> None:
    if isinstance(amount, numbers.Integral) and amount > tensor_size:
        raise ValueError(f"{op}: amount={amount} should be smaller than the number of "
                         f"parameters to prune={tensor_size}")


def _validate_structured_pruning(t: Tensor, op: str) -> None:
    if t.ndim <= 1:
        raise ValueError(f"{op}: structured pruning can only be applied to multidimensional "
                         f"tensors. Found tensor of shape {tuple(t.shape)} with {t.ndim} dims")


def _compute_nparams_toprune(amount, tensor_size: int) -> int:
    """A count as it is; a fraction of ``tensor_size`` rounded (Python's round, ties to even)."""
    if isinstance(amount, numbers.Integral):
        return int(amount)
    return round(amount * tensor_size)


def _validate_pruning_dim(t: Tensor, dim: int, op: str) -> None:
    if dim >= t.ndim or dim < -t.ndim:
        raise IndexError(f"{op}: invalid index {dim} for tensor of size {tuple(t.shape)}")


# --- the entries each method picks ---------------------------------------------------------
def _topk_indices(t: Tensor, k: int, largest: bool) -> Tensor:
    """The indices (sorted) of the ``k`` largest or smallest entries of ``t`` (flattened);
    among equal values at the threshold the lower indices go first (PyTorch's CPU ``topk``
    leaves such ties to its selection routine, so its choice among them may differ)."""
    be = B.backend_of(t._data)
    a = B.np.asarray(be.to_host(t._data), dtype=B.np.float64).reshape(-1)
    key = B.np.where(B.np.isnan(a), B.np.inf, a)  # NaN counts as the largest, as topk's
    order = B.np.argsort(-key if largest else key, kind="stable")
    idx = B.np.sort(order[:k])
    return Tensor._of(be.asarray(B.np.asarray(idx, dtype=B.np.int64)))
