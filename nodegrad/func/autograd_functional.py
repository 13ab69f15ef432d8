"""PyTorch's ``torch.autograd.functional`` (``ng.autograd.functional``) on the JAX-style
transforms: the same calls and result structures as PyTorch (a tensor for one input, tuples for
several), computed by ``vjp``/``jvp``/``jacrev``/``jacfwd``/``hessian``/``hvp``.
"""

from __future__ import annotations

import math

from collections.abc import Callable

from ..autodiff import enable_grad
from ..autodiff import grad as _engine_grad
from ..errors import GradError, ShapeError
from ..tensor import Tensor, zeros_like
from .grad import _vjp
from .jvp import hessian as _hessian
from .jvp import hvp as _hvp
from .jvp import _jacrev, jacfwd
from .jvp import jvp as _jvp

__all__ = ["vjp", "jvp", "jacobian", "hessian", "hvp", "vhp"]


def _inputs(inputs, what: str) -> tuple[tuple, bool]:
    many = isinstance(inputs, tuple | list)
    ins = tuple(inputs) if many else (inputs,)
    if not all(isinstance(t, Tensor) for t in ins):
        raise TypeError(f"{what}: inputs must be a tensor or a tuple of tensors, got "
                        f"{[type(t).__name__ for t in ins]}")
    return ins, many


def _vectors(v, like: tuple, what: str, name: str) -> tuple:
    if v is None:
        if len(like) != 1 or like[0]._data.size != 1:
            raise ValueError(f"{what}: {name} can be None only when there is one single-element "
                             f"tensor, got shapes {[tuple(t.shape) for t in like]}")
        return (like[0].ones_like(),)
    vs = tuple(v) if isinstance(v, tuple | list) else (v,)
    if len(vs) != len(like) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(vs, like)):
        raise ShapeError(f"{what}: {name} must match shapes {[tuple(t.shape) for t in like]}, "
                         f"got {[tuple(getattr(a, 'shape', ())) for a in vs]}")
    return vs


def _out(tree, create_graph: bool):
    if isinstance(tree, tuple | list):
        return tuple(_out(t, create_graph) for t in tree)
    if isinstance(tree, Tensor) and not create_graph:
        return tree.detach()
    return tree


def _one(xs: tuple, many: bool):
    return xs if many else xs[0]


def _tensor_outputs(func: Callable, what: str) -> Callable:
    """``func``, refusing outputs other than a tensor or a tuple of tensors (PyTorch's rule)
    with an error that says so, rather than a failure deep inside the transform."""
    def checked(*args):
        out = func(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        if not all(isinstance(o, Tensor) for o in outs):
            raise TypeError(f"{what}: the function must return a tensor or a tuple of tensors, "
                            f"got {[type(o).__name__ for o in outs]}")
        return out

    return checked


def _strict(func: Callable, ins: tuple, what: str, per_output: bool = False,
            second: bool = False) -> None:
    """``strict=True`` as PyTorch's: refuse an output computed without a graph from the inputs,
    and one independent of an input (``per_output``: each output against each input, as
    ``jacobian`` checks; ``second``: the gradient of a scalar function must also depend on
    each input, as ``hessian``/``hvp``/``vhp`` check). The check reruns ``func`` recorded."""
    with enable_grad():
        xs = tuple(t.detach().requires_grad_() for t in ins)
        out = func(*xs)
        outs = tuple(out) if isinstance(out, tuple | list) else (out,)
        for i, o in enumerate(outs):
            if not isinstance(o, Tensor) or not o.requires_grad:
                raise GradError(f"{what}: output {i} of the function does not require grad; "
                                "with strict=True every output must be computed "
                                "differentiably from the inputs")
        groups = [(f"output {i}", (o,)) for i, o in enumerate(outs)] if per_output else \
            [("the output", outs)]
        for name, os_ in groups:
            gs = _engine_grad(list(os_), list(xs), [o.ones_like() for o in os_],
                              retain_graph=True, create_graph=second, allow_unused=True)
            for j, g in enumerate(gs):
                if g is None:
                    raise GradError(f"{what}: {name} of the function is independent of input "
                                    f"{j}; strict=True does not allow that")
                if second and not g.requires_grad:
                    raise GradError(f"{what}: the gradient of the function with respect to "
                                    f"input {j} is independent of the inputs (a linear "
                                    "function, say); strict=True needs it twice "
                                    "differentiable with a gradient that depends on them")


def vjp(func: Callable, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """``(func(*inputs), vᵀ J)``, as ``torch.autograd.functional.vjp``."""
    ins, many = _inputs(inputs, "vjp")
    func = _tensor_outputs(func, "vjp")
    if strict:
        _strict(func, ins, "vjp")
    out, pull = _vjp(func, ins, int_outputs=True)
    outs, many_out = _inputs(out, "vjp (outputs)")
    grads = pull(_one(_vectors(v, outs, "vjp", "v"), many_out))
    grads = tuple(zeros_like(t) if g is None else g for g, t in zip(grads, ins))
    return _out(out, create_graph), _out(_one(grads, many), create_graph)


def jvp(func: Callable, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """``(func(*inputs), J v)``, as ``torch.autograd.functional.jvp``."""
    ins, many = _inputs(inputs, "jvp")
    func = _tensor_outputs(func, "jvp")
    if strict:
        _strict(func, ins, "jvp")
    out, tangent = _jvp(func, ins, _vectors(v, ins, "jvp", "v"))
    return _out(out, create_graph), _out(tangent, create_graph)


def _forward_mode_check(strategy: str, create_graph: bool, strict: bool, vectorize: bool,
                        what: str) -> None:
    """PyTorch's limits on a forward-mode Jacobian: no ``create_graph``, no ``strict``, and
    ``vectorize=True`` only."""
    if strategy != "forward-mode":
        return
    if create_graph:
        raise NotImplementedError(f"{what}: create_graph=True and forward-mode are not "
                                  "supported together (as in PyTorch); set create_graph=False "
                                  "or use reverse-mode")
    if strict:
        raise ValueError(f"{what}: strict=True and forward-mode are not supported together "
                         "(as in PyTorch); set strict=False or use reverse-mode")
    if not vectorize:
        raise NotImplementedError(f"{what}: forward-mode is only implemented with "
                                  "vectorize=True (as in PyTorch)")


def jacobian(func: Callable, inputs, create_graph: bool = False, strict: bool = False,
             vectorize: bool = False, strategy: str = "reverse-mode"):
    """The Jacobian of ``func`` at ``inputs``, shaped ``output.shape + input.shape``; tuples
    per output and per input as PyTorch nests them."""
    if strategy not in ("reverse-mode", "forward-mode"):
        raise ValueError(f"jacobian: strategy must be 'reverse-mode' or 'forward-mode', got "
                         f"{strategy!r}")
    _forward_mode_check(strategy, create_graph, strict, vectorize, "jacobian")
    if strict and vectorize:
        raise ValueError("jacobian: strict=True and vectorize=True are not supported "
                         "together (as in PyTorch); set one of them to False")
    ins, many = _inputs(inputs, "jacobian")
    func = _tensor_outputs(func, "jacobian")
    if strict:
        _strict(func, ins, "jacobian", per_output=True)
    nums = tuple(range(len(ins)))
    jac = (_jacrev(func, nums, int_outputs=True) if strategy == "reverse-mode"
           else jacfwd(func, argnums=nums))(*ins)
    if isinstance(jac, tuple | list) and jac and isinstance(jac[0], tuple | list):
        return _out(tuple(_one(tuple(j), many) for j in jac), create_graph)  # several outputs
    return _out(_one(tuple(jac), many), create_graph)


def hessian(func: Callable, inputs, create_graph: bool = False, strict: bool = False,
            vectorize: bool = False, outer_jacobian_strategy: str = "reverse-mode"):
    """The Hessian of scalar ``func``: ``input.shape * 2`` for one input, a tuple of tuples
    (block ``[i][j]`` of shape ``inputs[i].shape + inputs[j].shape``) for several."""
    if outer_jacobian_strategy not in ("reverse-mode", "forward-mode"):
        raise ValueError("hessian: outer_jacobian_strategy must be 'reverse-mode' or "
                         f"'forward-mode', got {outer_jacobian_strategy!r}")
    _forward_mode_check(outer_jacobian_strategy, create_graph, strict, vectorize, "hessian")
    if strict and vectorize:
        raise ValueError("hessian: strict=True and vectorize=True are not supported "
                         "together (as in PyTorch); set one of them to False")
    ins, many = _inputs(inputs, "hessian")

    def scalar(*args):
        out = func(*args)
        if not hasattr(out, "shape") or math.prod(out.shape) != 1:
            got = f"shape {tuple(out.shape)}" if hasattr(out, "shape") else type(out).__name__
            raise ShapeError("hessian: the function must return a tensor of a single element, "
                             f"got {got} (ng.hessian takes any output, as JAX's)")
        return out.reshape(())

    if strict:
        _strict(scalar, ins, "hessian", second=True)
    h = _hessian(scalar, argnums=tuple(range(len(ins))))(*ins)
    h = tuple(tuple(row) for row in h)
    return _out(h if many else h[0][0], create_graph)


def hvp(func: Callable, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """``(func(*inputs), H v)`` for scalar ``func``, as ``torch.autograd.functional.hvp``."""
    return _hvp_vhp(func, inputs, v, create_graph, strict, "hvp")


def _hvp_vhp(func: Callable, inputs, v, create_graph: bool, strict: bool, what: str):
    """``hvp``/``vhp``: ``func`` returns one tensor of a single element, of any shape (the
    output keeps it)."""
    ins, many = _inputs(inputs, what)
    func = _tensor_outputs(func, what)
    shape: list = []

    def scalar(*args):
        out = func(*args)
        if not isinstance(out, Tensor) or math.prod(out.shape) != 1:
            got = (f"shape {tuple(out.shape)}" if isinstance(out, Tensor)
                   else f"{len(out)} outputs")
            raise ShapeError(f"{what}: the function must return a single tensor of a single "
                             f"element, got {got}")
        shape[:] = [tuple(out.shape)]
        return out.reshape(())

    if strict:
        _strict(scalar, ins, what, second=True)
    out, hv = _hvp(scalar, ins, _vectors(v, ins, what, "v"))
    hv = tuple(hv) if isinstance(hv, tuple | list) else (hv,)
    return _out(out.reshape(shape[0]), create_graph), _out(_one(hv, many), create_graph)


def vhp(func: Callable, inputs, v=None, create_graph: bool = False, strict: bool = False):
    """``(func(*inputs), vᵀ H)``: the Hessian is symmetric, so this is ``hvp``'s result."""
    return _hvp_vhp(func, inputs, v, create_graph, strict, "vhp")
