"""Weight averaging (SWA, EMA): an averaged copy of a model, the SWA learning-rate schedule, and
the batch-norm statistics refresh that an averaged model needs (PyTorch's ``swa_utils``)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable

from .. import _backend as B
from ..autodiff import effect, no_grad
from ..nn.layers.norm import _BatchNorm
from ..nn.module import Module
from ..tensor import Tensor, int64, zeros
from .base import Optimizer, lerp_
from .lr_scheduler import LRScheduler, _per_group

__all__ = ["AveragedModel", "SWALR", "update_bn", "get_ema_multi_avg_fn", "get_swa_multi_avg_fn",
           "get_ema_avg_fn", "get_swa_avg_fn"]


def _check_decay(decay: float) -> None:
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"invalid EMA decay {decay} (expected a value in [0, 1])")


def _assign(t: Tensor, value) -> None:
    """``t ← value`` in place (cast to t's dtype, truncating for integers as PyTorch's copy_)."""
    t._data[...] = value._data if isinstance(value, Tensor) else value
    t._bump()


def _in_default_float(a):
    """An integer array as the default float dtype (PyTorch computes ``int_tensor * 0.9`` in
    it: the integers cast, then the default float's arithmetic)."""
    return a.astype(B.DEFAULT_FLOAT)


def get_ema_multi_avg_fn(decay: float = 0.999) -> Callable:
    """``f(ema_params, params, n)``: every EMA tensor moves in place toward the model's,
    ``ema ← decay · ema + (1 - decay) · p`` (a lerp for floating tensors; for integer ones,
    such as ``num_batches_tracked`` with ``use_buffers=True``, PyTorch's arithmetic in the
    default float dtype, truncated back)."""
    _check_decay(decay)

    def ema_update(ema_param_list, current_param_list, _n) -> None:
        for e, p in zip(ema_param_list, current_param_list, strict=True):
            if B.is_float(e.dtype):
                lerp_(e._data, p._data, 1 - decay)
                e._bump()
            else:
                _assign(e, _in_default_float(e._data) * decay
                        + _in_default_float(p._data) * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn() -> Callable:
    """``f(avg_params, params, n)``: the running mean in place, ``avg ← avg + (p - avg)/(n + 1)``
    (a lerp with weight 1/(n + 1) for floating tensors). The weight is the exact quotient:
    PyTorch's, ``1 / (n_averaged + 1)`` of the tensor ``n_averaged``, is in its default dtype,
    so float64 parameters under a float32 default are averaged with ``1/3`` rounded to float32
    there (a relative difference of about 1e-8; float32 parameters get the same values).
    Integer tensors get the truncated running mean (PyTorch's refuses them)."""

    def swa_update(averaged_param_list, current_param_list, num_averaged) -> None:
        n = int(num_averaged.item() if isinstance(num_averaged, Tensor) else num_averaged)
        for a, p in zip(averaged_param_list, current_param_list, strict=True):
            if B.is_float(a.dtype):
                lerp_(a._data, p._data, 1 / (n + 1))
                a._bump()
            else:
                _assign(a, a._data + (p._data - a._data) / (n + 1))

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> Callable:
    """``f(ema, p, n) = decay · ema + (1 - decay) · p`` for one tensor (returns the new value)."""
    _check_decay(decay)

    def ema_update(ema_param: Tensor, current_param: Tensor, num_averaged) -> Tensor:
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn() -> Callable:
    """``f(avg, p, n) = avg + (p - avg) / (n + 1)`` for one tensor: the equal-weight mean."""

    def swa_update(averaged_param: Tensor, current_param: Tensor, num_averaged) -> Tensor:
        return averaged_param + (current_param - averaged_param) / (num_averaged + 1)

    return swa_update


class AveragedModel(Module):
    """A deep copy of ``model`` whose parameters are a running average of ``model``'s.

    Call :meth:`update_parameters` with the trained model (e.g. once per epoch): the first call
    copies its parameters, later ones average them in with ``avg_fn(avg, p, n_averaged)``
    (returns the new value; one tensor at a time) or ``multi_avg_fn(avgs, ps, n_averaged)``
    (updates lists in place); by default the equal-weight mean (SWA, Izmailov et al., 2018).
    :func:`get_ema_multi_avg_fn` gives an exponential moving average instead. Buffers are
    copied from ``model`` as they are, or averaged too with ``use_buffers=True``; otherwise
    refresh batch-norm statistics with :func:`update_bn` after training. ``n_averaged`` is a
    buffer (in ``state_dict()``); the functions are not saved, as in PyTorch. Calling the
    averaged model runs the copy.
    """

    def __init__(self, model: Module, device=None, avg_fn: Callable | None = None,
                 multi_avg_fn: Callable | None = None, use_buffers: bool = False):
        super().__init__()
        if avg_fn is not None and multi_avg_fn is not None:
            raise ValueError("AveragedModel: got both avg_fn and multi_avg_fn; expected at most "
                             "one of them")
        if not isinstance(model, Module):
            raise TypeError(f"AveragedModel: expected an nn.Module, got {type(model).__name__}")
        self.module = copy.deepcopy(model)
        if device is not None:
            self.module.to(device)
        self.register_buffer("n_averaged", zeros((), dtype=int64, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @effect  # under nodegrad.jit a replayed step: it writes the averages' arrays directly
    def update_parameters(self, model: Module) -> None:
        """Average ``model``'s parameters (and buffers, with ``use_buffers``) into this copy."""
        with no_grad():
            self._update(model)

    def _update(self, model: Module) -> None:
        if self.use_buffers:
            mine = itertools.chain(self.module.parameters(), self.module.buffers())
            theirs = itertools.chain(model.parameters(), model.buffers())
        else:
            mine, theirs = self.module.parameters(), model.parameters()
        n = int(self.n_averaged.item())
        avgs, currents = [], []
        for a, p in zip(mine, theirs):
            if a is None or p is None:
                continue
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"AveragedModel.update_parameters: a tensor of shape "
                                 f"{tuple(p.shape)} where the averaged copy has "
                                 f"{tuple(a.shape)}; expected the model it was built from")
            p = p.detach()
            if p.device != a.device:
                p = p.to(a.device)
            avgs.append(a)
            currents.append(p)
            if n == 0:
                _assign(a, p)
        if n > 0:
            if self.multi_avg_fn is not None:
                groups: dict = {}  # by device and dtype, as PyTorch calls it
                for a, p in zip(avgs, currents):
                    xs, ps = groups.setdefault((str(a.device), a.dtype), ([], []))
                    xs.append(a)
                    ps.append(p)
                for xs, ps in groups.values():
                    self.multi_avg_fn(xs, ps, self.n_averaged)
            else:
                fn = self.avg_fn if self.avg_fn is not None else get_swa_avg_fn()
                for a, p in zip(avgs, currents):
                    _assign(a, fn(a.detach(), p, self.n_averaged))
        if not self.use_buffers:
            for b_avg, b_model in zip(self.module.buffers(), model.buffers(), strict=True):
                if b_avg is not None and b_model is not None:
                    _assign(b_avg, b_model.detach().to(b_avg.device))
        _assign(self.n_averaged, n + 1)


def update_bn(loader: Iterable, model: Module, device=None) -> None:
    """Recompute the running statistics of ``model``'s batch-norm layers with one pass over
    ``loader`` (batches: a tensor, or a list/tuple whose first item is the input).

    The statistics are reset and accumulated as an equal-weight average over the batches
    (``momentum=None``, PyTorch's cumulative mode); each layer's momentum and the model's
    training mode are restored afterwards. Weight averaging needs this: the running statistics
    of an averaged model are not the statistics of its averaged weights.
    """
    momenta: dict = {}
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            _reset_running_stats(m)
            momenta[m] = m.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for m in momenta:
        m.momentum = None
    try:
        with no_grad():
            for batch in loader:
                if isinstance(batch, list | tuple):
                    batch = batch[0]
                if device is not None:
                    batch = batch.to(device)
                model(batch)
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        model.train(was_training)


def _reset_running_stats(m: _BatchNorm) -> None:
    """PyTorch's ``reset_running_stats``: mean 0, variance 1, no batches counted."""
    reset = getattr(m, "reset_running_stats", None)
    if callable(reset):
        reset()
        return
    for name, value in (("running_mean", 0), ("running_var", 1), ("num_batches_tracked", 0)):
        t = getattr(m, name, None)
        if t is not None:
            _assign(t, value)


class SWALR(LRScheduler):
    """Anneal each group's lr to ``swa_lr`` over ``anneal_epochs`` steps ("cos" or "linear"),
    then hold it (PyTorch's ``SWALR``, for the averaging phase of SWA).

    Step ``t`` sets ``lr = swa_lr · α_t + lr₀ · (1 - α_t)`` with ``α_t`` the anneal function of
    ``min(1, t / anneal_epochs)``; ``lr₀`` is recovered from the group's current lr, so, as in
    PyTorch, the schedule starts from whatever lr the groups hold when it takes over (it is not
    a closed-form function of the initial lr, and does not compose by multiplication).
    ``swa_lr`` may be one value or one per group; it is stored in each group as ``"swa_lr"``.
    Resumed with ``last_epoch=k`` (the optimizer's state, lr included, loaded first), it keeps
    the groups' lr on its first step and anneals on from step k + 1, as the uninterrupted run
    does (PyTorch's restarts the anneal from the current lr).
    """

    def __init__(self, optimizer: Optimizer, swa_lr: float | list[float], anneal_epochs: int = 10,
                 anneal_strategy: str = "cos", last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"SWALR: expected an Optimizer, got {type(optimizer).__name__}")
        swa_lrs = _per_group(swa_lr, len(optimizer.param_groups), "swa_lrs")
        for lr, group in zip(swa_lrs, optimizer.param_groups):
            group["swa_lr"] = lr
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"SWALR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"SWALR: anneal_epochs must be an int >= 0, got {anneal_epochs!r}")
        self.anneal_strategy = anneal_strategy
        self.anneal_epochs = anneal_epochs
        self._hold = last_epoch >= 0 if isinstance(last_epoch, int) else False
        super().__init__(optimizer, last_epoch)
        self._hold = False

    def anneal_func(self, t: float) -> float:
        """The share of the way to ``swa_lr`` at progress ``t`` in [0, 1]."""
        if self.anneal_strategy == "cos":
            return (1 - math.cos(math.pi * t)) / 2
        return t

    @staticmethod
    def _get_initial_lr(lr: float, swa_lr: float, alpha: float) -> float:
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def lr_at(self, t: int) -> list[float]:
        if self._hold:  # resumed: the groups hold step t's lr already
            return [g["lr"] for g in self.optimizer.param_groups]
        step = max(1, t) if self.anneal_epochs == 0 else t
        span = max(1, self.anneal_epochs)
        prev_alpha = self.anneal_func(max(0, min(1, (step - 1) / span)))
        alpha = self.anneal_func(max(0, min(1, step / span)))
        out = []
        for g in self.optimizer.param_groups:
            lr0 = self._get_initial_lr(g["lr"], g["swa_lr"], prev_alpha)
            out.append(g["swa_lr"] * alpha + lr0 * (1 - alpha))
        return out
