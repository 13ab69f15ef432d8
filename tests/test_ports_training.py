"""PyTorch training-loop utilities, ported by changing only the imports.

Each loop is written once against a library ``lib`` (``torch`` or ``nodegrad``), with
``nn = lib.nn`` and ``optim = lib.optim``. Both runs start from PyTorch's seeded initial weights
(through NumPy) and see the same data, so losses, learning rates and weights agree in float64.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arrays, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 6))
Y = np.tanh(X @ RNG.standard_normal((6, 2))) + 0.3 * RNG.standard_normal((32, 2))


def build(lib, bn: bool = False):
    nn = lib.nn
    layers = [nn.Linear(6, 8), nn.BatchNorm1d(8)] if bn else [nn.Linear(6, 8)]
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(8, 2))


def model_for(lib, bn: bool = False):
    """``build(lib)`` in float64 holding PyTorch's seeded initial weights."""
    torch.manual_seed(0)
    init = {k: v.numpy().copy() for k, v in build(torch, bn).double().state_dict().items()}
    model = build(lib, bn).to(lib.float64)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def both(fn, *args):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    ref, got = fn(torch, *args), fn(ng, *args)
    assert_same(got, ref)
    return got


# 1. gradient accumulation, clipping, AdamW(amsgrad), warmup + warm restarts, scheduler resume

def accumulate(lib, resume_at: int | None = 12):
    nn, optim = lib.nn, lib.optim
    sch = optim.lr_scheduler
    model = model_for(lib)

    def make():
        opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, amsgrad=True,
                          maximize=False)
        warm = sch.LinearLR(opt, start_factor=0.1, total_iters=5)
        cos = sch.CosineAnnealingWarmRestarts(opt, T_0=6, T_mult=2, eta_min=1e-4)
        seq = sch.SequentialLR(opt, [warm, cos], milestones=[5])
        chained = sch.ChainedScheduler([sch.ExponentialLR(opt, gamma=0.99)])
        return opt, seq, chained

    opt, seq, chained = make()
    x, y = lib.tensor(X), lib.tensor(Y)
    losses, lrs, norms = [], [], []
    for step in range(30):
        opt.zero_grad(set_to_none=False)
        assert all(p.grad is not None for p in model.parameters()) or step == 0
        total = 0.0
        for k in range(4):
            out = model(x[8 * k:8 * k + 8])
            loss = nn.functional.mse_loss(out, y[8 * k:8 * k + 8]) / 4
            loss.backward()
            total += loss.item()
        norms.append(float(nn.utils.clip_grad_norm_(
            model.parameters(), 0.5, error_if_nonfinite=True, foreach=None)))
        opt.step()
        seq.step()
        chained.step()
        losses.append(total)
        lrs.append(seq.get_last_lr() + chained.get_last_lr())
        if step == resume_at:  # a checkpoint: everything rebuilt, then loaded
            saved = opt.state_dict(), seq.state_dict(), chained.state_dict()
            opt, seq, chained = make()
            opt.load_state_dict(saved[0])
            seq.load_state_dict(saved[1])
            chained.load_state_dict(saved[2])
    return {"loss": losses, "lr": lrs, "norm": norms, "w": arrays(model.state_dict())}


def test_accumulation_adamw_amsgrad_schedulers():
    got = both(accumulate)
    assert_same(accumulate(ng, resume_at=None), got, 0.0)  # the resume changes nothing


def test_clip_grad_norm_nonfinite_raises():
    p = ng.nn.Parameter(ng.tensor([1.0, 2.0], dtype=ng.float64))
    p.grad = ng.tensor([float("inf"), 1.0], dtype=ng.float64)
    with pytest.raises(RuntimeError, match="non-finite"):
        ng.nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True, foreach=None)


# 2. EMA AveragedModel, SWALR, update_bn

def swa(lib):
    nn, optim = lib.nn, lib.optim
    swa_utils = optim.swa_utils
    model = model_for(lib, bn=True)
    ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.999))
    ema_bufs = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9),
                                       use_buffers=True)
    plain = swa_utils.AveragedModel(model)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    swa_sched = swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=5, anneal_strategy="cos")
    x, y = lib.tensor(X), lib.tensor(Y)
    losses, lrs = [], []
    for step in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        ema_bufs.update_parameters(model)
        if step >= 10:
            plain.update_parameters(model)
            swa_sched.step()
        losses.append(loss.item())
        lrs.append(opt.param_groups[0]["lr"])
    loader = [x[:16], x[16:]]
    swa_utils.update_bn(loader, plain)
    plain.eval()
    return {"loss": losses, "lr": lrs, "ema": arrays(ema.module.state_dict()),
            "swa": arrays(plain.module.state_dict()), "out": plain(x).detach().numpy(),
            "ema_bufs": arrays(ema_bufs.module.state_dict()),
            "n": [float(ema.n_averaged.item()), float(plain.n_averaged.item())]}


def test_ema_swa_update_bn():
    both(swa)


def swa_epochs(lib):
    """Epochs over a DataLoader of (x, y) batches, SWALR's linear anneal, update_bn over it."""
    swa_utils = lib.optim.swa_utils
    model = model_for(lib, bn=True)
    averaged = swa_utils.AveragedModel(model)
    opt = lib.optim.SGD(model.parameters(), lr=0.1)
    sched = swa_utils.SWALR(opt, swa_lr=0.02, anneal_epochs=3, anneal_strategy="linear")
    ds = lib.utils.data.TensorDataset(lib.tensor(X), lib.tensor(Y))
    loader = lib.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    lrs = []
    for _ in range(6):
        for xb, yb in loader:
            opt.zero_grad()
            lib.nn.functional.mse_loss(model(xb), yb).backward()
            opt.step()
        averaged.update_parameters(model)
        sched.step()
        lrs.append(sched.get_last_lr())
    swa_utils.update_bn(loader, averaged)
    return {"lr": lrs, "w": arrays(averaged.state_dict())}


def test_swalr_epochs_update_bn_over_loader():
    both(swa_epochs)


# 3. param groups, unfreezing mid-run, manual lr, optimizer state dict round trip

def groups(lib, resume_at: int | None = None):
    nn, optim = lib.nn, lib.optim
    model = model_for(lib)
    first, last = model[0], model[2]
    for p in last.parameters():
        p.requires_grad_(False)
    opt = optim.Adam([{"params": [first.weight], "weight_decay": 0.1},
                      {"params": [first.bias], "lr": 3e-3}], lr=1e-2, betas=(0.8, 0.95))
    x, y = lib.tensor(X), lib.tensor(Y)
    losses = []
    for step in range(30):
        if step == 8:
            for p in last.parameters():
                p.requires_grad_(True)
            opt.add_param_group({"params": list(last.parameters()), "lr": 5e-3})
        if step == 15:
            opt.param_groups[0]["lr"] = 2e-3
        if step == resume_at:
            opt = fresh_adam(lib, model, opt.state_dict())
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    sd = opt.state_dict()
    return {"loss": losses, "w": arrays(model.state_dict()),
            "lr": [g["lr"] for g in opt.param_groups],
            "ids": [g["params"] for g in sd["param_groups"]], "state_ids": list(sd["state"]),
            "wd": [g["weight_decay"] for g in sd["param_groups"]]}


def fresh_adam(lib, model, saved: dict):
    """A new Adam over the same groups as ``saved``, loaded from it. The defaults are not in a
    state dict (in PyTorch neither): groups added later take the new optimizer's, so it is
    built with the same betas."""
    m = model
    g = [{"params": [m[0].weight]}, {"params": [m[0].bias]}, {"params": list(m[2].parameters())}]
    opt = lib.optim.Adam(g[:len(saved["param_groups"])], lr=1e-2, betas=(0.8, 0.95))
    opt.load_state_dict(saved)
    return opt


def test_param_groups_unfreeze_manual_lr():
    both(groups)


def test_optimizer_state_dict_resume_is_bit_identical():
    plain = groups(ng)
    for at in (5, 20):
        resumed = groups(ng, resume_at=at)
        assert_same(resumed, plain, 0.0)


#: PyTorch's implementation keywords, per group there; optimiser-wide settings here
IMPL_KEYS = {"foreach", "fused", "capturable", "differentiable"}


def adamw_after_steps(lib, n: int = 3):
    model = model_for(lib)
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=True)
    for _ in range(n):
        opt.zero_grad()
        lib.nn.functional.mse_loss(model(lib.tensor(X)), lib.tensor(Y)).backward()
        opt.step()
    return model, opt


def as_array(v) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float64)


def test_optimizer_state_dict_structure_matches_torch():
    """Same layout as PyTorch's: state by parameter index with the same names and values,
    groups with the same settings. The differences: a top-level ``step_count`` (the
    optimiser's step, for schedules of the step), no per-group implementation keywords."""
    ref, got = adamw_after_steps(torch)[1].state_dict(), adamw_after_steps(ng)[1].state_dict()
    assert set(ref) == {"state", "param_groups"}
    assert set(got) == {"state", "param_groups", "step_count"}
    assert list(got["state"]) == list(ref["state"])
    for gs, rs in zip(got["state"].values(), ref["state"].values()):
        assert set(gs) == set(rs)
        for k in rs:
            np.testing.assert_allclose(as_array(gs[k]), as_array(rs[k]), rtol=TOL, atol=TOL)
    (gg,), (rg,) = got["param_groups"], ref["param_groups"]
    assert set(gg) == set(rg) - IMPL_KEYS
    for k in gg:
        assert gg[k] == rg[k], k


def to_flat(sd: dict) -> tuple[dict[str, np.ndarray], dict]:
    """An optimizer state dict as safetensors holds it: named arrays plus JSON metadata."""
    arrays_, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for i, st in sd["state"].items():
        meta["state"][str(i)] = sorted(st)
        for k, v in st.items():
            arrays_[f"{i}.{k}"] = as_array(v)
    return arrays_, meta


def from_flat(lib, arrays_: dict, meta: dict) -> dict:
    state = {int(i): {k: lib.tensor(arrays_[f"{i}.{k}"]) for k in names}
             for i, names in meta["state"].items()}
    return {"state": state, "param_groups": [dict(g) for g in meta["param_groups"]]}


def continue_steps(lib, model, opt, n: int = 5) -> list[float]:
    losses = []
    for _ in range(n):
        opt.zero_grad()
        loss = lib.nn.functional.mse_loss(model(lib.tensor(X)), lib.tensor(Y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


OPTIMIZERS = {
    "AdamW-amsgrad": lambda o, ps: o.AdamW(ps, lr=1e-2, amsgrad=True),
    "SGD-nesterov": lambda o, ps: o.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "RMSprop-centered": lambda o, ps: o.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True),
    "Adagrad": lambda o, ps: o.Adagrad(ps, lr=1e-2),
    "NAdam": lambda o, ps: o.NAdam(ps, lr=1e-2),
    "RAdam": lambda o, ps: o.RAdam(ps, lr=1e-2),
    "Adamax": lambda o, ps: o.Adamax(ps, lr=1e-2),
    "Adadelta": lambda o, ps: o.Adadelta(ps),
    "ASGD": lambda o, ps: o.ASGD(ps, lr=1e-2),
    "Rprop": lambda o, ps: o.Rprop(ps, lr=1e-2),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("src,dst", [(torch, ng), (ng, torch)], ids=["torch->ng", "ng->torch"])
def test_optimizer_state_crosses_libraries(src, dst, name):
    """An optimizer state saved by one library (as tensors + JSON) loads into the other, and
    both continue identically from the same weights."""
    make = OPTIMIZERS[name]
    model = model_for(src)
    opt = make(src.optim, model.parameters())
    continue_steps(src, model, opt, 3)
    flat = to_flat(opt.state_dict())
    model2 = model_for(dst)
    model2.load_state_dict({k: dst.tensor(v) for k, v in arrays(model.state_dict()).items()})
    opt2 = make(dst.optim, model2.parameters())
    opt2.load_state_dict(from_flat(dst, *flat))
    assert_same(continue_steps(dst, model2, opt2), continue_steps(src, model, opt))
    assert_same(arrays(model2.state_dict()), arrays(model.state_dict()))


# 4. ReduceLROnPlateau early stopping, LambdaLR resume

def plateau(lib):
    nn, optim = lib.nn, lib.optim
    model = model_for(lib)
    opt = optim.SGD(model.parameters(), lr=0.2)
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1,
                                                 threshold=1e-3, threshold_mode="abs",
                                                 cooldown=2, min_lr=0.06)
    x, y = lib.tensor(X), lib.tensor(Y)
    lrs, metrics, best, bad = [], [], -float("inf"), 0
    for _ in range(90):
        opt.zero_grad()
        nn.functional.mse_loss(model(x[:24]), y[:24]).backward()
        opt.step()
        with lib.no_grad():
            metric = -nn.functional.mse_loss(model(x[24:]), y[24:]).item()
        sched.step(metric)
        metrics.append(metric)
        lrs.append(sched.get_last_lr())
        if metric > best + 1e-3:
            best, bad = metric, 0
        else:
            bad += 1
            if bad >= 6:
                break
    return {"lr": lrs, "metric": metrics, "best": sched.best,
            "n": float(sched.num_bad_epochs), "cool": float(sched.cooldown_counter)}


def test_reduce_lr_on_plateau_early_stopping():
    got = both(plateau)
    assert [lr[0] for lr in got["lr"][-2:]] == [0.06, 0.06]  # reduced down to min_lr
    assert len(got["lr"]) < 90  # and stopped early


def lambda_resume(lib):
    optim = lib.optim
    model = model_for(lib)

    def rule(epoch):
        return 0.9 ** epoch if epoch >= 3 else (epoch + 1) / 4

    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.lr_scheduler.LambdaLR(opt, rule)
    lrs = []
    for _ in range(7):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
    # Resume: a new optimizer with initial_lr set, a scheduler built at last_epoch.
    opt2 = optim.SGD(model.parameters(), lr=0.1)
    for g in opt2.param_groups:
        g["initial_lr"] = 0.1
    sched2 = optim.lr_scheduler.LambdaLR(opt2, rule, last_epoch=sched.last_epoch)
    lrs.append([g["lr"] for g in opt2.param_groups])
    for _ in range(5):
        opt2.step()
        sched2.step()
        lrs.append(sched2.get_last_lr())
    return lrs


def test_lambda_lr_last_epoch_resume():
    both(lambda_resume)


# 5. vectors of parameters, value clipping, optimizer in backward, step hooks

def in_backward(lib):
    nn, optim = lib.nn, lib.optim
    model = model_for(lib)
    opts = {p: optim.SGD([p], lr=0.05, momentum=0.9) for p in model.parameters()}
    calls = []

    def hook(p):
        nn.utils.clip_grad_value_([p], 0.05)
        opts[p].step()
        opts[p].zero_grad()

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(hook)
    for o in opts.values():
        o.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
        o.register_step_post_hook(lambda o, a, k: calls.append("post"))
    optimizer_module = importlib.import_module(f"{lib.__name__}.optim.optimizer")
    handle = optimizer_module.register_optimizer_step_pre_hook(
        lambda o, a, k: calls.append("global"))
    x, y = lib.tensor(X), lib.tensor(Y)
    losses, vecs = [], []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        losses.append(loss.item())
        vecs.append(nn.utils.parameters_to_vector(model.parameters()).detach().numpy().copy())
    handle.remove()
    v = nn.utils.parameters_to_vector(model.parameters())
    nn.utils.vector_to_parameters(v * 0.5, model.parameters())
    grads = [p.grad for p in model.parameters()]
    return {"loss": losses, "vec": vecs, "w": arrays(model.state_dict()),
            "calls": float(len(calls)), "none": float(sum(g is None for g in grads))}


def test_optimizer_in_backward_with_hooks():
    got = both(in_backward)
    assert got["calls"] == 3 * 4 * 30


# 6. L-BFGS with strong Wolfe line search

def lbfgs(lib):
    nn, optim = lib.nn, lib.optim
    model = model_for(lib)
    opt = optim.LBFGS(model.parameters(), lr=1, max_iter=20, history_size=7,
                      line_search_fn="strong_wolfe")
    x, y = lib.tensor(X), lib.tensor(Y)
    losses = []

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(5):
        losses.append(float(opt.step(closure).detach()))
    st = opt.state[next(iter(model.parameters()))]
    return {"loss": losses, "w": arrays(model.state_dict()), "n_iter": float(st["n_iter"]),
            "evals": float(st["func_evals"])}


def test_lbfgs_strong_wolfe():
    """Same losses, iteration and evaluation counts. The weights agree to ~1e-9: the 100
    quasi-Newton iterations amplify rounding (5e-15 after 5 of them) along the flat
    directions of the loss, where the losses still agree to 1e-13."""
    ref, got = lbfgs(torch), lbfgs(ng)
    assert_same({k: v for k, v in got.items() if k != "w"}, {k: v for k, v in ref.items()
                                                             if k != "w"})
    assert_same(got["w"], ref["w"], 1e-7)


# 7. seeded shuffling is reproducible

def test_seeded_randperm_and_loader_order_reproducible():
    def order():
        ng.manual_seed(7)
        perm = ng.randperm(20).numpy()
        g = ng.Generator().manual_seed(3)
        perm = np.concatenate([perm, ng.randperm(20, generator=g).numpy()])
        ds = ng.utils.data.TensorDataset(ng.arange(20))
        loader = ng.utils.data.DataLoader(ds, batch_size=6, shuffle=True, generator=g)
        epochs = [np.concatenate([b[0].numpy() for b in loader]) for _ in range(2)]
        return perm, epochs

    (p1, e1), (p2, e2) = order(), order()
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(e1[0], e2[0])
    np.testing.assert_array_equal(e1[1], e2[1])
    assert not np.array_equal(e1[0], e1[1])
    assert sorted(e1[0]) == list(range(20))


# Schedules sharing an optimizer with others, or with a hand-set lr (PyTorch's chainable steps)

STACKS = {
    "exp+step": lambda S, o: [S.ExponentialLR(o, 0.9), S.StepLR(o, 3, 0.5)],
    "linear+cosine": lambda S, o: [S.LinearLR(o, 0.25, total_iters=4),
                                   S.CosineAnnealingLR(o, 10, eta_min=0.01)],
    "multistep+poly": lambda S, o: [S.MultiStepLR(o, [2, 5], 0.3),
                                    S.PolynomialLR(o, total_iters=8, power=2.0)],
    "constant+exp": lambda S, o: [S.ConstantLR(o, 0.5, total_iters=3),
                                  S.ExponentialLR(o, 0.8)],
}


def stacked(lib, make, manual_at: int | None):
    p = lib.nn.Parameter(lib.zeros(2))
    opt = lib.optim.SGD([p], lr=1.0)
    scheds = make(lib.optim.lr_scheduler, opt)
    lrs = [opt.param_groups[0]["lr"]]
    for t in range(12):
        opt.step()
        if t == manual_at:
            opt.param_groups[0]["lr"] = 0.7
        for s in scheds:
            s.step()
        lrs.append([opt.param_groups[0]["lr"]] + [s.get_last_lr()[0] for s in scheds])
    return lrs


@pytest.mark.parametrize("name", list(STACKS))
@pytest.mark.parametrize("manual_at", [None, 4])
def test_stacked_schedules_and_hand_set_lr_follow_torch(name, manual_at):
    """Schedules stepped one after the other on one optimizer compose (each acts on the lrs
    the one before left), and a hand-set ``group["lr"]`` is carried on, not undone."""
    got = stacked(ng, STACKS[name], manual_at)
    ref = stacked(torch, STACKS[name], manual_at)
    assert_same(got, ref, 1e-12)


def test_chained_scheduler_built_after_others_keeps_their_lrs():
    """A ChainedScheduler built over schedules that have already set the lrs keeps them."""
    def run(lib):
        S = lib.optim.lr_scheduler
        opt = lib.optim.SGD([lib.nn.Parameter(lib.zeros(1))], lr=0.1)
        seq = S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=3),
                                   S.ExponentialLR(opt, 0.9)], milestones=[3])
        chained = S.ChainedScheduler([S.StepLR(opt, 2, 0.5)])
        out = [opt.param_groups[0]["lr"]]
        for _ in range(8):
            seq.step()
            chained.step()
            out.append(opt.param_groups[0]["lr"])
        return out

    assert_same(run(ng), run(torch), 1e-12)


def test_vector_to_parameters_errors():
    """A non-tensor is PyTorch's TypeError; a vector of the wrong length is refused (PyTorch
    copies a prefix of a longer one)."""
    p = ng.nn.Parameter(ng.zeros(3, dtype=ng.float64))
    with pytest.raises(TypeError, match="vector_to_parameters"):
        ng.nn.utils.vector_to_parameters([1.0, 2.0, 3.0], [p])
    with pytest.raises(ValueError, match="4 elements"):
        ng.nn.utils.vector_to_parameters(ng.zeros(4, dtype=ng.float64), [p])


class Decay:
    """A λ with state: PyTorch saves a callable object's attributes with the schedule."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, epoch: int) -> float:
        return self.rate ** epoch


@pytest.mark.parametrize("kind", ["LambdaLR", "MultiplicativeLR"])
def test_lambda_schedule_state_crosses_libraries(kind):
    """PyTorch's LambdaLR / MultiplicativeLR state dict (λs as None or an object's
    attributes) loads here; the functions stay, the object's attributes come back."""
    def make(lib, rate):
        opt = lib.optim.SGD([lib.nn.Parameter(lib.zeros(1))], lr=0.1)
        return opt, getattr(lib.optim.lr_scheduler, kind)(opt, [Decay(rate)])

    t_opt, t_sched = make(torch, 0.9)
    for _ in range(4):
        t_opt.step()
        t_sched.step()
    n_opt, n_sched = make(ng, 0.5)
    n_opt.load_state_dict({"state": {}, "param_groups": t_opt.state_dict()["param_groups"]})
    n_sched.load_state_dict(t_sched.state_dict())
    assert n_sched.lr_lambdas[0].rate == 0.9
    lrs = []
    for _ in range(4):
        t_opt.step()
        t_sched.step()
        n_opt.step()
        n_sched.step()
        lrs.append((n_sched.get_last_lr(), t_sched.get_last_lr()))
    assert_same([a for a, _ in lrs], [b for _, b in lrs], 1e-15)
    assert set(n_sched.state_dict()) >= set(t_sched.state_dict()) - {"_get_lr_called_within_step"}
    assert n_sched.state_dict()["lr_lambdas"] == [{"rate": 0.9}]
