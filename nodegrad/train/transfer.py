"""Transfer learning: load pretrained weights, replace the head, freeze, and fine-tune.

A network trained on one task has learned features that are often useful for another; with few
labelled examples of the new task, starting from those features beats learning them again.
The usual recipe, step by step:

1. :func:`load_pretrained` copies weights by name from a nodegrad model, a state dict, or a
   safetensors file (ours, a training checkpoint, or one PyTorch wrote with
   ``safetensors.torch.save_file(model.state_dict(), path)``: equivalent layers have the same
   names and shapes in both libraries). It reports what was loaded, skipped, missing,
   unexpected and of another shape (typically the old head) in a :class:`LoadReport`.
2. :func:`replace_head` / :func:`replace_module` put a fresh layer where the old head was.
3. :func:`freeze` / :func:`unfreeze` switch ``requires_grad`` by name prefix: frozen parameters
   get no gradient and no update.
4. :func:`param_groups` builds optimiser groups with a learning rate per prefix (small for the
   pretrained features, larger for the new head), frozen parameters left out; then
   :func:`nodegrad.train.fit` as usual.

A *prefix* matches a dotted parameter name at component boundaries: ``"conv1"`` matches
``conv1.weight`` and ``conv1.bias`` but not ``conv10.weight``; ``""`` matches everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import _backend as B
from ..errors import ShapeError
from ..io import load
from ..nn import Linear, Module

__all__ = ["LoadReport", "freeze", "load_pretrained", "matches", "param_groups",
           "replace_head", "replace_module", "trainable_summary", "unfreeze"]


# --- names ------------------------------------------------------------------------------------
def matches(name: str, prefix: str) -> bool:
    """Whether dotted ``name`` lies under ``prefix`` (whole components; ``""`` matches all)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _prefixes(prefixes, fn: str) -> list[str]:
    if prefixes is None:
        return [""]
    if isinstance(prefixes, str):
        return [prefixes]
    if not isinstance(prefixes, Iterable):
        raise TypeError(f"{fn}: prefixes must be a name prefix (str), an iterable of them or "
                        f"None, got {type(prefixes).__name__} ({prefixes!r})")
    out = list(prefixes)
    for p in out:
        if not isinstance(p, str):
            raise TypeError(f"{fn}: prefixes must be strings, got {type(p).__name__} ({p!r})")
    return out


# --- loading ----------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, name by name.

    ``loaded``: copied into the model; ``skipped``: in the checkpoint but left out on request
    (``skip``); ``missing``: the model has them, the checkpoint does not (they keep their
    current values); ``unexpected``: the checkpoint has them, the model does not;
    ``mismatched``: ``(name, checkpoint shape, model shape)`` for names in both whose shapes
    differ (not loaded).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when every model tensor not skipped was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        return self._text()

    def _text(self, refused: bool = False) -> str:
        """The report as text; ``refused``: a strict load that copied nothing, whose first
        line says so and counts the names that fit as "would load"."""
        head = f"load_pretrained from {self.source}: " if self.source else "load_pretrained: "
        if refused:
            head += f"nothing loaded; {len(self.loaded)} would load, "
        else:
            head += f"{len(self.loaded)} loaded, "
        lines = [head + f"{len(self.skipped)} skipped, "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape-mismatched"]
        if self.skipped:
            lines.append("  skipped (not loaded on request): " + ", ".join(self.skipped))
        if self.missing:
            lines.append("  missing (model only, left as they were): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append("  unexpected (checkpoint only, ignored): " + ", ".join(self.unexpected))
        for name, theirs, ours in self.mismatched:
            lines.append(f"  shape mismatch (not loaded): {name}: checkpoint {theirs} vs model "
                         f"{ours}")
        return "\n".join(lines)


def _read_source(source, fn: str) -> tuple[dict, str]:
    """The checkpoint's tensors by name (training checkpoints' ``model/`` entries unwrapped)."""
    if isinstance(source, Module):
        return dict(source.state_dict()), type(source).__name__
    if isinstance(source, Mapping):
        return dict(source), "a state dict"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            for name in ("model.safetensors", "checkpoint.safetensors"):
                if (path / name).exists():
                    path = path / name
                    break
            else:
                raise FileNotFoundError(f"{fn}: {path} is a directory without model.safetensors "
                                        "or checkpoint.safetensors")
        state = load(path)
        if any(k.startswith("model/") for k in state):  # a checkpoint written by train.fit
            state = {k[len("model/"):]: v for k, v in state.items() if k.startswith("model/")}
        return state, str(path)
    raise TypeError(f"{fn}: source must be a Module, a mapping of name -> tensor or a path to a "
                    f"safetensors file, got {type(source).__name__}")


def _rename(state: dict, rename, fn: str) -> dict:
    if rename is None:
        return state
    if callable(rename):
        out = {}
        for k, v in state.items():
            new = rename(k)
            if new is not None:
                out[new] = v
        return out
    if not isinstance(rename, Mapping):
        raise TypeError(f"{fn}: rename must be a mapping of prefix -> prefix or a callable "
                        f"name -> name (or None to drop), got {type(rename).__name__}")
    out = {}
    for k, v in state.items():
        for old, new in rename.items():
            if matches(k, old) and old:
                k = new + k[len(old):] if new else k[len(old) + 1:]
                break
        out[k] = v
    return out


def load_pretrained(model: Module, source, *, strict: bool = True,
                    skip: str | Iterable[str] = (), rename=None) -> LoadReport:
    """Copy pretrained weights into ``model`` by name and report what matched.

    ``source``: a Module, a state dict (name -> Tensor or array), a safetensors file (nodegrad's
    or PyTorch's ``safetensors.torch.save_file(m.state_dict(), path)``), a training checkpoint,
    or a run directory holding one. ``skip``: name prefixes not to load (e.g. the old head);
    they count as neither missing nor unexpected. ``rename``: ``{old_prefix: new_prefix}`` or a
    callable ``name -> new name | None`` applied to the checkpoint's names first.

    With ``strict`` (the default) any missing, unexpected or shape-mismatched name raises a
    :class:`~nodegrad.ShapeError` carrying the whole report and nothing is copied; with
    ``strict=False`` every name that fits is copied and the rest is only reported.
    """
    fn = "load_pretrained"
    if not isinstance(model, Module):
        raise TypeError(f"{fn}: model must be a nodegrad Module, got {type(model).__name__}")
    state, where = _read_source(source, fn)
    state = _rename(state, rename, fn)
    skips = _prefixes(skip, fn)
    own = dict(model.state_dict())
    optional = model._optional_keys()  # e.g. num_batches_tracked, absent from old checkpoints
    rep = LoadReport(source=where)
    fit: dict = {}
    # the model's order first (safetensors files store names sorted), then the checkpoint's
    for k in list(own) + [k for k in state if k not in own]:
        skipped = any(matches(k, s) for s in skips)
        if k not in state:
            if not skipped and k not in optional:
                rep.missing.append(k)
        elif skipped:
            rep.skipped.append(k)
        elif k not in own:
            rep.unexpected.append(k)
        elif tuple(state[k].shape) != tuple(own[k].shape):
            rep.mismatched.append((k, tuple(state[k].shape), tuple(own[k].shape)))
        else:
            fit[k] = state[k]
    rep.loaded = list(fit)
    if strict and not rep.ok:
        raise ShapeError(f"{rep._text(refused=True)}\n(strict=True: nothing was loaded; pass "
                         "skip=[...] for the names you mean to leave out, or strict=False to "
                         "load what fits)")
    if fit:
        model.load_state_dict(fit, strict=False)
    return rep


# --- surgery ----------------------------------------------------------------------------------
def _owner(model: Module, name: str, fn: str) -> tuple[Module, str]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{fn}: name must be a non-empty dotted module name, got {name!r}")
    parent, _, leaf = name.rpartition(".")
    try:
        owner = model.get_submodule(parent)
    except AttributeError:
        owner = None
    if owner is None or leaf not in owner._modules:
        names = [n for n, _ in model.named_modules() if n]
        raise KeyError(f"{fn}: {type(model).__name__} has no submodule {name!r}; it has "
                       f"{', '.join(names) or 'none'}")
    return owner, leaf


def replace_module(model: Module, name: str, new: Module) -> Module:
    """Put ``new`` where the submodule ``name`` (dotted, e.g. ``"2"`` or ``"head.fc"``) was;
    returns the old one. Build optimisers after this: they hold the old parameters."""
    if not isinstance(new, Module):
        raise TypeError(f"replace_module: new must be a Module, got {type(new).__name__}")
    owner, leaf = _owner(model, name, "replace_module")
    old = owner._modules[leaf]
    owner._modules[leaf] = new
    new.train(model.training)
    return old


def replace_head(model: Module, num_outputs: int, name: str | None = None,
                 seed: int | None = None) -> Linear:
    """Replace the last :class:`~nodegrad.nn.Linear` (or the Linear named ``name``) by a fresh
    ``Linear(in_features, num_outputs)`` on the same device and dtype; returns the new layer."""
    fn = "replace_head"
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"{fn}: num_outputs must be an int >= 1, got {num_outputs!r}")
    if name is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, Linear) and n]
        if not linears:
            raise ValueError(f"{fn}: {type(model).__name__} has no Linear submodule; name the "
                             "layer to replace with replace_module")
        name = linears[-1]
    owner, leaf = _owner(model, name, fn)
    old = owner._modules[leaf]
    if not isinstance(old, Linear):
        raise TypeError(f"{fn}: {name!r} is a {type(old).__name__}, not a Linear; use "
                        "replace_module")
    w = old.weight
    if seed is not None:
        from ..random import manual_seed
        manual_seed(seed)
    new = Linear(old.in_features, num_outputs, bias=old.bias is not None,
                 device=w.device, dtype=w.dtype)
    replace_module(model, name, new)
    return new


# --- freezing ---------------------------------------------------------------------------------
def _set_requires_grad(model: Module, prefixes, value: bool, fn: str) -> list[str]:
    ps = _prefixes(prefixes, fn)
    named = list(model.named_parameters())
    unused = [p for p in ps if not any(matches(n, p) for n, _ in named)]
    if unused:
        raise KeyError(f"{fn}: no parameter of {type(model).__name__} lies under "
                       f"{', '.join(repr(p) for p in unused)}; names are "
                       f"{', '.join(n for n, _ in named)}")
    done = []
    for n, p in named:
        if any(matches(n, pre) for pre in ps):
            if value and not B.is_float(p.dtype):
                continue
            p.requires_grad = value
            if not value:
                p.grad = None
            done.append(n)
    return done


def freeze(model: Module, prefixes: str | Iterable[str] | None = None) -> list[str]:
    """Stop training the parameters under ``prefixes`` (all when None): ``requires_grad=False``
    and their ``grad`` cleared, so backward computes nothing for them and no optimiser step
    moves them. Returns the names frozen. Batch-norm running statistics still update in
    training mode (as in PyTorch), and ``fit`` puts every layer in training mode: frozen
    batch-norm layers hold their statistics with ``layer.momentum = 0``."""
    return _set_requires_grad(model, prefixes, False, "freeze")


def unfreeze(model: Module, prefixes: str | Iterable[str] | None = None) -> list[str]:
    """Train the parameters under ``prefixes`` (all when None) again; returns their names.
    An optimiser built while they were frozen does not hold them: build a new one."""
    return _set_requires_grad(model, prefixes, True, "unfreeze")


def trainable_summary(model: Module) -> str:
    """One line per top-level prefix: trainable / total parameters (what fine-tuning moves)."""
    rows: dict[str, list[int]] = {}
    for n, p in model.named_parameters():
        top = n.split(".")[0] if "." in n else n
        r = rows.setdefault(top, [0, 0])
        r[1] += p.numel()
        if p.requires_grad:
            r[0] += p.numel()
    width = max((len(k) for k in rows), default=4)
    lines = [f"{k:<{width}}  {t:>8,} / {a:>8,} trainable" for k, (t, a) in rows.items()]
    t = sum(r[0] for r in rows.values())
    a = sum(r[1] for r in rows.values())
    lines.append(f"{'total':<{width}}  {t:>8,} / {a:>8,} trainable")
    return "\n".join(lines)


# --- parameter groups -------------------------------------------------------------------------
def param_groups(model: Module, lrs: Mapping, default_lr: float | None = None,
                 **defaults) -> list[dict]:
    """Optimiser parameter groups with a learning rate (or settings) per name prefix.

    ``lrs`` maps a prefix (or a tuple of prefixes) to a learning rate or to a dict of group
    settings, e.g. ``{"features": 1e-4, "head": {"lr": 1e-2, "weight_decay": 0.0}}``. Each
    trainable parameter joins the group of its longest matching prefix; the others form a last
    group with ``default_lr`` (an error names them when ``default_lr`` is None). Frozen
    parameters are left out; groups left empty are dropped. ``defaults`` go into every group.
    Each group holds ``(name, parameter)`` pairs, so optimiser errors name the parameter, and a
    ``"prefix"`` entry saying which prefix built it. Pass the result to any optimiser:
    ``ng.optim.Adam(param_groups(model, {"linear": 1e-2}, default_lr=1e-4))``.
    """
    fn = "param_groups"
    if not isinstance(lrs, Mapping):
        raise TypeError(f"{fn}: lrs must be a mapping of prefix -> lr (or dict of settings), "
                        f"got {type(lrs).__name__}")
    named = list(model.named_parameters())
    specs = []
    for key, val in lrs.items():
        keys = (key,) if isinstance(key, str) else tuple(key)
        if not keys or not all(isinstance(k, str) for k in keys):
            raise TypeError(f"{fn}: a key must be a prefix string or a tuple of them, got {key!r}")
        if isinstance(val, Mapping):
            settings = dict(val)
            if "lr" not in settings and default_lr is None:
                raise ValueError(f"{fn}: the settings for {key!r} have no 'lr' and default_lr "
                                 "is None")
        elif (isinstance(val, int | float) and not isinstance(val, bool)) or callable(val):
            settings = {"lr": val}
        else:
            raise TypeError(f"{fn}: the value for {key!r} must be a learning rate or a dict of "
                            f"group settings, got {type(val).__name__}")
        unused = [k for k in keys if not any(matches(n, k) for n, _ in named)]
        if unused:
            raise KeyError(f"{fn}: no parameter of {type(model).__name__} lies under "
                           f"{', '.join(repr(k) for k in unused)}; names are "
                           f"{', '.join(n for n, _ in named)}")
        specs.append((keys, settings))
    members: list[list] = [[] for _ in specs]
    rest: list = []
    for n, p in named:
        if not p.requires_grad:
            continue
        best, best_len = None, -1
        for i, (keys, _) in enumerate(specs):
            for k in keys:
                if matches(n, k) and len(k) > best_len:
                    best, best_len = i, len(k)
        (rest if best is None else members[best]).append((n, p))
    groups = []
    for (keys, settings), ms in zip(specs, members):
        if ms:
            g = {**defaults, **({"lr": default_lr} if default_lr is not None else {}),
                 **settings}
            g["params"] = ms
            g["prefix"] = keys[0] if len(keys) == 1 else ",".join(keys)
            groups.append(g)
    if rest:
        if default_lr is None:
            raise ValueError(f"{fn}: the trainable parameters {', '.join(n for n, _ in rest)} "
                             "match no prefix in lrs; give default_lr, a prefix for them, or "
                             "freeze them")
        groups.append({**defaults, "lr": default_lr, "params": rest, "prefix": "(default)"})
    if not groups:
        raise ValueError(f"{fn}: {type(model).__name__} has no trainable parameters (all "
                         "frozen?)")
    return groups
