"""jit on sequence-model training steps as PyTorch users write them: word-level language models
trained with truncated backpropagation through time (the hidden state returned by the step,
detached and passed into the next call), tied embedding and decoder weights, packed padded
sequences, seq2seq with teacher forcing, a small Transformer, warmup schedules, and a greedy
decoding step that writes a key/value cache in place. Each runs eagerly and under
``ng.jit(step, state=...)`` from the same weights and seed: bit for bit without fusion, within
1e-6 relative (float32) / 1e-12 (float64) fused."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, optim
from nodegrad.errors import JitError
from nodegrad.nn import functional as F
from nodegrad.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tests.test_jit_real_steps import FUSE, FUSE_SLOW, Run, _close, _snapshot, check
# (an autouse fixture: slow cases skip unless asked for, the default dtype is restored)
from tests.test_jit_real_steps import _restore_dtype  # noqa: F401

VOCAB = 17


def _dtype(name):
    return getattr(ng, name)


def carried(make, jit: bool, fuse=None, seed=0):
    """Run a step that returns ``(outputs..., hidden)`` and takes the hidden state back as its
    last argument on the next call, as truncated BPTT loops do; snapshot after each call."""
    ng.manual_seed(seed)
    run = make()
    step = ng.jit(run.step, state=run.state, fuse=fuse) if jit else run.step
    hidden = run.init()
    snaps = []
    for i, batch in enumerate(run.batches):
        *out, hidden = step(*batch, hidden)
        snaps.append(_snapshot(run, (out, hidden)))
        if run.between is not None:
            run.between(i, out)
    return snaps, step


def check_carried(make, fuse=False, replays: bool = True):
    ref, _ = carried(make, jit=False)
    got, jitted = carried(make, jit=True, fuse=fuse)
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


def corpus(n_tokens=400, seed=1):
    """A token stream with some structure (a noisy cycle), batchified as the word language model
    example does: (n_tokens // bsz, bsz) columns."""
    rng = np.random.default_rng(seed)
    stream = (np.arange(n_tokens) * 3 + rng.integers(0, 3, n_tokens)) % (VOCAB - 1) + 1
    return stream


def batchify(stream, bsz):
    nb = len(stream) // bsz
    return ng.tensor(stream[:nb * bsz].reshape(bsz, nb).T.copy())  # (nb, bsz), time first


def bptt_batches(source, bptt, n):
    out = []
    for i in range(0, min(n * bptt, source.shape[0] - 1 - bptt), bptt):
        data = source[i:i + bptt]
        target = source[i + 1:i + 1 + bptt].reshape(-1)
        out.append((ng.tensor(data.numpy().copy()), ng.tensor(target.numpy().copy())))
    return out[:n]


# --- 1. the word language model example: truncated BPTT, tied weights, SGD by hand ------------

class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder (tied weights)."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2, tie_weights=True):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, ng.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def word_lm(rnn_type, dtype="float32", update="by_hand"):
    def make():
        ng.set_default_dtype(_dtype(dtype))
        bsz, bptt = 4, 5
        model = RNNModel(rnn_type, VOCAB, 10, 10, 2)
        criterion = nn.NLLLoss()
        lr = [2.0]
        opt = None
        if update == "adam_warmup":
            opt = optim.Adam(model.parameters(), lr=2e-3)
            warm = 4
            sched = optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))

        def train_step(data, targets, hidden):
            # Starting each batch, we detach the hidden state from how it was previously
            # produced. If we didn't, the model would try backpropagating all the way to start
            # of the dataset.
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            if opt is None:
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr[0])
            else:
                opt.step()
                sched.step()
            return loss, hidden

        source = batchify(corpus(), bsz)
        batches = bptt_batches(source, bptt, 12)
        run = Run((model,) if opt is None else (model, opt), train_step, batches)
        run.init = lambda: model.init_hidden(bsz)
        return run
    return make


@pytest.mark.parametrize("rnn_type,fuse", [
    ("LSTM", False), ("GRU", False), ("LSTM", None),
    pytest.param("GRU", None, marks=pytest.mark.slow)])
def test_word_lm_truncated_bptt_tied(rnn_type, fuse):
    check_carried(word_lm(rnn_type), fuse)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH"])
def test_word_lm_adam_warmup_float64(rnn_type):
    kind = "RNN" if rnn_type == "RNN_TANH" else rnn_type
    check_carried(word_lm(kind, "float64", "adam_warmup"))


lr = 20.0  # the example's global learning rate, annealed by ``lr /= 4.0``


def annealed(how):
    def make():
        global lr
        lr = 20.0
        ng.set_default_dtype(ng.float32)
        bsz, bptt = 4, 5
        model = RNNModel("LSTM", VOCAB, 10, 10, 2, dropout=0.3)
        local_lr = 20.0

        def train_step(data, targets, hidden):
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            output, hidden = model(data, hidden)
            loss = F.nll_loss(output, targets)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-(lr if how == "global" else local_lr))
            return loss, hidden

        def between(i, out):
            global lr
            nonlocal local_lr
            if i % 4 == 3:  # "anneal the learning rate if no improvement has been seen"
                if how == "global":
                    lr /= 4.0
                elif how == "closure":
                    local_lr /= 4.0
                else:  # a dropout schedule: the modules' p set between calls
                    for m in model.modules():
                        if isinstance(m, nn.Dropout):
                            m.p = max(0.0, m.p - 0.1)
                    model.rnn.dropout = model.drop.p

        batches = bptt_batches(batchify(corpus(), bsz), bptt, 12)
        run = Run((model,), train_step, batches, between)
        run.init = lambda: model.init_hidden(bsz)
        return run
    return make


@pytest.mark.parametrize("how", ["global", "closure", "dropout_p"])
def test_word_lm_annealed_between_calls(how):
    # each new value traces once; the replays then use it
    j = check_carried(annealed(how))
    assert j.traces == 3


HIDDEN = None  # a recurrent state kept in a global, as scripts keep it


class StatefulLM(nn.Module):
    """A stateful language model: the recurrent state lives on the module between batches."""

    def __init__(self, rnn_type):
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, 8)
        self.rnn = getattr(nn, rnn_type)(8, 8)
        self.decoder = nn.Linear(8, VOCAB)
        self.hidden = None

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.encoder(x), hidden)
        return F.log_softmax(self.decoder(out), dim=-1).view(-1, VOCAB), hidden


def hidden_in_a_variable(where, rnn_type="GRU"):
    """The step reads the state from a Python variable; ``where`` says who rebinds it: the
    caller between calls ("outside", or "box": an attribute of an object the step closes over,
    "deepbox": one of an object that object holds; read afresh on each replay), or the step
    itself ("nonlocal", "global", "attribute": the signature runs eagerly)."""
    def make():
        global HIDDEN
        ng.set_default_dtype(ng.float32)
        bsz = 4
        model = StatefulLM(rnn_type)
        opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        box = types.SimpleNamespace()  # a trainer object holding the state
        box.state = types.SimpleNamespace()  # and its state object holding it
        hidden, HIDDEN, model.hidden, box.hidden, box.state.hidden = (
            (ng.zeros(1, bsz, 8), ng.zeros(1, bsz, 8)) if rnn_type == "LSTM" else
            ng.zeros(1, bsz, 8) for _ in range(5))

        def step(data, targets):
            nonlocal hidden
            global HIDDEN
            h = {"outside": hidden, "nonlocal": hidden, "global": HIDDEN,
                 "attribute": model.hidden, "box": box.hidden,
                 "deepbox": box.state.hidden}[where]
            output, h = model(data, repackage_hidden(h))
            loss = F.nll_loss(output, targets)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            if where == "nonlocal":
                hidden = h
            elif where == "global":
                HIDDEN = h
            elif where == "attribute":
                model.hidden = h
            return loss, h

        def between(i, out):
            nonlocal hidden
            if where == "outside":
                hidden = repackage_hidden(out[1])
            elif where == "box":
                box.hidden = repackage_hidden(out[1])
            elif where == "deepbox":
                box.state.hidden = repackage_hidden(out[1])
        batches = bptt_batches(batchify(corpus(), bsz), 5, 10)
        run = Run((model, opt), step, batches, between,
                  extra=lambda: list(repackage_hidden((hidden, HIDDEN, model.hidden,
                                                       box.hidden, box.state.hidden))))
        return run
    return make


def _flat(h):
    return [h] if isinstance(h, ng.Tensor) else [t for x in h for t in _flat(x)]


@pytest.mark.parametrize("where,rnn_type", [("outside", "GRU"), ("outside", "LSTM"),
                                            ("box", "GRU"), ("deepbox", "GRU")])
def test_hidden_rebound_by_the_caller_is_read_on_each_replay(where, rnn_type):
    # the replays read the variable's tensor at the trace, the first state, on every call
    j = check(lambda: _with_flat_extra(hidden_in_a_variable(where, rnn_type)()))
    assert j.traces == 1


def _with_flat_extra(run):
    extra = run.extra
    run.extra = lambda: _flat(extra())
    return run


@pytest.mark.parametrize("where", ["nonlocal", "global", "attribute"])
def test_hidden_rebound_by_the_step_runs_eagerly(where):
    j = check(lambda: _with_flat_extra(hidden_in_a_variable(where)()), replays=False)
    name = {"nonlocal": "hidden", "global": "HIDDEN", "attribute": "StatefulLM.hidden"}[where]
    assert j.last.program is None and f"the step replaces {name}," in j.last.reason


# --- 2. packed padded sequences: lengths change from batch to batch --------------------------

class PackedClassifier(nn.Module):
    def __init__(self, kind, vocab=VOCAB, emb=8, hid=10, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.rnn = getattr(nn, kind)(emb, hid, num_layers=1, batch_first=True,
                                     bidirectional=True)
        self.fc = nn.Linear(2 * hid, classes)

    def forward(self, text, lengths):
        embedded = self.embedding(text)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True,
                                      enforce_sorted=False)
        packed_out, hidden = self.rnn(packed)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        out, out_lens = pad_packed_sequence(packed_out, batch_first=True)
        # mean over the real steps, and the last layer's two final states
        mean = out.sum(1) / out_lens.unsqueeze(1).to(out.dtype)
        last = ng.cat([hidden[-2], hidden[-1]], dim=1)
        return self.fc(last + mean)


def packed_batches(n, batch=5, maxlen=7, seed=2, fixed=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lengths = (np.full(batch, maxlen) if fixed else rng.integers(2, maxlen + 1, batch))
        lengths[0] = maxlen  # the padded width stays maxlen
        text = np.zeros((batch, maxlen), dtype=np.int64)
        for b, L in enumerate(lengths):
            text[b, :L] = rng.integers(1, VOCAB, L)
        out.append((ng.tensor(text), ng.tensor(lengths.astype(np.int64)),
                    ng.tensor(rng.integers(0, 3, batch))))
    return out


def packed(kind, lengths_as="tensor", dtype="float32"):
    def make():
        ng.set_default_dtype(_dtype(dtype))
        model = PackedClassifier(kind)
        opt = optim.Adam(model.parameters(), lr=5e-3)

        def step(text, lengths, label):
            opt.zero_grad()
            if lengths_as == "tolist":
                lengths = lengths.tolist()  # BAD-LINE
            logits = model(text, lengths)
            loss = F.cross_entropy(logits, label)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            return loss, logits.argmax(1)
        batches = packed_batches(12)
        if lengths_as == "list":  # three length patterns, as a bucketing sampler gives
            pats = [b[1].tolist() for b in batches[:3]]
            batches = [(t, pats[i % 3], y) for i, (t, _, y) in enumerate(batches)]
            for t, lens, _ in batches:
                for r, L in enumerate(lens):
                    t._data[r, L:] = 0
        return Run((model, opt), step, batches)
    return make


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_lengths_as_python_list(kind):
    # lengths passed as a list are static: one program per length pattern, replayed
    j = check(packed(kind, "list"))
    assert j.traces == 3


@pytest.mark.parametrize("lengths_as", ["tensor", "tolist"])
def test_packed_lengths_tensor_raises_naming_the_line(lengths_as):
    ng.manual_seed(0)
    run = packed("LSTM", lengths_as)()
    step = ng.jit(run.step, state=run.state)
    with pytest.raises(JitError) as e:
        step(*run.batches[0])
    msg = str(e.value)
    assert "test_jit_ports_sequence.py" in msg, msg
    assert ("pack_padded_sequence" in msg) if lengths_as == "tensor" else (
        "lengths.tolist()" in msg), msg


# --- 3. seq2seq: a GRU encoder and decoder, teacher forcing and greedy feeding ----------------

SOS, EOS = 1, 2


class EncoderRNN(nn.Module):
    def __init__(self, input_size, hidden_size, dropout_p=0.1):
        super().__init__()
        self.embedding = nn.Embedding(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, input):
        embedded = self.dropout(self.embedding(input))
        output, hidden = self.gru(embedded)
        return output, hidden


class AttnDecoderRNN(nn.Module):
    """Bahdanau attention decoder of the seq2seq translation tutorial."""

    def __init__(self, hidden_size, output_size, dropout_p=0.1, max_length=6):
        super().__init__()
        self.embedding = nn.Embedding(output_size, hidden_size)
        self.Wa = nn.Linear(hidden_size, hidden_size)
        self.Ua = nn.Linear(hidden_size, hidden_size)
        self.Va = nn.Linear(hidden_size, 1)
        self.gru = nn.GRU(2 * hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(dropout_p)
        self.max_length = max_length

    def attention(self, query, keys):
        scores = self.Va(ng.tanh(self.Wa(query) + self.Ua(keys)))
        scores = scores.squeeze(2).unsqueeze(1)
        weights = F.softmax(scores, dim=-1)
        return ng.bmm(weights, keys), weights

    def forward(self, encoder_outputs, encoder_hidden, target_tensor=None):
        batch_size = encoder_outputs.size(0)
        decoder_input = ng.empty(batch_size, 1, dtype=ng.long).fill_(SOS)
        decoder_hidden = encoder_hidden
        decoder_outputs, attentions = [], []
        for i in range(self.max_length):
            decoder_output, decoder_hidden, attn = self.forward_step(
                decoder_input, decoder_hidden, encoder_outputs)
            decoder_outputs.append(decoder_output)
            attentions.append(attn)
            if target_tensor is not None:
                decoder_input = target_tensor[:, i].unsqueeze(1)  # Teacher forcing
            else:
                _, topi = decoder_output.topk(1)
                decoder_input = topi.squeeze(-1).detach()  # detach from history as input
        decoder_outputs = ng.cat(decoder_outputs, dim=1)
        decoder_outputs = F.log_softmax(decoder_outputs, dim=-1)
        return decoder_outputs, decoder_hidden, ng.cat(attentions, dim=1)

    def forward_step(self, input, hidden, encoder_outputs):
        embedded = self.dropout(self.embedding(input))
        query = hidden.permute(1, 0, 2)
        context, attn_weights = self.attention(query, encoder_outputs)
        input_gru = ng.cat((embedded, context), dim=2)
        output, hidden = self.gru(input_gru, hidden)
        return self.out(output), hidden, attn_weights


def pair_batches(n, batch=4, src_len=5, tgt_len=6, vocab=VOCAB, seed=4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        src = rng.integers(3, vocab, (batch, src_len))
        tgt = np.concatenate([src[:, ::-1] % (vocab - 3) + 3, np.full((batch, 1), EOS)], 1)
        out.append((ng.tensor(src), ng.tensor(tgt[:, :tgt_len])))
    return out


def seq2seq(forcing, dtype="float32", adam=True):
    def make():
        ng.set_default_dtype(_dtype(dtype))
        encoder = EncoderRNN(VOCAB, 12)
        decoder = AttnDecoderRNN(12, VOCAB)
        # Va's bias shifts every score of a softmax alike: its gradient is zero but for
        # rounding, which Adam scales up to full steps; fused, whose roundings differ, takes SGD
        kind, kw = (optim.Adam, {}) if adam else (optim.SGD, dict(momentum=0.9))
        enc_opt = kind(encoder.parameters(), lr=3e-3, **kw)
        dec_opt = kind(decoder.parameters(), lr=3e-3, **kw)
        criterion = nn.NLLLoss()

        def train_step(input_tensor, target_tensor):
            enc_opt.zero_grad()
            dec_opt.zero_grad()
            encoder_outputs, encoder_hidden = encoder(input_tensor)
            decoder_outputs, _, attn = decoder(
                encoder_outputs, encoder_hidden, target_tensor if forcing else None)
            loss = criterion(decoder_outputs.view(-1, decoder_outputs.size(-1)),
                             target_tensor.view(-1))
            loss.backward()
            enc_opt.step()
            dec_opt.step()
            return loss, decoder_outputs.argmax(-1), attn.detach()
        return Run((encoder, decoder, enc_opt, dec_opt), train_step, pair_batches(10))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
@pytest.mark.parametrize("forcing", [True, False], ids=["teacher", "greedy"])
def test_seq2seq_attention(forcing, fuse):
    check(seq2seq(forcing, adam=fuse is False), fuse)


class LuongAttnClassifier(nn.Module):
    """A GRU encoder with dot-product attention pooling; padded positions get -inf scores by
    indexing with the pad mask (``scores[mask] = float("-inf")``)."""

    def __init__(self, hid=10):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, hid, padding_idx=0)
        self.gru = nn.GRU(hid, hid, batch_first=True)
        self.query = nn.Parameter(ng.randn(hid) * 0.1)
        self.out = nn.Linear(hid, 3)

    def forward(self, text):
        states, _ = self.gru(self.embedding(text))
        scores = states @ self.query
        scores[text == 0] = float("-inf")
        weights = F.softmax(scores, dim=1)
        return self.out((weights.unsqueeze(2) * states).sum(1)), weights


def luong():
    def make():
        ng.set_default_dtype(ng.float32)
        model = LuongAttnClassifier()
        opt = optim.Adam(model.parameters(), lr=5e-3)

        def step(text, label):
            logits, weights = model(text)
            loss = F.cross_entropy(logits, label)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, weights.detach()
        return Run((model, opt), step, [(t, y) for t, _, y in packed_batches(10)])
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_attention_scores_masked_by_setitem(fuse):
    check(luong(), fuse)


# --- 4. Transformers: an encoder LM with masks, nn.Transformer, a GPT block with SDPA ----------

PAD = 0


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=32):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = ng.arange(max_len).unsqueeze(1)
        div_term = ng.exp(ng.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = ng.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = ng.sin(position * div_term)
        pe[:, 0, 1::2] = ng.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        x = x + self.pe[:x.size(0)]
        return self.dropout(x)


class TransformerLM(nn.Module):
    def __init__(self, ntoken=VOCAB, d_model=16, nhead=2, d_hid=32, nlayers=2, dropout=0.1,
                 norm_first=False):
        super().__init__()
        self.pos_encoder = PositionalEncoding(d_model, dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, norm_first=norm_first)
        self.transformer_encoder = nn.TransformerEncoder(layer, nlayers)
        self.embedding = nn.Embedding(ntoken, d_model, padding_idx=PAD)
        self.d_model = d_model
        self.linear = nn.Linear(d_model, ntoken)

    def forward(self, src, src_mask=None, src_key_padding_mask=None):
        src = self.embedding(src) * math.sqrt(self.d_model)
        src = self.pos_encoder(src)
        output = self.transformer_encoder(src, src_mask,
                                          src_key_padding_mask=src_key_padding_mask)
        return self.linear(output)


def noam(d_model, warmup):
    return lambda step: d_model ** -0.5 * min((step + 1) ** -0.5, (step + 1) * warmup ** -1.5)


def padded_lm_batches(n, batch=4, seq=8, seed=5):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.integers(1, VOCAB, (seq + 1, batch))  # time first, as the tutorial's
        t[-3:, 0] = PAD
        t[-1:, 2] = PAD
        out.append((ng.tensor(t[:-1].copy()), ng.tensor(t[1:].copy())))
    return out


def encoder_lm(norm_first, adam=True):
    def make():
        ng.set_default_dtype(ng.float32)
        model = TransformerLM(norm_first=norm_first)
        if adam:
            opt = optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        else:
            opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        sched = optim.lr_scheduler.LambdaLR(opt, noam(16, 4))
        criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1)

        def step(data, targets):
            model.train()
            seq_len = data.size(0)
            src_mask = nn.Transformer.generate_square_subsequent_mask(seq_len)
            pad_mask = (data == PAD).T  # (batch, seq)
            output = model(data, src_mask, src_key_padding_mask=pad_mask)
            loss = criterion(output.view(-1, VOCAB), targets.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            sched.step()
            return loss, output.detach()
        return Run((model, opt), step, padded_lm_batches(10))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_transformer_encoder_lm_noam(norm_first, fuse):
    check(encoder_lm(norm_first, adam=fuse is False), fuse)


class Seq2SeqTransformer(nn.Module):
    def __init__(self, d_model=16, nhead=2, layers=1, d_ff=32, dropout=0.1):
        super().__init__()
        self.transformer = nn.Transformer(d_model=d_model, nhead=nhead,
                                          num_encoder_layers=layers,
                                          num_decoder_layers=layers, dim_feedforward=d_ff,
                                          dropout=dropout, batch_first=True)
        self.generator = nn.Linear(d_model, VOCAB)
        self.src_tok_emb = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.tgt_tok_emb = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.register_buffer("pos", 0.1 * ng.randn(1, 16, d_model))
        self.d_model = d_model

    def embed(self, emb, tokens):
        return emb(tokens) * math.sqrt(self.d_model) + self.pos[:, :tokens.size(1)]

    def forward(self, src, trg, tgt_mask, src_padding_mask, tgt_padding_mask):
        outs = self.transformer(self.embed(self.src_tok_emb, src),
                                self.embed(self.tgt_tok_emb, trg), tgt_mask=tgt_mask,
                                src_key_padding_mask=src_padding_mask,
                                tgt_key_padding_mask=tgt_padding_mask,
                                memory_key_padding_mask=src_padding_mask)
        return self.generator(outs)


def translation_batches(n, batch=4, src_len=6, tgt_len=7, seed=6):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        src = rng.integers(3, VOCAB, (batch, src_len))
        src[1, -2:] = PAD
        tgt = np.concatenate([np.full((batch, 1), SOS), (src[:, ::-1] + 1) % VOCAB,
                              np.full((batch, 1), EOS)], 1)[:, :tgt_len]
        tgt[tgt == 1] = 3
        tgt[:, 0] = SOS
        tgt[2, -2:] = PAD
        out.append((ng.tensor(src), ng.tensor(tgt)))
    return out


def translation(adam=True):
    def make():
        ng.set_default_dtype(ng.float32)
        model = Seq2SeqTransformer()
        for p in model.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        opt = (optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9) if adam
               else optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        loss_fn = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.1)

        def train_step(src, tgt):
            tgt_input = tgt[:, :-1]
            tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt_input.shape[1])
            src_padding_mask = src == PAD
            tgt_padding_mask = tgt_input == PAD
            logits = model(src, tgt_input, tgt_mask, src_padding_mask, tgt_padding_mask)
            opt.zero_grad()
            tgt_out = tgt[:, 1:]
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
            loss.backward()
            opt.step()
            return loss
        return Run((model, opt), train_step, translation_batches(10))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_nn_transformer_translation(fuse):
    check(translation(adam=fuse is False), fuse)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.attn_dropout_p = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.attn_dropout_p if self.training else 0,
            is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPTBlock(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=False), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab=VOCAB, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=0.1):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, n_embd), wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([GPTBlock(n_embd, n_head, dropout) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd, bias=False)))
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = ng.arange(0, t, dtype=ng.long)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1)
        return logits, loss


def gpt_batches(n, batch=4, block=8, seed=7):
    stream = corpus(2000, seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ix = rng.integers(0, len(stream) - block - 1, batch)
        x = np.stack([stream[i:i + block] for i in ix])
        y = np.stack([stream[i + 1:i + 1 + block] for i in ix])
        y[0, :2] = -1
        out.append((ng.tensor(x), ng.tensor(y)))
    return out


def gpt(accum, adamw=True):
    def make():
        ng.set_default_dtype(ng.float32)
        model = GPT()
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        nodecay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1},
                  {"params": nodecay, "weight_decay": 0.0}]
        opt = (optim.AdamW(groups, lr=6e-3, betas=(0.9, 0.95)) if adamw else
               optim.SGD(groups, lr=0.1, momentum=0.9))
        warmup, total = 3, 12

        def lr_lambda(it):
            if it < warmup:
                return (it + 1) / (warmup + 1)
            ratio = (it - warmup) / (total - warmup)
            return 0.1 + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * 0.9
        sched = optim.lr_scheduler.LambdaLR(opt, lr_lambda)

        def step(X, Y):
            for micro in range(accum):
                sl = slice(micro * X.shape[0] // accum, (micro + 1) * X.shape[0] // accum)
                logits, loss = model(X[sl], Y[sl])
                loss = loss / accum
                loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return loss * accum, logits.detach()
        return Run((model, opt), step, gpt_batches(10))
    return make


@pytest.mark.parametrize("accum,fuse", [
    (1, False), (2, False), (1, None), pytest.param(2, None, marks=pytest.mark.slow)])
def test_gpt_sdpa_causal_tied(accum, fuse):
    check(gpt(accum, adamw=fuse is False), fuse)


# --- 5. greedy decoding with a key/value cache written in place -----------------------------

class CachedDecoder(nn.Module):
    """One attention layer decoding a token at a time; keys and values of the earlier positions
    live in buffers written at ``pos``."""

    def __init__(self, vocab=VOCAB, d=16, heads=2, max_len=10, batch=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(max_len, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)
        self.h, self.dh, self.max_len = heads, d // heads, max_len
        self.register_buffer("k_cache", ng.zeros(batch, heads, max_len, d // heads),
                             persistent=False)
        self.register_buffer("v_cache", ng.zeros(batch, heads, max_len, d // heads),
                             persistent=False)
        self.register_buffer("pos_t", ng.zeros((), dtype=ng.long), persistent=False)
        self.pos = 0  # a Python counter, as many decoding loops keep it

    def attend(self, tok, pos, k_cache, v_cache):
        B = tok.shape[0]
        x = self.emb(tok) + self.wpe(pos if isinstance(pos, ng.Tensor) else ng.tensor(pos))
        q, k, v = self.qkv(x).split(self.h * self.dh, dim=-1)
        q, k, v = (t.view(B, self.h, self.dh) for t in (q, k, v))
        k_cache[:, :, pos] = k
        v_cache[:, :, pos] = v
        att = (q.unsqueeze(2) @ k_cache.transpose(-2, -1)).squeeze(2) / math.sqrt(self.dh)
        valid = ng.arange(self.max_len) <= pos  # the positions written so far
        att = att.masked_fill(~valid, float("-inf"))
        y = (F.softmax(att, dim=-1).unsqueeze(2) @ v_cache).squeeze(2).reshape(B, -1)
        return self.head(x + self.proj(y))


def decode(kind):
    def make():
        ng.set_default_dtype(ng.float32)
        model = CachedDecoder().eval()

        if kind == "pos_tensor":  # the position passed in as a 0-d tensor
            def step(tok, pos):
                with ng.no_grad():
                    logits = model.attend(tok, pos, model.k_cache, model.v_cache)
                return logits.argmax(-1), logits
            batches = [(None, ng.tensor(p)) for p in range(model.max_len)]
        elif kind == "pos_int":  # a Python int argument: static, one program per position
            def step(tok, pos):
                with ng.no_grad():
                    logits = model.attend(tok, pos, model.k_cache, model.v_cache)
                return logits.argmax(-1), logits
            batches = [(None, p) for p in range(model.max_len)]
        elif kind == "pos_buffer":  # a buffer advanced in place by the step
            def step(tok):
                with ng.no_grad():
                    logits = model.attend(tok, model.pos_t, model.k_cache, model.v_cache)
                    model.pos_t += 1
                return logits.argmax(-1), logits
            batches = [(None,) for _ in range(model.max_len)]
        elif kind == "pos_attr":  # a Python attribute advanced by the step
            def step(tok):
                with ng.no_grad():
                    logits = model.attend(tok, model.pos, model.k_cache, model.v_cache)
                model.pos += 1
                return logits.argmax(-1), logits
            batches = [(None,) for _ in range(model.max_len)]
        run = Run((model,), step, batches,
                  extra=lambda: [model.k_cache, model.v_cache, model.pos_t])
        return run
    return make


def greedy(make, jit, fuse=False):
    """Feed each call's argmax back in as the next token."""
    ng.manual_seed(0)
    run = make()
    step = ng.jit(run.step, state=run.state, fuse=fuse) if jit else run.step
    tok = ng.tensor(np.array([1, 5, 9]))
    snaps = []
    for rest in run.batches:
        tok, logits = step(tok, *rest[1:])
        snaps.append(_snapshot(run, (tok, logits)))
    return snaps, step


def _same_trajectories(ref, got, exact=True, rtol=1e-6):
    for i, (r, g) in enumerate(zip(ref, got)):
        assert len(r) == len(g)
        for k, (a, b) in enumerate(zip(r, g)):
            _close(a, b, exact, rtol, f"step {i}, value {k}")


@pytest.mark.parametrize("fuse", FUSE)
@pytest.mark.parametrize("kind", ["pos_tensor", "pos_int",
                                  "pos_buffer"])
def test_greedy_decode_kv_cache(kind, fuse):
    ref, _ = greedy(decode(kind), False)
    if kind == "pos_int":  # each position traces once: jit says to pass it as a tensor
        with pytest.warns(RuntimeWarning, match="ng.tensor"):
            got, j = greedy(decode(kind), True, fuse)
    else:
        got, j = greedy(decode(kind), True, fuse)
    _same_trajectories(ref, got, fuse is False)
    assert j.last.program is not None, j.last.reason
    assert j.traces == (CachedDecoder().max_len if kind == "pos_int" else 1)


def test_greedy_decode_position_tensor_is_read_on_each_call():
    # without the index as an input of the replay, such a step runs eagerly and says why
    ref, _ = greedy(decode("pos_tensor"), False)
    got, j = greedy(decode("pos_tensor"), True)
    _same_trajectories(ref, got)
    assert j.last.program is not None or "k_cache[:, :, pos] = k" in j.last.reason


def test_greedy_decode_position_as_python_attribute_runs_eagerly():
    # the step advanced ``model.pos``, a Python int: every replay wrote the traced position
    ref, _ = greedy(decode("pos_attr"), False)
    got, j = greedy(decode("pos_attr"), True)
    _same_trajectories(ref, got)
    assert j.last.program is None and "CachedDecoder.pos" in j.last.reason
