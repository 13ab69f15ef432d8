"""A step that binds a new tensor to a module's buffer (``self.ema = 0.9 * self.ema + ...``)
under ``ng.jit``/``ng.compile``: the program reads the buffer by name and binds its new value
after each replay, with eager's values, without tracing again on every call."""

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn.functional as F
from nodegrad import nn, optim


class Ema(nn.Module):
    """A layer that keeps a running mean of its outputs by rebinding a buffer."""

    def __init__(self, only_training: bool = False):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("ema", ng.zeros(3))
        self.register_buffer("steps", ng.zeros((), dtype=ng.int64))
        self.only_training = only_training

    def forward(self, x):
        out = self.lin(x)
        if self.training or not self.only_training:
            self.ema = 0.9 * self.ema + 0.1 * out.detach().mean(0)
            self.steps = self.steps + 1
        return out + self.ema


def data(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(ng.tensor(rng.standard_normal((5, 4)).astype(np.float32)),
             ng.tensor(rng.integers(0, 3, 5))) for _ in range(n)]


def train(wrap, n: int = 12, **kw) -> tuple:
    ng.manual_seed(0)
    model = Ema(**kw)
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for x, y in data(n):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append((loss.item(), model.ema.numpy().copy(), int(model.steps),
                     model.lin.weight.numpy().copy()))
    return seen, model, m


def assert_same(ref: list, got: list) -> None:
    assert len(ref) == len(got)
    for i, (r, g) in enumerate(zip(ref, got)):
        assert r[0] == g[0], f"step {i}: loss"
        assert r[2] == g[2], f"step {i}: steps"
        for a, b in zip(r[1:], g[1:]):
            assert np.array_equal(a, b), f"step {i}"


@pytest.mark.parametrize("how", ["compile", "jit"])
def test_a_compiled_module_replays_and_binds_the_buffers(how):
    ref, _, _ = train(lambda m: m)
    wrap = (lambda m: ng.compile(m, options={"fuse": False})) if how == "compile" else (
        lambda m: ng.jit(m, fuse=False))
    got, model, m = train(wrap)
    assert_same(ref, got)
    j = m._jitted if how == "compile" else m
    assert j.traces == 2  # the first call finds the buffers bound anew, the second reads them
    assert len(j.cache) == 2  # by name; every later call replays
    assert j.last.diff is not None and j.last.binds is not None


def test_a_training_step_with_state_replays_and_binds():
    def run(jit: bool):
        ng.manual_seed(0)
        model = Ema()
        opt = optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        f = ng.jit(step, state=(model, opt), fuse=False) if jit else step
        seen = []
        for x, y in data(10):
            loss = f(x, y)
            seen.append((loss.item(), model.ema.numpy().copy(), int(model.steps),
                         model.lin.weight.numpy().copy()))
        return seen, f

    ref, _ = run(False)
    got, f = run(True)
    assert_same(ref, got)
    assert f.traces == 2 and f.last.program is not None and f.last.binds is not None


def test_the_old_buffer_is_left_as_it_was():
    """A replay binds a new tensor, as the step does: a tensor kept from before is unchanged."""
    model = Ema()
    m = ng.jit(model)
    x = ng.ones(2, 4)
    kept = []
    for _ in range(5):
        kept.append((model.ema, model.ema.numpy().copy()))
        with ng.no_grad():
            m(x)
        assert model.ema is not kept[-1][0]
    for t, value in kept:
        assert np.array_equal(t.numpy(), value)
    assert m.traces == 2


def test_an_evaluation_call_reads_the_buffer_the_training_calls_bound():
    """Training calls rebind the buffer; evaluation calls only read it: their program reads it
    by name too (it would otherwise read the tensor it was traced on)."""
    ng.manual_seed(0)
    model = Ema(only_training=True)
    m = ng.jit(model)
    x = ng.ones(2, 4)
    for k in range(6):
        model.train()
        with ng.no_grad():
            m(x)
        model.eval()
        with ng.no_grad():
            got = m(x)
            want = model.lin(x) + model.ema
        assert np.array_equal(got.numpy(), want.numpy()), f"call {k}"
    assert len(m.cache) <= 4


def test_a_buffer_rebound_outside_the_step_to_another_shape_traces_again():
    model = Ema()
    m = ng.jit(model)
    x = ng.ones(2, 4)
    with ng.no_grad():
        for _ in range(3):
            m(x)
        model.lin = nn.Linear(4, 5)
        model.ema = ng.zeros(5)
        got = m(x)
    assert got.shape == (2, 5) and model.ema.shape == (5,)


def test_a_new_value_of_another_shape_runs_eagerly_with_the_reason():
    class Grows(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", ng.zeros(0))

        def forward(self, x):
            self.seen = ng.cat([self.seen, x.sum(1)])
            return x * 2

    model = Grows()
    m = ng.jit(model)
    for k in range(1, 4):
        m(ng.ones(2, 3))
        assert model.seen.shape == (2 * k,)
    assert m.last.program is None and "buffer Grows.seen" in m.last.reason


def test_a_buffer_set_lazily_once_then_replays():
    class Lazy(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", None)

        def forward(self, x):
            if self.mean is None:
                self.mean = x.mean(0)
            return x - self.mean

    model = Lazy()
    m = ng.jit(model)
    first = ng.ones(2, 3)
    m(first)
    for _ in range(3):
        got = m(ng.full((2, 3), 5.0))
    assert np.array_equal(got.numpy(), np.full((2, 3), 4.0, np.float32))
    assert m.traces == 2 and m.last.binds is None


def test_a_value_the_step_did_not_compute_runs_eagerly():
    """``self.count = ng.zeros(())`` binds a tensor made by a factory, which the program would
    load as the traced tensor on every call (a change in place through one call's buffer would
    reach the next call's): that signature runs eagerly, with eager's new tensor each call."""

    class Resets(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", ng.zeros(()))

        def forward(self, x):
            self.count = ng.zeros(())
            return x + 1

    model = Resets()
    m = ng.jit(model)
    for _ in range(4):
        got = m(ng.ones(2))
        before = model.count
        before.add_(7.0)
    m(ng.ones(2))
    assert float(model.count) == 0.0 and float(before) == 7.0
    assert np.array_equal(got.numpy(), [2.0, 2.0])
    assert m.last.program is None and "did not compute" in m.last.reason


def test_a_compiled_forward_method_replays_and_binds():
    """``@ng.compile`` on ``forward``: the module is an argument of the compiled function."""

    class Decorated(Ema):
        @ng.compile(options={"fuse": False})
        def forward(self, x):
            return super().forward(x)

    ref, _, _ = train(lambda m: m)
    ng.manual_seed(0)
    model = Decorated()
    opt = optim.SGD(model.parameters(), lr=0.1)
    got = []
    for x, y in data(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        got.append((loss.item(), model.ema.numpy().copy(), int(model.steps),
                    model.lin.weight.numpy().copy()))
    assert_same(ref, got)
    j = Decorated.forward.jitted
    assert j.traces == 2 and j.last.binds is not None


# --- tensors bound to plain attributes -------------------------------------------------------
class Stateful(nn.Module):
    """A recurrent model that carries its state across calls in attributes (truncated
    backpropagation through time), and keeps its last output for inspection."""

    def __init__(self, lstm: bool = False):
        super().__init__()
        self.rnn = (nn.LSTM if lstm else nn.GRU)(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)
        self.state = (ng.zeros(1, 2, 4), ng.zeros(1, 2, 4)) if lstm else ng.zeros(1, 2, 4)

    def forward(self, x):
        out, state = self.rnn(x, self.state)
        self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else \
            state.detach()
        y = self.head(out[:, -1])
        self.last = y.detach()
        return y


@pytest.mark.parametrize("lstm", [False, True])
@pytest.mark.parametrize("how", ["eager", "compile", "jit"])
def test_state_carried_in_attributes_replays(lstm, how):
    def run(how):
        ng.manual_seed(0)
        model = Stateful(lstm)
        m = {"eager": model, "compile": ng.compile(model, options={"fuse": False}),
             "jit": ng.jit(model, fuse=False)}[how]
        opt = optim.SGD(model.parameters(), lr=0.1)
        rng = np.random.default_rng(1)
        seen = []
        for _ in range(8):
            x = ng.tensor(rng.standard_normal((2, 5, 3)).astype(np.float32))
            loss = (m(x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            state = model.state if lstm else (model.state,)
            seen.append([loss.item(), model.last.numpy().copy()]
                        + [s.numpy().copy() for s in state])
        return seen, m

    ref, _ = run("eager")
    got, m = run(how)
    for i, (r, g) in enumerate(zip(ref, got)):
        assert r[0] == g[0], f"step {i}"
        for a, b in zip(r[1:], g[1:]):
            assert np.array_equal(a, b), f"step {i}"
    if how != "eager":
        j = m._jitted if how == "compile" else m
        assert j.last.diff is not None and j.last.binds is not None
        assert j.traces <= 2


def test_an_attribute_set_in_the_step_follows_each_replay():
    """``self.last = out.detach()``, never read by the step: a replay left the traced call's
    tensor there."""

    class Keeps(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            out = self.lin(x)
            self.last = out.detach()
            return out * 2

    model = Keeps()
    m = ng.jit(model)
    with ng.no_grad():
        for k in range(5):
            y = m(ng.full((1, 3), float(k)))
            assert np.array_equal(model.last.numpy() * 2, y.numpy()), f"call {k}"
    assert m.last.program is not None


def test_an_attribute_that_keeps_the_graph_refuses_backward_after_a_replay():
    """``self.activation = out`` (not detached): a replay binds the new values requiring grad,
    but records no graph behind them; a backward through them says so rather than drop the
    gradient."""

    class KeepsGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            out = self.lin(x)
            self.activation = out
            return out.sum()

    model = KeepsGraph()
    m = ng.jit(model)
    for k in range(3):
        x = ng.full((1, 3), float(k))
        loss = m(x)
        assert model.activation.requires_grad
        assert np.array_equal(model.activation.detach().numpy(), model.lin(x).detach().numpy())
        loss.backward()  # what the step returns differentiates as ever
    assert m.last.diff is not None
    with pytest.raises(ng.errors.GradError, match="KeepsGraph.activation"):
        model.activation.sum().backward()


def test_a_pruned_layer_shows_its_masked_weight_after_each_replay():
    """Pruning's forward pre-hook sets ``module.weight = weight_orig * weight_mask`` on each
    call: after a replay ``weight`` holds the current product (it held the traced call's)."""
    from nodegrad.nn.utils import prune

    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    m = ng.compile(model)
    opt = optim.SGD(model.parameters(), lr=0.5)
    for x, y in data(5):
        loss = F.cross_entropy(m(x), y % 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m(x)  # (a call after the step: its hook reads the updated weight_orig)
        want = (model[0].weight_orig * model[0].weight_mask).detach().numpy()
        assert np.array_equal(model[0].weight.detach().numpy(), want)
    assert m._jitted.last.diff is not None


# --- tensors bound to globals, closure variables, dict items and objects' attributes ---------
LAST = None


def test_globals_closures_dicts_and_objects_follow_each_replay():
    import types

    w = ng.ones(3)
    box = {"v": None}
    trainer = types.SimpleNamespace(last=None)
    seen = None

    def step(x):
        global LAST
        nonlocal seen
        y = x * w
        LAST = y * 2
        seen = (y + 1, y - 1)
        box["v"] = y * 3
        trainer.last = [y * 4]
        return y.sum()

    j = ng.jit(step)
    for k in range(5):
        j(ng.full((3,), float(k)))
        assert np.array_equal(LAST.numpy(), np.full(3, 2.0 * k, np.float32)), f"call {k}"
        assert type(seen) is tuple and np.array_equal(seen[1].numpy(), np.full(3, k - 1.0))
        assert np.array_equal(box["v"].numpy(), np.full(3, 3.0 * k, np.float32))
        assert type(trainer.last) is list
        assert np.array_equal(trainer.last[0].numpy(), np.full(3, 4.0 * k, np.float32))
    assert j.last.program is not None and j.traces <= 2


def test_a_cache_filled_once_still_replays():
    """A dict filled on the first call with a tensor made by a factory (a table of positions)
    keeps the traced tensor; the step replays."""
    cache = {}

    def step(x):
        if "pos" not in cache:
            cache["pos"] = ng.arange(3.0)
        return x + cache["pos"]

    j = ng.jit(step)
    for k in range(4):
        got = j(ng.full((3,), float(k)))
        assert np.array_equal(got.numpy(), k + np.arange(3.0, dtype=np.float32))
    assert j.last.program is not None
