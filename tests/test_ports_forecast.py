"""PyTorch time-series forecasting and tabular programs, ported by changing only the imports.

Each program (N-BEATS, DeepAR, quantile loss, Temporal Fusion Transformer pieces, LSTNet, a
seq2seq forecaster, a tabular model) is written once against a library ``lib`` (``torch`` or
``nodegrad``). Both start from torch's initial weights and see the same generated series (trend
+ seasonality + noise); the losses, gradients and parameters must agree at every step.
"""

import math

import numpy as np
import pytest

import nodegrad as ng

from _ports import _one_torch_thread, arrays, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10
TOL32 = 2e-5
_DTYPE = {"name": "float64"}  # the dtype ``_t`` makes while ``_run`` trains


def _series(n: int, length: int, seed: int = 0) -> np.ndarray:
    """``n`` series of ``length`` steps: linear trend + two seasonal terms + noise."""
    r = np.random.default_rng(seed)
    t = np.arange(length)[None, :]
    slope = r.uniform(-0.02, 0.05, (n, 1))
    phase = r.uniform(0, 2 * np.pi, (n, 1))
    y = (1.0 + slope * t + np.sin(2 * np.pi * t / 12 + phase)
         + 0.3 * np.cos(2 * np.pi * t / 4) + 0.1 * r.standard_normal((n, length)))
    return y


def _copy_init(model, init) -> None:
    """Load torch's initial weights; the state dicts must agree key for key."""
    sd = arrays(init.state_dict())
    mine = model.state_dict()
    assert list(mine) == list(sd)
    assert [tuple(v.shape) for v in mine.values()] == [v.shape for v in sd.values()]
    model.load_state_dict({k: ng.tensor(v) for k, v in sd.items()})


def _run(build, step, steps: int = 4, opt=lambda lib, p: lib.optim.Adam(p, lr=1e-2),
         backward: bool = True, dtype: str = "float64"):
    """Train the model ``build(lib)`` for ``steps`` steps of ``step(lib, model, i) -> loss`` in
    both libraries (``backward=False``: ``step`` runs the backward pass itself); return the
    per-step records (loss, gradients, parameters) of each."""
    torch.manual_seed(0)
    _DTYPE["name"] = dtype
    out = []
    init = None
    for lib in (torch, ng):
        model = build(lib).to(getattr(lib, dtype))
        if lib is torch:
            init = model
            init_sd = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            init.load_state_dict(init_sd)
            _copy_init(model, init)
        o = opt(lib, model.parameters())
        rec = []
        for i in range(steps):
            o.zero_grad()
            loss = step(lib, model, i)
            if backward:
                loss.backward()
            grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
            rec.append({"loss": loss, "grads": arrays(grads)})
            o.step()
        rec.append(arrays(model.state_dict()))
        out.append(rec)
    _DTYPE["name"] = "float64"
    return out


def _same(build, step, tol=TOL, **kw):
    """Train in both libraries (see ``_run``) and require the same records to ``tol``."""
    t, n = _run(build, step, **kw)
    assert_same(t, n, tol)


def _t(lib, x, dtype=None):
    return lib.tensor(np.asarray(x), dtype=getattr(lib, dtype or _DTYPE["name"]))


# --- 1. N-BEATS: generic, trend and seasonality stacks --------------------------------------
BACK, FORE = 12, 4


def _nbeats_build(lib):
    nn = lib.nn

    class Block(nn.Module):
        def __init__(self, theta_b, theta_f, basis, units=16, layers=3):
            super().__init__()
            mods = [nn.Linear(BACK, units), nn.ReLU()]
            for _ in range(layers - 1):
                mods += [nn.Linear(units, units), nn.ReLU()]
            self.fc = nn.Sequential(*mods)
            self.theta_b_fc = nn.Linear(units, theta_b, bias=False)
            self.theta_f_fc = nn.Linear(units, theta_f, bias=False)
            self.basis = basis

        def forward(self, x):
            h = self.fc(x)
            return self.basis(self.theta_b_fc(h), self.theta_f_fc(h))

    class GenericBasis(nn.Module):
        def forward(self, tb, tf):
            return tb[:, :BACK], tf[:, -FORE:]

    def linspace(lib, horizon):
        # N-BEATS' time axes: backcast on [0, 1), forecast on [1, 1 + FORE / BACK)
        # built in float64 and cast with the model: float32 cos/sin differ by an ulp across libms
        lin = lib.linspace(-BACK, FORE, BACK + FORE, dtype=lib.float64) / BACK
        return lin[:BACK].abs() if horizon == "b" else lin[BACK:]

    class TrendBasis(nn.Module):
        def __init__(self, degree=3):
            super().__init__()
            tb, tf = linspace(lib, "b"), linspace(lib, "f")
            self.register_buffer("T_b", lib.stack([tb ** i for i in range(degree)]),
                                 persistent=False)
            self.register_buffer("T_f", lib.stack([tf ** i for i in range(degree)]),
                                 persistent=False)

        def forward(self, tb, tf):
            return tb.mm(self.T_b), lib.einsum("bp,pt->bt", tf, self.T_f)

    class SeasonalityBasis(nn.Module):
        def __init__(self, harmonics=2):
            super().__init__()
            freq = lib.arange(1, harmonics + 1, dtype=lib.float64)
            for name, t in (("b", linspace(lib, "b")), ("f", linspace(lib, "f"))):
                grid = 2 * math.pi * freq[:, None] * t[None, :]
                self.register_buffer(f"S_{name}", lib.cat([lib.cos(grid), lib.sin(grid)], dim=0),
                                     persistent=False)

        def forward(self, tb, tf):
            return tb @ self.S_b, tf @ self.S_f

    class NBeats(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([
                Block(BACK + FORE, BACK + FORE, GenericBasis()),
                Block(3, 3, TrendBasis()),
                Block(4, 4, SeasonalityBasis()),
                Block(4, 4, SeasonalityBasis()),
            ])

        def forward(self, x, mask):
            residuals = x.flip(dims=(1,))
            mask = mask.flip(dims=(1,))
            forecast = x[:, -1:]
            for block in self.blocks:
                backcast, block_forecast = block(residuals)
                residuals = (residuals - backcast) * mask
                forecast = forecast + block_forecast
            return forecast

    return NBeats()


def _smape(lib, forecast, target):
    # the sMAPE loss of the N-BEATS code: 0/0 terms count as zero
    num = (forecast - target).abs()
    den = forecast.detach().abs() + target.abs()
    ratio = num / den
    ratio = lib.where(lib.isnan(ratio) | lib.isinf(ratio), lib.zeros_like(ratio), ratio)
    return 200 * ratio.mean()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nbeats_generic_trend_seasonality(dtype):
    y = _series(8, 40)
    r = np.random.default_rng(1)
    starts = r.integers(0, 40 - BACK - FORE, size=(4, 8))
    mask = np.ones((8, BACK))
    mask[:2, :3] = 0.0  # short histories padded at the front

    def step(lib, model, i):
        idx = starts[i]
        x = np.stack([y[j, s:s + BACK] for j, s in enumerate(idx)])
        tgt = np.stack([y[j, s + BACK:s + BACK + FORE] for j, s in enumerate(idx)])
        x = x * mask
        f = model(_t(lib, x), _t(lib, mask))
        loss = _smape(lib, f, _t(lib, tgt)) + lib.nn.functional.mse_loss(f, _t(lib, tgt))
        return loss

    _same(_nbeats_build, step, dtype=dtype, tol=TOL if dtype == "float64" else TOL32)


# --- 2. DeepAR: LSTM over lagged targets and covariates, three likelihood heads --------------
def _deepar_build(head):
    def build(lib):
        nn, F = lib.nn, lib.nn.functional
        D = lib.distributions

        class DeepAR(nn.Module):
            def __init__(self, n_series=6, emb=3, hidden=10):
                super().__init__()
                self.embed = nn.Embedding(n_series, emb)
                self.lstm = nn.LSTM(1 + 2 + emb, hidden, num_layers=2, batch_first=True)
                self.mu = nn.Linear(hidden, 1)
                self.presigma = nn.Linear(hidden, 1)
                if head == "studentt":
                    self.df = nn.Linear(hidden, 1)

            def distribution(self, h):
                a, b = self.mu(h).squeeze(-1), self.presigma(h).squeeze(-1)
                if head == "normal":
                    return D.Normal(a, F.softplus(b) + 1e-6)
                if head == "studentt":
                    df = 2.0 + F.softplus(self.df(h).squeeze(-1))
                    return D.StudentT(df, a, F.softplus(b) + 1e-6)
                return D.NegativeBinomial(total_count=F.softplus(b) + 1e-3, logits=a)

            def forward(self, lagged, covariates, idx, state=None):
                e = self.embed(idx)[:, None, :].expand(-1, lagged.shape[1], -1)
                x = lib.cat([lagged.unsqueeze(-1), covariates, e], dim=-1)
                h, state = self.lstm(x, state)
                return self.distribution(h), state

        return DeepAR()
    return build


def _deepar_data(count: bool):
    y = _series(6, 30, seed=2)
    if count:
        y = np.round(np.abs(y) * 3)
    t = np.arange(30)
    cov = np.stack([np.sin(2 * np.pi * t / 12), t / 30.0], axis=-1)
    mask = np.ones((6, 29))
    mask[1, :5] = 0.0  # series 1 starts late
    mask[4, 20:] = 0.0  # series 4 has missing observations
    return y, np.broadcast_to(cov, (6, 30, 2)).copy(), mask


@pytest.mark.parametrize("head", ["normal", "studentt", "negbin"])
def test_deepar_masked_nll(head):
    y, cov, mask = _deepar_data(head == "negbin")
    scale = 1.0 + np.abs(y).mean(axis=1, keepdims=True)

    def step(lib, model, i):
        rows = np.array([[0, 1, 2, 3], [2, 3, 4, 5], [0, 4, 5, 1]][i % 3])
        lagged = y[rows, :-1] / scale[rows] if head != "negbin" else y[rows, :-1]
        target = _t(lib, y[rows, 1:])
        m = _t(lib, mask[rows])
        dist, _ = model(_t(lib, lagged), _t(lib, cov[rows, 1:]), lib.tensor(rows))
        if head != "negbin":
            target = target / _t(lib, scale[rows])
        nll = -dist.log_prob(target)
        return (nll * m).sum() / m.sum()

    _same(_deepar_build(head), step, steps=3)


def test_deepar_ancestral_sampling_seeded():
    """Forecast paths drawn step by step with ``rsample`` under a seeded generator are
    reproducible, keep gradients to the parameters, and follow the model's mean."""
    y, cov, _ = _deepar_data(False)
    model = _deepar_build("normal")(ng).double()
    idx = ng.tensor(np.arange(6))

    def paths(seed):
        ng.manual_seed(seed)
        dist, state = model(_t(ng, y[:, :20]), _t(ng, cov[:, 1:21]), idx)
        last = dist.rsample()[:, -1:]
        out = [last]
        for k in range(21, 25):
            dist, state = model(last, _t(ng, cov[:, k:k + 1]), idx, state)
            last = dist.rsample()
            out.append(last)
        return ng.cat(out, dim=1)

    a, b = paths(3), paths(3)
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    assert not np.allclose(paths(4).detach().numpy(), a.detach().numpy())
    a.sum().backward()
    assert model.mu.weight.grad is not None and np.isfinite(model.mu.weight.grad.numpy()).all()
    with ng.no_grad():
        dist, _ = model(_t(ng, y[:, :20]), _t(ng, cov[:, 1:21]), idx)
        draws = ng.stack([dist.sample() for _ in range(400)])
    np.testing.assert_allclose(draws.mean(0).numpy(), dist.mean.numpy(), atol=0.35)


# --- 3. Temporal Fusion Transformer pieces with the quantile (pinball) loss ------------------
QUANTILES = [0.1, 0.5, 0.9]


def _quantile_loss(lib, pred, target):
    losses = []
    for i, q in enumerate(QUANTILES):
        e = target - pred[..., i]
        losses.append(lib.max((q - 1) * e, q * e).unsqueeze(-1))
    return lib.mean(lib.sum(lib.cat(losses, dim=-1), dim=-1))


def _tft_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class GatedLinearUnit(nn.Module):
        def __init__(self, d_in, d_out, dropout=0.0):
            super().__init__()
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(d_in, d_out * 2)

        def forward(self, x):
            return F.glu(self.fc(self.dropout(x)), dim=-1)

    class GatedResidualNetwork(nn.Module):
        def __init__(self, d_in, d_hidden, d_out, d_context=None):
            super().__init__()
            self.skip = nn.Linear(d_in, d_out) if d_in != d_out else None
            self.fc1 = nn.Linear(d_in, d_hidden)
            self.context = nn.Linear(d_context, d_hidden, bias=False) if d_context else None
            self.elu = nn.ELU()
            self.fc2 = nn.Linear(d_hidden, d_hidden)
            self.gate = GatedLinearUnit(d_hidden, d_out)
            self.norm = nn.LayerNorm(d_out)

        def forward(self, x, context=None):
            residual = self.skip(x) if self.skip is not None else x
            h = self.fc1(x)
            if context is not None:
                h = h + self.context(context).unsqueeze(-2)
            h = self.fc2(self.elu(h))
            return self.norm(self.gate(h) + residual)

    class VariableSelection(nn.Module):
        def __init__(self, n_vars, d_model, d_context):
            super().__init__()
            self.prescalers = nn.ModuleList([nn.Linear(1, d_model) for _ in range(n_vars)])
            self.flat = GatedResidualNetwork(n_vars * d_model, d_model, n_vars, d_context)
            self.var_grns = nn.ModuleList(
                [GatedResidualNetwork(d_model, d_model, d_model) for _ in range(n_vars)])

        def forward(self, x, context):
            embs = [pre(x[..., i:i + 1]) for i, pre in enumerate(self.prescalers)]
            weights = F.softmax(self.flat(lib.cat(embs, dim=-1), context), dim=-1)
            processed = lib.stack([g(e) for g, e in zip(self.var_grns, embs)], dim=-1)
            return (processed * weights.unsqueeze(-2)).sum(dim=-1), weights

    class InterpretableMultiHeadAttention(nn.Module):
        def __init__(self, d_model, n_head):
            super().__init__()
            self.n_head, self.d_k = n_head, d_model // n_head
            self.q = nn.ModuleList([nn.Linear(d_model, self.d_k) for _ in range(n_head)])
            self.k = nn.ModuleList([nn.Linear(d_model, self.d_k) for _ in range(n_head)])
            self.v = nn.Linear(d_model, self.d_k)  # value weights shared across heads
            self.out = nn.Linear(self.d_k, d_model)

        def forward(self, x, mask):
            v = self.v(x)
            heads, attns = [], []
            for q, k in zip(self.q, self.k):
                scores = lib.bmm(q(x), k(x).permute(0, 2, 1)) / math.sqrt(self.d_k)
                scores = scores.masked_fill(mask, -1e9)
                attn = F.softmax(scores, dim=-1)
                heads.append(lib.bmm(attn, v))
                attns.append(attn)
            head = lib.stack(heads, dim=2).mean(dim=2)
            return self.out(head), lib.stack(attns, dim=2).mean(dim=2)

    class TFT(nn.Module):
        def __init__(self, n_vars=3, d_model=8, n_static=2):
            super().__init__()
            self.static = GatedResidualNetwork(n_static, d_model, d_model)
            self.select = VariableSelection(n_vars, d_model, d_model)
            self.lstm = nn.LSTM(d_model, d_model, batch_first=True)
            self.post_lstm = GatedLinearUnit(d_model, d_model)
            self.post_norm = nn.LayerNorm(d_model)
            self.attn = InterpretableMultiHeadAttention(d_model, n_head=2)
            self.post_attn = GatedResidualNetwork(d_model, d_model, d_model)
            self.head = nn.Linear(d_model, len(QUANTILES))

        def forward(self, x, static):
            c = self.static(static)
            sel, weights = self.select(x, c)
            h, _ = self.lstm(sel, (c.unsqueeze(0).contiguous(), lib.zeros_like(c).unsqueeze(0)))
            h = self.post_norm(self.post_lstm(h) + sel)
            T = x.shape[1]
            causal = lib.triu(lib.ones(T, T, dtype=lib.bool), diagonal=1)
            a, attn = self.attn(h, causal)
            return self.head(self.post_attn(a + h)), weights, attn

    return TFT()


def test_tft_quantile_loss_with_selection_weights():
    y = _series(5, 16, seed=3)
    r = np.random.default_rng(3)
    x = np.stack([y[:, :-1], np.sin(np.arange(15) / 2.0)[None].repeat(5, 0),
                  r.standard_normal((5, 15))], axis=-1)
    static = r.standard_normal((5, 2))
    seen = {}

    def step(lib, model, i):
        pred, weights, attn = model(_t(lib, x), _t(lib, static))
        seen.setdefault(lib.__name__, []).append(
            (arrays({"w": weights, "a": attn}), _quantile_loss(lib, pred, _t(lib, y[:, 1:]))))
        return _quantile_loss(lib, pred, _t(lib, y[:, 1:])) + 1e-2 * weights.pow(2).mean()

    _same(_tft_build, step, steps=3)
    assert_same([s[0] for s in seen["torch"]], [s[0] for s in seen["nodegrad"]], TOL)


def test_quantile_loss_ties_and_grad():
    """Where ``(q - 1) * e == q * e`` (e == 0) ``max`` splits the gradient evenly, as torch."""
    pred = np.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])
    tgt = np.array([[1.0, 1.0]])
    res = []
    for lib in (torch, ng):
        p = _t(lib, pred).requires_grad_()
        loss = _quantile_loss(lib, p, _t(lib, tgt))
        loss.backward()
        res.append([loss, p.grad])
    assert_same(res[0], res[1], TOL)


# --- 4. LSTNet: Conv2d over (time, variables), GRU, skip-GRU, autoregressive highway ---------
def _lstnet_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class LSTNet(nn.Module):
        def __init__(self, window=16, m=3, hid_c=6, hid_r=8, hid_s=4, ck=3, skip=4, hw=4):
            super().__init__()
            self.P, self.m, self.hidC, self.hidR, self.hidS = window, m, hid_c, hid_r, hid_s
            self.Ck, self.skip, self.hw = ck, skip, hw
            self.pt = (self.P - self.Ck) // self.skip
            self.conv1 = nn.Conv2d(1, self.hidC, kernel_size=(self.Ck, self.m))
            self.GRU1 = nn.GRU(self.hidC, self.hidR)
            self.dropout = nn.Dropout(p=0.0)
            self.GRUskip = nn.GRU(self.hidC, self.hidS)
            self.linear1 = nn.Linear(self.hidR + self.skip * self.hidS, self.m)
            self.highway = nn.Linear(self.hw, 1)

        def forward(self, x):
            batch_size = x.size(0)
            c = x.view(-1, 1, self.P, self.m)
            c = F.relu(self.conv1(c))
            c = self.dropout(c)
            c = c.squeeze(3)
            r = c.permute(2, 0, 1).contiguous()
            _, r = self.GRU1(r)
            r = self.dropout(r.squeeze(0))
            s = c[:, :, int(-self.pt * self.skip):].contiguous()
            s = s.view(batch_size, self.hidC, self.pt, self.skip)
            s = s.permute(2, 0, 3, 1).contiguous()
            s = s.view(self.pt, batch_size * self.skip, self.hidC)
            _, s = self.GRUskip(s)
            s = s.view(batch_size, self.skip * self.hidS)
            s = self.dropout(s)
            r = lib.cat((r, s), 1)
            res = self.linear1(r)
            z = x[:, -self.hw:, :]
            z = z.permute(0, 2, 1).contiguous().view(-1, self.hw)
            z = self.highway(z)
            z = z.view(-1, self.m)
            return lib.sigmoid(res + z)

    return LSTNet()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lstnet(dtype):
    y = _series(3, 60, seed=4).T  # (time, variables)
    y = (y - y.min(0)) / (y.max(0) - y.min(0))  # LSTNet normalises each series to [0, 1]
    starts = [[0, 7, 14, 21], [3, 10, 30, 40], [5, 11, 17, 41]]

    def step(lib, model, i):
        x = np.stack([y[s:s + 16] for s in starts[i]])
        tgt = np.stack([y[s + 16] for s in starts[i]])
        out = model(_t(lib, x))
        return lib.nn.L1Loss(reduction="sum")(out, _t(lib, tgt)) / 4

    _same(_lstnet_build, step, steps=3, opt=lambda lib, p: lib.optim.Adam(p, lr=1e-3),
          dtype=dtype, tol=TOL if dtype == "float64" else TOL32)


# --- 5. seq2seq forecaster with teacher forcing -------------------------------------------
def _seq2seq_build(lib):
    nn = lib.nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(2, 12, num_layers=2, batch_first=True, dropout=0.0)

        def forward(self, x):
            return self.rnn(x)[1]

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(1, 12)
            self.out = nn.Linear(12, 1)

        def forward(self, y_prev, state):
            h, c = self.cell(y_prev, state)
            return self.out(h), (h, c)

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = Encoder(), Decoder()

        def forward(self, x, target, teacher):
            hidden = self.encoder(x)
            state = (hidden[-1], lib.zeros_like(hidden[-1]))
            y_prev = x[:, -1, :1]
            outs = []
            for t in range(target.shape[1]):
                out, state = self.decoder(y_prev, state)
                outs.append(out)
                y_prev = target[:, t:t + 1] if teacher[t] else out
            return lib.cat(outs, dim=1)

    return Seq2Seq()


def test_seq2seq_teacher_forcing():
    y = _series(6, 24, seed=5)
    t = np.arange(24)
    feats = np.stack([y, np.broadcast_to(np.cos(2 * np.pi * t / 12), y.shape)], axis=-1)
    r = np.random.default_rng(5)
    teacher = r.random((4, 6)) < 0.5  # the same coin flips in both libraries

    def step(lib, model, i):
        x, tgt = _t(lib, feats[:, i:i + 12]), _t(lib, y[:, i + 12:i + 18])
        pred = model(x, tgt, teacher[i])
        loss = lib.nn.functional.smooth_l1_loss(pred, tgt, beta=0.5)
        loss.backward(retain_graph=False)
        lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        return loss

    _same(_seq2seq_build, step, opt=lambda lib, p: lib.optim.SGD(p, lr=0.1, momentum=0.9),
          backward=False)


# --- 6. tabular model: categorical embeddings + normalised continuous columns ----------------
CARDS = [(5, 3), (7, 4), (3, 2)]


def _tabular_build(lib):
    nn = lib.nn

    class TabularModel(nn.Module):
        def __init__(self, n_cont=4, layers=(16, 8), ps=(0.0, 0.0)):
            super().__init__()
            self.embeds = nn.ModuleList([nn.Embedding(ni, nf) for ni, nf in CARDS])
            self.emb_drop = nn.Dropout(0.0)
            self.bn_cont = nn.BatchNorm1d(n_cont)
            n_emb = sum(nf for _, nf in CARDS)
            sizes = [n_emb + n_cont, *layers]
            mods = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                mods += [nn.Linear(a, b, bias=False), nn.ReLU(inplace=True), nn.BatchNorm1d(b),
                         nn.Dropout(ps[i])]
            mods.append(nn.Linear(sizes[-1], 1))
            self.layers = nn.Sequential(*mods)

        def forward(self, x_cat, x_cont):
            x = [e(x_cat[:, i]) for i, e in enumerate(self.embeds)]
            x = self.emb_drop(lib.cat(x, 1))
            x = lib.cat([x, self.bn_cont(x_cont)], 1)
            return self.layers(x).squeeze(-1)

    return TabularModel()


def _tabular_data(n=64):
    r = np.random.default_rng(6)
    cats = np.stack([r.integers(0, c, n) for c, _ in CARDS], axis=1)
    cont = r.standard_normal((n, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 50.0, 1.0, -2.0]
    logit = cont[:, 0] + 0.1 * (cont[:, 1] - 50) + (cats[:, 0] == 2) - 1.5
    y = (r.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return cats, cont, y


def test_tabular_embeddings_batchnorm_pos_weight():
    cats, cont, y = _tabular_data()
    pos_weight = np.array([(1 - y).sum() / y.sum()])
    order = np.random.default_rng(7).permutation(64).reshape(4, 16)
    evals = {}

    def step(lib, model, i):
        F = lib.nn.functional
        rows = order[i]
        model.train()
        logits = model(lib.tensor(cats[rows]), _t(lib, cont[rows]))
        loss = F.binary_cross_entropy_with_logits(logits, _t(lib, y[rows]),
                                                  pos_weight=_t(lib, pos_weight))
        if i == 3:  # evaluation with the running statistics
            model.eval()
            with lib.no_grad():
                ev = lib.sigmoid(model(lib.tensor(cats), _t(lib, cont)))
            evals[lib.__name__] = arrays({"p": ev})
            model.train()
        return loss

    _same(_tabular_build, step, opt=lambda lib, p: lib.optim.AdamW(p, lr=1e-2, weight_decay=0.1))
    assert_same(evals["torch"], evals["nodegrad"], TOL)


# --- 7. TCN: dilated causal Conv1d with weight norm, chomp and residual 1x1 convs -----------
def _tcn_build(lib):
    nn = lib.nn
    weight_norm = nn.utils.weight_norm

    class Chomp1d(nn.Module):
        def __init__(self, chomp_size):
            super().__init__()
            self.chomp_size = chomp_size

        def forward(self, x):
            return x[:, :, :-self.chomp_size].contiguous()

    class TemporalBlock(nn.Module):
        def __init__(self, n_in, n_out, kernel_size, stride, dilation, padding, dropout=0.0):
            super().__init__()
            self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, kernel_size, stride=stride,
                                               padding=padding, dilation=dilation))
            self.chomp1 = Chomp1d(padding)
            self.relu1 = nn.ReLU()
            self.dropout1 = nn.Dropout(dropout)
            self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, kernel_size, stride=stride,
                                               padding=padding, dilation=dilation))
            self.chomp2 = Chomp1d(padding)
            self.relu2 = nn.ReLU()
            self.dropout2 = nn.Dropout(dropout)
            self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                     self.conv2, self.chomp2, self.relu2, self.dropout2)
            self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
            self.relu = nn.ReLU()

        def forward(self, x):
            out = self.net(x)
            res = x if self.downsample is None else self.downsample(x)
            return self.relu(out + res)

    class TCN(nn.Module):
        def __init__(self, n_in=2, channels=(6, 6), kernel_size=3):
            super().__init__()
            layers = []
            for i, c in enumerate(channels):
                d = 2 ** i
                layers += [TemporalBlock(n_in if i == 0 else channels[i - 1], c, kernel_size,
                                         stride=1, dilation=d, padding=(kernel_size - 1) * d)]
            self.network = nn.Sequential(*layers)
            self.linear = nn.Linear(channels[-1], 1)

        def forward(self, x):
            return self.linear(self.network(x.transpose(1, 2))[:, :, -1])

    return TCN()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tcn_weight_norm(dtype):
    y = _series(5, 40, seed=8)
    t = np.arange(40)
    x = np.stack([y, np.broadcast_to(np.sin(2 * np.pi * t / 12), y.shape)], axis=-1)

    def step(lib, model, i):
        inp, tgt = _t(lib, x[:, i:i + 20]), _t(lib, y[:, i + 20:i + 21])
        return lib.nn.functional.mse_loss(model(inp), tgt)

    _same(_tcn_build, step, dtype=dtype, tol=TOL if dtype == "float64" else TOL32)


# --- 8. Transformer encoder forecaster with a causal mask and padding mask -------------------
def _transformer_build(lib):
    nn = lib.nn

    class PositionalEncoding(nn.Module):
        def __init__(self, d_model, max_len=64):
            super().__init__()
            position = lib.arange(max_len).unsqueeze(1)
            div_term = lib.exp(lib.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
            pe = lib.zeros(max_len, 1, d_model)
            pe[:, 0, 0::2] = lib.sin(position * div_term)
            pe[:, 0, 1::2] = lib.cos(position * div_term)
            self.register_buffer("pe", pe)

        def forward(self, x):
            return x + self.pe[:x.size(0)]

    class TransformerForecaster(nn.Module):
        def __init__(self, d_model=8):
            super().__init__()
            self.inp = nn.Linear(1, d_model)
            self.pos = PositionalEncoding(d_model)
            layer = nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=16,
                                               dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.out = nn.Linear(d_model, 1)

        def forward(self, src, pad):
            T = src.size(0)
            mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=src.dtype)
            h = self.encoder(self.pos(self.inp(src)), mask=mask, src_key_padding_mask=pad)
            return self.out(h)

    return TransformerForecaster()


def test_transformer_encoder_forecaster():
    y = _series(4, 30, seed=9)
    pad = np.zeros((4, 12), dtype=bool)
    pad[2, -3:] = True

    def step(lib, model, i):
        src = _t(lib, y[:, i:i + 12].T[:, :, None])
        tgt = _t(lib, y[:, i + 1:i + 13].T[:, :, None])
        keep = _t(lib, ~pad.T[:, :, None] * 1.0)
        out = model(src, lib.tensor(pad))
        return ((out - tgt) ** 2 * keep).sum() / keep.sum()

    _same(_transformer_build, step, steps=3)


# --- 9. DeepAR as GluonTS writes it: lags, mean scaler, forget-gate bias, parallel samples ---
LAGS = [1, 2, 3, 12]


def _gluon_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class MeanScaler(nn.Module):
        def __init__(self, minimum_scale=1e-10):
            super().__init__()
            self.minimum_scale = minimum_scale

        def forward(self, data, weights):
            total = (data.abs() * weights).sum(dim=1, keepdim=True)
            count = weights.sum(dim=1, keepdim=True)
            scale = total / count.clamp(min=1.0)
            return data / scale.clamp(min=self.minimum_scale), scale.clamp(min=self.minimum_scale)

    class DeepARGluon(nn.Module):
        def __init__(self, hidden=8, ctx=14, pred=3):
            super().__init__()
            self.ctx, self.pred = ctx, pred
            self.rnn = nn.LSTM(len(LAGS) + 2, hidden, num_layers=2, batch_first=True)
            for name, p in self.rnn.named_parameters():
                if "bias" in name:  # forget-gate bias 1, as in the original paper's code
                    n = p.size(0)
                    p.data[n // 4:n // 2] = 1.0
            self.args_proj = nn.Linear(hidden, 2)
            self.scaler = MeanScaler()

        @staticmethod
        def lagged(seq, subseq_len):
            # GluonTS' get_lagged_subsequences: one slice per lag, stacked on the last dim
            T = seq.shape[1]
            vals = [seq[:, T - lag - subseq_len:T - lag] for lag in LAGS]
            return lib.stack(vals, dim=-1)

        def unroll(self, past, past_obs, time_feat, state=None):
            scaled, scale = self.scaler(past[:, -self.ctx:], past_obs[:, -self.ctx:])
            lags = self.lagged(past / scale, self.ctx)
            inp = lib.cat([lags, time_feat, scale.log().unsqueeze(1).expand(-1, self.ctx, 1)], -1)
            out, state = self.rnn(inp, state)
            return out, state, scale

        def distr(self, h, scale):
            loc, pre = self.args_proj(h).unbind(-1)
            return lib.distributions.Normal(loc * scale, F.softplus(pre) * scale)

        def greedy_paths(self, past, past_obs, time_feat, future_feat, num_parallel_samples=2):
            """Forecast paths driven by each step's mean (the sampling loop with the draw
            replaced by the mean, so both libraries follow one path)."""
            out, state, scale = self.unroll(past, past_obs, time_feat)
            rep = lambda t, d: t.repeat_interleave(repeats=num_parallel_samples, dim=d)  # noqa: E731
            seq, scale = rep(past, 0), rep(scale, 0)
            state = tuple(rep(s, 1) for s in state)
            step_out = rep(out[:, -1:], 0)
            paths = []
            for k in range(self.pred):
                y = self.distr(step_out, scale).mean
                paths.append(y)
                seq = lib.cat([seq, y], dim=1)
                lags = self.lagged(seq / scale, 1)
                feat = rep(future_feat[:, k:k + 1], 0)
                inp = lib.cat([lags, feat, scale.log().unsqueeze(1)], -1)
                step_out, state = self.rnn(inp, state)
            return lib.cat(paths, dim=1).reshape(-1, num_parallel_samples, self.pred)

    return DeepARGluon()


def test_deepar_gluon_style_lags_scaler_paths():
    y = np.abs(_series(4, 40, seed=10)) + 0.5
    t = np.arange(40)
    tf = np.broadcast_to(np.sin(2 * np.pi * t / 12)[None, :, None], (4, 40, 1)).copy()
    obs = np.ones((4, 40))
    obs[3, 25:28] = 0.0  # missing observations: out of the scale and the loss
    paths = {}

    def step(lib, model, i):
        s = 28 + i
        past, o = _t(lib, y[:, s - 26:s]), _t(lib, obs[:, s - 26:s])
        tgt, w = _t(lib, y[:, s - 13:s + 1]), _t(lib, obs[:, s - 13:s + 1])
        out, _, scale = model.unroll(past, o, _t(lib, tf[:, s - 13:s + 1]))
        nll = -model.distr(out, scale).log_prob(tgt)
        loss = lib.where(w != 0, nll * w, lib.zeros_like(nll)).sum() / w.sum().clamp(min=1.0)
        if i == 0:
            fut = _t(lib, tf[:, s + 1:s + 4])
            paths[lib.__name__] = model.greedy_paths(
                _t(lib, y[:, s - 25:s + 1]), _t(lib, obs[:, s - 25:s + 1]),
                _t(lib, tf[:, s - 13:s + 1]), fut)
        return loss

    _same(_gluon_build, step, steps=3)
    assert paths["nodegrad"].shape == (4, 2, 3)
    assert_same(paths["torch"], paths["nodegrad"], TOL)


def test_data_writes_reach_the_parameter():
    """``p.data[2:4] = 1.0`` and ``p.data[4:6].fill_(2.0)`` (PyTorch's ``.data``, a tensor of the
    parameter's memory outside the graph) change the parameter, as in PyTorch."""
    got = []
    for lib in (torch, ng):
        p = lib.nn.Parameter(lib.zeros(8))
        p.data[2:4] = 1.0
        p.data[4:6].fill_(2.0)
        assert p.requires_grad and p.is_leaf and not p.data.requires_grad
        got.append(p.detach().numpy().copy())
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_array_equal(got[1], [0, 0, 1, 1, 2, 2, 0, 0])


# --- 10. the tabular model under the optimisers forecasting and tabular code picks ------------
OPTIMISERS = {
    "adam_amsgrad": lambda lib, p: lib.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-2),
    "adagrad": lambda lib, p: lib.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=1e-3,
                                                initial_accumulator_value=0.1),
    "rmsprop": lambda lib, p: lib.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
    "nadam": lambda lib, p: lib.optim.NAdam(p, lr=1e-2, weight_decay=1e-2,
                                            decoupled_weight_decay=True),
    "radam": lambda lib, p: lib.optim.RAdam(p, lr=1e-2, weight_decay=1e-3),
    "asgd": lambda lib, p: lib.optim.ASGD(p, lr=1e-2, t0=2, weight_decay=1e-3),
    "sgd_dampening": lambda lib, p: lib.optim.SGD(p, lr=1e-2, momentum=0.9, dampening=0.5),
    "adamw_groups": lambda lib, p: lib.optim.AdamW(
        [{"params": (ps := list(p))[:3], "weight_decay": 0.0}, {"params": ps[3:], "lr": 3e-3}],
        lr=1e-2, weight_decay=0.05),
}


@pytest.fixture
def _torch_float64_scalars():
    """PyTorch keeps NAdam's and ASGD's scalar state (step, mu products, eta) in the default
    dtype; float64 there makes its float64 runs exact, as nodegrad's are."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_tabular_optimisers(name, _torch_float64_scalars):
    cats, cont, y = _tabular_data()

    def step(lib, model, i):
        rows = slice(16 * i, 16 * (i + 1))
        logits = model(lib.tensor(cats[rows]), _t(lib, cont[rows]))
        return lib.nn.functional.binary_cross_entropy_with_logits(logits, _t(lib, y[rows]))

    _same(_tabular_build, step, opt=OPTIMISERS[name])


# --- 11. Informer's ProbSparse self-attention: sampled keys, top-u queries, indexed writes ---
def _prob_attention(lib, Q, K, V, sample_idx, u):
    B, H, L, D = Q.shape
    K_expand = K.unsqueeze(-3).expand(B, H, L, L, D)
    K_sample = K_expand[:, :, lib.arange(L).unsqueeze(1), lib.tensor(sample_idx), :]
    Q_K_sample = lib.matmul(Q.unsqueeze(-2), K_sample.transpose(-2, -1)).squeeze(-2)
    M = Q_K_sample.max(-1)[0] - lib.div(Q_K_sample.sum(-1), L)
    M_top = M.topk(u, sorted=False)[1]
    b_idx, h_idx = lib.arange(B)[:, None, None], lib.arange(H)[None, :, None]
    Q_reduce = Q[b_idx, h_idx, M_top, :]
    scores = lib.matmul(Q_reduce, K.transpose(-2, -1)) / math.sqrt(D)
    mask = lib.ones(L, L, dtype=lib.bool).triu(1)[None, None, :].expand(B, H, L, L)
    scores = scores.masked_fill(mask[b_idx, h_idx, M_top, :], -np.inf)
    context = V.cumsum(dim=-2)  # the lazy queries' context under the causal mask
    attn = lib.softmax(scores, dim=-1)
    context[b_idx, h_idx, M_top, :] = lib.matmul(attn, V).type_as(context)
    return context, lib.sort(M_top, dim=-1)[0]


def test_informer_probsparse_attention():
    r = np.random.default_rng(11)
    B, H, L, D = 2, 2, 8, 4
    qkv = [r.standard_normal((B, H, L, D)) for _ in range(3)]
    sample_idx = r.integers(0, L, (L, 3))
    w = np.cos(np.arange(B * H * L * D)).reshape(B, H, L, D)
    res = []
    for lib in (torch, ng):
        Q, K, V = (lib.tensor(a, requires_grad=True) for a in qkv)
        context, top = _prob_attention(lib, Q, K, V, sample_idx, u=3)
        (context * lib.tensor(w)).sum().backward()
        res.append([context, top, Q.grad, K.grad, V.grad])
    assert_same(res[0], res[1], TOL)


# --- 12. the tabular model with nodegrad's model compiled ---------------------------------
def _compiled(build):
    """``build`` whose nodegrad model runs through ``ng.compile`` when called (the compiled
    program calls the module back, which then runs its own forward)."""
    def wrapped(lib):
        model = build(lib)
        if lib is ng:
            compiled, base = ng.compile(model), type(model)

            def call(self, *args, **kwargs):
                if self.__dict__.get("_inside", False):
                    return base.__call__(self, *args, **kwargs)
                self.__dict__["_inside"] = True
                try:
                    return compiled(*args, **kwargs)
                finally:
                    self.__dict__["_inside"] = False

            model.__class__ = type(base.__name__, (base,), {"__call__": call})
        return model
    return wrapped


def test_compiled_tabular_model(monkeypatch):
    """The tabular model compiled (BatchNorm's running statistics, a train/eval switch) agrees
    with eager PyTorch step by step."""
    monkeypatch.setitem(globals(), "_tabular_build", _compiled(_tabular_build))
    test_tabular_embeddings_batchnorm_pos_weight()
