"""Primitives: one declaration per operation, and ``bind``, which runs and records it.

A primitive carries its name, its forward on backend arrays (it receives ``xp``), its VJP rules
written with differentiable tensor operations (so ``create_graph=True`` gives higher orders and
nothing is recorded otherwise), what its node must keep (``saves``), and slots for a JVP rule
and a batching rule. Parameters such as ``axis`` are keywords, kept hashable where possible.
``bind`` brings operands of different dtypes to one first, by PyTorch's rules (:mod:`.dtypes`).
A bfloat16 op computes in float32 and rounds its float result back to bfloat16, as PyTorch's CPU
kernels do (:func:`_through_float32`): NumPy's loops for ml_dtypes' bfloat16 answer some ops in
float32 (``matmul``), refuse others (``einsum``) and accumulate sums in bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _backend as B
from .batching import batch_bind, elementwise_rule, reduce_rule
from .autodiff import (ANOMALY, Node, _per_thread, anomaly_error, creation_site, has_nan,
                       input_held_nan, modes, pack_saved)
from .dtypes import _key_of, result_type_of_keys
from .errors import AnomalyError, DeviceError, DTypeError, ShapeError
from .tensor import Tensor, write_results

REGISTRY: dict[str, Primitive] = {}
# ops that only move or select bfloat16 values (views among them, which must stay views): they run
# on bfloat16 arrays as they are; every other op computes bfloat16 operands in float32
_BF16_NATIVE_KINDS = ("shape", "control")
_BF16_NATIVE = {"astype", "getitem", "setitem", "view_put", "take_along_axis",
                "sliding_window_view",
                # exact in the operands' own dtype (a number rounded to it, as PyTorch's)
                "equal", "not_equal", "less", "less_equal", "greater", "greater_equal"}
_BF16_THROUGH = {"sum_to"}  # a shape op that adds: it accumulates in float32
# float16 on the CPU goes the same way (PyTorch's CPU kernels compute float16 in float32 too),
# except where the forward itself computes in float32 and rounds once (a parameter's cast
# autocast caches then stays the node's operand) and the ops that answer in float16's own
# grid (its next float, its largest)
_F16_NATIVE = {"linear", "linear_relu", "conv", "conv_relu", "nextafter", "nan_to_num"}
_SAVES = {"inputs": (True, False), "out": (False, True), "both": (True, True),
          "none": (False, False)}


class Primitive:
    """The record of one operation. Call it like a function: ``exp(x)``."""

    def __init__(self, name, fwd, vjp, vjp_all, jvp, batch, kind, saves, promote, doc,
                 operands=None):
        self.name = name
        self.fwd = fwd
        self.vjp = vjp
        self.vjp_all = vjp_all
        self.jvp = jvp
        self.batch = batch
        self.kind = kind
        self.save_in, self.save_out = _SAVES[saves]
        self.promote = promote
        self.operands = operands
        self.differentiable = vjp is not None or vjp_all is not None
        # whether its result may view an input's array (elementwise ops and reductions make
        # new arrays): bind then shares the input's version counter (_share_version)
        self.views = kind not in ("elementwise", "reduce")
        # whether bfloat16 operands run as they are (else through float32, _through_float32)
        self.bf16_native = (kind in _BF16_NATIVE_KINDS or name in _BF16_NATIVE) \
            and name not in _BF16_THROUGH
        self.f16_native = self.bf16_native or name in _F16_NATIVE
        self.vjp_raw = None  # the VJP on host arrays for a first-order backward (see primitive)
        # ``add_into(acc, g, **params) -> bool``: add the VJP message for input 0 into the
        # engine's own pending sum ``acc`` (that input's shape) in place, as adding the message
        # would, where it can (a basic slice: see autodiff._apply_vjps); None for most
        self.add_into = None
        # how a complex cotangent goes back (see autodiff._complex_vjps): "holomorphic", rules
        # of its own, or None (refused); set by the op's declaration or by ops/complex.py
        self.complex = None
        # whether each of its two inputs' VJP reads only the other input (x * y): an input's
        # value is then checked for in-place changes only when the other one needs a gradient
        self.cross = False
        # PyTorch's names of its operands (ops/keywords.Keywords), taken as keywords: exp(input=x)
        self.keywords = None
        self.__doc__ = doc


    def __call__(self, *args, **params):
        if params:
            if self.keywords is not None and not self.keywords.isdisjoint(params):
                args = self.keywords.bind(args, params)  # mul(a, other=b): b is the operand
            if "out" in params:  # PyTorch's and NumPy's out=: computed as without it, written
                out = params.pop("out")
                res = bind(self, args, params)
                return res if out is None else write_results(self.name, out, res)
        return bind(self, args, params)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


def primitive(name: str, fwd: Callable, vjp=None, *, vjp_all: Callable | None = None,
              saves: str = "inputs", kind: str | None = None, jvp=None, batch=None,
              promote: bool = True, operands="default", doc: str | None = None,
              vjp_raw: Callable | None = None, complex=None) -> Primitive:
    """Declare and register a primitive.

    ``vjp`` is one rule ``(g, ans, *inputs, **params) -> cotangent`` per input (a bare callable
    for a one-input op, None for an input without gradient); ``vjp_all`` instead returns all
    cotangents at once, for variadic ops. ``saves`` names what the VJP reads: ``"inputs"``,
    ``"out"``, ``"both"`` or ``"none"`` (then it receives shape-only specs). ``kind``
    ("elementwise", "reduce", "shape", ...) lets later transforms derive batching rules.
    ``operands`` names the inputs brought to one dtype by type promotion (:mod:`.dtypes`):
    ``"all"`` (the default for elementwise ops), a tuple of positions, or None.

    ``vjp_raw`` ``(needs, g, ans, *inputs, **params) -> tuple | None`` is an optional second
    form of the VJP for the commonest backward: first order, no transform active, every array a
    NumPy array of g's dtype (integer inputs aside). It returns the cotangents as arrays (None
    for an input it was not asked for), computed by the same forwards the rules bind, in the
    same order, so the bits are the rules'; or None to leave this node to the rules. It skips
    the binds the rules would make (~4 µs each): a hot op's backward in plain arrays.

    ``complex`` says how a complex cotangent goes back (:func:`.autodiff._complex_vjps`):
    "holomorphic" (the rules, conjugated), rules of its own, or None (refused).
    """
    if name in REGISTRY:
        raise ValueError(f"primitive {name!r} is declared twice")
    if callable(vjp):
        vjp = (vjp,)
    if operands == "default":
        operands = "all" if kind == "elementwise" else None
    if operands == "all":
        operands = True
    p = Primitive(name, fwd, vjp, vjp_all, None, batch, kind, saves, promote, doc, operands)
    p.jvp = _jvp_rule(p, jvp)
    p.vjp_raw = vjp_raw
    p.complex = complex
    if batch is None and kind == "elementwise":
        p.batch = elementwise_rule(p)
    elif batch is None and kind == "reduce":
        p.batch = reduce_rule(p)
    REGISTRY[name] = p
    return p


# --- JVP rules ------------------------------------------------------------------------------
# A JVP rule is ``rule(tangents, ans, *inputs, **params) -> tangent of the output`` (or None for
# zero), written with tensor ops so it can itself be differentiated. ``tangents`` has one entry
# per input, None where the tangent is zero; ``ans`` and the inputs are what the node kept (as
# for the VJP). A declaration passes a callable, a tuple of per-input rules
# ``(t_i, ans, *inputs, **params) -> contribution`` (summed and broadcast to the output), or:
#   "vjp"          the VJP rules are also the JVP rules: elementwise ops, whose Jacobian is diagonal
#   "linear"       the op is linear in its differentiable inputs: apply it to the tangents
#   "multilinear"  linear in each input separately (matmul, einsum): sum of one-tangent products
def _jvp_rule(p: Primitive, how):
    if how is None or callable(how):
        return how
    if how == "vjp":
        return None if p.vjp is None else _per_input_jvp(p.vjp)
    if isinstance(how, tuple):
        return _per_input_jvp(how)
    if how == "linear":
        return _linear_jvp(p)
    if how == "multilinear":
        return _multilinear_jvp(p)
    raise ValueError(f"primitive {p.name}: unknown JVP rule {how!r}")


def _shape(a) -> tuple:
    return tuple(getattr(a, "shape", ()))


def _broadcast(t, shape: tuple):
    if tuple(t.shape) == shape:
        return t
    return bind(REGISTRY["broadcast_to"], (t,), {"shape": shape})


def _per_input_jvp(rules):
    def rule(tangents, ans, *args, **params):
        out_shape = B.np.broadcast_shapes(*(_shape(a) for a in args))
        total = None
        for r, t in zip(rules, tangents):
            if t is None or r is None:
                continue
            c = r(_broadcast(t, out_shape), ans, *args, **params)
            total = c if total is None else total + c
        return None if total is None else _broadcast(total, out_shape)

    return rule


def _zero_for(a, like):
    """A zero tangent for input ``a`` (a tensor, a shape-only spec or a number)."""
    if type(a) in _SCALARS:
        return 0
    return Tensor._of(like.backend.xp.zeros(_shape(a), dtype=a.dtype))


def _linear_jvp(p: Primitive):
    diff = p.vjp  # None entries mark inputs that are not differentiated (indices)

    def rule(tangents, ans, *args, **params):
        like = next(t for t in tangents if t is not None)
        ts = []
        for i, (a, t) in enumerate(zip(args, tangents)):
            if diff is not None and diff[i] is None:
                ts.append(a)
            elif t is not None:
                ts.append(t)
            else:
                ts.append(_zero_for(a, like))
        return bind(p, tuple(ts), params)

    return rule


def _multilinear_jvp(p: Primitive):
    def rule(tangents, ans, *args, **params):
        total = None
        for i, t in enumerate(tangents):
            if t is None:
                continue
            c = bind(p, args[:i] + (t,) + args[i + 1:], params)
            total = c if total is None else total + c
        return total

    return rule


def _device_error(prim, a, b) -> DeviceError:
    return DeviceError(f"{prim.name}: operands are on different devices ({a.name} and {b.name}); "
                       "move them with .to(device) first")


_SHAPE_WORDS = ("shape", "broadcast", "dimension", "size", "axis", "mismatch", "reshape")


def _value_error(prim, datas, params, e: ValueError) -> ValueError:
    """A ShapeError naming the op and the shapes (or the op alone, for other value errors)."""
    shapes = ", ".join(str(tuple(d.shape)) if hasattr(d, "shape") else repr(d) for d in datas)
    ps = "".join(f", {k}={v!r}" for k, v in params.items() if k != "index")
    if any(w in str(e) for w in _SHAPE_WORDS):
        return ShapeError(f"{prim.name}: cannot apply to shapes {shapes}{ps}: {e}")
    return ValueError(f"{prim.name} (shapes {shapes}{ps}): {e}")


def int_range_error(name: str, v: int, dtype) -> OverflowError:
    """The error for a Python int ``v`` that an integer ``dtype`` cannot hold. PyTorch wraps it
    around (two's complement); nodegrad refuses, as documented, and says how to get the
    wrapped value (hashing code multiplies int32 coordinates by primes such as 2654435761)."""
    return OverflowError(f"{name}: the number {v} is out of range for the {dtype} operand; "
                         "PyTorch wraps it around, nodegrad refuses: compute in int64 (x.long())"
                         " and mask the result, or give a number the dtype holds")


def _int_range_error(prim, datas: list, e: OverflowError) -> OverflowError:
    """NumPy's OverflowError for an int operand as :func:`int_range_error`, naming the op."""
    arrays = [d for d in datas if getattr(d, "dtype", None) is not None]
    dt = B.np.result_type(*[d.dtype for d in arrays]) if arrays else None
    big = [d for d in datas if type(d) is int]
    if dt is None or dt.kind not in "iu" or not big:
        return OverflowError(f"{prim.name}: {e}")
    info = B.np.iinfo(dt)
    bad = next((v for v in big if not info.min <= v <= info.max), big[0])
    return int_range_error(prim.name, bad, dt)


def _anomaly(prim, backend, args, datas, out) -> None:
    """Raise if ``out`` has NaN/Inf that its inputs did not, or NaN that came in with an input
    (detect_anomaly mode)."""
    xp = backend.xp
    if not ANOMALY[1] or not B.is_inexact(out.dtype) or bool(xp.isfinite(out).all()):
        return  # (check_nan=False: the mode notes creation sites only)
    bad = [i for i, d in enumerate(datas)  # inputs holding NaN/Inf (a NaN number counts)
           if (getattr(d, "dtype", None) is not None and B.is_inexact(d.dtype)
               and not bool(xp.isfinite(d).all())) or (isinstance(d, float) and d != d)]
    node = modes().in_backward
    if node is not None:
        if not bad:
            raise anomaly_error(node, f"'{prim.name}' step")
        return  # the result check of that backward says where it came from
    if not bad:
        raise AnomalyError(f"forward of '{prim.name}' produced NaN/Inf from finite inputs "
                           f"at {creation_site()}")
    for i in bad:  # an Inf that came in (a mask, say) passes, as without anomaly mode
        if has_nan(datas[i]):
            raise AnomalyError(input_held_nan(prim.name, i, len(args), args[i], datas[i],
                                              f" when called at {creation_site()}"))


_ndarray = B.ndarray
_make = Tensor.make
_new = object.__new__
_np = B.np
_CPU = B.CPU
_DEFAULT_FLOAT = B.DEFAULT_FLOAT
_BF16 = B.bfloat16
_F32 = B.float32
_F16 = _np.dtype("float16")
_SCALARS = (float, int, bool, type(None))


def _mixed(prim, a, b) -> DTypeError:
    return DTypeError(f"{prim.name}: mixed float dtypes {a} and {b}; nodegrad never promotes "
                      "silently, convert one explicitly (x.astype(...), .float(), .double())")


def _promote(prim: Primitive, args: tuple) -> tuple:
    """``args`` with the operands that take part in type promotion cast to their result type.

    Equal dtypes (the usual case) return at once; otherwise the result type comes from
    :mod:`.dtypes`, cached by operand dtypes, and a cast of a tensor is the differentiable
    ``astype``, so a cotangent returns to its input in the input's own dtype.
    """
    pos = prim.operands
    if pos is True:
        pos = range(len(args))
    dt = None
    cnum = False  # a Python complex number among them (it makes a real tensor complex)
    for i in pos:
        a = args[i]
        if type(a) in _SCALARS:
            continue
        d = getattr(a, "dtype", None)
        if d is None:  # checked first: a leading complex number must not pass as dtype None
            cnum = cnum or type(a) is complex
            continue
        if d is dt:
            continue
        if dt is None:
            dt = d
        elif d != dt:
            break
    else:
        if not cnum or dt is None or dt.kind == "c":
            return args
    try:
        target = result_type_of_keys(tuple(_key_of(args[i]) for i in pos))
    except DTypeError as e:
        raise DTypeError(f"{prim.name}: {e}") from None
    out = list(args)
    for i in pos:
        a = out[i]
        if isinstance(a, Tensor):
            if a.dtype != target:
                out[i] = bind(REGISTRY["astype"], (a,), {"dtype": target, "src": a.dtype})
        elif B.is_array(a) and a.dtype != target:
            out[i] = a.astype(target)
        elif isinstance(a, B.generic):  # a NumPy scalar: the Python number it holds
            out[i] = a.item()
    if all(o is a for o, a in zip(out, args)):
        return args  # nothing to cast (an operand that cannot take part), never bind again
    return tuple(out)


def _float_dtype(prim: Primitive, datas: list):
    """The one float dtype among the arrays (None if none); two raise (no silent float64)."""
    fdt = None
    for d in datas:
        dt = getattr(d, "dtype", None)
        if dt is not None and (dt.kind == "f" or dt is _BF16):
            if fdt is None:
                fdt = dt
            elif dt != fdt:
                raise _mixed(prim, fdt, dt)
    return fdt


def _devices(prim: Primitive, datas: list) -> tuple:
    """The one backend of the array operands (two devices raise) and whether dtypes differ."""
    backend = first = None
    mixed = False
    for d in datas:
        if type(d) is not _ndarray and not B.is_array(d):
            continue
        b = B.backend_of(d)
        if backend is not b:
            if backend is not None:
                raise _device_error(prim, backend, b)
            backend = b
        if first is None:
            first = d.dtype
        elif d.dtype != first:
            mixed = True
    return backend, mixed


def set_default_float(dtype) -> None:
    """Make ``dtype`` the float that integer operands of float ops give (``bind``'s rule), for
    :func:`nodegrad.set_default_dtype`."""
    global _DEFAULT_FLOAT
    _DEFAULT_FLOAT = dtype


def as_float(prim: Primitive, backend, datas: list, params: dict, out, dtype):
    """``prim``'s result ``out`` of integer or bool operands as float ``dtype``. Where every
    array operand is an integer or a bool, it is computed again from the operands cast to
    ``dtype``, as PyTorch computes it: NumPy computes ops of 8-bit integers and bools in
    float16 (``exp`` of a uint8 image is float32's ``exp``, not float16's rounded up) and those
    of wider integers in float64 (``int_tensor * 0.9`` is float32's product of the integers
    and 0.9 in float32, not the float64 product rounded, which can round the other way:
    ``(3 * 0.9 + 3 * 0.1)`` truncates to 2 in PyTorch, as EMA code averaging
    ``num_batches_tracked`` relies on)."""
    if out.dtype != dtype and all(d.dtype.kind in "biu" for d in datas if B.is_array(d)):
        cast = [d.astype(dtype) if B.is_array(d) else d for d in datas]
        try:
            with backend.scope():
                again = prim.fwd(backend.xp, *cast, **params)
        except (TypeError, ValueError, IndexError):  # an operand that must stay an integer
            again = None
        if getattr(again, "dtype", None) == dtype:
            return again if B.is_array(again) else backend.asarray(again)  # (a 0-d result)
    return out.astype(dtype)


#: the version cell of a saved value that no gradient reads (never moves on)
_UNREAD = [0]


def _share_version(t: Tensor, args: tuple, out, prim: Primitive, params: dict) -> None:
    """A view's tensor shares the version counter of the tensor whose array it views, as
    PyTorch's views do: an in-place change through either is then seen by every node that
    saved the other (the error, not a silently wrong gradient), and its ``_view`` names the base
    and the op, so an in-place change of the view while recording reaches the base
    (:func:`.ops.index.write_through`)."""
    root = out if out.base is None else out.base
    if type(root) is not _ndarray and not B.is_array(root):  # NumPy's as_strided: its base
        root = getattr(root, "base", root)  # object holds the array it views
    for a in args:
        if isinstance(a, Tensor):
            d = a._data
            if d is root or d.base is root:
                a._add_view(t)
                t._view = (a, prim, params)  # an in-place change of t under autograd tells a
                return



def _batched_view(out, args: tuple, prim: Primitive, params: dict) -> None:
    """Inside vmap, ``out`` of a view op (transpose, diagonal, reshape, ...) names its batched
    base and the op, as an eager view does (:func:`_share_version`), so an in-place change of
    ``out`` also changes the base (:func:`.ops.index.write_through`) instead of being lost;
    nested vmaps too (the arrays compared are the innermost). A dtype view (``.imag``,
    ``view_as_real``), whose batched write the view-put rule cannot place by position, is named
    as one: its base takes the view's inverse of the new values."""
    level = getattr(out, "level", None)
    if level is None or getattr(out, "_view", None) is not None:
        return
    d = _innermost(out)
    if not B.is_array(d):
        return
    root = d if d.base is None else d.base
    for a in args:
        if type(a) is type(out) and getattr(a, "level", None) is level:
            v = _innermost(a)
            if B.is_array(v) and (v is root or v.base is root):
                out._view = (a, prim, params) if v.dtype == d.dtype else (a, DTYPE_VIEW,
                                                                            prim.name)
            return


#: the second entry of a batched dtype view's ``_view`` (see :func:`_batched_view`)
DTYPE_VIEW = "dtype view"


def _innermost(t):
    """The array under a batched tensor, through nested vmaps' tracers (None if none)."""
    while type(t) is not Tensor:
        t = getattr(t, "val", None)
        if t is None:
            return None
    return t._data


#: binary ops whose float16 and bfloat16 CPU kernels in PyTorch take a Python number rounded to
#: the tensor's dtype (multiply and the divisions keep it in float32)
ROUNDS_NUMBER = frozenset({"add", "subtract", "power", "remainder", "fmod"})


def low_number(v, low) -> float:
    """The Python number ``v`` rounded to float16 or bfloat16 ``low`` (out of range: inf)."""
    with B.np.errstate(over="ignore"):
        return float(B.cast(B.np.asarray(float(v)), low))


def _through_float32(prim: Primitive, args: tuple, params: dict, m, low=_BF16):
    """``prim`` on bfloat16 operands (``low``; float16 ones on the CPU too), computed in float32
    with its float32 result rounded back to ``low`` once, as PyTorch's CPU kernels compute
    bfloat16 (matmul, sums, softmax, norms and convolutions accumulate in float32). The casts
    are the differentiable ``astype``, so a gradient reaches a bfloat16 input as bfloat16. An
    explicit ``dtype=`` result is kept."""
    cast = REGISTRY["astype"]
    up = {"dtype": _F32, "src": low}
    if params.get("dtype") is low:  # a bfloat16 result asked for: accumulate in float32
        params = {**params, "dtype": None}
    if prim.kind == "elementwise" and m.grad_enabled and len(args) > 1:
        args = _broadcast_bf16(args, low)
    if prim.name in ROUNDS_NUMBER:
        args = tuple(low_number(a, low) if type(a) is float or type(a) is int else a
                     for a in args)
    args = tuple(bind(cast, (a,), up) if isinstance(a, Tensor) and a._data.dtype is low
                 else a.astype(_F32) if B.is_array(a) and a.dtype is low else a
                 for a in args)
    rule, m.autocast = m.autocast, None  # autocast already chose these operands' dtype
    try:
        out = bind(prim, args, params)
    finally:
        m.autocast = rule
    if out.dtype is not _F32 or params.get("dtype") is not None:
        return out
    return bind(cast, (out,), {"dtype": low, "src": _F32})


def _broadcast_bf16(args: tuple, low=_BF16) -> tuple:
    """A bfloat16 operand that needs a gradient and is broadcast by an elementwise op, first
    broadcast in bfloat16: its gradient is then the per-element product rounded to bfloat16 and
    summed back in float32 (rounded once), PyTorch's order (``w.grad`` of ``x * w``)."""
    ts = [a for a in args if isinstance(a, Tensor)]
    if not any(a.requires_grad and a._data.dtype is low for a in ts):
        return args
    try:
        shape = B.np.broadcast_shapes(*(a.shape for a in ts))
    except ValueError:  # the op itself names the shapes that do not broadcast
        return args
    bcast = REGISTRY["broadcast_to"]
    return tuple(bind(bcast, (a,), {"shape": shape})
                 if isinstance(a, Tensor) and a.requires_grad and a._data.dtype is low
                 and tuple(a.shape) != shape else a for a in args)


#: operand types with their own rules for the primitives (``__nodegrad_bind__``): the sparse
#: tensors (``ops/sparse.py`` adds them); bind asks them outside vmap on its error branch only
DEFERRING: set = set()


def _operand_error(name: str, a) -> str:
    """The message for an operand ``bind`` cannot take (kept out of the hot loop)."""
    msg = f"{name}: expected tensors or numbers, got {type(a).__name__}"
    if isinstance(a, tuple) and getattr(a, "_fields", None) == ("values", "indices"):
        msg += (" (values, indices): take its .values (max(x, 1), sort and median with a "
                "positional dim return both, as PyTorch's; axis= gives NumPy's values only)")
    return msg


def bind(prim: Primitive, args: tuple, params: dict):
    """Run ``prim`` on ``args`` and, when a gradient may be needed, record a Node for it.

    The hot path of every eager op: one pass over the operands (device, dtype, whether any
    requires grad), the forward, then, when recording, the Node built here (no ``_record``).
    """
    try:
        m = _per_thread.modes  # this thread's modes (autodiff.modes, inlined), read once
    except AttributeError:
        m = modes()
    if m.autocast is not None:  # an autocast region: its rule casts the operands (amp.py)
        args = m.autocast(prim, args)
    if m.traces:  # a vmap is active: promote on the examples' shapes (a 0-d example is 0-d)
        for a in args:  # a sparse operand: its own rules, on the examples (before batching)
            if type(a) in DEFERRING:
                return type(a).__nodegrad_bind__(prim, args, params)
        if prim.operands is not None and len(args) > 1:
            args = _promote(prim, args)
        out = batch_bind(bind, prim, args, params)
        if prim.views:  # a batched view: an in-place change of it reaches its base
            _batched_view(out, args, prim, params)
        return out
    first = None  # the first array operand, its type and dtype
    ftype = fdt = None
    odd = False  # another operand of another type (device) or dtype: checked after the loop
    record = False
    datas = []
    for a in args:
        if isinstance(a, Tensor):
            d = a._data
            if a.requires_grad:
                record = True
        elif type(a) in _SCALARS:
            datas.append(a)
            continue
        elif B.is_array(a):
            d = a
        elif type(a) is complex:  # a Python complex number: promotion makes the rest complex
            datas.append(a)
            odd = True
            continue
        elif isinstance(a, B.generic):
            v = a.item()
            datas.append(v)
            if type(v) is complex:
                odd = True
            continue
        else:
            hook = getattr(type(a), "__nodegrad_bind__", None)  # a sparse tensor: its own rules
            if hook is not None:
                return hook(prim, args, params)
            raise TypeError(_operand_error(prim.name, a))
        if first is None:
            first = d
            ftype = type(d)
            fdt = d.dtype
        elif type(d) is not ftype or ftype is not _ndarray or d.dtype is not fdt:
            odd = True
        datas.append(d)
    if odd:
        backend, mixed = _devices(prim, datas)
        if backend is None:  # numbers only
            backend = _CPU
        if not mixed and complex in map(type, datas):
            mixed = True  # a complex number with a real tensor: promote it (_promote)
        if mixed:  # operands of different dtypes: promote them (or refuse float32 with float64)
            if prim.operands is not None:
                promoted = _promote(prim, args)
                if promoted is not args:
                    return bind(prim, promoted, params)
            # a loop or branch carries its own mix of dtypes (packed by dtype, never promoted)
            fdt = None if prim.kind == "control" else _float_dtype(prim, datas)
    elif ftype is _ndarray or first is None:  # NumPy arrays or numbers only
        backend = _CPU
    else:
        backend = B.backend_of(first)
    if fdt is _BF16 and not prim.bf16_native:
        return _through_float32(prim, args, params, m)
    if fdt is _F16 and backend is _CPU and not prim.f16_native:
        return _through_float32(prim, args, params, m, _F16)
    try:
        if backend is _CPU:
            if params:
                out = prim.fwd(_np, *datas, **params)
            elif len(datas) == 2:  # the usual arities called plainly: no argument list built
                out = prim.fwd(_np, datas[0], datas[1])
            elif len(datas) == 1:
                out = prim.fwd(_np, datas[0])
            else:
                out = prim.fwd(_np, *datas)
        else:
            with backend.scope():
                out = prim.fwd(backend.xp, *datas, **params)
    except ValueError as e:
        raise _value_error(prim, datas, params, e) from e
    except OverflowError as e:  # a Python int beyond an integer tensor's dtype
        raise _int_range_error(prim, datas, e) from None
    if type(out) is not _ndarray and not B.is_array(out):
        out = backend.asarray(out)  # NumPy returns scalars from some 0-d ops
    odt = out.dtype
    if (odt is not _DEFAULT_FLOAT and prim.promote and odt.kind == "f"
            and (fdt is None or fdt.kind not in "fc") and odt != _DEFAULT_FLOAT):
        # ints and Python floats give float32, as PyTorch
        out = as_float(prim, backend, datas, params, out, _DEFAULT_FLOAT)
        odt = _DEFAULT_FLOAT
    if m.anomaly:
        _anomaly(prim, backend, args, datas, out)
    if m.jit is not None:  # a jit trace is in progress: it keeps this op for replay
        m.jit.record(prim, args, datas, params, out, backend)
    if not (record and m.grad_enabled and prim.differentiable
            and (odt is _DEFAULT_FLOAT or odt.kind in "fc" or odt is _BF16)):
        if not prim.views or (out.base is None and out is not first):
            t = _new(Tensor)  # Tensor.make(out), inlined (one call less per op)
            t._data = out
            t.node = None
            t.requires_grad = False
            t._grad = t._version = t._hooks = None
            return t
        t = _make(out)
        _share_version(t, args, out, prim, params)
        return t
    # record: the node keeps its parents, the input shapes, and what the VJP reads (with the
    # version of each kept tensor, so an in-place change before backward is caught)
    save_in = prim.save_in
    versions = [] if save_in or prim.save_out else None
    if len(args) == 1:  # a unary op (the one operand is a tensor that requires grad): the
        a = args[0]  # loop below, unrolled
        d = a._data
        parents = (a.node or a,)
        shapes = (d.shape,)
        if save_in:
            cell = a._version  # Tensor._ensure_version, inlined
            if cell is None:
                cell = a._version = [0]
            versions.append((cell, cell[0], a, d))  # the array too: see _saved_args
    elif len(args) == 2 and type(args[0]) is type(args[1]) is Tensor:  # two tensors, unrolled
        a, b = args
        da, db = a._data, b._data
        ra, rb = a.requires_grad, b.requires_grad
        parents = ((a.node or a) if ra else None, (b.node or b) if rb else None)
        shapes = (da.shape, db.shape)
        if save_in:
            cell = a._version
            if cell is None:
                cell = a._version = [0]
            if prim.cross and not rb:
                cell = _UNREAD  # no gradient reads it: PyTorch does not save it either
            versions.append((cell, cell[0], a, da))
            cell = b._version
            if cell is None:
                cell = b._version = [0]
            if prim.cross and not ra:
                cell = _UNREAD
            versions.append((cell, cell[0], b, db))
    elif len(args) == 2 and type(args[0]) is Tensor and type(args[1]) in _SCALARS:
        a = args[0]  # a tensor and a number (x * 0.5), unrolled
        d = a._data
        parents = (a.node or a, None)
        shapes = (d.shape, ())
        if save_in:
            if prim.cross:
                cell = _UNREAD  # only the number's gradient would read the tensor
            else:
                cell = a._version
                if cell is None:
                    cell = a._version = [0]
            versions.append((cell, cell[0], a, d))
    else:
        parents = []
        shapes = []
        cross = prim.cross
        for a in args:
            if isinstance(a, Tensor):
                parents.append((a.node or a) if a.requires_grad else None)
                d = a._data
                shapes.append(d.shape)
                if save_in:
                    cell = a._version
                    if cell is None:
                        cell = a._version = [0]
                    if cross and not getattr(args[1] if a is args[0] else args[0],
                                             "requires_grad", False):
                        cell = _UNREAD
                    versions.append((cell, cell[0], a, d))
            else:
                parents.append(None)
                shapes.append(())
        parents, shapes = tuple(parents), tuple(shapes)
    save_out = prim.save_out
    node = _new(Node)  # Node.make and Tensor.make, inlined (two calls less per op)
    node.prim = prim
    node.params = params
    node.parents = parents
    node.args = args if save_in else None
    node.out = out if save_out else None
    node.shapes = shapes
    node.versions = versions
    node.alive = True
    node.hooks = node.trace = None
    t = _new(Tensor)
    t._data = out
    t.node = node
    t.requires_grad = True
    t._grad = t._version = t._hooks = None
    if prim.views and (out.base is not None or out is first):
        _share_version(t, args, out, prim, params)
    if save_out:
        cell = t._version
        if cell is None:
            cell = t._version = [0]
        versions.append((cell, cell[0], None, None))
    if m.saved_hooks:  # saved_tensors_hooks: the node keeps what pack makes of its saves
        pack_saved(node, m.saved_hooks[-1], args, t)
    if m.anomaly:
        node.trace = creation_site()
    return t


__all__ = ["Primitive", "primitive", "bind", "REGISTRY"]
