"""``torch.compile`` as PyTorch users write it, on ``ng.compile(model)``, ``model.compile()``,
``ng.compile(fn)`` and ``@ng.compile``: a compiled model inside an ordinary eager training loop
(the loss, ``backward()`` and ``opt.step()`` eager) runs step by step as the uncompiled model
from the same weights and seed: its outputs, every state-dict entry, every ``.grad`` and the
optimiser's state agree after every step, bit for bit without fusion (``options={"fuse":
False}``) and within 1e-6 relative (float32) when fused. The keywords users pass, the last
partial batch of an epoch, ``train()``/``eval()``, ``no_grad`` evaluation, state dicts and
safetensors checkpoints, hooks and freezing after compiling, compiled losses, autocast, and
``fit(jit=True)`` / ``nodegrad train --jit`` against eager."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, optim
from nodegrad.nn import functional as F


@pytest.fixture(autouse=True)
def _restore_dtype():
    old = ng.get_default_dtype()
    yield
    ng.set_default_dtype(old)


# --- the harness: a program written once, run with the model as written and compiled ---------

class Compiler:
    """How a program's model (or function) is compiled: ``ng.compile(obj, **kw)``
    (``how="compile"``), ``obj.compile(**kw)`` in place (``"inplace"``), or not at all
    (``"eager"``); it keeps each compiled call's ``Jitted`` to ask whether it replayed."""

    def __init__(self, how: str = "compile", fuse: bool | None = False, **kw):
        self.how, self.kw, self.jitted = how, dict(kw), []
        if fuse is not None:
            self.kw["options"] = {**self.kw.get("options", {}), "fuse": fuse}

    def __call__(self, obj):
        if self.how == "eager":
            return obj
        if self.how == "inplace":
            obj.compile(**self.kw)
            self.jitted.append(lambda: obj.__dict__["_compiled_call"].compiled._jitted)
            return obj
        c = ng.compile(obj, **self.kw)
        j = c._jitted if isinstance(c, nn.Module) else c.jitted
        self.jitted.append(lambda: j)
        return c

    def replayed(self) -> list:
        """Each compiled call's last entry: None where it replayed a program, else why not."""
        out = []
        for get in self.jitted:
            e = get().last
            ok = e is not None and (e.program is not None or e.diff is not None)
            out.append(None if ok else getattr(e, "reason", "never called"))
        return out


def _arrays(x) -> list:
    if x is None:
        return [None]
    if isinstance(x, ng.Tensor):
        return [x.detach().numpy().copy()]
    if isinstance(x, tuple | list):
        return [a for o in x for a in _arrays(o)]
    if isinstance(x, dict):
        return [a for k in sorted(x) for a in _arrays(x[k])]
    return [np.asarray(x).copy()]


def snap(model: nn.Module, *values, opt: optim.Optimizer | None = None) -> list:
    """The values given, the model's state dict, every parameter's gradient and the optimiser's
    state and learning rates."""
    s = _arrays(list(values))
    s += [v.numpy().copy() for v in model.state_dict().values()]
    s += [None if p.grad is None else p.grad.numpy().copy() for p in model.parameters()]
    if opt is not None:
        sd = opt.state_dict()
        for k in sorted(sd["state"]):
            for name in sorted(sd["state"][k]):
                s += _arrays(sd["state"][k][name])
        s.append(np.array([g["lr"] for g in opt.param_groups]))
    return s


def _close(a, b, exact: bool, where: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, f"{where}: {a} against {b}"
        return
    assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {a.shape} {b.shape}"
    if exact or a.dtype.kind not in "fc":
        assert a.tobytes() == b.tobytes(), f"{where}: {a} != {b}"
    else:
        rtol = 1e-6 if a.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol, err_msg=where)


def compare(program: Callable[[Callable], list], comp: Compiler, replays: bool = True,
            exact: bool | None = None):
    """Run ``program(wrap)`` with the model as written and compiled by ``comp``, from the same
    seed; every step's snapshot agrees (bit for bit unfused, unless ``exact=False``).
    ``replays``: every compiled call replayed its program on its last call (not run
    eagerly)."""
    ng.manual_seed(0)
    ref = program(lambda obj: obj)
    ng.manual_seed(0)
    got = program(comp)
    assert len(ref) == len(got)
    if exact is None:
        exact = comp.kw.get("options", {}).get("fuse", None) is False
    for i, (r, g) in enumerate(zip(ref, got)):
        assert len(r) == len(g), f"step {i}"
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, exact, f"step {i}, value {k}")
    if replays:
        assert comp.replayed() == [None] * len(comp.jitted)
    return comp


def batches(n: int, bs: int, shape: tuple, classes: int, last: int | None = None, seed: int = 0,
            dtype=np.float32) -> list:
    """``n`` batches of ``bs`` examples (the last of ``last``, an epoch's partial batch)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = last if last is not None and i == n - 1 else bs
        out.append((ng.tensor(rng.standard_normal((b, *shape)).astype(dtype)),
                    ng.tensor(rng.integers(0, classes, b))))
    return out


def mlp(din: int = 10, hidden: int = 32, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, classes))


# --- 1. the tutorial loop: BN + dropout, epochs with a partial last batch, eval each epoch ---

def tutorial_loop(wrap):
    model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(32, 3))
    model = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    train = batches(4, 16, (10,), 3, last=5)
    val = batches(2, 8, (10,), 3, last=3, seed=1)
    out = []
    for _ in range(3):
        model.train()
        for x, y in train:
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            loss.backward()
            opt.step()
            out.append(snap(model, loss, logits, opt=opt))
        sched.step()
        model.eval()
        correct, total = 0, 0
        with ng.no_grad():
            for x, y in val:
                pred = model(x)
                correct += (pred.argmax(dim=1) == y).sum().item()
                total += y.shape[0]
                out.append(snap(model, pred))
        out[-1].append(np.array(correct / total))
    return out


KEYWORDS = [
    pytest.param({}, id="default"),
    pytest.param({"mode": "reduce-overhead"}, id="reduce-overhead"),
    pytest.param({"mode": "max-autotune", "fullgraph": True}, id="max-autotune-fullgraph"),
    pytest.param({"dynamic": True}, id="dynamic"),
    pytest.param({"dynamic": False, "backend": "inductor"}, id="static-inductor"),
    pytest.param({"backend": "nodegrad", "mode": "max-autotune-no-cudagraphs"}, id="nodegrad"),
    pytest.param({"options": {"max_cache": 2}}, id="max_cache"),  # programs evicted, retraced
]


@pytest.mark.parametrize("kw", KEYWORDS)
def test_tutorial_loop_compiled_with_the_keywords_users_pass(kw):
    comp = compare(tutorial_loop, Compiler(**kw))
    j = comp.jitted[0]()
    if "options" in kw:
        assert j.traces > 4 and len(j.cache) == 2
        return
    # train on 16 and 5 rows, evaluate on 8 and 3 without grad: each shape traced once
    assert j.traces == 4 and len(j.cache) == 4


@pytest.mark.parametrize("kw", [{}, {"mode": "reduce-overhead", "dynamic": None}])
def test_tutorial_loop_model_compile_in_place(kw):
    comp = compare(tutorial_loop, Compiler("inplace", **kw))
    assert comp.jitted[0]().traces == 4


@pytest.mark.parametrize("kw", [{"backend": "eager"}, {"disable": True}])
def test_eager_backend_and_disable_run_the_model_as_written(kw):
    ng.manual_seed(0)
    ref = tutorial_loop(lambda m: m)
    ng.manual_seed(0)
    seen = []
    got = tutorial_loop(lambda m: seen.append(ng.compile(m, **kw)) or seen[-1])
    assert isinstance(seen[0], nn.Sequential)
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            _close(a, b, True, "eager backend")


def test_the_compiled_module_shows_the_original_modules_mode():
    """``compiled.training`` is the original's, as PyTorch's OptimizedModule (code that asks
    ``if model.training`` of the compiled model after ``model.eval()``)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    compiled = ng.compile(model)
    model.eval()
    assert compiled.training is False
    compiled.train()
    assert compiled.training and model.training and model[1].training
    compiled.training = False
    assert not model.training and not copy.deepcopy(compiled).training


# --- 2. a CNN, Adam and a cosine schedule; the compiled model under no_grad in between -------

def cnn_loop(wrap):
    model = wrap(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    out = []
    for i, (x, y) in enumerate(batches(10, 6, (1, 8, 8), 5, last=4)):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        out.append(snap(model, loss, logits, opt=opt))
        if i % 4 == 3:
            with ng.no_grad():  # still in train mode: batch statistics, running stats move
                out.append(snap(model, model(x)))
    return out


def test_cnn_compiled():
    compare(cnn_loop, Compiler())


def parameter_groups(wrap):
    """Weight decay groups chosen by name from the compiled model's ``named_parameters()``
    (``_orig_mod.``-prefixed names), ``zero_grad(set_to_none=False)``, value clipping and
    ReduceLROnPlateau on the loss."""
    model = nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 3))
    m = wrap(model)
    named = list(m.named_parameters())
    decay = [p for n, p in named if n.endswith("weight") and p.ndim > 1]
    rest = [p for n, p in named if not (n.endswith("weight") and p.ndim > 1)]
    opt = optim.AdamW([{"params": decay, "weight_decay": 0.1},
                       {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    criterion = nn.CrossEntropyLoss(weight=ng.tensor([1.0, 2.0, 0.5]))
    out = []
    for x, y in batches(10, 8, (10,), 3, last=4):
        opt.zero_grad(set_to_none=False)
        loss = criterion(m(x), y)
        loss.backward()
        nn.utils.clip_grad_value_(m.parameters(), 0.05)
        opt.step()
        sched.step(loss.item())
        out.append(snap(model, loss, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_parameter_groups_by_name_and_a_plateau_schedule(how):
    compare(parameter_groups, Compiler(how))


# --- 3. hooks registered after compiling ----------------------------------------------------

def hooks_after_compiling(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    out, handles = [], {}
    for i, (x, y) in enumerate(batches(12, 8, (10,), 3)):
        if i == 2:
            handles["fwd"] = model[0].register_forward_hook(lambda mod, inp, o: o * 0.5)
        if i == 4:
            handles["pre"] = model[2].register_forward_pre_hook(lambda mod, inp: (inp[0] + 1,))
        if i == 6:
            handles["grad"] = model[0].weight.register_hook(lambda g: g * 2)
        if i == 8:
            handles.pop("fwd").remove()
            handles.pop("grad").remove()
        if i == 10:
            handles.pop("pre").remove()
        opt.zero_grad()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_hooks_registered_after_compiling(how):
    compare(hooks_after_compiling, Compiler(how))


def backward_hooks_after_compiling(wrap):
    """A module backward hook that scales a layer's input gradient (gradient reversal's
    idiom): registered after the model was compiled, on a layer and on the model itself."""
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    seen = []
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        if i == 2:
            model[2].register_full_backward_hook(lambda mod, gi, go: (gi[0] * 3,))
        if i == 4:
            model.register_full_backward_pre_hook(lambda mod, go: seen.append(go[0].shape))
        opt.zero_grad()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, np.array(len(seen))))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_backward_hooks_registered_after_compiling_run_eagerly_and_say_why(how):
    comp = compare(backward_hooks_after_compiling, Compiler(how), replays=False)
    assert "backward hook" in comp.replayed()[0]


def test_a_model_with_backward_hooks_compiles_and_runs_them():
    model = mlp()
    model[2].register_full_backward_hook(lambda mod, gi, go: (gi[0] * 3,))
    ref = copy.deepcopy(model)
    m = ng.compile(model)
    x, y = batches(1, 8, (10,), 3)[0]
    for mod in (ref, m):
        for _ in range(2):
            F.cross_entropy(mod(x), y).backward()
    for a, b in zip(ref.parameters(), model.parameters()):
        assert np.array_equal(a.grad.numpy(), b.grad.numpy())
    assert "backward hook" in m._jitted.last.reason
    with pytest.raises(NotImplementedError, match="backward hooks"):  # ng.jit itself refuses
        ng.jit(model)(x)


class GradCAMNet(nn.Module):
    """Grad-CAM's tutorial model: ``forward`` hooks the features' gradient, which the hook
    stores for the heat map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(16, 3))
        self.gradients = []

    def activations_hook(self, grad):
        self.gradients.append(grad)

    def forward(self, x):
        h = self.features(x)
        h.register_hook(self.activations_hook)
        self.h = h
        h.retain_grad()
        return self.head(h)


def grad_cam(wrap):
    model = GradCAMNet()
    m = wrap(model)
    out = []
    for i, (x, _) in enumerate(batches(5, 4, (10,), 3)):
        model.zero_grad()
        logits = m(x * (i + 1))
        logits[:, 0].sum().backward()
        out.append(snap(model, logits, np.array(len(model.gradients)), model.gradients[-1],
                        model.h.grad))
    return out


def test_gradient_hooks_registered_in_forward_run_eagerly_and_say_why():
    comp = compare(grad_cam, Compiler(), replays=False)
    assert "hook" in comp.replayed()[0]


def hooked_inputs(wrap):
    """Hooks on the (non-leaf) logits that a compiled loss reads: they run once per backward,
    on the real gradient."""
    model = mlp()
    criterion = wrap(nn.CrossEntropyLoss())
    opt = optim.SGD(model.parameters(), lr=0.1)
    seen = []
    out = []
    for x, y in batches(5, 8, (10,), 3):
        opt.zero_grad()
        logits = model(x)
        logits.register_hook(lambda g: seen.append(g.detach().clone()))
        logits.retain_grad()
        loss = criterion(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits.grad, np.array(len(seen)), seen[-1]))
    return out


def test_hooks_on_the_inputs_of_a_compiled_loss_see_the_real_gradient():
    compare(hooked_inputs, Compiler())


def hooked_train_step(wrap):
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = optim.SGD(model.parameters(), lr=0.1)
    grads = []

    @wrap
    def train_step(x):
        opt.zero_grad()
        h = model[1](model[0](x))
        h.register_hook(lambda g: grads.append(g.detach().clone()))  # stores, returns None
        loss = model[2](h).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    return [snap(model, train_step(x), np.array(len(grads)), grads[-1])
            for x, _ in batches(5, 4, (10,), 3)]


def test_a_gradient_hook_that_stores_in_a_compiled_step_runs_eagerly_and_says_why():
    comp = compare(hooked_train_step, Compiler(), replays=False)
    assert "hook" in comp.replayed()[0]


@pytest.mark.parametrize("kind", ["hook", "retain_grad"])
def test_a_step_jitted_with_state_whose_hook_stores_runs_eagerly(kind):
    """The same under ``ng.jit(step, state=...)``: the stored gradients are each call's."""
    from tests.test_jit_real_steps import Run, check

    def make():
        model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.1)
        kept = []

        def step(x, y):
            opt.zero_grad()
            h = model[1](model[0](x))
            if kind == "hook":
                h.register_hook(lambda g: kept.append(g * 1))
            else:
                h.retain_grad()
                kept.append(h)
            loss = F.cross_entropy(model[2](h), y)
            loss.backward()
            opt.step()
            return loss

        def extra():
            return [kept[-1] if kind == "hook" else kept[-1].grad]

        return Run((model, opt), step, batches(6, 4, (10,), 3), extra=extra)

    jitted = check(make, replays=False)
    assert kind.replace("_", "") in jitted.last.reason.replace("_", "")


# --- 4. freezing and unfreezing layers after compiling --------------------------------------

def freeze_after_compiling(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = []
    for i, (x, y) in enumerate(batches(12, 8, (10,), 3)):
        if i == 3:  # fine-tune the head only
            for p in model[0].parameters():
                p.requires_grad_(False)
        if i == 8:  # then everything again
            for p in model[0].parameters():
                p.requires_grad = True
        opt.zero_grad()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_freezing_and_unfreezing_layers_after_compiling(how):
    comp = compare(freeze_after_compiling, Compiler(how))
    assert comp.jitted[0]().traces == 3


def frozen_backbone_then_unfrozen(wrap):
    """Linear probing, then fine-tuning: the whole compiled model frozen first (its outputs
    then need no graph), unfrozen later."""
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.requires_grad_(False)
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        if i == 3:
            model.requires_grad_(True)
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        if loss.requires_grad:
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(snap(model, loss, logits, np.array(logits.requires_grad)))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_a_frozen_compiled_model_unfrozen_gets_gradients(how):
    compare(frozen_backbone_then_unfrozen, Compiler(how))


# --- 5. weights changed between calls: load_state_dict, .data tricks ------------------------

def weights_changed_between_calls(wrap):
    model = mlp()
    m = wrap(model)
    other = mlp().state_dict()
    opt = optim.RMSprop(model.parameters(), lr=1e-3)
    out = []
    for i, (x, y) in enumerate(batches(10, 8, (10,), 3)):
        if i == 3:
            model.load_state_dict(other)  # a checkpoint restored mid-run
        if i == 6:
            model[2].weight.data = ng.randn(3, 32) * 0.01  # re-initialised by .data =
        opt.zero_grad()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        for p in model.parameters():  # WGAN's weight clipping
            p.data.clamp_(-0.05, 0.05)
        out.append(snap(model, loss, logits, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_weights_changed_between_calls(how):
    compare(weights_changed_between_calls, Compiler(how))


# --- 6. two calls of the compiled model in one step; an output read by two losses -----------

def two_calls_per_step(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for x, y in batches(10, 8, (10,), 3):
        opt.zero_grad()
        a = m(x)
        b = m(x.flip(0) * 2)  # a second view of the batch
        loss = (F.cross_entropy(a, y) + F.mse_loss(a.softmax(1), b.softmax(1).detach())
                + (b ** 2).mean())
        loss.backward()
        opt.step()
        out.append(snap(model, loss, a, b, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_two_calls_per_step_and_an_output_read_twice(how):
    compare(two_calls_per_step, Compiler(how))


# --- 7. adversarial inputs: the gradient of the input through the compiled model ------------

def fgsm_training(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = []
    for x, y in batches(10, 8, (10,), 3):
        x = x.clone().requires_grad_()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        adv = (x + 0.1 * x.grad.sign()).detach()
        opt.zero_grad()
        logits = m(adv)
        adv_loss = F.cross_entropy(logits, y)
        adv_loss.backward()
        opt.step()
        out.append(snap(model, loss, adv_loss, x.grad, logits, opt=opt))
    return out


def test_fgsm_input_gradients_through_the_compiled_model():
    compare(fgsm_training, Compiler())


def transposed_inputs(wrap):
    """Batches that arrive as transposed views (``x.T``, a ``permute``) on some steps and
    contiguous on others: the same shapes, other layouts."""
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        if i % 3 == 1:
            x = ng.tensor(np.ascontiguousarray(x.numpy().T)).T
        opt.zero_grad()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_inputs_laid_out_otherwise_on_some_steps():
    compare(transposed_inputs, Compiler())


class InPlaceNormaliser(nn.Module):
    """Running input statistics kept in buffers, and the caller's batch normalised in place."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.register_buffer("mean", ng.zeros(10))
        self.register_buffer("count", ng.zeros(()))

    def forward(self, x):
        if self.training:
            self.mean.mul_(0.9).add_(x.mean(0).detach(), alpha=0.1)
            self.count += 1
        x.sub_(self.mean)
        return self.net(x)


class RebindsABuffer(nn.Module):
    """``self.ema = ...`` in forward: a new tensor bound to the buffer on every call."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.register_buffer("ema", ng.zeros(3))

    def forward(self, x):
        out = self.net(x)
        self.ema = 0.9 * self.ema + 0.1 * out.detach().mean(0)
        return out


def buffers_written_in_forward(wrap, cls, steps=6):
    model = cls()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for x, y in batches(steps, 8, (10,), 3):
        x = x.clone()
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, x, opt=opt))
    return out


@pytest.mark.parametrize("cls", [InPlaceNormaliser, RebindsABuffer])
def test_buffers_written_in_forward(cls):
    compare(lambda wrap: buffers_written_in_forward(wrap, cls), Compiler())


def test_a_rebound_buffer_over_many_steps():
    """Each call binds a new tensor to the buffer and the last one is freed: a later tensor
    that reuses its id must not match the signature of a program traced on the freed one (a
    signature keyed by id() replayed stale programs after a few steps). Only copies of the
    buffer are kept, so that the freed tensors' memory comes back."""

    def run(wrap):
        ng.manual_seed(0)
        model = RebindsABuffer()
        m = wrap(model)
        opt = optim.SGD(model.parameters(), lr=0.1)
        out = []
        for x, y in batches(80, 8, (10,), 3):
            loss = F.cross_entropy(m(x.clone()), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(model.ema.numpy().copy())
        return out

    ref, got = run(lambda obj: obj), run(Compiler())
    for i, (r, g) in enumerate(zip(ref, got)):
        assert np.array_equal(r, g), f"step {i}"


class MomentumEncoder(nn.Module):
    """MoCo's forward: the key encoder updated from the query encoder and run under no_grad."""

    def __init__(self):
        super().__init__()
        self.q = mlp()
        self.k = copy.deepcopy(self.q).requires_grad_(False)

    def forward(self, x1, x2):
        q = F.normalize(self.q(x1), dim=1)
        with ng.no_grad():
            for pk, pq in zip(self.k.parameters(), self.q.parameters()):
                pk.data.mul_(0.99).add_(pq.data, alpha=0.01)
            k = F.normalize(self.k(x2), dim=1)
        return (q * k).sum(1)


def momentum_encoder(wrap):
    model = MomentumEncoder()
    m = wrap(model)
    opt = optim.SGD(model.q.parameters(), lr=0.1)
    out = []
    for x, _ in batches(8, 8, (10,), 3):
        sim = m(x, x + 0.1 * ng.randn(8, 10))
        loss = -sim.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, sim, opt=opt))
    return out


def test_momentum_encoder_updated_in_forward():
    compare(momentum_encoder, Compiler())


# --- 8. gradient accumulation with clipping -------------------------------------------------

def accumulation(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for i, (x, y) in enumerate(batches(12, 8, (10,), 3)):
        loss = F.cross_entropy(m(x), y) / 3
        loss.backward()
        if i % 3 == 2:
            norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            opt.step()
            opt.zero_grad()
            out.append(snap(model, norm))
        out.append(snap(model, loss))
    return out


def test_gradient_accumulation_and_clipping():
    compare(accumulation, Compiler())


# --- 9. an EMA teacher made by deepcopy of the compiled student -----------------------------

def ema_teacher(wrap):
    model = mlp()
    m = wrap(model)
    teacher = copy.deepcopy(m)
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for x, y in batches(10, 8, (10,), 3):
        opt.zero_grad()
        logits = m(x)
        with ng.no_grad():
            t = teacher(x)
        loss = F.cross_entropy(logits, y) + F.kl_div(F.log_softmax(logits, 1),
                                                     F.softmax(t, 1), reduction="batchmean")
        loss.backward()
        opt.step()
        with ng.no_grad():
            for pt, p in zip(teacher.parameters(), model.parameters()):
                pt.mul_(0.9).add_(p, alpha=0.1)
        out.append(snap(model, loss, t, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_ema_teacher_deepcopied_from_the_compiled_model(how):
    compare(ema_teacher, Compiler(how))


# --- 10. a model with dict outputs and keyword arguments ------------------------------------

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 16)
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 1)

    def forward(self, x, scale: float = 1.0, mask=None):
        h = F.gelu(self.body(x)) * scale
        if mask is not None:
            h = h.masked_fill(mask, 0.0)
        return {"cls": self.cls(h), "reg": self.reg(h).squeeze(-1)}


def two_heads(wrap):
    model = TwoHeads()
    m = wrap(model)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    out = []
    for i, (x, y) in enumerate(batches(10, 8, (10,), 3)):
        mask = ng.rand(8, 16) < 0.1
        o = m(x, scale=0.5 if i % 2 else 1.0, mask=mask)
        loss = F.cross_entropy(o["cls"], y) + F.smooth_l1_loss(o["reg"], y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, o, opt=opt))
    return out


def test_dict_outputs_and_keyword_arguments():
    comp = compare(two_heads, Compiler())
    assert comp.jitted[0]().traces == 2  # one per value of the Python float


class WithFeatures(nn.Module):
    """Returns (logits, features, predictions), as distillation and contrastive code does."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x, x2):
        h = F.relu(self.a(x)) + 0 * x2.sum()
        logits = self.b(h)
        return logits, h, logits.argmax(1)


def with_features(wrap):
    model = WithFeatures()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        logits, h, pred = m(x, x)  # the same tensor twice
        loss = F.cross_entropy(logits, y)
        if i % 2:  # the features' cotangent only on some steps
            loss = loss + h.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, h, pred, opt=opt))
    return out


def test_several_outputs_some_unused_keep_their_layouts():
    """The logits come out of a wide layer's product F-ordered; a compiled call with several
    outputs hands them out F-ordered as eagerly (they were packed C-ordered, and the bias
    gradient, a sum over the rows, then added in another order)."""
    compare(with_features, Compiler())


class TinyLM(nn.Module):
    """Tied input and output embeddings."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(F.gelu(self.proj(self.emb(idx))))


def tied_lm(wrap):
    model = TinyLM()
    m = wrap(model)
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(8):
        idx = ng.tensor(rng.integers(0, 20, (4, 5)))
        logits = m(idx)
        loss = F.cross_entropy(logits.reshape(-1, 20), idx.roll(-1, 1).reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_tied_embeddings():
    compare(tied_lm, Compiler())


def normalized_layers(wrap):
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(10, 16)), nn.ReLU(),
                          nn.utils.parametrizations.spectral_norm(nn.Linear(16, 3)))
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        if i == 5:
            model.eval()  # spectral norm stops its power iteration
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_weight_norm_and_spectral_norm():
    compare(normalized_layers, Compiler())


def head_swapped(wrap):
    """Transfer learning: a new head put on the compiled model, a new optimiser."""
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        if i == 4:
            model[2] = nn.Linear(32, 5)
            opt = optim.SGD(model.parameters(), lr=0.05)
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_a_head_swapped_after_compiling(how):
    compare(head_swapped, Compiler(how))


def gan(wrap):
    """DCGAN's loop with both networks compiled; D frozen for G's step (CycleGAN's
    ``set_requires_grad(D, False)``) and unfrozen for its own, every step."""
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6))
    D = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    g, d = wrap(G), wrap(D)
    opt_g = optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    out = []
    for x, _ in batches(10, 8, (6,), 2):
        fake = g(ng.randn(8, 4))
        D.requires_grad_(True)
        opt_d.zero_grad()
        loss_d = bce(d(x), ng.ones(8, 1)) + bce(d(fake.detach()), ng.zeros(8, 1))
        loss_d.backward()
        opt_d.step()
        D.requires_grad_(False)
        opt_g.zero_grad()
        loss_g = bce(d(fake), ng.ones(8, 1))
        loss_g.backward()
        opt_g.step()
        out.append(snap(G, loss_d, loss_g, fake, opt=opt_g) + snap(D, opt=opt_d))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_gan_with_the_discriminator_frozen_for_the_generator_step(how):
    compare(gan, Compiler(how))


def test_inference_mode_evaluation():
    def program(wrap):
        model = mlp()
        m = wrap(model)
        out = []
        for x, _ in batches(4, 8, (10,), 3, last=2):
            with ng.inference_mode():
                out.append(snap(model, m(x)))
        return out

    compare(program, Compiler())


# --- 11. a compiled training step, a compiled loss ------------------------------------------

def compiled_train_step(wrap):
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 3))
    opt = optim.Adam(model.parameters(), lr=1e-2)

    @wrap
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return [snap(model, train_step(x, y), opt=opt)
            for x, y in batches(10, 8, (10,), 3, last=3)]


@pytest.mark.parametrize("kw", [{}, {"fullgraph": True, "dynamic": True}])
def test_a_compiled_training_step(kw):
    comp = compare(compiled_train_step, Compiler(**kw))
    assert comp.jitted[0]().traces == 2


def test_the_decorator_with_arguments_on_a_training_step():
    def program(wrap):
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=0.1)
        deco = ng.compile(mode="reduce-overhead", options={"fuse": False}) if wrap is not (
            None) else (lambda f: f)

        @deco
        def train_step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return [snap(model, train_step(x, y)) for x, y in batches(6, 8, (10,), 3)], train_step

    ng.manual_seed(0)
    ref, _ = program(None)
    ng.manual_seed(0)
    got, step = program(True)
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            _close(a, b, True, "decorated step")
    assert step.jitted.traces == 1 and step.jitted.last.program is not None


def compiled_loss(wrap, both: bool = False):
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def distill_loss(logits, y, temperature):
        logp = F.log_softmax(logits / temperature, dim=-1)
        return F.nll_loss(logp, y) + 0.01 * logits.pow(2).mean()

    loss_fn = wrap(distill_loss)
    criterion = wrap(nn.CrossEntropyLoss(label_smoothing=0.1))
    out = []
    for i, (x, y) in enumerate(batches(10, 8, (10,), 3, last=5)):
        opt.zero_grad()
        logits = model(x)
        if both:
            loss = loss_fn(logits, y, 2.0) + criterion(logits, y)
        else:
            loss = loss_fn(logits, y, 2.0) if i % 2 else criterion(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_compiled_loss_functions():
    compare(compiled_loss, Compiler())


def test_two_compiled_losses_of_one_output():
    """Bit for bit but for the order of a sum: the logits' gradient adds three parts, and a
    compiled loss adds its own two before the engine adds the other loss's (eagerly the engine
    adds them as they arrive), within 1e-6."""
    compare(lambda wrap: compiled_loss(wrap, both=True), Compiler(), exact=False)


# --- 11b. @torch.compile on forward itself, and on a bound forward ---------------------------

def decorated_forward(wrap):
    """``@torch.compile`` on the class's ``forward``: ``self`` comes as an argument, and its
    modules' train()/eval() flags, freezing and hooks change what the call computes."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(10, 16)
            self.bn = nn.BatchNorm1d(16)
            self.drop = nn.Dropout(0.2)
            self.b = nn.Linear(16, 3)

        @wrap
        def forward(self, x):
            return self.b(self.drop(F.relu(self.bn(self.a(x)))))

    model = Net()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = []
    for i, (x, y) in enumerate(batches(10, 8, (10,), 3, last=5)):
        if i == 3:
            model.a.requires_grad_(False)
        if i == 5:
            model.a.requires_grad_(True)
        if i == 7:
            model.bn.register_forward_hook(lambda mod, inp, o: o * 0.5)
        model.train(i % 4 != 3)  # an evaluation step now and then, with the gradients taken
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_compile_decorating_forward():
    compare(decorated_forward, Compiler())


def bound_forward(wrap):
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    forward = wrap(model.forward)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = []
    for i, (x, y) in enumerate(batches(10, 8, (10,), 3, last=5)):
        if i == 3:
            model[0].requires_grad_(False)
        if i == 6:
            model[0].requires_grad_(True)
        model.train(i % 4 != 3)
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_compile_of_a_bound_forward():
    compare(bound_forward, Compiler())


# --- 12. under autocast ---------------------------------------------------------------------

def autocast_loop(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for i, (x, y) in enumerate(batches(8, 8, (10,), 3)):
        opt.zero_grad()
        with ng.autocast("cpu", dtype=ng.bfloat16):
            logits = m(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits.float()))
        if i % 3 == 2:
            with ng.no_grad():
                out.append(snap(model, m(x)))  # outside the region: float32
    return out


def test_compiled_model_under_autocast():
    compare(autocast_loop, Compiler())


def autocast_cnn(wrap):
    """A conv net with batch norm under bfloat16 autocast, the region disabled on some steps
    (``enabled=False``) and evaluation steps between."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 36, 3))
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = []
    for i, (x, y) in enumerate(batches(8, 4, (1, 6, 6), 3, last=3)):
        model.train(i % 3 != 2)
        with ng.autocast("cpu", dtype=ng.bfloat16, enabled=i % 4 != 1):
            logits = m(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits.float(), opt=opt))
    return out


def test_compiled_cnn_under_autocast_switched_on_and_off():
    compare(autocast_cnn, Compiler())


def float16_with_a_scaler(wrap):
    model = mlp()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    scaler = ng.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    out = []
    for x, y in batches(8, 8, (10,), 3):
        opt.zero_grad()
        with ng.autocast("cpu", dtype=ng.float16):
            logits = m(x)
            loss = F.cross_entropy(logits, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        out.append(snap(model, loss, logits.float(), np.array(scaler.get_scale())))
    return out


def test_float16_autocast_and_a_grad_scaler():
    compare(float16_with_a_scaler, Compiler())


# --- 13. float64 and a recurrent model ------------------------------------------------------

class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(out[:, -1])


def lstm_float64(wrap):
    ng.set_default_dtype(ng.float64)
    model = wrap(Classifier())
    opt = optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for x, y in batches(8, 4, (5, 4), 3, last=3, dtype=np.float64):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), 0.5)
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_lstm_classifier_in_float64():
    compare(lstm_float64, Compiler())


# --- 13a. a transformer encoder with padding masks; a conv + bidirectional GRU -------------

class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.pos = nn.Parameter(ng.randn(1, 12, 16) * 0.02)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 4)

    def forward(self, idx, pad):
        h = self.emb(idx) + self.pos[:, :idx.shape[1]]
        h = self.enc(h, src_key_padding_mask=pad)
        h = h.masked_fill(pad.unsqueeze(-1), 0.0).sum(1) / (~pad).sum(1, keepdim=True)
        return self.head(h)


def transformer(wrap):
    model = Encoder()
    m = wrap(model)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    sched = optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        T = 12 if i % 3 else 9  # two sequence lengths
        idx = ng.tensor(rng.integers(1, 30, (4, T)))
        pad = ng.tensor(np.arange(T)[None, :] >= rng.integers(3, T + 1, 4)[:, None])
        y = ng.tensor(rng.integers(0, 4, 4))
        if i == 6:
            model.eval()
        logits = m(idx, pad)
        loss = F.cross_entropy(logits, y, label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_transformer_encoder_with_padding_masks():
    comp = compare(transformer, Compiler())
    assert comp.jitted[0]().traces == 4  # two lengths, in train and in eval mode


class ConvGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.gru = nn.GRU(8, 12, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 2)

    def forward(self, x):
        out, _ = self.gru(F.relu(self.conv(x)).transpose(1, 2))
        return self.head(self.norm(out[:, -1]))


def conv_gru(wrap):
    model = ConvGRU()
    m = wrap(model)
    opt = optim.RMSprop(model.parameters(), lr=1e-3)
    out = []
    for x, y in batches(6, 4, (3, 10), 2, last=3):
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_conv_and_bidirectional_gru():
    compare(conv_gru, Compiler())


# --- 13b. activation checkpointing, SWA, a gradient penalty --------------------------------

class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(ng.utils.checkpoint.checkpoint(self.body, x, use_reentrant=False))


def checkpointed(wrap):
    model = Checkpointed()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for x, y in batches(6, 8, (10,), 3):
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, opt=opt))
    return out


def test_activation_checkpointing_inside_the_compiled_model():
    compare(checkpointed, Compiler())


def swa(wrap):
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    m = wrap(model)
    swa_model = optim.swa_utils.AveragedModel(m)
    opt = optim.SGD(model.parameters(), lr=0.1)
    sched = optim.swa_utils.SWALR(opt, swa_lr=0.05)
    data = batches(6, 8, (10,), 3)
    out = []
    for i, (x, y) in enumerate(data):
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            swa_model.update_parameters(m)
            sched.step()
        out.append(snap(model, loss, logits, opt=opt))
    optim.swa_utils.update_bn([x for x, _ in data], swa_model)
    swa_model.eval()
    with ng.no_grad():
        out.append(snap(swa_model, swa_model(data[0][0])))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_swa_of_a_compiled_model(how):
    compare(swa, Compiler(how))


def test_a_gradient_penalty_through_a_compiled_critic_names_the_fix():
    """WGAN-GP differentiates the critic's input gradient again (``create_graph=True``), which
    a compiled backward cannot (as under torch.compile): a clear error that names the fix, and
    with the fix the same numbers as the critic as written."""
    def penalty(d, x):
        interp = x.clone().requires_grad_(True)
        (g,) = ng.autograd.grad(d(interp).sum(), interp, create_graph=True)
        return ((g.norm(2, dim=1) - 1) ** 2).mean()

    critic = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    compiled = ng.compile(critic)
    x = ng.randn(8, 6)
    penalty(compiled, x)  # traced: the call ran as written
    with pytest.raises(ng.errors.GradError, match="disable_jit"):
        penalty(compiled, x)  # replayed
    with ng.disable_jit():
        got = penalty(compiled, x)
        got.backward()
    grads = snap(critic)
    critic.zero_grad()
    want = penalty(critic, x)
    want.backward()
    assert got.item() == want.item()
    for a, b in zip(grads, snap(critic)):
        _close(a, b, True, "gradient penalty")


def first_order_maml(wrap):
    """Reptile/first-order MAML's inner loop: ``torch.func.functional_call`` of the (compiled)
    model with fast weights, then the averaged model evaluated with another set."""
    model = mlp()
    m = wrap(model)
    prefix = "_orig_mod." if m is not model else ""
    meta_opt = optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for x, y in batches(4, 8, (10,), 3):
        fast = {prefix + k: v.detach().clone().requires_grad_() for k, v in
                model.named_parameters()}
        for _ in range(2):  # inner steps on the task
            loss = F.cross_entropy(ng.func.functional_call(m, fast, (x,)), y)
            grads = ng.autograd.grad(loss, list(fast.values()))
            fast = {k: (v - 0.1 * g).detach().requires_grad_() for (k, v), g in
                    zip(fast.items(), grads)}
            out.append(snap(model, loss, grads))
        meta_opt.zero_grad()
        for p, v in zip(model.parameters(), fast.values()):
            p.grad = (p - v).detach()  # Reptile's meta-gradient
        meta_opt.step()
        with ng.no_grad():
            out.append(snap(model, m(x), ng.func.functional_call(m, fast, (x,))))
    return out


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_functional_call_of_a_compiled_model(how):
    """The swapped-in tensors are the ones the call computes with (the compiled call replayed
    the model's own parameters, silently)."""
    compare(first_order_maml, Compiler(how))


# --- 13c. torch.compiler.reset() and torch.compiler.disable ---------------------------------

def test_compiler_reset_forgets_every_program():
    model = mlp()
    compiled = ng.compile(model, options={"fuse": False})
    step = ng.compile(lambda x: ng.tanh(x) * 2, options={"fuse": False})
    x, _ = batches(1, 8, (10,), 3)[0]
    with ng.no_grad():
        want = compiled(x).numpy()
        compiled(x)
    step(x)
    assert compiled._jitted.traces == 1 and len(compiled._jitted.cache) == 1
    ng.compiler.reset()
    assert len(compiled._jitted.cache) == 0 and len(step.jitted.cache) == 0
    with ng.no_grad():
        assert np.array_equal(compiled(x).numpy(), want)
    assert compiled._jitted.traces == 2


class LogsItsStatistics(nn.Module):
    """A forward that logs a statistic through Python on every call, kept out of compilation
    with ``torch.compiler.disable``."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.log = []

    @ng.compiler.disable
    def record(self, h):
        self.log.append(float(h.abs().mean()))

    def forward(self, x):
        h = self.net(x)
        self.record(h)
        return h


def logged(wrap):
    model = LogsItsStatistics()
    m = wrap(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    out = []
    for x, y in batches(5, 8, (10,), 3):
        logits = m(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(snap(model, loss, logits, np.array(model.log)))
    return out


def test_compiler_disable_runs_the_function_on_every_call():
    comp = compare(logged, Compiler(), replays=False)
    assert "compiler.disable: LogsItsStatistics.record" in comp.replayed()[0]
    x, _ = batches(1, 8, (10,), 3)[0]
    with pytest.raises(ng.errors.JitError, match="fullgraph=True.*compiler.disable"):
        ng.compile(LogsItsStatistics(), fullgraph=True)(x)
    # under ng.jit, where reading a traced value into Python is an error, it runs eagerly too
    model = LogsItsStatistics()
    jitted = ng.jit(model)
    for _ in range(3):
        jitted(x)
    assert len(model.log) == 3 and "compiler.disable" in jitted.last.reason


def test_compiler_disable_forms_and_bad_input():
    def f(x):
        return x + 1

    x = ng.ones(2)
    for g in (ng.compiler.disable(f), ng.compiler.disable()(f),
              ng.compiler.disable(recursive=False, reason="logging")(f)):
        assert g.__wrapped__ is f and np.array_equal(g(x).numpy(), [2, 2])
    with pytest.raises(TypeError, match="compiler.disable: expected a function, got int"):
        ng.compiler.disable(3)
    with pytest.raises(TypeError, match="got a module"):
        ng.compiler.disable(mlp())
    with pytest.raises(TypeError, match="recursive must be True or False"):
        ng.compiler.disable(f, recursive="yes")


# --- 14. state dicts and safetensors checkpoints of compiled models -------------------------

def test_state_dict_keys_and_a_checkpoint_loaded_into_an_uncompiled_model(tmp_path):
    from safetensors.numpy import load_file

    model = mlp()
    compiled = ng.compile(model)
    opt = optim.Adam(compiled.parameters(), lr=1e-2)
    x, y = batches(1, 8, (10,), 3)[0]
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    keys = list(model.state_dict())
    assert list(compiled.state_dict()) == ["_orig_mod." + k for k in keys]  # PyTorch's prefix
    ng.save(compiled.state_dict(), tmp_path / "compiled.safetensors")
    assert sorted(load_file(str(tmp_path / "compiled.safetensors"))) == sorted(
        "_orig_mod." + k for k in keys)
    ng.save(compiled._orig_mod.state_dict(), tmp_path / "plain.safetensors")

    fresh = mlp()
    with pytest.raises(Exception, match="_orig_mod"):  # strict: the prefix does not match
        fresh.load_state_dict(ng.load(tmp_path / "compiled.safetensors"))
    sd = {k.removeprefix("_orig_mod."): v
          for k, v in ng.load(tmp_path / "compiled.safetensors").items()}
    fresh.load_state_dict(sd)
    fresh2 = mlp()
    fresh2.load_state_dict(ng.load(tmp_path / "plain.safetensors"))
    with ng.no_grad():
        want = compiled(x).numpy()
        assert np.array_equal(fresh(x).numpy(), want)
        assert np.array_equal(fresh2(x).numpy(), want)

    # and back: an eager checkpoint into a compiled model, whose programs read the new weights
    again = ng.compile(mlp())
    with ng.no_grad():
        again(x)
    again.load_state_dict({"_orig_mod." + k: v for k, v in fresh.state_dict().items()})
    again._orig_mod.load_state_dict(fresh.state_dict())
    with ng.no_grad():
        assert np.array_equal(again(x).numpy(), want)
    assert again._jitted.last.program is not None


def test_model_compile_keeps_its_keys_through_a_checkpoint(tmp_path):
    model = mlp()
    model.compile(mode="max-autotune")
    opt = optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1, 8, (10,), 3)[0]
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert list(model.state_dict()) == list(mlp().state_dict())
    ng.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3},
            tmp_path / "ckpt.safetensors")
    ckpt = ng.load(tmp_path / "ckpt.safetensors")
    fresh = mlp()
    fresh.load_state_dict(ckpt["model"])
    fopt = optim.SGD(fresh.parameters(), lr=0.1)
    fopt.load_state_dict(ckpt["optimizer"])
    model.eval(), fresh.eval()
    with ng.no_grad():
        assert np.array_equal(fresh(x).numpy(), model(x).numpy())
    # a compiled model resumes from the checkpoint as the uncompiled one does
    resumed = mlp()
    resumed.load_state_dict(ckpt["model"])
    resumed.compile()
    ropt = optim.SGD(resumed.parameters(), lr=0.1)
    ropt.load_state_dict(ckpt["optimizer"])
    for mod, o in ((fresh, fopt), (resumed, ropt)):
        mod.train()
        for _ in range(2):
            o.zero_grad()
            F.cross_entropy(mod(x), y).backward()
            o.step()
    for a, b in zip(fresh.parameters(), resumed.parameters()):
        assert np.array_equal(a.numpy(), b.numpy())


# --- 15. fit(jit=True) and `nodegrad train --jit` against eager -----------------------------

def test_fit_with_jit_matches_eager(monkeypatch):
    """``fit(jit=True)`` against ``fit`` from the same seed, with a partial last batch, batch
    norm, dropout, a one-cycle schedule, clipping and validation: the same weights, step
    losses and metrics, bit for bit with its programs unfused (fused, as by default, within
    1e-6 a step; ``test_cli_train_jit_matches_eager`` runs the default)."""
    import functools

    from nodegrad import data as nd
    from nodegrad import train
    from nodegrad.train import loop

    monkeypatch.setattr(loop, "_jit", functools.partial(ng.jit, fuse=False))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((70, 10)).astype(np.float32)
    Y = rng.integers(0, 3, 70)
    runs = []
    for jit in (False, True):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(32, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2)
        sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=3 * 5)
        loader = nd.DataLoader(nd.ArrayDataset(X, Y), 16, shuffle=True, seed=0)  # 16*4 + 6
        val = nd.DataLoader(nd.ArrayDataset(X[:20], Y[:20]), 8)
        h = train.fit(model, F.cross_entropy, opt, loader, val, epochs=3, scheduler=sched,
                      progress=False, jit=jit, callbacks=[train.GradientClipping(max_norm=1.0)])
        runs.append((model, opt, h))
    (a, oa, ha), (b, ob, hb) = runs
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert v.numpy().tobytes() == w.numpy().tobytes(), k
    for u, v in zip(snap(a, opt=oa), snap(b, opt=ob)):  # gradients and Adam's state too
        _close(u, v, True, "fit")
    assert len(ha.steps) == 15 and list(ha.steps) == list(hb.steps)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert ha[key] == hb[key], key


@pytest.mark.parametrize("how", ["compile", "inplace"])
def test_fit_of_a_compiled_model_and_its_resumed_run(how, tmp_path):
    """``fit`` given ``ng.compile(model)`` (its checkpoints keyed ``_orig_mod.``) or a module
    compiled in place: the eager run's weights bit for bit, and a run resumed from a checkpoint
    ends with them too."""
    from nodegrad import data as nd
    from nodegrad import train

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 10)).astype(np.float32)
    Y = rng.integers(0, 3, 40)

    def run(comp, epochs=3, **kw):
        ng.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                              nn.Linear(32, 3))
        m = comp(model)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = nd.DataLoader(nd.ArrayDataset(X, Y), 16, shuffle=True, seed=0)  # 16, 16, 8
        val = nd.DataLoader(nd.ArrayDataset(X[:12], Y[:12]), 8)
        h = train.fit(m, F.cross_entropy, opt, loader, val, epochs=epochs, progress=False, **kw)
        return model, h

    ref, href = run(lambda m: m)
    for kw in ({}, {"run_dir": tmp_path, "epochs": 2}, {"run_dir": tmp_path, "resume": True}):
        model, h = run(Compiler(how), **kw)
        if kw.get("epochs") == 2:
            continue
        for (k, v), w in zip(ref.state_dict().items(), model.state_dict().values()):
            assert v.numpy().tobytes() == w.numpy().tobytes(), k
        assert h["val_accuracy"] == href["val_accuracy"] and h["loss"] == href["loss"]


def test_cli_train_jit_matches_eager(tmp_path, capsys, monkeypatch):
    from nodegrad.cli import main
    from nodegrad.train import plots

    monkeypatch.setattr(plots, "plot_run", lambda *a, **k: [])  # the numbers only

    outs = []
    for jit in (False, True):
        out = tmp_path / f"run{int(jit)}"
        argv = ["train", "--model", "digits_mlp", "--epochs", "2", "--seed", "3", "--dropout",
                "0.1", "--schedule", "cosine", "--quiet", "--out", str(out)]
        assert main(argv + ["--jit"] * jit) == 0
        outs.append(out)
    capsys.readouterr()
    a, b = (ng.load(o / "model.safetensors") for o in outs)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k
    assert (outs[0] / "steps.jsonl").read_text().splitlines() == [
        json.dumps(json.loads(r)) for r in (outs[1] / "steps.jsonl").read_text().splitlines()]
    ra, rb = (json.loads((o / "results.json").read_text()) for o in outs)
    assert {k: v for k, v in ra.items() if k != "plots" and "time" not in k} == {
        k: v for k, v in rb.items() if k != "plots" and "time" not in k}


# --- 16. fused (last: numba, once imported, also compiles eager ops' loops) ------------------

def test_tutorial_loop_fused():
    compare(tutorial_loop, Compiler(fuse=None))
