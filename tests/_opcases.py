"""The primitive test matrix: how to call each differentiable primitive, on which values, in
which shape layouts, and its PyTorch twin.

A :class:`Case` draws a :class:`Call` (the nodegrad function, its NumPy arguments and the same
computation in PyTorch) for one layout. ``calls`` adds the ``noncontig`` layout to every case:
the op then sees a strided, transposed view of a larger array whose other entries must get a
zero gradient. Values come from named domains that keep finite differences away from kinks,
poles and ties. The tests check that every differentiable primitive is named by some case and
that each case really records the primitives it names.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nodegrad as ng

P = ng.primitives


def drawn(max_examples: int):
    """Run a parametrised test's body under a fresh ``@given(data=st.data())`` for each item.

    The test takes ``data`` as its last argument; pytest supplies the others. Decorating the
    parametrised test itself with ``@given`` makes hypothesis's pytest plugin wrap the function's
    settings one level deeper for every item it runs, so past ~1,000 items (the op matrix) a
    settings lookup overflows the stack under a derandomised (CI) profile. A new inner function
    per item keeps that depth at one. ``database=None``: one inner function serves every item, so
    a stored example of one case must not be replayed into another."""

    def deco(test):
        sig = inspect.signature(test)

        @functools.wraps(test)
        def run(*args, **kwargs):
            @settings(max_examples=max_examples, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(data=st.data())
            def body(data):
                test(*args, data=data, **kwargs)

            body()

        run.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values()
                                                    if p.name != "data"])
        return run

    return deco


class _Lazy:
    """A module imported on first use: the gradcheck matrix never pays for importing torch."""

    def __init__(self, module: str):
        self._module = module

    def __getattr__(self, name):
        return getattr(importlib.import_module(self._module), name)


torch = _Lazy("torch")
F = _Lazy("torch.nn.functional")

BASE = ("scalar", "vector", "matrix", "3d", "size1", "empty")
UNARY = BASE + ("noncontig",)
NARY = UNARY + ("rank",)  # "rank": operands of different ranks, e.g. (4,) with (2, 3, 4)
ND = ("matrix", "3d", "size1", "empty", "noncontig")  # at least two dims

# Second-order checks run on these cases (by name); the matrix test keeps the list honest.
ORDER2 = ("multiply", "divide", "exp", "log", "tanh", "sigmoid", "softplus", "gelu",
          "gelu_tanh", "matmul", "logsumexp", "softmax", "log_softmax", "sum", "mean", "max",
          "getitem_repeat", "take_along_axis", "sliding_window_view", "concatenate", "pad",
          "einsum", "power", "linear")


@dataclass(frozen=True)
class Call:
    """One drawn instance: ``fn(*tensors)``, its NumPy ``args`` and ``torch_fn`` (or None)."""

    fn: Callable
    args: tuple
    torch_fn: Callable | None = None


@dataclass(frozen=True)
class Case:
    """How to test one primitive (or a composite that records it).

    ``build(draw, layout)`` returns a Call; ``prims`` are the primitives its graph must record;
    ``tol`` are extra gradcheck keywords. The noncontig layout views a "matrix" layout draw.
    """

    name: str
    prims: tuple
    build: Callable
    layouts: tuple = UNARY
    tol: dict = field(default_factory=dict)
    has_torch: bool = True


# --- values --------------------------------------------------------------------------------
def _f(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


DOMAINS = {
    "real": _f(-2, 2),
    "wide": _f(-3, 3),
    "pos": _f(0.2, 3),  # log, sqrt, the base of power
    "log1p": _f(-0.5, 3),
    "nonzero": st.one_of(_f(-2, -0.5), _f(0.5, 2)),  # divisors
    "tan": _f(-1.2, 1.2),  # away from the poles at +-pi/2
    "kink0": _f(-2, 2).filter(lambda v: abs(v) > 0.05),  # abs, relu, leaky_relu
    "softplus2": _f(-2, 2).filter(lambda v: abs(2 * v - 1.5) > 0.05),  # beta 2, threshold 1.5
    "grid": st.integers(-12, 12).map(lambda k: k / 4),  # dyadic: exact in float32
    "offgrid": st.integers(-12, 11).map(lambda k: k / 4 + 1 / 8),  # 1/8 away from "grid"
    # clip bounds: lo on "grid", hi 1/16 off it, so x, lo and hi never tie; they may cross
    "lo": st.integers(-4, 2).map(lambda k: k / 4),
    "hi": st.integers(-2, 6).map(lambda k: k / 4 + 1 / 16),
    # remainder: x = k + f and y in +-{1, 2, 4} keep x / y at least 0.05 from an integer
    "rem_x": st.builds(lambda k, f: k + f, st.integers(-4, 3), _f(0.2, 0.4)),
    "rem_y": st.sampled_from([-4.0, -2.0, -1.0, 1.0, 2.0, 4.0]),
}
DISTINCT = st.integers(-24, 24).map(lambda k: k / 8)  # max/min: no ties, 1/8 apart


def arr(draw, shape, domain="real"):
    """A float64 array (bool for ``"bool"``) of ``shape`` from a named domain."""
    shape = tuple(shape)
    if domain == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    if domain == "distinct":
        return draw(hnp.arrays(np.float64, shape, elements=DISTINCT, unique=True))
    return draw(hnp.arrays(np.float64, shape, elements=DOMAINS[domain]))


def index_array(draw, n, size, *, min_size=0, unique=False):
    """An int64 index array (negative entries too) of at most ``size`` entries into an axis of
    length ``n``; ``unique``: no position twice."""
    if n == 0:
        return np.zeros(0, np.int64)
    ints = st.lists(st.integers(-n, n - 1), min_size=min_size, max_size=size,
                    unique_by=(lambda i: i % n) if unique else None)
    return np.array(draw(ints), dtype=np.int64)


# --- shapes --------------------------------------------------------------------------------
@st.composite
def shapes(draw, layout, n=1):
    """``n`` mutually broadcastable operand shapes in ``layout``."""
    if layout == "scalar":
        return ((),) * n
    if layout == "vector":
        return ((draw(st.integers(1, 6)),),) * n
    if layout == "matrix":
        return ((draw(st.integers(1, 4)), draw(st.integers(1, 4))),) * n
    if layout == "3d":
        return (tuple(draw(st.integers(1, 3)) for _ in range(3)),) * n
    if layout == "empty":
        k = draw(st.integers(1, 3))
        full = draw(st.sampled_from([(0, k), (k, 0), (2, 0, k)]))
        others = tuple(tuple(1 if draw(st.booleans()) else s for s in full)
                       for _ in range(n - 1))
        return (full,) + others
    nd = draw(st.integers(2, 3))
    full = tuple(draw(st.integers(2, 3)) for _ in range(nd))
    if layout == "size1":
        if n == 1:
            ones = draw(st.sets(st.integers(0, nd - 1), min_size=1))
            return (tuple(1 if i in ones else s for i, s in enumerate(full)),)
        # (3, 1) with (1, 4): each axis stretched by one operand, broadcast in the other
        ones = draw(st.sets(st.integers(0, nd - 1), min_size=1, max_size=nd - 1))
        a = tuple(1 if i in ones else s for i, s in enumerate(full))
        b = tuple(s if i in ones else 1 for i, s in enumerate(full))
        rest = tuple(tuple(1 if draw(st.booleans()) else s for s in full) for _ in range(n - 2))
        return (a, b) + rest
    if layout == "rank":  # (4,) with (2, 3, 4), () with (2, 3), ...
        drops = [draw(st.integers(0, nd)) for _ in range(n)]
        keep = draw(st.integers(0, n - 1))
        drops[keep] = 0
        if max(drops) == 0:
            drops[(keep + 1) % n] = draw(st.integers(1, nd))
        return tuple(full[d:] for d in drops)
    raise ValueError(layout)


@st.composite
def axes(draw, shape, *, min_len=1, nonempty=False):
    """A reduction ``axis``: None, an int or a tuple (``()`` too unless ``nonempty``), only over
    axes of length >= ``min_len``."""
    nd = len(shape)
    ok = [i for i, s in enumerate(shape) if s >= min_len]
    kinds = ["tuple"] + (["int"] if ok else []) + (["none"] if len(ok) == nd else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "int":
        i = draw(st.sampled_from(ok))
        return i - nd if draw(st.booleans()) else i
    if not ok:
        return ()
    return tuple(draw(st.lists(st.sampled_from(ok), unique=True, min_size=int(nonempty))))


def tdims(axis, nd):
    """A nodegrad ``axis`` as a sorted tuple of non-negative torch dims."""
    if axis is None:
        return tuple(range(nd))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % nd for a in axis))


def tred(fn, t, axis, keepdim, **kw):
    """A torch reduction over ``axis``; over no axes it is the identity (torch would reduce
    everything)."""
    dims = tdims(axis, t.ndim)
    if not dims:
        return t * 1
    return fn(t, dim=dims, keepdim=keepdim, **kw)


# --- noncontiguous views -------------------------------------------------------------------
JUNK = 7.0  # where the view does not look; its gradient must be 0


def _embed(a):
    """``b`` with ``b[::2].T == a``: the op will see a strided, transposed view."""
    t = a.T
    b = np.full((2 * t.shape[0],) + t.shape[1:], JUNK)
    b[::2] = t
    return b


def noncontig(call: Call) -> Call:
    """The same computation with every float operand of rank >= 1 passed as a view."""
    flags = [a.dtype.kind == "f" and a.ndim > 0 for a in call.args]
    args = tuple(_embed(a) if f else a for a, f in zip(call.args, flags))

    def fn(*ts):
        return call.fn(*(ng.transpose(t[::2]) if f else t for t, f in zip(ts, flags)))

    tfn = None
    if call.torch_fn is not None:
        def tfn(*ts):
            return call.torch_fn(*(t[::2].permute(*reversed(range(t.ndim))) if f else t
                                   for t, f in zip(ts, flags)))
    return Call(fn, args, tfn)


@st.composite
def calls(draw, case: Case, layout: str):
    """A Call of ``case`` in ``layout``."""
    if layout == "noncontig":
        return noncontig(case.build(draw, "matrix"))
    return case.build(draw, layout)


def recorded(call: Call) -> set:
    """Names of the primitives recorded when ``call`` runs on inputs that require grad."""
    ins = [ng.Tensor(np.array(a), None, a.dtype.kind == "f") for a in call.args]
    out = call.fn(*ins)
    stack = [o.node for o in (out if isinstance(out, tuple | list) else [out])]
    seen, names = set(), set()
    while stack:
        n = stack.pop()
        if n is None or not isinstance(n, ng.autodiff.Node) or id(n) in seen:
            continue
        seen.add(id(n))
        names.add(n.prim.name)
        stack.extend(n.parents)
    return names


# --- case builders -------------------------------------------------------------------------
CASES: list[Case] = []


def case(name, build, prims=None, layouts=UNARY, **kw):
    CASES.append(Case(name, tuple(prims or (name,)), build, layouts, **kw))


def ew(name, fn, tfn, *domains, prims=None, tol=None):
    """An elementwise case: one operand per domain, broadcast together."""
    def build(draw, layout):
        shs = draw(shapes(layout, len(domains)))
        return Call(fn, tuple(arr(draw, s, d) for s, d in zip(shs, domains)), tfn)

    case(name, build, prims, UNARY if len(domains) == 1 else NARY, tol=tol or {})


# arithmetic
ew("add", lambda x, y: x + y, lambda x, y: x + y, "real", "real")
ew("subtract", lambda x, y: x - y, lambda x, y: x - y, "real", "real")
ew("multiply", lambda x, y: x * y, lambda x, y: x * y, "real", "real")
ew("divide", lambda x, y: x / y, lambda x, y: x / y, "real", "nonzero")
ew("power", lambda x, y: x ** y, lambda x, y: x ** y, "pos", "real")
ew("remainder", lambda x, y: x % y, lambda x, y: x % y, "rem_x", "rem_y")
ew("negative", lambda x: -x, lambda x: -x, "real")
# a Python number on either side
ew("subtract_scalar", lambda x: 1.5 - x, lambda x: 1.5 - x, "real", prims=("subtract",))
ew("divide_scalar", lambda y: 2.0 / y, lambda y: 2.0 / y, "nonzero", prims=("divide",))
ew("power_int", lambda x: x ** 3, lambda x: x ** 3, "real", prims=("power",))
ew("power_base", lambda x: 2.0 ** x, lambda x: 2.0 ** x, "real", prims=("power",))
# transcendental and activations
ew("exp", ng.exp, lambda x: x.exp(), "real")
ew("expm1", ng.expm1, lambda x: x.expm1(), "real")
ew("log", ng.log, lambda x: x.log(), "pos")
ew("log1p", ng.log1p, lambda x: x.log1p(), "log1p")
ew("sqrt", ng.sqrt, lambda x: x.sqrt(), "pos")
ew("square", ng.square, lambda x: x.square(), "real")
ew("abs", ng.abs, lambda x: x.abs(), "kink0")
ew("sin", ng.sin, lambda x: x.sin(), "wide")
ew("cos", ng.cos, lambda x: x.cos(), "wide")
ew("tan", ng.tan, lambda x: x.tan(), "tan")
ew("tanh", ng.tanh, lambda x: x.tanh(), "wide")
ew("erf", ng.erf, lambda x: torch.erf(x), "wide")
ew("sigmoid", ng.sigmoid, lambda x: x.sigmoid(), "wide")
ew("relu", ng.relu, lambda x: x.relu(), "kink0")
ew("leaky_relu", lambda x: ng.leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1), "kink0")
ew("leaky_relu_default", ng.leaky_relu, lambda x: F.leaky_relu(x), "kink0",
   prims=("leaky_relu",))
ew("softplus", ng.softplus, lambda x: F.softplus(x), "wide")
ew("softplus_beta", lambda x: ng.softplus(x, beta=2.0, threshold=1.5),
   lambda x: F.softplus(x, beta=2.0, threshold=1.5), "softplus2", prims=("softplus",))
ew("gelu", ng.gelu, lambda x: F.gelu(x), "wide")
ew("gelu_tanh", lambda x: ng.gelu(x, approximate="tanh"),
   lambda x: F.gelu(x, approximate="tanh"), "wide", prims=("gelu",))
# selection
ew("maximum", ng.maximum, lambda x, y: torch.maximum(x, y), "grid", "offgrid")
ew("minimum", ng.minimum, lambda x, y: torch.minimum(x, y), "offgrid", "grid")
ew("where", ng.where, lambda c, x, y: torch.where(c, x, y), "bool", "real", "real")
ew("where_scalar", lambda c, x: ng.where(c, x, 0.5), lambda c, x: torch.where(c, x, 0.5),
   "bool", "real", prims=("where",))
ew("clip_tensor", ng.clip,  # torch's clamp does not broadcast x against the bounds
   lambda x, lo, hi: torch.clamp(torch.broadcast_tensors(x, lo, hi)[0], lo, hi),
   "offgrid", "lo", "hi", prims=("clip",))
# identities: a copy, a cast, a device move, a transform's alias
ew("copy", ng.copy, lambda x: x.clone(), "real")
ew("alias", lambda x: P["alias"](x), lambda x: x.view_as(x), "real")
ew("to_device", lambda x: P["to_device"](x, dst="cpu", src="cpu"), lambda x: x.clone(), "real")
_EXACT = {"eps": 1 / 16}  # grid values +- 1/16 are exact in float32: differences are exact
ew("astype", lambda x: ng.astype(x, "float32"), lambda x: x.to(torch.float32), "grid",
   tol=_EXACT)
ew("astype_roundtrip", lambda x: ng.astype(ng.astype(x, "float32"), "float64"),
   lambda x: x.to(torch.float32).to(torch.float64), "grid", prims=("astype",), tol=_EXACT)


def _clip(draw, layout):
    (s,) = draw(shapes(layout))
    lo = draw(st.integers(-8, 0)) / 4
    hi = lo + draw(st.integers(1, 8)) / 4
    lo, hi = draw(st.sampled_from([(lo, hi), (lo, None), (None, hi)]))
    return Call(lambda x: ng.clip(x, lo, hi), (arr(draw, s, "offgrid"),),
                lambda x: torch.clamp(x, lo, hi))


case("clip", _clip)


# --- reductions ----------------------------------------------------------------------------
def reduction(name, fn, tfn, domain="real", min_len=1, **kw):
    """``fn(x, axis, keepdims)`` over drawn axes, with its torch twin ``tfn(t, dims, keep)``."""
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        axis = draw(axes(s, min_len=min_len))
        keep = draw(st.booleans())
        return Call(lambda x: fn(x, axis, keep), (arr(draw, s, domain),),
                    lambda t: tred(tfn, t, axis, keep))

    case(name, build, **kw)


reduction("sum", ng.sum, lambda t, **k: t.sum(**k), min_len=0)  # empty axes sum to 0
reduction("mean", ng.mean, lambda t, **k: t.mean(**k))
reduction("max", ng.max, lambda t, **k: t.amax(**k), "distinct")
reduction("min", ng.min, lambda t, **k: t.amin(**k), "distinct")
reduction("logsumexp", ng.logsumexp, lambda t, **k: t.logsumexp(**k), "wide", min_len=0)


def _moments(name, fn, tname):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        # an axis of length >= 2 to spread over (size1 keeps its length-1 axes)
        s = s[:-1] + (max(s[-1], 2),) if layout == "size1" else tuple(max(d, 2) for d in s)
        axis = draw(axes(s, min_len=2, nonempty=True))
        ddof, keep = draw(st.sampled_from([0, 1])), draw(st.booleans())
        return Call(lambda x: fn(x, axis, ddof=ddof, keepdims=keep),
                    (arr(draw, s, "distinct"),),
                    lambda t: tred(getattr(torch, tname), t, axis, keep, correction=ddof))

    case(name, build, ("mean", "sum", "subtract", "multiply", "divide"),
         ("vector", "matrix", "3d", "size1", "noncontig"))


_moments("var", ng.var, "var")
_moments("std", ng.std, "std")


def _softmax_like(name, fn, tname):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        axis = draw(st.integers(-len(s), len(s) - 1))
        return Call(lambda x: fn(x, axis), (arr(draw, s, "wide"),),
                    lambda t: getattr(torch, tname)(t, dim=axis))

    case(name, build, layouts=UNARY[1:])  # not 0-d: there is no axis


_softmax_like("softmax", ng.softmax, "softmax")
_softmax_like("log_softmax", ng.log_softmax, "log_softmax")


# --- shapes --------------------------------------------------------------------------------
def _reshape(draw, layout):
    (s,) = draw(shapes(layout))
    size = math.prod(s)
    target = draw(st.sampled_from([(1,) + s, s[::-1] + (1,),
                                   (1, -1) if s == (size,) else (-1,)]))
    return Call(lambda x: ng.reshape(x, target), (arr(draw, s),), lambda t: t.reshape(target))


def _transpose(draw, layout):
    (s,) = draw(shapes(layout))
    perm = draw(st.permutations(range(len(s))).filter(lambda p: list(p) != sorted(p)))
    return Call(lambda x: ng.transpose(x, perm), (arr(draw, s),), lambda t: t.permute(*perm))


def _stretched(draw, s):
    """``(2,) + s`` with every length-1 axis of ``s`` stretched."""
    return (2,) + tuple(draw(st.integers(1, 3)) if d == 1 else d for d in s)


def _broadcast_to(draw, layout):
    (s,) = draw(shapes(layout))
    big = _stretched(draw, s)
    return Call(lambda x: ng.broadcast_to(x, big), (arr(draw, s),), lambda t: t.expand(big))


def _sum_to(draw, layout):
    (s,) = draw(shapes(layout))
    big = _stretched(draw, s)
    return Call(lambda x: ng.sum_to(x, s), (arr(draw, big),), lambda t: t.sum_to_size(s))


def _flip(draw, layout):
    (s,) = draw(shapes(layout))
    axis = draw(axes(s, min_len=0))
    return Call(lambda x: ng.flip(x, axis), (arr(draw, s),),
                lambda t: torch.flip(t, tdims(axis, t.ndim)))


def _pad(draw, layout):
    (s,) = draw(shapes(layout))
    pw = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in s)
    value = draw(DOMAINS["real"])
    flat = [p for pair in reversed(pw) for p in pair]
    return Call(lambda x: ng.pad(x, pw, constant_values=value), (arr(draw, s),),
                lambda t: F.pad(t, flat, value=value))


def _joined(draw, layout, same):
    (s,) = draw(shapes(layout))
    k = draw(st.integers(1, 3))
    if same:
        axis = draw(st.integers(-len(s) - 1, len(s)))
        return axis, tuple(arr(draw, s) for _ in range(k))
    axis = draw(st.integers(-len(s), len(s) - 1))
    return axis, tuple(arr(draw, s[:axis % len(s)] + (draw(st.integers(0, 3)),)
                           + s[axis % len(s) + 1:]) for _ in range(k))


def _concatenate(draw, layout):
    axis, xs = _joined(draw, layout, same=False)
    return Call(lambda *ts: ng.concatenate(ts, axis), xs, lambda *ts: torch.cat(ts, axis))


def _stack(draw, layout):
    axis, xs = _joined(draw, layout, same=True)
    return Call(lambda *ts: ng.stack(ts, axis), xs, lambda *ts: torch.stack(ts, axis))


def _split(draw, layout):
    (s,) = draw(shapes(layout))
    axis = draw(st.integers(-len(s), len(s) - 1))
    n = s[axis]
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
    if n and draw(st.booleans()):
        cuts = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    return Call(lambda x: tuple(ng.split(x, cuts, axis)), (arr(draw, s),))


case("reshape", _reshape)
case("transpose", _transpose, layouts=ND)
case("broadcast_to", _broadcast_to)
case("sum_to", _sum_to)
case("flip", _flip)
case("pad", _pad)
case("concatenate", _concatenate, layouts=UNARY[1:])
case("stack", _stack, ("concatenate", "reshape"))
case("split", _split, ("getitem",), UNARY[1:], has_torch=False)


# --- indexing ------------------------------------------------------------------------------
def _tix(index):
    """A NumPy index tuple with its arrays as torch tensors."""
    return tuple(torch.as_tensor(i) if isinstance(i, np.ndarray) else i for i in index)


@st.composite
def basic_index(draw, shape):
    """Ints, slices (negative steps too), None and Ellipsis."""
    idx = []
    for n in shape:
        kind = draw(st.sampled_from(["all", "int", "slice"] if n else ["all", "slice"]))
        if kind == "int":
            idx.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-n - 1, n + 1)
            idx.append(slice(draw(bound), draw(bound), draw(st.sampled_from([None, 2, -1, -2]))))
        else:
            idx.append(slice(None))
    if idx and draw(st.booleans()):
        idx[:draw(st.integers(1, len(idx)))] = [Ellipsis]
    if draw(st.booleans()):
        idx.insert(draw(st.integers(0, len(idx))), None)
    return tuple(idx)


def _getitem_basic(draw, layout):
    (s,) = draw(shapes(layout))
    index = draw(basic_index(s))
    return Call(lambda x: x[index], (arr(draw, s),))


def _getitem_repeat(draw, layout):
    """An int array along one axis, with repeats (and negative indices): gradients add up."""
    (s,) = draw(shapes(layout))
    if not s:
        s = (draw(st.integers(1, 4)),)
    ax = draw(st.integers(0, len(s) - 1))
    i = index_array(draw, s[ax], 6, min_size=2 if s[ax] else 0)
    if s[ax]:
        i[-1] = i[0]  # at least one repeat
    index = (slice(None),) * ax + (i,)
    return Call(lambda x: x[index], (arr(draw, s),), lambda t: t[_tix(index)])


def _getitem_mask(draw, layout):
    (s,) = draw(shapes(layout))
    k = draw(st.integers(1, max(len(s), 1))) if s else 0
    mask = draw(hnp.arrays(np.bool_, s[:k]))
    return Call(lambda x: x[mask], (arr(draw, s),), lambda t: t[torch.as_tensor(mask)])


def _getitem_mixed(draw, layout):
    """Two broadcasting int arrays, or a slice then an array (NumPy's mixed rules)."""
    (s,) = draw(shapes(layout))
    a, b = s[0], s[1]
    i = index_array(draw, a, 4).reshape(-1, 1) if a else np.zeros((0, 1), np.int64)
    j = index_array(draw, b, 3, min_size=1 if b else 0)
    index = draw(st.sampled_from([(i, j), (slice(None, None, 2), j), (i[:, 0], slice(1, None))]))
    return Call(lambda x: x[index], (arr(draw, s),), lambda t: t[_tix(index)])


def _scatter_add(draw, layout):
    """The gather's adjoint called directly: repeats add up; v may broadcast."""
    (s,) = draw(shapes(layout))
    if not s:
        s = (draw(st.integers(1, 4)),)
    i = index_array(draw, s[0], 5)
    vs = (len(i),) + s[1:]
    vs = draw(st.sampled_from([vs, vs[1:], (1,) + vs[1:]]))
    return Call(lambda v: P["scatter_add"](v, index=(i,), shape=s), (arr(draw, vs),),
                lambda v: torch.zeros(s, dtype=v.dtype).index_put((torch.as_tensor(i),), v,
                                                                  accumulate=True))


def _setitem(draw, layout):
    """Functional x[index] = v with a broadcasting v (advanced indices do not repeat)."""
    (s,) = draw(shapes(layout))
    if not s:
        s = (draw(st.integers(1, 4)),)
    if draw(st.booleans()):
        index = tuple(draw(basic_index(s)))
    else:
        index = (index_array(draw, s[0], 4, unique=True),)
    target = np.empty(s)[index].shape
    vs = target[draw(st.integers(0, len(target))):]
    vs = tuple(1 if draw(st.booleans()) else d for d in vs)

    def tfn(x, v):
        out = x.clone()
        out[_tix(index)] = v
        return out

    return Call(lambda x, v: ng.index_update(x, index, v), (arr(draw, s), arr(draw, vs)),
                None if any(isinstance(i, slice) and (i.step or 1) < 0 for i in index) else tfn)


def _take_along(draw, layout, bcast=False):
    (s,) = draw(shapes(layout))
    ax = draw(st.integers(-len(s), len(s) - 1))
    n = s[ax]
    k = draw(st.integers(0, 4)) if n else 0
    ishape = list(s)
    ishape[ax] = k
    xshape = list(s)
    if bcast:  # size-1 axes of x or of the indices broadcast against the other
        for d in range(len(s)):
            if d != ax % len(s) and draw(st.booleans()):
                (xshape if draw(st.booleans()) else ishape)[d] = 1
    idx = draw(hnp.arrays(np.int64, ishape, elements=st.integers(0, max(n - 1, 0))))
    tf = ((lambda t, i: torch.take_along_dim(t, i, dim=ax)) if bcast
          else (lambda t, i: torch.gather(t, ax, i)))
    return Call(lambda x, i: ng.take_along_axis(x, i, ax), (arr(draw, xshape), idx), tf)


def _scatter_along(draw, layout):
    (s,) = draw(shapes(layout))
    ax = draw(st.integers(0, len(s) - 1))
    ishape = list(s)
    ishape[ax] = draw(st.integers(0, 4)) if s[ax] else 0
    idx = draw(hnp.arrays(np.int64, ishape, elements=st.integers(0, max(s[ax] - 1, 0))))
    return Call(lambda v, i: P["scatter_add_along_axis"](v, i, axis=ax, shape=s),
                (arr(draw, ishape), idx),
                lambda v, i: torch.zeros(s, dtype=v.dtype).scatter_add(ax, i, v))


case("getitem_basic", _getitem_basic, ("getitem",), has_torch=False)  # torch: no negative steps
case("getitem_repeat", _getitem_repeat, ("getitem",))
case("getitem_mask", _getitem_mask, ("getitem",))
case("getitem_mixed", _getitem_mixed, ("getitem",), ND)
case("scatter_add", _scatter_add)
case("setitem", _setitem)
case("take_along_axis", _take_along, layouts=UNARY[1:])
case("take_along_axis_bcast", lambda d, lay: _take_along(d, lay, True), ("take_along_axis",),
     ND)
case("scatter_add_along_axis", _scatter_along, layouts=UNARY[1:])


# --- products ------------------------------------------------------------------------------
def _matmul(draw, layout):
    m, n, p, b, c = (draw(st.integers(1, 3)) for _ in range(5))
    if layout == "vector":
        opts = [((n,), (n,)), ((n,), (n, p)), ((m, n), (n,))]
    elif layout == "matrix":
        opts = [((m, n), (n, p))]
    elif layout == "3d":
        opts = [((b, m, n), (b, n, p))]
    elif layout == "size1":  # batch axes broadcast
        opts = [((b, 1, m, n), (c, n, p)), ((1, m, n), (b, n, p))]
    elif layout == "rank":  # a shared matrix or a vector against a batch
        opts = [((b, m, n), (n, p)), ((m, n), (b, n, p)), ((b, m, n), (n,)), ((n,), (b, n, p))]
    else:  # empty
        opts = [((0, n), (n, p)), ((m, 0), (0, p)), ((b, 0, n), (n, p)), ((0,), (0, p))]
    sa, sb = draw(st.sampled_from(opts))
    return Call(ng.matmul, (arr(draw, sa), arr(draw, sb)), torch.matmul)


case("matmul", _matmul, layouts=("vector", "matrix", "3d", "size1", "rank", "empty",
                                 "noncontig"))



def _linear(draw, layout):
    i, o, b, c = (draw(st.integers(1, 3)) for _ in range(4))
    lead = {"vector": (), "matrix": (b,), "3d": (b, c), "empty": (0,)}[layout]
    x, w = arr(draw, lead + (i,)), arr(draw, (o, i))
    if draw(st.booleans()):
        return Call(ng.linear, (x, w, arr(draw, (o,))), torch.nn.functional.linear)
    return Call(ng.linear, (x, w), torch.nn.functional.linear)


case("linear", _linear, layouts=("vector", "matrix", "3d", "empty"))

# subscripts, and operand shapes as letters (an upper-case letter is an axis of length 1)
EINSUM = {
    "scalar": [(",->", ["", ""]), ("i,->i", ["i", ""])],
    "vector": [("i,i->", None), ("i,j->ij", None), ("i->", None), ("i", None)],
    "matrix": [("ij,jk->ik", None), ("ij->ji", None), ("ij,ij->i", None), ("ij,j", None),
               ("ij,kj->ik", None)],
    "3d": [("bij,bjk->bik", None), ("ijk->k", None), ("ijk,kl->lji", None),
           ("ij,jk,kl->il", None)],
    "size1": [("...ij,...jk->...ik", ["xYij", "yjk"]), ("...i,...i->...", ["Xi", "yi"])],
    "rank": [("...ij,jk->...ik", ["xyij", "jk"]), ("i,...i->...", ["i", "xi"])],
    "empty": [("ij,jk->ik", None), ("ijk->k", None), ("bij,bjk->bik", None)],
}


def _einsum(draw, layout):
    subs, terms = draw(st.sampled_from(EINSUM[layout]))
    terms = terms or subs.split("->")[0].split(",")
    sizes = {c: draw(st.integers(1, 3)) for c in set("".join(terms))}
    if layout == "empty":
        sizes[draw(st.sampled_from(sorted(sizes)))] = 0
    ops = tuple(arr(draw, [1 if c.isupper() else sizes[c] for c in t]) for t in terms)
    return Call(lambda *ts: ng.einsum(subs, *ts), ops, lambda *ts: torch.einsum(subs, *ts))


case("einsum", _einsum, layouts=NARY)


# --- windows -------------------------------------------------------------------------------
@st.composite
def windows(draw, layout):
    """(x shape, window, axes, stride, dilation) with every window fitting."""
    (s,) = draw(shapes(layout))
    s = list(s) if s else [draw(st.integers(1, 4))]
    m = draw(st.integers(1, min(2, len(s))))
    ax = tuple(draw(st.permutations(range(len(s))))[:m])
    window, stride, dil = [], [], []
    for a in ax:
        k, st_, d = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        s[a] = max(s[a], d * (k - 1) + 1) + draw(st.integers(0, 2)) if s[a] else d * (k - 1) + 1
        window.append(k), stride.append(st_), dil.append(d)
    return tuple(s), tuple(window), ax, tuple(stride), tuple(dil)


def _twindows(t, window, ax, stride, dil):
    for k, a, s, d in zip(window, ax, stride, dil):
        t = t.unfold(a, d * (k - 1) + 1, s)
    return t[(Ellipsis,) + tuple(slice(None, None, d) for d in dil)]


def _sliding(draw, layout):
    s, window, ax, stride, dil = draw(windows(layout))
    return Call(lambda x: ng.sliding_window_view(x, window, ax, stride=stride, dilation=dil),
                (arr(draw, s),), lambda t: _twindows(t, window, ax, stride, dil))


def _fold(draw, layout):
    """The windows' adjoint called directly: overlapping windows add up."""
    s, window, ax, stride, dil = draw(windows(layout))
    ws = list(s)
    for a, k, st_, d in zip(ax, window, stride, dil):
        ws[a] = (s[a] - d * (k - 1) - 1) // st_ + 1
    ws = tuple(ws) + window
    return Call(lambda v: P["fold"](v, axes=ax, window=window, stride=stride, dilation=dil,
                                    shape=s), (arr(draw, ws),))


case("sliding_window_view", _sliding)
case("fold", _fold, has_torch=False)


# --- linear algebra (ng.linalg) ------------------------------------------------------------
# Well-conditioned draws: A/2 + (n + 1) I for general square matrices (diagonally dominant),
# X Xᵀ + n I for SPD ones (read through sym(), as the symmetric-input rules assume), a spread
# diagonal (10, 20, ...) added for eigen- and singular values far apart. Eigen- and singular
# vectors are signed by their diagonal entries in both libraries (LAPACK's signs are free).
LA = ng.linalg
LINALG = ("matrix", "3d", "size1", "empty", "noncontig")


def _batch(draw, layout):
    """Leading batch axes of one operand for a linalg layout."""
    return {"matrix": (), "3d": (draw(st.integers(1, 3)),), "size1": (1, draw(st.integers(2, 3))),
            "empty": (0,)}[layout]


def _wellcond(draw, lead, n):
    return arr(draw, lead + (n, n)) * 0.5 + (n + 1) * np.eye(n)


def _spd(draw, lead, n):
    x = arr(draw, lead + (n, n))
    return x @ np.swapaxes(x, -1, -2) + n * np.eye(n)


def _spread(m, n, descending=False):
    """10, 20, ... on the diagonal (descending: largest first, as singular values come)."""
    d = np.zeros((m, n))
    k = min(m, n)
    v = 10.0 * np.arange(1, k + 1)
    d[range(k), range(k)] = v[::-1] if descending else v
    return d


def _spread_like(a):
    """_spread for a nodegrad or torch tensor, in its dtype."""
    d = _spread(*a.shape[-2:])
    return d.astype(a.dtype) if isinstance(a, ng.Tensor) else torch.as_tensor(d, dtype=a.dtype)


def _sym(t):
    return (t + t.swapaxes(-1, -2)) * 0.5


def _tsym(t):
    return (t + t.transpose(-1, -2)) * 0.5


def _flatcat(*ts):
    """One flat tensor from several outputs (compare_with_torch compares one)."""
    return ng.concatenate([t.reshape(-1) for t in ts])


def _tflatcat(*ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _signed(u, vh=None):
    """Columns of u (rows of vh) times the sign of u's diagonal; nodegrad or torch tensors."""
    k = min(u.shape[-2], u.shape[-1])
    d = (ng.einsum("...ii->...i", u[..., :k, :k]) if isinstance(u, ng.Tensor)
         else u.diagonal(0, -2, -1)[..., :k])
    sg = ng.sign(d) if isinstance(u, ng.Tensor) else torch.sign(d).detach()
    su = u[..., :k] * sg[..., None, :]
    return su if vh is None else (su, vh[..., :k, :] * sg[..., :, None])


def _la1(name, fn, tfn, make, prims=None, layouts=LINALG, nmin=1, **kw):
    """A one-matrix op on ``make(draw, lead, n)``."""
    def build(draw, layout):
        n = draw(st.integers(nmin, 4))
        return Call(fn, (make(draw, _batch(draw, layout), n),), tfn)

    case(name, build, prims or (name,), layouts, **kw)


_la1("inv", LA.inv, torch.linalg.inv, _wellcond)
_la1("det", LA.det, torch.linalg.det, _wellcond)
_la1("slogdet", lambda a: LA.slogdet(a).logabsdet, lambda a: torch.linalg.slogdet(a)[1],
     lambda d, lead, n: _wellcond(d, lead, n) * np.sign(d(st.integers(-1, 0)) + 0.5))
_la1("matrix_exp", LA.matrix_exp, torch.linalg.matrix_exp, lambda d, lead, n: arr(d, lead + (n, n)),
     ("matmul",))
_la1("cholesky", lambda a: LA.cholesky(_sym(a)), lambda a: torch.linalg.cholesky(_tsym(a)), _spd)
_la1("cholesky_upper", lambda a: LA.cholesky(_sym(a), upper=True),
     lambda a: torch.linalg.cholesky(_tsym(a), upper=True), _spd, ("cholesky",))
_la1("eigvalsh", lambda a: LA.eigvalsh(_sym(a) + _spread_like(a)),
     lambda a: torch.linalg.eigvalsh(_tsym(a) + _spread_like(a)),
     lambda d, lead, n: arr(d, lead + (n, n)))
_la1("eigh", lambda a: _flatcat(*_eigh(LA.eigh, a, False)),
     lambda a: _tflatcat(*_eigh(torch.linalg.eigh, a, True)),
     lambda d, lead, n: arr(d, lead + (n, n)))
_la1("eigh_upper", lambda a: LA.eigh(_sym(a) + _spread_like(a), UPLO="U").eigenvalues,
     lambda a: torch.linalg.eigh(_tsym(a) + _spread_like(a), UPLO="U").eigenvalues,
     lambda d, lead, n: arr(d, lead + (n, n)), ("eigh",))


def _eigh(f, a, is_torch):
    s = (a + a.transpose(-1, -2)) * 0.5 if is_torch else _sym(a)
    w, v = f(s + _spread_like(a))
    return w, _signed(v)


def _rect(draw, lead, m, n):
    return arr(draw, lead + (m, n)) * 0.5 + _spread(m, n, descending=True)


def _la_rect(name, fn, tfn, prims=None, layouts=LINALG, **kw):
    def build(draw, layout):
        m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        return Call(fn, (_rect(draw, _batch(draw, layout), m, n),), tfn)

    case(name, build, prims or (name,), layouts, **kw)


_la_rect("qr", lambda a: _flatcat(*LA.qr(a)), lambda a: _tflatcat(*torch.linalg.qr(a)))
_la_rect("qr_complete_wide", lambda a: _flatcat(*LA.qr(a.swapaxes(-1, -2) if a.shape[-2] >
                                                       a.shape[-1] else a, mode="complete")),
         lambda a: _tflatcat(*torch.linalg.qr(a.transpose(-1, -2) if a.shape[-2] > a.shape[-1]
                                              else a, mode="complete")), ("qr",))
_la_rect("svd", lambda a: _flatcat(*_svd(LA.svd(a, full_matrices=False))),
         lambda a: _tflatcat(*_svd(torch.linalg.svd(a, full_matrices=False))))
_la_rect("svd_full", lambda a: _flatcat(*_svd(LA.svd(a))),
         lambda a: _tflatcat(*_svd(torch.linalg.svd(a))), ("svd",))
_la_rect("svdvals", LA.svdvals, torch.linalg.svdvals)
_la_rect("pinv", LA.pinv, torch.linalg.pinv)


def _svd(res):
    u, s, vh = res
    k = s.shape[-1]  # full_matrices: the extra columns are not unique and get no gradient
    u, vh = _signed(u[..., :k], vh[..., :k, :])
    return u, s, vh


def _solve(draw, layout, vector=False):
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    la = lb = _batch(draw, layout)
    if layout == "size1":  # (1, b, n, n) against (b, n, k): batch axes broadcast
        lb = la[1:]
    a = _wellcond(draw, la, n)
    b = arr(draw, lb + ((n,) if vector else (n, k)))
    if vector:
        b = arr(draw, la + (n,))
    return Call(LA.solve, (a, b), torch.linalg.solve)


def _solve_left(draw, layout):
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    lead = _batch(draw, layout)
    return Call(lambda a, b: LA.solve(a, b, left=False), (_wellcond(draw, lead, n),
                arr(draw, lead + (k, n))), lambda a, b: torch.linalg.solve(a, b, left=False))


def _solve_tri(draw, layout):
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    up, left, unit = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    lead = _batch(draw, layout)
    b = arr(draw, lead + ((n, k) if left else (k, n)))
    kw = dict(upper=up, left=left, unitriangular=unit)
    return Call(lambda a, b: LA.solve_triangular(a, b, **kw), (_wellcond(draw, lead, n), b),
                lambda a, b: torch.linalg.solve_triangular(a, b, **kw))


def _cho_solve(draw, layout):
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    lead, up = _batch(draw, layout), draw(st.booleans())
    return Call(lambda a, b: LA.cholesky_solve(b, LA.cholesky(_sym(a), upper=up), upper=up),
                (_spd(draw, lead, n), arr(draw, lead + (n, k))),
                lambda a, b: torch.cholesky_solve(b, torch.linalg.cholesky(_tsym(a), upper=up),
                                                  upper=up))


def _tri_solve(draw, layout):
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    lead, up, tr = _batch(draw, layout), draw(st.booleans()), draw(st.booleans())
    return Call(lambda b, a: LA.triangular_solve(b, a, up, tr)[0],
                (arr(draw, lead + (n, k)), _wellcond(draw, lead, n)),
                lambda b, a: torch.linalg.solve_triangular(a.mT if tr else a, b,
                                                           upper=up != tr))


def _lstsq(draw, layout):
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    m = n + draw(st.integers(0, 2))
    lead = _batch(draw, layout)
    return Call(lambda a, b: LA.lstsq(a, b).solution, (_rect(draw, lead, m, n),
                arr(draw, lead + (m, k))), lambda a, b: torch.linalg.lstsq(a, b).solution)


def _mpow(draw, layout):
    n, p = draw(st.integers(1, 4)), draw(st.sampled_from([-2, 2, 3, 4]))
    return Call(lambda a: LA.matrix_power(a, p),
                (_wellcond(draw, _batch(draw, layout), n) / (n + 1),),
                lambda a: torch.linalg.matrix_power(a, p))


def _cross(draw, layout):
    (s,) = draw(shapes("3d" if layout == "size1" else layout))
    s = s if layout != "scalar" else ()
    s = s + (3,)
    t = tuple(1 if layout == "size1" and draw(st.booleans()) else d for d in s[:-1]) + (3,)
    dim = draw(st.sampled_from([-1, len(s) - 1]))
    return Call(lambda a, b: LA.cross(a, b, dim=dim), (arr(draw, s), arr(draw, t)),
                lambda a, b: torch.linalg.cross(a, b, dim=dim))


def _multi_dot(draw, layout):
    k = draw(st.integers(2, 4))
    dims = [draw(st.integers(0 if layout == "empty" else 1, 4)) for _ in range(k + 1)]
    shs = [(dims[i], dims[i + 1]) for i in range(k)]
    if draw(st.booleans()):
        shs[0] = shs[0][1:]
    if draw(st.booleans()):
        shs[-1] = shs[-1][:1]
    return Call(lambda *ts: LA.multi_dot(ts), tuple(arr(draw, s) for s in shs),
                lambda *ts: torch.linalg.multi_dot(ts))


def _det_singular(draw, layout):
    """A repeated column: det is 0 and its gradient the (finite) cofactor matrix. PyTorch 2.13
    returns 0 there, so this case checks against finite differences only."""
    n = draw(st.integers(2, 4))
    a = _wellcond(draw, _batch(draw, layout), n)
    a[..., -1] = a[..., 0]
    return Call(LA.det, (a,))


case("solve", _solve, layouts=LINALG)
case("solve_vector", lambda d, lay: _solve(d, lay, True), ("solve",), LINALG)
case("solve_left_false", _solve_left, ("solve",), LINALG)
case("solve_triangular", _solve_tri, layouts=LINALG)
case("cholesky_solve", _cho_solve, ("cholesky", "solve_triangular"), LINALG)
case("triangular_solve", _tri_solve, ("solve_triangular",), LINALG)
case("lstsq", _lstsq, ("pinv", "matmul"), LINALG)
case("matrix_power", _mpow, ("matmul",), LINALG)
case("cross", _cross, ("multiply", "subtract", "getitem"), ("vector", "matrix", "3d", "size1",
                                                            "empty", "noncontig"))
case("multi_dot", _multi_dot, ("matmul",), ("matrix", "empty"))
case("det_singular", _det_singular, ("det",), ("matrix", "3d", "noncontig"), has_torch=False)
EINSUM["matrix"] += [("ii->i", None), ("ii", None), ("ij,jj->i", None)]
EINSUM["3d"] += [("iij->j", None), ("ijj->ij", None)]
EINSUM["empty"] += [("ii->i", None)]
ORDER2 = ORDER2 + ("inv", "solve", "det", "slogdet", "cholesky", "solve_triangular", "eigh",
                   "eigvalsh", "qr", "svd", "svdvals", "pinv", "matrix_exp", "det_singular")


# --- distances and losses (nn.functional) --------------------------------------------------
# Kinks kept away from the draws: differences of "offgrid" and "grid" values are never 0, and
# margins (0.3, 0.7) are off the quarter grid that sums of such values lie on.
NF = ng.nn.functional
LOSS = ("vector", "matrix", "empty", "noncontig")
_REDS = st.sampled_from(["mean", "sum", "none"])


def _rows(draw, layout, d_min=1):
    """(N, D) for matrix/noncontig, (D,) for vector, (0, D) for empty."""
    d = draw(st.integers(d_min, 4))
    return {"vector": (d,), "matrix": (draw(st.integers(1, 4)), d), "empty": (0, d)}[layout]


def _pair_loss(name, fn, tfn, prims, extra=None, layouts=LOSS, d1="offgrid", d2="grid"):
    """``fn(x1, x2, **kw)`` on two row batches (and an optional third operand)."""
    def build(draw, layout):
        s = _rows(draw, layout)
        kw = draw(extra) if extra is not None else {}
        return Call(lambda a, b: fn(a, b, **kw), (arr(draw, s, d1), arr(draw, s, d2)),
                    lambda a, b: tfn(a, b, **kw))

    case(name, build, prims, layouts)


_pair_loss("cosine_similarity", lambda a, b, dim: NF.cosine_similarity(a, b, dim=dim),
           lambda a, b, dim: F.cosine_similarity(a, b, dim=dim), ("sqrt", "divide"),
           st.fixed_dictionaries({"dim": st.sampled_from([-1, 0])}), d2="nonzero")
_pair_loss("pairwise_distance", NF.pairwise_distance, F.pairwise_distance, ("sum",),
           st.fixed_dictionaries({"p": st.sampled_from([1.0, 2.0, 3.0]),
                                  "keepdim": st.booleans()}))
_pair_loss("soft_margin_loss", lambda a, b, reduction: NF.soft_margin_loss(a, ng.sign(b),
           reduction=reduction), lambda a, b, reduction: F.soft_margin_loss(
               a, b.sign().detach(), reduction=reduction), ("softplus",),
           st.fixed_dictionaries({"reduction": _REDS}), d2="nonzero")
_pair_loss("multilabel_soft_margin_loss", lambda a, b, reduction: NF.multilabel_soft_margin_loss(
    a, (b > 0).astype(a.dtype), reduction=reduction),
    lambda a, b, reduction: F.multilabel_soft_margin_loss(a, (b > 0).to(a.dtype),
                                                          reduction=reduction),
    ("softplus",), st.fixed_dictionaries({"reduction": _REDS}), layouts=("matrix", "noncontig"),
    d1="wide", d2="nonzero")
_pair_loss("margin_ranking_loss", lambda a, b, reduction: NF.margin_ranking_loss(
    a, b, ng.sign(a - b + 0.01), 0.3, reduction), lambda a, b, reduction: F.margin_ranking_loss(
        a, b, (a - b + 0.01).sign().detach(), 0.3, reduction=reduction), ("relu",),
    st.fixed_dictionaries({"reduction": _REDS}))
_pair_loss("hinge_embedding_loss", lambda a, b, reduction: NF.hinge_embedding_loss(
    a, ng.sign(b), 0.7, reduction), lambda a, b, reduction: F.hinge_embedding_loss(
        a, b.sign(), 0.7, reduction=reduction), ("relu", "where"),
    st.fixed_dictionaries({"reduction": _REDS}), d2="nonzero")


def _poisson(draw, layout):
    """Counts as a constant target (the Stirling term of ``full`` jumps at target 1)."""
    s = _rows(draw, layout)
    t = draw(hnp.arrays(np.int64, s, elements=st.integers(0, 5))).astype(np.float64)
    kw = {"log_input": draw(st.booleans()), "full": draw(st.booleans()),
          "reduction": draw(_REDS)}
    return Call(lambda x: NF.poisson_nll_loss(x, ng.tensor(t).astype(x.dtype), **kw),
                (arr(draw, s, "pos"),),
                lambda x: F.poisson_nll_loss(x, torch.as_tensor(t, dtype=x.dtype), **kw))


case("poisson_nll_loss", _poisson, ("multiply",), LOSS)
_pair_loss("gaussian_nll_loss", lambda a, v, **kw: NF.gaussian_nll_loss(a, a * 0 + 0.5, v, **kw),
           lambda a, v, **kw: F.gaussian_nll_loss(a, a.detach() * 0 + 0.5, v, **kw),
           ("log", "divide"), st.fixed_dictionaries({"full": st.booleans(),
                                                     "reduction": _REDS}), d2="pos")


def _cos_embed(draw, layout):
    s = _rows(draw, layout)
    y = np.where(draw(hnp.arrays(np.bool_, s[:-1])), 1, -1).astype(np.int64)
    red = draw(_REDS)
    return Call(lambda a, b: NF.cosine_embedding_loss(a, b, ng.tensor(y), 0.2, red),
                (arr(draw, s, "offgrid"), arr(draw, s, "nonzero")),
                lambda a, b: F.cosine_embedding_loss(a, b, torch.as_tensor(y), 0.2,
                                                     reduction=red))


def _triplet(draw, layout):
    s = _rows(draw, layout)
    kw = {"p": draw(st.sampled_from([1.0, 2.0])), "swap": draw(st.booleans()),
          "reduction": draw(_REDS), "margin": 0.7}
    return Call(lambda a, p, n: NF.triplet_margin_loss(a, p, n, **kw),
                (arr(draw, s, "offgrid"), arr(draw, s, "grid"), arr(draw, s, "grid") + 1 / 16),
                lambda a, p, n: F.triplet_margin_loss(a, p, n, **kw))


def _multi_margin(draw, layout):
    s = _rows(draw, layout, d_min=2)
    t = draw(hnp.arrays(np.int64, s[:-1], elements=st.integers(0, s[-1] - 1)))
    w = arr(draw, (s[-1],), "pos")
    kw = {"p": draw(st.sampled_from([1, 2])), "margin": 0.7, "reduction": draw(_REDS)}
    return Call(lambda x: NF.multi_margin_loss(x, ng.tensor(t), weight=ng.tensor(w).astype(
        x.dtype), **kw), (arr(draw, s, "offgrid"),),
                lambda x: F.multi_margin_loss(x, torch.as_tensor(t), weight=torch.as_tensor(
                    w, dtype=x.dtype), **kw))


def _cdist(draw, layout):
    m, p, r = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lead = {"matrix": (), "3d": (draw(st.integers(1, 2)),), "empty": (0,)}[layout]
    pn = draw(st.sampled_from([1.0, 2.0, 3.0]))
    return Call(lambda a, b: NF.cdist(a, b, p=pn), (arr(draw, lead + (p, m), "offgrid"),
                arr(draw, lead + (r, m), "grid")), lambda a, b: torch.cdist(a, b, p=pn))


def _ctc(draw, layout):
    """Logits → log_softmax → CTC (PyTorch's CTC gradient assumes log-softmax inputs)."""
    t, c = draw(st.integers(1, 6)), draw(st.integers(2, 4))
    n = None if layout == "matrix" else draw(st.integers(1, 3))
    nn_ = n or 1
    in_len = np.array([draw(st.integers(0 if n else t, t)) for _ in range(nn_)])
    tg_len = np.array([draw(st.integers(0, max((k - 1) // 2, 0))) for k in in_len])
    s_max = max(int(tg_len.max()), 1)
    tg = draw(hnp.arrays(np.int64, (nn_, s_max), elements=st.integers(1, c - 1)))
    red = draw(_REDS)
    if n is None:
        args = (tg[0, :tg_len[0]], int(in_len[0]), int(tg_len[0]))
        shape = (t, c)
    else:
        args = (tg, in_len, tg_len)
        shape = (t, n, c)
    return Call(lambda x: NF.ctc_loss(ng.log_softmax(x, axis=-1), *(ng.tensor(a) for a in args),
                                      reduction=red),
                (arr(draw, shape, "wide"),),
                lambda x: F.ctc_loss(x.log_softmax(-1), *(torch.as_tensor(a) for a in args),
                                     reduction=red))


case("cosine_embedding_loss", _cos_embed, ("sqrt", "relu"), ("vector", "matrix", "noncontig"))
case("triplet_margin_loss", _triplet, ("relu", "sum"), LOSS)
case("multi_margin_loss", _multi_margin, ("relu", "take_along_axis"), ("vector", "matrix",
                                                                       "noncontig"))
case("cdist", _cdist, ("sum", "subtract"), ("matrix", "3d", "empty"))
case("ctc_loss", _ctc, ("logsumexp", "take_along_axis"), ("matrix", "3d"))

CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
assert all("matrix" in c.layouts for c in CASES if "noncontig" in c.layouts)


# --- forward values of the primitives without a gradient -----------------------------------
@dataclass(frozen=True)
class Forward:
    """A non-differentiable primitive: nodegrad ``fn`` against NumPy ``ref``; ``build(draw)``
    gives the arrays and the keyword parameters both are called with."""

    name: str
    fn: Callable
    ref: Callable
    build: Callable


_SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 0.5, -0.5, 1.5, -2.5])
_COARSE = st.integers(-6, 6).map(lambda k: k / 2)  # halves: ties, zeros and rounding cases


def _typed(draw, shape, kind):
    """A float32/float64 array of ``kind`` ("coarse", "special", "nonzero"), or int/bool."""
    if kind in ("int", "intnz"):
        ints = st.integers(-5, 5).filter(lambda v: v != 0 or kind == "int")
        return draw(hnp.arrays(np.int64, shape, elements=ints))
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    dt = draw(st.sampled_from([np.float32, np.float64]))
    el = {"coarse": _COARSE, "special": _COARSE | _SPECIAL,
          "nonzero": _COARSE.filter(bool)}[kind]
    return draw(hnp.arrays(dt, shape, elements=el))


def _fw_inputs(*kinds, layouts=BASE + ("rank",)):
    """Draw one array per entry of ``kinds`` (each a kind or a tuple of kinds to pick from)
    in a drawn layout; all floats share one dtype, as nodegrad requires."""
    def build(draw):
        lay = draw(st.sampled_from([lay for lay in layouts if lay != "rank" or len(kinds) > 1]))
        shs = draw(shapes(lay, len(kinds)))
        picked = [draw(st.sampled_from(k if isinstance(k, tuple) else (k,))) for k in kinds]
        out = [_typed(draw, s, k) for s, k in zip(shs, picked)]
        dts = {a.dtype for a in out if a.dtype.kind == "f"}
        return tuple(a.astype(np.float64) if len(dts) > 1 and a.dtype.kind == "f" else a
                     for a in out), {}
    return build


FORWARD: list[Forward] = []
for _n in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
    FORWARD.append(Forward(_n, getattr(ng, _n), getattr(np, _n),
                           _fw_inputs("special", ("special", "int"))))
for _n in ("logical_and", "logical_or", "logical_xor"):
    FORWARD.append(Forward(_n, getattr(ng, _n), getattr(np, _n),
                           _fw_inputs(("bool", "coarse"), ("bool", "coarse", "int"))))
FORWARD.append(Forward("logical_not", ng.logical_not, np.logical_not,
                       _fw_inputs(("bool", "coarse", "int"))))
for _n in ("isnan", "isinf", "isfinite", "floor", "ceil", "round", "trunc"):
    FORWARD.append(Forward(_n, getattr(ng, _n), getattr(np, _n), _fw_inputs("special")))
FORWARD.append(Forward("sign", ng.sign, np.sign, _fw_inputs(("special", "int"))))
FORWARD.append(Forward("floor_divide", ng.floor_divide, np.floor_divide,
                       _fw_inputs(("coarse", "int"), ("nonzero", "intnz"))))


def _reduce_fw(name, allow_empty, axis_kind):
    def build(draw):
        lays = BASE if allow_empty else BASE[:-1]
        (x,), _ = _fw_inputs(("coarse", "int", "bool") if name in ("any", "all") else
                             ("coarse", "int"), layouts=lays)(draw)
        if axis_kind == "one":
            axis = draw(st.none() | st.integers(-x.ndim, x.ndim - 1)) if x.ndim else None
        else:
            axis = draw(axes(x.shape, min_len=0))
        return (x,), {"axis": axis, "keepdims": draw(st.booleans())}

    FORWARD.append(Forward(name, getattr(ng, name), getattr(np, name), build))


_reduce_fw("argmax", False, "one")
_reduce_fw("argmin", False, "one")
_reduce_fw("any", True, "many")
_reduce_fw("all", True, "many")


# --- dtype policy --------------------------------------------------------------------------
PREDICATES = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
              "logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf",
              "isfinite"}
# Every elementwise primitive called with Python numbers (unary ones: called as ng.<name>).
SCALAR_FORMS = {
    "add": [lambda x: x + 1.5, lambda x: 2 + x],
    "subtract": [lambda x: x - 1.5, lambda x: 1.5 - x],
    "multiply": [lambda x: x * 2.5, lambda x: 3 * x],
    "divide": [lambda x: x / 2.5, lambda x: 2 / x, lambda x: x / 3],
    "power": [lambda x: x ** 2, lambda x: x ** 0.5, lambda x: 2.0 ** x],
    "remainder": [lambda x: x % 1.5, lambda x: 2.5 % x],
    "floor_divide": [lambda x: x // 1.5, lambda x: 2.5 // x],
    "leaky_relu": [lambda x: ng.leaky_relu(x, 0.2)],
    "softplus": [lambda x: ng.softplus(x, 2.0, 5.0)],
    "gelu": [ng.gelu, lambda x: ng.gelu(x, approximate="tanh")],
    "maximum": [lambda x: ng.maximum(x, 0.5), lambda x: ng.maximum(0.5, x)],
    "minimum": [lambda x: ng.minimum(x, 0.5), lambda x: ng.minimum(0.5, x)],
    "clip": [lambda x: ng.clip(x, -0.5, 0.5), lambda x: ng.clip(x, None, 1)],
    "where": [lambda x: ng.where(x > 0, x, 0.5), lambda x: ng.where(x > 0, 1.5, x)],
    "equal": [lambda x: x == 1.5], "not_equal": [lambda x: x != 1.5],
    "less": [lambda x: x < 1.5], "less_equal": [lambda x: x <= 1.5],
    "greater": [lambda x: x > 1.5], "greater_equal": [lambda x: 1.5 >= x],
    "logical_and": [lambda x: ng.logical_and(x, 1.0)],
    "logical_or": [lambda x: ng.logical_or(0.0, x)],
    "logical_xor": [lambda x: ng.logical_xor(x, 1.0)],
}
# Mixing float32 and float64 tensors in a primitive with two float operands.
MIXED_FORMS = {
    "add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b, "power": lambda a, b: a ** b, "remainder": lambda a, b: a % b,
    "floor_divide": lambda a, b: a // b, "equal": lambda a, b: a == b,
    "less": lambda a, b: a < b, "maximum": ng.maximum, "minimum": ng.minimum,
    "logical_and": ng.logical_and, "where": lambda a, b: ng.where(a > 0, a, b),
    "clip": lambda a, b: ng.clip(a, b, None), "matmul": ng.matmul,
    "einsum": lambda a, b: ng.einsum("i,i->", a, b),
    "concatenate": lambda a, b: ng.concatenate([a, b]), "stack": lambda a, b: ng.stack([a, b]),
    "setitem": lambda a, b: ng.index_update(a, 0, b[0]),
}
