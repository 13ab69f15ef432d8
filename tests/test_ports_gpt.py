"""nanoGPT's model and training loop, and makemore's bigram, MLP, hand-written BatchNorm and
manual backward, ported from PyTorch by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``), as its
authors wrote it. Both runs start from torch's weights (copied through NumPy) and see the same
data and the same sampled tokens, so every loss, gradient and parameter must agree to rounding.
"""

import inspect
import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

TOL = 1e-10


def _np(t) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy())


def _close(a, b, tol=TOL, msg=""):
    np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float),
                               rtol=tol, atol=tol, err_msg=msg)


# ============================ nanoGPT: model.py =============================================
@dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 13
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 16
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2
    flash: bool = True  # the fused attention (else the masked-softmax fallback)
    approximate: str = "none"  # nn.GELU's form


def _nanogpt(lib):
    """nanoGPT's model.py with ``torch`` spelled ``lib``; returns the GPT class."""
    nn = lib.nn
    F = lib.nn.functional

    class LayerNorm(nn.Module):
        """LayerNorm but with an optional bias. PyTorch doesn't support simply bias=False"""

        def __init__(self, ndim, bias):
            super().__init__()
            self.weight = nn.Parameter(lib.ones(ndim))
            self.bias = nn.Parameter(lib.zeros(ndim)) if bias else None

        def forward(self, input):
            return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)

    class CausalSelfAttention(nn.Module):

        def __init__(self, config):
            super().__init__()
            assert config.n_embd % config.n_head == 0
            # key, query, value projections for all heads, but in a batch
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
            # output projection
            self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
            # regularization
            self.attn_dropout = nn.Dropout(config.dropout)
            self.resid_dropout = nn.Dropout(config.dropout)
            self.n_head = config.n_head
            self.n_embd = config.n_embd
            self.dropout = config.dropout
            self.flash = hasattr(lib.nn.functional, "scaled_dot_product_attention")
            self.flash = self.flash and config.flash
            if not self.flash:
                # causal mask to ensure that attention is only applied to the left in the input
                self.register_buffer("bias", lib.tril(lib.ones(config.block_size,
                                                               config.block_size))
                                     .view(1, 1, config.block_size, config.block_size))

        def forward(self, x):
            B, T, C = x.size()  # batch size, sequence length, embedding dimensionality

            # query, key, values for all heads in batch; move head forward to be the batch dim
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

            if self.flash:
                y = lib.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                    is_causal=True)
            else:
                # manual implementation of attention
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
                att = F.softmax(att, dim=-1)
                att = self.attn_dropout(att)
                y = att @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)
            # re-assemble all head outputs side by side
            y = y.transpose(1, 2).contiguous().view(B, T, C)

            # output projection
            y = self.resid_dropout(self.c_proj(y))
            return y

    class MLP(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
            self.gelu = nn.GELU(approximate=config.approximate)
            self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
            self.dropout = nn.Dropout(config.dropout)

        def forward(self, x):
            x = self.c_fc(x)
            x = self.gelu(x)
            x = self.c_proj(x)
            x = self.dropout(x)
            return x

    class Block(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
            self.mlp = MLP(config)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlp(self.ln_2(x))
            return x

    class GPT(nn.Module):

        def __init__(self, config):
            super().__init__()
            assert config.vocab_size is not None
            assert config.block_size is not None
            self.config = config

            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            ))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # weight tying

            # init all weights
            self.apply(self._init_weights)
            # apply special scaled init to the residual projections, per GPT-2 paper
            for pn, p in self.named_parameters():
                if pn.endswith("c_proj.weight"):
                    lib.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

        def get_num_params(self, non_embedding=True):
            n_params = sum(p.numel() for p in self.parameters())
            if non_embedding:
                n_params -= self.transformer.wpe.weight.numel()
            return n_params

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                lib.nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    lib.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                lib.nn.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, idx, targets=None):
            device = idx.device
            b, t = idx.size()
            assert t <= self.config.block_size, \
                f"Cannot forward sequence of length {t}, block size is {self.config.block_size}"
            pos = lib.arange(0, t, dtype=lib.long, device=device)  # shape (t)

            # forward the GPT model itself
            tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
            pos_emb = self.transformer.wpe(pos)  # position embeddings of shape (t, n_embd)
            x = self.transformer.drop(tok_emb + pos_emb)
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)

            if targets is not None:
                # if we are given some desired targets also calculate the loss
                logits = self.lm_head(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-1)
            else:
                # inference-time mini-optimization: only forward the lm_head on the last position
                logits = self.lm_head(x[:, [-1], :])  # note: using list [-1] to keep the time dim
                loss = None

            return logits, loss

        def crop_block_size(self, block_size):
            # model surgery to decrease the block size if necessary
            assert block_size <= self.config.block_size
            self.config.block_size = block_size
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
            for block in self.transformer.h:
                if hasattr(block.attn, "bias"):
                    block.attn.bias = block.attn.bias[:, :, :block_size, :block_size]

        def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
            # start with all of the candidate parameters
            param_dict = {pn: p for pn, p in self.named_parameters()}
            # filter out those that do not require grad
            param_dict = {pn: p for pn, p in param_dict.items() if p.requires_grad}
            # create optim groups. Any parameters that is 2D will be weight decayed, otherwise no.
            decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
            nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
            optim_groups = [
                {"params": decay_params, "weight_decay": weight_decay},
                {"params": nodecay_params, "weight_decay": 0.0},
            ]
            self.num_decay = (len(decay_params), sum(p.numel() for p in decay_params))
            self.num_nodecay = (len(nodecay_params), sum(p.numel() for p in nodecay_params))
            # Create AdamW optimizer and use the fused version if it is available
            fused_available = "fused" in inspect.signature(lib.optim.AdamW).parameters
            use_fused = fused_available and device_type == "cuda"
            extra_args = dict(fused=True) if use_fused else dict()
            optimizer = lib.optim.AdamW(optim_groups, lr=learning_rate, betas=betas,
                                        **extra_args)
            return optimizer

        def estimate_mfu(self, fwdbwd_per_iter, dt):
            N = self.get_num_params()
            cfg = self.config
            L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
            flops_per_token = 6 * N + 12 * L * H * Q * T
            flops_per_fwdbwd = flops_per_token * T
            flops_per_iter = flops_per_fwdbwd * fwdbwd_per_iter
            flops_achieved = flops_per_iter * (1.0 / dt)  # per second
            return flops_achieved / 312e12

        @lib.no_grad()
        def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, draw=None):
            for _ in range(max_new_tokens):
                # if the sequence context is growing too long we must crop it at block_size
                idx_cond = (idx if idx.size(1) <= self.config.block_size
                            else idx[:, -self.config.block_size:])
                # forward the model to get the logits for the index in the sequence
                logits, _ = self(idx_cond)
                # pluck the logits at the final step and scale by desired temperature
                logits = logits[:, -1, :] / temperature
                # optionally crop the logits to only the top k options
                if top_k is not None:
                    v, _ = lib.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("Inf")
                # apply softmax to convert logits to (normalized) probabilities
                probs = F.softmax(logits, dim=-1)
                # sample from the distribution (the test's draw sees the same uniforms)
                idx_next = (lib.multinomial(probs, num_samples=1) if draw is None
                            else draw(lib, probs))
                # append sampled index to the running sequence and continue
                idx = lib.cat((idx, idx_next), dim=1)

            return idx

    return GPT


def _gpt_state(model) -> dict:
    return {k: _np(v).copy() for k, v in model.state_dict().items()}


def _gpt_build(lib, config, init=None, dtype="float64"):
    """A GPT in ``dtype``; with ``init`` (a torch GPT), loaded from its state dict, whose keys
    and shapes nodegrad's must match."""
    model = _nanogpt(lib)(config).to(getattr(lib, dtype))
    if init is not None:
        sd = _gpt_state(init)
        mine = model.state_dict()
        assert list(mine) == list(sd)
        assert [tuple(v.shape) for v in mine.values()] == [v.shape for v in sd.values()]
        model.load_state_dict({k: lib.tensor(v) for k, v in sd.items()})
    return model


def _tokens(n=400, V=13):
    r = np.random.default_rng(0)
    return r.integers(0, V, size=n).astype(np.uint16)  # prepare.py writes uint16 tokens


def _train_script(lib, init, config, data_dir, iters=5, grad_accum=2, batch_size=3,
                  compile=False):
    """nanoGPT's train.py: batches from a np.memmap of uint16 tokens, cosine lr with warmup
    set on each group, gradient accumulation, GradScaler (disabled), clip_grad_norm_,
    estimate_loss in eval mode."""
    data = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")
    block_size = config.block_size
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 6e-3, 6e-4, 2, 3
    r = np.random.default_rng(1)

    def get_batch(split):
        ix = r.integers(len(data) - block_size, size=batch_size)
        x = lib.stack([lib.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = lib.stack([lib.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64))
                       for i in ix])
        return x.to("cpu"), y.to("cpu")

    def get_lr(it):
        # 1) linear warmup for warmup_iters steps
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        # 2) if it > lr_decay_iters, return min learning rate
        if it > lr_decay_iters:
            return min_lr
        # 3) in between, use cosine decay down to min learning rate
        decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        assert 0 <= decay_ratio <= 1
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
        return min_lr + coeff * (learning_rate - min_lr)

    model = _gpt_build(lib, config, init)
    scaler = lib.cuda.amp.GradScaler(enabled=False)
    optimizer = model.configure_optimizers(0.1, learning_rate, (0.9, 0.95), "cpu")
    raw_model = model
    if compile:  # torch's own compile is left out: building its kernels takes a minute
        model = lib.compile(model)  # requires PyTorch 2.0
    ctx = nullcontext()

    @lib.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ["train", "val"]:
            losses = lib.zeros(2)
            for k in range(2):
                X, Y = get_batch(split)
                with ctx:
                    logits, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean()
        model.train()
        return out

    record = []
    X, Y = get_batch("train")
    for iter_num in range(iters):
        lr = get_lr(iter_num)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        if iter_num % 3 == 0:
            est = estimate_loss()
            record += [float(est["train"]), float(est["val"])]
        for micro_step in range(grad_accum):  # noqa: B007
            with ctx:
                logits, loss = model(X, Y)
                loss = loss / grad_accum  # scale the loss to account for gradient accumulation
            X, Y = get_batch("train")
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        grads = {n: _np(p.grad).copy() for n, p in raw_model.named_parameters()}
        optimizer.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in model.parameters())
        record += [loss.item() * grad_accum, float(norm), lr]
    return record, grads, _gpt_state(raw_model), optimizer, raw_model


@pytest.mark.parametrize("flash,bias,approximate,compile", [(True, True, "none", False),
                                                            (False, False, "tanh", False),
                                                            (True, False, "tanh", True)])
def test_nanogpt_training_matches_torch(flash, bias, approximate, compile, tmp_path):
    config = GPTConfig(flash=flash, bias=bias, approximate=approximate)
    _tokens(V=config.vocab_size).tofile(tmp_path / "train.bin")  # as prepare.py writes it
    torch.manual_seed(1337)
    init = _gpt_build(torch, config)
    iters = 3 if compile else 5
    t_rec, t_grads, t_state, t_opt, t_model = _train_script(torch, init, GPTConfig(**vars(config)),
                                                            tmp_path, iters=iters)
    n_rec, n_grads, n_state, n_opt, n_model = _train_script(ng, init, GPTConfig(**vars(config)),
                                                            tmp_path, iters=iters, compile=compile)
    _close(t_rec, n_rec, 1e-9)
    for k in t_grads:
        _close(t_grads[k], n_grads[k], 1e-8, k)
    for k in t_state:
        _close(t_state[k], n_state[k], 1e-8, k)
    # the optimiser groups and the tied weight as torch counts them
    assert n_model.num_decay == t_model.num_decay and n_model.num_nodecay == t_model.num_nodecay
    assert n_model.get_num_params() == t_model.get_num_params()
    assert n_model.get_num_params(False) == t_model.get_num_params(False)
    assert n_model.transformer.wte.weight is n_model.lm_head.weight
    assert [g["lr"] for g in n_opt.param_groups] == [g["lr"] for g in t_opt.param_groups]
    assert n_model.estimate_mfu(4, 0.5) == pytest.approx(t_model.estimate_mfu(4, 0.5))


def _inverse_cdf_draws(seed=0):
    """A ``draw`` for generate: the same uniforms in both runs, mapped through each run's own
    probabilities (so equal probabilities give equal tokens); it records the probabilities."""
    u = iter(np.random.default_rng(seed).random(1000))
    seen = []

    def draw(lib, probs):
        p = _np(probs)
        seen.append(p)
        c = np.cumsum(p, axis=-1)
        ix = np.array([[min(int((row < next(u)).sum()), p.shape[-1] - 1)] for row in c])
        return lib.tensor(ix)

    return draw, seen


@pytest.mark.parametrize("flash", [True, False])
def test_nanogpt_generate_and_crop_match_torch(flash):
    config = GPTConfig(block_size=8, flash=flash)
    torch.manual_seed(0)
    init = _gpt_build(torch, config)
    out = {}
    for lib in (torch, ng):
        model = _gpt_build(lib, GPTConfig(**vars(config)), init)
        model.eval()
        start_ids = [1, 2, 3]
        x = (lib.tensor(start_ids, dtype=lib.long, device="cpu")[None, ...]).repeat(2, 1)
        draw, seen = _inverse_cdf_draws()
        with lib.no_grad():
            y = model.generate(x, 9, temperature=0.8, top_k=4, draw=draw)  # crops at 8
            model.crop_block_size(5)
            z = model.generate(y[:, :4], 3, temperature=1.3, draw=draw)
            logits, _ = model(y[:, -5:])
        assert tuple(model.transformer.wpe.weight.shape) == (5, 16)
        assert isinstance(model.transformer.wpe.weight, lib.nn.Parameter)
        if not flash:
            assert tuple(model.transformer.h[1].attn.bias.shape) == (1, 1, 5, 5)
            assert "transformer.h.1.attn.bias" in model.state_dict()
        out[lib.__name__] = (y[0].tolist(), y.tolist(), z.tolist(), seen, _np(logits),
                             _gpt_state(model))
    t, n = out["torch"], out["nodegrad"]
    assert n[:3] == t[:3]
    assert len(n[3]) == len(t[3]) == 12
    for a, b in zip(t[3], n[3], strict=True):
        _close(a, b)
        assert ((a > 0).sum(-1) <= 4).all() or a.shape[-1] == 13  # top-k leaves 4 tokens
    _close(t[4], n[4])
    for k in t[5]:
        _close(t[5][k], n[5][k], msg=k)


def test_nanogpt_multinomial_sampling_respects_top_k():
    """generate's own torch.multinomial: sampled tokens are among the top k, shape (B, 1)."""
    ng.manual_seed(0)
    model = _nanogpt(ng)(GPTConfig())
    x = ng.zeros((3, 1), dtype=ng.long)
    y = model.generate(x, 4, top_k=1)
    assert tuple(y.shape) == (3, 5) and y.dtype == ng.int64
    for t in range(1, 5):  # top_k=1 is greedy decoding
        logits, _ = model(y[:, :t])
        assert y[:, t].tolist() == logits[:, -1].argmax(-1).tolist()
    probs = ng.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    draws = ng.multinomial(probs, num_samples=1)
    assert tuple(draws.shape) == (2, 1) and draws[1, 0].item() == 0 and draws[0, 0].item() > 0


def test_nanogpt_init_follows_gpt2_scheme():
    """_init_weights through apply, then the scaled residual projections by name."""
    config = GPTConfig(n_embd=64, n_layer=4, vocab_size=50)
    ng.manual_seed(0)
    model = _nanogpt(ng)(config)
    sd = model.state_dict()
    assert sd["transformer.wte.weight"] is sd["lm_head.weight"] or (
        _np(sd["transformer.wte.weight"]) == _np(sd["lm_head.weight"])).all()
    for name, p in model.named_parameters():
        a = _np(p)
        if name.endswith("c_proj.weight"):
            assert abs(a.std() / (0.02 / math.sqrt(8)) - 1) < 0.1, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(a.std() / 0.02 - 1) < 0.1, name
        elif name.endswith("bias") or "ln_" in name:
            assert (a == (1.0 if name.endswith("weight") else 0.0)).all(), name
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names  # tied, once


def _from_pretrained(lib, config, sd_hf):
    """nanoGPT's GPT.from_pretrained body: copy a GPT-2 (Conv1D, transposed) state dict into
    the model through the tensors of ``model.state_dict()``."""
    model = _nanogpt(lib)(config)
    sd = model.state_dict()
    sd_keys = sd.keys()
    sd_keys = [k for k in sd_keys if not k.endswith(".attn.bias")]  # discard the mask buffer
    sd_keys_hf = sd_hf.keys()
    sd_keys_hf = [k for k in sd_keys_hf if not k.endswith(".attn.masked_bias")]
    sd_keys_hf = [k for k in sd_keys_hf if not k.endswith(".attn.bias")]
    transposed = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                  "mlp.c_proj.weight"]
    assert len(sd_keys_hf) == len(sd_keys), f"mismatched keys: {len(sd_keys_hf)} != {len(sd_keys)}"
    for k in sd_keys_hf:
        if any(k.endswith(w) for w in transposed):
            # special treatment for the Conv1D weights we need to transpose
            assert sd_hf[k].shape[::-1] == sd[k].shape
            with lib.no_grad():
                sd[k].copy_(sd_hf[k].t())
        else:
            # vanilla copy over the other parameters
            assert sd_hf[k].shape == sd[k].shape
            with lib.no_grad():
                sd[k].copy_(sd_hf[k])
    return model


@pytest.mark.parametrize("flash", [True, False])
def test_nanogpt_from_pretrained_and_checkpoint_resume(flash, tmp_path):
    config = GPTConfig(flash=flash, dropout=0.1)
    r = np.random.default_rng(0)
    torch.manual_seed(0)
    ref = _nanogpt(torch)(GPTConfig(**vars(config)))
    hf = {k: (v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
              else v).detach().numpy() + 0.01 * r.standard_normal(tuple(v.shape)[::-1]
              if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v.shape)
          for k, v in ref.state_dict().items() if not k.endswith(".attn.bias")}
    hf["lm_head.weight"] = hf["transformer.wte.weight"]  # GPT-2 ties them too
    hf = {k: v.astype(np.float32) for k, v in hf.items()}
    idx = r.integers(0, 13, size=(2, 7))
    out = {}
    for lib in (torch, ng):
        model = _from_pretrained(lib, GPTConfig(**vars(config)),
                                 {k: lib.tensor(v) for k, v in hf.items()})
        assert model.lm_head.weight is model.transformer.wte.weight
        model.eval()  # dropout off
        with lib.no_grad():
            logits, _ = model(lib.tensor(idx))
        # a compiled model's checkpoint carries the '_orig_mod.' prefix train.py strips
        compiled = lib.compile(model)
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        model(lib.tensor(idx), lib.tensor(idx))[1].backward()  # in eval: no dropout
        optimizer.step()
        checkpoint = {"model": compiled.state_dict(), "optimizer": optimizer.state_dict(),
                      "model_args": dict(n_layer=2, n_head=2, n_embd=16, block_size=16,
                                         bias=True, vocab_size=13), "iter_num": 1,
                      "best_val_loss": 1e9, "config": {"flash": flash}}
        lib.save(checkpoint, tmp_path / f"ckpt_{lib.__name__}.pt")
        checkpoint = lib.load(tmp_path / f"ckpt_{lib.__name__}.pt", map_location="cpu")
        gptconf = GPTConfig(**checkpoint["model_args"], flash=checkpoint["config"]["flash"])
        resumed = _nanogpt(lib)(gptconf)
        state_dict = checkpoint["model"]
        unwanted_prefix = "_orig_mod."
        assert any(k.startswith(unwanted_prefix) for k in state_dict)
        for k, v in list(state_dict.items()):  # noqa: B007
            if k.startswith(unwanted_prefix):
                state_dict[k[len(unwanted_prefix):]] = state_dict.pop(k)
        resumed.load_state_dict(state_dict)
        resumed.eval()
        opt2 = resumed.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        opt2.load_state_dict(checkpoint["optimizer"])
        resumed(lib.tensor(idx), lib.tensor(idx))[1].backward()
        opt2.step()
        out[lib.__name__] = _np(logits), _gpt_state(resumed)
    _close(out["torch"][0], out["nodegrad"][0], 1e-5)
    for k, v in out["torch"][1].items():
        _close(v, out["nodegrad"][1][k], 1e-5, k)


# ============================ makemore ======================================================
WORDS = ["emma", "olivia", "ava", "isabella", "sophia", "charlotte", "mia", "amelia",
         "harper", "evelyn", "abigail", "emily", "elizabeth", "mila", "ella", "avery",
         "sofia", "camila", "aria", "scarlett", "victoria", "madison", "luna", "grace",
         "chloe", "penelope", "layla", "riley", "zoey", "nora", "lily", "eleanor", "hannah",
         "lillian", "addison", "aubrey", "ellie", "stella", "natalie", "zoe", "leah", "hazel",
         "violet", "aurora", "savannah", "audrey", "brooklyn", "bella", "claire", "skylar",
         "quinn", "jack", "xavier", "wyatt", "kevin", "yusuf", "jonah", "dmitri", "fox"]


def _vocab(words=WORDS):
    chars = sorted(list(set("".join(words))))
    stoi = {s: i + 1 for i, s in enumerate(chars)}
    stoi["."] = 0
    itos = {i: s for s, i in stoi.items()}
    return stoi, itos


class _Draws:
    """torch.multinomial with a seeded generator gives other bits in nodegrad (PCG64, not
    mt19937), so both runs map the same uniforms through their own probabilities."""

    def __init__(self, seed):
        self.u = np.random.default_rng(seed).random(10_000)
        self.i = 0

    def __call__(self, lib, p, num_samples=1):
        c = np.cumsum(_np(p).astype(float), axis=-1)
        c = c / c[..., -1:]
        out = []
        for _ in range(num_samples):
            out.append((c < self.u[self.i]).sum(-1))
            self.i += 1
        return lib.tensor(np.stack(out, -1))


def _bigram_script(lib):
    """makemore part 1: counts, smoothing, sampling, the average negative log likelihood, then
    the same model as a one-layer net trained by gradient descent on ``W.data``."""
    F = lib.nn.functional
    words = WORDS
    stoi, itos = _vocab()
    V = len(stoi)
    N = lib.zeros((V, V), dtype=lib.int32)
    for w in words:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:]):
            ix1 = stoi[ch1]
            ix2 = stoi[ch2]
            N[ix1, ix2] += 1
    rec = [_np(N).copy(), N[0, stoi["a"]].item(), N.dtype == lib.int32]
    p = N[0].float()
    p = p / p.sum()
    rec.append(_np(p))

    P = (N + 1).float()
    P /= P.sum(1, keepdims=True)
    rec.append(_np(P))
    rec.append(_np(P.sum(1)))
    draw = _Draws(0)
    names = []
    for i in range(5):  # noqa: B007
        out = []
        ix = 0
        while True:
            p = P[ix]
            ix = draw(lib, p, num_samples=1).item()
            out.append(itos[ix])
            if ix == 0:
                break
        names.append("".join(out))
    rec.append(names)

    log_likelihood = 0.0
    n = 0
    for w in words[:8]:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:]):
            ix1 = stoi[ch1]
            ix2 = stoi[ch2]
            prob = P[ix1, ix2]
            logprob = lib.log(prob)
            log_likelihood += logprob
            n += 1
    nll = -log_likelihood
    rec += [_np(nll / n), f"{nll / n:.4f}", type(log_likelihood) is not float]

    # the neural net: one-hot inputs times W, softmax, regularised nll, W.data += -lr * W.grad
    xs, ys = [], []
    for w in words:
        chs = ["."] + list(w) + ["."]
        for ch1, ch2 in zip(chs, chs[1:]):
            xs.append(stoi[ch1])
            ys.append(stoi[ch2])
    xs = lib.tensor(xs)
    ys = lib.tensor(ys)
    num = xs.nelement()
    W = lib.tensor(np.random.default_rng(2147483647).standard_normal((V, V)), requires_grad=True)
    for k in range(8):  # noqa: B007
        xenc = F.one_hot(xs, num_classes=V).double()  # input to the network: one-hot encoding
        logits = xenc @ W  # predict log-counts
        counts = logits.exp()  # counts, equivalent to N
        probs = counts / counts.sum(1, keepdims=True)  # probabilities for next character
        loss = -probs[lib.arange(num), ys].log().mean() + 0.01 * (W**2).mean()
        rec.append(loss.item())
        W.grad = None  # set to zero the gradient
        loss.backward()
        W.data += -50 * W.grad
    rec.append(_np(W))
    rec.append(xenc.dtype == lib.float64 and xenc.shape == (num, V))
    return rec


def _check_records(t, n, tol=TOL):
    assert len(t) == len(n)
    for i, (a, b) in enumerate(zip(t, n, strict=True)):
        if isinstance(a, (list, str, bool)):
            assert a == b, i
        else:
            a, b = np.asarray(a), np.asarray(b)
            assert (a.shape, a.dtype) == (b.shape, b.dtype), i
            _close(a, b, 1e-6 if a.dtype == np.float32 else tol, f"record {i}")


def test_makemore_bigram_matches_torch():
    _check_records(_bigram_script(torch), _bigram_script(ng))


def _build_dataset(lib, words, block_size=3):
    """makemore's build_dataset: every context of ``block_size`` characters and its next."""
    stoi, _ = _vocab()
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            ix = stoi[ch]
            X.append(context)
            Y.append(ix)
            context = context[1:] + [ix]  # crop and append
    X = lib.tensor(X)
    Y = lib.tensor(Y)
    return X, Y


def _mlp_script(lib, steps=6):
    """makemore part 2 (Bengio et al. 2003): C[X] lookup, .view, tanh, F.cross_entropy, a
    learning-rate sweep over 10**linspace, p.data += -lr * p.grad, then sampling."""
    F = lib.nn.functional
    Xtr, Ytr = _build_dataset(lib, WORDS[:40])
    r = np.random.default_rng(7)
    g = np.random.default_rng(2147483647)  # torch.randn(..., generator=g): the same numbers
    C = lib.tensor(g.standard_normal((27, 10)))
    W1 = lib.tensor(g.standard_normal((30, 50)))
    b1 = lib.tensor(g.standard_normal(50))
    W2 = lib.tensor(g.standard_normal((50, 27)))
    b2 = lib.tensor(g.standard_normal(27))
    parameters = [C, W1, b1, W2, b2]
    rec = [sum(p.nelement() for p in parameters), tuple(Xtr.shape), Xtr.dtype == lib.int64]
    for p in parameters:
        p.requires_grad = True
    lre = lib.linspace(-3, 0, steps)
    lrs = 10**lre
    lossi = []
    for i in range(steps):
        # minibatch construct
        ix = lib.tensor(r.integers(0, Xtr.shape[0], (32,)))
        # forward pass
        emb = C[Xtr[ix]]  # (32, 3, 10)
        h = lib.tanh(emb.view(-1, 30) @ W1 + b1)  # (32, 50)
        logits = h @ W2 + b2  # (32, 27)
        loss = F.cross_entropy(logits, Ytr[ix])
        # backward pass
        for p in parameters:
            p.grad = None
        loss.backward()
        # update
        lr = lrs[i] if i < steps // 2 else 0.1
        for p in parameters:
            p.data += -lr * p.grad
        lossi.append(loss.log10().item())
    rec += [lossi, _np(lrs).astype(np.float32), *[_np(p) for p in parameters]]

    # the loss on the whole split, then sampling from the model
    emb = C[Xtr]
    h = lib.tanh(emb.view(-1, 30) @ W1 + b1)
    logits = h @ W2 + b2
    rec.append(F.cross_entropy(logits, Ytr).item())
    draw = _Draws(10)
    block_size = 3
    for _ in range(4):
        out = []
        context = [0] * block_size  # initialize with all ...
        while True:
            emb = C[lib.tensor([context])]  # (1,block_size,d)
            h = lib.tanh(emb.view(1, -1) @ W1 + b1)
            logits = h @ W2 + b2
            probs = F.softmax(logits, dim=1)
            ix = draw(lib, probs, num_samples=1).item()
            context = context[1:] + [ix]
            out.append(ix)
            if ix == 0 or len(out) > 12:
                break
        rec.append(out)
    return rec


def test_makemore_mlp_matches_torch():
    t = _mlp_script(torch)
    n = _mlp_script(ng)
    _check_records(t[:3], n[:3])
    _close(t[3], n[3])
    _check_records(t[4:], n[4:])


def _batchnorm_script(lib, steps=5, n=16):
    """makemore part 3: BatchNorm by hand (batch mean and std, running stats under no_grad),
    kaiming-scaled init, then split_loss in inference mode with the running statistics."""
    F = lib.nn.functional
    Xtr, Ytr = _build_dataset(lib, WORDS[:30])
    Xdev, Ydev = _build_dataset(lib, WORDS[30:])
    n_embd, n_hidden, vocab_size, block_size = 10, 40, 27, 3
    g = np.random.default_rng(2147483647)
    C = lib.tensor(g.standard_normal((vocab_size, n_embd)))
    W1 = lib.tensor(g.standard_normal((n_embd * block_size, n_hidden))) * (5 / 3) / (
        (n_embd * block_size)**0.5)
    W2 = lib.tensor(g.standard_normal((n_hidden, vocab_size))) * 0.01
    b2 = lib.tensor(g.standard_normal(vocab_size)) * 0
    bngain = lib.ones((1, n_hidden), dtype=lib.float64)
    bnbias = lib.zeros((1, n_hidden), dtype=lib.float64)
    bnmean_running = lib.zeros((1, n_hidden), dtype=lib.float64)
    bnstd_running = lib.ones((1, n_hidden), dtype=lib.float64)
    parameters = [C, W1, W2, b2, bngain, bnbias]
    for p in parameters:
        p.requires_grad = True
    r = np.random.default_rng(3)
    rec = []
    for i in range(steps):
        ix = lib.tensor(r.integers(0, Xtr.shape[0], (n,)))
        Xb, Yb = Xtr[ix], Ytr[ix]  # batch X,Y
        # forward pass
        emb = C[Xb]  # embed the characters into vectors
        embcat = emb.view(emb.shape[0], -1)  # concatenate the vectors
        # Linear layer
        hpreact = embcat @ W1  # + b1 # hidden layer pre-activation
        # BatchNorm layer
        bnmeani = hpreact.mean(0, keepdim=True)
        bnstdi = hpreact.std(0, keepdim=True)
        hpreact = bngain * (hpreact - bnmeani) / bnstdi + bnbias
        with lib.no_grad():
            bnmean_running = 0.999 * bnmean_running + 0.001 * bnmeani
            bnstd_running = 0.999 * bnstd_running + 0.001 * bnstdi
        # Non-linearity
        h = lib.tanh(hpreact)  # hidden layer
        logits = h @ W2 + b2  # output layer
        loss = F.cross_entropy(logits, Yb)  # loss function
        # backward pass
        for p in parameters:
            p.grad = None
        loss.backward()
        # update
        lr = 0.1 if i < 3 else 0.01  # step learning rate decay
        for p in parameters:
            p.data += -lr * p.grad
        rec.append(loss.item())
        # the tanh saturation statistic and the dead-neuron count of the lecture
        rec.append(((h.abs() > 0.97).float().mean() * 100).item())
        rec.append((h.abs() > 0.99).all(dim=0).sum().item())
    assert not bnmean_running.requires_grad and bnstd_running.grad_fn is None

    @lib.no_grad()  # this decorator disables gradient tracking
    def split_loss(split):
        x, y = {"train": (Xtr, Ytr), "val": (Xdev, Ydev)}[split]
        emb = C[x]  # (N, block_size, n_embd)
        embcat = emb.view(emb.shape[0], -1)  # concat into (N, block_size * n_embd)
        hpreact = embcat @ W1
        hpreact = bngain * (hpreact - bnmean_running) / bnstd_running + bnbias
        h = lib.tanh(hpreact)  # (N, n_hidden)
        logits = h @ W2 + b2  # (N, vocab_size)
        loss = F.cross_entropy(logits, y)
        return loss.item()

    rec += [split_loss("train"), split_loss("val"), _np(bnmean_running), _np(bnstd_running)]
    # calibrate the batch norm at the end of training over the whole set
    with lib.no_grad():
        emb = C[Xtr]
        embcat = emb.view(emb.shape[0], -1)
        hpreact = embcat @ W1
        bnmean = hpreact.mean(0, keepdim=True)
        bnstd = hpreact.std(0, keepdim=True)
    rec += [_np(bnmean), _np(bnstd), *[_np(p) for p in parameters]]
    return rec


def test_makemore_batchnorm_by_hand_matches_torch():
    _check_records(_batchnorm_script(torch), _batchnorm_script(ng))


def _pytorchified(lib):
    """makemore part 3's layers as plain classes with __call__ and parameters()."""

    class Linear:

        def __init__(self, fan_in, fan_out, g, bias=True):
            self.weight = lib.tensor(g.standard_normal((fan_in, fan_out))) / fan_in**0.5
            self.bias = lib.zeros(fan_out, dtype=lib.float64) if bias else None

        def __call__(self, x):
            self.out = x @ self.weight
            if self.bias is not None:
                self.out += self.bias
            return self.out

        def parameters(self):
            return [self.weight] + ([] if self.bias is None else [self.bias])

    class BatchNorm1d:

        def __init__(self, dim, eps=1e-5, momentum=0.1):
            self.eps = eps
            self.momentum = momentum
            self.training = True
            # parameters (trained with backprop)
            self.gamma = lib.ones(dim, dtype=lib.float64)
            self.beta = lib.zeros(dim, dtype=lib.float64)
            # buffers (trained with a running 'momentum update')
            self.running_mean = lib.zeros(dim, dtype=lib.float64)
            self.running_var = lib.ones(dim, dtype=lib.float64)

        def __call__(self, x):
            # calculate the forward pass
            if self.training:
                xmean = x.mean(0, keepdim=True)  # batch mean
                xvar = x.var(0, keepdim=True)  # batch variance
            else:
                xmean = self.running_mean
                xvar = self.running_var
            xhat = (x - xmean) / lib.sqrt(xvar + self.eps)  # normalize to unit variance
            self.out = self.gamma * xhat + self.beta
            # update the buffers
            if self.training:
                with lib.no_grad():
                    self.running_mean = ((1 - self.momentum) * self.running_mean
                                         + self.momentum * xmean)
                    self.running_var = ((1 - self.momentum) * self.running_var
                                        + self.momentum * xvar)
            return self.out

        def parameters(self):
            return [self.gamma, self.beta]

    class Tanh:
        def __call__(self, x):
            self.out = lib.tanh(x)
            return self.out

        def parameters(self):
            return []

    return Linear, BatchNorm1d, Tanh


def _layers_script(lib, steps=4, n=16):
    """The 'PyTorch-ified' network: layer.out.retain_grad() to watch activation gradients,
    the update-to-data ratios, and in-place init tweaks under no_grad."""
    F = lib.nn.functional
    Linear, BatchNorm1d, Tanh = _pytorchified(lib)
    Xtr, Ytr = _build_dataset(lib, WORDS[:30])
    n_embd, n_hidden, vocab_size = 10, 24, 27
    g = np.random.default_rng(2147483647)
    C = lib.tensor(g.standard_normal((vocab_size, n_embd)))
    layers = [
        Linear(n_embd * 3, n_hidden, g, bias=False), BatchNorm1d(n_hidden), Tanh(),
        Linear(n_hidden, n_hidden, g, bias=False), BatchNorm1d(n_hidden), Tanh(),
        Linear(n_hidden, vocab_size, g, bias=False), BatchNorm1d(vocab_size),
    ]
    with lib.no_grad():
        # last layer: make less confident
        layers[-1].gamma *= 0.1
        # all other layers: apply gain
        for layer in layers[:-1]:
            if isinstance(layer, Linear):
                layer.weight *= 5 / 3
    parameters = [C] + [p for layer in layers for p in layer.parameters()]
    rec = [sum(p.nelement() for p in parameters)]
    for p in parameters:
        p.requires_grad = True
    r = np.random.default_rng(4)
    ud = []
    for i in range(steps):  # noqa: B007
        ix = lib.randint(0, 1, (n,)) * 0 + lib.tensor(r.integers(0, Xtr.shape[0], (n,)))
        Xb, Yb = Xtr[ix], Ytr[ix]
        emb = C[Xb]
        x = emb.view(emb.shape[0], -1)
        for layer in layers:
            x = layer(x)
        loss = F.cross_entropy(x, Yb)
        for layer in layers:
            layer.out.retain_grad()  # AFTER_DEBUG: would take out retain_graph
        for p in parameters:
            p.grad = None
        loss.backward()
        lr = 0.1
        for p in parameters:
            p.data += -lr * p.grad
        with lib.no_grad():
            ud.append([((lr * p.grad).std() / p.data.std()).log10().item() for p in parameters])
        rec.append(loss.item())
    rec.append(ud)
    # the lecture's activation and gradient statistics per Tanh layer
    for layer in layers[:-1]:
        if isinstance(layer, Tanh):
            t = layer.out
            rec += [t.mean().item(), t.std().item(), ((t.abs() > 0.97).float().mean() * 100).item()]
            t = layer.out.grad
            rec += [t.mean().item(), t.std().item(), _np(t)]
            hy, hx = lib.histogram(t, density=True)
            rec += [_np(hy), _np(hx)]
    for layer in layers:
        layer.training = False
    with lib.no_grad():
        x = C[Xtr].view(Xtr.shape[0], -1)
        for layer in layers:
            x = layer(x)
        rec.append(F.cross_entropy(x, Ytr).item())
    rec += [_np(layers[1].running_mean), _np(layers[4].running_var)]
    return rec


def test_makemore_pytorchified_layers_match_torch():
    t, n = _layers_script(torch), _layers_script(ng)
    ud_t, ud_n = t.pop(5), n.pop(5)  # the update ratios, in log10
    _close(ud_t, ud_n, 1e-9)
    _check_records(t, n, 1e-9)  # x.std() is PyTorch's (N - 1) in both


def _ninja_script(lib, n=8):
    """makemore part 4, "becoming a backprop ninja": the forward broken into atoms, every
    intermediate's .grad kept with retain_grad(), then each gradient derived by hand (exercise
    1), through cross_entropy at once (exercise 2) and through batch norm at once (exercise 3),
    then a training step with the hand-made gradients under no_grad (exercise 4)."""
    F = lib.nn.functional
    Xtr, Ytr = _build_dataset(lib, WORDS[:30])
    n_embd, n_hidden, vocab_size, block_size = 10, 64, 27, 3
    g = np.random.default_rng(2147483647)
    C = lib.tensor(g.standard_normal((vocab_size, n_embd)))
    # Layer 1
    W1 = lib.tensor(g.standard_normal((n_embd * block_size, n_hidden))) * (5 / 3) / (
        (n_embd * block_size)**0.5)
    b1 = lib.tensor(g.standard_normal(n_hidden)) * 0.1  # using b1 just for fun, it's useless
    # Layer 2
    W2 = lib.tensor(g.standard_normal((n_hidden, vocab_size))) * 0.1
    b2 = lib.tensor(g.standard_normal(vocab_size)) * 0.1
    # BatchNorm parameters
    bngain = lib.ones((1, n_hidden), dtype=lib.float64) * 0.1 + 1.0
    bnbias = lib.zeros((1, n_hidden), dtype=lib.float64) * 0.1
    parameters = [C, W1, b1, W2, b2, bngain, bnbias]
    for p in parameters:
        p.requires_grad = True
    ix = lib.tensor(np.random.default_rng(5).integers(0, Xtr.shape[0], (n,)))
    Xb, Yb = Xtr[ix], Ytr[ix]  # batch X,Y

    # forward pass, "chunkated" into smaller steps that are possible to backward one at a time
    emb = C[Xb]  # embed the characters into vectors
    embcat = emb.view(emb.shape[0], -1)  # concatenate the vectors
    # Linear layer 1
    hprebn = embcat @ W1 + b1  # hidden layer pre-activation
    # BatchNorm layer
    bnmeani = 1 / n * hprebn.sum(0, keepdim=True)
    bndiff = hprebn - bnmeani
    bndiff2 = bndiff**2
    bnvar = 1 / (n - 1) * (bndiff2).sum(0, keepdim=True)  # Bessel's correction
    bnvar_inv = (bnvar + 1e-5)**-0.5
    bnraw = bndiff * bnvar_inv
    hpreact = bngain * bnraw + bnbias
    # Non-linearity
    h = lib.tanh(hpreact)  # hidden layer
    # Linear layer 2
    logits = h @ W2 + b2  # output layer
    # cross entropy loss (same as F.cross_entropy(logits, Yb))
    logit_maxes = logits.max(1, keepdim=True).values
    norm_logits = logits - logit_maxes  # subtract max for numerical stability
    counts = norm_logits.exp()
    counts_sum = counts.sum(1, keepdims=True)
    counts_sum_inv = counts_sum**-1  # (1.0 / counts_sum) didn't give exact backprop
    probs = counts * counts_sum_inv
    logprobs = probs.log()
    loss = -logprobs[range(n), Yb].mean()

    # PyTorch backward pass
    for p in parameters:
        p.grad = None
    for t in [logprobs, probs, counts, counts_sum, counts_sum_inv,  # afaik there is no cleaner way
              norm_logits, logit_maxes, logits, h, hpreact, bnraw,
              bnvar_inv, bnvar, bndiff2, bndiff, hprebn, bnmeani,
              embcat, emb]:
        t.retain_grad()
    loss.backward()
    rec = [loss.item()]
    results = {}

    def cmp(s, dt, t):
        ex = lib.all(dt == t.grad).item()
        app = lib.allclose(dt, t.grad)
        maxdiff = (dt - t.grad).abs().max().item()
        results[s] = (ex, app, maxdiff)
        rec.append(_np(dt))
        rec.append(_np(t.grad))
        return f"{s:15s} | exact: {str(ex):5s} | approximate: {str(app):5s} | maxdiff: {maxdiff}"

    # Exercise 1: backprop through the whole thing manually
    dlogprobs = lib.zeros_like(logprobs)
    dlogprobs[range(n), Yb] = -1.0 / n
    dprobs = (1.0 / probs) * dlogprobs
    dcounts_sum_inv = (counts * dprobs).sum(1, keepdim=True)
    dcounts = counts_sum_inv * dprobs
    dcounts_sum = (-counts_sum**-2) * dcounts_sum_inv
    dcounts += lib.ones_like(counts) * dcounts_sum
    dnorm_logits = counts * dcounts
    dlogits = dnorm_logits.clone()
    dlogit_maxes = (-dnorm_logits).sum(1, keepdim=True)
    dlogits += F.one_hot(logits.max(1).indices, num_classes=logits.shape[1]) * dlogit_maxes
    dh = dlogits @ W2.T
    dW2 = h.T @ dlogits
    db2 = dlogits.sum(0)
    dhpreact = (1.0 - h**2) * dh
    dbngain = (bnraw * dhpreact).sum(0, keepdim=True)
    dbnraw = bngain * dhpreact
    dbnbias = dhpreact.sum(0, keepdim=True)
    dbndiff = bnvar_inv * dbnraw
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
    dbnvar = (-0.5 * (bnvar + 1e-5)**-1.5) * dbnvar_inv
    dbndiff2 = (1.0 / (n - 1)) * lib.ones_like(bndiff2) * dbnvar
    dbndiff += (2 * bndiff) * dbndiff2
    dhprebn = dbndiff.clone()
    dbnmeani = (-dbndiff).sum(0)
    dhprebn += 1.0 / n * (lib.ones_like(hprebn) * dbnmeani)
    dembcat = dhprebn @ W1.T
    dW1 = embcat.T @ dhprebn
    db1 = dhprebn.sum(0)
    demb = dembcat.view(emb.shape)
    dC = lib.zeros_like(C)
    for k in range(Xb.shape[0]):
        for j in range(Xb.shape[1]):
            ix = Xb[k, j]
            dC[ix] += demb[k, j]
    dC2 = lib.zeros_like(C)
    dC2.index_add_(0, Xb.view(-1), demb.view(-1, n_embd))
    rec.append(_np(dC2))

    lines = [cmp("logprobs", dlogprobs, logprobs), cmp("probs", dprobs, probs),
             cmp("counts_sum_inv", dcounts_sum_inv, counts_sum_inv),
             cmp("counts_sum", dcounts_sum, counts_sum), cmp("counts", dcounts, counts),
             cmp("norm_logits", dnorm_logits, norm_logits),
             cmp("logit_maxes", dlogit_maxes, logit_maxes), cmp("logits", dlogits, logits),
             cmp("h", dh, h), cmp("W2", dW2, W2), cmp("b2", db2, b2),
             cmp("hpreact", dhpreact, hpreact), cmp("bngain", dbngain, bngain),
             cmp("bnbias", dbnbias, bnbias), cmp("bnraw", dbnraw, bnraw),
             cmp("bnvar_inv", dbnvar_inv, bnvar_inv), cmp("bnvar", dbnvar, bnvar),
             cmp("bndiff2", dbndiff2, bndiff2), cmp("bndiff", dbndiff, bndiff),
             cmp("bnmeani", dbnmeani, bnmeani), cmp("hprebn", dhprebn, hprebn),
             cmp("embcat", dembcat, embcat), cmp("W1", dW1, W1), cmp("b1", db1, b1),
             cmp("emb", demb, emb), cmp("C", dC, C)]

    # Exercise 2: backprop through cross_entropy but all in one go
    loss_fast = F.cross_entropy(logits, Yb)
    rec.append(loss_fast.item() - loss.item())
    dlogits = F.softmax(logits, 1)
    dlogits[range(n), Yb] -= 1
    dlogits /= n
    lines.append(cmp("logits", dlogits, logits))

    # Exercise 3: backprop through batchnorm but all in one go
    hpreact_fast = bngain * (hprebn - hprebn.mean(0, keepdim=True)) / lib.sqrt(
        hprebn.var(0, keepdim=True, unbiased=True) + 1e-5) + bnbias
    rec.append((hpreact_fast - hpreact).abs().max().item())
    dhprebn = bngain * bnvar_inv / n * (n * dhpreact - dhpreact.sum(0)
                                        - n / (n - 1) * bnraw * (dhpreact * bnraw).sum(0))
    lines.append(cmp("hprebn", dhprebn, hprebn))

    # Exercise 4: one training step with the hand-made gradients
    grads = [dC, dW1, db1, dW2, db2, dbngain, dbnbias]
    with lib.no_grad():
        for p, grad in zip(parameters, grads):
            p.data += -0.1 * grad  # new way of swole doge TM :)
    rec += [_np(p) for p in parameters]
    return rec, results, lines


def test_makemore_backprop_ninja_matches_torch():
    t_rec, t_res, t_lines = _ninja_script(torch)
    n_rec, n_res, n_lines = _ninja_script(ng)
    _check_records(t_rec, n_rec, 1e-12)
    for k, (ex, app, maxdiff) in n_res.items():  # noqa: B007
        assert app and maxdiff < 1e-14, k  # every hand-derived gradient is autograd's
        assert t_res[k][1] and t_res[k][2] < 1e-14, k
    assert [line[:17] for line in n_lines] == [line[:17] for line in t_lines]


# ============================ smaller pieces =================================================
def test_nanogpt_chooses_its_autocast_dtype_as_torch():
    """train.py's device and dtype lines: bfloat16 only where the GPU holds it (CuPy's arrays
    never do), else float16 with an enabled GradScaler; on the CPU no autocast at all."""
    def setup(lib, device):
        device_type = "cuda" if "cuda" in device else "cpu"
        dtype = ("bfloat16" if lib.cuda.is_available() and lib.cuda.is_bf16_supported()
                 else "float16")
        ptdtype = {"float32": lib.float32, "bfloat16": lib.bfloat16,
                   "float16": lib.float16}[dtype]
        ctx = (nullcontext() if device_type == "cpu"
               else lib.amp.autocast(device_type=device_type, dtype=ptdtype))
        scaler = lib.cuda.amp.GradScaler(enabled=(dtype == "float16" and lib.cuda.is_available()))
        return dtype, type(ctx) is nullcontext, scaler.is_enabled()

    assert ng.cuda.is_bf16_supported() is False
    assert ng.cuda.is_bf16_supported(including_emulation=False) is False
    with pytest.raises(TypeError, match="is_bf16_supported"):
        ng.cuda.is_bf16_supported("yes")
    if not torch.cuda.is_available() and not ng.cuda.is_available():
        assert setup(ng, "cpu") == setup(torch, "cpu") == ("float16", True, False)
        assert torch.cuda.is_bf16_supported() is False
    ng.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    ng.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
    try:
        assert ng.get_float32_matmul_precision() == "high"
    finally:
        ng.backends.cuda.matmul.allow_tf32 = False
    assert ng.get_float32_matmul_precision() == "highest"


def test_raw_array_updates_from_tensors():
    """``p.data += -lr * p.grad`` (PyTorch's ``.data``) updates the parameter in its own memory;
    ``arr op= t`` reads the tensor's values into a NumPy array, ``arr op t`` is the tensor's
    reflected operator; a NumPy function of a Tensor still refuses."""
    w = ng.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    (w * w).sum().backward()
    raw = w.detach().numpy()
    w.data += -0.5 * w.grad
    assert w.requires_grad and w.is_leaf and w.grad is not None
    np.testing.assert_array_equal(raw, [[0.0, 0.0], [0.0, 0.0]])  # written in place
    np.testing.assert_array_equal(w.numpy(), [[0.0, 0.0], [0.0, 0.0]])
    a = np.arange(4.0).reshape(2, 2)
    t = ng.tensor([[1.0, 1.0], [5.0, 0.5]])
    a -= t
    a *= t
    a /= t
    a **= ng.tensor(2.0)
    np.testing.assert_array_equal(a, [[1.0, 0.0], [9.0, 6.25]])
    b = np.arange(4.0, dtype=np.float32).reshape(2, 2)
    for got, want in [(b + t, [[1, 2], [7, 3.5]]), (b - t, [[-1, 0], [-3, 2.5]]),
                      (b * t, [[0, 1], [10, 1.5]]), (b @ t, [[5, 0.5], [17, 3.5]]),
                      (b < t, [[True, False], [True, False]]), (b >= t, [[False, True],
                                                                         [False, True]]),
                      (b == t, [[False, True], [False, False]]), (np.float64(2) * t,
                                                                  [[2, 2], [10, 1]])]:
        assert isinstance(got, ng.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(TypeError, match="exp: NumPy's ufuncs do not take a Tensor"):
        np.exp(t)
    i = np.zeros(2, dtype=np.int64)
    with pytest.raises(TypeError):  # NumPy's casting rule: no float into an int array
        i += ng.tensor([0.5, 0.5])


def _wavenet(lib):
    """makemore part 5's hand-rolled layers (torch.nn's names, plain classes)."""

    class Linear:

        def __init__(self, fan_in, fan_out, g, bias=True):
            self.weight = lib.tensor(g.standard_normal((fan_in, fan_out))) / fan_in**0.5
            self.bias = lib.zeros(fan_out, dtype=lib.float64) if bias else None

        def __call__(self, x):
            self.out = x @ self.weight
            if self.bias is not None:
                self.out += self.bias
            return self.out

        def parameters(self):
            return [self.weight] + ([] if self.bias is None else [self.bias])

    class BatchNorm1d:

        def __init__(self, dim, eps=1e-5, momentum=0.1):
            self.eps = eps
            self.momentum = momentum
            self.training = True
            self.gamma = lib.ones(dim, dtype=lib.float64)
            self.beta = lib.zeros(dim, dtype=lib.float64)
            self.running_mean = lib.zeros(dim, dtype=lib.float64)
            self.running_var = lib.ones(dim, dtype=lib.float64)

        def __call__(self, x):
            if self.training:
                if x.ndim == 2:
                    dim = 0
                elif x.ndim == 3:
                    dim = (0, 1)
                xmean = x.mean(dim, keepdim=True)  # batch mean
                xvar = x.var(dim, keepdim=True)  # batch variance
            else:
                xmean = self.running_mean
                xvar = self.running_var
            xhat = (x - xmean) / lib.sqrt(xvar + self.eps)  # normalize to unit variance
            self.out = self.gamma * xhat + self.beta
            if self.training:
                with lib.no_grad():
                    self.running_mean = ((1 - self.momentum) * self.running_mean
                                         + self.momentum * xmean)
                    self.running_var = ((1 - self.momentum) * self.running_var
                                        + self.momentum * xvar)
            return self.out

        def parameters(self):
            return [self.gamma, self.beta]

    class Tanh:
        def __call__(self, x):
            self.out = lib.tanh(x)
            return self.out

        def parameters(self):
            return []

    class Embedding:

        def __init__(self, num_embeddings, embedding_dim, g):
            self.weight = lib.tensor(g.standard_normal((num_embeddings, embedding_dim)))

        def __call__(self, IX):
            self.out = self.weight[IX]
            return self.out

        def parameters(self):
            return [self.weight]

    class FlattenConsecutive:

        def __init__(self, n):
            self.n = n

        def __call__(self, x):
            B, T, C = x.shape
            x = x.view(B, T // self.n, C * self.n)
            if x.shape[1] == 1:
                x = x.squeeze(1)
            self.out = x
            return self.out

        def parameters(self):
            return []

    class Sequential:

        def __init__(self, layers):
            self.layers = layers

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            self.out = x
            return self.out

        def parameters(self):
            # get parameters of all layers and stretch them out into one list
            return [p for layer in self.layers for p in layer.parameters()]

    return Linear, BatchNorm1d, Tanh, Embedding, FlattenConsecutive, Sequential


def _wavenet_script(lib, steps=4, batch_size=8):
    """makemore part 5: a WaveNet-like tree of FlattenConsecutive + Linear + BatchNorm over
    3-d activations (statistics over dims (0, 1)), then evaluation with the running stats."""
    F = lib.nn.functional
    Linear, BatchNorm1d, Tanh, Embedding, FlattenConsecutive, Sequential = _wavenet(lib)
    Xtr, Ytr = _build_dataset(lib, WORDS[:30], block_size=8)
    n_embd, n_hidden, vocab_size = 6, 16, 27
    g = np.random.default_rng(42)
    model = Sequential([
        Embedding(vocab_size, n_embd, g),
        FlattenConsecutive(2), Linear(n_embd * 2, n_hidden, g, bias=False),
        BatchNorm1d(n_hidden), Tanh(),
        FlattenConsecutive(2), Linear(n_hidden * 2, n_hidden, g, bias=False),
        BatchNorm1d(n_hidden), Tanh(),
        FlattenConsecutive(2), Linear(n_hidden * 2, n_hidden, g, bias=False),
        BatchNorm1d(n_hidden), Tanh(),
        Linear(n_hidden, vocab_size, g),
    ])
    with lib.no_grad():
        model.layers[-1].weight *= 0.1  # last layer make less confident
    parameters = model.parameters()
    rec = [sum(p.nelement() for p in parameters)]
    for p in parameters:
        p.requires_grad = True
    r = np.random.default_rng(6)
    for i in range(steps):
        ix = lib.tensor(r.integers(0, Xtr.shape[0], (batch_size,)))
        Xb, Yb = Xtr[ix], Ytr[ix]  # batch X,Y
        logits = model(Xb)
        loss = F.cross_entropy(logits, Yb)  # loss function
        for p in parameters:
            p.grad = None
        loss.backward()
        lr = 0.1 if i < 3 else 0.01  # step learning rate decay
        for p in parameters:
            p.data += -lr * p.grad
        rec.append(loss.item())
    rec.append([tuple(layer.out.shape) for layer in model.layers])
    rec += [_np(model.layers[3].running_mean), _np(model.layers[7].running_var)]
    rec.append(tuple(model.layers[3].running_mean.shape))
    for layer in model.layers:
        layer.training = False
    with lib.no_grad():
        rec.append(F.cross_entropy(model(Xtr), Ytr).item())
    rec += [_np(p) for p in parameters]
    return rec


def test_makemore_wavenet_matches_torch():
    _check_records(_wavenet_script(torch), _wavenet_script(ng), 1e-9)


# ============================ makemore.py: the script's models and data ======================
@dataclass
class ModelConfig:
    block_size: int = None  # length of the input sequences of integers
    vocab_size: int = None  # the input integers are in range [0 .. vocab_size -1]
    n_layer: int = 2
    n_embd: int = 8
    n_embd2: int = 12
    n_head: int = 2


def _makemore_py(lib):
    """makemore.py's dataset, endless loader and its Bigram, MLP, RNN/GRU and BoW models."""
    nn = lib.nn
    F = lib.nn.functional
    Dataset, DataLoader = lib.utils.data.Dataset, lib.utils.data.DataLoader

    class NewGELU(nn.Module):
        """GELU as in Google BERT and OpenAI GPT."""

        def forward(self, x):
            return 0.5 * x * (1.0 + lib.tanh(math.sqrt(2.0 / math.pi)
                                             * (x + 0.044715 * lib.pow(x, 3.0))))

    class CausalBoW(nn.Module):
        """Causal bag of words: averages the preceding elements."""

        def __init__(self, config):
            super().__init__()
            self.block_size = config.block_size
            self.register_buffer("bias", lib.tril(lib.ones(config.block_size, config.block_size))
                                 .view(1, config.block_size, config.block_size))

        def forward(self, x):
            B, T, C = x.size()  # batch size, sequence length, n_embd
            att = lib.zeros((B, T, T), device=x.device, dtype=x.dtype)
            att = att.masked_fill(self.bias[:, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ x  # (B, T, T) x (B, T, C) -> (B, T, C)
            return y

    class BoWBlock(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.cbow = CausalBoW(config)
            self.mlp = nn.ModuleDict(dict(
                c_fc=nn.Linear(config.n_embd, config.n_embd2),
                c_proj=nn.Linear(config.n_embd2, config.n_embd),
            ))
            m = self.mlp
            self.mlpf = lambda x: m.c_proj(F.tanh(m.c_fc(x)))  # MLP forward

        def forward(self, x):
            x = x + self.cbow(x)
            x = x + self.mlpf(x)
            return x

    class BoW(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.block_size = config.block_size
            self.vocab_size = config.vocab_size
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
            self.context_block = BoWBlock(config)
            self.lm_head = nn.Linear(config.n_embd, self.vocab_size)

        def get_block_size(self):
            return self.block_size

        def forward(self, idx, targets=None):
            device = idx.device
            b, t = idx.size()
            pos = lib.arange(0, t, dtype=lib.long, device=device).unsqueeze(0)  # shape (1, t)
            tok_emb = self.wte(idx)  # token embeddings of shape (b, t, n_embd)
            pos_emb = self.wpe(pos)  # position embeddings of shape (1, t, n_embd)
            x = tok_emb + pos_emb
            x = self.context_block(x)
            logits = self.lm_head(x)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-1)
            return logits, loss

    class GRUCell(nn.Module):

        def __init__(self, config):
            super().__init__()
            # input, forget, output, gate
            self.xh_to_z = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)
            self.xh_to_r = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)
            self.xh_to_hbar = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)

        def forward(self, xt, hprev):
            # first use the reset gate to wipe some channels of the hidden state to zero
            xh = lib.cat([xt, hprev], dim=1)
            r = F.sigmoid(self.xh_to_r(xh))
            hprev_reset = r * hprev
            # calculate the candidate new hidden state hbar
            xhr = lib.cat([xt, hprev_reset], dim=1)
            hbar = F.tanh(self.xh_to_hbar(xhr))
            # calculate the switch gate that determines if each channel should be updated
            z = F.sigmoid(self.xh_to_z(xh))
            # blend the previous hidden state and the new candidate hidden state
            ht = (1 - z) * hprev + z * hbar
            return ht

    class RNNCell(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.xh_to_h = nn.Linear(config.n_embd + config.n_embd2, config.n_embd2)

        def forward(self, xt, hprev):
            xh = lib.cat([xt, hprev], dim=1)
            ht = F.tanh(self.xh_to_h(xh))
            return ht

    class RNN(nn.Module):

        def __init__(self, config, cell_type):
            super().__init__()
            self.block_size = config.block_size
            self.vocab_size = config.vocab_size
            self.start = nn.Parameter(lib.zeros(1, config.n_embd2))  # the starting hidden state
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings table
            if cell_type == "rnn":
                self.cell = RNNCell(config)
            elif cell_type == "gru":
                self.cell = GRUCell(config)
            self.lm_head = nn.Linear(config.n_embd2, self.vocab_size)

        def get_block_size(self):
            return self.block_size

        def forward(self, idx, targets=None):
            b, t = idx.size()
            # embed all the integers up front and all at once for efficiency
            emb = self.wte(idx)  # (b, t, n_embd)
            # sequentially iterate over the inputs and update the RNN state each tick
            hprev = self.start.expand((b, -1))  # expand out the batch dimension
            hiddens = []
            for i in range(t):
                xt = emb[:, i, :]  # (b, n_embd)
                ht = self.cell(xt, hprev)  # (b, n_embd2)
                hprev = ht
                hiddens.append(ht)
            # decode the outputs
            hidden = lib.stack(hiddens, 1)  # (b, t, n_embd2)
            logits = self.lm_head(hidden)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-1)
            return logits, loss

    class MLP(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.block_size = config.block_size
            self.vocab_size = config.vocab_size
            # token embeddings table; +1 for a special token that would be "before" the start
            self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)
            self.mlp = nn.Sequential(
                nn.Linear(self.block_size * config.n_embd, config.n_embd2),
                nn.Tanh(),
                nn.Linear(config.n_embd2, self.vocab_size),
            )

        def get_block_size(self):
            return self.block_size

        def forward(self, idx, targets=None):
            # gather the word embeddings of the previous 3 words
            embs = []
            for k in range(self.block_size):  # noqa: B007
                tok_emb = self.wte(idx)  # token embeddings of shape (b, t, n_embd)
                idx = lib.roll(idx, 1, 1)
                idx[:, 0] = self.vocab_size  # special <BLANK> token
                embs.append(tok_emb)
            # concat all of the embeddings together and pass through an MLP
            x = lib.cat(embs, -1)  # (b, t, n_embd * block_size)
            logits = self.mlp(x)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-1)
            return logits, loss

    class Bigram(nn.Module):

        def __init__(self, config):
            super().__init__()
            n = config.vocab_size
            self.logits = nn.Parameter(lib.zeros((n, n)))

        def get_block_size(self):
            return 1  # this model only needs one previous character to predict the next

        def forward(self, idx, targets=None):
            # 'forward pass', lol
            logits = self.logits[idx]
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-1)
            return logits, loss

    class CharDataset(Dataset):

        def __init__(self, words, chars, max_word_length):
            self.words = words
            self.chars = chars
            self.max_word_length = max_word_length
            self.stoi = {ch: i + 1 for i, ch in enumerate(chars)}
            self.itos = {i: s for s, i in self.stoi.items()}  # inverse mapping

        def __len__(self):
            return len(self.words)

        def get_vocab_size(self):
            return len(self.chars) + 1  # all the possible characters and special 0 token

        def get_output_length(self):
            return self.max_word_length + 1  # <START> token followed by words

        def encode(self, word):
            ix = lib.tensor([self.stoi[w] for w in word], dtype=lib.long)
            return ix

        def decode(self, ix):
            word = "".join(self.itos[i] for i in ix)
            return word

        def __getitem__(self, idx):
            word = self.words[idx]
            ix = self.encode(word)
            x = lib.zeros(self.max_word_length + 1, dtype=lib.long)
            y = lib.zeros(self.max_word_length + 1, dtype=lib.long)
            x[1:1 + len(ix)] = ix
            y[:len(ix)] = ix
            y[len(ix) + 1:] = -1  # index -1 will mask the loss at the inactive locations
            return x, y

    class InfiniteDataLoader:
        """Samples with replacement from a Dataset, forever (10**10 samples)."""

        def __init__(self, dataset, **kwargs):
            train_sampler = lib.utils.data.RandomSampler(dataset, replacement=True,
                                                         num_samples=int(1e10))
            self.train_loader = DataLoader(dataset, sampler=train_sampler, **kwargs)
            self.data_iter = iter(self.train_loader)

        def next(self):
            try:
                batch = next(self.data_iter)
            except StopIteration:  # only after 1e10 samples... (i.e. basically never)
                self.data_iter = iter(self.train_loader)
                batch = next(self.data_iter)
            return batch

    return dict(Bigram=Bigram, MLP=MLP, RNN=RNN, BoW=BoW, CharDataset=CharDataset,
                InfiniteDataLoader=InfiniteDataLoader, NewGELU=NewGELU)


def _create_datasets(lib, words):
    words = [w.strip() for w in words]  # get rid of any leading or trailing white space
    words = [w for w in words if w]  # get rid of any empty strings
    chars = sorted(list(set("".join(words))))  # all the possible characters
    max_word_length = max(len(w) for w in words)
    test_set_size = min(8, int(len(words) * 0.1))
    rp = np.random.default_rng(3).permutation(len(words)).tolist()  # torch.randperm's order
    train_words = [words[i] for i in rp[:-test_set_size]]
    test_words = [words[i] for i in rp[-test_set_size:]]
    CharDataset = _makemore_py(lib)["CharDataset"]
    return (CharDataset(train_words, chars, max_word_length),
            CharDataset(test_words, chars, max_word_length))


def _makemore_py_script(lib, init, kind, steps=4):
    """makemore.py's main loop with a fixed batch order: AdamW(betas=(0.9, 0.99)),
    model.zero_grad(set_to_none=True), evaluate() under torch.inference_mode, then greedy
    generation through torch.topk and sampling from the same uniforms."""
    F = lib.nn.functional
    train_dataset, test_dataset = _create_datasets(lib, WORDS)
    vocab_size = train_dataset.get_vocab_size()
    block_size = train_dataset.get_output_length()
    config = ModelConfig(vocab_size=vocab_size, block_size=block_size)
    models = _makemore_py(lib)
    model = (models["RNN"](config, cell_type=kind) if kind in ("rnn", "gru")
             else models[kind](config)).double()
    if init is not None:
        model.load_state_dict({k: lib.tensor(_np(v)) for k, v in init.state_dict().items()})
    optimizer = lib.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01,
                                betas=(0.9, 0.99), eps=1e-8)
    batch_loader = lib.utils.data.DataLoader(train_dataset, batch_size=8, shuffle=False)
    rec = []
    it = iter(batch_loader)
    for step in range(steps):  # noqa: B007
        batch = next(it)
        batch = [t.to("cpu") for t in batch]
        X, Y = batch
        logits, loss = model(X, Y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rec.append(loss.item())

    @lib.inference_mode()
    def evaluate(model, dataset, batch_size=4, max_batches=None):
        model.eval()
        loader = lib.utils.data.DataLoader(dataset, shuffle=False, batch_size=batch_size,
                                           num_workers=0)
        losses = []
        for i, batch in enumerate(loader):
            batch = [t.to("cpu") for t in batch]
            X, Y = batch
            logits, loss = model(X, Y)
            losses.append(loss.item())
            if max_batches is not None and i >= max_batches:
                break
        mean_loss = lib.tensor(losses).mean().item()
        model.train()  # reset model back to training mode
        return mean_loss

    rec.append(evaluate(model, test_dataset, batch_size=4, max_batches=2))

    @lib.no_grad()
    def generate(model, idx, max_new_tokens, temperature=1.0, do_sample=False, top_k=None,
                 draw=None):
        block_size = model.get_block_size()
        for _ in range(max_new_tokens):
            # if the sequence context is growing too long we must crop it at block_size
            idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
            # forward the model to get the logits for the index in the sequence
            logits, _ = model(idx_cond)
            # pluck the logits at the final step and scale by desired temperature
            logits = logits[:, -1, :] / temperature
            # optionally crop the logits to only the top k options
            if top_k is not None:
                v, _ = lib.topk(logits, top_k)
                logits[logits < v[:, [-1]]] = -float("Inf")
            # apply softmax to convert logits to (normalized) probabilities
            probs = F.softmax(logits, dim=-1)
            # either sample from the distribution or take the most likely element
            if do_sample:
                idx_next = draw(lib, probs)
            else:
                _, idx_next = lib.topk(probs, k=1, dim=-1)
            # append sampled index to the running sequence and continue
            idx = lib.cat((idx, idx_next), dim=1)
        return idx

    X_init = lib.zeros(3, 1, dtype=lib.long)
    top_k = 5
    steps = train_dataset.get_output_length() - 1  # -1 because we already start with <START>
    X_samp = generate(model, X_init, steps, top_k=top_k, do_sample=True, draw=_Draws(1))
    rec.append(X_samp.tolist())
    rec.append(generate(model, X_init, 4).tolist())
    samples = []
    for i in range(X_samp.size(0)):
        # get the i'th row of sampled integers, as python list
        row = X_samp[i, 1:].tolist()  # note: we need to crop out the first <START> token
        # token 0 is the <STOP> token, so we crop the output sequence at that point
        crop_index = row.index(0) if 0 in row else len(row)
        row = row[:crop_index]
        samples.append(train_dataset.decode(row))
    rec.append(samples)
    rec += [_np(v) for v in model.state_dict().values()]
    return rec, model


@pytest.mark.parametrize("kind", ["Bigram", "MLP", "rnn", "gru", "BoW"])
def test_makemore_py_models_match_torch(kind):
    torch.manual_seed(0)
    _, init = _makemore_py_script(torch, None, kind, steps=0)
    t, t_model = _makemore_py_script(torch, init, kind)
    n, n_model = _makemore_py_script(ng, init, kind)
    assert list(n_model.state_dict()) == list(t_model.state_dict())
    _check_records(t, n, 1e-9)


def test_makemore_py_dataset_and_endless_loader():
    """CharDataset's -1 masked targets, and InfiniteDataLoader: RandomSampler with replacement
    over 10**10 samples draws its indices as they are read (the whole order would be 75 GiB)."""
    datasets = {lib.__name__: _create_datasets(lib, WORDS) for lib in (torch, ng)}
    for i in (0, 5):
        for a, b in zip(datasets["torch"][0][i], datasets["nodegrad"][0][i], strict=True):
            assert a.tolist() == b.tolist() and b.dtype == ng.int64
    train = datasets["nodegrad"][0]
    loader = _makemore_py(ng)["InfiniteDataLoader"](train, batch_size=4, pin_memory=True,
                                                    num_workers=0)
    assert len(loader.train_loader) == 2_500_000_000
    seen = set()
    for _ in range(3):
        X, Y = loader.next()
        assert tuple(X.shape) == (4, train.get_output_length()) and X.dtype == ng.int64
        seen.update(X[:, 1].tolist())
    sampler = ng.utils.data.RandomSampler(train, replacement=True, num_samples=200_000,
                                          generator=ng.Generator().manual_seed(3))
    again = ng.utils.data.RandomSampler(train, replacement=True, num_samples=200_000,
                                        generator=ng.Generator().manual_seed(3))
    order = list(sampler)
    assert len(order) == 200_000 and order == list(again)
    assert 0 <= min(order) and max(order) < len(train) and len(set(order)) == len(train)
    # a loader reads the same order in slices (across the blocks it is drawn in)
    ds = ng.utils.data.TensorDataset(ng.arange(len(train)))
    loader = ng.utils.data.DataLoader(ds, batch_size=1000, sampler=ng.utils.data.RandomSampler(
        ds, replacement=True, num_samples=200_000, generator=ng.Generator().manual_seed(3)))
    it = iter(loader)
    assert [i for _ in range(70) for i in next(it)[0].tolist()] == order[:70_000]
    # WeightedRandomSampler with replacement likewise (class-balanced endless sampling)
    weighted = ng.utils.data.WeightedRandomSampler([0.25, 0.75], num_samples=int(1e10),
                                                   generator=ng.Generator().manual_seed(0))
    loader = ng.utils.data.DataLoader(ng.utils.data.TensorDataset(ng.arange(2)),
                                      sampler=weighted, batch_size=20_000)
    assert len(loader) == 500_000
    assert abs(next(iter(loader))[0].double().mean().item() - 0.75) < 0.02


def test_nanogpt_attention_dropout_in_training():
    """nanoGPT passes dropout_p=self.dropout while training: the attention weights are dropped
    and rescaled by 1/(1-p), as PyTorch's (row 0 of a causal attention sees only itself: its
    output is v[0] / (1 - p) or 0), and a seed repeats the mask."""
    config = GPTConfig(dropout=0.5)
    ng.manual_seed(0)
    model = _nanogpt(ng)(config).double()
    attn = model.transformer.h[0].attn
    x = ng.randn(3, 6, 16, dtype=ng.float64)
    ng.manual_seed(1)
    a = attn(x)
    ng.manual_seed(1)
    assert (attn(x) == a).all().item()
    attn.eval()
    assert (attn(x) == attn(x)).all().item()
    F = ng.nn.functional
    q = ng.randn(2, 2, 5, 4, dtype=ng.float64)
    y = F.scaled_dot_product_attention(q, q, q, attn_mask=None, dropout_p=0.5, is_causal=True)
    row0 = y[:, :, 0].numpy()
    kept = np.isclose(row0, 2 * q[:, :, 0].numpy(), rtol=1e-12).all(-1)
    dropped = (row0 == 0).all(-1)
    assert (kept | dropped).all()
