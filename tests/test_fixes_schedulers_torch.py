"""Learning-rate schedules against PyTorch's: a param group added after the schedule was built,
non-integer arguments used as given, the arguments PyTorch refuses, and CyclicLR's state."""

import warnings

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _param(lib):
    if lib is torch:
        return torch.nn.Parameter(torch.zeros(3))
    return ng.nn.Parameter(ng.zeros(3))


def _trace(lib, build, steps=6, add_at=None, metric=None):
    """Each step's group lrs and ``get_last_lr()``; an error ends the trace with its class."""
    o = lib.optim.SGD([_param(lib)], lr=0.1, momentum=0.9)
    out = []
    try:
        s = build(lib.optim.lr_scheduler, o)
        for i in range(steps):
            if i == add_at:
                o.add_param_group({"params": [_param(lib)], "lr": 0.4})
            o.step()
            s.step(metric) if metric is not None else s.step()
            out.append(([float(g["lr"]) for g in o.param_groups],
                        [float(x) for x in s.get_last_lr()]))
    except Exception as e:  # noqa: BLE001 - the error is part of the behaviour compared
        out.append(type(e))
    return out


def _assert_same(got, want):
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        if isinstance(w, type):
            assert isinstance(g, type) and issubclass(g, w), (got, want)
        else:
            assert not isinstance(g, type), (got, want)
            assert g[0] == pytest.approx(w[0], rel=1e-9, abs=1e-12)
            assert g[1] == pytest.approx(w[1], rel=1e-9, abs=1e-12)


def _compare(build, **kw):
    want = _trace(torch, build, **kw)
    _assert_same(_trace(ng, build, **kw), want)
    return want


ADDED = {
    "StepLR": lambda S, o: S.StepLR(o, 2, 0.5),
    "MultiStepLR": lambda S, o: S.MultiStepLR(o, [1, 3], 0.5),
    "ExponentialLR": lambda S, o: S.ExponentialLR(o, 0.5),
    "CosineAnnealingLR": lambda S, o: S.CosineAnnealingLR(o, 4, 0.01),
    "LinearLR": lambda S, o: S.LinearLR(o, 0.5, 1.0, 3),
    "ConstantLR": lambda S, o: S.ConstantLR(o, 0.5, 3),
    "PolynomialLR": lambda S, o: S.PolynomialLR(o, 4, 2.0),
    "LambdaLR": lambda S, o: S.LambdaLR(o, lambda t: 0.5 ** t),
    "MultiplicativeLR": lambda S, o: S.MultiplicativeLR(o, lambda t: 0.5),
    "CosineAnnealingWarmRestarts": lambda S, o: S.CosineAnnealingWarmRestarts(o, 3, 2, 0.01),
    "CyclicLR": lambda S, o: S.CyclicLR(o, 0.01, 0.1, 2),
    "OneCycleLR": lambda S, o: S.OneCycleLR(o, 0.1, total_steps=10),
    "SequentialLR": lambda S, o: S.SequentialLR(
        o, [S.ConstantLR(o, 0.5, 2), S.ExponentialLR(o, 0.5)], [2]),
    "ChainedScheduler": lambda S, o: S.ChainedScheduler(
        [S.StepLR(o, 2, 0.5), S.ExponentialLR(o, 0.9)]),
}


@pytest.mark.parametrize("add_at", [0, 2])
@pytest.mark.parametrize("name", list(ADDED))
def test_group_added_after_the_schedule(name, add_at):
    """PyTorch's chainable schedules carry a new group on from its lr (get_last_lr lists it);
    those that need its initial lr or per-group arguments fail at that step, as there."""
    want = _compare(ADDED[name], add_at=add_at, steps=7)
    if name in ("StepLR", "ExponentialLR", "LinearLR", "ConstantLR", "PolynomialLR"):
        assert len(want[-1][1]) == 2  # torch scheduled the new group throughout


def test_group_added_reduced_by_plateau():
    def build(S, o):
        return S.ReduceLROnPlateau(o, patience=0, factor=0.5)
    for add_at in (0, 2):
        want = _compare(build, add_at=add_at, metric=1.0)
        assert want[-1][0][1] < 0.4  # the new group was reduced too


def test_group_added_plateau_list_min_lr():
    def build(S, o):
        return S.ReduceLROnPlateau(o, patience=0, factor=0.5, min_lr=[0.01])
    want = _compare(build, add_at=1, metric=1.0)
    assert want[-1] is RuntimeError
    for lib in (torch, ng):  # min_lrs set to one per group, as PyTorch's message asks
        o = lib.optim.SGD([_param(lib)], lr=0.1)
        s = lib.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5, min_lr=[0.01])
        o.add_param_group({"params": [_param(lib)], "lr": 0.4})
        s.min_lrs = [0.01, 0.3]
        for _ in range(2):
            s.step(1.0)
        assert [float(g["lr"]) for g in o.param_groups] == pytest.approx([0.05, 0.3])


def _float_cases():
    cases = {}
    for T in (4.5, 4.0, 2.5, 1.5, 0.5):
        cases[f"CosineAnnealingLR-{T}"] = lambda S, o, T=T: S.CosineAnnealingLR(o, T, 0.01)
        cases[f"StepLR-{T}"] = lambda S, o, T=T: S.StepLR(o, step_size=T, gamma=0.5)
        cases[f"PolynomialLR-{T}"] = lambda S, o, T=T: S.PolynomialLR(o, T, power=1.5)
        cases[f"LinearLR-{T}"] = lambda S, o, T=T: S.LinearLR(o, 0.25, 0.75, total_iters=T)
        cases[f"ConstantLR-{T}"] = lambda S, o, T=T: S.ConstantLR(o, 0.5, total_iters=T)
    cases["StepLR-0.3"] = lambda S, o: S.StepLR(o, step_size=0.3, gamma=0.5)
    cases["StepLR-0.75"] = lambda S, o: S.StepLR(o, step_size=0.75, gamma=0.5)
    for ms in ([2.5, 4.0], [0, 3, 3.0], [1.5, 2, 6]):
        cases[f"MultiStepLR-{ms}"] = lambda S, o, ms=ms: S.MultiStepLR(o, ms, 0.5)
    return cases


FLOATS = _float_cases()


def _run(lib, build, mode, steps=10):
    o = lib.optim.SGD([_param(lib)], lr=0.1)
    S = lib.optim.lr_scheduler
    s = build(S, o)
    if mode == "sequential":
        s = S.SequentialLR(o, [S.ExponentialLR(o, 0.9), s], [2])
    out = [float(o.param_groups[0]["lr"])]
    for i in range(1, steps + 1):
        o.step()
        s.step(i) if mode == "epoch" else s.step()
        out.append(float(o.param_groups[0]["lr"]))
    return out


@pytest.mark.parametrize("mode", ["step", "epoch", "sequential"])
@pytest.mark.parametrize("name", list(FLOATS))
def test_non_integer_arguments_used_as_given(name, mode):
    want = _run(torch, FLOATS[name], mode)
    assert _run(ng, FLOATS[name], mode) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_non_integer_arguments_examples():
    """The values PyTorch gives (where truncating the argument gave others)."""
    assert _run(ng, lambda S, o: S.StepLR(o, step_size=2.5, gamma=0.1), "step", 6) == \
        pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert _run(ng, lambda S, o: S.MultiStepLR(o, [2.5, 4.0], 0.1), "step", 5) == \
        pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    got = _run(ng, lambda S, o: S.CosineAnnealingLR(o, T_max=4.5), "step", 4)
    assert got[1] == pytest.approx(0.05 * (1 + np.cos(np.pi / 4.5)))


def test_polynomial_total_iters_zero_keeps_the_lr():
    want = _run(torch, lambda S, o: S.PolynomialLR(o, total_iters=0), "step")
    assert want == [0.1] * 11
    assert _run(ng, lambda S, o: S.PolynomialLR(o, total_iters=0), "step") == want
    with pytest.raises(ValueError, match="PolynomialLR: total_iters"):
        ng.optim.lr_scheduler.PolynomialLR(ng.optim.SGD([_param(ng)], lr=0.1), total_iters=-1)


def _refused(lib, make):
    o = lib.optim.SGD([_param(lib)], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError) as info:
        make(lib.optim.lr_scheduler, o)
    return str(info.value)


@pytest.mark.parametrize("kw, arg", [
    (dict(T_0=3.5), "T_0"), (dict(T_0=3.0), "T_0"), (dict(T_0=np.int64(3)), "T_0"),
    (dict(T_0=0), "T_0"), (dict(T_0=3, T_mult=2.0), "T_mult"), (dict(T_0=3, T_mult=0), "T_mult"),
    (dict(T_0=3, eta_min=None), "eta_min"), (dict(T_0=3, eta_min="0"), "eta_min"),
])
def test_warm_restarts_refuses_what_pytorch_refuses(kw, arg):
    def make(S, o):
        return S.CosineAnnealingWarmRestarts(o, **kw)
    _refused(torch, make)
    msg = _refused(ng, make)
    assert "CosineAnnealingWarmRestarts" in msg and arg in msg


def test_warm_restarts_accepts_what_pytorch_accepts():
    for kw in (dict(T_0=3, T_mult=2, eta_min=np.float64(0.01)), dict(T_0=2, eta_min=1)):
        def build(S, o, kw=kw):
            return S.CosineAnnealingWarmRestarts(o, **kw)
        _compare(build, steps=8)


@pytest.mark.parametrize("kw, arg", [
    (dict(total_steps=20, pct_start=0), "pct_start"),
    (dict(total_steps=20, pct_start=1), "pct_start"),
    (dict(total_steps=20, pct_start=1.5), "pct_start"),
    (dict(total_steps=20.0), "total_steps"), (dict(total_steps=np.int64(20)), "total_steps"),
    (dict(total_steps=0), "total_steps"),
    (dict(epochs=2.0, steps_per_epoch=5), "epochs"),
    (dict(epochs=2, steps_per_epoch=5.0), "steps_per_epoch"),
    (dict(epochs=2), "total_steps"),
])
def test_one_cycle_refuses_what_pytorch_refuses(kw, arg):
    def make(S, o):
        return S.OneCycleLR(o, 0.1, **kw)
    _refused(torch, make)
    msg = _refused(ng, make)
    assert "OneCycleLR" in msg and arg in msg


def test_one_cycle_total_steps_wins_over_epochs():
    def build(S, o):
        return S.OneCycleLR(o, 0.1, total_steps=20, epochs=3, steps_per_epoch=4)
    want = _compare(build, steps=20)
    assert len(want) == 20 and not isinstance(want[-1], type)
    for kw in (dict(total_steps=10, pct_start=0.0), dict(total_steps=10, pct_start=1.0),
               dict(epochs=2, steps_per_epoch=5)):
        def build(S, o, kw=kw):
            return S.OneCycleLR(o, 0.1, **kw)
        assert not isinstance(_compare(build, steps=9)[-1], type)


class _Scale:
    def __init__(self) -> None:
        self.k = 0.9

    def __call__(self, x: float) -> float:
        return self.k ** x


def test_cyclic_scale_fn_object_state_round_trips():
    got = {}
    for lib in (torch, ng):
        S = lib.optim.lr_scheduler
        o = lib.optim.SGD([_param(lib)], lr=0.1, momentum=0.9)
        fn = _Scale()
        s = S.CyclicLR(o, 0.01, 0.1, 3, scale_fn=fn)
        fn.k = 0.5
        sd = s.state_dict()
        saved = sd["scale_fn_custom" if lib is ng else "_scale_fn_custom"]
        fn2 = _Scale()
        o2 = lib.optim.SGD([_param(lib)], lr=0.1, momentum=0.9)
        s2 = S.CyclicLR(o2, 0.01, 0.1, 3, scale_fn=fn2)
        s2.load_state_dict(sd)  # PyTorch's takes the entry out of sd
        got[lib] = (fn2.k, saved)
        assert s2.scale_fn_custom is fn2 if lib is ng else s2._scale_fn_custom is fn2
    assert got[ng] == got[torch] == (0.5, {"k": 0.5})
    # a function is not saved (None), as PyTorch's
    o = ng.optim.SGD([_param(ng)], lr=0.1, momentum=0.9)
    s = ng.optim.lr_scheduler.CyclicLR(o, 0.01, 0.1, 3, scale_fn=lambda x: 1.0)
    sd = s.state_dict()
    assert sd["scale_fn_custom"] is None
    s.load_state_dict(sd)
    assert s.scale_fn_custom(3) == 1.0


@pytest.mark.parametrize("composite", ["ChainedScheduler", "SequentialLR"])
def test_plateau_in_a_composite_is_a_value_error(composite):
    for lib in (torch, ng):
        S = lib.optim.lr_scheduler
        o = lib.optim.SGD([_param(lib)], lr=0.1)
        parts = [S.StepLR(o, 3), S.ReduceLROnPlateau(o)]
        with warnings.catch_warnings(), pytest.raises(ValueError, match="ReduceLROnPlateau"):
            warnings.simplefilter("ignore")
            if composite == "ChainedScheduler":
                S.ChainedScheduler(parts)
            else:
                S.SequentialLR(o, parts, [2])
