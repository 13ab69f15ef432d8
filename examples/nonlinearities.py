"""The notes' nonlinearities compared: range, centring, gradients, dead units, cost, PReLU's slope.

Lecture 3 weighs sigmoid, tanh, ReLU, leaky ReLU and PReLU by their range, whether their output is
zero-centred, how their gradient behaves at initialisation and at the extremes (saturation), the
risk of dead units, and computational cost. For each of them (and GELU, SiLU) this measures:

* min and max of f on [-20, 20]; mean of f(z) and of f'(z) for z ~ N(0, 1) (the pre-activations of
  a well-initialised layer); f'(0), f'(-10), f'(10) by autodiff;
* the share of dead units after training an MLP 40-100-100-100-10 on MNIST-1D with Adam (lr 1e-2):
  a unit is dead when f' < 10⁻³ · max f' on every one of 1,000 training inputs; test accuracy;
* the cost per element of forward and of forward + backward on 2²⁰ float32 values, benchmark
  style: the activations interleaved in every repetition, the minimum over repetitions, and the
  ratio to ReLU's time in the same run (absolute times on a shared machine drift);
* PReLU's learned slope (one per layer, initialised at 0.25) over training.

    python examples/nonlinearities.py           # about half a minute on 2 cores
    python examples/nonlinearities.py --quick   # seconds
    python examples/nonlinearities.py --out docs/figures
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

NAMES = ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "gelu", "silu"]
LAYERS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU,
          "prelu": nn.PReLU, "gelu": nn.GELU, "silu": nn.SiLU}
PRELU_INIT = 0.25


def fn(name: str):
    """The activation as a function of a Tensor (PReLU at its initial slope)."""
    if name == "prelu":
        w = ng.tensor([PRELU_INIT])
        return lambda x: F.prelu(x, w)
    return getattr(F, name)


def value_and_derivative(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = ng.tensor(x, requires_grad=True)
    y = fn(name)(xt)
    y.sum().backward()
    return y.numpy(), xt.grad.numpy()


def properties(name: str, z: np.ndarray) -> dict:
    grid = np.linspace(-20, 20, 40001, dtype=np.float32)
    y, _ = value_and_derivative(name, grid)
    fz, dz = value_and_derivative(name, z)
    _, d = value_and_derivative(name, np.array([0.0, -10.0, 10.0], dtype=np.float32))
    return {"min": float(y.min()), "max": float(y.max()), "mean": float(fz.mean()),
            "dmean": float(dz.mean()), "d0": float(d[0]), "dneg": float(d[1]),
            "dpos": float(d[2])}


def mlp(name: str, seed: int) -> nn.Sequential:
    ng.manual_seed(seed)
    layers, d = [], 40
    for _ in range(3):
        layers += [nn.Linear(d, 100), LAYERS[name]()]
        d = 100
    return nn.Sequential(*layers, nn.Linear(d, 10))


def dead_share(model: nn.Sequential, name: str, x: np.ndarray) -> float:
    """Share of hidden units whose derivative is < 1e-3 · max f' on every input in ``x``."""
    grid = np.linspace(-20, 20, 4001, dtype=np.float32)
    acts = [m for m in model if isinstance(m, LAYERS[name])]
    pre = []
    handles = [m.register_forward_hook(lambda mod, inp, out: pre.append(inp[0].numpy()))
               for m in acts]
    with ng.no_grad():
        model(ng.tensor(x))
    for h in handles:
        h.remove()
    dead = total = 0
    for m, z in zip(acts, pre):
        zt = ng.tensor(z, requires_grad=True)
        m(zt).sum().backward()
        g = np.abs(zt.grad.numpy())
        gt = ng.tensor(grid, requires_grad=True)
        m(gt).sum().backward()
        thresh = 1e-3 * np.abs(gt.grad.numpy()).max()
        dead += int((g < thresh).all(axis=0).sum())
        total += z.shape[1]
    return dead / total


def train(name: str, data, steps: int, seed: int = 0) -> dict:
    model = mlp(name, seed)
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    loader = ng.data.DataLoader(ng.data.TensorDataset(data.x_train, data.y_train),
                                batch_size=100, shuffle=True, seed=seed)
    slopes, step = [], 0
    prelus = [m for m in model if isinstance(m, nn.PReLU)]
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
            if prelus and step % 10 == 0:
                slopes.append([float(m.weight.numpy()[0]) for m in prelus])
            if step >= steps:
                break
    model.eval()
    with ng.no_grad():
        acc = float((model(ng.tensor(data.x_test)).numpy().argmax(1) == data.y_test).mean())
    return {"accuracy": acc, "dead": dead_share(model, name, data.x_train[:1000]),
            "slopes": np.array(slopes)}


def cost(n: int, reps: int) -> dict:
    """ns per element of forward and of forward + backward, min over interleaved repetitions."""
    x = ng.tensor(np.random.default_rng(0).normal(size=n).astype(np.float32),
                  requires_grad=True)
    g = ng.ones(n)
    best = {k: [np.inf, np.inf] for k in NAMES}
    fns = {k: fn(k) for k in NAMES}
    for _ in range(reps):
        for k in NAMES:
            t0 = time.perf_counter()
            with ng.no_grad():
                fns[k](x)
            t1 = time.perf_counter()
            x.grad = None
            fns[k](x).backward(g)
            t2 = time.perf_counter()
            best[k] = [min(best[k][0], t1 - t0), min(best[k][1], t2 - t1)]
    return {k: (1e9 * f / n, 1e9 * b / n) for k, (f, b) in best.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/examples/nonlinearities",
                    help="folder for the figure (default %(default)s; "
                         "--out docs/figures regenerates the docs' figure)")
    ap.add_argument("--steps", type=int, default=1200, help="training steps per activation")
    ap.add_argument("--reps", type=int, default=15, help="timing repetitions")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n = 1 << 20
    if a.quick:
        a.steps, a.reps, n = 40, 2, 1 << 14
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    z = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    props = {k: properties(k, z) for k in NAMES}
    data = ng.data.datasets.mnist1d()
    runs = {k: train(k, data, a.steps) for k in NAMES}
    costs = cost(n, a.reps)

    print("| f | min | max | E f(z) | E f'(z) | f'(0) | f'(-10) | f'(10) | dead after training "
          "| test acc. | forward ns/elem | fwd+bwd ns/elem | fwd+bwd / ReLU |")
    print("|---" * 13 + "|")
    rb = costs["relu"][1]
    for k in NAMES:
        p, r, c = props[k], runs[k], costs[k]
        print(f"| {k} | {p['min']:.3g} | {p['max']:.3g} | {p['mean']:.3f} | {p['dmean']:.3f} | "
              f"{p['d0']:.3g} | {p['dneg']:.3g} | {p['dpos']:.3g} | {100 * r['dead']:.0f} % | "
              f"{100 * r['accuracy']:.1f} % | {c[0]:.2f} | {c[1]:.2f} | {c[1] / rb:.1f}× |")
    sl = runs["prelu"]["slopes"]
    if len(sl):
        print("PReLU slope per layer after training: "
              + ", ".join(f"layer {i + 1}: {v:.3f}" for i, v in enumerate(sl[-1]))
              + f" (initial {PRELU_INIT})")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    xs = np.linspace(-4, 4, 801, dtype=np.float32)
    for k in NAMES:
        y, d = value_and_derivative(k, xs)
        axes[0].plot(xs, y, label=k)
        axes[1].plot(xs, d, label=k)
    axes[0].set_ylim(-1.5, 4)
    axes[0].set_title("f(x)", fontsize=10)
    axes[1].set_title("f'(x) (autodiff)", fontsize=10)
    axes[0].legend(fontsize=8)
    for ax in axes[:2]:
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
    ax = axes[2]
    pos = np.arange(len(NAMES))
    ax.bar(pos - 0.2, [costs[k][0] for k in NAMES], 0.4, label="forward")
    ax.bar(pos + 0.2, [costs[k][1] for k in NAMES], 0.4, label="forward + backward")
    ax.set_xticks(pos, NAMES, rotation=30, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ns per element (2²⁰ float32, min of reps)")
    ax2 = ax.twinx()
    ax2.plot(pos, [100 * runs[k]["dead"] for k in NAMES], "kD", label="dead units (%)")
    ax2.set_ylabel("dead units after training (%)")
    ax2.set_ylim(0, max(5, 1.2 * max(100 * runs[k]["dead"] for k in NAMES)))
    ax.legend(fontsize=8, loc="upper left")
    ax2.legend(fontsize=8, loc="upper right")
    ax.set_title("cost per element; dead units (Adam lr 1e-2)", fontsize=10)
    ax = axes[3]
    if len(sl):
        steps = 10 * np.arange(1, len(sl) + 1)
        for i in range(sl.shape[1]):
            ax.plot(steps, sl[:, i], label=f"layer {i + 1}")
    ax.axhline(PRELU_INIT, color="grey", ls=":", label="initial 0.25")
    ax.set_xlabel("training step")
    ax.set_ylabel("learned negative slope a")
    ax.set_title("PReLU: slope per layer on MNIST-1D", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle("Nonlinearities compared")
    fig.tight_layout()
    path = out / "nonlinearities.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\nfigure: {path} ({time.perf_counter() - t0:.1f} s)")
    return {"properties": props, "runs": runs, "cost": costs}


if __name__ == "__main__":
    main()
