r"""Gradient check of a whole model: every parameter's autodiff gradient against central
differences, in float64.

The notes contrast the two: a finite difference
∂L/∂θᵢ ≈ (L(θ + εeᵢ) − L(θ − εeᵢ)) / 2ε costs two forward passes *per parameter*, reverse mode
one forward and one backward for all of them. Too slow to train with, finite differences are
the independent referee for the engine: :func:`check_gradients` copies the model to float64,
takes the gradient of ``loss_fn(model(x), y)`` by backpropagation once, and compares it with
central differences on (a random subset of) each parameter's entries. ``nodegrad.testing.
gradcheck`` does the same for functions of tensors; this is its per-parameter form for modules.

The relative error of one entry is |a − n| / max(|a|, |n|, floor·g_max), with g_max the
largest gradient entry of the whole model: an entry a thousand times smaller than that (a dead
ReLU's zero, say) sits at the finite-difference noise level (about 3e-10 absolute in float64
with ε = 1e-6) and is compared on the model's scale instead of dividing noise by nearly nothing.
Correct gradients of the zoo models give at most about 3e-6 this way; a wrong VJP gives errors
of order one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from .. import _backend as B
from ..autodiff import enable_grad, no_grad, run_backward
from ..tensor import Tensor

np = B.np


def _as_float64(a, op: str, what: str):
    if a is None:
        return None
    if isinstance(a, Tensor):
        t = a.detach()
    elif B.is_array(a) or isinstance(a, list | tuple | int | float):
        t = Tensor._of(B.np.asarray(a))
    else:
        raise TypeError(f"{op}: {what} must be a tensor or an array, got {type(a).__name__}")
    if B.is_float(t.dtype) and t.dtype != B.float64:
        t = t.astype(B.float64)
    return t


def _on(t, device):
    return t if t is None or t.device == device else t.to(device)


def _same_draws(device, seed: int):
    """``(reset, done)``: ``reset()`` before each loss evaluation makes it draw the same random
    numbers (dropout's masks). On the CPU it puts the default generator's state back; a device's
    generator cannot export its state, so there it swaps in a private stream from ``seed``,
    and ``done()`` puts the user's stream back."""
    from ..random import default_generator

    gen = default_generator(device)
    if gen.backend.device_id is None:
        state = gen.get_state()
        return (lambda: gen.set_state(state)), (lambda: None)
    own = gen.rng

    def reset() -> None:
        gen.rng = gen.backend.generator(seed)

    def done() -> None:
        gen.rng = own

    return reset, done


def check_model_and_loss(op: str, model, loss_fn) -> None:
    """The errors every ``f(model, loss_fn, x, y)`` diagnostic gives for a wrong first pair."""
    from ..nn.module import Module

    if not isinstance(model, Module):
        raise TypeError(f"{op}: expected an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"{op}: loss_fn must be callable as loss_fn(output, y), got "
                        f"{type(loss_fn).__name__}")


def check_gradients(model, loss_fn: Callable, x, y, eps: float = 1e-6,
                    max_per_param: int | None = 50, seed: int = 0, *,
                    floor: float = 1e-3) -> list[dict]:
    """Compare each trainable parameter's autodiff gradient with central differences.

    Works on a float64 copy of ``model`` (the original is untouched); ``loss_fn(output, y)``
    must return a scalar. At most ``max_per_param`` entries per parameter are checked, drawn at
    random with ``seed`` (all when None). The default generator's state is restored before
    every evaluation, so dropout draws the same mask each time. Returns one dict per parameter:
    ``name``, ``shape``, ``checked`` (entries), ``max_rel_error``, ``max_abs_error``, ``index``
    (of the worst entry), ``analytic`` and ``numeric`` (there), and ``max_abs_grad``. Relative
    errors divide by at least ``floor`` times the model's largest gradient entry.
    """
    op = "check_gradients"
    check_model_and_loss(op, model, loss_fn)
    if not (isinstance(eps, int | float) and 0 < eps < 1):
        raise ValueError(f"{op}: eps must be a number in (0, 1), got {eps!r}")
    if max_per_param is not None and (not isinstance(max_per_param, int)
                                      or isinstance(max_per_param, bool) or max_per_param < 1):
        raise ValueError(f"{op}: max_per_param must be an integer >= 1 or None, got "
                         f"{max_per_param!r}")
    if not (isinstance(floor, int | float) and floor >= 0):
        raise ValueError(f"{op}: floor must be a number >= 0, got {floor!r}")
    m = copy.deepcopy(model).to(dtype=B.float64)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{op}: {type(model).__name__} has no trainable parameters")
    device = named[0][1].device
    x64, y64 = (_on(_as_float64(a, op, what), device) for a, what in ((x, "x"), (y, "y")))
    reset, done = _same_draws(device, seed)
    try:

        def loss() -> Tensor:
            reset()
            out = loss_fn(m(x64), y64)
            if not isinstance(out, Tensor) or out.numel() != 1:
                what = (f"shape {tuple(out.shape)}" if isinstance(out, Tensor)
                        else type(out).__name__)
                raise ValueError(f"{op}: loss_fn must return a scalar tensor, got {what}")
            return out

        with enable_grad():
            out = loss()
            if not out.requires_grad:
                raise ValueError(f"{op}: the loss does not depend on any trainable parameter")
            grads = run_backward([out], [out.ones_like().reshape(out.shape)],
                                 targets=[p for _, p in named], accumulate=False, allow_unused=True)

        base = float(out.item())  # the generator is reset per call: what loss() gives unperturbed
        if not np.isfinite(base):
            raise ValueError(f"{op}: the loss is not finite ({base}); cannot compare gradients")
        analytics = [np.zeros(p.shape) if g is None else g.numpy().astype(np.float64)
                     for (_, p), g in zip(named, grads)]
        g_max = max(float(np.abs(a).max()) if a.size else 0.0 for a in analytics)
        small = floor * g_max
        rng = np.random.default_rng(seed)
        rows = []
        with no_grad():
            for (name, p), analytic in zip(named, analytics):
                n = p.numel()
                if max_per_param is None or n <= max_per_param:
                    idx = np.arange(n)
                else:
                    idx = np.sort(rng.choice(n, size=max_per_param, replace=False))
                if not p._data.flags.c_contiguous:
                    p._data = p._data.copy()
                flat = p._data.reshape(-1)  # a view of the parameter's own array
                worst = (-1.0, 0, 0.0, 0.0, 0.0)
                for j in idx:
                    orig = flat[j].item()
                    flat[j] = orig + eps
                    hi = float(loss().item())
                    flat[j] = orig - eps
                    lo = float(loss().item())
                    flat[j] = orig
                    num = (hi - lo) / (2 * eps)
                    a = float(analytic.reshape(-1)[j])
                    err = abs(a - num)
                    denom = max(abs(a), abs(num), small)
                    rel = err / denom if denom > 0 else (0.0 if err == 0 else float("inf"))
                    if not np.isfinite(rel):
                        rel = float("inf")
                    if rel > worst[0]:
                        worst = (rel, int(j), a, num, err)
                rel, j, a, num, err = worst
                rows.append({"name": name, "shape": tuple(p.shape), "checked": int(len(idx)),
                             "max_rel_error": max(rel, 0.0), "max_abs_error": err,
                             "index": tuple(int(i) for i in np.unravel_index(j, p.shape))
                             if p.shape else (), "analytic": a, "numeric": num,
                             "max_abs_grad": float(np.abs(analytic).max()) if n else 0.0})
    finally:
        done()
    return rows


def format_gradcheck(rows: list[dict], tol: float | None = None) -> str:
    """The rows of :func:`check_gradients` as a table; with ``tol``, an ok/FAIL column."""
    def shape_str(s):
        return "x".join(map(str, s)) if s else "()"

    w = max([len("parameter")] + [len(r["name"]) for r in rows])
    head = (f"{'parameter':<{w}}  {'shape':>12}  {'checked':>7}  {'max rel err':>11}  "
            f"{'at':>12}  {'autodiff':>12}  {'finite diff':>12}")
    if tol is not None:
        head += "  ok"
    lines = [head]
    for r in rows:
        at = ",".join(map(str, r["index"])) or "-"
        line = (f"{r['name']:<{w}}  {shape_str(r['shape']):>12}  {r['checked']:>7}  "
                f"{r['max_rel_error']:>11.2e}  {at:>12}  {r['analytic']:>12.5g}  "
                f"{r['numeric']:>12.5g}")
        if tol is not None:
            line += "  " + ("ok" if r["max_rel_error"] <= tol else "FAIL")
        lines.append(line)
    return "\n".join(lines)


def assert_gradients(model, loss_fn: Callable, x, y, tol: float = 1e-6, **kwargs) -> list[dict]:
    """:func:`check_gradients`, raising ``nodegrad.testing.GradcheckError`` (naming the worst
    parameter, entry and both values) when any relative error exceeds ``tol``."""
    from ..testing import GradcheckError

    rows = check_gradients(model, loss_fn, x, y, **kwargs)
    bad = max(rows, key=lambda r: r["max_rel_error"])
    if bad["max_rel_error"] > tol:
        raise GradcheckError(
            f"gradient check failed: {bad['name']}{list(bad['index'])}: autodiff "
            f"{bad['analytic']!r} vs finite differences {bad['numeric']!r} (relative error "
            f"{bad['max_rel_error']:.3g} > tol {tol})")
    return rows


__all__ = ["check_gradients", "assert_gradients", "format_gradcheck"]
