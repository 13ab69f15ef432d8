"""Module and Parameter: PyTorch's shape, with a pytree underneath.

Assigning a Parameter, a Module, or a list/dict of modules to an attribute registers it;
``named_parameters()`` gives dotted names and ``state_dict()`` is that flat mapping (plus
persistent buffers). ``functional_call(model, params, *x)`` runs a model with other tensors in
place of its parameters, which is how ``grad``/``vjp`` work on modules; modules are also pytree
nodes, so ``ng.grad(loss)(model, x, y)`` returns a model-shaped gradient.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from .. import _backend as B
from ..autodiff import RemovableHandle, effect, modes, no_grad
from ..errors import ShapeError
from ..func.tree import register_pytree_node
from ..tensor import Tensor, check_layout
from . import hooks as _hooks


class Parameter(Tensor):
    """A tensor that a Module registers as trainable (``requires_grad`` by default). Unlike a
    plain Tensor it takes attributes of the user's (S4's ``p._optim`` hyperparameters, Mamba's
    ``p._no_weight_decay``), which optimiser setups read back."""

    memory_moves = True  # an optimiser gathers it into one buffer; views and detach()es follow

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:  # PyTorch's ``nn.Parameter()``: an empty (0,) parameter
            data = B.np.zeros((0,), B.DEFAULT_FLOAT)
        if isinstance(data, Tensor):
            data = data._data
        elif not B.is_array(data):
            data = B.np.asarray(data)
            # numbers take the default float dtype, complex ones its complex counterpart
            # (complex64 for float32) rather than losing their imaginary part
            data = data.astype(B.DEFAULT_FLOAT if data.dtype.kind != "c" else
                               B.np.result_type(B.DEFAULT_FLOAT, B.np.complex64))
        if requires_grad and not B.is_inexact(data.dtype):
            raise TypeError(f"Parameter: only floating and complex tensors can require grad, "
                            f"got {data.dtype}")
        super().__init__(data, None, requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        p = Parameter(self._data.copy(), self.requires_grad)
        memo[id(self)] = p
        return p


_STRUCTURE = [0]
"""How many times any module's parameters, buffers or submodules were set or removed, or a
public plain number or string attribute changed value: a jitted function holding modules as state
compares it to see that its captured tensors are still the modules' own (a replaced layer or
parameter makes it trace again) and that the Python values it read are unchanged."""
_PLAIN_TYPES = (bool, int, float, str, type(None))  # plain attributes a jitted step keys on
# (and NumPy scalars, _backend.NUMPY_SCALARS)
_ABSENT = object()


class Module:
    """Base class of every layer and model: override ``forward``, call the module."""

    training: bool
    _structure = _STRUCTURE  # read by nodegrad.jit, which does not import nn
    _buffer_hooks = _hooks.BUFFER_REGISTRATION_HOOKS  # (so is this: register_buffer runs them)
    # buffers ``load_state_dict`` may find absent (added after older checkpoints were written)
    _optional_buffers: tuple[str, ...] = ()
    # the version of this module's state-dict format, saved in ``state_dict()._metadata`` and
    # given back to ``_load_from_state_dict`` (batch norm's is 2, as PyTorch's)
    _version: int = 1

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        for hooks in _HOOK_LISTS:
            object.__setattr__(self, hooks, HookList())
        object.__setattr__(self, "training", True)

    # --- registration ---------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        """Register Parameters, Buffers and Modules (lists and dicts of modules as ModuleList
        and ModuleDict); anything else is a plain attribute. A registered name takes only its
        kind or None, as in PyTorch: a plain tensor assigned to a parameter raises instead of
        quietly unregistering the parameter. Before ``Module.__init__`` only plain attributes
        may be set (schnetpack's ``Dense`` stores its initialisers before ``super().__init__``
        calls its ``reset_parameters``), as in PyTorch."""
        d = self.__dict__
        if "_parameters" not in d:
            if isinstance(value, Parameter | Module | Buffer):
                raise AttributeError(f"cannot assign {_kind(value)} {name!r} before "
                                     "Module.__init__() call (call super().__init__() first)")
            object.__setattr__(self, name, value)
            return
        if _is_module_seq(value) or _is_module_map(value):
            from .layers.container import ModuleDict, ModuleList

            value = ModuleList(value) if _is_module_seq(value) else ModuleDict(value)
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            _drop(name, d, buffers, modules)
            self._non_persistent.discard(name)
            params[name] = _registered(_hooks.PARAMETER_REGISTRATION_HOOKS, self, name, value)
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name}: cannot assign {_kind(value)} as "
                                f"parameter {name!r} (nn.Parameter or None expected)")
            params[name] = None
        elif isinstance(value, Module):
            _drop(name, d, params, buffers)
            self._non_persistent.discard(name)
            modules[name] = _registered(_hooks.MODULE_REGISTRATION_HOOKS, self, name, value)
        elif name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name}: cannot assign {_kind(value)} as "
                                f"child module {name!r} (nn.Module or None expected)")
            modules[name] = _registered(_hooks.MODULE_REGISTRATION_HOOKS, self, name, None)
        elif isinstance(value, Buffer) or name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{type(self).__name__}.{name}: cannot assign {_kind(value)} as "
                                f"buffer {name!r} (nn.Buffer, Tensor or None expected)")
            if isinstance(value, Buffer):
                persistent, value = value.persistent, Tensor._of(value._data)
            else:
                persistent = name not in self._non_persistent
            d.pop(name, None)
            self.register_buffer(name, value, persistent)
            return
        else:
            old = d.get(name, _ABSENT)
            if (type(value) in _PLAIN_TYPES or type(old) in _PLAIN_TYPES
                    or isinstance(value, B.NUMPY_SCALARS) or isinstance(old, B.NUMPY_SCALARS)
                    ) and name[0] != "_" and (type(old) is not type(value) or old != value):
                _STRUCTURE[0] += 1  # a number that Python code reads: a jitted step retraces
            object.__setattr__(self, name, value)
            return
        d.pop(name, None)
        _STRUCTURE[0] += 1

    def __getattr__(self, name: str):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            s = d.get(store)
            if s is not None and name in s:
                return s[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                _STRUCTURE[0] += 1
                return
        object.__delattr__(self, name)

    def _check_name(self, name, kind: str, store: dict) -> None:
        """PyTorch's checks of a name given to ``register_parameter``, ``register_buffer`` or
        ``add_module``: a non-empty string without '.', not already another attribute."""
        op = f"{type(self).__name__}." + ("add_module" if kind == "module" else
                                          f"register_{kind}")
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{op}: call super().__init__() before registering a {kind}")
        if not isinstance(name, str):
            raise TypeError(f"{op}: the {kind} name must be a string, got "
                            f"{type(name).__name__}")
        if "." in name or name == "":
            raise KeyError(f"{op}: the {kind} name must be non-empty and contain no '.', got "
                           f"{name!r}")
        if name not in store and hasattr(self, name):
            raise KeyError(f"{op}: attribute {name!r} already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add ``param`` (a Parameter, or None for an absent optional one) under ``name``."""
        self._check_name(name, "parameter", self._parameters)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{type(self).__name__}.register_parameter: cannot assign "
                            f"{_kind(param)} to parameter {name!r} (nn.Parameter or None "
                            "required)")
        if param is not None:
            param = _registered(_hooks.PARAMETER_REGISTRATION_HOOKS, self, name, param)
        self._parameters[name] = param
        _STRUCTURE[0] += 1

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """A tensor that is state but not trained (e.g. batch norm's running mean); one that
        is not ``persistent`` stays out of ``state_dict``."""
        self._check_name(name, "buffer", self._buffers)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"{type(self).__name__}.register_buffer: cannot assign "
                            f"{_kind(tensor)} to buffer {name!r} (Tensor or None required)")
        tensor = _registered(_hooks.BUFFER_REGISTRATION_HOOKS, self, name, tensor)
        self._buffers[name] = tensor
        _STRUCTURE[0] += 1
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Add ``module`` (or None) as a child under ``name``."""
        self._check_name(name, "module", self._modules)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.add_module: {_kind(module)} is not a Module "
                            f"(for {name!r})")
        self._modules[name] = _registered(_hooks.MODULE_REGISTRATION_HOOKS, self, name, module)
        _STRUCTURE[0] += 1

    # --- traversal ------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", memo: set | None = None,
                      remove_duplicate: bool = True) -> Iterator:
        """(dotted path, module) for this module and every submodule, depth first; a module
        reachable by two paths appears once unless ``remove_duplicate=False`` (PyTorch's)."""
        if remove_duplicate:
            memo = set() if memo is None else memo
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo,
                                           remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator:
        """(name, child) pairs; a child registered under two names is listed once, under the
        first (PyTorch's)."""
        seen: set = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def get_submodule(self, target: str) -> Module:
        """The submodule at dotted path ``target`` (``""``: this module), as in PyTorch; an
        AttributeError names the first part of the path that does not exist."""
        m = self
        for part in target.split(".") if target else ():
            sub = m._modules.get(part)
            if sub is None:
                raise AttributeError(f"get_submodule: {type(m).__name__} has no submodule "
                                     f"{part!r} (looking for {target!r})")
            m = sub
        return m

    def _named(self, store: str, prefix: str, recurse: bool,
               remove_duplicate: bool = True) -> Iterator:
        seen = set()
        mods = self.named_modules(prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for mp, m in mods:
            for name, t in getattr(m, store).items():
                if t is None or (remove_duplicate and id(t) in seen):
                    continue
                seen.add(id(t))
                yield (f"{mp}.{name}" if mp else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator:
        """(dotted name, Parameter) pairs; a parameter shared by two layers (or a module
        reachable by two paths) appears once unless ``remove_duplicate=False``."""
        yield from self._named("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator:
        yield from self._named("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters()
                   if p.requires_grad or not trainable_only)

    # --- modes, devices, gradients --------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, batch norm uses batch statistics), set through each
        child's own ``train`` so that a subclass overriding it (LoRA's merge) sees the switch."""
        if not isinstance(mode, bool):
            raise ValueError(f"Module.train: training mode is expected to be boolean, got "
                             f"{type(mode).__name__}")
        object.__setattr__(self, "training", mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze every parameter in this subtree."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    @effect  # one replayed step under nodegrad.jit
    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                g = p.grad
                g.node = None  # a gradient in a graph (create_graph=True) is detached first,
                g.requires_grad = False  # then zeroed in place, as PyTorch's
                g._data[...] = 0

    def to(self, device=None, dtype=None, non_blocking: bool = False, *,
           memory_format=None) -> Module:
        """Move (and/or cast) parameters and buffers in place; Parameter objects are kept.
        ``model.to(tensor)`` takes the tensor's device and dtype; PyTorch's ``non_blocking`` and
        ``memory_format`` (``channels_last``) are accepted, as arrays here stay C-ordered.
        A complex dtype casts float and complex tensors (PyTorch's rule); a float dtype casts
        float tensors only: complex ones keep their imaginary parts, which PyTorch drops.
        Gradients are moved and cast along with their parameters, as PyTorch's."""
        if memory_format is not None:
            check_layout("Module.to", memory_format=memory_format)
        if isinstance(device, Tensor) and dtype is None:
            device, dtype = device.device, device.dtype
        if isinstance(device, B.np.dtype | type) and dtype is None:
            device, dtype = None, device
        be = None if device is None else B.get_backend(device)
        dt = None if dtype is None else B.as_dtype(dtype)
        if dt is not None and not B.is_inexact(dt):
            raise TypeError("nn.Module.to only accepts floating point or complex dtypes, but got "
                            f"desired dtype={dt}")

        def moved(d):
            if be is not None and B.backend_of(d) is not be:
                d = be.asarray(B.backend_of(d).to_host(d))
            if dt is not None and (B.is_float(d.dtype)
                                   or (d.dtype.kind == "c" and dt.kind == "c")):
                d = B.cast(d, dt)
            return d

        for t in list(self.parameters()) + list(self.buffers()):
            d = moved(t._data)
            if d is not t._data:
                t._data = d
                t._bump()
                if t.grad is not None:  # PyTorch's _apply moves the gradient with it
                    g = moved(t.grad._data)
                    if g is not t.grad._data:
                        t.grad = Tensor._of(g)
        return self

    def cuda(self, device: int = 0) -> Module:
        return self.to(f"cuda:{device}")

    def cpu(self) -> Module:
        return self.to("cpu")

    def share_memory(self) -> Module:
        """Move the parameters and buffers into shared memory (``share_memory_``), as PyTorch's:
        processes started afterwards update one model (A3C's shared model)."""
        for t in [*self.parameters(), *self.buffers()]:
            t.share_memory_()
        return self

    def float(self) -> Module:
        return self.to(dtype=B.float32)

    def double(self) -> Module:
        return self.to(dtype=B.float64)

    def half(self) -> Module:
        return self.to(dtype=B.float16)

    def bfloat16(self) -> Module:
        """Cast floating parameters and buffers to bfloat16 (float32's exponent range, 8 bits
        of precision), as PyTorch's ``Module.bfloat16``."""
        return self.to(dtype=B.bfloat16)

    def type(self, dst_type) -> Module:
        """Cast every parameter and buffer (integer ones included) and every gradient to
        ``dst_type``, as PyTorch's ``Module.type``; a parameter that requires grad cannot
        take an integer dtype."""
        for t in list(self.parameters()) + list(self.buffers()):
            with no_grad():
                d = t.type(dst_type)._data
            if d.dtype == t._data.dtype:
                continue
            if t.requires_grad and not B.is_inexact(d.dtype):
                raise RuntimeError("data set to a tensor that requires gradients must be floating "
                                   f"point or complex dtype (Module.type to {d.dtype})")
            t._data = d
            t._bump()
            if t.grad is not None:
                with no_grad():
                    t.grad = Tensor._of(t.grad.type(dst_type)._data)
        return self

    def to_empty(self, *, device=None, recurse: bool = True) -> Module:
        """PyTorch moves storage to ``device`` without its values; here the values come along
        (there are no meta tensors to move from), which ``reset_parameters`` may then renew."""
        return self.to(device)

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every submodule, children before their parent and this module last
        (PyTorch's post-order, so initialisers draw their random numbers in its order); a
        child listed twice by one parent is visited once."""
        seen: set = set()
        for m in self._modules.values():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                m.apply(fn)
        fn(self)
        return self

    # --- state ----------------------------------------------------------------------------
    def state_dict(self, *, destination: dict | None = None, prefix: str = "",
                   keep_vars: bool = False) -> OrderedDict:
        """Parameters and persistent buffers by dotted name (detached and sharing memory;
        the tensors themselves with ``keep_vars``), each name after ``prefix``, in PyTorch's
        order (each module's parameters, then its buffers). A tensor shared by two names (tied
        weights, a module under two names) is listed under both, as PyTorch lists it (the
        entries share memory; :func:`nodegrad.save` writes it once), and
        :meth:`load_state_dict` also takes a state dict that names it once. Every module's
        state-dict pre-hooks run first; its post-hooks run once its own and its submodules'
        entries are in (so what they add sits there, as in PyTorch), once per module."""
        out = OrderedDict() if destination is None else destination
        if destination is None:
            out._metadata = OrderedDict()  # each module's local metadata, by path
        meta = getattr(out, "_metadata", None)
        for mp, m in self.named_modules():
            for hook in m._state_dict_pre_hooks:
                hook(m, _join(prefix, mp), keep_vars)
        views: dict = {}  # one detached tensor per shared tensor, so the entries share it
        open_: list = []  # (depth, path, module) whose subtree is still being written
        posted: set = set()
        for mp, m in self.named_modules(remove_duplicate=False):  # each module's parameters,
            depth = mp.count(".") + 1 if mp else 0
            while open_ and open_[-1][0] >= depth:
                _post_state_dict(out, prefix, posted, *open_.pop()[1:])
            open_.append((depth, mp, m))
            if meta is not None:
                meta[_join(prefix, mp)[:-1]] = {"version": m._version}
            if type(m)._save_to_state_dict is not Module._save_to_state_dict:
                m._save_to_state_dict(out, _join(prefix, mp), keep_vars)  # a subclass's own
                continue
            for name, t in (*m._parameters.items(), *(  # then its buffers, as PyTorch orders
                    (n, b) for n, b in m._buffers.items() if n not in m._non_persistent)):
                if t is not None:
                    if not keep_vars:
                        if id(t) not in views:
                            views[id(t)] = t.detach()
                        t = views[id(t)]
                    out[_join(prefix, mp) + name] = t
            if type(m).get_extra_state is not Module.get_extra_state:
                out[_join(prefix, mp) + _EXTRA] = m.get_extra_state()
        while open_:
            _post_state_dict(out, prefix, posted, *open_.pop()[1:])
        return out

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        """PyTorch's per-module saving step, for a subclass to override (to add or change its
        entries, calling ``super()``): this module's own parameters, then its persistent
        buffers (detached unless ``keep_vars``), then its extra state, under ``prefix``."""
        for name, t in (*self._parameters.items(), *(
                (n, b) for n, b in self._buffers.items() if n not in self._non_persistent)):
            if t is not None:
                destination[prefix + name] = t if keep_vars else t.detach()
        if type(self).get_extra_state is not Module.get_extra_state:
            destination[prefix + _EXTRA] = self.get_extra_state()

    def _all_state_names(self) -> Iterator:
        """Every (name, tensor) of the state under every path, duplicates included."""
        for mp, m in self.named_modules(remove_duplicate=False):
            for name, t in m._parameters.items():
                if t is not None:
                    yield _join("", mp) + name, t
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    yield _join("", mp) + name, b

    def _state_keys(self) -> Iterator[str]:
        """The names :meth:`state_dict` gives, in its order, without touching any value."""
        for mp, m in self.named_modules(remove_duplicate=False):
            for name, t in m._parameters.items():
                if t is not None:
                    yield _join("", mp) + name
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    yield _join("", mp) + name
            if type(m).get_extra_state is not Module.get_extra_state:
                yield _join("", mp) + _EXTRA

    def _by_reporter(self, keys: list[str]) -> list[str]:
        """Unexpected ``keys`` in PyTorch's order: by the module whose prefix they fall under
        (modules in order), its ``_extra_state`` first, then in the state dict's order."""
        paths = {mp: i for i, (mp, _) in enumerate(self.named_modules(remove_duplicate=False))}

        def place(item):
            pos, k = item
            m, path, parts = self, "", k.split(".")
            while len(parts) > 1 and m._modules.get(parts[0]) is not None:
                m, path = m._modules[parts[0]], f"{path}.{parts[0]}" if path else parts[0]
                parts = parts[1:]
            return paths.get(path, len(paths)), parts != [_EXTRA], pos

        return [k for _, k in sorted(enumerate(keys), key=place)]

    def _optional_keys(self, metadata: dict | None = None) -> set[str]:
        """State names a checkpoint may lack: batch norm's ``num_batches_tracked`` (PyTorch
        checkpoints before 0.4.1 lack it), unless the checkpoint's ``metadata`` gives the
        module's current version (its format has them), and the second names of shared tensors
        (which state dicts before PyTorch's form listed once); loading keeps their values."""
        def old(mp: str, m: Module) -> bool:
            version = (metadata or {}).get(mp, {}).get("version")
            return not (isinstance(version, int) and isinstance(m._version, int)
                        and version >= m._version)

        keys = {f"{mp}.{n}" if mp else n for mp, m in self.named_modules() if old(mp, m)
                for n in m._optional_buffers if m._buffers.get(n) is not None}
        seen: set = set()
        for k, t in self._all_state_names():
            if id(t) in seen:
                keys.add(k)
            seen.add(id(t))
        return keys

    def load_state_dict(self, state_dict, strict: bool = True,
                        assign: bool = False) -> IncompatibleKeys:
        """Copy values in by name. Returns ``(missing_keys, unexpected_keys)``.

        With ``assign`` the given tensors become the module's own instead (no copy, their
        dtype and device kept, as PyTorch's): a plain tensor for a parameter is wrapped in a
        Parameter, a Parameter is taken as it is, either with the old parameter's
        ``requires_grad``. A tensor tied under two names, given under one, stays tied.

        Nothing is copied when a shape differs, or, with ``strict``, when names are missing
        or unexpected: one error lists all of them. Load pre-hooks may rename keys first; when
        a module has load post-hooks, the matching values are loaded and the post-hooks run
        (they may clear the lists) before ``strict`` judges what is left, as in PyTorch."""
        metadata = getattr(state_dict, "_metadata", None)
        state_dict = OrderedDict(state_dict)  # hooks may edit it; the caller's stays as it was
        if metadata is not None:
            state_dict._metadata = metadata
        mods = list(self.named_modules())
        missing, unexpected, errors = [], [], []
        for mp, m in mods:
            local = {} if metadata is None else metadata.get(mp, {})  # as state_dict saved it
            for hook in list(m._load_state_dict_pre_hooks):
                hook(m, state_dict, _join("", mp), local, strict, missing, unexpected, errors)
            if type(m)._load_from_state_dict is not Module._load_from_state_dict:
                m._load_from_state_dict(state_dict, _join("", mp), local, strict, missing,
                                        unexpected, errors)
        own = OrderedDict(self.named_parameters())  # after the hooks: a lazy layer has grown
        for mp, m in mods:
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    own[f"{mp}.{name}" if mp else name] = b
        optional = self._optional_keys(metadata)  # absent from older checkpoints: kept as they are
        # the other names of shared tensors (tied weights, a module under two names), which
        # PyTorch's state dicts list as well: loaded when given, never required
        canon = {id(t) for t in own.values()}
        for k, t in self._all_state_names():
            if k not in own and id(t) in canon:
                own[k] = t
                optional.add(k)
        extra = {_join("", mp) + _EXTRA: m for mp, m in self.named_modules(remove_duplicate=False)
                 if type(m).set_extra_state is not Module.set_extra_state}
        rank = {k: i for i, k in enumerate(self._state_keys())}  # PyTorch's order: by module
        missing += sorted([k for k in own if k not in state_dict and k not in optional]
                          + [k for k in extra if k not in state_dict],
                          key=lambda k: rank.get(k, len(rank)))
        unexpected += self._by_reporter([k for k in state_dict
                                         if k not in own and k not in extra])
        bad = []
        for k, t in own.items():
            if k in state_dict:
                v = state_dict[k]
                if not isinstance(v, Tensor) and not B.is_array(v):
                    errors.append(f'While copying the parameter named "{k}", expected a Tensor '
                                  f"or Tensor-like object from checkpoint but received {type(v)}")
                    continue
                shape = tuple(v.shape)
                if shape != tuple(t.shape):
                    # PyTorch's words ("size mismatch for k"), which scripts test for
                    bad.append(f"size mismatch for {k}: checkpoint {shape} vs model "
                               f"{tuple(t.shape)}")
        post = any(m._load_state_dict_post_hooks for _, m in mods)
        if bad or errors or (strict and not post and (missing or unexpected)):
            _refuse(self, missing, unexpected, bad, errors)
        if assign:
            self._assign_state(own, state_dict)
        else:
            traced = modes().jit is not None
            with no_grad():
                for k, t in own.items():
                    if k in state_dict:
                        v = state_dict[k]
                        be = B.backend_of(t._data)
                        if traced and isinstance(v, Tensor) and B.backend_of(v._data) is be:
                            # recorded: each replay copies the values again (a target network
                            # synced inside a jitted step)
                            t._assign("load_state_dict", v)
                            continue
                        v = v._data if isinstance(v, Tensor) else v
                        if B.is_array(v) and B.backend_of(v) is not be:
                            v = B.backend_of(v).to_host(v)
                        if traced:
                            t._assign("load_state_dict", be.asarray(v, dtype=t.dtype))
                            continue
                        t._data[...] = be.asarray(v, dtype=t.dtype)
                        t._bump()
        for k, m in extra.items():
            if k in state_dict:
                m.set_extra_state(state_dict[k])
        result = IncompatibleKeys(missing, unexpected)
        for _, m in mods:
            for hook in m._load_state_dict_post_hooks:
                if hook(m, result) is not None:
                    raise RuntimeError("load_state_dict post-hook: edit incompatible_keys in "
                                       "place and return None (as PyTorch requires)")
        if strict and (missing or unexpected):
            _refuse(self, missing, unexpected, [], [])
        return result

    def _load_from_state_dict(self, state_dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        """PyTorch's per-module loading step, which subclasses override to rename or drop
        their keys (``prefix + name``) in ``state_dict`` before calling ``super()``. Here
        ``load_state_dict`` calls an override once per module, after that module's load
        pre-hooks, then loads the whole tree itself; this base step does nothing."""

    def _assign_state(self, own: dict, state_dict: dict) -> None:
        """``load_state_dict(assign=True)``: put the given tensors in place of ``own``'s (by
        dotted name). Tied names stay tied: every name of a shared tensor takes the tensor
        given for the first of its names that is given."""
        first: dict = {}
        wrapped: dict = {}  # one Parameter per given tensor, however many names give it
        for k, t in own.items():
            if k in state_dict and id(t) not in first:
                v = raw = state_dict[k]
                if id(raw) in wrapped:
                    first[id(t)] = wrapped[id(raw)][1]
                    continue
                if isinstance(t, Parameter):  # requires_grad stays the module's (PyTorch's)
                    if isinstance(v, Parameter):
                        v.requires_grad = t.requires_grad
                    else:
                        v = Parameter(v, t.requires_grad)
                elif not isinstance(v, Tensor) or isinstance(v, Parameter):
                    v = Tensor._of(v._data if isinstance(v, Tensor) else v)
                wrapped[id(raw)] = (raw, v)  # (raw kept alive so its id stays its own)
                first[id(t)] = v
        for k, t in own.items():
            v = first.get(id(t))
            if v is not None:
                mp, _, leaf = k.rpartition(".")
                m = self.get_submodule(mp)
                (m._parameters if leaf in m._parameters else m._buffers)[leaf] = v
        if first:
            _STRUCTURE[0] += 1

    def get_extra_state(self) -> Any:
        """Override to put any picklable value in :meth:`state_dict` (under ``_extra_state``
        after this module's tensors), given back to :meth:`set_extra_state` on loading."""
        raise RuntimeError("Reached a code path in Module.get_extra_state() that should never be "
                           "called; override get_extra_state together with set_extra_state")

    def set_extra_state(self, state: Any) -> None:
        """Override to take back what :meth:`get_extra_state` returned, when a state dict is
        loaded; a module overriding it expects an ``_extra_state`` entry (missing otherwise)."""
        raise RuntimeError("Reached a code path in Module.set_extra_state() that should never be "
                           "called; override set_extra_state together with get_extra_state")

    # --- lookups PyTorch has ------------------------------------------------------------------
    def get_parameter(self, target: str) -> Parameter:
        """The parameter at dotted path ``target`` (``"0.weight"``)."""
        mod, _, name = target.rpartition(".")
        m = self.get_submodule(mod) if mod else self
        p = m._parameters.get(name)
        if p is None:
            raise AttributeError(f"get_parameter: {type(m).__name__} has no parameter "
                                 f"{name!r} (path {target!r})")
        return p

    def get_buffer(self, target: str) -> Tensor:
        """The buffer at dotted path ``target`` (``"bn.running_mean"``)."""
        mod, _, name = target.rpartition(".")
        m = self.get_submodule(mod) if mod else self
        b = m._buffers.get(name)
        if b is None:
            raise AttributeError(f"get_buffer: {type(m).__name__} has no buffer {name!r} "
                                 f"(path {target!r})")
        return b

    def register_module(self, name: str, module: Module | None) -> None:
        """PyTorch's other name for ``add_module``."""
        self.add_module(name, module)

    def set_submodule(self, target: str, module: Module, strict: bool = False) -> None:
        """Replace (or, unless ``strict``, add) the submodule at dotted path ``target``."""
        if not isinstance(module, Module):
            raise TypeError(f"set_submodule: expected a Module, got {type(module).__name__}")
        parent, _, name = target.rpartition(".")
        m = self.get_submodule(parent) if parent else self
        if strict and name not in m._modules:
            raise AttributeError(f"set_submodule: {type(m).__name__} has no submodule "
                                 f"{name!r} (strict=True)")
        m._modules[name] = _registered(_hooks.MODULE_REGISTRATION_HOOKS, m, name, module)

    # --- calling --------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        compiled = self.__dict__.get("_compiled_call")  # Module.compile() (nodegrad._compile)
        if compiled is not None:
            return compiled(self, args, kwargs)
        pre, post = self._forward_pre_hooks, self._forward_hooks
        if _GLOBAL_PRE_HOOKS:  # every module's hooks (register_module_...) run first
            pre = _GLOBAL_PRE_HOOKS + pre
        if _GLOBAL_HOOKS:
            post = _GLOBAL_HOOKS + post
        for hook in pre:
            if type(hook) is _Hook:
                r = hook.fn(self, args, kwargs) if hook.with_kwargs else hook.fn(self, args)
                if r is not None and hook.with_kwargs:
                    args, kwargs = _pair(r, "forward pre-hook with kwargs")
                    continue
            else:
                r = hook(self, args)
            if r is not None:
                args = r if isinstance(r, tuple) else (r,)
        call = None
        if (self._backward_hooks or self._backward_pre_hooks or _hooks.GLOBAL_BACKWARD_HOOKS
                or _hooks.GLOBAL_BACKWARD_PRE_HOOKS) and modes().grad_enabled:
            rec = modes().jit
            if rec is not None and not rec.graph_breaks:
                raise NotImplementedError(
                    f"{type(self).__name__}: backward hooks run Python during backward, which "
                    "ng.jit cannot capture; remove them or run under ng.disable_jit()")
            if rec is not None and rec.fallback is None:  # ng.compile: a graph break
                rec.fallback = (f"{type(self).__name__} has backward hooks, which run Python "
                                "during backward: the call runs eagerly")
            args, call = _hooks.wrap_inputs(self, args)
        try:
            out = self.forward(*args, **kwargs)
        except Exception:
            for hook in post:
                if type(hook) is _Hook and hook.always_call:
                    try:
                        hook.fn(self, args, kwargs, None) if hook.with_kwargs else hook.fn(
                            self, args, None)
                    except Exception as e:  # forward's error wins; the hook's is a warning
                        warnings.warn("module forward hook with ``always_call=True`` raised an "
                                      "exception that was silenced as another error was raised "
                                      f"in forward: {e}", stacklevel=2)
            raise
        for hook in post:
            if type(hook) is _Hook:
                r = (hook.fn(self, args, kwargs, out) if hook.with_kwargs
                     else hook.fn(self, args, out))
            else:
                r = hook(self, args, out)
            if r is not None:
                out = r
            elif modes().jit is not None:
                _for_effects(hook)
        if call is not None:
            out = _hooks.wrap_outputs(out, call)
        return out

    def _add_hook(self, store: str, hook: Callable, prepend: bool, entry=None) -> RemovableHandle:
        hooks = getattr(self, store)
        entry = hook if entry is None else entry
        hooks.insert(0, entry) if prepend else hooks.append(entry)
        _STRUCTURE[0] += 1  # a jitted module's forward changes with its hooks (_HookHandle too)
        return _HookHandle(hooks, entry)

    def register_forward_hook(self, hook: Callable, *, prepend: bool = False,
                              with_kwargs: bool = False,
                              always_call: bool = False) -> RemovableHandle:
        """``hook(module, args, output)`` after each forward (``hook(module, args, kwargs,
        output)`` with ``with_kwargs``); a returned value replaces the output. ``prepend`` runs
        it before the hooks already there; ``always_call`` also runs it (with output None)
        when forward raises."""
        entry = _Hook(hook, with_kwargs, always_call) if with_kwargs or always_call else None
        return self._add_hook("_forward_hooks", hook, prepend, entry)

    def register_forward_pre_hook(self, hook: Callable, *, prepend: bool = False,
                                  with_kwargs: bool = False) -> RemovableHandle:
        """``hook(module, args)`` before each forward; a returned tuple replaces the args.
        With ``with_kwargs``: ``hook(module, args, kwargs)`` returning ``(args, kwargs)``."""
        entry = _Hook(hook, with_kwargs, False) if with_kwargs else None
        return self._add_hook("_forward_pre_hooks", hook, prepend, entry)

    def register_full_backward_pre_hook(self, hook: Callable, *,
                                        prepend: bool = False) -> RemovableHandle:
        """``hook(module, grad_output)`` once the gradients of a call's outputs are known,
        before they enter the module; a returned tuple replaces ``grad_output``. Entries are
        None for outputs that got no gradient."""
        return self._add_hook("_backward_pre_hooks", hook, prepend)

    def register_full_backward_hook(self, hook: Callable, *,
                                    prepend: bool = False) -> RemovableHandle:
        """``hook(module, grad_input, grad_output)`` once the gradients of a call's positional
        tensor inputs are known; a returned tuple replaces ``grad_input``. Entries are None
        for inputs that need no gradient (e.g. the data fed to the first layer)."""
        return self._add_hook("_backward_hooks", hook, prepend)

    def register_backward_hook(self, hook: Callable) -> RemovableHandle:
        """PyTorch's deprecated form: here the same as ``register_full_backward_hook``."""
        warnings.warn("register_backward_hook is deprecated (as in PyTorch); it registers a "
                      "full backward hook here: use register_full_backward_hook",
                      FutureWarning, stacklevel=2)
        return self.register_full_backward_hook(hook)

    def register_state_dict_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(module, prefix, keep_vars)`` before ``state_dict`` collects this module."""
        return self._add_hook("_state_dict_pre_hooks", hook, False)

    def register_state_dict_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(module, state_dict, prefix, local_metadata)`` after ``state_dict`` has
        collected the whole model; it may edit ``state_dict`` in place."""
        return self._add_hook("_state_dict_post_hooks", hook, False)

    def register_load_state_dict_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
        unexpected_keys, error_msgs)`` before ``load_state_dict`` checks the names; it may
        edit ``state_dict`` in place (rename old keys, say). Missing and unexpected keys it
        appends are reported with the others."""
        return self._add_hook("_load_state_dict_pre_hooks", hook, False)

    def _register_load_state_dict_pre_hook(self, hook: Callable,
                                           with_module: bool = False) -> RemovableHandle:
        """PyTorch's older form of :meth:`register_load_state_dict_pre_hook`, still common in
        checkpoint-converting code: ``hook`` takes no module argument unless ``with_module``."""
        if with_module:
            return self.register_load_state_dict_pre_hook(hook)
        return self.register_load_state_dict_pre_hook(lambda module, *args: hook(*args))

    def register_load_state_dict_post_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(module, incompatible_keys)`` after ``load_state_dict``; it may clear the
        lists of ``incompatible_keys`` (missing_keys, unexpected_keys) in place."""
        return self._add_hook("_load_state_dict_post_hooks", hook, False)

    # --- display --------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        """PyTorch's layout (``extra_repr`` inline when it is one line and there are no
        children, else one line each), followed by the parameter count."""
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        children = [f"({name}): " + repr(m).replace("\n", "\n  ")
                    for name, m in self._modules.items()]
        lines = extra_lines + children
        body = f"{type(self).__name__}("
        if len(extra_lines) == 1 and not children:
            body += extra
        elif lines:
            body += "\n  " + "\n  ".join(lines) + "\n"
        n = Module.num_parameters(self)
        if not n:
            return body + ")"
        return body + ")" + (f"  # {n:,} parameters in all" if children else
                             f"  # {n:,} parameters")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def __deepcopy__(self, memo):
        """A copy whose hooks are deep-copied too, as PyTorch's: a hook that is a bound method
        of the module or of its owner (BYOL's ``NetWrapper._hook``) is bound to the copies, so
        a copied model fills the copied owner's state; plain functions stay shared."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new


def _drop(name: str, *stores) -> None:
    """Remove ``name`` from each of ``stores`` (dicts) that holds it."""
    for store in stores:
        store.pop(name, None)


def _kind(value) -> str:
    """How an error names a value of the wrong kind: 'a Tensor of float32', 'an int'..."""
    if isinstance(value, Tensor):
        return f"a {type(value).__name__} of {value.dtype}"
    t = type(value)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} object"


def _is_module_seq(v) -> bool:
    return isinstance(v, list | tuple) and len(v) > 0 and all(isinstance(m, Module) for m in v)


def _is_module_map(v) -> bool:
    return (isinstance(v, dict) and len(v) > 0
            and all(isinstance(m, Module) for m in v.values()))


# --- functional use ---------------------------------------------------------------------------
def module_device(module: Module) -> str:
    """The device of ``module``'s first parameter (or buffer); "cpu" for a module of neither.
    Where a function makes the inputs it runs ``module`` on, it makes them there."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return "cpu"


def functional_call(module: Module, params: dict, *args, **kwargs):
    """Call ``module`` with ``params`` (dotted name -> tensor) in place of its own tensors:
    the short form of :func:`nodegrad.func.functional_call`, whose rules it follows (tied
    weights, names the module lacks, the module restored whatever happens)."""
    from ..func.module_state import functional_call as call  # (func imports nn lazily too)

    return call(module, params, args, kwargs)


def _flatten_module(m: Module):
    names = [n for n, _ in m.named_parameters()]
    return [p for _, p in m.named_parameters()], (m, tuple(names))


def _unflatten_module(aux, leaves):
    m, names = aux
    new = copy.copy(m)
    clones = {}
    for mp, sub in m.named_modules():
        c = new if mp == "" else copy.copy(sub)
        object.__setattr__(c, "_parameters", OrderedDict(sub._parameters))
        object.__setattr__(c, "_modules", OrderedDict(sub._modules))
        clones[mp] = c
    for mp, c in clones.items():
        for k in list(c._modules):
            key = f"{mp}.{k}" if mp else k
            if key in clones:
                c._modules[k] = clones[key]
    for name, leaf in zip(names, leaves):
        mp, _, k = name.rpartition(".")
        clones[mp]._parameters[k] = leaf
    return new


register_pytree_node(Module, _flatten_module, _unflatten_module)


class Buffer(Tensor):
    """A tensor that, assigned to a Module attribute, registers as a buffer (PyTorch's
    ``nn.Buffer``): state that is saved but not trained, like batch norm's running mean."""

    __slots__ = ("persistent",)

    def __init__(self, data, *, persistent: bool = True):
        if isinstance(data, Tensor):
            data = data._data
        elif not B.is_array(data):
            data = B.np.asarray(data)
        super().__init__(data, None, False)
        self.persistent = persistent


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` found: names the model has and the dict lacks, and the reverse."""

    missing_keys: list
    unexpected_keys: list

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"  # what PyTorch prints
        return (f"IncompatibleKeys(missing_keys={self.missing_keys!r}, "
                f"unexpected_keys={self.unexpected_keys!r})")

    __str__ = __repr__


def _for_effects(hook) -> None:
    """Under a jit trace, a forward hook that returned nothing ran for its side effects (a
    layer's output stored in a dict, as feature extraction does): a replay would skip it and
    leave the traced call's values there, so the signature runs eagerly instead. Hooks whose
    effect a replay keeps say so with a true ``replay_safe`` attribute."""
    fn = hook.fn if type(hook) is _Hook else hook
    rec = modes().jit
    if rec is not None and rec.fallback is None and not getattr(fn, "replay_safe", False):
        name = getattr(fn, "__qualname__", type(fn).__name__)
        rec.fallback = (f"the forward hook {name} returns None, so it runs for its side "
                        "effects, which a replay would skip")


class _Hook:
    """A forward (pre-)hook registered with PyTorch's ``with_kwargs``/``always_call``."""

    __slots__ = ("fn", "with_kwargs", "always_call")

    def __init__(self, fn: Callable, with_kwargs: bool, always_call: bool) -> None:
        self.fn, self.with_kwargs, self.always_call = fn, with_kwargs, always_call

    def __eq__(self, other) -> bool:
        return self is other or other is self.fn

    __hash__ = object.__hash__


class _HookHandle(RemovableHandle):
    """A module hook's handle: removing the hook counts as a change of structure, as adding
    it does (a jitted module reads its hooks again, see ``_STRUCTURE``)."""

    def remove(self) -> None:
        super().remove()
        _STRUCTURE[0] += 1


class HookList(list):
    """A module's hooks of one kind, in the order they run: a list (iterating gives the
    hooks), whose ``values()`` gives them too, as PyTorch code reads its OrderedDict of
    hooks (``for hook in module._forward_pre_hooks.values()``, pruning's tutorial)."""

    __slots__ = ()

    def values(self):
        return iter(list(self))


_HOOK_LISTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_pre_hooks", "_state_dict_post_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


_EXTRA = "_extra_state"  # the state-dict key of a module's get_extra_state()
_GLOBAL_PRE_HOOKS: list = []  # forward pre-hooks and forward hooks that every module runs
_GLOBAL_HOOKS: list = []


def register_module_forward_pre_hook(hook: Callable) -> RemovableHandle:
    """``hook(module, args)`` before every module's forward, before its own pre-hooks (as
    ``torch.nn.modules.module.register_module_forward_pre_hook``); a returned value replaces
    the args. For instrumenting a whole program: it slows every module call."""
    if not callable(hook):
        raise TypeError(f"register_module_forward_pre_hook: expected a function, got "
                        f"{type(hook).__name__}")
    _GLOBAL_PRE_HOOKS.append(hook)
    _STRUCTURE[0] += 1
    return _HookHandle(_GLOBAL_PRE_HOOKS, hook)


def register_module_forward_hook(hook: Callable, *, with_kwargs: bool = False,
                                 always_call: bool = False) -> RemovableHandle:
    """``hook(module, args, output)`` after every module's forward, before its own hooks (as
    ``torch.nn.modules.module.register_module_forward_hook``); a returned value replaces the
    output. ``with_kwargs`` and ``always_call`` as in :meth:`Module.register_forward_hook`."""
    if not callable(hook):
        raise TypeError(f"register_module_forward_hook: expected a function, got "
                        f"{type(hook).__name__}")
    entry = _Hook(hook, with_kwargs, always_call) if with_kwargs or always_call else hook
    _GLOBAL_HOOKS.append(entry)
    _STRUCTURE[0] += 1
    return _HookHandle(_GLOBAL_HOOKS, entry)


def _registered(hooks: list, module: Module, name: str, value):
    """Run the global registration ``hooks``: each may return a value that replaces ``value``."""
    for hook in list(hooks):
        r = hook(module, name, value)
        if r is not None:
            value = r
    return value


def _add_global(store: list, hook: Callable, what: str) -> RemovableHandle:
    if not callable(hook):
        raise TypeError(f"{what}: expected a function, got {type(hook).__name__}")
    store.append(hook)
    _STRUCTURE[0] += 1
    return _HookHandle(store, hook)


def register_module_buffer_registration_hook(hook: Callable) -> RemovableHandle:
    """``hook(module, name, buffer)`` each time any module registers a buffer; a returned
    value is registered instead (PyTorch's)."""
    return _add_global(_hooks.BUFFER_REGISTRATION_HOOKS, hook,
                       "register_module_buffer_registration_hook")


def register_module_parameter_registration_hook(hook: Callable) -> RemovableHandle:
    """``hook(module, name, param)`` each time any module registers a parameter; a returned
    value is registered instead (PyTorch's)."""
    return _add_global(_hooks.PARAMETER_REGISTRATION_HOOKS, hook,
                       "register_module_parameter_registration_hook")


def register_module_module_registration_hook(hook: Callable) -> RemovableHandle:
    """``hook(module, name, submodule)`` each time any module registers a submodule; a
    returned value is registered instead (PyTorch's)."""
    return _add_global(_hooks.MODULE_REGISTRATION_HOOKS, hook,
                       "register_module_module_registration_hook")


def register_module_full_backward_pre_hook(hook: Callable) -> RemovableHandle:
    """A full backward pre-hook (:meth:`Module.register_full_backward_pre_hook`) of every
    module, run before the module's own."""
    return _add_global(_hooks.GLOBAL_BACKWARD_PRE_HOOKS, hook,
                       "register_module_full_backward_pre_hook")


def _backward_kind(full: bool) -> None:
    if _hooks.GLOBAL_BACKWARD_FULL[0] is (not full):
        raise RuntimeError("Cannot use both regular backward hooks and full backward hooks as a "
                           "global Module hook. Please use only one of them.")
    _hooks.GLOBAL_BACKWARD_FULL[0] = full


def register_module_full_backward_hook(hook: Callable) -> RemovableHandle:
    """A full backward hook (:meth:`Module.register_full_backward_hook`) of every module, run
    before the module's own. It cannot be mixed with :func:`register_module_backward_hook`
    (a RuntimeError, as in PyTorch)."""
    _backward_kind(True)
    return _add_global(_hooks.GLOBAL_BACKWARD_HOOKS, hook, "register_module_full_backward_hook")


def register_module_backward_hook(hook: Callable) -> RemovableHandle:
    """PyTorch's deprecated global backward hook: here a full backward hook of every module,
    as :meth:`Module.register_backward_hook` is; it cannot be mixed with
    :func:`register_module_full_backward_hook` (a RuntimeError, as in PyTorch)."""
    _backward_kind(False)
    return _add_global(_hooks.GLOBAL_BACKWARD_HOOKS, hook, "register_module_backward_hook")


def _post_state_dict(out: dict, prefix: str, posted: set, path: str, m: Module) -> None:
    """Run ``m``'s state-dict post-hooks (the first time its subtree is written)."""
    if id(m) in posted:
        return
    posted.add(id(m))
    for hook in m._state_dict_post_hooks:
        if hook(m, out, _join(prefix, path), {"version": m._version}) is not None:
            raise RuntimeError("state_dict post-hook: edit state_dict in place and return None "
                               "(as PyTorch requires)")


def _join(prefix: str, path: str) -> str:
    return prefix + path + "." if path else prefix


def _pair(r, what: str) -> tuple:
    if not (isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], dict)):
        raise TypeError(f"{what}: must return None or (args, kwargs), got {type(r).__name__}")
    args, kwargs = r
    return (args if isinstance(args, tuple) else (args,)), kwargs


class StateDictError(ShapeError, RuntimeError):
    """A state dict that does not fit the module (names missing or unexpected, a shape that
    differs, a value that is not a tensor): a ShapeError, and the RuntimeError PyTorch's
    ``load_state_dict`` raises (so ``except RuntimeError`` catches it as there)."""


def _refuse(module: Module, missing, unexpected, bad, errors) -> None:
    parts = []
    if missing:
        parts.append("missing: " + ", ".join(missing))
    if unexpected:
        parts.append("unexpected: " + ", ".join(unexpected))
    if bad:
        parts.append("shape mismatch: " + "; ".join(bad))
    parts += [str(e) for e in errors]
    raise StateDictError(f"load_state_dict into {type(module).__name__}: " + " | ".join(parts))
