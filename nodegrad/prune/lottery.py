"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle,
Dziugaite, Roy & Carbin 2019), and the random re-initialisation control.

One IMP run: build the network (θ₀) and train it densely, remembering the weights to rewind to
(θ₀ itself, or θ_k after k optimiser steps: "late rewinding"). Then, each round: prune
``amount_per_round`` of the weights still alive, by smallest trained magnitude (per layer or
globally); reset the survivors to the saved weights, bit for bit; train again. The result after
r rounds keeps (1 - amount)^r of the prunable weights. The control trains the same masks from a
fresh random initialisation: if the ticket beats it, the initial values mattered, not only the
sparse architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _backend as B
from ..errors import ShapeError
from ..nn import Module
from .magnitude import global_magnitude, l1_unstructured
from .mask import SUFFIX, _check_module, apply_masks, get_masks, masked_parameters, remask
from .mask import prunable_weights as _prunable

np = B.np


# --- saving and restoring weights -------------------------------------------------------------
def _mask_keys(model: Module) -> set[str]:
    return {full + SUFFIX for full, _, _ in masked_parameters(model)}


def snapshot(model: Module) -> dict:
    """Host copies of ``model``'s parameters and buffers (masks excluded) to :func:`rewind` to."""
    _check_module(model, "snapshot")
    skip = _mask_keys(model)
    return {k: np.array(v.numpy(), copy=True) for k, v in model.state_dict().items()
            if k not in skip}


def rewind(model: Module, state: Mapping) -> Module:
    """Copy the weights of a :func:`snapshot` back into ``model`` in place, then re-apply its
    masks: kept weights equal the saved ones bit for bit, pruned ones are exactly zero."""
    _check_module(model, "rewind")
    skip = _mask_keys(model)
    own = [k for k in model.state_dict() if k not in skip]
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"rewind: the snapshot does not fit {type(model).__name__} (missing "
                         f"{missing[:3]}, unexpected {extra[:3]})")
    try:
        model.load_state_dict(state, strict=False)  # the masks are the only names left out
    except ShapeError as e:
        raise ShapeError(f"rewind: {e}") from None
    for _, m, n in masked_parameters(model):
        remask(m._parameters[n], m._buffers[n + SUFFIX])
    return model


_restore = rewind  # iterative_magnitude_pruning's argument ``rewind`` shadows the function


# --- what a training function sees ------------------------------------------------------------
@dataclass
class RoundContext:
    """Handed to ``train_fn(model, ctx)`` for each training of an IMP run.

    ``round`` (0 = dense), ``kind`` ("dense", "ticket" or "control"), ``fraction_remaining``
    of the prunable weights, ``start_step`` (the step the weights were rewound to: a schedule
    may skip its first ``start_step`` steps; 0 for the dense run and the controls) and
    ``callbacks`` to pass to :func:`nodegrad.train.fit`. A hand-written loop calls
    ``ctx.on_step(model, step)`` after each optimiser step instead (step 1 is the first).
    """

    round: int
    kind: str
    fraction_remaining: float
    start_step: int = 0
    callbacks: list = field(default_factory=list)
    _hook: Callable | None = field(default=None, repr=False)

    def on_step(self, model: Module, step: int) -> None:
        if self._hook is not None:
            self._hook(model, step)


def _rewind_callback(hook: Callable):
    from ..train.callbacks import Callback

    class RewindPoint(Callback):
        """Saves the weights to rewind to (at the late-rewinding step) during the dense run."""

        def on_train_begin(self, tr):
            hook(tr.model, tr.step)

        def on_batch_end(self, tr, logs):
            hook(tr.model, tr.step)

    return RewindPoint()


# --- results ------------------------------------------------------------------------------
@dataclass
class IMPRound:
    """One round: the ticket's fraction of prunable weights kept, its accuracy and metrics,
    the masks (dotted name -> host bool array; empty for round 0), and the random
    re-initialisation control trained with the same masks (None for round 0 or no control)."""

    round: int
    fraction_remaining: float
    accuracy: float
    metrics: dict
    masks: dict
    control_accuracy: float | None = None
    control_metrics: dict | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.fraction_remaining


@dataclass
class IMPResult:
    """What :func:`iterative_magnitude_pruning` found: one :class:`IMPRound` per round, the
    settings, and ``model``, the last ticket after its training."""

    rounds: list[IMPRound]
    rewind: str | int
    scope: str
    amount_per_round: float
    model: Module | None = None
    layer_amounts: dict = field(default_factory=dict)

    @property
    def fractions(self) -> list[float]:
        return [r.fraction_remaining for r in self.rounds]

    @property
    def accuracies(self) -> list[float]:
        return [r.accuracy for r in self.rounds]

    @property
    def control_accuracies(self) -> list[float | None]:
        return [r.control_accuracy for r in self.rounds]

    def table(self) -> str:
        """The rounds as a Markdown table (weights remaining, ticket and control accuracy)."""
        lines = ["| round | weights remaining | winning ticket | random re-init |",
                 "|---:|---:|---:|---:|"]
        for r in self.rounds:
            ctrl = "—" if r.control_accuracy is None else f"{100 * r.control_accuracy:.1f} %"
            lines.append(f"| {r.round} | {100 * r.fraction_remaining:.1f} % | "
                         f"{100 * r.accuracy:.1f} % | {ctrl} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able summary (masks left out)."""
        return {"rewind": self.rewind, "scope": self.scope,
                "amount_per_round": self.amount_per_round, "layer_amounts": self.layer_amounts,
                "rounds": [{"round": r.round, "fraction_remaining": r.fraction_remaining,
                            "accuracy": r.accuracy, "metrics": r.metrics,
                            "control_accuracy": r.control_accuracy,
                            "control_metrics": r.control_metrics} for r in self.rounds]}


# --- the procedure ------------------------------------------------------------------------
def _accuracy(out: Any, fn: str) -> tuple[float, dict]:
    if isinstance(out, Mapping):
        if "accuracy" not in out:
            raise ValueError(f"{fn}: train_fn returned a dict without 'accuracy' (keys "
                             f"{sorted(out)}); return the test accuracy or a dict holding it")
        return float(out["accuracy"]), {k: (float(v) if isinstance(v, int | float) else v)
                                        for k, v in out.items()}
    if isinstance(out, int | float) and not isinstance(out, bool):
        return float(out), {"accuracy": float(out)}
    raise TypeError(f"{fn}: train_fn must return the accuracy (a float) or a dict with "
                    f"'accuracy', got {type(out).__name__}")


def _fraction(masks: dict) -> float:
    """The share of weights the masks keep (every selected weight is masked after a round)."""
    return sum(int(v.sum()) for v in masks.values()) / max(sum(v.size for v in masks.values()), 1)


def iterative_magnitude_pruning(
        build_model: Callable[[int], Module],
        train_fn: Callable[[Module, RoundContext], Any],
        rounds: int,
        amount_per_round: float = 0.2,
        *,
        rewind: str | int = "init",
        scope: str = "layer",
        parameters: Callable[[Module], list[tuple[Module, str]]] | None = None,
        layer_amounts: Mapping[str, float] | None = None,
        control: bool = True,
        seed: int = 0,
        verbose: bool = False) -> IMPResult:
    """Find winning tickets by iterative magnitude pruning (IMP) with rewinding.

    ``build_model(seed)`` returns a fresh network; ``train_fn(model, ctx)`` trains it in place
    (building its own optimiser: the state must start fresh) and returns the test accuracy or a
    dict with ``"accuracy"``. ``rounds`` pruning rounds follow the dense round 0, each pruning
    ``amount_per_round`` of the remaining prunable weights (``parameters(model)``, default every
    weight matrix and kernel, biases kept) per layer (``scope="layer"``, as Frankle & Carbin) or
    ranked across layers (``scope="global"``); ``layer_amounts`` ({dotted parameter name:
    fraction}) overrides the rate of some layers (Frankle & Carbin prune the output layer at
    half the rate). ``rewind="init"`` resets survivors to θ₀; an int
    k resets them to θ_k, saved after k steps of the dense run (``ctx.callbacks`` /
    ``ctx.on_step`` report the steps). ``control`` also trains each round's masks from a fresh
    initialisation, ``build_model(seed + round)``.
    """
    fn = "iterative_magnitude_pruning"
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"{fn}: rounds must be an int >= 0, got {rounds!r}")
    if isinstance(amount_per_round, bool) or not isinstance(amount_per_round, int | float) \
            or not 0.0 < amount_per_round < 1.0:
        raise ValueError(f"{fn}: amount_per_round must be a fraction in (0, 1), got "
                         f"{amount_per_round!r}")
    if rewind == "init":
        k = 0
    elif isinstance(rewind, int) and not isinstance(rewind, bool) and rewind >= 0:
        k = rewind
    else:
        raise ValueError(f"{fn}: rewind must be 'init' or a step count k >= 0 (late rewinding), "
                         f"got {rewind!r}")
    if scope not in ("layer", "global"):
        raise ValueError(f"{fn}: scope must be 'layer' or 'global', got {scope!r}")
    rates = dict(layer_amounts or {})
    if rates and scope != "layer":
        raise ValueError(f"{fn}: layer_amounts needs scope='layer', got scope={scope!r}")
    for name, a in rates.items():
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0.0 <= a < 1.0:
            raise ValueError(f"{fn}: layer_amounts[{name!r}] must be a fraction in [0, 1), "
                             f"got {a!r}")
    select = parameters if parameters is not None else _prunable
    log = print if verbose else (lambda *a, **kw: None)

    model = build_model(seed)
    _check_module(model, fn)
    selected = select(model)
    names = {id(m): mp for mp, m in model.named_modules()}
    if not selected or any(id(m) not in names for m, _ in selected):
        raise ValueError(f"{fn}: parameters(model) must list (module, name) pairs of modules "
                         "inside the model it was given")
    dotted = [f"{names[id(m)]}.{n}" if names[id(m)] else n for m, n in selected]
    unknown = sorted(set(rates) - set(dotted))
    if unknown:
        raise ValueError(f"{fn}: layer_amounts names {unknown}, which are not among the pruned "
                         f"parameters {dotted}")
    saved: dict = {}

    def keep(m: Module, step: int) -> None:
        if step == k and "w" not in saved:
            saved["w"] = snapshot(m)

    keep(model, 0)
    ctx = RoundContext(0, "dense", 1.0, 0, [_rewind_callback(keep)] if k else [], keep)
    acc, metrics = _accuracy(train_fn(model, ctx), fn)
    if "w" not in saved:
        raise ValueError(f"{fn}: rewind={k}, but the dense run never reported step {k}: pass "
                         "ctx.callbacks to train.fit, or call ctx.on_step(model, step) after each "
                         "optimiser step (and train for at least k steps)")
    log(f"round 0: 100.0 % of weights, accuracy {100 * acc:.1f} %")
    out = [IMPRound(0, 1.0, acc, metrics, {})]
    for r in range(1, rounds + 1):
        if scope == "global":
            global_magnitude(selected, amount_per_round)
        else:
            for (m, n), name in zip(selected, dotted):
                l1_unstructured(m, n, rates.get(name, amount_per_round))
        masks = {k_: v for k_, v in get_masks(model).items() if k_ in dotted}
        frac = _fraction(masks)
        _restore(model, saved["w"])
        ctx = RoundContext(r, "ticket", frac, k)
        acc, metrics = _accuracy(train_fn(model, ctx), fn)
        rnd = IMPRound(r, frac, acc, metrics, masks)
        if control:
            fresh = build_model(seed + r)
            apply_masks(fresh, masks)
            ctx = RoundContext(r, "control", frac, 0)
            rnd.control_accuracy, rnd.control_metrics = _accuracy(train_fn(fresh, ctx), fn)
        log(f"round {r}: {100 * frac:.1f} % of weights, ticket {100 * acc:.1f} %"
            + ("" if rnd.control_accuracy is None
               else f", random re-init {100 * rnd.control_accuracy:.1f} %"))
        out.append(rnd)
    return IMPResult(out, rewind, scope, float(amount_per_round), model, rates)


def expected_fractions(rounds: int, amount_per_round: float, sizes: list[int] | None = None,
                       ) -> list[float]:
    """The fractions of weights an IMP run keeps after 0..rounds rounds: (1 - amount)^r, or with
    layer ``sizes`` (layer-wise pruning) the exact counts after rounding in every layer."""
    if sizes is None:
        return [(1.0 - amount_per_round) ** r for r in range(rounds + 1)]
    alive = list(sizes)
    out = [1.0]
    for _ in range(rounds):
        alive = [a - int(round(amount_per_round * a)) for a in alive]
        out.append(sum(alive) / sum(sizes))
    return out


__all__ = ["IMPResult", "IMPRound", "RoundContext", "expected_fractions",
           "iterative_magnitude_pruning", "rewind", "snapshot"]
