"""Containers: Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict."""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from ...autodiff import modes
from ...tensor import Tensor
from .. import functional as F
from .. import hooks as _hooks
from ..module import _GLOBAL_HOOKS, _GLOBAL_PRE_HOOKS, Module, Parameter
from .activation import ReLU
from .conv import Conv1d, Conv2d, Conv3d
from .linear import Linear


class _Positional(Module):
    """What Sequential and ModuleList share: modules named 0, 1, ... by position, read,
    replaced, removed (the rest numbered again) and popped by position, as PyTorch's."""

    def __setitem__(self, i: int, m: Module) -> None:
        """Replace the module at position ``i`` (``model[-1] = Linear(...)``: a new head)."""
        setattr(self, _key(self, i), _checked(self, m))

    def __delitem__(self, i) -> None:
        """Remove position ``i`` (or a slice); the rest are numbered again from 0."""
        keys = list(self._modules)[i] if isinstance(i, slice) else [_key(self, i)]
        for k in keys:
            delattr(self, k)
        _renumber(self)

    def pop(self, i: int | slice):
        """Remove and return the module (or container of a slice) at ``i``."""
        out = self[i]
        del self[i]
        return out

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(_Positional):
    """Modules applied in order: ``Sequential(Linear(40, 100), ReLU(), Linear(100, 10))``."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict | OrderedDict):
            for name, m in modules[0].items():
                self.add_module(str(name), m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential: item {i} is {type(m).__name__}, not a Module")
                self.add_module(str(i), m)

    def forward(self, x):
        mods = self._modules.values()
        if not _fusing():
            for m in mods:
                x = m(x)
            return x
        held = None  # a plain Linear or convolution, run with the ReLU after it when one follows
        for m in mods:
            if held is not None:
                if _plain(m, ReLU):
                    x = _with_relu(held, x)
                    held = None
                    continue
                x = held(x)
                held = None
            if type(m) in _FUSED and _plain(m, type(m)):
                held = m
            else:
                x = m(x)
        return held(x) if held is not None else x

    def __getitem__(self, i):
        """The module at position ``i``; a slice is a Sequential of those modules under their
        names (as PyTorch's, so a slice's ``state_dict`` keys are the model's)."""
        if isinstance(i, slice):
            return type(self)(OrderedDict(list(self._modules.items())[i]))
        return self._modules[_key(self, i)]

    def append(self, m: Module) -> Sequential:
        self.add_module(str(len(self)), _checked(self, m))
        return self

    def insert(self, index: int, m: Module) -> Sequential:
        """Put ``m`` before position ``index`` (``-len <= index <= len``), as PyTorch's."""
        n = len(self)
        if not -n <= index <= n:
            raise IndexError(f"Sequential.insert: index {index} is out of range for "
                             f"{n} modules")
        ms = list(self._modules.values())
        ms.insert(index + n if index < 0 else index, _checked(self, m))
        _renumber(self, ms)
        return self

    def extend(self, ms: Iterable[Module]) -> Sequential:
        for m in ms:
            self.append(m)
        return self

    def __add__(self, other: Sequential) -> Sequential:
        if not isinstance(other, Sequential):
            raise ValueError("Sequential +: supports only another Sequential, got "
                             f"{type(other).__name__}")
        return Sequential(*self, *other)

    def __iadd__(self, other: Sequential) -> Sequential:
        if not isinstance(other, Sequential):
            raise ValueError("Sequential +=: supports only another Sequential, got "
                             f"{type(other).__name__}")
        return self.extend(list(other))

    def __mul__(self, n: int) -> Sequential:
        """The modules repeated ``n`` times (the same module objects, as PyTorch's)."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"Sequential *: the factor must be an int, got {type(n).__name__}")
        if n <= 0:
            raise ValueError(f"Sequential *: the factor must be positive, got {n}")
        return Sequential(*(list(self) * n))

    __rmul__ = __mul__

    def __imul__(self, n: int) -> Sequential:
        _renumber(self, list(self * n))
        return self


def _key(c: Module, i) -> str:
    """The name of a container's module at position ``i`` (negative counts from the end)."""
    i = operator.index(i)
    n = len(c._modules)
    if not -n <= i < n:
        raise IndexError(f"{type(c).__name__}: index {i} is out of range for {n} modules")
    return list(c._modules)[i + n if i < 0 else i]


def _checked(c: Module, m) -> Module:
    if not isinstance(m, Module):
        raise TypeError(f"{type(c).__name__}: expected a Module, got {type(m).__name__}")
    return m


def _renumber(c: Module, ms: list | None = None) -> None:
    """Hold modules ``ms`` (default: the container's own, after a deletion) named 0, 1, ...
    in order."""
    ms = list(c._modules.values()) if ms is None else ms
    c._modules.clear()
    for k, mod in enumerate(ms):
        c.add_module(str(k), mod)


_CONVS = (Conv1d, Conv2d, Conv3d)
_FORWARDS = {Linear: Linear.forward, ReLU: ReLU.forward,
             **{c: (c.forward, c._conv_forward) for c in _CONVS}}
_FUSED = frozenset((Linear,) + _CONVS)  # the layers a following ReLU runs fused with


def _own_forward(cls: type) -> bool:
    """Whether ``cls``'s forward (and a convolution's ``_conv_forward``) is still its own."""
    f = _FORWARDS[cls]
    if type(f) is tuple:
        return cls.forward is f[0] and cls._conv_forward is f[1]
    return cls.forward is f


def _plain(m: Module, cls: type) -> bool:
    """Whether ``m`` is a ``cls`` whose call only runs that class's own forward: no subclass,
    no hooks, no ``forward`` set on the instance or patched on the class. Such a ``Linear`` or
    convolution followed by such a ``ReLU`` runs as one fused op (``F._linear_relu``,
    ``F._conv_relu``: the same values and gradients, one pass less over the product, one node
    less)."""
    return (type(m) is cls and _own_forward(cls)
            and not (m._forward_pre_hooks or m._forward_hooks or m._backward_hooks
                     or m._backward_pre_hooks or "forward" in m.__dict__
                     or "_conv_forward" in m.__dict__
                     or _GLOBAL_PRE_HOOKS or _GLOBAL_HOOKS or _hooks.GLOBAL_BACKWARD_HOOKS
                     or _hooks.GLOBAL_BACKWARD_PRE_HOOKS))


def _fusing() -> bool:
    """Whether layers may be fused here: plain eager mode. A transform, a trace (jit, ONNX
    export) or anomaly mode sees each layer's own ops."""
    md = modes()
    return not (md.traces or md.jit is not None or md.anomaly)


def _with_relu(layer: Module, x):
    """``relu(layer(x))`` as one fused op for a plain layer of :data:`_FUSED`."""
    if type(layer) is Linear:
        return F._linear_relu(x, layer.weight, layer.bias)
    return layer._forward_relu(x)


def linear_relu(layer: Module, x):
    """``layer(x).relu()``, as one fused op where ``layer`` is a plain ``Linear`` in plain eager
    mode (see :class:`Sequential`): for models that write the pair in their own forward."""
    if _plain(layer, Linear) and _fusing():
        return F._linear_relu(x, layer.weight, layer.bias)
    return F.relu(layer(x))


def conv_relu(layer: Module, x):
    """``layer(x).relu()``, as one fused op where ``layer`` is a plain ``Conv1d``, ``Conv2d`` or
    ``Conv3d`` in plain eager mode (see :class:`Sequential`): for models that write the pair in
    their own forward."""
    if type(layer) in _CONVS and _plain(layer, type(layer)) and _fusing():
        return layer._forward_relu(x)
    return F.relu(layer(x))


class ModuleList(_Positional):
    """A list of modules whose parameters are registered."""

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, m: Module) -> ModuleList:
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList: expected a Module, got {type(m).__name__}")
        self.add_module(str(len(self._modules)), m)
        return self

    def insert(self, index: int, m: Module) -> None:
        """Put ``m`` before position ``index`` (negative counts from the end), as list.insert."""
        ms = list(self._modules.values())
        ms.insert(index, m)
        _renumber(self, ms)

    def extend(self, ms: Iterable[Module]) -> ModuleList:
        for m in ms:
            self.append(m)
        return self

    def __getitem__(self, i):
        mods = list(self._modules.values())
        return type(self)(mods[i]) if isinstance(i, slice) else self._modules[_key(self, i)]

    def __iadd__(self, ms: Iterable[Module]) -> ModuleList:
        return self.extend(ms)

    def __add__(self, other: Iterable[Module]) -> ModuleList:
        return ModuleList([*self, *other])

    def __repr__(self) -> str:
        """PyTorch's layout: a run of equal entries prints once, as ``(0-5): 6 x Block(...)``."""
        full = Module.__repr__(self)
        if not self._modules:
            return full
        runs: list[list] = []  # [first index, last index, repr]
        for i, m in enumerate(self._modules.values()):
            r = repr(m)
            if runs and runs[-1][2] == r:
                runs[-1][1] = i
            else:
                runs.append([i, i, r])
        lines = [(f"({a}): " if a == b else f"({a}-{b}): {b - a + 1} x ")
                 + r.replace("\n", "\n  ") for a, b, r in runs]
        tail = full[full.rfind(")") + 1:]  # what Module adds after the body (parameter count)
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)" + tail


class ModuleDict(Module):
    """A dict of modules whose parameters are registered."""

    def __init__(self, modules=None):
        """From a mapping (in its order) or an iterable of (key, module) pairs, as PyTorch's."""
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __setitem__(self, key: str, m: Module) -> None:
        self.add_module(str(key), m)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def pop(self, key: str) -> Module:
        return self._modules.pop(key)

    def update(self, modules) -> None:
        for k, m in (modules.items() if hasattr(modules, "items") else modules):
            self[k] = m

    def clear(self) -> None:
        self._modules.clear()


class ParameterDict(Module):
    """A dict of parameters registered under their keys, as PyTorch's: a tensor stored in it
    becomes a Parameter; any other value (a number, a string, None) is kept as it is, as a
    plain attribute outside ``state_dict``. Keys keep their insertion order."""

    def __init__(self, parameters=None):
        super().__init__()
        self._keys: dict[str, None] = {}
        if parameters is not None:
            self.update(parameters)

    def __setitem__(self, key: str, value) -> None:
        if not isinstance(key, str):
            raise TypeError(f"ParameterDict: keys must be strings, got {type(key).__name__}")
        _store(self, key, value)
        self._keys[key] = None

    def __getitem__(self, key: str):
        if key not in self._keys:
            raise KeyError(key)
        return getattr(self, key)

    def __delitem__(self, key: str) -> None:
        del self._keys[key]
        delattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._keys)

    def keys(self):
        return self._keys.keys()

    def values(self):
        return (self[k] for k in self._keys)

    def items(self):
        return ((k, self[k]) for k in self._keys)

    def get(self, key: str, default=None):
        return self[key] if key in self else default

    def pop(self, key: str):
        v = self[key]
        del self[key]
        return v

    def popitem(self) -> tuple:
        """Remove and return the last inserted (key, value) pair."""
        if not self._keys:
            raise KeyError("popitem(): ParameterDict is empty")
        k = next(reversed(self._keys))
        return k, self.pop(k)

    def setdefault(self, key: str, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def copy(self) -> ParameterDict:
        """A new ParameterDict holding the same values (the same Parameter objects)."""
        return ParameterDict(OrderedDict((k, self[k]) for k in self._keys))

    def fromkeys(self, keys: Iterable[str], default=None) -> ParameterDict:
        """A new ParameterDict with ``keys``, each holding ``default``."""
        return ParameterDict((k, default) for k in keys)

    def __or__(self, other: ParameterDict) -> ParameterDict:
        new = self.copy()
        new.update(other)
        return new

    def __ror__(self, other: ParameterDict) -> ParameterDict:
        new = other.copy()
        new.update(self)
        return new

    def __ior__(self, other: ParameterDict) -> ParameterDict:
        self.update(other)
        return self

    def update(self, parameters) -> None:
        """From an iterable of (key, value) pairs, an OrderedDict or a ParameterDict in their
        order, or from another mapping in sorted key order (PyTorch's rule, so that a plain
        dict gives PyTorch's parameter order)."""
        if isinstance(parameters, OrderedDict | ParameterDict):
            pairs = list(parameters.items())
        elif hasattr(parameters, "items"):
            pairs = sorted(parameters.items())
        else:
            pairs = parameters
        for k, v in pairs:
            self[k] = v

    def clear(self) -> None:
        for k in list(self._keys):
            del self[k]

    def extra_repr(self) -> str:
        """PyTorch's: one line per entry, ``(key): Parameter containing: [type of size AxB]``."""
        return "\n".join(f"  ({k}): " + _entry_repr(p, p.type() if isinstance(p, Tensor)
                                                    else "")
                         for k, p in self.items())


def _store(module: Module, key: str, value) -> None:
    """Put ``value`` under ``key`` as PyTorch's containers do: a tensor as a Parameter (a
    plain one wrapped), anything else as a plain attribute."""
    if isinstance(value, Tensor) and not isinstance(value, Parameter):
        value = Parameter(value)
    if isinstance(value, Parameter):
        for store in (module.__dict__, module._buffers, module._modules):
            store.pop(key, None)
        module.register_parameter(key, value)
    else:
        setattr(module, key, value)


def _entry_repr(p, kind: str) -> str:
    """How PyTorch's ParameterList/ParameterDict show an entry: its class, ``kind`` (dtype or
    tensor type), shape and a device other than the CPU."""
    if not isinstance(p, Tensor):
        return f"Object of type: {type(p).__name__}"
    device = f" ({p.device})" if str(p.device) != "cpu" else ""
    return (f"{'Parameter' if isinstance(p, Parameter) else 'Tensor'} containing: [{kind} of "
            f"size {'x'.join(str(n) for n in p.shape)}{device}]")


class ParameterList(Module):
    """A list of parameters registered under '0', '1', ... (PyTorch's ``values=``): a tensor
    put in it becomes a Parameter; any other value is kept as it is (a plain attribute)."""

    def __init__(self, values: Iterable | None = None):
        super().__init__()
        self._size = 0
        if values is not None:
            self.extend(values)

    def _index(self, i) -> str:
        i = operator.index(i)
        n = self._size
        if not -n <= i < n:
            raise IndexError(f"ParameterList: index {i} is out of range for {n} entries")
        return str(i % n)

    def append(self, value) -> ParameterList:
        self._size += 1
        self[self._size - 1] = value
        return self

    def extend(self, values: Iterable) -> ParameterList:
        if isinstance(values, str | Tensor) or not hasattr(values, "__iter__"):
            raise TypeError(f"ParameterList.extend: expected an iterable of tensors, got "
                            f"{type(values).__name__}")
        for p in values:
            self.append(p)
        return self

    def __iadd__(self, values: Iterable) -> ParameterList:
        return self.extend(values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ParameterList([self[j] for j in range(*i.indices(self._size))])
        return getattr(self, self._index(i))

    def __setitem__(self, i: int, value) -> None:
        _store(self, self._index(i), value)

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        return (self[i] for i in range(self._size))

    def extra_repr(self) -> str:
        """PyTorch's: one line per entry, ``(i): Parameter containing: [dtype of size AxB]``."""
        return "\n".join(f"  ({i}): " + _entry_repr(p, f"nodegrad.{p.dtype}"
                                                    if isinstance(p, Tensor) else "")
                         for i, p in enumerate(self))
