"""The program tests/test_fixes_dist_io.py starts on 2 ranks: ``python _dist_probe_worker.py
SCENARIO OUT``. Rank 0 writes what it found to OUT/SCENARIO.json.

``collectives``: torch.distributed's functions and the communicator against NumPy on every
rank's data (each op, float16/float64/int64/bool, 0-d), DistributedDataParallel averaging in
eval mode and with ``find_unused_parameters``, then arrays of different sizes on the ranks
(a clear error, last: the communicator cannot go on after it).
``syncbn``: SyncBatchNorm on uneven per-rank batches far from zero against PyTorch's
BatchNorm1d on the concatenated batch (outputs, gradients, running statistics, eval).
"""

import json
import os
import sys

import numpy as np

import nodegrad as ng
from nodegrad import distributed as dist
from nodegrad import nn


def _collectives(w) -> dict:
    r, N = w.rank, w.world_size
    res = {}
    ok = []
    for dt in ("float16", "float64", "int64", "bool"):
        for op in ("sum", "avg", "max", "min", "product"):
            if op == "avg" and dt in ("int64", "bool"):
                continue
            for shape in ((), (3,), (w.ring_min * N + 1,)):
                n = int(np.prod(shape))
                full = [(np.arange(n) * (k + 2) % 5).reshape(shape) for k in range(N)]
                if dt == "bool":
                    full = [(f % 2).astype(bool) for f in full]
                full = [np.asarray(f).astype(dt) for f in full]
                t = ng.tensor(full[r].copy())
                dist.all_reduce(t, getattr(dist.ReduceOp, op.upper()))
                f64 = np.stack([f.astype(np.float64) for f in full])
                want = {"sum": f64.sum(0), "avg": f64.mean(0), "max": f64.max(0),
                        "min": f64.min(0), "product": f64.prod(0)}[op]
                if dt == "bool":
                    want = {"sum": f64.max(0), "max": f64.max(0), "min": f64.min(0),
                            "product": f64.min(0)}[op]
                good = (t.dtype == ng.tensor(full[r]).dtype and tuple(t.shape) == shape
                        and np.allclose(t.numpy().astype(np.float64), want, rtol=1e-3))
                ok.append([f"{op} {dt} {shape}", bool(good)])
    res["all_reduce"] = ok
    g = w.allgather(np.array(r + 1.5))
    res["allgather_0d"] = [list(g.shape), g.tolist()]
    s = ng.tensor(np.int64(r + 7))
    dist.broadcast(s, src=1)
    res["broadcast_0d"] = int(s.item())
    h = ng.tensor(np.full(3, r, np.float16))
    dist.broadcast(h, src=0)
    res["broadcast_f16"] = h.numpy().tolist()
    x = ng.tensor(np.arange(2.0) + 10 * r)
    outs = [ng.zeros(2, dtype=ng.float64) for _ in range(N)]
    dist.all_gather(outs, x)
    res["all_gather"] = [o.numpy().tolist() for o in outs]
    cat = ng.zeros(2 * N, dtype=ng.float64)
    dist.all_gather_into_tensor(cat, x)
    res["all_gather_into_tensor"] = cat.numpy().tolist()
    out = ng.zeros(2, dtype=ng.int64)
    dist.reduce_scatter(out, [ng.tensor(np.arange(2) + 100 * k + r) for k in range(N)])
    res["reduce_scatter"] = out.numpy().tolist()
    out2 = ng.zeros(2, dtype=ng.float64)
    work = dist.reduce_scatter_tensor(out2, ng.tensor(np.arange(2.0 * N) * (r + 1)),
                                      async_op=True)
    work.wait()
    res["reduce_scatter_tensor"] = out2.numpy().tolist()
    dist.barrier()

    # eval mode: gradients are averaged all the same (PyTorch decides by grad mode, not mode)
    ng.manual_seed(0)
    m = nn.Linear(3, 2).to(dtype=ng.float64)
    ddp = dist.DistributedDataParallel(m)
    ddp.eval()
    ddp(ng.tensor(np.full((2, 3), r + 1.0))).sum().backward()
    gr = w.allgather(m.weight.grad.numpy().copy())
    res["eval_grads_agree"] = bool(np.array_equal(gr[0], gr[1]))

    # find_unused_parameters: a branch used on rank 0 only, a layer used nowhere
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x, use_b):
            y = self.a(x)
            return y + self.b(x) if use_b else y
    ng.manual_seed(0)
    m = Branchy().to(dtype=ng.float64)
    ref = Branchy().to(dtype=ng.float64)
    ref.load_state_dict(m.state_dict())
    ddp = dist.DistributedDataParallel(m, find_unused_parameters=True, bucket_cap_mb=1e-5)
    xs = [np.random.default_rng(k).standard_normal((4, 3)) for k in range(N)]
    ddp(ng.tensor(xs[r]), r == 0).sum().backward()
    for k in range(N):
        (ref(ng.tensor(xs[k]), k == 0).sum() / N).backward()
    res["unused_grads"] = {
        n: None if p.grad is None else float(np.abs(p.grad.numpy() - q.grad.numpy()).max())
        for (n, p), q in zip(m.named_parameters(), ref.parameters())}
    ddp(ng.tensor(xs[r]), True)  # a forward without backward, then a step: no error
    ddp(ng.tensor(xs[r]), True).sum().backward()
    res["unused_next_step"] = True

    # arrays of different sizes: a DistributedError on every rank (the last collective here)
    w.timeout = 3.0
    try:
        w.allreduce(np.ones(3 + 2 * r))
        res["mismatch"] = None
    except dist.DistributedError as e:
        res["mismatch"] = str(e)
    return res


def _syncbn(w) -> dict:
    """float32 SyncBatchNorm's largest error against float64 PyTorch on the same float32
    inputs, next to float32 PyTorch's (the rounding float32 allows): {name: [ours, torch's]}."""
    import torch

    r = w.rank
    C, sizes, shift = 3, [2, 7], 1000.0
    rng = np.random.default_rng(1)
    sbn = dist.SyncBatchNorm(C, momentum=None).to(dtype=ng.float32)
    t32 = torch.nn.BatchNorm1d(C, momentum=None)
    t64 = torch.nn.BatchNorm1d(C, momentum=None).double()
    wv, bv = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    with ng.no_grad():
        sbn.weight.data[...] = wv
        sbn.bias.data[...] = bv
    with torch.no_grad():
        for t in (t32, t64):
            t.weight[:] = torch.tensor(wv)
            t.bias[:] = torch.tensor(bv)
    err: dict = {}

    def note(k, ours, theirs, truth):
        truth = truth.detach().double().numpy()
        e = [float(np.max(np.abs(np.asarray(ours, np.float64) - truth))),
             float(np.max(np.abs(theirs.detach().double().numpy() - truth)))]
        err[k] = [max(a, b) for a, b in zip(err.get(k, [0.0, 0.0]), e)]
    lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
    for _ in range(3):
        xs = np.concatenate([(rng.standard_normal((n, C, 4)) + shift).astype(np.float32)
                             for n in sizes])
        gs = rng.standard_normal(xs.shape).astype(np.float32)
        x = ng.tensor(xs[lo:hi], requires_grad=True)
        y = sbn(x)
        (y * ng.tensor(gs[lo:hi])).sum().backward()
        ts = {}
        for name, t, dt in (("32", t32, torch.float32), ("64", t64, torch.float64)):
            xt = torch.tensor(xs, dtype=dt, requires_grad=True)
            yt = t(xt)
            (yt * torch.tensor(gs, dtype=dt)).sum().backward()
            ts[name] = (xt, yt, t)
        (x32, y32, b32), (x64, y64, b64) = ts["32"], ts["64"]
        note("output", y.numpy(), y32[lo:hi], y64[lo:hi])
        note("grad_input", x.grad.numpy(), x32.grad[lo:hi], x64.grad[lo:hi])
        note("grad_weight", w.allreduce(sbn.weight.grad.numpy().copy()), b32.weight.grad,
             b64.weight.grad)
        note("grad_bias", w.allreduce(sbn.bias.grad.numpy().copy()), b32.bias.grad,
             b64.bias.grad)
        note("running_mean", sbn.running_mean.numpy(), b32.running_mean, b64.running_mean)
        note("running_var", sbn.running_var.numpy(), b32.running_var, b64.running_var)
        sbn.weight.grad = sbn.bias.grad = None
        for t in (t32, t64):
            t.weight.grad = t.bias.grad = None
    for m in (sbn, t32, t64):
        m.eval()
    xe = (rng.standard_normal((4, C, 4)) + shift).astype(np.float32)
    note("eval", sbn(ng.tensor(xe)).numpy(), t32(torch.tensor(xe)),
         t64(torch.tensor(xe, dtype=torch.float64)))
    return err


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1:3]
    world = dist.init(timeout=30)
    found = {"collectives": _collectives, "syncbn": _syncbn}[scenario](world)
    if world.rank == 0:
        with open(os.path.join(out_dir, f"{scenario}.json"), "w") as f:
            json.dump(found, f)
    elif scenario == "collectives":
        with open(os.path.join(out_dir, "collectives-1.json"), "w") as f:
            json.dump({"mismatch": found["mismatch"]}, f)
