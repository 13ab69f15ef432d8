"""Language-model pretraining and fine-tuning loops in Hugging Face's plain-PyTorch style, ported
by changing only the imports.

Each program is written once against a library (``torch`` or ``nodegrad``) the way
``modeling_bert.py`` / ``modeling_electra.py`` / ``modeling_t5.py`` and their example trainers
write it: BERT's embeddings, extended attention masks and MLM/NSP heads with tied decoder
weights; the MLM collator's 80/10/10 masking; ELECTRA's generator and discriminator with Gumbel
sampling; T5's relative position buckets, RMS layer norm and span corruption; AdamW with
no-decay groups under a linear warmup schedule, gradient accumulation and clipping; fine-tuning
heads loaded with ``strict=False`` after growing the vocabulary. Both libraries start from
torch's weights and see the same data (random masks are drawn once with torch's generator and
handed to both), so losses, gradient norms, learning rates and parameters must agree.
"""

import io
import math

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

TOL = {"float64": 1e-9, "float32": 1e-4}


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy())


def _state(model) -> dict:
    return {k: _np(v).copy() for k, v in model.state_dict().items()}


def _load(model, sd: dict, lib) -> None:
    """Load numpy weights; nodegrad's state-dict keys, order and shapes must equal torch's."""
    if lib is ng:
        mine = model.state_dict()
        assert list(mine) == list(sd)
        assert [tuple(v.shape) for v in mine.values()] == [v.shape for v in sd.values()]
    model.load_state_dict({k: lib.tensor(v) for k, v in sd.items()})


def _close(a, b, tol, msg=""):
    np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float),
                               rtol=tol, atol=tol, err_msg=msg)


def _compare_runs(t_out: dict, n_out: dict, tol: float) -> None:
    assert list(t_out) == list(n_out)
    for k in t_out:
        if isinstance(t_out[k], dict):
            assert list(t_out[k]) == list(n_out[k]), k
            for kk in t_out[k]:
                _close(t_out[k][kk], n_out[k][kk], 10 * tol, f"{k}.{kk}")
        elif isinstance(t_out[k], (list, tuple)) and t_out[k] and isinstance(t_out[k][0], str):
            assert t_out[k] == n_out[k], k
        else:
            _close(t_out[k], n_out[k], tol, k)


# ---------------------------- shared: HF's activations and schedule ------------------------
def gelu_new(lib, x):
    """GPT/BERT's tanh approximation, written out as ``activations.NewGELUActivation``."""
    return 0.5 * x * (1.0 + lib.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * lib.pow(x, 3.0))))


def get_linear_schedule_with_warmup(lib, optimizer, num_warmup_steps, num_training_steps,
                                    last_epoch=-1):
    def lr_lambda(current_step: int):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step)
                   / float(max(1, num_training_steps - num_warmup_steps)))

    return lib.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda, last_epoch)


def adamw_groups(lib, model, lr=1e-3, weight_decay=0.01):
    no_decay = ["bias", "LayerNorm.weight"]
    grouped = [
        {"params": [p for n, p in model.named_parameters()
                    if not any(nd in n for nd in no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters()
                    if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    return lib.optim.AdamW(grouped, lr=lr, eps=1e-6, betas=(0.9, 0.98))


# ---------------------------- 1. BERT pretraining: MLM + NSP --------------------------------
V, D, H, L, T, FF = 30, 16, 4, 2, 9, 32
PAD, CLS, SEP, MASK = 0, 1, 2, 3


def bert_classes(lib, act="gelu", attn="eager"):
    nn, F = lib.nn, lib.nn.functional
    ACT2FN = {"gelu": F.gelu, "gelu_new": lambda x: gelu_new(lib, x), "relu": F.relu}

    class BertEmbeddings(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, D, padding_idx=PAD)
            self.position_embeddings = nn.Embedding(16, D)
            self.token_type_embeddings = nn.Embedding(2, D)
            self.LayerNorm = nn.LayerNorm(D, eps=1e-12)
            self.dropout = nn.Dropout(0.0)
            self.register_buffer("position_ids", lib.arange(16).expand((1, -1)),
                                 persistent=False)
            self.register_buffer("token_type_ids",
                                 lib.zeros(self.position_ids.size(), dtype=lib.long),
                                 persistent=False)

        def forward(self, input_ids, token_type_ids=None):
            seq_length = input_ids.size()[1]
            position_ids = self.position_ids[:, 0:seq_length]
            if token_type_ids is None:
                buffered = self.token_type_ids[:, :seq_length]
                token_type_ids = buffered.expand(input_ids.shape[0], seq_length)
            embeddings = (self.word_embeddings(input_ids)
                          + self.token_type_embeddings(token_type_ids))
            embeddings += self.position_embeddings(position_ids)
            return self.dropout(self.LayerNorm(embeddings))

    class BertSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_attention_heads = H
            self.attention_head_size = D // H
            self.all_head_size = D
            self.query = nn.Linear(D, D)
            self.key = nn.Linear(D, D)
            self.value = nn.Linear(D, D)
            self.dropout = nn.Dropout(0.0)

        def transpose_for_scores(self, x):
            new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
            return x.view(new_x_shape).permute(0, 2, 1, 3)

        def forward(self, hidden_states, attention_mask=None):
            q = self.transpose_for_scores(self.query(hidden_states))
            k = self.transpose_for_scores(self.key(hidden_states))
            v = self.transpose_for_scores(self.value(hidden_states))
            if attn == "sdpa":  # BertSdpaSelfAttention
                ctx = nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
                ctx = ctx.transpose(1, 2).reshape(hidden_states.size(0), -1, self.all_head_size)
                return ctx, None
            scores = lib.matmul(q, k.transpose(-1, -2))
            scores = scores / math.sqrt(self.attention_head_size)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = self.dropout(nn.functional.softmax(scores, dim=-1))
            ctx = lib.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
            return ctx.view(ctx.size()[:-2] + (self.all_head_size,)), probs

    class BertLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.ModuleDict({"self": BertSelfAttention()})
            self.attention.output = nn.ModuleDict({"dense": nn.Linear(D, D),
                                                   "LayerNorm": nn.LayerNorm(D, eps=1e-12)})
            self.intermediate = nn.ModuleDict({"dense": nn.Linear(D, FF)})
            self.output = nn.ModuleDict({"dense": nn.Linear(FF, D),
                                         "LayerNorm": nn.LayerNorm(D, eps=1e-12)})

        def forward(self, h, mask):
            a, probs = self.attention["self"](h, mask)
            o = self.attention.output
            h = o.LayerNorm(o.dense(a) + h)
            i = ACT2FN[act](self.intermediate.dense(h))
            return self.output.LayerNorm(self.output.dense(i) + h), probs

    class BertModel(nn.Module):
        def __init__(self, vocab=V, add_pooling_layer=True):
            super().__init__()
            self.embeddings = BertEmbeddings(vocab)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList([BertLayer() for _ in range(L)])
            self.pooler = None
            if add_pooling_layer:
                self.pooler = nn.Module()
                self.pooler.dense = nn.Linear(D, D)
                self.pooler.activation = nn.Tanh()

        def get_extended_attention_mask(self, attention_mask, dtype):
            if attn == "sdpa":  # ``_prepare_4d_attention_mask_for_sdpa``
                bsz, src_len = attention_mask.size()
                expanded_mask = attention_mask[:, None, None, :].expand(
                    bsz, 1, src_len, src_len).to(dtype)
                inverted_mask = 1.0 - expanded_mask
                return inverted_mask.masked_fill(inverted_mask.to(lib.bool),
                                                 lib.finfo(dtype).min)
            extended = attention_mask[:, None, None, :].to(dtype=dtype)
            return (1.0 - extended) * lib.finfo(dtype).min

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            if attention_mask is None:
                attention_mask = lib.ones(input_ids.shape, device=input_ids.device)
            h = self.embeddings(input_ids, token_type_ids)
            mask = self.get_extended_attention_mask(attention_mask, h.dtype)
            attentions = ()
            for layer in self.encoder.layer:
                h, probs = layer(h, mask)
                attentions = attentions + (probs,)
            pooled = None
            if self.pooler is not None:
                pooled = self.pooler.activation(self.pooler.dense(h[:, 0]))
            return {"last_hidden_state": h, "pooler_output": pooled, "attentions": attentions}

    class BertLMPredictionHead(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.transform = nn.Module()
            self.transform.dense = nn.Linear(D, D)
            self.transform.LayerNorm = nn.LayerNorm(D, eps=1e-12)
            self.decoder = nn.Linear(D, vocab, bias=False)
            self.bias = nn.Parameter(lib.zeros(vocab))
            self.decoder.bias = self.bias

        def forward(self, h):
            t = self.transform
            return self.decoder(t.LayerNorm(ACT2FN[act](t.dense(h))))

    class BertForPreTraining(nn.Module):
        def __init__(self, vocab=V):
            super().__init__()
            self.bert = BertModel(vocab)
            self.cls = nn.Module()
            self.cls.predictions = BertLMPredictionHead(vocab)
            self.cls.seq_relationship = nn.Linear(D, 2)
            self.apply(self._init_weights)
            self.tie_weights()

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                module.weight.data.normal_(mean=0.0, std=0.02)
                if module.bias is not None:
                    module.bias.data.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.data.normal_(mean=0.0, std=0.02)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.bias.data.zero_()
                module.weight.data.fill_(1.0)

        def tie_weights(self):
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

        def get_input_embeddings(self):
            return self.bert.embeddings.word_embeddings

        def resize_token_embeddings(self, new_num_tokens):
            old = self.get_input_embeddings()
            old_num, dim = old.weight.shape
            new = nn.Embedding(new_num_tokens, dim, padding_idx=old.padding_idx)
            new.to(old.weight.device, dtype=old.weight.dtype)
            self._init_weights(new)
            n = min(old_num, new_num_tokens)
            new.weight.data[:n, :] = old.weight.data[:n, :]
            added = new_num_tokens - old_num
            if added > 0:  # ``_init_added_embeddings_weights_with_mean``
                old_embeddings_weight = old.weight.data.to(lib.float32)
                mean_embeddings = lib.mean(old_embeddings_weight, axis=0)
                old_centered = old_embeddings_weight - mean_embeddings
                covariance = old_centered.T @ old_centered / old_num
                eigenvalues = lib.linalg.eigvals(covariance)
                is_covariance_psd = bool((covariance == covariance.T).all()
                                         and not lib.is_complex(eigenvalues)
                                         and (eigenvalues > 0).all())
                assert not is_covariance_psd  # eigvals is always complex: the mean is used
                new.weight.data[-1 * added:, :] = mean_embeddings[None, :].repeat(
                    added, 1).to(old.weight.dtype)
            self.bert.embeddings.word_embeddings = new
            head = self.cls.predictions
            old_bias = head.bias.data
            head.bias = nn.Parameter(lib.zeros(new_num_tokens, dtype=old_bias.dtype))
            head.bias.data[:n] = old_bias[:n]
            head.decoder.bias = head.bias
            head.decoder.out_features = new_num_tokens
            self.tie_weights()
            return new

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                    next_sentence_label=None):
            out = self.bert(input_ids, attention_mask, token_type_ids)
            prediction_scores = self.cls.predictions(out["last_hidden_state"])
            seq_relationship_score = self.cls.seq_relationship(out["pooler_output"])
            total_loss = None
            if labels is not None and next_sentence_label is not None:
                loss_fct = nn.CrossEntropyLoss()
                vocab = prediction_scores.size(-1)
                masked_lm_loss = loss_fct(prediction_scores.view(-1, vocab), labels.view(-1))
                next_sentence_loss = loss_fct(seq_relationship_score.view(-1, 2),
                                              next_sentence_label.view(-1))
                total_loss = masked_lm_loss + next_sentence_loss
            return total_loss, prediction_scores, seq_relationship_score

    class BertForSequenceClassification(nn.Module):
        def __init__(self, vocab=V, num_labels=3):
            super().__init__()
            self.num_labels = num_labels
            self.bert = BertModel(vocab)
            self.dropout = nn.Dropout(0.0)
            self.classifier = nn.Linear(D, num_labels)

        def forward(self, input_ids, attention_mask=None, labels=None):
            pooled_output = self.dropout(self.bert(input_ids, attention_mask)["pooler_output"])
            logits = self.classifier(pooled_output)
            loss = nn.CrossEntropyLoss(label_smoothing=0.1)(
                logits.view(-1, self.num_labels), labels.view(-1))
            return loss, logits

    class BertForTokenClassification(nn.Module):
        def __init__(self, vocab=V, num_labels=4):
            super().__init__()
            self.num_labels = num_labels
            self.bert = BertModel(vocab, add_pooling_layer=False)
            self.classifier = nn.Linear(D, num_labels)

        def forward(self, input_ids, attention_mask, labels):
            logits = self.classifier(self.bert(input_ids, attention_mask)["last_hidden_state"])
            loss_fct = nn.CrossEntropyLoss()
            active_loss = attention_mask.view(-1) == 1
            active_logits = logits.view(-1, self.num_labels)
            active_labels = lib.where(active_loss, labels.view(-1),
                                      lib.tensor(loss_fct.ignore_index).type_as(labels))
            return loss_fct(active_logits, active_labels), logits

    return (BertForPreTraining, BertForSequenceClassification, BertForTokenClassification,
            BertModel)


def _pair_data(n=16, seed=0):
    """Sentence pairs: [CLS] a [SEP] b [SEP] padded to T, segment ids, NSP labels."""
    r = np.random.default_rng(seed)
    ids = np.full((n, T), PAD, dtype=np.int64)
    tt = np.zeros((n, T), dtype=np.int64)
    att = np.zeros((n, T), dtype=np.int64)
    nsp = r.integers(0, 2, size=n)
    for i in range(n):
        la, lb = r.integers(1, 3, size=2) + (i % 2)
        a, b = r.integers(4, V, size=la), r.integers(4, V, size=lb)
        row = [CLS, *a, SEP, *b, SEP]
        ids[i, :len(row)] = row
        tt[i, la + 2:len(row)] = 1
        att[i, :len(row)] = 1
    return ids, tt, att, nsp


class TorchDraws:
    """Draws the collator's random tensors with a seeded torch generator once, then replays
    them (as ``lib`` tensors) so that both libraries mask the same positions."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.log: list = []
        self.i = 0

    def bernoulli(self, lib, probs):
        if lib is torch:
            out = torch.bernoulli(probs, generator=self.g)
            self.log.append(out.numpy().copy())
            return out
        out = self.log[self.i]
        self.i += 1
        return lib.tensor(out, dtype=probs.dtype)

    def randint(self, lib, high, size):
        if lib is torch:
            out = torch.randint(high, size, dtype=torch.long, generator=self.g)
            self.log.append(out.numpy().copy())
            return out
        out = self.log[self.i]
        self.i += 1
        return lib.tensor(out)

    def rand(self, lib, size, dtype):
        if lib is torch:
            out = torch.rand(size, dtype=dtype, generator=self.g)
            self.log.append(out.numpy().copy())
            return out
        out = self.log[self.i]
        self.i += 1
        return lib.tensor(out, dtype=dtype)


def torch_mask_tokens(lib, draws, inputs, special_tokens_mask, vocab=V, mlm_probability=0.15):
    """``DataCollatorForLanguageModeling.torch_mask_tokens``."""
    labels = inputs.clone()
    probability_matrix = lib.full(labels.shape, mlm_probability)
    probability_matrix.masked_fill_(special_tokens_mask, value=0.0)
    masked_indices = draws.bernoulli(lib, probability_matrix).bool()
    labels[~masked_indices] = -100
    indices_replaced = draws.bernoulli(lib, lib.full(labels.shape, 0.8)).bool() & masked_indices
    inputs[indices_replaced] = MASK
    indices_random = (draws.bernoulli(lib, lib.full(labels.shape, 0.5)).bool()
                      & masked_indices & ~indices_replaced)
    random_words = draws.randint(lib, vocab, labels.shape)
    inputs[indices_random] = random_words[indices_random]
    return inputs, labels


def _bert_pretrain(lib, init, dtype, draws, act="gelu", attn="eager", accumulation_steps=2,
                   steps=3, bs=4):
    dt = getattr(lib, dtype)
    lib.set_default_dtype(dt)
    try:
        Pre = bert_classes(lib, act, attn)[0]
        model = Pre().to(dt)
    finally:
        lib.set_default_dtype(lib.float32)
    _load(model, init, lib)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    ids, tt, att, nsp = _pair_data()
    optimizer = adamw_groups(lib, model)
    assert [len(g["params"]) for g in optimizer.param_groups] == [18, 28]
    total = steps
    scheduler = get_linear_schedule_with_warmup(lib, optimizer, 1, total)
    out = {"loss": [], "mlm_acc": [], "norm": [], "lr": [], "attn": []}
    model.train()
    model.zero_grad()
    for micro in range(steps * accumulation_steps):
        sl = slice((micro * bs) % len(ids), (micro * bs) % len(ids) + bs)
        input_ids = lib.tensor(ids[sl])
        attention_mask = lib.tensor(att[sl])
        special = (input_ids == PAD) | (input_ids == CLS) | (input_ids == SEP)
        # the special-token mask is built as HF's collator builds it: a Python list of lists
        special = lib.tensor([[bool(v) for v in row] for row in special.tolist()],
                             dtype=lib.bool)
        inputs, labels = torch_mask_tokens(lib, draws, input_ids.clone(), special)
        loss, scores, _ = model(inputs, attention_mask=attention_mask,
                                token_type_ids=lib.tensor(tt[sl]), labels=labels,
                                next_sentence_label=lib.tensor(nsp[sl]))
        loss = loss / accumulation_steps
        loss.backward()
        active = labels != -100
        hits = (scores.argmax(-1) == labels) & active
        out["mlm_acc"].append(hits.sum().item() / max(1, active.sum().item()))
        out["loss"].append(loss.item())
        if (micro + 1) % accumulation_steps == 0:
            norm = lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            out["norm"].append(norm.item())
            optimizer.step()
            scheduler.step()
            model.zero_grad()
            out["lr"].append([g["lr"] for g in optimizer.param_groups])
    with lib.no_grad():
        model.eval()
        res = model.bert(lib.tensor(ids[:3]), lib.tensor(att[:3]), lib.tensor(tt[:3]))
        out["attn"] = _np(res["attentions"][-1] if attn == "eager" else res["pooler_output"])
    out["state"] = _state(model)
    return out, model


def _bert_init(dtype="float64", act="gelu"):
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        m = bert_classes(torch, act)[0]()
    finally:
        torch.set_default_dtype(torch.float32)
    return _state(m)


@pytest.mark.parametrize("act,attn", [("gelu", "eager"), ("gelu_new", "sdpa")])
def test_bert_mlm_nsp_pretraining_matches_torch(act, attn):
    init = _bert_init(act=act)
    draws = TorchDraws(1)
    t_out, _ = _bert_pretrain(torch, init, "float64", draws, act, attn)
    n_out, _ = _bert_pretrain(ng, init, "float64", draws, act, attn)
    _compare_runs(t_out, n_out, TOL["float64"])
    if attn == "eager":  # padded keys get exactly zero attention
        assert np.all(n_out["attn"][:, :, :, -1][_pair_data()[2][:3, -1] == 0] == 0)


def test_bert_float32_pretraining_matches_torch():
    init = _bert_init("float32")
    draws = TorchDraws(2)
    t_out, _ = _bert_pretrain(torch, init, "float32", draws, steps=2)
    n_out, _ = _bert_pretrain(ng, init, "float32", draws, steps=2)
    _compare_runs(t_out, n_out, TOL["float32"])


# ---------------------------- 2. fine-tuning: grow the vocabulary, load strict=False --------
def _finetune(lib, init, dtype, path, head="sequence", steps=3):
    dt = getattr(lib, dtype)
    Pre, Seq, Tok, _ = bert_classes(lib)
    pre = Pre().to(dt)
    _load(pre, init, lib)
    new_tok = pre.resize_token_embeddings(V + 3)
    assert new_tok.weight.shape == (V + 3, D)
    assert pre.cls.predictions.decoder.weight is new_tok.weight
    mean = init["bert.embeddings.word_embeddings.weight"].astype(np.float32).mean(0)
    np.testing.assert_allclose(_np(new_tok.weight[V:]), np.tile(mean, (3, 1)), rtol=1e-6)
    if path is None:  # an in-memory checkpoint, as a notebook keeps one
        buffer = io.BytesIO()
        lib.save(pre.state_dict(), buffer)
        buffer.seek(0)
        sd = lib.load(buffer)
    else:
        lib.save(pre.state_dict(), path)
        sd = lib.load(path)
    sd = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in sd.items()}
    model = (Seq if head == "sequence" else Tok)(V + 3).to(dt)
    torch.manual_seed(1)
    head_init = {k: _np(v) for k, v in
                 (torch.nn.Linear(D, model.num_labels).to(getattr(torch, dtype))
                  .state_dict().items())}
    with lib.no_grad():
        model.classifier.weight.copy_(lib.tensor(head_init["weight"]))
        model.classifier.bias.copy_(lib.tensor(head_init["bias"]))
    result = model.bert.load_state_dict(sd, strict=False)
    out = {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys),
           "loss": [], "lr": [], "norm": []}
    ids, _, att, nsp = _pair_data(seed=3)
    ids[ids == 5] = V + 1  # the new tokens appear in the fine-tuning data
    optimizer = adamw_groups(lib, model, lr=5e-3)
    scheduler = get_linear_schedule_with_warmup(lib, optimizer, 0, steps)
    for step in range(steps):
        x, m = lib.tensor(ids[step * 4:step * 4 + 4]), lib.tensor(att[step * 4:step * 4 + 4])
        if head == "sequence":
            y = lib.tensor(nsp[step * 4:step * 4 + 4] + (ids[step * 4:step * 4 + 4, 1] > 15))
        else:
            y = lib.tensor(ids[step * 4:step * 4 + 4] % 4)
            y[m == 0] = 0  # whatever the padded labels hold, active-loss selection drops them
        loss, _ = model(x, m, y)
        loss.backward()
        out["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5,
                                                        norm_type=2.0).item())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        out["loss"].append(loss.item())
        out["lr"].append(scheduler.get_last_lr())
    out["state"] = _state(model)
    return out


@pytest.mark.parametrize("head,in_memory", [("sequence", True), ("token", False)])
def test_bert_finetuning_after_resize_matches_torch(head, in_memory, tmp_path):
    init = _bert_init()
    t_out = _finetune(torch, init, "float64", None if in_memory else tmp_path / "t.pt", head)
    n_out = _finetune(ng, init, "float64", None if in_memory else tmp_path / "n.st", head)
    assert n_out["missing"] == t_out["missing"] == []
    assert t_out["unexpected"] == n_out["unexpected"]
    assert "cls.seq_relationship.weight" in n_out["unexpected"]
    _compare_runs(t_out, n_out, TOL["float64"])


def test_save_and_load_take_a_binary_file_object():
    """``torch.save(sd, buffer)`` / ``torch.load(buffer)``: tied weights stay one tensor."""
    m = ng.nn.Linear(2, 3)
    buffer = io.BytesIO()
    ng.save({"w": m.weight, "tied": m.weight, "opt": {"b": m.bias, "step": 3}}, buffer)
    buffer.seek(0)
    sd = ng.load(buffer)
    assert sd["w"] is sd["tied"] and sd["opt"]["step"] == 3
    np.testing.assert_array_equal(sd["opt"]["b"].numpy(), m.bias.detach().numpy())
    with pytest.raises(TypeError, match="save: expected a path or a binary file object"):
        ng.save({"w": m.weight}, 3)
    with pytest.raises(TypeError, match="load: the file object must be opened in binary"):
        ng.load(io.StringIO("text"))


# ---------------------------- 3. ELECTRA: generator, Gumbel sampling, discriminator ---------
def electra_classes(lib):
    nn, F = lib.nn, lib.nn.functional
    BertModel = bert_classes(lib, "gelu")[3]

    class ElectraGeneratorPredictions(nn.Module):
        def __init__(self):
            super().__init__()
            self.LayerNorm = nn.LayerNorm(D, eps=1e-12)
            self.dense = nn.Linear(D, D)

        def forward(self, h):
            return self.LayerNorm(F.gelu(self.dense(h)))

    class ElectraDiscriminatorPredictions(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(D, D)
            self.dense_prediction = nn.Linear(D, 1)

        def forward(self, h):
            return self.dense_prediction(gelu_new(lib, self.dense(h))).squeeze(-1)

    class ElectraPretraining(nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = BertModel(add_pooling_layer=False)
            self.generator_predictions = ElectraGeneratorPredictions()
            self.generator_lm_head = nn.Linear(D, V)
            self.discriminator = BertModel(add_pooling_layer=False)
            self.discriminator_predictions = ElectraDiscriminatorPredictions()
            # the generator and the discriminator share the embeddings; the LM head is tied
            self.discriminator.embeddings = self.generator.embeddings
            self.generator_lm_head.weight = self.generator.embeddings.word_embeddings.weight

        def forward(self, masked_ids, attention_mask, labels, gumbel_noise):
            gen = self.generator(masked_ids, attention_mask)["last_hidden_state"]
            gen_logits = self.generator_lm_head(self.generator_predictions(gen))
            is_mlm_applied = labels != -100
            gen_loss = F.cross_entropy(gen_logits[is_mlm_applied], labels[is_mlm_applied])
            with lib.no_grad():
                logits = gen_logits[is_mlm_applied]
                sampled = (logits + gumbel_noise(logits)).argmax(dim=-1)
                generated = masked_ids.clone()
                generated[is_mlm_applied] = sampled
                is_replaced = is_mlm_applied.clone()
                is_replaced[is_mlm_applied] = sampled != labels[is_mlm_applied]
            disc = self.discriminator(generated, attention_mask)["last_hidden_state"]
            disc_logits = self.discriminator_predictions(disc)
            active = attention_mask == 1
            # ``.float()`` in the float32 original; nodegrad refuses float32 targets with float64
            # logits (documented: it never promotes floats silently), so the dtype is named
            disc_loss = F.binary_cross_entropy_with_logits(
                disc_logits[active], is_replaced[active].to(disc_logits.dtype))
            return gen_loss, disc_loss, disc_logits, generated, is_replaced

    return ElectraPretraining


def get_parameter_names(model, forbidden_layer_types):
    """``trainer_pt_utils.get_parameter_names``: names of parameters not inside the
    forbidden layer types (it reads the private ``_parameters`` mapping)."""
    result = []
    for name, child in model.named_children():
        result += [f"{name}.{n}" for n in get_parameter_names(child, forbidden_layer_types)
                   if not isinstance(child, tuple(forbidden_layer_types))]
    result += list(model._parameters.keys())
    return result


def trainer_optimizer(lib, model, lr, weight_decay=0.01):
    """``Trainer.create_optimizer``: no decay for biases and every LayerNorm's parameters."""
    decay_parameters = get_parameter_names(model, [lib.nn.LayerNorm])
    decay_parameters = [name for name in decay_parameters if "bias" not in name]
    optimizer_grouped_parameters = [
        {"params": [p for n, p in model.named_parameters()
                    if (n in decay_parameters and p.requires_grad)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters()
                    if (n not in decay_parameters and p.requires_grad)],
         "weight_decay": 0.0},
    ]
    optimizer_kwargs = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8}
    return lib.optim.AdamW(optimizer_grouped_parameters, **optimizer_kwargs)


def _electra(lib, init, dtype, draws, steps=3, bs=4):
    dt = getattr(lib, dtype)
    model = electra_classes(lib)().to(dt)
    _load(model, init, lib)
    assert len(list(model.parameters())) == len(init) - 6  # shared embeddings, tied head
    ids, _, att, _ = _pair_data(seed=5)
    optimizer = trainer_optimizer(lib, model, lr=2e-3)
    assert [len(g["params"]) for g in optimizer.param_groups] == [30, 48]
    scheduler = get_linear_schedule_with_warmup(lib, optimizer, 1, steps)

    def gumbel_noise(logits):  # drawn once per step, from torch's generator
        u = draws.rand(lib, tuple(logits.shape), logits.dtype)
        return -lib.log(-lib.log(u + 1e-9) + 1e-9)

    out = {"gen": [], "disc": [], "replaced": [], "acc": [], "norm": [], "lr": []}
    for step in range(steps):
        input_ids = lib.tensor(ids[step * bs:(step + 1) * bs])
        attention_mask = lib.tensor(att[step * bs:(step + 1) * bs])
        special = (input_ids == PAD) | (input_ids == CLS) | (input_ids == SEP)
        masked, labels = torch_mask_tokens(lib, draws, input_ids.clone(), special)
        gen_loss, disc_loss, disc_logits, generated, is_replaced = model(
            masked, attention_mask, labels, gumbel_noise)
        loss = gen_loss + 50.0 * disc_loss
        optimizer.zero_grad()
        loss.backward()
        out["norm"].append(float(lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        optimizer.step()
        scheduler.step()
        replaced = generated != input_ids
        # a sampled token equal to the original is not "replaced" (ELECTRA's labels)
        assert bool((replaced == is_replaced).all())
        preds = (lib.sigmoid(disc_logits) > 0.5).long()
        correct = (preds == replaced.long()) & (attention_mask == 1)
        out["acc"].append(correct.sum().item() / attention_mask.sum().item())
        out["replaced"].append(_np(replaced.long()))
        out["gen"].append(gen_loss.item())
        out["disc"].append(disc_loss.item())
        out["lr"].append(scheduler.get_last_lr())
    out["replaced"] = np.concatenate(out["replaced"])
    out["state"] = _state(model)
    return out


def test_electra_replaced_token_detection_matches_torch():
    torch.manual_seed(0)
    init = _state(electra_classes(torch)().double())
    draws = TorchDraws(7)
    t_out = _electra(torch, init, "float64", draws)
    n_out = _electra(ng, init, "float64", draws)
    assert t_out["replaced"].sum() > 0
    _compare_runs(t_out, n_out, TOL["float64"])


# ---------------------------- 4. T5: relative position buckets, span corruption -------------
def _relative_position_bucket(lib, relative_position, bidirectional=True, num_buckets=32,
                              max_distance=128):
    """``T5Attention._relative_position_bucket``, line for line."""
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(lib.long) * num_buckets
        relative_position = lib.abs(relative_position)
    else:
        relative_position = -lib.min(relative_position, lib.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        lib.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(lib.long)
    relative_position_if_large = lib.min(
        relative_position_if_large, lib.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += lib.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_relative_position_buckets_match_torch(bidirectional):
    def buckets(lib):
        context_position = lib.arange(200, dtype=lib.long)[:, None]
        memory_position = lib.arange(0, 200, 3, dtype=lib.long)[None, :]
        relative_position = memory_position - context_position
        return _np(_relative_position_bucket(lib, relative_position, bidirectional))

    expect = buckets(torch)
    got = buckets(ng)
    assert got.dtype == expect.dtype == np.int64
    np.testing.assert_array_equal(got, expect)


T5V, NB, MAXD = 40, 8, 20  # the last 4 ids are the sentinels <extra_id_3> ... <extra_id_0>
T5_PAD, T5_EOS = 0, 1


def t5_classes(lib):
    nn, F = lib.nn, lib.nn.functional

    class T5LayerNorm(nn.Module):
        def __init__(self, hidden_size, eps=1e-6):
            """Scale only: no bias and no mean subtraction (RMS norm)."""
            super().__init__()
            self.weight = nn.Parameter(lib.ones(hidden_size))
            self.variance_epsilon = eps

        def forward(self, hidden_states):
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            hidden_states = hidden_states * lib.rsqrt(variance + self.variance_epsilon)
            if self.weight.dtype in [lib.float16, lib.bfloat16]:
                hidden_states = hidden_states.to(self.weight.dtype)
            return self.weight * hidden_states

    class T5Attention(nn.Module):
        def __init__(self, is_decoder, has_relative_attention_bias):
            super().__init__()
            self.is_decoder = is_decoder
            self.has_relative_attention_bias = has_relative_attention_bias
            self.q = nn.Linear(D, D, bias=False)
            self.k = nn.Linear(D, D, bias=False)
            self.v = nn.Linear(D, D, bias=False)
            self.o = nn.Linear(D, D, bias=False)
            if self.has_relative_attention_bias:
                self.relative_attention_bias = nn.Embedding(NB, H)

        def compute_bias(self, query_length, key_length):
            device = self.relative_attention_bias.weight.device
            context_position = lib.arange(query_length, dtype=lib.long, device=device)[:, None]
            memory_position = lib.arange(key_length, dtype=lib.long, device=device)[None, :]
            relative_position = memory_position - context_position
            bucket = _relative_position_bucket(lib, relative_position,
                                               bidirectional=(not self.is_decoder),
                                               num_buckets=NB, max_distance=MAXD)
            values = self.relative_attention_bias(bucket)
            return values.permute([2, 0, 1]).unsqueeze(0)

        def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None):
            batch_size, seq_length = hidden_states.shape[:2]
            kv = hidden_states if key_value_states is None else key_value_states

            def shape(states):
                return states.view(batch_size, -1, H, D // H).transpose(1, 2)

            q, k, v = shape(self.q(hidden_states)), shape(self.k(kv)), shape(self.v(kv))
            scores = lib.matmul(q, k.transpose(3, 2))  # no 1/sqrt(d): folded into the init
            if position_bias is None:
                if not self.has_relative_attention_bias:
                    position_bias = lib.zeros((1, H, seq_length, k.shape[2]),
                                              device=scores.device, dtype=scores.dtype)
                else:
                    position_bias = self.compute_bias(seq_length, k.shape[2])
                if mask is not None:
                    position_bias = position_bias + mask
            scores += position_bias
            attn_weights = F.softmax(scores.float(), dim=-1).type_as(scores)
            out = lib.matmul(attn_weights, v).transpose(1, 2).contiguous()
            return self.o(out.view(batch_size, -1, D)), position_bias

    class T5DenseActDense(nn.Module):
        def __init__(self):
            super().__init__()
            self.wi = nn.Linear(D, FF, bias=False)
            self.wo = nn.Linear(FF, D, bias=False)
            self.act = nn.ReLU()

        def forward(self, h):
            return self.wo(self.act(self.wi(h)))

    class T5Block(nn.Module):
        def __init__(self, is_decoder, has_bias):
            super().__init__()
            self.is_decoder = is_decoder
            self.layer = nn.ModuleList([nn.ModuleDict({
                "SelfAttention": T5Attention(is_decoder, has_bias),
                "layer_norm": T5LayerNorm(D)})])
            if is_decoder:
                self.layer.append(nn.ModuleDict({"EncDecAttention": T5Attention(True, False),
                                                 "layer_norm": T5LayerNorm(D)}))
            self.layer.append(nn.ModuleDict({"DenseReluDense": T5DenseActDense(),
                                             "layer_norm": T5LayerNorm(D)}))

        def forward(self, h, mask, bias, enc=None, enc_mask=None, enc_bias=None):
            a, bias = self.layer[0]["SelfAttention"](self.layer[0]["layer_norm"](h), mask,
                                                     position_bias=bias)
            h = h + a
            if self.is_decoder:
                c, enc_bias = self.layer[1]["EncDecAttention"](
                    self.layer[1]["layer_norm"](h), enc_mask, key_value_states=enc,
                    position_bias=enc_bias)
                h = h + c
            ff = self.layer[-1]
            return h + ff["DenseReluDense"](ff["layer_norm"](h)), bias, enc_bias

    class T5Stack(nn.Module):
        def __init__(self, embed_tokens, is_decoder, n_layers=2):
            super().__init__()
            self.embed_tokens = embed_tokens
            self.is_decoder = is_decoder
            self.block = nn.ModuleList([T5Block(is_decoder, i == 0) for i in range(n_layers)])
            self.final_layer_norm = T5LayerNorm(D)

        def forward(self, input_ids, attention_mask, enc=None, enc_mask=None):
            h = self.embed_tokens(input_ids)
            dtype = h.dtype
            B, S = input_ids.shape
            mask = attention_mask[:, None, None, :].to(dtype)
            if self.is_decoder:
                seq_ids = lib.arange(S, device=input_ids.device)
                causal = seq_ids[None, None, :].repeat(B, S, 1) <= seq_ids[None, :, None]
                mask = causal[:, None, :, :].to(dtype) * mask
            mask = (1.0 - mask) * lib.finfo(dtype).min
            if enc_mask is not None:
                enc_mask = (1.0 - enc_mask[:, None, None, :].to(dtype)) * lib.finfo(dtype).min
            bias = enc_bias = None
            for block in self.block:
                h, bias, enc_bias = block(h, mask, bias, enc, enc_mask, enc_bias)
            return self.final_layer_norm(h)

    class T5ForConditionalGeneration(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Embedding(T5V, D)
            self.encoder = T5Stack(self.shared, False)
            self.decoder = T5Stack(self.shared, True)
            self.lm_head = nn.Linear(D, T5V, bias=False)
            self.lm_head.weight = self.shared.weight

        def _shift_right(self, input_ids):
            shifted_input_ids = input_ids.new_zeros(input_ids.shape)
            shifted_input_ids[..., 1:] = input_ids[..., :-1].clone()
            shifted_input_ids[..., 0] = T5_PAD  # decoder_start_token_id
            shifted_input_ids.masked_fill_(shifted_input_ids == -100, T5_PAD)
            return shifted_input_ids

        def forward(self, input_ids, attention_mask, labels, loss_kind="mean"):
            enc = self.encoder(input_ids, attention_mask)
            decoder_input_ids = self._shift_right(labels)
            dec = self.decoder(decoder_input_ids, decoder_input_ids != T5_PAD, enc,
                               attention_mask)
            lm_logits = self.lm_head(dec * (D ** -0.5))  # tied embeddings: rescale
            flat, target = lm_logits.view(-1, lm_logits.size(-1)), labels.view(-1)
            if loss_kind == "mean":
                loss = nn.CrossEntropyLoss(ignore_index=-100)(flat, target)
            elif loss_kind == "smooth":
                loss = F.cross_entropy(flat, target, ignore_index=-100, label_smoothing=0.1)
            elif loss_kind == "label_smoother":
                loss = label_smoother(lib, lm_logits, labels)
            else:  # a per-token sum over the batch's target tokens
                num_tokens = (labels != -100).sum()
                loss = F.cross_entropy(flat, target, ignore_index=-100,
                                       reduction="sum") / num_tokens
            return loss, lm_logits

    return T5ForConditionalGeneration


def label_smoother(lib, logits, labels, epsilon=0.1, ignore_index=-100):
    """``trainer_pt_utils.LabelSmoother.__call__``: the smoothed sum accumulates in float32."""
    log_probs = -lib.nn.functional.log_softmax(logits, dim=-1)
    if labels.dim() == log_probs.dim() - 1:
        labels = labels.unsqueeze(-1)
    padding_mask = labels.eq(ignore_index)
    labels = lib.clamp(labels, min=0)
    nll_loss = log_probs.gather(dim=-1, index=labels)
    smoothed_loss = log_probs.sum(dim=-1, keepdim=True, dtype=lib.float32)
    nll_loss.masked_fill_(padding_mask, 0.0)
    smoothed_loss.masked_fill_(padding_mask, 0.0)
    num_active_elements = padding_mask.numel() - padding_mask.long().sum()
    nll_loss = nll_loss.sum() / num_active_elements
    smoothed_loss = smoothed_loss.sum() / (num_active_elements * log_probs.shape[-1])
    return (1 - epsilon) * nll_loss + epsilon * smoothed_loss


def create_sentinel_ids(lib, mask_indices):
    """``FlaxDataCollatorForT5MLM.create_sentinel_ids`` on tensors: each noise span's first
    token gets the next sentinel id (counting down from the vocabulary's end), the rest -1."""
    start_indices = mask_indices - lib.roll(mask_indices, 1, dims=-1) & mask_indices
    start_indices[:, 0] = mask_indices[:, 0]
    sentinel_ids = lib.where(start_indices != 0, lib.cumsum(start_indices, dim=-1),
                             start_indices)
    sentinel_ids = lib.where(sentinel_ids != 0, (T5V - sentinel_ids), 0)
    sentinel_ids -= mask_indices - start_indices
    return sentinel_ids


def filter_input_ids(lib, input_ids, sentinel_ids):
    batch_size = input_ids.shape[0]
    input_ids_full = lib.where(sentinel_ids != 0, sentinel_ids, input_ids)
    input_ids = input_ids_full[input_ids_full >= 0].reshape((batch_size, -1))
    eos = lib.full((batch_size, 1), T5_EOS, dtype=input_ids.dtype)
    return lib.cat([input_ids, eos], dim=-1)


def _span_batches(n=12, T5L=10, seed=0):
    """Token rows and span-noise masks (two spans, three noise tokens per row, shifted by a
    torch draw), so that every row corrupts to the same length."""
    g = torch.Generator().manual_seed(seed)
    r = np.random.default_rng(seed)
    ids = r.integers(2, T5V - 4, size=(n, T5L))
    base = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    shifts = torch.randint(0, 2, (n,), generator=g).numpy()
    masks = np.stack([np.roll(base, s) for s in shifts])
    return ids, masks


def _t5(lib, init, dtype, loss_kind, steps=3, bs=4):
    dt = getattr(lib, dtype)
    model = t5_classes(lib)().to(dt)
    _load(model, init, lib)
    optimizer = adamw_groups(lib, model, lr=3e-3)
    scheduler = get_linear_schedule_with_warmup(lib, optimizer, 1, steps)
    ids, masks = _span_batches()
    out = {"loss": [], "inputs": [], "labels": [], "norm": [], "lr": [], "grad": []}
    for step in range(steps):
        sl = slice(step * bs, (step + 1) * bs)
        input_ids = lib.tensor(ids[sl])
        mask_indices = lib.tensor(masks[sl])
        labels_mask = 1 - mask_indices
        input_ids_sentinel = create_sentinel_ids(lib, mask_indices)
        labels_sentinel = create_sentinel_ids(lib, labels_mask)
        inputs = filter_input_ids(lib, input_ids, input_ids_sentinel)
        labels = filter_input_ids(lib, input_ids, labels_sentinel)
        # pad the targets to a common length with -100, as DataCollatorForSeq2Seq pads them
        labels = lib.nn.utils.rnn.pad_sequence(
            [row[:len(row) - (i % 2)] for i, row in enumerate(labels)], batch_first=True,
            padding_value=-100)
        out["inputs"].append(_np(inputs))
        out["labels"].append(_np(labels))
        attention_mask = lib.ones_like(inputs)
        loss, _ = model(inputs, attention_mask, labels, loss_kind)
        loss.backward()
        out["grad"].append(_np(model.encoder.block[0].layer[0]["SelfAttention"]
                               .relative_attention_bias.weight.grad))
        out["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        out["loss"].append(loss.item())
        out["lr"].append(scheduler.get_last_lr())
    out["state"] = _state(model)
    return out


@pytest.mark.parametrize("loss_kind", ["mean", "smooth", "sum_over_tokens"])
def test_t5_span_corruption_pretraining_matches_torch(loss_kind):
    torch.manual_seed(0)
    init = _state(t5_classes(torch)().double())
    t_out = _t5(torch, init, "float64", loss_kind)
    n_out = _t5(ng, init, "float64", loss_kind)
    assert t_out["inputs"][0].shape == (4, 10 - 3 + 2 + 1)
    assert (t_out["inputs"][0] >= T5V - 2).sum() == 8  # two sentinels per row
    _compare_runs(t_out, n_out, TOL["float64"])


def test_t5_float32_with_the_trainers_label_smoother_matches_torch():
    torch.manual_seed(0)
    init = _state(t5_classes(torch)())
    t_out = _t5(torch, init, "float32", "label_smoother", steps=2)
    n_out = _t5(ng, init, "float32", "label_smoother", steps=2)
    _compare_runs(t_out, n_out, TOL["float32"])


# ---------------------------- 5. Trainer-style checkpoint and resume -----------------------
def _resume(lib, init, folder, resume_at=2, steps=4, bs=4):
    """Train, save model/optimizer/scheduler as the Trainer saves them, rebuild everything,
    load, and go on; the resumed run must retrace the uninterrupted one."""
    Pre = bert_classes(lib)[0]
    ids, tt, att, nsp = _pair_data(seed=9)
    labels_all = np.where(ids > SEP, ids, -100)

    def build():
        model = Pre().double()
        optimizer = adamw_groups(lib, model, lr=2e-3)
        scheduler = get_linear_schedule_with_warmup(lib, optimizer, 1, steps)
        return model, optimizer, scheduler

    def train_step(model, optimizer, scheduler, step):
        sl = slice(step * bs, (step + 1) * bs)
        loss, _, _ = model(lib.tensor(ids[sl]), lib.tensor(att[sl]), lib.tensor(tt[sl]),
                           labels=lib.tensor(labels_all[sl]),
                           next_sentence_label=lib.tensor(nsp[sl]))
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return loss.item()

    model, optimizer, scheduler = build()
    _load(model, init, lib)
    losses = [train_step(model, optimizer, scheduler, s) for s in range(resume_at)]
    ext = "pt" if lib is torch else "safetensors"
    lib.save(model.state_dict(), folder / f"model.{ext}")
    lib.save(optimizer.state_dict(), folder / f"optimizer.{ext}")
    lib.save(scheduler.state_dict(), folder / f"scheduler.{ext}")
    straight = losses + [train_step(model, optimizer, scheduler, s)
                         for s in range(resume_at, steps)]
    final = _state(model)

    model, optimizer, scheduler = build()
    model.load_state_dict(lib.load(folder / f"model.{ext}"))
    optimizer.load_state_dict(lib.load(folder / f"optimizer.{ext}"))
    scheduler.load_state_dict(lib.load(folder / f"scheduler.{ext}"))
    lrs = [scheduler.get_last_lr(), [g["lr"] for g in optimizer.param_groups]]
    resumed = losses + [train_step(model, optimizer, scheduler, s)
                        for s in range(resume_at, steps)]
    np.testing.assert_allclose(resumed, straight, rtol=1e-12, atol=1e-12)
    for k, v in _state(model).items():
        np.testing.assert_allclose(v, final[k], rtol=1e-12, atol=1e-12, err_msg=k)
    return {"loss": straight, "lr": lrs, "state": final,
            "step": [int(optimizer.state_dict()["state"][0]["step"])]}


def test_trainer_checkpoint_resume_matches_torch(tmp_path):
    init = _bert_init()
    (tmp_path / "t").mkdir()
    (tmp_path / "n").mkdir()
    t_out = _resume(torch, init, tmp_path / "t")
    n_out = _resume(ng, init, tmp_path / "n")
    _compare_runs(t_out, n_out, TOL["float64"])


# ---------------------------- 6. BiLSTM-CRF tagger over packed sequences -------------------
K_TAGS = 5  # the last two are START and STOP


def bilstm_crf_classes(lib):
    nn = lib.nn
    START, STOP = K_TAGS - 2, K_TAGS - 1

    class BiLSTMCRF(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(V, 8, padding_idx=PAD)
            self.lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
            self.hidden2tag = nn.Linear(12, K_TAGS)
            self.transitions = nn.Parameter(lib.randn(K_TAGS, K_TAGS))  # [to, from]
            self.transitions.data[START, :] = -10000.0
            self.transitions.data[:, STOP] = -10000.0

        def emissions(self, words, lengths):
            # sort by length for enforce_sorted=True, unsort afterwards
            sorted_lengths, perm = lengths.sort(0, descending=True)
            packed = nn.utils.rnn.pack_padded_sequence(self.embedding(words[perm]),
                                                       sorted_lengths.cpu(), batch_first=True)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                      total_length=words.size(1))
            _, unperm = perm.sort(0)
            return self.hidden2tag(out.index_select(0, unperm))

        def forward_algorithm(self, feats, mask):
            B = feats.size(0)
            alpha = lib.full((B, K_TAGS), -10000.0, dtype=feats.dtype)
            alpha[:, START] = 0.0
            for t in range(feats.size(1)):
                scores = alpha.unsqueeze(1) + self.transitions.unsqueeze(0) + feats[:, t, :, None]
                new_alpha = lib.logsumexp(scores, dim=2)
                m = mask[:, t].unsqueeze(1)
                alpha = new_alpha * m + alpha * (1 - m)
            return lib.logsumexp(alpha + self.transitions[STOP].unsqueeze(0), dim=1)

        def gold_score(self, feats, tags, mask):
            B, T = tags.shape
            start = lib.full((B, 1), START, dtype=lib.long)
            prev = lib.cat([start, tags[:, :-1]], dim=1)
            trans = self.transitions[tags, prev]
            emit = feats.gather(2, tags.unsqueeze(2)).squeeze(2)
            score = ((trans + emit) * mask).sum(1)
            last = tags.gather(1, (mask.sum(1).long() - 1).unsqueeze(1)).squeeze(1)
            return score + self.transitions[STOP, last]

        def neg_log_likelihood(self, words, tags, lengths):
            feats = self.emissions(words, lengths)
            mask = (words != PAD).to(feats.dtype)
            return (self.forward_algorithm(feats, mask) - self.gold_score(feats, tags, mask)).mean()

        def viterbi_decode(self, words, lengths):
            feats = self.emissions(words, lengths)
            paths, scores = [], []
            for b in range(words.size(0)):
                v = lib.full((K_TAGS,), -10000.0, dtype=feats.dtype)
                v[START] = 0
                backpointers = []
                for t in range(int(lengths[b])):
                    best, idx = (v.unsqueeze(0) + self.transitions).max(dim=1)
                    backpointers.append(idx)
                    v = best + feats[b, t]
                terminal = v + self.transitions[STOP]
                best_score, best_tag = terminal.max(0)
                path = [best_tag.item()]
                for bp in reversed(backpointers[1:]):
                    path.append(bp[path[-1]].item())
                paths.append(path[::-1])
                scores.append(best_score.item())
            return paths, scores

    return BiLSTMCRF


def _bilstm_crf(lib, init, steps=4):
    model = bilstm_crf_classes(lib)().double()
    _load(model, init, lib)
    r = np.random.default_rng(4)
    lens = [6, 2, 5, 3, 4, 6]
    words = [lib.tensor(r.integers(4, V, size=n)) for n in lens]
    tags = [lib.tensor(r.integers(0, K_TAGS - 2, size=n)) for n in lens]
    x = lib.nn.utils.rnn.pad_sequence(words, batch_first=True, padding_value=PAD)
    y = lib.nn.utils.rnn.pad_sequence(tags, batch_first=True, padding_value=0)
    lengths = lib.tensor(lens)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-4)
    out = {"loss": [], "norm": []}
    for _ in range(steps):
        model.zero_grad()
        loss = model.neg_log_likelihood(x, y, lengths)
        loss.backward()
        out["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), 5.0).item())
        optimizer.step()
        out["loss"].append(loss.item())
    with lib.no_grad():
        paths, scores = model.viterbi_decode(x, lengths)
    assert [len(p) for p in paths] == lens
    out["paths"] = np.concatenate(paths)
    out["scores"] = scores
    out["state"] = _state(model)
    return out


def test_bilstm_crf_over_packed_sequences_matches_torch():
    torch.manual_seed(0)
    init = _state(bilstm_crf_classes(torch)().double())
    _compare_runs(_bilstm_crf(torch, init), _bilstm_crf(ng, init), TOL["float64"])


def test_t5_layer_norm_float32_variance_in_a_float64_model_is_refused():
    """Today's ``T5LayerNorm`` takes the variance in float32 (``hidden.to(torch.float32)``);
    PyTorch then promotes ``float64 * float32`` to float64, nodegrad refuses (documented: it
    never upcasts floats silently). In float32 both agree."""

    def t5_layer_norm(lib, hidden_states, weight, eps=1e-6):
        variance = hidden_states.to(lib.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * lib.rsqrt(variance + eps)
        if weight.dtype in [lib.float16, lib.bfloat16]:
            hidden_states = hidden_states.to(weight.dtype)
        return weight * hidden_states

    x = np.random.default_rng(0).standard_normal((2, 3, 8))
    w = np.linspace(0.5, 1.5, 8)
    with pytest.raises(ng.DTypeError, match="mixed float dtypes"):
        t5_layer_norm(ng, ng.tensor(x), ng.tensor(w))
    expect = t5_layer_norm(torch, torch.tensor(x, dtype=torch.float32),
                           torch.tensor(w, dtype=torch.float32))
    got = t5_layer_norm(ng, ng.tensor(x, dtype=ng.float32), ng.tensor(w, dtype=ng.float32))
    assert got.dtype == ng.float32
    _close(_np(expect), _np(got), 1e-6)


def test_jit_fused_bert_forward_with_unused_inputs_replays_as_eager(monkeypatch):
    """A fused kernel's laid-out result (the attention mask's bool ``== -inf`` rows) and a
    loaded weight whose instruction index equals that result's slot number once shared a name
    for their dtypes in the replayed program: the result then got the weight's float64 dtype
    under the bool strides (overlapping elements), and every replay went wrong."""
    pytest.importorskip("numba")
    empty = np.empty

    def nan_empty(shape, dtype=float, *args, **kwargs):  # unwritten memory shows as NaN
        out = empty(shape, dtype, *args, **kwargs)
        if np.dtype(dtype).kind == "f":
            out.fill(np.nan)
        return out

    monkeypatch.setattr(np, "empty", nan_empty)
    init = _bert_init()
    ids, tt, att, nsp = _pair_data()
    model = bert_classes(ng, "gelu", "sdpa")[0]().double()
    _load(model, init, ng)

    def f(input_ids, attention_mask, token_type_ids, labels, next_sentence_label):
        return model.bert(input_ids, attention_mask, token_type_ids)["last_hidden_state"]

    def call(fn, i):
        sl = slice(i * 4, i * 4 + 4)
        return _np(fn(ng.tensor(ids[sl]), ng.tensor(att[sl]), ng.tensor(tt[sl]),
                      ng.tensor(ids[sl]), ng.tensor(nsp[sl])))

    jitted = ng.jit(f, fuse=True)
    for i in (0, 1, 2, 1):
        np.testing.assert_allclose(call(jitted, i), call(f, i), rtol=1e-12, atol=1e-12)
