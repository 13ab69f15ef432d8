"""G1-G4, GL: training steps on a CUDA GPU: nodegrad eager and jit (CuPy) against PyTorch eager.

The W1-W4 steps from the same NumPy weights, and GL, a large MLP (1024-4096-4096-10, batch 4096,
Adam) where the arithmetic rather than the launches sets the time. Every framework runs in this
one process, one after the other (GPU work does not contend for the CPU's BLAS threads as on
the CPU; PyTorch's and CuPy's memory pools are separate). A time is the median over repetitions
of a block of steps ended by a device synchronisation; ``1st`` is the first call (the jit's
trace and its kernels' compilation); ``MiB`` is the peak of the framework's memory pool.
TF32 stays off in both, so both compute in float32.

    python -m benchmarks.gpu [--reps 15] [--only G1,GL] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import numpy as np

from . import conv, gru_step, mlp, mlp_large
from .jit import training_step

LARGE = (1024, 4096, 4096, 10)


def _ng_gru(d: dict):
    import nodegrad as ng
    from nodegrad import nn

    class BiGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(1, gru_step.HIDDEN, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * gru_step.HIDDEN * gru_step.STEPS, gru_step.CLASSES)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out.reshape(x.shape[0], -1))

    m = BiGRU()
    m.gru.load_state_dict({k: ng.tensor(d[k]) for k in gru_step._GRU_KEYS})
    m.fc.load_state_dict({"weight": ng.tensor(d["fc.weight"]), "bias": ng.tensor(d["fc.bias"])})
    return m


def _torch_gru(d: dict):
    import torch

    class BiGRU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(1, gru_step.HIDDEN, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(2 * gru_step.HIDDEN * gru_step.STEPS, gru_step.CLASSES)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out.reshape(x.shape[0], -1))

    m = BiGRU()
    m.gru.load_state_dict({k: torch.from_numpy(d[k]) for k in gru_step._GRU_KEYS})
    m.fc.load_state_dict({"weight": torch.from_numpy(d["fc.weight"]),
                          "bias": torch.from_numpy(d["fc.bias"])})
    return m


def _ng_conv(d: dict, spec: dict):
    import nodegrad as ng
    from nodegrad import nn

    return conv._build(ng, nn, spec, d, ng.tensor)


def _torch_conv(d: dict, spec: dict):
    import torch

    return conv._build(torch, torch.nn, spec, d, torch.from_numpy)


# id: (label, data, nodegrad model, torch model, optimiser, lr)
WORKLOADS = {
    "G1": ("W1 on the GPU: MLP 40-100-100-10, SGD, batch 100", mlp.make_data,
           mlp.nodegrad_model, mlp.torch_model, "SGD", mlp.LR),
    "G2": ("W2 on the GPU: MLP 784-1024-1024-10, Adam, batch 256",
           partial(mlp.make_data, mlp_large.SIZES, mlp_large.BATCH), mlp.nodegrad_model,
           mlp.torch_model, "Adam", mlp_large.LR),
    "G3": ("W3 on the GPU: MNIST-1D CNN, Adam, batch 100", partial(conv.make_data, conv.CNN1D),
           partial(_ng_conv, spec=conv.CNN1D), partial(_torch_conv, spec=conv.CNN1D), "Adam",
           conv.CNN1D["lr"]),
    "G4": ("W4 on the GPU: BiGRU 1->6 T=40, Adam, batch 100", gru_step.make_data, _ng_gru,
           _torch_gru, "Adam", gru_step.LR),
    "GL": ("MLP 1024-4096-4096-10, Adam, batch 4096", partial(mlp.make_data, LARGE, 4096),
           mlp.nodegrad_model, mlp.torch_model, "Adam", 1e-3),
}


def nodegrad_step(d: dict, make_model, optimizer: str, lr: float, jit: bool, device: str):
    """The step as a nodegrad user writes it, eager or under ``ng.jit``; a sync; the pool's
    peak."""
    import nodegrad as ng
    from nodegrad import _backend as B

    model = make_model(d).to(device)
    opt = getattr(ng.optim, optimizer)(model.parameters(), lr=lr)
    x, y = ng.tensor(d["x"], device=device), ng.tensor(d["y"], device=device)
    step = training_step(model, opt, x, y, jit=jit)
    if device == "cpu":
        return step, _nothing, _nothing
    cupy = B.get_backend(device).xp
    pool = cupy.get_default_memory_pool()
    return step, cupy.cuda.runtime.deviceSynchronize, pool.total_bytes


def _nothing() -> int:
    return 0


def torch_step(d: dict, make_model, optimizer: str, lr: float, device: str):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = make_model(d).to(device)
    opt = getattr(torch.optim, optimizer)(model.parameters(), lr=lr)
    x, y = torch.from_numpy(d["x"]).to(device), torch.from_numpy(d["y"]).to(device)
    step = mlp.torch_training_step(model, opt, x, y)

    if device == "cpu":
        return step, _nothing, _nothing
    torch.cuda.reset_peak_memory_stats()
    return step, torch.cuda.synchronize, torch.cuda.max_memory_allocated


def measure(step, sync, peak, reps: int, block_s: float = 0.05) -> dict:
    """The first call (time and loss), then the median over ``reps`` blocks of the time per step."""
    t0 = time.perf_counter()
    loss0 = float(step().item())  # the first step's loss: the same weights in every framework
    sync()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    n = max(1, int(block_s / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        times.append((time.perf_counter() - t0) / n)
    return {"ms": 1e3 * statistics.median(times), "first_s": first,
            "loss": loss0, "peak_mib": peak() / 2 ** 20}


def run(ids, reps: int, device: str = "cuda") -> list[dict]:
    rows = []
    for wid in ids:
        label, data, ng_model, torch_model, optimizer, lr = WORKLOADS[wid]
        row = {"id": wid, "label": label}
        for name, build in (("eager", partial(nodegrad_step, jit=False)),
                            ("jit", partial(nodegrad_step, jit=True)), ("torch", None)):
            if build is None:
                try:
                    res = measure(*torch_step(data(), torch_model, optimizer, lr, device), reps)
                except ImportError:
                    continue
            else:
                res = measure(*build(data(), ng_model, optimizer, lr, device=device), reps)
            row[name] = res
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    e, j, t = row["eager"], row["jit"], row.get("torch")
    tt = f"{t['ms']:.3f}" if t else "—"
    re_ = f"{e['ms'] / t['ms']:.2f}" if t else "—"
    rj = f"{j['ms'] / t['ms']:.2f}" if t else "—"
    return (f"| {row['id']} | {row['label']} | {e['ms']:.3f} | {j['ms']:.3f} | {tt} | {re_} | "
            f"{rj} | {j['ms'] / e['ms']:.2f} | {j['first_s']:.2f} | {e['peak_mib']:.0f} / "
            f"{t['peak_mib'] if t else 0:.0f} | {e['loss']:.4f} / {j['loss']:.4f} / "
            f"{t['loss'] if t else float('nan'):.4f} |")


HEADER = ("| id | workload | eager ms | jit ms | PyTorch ms | eager ÷ PT | jit ÷ PT | jit ÷ eager"
          " | jit 1st s | peak MiB (ng / PT) | first loss (eager / jit / PT) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated ids")
    p.add_argument("--json", default=None, help="write the rows and the environment here")
    p.add_argument("--device", default="cuda", help="cpu runs the same script on the CPU")
    args = p.parse_args(argv)
    import nodegrad as ng

    env = {"device": "cpu", "numpy": np.__version__, "nodegrad": ng.__version__}
    if args.device != "cpu":
        if not ng.cuda_available():
            print("no CUDA device (or CuPy is not installed): nothing to measure")
            return 1
        from nodegrad import _backend as B

        cupy = B.get_backend(args.device).xp
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        env.update(device=props["name"].decode(), cupy=cupy.__version__)
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    print(" ".join(f"{k} {v}" for k, v in env.items()))
    print(HEADER)
    rows = run([i.strip() for i in args.only.split(",") if i.strip()], args.reps, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
