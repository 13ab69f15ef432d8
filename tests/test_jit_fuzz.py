"""Differential test of ``ng.jit`` against eager execution on random programs and random
training steps.

Programs drawn from fixed seeds chain element-wise ops (unary and broadcasting binary ones),
reductions, softmax-like rows and shape ops (transposes, flips, slices, concatenation, rolls,
expands) on float32 and float64 inputs. For each, ``jit(value_and_grad(f))`` must equal eager
``value_and_grad(f)`` on the traced call and on two replays, and ``jit(vmap(grad(f)))`` must
equal eager per-example gradients, within the compiler's contract: bit for bit unfused
(``fuse=False``), and fused (``fuse=True``: numba's kernels, where arithmetic may be reordered)
within 1e-6 relative in float32 and 1e-12 in float64 (relative to the largest entry), or, in
float32, as close to the program's float64 result as eager is (within twice its distance). A
difference, or an error only under jit, is what this file exists to catch.

Random training steps (a small MLP or 1-D CNN with random activations, normalisation and
dropout, one of 13 optimisers, a learning-rate schedule, optional gradient clipping, an
evaluation-mode forward between steps) run eagerly and under ``ng.jit(step, state=(model,
opt))`` from the same weights and seed: with ``tests/test_jit_real_steps.check``, every loss,
parameter, buffer, gradient and optimiser state agrees after every step, bit for bit unfused.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, optim
from tests.test_jit_real_steps import Run, check, data
# (an autouse fixture: slow cases skip unless asked for, the default dtype is restored)
from tests.test_jit_real_steps import _restore_dtype  # noqa: F401

F = ng.nn.functional

UNARY = {
    "sin": ng.sin, "cos": ng.cos, "tanh": ng.tanh, "sigmoid": ng.sigmoid, "relu": ng.relu,
    "abs": ng.abs, "erf": ng.erf, "atan": ng.atan, "gelu": F.gelu, "softplus": F.softplus,
    "silu": F.silu,
    "exp": lambda t: ng.exp(ng.clamp(t, -5, 5)),
    "expm1": lambda t: ng.expm1(ng.clamp(t, -3, 3)),
    "log1p": lambda t: ng.log1p(ng.abs(t)),
    "sqrt": lambda t: ng.sqrt(ng.abs(t) + 0.1),
    "neg": lambda t: -t,
    "square": lambda t: t * t,
    "clamp": lambda t: ng.clamp(t, -0.5, 0.7),
    "reciprocal": lambda t: 1.0 / (t * t + 1.0),
    "leaky_relu": lambda t: F.leaky_relu(t, 0.1),
}
BINARY = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / (y * y + 0.5),
    "maximum": ng.maximum,
    "minimum": ng.minimum,
    "pow": lambda x, y: (x * x + 0.1) ** 1.5 + y,
    "where": lambda x, y: ng.where(x > y, x, y * 2),
    "hypot": ng.hypot,
    "atan2": lambda x, y: ng.atan2(x, y + 2.0),
}
REDUCE = {
    "sum": lambda x: x.sum(),
    "mean": lambda x: x.mean(),
    "sum_last": lambda x: x.sum(-1),
    "mean_first": lambda x: x.mean(0),
    "amax_last": lambda x: x.amax(-1),
    "logsumexp": lambda x: ng.logsumexp(x, -1),
    "softmax": lambda x: F.softmax(x, -1),
    "var_last": lambda x: x.var(-1) if x.shape[-1] > 1 else x.sum(-1),
    "norm_last": lambda x: ng.sqrt((x * x).sum(-1) + 1e-3),
    "cumsum": lambda x: ng.cumsum(x, -1),
}
SHAPE = {
    "T": lambda x: x.T,
    "flip": lambda x: ng.flip(x, (-1,)),
    "flatten": lambda x: x.reshape(-1),
    "slice": lambda x: x[..., ::2],
    "cat": lambda x: ng.cat([x, x * 0.5], -1),
    "roll": lambda x: ng.roll(x, 1, -1),
    "expand": lambda x: x.unsqueeze(0).expand(2, *x.shape) * 1.0,
}
SHAPES = [(4, 6), (3, 5, 4), (7,), (2, 3)]
SEEDS = range(100)
# unfused programs replay in milliseconds: every seed runs by default; fused ones compile their
# kernels with numba (~0.5 s a kernel), so one seed runs fused by default, the rest under
# ``pytest -m slow``
CASES = [*((s, False) for s in SEEDS), (0, True),
         *(pytest.param(s, True, marks=pytest.mark.slow) for s in SEEDS[1:])]
TOL = {np.float32: 1e-6, np.float64: 1e-12}


def program(seed: int) -> list:
    """A random program: a list of (kind, op name[, which earlier value]) steps."""
    r = random.Random(seed)
    ops = []
    for _ in range(r.randint(3, 14)):
        k = r.random()
        if k < 0.4:
            ops.append(("u", r.choice(sorted(UNARY))))
        elif k < 0.7:
            ops.append(("b", r.choice(sorted(BINARY)), r.randint(0, 2)))
        elif k < 0.85:
            ops.append(("s", r.choice(sorted(SHAPE))))
        else:
            ops.append(("r", r.choice(sorted(REDUCE))))
    return ops


def run(ops: list, x, w):
    """The program on input ``x`` and weight ``w`` (x's last axis), reduced to a scalar."""
    h, values = x, [x, w]
    for op in ops:
        kind, name = op[0], op[1]
        if kind == "u":
            h = UNARY[name](h)
        elif kind == "b":
            other = values[op[2] % len(values)]
            try:
                ng.broadcast_shapes(h.shape, other.shape)
            except ValueError:  # an operand of another shape: the weight, or a number
                other = w if h.shape[-1:] == w.shape[-1:] else 0.3
            h = BINARY[name](h, other)
        elif h.ndim == 0 or (name == "slice" and h.shape[-1] < 2):
            continue  # nothing for a shape op or reduction to do on a scalar
        else:
            h = (SHAPE if kind == "s" else REDUCE)[name](h)
        values.append(h)
    return (h * h).sum()


def _close(got, want, dtype, fuse: bool, what: str, exact=None) -> None:
    """``got`` (jit) against ``want`` (eager): equal unfused; fused, within TOL of the largest
    entry, or, in float32, no further from ``exact`` (the program in float64) than twice eager's
    own distance: a reordered sum in a gradient that cancels moves its last bits, in either."""
    got, want = got.numpy(), want.numpy()
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if not fuse:
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    if not want.size:
        return
    scale = max(float(np.max(np.abs(want))), np.finfo(dtype).tiny)
    bound = TOL[dtype] * scale
    if exact is not None:
        exact = exact.numpy()
        bound = max(bound, 2 * float(np.max(np.abs(want - exact))))
        want = exact
    assert float(np.max(np.abs(got.astype(np.float64) - want))) <= bound, what


def _check(seed: int, dtype, fuse: bool) -> None:
    rng = np.random.default_rng(seed)
    ops = program(seed)
    shape = SHAPES[seed % len(SHAPES)]
    x = ng.tensor(rng.standard_normal(shape).astype(dtype))
    w = ng.tensor(rng.standard_normal(shape[-1:]).astype(dtype))
    xs = ng.tensor(rng.standard_normal((3,) + shape).astype(dtype))

    def f(x, w):
        return run(ops, x, w)

    vg = ng.value_and_grad(f, argnums=(0, 1))

    def per_example_loop(xs, w):
        return ng.stack([ng.grad(f)(xs[i], w) for i in range(3)])

    value, grads = vg(x, w)
    loop = per_example_loop(xs, w)
    exact = [None] * 4
    if fuse and dtype == np.float32:  # the same program in float64, from the same inputs
        x64, w64, xs64 = (t.double() for t in (x, w, xs))
        exact = [*vg(x64, w64)[:1], *vg(x64, w64)[1], per_example_loop(xs64, w64)]
    compiled = ng.jit(vg, fuse=fuse)
    for call in range(3):  # the traced call, then two replays
        j_value, j_grads = compiled(x, w)
        what = f"seed {seed} {dtype.__name__} call {call}: {ops}"
        _close(j_value, value, dtype, fuse, what + " (value)", exact[0])
        for g, jg, e in zip(grads, j_grads, exact[1:3]):
            _close(jg, g, dtype, fuse, what + " (gradient)", e)
    if fuse:  # the comparison above was against numba's kernels, not an unfused replay
        assert compiled.program.counts().get("fused", 0) > 0, f"seed {seed}: nothing fused"

    per_example = ng.jit(ng.vmap(ng.grad(f), in_axes=(0, None)), fuse=fuse)(xs, w)
    _close(per_example, loop, dtype, fuse, f"seed {seed} {dtype.__name__} vmap(grad): {ops}",
           exact[3])


@pytest.mark.parametrize("seed,fuse", CASES)
def test_random_programs_jit_equals_eager(seed, fuse):
    for dtype in (np.float32, np.float64):
        _check(seed, dtype, fuse)


def test_the_generator_covers_every_op():
    seen = {op[1] for s in SEEDS for op in program(s)}
    assert seen >= set(UNARY) | set(BINARY) | set(REDUCE) | set(SHAPE)


# --- random training steps ----------------------------------------------------------------
OPTIMIZERS = {
    "SGD": lambda p: optim.SGD(p, lr=0.05),
    "SGD-nesterov": lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                        weight_decay=1e-3),
    "Adam": lambda p: optim.Adam(p, lr=1e-2),
    "Adam-amsgrad": lambda p: optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-2),
    "AdamW": lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "RMSprop": lambda p: optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "Adagrad": lambda p: optim.Adagrad(p, lr=1e-2),
    "NAdam": lambda p: optim.NAdam(p, lr=1e-2),
    "RAdam": lambda p: optim.RAdam(p, lr=1e-2),
    "Adamax": lambda p: optim.Adamax(p, lr=1e-2),
    "Adadelta": lambda p: optim.Adadelta(p),
    "Rprop": lambda p: optim.Rprop(p, lr=1e-2),
    "ASGD": lambda p: optim.ASGD(p, lr=1e-2),
}
SCHEDULERS = {
    "none": None,
    "StepLR": lambda o: optim.lr_scheduler.StepLR(o, 2, 0.5),
    "CosineAnnealingLR": lambda o: optim.lr_scheduler.CosineAnnealingLR(o, 5),
    "OneCycleLR": lambda o: optim.lr_scheduler.OneCycleLR(
        o, 0.05, total_steps=20, cycle_momentum=any(k in o.defaults for k in ("momentum",
                                                                             "betas"))),
}
ACTIVATIONS = [nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.ELU, lambda: nn.LeakyReLU(0.1)]
STEP_SEEDS = range(100)
STEP_CASES = list(STEP_SEEDS)  # each a few tenths of a second: all in the default run


def training(seed: int):
    """A random training program (see the module's docstring) for ``check``."""
    r = random.Random(seed)
    dtype = r.choice(["float32", "float64"])
    cnn, width = r.random() < 0.5, r.choice([8, 16])
    blocks = [(r.choice(ACTIVATIONS), r.choice(["none", "none", "layer", "batch", "dropout"]))
              for _ in range(r.randint(1, 3))]
    opt_name, sched_name = r.choice(sorted(OPTIMIZERS)), r.choice(sorted(SCHEDULERS))
    clip = r.choice([None, 1.0, 0.1])
    conv = (r.choice([0, 1]), r.choice([1, 2]), r.random() < 0.5, r.choice(ACTIVATIONS))

    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        layers, features = [], 12
        if cnn:
            pad, stride, norm, act = conv
            layers += [nn.Conv1d(2, 4, 3, padding=pad, stride=stride), act()]
            layers += [nn.BatchNorm1d(4)] if norm else []
            layers.append(nn.Flatten())
            features = 4 * ((12 + 2 * pad - 3) // stride + 1)
        for act, extra in blocks:
            layers += [nn.Linear(features, width), act()]
            features = width
            layers += {"none": [], "layer": [nn.LayerNorm(width)],
                       "batch": [nn.BatchNorm1d(width)], "dropout": [nn.Dropout(0.2)]}[extra]
        model = nn.Sequential(*layers, nn.Linear(features, 5))
        opt = OPTIMIZERS[opt_name](model.parameters())
        sched = SCHEDULERS[sched_name]
        sched = None if sched is None else sched(opt)

        def train_step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        def between(i, out):
            if sched is not None:
                sched.step()
            if i == 2:  # an evaluation-mode forward between steps (batch norm, dropout)
                model.eval()
                with ng.no_grad():
                    model(batches[0][0])
                model.train()

        shape = (16, 2, 12) if cnn else (16, 12)
        batches = data(6, shape, 5, seed=seed, dtype=np.dtype(dtype).type)
        return Run((model, opt), train_step, batches, between)

    return make, (dtype, "cnn" if cnn else "mlp", opt_name, sched_name, clip)


@pytest.mark.parametrize("seed", STEP_CASES)
def test_random_training_steps_jit_equals_eager(seed):
    make, _ = training(seed)
    check(make, fuse=False)


def test_the_training_generator_covers_every_optimizer_and_schedule():
    drawn = [training(s)[1] for s in STEP_SEEDS]
    assert {d[2] for d in drawn} == set(OPTIMIZERS)
    assert {d[3] for d in drawn} == set(SCHEDULERS)
    assert {d[0] for d in drawn} == {"float32", "float64"} and {d[1] for d in drawn} == {
        "cnn", "mlp"}
