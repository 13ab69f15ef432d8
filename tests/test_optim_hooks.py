"""Optimizer hooks, PyTorch's: step pre/post hooks (per optimiser and global), state-dict and
load-state-dict hooks, their order, arguments and handles; once per step() also for L-BFGS and
subclasses; under nodegrad.jit on every replay, lowered or not, with the bits of eager; and
pruning's step post-hook, which keeps pruned weights exactly zero after every step."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, prune
from nodegrad.optim import base as optim_base

torch = pytest.importorskip("torch")
torch_optimizer = pytest.importorskip("torch.optim.optimizer")


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _param(values=(1.0, -2.0, 3.0)):
    return ng.tensor(np.array(values), requires_grad=True)


# --- step hooks, eager ----------------------------------------------------------------------
def test_step_hooks_order_and_arguments_match_torch():
    got, want = [], []

    def hooks(opt, log, register_global):
        handles = [register_global[0](lambda o, a, k: log.append(("gpre", len(a), a[0] is o))),
                   opt.register_step_pre_hook(lambda o, a, k: log.append(("pre", len(a), k))),
                   opt.register_step_post_hook(lambda o, a, k: log.append(("post", len(a), k))),
                   register_global[1](lambda o, a, k: log.append(("gpost", len(a), k)))]
        return handles

    p, t = _param(), torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    o, to = ng.optim.SGD([p], lr=0.1), torch.optim.SGD([t], lr=0.1)
    hs = hooks(o, got, (ng.optim.register_optimizer_step_pre_hook,
                        ng.optim.register_optimizer_step_post_hook))
    ths = hooks(to, want, (torch_optimizer.register_optimizer_step_pre_hook,
                           torch_optimizer.register_optimizer_step_post_hook))
    try:
        p.grad, t.grad = ng.ones(3, dtype=ng.float64), torch.ones(3, dtype=torch.float64)
        o.step(), to.step()
        assert got == want == [("gpre", 1, True), ("pre", 1, {}), ("post", 1, {}),
                               ("gpost", 1, {})]
    finally:
        for h in hs + ths:
            h.remove()
    got.clear()
    o.step()
    assert got == []
    assert not optim_base._global_step_pre_hooks or all(
        h.__module__ != __name__ for h in optim_base._global_step_pre_hooks)


def test_pre_hook_may_replace_the_arguments_and_a_bad_return_is_an_error():
    p = _param()
    o = ng.optim.SGD([p], lr=0.5)

    def closure():
        o.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    h = o.register_step_pre_hook(lambda opt, args, kwargs: ((opt, closure), {}))
    loss = o.step()  # the hook passes the closure
    assert float(loss.item()) == 14.0
    np.testing.assert_array_equal(p.numpy(), [0.0, 0.0, 0.0])
    h.remove()
    o.register_step_pre_hook(lambda opt, args, kwargs: "no")
    with pytest.raises(RuntimeError, match="pre-hook must return None or a tuple"):
        o.step()


def test_hooks_run_once_per_step_for_lbfgs_and_for_a_subclass_calling_super():
    x = _param()
    lb = ng.optim.LBFGS([x], max_iter=5)
    n = []
    lb.register_step_pre_hook(lambda *a: n.append("pre"))
    lb.register_step_post_hook(lambda *a: n.append("post"))

    def closure():
        lb.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    lb.step(closure)
    assert n == ["pre", "post"]

    class Counting(ng.optim.SGD):
        def step(self, closure=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().step(closure)

    p = _param()
    o = Counting([p], lr=0.1)
    seen = []
    o.register_step_post_hook(lambda *a: seen.append(1))
    p.grad = ng.ones(3, dtype=ng.float64)
    o.step()
    assert seen == [1] and o.calls == 1
    np.testing.assert_allclose(p.numpy(), [0.9, -2.1, 2.9])


def test_a_hook_that_removes_itself_and_the_handle_as_a_context_manager():
    p = _param()
    o = ng.optim.Adam([p], lr=0.1)
    calls = []
    handle = None

    def once(opt, args, kwargs):
        calls.append(1)
        handle.remove()

    handle = o.register_step_post_hook(once)
    with o.register_step_pre_hook(lambda *a: calls.append(0)):
        p.grad = ng.ones(3, dtype=ng.float64)
        o.step()
        o.step()
    o.step()
    assert calls == [0, 1, 0]


def test_state_dict_hooks_match_torch():
    def run(lib, p):
        opt = lib.optim.SGD([p], lr=0.1, momentum=0.9)
        log = []
        opt.register_state_dict_pre_hook(lambda o: log.append("pre"))
        opt.register_state_dict_pre_hook(lambda o: log.append("pre0"), prepend=True)
        opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
        opt.register_state_dict_post_hook(lambda o, sd: log.append(sorted(sd)))
        opt.register_load_state_dict_pre_hook(
            lambda o, sd: log.append(("lpre", sd.pop("extra", None))))
        opt.register_load_state_dict_post_hook(lambda o: log.append("lpost"))
        sd = opt.state_dict()
        opt.load_state_dict(sd)
        return log, sd

    got, sd = run(ng, _param())
    want, tsd = run(torch, torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64,
                                        requires_grad=True))
    strip = [x if not isinstance(x, list) else [k for k in x if k != "step_count"] for x in got]
    assert strip == want == ["pre0", "pre", ["extra", "param_groups", "state"], ("lpre", 1),
                             "lpost"]
    assert "extra" in sd and "extra" in tsd  # the pre-hook saw a shallow copy


# --- under jit ------------------------------------------------------------------------------
def _model(seed=0):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(ng.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
             ng.tensor(rng.integers(0, 3, 8))) for _ in range(n)]


def _step_fn(model, opt, zero_first):
    def step(x, y):
        if zero_first:
            opt.zero_grad()
        loss = ng.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if not zero_first:
            opt.zero_grad()
        return loss
    return step


def _shrink(opt, args, kwargs):  # changes the parameters after each step
    with ng.no_grad():
        for g in opt.param_groups:
            for p in g["params"]:
                p.mul_(0.9)


def _clip(opt, args, kwargs):  # reads and changes .grad before each step
    ng.optim.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 0.05)


@pytest.mark.parametrize("zero_first", [False, True], ids=["zero_last", "zero_first"])
@pytest.mark.parametrize("make", [lambda ps: ng.optim.Adam(ps, lr=1e-2),
                                  lambda ps: ng.optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: ng.optim.Adadelta(ps, lr=1.0)],
                         ids=["adam", "sgd", "adadelta"])
def test_hooks_under_jit_give_the_bits_of_eager_also_when_added_after_tracing(make, zero_first):
    me, mj = _model(), _model()
    oe, oj = make(me.parameters()), make(mj.parameters())
    eager = _step_fn(me, oe, zero_first)
    jitted = ng.jit(_step_fn(mj, oj, zero_first), state=(mj, oj))
    for o in (oe, oj):
        o.register_step_post_hook(_shrink)
    batches = _batches(8)
    for i, (x, y) in enumerate(batches):
        if i == 3:  # added after the trace: every replay runs it too
            for o in (oe, oj):
                o.register_step_pre_hook(_clip)
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        for a, b in zip(me.parameters(), mj.parameters()):
            assert _same(a.numpy(), b.numpy())
            assert (a.grad is None) == (b.grad is None)
    assert jitted.traces == 1 and jitted.program.counts()["lowered_steps"] == 1


def test_hooks_run_on_every_replay_of_an_unlowered_step():
    """A step function that reads ``.grad`` keeps the generic replay of ``step()``: the hooks
    run there too, with eager's bits."""
    def make(model, opt):
        def step(x, y):
            opt.zero_grad()
            ng.nn.functional.cross_entropy(model(x), y).backward()
            gnorm = (model[0].weight.grad ** 2).sum()
            opt.step()
            return gnorm
        return step

    me, mj = _model(), _model()
    oe, oj = (ng.optim.Adam(m.parameters(), lr=1e-2) for m in (me, mj))
    eager, jitted = make(me, oe), ng.jit(make(mj, oj), state=(mj, oj))
    for i, (x, y) in enumerate(_batches(6)):
        if i == 2:
            for o in (oe, oj):
                o.register_step_post_hook(_shrink)
                o.register_step_pre_hook(_clip)
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        for a, b in zip(me.parameters(), mj.parameters()):
            assert _same(a.numpy(), b.numpy())
    assert jitted.traces == 1 and "lowered_steps" not in jitted.program.counts()


# --- pruning's post-hook --------------------------------------------------------------------
def _pruned_adam_run(jit: bool):
    ng.manual_seed(3)
    lin = nn.Linear(5, 4)
    opt = ng.optim.Adam(lin.parameters(), lr=0.1, betas=(0.9, 0.99))
    x = ng.randn(7, 5)

    def step(x):
        opt.zero_grad()
        loss = (lin(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    f = ng.jit(step, state=(lin, opt)) if jit else step
    for _ in range(3):  # momentum and second moments everywhere
        f(x)
    prune.l1_unstructured(lin, "weight", 0.5)  # no mask_optimizer_state: stale moments
    keep = lin.weight_mask.numpy() == 1
    out = []
    for _ in range(4):
        f(x)
        w = lin.weight._data  # storage, no forward or state_dict in between
        assert np.all(w[~keep] == 0)
        out.append(w.copy())
    return out


def test_pruned_weights_are_zero_in_storage_after_every_adam_step_eager_and_jit():
    eager, jitted = _pruned_adam_run(False), _pruned_adam_run(True)
    for a, b in zip(eager, jitted):
        assert _same(a, b)


def test_pruned_weights_stay_zero_under_muon_without_its_own_special_case():
    ng.manual_seed(1)
    lin = nn.Linear(6, 5, bias=False)
    prune.l1_unstructured(lin, "weight", 0.4)
    keep = lin.weight_mask.numpy() == 1
    opt = ng.optim.Muon(lin.parameters(), lr=0.05)
    assert "_step_bucket" not in type(opt).__dict__
    x = ng.randn(4, 6)
    for _ in range(3):
        opt.zero_grad()
        (lin(x) ** 2).sum().backward()
        opt.step()
        assert np.all(lin.weight._data[~keep] == 0) and np.any(lin.weight._data[keep] != 0)
