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
from collections.abc import Callable
from typing import Any

from ..autodiff import Node, modes, no_grad
from ..errors import GradError, ShapeError
from ..ops import concatenate
from ..ops.shape import _reshape
from ..primitive import Primitive
from ..tensor import Tensor, zeros_like
from ..batching import BatchTracer, Level, batched, front, lowered
from ..tensor import tensor
from .tree import tree_flatten, tree_map, tree_unflatten
from .vmap import vmap

__all__ = ["custom_vjp", "Function", "FunctionCtx", "once_differentiable"]


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
    return isinstance(t, Tensor) and t.requires_grad and t.dtype.kind == "f"


def _bottom(t):
    """The batched value under a vmap tracer (through every level): what requires grad."""
    while type(t) is BatchTracer:
        t = t.val
    return t


def _attach(outs: list, inputs: list, rule: Primitive, call) -> list:
    """Hang the differentiable tensors of ``outs`` on one node of ``rule`` whose parents are
    ``inputs``; return ``outs`` with those tensors replaced by views of that node's value."""
    slots = [i for i, o in enumerate(outs)
             if isinstance(o, Tensor) and o.dtype.kind == "f" and i not in call.nondiff]
    if not slots:
        return outs
    if len({outs[i].dtype for i in slots}) > 1:
        raise GradError(f"{rule.name}: the differentiable outputs must share one dtype, got "
                        f"{sorted(str(outs[i].dtype) for i in slots)}")
    with no_grad():
        flat = [_reshape(outs[i].detach(), shape=(outs[i].data.size,)) for i in slots]
        joint = flat[0] if len(flat) == 1 else concatenate(flat)
    parents = tuple((a.node or a) if _diff(a) else None for a in inputs)
    call.slots = slots
    call.shapes = [outs[i].shape for i in slots]
    node = Node.make(rule, {"call": call}, parents, None, None,
                     tuple(a.shape if isinstance(a, Tensor) else () for a in inputs), None)
    joint = Tensor(joint.data, node, True)
    outs = list(outs)
    start = 0
    for i, shape in zip(slots, call.shapes):
        n = outs[i].data.size
        part = joint if len(slots) == 1 else joint[start:start + n]
        outs[i] = _reshape(part, shape=shape)
        start += n
    return outs


def _unpack(g: Tensor, call) -> list:
    out, start = [], 0
    for shape in call.shapes:
        n = 1
        for s in shape:
            n *= s
        out.append(_reshape(g if len(call.shapes) == 1 else g[start:start + n], shape=shape))
        start += n
    return out


def _check_grads(name: str, grads, n: int) -> tuple:
    grads = tuple(grads) if isinstance(grads, list | tuple) else (grads,)
    if len(grads) != n:
        raise GradError(f"{name}: backward returned {len(grads)} gradients, expected {n} (one "
                        "per input, None where there is none)")
    return grads


def _check_shapes(name: str, grads, specs) -> list:
    """Each gradient has its input's shape, or one that sums down to it (as PyTorch allows)."""
    for g, s in zip(grads, specs):
        if g is None or not isinstance(g, Tensor) or tuple(g.shape) == tuple(s.shape):
            continue
        gs, xs = tuple(g.shape), tuple(s.shape)
        if len(gs) < len(xs) or any(a != b and b != 1 for a, b in zip(gs[len(gs) - len(xs):], xs)):
            raise ShapeError(f"{name}: backward returned a gradient of shape {gs} for an input "
                             f"of shape {xs}")
    return list(grads)


# --- JAX: custom_vjp ---------------------------------------------------------------------------
class _VjpCall:
    __slots__ = ("residuals", "out_def", "n_leaves", "in_defs", "kinds", "slots", "shapes",
                 "nondiff", "static")

    def __init__(self) -> None:
        self.nondiff: tuple = ()


class custom_vjp:
    """``f`` with a VJP of your own (JAX's ``jax.custom_vjp``)::

        @ng.custom_vjp
        def clip_gradient(x):
            return x
        clip_gradient.defvjp(lambda x: (x, None), lambda res, g: (ng.clip(g, -1, 1),))

    ``fwd(*args) -> (out, residuals)`` computes the output and what the backward needs;
    ``bwd(residuals, g) -> tuple`` returns one cotangent per argument (of the argument's
    structure; None for no gradient). ``nondiff_argnums`` name arguments that are passed to
    ``bwd`` first and get no cotangent. Under ``grad`` of ``grad`` the backward's own ops are
    differentiated, residuals included. ``jvp`` differentiates ``fwd``'s ops (JAX refuses).
    """

    def __init__(self, fun: Callable, nondiff_argnums: tuple = ()) -> None:
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.fwd = self.bwd = None
        self._rule = _rule(f"custom_vjp[{getattr(fun, '__name__', 'f')}]", self._vjp)

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args):
        if self.fwd is None:
            raise TypeError(f"{self._rule.name}: no rule yet; call defvjp(fwd, bwd) first")
        static = [args[i] for i in self.nondiff_argnums]
        diff_args = [a for i, a in enumerate(args) if i not in self.nondiff_argnums]
        leaves, _ = tree_flatten(diff_args)
        m = modes()
        top = m.traces[-1] if m.traces else None
        if type(top) is Level and any(type(t) is BatchTracer and t.level is top for t in leaves):
            return self._batched(args, top, len(m.traces) - 1)
        if not (m.grad_enabled and any(_diff(t) for t in leaves)):
            return self.fun(*args)
        res = self.fwd(*args)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(f"{self._rule.name}: fwd must return (output, residuals), got "
                            f"{type(res).__name__}")
        out, residuals = res
        call = _VjpCall()
        call.residuals, call.static = residuals, static
        out_leaves, call.out_def = tree_flatten(out)
        call.n_leaves = len(out_leaves)
        call.in_defs = [tree_flatten(a)[1] for a in diff_args]
        call.kinds = [len(tree_flatten(a)[0]) for a in diff_args]
        new = _attach(out_leaves, leaves, self._rule, call)
        return tree_unflatten(call.out_def, new)

    def _batched(self, args: tuple, top: Level, n: int):
        """Under ``vmap``: the same rule over the whole batch (JAX batches ``fwd`` and ``bwd``):
        a custom_vjp of the vmapped fun, fwd and bwd, called one vmap level down."""
        nd = self.nondiff_argnums
        static = [args[i] for i in nd]
        if any(type(t) is BatchTracer for t in tree_flatten(static)[0]):
            raise NotImplementedError(f"{self._rule.name}: a nondiff argument is batched by "
                                      "vmap; pass it as a differentiable argument")
        size = top.size

        def lift(t):  # every leaf batched on axis 0 (a broadcast view where it was not)
            if type(t) is BatchTracer and t.level is top:
                return front(t.val, t.bdim)
            return batched(t if isinstance(t, Tensor) else tensor(t), None, size)

        dargs = [tree_map(lift, a) for i, a in enumerate(args) if i not in nd]

        def full(d):
            it = iter(d)
            return [args[i] if i in nd else next(it) for i in range(len(args))]

        rnd = top.randomness  # the level this call replaces
        inner = custom_vjp(vmap(lambda *d: self.fun(*full(d)), randomness=rnd))
        inner.defvjp(vmap(lambda *d: self.fwd(*full(d)), randomness=rnd),
                     vmap(lambda res, g: self.bwd(*static, res, g), randomness=rnd))
        with lowered(n):
            out = inner(*dargs)
        return tree_map(lambda o: BatchTracer(o, 0, top) if isinstance(o, Tensor) else o, out)

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


# --- PyTorch: autograd.Function ---------------------------------------------------------------
class FunctionCtx:
    """The ``ctx`` of an ``autograd.Function``: what forward leaves for backward."""

    def __init__(self) -> None:
        self.saved_tensors: tuple = ()
        self.needs_input_grad: tuple = ()
        self.materialize_grads = True
        self._non_differentiable: set = set()

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors) -> None:
        self._non_differentiable |= {id(t) for t in tensors}

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors) -> None:
        raise NotImplementedError("mark_dirty: in-place forwards are not supported here; "
                                  "return a new tensor")


class _FnCall:
    __slots__ = ("ctx", "cls", "slots", "shapes", "nondiff", "outs")


class _FunctionMeta(type):
    def __init__(cls, name, bases, ns) -> None:
        super().__init__(name, bases, ns)
        cls._rule = _rule(f"Function[{name}]", cls._vjp)


class Function(metaclass=_FunctionMeta):
    """PyTorch's ``torch.autograd.Function``: subclass with static ``forward(ctx, *args)`` (or
    ``forward(*args)`` plus ``setup_context(ctx, inputs, output)``) and ``backward(ctx,
    *grad_outputs)``; call ``MyFn.apply(*args)``. Forward runs without recording; backward
    returns one gradient per forward argument (None where there is none)."""

    @staticmethod
    def forward(*args, **kwargs) -> Any:
        raise NotImplementedError("Function: define a static forward")

    @staticmethod
    def backward(ctx, *grad_outputs) -> Any:
        raise NotImplementedError("Function: define a static backward")

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        m = modes()
        top = m.traces[-1] if m.traces else None
        if (type(top) is Level and m.grad_enabled
                and any(type(a) is BatchTracer and a.level is top for a in args)
                and any(_diff(_bottom(a)) for a in args)):
            return cls._batched(args, kwargs)
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(_diff(a) for a in args)
        separate = cls.setup_context is not Function.setup_context
        with no_grad():
            if separate:
                out = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, args, out)
            else:
                out = cls.forward(ctx, *args, **kwargs)
        if not (m.grad_enabled and any(ctx.needs_input_grad)):
            return out
        outs = list(out) if isinstance(out, tuple) else [out]
        call = _FnCall()
        call.ctx, call.cls, call.outs = ctx, cls, outs
        call.nondiff = {i for i, o in enumerate(outs) if id(o) in ctx._non_differentiable}
        new = _attach(outs, list(args), cls._rule, call)
        return tuple(new) if isinstance(out, tuple) else new[0]

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
            ctx.needs_input_grad = tuple(isinstance(v, Tensor) and v.dtype.kind == "f"
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
            grads = _check_grads(f"{cls.__name__}.backward", cls.backward(ctx, *gs), len(args))
            return tuple(gr for i, gr in enumerate(grads) if i not in static)

        rule = custom_vjp(fun, nondiff_argnums=static)
        rule.defvjp(fwd, bwd)
        return rule(*args)

    @classmethod
    def _vjp(cls, needs, g, ans, *specs, call):
        # every output gets a gradient, zeros where none reached it (PyTorch's materialised
        # gradients; its set_materialize_grads(False) is accepted and changes nothing here)
        grads_out = [zeros_like(o) if isinstance(o, Tensor) else None for o in call.outs]
        for i, p in zip(call.slots, _unpack(g, call)):
            grads_out[i] = p
        ctx = call.ctx
        ctx.needs_input_grad = tuple(bool(n) for n in needs)
        grads = call.cls.backward(ctx, *grads_out)
        name = f"{call.cls.__name__}.backward"
        return _check_shapes(name, _check_grads(name, grads, len(specs)), specs)


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
    return Tensor(t.data, node, True)
