"""Optimisers on an ill-conditioned quadratic and on Rosenbrock: iterations to reach a tolerance.

The notes' claims, checked with ``nodegrad.optim``: on a quadratic of condition number κ, gradient
descent needs O(κ) iterations and heavy-ball or Nesterov momentum O(√κ) (each with its textbook
step size and momentum); diagonal preconditioners (Adagrad, RMSProp, Adadelta, Adam) shine when
the curvature is axis-aligned and lose much of that edge when the same quadratic is rotated; SGD
with the notes' fixed 1/√t decay (``InverseSqrtLR``) is compared on the same problems. Adaptive
methods, the decayed SGD and every method on Rosenbrock get the best learning rate of a grid.
Prints markdown tables and writes a PNG of the paths (needs matplotlib).

Run: ``python examples/optimizers_on_quadratic.py [--quick] [--out DIR] [--no-plot]`` (the PNG
goes to DIR/optimizer_paths.png, default runs/examples/optimizers_on_quadratic).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import numpy as np

import nodegrad as ng

METHODS = ["GD", "SGD 1/√t", "Momentum", "Nesterov", "Adagrad", "RMSProp", "Adadelta", "Adam"]
JIT = True  # run each optimiser step under ng.jit (about 2x faster; same iterates)
PATIENCE = 2000  # a run that finds no point closer to x* for this long has stalled


@dataclass
class Problem:
    name: str
    loss: object  # Tensor -> scalar Tensor
    x0: np.ndarray
    xstar: np.ndarray
    tol: float  # stop when ||x - x*|| <= tol
    cap: int  # give up after this many iterations, or after PATIENCE without a new best
    kappa: float | None = None  # condition number, for the textbook settings
    L: float | None = None  # largest curvature


def quadratic(kappa: float, angle_deg: float = 0.0, tol: float = 1e-6, cap: int = 20000):
    """f(x) = ½ xᵀ A x with A = R diag(1, κ) Rᵀ (R a rotation): minimum 0 at the origin.

    Works on a point (2,) or a batch of points (2, N), for the contour plot.
    """
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    A = R @ np.diag([1.0, kappa]) @ R.T
    At = ng.tensor(A)
    label = f"quadratic κ={kappa:g}" + (f", rotated {angle_deg:g}°" if angle_deg else "")
    return Problem(label, lambda x: 0.5 * (x * (At @ x)).sum(0), np.array([0.9, 0.65]),
                   np.zeros(2), tol, cap, kappa, kappa)


def rosenbrock(tol: float = 1e-4, cap: int = 30000):
    """f(x, y) = (1 - x)² + 100 (y - x²)², from the classic start (-1.2, 1)."""
    def loss(p):
        x, y = p[0], p[1]
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    return Problem("Rosenbrock", loss, np.array([-1.2, 1.0]), np.ones(2), tol, cap)


def make_optimizer(method: str, params, lr: float, prob: Problem):
    """Momentum settings: the textbook optimum on quadratics, 0.9 on Rosenbrock."""
    k = prob.kappa
    if method in ("GD", "SGD 1/√t"):  # the latter with InverseSqrtLR, see run()
        return ng.optim.SGD(params, lr=lr)
    if method == "Momentum":  # Polyak: beta = ((√κ - 1) / (√κ + 1))²
        beta = ((math.sqrt(k) - 1) / (math.sqrt(k) + 1)) ** 2 if k else 0.9
        return ng.optim.SGD(params, lr=lr, momentum=beta)
    if method == "Nesterov":  # mu = (√κ - 1) / (√κ + 1)
        mu = (math.sqrt(k) - 1) / (math.sqrt(k) + 1) if k else 0.9
        return ng.optim.SGD(params, lr=lr, momentum=mu, nesterov=True)
    if method == "Adagrad":
        return ng.optim.Adagrad(params, lr=lr)
    if method == "RMSProp":
        return ng.optim.RMSprop(params, lr=lr)
    if method == "Adadelta":
        return ng.optim.Adadelta(params, lr=lr)
    return ng.optim.Adam(params, lr=lr)


def textbook_lr(method: str, prob: Problem) -> float | None:
    """Step sizes from the convergence theory of quadratics (μ = 1, L = κ)."""
    if prob.kappa is None:
        return None
    L, mu = prob.L, 1.0
    return {"GD": 2 / (L + mu), "Momentum": 4 / (math.sqrt(L) + math.sqrt(mu)) ** 2,
            "Nesterov": 1 / L}.get(method)


def run(method: str, prob: Problem, lr: float, limit: int, record: bool = False):
    """Iterations until ||x - x*|| <= tol (None if not within ``limit``), and the path."""
    x = ng.tensor(prob.x0.copy(), requires_grad=True)
    opt = make_optimizer(method, [x], lr, prob)
    # the notes' fixed decay: the k-th update uses lr / √k
    sched = ng.optim.lr_scheduler.InverseSqrtLR(opt) if method == "SGD 1/√t" else None
    path = [prob.x0.copy()] if record else None
    closest, when = math.inf, 0
    def step():
        opt.zero_grad()
        prob.loss(x).backward()
        opt.step()

    # captured once, replayed each iteration (the schedule's lr is read by opt.step() on replay)
    step = ng.jit(step, state=(x, opt)) if JIT else step
    for it in range(1, limit + 1):
        step()
        if sched is not None:
            sched.step()
        xs = x.numpy()
        if record:
            path.append(xs.copy())
        d = float(np.linalg.norm(xs - prob.xstar))
        if d <= prob.tol:
            return it, path
        if not d < 1e3:  # diverged (or NaN)
            return None, path
        if d < closest:
            closest, when = d, it
        elif it - when > PATIENCE:
            return None, path
    return None, path


def best_lr(method: str, prob: Problem, grid: list[float]):
    """The textbook lr where theory gives one, else the grid's best (largest first, early exit)."""
    lr = textbook_lr(method, prob)
    if lr is not None:
        return lr, run(method, prob, lr, prob.cap)[0]
    best, misses = (None, None), 0
    for lr in grid:  # descending; stop when three smaller lrs in a row do no better
        limit = prob.cap if best[1] is None else best[1] - 1
        its, _ = run(method, prob, lr, limit)
        if its is not None:
            best, misses = (lr, its), 0
        elif best[1] is not None:
            misses += 1
            if misses == 3:
                break
    return best


def fmt(lr, its, cap) -> str:
    return f"not reached (cap {cap})" if its is None else f"{its} (lr {lr:.3g})"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="coarser grid, looser Rosenbrock tol")
    ap.add_argument("--out", default="runs/examples/optimizers_on_quadratic",
                    help="folder for optimizer_paths.png (default %(default)s)")
    ap.add_argument("--no-plot", action="store_true", help="tables only")
    ap.add_argument("--no-jit", action="store_true", help="run the steps eagerly")
    args = ap.parse_args(argv)
    global JIT
    JIT = not args.no_jit
    t0 = time.perf_counter()
    step = 2.0 if args.quick else 2 ** 0.5
    grid = [4.0 / step ** k for k in range(int(math.log(4e5) / math.log(step)))]
    probs = [quadratic(100), quadratic(100, angle_deg=30), rosenbrock(1e-2 if args.quick else 1e-4)]
    results: dict = {}
    for prob in probs:
        for m in METHODS:
            results[prob.name, m] = best_lr(m, prob, grid)

    print("\n| method | " + " | ".join(p.name for p in probs) + " |")
    print("|---" * (len(probs) + 1) + "|")
    for m in METHODS:
        cells = [fmt(*results[p.name, m], p.cap) for p in probs]
        print(f"| {m} | " + " | ".join(cells) + " |")

    kappas = [10, 100, 1000]
    scaling = {m: [best_lr(m, quadratic(k), grid)[1] for k in kappas]
               for m in ("GD", "Momentum", "Nesterov")}
    print("\n| method | " + " | ".join(f"κ={k}" for k in kappas) + " | slope of log iters vs "
          "log κ |")
    print("|---" * (len(kappas) + 2) + "|")
    for m, its in scaling.items():
        slope = np.polyfit(np.log(kappas), np.log(its), 1)[0]
        print(f"| {m} | " + " | ".join(str(i) for i in its) + f" | {slope:.2f} |")
    gd, hb = scaling["GD"][1], scaling["Momentum"][1]
    print(f"\nκ=100: GD {gd} iterations, momentum {hb}; √{gd} = {math.sqrt(gd):.0f}")

    if not args.no_plot:
        plot(probs, results, os.path.join(args.out, "optimizer_paths.png"))
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")
    return {"table": results, "scaling": scaling}


def plot(probs, results, out: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib (no plot written)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(probs), figsize=(6 * len(probs), 5.2))
    for ax, prob in zip(axes, probs):
        paths = {}
        for m in METHODS:
            lr, its = results[prob.name, m]
            if lr is not None:
                paths[m] = np.array(run(m, prob, lr, min(its or prob.cap, 3000), True)[1])
        pts = np.concatenate(list(paths.values()))  # frame most points: a few wild jumps
        ends = np.stack([prob.x0, prob.xstar])     # (sign-like first steps) may leave it
        lo = np.minimum(np.percentile(pts, 2, axis=0), ends.min(0))
        hi = np.maximum(np.percentile(pts, 98, axis=0), ends.max(0))
        pad = 0.15 * (hi - lo) + 0.05
        gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
                             np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200))
        z = prob.loss(ng.tensor(np.stack([gx.ravel(), gy.ravel()]))).numpy().reshape(gx.shape)
        ax.contour(gx, gy, np.log10(z + 1e-12), levels=25, cmap="Greys", linewidths=0.6)
        for m, path in paths.items():
            ax.plot(path[:, 0], path[:, 1], ".-", ms=2, lw=0.9, label=m,
                    color=f"C{METHODS.index(m)}")  # one colour per method in every panel
        ax.plot(*prob.xstar, "k*", ms=12)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(prob.name)
        ax.legend(fontsize=8)
    fig.suptitle("Optimiser paths at each method's best learning rate (first ≤ 3000 steps)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot written to {out}")


if __name__ == "__main__":
    main()
