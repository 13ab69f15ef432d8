"""jit: an optimiser's step lowered onto the program's own gradient arrays (no ``.grad`` round
trip, no ``zero_grad`` effect) gives the same bits as eager; schedules, hyperparameters changed
between calls, gradients set by hand, new parameter groups and a resumed run all behave as
eager, through the check the program makes at the start of each call. A repeated call
reuses its program without building the signature, under the same conditions."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn


def _same(a, b) -> bool:
    """The same bits (a zero's sign included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _model(seed=0):
    ng.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(ng.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
             ng.tensor(rng.integers(0, 3, 8))) for _ in range(n)]


def _step_fn(model, opt, zero_first=False):
    def step(x, y):
        if zero_first:
            opt.zero_grad()
        loss = ng.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if not zero_first:
            opt.zero_grad(set_to_none=True)
        return loss
    return step


def _pair(make_opt, zero_first=False, fuse=False):
    """An eager and a jitted step over two copies of one model."""
    me, mj = _model(), _model()
    oe, oj = make_opt(me.parameters()), make_opt(mj.parameters())
    eager = _step_fn(me, oe, zero_first)
    jitted = ng.jit(_step_fn(mj, oj, zero_first), state=(mj, oj), fuse=fuse)
    return (me, oe, eager), (mj, oj, jitted)


def _assert_same_models(me, mj):
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n


OPTS = {
    "sgd": lambda ps: ng.optim.SGD(ps, lr=0.1),
    "sgd_momentum_nesterov_wd": lambda ps: ng.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                        weight_decay=1e-2),
    "adam": lambda ps: ng.optim.Adam(ps, lr=1e-2),
    "adam_fused": lambda ps: ng.optim.Adam(ps, lr=1e-2, fused=True),
    "adamw_amsgrad": lambda ps: ng.optim.AdamW(ps, lr=1e-2, amsgrad=True),
    "rmsprop": lambda ps: ng.optim.RMSprop(ps, lr=1e-2, momentum=0.5),
    "nadam": lambda ps: ng.optim.NAdam(ps, lr=1e-2),
}


@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("zero_first", [False, True], ids=["zero_last", "zero_first"])
def test_lowered_step_equals_eager(opt, zero_first):
    if opt == "adam_fused":
        pytest.importorskip("numba")
    (me, oe, eager), (mj, oj, jitted) = _pair(OPTS[opt], zero_first)
    for x, y in _batches(6):
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        _assert_same_models(me, mj)
        for pe, pj in zip(me.parameters(), mj.parameters()):  # .grad as eager leaves it
            assert (pe.grad is None) == (pj.grad is None)
            if pe.grad is not None:
                assert _same(pe.grad.numpy(), pj.grad.numpy())
    assert jitted.traces == 1
    c = jitted.program.counts()
    assert c["lowered_steps"] == 1
    if not zero_first:  # nothing reads .grad: no stores, no zero_grad, one effect (the step)
        assert c["effect"] == 1 and c["dropped_grad_stores"] == 4
    assert oe.state_dict()["step_count"] == oj.state_dict()["step_count"] == 6


def test_a_schedule_and_a_changed_learning_rate_take_effect():
    def make_opt(ps):
        return ng.optim.SGD(ps, lr=lambda t: 0.1 / t, momentum=0.9)  # a callable of the step

    (me, oe, eager), (mj, oj, jitted) = _pair(make_opt)
    batches = _batches(8)
    for x, y in batches[:3]:
        eager(x, y), jitted(x, y)
    for o in (oe, oj):  # a plain number now, changed between calls
        o.param_groups[0]["lr"] = 0.05
    for x, y in batches[3:5]:
        eager(x, y), jitted(x, y)
    se, sj = (ng.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (oe, oj))
    for x, y in batches[5:]:
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        se.step(), sj.step()
    _assert_same_models(me, mj)
    assert jitted.traces == 1 and jitted.program.counts()["lowered_steps"] == 1


def test_a_gradient_set_between_calls_is_added_to_as_in_eager():
    (me, oe, eager), (mj, oj, jitted) = _pair(lambda ps: ng.optim.SGD(ps, lr=0.1))
    batches = _batches(4)
    for x, y in batches[:2]:
        eager(x, y), jitted(x, y)
    for m in (me, mj):  # the program assumed None: this call takes the unlowered program
        w = m[0].weight
        w.grad = ng.ones(*w.shape)
    for x, y in batches[2:]:
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        _assert_same_models(me, mj)
        assert mj[0].weight.grad is None
    assert jitted.traces == 1
    assert "lowered_steps" not in jitted.program.counts()  # it runs unlowered from then on
    assert "accumulate_grad" in str(jitted.program)


def test_a_parameter_group_added_between_calls_is_stepped():
    (me, oe, eager), (mj, oj, jitted) = _pair(lambda ps: ng.optim.Adam(list(ps)[:2], lr=1e-2))
    batches = _batches(5)
    for x, y in batches[:2]:
        eager(x, y), jitted(x, y)
    oe.add_param_group({"params": list(me.parameters())[2:], "lr": 0.1})
    oj.add_param_group({"params": list(mj.parameters())[2:], "lr": 0.1})
    for x, y in batches[2:]:
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        _assert_same_models(me, mj)
    assert all(p.grad is None for p in mj.parameters())


def test_a_resumed_jitted_run_is_bit_identical(tmp_path):
    from nodegrad.train import checkpoint as C

    def make_opt(ps):
        return ng.optim.Adam(ps, lr=1e-2)

    batches = _batches(10)
    full = _model()
    of = make_opt(full.parameters())
    sf = ng.jit(_step_fn(full, of), state=(full, of), fuse=False)
    for x, y in batches:
        sf(x, y)

    first = _model()
    o1 = make_opt(first.parameters())
    s1 = ng.jit(_step_fn(first, o1), state=(first, o1), fuse=False)
    for x, y in batches[:4]:
        s1(x, y)
    C.save_checkpoint(tmp_path / "ck.safetensors", first, {"optimizer": o1.state_dict()})
    del first, o1, s1  # the run is killed here

    resumed = _model(seed=123)  # other weights, overwritten by the checkpoint
    o2 = make_opt(resumed.parameters())
    state = C.load_checkpoint(tmp_path / "ck.safetensors", resumed)
    o2.load_state_dict(state["optimizer"])
    s2 = ng.jit(_step_fn(resumed, o2), state=(resumed, o2), fuse=False)
    for x, y in batches[4:]:
        s2(x, y)
    _assert_same_models(full, resumed)
    assert of.state_dict()["step_count"] == o2.state_dict()["step_count"] == 10
    assert s2.program.counts()["lowered_steps"] == 1


def test_clipped_gradients_keep_the_generic_step():
    # the gradients are read back from .grad (clipping), so the step stays a replayed effect
    def make_step(model, opt):
        def step(x, y):
            loss = ng.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            ng.optim.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            opt.zero_grad()
            return loss
        return step

    me, mj = _model(), _model()
    oe, oj = ng.optim.SGD(me.parameters(), lr=0.1), ng.optim.SGD(mj.parameters(), lr=0.1)
    eager, jitted = make_step(me, oe), ng.jit(make_step(mj, oj), state=(mj, oj), fuse=False)
    for x, y in _batches(4):
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
    _assert_same_models(me, mj)
    assert "lowered_steps" not in jitted.program.counts()


def test_model_zero_grad_and_a_printed_lowered_program():
    ng.manual_seed(0)
    model = _model()
    opt = ng.optim.SGD(model.parameters(), lr=0.1)

    @ng.jit(state=(model, opt), fuse=False)
    def step(x, y):
        loss = ng.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        model.zero_grad()
        return loss

    for x, y in _batches(3):
        step(x, y)
    text = str(step.program)
    assert "check: .grad is None on 4 parameters" in text
    assert "accumulate_grad" not in text and "zero_grad" not in text
    assert all(p.grad is None for p in model.parameters())


# --- the call path: a repeated signature skips building the cache key --------------------------
def test_a_repeated_call_checks_what_the_signature_checks():
    jf = ng.jit(lambda x, y: x * 2.0 + y, fuse=False)
    x, y = ng.randn(3), ng.randn(3)
    for _ in range(3):
        assert _same(jf(x, y).numpy(), (x * 2.0 + y).numpy())
    assert jf.traces == 1
    assert _same(jf(x, x).numpy(), (x * 2.0 + x).numpy())  # one array twice: its own program
    assert jf.traces == 2
    jf(x, y)
    jf(ng.randn(4), ng.randn(4))  # another shape
    jf(x.astype(ng.float64), y.astype(ng.float64))  # another dtype
    assert jf.traces == 4
    w = ng.randn(3, requires_grad=True)  # the caller differentiates: a forward and backward pair
    out = jf(w, y)
    assert out.requires_grad and jf.traces == 5
    np.testing.assert_array_equal(jf(w, y).numpy(), out.numpy())  # replayed, still a graph
    assert jf(w, y).requires_grad and jf.traces == 5
    with ng.no_grad():
        assert not jf(w, y).requires_grad
    jf.clear_cache()
    jf(x, y)
    assert jf.traces == 7


def test_a_repeated_call_follows_train_and_eval():
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    step = ng.jit(lambda x: model(x), state=model, fuse=False)
    x = ng.randn(3, 4)
    with ng.no_grad():
        for _ in range(3):
            step(x)
        trained = step.program
        model.eval()
        assert _same(step(x).numpy(), model(x).numpy())
        assert step.program is not trained
        model.train()
        step(x)
        assert step.program is trained
    assert step.traces == 2


def test_a_loaded_tensor_reads_its_current_value_and_checks_its_shape():
    w = ng.randn(3)
    jf = ng.jit(lambda x: x * w, fuse=False)
    x = ng.randn(3)
    for _ in range(2):
        jf(x)
    w.data = w.data * 2.0  # a new array of the same shape: read afresh
    assert _same(jf(x).numpy(), (x * w).numpy())
    w.data = ng.randn(4).numpy()
    with pytest.raises(ng.errors.JitError, match=r"changed from shape \(3,\)"):
        jf(x)


def test_relu_grad_replays_with_the_same_bits():
    def f(x, g):
        y = ng.relu(x)
        return ng.vjp(ng.relu, x)[1](g)[0] * 1.0 + y

    jf = ng.jit(f, fuse=False)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, g = (ng.tensor(rng.standard_normal((6, 5)).astype(np.float32)) for _ in range(2))
        assert _same(jf(x, g).numpy(), f(x, g).numpy())
    assert "relu_grad" in str(jf.program)


class _Tied(nn.Module):
    """A weight used twice, a parameter the loss never reaches, dropout."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Linear(6, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        h = self.a(ng.relu(self.a(x)))  # the same weight twice
        return self.out(self.drop(h))


def test_tied_unused_and_two_optimisers_equal_eager():
    def make():
        ng.manual_seed(0)
        m = _Tied()
        ps = list(m.named_parameters())
        first = [p for n, p in ps if n.startswith(("a.", "unused."))]
        rest = [p for n, p in ps if not n.startswith(("a.", "unused."))]
        return m, ng.optim.SGD(first, lr=0.1, momentum=0.9), ng.optim.Adam(rest, lr=1e-2)

    def step_fn(m, o1, o2):
        def step(x, y):
            loss = ng.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            o1.step()
            o2.step()
            o1.zero_grad()
            o2.zero_grad()
            return loss
        return step

    me, o1e, o2e = make()
    mj, o1j, o2j = make()
    eager = step_fn(me, o1e, o2e)
    jitted = ng.jit(step_fn(mj, o1j, o2j), state=(mj, o1j, o2j), fuse=False)
    ng.manual_seed(7)
    batches = _batches(5)
    for x, y in batches:
        ng.manual_seed(11)  # the same dropout draws on both sides
        le = eager(x, y)
        ng.manual_seed(11)
        lj = jitted(x, y)
        assert _same(le.numpy(), lj.numpy())
        _assert_same_models(me, mj)
    assert jitted.program.counts()["lowered_steps"] == 2
    assert mj.unused.weight.grad is None


def test_the_lean_step_runs_while_its_case_holds_and_steps_as_eager(monkeypatch):
    """After the traced call and one lowered step through Optimizer._step, a fused optimiser's
    later steps take its lean path (no _step), with eager's bits. A parameter's data replaced
    between calls sends that call through _step (which copies the new data in); a loaded
    state keeps the lean path, which then steps from it as eager does."""
    pytest.importorskip("numba")
    (me, oe, eager), (mj, oj, jitted) = _pair(lambda ps: ng.optim.Adam(ps, lr=1e-2, fused=True))
    calls = []
    general = ng.optim.Optimizer._step
    monkeypatch.setattr(ng.optim.Optimizer, "_step",
                        lambda self, g: (calls.append(self), general(self, g))[1])
    batches = _batches(9)

    def both(x, y):
        assert _same(eager(x, y).numpy(), jitted(x, y).numpy())
        _assert_same_models(me, mj)

    for x, y in batches[:4]:
        both(x, y)
    assert calls.count(oj) == 2  # the traced call's and the first replay's only
    for m in (me, mj):  # new arrays for a weight: the optimiser copies them in
        w = m[0].weight
        w.data = w.data * 0.5
    both(*batches[4])
    assert calls.count(oj) == 3
    both(*batches[5])
    assert calls.count(oj) == 3
    saved = oe.state_dict()
    for o in (oe, oj):
        o.load_state_dict(saved)
    for x, y in batches[6:]:
        both(x, y)
    assert calls.count(oj) == 3 and jitted.traces == 1
    assert oj.state_dict()["step_count"] == oe.state_dict()["step_count"] == 9
