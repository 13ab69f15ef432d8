"""Graph passes over a captured program, and its buffer plan.

``optimise`` runs, in order: constant folding (an op whose inputs are all constants is evaluated
once, now), removal of zero-filled buffers (``zeros + g`` becomes ``g``), common-subexpression
elimination (the same op with the same parameters on the same slots is computed once) and
dead-code elimination. ``plan_memory`` then gives the results of ops that can write into an
``out=`` array a buffer the program keeps between calls, reusing one once every reader of the
previous result (and of its views) has run, so a replayed step allocates little.
``lower_gradients`` finally hands an optimiser's step the gradient arrays the program made
(no round trip through ``.grad``, no ``zero_grad`` effect where nothing reads them).

Safety comes first. A slot is *escaped* when its array may outlive the call or be changed
behind the program's back: an output, an input, a constant, a loaded tensor, an effect's result,
and whatever an effect other than a pure read receives. Ops other than the known fresh ones may
return views of their inputs, so slots are grouped into alias classes; a class with an escaped
or mutated member is never folded, merged or given a shared buffer.
"""

from __future__ import annotations

from .. import _backend as B
from ..ops.conv import conv_shared_forms
from ..ops.nn import ce_shared_forms
from ..tensor import _drop_grad
from .program import Instr, eliminate_dead_code

# ops whose result is a new array (never a view of an input), with their out= form: the ufunc
# name and the positions of the operands it takes (the others must be absent)
_UFUNC = {
    "add": "add", "subtract": "subtract", "multiply": "multiply", "divide": "true_divide",
    "negative": "negative", "exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p",
    "sqrt": "sqrt", "square": "square", "abs": "absolute", "sin": "sin", "cos": "cos",
    "tan": "tan", "tanh": "tanh", "maximum": "maximum", "minimum": "minimum", "power": "power",
    "equal": "equal", "not_equal": "not_equal", "less": "less", "less_equal": "less_equal",
    "greater": "greater", "greater_equal": "greater_equal", "matmul": "matmul",
    "relu": "maximum",  # relu(x) is maximum(x, 0)
}
_ELEMENTWISE_OUT = set(_UFUNC) - {"matmul"}  # out= may be the memory of an input
FRESH = set(_UFUNC) | {"copy", "relu", "sigmoid", "sum", "mean", "where", "relu_grad", "exp2",
                       "log2", "log10", "reciprocal", "rsqrt", "log_softmax", "softmax",
                       "logsumexp", "silu", "silu_grad", "mish", "mish_grad", "glu", "hardswish",
                       # a new array or a view of one the op made, never of an input
                       "linear", "conv", "conv_input_grad", "conv_weight_grad", "matmul_t",
                       "join_scatters"}


# --- alias classes --------------------------------------------------------------------------
class _Classes:
    """Union-find over slots: an op that is not known to return a new array joins its result
    with its array inputs (it may be a view of them)."""

    def __init__(self, prog, instrs: list) -> None:
        self.parent: dict[int, int] = {}
        meta = prog.meta
        for i in instrs:
            if i.kind == "op" and i.name not in FRESH and i.out is not None:
                for a in i.ins:
                    if a in meta and a not in prog.consts or _is_array_const(prog, a):
                        self.union(i.out, a)
        self.escaped: set[int] = set()  # roots of classes that may outlive the call
        self.written: set[int] = set()  # roots of classes something may change in place
        for s in list(prog.in_slots) + list(prog.out_slots) + list(prog.consts):
            self.escaped.add(self.find(s))
        for i in instrs:
            if i.kind == "load" or (i.kind == "effect" and i.out is not None):
                self.escaped.add(self.find(i.out))
            if i.kind == "effect" and i.access != "read":
                hit = i.ins[:1] if i.access == "mutate" else i.ins
                for a in hit:
                    self.written.add(self.find(a))
                if i.access != "mutate":
                    for a in i.ins:
                        self.escaped.add(self.find(a))

    def find(self, s: int) -> int:
        p = self.parent.get(s, s)
        if p == s:
            return s
        r = self.find(p)
        self.parent[s] = r
        return r

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb

    def is_written(self, s: int) -> bool:
        return self.find(s) in self.written

    def is_escaped(self, s: int) -> bool:
        r = self.find(s)
        return r in self.escaped or r in self.written


def _is_array_const(prog, a: int) -> bool:
    return a in prog.consts and hasattr(prog.consts[a], "shape")


# --- tensors made inside the step ------------------------------------------------------------
def constant_loads(rec, start: int = 0, held: dict[int, int] | None = None) -> None:
    """Turn the loads of tensors that only the program still references (made inside the step:
    ``zeros``, a VJP's ``Tensor(xp.zeros(...))``) into constants, so the passes below see them;
    one changed in place starts each call from a fresh copy of its value at the trace. Only
    the instructions from ``start`` on (those recorded since an earlier call). ``held``: how
    many references to a tensor (by id) the traced call's own graph holds, kept alive for that
    call's backward; they do not make the tensor reachable from outside."""
    import sys

    for k, i in enumerate(rec.instrs):
        if k < start or i.kind != "load" or i.out not in rec.loaded:
            continue
        t = rec.loaded[i.out]()
        if t is None:
            continue
        # held only by the load's closure (and this frame): nothing outside can change it
        if sys.getrefcount(t) > 3 + (held.get(id(t), 0) if held else 0) or (
                tuple(t._data.shape), t._data.dtype) != rec.meta.get(i.out):
            continue
        if i.out in rec.before:
            src = rec.const(rec.before[i.out])
            rec.instrs[k] = Instr("op", "copy", _copy, (src,), i.out)
        else:
            rec.instrs[k] = None
            rec.consts[i.out] = t._data
    rec.instrs = [i for i in rec.instrs if i is not None]


def _copy(v):
    return v.copy()


_copy.converts = False
_copy.fast = _copy


# --- the rewriting passes -------------------------------------------------------------------
def optimise(prog, instrs: list) -> list:
    """Fold constants, drop zero buffers, merge common subexpressions, drop dead code."""
    classes = _Classes(prog, instrs)
    outs = set(prog.out_slots)
    rename: dict[int, int] = {}
    seen: dict = {}  # CSE table: key -> slot; cleared at every effect that may write
    stats = prog.stats
    fresh: set[int] = set()  # results of ops that make a new array, not escaping
    kept = []
    for i in instrs:
        ins = tuple(rename.get(a, a) for a in i.ins)
        if ins != i.ins:
            i = Instr(i.kind, i.name, i.fn, ins, i.out, i.params, i.access)
        if i.kind == "effect":
            if i.access != "read":
                seen.clear()
            kept.append(i)
            continue
        if i.kind != "op" or i.out is None:
            kept.append(i)
            continue
        safe = i.out not in outs and not classes.is_written(i.out)
        if safe and all(a in prog.consts for a in ins) and not classes.is_escaped(i.out):
            try:
                prog.consts[i.out] = i.fn(*(prog.consts[a] for a in ins))
                stats["folded"] = stats.get("folded", 0) + 1
                continue
            except Exception:  # leave it to the replay, which reports errors as eager does
                pass
        if not classes.is_written(i.out):
            same = _zero_addend(prog, i, ins, classes)
            # an output may become g only when g is a new array of this call, not returned
            if same is not None and (safe or (same in fresh and same not in outs)):
                rename[i.out] = same
                if i.out in outs:
                    outs.add(same)
                stats["zeros_dropped"] = stats.get("zeros_dropped", 0) + 1
                continue
            key = _cse_key(prog, i, ins)
            if key is not None:
                prev = seen.get(key)
                if prev is not None:
                    rename[i.out] = prev
                    stats["cse"] = stats.get("cse", 0) + 1
                    continue
                seen[key] = i.out
        if i.name in FRESH and not classes.is_escaped(i.out):
            fresh.add(i.out)
        kept.append(i)
    prog.out_slots = [rename.get(s, s) for s in prog.out_slots]
    return eliminate_dead_code(kept, prog.out_slots)


def _zero_addend(prog, i: Instr, ins: tuple, classes: _Classes) -> int | None:
    """The slot ``g`` when ``i`` is ``g`` plus or minus zeros of g's shape and dtype (a
    zero-filled buffer that is only added to) and gives ``g``'s bits: ``g - 0.0`` and ``g +
    (-0.0)`` do, ``g + 0.0`` does not (``-0.0 + 0.0`` is ``+0.0``) unless g holds no floats."""
    if i.name not in ("add", "subtract") or len(ins) != 2:
        return None
    for z, g in ((ins[0], ins[1]), (ins[1], ins[0])):
        if i.name == "subtract" and z is ins[0]:
            continue
        if z not in prog.consts or g in prog.consts or g not in prog.meta:
            continue
        v = prog.consts[z]
        if isinstance(v, bool) or not (isinstance(v, int | float) or hasattr(v, "shape")):
            continue
        xp = B.backend_of(v).xp if B.is_array(v) else B.np
        a = xp.asarray(v)
        if a.size == 0 or a.any():
            continue
        kind = prog.meta[g][1].kind
        if kind in "fc":  # the zeros' sign must leave g's -0.0 and +0.0 as they are
            negative = i.name == "add"
            parts = (a.real, a.imag) if kind == "c" else (a.real,)
            if not all(bool(xp.all(xp.signbit(p)) if p.dtype.kind == "f" else False) ==
                       negative for p in parts):
                continue
        if prog.meta[g] == prog.meta[i.out] and not classes.is_written(g):
            return g
    return None


def _cse_key(prog, i: Instr, ins: tuple):
    """A hashable key of (op, parameters, inputs), or None when the parameters do not hash."""
    try:
        key = (i.name, _freeze(i.params), tuple(_const_key(prog, a) for a in ins))
        hash(key)
    except TypeError:
        return None
    return key


def _const_key(prog, a: int):
    if a not in prog.consts:
        return ("slot", a)
    v = prog.consts[a]
    if hasattr(v, "shape"):
        return ("array", id(v))
    return ("value", type(v), repr(v))


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return (type(v).__name__,) + tuple(_freeze(x) for x in v)
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return ("array", id(v))
    return v


# --- buffers --------------------------------------------------------------------------------
class Plan:
    """Which result slots write into which kept buffer (``buf``), and the buffers' specs."""

    def __init__(self) -> None:
        self.buf: dict[int, int] = {}
        self.buffers: list[tuple] = []
        self.inplace = 0
        self.owned: set[int] = set()  # results a gradient accumulation stores without a copy

    def counts(self) -> dict:
        return {"buffers": len(self.buffers), "buffered_results": len(self.buf),
                "reused": len(self.buf) - len(self.buffers), "in_place": self.inplace,
                "owned_grads": len(self.owned)}


def _writes_out(i: Instr) -> bool:
    return (i.kind == "op" and (i.name in _UFUNC or i.name == "matmul_t")) or i.kind == "fused"


def plan_memory(prog, instrs: list) -> Plan:
    """Give every fresh, non-escaping result of an ``out=``-capable op or fused kernel a kept
    buffer, reusing a buffer of the same shape and dtype once the last reader of that result and
    of its views has run. Results that a gradient accumulation takes over (:func:`own_gradients`)
    and results whose traced array was not C-ordered (NumPy lays a result out as its inputs are;
    writing a transposed operand into a C-ordered buffer is several times slower) get none."""
    classes = _Classes(prog, instrs)
    last: dict[int, int] = {}  # alias-class root -> index of its last reader
    for k, i in enumerate(instrs):
        for a in i.ins:
            last[classes.find(a)] = k
    plan = Plan()
    plan.owned = _owned_gradients(prog, instrs, classes, last)
    values = getattr(prog, "values", {})
    free: dict[tuple, list[int]] = {}
    release: dict[int, list[tuple]] = {}  # instruction index -> buffers free after it
    for k, i in enumerate(instrs):
        if _writes_out(i):
            results = i.outs if i.kind == "fused" else (i.out,)
            for s in results:
                if classes.is_escaped(s) or s not in prog.meta or s in plan.owned:
                    continue
                v = values.get(s)
                if i.kind == "op" and v is not None and not _c_ordered(v):
                    continue
                if i.kind == "fused" and s in i.group.layouts:  # laid out as NumPy did
                    continue
                spec = prog.meta[s]
                b = None
                if i.kind == "fused" or i.name in _ELEMENTWISE_OUT:
                    b = _in_place(prog, classes, last, k, spec, plan, i, release)
                if b is not None:
                    plan.inplace += 1
                elif free.get(spec):
                    b = free[spec].pop()
                else:
                    b = len(plan.buffers)
                    plan.buffers.append(spec)
                plan.buf[s] = b
                release.setdefault(max(last.get(classes.find(s), k), k), []).append((spec, b))
        for spec, b in release.pop(k, ()):
            free.setdefault(spec, []).append(b)
    return plan


def _slab(index, shape) -> tuple[int, int, int] | None:
    """``(axis, start, stop)`` when ``x[index]`` of an array of ``shape`` is a slab of whole
    rows along one axis (full slices elsewhere, a step of 1): a piece of a ``split``."""
    index = index if type(index) is tuple else (index,)
    if any(type(i) is not slice and i is not Ellipsis for i in index):
        return None  # an int, an index array, None
    dots = [k for k, i in enumerate(index) if i is Ellipsis]
    if len(dots) == 1:
        k = dots[0]
        index = index[:k] + (slice(None),) * (len(shape) - len(index) + 1) + index[k + 1:]
    index += (slice(None),) * (len(shape) - len(index))
    if len(index) != len(shape):
        return None
    found = None
    for ax, (i, n) in enumerate(zip(index, shape)):
        if type(i) is not slice or i.step not in (None, 1):
            return None
        start, stop, _ = i.indices(n)
        if (start, stop) == (0, n):
            continue
        if found is not None or start >= stop:
            return None
        found = (ax, start, stop)
    return found


def join_scatters(prog, instrs: list) -> list:
    """A sum of ``scatter_add``s into zeros whose pieces tile the array along one axis (the
    gradient of ``split``/``chunk``: attention's q, k, v from one projection) becomes one
    ``join_scatters``: the pieces concatenated, then ``+ 0.0``. The same bits: each element is
    its piece's value plus zeros (``-0.0`` becomes ``0.0``, as ``0.0 + -0.0``), and the sum
    allocates and fills one array instead of one zeroed array per piece and the adds between
    them (J9's attention: ~0.7 against ~0.1 ms a layer)."""
    values = getattr(prog, "values", {})
    if prog.backend is None or prog.backend.xp is not B.np:
        return instrs
    outs = set(prog.out_slots)
    made: dict[int, Instr] = {}
    readers: dict[int, int] = {}
    for i in instrs:
        for a in i.ins:
            readers[a] = readers.get(a, 0) + 1
        if i.out is not None:
            made[i.out] = i

    def one_use(s: int) -> bool:
        return readers.get(s) == 1 and s not in outs

    def pieces(s: int, shape) -> list | None:
        """The scatters an add tree at slot ``s`` sums, each used by the tree alone."""
        i = made.get(s)
        if i is None or i.kind != "op":
            return None
        if i.name == "scatter_add" and len(i.ins) == 1 and isinstance(i.params, dict):
            if i.params.get("shape") != shape:
                return None
            cut = _slab(i.params.get("index"), shape)
            return None if cut is None else [(cut, i)]
        if i.name == "add" and not i.params and len(i.ins) == 2 and all(
                one_use(a) for a in i.ins) and i.ins[0] != i.ins[1]:
            left, right = pieces(i.ins[0], shape), pieces(i.ins[1], shape)
            if left is not None and right is not None:
                return left + right + [(None, i)]
        return None

    replace: dict[int, Instr] = {}
    drop: set[int] = set()
    for i in reversed(instrs):
        if i.kind != "op" or i.name != "add" or id(i) in drop or i.params:
            continue
        out = values.get(i.out)
        if type(out) is not B.np.ndarray or out.dtype.kind != "f":
            continue
        found = pieces(i.out, tuple(out.shape))
        if found is None:
            continue
        cuts = sorted(((c, j) for c, j in found if c is not None), key=lambda t: t[0])
        axis = cuts[0][0][0]
        end = 0
        for (ax, start, stop), j in cuts:
            g = values.get(j.ins[0])
            want = out.shape[:ax] + (stop - start,) + out.shape[ax + 1:]
            if ax != axis or start != end or type(g) is not B.np.ndarray or (
                    g.dtype != out.dtype or g.shape != want):
                break
            end = stop
        else:
            if end != out.shape[axis]:
                continue
            concatenate, add = B.np.concatenate, B.np.add

            def joined(*gs, axis=axis):
                r = concatenate(gs, axis)
                add(r, 0.0, out=r)
                return r

            joined.converts = False
            joined.fast = joined
            replace[id(i)] = Instr("op", "join_scatters", joined,
                                   tuple(j.ins[0] for _, j in cuts), i.out,
                                   params={"axis": axis})
            drop.update(id(j) for _, j in found if j is not i)
    if not replace:
        return instrs
    prog.stats["joined_scatters"] = len(replace)
    return [replace.get(id(i), i) for i in instrs if id(i) not in drop]


def fold_transposes(prog, instrs: list) -> list:
    """A ``transpose`` of a NumPy matrix whose one reader is a ``matmul`` of two matrices taking
    it as its first operand (a linear layer's weight gradient, gᵀ x) becomes part of that
    product: one ``matmul_t(g, x)`` instruction computing ``g.T @ x`` by :func:`matmul`'s rule
    for its shape, decided once (the same call as the two ops', so the same bits), one
    instruction fewer a step."""
    values = getattr(prog, "values", {})
    if prog.backend is None or prog.backend.xp is not B.np:
        return instrs
    readers: dict[int, list] = {}
    for i in instrs:
        for a in i.ins:
            readers.setdefault(a, []).append(i)
    outs = set(prog.out_slots)
    fold: dict[int, Instr] = {}  # id(matmul) -> its replacement
    drop: set[int] = set()
    for i in instrs:
        if not (i.kind == "op" and i.name == "transpose" and len(i.ins) == 1
                and i.params == {"axes": (1, 0)} and i.out not in outs):
            continue
        rs = readers.get(i.out, [])
        if len(rs) != 1:
            continue
        m = rs[0]
        if not (m.kind == "op" and m.name == "matmul" and not m.params and len(m.ins) == 2
                and m.ins[0] == i.out and m.ins[1] != i.out):
            continue
        a, b = values.get(i.ins[0]), values.get(m.ins[1])
        if (type(a) is not B.np.ndarray or type(b) is not B.np.ndarray or a.ndim != 2
                or b.ndim != 2 or a.dtype != b.dtype or a.dtype.kind != "f"
                or values.get(m.out) is None or values[m.out].dtype != a.dtype):
            continue
        mm = B.product_for(a.shape[1], a.shape[0], b.shape[1])

        def matmul_t(g, x, mm=mm):
            return mm(g.T, x)

        matmul_t.converts = False
        matmul_t.fast = matmul_t
        fold[id(m)] = Instr("op", "matmul_t", matmul_t, (i.ins[0], m.ins[1]), m.out, params={})
        drop.add(id(i))
    if not fold:
        return instrs
    prog.stats["folded_transposes"] = len(fold)
    return [fold.get(id(i), i) for i in instrs if id(i) not in drop]


def direct_forms(prog, instrs: list) -> None:
    """Give ops whose forward does more than one array call where one does the same bits a
    direct replay form (``fn.fast``, used once a first replay showed no result conversion):
    ``relu_grad(g, ans)`` of two C-ordered arrays of one shape and float dtype is
    ``multiply(g, ans != 0)``, what its forward computes then, without the forward's checks;
    ``transpose`` is the array's own method; a ``cross_entropy`` and the later
    ``cross_entropy_grad`` of the same logits and targets share the softmax's exp and sums
    (:func:`~nodegrad.ops.nn.ce_shared_forms`); a ``conv`` and the later ``conv_weight_grad``
    of the same input share its columns (:func:`~nodegrad.ops.conv.conv_shared_forms`)."""
    values = getattr(prog, "values", {})
    xp = prog.backend.xp
    multiply, not_equal = xp.multiply, xp.not_equal
    losses: dict = {}  # (logits, targets, params) -> a cross_entropy awaiting its gradient
    convs: dict = {}  # (input, params) -> a conv awaiting its weight gradient
    for i in instrs:
        if i.kind != "op" or not hasattr(i.fn, "fast"):
            continue
        if i.name in ("conv", "conv_weight_grad") and isinstance(i.params, dict):
            if i.name == "conv" and len(i.ins) in (2, 3):
                convs[(i.ins[0], _freeze(i.params))] = i
            elif i.name == "conv_weight_grad" and len(i.ins) == 2 and "shape" in i.params:
                p = {k: v for k, v in i.params.items() if k != "shape"}
                conv = convs.pop((i.ins[0], _freeze(p)), None)
                if conv is not None:
                    conv.fn.fast, i.fn.fast = conv_shared_forms(xp, conv.params, i.params)
            continue
        if i.name in ("cross_entropy", "cross_entropy_grad") and isinstance(i.params, dict):
            if i.name == "cross_entropy" and len(i.ins) == 2:
                losses[(*i.ins, _freeze(i.params))] = i
            elif len(i.ins) == 3:
                loss = losses.pop((i.ins[0], i.ins[2], _freeze(i.params)), None)
                if loss is not None:
                    loss.fn.fast, i.fn.fast = ce_shared_forms(xp, i.params)
            continue
        if i.name in ("linear", "sum", "matmul") and isinstance(i.params, dict) and xp is B.np:
            ins = i.ins
            if i.name == "linear" and len(ins) == 3 and prog.consts.get(ins[2], 0) is None:
                ins = ins[:2]  # no bias (a layer whose add joined a kernel, .fuse)
            form = _product_form(i, [values.get(a) for a in ins])
            if form is not None:
                i.fn.fast = form
            continue
        if i.name == "transpose" and len(i.ins) == 1 and isinstance(i.params, dict) and set(
                i.params) == {"axes"} and isinstance(values.get(i.ins[0]), xp.ndarray):
            axes = i.params["axes"]  # xp.transpose(x, axes) is the method, behind two calls
            i.fn.fast = lambda x, axes=axes: x.transpose(axes)
            continue
        if i.name != "relu_grad" or len(i.ins) != 2:
            continue
        g, ans = (values.get(a) for a in i.ins)
        if g is None or ans is None or any(a in prog.consts for a in i.ins):
            continue
        if (g.shape != ans.shape or g.dtype != ans.dtype or g.dtype.kind != "f"
                or not (_c_ordered(g) and _c_ordered(ans)) or g.ndim == 0):
            continue
        i.fn.fast = lambda g, ans: multiply(g, not_equal(ans, 0))


def _product_form(i: Instr, vals: list):
    """The replay form of a ``matmul`` of two matrices, of a ``linear`` of a matrix (x Wᵀ + b,
    as ``ops.nn``'s forward; ``vals`` without the bias when it has none) or of a ``sum``
    (:func:`~nodegrad._backend.sum_form`), with its product's thread rule and plan decided
    from the traced arrays; None for other operands."""
    if not vals or any(type(v) is not B.np.ndarray for v in vals):
        return None
    if i.name == "sum" and set(i.params) == {"axis", "keepdims"} and len(vals) == 1:
        v = vals[0]
        return B.sum_form(v.shape, v.strides, v.dtype, i.params["axis"], i.params["keepdims"])
    if i.name == "matmul" and not i.params and len(vals) == 2:
        a, b = vals
        if a.ndim == 2 and b.ndim == 2:  # B.matmul's rule for two matrices, decided once
            return B.product_for(a.shape[0], a.shape[1], b.shape[1])
        return None
    if i.name != "linear" or i.params or len(vals) not in (2, 3):
        return None
    x, w = vals[:2]
    if x.ndim != 2 or w.ndim != 2 or (len(vals) == 3 and vals[2].ndim != 1) or (
            x.dtype == B.np.float16):  # float16 is computed in float32 by the forward itself
        return None
    add_bias = B.add_bias  # the forward's in-place bias add
    if B.linear_transposes(x, w):  # B.linear_product's transposed product, F-ordered
        mm = B.product_for(w.shape[0], w.shape[1], x.shape[0])
        if len(vals) == 2:
            return lambda x, w, b, mm=mm: mm(w, x.T).T

        def linear_t(x, w, b):
            return add_bias(mm(w, x.T).T, b)

        return linear_t
    mm = B.product_for(x.shape[0], x.shape[1], w.shape[0])
    if B.linear_copies_weight(x, w):  # B.linear_product's product with a C-ordered copy of Wᵀ
        cc = B.np.ascontiguousarray

        def linear_c(x, w, b):  # (an input laid out otherwise than traced: the view, as eager)
            y = mm(x, cc(w.T)) if x.flags.c_contiguous else mm(x, w.T)
            return y if b is None else add_bias(y, b)

        return linear_c
    if len(vals) == 2:
        return lambda x, w, b, mm=mm: mm(x, w.T)

    def linear(x, w, b):
        return add_bias(mm(x, w.T), b)  # in place into the product, as the forward does

    return linear


def _c_ordered(v) -> bool:
    flags = getattr(v, "flags", None)
    return flags is None or bool(flags.c_contiguous)


def _owned_gradients(prog, instrs: list, classes: _Classes, last: dict) -> set:
    """The slots a gradient accumulation may store as the leaf's ``.grad`` without a copy: a new
    array of this call (a fresh op's or a fused kernel's result) that nothing reads afterwards,
    neither itself nor a view of it, and that does not leave the program otherwise."""
    made: set[int] = set()
    owned: set[int] = set()
    for k, i in enumerate(instrs):
        if i.kind == "op" and i.name in FRESH and i.out is not None:
            made.add(i.out)
        elif i.kind == "fused":
            made.update(i.outs)
        elif (i.kind == "effect" and isinstance(i.params, dict) and "owned" in i.params
              and len(i.ins) == 1):
            s = i.ins[0]
            if s in made and not classes.is_escaped(s) and last.get(classes.find(s)) == k:
                owned.add(s)
    return owned


def own_gradients(prog, instrs: list) -> list:
    """Switch the accumulations of the plan's owned results to their no-copy form."""
    owned = getattr(prog.plan, "owned", ())
    out = []
    for i in instrs:
        if i.kind == "effect" and i.ins and i.ins[0] in owned and isinstance(i.params, dict):
            i = Instr(i.kind, i.name, i.params["owned"], i.ins, i.out, i.params, i.access)
        out.append(i)
    return out


# --- the optimiser's step on the program's gradients -----------------------------------------
# effects of the library that never read or write a parameter's ``.grad``
_GRAD_FREE = {"Generator.keep_mask", "_draw", "_update_running", "_count_batch"}
_START = "start"  # a leaf's .grad as the call found it
_UNKNOWN = "unknown"  # a leaf's .grad after something the pass cannot follow


class Lowered:
    """What :func:`lower_gradients` relies on: ``leaves`` whose ``.grad`` must be None when a
    call starts, and ``groups``, (optimiser, number of parameter groups) pairs that must hold."""

    def __init__(self) -> None:
        self.leaves: dict[int, object] = {}
        self.groups: list[tuple] = []


def lower_gradients(prog, instrs: list) -> tuple[list, Lowered] | None:
    """Replay an optimiser's ``step()`` on the gradient arrays the program makes, not by a
    generic effect that reads them back from ``.grad``; drop the stores into ``.grad`` that a
    later ``zero_grad()`` discards unread, and that ``zero_grad()`` when every gradient it
    clears is then None anyway. Returns the new list and what a call must check first (the
    program falls back to the unlowered list when it does not hold), or None when nothing
    changed.

    Each parameter's ``.grad`` is followed through the list: None (cleared by ``zero_grad``,
    or as the call found it: then part of the check), the value of a slot (an accumulation that
    stores a new array of this call, :func:`own_gradients`), or unknown. A gradient read by an
    op (a ``load``) stops the pass; an effect it does not know makes every gradient unknown."""
    state: dict[int, object] = {}  # id(leaf) -> None, ("slot", s) or _UNKNOWN; absent: _START
    low = Lowered()
    stores: dict[int, int] = {}  # id(leaf) -> index of its pending (droppable) store
    drop: set[int] = set()
    new: dict[int, Instr] = {}
    clobbered = False  # an unknown effect ran: gradients not seen yet are unknown too

    def peek(p):
        return state.get(id(p), _UNKNOWN if clobbered else _START)

    def read(p):
        st = peek(p)
        if st is _START:  # as the call found it: None, checked at the start
            low.leaves[id(p)] = p
            st = state[id(p)] = None
        return st

    for k, i in enumerate(instrs):
        if i.kind == "load" and i.name == "gradient":
            return None
        if i.kind != "effect" or i.access == "mutate" or i.name in _GRAD_FREE:
            continue
        params = i.params if isinstance(i.params, dict) else {}
        leaf = params.get("leaf")
        if leaf is not None:  # backward's leaf.grad += g
            # a post-accumulate hook must see .grad (it runs inside the store, every call)
            if params.get("owned") is i.fn and not _post_hooked(leaf) and read(leaf) is None:
                state[id(leaf)] = ("slot", i.ins[0])
                stores[id(leaf)] = k
            else:
                state[id(leaf)] = _UNKNOWN
                stores.pop(id(leaf), None)
            continue
        desc = _lowering(params)
        if desc is not None and desc[0] == "step":
            if not any(peek(p) is _UNKNOWN for p in desc[1]):
                sts = [read(p) for p in desc[1]]
                slots = list(dict.fromkeys(st[1] for st in sts if st is not None))
                index = [None if st is None else slots.index(st[1]) for st in sts]
                opt = params["args"][0]
                low.groups.append((opt, len(opt.param_groups)))
                new[k] = Instr("effect", i.name, desc[2](index), tuple(slots), i.out,
                               access="read")
                continue
        elif desc is not None and desc[0] == "zero_grad":
            keep = False
            for p in desc[1]:
                st = peek(p)
                if st is _START or st is _UNKNOWN or (st is not None and id(p) not in stores):
                    keep = True
                if id(p) in stores:
                    drop.add(stores.pop(id(p)))  # cleared before anything read it
                state[id(p)] = None
            if not keep:
                drop.add(k)
            continue
        # an effect that may read or change any .grad: the stores so far stay
        stores.clear()
        state = dict.fromkeys(state, _UNKNOWN)
        clobbered = True
    if not new and not drop:
        return None
    out = [new.get(k, i) for k, i in enumerate(instrs) if k not in drop]
    prog.stats["lowered_steps"] = len(new)
    prog.stats["dropped_grad_stores"] = sum(1 for k in drop if instrs[k].params and
                                            "leaf" in instrs[k].params)
    return out, low


def _post_hooked(leaf) -> bool:
    """Whether ``leaf`` has post-accumulate-grad hooks (``register_post_accumulate_grad_hook``)."""
    from ..autodiff import POST_ACCUMULATE

    entry = POST_ACCUMULATE.get(id(leaf))
    return entry is not None and entry[0]() is leaf and bool(entry[1])


def _lowering(params: dict):
    """An effect's lowering as its first argument describes it (``Optimizer._jit_lowering``)
    or, for ``Module.zero_grad()`` and ``p.grad = None``, ("zero_grad", the parameters); else
    None."""
    fn, args, kwargs = params.get("fn"), params.get("args"), params.get("kwargs") or {}
    if fn is None or not args:
        return None
    lower = getattr(args[0], "_jit_lowering", None)
    if lower is not None:
        return lower(fn, args[1:], kwargs)
    if getattr(fn, "__qualname__", "") == "Module.zero_grad" and hasattr(args[0], "parameters"):
        if kwargs.get("set_to_none", args[1] if len(args) > 1 else True):
            return ("zero_grad", list(args[0].parameters()))
    if fn is _drop_grad:  # p.grad = None in the step
        return ("zero_grad", list(args[0]))
    return None


def _in_place(prog, classes, last, k, spec, plan, i: Instr, release) -> int | None:
    """The buffer of an input that ``i`` reads for the last time, of the result's shape and
    dtype, with no view of it among ``i``'s other inputs (an elementwise op may write where it
    reads, element by element). Not for a CPU kernel: LLVM vectorises its loop behind run-time
    checks that its arrays do not overlap, so writing over an input runs it element by element
    (a 100 x 100 relu gradient: 3.6 µs against 1.4)."""
    if i.kind == "fused" and (prog.backend.device_id is None or any(
            m.name not in _POINTWISE for m in i.group.members)):
        return None
    for a in dict.fromkeys(i.ins):
        b = plan.buf.get(a)
        if b is None or prog.meta.get(a) != spec:
            continue
        r = classes.find(a)
        if last.get(r) != k or any(classes.find(x) == r for x in i.ins if x != a):
            continue
        if i.kind == "fused" and any(b == plan.buf.get(o) for o in i.outs):
            continue  # another result of this kernel took it already
        entries = release.get(k, [])
        if (spec, b) in entries:
            entries.remove((spec, b))  # it stays in use, by the result
            return b
    return None


_POINTWISE = set()  # filled by .fuse with the ops its kernels compute element by element


def out_variant(i: Instr, xp, meta: dict | None = None):
    """``f(*inputs, out)``: op ``i`` writing its result into ``out`` (None when it cannot).
    With the program's ``meta`` (slot -> (shape, dtype)) a product of two matrices and a relu
    get their replay forms, chosen once (:func:`~nodegrad._backend.product_for`,
    :func:`~nodegrad._backend.relu_form`)."""
    specs = [meta.get(a) for a in i.ins] if meta is not None else []
    if i.kind == "op" and i.name == "matmul_t" and len(specs) == 2 and None not in specs:
        (k, m), n = specs[0][0], specs[1][0][1]  # gᵀ x for g (k, m), x (k, n)
        mm = B.product_for(m, k, n)
        return lambda g, x, out: mm(g.T, x, out)
    if i.kind != "op" or i.name not in _UFUNC:
        return None
    if i.name == "matmul" and xp is B.np:  # shared-weight stacks as one GEMM, small on 1 thread
        if len(specs) == 2 and all(sp is not None and len(sp[0]) == 2 for sp in specs):
            (m, k), (_, n) = specs[0][0], specs[1][0]
            return B.product_for(m, k, n)
        return B.matmul_into
    if i.name == "matmul":  # CuPy: a 2-D product by its shorter path, as eager's
        return B.matmul_into
    uf = getattr(xp, _UFUNC[i.name])
    if i.name == "relu":
        if xp is not B.np:
            return lambda x, out: uf(x, 0, out=out)
        return B.relu_form(*specs[0]) if specs and specs[0] is not None else B.relu
    return lambda *a: uf(*a[:-1], out=a[-1])
