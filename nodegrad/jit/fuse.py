"""Elementwise fusion: groups of elementwise ops on one shape become one compiled kernel.

On the CPU a group becomes a numba function (loops over the output's indices, each element
computed in registers, inputs broadcast by index), written as Python source into the cache
directory and compiled with ``cache=True``, so later processes load the machine code from disk.
On CUDA a group becomes a CuPy ``ElementwiseKernel`` (CuPy caches its kernels on disk too).
Without numba (or CuPy) nothing is fused and the program replays op by op.

A kernel computes each element with the same operations in the same order as NumPy, in the same
dtype (float32 stays float32; constants are passed typed), so arithmetic, comparisons and
selections give identical bits. Transcendental functions may differ from NumPy's in the last
bit: float32 tanh, sin and cos come from :mod:`._vmath` (branch-free, so the loop vectorises;
within 0.5003 ulps in exhaustive sweeps), the others and all float64 ones from the C math library.
A ``sum`` (over any axes) that ends a group is added up in its kernel (a CuPy
``ReductionKernel`` on CUDA); the summed terms are never written, and the sum is within the
fused tolerance of NumPy's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import _backend as B
from . import _vmath
from ..primitive import REGISTRY
from .passes import _POINTWISE
from .program import Instr
from .trace import _op

# sigmoid(x) as silu computes it, 1 / (e⁻ˣ + 1), and tanh(softplus(x)) as mish does,
# 1 / (1 + 2 / ((eˣ + 2) eˣ)) (ops/activation.py)
_SIG = "(_1 / (math.exp(-{x}) + _1))"
_TSP = "(_1 / (_1 + (_1 + _1) / ((math.exp({x}) + (_1 + _1)) * math.exp({x}))))"

# op -> (arity, template over a, b, c; "libm" marks transcendental ops)
# _0 and _1 are zero and one in the kernel's dtype (a bare 0.0 would be float64 in numba)
_TEMPLATES: dict[str, tuple] = {
    "add": (2, "({a} + {b})"), "subtract": (2, "({a} - {b})"),
    "multiply": (2, "({a} * {b})"), "divide": (2, "({a} / {b})"),
    "negative": (1, "(-{a})"), "square": (1, "({a} * {a})"),
    "sqrt": (1, "math.sqrt({a})"), "abs": (1, "abs({a})"),
    "reciprocal": (1, "(_1 / {a})"), "rsqrt": (1, "(_1 / math.sqrt({a}))"),
    # NumPy's maximum and minimum: the first operand where it wins or is NaN, else the second
    # (so maximum(-0.0, 0.0) is 0.0)
    "maximum": (2, "({a} if ({a} > {b} or {a} != {a}) else {b})"),
    "minimum": (2, "({a} if ({a} < {b} or {a} != {a}) else {b})"),
    "relu": (1, "({a} if ({a} > _0 or {a} != {a}) else _0)"),
    "relu_grad": (2, "({a} * _1 if {b} != _0 else {a} * _0)"),  # b: relu's output
    # the VJPs of tanh and sigmoid from their outputs, in NumPy's order (ops/elementwise.py)
    "tanh_grad": (2, "({a} * (_1 - {b} * {b}))"),
    "sigmoid_grad": (2, "({a} * ((_1 - {b}) * {b}))"),
    "where": (3, "({b} if {a} else {c})"),
    # read through the kernel's broadcasting index: no zero-strided view for LLVM to step through
    "broadcast_to": (1, "{a}"),
    "equal": (2, "({a} == {b})"), "not_equal": (2, "({a} != {b})"),
    "less": (2, "({a} < {b})"), "less_equal": (2, "({a} <= {b})"),
    "greater": (2, "({a} > {b})"), "greater_equal": (2, "({a} >= {b})"),
    "exp": (1, "math.exp({a})", "libm"), "expm1": (1, "math.expm1({a})", "libm"),
    "log": (1, "math.log({a})", "libm"), "log1p": (1, "math.log1p({a})", "libm"),
    "sin": (1, "math.sin({a})", "libm"), "cos": (1, "math.cos({a})", "libm"),
    "tan": (1, "math.tan({a})", "libm"), "tanh": (1, "math.tanh({a})", "libm"),
    # the VJPs of sin and cos (g cos x, -(g sin x)), as ops/elementwise.py computes them
    "sin_grad": (2, "({a} * math.cos({b}))", "libm"),
    "cos_grad": (2, "(-({a} * math.sin({b})))", "libm"),
    # silu, mish and their VJPs (g, x) in ops/activation.py's order, with its limits at ±inf
    "silu": (1, "(-_0 if {a} == -math.inf else {a} * " + _SIG.format(x="{a}") + ")", "libm"),
    "silu_grad": (2, "(({a} if {b} > _0 else {a} * _0) if abs({b}) == math.inf else "
                     "((_1 - " + _SIG.format(x="{b}") + ") * {b} + _1) * "
                     + _SIG.format(x="{b}") + " * {a})", "libm"),
    "mish": (1, "(-_0 if {a} == -math.inf else {a} * " + _TSP.format(x="{a}") + ")", "libm"),
    # hardswish: x from 3 up, 0 from -3 down, x ((x + 3) / 6) between (3 and 6 exact sums)
    "hardswish": (1, "({a} if {a} >= _3 else (_0 if {a} <= -_3 else {a} * (({a} + _3) / "
                     "(_3 + _3))))".replace("_3", "(_1 + _1 + _1)")),
    "mish_grad": (2, "(({a} if {b} > _0 else {a} * _0) if abs({b}) == math.inf else "
                     "((_1 / (_1 / math.exp({b}) + _1)) * {b} * (_1 - " + _TSP.format(x="{b}")
                     + " * " + _TSP.format(x="{b}") + ") + " + _TSP.format(x="{b}") + ") * {a})",
                  "libm"),
}
# the CUDA C forms where they differ from the Python ones (math.f becomes f)
_C_TEMPLATES = {
    "abs": "fabs({a})",
    "maximum": "(({a} > {b} || {a} != {a}) ? {a} : {b})",
    "minimum": "(({a} < {b} || {a} != {a}) ? {a} : {b})",
    "relu": "(({a} > _0 || {a} != {a}) ? {a} : _0)",
    "relu_grad": "({b} != _0 ? {a} * _1 : {a} * _0)",
    "where": "({a} ? {b} : {c})",
}
_C_TEMPLATES.update({k: v.replace("math.", "") for k, v in {
    "hardswish": ("({a} >= _3 ? {a} : ({a} <= -_3 ? _0 : {a} * (({a} + _3) / (_3 + _3))))"
                  .replace("_3", "(_1 + _1 + _1)")),
    "silu": "((isinf({a}) && {a} < _0) ? -_0 : {a} * " + _SIG.format(x="{a}") + ")",
    "silu_grad": ("(isinf({b}) ? ({b} > _0 ? {a} : {a} * _0) : "
                  "((_1 - " + _SIG.format(x="{b}") + ") * {b} + _1) * " + _SIG.format(x="{b}")
                  + " * {a})"),
    "mish": "((isinf({a}) && {a} < _0) ? -_0 : {a} * " + _TSP.format(x="{a}") + ")",
    "mish_grad": ("(isinf({b}) ? ({b} > _0 ? {a} : {a} * _0) : "
                  "((_1 / (_1 / exp({b}) + _1)) * {b} * (_1 - " + _TSP.format(x="{b}") + " * "
                  + _TSP.format(x="{b}") + ") + " + _TSP.format(x="{b}") + ") * {a})"),
}.items()})
_BOOL_OUT = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"}
# A float32 kernel computing sin or cos is rerun with the C library's when an argument is beyond
# _vmath's reduction (see _Kernels.instr), so it must never write its result over an input (the
# buffer planner reads this set by op name: no kernel with these ops writes in place).
_POINTWISE.update(k for k in _TEMPLATES if k not in _vmath.RANGED)
# Above this many elements a transcendental op stays NumPy's: its vectorised exp/tanh beat the C
# library's scalar ones, per element, by more than the saved passes over memory (docs/jit.md).
LIBM_MAX_SIZE = 512

# A ``sum`` at the end of a group (over all axes or some) is added up inside its kernel, so the
# summed array is never written. A kernel whose only result is the sum is compiled with LLVM's
# reassociation flags (never the NaN/Inf ones), so the innermost loop's running sum splits into
# vector accumulators: faster than NumPy's multiply-then-sum at every size (docs/jit.md); each
# term comes from a function without the flags, so only the sum's adds reorder. The
# innermost axis is added in blocks of REDUCE_BLOCK elements (float32 terms in float32 lanes,
# 16 per lane as in NumPy's pairwise sum; float64 ones in float64), the blocks' sums and the
# other axes in float64, cast once at the end: the error stays at NumPy's pairwise sum's. A
# kernel that also writes elementwise results keeps NumPy's exact arithmetic for them, so it
# has no such flags and sums its innermost axis (one loop-carried float64 add) only up to
# REDUCE_MAX_SIZE elements; above, the sum stays NumPy's.
REDUCE_MAX_SIZE = {B.float32: 4096, B.float64: 512}
REDUCE_BLOCK = {B.float32: 512, B.float64: 4096}
REASSOC = {"reassoc", "nsz"}  # numba fastmath flags: reorder additions, nothing about NaN/Inf
SCALAR_MIN_OPS = 4  # the fewest ops a kernel on 0-d arrays must hold (see _worth)
# ops that NumPy runs 2-3x slower than a kernel even alone (maximum with NaN checks; a multiply
# by a boolean mask, cast first): a kernel of one such op on ALONE_MIN_SIZE elements or more
# (a 100 x 100 relu: 4.5 µs in NumPy, 1.3 µs as a kernel)
SLOW_ALONE = {"relu", "relu_grad", "maximum", "minimum"}
ALONE_MIN_SIZE = 2048
# LLVM vectorises a loop that writes to arrays it cannot prove apart only behind run-time
# overlap checks, at most this many (one per pair of written arrays and per written-read pair)
ALIAS_CHECKS_MAX = 128


_numba = "unset"  # the numba module, None when it is not installed (tests set None to force it)
_cache_dir: Path | None = None
_modules: dict[str, object] = {}  # kernel source hash -> its loaded module, in this process


def _get_numba():
    global _numba
    if _numba == "unset":
        try:
            import numba
        except ImportError:
            numba = None
        _numba = numba
    return _numba


def _numba_loaded() -> bool:
    return B.numba_loaded()


def available(backend) -> bool:
    """Whether groups can be fused on ``backend`` (numba on the CPU, CuPy on CUDA); numba is
    imported only when a program has a group to compile."""
    if backend is None:
        return False
    if backend.device_id is not None:
        return True
    if _numba == "unset":
        return importlib.util.find_spec("numba") is not None
    return _numba is not None


def set_cache_dir(path) -> None:
    """Write generated kernels (and numba's compiled code) under ``path`` from now on."""
    global _cache_dir
    _cache_dir = Path(path)


def cache_dir() -> Path:
    """Where kernels are cached: set_cache_dir's, else $NODEGRAD_CACHE_DIR, else
    ~/.cache/nodegrad/jit."""
    if _cache_dir is not None:
        return _cache_dir
    env = os.environ.get("NODEGRAD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "nodegrad" / "jit"


# --- finding groups -------------------------------------------------------------------------
@dataclass
class Group:
    """One fused kernel: its members (in program order), result shape and float dtype."""

    shape: tuple
    dtype: object
    members: list
    sealed: bool = False
    reduce: Instr | None = None  # a ``sum`` of one member's result, computed in the kernel
    axes: tuple = ()  # the group's axes that ``reduce`` sums over (sorted)
    after_effect: bool = False  # sealed by an effect: a later sum stays outside (it may mutate)
    exact: bool = False  # ``reduce`` is added up as NumPy adds it eagerly (:func:`_in_order`)
    late: bool = False  # ``reduce`` joined once sealed: it rides along, it makes no kernel worth
    perm: tuple | None = None  # the CPU kernel's loop order when it is not the axes' own
    layouts: dict = field(default_factory=dict)  # with perm: result slot -> its traced strides
    flat: bool = True  # its results are C-ordered in its loops' order (see _flattened)


def _key(prog, i: Instr):
    """(shape, float dtype) when op ``i`` can join a kernel, else None."""
    if i.kind != "op" or i.name not in _TEMPLATES or i.out not in prog.meta:
        return None
    t = _TEMPLATES[i.name]
    if len(i.ins) != t[0]:
        return None
    shape, od = prog.meta[i.out]
    if 0 in shape:
        return None
    n = 1
    for d in shape:
        n *= d
    on_cpu = prog.backend.device_id is None
    if on_cpu and len(t) > 2 and n > LIBM_MAX_SIZE:
        return None
    floats = {od} if od.kind == "f" else set()
    for k, a in enumerate(i.ins):
        if a in prog.meta:
            s, dt = prog.meta[a]
            if len(s) > len(shape) or any(x != y and x != 1 for x, y in
                                           zip(s[::-1], shape[::-1])):
                return None
            if i.name == "where" and k == 0:
                if dt != B.bool_:
                    return None
            elif dt.kind == "f":
                floats.add(dt)
            else:
                return None
        elif a in prog.consts:
            v = prog.consts[a]
            if type(v) not in (int, float) or (i.name == "where" and k == 0):
                return None
        else:
            return None
    if len(floats) != 1:
        return None
    dt = floats.pop()
    if dt not in (B.float32, B.float64) or (od.kind != "f" and i.name not in _BOOL_OUT):
        return None
    return (tuple(shape), dt)


def _readers(instrs: list) -> dict[int, list]:
    """Slot -> the instructions that read it, in program order."""
    readers: dict[int, list] = {}
    for i in instrs:
        for a in i.ins:
            readers.setdefault(a, []).append(i)
    return readers


def _split_biases(prog, instrs: list) -> list:
    """A ``linear`` whose only reader is an op that can join a kernel becomes the product
    alone and an ``add`` of its bias, so the add joins that reader's kernel (a layer's ReLU):
    one pass over the layer's output fewer. The product is eager's ``x @ W.T`` and the add the
    same float add as eager's in-place one, so the bits stay eager's. Only before an exact op
    (not a transcendental one, which would then be computed in a kernel rather than by NumPy:
    other bits, and not always faster) and on the CPU with numba loaded (the add must not cost
    a kernel that numba's import would not repay)."""
    if prog.backend.device_id is not None or not _numba_loaded():
        return instrs
    values = getattr(prog, "values", {})
    readers = _readers(instrs)
    outs = set(prog.out_slots)
    result = []
    for i in instrs:
        if not (i.kind == "op" and i.name == "linear" and not i.params and len(i.ins) == 3
                and i.out in prog.meta and i.out in values and i.out not in outs):
            result.append(i)
            continue
        b = i.ins[2]
        rs = readers.get(i.out, [])
        shape, dt = prog.meta[i.out]
        flags = values[i.out].flags  # C-ordered, or F-ordered (a wide layer's product)
        if (b not in prog.meta or prog.meta[b] != ((shape[-1],), dt) or len(rs) != 1
                or rs[0].ins.count(i.out) != 1 or _key(prog, rs[0]) != (tuple(shape), dt)
                or len(_TEMPLATES[rs[0].name]) > 2
                or not (flags.c_contiguous or flags.f_contiguous)):
            result.append(i)
            continue
        z, none = prog.nslots, prog.nslots + 1
        prog.nslots += 2
        prog.consts[none] = None
        prog.meta[z] = prog.meta[i.out]
        values[z] = values[i.out]
        out = values[i.out]  # (the product's replay form is direct_forms')
        result.append(Instr("op", "linear", _op(REGISTRY["linear"], {}, prog.backend, out),
                            (i.ins[0], i.ins[1], none), z, params={}))
        result.append(Instr("op", "add", _op(REGISTRY["add"], {}, prog.backend, out), (z, b),
                            i.out, params={}))
        prog.stats["split_biases"] = prog.stats.get("split_biases", 0) + 1
    return result


def _outer_square_sums(prog, instrs: list) -> list:
    """``sum((a * b) ** 2)`` of an outer product (``a`` and ``b`` broadcast against each other
    along axes of their own: per-example weight gradients ``g[:, :, None] * x[:, None, :]``
    whose squared norm a DP-SGD clip or W8 asks) as ``sum(sum(a², A) * sum(b², B))`` over the
    shared axes: Goodfellow's identity ``‖g xᵀ‖² = ‖g‖² ‖x‖²``, O(N·(I+J)) instead of O(N·I·J),
    the product never made. The sum is reordered (within fusion's tolerance; more accurate, as
    fewer terms are rounded)."""
    values = getattr(prog, "values", {})
    readers = _readers(instrs)
    outs = set(prog.out_slots)
    made = {i.out: i for i in instrs if i.kind == "op" and i.out is not None}
    plan: dict[int, tuple] = {}  # id(sum) -> (a, b, own axes of a, of b); its two ops dropped
    drop: set[int] = set()
    for i in instrs:
        if not (i.kind == "op" and i.name == "sum" and isinstance(i.params, dict)
                and i.params.get("axis") is None and not i.params.get("keepdims")):
            continue
        sq = made.get(i.ins[0])
        if sq is None or sq.name != "multiply" or sq.params or sq.ins[0] != sq.ins[1]:
            continue
        t = made.get(sq.ins[0])
        if t is None or t.name != "multiply" or t.params or len(t.ins) != 2 or any(
                len(readers.get(s, ())) != n or s in outs
                for s, n in ((t.out, 2), (sq.out, 1))):
            continue
        a, b = t.ins
        if a == b or a not in prog.meta or b not in prog.meta or a not in values or (
                b not in values) or t.out not in prog.meta:
            continue
        (sa, da), (sb, db), (st, dt) = prog.meta[a], prog.meta[b], prog.meta[t.out]
        if not (da == db == dt and dt.kind == "f" and len(sa) == len(sb) == len(st)):
            continue
        own_a = tuple(k for k in range(len(st)) if sa[k] > 1 and sb[k] == 1)
        own_b = tuple(k for k in range(len(st)) if sb[k] > 1 and sa[k] == 1)
        if not own_a or not own_b or any(
                sa[k] not in (1, st[k]) or sb[k] not in (1, st[k]) for k in range(len(st))):
            continue
        # each summed over every axis but the shared ones (its extent-1 axes too: a sum over
        # trailing axes, the kernels' fast case)
        rest = tuple(k for k in range(len(st)) if not (sa[k] > 1 and sb[k] > 1))
        plan[id(i)] = (a, b, rest, rest)
        drop.update((id(t), id(sq)))
    if not plan:
        return instrs
    be, xp = prog.backend, prog.backend.xp
    result = []
    for i in instrs:
        if id(i) in drop:
            continue
        if id(i) not in plan:
            result.append(i)
            continue
        a, b, own_a, own_b = plan[id(i)]
        parts = []
        for x, own in ((a, own_a), (b, own_b)):
            fn = _sum_squares(xp, own)  # NumPy's: the operand may be laid out either way
            red_v = fn(values[x])
            red_s = prog.nslots
            prog.nslots += 1
            prog.meta[red_s], values[red_s] = (tuple(red_v.shape), red_v.dtype), red_v
            result.append(Instr("op", "sum_squares", fn, (x,), red_s, params={"axis": own}))
            parts.append(red_s)
        prod_v = xp.multiply(values[parts[0]], values[parts[1]])
        prod_s = prog.nslots
        prog.nslots += 1
        prog.meta[prod_s], values[prod_s] = (tuple(prod_v.shape), prod_v.dtype), prod_v
        result.append(Instr("op", "multiply", _op(REGISTRY["multiply"], {}, be, prod_v),
                            tuple(parts), prod_s, params={}))
        result.append(Instr("op", "sum", i.fn, (prod_s,), i.out, params=i.params))
        prog.stats["outer_square_sums"] = prog.stats.get("outer_square_sums", 0) + 1
    return result


def _sum_squares(xp, axes: tuple):
    """``sum(x * x, axes, keepdims=True)`` as one replay function (not a kernel's member): for
    a C-ordered ``x`` summed over its trailing axes, one row-wise dot (``einsum``, ~2x faster
    than a square and a sum over axes)."""
    def sum_squares(x):
        lead = x.ndim - len(axes)
        if axes == tuple(range(lead, x.ndim)) and x.flags.c_contiguous:
            shape = x.shape[:lead] + (1,) * len(axes)
            rows = x.reshape(math.prod(x.shape[:lead]), -1)
            return xp.einsum("ni,ni->n", rows, rows).reshape(shape)
        return xp.sum(xp.square(x), axis=axes, keepdims=True)

    sum_squares.converts = False
    sum_squares.fast = sum_squares
    return sum_squares


def fuse(prog, instrs: list, everything: bool = False) -> list:
    """Replace groups of two or more fusable ops by one ``fused`` instruction each; with
    ``everything`` (``jit(fuse=True)``) single slow ops too, importing numba for them."""
    instrs = _outer_square_sums(prog, _split_biases(prog, instrs))
    groups: list[Group] = []
    made: dict[int, Group] = {}  # slot -> the group whose member computes it
    member_of: dict[int, Group] = {}  # instruction index -> its group
    for i in instrs:
        if i.kind == "effect":
            for g in groups:
                g.sealed = g.after_effect = True
        key = _key(prog, i)
        g = made.get(i.ins[0]) if len(i.ins) == 1 else None
        axes = _summed_axes(prog, i, g) if g is not None and g.reduce is None and (
            not g.after_effect) else None
        # a sum that the kernel adds up with its eager bits (NumPy's outer-axes order) joins
        # even a group that others have read since (a layer's bias gradient after its input
        # and weight gradients): it reads nothing but that member, so the kernel, placed at
        # its last member, computes it earlier from the same inputs. Another sum (added up
        # in float64, within tolerance) joins only an open group, whose terms it then need
        # not write.
        exact = axes is not None and _in_order(prog, i, axes)
        if axes is not None and not exact and g.sealed:
            axes = None
        if axes is not None:  # added up as the kernel makes it
            g.reduce, g.axes, g.exact, g.late = i, axes, exact, g.sealed
            g.sealed = True
            continue
        reads = {id(made[a]): made[a] for a in i.ins if a in made}
        join = [g for g in reads.values() if key is not None and not g.sealed
                and (g.shape, g.dtype) == key]
        for g in reads.values():
            if g not in join:
                g.sealed = True  # read from outside: no later op may join it
        if key is None:
            continue
        if join:
            g = join[0]
            for other in join[1:]:  # this op reads several open groups: they become one
                g.members.extend(other.members)
                for m in other.members:
                    made[m.out] = g
                other.members = []
                other.sealed = True
        else:
            g = Group(key[0], key[1], [])
            groups.append(g)
        g.members.append(i)
        made[i.out] = g
    outs = set(prog.out_slots)
    if prog.backend.device_id is None:
        for g in groups:
            g.perm = _loop_order(prog, g)
    # one slow op alone is a kernel only where the program compiles others or numba is loaded
    # already (by a fused optimiser, another program): numba's import (~0.5-1 s in a fresh
    # process) outweighs a few µs a step in a short run
    alone = everything or _numba_loaded() or any(_worth(prog, g, alone=False) for g in groups)
    if not alone and prog.backend.device_id is None:  # what importing numba later would compile
        waiting = sum(1 for g in groups if _worth(prog, g, alone=True))
        if waiting:
            prog.stats["kernels_waiting"] = waiting
    while True:  # again after a sum has left a kernel that writes other results
        member_of.clear()
        for g in groups:
            if _worth(prog, g, alone):
                for m in g.members + ([g.reduce] if g.reduce is not None else []):
                    member_of[id(m)] = g
        readers: dict[int, set] = {}  # slot -> ids of the groups (or -1) that read it
        for i in instrs:
            g = member_of.get(id(i))
            for a in i.ins:
                readers.setdefault(a, set()).add(-1 if g is None else id(g))
        if not _detach_sums(prog, groups, outs, readers, member_of):
            break
    if not member_of or (prog.backend.device_id is None and _get_numba() is None):
        return instrs
    pos = {id(i): k for k, i in enumerate(instrs)}
    # a kernel runs where its last member ran: every input is ready there, and a sum it adds
    # up reads only a member
    last = {id(g): max(g.members, key=lambda m: pos[id(m)]) for g in groups
            if _worth(prog, g, alone)}
    kernels = _Kernels(prog)
    result = []
    try:
        for i in instrs:
            g = member_of.get(id(i))
            if g is None:
                result.append(i)
            elif last[id(g)] is i:
                g.members.sort(key=lambda m: pos[id(m)])
                result.append(kernels.instr(g, outs, readers))
    except Exception as e:  # no writable cache, a compiler error: replay unfused, correctly
        warnings.warn(f"nodegrad.jit: fusion failed ({type(e).__name__}: {e}); this program "
                      "runs unfused", RuntimeWarning, stacklevel=2)
        return instrs
    prog.stats["fused_groups"] = sum(1 for i in result if i.kind == "fused")
    return result


def _worth(prog, g: Group, alone: bool = True) -> bool:
    """Whether a group saves time as a kernel: two ops or more (not counting a sum that joined
    it once sealed); on 0-d arrays (the scalars that sums leave) SCALAR_MIN_OPS, as a kernel's
    call costs about two NumPy scalar ops; with ``alone``, one op of SLOW_ALONE on
    ALONE_MIN_SIZE elements or more: on CUDA of C-ordered inputs (a kernel writes C order,
    where NumPy lays its result out as a transposed input is, and the products that read it
    would run other BLAS kernels, with other bits); on the CPU, where a kernel lays its
    results out as NumPy did (:func:`_loop_order`), with an input laid out as its result,
    which its loops then read in order."""
    n = len(g.members) + (g.reduce is not None and not g.late)
    if n == 1 and g.members[0].name in SLOW_ALONE:
        if not alone:
            return False
        values = getattr(prog, "values", {})
        ins = [_order(values.get(a)) for a in g.members[0].ins if a not in prog.consts]
        if math.prod(g.shape) < ALONE_MIN_SIZE:
            return False
        if prog.backend.device_id is not None:
            return all(o == tuple(range(len(g.shape))) for o in ins)
        out = _order(values.get(g.members[0].out))
        return out is not None and out in ins
    return n >= (SCALAR_MIN_OPS if not g.shape else 2)


def _order(v) -> tuple | None:
    """The axis order (outermost first) in which array ``v`` is laid out without gaps, or None
    (no array, gaps, negative strides). C order is ``(0, 1, ...)``."""
    flags = getattr(v, "flags", None)
    if flags is None:
        return None
    nd = v.ndim
    if flags.c_contiguous:
        return tuple(range(nd))
    perm = tuple(sorted(range(nd), key=lambda d: (-v.strides[d] if v.shape[d] > 1 else 0, d)))
    return perm if v.transpose(perm).flags.c_contiguous else None


def _loop_order(prog, g: Group) -> tuple | None:
    """The axis order of a CPU kernel's loops when NumPy laid out the member that the group's sum
    reads (else its first member's result) in another than C order (a convolution's result and
    what is computed from it): its loops then run in that order, over its arrays transposed to
    it, its elementwise results are laid out as NumPy laid them out (the ops that read them run
    as they did eagerly), and a sum of its outer axes adds in NumPy's order. None for C order
    (or no traced result)."""
    if len(g.shape) < 2:
        return None
    values = getattr(prog, "values", {})
    summed = [g.reduce.ins[0]] if g.reduce is not None else []  # NumPy summed in its order
    for m in summed + [m.out for m in g.members]:
        v = values.get(m)
        if getattr(v, "shape", None) == g.shape:
            perm = _order(v)
            return None if perm is None or perm == tuple(range(len(g.shape))) else perm
    return None


def _in_order(prog, i: Instr, axes: tuple) -> bool:
    """Whether a CPU kernel adds up sum ``i`` with its eager bits: the sum keeps the innermost
    axis in memory of the (traced) array it sums, so the kernel adds in that array's order, in
    its dtype, as NumPy's reduction does, and eagerly it is NumPy's reduction
    (``B.sums_as_numpy``)."""
    v = getattr(prog, "values", {}).get(i.ins[0])
    order = _order(v)
    if prog.backend.device_id is not None or not order or order[-1] in axes:
        return False  # (a 0-d array has no innermost axis: NumPy's sum of it is itself)
    p = i.params or {}
    return type(v) is B.ndarray and B.sums_as_numpy(v, p.get("axis"),
                                                       bool(p.get("keepdims", False)))


def _summed_axes(prog, i: Instr, g: Group) -> tuple | None:
    """The group axes over which ``i`` sums a member's whole result in the group's dtype, or
    None when ``i`` is no such ``sum`` (then it stays an op of its own)."""
    if i.kind != "op" or i.name != "sum" or i.out not in prog.meta or i.ins[0] not in prog.meta:
        return None
    if prog.meta[i.ins[0]][0] != g.shape or prog.meta[i.out][1] != g.dtype:
        return None
    axis = (i.params or {}).get("axis")
    nd = len(g.shape)
    if axis is None:
        return tuple(range(nd))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(sorted({a % nd for a in axes}))
    return axes if axes else None


def _writes(g: Group, outs: set, readers: dict) -> bool:
    """Whether the kernel of ``g`` must write an elementwise result (read outside it)."""
    return any(m.out in outs or readers.get(m.out, set()) - {id(g)} for m in g.members)


def _detach_sums(prog, groups: list, outs: set, readers: dict, member_of: dict) -> bool:
    """Leave a sum to NumPy where its kernel could not add it up well: on CUDA when the kernel
    also writes elementwise results (a CuPy reduction kernel writes only its sum), and on the
    CPU when it must also write them and the innermost axis is summed over more than
    REDUCE_MAX_SIZE elements (no reassociation there: one scalar running sum)."""
    changed = False
    cuda = prog.backend.device_id is not None
    for g in groups:
        if g.reduce is None or id(g.reduce) not in member_of:
            continue
        if not _writes(g, outs, readers):
            continue
        n = 1
        for d in g.shape:
            n *= d
        inner = (g.perm[-1] if g.perm else len(g.shape) - 1) in g.axes
        if cuda or (inner and n > REDUCE_MAX_SIZE.get(g.dtype, 0)):
            g.reduce, g.axes = None, ()
            changed = True
    return changed


# --- kernels ----------------------------------------------------------------------------------
class _Kernels:
    """Source, compilation and loading of the kernels of one program."""

    def __init__(self, prog) -> None:
        self.prog = prog
        self.cuda = prog.backend.device_id is not None

    def _typed_const(self, value, dtype) -> int:
        prog = self.prog
        s = prog.nslots
        prog.nslots += 1
        prog.consts[s] = dtype.type(value)
        return s

    def instr(self, g: Group, outs: set, readers: dict) -> Instr:
        prog = self.prog
        inside = {m.out for m in g.members}
        results = [m.out for m in g.members
                   if m.out in outs or readers.get(m.out, set()) - {id(g)}]
        if g.reduce is not None:
            results.append(g.reduce.out)
        arrays: list[int] = []  # external array inputs, in order of first use
        scalars: list[int] = []  # typed scalar constants (new const slots)
        names: dict[int, str] = {}
        body = []
        fast = []  # the body with _vmath's functions (float32 CPU kernels), else empty
        checks = []  # the sin/cos arguments that _vmath reduces only up to SINCOS_MAX
        # not in a kernel whose only result is a sum: numba compiles the functions it calls with
        # its reassociation flags, which would undo _vmath's rounding to integers
        vec = (not self.cuda and g.dtype == B.float32
               and not (g.reduce is not None and results == [g.reduce.out]))
        for j, m in enumerate(g.members):
            args = []
            for a in m.ins:
                if a in inside:
                    args.append(names[a])
                elif a in prog.consts and not hasattr(prog.consts[a], "shape"):
                    scalars.append(self._typed_const(prog.consts[a], g.dtype))
                    args.append(f"k{len(scalars) - 1}")
                else:
                    if a not in arrays:
                        arrays.append(a)
                    args.append(f"x{arrays.index(a)}")
            tpl = _TEMPLATES[m.name][1]
            if self.cuda:  # C forms; CuPy reserves names with a leading underscore
                tpl = _C_TEMPLATES.get(m.name, tpl.replace("math.", ""))
                tpl = tpl.replace("_0", "c_zero").replace("_1", "c_one")
            names[m.out] = f"t{j}"
            body.append((f"t{j}", tpl.format(**dict(zip("abc", args)))))
            if vec:
                v = _vmath.TEMPLATES32.get(m.name)
                fast.append((f"t{j}", v.format(**dict(zip("abc", args))) if v else body[-1][1]))
                if m.name in _vmath.RANGED:
                    checks.append(args["ab".index(_vmath.RANGED[m.name])])
        if fast == body:
            fast = []
        in_specs = [prog.meta[a] for a in arrays]
        out_specs = [prog.meta[s] for s in results]
        zero = self._typed_const(0, g.dtype)
        one = self._typed_const(1, g.dtype)
        ins = tuple(arrays) + tuple(scalars) + (zero, one)
        if g.reduce is not None:  # the last output is the sum of this member's values
            names[g.reduce.out] = "+" + names[g.reduce.ins[0]]
        if self.cuda and g.reduce is not None:
            fn, src = _cupy_reduction(g, body, names[g.reduce.out][1:], in_specs,
                                      out_specs[0], len(scalars))
        elif self.cuda:
            fn, src = _cupy_kernel(g, body, [names[s] for s in results], in_specs, out_specs,
                                   len(scalars))
        else:
            kg, k_in, k_out, glue = g, in_specs, out_specs, None
            if g.perm is not None:
                kg, k_in, k_out, glue = _permuted(prog, g, results, in_specs, out_specs,
                                                  len(ins) - len(arrays))
            src = _numba_source(kg, fast or body, [names[s] for s in results], k_in,
                                k_out, len(scalars), checks)
            fn = _load(src)
            if checks:  # rerun with the C library's sin/cos when an argument was out of range
                slow = _numba_source(kg, body, [names[s] for s in results], k_in, k_out,
                                     len(scalars))
                fn = _with_fallback(fn, slow)
            if glue is not None:
                fn = glue(fn)
            _warm(fn, prog, ins, results, g.layouts)  # compiles now, at trace time
        name = "k" + hashlib.sha1(src.encode()).hexdigest()[:8]
        return Instr("fused", name, fn, ins, None, outs=tuple(results),
                     group=g)


def _empty_laid_out(xp, spec: tuple, strides: tuple | None, perm: tuple | None = None):
    """An empty array of ``spec`` (shape, dtype) with ``strides`` (of a dense layout), else
    laid out in axis order ``perm``, else C-ordered."""
    shape, dtype = spec
    if strides is not None:
        return xp.ndarray(shape, dtype, xp.empty(math.prod(shape), dtype), 0, strides)
    if perm is None:
        return xp.empty(shape, dtype)
    return xp.empty(tuple(shape[d] for d in perm), dtype).transpose(
        tuple(perm.index(d) for d in range(len(shape))))


def _permuted(prog, g: Group, results: list, in_specs: list, out_specs: list, nrest: int):
    """``(group, in_specs, out_specs, glue)`` of a kernel whose loops run in ``g.perm``'s axis
    order: the group and specs as seen through arrays transposed to that order, and ``glue(k)``,
    the function a program calls (its arrays as they are) that calls kernel ``k`` on them
    transposed (an input of fewer axes first given leading ones). Fills ``g.layouts``: each
    elementwise result laid out as NumPy laid it out when traced."""
    perm, shape = g.perm, g.shape
    nd = len(shape)
    values = getattr(prog, "values", {})
    pg = replace(g, shape=tuple(shape[d] for d in perm),
                 axes=tuple(sorted(perm.index(a) for a in g.axes)))
    args, k_out, k_in = [], [], []
    for j, (s, (oshape, dt)) in enumerate(zip(results, out_specs)):
        if g.reduce is not None and s == g.reduce.out:  # the sum, C-ordered as NumPy's
            kd = tuple(1 if d in g.axes else shape[d] for d in range(nd))
            args.append(f"o{j}.transpose({perm})" if len(oshape) == nd
                        else f"o{j}.reshape({kd}).transpose({perm})")
            k_out.append((tuple(kd[d] for d in perm), dt))
            continue
        v = values.get(s)
        if _order(v) is not None:  # NumPy's own strides (a length-one axis's included)
            g.layouts[s] = tuple(v.strides)
            if not v.transpose(perm).flags.c_contiguous:  # laid out otherwise than the loops
                pg.flat = False
        else:
            g.layouts[s] = _empty_laid_out(prog.backend.xp, (shape, dt), None, perm).strides
        args.append(f"o{j}.transpose({perm})")
        k_out.append((pg.shape, dt))
    for j, (sh, dt) in enumerate(in_specs):
        if not sh:
            args.append(f"a{j}")
            k_in.append((sh, dt))
            continue
        full = (1,) * (nd - len(sh)) + tuple(sh)
        args.append(f"a{j}.transpose({perm})" if len(sh) == nd
                    else f"a{j}.reshape({full}).transpose({perm})")
        k_in.append((tuple(full[d] for d in perm), dt))
    params = [f"o{j}" for j in range(len(results))] + [f"a{j}" for j in range(len(in_specs))]
    rest = [f"r{j}" for j in range(nrest)]
    src = (f"def glue(kernel):\n    def run({', '.join(params + rest)}):\n"
           f"        return kernel({', '.join(args + rest)})\n    return run\n")
    ns: dict = {}
    exec(compile(src, "<nodegrad.jit kernel glue>", "exec"), ns)
    return pg, k_in, k_out, ns["glue"]


def _with_fallback(kernel, slow_src: str):
    """``kernel``, rerun as the C-library version ``slow_src`` (compiled when first needed)
    when it reports an argument that _vmath's sin/cos do not reduce (NaN, inf, huge)."""
    slow = []

    def run(*args):
        if kernel(*args):
            if not slow:
                slow.append(_load(slow_src))
            slow[0](*args)

    return run


def _numba_source(g: Group, body, results, in_specs, out_specs, nscalars,
                  checks=()) -> str:
    """The numba kernel: loops over the group's indices computing each element in registers,
    writing the elementwise results and adding up the summed one (the last, marked ``+``).
    With ``checks`` (sin/cos arguments of _vmath's functions) it returns whether one of them
    was out of _vmath's range, so that the caller reruns the C-library version."""
    g, in_specs, prologue, out_nd = _flattened(g, in_specs)
    shape, nd = g.shape, len(g.shape)
    outs = [f"o{j}" for j in range(len(results))]
    params = outs + [f"a{j}" for j in range(len(in_specs))] + [
        f"k{j}" for j in range(nscalars)] + ["_0", "_1"]
    summed = results[-1][1:] if results and results[-1].startswith("+") else None
    plain = [(o, r) for o, r in zip(outs, results) if not r.startswith("+")]
    axes = g.axes if summed is not None else ()
    inner = summed is not None and nd - 1 in axes  # a running sum along the innermost loop
    flags = ", fastmath={" + ", ".join(map(repr, sorted(REASSOC))) + "}" if (
        inner and not plain) else ""
    lines = ["import math", "import numba", "import numpy", ""]
    if any("_v" in expr for _name, expr in body):  # only _vmath names start with _v
        lines.append(_vmath.SOURCE)
    if out_nd is not None:
        lines.append(_FLAT_SOURCE)
    head = len(lines)  # where _copy_out goes, if the kernel needs it
    lines += ["", f"@numba.njit(cache=True, error_model='numpy', nogil=True{flags})",
              f"def kernel({', '.join(params)}):"]
    lines += prologue
    ind = "    "
    if checks:
        lines.append(f"{ind}bad = False")
    kept = [d for d in range(nd) if d not in axes]
    acc = "s[" + ", ".join(f"i{d}" for d in kept) + ("," if len(kept) == 1 else "") + "]"
    if summed is not None and not kept:
        acc = "s"
        lines.append(f"{ind}s = 0.0")
    elif summed is not None and not (g.exact and not inner):  # the partial sums, in float64
        lines.append(f"{ind}s = numpy.zeros({tuple(shape[d] for d in kept)!r}, numpy.float64)")
    elif summed is not None:  # NumPy's own sum: in order, in the dtype, from +0.0 as NumPy's
        dt = "numpy.float32" if g.dtype == B.float32 else "numpy.float64"
        lines.append(f"{ind}s = numpy.zeros({tuple(shape[d] for d in kept)!r}, {dt})")
    if out_nd is not None:  # the elementwise outputs as one axis too
        lines += [f"{ind}{o} = _flat({o})" for o, _r in plain]
    size = "o0" if plain else None  # an array of the kernel's shape gives the loop bounds
    if not plain:
        full_in = [j for j, (sh, _dt) in enumerate(in_specs) if tuple(sh) == tuple(shape)]
        size = f"a{full_in[0]}" if full_in else None
    lanes32 = bool(flags) and g.dtype == B.float32  # float32 partial sums within a block
    block = REDUCE_BLOCK[g.dtype] if flags else REDUCE_MAX_SIZE[g.dtype]
    zero = "_0" if lanes32 else "0.0"
    full = ", ".join(f"i{d}" for d in range(nd)) or "()"  # 0-d: the scalars after sums

    def nest(ind: str, inner_lines: list, value) -> None:
        """The loops over the group's indices around ``inner_lines``, adding up ``value``."""
        for d in range(nd):
            bound = f"{size}.shape[{d}]" if size else str(shape[d])
            if d == nd - 1 and inner and value and shape[d] > block:  # innermost in blocks
                lines.append(f"{ind}for b in range(0, {bound}, {block}):")
                ind += "    "
                lines.append(f"{ind}r = {zero}")
                # unsigned bounds: LLVM then knows the index is not negative (no wraparound
                # branch), which it needs to vectorise the loop
                lines.append(f"{ind}for i{d} in range(numba.uint64(b), "
                             f"numba.uint64(min(b + {block}, {bound}))):")
            elif d == nd - 1 and inner and value:
                lines.append(f"{ind}r = {zero}")
                lines.append(f"{ind}for i{d} in range({bound}):")
            else:
                lines.append(f"{ind}for i{d} in range({bound}):")
            ind += "    "
        lines.extend(ind + x for x in inner_lines)
        if inner and lanes32 and value:
            lines.append(f"{ind}r += {value}")
            lines.append(f"{ind[:-4]}{acc} += float(r)")
        elif inner and value:
            lines.append(f"{ind}r += float({value})")
            lines.append(f"{ind[:-4]}{acc} += r")
        elif value and g.exact:
            lines.append(f"{ind}{acc} += {value}")
        elif value:
            lines.append(f"{ind}{acc} += float({value})")

    loads = [f"x{j} = a{j}[{_index(sh, shape)}]" for j, (sh, _dt) in enumerate(in_specs)]
    work = loads + [f"{name} = {expr}" for name, expr in body]
    work += [f"bad |= _vbad({x})" for x in dict.fromkeys(checks)]
    if flags and not checks:
        # Each term from a function compiled without the flags (LLVM inlines it, so the loop
        # still vectorises): with them LLVM reassociated the term's own arithmetic into the
        # running sum, ``r += x*x - a`` as ``(r - a) + x*x``, which rounds at ``a``'s scale
        # instead of the terms' (a Newton residual's sum came out 0). Only the sum reorders.
        targs = ", ".join([f"x{j}" for j in range(len(in_specs))]
                          + [f"k{j}" for j in range(nscalars)] + ["_0", "_1"])
        lines[head:head] = ["", "", "@numba.njit(error_model='numpy', nogil=True)",
                            f"def _term({targs}):"] + [
            f"    {name} = {expr}" for name, expr in body] + [f"    return {summed}"]
        work, summed = loads + [f"v = _term({targs})"], "v"
    if _scratch(len(plain), len(in_specs), nd, summed is not None and not flags and inner,
                out_specs):
        # The loop writes its results into one fresh array (LLVM then needs no run-time
        # checks that the outputs overlap the inputs, which it gives up on past
        # ALIAS_CHECKS_MAX, and no in-order running sum holds it back: it vectorises); they
        # are copied out, and the sum added up in the same order, after it.
        rows = [r for _o, r in plain]
        if summed is not None and summed not in rows:
            rows.append(summed)
        dt = "numpy.float32" if g.dtype == B.float32 else "numpy.float64"
        lines.append(f"{ind}w = numpy.empty({(len(rows),) + tuple(shape)!r}, {dt})")
        nest(ind, work + [f"w[{k}, {full}] = {r}" for k, r in enumerate(rows)], None)
        for o, r in plain:  # one small function (compiled once) copies each result
            lines.append(f"{ind}_copy_out({o}, w[{rows.index(r)}])")
        idx = ", ".join(f"i{d}" for d in range(nd))
        copy = ["", "", "@numba.njit(error_model='numpy', nogil=True)", "def _copy_out(o, w):"]
        copy += [f"{'    ' * (d + 1)}for i{d} in range(o.shape[{d}]):" for d in range(nd)]
        copy += [f"{'    ' * (nd + 1)}o[{idx}] = w[{idx}]"]
        lines[head:head] = copy
        if summed is not None:
            nest(ind, [], f"w[{rows.index(summed)}, {full}]")
    else:
        nest(ind, work + [f"{o}[{full}] = {r}" for o, r in plain], summed)
    if summed is not None:  # the sums into the output, cast once (keepdims: 0 on summed axes)
        o, (oshape, _dt) = outs[-1], out_specs[-1]
        if not kept:
            lines.append(f"    {o}[{', '.join('0' for _ in oshape) or '()'}] = s")
        else:
            ind = "    "
            for k, d in enumerate(kept):
                lines.append(f"{ind}for j{k} in range({shape[d]}):")
                ind += "    "
            src = ", ".join(f"j{k}" for k in range(len(kept))) + ("," if len(kept) == 1 else "")
            dst = ([f"j{kept.index(d)}" if d in kept else "0" for d in range(nd)]
                   if len(oshape) == nd else [f"j{k}" for k in range(len(kept))])
            lines.append(f"{ind}{o}[{', '.join(dst)}{',' if len(dst) == 1 else ''}] = s[{src}]")
    if checks:
        lines.append("    return bad")
    return "\n".join(lines) + "\n"


# ``_flat(a)`` in a kernel: a C-ordered array as one axis, through a view that holds no
# reference (a reshape's would: LLVM then reloads every array's data pointer in the loop and
# does not vectorise it; J5's backward kernel took 38 µs so, 14 through these views); an array
# laid out otherwise as a contiguous copy, which owns its memory.
_FLAT_SOURCE = '''
# --- one-axis views (nodegrad/jit/fuse.py) ---
from llvmlite import ir as _f_ir
from numba.core import types as _f_types
from numba.extending import intrinsic as _f_intrinsic, overload as _f_overload


@_f_intrinsic
def _f_pointer(typingctx, address):
    """An integer address as a pointer, for numba.carray."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], _f_ir.IntType(8).as_pointer())

    return _f_types.voidptr(address), codegen


def _flat(a):
    pass


@_f_overload(_flat)
def _f_flat(a):
    if a.layout == "C":  # the caller holds the array for the call
        return lambda a: numba.carray(_f_pointer(a.ctypes.data), a.size, a.dtype)
    return lambda a: numpy.ascontiguousarray(a).reshape(a.size)
'''


def _flattened(g: Group, in_specs):
    """``(g, in_specs, prologue, out_nd)`` of a kernel that runs over its group's elements as
    one axis, for a group of two axes or more whose array inputs all have its shape (or all
    ones) and whose sum, if any, is over all axes: the prologue views each array input as one
    axis (one laid out otherwise is copied first); ``out_nd`` is the outputs' own number of
    axes. LLVM vectorises a loop over n elements where it ran a short inner axis scalar (10 of
    a 10 x 10: J5's forward kernel took 38 against 65 µs). The same elements in the same
    order: the same bits. Other groups as they are, with ``out_nd`` None, and so a group whose
    results are not all C-ordered (one laid out as NumPy laid it out, :func:`_permuted`)."""
    shape = g.shape
    if len(shape) < 2 or not g.flat or (g.reduce is not None and len(g.axes) != len(shape)):
        return g, in_specs, [], None
    if any(sh and tuple(sh) != tuple(shape) and any(d != 1 for d in sh) for sh, _dt in in_specs):
        return g, in_specs, [], None
    prologue, flat_in = [], []
    for j, (sh, dt) in enumerate(in_specs):
        if sh:
            prologue.append(f"    a{j} = _flat(a{j})")
            sh = (math.prod(shape) if tuple(sh) == tuple(shape) else 1,)
        flat_in.append((sh, dt))
    n = math.prod(shape)
    flat = replace(g, shape=(n,), axes=(0,) if g.reduce else ())
    return flat, flat_in, prologue, len(shape)


def _scratch(nout: int, nin: int, nd: int, ordered_sum: bool, out_specs) -> bool:
    """Whether a kernel writes its ``nout`` elementwise results through a scratch array: when
    LLVM would need more than ALIAS_CHECKS_MAX run-time overlap checks between them and the
    ``nin`` input arrays, or a running sum in order (no reassociation) would stay in the loop."""
    if nout == 0 or nd == 0 or any(dt.kind != "f" for _s, dt in out_specs):
        return False
    return ordered_sum or nout * (nout - 1) // 2 + nout * nin > ALIAS_CHECKS_MAX


def _index(s: tuple, shape: tuple) -> str:
    """The index of an input of shape ``s`` broadcast to ``shape`` at (i0, i1, ...)."""
    if not s:
        return "()"
    off = len(shape) - len(s)
    idx = ["0" if n == 1 and shape[off + d] != 1 else f"i{off + d}" for d, n in enumerate(s)]
    return ", ".join(idx) + ("," if len(idx) == 1 else "")


_load_lock = threading.Lock()  # one kernel file written and imported at a time in a process


def _load(src: str):
    """The kernel of ``src``: from this process's modules, or from its file in the cache
    directory (written once; numba keeps the compiled code beside it). Threads tracing at
    once load one at a time; processes each write through a temporary file of their own."""
    h = hashlib.sha1(src.encode()).hexdigest()[:16]
    mod = _modules.get(h)
    if mod is not None:
        return mod.kernel
    with _load_lock:
        mod = _modules.get(h)
        if mod is None:
            d = cache_dir()
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"ngk_{h}.py"
            if not path.exists() or path.read_text() != src:
                tmp = d / f".ngk_{h}.{os.getpid()}.tmp"
                tmp.write_text(src)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(f"nodegrad_kernels.ngk_{h}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            _modules[h] = mod
    return mod.kernel


def traced_arg(prog, a: int):
    """Slot ``a``'s value at trace time, to compile a kernel for: a constant, the traced array
    (the same layout, so the same compilation as the replays'), else ones of its spec."""
    if a in prog.consts:
        return prog.consts[a]
    v = getattr(prog, "values", {}).get(a)
    if v is None:
        s, dt = prog.meta[a]
        v = prog.backend.xp.ones(s, dt)
    return v


def _warm(fn, prog, ins, results, layouts) -> None:
    """Compile (or load from disk) the kernel for the traced types now, at trace time."""
    xp = prog.backend.xp
    args = [_empty_laid_out(xp, prog.meta[s], layouts.get(s)) for s in results]
    fn(*(args + [traced_arg(prog, a) for a in ins]))


# --- CUDA: CuPy's ElementwiseKernel ---------------------------------------------------------
def _cupy_kernel(g: Group, body, results, in_specs, out_specs, nscalars):
    """An ElementwiseKernel computing the group (CuPy broadcasts the operands itself)."""
    cupy = B._import_cupy()
    t = g.dtype.name  # CuPy's parameter lists name NumPy dtypes ("float" would be float64)
    ins = [f"{'bool' if dt == B.bool_ else t} x{j}" for j, (_s, dt) in enumerate(in_specs)]
    ins += [f"{t} k{j}" for j in range(nscalars)] + [f"{t} c_zero", f"{t} c_one"]
    outs = [f"{'bool' if dt == B.bool_ else t} o{j}" for j, (_s, dt) in enumerate(out_specs)]
    lines = [f"auto {name} = {expr};" for name, expr in body]
    lines += [f"o{j} = {r};" for j, r in enumerate(results)]
    src = "\n".join(lines)
    k = cupy.ElementwiseKernel(", ".join(ins), ", ".join(outs), src,
                               "ng_" + hashlib.sha1(src.encode()).hexdigest()[:10])
    n = len(out_specs)

    def run(*args):
        k(*args[n:], *args[:n])

    return run, src


def _cupy_reduction(g: Group, body, summed, in_specs, out_spec, nscalars):
    """A ReductionKernel summing the group's member ``summed`` over ``g.axes`` in double
    precision: each element is computed by a device function and never written."""
    cupy = B._import_cupy()
    t, c = g.dtype.name, ("float" if g.dtype == B.float32 else "double")  # NumPy's name, C's
    kinds = [dt == B.bool_ for _s, dt in in_specs] + [False] * (nscalars + 2)
    types = ["bool" if k else t for k in kinds]  # the kernel's parameters: NumPy dtypes
    ctypes = ["bool" if k else c for k in kinds]  # the device function's: C types
    names = [f"x{j}" for j in range(len(in_specs))] + [f"k{j}" for j in range(nscalars)] + [
        "c_zero", "c_one"]
    lines = [f"    auto {name} = {expr};" for name, expr in body]
    h = hashlib.sha1(("\n".join(lines) + summed + ",".join(types)).encode()).hexdigest()[:10]
    preamble = (f"__device__ double ng_map_{h}("
                + ", ".join(f"{ty} {n}" for ty, n in zip(ctypes, names)) + ") {\n"
                + "\n".join(lines) + f"\n    return (double){summed};\n}}\n")
    k = cupy.ReductionKernel(
        ", ".join(f"{ty} {n}" for ty, n in zip(types, names)), f"{t} y",
        f"ng_map_{h}({', '.join(names)})", "a + b", f"y = ({c})a", "0", "ng_sum_" + h,
        reduce_type="double", preamble=preamble)
    keepdims = len(out_spec[0]) == len(g.shape)
    axes = g.axes

    def run(out, *args):
        k(*args, axis=axes, keepdims=keepdims, out=out)

    return run, preamble
