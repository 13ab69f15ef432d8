"""Import an ONNX model as a trainable nodegrad module.

Float initializers become :class:`~nodegrad.nn.Parameter` s named after them (dotted names nest
as submodules, so ``fc.weight`` is ``model.fc.weight``); a Gemm on a weight matrix becomes a real
:class:`~nodegrad.nn.Linear` (so ``replace_head`` finds the classifier); batch-norm statistics
become buffers. The forward interprets the graph node by node with nodegrad ops, so ``grad``,
``vmap`` and optimisers work on it as on any module.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from typing import TYPE_CHECKING, BinaryIO

from .. import _backend as B
from .. import ops
from ..nn import Linear, Module, Parameter
from ..nn import functional as F
from ..nn import conv_functional as CF
from ..nn.rnn_functional import recurrent_layer
from ..tensor import Tensor
from ._common import UnsupportedError, require_onnx

if TYPE_CHECKING:
    from onnx import ModelProto

np = B.np


def _part(s: str) -> str:
    """One component of a parameter name, made a valid attribute-like name."""
    s = re.sub(r"\W+", "_", s).strip("_") or "p"
    return s


def _path(name: str) -> tuple[str, ...]:
    return tuple(_part(p) for p in name.split("."))


class OnnxModule(Module):
    """An ONNX graph run with nodegrad ops; its weights are this module's parameters."""

    def __init__(self, proto):
        super().__init__()
        onnx = require_onnx()
        g = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in inits]
        self.output_names = [o.name for o in g.output]
        self.nodes = _nodes(onnx, g)
        # PyTorch's exporter writes equal initializers once and the others as Identity nodes
        # on it (norm biases that are all zeros, say); each gets its own parameter back
        for n in [n for n in self.nodes if n[0] == "Identity" and n[1][0] in inits]:
            inits[n[2][0]] = np.array(inits[n[1][0]])
            self.nodes.remove(n)
        bad: dict[str, list[str]] = {}  # op type -> the names of its nodes
        custom = set()
        for k, n in enumerate(g.node):
            if n.domain not in ("", "ai.onnx"):
                name = n.name or f"#{k} {n.op_type}"
                custom.add(name)
                bad.setdefault(f"{n.domain}::{n.op_type}", []).append(name)
        for n in _walk(self.nodes):
            if n[0] not in OPS and n[0] != "If" and n[4] not in custom:
                bad.setdefault(n[0], []).append(n[4])
        if bad:
            where = "; ".join(f"{op}: {', '.join(repr(x) for x in ns[:3])}"
                              f"{', ...' if len(ns) > 3 else ''}" for op, ns in sorted(bad.items()))
            raise UnsupportedError(f"onnx load: {len(bad)} operator type(s) have no nodegrad "
                                   f"counterpart here: {', '.join(sorted(bad))} (nodes: {where})")
        uses: dict[str, int] = {}
        for n in self.nodes:
            for i in n[1]:
                uses[i] = uses.get(i, 0) + 1
        stats = {n[1][k] for n in self.nodes if n[0] == "BatchNormalization" for k in (3, 4)
                 if len(n[1]) > k}
        self._where: dict[str, tuple] = {}   # initializer -> (module path, attribute)
        self._linears: dict[int, tuple] = {}  # node index -> module path of its Linear
        taken = set()
        for k, (op, ins, _, at, _) in enumerate(self.nodes):
            if op != "Gemm" or at.get("transA", 0) or at.get("alpha", 1.0) != 1.0 \
                    or at.get("beta", 1.0) != 1.0 or len(ins) < 2:
                continue
            w = ins[1]
            b = ins[2] if len(ins) > 2 and ins[2] else None
            if w not in inits or inits[w].ndim != 2 or uses.get(w) != 1 \
                    or inits[w].dtype.kind != "f":
                continue
            wt = inits[w] if at.get("transB", 0) else inits[w].T
            if b is not None and (b not in inits or inits[b].shape != (wt.shape[0],)
                                  or uses.get(b) != 1):
                continue
            path = _path(w)[:-1] if w.endswith(".weight") and "." in w else _path(w)
            if path in taken:
                continue
            taken.add(path)
            lin = Linear(wt.shape[1], wt.shape[0], bias=b is not None, dtype=wt.dtype)
            lin.weight._data[...] = B.CPU.asarray(np.ascontiguousarray(wt))
            if b is not None:
                lin.bias._data[...] = B.CPU.asarray(inits[b])
            self._mount(path, lin)
            self._linears[k] = ".".join(path)
            self._where[w] = ("linear", k)
            if b is not None:
                self._where[b] = ("linear", k)
        self._consts: dict[str, Tensor] = {}
        for name, arr in inits.items():
            if name in self._where:
                continue
            t = Tensor._of(B.CPU.asarray(np.array(arr)))
            if arr.dtype.kind != "f":
                self._consts[name] = t
                continue
            path = _path(name)
            owner = self._holder(path[:-1])
            leaf = path[-1]
            while leaf in owner._parameters or leaf in owner._buffers or leaf in owner._modules:
                leaf += "_"
            if name in stats:
                owner.register_buffer(leaf, t)
            else:
                owner.register_parameter(leaf, Parameter(t))
            self._where[name] = (".".join(path[:-1]), leaf)

    def _holder(self, path: tuple) -> Module:
        m = self
        for p in path:
            sub = m._modules.get(p)
            if sub is None:
                sub = Module()
                m.add_module(p, sub)
            m = sub
        return m

    def _mount(self, path: tuple, mod: Module) -> None:
        self._holder(path[:-1]).add_module(path[-1], mod)

    def _value(self, name: str) -> Tensor:
        c = self._consts.get(name)
        if c is not None:
            return c
        where = self._where[name]
        if where[0] == "linear":
            raise KeyError(name)
        owner = self.get_submodule(where[0]) if where[0] else self
        return getattr(owner, where[1])

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"onnx model: expected {len(self.input_names)} inputs "
                            f"({', '.join(self.input_names)}), got {len(inputs)}")
        env: dict[str, Tensor | None] = {"": None}
        for name, x in zip(self.input_names, inputs):
            env[name] = x if isinstance(x, Tensor) else Tensor._of(B.CPU.asarray(x))
        self._run(self.nodes, env, self._linears)
        out = tuple(env[o] if o in env else self._value(o) for o in self.output_names)
        return out[0] if len(out) == 1 else out

    def _run(self, nodes, env: dict, linears: dict) -> None:
        """Run ``nodes`` in order, their outputs added to ``env`` (a subgraph sees the outer
        values, as ONNX's scoping)."""
        for k, (op, ins, outs, at, nname) in enumerate(nodes):
            if k in linears:
                res = self.get_submodule(linears[k])(env[ins[0]])
            elif op == "If":  # a condition on shapes (PyTorch writes some): run one branch
                cond = env[ins[0]] if ins[0] in env else self._value(ins[0])
                sub = at["then_branch" if bool(values_of(cond).reshape(-1)[0]) else
                         "else_branch"]
                inner = dict(env)
                self._run(sub[0], inner, {})
                res = tuple(inner[o] for o in sub[1])
            else:
                args = [env[i] if i in env else self._value(i) for i in ins]
                try:
                    res = OPS[op](self, at, *args)
                except UnsupportedError as e:
                    raise UnsupportedError(f"onnx node '{nname}' ({op}): {e}") from None
            res = res if isinstance(res, tuple | list) else (res,)
            for o, r in zip(outs, res):
                env[o] = r


def _nodes(onnx, g, sub: bool = False) -> list:
    """A graph's nodes as (op, inputs, outputs, attributes, name); a subgraph attribute (If's
    branches) becomes (its nodes, its output names)."""
    if sub and len(g.initializer):
        raise UnsupportedError("onnx load: a subgraph with initializers of its own")
    out = []
    for k, n in enumerate(g.node):
        at = {}
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                at[a.name] = (_nodes(onnx, a.g, True), [o.name for o in a.g.output])
            else:
                at[a.name] = _attr(onnx, a)
        outs = list(n.output)
        while outs and not outs[-1]:  # an optional output left out by an empty name
            outs.pop()
        at["_n_out"] = len(outs)  # Split without sizes cuts into as many pieces
        out.append((n.op_type, list(n.input), outs, at, n.name or f"#{k} {n.op_type}"))
    return out


def _walk(nodes):
    """Every node, those of subgraphs included."""
    for n in nodes:
        yield n
        for v in n[3].values():
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], list):
                yield from _walk(v[0])


def _attr(onnx, a):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return onnx.numpy_helper.to_array(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode() for s in v]
    return v


def load(path: str | os.PathLike | bytes | BinaryIO | ModelProto) -> OnnxModule:
    """Read an ONNX model (a path, a binary file object, the serialised bytes or an
    ``onnx.ModelProto``) into a trainable :class:`OnnxModule`."""
    onnx = require_onnx()
    if isinstance(path, onnx.ModelProto):
        proto = path
    elif isinstance(path, bytes | bytearray | memoryview):
        proto = onnx.load_from_string(bytes(path))
    elif hasattr(path, "read"):
        proto = onnx.load(path)
    elif isinstance(path, str | os.PathLike):
        proto = onnx.load(os.fspath(path))
    else:
        raise TypeError(f"onnx load: expected a path, a binary file object, bytes or an "
                        f"onnx.ModelProto, got {type(path).__name__}")
    return OnnxModule(proto)


# --- helpers ----------------------------------------------------------------------------------
def _ints(t) -> list[int]:
    if t is None:
        return []
    return [int(v) for v in np.asarray(B.backend_of(t._data).to_host(t._data)).reshape(-1)]


def _const(arr) -> Tensor:
    return Tensor._of(B.CPU.asarray(np.asarray(arr)))


def _axes(m, at, args, pos: int):
    """The ``axes`` of a reduce/squeeze: an input from some opset on, before it an attribute."""
    if len(args) > pos and args[pos] is not None:
        return _ints(args[pos])
    return list(at["axes"]) if "axes" in at else None


def _fail(what: str):
    raise UnsupportedError(what)


# --- the operators ----------------------------------------------------------------------------
def _bin(fn):
    return lambda m, at, x, y: fn(x, y)


def _un(fn):
    return lambda m, at, x: fn(x)


def _div(m, at, x, y):
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        return ops.astype(ops.trunc(ops.divide(x, y)), x.dtype)
    return ops.divide(x, y)


def _mod(m, at, x, y):
    """Mod: the sign of the divisor (Python's %), or with ``fmod=1`` of the dividend (C's)."""
    return ops.fmod(x, y) if at.get("fmod", 0) else ops.remainder(x, y)


def _variadic(fn):
    def op(m, at, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = fn(y, x)
        return y
    return op


def _gemm(m, at, a, b, c=None):
    if at.get("transA", 0):
        a = a.mT
    if at.get("transB", 0):
        b = b.mT
    y = ops.matmul(a, b)
    if at.get("alpha", 1.0) != 1.0:
        y = y * at["alpha"]
    if c is not None:
        y = y + (c * at["beta"] if at.get("beta", 1.0) != 1.0 else c)
    return y


def _reshape(m, at, x, shape):
    s = _ints(shape)
    if not at.get("allowzero", 0):
        s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
    return ops.reshape(x, tuple(s))


def _flatten(m, at, x):
    ax = at.get("axis", 1) % max(x.ndim, 1) if x.ndim else 0
    return ops.reshape(x, (math.prod(x.shape[:ax]), math.prod(x.shape[ax:])))


def _transpose(m, at, x):
    perm = at.get("perm") or list(range(x.ndim))[::-1]
    return ops.transpose(x, tuple(perm))


def _squeeze(m, at, x, axes=None):
    ax = _axes(m, at, (x, axes), 1)
    if ax is None:
        return ops.squeeze(x)
    return ops.squeeze(x, tuple(a % x.ndim for a in ax))


def _unsqueeze(m, at, x, axes=None):
    ax = sorted(a % (x.ndim + len(_axes(m, at, (x, axes), 1)))
                for a in _axes(m, at, (x, axes), 1))
    shape = list(x.shape)
    for a in ax:
        shape.insert(a, 1)
    return ops.reshape(x, tuple(shape))


def _concat(m, at, *xs):
    xs = [x for x in xs if x is not None]
    return ops.concatenate(xs, axis=at["axis"])


def _shape(m, at, x):
    s = list(x.shape)
    start, end = at.get("start", 0), at.get("end", len(s))
    return _const(np.asarray(s[start:end], dtype=np.int64))


def _gather(m, at, x, idx):
    ax = at.get("axis", 0) % x.ndim
    i = idx._data if idx.ndim else int(idx.item())
    return x[(slice(None),) * ax + (i,)]


def _slice(m, at, x, starts, ends, axes=None, steps=None):
    st, en = _ints(starts), _ints(ends)
    ax = _ints(axes) if axes is not None else list(range(len(st)))
    sp = _ints(steps) if steps is not None else [1] * len(st)
    index = [slice(None)] * x.ndim
    for a, s, e, p in zip(ax, st, en, sp):
        index[a % x.ndim] = slice(s, e, p)
    return x[tuple(index)]


def _constant(m, at):
    if "value" in at:
        return _const(at["value"])
    for k, dt in (("value_float", np.float32), ("value_int", np.int64),
                  ("value_floats", np.float32), ("value_ints", np.int64)):
        if k in at:
            return _const(np.asarray(at[k], dtype=dt))
    _fail(f"Constant with attributes {sorted(at)}")


def _constant_of_shape(m, at, shape):
    v = at.get("value")
    v = np.zeros(1, np.float32) if v is None else np.asarray(v)
    return _const(np.full(tuple(_ints(shape)), v.reshape(-1)[0], dtype=v.dtype))


def _expand(m, at, x, shape):
    s = np.broadcast_shapes(tuple(x.shape), tuple(_ints(shape)))
    return ops.broadcast_to(x, s)


def _tile(m, at, x, repeats):
    return ops.tile(x, tuple(_ints(repeats)))


def _trilu(m, at, x, k=None):
    """``Trilu``: the upper (``upper=1``, default) or lower triangle from diagonal ``k``."""
    k = _ints(k)
    return (ops.triu if at.get("upper", 1) else ops.tril)(x, k[0] if k else 0)


def _cast(m, at, x):
    onnx = require_onnx()
    return ops.astype(x, onnx.helper.tensor_dtype_to_np_dtype(at["to"]))


def _softmax(fn):
    """Softmax/LogSoftmax over ``axis``; before opset 13 over all the axes from ``axis`` on (the
    input seen as a matrix, default axis 1)."""
    def op(m, at, x):
        if m.opset >= 13:
            return fn(x, axis=at.get("axis", -1))
        ax = at.get("axis", 1) % max(x.ndim, 1)
        if ax >= x.ndim - 1:
            return fn(x, axis=-1)
        flat = ops.reshape(x, x.shape[:ax] + (math.prod(x.shape[ax:]),))
        return ops.reshape(fn(flat, axis=-1), x.shape)
    return op


def _reduce(fn):
    def op(m, at, x, axes=None):
        ax = _axes(m, at, (x, axes), 1)
        keep = bool(at.get("keepdims", 1))
        if not ax:
            if at.get("noop_with_empty_axes", 0):
                return x
            ax = list(range(x.ndim))
        return fn(x, axis=tuple(a % x.ndim for a in ax), keepdims=keep)
    return op


def _pads(at, nd: int, x=None, k=None) -> list[int]:
    """The begin and end pads; ``auto_pad`` SAME_UPPER/SAME_LOWER (PyTorch's
    ``padding='same'``) from the input's spatial sizes and kernel ``k``: an output of
    ⌈size/stride⌉, the odd pad at the end (at the beginning for SAME_LOWER)."""
    auto = at.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER") and x is not None and k is not None:
        s = list(at.get("strides") or [1] * nd)
        d = list(at.get("dilations") or [1] * nd)
        lo, hi = [], []
        for n, ki, si, di in zip(x.shape[2:], k, s, d):
            total = max(0, (-(-n // si) - 1) * si + (ki - 1) * di + 1 - n)
            small, big = total // 2, total - total // 2
            lo.append(small if auto == "SAME_UPPER" else big)
            hi.append(big if auto == "SAME_UPPER" else small)
        return lo + hi
    if auto not in ("NOTSET", "VALID"):
        _fail(f"auto_pad={auto!r}")
    p = list(at.get("pads") or [0] * 2 * nd)
    if auto == "VALID":
        p = [0] * 2 * nd
    return p


def _sym(x, p: list[int], nd: int, value: float = 0.0):
    """``x`` padded where the begin and end pads differ; the symmetric rest is returned."""
    lo, hi = p[:nd], p[nd:]
    if lo == hi:
        return x, lo
    common = [min(a, b) for a, b in zip(lo, hi)]
    extra = ((0, 0), (0, 0)) + tuple((a - c, b - c) for a, b, c in zip(lo, hi, common))
    return ops.pad(x, extra, constant_values=value), common


def _conv(m, at, x, w, b=None):
    nd = x.ndim - 2
    if nd not in (1, 2, 3):
        _fail(f"Conv over {nd} spatial axes (1 to 3 are supported)")
    x, pad = _sym(x, _pads(at, nd, x, w.shape[2:]), nd)
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return fn(x, w, b, tuple(at.get("strides") or [1] * nd), tuple(pad),
              tuple(at.get("dilations") or [1] * nd), at.get("group", 1))


def _pool(kind):
    def op(m, at, x):
        nd = x.ndim - 2
        if nd not in (1, 2, 3):
            _fail(f"{kind}Pool over {nd} spatial axes (1 to 3 are supported)")
        ceil = bool(at.get("ceil_mode", 0))
        k = tuple(at["kernel_shape"])
        s = tuple(at.get("strides") or [1] * nd)
        p = _pads(at, nd, x, k)
        if ceil and p[:nd] != p[nd:]:
            _fail("ceil_mode=1 with asymmetric padding")
        if kind == "Max":
            want = at["_n_out"] > 1
            if want and (p[:nd] != p[nd:] or at.get("storage_order", 0)):
                _fail("MaxPool indices with asymmetric padding or storage_order=1")
            x, pad = _sym(x, p, nd, -math.inf)
            d = tuple(at.get("dilations") or [1] * nd)
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
            res = fn(x, k, s, tuple(pad), d, ceil, want)
            if not want:
                return res
            y, idx = res  # PyTorch's indices are flat per plane, ONNX's over the whole tensor
            n, c = x.shape[:2]
            plane = math.prod(x.shape[2:])
            base = np.arange(n * c, dtype=np.int64).reshape((n, c) + (1,) * nd) * plane
            return y, idx + _const(base)
        counted = bool(at.get("count_include_pad", 0))
        if p[:nd] != p[nd:] and not counted:
            _fail("AveragePool with asymmetric padding that is not counted")
        x, pad = _sym(x, p, nd)
        if nd == 1:
            return F.avg_pool1d(x, k, s, tuple(pad), ceil, counted)
        return (F.avg_pool2d, F.avg_pool3d)[nd - 2](x, k, s, tuple(pad), ceil, counted)
    return op


def _range(m, at, start, limit, delta):
    a, b, d = (values_of(t).reshape(()) for t in (start, limit, delta))
    return _const(np.arange(a, b, d, dtype=np.result_type(a, b, d)))


def _max_unpool(m, at, x, idx, output_shape=None):
    """ONNX's indices are flat over the unpooled tensor, PyTorch's over each plane."""
    nd = x.ndim - 2
    if nd not in (1, 2):
        _fail(f"MaxUnpool over {nd} spatial axes (1 and 2 are supported)")
    k = tuple(at["kernel_shape"])
    s = tuple(at.get("strides") or [1] * nd)
    p = _pads(at, nd)
    if output_shape is not None:
        out = tuple(_ints(output_shape)[2:])
    else:
        out = tuple((li - 1) * si + ki - a - b for li, si, ki, a, b in
                    zip(x.shape[2:], s, k, p[:nd], p[nd:]))
    if p[:nd] != p[nd:] and output_shape is None:
        _fail("MaxUnpool with asymmetric pads and no output_shape")
    plane = math.prod(out)
    fn = F.max_unpool1d if nd == 1 else F.max_unpool2d
    return fn(x, ops.remainder(idx, plane), k, s, tuple(p[:nd]), out)


def _lp_pool(m, at, x):
    """(Σ |x|ᵖ)^(1/p) over each window: an average pool of |x|ᵖ times the window size."""
    nd = x.ndim - 2
    k = tuple(at["kernel_shape"])
    p = float(at.get("p", 2))
    pads = _pads(at, nd, x, k)
    x, pad = _sym(ops.abs(x) ** p, pads, nd)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    a = fn(x, k, tuple(at.get("strides") or [1] * nd), tuple(pad), bool(at.get("ceil_mode", 0)),
           True)
    return (a * float(math.prod(k))) ** (1.0 / p)


def _arg(fn):
    """ArgMax/ArgMin: the first extremum, or the last with ``select_last_index``."""
    def op(m, at, x):
        ax = at.get("axis", 0) % max(x.ndim, 1)
        keep = bool(at.get("keepdims", 1))
        if not at.get("select_last_index", 0):
            return fn(x, axis=ax, keepdims=keep)
        return (x.shape[ax] - 1) - fn(ops.flip(x, ax), axis=ax, keepdims=keep)
    return op


def _gather_elements(m, at, x, idx):
    return ops.take_along_axis(x, idx, at.get("axis", 0) % x.ndim)


def _global_max(m, at, x):
    return ops.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


def _conv_transpose(m, at, x, w, b=None):
    nd = x.ndim - 2
    if nd not in (1, 2, 3):
        _fail(f"ConvTranspose over {nd} spatial axes (1 to 3 are supported)")
    if at.get("output_shape"):
        _fail("ConvTranspose with output_shape (give pads and output_padding)")
    p = _pads(at, nd)
    s = tuple(at.get("strides") or [1] * nd)
    d = tuple(at.get("dilations") or [1] * nd)
    op_ = list(at.get("output_padding") or [0] * nd)
    lo, hi = p[:nd], p[nd:]
    common = [min(a, c) for a, c in zip(lo, hi)]
    # the larger end pad crops more: as output_padding it may not fit, so crop afterwards
    y = CF._conv_transpose(x, w, b, s, tuple(common), tuple(op_), at.get("group", 1), d, nd,
                           "ConvTranspose")
    if lo != hi:
        y = y[(slice(None), slice(None)) + tuple(
            slice(a - c, y.shape[2 + i] - (e - c)) for i, (a, e, c) in enumerate(zip(lo, hi,
                                                                                   common)))]
    return y


def _col2im(m, at, x, image_shape, block_shape):
    p = list(at.get("pads") or [0, 0, 0, 0])
    if p[:2] != p[2:]:
        _fail("Col2Im with asymmetric pads")
    return F.fold(x, tuple(_ints(image_shape)), tuple(_ints(block_shape)),
                  tuple(at.get("dilations") or [1, 1]), tuple(p[:2]),
                  tuple(at.get("strides") or [1, 1]))


def _global_avg(m, at, x):
    return ops.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)


def _batch_norm(m, at, x, scale, bias, mean, var):
    if at.get("training_mode", 0):
        _fail("BatchNormalization with training_mode=1 (batch statistics; export the model "
              "in eval mode)")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, at.get("epsilon", 1e-5))


def _layer_norm(m, at, x, scale, bias=None):
    ax = at.get("axis", -1) % x.ndim
    eps = at.get("epsilon", 1e-5)
    ns = tuple(x.shape[ax:])
    if tuple(scale.shape) == ns and (bias is None or tuple(bias.shape) == ns):
        return F.layer_norm(x, ns, scale, bias, eps)  # nodegrad's own op: a round trip is exact
    axes = tuple(range(ax, x.ndim))
    mean = ops.mean(x, axis=axes, keepdims=True)
    var = ops.var(x, axis=axes, keepdims=True)
    y = (x - mean) / ops.sqrt(var + eps) * scale
    return y if bias is None else y + bias


def _dropout(m, at, x, *rest):
    return x


def _where(m, at, c, x, y):
    return ops.where(c, x, y)


def _clip(m, at, x, lo=None, hi=None):
    lo = at.get("min", lo) if lo is None else lo
    hi = at.get("max", hi) if hi is None else hi
    return ops.clip(x, lo, hi)


def _gelu(m, at, x):
    return ops.gelu(x, approximate=at.get("approximate", "none"))


def _elu(m, at, x):
    return F.elu(x, at.get("alpha", 1.0))


def _leaky(m, at, x):
    return ops.leaky_relu(x, at.get("alpha", 0.01))


def _prelu(m, at, x, slope):
    return ops.where(x > 0, x, x * slope)


def _pow(m, at, x, y):
    return ops.power(x, ops.astype(y, x.dtype) if y.dtype != x.dtype else y)


def _split(m, at, x, split=None):
    ax = at.get("axis", 0) % x.ndim
    sizes = _ints(split) if split is not None else list(at.get("split") or [])
    if not sizes:
        n = at.get("num_outputs") or at["_n_out"]
        sizes = [-(-x.shape[ax] // n)] * n
        sizes[-1] = x.shape[ax] - sum(sizes[:-1])
    cuts = list(np.cumsum(sizes)[:-1])
    return tuple(ops.split(x, [int(c) for c in cuts], ax))


def _einsum(m, at, *xs):
    return ops.einsum(at["equation"], *xs)


def _pad(m, at, x, pads=None, value=None, axes=None):
    mode = {"constant": "constant", "reflect": "reflect", "edge": "edge",
            "wrap": "wrap"}.get(at.get("mode", "constant"))
    if mode is None:
        _fail(f"Pad mode {at['mode']!r}")
    if pads is None:  # before opset 11: attributes
        p = [int(v) for v in at.get("pads", [])]
        value = _const(np.float64(at.get("value", 0.0)))
    else:
        p = _ints(pads)
    ax = _ints(axes) if axes is not None else list(range(x.ndim))
    n = len(ax)
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(ax):
        width[a % x.ndim] = (p[i], p[i + n])
    if any(lo < 0 or hi < 0 for lo, hi in width):  # negative pads crop
        x = x[tuple(slice(-min(lo, 0), x.shape[i] + min(hi, 0)) for i, (lo, hi) in
                    enumerate(width))]
        width = [(max(lo, 0), max(hi, 0)) for lo, hi in width]
    if mode != "constant":
        return ops.pad(x, tuple(width), mode=mode)
    v = 0.0 if value is None else float(value.item())
    return ops.pad(x, tuple(width), constant_values=v)


def _ce_loss(nll: bool):
    """SoftmaxCrossEntropyLoss / NegativeLogLikelihoodLoss as PyTorch's cross_entropy and
    nll_loss (class-index targets, optional class weights, ignore_index)."""
    def op(m, at, x, t, w=None):
        kw = dict(weight=w, reduction=at.get("reduction", "mean"))
        if "ignore_index" in at:
            kw["ignore_index"] = int(at["ignore_index"])
        if nll:
            return F.nll_loss(x, t, **kw)
        loss = F.cross_entropy(x, t, **kw)
        return (loss, ops.log_softmax(x, axis=1)) if at["_n_out"] > 1 else loss
    return op


def _selu(m, at, x):
    a, g = at.get("alpha"), at.get("gamma")
    if (a is None or abs(a - 1.6732632) < 1e-6) and (g is None or abs(g - 1.0507010) < 1e-6):
        return ops.selu(x)
    return F.elu(x, a if a is not None else 1.6732632) * (g if g is not None else 1.0507010)


def _hard_sigmoid(m, at, x):
    a, b = at.get("alpha", 0.2), at.get("beta", 0.5)
    if abs(a - 1.0 / 6.0) < 1e-7 and b == 0.5:  # PyTorch's (with nodegrad's rounding)
        return ops.hardsigmoid(x)
    return ops.hardtanh(x * a + b, 0.0, 1.0)


def _shrink(m, at, x):
    bias, lambd = at.get("bias", 0.0), at.get("lambd", 0.5)
    if bias == lambd:
        return ops.softshrink(x, lambd)
    if bias == 0:
        return ops.hardshrink(x, lambd)
    return ops.where(x > lambd, x - bias, ops.where(x < -lambd, x + bias, 0.0))


def _lrn(m, at, x):
    """ONNX's window [c − ⌊(n−1)/2⌋, c + ⌈(n−1)/2⌉] (PyTorch's for odd n), as nodegrad's
    local_response_norm computes it."""
    n = at["size"]
    alpha, beta, k = at.get("alpha", 1e-4), at.get("beta", 0.75), at.get("bias", 1.0)
    if n % 2:
        return F.local_response_norm(x, n, alpha, beta, k)
    sq = ops.pad(x * x, ((0, 0), ((n - 1) // 2, n // 2)) + ((0, 0),) * (x.ndim - 2))
    div = ops.sum(ops.sliding_window_view(sq, n, axis=1), axis=-1) * (alpha / n) + k
    return x / div ** beta


def _instance_norm(m, at, x, scale, bias):
    return F.instance_norm(x, None, None, scale, bias, True, 0.1, at.get("epsilon", 1e-5))


def _depth_to_space(m, at, x):
    b = at["blocksize"]
    if at.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, b)
    n, c, h, w = x.shape
    y = ops.reshape(x, (n, b, b, c // (b * b), h, w))
    return ops.reshape(ops.transpose(y, (0, 3, 4, 1, 5, 2)), (n, c // (b * b), h * b, w * b))


def _space_to_depth(m, at, x):
    b = at["blocksize"]
    n, c, h, w = x.shape
    y = ops.reshape(x, (n, c, h // b, b, w // b, b))
    return ops.reshape(ops.transpose(y, (0, 3, 5, 1, 2, 4)), (n, c * b * b, h // b, w // b))


def _resize(m, at, x, roi=None, scales=None, sizes=None):
    """The Resize modes that are PyTorch's interpolate: nearest (asymmetric, floor), linear and
    cubic (A = −0.75) with half-pixel or align-corners coordinates."""
    nd = x.ndim - 2
    mode = at.get("mode", "nearest")
    ct = at.get("coordinate_transformation_mode", "half_pixel")
    if at.get("antialias", 0) or at.get("exclude_outside", 0) or at.get("axes"):
        _fail("Resize with antialias, exclude_outside or axes")
    sc = _scales(values_of(scales)) if scales is not None and scales.numel() else None
    sz = _ints(sizes) if sizes is not None and sizes.numel() else None
    if (sc or [1.0, 1.0])[:2] != [1.0, 1.0] or (sz is not None and sz[:2] != list(x.shape[:2])):
        _fail("Resize of the batch or channel axis")
    if mode == "nearest":
        nm = at.get("nearest_mode", "round_prefer_floor")
        if ct == "asymmetric" and nm == "floor":
            kind, align = "nearest", None
        elif ct in ("half_pixel", "pytorch_half_pixel") and nm == "round_prefer_ceil":
            kind, align = "nearest-exact", None
        else:
            _fail(f"Resize nearest with coordinate_transformation_mode={ct!r}, "
                  f"nearest_mode={nm!r}")
    elif mode in ("linear", "cubic"):
        if ct not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            _fail(f"Resize {mode} with coordinate_transformation_mode={ct!r}")
        if mode == "cubic" and (nd != 2 or abs(at.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6):
            _fail("Resize cubic other than 2-D with cubic_coeff_a=-0.75")
        kind = "bicubic" if mode == "cubic" else ("linear", "bilinear", "trilinear")[nd - 1]
        align = ct == "align_corners"
    else:
        _fail(f"Resize mode {mode!r}")
    if sz is not None:
        return CF.interpolate(x, size=tuple(sz[2:]), mode=kind, align_corners=align)
    return CF.interpolate(x, scale_factor=tuple(sc[2:]), mode=kind, align_corners=align)


def _scales(arr) -> list[float]:
    """Resize's scales as the exporter's Python floats: ONNX stores them as float32, and the
    source positions PyTorch maps from 1.7 or 2/3 differ from those from float32(1.7) =
    1.70000005 or float32(2/3) (a pixel moves), so each is read back as the simplest fraction
    (denominator up to 10⁴) that rounds to it, else the shortest decimal that does."""
    arr = np.asarray(arr).reshape(-1)
    if arr.dtype != np.float32:
        return [float(v) for v in arr]
    out = []
    for v in arr:
        frac = float(Fraction(float(v)).limit_denominator(10_000))
        out.append(frac if np.float32(frac) == v else float(str(v)))
    return out


def values_of(t: Tensor):
    return B.backend_of(t._data).to_host(t._data)


def _norm(order):
    def op(m, at, x, axes=None):
        ax = _axes(m, at, (x, axes), 1)
        if not ax:
            if at.get("noop_with_empty_axes", 0):
                return x
            ax = list(range(x.ndim))
        return ops.vector_norm(x, order, tuple(a % x.ndim for a in ax),
                               bool(at.get("keepdims", 1)))
    return op


# ONNX gate order -> PyTorch's: GRU (z, r, h) -> (r, z, n); LSTM (i, o, f, c) -> (i, f, g, o)
_TORCH_ORDER = {"GRU": (1, 0, 2), "LSTM": (0, 2, 3, 1), "RNN": (0,)}


def _reorder(w: Tensor, h: int, order) -> Tensor:
    if list(order) == list(range(len(order))):
        return w
    return ops.concatenate([w[g * h:(g + 1) * h] for g in order], axis=0)


def _one_direction(x, h0, c0, w, mode, reverse: bool, lens):
    """One direction of a recurrent layer: (T, N, H) outputs, h_n and c_n. With ``lens`` each
    sequence runs over its first lens[b] steps (backwards from its own end when ``reverse``),
    its state then held and its outputs zero, as ONNX's sequence_lens."""
    T, n = x.shape[:2]
    if lens is None:
        xs = ops.flip(x, 0) if reverse else x
        y, h, c = recurrent_layer(xs, h0[None], None if c0 is None else c0[None], [w], mode)
        return (ops.flip(y, 0) if reverse else y), h[0], None if c is None else c[0]
    t = np.arange(T)[:, None]
    valid = t < lens[None, :]                                              # (T, N)
    order = np.where(valid, lens[None, :] - 1 - t, t) if reverse else np.broadcast_to(t, (T, n))
    cols = np.broadcast_to(np.arange(n)[None, :], (T, n))
    xs = x[(order, cols)] if reverse else x
    h, c, outs = h0[None], None if c0 is None else c0[None], []
    for k in range(T):
        yk, hk, ck = recurrent_layer(xs[k:k + 1], h, c, [w], mode)
        keep = _const(valid[k].reshape(1, n, 1))
        h = ops.where(keep, hk, h)
        c = None if c is None else ops.where(keep, ck, c)
        outs.append(ops.where(keep[0], yk, 0.0))
    y = ops.concatenate(outs, 0)
    if reverse:
        y = y[(order, cols)]
    return y, h[0], None if c is None else c[0]


def _recurrent(kind):
    def op(m, at, x, W, R, Bias=None, seq_lens=None, h0=None, c0=None, P=None):
        if P is not None:
            _fail("LSTM peepholes")
        if at.get("clip") is not None:
            _fail("cell clipping")
        if kind == "GRU" and not at.get("linear_before_reset", 0):
            _fail("GRU with linear_before_reset=0 (PyTorch's GRU has 1)")
        if kind == "LSTM" and at.get("input_forget", 0):
            _fail("LSTM with input_forget=1")
        acts = at.get("activations")
        mode = kind
        if kind == "RNN":
            a = (acts or ["Tanh"])[0]
            if a not in ("Tanh", "Relu") or (acts and len(set(acts)) > 1):
                _fail(f"RNN activations {acts}")
            mode = "RNN_RELU" if a == "Relu" else "RNN_TANH"
        elif acts:
            want = {"GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[kind]
            if [a for i, a in enumerate(acts)] != want * (len(acts) // len(want)):
                _fail(f"{kind} activations {acts}")
        direction = at.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            _fail(f"direction={direction!r}")
        if at.get("layout", 0):
            x = ops.swapaxes(x, 0, 1)
            h0 = None if h0 is None else ops.swapaxes(h0, 0, 1)
            c0 = None if c0 is None else ops.swapaxes(c0, 0, 1)
        H = at["hidden_size"]
        D = W.shape[0]
        order = _TORCH_ORDER[kind]
        G = len(order)
        weights = []
        for d in range(D):
            b_ih = b_hh = None
            if Bias is not None:
                b_ih = _reorder(Bias[d][:G * H], H, order)
                b_hh = _reorder(Bias[d][G * H:], H, order)
            weights.append((_reorder(W[d], H, order), _reorder(R[d], H, order), b_ih, b_hh))
        n = x.shape[1]
        if h0 is None:
            h0 = Tensor._of(x.backend.xp.zeros((D, n, H), dtype=x.dtype))
        if kind == "LSTM" and c0 is None:
            c0 = Tensor._of(x.backend.xp.zeros((D, n, H), dtype=x.dtype))
        lens = None
        if seq_lens is not None:
            lens = np.asarray(values_of(seq_lens)).astype(np.int64).reshape(-1)
            if lens.shape != (n,) or lens.min(initial=1) < 1 or lens.max(initial=0) > x.shape[0]:
                _fail(f"sequence_lens {lens.tolist()} for {n} sequences of length {x.shape[0]}")
            if (lens == x.shape[0]).all():
                lens = None
        if lens is None and direction != "reverse":
            y, h, c = recurrent_layer(x, h0, c0 if kind == "LSTM" else None, weights, mode)
            y = ops.reshape(y, (y.shape[0], n, D, H))
        else:  # each direction on its own: the reverse one and variable lengths
            rev = [direction == "reverse" or d == 1 for d in range(D)]
            runs = [_one_direction(x, h0[d], None if c0 is None else c0[d], weights[d], mode,
                                   rev[d], lens) for d in range(D)]
            y = ops.stack([r[0] for r in runs], axis=2)
            h = ops.stack([r[1] for r in runs])
            c = ops.stack([r[2] for r in runs]) if kind == "LSTM" else None
        y = ops.transpose(y, (0, 2, 1, 3))
        if at.get("layout", 0):
            y = ops.transpose(y, (2, 0, 1, 3))
            h = ops.swapaxes(h, 0, 1)
            c = None if c is None else ops.swapaxes(c, 0, 1)
        return (y, h, c) if kind == "LSTM" else (y, h)
    return op


OPS = {
    "Add": _bin(ops.add), "Sub": _bin(ops.subtract), "Mul": _bin(ops.multiply), "Div": _div,
    "Pow": _pow, "Mod": _mod, "MatMul": _bin(ops.matmul), "Gemm": _gemm,
    "Max": _variadic(ops.maximum), "Min": _variadic(ops.minimum), "Sum": _variadic(ops.add),
    "Neg": _un(ops.negative), "Exp": _un(ops.exp), "Log": _un(ops.log), "Sqrt": _un(ops.sqrt),
    "Abs": _un(ops.abs), "Sin": _un(ops.sin), "Cos": _un(ops.cos), "Tanh": _un(ops.tanh),
    "Erf": _un(ops.erf), "Sigmoid": _un(ops.sigmoid), "Relu": _un(ops.relu),
    "Sign": _un(ops.sign), "Floor": _un(ops.floor), "Ceil": _un(ops.ceil),
    "Reciprocal": _un(lambda x: 1.0 / x), "Softplus": _un(ops.softplus),
    "Not": _un(ops.logical_not), "IsNaN": _un(ops.isnan), "Identity": _un(lambda x: x),
    "Equal": _bin(ops.equal), "Less": _bin(ops.less), "Greater": _bin(ops.greater),
    "LessOrEqual": _bin(ops.less_equal), "GreaterOrEqual": _bin(ops.greater_equal),
    "And": _bin(ops.logical_and), "Or": _bin(ops.logical_or), "Xor": _bin(ops.logical_xor),
    "Where": _where, "Clip": _clip, "Gelu": _gelu, "Elu": _elu, "LeakyRelu": _leaky,
    "PRelu": _prelu, "Softmax": _softmax(ops.softmax), "LogSoftmax": _softmax(ops.log_softmax),
    "ReduceSum": _reduce(ops.sum), "ReduceMean": _reduce(ops.mean),
    "ReduceMax": _reduce(ops.max), "ReduceMin": _reduce(ops.min),
    "ReduceProd": _reduce(ops.prod),
    "ReduceLogSumExp": _reduce(ops.logsumexp),
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Concat": _concat, "Shape": _shape, "Gather": _gather,
    "Slice": _slice, "Constant": _constant, "ConstantOfShape": _constant_of_shape,
    "Expand": _expand, "Cast": _cast, "Split": _split, "Einsum": _einsum, "Pad": _pad,
    "Conv": _conv, "MaxPool": _pool("Max"), "AveragePool": _pool("Average"),
    "GlobalAveragePool": _global_avg, "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm, "Dropout": _dropout,
    "GRU": _recurrent("GRU"), "LSTM": _recurrent("LSTM"), "RNN": _recurrent("RNN"),
    "Tan": _un(ops.tan), "ConvTranspose": _conv_transpose, "GlobalMaxPool": _global_max,
    "LpPool": _lp_pool, "Col2Im": _col2im, "MaxUnpool": _max_unpool,
    "Range": _range, "Tile": _tile, "Trilu": _trilu,
    "Selu": _selu, "Celu": lambda m, at, x: ops.celu(x, at.get("alpha", 1.0)),
    "HardSigmoid": _hard_sigmoid, "HardSwish": _un(ops.hardswish), "Mish": _un(ops.mish),
    "Softsign": _un(ops.softsign), "Shrink": _shrink,
    "ThresholdedRelu": lambda m, at, x: ops.threshold(x, at.get("alpha", 1.0), 0.0),
    "LRN": _lrn, "InstanceNormalization": _instance_norm, "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth, "Resize": _resize, "ReduceL2": _norm(2),
    "ReduceL1": _norm(1), "SoftmaxCrossEntropyLoss": _ce_loss(False),
    "NegativeLogLikelihoodLoss": _ce_loss(True),
    "ArgMax": _arg(ops.argmax), "ArgMin": _arg(ops.argmin), "Round": _un(ops.round),
    "GatherElements": _gather_elements, "BitwiseAnd": _bin(ops.bitwise_and),
    "BitwiseOr": _bin(ops.bitwise_or), "BitwiseXor": _bin(ops.bitwise_xor),
    "BitwiseNot": _un(ops.bitwise_not),
}

__all__ = ["OnnxModule", "load"]
