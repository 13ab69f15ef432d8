"""jit on computer-vision training steps as PyTorch users write them: small CNNs, ResNet and
pre-activation blocks, depthwise-separable convolutions, a tiny U-Net, augmentation drawn inside
the step (flips, crops, erasing, mixup, cutmix), label smoothing, SGD with Nesterov momentum and
AdamW under a cosine schedule, and jitted train and eval steps that switch the model between
``train()`` and ``eval()``. Each runs eagerly and under ``ng.jit(step, state=...)`` from the same
weights and seed: bit for bit without fusion, within 1e-6 (float32) / 1e-12 (float64) with it."""

from __future__ import annotations

import inspect
import random

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, optim
from nodegrad.errors import JitError
from nodegrad.nn import functional as F
from tests.test_jit_real_steps import Run, _arrays, _close, _snapshot, check, data
# (an autouse fixture: slow cases skip unless asked for, the default dtype is restored)
from tests.test_jit_real_steps import _restore_dtype  # noqa: F401

STEPS = 10


def _np(dtype: str):
    return np.float32 if dtype == "float32" else np.float64


UNFUSED = pytest.param(False, id="unfused")
FUSED_SLOW = pytest.param(True, id="fused", marks=pytest.mark.slow)
DT_FUSE = [pytest.param("float32", False, id="float32-unfused"),
           pytest.param("float64", False, id="float64-unfused"),
           pytest.param("float32", True, id="float32-fused"),
           pytest.param("float64", True, id="float64-fused", marks=pytest.mark.slow)]
# the same with both fused cases slow
DT_FUSE_SLOW = DT_FUSE[:2] + [pytest.param("float32", True, id="float32-fused",
                                           marks=pytest.mark.slow), DT_FUSE[3]]


# --- 1. a small CNN: conv, batch norm, max/avg/adaptive pooling, Dropout2d, label smoothing -----

def small_cnn(dtype: str, kind: str):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2), nn.Dropout2d(0.1),
            nn.Conv2d(8, 16, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(16, 5))
        if kind == "sgd":
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                            weight_decay=5e-4)
            sched = None
        else:
            opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
            sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-5)
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

        def train_step(images, labels):
            model.train()
            opt.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            opt.step()
            acc = (outputs.argmax(dim=1) == labels).float().mean()
            return loss, acc

        between = None if sched is None else (lambda i, out: sched.step())
        return Run((model, opt), train_step, data(STEPS, (8, 3, 8, 8), 5, dtype=_np(dtype)),
                   between=between)
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE)
def test_small_cnn_sgd_nesterov_label_smoothing(dtype, fuse):
    check(small_cnn(dtype, "sgd"), fuse)


@pytest.mark.parametrize("dtype,fuse", DT_FUSE_SLOW)
def test_small_cnn_adamw_cosine_schedule(dtype, fuse):
    check(small_cnn(dtype, "adamw"), fuse)


# --- 2. residual networks: BasicBlock with a downsampling shortcut, pre-activation blocks -------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class ResNet(nn.Module):
    def __init__(self, block, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(block(8, 8), block(8, 8))
        self.layer2 = block(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = ng.flatten(x, 1)
        return self.fc(x)


def resnet(block, dtype: str, sched_inside: bool = False):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = ResNet(block)
        opt = optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)

        def step(x, y):
            model.train()
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched_inside:
                sched.step()
            _, pred = out.max(1)
            correct = pred.eq(y).sum()
            return loss.detach(), correct

        between = None if sched_inside else (lambda i, out: sched.step())
        return Run((model, opt), step, data(STEPS, (4, 3, 8, 8), 5, dtype=_np(dtype)),
                   between=between)
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE_SLOW)
def test_resnet_basic_blocks_adamw_cosine(dtype, fuse):
    check(resnet(BasicBlock, dtype), fuse)


@pytest.mark.parametrize("fuse", [UNFUSED, FUSED_SLOW])
def test_resnet_scheduler_stepped_inside_the_step(fuse):
    check(resnet(BasicBlock, "float32", sched_inside=True), fuse)


@pytest.mark.parametrize("dtype,fuse", DT_FUSE_SLOW[:3])
def test_preactivation_resnet(dtype, fuse):
    check(resnet(PreActBlock, dtype), fuse)


# --- 3. depthwise-separable convolutions (MobileNet): groups=, ReLU6, Hardswish ----------------

class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu6(self.bn1(self.dw(x)))
        return F.relu6(self.bn2(self.pw(x)))


def mobilenet(dtype: str):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
            DepthwiseSeparable(8, 16), DepthwiseSeparable(16, 16, 2),
            nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.Hardswish(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 5))
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=4e-5)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, data(STEPS, (4, 3, 12, 12), 5, dtype=_np(dtype)))
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE_SLOW[:3])
def test_depthwise_separable_convolutions(dtype, fuse):
    check(mobilenet(dtype), fuse)


# --- 4. a tiny U-Net: ConvTranspose2d or F.interpolate up, torch.cat skips, Dice + CE ----------

def conv_block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, n_classes=3, up="transpose"):
        super().__init__()
        self.inc = conv_block(1, 4)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), conv_block(4, 8))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), conv_block(8, 16))
        self.mode = up
        if up == "transpose":
            self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.up2 = nn.ConvTranspose2d(8, 4, kernel_size=2, stride=2)
        else:
            self.up1 = nn.Conv2d(16, 8, 1)
            self.up2 = nn.Conv2d(8, 4, 1)
        self.conv1 = conv_block(16, 8)
        self.conv2 = conv_block(8, 4)
        self.outc = nn.Conv2d(4, n_classes, 1)

    def _up(self, layer, x, skip):
        if self.mode != "transpose":
            extra = {} if self.mode == "nearest" else {"align_corners": False}
            x = F.interpolate(x, scale_factor=2, mode=self.mode, **extra)
        x = layer(x)
        dy, dx = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return ng.cat([skip, x], dim=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.conv1(self._up(self.up1, x3, x2))
        x = self.conv2(self._up(self.up2, x, x1))
        return self.outc(x)


def unet(dtype: str, up: str):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = UNet(up=up)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(1)
        batches = [(ng.tensor(rng.standard_normal((2, 1, 8, 8)).astype(_np(dtype))),
                    ng.tensor(rng.integers(0, 3, (2, 8, 8)))) for _ in range(6)]

        def step(img, mask):
            model.train()
            logits = model(img)
            loss = F.cross_entropy(logits, mask)
            probs = F.softmax(logits, dim=1)
            one_hot = F.one_hot(mask, 3).permute(0, 3, 1, 2).to(probs.dtype)
            inter = (probs * one_hot).sum(dim=(2, 3))
            union = probs.sum((2, 3)) + one_hot.sum((2, 3))
            loss = loss + 1 - ((2 * inter + 1) / (union + 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, logits.argmax(1)
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("up", ["transpose", "nearest", "bilinear"])
@pytest.mark.parametrize("dtype,fuse", DT_FUSE_SLOW[:3])
def test_unet_skip_connections(up, dtype, fuse):
    check(unet(dtype, up), fuse)


# --- 5. augmentation inside the step, drawn with the library's samplers ----------------------

def _net():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def augmented(kind: str, dtype: str = "float32"):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = _net()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)

        def augment(x):
            n, c, h, w = x.shape
            if kind in ("flip", "all"):  # a random horizontal flip per image
                flip = ng.rand(x.size(0)) < 0.5
                x = ng.where(flip[:, None, None, None], x.flip(3), x)
            if kind in ("crop", "all"):  # reflect-pad by 2, then a random 8x8 crop per image
                pad = 2
                padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
                i = ng.randint(0, 2 * pad + 1, (n,))
                j = ng.randint(0, 2 * pad + 1, (n,))
                rows = (i[:, None] + ng.arange(h))[:, None, :, None]
                cols = (j[:, None] + ng.arange(w))[:, None, None, :]
                x = padded[ng.arange(n)[:, None, None, None], ng.arange(c)[None, :, None, None],
                           rows, cols]
            if kind in ("erase", "all"):  # random erasing of a 3x3 patch
                cy = ng.randint(0, h, (n, 1, 1, 1))
                cx = ng.randint(0, w, (n, 1, 1, 1))
                yy = ng.arange(h).view(1, 1, h, 1)
                xx = ng.arange(w).view(1, 1, 1, w)
                x = x.masked_fill(((yy - cy).abs() <= 1) & ((xx - cx).abs() <= 1), 0.0)
            if kind in ("noise", "all"):
                x = x + 0.1 * ng.randn_like(x)
            return x

        def step(x, y):
            x = augment(x)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            loss.backward()
            opt.step()
            return loss, x
        return Run((model, opt), step, data(STEPS, (4, 3, 8, 8), 4, dtype=_np(dtype)))
    return make


@pytest.mark.parametrize("kind", ["flip", "crop", "erase", "noise", "all"])
def test_augmentation_drawn_in_the_step(kind):
    check(augmented(kind))


@pytest.mark.parametrize("dtype,fuse", [("float64", False), ("float32", True)])
def test_augmentation_all_dtypes_fused(dtype, fuse):
    check(augmented("all", dtype), fuse)


def test_flip_by_boolean_mask_runs_eagerly():
    def make():
        ng.set_default_dtype(ng.float32)
        model = _net()
        opt = optim.SGD(model.parameters(), lr=0.05)

        def step(x, y):
            flip = ng.rand(x.shape[0]) < 0.5
            x = x.clone()
            x[flip] = x[flip].flip(-1)  # the count it selects is data-dependent
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, data(6, (4, 3, 8, 8), 4))
    j = check(make, replays=False)
    assert j.last.program is None and "boolean mask" in j.last.reason


# --- 6. mixup and cutmix, lam drawn from a Beta distribution inside the step -------------------

def mixed(kind: str, dtype: str = "float32"):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = _net()
        opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-5)
        beta = ng.distributions.Beta(ng.tensor(1.0), ng.tensor(1.0))

        def step(x, y):
            perm = ng.randperm(x.size(0))
            if kind == "mixup":
                lam = beta.sample()
                x = lam * x + (1 - lam) * x[perm, :]
            elif kind == "mixup_numbers":
                lam = ng.distributions.Beta(0.4, 0.4).sample()
                x = lam * x + (1 - lam) * x[perm]
            else:  # cutmix: a box of area (1 - lam), pasted through a mask
                lam = beta.sample()
                h, w = x.shape[2:]
                cut = ng.sqrt(1.0 - lam)
                cw, ch = (w * cut).long(), (h * cut).long()
                cx, cy = ng.randint(0, w, (1,)), ng.randint(0, h, (1,))
                x1, x2 = ng.clamp(cx - cw // 2, 0, w), ng.clamp(cx + cw // 2, 0, w)
                y1, y2 = ng.clamp(cy - ch // 2, 0, h), ng.clamp(cy + ch // 2, 0, h)
                rows, cols = ng.arange(h)[:, None], ng.arange(w)[None, :]
                box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
                x = ng.where(box, x[perm], x)
                lam = (1 - box.float().mean()).to(x.dtype)  # the exact area kept
            out = model(x)
            loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            return loss, lam
        return Run((model, opt), step, data(STEPS, (4, 3, 8, 8), 4, dtype=_np(dtype)))
    return make


@pytest.mark.parametrize("kind", ["mixup", "mixup_numbers", "cutmix"])
@pytest.mark.parametrize("dtype,fuse", DT_FUSE[:3])
def test_mixup_cutmix_lam_drawn_in_the_step(kind, dtype, fuse):
    # a 0-d Beta draw was a NumPy scalar, not an array: the program kept the traced lam as a
    # constant and every replay mixed with the same lam
    check(mixed(kind, dtype), fuse)


_DRAWS = {
    "beta": lambda: ng.distributions.Beta(ng.tensor(1.0), ng.tensor(2.0)).sample(),
    "gamma": lambda: ng.distributions.Gamma(ng.tensor(2.0), 1.0).sample(),
    "bernoulli": lambda: ng.distributions.Bernoulli(ng.tensor(0.3)).sample(),
    "von_mises": lambda: ng.distributions.VonMises(ng.tensor(0.0), ng.tensor(2.0)).sample(),
    "negative_binomial": lambda: ng.distributions.NegativeBinomial(
        ng.tensor(3.0), ng.tensor(0.4)).sample(),
    "ng.bernoulli": lambda: ng.bernoulli(ng.tensor(0.5)),
    "ng.normal": lambda: ng.normal(ng.tensor(0.0), ng.tensor(1.0)),
    "ng.poisson": lambda: ng.poisson(ng.tensor(3.0)),
    "uniform_": lambda: ng.empty(()).uniform_(),
    "normal_": lambda: ng.empty(()).normal_(),
    "exponential_": lambda: ng.empty(()).exponential_(),
    "bernoulli_": lambda: ng.empty(()).bernoulli_(0.5),
    "geometric_": lambda: ng.empty(()).geometric_(0.5),
}


@pytest.mark.parametrize("what", list(_DRAWS))
def test_zero_dim_draws_are_arrays_and_fresh_on_each_replay(what):
    draw = _DRAWS[what]

    def f(x):
        return x * draw()

    x = ng.ones(3)
    ng.manual_seed(0)
    assert isinstance(draw()._data, np.ndarray)  # a tensor's data is an array, also at 0-d
    eager = [f(x).numpy().copy() for _ in range(6)]
    ng.manual_seed(0)
    draw()
    jf = ng.jit(f, fuse=False)
    got = [jf(x).numpy().copy() for _ in range(6)]
    assert jf.traces == 1 and jf.last.program is not None
    for a, b in zip(eager, got):
        assert a.tobytes() == b.tobytes()
    assert len({a.tobytes() for a in got}) > 1  # a fresh draw on each call
    s = draw()
    s.add_(1)  # in place on a 0-d sample (its data was a NumPy scalar: copyto refused)


def test_poisson_of_zero_dim_rates():
    ng.manual_seed(0)
    s = ng.poisson(ng.tensor(4.0))
    assert s.shape == () and s.dtype == ng.float32 and float(s) >= 0


# --- 6b. seeding inside the step: a deterministic augmented evaluation -------------------------

def _seeded_eval(how: str):
    model = _net().eval()
    gen = ng.Generator().manual_seed(5)

    def eval_step(x):
        with ng.no_grad():
            if how == "manual_seed":  # the same flips on every evaluation
                ng.manual_seed(0)
                flip = ng.rand(x.size(0)) < 0.5
            elif how == "generator":
                gen.manual_seed(0)
                flip = ng.rand(x.size(0), generator=gen) < 0.5
            elif how == "fork_rng":  # the evaluation's draws leave the training stream alone
                with ng.random.fork_rng():
                    ng.manual_seed(0)
                    flip = ng.rand(x.size(0)) < 0.5
            else:  # draw, then rewind and draw the same numbers again
                state = ng.get_rng_state()
                first = ng.rand(x.size(0))
                ng.set_rng_state(state)
                flip = (ng.rand(x.size(0)) + first) < 1.0
            x = ng.where(flip[:, None, None, None], x.flip(3), x)
            out = model(x)
        return out, ng.rand(2)  # the draw after: where the stream stands
    return eval_step


@pytest.mark.parametrize("how", ["manual_seed", "generator", "fork_rng", "rng_state"])
def test_seeding_inside_a_jitted_step(how):
    # manual_seed, fork_rng's restore and set_rng_state ran only at trace: the replays drew on
    # from where the stream stood (other flips, another stream after the step)
    ng.set_default_dtype(ng.float32)
    batches = data(5, (4, 3, 8, 8), 4)

    def trajectory(jit):
        ng.manual_seed(1)
        step = _seeded_eval(how)
        step = ng.jit(step, fuse=False) if jit else step
        return [a for x, _ in batches for a in _arrays(step(x))], step

    ref, _ = trajectory(False)
    got, jitted = trajectory(True)
    assert jitted.traces == 1 and jitted.last.program is not None, jitted.last.reason
    for k, (a, b) in enumerate(zip(ref, got)):
        assert a.tobytes() == b.tobytes(), k


def test_generator_state_read_into_python_runs_eagerly():
    gen = ng.Generator().manual_seed(3)

    def step(x):
        saved = gen.get_state()
        a = ng.rand(3, generator=gen)
        gen.set_state(saved)
        return x * a + ng.rand(3, generator=gen)

    jitted = ng.jit(step)
    outs = [jitted(ng.ones(3)).numpy().copy() for _ in range(3)]
    gen.manual_seed(3)
    for o in outs:
        assert o.tobytes() == step(ng.ones(3)).numpy().tobytes()
    assert jitted.last.program is None and "get_state" in jitted.last.reason


# --- 7. random numbers from NumPy's or Python's global generator: the step runs eagerly --------

def global_draws(kind: str):
    def make():
        ng.set_default_dtype(ng.float32)
        np.random.seed(0)
        random.seed(0)
        model = _net()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(x, y):
            if kind == "np_beta":  # the classic mixup: lam = np.random.beta(alpha, alpha)
                lam = np.random.beta(1.0, 1.0)
                perm = ng.randperm(x.size(0))
                x = lam * x + (1 - lam) * x[perm]
            else:  # a flip decided by Python's random module
                if random.random() < 0.5:
                    x = x.flip(3)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, data(6, (4, 3, 8, 8), 4))
    return make


@pytest.mark.parametrize("kind", ["np_beta", "py_random"])
def test_global_generator_draws_run_eagerly(kind):
    # each replay repeated the traced lam (or the traced flip decision)
    j = check(global_draws(kind), replays=False)
    assert j.last.program is None and "random" in j.last.reason


# --- 8. crop offsets read into Python: an error at trace time that names the line ---------------

def _offset_step(kind: str):
    model = _net()
    opt = optim.SGD(model.parameters(), lr=0.05)

    def step(x, y):
        if kind == "item":
            i = ng.randint(0, 3, (1,)).item()  # BAD-LINE item
            x = F.pad(x, (1, 1, 1, 1))[:, :, i:i + 8, i:i + 8]
        elif kind == "slice":
            i = ng.randint(0, 3, (1,))
            x = F.pad(x, (1, 1, 1, 1))[:, :, i:i + 8, 1:9]  # BAD-LINE slice
        else:
            lam = ng.distributions.Beta(1.0, 1.0).sample()
            cut = int(8 * (1 - lam).sqrt())  # BAD-LINE int
            x = x.clone()
            x[:, :, :cut, :cut] = x.flip(0)[:, :, :cut, :cut]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return ng.jit(step, state=(model, opt)), model


@pytest.mark.parametrize("kind", ["item", "slice", "int"])
def test_crop_offsets_read_into_python_raise_naming_the_line(kind):
    ng.set_default_dtype(ng.float32)
    step, model = _offset_step(kind)
    before = [p.numpy().copy() for p in model.parameters()]
    (x, y), = data(1, (2, 3, 8, 8), 4)
    with pytest.raises(JitError) as e:
        step(x, y)
    src, first = inspect.getsourcelines(_offset_step)
    line = first + next(k for k, s in enumerate(src) if f"BAD-LINE {kind}" in s)
    msg = str(e.value)
    assert f"test_jit_ports_vision.py:{line}" in msg, msg
    for p, b in zip(model.parameters(), before):
        assert np.array_equal(p.numpy(), b)


# --- 9. jitted train and eval steps switching the model between train() and eval() ------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dropout2d = nn.Dropout2d(0.2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 4)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.dropout2d(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return F.log_softmax(self.fc(self.dropout(x)), dim=1)


def _train_eval(dtype: str, kind: str, jit: bool, fuse, model_calls: bool):
    ng.manual_seed(0)
    ng.set_default_dtype(getattr(ng, dtype))
    model = Net()
    if kind == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
        sched = optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)
    else:
        opt = optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)

    def train_step(x, y):
        model.train()
        opt.zero_grad()
        output = model(x)
        loss = F.nll_loss(output, y)
        loss.backward()
        opt.step()
        return loss

    def eval_step(x, y):
        model.eval()
        with ng.no_grad():
            output = model(x)
            test_loss = F.nll_loss(output, y, reduction="sum")
            pred = output.argmax(dim=1, keepdim=True)
            correct = pred.eq(y.view_as(pred)).sum()
        return test_loss, correct, output

    if jit:
        train_step = ng.jit(train_step, state=(model, opt), fuse=fuse)
        eval_step = ng.jit(eval_step, state=(model,), fuse=fuse)
    run = Run((model, opt), train_step, [])
    snaps = []
    for x, y in data(STEPS, (4, 3, 8, 8), 4, dtype=_np(dtype)):
        snap = _snapshot(run, train_step(x, y))
        sched.step()
        snap += _arrays(eval_step(x, y)) + [np.array(model.training)]
        if model_calls:  # the model as the loop leaves it, called outside the steps
            with ng.no_grad():
                snap += _arrays(model(x))
        snaps.append(snap)
    return snaps, (train_step, eval_step)


@pytest.mark.parametrize("dtype,kind,fuse", [("float32", "sgd", False),
                                             ("float64", "adamw", False),
                                             ("float32", "adamw", True)])
def test_train_and_eval_steps_switch_modes(dtype, kind, fuse):
    # the replayed eval step left the model in training mode: the next eager call of the model
    # (or any step not keyed on the flags) ran dropout and batch statistics
    ref, _ = _train_eval(dtype, kind, False, None, model_calls=True)
    got, steps = _train_eval(dtype, kind, True, fuse, model_calls=True)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    for i, (r, g) in enumerate(zip(ref, got)):
        assert len(r) == len(g)
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, fuse is False, rtol, f"step {i}, value {k}")
    for s in steps:
        assert s.last.program is not None, s.last.reason


# --- 10. ng.compile(model) and model.compile() in an eager loop with an eval pass --------------

@pytest.mark.parametrize("how", ["ng.compile", "Module.compile"])
def test_compiled_model_train_and_eval(how):
    def trajectory(compiled):
        ng.manual_seed(0)
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout2d(0.1), nn.Conv2d(6, 6, 3, padding=1, groups=6),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(6, 4))
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
        fwd = model
        if compiled and how == "ng.compile":
            fwd = ng.compile(model)
        elif compiled:
            model.compile()
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        snaps = []
        for x, y in data(8, (4, 3, 8, 8), 4):
            model.train()
            opt.zero_grad()
            out = fwd(x)
            loss = criterion(out, y)
            loss.backward()
            opt.step()
            snap = [loss.numpy().copy(), out.numpy().copy()]
            snap += [v.numpy().copy() for v in model.state_dict().values()]
            model.eval()
            with ng.no_grad():
                o = fwd(x)
                snap += [o.numpy().copy(), (o.argmax(1) == y).float().mean().numpy()]
            snaps.append(snap)
        return snaps
    ref, got = trajectory(False), trajectory(True)
    for i, (r, g) in enumerate(zip(ref, got)):
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, False, 1e-6, f"step {i}, value {k}")


# --- 11. an ImageNet-style recipe: no weight decay on norms and biases, warmup then cosine
#         stepped inside the step, gradient clipping, top-k accuracy -----------------------------

def topk_accuracy(output, target, topk=(1,)):
    """The ImageNet example's ``accuracy``: the percentage of the batch whose label is among
    the k largest outputs, for each k."""
    with ng.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(2, 8), nn.SiLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8, momentum=None),
            nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, track_running_stats=False), nn.GELU())
        self.classifier = nn.Linear(8, 6)

    def forward(self, x):
        x = self.features(x)
        x = F.dropout2d(x, 0.1, training=self.training)
        x = F.adaptive_avg_pool2d(x, 1)
        x = F.interpolate(x, size=(2, 2), mode="nearest")
        x = ng.flatten(F.avg_pool2d(x, 2), 1)
        return self.classifier(x)


def recipe(loss_kind: str):
    def make():
        ng.set_default_dtype(ng.float32)
        model = Backbone()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        opt = optim.SGD([{"params": decay, "weight_decay": 5e-4},
                         {"params": no_decay, "weight_decay": 0.0}],
                        lr=0.1, momentum=0.9, nesterov=True)
        warmup = optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
        cosine = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 3)
        sched = optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[3])

        def step(x, y):
            model.train()
            out = model(x)
            if loss_kind == "soft_targets":  # label smoothing written out
                eps, classes = 0.1, 6
                targets = F.one_hot(y, classes).float() * (1 - eps) + eps / classes
                loss = ng.sum(-targets * F.log_softmax(out, dim=-1), dim=-1).mean()
            else:  # per-sample weights
                w = ng.linspace(0.5, 1.5, x.size(0))
                loss = (F.cross_entropy(out, y, reduction="none") * w).mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            sched.step()
            acc1, acc5 = topk_accuracy(out, y, topk=(1, 5))
            return loss, acc1, acc5
        return Run((model, opt), step, data(STEPS, (4, 3, 8, 8), 6))
    return make


@pytest.mark.parametrize("loss_kind", ["soft_targets", "weighted"])
@pytest.mark.parametrize("fuse", [UNFUSED, FUSED_SLOW])
def test_imagenet_recipe_param_groups_warmup_clipping(loss_kind, fuse):
    check(recipe(loss_kind), fuse)


# --- 12. distillation from a frozen teacher put in eval(); test-time flips; channels_last ------

def _small(c=8):
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, 4))


def student(variant: str):
    def make():
        ng.set_default_dtype(ng.float32)
        model = _small()
        state = [model]
        if variant == "distill":
            teacher = _small(12)
            for p in teacher.parameters():
                p.requires_grad = False
            state.append(teacher)
        opt = optim.AdamW(model.parameters(), lr=1e-3)

        def step(x, y):
            if variant == "channels_last":
                x = x.to(memory_format=ng.channels_last)
            out = model(x)
            loss = F.cross_entropy(out, y)
            if variant == "distill":
                teacher.eval()
                with ng.no_grad():
                    t_out = teacher(x)
                T = 4.0
                kd = F.kl_div(F.log_softmax(out / T, dim=1), F.softmax(t_out / T, dim=1),
                              reduction="batchmean") * T * T
                loss = 0.5 * loss + 0.5 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            if variant == "tta":  # evaluate with the flipped images averaged in, then go on
                model.eval()
                with ng.no_grad():
                    p = (F.softmax(model(x), 1) + F.softmax(model(x.flip(3)), 1)) / 2
                model.train()
                return loss, p.argmax(1)
            return loss
        return Run((*state, opt), step, data(STEPS, (4, 3, 8, 8), 4))
    return make


@pytest.mark.parametrize("variant", ["distill", "tta", "channels_last"])
def test_distillation_tta_channels_last(variant):
    check(student(variant))


# --- 13. segmentation layers: reflect/circular padding, dilation, max-unpooling, ceil_mode,
#         count_include_pad, output_padding, pixel shuffle, bicubic, ignore_index ---------------

class SegHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding="same", padding_mode="reflect", bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, padding_mode="circular")
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.head = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x, idx = self.pool(x)
        x = self.unpool(F.relu(self.c2(x)), idx)
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        x = self.shuffle(self.up(x))
        x = F.interpolate(x, scale_factor=0.5, mode="bicubic", align_corners=False)
        x = F.adaptive_avg_pool2d(x, (3, 3)) + F.adaptive_max_pool2d(x, 3)
        x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=True)
        return self.head(x)


def segmentation(dtype: str):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))
        model = SegHead()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=1e-4)
        rng = np.random.default_rng(2)
        batches = [(ng.tensor(rng.standard_normal((2, 3, 8, 8)).astype(_np(dtype))),
                    ng.tensor(rng.integers(0, 4, (2, 8, 8)))) for _ in range(STEPS)]

        def step(x, y):
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y, ignore_index=3, label_smoothing=0.05)
            loss.backward()
            opt.step()
            return loss, out
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("dtype,fuse", DT_FUSE_SLOW[:3])
def test_segmentation_layers(dtype, fuse):
    check(segmentation(dtype), fuse)


# --- 14. input handling in the step: uint8 NHWC images, normalising the input in place,
#         rotations by affine_grid / grid_sample, one-hot targets by scatter_ ------------------

def inputs(variant: str):
    def make():
        ng.set_default_dtype(ng.float32)
        model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mean = ng.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
        std = ng.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
        rng = np.random.default_rng(0)
        if variant == "uint8_nhwc":
            batches = [(ng.tensor(rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)),
                        ng.tensor(rng.integers(0, 4, 4))) for _ in range(STEPS)]
        else:
            batches = data(STEPS, (4, 3, 8, 8), 4)

        def step(x, y):
            if variant == "uint8_nhwc":
                x = x.permute(0, 3, 1, 2).contiguous().float().div(255)
                x = (x - mean) / std
            elif variant == "normalise_in_place":
                x.sub_(mean).div_(std)  # the caller's batch changes too
            elif variant == "rotate":
                n = x.size(0)
                angle = (ng.rand(n) - 0.5) * (np.pi / 6)
                scale = 0.9 + 0.2 * ng.rand(n)
                cos, sin = ng.cos(angle) * scale, ng.sin(angle) * scale
                shift = (ng.rand(n, 2) - 0.5) * 0.2
                theta = ng.stack([ng.stack([cos, -sin, shift[:, 0]], 1),
                                  ng.stack([sin, cos, shift[:, 1]], 1)], 1)
                grid = F.affine_grid(theta, x.size(), align_corners=False)
                x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                                  align_corners=False)
            out = model(x)
            if variant == "one_hot_scatter":
                target = ng.zeros(x.size(0), 4).scatter_(1, y.unsqueeze(1), 1)
                loss = F.binary_cross_entropy_with_logits(out, target)
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), step, batches, extra=lambda: [b[0] for b in batches])
    return make


@pytest.mark.parametrize("variant", ["uint8_nhwc", "normalise_in_place", "rotate",
                                     "one_hot_scatter"])
def test_input_handling_in_the_step(variant):
    check(inputs(variant))


# --- 15. an eval step accumulating loss, correct count and a confusion matrix in place ---------

def _evaluate(jit: bool, counts: str):
    ng.manual_seed(0)
    ng.set_default_dtype(ng.float32)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    classes = 4
    confusion = ng.zeros(classes, classes, dtype=ng.long)
    correct = ng.zeros((), dtype=ng.long)
    total_loss = ng.zeros(())

    def eval_step(x, y):
        model.eval()
        with ng.no_grad():
            out = model(x)
            pred = out.argmax(1)
            total_loss.add_(F.cross_entropy(out, y, reduction="sum"))
            correct.add_((pred == y).sum())
            if counts == "index_put":
                confusion.index_put_((y, pred), ng.ones_like(y), accumulate=True)
            else:
                confusion.add_(ng.bincount(classes * y + pred,  # BAD-LINE bincount
                                           minlength=classes * classes).view(classes, classes))
        return pred

    f = ng.jit(eval_step, state=model) if jit else eval_step
    outs = [f(x, y).numpy().copy() for x, y in data(STEPS, (8, 3, 6, 6), classes)]
    return outs + [confusion.numpy().copy(), correct.numpy().copy(),
                   total_loss.numpy().copy(), np.array(model.training)], f


def test_eval_step_accumulates_a_confusion_matrix():
    ref, _ = _evaluate(False, "index_put")
    got, f = _evaluate(True, "index_put")
    assert f.last.program is not None, f.last.reason
    assert ref[-4].sum() == STEPS * 8
    for a, b in zip(ref, got):
        assert a.tobytes() == b.tobytes()


def test_eval_step_bincount_raises_naming_the_line():
    # bincount's length depends on the values: refused at trace time, naming the line and the fix
    with pytest.raises(JitError) as e:
        _evaluate(True, "bincount")
    src, first = inspect.getsourcelines(_evaluate)
    line = first + next(k for k, s in enumerate(src) if "BAD-LINE bincount" in s)
    assert f"test_jit_ports_vision.py:{line}" in str(e.value) and "disable_jit" in str(e.value)


# --- 16. JAX style: per-example gradients of a CNN by vmap(grad), clipped and noised (DP-SGD) --

@pytest.mark.parametrize("fuse", [UNFUSED, FUSED_SLOW])
def test_per_example_clipped_gradients_vmap_grad(fuse):
    ng.set_default_dtype(ng.float32)
    ng.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_fn(p, x, y):
        out = ng.func.functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    def dp_step(p, x, y):
        g = ng.vmap(ng.grad(loss_fn), in_dims=(None, 0, 0))(p, x, y)
        norms = ng.stack([v.reshape(v.shape[0], -1).norm(dim=1) for v in g.values()], 1)
        factor = 1.0 / norms.norm(dim=1).clamp(min=1.0)
        clipped = {k: (v * factor.view(-1, *[1] * (v.ndim - 1))).sum(0) for k, v in g.items()}
        noised = {k: (clipped[k] + 0.01 * ng.randn_like(p[k])) / x.shape[0] for k in p}
        return {k: p[k] - 0.1 * noised[k] for k in p}, factor

    def trajectory(step):
        ng.manual_seed(1)
        p, snaps = dict(params), []
        for x, y in data(5, (6, 1, 8, 8), 3):
            p, factor = step(p, x, y)
            snaps.append([factor.numpy().copy()] + [v.numpy().copy() for v in p.values()])
        return snaps

    ref = trajectory(dp_step)
    jitted = ng.jit(dp_step, fuse=fuse)
    got = trajectory(jitted)
    assert jitted.traces == 1 and jitted.last.program is not None
    for i, (r, g) in enumerate(zip(ref, got)):
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, fuse is False, 1e-6, f"step {i}, value {k}")


# --- 17. the transfer-learning tutorial's loop: one step for both phases, set_grad_enabled -----

def _phases(jit: bool, fuse):
    ng.manual_seed(0)
    ng.set_default_dtype(ng.float32)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Dropout2d(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    running = {"loss": ng.zeros(()), "corrects": ng.zeros((), dtype=ng.long)}

    def run_batch(inputs, labels, phase):
        if phase == "train":
            model.train()
        else:
            model.eval()
        optimizer.zero_grad()
        with ng.set_grad_enabled(phase == "train"):
            outputs = model(inputs)
            _, preds = ng.max(outputs, 1)
            loss = criterion(outputs, labels)
            if phase == "train":
                loss.backward()
                optimizer.step()
        running["loss"] += loss.detach() * inputs.size(0)
        running["corrects"] += ng.sum(preds == labels.data)
        return preds

    @ng.no_grad()
    def predict(x):
        model.eval()
        return F.softmax(model(x), 1)

    if jit:
        run_batch = ng.jit(run_batch, state=(model, optimizer), fuse=fuse)
        predict = ng.jit(predict, state=model, fuse=fuse)
    out = []
    batches = data(12, (4, 3, 8, 8), 4)
    for epoch in range(3):
        for phase in ["train", "val"]:
            for x, y in batches[epoch * 4:(epoch + 1) * 4]:
                out += [run_batch(x, y, phase).numpy().copy(), np.array(model.training)]
            if phase == "train":
                scheduler.step()
            out += [running["loss"].numpy().copy(), running["corrects"].numpy().copy()]
        out += [predict(batches[0][0]).numpy().copy(), np.array(model.training)]
    return out + [v.numpy().copy() for v in model.state_dict().values()], (run_batch, predict)


@pytest.mark.parametrize("fuse", [UNFUSED, pytest.param(True, id="fused")])
def test_one_step_for_train_and_val_phases(fuse):
    # the replayed phases left model.training as the call found it, not as the phase set it
    ref, _ = _phases(False, None)
    got, steps = _phases(True, fuse)
    assert len(ref) == len(got)
    for k, (a, b) in enumerate(zip(ref, got)):
        _close(a, b, fuse is False, 1e-6, f"value {k}")
    for s in steps:
        assert s.last.program is not None, s.last.reason


# --- 18. schedules and variants around SGD: OneCycle cycling the momentum, a warmup-cosine
#         LambdaLR inside the step, ReduceLROnPlateau on accuracy, model.double(), kept grads ----

def sgd_variant(kind: str):
    def make():
        ng.set_default_dtype(ng.float32)
        model = _net().double() if kind == "double" else _net()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
        sched = None
        if kind == "onecycle":
            sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=STEPS,
                                                  base_momentum=0.85, max_momentum=0.95)
        elif kind == "lambda":
            sched = optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 3) * 0.5 * (
                1 + np.cos(np.pi * e / STEPS)))
        elif kind == "plateau":
            sched = optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0)

        def step(x, y):
            if kind == "double":
                x = x.double()
            opt.zero_grad(set_to_none=kind != "keep_grads")
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            if kind in ("onecycle", "lambda"):
                sched.step()
            return loss, (out.argmax(1) == y).float().mean()

        def between(i, out):
            if kind == "plateau":
                sched.step(out[1])
        return Run((model, opt), step, data(STEPS, (4, 3, 8, 8), 4), between=between)
    return make


@pytest.mark.parametrize("kind", ["onecycle", "lambda", "plateau", "double", "keep_grads"])
def test_sgd_schedules_and_variants(kind):
    check(sgd_variant(kind))
