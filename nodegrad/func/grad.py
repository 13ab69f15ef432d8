"""JAX-style transforms over the same engine: grad, value_and_grad, vjp.

``grad(f)(x)`` makes fresh differentiation inputs from ``x``, evaluates ``f`` recording the
graph, and asks the engine for the gradient with respect to those inputs only (nothing lands in
``.grad``). Inside another transform, or when ``x`` itself carries a graph, the backward pass is
recorded too, so ``grad(grad(f))`` and Hessian-vector products compose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..autodiff import mode, run_backward
from ..errors import GradError
from ..primitive import primitive
from ..tensor import Tensor, tensor, zeros_like
from .tree import tree_flatten, tree_unflatten

_depth = [0]  # how many transforms are currently evaluating their function

_alias = primitive("alias", lambda xp, x: x, lambda g, ans, x: g, saves="none", kind="shape",
                   doc="The same value as a new graph vertex (a transform's input).")


def _make_input(x, op: str) -> Tensor:
    """A differentiation input for ``x``: linked to x's own graph when x has one."""
    if isinstance(x, Tensor):
        if x.dtype.kind != "f":
            raise GradError(f"{op}: cannot differentiate with respect to an integer tensor "
                            f"(dtype {x.dtype})")
        if x.requires_grad and mode.grad_enabled:
            return _alias(x)
        return Tensor(x.data, None, True)
    t = tensor(x)
    if t.dtype.kind != "f":
        raise GradError(f"{op}: cannot differentiate with respect to integer input {x!r}; "
                        "pass floats")
    return t.requires_grad_()


def _argnums(argnums, nargs: int, op: str) -> tuple:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for n in nums:
        if not -nargs <= n < nargs:
            raise ValueError(f"{op}: argnums {argnums} out of range for {nargs} arguments")
    return tuple(n % nargs for n in nums)


def _prepare(args: tuple, nums: tuple, op: str):
    args = list(args)
    leaves_per_arg, defs = [], []
    for n in nums:
        leaves, td = tree_flatten(args[n])
        ins = [_make_input(leaf, op) for leaf in leaves]
        args[n] = tree_unflatten(td, ins)
        leaves_per_arg.append(ins)
        defs.append(td)
    higher = mode.grad_enabled and (_depth[0] > 0 or any(
        t.node is not None for ins in leaves_per_arg for t in ins))
    return args, leaves_per_arg, defs, higher


def _call(f: Callable, args: list, kwargs: dict):
    prev = mode.grad_enabled
    mode.grad_enabled = True
    _depth[0] += 1
    try:
        return f(*args, **kwargs)
    finally:
        _depth[0] -= 1
        mode.grad_enabled = prev


def _scalar_out(out, op: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise GradError(f"{op}: the function must return a scalar tensor, got "
                        f"{type(out).__name__} (with has_aux=True, return (value, aux))")
    if out.size() != () and out.numel() != 1:
        raise GradError(f"{op}: the function must return a scalar, got shape {tuple(out.shape)}")
    if out.dtype.kind != "f":
        raise GradError(f"{op}: the function returned dtype {out.dtype}; need a float scalar")
    return out


def _grads(outs, cots, ins_per_arg, defs, higher, retain) -> list:
    flat = [t for ins in ins_per_arg for t in ins]
    if any(o.requires_grad for o in outs):
        outs_cots = [(o, c) for o, c in zip(outs, cots) if o.requires_grad]
        gs = run_backward([o for o, _ in outs_cots], [c for _, c in outs_cots],
                          retain_graph=retain or higher, create_graph=higher, targets=flat,
                          accumulate=False, allow_unused=True)
    else:
        gs = [None] * len(flat)
    gs = [zeros_like(t) if g is None else g for g, t in zip(gs, flat)]
    out, i = [], 0
    for ins, td in zip(ins_per_arg, defs):
        out.append(tree_unflatten(td, gs[i:i + len(ins)]))
        i += len(ins)
    return out


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """A function returning ``(f(*args), gradient)``; with ``has_aux``, ``((value, aux), grad)``.

    ``f`` must return a scalar. The gradient has the structure of the differentiated arguments
    (a tuple of them when ``argnums`` is a tuple).
    """

    def wrapped(*args, **kwargs):
        nums = _argnums(argnums, len(args), "value_and_grad")
        a, ins, defs, higher = _prepare(args, nums, "grad")
        res = _call(f, a, kwargs)
        if has_aux:
            if not (isinstance(res, tuple) and len(res) == 2):
                raise GradError("grad: has_aux=True needs f to return (value, aux)")
            out, aux = res
        else:
            out, aux = res, None
        out = _scalar_out(out, "grad")
        gs = _grads([out], [out.ones_like()], ins, defs, higher, False)
        g = gs[0] if isinstance(argnums, int) else tuple(gs)
        value = out if higher else out.detach()
        return ((value, aux) if has_aux else value), g

    wrapped.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    return wrapped


def grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False):
    """The gradient function of scalar-valued ``f`` with respect to ``argnums``.

    Composable: ``grad(grad(f))`` is the second derivative; a Hessian-vector product is
    ``grad(lambda x: (grad(f)(x) * v).sum())(x)``.
    """
    vg = value_and_grad(f, argnums, has_aux)

    def wrapped(*args, **kwargs):
        (value, g) = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    wrapped.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return wrapped


def vjp(f: Callable, *primals, has_aux: bool = False):
    """``(f(*primals), vjp_fn)``: ``vjp_fn(cotangent)`` returns one cotangent per primal.

    ``f`` may return a tensor or a tree of tensors; the cotangent has the same structure.
    ``vjp_fn`` can be called more than once.
    """
    nums = tuple(range(len(primals)))
    a, ins, defs, higher = _prepare(primals, nums, "vjp")
    res = _call(f, a, {})
    out, aux = (res if has_aux else (res, None))
    outs, out_def = tree_flatten(out)

    def vjp_fn(cotangent):
        cots, cdef = tree_flatten(cotangent)
        if cdef != out_def:
            raise GradError(f"vjp: cotangent structure {cdef} does not match the output {out_def}")
        cts = []
        for o, c in zip(outs, cots):
            c = c if isinstance(c, Tensor) else Tensor(o.backend.asarray(c, dtype=o.dtype))
            if tuple(c.shape) != tuple(o.shape):
                raise GradError(f"vjp: cotangent shape {tuple(c.shape)} does not match the "
                                f"output shape {tuple(o.shape)}")
            cts.append(c)
        return tuple(_grads(outs, cts, ins, defs, higher, True))

    shown = out if higher else tree_unflatten(out_def, [o.detach() for o in outs])
    return (shown, vjp_fn, aux) if has_aux else (shown, vjp_fn)
