"""``ng.compile``: PyTorch's ``torch.compile`` name over :func:`nodegrad.jit`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .errors import JitError
from .jit import Jitted, jit
from .nn.module import Module

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BACKENDS = ("inductor", "nodegrad", "eager")
OPTIONS = ("fuse", "max_cache")


class OptimizedModule(Module):
    """A module compiled by :func:`compile`: calls run the original module (``_orig_mod``, as
    PyTorch names it, so its state-dict keys carry the ``_orig_mod.`` prefix) through
    ``ng.jit``; parameters, ``train()``/``eval()`` and the rest are the original's."""

    def __init__(self, mod: Module, jitted: Jitted, fullgraph: bool):
        super().__init__()
        self._orig_mod = mod
        object.__setattr__(self, "_jitted", jitted)  # not a submodule: the same module's call
        object.__setattr__(self, "_fullgraph", fullgraph)

    def forward(self, *args, **kwargs):
        return _call(self._jitted, self._fullgraph, args, kwargs)

    @property
    def training(self) -> bool:
        """The original module's mode, as PyTorch's (``model.eval()`` shows here too)."""
        mods = self.__dict__.get("_modules")
        orig = None if mods is None else mods.get("_orig_mod")
        return self.__dict__.get("_training", True) if orig is None else orig.training

    @training.setter
    def training(self, mode: bool) -> None:
        mods = self.__dict__.get("_modules")
        orig = None if mods is None else mods.get("_orig_mod")
        if orig is None:  # (while being built)
            self.__dict__["_training"] = mode
        else:
            object.__setattr__(orig, "training", mode)

    def __getattr__(self, name: str):
        """The original module's attributes (``model.fc``, ``model.bn1.training``, its own
        methods), as PyTorch's OptimizedModule forwards them."""
        mods = self.__dict__.get("_modules")
        if mods is None or "_orig_mod" not in mods:  # (while being built or copied)
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        if name == "_orig_mod":
            return mods["_orig_mod"]
        return getattr(mods["_orig_mod"], name)

    def __deepcopy__(self, memo):
        """A compiled copy of a deep copy of the original module, with programs of its own, as
        PyTorch's (a teacher or an EMA model made by ``copy.deepcopy`` of a compiled student):
        the jitted call is made anew for the copy, not copied."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k != "_jitted":
                object.__setattr__(new, k, copy.deepcopy(v, memo))
        j = self._jitted
        jitted = jit(new._orig_mod, max_cache=j.max_cache, fuse=j.fuse)
        jitted.graph_breaks = j.graph_breaks
        object.__setattr__(new, "_jitted", jitted)
        return new


def _call(jitted: Jitted, fullgraph: bool, args: tuple, kwargs: dict):
    out = jitted(*args, **kwargs)
    e = jitted.last
    if fullgraph and e is not None and e.program is None and e.diff is None:
        raise JitError(f"compile(fullgraph=True): {jitted.__name__} could not be captured whole "
                       f"and ran eagerly: {e.reason}")
    return out


def compile(model: Callable | None = None, *, fullgraph: bool = False, dynamic: bool | None = None,
            backend: str = "inductor", mode: str | None = None,
            options: dict[str, Any] | None = None, disable: bool = False):
    """``torch.compile``: a module (an :class:`OptimizedModule`) or function whose calls are
    traced and replayed by :func:`nodegrad.jit`, forward and backward (``loss.backward()``
    through a compiled module replays a backward program). Also a decorator, with or without
    arguments.

    ``backend``: ``"inductor"`` (PyTorch's default) or ``"nodegrad"`` compile, ``"eager"`` runs
    the code as written (PyTorch's debugging backend), as does ``disable=True``.
    ``fullgraph=True`` raises :class:`JitError` where a call could not be captured whole (it
    then ran eagerly: a value read into Python, a traced parameter). ``mode`` and ``dynamic``
    are PyTorch's hints and change no result: nodegrad has one compiler, and it traces each new
    input shape once (up to ``options["max_cache"]`` programs, default 32). ``options``:
    ``fuse`` (see :func:`nodegrad.jit`) and ``max_cache``.
    """
    if mode not in MODES:
        raise ValueError(f"compile: mode must be one of {MODES[1:]}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"compile: backend must be one of {BACKENDS}, got {backend!r}")
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"compile: unknown options {unknown}; nodegrad's are {OPTIONS}")
    if dynamic not in (None, True, False):
        raise ValueError(f"compile: dynamic must be None, True or False, got {dynamic!r}")

    def wrap(fn):
        if disable or backend == "eager":
            return fn
        if isinstance(fn, OptimizedModule):
            fn = fn._orig_mod
        jitted = jit(fn, max_cache=opts.get("max_cache", 32), fuse=opts.get("fuse"))
        jitted.graph_breaks = True  # a value read into Python runs eagerly, as a graph break
        if isinstance(fn, Module):
            return OptimizedModule(fn, jitted, fullgraph)
        if not callable(fn):
            raise TypeError(f"compile: expected a module or a function, got "
                            f"{type(fn).__name__}")

        def compiled(*args, **kwargs):
            return _call(jitted, fullgraph, args, kwargs)

        compiled.__name__ = getattr(fn, "__name__", "compiled")
        compiled.__doc__ = getattr(fn, "__doc__", None)
        compiled.__wrapped__ = fn
        compiled.jitted = jitted
        return compiled

    return wrap if model is None else wrap(model)


class _InPlace:
    """What :meth:`Module.compile` puts on a module: its calls go through ``ng.compile`` with
    the arguments given (a deep copy of the module gets a fresh one, which compiles the copy
    on its first call rather than calling the original's programs)."""

    def __init__(self, args: tuple, kwargs: dict, module: Module | None = None):
        self.args, self.kwargs = args, kwargs
        self.owner = module
        self.compiled = None if module is None else compile(module, *args, **kwargs)

    def __call__(self, module: Module, args: tuple, kwargs: dict):
        if self.owner is not module:
            self.owner, self.compiled = module, compile(module, *self.args, **self.kwargs)
        d = module.__dict__
        d["_compiled_call"] = None  # the traced (or eager) call inside runs the module itself
        try:
            return self.compiled.forward(*args, **kwargs)
        finally:
            d["_compiled_call"] = self

    def __deepcopy__(self, memo):
        return _InPlace(copy.deepcopy(self.args, memo), copy.deepcopy(self.kwargs, memo))


def _module_compile(self: Module, *args, **kwargs) -> None:
    """PyTorch's ``Module.compile(...)``: from now on this module's calls go through
    ``ng.compile(self, ...)`` with these arguments (checked now), in place (the module stays
    itself: its parameters, state dict keys, hooks and type); ``backend="eager"`` or
    ``disable=True`` leave it as written."""
    inplace = _InPlace(args, kwargs, self)
    if inplace.compiled is self:  # compile's eager backend or disable: the module as written
        self.__dict__.pop("_compiled_call", None)
    else:
        self.__dict__["_compiled_call"] = inplace


Module.compile = _module_compile

