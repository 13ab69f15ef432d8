r"""Curvature of a loss: extreme Hessian eigenvalues from Hessian-vector products alone.

The Hessian of a network with P parameters has P² entries, but ``H v`` costs about two
gradients. By default the gradient's graph is recorded once (``linearize`` of ``grad f``) and
each product pushes the tangent v forward through it (forward-over-reverse); ``hvp="reverse"``
records the gradient once with ``create_graph=True`` and takes each product as one more
backward pass, ``H v = ∇(∇L · v)`` (reverse-over-reverse). On MNIST-1D's MLP (15,210
parameters, batch 256) forward-over-reverse took 0.9-1.0 ms per product in float32 against
1.1-1.2 ms, and ``ng.hvp``, which evaluates f again for every product, 2.0-2.3 ms
(``benchmarks/fd_vs_autodiff.py``). On top of that operator:

- **Lanczos** builds a Krylov basis q₁…q_m (fully re-orthogonalised) and the tridiagonal
  T = Qᵀ H Q, whose eigenvalues (Ritz values) approximate both ends of H's spectrum after far
  fewer products than power iteration needs; it stops early once the residual bound
  |β_m s_{m,i}| of each wanted Ritz value is below ``tol`` times the value.
- **Power iteration** repeats v ← H v / ‖H v‖, deflating each eigenvector found; it finds the
  largest-magnitude eigenvalue, and with a shift by the spectral radius ρ (H + ρI, ρI − H) the
  largest or the most negative one.

``which`` names the end of the spectrum as scipy does: ``"LM"`` largest magnitude (the default:
the sharpness that limits the learning rate, 2/λ for gradient descent), ``"LA"`` largest
algebraic, ``"SA"`` smallest algebraic — a clearly negative one means a saddle, not a minimum.
Products run in the parameters' dtype (float64 when you pass float64); the Lanczos vectors and
the small eigenproblem are float64 on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .. import _backend as B
from ..autodiff import enable_grad, run_backward
from ..errors import GradError
from ..tensor import Tensor
from ..func.tree import tree_flatten, tree_unflatten

np = B.np
_WHICH = ("LM", "LA", "SA")
_METHODS = ("lanczos", "power")


class _HVP:
    """``H v`` on flat float64 host vectors for ``f`` at the leaves of ``params``."""

    def __init__(self, f: Callable, params, how: str, op: str):
        leaves, self.td = tree_flatten(params)
        if not leaves:
            raise ValueError(f"{op}: params has no tensors")
        self.leaves = []
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Tensor):
                if B.is_array(leaf):
                    leaf = Tensor._of(leaf)
                else:
                    raise TypeError(f"{op}: params must be a tree of tensors; leaf {i} is "
                                    f"{type(leaf).__name__}")
            if not B.is_float(leaf.dtype):
                raise TypeError(f"{op}: parameter {i} has dtype {leaf.dtype}; the Hessian needs "
                                "floating parameters")
            self.leaves.append(leaf)
        self.shapes = [tuple(t.shape) for t in self.leaves]
        self.sizes = [t.numel() for t in self.leaves]
        self.n = sum(self.sizes)
        self.calls = 0
        self.op = op
        if how == "reverse":
            self._setup_reverse(f)
        elif how == "forward":
            self._setup_forward(f)
        else:
            raise ValueError(f"{op}: hvp must be 'reverse' or 'forward', got {how!r}")

    def _check_out(self, out) -> None:
        if not isinstance(out, Tensor) or out.numel() != 1:
            what = (f"shape {tuple(out.shape)}" if isinstance(out, Tensor)
                    else type(out).__name__)
            raise GradError(f"{self.op}: f must return a scalar tensor, got {what}")
        if not B.is_float(out.dtype):
            raise GradError(f"{self.op}: f returned dtype {out.dtype}; need a float scalar")

    def _setup_reverse(self, f: Callable) -> None:
        self.ins = [Tensor._of(t._data, None, True) for t in self.leaves]
        with enable_grad():
            out = f(tree_unflatten(self.td, self.ins))
            self._check_out(out)
            self.value = float(out.item())
            gs = [None] * len(self.ins)
            if out.requires_grad:
                gs = run_backward([out], [out.ones_like().reshape(out.shape)],
                                  retain_graph=True, create_graph=True, targets=self.ins,
                                  accumulate=False, allow_unused=True)
        self.live = [(i, g) for i, g in enumerate(gs) if g is not None and g.requires_grad]
        self._apply = self._reverse

    def _reverse(self, vs: list) -> list:
        if not self.live:
            return [None] * len(vs)
        return run_backward([g for _, g in self.live], [vs[i] for i, _ in self.live],
                            retain_graph=True, targets=self.ins, accumulate=False,
                            allow_unused=True)

    def _setup_forward(self, f: Callable) -> None:
        from ..func import grad, linearize

        def checked(p):
            out = f(p)
            self._check_out(out)
            return out.reshape(())

        _, self.jvp_fn = linearize(grad(checked), tree_unflatten(self.td, self.leaves))
        self._apply = lambda vs: tree_flatten(self.jvp_fn(tree_unflatten(self.td, vs)))[0]

    def __call__(self, v):
        """H v for a flat float64 host vector ``v``."""
        self.calls += 1
        vs, i = [], 0
        for t, shape, size in zip(self.leaves, self.shapes, self.sizes):
            piece = v[i:i + size].reshape(shape).astype(t.dtype)
            vs.append(Tensor._of(t.backend.asarray(piece)))
            i += size
        hv = self._apply(vs)
        parts = [np.zeros(size) if h is None else h.numpy().astype(np.float64).ravel()
                 for h, size in zip(hv, self.sizes)]
        return np.concatenate(parts) if parts else np.zeros(0)


def _pick(theta, which: str, k: int):
    """Indices of the ``k`` wanted values of ``theta``, best first."""
    if which == "LM":
        order = np.argsort(-np.abs(theta), kind="stable")
    elif which == "LA":
        order = np.argsort(-theta, kind="stable")
    else:
        order = np.argsort(theta, kind="stable")
    return order[:k]


def _lanczos(H: _HVP, k: int, iters: int, rng, tol: float, which: str) -> list[float]:
    n = H.n
    m = min(iters, n)
    Q = np.zeros((m, n))
    alphas: list = []
    betas: list = []
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    q_prev, beta_prev = np.zeros(n), 0.0
    for j in range(m):
        Q[j] = q
        w = H(q)
        alpha = float(w @ q)
        w = w - alpha * q - beta_prev * q_prev
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        theta, S = np.linalg.eigh(_tridiag(alphas, betas))
        tiny = 1e-10 * max(float(np.abs(theta).max()), 1e-300)
        if j + 1 >= k:
            idx = _pick(theta, which, k)
            resid = np.abs(beta * S[-1, idx])
            if np.all(resid <= np.maximum(tol * np.abs(theta[idx]), tiny)):
                return [float(t) for t in theta[idx]]
        if j + 1 == m:
            return [float(t) for t in theta[_pick(theta, which, k)]]
        if beta <= tiny:
            # the Krylov space is invariant: go on from a fresh direction orthogonal to the
            # basis (a zero off-diagonal in T), which also reveals repeated eigenvalues
            w = rng.standard_normal(n)
            for _ in range(2):
                w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
            w /= np.linalg.norm(w)
            beta = 0.0
        else:
            w /= beta
        betas.append(beta)
        q_prev, q, beta_prev = q, w, beta
    raise AssertionError("unreachable")


def _tridiag(alphas: list, betas: list):
    m = len(alphas)
    T = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        off = np.asarray(betas[:m - 1], dtype=np.float64)
        T += np.diag(off, 1) + np.diag(off, -1)
    return T


def _power_one(op: Callable, n: int, found: list, rng, iters: int, tol: float) -> tuple:
    """The dominant eigenpair of ``op`` deflated by ``found`` ((value, vector) pairs)."""
    v = rng.standard_normal(n)
    for _, u in found:
        v -= (u @ v) * u
    v /= np.linalg.norm(v)
    lam = 0.0
    for it in range(iters):
        w = op(v)
        for mu, u in found:
            w -= mu * (u @ v) * u
        new = float(v @ w)
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            return 0.0, v
        v = w / norm
        if it > 0 and abs(new - lam) <= tol * max(abs(new), 1e-300):
            return new, v
        lam = new
    return lam, v


def _power(H: _HVP, k: int, iters: int, rng, tol: float, which: str) -> list[float]:
    if which == "LM":
        found: list = []
        for _ in range(k):
            found.append(_power_one(H, H.n, found, rng, iters, tol))
        vals = np.array([f[0] for f in found])
        return [float(t) for t in vals[_pick(vals, which, k)]]
    rho = abs(_power_one(H, H.n, [], rng, iters, tol)[0])  # spectral radius estimate
    sign = 1.0 if which == "LA" else -1.0

    def shifted(v):
        return sign * H(v) + rho * v  # eigenvalues sign·λ + ρ >= 0, the wanted end largest

    found = []
    for _ in range(k):
        found.append(_power_one(shifted, H.n, found, rng, iters, tol))
    vals = np.array([sign * (mu - rho) for mu, _ in found])
    return [float(t) for t in vals[_pick(vals, which, k)]]


def _check(op: str, k, method, iters, which, tol) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{op}: k must be an integer >= 1, got {k!r}")
    if method not in _METHODS:
        raise ValueError(f"{op}: method must be one of {', '.join(_METHODS)}, got {method!r}")
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"{op}: iters must be an integer >= 1, got {iters!r}")
    if which not in _WHICH:
        raise ValueError(f"{op}: which must be 'LM' (largest magnitude), 'LA' (largest) or "
                         f"'SA' (smallest, most negative), got {which!r}")
    if not (isinstance(tol, int | float) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{op}: tol must be a finite number >= 0, got {tol!r}")


def hessian_eigenvalues(f: Callable, params, k: int = 1, method: str = "lanczos",
                        iters: int = 30, seed: int = 0, tol: float = 1e-6, *,
                        which: str = "LM", hvp: str = "forward") -> list[float]:
    """The ``k`` extreme eigenvalues of the Hessian of scalar ``f(params)``, never forming it.

    ``params`` is a tree (dict, list, tuple) of tensors; ``which`` is ``"LM"`` (largest
    magnitude), ``"LA"`` (largest) or ``"SA"`` (smallest: negative means a saddle). ``method``
    ``"lanczos"`` uses at most ``iters`` Hessian-vector products in all, ``"power"`` up to
    ``iters`` per eigenvalue (plus ``iters`` for the shift with LA/SA). Lanczos returns a
    repeated eigenvalue once unless its Krylov space runs out; power iteration with deflation
    finds repeats. ``hvp`` picks forward-over-reverse (``"forward"``) or reverse-over-reverse
    (``"reverse"``) products. Values come best first (by |λ|, descending or ascending).
    """
    return _eigenvalues("hessian_eigenvalues", f, params, k, method, iters, seed, which, tol,
                        hvp, "the parameters have only {} entries")


def _eigenvalues(op: str, f: Callable, params, k: int, method: str, iters: int, seed: int,
                 which: str, tol: float, hvp: str, too_few: str) -> list[float]:
    _check(op, k, method, iters, which, tol)
    H = _HVP(f, params, hvp, op)
    if k > H.n:
        raise ValueError(f"{op}: k={k} but " + too_few.format(H.n))
    rng = np.random.default_rng(seed)
    if method == "lanczos":
        return _lanczos(H, k, iters, rng, tol, which)
    return _power(H, k, iters, rng, tol, which)


def model_hessian_eigenvalues(model, loss_fn: Callable, x, y, k: int = 3,
                              method: str = "lanczos", iters: int = 30, seed: int = 0, *,
                              which: str = "LM", tol: float = 1e-6,
                              hvp: str = "forward") -> list[float]:
    """Extreme Hessian eigenvalues of ``loss_fn(model(x), y)`` w.r.t. all trainable parameters.

    Uses ``functional_call``, so the model's own tensors are untouched. Floating ``x``/``y``
    are cast to the parameters' dtype (``model.double()`` gives float64 curvature). The forward
    pass runs once (one dropout mask, one batch-norm update in training mode).
    """
    from ..nn.module import functional_call
    from .gradcheck import check_model_and_loss

    op = "model_hessian_eigenvalues"
    check_model_and_loss(op, model, loss_fn)
    if x is None:
        raise TypeError(f"{op}: x is None; expected the model's input batch (a tensor or "
                        "array)")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(f"{op}: {type(model).__name__} has no trainable parameters")
    first = next(iter(params.values()))
    x, y = _as_input(x, first.dtype, first.device), _as_input(y, first.dtype, first.device)

    def f(ps):
        out = functional_call(model, ps, x)
        if y is not None:
            return loss_fn(out, y)
        try:  # a loss that ignores its target may be given None
            return loss_fn(out, None)
        except (AttributeError, TypeError) as e:
            name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
            raise TypeError(f"{op}: y is None, and {name}(output, None) failed "
                            f"({type(e).__name__}: {e}); pass y, the targets the loss "
                            "compares the output with") from None

    return _eigenvalues(op, f, params, k, method, iters, seed, which, tol, hvp,
                        "the model has only {} trainable parameters")


def _as_input(a, dtype, device):
    from ..tensor import tensor

    if a is None:
        return None
    t = a if isinstance(a, Tensor) else tensor(a)
    if t.device != device:
        t = t.to(device)
    if B.is_float(t.dtype) and t.dtype != dtype:
        t = t.astype(dtype)
    return t


__all__ = ["hessian_eigenvalues", "model_hessian_eigenvalues"]
