"""Learning-rate schedules: PyTorch's lr sequences step by step, composition, state_dict."""

import copy
import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.optim import lr_scheduler as S


def _ng_opt(cls="SGD", **kw):
    ps = [[ng.zeros(3, requires_grad=True)], [ng.zeros(2, requires_grad=True)]]
    return getattr(ng.optim, cls)([{"params": ps[0]}, {"params": ps[1], "lr": 0.05}],
                                  lr=0.1, **kw)


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def _run(sched, opt, n, metrics=None):
    out = [_lrs(opt)]
    for k in range(n):
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[k])
        out.append(_lrs(opt))
    return np.array(out)


def test_closed_forms_without_torch():
    opt = _ng_opt()
    s = S.InverseSqrtLR(opt)
    lrs = _run(s, opt, 8)
    np.testing.assert_allclose(lrs[:, 0], [0.1 / math.sqrt(k) for k in range(1, 10)])
    assert s.get_last_lr() == _lrs(opt)
    opt = _ng_opt()
    lrs = _run(S.StepLR(opt, 3, gamma=0.5), opt, 7)
    np.testing.assert_allclose(lrs[:, 1], 0.05 * 0.5 ** (np.arange(8) // 3))
    opt = _ng_opt()
    lrs = _run(S.LinearWarmup(opt, 4, start_factor=0.0), opt, 6)
    np.testing.assert_allclose(lrs[:, 0], [0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_state_dict_resumes_a_composed_schedule():
    opt = _ng_opt("Adam")
    s = S.LinearWarmup(S.CosineAnnealingLR(opt, 20, eta_min=1e-3), 5)
    _run(s, opt, 7)
    sd = copy.deepcopy(s.state_dict())
    rest = _run(s, opt, 10)
    opt2 = _ng_opt("Adam")
    s2 = S.LinearWarmup(S.CosineAnnealingLR(opt2, 20, eta_min=1e-3), 5)
    s2.load_state_dict(sd)
    s2._set(s2.get_last_lr())
    np.testing.assert_array_equal(_run(s2, opt2, 10), rest)


def test_plateau_state_dict_round_trip():
    opt = _ng_opt()
    s = S.ReduceLROnPlateau(opt, patience=1)
    for m in [1.0, 1.0, 1.0]:
        s.step(m)
    sd = s.state_dict()
    assert sd["num_bad_epochs"] == 0 and sd["best"] == 1.0
    assert sd["_last_lr"][0] == pytest.approx(0.01)
    s2 = S.ReduceLROnPlateau(_ng_opt(), patience=1)
    s2.load_state_dict(sd)
    assert s2.get_last_lr() == s.get_last_lr()


def test_scheduler_errors():
    opt = ng.optim.SGD([ng.zeros(2, requires_grad=True)], lr=lambda t: 0.1)
    with pytest.raises(TypeError, match="callable"):
        S.StepLR(opt, 2)
    opt = _ng_opt()
    s = S.OneCycleLR(opt, max_lr=1.0, total_steps=3)
    for _ in range(3):
        s.step()
    with pytest.raises(ValueError, match="total_steps"):
        s.step()
    with pytest.raises(ValueError, match="neither momentum nor betas"):
        S.OneCycleLR(_ng_opt("Adagrad"), max_lr=1.0, total_steps=3)
    with pytest.raises(TypeError, match="not an Optimizer"):
        S.ExponentialLR(object(), 0.9)


# --- against PyTorch ------------------------------------------------------------------------

def _torch_opt(torch, cls="SGD", **kw):
    ps = [[torch.zeros(3, requires_grad=True)], [torch.zeros(2, requires_grad=True)]]
    return getattr(torch.optim, cls)([{"params": ps[0]}, {"params": ps[1], "lr": 0.05}],
                                     lr=0.1, **kw)


def _pair(torch, make_ng, make_torch, cls="SGD", n=60, metrics=None, **kw):
    o1, o2 = _ng_opt(cls, **kw), _torch_opt(torch, cls, **kw)
    a = _run(make_ng(o1), o1, n, metrics)
    b = _run(make_torch(o2), o2, n, metrics)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    return o1, o2


CASES = {
    "step": (lambda o: S.StepLR(o, 7, 0.5), lambda T, o: T.StepLR(o, 7, 0.5)),
    "multistep": (lambda o: S.MultiStepLR(o, [5, 12, 12, 30], 0.3),
                  lambda T, o: T.MultiStepLR(o, [5, 12, 12, 30], 0.3)),
    "exponential": (lambda o: S.ExponentialLR(o, 0.95), lambda T, o: T.ExponentialLR(o, 0.95)),
    "inverse_sqrt": (lambda o: S.InverseSqrtLR(o),
                     lambda T, o: T.LambdaLR(o, lambda e: 1 / math.sqrt(e + 1))),
    "cosine": (lambda o: S.CosineAnnealingLR(o, 25, eta_min=0.001),
               lambda T, o: T.CosineAnnealingLR(o, 25, eta_min=0.001)),
    "warmup_constant": (lambda o: S.LinearWarmup(o, 10, 0.1),
                        lambda T, o: T.LinearLR(o, 0.1, total_iters=10)),
    "warmup_step": (lambda o: S.LinearWarmup(S.StepLR(o, 7, 0.5), 10, 0.2),
                    lambda T, o: T.ChainedScheduler([T.LinearLR(o, 0.2, total_iters=10),
                                                     T.StepLR(o, 7, 0.5)])),
    "warmup_multistep": (lambda o: S.LinearWarmup(S.MultiStepLR(o, [3, 20], 0.1), 5),
                         lambda T, o: T.ChainedScheduler([T.LinearLR(o, 1 / 3, total_iters=5),
                                                          T.MultiStepLR(o, [3, 20], 0.1)])),
    "warmup_exponential": (lambda o: S.LinearWarmup(S.ExponentialLR(o, 0.97), 8, 0.5),
                           lambda T, o: T.ChainedScheduler([T.LinearLR(o, 0.5, total_iters=8),
                                                            T.ExponentialLR(o, 0.97)])),
    "warmup_cosine": (lambda o: S.LinearWarmup(S.CosineAnnealingLR(o, 40), 10, 0.1),
                      lambda T, o: T.ChainedScheduler([T.LinearLR(o, 0.1, total_iters=10),
                                                       T.CosineAnnealingLR(o, 40)])),
    "warmup_inverse_sqrt": (lambda o: S.LinearWarmup(S.InverseSqrtLR(o), 6, 0.25),
                            lambda T, o: T.LambdaLR(  # LambdaLR does not chain in PyTorch
                                o, lambda e: (0.25 + 0.75 * min(e, 6) / 6) / math.sqrt(e + 1))),
    # PyTorch's names for the rest of its schedules
    "lambda": (lambda o: S.LambdaLR(o, lambda e: 0.95 ** e),
               lambda T, o: T.LambdaLR(o, lambda e: 0.95 ** e)),
    "lambda_per_group": (lambda o: S.LambdaLR(o, [lambda e: 1 / (1 + e), lambda e: 0.9 ** e]),
                         lambda T, o: T.LambdaLR(o, [lambda e: 1 / (1 + e),
                                                     lambda e: 0.9 ** e])),
    "multiplicative": (lambda o: S.MultiplicativeLR(o, lambda e: 0.97 if e % 2 else 0.99),
                       lambda T, o: T.MultiplicativeLR(o, lambda e: 0.97 if e % 2 else 0.99)),
    "linear": (lambda o: S.LinearLR(o, 0.2, 0.9, 15),
               lambda T, o: T.LinearLR(o, 0.2, 0.9, 15)),
    "constant": (lambda o: S.ConstantLR(o, 0.4, 7), lambda T, o: T.ConstantLR(o, 0.4, 7)),
    "polynomial": (lambda o: S.PolynomialLR(o, 30, 2.0),
                   lambda T, o: T.PolynomialLR(o, 30, 2.0)),
    "warm_restarts": (lambda o: S.CosineAnnealingWarmRestarts(o, 10, eta_min=0.001),
                      lambda T, o: T.CosineAnnealingWarmRestarts(o, 10, eta_min=0.001)),
    "warm_restarts_growing": (lambda o: S.CosineAnnealingWarmRestarts(o, 5, 2),
                              lambda T, o: T.CosineAnnealingWarmRestarts(o, 5, 2)),
    "chained": (lambda o: S.ChainedScheduler([S.LinearLR(o, 0.2, total_iters=10),
                                              S.StepLR(o, 7, 0.5), S.ExponentialLR(o, 0.99)]),
                lambda T, o: T.ChainedScheduler([T.LinearLR(o, 0.2, total_iters=10),
                                                 T.StepLR(o, 7, 0.5), T.ExponentialLR(o, 0.99)])),
    "chained_constant_cosine": (lambda o: S.ChainedScheduler([S.ConstantLR(o, 0.5, 4),
                                                              S.CosineAnnealingLR(o, 30)]),
                                lambda T, o: T.ChainedScheduler([T.ConstantLR(o, 0.5, 4),
                                                                 T.CosineAnnealingLR(o, 30)])),
    "sequential": (lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=5),
                                                S.ExponentialLR(o, 0.9),
                                                S.ConstantLR(o, 0.5, 3)], [5, 30]),
                   lambda T, o: T.SequentialLR(o, [T.LinearLR(o, 0.1, total_iters=5),
                                                   T.ExponentialLR(o, 0.9),
                                                   T.ConstantLR(o, 0.5, 3)], [5, 30])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_matches_torch(name):
    torch = pytest.importorskip("torch")
    T = torch.optim.lr_scheduler
    make_ng, make_torch = CASES[name]
    _pair(torch, make_ng, lambda o: make_torch(T, o))


@pytest.mark.parametrize("kw", [dict(), dict(anneal_strategy="linear", pct_start=0.25),
                                dict(three_phase=True, div_factor=10.0, final_div_factor=100.0)])
@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_one_cycle_matches_torch_with_momentum(cls, kw):
    torch = pytest.importorskip("torch")
    T = torch.optim.lr_scheduler
    opt_kw = dict(momentum=0.9) if cls == "SGD" else {}
    o1, o2 = _pair(torch, lambda o: S.OneCycleLR(o, [1.0, 0.5], 50, **kw),
                   lambda o: T.OneCycleLR(o, [1.0, 0.5], 50, **kw), cls, n=49, **opt_kw)
    key = "momentum" if cls == "SGD" else "betas"
    for g1, g2 in zip(o1.param_groups, o2.param_groups):
        np.testing.assert_allclose(np.ravel(g1[key]), np.ravel(g2[key]), rtol=1e-12)


@pytest.mark.parametrize("kw", [dict(patience=2), dict(mode="max", factor=0.5, patience=1,
                                                      threshold_mode="abs", threshold=0.1),
                                dict(patience=0, cooldown=3, min_lr=[0.02, 0.001])])
def test_plateau_matches_torch(kw):
    torch = pytest.importorskip("torch")
    T = torch.optim.lr_scheduler
    rng = np.random.default_rng(0)
    metrics = list(np.minimum.accumulate(rng.uniform(0, 1, 60)) + rng.uniform(0, 0.05, 60))
    metrics[10:20] = [0.5] * 10
    _pair(torch, lambda o: S.ReduceLROnPlateau(o, **kw), lambda o: T.ReduceLROnPlateau(o, **kw),
          metrics=metrics)


def test_schedules_resume_from_their_state_dicts():
    """A schedule rebuilt and loaded from ``state_dict()`` (the functions given again) goes on
    with the same learning rates; the functions are not in the state, as in PyTorch."""
    for make in (lambda o: S.MultiplicativeLR(o, lambda e: 0.9),
                 lambda o: S.SequentialLR(o, [S.ConstantLR(o, 0.5, 3),
                                              S.CosineAnnealingWarmRestarts(o, 4, 2)], [6])):
        o1 = _ng_opt("SGD")
        s1 = make(o1)
        for _ in range(9):
            s1.step()
        state = s1.state_dict()
        assert not any(callable(v) for v in state.values())
        o2 = _ng_opt("SGD")
        s2 = make(o2)
        s2.load_state_dict(state)
        for _ in range(12):
            s1.step()
            s2.step()
            assert s1.get_last_lr() == s2.get_last_lr()


@pytest.mark.parametrize("kw", [dict(), dict(mode="triangular2", step_size_down=3),
                                dict(mode="exp_range", gamma=0.97),
                                dict(scale_fn=lambda x: 1 / (1 + x), scale_mode="iterations"),
                                dict(base_momentum=[0.7, 0.75], max_momentum=0.95)])
@pytest.mark.parametrize("cls", ["SGD", "Adam"])
def test_cyclic_matches_torch_with_momentum(cls, kw):
    torch = pytest.importorskip("torch")
    T = torch.optim.lr_scheduler
    opt_kw = dict(momentum=0.9) if cls == "SGD" else {}
    o1, o2 = _pair(torch, lambda o: S.CyclicLR(o, [0.01, 0.02], 0.1, 5, **kw),
                   lambda o: T.CyclicLR(o, [0.01, 0.02], 0.1, 5, **kw), cls, n=40, **opt_kw)
    key = "momentum" if cls == "SGD" else "betas"
    for g1, g2 in zip(o1.param_groups, o2.param_groups):
        np.testing.assert_allclose(np.ravel(g1[key]), np.ravel(g2[key]), rtol=1e-12)


def test_one_cycle_from_epochs_and_steps_per_epoch_as_torch():
    torch = pytest.importorskip("torch")
    lrs = []
    for lib in (torch, ng):
        p = torch.nn.Parameter(torch.ones(1)) if lib is torch else ng.nn.Parameter(ng.ones(1))
        opt = lib.optim.SGD([p], lr=0.1, momentum=0.9)
        sched = lib.optim.lr_scheduler.OneCycleLR(opt, 0.5, epochs=3, steps_per_epoch=4)
        seen = []
        for _ in range(12):
            opt.step()
            sched.step()
            seen.append(opt.param_groups[0]["lr"])
        lrs.append(seen)
    np.testing.assert_allclose(lrs[1], lrs[0], rtol=1e-12)
    with pytest.raises(ValueError, match="epochs and steps_per_epoch"):
        ng.optim.lr_scheduler.OneCycleLR(ng.optim.SGD([ng.nn.Parameter(ng.ones(1))], lr=0.1),
                                         0.5, epochs=3)
