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
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nodegrad as ng
from nodegrad.ops.nn import linear_relu

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
          "layer_norm_sum", "getitem_repeat", "take_along_axis", "sliding_window_view",
          "concatenate", "pad",
          "einsum", "power", "linear", "binary_cross_entropy", "conv", "conv_input_grad",
          "conv_weight_grad", "cross_entropy", "cross_entropy_grad", "tanh_grad", "sigmoid_grad",
          "gru_update", "gru_scan", "sin_grad", "cos_grad", "layer_norm", "gelu_grad",
          "attention")


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
    """Floats in [lo, hi], none subnormal in float32 either (a float64 draw of 1e-45 is a
    float32 subnormal, where products underflow and no two libraries agree): such tiny
    magnitudes become 0, which every domain that holds them holds anyway."""
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False).map(lambda v: v if abs(v) >= 1e-30 else 0.0)


DOMAINS = {
    "real": _f(-2, 2),
    "wide": _f(-3, 3),
    "pos": _f(0.2, 3),  # log, sqrt, the base of power
    "log1p": _f(-0.5, 3),
    "prob": _f(0.05, 0.95),  # binary cross-entropy: probabilities and soft targets
    "nonzero": st.one_of(_f(-2, -0.5), _f(0.5, 2)),  # divisors
    "tan": _f(-1.2, 1.2),  # away from the poles at +-pi/2
    # sinc's derivative (cos(pi x) - sinc x) / x cancels near 0, in PyTorch's formula too: 0
    # itself or |x| >= 0.05
    "sinc": st.one_of(st.just(0.0), _f(-3, 3).filter(lambda v: abs(v) >= 0.05)),
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
    ins = [ng.tensor(np.array(a), requires_grad=a.dtype.kind == "f") for a in call.args]
    out = call.fn(*ins)
    return graph_names(out if isinstance(out, tuple | list) else [out])


def graph_names(outs) -> set:
    """Names of the primitives in the graph that produced the tensors ``outs``."""
    stack = [o.node for o in outs]
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
ew("tanh_grad", lambda g, a: P["tanh_grad"](g, a), lambda g, a: g * (1 - a * a), "real", "real")
ew("sin_grad", lambda g, x: P["sin_grad"](g, x), lambda g, x: g * x.cos(), "real", "wide")
ew("cos_grad", lambda g, x: P["cos_grad"](g, x), lambda g, x: -(g * x.sin()), "real", "wide")
ew("sigmoid_grad", lambda g, a: P["sigmoid_grad"](g, a), lambda g, a: g * a * (1 - a), "real",
   "real")
ew("relu", ng.relu, lambda x: x.relu(), "kink0")
# relu_grad's second operand is relu's output: g passes where it is nonzero (positive or NaN)
ew("relu_grad", lambda g, a: P["relu_grad"](g, a), lambda g, a: g * (a != 0) + 0 * a, "real",
   "kink0")
ew("leaky_relu", lambda x: ng.leaky_relu(x, 0.1), lambda x: F.leaky_relu(x, 0.1), "kink0")
ew("leaky_relu_default", ng.leaky_relu, lambda x: F.leaky_relu(x), "kink0",
   prims=("leaky_relu",))
ew("softplus", ng.softplus, lambda x: F.softplus(x), "wide")
ew("softplus_beta", lambda x: ng.softplus(x, beta=2.0, threshold=1.5),
   lambda x: F.softplus(x, beta=2.0, threshold=1.5), "softplus2", prims=("softplus",))
ew("gelu", ng.gelu, lambda x: F.gelu(x), "wide")
ew("gelu_grad", lambda g, x: P["gelu_grad"](g, x),
   lambda g, x: g * ((torch.erf(x * (0.5 ** 0.5)) + 1) * 0.5
                     + x * (torch.exp(x * x * -0.5) * (2 * math.pi) ** -0.5)), "real", "wide")
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
ew("to_device", lambda x: P["to_device"](x, dst=x.device, src=x.device), lambda x: x.clone(),
   "real")
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


def _bce(draw, layout):
    (s,) = draw(shapes(layout))  # torch needs equal shapes: no broadcasting layouts
    return Call(lambda p, t: P["binary_cross_entropy"](p, t), (arr(draw, s, "prob"),
                arr(draw, s, "prob")), lambda p, t: F.binary_cross_entropy(p, t, reduction="none"))


case("binary_cross_entropy", _bce)


# --- reductions ----------------------------------------------------------------------------
def _axis_tuple(x, axis) -> tuple:
    """``axis`` (None, an int or a tuple) as the tuple of non-negative axes a primitive takes."""
    if axis is None:
        return tuple(range(x.ndim))
    return tuple(a % max(x.ndim, 1) for a in ((axis,) if isinstance(axis, int) else axis))


def reduction(name, fn, tfn, domain="real", min_len=1, nonempty=False, **kw):
    """``fn(x, axis, keepdims)`` over drawn axes, with its torch twin ``tfn(t, dims, keep)``."""
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        axis = draw(axes(s, min_len=min_len, nonempty=nonempty))
        keep = draw(st.booleans())
        return Call(lambda x: fn(x, axis, keep), (arr(draw, s, domain),),
                    lambda t: tred(tfn, t, axis, keep))

    case(name, build, **kw)


reduction("sum", ng.sum, lambda t, **k: t.sum(**k), min_len=0)  # empty axes sum to 0
reduction("mean", ng.mean, lambda t, **k: t.mean(**k))
reduction("layer_norm_sum", lambda x, a, k: P["layer_norm_sum"](x, axis=_axis_tuple(x, a),
                                                                keepdims=k),
          lambda t, **k: t.sum(**k), min_len=0)  # NumPy's own reduction: layer norm's sums
# NumPy's call (keepdims= by keyword: a positional dim with max/min is PyTorch's)
reduction("max", lambda x, a, k: ng.max(x, a, keepdims=k), lambda t, **k: t.amax(**k), "distinct")
reduction("min", lambda x, a, k: ng.min(x, a, keepdims=k), lambda t, **k: t.amin(**k), "distinct")
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
    return Call(lambda x: tuple(ng.split(x, cuts, axis=axis)), (arr(draw, s),))


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
    if layout == "wide":  # twice as wide as the batch or more: the transposed products
        i, o = draw(st.integers(6, 9)), draw(st.integers(6, 9))
    lead = {"vector": (), "matrix": (b,), "wide": (b,), "3d": (b, c), "empty": (0,)}[layout]
    x, w = arr(draw, lead + (i,)), arr(draw, (o, i))
    if draw(st.booleans()):
        return Call(ng.linear, (x, w, arr(draw, (o,))), torch.nn.functional.linear)
    return Call(ng.linear, (x, w), torch.nn.functional.linear)


case("linear", _linear, layouts=("vector", "matrix", "wide", "3d", "empty"))


def _layer_norm(draw, layout):
    """Layer normalisation over the last one or two axes, with and without its affine step."""
    from nodegrad.ops.nn import layer_norm

    lead = {"vector": (), "matrix": (draw(st.integers(1, 3)),),
            "3d": (draw(st.integers(1, 3)), draw(st.integers(1, 2)))}[layout]
    ns = tuple(draw(st.integers(2, 4)) for _ in range(draw(st.integers(1, 2))))
    x = arr(draw, lead + ns)
    assume(np.all(np.std(x.reshape(-1, math.prod(ns)), axis=1) > 0.1))  # away from var = 0
    affine = draw(st.booleans())
    args = (x, arr(draw, ns), arr(draw, ns)) if affine else (x,)

    def ours(x, w=None, b=None):
        return layer_norm(x, w, b, k=len(ns), eps=1e-5)

    def theirs(x, w=None, b=None):
        return torch.nn.functional.layer_norm(x, ns, w, b, 1e-5)

    return Call(ours, args, theirs)


case("layer_norm", _layer_norm, layouts=("vector", "matrix", "3d"))


def _attention(draw, layout):
    """Self-attention (the attention primitive, through scaled_dot_product_attention), causal or
    not, over (L, E) or (B, L, E) queries, keys and values of one shape."""
    lead = () if layout == "matrix" else (draw(st.integers(1, 2)),)
    shape = lead + (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    causal, scale = draw(st.booleans()), draw(st.sampled_from([None, 0.7]))
    args = tuple(arr(draw, shape) for _ in range(3))

    def ours(q, k, v):
        return ng.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                             scale=scale)

    def theirs(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                scale=scale)

    return Call(ours, args, theirs)


case("attention", _attention, layouts=("matrix", "3d", "noncontig"))


def _linear_relu(draw, layout):
    """``linear`` then ``relu`` as one op (``nn.Sequential``'s fused pair), its products away
    from the ReLU's kink by more than a finite difference's step."""
    call = _linear(draw, layout)
    x, w, *b = call.args
    z = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T + (b[0] if b else 0)
    assume(np.all(np.abs(z) > 0.05))
    return Call(linear_relu, call.args, lambda *a: torch.relu(torch.nn.functional.linear(*a)))


case("linear_relu", _linear_relu, layouts=("vector", "matrix", "wide", "3d", "empty"))

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


# --- convolution: conv and its two gradients (each the others' VJP) -------------------------
@st.composite
def conv_geometry(draw, layout):
    """(x shape, w shape, stride, padding, dilation, groups): "vector" 1-D, "matrix" 2-D,
    "3d" grouped 1-D, "empty" a batch of 0; every window fits the padded input."""
    nd = 2 if layout == "matrix" else 1
    g = draw(st.integers(2, 3)) if layout == "3d" else 1
    cg, og = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n = 0 if layout == "empty" else draw(st.integers(1, 2))
    k, stride, pad, dil, sp = [], [], [], [], []
    for _ in range(nd):
        ki, si, di = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
        pi = draw(st.integers(0, 1))
        span = di * (ki - 1) + 1
        sp.append(max(span - 2 * pi, 1) + draw(st.integers(0, 2)))
        k.append(ki), stride.append(si), pad.append(pi), dil.append(di)
    return ((n, g * cg) + tuple(sp), (g * og, cg) + tuple(k), tuple(stride), tuple(pad),
            tuple(dil), g)


def _tconv(nd):
    return torch.nn.functional.conv1d if nd == 1 else torch.nn.functional.conv2d


def _conv_out(xs, ws, s, p, d):
    return (xs[0], ws[0]) + tuple((n + 2 * pi - di * (k - 1) - 1) // si + 1
                                  for n, k, si, pi, di in zip(xs[2:], ws[2:], s, p, d))


def _conv_case(draw, layout):
    xs, ws, s, p, d, g = draw(conv_geometry(layout))
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    f = ng.nn.functional.conv1d if len(s) == 1 else ng.nn.functional.conv2d
    args = (arr(draw, xs), arr(draw, ws))
    if draw(st.booleans()):
        return Call(lambda x, w, b: f(x, w, b, **kw), args + (arr(draw, ws[:1]),),
                    lambda x, w, b: _tconv(len(s))(x, w, b, **kw))
    return Call(lambda x, w: f(x, w, **kw), args, lambda x, w: _tconv(len(s))(x, w, **kw))


def _conv_input_grad_case(draw, layout):
    xs, ws, s, p, d, g = draw(conv_geometry(layout))
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    tfn = torch.nn.grad.conv1d_input if len(s) == 1 else torch.nn.grad.conv2d_input
    return Call(lambda gy, w: P["conv_input_grad"](gy, w, shape=xs, **kw),
                (arr(draw, _conv_out(xs, ws, s, p, d)), arr(draw, ws)),
                lambda gy, w: tfn(xs, w, gy, **kw))


def _conv_weight_grad_case(draw, layout):
    xs, ws, s, p, d, g = draw(conv_geometry(layout))
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    tfn = torch.nn.grad.conv1d_weight if len(s) == 1 else torch.nn.grad.conv2d_weight
    return Call(lambda x, gy: P["conv_weight_grad"](x, gy, shape=ws, **kw),
                (arr(draw, xs), arr(draw, _conv_out(xs, ws, s, p, d))),
                lambda x, gy: tfn(x, ws, gy, **kw))




# --- softmax cross-entropy against class indices (fused) -----------------------------------
def _ce_draw(draw, layout):
    """Logits, targets (-1 is ignored; the first target is always kept), axis, reduction."""
    c = draw(st.integers(2, 4))
    lead = {"vector": (), "matrix": (draw(st.integers(1, 4)),),
            "3d": (draw(st.integers(1, 3)), draw(st.integers(1, 3)))}[layout]
    xs = lead[:1] + (c,) + lead[1:]
    t = draw(hnp.arrays(np.int64, lead, elements=st.integers(-1, c - 1)))
    t.reshape(-1)[:1] = draw(st.integers(0, c - 1))
    red = draw(st.sampled_from(["mean", "sum", "none"]))
    return arr(draw, xs), t, (0 if not lead else 1), red


def _cross_entropy(draw, layout):
    x, t, _, red = _ce_draw(draw, layout)
    return Call(lambda x, t: ng.nn.functional.cross_entropy(x, t, ignore_index=-1,
                                                            reduction=red),
                (x, t), lambda x, t: F.cross_entropy(x, t, ignore_index=-1, reduction=red))


def _cross_entropy_grad(draw, layout):
    x, t, ax, red = _ce_draw(draw, layout)
    g = arr(draw, t.shape if red == "none" else ())

    def tfn(x, g, t):
        loss = F.cross_entropy(x, t, ignore_index=-1, reduction=red)
        return torch.autograd.grad(loss, x, g, create_graph=True)[0]

    return Call(lambda x, g, t: P["cross_entropy_grad"](x, g, t, axis=ax, ignore_index=-1,
                                                         reduction=red), (x, g, t), tfn)


CE = ("vector", "matrix", "3d", "noncontig")
case("cross_entropy", _cross_entropy, layouts=CE)
case("cross_entropy_grad", _cross_entropy_grad, layouts=CE)


# --- the GRU gate update (fused) -------------------------------------------------------------
def _gru_ref(gi, gh, h):
    n_h = h.shape[-1]
    rz = (gi[..., :2 * n_h] + gh[..., :2 * n_h]).sigmoid()
    n = (gi[..., 2 * n_h:] + rz[..., :n_h] * gh[..., 2 * n_h:]).tanh()
    return n + rz[..., n_h:] * (h - n)


def _gru_case(draw, layout):
    """gi, gh (..., 3H) and h (..., H); in "rank", h is one state broadcast over the batch."""
    n_h = draw(st.integers(1, 3))
    lead = {"vector": (), "matrix": (draw(st.integers(1, 4)),), "rank": (draw(st.integers(1, 4)),),
            "3d": (draw(st.integers(1, 3)), draw(st.integers(1, 3)))}[layout]
    hl = () if layout == "rank" else lead
    return Call(lambda gi, gh, h: P["gru_update"](gi, gh, h),
                (arr(draw, lead + (3 * n_h,), "wide"), arr(draw, lead + (3 * n_h,), "wide"),
                 arr(draw, hl + (n_h,), "wide")), _gru_ref)


case("gru_update", _gru_case, layouts=("vector", "matrix", "3d", "rank", "noncontig"))


def _gru_scan_ref(gi, w, b, h0, reverse=()):
    """Per direction d, the steps in time order (or backwards with ``reverse[d]``): (T, N, D, H)."""
    outs = []
    for d in range(gi.shape[0]):
        h, hs = h0[d], {}
        times = range(gi.shape[2])
        for t in (reversed(times) if reverse and reverse[d] else times):
            h = hs[t] = _gru_ref(gi[d, :, t].T, h @ w[d].T + b[d], h)
        outs.append(torch.stack([hs[t] for t in times]))
    return torch.stack(outs, 2)


def _gru_scan_case(draw, layout):
    """gi (D, 3H, T, N), w (D, 3H, H), b (D, 3H), h0 (D, N, H); in "3d" two directions, the
    second one reversed (a bidirectional layer), and the states laid out batch-major."""
    from nodegrad.ops.nn import gru_scan

    n_h, steps, batch = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_dir = 2 if layout == "3d" else 1
    rev = (False, True) if n_dir == 2 else ()
    return Call(lambda gi, w, b, h0: gru_scan(gi, w, b, h0, reverse=rev, batch_major=n_dir == 2),
                (arr(draw, (n_dir, 3 * n_h, steps, batch), "wide"),
                 arr(draw, (n_dir, 3 * n_h, n_h)), arr(draw, (n_dir, 3 * n_h)),
                 arr(draw, (n_dir, batch, n_h), "wide")),
                lambda gi, w, b, h0: _gru_scan_ref(gi, w, b, h0, rev))


case("gru_scan", _gru_scan_case, layouts=("matrix", "3d", "noncontig"))


def _conv_relu_case(draw, layout):
    """``conv`` then ``relu`` as one op (``nn.Sequential``'s fused pair, through
    ``F._conv_relu``), its outputs away from the ReLU's kink by more than a finite difference's
    step."""
    xs, ws, s, p, d, g = draw(conv_geometry(layout))
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    args = (arr(draw, xs), arr(draw, ws)) + ((arr(draw, ws[:1]),) if draw(st.booleans()) else ())
    z = _tconv(len(s))(*(torch.from_numpy(np.asarray(a, np.float64)) for a in args), **kw)
    assume(np.all(np.abs(z.numpy()) > 0.05))

    def ours(x, w, b=None):
        return ng.nn.functional._conv_relu(x, w, b, s, p, d, g, len(s))

    return Call(ours, args, lambda *a: torch.relu(_tconv(len(s))(*a, **kw)))


CONV = ("vector", "matrix", "3d", "empty", "noncontig")
case("conv", _conv_case, layouts=CONV)
case("conv_relu", _conv_relu_case, layouts=CONV)
case("conv_input_grad", _conv_input_grad_case, layouts=CONV)
case("conv_weight_grad", _conv_weight_grad_case, layouts=CONV)


# =============================================================================================
# --- PyTorch's indexing ops: gather, scatter*, index_*, masked_*, take, put ------------------
# Index tensors are call arguments (vmap then batches them too); an index may be smaller than
# the input in the other dims (PyTorch's rule). Repeats appear where PyTorch defines the result
# (adds, selects); set-style scatters draw distinct positions (PyTorch leaves repeats unspecified).
# =============================================================================================
def _dim_index(draw, s, ax, *, distinct=False, src=None):
    """An int64 index for PyTorch's gather/scatter along ``ax`` of a tensor of shape ``s``: at
    most ``s[d]`` (or ``src[d]``) long in the other dims; ``distinct``: no position twice per
    line along ``ax``."""
    n = s[ax]
    shape = []
    for d in range(len(s)):
        top = min(s[d], src[d]) if src is not None else s[d]
        if d == ax:
            top = (min(n, src[d]) if src is not None else n) if distinct else 4
            if src is not None and not distinct:
                top = src[d]
        shape.append(draw(st.integers(0, top)) if n else 0)
    if not n:
        return np.zeros(shape, np.int64)
    if distinct:
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
        full = list(shape)
        full[ax] = n
        perm = np.argsort(rng.random(full), axis=ax)
        return np.ascontiguousarray(perm[tuple(slice(0, k) for k in shape)])
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(0, n - 1)))


def _lay(layout):
    return "matrix" if layout == "scalar" else layout


def _gather(draw, layout):
    (s,) = draw(shapes(layout))
    ax = draw(st.integers(-max(len(s), 1), max(len(s), 1) - 1)) if s else 0
    idx = _dim_index(draw, s, ax % len(s)) if s else np.array(0, np.int64)
    if draw(st.booleans()):
        return Call(lambda x, i: x.gather(ax, i), (arr(draw, s), idx),
                    lambda t, i: t.gather(ax, i))
    return Call(lambda x, i: ng.gather(x, ax, i), (arr(draw, s), idx),
                lambda t, i: torch.gather(t, ax, i))


def _src_shape(draw, s):
    return tuple(d + draw(st.integers(0, 1)) for d in s)


def _scatter(draw, layout):
    (s,) = draw(shapes(_lay(layout)))
    ax = draw(st.integers(0, len(s) - 1))
    ss = _src_shape(draw, s)
    idx = _dim_index(draw, s, ax, distinct=True, src=ss)
    if draw(st.booleans()):
        v = draw(DOMAINS["real"])
        return Call(lambda x, i: ng.scatter(x, ax, i, v), (arr(draw, s), idx),
                    lambda t, i: torch.scatter(t, ax, i, v))
    # torch 2.13's scatter backward fails when src is larger than the index: cut it first
    cut = tuple(slice(0, k) for k in idx.shape)
    return Call(lambda x, i, u: x.scatter(ax, i, u), (arr(draw, s), idx, arr(draw, ss)),
                lambda t, i, u: t.scatter(ax, i, u[cut]))


def _scatter_add_dim(draw, layout):
    (s,) = draw(shapes(_lay(layout)))
    ax = draw(st.integers(0, len(s) - 1))
    ss = _src_shape(draw, s)
    ss = ss[:ax] + (ss[ax] + 2,) + ss[ax + 1:]
    idx = _dim_index(draw, s, ax, src=ss)
    cut = tuple(slice(0, k) for k in idx.shape)  # see _scatter
    return Call(lambda x, i, u: ng.scatter_add(x, ax, i, u), (arr(draw, s), idx, arr(draw, ss)),
                lambda t, i, u: torch.scatter_add(t, ax, i, u[cut]))


def _scatter_reduce_case(reduce):
    domain = {"prod": "nonzero", "amax": "distinct", "amin": "distinct"}.get(reduce, "real")

    def build(draw, layout):
        (s,) = draw(shapes(_lay(layout)))
        ax = draw(st.integers(0, len(s) - 1))
        ss = _src_shape(draw, s)
        ss = ss[:ax] + (ss[ax] + 2,) + ss[ax + 1:]
        idx = _dim_index(draw, s, ax, src=ss)
        inc = draw(st.booleans())
        if domain == "distinct":  # no ties anywhere: the max is not at a kink
            both = arr(draw, (math.prod(s) + math.prod(ss),), "distinct")
            x, u = both[:math.prod(s)].reshape(s), both[math.prod(s):].reshape(ss)
        else:
            x, u = arr(draw, s, domain), arr(draw, ss, domain)
        cut = tuple(slice(0, k) for k in idx.shape)  # see _scatter
        return Call(lambda x, i, u: ng.scatter_reduce(x, ax, i, u, reduce, include_self=inc),
                    (x, idx, u),
                    lambda t, i, u: t.scatter_reduce(ax, i, u[cut], reduce, include_self=inc))

    return build


def _index_1d_arr(draw, n, *, distinct=False, negative=False):
    if not n:
        return np.zeros(0, np.int64)
    if distinct:
        return np.array(draw(st.permutations(range(n)))[:draw(st.integers(0, n))], np.int64)
    lo = -n if negative else 0
    return np.array(draw(st.lists(st.integers(lo, n - 1), max_size=5)), np.int64)


def _index_select(draw, layout):
    (s,) = draw(shapes(_lay(layout)))
    ax = draw(st.integers(-len(s), len(s) - 1))
    i = _index_1d_arr(draw, s[ax])
    return Call(lambda x, i: ng.index_select(x, ax, i), (arr(draw, s), i),
                lambda t, i: torch.index_select(t, ax, i))


def _index_put_like(kind):
    def build(draw, layout):
        (s,) = draw(shapes(_lay(layout)))
        ax = draw(st.integers(-len(s), len(s) - 1))
        i = _index_1d_arr(draw, s[ax], distinct=kind == "copy")
        src = s[:ax % len(s)] + (len(i),) + s[ax % len(s) + 1:]
        if kind == "add":
            alpha = draw(st.sampled_from([1, 2.5]))
            return Call(lambda x, i, u: x.index_add(ax, i, u, alpha=alpha),
                        (arr(draw, s), i, arr(draw, src)),
                        lambda t, i, u: t.index_add(ax, i, u, alpha=alpha))
        return Call(lambda x, i, u: ng.index_copy(x, ax, i, u), (arr(draw, s), i, arr(draw, src)),
                    lambda t, i, u: torch.index_copy(t, ax, i, u))

    return build


def _index_fill(draw, layout):
    (s,) = draw(shapes(_lay(layout)))
    ax = draw(st.integers(-len(s), len(s) - 1))
    number = draw(st.booleans())
    i = _index_1d_arr(draw, s[ax], negative=number)  # torch: negatives with a number value only
    if number:
        v = draw(DOMAINS["real"])
        return Call(lambda x, i: ng.index_fill(x, ax, i, v), (arr(draw, s), i),
                    lambda t, i: t.index_fill(ax, i, v))
    return Call(lambda x, i, v: x.index_fill(ax, i, v), (arr(draw, s), i, arr(draw, ())),
                lambda t, i, v: t.index_fill(ax, i, v))


def _masked_fill(draw, layout):
    (s,) = draw(shapes(layout))
    ms = s[draw(st.integers(0, len(s))):]
    m = draw(hnp.arrays(np.bool_, tuple(1 if draw(st.booleans()) else d for d in ms)))
    if draw(st.booleans()):
        return Call(lambda x, m: x.masked_fill(m, -1.5), (arr(draw, s), m),
                    lambda t, m: t.masked_fill(m, -1.5))
    return Call(lambda x, m, v: ng.masked_fill(x, m, v), (arr(draw, s), m, arr(draw, ())),
                lambda t, m, v: torch.masked_fill(t, m, v))


def _masked_scatter(draw, layout):
    (s,) = draw(shapes(layout))
    ms = s[draw(st.integers(0, len(s))):]
    m = draw(hnp.arrays(np.bool_, tuple(1 if draw(st.booleans()) else d for d in ms)))
    k = int(np.broadcast_to(m, s).sum())
    src = draw(st.sampled_from([(k + draw(st.integers(0, 2)),), s]))
    return Call(lambda x, u: ng.masked_scatter(x, m, u), (arr(draw, s), arr(draw, src)),
                lambda t, u: t.masked_scatter(torch.as_tensor(m), u))


def _masked_select(draw, layout):
    (s,) = draw(shapes(layout))
    ms = s[draw(st.integers(0, len(s))):]
    m = draw(hnp.arrays(np.bool_, tuple(1 if draw(st.booleans()) else d for d in ms)))
    return Call(lambda x: x.masked_select(m), (arr(draw, s),),
                lambda t: t.masked_select(torch.as_tensor(m)))


def _take(draw, layout):
    (s,) = draw(shapes(layout))
    n = math.prod(s)
    ishape = draw(st.sampled_from([(), (3,), (2, 2)])) if n else (0,)
    i = draw(hnp.arrays(np.int64, ishape, elements=st.integers(-n, n - 1))) if n else \
        np.zeros(0, np.int64)
    return Call(lambda x, i: ng.take(x, i), (arr(draw, s), i), lambda t, i: torch.take(t, i))


def _put(draw, layout, acc):
    (s,) = draw(shapes(layout))
    n = math.prod(s)
    if acc:
        i = np.array(draw(st.lists(st.integers(-n, n - 1), max_size=5)) if n else [], np.int64)
    else:
        i = np.array(draw(st.permutations(range(n)))[:draw(st.integers(0, n))], np.int64)
    return Call(lambda x, i, u: x.put(i, u, accumulate=acc), (arr(draw, s), i, arr(draw, i.shape)),
                lambda t, i, u: t.put(i, u, accumulate=acc))


case("gather", _gather, ("take_along_axis",))
case("scatter", _scatter, ("scatter_along_axis",))
case("scatter_add_dim", _scatter_add_dim, ("scatter_add_along_axis",))
for _r in ("sum", "mean"):
    case(f"scatter_reduce_{_r}", _scatter_reduce_case(_r), ("scatter_add_along_axis",))
for _r in ("prod", "amax", "amin"):
    case(f"scatter_reduce_{_r}", _scatter_reduce_case(_r), ("scatter_reduce_along_axis",))
case("index_select", _index_select, ("take_along_axis",))
case("index_add", _index_put_like("add"), ("scatter_add_along_axis",))
case("index_copy", _index_put_like("copy"), ("scatter_along_axis",))
case("index_fill", _index_fill, ("where",))
case("masked_fill", _masked_fill, ("where",))
case("masked_scatter", _masked_scatter, ("setitem",))
case("masked_select", _masked_select, ("getitem",))
case("take", _take, ("take_along_axis",))
case("put", lambda d, lay: _put(d, lay, False), ("scatter_along_axis",))
case("put_accumulate", lambda d, lay: _put(d, lay, True), ("scatter_add_along_axis",))
ORDER2 = ORDER2 + ("gather", "scatter", "scatter_reduce_prod", "scatter_reduce_amax",
                   "scatter_reduce_mean", "index_add", "masked_scatter", "put_accumulate")



# =============================================================================================
# --- PyTorch's rearranging ops (ops/arrange.py: compositions of shape and index primitives) --
# =============================================================================================
def _repeat(draw, layout):
    (s,) = draw(shapes(layout))
    sizes = tuple(draw(st.integers(1, 3)) for _ in range(len(s) + draw(st.integers(0, 1))))
    sizes = sizes or (2,)
    return Call(lambda x: x.repeat(*sizes), (arr(draw, s),), lambda t: t.repeat(*sizes))


def _tile(draw, layout):
    (s,) = draw(shapes(layout))
    dims = tuple(draw(st.integers(0, 2)) for _ in range(draw(st.integers(1, len(s) + 1))))
    return Call(lambda x: ng.tile(x, dims), (arr(draw, s),), lambda t: torch.tile(t, dims))


def _repeat_interleave(draw, layout, counts):
    (s,) = draw(shapes(layout))
    dim = draw(st.none() | st.integers(-len(s), len(s) - 1)) if s else None
    n = math.prod(s) if dim is None else s[dim]
    if counts:
        r = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
        return Call(lambda x: x.repeat_interleave(ng.tensor(r), dim), (arr(draw, s),),
                    lambda t: t.repeat_interleave(torch.as_tensor(r), dim))
    r = draw(st.integers(0, 3))
    return Call(lambda x: ng.repeat_interleave(x, r, dim), (arr(draw, s),),
                lambda t: torch.repeat_interleave(t, r, dim))


def _roll(draw, layout):
    (s,) = draw(shapes(layout))
    long_axes = [d for d, n in enumerate(s) if n >= 2] or [0]
    s = s if s[long_axes[0]] >= 2 else s[:0] + (2,) + s[1:]
    ax = draw(st.sampled_from(long_axes))
    shifts = [draw(st.integers(1, s[ax] - 1)) * draw(st.sampled_from([1, -1]))]
    dims = [ax - len(s) if draw(st.booleans()) else ax]
    if len(s) > 1 and draw(st.booleans()):
        dims.append(draw(st.integers(0, len(s) - 1)))
        shifts.append(draw(st.integers(-5, 5)))
    return Call(lambda x: x.roll(shifts, dims), (arr(draw, s),),
                lambda t: torch.roll(t, shifts, dims))


def _triangle(name):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        k = draw(st.integers(-3, 3))
        return Call(lambda x: getattr(ng, name)(x, k), (arr(draw, s),),
                    lambda t: getattr(torch, name)(t, k))

    return build


def _diagonal(draw, layout):
    (s,) = draw(shapes(layout))
    d1, d2 = draw(st.permutations(range(len(s))))[:2]
    off = draw(st.integers(-3, 3))
    return Call(lambda x: x.diagonal(off, d1, d2), (arr(draw, s),),
                lambda t: torch.diagonal(t, off, d1, d2))


def _diagonal_put(draw, layout):
    """The diagonal's adjoint called directly: zeros with v on the offset diagonal."""
    (s,) = draw(shapes(layout))
    d1, d2 = draw(st.permutations(range(len(s))))[:2]
    off = draw(st.integers(-3, 3))
    vs = tuple(torch.zeros(s).diagonal(off, d1, d2).shape)
    return Call(lambda v: P["diagonal_put"](v, shape=s, offset=off, axis1=d1, axis2=d2),
                (arr(draw, vs),),
                lambda v: torch.diagonal_scatter(torch.zeros(s, dtype=v.dtype), v, off, d1, d2))


def _view_put(draw, layout):
    """What an in-place change through a view gives its base: x with its transpose's row, or
    its diagonal, replaced by v."""
    (s,) = draw(shapes(layout))
    d1, d2 = draw(st.permutations(range(len(s))))[:2]
    which = draw(st.sampled_from(["diagonal", "transpose"]))
    if which == "diagonal":
        view, vp = P["diagonal"], (("offset", 0), ("axis1", d1), ("axis2", d2))
        vs = tuple(torch.zeros(s).diagonal(0, d1, d2).shape)
        put = lambda x, v: torch.diagonal_scatter(x, v, 0, d1, d2)  # noqa: E731
    else:
        axes = tuple(draw(st.permutations(range(len(s)))))
        view, vp = P["transpose"], (("axes", axes),)
        vs = tuple(s[a] for a in axes)
        inv = tuple(axes.index(k) for k in range(len(s)))
        put = lambda x, v: x * 0 + v.permute(inv)  # noqa: E731
    return Call(lambda x, v: P["view_put"](x, v, view=view, vparams=vp),
                (arr(draw, s), arr(draw, vs)), put)


def _diag(draw, layout):
    off = draw(st.integers(-2, 2))
    (s,) = draw(shapes(layout))
    return Call(lambda x: ng.diag(x, off), (arr(draw, s),), lambda t: torch.diag(t, off))


def _diag_embed(draw, layout):
    (s,) = draw(shapes(layout))
    d1, d2 = draw(st.permutations(range(len(s) + 1)))[:2]
    off = draw(st.integers(-2, 2))
    return Call(lambda x: ng.diag_embed(x, off, d1, d2), (arr(draw, s),),
                lambda t: torch.diag_embed(t, off, d1, d2))


def _trace(draw, layout):
    (s,) = draw(shapes(layout))
    return Call(lambda x: x.trace(), (arr(draw, s),), lambda t: torch.trace(t))


def _vectors(draw, layout):
    k = 2 if layout == "vector" else 3
    return tuple(arr(draw, (draw(st.integers(0 if layout == "empty" else 1, 3)),))
                 for _ in range(k))


def _meshgrid(draw, layout):
    xs = _vectors(draw, layout)
    ix = draw(st.sampled_from(["ij", "xy"]))
    return Call(lambda *ts: ng.stack(ng.meshgrid(*ts, indexing=ix)), xs,
                lambda *ts: torch.stack(torch.meshgrid(*ts, indexing=ix)))


def _cartesian_prod(draw, layout):
    xs = _vectors(draw, layout)
    return Call(lambda *ts: ng.cartesian_prod(*ts), xs, lambda *ts: torch.cartesian_prod(*ts))


def _unflatten(draw, layout):
    (s,) = draw(shapes(layout))
    ax = draw(st.integers(-len(s), len(s) - 1))
    n = s[ax]
    sizes = draw(st.sampled_from([(1, n), (n, 1), (-1, 1), (1, -1, 1)] +
                                 ([(2, n // 2), (2, -1)] if n and n % 2 == 0 else [])))
    return Call(lambda x: x.unflatten(ax, sizes), (arr(draw, s),),
                lambda t: t.unflatten(ax, sizes))


def _narrow(draw, layout):
    (s,) = draw(shapes(layout))
    ax = draw(st.integers(-len(s), len(s) - 1))
    n = s[ax]
    start = draw(st.integers(-n, n)) if n else 0
    length = draw(st.integers(0, n - start % n if n and start < n else 0))
    return Call(lambda x: x.narrow(ax, start, length), (arr(draw, s),),
                lambda t: t.narrow(ax, start, length))


def _unbind(draw, layout):
    (s,) = draw(shapes(layout))
    ax = draw(st.sampled_from([d for d, n in enumerate(s) if n]))
    return Call(lambda x: x.unbind(ax), (arr(draw, s),))  # a tuple: compared in test_ops_shapes


def _movedim(draw, layout):
    (s,) = draw(shapes(layout))
    a, b = draw(st.permutations(range(len(s))))[:2]
    if len(s) >= 3 and draw(st.booleans()):
        src, dst = (a, b), (b, a)
    else:
        src, dst = a, b
    return Call(lambda x: ng.movedim(x, src, dst), (arr(draw, s),),
                lambda t: torch.movedim(t, src, dst))


def _view_as(draw, layout):
    (s,) = draw(shapes(layout))
    other = np.zeros((1,) + s[::-1])
    return Call(lambda x: x.view_as(ng.tensor(other)), (arr(draw, s),),
                lambda t: t.reshape(t.shape[::-1]).view_as(torch.as_tensor(other)))


def _rot90(draw, layout):
    (s,) = draw(shapes(layout))
    k = draw(st.integers(-3, 5).filter(lambda k: k % 4))
    dims = tuple(draw(st.permutations(range(len(s))))[:2])
    return Call(lambda x: x.rot90(k, dims), (arr(draw, s),), lambda t: torch.rot90(t, k, dims))


def _flip_lr_ud(name):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        return Call(getattr(ng, name), (arr(draw, s),), getattr(torch, name))

    return build


def _atleast(n):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        return Call(getattr(ng, f"atleast_{n}d"), (arr(draw, s),),
                    getattr(torch, f"atleast_{n}d"))

    return build


def _block_diag(draw, layout):
    k = draw(st.integers(1, 3))
    lo = 0 if layout == "empty" else 1
    shs = [tuple(draw(st.integers(lo, 3)) for _ in range(draw(st.integers(0, 2))))
           for _ in range(k)]
    return Call(lambda *ts: ng.block_diag(*ts), tuple(arr(draw, s) for s in shs),
                _torch_block_diag)


def _torch_block_diag(*ts):
    """torch.block_diag's layout from pads and a cat: torch 2.13's own backward sends an empty
    1-d block's row of the gradient to the next block."""
    blocks = [t.reshape((1,) * (2 - t.dim()) + tuple(t.shape)) for t in ts]
    total, left, rows = sum(b.shape[1] for b in blocks), 0, []
    for b in blocks:
        rows.append(torch.nn.functional.pad(b, (left, total - left - b.shape[1])))
        left += b.shape[1]
    return torch.cat(rows, 0)


def _hvdstack(name):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        k = draw(st.integers(1, 3))
        join = {"hstack": 1 if len(s) > 1 else 0, "vstack": 0, "dstack": 2}[name]
        shs = []
        for _ in range(k):
            t = list(s)
            if len(t) > join and name != "vstack" or (name == "vstack" and len(t) > 1):
                t[join] = draw(st.integers(1, 3))
            shs.append(tuple(t))
        return Call(lambda *ts: getattr(ng, name)(ts), tuple(arr(draw, t) for t in shs),
                    lambda *ts: getattr(torch, name)(ts))

    return build


def _pad_modes(draw, layout):
    """NumPy's pad modes in ng.pad (repeats in the index: the gradient adds them up)."""
    (s,) = draw(shapes(layout))
    mode = draw(st.sampled_from(["reflect", "symmetric", "edge", "wrap"]))
    pw = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in s]
    pw[draw(st.integers(0, len(s) - 1))] = (1, 2)
    pw = tuple(pw)
    return Call(lambda x: ng.pad(x, pw, mode=mode), (arr(draw, s),),
                lambda t: torch.as_tensor(np.pad(t.detach().numpy(), pw, mode=mode)))


def _torch_pad(draw, layout, mode):
    """nn.functional.pad: the last 1-3 dims of a batched or unbatched input; negative widths
    crop (constant mode: any; other modes: after the crop, widths fit the cropped length)."""
    (s,) = draw(shapes(layout))
    if mode != "constant":  # room to reflect
        s = s[:-1] + (max(s[-1], 2),)
    k = draw(st.integers(1, min(3, len(s))))
    k = k if len(s) in (k + 1, k + 2) else len(s) - 1 if len(s) > 1 else 1
    pads = []
    for n in reversed(s[len(s) - k:]):
        lo = draw(st.integers(-(n // 2), 2))
        hi = draw(st.integers(-(n // 2), 2))
        if n + min(lo, 0) + min(hi, 0) < 1 or not pads:  # the last dim: no crop, pads >= 1
            lo, hi = max(lo, 0), max(hi, 1)
        kept = n + min(lo, 0) + min(hi, 0)
        cap = kept - 1 if mode == "reflect" else kept
        if mode != "constant":
            lo, hi = min(lo, cap), min(hi, cap)
        pads += [lo, hi]
    value = draw(DOMAINS["real"]) if mode == "constant" else None
    return Call(lambda x: ng.nn.functional.pad(x, pads, mode, value), (arr(draw, s),),
                lambda t: F.pad(t, pads, mode=mode, value=value))


case("repeat", _repeat, ("reshape",))
case("tile", _tile, ("reshape",))
case("repeat_interleave", lambda d, lay: _repeat_interleave(d, lay, False), ("reshape",))
case("repeat_interleave_counts", lambda d, lay: _repeat_interleave(d, lay, True), ("getitem",))
case("roll", _roll, ("concatenate",), ("vector", "matrix", "3d", "size1", "noncontig"))
case("tril", _triangle("tril"), ("where",), ND)
case("triu", _triangle("triu"), ("where",), ND)
case("diagonal", _diagonal, ("diagonal",), ND)
case("diagonal_put", _diagonal_put, layouts=ND)
case("view_put", _view_put, layouts=ND)
case("diag_1d", _diag, ("setitem",), ("vector",))
case("diag_2d", _diag, ("diagonal",), ("matrix", "noncontig"))
case("diag_embed", _diag_embed, ("setitem",), UNARY[1:])
case("trace", _trace, ("diagonal", "sum"), ("matrix", "noncontig"))
case("meshgrid", _meshgrid, ("reshape",), ("vector", "3d", "empty"))
case("cartesian_prod", _cartesian_prod, ("concatenate",), ("vector", "3d", "empty"))
case("unflatten", _unflatten, ("reshape",), UNARY[1:])
case("narrow", _narrow, ("getitem",), UNARY[1:])
case("unbind", _unbind, ("getitem",), UNARY[1:], has_torch=False)
case("movedim", _movedim, ("transpose",), ND)
case("view_as", _view_as, ("reshape",))
case("rot90", _rot90, ("flip",), ND)
case("flipud", _flip_lr_ud("flipud"), ("flip",), UNARY[1:])
case("fliplr", _flip_lr_ud("fliplr"), ("flip",), ND)
case("atleast_1d", _atleast(1), ("reshape",), ("scalar",))
case("atleast_2d", _atleast(2), ("reshape",), ("scalar", "vector"))
case("atleast_3d", _atleast(3), ("reshape",), ("scalar", "vector", "matrix", "noncontig"))
case("block_diag", _block_diag, ("pad", "concatenate"), ("vector", "empty"))
case("hstack", _hvdstack("hstack"), ("concatenate",), UNARY[1:])
case("vstack", _hvdstack("vstack"), ("concatenate",), UNARY[1:])
case("dstack", _hvdstack("dstack"), ("concatenate",), UNARY[1:])
case("pad_modes", _pad_modes, ("getitem",), ("vector", "matrix", "3d", "size1", "noncontig"),
     has_torch=False)
case("torch_pad", lambda d, lay: _torch_pad(d, lay, "constant"), ("pad",), ND)
for _m in ("reflect", "replicate", "circular"):
    case(f"torch_pad_{_m}", lambda d, lay, m=_m: _torch_pad(d, lay, m), ("getitem",),
         ("matrix", "3d", "noncontig"))
ORDER2 = ORDER2 + ("repeat", "roll", "diag_embed", "torch_pad_reflect", "block_diag")

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
    """_spread for a nodegrad or torch tensor, in its dtype, on its device."""
    d = _spread(*a.shape[-2:])
    if isinstance(a, ng.Tensor):
        return ng.tensor(d.astype(a.dtype), device=a.device)
    return torch.as_tensor(d, dtype=a.dtype)


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
# hermitian=True reads the lower triangle only: a non-symmetric input checks that the upper
# one gets no gradient (PyTorch's backward gives it the general pinv's, so its twin builds the
# symmetric matrix first); the spread keeps the eigenvalues apart and away from the cut-off
_la1("pinv_hermitian", lambda a: LA.pinv(a, hermitian=True),
     lambda a: torch.linalg.pinv(a.tril() + a.tril(-1).mT, hermitian=True),
     lambda d, lead, n: arr(d, lead + (n, n)) + _spread(n, n))


def _eigh(f, a, is_torch):
    s = (a + a.transpose(-1, -2)) * 0.5 if is_torch else _sym(a)
    w, v = f(s + _spread_like(a))
    return w, _signed(v)


def _rect(draw, lead, m, n):
    return arr(draw, lead + (m, n)) * 0.5 + _spread(m, n, descending=True)


def _la_rect(name, fn, tfn, prims=None, layouts=LINALG, offdiag=0.0, **kw):
    def build(draw, layout):
        m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        a = _rect(draw, _batch(draw, layout), m, n)
        if offdiag:
            a = a + offdiag * (1 - np.eye(m, n))
        return Call(fn, (a,), tfn)

    case(name, build, prims or (name,), layouts, **kw)


# QR: no off-diagonal entry is exactly zero. LAPACK's Householder step leaves a column whose
# entries below the diagonal are all zero as it is (R's diagonal keeps its sign) but flips the
# sign of R's diagonal (and of Q's column) as soon as one of them is not, so at such a point
# central differences see the other sign convention and gradcheck fails spuriously.
_la_rect("qr", lambda a: _flatcat(*LA.qr(a)), lambda a: _tflatcat(*torch.linalg.qr(a)),
         offdiag=3.0)
_la_rect("qr_complete_wide", lambda a: _flatcat(*LA.qr(a.swapaxes(-1, -2) if a.shape[-2] >
                                                       a.shape[-1] else a, mode="complete")),
         lambda a: _tflatcat(*torch.linalg.qr(a.transpose(-1, -2) if a.shape[-2] > a.shape[-1]
                                              else a, mode="complete")), ("qr",), offdiag=3.0)
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
        a, b, (a - b + 0.01).sign().detach(), 0.3, reduction=reduction), ("clip",),
    st.fixed_dictionaries({"reduction": _REDS}))
_pair_loss("hinge_embedding_loss", lambda a, b, reduction: NF.hinge_embedding_loss(
    a, ng.sign(b), 0.7, reduction), lambda a, b, reduction: F.hinge_embedding_loss(
        a, b.sign(), 0.7, reduction=reduction), ("clip", "where"),
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
    a, pos, neg = arr(draw, s, "offgrid"), arr(draw, s, "grid"), arr(draw, s, "grid") + 1 / 16

    def dist(x, y):
        return np.linalg.norm(x - y + 1e-6, ord=kw["p"], axis=-1)

    # finite differences need every row away from the hinge and from the swap's tie
    d_neg = dist(a, neg)
    assume(np.all(np.abs(kw["margin"] + dist(a, pos) - d_neg) > 0.05))
    assume(not kw["swap"] or np.all(np.abs(d_neg - dist(pos, neg)) > 0.05))
    return Call(lambda a, p, n: NF.triplet_margin_loss(a, p, n, **kw), (a, pos, neg),
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


case("cosine_embedding_loss", _cos_embed, ("sqrt", "clip"), ("vector", "matrix", "noncontig"))
case("triplet_margin_loss", _triplet, ("clip", "sum"), LOSS)
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
    rtol: float = 0.0  # 0: bit-identical; else a float computation checked to this tolerance


_SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 0.5, -0.5, 1.5, -2.5])
_COARSE = st.integers(-6, 6).map(lambda k: k / 2)  # halves: ties, zeros and rounding cases


def _typed(draw, shape, kind):
    """A float32/float64 array of ``kind`` ("coarse", "special", "nonzero"), or int/bool."""
    if kind in ("int", "intnz"):
        ints = st.integers(-5, 5).filter(lambda v: v != 0 or kind == "int")
        return draw(hnp.arrays(np.int64, shape, elements=ints))
    if kind in ("int8", "uint8"):
        return draw(hnp.arrays(np.dtype(kind), shape))
    if kind == "shift":  # shift counts: non-negative and below the narrowest width drawn
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 7)))
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
_CAT = {"b": 0, "u": 1, "i": 1, "f": 2}


def _like_torch(f):
    """NumPy's ``f`` on operands cast as PyTorch promotes them: an int meets a float in the
    float's dtype, and a 0-d operand counts only when its category is higher (it is a scalar)."""
    def ref(*xs, **kw):
        dims = [a.dtype for a in xs if a.ndim]
        top = max((_CAT[d.kind] for d in dims), default=-1)
        use = dims + [a.dtype for a in xs if not a.ndim and _CAT[a.dtype.kind] > top]
        fl = [d for d in use if d.kind == "f"]
        dt = fl[0] if fl else np.result_type(*use)
        return f(*(a.astype(dt) for a in xs), **kw)
    return ref


for _n in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
    FORWARD.append(Forward(_n, getattr(ng, _n), _like_torch(getattr(np, _n)),
                           _fw_inputs("special", ("special", "int"))))
for _n in ("logical_and", "logical_or", "logical_xor"):
    FORWARD.append(Forward(_n, getattr(ng, _n), getattr(np, _n),
                           _fw_inputs(("bool", "coarse"), ("bool", "coarse", "int"))))
FORWARD.append(Forward("logical_not", ng.logical_not, np.logical_not,
                       _fw_inputs(("bool", "coarse", "int"))))
for _n in ("isnan", "isinf", "isfinite", "floor", "ceil", "round", "trunc"):
    FORWARD.append(Forward(_n, getattr(ng, _n), getattr(np, _n), _fw_inputs("special")))
FORWARD.append(Forward("sign", ng.sign, np.sign, _fw_inputs(("special", "int"))))
FORWARD.append(Forward("floor_divide", ng.floor_divide, _like_torch(np.floor_divide),
                       _fw_inputs(("coarse", "int"), ("nonzero", "intnz"))))
for _n in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    FORWARD.append(Forward(_n, getattr(ng, _n), _like_torch(getattr(np, _n)),
                           _fw_inputs(("int", "int8", "bool"), ("int", "uint8", "bool"))))
FORWARD.append(Forward("bitwise_not", ng.bitwise_not, np.invert,
                       _fw_inputs(("int", "int8", "uint8", "bool"))))
for _n in ("left_shift", "right_shift"):
    FORWARD.append(Forward(_n, getattr(ng, _n), _like_torch(getattr(np, _n)),
                           _fw_inputs(("int", "int8"), "shift")))


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
INTEGER_ONLY = {"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "left_shift",
                "right_shift"}  # refuse float tensors (tested in test_promotion.py)
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
    "binary_cross_entropy": [lambda x: P["binary_cross_entropy"](ng.sigmoid(x), 0.25)],
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


# === the wider operator surface: elementwise, activations, scans, reductions, sorting ==========
DOMAINS.update({
    "unit": _f(-0.9, 0.9),  # asin, acos, atanh
    "gt1": _f(1.1, 3),  # acosh
    "withzeros": st.one_of(st.just(0.0), _f(-2, 2)),  # prod, cumprod: exact zeros
    "withnan": st.one_of(st.just(math.nan), _f(-2, 2)),  # nansum, nanmean
})
_NEW: list[Case] = []
_n0 = len(CASES)

ew("asin", ng.asin, torch.asin, "unit")
ew("acos", ng.acos, torch.acos, "unit")
ew("atan", ng.atan, torch.atan, "wide")
ew("atan2", ng.atan2, torch.atan2, "nonzero", "nonzero")
ew("sinh", ng.sinh, torch.sinh, "wide")
ew("cosh", ng.cosh, torch.cosh, "wide")
ew("asinh", ng.asinh, torch.asinh, "wide")
ew("acosh", ng.acosh, torch.acosh, "gt1")
ew("atanh", ng.atanh, torch.atanh, "unit")
ew("log2", ng.log2, torch.log2, "pos")
ew("log10", ng.log10, torch.log10, "pos")
ew("exp2", ng.exp2, torch.exp2, "real")
ew("rsqrt", ng.rsqrt, torch.rsqrt, "pos")
ew("reciprocal", ng.reciprocal, torch.reciprocal, "nonzero")
ew("hypot", ng.hypot, torch.hypot, "real", "nonzero")
ew("copysign", ng.copysign, torch.copysign, "nonzero", "nonzero")
ew("logaddexp", ng.logaddexp, torch.logaddexp, "wide", "wide")
ew("logaddexp2", ng.logaddexp2, torch.logaddexp2, "wide", "wide")
ew("lerp", ng.lerp, torch.lerp, "real", "real", "real")
ew("lerp_scalar", lambda a, b: ng.lerp(a, b, 0.75), lambda a, b: torch.lerp(a, b, 0.75),
   "real", "real", prims=("lerp",))
ew("fmod", ng.fmod, torch.fmod, "rem_x", "rem_y")
# piecewise constant: zero gradients, as PyTorch's (off the jumps: "offgrid" is 1/8 from them)
ew("floor", ng.floor, torch.floor, "offgrid")
ew("ceil", ng.ceil, torch.ceil, "offgrid")
ew("round", ng.round, torch.round, "offgrid")
ew("round_decimals", lambda x: ng.round(x, decimals=1), lambda x: torch.round(x, decimals=1),
   "offgrid", prims=("round", "multiply", "divide"))
ew("trunc", ng.trunc, torch.trunc, "offgrid")
ew("sign", ng.sign, torch.sign, "nonzero")
ew("cbrt", ng.cbrt, lambda x: torch.sign(x) * x.abs() ** (1 / 3), "nonzero")
ew("floor_divide", lambda x, y: ng.div(x, y, rounding_mode="floor"),
   lambda x, y: torch.div(x, y, rounding_mode="floor"), "rem_x", "rem_y")
ew("trunc_divide", lambda x, y: ng.div(x, y, rounding_mode="trunc"),
   lambda x, y: torch.div(x, y, rounding_mode="trunc"), "rem_x", "rem_y")
ew("nextafter", ng.nextafter, torch.nextafter, "grid", "offgrid")
ew("xlogy", ng.xlogy, torch.xlogy, "nonzero", "pos")
ew("sinc", ng.sinc, torch.sinc, "sinc")
ew("nan_to_num", ng.nan_to_num, torch.nan_to_num, "real")
ew("deg2rad", ng.deg2rad, torch.deg2rad, "real", prims=("multiply",))
ew("rad2deg", ng.rad2deg, torch.rad2deg, "real", prims=("multiply",))
ew("clamp_min", lambda x: ng.clamp_min(x, 0.5), lambda x: torch.clamp_min(x, 0.5), "offgrid",
   prims=("clip",))
ew("clamp_max", lambda x: ng.clamp_max(x, -0.25), lambda x: torch.clamp_max(x, -0.25),
   "offgrid", prims=("clip",))
ew("frac", ng.frac, torch.frac, "offgrid", prims=("subtract",))
# activations (kinks of the piecewise ones sit on the grid; "offgrid" stays 1/8 away)
ew("hardtanh", ng.hardtanh, F.hardtanh, "offgrid")
ew("hardtanh_bounds", lambda x: ng.hardtanh(x, -0.5, 2.0), lambda x: F.hardtanh(x, -0.5, 2.0),
   "offgrid", prims=("hardtanh",))
ew("relu6", ng.relu6, F.relu6, "offgrid", prims=("hardtanh",))
# PyTorch's hardsigmoid gradient and celu with alpha != 1 round a constant to float32 even in
# float64: test_ops_surface compares those at float32 precision
ew("hardsigmoid", ng.hardsigmoid, None, "offgrid", prims=("hardtanh",))
ew("hardswish", ng.hardswish, F.hardswish, "offgrid")
ew("selu", ng.selu, torch.selu, "kink0", prims=("where", "expm1"))
ew("celu", ng.celu, F.celu, "kink0", prims=("where", "expm1"))
ew("celu_alpha", lambda x: ng.celu(x, 0.7), None, "kink0", prims=("where", "expm1"))
ew("mish", ng.mish, F.mish, "wide")
ew("logsigmoid", ng.logsigmoid, F.logsigmoid, "wide", prims=("softplus",))
ew("softsign", ng.softsign, F.softsign, "kink0", prims=("abs", "divide"))
ew("tanhshrink", ng.tanhshrink, F.tanhshrink, "wide", prims=("tanh", "subtract"))
ew("softshrink", ng.softshrink, F.softshrink, "offgrid", prims=("where",))
ew("hardshrink", ng.hardshrink, F.hardshrink, "offgrid", prims=("where",))
ew("threshold", lambda x: ng.threshold(x, 0.5, -1.0), lambda x: F.threshold(x, 0.5, -1.0),
   "offgrid", prims=("where",))


def _one_dim(draw, s):
    """A dim of ``s`` (0 or -1 for a scalar), sometimes negative."""
    return draw(st.integers(-max(len(s), 1), max(len(s), 1) - 1))


def _glu(draw, layout):
    (s,) = draw(shapes(layout))
    dim = draw(st.integers(-len(s), len(s) - 1))
    s = s[:dim % len(s)] + (2 * max(s[dim], 1),) + s[dim % len(s) + 1:]
    return Call(lambda x: ng.glu(x, dim), (arr(draw, s, "wide"),), lambda t: F.glu(t, dim))


case("glu", _glu, ("glu",), ("vector", "matrix", "3d", "size1", "noncontig"))


def _softmin(draw, layout):
    (s,) = draw(shapes(layout))
    axis = draw(st.integers(-len(s), len(s) - 1))
    return Call(lambda x: ng.softmin(x, axis), (arr(draw, s, "wide"),),
                lambda t: F.softmin(t, dim=axis))


case("softmin", _softmin, ("softmax", "negative"), UNARY[1:])


# scans
def scan(name, fn, tfn, domain="real", prims=None, layouts=UNARY):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        dim = _one_dim(draw, s)
        return Call(lambda x: fn(x, dim), (arr(draw, s, domain),), lambda t: tfn(t, dim))

    case(name, build, prims, layouts)


scan("cumsum", ng.cumsum, torch.cumsum)
scan("cumprod", ng.cumprod, torch.cumprod, "withzeros")
scan("cummax", lambda x, d: ng.cummax(x, d).values, lambda t, d: torch.cummax(t, d).values,
     "distinct", ("take_along_axis",))
scan("cummin", lambda x, d: ng.cummin(x, d).values, lambda t, d: torch.cummin(t, d).values,
     "distinct", ("take_along_axis",))
scan("logcumsumexp", ng.logcumsumexp, torch.logcumsumexp, "wide")


# reductions
def _tprod(t, dim, keepdim):
    for d in sorted(dim, reverse=True):
        t = t.prod(d, keepdim=keepdim)
    return t


reduction("prod", ng.prod, _tprod, "withzeros", min_len=0)
reduction("amax", ng.amax, lambda t, **k: t.amax(**k), "distinct", prims=("max",))
reduction("amin", ng.amin, lambda t, **k: t.amin(**k), "distinct", prims=("min",))
reduction("nansum", ng.nansum, lambda t, **k: t.nansum(**k), "withnan", min_len=0,
          nonempty=True, prims=("sum", "where"), layouts=UNARY[1:])


def _nanmean(draw, layout):
    """NaNs anywhere but at one entry per reduced lane (an all-NaN lane's gradient is NaN)."""
    (s,) = draw(shapes(layout))
    axis = draw(axes(s, nonempty=True))
    keep = draw(st.booleans())
    x = arr(draw, s, "withnan")
    red = tdims(axis, len(s))
    x[tuple(0 if d in red else slice(None) for d in range(len(s)))] = 0.5
    return Call(lambda t: ng.nanmean(t, axis, keep), (x,),
                lambda t: tred(torch.nanmean, t, axis, keep))


case("nanmean", _nanmean, ("sum", "where", "divide"), UNARY[1:])


def _moments_pair(name, fn, tfn):
    def build(draw, layout):
        (s,) = draw(shapes(layout))
        s = tuple(max(d, 2) for d in s) if layout != "size1" else s[:-1] + (max(s[-1], 2),)
        axis = draw(axes(s, min_len=2, nonempty=True))
        keep = draw(st.booleans())
        return Call(lambda x: (lambda a, b: a * 1.5 + b)(*fn(x, axis, keepdim=keep)),
                    (arr(draw, s, "distinct"),),
                    lambda t: (lambda a, b: a * 1.5 + b)(*tfn(t, tdims(axis, t.ndim),
                                                              keepdim=keep)))

    case(name, build, ("mean", "sum"), ("vector", "matrix", "3d", "size1", "noncontig"))


_moments_pair("var_mean", ng.var_mean, torch.var_mean)
_moments_pair("std_mean", ng.std_mean, torch.std_mean)


def _aminmax(draw, layout):
    (s,) = draw(shapes(layout))
    dim = _one_dim(draw, s) if draw(st.booleans()) and s else None
    keep = draw(st.booleans())
    return Call(lambda x: (lambda a, b: a - b * 2)(*ng.aminmax(x, dim=dim, keepdim=keep)),
                (arr(draw, s, "distinct"),),
                lambda t: (lambda a, b: a - b * 2)(*torch.aminmax(t, dim=dim, keepdim=keep)))


case("aminmax", _aminmax, ("max", "min"), BASE[:-1] + ("noncontig",))


@st.composite
def _abs_distinct(draw, shape):
    """Entries with distinct absolute values (no ties for the ±inf norms), signs drawn."""
    n = math.prod(shape)
    mags = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n, unique=True))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
    return (np.array(mags, dtype=np.float64) / 16 * np.array(signs)).reshape(shape)


_PRIMES = [p for p in range(2, 400) if all(p % d for d in range(2, int(p ** 0.5) + 1))]


def _untied(draw, shape):
    """Nonzero entries whose sums over disjoint sets never tie: each magnitude carries its own
    multiple of the square root of a distinct prime (matrix norms take a max of row sums)."""
    base = arr(draw, shape, "nonzero")
    n = math.prod(shape)
    extra = 0.01 * np.sqrt(np.array(_PRIMES[:n], dtype=np.float64)).reshape(shape)
    return np.sign(base) * (np.abs(base) + extra)


def _vector_norm(draw, layout):
    (s,) = draw(shapes(layout))
    ord_ = draw(st.sampled_from([2, 1, 3, 0.5, -1.5, math.inf, -math.inf, 0]))
    if (math.isinf(ord_) or ord_ < 0) and layout == "empty":
        ord_ = 2  # a negative order has no value over zero entries: both libraries raise
    axis = draw(axes(s, nonempty=True, min_len=1 if math.isinf(ord_) else 0)) if s else None
    keep = draw(st.booleans())
    x = draw(_abs_distinct(s)) if math.isinf(ord_) else arr(draw, s, "nonzero")
    return Call(lambda t: ng.linalg.vector_norm(t, ord_, axis, keep), (x,),
                lambda t: torch.linalg.vector_norm(t, ord_, tdims(axis, t.ndim), keep))


def _matrix_norm(draw, layout):
    (s,) = draw(shapes(layout))
    ord_ = draw(st.sampled_from(["fro", math.inf, -math.inf, 1, -1]))
    d0, d1 = draw(st.permutations(range(len(s))))[:2]
    keep = draw(st.booleans())
    return Call(lambda t: ng.linalg.matrix_norm(t, ord_, (d0, d1), keep), (_untied(draw, s),),
                lambda t: torch.linalg.matrix_norm(t, ord_, (d0, d1), keep))


def _normalize(draw, layout):
    (s,) = draw(shapes(layout))
    dim = draw(st.integers(-len(s), len(s) - 1))
    p = draw(st.sampled_from([2.0, 1.0, 3.0]))
    return Call(lambda t: ng.nn.functional.normalize(t, p, dim), (arr(draw, s, "nonzero"),),
                lambda t: F.normalize(t, p, dim))


def _norm(draw, layout):
    (s,) = draw(shapes(layout))
    p = draw(st.sampled_from(["fro", 2, 1, 4]))
    dim = draw(st.sampled_from([None, -1]))
    return Call(lambda t: t.norm(p, dim), (arr(draw, s, "nonzero"),),
                lambda t: torch.norm(t, p, dim))


case("vector_norm", _vector_norm)
case("matrix_norm", _matrix_norm, ("vector_norm",), ("matrix", "3d", "size1", "noncontig"))
case("normalize", _normalize, ("vector_norm", "divide", "clip"), UNARY[1:-2] + ("noncontig",))
case("norm", _norm, ("vector_norm",), UNARY[1:-2] + ("noncontig",))


# sorting and selection (distinct values: the gradient of a gather at ties is a convention)
def _sort(draw, layout):
    (s,) = draw(shapes(layout))
    dim, desc = _one_dim(draw, s), draw(st.booleans())
    return Call(lambda x: ng.sort(x, dim, desc).values, (arr(draw, s, "distinct"),),
                lambda t: torch.sort(t, dim, desc).values)


def _topk(draw, layout):
    (s,) = draw(shapes(layout))
    dim, largest = _one_dim(draw, s), draw(st.booleans())
    k = draw(st.integers(0, s[dim]) if s else st.just(1))
    return Call(lambda x: ng.topk(x, k, dim, largest).values, (arr(draw, s, "distinct"),),
                lambda t: torch.topk(t, k, dim, largest).values)


def _kthvalue(draw, layout):
    (s,) = draw(shapes(layout))
    dim, keep = _one_dim(draw, s), draw(st.booleans())
    k = draw(st.integers(1, s[dim] if s else 1))
    return Call(lambda x: ng.kthvalue(x, k, dim, keep).values, (arr(draw, s, "distinct"),),
                lambda t: torch.kthvalue(t, k, dim, keep).values)


def _median_all(draw, layout):
    (s,) = draw(shapes(layout))
    return Call(ng.median, (arr(draw, s, "distinct"),), torch.median)


def _median(draw, layout):
    (s,) = draw(shapes(layout))
    dim, keep = _one_dim(draw, s), draw(st.booleans())
    return Call(lambda x: ng.median(x, dim, keep).values, (arr(draw, s, "distinct"),),
                lambda t: torch.median(t, dim, keep).values)


def _quantile(draw, layout):
    (s,) = draw(shapes(layout))
    q = draw(st.sampled_from([0.3, 0.5, 1.0, [0.0, 0.25, 0.9]]))
    dim = _one_dim(draw, s) if s and draw(st.booleans()) else None
    keep = draw(st.booleans())
    how = draw(st.sampled_from(["linear", "lower", "higher", "midpoint", "nearest"]))
    qa = np.array(q)

    def fn(x):
        qt = ng.tensor(qa.astype(x.dtype)) if qa.ndim else float(q)
        return ng.quantile(x, qt, dim, keep, interpolation=how)

    def tfn(t):
        qt = torch.tensor(qa, dtype=t.dtype) if qa.ndim else float(q)
        return torch.quantile(t, qt, dim, keep, interpolation=how)

    return Call(fn, (arr(draw, s, "distinct"),), tfn)


_NONEMPTY = BASE[:-1] + ("noncontig",)
case("sort", _sort, ("take_along_axis",))
case("topk", _topk, ("take_along_axis",))
case("kthvalue", _kthvalue, ("take_along_axis",), _NONEMPTY)
case("median", _median, ("take_along_axis",), _NONEMPTY)
case("median_all", _median_all, ("where", "sum"), _NONEMPTY)  # tied entries share the gradient
case("quantile", _quantile, ("take_along_axis",), _NONEMPTY)

ORDER2 += ("asin", "atan2", "hypot", "logaddexp", "lerp", "xlogy", "hardtanh", "mish",
           "cumsum", "cumprod", "logcumsumexp", "prod", "vector_norm", "sort", "quantile")
CASES_BY_NAME.update({c.name: c for c in CASES[_n0:]})
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"


# --- loops: nodegrad.lax.scan against a Python loop in PyTorch ---------------------------------
def _scan_case(draw, layout):
    """An Elman cell h = tanh(h @ w + x) scanned over T steps (0 for "empty"), forwards or
    backwards; the result mixes the final carry and the stacked outputs."""
    n = draw(st.integers(1, 3))
    steps = 0 if layout == "empty" else draw(st.integers(1, 4))
    lead = () if layout == "vector" else (draw(st.integers(1, 3)),)
    reverse = draw(st.booleans())
    args = (arr(draw, (steps,) + lead + (n,)), arr(draw, lead + (n,)),
            arr(draw, (n, n)) * 0.5)

    def fn(xs, h0, w):
        def cell(h, x):
            h = ng.tanh(h @ w + x)
            return h, h * h
        c, ys = ng.lax.scan(cell, h0, xs, reverse=reverse)
        return c * 0.5 + ys.sum(0)

    def tfn(xs, h0, w):
        h, ys = h0, []
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            h = torch.tanh(h @ w + xs[t])
            ys.append(h * h)
        return h * 0.5 + (sum(ys) if ys else torch.zeros_like(h0))

    return Call(fn, args, tfn)


_n1 = len(CASES)
case("scan", _scan_case, ("scan",), ("vector", "matrix", "empty", "noncontig"))
ORDER2 += ("scan",)
CASES_BY_NAME.update({c.name: c for c in CASES[_n1:]})


# --- branches: nodegrad.lax.switch (lax.cond's primitive) against Python's choice in PyTorch ---
def _cond_case(draw, layout):
    """lax.switch over three branches that read the operands differently, one closing over w;
    the index is drawn past both ends (clamped, as in JAX)."""
    shx, shy = draw(shapes(layout, 2))
    i = draw(st.integers(-1, 3))
    args = (arr(draw, shx), arr(draw, shy), arr(draw, ()))

    def fn(x, y, w):
        a, b = ng.lax.switch(i, [lambda u, v: (ng.tanh(u) * w, v * v),
                                 lambda u, v: (u * 2.0, ng.sin(v) * w),
                                 lambda u, v: (u * u * w, v + 1.0)], x, y)
        return ng.concatenate([a.reshape(-1), b.reshape(-1)])

    def tfn(x, y, w):
        a, b = [(torch.tanh(x) * w, y * y), (x * 2.0, torch.sin(y) * w),
                (x * x * w, y + 1.0)][min(max(i, 0), 2)]
        return torch.cat([a.reshape(-1), b.reshape(-1)])

    return Call(fn, args, tfn)


_n2 = len(CASES)
case("cond", _cond_case, ("cond",), NARY)
ORDER2 += ("cond",)
CASES_BY_NAME.update({c.name: c for c in CASES[_n2:]})


# --- lax.while_loop (no reverse-mode gradient): its trip count depends on the values -----------
def _while_fn(x):
    with ng.no_grad():  # (with a gradient needed, the result carries forward mode's node)
        return ng.lax.while_loop(lambda c: (c[0] < 6) & ((c[1] * c[1]).sum() < 400.0),
                                 lambda c: (c[0] + 1, c[1] * 1.5 + 0.1), (0, x))[1]


def _while_ref(x):
    for _ in range(6):
        if (x * x).sum() >= 400.0:
            break
        x = x * 1.5 + 0.1
    return x


FORWARD.append(Forward("while_loop", _while_fn, _while_ref,
                       lambda draw: ((arr(draw, draw(shapes("matrix", 1))[0], "wide"),), {}),
                       rtol=1e-12))


# --- forward values of the new primitives without a gradient -----------------------------------
def _cumarg_ref(x, axis, largest):
    out = np.zeros(x.shape, np.int64)
    xs, os_ = np.moveaxis(x, axis, -1), np.moveaxis(out, axis, -1)
    for lane in np.ndindex(*xs.shape[:-1]):
        best, bi = None, 0
        for i, v in enumerate(xs[lane]):
            if best is None or (not np.isnan(best) and (np.isnan(v) or (
                    v >= best if largest else v <= best))):
                best, bi = v, i
            elif np.isnan(v):
                best, bi = v, i
            os_[lane + (i,)] = bi
    return out


def _axis_build(kinds, **extra):
    def build(draw):
        (x,), _ = _fw_inputs(kinds, layouts=BASE[1:])(draw)
        params = {"axis": draw(st.integers(0, x.ndim - 1))}
        params.update({k: draw(v) for k, v in extra.items()})
        return (x,), params
    return build


def _argsort_ref(x, axis, descending):
    if descending:  # stable descending without negating (ints, NaN): reverse, sort, map back
        r = np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
        return x.shape[axis] - 1 - r
    return np.argsort(x, axis=axis, kind="stable")


def _searchsorted_build(draw):
    dt = draw(st.sampled_from([np.float32, np.float64]))
    n, m = draw(st.integers(1, 6)), draw(st.integers(0, 5))
    lead = draw(st.sampled_from([(), (2,), (2, 3)]))
    seq = np.sort(draw(hnp.arrays(dt, lead + (n,), elements=_COARSE)), -1)
    v = draw(hnp.arrays(dt, lead + (m,) if lead else draw(st.sampled_from([(m,), (2, m), ()])),
                        elements=_COARSE))
    return (seq, v), {"right": draw(st.booleans()), "int32": draw(st.booleans())}


def _searchsorted_ref(seq, v, right, int32):
    side = "right" if right else "left"
    if seq.ndim == 1:
        out = np.searchsorted(seq, v, side=side)
    else:
        out = np.stack([np.searchsorted(seq[i], v[i], side=side)
                        for i in np.ndindex(*seq.shape[:-1])]).reshape(v.shape)
    return np.asarray(out).astype(np.int32 if int32 else np.int64)


def _trunc_div_ref(x, y):
    if np.result_type(x, y).kind == "f":
        return np.trunc(np.true_divide(x, y))
    return (np.abs(x) // np.abs(y)) * np.sign(x) * np.sign(y)


def _attention_grad_ref(g, q, k, v, scale, causal):
    """scaled_dot_product_attention's VJP in float64 NumPy, stacked (dq, dk, dv)."""
    s = (q * scale) @ np.swapaxes(k, -1, -2)
    if causal:
        s = np.where(np.tri(q.shape[-2], dtype=bool), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = g @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return np.stack([ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale,
                     np.swapaxes(p, -1, -2) @ g])


def _attention_grad_build(draw):
    shape = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 1)))) + (
        draw(st.integers(1, 5)), draw(st.integers(1, 4)))
    args = tuple(arr(draw, shape) for _ in range(4))
    return args, {"scale": draw(st.sampled_from([0.3, 1.0])), "causal": draw(st.booleans())}


FORWARD.append(Forward("attention_grad", lambda g, q, k, v, scale, causal: P[
    "attention_grad"](g, q, k, v, scale=scale, causal=causal), _attention_grad_ref,
    _attention_grad_build, rtol=1e-9))
def _layer_norm_grad_ref(g, x, w, k, eps, want):
    """Layer norm's VJP in float64 NumPy: the wanted dx, dw, db flattened and joined."""
    axes, lead = tuple(range(x.ndim - k, x.ndim)), tuple(range(x.ndim - k))
    xc = x - x.mean(axes, keepdims=True)
    r = 1 / np.sqrt((xc * xc).mean(axes, keepdims=True) + eps)
    xh, v = xc * r, g * w
    dx = (v - v.mean(axes, keepdims=True) - xh * (v * xh).mean(axes, keepdims=True)) * r
    parts = (dx, (g * xh).sum(lead), g.sum(lead))
    return np.concatenate([p.reshape(-1) for p, on in zip(parts, want) if on])


def _layer_norm_grad_build(draw):
    k = draw(st.integers(1, 2))
    tail = tuple(draw(st.integers(2, 5)) for _ in range(k))
    lead = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 2))))
    x = arr(draw, lead + tail)
    assume(np.all(np.std(x.reshape(-1, math.prod(tail)), axis=1) > 0.1))  # away from var = 0
    want = draw(st.sampled_from([(True, True, True), (True, False, False), (False, True, True),
                                 (False, False, True)]))
    return (arr(draw, lead + tail), x, arr(draw, tail)), {"k": k, "eps": 1e-5, "want": want}


FORWARD.append(Forward("layer_norm_grad", lambda g, x, w, k, eps, want: P["layer_norm_grad"](
    g, x, w, k=k, eps=eps, want=want), _layer_norm_grad_ref, _layer_norm_grad_build, rtol=1e-9))
FORWARD.append(Forward("argsort", lambda x, axis, descending: P["argsort"](
    x, axis=axis, descending=descending), _argsort_ref,
    _axis_build(("coarse", "int"), descending=st.booleans())))
FORWARD.append(Forward("cumarg", lambda x, axis, largest: P["cumarg"](
    x, axis=axis, largest=largest), _cumarg_ref,
    _axis_build(("coarse", "special", "int"), largest=st.booleans())))
FORWARD.append(Forward("searchsorted", lambda s, v, right, int32: P["searchsorted"](
    s, v, right=right, int32=int32), _searchsorted_ref, _searchsorted_build))
FORWARD.append(Forward("trunc_divide", ng.trunc_divide, _like_torch(_trunc_div_ref),
                       _fw_inputs(("coarse", "int"), ("nonzero", "intnz"))))


def _isclose_build(draw):
    args, _ = _fw_inputs("special", "special")(draw)
    return args, {"rtol": draw(st.sampled_from([1e-5, 0.5])),
                  "atol": draw(st.sampled_from([0.0, 0.6])), "equal_nan": draw(st.booleans())}


FORWARD.append(Forward("isclose", ng.isclose, np.isclose, _isclose_build))


def _ce_weights_ref(t, ignore_index, reduction, dtype):
    keep = (t != ignore_index).astype(dtype)
    if reduction == "mean":  # every target ignored: zero weights (the mean is NaN, its
        n = keep.sum()        # gradient zero, as PyTorch's)
        return keep / n if n else keep
    return keep


def _ce_weights_build(draw):
    (s,) = draw(shapes(draw(st.sampled_from(BASE))))
    t = draw(hnp.arrays(np.int64, s, elements=st.integers(-1, 3)))
    return (t,), {"ignore_index": -1, "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
                  "dtype": np.dtype(draw(st.sampled_from(["float32", "float64"])))}


FORWARD.append(Forward("cross_entropy_weights", lambda t, **p: P["cross_entropy_weights"](t, **p),
                       _ce_weights_ref, _ce_weights_build))


def _gru_np_steps(gi, w, b, h0, reverse):
    """The GRU's formulas per direction, in processing order: (t, h_{t-1}, r, z, gₙ, n) per
    step (each (N, H)), and the final state."""
    n_h = h0.shape[-1]
    out = []
    for d in range(gi.shape[0]):
        h, steps = h0[d], []
        times = range(gi.shape[2])
        for t in (reversed(times) if reverse and reverse[d] else times):
            x, gh = gi[d, :, t].T, h @ w[d].T + b[d]
            r = 1 / (1 + np.exp(-x[:, :n_h] - gh[:, :n_h]))
            z = 1 / (1 + np.exp(-x[:, n_h:2 * n_h] - gh[:, n_h:2 * n_h]))
            n = np.tanh(x[:, 2 * n_h:] + r * gh[:, 2 * n_h:])
            steps.append((t, h, r, z, gh[:, 2 * n_h:], n))
            h = n + z * (h - n)
        out.append((steps, h))
    return out


def _gru_scan_loop_ref(gi, w, b, h0, reverse=()):
    """gru_scan_loop's layout: per step h_{s-1}, 1, r, 1 - z, gₙ, n, rows direction-minor."""
    n_dir, n_g, steps, batch = gi.shape
    dh = n_dir * (n_g // 3)
    loop = np.zeros((steps + 1, 5 * dh + 1, batch))
    loop[:steps, dh] = 1
    for d, (per, h) in enumerate(_gru_np_steps(gi, w, b, h0, reverse)):
        for s, vals in enumerate(per):
            for k, v in enumerate(vals[1:3] + (1 - vals[3],) + vals[4:]):  # 1 - z kept
                start = (k and k * dh + 1) + d * v.shape[1]
                loop[s, start:start + v.shape[1]] = v.T
        loop[steps, d * h.shape[1]:(d + 1) * h.shape[1]] = h.T
    loop[steps, dh] = 1
    return loop


def _gru_scan_grad_ref(g, gi, w, b, h0, reverse=()):
    """gru_scan's reverse loop step by step from the GRU's formulas: the cotangents of gi, w, b
    and h0, flattened one after the other."""
    n_h = h0.shape[-1]
    dgi, dw, db, dh0 = np.zeros_like(gi), np.zeros_like(w), np.zeros_like(b), np.zeros_like(h0)
    for d, (per, _) in enumerate(_gru_np_steps(gi, w, b, h0, reverse)):
        dh = np.zeros_like(h0[d])
        for t, hp, r, z, ghn, n in reversed(per):
            dh = dh + g[t, :, d]
            da = dh * (1 - z) * (1 - n * n)
            dgh = np.concatenate([da * ghn * r * (1 - r), dh * (hp - n) * z * (1 - z), da * r], -1)
            dgi[d, :, t] = np.concatenate([dgh[:, :2 * n_h], da], -1).T
            dw[d] += dgh.T @ hp
            db[d] += dgh.sum(0)
            dh = dh * z + dgh @ w[d]
        dh0[d] = dh
    return np.concatenate([v.ravel() for v in (dgi, dw, db, dh0)])


def _gru_scan_args(draw, min_steps):
    n_h, steps = draw(st.integers(1, 2)), draw(st.integers(min_steps, 3))
    batch, n_dir = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    rev = draw(st.sampled_from([(), (True,) * n_dir, (False, True)[-n_dir:]]))
    return (arr(draw, (n_dir, 3 * n_h, steps, batch), "wide"), arr(draw, (n_dir, 3 * n_h, n_h)),
            arr(draw, (n_dir, 3 * n_h)), np.tanh(arr(draw, (n_dir, batch, n_h), "wide"))), rev


def _gru_scan_loop_build(draw):
    args, rev = _gru_scan_args(draw, 0)
    return args, {"reverse": rev}


def _gru_scan_grad_build(draw):
    (gi, w, b, h0), rev = _gru_scan_args(draw, 0)
    g = arr(draw, (gi.shape[2], gi.shape[3], gi.shape[0], h0.shape[-1]))
    return (g, gi, w, b, h0), {"reverse": rev}


FORWARD.append(Forward("gru_scan_loop", lambda *a, **p: P["gru_scan_loop"](*a, **p),
                       _gru_scan_loop_ref, _gru_scan_loop_build, rtol=1e-10))
FORWARD.append(Forward(
    "gru_scan_grad", lambda g, gi, w, b, h0, reverse: P["gru_scan_grad"](
        g, P["gru_scan_loop"](gi, w, b, h0, reverse=reverse), w, reverse=reverse),
    _gru_scan_grad_ref, _gru_scan_grad_build, rtol=1e-10))



def _geqrf_build(draw):
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    lead = draw(st.sampled_from([(), (2,)]))
    return (arr(draw, lead + (m, n)),), {}


def _geqrf_ref(a):
    h, tau = np.linalg.qr(a, mode="raw")
    h = np.swapaxes(h, -1, -2)
    return np.concatenate([h.reshape(h.shape[:-2] + (-1,)), tau], -1)


FORWARD.append(Forward("geqrf", lambda a: P["geqrf"](a), _geqrf_ref, _geqrf_build))

PREDICATES |= {"isclose"}
SCALAR_FORMS.update({
    "relu_grad": [lambda x: P["relu_grad"](x, 1.0), lambda x: P["relu_grad"](2.0, x)],
    "tanh_grad": [lambda x: P["tanh_grad"](x, 0.5), lambda x: P["tanh_grad"](2.0, x)],
    "sin_grad": [lambda x: P["sin_grad"](x, 0.5), lambda x: P["sin_grad"](2.0, x)],
    "cos_grad": [lambda x: P["cos_grad"](x, 0.5), lambda x: P["cos_grad"](2.0, x)],
    "sigmoid_grad": [lambda x: P["sigmoid_grad"](x, 0.25), lambda x: P["sigmoid_grad"](2.0, x)],
    "gelu_grad": [lambda x: P["gelu_grad"](x, 0.5), lambda x: P["gelu_grad"](2.0, x)],
    "atan2": [lambda x: ng.atan2(x, 1.5), lambda x: ng.atan2(0.5, x)],
    "hypot": [lambda x: ng.hypot(x, 2.0)],
    "copysign": [lambda x: ng.copysign(x, -1.0), lambda x: ng.copysign(2.0, x)],
    "logaddexp": [lambda x: ng.logaddexp(x, 0.5)],
    "logaddexp2": [lambda x: ng.logaddexp2(1.5, x)],
    "lerp": [lambda x: ng.lerp(x, 2.0 * x, 0.25), lambda x: ng.lerp(x, 1.0, 0.75)],
    "fmod": [lambda x: ng.fmod(x, 1.5), lambda x: ng.fmod(2.5, x)],
    "xlogy": [lambda x: ng.xlogy(x, 2.0), lambda x: ng.xlogy(2.0, x)],
    "trunc_divide": [lambda x: ng.trunc_divide(x, 1.5), lambda x: x.div(2, rounding_mode="trunc")],
    "nan_to_num": [ng.nan_to_num, lambda x: ng.nan_to_num(x, 1.0, 2.0, -2.0)],
    "hardtanh": [ng.hardtanh, lambda x: ng.hardtanh(x, -0.5, 0.5)],
    "isclose": [lambda x: ng.isclose(x, 0.25), lambda x: ng.isclose(1.5, x, atol=0.1)],
    "round": [ng.round, lambda x: ng.round(x, decimals=1)],
})
MIXED_FORMS.update({
    "atan2": ng.atan2, "hypot": ng.hypot, "copysign": ng.copysign, "logaddexp": ng.logaddexp,
    "logaddexp2": ng.logaddexp2, "lerp": lambda a, b: ng.lerp(a, b, 0.5),
    "lerp_weight": lambda a, b: ng.lerp(a, a, b), "fmod": ng.fmod, "xlogy": ng.xlogy,
    "isclose": ng.isclose, "trunc_divide": ng.trunc_divide,
})


# --- cases kept beside their op family's own file, appended here ----------------------------------
_n2 = len(CASES)
for _family in ("_opcases_products", "_opcases_special", "_opcases_slicing",
                "_opcases_complex"):
    importlib.import_module(_family)
CASES_BY_NAME.update({c.name: c for c in CASES[_n2:]})
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"


# --- fused activations: silu, mish (above), glu (above) and their gradients' primitives ---------
_n3 = len(CASES)


def _tsp(x):
    return torch.tanh(F.softplus(x))


ew("silu", ng.nn.functional.silu, lambda x: F.silu(x), "wide")
ew("silu_grad", lambda g, x: P["silu_grad"](g, x),
   lambda g, x: g * (x.sigmoid() * (1 + x * (1 - x.sigmoid()))), "real", "wide")
ew("mish_grad", lambda g, x: P["mish_grad"](g, x),
   lambda g, x: g * (_tsp(x) + x * x.sigmoid() * (1 - _tsp(x) * _tsp(x))), "real", "wide")
SCALAR_FORMS.update({
    "silu": [ng.nn.functional.silu], "mish": [ng.mish], "hardswish": [ng.hardswish],
    "silu_grad": [lambda x: P["silu_grad"](x, 0.25), lambda x: P["silu_grad"](2.0, x)],
    "mish_grad": [lambda x: P["mish_grad"](x, -0.5), lambda x: P["mish_grad"](1.5, x)],
})
MIXED_FORMS.update({"silu_grad": lambda a, b: P["silu_grad"](a, b),
                    "mish_grad": lambda a, b: P["mish_grad"](a, b)})
ORDER2 += ("silu", "silu_grad", "mish_grad", "glu", "hardswish")
CASES_BY_NAME.update({c.name: c for c in CASES[_n3:]})
assert len(CASES_BY_NAME) == len(CASES), "case names must be unique"
