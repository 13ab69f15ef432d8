"""Finite differences against reverse mode: the cost of one full gradient, and the error.

The notes' argument, measured: a central finite-difference gradient needs two forward passes
per parameter, so its cost grows with the number of parameters P; reverse mode needs one forward
and one backward pass, a small constant times one forward, whatever P is. For MLPs 40-w-w-10 of
growing width w (batch 32, float64, softmax cross-entropy) this prints the time of one forward
pass, of one forward+backward, of one full finite-difference gradient, their ratios, and the
largest relative error between the two gradients (the ``check_gradients`` measure).

A second table times Hessian-vector products three ways (the operator behind
``nodegrad.diagnostics.curvature``): ``ng.hvp`` (evaluates f again for every product),
forward-over-reverse reusing one ``linearize`` of the gradient, and reverse-over-reverse
reusing one recorded gradient.

Run: ``python -m benchmarks.fd_vs_autodiff`` (about a minute; ``--quick`` for a few seconds,
``--json FILE`` to save the numbers). A standalone script, not part of the ``SUITE``. BLAS runs
on one thread (``--blas-threads``, through threadpoolctl when it is installed): these products
are small, and on a shared 2-core machine a second BLAS thread spinning against other processes
made a width-128 forward pass 100x slower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

WIDTHS = (8, 16, 32, 64, 128)
QUICK_WIDTHS = (8, 16, 32)
BATCH = 32


def _mlp(width: int, seed: int = 0) -> nn.Module:
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10)).double()


def _median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def fd_gradient(model: nn.Module, loss, eps: float = 1e-6) -> list[np.ndarray]:
    """The full central-difference gradient: 2 forward passes per parameter entry."""
    out = []
    with ng.no_grad():
        for p in model.parameters():
            flat = p.detach().numpy().reshape(-1)  # the parameter's memory, writable
            g = np.empty(flat.size)
            for j in range(flat.size):
                orig = flat[j]
                flat[j] = orig + eps
                hi = loss().item()
                flat[j] = orig - eps
                lo = loss().item()
                flat[j] = orig
                g[j] = (hi - lo) / (2 * eps)
            out.append(g.reshape(p.shape))
    return out


def fd_table(widths, reps: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = ng.tensor(rng.standard_normal((BATCH, 40)))
    y = ng.tensor(rng.integers(0, 10, BATCH))
    rows = []
    for w in widths:
        model = _mlp(w)
        params = list(model.parameters())
        P = sum(p.numel() for p in params)

        def loss():
            return F.cross_entropy(model(x), y)

        def forward():
            with ng.no_grad():
                loss()

        def backprop():
            return ng.autodiff.grad(loss(), params)

        t_fwd = _median_time(forward, reps)
        t_bwd = _median_time(backprop, reps)
        t = time.perf_counter()
        numeric = fd_gradient(model, loss)
        t_fd = time.perf_counter() - t
        analytic = [g.numpy() for g in backprop()]
        g_max = max(np.abs(a).max() for a in analytic)
        rel = max(float((np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)),
                                                    1e-3 * g_max)).max())
                  for a, n in zip(analytic, numeric))
        rows.append({"width": w, "params": P, "forward_ms": 1e3 * t_fwd,
                     "fwd_bwd_ms": 1e3 * t_bwd, "fd_s": t_fd, "fd_over_autodiff": t_fd / t_bwd,
                     "autodiff_over_forward": t_bwd / t_fwd,
                     "fd_forwards_per_param": t_fd / t_fwd / P, "max_rel_error": rel})
    return rows


def hvp_table(reps: int) -> list[dict]:
    from nodegrad.diagnostics.curvature import _HVP

    data = ng.data.datasets.mnist1d()
    rows = []
    for dt in (ng.float32, ng.float64):
        model = ng.models.create("mnist1d_mlp", seed=0).to(dtype=dt)
        x = ng.tensor(data.x_train[:256]).astype(dt)
        y = ng.tensor(data.y_train[:256])
        params = {n: p.detach() for n, p in model.named_parameters()}

        def f(ps):
            return F.cross_entropy(ng.func.functional_call(model, ps, x), y)

        rng = np.random.default_rng(0)
        n = sum(p.numel() for p in params.values())
        v = rng.standard_normal(n)
        tangent, i = {}, 0
        for k in sorted(params):
            p = params[k]
            tangent[k] = ng.tensor(v[i:i + p.numel()].reshape(p.shape).astype(dt))
            i += p.numel()
        t = time.perf_counter()
        rev = _HVP(f, params, "reverse", "bench")
        setup_rev = time.perf_counter() - t
        t = time.perf_counter()
        fwd = _HVP(f, params, "forward", "bench")
        setup_fwd = time.perf_counter() - t
        ways = {"ng.hvp (re-evaluates f)": lambda: ng.hvp(f, (params,), (tangent,)),
                "forward-over-reverse (linearize once)": lambda: fwd(v),
                "reverse-over-reverse (gradient recorded once)": lambda: rev(v)}
        times = {k: [] for k in ways}
        for _ in range(reps):  # interleaved, so drift hits all alike
            for k, fn in ways.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        for k in ways:
            setup = {"forward": setup_fwd, "reverse": setup_rev}.get(k.split("-")[0], 0.0)
            rows.append({"dtype": str(dt), "params": n, "method": k,
                         "ms_per_product": 1e3 * float(np.median(times[k])),
                         "setup_ms": 1e3 * setup})
    return rows


def _blas_threads(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small widths and few repetitions")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    ap.add_argument("--blas-threads", type=int, default=1, help="BLAS threads (default 1)")
    a = ap.parse_args(argv)
    with _blas_threads(a.blas_threads):
        return _run(a)


def _run(a) -> dict:
    reps = 5 if a.quick else 21
    fd = fd_table(QUICK_WIDTHS if a.quick else WIDTHS, reps)
    print(f"One full gradient of an MLP 40-w-w-10 (ReLU, batch {BATCH}, float64): central "
          "differences vs reverse mode")
    print("| width | parameters P | forward | forward+backward | finite differences | "
          "FD / autodiff | autodiff / forward | FD forwards per parameter | max rel error |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in fd:
        print(f"| {r['width']} | {r['params']:,} | {r['forward_ms']:.3f} ms | "
              f"{r['fwd_bwd_ms']:.3f} ms | {r['fd_s']:.3f} s | {r['fd_over_autodiff']:,.0f}x | "
              f"{r['autodiff_over_forward']:.1f}x | {r['fd_forwards_per_param']:.2f} | "
              f"{r['max_rel_error']:.1e} |")
    hv = hvp_table(reps)
    print(f"\nHessian-vector products on mnist1d_mlp ({hv[0]['params']:,} parameters, batch 256):"
          " median time per product")
    print("| dtype | method | per product | one-time setup |")
    print("|---|---|---:|---:|")
    for r in hv:
        setup = f"{r['setup_ms']:.1f} ms" if r["setup_ms"] else "-"
        print(f"| {r['dtype']} | {r['method']} | {r['ms_per_product']:.2f} ms | {setup} |")
    res = {"fd": fd, "hvp": hv}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
