"""PyTorch audio and signal-processing programs, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``): spectrogram
front ends (``stft`` / ``istft``, a hand-built mel filterbank, log-mel, MFCC by a DCT matrix),
spectral losses and FFT convolutions, WaveNet and TCN stacks of dilated causal convolutions, a
small CTC speech recogniser over packed bidirectional LSTMs, and upsamplers. Both libraries start
from PyTorch's seeded weights and see the same generated signals (chirps, sine mixtures, noise
made with NumPy), so losses, gradients and parameters agree step by step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = {"float64": 1e-9, "float32": 2e-4}
SR = 8000


# --- shared pieces: signals, weights, records ----------------------------------------------------
def chirp(t, f0, f1):
    """A linear chirp from f0 to f1 Hz over the span of ``t``."""
    k = (f1 - f0) / t[-1]
    return np.sin(2 * np.pi * (f0 * t + 0.5 * k * t * t))


def signals(n: int, length: int, seed: int = 0):
    """(n, length) waveforms of four kinds (up-chirp, down-chirp, sine mixture, noise), labels."""
    r = np.random.default_rng(seed)
    t = np.arange(length) / SR
    xs, ys = [], []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            x = chirp(t, r.uniform(200, 600), r.uniform(2500, 3500))
        elif kind == 1:
            x = chirp(t, r.uniform(2500, 3500), r.uniform(200, 600))
        elif kind == 2:
            fs = r.uniform(300, 3000, size=3)
            x = sum(r.uniform(0.3, 1) * np.sin(2 * np.pi * f * t + r.uniform(0, 6)) for f in fs)
        else:
            x = r.standard_normal(length)
        xs.append(0.5 * x + 0.05 * r.standard_normal(length))
        ys.append(kind)
    return np.stack(xs), np.array(ys)


def load_init(model, init: dict, lib) -> None:
    """Load PyTorch's initial state into ``model``; nodegrad's state dict must match it key for
    key (names, order, shapes)."""
    if lib is ng:
        mine = model.state_dict()
        assert list(mine) == list(init)
        assert [tuple(v.shape) for v in mine.values()] == [v.shape for v in init.values()]
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})


def torch_init(build, dtype: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build(torch).to(getattr(torch, dtype))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def grads(model) -> dict:
    return {k: arr(p.grad) for k, p in model.named_parameters() if p.grad is not None}


def state(model) -> dict:
    return {k: arr(v) for k, v in model.state_dict().items()}


def both(script, build, dtype="float64", **kw):
    """``script`` with PyTorch and with nodegrad from the same initial weights; their records
    (losses, gradients, parameters, extra values) must agree."""
    init = torch_init(build, dtype)
    ref = script(torch, build, init, dtype, **kw)
    got = script(ng, build, init, dtype, **kw)
    assert_same(got, ref, TOL[dtype])
    return got


# --- 1. log-mel / MFCC front end (torchaudio's recipe by hand) + SpecAugment + a classifier -----
def hz_to_mel(f):
    return 2595.0 * math.log10(1.0 + f / 700.0)


def melscale_fbanks(lib, n_freqs, f_min, f_max, n_mels, sample_rate, dtype):
    """torchaudio.functional.melscale_fbanks (HTK scale, Slaney norm), written out."""
    all_freqs = lib.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)
    m_pts = lib.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=dtype)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    zero = lib.zeros(1, dtype=dtype)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    fb = lib.max(zero, lib.min(down_slopes, up_slopes))
    enorm = 2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels])
    fb *= enorm.unsqueeze(0)
    return fb


def create_dct(lib, n_mfcc, n_mels, dtype):
    """torchaudio.functional.create_dct(norm="ortho"): the (n_mels, n_mfcc) DCT-II matrix."""
    n = lib.arange(float(n_mels), dtype=dtype)
    k = lib.arange(float(n_mfcc), dtype=dtype).unsqueeze(1)
    dct = lib.cos(math.pi / float(n_mels) * (n + 0.5) * k)
    dct[0] *= 1.0 / math.sqrt(2.0)
    dct *= math.sqrt(2.0 / float(n_mels))
    return dct.t()


def amplitude_to_db(lib, x, amin=1e-10, top_db=80.0):
    """torchaudio's AmplitudeToDB(stype="power", top_db) for a (B, F, T) spectrogram."""
    x_db = 10.0 * lib.log10(lib.clamp(x, min=amin))
    x_db = x_db - 10.0 * math.log10(max(amin, 1.0))
    floor = x_db.amax(dim=(-2, -1)) - top_db
    return lib.max(x_db, floor.view(-1, 1, 1))


def spec_augment(lib, spec, f_draw, t_draw):
    """SpecAugment masks on (B, F, T): one frequency band and one time band per example, placed
    by ``(width, start)`` draws, filled with the spectrogram's mean."""
    b, nf, nt = spec.shape
    fw, f0 = f_draw
    tw, t0 = t_draw
    fi = lib.arange(nf).view(1, nf, 1)
    ti = lib.arange(nt).view(1, 1, nt)
    fmask = (fi >= f0.view(b, 1, 1)) & (fi < (f0 + fw).view(b, 1, 1))
    tmask = (ti >= t0.view(b, 1, 1)) & (ti < (t0 + tw).view(b, 1, 1))
    return spec.masked_fill(fmask | tmask, spec.mean().item())


def torch_style_draws(lib, b, size, max_width):
    """How SpecAugment code draws its masks: widths and starts with ``randint``."""
    width = lib.randint(0, max_width + 1, (b,))
    start = (lib.rand(b) * (size - width)).long()
    return width, start


def frontend_build(lib):
    nn = lib.nn

    class MFCCNet(nn.Module):
        def __init__(self, n_fft=64, hop=16, n_mels=16, n_mfcc=10, classes=4):
            super().__init__()
            self.n_fft, self.hop = n_fft, hop
            self.pre = nn.Conv1d(1, 1, 3, padding=1, bias=False)  # learnable pre-emphasis
            self.register_buffer("window", lib.hann_window(n_fft))
            self.register_buffer("fb", melscale_fbanks(lib, n_fft // 2 + 1, 0.0, SR / 2,
                                                       n_mels, SR, lib.float32))
            self.register_buffer("dct", create_dct(lib, n_mfcc, n_mels, lib.float32))
            self.conv = nn.Conv1d(n_mfcc, 12, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm1d(12)
            self.head = nn.Linear(12 + n_mels, classes)

        def features(self, wav):
            wav = self.pre(wav.unsqueeze(1)).squeeze(1)
            spec = lib.stft(wav, self.n_fft, hop_length=self.hop, win_length=self.n_fft,
                            window=self.window, center=True, pad_mode="reflect",
                            normalized=False, onesided=True, return_complex=True)
            power = spec.abs() ** 2                                      # (B, F, T)
            mel = lib.matmul(power.transpose(-1, -2), self.fb).transpose(-1, -2)
            logmel = lib.log(mel + 1e-6)
            mfcc = lib.matmul(logmel.transpose(-1, -2), self.dct).transpose(-1, -2)
            return mel, logmel, mfcc

        def forward(self, wav, draws=None):
            mel, logmel, mfcc = self.features(wav)
            if draws is not None:
                mfcc = spec_augment(lib, mfcc, *draws)
            h = lib.relu(self.bn(self.conv(mfcc))).mean(dim=-1)
            db = amplitude_to_db(lib, mel, top_db=60.0)
            db = (db - db.mean(dim=(1, 2), keepdim=True)) / 20.0
            return self.head(lib.cat([h, db.mean(dim=-1)], dim=1))

    return MFCCNet()


def frontend_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=5e-3)
    xs, ys = signals(8, 400)
    r = np.random.default_rng(1)
    rec = []
    for _ in range(3):
        draws = ((lib.tensor(r.integers(0, 4, 8)), lib.tensor(r.integers(0, 6, 8))),
                 (lib.tensor(r.integers(0, 5, 8)), lib.tensor(r.integers(0, 20, 8))))
        logits = model(lib.tensor(xs, dtype=dt), draws)
        loss = lib.nn.functional.cross_entropy(logits, lib.tensor(ys), label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    model.eval()
    with lib.no_grad():
        mel, logmel, mfcc = model.features(lib.tensor(xs[:2], dtype=dt))
    return rec, state(model), [mel, logmel, mfcc]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mfcc_frontend_classifier_matches_torch(dtype):
    both(frontend_script, frontend_build, dtype)


def test_spec_augment_randint_masks_cover_drawn_bands():
    """The draws themselves come from each library's own generator: check what they mean."""
    ng.manual_seed(0)
    spec = ng.ones(6, 12, 30) + ng.arange(30.0)
    w, s = torch_style_draws(ng, 6, 30, 7)
    assert w.dtype == ng.int64 and s.dtype == ng.int64
    assert bool(((w >= 0) & (w <= 7)).all()) and bool(((s >= 0) & (s + w <= 30)).all())
    zero = (ng.zeros(6, dtype=ng.int64), ng.zeros(6, dtype=ng.int64))
    out = spec_augment(ng, spec, zero, (w, s))
    masked = (out == spec.mean().item()).all(dim=1)                  # (B, T) masked frames
    assert (masked.sum(dim=1).numpy() == w.numpy()).all()


# --- 2. multi-resolution STFT loss (ParallelWaveGAN) training an upsampler -----------------------
def stft_mag(lib, x, fft_size, hop, win):
    x_stft = lib.stft(x, fft_size, hop, win, lib.hann_window(win, dtype=x.dtype),
                      return_complex=True)
    return lib.sqrt(lib.clamp(x_stft.real ** 2 + x_stft.imag ** 2, min=1e-7)).transpose(2, 1)


def mr_stft_loss(lib, x, y, res=((64, 16, 48), (32, 8, 32), (128, 32, 96))):
    F = lib.nn.functional
    sc_loss = mag_loss = 0.0
    for fft_size, hop, win in res:
        xm, ym = stft_mag(lib, x, fft_size, hop, win), stft_mag(lib, y, fft_size, hop, win)
        sc_loss = sc_loss + lib.norm(ym - xm, p="fro") / lib.norm(ym, p="fro")
        mag_loss = mag_loss + F.l1_loss(lib.log(ym), lib.log(xm))
    return sc_loss / len(res), mag_loss / len(res)


def upsampler_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class Upsampler(nn.Module):
        """x4 upsampling: a transposed convolution refining a linear interpolation."""

        def __init__(self, ch=6):
            super().__init__()
            self.up = nn.ConvTranspose1d(1, ch, kernel_size=8, stride=4, padding=2)
            self.mid = nn.Conv1d(ch, ch, 5, padding=2)
            self.out = nn.Conv1d(ch, 1, 3, padding=1)

        def forward(self, x):                                           # (B, 1, L)
            base = F.interpolate(x, scale_factor=4, mode="linear", align_corners=False)
            h = F.leaky_relu(self.up(x), 0.2)
            h = h + F.leaky_relu(self.mid(h), 0.2)
            return (base + 0.1 * self.out(h)).squeeze(1)

    return Upsampler()


def upsampler_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    F = lib.nn.functional
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.8, 0.99), weight_decay=0.01)
    xs, _ = signals(4, 512, seed=2)
    clean = lib.tensor(xs, dtype=dt)
    low = F.avg_pool1d(clean.unsqueeze(1), 4)                        # (B, 1, 128)
    rec = []
    for _ in range(3):
        y_hat = model(low)
        sc, mag = mr_stft_loss(lib, y_hat, clean)
        loss = sc + mag + 0.5 * F.l1_loss(y_hat, clean)
        opt.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        rec.append({"sc": sc, "mag": mag, "grads": grads(model)})
        opt.step()
    return rec, state(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_upsampler_multires_stft_loss_matches_torch(dtype):
    both(upsampler_script, upsampler_build, dtype)


# --- 3. a learnable long convolution by FFT (S4 / Hyena style) and a frequency-response filter ---
def fftconv_build(lib):
    nn = lib.nn

    class LongConv(nn.Module):
        def __init__(self, channels=3, length=64):
            super().__init__()
            self.kernel = nn.Parameter(0.1 * lib.randn(channels, length))
            self.log_decay = nn.Parameter(lib.full((channels, 1), -3.0))
            self.cutoff = nn.Parameter(lib.tensor([1500.0]))
            self.D = nn.Parameter(lib.randn(channels))

        def forward(self, u):                                           # (B, C, L)
            length = u.shape[-1]
            t = lib.arange(length, dtype=u.dtype)
            k = self.kernel[:, :length] * lib.exp(-lib.exp(self.log_decay) * t)
            n = 2 * length
            k_f = lib.fft.rfft(k, n=n) / n
            u_f = lib.fft.rfft(u, n=n)
            y = lib.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :length]
            freqs = lib.fft.rfftfreq(length, d=1.0 / SR).to(u.dtype)
            gain = lib.sigmoid((self.cutoff - freqs) / 200.0)
            lp = lib.fft.irfft(lib.fft.rfft(u, dim=-1) * gain, n=length, dim=-1)
            return y + lp + u * self.D.unsqueeze(-1)

    return LongConv()


def fftconv_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    xs, _ = signals(6, 64, seed=3)
    u = lib.tensor(xs.reshape(2, 3, 64), dtype=dt)
    r = np.random.default_rng(4)
    target = lib.tensor(np.convolve(xs[0], r.standard_normal(8) / 4)[:64], dtype=dt)
    rec = []
    for _ in range(4):
        y = model(u)
        loss = ((y[0, 0] - target) ** 2).mean() + 0.1 * (y[1] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    # the FFT path is a causal convolution: compare with a direct one
    with lib.no_grad():
        length = 64
        k = model.kernel * lib.exp(-lib.exp(model.log_decay) * lib.arange(length, dtype=dt))
        direct = lib.nn.functional.conv1d(lib.nn.functional.pad(u, (length - 1, 0)),
                                          k.flip(-1).unsqueeze(1), groups=3)
        fft_path = lib.fft.irfft(lib.fft.rfft(u, n=128) * lib.fft.rfft(k, n=128) / 128,
                                 n=128, norm="forward")[..., :length]
    freqs = lib.fft.fftfreq(8, d=0.5)
    return rec, state(model), [direct, fft_path, freqs, lib.fft.fftshift(freqs)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fft_long_convolution_matches_torch(dtype):
    got = both(fftconv_script, fftconv_build, dtype)
    direct, fft_path = got[2][0], got[2][1]
    np.testing.assert_allclose(direct, fft_path, rtol=1e-4, atol=1e-5)


# --- 4. WaveNet: dilated causal convolutions, gated units, residual and skip paths ---------------
def mu_law_encode(lib, x, mu=15):
    y = lib.sign(x) * lib.log1p(mu * lib.abs(x)) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).long()


def wavenet_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class CausalConv1d(nn.Conv1d):
        def __init__(self, cin, cout, kernel_size, dilation=1):
            super().__init__(cin, cout, kernel_size, dilation=dilation)
            self.left = (kernel_size - 1) * dilation

        def forward(self, x):
            return super().forward(F.pad(x, (self.left, 0)))

    class ResidualBlock(nn.Module):
        def __init__(self, res, skip, dilation):
            super().__init__()
            self.dilated = CausalConv1d(res, 2 * res, 2, dilation=dilation)
            self.res = nn.Conv1d(res, res, 1)
            self.skip = nn.Conv1d(res, skip, 1)

        def forward(self, x):
            filt, gate = self.dilated(x).chunk(2, dim=1)
            z = lib.tanh(filt) * lib.sigmoid(gate)
            return (x + self.res(z)) * math.sqrt(0.5), self.skip(z)

    class WaveNet(nn.Module):
        def __init__(self, classes=16, res=8, skip=10, dilations=(1, 2, 4, 8, 1, 2)):
            super().__init__()
            self.classes = classes
            self.start = CausalConv1d(classes, res, 2)
            self.blocks = nn.ModuleList(ResidualBlock(res, skip, d) for d in dilations)
            self.end = nn.Sequential(nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(),
                                     nn.Conv1d(skip, classes, 1))

        def forward(self, q):                                          # (B, T) int
            x = F.one_hot(q, self.classes).permute(0, 2, 1).to(self.start.weight.dtype)
            x = self.start(x)
            skips = 0
            for block in self.blocks:
                x, s = block(x)
                skips = skips + s
            return self.end(skips)                                     # (B, classes, T)

    return WaveNet()


def wavenet_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    F = lib.nn.functional
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=3e-3, amsgrad=True)
    sched = lib.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    xs, _ = signals(4, 96, seed=5)
    q = mu_law_encode(lib, lib.tensor(np.clip(xs, -1, 1), dtype=dt))
    rec = []
    for _ in range(3):
        logits = model(q[:, :-1])
        loss = F.cross_entropy(logits, q[:, 1:])
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
        sched.step()
    # causality: changing the future leaves the past's predictions alone
    with lib.no_grad():
        q2 = q.clone()
        q2[:, 50:] = 0
        same = (model(q2[:, :-1])[..., :50] - model(q[:, :-1])[..., :50]).abs().max()
    return rec, state(model), q, same


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wavenet_gated_dilated_stack_matches_torch(dtype):
    got = both(wavenet_script, wavenet_build, dtype)
    assert got[3] == 0.0


# --- 5. TCN (Bai et al.): weight-normed dilated convolutions, Chomp1d, residual downsample -----
def tcn_build(lib):
    nn = lib.nn
    weight_norm = nn.utils.weight_norm

    class Chomp1d(nn.Module):
        def __init__(self, chomp_size):
            super().__init__()
            self.chomp_size = chomp_size

        def forward(self, x):
            return x[:, :, :-self.chomp_size].contiguous()

    class TemporalBlock(nn.Module):
        def __init__(self, n_inputs, n_outputs, kernel_size, stride, dilation, padding,
                     dropout=0.2):
            super().__init__()
            self.conv1 = weight_norm(nn.Conv1d(n_inputs, n_outputs, kernel_size, stride=stride,
                                               padding=padding, dilation=dilation))
            self.chomp1 = Chomp1d(padding)
            self.relu1 = nn.ReLU()
            self.dropout1 = nn.Dropout(dropout)
            self.conv2 = weight_norm(nn.Conv1d(n_outputs, n_outputs, kernel_size, stride=stride,
                                               padding=padding, dilation=dilation))
            self.chomp2 = Chomp1d(padding)
            self.relu2 = nn.ReLU()
            self.dropout2 = nn.Dropout(dropout)
            self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                     self.conv2, self.chomp2, self.relu2, self.dropout2)
            self.downsample = (nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs
                               else None)
            self.relu = nn.ReLU()
            self.init_weights()

        def init_weights(self):
            self.conv1.weight.data.normal_(0, 0.01)
            self.conv2.weight.data.normal_(0, 0.01)
            if self.downsample is not None:
                self.downsample.weight.data.normal_(0, 0.01)

        def forward(self, x):
            out = self.net(x)
            res = x if self.downsample is None else self.downsample(x)
            return self.relu(out + res)

    class TCN(nn.Module):
        def __init__(self, num_inputs=1, num_channels=(6, 6, 6), kernel_size=3, classes=4):
            super().__init__()
            layers = []
            for i, out_ch in enumerate(num_channels):
                d = 2 ** i
                in_ch = num_inputs if i == 0 else num_channels[i - 1]
                layers += [TemporalBlock(in_ch, out_ch, kernel_size, stride=1, dilation=d,
                                         padding=(kernel_size - 1) * d, dropout=0.2)]
            self.network = nn.Sequential(*layers)
            self.linear = nn.Linear(num_channels[-1], classes)

        def forward(self, x):
            y1 = self.network(x)
            return self.linear(y1[:, :, -1])

    return TCN()


def tcn_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    F = lib.nn.functional
    model = build(lib).to(dt)
    load_init(model, init, lib)
    model.eval()  # dropout off: both libraries draw different masks
    opt = lib.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.9)
    xs, ys = signals(8, 48, seed=6)
    x = lib.tensor(xs, dtype=dt).unsqueeze(1)
    rec = []
    for _ in range(3):
        loss = F.nll_loss(F.log_softmax(model(x), dim=1), lib.tensor(ys))
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    return rec, state(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tcn_weight_norm_matches_torch(dtype):
    both(tcn_script, tcn_build, dtype)


# --- 6. a small CTC speech recogniser: conv subsampling, packed BiLSTM, greedy decoding ---------
BLANK = 0
TONES = {1: 500.0, 2: 1200.0, 3: 2000.0, 4: 3000.0}


def tone_utterances(n=6, seed=7):
    """Waveforms made of tones (one frequency per label), their label sequences and lengths."""
    r = np.random.default_rng(seed)
    waves, labels = [], []
    seg = 160
    for _ in range(n):
        k = int(r.integers(1, 4))
        lab = r.integers(1, 5, size=k)
        t = np.arange(seg) / SR
        w = np.concatenate([np.sin(2 * np.pi * TONES[int(c)] * t) for c in lab])
        waves.append(w + 0.05 * r.standard_normal(w.size))
        labels.append(lab)
    return waves, labels


def asr_build(lib):
    nn = lib.nn

    class TinyASR(nn.Module):
        def __init__(self, n_fft=32, hop=16, hidden=8, vocab=5):
            super().__init__()
            self.n_fft, self.hop = n_fft, hop
            self.register_buffer("window", lib.hann_window(n_fft, periodic=False))
            self.sub = nn.Conv1d(n_fft // 2 + 1, 12, kernel_size=3, stride=2, padding=1)
            self.lstm = nn.LSTM(12, hidden, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * hidden, vocab)

        def frames(self, lengths):
            t = lengths // self.hop + 1                               # stft frames (center)
            return (t + 2 * 1 - 3) // 2 + 1                            # after the conv

        def forward(self, wav, lengths):
            spec = lib.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True)
            feats = lib.log(lib.clamp(spec.abs().pow(2), min=1e-8))
            x = lib.relu(self.sub(feats)).transpose(1, 2)              # (B, T', 12)
            out_lens = self.frames(lengths)
            packed = nn.utils.rnn.pack_padded_sequence(x, out_lens.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                      total_length=x.shape[1])
            logits = self.fc(out)                                      # (B, T', C)
            return logits.log_softmax(dim=-1).transpose(0, 1), out_lens  # (T', B, C)

    return TinyASR()


def greedy_decode(lib, log_probs, lengths):
    """Best path: argmax per frame, merge repeats, drop blanks."""
    best = log_probs.argmax(dim=-1).transpose(0, 1)                   # (B, T)
    hyps = []
    for seq, n in zip(best, lengths.tolist()):
        merged = lib.unique_consecutive(seq[:n])
        hyps.append([int(c) for c in merged.tolist() if c != BLANK])
    return hyps


def asr_script(lib, build, init, dtype, reduction="mean", concat=False):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    ctc = lib.nn.CTCLoss(blank=BLANK, reduction=reduction, zero_infinity=True)
    waves, labels = tone_utterances()
    lengths = lib.tensor([w.size for w in waves])
    wav = lib.nn.utils.rnn.pad_sequence([lib.tensor(w, dtype=dt) for w in waves],
                                        batch_first=True)
    tgt_lens = lib.tensor([len(y) for y in labels])
    if concat:
        targets = lib.tensor(np.concatenate(labels))
    else:
        targets = lib.nn.utils.rnn.pad_sequence([lib.tensor(y) for y in labels],
                                                batch_first=True, padding_value=0)
    rec = []
    for _ in range(3):
        log_probs, out_lens = model(wav, lengths)
        loss = ctc(log_probs, targets, out_lens, tgt_lens)
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    with lib.no_grad():
        log_probs, out_lens = model(wav, lengths)
        per_utt = lib.nn.functional.ctc_loss(log_probs, targets, out_lens, tgt_lens,
                                             reduction="none")
    return rec, state(model), per_utt, out_lens, greedy_decode(lib, log_probs, out_lens)


@pytest.mark.parametrize("dtype,reduction,concat", [("float64", "mean", False),
                                                     ("float64", "sum", True),
                                                     ("float32", "mean", False)])
def test_ctc_speech_recogniser_matches_torch(dtype, reduction, concat):
    both(asr_script, asr_build, dtype, reduction=reduction, concat=concat)


def test_ctc_zero_infinity_for_impossible_targets():
    """A target longer than its input has no alignment: inf, or 0 (and a zero gradient) with
    zero_infinity."""
    r = np.random.default_rng(8)
    logits = r.standard_normal((5, 3, 4))
    targets = np.array([[1, 2, 1, 2, 3, 1, 2], [1, 1, 2, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0, 0]])
    in_lens, tg_lens = [5, 5, 4], [7, 3, 1]

    def run(lib, **kw):
        x = lib.tensor(logits, requires_grad=True)
        loss = lib.nn.functional.ctc_loss(x.log_softmax(2), lib.tensor(targets),
                                          lib.tensor(in_lens), lib.tensor(tg_lens), **kw)
        loss.sum().backward() if loss.ndim else loss.backward()
        return [loss, x.grad]

    for kw in [dict(reduction="none"), dict(reduction="sum", zero_infinity=True),
               dict(reduction="mean", zero_infinity=True)]:
        ref, got = run(torch, **kw), run(ng, **kw)
        if kw.get("zero_infinity"):
            assert_same(got, ref)
        else:
            assert_same(got[0], ref[0])


# --- 7. a spectral-mask enhancer trained through stft / istft round trips -----------------------
def enhancer_build(lib):
    nn = lib.nn

    class MaskNet(nn.Module):
        def __init__(self, n_fft=64, hop=16, hidden=10):
            super().__init__()
            self.n_fft, self.hop = n_fft, hop
            bins = n_fft // 2 + 1
            self.register_buffer("window", lib.hann_window(n_fft, dtype=lib.float32))
            self.lstm = nn.LSTM(bins, hidden, batch_first=True)
            self.mask = nn.Linear(hidden, bins)

        def forward(self, noisy):
            spec = lib.stft(noisy, self.n_fft, self.hop, window=self.window,
                            return_complex=True)                          # (B, F, T)
            mag = spec.abs()
            h, _ = self.lstm(lib.log1p(mag).transpose(1, 2))
            m = lib.sigmoid(self.mask(h)).transpose(1, 2)
            return lib.istft(spec * m, self.n_fft, self.hop, window=self.window,
                             length=noisy.shape[-1])

    return MaskNet()


def enhancer_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    xs, _ = signals(3, 300, seed=9)
    clean = lib.tensor(xs, dtype=dt)
    noisy = clean + lib.tensor(0.3 * np.random.default_rng(10).standard_normal(xs.shape),
                               dtype=dt)
    rec = []
    for _ in range(3):
        est = model(noisy)
        loss = lib.nn.functional.mse_loss(est, clean)
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    w = model.window
    spec = lib.stft(clean, 64, 16, window=w, return_complex=True)
    back = lib.istft(spec, 64, 16, window=w, length=300)
    return rec, state(model), [back, spec.abs(), lib.view_as_real(spec)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_stft_mask_enhancer_matches_torch(dtype):
    got = both(enhancer_script, enhancer_build, dtype)
    xs, _ = signals(3, 300, seed=9)
    np.testing.assert_allclose(got[2][0], xs, atol=1e-5)


# --- 8. Conv-TasNet (mini): learned encoder / decoder, gLN, depthwise dilated convs, SI-SNR PIT --
def tasnet_build(lib):
    nn = lib.nn

    class DepthConv1d(nn.Module):
        def __init__(self, ch, hidden, dilation):
            super().__init__()
            self.conv1x1 = nn.Conv1d(ch, hidden, 1)
            self.prelu1, self.prelu2 = nn.PReLU(), nn.PReLU()
            self.norm1 = nn.GroupNorm(1, hidden, eps=1e-8)
            self.norm2 = nn.GroupNorm(1, hidden, eps=1e-8)
            self.dconv = nn.Conv1d(hidden, hidden, 3, dilation=dilation, groups=hidden,
                                   padding=dilation)
            self.res_out = nn.Conv1d(hidden, ch, 1)
            self.skip_out = nn.Conv1d(hidden, ch, 1)

        def forward(self, x):
            h = self.norm1(self.prelu1(self.conv1x1(x)))
            h = self.norm2(self.prelu2(self.dconv(h)))
            return self.res_out(h), self.skip_out(h)

    class TasNet(nn.Module):
        def __init__(self, enc_dim=8, win=8, num_spk=2, feat=6, hidden=10):
            super().__init__()
            self.win, self.stride, self.num_spk, self.enc_dim = win, win // 2, num_spk, enc_dim
            self.encoder = nn.Conv1d(1, enc_dim, win, bias=False, stride=self.stride)
            self.ln = nn.GroupNorm(1, enc_dim, eps=1e-8)
            self.bn = nn.Conv1d(enc_dim, feat, 1)
            self.tcn = nn.ModuleList([DepthConv1d(feat, hidden, 2 ** i) for i in range(3)])
            self.output = nn.Sequential(nn.PReLU(), nn.Conv1d(feat, enc_dim * num_spk, 1))
            self.decoder = nn.ConvTranspose1d(enc_dim, 1, win, bias=False, stride=self.stride)

        def pad_signal(self, x):
            batch, nsample = x.size(0), x.size(2)
            rest = self.win - (self.stride + nsample % self.win) % self.win
            if rest > 0:
                x = lib.cat([x, lib.zeros(batch, 1, rest, dtype=x.dtype)], 2)
            aux = lib.zeros(batch, 1, self.stride, dtype=x.dtype)
            return lib.cat([aux, x, aux], 2), rest

        def forward(self, x):                                          # (B, L)
            output, rest = self.pad_signal(x.unsqueeze(1))
            batch = output.size(0)
            enc = self.encoder(output)                                 # (B, N, T)
            h = self.bn(self.ln(enc))
            skip = 0.0
            for layer in self.tcn:
                res, s = layer(h)
                h, skip = h + res, skip + s
            masks = lib.sigmoid(self.output(skip)).view(batch, self.num_spk, self.enc_dim, -1)
            masked = enc.unsqueeze(1) * masks
            out = self.decoder(masked.view(batch * self.num_spk, self.enc_dim, -1))
            out = out[:, :, self.stride:-(rest + self.stride)].contiguous()
            return out.view(batch, self.num_spk, -1)

    return TasNet()


def si_snr(lib, est, ref, eps=1e-8):
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    proj = (est * ref).sum(dim=-1, keepdim=True) * ref / (ref.pow(2).sum(-1, keepdim=True) + eps)
    noise = est - proj
    ratio = proj.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
    return 10 * lib.log10(ratio + eps)


def pit_loss(lib, est, ref):
    """Permutation-invariant negative SI-SNR for two sources."""
    perms = [(0, 1), (1, 0)]
    scores = lib.stack([si_snr(lib, est[:, list(p)], ref).mean(-1) for p in perms], dim=1)
    best, idx = scores.max(dim=1)
    return -best.mean(), idx


def tasnet_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    xs, _ = signals(4, 101, seed=11)
    ref = lib.tensor(xs.reshape(2, 2, 101), dtype=dt)
    mix = ref.sum(1)
    rec = []
    for _ in range(3):
        est = model(mix)
        loss, idx = pit_loss(lib, est, ref)
        opt.zero_grad()
        loss.backward()
        norm = lib.nn.utils.clip_grad_norm_(model.parameters(), 5.0, norm_type=2.0)
        rec.append({"loss": loss, "norm": norm, "idx": idx, "grads": grads(model)})
        opt.step()
    return rec, state(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_tasnet_si_snr_pit_matches_torch(dtype):
    both(tasnet_script, tasnet_build, dtype)


# --- 9. a HiFi-GAN-style generator and a MelGAN-style discriminator, trained adversarially ------
def gan_build(lib):
    nn, F = lib.nn, lib.nn.functional
    wn, sn = nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.spectral_norm

    class ResBlock(nn.Module):
        def __init__(self, ch, k=3, dilations=(1, 3)):
            super().__init__()
            self.convs = nn.ModuleList(wn(nn.Conv1d(ch, ch, k, dilation=d,
                                                    padding=(k * d - d) // 2))
                                       for d in dilations)

        def forward(self, x):
            for c in self.convs:
                x = x + c(F.leaky_relu(x, 0.1))
            return x

    class Generator(nn.Module):
        def __init__(self, n_mels=6, ch=8, rates=(2, 2)):
            super().__init__()
            self.pre = wn(nn.Conv1d(n_mels, ch, 5, padding=2))
            self.ups, self.res = nn.ModuleList(), nn.ModuleList()
            for i, u in enumerate(rates):
                cin, cout = ch // 2 ** i, ch // 2 ** (i + 1)
                self.ups.append(wn(nn.ConvTranspose1d(cin, cout, 2 * u, u, padding=u // 2)))
                self.res.append(ResBlock(cout))
            self.post = wn(nn.Conv1d(cout, 1, 5, padding=2))

        def forward(self, mel):
            x = self.pre(mel)
            for up, res in zip(self.ups, self.res):
                x = res(up(F.leaky_relu(x, 0.1)))
            return lib.tanh(self.post(F.leaky_relu(x))).squeeze(1)

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([
                nn.Sequential(nn.ReflectionPad1d(3), sn(nn.Conv1d(1, 4, 7)), nn.LeakyReLU(0.2)),
                nn.Sequential(sn(nn.Conv1d(4, 8, 5, stride=2, padding=2, groups=2)),
                              nn.LeakyReLU(0.2)),
                sn(nn.Conv1d(8, 1, 3, padding=1)),
            ])
            self.pool = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)

        def forward(self, x):
            feats = []
            for scale in range(2):
                h = x.unsqueeze(1) if scale == 0 else self.pool(x.unsqueeze(1))
                for layer in self.layers:
                    h = layer(h)
                    feats.append(h)
            return feats

    class GAN(nn.Module):
        def __init__(self):
            super().__init__()
            self.gen, self.disc = Generator(), Discriminator()

    return GAN()


def gan_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    F = lib.nn.functional
    model = build(lib).to(dt)
    load_init(model, init, lib)
    g, d = model.gen, model.disc
    opt_g = lib.optim.AdamW(g.parameters(), 2e-3, betas=(0.8, 0.99))
    opt_d = lib.optim.AdamW(d.parameters(), 2e-3, betas=(0.8, 0.99))
    sched_g = lib.optim.lr_scheduler.ExponentialLR(opt_g, gamma=0.999)
    xs, _ = signals(2, 64, seed=12)
    audio = lib.tensor(xs, dtype=dt)
    mel = lib.tensor(np.random.default_rng(13).standard_normal((2, 6, 16)), dtype=dt)
    rec = []
    for _ in range(2):
        fake = g(mel)
        real_out, fake_out = d(audio), d(fake.detach())
        loss_d = sum(((1 - r[-1]) ** 2).mean() + (f[-1] ** 2).mean()
                     for r, f in zip(real_out[2::3], fake_out[2::3]))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        real_feats, fake_feats = d(audio), d(fake)
        adv = sum(((1 - f) ** 2).mean() for f in fake_feats[2::3])
        fm = sum(F.l1_loss(f, r.detach()) for f, r in zip(fake_feats, real_feats))
        mag = mr_stft_loss(lib, fake, audio, res=((16, 4, 16),))[1]
        loss_g = adv + 2 * fm + 45 * mag
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        sched_g.step()
        rec.append({"d": loss_d, "g": loss_g, "grads_g": grads(g)})
    return rec, state(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hifigan_style_gan_matches_torch(dtype):
    both(gan_script, gan_build, dtype)


# --- 10. DDSP: a harmonic oscillator bank plus filtered noise, from a small decoder ---------------
def amp_to_impulse_response(lib, amp, target_size):
    amp = lib.stack([amp, lib.zeros_like(amp)], -1)
    amp = lib.view_as_complex(amp)
    amp = lib.fft.irfft(amp)
    filter_size = amp.shape[-1]
    amp = lib.roll(amp, filter_size // 2, -1)
    win = lib.hann_window(filter_size, dtype=amp.dtype, device=amp.device)
    amp = amp * win
    amp = lib.nn.functional.pad(amp, (0, int(target_size) - int(filter_size)))
    return lib.roll(amp, -filter_size // 2, -1)


def fft_convolve(lib, signal, kernel):
    signal = lib.nn.functional.pad(signal, (0, signal.shape[-1]))
    kernel = lib.nn.functional.pad(kernel, (kernel.shape[-1], 0))
    output = lib.fft.irfft(lib.fft.rfft(signal) * lib.fft.rfft(kernel))
    return output[..., output.shape[-1] // 2:]


def upsample(lib, signal, factor):
    signal = signal.permute(0, 2, 1)
    signal = lib.nn.functional.interpolate(signal, size=signal.shape[-1] * factor)
    return signal.permute(0, 2, 1)


def harmonic_synth(lib, pitch, amplitudes, sampling_rate):
    n_harmonic = amplitudes.shape[-1]
    omega = lib.cumsum(2 * math.pi * pitch / sampling_rate, 1)
    omegas = omega * lib.arange(1, n_harmonic + 1, dtype=omega.dtype).to(omega)
    return (lib.sin(omegas) * amplitudes).sum(-1, keepdim=True)


def remove_above_nyquist(lib, amplitudes, pitch, sampling_rate):
    n_harm = amplitudes.shape[-1]
    pitches = pitch * lib.arange(1, n_harm + 1, dtype=pitch.dtype).to(pitch)
    aa = (pitches < sampling_rate / 2).float() + 1e-4
    return amplitudes * aa.to(amplitudes.dtype)


def ddsp_build(lib):
    nn = lib.nn

    class DDSP(nn.Module):
        def __init__(self, hidden=12, n_harmonic=6, n_bands=9, block_size=16):
            super().__init__()
            self.block_size = block_size
            self.in_mlp = nn.Sequential(nn.Linear(2, hidden), nn.LayerNorm(hidden),
                                        nn.LeakyReLU())
            self.gru = nn.GRU(hidden, hidden, batch_first=True)
            self.proj = nn.ModuleList([nn.Linear(hidden, n_harmonic + 1),
                                       nn.Linear(hidden, n_bands)])

        def forward(self, pitch, loudness):                             # (B, T, 1) each
            h, _ = self.gru(self.in_mlp(lib.cat([pitch / 4000, loudness], -1)))
            param = 2 * lib.sigmoid(self.proj[0](h)) ** math.log(10) + 1e-7
            total_amp, amplitudes = param[..., :1], param[..., 1:]
            amplitudes = remove_above_nyquist(lib, amplitudes, pitch, SR)
            amplitudes = amplitudes / amplitudes.sum(-1, keepdim=True) * total_amp
            amplitudes = upsample(lib, amplitudes, self.block_size)
            pitch_up = upsample(lib, pitch, self.block_size)
            harmonic = harmonic_synth(lib, pitch_up, amplitudes, SR)
            bands = 2 * lib.sigmoid(self.proj[1](h) - 5) ** math.log(10) + 1e-7
            impulse = amp_to_impulse_response(lib, bands, self.block_size)
            noise = lib.tensor(NOISE[:, :impulse.shape[1] * self.block_size], dtype=h.dtype)
            noise = noise.reshape(noise.shape[0], -1, self.block_size)
            noise = fft_convolve(lib, noise, impulse).contiguous()
            noise = noise.reshape(noise.shape[0], -1, 1)
            return (harmonic + noise).squeeze(-1)

    return DDSP()


NOISE = np.random.default_rng(14).uniform(-1, 1, (2, 4096))


def ddsp_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    frames = 12
    r = np.random.default_rng(15)
    pitch = lib.tensor(r.uniform(200, 900, (2, frames, 1)), dtype=dt)
    loud = lib.tensor(r.uniform(-1, 0, (2, frames, 1)), dtype=dt)
    xs, _ = signals(2, frames * 16, seed=16)
    target = lib.tensor(xs, dtype=dt)
    rec = []
    for _ in range(3):
        y = model(pitch, loud)
        loss = 0
        for n_fft in (64, 32):
            s_y = lib.stft(y, n_fft, n_fft // 4, window=lib.hann_window(n_fft, dtype=y.dtype),
                           center=True, normalized=True, return_complex=True).abs()
            s_t = lib.stft(target, n_fft, n_fft // 4, window=lib.hann_window(n_fft, dtype=y.dtype),
                           center=True, normalized=True, return_complex=True).abs()
            loss = loss + (s_t - s_y).abs().mean()
            loss = loss + (lib.log(s_t + 1e-7) - lib.log(s_y + 1e-7)).abs().mean()
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    return rec, state(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ddsp_harmonic_plus_noise_matches_torch(dtype):
    both(ddsp_script, ddsp_build, dtype)


# --- precision notes found by the ports above -----------------------------------------------------
@pytest.mark.parametrize("op", ["cumsum", "cumprod", "logcumsumexp"])
def test_float32_running_scans_accumulate_in_double(op):
    """A float32 running sum (an oscillator's phase, ``cumsum(2 pi f / sr)``) accumulates in
    double and is rounded once, as PyTorch's CPU kernels: the same bits, where a float32
    accumulator drifts by many ulps over a few thousand samples."""
    r = np.random.default_rng(17)
    x = r.uniform(0.999, 1.001, (2, 3000)) if op == "cumprod" else r.uniform(0.1, 0.7, (2, 3000))
    x = x.astype(np.float32)
    t = torch.tensor(x, requires_grad=True)
    n = ng.tensor(x, requires_grad=True)
    yt, yn = getattr(t, op)(1), getattr(n, op)(1)
    assert yn.dtype == ng.float32
    np.testing.assert_array_equal(yn.numpy(), yt.detach().numpy())
    g = r.standard_normal(x.shape).astype(np.float32)
    yt.backward(torch.tensor(g))
    yn.backward(ng.tensor(g))
    exact = np.cumsum(g.astype(np.float64)[:, ::-1], 1)[:, ::-1]
    if op == "cumsum":  # the gradient, a reversed running sum, in double too
        np.testing.assert_allclose(n.grad.numpy(), exact, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(n.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_float32_windows_are_the_exact_window_rounded():
    """A documented choice: float32 windows are the float64 formula rounded once, so they may
    differ from PyTorch's (computed in float32 arithmetic, where 0.5 - 0.5 cos cancels near the
    ends) by a few 1e-8; a program that builds a
    float32 window and casts it to float64 differs from PyTorch's at the 1e-7 level."""
    for n in (16, 400, 1024):
        got = ng.hann_window(n).numpy()
        exact = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
        np.testing.assert_array_equal(got, exact.astype(np.float32))
        ref = torch.hann_window(n).numpy()
        assert np.abs(got - ref).max() <= 4 * np.finfo(np.float32).eps  # 0.5 - 0.5 cos cancels


def test_stft_window_of_another_precision_raises():
    """A documented choice (nodegrad never upcasts floats silently): a float64 signal with a
    default (float32) window raises a DTypeError naming stft, where PyTorch promotes; the usual
    ``window.to(x)`` makes the two agree."""
    x = np.random.default_rng(18).standard_normal(200)
    with pytest.raises(ng.DTypeError, match="stft"):
        ng.stft(ng.tensor(x), 64, window=ng.hann_window(64), return_complex=True)
    got = ng.stft(ng.tensor(x), 64, window=ng.hann_window(64, dtype=ng.float64),
                  return_complex=True)
    ref = torch.stft(torch.tensor(x), 64, window=torch.hann_window(64, dtype=torch.float64),
                     return_complex=True)
    assert got.dtype == ng.complex128
    assert_same(ng.view_as_real(got), torch.view_as_real(ref))


# --- 11. SincNet: learnable band-pass filters built from their cut-off frequencies ----------------
def sincnet_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class SincConv_fast(nn.Module):
        @staticmethod
        def to_mel(hz):
            return 2595 * np.log10(1 + hz / 700)

        @staticmethod
        def to_hz(mel):
            return 700 * (10 ** (mel / 2595) - 1)

        def __init__(self, out_channels, kernel_size, sample_rate=16000, stride=1, padding=0,
                     min_low_hz=50, min_band_hz=50):
            super().__init__()
            self.out_channels, self.kernel_size = out_channels, kernel_size
            self.stride, self.padding = stride, padding
            self.sample_rate, self.min_low_hz, self.min_band_hz = sample_rate, min_low_hz, \
                min_band_hz
            low_hz, high_hz = 30, self.sample_rate / 2 - (self.min_low_hz + self.min_band_hz)
            mel = np.linspace(self.to_mel(low_hz), self.to_mel(high_hz), self.out_channels + 1)
            hz = self.to_hz(mel)
            self.low_hz_ = nn.Parameter(lib.Tensor(hz[:-1]).view(-1, 1))
            self.band_hz_ = nn.Parameter(lib.Tensor(np.diff(hz)).view(-1, 1))
            n_lin = lib.linspace(0, (self.kernel_size / 2) - 1,
                                 steps=int(self.kernel_size / 2))
            self.window_ = 0.54 - 0.46 * lib.cos(2 * math.pi * n_lin / self.kernel_size)
            n = (self.kernel_size - 1) / 2.0
            self.n_ = 2 * math.pi * lib.arange(-n, 0).view(1, -1) / self.sample_rate

        def forward(self, waveforms):
            self.n_ = self.n_.to(waveforms)
            self.window_ = self.window_.to(waveforms)
            low = self.min_low_hz + lib.abs(self.low_hz_)
            high = lib.clamp(low + self.min_band_hz + lib.abs(self.band_hz_), self.min_low_hz,
                             self.sample_rate / 2)
            band = (high - low)[:, 0]
            f_times_t_low = lib.matmul(low, self.n_)
            f_times_t_high = lib.matmul(high, self.n_)
            band_pass_left = ((lib.sin(f_times_t_high) - lib.sin(f_times_t_low))
                              / (self.n_ / 2)) * self.window_
            band_pass_center = 2 * band.view(-1, 1)
            band_pass_right = lib.flip(band_pass_left, dims=[1])
            band_pass = lib.cat([band_pass_left, band_pass_center, band_pass_right], dim=1)
            band_pass = band_pass / (2 * band[:, None])
            self.filters = band_pass.view(self.out_channels, 1, self.kernel_size)
            return F.conv1d(waveforms, self.filters, stride=self.stride, padding=self.padding,
                            dilation=1, bias=None, groups=1)

    class SincNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.sinc = SincConv_fast(8, 31, sample_rate=SR, stride=2)
            self.ln0 = nn.LayerNorm(400)
            self.pool = nn.MaxPool1d(3)
            self.ln = nn.LayerNorm([8, 61])
            self.conv = nn.Conv1d(8, 8, 5)
            self.act = nn.LeakyReLU(0.2)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = self.ln0(x).unsqueeze(1)
            h = self.act(self.ln(self.pool(lib.abs(self.sinc(x)))))
            h = self.act(self.conv(h))
            return self.head(h.amax(dim=-1))

    return SincNet()


def sincnet_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    F = lib.nn.functional
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.95, eps=1e-8)
    xs, ys = signals(8, 400, seed=19)
    x, y = lib.tensor(xs, dtype=dt), lib.tensor(ys)
    rec = []
    for _ in range(3):
        loss = F.nll_loss(F.log_softmax(model(x), dim=1), y)
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    return rec, state(model), model.sinc.filters


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sincnet_band_pass_filters_match_torch(dtype):
    """SincNet builds its window and time axis in the default dtype and casts them later: a
    float64 run sets the default dtype, since float32 cos and sin round differently (an ulp)
    in NumPy and PyTorch."""
    before = (torch.get_default_dtype(), ng.get_default_dtype())
    torch.set_default_dtype(getattr(torch, dtype))
    ng.set_default_dtype(getattr(ng, dtype))
    try:
        both(sincnet_script, sincnet_build, dtype)
    finally:
        torch.set_default_dtype(before[0])
        ng.set_default_dtype(before[1])


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_linspace_has_pytorch_bits(dtype):
    """Mel filterbanks and sinc kernels start from ``linspace``: its values are PyTorch's bit for
    bit (each one fused multiply-add, rounded once), not just to an ulp."""
    for a, b, n in [(-3.3, 7.1, 101), (0.1, 0.7, 1000), (0, 14.5, 15), (-1e3, 3.7e3, 5001),
                    (hz_to_mel(0.0), hz_to_mel(4000.0), 42)]:
        got = ng.linspace(a, b, n, dtype=getattr(ng, dtype)).numpy()
        np.testing.assert_array_equal(got, torch.linspace(a, b, n,
                                                          dtype=getattr(torch, dtype)).numpy())


# --- 12. DeepSpeech2 (mini): masked 2-d convolutions, sequence-wise batch norm, bi-GRUs --------
def ds2_build(lib):
    nn = lib.nn

    class MaskConv(nn.Module):
        """Zeroes each sequence's padding after every layer (the masks follow the lengths)."""

        def __init__(self, seq_module):
            super().__init__()
            self.seq_module = seq_module

        def forward(self, x, lengths):
            for module in self.seq_module:
                x = module(x)
                mask = lib.zeros(x.size(), dtype=lib.bool)
                for i, length in enumerate(lengths):
                    length = length.item()
                    if (mask[i].size(2) - length) > 0:
                        mask[i].narrow(2, length, mask[i].size(2) - length).fill_(1)
                x = x.masked_fill(mask, 0)
            return x, lengths

    class SequenceWise(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            t, n = x.size(0), x.size(1)
            x = x.view(t * n, -1)
            return self.module(x).view(t, n, -1)

    class BatchRNN(nn.Module):
        def __init__(self, input_size, hidden_size, batch_norm=True):
            super().__init__()
            self.batch_norm = SequenceWise(nn.BatchNorm1d(input_size)) if batch_norm else None
            self.rnn = nn.GRU(input_size=input_size, hidden_size=hidden_size,
                              bidirectional=True, bias=True)

        def forward(self, x, output_lengths, h=None):
            if self.batch_norm is not None:
                x = self.batch_norm(x)
            x = nn.utils.rnn.pack_padded_sequence(x, output_lengths, enforce_sorted=False)
            x, h = self.rnn(x, h)
            x, _ = nn.utils.rnn.pad_packed_sequence(x)
            x = x.view(x.size(0), x.size(1), 2, -1).sum(2).view(x.size(0), x.size(1), -1)
            return x, h

    class DeepSpeech(nn.Module):
        def __init__(self, n_freq=17, hidden=8, classes=5):
            super().__init__()
            self.conv = MaskConv(nn.Sequential(
                nn.Conv2d(1, 4, kernel_size=(5, 3), stride=(2, 1), padding=(2, 1)),
                nn.BatchNorm2d(4),
                nn.Hardtanh(0, 20, inplace=True),
                nn.Conv2d(4, 4, kernel_size=(3, 3), stride=(2, 1), padding=(1, 1)),
                nn.BatchNorm2d(4),
                nn.Hardtanh(0, 20, inplace=True)))
            rnn_input = 4 * ((n_freq + 1) // 2 + 1) // 2
            self.rnns = nn.Sequential(BatchRNN(rnn_input, hidden, batch_norm=False),
                                      BatchRNN(hidden, hidden))
            self.fc = nn.Sequential(SequenceWise(nn.Sequential(nn.BatchNorm1d(hidden),
                                                               nn.Linear(hidden, classes,
                                                                         bias=False))))

        def get_seq_lens(self, input_length):
            seq_len = input_length
            for m in self.conv.modules():
                if type(m) is nn.modules.conv.Conv2d:
                    seq_len = ((seq_len + 2 * m.padding[1] - m.dilation[1] * (m.kernel_size[1] - 1)
                                - 1) // m.stride[1] + 1)
            return seq_len.int()

        def forward(self, x, lengths):                                 # (N, 1, F, T)
            lengths = self.get_seq_lens(lengths)
            x, _ = self.conv(x, lengths)
            sizes = x.size()
            x = x.view(sizes[0], sizes[1] * sizes[2], sizes[3])        # (N, C*F, T)
            x = x.transpose(1, 2).transpose(0, 1).contiguous()         # (T, N, H)
            for rnn in self.rnns:
                x, _ = rnn(x, lengths)
            x = self.fc(x)
            return x.transpose(0, 1).log_softmax(dim=-1), lengths     # (N, T, C)

    return DeepSpeech()


def ds2_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9, nesterov=True,
                        weight_decay=1e-5)
    ctc = lib.nn.CTCLoss(reduction="sum", zero_infinity=True)
    waves, labels = tone_utterances(n=4, seed=20)
    window = lib.hann_window(32, dtype=dt)
    specs = [lib.stft(lib.tensor(w, dtype=dt), 32, 16, window=window, return_complex=True)
             for w in waves]
    specs = [lib.log1p(s.abs()) for s in specs]                       # (F, T) each
    lengths = lib.tensor([s.shape[1] for s in specs], dtype=lib.int32)
    x = lib.nn.utils.rnn.pad_sequence([s.t() for s in specs], batch_first=True)
    x = x.transpose(1, 2).unsqueeze(1)                                 # (N, 1, F, T)
    # deepspeech.pytorch writes ``spect.std()``: a bare ``std()`` is NumPy's population std in
    # nodegrad (a documented choice, tested below), so the port names PyTorch's correction
    mean, std = x.mean(), x.std(unbiased=True)
    x = (x - mean) / std
    targets = lib.cat([lib.tensor(y) for y in labels]).int()
    tgt_lens = lib.tensor([len(y) for y in labels], dtype=lib.int32)
    rec = []
    for _ in range(3):
        out, out_lens = model(x, lengths)
        loss = ctc(out.transpose(0, 1), targets, out_lens, tgt_lens) / x.size(0)
        opt.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 400)
        rec.append({"loss": loss, "grads": grads(model)})
        opt.step()
    model.eval()
    with lib.no_grad():
        out, out_lens = model(x, lengths)
    return rec, state(model), out, greedy_decode(lib, out.transpose(0, 1), out_lens)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_deepspeech2_ctc_matches_torch(dtype):
    both(ds2_script, ds2_build, dtype)


def test_bare_std_method_is_torch_and_numpy_forms_are_numpy():
    """``x.std()`` / ``x.var()`` are PyTorch's methods (correction=1), as are PyTorch's
    keywords, ``dim=None`` included; the functions ``ng.std``/``ng.var`` with no PyTorch
    keyword are NumPy's (ddof=0)."""
    x = np.random.default_rng(21).standard_normal((4, 1, 17, 9))
    t, n = torch.tensor(x), ng.tensor(x)
    assert n.std().item() == pytest.approx(t.std().item(), rel=1e-12)
    assert n.var().item() == pytest.approx(t.var().item(), rel=1e-12)
    assert ng.std(n).item() == pytest.approx(x.std(), rel=1e-12)
    assert ng.var(n).item() == pytest.approx(x.var(), rel=1e-12)
    for kw in [dict(dim=None), dict(unbiased=True), dict(dim=(1, 2)), dict(dim=None,
                                                                          keepdim=True)]:
        assert_same(n.std(**kw), t.std(**kw), 1e-12, str(kw))
        assert_same(n.var(**kw), t.var(**kw), 1e-12, str(kw))
        assert_same(ng.std(n, **kw), torch.std(t, **kw), 1e-12, str(kw))


# --- 13. wav2vec 2.0 (mini): conv feature encoder, weight-normed positional conv, CTC head -------
def w2v_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class ConvLayerBlock(nn.Module):
        def __init__(self, cin, cout, kernel, stride, layer_norm):
            super().__init__()
            self.conv = nn.Conv1d(cin, cout, kernel, stride=stride, bias=False)
            self.layer_norm = layer_norm

        def forward(self, x, length):
            x = self.conv(x)
            if self.layer_norm is not None:
                x = self.layer_norm(x)
            x = F.gelu(x)
            length = lib.div(length - self.conv.kernel_size[0], self.conv.stride[0],
                             rounding_mode="floor") + 1
            return x, lib.max(length, lib.zeros_like(length))

    class SamePad(nn.Module):
        def __init__(self, kernel_size):
            super().__init__()
            self.remove = 1 if kernel_size % 2 == 0 else 0

        def forward(self, x):
            return x[:, :, :-self.remove] if self.remove > 0 else x

    class Wav2Vec2(nn.Module):
        def __init__(self, ch=8, embed=12, classes=5):
            super().__init__()
            self.feature = nn.ModuleList([
                ConvLayerBlock(1, ch, 10, 5, nn.GroupNorm(ch, ch, affine=True)),
                ConvLayerBlock(ch, ch, 3, 2, None),
                ConvLayerBlock(ch, ch, 2, 2, None)])
            self.layer_norm = nn.LayerNorm(ch)
            self.projection = nn.Linear(ch, embed)
            conv = nn.Conv1d(embed, embed, kernel_size=4, padding=2, groups=2)
            self.pos_conv = nn.utils.weight_norm(conv, name="weight", dim=2)
            self.pos_pad = SamePad(4)
            self.encoder = nn.TransformerEncoderLayer(embed, 2, dim_feedforward=16, dropout=0.0,
                                                      activation="gelu", batch_first=True,
                                                      norm_first=True)
            self.aux = nn.Linear(embed, classes)

        def forward(self, wav, lengths):
            x = wav.unsqueeze(1)
            for layer in self.feature:
                x, lengths = layer(x, lengths)
            x = self.projection(self.layer_norm(x.transpose(1, 2)))       # (B, T, E)
            pad = lib.arange(x.shape[1]).expand(x.shape[0], -1) >= lengths[:, None]
            x = x.masked_fill(pad[..., None], 0.0)
            pos = F.gelu(self.pos_pad(self.pos_conv(x.transpose(1, 2)))).transpose(1, 2)
            x = self.encoder(x + pos, src_key_padding_mask=pad)
            return F.log_softmax(self.aux(x), dim=-1), lengths

    return Wav2Vec2()


def w2v_script(lib, build, init, dtype):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    # SGD, not Adam: the key projection's bias has a zero gradient (softmax ignores a shift),
    # and Adam would blow its float32 rounding noise up to full steps
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = lib.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, pct_start=0.3)
    waves, labels = tone_utterances(n=4, seed=22)
    lengths = lib.tensor([w.size for w in waves])
    wav = lib.nn.utils.rnn.pad_sequence([lib.tensor(w, dtype=dt) for w in waves],
                                        batch_first=True)
    wav = (wav - wav.mean(-1, keepdim=True)) / lib.sqrt(wav.var(-1, keepdim=True) + 1e-7)
    targets = lib.nn.utils.rnn.pad_sequence([lib.tensor(y) for y in labels], batch_first=True,
                                            padding_value=-100)
    tgt_lens = lib.tensor([len(y) for y in labels])
    rec = []
    for _ in range(3):
        log_probs, out_lens = model(wav, lengths)
        loss = lib.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lens,
                                          tgt_lens, blank=0, reduction="mean",
                                          zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss, "lens": out_lens, "grads": grads(model)})
        opt.step()
        sched.step()
    return rec, state(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wav2vec2_style_ctc_matches_torch(dtype):
    both(w2v_script, w2v_build, dtype)


def test_conv_and_pool_layers_store_settings_as_pytorch():
    """Length arithmetic reads ``conv.stride[0]``, ``m.padding[1]``: convolutions keep one entry
    per axis (a padding string as it is), 1-d average pools 1-tuples, pools their default
    stride (the kernel size)."""
    def settings(lib):
        nn = lib.nn
        layers = [nn.Conv1d(2, 3, 10, stride=5), nn.Conv2d(2, 3, 3, padding=(1, 2), dilation=2),
                  nn.Conv1d(2, 3, 4, padding="same"), nn.ConvTranspose1d(2, 3, 4, stride=2,
                                                                        output_padding=1),
                  nn.ConvTranspose2d(2, 3, 3), nn.MaxPool1d(3), nn.MaxPool2d((2, 3)),
                  nn.AvgPool1d(4, padding=1), nn.AvgPool2d(3, stride=2)]
        keys = ("kernel_size", "stride", "padding", "dilation", "output_padding")
        return [{k: getattr(m, k) for k in keys if hasattr(m, k)} for m in layers]

    assert settings(ng) == settings(torch)
