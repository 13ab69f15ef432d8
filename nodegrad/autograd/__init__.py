"""PyTorch's ``torch.autograd`` names on nodegrad's engine: ``Function`` for an op with its own
backward, and the engine's entry points (``grad``, ``backward``) and modes.

>>> import nodegrad as ng
>>> class Cube(ng.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     def backward(ctx, g):
...         (x,) = ctx.saved_tensors
...         return 3 * x ** 2 * g
>>> x = ng.tensor([2.0], requires_grad=True)
>>> Cube.apply(x).sum().backward()
>>> x.grad
tensor([12.])
"""

from __future__ import annotations

import warnings

from collections.abc import Callable, Sequence

from .. import _backend as B
from ..autodiff import (ANOMALY, backward, detect_anomaly, enable_grad, inference_mode,
                       is_anomaly_check_nan_enabled, is_anomaly_enabled, no_grad,
                       set_anomaly, set_grad_enabled)
from ..autodiff import grad as _engine_grad
from ..autodiff import tensor_list
from ..errors import GradError
from ..func import autograd_functional as functional
from ..func.custom import Function, FunctionCtx, once_differentiable
from ..profiler import legacy as profiler  # noqa: F401  (torch.autograd.profiler)
from ..ops.shape import stack
from ..tensor import Tensor, zeros_like
from ..testing import GradcheckError
from ..testing import gradcheck as _gradcheck
from . import forward_ad
from . import function  # noqa: F401  (torch.autograd.function)
from . import graph  # noqa: F401  (torch.autograd.graph)

__all__ = ["Function", "FunctionCtx", "once_differentiable", "functional", "grad", "backward",
           "no_grad", "enable_grad", "set_grad_enabled", "detect_anomaly", "set_detect_anomaly",
           "set_anomaly_enabled", "is_anomaly_enabled", "is_anomaly_check_nan_enabled",
           "inference_mode", "gradcheck", "gradgradcheck", "GradcheckError", "Variable",
           "forward_ad"]


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, only_inputs: bool = True, allow_unused: bool | None = None,
         is_grads_batched: bool = False, materialize_grads: bool = False) -> tuple:
    """Gradients of ``outputs`` with respect to ``inputs``, as ``torch.autograd.grad`` (see
    :func:`nodegrad.autodiff.grad`).

    With ``is_grads_batched=True`` the first axis of every ``grad_outputs`` tensor is a batch
    of cotangents (rows of a Jacobian, say): each result gets that leading axis. The rows run
    as one backward pass each over the same graph, so gradient hooks run once per row.
    """
    if isinstance(inputs, list | tuple) and not inputs:  # as PyTorch: an empty tuple back
        raise GradError("grad: the inputs argument cannot be empty; pass the tensors to "
                        "differentiate with respect to")  # would hide a mistake in the call
    if not is_grads_batched:
        return _engine_grad(outputs, inputs, grad_outputs, retain_graph, create_graph,
                            only_inputs, allow_unused, False, materialize_grads)
    outs = tensor_list(outputs, "grad", "outputs")
    gos = list(grad_outputs) if isinstance(grad_outputs, list | tuple) else [grad_outputs]
    if len(gos) != len(outs):
        raise GradError(f"grad: got {len(outs)} output tensors and {len(gos)} gradients for "
                        "them; pass one gradient per output")
    n = None
    for i, (o, g) in enumerate(zip(outs, gos)):
        if not isinstance(g, Tensor) or g.ndim != o.ndim + 1 or \
                tuple(g.shape[1:]) != tuple(o.shape):
            got = f"shape {tuple(g.shape)}" if isinstance(g, Tensor) else type(g).__name__
            raise GradError(f"grad: with is_grads_batched=True each grad_output needs a leading "
                            f"batch axis and then its output's shape: grad_output[{i}] is {got}, "
                            f"output[{i}] has shape {tuple(o.shape)}")
        if n is None:
            n = g.shape[0]
        elif g.shape[0] != n:
            raise GradError(f"grad: with is_grads_batched=True every grad_output needs the same "
                            f"batch size, got {n} and {g.shape[0]} (grad_output[{i}])")
    if not n:
        raise GradError("grad: with is_grads_batched=True the batch of grad_outputs is empty")
    if materialize_grads and allow_unused is False:
        raise ValueError("grad: materialize_grads=True needs allow_unused unset or True, as in "
                         "PyTorch")
    keep = create_graph if retain_graph is None else retain_graph
    ins = tensor_list(inputs, "grad", "inputs")  # a generator such as model.parameters() too
    rows = [_engine_grad(outs, ins, [g[b] for g in gos], True if b < n - 1 else keep,
                         create_graph, only_inputs, allow_unused or materialize_grads)
            for b in range(n)]
    res = []
    for k, t in enumerate(ins):
        got = [r[k] for r in rows]
        if got[0] is None:  # unused: None, or zeros shaped as the input (as PyTorch)
            res.append(zeros_like(t) if materialize_grads else None)
        else:
            res.append(stack(got))
    return tuple(res)


class set_detect_anomaly:
    """Turn anomaly detection on or off, as ``torch.autograd.set_detect_anomaly``: for every
    thread (PyTorch's mode is one switch for the process), at once when called, and back to
    the previous setting on leaving a ``with`` block. ``check_nan=False`` keeps the mode on
    (nodes note where they were made) without raising on NaN/Inf, as PyTorch's."""

    def __init__(self, mode: bool, check_nan: bool = True):
        self.prev = tuple(ANOMALY)
        set_anomaly(mode, check_nan)

    def __enter__(self) -> set_detect_anomaly:
        return self

    def __exit__(self, *exc) -> None:
        set_anomaly(*self.prev)


def set_anomaly_enabled(enabled: bool, check_nan: bool = True) -> None:
    """Turn anomaly detection on or off for every thread until changed again, as
    ``torch.set_anomaly_enabled`` (``check_nan=False``: no NaN/Inf checks)."""
    set_anomaly(enabled, check_nan)


class _VariableMeta(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, Tensor)


class Variable(metaclass=_VariableMeta):
    """PyTorch's deprecated ``Variable``: ``Variable(t)`` is ``t.detach()`` (a new leaf sharing
    t's memory, cut from its graph) with ``requires_grad`` as asked, and every tensor is an
    instance. ``t`` may be a NumPy or CuPy array too."""

    def __new__(cls, data, requires_grad: bool = False, volatile: bool = False) -> Tensor:
        if B.is_array(data):
            out = Tensor._of(data)
        elif isinstance(data, Tensor):
            out = data.detach()
        else:
            raise TypeError(f"Variable: expected a tensor or an array, got "
                            f"{type(data).__name__}")
        if volatile:  # PyTorch's warning: the flag has had no effect since 0.4
            warnings.warn("volatile was removed and now has no effect. Use `with "
                          "nodegrad.no_grad():` instead.", UserWarning, stacklevel=2)
        if requires_grad:
            out.requires_grad_()
        return out


def _split_inputs(op: str, inputs) -> tuple[list, list, list]:
    """The inputs as a list, the positions that require grad, and the rest in float64."""
    args = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    wanted = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not wanted:
        raise ValueError(f"{op}: expected at least one input tensor that requires grad (only "
                         "those are checked, as in torch.autograd)")
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and i not in wanted and B.is_float(a.dtype):
            args[i] = a.detach().astype(B.float64)  # gradcheck runs in float64
    return args, wanted, [args[i] for i in wanted]


def _closed(func: Callable, args: list, wanted: list) -> Callable:
    def f(*xs):
        full = list(args)
        for i, x in zip(wanted, xs):
            full[i] = x
        return func(*full)

    return f


def _refuse(op: str, **flags) -> None:
    on = [k for k, v in flags.items() if v]
    if on:
        raise NotImplementedError(f"{op}: {', '.join(on)} is not supported; nodegrad checks "
                                  "reverse-mode gradients against central differences")


def gradcheck(func: Callable, inputs, *, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, raise_exception: bool = True, nondet_tol: float = 0.0,
              check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
              check_batched_grad: bool = False, check_batched_forward_grad: bool = False,
              check_forward_ad: bool = False, check_backward_ad: bool = True,
              fast_mode: bool = False, masked: bool | None = None) -> bool:
    """``torch.autograd.gradcheck``: the reverse-mode gradient of ``func`` with respect to the
    ``inputs`` that require grad against central differences in float64 (see
    :func:`nodegrad.testing.gradcheck`). True, or GradcheckError (False without
    ``raise_exception``); forward-mode and batched checks are refused."""
    _refuse("gradcheck", check_batched_grad=check_batched_grad,
            check_batched_forward_grad=check_batched_forward_grad,
            check_forward_ad=check_forward_ad)
    args, wanted, xs = _split_inputs("gradcheck", inputs)
    if not check_backward_ad:
        return True
    return _gradcheck(_closed(func, args, wanted), *xs, eps=eps, atol=atol, rtol=rtol,
                      raise_exception=raise_exception)


def _as_list(res) -> list:
    return [res] if isinstance(res, Tensor) else [r for r in res if isinstance(r, Tensor)]


def gradgradcheck(func: Callable, inputs, grad_outputs: Sequence | Tensor | None = None, *,
                  eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
                  gen_non_contig_grad_outputs: bool = False, raise_exception: bool = True,
                  nondet_tol: float = 0.0, check_undefined_grad: bool = True,
                  check_grad_dtypes: bool = False, check_batched_grad: bool = False,
                  check_fwd_over_rev: bool = False, check_rev_over_rev: bool = True,
                  fast_mode: bool = False, masked: bool = False) -> bool:
    """``torch.autograd.gradgradcheck``: checks the gradient of ``x -> <v, J_func(x)>`` (the
    first derivative, recorded with ``create_graph``) against central differences, ``v`` being
    ``grad_outputs`` or fixed random normals (seeded)."""
    _refuse("gradgradcheck", check_batched_grad=check_batched_grad,
            check_fwd_over_rev=check_fwd_over_rev)
    args, wanted, xs = _split_inputs("gradgradcheck", inputs)
    if not check_rev_over_rev:
        return True
    f = _closed(func, args, wanted)
    xs64 = [x.detach().astype(B.float64) if B.is_float(x.dtype) else x.detach() for x in xs]
    with no_grad():
        outs = _as_list(f(*xs64))
    if grad_outputs is None:
        rng = B.np.random.default_rng(0)
        vs = [Tensor._of(o.backend.asarray(rng.standard_normal(o.shape))) for o in outs]
    else:
        given = [grad_outputs] if isinstance(grad_outputs, Tensor) else list(grad_outputs)
        vs = [g.detach().astype(B.float64) for g in given]
        if len(vs) != len(outs):
            raise ValueError(f"gradgradcheck: {len(outs)} outputs but {len(vs)} grad_outputs")

    def first(*ts):
        with enable_grad():
            ins = [t if t.requires_grad else t.detach().requires_grad_() for t in ts]
            res = _as_list(f(*ins))
            live = [(o, v) for o, v in zip(res, vs) if o.requires_grad]
            if not live:
                return tuple(t * 0 for t in ins)
            gs = grad([o for o, _ in live], ins, [v for _, v in live], create_graph=True,
                      allow_unused=True)
        return tuple(t * 0 if g is None else g for g, t in zip(gs, ins))

    return _gradcheck(first, *xs64, eps=eps, atol=atol, rtol=rtol,
                      raise_exception=raise_exception)
