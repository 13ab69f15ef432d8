"""E2E: the MNIST-1D paper runs in nodegrad and in PyTorch, side by side.

The protocol of the shared targets: Adam 1e-2, batch 100, 6,000 steps, test accuracy every 250
steps, for the paper's logistic regression, MLP, CNN and GRU. Both frameworks start from the
same initial weights (written once by nodegrad's model zoo, PyTorch's default init) and train
on the same data; nodegrad runs its own `train.fit` with a DataLoader, PyTorch the loop its
users write. Each run is a fresh process, so the peak resident memory (ru_maxrss) of the run
is measured too; the two frameworks alternate, so drift hits both alike.

    python benchmarks/e2e.py [--seeds 1] [--steps 6000] [--models logreg mlp cnn gru] [--jit]

Prints a Markdown table: test accuracy after the last step, wall time per run (training and
the evaluations, not the import), peak RSS, and the ratios nodegrad / PyTorch. With ``--jit``
nodegrad also runs ``train.fit(..., jit=True)`` (each step captured once, then replayed) from
the same weights, reported beside eager and PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS = ("logreg", "mlp", "cnn", "gru")
LR, BATCH, EVAL_EVERY = 1e-2, 100, 250


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _nodegrad_run(name: str, seed: int, steps: int, init: Path, jit: bool = False) -> dict:
    import nodegrad as ng
    from nodegrad import models, train
    from nodegrad.nn import functional as F

    d = ng.data.datasets.mnist1d()
    model = models.create(f"mnist1d_{name}", seed=seed)
    model.load_state_dict(ng.load(init))
    opt = ng.optim.Adam(model.parameters(), lr=LR)
    loader = ng.data.DataLoader(d.train, batch_size=BATCH, shuffle=True, seed=seed)
    test = ng.data.DataLoader(d.test, batch_size=1000)
    curve: list[float] = []

    class EvalEvery(train.Callback):
        def on_batch_end(self, tr, logs):
            if tr.step % EVAL_EVERY == 0:
                curve.append(train.evaluate(model, test)["accuracy"])

    t0 = time.perf_counter()
    train.fit(model, F.cross_entropy, opt, loader, epochs=steps // len(loader),
              callbacks=[EvalEvery()], progress=False, nan_guard=False, jit=jit)
    wall = time.perf_counter() - t0
    return {"accuracy": train.evaluate(model, test)["accuracy"], "wall": wall, "curve": curve}


def _torch_model(name: str):
    import torch
    from torch import nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            if name == "logreg":
                self.linear = nn.Linear(40, 10)
            elif name == "mlp":
                self.linear1, self.linear2 = nn.Linear(40, 100), nn.Linear(100, 100)
                self.linear3 = nn.Linear(100, 10)
            elif name == "cnn":
                self.conv1 = nn.Conv1d(1, 25, 5, stride=2, padding=1)
                self.conv2 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
                self.conv3 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
                self.linear = nn.Linear(125, 10)
            else:
                self.rnn = nn.GRU(1, 6, batch_first=True, bidirectional=True)
                self.linear = nn.Linear(480, 10)

        def forward(self, x):
            if name == "logreg":
                return self.linear(x)
            if name == "mlp":
                return self.linear3(torch.relu(self.linear2(torch.relu(self.linear1(x)))))
            if name == "cnn":
                h = torch.relu(self.conv1(x[:, None]))
                h = torch.relu(self.conv3(torch.relu(self.conv2(h))))
                return self.linear(h.flatten(1))
            return self.linear(self.rnn(x[:, :, None])[0].flatten(1))

    return M()


def _torch_run(name: str, seed: int, steps: int, init: Path, data: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    torch.manual_seed(seed)
    arrays = np.load(data)
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
    xt, yt = torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
    model = _torch_model(name)
    model.load_state_dict(load_file(init))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)
    per_epoch, curve = len(x) // BATCH, []

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        model.train()
        return acc

    t0 = time.perf_counter()
    for step in range(steps):
        if step % per_epoch == 0:
            perm = torch.randperm(len(x), generator=g)
        idx = perm[(step % per_epoch) * BATCH:(step % per_epoch + 1) * BATCH]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % EVAL_EVERY == 0:
            curve.append(accuracy())
    wall = time.perf_counter() - t0
    return {"accuracy": accuracy(), "wall": wall, "curve": curve}


def _worker(argv: list[str]) -> None:
    fw, name, seed, steps, init, data = argv
    run = (_nodegrad_run(name, int(seed), int(steps), Path(init), jit=fw == "jit")
           if fw in ("nodegrad", "jit") else
           _torch_run(name, int(seed), int(steps), Path(init), Path(data)))
    run["rss_mb"] = _peak_rss_mb()
    print(json.dumps(run))


def _prepare(tmp: Path, names, seeds: int) -> Path:
    """The shared data file and, per model and seed, the initial weights both frameworks load."""
    import nodegrad as ng
    from nodegrad import models

    d = ng.data.datasets.mnist1d()
    data = tmp / "mnist1d.npz"
    np.savez(data, x_train=d.x_train.astype(np.float32), y_train=d.y_train.astype(np.int64),
             x_test=d.x_test.astype(np.float32), y_test=d.y_test.astype(np.int64))
    for name in names:
        for s in range(seeds):
            ng.save(models.create(f"mnist1d_{name}", seed=s).state_dict(),
                    tmp / f"{name}-{s}.safetensors")
    return data


def _spawn(fw: str, name: str, seed: int, steps: int, tmp: Path, data: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", fw, name, str(seed), str(steps),
           str(tmp / f"{name}-{seed}.safetensors"), str(data)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{fw} {name} seed {seed} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--json", default=None, help="also write every run's numbers here")
    p.add_argument("--jit", action="store_true",
                   help="also run nodegrad with train.fit(jit=True), beside eager and PyTorch")
    args = p.parse_args(argv)
    asked, args.steps = args.steps, max(1, round(args.steps / 40)) * 40  # whole epochs of 40
    if args.steps != asked:  # batches, both sides: say so rather than run another length quietly
        print(f"# --steps {asked} rounded to {args.steps}: whole epochs of 40 batches",
              flush=True)
    try:
        import torch
    except ImportError:
        sys.exit("benchmarks/e2e.py compares against PyTorch: pip install torch==2.13.0")
    print(f"# nodegrad vs PyTorch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{args.steps} steps, {args.seeds} seed(s), cpus {os.cpu_count()}", flush=True)
    fws = ("nodegrad", "jit", "torch") if args.jit else ("nodegrad", "torch")
    lines = ["| model | test acc. nodegrad | PyTorch | wall nodegrad (s) | PyTorch (s) | "
             "ng ÷ PT | peak RSS nodegrad (MB) | PyTorch (MB) | ng ÷ PT |"
             + (" acc. jit | wall jit (s) | jit ÷ eager | jit ÷ PT | RSS jit (MB) |"
                if args.jit else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" * 5 if args.jit else "")]
    runs: dict = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = _prepare(tmp, args.models, args.seeds)
        for name in args.models:
            res: dict = {fw: [] for fw in fws}
            for s in range(args.seeds):
                order = fws if s % 2 == 0 else fws[::-1]
                for fw in order:
                    res[fw].append(_spawn(fw, name, s, args.steps, tmp, data))
            runs[name] = res
            ng_, pt = ({k: np.array([r[k] for r in res[fw]]) for k in ("accuracy", "wall",
                                                                      "rss_mb")}
                       for fw in ("nodegrad", "torch"))
            ratio = np.median(ng_["wall"] / pt["wall"])
            lines.append(
                f"| {name} | {100 * ng_['accuracy'].mean():.1f} ± "
                f"{100 * ng_['accuracy'].std():.1f} % | {100 * pt['accuracy'].mean():.1f} ± "
                f"{100 * pt['accuracy'].std():.1f} % | {ng_['wall'].mean():.1f} | "
                f"{pt['wall'].mean():.1f} | {ratio:.2f} | {ng_['rss_mb'].max():.0f} | "
                f"{pt['rss_mb'].max():.0f} | {ng_['rss_mb'].max() / pt['rss_mb'].max():.2f} |")
            if args.jit:
                j = {k: np.array([r[k] for r in res["jit"]]) for k in ("accuracy", "wall",
                                                                      "rss_mb")}
                lines[-1] += (
                    f" {100 * j['accuracy'].mean():.1f} ± {100 * j['accuracy'].std():.1f} % | "
                    f"{j['wall'].mean():.1f} | {np.median(j['wall'] / ng_['wall']):.2f} | "
                    f"{np.median(j['wall'] / pt['wall']):.2f} | {j['rss_mb'].max():.0f} |")
            print(lines[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2:])
    else:
        main()
