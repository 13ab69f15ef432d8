"""PyTorch training scripts for sequence models, ported by changing only the imports.

Each script is written once against a library (``torch`` or ``nodegrad``: ``lib.nn``,
``lib.nn.functional``, ``lib.optim``, ``lib.utils.data``). Both start from torch's initial
weights (copied through NumPy after checking that the state-dict keys and shapes agree) and see
the same data, so their losses and final parameters must agree to rounding.
"""

import re

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

STEPS = 12
TOL = {"float64": 1e-9, "float32": 1e-4}


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy())


def _state(model) -> dict:
    return {k: _np(v).copy() for k, v in model.state_dict().items()}


def _load_torch_init(model, init, lib) -> None:
    """Load torch's initial weights into ``model``; nodegrad's state dict must match torch's
    key for key (names, order, shapes)."""
    sd = _state(init)
    if lib is ng:
        mine = model.state_dict()
        assert list(mine) == list(sd)
        assert [tuple(v.shape) for v in mine.values()] == [v.shape for v in sd.values()]
    model.load_state_dict({k: lib.tensor(v) for k, v in sd.items()})


def _compare(script, build, dtype="float64", skip=lambda k: slice(None), **kw):
    """Run ``script`` in torch and nodegrad from the same initial weights; compare the losses,
    the extra per-step values the script returns, and the final parameters."""
    torch.manual_seed(0)
    init = build(torch, getattr(torch, dtype))
    t_losses, t_state, t_extra = script(torch, init, dtype, **kw)
    n_losses, n_state, n_extra = script(ng, init, dtype, **kw)
    tol = TOL[dtype]
    np.testing.assert_allclose(n_losses, t_losses, rtol=tol, atol=tol)
    for a, b in zip(t_extra, n_extra, strict=True):
        np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float),
                                   rtol=10 * tol, atol=10 * tol)
    for k in t_state:
        sl = skip(k)
        np.testing.assert_allclose(n_state[k][sl], t_state[k][sl], rtol=10 * tol,
                                   atol=10 * tol, err_msg=k)
    return t_losses


# --- 1. bidirectional LSTM classifier over packed variable-length sequences -----------------
def _lstm_data(n=24, feat=5):
    r = np.random.default_rng(0)
    lens = r.integers(2, 9, size=n)
    xs = [r.standard_normal((n_, feat)) for n_ in lens]
    ys = np.array([int(x[:, 0].sum() > 0) + int(x[-1, 1] > 0) for x in xs])
    return xs, ys, lens


def _lstm_build(lib, dtype):
    nn = lib.nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 8, num_layers=2, bidirectional=True, dropout=0.0,
                                batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x, lens):
            packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True,
                                                       enforce_sorted=False)
            out, (h, _) = self.lstm(packed)
            out, out_lens = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            idx = (out_lens - 1).view(-1, 1, 1).expand(-1, 1, out.size(2))
            last = out.gather(1, idx).squeeze(1)  # the last valid step of each sequence
            return self.head(last), last, lib.cat([h[-2], h[-1]], dim=1)

    return Classifier().to(dtype)


def _lstm_script(lib, init, dtype, compile=False):
    dt = getattr(lib, dtype)
    nn, F = lib.nn, lib.nn.functional
    xs, ys, lens = _lstm_data()
    model = _lstm_build(lib, dt)
    _load_torch_init(model, init, lib)
    fwd = lib.compile(model) if compile else model
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    losses, extra = [], []
    for step in range(STEPS):
        i = (step * 8) % len(xs)
        x = nn.utils.rnn.pad_sequence([lib.tensor(a, dtype=dt) for a in xs[i:i + 8]],
                                      batch_first=True)
        logits, last, h = fwd(x, lib.tensor(lens[i:i + 8]))
        loss = F.cross_entropy(logits, lib.tensor(ys[i:i + 8]))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_value_(model.parameters(), 0.5)
        opt.step()
        losses.append(loss.item())
        # the forward direction's final state is the output at the last valid step
        extra.append(np.abs(_np(h)[:, :8] - _np(last)[:, :8]).max())
    return losses, _state(model), extra


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lstm_packed_classifier_matches_torch(dtype):
    _compare(_lstm_script, _lstm_build, dtype)


def test_compiled_lstm_over_packed_lengths_matches_torch():
    """Batches of one padded shape but other lengths: pack_padded_sequence reads the lengths
    into Python, so the compiled call runs eagerly (a graph break), not a stale trace."""
    _compare(_lstm_script, _lstm_build, compile=True)


def test_jit_refuses_to_freeze_packed_lengths():
    lstm = ng.nn.LSTM(2, 3, batch_first=True)

    def f(x, lens):
        p = ng.nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True,
                                                 enforce_sorted=False)
        return lstm(p)[1][0].sum()

    with pytest.raises(ng.errors.JitError, match="pack_padded_sequence: lengths"):
        ng.jit(f)(ng.ones(2, 4, 2), ng.tensor([4, 2]))
    compiled = ng.compile(f, fullgraph=True)
    with pytest.raises(ng.errors.JitError, match="could not be captured whole"):
        compiled(ng.ones(2, 4, 2), ng.tensor([4, 2]))


def test_compile_graph_break_on_value_read_runs_eagerly():
    lin = ng.nn.Linear(3, 3)

    def f(x, n):
        return lin(x)[: int(n.numpy()[0])].sum()

    compiled = ng.compile(f)
    x = ng.ones(4, 3)
    for n in (1, 3, 2):
        assert compiled(x, ng.tensor([n])).item() == pytest.approx(f(x, ng.tensor([n])).item())


# --- 2. GRU language model: tied embedding, truncated BPTT, ignore_index, StepLR -------------
def _corpus():
    r = np.random.default_rng(0)
    text = " ".join(r.choice(["abc", "bcd", "hello", "world", "cab", "dab"], size=120))
    vocab = ["<pad>"] + sorted(set(text))
    return np.array([vocab.index(c) for c in text]), len(vocab)


def _gru_build(lib, dtype):
    nn, V = lib.nn, _corpus()[1]

    class LanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(V, 16, padding_idx=0)
            self.rnn = nn.GRU(16, 16, num_layers=2)
            self.decoder = nn.Linear(16, V)
            self.decoder.weight = self.encoder.weight

        def forward(self, x, h):
            out, h = self.rnn(self.encoder(x), h)
            return self.decoder(out), h

    return LanguageModel().to(dtype)


def _gru_script(lib, init, dtype, bptt=10):
    dt = getattr(lib, dtype)
    ids, V = _corpus()
    model = _gru_build(lib, dt)
    _load_torch_init(model, init, lib)
    opt = lib.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = lib.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    criterion = lib.nn.CrossEntropyLoss(ignore_index=0)
    n = len(ids) // 4
    data = ids[: 4 * n].reshape(4, n).T.copy()
    data[::7, 1] = 0  # padded targets the loss ignores
    data = lib.tensor(data)
    h = lib.zeros(2, 4, 16, dtype=dt)
    losses, lrs = [], []
    for step in range(STEPS):
        pos = (step * bptt) % (n - bptt - 1)
        x, y = data[pos:pos + bptt], data[pos + 1:pos + 1 + bptt]
        out, h = model(x, h.detach())
        loss = criterion(out.view(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        lrs.append(sched.get_last_lr()[0])
    assert model.decoder.weight is model.encoder.weight
    assert len(list(model.parameters())) == 10  # the tied weight counts once
    return losses, _state(model), lrs


def test_gru_language_model_matches_torch():
    _compare(_gru_script, _gru_build)


# --- 3. pre-norm transformer encoder classifier -------------------------------------------
def _tf_data(n=32, T=10, V=12):
    r = np.random.default_rng(0)
    lens = r.integers(3, T + 1, size=n)
    x = np.zeros((n, T), dtype=np.int64)
    for i, n_ in enumerate(lens):
        x[i, :n_] = r.integers(1, V, size=n_)
    return x, (x.max(axis=1) > 8).astype(np.int64) + (lens > 6)


def _tf_build(lib, dtype, V=12, D=16, H=4, T=10):
    nn, F = lib.nn, lib.nn.functional

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(D, 3 * D)
            self.proj = nn.Linear(D, D)

        def forward(self, x):
            B, L, _ = x.shape
            q, k, v = (t.view(B, L, H, D // H).transpose(1, 2)
                       for t in self.qkv(x).split(D, dim=-1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).contiguous().view(B, L, D))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, D, padding_idx=0)
            self.pos = nn.Parameter(lib.randn(1, T + 1, D) * 0.02)
            self.cls = nn.Parameter(lib.zeros(1, 1, D))
            layer = nn.TransformerEncoderLayer(D, H, dim_feedforward=32, dropout=0.0,
                                               batch_first=True, norm_first=True,
                                               activation="gelu")
            self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.causal = CausalSelfAttention()
            self.mha = nn.MultiheadAttention(D, H, batch_first=True)
            self.norm = nn.LayerNorm(D)
            self.head = nn.Linear(D, 3)

        def forward(self, x, pad):
            B = x.size(0)
            h = lib.cat([self.cls.expand(B, -1, -1), self.emb(x)], dim=1) + self.pos
            mask = lib.cat([lib.zeros(B, 1, dtype=lib.bool), pad], dim=1)
            h = self.enc(h, src_key_padding_mask=mask)
            h = h + self.causal(h)
            a, w = self.mha(h, h, h, key_padding_mask=mask, need_weights=True,
                            average_attn_weights=False)
            return self.head(self.norm((h + a)[:, 0])), w

    return Model().to(dtype)


def _tf_script(lib, init, dtype):
    x, y = _tf_data()
    model = _tf_build(lib, getattr(lib, dtype))
    _load_torch_init(model, init, lib)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or name in ("pos", "cls") else decay).append(p)
    opt = lib.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}], lr=3e-3, betas=(0.9, 0.98))
    sched = lib.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
    losses, extra = [], []
    for step in range(STEPS):
        i = (step * 8) % len(x)
        xb = lib.tensor(x[i:i + 8])
        logits, w = model(xb, xb == 0)
        loss = lib.nn.functional.cross_entropy(logits, lib.tensor(y[i:i + 8]),
                                               label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        norm = lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        extra.append(float(norm))
        if step == 0:
            assert tuple(w.shape) == (8, 4, 11, 11)  # per head, not averaged
            extra.append(_np(w))
    return losses, _state(model), extra


def _not_key_bias(k):
    """All but the key third of a packed in-projection bias: that third's gradient is zero up
    to rounding (one shift of every key's score leaves the softmax as it is), which Adam
    normalises into steps of any size; the rest must agree."""
    return np.r_[0:16, 32:48] if k.endswith(("in_proj_bias", "qkv.bias")) else slice(None)


def test_transformer_encoder_classifier_matches_torch():
    _compare(_tf_script, _tf_build, skip=_not_key_bias)


# --- 4. seq2seq with attention, GRUCell decoder, fixed teacher forcing ---------------------
def _s2s_data(n=16, T=7, V=10):
    r = np.random.default_rng(0)
    lens = r.integers(3, T + 1, size=n)
    src = np.zeros((n, T), dtype=np.int64)
    for i, n_ in enumerate(lens):
        src[i, :n_] = r.integers(3, V, size=n_)
    tgt = np.concatenate([np.ones((n, 1), dtype=np.int64), src[:, ::-1]], axis=1)
    return src, tgt, r.random(T) < 0.5


def _s2s_build(lib, dtype, V=10, D=12):
    nn, F = lib.nn, lib.nn.functional

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, D)
            self.enc = nn.GRU(D, D, batch_first=True)
            self.cell = nn.GRUCell(2 * D, D)
            self.out = nn.Linear(2 * D, V)

        def forward(self, src, tgt, teacher):
            mask = src == 0
            enc_out, h = self.enc(self.emb(src))
            h, inp, ctx, outs = h[0], tgt[:, 0], lib.zeros_like(h[0]), []
            for t in range(tgt.size(1) - 1):
                h = self.cell(lib.cat([self.emb(inp), ctx], dim=1), h)
                scores = lib.bmm(enc_out, h.unsqueeze(2)).squeeze(2)
                attn = F.softmax(scores.masked_fill(mask, float("-inf")), dim=1)
                ctx = lib.bmm(attn.unsqueeze(1), enc_out).squeeze(1)
                logp = F.log_softmax(self.out(lib.cat([h, ctx], dim=1)), dim=-1)
                outs.append(logp)
                inp = tgt[:, t + 1] if teacher[t] else logp.argmax(dim=-1)
            return lib.stack(outs, dim=1)

    return Seq2Seq().to(dtype)


def _s2s_script(lib, init, dtype, V=10):
    src, tgt, teacher = _s2s_data()
    model = _s2s_build(lib, getattr(lib, dtype))
    _load_torch_init(model, init, lib)
    opt = lib.optim.RMSprop(model.parameters(), lr=3e-3)
    criterion = lib.nn.NLLLoss(ignore_index=0)
    losses = []
    for step in range(STEPS):
        i = (step * 8) % len(src)
        s, t = lib.tensor(src[i:i + 8]), lib.tensor(tgt[i:i + 8])
        loss = criterion(model(s, t, teacher).reshape(-1, V), t[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with lib.no_grad():  # greedy decoding, then the top 3 tokens per step
        top = model(lib.tensor(src[:4]), lib.tensor(tgt[:4]), [False] * 7).topk(3, dim=-1)
    return losses, _state(model), [_np(top.values), _np(top.indices)]


def test_seq2seq_attention_matches_torch():
    _compare(_s2s_script, _s2s_build)


# --- 5. temporal conv net on MNIST-1D (weight norm, causal padding, compile) ----------------
def _tcn_build(lib, dtype):
    nn, F = lib.nn, lib.nn.functional
    weight_norm = nn.utils.parametrizations.weight_norm

    class Block(nn.Module):
        def __init__(self, cin, cout, dil):
            super().__init__()
            self.dil = dil
            self.conv = weight_norm(nn.Conv1d(cin, cout, 3, dilation=dil))
            self.same = nn.Conv1d(cout, cout, 3, dilation=dil, padding="same")
            self.norm = nn.LayerNorm(cout)
            self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x):
            h = F.relu(self.conv(F.pad(x, (2 * self.dil, 0))))  # causal
            h = self.norm(self.same(h).transpose(1, 2)).transpose(1, 2)
            return F.relu(h + self.skip(x))

    class TCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(1, 8, 1), Block(8, 8, 2), Block(8, 8, 4))
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.blocks(x.unsqueeze(1))[:, :, -1])

    return TCN().to(dtype)


def _mnist1d():
    data = pytest.importorskip("mnist1d.data")
    args = data.get_dataset_args()
    args.num_samples = 200
    d = data.make_dataset(args)
    return d["x"], d["y"]


def _tcn_script(lib, init, dtype, compile=False):
    dt = getattr(lib, dtype)
    X, Y = _mnist1d()
    model = _tcn_build(lib, dt)
    _load_torch_init(model, init, lib)
    fwd = lib.compile(model) if compile else model
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=1e-4)
    sched = lib.optim.lr_scheduler.MultiStepLR(opt, milestones=[4, 8], gamma=0.3)
    ds = lib.utils.data.TensorDataset(lib.tensor(X, dtype=dt), lib.tensor(Y))
    loader = lib.utils.data.DataLoader(ds, batch_size=32, shuffle=False, drop_last=True)
    losses, it = [], iter(loader)
    for _ in range(STEPS):
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        assert xb.dtype == dt  # a TensorDataset's dtype survives the loader
        loss = lib.nn.functional.cross_entropy(fwd(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses, _state(model), []


def test_tcn_mnist1d_matches_torch():
    _compare(_tcn_script, _tcn_build)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tcn_mnist1d_compiled_matches_torch(dtype):
    _compare(_tcn_script, _tcn_build, dtype, compile=True)


# --- the DataLoader keeps a TensorDataset's dtype ------------------------------------------
def test_dataloader_keeps_tensor_dataset_dtype_as_torch():
    x = np.arange(12.0).reshape(6, 2)
    data = ng.utils.data
    ds = data.TensorDataset(ng.tensor(x), ng.tensor(np.arange(6)))
    tds = torch.utils.data.TensorDataset(torch.tensor(x), torch.arange(6))
    want = next(iter(torch.utils.data.DataLoader(tds, batch_size=4)))[0].dtype
    assert want == torch.float64
    for d in (ds, data.Subset(ds, [0, 2, 4]), data.ConcatDataset([ds, ds]),
              data.random_split(ds, [3, 3])[0]):
        xb, yb = next(iter(data.DataLoader(d, batch_size=3)))
        assert (xb.dtype, yb.dtype) == (ng.float64, ng.int64)
    # an explicit dtype still converts; a plain array dataset keeps nodegrad's float32
    assert next(iter(data.DataLoader(ds, batch_size=3, dtype=ng.float32)))[0].dtype == ng.float32
    arrays = ng.data.ArrayDataset(x, np.arange(6))
    assert next(iter(data.DataLoader(arrays, batch_size=3)))[0].dtype == ng.float32
    from_numpy = data.TensorDataset(x, np.arange(6))  # not PyTorch's: an array dataset
    assert next(iter(data.DataLoader(from_numpy, batch_size=3)))[0].dtype == ng.float32
    mixed = data.ConcatDataset([ds, arrays])
    assert next(iter(data.DataLoader(mixed, batch_size=3)))[0].dtype == ng.float32


# --- smaller pieces of sequence scripts ----------------------------------------------------
def _both(fn):
    return fn(torch), fn(ng)


def test_embedding_bag_modes_and_grads_match_torch():
    w = np.random.default_rng(0).standard_normal((10, 4))
    for mode in ("sum", "mean", "max"):
        def run(lib, mode=mode):
            bag = lib.nn.EmbeddingBag(10, 4, mode=mode).double()
            with lib.no_grad():
                bag.weight.copy_(lib.tensor(w))
            inp, offsets = lib.tensor([1, 2, 4, 5, 4, 3, 2, 9]), lib.tensor([0, 4])
            out = bag(inp, offsets)
            out.sum().backward()
            return [out, bag(lib.tensor([[1, 2, 4], [4, 3, 2]])), bag.weight.grad]
        for a, b in zip(*_both(run), strict=True):
            np.testing.assert_allclose(_np(b), _np(a), atol=1e-12)


def test_pack_sequence_one_hot_where_topk_match_torch():
    def run(lib):
        rnn = lib.nn.utils.rnn
        seqs = [lib.tensor([1.0, 2.0, 3.0]), lib.tensor([4.0, 5.0]), lib.tensor([6.0])]
        p = rnn.pack_sequence([seqs[1], seqs[0], seqs[2]], enforce_sorted=False)
        padded, lens = rnn.pad_packed_sequence(p, batch_first=True, padding_value=-1.0,
                                               total_length=5)
        x = lib.tensor([[1.0, -2.0], [3.0, -4.0]])
        scores = lib.tensor([[0.1, 0.5, 0.2, 0.4], [3.0, 1.0, 2.0, 0.0]])
        values, indices = lib.topk(scores, 2, dim=-1)
        return [rnn.pack_sequence(seqs).data, p.batch_sizes, p.sorted_indices,
                p.unsorted_indices, padded, lens,
                lib.nn.functional.one_hot(lib.tensor([0, 3, 1]), num_classes=5),
                lib.nn.functional.one_hot(lib.tensor([[0, 2], [1, 1]])),
                lib.where(x > 0, x, 0.0), *lib.where(x > 0), values, indices]
    for a, b in zip(*_both(run), strict=True):
        a, b = _np(a), _np(b)
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        np.testing.assert_array_equal(b, a)


def test_rnn_flat_weights_as_torch():
    def run(lib):
        m = lib.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
        m.flatten_parameters()
        return m._flat_weights_names, [tuple(w.shape) for w in m._flat_weights]
    t, n = _both(run)
    assert t == n


def _strip_counts(text: str) -> str:
    """A module's repr without nodegrad's parameter-count comments."""
    return re.sub(r"  # [\d,]+ parameters( in all)?", "", text)


def test_module_list_repr_folds_repeated_modules_as_torch():
    def run(lib):
        nn = lib.nn
        return [repr(nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.Tanh(), nn.Linear(2, 2),
                                    nn.Linear(2, 2)])), repr(nn.ModuleList()),
                repr(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))]
    for a, b in zip(*_both(run), strict=True):
        assert _strip_counts(b) == a
    enc = ng.nn.TransformerEncoder(ng.nn.TransformerEncoderLayer(8, 2, 16), num_layers=3)
    assert "(0-2): 3 x TransformerEncoderLayer(" in repr(enc)
    assert repr(enc).endswith(")  # 1,800 parameters in all")


def test_loss_repr_as_torch():
    def run(lib):
        nn = lib.nn
        return [repr(nn.CrossEntropyLoss(ignore_index=0)), repr(nn.NLLLoss()),
                repr(nn.MSELoss())]
    t, n = _both(run)
    assert t == n
    assert repr(ng.nn.MSELoss(reduction="sum")) == "MSELoss(reduction='sum')"


def test_sequence_model_reprs_match_torch_but_the_counts():
    """LSTM, GRU, Embedding, GRUCell and the weight-normed conv print as torch's."""
    for build in (_lstm_build, _gru_build, _s2s_build, _tcn_build):
        assert _strip_counts(repr(build(ng, ng.float32))) == repr(build(torch, torch.float32))


# --- 6. digit rows as sequences: a Dataset class, a padding collate_fn, EmbeddingBag ---------
def _digits_build(lib, dtype):
    nn = lib.nn

    class RowsAndBag(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 16, batch_first=True)
            self.bag = nn.EmbeddingBag(17, 4, mode="mean")
            self.fc = nn.Linear(20, 10)

        def forward(self, x, lens, tokens, offsets):
            p = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True,
                                                  enforce_sorted=False)
            _, (h, _) = self.rnn(p)
            return self.fc(lib.cat([h[-1], self.bag(tokens, offsets)], 1))

    return RowsAndBag().to(dtype)


def _digits_script(lib, init, dtype):
    datasets = pytest.importorskip("sklearn.datasets")
    dt = getattr(lib, dtype)
    d = datasets.load_digits()
    X, Y, pixels = d.data[:64].reshape(-1, 8, 8) / 16.0, d.target[:64], d.data.astype(np.int64)
    lens = np.random.default_rng(0).integers(3, 9, size=len(X))

    class Rows(lib.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return (lib.tensor(X[i, :lens[i]], dtype=dt), int(Y[i]),
                    lib.tensor(pixels[i, :lens[i]]))

    def collate(batch):
        xs, ys, ts = zip(*batch)
        offsets = lib.tensor(np.cumsum([0] + [len(t) for t in ts[:-1]]))
        return (lib.nn.utils.rnn.pad_sequence(list(xs), batch_first=True),
                lib.tensor([len(x) for x in xs]), lib.tensor(ys), lib.cat(ts), offsets)

    order = list(np.random.default_rng(1).permutation(len(X)))
    loader = lib.utils.data.DataLoader(Rows(), batch_size=16, collate_fn=collate, sampler=order)
    model = _digits_build(lib, dt)
    _load_torch_init(model, init, lib)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        for x, n, y, t, o in loader:
            loss = lib.nn.functional.cross_entropy(model(x, n, t, o), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, _state(model), []


def test_digit_rows_with_collate_fn_match_torch():
    _compare(_digits_script, _digits_build)
