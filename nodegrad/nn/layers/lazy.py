"""Lazy layers: the input size is read from the first batch (PyTorch's ``LazyLinear`` etc.).

``nn.LazyLinear(10)`` holds an :class:`UninitializedParameter` until its first call; that call
reads ``in_features`` from the input, builds the parameters as ``Linear`` would (same
initialisation) into the same parameter objects, and the module becomes a ``Linear``. A state
dict loaded before the first call sets the sizes from its tensors instead. Optimisers refuse
uninitialised parameters: run one batch (a dry run) first, as PyTorch advises. The lazy norms
hold their running statistics as :class:`UninitializedBuffer` until then, as PyTorch's.
"""

from __future__ import annotations

from ...errors import ShapeError
from ...tensor import Tensor, empty, int64, zeros
from ..module import Module, Parameter
from .conv import Conv1d, Conv2d, Conv3d
from .conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .linear import Linear
from .norm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .sample_norm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d

__all__ = ["UninitializedParameter", "UninitializedBuffer", "LazyLinear", "LazyConv1d",
           "LazyConv2d", "LazyConv3d",
           "LazyConvTranspose1d", "LazyConvTranspose2d", "LazyConvTranspose3d",
           "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d", "LazyInstanceNorm1d",
           "LazyInstanceNorm2d", "LazyInstanceNorm3d"]


class UninitializedParameter(Parameter):
    """A parameter whose shape is not known yet; it becomes a Parameter, in place, when its
    lazy module sees its first input."""

    __slots__ = ()
    uninitialized = True  # optimisers refuse it until the first call has built it
    cls_to_become = Parameter

    def __init__(self, requires_grad: bool = True, device=None, dtype=None):
        super().__init__(empty(0, device=device, dtype=dtype), requires_grad)

    def materialize(self, shape, device=None, dtype=None) -> None:
        """Become a Parameter of ``shape`` (uninitialised values) in place, on this one's
        device and in its dtype unless given (PyTorch's)."""
        _materialize(self, shape, device, dtype)

    def __repr__(self) -> str:
        return "<UninitializedParameter>"


class UninitializedBuffer(Tensor):
    """A buffer whose shape is not known yet (PyTorch's): register it with
    ``register_buffer``; :meth:`materialize` (or its lazy module's first input) makes it a
    plain tensor in place. ``persistent=False`` keeps it out of the state dict once built,
    as ``register_buffer``'s own flag does."""

    __slots__ = ()
    uninitialized = True
    persistent = True
    cls_to_become = Tensor

    def __init__(self, requires_grad: bool = False, device=None, dtype=None,
                 persistent: bool = True):
        super().__init__(empty(0, device=device, dtype=dtype)._data, None, requires_grad)
        if not persistent:
            self.__class__ = _NonPersistentUninitializedBuffer

    def materialize(self, shape, device=None, dtype=None) -> None:
        """Become a tensor of ``shape`` (uninitialised values) in place, on this one's device
        and in its dtype unless given (PyTorch's)."""
        _materialize(self, shape, device, dtype)

    def __repr__(self) -> str:
        return "<UninitializedBuffer>"


class _NonPersistentUninitializedBuffer(UninitializedBuffer):
    __slots__ = ()
    persistent = False


def _materialize(t, shape, device, dtype) -> None:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    t._data = empty(shape, device=t.device if device is None else device,
                   dtype=t.dtype if dtype is None else dtype)._data
    t.__class__ = type(t).cls_to_become
    t._bump()


class _Lazy(Module):
    """The shared part: placeholders, the first-call pre-hook, and loading sizes from a state
    dict. A subclass names its concrete class, its parameters, and where the size is read."""

    cls_to_become: type
    _params: tuple = ("weight", "bias")

    def __init__(self, has: dict, **kwargs) -> None:
        super().__init__()
        self._kwargs = kwargs
        for name in self._params:
            if has.get(name, True):
                self.register_parameter(name, UninitializedParameter(
                    device=kwargs.get("device"), dtype=kwargs.get("dtype")))
            else:
                self.register_parameter(name, None)
        self._lazy_hook = self.register_forward_pre_hook(_first_call)
        self.register_load_state_dict_pre_hook(_sizes_from_state)

    def has_uninitialized_params(self) -> bool:
        return any(isinstance(p, UninitializedParameter) for p in self._parameters.values())

    def _size_of_input(self, x) -> int:
        raise NotImplementedError

    def _size_of_state(self, state: dict, prefix: str) -> int | None:
        w = _built(state, prefix + "weight")
        return None if w is None else int(w.shape[1])

    def initialize_parameters(self, input) -> None:
        """Read the input size from ``input`` and become the concrete layer."""
        self._materialize(self._size_of_input(input))

    def _materialize(self, n: int) -> None:
        """Build the concrete layer for input size ``n`` and take its state into this one,
        keeping the parameter objects (an optimiser or a reference may already hold them),
        the hooks and the train/eval mode."""
        kwargs = dict(self._kwargs)
        held = next((p for p in [*self._parameters.values(), *self._buffers.values()]
                     if isinstance(p, UninitializedParameter | UninitializedBuffer)), None)
        if held is not None:  # .to(dtype/device) may have moved the placeholders since
            kwargs.update(device=held.device, dtype=held.dtype)
        done = self.cls_to_become(n, **kwargs)
        for store, built in ((self._parameters, done._parameters),
                             (self._buffers, done._buffers)):
            for name, p in built.items():
                mine = store.get(name)
                if isinstance(mine, UninitializedParameter | UninitializedBuffer) and \
                        p is not None:
                    mine._data = p._data
                    mine.__class__ = type(mine).cls_to_become
                    mine._bump()
                    built[name] = mine
        self._lazy_hook.remove()
        self._load_state_dict_pre_hooks[:] = [h for h in self._load_state_dict_pre_hooks
                                              if h is not _sizes_from_state]
        for k in ("_kwargs", "_lazy_hook"):
            self.__dict__.pop(k)
        self.__dict__.update({k: v for k, v in done.__dict__.items()
                              if not k.endswith("_hooks") and k != "training"})
        self.__class__ = self.cls_to_become

    def extra_repr(self) -> str:
        return "uninitialized, " + ", ".join(f"{k}={v!r}" for k, v in self._kwargs.items())


def _first_call(module: _Lazy, args: tuple) -> None:
    if not args:
        raise TypeError(f"{type(module).__name__}: expected an input tensor")
    module.initialize_parameters(args[0])


def _sizes_from_state(module: _Lazy, state, prefix, meta, strict, missing, unexpected,
                      errors) -> None:
    if isinstance(module, _Lazy) and module.has_uninitialized_params():
        n = module._size_of_state(state, prefix)
        if n is not None:
            module._materialize(n)


def _built(state: dict, key: str):
    """``state[key]`` unless it is absent or an unbuilt placeholder (from the state dict of a
    lazy module before its first call)."""
    t = state.get(key)
    return None if t is None or getattr(t, "uninitialized", False) or (
        len(t.shape) == 1 and t.shape[0] == 0) else t


def _axis_size(module, x, axis: int, ndims: tuple, what: str) -> int:
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-d" for d in ndims)
        raise ShapeError(f"{type(module).__name__}: expected {want} input to read {what} from, "
                         f"got shape {tuple(x.shape)}")
    return int(x.shape[axis])


class LazyLinear(_Lazy):
    """``Linear`` whose ``in_features`` is the last axis of the first input."""

    cls_to_become = Linear

    def __init__(self, out_features: int, bias: bool = True, init="default", device=None,
                 dtype=None):
        super().__init__({"bias": bias}, out_features=out_features, bias=bias, init=init,
                         device=device, dtype=dtype)

    def _size_of_input(self, x) -> int:
        if x.ndim == 0:
            raise ShapeError("LazyLinear: expected an input with a feature axis, got a scalar")
        return int(x.shape[-1])


class _LazyConv(_Lazy):
    nd = 0

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", init="default",
                 device=None, dtype=None):
        super().__init__({"bias": bias}, out_channels=out_channels, kernel_size=kernel_size,
                         stride=stride, padding=padding, dilation=dilation, groups=groups,
                         bias=bias, padding_mode=padding_mode, init=init, device=device,
                         dtype=dtype)

    def _size_of_input(self, x) -> int:
        # batched (N, C, ...) or unbatched (C, ...)
        axis = 1 if x.ndim == self.nd + 2 else 0
        return _axis_size(self, x, axis, (self.nd + 1, self.nd + 2), "in_channels")

    def _size_of_state(self, state: dict, prefix: str) -> int | None:
        w = _built(state, prefix + "weight")
        return None if w is None else int(w.shape[1]) * self._kwargs["groups"]


class LazyConv1d(_LazyConv):
    """``Conv1d`` whose ``in_channels`` is read from the first input."""

    cls_to_become, nd = Conv1d, 1


class LazyConv2d(_LazyConv):
    """``Conv2d`` whose ``in_channels`` is read from the first input."""

    cls_to_become, nd = Conv2d, 2


class LazyConv3d(_LazyConv):
    """``Conv3d`` whose ``in_channels`` is read from the first input."""

    cls_to_become, nd = Conv3d, 3


class _LazyConvTranspose(_LazyConv):
    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros",
                 init="default", device=None, dtype=None):
        _Lazy.__init__(self, {"bias": bias}, out_channels=out_channels,
                       kernel_size=kernel_size, stride=stride, padding=padding,
                       output_padding=output_padding, groups=groups, bias=bias,
                       dilation=dilation, padding_mode=padding_mode, init=init, device=device,
                       dtype=dtype)

    def _size_of_state(self, state: dict, prefix: str) -> int | None:
        w = _built(state, prefix + "weight")  # (in_channels, out_channels / groups, *kernel)
        return None if w is None else int(w.shape[0])


class LazyConvTranspose1d(_LazyConvTranspose):
    """``ConvTranspose1d`` whose ``in_channels`` is read from the first input."""

    cls_to_become, nd = ConvTranspose1d, 1


class LazyConvTranspose2d(_LazyConvTranspose):
    """``ConvTranspose2d`` whose ``in_channels`` is read from the first input."""

    cls_to_become, nd = ConvTranspose2d, 2


class LazyConvTranspose3d(_LazyConvTranspose):
    """``ConvTranspose3d`` whose ``in_channels`` is read from the first input."""

    cls_to_become, nd = ConvTranspose3d, 3


class _LazyNorm(_Lazy):
    """``bias=False`` (with ``affine``) leaves the shift out, as the concrete norms do; the
    running statistics wait as :class:`UninitializedBuffer` when tracked."""

    ndims: tuple = ()
    unbatched: int | None = None  # the rank of an unbatched input (channels on axis 0)
    _affine_default = True

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool | None = None,
                 track_running_stats: bool | None = None, device=None, dtype=None, *,
                 bias: bool = True):
        affine = self._affine_default if affine is None else affine
        track = self._affine_default if track_running_stats is None else track_running_stats
        super().__init__({"weight": affine, "bias": affine and bias}, eps=eps,
                         momentum=momentum, affine=affine, track_running_stats=track,
                         device=device, dtype=dtype, bias=bias)
        if track:
            for name in ("running_mean", "running_var"):
                self.register_buffer(name, UninitializedBuffer(device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked", zeros((), dtype=int64, device=device))

    def _size_of_input(self, x) -> int:
        axis = 0 if x.ndim == self.unbatched else 1
        return _axis_size(self, x, axis, self.ndims, "num_features")

    def _size_of_state(self, state: dict, prefix: str) -> int | None:
        for name in ("weight", "running_mean"):
            t = _built(state, prefix + name)
            if t is not None:
                return int(t.shape[0])
        return None


class LazyBatchNorm1d(_LazyNorm):
    """``BatchNorm1d`` whose ``num_features`` is axis 1 of the first input."""

    cls_to_become, ndims = BatchNorm1d, (2, 3)


class LazyBatchNorm2d(_LazyNorm):
    """``BatchNorm2d`` whose ``num_features`` is axis 1 of the first input."""

    cls_to_become, ndims = BatchNorm2d, (4,)


class LazyBatchNorm3d(_LazyNorm):
    """``BatchNorm3d`` whose ``num_features`` is axis 1 of the first input."""

    cls_to_become, ndims = BatchNorm3d, (5,)


class LazyInstanceNorm1d(_LazyNorm):
    """``InstanceNorm1d`` whose ``num_features`` is the channel axis of the first input. As
    PyTorch's code (its docs say otherwise), ``affine`` and ``track_running_stats`` default to
    True here, unlike ``InstanceNorm1d``'s."""

    cls_to_become, ndims, unbatched = InstanceNorm1d, (2, 3), 2


class LazyInstanceNorm2d(_LazyNorm):
    """``InstanceNorm2d`` whose ``num_features`` is the channel axis of the first input."""

    cls_to_become, ndims, unbatched = InstanceNorm2d, (3, 4), 3


class LazyInstanceNorm3d(_LazyNorm):
    """``InstanceNorm3d`` whose ``num_features`` is the channel axis of the first input."""

    cls_to_become, ndims, unbatched = InstanceNorm3d, (4, 5), 4
