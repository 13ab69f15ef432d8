"""Every optimiser and option follows PyTorch's trajectory in float64 (same start, same gradients).

The gradients come from one NumPy function of the current parameters plus seeded noise, fed to
both libraries, so any difference is the optimisers' arithmetic: after 120 steps, including a
state_dict round trip into a fresh optimiser mid-run, we ask for 1e-10 relative agreement.
"""


import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

from _optim_problem import (INIT, assert_same_trajectory, float64_default,  # noqa: E402,F401
                            grads_at, groups_of)
from _optim_problem import run_torch as _run_torch  # noqa: E402

STEPS = 120


def run_ng(cls, kw, groups=None, roundtrip=60, skip=None, steps=STEPS, flat=True, **extra):
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    kw = {**kw, **extra}
    opt = getattr(ng.optim, cls)(groups_of(ps, groups), flat=flat, **kw)
    traj = []
    for k in range(steps):
        for i, (p, g) in enumerate(zip(ps, grads_at([p.numpy() for p in ps], k))):
            p.grad = None if skip is not None and skip(i, k) else ng.tensor(g)
        opt.step()
        if k == roundtrip:
            sd = opt.state_dict()
            opt = getattr(ng.optim, cls)(groups_of(ps, groups), flat=flat, **kw)
            opt.load_state_dict(sd)
        traj.append([p.numpy().copy() for p in ps])
    return traj


def run_torch(cls, kw, groups=None, roundtrip=60, skip=None, steps=STEPS):
    return _run_torch(cls, kw, groups, skip, steps, roundtrip)[0]


CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    ("SGD", dict(lr=0.02, momentum=0.5, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1,
                     eps=1e-8)),
    ("Adagrad", dict(lr=0.05, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1, eps=1e-6)),
    ("RMSprop", dict(lr=0.005, maximize=True)),
    ("Adadelta", dict(lr=1.0)),
    ("Adadelta", dict(lr=0.5, rho=0.95, weight_decay=0.1, eps=1e-5)),
    ("Adadelta", dict(lr=1.0, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("NAdam", dict(lr=0.01, maximize=True)),
    ("RAdam", dict(lr=0.01)),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, eps=1e-6)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, eps=1e-6)),
    ("Adamax", dict(lr=0.01, maximize=True)),
]


@pytest.mark.parametrize("cls,kw", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_trajectory_matches_torch(cls, kw):
    """The default path: the fused kernel where numba is installed, else the NumPy update."""
    assert_same_trajectory(run_ng(cls, kw), run_torch(cls, kw))


FUSED = [(i, c, kw) for i, (c, kw) in enumerate(CASES)
         if c in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")]


@pytest.mark.parametrize("cls,kw", [c[1:] for c in FUSED], ids=[f"{c}-{i}" for i, c, _ in FUSED])
def test_numpy_update_matches_torch(cls, kw):
    """``fused=False``: the NumPy update of the algorithms that also have a fused kernel."""
    assert_same_trajectory(run_ng(cls, kw, fused=False), run_torch(cls, kw))


GROUP_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9),
     [([0, 2], {}), ([1, 3], dict(lr=0.01, momentum=0.5, weight_decay=0.2))]),
    ("Adam", dict(lr=0.01),
     [([0], dict(weight_decay=0.1)), ([1, 2, 3], dict(lr=0.02, betas=(0.5, 0.9)))]),
    ("AdamW", dict(lr=0.01, weight_decay=0.1), [([0, 2], {}), ([1, 3], dict(weight_decay=0.0))]),
    ("RMSprop", dict(lr=0.01), [([3, 0], dict(centered=True)), ([1, 2], dict(momentum=0.9))]),
]


@pytest.mark.parametrize("cls,kw,groups", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_param_groups_match_torch(cls, kw, groups):
    assert_same_trajectory(run_ng(cls, kw, groups), run_torch(cls, kw, groups))


def _skip(i, k):
    """Parameter 1 has no gradient on every third step, parameter 3 before step 10."""
    return (i == 1 and k % 3 == 0) or (i == 3 and k < 10)


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1)),
                                    ("Adam", dict(lr=0.01, amsgrad=True)),
                                    ("NAdam", dict(lr=0.01)),
                                    ("Adagrad", dict(lr=0.1, lr_decay=0.05))])
def test_parameters_without_grad_are_skipped_like_torch(cls, kw):
    """Skipped parameters keep their own step counts (the flat path splits into runs)."""
    assert_same_trajectory(run_ng(cls, kw, skip=_skip), run_torch(cls, kw, skip=_skip))


@pytest.mark.parametrize("cls,kw", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                    ("Adam", dict(lr=0.01, weight_decay=0.1))])
def test_per_tensor_path_matches_torch(cls, kw):
    assert_same_trajectory(run_ng(cls, kw, flat=False, skip=_skip),
                           run_torch(cls, kw, skip=_skip))


def test_callable_lr_matches_lambda_lr():
    """A hyperparameter that is a callable of the step t equals PyTorch's LambdaLR."""
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    opt = ng.optim.Adam(ps, lr=lambda t: 0.05 / t ** 0.5, betas=(0.9, 0.99))
    qs = [torch.tensor(a.copy(), requires_grad=True) for a in INIT]
    topt = torch.optim.Adam(qs, lr=0.05, betas=(0.9, 0.99), foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, lambda e: 1 / (e + 1) ** 0.5)
    a, b = [], []
    for k in range(STEPS):
        for p, g in zip(ps, grads_at([p.numpy() for p in ps], k)):
            p.grad = ng.tensor(g)
        for q, g in zip(qs, grads_at([q.detach().numpy() for q in qs], k)):
            q.grad = torch.from_numpy(g)
        opt.step()
        topt.step()
        sched.step()
        a.append([p.numpy().copy() for p in ps])
        b.append([q.detach().numpy().copy() for q in qs])
    assert_same_trajectory(a, b)


def test_scheduler_with_momentum_cycling_matches_torch():
    """OneCycleLR drives lr and beta1 of Adam; the trajectory still matches."""
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    qs = [torch.tensor(a.copy(), requires_grad=True) for a in INIT]
    opt, topt = ng.optim.Adam(ps), torch.optim.Adam(qs, foreach=False)
    s = ng.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
    ts = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.05, total_steps=STEPS)
    a, b = [], []
    for k in range(STEPS):
        for p, g in zip(ps, grads_at([p.numpy() for p in ps], k)):
            p.grad = ng.tensor(g)
        for q, g in zip(qs, grads_at([q.detach().numpy() for q in qs], k)):
            q.grad = torch.from_numpy(g)
        opt.step()
        topt.step()
        s.step()
        ts.step()
        a.append([p.numpy().copy() for p in ps])
        b.append([q.detach().numpy().copy() for q in qs])
    assert_same_trajectory(a, b)


def test_training_loop_with_backward_matches_torch():
    """The whole loop (backward, clip, step, zero_grad in place) on a small regression."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((32, 5)), rng.standard_normal((32, 2))
    w0, b0 = rng.standard_normal((5, 2)) * 0.3, np.zeros(2)
    ws = [ng.tensor(w0, requires_grad=True), ng.tensor(b0, requires_grad=True)]
    ts = [torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)]
    opt = ng.optim.SGD(ws, lr=0.1, momentum=0.9, nesterov=True)
    topt = torch.optim.SGD(ts, lr=0.1, momentum=0.9, nesterov=True, foreach=False)
    nx, ny, tx, ty = ng.tensor(x), ng.tensor(y), torch.tensor(x), torch.tensor(y)
    for _ in range(100):
        loss = ((nx @ ws[0] + ws[1] - ny) ** 2).mean()
        loss.backward()
        n1 = ng.optim.clip_grad_norm_(ws, 0.5)
        opt.step()
        opt.zero_grad(set_to_none=False)
        tloss = ((tx @ ts[0] + ts[1] - ty) ** 2).mean()
        tloss.backward()
        n2 = torch.nn.utils.clip_grad_norm_(ts, 0.5, foreach=False)
        topt.step()
        topt.zero_grad(set_to_none=False)
        assert abs(float(n1) - float(n2)) <= 1e-9 * float(n2) + 1e-14
    for w, t in zip(ws, ts):
        np.testing.assert_allclose(w.numpy(), t.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert ws[0].grad._data.base is ws[1].grad._data.base  # gradients live in one flat buffer


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    rng = np.random.default_rng(4)
    gs = [rng.standard_normal(s) * 3 for s in [(4, 3), (7,), (2, 2, 2)]]
    ps = [ng.zeros(g.shape, dtype="float64", requires_grad=True) for g in gs]
    qs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in gs]
    for p, q, g in zip(ps, qs, gs):
        p.grad, q.grad = ng.tensor(g), torch.tensor(g)
    for max_norm in (1.0, 1e6):
        a = ng.optim.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
        b = torch.nn.utils.clip_grad_norm_(qs, max_norm, norm_type=norm_type)
        assert abs(float(a) - float(b)) <= 1e-12 * float(b)
        for p, q in zip(ps, qs):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12)


def test_clip_grad_value_matches_torch():
    g = np.random.default_rng(5).standard_normal((6, 5))
    p, q = ng.zeros(6, 5, requires_grad=True, dtype="float64"), torch.zeros(6, 5,
                                                                            requires_grad=True)
    p.grad, q.grad = ng.tensor(g), torch.tensor(g)
    ng.optim.clip_grad_value_([p], 0.5)
    torch.nn.utils.clip_grad_value_([q], 0.5)
    np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())


@pytest.mark.parametrize(("name", "kw"), [
    ("Adam", {"lr": 0.1}), ("AdamW", {"lr": 0.1, "amsgrad": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("Adagrad", {"lr": 0.1}), ("Rprop", {"lr": 0.01})])
def test_a_torch_optimizer_state_dict_loads_and_continues(name, kw):
    """PyTorch's optimiser state dict (0-d tensor steps, SGD without any step) loads, as it
    is or with its tensors converted, and the next steps equal PyTorch's."""
    w = np.random.default_rng(0).standard_normal((3, 2))
    tw = torch.tensor(w, requires_grad=True)
    topt = getattr(torch.optim, name)([tw], **kw)
    for _ in range(3):
        topt.zero_grad()
        (tw ** 2).sum().backward()
        topt.step()
    sd = topt.state_dict()
    for convert in (False, True):
        nw = ng.nn.Parameter(ng.tensor(tw.detach().numpy()))
        nopt = getattr(ng.optim, name)([nw], **kw)
        state = {k: {kk: ng.tensor(vv.numpy()) if convert and hasattr(vv, "numpy") else vv
                     for kk, vv in v.items()} for k, v in sd["state"].items()}
        nopt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
        t2 = tw.detach().clone().requires_grad_(True)
        topt2 = getattr(torch.optim, name)([t2], **kw)
        topt2.load_state_dict(sd)
        for _ in range(2):
            topt2.zero_grad()
            (t2 ** 2).sum().backward()
            topt2.step()
            nopt.zero_grad()
            (nw ** 2).sum().backward()
            nopt.step()
        np.testing.assert_allclose(nw.numpy(), t2.detach().numpy(), rtol=1e-12, atol=1e-14)
