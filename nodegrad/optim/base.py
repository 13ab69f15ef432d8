"""The Optimizer base: parameter groups, schedules, state, and one vectorised update per group.

An algorithm writes two things, once, against the array module ``xp``: :meth:`Optimizer.state_init`
(its per-element state and initial values) and :meth:`Optimizer.update` (one step on flat
arrays). The base owns everything else: parameter groups, hyperparameters that may be callables
of the step, the gradient transforms every algorithm shares (``maximize``, L2 or decoupled weight
decay), per-parameter step counts, ``zero_grad`` and ``state_dict``.

Vectorised path: at construction the parameters of a group that share a device and dtype are
copied into one contiguous buffer and each parameter's array becomes a view of it. A step
gathers the gradients with one ``concatenate`` (none at all after
``zero_grad(set_to_none=False)``, whose gradients are views of a flat buffer too) and runs the
update as a handful of array calls over the whole group, however many tensors it holds.
``flat=False`` leaves every parameter's array where it is and updates tensor by tensor.

Fused path: an algorithm that also writes :meth:`Optimizer.fused_args` (Adam, AdamW, SGD,
RMSprop, Adagrad) runs its step as compiled kernels instead (numba on the CPU, CuPy on CUDA;
:mod:`._fused`): one pass that reads p, g and the state and writes p and the state, once per
large gradient array (read where it is, no gather) or stretch of small ones, with no scratch
buffers, and the same bits as the NumPy update. ``fused=None`` (the default) uses it wherever a
kernel is available, except for small buckets on the CPU before numba is imported
(:func:`._fused.auto`).

Hooks, PyTorch's: step pre- and post-hooks per optimiser and global ones
(:func:`register_optimizer_step_pre_hook`), state-dict and load-state-dict hooks. They run once
per call of ``step()``, also for a subclass with its own ``step`` (L-BFGS), and under
:mod:`nodegrad.jit` on every replay of the step, at its place in the program. With no hook
registered a step pays one check.
"""

from __future__ import annotations

import copy
import functools
import numbers
import operator
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .. import _backend as B
from .._backend import backend_of, is_array
from ..autodiff import RemovableHandle, effect, enable_grad, modes, user_stacklevel
from ..errors import BackendUnavailable, GradError, ShapeError
from ..ops.index import refresh_views
from ..tensor import Tensor
from . import _fused

_NOT_HYPER = ("params", "param_names")
_HOOK_LISTS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks",
               "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
               "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks")
#: hooks every optimiser runs around its step (PyTorch's ``register_optimizer_step_*_hook``)
_global_step_pre_hooks: list[Callable] = []
_global_step_post_hooks: list[Callable] = []
#: a step hook with this attribute set never reads or writes ``.grad``: a jit replay of a lowered
#: step (whose gradients never pass through ``.grad``) runs it without putting them there
GRAD_FREE = "_optimizer_hook_grad_free"
#: gradients with fewer elements go to the fused kernel gathered with their small neighbours
SMALL_GRADIENT = 1 << 14


class _RequiredParameter:
    """The marker of a hyperparameter with no default (``lr=required`` in a subclass's
    signature, PyTorch's): every parameter group must then give its own value."""

    def __repr__(self) -> str:
        return "<required parameter>"


#: PyTorch's ``torch.optim.optimizer.required``
required = _RequiredParameter()


class ParamList(list):
    """A parameter group's ``params``: a list that counts its in-place edits (``edits``), so
    that a step follows ``group["params"][i] = q`` (the same list, the same length) by
    comparing one number (see :meth:`Optimizer._follow_params`)."""

    edits = 0  # on the instance from its first edit (unpickling appends before it is set)


def _counted(name: str) -> Callable:
    edit = getattr(list, name)

    def counted(self, *args, **kwargs):
        self.edits += 1
        return edit(self, *args, **kwargs)

    counted.__name__ = counted.__qualname__ = name
    return counted


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend",
              "insert", "pop", "remove", "clear", "sort", "reverse"):
    setattr(ParamList, _name, _counted(_name))


def _follow_views(p: Tensor) -> None:
    """After ``p``'s array moved into a bucket's buffer: the views taken of ``p`` before (an
    ``expand`` a distribution keeps, a slice, a ``detach()``) become views of the buffer, so
    they see every step, as views of a PyTorch parameter do."""
    cell = p._version
    if cell is not None and len(cell) > 1:
        refresh_views(p, cell[1], moved=True)


class _Bucket:
    """Parameters of one group on one device with one dtype, stored in one flat array."""

    __slots__ = ("params", "pos", "backend", "xp", "shapes", "offsets", "flat", "views", "grad",
                 "gviews", "work", "tmps", "arrays", "scalars", "uniform", "fused", "pending",
                 "loaded", "swork", "plans", "kargs", "cplx", "pshapes", "cviews", "half")

    def __init__(self, params: list, pos: list[int], scalar_init: dict):
        p0 = params[0]._data
        self.params, self.pos = params, pos
        self.backend = be = backend_of(p0)
        self.xp = xp = be.xp
        # complex parameters live in a real buffer, each the interleaved (re, im) pairs of
        # PyTorch's view_as_real: ``shapes`` and ``offsets`` are the real ones, ``pshapes``
        # the parameters' own, and every elementwise update runs on the real numbers unchanged
        self.cplx = p0.dtype if p0.dtype.kind == "c" else None
        self.pshapes = [p._data.shape for p in params]
        two = () if self.cplx is None else (2,)
        self.shapes = [shape + two for shape in self.pshapes]
        self.offsets = [0]
        for p in params:
            self.offsets.append(self.offsets[-1] + p._data.size * (1 + len(two)))
        with be.scope():
            if len(params) == 1 and p0.flags.c_contiguous:
                self.flat = p0.reshape(-1)  # a lone contiguous tensor is its own flat buffer
                if self.cplx is not None:
                    self.flat = self.flat.view(real_dtype(self.cplx))
                self.views = [p0]
            else:
                dt = p0.dtype if self.cplx is None else real_dtype(self.cplx)
                self.flat = xp.empty(self.offsets[-1], dt)
                self.views = []
                for p, lo, hi, shape in zip(params, self.offsets, self.offsets[1:],
                                            self.pshapes):
                    part = self.flat[lo:hi]
                    if self.cplx is not None:
                        part = part.view(self.cplx)
                    part[...] = p._data.reshape(-1)
                    p._data = part.reshape(shape)
                    self.views.append(p._data)
                    _follow_views(p)
        self.grad = self.gviews = self.cviews = self.work = None
        self.tmps: list = []
        self.arrays: dict = {}
        fresh = {"step": 0, **scalar_init}
        self.scalars = [fresh] * len(params)  # one dict per parameter, shared while in lockstep
        self.uniform = True
        self.fused = False  # True when this bucket steps with a fused kernel
        self.half = False  # True when it steps with Optimizer.update_half (16-bit floats)
        self.pending = False  # fused=None, left to NumPy until numba is imported (see _fused.auto)
        self.loaded = False  # its kernels are loaded (checked on the first fused step)
        self.swork = None
        self.plans: dict = {}  # (s, e, state names) -> the fused path's calls (see calls_of)
        # the fused path's last (key, scalars, flags) and its kernel (name, function)
        self.kargs: tuple = (None, None, 0, None, None)

    def small_work(self):
        """Scratch for the fused path's gathered small gradients (all of them fit, at most)."""
        if self.swork is None:
            sizes = [hi - lo for lo, hi in zip(self.offsets, self.offsets[1:])]
            n = sum(x for x in sizes if x < SMALL_GRADIENT)
            with self.backend.scope():
                self.swork = self.xp.empty(n, self.flat.dtype)
        return self.swork

    def calls_of(self, s: int, e: int, names: tuple) -> list:
        """Parameters s..e-1 as the fused path's kernel calls, ``(i, j, work, arrays)``: one per
        large gradient (read where it is; ``work`` None), one per stretch of small ones
        (gathered into ``work``: a call costs more), ``arrays`` the parameters' and the state
        ``names``' views (None: the parameters) that the call updates. Fixed by the offsets
        and the state arrays, so worked out once (:meth:`ensure` forgets them)."""
        key = (s, e, names)
        calls = self.plans.get(key)
        if calls is None:
            off, i, calls = self.offsets, s, []
            state = [self.flat if n is None else self.arrays[n] for n in names]
            while i < e:
                j = i + 1
                if off[j] - off[i] < SMALL_GRADIENT:
                    while j < e and off[j + 1] - off[j] < SMALL_GRADIENT:
                        j += 1
                lo, hi = off[i], off[j]
                work = self.small_work()[:hi - lo] if j - i > 1 else None
                calls.append((i, j, work, (self.flat[lo:hi],) + tuple(a[lo:hi] for a in state)))
                i = j
            self.plans[key] = calls
        return calls

    def tmp(self, k: int):
        """The k-th scratch buffer (flat, allocated once)."""
        while len(self.tmps) <= k:
            self.tmps.append(self.xp.empty_like(self.flat))
        return self.tmps[k]

    def ensure(self, init: dict) -> None:
        """Allocate the state arrays named in ``init`` that do not exist yet."""
        for name, value in init.items():
            if name not in self.arrays:
                with self.backend.scope():
                    self.arrays[name] = self.xp.full(self.flat.shape, value, self.flat.dtype)
                self.plans.clear()

    def merge_scalars(self) -> None:
        """Let neighbouring parameters with equal scalar state share one dict (one update)."""
        s = self.scalars
        for i in range(1, len(s)):
            if s[i] is not s[i - 1] and s[i] == s[i - 1]:
                s[i] = s[i - 1]
        self.uniform = all(x is s[0] for x in s)


def real_dtype(dt):
    """The float dtype of a complex dtype's width (float64 for complex128)."""
    return B.np.dtype(B.np.float64 if dt.itemsize == 16 else B.np.float32)


class _State:
    """What :meth:`Optimizer.update` sees besides the arrays: step ``t``, state, scratch, scalars.

    ``st["exp_avg"]`` is a state array, ``st.tmp(k)`` a scratch array (both flat, the same length
    as ``p``); ``st.scalars`` holds per-parameter numbers such as NAdam's running product.
    """

    __slots__ = ("_b", "_sl", "t", "scalars")

    def __init__(self, b: _Bucket, sl: slice, scalars: dict):
        self._b, self._sl, self.scalars = b, sl, scalars
        self.t = scalars["step"]

    def __getitem__(self, name: str):
        return self._b.arrays[name][self._sl]

    def tmp(self, k: int = 0):
        return self._b.tmp(k)[self._sl]

    @property
    def shape(self) -> tuple | None:
        """The shape of the one parameter these flat arrays hold (an update that needs it, as
        Muon's matrix iteration, runs one parameter at a time: ``flat=False``); None when they
        span several parameters."""
        b, sl = self._b, self._sl
        for lo, hi, shape in zip(b.offsets, b.offsets[1:], b.shapes):
            if lo == sl.start and hi == sl.stop:
                return shape
        return None


def _check_eps(name: str, group: dict) -> None:
    """Warn when a group's ``eps`` rounds to 0 in a parameter's dtype (Adam's 1e-8 in float16):
    the update then divides by zero wherever a second moment underflows, and the parameter
    turns inf or NaN, in PyTorch as here."""
    eps = group.get("eps")
    if not isinstance(eps, float | int) or isinstance(eps, bool) or eps <= 0:
        return
    for p in group["params"]:
        if B.np.dtype(p.dtype).type(eps) == 0:
            warnings.warn(f"{name}: eps={eps:g} is 0 in {p.dtype}, so the update divides by "
                          f"zero where a gradient's square underflows and the parameter turns "
                          f"inf or NaN; pass eps=1e-4 (usual for {p.dtype}) or keep float32 "
                          "parameters", RuntimeWarning, stacklevel=user_stacklevel())
            return


class Optimizer:
    """Base of every optimiser: parameter groups, step counter, state and the shared transforms.

    ``params`` is an iterable of tensors, of ``(name, tensor)`` pairs (names appear in errors), or
    of dicts (parameter groups) with a ``"params"`` entry and per-group hyperparameters that
    override ``defaults``. A hyperparameter may be a callable of the step ``t`` (1 for the first
    update), e.g. ``lr=lambda t: 0.1 / t ** 0.5``. Parameters whose ``grad`` is None are skipped,
    as in PyTorch, unless ``strict=True``, which raises an error naming the parameter.

    ``fused`` (for the algorithms with a fused kernel): None runs each step as one compiled
    kernel where one is available for the parameters' device and dtype (numba installed on the
    CPU, CuPy on CUDA; float32/float64), on the CPU only for buckets of
    ``_fused.AUTO_MIN_SIZE`` elements or more until numba is imported, and the NumPy update
    elsewhere; True requires the kernel (an error says what is missing); False always runs the
    NumPy update. Both give the same bits.

    PyTorch's implementation keywords, where its optimiser has them: ``foreach`` (None, True or
    False) picks between PyTorch's loop and multi-tensor kernels, which give the same numbers;
    here every step is already vectorised over the group, so it changes nothing (True with
    ``fused=True`` is an error, as in PyTorch). ``capturable`` keeps PyTorch's state on the
    device for CUDA graph capture; nodegrad records no CUDA graphs, so True is accepted and
    changes nothing. ``differentiable=True`` asks for a step that autograd records (for
    meta-learning through the update); the step here updates the parameters in place outside
    autograd, so it raises NotImplementedError: write the update out of place with tensor ops
    (``nodegrad.func.functional_call`` runs a model on the updated tensors).
    """

    #: per-parameter numbers besides ``step`` and their initial values (e.g. NAdam's mu product)
    scalar_init: dict[str, float] = {}
    #: hyperparameters that PyTorch's optimiser of this name does not have (so its state dicts
    #: lack them), with the value its update implies; ``load_state_dict`` fills them in
    torch_implied: dict[str, Any] = {}
    #: whether complex parameters are accepted: an elementwise update steps a complex parameter
    #: as PyTorch does, as its real view (``view_as_real``: real and imaginary parts updated as
    #: two real numbers), with complex state; False where PyTorch refuses them
    supports_complex: bool = True
    #: how PyTorch's optimiser of this name keeps the per-parameter ``step`` in its state dict:
    #: "tensor" (a 0-d float32 tensor), "int" (SparseAdam's), or None (not at all: SGD, Muon)
    step_form: str | None = "tensor"
    #: whether PyTorch's optimiser of this name makes every parameter's state at construction
    #: (Adagrad's ``step`` 0 and ``sum``), so its state dict has them before the first step
    state_at_init: bool = False

    def __init__(self, params: Iterable, defaults: dict[str, Any], *, strict: bool = False,
                 flat: bool = True, fused: bool | None = None, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False):
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of tensors or dicts, got a Tensor; "
                            "wrap it in a list")
        if fused not in (None, True, False):
            raise TypeError(f"{type(self).__name__}: fused must be None, True or False, got "
                            f"{fused!r}")
        if fused and type(self).fused_args is Optimizer.fused_args:
            raise TypeError(f"{type(self).__name__} has no fused kernel; leave fused=None")
        if foreach is not None or capturable is not False or differentiable is not False:
            _check_forms(type(self).__name__, fused, foreach, capturable, differentiable)
        self.defaults = dict(defaults)
        self.strict = strict
        self.flat = flat
        self.fused = fused
        self.foreach, self.capturable, self.differentiable = foreach, capturable, differentiable
        self.step_count = 0
        self._user_state: dict = {}  # entries a subclass's own step keeps (see _StateDict)
        self._extra: dict = {}  # names a wrapper adds to a live entry (timm's Lookahead)
        self._init_hooks()
        self.param_groups: list[dict] = []
        self._buckets: list[list[_Bucket]] = []
        groups = [params] if isinstance(params, dict) else list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    #: no hooks on a subclass that never calls ``Optimizer.__init__`` (a wrapper such as
    #: Lookahead, which keeps the optimiser it wraps), whose own step still runs the wrappers
    _optimizer_step_pre_hooks = _optimizer_step_post_hooks = ()
    _optimizer_state_dict_pre_hooks = _optimizer_state_dict_post_hooks = ()
    _optimizer_load_state_dict_pre_hooks = _optimizer_load_state_dict_post_hooks = ()
    #: set while the step hooks run, so a ``step`` that calls ``super().step()`` runs them once
    _in_step_hooks = False
    _in_state_dict_hooks = False
    _in_load_state_dict_hooks = False

    def _init_hooks(self) -> None:
        """The per-optimizer hook lists, empty (PyTorch's names, each in run order)."""
        self._optimizer_step_pre_hooks: list[Callable] = []
        self._optimizer_step_post_hooks: list[Callable] = []
        self._optimizer_state_dict_pre_hooks: list[Callable] = []
        self._optimizer_state_dict_post_hooks: list[Callable] = []
        self._optimizer_load_state_dict_pre_hooks: list[Callable] = []
        self._optimizer_load_state_dict_post_hooks: list[Callable] = []

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass's own ``step``, ``state_dict`` and ``load_state_dict`` run the hooks too
        (PyTorch patches ``step`` likewise), once per call however they call each other."""
        super().__init_subclass__(**kwargs)
        for name, wrap in (("step", _with_step_hooks), ("state_dict", _with_state_dict_hooks),
                           ("load_state_dict", _with_load_state_dict_hooks)):
            fn = cls.__dict__.get(name)
            if not callable(fn) or getattr(fn, "_runs_hooks", False):
                continue
            if getattr(fn, "__code__", None) is _EFFECT_CODE:  # @effect: hooks inside it
                setattr(cls, name, effect(wrap(fn.__wrapped__)))
            else:
                setattr(cls, name, wrap(fn))

    # --- hooks (PyTorch's) ------------------------------------------------------------------
    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs)`` before each ``step`` (``args`` starts with the
        optimizer, as in PyTorch); it returns None or ``(new_args, new_kwargs)`` for the step."""
        self._optimizer_step_pre_hooks.append(hook)
        return RemovableHandle(self._optimizer_step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(optimizer, args, kwargs) -> None`` after each ``step``."""
        self._optimizer_step_post_hooks.append(hook)
        return RemovableHandle(self._optimizer_step_post_hooks, hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False
                                     ) -> RemovableHandle:
        """``hook(optimizer) -> None`` before :meth:`state_dict` collects the state."""
        return _add(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False
                                      ) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` after :meth:`state_dict`; a returned dict replaces
        the result."""
        return _add(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False
                                          ) -> RemovableHandle:
        """``hook(optimizer, state_dict)`` before :meth:`load_state_dict` (on a shallow copy of
        the argument); a returned dict is loaded instead."""
        return _add(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False
                                           ) -> RemovableHandle:
        """``hook(optimizer) -> None`` after :meth:`load_state_dict`."""
        return _add(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    def _has_step_hooks(self) -> bool:
        return bool(self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _global_step_pre_hooks or _global_step_post_hooks)

    def _run_step_hooks(self, step: Callable, args: tuple, kwargs: dict):
        """``step(*args, **kwargs)`` between the pre-hooks (global ones first) and the
        post-hooks (global ones last), PyTorch's order; ``args[0]`` is the optimizer."""
        self._in_step_hooks = True
        try:
            for hook in (*_global_step_pre_hooks, *self._optimizer_step_pre_hooks):
                r = hook(self, args, kwargs)
                if r is not None:
                    if not (isinstance(r, tuple) and len(r) == 2):
                        raise RuntimeError(f"{type(self).__name__}.step: a step pre-hook must "
                                           "return None or a tuple (new_args, new_kwargs), got "
                                           f"{r!r}")
                    args, kwargs = r
            out = step(*args, **kwargs)
            for hook in (*self._optimizer_step_post_hooks, *_global_step_post_hooks):
                hook(self, args, kwargs)
            return out
        finally:
            self._in_step_hooks = False

    def __getstate__(self) -> dict:
        """For ``copy.deepcopy`` and pickle: the flat buffers are rebuilt on the other side (a
        copied view would not be a view of the copied buffer), the per-parameter state goes
        as entries, and the hooks stay behind (as PyTorch's do)."""
        d = {k: v for k, v in self.__dict__.items()
             if k != "_buckets" and k not in _HOOK_LISTS}
        if type(self)._extract is Optimizer._extract and type(self)._install is Optimizer._install:
            d["_entries"] = [self._extract(gi) for gi in range(len(self.param_groups))]
        return d

    def __setstate__(self, state: dict) -> None:
        if set(state) == {"state", "param_groups"}:
            return  # PyTorch's call at the end of load_state_dict: the load put them in place
        entries = state.pop("_entries", None)
        self.__dict__.update(state)
        for name in _HOOK_LISTS:
            setattr(self, name, [])
        self._buckets = [self._make_buckets(g) for g in self.param_groups]
        for gi, e in enumerate(entries or ()):
            self._install(gi, e)

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k not in _NOT_HYPER]
        return "\n".join(lines) + "\n)"

    # --- what an algorithm writes ---------------------------------------------------------
    def state_init(self, h: dict) -> dict[str, float]:
        """The per-element state arrays under hyperparameters ``h``: name -> initial value."""
        return {}

    def update(self, xp, p, g, st: _State, h: dict) -> None:
        """One step in place on the flat parameter array ``p`` given its gradient ``g`` (read only).

        ``g`` already has ``maximize`` and weight decay applied; ``st.t`` is this parameter's step
        (1 on its first update). Use ``out=`` and ``st.tmp(k)`` so nothing is allocated.
        """
        raise NotImplementedError

    #: ``update_half(xp, p, g, st, h, decoupled)``: :meth:`update` for float16 and bfloat16
    #: parameters with PyTorch's roundings (each tensor operation of its step computed in
    #: float32 and rounded once to the parameters' dtype), from the raw gradient ``g`` (the
    #: transforms are its own); None: :meth:`update` steps them too
    update_half: Callable | None = None

    def fused_args(self, st: _State, h: dict) -> tuple[str, tuple, tuple, tuple]:
        """The fused form of :meth:`update`: the kernel's name in :mod:`._fused`, the state
        arrays it updates (names; None for an unused slot), its scalars (cast to the parameters'
        dtype) and its options (bools, flag bits 8, 16, ... in this order)."""
        raise NotImplementedError

    # --- parameter groups -------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters (its own hyperparameters override the defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        ps = group["params"]
        if isinstance(ps, set | frozenset):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs; "
                            "pass a list instead")
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        named = [isinstance(p, tuple) for p in ps]
        if any(named):
            if not all(named):
                raise ValueError("all optimizer params should be with/without names (pairs "
                                 f"(name, tensor)); some param names are missing: "
                                 f"{named.count(False)} of {len(ps)} have none")
            group.setdefault("param_names", [n for n, _ in ps])
            ps = [p for _, p in ps]
        if any(("param_names" in group) != ("param_names" in g) for g in self.param_groups):
            with_ = "with" if "param_names" in group else "without"
            raise ValueError("all optimizer param groups should be with/without names; cannot "
                             f"add a param group {with_} names to this optimizer")
        ps = group["params"] = ParamList(ps)
        # PyTorch's: the caller's dict keeps the list, so a generator it held (model.parameters())
        # is not spent for an optimiser rebuilt from the same dicts (a resume)
        param_group["params"] = ps
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(ps):
            where = _describe(group, len(self.param_groups), i, p)
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but {where} is a "
                                f"{type(p).__name__}")
            if getattr(p, "uninitialized", False):
                raise ValueError(f"{type(self).__name__}: {where} is an uninitialised parameter "
                                 "of a lazy layer; run one batch through the model (a dry "
                                 "run) before creating the optimiser")
            if p.node is not None:
                raise ValueError(f"can't optimize a non-leaf Tensor: {where} was computed by "
                                 f"'{p.node.name()}'; pass the leaf it was computed from")
            if p.dtype.kind == "c" and not type(self).supports_complex:
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters: "
                                   f"{where} has dtype {p.dtype}; optimise its real and "
                                   "imaginary parts as real parameters (view_as_real) or use "
                                   "an elementwise optimiser (Adam, SGD, ...)")
            if not B.is_inexact(p.dtype):
                raise TypeError(f"{where} has dtype {p.dtype}; only floating and complex "
                                "tensors can be optimised")
            if id(p) in seen:
                raise ValueError(f"{where} appears more than once in the optimizer's groups")
            seen.add(id(p))
        for k, v in self.defaults.items():
            if v is required and k not in group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {k}")
            group.setdefault(k, v)
        _check_eps(type(self).__name__, group)
        self.param_groups.append(group)
        self._buckets.append(self._make_buckets(group))

    def _make_buckets(self, group: dict) -> list[_Bucket]:
        """Split a group by device, dtype and requires_grad; re-home each part into one buffer."""
        ps = group["params"]
        if not self.flat:
            buckets = [_Bucket([p], [i], self.scalar_init) for i, p in enumerate(ps)]
        else:
            parts: dict = {}
            for i, p in enumerate(ps):
                key = (backend_of(p._data), p.dtype, bool(p.requires_grad))
                parts.setdefault(key, []).append(i)
            buckets = [_Bucket([ps[i] for i in pos], pos, self.scalar_init)
                       for pos in parts.values()]
        if type(self).update_half is not None:
            for b in buckets:
                b.half = b.cplx is None and b.flat.dtype.itemsize == 2
        if self.fused is not False and type(self).fused_args is not Optimizer.fused_args:
            for b in buckets:
                b.fused = (_fused.available(b.backend, b.flat.dtype) if self.fused else
                           _fused.auto(b.backend, b.flat.dtype, b.flat.size))
                b.pending = not b.fused and self.fused is None and _fused.available(
                    b.backend, b.flat.dtype)
                if self.fused and not b.fused:
                    raise BackendUnavailable(
                        f"{type(self).__name__}(fused=True) on {b.backend.name}: "
                        f"{_fused.missing(b.backend, b.flat.dtype)} (fused=None falls back to "
                        "the NumPy update where no kernel is available)")
        return buckets

    def _hyper(self, group: dict, t: int) -> dict:
        """The group's hyperparameters at step ``t``: schedules (callables of the step)
        evaluated, one-element tensors and arrays (PyTorch's tensor ``lr``, read afresh each
        step so that changing them in place takes effect) as Python numbers."""
        h = dict(group)  # copied in C; the rest only where a value is not a plain one
        for k in _NOT_HYPER:
            h.pop(k, None)
        if _PLAIN.issuperset(map(type, h.values())):
            return h
        return {k: _plain(self, k, v, t) for k, v in h.items()}

    # --- the step ---------------------------------------------------------------------------
    @effect  # under nodegrad.jit the whole update is one replayed step (hooks included)
    def step(self, closure: Callable[[], Any] | None = None):
        """Update every parameter that has a gradient; returns ``closure()`` when one is given.
        The step hooks run around it (:meth:`register_step_pre_hook`)."""
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _global_step_pre_hooks or _global_step_post_hooks) and not self._in_step_hooks:
            return self._run_step_hooks(_STEP, (self,) if closure is None else (self, closure),
                                        {})
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        B.note_eager_work()  # eager training long enough imports numba (its loops, kernels)
        self._step(None)
        return loss

    def _step(self, grads: list | None) -> None:
        """One update; ``grads[gi][k]`` is the gradient array of group gi's k-th parameter (None:
        it has none), or ``grads`` is None to read every ``p.grad``."""
        self.step_count += 1
        for gi, group in enumerate(self.param_groups):
            self._sync(gi)
            h = self._hyper(group, self.step_count)
            given = None if grads is None else grads[gi]
            for b in self._buckets[gi]:
                if b.backend.device_id is None:  # the CPU's scope is a no-op: no context
                    self._step_bucket(b, h, gi, given)
                    continue
                with b.backend.scope():
                    self._step_bucket(b, h, gi, given)

    def _jit_lowering(self, fn: Callable, args: tuple, kwargs: dict) -> tuple | None:
        """How :mod:`nodegrad.jit` may replay a recorded call of ``step`` or ``zero_grad``
        without going through ``p.grad``: ``("step", params, bind)``, where ``bind(index)`` is a
        function of the gradient arrays (``params[k]``'s is argument ``index[k]``; None: no
        gradient) that steps as ``step()`` would with those gradients in ``.grad``;
        ``("zero_grad", params)`` for a ``zero_grad()`` that sets them to None; else None."""
        params = [p for g in self.param_groups for p in g["params"]]
        if fn is _STEP and type(self).step is Optimizer.step and not args and not kwargs:
            return ("step", params, self._bind_step)
        if fn is _ZERO_GRAD and type(self).zero_grad is Optimizer.zero_grad:
            set_to_none = kwargs.get("set_to_none", args[0] if args else True)
            if set_to_none and len(args) + len(kwargs) <= 1:
                return ("zero_grad", params)
        return None

    def _bind_step(self, index: list) -> Callable:
        """The lowered step of :meth:`_jit_lowering` for the argument positions ``index``:
        :meth:`_step` on the given arrays, or, once a step has run that way and while what it
        relies on holds, :meth:`_lean_step` (the same update with less Python per call)."""
        layout, k = [], 0
        for g in self.param_groups:
            layout.append(index[k:k + len(g["params"])])
            k += len(g["params"])
        lean: list = [None]

        def plain(grads) -> None:
            run = lean[0]
            if run is not None and run(grads):
                return
            self._step([[None if j is None else grads[j] for j in pos] for pos in layout])
            lean[0] = self._lean_step(layout)

        def step_with(*grads):
            if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _global_step_pre_hooks or _global_step_post_hooks):
                self._lowered_with_hooks(plain, grads, layout)
                return
            run = lean[0]
            if run is not None and run(grads):
                return
            plain(grads)

        step_with.__qualname__ = f"{type(self).__name__}.step"
        return step_with

    def _lowered_with_hooks(self, plain: Callable, grads: tuple, layout: list) -> None:
        """A lowered step (``plain(grads)``) with the step hooks around it, as ``step()``. A hook
        may read or change ``.grad`` (clip the gradients), so the gradients are put there for
        the call, unless every hook is marked :data:`GRAD_FREE` (pruning's re-mask)."""
        hooks = (*_global_step_pre_hooks, *self._optimizer_step_pre_hooks,
                 *self._optimizer_step_post_hooks, *_global_step_post_hooks)
        if not all(getattr(h, GRAD_FREE, False) for h in hooks):
            self._with_grads(grads, layout, _STEP, self)
            return

        def body(opt, *args, **kwargs):
            if args or kwargs:  # a pre-hook passed a closure: the step as written
                return self._with_grads(grads, layout, _STEP, opt, *args, **kwargs)
            plain(grads)
            return None

        self._run_step_hooks(body, (self,), {})

    def _with_grads(self, grads: tuple, layout: list, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` with copies of the lowered step's gradients in the ``.grad``
        of the parameters whose ``.grad`` is None (the program kept them out of it), as an
        eager call finds them; those go back to None afterwards, as the program leaves them."""
        put = []
        for group, pos in zip(self.param_groups, layout):
            for p, j in zip(group["params"], pos):
                if j is not None and p.grad is None:
                    p.grad = Tensor._of(grads[j].copy())
                    put.append(p)
        try:
            return fn(*args, **kwargs)
        finally:
            for p in put:
                p.grad = None

    def _lean_step(self, layout: list) -> Callable | None:
        """``run(grads)``: one step of a compiled program's lowered ``step()`` on its gradient
        arrays (group gi's k-th parameter's is ``grads[layout[gi][k]]``), for the common case
        that the call after a step of :meth:`_step` finds: every parameter has a gradient, every
        bucket runs its fused kernel and its parameters share their step count. Returns False,
        having done nothing, when one of these no longer holds or a parameter's ``data`` was
        replaced (then :meth:`_step` runs). The gradients' shapes are the program's. None when
        the case does not apply at all."""
        if any(j is None for pos in layout for j in pos):
            return None
        plan, buckets, params, views = [], [], [], []
        for group, pos, bs in zip(self.param_groups, layout, self._buckets):
            rows = []
            for b in bs:
                if (not (b.fused and b.loaded and b.uniform) or b.pending or b.gviews is not None
                        or b.cplx is not None):
                    return None
                n = len(b.params)
                rows.append((b, [pos[j] for j in b.pos], n, slice(0, b.offsets[-1])))
                buckets.append(b)
                params += b.params
                views += b.views
            plan.append((group, rows))
        get_data, is_ = operator.attrgetter("_data"), operator.is_
        hyper, fused_run = self._hyper, self._fused_run

        def run(grads) -> bool:
            if not all(map(is_, map(get_data, params), views)) or not all(
                    b.uniform and b.fused and b.gviews is None for b in buckets):
                return False
            self.step_count = t = self.step_count + 1
            for group, rows in plan:
                h = hyper(group, t)
                decoupled = bool(h.get("decoupled_weight_decay", False))
                for b, pos, n, sl in rows:
                    b.ensure(self.state_init(h))
                    sc = dict(b.scalars[0])
                    sc["step"] += 1
                    fused_run(b, [grads[j] for j in pos], 0, n, sl, _State(b, sl, sc), h,
                              decoupled)
                    b.scalars[:] = [sc] * n
                    for p in b.params:
                        if p._version is not None:
                            p._version[0] += 1
            return True

        return run

    def _follow_params(self, gi: int) -> None:
        """Follow an edited ``param_groups[gi]["params"]`` (PyTorch code assigns a new list,
        appends a new head's parameters or replaces one in place): the group's buffers are
        rebuilt for the list as it is now, each parameter keeping its state (a new one starts
        fresh). The group's list is a :class:`ParamList`, which counts its edits, so a step
        that finds the same list with the same count pays two tests."""
        group = self.param_groups[gi]
        ps = group["params"]
        followed = self.__dict__.setdefault("_followed", {})
        last = followed.get(gi)
        if last is not None and last[0] is ps and last[1] == ps.edits:
            return  # the list checked last time, not edited since
        buckets = self._buckets[gi]
        if type(ps) is not ParamList:  # a list assigned in its place: counted from now on
            ps = group["params"] = ParamList([ps] if isinstance(ps, Tensor) else ps)
        if sum(len(b.params) for b in buckets) == len(ps) and all(
                ps[pos] is p for b in buckets for pos, p in zip(b.pos, b.params)):
            followed[gi] = (ps, ps.edits)
            return
        others = {id(p) for g in self.param_groups if g is not group for p in g["params"]}
        seen: set = set()
        for pos, p in enumerate(ps):
            where = _describe(group, gi, pos, p)
            if not isinstance(p, Tensor) or p.node is not None or not B.is_inexact(p.dtype):
                raise TypeError(f"{type(self).__name__}: {where} in param_groups[{gi}]['params'] "
                                "is not a floating-point leaf tensor")
            if id(p) in seen or id(p) in others:
                raise ValueError(f"{type(self).__name__}: {where} appears more than once in the "
                                 "optimizer's groups")
            seen.add(id(p))
        carried = {id(p): self._entry(b, i, copy=True)
                   for b in buckets for i, p in enumerate(b.params)}
        self._buckets[gi] = self._make_buckets(group)
        entries = [carried.get(id(p)) for p in ps]
        for pos, p in enumerate(ps):  # ``state[new_p] = entry`` after a swap (3DGS's pruning)
            if entries[pos] is None and self._adoptable(gi, p, fits=True):
                entries[pos] = self._taken(gi, p)
        self._install(gi, entries)
        followed[gi] = (ps, ps.edits)

    def _adoptable(self, gi: int, p: Tensor, fits: bool) -> bool:
        """Whether ``p``'s entry in the user's state (``optimizer.state[p] = entry``) is this
        optimiser's own state (its ``step`` and arrays under its state names), so that it goes
        into the buffers, as PyTorch's step reads ``state[p]``; ``fits``: with ``p``'s shape."""
        e = self._user_state.get(p)
        if not e or type(self).update is Optimizer.update:
            return False
        own = self._own_names(gi)
        e = self._own_form({k: v for k, v in e.items() if k in own})
        if "step" not in e:
            return False
        arrays = [v for v in e.values() if _is_arrayish(v)]
        return bool(arrays) and (not fits or all(tuple(v.shape) == tuple(p.shape)
                                                 for v in arrays))

    def _own_names(self, gi: int) -> set:
        """The names this optimiser keeps in its buffers for group ``gi``'s parameters."""
        h = self._hyper(self.param_groups[gi], self.step_count + 1)
        return set(self.state_init(h)) | set(self.scalar_init) | {"step"}

    def _taken(self, gi: int, p: Tensor) -> dict:
        """``p``'s entry taken from the user's state into the buffers (see :meth:`_adoptable`):
        its own names in the buffers' form; other names (a wrapper's) kept beside them."""
        e, own = self._user_state.pop(p), self._own_names(gi)
        rest = {k: v for k, v in e.items() if k not in own}
        if rest:
            self.__dict__.setdefault("_extra", {}).setdefault(p, {}).update(rest)
        return self._own_form({k: v for k, v in e.items() if k in own})

    def _sync(self, gi: int) -> None:
        """Follow an edited parameter list (:meth:`_follow_params`) and parameters whose
        ``data`` was replaced (the group's buffers built anew)."""
        self._follow_params(gi)
        if self._user_state:
            for pos, p in enumerate(self.param_groups[gi]["params"]):
                if self._adoptable(gi, p, fits=True):
                    entries = self._extract(gi)
                    entries[pos] = self._taken(gi, p)
                    self._install(gi, entries)
                elif self._adoptable(gi, p, fits=False):
                    e, own = self._user_state[p], self._own_names(gi)
                    shapes = {k: tuple(v.shape) for k, v in e.items()
                              if k in own and _is_arrayish(v)}
                    raise ShapeError(
                        f"{type(self).__name__}.step: optimizer.state[p] of "
                        f"{_describe(self.param_groups[gi], gi, pos, p)} holds state of shapes "
                        f"{shapes}, the parameter has shape {tuple(p.shape)}")
        for b in self._buckets[gi]:
            for i, (p, v) in enumerate(zip(b.params, b.views)):
                d = p._data
                if d is v:
                    continue
                if d.shape != v.shape:
                    raise ShapeError(f"{_describe(self.param_groups[gi], gi, b.pos[i], p)} "
                                     f"changed shape from {v.shape} to {d.shape} since the "
                                     "optimizer was built")
                # a new buffer (the parameters keep their state): the handles on the old
                # memory (``w = p.data`` before ``p.data = new``) keep the values they hold,
                # as PyTorch's old storage does
                entries = self._extract(gi)
                self._buckets[gi] = self._make_buckets(self.param_groups[gi])
                self._install(gi, entries)
                return

    def _step_bucket(self, b: _Bucket, h: dict, gi: int, given: list | None = None) -> None:
        if given is None:
            grads = [None if (g := p.grad) is None else g._data for p in b.params]
        else:
            grads = [given[j] for j in b.pos]
        if b.cplx is not None:
            grads = self._real_grads(b, grads, gi)
        n = len(grads)
        if b.uniform and [getattr(g, "shape", None) for g in grads] == b.shapes:
            runs = [(0, n)]  # the common case: every gradient there, one run
        else:
            runs = self._runs_of(b, grads, gi)
            if not runs:
                return
        b.ensure(self.state_init(h))
        if b.pending and B.numba_loaded():  # imported since: the kernel, the same bits
            b.fused, b.pending = True, False
        if b.fused and not b.loaded:
            b.fused = b.loaded = self._fused_ready(b)
        if b.work is None and not b.fused:
            b.work = b.xp.empty_like(b.flat)
        decoupled = bool(h.get("decoupled_weight_decay", False))
        for s, e in runs:
            sl = slice(b.offsets[s], b.offsets[e])
            sc = dict(b.scalars[s])
            sc["step"] += 1
            if b.fused:
                self._fused_run(b, grads, s, e, sl, _State(b, sl, sc), h, decoupled)
            elif b.half:
                g = self._gather(b, grads, s, e, sl)
                self.update_half(b.xp, b.flat[sl], g, _State(b, sl, sc), h, decoupled)
            else:
                g = self._gather(b, grads, s, e, sl)
                g = self._transform(b, b.flat[sl], g, sl, h, decoupled)
                self.update(b.xp, b.flat[sl], g, _State(b, sl, sc), h)
            b.scalars[s:e] = [sc] * (e - s)
            for p in b.params[s:e]:
                if p._version is not None:
                    p._version[0] += 1
        if len(runs) > 1 or runs[0] != (0, n):
            b.merge_scalars()

    def _real_grads(self, b: _Bucket, grads: list, gi: int) -> list:
        """A complex bucket's gradients as real views (``view_as_real``, the buffer's layout):
        the zeroed gradient buffer's own views where ``.grad`` is one, else a contiguous copy
        where it must be made (a real gradient counts as complex with imaginary part 0)."""
        out = []
        rdt, cv = b.flat.dtype, b.cviews
        for i, g in enumerate(grads):
            if g is None:
                out.append(None)
            elif cv is not None and g is cv[i]:
                out.append(b.gviews[i])
            elif g.shape != b.pshapes[i]:
                what = _describe(self.param_groups[gi], gi, b.pos[i], b.params[i])
                raise ShapeError(f"the gradient of {what} has shape {g.shape}")
            else:
                g = b.xp.ascontiguousarray(g.reshape(-1), dtype=b.cplx)
                out.append(g.view(rdt).reshape(b.shapes[i]))
        return out

    def _runs_of(self, b: _Bucket, grads: list, gi: int) -> list[tuple[int, int]]:
        """The runs of :func:`_runs` after checking the gradients: an error for a missing one
        with ``strict``, for one of the wrong shape."""
        for i, g in enumerate(grads):
            if g is None and self.strict:
                what = _describe(self.param_groups[gi], gi, b.pos[i], b.params[i])
                raise GradError(
                    f"{type(self).__name__}.step: {what} has no gradient (was it used in "
                    "the loss, and did backward run?); strict=False skips such parameters, "
                    "as PyTorch does")
            if g is not None and g.shape != b.shapes[i]:
                what = _describe(self.param_groups[gi], gi, b.pos[i], b.params[i])
                raise ShapeError(f"the gradient of {what} has shape {g.shape}")
        if all(g is None for g in grads):
            return []
        return _runs(grads, b.scalars)

    def _fused_pending(self) -> bool:
        """Whether a bucket runs the NumPy update only until numba is imported (``fused=None``
        on a small bucket, :func:`._fused.auto`)."""
        return any(b.pending for buckets in self._buckets for b in buckets)

    def _fused_ready(self, b: _Bucket) -> bool:
        """Whether the bucket's kernels load; if not, an error (``fused=True``) or a warning and
        the NumPy update from now on (``fused=None``)."""
        try:
            _fused.load(b.backend)
            return True
        except Exception as e:
            msg = (f"{type(self).__name__}: the fused kernels on {b.backend.name} failed to load "
                   f"({type(e).__name__}: {e})")
            if self.fused:
                raise BackendUnavailable(msg + "; fused=None falls back to the NumPy update") from e
            warnings.warn(msg + "; this optimizer runs the NumPy update", RuntimeWarning,
                          stacklevel=5)
            return False

    def _fused_run(self, b: _Bucket, grads: list, s: int, e: int, sl: slice, st: _State,
                   h: dict, decoupled: bool) -> None:
        """Parameters s..e-1 through the fused kernel: one call over the flat buffers when their
        gradients are views of the flat gradient buffer, else one call per large gradient array
        (read where it is) and one per stretch of small ones (gathered: a call costs more)."""
        name, names, values, opts = self.fused_args(st, h)
        dt = b.flat.dtype
        wd = h.get("weight_decay", 0)
        key = (values, opts, wd, h.get("maximize", False), decoupled, h["lr"] if wd else None)
        last, k, flags, kname, kern = b.kargs
        if kname != name:
            kern, kname = _fused.kernel(b.backend, name), name
        if key != last:  # the scalars array and flags of the last step while they hold
            flags = bool(key[3]) | (0 if not wd else 4 if decoupled else 2)
            for j, o in enumerate(opts):
                flags |= bool(o) << (3 + j)
            vals = (1 - h["lr"] * wd if flags & 4 else wd, *values)
            if type(k) is B.ndarray and k.size == len(vals):  # a CPU kernel's: rounded alike
                k[:] = vals
            else:
                k = _fused.scalars(b.backend, dt, vals)
        b.kargs = (key, k, flags, kname, kern)
        gv = b.gviews
        if e - s > 1 and gv is not None and all(grads[i] is gv[i] for i in range(s, e)):
            state = [b.flat if n is None else b.arrays[n] for n in names]
            kern(b.flat[sl], b.grad[sl], *[a[sl] for a in state], k, flags)
            return
        xp = b.xp
        for i, j, work, (p, *state) in b.calls_of(s, e, names):
            if work is not None:
                xp.concatenate([grads[q].reshape(-1) for q in range(i, j)], out=work)
                g = work
            else:
                g = grads[i]
                if g.dtype != dt or not g.flags.c_contiguous:
                    g = xp.ascontiguousarray(g, dtype=dt)
                g = g.reshape(-1)
            kern(p, g, *state, k, flags)

    @staticmethod
    def _gather(b: _Bucket, grads: list, s: int, e: int, sl: slice):
        """The gradients of parameters s..e-1 as one flat array (one concatenate at most)."""
        if e - s == 1:
            return grads[s].reshape(-1)
        gv = b.gviews
        if gv is not None and all(grads[i] is gv[i] for i in range(s, e)):
            return b.grad[sl]
        out = b.work[sl]
        b.xp.concatenate([grads[i].reshape(-1) for i in range(s, e)], out=out)
        return out

    @staticmethod
    def _transform(b: _Bucket, p, g, sl: slice, h: dict, decoupled: bool):
        """The gradient transforms shared by all algorithms: maximize, then weight decay."""
        xp = b.xp
        if h.get("maximize", False):
            w = b.work[sl]
            xp.negative(g, out=w)
            g = w
        wd = h.get("weight_decay", 0)
        if wd:
            if decoupled:  # decoupled (AdamW): theta <- theta (1 - lr lambda)
                xp.multiply(p, 1 - h["lr"] * wd, out=p)
            else:  # L2 (coupled): g <- g + lambda theta
                tmp, w = b.tmp(0)[sl], b.work[sl]
                xp.multiply(p, wd, out=tmp)
                xp.add(g, tmp, out=w)
                g = w
        return g

    @effect
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: set them to None (default), or to zero in place.

        With ``set_to_none=False`` the existing gradients become zeroed views of one flat buffer
        per group, which ``backward`` then accumulates into and ``step`` reads without a copy.
        """
        if "_buckets" not in self.__dict__:  # a wrapper that never called Optimizer.__init__
            for group in self.param_groups:  # (timm's Lookahead): PyTorch's loop
                for p in group["params"]:
                    if p.grad is not None:
                        if set_to_none:
                            p.grad = None
                        else:
                            p.grad.zero_()
            return
        for gi in range(len(self.param_groups)):
            self._follow_params(gi)
        for buckets in self._buckets:
            for b in buckets:
                if set_to_none:
                    for p in b.params:
                        p.grad = None
                    continue
                if b.grad is None:
                    with b.backend.scope():
                        b.grad = b.xp.zeros_like(b.flat)
                    b.gviews = [b.grad[lo:hi].reshape(shape) for lo, hi, shape in
                                zip(b.offsets, b.offsets[1:], b.shapes)]
                    if b.cplx is not None:  # .grad: complex views of the real buffer
                        b.cviews = [b.grad[lo:hi].view(b.cplx).reshape(shape) for lo, hi, shape
                                    in zip(b.offsets, b.offsets[1:], b.pshapes)]
                else:
                    b.grad.fill(0)
                for p, v in zip(b.params, b.gviews if b.cviews is None else b.cviews):
                    if p.grad is None:
                        continue
                    if p.grad._data is v:
                        p.grad._bump()
                    else:
                        p.grad = Tensor._of(v)

    # --- state ------------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """Per-parameter state, ``{param: {"step": t, name: tensor, ...}}`` (tensors on the
        optimiser's buffers: an in-place change of one, ``state[p]["exp_avg"].zero_()``, is
        what the next step reads, as in PyTorch), ``step`` in PyTorch's form (a 0-d float
        tensor; SGD keeps none); assigning it (``state[p]["step"] += 1``) is what the next
        step reads. As
        PyTorch's ``defaultdict(dict)``, a missing parameter gives a new entry that is kept:
        a subclass with its own ``step`` writes ``self.state[p]["mu"] = ...`` (LARS, SAM).
        A wrapper that assigns ``self.state = defaultdict(dict)`` (Lookahead) keeps its own."""
        own = self.__dict__.get("_assigned_state")
        if own is not None:
            return own
        for gi in range(len(self.param_groups)):
            self._follow_params(gi)
        out = _StateDict(self._user_state, self)
        for gi, buckets in enumerate(self._buckets):
            for b in buckets:
                if self.state_at_init and any(sc["step"] == 0 for sc in b.scalars):
                    # PyTorch's Adagrad has each parameter's state (step 0, sum) from the start
                    b.ensure(self.state_init(self._hyper(self.param_groups[gi],
                                                         self.step_count + 1)))
                for i, p in enumerate(b.params):
                    entry = self._entry(b, i, copy=False, fresh=self.state_at_init)
                    if entry is not None:
                        entry._opt = self
                        self._show_step(entry)
                        dict.update(entry, self.__dict__.get("_extra", {}).get(p, {}))
                        dict.__setitem__(out, p, entry)
        return out

    def _show_step(self, entry: dict) -> None:
        """A live entry's ``step`` in PyTorch's form (:attr:`step_form`): a 0-d float tensor
        (float32 while it holds the count exactly), an int, or none at all (SGD's); the
        per-parameter numbers (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) as 0-d
        tensors too, in PyTorch's dtype for them (float32, float64 under a float64 default
        dtype; the step keeps them in float64, as :meth:`state_dict` saves them)."""
        t = dict.pop(entry, "step")
        if self.step_form == "int":
            dict.__setitem__(entry, "step", t)
        elif self.step_form is not None:
            dict.__setitem__(entry, "step", Tensor._of(B.np.asarray(t, _step_dtype(t))))
        dt = _scalar_dtype()
        for k in self.scalar_init:
            v = dict.get(entry, k)
            if isinstance(v, float | int) and not isinstance(v, bool):
                dict.__setitem__(entry, k, Tensor._of(B.np.asarray(v, dt)))

    def _own_form(self, e: dict) -> dict:
        """A state entry given back by the user (``optimizer.state[q] = entry`` after a swap)
        in the buffers' form: the step and scalars PyTorch keeps as 0-d tensors as numbers,
        and SGD's entry, which has no step in PyTorch's form, with the optimiser's count."""
        e = dict(e)
        self._scalars_as_numbers(e)
        if "step" not in e and self.step_form is None and any(map(_is_arrayish, e.values())):
            e["step"] = max(self.step_count, 1)
        return e

    def _scalars_as_numbers(self, e: dict) -> None:
        """The step and the scalars PyTorch keeps as 0-d tensors, as numbers in ``e``."""
        for k in set(self.scalar_init) | {"step"}:
            v = e.get(k)
            if _is_arrayish(v) and tuple(v.shape) == ():
                v = v.item() if hasattr(v, "item") else v[()]
                e[k] = int(v) if k == "step" and float(v).is_integer() else v

    @state.setter
    def state(self, value: dict) -> None:
        if "_buckets" in self.__dict__ and isinstance(value, dict) and not value:
            self.state.clear()  # PyTorch's reset, ``opt.state = defaultdict(dict)``
            return
        self.__dict__["_assigned_state"] = value

    def _reset_state(self, p) -> None:
        """Forget ``p``'s state (a later step starts it afresh), as deleting PyTorch's
        ``state[p]`` does; a parameter the optimizer does not hold is left alone."""
        self._user_state.pop(p, None)
        self.__dict__.get("_extra", {}).pop(p, None)
        for gi, group in enumerate(self.param_groups):
            for pos, q in enumerate(group["params"]):
                if q is p:
                    entries = self._extract(gi)
                    if entries[pos] is not None:
                        entries[pos] = None
                        self._install(gi, entries)
                    return

    @staticmethod
    def _entry(b: _Bucket, i: int, copy: bool, fresh: bool = False) -> dict | None:
        """Parameter ``i``'s state (copies, or a live entry on the buffers); None before its
        first step unless ``fresh`` (then the state it starts from, step 0)."""
        sc = b.scalars[i]
        if sc["step"] == 0 and not fresh:
            return None
        lo, hi = b.offsets[i], b.offsets[i + 1]
        entry = dict(sc) if copy else _LiveEntry(sc, b, i)
        for name, a in b.arrays.items():
            v = a[lo:hi]
            if b.cplx is not None:  # complex state for a complex parameter, as PyTorch's
                v = v.view(b.cplx)
            v = v.reshape(b.pshapes[i])
            dict.__setitem__(entry, name, v.copy() if copy else Tensor._of(v))  # live: a tensor
        return entry

    def _extract(self, gi: int) -> list:
        """Copies of group ``gi``'s per-parameter state, by position in the group (None: fresh)."""
        self._follow_params(gi)
        entries: list = [None] * len(self.param_groups[gi]["params"])
        for b in self._buckets[gi]:
            for i, pos in enumerate(b.pos):
                entries[pos] = self._entry(b, i, copy=True)
        return entries

    def _install(self, gi: int, entries: list) -> None:
        """Set group ``gi``'s state from per-parameter entries (already validated)."""
        init = self.state_init(self._hyper(self.param_groups[gi], self.step_count + 1))
        for b in self._buckets[gi]:
            names = dict(init)
            for pos in b.pos:
                if entries[pos] is not None:
                    names.update({k: 0.0 for k, v in entries[pos].items() if _is_arrayish(v)})
            b.arrays = {}
            b.plans.clear()
            b.ensure({k: init.get(k, 0.0) for k in names})
            fresh = {"step": 0, **self.scalar_init}
            for i, pos in enumerate(b.pos):
                e = entries[pos]
                lo, hi = b.offsets[i], b.offsets[i + 1]
                if e is None:
                    b.scalars[i] = fresh
                    continue
                b.scalars[i] = {k: v for k, v in e.items() if not _is_arrayish(v)}
                for name, a in b.arrays.items():
                    if name in e:
                        part = a[lo:hi] if b.cplx is None else a[lo:hi].view(b.cplx)
                        part[...] = _to_backend(b, e[name]).reshape(-1)
            b.merge_scalars()

    def state_dict(self) -> dict:
        """A copy of the state, PyTorch's layout and types: per-parameter state by index (its
        arrays as tensors, ``step`` as :attr:`step_form` says, no entry where PyTorch keeps
        none), the groups' settings, and nodegrad's ``step_count`` (which PyTorch ignores)."""
        state, groups, start = {}, [], 0
        for gi, group in enumerate(self.param_groups):
            for pos, e in enumerate(self._extract(gi)):
                p = group["params"][pos]
                if e is None and p in self._user_state:
                    state[start + pos] = {k: v.clone() if isinstance(v, Tensor) else v
                                          for k, v in self._user_state[p].items()}
                    continue
                if e is None and self.state_at_init:
                    e = self._initial_entry(gi, pos)
                if e is not None:
                    e = self._saved_entry(e)
                    e.update({k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)
                              for k, v in self.__dict__.get("_extra", {}).get(p, {}).items()})
                if e:  # PyTorch keeps no entry where there is no state (SGD without momentum)
                    state[start + pos] = e
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = list(range(start, start + len(group["params"])))
            groups.append(saved)
            start += len(group["params"])
        return {"state": state, "param_groups": groups, "step_count": self.step_count}

    def _initial_entry(self, gi: int, pos: int) -> dict:
        """The state group ``gi``'s parameter ``pos``, which has not stepped yet, starts from
        (for :attr:`state_at_init`): step 0 and its state arrays as they are now (the initial
        values of :meth:`state_init`, complex ``v + vj`` for a complex parameter, as PyTorch's,
        unless changed through :attr:`state` since)."""
        for b in self._buckets[gi]:
            if pos in b.pos:
                b.ensure(self.state_init(self._hyper(self.param_groups[gi], self.step_count + 1)))
                return self._entry(b, b.pos.index(pos), copy=True, fresh=True)
        raise AssertionError(f"parameter {pos} of group {gi} is in no bucket")

    def _saved_entry(self, e: dict) -> dict:
        """A state entry (copies) in PyTorch's form: arrays as tensors, ``step`` as
        :attr:`step_form` says (a 0-d tensor of :func:`_step_dtype`: float32, as PyTorch's,
        unless the default dtype is float64 or the count is beyond 2**24), other numbers
        (NAdam's ``mu_product``, ASGD's ``eta``) as float64 0-d tensors, so that a resume from
        the state dict is bit-identical."""
        out = {}
        for k, v in e.items():
            if k == "step":
                if self.step_form == "int":
                    out[k] = int(v)
                elif self.step_form is not None:
                    out[k] = Tensor._of(B.np.asarray(v, _step_dtype(v)))
            elif is_array(v):
                out[k] = Tensor._of(v)
            elif isinstance(v, float | int) and not isinstance(v, bool):
                out[k] = Tensor._of(B.np.asarray(v, B.np.float64))
            else:
                out[k] = v
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (nodegrad's, PyTorch's with its tensors, or an older
        nodegrad one with arrays and int steps); a clear error when it does not fit these
        parameters. As PyTorch's: the groups' settings are copied; a subclass with its own step
        gets its state in its parameters' dtype and device; a subclass's own ``__setstate__``
        runs last (``group.setdefault`` there fills settings an older checkpoint lacks)."""
        name = type(self).__name__
        for gi in range(len(self.param_groups)):
            self._follow_params(gi)
        saved_groups, state, where = match_groups(self, state_dict)
        entries = [[None] * len(g["params"]) for g in self.param_groups]
        extra: dict = {}  # names beyond this optimiser's own, kept as given (Lookahead's)
        own = type(self).update is Optimizer.update  # a PyTorch-style step of its own
        for idx, e in state.items():
            gi, pos = where[idx]
            sg, g = saved_groups[gi], self.param_groups[gi]
            p = g["params"][pos]
            if own:  # its entries as saved, arrays (PyTorch's tensors too) as tensors
                self._user_state[p] = _own_state(p, e)
                continue
            desc = _describe(g, gi, pos, p)
            h = self._hyper({k: v for k, v in sg.items() if k not in _NOT_HYPER},
                            self.step_count + 1)
            expected = set(self.state_init(h)) | set(self.scalar_init) | {"step"}
            e = {k: v if _is_arrayish(v) or not hasattr(v, "__array__") else B.np.asarray(v)
                 for k, v in e.items()  # another library's tensors (PyTorch's) as arrays
                 if v is not None}  # PyTorch's "no buffer yet" (SGD's momentum_buffer)
            if not e:
                continue
            if "step" not in e and e:  # PyTorch's SGD keeps no step: the optimiser's count
                e["step"] = max(int(state_dict.get("step_count", 0)), 1)
            got = set(e)
            if not expected <= got:
                missing, unexpected = sorted(expected - got), sorted(got - expected)
                raise ValueError(f"{name}.load_state_dict: the state of {desc} does not match "
                                 f"{name} with these settings: missing {missing}, unexpected "
                                 f"{unexpected} (was it saved by another optimiser?)")
            if got != expected:  # a wrapper's own names (timm's Lookahead's slow weights)
                extra[p] = {k: _own_state(p, e.pop(k), k) for k in sorted(got - expected)}
            self._scalars_as_numbers(e)
            for k, v in e.items():
                if _is_arrayish(v) and tuple(v.shape) != tuple(p.shape):
                    raise ShapeError(f"{name}.load_state_dict: state '{k}' of {desc} has shape "
                                     f"{tuple(v.shape)}, the parameter has shape {p.shape}")
            entries[gi][pos] = e
        self.__dict__["_extra"] = extra
        self._finish_load(saved_groups, entries, state_dict)

    def _finish_load(self, saved_groups: list, entries: list, state_dict: dict) -> None:
        """Take the checked groups' hyperparameters, the step count and each state entry."""
        fills = _fills_defaults(self)
        dropped: list[dict] = []
        for sg, g in zip(saved_groups, self.param_groups):
            if fills:  # PyTorch's: the group becomes the saved one; __setstate__ fills it in
                dropped.append({k: g.pop(k) for k in set(g) - set(sg) - set(_NOT_HYPER)})
            # copies, as PyTorch's deepcopy: a later step that changes a mutable setting in
            # place (a list the update keeps in its group) leaves the caller's state dict alone
            g.update(copy.deepcopy({k: v for k, v in sg.items() if k not in _NOT_HYPER}))
            if "param_names" in sg:  # PyTorch's: saved names replace these, and never refuse
                g["param_names"] = list(sg["param_names"])
        self.step_count = int(state_dict.get("step_count", 0))
        for gi in range(len(self.param_groups)):
            self._install(gi, entries[gi])
        if fills:
            self.__setstate__({"state": self.state, "param_groups": self.param_groups})
            for g, old in zip(self.param_groups, dropped):  # what it left unset stays as was
                for k, v in old.items():
                    g.setdefault(k, v)


class _StateDict(dict):
    """``optimizer.state``, PyTorch's ``defaultdict(dict)``: ``state[p]`` for a parameter with
    no entry creates one in ``store`` (the optimizer's own), so it lasts across steps."""

    __slots__ = ("_store", "_opt")

    def __init__(self, store: dict, opt: Optimizer | None = None):
        super().__init__(store)
        self._store, self._opt = store, opt

    def __delitem__(self, p) -> None:
        if p not in self:
            raise KeyError(p)
        dict.__delitem__(self, p)
        self._store.pop(p, None)
        if self._opt is not None:
            self._opt._reset_state(p)

    def pop(self, p, *default):
        if p not in self:
            if default:
                return default[0]
            raise KeyError(p)
        entry = dict(dict.__getitem__(self, p))
        del self[p]
        return entry

    def clear(self) -> None:
        for p in list(self):
            del self[p]

    def __missing__(self, p):
        entry = self._store[p] = {}
        dict.__setitem__(self, p, entry)
        return entry

    def __setitem__(self, p, entry) -> None:
        live = dict.get(self, p)
        if isinstance(live, _LiveEntry) and isinstance(entry, dict) and not entry:
            del self[p]  # ``state[p] = {}``: PyTorch's reset of one parameter
            dict.__setitem__(self, p, self._store.setdefault(p, {}))
            return
        if isinstance(live, _LiveEntry) and live is not entry:  # state in the flat buffers
            for k, v in entry.items():
                live[k] = v
            return
        dict.__setitem__(self, p, entry)
        self._store[p] = entry


class _LiveEntry(dict):
    """``optimizer.state[p]`` where the state lives in the optimiser's flat buffers: assigning
    one of its names writes there, so ``state[p]["momentum_buffer"] = zeros_like(p)`` resets
    the momentum as in PyTorch (Lookahead's reset) rather than a copy no step reads."""

    __slots__ = ("_bucket", "_i", "_opt")

    def __init__(self, scalars: dict, b: _Bucket, i: int):
        super().__init__(scalars)
        self._bucket, self._i, self._opt = b, i, None

    def __setitem__(self, name, value) -> None:
        b, i = self._bucket, self._i
        if b is None:  # let go of the buffers (below): a plain dict, as PyTorch's
            dict.__setitem__(self, name, value)
            return
        if name in b.arrays:
            view = dict.__getitem__(self, name)._data
            new = _to_backend(b, value)
            if tuple(new.shape) != tuple(view.shape) and self._opt is not None:
                self._let_go()  # 3DGS's pruning: state of another shape, re-keyed to a new p
                dict.__setitem__(self, name, value)
                return
            if tuple(new.shape) != tuple(view.shape):
                raise ShapeError(f"optimizer.state[p][{name!r}] = value: the parameter's state "
                                 f"has shape {tuple(view.shape)}, got {tuple(new.shape)}")
            view[...] = new
        elif name in b.scalars[i]:
            shown = value  # what reading it back gives (PyTorch's 0-d tensor step)
            if _is_arrayish(value) or hasattr(value, "item"):
                value = value.item()
            if isinstance(b.scalars[i][name], int) and float(value).is_integer():
                value = int(value)
            b.scalars[i] = {**b.scalars[i], name: value}  # neighbours may share the dict
            b.merge_scalars()
            b.plans.clear()
            dict.__setitem__(self, name, shown)
        elif self._opt is not None:  # a name of a wrapper's own (timm's Lookahead's slow
            # weights): kept beside the buffers, in state_dict() and loaded back
            self._opt.__dict__.setdefault("_extra", {}).setdefault(b.params[i], {})[name] = value
            dict.__setitem__(self, name, value)
        else:
            raise KeyError(f"optimizer.state[p][{name!r}] = ...: this optimiser keeps "
                           f"{sorted(self)} for the parameter in its own buffers; a new name "
                           "would not be kept (a subclass with its own step keeps any)")

    def setdefault(self, name, default=None):
        if name not in self:
            self[name] = default
        return dict.__getitem__(self, name)

    def update(self, *args, **kwargs) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __delitem__(self, name) -> None:
        if self._opt is not None and self._bucket is not None:  # a wrapper's own name
            self._opt.__dict__.get("_extra", {}).get(self._bucket.params[self._i], {}).pop(
                name, None)
        dict.__delitem__(self, name)

    def _let_go(self) -> None:
        """Become the parameter's state in the user's hands, out of the buffers: the entry
        keeps copies of its arrays, and the parameter's state is this entry (a step with it
        raises unless ``optimizer.state[q] = entry`` gives it to a parameter of its shape)."""
        b, opt = self._bucket, self._opt
        p = b.params[self._i]
        for k, v in list(self.items()):
            if isinstance(v, Tensor):  # a tensor on the buffers: its values, apart
                v = v._data
            if is_array(v):
                dict.__setitem__(self, k, Tensor._of(v.copy()))
        self._bucket = self._opt = None
        opt._reset_state(p)
        opt._user_state[p] = self


def _to_backend_of(p: Tensor, v):
    """A saved state value (an array or another library's tensor) on ``p``'s backend."""
    v = v._data if isinstance(v, Tensor) else v
    be = B.backend_of(p._data)
    return be.asarray(B.np.asarray(v) if not is_array(v) else B.backend_of(v).to_host(v))


def _own_state(p: Tensor, v, key=None):
    """A saved state value of a subclass with its own step, as PyTorch's ``load_state_dict``
    casts it: arrays (PyTorch's tensors too) as tensors on ``p``'s device, in ``p``'s dtype
    where ``p`` is floating (except ``step``), inside dicts, lists and tuples too."""
    if isinstance(v, dict):
        return {k: _own_state(p, x, k) for k, x in v.items()}
    if isinstance(v, list | tuple):  # PyTorch's cast passes no key into a sequence
        return type(v)(_own_state(p, x) for x in v)
    if not (_is_arrayish(v) or hasattr(v, "__array__")):
        return v
    t = Tensor._of(_to_backend_of(p, v))
    if key != "step" and p.is_floating_point() and t.dtype != p.dtype:
        t = t.to(p.dtype)
    return t


def _check_forms(name: str, fused, foreach, capturable, differentiable) -> None:
    """PyTorch's implementation keywords (see :class:`Optimizer`): checked, and refused where
    nodegrad cannot do what they ask."""
    for key, v, allowed in (("foreach", foreach, (None, True, False)),
                            ("capturable", capturable, (True, False)),
                            ("differentiable", differentiable, (True, False))):
        if not any(v is a for a in allowed):
            want = "None, True or False" if None in allowed else "True or False"
            raise TypeError(f"{name}: {key} must be {want}, got {v!r}")
    if fused and foreach:
        raise RuntimeError(f"{name}: `fused` and `foreach` cannot be `True` together")
    if differentiable:
        raise NotImplementedError(
            f"{name}(differentiable=True): nodegrad's optimisers update the parameters in place "
            "outside autograd, so the step cannot be differentiated; write the update out of "
            "place with tensor ops (e.g. new = {k: p - lr * g}) and run the model on it with "
            "nodegrad.func.functional_call")


# --- hooks ------------------------------------------------------------------------------------
_EFFECT_CODE = effect(lambda: None).__code__  # every @effect wrapper runs this code


def _add(hooks: list, hook: Callable, prepend: bool) -> RemovableHandle:
    hooks.insert(0, hook) if prepend else hooks.append(hook)
    return RemovableHandle(hooks, hook)


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """``hook(optimizer, args, kwargs)`` before the step of every optimizer (before its own
    pre-hooks); it returns None or ``(new_args, new_kwargs)``. PyTorch's global hook."""
    _global_step_pre_hooks.append(hook)
    return RemovableHandle(_global_step_pre_hooks, hook)


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """``hook(optimizer, args, kwargs) -> None`` after the step of every optimizer (after its
    own post-hooks). PyTorch's global hook."""
    _global_step_post_hooks.append(hook)
    return RemovableHandle(_global_step_post_hooks, hook)


def _with_step_hooks(step: Callable) -> Callable:
    """A subclass's ``step`` with the step hooks around it."""

    def step_hooked(self, *args, **kwargs):
        if self._in_step_hooks or not self._has_step_hooks():
            return step(self, *args, **kwargs)
        return self._run_step_hooks(step, (self, *args), kwargs)

    functools.update_wrapper(step_hooked, step)
    step_hooked._runs_hooks = True  # type: ignore[attr-defined]
    return step_hooked


def _with_state_dict_hooks(state_dict: Callable) -> Callable:
    """``state_dict`` between its pre-hooks and its post-hooks (which may replace the result)."""

    def state_dict_hooked(self, *args, **kwargs):
        if self._in_state_dict_hooks or not (self._optimizer_state_dict_pre_hooks or
                                             self._optimizer_state_dict_post_hooks):
            return state_dict(self, *args, **kwargs)
        self._in_state_dict_hooks = True
        try:
            for hook in tuple(self._optimizer_state_dict_pre_hooks):
                hook(self)
            out = state_dict(self, *args, **kwargs)
            for hook in tuple(self._optimizer_state_dict_post_hooks):
                r = hook(self, out)
                if r is not None:
                    out = r
            return out
        finally:
            self._in_state_dict_hooks = False

    functools.update_wrapper(state_dict_hooked, state_dict)
    state_dict_hooked._runs_hooks = True  # type: ignore[attr-defined]
    return state_dict_hooked


def _with_load_state_dict_hooks(load: Callable) -> Callable:
    """``load_state_dict`` after its pre-hooks (on a shallow copy of the argument; a returned
    dict is loaded instead) and before its post-hooks."""

    def load_state_dict_hooked(self, state_dict, *args, **kwargs):
        if self._in_load_state_dict_hooks or not (self._optimizer_load_state_dict_pre_hooks or
                                                  self._optimizer_load_state_dict_post_hooks):
            return load(self, state_dict, *args, **kwargs)
        self._in_load_state_dict_hooks = True
        try:
            if isinstance(state_dict, dict):
                state_dict = state_dict.copy()
            for hook in tuple(self._optimizer_load_state_dict_pre_hooks):
                r = hook(self, state_dict)
                if r is not None:
                    state_dict = r
            out = load(self, state_dict, *args, **kwargs)
            for hook in tuple(self._optimizer_load_state_dict_post_hooks):
                hook(self)
            return out
        finally:
            self._in_load_state_dict_hooks = False

    functools.update_wrapper(load_state_dict_hooked, load)
    load_state_dict_hooked._runs_hooks = True  # type: ignore[attr-defined]
    return load_state_dict_hooked


Optimizer.state_dict = _with_state_dict_hooks(Optimizer.state_dict)  # type: ignore[method-assign]
Optimizer.load_state_dict = _with_load_state_dict_hooks(  # type: ignore[method-assign]
    Optimizer.load_state_dict)
Optimizer.step._runs_hooks = True  # type: ignore[attr-defined]
_STEP = Optimizer.step.__wrapped__  # what a jit trace records for step() and zero_grad()
_ZERO_GRAD = Optimizer.zero_grad.__wrapped__


def _closure_in_trace(step: Callable) -> Callable:
    """``Optimizer.step`` that, inside a jit trace, runs a closure as the traced step's own code
    and then the update alone (one effect): a replay then computes the closure's loss and
    gradients from that call's inputs (replayed inside the update's effect, the closure made
    by the traced call would run again on the traced call's batch)."""

    def step_with_closure(self, closure: Callable[[], Any] | None = None):
        if closure is None:
            return step(self)
        if modes().jit is not None:
            with enable_grad():
                loss = closure()
            step(self)
            return loss
        return step(self, closure)

    return functools.update_wrapper(step_with_closure, step)


Optimizer.step = _closure_in_trace(Optimizer.step)  # type: ignore[method-assign]


_PLAIN = frozenset({float, int, bool, str, tuple, type(None), B.np.float64, B.np.float32})


def _plain(opt: Optimizer, name: str, v, t: int):
    """Hyperparameter ``name``'s value at step ``t`` (see :meth:`Optimizer._hyper`)."""
    if callable(v) and not isinstance(v, Tensor):
        v = v(t)
    if isinstance(v, Tensor):
        v = v._data
    if is_array(v):
        if v.size != 1:
            raise ValueError(f"{type(opt).__name__}: hyperparameter {name!r} is a tensor of "
                             f"shape {tuple(v.shape)}; a tensor hyperparameter must hold one "
                             "number")
        v = v.reshape(()).item()
    return v


def _scalar_dtype():
    """PyTorch's dtype for an optimiser's 0-d state (``_get_scalar_dtype``): float64 under a
    float64 default dtype, else float32."""
    return B.np.float64 if B.np.dtype(B.DEFAULT_FLOAT) == B.np.float64 else B.np.float32


def _step_dtype(t):
    """The dtype of a 0-d ``step``: PyTorch's (:func:`_scalar_dtype`), float64 beyond 2**24,
    where float32 no longer holds the count exactly."""
    return _scalar_dtype() if abs(t) < 1 << 24 else B.np.float64


def _describe(group: dict, gi: int, pos: int, p) -> str:
    """'parameter 'fc.weight' (group 0, index 2, shape (3, 4))' for error messages."""
    names = group.get("param_names")
    label = f"'{names[pos]}' " if names is not None and pos < len(names) else ""
    shape = getattr(p, "shape", None)
    return f"parameter {label}(group {gi}, index {pos}, shape {shape})"


def _runs(grads: list, scalars: list) -> list[tuple[int, int]]:
    """Maximal stretches of parameters that have a gradient and share their scalar state."""
    runs, s, n = [], None, len(grads)
    for i in range(n + 1):
        ok = i < n and grads[i] is not None
        if s is not None and (not ok or scalars[i] is not scalars[s]):
            runs.append((s, i))
            s = None
        if ok and s is None:
            s = i
    return runs


def _is_arrayish(v) -> bool:
    return is_array(v) or isinstance(v, Tensor)


def _to_backend(b: _Bucket, a):
    """``a`` (an array or Tensor from a state dict) as an array on the bucket's device."""
    if isinstance(a, Tensor):
        a = a._data
    if is_array(a) and backend_of(a) is b.backend:
        return a
    if is_array(a):
        a = backend_of(a).to_host(a)
    return b.backend.asarray(a)


def post_step_masks(p: Tensor) -> list:
    """The 0/1 arrays of the gradient hooks on ``p`` that expose ``post_step_mask()``
    (pruning's): L-BFGS keeps its search directions inside them, so that pruned weights stay
    exactly zero during its line search."""
    out = []
    for h in p._hooks or ():
        get = getattr(h, "post_step_mask", None)
        if get is not None and (m := get()) is not None:
            out.append(m)
    return out


def check_hyper(name: str, value, lo: float = 0.0, hi: float | None = None) -> None:
    """Raise ValueError unless ``lo <= value`` (and ``value < hi``), TypeError for a value that
    is not a number; callables (schedules) are not checked."""
    if isinstance(value, Tensor) or is_array(value):  # PyTorch's tensor lr: one number
        a = value._data if isinstance(value, Tensor) else value
        if a.size != 1:
            raise ValueError(f"invalid {name}: a tensor of shape {tuple(a.shape)} (expected "
                             "a number or a tensor holding one number)")
        value = a.reshape(()).item()
    elif callable(value):
        return
    if isinstance(value, tuple | list):
        for i, v in enumerate(value):
            check_hyper(f"{name}[{i}]", v, lo, hi)
        return
    rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
    if not isinstance(value, numbers.Real):
        raise TypeError(f"invalid {name}: {value!r} (expected a number {rng})")
    if not value >= lo or (hi is not None and not value < hi):
        raise ValueError(f"invalid {name}: {value} (expected {rng})")


def check_betas(opt: str, betas, floats: bool = False) -> tuple:
    """``betas`` checked as a pair in [0, 1) (``opt`` names the optimiser in the error) and
    returned as a tuple, one-element tensors as numbers. ``floats``: as PyTorch's Adam and
    AdamW, both must be floats (an int such as ``0`` is refused: write ``0.0``) or both
    tensors."""
    if callable(betas) and not isinstance(betas, Tensor):
        return betas
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"{opt}: invalid betas: {betas!r} (expected a pair (beta1, beta2) of "
                         "numbers in [0, 1))")
    check_named(opt, "betas", tuple(betas), 0.0, 1.0)
    kinds = [isinstance(b, Tensor) or is_array(b) for b in betas]
    if floats and not (all(kinds) or all(isinstance(b, float) for b in betas)):
        bad = next(i for i, b in enumerate(betas) if not isinstance(b, float))
        hint = "" if kinds[bad] else f"; write {float(betas[bad])!r}"
        raise ValueError(f"{opt}: betas must be either both floats or both tensors, got "
                         f"{tuple(betas)!r} (betas[{bad}] has type {type(betas[bad]).__name__}"
                         f"{hint})")
    return tuple(_plain(None, "betas", b, 0) if k else b for b, k in zip(betas, kinds))


# --- helpers the optimisers share ----------------------------------------------------------------
def check_named(opt: str, name: str, value, lo: float = 0.0, hi: float | None = None) -> None:
    """:func:`check_hyper` with the optimiser's name in the message (``Rprop: invalid lr ...``)."""
    try:
        check_hyper(name, value, lo, hi)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{opt}: {e}") from None


def rounded(a, dt):
    """A float32 array rounded to the 16-bit float dtype ``dt`` and back: one of PyTorch's
    tensor operations on such parameters, computed in float32 and stored in ``dt``."""
    return a.astype(dt).astype(B.np.float32)


def alpha_of(dt, x: float):
    """``x`` as PyTorch's ``add(other, alpha=x)`` on a 16-bit float tensor of dtype ``dt`` takes
    it: rounded to ``dt`` (other ops, ``mul_``, ``addcdiv_``, take their number in float32)."""
    return B.np.float32(dt.type(x))


def lerp_(a, end, w: float) -> None:
    """``a ← a + w (end - a)`` in place, PyTorch's ``lerp_`` (the other form for ``|w| >= 0.5``,
    so that ``w = 1`` gives ``end`` exactly)."""
    if abs(w) < 0.5:
        a += w * (end - a)
    else:
        a[...] = end - (end - a) * (1 - w)


def match_groups(opt: Optimizer, state_dict: dict) -> tuple[list, dict, dict]:
    """Check that a saved state fits ``opt``'s groups (as :meth:`Optimizer.load_state_dict`
    does): the saved groups, the saved state, and index -> (group, position)."""
    name = type(opt).__name__
    try:
        saved_groups, state = state_dict["param_groups"], state_dict["state"]
    except (KeyError, TypeError):
        raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                         "'param_groups' (from Optimizer.state_dict())") from None
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved_groups)} "
                         f"parameter group(s), this optimizer has {len(opt.param_groups)}")
    implied = type(opt).torch_implied
    if implied:  # a PyTorch state dict: the settings its optimiser has fixed
        saved_groups = [{**implied, **sg} if isinstance(sg, dict) else sg
                        for sg in saved_groups]
    where: dict = {}
    for gi, (sg, g) in enumerate(zip(saved_groups, opt.param_groups)):
        if len(sg["params"]) != len(g["params"]):
            raise ValueError(f"{name}.load_state_dict: group {gi} has {len(sg['params'])} "
                             f"parameter(s) in the saved state, {len(g['params'])} here")
        lacking = sorted(set(opt.defaults) - set(sg))
        if lacking and not _fills_defaults(opt):
            raise ValueError(f"{name}.load_state_dict: group {gi} of the saved state lacks the "
                             f"hyperparameters {lacking} (was it saved by another optimiser?)")
        for pos, idx in enumerate(sg["params"]):
            where[idx] = (gi, pos)
    for idx in state:
        if idx not in where:
            raise ValueError(f"{name}.load_state_dict: state for parameter index {idx}, which no "
                             "saved group lists")
    return saved_groups, state, where


def _fills_defaults(opt: Optimizer) -> bool:
    """Whether ``opt``'s class writes its own ``__setstate__``, which PyTorch's
    ``load_state_dict`` calls last with ``{"state", "param_groups"}``: the idiom
    ``group.setdefault(name, value)`` there fills the hyperparameters an older checkpoint
    lacks, so a saved group may lack them."""
    return type(opt).__setstate__ is not Optimizer.__setstate__


def as_state_array(v, like):
    """A saved state value (array or Tensor) as a new array on ``like``'s device and dtype."""
    if isinstance(v, Tensor):
        v = v._data
    if is_array(v):
        v = backend_of(v).to_host(v)
    return backend_of(like).asarray(v, dtype=like.dtype).copy()
