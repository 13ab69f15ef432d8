"""Export a module's forward to ONNX by tracing it.

The forward runs twice in eval mode: once on the example inputs and once with the dynamic axes
(the batch by default) resized, each name by its own step (unchanged without dynamic axes: the
second run still tells random numbers drawn in the forward). A recorder on the trace stack
sees every primitive bound and turns it into ONNX nodes; layers whose primitives are no ONNX op
(pooling over window views, recurrent layers, embeddings, the norms) or that have an ONNX op
of their own (transposed convolution, Resize, several activations) are caught by module hooks
and written as that op instead. A window view waits for the max (or the sum and division) over
it that makes it a pooling. Comparing the two traces tells which shape parameters follow the
dynamic axes (written as ``0``/``-1`` in a Reshape, ``1`` in an Expand) and which constants
were computed from the input or drawn at random; anything that cannot be written faithfully
raises :class:`UnsupportedError` naming the op and the module path.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from typing import TYPE_CHECKING, BinaryIO

from .. import _backend as B
from ..autodiff import no_grad
from ..batching import pushed
from ..nn import Module
from ..nn import layers as L
from ..tensor import Tensor
from ._common import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, UnsupportedError, require_onnx

if TYPE_CHECKING:
    from onnx import ModelProto

np = B.np
_I64 = np.int64


# --- the recorder -----------------------------------------------------------------------------
class _Recorder:
    """Sits on the trace stack while a forward runs; builds nodes (``build``) or only notes what
    was bound (the second trace, whose parameters reveal the dynamic dimensions)."""

    def __init__(self, onnx, opset: int, build: bool, twin: list | None, names: dict):
        self.onnx, self.h, self.opset, self.build = onnx, onnx.helper, opset, build
        self.twin = twin              # the other trace's events (None: no dynamic axes)
        self.events: list = []
        self.names: dict[int, str] = {}   # id(tensor) -> value name
        self.versions: dict[int, int] = {}  # id(tensor) -> its version counter when named
        self.keep: list = []          # keeps traced tensors alive so their ids stay unique
        self.params = names           # id(parameter or buffer) -> its dotted name
        self.nodes, self.inits, self.used = [], {}, set()
        self.count = 0
        self.path: list[str] = [""]   # module path stack, for error messages
        self.leaf = None              # the layer whose forward is written as one op
        self.paths: dict[int, str] = {}
        self.windows: dict[str, tuple] = {}  # a window view not written yet -> its source
        # (traced size, resized size) of a graph input's dynamic axis -> (its value, the axis)
        self.dims: dict[tuple[int, int], tuple[str, int]] = {}
        self.made: set[int] = set()  # constants written by dynamic_const

    # naming and emitting
    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def node(self, op: str, ins: list, n_out: int = 1, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        if self.build:
            self.nodes.append(self.h.make_node(op, ins, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        if self.build:
            self.inits[name] = self.onnx.numpy_helper.from_array(arr, name)
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=_I64), hint="ints")

    def where(self) -> str:
        return self.path[-1] or "the top-level module"

    def fail(self, what: str):
        raise UnsupportedError(f"onnx export: {what} (in module '{self.where()}')")

    def name_of(self, a, like=None) -> str | None:
        """The value name for argument ``a``: a traced tensor, a parameter, or a new constant."""
        if a is None:
            return None
        if isinstance(a, Tensor):
            n = self.names.get(id(a))
            if n is not None:
                self.unchanged(a)
                if n in self.windows:
                    self.fail("sliding_window_view: only a max over its windows, or their sum "
                              "divided by the window size, is exported (pooling as a "
                              "function); use the Conv/Pool layers")
                return n
            p = self.params.get(id(a))
            if p is not None:
                if p not in self.inits and self.build:
                    self.inits[p] = self.onnx.numpy_helper.from_array(
                        np.ascontiguousarray(B.backend_of(a._data).to_host(a._data)), p)
                self.names[id(a)] = p
                return p
            return self.const(B.backend_of(a._data).to_host(a._data))
        dt = like.dtype if isinstance(like, Tensor) else None
        return self.const(a, dtype=dt)

    def set(self, t: Tensor, name: str) -> None:
        self.names[id(t)] = name
        self.versions[id(t)] = t._ensure_version()[0]
        self.keep.append(t)

    def unchanged(self, t: Tensor) -> None:
        """Refuse a traced value changed in place by a write no op records (a graph reading
        its name would compute the old value)."""
        seen = self.versions.get(id(t))  # None: a parameter or buffer
        if seen is not None and t._version is not None and t._version[0] != seen:
            self.fail("a traced value was changed in place by a write the export does not "
                      "see (setitem, copy_, fill_ or an in-place op on a view of it); compute "
                      "the new value out of place (where, cat)")

    def consts(self, args) -> tuple:
        """The keys of the constants among ``args`` (the same in both traces: those that
        ``dynamic_const`` wrote count as constants)."""
        return tuple(_const_key(a) for a in args if isinstance(a, Tensor) and id(a) not in
                     self.params and (id(a) not in self.names or id(a) in self.made))

    def dynamic_const(self, t: Tensor, shape2) -> str | None:
        """A constant made in the forward that holds one value throughout and whose shape
        follows graph inputs' dynamic axes (``zeros(layers, x.size(0), hidden)``, ``shape2`` in
        the other trace): written as that value expanded to a shape read from the inputs.
        None where it is not one."""
        parts = []
        for s1, s2 in zip(t.shape, shape2):
            if s1 != s2 and (s1, s2) not in self.dims:
                return None
            parts.append(s1 if s1 == s2 else self.dims[(s1, s2)])
        d = np.asarray(B.backend_of(t._data).to_host(t._data))
        if len(parts) != d.ndim or not d.size or not (d == d.flat[0]).all():
            return None
        name = self.node("Expand", [self.const(d.flat[0], d.dtype), _shape_value(self, parts)])
        self.set(t, name)
        self.made.add(id(t))
        return name

    def inplace(self, target: Tensor, result: Tensor) -> None:
        """``target`` was changed in place to ``result`` (``out += x``, ``relu_``): later
        uses of it read the result."""
        if self.leaf is None:
            name = self.name_of(result)
            if result.dtype != target.dtype:  # stored in the target's dtype
                name = self.node("Cast", [name], to=_dtype_code(self.onnx, target.dtype))
            self.set(target, name)

    def event(self, key, data):
        """Note one traced step; return the other trace's note of the same step."""
        i = len(self.events)
        self.events.append((key, data))
        if self.twin is None:
            return None
        if i >= len(self.twin) or self.twin[i][0] != key:
            self.fail(f"the forward runs differently for another size of the dynamic axes "
                      f"(at '{key}'); data-dependent control flow cannot be exported")
        return self.twin[i][1]

    # the trace-stack protocol (see nodegrad.batching.batch_bind)
    def record(self, prim, args, params, out):
        if self.leaf is not None:
            for a in args:  # a traced value the layer's hooks did not see (a keyword argument)
                if isinstance(a, Tensor) and id(a) in self.names and id(a) not in self.params \
                        and not any(a is b for b in self.leaf_seen):
                    self.fail(f"{type(self.leaf).__name__} is called with a traced value as a "
                              "keyword argument; pass its inputs positionally")
            return out
        conv = PRIMS.get(prim.name)
        if conv is None:
            self.fail(f"primitive '{prim.name}' has no ONNX counterpart here")
        shapes = tuple(tuple(a.shape) if isinstance(a, Tensor) else a for a in args)
        consts = self.consts(args)
        twin = self.event(prim.name, (params, shapes, tuple(out.shape), consts))
        if twin is not None:
            self._check_twin(prim.name, args, params, shapes, twin)
        name = conv(self, args, params, out, twin)
        self.set(out, name)
        return out

    def _check_twin(self, name, args, params, shapes, twin):
        """Refuse what would bake the traced size of a dynamic axis into the graph."""
        t_params, t_shapes, _, t_consts = twin
        consts = self.consts(args)
        for a, s1, s2 in zip(args, shapes, t_shapes):
            traced = isinstance(a, Tensor) and (id(a) in self.names or id(a) in self.params)
            if isinstance(a, Tensor) and not traced and s1 != s2 and \
                    self.dynamic_const(a, s2) is None:
                self.fail(f"{name}: a constant of shape {s1} made in the forward follows the "
                          "dynamic axes (derive it from the input, e.g. zeros_like)")
            if not isinstance(a, Tensor) and not _same(s1, s2):
                self.fail(f"{name}: the number {s1} follows the dynamic axes (computed from a "
                          "shape?); export with dynamic_axes={} or compute it with tensor ops")
        if consts != t_consts:
            self.fail(f"{name}: a value computed outside the traced operations (say one_hot "
                      "or a NumPy round trip) depends on the input, or is random (dropout "
                      "called with training=True, noise); it would be baked into the graph")
        if name not in _SHAPED and not _same(params, t_params):
            self.fail(f"{name}: its parameters follow the dynamic axes ({params} vs "
                      f"{t_params} for another size)")

    # module hooks: layers with an ONNX op of their own
    def pre(self, m: Module, args):
        if self.leaf is not None:
            return None
        self.path.append(self.paths.get(id(m), type(m).__name__))
        if type(m) in LAYERS and not (isinstance(m, L.Upsample) and m.mode == "area") and \
                not _padded_first(m) and not (type(m) in _FLOAT32_ATTRS and not (
                    args and isinstance(args[0], Tensor) and args[0].dtype == np.float32)):
            self.leaf = m
            self.leaf_args = args
            # what the converter reads: the arguments and the layer's tensors (a weight that a
            # pre-hook computed, as weight_norm's)
            self.leaf_seen = _flat(args) + [v for v in vars(m).values() if isinstance(v, Tensor)]
        return None

    def post(self, m: Module, args, out):
        if self.leaf is m:
            self.leaf = None
            outs = _flat(out)
            shapes = tuple(tuple(a.shape) for a in _flat(args))
            twin = self.event(type(m).__name__, (shapes, tuple(tuple(o.shape) for o in outs)))
            conv = LAYERS[type(m)]
            if _unbatched(m, self.leaf_args):
                names = self._batched(conv, m, outs, twin)
            else:
                names = conv(self, m, self.leaf_args, outs, twin)
            for o, n in zip(outs, names):
                self.set(o, n)
        elif self.leaf is not None:
            return None
        self.path.pop()
        return None

    def _batched(self, conv, m: Module, outs: list, twin) -> list:
        """A layer called on an unbatched input ((C, L), ...) written as its batched op
        between an Unsqueeze and a Squeeze of axis 0 (ONNX's ops take (N, C, ...))."""
        nd = self.leaf_args[0].ndim

        def lift(t):
            if not isinstance(t, Tensor) or t.ndim != nd:
                return t
            b = Tensor._of(t._data[None])
            self.set(b, _unsqueeze(self, self.name_of(t), [0]))
            return b
        args = tuple(lift(a) for a in self.leaf_args)
        louts = [Tensor._of(o._data[None]) if o.ndim == nd else o for o in outs]
        if twin is not None:
            twin = tuple(tuple((1,) + tuple(s) if len(s) == nd else s for s in part)
                         for part in twin)
        names = conv(self, m, args, louts, twin)
        return [_squeeze(self, n, [0]) if o.ndim == nd else n for o, n in zip(outs, names)]


# converters that handle parameters that change with the dynamic axes
_SHAPED = ("reshape", "broadcast_to", "getitem", "conv_input_grad")


def _digest(t: Tensor) -> tuple:
    """Shape, dtype and a hash of the values: tells a constant made from the input."""
    d = np.ascontiguousarray(B.backend_of(t._data).to_host(t._data))
    return (d.shape, str(d.dtype), hash(d.tobytes()))


def _const_key(t: Tensor) -> tuple:
    """What tells two traces' constants apart: one value throughout (zeros of a shape that
    follows the dynamic axes, checked apart) or the digest of the values."""
    d = np.asarray(B.backend_of(t._data).to_host(t._data))
    if d.size and (d == d.flat[0]).all():
        return (str(d.dtype), d.flat[0].item())
    return _digest(t)


def _shape_value(r, parts) -> str:
    """A 1-D int64 shape from numbers and (graph input, axis) pairs read with ``Shape``."""
    if all(isinstance(d, int) for d in parts):
        return r.ints(parts)
    return r.node("Concat", [r.ints([d]) if isinstance(d, int) else
                             r.node("Shape", [d[0]], start=d[1], end=d[1] + 1) for d in parts],
                  axis=0)


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # arrays inside
        return repr(a) == repr(b)


def _flat(out) -> list:
    """The tensors of a forward's result, in order (tuples, lists and dict values, nested)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return [t for o in out for t in _flat(o)]
    return []


# --- helpers for the converters ---------------------------------------------------------------
def _np_dtype(t) -> object:
    return np.dtype(t.dtype)


def _dtype_code(onnx, dt) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt))


def _reduce(r: _Recorder, op: str, x: str, axes, keepdims: bool, ndim: int) -> str:
    axes = tuple(range(ndim)) if axes is None else tuple(a % max(ndim, 1) for a in (
        axes if isinstance(axes, tuple | list) else (axes,)))
    if ndim == 0:
        return r.node("Identity", [x])
    if op == "ReduceSum" or r.opset >= 18:
        return r.node(op, [x, r.ints(axes)], keepdims=int(keepdims))
    return r.node(op, [x], axes=list(axes), keepdims=int(keepdims))


def _squeeze(r: _Recorder, x: str, axes) -> str:
    return r.node("Squeeze", [x, r.ints(axes)])


def _unsqueeze(r: _Recorder, x: str, axes) -> str:
    return r.node("Unsqueeze", [x, r.ints(axes)])


def _slice(r: _Recorder, x: str, axes, starts, ends, steps=None) -> str:
    ins = [x, r.ints(starts), r.ints(ends), r.ints(axes)]
    if steps is not None:
        ins.append(r.ints(steps))
    return r.node("Slice", ins)


# --- primitives -------------------------------------------------------------------------------
def _gru_update(r, a, p, out, tw):
    """GRUCell's fused step (gate order r, z, n) written out: r, z = σ(gi + gh) on the first
    2H columns, n = tanh(gi_n + r gh_n), h' = n + z (h - n)."""
    gi, gh, h = (r.name_of(t, out) for t in a)
    n_h = int(a[2].shape[-1])
    rz = r.node("Sigmoid", [r.node("Add", [_slice(r, gi, [-1], [0], [2 * n_h]),
                                           _slice(r, gh, [-1], [0], [2 * n_h])])])
    gate_r, gate_z = _slice(r, rz, [-1], [0], [n_h]), _slice(r, rz, [-1], [n_h], [2 * n_h])
    n = r.node("Tanh", [r.node("Add", [_slice(r, gi, [-1], [2 * n_h], [3 * n_h]), r.node(
        "Mul", [gate_r, _slice(r, gh, [-1], [2 * n_h], [3 * n_h])])])])
    return r.node("Add", [n, r.node("Mul", [gate_z, r.node("Sub", [h, n])])])


def _unary(op):
    """An element-wise op; an integer input whose result is float (``sqrt`` of integers) is
    cast to the result's dtype first, as ONNX's ops keep their input's type."""
    def conv(r, a, p, out, tw):
        if out.dtype.kind != "b" or op == "Not":  # (IsNaN reads floats, Not bools)
            return r.node(op, [_as_dtype(r, a[0], out.dtype)])
        return r.node(op, [r.name_of(a[0])])
    return conv


def _binary(op):
    """Arithmetic: numbers become constants of the output's dtype, tensors of another dtype are
    cast to it (as the forward promoted them)."""
    def conv(r, a, p, out, tw):
        names = []
        for x in a:
            n = r.name_of(x, out)
            if isinstance(x, Tensor) and x.dtype != out.dtype and not (
                    op == "Where" and x is a[0]):
                n = r.node("Cast", [n], to=_dtype_code(r.onnx, out.dtype))
            names.append(n)
        return r.node(op, names)
    return conv


def _compare(op):
    """Comparisons and logic: numbers become constants of the tensors' dtype; where NumPy
    compares in another dtype (an integer tensor against a float, tensors of two dtypes) the
    operands are cast to it first, so ``x >= 0.5`` on integers is not ``x >= 0``."""
    def conv(r, a, p, out, tw):
        nums = [x for x in a if not isinstance(x, Tensor)]
        dt = np.result_type(*[np.dtype(x.dtype) for x in a if isinstance(x, Tensor)])
        if op in ("And", "Or", "Xor"):
            dt = np.dtype(bool)
        elif dt.kind in "biu" and any(isinstance(v, float | np.floating) for v in nums):
            dt = np.dtype(np.float64)
        elif dt.kind == "b" and nums:
            dt = np.dtype(_I64)
        return r.node(op, [_as_dtype(r, x, dt) if isinstance(x, Tensor) else r.const(x, dt)
                           for x in a])
    return conv


def _as_dtype(r: _Recorder, x: Tensor, dt) -> str:
    """The value name of tensor ``x``, cast to ``dt`` where its dtype differs."""
    n = r.name_of(x)
    return n if np.dtype(x.dtype) == np.dtype(dt) else r.node("Cast", [n],
                                                               to=_dtype_code(r.onnx, dt))


def _bitwise(logic: str, bits: str):
    """Bitwise ops: ONNX's logic op on bools, its Bitwise* op (opset 18) on integers."""
    def conv(r, a, p, out, tw):
        like = next(x for x in a if isinstance(x, Tensor))
        if out.dtype.kind == "b":
            return r.node(logic, [r.name_of(x, like) for x in a])
        if r.opset < 18:
            r.fail(f"an integer {bits} (ONNX has it from opset 18; export with opset=18)")
        return r.node(bits, [r.name_of(x, like) for x in a])
    return conv


def _not_equal(r, a, p, out, tw):
    return r.node("Not", [_compare("Equal")(r, a, p, out, tw)])


def _square(r, a, p, out, tw):
    x = r.name_of(a[0])
    return r.node("Mul", [x, x])


def _expm1(r, a, p, out, tw):
    return r.node("Sub", [r.node("Exp", [r.name_of(a[0])]), r.const(1.0, _np_dtype(out))])


def _log1p(r, a, p, out, tw):
    return r.node("Log", [r.node("Add", [r.name_of(a[0]), r.const(1.0, _np_dtype(out))])])


def _leaky(r, a, p, out, tw):
    """LeakyRelu, whose slope attribute is a float32: other dtypes get the formula."""
    x, slope = r.name_of(a[0]), p["negative_slope"]
    if out.dtype == np.float32:
        return r.node("LeakyRelu", [x], alpha=float(slope))
    dt = _np_dtype(out)
    return r.node("Where", [r.node("Greater", [x, r.const(0, dt)]), x,
                            r.node("Mul", [x, r.const(slope, dt)])])


def _softplus(r, a, p, out, tw):
    dt = _np_dtype(out)
    x = r.name_of(a[0])
    bx = r.node("Mul", [x, r.const(p["beta"], dt)])
    soft = r.node("Div", [r.node("Softplus", [bx]), r.const(p["beta"], dt)])
    return r.node("Where", [r.node("Greater", [bx, r.const(p["threshold"], dt)]), x, soft])


def _gelu(r, a, p, out, tw):
    dt = _np_dtype(out)
    x = r.name_of(a[0])

    def c(v):
        return r.const(v, dt)
    # the operations in the order nodegrad's forward does them, so a round trip is exact
    if p["approximate"] == "tanh":
        cube = r.node("Mul", [r.node("Mul", [r.node("Mul", [c(0.044715), x]), x]), x])
        inner = r.node("Mul", [c(math.sqrt(2.0 / math.pi)), r.node("Add", [x, cube])])
        t = r.node("Add", [c(1.0), r.node("Tanh", [inner])])
    else:
        t = r.node("Add", [c(1.0), r.node("Erf", [r.node("Mul", [x, c(1.0 / math.sqrt(2.0))])])])
    return r.node("Mul", [r.node("Mul", [c(0.5), x]), t])


def _silu(r, a, p, out, tw):
    """x / (e⁻ˣ + 1) as x · Reciprocal(Exp(Neg(x)) + 1) (ONNX has no SiLU op): the operations
    in the order nodegrad's forward does them, so a round trip is exact."""
    dt = _np_dtype(out)
    x = _as_dtype(r, a[0], out.dtype)
    e = r.node("Add", [r.node("Exp", [r.node("Neg", [x])]), r.const(1.0, dt)])
    return r.node("Mul", [x, r.node("Reciprocal", [e])])


def _mish(r, a, p, out, tw):
    """ONNX's Mish from opset 18; before it x · tanh(softplus(x)) as nodegrad computes it,
    x / (1 + 2 / ((eˣ + 2) eˣ)), so that a round trip is exact."""
    x = _as_dtype(r, a[0], out.dtype)
    if r.opset >= 18:
        return r.node("Mish", [x])
    dt = _np_dtype(out)
    e = r.node("Exp", [x])
    n = r.node("Mul", [r.node("Add", [e, r.const(2.0, dt)]), e])
    t = r.node("Add", [r.node("Div", [r.const(2.0, dt), n]), r.const(1.0, dt)])
    return r.node("Mul", [x, r.node("Reciprocal", [t])])


def _hardswish(r, a, p, out, tw):
    """ONNX's HardSwish for float32 (onnxruntime has no other kernel); other dtypes as nodegrad
    computes it: x from 3 up, 0 from -3 down, x ((x + 3) / 6) between."""
    x = _as_dtype(r, a[0], out.dtype)
    if out.dtype == np.float32:
        return r.node("HardSwish", [x])
    dt = _np_dtype(out)
    mid = r.node("Mul", [x, r.node("Div", [r.node("Add", [x, r.const(3.0, dt)]),
                                           r.const(6.0, dt)])])
    low = r.node("Where", [r.node("LessOrEqual", [x, r.const(-3.0, dt)]), r.const(0.0, dt), mid])
    return r.node("Where", [r.node("GreaterOrEqual", [x, r.const(3.0, dt)]), x, low])


def _glu(r, a, p, out, tw):
    """a · Sigmoid(b) for the halves a, b of x along ``axis``, sliced out."""
    x, ax = _as_dtype(r, a[0], out.dtype), int(p["axis"])
    n = a[0].shape[ax] // 2
    first = _slice(r, x, [ax], [0], [n])
    second = _slice(r, x, [ax], [n], [2 * n])
    return r.node("Mul", [first, r.node("Sigmoid", [second])])


def _clip(r, a, p, out, tw):
    x = y = _as_dtype(r, a[0], out.dtype)  # integers clipped to float bounds are floats
    for op, bound in (("Max", a[1]), ("Min", a[2])):
        if bound is not None:
            b = _as_dtype(r, bound, out.dtype) if isinstance(bound, Tensor) else \
                r.const(bound, _np_dtype(out))
            y = r.node(op, [y, b])
    return y if y != x else r.node("Identity", [y])


def _hardtanh(r, a, p, out, tw):
    dt = _np_dtype(out)
    return r.node("Clip", [r.name_of(a[0]), r.const(p["min_val"], dt), r.const(p["max_val"], dt)])


def _astype(r, a, p, out, tw):
    return r.node("Cast", [r.name_of(a[0])], to=_dtype_code(r.onnx, p["dtype"]))


def _linear(r, a, p, out, tw):
    x, w = r.name_of(a[0]), r.name_of(a[1])
    b = r.name_of(a[2]) if len(a) > 2 and a[2] is not None else None
    if a[0].ndim == 2:
        return r.node("Gemm", [x, w] + ([b] if b else []), transB=1)
    y = r.node("MatMul", [x, r.node("Transpose", [w], perm=[1, 0])])
    return r.node("Add", [y, b]) if b else y


def _layer_norm_prim(r, a, p, out, tw):
    """``F.layer_norm`` (the primitive) as ONNX's LayerNormalization, ones for a missing
    scale."""
    x, k = a[0], p["k"]
    w = a[1] if len(a) > 1 else None
    b = a[2] if len(a) > 2 else None
    scale = r.name_of(w) if w is not None else r.const(np.ones(x.shape[x.ndim - k:],
                                                               _np_dtype(out)))
    ins = [r.name_of(x), scale] + ([r.name_of(b)] if b is not None else [])
    return r.node("LayerNormalization", ins, axis=-k, epsilon=float(p["eps"]))


def _einsum(r, a, p, out, tw):
    return r.node("Einsum", [r.name_of(x) for x in a],
                  equation=",".join(p["terms"]) + "->" + p["result"])


def _softmax(op):
    return lambda r, a, p, out, tw: r.node(op, [r.name_of(a[0])], axis=int(p["axis"]))


def _reducer(op):
    """A reduction; the input is cast to the result's dtype first where they differ (NumPy
    sums int32 and bools as int64 and averages integers as float64; ONNX keeps the type)."""
    def conv(r, a, p, out, tw):
        return _reduce(r, op, _as_dtype(r, a[0], out.dtype), p["axis"], p["keepdims"],
                       a[0].ndim)
    return conv


def _truth(op: str):
    """``all``/``any``: the truth of each element as int32, its ReduceMin/ReduceMax, as bool
    (ONNX reduces bools only from opset 20)."""
    def conv(r, a, p, out, tw):
        x = _as_dtype(r, a[0], np.dtype(bool))
        y = _reduce(r, op, r.node("Cast", [x], to=_dtype_code(r.onnx, np.int32)), p["axis"],
                    p["keepdims"], a[0].ndim)
        return r.node("Cast", [y], to=_dtype_code(r.onnx, np.dtype(bool)))
    return conv


def _logsumexp(r, a, p, out, tw):
    x, nd = r.name_of(a[0]), a[0].ndim
    m = _reduce(r, "ReduceMax", x, p["axis"], True, nd)
    s = _reduce(r, "ReduceSum", r.node("Exp", [r.node("Sub", [x, m])]), p["axis"], True, nd)
    y = r.node("Add", [r.node("Log", [s]), m])
    if p["keepdims"]:
        return y
    axes = range(nd) if p["axis"] is None else p["axis"]
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return _squeeze(r, y, [ax % nd for ax in axes]) if nd else y


def _arg(op):
    def conv(r, a, p, out, tw):
        x, ax = r.name_of(a[0]), p["axis"]
        if ax is None:
            x, ax = r.node("Reshape", [x, r.ints([-1])]), 0
        return r.node(op, [x], axis=int(ax), keepdims=int(p["keepdims"]))
    return conv


def _reshape(r, a, p, out, tw):
    shape = list(out.shape)
    in1 = tuple(a[0].shape)
    if tw is not None:
        (_, (in2,), out2, _) = tw
        free = []
        for i, (s1, s2) in enumerate(zip(out.shape, out2)):
            if s1 == s2:
                continue
            if i < len(in1) and in1[i] == s1 and in2[i] == s2:
                shape[i] = 0           # copy the input's (dynamic) dimension
            else:
                free.append(i)
        if len(free) > 1:
            r.fail(f"reshape to {tuple(out.shape)} has several dimensions that follow the "
                   "dynamic axes; export with fewer dynamic axes")
        for i in free:
            shape[i] = -1
    if 0 in out.shape:
        r.fail("reshape of an empty tensor")
    return r.node("Reshape", [r.name_of(a[0]), r.ints(shape)])


def _transpose(r, a, p, out, tw):
    return r.node("Transpose", [r.name_of(a[0])], perm=[int(i) for i in p["axes"]])


def _broadcast_to(r, a, p, out, tw):
    shape = list(out.shape)
    xs = tuple(a[0].shape)
    if tw is not None:
        (_, (xs2,), out2, _) = tw
        off = len(shape) - len(xs)
        for i, (s1, s2) in enumerate(zip(out.shape, out2)):
            if s1 != s2:
                j = i - off
                if 0 <= j and xs[j] == s1 and xs2[j] == s2:
                    shape[i] = 1
                elif (s1, s2) in r.dims:  # a graph input's dynamic axis (ViT's cls_token
                    shape[i] = r.dims[(s1, s2)]  # .expand(x.shape[0], -1, -1)): read it
                else:
                    r.fail(f"broadcast_to {tuple(out.shape)}: a dimension that follows the "
                           "dynamic axes is neither the input's nor a graph input's")
    return r.node("Expand", [r.name_of(a[0]), _shape_value(r, shape)])


def _take_along(r, a, p, out, tw):
    """take_along_axis as GatherElements; NumPy broadcasts the index and the other axes of x,
    ONNX does not, so a broadcast one is expanded first (static shapes only)."""
    x, idx = a
    axis = int(p["axis"]) % out.ndim
    want_idx = tuple(out.shape)
    want_x = tuple(s if i != axis else x.shape[i] for i, s in enumerate(out.shape))
    xn, iname = r.name_of(x), r.name_of(idx)
    if tuple(idx.shape) != want_idx or tuple(x.shape) != want_x:
        if tw is not None and tuple(tw[2]) != tuple(out.shape):
            r.fail("take_along_axis that broadcasts along a dynamic axis")
        if tuple(idx.shape) != want_idx:
            iname = r.node("Expand", [iname, r.ints(list(want_idx))])
        if tuple(x.shape) != want_x:
            xn = r.node("Expand", [xn, r.ints(list(want_x))])
    return r.node("GatherElements", [xn, iname], axis=axis)


def _concat(r, a, p, out, tw):
    return r.node("Concat", [r.name_of(x, out) for x in a], axis=int(p["axis"]))


def _pad(r, a, p, out, tw):
    pw = p["pad_width"]
    value = p["value"]
    if np.ndim(value) != 0:
        r.fail("pad with a value per axis")
    pads = [int(lo) for lo, _ in pw] + [int(hi) for _, hi in pw]
    return r.node("Pad", [r.name_of(a[0]), r.ints(pads), r.const(value, _np_dtype(a[0]))],
                  mode="constant")


def _flip(r, a, p, out, tw):
    nd = a[0].ndim
    axes = range(nd) if p["axis"] is None else p["axis"]
    axes = [ax % nd for ax in ((axes,) if isinstance(axes, int) else axes)]
    big = np.iinfo(_I64).max
    return _slice(r, r.name_of(a[0]), axes, [-1] * len(axes), [-big] * len(axes),
                  [-1] * len(axes))


def _identity(r, a, p, out, tw):
    return r.node("Identity", [r.name_of(a[0])])


def _full_slices(index, twin_index, shape, twin_shape):
    """``index`` with the slices that differ between the traces only by covering a whole
    dynamic axis (``x[0:n]`` with n the size) made ``slice(None)``; None if anything else
    differs."""
    if len(index) != len(twin_index):
        return None
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    out, ax = [], 0
    for i, j in zip(index, twin_index):
        if i is Ellipsis or i is None:
            if j is not i:
                return None
            ax += (len(shape) - n_real) if i is Ellipsis else 0
            out.append(i)
            continue
        if repr(i) != repr(j):
            if not (isinstance(i, slice) and isinstance(j, slice)
                    and i.indices(shape[ax]) == (0, shape[ax], 1)
                    and j.indices(twin_shape[ax]) == (0, twin_shape[ax], 1)):
                return None
            i = slice(None)
        out.append(i)
        ax += 1
    return tuple(out)


def _pad_mode(idx, n: int, opset: int):
    """(ONNX mode, before, after) when the index array ``idx`` along an axis of length ``n``
    reads what a reflect, edge or wrap padding of it would (as ``F.pad`` gathers), else None."""
    if idx.ndim != 1 or len(idx) <= n:
        return None
    whole = np.arange(n)
    for lo in range(len(idx) - n + 1):
        if np.array_equal(idx[lo:lo + n], whole):
            hi = len(idx) - n - lo
            for np_mode, kind in (("reflect", "reflect"), ("edge", "edge"), ("wrap", "wrap")):
                if kind == "wrap" and opset < 19:
                    continue
                if (np_mode != "reflect" or max(lo, hi) < n) and np.array_equal(
                        idx, np.pad(whole, (lo, hi), mode=np_mode)):
                    return kind, lo, hi
    return None


def _getitem(r, a, p, out, tw):
    """Basic indexing (ints, slices, None, ...) and one integer array, as Slice/Gather."""
    index = p["index"]
    x, shape = r.name_of(a[0]), tuple(a[0].shape)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if sum(1 for i in index if i is Ellipsis) > 1:
        r.fail("getitem with more than one Ellipsis")
    full = []
    for i in index:
        if i is Ellipsis:
            full.extend([slice(None)] * (len(shape) - n_real))
        else:
            full.append(i)
    full.extend([slice(None)] * (len(shape) - sum(1 for i in full if i is not None)))
    twin_shape = tw[1][0] if tw is not None else shape
    if tw is not None and not _same(repr(index), repr(tw[0]["index"])):
        index = _full_slices(index, tw[0]["index"], shape, twin_shape)
        if index is None:
            r.fail(f"getitem index {p['index']} follows the dynamic axes (computed from a "
                   "shape?)")
    big = int(np.iinfo(_I64).max)
    axes, starts, ends, steps, squeeze, newaxes, gathers = [], [], [], [], [], [], []
    ax = 0
    out_ax = 0
    for i in full:
        if i is None:
            newaxes.append(out_ax)
            out_ax += 1
            continue
        n = shape[ax]
        dynamic = twin_shape[ax] != n
        if isinstance(i, slice):
            st, en, sp = i.indices(n)
            if len(range(st, en, sp)) == 0:
                r.fail(f"getitem with an empty slice {i}")
            if dynamic:  # as written: ONNX clamps the bounds as Python does
                sp = 1 if i.step is None else int(i.step)
                st = int(i.start) if i.start is not None else (0 if sp > 0 else big)
                en = int(i.stop) if i.stop is not None else (big if sp > 0 else -big)
            elif sp < 0 and en < 0:
                en = -big
            if (st, en, sp) not in ((0, n, 1), (0, big, 1)):
                axes.append(ax)
                starts.append(st)
                ends.append(en)
                steps.append(sp)
            out_ax += 1
        elif isinstance(i, int | np.integer):
            i = int(i)
            if not dynamic:
                i %= n
            axes.append(ax)
            starts.append(i)
            ends.append(i + 1 if i != -1 else big)
            steps.append(1)
            squeeze.append(ax)
        elif B.is_array(i) and i.dtype.kind in "iu":
            gathers.append((ax, B.backend_of(i).to_host(i), out_ax))
            out_ax += i.ndim
        else:
            r.fail(f"getitem with index {type(i).__name__} (boolean masks and several index "
                   "arrays are not exported)")
        ax += 1
    if gathers and (squeeze or newaxes):
        r.fail("getitem mixing an index array with integers or None")
    for gax, _, _ in gathers:
        if twin_shape[gax] != shape[gax]:
            r.fail(f"getitem with an index array on the dynamic axis {gax}")
    y = _slice(r, x, axes, starts, ends, steps) if axes else x
    if len(gathers) > 1:
        return _outer_gathers(r, y, gathers, shape)
    if gathers:
        gax, idx, _ = gathers[0]
        idx = np.where(idx < 0, idx + shape[gax], idx).astype(_I64)
        mode = _pad_mode(idx, shape[gax], r.opset)
        if mode is not None:  # the positions a padding mode reads (F.pad's modes): Pad
            kind, lo, hi = mode
            pads = [0] * (2 * len(shape))
            pads[gax], pads[len(shape) + gax] = lo, hi
            y = r.node("Pad", [y, r.ints(pads)], mode=kind)
        else:
            y = r.node("Gather", [y, r.const(idx)], axis=gax)
    if squeeze:
        y = _squeeze(r, y, squeeze)
    if newaxes:
        y = _unsqueeze(r, y, newaxes)
    if y == x:
        y = r.node("Identity", [x])
    return y


def _outer_gathers(r, y: str, gathers: list, shape) -> str:
    """Index arrays on adjacent axes that each vary along their own block of the broadcast
    index shape, in order (``x[:, :, rows[:, :, None, None], cols]``, adaptive max pooling's
    bins): one Gather per axis, each putting its block where NumPy puts it."""
    axes_ = [g[0] for g in gathers]
    if axes_ != list(range(axes_[0], axes_[0] + len(axes_))):
        r.fail("getitem with several index arrays on axes that are not adjacent")
    idx = np.broadcast_arrays(*[g[1] for g in gathers])
    full = idx[0].shape
    varies = [[d for d in range(len(full)) if i.shape[d] > 1 and np.ptp(i, axis=d).any()]
              for i in idx]
    bounds, end = [], 0
    for v in varies:
        if v and v[0] < end:
            r.fail("getitem with several index arrays that are not an outer product")
        bounds.append(end)
        end = v[-1] + 1 if v else end
    bounds.append(len(full))
    offset = 0
    for (gax, _, _), i, lo, hi in zip(gathers, idx, bounds, bounds[1:]):
        block = i[tuple(slice(None) if lo <= d < hi else 0 for d in range(len(full)))]
        block = np.where(block < 0, block + shape[gax], block).astype(_I64)
        y = r.node("Gather", [y, r.const(block)], axis=gax + offset)
        offset += hi - lo - 1
    return y


def _diagonal(r, a, p, out, tw):
    """The diagonal view: the two axes moved last and flattened, then one Gather of the
    diagonal's flat positions (exact)."""
    shape = tuple(a[0].shape)
    a1, a2, off = int(p["axis1"]), int(p["axis2"]), int(p["offset"])
    if tw is not None and any(tw[1][0][d] != shape[d] for d in (a1, a2)):
        r.fail("diagonal of a dynamic axis")
    nb = len(shape) - 2
    perm = [d for d in range(len(shape)) if d not in (a1, a2)] + [a1, a2]
    y = r.node("Transpose", [r.name_of(a[0])], perm=perm)
    m, n = shape[a1], shape[a2]
    y = r.node("Reshape", [y, r.ints([0] * nb + [m * n])])
    k = np.arange(out.shape[-1])
    rows, cols = (k, k + off) if off >= 0 else (k - off, k)
    return r.node("Gather", [y, r.const((rows * n + cols).astype(_I64))], axis=nb)


def _matmul(r, a, p, out, tw):
    return r.node("MatMul", [r.name_of(a[0]), r.name_of(a[1])])


def _attention_prim(r, a, p, out, tw):
    """``ops.attention`` (scaled_dot_product_attention without a mask or dropout) as ONNX's
    Mul, Transpose, MatMul, the causal mask's Add, Softmax and MatMul."""
    q, k, v = a[0], a[1], a[2]
    dt, nd, n = _np_dtype(out), q.ndim, q.shape[-2]
    qs = r.node("Mul", [r.name_of(q), r.const(np.asarray(p["scale"], dt))])
    kt = r.node("Transpose", [r.name_of(k)], perm=list(range(nd - 2)) + [nd - 1, nd - 2])
    s = r.node("MatMul", [qs, kt])
    if p["causal"]:
        s = r.node("Add", [s, r.const(np.where(np.tri(n, dtype=bool), 0, -np.inf).astype(dt))])
    return r.node("MatMul", [r.node("Softmax", [s], axis=-1), r.name_of(v)])


def _conv_prim(r, a, p, out, tw):
    """The fused convolution primitive (``F.conv1d``/``conv2d``/``conv3d`` in a custom forward)."""
    ins = [r.name_of(a[0]), r.name_of(a[1])] + ([r.name_of(a[2])] if len(a) > 2 and
                                                 a[2] is not None else [])
    pad = [int(v) for v in p["padding"]]
    return r.node("Conv", ins, kernel_shape=list(a[1].shape[2:]),
                  strides=[int(v) for v in p["stride"]], pads=pad + pad,
                  dilations=[int(v) for v in p["dilation"]], group=int(p["groups"]))


def _conv_transpose_node(r, x: str, w: str, b: str | None, in_sp, out_sp, k, s, pad, d, groups):
    """ConvTranspose whose output has the spatial sizes ``out_sp`` (through output_padding)."""
    opad = [o - ((i - 1) * si + di * (ki - 1) + 1 - 2 * pi)
            for o, i, si, di, ki, pi in zip(out_sp, in_sp, s, d, k, pad)]
    return r.node("ConvTranspose", [x, w] + ([b] if b else []), kernel_shape=list(k),
                  strides=list(s), pads=list(pad) + list(pad), dilations=list(d),
                  output_padding=opad, group=int(groups))


def _conv_input_grad(r, a, p, out, tw):
    """The transposed-convolution primitive (``F.conv_transpose1d``/``2d``); its ``shape``
    parameter holds the batch size, so only the other entries must agree between traces."""
    if tw is not None and tuple(p["shape"][1:]) != tuple(tw[0]["shape"][1:]):
        r.fail("conv_transpose: its output size follows the dynamic axes")
    x, w = a[0], a[1]
    return _conv_transpose_node(r, r.name_of(x), r.name_of(w), None, x.shape[2:], out.shape[2:],
                                w.shape[2:], [int(v) for v in p["stride"]],
                                [int(v) for v in p["padding"]], [int(v) for v in p["dilation"]],
                                p["groups"])


def _windows(r, a, p, out, tw):
    """Windows over the trailing spatial axes of (N, C, ...) wait for a max over them
    (``F.max_pool*``, which pads with −inf first): together a MaxPool."""
    x = a[0]
    nd = len(p["axes"])
    if x.ndim < 3 or tuple(p["axes"]) != tuple(range(x.ndim - nd, x.ndim)) or nd > x.ndim - 2:
        r.fail("sliding_window_view other than over the spatial axes of (N, C, ...)")
    name = r.fresh("windows")
    r.windows[name] = (r.name_of(x), [int(v) for v in p["window"]],
                       [int(v) for v in p["stride"]], [int(v) for v in p["dilation"]], x.ndim)
    return name


def _over_windows(r, a, p, what: str):
    """The pending window view that a reduction over all its window axes reads, or None."""
    n = r.names.get(id(a[0]))
    if n not in r.windows or len(r.windows[n]) != 5:
        return None
    src, k, s, d, nd_in = r.windows[n]
    axes = p["axis"]
    axes = tuple(ax % a[0].ndim for ax in ((axes,) if isinstance(axes, int) else axes or ()))
    if axes != tuple(range(nd_in, nd_in + len(k))) or p["keepdims"]:
        r.fail(f"sliding_window_view: only a {what} over all its window axes is exported")
    return src, k, s, d


def _max(r, a, p, out, tw):
    w = _over_windows(r, a, p, "max")
    if w is None:
        return _reducer("ReduceMax")(r, a, p, out, tw)
    src, k, s, d = w
    return r.node("MaxPool", [src], kernel_shape=k, strides=s, dilations=d,
                  pads=[0] * (2 * len(k)))


def _sum(r, a, p, out, tw):
    """A sum over windows waits for its division by the window size: an AveragePool."""
    w = _over_windows(r, a, p, "sum")
    if w is None:
        return _reducer("ReduceSum")(r, a, p, out, tw)
    src, k, s, d = w
    if any(v != 1 for v in d):
        r.fail("a sum over dilated windows")
    name = r.fresh("window_sum")
    r.windows[name] = (src, k, s)
    return name


def _divide(r, a, p, out, tw):
    n = r.names.get(id(a[0])) if isinstance(a[0], Tensor) else None
    if n in r.windows and len(r.windows[n]) == 3:
        src, k, s = r.windows[n]
        if isinstance(a[1], Tensor) or float(a[1]) != float(math.prod(k)):
            r.fail("a sum over windows divided by other than the window size (avg_pool with "
                   "ceil_mode, count_include_pad=False or divisor_override as a function)")
        return r.node("AveragePool", [src], kernel_shape=k, strides=s, pads=[0] * (2 * len(k)),
                      count_include_pad=1)
    return _binary("Div")(r, a, p, out, tw)


def _cross_entropy(r, a, p, out, tw):
    """The fused cross-entropy against class indices: SoftmaxCrossEntropyLoss (same mean over
    the targets that are not ``ignore_index``)."""
    x, t = a[0], a[1]
    if p["axis"] != 1:
        r.fail("cross_entropy of an unbatched input (logits (N, C, ...) are exported)")
    tn = r.name_of(t)
    if t.dtype != np.int64:
        tn = r.node("Cast", [tn], to=_dtype_code(r.onnx, np.int64))
    attrs = {"reduction": p["reduction"]}
    if p["ignore_index"] is not None:
        attrs["ignore_index"] = int(p["ignore_index"])
    return r.node("SoftmaxCrossEntropyLoss", [r.name_of(x), tn], **attrs)


def _vector_norm(r, a, p, out, tw):
    """p-norms: ReduceL1/ReduceL2 for 1 and 2, max/min of |x| for ±inf, else Pow, Sum, Pow."""
    x, nd, o = r.name_of(a[0]), a[0].ndim, p["ord"]
    axis, keep = p["axis"], p["keepdims"]
    if o == 2:
        return _reduce(r, "ReduceL2", x, axis, keep, nd)
    if o == 1:
        return _reduce(r, "ReduceL1", x, axis, keep, nd)
    ax = r.node("Abs", [x])
    if o == math.inf:
        return _reduce(r, "ReduceMax", ax, axis, keep, nd)
    if o == -math.inf:
        return _reduce(r, "ReduceMin", ax, axis, keep, nd)
    if o == 0:
        r.fail("vector_norm with ord=0 (a count of nonzeros)")
    c = r.const(float(o), _np_dtype(out))
    s = _reduce(r, "ReduceSum", r.node("Pow", [ax, c]), axis, keep, nd)
    return r.node("Pow", [s, r.const(1.0 / float(o), _np_dtype(out))])


PRIMS = {
    "add": _binary("Add"), "subtract": _binary("Sub"), "multiply": _binary("Mul"),
    "divide": _divide, "power": _binary("Pow"), "maximum": _binary("Max"),
    "minimum": _binary("Min"), "negative": _unary("Neg"), "exp": _unary("Exp"),
    "log": _unary("Log"), "sqrt": _unary("Sqrt"), "abs": _unary("Abs"), "sin": _unary("Sin"),
    "cos": _unary("Cos"), "tan": _unary("Tan"), "tanh": _unary("Tanh"), "erf": _unary("Erf"),
    "sigmoid": _unary("Sigmoid"), "relu": _unary("Relu"), "sign": _unary("Sign"),
    "floor": _unary("Floor"), "ceil": _unary("Ceil"), "isnan": _unary("IsNaN"),
    "round": _unary("Round"),  # half to even, as NumPy
    "logical_not": _unary("Not"), "square": _square, "expm1": _expm1, "log1p": _log1p,
    "leaky_relu": _leaky, "softplus": _softplus, "gelu": _gelu, "clip": _clip,
    "silu": _silu, "mish": _mish, "glu": _glu, "hardswish": _hardswish,
    "hardtanh": _hardtanh, "where": _binary("Where"), "equal": _compare("Equal"),
    "not_equal": _not_equal,
    "less": _compare("Less"), "less_equal": _compare("LessOrEqual"),
    "greater": _compare("Greater"), "greater_equal": _compare("GreaterOrEqual"),
    "logical_and": _compare("And"), "logical_or": _compare("Or"), "logical_xor": _compare("Xor"),
    "bitwise_and": _bitwise("And", "BitwiseAnd"), "bitwise_or": _bitwise("Or", "BitwiseOr"),
    "bitwise_xor": _bitwise("Xor", "BitwiseXor"), "bitwise_not": _bitwise("Not", "BitwiseNot"),
    "astype": _astype, "matmul": _matmul, "linear": _linear, "einsum": _einsum,
    "layer_norm": _layer_norm_prim, "attention": _attention_prim,
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"),
    "all": _truth("ReduceMin"), "any": _truth("ReduceMax"),
    "logsumexp": _logsumexp, "sum": _sum, "mean": _reducer("ReduceMean"),
    "max": _max, "min": _reducer("ReduceMin"), "argmax": _arg("ArgMax"),
    "argmin": _arg("ArgMin"), "reshape": _reshape, "transpose": _transpose,
    "broadcast_to": _broadcast_to, "concatenate": _concat, "pad": _pad, "flip": _flip,
    "copy": _identity, "getitem": _getitem, "diagonal": _diagonal, "conv": _conv_prim,
    "take_along_axis": _take_along,
    "conv_input_grad": _conv_input_grad, "vector_norm": _vector_norm,
    "cross_entropy": _cross_entropy, "sliding_window_view": _windows,
    "gru_update": _gru_update,
}


# --- layers written as one ONNX op ------------------------------------------------------------
def _padded_first(m) -> bool:
    """A convolution that pads its input itself (another ``padding_mode`` than zeros, or
    ``padding='same'``/``'valid'``): exported op by op (a Pad, then the Conv)."""
    return isinstance(getattr(m, "padding", 0), str) or getattr(m, "padding_mode",
                                                                 "zeros") != "zeros"


def _unbatched(m, args) -> bool:
    """A 1-D/2-D/3-D convolution or pool called on an unbatched input ((C, L), ...)."""
    name = type(m).__name__
    if not name.endswith(("1d", "2d", "3d")) or name.startswith(("BatchNorm", "Upsampl")) \
            or not args or not isinstance(args[0], Tensor):
        return False
    return args[0].ndim == int(name[-2]) + 1


def _tup(v, n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(i) for i in v]


def _conv_layer(r, m, args, outs, tw):
    nd = m.nd
    ins = [r.name_of(args[0]), r.name_of(m.weight)] + ([r.name_of(m.bias)] if m.bias is not None
                                                       else [])
    pad = _tup(m.padding, nd)
    return [r.node("Conv", ins, kernel_shape=list(m.kernel_size), strides=_tup(m.stride, nd),
                   pads=pad + pad, dilations=_tup(m.dilation, nd), group=int(m.groups))]


def _conv_transpose_layer(r, m, args, outs, tw):
    nd = m.nd
    b = r.name_of(m.bias) if m.bias is not None else None
    return [_conv_transpose_node(r, r.name_of(args[0]), r.name_of(m.weight), b,
                                 args[0].shape[2:], outs[0].shape[2:], m.kernel_size,
                                 _tup(m.stride, nd), _tup(m.padding, nd), _tup(m.dilation, nd),
                                 m.groups)]


def _pool_layer(op, nd):
    """MaxPool/AveragePool (1-D to 3-D) with PyTorch's ceil_mode; a max pool's indices come
    from MaxPool's second output, made flat per (sample, channel) plane as PyTorch's."""
    def conv(r, m, args, outs, tw):
        kw = dict(getattr(m, "kw", {}))
        if kw.get("divisor_override") is not None:
            r.fail(f"{type(m).__name__} with divisor_override={kw['divisor_override']!r}")
        k = _tup(m.kernel_size, nd)
        s = k if m.stride is None else _tup(m.stride, nd)
        pad = _tup(m.padding, nd)
        extra = {"ceil_mode": int(bool(kw.get("ceil_mode", False)))}
        if op == "AveragePool":
            extra["count_include_pad"] = int(kw.get("count_include_pad", True))
        else:
            extra["dilations"] = _tup(kw.get("dilation", 1), nd)
        x = r.name_of(args[0])
        d = extra.get("dilations", [1] * nd)
        if not kw.get("return_indices", False):
            y = r.node(op, [x], kernel_shape=k, strides=s, pads=pad + pad, **extra)
            return [_ceil_crop(r, y, args[0], outs[0], tw, k, s, pad, d, extra["ceil_mode"])]
        y, idx = r.node(op, [x], n_out=2, kernel_shape=k, strides=s, pads=pad + pad, **extra)
        plane = math.prod(args[0].shape[2:])
        idx = r.node("Mod", [idx, r.const(plane, _I64)])
        return [_ceil_crop(r, v, args[0], outs[0], tw, k, s, pad, d, extra["ceil_mode"])
                for v in (y, idx)]
    return conv


def _onnx_pool_size(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """A pool's output length as onnx's shape inference computes it: without the rule (PyTorch's,
    the ONNX spec's and onnxruntime's) that a ``ceil_mode`` window starting in the right
    padding is dropped."""
    span = n + 2 * p - d * (k - 1) - 1
    return (-(-span // s) if ceil else span // s) + 1


def _ceil_crop(r, y: str, x, out, tw, k, s, pad, d, ceil) -> str:
    """``y`` sliced to PyTorch's output size on each static axis where onnx's shape inference
    counts the ``ceil_mode`` window that the spec drops (a no-op for onnxruntime, but without
    it the full check refuses the graph: inferred and declared shapes differ)."""
    if not ceil:
        return y
    axes, ends = [], []
    for i, (n, o) in enumerate(zip(x.shape[2:], out.shape[2:])):
        if tw is not None and tw[0][0][2 + i] != n:  # a dynamic spatial axis: nothing declared
            continue
        if _onnx_pool_size(n, k[i], s[i], pad[i], d[i], True) != o:
            axes.append(2 + i)
            ends.append(int(o))
    return _slice(r, y, axes, [0] * len(axes), ends) if axes else y


def _max_unpool_layer(r, m, args, outs, tw):
    """MaxUnpool: PyTorch's indices (flat per plane) made ONNX's (flat over the tensor) by
    adding (n·C + c)·plane, with the batch read from the input's shape."""
    x, idx = args[0], args[1]
    nd = x.ndim - 2
    k = _tup(m.kernel_size, nd)
    s = k if m.stride is None else _tup(m.stride, nd)
    pad = _tup(m.padding, nd)
    out_sp = [int(v) for v in outs[0].shape[2:]]
    c, plane = x.shape[1], math.prod(out_sp)
    xn = r.name_of(x)
    i = r.name_of(idx)
    if idx.dtype != np.int64:
        i = r.node("Cast", [i], to=_dtype_code(r.onnx, np.int64))
    n = r.node("Gather", [r.node("Shape", [xn]), r.const(0, _I64)], axis=0)
    limit = r.node("Mul", [n, r.const(c * plane, _I64)])
    base = r.node("Range", [r.const(0, _I64), limit, r.const(plane, _I64)])
    base = r.node("Reshape", [base, r.ints([-1, c] + [1] * nd)])
    shape = r.node("Concat", [r.node("Shape", [xn], start=0, end=2), r.ints(out_sp)], axis=0)
    return [r.node("MaxUnpool", [xn, r.node("Add", [i, base]), shape], kernel_shape=k,
                   strides=s, pads=pad + pad)]


def _lp_pool_layer(r, m, args, outs, tw):
    """PyTorch's power-average pool, as its formula: (sign(a)·relu(|a|)·K)^(1/p) with a the
    average of xᵖ over each window (the operations in nodegrad's order)."""
    nd = args[0].ndim - 2
    dt = _np_dtype(args[0])
    k = _tup(m.kernel_size, nd)
    s = k if m.stride is None else _tup(m.stride, nd)
    p = float(m.norm_type)
    xp_ = r.node("Pow", [r.name_of(args[0]), r.const(p, dt)])
    a = r.node("AveragePool", [xp_], kernel_shape=k, strides=s, pads=[0] * (2 * nd),
               ceil_mode=int(bool(m.ceil_mode)), count_include_pad=1)
    a = _ceil_crop(r, a, args[0], outs[0], tw, k, s, [0] * nd, [1] * nd, bool(m.ceil_mode))
    mag = r.node("Mul", [r.node("Sign", [a]), r.node("Relu", [r.node("Abs", [a])])])
    return [r.node("Pow", [r.node("Mul", [mag, r.const(float(math.prod(k)), dt)]),
                           r.const(1.0 / p, dt)])]


def _adaptive_max_layer(r, m, args, outs, tw):
    """Max over PyTorch's adaptive bins, one axis at a time (max is separable): a MaxPool where
    the bins tile the axis evenly, else a ReduceMax per bin and a Concat."""
    if m.return_indices:
        r.fail(f"{type(m).__name__} with return_indices=True")
    x = args[0]
    nd = x.ndim - 2
    sizes = _tup(m.output_size, nd)
    y = r.name_of(x)
    for i, (n, o) in enumerate(zip(x.shape[2:], sizes)):
        ax = 2 + i
        if n % o == 0:
            if n == o:
                continue
            kern = [1] * nd
            kern[i] = n // o
            y = r.node("MaxPool", [y], kernel_shape=kern, strides=kern)
            continue
        parts = []
        for j in range(o):
            lo, hi = (j * n) // o, -((-(j + 1) * n) // o)
            parts.append(_reduce(r, "ReduceMax", _slice(r, y, [ax], [lo], [hi]), (ax,), True,
                                 x.ndim))
        y = r.node("Concat", parts, axis=ax)
    return [y if y != r.name_of(x) else r.node("Identity", [y])]


def _lrn_layer(r, m, args, outs, tw):
    """LRN where its window is PyTorch's (odd sizes) on (N, C, H, W); even sizes and other ranks
    as the formula: a zero-padded sum of squares over neighbouring channels."""
    x = args[0]
    if m.size % 2 and x.ndim == 4:  # onnxruntime's LRN takes (N, C, H, W) only
        return [r.node("LRN", [r.name_of(x)], size=int(m.size), alpha=float(m.alpha),
                       beta=float(m.beta), bias=float(m.k))]
    dt = _np_dtype(x)
    xn = r.name_of(x)
    sq = r.node("Mul", [xn, xn])
    lo, hi = m.size // 2, (m.size - 1) // 2
    pads = [0] * x.ndim
    pads_hi = [0] * x.ndim
    pads[1], pads_hi[1] = lo, hi
    sq = r.node("Pad", [sq, r.ints(pads + pads_hi), r.const(0.0, dt)], mode="constant")
    c = x.shape[1]
    total = None
    for i in range(m.size):
        part = _slice(r, sq, [1], [i], [i + c])
        total = part if total is None else r.node("Add", [total, part])
    div = r.node("Add", [r.node("Mul", [total, r.const(m.alpha / m.size, dt)]), r.const(m.k, dt)])
    return [r.node("Div", [xn, r.node("Pow", [div, r.const(m.beta, dt)])])]


def _unfold_layer(r, m, args, outs, tw):
    """im2col as a grouped Conv with one-hot kernels (each output channel copies one tap of one
    input channel, PyTorch's row order), then a Reshape to (N, C·kh·kw, L)."""
    x = args[0]
    if x.ndim != 4:
        r.fail("Unfold of an unbatched input")
    k, d = _tup(m.kernel_size, 2), _tup(m.dilation, 2)
    p, s = _tup(m.padding, 2), _tup(m.stride, 2)
    c, kk = x.shape[1], k[0] * k[1]
    w = np.zeros((c * kk, 1, k[0], k[1]), _np_dtype(x))
    for ch in range(c):
        for t in range(kk):
            w[ch * kk + t, 0, t // k[1], t % k[1]] = 1
    y = r.node("Conv", [r.name_of(x), r.const(w)], kernel_shape=k, strides=s, pads=p + p,
               dilations=d, group=c)
    return [r.node("Reshape", [y, r.ints([0, c * kk, -1])])]


def _fold_layer(r, m, args, outs, tw):
    x = args[0]
    if r.opset < 18:
        r.fail("Fold needs opset 18 or later (ONNX's Col2Im)")
    if x.ndim != 3:
        r.fail("Fold of an unbatched input")
    p = _tup(m.padding, 2)
    return [r.node("Col2Im", [r.name_of(x), r.ints(_tup(m.output_size, 2)),
                              r.ints(_tup(m.kernel_size, 2))], dilations=_tup(m.dilation, 2),
                   pads=p + p, strides=_tup(m.stride, 2))]


def _upsample_layer(r, m, args, outs, tw):
    """Resize with PyTorch's coordinate rules: nearest is asymmetric with floor, nearest-exact
    half-pixel rounding up, linear and cubic (A = −0.75) half-pixel or align-corners; a scale
    factor stays a scale (PyTorch maps coordinates by it), a size becomes the sizes input."""
    x = args[0]
    nd = x.ndim - 2
    mode = m.mode
    static = tw is None or tuple(tw[0][0][2:]) == tuple(x.shape[2:])
    if mode in ("nearest", "nearest-exact") and static:
        return [_nearest_gathers(r, m, x)]
    attrs = {}
    if mode in ("nearest", "nearest-exact"):
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
        if mode == "nearest-exact":
            attrs.update(coordinate_transformation_mode="half_pixel",
                         nearest_mode="round_prefer_ceil")
    else:
        attrs = dict(mode="cubic" if mode == "bicubic" else "linear",
                     coordinate_transformation_mode="align_corners" if m.align_corners
                     else "half_pixel")
        if mode == "bicubic":
            attrs["cubic_coeff_a"] = -0.75
    xn = r.name_of(x)
    if m.scale_factor is not None and not m.recompute_scale_factor:
        sf = m.scale_factor
        sc = [float(f) for f in ((sf,) * nd if isinstance(sf, int | float) else sf)]
        if mode in ("nearest-exact", "bicubic"):
            for i, f in enumerate(sc):
                n = x.shape[2 + i]
                dynamic = tw is not None and tw[0][0][2 + i] != n
                if f != 1.0 and (outs[0].shape[2 + i] == n or dynamic and 1.0 < f < 2.0):
                    r.fail(f"Upsample(mode={mode!r}, scale_factor={f}) on an axis whose size "
                           f"it keeps ({n}): PyTorch resamples such an axis, onnxruntime copies "
                           "it; give size= or a scale factor that changes the size")
        if not any(_size_from_f32_scale(n, f) != o for n, f, o in
                   zip(x.shape[2:], sc, outs[0].shape[2:])):
            scales = r.const(np.asarray([1.0, 1.0] + sc, np.float32), hint="scales")
            return [r.node("Resize", [xn, "", scales], **attrs)]
        # ONNX's float32 scale gives another size (⌊10·float32(0.9)⌋ = 8, not 9): that
        # happens where size·scale is a whole number, so the sizes input maps coordinates
        # by the same scale
        if tw is not None and tuple(tw[0][0][2:]) != tuple(x.shape[2:]):
            r.fail(f"Upsample(scale_factor={m.scale_factor}) over a dynamic spatial axis, where "
                   "ONNX's float32 scale gives another output size; export that axis static")
    lead = r.node("Shape", [xn], start=0, end=2)
    sizes = r.node("Concat", [lead, r.ints(outs[0].shape[2:])], axis=0)
    return [r.node("Resize", [xn, "", "", sizes], **attrs)]


def _nearest_gathers(r, m, x) -> str:
    """A nearest-mode Upsample of static spatial sizes as one Gather per resized axis, of the
    source pixels the layer itself picks: exact in every runtime, where a Resize from a float32
    scale picks other pixels at some sizes (PyTorch halves a doubled axis whatever the scale,
    and 1/float32(1/7) < 7)."""
    y = r.name_of(x)
    sp = tuple(x.shape[2:])
    saved, r.leaf = r.leaf, m  # the probe's operations are not part of the graph
    try:
        for i, n in enumerate(sp):
            shape = [1, 1] + [1] * len(sp)
            shape[2 + i] = n
            probe = np.broadcast_to(np.arange(n).reshape(shape), (1, 1) + sp)
            picked = m.forward(Tensor._of(x.backend.asarray(np.ascontiguousarray(probe)).astype(
                x.dtype)))
            index = [0, 0] + [0] * len(sp)
            index[2 + i] = slice(None)
            src = np.rint(B.backend_of(picked._data).to_host(picked._data)[tuple(index)])
            if len(src) != n or not np.array_equal(src, np.arange(n)):
                y = r.node("Gather", [y, r.const(src.astype(_I64))], axis=2 + i)
    finally:
        r.leaf = saved
    return y if y != r.name_of(x) else r.node("Identity", [y])


def _size_from_f32_scale(n: int, f: float) -> int:
    """An output size from an input size and a Resize scale stored as float32, the smaller of
    the float32 and float64 products' floors (runtimes differ in which they take)."""
    f32 = np.float32(f)
    return min(math.floor(float(np.float32(n) * f32)), math.floor(n * float(f32)))


def _act(op, **fixed):
    """An activation module written as its ONNX op (attributes from the module, or fixed)."""
    def conv(r, m, args, outs, tw):
        attrs = {k: float(v(m)) if callable(v) else v for k, v in fixed.items()}
        return [r.node(op, [r.name_of(args[0])], **attrs)]
    return conv


def _threshold_layer(r, m, args, outs, tw):
    if m.value != 0:  # no ONNX op: as nodegrad computes it
        x = r.name_of(args[0])
        dt = _np_dtype(args[0])
        return [r.node("Where", [r.node("Greater", [x, r.const(m.threshold, dt)]), x,
                                 r.const(m.value, dt)])]
    return [r.node("ThresholdedRelu", [r.name_of(args[0])], alpha=float(m.threshold))]


def _batch_norm(r, m, args, outs, tw):
    x = args[0]
    if m.running_mean is None:
        r.fail("BatchNorm without running statistics (track_running_stats=False)")
    dt = _np_dtype(x)
    c = m.num_features
    w = r.name_of(m.weight) if m.weight is not None else r.const(np.ones(c, dt))
    b = r.name_of(m.bias) if m.bias is not None else r.const(np.zeros(c, dt))
    return [r.node("BatchNormalization", [r.name_of(x), w, b, r.name_of(m.running_mean),
                                          r.name_of(m.running_var)], epsilon=float(m.eps))]


def _layer_norm(r, m, args, outs, tw):
    x = args[0]
    dt = _np_dtype(x)
    ns = tuple(m.normalized_shape)
    w = r.name_of(m.weight) if m.weight is not None else r.const(np.ones(ns, dt))
    ins = [r.name_of(x), w] + ([r.name_of(m.bias)] if m.bias is not None else [])
    return [r.node("LayerNormalization", ins, axis=-len(ns), epsilon=float(m.eps))]


def _embedding(r, m, args, outs, tw):
    """Gather; with ``max_norm`` the rows looked up are scaled down to it as they are read (the
    layer does it to its weight in place, PyTorch's embedding_renorm_, so rows the example
    did not touch would otherwise keep their norm in the graph)."""
    rows = r.node("Gather", [r.name_of(m.weight), r.name_of(args[0])], axis=0)
    if m.max_norm is None:
        return [rows]
    dt = _np_dtype(m.weight)
    p = float(m.norm_type)
    total = _reduce(r, "ReduceSum", r.node("Pow", [r.node("Abs", [rows]), r.const(p, dt)]),
                    (-1,), True, outs[0].ndim)
    norm = r.node("Pow", [total, r.const(1.0 / p, dt)])
    limit = r.const(m.max_norm, dt)
    scale = r.node("Where", [r.node("Greater", [norm, limit]), r.node("Div", [
        limit, r.node("Add", [norm, r.const(1e-7, dt)])]), r.const(1.0, dt)])
    return [r.node("Mul", [rows, scale])]


# PyTorch's gate order -> ONNX's: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c)
_ORDER = {"GRU": (1, 0, 2), "LSTM": (0, 3, 1, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}


def _gates(r, w: str, h: int, order) -> str:
    """``w`` (G·H, …) with its gate blocks put in ONNX's order, as nodes on the initializer (so
    the initializers keep the layer's names and shapes)."""
    if list(order) == list(range(len(order))):
        return w
    parts = [_slice(r, w, [0], [g * h], [(g + 1) * h]) for g in order]
    return r.node("Concat", parts, axis=0)


def _initial_states(r, m, args, tw) -> tuple[str | None, str | None]:
    """The value names of the initial state (h0, and c0 for an LSTM) passed as the second
    argument, or None; PyTorch's (L·D, N, H) whatever ``batch_first``, as ONNX's per layer."""
    hx = args[1] if len(args) > 1 else None
    if hx is None:
        return None, None
    parts = list(hx) if isinstance(hx, tuple | list) else [hx]
    want = 2 if m.mode == "LSTM" else 1
    if len(parts) != want or not all(isinstance(t, Tensor) and t.ndim == 3 for t in parts):
        r.fail(f"{type(m).__name__} with an initial state other than "
               f"{'(h0, c0)' if want == 2 else 'h0'} of shape (num_layers·D, N, H)")
    for k, t in enumerate(parts):
        if id(t) not in r.names and id(t) not in r.params and tw is not None and \
                tuple(t.shape) != tuple(tw[0][1 + k]) and \
                r.dynamic_const(t, tuple(tw[0][1 + k])) is None:
            r.fail(f"{type(m).__name__}: an initial state made in the forward follows the "
                   "dynamic axes (derive it from the input, e.g. zeros_like)")
    names = [r.name_of(t) for t in parts]
    return names[0], names[1] if want == 2 else None


def _recurrent(r, m, args, outs, tw):
    if args[0].ndim != 3:
        r.fail(f"{type(m).__name__} exported with an unbatched input (pass a batched one)")
    if getattr(m, "proj_size", 0):
        r.fail(f"{type(m).__name__} with proj_size={m.proj_size} (ONNX's LSTM has no "
               "projection of its hidden state)")
    op = {"GRU": "GRU", "LSTM": "LSTM"}.get(m.mode, "RNN")
    order, H = _ORDER[m.mode], m.hidden_size
    dirs = 2 if m.bidirectional else 1
    x = r.name_of(args[0])
    h0, c0 = _initial_states(r, m, args, tw)
    if m.batch_first:
        x = r.node("Transpose", [x], perm=[1, 0, 2])
    hs, cs = [], []
    for layer in range(m.num_layers):
        ws, rs, bs = [], [], []
        for (w_ih, w_hh, b_ih, b_hh) in m._weights(layer):
            ws.append(_unsqueeze(r, _gates(r, r.name_of(w_ih), H, order), [0]))
            rs.append(_unsqueeze(r, _gates(r, r.name_of(w_hh), H, order), [0]))
            if b_ih is not None:
                b = r.node("Concat", [_gates(r, r.name_of(b_ih), H, order),
                                      _gates(r, r.name_of(b_hh), H, order)], axis=0)
                bs.append(_unsqueeze(r, b, [0]))

        def cat(vs):
            return vs[0] if len(vs) == 1 else r.node("Concat", vs, axis=0)
        attrs = {"hidden_size": H, "direction": "bidirectional" if dirs == 2 else "forward"}
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        if op == "RNN":
            attrs["activations"] = ["Relu" if m.mode == "RNN_RELU" else "Tanh"] * dirs
        ins = [x, cat(ws), cat(rs)] + ([cat(bs)] if bs else [])
        if h0 is not None:  # this layer's directions of the initial state
            ins = ins + [""] * (3 - len(ins)) + ["", _slice(r, h0, [0], [layer * dirs],
                                                            [(layer + 1) * dirs])]
            if c0 is not None:
                ins.append(_slice(r, c0, [0], [layer * dirs], [(layer + 1) * dirs]))
        res = r.node(op, ins, n_out=3 if op == "LSTM" else 2, **attrs)
        y, h = res[0], res[1]
        if op == "LSTM":
            cs.append(res[2])
        hs.append(h)
        # Y (T, D, N, H) -> (T, N, D·H)
        y = r.node("Transpose", [y], perm=[0, 2, 1, 3])
        x = r.node("Reshape", [y, r.ints([0, 0, dirs * H])])
    if m.batch_first:
        x = r.node("Transpose", [x], perm=[1, 0, 2])
    h_n = hs[0] if len(hs) == 1 else r.node("Concat", hs, axis=0)
    if op == "LSTM":
        c_n = cs[0] if len(cs) == 1 else r.node("Concat", cs, axis=0)
        return [x, h_n, c_n]
    return [x, h_n]


# activations whose ONNX op takes float32 attributes (or, as Celu, float32 only), or has no
# float64 kernel in onnxruntime: other dtypes export through their primitives (exact constants)
_FLOAT32_ATTRS = (L.ELU, L.CELU, L.SELU, L.Hardsigmoid, L.Hardswish, L.Softsign, L.Softshrink,
                  L.Hardshrink, L.Threshold)

LAYERS = {
    L.Conv1d: _conv_layer, L.Conv2d: _conv_layer, L.Conv3d: _conv_layer,
    L.ConvTranspose1d: _conv_transpose_layer, L.ConvTranspose2d: _conv_transpose_layer,
    L.MaxPool1d: _pool_layer("MaxPool", 1), L.MaxPool2d: _pool_layer("MaxPool", 2),
    L.MaxPool3d: _pool_layer("MaxPool", 3), L.AvgPool1d: _pool_layer("AveragePool", 1),
    L.AvgPool2d: _pool_layer("AveragePool", 2), L.AvgPool3d: _pool_layer("AveragePool", 3),
    L.LPPool1d: _lp_pool_layer, L.LPPool2d: _lp_pool_layer,
    L.MaxUnpool1d: _max_unpool_layer, L.MaxUnpool2d: _max_unpool_layer,
    L.AdaptiveMaxPool1d: _adaptive_max_layer, L.AdaptiveMaxPool2d: _adaptive_max_layer,
    L.LocalResponseNorm: _lrn_layer, L.Unfold: _unfold_layer, L.Fold: _fold_layer,
    L.ELU: _act("Elu", alpha=lambda m: m.alpha), L.CELU: _act("Celu", alpha=lambda m: m.alpha),
    L.SELU: _act("Selu"), L.Hardsigmoid: _act("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    L.Hardswish: _act("HardSwish"), L.Softsign: _act("Softsign"),
    L.Softshrink: _act("Shrink", bias=lambda m: m.lambd, lambd=lambda m: m.lambd),
    L.Hardshrink: _act("Shrink", bias=0.0, lambd=lambda m: m.lambd),
    L.Threshold: _threshold_layer, L.Upsample: _upsample_layer,
    L.UpsamplingNearest2d: _upsample_layer, L.UpsamplingBilinear2d: _upsample_layer,
    L.BatchNorm1d: _batch_norm, L.BatchNorm2d: _batch_norm, L.SyncBatchNorm: _batch_norm,
    L.LayerNorm: _layer_norm,
    L.Embedding: _embedding, L.GRU: _recurrent, L.LSTM: _recurrent, L.RNN: _recurrent,
}


# --- the entry point --------------------------------------------------------------------------
def _resized(x: Tensor, axes: dict, grow: dict) -> Tensor:
    """``x`` with each dynamic axis longer by its name's step in ``grow`` (1 for the first name,
    2 for the second, ...: axes of different names stay told apart even where their traced
    sizes agree) with rows repeated cyclically: the second trace's input."""
    d = B.backend_of(x._data).to_host(x._data)
    for ax, name in axes.items():
        n = d.shape[ax]
        d = np.take(d, np.arange(n + grow[name]) % max(n, 1), axis=ax)
    return Tensor._of(Tensor._of(x._data).backend.asarray(d))


def _trace(onnx, model, inputs, opset, build, twin, pnames, paths, grown=None):
    rec = _Recorder(onnx, opset, build, twin, pnames)
    rec.paths = paths
    for i, axes in (grown or {}).items():  # {input position: {axis: resized size}}
        for a, size in axes.items():
            rec.dims.setdefault((inputs[i].shape[a], size),
                                (f"input_{i}" if len(inputs) > 1 else "input", a))
    handles = []
    for _, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(rec.pre))
        # first among the forward hooks: a user's hook that changes a layer's output then
        # runs after the layer is written, and its operations are recorded
        handles.append(m.register_forward_hook(rec.post, prepend=True))
    in_names = []
    for i, x in enumerate(inputs):
        n = f"input_{i}" if len(inputs) > 1 else "input"
        rec.set(x, n)
        in_names.append(n)
    try:
        with no_grad(), pushed(rec):
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return rec, in_names, out


def export(model: Module, example_inputs, path: str | os.PathLike | BinaryIO | None = None, *,
           opset: int = DEFAULT_OPSET, dynamic_axes: dict | None = None,
           input_names: list[str] | None = None,
           output_names: list[str] | None = None) -> ModelProto:
    """Trace ``model``'s forward on ``example_inputs`` and build an ONNX model (weights as
    initializers named as in ``named_parameters``), written to ``path`` (a path, written
    atomically, or a binary file object) if given. Returns the ``onnx.ModelProto``.

    The graph is always the inference graph, as ``torch.onnx.export``'s default
    ``TrainingMode.EVAL``: the forward runs in eval mode (dropout is the identity, batch norm
    uses its running statistics), and every submodule's mode is restored afterwards.
    ``dynamic_axes`` maps an input's position (or name) to ``{axis: name}`` or a list of axes;
    by default axis 0 of every input is ``"batch"``; ``{}`` makes every shape static.
    """
    onnx = require_onnx()
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ValueError(f"onnx export: opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    if not isinstance(model, Module):
        raise TypeError(f"onnx export: model must be a nodegrad Module, got "
                        f"{type(model).__name__}")
    inputs = tuple(example_inputs) if isinstance(example_inputs, tuple | list) else \
        (example_inputs,)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError("onnx export: example_inputs must be a Tensor or a tuple of Tensors")
    inputs = tuple(Tensor._of(x._data) for x in inputs)
    if input_names is not None and len(input_names) != len(inputs):
        raise ValueError(f"onnx export: {len(input_names)} input names for "
                         f"{len(inputs)} inputs")
    names_in = list(input_names or (["input"] if len(inputs) == 1 else
                                    [f"input_{i}" for i in range(len(inputs))]))
    if dynamic_axes is None:
        dynamic_axes = {i: {0: "batch"} for i, x in enumerate(inputs) if x.ndim}
    dynamic_axes, out_axes = _dynamic_axes(dynamic_axes, inputs, names_in, output_names)
    pnames = {id(t): n for n, t in model.named_parameters()}
    pnames.update({id(t): n for n, t in model.named_buffers() if t is not None})
    paths = {id(m): n for n, m in model.named_modules() if n}
    modes = [(m, m.training) for m in model.modules()]  # each one's, as a frozen norm's
    model.eval()
    try:
        # a second trace, with the dynamic axes one longer (or the same inputs: it still tells
        # random numbers drawn in the forward, which must not become constants of the graph)
        dynamic = any(dynamic_axes.values())
        grow: dict[str, int] = {}
        for axes in dynamic_axes.values():
            for name in axes.values():
                grow.setdefault(name, len(grow) + 1)
        other = tuple(_resized(x, dynamic_axes.get(i, {}), grow) for i, x in enumerate(inputs))
        try:
            twin_rec, _, twin_out = _trace(onnx, model, other, opset, False, None, pnames,
                                           paths)
        except UnsupportedError:
            raise
        except Exception as e:
            if not dynamic:
                raise
            with no_grad():
                model(*inputs)  # fails too: the forward's own error
            raise UnsupportedError(
                f"onnx export: the forward fails when the dynamic axes {dynamic_axes} "
                f"(input position: {{axis: name}}) change size, so they cannot be dynamic "
                f"(axis 0 of an unbatched input is not a batch); export with "
                f"dynamic_axes={{}} or name the axes that may change ({type(e).__name__}: "
                f"{e})") from e
        twin = twin_rec.events
        grown = {i: {a: other[i].shape[a] for a in axes} for i, axes in dynamic_axes.items()}
        rec, in_names, out = _trace(onnx, model, inputs, opset, True, twin, pnames, paths,
                                    grown)
        if len(rec.events) != len(twin):
            rec.fail("the forward runs differently for another size of the dynamic axes")
    finally:
        for m, training in modes:
            m.training = training
    outs = _flat(out)
    if not outs:
        raise TypeError("onnx export: the forward returned no tensors")
    twin_outs = _flat(twin_out)
    h = onnx.helper
    names_out = list(output_names or (["output"] if len(outs) == 1 else
                                      [f"output_{i}" for i in range(len(outs))]))
    nodes = list(rec.nodes)
    # rename the traced input values to the requested names; outputs via Identity
    rename = dict(zip(in_names, names_in))
    for n in nodes:
        n.input[:] = [rename.get(i, i) for i in n.input]
    graph_outs = []
    known = {}  # (traced size, resized size) of each dynamic input axis -> its name
    if dynamic:
        for i, axes in dynamic_axes.items():
            for a, an in axes.items():
                known[(inputs[i].shape[a], inputs[i].shape[a] + grow[an])] = an
    for o, t, t2, name in zip(outs, outs, twin_outs, names_out):
        src = rec.names.get(id(o))
        if src is not None:
            rec.unchanged(o)
        else:
            if _digest(o) != _digest(t2):
                rec.fail(f"output {name!r} is computed outside the traced operations (say "
                         "one_hot or a NumPy round trip) and depends on the input, or is random")
            src = rec.name_of(o)
        nodes.append(h.make_node("Identity", [rename.get(src, src)], [name]))
        dims = [d if d == d2 else known.get((d, d2), f"{name}_dim{i}") for i, (d, d2) in
                enumerate(zip(t.shape, t2.shape))]
        for a, an in out_axes.get(name, {}).items():  # declared dynamic by the caller
            if not -len(dims) <= a < len(dims):
                raise ValueError(f"onnx export: dynamic_axes names axis {a} of output {name!r}"
                                 f" of shape {tuple(t.shape)}")
            dims[a] = an
        graph_outs.append(h.make_tensor_value_info(name, _dtype_code(onnx, t.dtype), dims))
    graph_ins = []
    for i, (x, name) in enumerate(zip(inputs, names_in)):
        dims = [dynamic_axes.get(i, {}).get(a, s) for a, s in enumerate(x.shape)]
        graph_ins.append(h.make_tensor_value_info(name, _dtype_code(onnx, x.dtype), dims))
    order = {n: i for i, n in enumerate(pnames.values())}  # the weights first, in model order
    inits = sorted(rec.inits.values(), key=lambda t: order.get(t.name, len(order)))
    graph = h.make_graph(nodes, type(model).__name__, graph_ins, graph_outs, initializer=inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", int(opset))],
                         producer_name="nodegrad")
    proto.ir_version = min(proto.ir_version, 10)
    if dynamic:
        _free_coincident_dims(onnx, proto)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        _save(proto, path)
    return proto


def _free_coincident_dims(onnx, proto) -> None:
    """Output dimensions that both traces gave the same size but that follow the dynamic axes
    all the same (``x[::2]`` has 2 rows for 3 and for 4): where shape inference from the
    graph's inputs cannot tell a dimension's size, it is declared dynamic, not the traced one."""
    g = onnx.GraphProto()
    g.CopyFrom(proto.graph)
    for o in g.output:
        o.type.tensor_type.ClearField("shape")
    probe = onnx.helper.make_model(g, opset_imports=proto.opset_import)
    probe.ir_version = proto.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True).graph.output
    except Exception:  # noqa: BLE001 - the checker below reports a broken graph
        return
    for o, io in zip(proto.graph.output, inferred):
        if not io.type.tensor_type.HasField("shape"):
            continue
        got = io.type.tensor_type.shape.dim
        for i, d in enumerate(o.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and i < len(got) and not (
                    got[i].HasField("dim_value") and got[i].dim_value == d.dim_value):
                d.dim_param = f"{o.name}_dim{i}"


def _dynamic_axes(spec: dict, inputs, names_in: list, output_names) -> tuple[dict, dict]:
    """``dynamic_axes`` as ``{input position: {axis: name}}`` and ``{output name: {axis:
    name}}``: keys are input positions or (as ``torch.onnx.export``) input or output names,
    values ``{axis: name}`` or a list of axes (named ``<key>_dynamic_axes_<k>``)."""
    if not isinstance(spec, dict):
        raise TypeError(f"onnx export: dynamic_axes must be a dict, got {type(spec).__name__}")
    ins, outs = {}, {}
    for key, axes in spec.items():
        if isinstance(axes, list | tuple):
            axes = {a: f"{key}_dynamic_axes_{k + 1}" for k, a in enumerate(axes)}
        if not isinstance(axes, dict) or not all(isinstance(a, int) for a in axes):
            raise TypeError(f"onnx export: dynamic_axes[{key!r}] must map axes to names or "
                            f"list axes, got {axes!r}")
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(inputs):
            i = key
        elif isinstance(key, str) and key in names_in:
            i = names_in.index(key)
        elif isinstance(key, str) and key in (output_names or ("output",)) or \
                isinstance(key, str) and output_names is None and key.startswith("output_"):
            outs[key] = {int(a): str(n) for a, n in axes.items()}
            continue
        else:
            raise ValueError(f"onnx export: dynamic_axes key {key!r} is neither an input's "
                             f"position (0 to {len(inputs) - 1}) nor an input or output name "
                             f"({', '.join(names_in)}; outputs: {output_names or 'output'})")
        nd = inputs[i].ndim
        if any(not -nd <= a < nd for a in axes):
            raise ValueError(f"onnx export: dynamic_axes {spec} do not fit the inputs' "
                             f"shapes {[tuple(x.shape) for x in inputs]}")
        ins[i] = {a % nd: str(n) for a, n in axes.items()}
    return ins, outs


def _save(proto, path) -> None:
    """Write ``proto`` to a binary file object, or to a path atomically: into a temporary file
    beside it, then renamed over it, so a failed write leaves any earlier file as it was."""
    data = proto.SerializeToString()
    if hasattr(path, "write"):
        path.write(data)
        return
    path = os.fsdecode(os.fspath(path))
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["export"]
