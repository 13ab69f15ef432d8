"""Checking derivatives: finite differences against the engine, and PyTorch as a reference.

``gradcheck`` is the notes' contrast made executable: the engine's reverse-mode gradient must
agree with central finite differences, element by element, in float64. ``assert_close`` and
``make_tensor`` are PyTorch's ``torch.testing`` helpers, with its tolerances and messages.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _backend as B
from .autodiff import mode, run_backward
from .tensor import Tensor, get_default_device


class GradcheckError(AssertionError, RuntimeError):
    """The analytic and numerical gradients disagree (the message names the worst element); a
    RuntimeError too, as PyTorch's, so ``except RuntimeError`` around gradcheck catches it."""


def _outputs(res) -> list:
    if isinstance(res, Tensor):
        return [res]
    if isinstance(res, list | tuple):
        return [r for r in res if isinstance(r, Tensor)]
    raise TypeError(f"gradcheck: f must return a tensor or a tuple of tensors, got {type(res)}")


def _dot(outs, cots) -> float:
    return float(sum((o.numpy().astype("float64") * c).sum() for o, c in zip(outs, cots)))


def _leaf(x, requires_grad: bool = False) -> Tensor:
    """Host array ``x`` as a tensor on the default device (on the CPU, ``x`` itself)."""
    return Tensor._of(B.get_backend(get_default_device()).asarray(x), None, requires_grad)


def _vjp(f, xs, cots, create_graph):
    """Analytic ⟨cot, J⟩ for each float input (None where f does not depend on it)."""
    ins = [_leaf(x, B.is_float(x.dtype)) for x in xs]
    prev = mode.grad_enabled
    mode.grad_enabled = True
    try:
        outs = _outputs(f(*ins))
        live = [(o, Tensor._of(o.backend.asarray(c))) for o, c in zip(outs, cots)
                if o.requires_grad]
        targets = [t for t in ins if t.requires_grad]
        if not live:
            return [None] * len(targets), ins
        gs = run_backward([o for o, _ in live], [c for _, c in live], retain_graph=create_graph,
                          create_graph=create_graph, targets=targets, accumulate=False)
    finally:
        mode.grad_enabled = prev
    return gs, ins


def gradcheck(f: Callable, *inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              order: int = 1, seed: int = 0, raise_exception: bool = True) -> bool:
    """Compare ``f``'s reverse-mode gradient with central differences, in float64.

    ``inputs`` are arrays or tensors; floating ones are differentiated (converted to float64),
    others are passed through. A random cotangent ``v`` turns ``f`` into the scalar ⟨v, f(x)⟩,
    whose every partial derivative is checked: |analytic - numeric| <= atol + rtol |numeric|.
    ``order=2`` also checks the gradient of the gradient. On failure raises GradcheckError
    naming the input, the element and both values (or returns False).
    """
    np = B.np
    xs = [np.array(x.numpy() if isinstance(x, Tensor) else x) for x in inputs]
    xs = [x.astype(np.float64) if B.is_float(x.dtype) else x for x in xs]
    rng = np.random.default_rng(seed)
    with _no_grad():
        outs0 = _outputs(f(*[_leaf(x) for x in xs]))
    cots = [rng.standard_normal(o.shape) for o in outs0]
    gs, _ = _vjp(f, xs, cots, create_graph=False)
    fi = [i for i, x in enumerate(xs) if B.is_float(x.dtype)]
    worst = (0.0, None)
    for k, i in enumerate(fi):
        x = xs[i]
        analytic = np.zeros(x.shape) if gs[k] is None else gs[k].numpy()
        if analytic.shape != x.shape:
            return _fail(f"gradient of input {i} has shape {analytic.shape}, expected {x.shape}",
                         raise_exception)
        for j in np.ndindex(*x.shape):
            orig = x[j]
            x[j] = orig + eps
            with _no_grad():
                hi = _dot(_outputs(f(*[_leaf(a) for a in xs])), cots)
            x[j] = orig - eps
            with _no_grad():
                lo = _dot(_outputs(f(*[_leaf(a) for a in xs])), cots)
            x[j] = orig
            numeric = (hi - lo) / (2 * eps)
            err = abs(analytic[j] - numeric)
            excess = err - (atol + rtol * abs(numeric))
            if not np.isfinite(analytic[j]) and not (np.isnan(analytic[j]) and np.isnan(numeric)):
                excess = np.inf
            if excess > worst[0]:
                worst = (excess, (i, j, analytic[j], numeric))
    if worst[1] is not None:
        i, j, a, n = worst[1]
        return _fail(f"gradcheck failed: input {i}, element {j}: analytic {a!r} vs numerical "
                     f"{n!r} (|diff| {abs(a - n):.3g} > atol {atol} + rtol {rtol} * |numerical|)",
                     raise_exception)
    if order >= 2:
        def first(*ts):
            g2, _ = _vjp_tensors(f, ts, cots)
            return tuple(g for g in g2 if g is not None)

        return gradcheck(first, *xs, eps=eps, atol=atol, rtol=rtol, order=order - 1,
                         seed=seed + 1, raise_exception=raise_exception)
    return True


def _vjp_tensors(f, ts, cots):
    """⟨cot, J⟩ at tensors ``ts`` with the backward pass recorded (for second order)."""
    prev = mode.grad_enabled
    mode.grad_enabled = True
    try:
        ins = [t if t.requires_grad or not B.is_float(t.dtype) else Tensor._of(t._data, None, True)
               for t in ts]
        outs = _outputs(f(*ins))
        live = [(o, Tensor._of(o.backend.asarray(c))) for o, c in zip(outs, cots)
                if o.requires_grad]
        targets = [t for t in ins if B.is_float(t.dtype)]
        gs = run_backward([o for o, _ in live], [c for _, c in live], retain_graph=True,
                          create_graph=True, targets=targets, accumulate=False)
    finally:
        mode.grad_enabled = prev
    return gs, ins


class _no_grad:
    def __enter__(self):
        self.prev = mode.grad_enabled
        mode.grad_enabled = False

    def __exit__(self, *exc):
        mode.grad_enabled = self.prev


def _fail(msg: str, raise_exception: bool) -> bool:
    if raise_exception:
        raise GradcheckError(msg)
    return False


def compare_with_torch(ng_fn: Callable, torch_fn: Callable, *arrays, atol: float = 1e-6,
                       rtol: float = 1e-5, grad: bool = True, seed: int = 0) -> None:
    """Run the same computation in nodegrad and PyTorch and assert values, dtypes and gradients
    agree. ``arrays`` are NumPy arrays; floating ones are differentiated when ``grad``.
    Raises ImportError without torch (tests skip on it)."""
    import torch

    np = B.np
    ng_in = [Tensor._of(np.array(a), None, grad and B.is_float(a.dtype)) for a in arrays]
    t_in = [_torch_leaf(torch, a, grad and B.is_float(a.dtype)) for a in arrays]
    with _grad_on():
        out = ng_fn(*ng_in)
    ref = torch_fn(*t_in)
    if str(ref.dtype).replace("torch.", "") != str(out.dtype):
        raise AssertionError(f"dtype: nodegrad {out.dtype} vs torch {ref.dtype}")
    np.testing.assert_allclose(_as_f64(out.numpy()), _torch_values(torch, ref), atol=atol,
                               rtol=rtol, err_msg="values differ from PyTorch")
    if not grad or not out.requires_grad:
        return
    v = B.cast(np.random.default_rng(seed).standard_normal(out.shape), out.dtype)
    out.backward(Tensor._of(v))
    ref.backward(_torch_leaf(torch, v, False))
    for k, (a, b) in enumerate(zip(ng_in, t_in)):
        if b.grad is None:
            continue
        got = a.grad.numpy() if a.grad is not None else np.zeros(a.shape, a.dtype)
        np.testing.assert_allclose(_as_f64(got), _torch_values(torch, b.grad), atol=atol,
                                   rtol=rtol, err_msg=f"gradient of input {k} differs from "
                                   "PyTorch")


def _torch_leaf(torch, a, requires_grad: bool):
    """NumPy array ``a`` as a torch tensor; bfloat16 (ml_dtypes') goes through float32,
    exactly, as torch reads no ml_dtypes array."""
    if a.dtype == B.bfloat16:
        return torch.tensor(a.astype(B.float32)).bfloat16().requires_grad_(requires_grad)
    return torch.tensor(B.np.array(a), requires_grad=requires_grad)


def _torch_values(torch, t):
    """A torch tensor's values as NumPy (bfloat16 ones as float64, exactly)."""
    t = t.detach()
    return t.double().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _as_f64(a):
    """bfloat16 arrays as float64 (exactly, for NumPy's comparisons); others unchanged."""
    return a.astype(B.float64) if a.dtype == B.bfloat16 else a


class _grad_on(_no_grad):
    def __enter__(self):
        self.prev = mode.grad_enabled
        mode.grad_enabled = True


# --- PyTorch's torch.testing: assert_close and make_tensor -------------------------------------
_PRECISIONS = {"float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
               "float64": (1e-7, 1e-7), "complex64": (1.3e-6, 1e-5),
               "complex128": (1e-7, 1e-7)}
_NUMBER_DTYPES = {int: "int64", float: "float64", complex: "complex128"}


class _Mismatch(Exception):
    """A failed comparison on the way up: the error type, its message and the item path."""

    def __init__(self, kind: type[Exception], msg: str, path: tuple = ()) -> None:
        super().__init__(msg)
        self.kind, self.msg, self.path = kind, msg, path

    def error(self, msg) -> Exception:
        if isinstance(msg, str):
            return self.kind(msg)
        text = self.msg
        if self.path:
            text += ("\n\nThe failure occurred for item "
                     + "".join(str([item]) for item in self.path))
        return self.kind(msg(text) if callable(msg) else text)


def _tolerances(dtypes, rtol, atol) -> tuple[float, float]:
    if (rtol is None) != (atol is None):
        raise ValueError(f"Both 'rtol' and 'atol' must be either specified or omitted, but got "
                         f"no {'rtol' if rtol is None else 'atol'}.")
    if rtol is not None:
        if not (rtol >= 0 and atol >= 0):
            raise ValueError(f"assert_close: rtol and atol must be non-negative, got "
                             f"rtol={rtol}, atol={atol}")
        return rtol, atol
    pairs = [_PRECISIONS.get(str(d), (0.0, 0.0)) for d in dtypes]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def _diff_line(kind: str, diff, idx, tol, equality: bool) -> str:
    line = (f"{kind.title()} difference: {diff}" if idx is None
            else f"Greatest {kind} difference: {diff} at index {idx}")
    return line if equality else f"{line} (up to {tol} allowed)"


def _mismatch_msg(who: str, extra: str, abs_d, abs_i, rel_d, rel_i, rtol, atol) -> str:
    equality = rtol == 0 and atol == 0
    return "\n".join([f"{who} are not {'equal' if equality else 'close'}!", "", extra,
                      _diff_line("absolute", abs_d, abs_i, atol, equality),
                      _diff_line("relative", rel_d, rel_i, rtol, equality)])


def _scalar_msg(actual, expected, rtol, atol) -> str:
    abs_d = abs(actual - expected)
    rel_d = float("inf") if expected == 0 else abs_d / abs(expected)
    return _mismatch_msg("Scalars", f"Expected {expected} but got {actual}.", abs_d, None,
                         rel_d, None, rtol, atol)


def _is_number(x) -> bool:
    return isinstance(x, int | float | complex | B.np.number) and not isinstance(x, bool)


def _compare_numbers(a, e, rtol, atol, equal_nan, check_dtype, path) -> None:
    import cmath

    if check_dtype and type(a) is not type(e):
        raise _Mismatch(AssertionError,
                        f"The (d)types do not match: {type(a)} != {type(e)}.", path)
    a, e = (x.item() if isinstance(x, B.np.number) else x for x in (a, e))
    rtol, atol = _tolerances([_NUMBER_DTYPES.get(type(x), "int64") for x in (a, e)], rtol, atol)
    if a == e or (equal_nan and cmath.isnan(a) and cmath.isnan(e)):
        return
    diff = abs(a - e)
    if cmath.isfinite(diff) and diff <= atol + rtol * abs(e):
        return
    raise _Mismatch(AssertionError, _scalar_msg(a, e, rtol, atol), path)


def _host(x):
    """(host array, device name, strides in elements) of a tensor or NumPy array."""
    if isinstance(x, Tensor):
        return B.np.asarray(x.backend.to_host(x._data)), str(x.device), tuple(x.stride())
    return x, "cpu", tuple(s // x.itemsize for s in x.strides) if x.itemsize else x.strides


def _isclose(a, e, rtol: float, atol: float, equal_nan: bool):
    np = B.np
    if a.dtype == B.bfloat16:  # compared in float32, which holds every bfloat16 exactly
        a, e = a.astype(B.float32), e.astype(B.float32)
    with np.errstate(all="ignore"):
        close = a == e
        if a.dtype.kind in "fc":
            if equal_nan:
                close |= np.isnan(a) & np.isnan(e)
            finite = np.isfinite(a) & np.isfinite(e)
            close |= finite & (np.abs(a - e) <= atol + rtol * np.abs(e))
        elif rtol or atol:
            af, ef = a.astype(np.float64), e.astype(np.float64)
            close |= np.abs(af - ef) <= atol + rtol * np.abs(ef)
    return close


def _compare_arrays(actual, expected, rtol, atol, equal_nan, check_device, check_dtype,
                    check_stride, path) -> None:
    np = B.np
    a, a_dev, a_str = _host(actual)
    e, e_dev, e_str = _host(expected)

    def attr(name, x, y):
        raise _Mismatch(AssertionError,
                        f"The values for attribute '{name}' do not match: {x} != {y}.", path)

    if a.shape != e.shape:
        attr("shape", a.shape, e.shape)
    if check_stride and a_str != e_str:
        attr("stride()", a_str, e_str)
    if check_device and a_dev != e_dev:
        attr("device", a_dev, e_dev)
    if check_dtype and a.dtype != e.dtype:
        attr("dtype", a.dtype, e.dtype)
    rtol, atol = _tolerances([a.dtype, e.dtype], rtol, atol)
    if a.dtype != e.dtype:
        from .dtypes import torch_promote_types

        common = torch_promote_types(a.dtype, e.dtype)
        a, e = a.astype(common), e.astype(common)
    close = _isclose(a, e, rtol, atol, equal_nan)
    if close.all():
        return
    if a.ndim == 0:
        raise _Mismatch(AssertionError, _scalar_msg(a.item(), e.item(), rtol, atol), path)
    n, bad = close.size, int(close.size - close.sum())
    af, ef, ok = a.reshape(-1), e.reshape(-1), close.reshape(-1)
    if af.dtype.kind in "biu":  # PyTorch's int64 differences, divided in the default float
        af, ef = af.astype(np.int64), ef.astype(np.int64)
    with np.errstate(all="ignore"):
        abs_d = np.abs(af - ef)
        abs_d[ok] = 0
        rel_d = abs_d / np.abs(ef)
        if rel_d.dtype.kind == "f" and af.dtype.kind in "biu":
            rel_d = rel_d.astype(np.float32)
        rel_d[ok] = 0
    ia, ir = int(np.argmax(abs_d)), int(np.argmax(rel_d))
    extra = f"Mismatched elements: {bad} / {n} ({bad / n:.1%})"
    raise _Mismatch(AssertionError, _mismatch_msg(
        "Tensor-likes", extra, abs_d[ia].item(), _index(ia, a.shape), rel_d[ir].item(),
        _index(ir, a.shape), rtol, atol), path)


def _index(flat: int, shape: tuple) -> tuple[int, ...]:
    return tuple(int(i) for i in B.np.unravel_index(flat, shape))


def _tensor_like(x) -> bool:
    return isinstance(x, Tensor | B.np.ndarray)


def _compare(actual, expected, path: tuple, opts: dict) -> None:
    from collections.abc import Mapping, Sequence

    if (isinstance(actual, Sequence) and not isinstance(actual, str)
            and isinstance(expected, Sequence) and not isinstance(expected, str)):
        if len(actual) != len(expected):
            raise _Mismatch(AssertionError, f"The length of the sequences mismatch: "
                            f"{len(actual)} != {len(expected)}", path)
        for i, (a, e) in enumerate(zip(actual, expected)):
            _compare(a, e, path + (i,), opts)
    elif isinstance(actual, Mapping) and isinstance(expected, Mapping):
        ka, ke = set(actual), set(expected)
        if ka != ke:
            raise _Mismatch(AssertionError, "The keys of the mappings do not match:\n"
                            f"Missing keys in the actual mapping: {sorted(ke - ka)}\n"
                            f"Additional keys in the actual mapping: {sorted(ka - ke)}", path)
        try:
            keys = sorted(ka)
        except TypeError:
            keys = list(ka)
        for k in keys:
            _compare(actual[k], expected[k], path + (k,), opts)
    elif actual is None or expected is None:
        if not (actual is None and expected is None):
            raise _Mismatch(AssertionError, f"None mismatch: {actual} is not {expected}", path)
    elif isinstance(actual, bool | B.np.bool_) and isinstance(expected, bool | B.np.bool_):
        if bool(actual) is not bool(expected):
            raise _Mismatch(AssertionError,
                            f"Booleans mismatch: {bool(actual)} is not {bool(expected)}", path)
    elif _is_number(actual) and _is_number(expected) or (
            isinstance(actual, bool) != isinstance(expected, bool)
            and all(isinstance(x, bool) or _is_number(x) for x in (actual, expected))):
        _compare_numbers(actual, expected, opts["rtol"], opts["atol"], opts["equal_nan"],
                         opts["check_dtype"], path)
    elif ((isinstance(actual, Tensor) and isinstance(expected, Tensor)) or (
            isinstance(actual, B.np.ndarray) and isinstance(expected, B.np.ndarray))) and (
            opts["allow_subclasses"] or type(actual) is type(expected)):
        _compare_arrays(actual, expected, opts["rtol"], opts["atol"], opts["equal_nan"],
                        opts["check_device"], opts["check_dtype"], opts["check_stride"], path)
    else:
        raise _Mismatch(TypeError, f"No comparison pair was able to handle inputs of type "
                        f"{type(actual)} and {type(expected)}.", path)


def assert_close(actual, expected, *, allow_subclasses: bool = True, rtol: float | None = None,
                 atol: float | None = None,
                 equal_nan: bool = False, check_device: bool = True, check_dtype: bool = True,
                 check_layout: bool = True, check_stride: bool = False,
                 msg: str | Callable[[str], str] | None = None) -> None:
    """Assert ``actual`` and ``expected`` are close, as ``torch.testing.assert_close``:
    |actual - expected| <= atol + rtol |expected| elementwise, for tensors, NumPy arrays,
    numbers, and sequences or mappings of them (compared item by item).

    Without ``rtol``/``atol`` (give both or neither) the tolerances follow the dtypes: float16
    1e-3/1e-5, float32 and complex64 1.3e-6/1e-5, float64 and complex128 1e-7/1e-7, integers
    and bools exact. Shapes must match, and devices and dtypes unless ``check_device`` /
    ``check_dtype`` is False (then values are compared on the host, in the promoted dtype).
    ``check_layout`` is accepted (every nodegrad tensor is strided). The AssertionError gives
    PyTorch's message (mismatched count, greatest absolute and relative difference and where);
    ``msg`` replaces it, or, if callable, receives it and returns the message to raise.
    ``allow_subclasses=False`` refuses a pair of different tensor classes (a Parameter and a
    Tensor) with a TypeError."""
    __tracebackhide__ = True
    opts = {"rtol": rtol, "atol": atol, "equal_nan": equal_nan, "check_device": check_device,
            "check_dtype": check_dtype, "check_stride": check_stride,
            "allow_subclasses": allow_subclasses}
    if rtol is not None or atol is not None:  # both or neither, before anything is compared
        _tolerances([], rtol, atol)
    try:
        _compare(actual, expected, (), opts)
    except _Mismatch as m:
        raise m.error(msg) from None


_MAKE_INTS = ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32")


def make_tensor(*shape, dtype, device=None, low: float | None = None,
                high: float | None = None, requires_grad: bool = False,
                noncontiguous: bool = False, exclude_zero: bool = False,
                memory_format=None) -> Tensor:
    """A random tensor for tests, as ``torch.testing.make_tensor``: floats (and both parts of
    complex numbers) uniform in [low, high) (default [-9, 9)), integers in [low, high)
    (default [-9, 10), clamped to the dtype's range), bools either value; drawn from
    nodegrad's default generator (``ng.manual_seed`` repeats them). ``noncontiguous`` gives a
    strided view (every second element of a last axis twice as long); ``exclude_zero``
    replaces zeros by 1 (integers) or the dtype's smallest normal number (floats)."""
    import math
    from collections.abc import Sequence

    from .random import randint, uniform

    np = B.np
    if len(shape) == 1 and isinstance(shape[0], Sequence):
        shape = shape[0]
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"make_tensor: shape must be ints or one sequence of ints, "
                        f"got {shape!r}") from None
    if memory_format is not None:
        raise ValueError("make_tensor: memory_format is not supported (nodegrad tensors are "
                         "row-major; use noncontiguous=True for a strided one)")
    dt = B.as_dtype(dtype)
    name = str(dt)
    is_int = name in _MAKE_INTS
    if not is_int and not B.is_inexact(dt):
        raise TypeError(f"The requested dtype '{dt}' is not supported by make_tensor().")
    if requires_grad and is_int:
        raise ValueError(f"`requires_grad=True` is not supported for boolean and integral "
                         f"dtypes, but got dtype={dt}")
    if name == "bool":
        lo_in, hi_ex, d_lo, d_hi = 0, 2, 0, 2
    elif is_int:
        info = np.iinfo(dt)
        lo_in, hi_ex, d_lo, d_hi = int(info.min), int(info.max) + (name != "int64"), -9, 10
    else:
        info = B.finfo(dt)
        lo_in, hi_ex, d_lo, d_hi = float(info.min), float(info.max), -9, 9
    low = d_lo if low is None else low
    high = d_hi if high is None else high
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        raise ValueError(f"`low` and `high` cannot be NaN, but got low={low} and high={high}")
    if low > high or (low == high and is_int):
        raise ValueError(f"`low` must be less than `high`, but got {low} >= {high}")
    if high < lo_in or low >= hi_ex:
        raise ValueError(f"The value interval specified by `low` and `high` is [{low}, {high}), "
                         f"but {dt} only supports [{lo_in}, {hi_ex})")
    low, high = min(max(low, lo_in), hi_ex), min(max(high, lo_in), hi_ex)
    noncontiguous = noncontiguous and math.prod(shape) > 1
    full = (*shape[:-1], 2 * shape[-1]) if noncontiguous else shape
    if is_int:
        vals = randint(math.ceil(low), math.ceil(high), full, dtype="int64").numpy()
    else:
        real = dt if B.is_float(dt) else np.dtype(f"float{dt.itemsize * 4}")
        parts = full if B.is_float(dt) else (*full, 2)
        half = high - low >= B.finfo(real).max
        lo, hi = (low / 2, high / 2) if half else (low, high)
        vals = uniform(0.0, 1.0, parts, dtype="float64").numpy() * (hi - lo) + lo
        vals = B.cast(vals * 2 if half else vals, real)
        if dt.kind == "c":
            vals = vals[..., 0] + 1j * vals[..., 1]
    vals = vals.astype(dt)
    if exclude_zero:
        vals[vals == 0] = 1 if is_int else B.finfo(dt).tiny
    data = B.get_backend(device if device is not None else get_default_device()).asarray(vals)
    if noncontiguous:
        data = data[..., 1::2]
    return Tensor._of(data, None, bool(requires_grad))
