"""jit on real training steps: each step is written as PyTorch users write it and run eagerly and
under ``ng.jit(step, state=...)`` from the same weights and seed; the loss, the step's other
outputs, every parameter, buffer and optimiser state agree after every step (bit for bit without
fusion; within 1e-6 relative in float32 and 1e-12 in float64 when fused). What cannot be traced
fails at trace time with a ``JitError`` that names the line and the fix."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, optim
from nodegrad.errors import JitError
from nodegrad.nn import functional as F

STEPS = 20


@pytest.fixture(autouse=True)
def _restore_dtype(request):
    # the fused larger programs (marked slow) run only when asked for, ``-m slow``, even where
    # the project's ``-m 'not slow'`` is overridden
    if request.node.get_closest_marker("slow") and "slow" not in (
            request.config.getoption("markexpr", "") or "").replace("not slow", ""):
        pytest.skip("a slow case: run with -m slow")
    old = ng.get_default_dtype()
    yield
    ng.set_default_dtype(old)


@dataclass
class Run:
    """One training program: what ``jit`` holds as state, the step, the batches, and what runs
    between calls (schedulers, mode switches, freezing)."""
    state: tuple
    step: Callable
    batches: list
    between: Callable[[int, Any], None] | None = None
    extra: Callable[[], list] = field(default=list)  # more tensors to compare


def _arrays(out) -> list:
    if isinstance(out, ng.Tensor):
        return [out.numpy().copy()]
    if isinstance(out, tuple | list):
        return [a for o in out for a in _arrays(o)]
    if isinstance(out, dict):
        return [a for k in sorted(out) for a in _arrays(out[k])]
    return [np.asarray(out).copy()]


def _snapshot(run: Run, out) -> list:
    """The step's outputs, every module's state_dict, every parameter's gradient and every
    optimiser's state and learning rates."""
    snap = _arrays(out)
    for obj in run.state:
        if isinstance(obj, nn.Module):
            for v in obj.state_dict().values():
                snap.append(v.numpy().copy())
            for p in obj.parameters():
                snap.append(None if p.grad is None else p.grad.numpy().copy())
        elif isinstance(obj, optim.Optimizer):
            sd = obj.state_dict()
            for k in sorted(sd["state"]):
                for name in sorted(sd["state"][k]):
                    snap.append(_arrays(sd["state"][k][name])[0])
            snap.append(np.array([g["lr"] for g in obj.param_groups]))
        elif obj is not None and hasattr(obj, "state_dict"):  # a scaler
            snap.append(np.array(sorted((k, str(v)) for k, v in obj.state_dict().items())))
    return snap + [a.numpy().copy() for a in run.extra()]


def _trajectory(make: Callable[[], Run], jit: bool, fuse=None, seed=0):
    ng.manual_seed(seed)
    run = make()
    step = ng.jit(run.step, state=run.state, fuse=fuse) if jit else run.step
    snaps = []
    for i, batch in enumerate(run.batches):
        out = step(*batch)
        snaps.append(_snapshot(run, out))
        if run.between is not None:
            run.between(i, out)
    return snaps, step


def _close(a, b, exact: bool, rtol: float, where: str):
    if a is None or b is None:
        assert a is None and b is None, where
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, where
    if exact or a.dtype.kind not in "fc":
        assert a.tobytes() == b.tobytes(), f"{where}: {a} != {b}"
    else:
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol, err_msg=where)


def check(make: Callable[[], Run], fuse=False, replays: bool = True):
    """Run ``make()``'s program eagerly and jitted; every snapshot agrees (bit for bit with
    ``fuse=False``). ``replays``: the jitted step must really replay (not run eagerly)."""
    ref, _ = _trajectory(make, jit=False)
    got, jitted = _trajectory(make, jit=True, fuse=fuse)
    f32 = any(a is not None and getattr(a, "dtype", None) == np.float32 for s in ref for a in s)
    rtol = 1e-6 if f32 else 1e-12
    for i, (r, g) in enumerate(zip(ref, got)):
        assert len(r) == len(g)
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, fuse is False, rtol, f"step {i}, value {k}")
    if replays:
        assert jitted.last is not None and jitted.last.program is not None, (
            getattr(jitted.last, "reason", None))
    return jitted


def data(n, shape, classes, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(ng.tensor(rng.standard_normal(shape).astype(dtype)),
             ng.tensor(rng.integers(0, classes, shape[0]))) for _ in range(n)]


def _dt(dtype):
    return np.float32 if dtype == "float32" else np.float64


DTYPES = ["float32", "float64"]
FUSE = [pytest.param(False, id="unfused"), pytest.param(None, id="fused")]
# fused programs compile their kernels with numba in each test session (~0.5 s a kernel): the
# larger programs run fused under ``pytest -m slow``
FUSE_SLOW = [pytest.param(False, id="unfused"),
             pytest.param(None, id="fused", marks=pytest.mark.slow)]
DT_FUSE = [pytest.param("float32", False, id="float32-unfused"),
           pytest.param("float64", False, id="float64-unfused"),
           pytest.param("float32", None, id="float32-fused"),
           pytest.param("float64", None, id="float64-fused", marks=pytest.mark.slow)]


# --- 1. an MLP with dropout, Adam -----------------------------------------------------------

def mlp_dropout(dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2)

        def train_step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), train_step, data(STEPS, (16, 10), 3, dtype=_dt(dtype)))
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE)
def test_mlp_dropout_adam(dtype, fuse):
    check(mlp_dropout(dtype), fuse)


def test_dropout_fresh_draws_and_seeded():
    ng.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5))
    f = ng.jit(lambda x: model(x), state=model)
    x = ng.ones(4, 8)
    with ng.no_grad():
        outs = [f(x).numpy().copy() for _ in range(4)]
    assert f.traces == 1
    masks = [o == 0 for o in outs]
    assert not any(np.array_equal(masks[0], m) for m in masks[1:])  # a fresh mask each call
    ng.manual_seed(3)
    model2 = nn.Sequential(nn.Linear(8, 64), nn.Dropout(0.5))
    with ng.no_grad():
        again = [model2(x).numpy() for _ in range(4)]
    for a, b in zip(outs, again):  # the same numbers eager draws from the same seed
        assert np.array_equal(a, b)


# --- 2. batch norm: running statistics, train/eval switched between calls -------------------

def bn_net(dtype, switch=True):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(),
                              nn.Linear(12, 4), nn.BatchNorm1d(4, momentum=None))
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(x, y):
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, out

        def between(i, out):
            if switch and i % 5 == 3:
                model.eval()  # fine-tune with frozen statistics for a step
            else:
                model.train()
        return Run((model, opt), step, data(STEPS, (16, 6), 4, dtype=_dt(dtype)), between)
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE)
def test_batchnorm_train_eval_switch(dtype, fuse):
    j = check(bn_net(dtype), fuse)
    assert j.traces == 2


# --- 3. learning-rate schedules outside the step, and hand-set group lrs --------------------

def scheduled(kind):
    def make():
        ng.set_default_dtype(ng.float64)
        model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        if kind == "steplr":
            sched = optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        elif kind == "onecycle":
            sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS)
        elif kind == "plateau":
            sched = optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
        else:
            sched = None

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        def between(i, loss):
            if kind == "plateau":
                sched.step(loss.item() + (0.0 if i < 6 else 10.0))  # a plateau from step 6
            elif sched is not None:
                sched.step()
            else:
                for g in opt.param_groups:
                    g["lr"] = 0.1 / (1 + i)
                    g["momentum"] = 0.5 if i > 10 else 0.9
        return Run((model, opt), step, data(STEPS, (8, 5), 2, dtype=np.float64), between)
    return make


@pytest.mark.parametrize("kind", ["steplr", "onecycle", "plateau", "manual"])
def test_lr_schedules_outside_the_step(kind):
    j = check(scheduled(kind))
    assert j.traces == 1


# --- 4. gradient clipping ------------------------------------------------------------------

def clipped(how):
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = optim.RMSprop(model.parameters(), lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x).squeeze(-1), y)
            loss.backward()
            if how == "norm":
                norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            elif how == "norm_inf":
                norm = nn.utils.clip_grad_norm_(model.parameters(), 0.1, norm_type=math.inf)
            else:
                nn.utils.clip_grad_value_(model.parameters(), clip_value=0.05)
                norm = loss
            opt.step()
            return loss, norm
        rng = np.random.default_rng(1)
        batches = [(ng.tensor(rng.standard_normal((16, 8)).astype(np.float32)),
                    ng.tensor((3 * rng.standard_normal(16)).astype(np.float32)))
                   for _ in range(STEPS)]
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("how", ["norm", "norm_inf", "value"])
def test_gradient_clipping(how, fuse):
    check(clipped(how), fuse)


# --- 5. accumulation over micro-batches; two param groups with and without weight decay -------

def accumulated(dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
        decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2]
        no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight")
                                                                   and p.ndim == 2)]
        opt = optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0, "lr": 3e-3}], lr=1e-2)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for xb, yb in zip(x.chunk(4), y.chunk(4)):
                loss = F.cross_entropy(model(xb), yb) / 4
                loss.backward()
                total += loss.detach()
            opt.step()
            return total
        return Run((model, opt), step, data(STEPS, (16, 6), 3, dtype=_dt(dtype)))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulation_and_two_param_groups(dtype, fuse):
    check(accumulated(dtype), fuse)


# --- 6. frozen layers toggled between calls --------------------------------------------------

def frozen():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                              nn.Linear(16, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        def between(i, out):
            if i == 4:
                model[0].requires_grad_(False)  # freeze the first layer
            if i == 9:
                for p in model[2].parameters():
                    p.requires_grad_(False)
            if i == 14:
                model.requires_grad_(True)  # unfreeze all
        return Run((model, opt), step, data(STEPS, (16, 6), 3), between)
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_frozen_layers_toggled(fuse):
    j = check(frozen(), fuse)
    assert j.traces == 3  # all trainable, first frozen, two frozen (then all again: cached)


# --- 7. GradScaler and autocast ------------------------------------------------------------

def scaled(low):
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = ng.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)

        def step(x, y):
            opt.zero_grad()
            with ng.autocast(device_type="cpu", dtype=getattr(ng, low)):
                out = model(x)
                loss = F.cross_entropy(out, y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            return loss
        batches = data(STEPS, (16, 8), 3)
        batches[7] = (batches[7][0] * float("inf"), batches[7][1])  # an overflowing batch
        return Run((model, opt, scaler), step, batches)
    return make


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_grad_scaler_autocast(low):
    check(scaled(low))


def scaled_outside():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.05)
        scaler = ng.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)

        def forward_backward(x, y):  # jitted; the scaler's step and update run outside
            opt.zero_grad()
            with ng.autocast("cpu", dtype=ng.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            return loss

        def between(i, loss):
            scaler.step(opt)
            scaler.update()  # the scale grows every other step: each call reads the new one
        return Run((model, opt, scaler), forward_backward, data(10, (16, 8), 3), between)
    return make


def test_grad_scaler_outside_the_jitted_backward():
    check(scaled_outside())


# --- 8. EMA of the weights inside the step, under no_grad ------------------------------------

def ema_step():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        ema = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        ema.load_state_dict(model.state_dict())
        for p in ema.parameters():
            p.requires_grad_(False)
        opt = optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            with ng.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.mul_(0.9).add_(p.detach(), alpha=0.1)
                ema_loss = F.cross_entropy(ema(x), y)
            return loss, ema_loss
        return Run((model, ema, opt), step, data(STEPS, (16, 6), 3))
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_ema_shadow_model(fuse):
    check(ema_step(), fuse)


# --- 9. a GAN: two optimisers in one step, detach() --------------------------------------------

def gan(dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        G = nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.2), nn.Linear(16, 2))
        D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        opt_g = optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
        opt_d = optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()

        def step(real):
            z = ng.randn(real.shape[0], 4)
            fake = G(z)
            ones = ng.ones(real.shape[0], 1)
            zeros = ng.zeros(real.shape[0], 1)
            opt_d.zero_grad()
            loss_d = bce(D(real), ones) + bce(D(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss_g = bce(D(fake), ones)
            loss_g.backward()
            opt_g.step()
            return loss_d, loss_g
        rng = np.random.default_rng(2)
        batches = [(ng.tensor((rng.standard_normal((16, 2)) * 0.5 + 1).astype(_dt(dtype))),)
                   for _ in range(STEPS)]
        return Run((G, D, opt_g, opt_d), step, batches)
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE)
def test_gan_two_optimisers(dtype, fuse):
    check(gan(dtype), fuse)


# --- 10. several outputs; retain_graph with two backward calls; zero_grad(set_to_none=False) ----

def multi_out(set_to_none):
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
        aux = nn.Linear(16, 1)
        opt = optim.SGD(list(model.parameters()) + list(aux.parameters()), lr=0.05,
                        momentum=0.9, weight_decay=1e-4)

        def step(x, y):
            opt.zero_grad(set_to_none=set_to_none)
            h = model[1](model[0](x))
            logits = model[2](h)
            loss = F.cross_entropy(logits, y)
            reg = aux(h).pow(2).mean()
            loss.backward(retain_graph=True)  # the trunk's graph is used again
            reg.backward()
            opt.step()
            acc = (logits.argmax(dim=1) == y).float().mean()
            return {"loss": loss, "logits": logits.detach(), "acc": acc}
        return Run((model, aux, opt), step, data(STEPS, (16, 6), 4))
    return make


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("set_to_none", [True, False])
def test_several_outputs_retain_graph(set_to_none, fuse):
    check(multi_out(set_to_none), fuse)


# --- 11. language models: embedding + LSTM / GRU, a transformer block with masks ---------------

class RNNLM(nn.Module):
    def __init__(self, kind, vocab=20, emb=8, hidden=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb, padding_idx=0)
        self.rnn = getattr(nn, kind)(emb, hidden, num_layers=2, batch_first=True, dropout=0.2)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.drop(self.embed(tokens)), state)
        return self.head(self.drop(out)), state


def lm_batches(n, batch=4, seq=7, vocab=20, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.integers(1, vocab, (batch, seq + 1))
        t[0, -3:] = 0  # padding at the end of the first sequence
        out.append((ng.tensor(t[:, :-1]), ng.tensor(t[:, 1:])))
    return out


def rnn_lm(kind, dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = RNNLM(kind)
        opt = optim.Adam(model.parameters(), lr=3e-3)

        def step(x, y):
            model.train()
            opt.zero_grad()
            logits, _ = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                   ignore_index=0)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            return loss
        return Run((model, opt), step, lm_batches(STEPS // 2))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
@pytest.mark.parametrize("kind,dtype", [("LSTM", "float32"), ("GRU", "float32"),
                                        ("LSTM", "float64"), ("GRU", "float64")])
def test_rnn_language_model(kind, dtype, fuse):
    check(rnn_lm(kind, dtype), fuse)


class Block(nn.Module):
    def __init__(self, d=16, heads=4, vocab=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(ng.randn(1, 8, d) * 0.02)
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=0.1, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(0.1))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens, pad_mask):
        T = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:, :T]
        causal = ng.triu(ng.ones(T, T, dtype=ng.bool), diagonal=1)
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=pad_mask,
                         need_weights=False)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def transformer(dtype, adam=True):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = Block()
        # the key bias's gradient is zero but for rounding (softmax ignores a shift per
        # query), which Adam scales up to full steps: fused, whose roundings differ, takes SGD
        opt = (optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01) if adam else
               optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01))

        def step(x, y):
            pad = x == 0
            logits = model(x, pad)
            loss = F.cross_entropy(logits.reshape(-1, 20), y.reshape(-1), ignore_index=0,
                                   label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss, logits.detach()
        batches = lm_batches(STEPS // 2)
        for b in batches:  # padded positions hold token 0; keep the first position real
            b[0]._data[0, :] = np.maximum(b[0]._data[0, :], 1)
            b[0]._data[1, -2:] = 0
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_block_masks(dtype, fuse):
    check(transformer(dtype, adam=fuse is False), fuse)


# --- 12. losses: label smoothing, ignore_index, class weights --------------------------------

def smoothed(dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = nn.Sequential(nn.Linear(6, 16), nn.SiLU(), nn.Linear(16, 5))
        crit = nn.CrossEntropyLoss(weight=ng.tensor([1.0, 2.0, 0.5, 1.0, 1.5]),
                                   label_smoothing=0.2, ignore_index=-100)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            logits = model(x)
            loss = crit(logits, y)
            nll = F.nll_loss(F.log_softmax(logits, dim=-1), y, ignore_index=-100,
                             reduction="sum")
            loss.backward()
            opt.step()
            return loss, nll
        batches = data(STEPS, (12, 6), 5, dtype=_dt(dtype))
        for _, y in batches:
            y._data[::4] = -100
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
@pytest.mark.parametrize("dtype", DTYPES)
def test_label_smoothing_ignore_index(dtype, fuse):
    check(smoothed(dtype), fuse)


# --- 13. shapes that change between calls; a last smaller batch -------------------------------

def ragged():
    def make():
        ng.set_default_dtype(ng.float32)
        # no bias before batch norm: its gradient is zero but for rounding, which Adam would
        # scale up to full-size steps (fused and unfused roundings then part ways)
        model = nn.Sequential(nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                              nn.Dropout(0.2), nn.Linear(16, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        rng = np.random.default_rng(4)
        sizes = [16, 16, 16, 5] * 3 + [16, 8, 16, 8, 3]  # epochs with a last smaller batch
        batches = [(ng.tensor(rng.standard_normal((n, 6)).astype(np.float32)),
                    ng.tensor(rng.integers(0, 3, n))) for n in sizes]
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_shapes_change_between_calls(fuse):
    j = check(ragged(), fuse)
    assert j.traces == 4


# --- 14. what cannot be traced: a clear error at trace time, naming the line and the fix -------

def _bad_step(kind):
    model = nn.Linear(4, 1)
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        if kind == "item":
            print(loss.item())  # BAD-LINE
        elif kind == "if":
            if loss > 0:  # BAD-LINE
                loss = loss * 2
        elif kind == "numpy":
            np.save("/dev/null", loss.numpy())  # BAD-LINE
        loss.backward()
        opt.step()
        return loss
    return ng.jit(step, state=(model, opt)), model


@pytest.mark.parametrize("kind", ["item", "if", "numpy"])
def test_reading_a_traced_value_raises_at_trace_time(kind):
    step, model = _bad_step(kind)
    before = [p.numpy().copy() for p in model.parameters()]
    with pytest.raises(JitError) as e:
        step(ng.ones(3, 4))
    msg = str(e.value)
    src = inspect.getsource(_bad_step).splitlines()
    line = inspect.getsourcelines(_bad_step)[1] + next(
        k for k, s in enumerate(src) if "BAD-LINE" in s and (
            {"item": ".item()", "if": "if loss", "numpy": ".numpy()"}[kind] in s))
    assert f"test_jit_real_steps.py:{line}" in msg or f"line {line}" in msg, msg
    assert "outside" in msg or "disable_jit" in msg, msg  # the fix
    # the failed trace left the model as it was (no half-applied update)
    for p, b in zip(model.parameters(), before):
        assert np.array_equal(p.numpy(), b)


# --- 15. more of what steps do: schedules inside the step, OneCycle's momentum on Adam's betas,
#         backward-only steps accumulating across calls, closures, manual gradient edits -------

def sched_inside(kind):
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2)
        if kind == "onecycle":
            sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 1)
        else:
            sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()  # per-batch schedule, as OneCycle's examples write it
            return loss
        return Run((model, opt), step, data(STEPS, (16, 6), 3),
                   extra=lambda: [ng.tensor(np.array(opt.param_groups[0]["betas"]))])
    return make


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
def test_scheduler_stepped_inside_the_step(kind):
    check(sched_inside(kind))


def onecycle_adam_outside():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2, fused=None)
        sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 1,
                                              cycle_momentum=True)

        def step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
        return Run((model, opt), step, data(STEPS, (16, 6), 3), lambda i, o: sched.step())
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_onecycle_cycles_adam_betas(fuse):
    check(onecycle_adam_outside(), fuse)


def backward_only(set_to_none):
    def make():
        ng.set_default_dtype(ng.float64)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def fwd_bwd(x, y):  # the step outside: gradients add up over four calls
            loss = F.cross_entropy(model(x), y) / 4
            loss.backward()
            return loss

        def between(i, out):
            if i % 4 == 3:
                opt.step()
                opt.zero_grad(set_to_none=set_to_none)
        return Run((model, opt), fwd_bwd, data(STEPS, (8, 6), 3, dtype=np.float64), between)
    return make


@pytest.mark.parametrize("set_to_none", [True, False])
def test_backward_only_step_accumulates_across_calls(set_to_none):
    check(backward_only(set_to_none))


def grads_assigned(how):
    """``p.grad = <tensor>`` in the step before backward (zeros made in the step, a value
    computed from the parameter, a tensor made outside): each replay assigns it again, and
    backward adds into it as eagerly (a replay skipped the assignment, so the gradients of
    successive calls added up)."""
    def make():
        ng.set_default_dtype(ng.float64)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        outside = {id(p): ng.full(p.shape, 0.01, dtype=ng.float64) for p in model.parameters()}

        def step(x, y):
            for p in model.parameters():
                if how == "zeros":
                    p.grad = ng.zeros_like(p)
                elif how == "computed":  # an L2 term put in by hand
                    p.grad = p.detach() * 1e-3
                else:
                    p.grad = outside[id(p)]
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, data(8, (16, 6), 3, dtype=np.float64))
    return make


@pytest.mark.parametrize("how", ["zeros", "computed", "outside"])
def test_grads_assigned_in_the_step_are_assigned_on_every_replay(how):
    """A tensor made outside the step (which backward adds into on every call) runs eagerly,
    saying why; the others replay."""
    j = check(grads_assigned(how), replays=how != "outside")
    if how == "outside":
        assert j.last.program is None and "held elsewhere" in j.last.reason


def closure_step(kind):
    def make():
        ng.set_default_dtype(ng.float64)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = (optim.LBFGS(model.parameters(), lr=0.5, max_iter=3, history_size=4)
               if kind == "lbfgs" else optim.SGD(model.parameters(), lr=0.05))

        def step(x, y):
            def closure():
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                return loss
            return opt.step(closure)
        rng = np.random.default_rng(5)
        batches = [(ng.tensor(rng.standard_normal((16, 4))), ng.tensor(rng.standard_normal(
            (16, 1)))) for _ in range(8)]
        return Run((model, opt), step, batches)
    return make


def test_optimizer_step_with_closure():
    # the closure is the step's own code: a replay computes it from each call's inputs (it ran
    # the traced call's batch again, its loss and gradients those of the first call)
    j = check(closure_step("sgd"))
    assert j.traces == 1


def test_lbfgs_step_raises_naming_the_line():
    ng.manual_seed(0)
    run = closure_step("lbfgs")()
    step = ng.jit(run.step, state=run.state)
    with pytest.raises(JitError) as e:
        step(*run.batches[0])
    msg = str(e.value)
    assert "return opt.step(closure)" in msg and "test_jit_real_steps.py" in msg, msg
    assert "eagerly" in msg, msg


def grad_edits():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.data.mul_(0.5)  # a manual rescale
                    p.grad.add_(p.data, alpha=1e-3)  # and L2 decay by hand
            opt.step()
            return loss
        return Run((model, opt), step, data(STEPS, (16, 6), 3))
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_manual_gradient_edits(fuse):
    check(grad_edits(), fuse)


# --- 16. a gradient penalty (create_graph) and a train step beside a jitted eval step ------------

def wgan_gp():
    def make():
        ng.set_default_dtype(ng.float64)
        D = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))

        def step(real, fake):
            eps = ng.rand(real.shape[0], 1)
            mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
            g, = ng.autograd.grad(D(mix).sum(), mix, create_graph=True)
            gp = ((g.norm(2, dim=1) - 1) ** 2).mean()
            loss = D(fake).mean() - D(real).mean() + 10 * gp
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, gp
        rng = np.random.default_rng(6)
        batches = [(ng.tensor(rng.standard_normal((8, 2)) + 2), ng.tensor(rng.standard_normal(
            (8, 2)))) for _ in range(STEPS)]
        return Run((D, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_gradient_penalty_create_graph(fuse):
    check(wgan_gp(), fuse)


def train_and_eval():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                              nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        evals = []

        def evaluate(x, y):
            model.eval()
            with ng.no_grad():
                out = model(x)
                loss = F.cross_entropy(out, y)
            model.train()
            return loss, out

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        run = Run((model, opt), step, data(STEPS, (16, 6), 3))
        run.evaluate = evaluate
        run.evals = evals
        return run
    return make


def test_jitted_train_and_eval_steps_share_a_model():
    def trajectory(jit):
        ng.manual_seed(0)
        run = train_and_eval()()
        step = ng.jit(run.step, state=run.state) if jit else run.step
        ev = ng.jit(run.evaluate, state=run.state) if jit else run.evaluate
        snaps = []
        for x, y in run.batches:
            a = _snapshot(run, step(x, y))
            snaps.append(a + _arrays(ev(x, y)) + [np.array(run.state[0].training)])
        return snaps
    ref, got = trajectory(False), trajectory(True)
    for i, (r, g) in enumerate(zip(ref, got)):
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, True, 0, f"step {i}, value {k}")


# --- 17. averaged weights: optim.swa_utils.AveragedModel updated inside the step --------------

def averaged(kind):
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        swa = optim.swa_utils
        avg = (swa.AveragedModel(model, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9))
               if kind == "ema" else swa.AveragedModel(model, use_buffers=kind == "buffers"))

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            avg.update_parameters(model)
            return loss
        return Run((model, opt), step, data(STEPS, (16, 6), 3),
                   extra=lambda: list(avg.parameters()) + list(avg.buffers()))
    return make


@pytest.mark.parametrize("kind", ["ema", "swa", "buffers"])
def test_averaged_model_updated_in_the_step(kind):
    check(averaged(kind))


# --- 18. ReduceLROnPlateau stepped inside the step on the loss tensor ---------------------------

def plateau_inside(keyword):
    def make():
        ng.set_default_dtype(ng.float64)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = optim.SGD(model.parameters(), lr=0.5)
        sched = optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if keyword:
                sched.step(metrics=loss)
            else:
                sched.step(loss)  # the metric as a tensor: read when the schedule steps
            return loss
        return Run((model, opt), step, data(STEPS, (16, 6), 3, dtype=np.float64))
    return make


@pytest.mark.parametrize("keyword", [False, True])
def test_plateau_schedule_inside_the_step(keyword):
    check(plateau_inside(keyword))


# --- 19. activation checkpointing around a block with dropout; a small CNN ----------------------

class DropBlock(nn.Module):
    def __init__(self, d=12):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return x + self.drop(F.gelu(self.fc(x)))


def checkpointed(reentrant):
    def make():
        from nodegrad.utils.checkpoint import checkpoint

        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 12), DropBlock(), DropBlock(), nn.Linear(12, 3))
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            h = model[0](x)
            for blk in model[1:3]:  # the masks drawn again in backward must be the forward's
                h = checkpoint(blk, h, use_reentrant=reentrant)
            loss = F.cross_entropy(model[3](h), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, data(STEPS // 2, (16, 6), 3))
    return make


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_blocks_with_dropout(reentrant):
    check(checkpointed(reentrant))


def cnn():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                              nn.Linear(8, 3))
        opt = optim.Adam(model.parameters(), lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, data(STEPS // 2, (8, 1, 8, 8), 3))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_small_cnn(fuse):
    check(cnn(), fuse)


# --- 20. updates by hand, as the tutorials write them; a max-norm constraint after the step -----

def by_hand(kind):
    def make():
        ng.set_default_dtype(ng.float64)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

        def step(x, y):
            if kind == "data":
                model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if kind == "autograd":
                grads = ng.autograd.grad(loss, list(model.parameters()))
                with ng.no_grad():
                    for p, g in zip(model.parameters(), grads):
                        p.sub_(0.1 * g)
                return loss
            loss.backward()
            if kind == "data":
                for p in model.parameters():
                    p.data.add_(p.grad.data, alpha=-0.1)
            else:
                with ng.no_grad():
                    for p in model.parameters():
                        p -= 0.1 * p.grad
                        p.grad.zero_()
                    w = model[0].weight  # max-norm rows, clamped output weights
                    w.mul_(0.5 / w.norm(dim=1, keepdim=True).clamp(min=0.5))
                    model[2].weight.clamp_(-0.3, 0.3)
            return loss
        return Run((model,), step, data(STEPS, (16, 6), 3, dtype=np.float64))
    return make


@pytest.mark.parametrize("kind", ["no_grad", "data", "autograd"])
def test_updates_by_hand(kind):
    check(by_hand(kind))


# --- 21. writes through p.data: momentum encoders, weight clipping; MoCo's queue pointer --------

def momentum_encoder(kind):
    def make():
        ng.set_default_dtype(ng.float32)
        q = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        k = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        k.load_state_dict(q.state_dict())
        k.requires_grad_(False)
        opt = optim.RMSprop(q.parameters(), lr=1e-2)

        def step(x, y):
            with ng.no_grad():  # the key encoder follows the query encoder (BYOL, MoCo)
                for pq, pk in zip(q.parameters(), k.parameters()):
                    if kind == "data_inplace":
                        pk.data.mul_(0.9).add_(pq.data, alpha=0.1)
                    elif kind == "data_assign":
                        pk.data = pk.data * 0.9 + pq.data * 0.1
                    else:
                        pk.detach().mul_(0.9).add_(pq.detach(), alpha=0.1)
                target = F.softmax(k(x), dim=1)
            loss = F.cross_entropy(q(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if kind == "data_inplace":
                for p in q.parameters():  # WGAN's weight clipping
                    p.data.clamp_(-0.3, 0.3)
            return loss
        return Run((q, k, opt), step, data(STEPS // 2, (16, 6), 3))
    return make


@pytest.mark.parametrize("kind", ["data_inplace", "detach_inplace"])
def test_writes_through_data_reach_the_parameters(kind):
    # p.data made in the step was taken for a tensor made there: each call wrote into a fresh
    # copy, and the key encoder never moved after the traced call
    check(momentum_encoder(kind))


def test_data_assigned_a_computed_value_runs_eagerly():
    j = check(momentum_encoder("data_assign"), replays=False)
    assert j.last.program is None and "p.data = ..." in j.last.reason


def moco_queue():
    def make():
        ng.set_default_dtype(ng.float32)

        class Queue(nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = nn.Linear(6, 4)
                self.register_buffer("queue", F.normalize(ng.randn(4, 12), dim=0))
                self.register_buffer("queue_ptr", ng.zeros(1, dtype=ng.long))

        model = Queue()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            q = F.normalize(model.enc(x), dim=1)
            logits = q @ model.queue.clone().detach() / 0.2
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with ng.no_grad():  # MoCo's _dequeue_and_enqueue
                ptr = int(model.queue_ptr)
                model.queue[:, ptr:ptr + 4] = q[:4].T
                model.queue_ptr[0] = (ptr + 4) % 12
            return loss
        return Run((model, opt), step, data(STEPS // 2, (8, 6), 12))
    return make


def test_queue_pointer_read_then_written_runs_eagerly():
    # the pointer read into Python was the traced call's on every replay: the queue's same
    # columns were overwritten each call
    j = check(moco_queue(), replays=False)
    assert j.last.program is None and "int(model.queue_ptr)" in j.last.reason


def buffer_ema():
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        ema = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        ema.load_state_dict(model.state_dict())
        scale = ng.ones(3)  # a plain tensor the step changes through .data
        opt = optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            loss = F.cross_entropy(model(x) * scale, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with ng.no_grad():
                for be, b in zip(ema.buffers(), model.buffers()):
                    be.data.copy_(b.data)  # buffers copied, parameters averaged (timm's EMA)
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.detach().mul_(0.9).add_(p.detach(), alpha=0.1)
                scale.data.mul_(1.01)
            return loss
        return Run((model, ema, opt), step, data(STEPS // 2, (16, 6), 3),
                   extra=lambda: [scale])
    return make


def test_writes_through_data_of_buffers_and_plain_tensors():
    check(buffer_ema())
