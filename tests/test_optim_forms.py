"""PyTorch's constructor forms of the optimisers and schedules: the implementation keywords
(``foreach``, ``capturable``, ``differentiable``), the positional orders, and resuming a
schedule with ``last_epoch=`` (the rates and parameters of an uninterrupted run, in float64)."""

import inspect
import warnings

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

from _optim_problem import (INIT, assert_same_trajectory, float64_default,  # noqa: E402,F401
                            grads_at)

STEPS = 40


# --- signatures ----------------------------------------------------------------------------------
def _torch_classes(mod, base):
    return [n for n, c in vars(mod).items() if inspect.isclass(c) and issubclass(c, base)
            and not n.startswith("_")]


def _params(cls):
    return [(k, v.kind, v.default) for k, v in inspect.signature(cls.__init__).parameters.items()
            if k != "self"]


@pytest.mark.parametrize("modname,name", [
    ("optim", n) for n in _torch_classes(torch.optim, torch.optim.Optimizer)] + [
    ("optim.lr_scheduler", n) for n in _torch_classes(torch.optim.lr_scheduler,
                                                      torch.optim.lr_scheduler.LRScheduler)] + [
    ("optim.swa_utils", "SWALR"), ("optim.swa_utils", "AveragedModel")])
def test_constructors_take_torchs_arguments_in_its_order(modname, name):
    """Every argument of PyTorch's constructor, with its kind (positional or keyword-only),
    default and place; nodegrad may add its own (``strict``, ``flat``) after them."""
    tmod, nmod = torch, ng
    for part in modname.split("."):
        tmod, nmod = getattr(tmod, part), getattr(nmod, part)
    if not hasattr(nmod, name):
        pytest.skip(f"nodegrad has no {name}")
    want = _params(getattr(tmod, name))
    names = {k for k, _, _ in want}
    got = [p for p in _params(getattr(nmod, name)) if p[0] in names]
    assert got == want


# --- the implementation keywords -----------------------------------------------------------------
def _run(lib, cls, args, kw, steps=STEPS):
    """The parameters after each step of ``cls(params, *args, **kw)`` on the shared problem."""
    if lib is torch:
        ps = [torch.tensor(a.copy(), requires_grad=True) for a in INIT]
    else:
        ps = [ng.tensor(a.copy(), requires_grad=True) for a in INIT]
    opt = getattr(lib.optim, cls)(ps, *args, **kw)
    traj = []
    for k in range(steps):
        host = [p.detach().numpy() for p in ps]
        for p, g in zip(ps, grads_at(host, k)):
            p.grad = torch.from_numpy(g) if lib is torch else ng.tensor(g)
        opt.step()
        traj.append([p.detach().numpy().copy() for p in ps])
    return traj, opt


FORMS = [
    ("SGD", dict(lr=0.05, momentum=0.9, foreach=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, foreach=False, differentiable=False)),
    ("Adam", dict(lr=0.01, foreach=True, capturable=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, foreach=False, capturable=True, fused=False)),
    ("AdamW", dict(lr=0.01, foreach=True, capturable=True, differentiable=False)),
    ("Adagrad", dict(lr=0.1, foreach=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, foreach=True, capturable=True)),
    ("Adadelta", dict(lr=1.0, foreach=True, capturable=True)),
    ("NAdam", dict(lr=0.01, foreach=True, capturable=True)),
    ("RAdam", dict(lr=0.01, foreach=True, capturable=True)),
    ("Adamax", dict(lr=0.01, foreach=True, capturable=True)),
    ("ASGD", dict(lr=0.01, t0=5, foreach=True, capturable=True)),
    ("Rprop", dict(lr=0.01, foreach=True, capturable=True)),
]


@pytest.mark.parametrize("cls,kw", FORMS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(FORMS)])
def test_foreach_and_capturable_keep_torchs_trajectory(cls, kw):
    """``foreach`` only picks PyTorch's implementation and ``capturable`` is for CUDA graphs:
    nodegrad accepts both and follows PyTorch's trajectory (capturable off on PyTorch's CPU)."""
    ours, opt = _run(ng, cls, (), kw)
    theirs, _ = _run(torch, cls, (), {k: v for k, v in kw.items() if k != "capturable"})
    assert_same_trajectory(ours, theirs)
    assert opt.foreach is kw["foreach"]
    assert opt.capturable is kw.get("capturable", False)


POSITIONAL = [
    ("Adagrad", (0.1, 0.01, 0.1, 0.1, 1e-8, True)),                 # foreach
    ("Adadelta", (0.5, 0.95, 1e-5, 0.1, False)),                     # foreach
    ("Adamax", (0.01, (0.8, 0.99), 1e-6, 0.1, True)),                # foreach
    ("NAdam", (0.01, (0.9, 0.999), 1e-8, 0.1, 4e-3, True)),          # decoupled_weight_decay
    ("RAdam", (0.01, (0.9, 0.999), 1e-8, 0.1, True)),                # decoupled_weight_decay
    ("ASGD", (0.01, 1e-4, 0.75, 5, 0.1, None, True)),                # foreach, maximize
    ("RMSprop", (0.01, 0.9, 1e-8, 0.1, 0.5, True, False, None, True)),  # ..., maximize
]


@pytest.mark.parametrize("cls,args", POSITIONAL, ids=[c for c, _ in POSITIONAL])
def test_positional_arguments_land_where_torch_puts_them(cls, args):
    ours, _ = _run(ng, cls, args, {})
    theirs, _ = _run(torch, cls, args, {})
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta",
                                 "NAdam", "RAdam", "Adamax", "ASGD", "Rprop"])
def test_differentiable_steps_are_refused_with_the_reason(cls):
    p = ng.ones(3, requires_grad=True)
    with pytest.raises(NotImplementedError, match=rf"{cls}\(differentiable=True\).*in place"):
        getattr(ng.optim, cls)([p], lr=0.1, differentiable=True)
    assert getattr(ng.optim, cls)([p], lr=0.1, differentiable=False).differentiable is False


def test_bad_implementation_keywords_name_the_optimizer():
    p = ng.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="Adam: `fused` and `foreach` cannot be `True`"):
        ng.optim.Adam([p], fused=True, foreach=True)
    with pytest.raises(TypeError, match="SGD: foreach must be None, True or False, got 'yes'"):
        ng.optim.SGD([p], lr=0.1, foreach="yes")
    with pytest.raises(TypeError, match="NAdam: capturable must be True or False, got None"):
        ng.optim.NAdam([p], capturable=None)
    with pytest.raises(TypeError, match="capturable"):  # PyTorch's SGD has no capturable
        ng.optim.SGD([p], lr=0.1, capturable=True)


def test_the_keywords_stay_out_of_the_state_dict():
    """Older state dicts (and PyTorch's, which carry them per group) still load."""
    p = ng.ones(3, requires_grad=True)
    opt = ng.optim.Adam([p], foreach=True, capturable=True)
    assert "foreach" not in opt.param_groups[0] and "capturable" not in opt.defaults
    p.grad = ng.ones(3)
    opt.step()
    sd = opt.state_dict()
    ng.optim.Adam([p]).load_state_dict(sd)


# --- schedules resumed with last_epoch= ---------------------------------------------------------
SCHEDULES = {
    "StepLR": lambda L, o, **k: L.StepLR(o, 3, 0.5, **k),
    "StepLR_on_a_decay_step": lambda L, o, **k: L.StepLR(o, 5, 0.5, **k),
    "MultiStepLR": lambda L, o, **k: L.MultiStepLR(o, [2, 5, 7], 0.5, **k),
    "ConstantLR": lambda L, o, **k: L.ConstantLR(o, 0.5, 5, **k),
    "LinearLR": lambda L, o, **k: L.LinearLR(o, 0.2, 1.0, 7, **k),
    "ExponentialLR": lambda L, o, **k: L.ExponentialLR(o, 0.9, **k),
    "PolynomialLR": lambda L, o, **k: L.PolynomialLR(o, 8, 2.0, **k),
    "CosineAnnealingLR": lambda L, o, **k: L.CosineAnnealingLR(o, 7, 0.01, **k),
    "LambdaLR": lambda L, o, **k: L.LambdaLR(o, lambda t: 1 / (t + 1), **k),
    "MultiplicativeLR": lambda L, o, **k: L.MultiplicativeLR(o, lambda t: 0.9, **k),
    "CosineAnnealingWarmRestarts": lambda L, o, **k: L.CosineAnnealingWarmRestarts(
        o, 3, 2, 0.01, **k),
    "CyclicLR": lambda L, o, **k: L.CyclicLR(o, 0.01, 0.1, 3, **k),
    "CyclicLR_exp_range": lambda L, o, **k: L.CyclicLR(o, [0.01, 0.02], 0.1, 2, 3, "exp_range",
                                                       0.9, **k),
    "OneCycleLR": lambda L, o, **k: L.OneCycleLR(o, 0.5, 12, **k),
    "OneCycleLR_three_phase": lambda L, o, **k: L.OneCycleLR(o, [0.5, 0.2], 12, pct_start=0.4,
                                                             three_phase=True, **k),
    "SequentialLR": lambda L, o, **k: L.SequentialLR(
        o, [L.LinearLR(o, 0.2, 1.0, 3), L.ExponentialLR(o, 0.9)], [3], **k),
}
# PyTorch's own resume multiplies the group's current lr once more on these (its chainable
# forms), or restarts the sequence: there nodegrad gives the uninterrupted run's rates instead
TORCH_RESUME_DIFFERS = {"StepLR_on_a_decay_step", "MultiStepLR", "ConstantLR", "SequentialLR"}


def _optimizer(lib, ps, momentum_opt: str):
    groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}]
    if momentum_opt == "Adam":
        return lib.optim.Adam(groups, lr=0.1)
    return lib.optim.SGD(groups, lr=0.1, momentum=0.9)


def _train(lib, make, momentum_opt, steps=10, resume_at=None):
    """(lr, momentum or beta1) of each group and the parameters after every step; with
    ``resume_at`` the optimizer and schedule are rebuilt there, the schedule with
    ``last_epoch=resume_at - 1`` and the optimizer from its state dict."""
    mk = torch.tensor if lib is torch else ng.tensor
    ps = [mk(a.copy(), requires_grad=True) for a in INIT]
    opt = _optimizer(lib, ps, momentum_opt)
    sched = make(lib.optim.lr_scheduler, opt)
    out = []
    for k in range(steps):
        if k == resume_at:
            saved = opt.state_dict()
            opt = _optimizer(lib, ps, momentum_opt)
            opt.load_state_dict(saved)
            sched = make(lib.optim.lr_scheduler, opt, last_epoch=k - 1)
        host = [p.detach().numpy() for p in ps]
        for p, g in zip(ps, grads_at(host, k)):
            p.grad = torch.from_numpy(g) if lib is torch else ng.tensor(g)
        opt.step()
        sched.step()
        hyper = [(g["lr"], g["betas"][0] if "betas" in g else g["momentum"])
                 for g in opt.param_groups]
        out.append((hyper, [p.detach().numpy().copy() for p in ps]))
    return out


def _assert_close(a, b, tol=1e-12):
    for k, ((ha, pa), (hb, pb)) in enumerate(zip(a, b)):
        np.testing.assert_allclose(np.array(ha), np.array(hb), rtol=tol, atol=1e-15,
                                   err_msg=f"rates after step {k}")
        for x, y in zip(pa, pb):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-13,
                                       err_msg=f"parameters after step {k}")


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("momentum_opt", ["SGD", "Adam"])
def test_a_schedule_rebuilt_with_last_epoch_continues_the_run(name, momentum_opt):
    """10 steps straight, or 5, then optimizer and schedule rebuilt (``initial_lr`` from the
    optimizer's state dict, ``last_epoch=4``) and 5 more: the same rates, momenta and
    parameters, and PyTorch's (its uninterrupted run; its resumed one where that agrees)."""
    make = SCHEDULES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight = _train(ng, make, momentum_opt)
        resumed = _train(ng, make, momentum_opt, resume_at=5)
        torch_straight = _train(torch, make, momentum_opt)
        torch_resumed = None if name in TORCH_RESUME_DIFFERS else _train(
            torch, make, momentum_opt, resume_at=5)
    assert [h for h, _ in resumed] == [h for h, _ in straight]
    for (_, a), (_, b) in zip(resumed, straight):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    _assert_close(straight, torch_straight)
    if torch_resumed is not None:
        _assert_close(resumed, torch_resumed)


def test_torchs_own_resume_multiplies_twice_on_a_decay_step():
    """Why the cases above compare with PyTorch's uninterrupted run there: its StepLR resumed
    on a decay step decays again (a record of the difference, not a wish)."""
    make = SCHEDULES["StepLR_on_a_decay_step"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _train(torch, make, "SGD", resume_at=5)
    ours = _train(ng, make, "SGD", resume_at=5)
    assert theirs[5][0][0][0] == pytest.approx(0.1 * 0.5 ** 2)  # the step after the resume
    assert ours[5][0][0][0] == pytest.approx(0.1 * 0.5)


@pytest.mark.parametrize("name", sorted(set(SCHEDULES) - {"SequentialLR", "CyclicLR_exp_range",
                                                            "OneCycleLR_three_phase"}))
def test_resuming_without_initial_lr_raises_torchs_key_error(name):
    make = SCHEDULES[name]
    errors = []
    for lib in (torch, ng):
        mk = torch.zeros if lib is torch else ng.zeros
        opt = lib.optim.SGD([mk(2, requires_grad=True)], lr=0.1, momentum=0.9)
        if name.startswith("OneCycleLR"):
            opt.param_groups[0].update(max_lr=0.5, min_lr=1e-5, max_momentum=0.95,
                                       base_momentum=0.85)
        with pytest.raises(KeyError) as e:
            make(lib.optim.lr_scheduler, opt, last_epoch=3)
        errors.append(str(e.value))
    assert errors[1] == errors[0]


def test_one_cycle_keeps_torchs_group_entries_and_needs_them_to_resume():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = []
        for lib in (torch, ng):
            mk = torch.zeros if lib is torch else ng.zeros
            opt = lib.optim.Adam([mk(2, requires_grad=True)], lr=0.1)
            lib.optim.lr_scheduler.OneCycleLR(opt, 0.5, 10, base_momentum=[0.8],
                                              max_momentum=0.9)
            groups.append({k: v for k, v in opt.param_groups[0].items()
                           if k in ("initial_lr", "max_lr", "min_lr", "max_momentum",
                                    "base_momentum", "betas", "lr")})
    assert groups[1] == pytest.approx(groups[0])
    opt = ng.optim.Adam([ng.zeros(2, requires_grad=True)], lr=0.1)
    opt.param_groups[0]["initial_lr"] = 0.02
    with pytest.raises(KeyError, match=r"lacks \['max_lr', 'min_lr', 'max_momentum'"):
        ng.optim.lr_scheduler.OneCycleLR(opt, 0.5, 10, last_epoch=3)


def test_last_epoch_must_be_minus_one_or_a_step_index():
    opt = ng.optim.SGD([ng.zeros(2, requires_grad=True)], lr=0.1)
    for bad in (-2, 1.5, "3", True):
        with pytest.raises(ValueError, match=r"StepLR: last_epoch must be -1 .* got"):
            ng.optim.lr_scheduler.StepLR(opt, 3, last_epoch=bad)


def _lrs(lib, build, steps, resume=None):
    opt_t = lib.optim.SGD([(torch.zeros if lib is torch else ng.zeros)(2, requires_grad=True)],
                          lr=0.1, momentum=0.9)
    s = build(lib.optim.lr_scheduler, opt_t, -1)
    out = []
    for k in range(steps):
        if k == resume:
            saved = opt_t.state_dict()
            opt_t = lib.optim.SGD([(torch.zeros if lib is torch else ng.zeros)(
                2, requires_grad=True)], lr=0.1, momentum=0.9)
            opt_t.load_state_dict(saved)
            s = build(lib.optim.lr_scheduler, opt_t, k - 1)
        opt_t.step()
        s.step()
        out.append(opt_t.param_groups[0]["lr"])
    return out


def test_a_chained_schedule_resumes_with_its_schedules():
    """PyTorch's ChainedScheduler has no last_epoch: its schedules resume, and it with them."""
    def build(L, o, at):
        return L.ChainedScheduler([L.LinearLR(o, 0.2, 1.0, 6, last_epoch=at),
                                   L.ExponentialLR(o, 0.9, last_epoch=at)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _lrs(torch, build, 12)
        theirs = _lrs(torch, build, 12, resume=5)
    ours, ours_resumed = _lrs(ng, build, 12), _lrs(ng, build, 12, resume=5)
    assert ours_resumed == ours
    np.testing.assert_allclose(ours, want, rtol=1e-12)
    np.testing.assert_allclose(ours_resumed, theirs, rtol=1e-12)
    opt = ng.optim.SGD([ng.zeros(2, requires_grad=True)], lr=0.1)
    a = ng.optim.lr_scheduler.StepLR(opt, 2)
    a.step()
    with pytest.raises(ValueError, match="different numbers of steps"):
        ng.optim.lr_scheduler.ChainedScheduler([a, ng.optim.lr_scheduler.ExponentialLR(opt,
                                                                                        0.9)])


def test_a_warm_up_resumes_with_the_schedule_it_wraps():
    S = ng.optim.lr_scheduler

    def build(L, o, at):
        return S.LinearWarmup(S.StepLR(o, 4, 0.5, last_epoch=at), 6)

    assert _lrs(ng, build, 12, resume=5) == _lrs(ng, build, 12)
    opt = ng.optim.SGD([ng.zeros(2, requires_grad=True)], lr=0.1)
    opt.param_groups[0]["initial_lr"] = 0.1
    w = S.LinearWarmup(opt, 6, 0.5, last_epoch=2)
    assert w.last_epoch == 3 and w.get_last_lr() == [pytest.approx(0.1 * (0.5 + 0.5 * 3 / 6))]


def test_warm_restarts_take_torchs_fractional_epochs():
    """``step(epoch + i / iters)``, then a plain ``step()`` one on from there (PyTorch's)."""
    epochs = [0.0, 0.5, 1.25, 2.0, 3.5, 4.0, 6.75, None, None, 9.0, 10.0, 21.5, None, 3.0, None]
    for mult in (1, 2):
        got = []
        for lib in (torch, ng):
            opt = lib.optim.SGD([(torch.zeros if lib is torch else ng.zeros)(
                2, requires_grad=True)], lr=0.1)
            s = lib.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, 3, mult, 0.01)
            seq = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for e in epochs:
                    opt.step()
                    s.step(e)
                    seq.append((opt.param_groups[0]["lr"], s.last_epoch, s.T_cur, s.T_i))
            got.append(seq)
        np.testing.assert_allclose(np.array(got[1], float), np.array(got[0], float),
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="non-negative epoch"):
        s.step(-1)


def test_warm_restarts_resume_in_their_true_cycle():
    """Resumed past the second restart (T_mult=2), the schedule is in its third cycle; PyTorch's
    resume restarts the cycle count, so compare with its uninterrupted run."""
    def build(L, o, at):
        return L.CosineAnnealingWarmRestarts(o, 2, 2, 0.01, last_epoch=at)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _lrs(torch, build, 20)
    ours = _lrs(ng, build, 20, resume=12)
    assert ours == _lrs(ng, build, 20)
    np.testing.assert_allclose(ours, want, rtol=1e-12)


def test_swalr_resumes_its_anneal():
    """SWALR anneals from the groups' current lr (not a closed form): resumed with its state
    loaded, it goes on as the uninterrupted run, which is PyTorch's."""
    def build(L, o, at):
        if L is ng.optim.lr_scheduler or L is torch.optim.lr_scheduler:
            L = ng.optim.swa_utils if L is ng.optim.lr_scheduler else torch.optim.swa_utils
        return L.SWALR(o, 0.01, anneal_epochs=6, last_epoch=at)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _lrs(torch, build, 12)
    ours = _lrs(ng, build, 12)
    np.testing.assert_allclose(ours, want, rtol=1e-12)
    np.testing.assert_allclose(_lrs(ng, build, 12, resume=3), ours, rtol=1e-12)


def test_torchs_old_base_class_name_still_subclasses():
    class Halving(ng.optim.lr_scheduler._LRScheduler):
        def lr_at(self, t):
            return [b / 2 ** t for b in self.base_lrs]

    opt = ng.optim.SGD([ng.zeros(2, requires_grad=True)], lr=0.4)
    s = Halving(opt)
    s.step()
    assert isinstance(s, ng.optim.lr_scheduler.LRScheduler) and s.get_last_lr() == [0.2]
