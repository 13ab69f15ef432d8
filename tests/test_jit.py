"""jit: a traced-and-replayed function equals the eager one (every primitive case, second call on
new values), retraces on new signatures, keeps a bounded cache, runs Python only at trace time,
composes with grad and vmap, and replays whole training steps bit-identically.

These tests run the optimised program without fusion (``fuse=False``), which must give the same
bits as eager; tests/test_jit_passes.py checks the passes and fused kernels."""

import numpy as np
import pytest
from _opcases import CASES, calls, drawn

import nodegrad as ng
from nodegrad import nn
from nodegrad.models import mnist1d as zoo
from nodegrad.errors import JitError
from nodegrad.jit import disable_jit


def _jit(fn=None, **kw):
    return ng.jit(fn, fuse=False, **kw)


MATRIX = [pytest.param(c, id=c.name) for c in CASES if "matrix" in c.layouts]


def _shuffled(a: np.ndarray, rng) -> np.ndarray:
    """The same values (so the same domain) in another order: a new input, same signature."""
    if a.dtype.kind != "f" or a.size < 2:
        return a
    return rng.permutation(a.reshape(-1)).reshape(a.shape).astype(a.dtype)


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _leaves(out):
    return [o.numpy() if isinstance(o, ng.Tensor) else o for o in ng.tree_flatten(out)[0]]


@pytest.mark.parametrize("case", MATRIX)
@drawn(1)
def test_jit_equals_eager_on_every_case(case, data):
    call = data.draw(calls(case, "matrix"))
    rng = np.random.default_rng(0)
    first = [np.array(a) for a in call.args]
    second = [_shuffled(a, rng) for a in first]
    jf = _jit(call.fn)
    for arrs in (first, second, first):
        got = _leaves(jf(*[ng.tensor(a) for a in arrs]))
        want = _leaves(call.fn(*[ng.tensor(a) for a in arrs]))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert _same(g, w), case.name
    assert jf.traces == 1


GRAD_CASES = [pytest.param(c, id=c.name) for c in CASES if "matrix" in c.layouts and c.name in
              ("multiply", "exp", "tanh", "matmul", "softmax", "log_softmax",
               "sum", "max", "take_along_axis", "concatenate", "linear",
               "logsumexp", "einsum", "pad", "power")]


@pytest.mark.parametrize("case", GRAD_CASES)
@drawn(1)
def test_jit_of_grad_equals_grad(case, data):
    call = data.draw(calls(case, "matrix"))
    fl = [i for i, a in enumerate(call.args) if np.asarray(a).dtype.kind == "f"]
    g = ng.grad(lambda *xs: ng.tree_flatten(call.fn(*xs))[0][0].sum(), argnums=tuple(fl))
    jg = _jit(g)
    rng = np.random.default_rng(1)
    for arrs in ([np.array(a) for a in call.args],
                 [_shuffled(np.array(a), rng) for a in call.args]):
        got = _leaves(jg(*[ng.tensor(a) for a in arrs]))
        want = _leaves(g(*[ng.tensor(a) for a in arrs]))
        for x, y in zip(got, want):
            assert _same(x, y), case.name
    assert jg.traces == 1


# --- signatures, cache, side effects --------------------------------------------------------
def test_retraces_on_new_shape_dtype_and_static_argument():
    calls_seen = []

    def f(x, scale):
        calls_seen.append(x.shape)  # a Python side effect: runs at trace time only
        return ng.exp(x) * scale

    jf = _jit(f)
    x = ng.randn(3)
    for _ in range(3):
        assert _same(jf(x, 2.0).numpy(), f(x, 2.0).numpy())
    assert jf.traces == 1 and len(calls_seen) == 1 + 3  # 1 trace, 3 eager calls of f itself
    jf(ng.randn(4), 2.0)  # new shape
    jf(ng.randn(3, dtype=ng.float64), 2.0)  # new dtype
    y = jf(x, 3.0)  # new static argument
    assert _same(y.numpy(), f(x, 3.0).numpy())
    assert jf.traces == 4
    jf(ng.randn(4), 2.0)
    assert jf.traces == 4


def test_cache_is_bounded_least_recently_used():
    jf = _jit(lambda x: x * 2.0, max_cache=2)
    a, b, c = ng.randn(1), ng.randn(2), ng.randn(3)
    jf(a)
    jf(b)
    jf(a)  # a is now the most recent
    jf(c)  # evicts b
    assert len(jf.cache) == 2 and jf.traces == 3
    jf(a)
    assert jf.traces == 3
    jf(b)
    assert jf.traces == 4


def test_outputs_are_tensors_in_the_same_tree():
    jf = _jit(lambda d: {"s": d["x"] + d["y"], "p": (d["x"] * d["y"], 7)})
    d = {"x": ng.randn(2), "y": ng.randn(2)}
    for _ in range(2):
        out = jf(d)
        assert isinstance(out["s"], ng.Tensor) and out["p"][1] == 7
        assert _same(out["p"][0].numpy(), (d["x"] * d["y"]).numpy())


def test_reading_a_traced_value_in_python_is_an_error():
    def f(x):
        if x.sum() > 0:  # Python control flow on a tensor value
            return x
        return -x

    with pytest.raises(JitError, match="bool"):
        _jit(f)(ng.randn(3))
    with pytest.raises(JitError, match="item"):
        _jit(lambda x: x * x.sum().item())(ng.randn(3))
    with disable_jit():
        assert _same(_jit(f)(ng.ones(3)).numpy(), np.ones(3, np.float32))


def test_closed_over_tensor_is_read_afresh():
    w = ng.randn(3)
    jf = _jit(lambda x: x * w)
    x = ng.randn(3)
    jf(x)
    w.data[...] = 5.0  # changed in place after the trace
    assert _same(jf(x).numpy(), (x * 5.0).numpy())
    w.data = np.full(3, 2.0, np.float32)  # or replaced: the program loads w.data on every call
    assert _same(jf(x).numpy(), (x * 2.0).numpy())
    w.data = np.zeros(4, np.float32)
    with pytest.raises(JitError, match="changed"):
        jf(x)


def test_dead_code_is_eliminated():
    def f(x):
        unused = ng.exp(x) * 3.0  # noqa: F841
        return x + 1.0

    jf = _jit(f)
    jf(ng.randn(3))
    assert [i.name for i in jf.program.instrs] == ["add"]
    assert "add" in str(jf.program)


# --- composition with transforms ------------------------------------------------------------
def _f(x, w):
    return (ng.tanh(x @ w) * x.sum()).sum(axis=-1)


def _g(x, w):
    return _f(x, w).sum()


@pytest.mark.parametrize("name", ["jit_vmap", "vmap_jit", "grad_jit", "jit_grad", "jit_vmap_grad",
                                  "vmap_grad_jit", "jvp_jit", "jit_jvp", "jit_jvp_grad"])
def test_composes_with_transforms(name):
    v = dict(in_axes=(0, None))
    def jvp(f):
        return (lambda x, w: ng.jvp(lambda w: f(x, w), (w,), (ng.ones_like(w),))[1])
    pairs = {
        "jit_vmap": (_jit(ng.vmap(_f, **v)), ng.vmap(_f, **v)),
        "vmap_jit": (ng.vmap(_jit(_f), **v), ng.vmap(_f, **v)),
        "grad_jit": (ng.grad(_jit(_g), argnums=1), ng.grad(_g, argnums=1)),
        "jit_grad": (_jit(ng.grad(_g, argnums=1)), ng.grad(_g, argnums=1)),
        "jit_vmap_grad": (_jit(ng.vmap(ng.grad(_g, argnums=1), **v)),
                          ng.vmap(ng.grad(_g, argnums=1), **v)),
        "vmap_grad_jit": (ng.vmap(ng.grad(_jit(_g), argnums=1), **v),
                          ng.vmap(ng.grad(_g, argnums=1), **v)),
        "jvp_jit": (jvp(_jit(_f)), jvp(_f)),
        "jit_jvp": (_jit(jvp(_f)), jvp(_f)),
        "jit_jvp_grad": (_jit(jvp(ng.grad(_g, argnums=1))), jvp(ng.grad(_g, argnums=1))),
    }
    tf, ef = pairs[name]
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = ng.tensor(rng.standard_normal((5, 3)).astype(np.float32))
        w = ng.tensor(rng.standard_normal((3, 4)).astype(np.float32))
        assert _same(tf(x, w).numpy(), ef(x, w).numpy()), name


def test_grad_of_jit_replays_compiled():
    """grad(jit(f)) and value_and_grad(jit(f)) (a jitted loss differentiated JAX-style) replay
    the forward and backward programs, with eager's values; a grad whose backward is recorded
    (grad of grad, jvp of grad) runs the jitted function eagerly."""
    rng = np.random.default_rng(5)
    x, w, b = (ng.tensor(rng.uniform(-1, 1, (6, 6)).astype(np.float32)) for _ in range(3))

    def f(x, w, b):
        h = x
        for _ in range(5):
            h = ng.sin(ng.tanh(h * w + b) * 0.5)
        return h.sum()

    jf = _jit(f)
    g, jg = ng.grad(f, argnums=(0, 1, 2)), ng.grad(jf, argnums=(0, 1, 2))
    for _ in range(3):
        w = ng.tensor(rng.uniform(-1, 1, (6, 6)).astype(np.float32))
        for a, c in zip(jg(x, w, b), g(x, w, b)):
            assert _same(a.numpy(), c.numpy())
    assert jf.traces == 1 and jf.last.diff is not None  # one capture, replayed since
    (v, aux), gx = ng.value_and_grad(lambda x: (jf(x, w, b), x.sum()), has_aux=True)(x)
    assert _same(v.numpy(), f(x, w, b).numpy()) and not v.requires_grad
    assert _same(gx.numpy(), g(x, w, b)[0].numpy())
    x64 = ng.tensor(rng.uniform(-1, 1, 3))
    jh = _jit(lambda x: (ng.sin(x) * x).sum())
    hess = ng.hessian(jh)(x64).numpy()
    want = np.diag(2 * np.cos(x64.numpy()) - x64.numpy() * np.sin(x64.numpy()))
    np.testing.assert_allclose(hess, want, rtol=1e-12, atol=1e-12)
    v = ng.tensor([1.0, -1.0, 2.0], dtype=ng.float64)
    np.testing.assert_allclose(ng.jvp(ng.grad(jh), (x64,), (v,))[1].numpy(), want @ v.numpy(),
                               rtol=1e-12)


def test_per_example_gradients_replay_eagers_bits():
    """jit(vmap(grad)) of an MLP: the weights broadcast along the batch run as one GEMM in the
    program, as in eager, so the per-example gradients agree bit for bit."""
    rng = np.random.default_rng(3)
    p = {k: ng.tensor(rng.standard_normal(s).astype(np.float32) * 0.3)
         for k, s in {"w0": (16, 6), "b0": (16,), "w1": (4, 16), "b1": (4,)}.items()}

    def loss(p, x, y):
        h = ng.tanh(ng.linear(x, p["w0"], p["b0"]))
        return -ng.where(ng.arange(4) == y, ng.log_softmax(ng.linear(h, p["w1"], p["b1"]), -1),
                         0.0).sum()

    pe = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))
    jpe = _jit(pe)
    for _ in range(3):
        x = ng.tensor(rng.standard_normal((32, 6)).astype(np.float32))
        y = ng.tensor(rng.integers(0, 4, 32))
        got, want = jpe(p, x, y), pe(p, x, y)
        for k in p:
            assert got[k].shape == (32,) + p[k].shape
            assert _same(got[k].numpy(), want[k].numpy()), k


def test_backward_through_a_jitted_function_builds_the_graph():
    x = ng.randn(5, 3, requires_grad=True)
    w = ng.randn(3, 4)
    jg = _jit(_g)
    jg(x, w).backward()
    got = x.grad.numpy().copy()
    x.grad = None
    _g(x, w).backward()
    assert _same(got, x.grad.numpy())


# --- training steps -------------------------------------------------------------------------
def _mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _run(make_model, make_opt, batches, jit: bool, seed: int = 0):
    ng.manual_seed(seed)
    model = make_model()
    opt = make_opt(model.parameters())

    def train_step(x, y):
        opt.zero_grad()
        loss = ng.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = _jit(train_step, state=(model, opt)) if jit else train_step
    ng.manual_seed(seed + 1)  # dropout draws
    losses = [step(x, y).item() for x, y in batches]
    return losses, model, step


def _batches(n, shape, classes, seed=0):
    rng = np.random.default_rng(seed)
    return [(ng.tensor(rng.standard_normal((8,) + shape).astype(np.float32)),
             ng.tensor(rng.integers(0, classes, 8))) for _ in range(n)]


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam", "adamw"])
def test_jitted_steps_equal_eager_steps_mlp(opt):
    make_opt = {"sgd_momentum": lambda ps: ng.optim.SGD(ps, lr=0.1, momentum=0.9),
                "adam": lambda ps: ng.optim.Adam(ps, lr=1e-2),
                "adamw": lambda ps: ng.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)}[opt]
    batches = _batches(20, (6,), 3)
    le, me, _ = _run(_mlp, make_opt, batches, jit=False)
    lj, mj, step = _run(_mlp, make_opt, batches, jit=True)
    assert le == lj
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n
    assert step.traces == 1
    assert step.program.counts()["effect"] >= 2  # zero_grad, gradient accumulation, step


def test_jitted_steps_equal_eager_steps_with_dropout_batchnorm_and_schedule():
    def model():
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                             nn.Linear(16, 3))

    def make_opt(ps):
        return ng.optim.SGD(ps, lr=lambda t: 0.1 / t, momentum=0.9)  # a schedule of the step

    batches = _batches(12, (6,), 3)
    le, me, _ = _run(model, make_opt, batches, jit=False)
    lj, mj, step = _run(model, make_opt, batches, jit=True)
    assert le == lj
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n
    assert step.traces == 1


def test_jitted_steps_equal_eager_steps_mnist1d_cnn():
    batches = _batches(5, (40,), 10)
    def make_opt(ps):
        return (ng.optim.Adam(ps, lr=1e-3))
    le, me, _ = _run(zoo.CNN, make_opt, batches, jit=False)
    lj, mj, step = _run(zoo.CNN, make_opt, batches, jit=True)
    assert le == lj
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n


def test_train_and_eval_modes_get_their_own_programs():
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    step = _jit(lambda x: model(x), state=model)
    x = ng.randn(3, 4)
    step(x)
    model.eval()
    with ng.no_grad():
        assert _same(step(x).numpy(), model(x).numpy())
    assert step.traces == 2


def test_fit_with_jit_equals_fit_without():
    from nodegrad import data as D
    from nodegrad import train as T

    rng = np.random.default_rng(0)
    xs = rng.standard_normal((60, 40)).astype(np.float32)
    ys = rng.integers(0, 10, 60)

    def run(jit):
        ng.manual_seed(0)
        model = zoo.CNN()
        opt = ng.optim.Adam(model.parameters(), lr=1e-3)
        loader = D.DataLoader(D.ArrayDataset(xs, ys), batch_size=16, shuffle=True, seed=0)
        h = T.fit(model, ng.nn.functional.cross_entropy, opt, loader, epochs=2, progress=False,
                  jit=jit)
        return h, model

    he, me = run(False)
    hj, mj = run(True)
    assert [r["loss"] for r in he.epochs] == [r["loss"] for r in hj.epochs]
    for (n, a), b in zip(me.state_dict().items(), mj.state_dict().values()):
        assert _same(a.numpy(), b.numpy()), n


def test_cli_train_jit_gives_the_same_weights(tmp_path, capsys):
    from nodegrad.cli import main

    args = ["train", "--model", "digits_mlp", "--epochs", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert main([*args, "--jit", "--out", str(tmp_path / "jit")]) == 0
    a = ng.load(tmp_path / "eager" / "model.safetensors")
    b = ng.load(tmp_path / "jit" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert _same(np.asarray(a[k]), np.asarray(b[k])), k


def test_in_place_updates_are_replayed_in_place():
    def f(x, b):
        h = x * 2.0
        h += b  # in place, no graph
        h[0] = 7.0
        h[1:, 0] = b[1:, 1]
        x -= 1.0  # the caller's tensor changes, as in eager
        return h

    jf = _jit(f)
    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b = rng.standard_normal((2, 3, 3)).astype(np.float32)
        xe, xj = ng.tensor(a), ng.tensor(a)
        want = f(xe, ng.tensor(b)).numpy()
        assert _same(jf(xj, ng.tensor(b)).numpy(), want)
        assert _same(xj.numpy(), xe.numpy())
    assert jf.traces == 1


def test_a_step_without_arguments_reads_and_writes_its_state():
    # no array input at all: the program learns its backend from the state it loads
    a = ng.tensor(np.diag([1.0, 10.0]).astype(np.float32))
    xs = [ng.tensor([1.0, -2.0], requires_grad=True) for _ in range(2)]
    opts = [ng.optim.SGD([x], lr=0.05, momentum=0.9) for x in xs]

    def make(x, opt):
        def step():
            opt.zero_grad()
            (0.5 * (x @ a @ x)).backward()
            opt.step()
        return step

    eager, jitted = make(xs[0], opts[0]), ng.jit(make(xs[1], opts[1]), state=(xs[1], opts[1]))
    for _ in range(5):
        eager()
        jitted()
        assert _same(xs[1].numpy(), xs[0].numpy())
    assert jitted.traces == 1


def _frozen_and_replaced(jit: bool) -> list:
    """Twelve SGD steps of an MLP whose first layer is frozen after the third, whose head is
    replaced after the sixth (and added to the optimiser) and whose second weight is replaced
    by a new Parameter after the ninth: the losses and final weights."""
    rng = np.random.default_rng(7)
    x = ng.tensor(rng.standard_normal((8, 4)).astype(np.float32))
    y = ng.tensor(rng.integers(0, 3, 8))
    ng.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = ng.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = ng.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run = ng.jit(step, state=(model, opt)) if jit else step
    out = []
    for k in range(12):
        out.append(run(x, y).item())
        if k == 2:
            for p in model[0].parameters():
                p.requires_grad_(False)
        if k == 5:
            ng.manual_seed(1)
            model[-1] = nn.Linear(8, 3)
            opt.add_param_group({"params": list(model[-1].parameters())})
        if k == 8:
            model[2].weight = nn.Parameter(model[2].weight.detach() * 0.5)
            opt.add_param_group({"params": [model[2].weight]})
    return out + [p.numpy().copy() for p in model.parameters()]


def test_a_step_follows_frozen_and_replaced_layers_and_parameters():
    """Freezing parameters, replacing a layer or a Parameter: the jitted step traces again
    and trains as eagerly (it replayed the old program, which went on updating the frozen
    layer and reading the replaced tensors, silently)."""
    eager, jitted = _frozen_and_replaced(False), _frozen_and_replaced(True)
    np.testing.assert_allclose(jitted[:12], eager[:12], rtol=1e-6)
    for a, b in zip(jitted[12:], eager[12:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    model = nn.Sequential(nn.Linear(3, 2))
    jm = ng.jit(model)
    x = ng.randn(4, 3)
    jm(x)
    model[0] = nn.Linear(3, 2)
    assert _same(jm(x).numpy(), model(x).numpy())


def test_forward_hooks_added_or_removed_after_the_trace_take_effect():
    """A forward hook runs at trace time, so the program holds its effect: a hook added (or
    removed) later makes the module trace again (replays went on without it, silently)."""
    x = ng.randn(4, 3)
    model = nn.Sequential(nn.Linear(3, 2))
    jm = ng.jit(model)
    jm(x)
    h = model[0].register_forward_hook(lambda mod, inp, out: out * 2)
    assert _same(jm(x).numpy(), model(x).numpy())
    pre = model[0].register_forward_pre_hook(lambda mod, inp: (inp[0] * 3,))
    assert _same(jm(x).numpy(), model(x).numpy())
    h.remove()
    pre.remove()
    assert _same(jm(x).numpy(), model(x).numpy()) and jm.traces == 3  # back to the first


def test_reading_state_that_the_step_changes_runs_eagerly():
    """A value read into Python from a tensor outside the program that a recorded effect
    changes (a counter) differs on every call: the signature runs eagerly and says why (a
    replay gave the traced call's value every time)."""
    from nodegrad.nn.norm_functional import _count_batch

    counter = ng.zeros((), dtype=ng.int64)

    def f(x):
        _count_batch(counter)
        return x * float(counter.item())

    jf = ng.jit(f)
    assert [jf(ng.ones(2)).numpy()[0] for _ in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert jf.program is None and "changes in place" in jf.last.reason


class _Config:
    """A training script's settings object (argparse's Namespace and dataclasses alike)."""

    def __init__(self, scale):
        self.scale = scale


CONFIG = _Config(2.0)
SETTINGS = {"scale": 2.0}


class _Scaler:
    scale = 2.0  # a class attribute, read through the class

    def __init__(self):
        self.offset = 1.0

    def step(self, x):
        return x * self.offset + _Scaler.scale


def _changed_between_calls(steps: dict, x) -> None:
    """For each ``name: (fn, set_)``: ``ng.jit(fn)`` replays ``fn``'s value with ``set_(2.0)``,
    then, after ``set_(5.0)``, traces once more and replays the new value (never the stale
    one); ``set_(2.0)`` again afterwards."""
    for what, (fn, set_) in steps.items():
        set_(2.0)
        jf = ng.jit(fn)
        want = fn(x).numpy()
        assert _same(jf(x).numpy(), want) and _same(jf(x).numpy(), want), what
        set_(5.0)
        for _ in range(2):  # traced again, then replayed
            assert _same(jf(x).numpy(), fn(x).numpy()), what
            assert jf.traces == 2, what
        set_(2.0)


def test_numbers_one_attribute_or_item_down_are_read_on_every_call():
    """``args.lr``, ``cfg["lr"]``, ``self.offset`` and a class attribute that the caller
    changes between calls take effect: each is compared on every call (one more trace for
    the new value), as a number read by name is, never replayed stale."""
    local = _Config(2.0)
    x = ng.ones(3)
    steps = {
        "global attribute": (lambda x: x * CONFIG.scale, lambda v: setattr(CONFIG, "scale", v)),
        "closure attribute": (lambda x: x * local.scale, lambda v: setattr(local, "scale", v)),
        "global item": (lambda x: x * SETTINGS["scale"], lambda v: SETTINGS.update(scale=v)),
        "class attribute": (_Scaler().step, lambda v: setattr(_Scaler, "scale", v)),
    }
    _changed_between_calls(steps, x)
    scaler = _Scaler()
    jf = ng.jit(scaler.step)
    jf(x)
    scaler.offset = 3.0
    assert _same(jf(x).numpy(), scaler.step(x).numpy()) and jf.traces == 2


NESTED = {"optim": {"scale": 2.0}}


def test_numbers_several_attributes_or_items_down_are_read_on_every_call():
    """Nested settings (``args.opt.lr``, ``cfg["optim"]["lr"]``, ``cfg.train["lr"]``, three
    levels down, ``lrs[0]``) changed between calls take effect, as one level down does:
    compared on every call, one more trace for the new value, never replayed stale."""
    args = _Config(_Config(2.0))
    mixed = _Config({"scale": 2.0})
    deep = _Config(_Config(_Config(2.0)))
    lrs, betas = [2.0], {"b": (0.9, 2.0)}
    x = ng.ones(3)
    steps = {
        "two attributes": (lambda x: x * args.scale.scale,
                           lambda v: setattr(args.scale, "scale", v)),
        "two items": (lambda x: x * NESTED["optim"]["scale"],
                      lambda v: NESTED["optim"].update(scale=v)),
        "attribute, item": (lambda x: x * mixed.scale["scale"],
                            lambda v: mixed.scale.update(scale=v)),
        "three attributes": (lambda x: x * deep.scale.scale.scale,
                             lambda v: setattr(deep.scale.scale, "scale", v)),
        "replaced holder": (lambda x: x * args.scale.scale,
                            lambda v: setattr(args, "scale", _Config(v))),
        "list item": (lambda x: x * lrs[0], lambda v: lrs.__setitem__(0, v)),
        "tuple in a dict": (lambda x: x * betas["b"][1],
                            lambda v: betas.update(b=(0.9, v))),
    }
    _changed_between_calls(steps, x)


HELPER_SCALE = 2.0


def _scaled(x):
    return x * HELPER_SCALE


def _scaled_twice(x):
    return _scaled(x) + CONFIG.scale


def test_numbers_a_called_helper_reads_are_read_on_every_call():
    """A global read by a helper the step calls (``update(p)`` reading ``LR``), or by one
    that helper calls, or by a helper held by an object, changed between calls takes effect:
    compared on every call, one more trace for the new value, never replayed stale."""
    holder = _Config(_scaled)
    x = ng.ones(3)

    def set_global(v):
        global HELPER_SCALE
        HELPER_SCALE = v

    steps = {
        "helper": (lambda x: _scaled(x) - 1.0, set_global),
        "helper's helper": (lambda x: _scaled_twice(x), set_global),
        "helper's attribute": (lambda x: _scaled_twice(x),
                               lambda v: setattr(CONFIG, "scale", v)),
        "held helper": (lambda x: holder.scale(x), set_global),
    }
    _changed_between_calls(steps, x)


TEMPERATURE = 2.0


class _Tempered(ng.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ng.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) / TEMPERATURE + _scaled(x).sum()


def test_numbers_a_modules_forward_reads_are_read_on_every_call():
    """A global a module's ``forward`` divides by (or a helper it calls reads), changed between
    calls of a jitted step or module, takes effect: one more trace, never replayed stale."""
    global TEMPERATURE, HELPER_SCALE
    ng.manual_seed(0)
    model = _Tempered()
    x = ng.ones(4, 3)
    for jf in (ng.jit(lambda x: model(x) * 1.0), ng.jit(model)):
        TEMPERATURE = HELPER_SCALE = 2.0
        want = model(x).numpy()
        assert _same(jf(x).numpy(), want) and _same(jf(x).numpy(), want)
        TEMPERATURE = 5.0
        assert _same(jf(x).numpy(), model(x).numpy()) and jf.traces == 2
        HELPER_SCALE = 3.0
        assert _same(jf(x).numpy(), model(x).numpy()) and jf.traces == 3
    TEMPERATURE = HELPER_SCALE = 2.0


NP_SCALE = np.float64(2.0)


def test_numpy_scalars_the_step_reads_are_read_on_every_call():
    """A learning rate computed with NumPy (``0.1 * np.cos(...)``: an ``np.float64``), an
    ``np.float32`` in a closure or a module's attribute, changed between calls, takes effect
    as a Python float does: one more trace, never replayed stale."""
    global NP_SCALE
    local = {"s": np.float32(2.0)}
    x = ng.ones(3)

    def set_global(v):
        global NP_SCALE
        NP_SCALE = np.float64(v)

    steps = {
        "global float64": (lambda x: x * NP_SCALE, set_global),
        "float32 item": (lambda x: x * local["s"], lambda v: local.update(s=np.float32(v))),
        "int64": (lambda x: x * local["s"], lambda v: local.update(s=np.int64(v))),
    }
    _changed_between_calls(steps, x)
    NP_SCALE = np.float64(2.0)
    model = ng.nn.Linear(3, 2)
    model.gain = np.float32(2.0)

    def step(x):
        return model(x) * model.gain

    jf = ng.jit(step)
    jf(x), jf(x)
    model.gain = np.float32(4.0)
    assert _same(jf(x).numpy(), step(x).numpy()) and jf.traces == 2


NP_MASK = np.ones(3, np.float32)


def test_a_numpy_array_the_step_reads_rebound_between_calls_traces_again():
    """A NumPy array read by name (a global mask, class weights in a dict, turned into a
    tensor in the step or used as an operand) and rebound to another array between calls is
    a new signature: the program would otherwise keep the first array, a stale value."""
    global NP_MASK
    weights = {"w": np.ones(3, np.float32)}
    x = ng.ones(3)

    def set_global(v):
        global NP_MASK
        NP_MASK = np.full(3, v, np.float32)

    steps = {
        "global operand": (lambda x: x * NP_MASK, set_global),
        "item as a tensor": (lambda x: x * ng.tensor(weights["w"]),
                             lambda v: weights.update(w=np.full(3, v, np.float32))),
    }
    _changed_between_calls(steps, x)
    NP_MASK = np.ones(3, np.float32)


class _Trainer:
    def __init__(self):
        self.cfg = _Config(2.0)

    def loss(self, x):
        return x * self.cfg.scale * HELPER_SCALE

    def step(self, x):
        return self.loss(x) + 1.0


class _Attends(ng.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = ng.nn.Linear(3, 3)

    def attend(self, x):
        return x / TEMPERATURE

    def forward(self, x):
        return self.attend(self.fc(x))


def test_numbers_the_methods_a_step_calls_read_are_read_on_every_call():
    """A method the step calls on its object (``self.loss`` reading ``self.cfg.scale`` and a
    global), or a module's method its ``forward`` calls (reading a global), changed between
    calls, takes effect: one more trace, never replayed stale."""
    global HELPER_SCALE, TEMPERATURE
    trainer = _Trainer()
    x = ng.ones(3)
    jf = ng.jit(trainer.step)
    want = trainer.step(x).numpy()
    assert _same(jf(x).numpy(), want) and _same(jf(x).numpy(), want)
    trainer.cfg.scale = 3.0
    assert _same(jf(x).numpy(), trainer.step(x).numpy()) and jf.traces == 2
    HELPER_SCALE = 4.0
    assert _same(jf(x).numpy(), trainer.step(x).numpy()) and jf.traces == 3
    HELPER_SCALE = 2.0
    ng.manual_seed(0)
    model = _Attends()
    jm = ng.jit(model)
    jm(x), jm(x)
    TEMPERATURE = 5.0
    assert _same(jm(x).numpy(), model(x).numpy()) and jm.traces == 2
    TEMPERATURE = 2.0


def test_a_dead_weakref_proxy_the_step_names_is_left_alone():
    """The number reads and the search for tensors held in variables look at what a step
    names; a ``weakref.proxy`` whose object is gone raises at any look, and must not make the
    jitted function fail (it read the proxy on no path that runs)."""
    import weakref

    obj = _Config(2.0)
    gone = weakref.proxy(obj)
    live = weakref.proxy(_TRAINER_HELD)
    del obj

    def f(x):
        if x.shape[0] < 0:  # never: the names are in the code, not on the path
            return x * gone.scale
        return x * live.scale

    jf = ng.jit(f)
    x = ng.ones(2)
    assert _same(jf(x).numpy(), f(x).numpy()) and _same(jf(x).numpy(), f(x).numpy())
    _TRAINER_HELD.scale = 3.0  # through a live proxy: still read on every call
    assert _same(jf(x).numpy(), f(x).numpy()) and jf.traces == 2
    _TRAINER_HELD.scale = 2.0


_TRAINER_HELD = _Config(2.0)


def test_a_counter_two_attributes_down_that_the_step_changes_runs_eagerly():
    state = _Config(_Config(0))

    def f(x):
        state.scale.scale += 1
        return x * state.scale.scale

    jf = ng.jit(f)
    got = [jf(ng.ones(2)).numpy()[0] for _ in range(3)]
    assert got == [1.0, 2.0, 3.0] and jf.program is None
    assert "state.scale.scale" in jf.last.reason


def test_a_counter_one_attribute_down_that_the_step_changes_runs_eagerly():
    """A step that advances a plain number of an object it reads (``state.calls += 1``) would
    not advance it on replay: the signature runs eagerly and names it."""
    state = _Config(0)

    def f(x):
        state.scale += 1
        return x * state.scale

    jf = ng.jit(f)
    got = [jf(ng.ones(2)).numpy()[0] for _ in range(3)]
    assert got == [1.0, 2.0, 3.0] and jf.program is None and "state.scale" in jf.last.reason


def test_a_traced_index_of_setitem_is_an_input_of_the_replay():
    """``h[i] = v`` with ``i`` computed in the step (a cache written at a position passed as a
    tensor, a mask of the batch) writes where each call's index says (it ran eagerly before)."""
    def f(x, i):
        h = x * 1.0
        h[i.argmax()] = 0.0
        h[x > 1] = 1.0
        return h

    jf = _jit(f)
    for _ in range(3):
        x, i = ng.randn(4), ng.randn(4)
        assert _same(jf(x, i).numpy(), f(x, i).numpy())
    assert jf.program is not None and jf.traces == 1


@pytest.mark.parametrize("name,f", [
    ("unique", lambda t: ng.unique(t)),
    ("nonzero", lambda t: ng.nonzero(t)),
    ("nonzero", lambda t: ng.argwhere(t)),
    ("masked_select", lambda t: ng.masked_select(t, t > 1)),
    ("masked_scatter", lambda t: ng.masked_scatter(t, t > 1, ng.zeros(4))),
])
def test_ops_whose_result_depends_on_the_values_refuse_to_be_traced(name, f):
    """Captured, they would replay the first call's positions: a wrong answer, not an error."""
    with pytest.raises(JitError, match=name):
        ng.jit(f)(ng.tensor([0.0, 2.0, 3.0, 2.0]))


def test_namedtuple_results_replay_with_each_calls_values():
    sort = ng.jit(lambda t: ng.sort(t, dim=0))
    biggest = ng.jit(lambda t: t.max(dim=0))
    for x in ([3.0, 1.0, 2.0], [5.0, 9.0, 7.0]):
        got, want = sort(ng.tensor(x)), ng.sort(ng.tensor(x), dim=0)
        assert type(got).__name__ == "Sorted"
        np.testing.assert_array_equal(got.values.numpy(), want.values.numpy())
        np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
        assert biggest(ng.tensor(x)).indices.item() == int(np.argmax(x))


@pytest.mark.parametrize("f", [lambda x: x.zero_(), lambda x: x.fill_(5.0),
                               lambda x: x.copy_(x * 3), lambda x: x.fill_(x.sum())],
                         ids=["zero_", "fill_", "copy_", "fill_traced"])
def test_zero_fill_and_copy_are_replayed_writes(f):
    """They wrote behind the trace's back: a replay returned its input unchanged."""
    step = ng.jit(f)
    step(ng.ones(3))
    x = ng.full((3,), 2.0)
    want = f(ng.full((3,), 2.0))
    got = step(x)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(x.numpy(), want.numpy())  # in place


def test_jit_sums_a_0d_chain():
    """A sum that joins a fused elementwise chain over a 0-d array (nansum of a scalar, a loss
    of 0-d inputs) compiles: there is no innermost axis to order the sum by."""
    x = ng.tensor(2.5, dtype=ng.float64)
    for f in (lambda t: ng.nansum(t), lambda t: (ng.exp(t) * 2 - t).sum(),
              lambda t: ng.nn.functional.margin_ranking_loss(t, t * 0.5, ng.tensor(1.0,
                                                             dtype=ng.float64))):
        j = ng.jit(f)
        j(x)
        np.testing.assert_allclose(j(x).numpy(), f(x).numpy(), rtol=1e-12)
