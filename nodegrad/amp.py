"""Automatic mixed precision, as ``torch.amp``: :class:`autocast` regions and :class:`GradScaler`.

Inside ``with ng.autocast("cpu", dtype=ng.float16):`` every primitive's operands pass through a
rule (``modes().autocast``, read by ``bind``): matrix products and convolutions run in the
region's low precision, ops that lose accuracy there (reductions PyTorch lists, losses,
linear algebra) in float32, and operands of other ops that mix float widths are promoted to
the widest, as PyTorch's type promotion does. Casts are the differentiable ``astype``, so a
float32 parameter gets a float32 gradient. The region is per thread and per device type,
like PyTorch's; the op lists follow PyTorch's CPU and CUDA autocast lists, by the primitive
that carries each op here. The low precisions are bfloat16 (the default of ``"cpu"``, as in
PyTorch) and float16 (the default of ``"cuda"``; CuPy has no bfloat16).

:class:`GradScaler` multiplies the loss by a scale so float16 gradients do not underflow,
divides the gradients back before the optimiser's step, skips a step whose gradients hold
inf or NaN and backs the scale off, and grows it after ``growth_interval`` clean steps.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any

from . import _backend as B
from .autodiff import effect, modes
from .errors import DTypeError
from .primitive import REGISTRY, bind
from .tensor import Tensor

__all__ = ["autocast", "GradScaler", "custom_fwd", "custom_bwd", "is_autocast_available",
           "is_autocast_enabled", "get_autocast_dtype", "float32_in_region", "lower_in_region",
           "promote_in_region", "float32_op", "current_regions", "regions"]

_DEVICES = ("cpu", "cuda")
_F16 = B.np.dtype("float16")
_BF16 = B.bfloat16
_DEFAULT_DTYPE = {"cpu": _BF16, "cuda": _F16}  # PyTorch's defaults per device type
_F32 = B.np.dtype("float32")
_F64 = B.np.dtype("float64")

# --- the op lists, by primitive name ------------------------------------------------------------
# PyTorch's lower-precision list: mm/bmm/addmm/baddbmm/matmul/linear (matmul, linear), conv1d-3d
# and their transposes (conv, conv_input_grad), einsum, scaled_dot_product_attention (matmuls)
_LOWER = frozenset({"matmul", "linear", "linear_relu", "conv", "conv_relu", "conv_input_grad",
                    "einsum"})
# PyTorch's CPU float32 list: losses, prod, linear algebra and FFTs
_FP32_CPU = frozenset({
    "cross_entropy", "cross_entropy_weights", "binary_cross_entropy", "prod", "cholesky", "inv",
    "pinv", "pinv_hermitian", "solve", "solve_triangular", "qr", "geqrf", "svd", "svdvals",
    "eig", "eigh", "eigvalsh", "det", "slogdet", "fft_c2c", "fft_r2c", "fft_c2r",
    "view_as_complex"})
# PyTorch's CUDA float32 list adds pointwise functions that overflow or lose digits in float16,
# softmax, norms and the reductions (sum, cumsum, cumprod, logsumexp)
_FP32_CUDA = _FP32_CPU | frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "tan", "power", "softplus", "softmax", "log_softmax",
    "vector_norm", "logsumexp", "sum", "cumsum", "cumprod"})
# a category per primitive name: 1 low precision, 2 float32 (anything else: promote a mix)
_TABLES = {"cpu": {**{n: 2 for n in _FP32_CPU}, **{n: 1 for n in _LOWER}},
           "cuda": {**{n: 2 for n in _FP32_CUDA}, **{n: 1 for n in _LOWER}}}
_PASS = frozenset({"astype", "to_device"})  # the casts themselves

_ASTYPE = REGISTRY["astype"]
_ndarray = B.ndarray


def _as_dtype(dtype, what: str):
    """``dtype`` (a NumPy dtype, ``ng.bfloat16``, ``"float16"``, ``torch.bfloat16``) as a NumPy
    float dtype the region may use: bfloat16, float16 or float32."""
    text = str(dtype)
    try:
        dt = B.np.dtype(text.removeprefix("torch.") if text.startswith("torch.") else dtype)
    except TypeError:
        raise DTypeError(f"{what}: expected a float dtype (bfloat16 or float16), got "
                         f"{dtype!r}") from None
    if dt not in (_BF16, _F16, _F32):
        raise DTypeError(f"{what}: autocast runs in bfloat16 or float16 (or float32), got {dt}; "
                         "float64 and non-float dtypes are not lower precisions")
    return dt


def _check_device(device_type, what: str) -> str:
    if not isinstance(device_type, str):
        raise TypeError(f"{what}: expected `device_type` of type str ('cpu' or 'cuda'), got "
                        f"{type(device_type).__name__}")
    dev = device_type.split(":")[0]
    if dev not in _DEVICES:
        raise ValueError(f"{what}: device_type must be 'cpu' or 'cuda', got {device_type!r}")
    return dev


# --- the rule bind calls ------------------------------------------------------------------------
def _make_rule(m, state: dict, cache: dict | None, cache_on: dict) -> Callable:
    """The ``(prim, args) -> args`` rule for the regions ``state`` (device -> dtype of the enabled
    ones): cast operands by the op lists. It acts only in the backward (or none) it was made
    in, so a backward run inside the region keeps the forward's dtypes, as PyTorch's does."""
    seen0 = m.grads_seen
    cpu_dt = state.get("cpu")
    cuda_dt = state.get("cuda")
    cpu_tab, cuda_tab = _TABLES["cpu"], _TABLES["cuda"]

    def rule(prim, args: tuple) -> tuple:
        if m.grads_seen is not seen0 or prim.name in _PASS:
            return args
        dev = None
        for a in args:  # the device of the first tensor operand
            if isinstance(a, Tensor):
                dev = "cpu" if type(a._data) is _ndarray else "cuda"
                break
        if dev is None:
            return args
        if dev == "cpu":
            low, tab = cpu_dt, cpu_tab
        else:
            low, tab = cuda_dt, cuda_tab
        if low is None:  # this device's region is off
            return args
        cat = tab.get(prim.name)
        if cat is None:
            return _promote_mixed(prim, args, low) if len(args) > 1 else args
        target = low if cat == 1 else _F32
        use_cache = cat == 1 and cache is not None and cache_on[dev] and m.grad_enabled and (
            m.jit is None)
        out = None
        for i, a in enumerate(args):
            if not isinstance(a, Tensor):
                continue
            dt = a._data.dtype
            if dt is target or not B.is_float(dt) or dt == target or dt == _F64:
                continue
            if out is None:
                out = list(args)
            if use_cache and a.requires_grad and a.node is None:
                out[i] = _cached_cast(cache, a, target)
            else:
                out[i] = bind(_ASTYPE, (a,), {"dtype": target, "src": dt})
        return args if out is None else tuple(out)

    rule.state = state  # type: ignore[attr-defined]
    rule.seen0 = seen0  # type: ignore[attr-defined]
    rule.cache = cache  # type: ignore[attr-defined]
    rule.cache_on = cache_on  # type: ignore[attr-defined]
    # what a jit trace depends on: the regions' devices and dtypes (jit/api.py keys on it)
    rule.key = ("autocast",) + tuple(sorted((k, str(v)) for k, v in state.items()))  # type: ignore
    return rule


def _cached_cast(cache: dict, a: Tensor, target) -> Tensor:
    """The cast of leaf parameter ``a``, made once per region (PyTorch's autocast cache) and
    made again after ``a`` changes in place or its cast's graph has been freed by a backward."""
    key = (id(a), target)
    ent = cache.get(key)
    if ent is not None:
        src, ver, v, cast = ent
        if src is a and ver[0] == v and (cast.node is None or cast.node.alive):
            return cast
    ver = a._ensure_version()
    cast = bind(_ASTYPE, (a,), {"dtype": target, "src": a._data.dtype})
    cache[key] = (a, ver, ver[0], cast)
    return cast


def _promote_mixed(prim, args: tuple, low) -> tuple:
    """Float operands of an op that mixes float dtypes cast to their promoted type: the widest,
    float32 for bfloat16 with float16 (PyTorch promotes such a mix; nodegrad otherwise refuses
    it)."""
    pos = prim.operands
    if pos is None:
        return args
    if pos is True:
        pos = range(len(args))
    dts = set()
    for i in pos:
        a = args[i]
        if isinstance(a, Tensor) and B.is_float(a._data.dtype):
            dts.add(a._data.dtype)
    if len(dts) < 2:
        return args
    widest = max(dts, key=lambda d: d.itemsize)
    if widest.itemsize == 2:  # bfloat16 with float16
        widest = _F32
    out = list(args)
    for i in pos:
        a = out[i]
        if isinstance(a, Tensor) and B.is_float(a._data.dtype) and a._data.dtype != widest:
            out[i] = bind(_ASTYPE, (a,), {"dtype": widest, "src": a._data.dtype})
    return tuple(out)


# --- the region ---------------------------------------------------------------------------------
def _state_of(m) -> tuple[dict, dict | None, dict]:
    rule = m.autocast
    if rule is None or not hasattr(rule, "state"):
        return {}, None, {"cpu": True, "cuda": True}
    return dict(rule.state), rule.cache, dict(rule.cache_on)


class autocast:  # noqa: N801  (PyTorch's name)
    """A region (``with``) or decorated function in which ops on ``device_type``'s tensors run
    in mixed precision: products and convolutions in ``dtype`` (by default bfloat16 on the CPU,
    float16 on CUDA, as PyTorch's), precision-sensitive ops in float32, as ``torch.autocast``.
    ``enabled=False`` turns a region off inside another;
    ``cache_enabled`` keeps one cast per parameter for the outermost region."""

    def __init__(self, device_type: str, dtype: Any = None, enabled: bool = True,
                 cache_enabled: bool | None = None) -> None:
        self.device = _check_device(device_type, "autocast")
        self.fast_dtype = (get_autocast_dtype(self.device) if dtype is None  # as PyTorch: the
                           else _as_dtype(dtype, "autocast"))  # enclosing region's dtype
        if self.fast_dtype == _BF16 and self.device == "cuda":
            raise DTypeError("autocast: CuPy arrays have no bfloat16, so a 'cuda' region runs in "
                             "float16 (dtype=ng.float16); bfloat16 regions are for 'cpu'")
        self._dtype_arg = dtype
        self._cache_enabled = True if cache_enabled is None else bool(cache_enabled)
        enabled = bool(enabled)
        if enabled and self.device == "cuda" and not B.cuda_available():
            warnings.warn("autocast: device_type 'cuda' was given but CUDA is not available; "
                          "the region is disabled", stacklevel=2)
            enabled = False
        self._enabled = enabled
        self._prev: dict = {}  # each thread's Modes -> the rules this object's regions replaced

    def __enter__(self) -> autocast:
        m = modes()
        state, cache, cache_on = _state_of(m)
        if self._enabled:
            state[self.device] = self.fast_dtype
        else:
            state.pop(self.device, None)
        cache_on[self.device] = self._cache_enabled
        prev = m.autocast
        if cache is None and prev is None:  # the outermost region: its cache of casts
            cache = {}
        self._prev.setdefault(m, []).append(prev)
        if state:
            m.autocast = _make_rule(m, state, cache, cache_on)
        else:  # every device off: nothing to cast, but an outer region's cache is kept
            m.autocast = None if prev is None else _Off(state, cache, cache_on)
        return self

    def __exit__(self, *exc) -> None:
        m = modes()
        stack = self._prev[m]
        m.autocast = stack.pop()
        if not stack:
            del self._prev[m]

    def __call__(self, func: Callable) -> Callable:
        """Use as a decorator: each call of ``func`` runs in a fresh region like this one."""
        if not callable(func):
            raise TypeError(f"autocast: used as a decorator, expected a function, got "
                            f"{type(func).__name__}")

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with autocast(self.device, self.fast_dtype, self._enabled, self._cache_enabled):
                return func(*args, **kwargs)

        return wrapper


class _Off:
    """The rule of a region nested inside others with every device turned off: it casts
    nothing, but keeps the outer regions' cache and settings for when they resume."""

    __slots__ = ("state", "cache", "cache_on", "key")

    def __init__(self, state: dict, cache: dict | None, cache_on: dict) -> None:
        self.state = state
        self.cache = cache
        self.cache_on = cache_on
        self.key = ("autocast",)

    def __call__(self, prim, args: tuple) -> tuple:
        return args


def is_autocast_enabled(device_type: str = "cuda") -> bool:
    """Whether ops on ``device_type``'s tensors autocast in this thread now."""
    dev = _check_device(device_type, "is_autocast_enabled")
    rule = modes().autocast
    return rule is not None and dev in getattr(rule, "state", ())


def get_autocast_dtype(device_type: str):
    """The lower precision dtype of ``device_type``'s region (outside one, PyTorch's default:
    bfloat16 for ``"cpu"``, float16 for ``"cuda"``)."""
    dev = _check_device(device_type, "get_autocast_dtype")
    rule = modes().autocast
    return getattr(rule, "state", {}).get(dev, _DEFAULT_DTYPE[dev])


def current_regions() -> dict:
    """The thread's enabled autocast regions, device type -> dtype: what code that reruns a
    forward later (a checkpoint's recomputation) hands to :func:`regions`."""
    return dict(getattr(modes().autocast, "state", None) or {})


@contextlib.contextmanager
def regions(state: dict) -> Iterator[None]:
    """Run the body in exactly the autocast regions ``state`` (from :func:`current_regions`),
    also inside a backward, as PyTorch's checkpoint recomputes in the forward's autocast state;
    nothing is cached."""
    state = {_check_device(dev, "regions"): _as_dtype(dt, "regions") for dev, dt in state.items()}
    m = modes()
    prev = m.autocast
    m.autocast = _make_rule(m, state, None, {"cpu": False, "cuda": False}) if state else None
    try:
        yield
    finally:
        m.autocast = prev


def is_autocast_available(device_type: str) -> bool:
    """Whether nodegrad can autocast on ``device_type`` (``'cpu'`` and ``'cuda'``)."""
    if not isinstance(device_type, str):
        raise TypeError(f"is_autocast_available: expected a str, got {type(device_type).__name__}")
    return device_type.split(":")[0] in _DEVICES


def _cast_in_region(tensors: tuple, target, cpu_only: bool = False) -> tuple:
    """``tensors`` with each floating tensor cast to ``target(its dtype, the region's low
    dtype for its device)`` (None: kept) while an autocast region is on (``cpu_only``: a
    "cpu" one); as given otherwise (also in a backward the region's rule does not act in, as
    ``_make_rule``'s)."""
    m = modes()
    rule = m.autocast
    state = getattr(rule, "state", None)
    if not state or m.grads_seen is not rule.seen0:
        return tensors
    out = []
    for t in tensors:
        if isinstance(t, Tensor) and B.is_float(t._data.dtype):
            low = state.get("cpu" if type(t._data) is _ndarray else None if cpu_only else "cuda")
            to = None if low is None else target(t._data.dtype, low)
            if to is not None and to != t._data.dtype:
                t = bind(_ASTYPE, (t,), {"dtype": to, "src": t._data.dtype})
        out.append(t)
    return tuple(out)


def float32_in_region(*tensors, cpu_only: bool = False):
    """``tensors`` with the lower-precision floats cast to float32 when their device's autocast
    region is on (else as given): for composite ops PyTorch lists as float32 ops (its losses),
    which reach the primitives as several smaller ones. ``cpu_only``: for ops on the CPU's
    list alone (pools, pads, trace, quantile, FFTs), cast in a "cpu" region only."""
    return _cast_in_region(tensors, lambda dt, low: _F32 if dt.itemsize < 4 else None, cpu_only)


def lower_in_region(*tensors):
    """``tensors`` with their float32 (and lower) floats cast to the region's low precision when
    their device's autocast region is on (else as given): for composite ops PyTorch lists as
    lower-precision ops (``prelu``), which reach the primitives as several smaller ones."""
    return _cast_in_region(tensors, lambda dt, low: None if dt == _F64 else low)


def promote_in_region(*tensors):
    """``tensors`` with their lower-precision floats cast to float32 when one of them is
    float32 and a CPU autocast region is on (else as given): for composite ops PyTorch's CPU
    autocast lists as promote ops (``index_copy``), whose rule also leaves float64 out and
    refuses bfloat16 with float16 (the op itself refuses such mixes here)."""
    if not any(isinstance(t, Tensor) and t._data.dtype == _F32 for t in tensors):
        return tensors
    return float32_in_region(*tensors, cpu_only=True)


def float32_op(fn: Callable) -> Callable:
    """Decorate a composite op that PyTorch's autocast lists as a float32 op: inside a region
    its lower-precision floating tensor arguments (also in lists and tuples) are cast to
    float32 and its body runs with autocast off, as PyTorch runs a listed op, so the matrix
    products inside stay in float32. Outside a region ``fn`` runs as given."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        m = modes()
        rule = m.autocast
        state = getattr(rule, "state", None)
        if not state or m.grads_seen is not rule.seen0:
            return fn(*args, **kwargs)
        up = functools.partial(_up_floats, state=state)
        args = tuple(up(a) for a in args)
        kwargs = {k: up(v) for k, v in kwargs.items()}
        m.autocast = None
        try:
            return fn(*args, **kwargs)
        finally:
            m.autocast = rule

    return wrapper


def _up_floats(value, state: dict):
    """``value`` with its lower-precision floating tensors cast to float32 where their device's
    region is on (lists and tuples walked)."""
    if isinstance(value, Tensor):
        dt = value._data.dtype
        if dt.itemsize < 4 and B.is_float(dt) and (
                state.get("cpu" if type(value._data) is _ndarray else "cuda") is not None):
            return bind(_ASTYPE, (value,), {"dtype": _F32, "src": dt})
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_up_floats(v, state) for v in value)
    return value


# --- custom autograd Functions ------------------------------------------------------------------
def _cast_floats(value, device: str, dtype):
    """``value`` with its floating tensors on ``device`` cast to ``dtype`` (lists, tuples, dicts
    walked), as torch.amp's ``_cast``."""
    if isinstance(value, Tensor):
        on = (type(value._data) is _ndarray) == (device == "cpu")
        if on and B.is_float(value.dtype) and value.dtype != _F64 and value.dtype != dtype:
            return value.astype(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, device, dtype) for k, v in value.items()}
    return value


def custom_fwd(fwd: Callable | None = None, *, device_type: str, cast_inputs: Any = None):
    """Decorate ``forward(ctx, ...)`` of an ``autograd.Function``: it notes the region's state on
    ``ctx`` for :func:`custom_bwd`; with ``cast_inputs`` (a dtype) inside a region it runs with
    autocast off and its floating tensor inputs cast to that dtype, as torch.amp.custom_fwd."""
    dev = _check_device(device_type, "custom_fwd")
    cast_to = None if cast_inputs is None else _as_dtype(cast_inputs, "custom_fwd")
    if fwd is None:
        return functools.partial(custom_fwd, device_type=device_type, cast_inputs=cast_inputs)

    @functools.wraps(fwd)
    def decorate_fwd(*args, **kwargs):
        ctx = args[0]
        ctx._dtype = get_autocast_dtype(dev)
        if cast_to is None:
            ctx._fwd_used_autocast = is_autocast_enabled(dev)
            return fwd(*args, **kwargs)
        ctx._fwd_used_autocast = False
        if is_autocast_enabled(dev):
            with autocast(dev, enabled=False):
                return fwd(*_cast_floats(args, dev, cast_to), **_cast_floats(kwargs, dev, cast_to))
        return fwd(*args, **kwargs)

    return decorate_fwd


def custom_bwd(bwd: Callable | None = None, *, device_type: str):
    """Decorate ``backward(ctx, ...)``: it runs in the autocast state its forward ran in."""
    dev = _check_device(device_type, "custom_bwd")
    if bwd is None:
        return functools.partial(custom_bwd, device_type=device_type)

    @functools.wraps(bwd)
    def decorate_bwd(*args, **kwargs):
        ctx = args[0]
        if not hasattr(ctx, "_fwd_used_autocast"):
            raise RuntimeError("custom_bwd: the Function's forward was not decorated with "
                               "custom_fwd, so its autocast state is unknown")
        with autocast(dev, enabled=ctx._fwd_used_autocast, dtype=ctx._dtype):
            return bwd(*args, **kwargs)

    return decorate_bwd


# --- loss scaling -------------------------------------------------------------------------------
class _Stage(Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _fresh_state() -> dict:
    return {"stage": _Stage.READY, "found_inf": None}


class GradScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler``.

    ``scaler.scale(loss).backward()`` makes the gradients ``scale`` times larger (so float16
    ones do not flush to zero); ``scaler.step(opt)`` divides them back (:meth:`unscale_`, once
    per step, also callable before clipping) and steps unless one holds inf or NaN;
    ``scaler.update()`` then multiplies the scale by ``backoff_factor`` after a skipped step,
    or by ``growth_factor`` after ``growth_interval`` steps in a row without one.
    """

    def __init__(self, device: str = "cpu", init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        self._device = _check_device(device, "GradScaler")
        enabled = bool(enabled)
        if enabled and self._device == "cuda" and not B.cuda_available():
            warnings.warn("GradScaler: device 'cuda' was given but CUDA is not available; "
                          "the scaler is disabled", stacklevel=2)
            enabled = False
        self._enabled = enabled
        if enabled:
            if not growth_factor > 1.0:
                raise ValueError(f"GradScaler: growth_factor must be > 1.0, got {growth_factor}")
            if not backoff_factor < 1.0:
                raise ValueError(f"GradScaler: backoff_factor must be < 1.0, got "
                                 f"{backoff_factor}")
            if not (isinstance(growth_interval, int) and growth_interval > 0):
                raise ValueError(f"GradScaler: growth_interval must be a positive int, got "
                                 f"{growth_interval!r}")
        self._init_scale = float(init_scale)
        self._scale: float | None = None  # float32 value, set by the first scale()
        self._growth_tracker: int | None = None
        self._init_growth_tracker = 0
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._scale_tensors: dict = {}  # device name -> 0-d float32 Tensor holding the scale
        self._per_optimizer: dict = {}

    # -- the scale ------------------------------------------------------------------------
    def _lazy_init(self) -> None:
        self._scale = float(B.np.float32(self._init_scale))
        self._growth_tracker = self._init_growth_tracker

    def _set_scale(self, value: float) -> None:
        self._scale = float(B.np.float32(value))
        self._scale_tensors = {}  # new ones: a graph that saved the old keeps its value

    def _scale_on(self, device: str) -> Tensor:
        t = self._scale_tensors.get(device)
        if t is None:
            be = B.get_backend(device)
            t = Tensor._of(be.xp.asarray(self._scale, dtype=_F32))
            self._scale_tensors[device] = t
        return t

    def scale(self, outputs):
        """``outputs`` (a tensor, or lists/tuples/iterables of them) times the scale."""
        if not self._enabled:
            return outputs
        if self._scale is None:
            self._lazy_init()

        def apply(v):
            if isinstance(v, Tensor):
                s = (self._scale_on(v.device) if modes().jit is None else
                     Tensor._of(self._current_scale(v.device)))
                dt = v.dtype
                if v.ndim == 0 and B.is_float(dt) and dt != _F32:  # 0-d with 0-d: promoted,
                    wide = dt if dt.itemsize > 4 else _F32  # as PyTorch's product
                    return v.astype(wide) * s.astype(wide)
                return v * s
            if isinstance(v, Iterable) and not isinstance(v, (str, bytes)):
                it = map(apply, v)
                return type(v)(it) if isinstance(v, (list, tuple)) else it
            raise ValueError(f"GradScaler.scale: outputs must be a Tensor or an iterable of "
                             f"Tensors, got {type(v).__name__}")

        return apply(outputs)

    def _check_scale(self, what: str) -> None:
        if self._scale is None:
            raise RuntimeError(f"GradScaler.{what}: the scale is not set yet; call "
                               "scaler.scale(loss) earlier in the iteration")

    @effect  # under nodegrad.jit each replay reads the scale that update() left
    def _current_scale(self, device: str):
        """The scale as a new 0-d float32 array on ``device`` (inside a jit trace, where
        the cached tensor would be read as it was when traced)."""
        return B.get_backend(device).xp.asarray(self._scale, dtype=_F32)

    def _state(self, optimizer) -> dict:
        st = self._per_optimizer.get(id(optimizer))
        if st is None or st[0] is not optimizer:
            st = self._per_optimizer[id(optimizer)] = (optimizer, _fresh_state())
        return st[1]

    # -- the step -------------------------------------------------------------------------
    # unscale_, step and update are effects: under nodegrad.jit each replay runs them on that
    # call's gradients (whether a step runs, and the next scale, depend on their values)
    @effect
    def unscale_(self, optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale in place, noting whether any is inf
        or NaN; at most once between :meth:`update` calls (clip gradients after it)."""
        if not self._enabled:
            return
        self._check_scale("unscale_")
        st = self._state(optimizer)
        if st["stage"] is _Stage.UNSCALED:
            raise RuntimeError("GradScaler.unscale_: already called on this optimizer since "
                               "the last update()")
        if st["stage"] is _Stage.STEPPED:
            raise RuntimeError("GradScaler.unscale_: called after step(); call update() first")
        inv = B.np.float32(1.0 / float(self._scale))  # PyTorch's float64 reciprocal, float32
        found = None  # None: no gradient to check (PyTorch records no check then)
        groups = getattr(optimizer, "param_groups", None)
        if groups is None:
            raise TypeError(f"GradScaler.unscale_: expected an optimizer with param_groups, "
                            f"got {type(optimizer).__name__}")
        for group in groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.dtype == _F16:
                    raise ValueError("GradScaler.unscale_: attempting to unscale float16 "
                                     "gradients; keep the parameters in float32 (autocast "
                                     "casts them for the products)")
                d = g._data
                xp = B.backend_of(d).xp
                if found is None:
                    found = False
                if not found and d.size and not bool(xp.isfinite(d).all()):
                    found = True
                with B.np.errstate(invalid="ignore", over="ignore"):
                    xp.multiply(d, inv, out=d)
                g._bump()
        st["found_inf"] = found
        st["stage"] = _Stage.UNSCALED

    @effect
    def step(self, optimizer, *args, **kwargs):
        """Unscale (unless :meth:`unscale_` did) and call ``optimizer.step(*args, **kwargs)``,
        skipping it when a gradient holds inf or NaN; returns what step returned (or None)."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("GradScaler.step: a closure is not supported while the scaler "
                               "is enabled")
        self._check_scale("step")
        st = self._state(optimizer)
        if st["stage"] is _Stage.STEPPED:
            raise RuntimeError("GradScaler.step: already called since the last update()")
        if st["stage"] is _Stage.READY:
            self.unscale_(optimizer)
        if st["found_inf"] is None:
            raise RuntimeError("GradScaler.step: no inf checks were recorded for this "
                               "optimizer: none of its parameters has a gradient")
        ret = None
        if not st["found_inf"]:
            ret = optimizer.step(*args, **kwargs)
        st["stage"] = _Stage.STEPPED
        return ret

    @effect
    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Set the scale for the next iteration: ``new_scale`` if given, else backed off after
        a skipped step, grown after ``growth_interval`` clean ones."""
        if not self._enabled:
            return
        self._check_scale("update")
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                if new_scale.numel() != 1 or new_scale.dtype != _F32 or new_scale.requires_grad:
                    raise ValueError("GradScaler.update: new_scale must be a float or a "
                                     "1-element float32 tensor with requires_grad=False")
                new_scale = new_scale.item()
            elif not isinstance(new_scale, (int, float)) or isinstance(new_scale, bool):
                raise TypeError(f"GradScaler.update: new_scale must be a float or a tensor, "
                                f"got {type(new_scale).__name__}")
            self._set_scale(float(new_scale))
        else:
            states = [st for _, st in self._per_optimizer.values() if st["found_inf"] is not None]
            if not states:
                raise RuntimeError("GradScaler.update: no inf checks were recorded before "
                                   "update(); call step() (or unscale_()) first")
            if any(st["found_inf"] for st in states):
                self._set_scale(float(self._scale) * self._backoff_factor)
                self._growth_tracker = 0
            else:
                n = self._growth_tracker + 1
                if n == self._growth_interval:
                    grown = B.np.float32(float(self._scale) * self._growth_factor)
                    if math.isfinite(grown):
                        self._set_scale(float(grown))
                    n = 0
                self._growth_tracker = n
        self._per_optimizer = {}

    # -- settings and state ---------------------------------------------------------------
    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else self._scale

    def get_growth_factor(self) -> float:
        """The factor the scale grows by after ``growth_interval`` clean steps."""
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        """Set the growth factor."""
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        """The factor the scale shrinks by after a skipped step."""
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        """Set the backoff factor."""
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        """How many clean steps in a row grow the scale."""
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        """Set the growth interval."""
        self._growth_interval = int(new_interval)

    def _get_growth_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._growth_tracker is None else self._growth_tracker

    def is_enabled(self) -> bool:
        """Whether the scaler scales (False when made disabled, or for CUDA without a GPU)."""
        return self._enabled

    def state_dict(self) -> dict:
        """The scale, factors, interval and growth tracker ({} when disabled), as PyTorch's."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` gave."""
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("GradScaler.load_state_dict: the state dict is empty, possibly "
                               "because it was saved from a disabled GradScaler")
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval",
                   "_growth_tracker"} - set(state_dict)
        if missing:
            raise KeyError(f"GradScaler.load_state_dict: missing keys {sorted(missing)}")
        self._init_scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._scale is not None:
            self._set_scale(self._init_scale)
        if self._growth_tracker is not None:
            self._growth_tracker = int(state_dict["_growth_tracker"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._enabled and self._per_optimizer:
            raise RuntimeError("GradScaler: pickled in the middle of an iteration; pickle it "
                               "at the start or end of one")
        state["_scale_tensors"] = {}
        state["_per_optimizer"] = {}
        return state


# --- torch.cuda.amp's names ---------------------------------------------------------------------
class CudaAutocast(autocast):
    """``torch.cuda.amp.autocast``: :class:`autocast` for ``"cuda"``."""

    def __init__(self, enabled: bool = True, dtype: Any = _F16, cache_enabled: bool = True
                 ) -> None:
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


class CudaGradScaler(GradScaler):
    """``torch.cuda.amp.GradScaler``: :class:`GradScaler` for ``"cuda"``."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval,
                         enabled)
