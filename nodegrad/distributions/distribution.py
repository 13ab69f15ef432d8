"""The ``Distribution`` base class and helpers shared by the families (PyTorch's semantics).

Shapes follow PyTorch: a sample has shape ``sample_shape + batch_shape + event_shape``;
``log_prob`` returns one number per batch element. Arguments and values are validated (unless
``validate_args=False``), except while ``nodegrad.jit`` traces or ``nodegrad.vmap`` batches,
where tensor values are not known to Python.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import weakref

from . import _ng as ng
from nodegrad import _backend as B
from nodegrad.autodiff import modes
from nodegrad.dtypes import get_default_dtype
from nodegrad.tensor import Tensor

from . import constraints
from .utils import lazy_property, logits_to_probs, probs_to_logits

__all__ = ["Distribution", "broadcast_all"]

Shape = tuple[int, ...]


def _shape(sample_shape) -> Shape:
    """``sample_shape`` (an int or a sequence of ints) as a tuple; TypeError for other sizes
    (2.7 is not truncated to 2) and ValueError for negative ones, as ``torch.Size`` does."""
    dims = (sample_shape,) if isinstance(sample_shape, int) else sample_shape
    try:
        out = tuple(operator.index(s) for s in dims)
    except TypeError as e:
        raise TypeError(f"distribution shape (sample_shape, batch_shape): expected an int or "
                        f"a sequence of ints, got {sample_shape!r}") from e
    if any(s < 0 for s in out):
        raise ValueError(f"distribution shape (sample_shape, batch_shape): expected "
                         f"non-negative sizes, got {out}")
    return out


def _float_dtype(tensors):
    """The dtype parameters are promoted to: the widest float among tensors, else the default
    float dtype (``ng.get_default_dtype()``)."""
    floats = [t.dtype for t in tensors if B.is_float(t.dtype)]
    if not floats:
        return get_default_dtype()
    return max(floats, key=lambda d: d.itemsize)


def broadcast_all(*values) -> tuple[Tensor, ...]:
    """Numbers and tensors as float tensors of one dtype and device, broadcast to one shape."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    for v in values:
        if not isinstance(v, (Tensor, int, float)):
            raise TypeError(f"expected a Tensor or a number, got {type(v).__name__}")
    dtype = _float_dtype(tensors)
    device = tensors[0].device if tensors else None
    out = [v if isinstance(v, Tensor) and v.dtype == dtype
           else (v.astype(dtype) if isinstance(v, Tensor)
                 else ng.tensor(float(v), dtype=dtype, device=device)) for v in values]
    return tuple(ng.broadcast_tensors(*out)) if len(out) > 1 else (out[0],)


def _sum_rightmost(x: Tensor, n: int) -> Tensor:
    """``x`` summed over its last ``n`` dims."""
    return ng.sum(x, tuple(range(-n, 0))) if n > 0 else x


def _concrete() -> bool:
    """Whether tensor values are known to Python here (not under a jit trace or vmap)."""
    m = modes()
    return m.jit is None and not m.traces


_LOG_2PI = math.log(2 * math.pi)


_NUMBER_TYPES = (int, float, bool, type(None))


def _weak_init(init):
    """``init`` that records whether every argument was a Python number (or None, or a bool):
    such a distribution's parameters are weakly typed (see ``_at_value_dtype``)."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)  # a subclass's call of super().__init__ runs first
        self._weak = all(type(a) in _NUMBER_TYPES for a in (*args, *kwargs.values()))

    return __init__


def _weak_value_method(fn):
    """``fn(self, value, ...)`` (log_prob, cdf, icdf) run on a copy of ``self`` in the dtype of
    a float ``value`` when ``self`` was built from Python numbers only."""
    @functools.wraps(fn)
    def method(self, value, *args, **kwargs):
        if self.__dict__.get("_weak") and isinstance(value, Tensor) \
                and B.is_float(value.dtype):
            self = self._at_value_dtype(value.dtype)
        return fn(self, value, *args, **kwargs)

    return method


def _cast_floats(v, src, dtype):
    """``v`` (a tensor, a distribution, a transform, or a list or tuple of them) with its
    ``src`` tensors cast to ``dtype``: a shallow copy where anything changed, else ``v``.
    A copied transform forgets its cache and its weakly held inverse."""
    if isinstance(v, Tensor):
        return v.astype(dtype) if v.dtype == src else v
    if isinstance(v, list | tuple):
        out = [_cast_floats(w, src, dtype) for w in v]
        return v if all(a is b for a, b in zip(out, v)) else type(v)(out)
    transform = hasattr(v, "_cached_x_y")
    if not (isinstance(v, Distribution) or transform):
        return v
    changed = {k: w2 for k, w in v.__dict__.items()
               if (w2 := _cast_floats(w, src, dtype)) is not w}
    if not changed:
        return v
    new = copy.copy(v)
    new.__dict__.update(changed)
    if transform:
        new._cached_x_y = (None, None)
        if isinstance(new.__dict__.get("_inv"), weakref.ref):
            new._inv = None
    return new


def _follow_partner(d: Distribution, other: Distribution) -> Distribution:
    """``d`` in ``other``'s float dtype when ``d`` was built from Python numbers only and
    ``other`` was not (``kl_divergence(q64, Normal(0., 1.))`` computes in float64)."""
    if not d.__dict__.get("_weak") or other.__dict__.get("_weak"):
        return d
    dt = _own_float_dtype(other)
    return d if dt is None else d._at_value_dtype(dt)


def _own_float_dtype(d: Distribution):
    """The dtype of ``d``'s parameters: its first float tensor attribute, else its inner
    distribution's (a transformed distribution's base); None without either."""
    for v in d.__dict__.values():
        if isinstance(v, Tensor) and B.is_float(v.dtype):
            return v.dtype
    inner = (v for v in d.__dict__.values() if isinstance(v, Distribution))
    return next((dt for v in inner if (dt := _own_float_dtype(v)) is not None), None)


class Distribution:
    """Base class: shapes, sampling through ``rsample``, and argument/value validation.

    A distribution built from Python numbers only (``Normal(0., 1.)``) holds them in the
    default float dtype but evaluates a float value in the value's dtype (the numbers are
    weakly typed, as in any nodegrad op): ``Normal(0., 1.).log_prob(x64)`` is float64, as
    PyTorch's, where nodegrad would otherwise refuse to mix float32 with float64."""

    has_rsample = False
    has_enumerate_support = False
    arg_constraints: dict[str, constraints.Constraint] = {}
    support: constraints.Constraint | None = None
    _validate_default = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _weak_init(cls.__dict__["__init__"])
        for name in ("log_prob", "cdf", "icdf"):
            if name in cls.__dict__:
                setattr(cls, name, _weak_value_method(cls.__dict__[name]))

    def _at_value_dtype(self, dtype) -> Distribution:
        """This distribution with its parameters' float dtype (also in inner distributions and
        transforms) cast to ``dtype``; itself when there is nothing to cast."""
        src = _own_float_dtype(self)
        return self if src in (None, dtype) else _cast_floats(self, src, dtype)

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        """Turn validation on or off for distributions built without ``validate_args``."""
        if value not in (True, False):
            raise ValueError("set_default_validate_args: expected True or False")
        Distribution._validate_default = value

    def __init__(self, batch_shape: Shape = (), event_shape: Shape = (),
                 validate_args: bool | None = None):
        self._batch_shape = _shape(batch_shape)
        self._event_shape = _shape(event_shape)
        if validate_args is not None:
            self._validate_args = validate_args
        else:
            self._validate_args = Distribution._validate_default
        if self._validate_args and _concrete():
            for param, constraint in self.arg_constraints.items():
                value = self._given_param(param)
                if constraints.is_dependent(constraint) or value is None:
                    continue  # not given (probs when built from logits) or checked elsewhere
                with ng.no_grad():
                    ok = bool(ng.all(constraint.check(value)))
                if not ok:
                    raise ValueError(
                        f"Expected parameter {param} (Tensor of shape {tuple(value.shape)}) of "
                        f"distribution {type(self).__name__} to satisfy the constraint "
                        f"{constraint!r}, but found invalid values:\n{value}")

    def _given_param(self, name: str) -> Tensor | None:
        """Parameter ``name`` as given (an attribute, or a plain property such as a transformed
        distribution's ``loc``); None for one computed lazily from another (cached)."""
        if name in self.__dict__:
            return self.__dict__[name]
        if isinstance(getattr(type(self), name, None), property):
            v = getattr(self, name)
            return v if isinstance(v, Tensor) else None
        return None

    # --- shapes -----------------------------------------------------------------------------
    @property
    def batch_shape(self) -> Shape:
        return self._batch_shape

    @property
    def event_shape(self) -> Shape:
        return self._event_shape

    def _extended_shape(self, sample_shape=()) -> Shape:
        """``sample_shape + batch_shape + event_shape``: the shape of a sample."""
        return _shape(sample_shape) + self._batch_shape + self._event_shape

    _param_event_dims: dict[str, int] = {}  # params with event dims beyond the batch

    def expand(self, batch_shape, _instance=None) -> Distribution:
        """A view of this distribution with its parameters broadcast to ``batch_shape``."""
        batch_shape = _shape(batch_shape)
        new = _instance if _instance is not None else type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        for name in self.arg_constraints:
            if name in self.__dict__:
                v = self.__dict__[name]
                k = self._param_event_dims.get(name, 0)
                new.__dict__[name] = v.expand(*(batch_shape + tuple(v.shape[v.ndim - k:])))
        new._batch_shape = batch_shape
        return new

    def _get_checked_instance(self, cls: type, _instance=None) -> Distribution:
        """A bare instance of ``type(self)`` for a subclass's ``expand`` to fill in (PyTorch's
        helper for custom distributions), or ``_instance`` when given; NotImplementedError
        when ``cls.expand`` would miss what a subclass's own ``__init__`` sets."""
        if _instance is None and type(self).__init__ != cls.__init__:
            raise NotImplementedError(
                f"Subclass {type(self).__name__} of {cls.__name__} that defines a custom "
                "__init__ method must also define a custom .expand() method.")
        return type(self).__new__(type(self)) if _instance is None else _instance

    # --- to override ------------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement mean")

    @property
    def mode(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement mode")

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement variance")

    @property
    def stddev(self) -> Tensor:
        return ng.sqrt(self.variance)

    def rsample(self, sample_shape=(), *, generator=None) -> Tensor:
        """A reparameterised sample: differentiable with respect to the parameters."""
        raise NotImplementedError(f"{type(self).__name__} does not implement rsample")

    def sample(self, sample_shape=(), *, generator=None) -> Tensor:
        """A sample of shape ``sample_shape + batch_shape + event_shape``, without gradient."""
        if self.has_rsample:
            with ng.no_grad():
                return self.rsample(sample_shape, generator=generator)
        raise NotImplementedError(f"{type(self).__name__} does not implement sample")

    def sample_n(self, n: int) -> Tensor:
        return self.sample((n,))

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement log_prob")

    def cdf(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement cdf")

    def icdf(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement icdf")

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """All values of a discrete support, along a new leading dim (see
        ``has_enumerate_support``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement "
                                  "enumerate_support")

    def entropy(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement entropy")

    def perplexity(self) -> Tensor:
        return ng.exp(self.entropy())

    # --- helpers ----------------------------------------------------------------------------
    def _param_like(self) -> Tensor:
        """A parameter tensor: its dtype and device are the samples'."""
        for name in self.arg_constraints:
            v = self.__dict__.get(name)
            if isinstance(v, Tensor):
                return v
        raise NotImplementedError(f"{type(self).__name__}: no tensor parameter among "
                                  f"arg_constraints {sorted(self.arg_constraints)} to take the "
                                  "samples' dtype and device from")

    def _validate_sample(self, value) -> None:
        """Raise ValueError unless ``value`` fits the event shape and lies in the support."""
        if not isinstance(value, Tensor):
            raise ValueError(f"{type(self).__name__}: the value argument must be a Tensor, "
                             f"got {type(value).__name__}")
        shape, ev = tuple(value.shape), self._event_shape
        if len(shape) < len(ev) or (ev and shape[-len(ev):] != ev):
            raise ValueError(f"{type(self).__name__}: the rightmost dims of the value "
                             f"{shape} must equal event_shape {ev}")
        try:
            ng.broadcast_shapes(shape, self._batch_shape + ev)
        except Exception as e:
            raise ValueError(f"{type(self).__name__}: value of shape {shape} is not "
                             f"broadcastable with batch_shape + event_shape "
                             f"{self._batch_shape + ev}") from e
        if not _concrete():
            return
        support = self.support
        with ng.no_grad():
            ok = bool(ng.all(support.check(value)))
        if not ok:
            raise ValueError(
                f"Expected value argument (Tensor of shape {shape}) to be within the support "
                f"({support!r}) of the distribution {type(self).__name__}, but found invalid "
                f"values:\n{value}")

    def __repr__(self) -> str:
        def show(v):
            return v.item() if v.ndim == 0 and _concrete() else tuple(v.shape)

        given = {k: self._given_param(k) for k in self.arg_constraints}
        args = ", ".join(f"{k}: {show(v)}" for k, v in given.items() if v is not None)
        return f"{type(self).__name__}({args})"


class _LocScale(Distribution):
    """A location-scale family (Normal, Laplace): ``loc`` real, ``scale`` positive, broadcast
    together; its mean and mode are ``loc``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor | float, scale: Tensor | float,
                 validate_args: bool | None = None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(tuple(self.loc.shape), validate_args=validate_args)

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc


class BinaryParams:
    """The probs-or-logits parameters of a binary event (Bernoulli, Binomial, Geometric, ...):
    exactly one is given, the other is derived on first use and cached (keeping its graph),
    and ``param_shape`` and ``expand`` follow the one given. Mixed in before Distribution."""

    def _binary(self, name: str, probs, logits, *others) -> list:
        """Set the given one of ``probs``/``logits`` broadcast with ``others``; returns
        ``others`` broadcast, in order."""
        if (probs is None) == (logits is None):
            raise ValueError(f"{name}: either `probs` or `logits` must be specified, but not "
                             "both.")
        *rest, param = broadcast_all(*others, probs if probs is not None else logits)
        self.__dict__["probs" if probs is not None else "logits"] = param
        self._param = param
        return rest

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits, is_binary=True)

    @property
    def param_shape(self) -> tuple:
        return tuple(self._param.shape)

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance)
        new._param = new.__dict__["probs" if "probs" in self.__dict__ else "logits"]
        return new
