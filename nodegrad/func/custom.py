"""Functions with a gradient rule of their own: JAX's ``custom_vjp`` and PyTorch's
``autograd.Function``.

Both run the user's forward on tensors and put one graph node over its outputs whose VJP is
the user's backward. The forward's own ops run as ordinary ops (so ``ng.jit`` captures them, and
the residuals a forward keeps carry their graph, which is what a second derivative of a
``custom_vjp`` differentiates); only the outputs are detached from that graph and hung on the
custom node. Several outputs of one dtype are packed into one flat tensor under that node, as a
module's backward hooks do, so the backward runs once with every output's cotangent.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import _backend as B
from ..autodiff import Node, creation_site, modes, no_grad, pack_tensors, unpack_tensor
from ..errors import GradError, InplaceError, ShapeError
from ..ops import concatenate
from ..ops.index import write_through
from ..ops.methods import _rebind
from ..ops.elementwise import astype
from ..ops.shape import _reshape, _transpose
from ..primitive import Primitive
from ..tensor import Tensor, zeros_like
from ..batching import BatchTracer, Level, batched, front, lowered
from ..tensor import tensor
from .tree import tree_flatten, tree_map, tree_unflatten
from .vmap import vmap

__all__ = ["custom_vjp", "custom_jvp", "Function", "FunctionCtx", "once_differentiable"]


def _rule(name: str, vjp_all: Callable) -> Primitive:
    """An unregistered primitive that only carries a custom VJP (its forward never binds)."""
    p = Primitive(name, None, None, vjp_all, None, None, None, "none", False,
                  f"the custom gradient rule of {name}")

    def no_jvp(*a, **k):
        raise TypeError(f"{name}: forward-mode differentiation (jvp, jacfwd, hvp) of a function "
                        "with a custom VJP is not defined (as in JAX); use grad, vjp or jacrev")

    p.jvp = no_jvp
    return p


def _diff(t) -> bool:
    return isinstance(t, Tensor) and t.requires_grad and B.is_float(t.dtype)


def _bottom(t):
    """The batched value under a vmap tracer (through every level): what requires grad."""
    while type(t) is BatchTracer:
        t = t.val
    return t


def _attach(outs: list, inputs: list, rule: Primitive, call) -> list:
    """Hang the differentiable tensors of ``outs`` on one node of ``rule`` whose parents are
    ``inputs``; return ``outs`` with those tensors replaced by views of that node's value."""
    return _attach_node(outs, inputs, rule, call)[0]


def _attach_node(outs: list, inputs: list, rule: Primitive, call,
                 versions: list | None = None, keep_out: bool = False) -> tuple[list, Node | None]:
    """:func:`_attach`, also returning the node (None when no output is differentiable).
    ``versions`` are the node's (counter, version, None, None) entries, checked before its
    backward runs; ``keep_out`` keeps the node's value for the backward (the VJP's ``ans``)."""
    slots = [i for i, o in enumerate(outs)
             if isinstance(o, Tensor) and B.is_float(o.dtype) and i not in call.nondiff]
    if not slots:
        return outs, None
    dtypes = [outs[i].dtype for i in slots]
    # outputs of several float dtypes are packed in float64, which holds each of them exactly
    joint_dt = B.float64 if len(set(dtypes)) > 1 else None
    if joint_dt is not None and "dtypes" not in getattr(type(call), "__slots__", ()):
        raise GradError(f"{rule.name}: the differentiable outputs must share one dtype, got "
                        f"{sorted(str(d) for d in dtypes)}")
    # a call that keeps layouts (a jitted call's replay) lays an F-ordered output out
    # transposed in the flat value and hands out an F-ordered view of it, as its forward made
    # it: the sums over it, and the cotangents computed from it, then add as eagerly
    orders = None
    if getattr(call, "keep_layout", False):
        orders = [_f_ordered(outs[i]._data) for i in slots]
        call.orders = orders = orders if any(orders) else None
    with no_grad():
        flat = [_reshape(_reversed(outs[i].detach()) if orders and orders[k] else
                         outs[i].detach(), shape=(outs[i]._data.size,))
                for k, i in enumerate(slots)]
        if joint_dt is not None:
            flat = [astype(f, joint_dt) for f in flat]
        joint = flat[0] if len(flat) == 1 else concatenate(flat)
    parents = tuple((a.node or a) if _diff(a) else None for a in inputs)
    call.slots = slots
    call.shapes = [outs[i].shape for i in slots]
    if joint_dt is not None:
        call.dtypes = dtypes
    node = Node.make(rule, {"call": call}, parents, None, joint._data if keep_out else None,
                     tuple(a.shape if isinstance(a, Tensor) else () for a in inputs), versions)
    if modes().anomaly:
        node.trace = creation_site()
    joint = Tensor._of(joint._data, node, True)
    outs = list(outs)
    start = 0
    for k, (i, shape, dt) in enumerate(zip(slots, call.shapes, dtypes)):
        n = outs[i]._data.size
        part = joint if len(slots) == 1 else joint[start:start + n]
        outs[i] = (_reversed(_reshape(part, shape=shape[::-1])) if orders and orders[k]
                   else _reshape(part, shape=shape))
        if joint_dt is not None:
            outs[i] = astype(outs[i], dt)
        start += n
    return outs, node


def _unpack(g: Tensor, call) -> list:
    """The node's flat value (or cotangent, tangent) cut into the outputs' shapes and, where
    they differ, dtypes."""
    out, start = [], 0
    dtypes = getattr(call, "dtypes", None)  # set only where the outputs' dtypes differ
    orders = getattr(call, "orders", None)  # set only where an output is kept F-ordered
    for k, shape in enumerate(call.shapes):
        n = 1
        for s in shape:
            n *= s
        part = g if len(call.shapes) == 1 else g[start:start + n]
        if orders is not None and orders[k]:
            part = _reversed(_reshape(part, shape=shape[::-1]))
        else:
            part = _reshape(part, shape=shape)
        if dtypes is not None and part.dtype != dtypes[k]:
            part = astype(part, dtypes[k])
        out.append(part)
        start += n
    return out


def _f_ordered(a) -> bool:
    return a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous


def _reversed(t: Tensor) -> Tensor:
    """``t`` with its axes in reverse order (an F-ordered array's C-ordered view)."""
    return _transpose(t, axes=tuple(range(t.ndim - 1, -1, -1)))


def _flat(t: Tensor, call) -> Tensor:
    """One output's tangent laid flat for the node's packed value (its dtype where mixed)."""
    t = _reshape(t, shape=(t._data.size,))
    return t if getattr(call, "dtypes", None) is None else astype(t, B.float64)


def _check_grads(name: str, grads, n: int, extra_none: bool = False) -> tuple:
    """The ``n`` gradients a backward returned; with ``extra_none`` (PyTorch's Function) extra
    trailing Nones are dropped, as PyTorch allows. Each is a tensor or None."""
    grads = tuple(grads) if isinstance(grads, list | tuple) else (grads,)
    if extra_none and len(grads) > n and all(g is None for g in grads[n:]):
        grads = grads[:n]
    if len(grads) != n:
        raise GradError(f"{name}: backward returned {len(grads)} gradients, expected {n} (one "
                        "per input, None where there is none)")
    for i, g in enumerate(grads if extra_none else ()):
        if g is not None and not isinstance(g, Tensor):  # PyTorch: "expected Variable or None"
            raise TypeError(f"{name}: gradient {i} is {type(g).__name__}; expected a tensor or "
                            "None")
    return grads


def _check_shapes(name: str, grads, specs, args: tuple | None = None) -> list:
    """Each gradient has its input's shape, or one that sums down to it (as PyTorch allows).
    With the inputs ``args`` (an ``autograd.Function``'s), a gradient of another dtype is cast
    to its floating input's, as PyTorch's engine does (a bfloat16 gradient from a backward run
    under autocast for a float32 input, say).

    The user's backward may return an array it keeps (a tensor saved on ctx, a residual), so
    each is noted as one the engine did not make: a leaf that stores it as ``.grad`` copies it
    (see autodiff._add_to_grad), and a later backward's in-place accumulation cannot change
    what the user holds."""
    seen = modes().grads_seen
    grads = list(grads)
    for i, (g, s) in enumerate(zip(grads, specs)):
        if g is None or not isinstance(g, Tensor):
            continue
        if seen is not None:
            seen.add(id(g._data))
        if tuple(g.shape) != tuple(s.shape):
            gs, xs = tuple(g.shape), tuple(s.shape)
            if len(gs) < len(xs) or any(a != b and b != 1
                                        for a, b in zip(gs[len(gs) - len(xs):], xs)):
                raise ShapeError(f"{name}: backward returned gradient {i} of shape {gs} for an "
                                 f"input of shape {xs}; expected that shape or one that sums "
                                 "down to it")
        if args is not None:
            a = args[i]
            if isinstance(a, Tensor) and g.dtype != a.dtype and (
                    a.dtype.kind == "c" or B.is_float(a.dtype)):
                if g.dtype.kind == "c" and a.dtype.kind != "c":
                    raise GradError(f"{name}: backward returned a complex gradient {i} "
                                    f"({g.dtype}) for a real input of dtype {a.dtype}")
                grads[i] = astype(g, a.dtype)
    return grads


# --- JAX: custom_vjp ---------------------------------------------------------------------------
_in_fwd = threading.local()  # per thread: id(custom rule) -> how many of its rule calls run


def _guarded(owner, fn: Callable, *args):
    """``fn(*args)`` (a custom function's own rule) with calls of ``owner`` inside it
    evaluating its plain ``fun``."""
    running = getattr(_in_fwd, "ids", None)
    if running is None:
        running = _in_fwd.ids = {}
    key = id(owner)
    running[key] = running.get(key, 0) + 1
    try:
        return fn(*args)
    finally:
        running[key] -= 1
        if not running[key]:
            del running[key]


def _in_rule(owner) -> bool:
    return id(owner) in getattr(_in_fwd, "ids", ())


class _Call:
    """What one call of a custom_vjp or custom_jvp function keeps for its rules: the output's
    and the arguments' structure, and the residuals (vjp) or the primals (jvp)."""

    __slots__ = ("residuals", "primals", "out_def", "n_leaves", "in_defs", "kinds", "slots",
                 "shapes", "dtypes", "nondiff", "static")

    def __init__(self, static: list) -> None:
        self.nondiff: tuple = ()
        self.static = static

    def attach(self, rule, out, diff_args: list, leaves: list):
        """``out`` with one node of ``rule`` hung over its leaves, reading this record."""
        out_leaves, self.out_def = tree_flatten(out)
        self.n_leaves = len(out_leaves)
        self.in_defs = [tree_flatten(a)[1] for a in diff_args]
        self.kinds = [len(tree_flatten(a)[0]) for a in diff_args]
        return tree_unflatten(self.out_def, _attach(out_leaves, leaves, rule, self))


def _without_node(rule, args: tuple, leaves: list) -> tuple[bool, object]:
    """(True, result) when a call of ``rule`` (a custom_vjp or custom_jvp) hangs no node: one
    of the differentiated ``leaves`` is batched by the innermost vmap (the batched call), or
    nothing is differentiated (``rule.fun`` itself); (False, None) otherwise."""
    m = modes()
    top = m.traces[-1] if m.traces else None
    if type(top) is Level and any(type(t) is BatchTracer and t.level is top for t in leaves):
        return True, rule._batched(args, top, len(m.traces) - 1)
    if not (m.grad_enabled and any(_diff(t) for t in leaves)):
        return True, rule.fun(*args)
    return False, None


def _nondiff(fun: Callable, nums, names, name: str) -> tuple:
    """JAX's ``nondiff_argnums`` with the positions of ``nondiff_argnames`` added, sorted (as
    JAX: the rule gets the nondiff arguments first, in argument order)."""
    nums = (nums,) if isinstance(nums, int) else tuple(nums)
    names = (names,) if isinstance(names, str) else tuple(names)
    if names:
        try:
            params = list(inspect.signature(fun).parameters)
        except (TypeError, ValueError):
            params = []
        for n in names:
            if n not in params:
                raise ValueError(f"{name}: nondiff_argnames names {n!r}, which is not a "
                                 f"parameter of the function (it has {params})")
        nums += tuple(params.index(n) for n in names)
    for i in nums:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise TypeError(f"{name}: nondiff_argnums must be non-negative ints, got {i!r}")
    return tuple(sorted(set(nums)))


def _positional(fun: Callable, args: tuple, kwargs: dict, name: str) -> tuple:
    """The call's arguments as positions of ``fun``'s signature, defaults filled in (JAX's
    custom rules see positional arguments only)."""
    try:
        sig = inspect.signature(fun)
    except (TypeError, ValueError):  # no signature to read (a builtin): positions as given
        if kwargs:
            raise TypeError(f"{name}: keyword arguments need a function with a signature; "
                            "pass them positionally") from None
        return args
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None
    bound.apply_defaults()
    if bound.kwargs:
        raise TypeError(f"{name}: keyword arguments {sorted(bound.kwargs)} cannot be resolved "
                        "to positions; pass them positionally")
    return bound.args


class custom_vjp:
    """``f`` with a VJP of your own (JAX's ``jax.custom_vjp``)::

        @ng.custom_vjp
        def clip_gradient(x):
            return x
        clip_gradient.defvjp(lambda x: (x, None), lambda res, g: (ng.clip(g, -1, 1),))

    ``fwd(*args) -> (out, residuals)`` computes the output and what the backward needs;
    ``bwd(residuals, g) -> tuple`` returns one cotangent per argument (of the argument's
    structure; None for no gradient). ``nondiff_argnums`` (or ``nondiff_argnames``) name
    arguments that are passed to ``bwd`` first and get no cotangent; keyword arguments are bound
    to positions. Under ``grad`` of ``grad`` the backward's own ops are differentiated,
    residuals included. ``jvp`` differentiates ``fwd``'s ops (JAX refuses).
    A call of ``f`` inside ``fwd`` evaluates ``f``'s own ops (JAX's idiom ``return f(x), res``;
    a second derivative through such a residual is ``f``'s true one, not the rule's).
    """

    def __init__(self, fun: Callable, nondiff_argnums: tuple = (),
                 nondiff_argnames: tuple = ()) -> None:
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.fwd = self.bwd = None
        self._rule = _rule(f"custom_vjp[{getattr(fun, '__name__', 'f')}]", self._vjp)
        self.nondiff_argnums = _nondiff(fun, nondiff_argnums, nondiff_argnames,
                                        self._rule.name)

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        self.fwd, self.bwd = fwd, bwd

    def _run_fwd(self, *args):
        """``fwd(*args)``; inside it, calls of this function are its plain ``fun`` (JAX's idiom
        ``def fwd(x): return f(x), res`` evaluates f, it does not apply the rule again)."""
        return _guarded(self, self.fwd, *args)

    def __call__(self, *args, **kwargs):
        if self.fwd is None:
            raise TypeError(f"{self._rule.name}: no rule yet; call defvjp(fwd, bwd) first")
        args = _positional(self.fun, args, kwargs, self._rule.name)
        if _in_rule(self):
            return self.fun(*args)
        static = [args[i] for i in self.nondiff_argnums]
        diff_args = [a for i, a in enumerate(args) if i not in self.nondiff_argnums]
        leaves, _ = tree_flatten(diff_args)
        done, out = _without_node(self, args, leaves)
        if done:
            return out
        res = self._run_fwd(*args)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(f"{self._rule.name}: fwd must return (output, residuals), got "
                            f"{type(res).__name__}")
        out, residuals = res
        call = _Call(static)
        call.residuals = residuals
        return call.attach(self._rule, out, diff_args, leaves)

    def _batched(self, args: tuple, top: Level, n: int):
        """Under ``vmap``: the same rule over the whole batch (JAX batches ``fwd`` and ``bwd``):
        a custom_vjp of the vmapped fun, fwd and bwd, called one vmap level down."""
        def make(full, static, rnd):
            inner = custom_vjp(vmap(lambda *d: self.fun(*full(d)), randomness=rnd))
            inner.defvjp(vmap(lambda *d: self._run_fwd(*full(d)), randomness=rnd),
                         vmap(lambda res, g: self.bwd(*static, res, g), randomness=rnd))
            return inner

        return _run_batched(self._rule.name, self.nondiff_argnums, args, top, n, make)

    def _vjp(self, needs, g, ans, *specs, call):
        parts = _unpack(g, call)
        leaves: list = [None] * call.n_leaves
        for i, p in zip(call.slots, parts):
            leaves[i] = p
        ct = tree_unflatten(call.out_def, leaves)
        grads = self.bwd(*call.static, call.residuals, ct)
        grads = _check_grads(self._rule.name, grads, len(call.kinds))
        flat = []
        for gr, n in zip(grads, call.kinds):
            flat += [None] * n if gr is None else tree_flatten(gr)[0]
        return _check_shapes(self._rule.name, flat, specs)


# --- JAX: custom_jvp ---------------------------------------------------------------------------
class custom_jvp:
    """``f`` with a JVP of your own (JAX's ``jax.custom_jvp``)::

        @ng.func.custom_jvp
        def log1pexp(x):
            return ng.log1p(ng.exp(x))

        @log1pexp.defjvp
        def log1pexp_jvp(primals, tangents):
            (x,), (t,) = primals, tangents
            return log1pexp(x), t * ng.sigmoid(x)

    ``jvp(primals, tangents) -> (primal_out, tangent_out)`` (``tangent_out`` linear in the
    tangents); ``defjvps(*jvps)`` gives one ``jvp_i(g, ans, *primals)`` per argument instead.
    Forward mode (``jvp``, ``jacfwd``) calls the rule; reverse mode (``grad``, ``vjp``,
    ``backward``) transposes it, by differentiating the rule's ``tangent_out`` with respect to
    the tangents, as JAX does. ``nondiff_argnums`` (or ``nondiff_argnames``) name arguments
    passed to ``jvp`` first (and not differentiated); keyword arguments are bound to positions.
    The rule is called only when a derivative is taken, so a call of ``f`` inside it is ``f``
    with its rule again (higher derivatives use the rule, as in JAX).
    Under ``vmap`` ``f`` and the rule run on the whole batch.
    """

    def __init__(self, fun: Callable, nondiff_argnums: tuple = (),
                 nondiff_argnames: tuple = ()) -> None:
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.jvp = None
        name = f"custom_jvp[{getattr(fun, '__name__', 'f')}]"
        self.nondiff_argnums = _nondiff(fun, nondiff_argnums, nondiff_argnames, name)
        self._rule = _rule(name, self._vjp)
        self._rule.jvp = self._jvp

    def defjvp(self, jvp: Callable, symbolic_zeros: bool = False) -> Callable:
        """Set the rule ``jvp(*nondiff_args, primals, tangents)``; returns ``jvp`` (so it
        decorates). Zero tangents are passed as zero tensors (``symbolic_zeros`` must be
        False)."""
        if symbolic_zeros:
            raise NotImplementedError(f"{self._rule.name}: symbolic_zeros=True is not "
                                      "supported; zero tangents are passed as zeros")
        self.jvp = jvp
        return jvp

    def defjvps(self, *jvps: Callable | None) -> None:
        """One rule per argument: ``jvps[i](g_i, ans, *primals)`` is argument i's part of the
        output tangent (None: the argument has none); the parts are summed (JAX's)."""
        if self.nondiff_argnums:
            raise TypeError(f"{self._rule.name}: defjvps cannot be used with nondiff_argnums; "
                            "use defjvp")

        def jvp(primals, tangents):
            ans = self(*primals)
            parts = [f(t, ans, *primals) for f, t in zip(jvps, tangents) if f is not None]
            if not parts:
                return ans, tree_map(zeros_like, ans)
            total = parts[0]
            for q in parts[1:]:
                total = tree_map(lambda a, b: a + b, total, q)
            return ans, total

        if len(jvps) == 0:
            raise TypeError(f"{self._rule.name}: defjvps needs one rule per argument")
        self.defjvp(jvp)

    def _split(self, args: tuple) -> tuple[list, list]:
        nd = self.nondiff_argnums
        return ([args[i] for i in nd], [a for i, a in enumerate(args) if i not in nd])

    def _call_rule(self, static: list, primals: list, tangents: list) -> tuple:
        res = self.jvp(*static, tuple(primals), tuple(tangents))
        if not (isinstance(res, tuple | list) and len(res) == 2):
            raise TypeError(f"{self._rule.name}: the jvp rule must return (primal_out, "
                            f"tangent_out), got {type(res).__name__}")
        return res

    def __call__(self, *args, **kwargs):
        if self.jvp is None:
            raise TypeError(f"{self._rule.name}: no rule yet; call defjvp(jvp) first")
        args = _positional(self.fun, args, kwargs, self._rule.name)
        static, diff_args = self._split(args)
        leaves, _ = tree_flatten(diff_args)
        done, out = _without_node(self, args, leaves)
        if done:
            return out
        call = _Call(static)
        call.primals = diff_args
        return call.attach(self._rule, self.fun(*args), diff_args, leaves)

    def _tangent_out(self, call, primals: list, tangents: list) -> list:
        """The rule's output tangents at the differentiable output slots."""
        _, t_out = self._call_rule(call.static, primals, tangents)
        t_leaves, t_def = tree_flatten(t_out)
        if t_def != call.out_def:
            raise ShapeError(f"{self._rule.name}: the jvp rule's tangent_out has structure "
                             f"{t_def}, but f returns {call.out_def}")
        return [t_leaves[i] for i in call.slots]

    def _tangents(self, call, flat: list) -> list:
        """Per-argument tangent trees from one tangent (or None: zero) per input leaf."""
        leaves = tree_flatten(call.primals)[0]
        ts = [(zeros_like(x) if isinstance(x, Tensor) else 0.0) if t is None else t
              for t, x in zip(flat, leaves)]
        out, at = [], 0
        for td, n in zip(call.in_defs, call.kinds):
            out.append(tree_unflatten(td, ts[at:at + n]))
            at += n
        return out

    def _jvp(self, tangents, ans, *specs, call):
        ts = self._tangent_out(call, list(call.primals), self._tangents(call, list(tangents)))
        parts = []
        for t, shape in zip(ts, call.shapes):
            t = t if isinstance(t, Tensor) else tensor(t)
            if tuple(t.shape) != tuple(shape):
                raise ShapeError(f"{self._rule.name}: the jvp rule returned a tangent of shape "
                                 f"{tuple(t.shape)} for an output of shape {tuple(shape)}")
            parts.append(_flat(t, call))
        return parts[0] if len(parts) == 1 else concatenate(parts)

    def _vjp(self, needs, g, ans, *specs, call):
        from ..autodiff import enable_grad, grad as _grad

        create = modes().grad_enabled  # a backward with create_graph: keep the links
        leaves, pdef = tree_flatten(call.primals)
        prim = [x if not isinstance(x, Tensor) else
                (x if create and x.requires_grad else x.detach()) for x in leaves]
        holes = [Tensor._of(x.backend.xp.zeros(x.shape, dtype=x.dtype), None, True)
                 if _diff(x) and needs[k] else None for k, x in enumerate(leaves)]
        primals, at = [], 0
        for td, n in zip(call.in_defs, call.kinds):
            primals.append(tree_unflatten(td, prim[at:at + n]))
            at += n
        with enable_grad():
            ts = self._tangent_out(call, primals, self._tangents(call, holes))
        cts = _unpack(g, call)
        roots = [(t, c) for t, c in zip(ts, cts) if isinstance(t, Tensor) and t.requires_grad]
        wrt = [h for h in holes if h is not None]
        if not roots or not wrt:
            return [None] * len(specs)
        gs = iter(_grad([t for t, _ in roots], wrt, [c for _, c in roots], create_graph=create,
                        allow_unused=True))
        return [None if h is None else next(gs) for h in holes]

    def _batched(self, args: tuple, top: Level, n: int):
        """Under ``vmap``: a custom_jvp of the vmapped ``fun`` and rule, one level down."""
        def make(full, static, rnd):
            inner = custom_jvp(vmap(lambda *d: self.fun(*full(d)), randomness=rnd))
            vrule = vmap(lambda p, t: self.jvp(*static, tuple(p), tuple(t)), randomness=rnd)
            inner.defjvp(lambda p, t: vrule(list(p), list(t)))
            return inner

        return _run_batched(self._rule.name, self.nondiff_argnums, args, top, n, make)


def _run_batched(name: str, nd: tuple, args: tuple, top: Level, n: int, make: Callable):
    """A custom rule's call under ``vmap``: every differentiable leaf batched on axis 0 (a
    broadcast view where it was not), ``make(full, static, randomness)`` builds the custom
    function of the vmapped ``fun`` and rule (``full(d)`` puts the nondiff arguments back among
    ``d``), called one vmap level down; its outputs are batched at ``top`` again."""
    static = [args[i] for i in nd]
    if any(type(t) is BatchTracer for t in tree_flatten(static)[0]):
        raise NotImplementedError(f"{name}: a nondiff argument is batched by vmap; pass it as "
                                  "a differentiable argument")
    size = top.size

    def lift(t):
        if type(t) is BatchTracer and t.level is top:
            return front(t.val, t.bdim)
        return batched(t if isinstance(t, Tensor) else tensor(t), None, size)

    dargs = [tree_map(lift, a) for i, a in enumerate(args) if i not in nd]

    def full(d):
        it = iter(d)
        return [args[i] if i in nd else next(it) for i in range(len(args))]

    inner = make(full, static, top.randomness)  # the level this call replaces
    with lowered(n):
        out = inner(*dargs)
    return tree_map(lambda o: BatchTracer(o, 0, top) if isinstance(o, Tensor) else o, out)


# --- PyTorch: autograd.Function ---------------------------------------------------------------
class FunctionCtx:
    """The ``ctx`` of an ``autograd.Function``: what forward leaves for backward."""

    def __init__(self) -> None:
        self.saved_tensors: tuple = ()
        self.needs_input_grad: tuple = ()
        self.materialize_grads = True
        self._non_differentiable: set = set()
        self._noted: tuple = ((), [])  # save_for_backward's tensors and what it noted of each
        self._for_forward: tuple | None = None  # save_for_forward's tensors
        self._dirty: set = set()  # ids of the inputs forward changed in place

    def save_for_forward(self, *tensors) -> None:
        """Keep ``tensors`` (or None) for ``jvp``, which reads them as ``ctx.saved_tensors``
        (PyTorch's)."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_forward: expected tensors or None, got "
                                f"{type(t).__name__}")
        self._for_forward = tensors

    def save_for_backward(self, *tensors) -> None:
        """Keep ``tensors`` (or None) for backward, as ``ctx.saved_tensors``.

        As PyTorch's: their versions are noted now, and a backward after an in-place change
        of one raises InplaceError; a saved output is, in backward, the output ``apply``
        returned, in the graph (so a second derivative differentiates through it)."""
        self.saved_tensors = tensors
        self._noted = (tensors, [_noted(t) if isinstance(t, Tensor) else None for t in tensors])

    def mark_non_differentiable(self, *tensors) -> None:
        """The outputs among ``tensors`` get no gradient and no tangent (PyTorch's)."""
        self._non_differentiable |= {id(t) for t in tensors}

    def set_materialize_grads(self, value: bool) -> None:
        """With False, backward gets None (not zeros) for an output no gradient reached."""
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors) -> None:
        """Tell ``apply`` that forward changed these inputs in place and returns them: each
        comes back as the same tensor, now the Function's output in the graph (PyTorch's)."""
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"mark_dirty: expected tensors, got {type(t).__name__}")
        self._dirty |= {id(t) for t in tensors}


def _noted(t: Tensor) -> tuple:
    """What saving ``t`` notes: its version counter and version, array and graph place."""
    cell = t._ensure_version()
    return cell, cell[0], t._data, t.node, t.requires_grad


class VmapInfo(NamedTuple):
    """What a Function's ``vmap`` staticmethod learns of the vmap it runs under (PyTorch's)."""

    batch_size: int
    randomness: str


class _FnCall:
    __slots__ = ("ctx", "cls", "slots", "shapes", "dtypes", "nondiff", "outs", "saved",
                 "reached", "args")


class _FunctionMeta(type):
    def __init__(cls, name, bases, ns) -> None:
        super().__init__(name, bases, ns)
        cls._rule = _rule(f"Function[{name}]", cls._vjp)
        cls._rule.jvp = cls._fwd


_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # forward -> signature


def _signature(forward: Callable) -> inspect.Signature:
    sig = _SIGNATURES.get(forward)
    if sig is None:
        sig = _SIGNATURES[forward] = inspect.signature(forward)
    return sig


def _bound_inputs(cls, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``forward``'s arguments as PyTorch passes them to ``setup_context``: the keyword
    arguments bound to their positions and the defaults filled in."""
    try:
        bound = _signature(cls.forward).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{cls.__name__}.apply: the arguments do not fit forward's signature "
                        f"{_signature(cls.forward)}: {e}") from None
    bound.apply_defaults()
    return bound.args, bound.kwargs


def _saved_plan(ctx: FunctionCtx, args: tuple, outs: list, new: list, slots: list) -> tuple:
    """How backward gets each of ctx's saved tensors (0: a value as it is, 1: an output, 2: a
    tensor, 3: a tensor packed by saved_tensors_hooks), and the version entries the engine
    checks before the backward runs.

    An output saved comes back as the output apply returned (its slot of the node's value), so
    it is in the graph. Any other tensor comes back as it was saved: where an in-place op
    recorded for autograd has since pointed it at a new array without moving its counter (it
    shares one with views), the saved array and graph place stand in for it, as plain nodes'
    saved inputs do (autodiff._saved_args)."""
    saved = ctx.saved_tensors
    by, noted = ctx._noted
    if saved is not by:  # set by hand, not by save_for_backward: used as they are
        noted = [None] * len(saved)
    plan, versions = [], []
    hooks = modes().saved_hooks  # saved_tensors_hooks: a tensor is kept as pack made it
    slot_of = {id(outs[i]): k for k, i in enumerate(slots)}  # an output's place in the value
    for a in args:
        if id(a) not in ctx._dirty:  # an input returned as it is counts as the input
            slot_of.pop(id(a), None)
    for t, v in zip(saved, noted):
        if v is not None and id(t) in ctx._dirty:
            v = _noted(t)  # an input changed in place: as apply returns it
        if v is None:
            plan.append((0, t))
            continue
        versions.append((v[0], v[1], None, None))
        k = slot_of.get(id(t))
        if k is None:
            if hooks:
                leaf = t if v[3] is None and v[4] else None  # to differentiate again
                plan.append((3, pack_tensors([t], hooks[-1])[0], v[3], v[4], leaf))
            else:
                plan.append((2, t) + v[2:])
            continue
        ret = new[slots[k]]
        cell = ret._ensure_version()
        versions.append((cell, cell[0], None, None))  # the output returned, written in place
        plan.append((1, k, weakref.ref(ret), ret._data))  # or rebound (see _saved)
    return tuple(plan), versions


class Function(metaclass=_FunctionMeta):
    """PyTorch's ``torch.autograd.Function``: subclass with static ``forward(ctx, *args)`` (or
    ``forward(*args)`` plus ``setup_context(ctx, inputs, output)``) and ``backward(ctx,
    *grad_outputs)``; call ``MyFn.apply(*args)``. Forward runs without recording; backward
    returns one gradient per forward argument (None where there is none). Under ``vmap`` a
    static ``vmap(info, in_dims, *args) -> (outputs, out_dims)`` batches it, or
    ``generate_vmap_rule = True`` runs forward and backward under vmap themselves."""

    @staticmethod
    def forward(*args, **kwargs) -> Any:
        raise NotImplementedError("Function: define a static forward")

    @staticmethod
    def backward(ctx, *grad_outputs) -> Any:
        raise NotImplementedError("Function: define a static backward")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        raise NotImplementedError

    @staticmethod
    def jvp(ctx, *grad_inputs) -> Any:
        raise NotImplementedError

    @staticmethod
    def vmap(info, in_dims, *args) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        separate = cls.setup_context is not Function.setup_context
        if separate:
            args, kwargs = _bound_inputs(cls, args, kwargs)
        m = modes()
        top = m.traces[-1] if m.traces else None
        if (type(top) is Level and cls.vmap is not Function.vmap
                and any(type(a) is BatchTracer and a.level is top for a in args)):
            return cls._user_vmap(args, kwargs, top, len(m.traces) - 1)
        if (type(top) is Level and m.grad_enabled
                and any(type(a) is BatchTracer and a.level is top for a in args)
                and any(_diff(_bottom(a)) for a in args)):
            return cls._batched(args, kwargs)
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(_diff(a) for a in args)
        with no_grad():
            if separate:
                out = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, args, out)
            else:
                out = cls.forward(ctx, *args, **kwargs)
        outs = list(out) if isinstance(out, tuple) else [out]
        dirty = [a for a in args if isinstance(a, Tensor) and id(a) in ctx._dirty]
        if dirty:
            _check_dirty(cls.__name__, ctx, args, outs, m.grad_enabled)
        if not (m.grad_enabled and any(ctx.needs_input_grad)):
            return out
        call = _FnCall()
        call.ctx, call.cls, call.outs, call.reached, call.args = ctx, cls, outs, None, args
        call.nondiff = {i for i, o in enumerate(outs) if id(o) in ctx._non_differentiable}
        saved = ctx.saved_tensors
        keep = False  # whether an output is saved: the node keeps its value for backward
        if saved:
            ids = {id(o) for o in outs}
            keep = any(id(t) in ids for t in saved)
        versions: list = []
        new, node = _attach_node(outs, list(args), cls._rule, call, versions, keep)
        if dirty and node is not None:
            for i in call.slots:
                o = outs[i]
                if id(o) in ctx._dirty:  # the input itself becomes the output, as PyTorch's
                    write_through(o, new[i], f"{cls.__name__}.apply")
                    _rebind(o, Tensor.make(o._data, new[i].node, True))  # its memory kept
                    new[i] = o
        call.saved = ()
        if saved and node is not None:
            call.saved, entries = _saved_plan(ctx, args, outs, new, call.slots)
            versions += entries
            if any(item[0] == 3 for item in call.saved):  # the packed records stand in for
                ctx.saved_tensors, ctx._noted = (), ((), [])  # the tensors: ctx lets go
        if node is not None and not ctx.materialize_grads and len(call.slots) > 1:
            call.reached = set()  # which outputs a gradient reached, for None in the others
            for k, i in enumerate(call.slots):
                hook = functools.partial(_reached, call.reached, k)
                hook.replay_safe = True  # read by this backward only: a replay needs none
                new[i].register_hook(hook)
        return tuple(new) if isinstance(out, tuple) else new[0]

    @classmethod
    def _user_vmap(cls, args: tuple, kwargs: dict, top: Level, n: int):
        """Under ``vmap``, with a ``vmap(info, in_dims, *args)`` staticmethod: it gets the
        batched arguments unwrapped (``in_dims``: each one's batch axis, None where unbatched)
        and returns ``(outputs, out_dims)``, run one vmap level down, as PyTorch's."""
        name = cls.__name__
        if getattr(cls, "generate_vmap_rule", False):
            raise RuntimeError(f"{name}: generate_vmap_rule=True and a vmap staticmethod were "
                               "both given; keep one of them (as PyTorch requires)")
        if kwargs:
            raise NotImplementedError(f"{name}.apply under vmap takes positional arguments "
                                      "only (its vmap staticmethod gets them with in_dims)")
        vals = [a.val if type(a) is BatchTracer and a.level is top else a for a in args]
        dims = tuple(a.bdim if type(a) is BatchTracer and a.level is top else None
                     for a in args)
        with lowered(n):
            res = cls.vmap(VmapInfo(top.size, top.randomness), dims, *vals)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(f"{name}.vmap: expected it to return (outputs, out_dims), got "
                            f"{type(res).__name__}")
        out, out_dims = res
        outs = list(out) if isinstance(out, tuple) else [out]
        if isinstance(out_dims, int | None):
            out_dims = (out_dims,) * len(outs)
        elif not isinstance(out, tuple):
            out_dims = tuple(out_dims) if len(out_dims) == 1 else (out_dims,)
        if len(tuple(out_dims)) != len(outs):
            raise ValueError(f"{name}.vmap: out_dims {out_dims!r} does not match the "
                             f"{len(outs)} outputs returned; give one int (or None) per output")
        wrapped = []
        for i, (o, d) in enumerate(zip(outs, out_dims)):
            if d is None:
                wrapped.append(o)
                continue
            if not isinstance(o, Tensor) or not isinstance(d, int) or not -o.ndim <= d < o.ndim:
                raise ValueError(f"{name}.vmap: out_dims[{i}] = {d!r} is not an axis of output "
                                 f"{i} ({type(o).__name__} of shape "
                                 f"{tuple(getattr(o, 'shape', ()))})")
            if o.shape[d] != top.size:
                raise ValueError(f"{name}.vmap: output {i} has size {o.shape[d]} along its "
                                 f"batch axis {d}, expected the batch size {top.size}")
            wrapped.append(BatchTracer(o, d % o.ndim, top))
        return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]

    @classmethod
    def _batched(cls, args: tuple, kwargs: dict):
        """Under ``vmap`` with gradients wanted: PyTorch's ``generate_vmap_rule = True``, the
        forward and backward run under vmap themselves, as a :class:`custom_vjp` of them (which
        batches both one level down). The ctx's saved tensors travel as residuals; its other
        attributes are the forward's. Without the flag the Function refuses, as PyTorch's."""
        if not getattr(cls, "generate_vmap_rule", False):
            raise NotImplementedError(
                f"{cls.__name__}: an autograd.Function differentiated under vmap needs a batching "
                "rule: set generate_vmap_rule = True on the class (its forward and backward then "
                "run under vmap), as in PyTorch")
        if kwargs:
            raise NotImplementedError(f"{cls.__name__}.apply under vmap takes positional "
                                      "arguments only")
        static = tuple(i for i, a in enumerate(args) if not isinstance(a, Tensor))
        kept: dict = {}
        separate = cls.setup_context is not Function.setup_context

        def full(rest):
            it = iter(rest)
            return [args[i] if i in static else next(it) for i in range(len(args))]

        def run(a):
            ctx = FunctionCtx()
            ctx.needs_input_grad = tuple(isinstance(v, Tensor) and B.is_float(v.dtype)
                                         for v in a)
            with no_grad():
                if separate:
                    out = cls.forward(*a)
                    cls.setup_context(ctx, tuple(a), out)
                else:
                    out = cls.forward(ctx, *a)
            return ctx, out

        def fun(*rest):
            return run(full(rest))[1]

        def fwd(*rest):
            ctx, out = run(full(rest))
            kept["ctx"] = ctx
            kept["outs"] = out if isinstance(out, tuple) else (out,)
            return out, tuple(ctx.saved_tensors)

        def bwd(*a):
            saved, g = a[-2], a[-1]
            ctx = kept["ctx"]
            ctx.saved_tensors = saved
            gs = g if isinstance(g, tuple) else (g,)
            gs = [zeros_like(o) if c is None and isinstance(o, Tensor) else c
                  for c, o in zip(gs, kept["outs"])]
            grads = _check_grads(f"{cls.__name__}.backward", cls.backward(ctx, *gs), len(args),
                                 extra_none=True)
            return tuple(gr for i, gr in enumerate(grads) if i not in static)

        rule = custom_vjp(fun, nondiff_argnums=static)
        rule.defvjp(fwd, bwd)
        return rule(*args)

    @classmethod
    def _fwd(cls, tangents, ans, *specs, call):
        """The node's JVP rule: ``jvp(ctx, *input_tangents)``, as PyTorch calls it (zeros for
        a tensor input with no tangent, None after ``set_materialize_grads(False)`` and for
        other inputs), ``ctx.saved_tensors`` being what ``save_for_forward`` kept, if it was
        called; returns the flat tangent of the node's value."""
        name = f"{cls.__name__}.jvp"
        if cls.jvp is Function.jvp:
            raise NotImplementedError(f"{cls.__name__}: forward-mode differentiation (jvp, "
                                      "jacfwd, hvp, forward_ad) of an autograd.Function needs "
                                      "a static jvp(ctx, *grad_inputs) method, as in PyTorch")
        ctx = call.ctx
        fill = ctx.materialize_grads  # set_materialize_grads(False): None, not zeros
        ts = [None if not isinstance(a, Tensor) else
              (zeros_like(a) if t is None and fill else t) for a, t in zip(call.args, tangents)]
        kept = ctx.saved_tensors
        if ctx._for_forward is not None:
            ctx.saved_tensors = ctx._for_forward
        try:
            res = cls.jvp(ctx, *ts)
        finally:
            ctx.saved_tensors = kept
        res = tuple(res) if isinstance(res, tuple | list) else (res,)
        if len(res) != len(call.outs):
            raise GradError(f"{name}: returned {len(res)} tangents, expected {len(call.outs)} "
                            "(one per output of forward)")
        parts = []
        for i, shape in zip(call.slots, call.shapes):
            t, o = res[i], call.outs[i]
            if t is None:
                t = zeros_like(o)
            elif not isinstance(t, Tensor):
                raise TypeError(f"{name}: tangent {i} is {type(t).__name__}; expected a tensor "
                                "or None")
            if tuple(t.shape) != tuple(shape):
                raise ShapeError(f"{name}: returned a tangent of shape {tuple(t.shape)} for "
                                 f"output {i} of shape {tuple(shape)}")
            if t.dtype != o.dtype:
                raise GradError(f"{name}: returned a tangent of dtype {t.dtype} for output {i} "
                                f"of dtype {o.dtype}")
            parts.append(_flat(t, call))
        return parts[0] if len(parts) == 1 else concatenate(parts)

    @classmethod
    def _vjp(cls, needs, g, ans, *specs, call):
        # every output gets a gradient: zeros where none reached it (PyTorch's materialised
        # gradients), or None with ctx.set_materialize_grads(False)
        ctx = call.ctx
        grads_out = [None] * len(call.outs)
        reached = call.reached
        for k, (i, p) in enumerate(zip(call.slots, _unpack(g, call))):
            if reached is None or k in reached:
                grads_out[i] = p
        if reached is not None:
            reached.clear()
        if ctx.materialize_grads:
            for i, o in enumerate(call.outs):
                if grads_out[i] is None and isinstance(o, Tensor):
                    grads_out[i] = zeros_like(o)
        ctx.needs_input_grad = tuple(bool(n) for n in needs)
        if not call.saved:
            grads = call.cls.backward(ctx, *grads_out)
        else:
            kept = ctx.saved_tensors
            ctx.saved_tensors = _saved(call, ans)
            try:
                grads = call.cls.backward(ctx, *grads_out)
            finally:
                ctx.saved_tensors = kept  # what backward saw may hold the node: no cycle kept
        name = f"{call.cls.__name__}.backward"
        return _check_shapes(name, _check_grads(name, grads, len(specs), extra_none=True), specs,
                             call.args)


def _check_dirty(name: str, ctx: FunctionCtx, args: tuple, outs: list, recording: bool) -> None:
    """The inputs marked dirty must be returned, and may not be leaves that require grad
    while recording (PyTorch's checks); each counts as changed in place."""
    ids = {id(o) for o in outs}
    arg_ids = {id(a) for a in args}
    for t in ctx._dirty:
        if t not in arg_ids:
            raise GradError(f"{name}.apply: mark_dirty was given a tensor that is not an input "
                            "of forward; mark only the inputs changed in place")
        if t not in ids:
            raise GradError(f"{name}.apply: an input marked dirty was not returned by forward; "
                            "the inputs changed in place must all be outputs")
    for a in args:
        if isinstance(a, Tensor) and id(a) in ctx._dirty:
            if recording and a.requires_grad and a.node is None:
                raise GradError(f"{name}.apply: a leaf tensor that requires grad was changed in "
                                "place by forward (mark_dirty); change a clone of it instead")
            a._bump()


def _reached(seen: set, k: int, g) -> None:
    seen.add(k)


def _saved(call: _FnCall, ans) -> tuple:
    """ctx.saved_tensors as backward sees them (see :func:`_saved_plan`); ``ans`` is the
    node's value, in the graph when the backward is recorded."""
    outs = None
    saved = []
    for item in call.saved:
        kind = item[0]
        if kind == 0:
            saved.append(item[1])
        elif kind == 1:
            ret = item[2]()
            if ret is not None and ret._data is not item[3]:
                raise InplaceError(
                    f"an output that '{call.cls._rule.name}' saved for backward was modified "
                    "in place after apply returned it; use an out-of-place op instead")
            if outs is None:
                outs = _unpack(ans, call)
            saved.append(outs[item[1]])
        elif kind == 3:  # packed by saved_tensors_hooks: unpacked, in its graph place
            r = unpack_tensor(item[1], call.cls._rule.name, "a tensor ctx saved")
            leaf = item[4] if modes().grad_enabled else None  # a leaf in the recorded graph
            saved.append(leaf if leaf is not None else Tensor.make(r._data, item[2], item[3]))
        else:
            t, data, node, requires_grad = item[1:]
            saved.append(t if t._data is data else Tensor.make(data, node, requires_grad))
    return tuple(saved)


def once_differentiable(fn: Callable) -> Callable:
    """PyTorch's decorator for a backward that is not itself differentiable: it runs without
    recording, and a second derivative that reaches its results raises instead of treating
    them as constants."""

    @functools.wraps(fn)
    def wrapper(ctx, *grads):
        if not modes().grad_enabled:
            return fn(ctx, *grads)
        with no_grad():
            out = fn(ctx, *grads)
        saved = tuple(getattr(ctx, "saved_tensors", ()))
        parents = tuple((t.node or t) for t in grads + saved if _diff(t))
        if not parents:
            return out
        outs = out if isinstance(out, tuple) else (out,)
        marked = tuple(None if o is None else _no_second(o, parents) for o in outs)
        return marked if isinstance(out, tuple) else marked[0]

    return wrapper


def _no_second_vjp(needs, g, ans, *specs):
    raise GradError("a backward decorated with once_differentiable was differentiated: it "
                    "does not support a second derivative")


_NO_SECOND = _rule("once_differentiable", _no_second_vjp)


def _no_second(t: Tensor, parents: tuple) -> Tensor:
    node = Node.make(_NO_SECOND, {}, parents, None, None, tuple(() for _ in parents), None)
    return Tensor._of(t._data, node, True)
