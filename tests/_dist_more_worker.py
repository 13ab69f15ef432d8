"""The program tests/test_distributed_more.py starts under mpirun: ``python
_dist_more_worker.py SCENARIO OUT``. Every rank writes OUT/SCENARIO.RANK.json: a list of
``[check, ok, detail]`` rows, each a result compared on that rank with the value expected from
every rank's known inputs.

``collectives`` (3 ranks): init_process_group, reduce/gather/scatter, the bitwise ReduceOps,
all_to_all(_single) with uneven sizes, point-to-point messages and batch_isend_irecv, the object
collectives, a group of ranks 0 and 2, async Works, monitored_barrier, then (last) a rank that
leaves a monitored_barrier out. ``zero`` (2 ranks): ZeroRedundancyOptimizer against one
optimiser over all parameters under DistributedDataParallel, its consolidated state and a
reload, and DDP's no_sync against one full batch.
"""

import datetime
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import nodegrad as ng
from nodegrad import distributed as dist
from nodegrad import nn, optim

ROWS: list = []


def check(name: str, got, want, exact: bool = True) -> None:
    g, w = np.asarray(got), np.asarray(want)
    ok = g.shape == w.shape and (np.array_equal(g, w) if exact else
                                 np.allclose(g.astype(float), w.astype(float), rtol=1e-6,
                                             atol=1e-7))
    ROWS.append([name, bool(ok), "" if ok else f"got {g.tolist()}, want {w.tolist()}"])


def expect_error(name: str, kind, f, match: str) -> None:
    try:
        f()
    except kind as e:
        ok = match in str(e)
        ROWS.append([name, ok, "" if ok else f"message: {e}"])
        return
    ROWS.append([name, False, "no error"])


def collectives() -> None:
    dist.init_process_group("gloo", init_method="env://", world_size=3,
                            timeout=datetime.timedelta(seconds=60))
    r, N = dist.get_rank(), dist.get_world_size()
    check("backend", dist.get_backend() == "gloo", True)
    data = [np.array([3, 5, 6, 9], np.int64) + 7 * k for k in range(N)]
    every = np.stack(data)

    # reduce: only dst has the result, the others keep their values
    for op, want in ((dist.ReduceOp.SUM, every.sum(0)), (dist.ReduceOp.MAX, every.max(0)),
                     (dist.ReduceOp.PRODUCT, every.prod(0))):
        t = ng.tensor(data[r].copy())
        dist.reduce(t, dst=1, op=op)
        check(f"reduce {op} to 1", t.numpy(), want if r == 1 else data[r])
    t = ng.tensor(data[r].astype(np.float64))
    dist.reduce(t, dst=2, op=dist.ReduceOp.AVG, async_op=True).wait()
    check("reduce avg async", t.numpy(), every.mean(0) if r == 2 else data[r], exact=False)
    for op, f in (("BAND", np.bitwise_and), ("BOR", np.bitwise_or), ("BXOR", np.bitwise_xor)):
        t = ng.tensor(data[r].copy())
        dist.all_reduce(t, getattr(dist.ReduceOp, op))
        check(f"all_reduce {op} int64", t.numpy(), f.reduce(every, axis=0))
        b = ng.tensor((data[r] % 2).astype(bool))
        dist.all_reduce(b, getattr(dist.ReduceOp, op))
        check(f"all_reduce {op} bool", b.numpy(), f.reduce((every % 2).astype(bool), axis=0))
    expect_error("BAND on floats", TypeError,
                 lambda: dist.all_reduce(ng.ones(2), dist.ReduceOp.BAND), "integer or bool")

    # gather / scatter with dst/src other than 0
    t = ng.tensor(np.arange(3.0) + 10 * r)
    gl = [ng.zeros(3, dtype=ng.float64) for _ in range(N)] if r == 2 else None
    dist.gather(t, gl, dst=2)
    if r == 2:
        check("gather to 2", np.stack([x.numpy() for x in gl]),
              np.arange(3.0) + 10 * np.arange(N)[:, None])
    out = ng.zeros((2, 2), dtype=ng.int64)
    sl = [ng.tensor(np.full((2, 2), 100 + k, np.int64)) for k in range(N)] if r == 1 else None
    w = dist.scatter(out, sl, src=1, async_op=True)
    w.wait()
    check("scatter from 1", out.numpy(), np.full((2, 2), 100 + r))
    expect_error("gather list on a non-dst rank", ValueError,
                 lambda: dist.gather(t, [t, t, t], dst=(r + 1) % N), "must not be given")

    # all_to_all: rank i sends i + j + 1 values (i*10 + j) to rank j
    ins = [ng.tensor(np.full(r + j + 1, 10 * r + j, np.int32)) for j in range(N)]
    outs = [ng.zeros(j + r + 1, dtype=ng.int32) for j in range(N)]
    dist.all_to_all(outs, ins)
    check("all_to_all uneven", np.concatenate([o.numpy() for o in outs]),
          np.concatenate([np.full(j + r + 1, 10 * j + r) for j in range(N)]))
    # all_to_all_single with split sizes: rank i sends (j + 1) rows to rank j
    rows_in = [j + 1 for j in range(N)]
    x = np.concatenate([np.full((j + 1, 2), 100 * r + j, np.float32) for j in range(N)])
    rows_out = [r + 1] * N
    y = ng.zeros((sum(rows_out), 2), dtype=ng.float32)
    dist.all_to_all_single(y, ng.tensor(x), rows_out, rows_in)
    check("all_to_all_single split sizes", y.numpy(),
          np.concatenate([np.full((r + 1, 2), 100 * i + r, np.float32) for i in range(N)]))
    y = ng.zeros((N, 3), dtype=ng.float64)
    dist.all_to_all_single(y, ng.tensor(np.arange(3.0 * N).reshape(N, 3) + 100 * r))
    check("all_to_all_single equal", y.numpy(),
          np.stack([np.arange(3.0 * N).reshape(N, 3)[r] + 100 * i for i in range(N)]))
    bad = ng.zeros(r + 2, dtype=ng.float64)  # rank r expects r+2 rows from everyone
    expect_error("all_to_all_single sizes disagree", dist.DistributedError,
                 lambda: dist.all_to_all_single(bad, ng.ones(N, dtype=ng.float64),
                                                [r + 2] + [0] * (N - 1), [1] * N),
                 "which expects")

    # point-to-point: a ring with send/recv (even ranks send first), isend/irecv, any source
    nxt, prv = (r + 1) % N, (r - 1) % N
    got = ng.zeros(4, dtype=ng.float32)
    mine = ng.tensor(np.arange(4, dtype=np.float32) + r)
    if r % 2 == 0:
        dist.send(mine, nxt)
        src = dist.recv(got, prv)
    else:
        src = dist.recv(got, prv)
        dist.send(mine, nxt)
    check("send/recv ring", got.numpy(), np.arange(4, dtype=np.float32) + prv)
    check("recv returns the sender", src, prv)
    got2 = ng.zeros(2, dtype=ng.int64)
    ws = [dist.isend(ng.tensor(np.array([r, 7], np.int64)), nxt, tag=5),
          dist.irecv(got2, prv, tag=5)]
    for w in ws:
        w.wait()
    check("isend/irecv", got2.numpy(), [prv, 7])
    if r == 0:
        froms = sorted(dist.recv(ng.zeros(1, dtype=ng.int64), None, tag=9) for _ in range(N - 1))
        check("recv from any rank", froms, list(range(1, N)))
    else:
        dist.send(ng.tensor(np.array([r], np.int64)), 0, tag=9)
    ring = ng.zeros(3, dtype=ng.float64)
    ops = [dist.P2POp(dist.isend, ng.tensor(np.full(3, float(r))), nxt),
           dist.P2POp(dist.irecv, ring, prv)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    check("batch_isend_irecv", ring.numpy(), np.full(3, float(prv)))
    if r == 0:
        dist.send(ng.ones(3, dtype=ng.float64), 1, tag=11)
    if r == 1:
        expect_error("recv of another size", dist.DistributedError,
                     lambda: dist.recv(ng.zeros(5, dtype=ng.float64), 0, tag=11), "24 bytes")
    expect_error("send to itself", ValueError, lambda: dist.send(mine, r), "another rank")

    # objects
    objs = [{"rank": r}, "x" * r, None]
    dist.broadcast_object_list(objs, src=1)
    check("broadcast_object_list", json.dumps(objs), json.dumps([{"rank": 1}, "x", None]))
    ag = [None] * N
    dist.all_gather_object(ag, (r, [r] * r))
    check("all_gather_object", json.dumps(ag), json.dumps([(k, [k] * k) for k in range(N)]))
    go = [None] * N if r == 2 else None
    dist.gather_object({"r": r}, go, dst=2)
    if r == 2:
        check("gather_object", json.dumps(go), json.dumps([{"r": k} for k in range(N)]))
    so = [None]
    dist.scatter_object_list(so, [{"to": k, "pad": "y" * 10 * k} for k in range(N)]
                             if r == 1 else None, src=1)
    check("scatter_object_list", json.dumps(so), json.dumps([{"to": r, "pad": "y" * 10 * r}]))

    # a group of world ranks 0 and 2 (group ranks 0 and 1); rank 1 is outside it
    g = dist.new_group([2, 0])
    inside = r in (0, 2)
    check("group membership", g is dist.GroupMember.NON_GROUP_MEMBER, not inside)
    check("group rank", [dist.get_rank(g), dist.get_world_size(g)],
          [[0, 2], [-1, -1], [1, 2]][r])
    t = ng.tensor(np.array([r + 1.0]))
    dist.all_reduce(t, group=g)
    check("all_reduce in the group", t.numpy(), [4.0] if inside else [2.0])
    t = ng.tensor(np.array([r], np.int64))
    dist.broadcast(t, src=2, group=g)  # src is a world rank
    check("broadcast from world rank 2 in the group", t.numpy(), [2] if inside else [1])
    t = ng.tensor(np.array([r], np.int64))
    dist.broadcast(t, group_src=0, group=g)
    check("broadcast from group rank 0", t.numpy(), [0] if inside else [1])
    if inside:
        check("get_global_rank", dist.get_global_rank(g, 1), 2)
        check("get_group_rank", dist.get_group_rank(g, 2), 1)
        check("get_process_group_ranks", dist.get_process_group_ranks(g), [0, 2])
        x = ng.zeros(1, dtype=ng.int64)
        if r == 0:
            dist.send(ng.tensor(np.array([42], np.int64)), group_dst=1, group=g)
        else:
            check("recv in the group returns the world rank",
                  dist.recv(x, group_src=0, group=g), 0)
            check("send/recv in the group", x.numpy(), [42])
        ag = [None, None]
        dist.all_gather_object(ag, r, group=g)
        check("all_gather_object in the group", ag, [0, 2])
        expect_error("a rank outside the group", ValueError,
                     lambda: dist.broadcast(t, src=1, group=g), "not a rank of the group")
        # DDP and ZeRO over the group: gradients averaged over world ranks 0 and 2 only
        ng.manual_seed(r)  # different on the ranks: DDP takes group rank 0's
        lin = nn.Linear(3, 2).to(dtype=ng.float64)
        ddp = dist.DistributedDataParallel(lin, process_group=g)
        z = dist.ZeroRedundancyOptimizer(lin.parameters(), optim.SGD, process_group=g, lr=1.0)
        w0 = lin.weight.numpy().copy()
        ddp(ng.tensor(np.full((1, 3), r + 1.0))).sum().backward()
        check("DDP over the group averages its ranks", lin.weight.grad.numpy(),
              np.full((2, 3), 2.0))  # mean of 1 and 3
        z.step()
        check("ZeRO over the group", lin.weight.numpy(), w0 - 2.0)
        z.consolidate_state_dict(to=1)
        check("ZeRO over the group consolidates on group rank 1",
              z._consolidated is not None, r == 2)
    dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
    dist.barrier()
    dist.destroy_process_group(g)

    # last: rank 2 leaves a monitored_barrier out
    if r == 2:
        return
    expect_error("monitored_barrier names the missing rank", dist.DistributedError,
                 lambda: dist.monitored_barrier(timeout=1.5, wait_all_ranks=True), "[2]")


def _model() -> nn.Module:
    ng.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3))


def zero() -> None:
    dist.init_process_group("mpi")
    r, N = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((6, 4 * N, 6)).astype(np.float32)
    ys = rng.integers(0, 3, (6, 4 * N))
    mine = slice(4 * r, 4 * (r + 1))

    def run(make_opt, steps=range(4), model=None, opt=None):
        model = model or _model()
        ddp = dist.DistributedDataParallel(model)
        opt = opt or make_opt(model)
        sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for i in steps:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ddp(ng.tensor(xs[i, mine])),
                                               ng.tensor(ys[i, mine]))
            loss.backward()
            opt.step()
            sched.step()
        return model, opt

    def groups(m):
        ps = list(m.parameters())
        return [{"params": ps[:2], "lr": 0.02}, {"params": ps[2:]}]

    for name, cls, kw in (("Adam", optim.Adam, {"lr": 0.01, "weight_decay": 0.01}),
                          ("SGD", optim.SGD, {"lr": 0.1, "momentum": 0.9})):
        plain_m, plain = run(lambda m, cls=cls, kw=kw: cls(groups(m), **kw))
        zero_m, z = run(lambda m, cls=cls, kw=kw: dist.ZeroRedundancyOptimizer(
            groups(m), cls, **kw))
        check(f"ZeRO({name}) equals the plain optimiser",
              [np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(zero_m.parameters(), plain_m.parameters())], [True] * 6)
        n_local = sum(len(g["params"]) for g in z.optim.param_groups)
        every = [None] * N
        dist.all_gather_object(every, n_local)
        check(f"ZeRO({name}) shards the state", [sum(every), n_local < 6], [6, True])
        expect_error(f"ZeRO({name}) state_dict before consolidating", RuntimeError,
                     lambda z=z: z.state_dict(), "consolidate_state_dict")
        z.consolidate_state_dict(to=1)
        if r == 1:
            sd, ref = z.state_dict(), plain.state_dict()
            same = (sorted(sd["state"]) == sorted(ref["state"]) and all(
                sorted(sd["state"][i]) == sorted(ref["state"][i]) and all(
                    np.array_equal(np.asarray(sd["state"][i][k]), np.asarray(ref["state"][i][k]))
                    for k in ref["state"][i]) for i in ref["state"])
                and [g["params"] for g in sd["param_groups"]]
                == [g["params"] for g in ref["param_groups"]]
                and [g["lr"] for g in sd["param_groups"]] == [g["lr"] for g in ref["param_groups"]])
            check(f"ZeRO({name}) consolidated state equals the plain one", same, True)
        # reload: a fresh ZeRO from the plain optimiser's state continues as the plain one does
        full = [plain.state_dict()]
        dist.broadcast_object_list(full, src=0)
        m2 = _model()
        m2.load_state_dict(plain_m.state_dict())
        z2 = dist.ZeroRedundancyOptimizer(groups(m2), cls, **kw)
        z2.load_state_dict(full[0])
        run(None, range(4, 6), m2, z2)
        run(None, range(4, 6), plain_m, plain)
        check(f"ZeRO({name}) reloaded continues as the plain optimiser",
              [np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(m2.parameters(), plain_m.parameters())], [True] * 6)

    # no_sync: two half batches accumulated locally, then averaged, equal one full batch
    m = _model()
    ddp = dist.DistributedDataParallel(m, static_graph=True, bucket_cap_mb=None)
    x, y = ng.tensor(xs[0, mine]), ng.tensor(ys[0, mine])
    with ddp.no_sync():
        (nn.functional.cross_entropy(ddp(x[:2]), y[:2]) / 2).backward()
    (nn.functional.cross_entropy(ddp(x[2:]), y[2:]) / 2).backward()
    ref = _model()
    nn.functional.cross_entropy(ref(ng.tensor(xs[0])), ng.tensor(ys[0])).backward()
    check("no_sync accumulation equals the full batch",
          np.concatenate([p.grad.numpy().ravel() for p in m.parameters()]),
          np.concatenate([p.grad.numpy().ravel() for p in ref.parameters()]), exact=False)


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    t0 = time.monotonic()
    try:
        {"collectives": collectives, "zero": zero}[scenario]()
    except Exception:
        ROWS.append(["no exception", False, traceback.format_exc()])
    ROWS.append(["seconds", True, f"{time.monotonic() - t0:.1f}"])
    rank = dist.get_world().rank
    (out / f"{scenario}.{rank}.json").write_text(json.dumps(ROWS))


if __name__ == "__main__":
    main()
