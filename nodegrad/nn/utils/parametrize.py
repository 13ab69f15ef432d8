"""``nn.utils.parametrize`` as PyTorch users know it: a tensor of a module computed, on every
access, by a chain of modules from the tensors actually stored and trained.

``register_parametrization(m, "weight", P())`` moves ``m.weight`` to
``m.parametrizations.weight.original`` (``original0``, ``original1``, … when ``P.right_inverse``
splits it into several tensors) and makes ``m.weight`` a property returning ``P(original)``.
The property lives on a subclass made for that one instance (``ParametrizedLinear``…), so
other instances of the class are untouched; removing the last parametrization restores the
original class. Assigning ``m.weight = t`` stores ``right_inverse(t)`` in the originals.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ...autodiff import no_grad
from ...tensor import Tensor
from ..layers.container import ModuleDict, ModuleList
from ..module import Module, Parameter

__all__ = ["register_parametrization", "remove_parametrizations", "is_parametrized", "cached",
           "type_before_parametrizations", "transfer_parametrizations_and_params",
           "ParametrizationList"]

_cache_depth = 0
_cache: dict = {}
# (id(module), name) -> a tensor that stands for the parametrized tensor, bypassing its
# parametrizations: what functional_call passes under the tensor's plain name (PyTorch's rule)
_overrides: dict = {}


@contextmanager
def _overridden(values: dict) -> Iterator[None]:
    """Within this block ``module.<name>`` reads ``values[(module, name)]`` as it is, the
    parametrizations not run (``functional_call`` given a parametrized tensor's own name)."""
    saved = {}
    for (module, name), t in values.items():
        key = (id(module), name)
        saved[key] = _overrides.get(key)
        _overrides[key] = t
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                del _overrides[key]
            else:
                _overrides[key] = old


@contextmanager
def cached() -> Iterator[None]:
    """Within this block each parametrized tensor is computed once per module and reused (say,
    a weight read at every step of a recurrent loop); the cache is dropped on leaving."""
    global _cache_depth
    _cache_depth += 1
    try:
        yield
    finally:
        _cache_depth -= 1
        if not _cache_depth:
            _cache.clear()


def _register(module: Module, name: str, t: Tensor) -> None:
    """``t`` as a parameter if it is one, else as a buffer (PyTorch's rule)."""
    if isinstance(t, Parameter):
        module.register_parameter(name, t)
    else:
        module.register_buffer(name, t)


def _set(original: Tensor, value: Tensor) -> None:
    """Store ``value`` in ``original`` keeping the object (so an optimizer holding it still
    trains it); its shape may change."""
    if value is not original:
        original._data = value.detach()._data.copy()
        original._bump()


def _describe(t) -> str:
    return (f"a {t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor)
            else type(t).__name__)


class ParametrizationList(ModuleList):
    """The parametrizations of one tensor, applied in order, and the original tensor(s) they
    start from (``original``, or ``original0``… when ``right_inverse`` returns a sequence)."""

    def __init__(self, modules: Sequence[Module], original: Tensor, unsafe: bool = False):
        if not modules:
            raise ValueError("ParametrizationList: expected at least one parametrization")
        super().__init__(modules)
        self.unsafe = unsafe
        shape, dtype = tuple(original.shape), original.dtype
        with no_grad():
            new = original
            for m in reversed(list(self)):
                if hasattr(m, "right_inverse"):
                    try:
                        new = m.right_inverse(new)
                    except NotImplementedError:  # the original stays as it is (PyTorch)
                        pass
        if isinstance(new, Tensor):
            if not unsafe and new.dtype != dtype:
                raise ValueError(f"register_parametrization: right_inverse may not change the "
                                 f"dtype ({dtype}), got {_describe(new)}")
            self.is_tensor, self.ntensors = True, 1
            _set(original, new)
            _register(self, "original", original)
        elif isinstance(new, Sequence) and all(isinstance(t, Tensor) for t in new):
            self.is_tensor, self.ntensors = False, len(new)
            for i, t in enumerate(new):
                t = t.detach()
                if isinstance(original, Parameter):
                    t = Parameter(t, original.requires_grad)
                _register(self, f"original{i}", t)
        else:
            raise ValueError(f"register_parametrization: right_inverse must return a tensor or "
                             f"a sequence of tensors, got {type(new).__name__}")
        if not unsafe:
            z = self()
            if not isinstance(z, Tensor) or tuple(z.shape) != shape or z.dtype != dtype:
                raise ValueError(f"register_parametrization: the parametrized tensor must keep "
                                 f"the original's shape {shape} and dtype {dtype} (pass "
                                 f"unsafe=True to allow otherwise), got {_describe(z)}")

    def _originals(self) -> list[Tensor]:
        if self.is_tensor:
            return [self.original]
        return [getattr(self, f"original{i}") for i in range(self.ntensors)]

    def forward(self) -> Tensor:
        ms = list(self)
        x = ms[0](*self._originals())
        for m in ms[1:]:
            x = m(x)
        return x

    def right_inverse(self, value: Tensor) -> None:
        """Store ``value`` as the parametrized tensor: run each parametrization's
        ``right_inverse`` (last first) and write the result into the originals."""
        with no_grad():
            for m in reversed(list(self)):
                if not hasattr(m, "right_inverse"):
                    raise RuntimeError(f"parametrization {type(m).__name__} does not implement "
                                       "right_inverse, so the tensor cannot be assigned")
                value = m.right_inverse(value)
            originals = self._originals()
            values = [value] if self.is_tensor else value
            if (not isinstance(values, Sequence) or len(values) != len(originals)
                    or not all(isinstance(v, Tensor) for v in values)):
                raise ValueError(f"right_inverse: expected {len(originals)} tensor(s), got "
                                 f"{_describe(value)}")
            for o, v in zip(originals, values):
                if not self.unsafe and (v.dtype != o.dtype or tuple(v.shape) != tuple(o.shape)):
                    raise ValueError(f"right_inverse: expected {_describe(o)}, got "
                                     f"{_describe(v)}")
                _set(o, v)


def _inject_class(module: Module) -> None:
    """Give ``module`` a class of its own, a subclass of its class, to hold the properties;
    assignment to a parametrized name goes to ``right_inverse``."""
    cls = type(module)

    def __setattr__(self, name, value):
        ps = self.__dict__["_modules"].get("parametrizations")
        if ps is not None and name in ps._modules:
            ps[name].right_inverse(value)
        else:
            cls.__setattr__(self, name, value)

    new = type(f"Parametrized{cls.__name__}", (cls,), {
        "__setattr__": __setattr__, "__module__": cls.__module__,
        "__doc__": cls.__doc__, "_parametrized_base": cls})
    object.__setattr__(module, "__class__", new)


def _inject_property(module: Module, name: str) -> None:
    def get(self) -> Tensor:
        if _overrides and (id(self), name) in _overrides:
            return _overrides[(id(self), name)]
        pl = self.parametrizations[name]
        if not _cache_depth:
            return pl()
        key = (id(self), name)
        if key not in _cache:
            _cache[key] = pl()
        return _cache[key]

    def set_(self, value) -> None:
        self.parametrizations[name].right_inverse(value)

    setattr(type(module), name, property(get, set_, doc=f"``{name}``, parametrized"))


def is_parametrized(module: Module, tensor_name: str | None = None) -> bool:
    """Whether ``module`` has a parametrization (on ``tensor_name``, if given)."""
    ps = module.__dict__.get("_modules", {}).get("parametrizations")
    if not isinstance(ps, ModuleDict) or not hasattr(type(module), "_parametrized_base"):
        return False
    return len(ps) > 0 if tensor_name is None else tensor_name in ps


def type_before_parametrizations(module: Module) -> type:
    """The module's class as it was before it was parametrized."""
    return type(module)._parametrized_base if is_parametrized(module) else type(module)


def register_parametrization(module: Module, tensor_name: str, parametrization: Module,
                             *, unsafe: bool = False) -> Module:
    """Make ``module.<tensor_name>`` the output of ``parametrization`` (a Module whose
    ``forward`` takes the original tensor(s)); a second call on the same name chains another.

    The original parameter (or buffer) keeps its object and moves to
    ``module.parametrizations.<tensor_name>.original``; if ``parametrization`` has
    ``right_inverse``, the original is initialised to ``right_inverse(current value)``, and may
    be several tensors (``original0``, ``original1``…). Unless ``unsafe``, the parametrized
    tensor must keep the shape and dtype of the one it replaces."""
    fn = "register_parametrization"
    if not isinstance(module, Module) or not isinstance(parametrization, Module):
        raise TypeError(f"{fn}: expected a Module and a parametrization Module, got "
                        f"{type(module).__name__} and {type(parametrization).__name__}")
    parametrization.train(module.training)
    if is_parametrized(module, tensor_name):
        if not unsafe:
            y = getattr(module, tensor_name)
            x = parametrization(y)
            if not isinstance(x, Tensor) or x.dtype != y.dtype or x.shape != y.shape:
                raise ValueError(f"{fn}: a parametrization may not change the shape or dtype "
                                 f"({_describe(y)}) unless unsafe=True, got {_describe(x)}")
            if hasattr(parametrization, "right_inverse"):
                try:
                    z = parametrization.right_inverse(x)
                except NotImplementedError:  # nothing to check (PyTorch's)
                    z = y
                if not isinstance(z, Tensor) or z.dtype != y.dtype or z.shape != y.shape:
                    raise ValueError(f"{fn}: right_inverse must return {_describe(y)} unless "
                                     f"unsafe=True, got {_describe(z)}")
        pl = module.parametrizations[tensor_name]
        pl.append(parametrization)
        pl.unsafe |= unsafe
        return module
    original = module._parameters.get(tensor_name, module._buffers.get(tensor_name))
    if not isinstance(original, Tensor):
        raise ValueError(f"{fn}: {type(module).__name__} has no parameter or buffer named "
                         f"{tensor_name!r} to parametrize")
    pl = ParametrizationList([parametrization], original, unsafe=unsafe)
    delattr(module, tensor_name)
    if not is_parametrized(module):
        _inject_class(module)
        module.parametrizations = ModuleDict()
    _inject_property(module, tensor_name)
    module.parametrizations[tensor_name] = pl
    return module


def remove_parametrizations(module: Module, tensor_name: str,
                            leave_parametrized: bool = True) -> Module:
    """Undo :func:`register_parametrization` on ``tensor_name``: the tensor becomes a plain
    parameter (buffer) again, holding its current parametrized value (``leave_parametrized``)
    or the original. With one original tensor its object is kept."""
    fn = "remove_parametrizations"
    if not is_parametrized(module, tensor_name):
        raise ValueError(f"{fn}: {type(module).__name__} has no parametrization on "
                         f"{tensor_name!r}")
    pl = module.parametrizations[tensor_name]
    if pl.is_tensor:
        original = pl.original
        if leave_parametrized:
            with no_grad():
                t = getattr(module, tensor_name)
            if t.dtype != original.dtype:
                raise ValueError(f"{fn}: the parametrized tensor is {t.dtype} but the original "
                                 f"{original.dtype}; pass leave_parametrized=False")
            _set(original, t)
    elif leave_parametrized:
        t = getattr(module, tensor_name)
        original = Parameter(t.detach(), True) if t.requires_grad else t.detach()
    else:
        raise ValueError(f"{fn}: cannot leave {tensor_name!r} unparametrized "
                         "(leave_parametrized=False): it is parametrized by several tensors")
    delattr(type(module), tensor_name)
    del module.parametrizations[tensor_name]
    _register(module, tensor_name, original)
    if not is_parametrized(module):
        delattr(module, "parametrizations")
        object.__setattr__(module, "__class__", type(module)._parametrized_base)
    return module


def transfer_parametrizations_and_params(from_module: Module, to_module: Module,
                                         tensor_name: str | None = None) -> Module:
    """Give ``to_module`` the parametrizations of ``from_module`` (all of them, or those of
    ``tensor_name``) and their original tensors, as PyTorch: the parametrization modules and
    the originals are shared, not copied. A tensor ``to_module`` lacks is first made a
    parameter holding ``from_module``'s parametrized value. Returns ``to_module``."""
    if not is_parametrized(from_module):
        return to_module
    names = list(from_module.parametrizations) if tensor_name is None else [tensor_name]
    for name in names:
        if not is_parametrized(from_module, name):
            raise ValueError(f"transfer_parametrizations_and_params: "
                             f"{type(from_module).__name__} has no parametrization on {name!r}")
        source = from_module.parametrizations[name]
        if not hasattr(to_module, name):
            with no_grad():
                setattr(to_module, name, Parameter(getattr(from_module, name).detach()))
        for m in source:
            register_parametrization(to_module, name, m)
        target = to_module.parametrizations[name]
        for i, t in enumerate(source._originals()):
            key = "original" if source.is_tensor else f"original{i}"
            if key in target._parameters or key in target._buffers:
                store = target._parameters if key in target._parameters else target._buffers
                store[key] = t
            else:
                _register(target, key, t)
    return to_module

