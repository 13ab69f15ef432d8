"""Seeing the autodiff engine at work on real data: the recorded graph as boxes and arrows,
gradients checked against finite differences, Hessian eigenvalues before and after training,
and the two initialisation failures of the notes (symmetry and vanishing variance).

Run: ``python examples/autodiff_diagnostics.py`` (about 10 s). It writes graph_neuron.{png,svg}
and graph_digits_mlp.{png,svg} (when Graphviz's ``dot`` is installed; otherwise the .dot files
beside them) to ``--out`` (default runs/examples/autodiff_diagnostics; ``--out docs/figures``
regenerates the docs' figures) and prints the numbers quoted in docs/autodiff.md.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from pathlib import Path

import nodegrad as ng
from nodegrad import nn
from nodegrad.diagnostics.curvature import model_hessian_eigenvalues
from nodegrad.diagnostics.graph import draw_graph
from nodegrad.diagnostics.gradcheck import check_gradients, format_gradcheck
from nodegrad.diagnostics.init_checks import (format_symmetric_units, format_variance_table,
                                              symmetric_units, variance_across_depth)
from nodegrad.nn import functional as F

OUT = Path("runs/examples/autodiff_diagnostics")


def graphs(out: Path) -> None:
    """The notes' single neuron, and an MLP's loss on four digits, with values and gradients."""
    w = ng.tensor(0.5, requires_grad=True)
    b = ng.tensor(-0.2, requires_grad=True)
    x, y = ng.tensor(2.0), ng.tensor(1.0)
    loss = (ng.relu(w * x + b) - y) ** 2
    text = draw_graph(loss, out / "graph_neuron.png", values=True, grads=True,
                      params={"w": w, "b": b})
    draw_graph(loss, out / "graph_neuron.svg", values=True, grads=True, params={"w": w, "b": b})
    print("DOT text of the single neuron's graph:\n" + text)

    data = ng.data.datasets.digits()
    model = ng.models.create("digits_mlp", seed=0)
    loss = F.cross_entropy(model(ng.tensor(data.x_train[:4])), ng.tensor(data.y_train[:4]))
    for suffix in (".png", ".svg"):
        draw_graph(loss, out / f"graph_digits_mlp{suffix}", values=True, grads=True,
                   params=model)


def gradients() -> None:
    data = ng.data.datasets.mnist1d()
    model = ng.models.create("mnist1d_cnn", seed=0)
    t = time.perf_counter()
    rows = check_gradients(model, F.cross_entropy, data.x_train[:8], data.y_train[:8])
    print(f"\ncheck_gradients(mnist1d_cnn), 8 MNIST-1D samples ({time.perf_counter() - t:.1f} s):")
    print(format_gradcheck(rows, tol=1e-5))


def curvature() -> None:
    data = ng.data.datasets.mnist1d()
    x, y = ng.tensor(data.x_train), ng.tensor(data.y_train)
    model = ng.models.create("mnist1d_mlp", seed=0)
    xs, ys = x[:1000], y[:1000]

    def report(when: str) -> None:
        t = time.perf_counter()
        top = model_hessian_eigenvalues(model, F.cross_entropy, xs, ys, k=3)
        low = model_hessian_eigenvalues(model, F.cross_entropy, xs, ys, k=1, which="SA")
        print(f"{when:<22} top-3 {', '.join(f'{v:8.3f}' for v in top)}   most negative "
              f"{low[0]:8.4f}   ({time.perf_counter() - t:.1f} s, Lanczos, 1000 samples)")

    print("\nHessian of the cross-entropy of mnist1d_mlp (15,210 parameters):")
    report("at initialisation")
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    gen = ng.Generator(seed=0)
    for _ in range(10):  # 10 epochs of minibatches of 100
        perm = gen.permutation(len(x))
        for i in range(0, len(x), 100):
            idx = ng.tensor(perm[i:i + 100])
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
    report("after 10 epochs (Adam)")


def initialisation() -> None:
    data = ng.data.datasets.mnist1d()
    x, y = ng.tensor(data.x_train[:1000]), ng.tensor(data.y_train[:1000])
    model = ng.models.create("mnist1d_mlp", seed=0)
    for p in model.parameters():
        nn.init.constant_(p, 0.05)
    print("\nmnist1d_mlp with every weight and bias 0.05:")
    print(format_symmetric_units(symmetric_units(model)))
    opt = ng.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    print(f"after 200 steps of SGD (loss {loss.item():.3f}):")
    print(format_symmetric_units(symmetric_units(model, atol=1e-6)))

    for init, act in (("he", "relu"), ("xavier", "relu"), ("xavier", "tanh"),
                      ("small_normal", "relu")):
        print(f"\nvariance_across_depth({init!r}, {act!r}, depth=10, width=256):")
        print(format_variance_table(variance_across_depth(init, act, depth=10, width=256)))


def _one_blas_thread():
    """These matrices are small: one BLAS thread is much faster than two on a busy 2-core
    machine (a second one spins against other processes). Uses threadpoolctl when installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT,
                    help="folder for the figures (default %(default)s; "
                         "--out docs/figures regenerates the docs' figures)")
    a = ap.parse_args(argv)
    with warnings.catch_warnings(), _one_blas_thread():
        warnings.simplefilter("always")
        graphs(a.out)
        gradients()
        curvature()
        initialisation()


if __name__ == "__main__":
    main()
