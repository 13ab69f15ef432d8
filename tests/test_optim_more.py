"""Rprop, ASGD, Adafactor, LBFGS and swa_utils against PyTorch's, step by step.

The first-order optimisers are fed the same gradients in both libraries (a NumPy function of the
current parameters plus seeded noise), so any difference is the optimisers' arithmetic; LBFGS
gets its closure's loss and gradient the same way, and once from each library's own autodiff.
"""

import copy

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import JitError
from nodegrad.optim import swa_utils

torch = pytest.importorskip("torch")

from _optim_problem import (INIT, TARGET, assert_same_trajectory,  # noqa: E402
                            float64_default, grads_at, groups_of, run_torch)  # noqa: F401

STEPS = 80
ROUNDTRIP = 40


def _skip(i, k):
    """Parameter 1 has no gradient on every third step, parameter 3 before step 10."""
    return (i == 1 and k % 3 == 0) or (i == 3 and k < 10)


def run_ng(cls, kw, groups=None, skip=None, steps=STEPS, roundtrip=ROUNDTRIP):
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    opt = getattr(ng.optim, cls)(groups_of(ps, groups), **kw)
    traj = []
    for k in range(steps):
        for i, (p, g) in enumerate(zip(ps, grads_at([p.numpy() for p in ps], k))):
            p.grad = None if skip is not None and skip(i, k) else ng.tensor(g)
        opt.step()
        if k == roundtrip:
            sd = copy.deepcopy(opt.state_dict())
            opt = getattr(ng.optim, cls)(groups_of(ps, groups), **kw)
            opt.load_state_dict(sd)
        traj.append([p.numpy().copy() for p in ps])
    return traj, opt, ps


def _moved(traj):
    """The trajectory goes somewhere (a test of an optimiser that does nothing would pass)."""
    return max(np.abs(x - a).max() for x, a in zip(traj[-1], INIT)) > 1e-3


CASES = [
    ("Rprop", dict()),
    ("Rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2))),
    ("Rprop", dict(lr=0.02, maximize=True)),
    ("ASGD", dict(lr=0.05)),
    ("ASGD", dict(lr=0.05, lambd=0.05, alpha=0.6, t0=15, weight_decay=0.1)),
    ("ASGD", dict(lr=0.02, t0=5, maximize=True)),
    ("Adafactor", dict()),
    ("Adafactor", dict(lr=0.05, beta2_decay=-0.5, eps=(1e-20, 1e-2), d=1.5, weight_decay=0.1)),
    ("Adafactor", dict(lr=0.05, eps=(1e-3, 1e-3), maximize=True)),
]
IDS = [f"{c}-{i}" for i, (c, _) in enumerate(CASES)]


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_trajectory_matches_torch_with_a_state_dict_round_trip(cls, kw):
    a, opt, _ = run_ng(cls, kw)
    b, topt, _ = run_torch(cls, kw)
    assert _moved(a)
    assert_same_trajectory(a, b)
    # the state has PyTorch's names and values
    tstate = topt.state_dict()["state"]
    for idx, entry in opt.state_dict()["state"].items():
        assert set(entry) == set(tstate[idx]), (entry.keys(), tstate[idx].keys())
        for k, v in entry.items():
            np.testing.assert_allclose(np.asarray(v, np.float64),
                                       np.asarray(tstate[idx][k], np.float64), rtol=1e-9,
                                       atol=1e-12, err_msg=k)


GROUP_CASES = [
    ("Rprop", dict(lr=0.02), [([0, 2], {}), ([1, 3], dict(lr=0.1, etas=(0.4, 1.1)))]),
    ("ASGD", dict(lr=0.05, t0=10), [([3, 0], dict(weight_decay=0.2)), ([1, 2], dict(lr=0.01))]),
    ("Adafactor", dict(lr=0.05), [([0, 1], dict(weight_decay=0.1)), ([2, 3], dict(d=2.0))]),
]


@pytest.mark.parametrize("cls,kw,groups", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_param_groups_match_torch(cls, kw, groups):
    a, _, _ = run_ng(cls, kw, groups)
    b, _, _ = run_torch(cls, kw, groups)
    assert_same_trajectory(a, b)


@pytest.mark.parametrize("cls,kw", [("Rprop", dict(lr=0.05)), ("ASGD", dict(lr=0.05, t0=5)),
                                    ("Adafactor", dict(lr=0.05))])
def test_parameters_without_grad_are_skipped_like_torch(cls, kw):
    """Each parameter keeps its own step count (Rprop's step sizes start at its first step)."""
    a, _, _ = run_ng(cls, kw, skip=_skip)
    b, _, _ = run_torch(cls, kw, skip=_skip)
    assert_same_trajectory(a, b)


@pytest.mark.parametrize("cls", ["Rprop", "ASGD", "Adafactor"])
def test_scheduler_drives_the_lr_like_torch(cls):
    kw = dict(lr=0.05)
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    qs = [torch.tensor(a.copy(), requires_grad=True) for a in INIT]
    opt, topt = getattr(ng.optim, cls)(ps, **kw), getattr(torch.optim, cls)(qs, **kw)
    s = ng.optim.lr_scheduler.StepLR(opt, 7, gamma=0.5)
    ts = torch.optim.lr_scheduler.StepLR(topt, 7, gamma=0.5)
    a, b = [], []
    for k in range(40):
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


@pytest.mark.parametrize("cls,kw", [("Rprop", dict(lr=0.01)), ("ASGD", dict(lr=0.05, t0=3)),
                                    ("Adafactor", dict(lr=0.05, weight_decay=0.01))])
def test_float32_stays_float32(cls, kw):
    ps = [ng.tensor(a.astype(np.float32), requires_grad=True) for a in INIT]
    opt = getattr(ng.optim, cls)(ps, **kw)
    for k in range(5):
        for p, g in zip(ps, grads_at([p.numpy() for p in ps], k)):
            p.grad = ng.tensor(g.astype(np.float32))
        opt.step()
    assert all(p.dtype == np.float32 for p in ps)
    for st in opt.state.values():
        for v in st.values():
            if hasattr(v, "dtype"):
                assert v.dtype == np.float32


@pytest.mark.parametrize("cls,kw", [("Rprop", dict(lr=0.01)),
                                    ("ASGD", dict(lr=0.05, t0=3, weight_decay=1e-3)),
                                    ("Adafactor", dict(lr=0.05, weight_decay=1e-3))])
def test_jitted_step_equals_eager(cls, kw):
    rng = np.random.default_rng(0)
    batches = [(ng.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
                ng.tensor(rng.integers(0, 3, 8))) for _ in range(8)]

    def run(jit):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = getattr(ng.optim, cls)(model.parameters(), **kw)

        def train_step(x, y):
            opt.zero_grad()
            loss = ng.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        start = [p.numpy().copy() for p in model.parameters()]
        step = ng.jit(train_step, state=(model, opt)) if jit else train_step
        losses = [step(x, y).item() for x, y in batches]
        return losses, [p.numpy().copy() for p in model.parameters()], opt, start

    le, pe, _, start = run(False)
    lj, pj, opt, _ = run(True)
    assert opt.step_count == len(batches)
    assert lj == le
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(pe, start))  # every parameter moved
    for a, b in zip(pj, pe):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make,match", [
    (lambda ps: ng.optim.Rprop(ps, lr=-1), r"Rprop: invalid lr: -1"),
    (lambda ps: ng.optim.Rprop(ps, etas=(1.2, 0.5)), r"Rprop: invalid etas"),
    (lambda ps: ng.optim.Rprop(ps, step_sizes=(1.0, 0.1)), r"Rprop: invalid step_sizes"),
    (lambda ps: ng.optim.ASGD(ps, lr=-0.1), r"ASGD: invalid lr"),
    (lambda ps: ng.optim.ASGD(ps, weight_decay=-1), r"ASGD: invalid weight_decay"),
    (lambda ps: ng.optim.Adafactor(ps, lr=-1), r"Adafactor: invalid lr"),
    (lambda ps: ng.optim.Adafactor(ps, beta2_decay=0.5), r"Adafactor: invalid beta2_decay"),
    (lambda ps: ng.optim.Adafactor(ps, eps=(-1.0, 1e-3)), r"Adafactor: invalid eps\[0\]"),
    (lambda ps: ng.optim.Adafactor(ps, eps=1e-3), r"Adafactor: invalid eps"),
    (lambda ps: ng.optim.Adafactor(ps, d=0.5), r"Adafactor: invalid clipping threshold"),
    (lambda ps: ng.optim.Adafactor(ps, weight_decay=-1), r"Adafactor: invalid weight_decay"),
    (lambda ps: ng.optim.LBFGS(ps, lr=-1), r"LBFGS: invalid lr"),
    (lambda ps: ng.optim.LBFGS(ps, max_iter=0), r"LBFGS: invalid max_iter"),
    (lambda ps: ng.optim.LBFGS(ps, history_size=0), r"LBFGS: invalid history_size"),
    (lambda ps: ng.optim.LBFGS(ps, line_search_fn="armijo"), r"LBFGS: invalid line_search_fn"),
    (lambda ps: ng.optim.LBFGS([{"params": ps[:1]}, {"params": ps[1:]}]),
     r"LBFGS doesn't support per-parameter options"),
])
def test_bad_input_names_the_optimiser(make, match):
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    with pytest.raises(ValueError, match=match):
        make(ps)


def test_load_state_dict_refuses_another_optimisers_state():
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    rp = ng.optim.Rprop(ps)
    for p in ps:
        p.grad = ng.ones_like(p)
    rp.step()
    ada = ng.optim.Adafactor(ps)
    ada.step()
    with pytest.raises(ValueError, match="Adafactor.load_state_dict"):
        ada.load_state_dict({**rp.state_dict(), "param_groups": ada.state_dict()["param_groups"]})
    with pytest.raises(ValueError, match="Rprop.load_state_dict"):
        rp.load_state_dict(ada.state_dict())
    with pytest.raises(ValueError, match="LBFGS.load_state_dict"):
        ng.optim.LBFGS(ps).load_state_dict(rp.state_dict())


# --- LBFGS ---------------------------------------------------------------------------------------
def _rosen(x, a=100.0):
    """The n-dimensional Rosenbrock function (valley steepness ``a``) and its gradient."""
    f = np.sum(a * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    g = np.zeros_like(x)
    g[:-1] += -4 * a * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 2 * a * (x[1:] - x[:-1] ** 2)
    return f, g


ROSEN_INIT = [np.array([[-1.2, 1.0], [-0.5, 0.8]]), np.array([1.5, -0.3])]
LBFGS_CASES = [dict(lr=0.1, max_iter=5, history_size=4),
               dict(lr=1, max_iter=10, line_search_fn="strong_wolfe"),
               dict(lr=1, max_iter=4, max_eval=6, history_size=3, line_search_fn="strong_wolfe")]
LBFGS_IDS = ["fixed-step", "strong_wolfe", "strong_wolfe-max_eval"]


def _rosen_closure(mod, ps, a):
    """A closure that gives either library the same loss and gradient of Rosenbrock in 6
    dimensions, split over the tensors ``ps``."""
    def closure():
        vals = [p.detach().numpy() if mod is torch else p.numpy() for p in ps]
        f, g = _rosen(np.concatenate([v.reshape(-1) for v in vals]), a)
        off = 0
        for p in ps:
            n = p.numel()
            p.grad = mod.tensor(g[off:off + n].reshape(tuple(p.shape)))
            off += n
        return mod.tensor(np.asarray(f))  # a 0-d array: float64 in both libraries

    return closure


def _lbfgs_rosen(mod, kw, steps, a, roundtrip=None):
    """Iterates and losses of ``steps`` calls of ``step(closure)`` in one library, with a
    state_dict round trip into a fresh optimiser after step ``roundtrip``."""
    ps = [mod.tensor(x.copy(), requires_grad=True) for x in ROSEN_INIT]
    cls = mod.optim.LBFGS
    opt = cls(ps, **kw)
    closure = _rosen_closure(mod, ps, a)
    out, losses = [], []
    for k in range(steps):
        losses.append(float(opt.step(closure)))
        out.append([p.detach().numpy().copy() if mod is torch else p.numpy().copy() for p in ps])
        if k == roundtrip:
            sd = copy.deepcopy(opt.state_dict())
            opt = cls(ps, **kw)
            opt.load_state_dict(sd)
    st = opt.state_dict()["state"][0]
    return out, losses, (st["func_evals"], st["n_iter"])


@pytest.mark.parametrize("kw", LBFGS_CASES, ids=LBFGS_IDS)
def test_lbfgs_iterates_equal_torch_on_a_rosenbrock_like_function(kw):
    """A milder valley (a = 10), where rounding differences are not amplified chaotically:
    the whole run, with a round trip, follows PyTorch's."""
    steps = 30 if "line_search_fn" in kw else 60
    a, la, ca = _lbfgs_rosen(ng, kw, steps, 10.0, roundtrip=steps // 2)
    b, lb, cb = _lbfgs_rosen(torch, kw, steps, 10.0, roundtrip=steps // 2)
    assert ca == cb  # the same number of closure calls and iterations
    np.testing.assert_allclose(la, lb, rtol=1e-9, atol=1e-14)
    assert_same_trajectory(a, b, rtol=1e-9)
    assert lb[-1] < 0.05 * lb[0]
    if kw.get("line_search_fn") and kw.get("max_eval") is None:
        np.testing.assert_allclose(np.concatenate([x.reshape(-1) for x in a[-1]]), 1.0,
                                   atol=1e-5)  # the minimum


def _numpy_state(v):
    """A PyTorch state dict with NumPy arrays for its tensors."""
    if isinstance(v, torch.Tensor):
        return v.detach().numpy().copy()
    if isinstance(v, list | tuple):
        return type(v)(_numpy_state(x) for x in v)
    if isinstance(v, dict):
        return {k: _numpy_state(x) for k, x in v.items()}
    return v


@pytest.mark.parametrize("kw", LBFGS_CASES, ids=LBFGS_IDS)
def test_lbfgs_each_step_equals_torch_from_torchs_state(kw):
    """On Rosenbrock itself (a = 100), where L-BFGS amplifies last-bit differences over a long
    run: every step, started from PyTorch's parameters and its state_dict (the same layout),
    lands on PyTorch's next iterate."""
    qs = [torch.tensor(x.copy(), requires_grad=True) for x in ROSEN_INIT]
    topt = torch.optim.LBFGS(qs, **kw)
    for _ in range(25):
        before = [q.detach().numpy().copy() for q in qs]
        sd = _numpy_state(topt.state_dict())
        tloss = float(topt.step(_rosen_closure(torch, qs, 100.0)))
        ps = [ng.tensor(b, requires_grad=True) for b in before]
        opt = ng.optim.LBFGS(ps, **kw)
        opt.load_state_dict(sd)
        loss = float(opt.step(_rosen_closure(ng, ps, 100.0)))
        assert loss == tloss
        assert_same_trajectory([[p.numpy() for p in ps]], [[q.detach().numpy() for q in qs]])
        st, tst = opt.state_dict()["state"][0], topt.state_dict()["state"][0]
        assert (st["func_evals"], st["n_iter"]) == (tst["func_evals"], tst["n_iter"])
        assert len(st["old_dirs"]) == len(tst["old_dirs"])


def _wiggly(seed):
    """A line-search problem φ(t) = a sin(wt) - (aw + 1) t + b|t|^p (φ'(0) = -1) and a first
    trial step: seeds 0..59 take every branch of the zoom phase."""
    r = np.random.default_rng(seed)
    w, a, b, p = r.uniform(0.5, 20), r.uniform(0, 2), r.uniform(0.01, 3), r.uniform(1.2, 4)
    t0 = float(r.choice([0.01, 0.1, 1, 10, 100]))

    def phi(t):
        return (a * np.sin(w * t) - (a * w + 1) * t + b * abs(t) ** p,
                a * w * np.cos(w * t) - (a * w + 1) + b * p * np.sign(t) * abs(t) ** (p - 1))

    return phi, t0


@pytest.mark.parametrize("max_ls,tol", [(25, 1e-9), (3, 1e-9), (25, 1e-2)])
def test_strong_wolfe_line_search_equals_torchs(max_ls, tol):
    """The line search alone, along a 1-d direction, on wiggly functions that drive it through
    extrapolation, zooming, its moves away from the bracket's ends, its evaluation limit and its
    tolerance: the same step, loss, gradient and number of evaluations as PyTorch's."""
    from torch.optim.lbfgs import _strong_wolfe as torch_strong_wolfe

    from nodegrad.optim.lbfgs import _strong_wolfe

    evals = set()
    for seed in range(60):
        phi, t0 = _wiggly(seed)
        f0, g0 = phi(0.0)
        res = []
        for lib in ("ng", "torch"):
            def obj(x, t, d, lib=lib):
                f, g = phi(float(t))
                return float(f), (np.array([g]) if lib == "ng" else torch.tensor([g]))

            if lib == "ng":
                out = _strong_wolfe(np, obj, None, t0, np.array([1.0]), f0, np.array([g0]), g0,
                                    tolerance_change=tol, max_ls=max_ls)
            else:
                out = torch_strong_wolfe(obj, None, t0, torch.tensor([1.0]), f0,
                                         torch.tensor([g0]), torch.tensor(g0),
                                         tolerance_change=tol, max_ls=max_ls)
            f, g, t, n = out
            res.append((float(f), float(np.asarray(g)[0]), float(t), int(n)))
        (f, g, t, n), (tf, tg, tt, tn) = res
        assert n == tn, seed
        # to the last bits (see nodegrad.optim.lbfgs._Step): bit for bit on AMD's AVX-512
        # machines; where PyTorch's kernels round the step's last bit otherwise (Intel's), the
        # wiggly functions' steep slopes carry it to ~1e-11 in the gradient
        for a, b in ((f, tf), (g, tg), (t, tt)):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), seed
        evals.add(n)
    assert len(evals) > 2  # the searches took different paths


def _logistic_data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 5))
    w = rng.standard_normal(5)
    y = (x @ w + 0.5 * rng.standard_normal(64) > 0).astype(np.float64)
    return x, y


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_logistic_regression_follows_torch(line_search_fn):
    """Each library differentiates its own loss: the iterates still agree closely."""
    x, y = _logistic_data()
    res = {}
    for lib, mod in (("ng", ng), ("torch", torch)):
        F = ng.nn.functional if lib == "ng" else torch.nn.functional
        w = mod.tensor(np.zeros(5), requires_grad=True)
        b = mod.tensor(np.zeros(()), requires_grad=True)
        cls = ng.optim.LBFGS if lib == "ng" else torch.optim.LBFGS
        opt = cls([w, b], lr=0.5 if line_search_fn is None else 1, max_iter=8,
                  line_search_fn=line_search_fn)
        xt, yt = mod.tensor(x), mod.tensor(y)

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + 1e-2 * (w * w).sum()
            loss.backward()
            return loss

        traj = []
        for _ in range(6):
            opt.step(closure)
            traj.append([np.array(w.detach().numpy()), np.array(b.detach().numpy())])
        res[lib] = traj, float(closure())
    assert_same_trajectory(res["ng"][0], res["torch"][0], rtol=1e-8)
    assert res["ng"][1] < 0.5  # it learned (log 2 = 0.69 at the start)


def test_lbfgs_refuses_jit_and_a_missing_closure():
    w = ng.tensor(np.ones(3), requires_grad=True)
    opt = ng.optim.LBFGS([w])
    with pytest.raises(TypeError, match="LBFGS.step needs a closure"):
        opt.step()

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    def train_step(x):
        return opt.step(closure) + x

    with pytest.raises(JitError, match="LBFGS.step cannot be captured by nodegrad.jit"):
        ng.jit(train_step, state=(opt,))(ng.tensor(1.0))


def test_lbfgs_state_lives_under_the_first_parameter_and_stays_float32():
    ps = [ng.tensor(a.astype(np.float32), requires_grad=True) for a in ROSEN_INIT]
    opt = ng.optim.LBFGS(ps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        x = ng.cat([p.reshape(-1) for p in ps])
        loss = (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
        loss.backward()
        return loss

    first = float(opt.step(closure))
    last = float(opt.step(closure))
    assert last < first
    assert list(opt.state) == [ps[0]]
    st = opt.state[ps[0]]
    assert st["n_iter"] > 1 and st["func_evals"] >= st["n_iter"]
    assert all(p.dtype == np.float32 for p in ps)
    assert st["d"].dtype == np.float32 and all(v.dtype == np.float32 for v in st["old_dirs"])


def test_lbfgs_trains_a_digits_classifier():
    """End to end: full-batch L-BFGS on scikit-learn's digits reaches a sensible accuracy."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    tr, te = order[:1400], order[1400:]
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = ng.optim.LBFGS(model.parameters(), max_iter=20, history_size=10,
                         line_search_fn="strong_wolfe")
    xt, yt = ng.tensor(x[tr]), ng.tensor(y[tr])

    def closure():
        opt.zero_grad()
        loss = ng.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        return loss

    losses = [float(opt.step(closure)) for _ in range(8)]
    with ng.no_grad():
        pred = model(ng.tensor(x[te])).numpy().argmax(1)
    acc = (pred == y[te]).mean()
    assert losses[-1] < 0.1 * losses[0]
    assert acc > 0.9, acc


# --- swa_utils -----------------------------------------------------------------------------------
def _pair(bn=False):
    """The same small model in both libraries (weights copied), optionally with batch norm."""
    ng.manual_seed(0)
    torch.manual_seed(0)
    if bn:
        m = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
        t = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                torch.nn.ReLU(), torch.nn.Linear(6, 2))
    else:
        m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        t = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    m.double()
    t.double()
    with torch.no_grad():
        for p, q in zip(m.parameters(), t.parameters()):
            q.copy_(torch.from_numpy(p.numpy()))
    return m, t


def _perturb(m, t, k):
    """Move both models' parameters to the same new values (a stand-in for training)."""
    r = np.random.default_rng(50 + k)
    with torch.no_grad():
        for p, q in zip(m.parameters(), t.parameters()):
            v = p.numpy() + 0.3 * r.standard_normal(p.shape)
            p.data[...] = v
            q.copy_(torch.from_numpy(v))


@pytest.mark.parametrize("kind", ["swa", "ema-multi", "ema", "swa-multi", "custom"])
def test_averaged_model_equals_torch(kind):
    su = torch.optim.swa_utils
    fns = {"swa": ({}, {}),
           "ema-multi": (dict(multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9)),
                         dict(multi_avg_fn=su.get_ema_multi_avg_fn(0.9))),
           "ema": (dict(avg_fn=swa_utils.get_ema_avg_fn(0.8)),
                   dict(avg_fn=su.get_ema_avg_fn(0.8))),
           "swa-multi": (dict(multi_avg_fn=swa_utils.get_swa_multi_avg_fn()),
                         dict(multi_avg_fn=su.get_swa_multi_avg_fn())),
           "custom": (dict(avg_fn=lambda a, p, n: 0.5 * a + 0.5 * p),
                      dict(avg_fn=lambda a, p, n: 0.5 * a + 0.5 * p))}
    kn, kt = fns[kind]
    m, t = _pair()
    am, at = swa_utils.AveragedModel(m, **kn), su.AveragedModel(t, **kt)
    snapshots = []
    for k in range(6):
        _perturb(m, t, k)
        snapshots.append([p.numpy().copy() for p in m.parameters()])
        am.update_parameters(m)
        at.update_parameters(t)
    assert int(am.n_averaged.item()) == int(at.n_averaged) == 6
    for p, q in zip(am.parameters(), at.parameters()):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-13, atol=1e-15)
    if kind.startswith("swa"):  # the plain mean of the snapshots
        for i, p in enumerate(am.parameters()):
            np.testing.assert_allclose(p.numpy(), np.mean([s[i] for s in snapshots], 0),
                                       rtol=1e-12)
    x = np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose(am(ng.tensor(x)).numpy(), at(torch.tensor(x)).detach().numpy(),
                               rtol=1e-12)
    assert "n_averaged" in am.state_dict() and "module.0.weight" in am.state_dict()


@pytest.mark.parametrize("use_buffers", [False, True])
def test_averaged_model_buffers_equal_torch(use_buffers):
    m, t = _pair(bn=True)
    su = torch.optim.swa_utils
    am = swa_utils.AveragedModel(m, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.7),
                                 use_buffers=use_buffers)
    at = su.AveragedModel(t, multi_avg_fn=su.get_ema_multi_avg_fn(0.7), use_buffers=use_buffers)
    rng = np.random.default_rng(3)
    for k in range(4):
        _perturb(m, t, k)
        x = rng.standard_normal((8, 4))
        m(ng.tensor(x))  # training mode: the running statistics move
        t(torch.tensor(x))
        am.update_parameters(m)
        at.update_parameters(t)
    mine, theirs = am.module.state_dict(), at.module.state_dict()
    assert set(mine) == set(theirs)
    for name, p in mine.items():
        np.testing.assert_allclose(np.asarray(p.numpy(), np.float64),
                                   theirs[name].detach().numpy().astype(np.float64), rtol=1e-12,
                                   err_msg=name)
    # the running mean is averaged (use_buffers) or the trained model's (copied)
    np.testing.assert_array_equal(mine["1.running_mean"].numpy() == m[1].running_mean.numpy(),
                                  not use_buffers)


def test_averaged_model_refuses_two_functions():
    m, _ = _pair()
    with pytest.raises(ValueError, match="AveragedModel: got both avg_fn and multi_avg_fn"):
        swa_utils.AveragedModel(m, avg_fn=swa_utils.get_swa_avg_fn(),
                                multi_avg_fn=swa_utils.get_swa_multi_avg_fn())
    with pytest.raises(ValueError, match=r"invalid EMA decay 1.5"):
        swa_utils.get_ema_multi_avg_fn(1.5)


@pytest.mark.parametrize("kw", [dict(swa_lr=0.05), dict(swa_lr=[0.05, 0.2], anneal_epochs=3,
                                                         anneal_strategy="linear"),
                                dict(swa_lr=0.01, anneal_epochs=0)])
def test_swalr_learning_rates_equal_torch(kw):
    """Cosine annealing first (from 0.5 and 0.1), then SWALR takes over from whatever lr the
    groups hold (built when it takes over: PyTorch's cosine schedule is recursive, ours closed
    form, and an immediate SWALR (anneal_epochs=0) would change the lr they start from)."""
    ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    qs = [torch.tensor(a.copy(), requires_grad=True) for a in INIT]
    groups = [([0, 1], {}), ([2, 3], dict(lr=0.1))]
    opt = ng.optim.SGD(groups_of(ps, groups), lr=0.5)
    topt = torch.optim.SGD(groups_of(qs, groups), lr=0.5)
    cos = ng.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
    tcos = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=30)
    lrs, tlrs = [], []
    for k in range(25):
        opt.step()
        topt.step()
        if k < 8:
            cos.step()
            tcos.step()
        elif k == 8:
            swa = swa_utils.SWALR(opt, **kw)
            tswa = torch.optim.swa_utils.SWALR(topt, **kw)
        else:
            swa.step()
            tswa.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        tlrs.append([g["lr"] for g in topt.param_groups])
    np.testing.assert_allclose(lrs, tlrs, rtol=1e-12)
    swa_lrs = kw["swa_lr"] if isinstance(kw["swa_lr"], list) else [kw["swa_lr"]] * 2
    np.testing.assert_allclose(lrs[-1], swa_lrs, rtol=1e-12)
    assert swa.get_last_lr() == lrs[-1]


def test_swalr_refuses_bad_arguments():
    opt = ng.optim.SGD([ng.tensor(np.ones(2), requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="SWALR: anneal_strategy must be 'cos' or 'linear'"):
        swa_utils.SWALR(opt, 0.05, anneal_strategy="exp")
    with pytest.raises(ValueError, match="SWALR: anneal_epochs must be an int >= 0"):
        swa_utils.SWALR(opt, 0.05, anneal_epochs=-1)


def test_update_bn_equals_torch():
    m, t = _pair(bn=True)
    rng = np.random.default_rng(5)
    data = [rng.standard_normal((10, 4)) * 2 + 1 for _ in range(5)]
    for x in data[:2]:  # some stale statistics to be replaced
        m(ng.tensor(x))
        t(torch.tensor(x))
    m.eval()
    t.eval()
    loader = [(ng.tensor(x), 0) for x in data]
    tloader = [(torch.tensor(x), 0) for x in data]
    swa_utils.update_bn(loader, m)
    torch.optim.swa_utils.update_bn(tloader, t)
    bn, tbn = m[1], t[1]
    np.testing.assert_allclose(bn.running_mean.numpy(), tbn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), tbn.running_var.numpy(), rtol=1e-12)
    assert int(bn.num_batches_tracked.item()) == int(tbn.num_batches_tracked) == 5
    assert bn.momentum == 0.1 and not m.training  # restored
    # the equal-weight average of the batches' statistics (cumulative mode)
    h = [x @ m[0].weight.numpy().T + m[0].bias.numpy() for x in data]
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([a.mean(0) for a in h], 0),
                               rtol=1e-12)


# --- a CUDA device (the GPU, or the stand-in that refuses what CuPy would) ------------------------
@pytest.mark.parametrize("cls,kw", [("Rprop", dict(lr=0.01)),
                                    ("ASGD", dict(lr=0.05, t0=3, weight_decay=0.01)),
                                    ("Adafactor", dict(lr=0.05, weight_decay=0.01)),
                                    ("LBFGS", dict(line_search_fn="strong_wolfe")),
                                    ("LBFGS", dict(lr=0.1, max_iter=4))])
def test_on_a_cuda_device_equals_the_cpu(cls, kw, cuda):
    res = {}
    for device in ("cpu", cuda):
        ps = [ng.tensor(a.copy(), device=device, requires_grad=True) for a in INIT]
        targets = [ng.tensor(t, device=device) for t in TARGET]
        opt = getattr(ng.optim, cls)(ps, **kw)

        def closure():
            opt.zero_grad()
            loss = sum(((p - t) ** 4 + (p - t) ** 2).sum() for p, t in zip(ps, targets))
            loss.backward()
            return loss

        for _ in range(6):
            opt.step(closure)  # the first-order optimisers call it once, before their update
        sd = opt.state_dict()  # the state round trip works on the device too
        opt = getattr(ng.optim, cls)(ps, **kw)
        opt.load_state_dict(sd)
        opt.step(closure)
        assert all(p.device == ps[0].device for p in ps)
        res[device] = [p.numpy() for p in ps]
    for a, b in zip(res["cpu"], res[cuda]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_swa_utils_on_a_cuda_device(cuda):
    m, _ = _pair(bn=True)
    m.to(cuda)
    am = swa_utils.AveragedModel(m, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.5))
    for k in range(3):
        _perturb_ng(m, k)
        am.update_parameters(m)
    assert all(p.device == m[0].weight.device for p in am.parameters())
    rng = np.random.default_rng(0)
    swa_utils.update_bn([ng.tensor(rng.standard_normal((6, 4)), device=cuda) for _ in range(3)],
                        am)
    assert int(am.module[1].num_batches_tracked.item()) == 3


def _perturb_ng(m, k):
    r = np.random.default_rng(50 + k)
    for p in m.parameters():
        p.data[...] = p.data + ng.tensor(0.3 * r.standard_normal(p.shape), device=p.device).data
