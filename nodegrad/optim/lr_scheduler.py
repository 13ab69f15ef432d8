"""Learning-rate schedules: each sets its groups' ``lr`` once per ``step()``, PyTorch's protocol.

Call ``scheduler.step()`` after ``optimizer.step()``. On its own, every schedule here except
:class:`ReduceLROnPlateau` and :class:`MultiplicativeLR` is a closed-form function
(``lr_at(t)``) of the step count ``t`` (0 before the first update) and the groups' initial
learning rates η: ``LinearWarmup(CosineAnnealingLR(opt, 1000), 100)`` warms up, then anneals.
Inside :class:`ChainedScheduler` and :class:`SequentialLR` the schedules step as PyTorch's do
there, by their chainable ``get_lr()``: each acts on the groups' current lrs, as the one before
left them. A chainable schedule on its own switches to that form, for good, once it finds the
lrs changed since its last step (another schedule stepped on the same optimizer, or
``group["lr"] = ...`` by hand): as PyTorch's, it carries the change on instead of undoing it.
A subclass defines either ``lr_at(t)`` or, PyTorch's extension point, ``get_lr()``
(the lrs for ``last_epoch``, from ``base_lrs`` or the groups' current lrs). PyTorch's
deprecated ``step(epoch)`` jumps to ``epoch`` (closed form where there is one) with its
warning. Each has ``state_dict()`` and ``load_state_dict()`` for resuming.

PyTorch's other way to resume works too: rebuild the optimizer with each group's
``initial_lr`` (``optimizer.load_state_dict`` restores it) and the schedule with
``last_epoch=k``, the number of steps already taken minus one; its first step, taken when it
is built, is step k + 1, and the rates that follow are those of the uninterrupted run. As
the rates come from the closed form and ``initial_lr``, this holds even where PyTorch's
chainable forms multiply the group's current lr a second time (``StepLR`` or ``MultiStepLR``
resumed on a decay step, ``ConstantLR`` at its end) and for ``SequentialLR``, which PyTorch
restarts from its first schedule.
"""

from __future__ import annotations

import math
import numbers
import types
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..autodiff import effect
from ..tensor import Tensor
from .base import _EFFECT_CODE, Optimizer

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)


def _warn_epoch() -> None:
    """PyTorch's warning for the deprecated ``step(epoch)`` (its text and class)."""
    warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=3)


def _defined_at(cls: type, name: str) -> int:
    """The position in ``cls``'s MRO of the class that defines ``name`` (lower: more derived)."""
    return next(i for i, c in enumerate(cls.__mro__) if name in c.__dict__)


def _check_last_epoch(name: str, last_epoch) -> None:
    if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < -1:
        raise ValueError(f"{name}: last_epoch must be -1 (start) or the index of the last step "
                         f"taken (>= 0, to resume), got {last_epoch!r}")


def _check_positive_int(name: str, arg: str, value) -> None:
    """PyTorch's check of a step count: a positive ``int`` (a float such as 20.0, or a NumPy
    integer, is refused there too)."""
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer {arg}, got {value!r}")


def _initial_lrs(optimizer: Optimizer, last_epoch: int) -> None:
    """Record each group's lr as its ``initial_lr`` (starting), or check that every group has
    one (resuming: PyTorch's KeyError and message)."""
    if last_epoch == -1:
        for g in optimizer.param_groups:  # a tensor lr is copied: steps write into it
            lr = g["lr"]
            g.setdefault("initial_lr", lr.clone() if isinstance(lr, Tensor) else lr)
        return
    for i, g in enumerate(optimizer.param_groups):
        if "initial_lr" not in g:
            raise KeyError(
                f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                "scheduler with last_epoch >= 0.\nThis typically happens when:\n1. You're "
                "trying to resume training from a checkpoint but haven't properly loaded the "
                "optimizer state\n2. You're using last_epoch >= 0 for a fresh training run (not "
                "recommended)")


class LRScheduler:
    """Base: ``step()`` advances ``last_epoch`` and writes the lrs for it into the groups.

    A schedule defines ``lr_at(t)``, its closed form, or ``get_lr()``, PyTorch's extension
    point: the lrs for step ``last_epoch`` (already advanced when it is called), from
    ``base_lrs`` or, chainable, from the groups' current lrs (``_is_initial`` is true during
    the step taken at construction). ``step()`` uses the one the most derived class defines
    (``lr_at`` where a class defines both: the built-ins' ``get_lr`` is PyTorch's chainable
    form, which :class:`ChainedScheduler` and :class:`SequentialLR` use).

    ``last_epoch`` is PyTorch's: -1 (the default) starts the schedule, recording each group's
    lr as its ``initial_lr``; k >= 0 resumes one that had taken k + 1 steps: the rates come
    from the groups' ``initial_lr`` (PyTorch's KeyError names a group without one), and the
    step taken when it is built sets step k + 1's rates again.
    """

    _is_initial: bool = False  # true during the step taken at construction (PyTorch's)
    _get_lr_called_within_step: bool = False
    _chainable: bool = False  # get_lr() acts on the groups' current lrs (PyTorch's form)
    _closed_form: bool = True  # lr_at(t) gives step t from base_lrs alone
    _follows_groups: bool = False  # steps by the chainable get_lr() once others set the lrs
    _lrs_written: list[float] | None = None  # the lrs its last step set (None: unknown)

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass's own ``step`` is recorded whole under :mod:`nodegrad.jit`, as the base's
        is: a schedule stepped inside a jitted step then steps on every call, not only when
        the step was traced."""
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("step")
        if callable(fn) and getattr(fn, "__code__", None) is not _EFFECT_CODE:
            cls.step = effect(fn)

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        _check_last_epoch(type(self).__name__, last_epoch)
        self.optimizer = optimizer
        for i, g in enumerate(optimizer.param_groups):
            if callable(g["lr"]):
                raise TypeError(f"group {i}'s lr is a callable schedule already; use either a "
                                "callable lr or a scheduler, not both")
        _initial_lrs(optimizer, last_epoch)
        self.base_lrs: list[float] = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = list(self.base_lrs)
        self._step_count = 0
        self._lrs_written = [float(lr) for lr in self.base_lrs]
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def lr_at(self, t: int) -> list[float]:
        """The learning rate of each group after ``t`` scheduler steps."""
        if _defined_at(type(self), "get_lr") < _defined_at(type(self), "lr_at"):
            raise NotImplementedError(
                f"{type(self).__name__}.lr_at: this schedule has no closed form; it defines "
                "get_lr() (the lrs for last_epoch) instead")
        raise self._neither()

    def get_lr(self) -> list[float]:
        """The lrs for step ``last_epoch`` (PyTorch's extension point; call ``step()`` and
        read ``get_last_lr()`` rather than calling it). Here: the closed form ``lr_at``."""
        if not self._has_lr_at():
            raise self._neither()
        self._warn_get_lr()
        return self.lr_at(self.last_epoch)

    def _neither(self) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__}.get_lr: a schedule must define get_lr() (the lrs for step "
            "last_epoch, PyTorch's extension point) or lr_at(t) (its closed form); this one "
            "defines neither")

    def _warn_get_lr(self) -> None:
        """PyTorch's warning when ``get_lr()`` is called outside a step."""
        if not self._get_lr_called_within_step:
            warnings.warn("To get the last learning rate computed by the scheduler, please use "
                          "`get_last_lr()`.", UserWarning, stacklevel=3)

    @contextmanager
    def _within_step(self) -> Iterator[None]:
        self._get_lr_called_within_step = True
        try:
            yield
        finally:
            self._get_lr_called_within_step = False

    @classmethod
    def _has_lr_at(cls) -> bool:
        """Whether the schedule defines ``lr_at`` (LRScheduler's own only raises)."""
        return cls.__mro__[_defined_at(cls, "lr_at")] is not LRScheduler

    @classmethod
    def _steps_by_get_lr(cls) -> bool:
        """Whether ``step()`` takes its lrs from ``get_lr()``: where a subclass defines
        ``get_lr`` below the ``lr_at`` it inherits (PyTorch's extension point)."""
        return _defined_at(cls, "get_lr") < _defined_at(cls, "lr_at")

    @effect  # under nodegrad.jit a replayed step: the lrs live outside the program
    def step(self, epoch: int | None = None) -> None:
        """Advance one step and set every group's ``lr``; ``step(epoch)``, PyTorch's
        deprecated form, jumps to step ``epoch`` (with PyTorch's warning)."""
        if epoch is None and self._groups_moved():
            self._follows_groups = True
        if epoch is None and self._follows_groups:
            self._chain_step()
            return
        self._step_count += 1
        if epoch is not None:
            _warn_epoch()
            self._step_to(epoch)
            return
        self.last_epoch += 1
        with self._within_step():
            lrs = self.get_lr() if self._steps_by_get_lr() else self.lr_at(self.last_epoch)
        self._set(lrs)

    def _groups_moved(self) -> bool:
        """Whether something else set the groups' lrs since this schedule last did (another
        schedule stepped on the same optimizer, ``group["lr"] = ...`` by hand, or a group
        added with ``add_param_group``). PyTorch's chainable schedules then act on those lrs
        (a new group's from its own lr); the closed form would undo the change.
        Not at the step taken when resuming with ``last_epoch=k``, which keeps the closed
        form (see the module docstring)."""
        if not self._chainable or _defined_at(type(self), "get_lr") > _defined_at(
                type(self), "lr_at"):
            return False
        if len(self.optimizer.param_groups) != len(self.base_lrs):
            return True  # a group added since it was built: PyTorch's form takes it on from its lr
        if self._is_initial and self.last_epoch >= 0:
            return False
        if self._lrs_written is None:  # just loaded, or wrapped: the lrs are not its own
            return False
        return any(float(g["lr"]) != lr
                   for g, lr in zip(self.optimizer.param_groups, self._lrs_written))

    def _step_to(self, epoch: int) -> None:
        """Jump to step ``epoch``: the closed form there where the schedule has one, else its
        ``get_lr()`` (PyTorch's ``step(epoch)``, and its restart at a SequentialLR milestone)."""
        self.last_epoch = epoch
        closed = self._closed_form and self._has_lr_at()
        with self._within_step():
            lrs = self._closed_lr_at(epoch) if closed else self.get_lr()
        self._set(lrs)

    def _closed_lr_at(self, t: int) -> list[float]:
        """PyTorch's closed form (``step(epoch)``, a SequentialLR milestone): ``lr_at`` unless
        a non-integer argument makes the stepped (chainable) rates differ from it."""
        return self.lr_at(t)

    def _chain_step(self) -> None:
        """One step inside a ChainedScheduler or SequentialLR: PyTorch's ``step()`` there,
        whose chainable ``get_lr()`` acts on the groups' current lrs."""
        if not (self._chainable
                and _defined_at(type(self), "get_lr") <= _defined_at(type(self), "lr_at")):
            self.step()
            return
        self._step_count += 1
        self.last_epoch += 1
        with self._within_step():
            lrs = self.get_lr()
        self._set(lrs)

    def _restart(self, initial: bool) -> None:
        """Start again at step 0 inside a ChainedScheduler or SequentialLR, from the groups'
        current lrs: PyTorch's step at construction (``initial``) or, at a SequentialLR
        milestone, its jump to step 0."""
        if not initial:
            self._step_to(0)
            return
        self.last_epoch, self._step_count = -1, 0
        self._is_initial = True
        try:
            self._chain_step()
        finally:
            self._is_initial = False

    def _set(self, lrs: list[float]) -> None:
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):  # PyTorch's strict zip fails here too, less clearly
            raise ValueError(
                f"{type(self).__name__}: the optimizer has {len(groups)} param groups, but the "
                f"schedule gives {len(lrs)} lrs: a group added with add_param_group after the "
                "schedule was built has no initial lr (or per-group arguments) here; build the "
                "schedule after adding the group")
        for g, lr in zip(groups, lrs):
            old = g["lr"]
            if isinstance(old, Tensor):  # PyTorch's fill_: whoever holds the tensor sees it
                old._data[...] = float(lr)
                old._bump()
            else:
                g["lr"] = lr
        self._last_lr = list(lrs)
        self._lrs_written = [float(g["lr"]) for g in self.optimizer.param_groups]  # as stored

    def _current_lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last ``step()``."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (nested schedulers as their own state dicts)."""
        return {k: (v.state_dict() if isinstance(v, LRScheduler) else v)
                for k, v in self.__dict__.items() if k not in ("optimizer", "_lrs_written")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k, v in state_dict.items():
            cur = self.__dict__.get(k)
            if isinstance(cur, LRScheduler):
                cur.load_state_dict(v)
            else:
                self.__dict__[k] = v
        self._lrs_written = None  # the optimizer's lrs may or may not have been restored


class _LRScheduler(LRScheduler):
    """PyTorch's old name of :class:`LRScheduler`, still subclassed by older code."""


class StepLR(LRScheduler):
    """``η γ^⌊t / step_size⌋``: multiply by γ every ``step_size`` steps.

    A non-integer ``step_size`` is used as given, as PyTorch's: the lr decays at the steps t
    with ``t % step_size == 0`` (2.5: at 5, 10, ...), while ``step(epoch)`` takes PyTorch's
    closed form, ``γ^(epoch // step_size)``.
    """

    _chainable = True

    def __init__(self, optimizer: Optimizer, step_size: float, gamma: float = 0.1,
                 last_epoch: int = -1):
        if not step_size > 0:
            raise ValueError(f"StepLR: step_size must be positive, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def _period(self) -> int:
        """The decay steps' spacing: the t ≥ 1 with ``t % step_size == 0`` (exact in floats)
        are the multiples of ``step_size``'s numerator in lowest terms."""
        s = self.step_size
        return int(s) if isinstance(s, numbers.Integral) else float(s).as_integer_ratio()[0]

    def lr_at(self, t: int) -> list[float]:
        return [b * self.gamma ** (t // self._period()) for b in self.base_lrs]

    def _closed_lr_at(self, t: int) -> list[float]:
        return [b * self.gamma ** (t // self.step_size) for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times γ on every ``step_size``-th step."""
        self._warn_get_lr()
        t, cur = self.last_epoch, self._current_lrs()
        return cur if t == 0 or t % self.step_size else [lr * self.gamma for lr in cur]


class MultiStepLR(LRScheduler):
    """``η γ^k`` where k counts the milestones reached (``t >= m``).

    Milestones are used as given, as PyTorch's: one that is not a whole number (2.5) is never
    reached by ``step()``, though ``step(epoch)``, PyTorch's closed form, counts it.
    """

    _chainable = True

    def __init__(self, optimizer: Optimizer, milestones: Iterable[float], gamma: float = 0.1,
                 last_epoch: int = -1):
        self.milestones, self.gamma = sorted(milestones), gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        k = sum(1 for m in self.milestones if 0 <= m <= t and m == math.floor(m))
        return [b * self.gamma ** k for b in self.base_lrs]

    def _closed_lr_at(self, t: int) -> list[float]:
        return [b * self.gamma ** bisect_right(self.milestones, t) for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times γ^n at a milestone given n times."""
        self._warn_get_lr()
        t, cur = self.last_epoch, self._current_lrs()
        n = bisect_right(self.milestones, t) - bisect_left(self.milestones, t)
        return [lr * self.gamma ** n for lr in cur] if n else cur


class ExponentialLR(LRScheduler):
    """``η γ^t``."""

    _chainable = True

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        return [b * self.gamma ** t for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times γ (unchanged at construction)."""
        self._warn_get_lr()
        cur = self._current_lrs()
        return cur if self._is_initial else [lr * self.gamma for lr in cur]


class InverseSqrtLR(LRScheduler):
    """The notes' ``η / √k`` for the k-th update (k = t + 1): the Robbins–Monro-style decay.

    Σ η_k diverges while η_k → 0, which is what SGD needs to converge on convex problems.
    """

    def lr_at(self, t: int) -> list[float]:
        return [b / math.sqrt(t + 1) for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """``η_min + (η - η_min)(1 + cos(π t / T_max)) / 2`` (SGDR without restarts)."""

    _chainable = True

    def __init__(self, optimizer: Optimizer, T_max: float, eta_min: float = 0.0,
                 last_epoch: int = -1):
        if not T_max > 0:  # a non-integer T_max is used as given, as PyTorch's
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        c = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return [self.eta_min + (b - self.eta_min) * c for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lr's distance to ``eta_min`` scaled by the
        ratio of successive cosine factors (a fixed rise where the previous factor is 0)."""
        self._warn_get_lr()
        t, T, e, cur = self.last_epoch, self.T_max, self.eta_min, self._current_lrs()
        if self._is_initial:
            return cur
        if self._step_count == 1 and t > 0:
            return self.lr_at(t)
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (b - e) * (1 - math.cos(math.pi / T)) / 2
                    for lr, b in zip(cur, self.base_lrs)]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - e) + e for lr in cur]


class LinearWarmup(LRScheduler):
    """Multiply a schedule (or a constant lr) by a factor rising linearly to 1 (warm-up).

    ``factor(t) = start_factor + (1 - start_factor) min(t, warmup_steps) / warmup_steps``, as
    PyTorch's ``LinearLR``; ``LinearWarmup(StepLR(opt, 30), 5)`` equals PyTorch's
    ``ChainedScheduler([LinearLR(opt, 1/3, total_iters=5), StepLR(opt, 30)])``. Arguments to
    ``step`` (a metric, for :class:`ReduceLROnPlateau`) go to the wrapped schedule. A wrapped
    schedule sets the step to start from (one resumed with ``last_epoch=k`` resumes the
    warm-up too); ``last_epoch`` is for a constant lr (see :class:`LRScheduler`).
    """

    def __init__(self, schedule: LRScheduler | Optimizer, warmup_steps: int,
                 start_factor: float = 1 / 3, last_epoch: int = -1):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps}")
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        self.inner = schedule if isinstance(schedule, LRScheduler) else None
        self.warmup_steps, self.start_factor = int(warmup_steps), start_factor
        if self.inner is not None:  # the wrapped schedule has taken its steps (its first when
            at = self.inner.last_epoch - 1  # built): this one's first step is its last one
            if last_epoch not in (-1, at):
                raise ValueError(f"LinearWarmup: last_epoch={last_epoch} disagrees with the "
                                 f"wrapped schedule, which has taken {at + 1} step(s); leave "
                                 "it -1")
            last_epoch = at
        self._built = False  # the first step (here) does not step the wrapped schedule
        super().__init__(schedule.optimizer if self.inner is not None else schedule,
                         last_epoch)
        self._built = True

    def factor(self, t: int) -> float:
        s = self.start_factor
        return s + (1 - s) * min(t, self.warmup_steps) / self.warmup_steps

    def get_lr(self) -> list[float]:
        """The lrs of step ``last_epoch``: the factor times the wrapped schedule's lrs."""
        self._warn_get_lr()
        lrs = self.base_lrs if self.inner is None else self.inner.get_last_lr()
        return [self.factor(self.last_epoch) * lr for lr in lrs]

    def step(self, *args) -> None:
        """One step (arguments go to a wrapped ReduceLROnPlateau); ``step(epoch)`` otherwise
        is PyTorch's deprecated jump to step ``epoch``, of the wrapped schedule too."""
        self._step_count += 1
        if args and not isinstance(self.inner, ReduceLROnPlateau):
            if len(args) != 1:
                raise TypeError(f"LinearWarmup.step: expected at most one argument (epoch), got "
                                f"{len(args)}")
            if args[0] is not None:
                _warn_epoch()
                self._step_to(args[0])
                return
            args = ()
        self.last_epoch += 1
        if self.inner is not None and self._built:
            self.inner.step(*args)
        with self._within_step():
            self._set(self.get_lr())

    def _set(self, lrs: list[float]) -> None:
        super()._set(lrs)
        if self.inner is not None:  # the lrs are the product, not the wrapped schedule's own
            self.inner._lrs_written = None

    def _step_to(self, epoch: int) -> None:
        if self.inner is not None:
            self.inner._step_count += 1
            self.inner._step_to(epoch)
        self.last_epoch = epoch
        with self._within_step():
            self._set(self.get_lr())


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin): lr up from ``max_lr / div_factor`` to ``max_lr``, down.

    Over ``pct_start`` of ``total_steps`` the lr anneals (cosine or linear) up to ``max_lr``
    while momentum (or Adam's β₁) anneals down from ``max_momentum`` to ``base_momentum``; then
    both reverse, the lr ending at ``max_lr / (div_factor · final_div_factor)``. With
    ``three_phase`` the lr comes back to the start before the final descent. As PyTorch's, the
    groups keep the cycle's ends (``initial_lr``, ``max_lr``, ``min_lr``, ``max_momentum``,
    ``base_momentum``), and a schedule resumed with ``last_epoch=k`` reads them from there
    (``optimizer.load_state_dict`` restores them), not from the arguments.
    """

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float],
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85,
                 max_momentum: float | Sequence[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1):
        if total_steps is not None:  # PyTorch's: it wins over epochs and steps_per_epoch
            _check_positive_int("OneCycleLR", "total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            _check_positive_int("OneCycleLR", "epochs", epochs)
            _check_positive_int("OneCycleLR", "steps_per_epoch", steps_per_epoch)
            total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: expected a float pct_start between 0 and 1 (PyTorch "
                             f"refuses an int), got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        _check_last_epoch("OneCycleLR", last_epoch)
        groups = optimizer.param_groups
        n = len(groups)
        self.total_steps, self.anneal_strategy = int(total_steps), anneal_strategy
        self.cycle_momentum = cycle_momentum
        self.momentum_key = None
        if cycle_momentum:
            if "betas" in groups[0]:
                self.momentum_key = "betas"
            elif "momentum" in groups[0]:
                self.momentum_key = "momentum"
            else:
                raise ValueError(f"{type(optimizer).__name__} has neither momentum nor betas; "
                                 "pass cycle_momentum=False")
        keys = ["initial_lr", "max_lr", "min_lr"]
        if last_epoch == -1:
            for g, m in zip(groups, _per_group(max_lr, n, "max_lr")):
                g["initial_lr"] = m / div_factor
                g["max_lr"] = m
                g["min_lr"] = g["initial_lr"] / final_div_factor
            if cycle_momentum:
                for g, hi, lo in zip(groups, _per_group(max_momentum, n, "max_momentum"),
                                     _per_group(base_momentum, n, "base_momentum")):
                    g["max_momentum"], g["base_momentum"] = hi, lo
        if cycle_momentum:
            keys += ["max_momentum", "base_momentum"]
        _initial_lrs(optimizer, last_epoch)  # PyTorch's error when initial_lr is missing
        for i, g in enumerate(groups):
            lacking = [k for k in keys if k not in g]
            if lacking:
                raise KeyError(f"OneCycleLR: param_groups[{i}] lacks {lacking}, which a "
                               "schedule resumed with last_epoch >= 0 reads (load the "
                               "optimizer's state dict first)")
        self.initial_lrs = [g["initial_lr"] for g in groups]
        self.max_lrs = [g["max_lr"] for g in groups]
        self.min_lrs = [g["min_lr"] for g in groups]
        if cycle_momentum:
            self.momenta = {"base": [g["base_momentum"] for g in groups],
                            "max": [g["max_momentum"] for g in groups]}
        T = self.total_steps
        if three_phase:  # (end step, lr from, lr to, momentum from, momentum to)
            self.phases = [(pct_start * T - 1, "initial", "max", "max", "base"),
                           (2 * pct_start * T - 2, "max", "initial", "base", "max"),
                           (T - 1, "initial", "min", "max", "max")]
        else:
            self.phases = [(pct_start * T - 1, "initial", "max", "max", "base"),
                           (T - 1, "max", "min", "base", "max")]
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase(self, t: int) -> tuple:
        start = 0.0
        for i, ph in enumerate(self.phases):
            if t <= ph[0] or i == len(self.phases) - 1:
                return ph, (t - start) / (ph[0] - start)
            start = ph[0]
        raise AssertionError("unreachable")

    def lr_at(self, t: int) -> list[float]:
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR stepped {t} times, but total_steps is "
                             f"{self.total_steps}")
        groups = self.optimizer.param_groups
        if len(groups) != len(self.max_lrs):  # PyTorch's KeyError: the group lacks the keys
            raise KeyError(f"OneCycleLR: param_groups[{len(self.max_lrs)}] was added after the "
                           "schedule was built and has no 'initial_lr', 'max_lr' or 'min_lr'; "
                           "build the schedule after adding the group")
        ph, pct = self._phase(t)
        lrs = {"initial": self.initial_lrs, "max": self.max_lrs, "min": self.min_lrs}
        return [self._anneal(lrs[ph[1]][i], lrs[ph[2]][i], pct) for i in range(len(self.max_lrs))]

    def _set(self, lrs: list[float]) -> None:
        """The lrs, and the momenta of the same step."""
        super()._set(lrs)
        if self.cycle_momentum:
            ph, pct = self._phase(self.last_epoch)
            lo, hi = self.momenta[ph[3]], self.momenta[ph[4]]
            for i, g in enumerate(self.optimizer.param_groups):
                m = self._anneal(_nth(lo, i), _nth(hi, i), pct)
                if self.momentum_key == "betas":
                    g["betas"] = (m, *g["betas"][1:])
                else:
                    g["momentum"] = m


class ReduceLROnPlateau(LRScheduler):
    """Multiply the lr by ``factor`` when a metric has not improved for ``patience`` steps.

    ``step(metric)`` once per evaluation. Improvement means beating the best value by
    ``threshold`` (relative or absolute); after a reduction, ``cooldown`` steps are ignored; the
    lr never goes below ``min_lr`` and changes smaller than ``eps`` are skipped. As PyTorch's: a
    group's lr changed by hand is reduced from there; a group added with ``add_param_group``
    is reduced too, from its own lr (with one ``min_lr`` for all; a list ``min_lr`` then needs
    ``min_lrs`` set to one per group, PyTorch's RuntimeError says so); wrapped by
    :class:`LinearWarmup` the current lr is this scheduler's own (the groups hold the
    warm-up's product).
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] = 0.0, eps: float = 1e-8):
        if factor >= 1.0:
            raise ValueError(f"factor should be < 1.0, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        n = len(optimizer.param_groups)
        if isinstance(min_lr, list | tuple):
            if len(min_lr) != n:
                raise ValueError(f"expected {n} min_lrs, got {len(min_lr)}")
            self.min_lrs, self.default_min_lr = list(min_lr), None
        else:
            self.min_lrs, self.default_min_lr = [min_lr] * n, min_lr
        self.optimizer = optimizer
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.eps = cooldown, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        self.last_epoch = 0
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self._last_lr = list(self.base_lrs)
        self._lrs_written = [float(lr) for lr in self.base_lrs]

    def _match_min_lrs(self) -> None:
        """One ``min_lr`` per group once groups were added (PyTorch's, at a reduction)."""
        n = len(self.optimizer.param_groups)
        if len(self.min_lrs) == n:
            return
        if getattr(self, "default_min_lr", None) is None:
            raise RuntimeError(
                f"ReduceLROnPlateau: the optimizer has {n} param groups, but min_lr gave "
                f"{len(self.min_lrs)} (a group was added with add_param_group since it was "
                "built); set scheduler.min_lrs to one value per group")
        self.min_lrs = [self.default_min_lr] * n

    def _is_better(self, a: float) -> bool:
        best, th = self.best, self.threshold
        if self.mode == "min":
            return a < best * (1 - th) if self.threshold_mode == "rel" else a < best - th
        return a > best * (1 + th) if self.threshold_mode == "rel" else a > best + th

    def step(self, metrics: float, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record this evaluation's metric; reduce the lr when it has stalled. ``epoch``
        (PyTorch's deprecated form, with its warning) sets ``last_epoch``."""
        current = float(metrics)
        if epoch is None:
            self.last_epoch += 1
        else:
            _warn_epoch()
            self.last_epoch = epoch
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        groups = self.optimizer.param_groups
        lrs = list(self._last_lr) + [float(g["lr"]) for g in groups[len(self._last_lr):]]
        written = self._lrs_written  # None when wrapped (LinearWarmup) or just loaded
        if written is not None:  # an lr changed by hand since: reduced from there, as PyTorch's
            for i, (g, w) in enumerate(zip(groups, written)):
                if float(g["lr"]) != w:
                    lrs[i] = float(g["lr"])
        if self.num_bad_epochs > self.patience:
            self._match_min_lrs()
            for i, old in enumerate(lrs):
                new = max(old * self.factor, self.min_lrs[i])
                if old - new > self.eps:
                    lrs[i] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._set(lrs)


def _nth(v, i: int):
    """Group ``i``'s value of a per-group list, or the one value for all (older state)."""
    return v[i] if isinstance(v, list | tuple) else v


# --- more of PyTorch's schedules, in closed form ------------------------------------------------
def _per_group(value, n: int, what: str) -> list:
    """One ``value`` per parameter group: a list of ``n`` or one value for all."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f"expected {n} {what}, one per parameter group, got {len(value)}")
        return list(value)
    return [value] * n


class LambdaLR(LRScheduler):
    """``η λ(t)``: each group's initial lr times its function of the step count (PyTorch's).
    ``state_dict()`` leaves the functions out, as PyTorch does (rebuild them on resume)."""

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambdas = _per_group(lr_lambda, len(optimizer.param_groups), "lr_lambdas")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        return [b * f(t) for b, f in zip(self.base_lrs, self.lr_lambdas)]

    def get_lr(self) -> list[float]:
        """``η λ(last_epoch)``: PyTorch's LambdaLR is a closed form in chains too."""
        self._warn_get_lr()
        return self.lr_at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        return _lambdas_state(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _load_lambdas(self, state_dict, super().load_state_dict)


class MultiplicativeLR(LRScheduler):
    """The lr times λ(t) at every step t ≥ 1: ``η Π_{k≤t} λ(k)`` (PyTorch's). The running
    product is state (in ``state_dict()``), so steps must come in order, as in training.
    PyTorch gives it no closed form: ``step(epoch)`` and a SequentialLR milestone multiply the
    current lr by λ(epoch) (λ(0) at a milestone), as there."""

    _chainable = True
    _closed_form = False

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambdas = _per_group(lr_lambda, len(optimizer.param_groups), "lr_lambdas")
        self._products: list[float] = [1.0] * len(self.lr_lambdas)
        self._at = 0  # the step the products are for
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        if t == 0:
            self._products, self._at = [1.0] * len(self.lr_lambdas), 0
        while self._at < t:
            self._at += 1
            self._products = [p * f(self._at) for p, f in zip(self._products, self.lr_lambdas)]
        return [b * p for b, p in zip(self.base_lrs, self._products)]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times λ(last_epoch) (unchanged at
        construction)."""
        self._warn_get_lr()
        cur = self._current_lrs()
        if self._is_initial:
            return cur
        return [lr * f(self.last_epoch) for lr, f in zip(cur, self.lr_lambdas)]

    def _step_to(self, epoch: int) -> None:
        factors = [f(epoch) for f in self.lr_lambdas]
        self.last_epoch = self._at = epoch
        self._products = [p * x for p, x in zip(self._products, factors)]
        self._set([lr * x for lr, x in zip(self._current_lrs(), factors)])

    def state_dict(self) -> dict[str, Any]:
        return _lambdas_state(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _load_lambdas(self, state_dict, super().load_state_dict)


def _lambdas_state(sched: LRScheduler, state: dict[str, Any]) -> dict[str, Any]:
    """PyTorch's entry for the λs: None for a function (not saved), a copy of the attributes
    of a callable object (its state)."""
    state["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(vars(f))
                           for f in sched.lr_lambdas]
    return state


def _load_lambdas(sched: LRScheduler, state_dict: dict[str, Any], load) -> None:
    """Load all but the λs, which stay the ones given when built; a callable object gets
    its saved attributes back (PyTorch's, so PyTorch's state dicts load too)."""
    state = dict(state_dict)
    saved = state.pop("lr_lambdas", None) or []
    if len(saved) not in (0, len(sched.lr_lambdas)):
        raise ValueError(f"{type(sched).__name__}.load_state_dict: the state has "
                         f"{len(saved)} lr_lambdas, this schedule {len(sched.lr_lambdas)}")
    load(state)
    for f, attrs in zip(sched.lr_lambdas, saved):
        if attrs is not None:
            vars(f).update(attrs)


class LinearLR(LRScheduler):
    """``η f(t)``, f going linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps and staying there (PyTorch's). With ``total_iters=0`` it stays at
    ``start_factor``, as PyTorch's does (its chainable form never moves past step 0); a
    non-integer ``total_iters`` T is used as given, f stopping at its last step ⌊T⌋ (PyTorch's
    chainable form), short of ``end_factor``."""

    _chainable = True

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: float = 5, last_epoch: int = -1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1] and end_factor in "
                             f"[0, 1], got {start_factor} and {end_factor}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _factor(self, t: float) -> float:
        f, T = self.start_factor, self.total_iters
        return f + (self.end_factor - f) * min(t, T) / T if T > 0 else f

    def lr_at(self, t: int) -> list[float]:
        f = self._factor(math.floor(min(t, self.total_iters)))
        return [b * f for b in self.base_lrs]

    def _closed_lr_at(self, t: int) -> list[float]:
        return [b * self._factor(t) for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times the ratio of successive factors."""
        self._warn_get_lr()
        t, cur = self.last_epoch, self._current_lrs()
        s, e = self.start_factor, self.end_factor
        if t == 0:
            return [lr * s for lr in cur]
        if self._is_initial or t > self.total_iters:
            return cur
        ratio = 1.0 + (e - s) / (self.total_iters * s + (t - 1) * (e - s))
        return [lr * ratio for lr in cur]


class ConstantLR(LRScheduler):
    """``η factor`` for the first ``total_iters`` steps, then ``η`` (PyTorch's). With
    ``total_iters <= 0`` or not a whole number a run stays at ``η factor``, as PyTorch's (its
    chainable form applies the factor at step 0 and never reaches the step that undoes it),
    while ``step(epoch)`` and a SequentialLR milestone take its closed form, as there."""

    _chainable = True

    def __init__(self, optimizer: Optimizer, factor: float = 1.0 / 3, total_iters: float = 5,
                 last_epoch: int = -1):
        if not 0 <= factor <= 1:
            raise ValueError(f"ConstantLR: factor must be in [0, 1], got {factor}")
        self.factor, self.total_iters = factor, total_iters
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t: int) -> list[float]:
        T = self.total_iters
        f = 1.0 if 0 < T <= t and T == math.floor(T) else self.factor
        return [b * f for b in self.base_lrs]

    def _closed_lr_at(self, t: int) -> list[float]:
        f = self.factor if t < self.total_iters else 1.0
        return [b * f for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times ``factor`` at step 0, divided by it
        at ``total_iters``."""
        self._warn_get_lr()
        t, cur = self.last_epoch, self._current_lrs()
        if t == 0:
            return [lr * self.factor for lr in cur]
        if t != self.total_iters:
            return cur
        if self.factor == 0:
            raise ValueError("ConstantLR.get_lr: the chainable form divides the lr by factor at "
                             "total_iters, got factor 0; use a factor > 0 in a ChainedScheduler "
                             "or SequentialLR")
        return [lr / self.factor for lr in cur]


class PolynomialLR(LRScheduler):
    """``η (1 − min(t, T) / T)^power`` over ``total_iters`` T steps, then 0 (PyTorch's).

    As PyTorch's chainable form: ``total_iters=0`` keeps η; a non-integer T is used as given,
    the lr stopping at its last step ⌊T⌋ (``step(epoch)`` takes PyTorch's closed form).
    """

    _chainable = True

    def __init__(self, optimizer: Optimizer, total_iters: float = 5, power: float = 1.0,
                 last_epoch: int = -1):
        if not total_iters >= 0:
            raise ValueError(f"PolynomialLR: total_iters must be >= 0, got {total_iters}")
        self.total_iters, self.power = total_iters, power
        super().__init__(optimizer, last_epoch)

    def _factor(self, t: float) -> float:
        T = self.total_iters
        return (1.0 - min(t, T) / T) ** self.power if T > 0 else 1.0

    def lr_at(self, t: int) -> list[float]:
        f = self._factor(math.floor(min(t, self.total_iters)))
        return [b * f for b in self.base_lrs]

    def _closed_lr_at(self, t: int) -> list[float]:
        return [b * self._factor(t) for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """PyTorch's chainable form: the current lrs times the ratio of successive factors."""
        self._warn_get_lr()
        t, T, cur = self.last_epoch, self.total_iters, self._current_lrs()
        if self._is_initial or t > T:
            return cur
        ratio = ((1.0 - t / T) / (1.0 - (t - 1) / T)) ** self.power
        return [lr * ratio for lr in cur]


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter): cosine annealing from η to ``eta_min`` over a cycle of
    ``T_0`` steps, restarted at η, each cycle ``T_mult`` times longer (PyTorch's).

    ``step()`` moves one step on; ``step(epoch)`` jumps to ``epoch``, which may be fractional
    (``scheduler.step(epoch + i / iters)`` after batch i of an epoch), and a ``step()`` after
    it moves one on from there, as PyTorch's. The position in the cycle is ``T_cur`` of
    ``T_i`` steps. Resumed with ``last_epoch=k``, it goes on from step k in its true cycle.
    """

    def __init__(self, optimizer: Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1):
        name = "CosineAnnealingWarmRestarts"  # PyTorch's checks: ints, a number eta_min
        _check_positive_int(name, "T_0", T_0)
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"{name}: expected an integer T_mult >= 1, got {T_mult!r}")
        if not isinstance(eta_min, float | int):
            raise ValueError(f"{name}: expected a float or int eta_min, got {eta_min!r} of type "
                             f"{type(eta_min).__name__}")
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        _check_last_epoch("CosineAnnealingWarmRestarts", last_epoch)
        self.T_cur, self.T_i = self.cycle(last_epoch) if last_epoch >= 0 else (-1, self.T_0)
        super().__init__(optimizer, last_epoch)

    def cycle(self, t: int) -> tuple[int, int]:
        """(steps into the current cycle, its length) after ``t`` steps."""
        if self.T_mult == 1:
            return t % self.T_0, self.T_0
        length, start = self.T_0, 0
        while t >= start + length:
            start, length = start + length, length * self.T_mult
        return t - start, length

    def lr_at(self, t: int) -> list[float]:
        cur, length = self.cycle(t)
        return self._lrs(cur, length)

    def _lrs(self, cur: float, length: int) -> list[float]:
        c = (1 + math.cos(math.pi * cur / length)) / 2
        return [self.eta_min + (b - self.eta_min) * c for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """The lrs at ``T_cur`` steps into a cycle of ``T_i`` (PyTorch's)."""
        self._warn_get_lr()
        return self._lrs(self.T_cur, self.T_i)

    def step(self, epoch: float | None = None) -> None:
        """One step on, or (PyTorch's form, without a warning) to ``epoch`` >= 0, possibly
        fractional."""
        self._step_count += 1
        if epoch is None and self.last_epoch < 0:  # the first step: the cycle starts
            self.T_cur, self.T_i = -1, self.T_0
        if epoch is not None:
            self._step_to(epoch)
            return
        self.last_epoch += 1
        self.T_cur += 1
        if self.T_cur >= self.T_i:
            self.T_cur, self.T_i = self.T_cur % self.T_i, self.T_i * self.T_mult
        self._set(self._lrs(self.T_cur, self.T_i))

    def _step_to(self, epoch: float) -> None:
        if not epoch >= 0:
            raise ValueError(f"CosineAnnealingWarmRestarts.step: expected a non-negative "
                             f"epoch, got {epoch}")
        T_0, m = self.T_0, self.T_mult
        if epoch < T_0:
            self.T_cur, self.T_i = epoch, T_0
        elif m == 1:
            self.T_cur, self.T_i = epoch % T_0, T_0
        else:  # PyTorch's closed form for the cycle epoch falls in
            n = int(math.log(epoch / T_0 * (m - 1) + 1, m))
            self.T_cur, self.T_i = epoch - T_0 * (m ** n - 1) / (m - 1), T_0 * m ** n
        self.last_epoch = math.floor(epoch)
        self._set(self._lrs(self.T_cur, self.T_i))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "T_cur" not in state_dict:  # a state saved before the cycle position was kept
            self.T_cur, self.T_i = self.cycle(self.last_epoch)


class _OfSchedules(LRScheduler):
    """A schedule made of others (``_schedulers``): their states nest in its own."""

    _schedulers: list

    @staticmethod
    def _check(name: str, schedulers: Sequence[LRScheduler], optimizer: Optimizer,
               refuse: tuple[type, ...]) -> None:
        for i, s in enumerate(schedulers):
            if isinstance(s, ReduceLROnPlateau):  # PyTorch's ValueError
                raise ValueError(f"{name} does not support ReduceLROnPlateau, whose step needs "
                                 f"the metric, got one at index {i}")
            if not isinstance(s, LRScheduler) or isinstance(s, refuse):
                raise TypeError(f"{name}: expected schedules of a step count (not "
                                f"{', '.join(c.__name__ for c in refuse)}), got "
                                f"{type(s).__name__} at index {i}")
            if s.optimizer is not optimizer:
                raise ValueError(f"{name}: every scheduler must drive the one optimizer, got "
                                 f"{type(s).__name__} at index {i} with another")

    def get_lr(self) -> list[float]:
        raise NotImplementedError(
            f"{type(self).__name__}.get_lr: a composite schedule has no lr formula of its own "
            "(its schedules' steps set the lrs); read get_last_lr()")

    def _chain_step(self) -> None:
        self.step()

    def state_dict(self) -> dict[str, Any]:
        d = super().state_dict()
        d["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return d

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        for s, sd in zip(self._schedulers, state.pop("_schedulers", [])):
            s.load_state_dict(sd)
        super().load_state_dict(state)


class SequentialLR(_OfSchedules):
    """Run ``schedulers`` one after the other, switching at the step counts ``milestones``,
    with PyTorch's steps: the first starts from the groups' initial lrs; at a milestone the
    next jumps to its step 0 (its closed form there, from the initial lrs, or, with none —
    ``MultiplicativeLR``, a ``get_lr()`` subclass — its ``get_lr()`` on the current lrs) and
    then steps by its chainable ``get_lr()``. The schedules must share the optimizer.
    Resumed with ``last_epoch=k`` it replays the sequence to step k + 1 (PyTorch's restarts
    its first schedule instead).
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1):
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR: expected at least one scheduler")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expected {len(schedulers) - 1} milestones for "
                             f"{len(schedulers)} schedulers, got {len(milestones)}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self._check("SequentialLR", schedulers, optimizer, (ReduceLROnPlateau, LinearWarmup))
        _check_last_epoch("SequentialLR", last_epoch)
        _initial_lrs(optimizer, last_epoch)
        self.optimizer = optimizer
        self._schedulers, self._milestones = schedulers, [int(m) for m in milestones]
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._step_count = 0
        self._restart(initial=True)
        for _ in range(last_epoch + 1):  # resumed: the steps taken, then this one's first
            self.step()

    def _restart(self, initial: bool) -> None:
        """Start as when built (here, or nested at a milestone): the groups back at their
        initial lrs (undoing the schedulers' first steps, as PyTorch), step 0's schedule
        started afresh."""
        self._set(self.base_lrs)
        self.last_epoch = 0
        s = self._schedulers[bisect_right(self._milestones, 0)]
        s._restart(initial=True)
        self._last_lr = s.get_last_lr()

    def step(self) -> None:  # type: ignore[override]
        """One step of the schedule whose turn it is (a milestone restarts the next)."""
        self._step_count += 1
        self.last_epoch += 1
        i = bisect_right(self._milestones, self.last_epoch)
        s = self._schedulers[i]
        if i > 0 and self._milestones[i - 1] == self.last_epoch:
            s._restart(initial=False)
        else:
            s._chain_step()
        self._last_lr = s.get_last_lr()


class ChainedScheduler(_OfSchedules):
    """Several schedules at once, each step applied in turn to the lrs the one before set
    (PyTorch's): every schedule steps by its chainable ``get_lr()``, which acts on the groups'
    current lrs (``StepLR`` multiplies them by γ on a decay step, ``CosineAnnealingLR`` scales
    their distance to ``eta_min``...); ``LambdaLR``, ``CosineAnnealingWarmRestarts``,
    ``CyclicLR`` and ``OneCycleLR`` set theirs outright, as PyTorch's. The schedules must share
    one optimizer and have taken the same number of steps; built, the chain keeps the lrs
    the schedules' first steps (taken in turn as they were built) left, as PyTorch's, and
    schedules resumed with ``last_epoch=k`` replay the chain from the initial lrs to their
    step k + 1.
    """

    def __init__(self, schedulers: Sequence[LRScheduler], optimizer: Optimizer | None = None):
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("ChainedScheduler: expected at least one scheduler")
        optimizer = optimizer or schedulers[0].optimizer
        self._check("ChainedScheduler", schedulers, optimizer,
                    (ReduceLROnPlateau, SequentialLR, LinearWarmup))
        epochs = sorted({s.last_epoch for s in schedulers})
        if len(epochs) > 1:
            raise ValueError(f"ChainedScheduler: the schedulers have taken different numbers of "
                             f"steps ({epochs}); build them (or resume them with one "
                             "last_epoch) together")
        self._schedulers, self.optimizer = schedulers, optimizer
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._step_count = 0
        if epochs[0] <= 0:  # just built: each took its first step, in turn (PyTorch's)
            self.last_epoch, self._last_lr = 0, self._current_lrs()
            return
        self._restart(initial=True)
        for _ in range(epochs[0]):  # resumed: replay the steps they have taken
            self.step()

    def _restart(self, initial: bool) -> None:
        """Start as when built (here, or nested at a milestone): the groups at their initial
        lrs, then each schedule's first step in turn."""
        self._set(self.base_lrs)
        self.last_epoch = 0
        for s in self._schedulers:
            s._restart(initial=True)
        self._last_lr = self._current_lrs()

    def step(self) -> None:  # type: ignore[override]
        """One step of every schedule, in order."""
        self._step_count += 1
        self.last_epoch += 1
        for s in self._schedulers:
            s._chain_step()
        self._last_lr = self._current_lrs()


class CyclicLR(LRScheduler):
    """Cyclical learning rates (Smith, 2017), PyTorch's: the lr goes from ``base_lr`` up to
    ``max_lr`` over ``step_size_up`` steps and back over ``step_size_down``, the cycle's height
    scaled by ``mode`` ('triangular': 1; 'triangular2': halved every cycle; 'exp_range':
    ``gamma``^t) or by ``scale_fn`` (of the cycle, or of the step with ``scale_mode``
    'iterations'); momentum (or Adam's β₁) cycles the other way between ``max_momentum`` and
    ``base_momentum``. Meant to be stepped after every batch. ``base_lrs`` are the cycle's
    lower ends, as PyTorch's; resumed with ``last_epoch=k``, it leaves the groups' lr and
    momentum to its first step (k + 1).
    """

    def __init__(self, optimizer: Optimizer, base_lr: float | Sequence[float],
                 max_lr: float | Sequence[float], step_size_up: int = 2000,
                 step_size_down: int | None = None, mode: str = "triangular",
                 gamma: float = 1.0, scale_fn=None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float | Sequence[float] = 0.8,
                 max_momentum: float | Sequence[float] = 0.9, last_epoch: int = -1):
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError(f"CyclicLR: mode must be 'triangular', 'triangular2' or "
                             f"'exp_range' (or give scale_fn), got {mode!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        _check_last_epoch("CyclicLR", last_epoch)
        groups = optimizer.param_groups
        n = len(groups)
        self.cyclic_base_lrs = [float(v) for v in _per_group(base_lr, n, "base_lr")]
        self.max_lrs = [float(v) for v in _per_group(max_lr, n, "max_lr")]
        if last_epoch == -1:  # initial_lr: the group's lr unless it has one (PyTorch's)
            for g, lr in zip(groups, self.cyclic_base_lrs):
                g["lr"] = lr
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size, self.step_ratio = up + down, up / (up + down)
        self.mode, self.gamma, self.scale_fn_custom = mode, gamma, scale_fn
        self.scale_mode = scale_mode if scale_fn is not None else (
            "iterations" if mode == "exp_range" else "cycle")
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            if "momentum" not in groups[0] and "betas" not in groups[0]:
                raise ValueError(f"CyclicLR: {type(optimizer).__name__} has neither momentum "
                                 "nor betas; pass cycle_momentum=False")
            self.use_beta1 = "betas" in groups[0]
            self.base_momentums = _per_group(base_momentum, n, "base_momentum")
            self.max_momentums = _per_group(max_momentum, n, "max_momentum")
            if last_epoch == -1:
                for g, hi, lo in zip(groups, self.max_momentums, self.base_momentums):
                    g["max_momentum"], g["base_momentum"] = hi, lo
        super().__init__(optimizer, last_epoch)
        self.base_lrs = list(self.cyclic_base_lrs)

    def _scale(self, x: float) -> float:
        if self.scale_fn_custom is not None:
            return self.scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma ** x

    def _where(self, t: int) -> tuple[float, float]:
        """(scale factor within the cycle, the height's scale) after ``t`` steps."""
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        f = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)
        return f, self._scale(cycle if self.scale_mode == "cycle" else t)

    def lr_at(self, t: int) -> list[float]:
        f, s = self._where(t)
        return [b + (m - b) * f * s for b, m in zip(self.cyclic_base_lrs, self.max_lrs)]

    def _set(self, lrs: list[float]) -> None:
        """The lrs, and the momenta of the same step."""
        super()._set(lrs)
        if self.cycle_momentum:
            f, s = self._where(self.last_epoch)
            for g, b, m in zip(self.optimizer.param_groups, self.base_momentums,
                               self.max_momentums):
                mom = m - (m - b) * f * s
                if self.use_beta1:
                    g["betas"] = (mom, *g["betas"][1:])
                else:
                    g["momentum"] = mom

    def state_dict(self) -> dict[str, Any]:
        """As PyTorch's: a ``scale_fn`` that is a callable object keeps its state (a copy of
        its attributes); a function is not saved (rebuild it on resume)."""
        state = super().state_dict()
        fn = state.pop("scale_fn_custom", None)
        state["scale_fn_custom"] = (dict(vars(fn)) if fn is not None and hasattr(fn, "__dict__")
                                    and not isinstance(fn, types.FunctionType) else None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load all but ``scale_fn``, which stays the one given when built; a callable object
        gets its saved attributes back (PyTorch's)."""
        state = dict(state_dict)
        saved = state.pop("scale_fn_custom", None)
        super().load_state_dict(state)
        if saved is not None and self.scale_fn_custom is not None:
            vars(self.scale_fn_custom).update(saved)
