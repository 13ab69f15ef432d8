"""Checking derivatives: finite differences against the engine, and PyTorch as a reference.

``gradcheck`` is the notes' contrast made executable: the engine's reverse-mode gradient must
agree with central finite differences, element by element, in float64.
"""

from __future__ import annotations

from collections.abc import Callable

from . import _backend as B
from .autodiff import mode, run_backward
from .tensor import Tensor, get_default_device


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree (the message names the worst element)."""


def _outputs(res) -> list:
    if isinstance(res, Tensor):
        return [res]
    if isinstance(res, list | tuple):
        return [r for r in res if isinstance(r, Tensor)]
    raise TypeError(f"gradcheck: f must return a tensor or a tuple of tensors, got {type(res)}")


def _dot(outs, cots) -> float:
    return float(sum((o.numpy().astype("float64") * c).sum() for o, c in zip(outs, cots)))


def _leaf(x, requires_grad: bool = False) -> Tensor:
    """Host array ``x`` as a tensor on the default device (on the CPU, ``x`` itself)."""
    return Tensor(B.get_backend(get_default_device()).asarray(x), None, requires_grad)


def _vjp(f, xs, cots, create_graph):
    """Analytic ⟨cot, J⟩ for each float input (None where f does not depend on it)."""
    ins = [_leaf(x, x.dtype.kind == "f") for x in xs]
    prev = mode.grad_enabled
    mode.grad_enabled = True
    try:
        outs = _outputs(f(*ins))
        live = [(o, Tensor(o.backend.asarray(c))) for o, c in zip(outs, cots) if o.requires_grad]
        targets = [t for t in ins if t.requires_grad]
        if not live:
            return [None] * len(targets), ins
        gs = run_backward([o for o, _ in live], [c for _, c in live], retain_graph=create_graph,
                          create_graph=create_graph, targets=targets, accumulate=False)
    finally:
        mode.grad_enabled = prev
    return gs, ins


def gradcheck(f: Callable, *inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              order: int = 1, seed: int = 0, raise_exception: bool = True) -> bool:
    """Compare ``f``'s reverse-mode gradient with central differences, in float64.

    ``inputs`` are arrays or tensors; floating ones are differentiated (converted to float64),
    others are passed through. A random cotangent ``v`` turns ``f`` into the scalar ⟨v, f(x)⟩,
    whose every partial derivative is checked: |analytic - numeric| <= atol + rtol |numeric|.
    ``order=2`` also checks the gradient of the gradient. On failure raises GradcheckError
    naming the input, the element and both values (or returns False).
    """
    np = B.np
    xs = [np.array(x.numpy() if isinstance(x, Tensor) else x) for x in inputs]
    xs = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in xs]
    rng = np.random.default_rng(seed)
    with _no_grad():
        outs0 = _outputs(f(*[_leaf(x) for x in xs]))
    cots = [rng.standard_normal(o.shape) for o in outs0]
    gs, _ = _vjp(f, xs, cots, create_graph=False)
    fi = [i for i, x in enumerate(xs) if x.dtype.kind == "f"]
    worst = (0.0, None)
    for k, i in enumerate(fi):
        x = xs[i]
        analytic = np.zeros(x.shape) if gs[k] is None else gs[k].numpy()
        if analytic.shape != x.shape:
            return _fail(f"gradient of input {i} has shape {analytic.shape}, expected {x.shape}",
                         raise_exception)
        for j in np.ndindex(*x.shape):
            orig = x[j]
            x[j] = orig + eps
            with _no_grad():
                hi = _dot(_outputs(f(*[_leaf(a) for a in xs])), cots)
            x[j] = orig - eps
            with _no_grad():
                lo = _dot(_outputs(f(*[_leaf(a) for a in xs])), cots)
            x[j] = orig
            numeric = (hi - lo) / (2 * eps)
            err = abs(analytic[j] - numeric)
            excess = err - (atol + rtol * abs(numeric))
            if not np.isfinite(analytic[j]) and not (np.isnan(analytic[j]) and np.isnan(numeric)):
                excess = np.inf
            if excess > worst[0]:
                worst = (excess, (i, j, analytic[j], numeric))
    if worst[1] is not None:
        i, j, a, n = worst[1]
        return _fail(f"gradcheck failed: input {i}, element {j}: analytic {a!r} vs numerical "
                     f"{n!r} (|diff| {abs(a - n):.3g} > atol {atol} + rtol {rtol} * |numerical|)",
                     raise_exception)
    if order >= 2:
        def first(*ts):
            g2, _ = _vjp_tensors(f, ts, cots)
            return tuple(g for g in g2 if g is not None)

        return gradcheck(first, *xs, eps=eps, atol=atol, rtol=rtol, order=order - 1,
                         seed=seed + 1, raise_exception=raise_exception)
    return True


def _vjp_tensors(f, ts, cots):
    """⟨cot, J⟩ at tensors ``ts`` with the backward pass recorded (for second order)."""
    prev = mode.grad_enabled
    mode.grad_enabled = True
    try:
        ins = [t if t.requires_grad or t.dtype.kind != "f" else Tensor(t.data, None, True)
               for t in ts]
        outs = _outputs(f(*ins))
        live = [(o, Tensor(o.backend.asarray(c))) for o, c in zip(outs, cots) if o.requires_grad]
        targets = [t for t in ins if t.dtype.kind == "f"]
        gs = run_backward([o for o, _ in live], [c for _, c in live], retain_graph=True,
                          create_graph=True, targets=targets, accumulate=False)
    finally:
        mode.grad_enabled = prev
    return gs, ins


class _no_grad:
    def __enter__(self):
        self.prev = mode.grad_enabled
        mode.grad_enabled = False

    def __exit__(self, *exc):
        mode.grad_enabled = self.prev


def _fail(msg: str, raise_exception: bool) -> bool:
    if raise_exception:
        raise GradcheckError(msg)
    return False


def compare_with_torch(ng_fn: Callable, torch_fn: Callable, *arrays, atol: float = 1e-6,
                       rtol: float = 1e-5, grad: bool = True, seed: int = 0) -> None:
    """Run the same computation in nodegrad and PyTorch and assert values, dtypes and gradients
    agree. ``arrays`` are NumPy arrays; floating ones are differentiated when ``grad``.
    Raises ImportError without torch (tests skip on it)."""
    import torch

    np = B.np
    ng_in = [Tensor(np.array(a), None, grad and a.dtype.kind == "f") for a in arrays]
    t_in = [torch.tensor(np.array(a), requires_grad=grad and a.dtype.kind == "f")
            for a in arrays]
    with _grad_on():
        out = ng_fn(*ng_in)
    ref = torch_fn(*t_in)
    if str(ref.dtype).replace("torch.", "") != str(out.dtype):
        raise AssertionError(f"dtype: nodegrad {out.dtype} vs torch {ref.dtype}")
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), atol=atol, rtol=rtol,
                               err_msg="values differ from PyTorch")
    if not grad or not out.requires_grad:
        return
    v = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    out.backward(Tensor(v))
    ref.backward(torch.tensor(v))
    for k, (a, b) in enumerate(zip(ng_in, t_in)):
        if b.grad is None:
            continue
        got = a.grad.numpy() if a.grad is not None else np.zeros(a.shape, a.dtype)
        np.testing.assert_allclose(got, b.grad.numpy(), atol=atol, rtol=rtol,
                                   err_msg=f"gradient of input {k} differs from PyTorch")


class _grad_on(_no_grad):
    def __enter__(self):
        self.prev = mode.grad_enabled
        mode.grad_enabled = True
