"""Modern language-model code (Llama, Mistral/Hugging Face, LoRA, mixture of experts), ported
from PyTorch by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) in the style
of the reference implementations. Both runs start from PyTorch's seeded weights (copied through
NumPy) and see the same generated tokens, so every loss, gradient and parameter must agree to
rounding (float64 to 1e-10; the float32 upcasting code to 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, assert_same  # noqa: F401
from _ports import arr as _arr

torch = pytest.importorskip("torch")

TOL = 1e-10
V = 17  # vocabulary size of the generated token data


def tokens(n: int = 400, seed: int = 0) -> np.ndarray:
    """A token stream with structure (a noisy counter mod ``V``) that a tiny model can learn."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([1, 2, 3], size=n, p=[0.6, 0.3, 0.1])
    return np.cumsum(steps) % V


def load_from_torch(lib, build, dtype="float64", seed=0):
    """``build(lib)`` holding the weights torch's seeded ``build(torch)`` draws, in ``dtype``."""
    torch.manual_seed(seed)
    ref = build(torch).to(getattr(torch, dtype))
    init = {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy().copy()
            for k, v in ref.state_dict().items()}  # bfloat16 exactly through float32
    model = build(lib).to(getattr(lib, dtype))
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def arr(x):
    """``_ports.arr`` that also reads bfloat16 tensors (through float32, exactly)."""
    if isinstance(x, dict):
        return {k: arr(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [arr(v) for v in x]
    if hasattr(x, "detach") and str(x.dtype).endswith("bfloat16"):
        x = x.float()
    return _arr(x)


def arrays(d: dict) -> dict:
    return {k: arr(v) for k, v in d.items()}


def grads(model) -> dict:
    return {n: arr(p.grad) for n, p in model.named_parameters() if p.grad is not None}


# ============================ Llama (Meta's reference model.py) ==============================

@dataclass
class ModelArgs:
    dim: int = 16
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = 2
    vocab_size: int = V
    multiple_of: int = 8  # make SwiGLU hidden layer size multiple of large power of 2
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_batch_size: int = 4
    max_seq_len: int = 16
    upcast: bool = False  # RMSNorm and RoPE in float32 (the reference's .float()); else x.dtype
    checkpoint: bool = False  # activation checkpointing of each block
    tie: bool = True  # the output head shares the embedding matrix
    use_scaled_rope: bool = False  # Llama 3.1's long-context frequency scaling


def llama(lib):
    """Llama's model.py (RMSNorm, complex RoPE, GQA, preallocated KV cache, SwiGLU) as written,
    with ``torch`` spelled ``lib`` and fairscale's parallel layers as plain ones."""
    nn = lib.nn
    F = lib.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-6, upcast: bool = True):
            super().__init__()
            self.eps = eps
            self.upcast = upcast
            self.weight = nn.Parameter(lib.ones(dim))

        def _norm(self, x):
            return x * lib.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

        def forward(self, x):
            output = self._norm(x.float() if self.upcast else x).type_as(x)
            return output * self.weight

    def apply_scaling(freqs):
        # Values obtained from grid search (a context of 8192 in the original; 16 here)
        scale_factor = 8
        low_freq_factor = 1
        high_freq_factor = 4
        old_context_len = 16

        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        new_freqs = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < high_freq_wavelen:
                new_freqs.append(freq)
            elif wavelen > low_freq_wavelen:
                new_freqs.append(freq / scale_factor)
            else:
                assert low_freq_wavelen != high_freq_wavelen
                smooth = (old_context_len / wavelen - low_freq_factor) / (
                    high_freq_factor - low_freq_factor)
                new_freqs.append((1 - smooth) * freq / scale_factor + smooth * freq)
        return lib.tensor(new_freqs, dtype=freqs.dtype, device=freqs.device)

    def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0, use_scaled=False,
                             dtype=lib.float32):
        freqs = 1.0 / (theta ** (lib.arange(0, dim, 2)[: (dim // 2)].to(dtype) / dim))
        if use_scaled:
            freqs = apply_scaling(freqs)
        t = lib.arange(end, device=freqs.device, dtype=dtype)
        freqs = lib.outer(t, freqs)
        freqs_cis = lib.polar(lib.ones_like(freqs), freqs)  # complex64
        return freqs_cis

    def reshape_for_broadcast(freqs_cis, x):
        ndim = x.ndim
        assert 0 <= 1 < ndim
        assert freqs_cis.shape == (x.shape[1], x.shape[-1])
        shape = [d if i == 1 or i == ndim - 1 else 1 for i, d in enumerate(x.shape)]
        return freqs_cis.view(*shape)

    def apply_rotary_emb(xq, xk, freqs_cis, upcast):
        up = (lambda t: t.float()) if upcast else (lambda t: t)
        xq_ = lib.view_as_complex(up(xq).reshape(*xq.shape[:-1], -1, 2))
        xk_ = lib.view_as_complex(up(xk).reshape(*xk.shape[:-1], -1, 2))
        freqs_cis = reshape_for_broadcast(freqs_cis, xq_)
        xq_out = lib.view_as_real(xq_ * freqs_cis).flatten(3)
        xk_out = lib.view_as_real(xk_ * freqs_cis).flatten(3)
        return xq_out.type_as(xq), xk_out.type_as(xk)

    def repeat_kv(x, n_rep: int):
        """torch.repeat_interleave(x, dim=2, repeats=n_rep)"""
        bs, slen, n_kv_heads, head_dim = x.shape
        if n_rep == 1:
            return x
        return (
            x[:, :, :, None, :]
            .expand(bs, slen, n_kv_heads, n_rep, head_dim)
            .reshape(bs, slen, n_kv_heads * n_rep, head_dim)
        )

    class Attention(nn.Module):
        def __init__(self, args: ModelArgs):
            super().__init__()
            self.n_kv_heads = args.n_heads if args.n_kv_heads is None else args.n_kv_heads
            self.n_local_heads = args.n_heads
            self.n_local_kv_heads = self.n_kv_heads
            self.n_rep = self.n_local_heads // self.n_local_kv_heads
            self.head_dim = args.dim // args.n_heads
            self.upcast = args.upcast

            self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
            self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
            self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
            self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
            self.args = args
            self.cache_k = None
            self.cache_v = None

        def setup_cache(self, dtype):
            shape = (self.args.max_batch_size, self.args.max_seq_len, self.n_local_kv_heads,
                     self.head_dim)
            self.cache_k = lib.zeros(shape, dtype=dtype)
            self.cache_v = lib.zeros(shape, dtype=dtype)

        def forward(self, x, start_pos: int, freqs_cis, mask):
            bsz, seqlen, _ = x.shape
            xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)

            xq = xq.view(bsz, seqlen, self.n_local_heads, self.head_dim)
            xk = xk.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
            xv = xv.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)

            xq, xk = apply_rotary_emb(xq, xk, freqs_cis=freqs_cis, upcast=self.upcast)

            if self.cache_k is not None:  # inference: the preallocated cache
                self.cache_k = self.cache_k.to(xq)
                self.cache_v = self.cache_v.to(xq)

                self.cache_k[:bsz, start_pos : start_pos + seqlen] = xk
                self.cache_v[:bsz, start_pos : start_pos + seqlen] = xv

                keys = self.cache_k[:bsz, : start_pos + seqlen]
                values = self.cache_v[:bsz, : start_pos + seqlen]
            else:
                keys, values = xk, xv

            # repeat k/v heads if n_kv_heads < n_heads
            keys = repeat_kv(keys, self.n_rep)  # (bs, cache_len + seqlen, n_local_heads, head_dim)
            values = repeat_kv(values, self.n_rep)

            xq = xq.transpose(1, 2)  # (bs, n_local_heads, seqlen, head_dim)
            keys = keys.transpose(1, 2)  # (bs, n_local_heads, cache_len + seqlen, head_dim)
            values = values.transpose(1, 2)
            scores = lib.matmul(xq, keys.transpose(2, 3)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask  # (bs, n_local_heads, seqlen, cache_len + seqlen)
            scores = F.softmax(scores.float() if self.upcast else scores, dim=-1).type_as(xq)
            output = lib.matmul(scores, values)  # (bs, n_local_heads, seqlen, head_dim)
            output = output.transpose(1, 2).contiguous().view(bsz, seqlen, -1)
            return self.wo(output)

    class FeedForward(nn.Module):
        def __init__(self, dim, hidden_dim, multiple_of, ffn_dim_multiplier):
            super().__init__()
            hidden_dim = int(2 * hidden_dim / 3)
            # custom dim factor multiplier
            if ffn_dim_multiplier is not None:
                hidden_dim = int(ffn_dim_multiplier * hidden_dim)
            hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)

            self.w1 = nn.Linear(dim, hidden_dim, bias=False)
            self.w2 = nn.Linear(hidden_dim, dim, bias=False)
            self.w3 = nn.Linear(dim, hidden_dim, bias=False)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class TransformerBlock(nn.Module):
        def __init__(self, layer_id: int, args: ModelArgs):
            super().__init__()
            self.n_heads = args.n_heads
            self.dim = args.dim
            self.head_dim = args.dim // args.n_heads
            self.attention = Attention(args)
            self.feed_forward = FeedForward(
                dim=args.dim,
                hidden_dim=4 * args.dim,
                multiple_of=args.multiple_of,
                ffn_dim_multiplier=args.ffn_dim_multiplier,
            )
            self.layer_id = layer_id
            self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps, upcast=args.upcast)
            self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps, upcast=args.upcast)

        def forward(self, x, start_pos: int, freqs_cis, mask):
            h = x + self.attention(self.attention_norm(x), start_pos, freqs_cis, mask)
            out = h + self.feed_forward(self.ffn_norm(h))
            return out

    class Transformer(nn.Module):
        def __init__(self, params: ModelArgs):
            super().__init__()
            self.params = params
            self.vocab_size = params.vocab_size
            self.n_layers = params.n_layers

            self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)

            self.layers = lib.nn.ModuleList()
            for layer_id in range(params.n_layers):
                self.layers.append(TransformerBlock(layer_id, params))

            self.norm = RMSNorm(params.dim, eps=params.norm_eps, upcast=params.upcast)
            self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
            if params.tie:
                self.output.weight = self.tok_embeddings.weight

            self.freqs_cis = None

        def _freqs(self):
            if self.freqs_cis is None:  # a plain attribute (not a buffer), as in the reference
                dtype = lib.float32 if self.params.upcast else self.output.weight.dtype
                self.freqs_cis = precompute_freqs_cis(
                    self.params.dim // self.params.n_heads,
                    self.params.max_seq_len * 2,
                    self.params.rope_theta,
                    self.params.use_scaled_rope,
                    dtype=dtype,
                )
            return self.freqs_cis

        def forward(self, tokens, start_pos: int = 0):
            _bsz, seqlen = tokens.shape
            h = self.tok_embeddings(tokens)
            freqs_cis = self._freqs()[start_pos : start_pos + seqlen]

            mask = None
            if seqlen > 1:
                mask = lib.full((seqlen, seqlen), float("-inf"), device=tokens.device)
                mask = lib.triu(mask, diagonal=1)
                # When performing key-value caching, we compute the attention scores
                # only for the new sequence. Thus, the matrix of scores is of size
                # (seqlen, cache_len + seqlen), and the only masked entries are (i, j) for
                # j > cache_len + i, since row i corresponds to token cache_len + i.
                mask = lib.hstack(
                    [lib.zeros((seqlen, start_pos), device=tokens.device), mask]
                ).type_as(h)

            for layer in self.layers:
                if self.params.checkpoint and self.training:
                    h = lib.utils.checkpoint.checkpoint(
                        layer, h, start_pos, freqs_cis, mask, use_reentrant=False)
                else:
                    h = layer(h, start_pos, freqs_cis, mask)
            h = self.norm(h)
            output = self.output(h).float() if self.params.upcast else self.output(h)
            return output

        def setup_caches(self, dtype):
            for layer in self.layers:
                layer.attention.setup_cache(dtype)

    return Transformer


def cosine_with_warmup(warmup: int, total: int, min_ratio: float = 0.1):
    """The ``lr_lambda`` of the usual warmup + cosine schedule (a factor of the base lr)."""

    def lr_lambda(step):
        if step < warmup:
            return float(step + 1) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return lr_lambda


def param_groups(model, weight_decay: float):
    """AdamW groups as LLM trainers build them: decay for matrices, none for norms and biases."""
    params = {pn: p for pn, p in model.named_parameters() if p.requires_grad}
    decay = [p for n, p in params.items() if p.dim() >= 2]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def get_batch(lib, data: np.ndarray, step: int, batch_size: int, block: int, pad: bool):
    """Windows of the token stream at offsets drawn by NumPy; targets padded with -100."""
    rng = np.random.default_rng(100 + step)
    ix = rng.integers(0, len(data) - block - 1, size=batch_size)
    x = lib.stack([lib.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
    y = lib.stack([lib.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
    if pad:  # the last tokens of the first row are padding: no loss there
        y[0, -3:] = -100
    return x, y


def train_llama(lib, args: ModelArgs, dtype="float64", steps=4, accum=2, batch_size=3,
                block=8):
    F = lib.nn.functional
    model = load_from_torch(lib, lambda L: llama(L)(args), dtype)
    assert model.output.weight is model.tok_embeddings.weight or not args.tie
    opt = lib.optim.AdamW(param_groups(model, 0.1), lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
    sched = lib.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(2, steps))
    data = tokens()
    rec = {"loss": [], "lr": [], "norm": [], "grad": [], "w": []}
    model.train()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            x, y = get_batch(lib, data, step * accum + micro, batch_size, block, pad=True)
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                   ignore_index=-100, label_smoothing=0.1)
            (loss / accum).backward()
            total += loss.item() / accum
        rec["grad"].append(grads(model))
        rec["norm"].append(float(lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        rec["loss"].append(total)
        rec["lr"].append(sched.get_last_lr())
        rec["w"].append(arrays(model.state_dict()))
    return rec


def test_llama_training_float64_matches_torch():
    """GQA, complex RoPE, SwiGLU, tied head; label-smoothed CE with ignored targets, gradient
    accumulation, AdamW groups by ``p.dim() < 2``, warmup + cosine LambdaLR, clipping."""
    args = ModelArgs()
    assert_same(train_llama(ng, args), train_llama(torch, args))


def test_llama_training_checkpointed_untied_mha():
    """``checkpoint(block, ..., use_reentrant=False)`` changes no number; plain multi-head;
    Llama 3.1's scaled rotary frequencies (a loop over a tensor's 0-d entries)."""
    args = ModelArgs(checkpoint=True, tie=False, n_kv_heads=None, n_layers=1,
                     use_scaled_rope=True, rope_theta=10000.0)
    got = train_llama(ng, args, steps=2)
    assert_same(got, train_llama(torch, args, steps=2))
    plain = train_llama(ng, ModelArgs(tie=False, n_kv_heads=None, n_layers=1,
                                      use_scaled_rope=True, rope_theta=10000.0), steps=2)
    assert_same(got, plain, 0.0)


def test_llama_training_float32_upcast_matches_torch():
    """The reference's float32 RMSNorm, RoPE and softmax (``.float()`` then ``.type_as``)."""
    args = ModelArgs(upcast=True)
    assert_same(train_llama(ng, args, "float32", steps=3),
                train_llama(torch, args, "float32", steps=3), 2e-5)


# ---------------------------- Llama inference: KV cache and top-p sampling ------------------

def sample_top_p(lib, probs, p, draw=None, generator=None):
    """Llama's nucleus sampling: sort descending, drop the tail past ``p``, renormalise, draw."""
    probs_sort, probs_idx = lib.sort(probs, dim=-1, descending=True)
    probs_sum = lib.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p
    probs_sort[mask] = 0.0
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    if draw is None:
        next_token = lib.multinomial(probs_sort, num_samples=1, generator=generator)
    else:
        next_token = draw(lib, probs_sort)
    next_token = lib.gather(probs_idx, -1, next_token)
    return next_token


class Draws:
    """``torch.multinomial`` with a seeded generator gives other bits in nodegrad (its own
    generator), so both runs map the same uniforms through their own probabilities; the
    probabilities are recorded."""

    def __init__(self, seed=0):
        self.u = iter(np.random.default_rng(seed).random(10_000))
        self.seen = []

    def __call__(self, lib, p):
        p = arr(p)
        self.seen.append(p)
        c = np.cumsum(p, axis=-1)
        c = c / c[..., -1:]
        ix = [[min(int((row < next(self.u)).sum()), p.shape[-1] - 1)] for row in c]
        return lib.tensor(ix)


def llama_generate(lib, model, prompt_tokens, max_gen_len, temperature=0.6, top_p=0.9,
                   draw=None, generator=None, eos=None):
    """Llama's ``generate``: prompts of unequal length padded with -1, the cache filled from
    ``prev_pos``, prompt positions kept, stop at ``eos`` in every row."""
    params = model.params
    bsz = len(prompt_tokens)
    min_prompt_len = min(len(t) for t in prompt_tokens)
    max_prompt_len = max(len(t) for t in prompt_tokens)
    total_len = min(params.max_seq_len, max_gen_len + max_prompt_len)
    pad_id = -1
    tokens = lib.full((bsz, total_len), pad_id, dtype=lib.long)
    for k, t in enumerate(prompt_tokens):
        tokens[k, : len(t)] = lib.tensor(t, dtype=lib.long)
    prev_pos = 0
    eos_reached = lib.tensor([False] * bsz)
    input_text_mask = tokens != pad_id
    all_logits = []
    with lib.inference_mode():
        for cur_pos in range(min_prompt_len, total_len):
            logits = model.forward(tokens[:, prev_pos:cur_pos], prev_pos)
            all_logits.append(arr(logits))
            if temperature > 0:
                probs = lib.softmax(logits[:, -1] / temperature, dim=-1)
                next_token = sample_top_p(lib, probs, top_p, draw, generator)
            else:
                next_token = lib.argmax(logits[:, -1], dim=-1)
            next_token = next_token.reshape(-1)
            # only replace token if prompt has already been generated
            next_token = lib.where(input_text_mask[:, cur_pos], tokens[:, cur_pos], next_token)
            tokens[:, cur_pos] = next_token
            if eos is not None:
                eos_reached |= (~input_text_mask[:, cur_pos]) & (next_token == eos)
            prev_pos = cur_pos
            if all(eos_reached):
                break
    return tokens, all_logits


def llama_inference(lib, temperature, draw=None):
    args = ModelArgs()
    model = load_from_torch(lib, lambda L: llama(L)(args))
    model.eval()
    with lib.no_grad():
        full = model(lib.tensor(tokens(12, seed=3)[None].repeat(2, 0)))
    model.setup_caches(lib.float64)
    prompts = [[1, 2, 3, 5], [4, 5, 6, 7, 9, 10]]
    out, logits = llama_generate(lib, model, prompts, 8, temperature=temperature, draw=draw)
    # the cache, filled step by step, gives the logits of one full causal pass
    model.setup_caches(lib.float64)
    with lib.no_grad():
        toks = lib.tensor(tokens(12, seed=3)[None].repeat(2, 0))
        first = model(toks[:, :5], 0)
        rest = [model(toks[:, i:i + 1], i) for i in range(5, 12)]
    cached = lib.cat([first] + rest, dim=1)
    return {"tokens": out.tolist(), "logits": logits, "full": arr(full), "cached": arr(cached)}


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_llama_generate_with_kv_cache_matches_torch(temperature):
    draws = {}
    for lib in (torch, ng):
        draws[lib.__name__] = Draws(1) if temperature else None
    got = llama_inference(ng, temperature, draws["nodegrad"])
    ref = llama_inference(torch, temperature, draws["torch"])
    assert_same(got, ref)
    assert_same(got["cached"], got["full"], 1e-12)
    assert got["tokens"][0][:4] == [1, 2, 3, 5] and got["tokens"][1][:6] == [4, 5, 6, 7, 9, 10]
    if temperature:
        assert_same(draws["nodegrad"].seen, draws["torch"].seen)
        for p in draws["nodegrad"].seen:  # top-p left a renormalised nucleus
            np.testing.assert_allclose(p.sum(-1), 1.0)
            assert ((p > 0).sum(-1) < V).all()


def test_llama_sampling_with_seeded_generator_is_reproducible():
    """``torch.multinomial(..., generator=g)``: the same seed gives the same tokens, drawn
    only from the nucleus."""
    logits = ng.tensor(np.random.default_rng(0).standard_normal((64, V)) * 3)
    probs = ng.softmax(logits / 0.7, dim=-1)
    runs = []
    for _ in range(2):
        g = ng.Generator().manual_seed(1234)
        runs.append(sample_top_p(ng, probs.clone(), 0.5, generator=g).tolist())
    assert runs[0] == runs[1]
    p = arr(probs)
    order = np.argsort(-p, axis=-1, kind="stable")
    ps = np.take_along_axis(p, order, -1)
    keep = (np.cumsum(ps, -1) - ps) <= 0.5
    for row, (tok,) in enumerate(runs[0]):
        allowed = set(order[row][keep[row]].tolist())
        assert tok in allowed


# ============== Hugging Face style (Llama/Mistral modeling code): rotate_half, SDPA ==========

@dataclass
class HFConfig:
    vocab_size: int = V
    hidden_size: int = 16
    intermediate_size: int = 24
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 8  # grown on demand by the rotary cache
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    sliding_window: int | None = None
    attn: str = "sdpa"  # "sdpa" or "eager" (matmul, additive float mask, upcast softmax)
    tie_word_embeddings: bool = True
    upcast: str = "float64"  # RMSNorm, rotary frequencies, eager softmax (float32 originally)


def hf_llama(lib):
    """The Hugging Face modeling code's pieces as written (``torch`` spelled ``lib``)."""
    nn = lib.nn
    F = lib.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, hidden_size, eps=1e-6, upcast="float32"):
            super().__init__()
            self.weight = nn.Parameter(lib.ones(hidden_size))
            self.variance_epsilon = eps
            self.upcast = getattr(lib, upcast)

        def forward(self, hidden_states):
            input_dtype = hidden_states.dtype
            hidden_states = hidden_states.to(self.upcast)
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            hidden_states = hidden_states * lib.rsqrt(variance + self.variance_epsilon)
            return self.weight * hidden_states.to(input_dtype)

    class RotaryEmbedding(nn.Module):
        def __init__(self, dim, max_position_embeddings=2048, base=10000, device=None,
                     upcast="float32"):
            super().__init__()
            self.dim = dim
            self.max_position_embeddings = max_position_embeddings
            self.base = base
            up = getattr(lib, upcast)  # .float() originally: float32 cos/sin differ by an ulp
            inv_freq = 1.0 / (self.base ** (
                lib.arange(0, self.dim, 2, dtype=lib.int64).to(up).to(device) / self.dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)
            self._set_cos_sin_cache(seq_len=max_position_embeddings,
                                    device=self.inv_freq.device, dtype=lib.get_default_dtype())

        def _set_cos_sin_cache(self, seq_len, device, dtype):
            self.max_seq_len_cached = seq_len
            t = lib.arange(self.max_seq_len_cached, device=device, dtype=lib.int64)
            t = t.type_as(self.inv_freq)
            freqs = lib.outer(t, self.inv_freq)
            # Different from paper, but it uses a different permutation to obtain the same result
            emb = lib.cat((freqs, freqs), dim=-1)
            self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
            self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)

        def forward(self, x, seq_len=None):
            # x: [bs, num_attention_heads, seq_len, head_size]
            if seq_len > self.max_seq_len_cached:
                self._set_cos_sin_cache(seq_len=seq_len, device=x.device, dtype=x.dtype)
            return (self.cos_cached[:seq_len].to(dtype=x.dtype),
                    self.sin_cached[:seq_len].to(dtype=x.dtype))

    def rotate_half(x):
        """Rotates half the hidden dims of the input."""
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2 :]
        return lib.cat((-x2, x1), dim=-1)

    def apply_rotary_pos_emb(q, k, cos, sin, position_ids, unsqueeze_dim=1):
        cos = cos[position_ids].unsqueeze(unsqueeze_dim)
        sin = sin[position_ids].unsqueeze(unsqueeze_dim)
        q_embed = (q * cos) + (rotate_half(q) * sin)
        k_embed = (k * cos) + (rotate_half(k) * sin)
        return q_embed, k_embed

    class MLP(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
            self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
            self.act_fn = nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class Attention(nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.config = config
            self.layer_idx = layer_idx
            self.hidden_size = config.hidden_size
            self.num_heads = config.num_attention_heads
            self.head_dim = self.hidden_size // self.num_heads
            self.num_key_value_heads = config.num_key_value_heads
            self.num_key_value_groups = self.num_heads // self.num_key_value_heads
            self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=True)
            self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim,
                                    bias=True)
            self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim,
                                    bias=True)
            self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)
            self.rotary_emb = RotaryEmbedding(
                self.head_dim, max_position_embeddings=config.max_position_embeddings,
                base=config.rope_theta, upcast=config.upcast)

        def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None,
                    use_cache=False):
            bsz, q_len, _ = hidden_states.size()
            query_states = self.q_proj(hidden_states)
            key_states = self.k_proj(hidden_states)
            value_states = self.v_proj(hidden_states)

            query_states = query_states.view(bsz, q_len, self.num_heads, self.head_dim)
            query_states = query_states.transpose(1, 2)
            key_states = key_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim)
            key_states = key_states.transpose(1, 2)
            value_states = value_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim)
            value_states = value_states.transpose(1, 2)

            kv_seq_len = key_states.shape[-2]
            if past_key_value is not None:
                kv_seq_len += past_key_value[0].shape[-2]
            cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
            query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin,
                                                            position_ids)
            if past_key_value is not None:  # reuse k, v, self_attention
                key_states = lib.cat([past_key_value[0], key_states], dim=2)
                value_states = lib.cat([past_key_value[1], value_states], dim=2)
            past_key_value = (key_states, value_states) if use_cache else None

            key_states = lib.repeat_interleave(key_states, self.num_key_value_groups, dim=1)
            value_states = value_states.repeat_interleave(self.num_key_value_groups, dim=1)

            if self.config.attn == "sdpa":
                attn_output = F.scaled_dot_product_attention(
                    query_states, key_states, value_states,
                    attn_mask=attention_mask,
                    dropout_p=0.0,
                    # q_len == 1 attends to everything cached: no causal mask then
                    is_causal=attention_mask is None and q_len > 1,
                )
            else:
                attn_weights = lib.matmul(query_states, key_states.transpose(2, 3))
                attn_weights = attn_weights / math.sqrt(self.head_dim)
                if attention_mask is not None:  # additive: 0 or the dtype's minimum
                    attn_weights = attn_weights + attention_mask
                # upcast attention to fp32
                up = getattr(lib, self.config.upcast)
                attn_weights = F.softmax(attn_weights, dim=-1, dtype=up)
                attn_weights = attn_weights.to(query_states.dtype)
                attn_output = lib.matmul(attn_weights, value_states)
            attn_output = attn_output.transpose(1, 2).contiguous()
            attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
            return self.o_proj(attn_output), past_key_value

    class DecoderLayer(nn.Module):
        def __init__(self, config, layer_idx):
            super().__init__()
            self.self_attn = Attention(config, layer_idx)
            self.mlp = MLP(config)
            self.input_layernorm = RMSNorm(
                config.hidden_size, eps=config.rms_norm_eps, upcast=config.upcast)
            self.post_attention_layernorm = RMSNorm(
                config.hidden_size, eps=config.rms_norm_eps, upcast=config.upcast)

        def forward(self, hidden_states, attention_mask=None, position_ids=None,
                    past_key_value=None, use_cache=False):
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
            hidden_states, present = self.self_attn(hidden_states, attention_mask, position_ids,
                                                    past_key_value, use_cache)
            hidden_states = residual + hidden_states
            residual = hidden_states
            hidden_states = self.post_attention_layernorm(hidden_states)
            hidden_states = self.mlp(hidden_states)
            hidden_states = residual + hidden_states
            return hidden_states, present

    class ForCausalLM(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(
                [DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
            self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps,
                                upcast=config.upcast)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            if config.tie_word_embeddings:
                self.lm_head.weight = self.embed_tokens.weight

        def _mask(self, attention_mask, q_len, past_len, dtype):
            """Causal (and sliding-window) boolean mask of shape (bsz, 1, q, kv), padded keys
            off; ``None`` where ``is_causal`` says it all."""
            kv_len = past_len + q_len
            if attention_mask is None and self.config.sliding_window is None:
                return None
            causal = lib.ones(q_len, kv_len, dtype=lib.bool).tril(diagonal=past_len)
            if self.config.sliding_window is not None:
                causal = causal & ~lib.ones(q_len, kv_len, dtype=lib.bool).tril(
                    diagonal=past_len - self.config.sliding_window)
            mask = causal[None, None, :, :]
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, :].bool()
            if self.config.attn == "sdpa":
                return mask
            min_dtype = lib.finfo(dtype).min
            return lib.zeros(mask.shape, dtype=dtype).masked_fill(~mask, min_dtype)

        def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None,
                    past_key_values=None, use_cache=False):
            past_len = 0 if past_key_values is None else past_key_values[0][0].shape[-2]
            if position_ids is None:
                if attention_mask is not None:  # left padding: positions count real tokens
                    position_ids = attention_mask.long().cumsum(-1) - 1
                    position_ids.masked_fill_(attention_mask == 0, 1)
                    position_ids = position_ids[:, -input_ids.shape[1]:]
                else:
                    position_ids = lib.arange(past_len, past_len + input_ids.shape[1],
                                              dtype=lib.long).unsqueeze(0)
            hidden_states = self.embed_tokens(input_ids)
            mask = self._mask(attention_mask, input_ids.shape[1], past_len, hidden_states.dtype)
            presents = []
            for i, layer in enumerate(self.layers):
                past = None if past_key_values is None else past_key_values[i]
                hidden_states, present = layer(hidden_states, mask, position_ids, past,
                                               use_cache)
                presents.append(present)
            hidden_states = self.norm(hidden_states)
            logits = self.lm_head(hidden_states)
            logits = logits.float() if logits.dtype != lib.float64 else logits
            loss = None
            if labels is not None:
                # Shift so that tokens < n predict n
                shift_logits = logits[..., :-1, :].contiguous()
                shift_labels = labels[..., 1:].contiguous()
                loss_fct = nn.CrossEntropyLoss(label_smoothing=0.05)  # ignore_index=-100
                shift_logits = shift_logits.view(-1, self.config.vocab_size)
                shift_labels = shift_labels.view(-1)
                shift_labels = shift_labels.to(shift_logits.device)
                loss = loss_fct(shift_logits, shift_labels)
            return loss, logits, (presents if use_cache else None)

    return ForCausalLM


def hf_batch(lib, step, bsz=3, L=8):
    """Right-padded rows of unequal length: the attention mask, labels -100 on padding."""
    data = tokens()
    rng = np.random.default_rng(50 + step)
    ids = np.zeros((bsz, L), np.int64)
    am = np.zeros((bsz, L), np.int64)
    for r in range(bsz):
        n = L - r * 2  # lengths 8, 6, 4
        i = rng.integers(0, len(data) - n)
        ids[r, :n] = data[i:i + n]
        am[r, :n] = 1
    input_ids, attention_mask = lib.tensor(ids), lib.tensor(am)
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


def train_hf(lib, config: HFConfig, steps=3, padded=True):
    model = load_from_torch(lib, lambda L: hf_llama(L)(config))
    assert "layers.0.self_attn.rotary_emb.cos_cached" not in model.state_dict()
    opt = lib.optim.AdamW(param_groups(model, 0.01), lr=1e-2, fused=None)
    sched = lib.optim.lr_scheduler.LambdaLR(opt, lr_lambda=[cosine_with_warmup(1, steps),
                                                            cosine_with_warmup(2, steps, 0.0)])
    rec = {"loss": [], "lr": [], "grad": [], "w": []}
    for step in range(steps):
        input_ids, attention_mask, labels = hf_batch(lib, step)
        if not padded:
            attention_mask, labels = None, input_ids
        loss, _, _ = model(input_ids, attention_mask=attention_mask, labels=labels)
        loss.backward()
        rec["grad"].append(grads(model))
        lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5, norm_type=2.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        rec["loss"].append(loss.item())
        rec["lr"].append(sched.get_last_lr())
        rec["w"].append(arrays(model.state_dict()))
    return rec


@pytest.mark.parametrize("attn,padded,window", [("sdpa", True, None), ("sdpa", False, None),
                                                ("eager", True, None), ("sdpa", False, 3)])
def test_hf_llama_training_matches_torch(attn, padded, window):
    """rotate_half RoPE (non-persistent cos/sin buffers, grown past max_position_embeddings),
    repeat_interleave GQA, SDPA with ``is_causal`` or a boolean mask (padding, Mistral's
    sliding window), the eager float-mask path, shifted label-smoothed CE."""
    config = HFConfig(attn=attn, sliding_window=window)
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)  # the cos/sin caches in float64 from the start
        ng.set_default_dtype(ng.float64)
        try:
            ref, got = train_hf(torch, config, padded=padded), train_hf(ng, config, padded=padded)
        finally:
            torch.set_default_dtype(torch.float32)
            ng.set_default_dtype(ng.float32)
    assert_same(got, ref)


def test_hf_llama_float32_with_float32_upcasts_matches_torch():
    """As shipped: float32 model, RMSNorm / rotary / softmax upcasts in float32."""
    config = HFConfig(attn="eager", upcast="float32")
    torch.manual_seed(0)
    assert_same(train_hf(ng, config, steps=2), train_hf(torch, config, steps=2), 2e-5)


# ---------------------------- HF generation: left padding, torch.cat cache, warpers ----------

def top_k_top_p_filtering(lib, logits, top_k=0, top_p=1.0, filter_value=-float("Inf"),
                          min_tokens_to_keep=1):
    """Hugging Face's classic filter: top-k through ``topk``'s k-th value, top-p through an
    ascending sort, ``cumsum`` of the softmax, ``scatter`` back to vocabulary order."""
    if top_k > 0:
        top_k = min(max(top_k, min_tokens_to_keep), logits.size(-1))  # Safety check
        # Remove all tokens with a probability less than the last token of the top-k
        indices_to_remove = logits < lib.topk(logits, top_k)[0][..., -1, None]
        logits = logits.masked_fill(indices_to_remove, filter_value)
    if top_p < 1.0:
        sorted_logits, sorted_indices = lib.sort(logits, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Remove tokens with cumulative top_p above the threshold (token with 0 are kept)
        sorted_indices_to_remove = cumulative_probs <= (1 - top_p)
        # Keep at least min_tokens_to_keep
        sorted_indices_to_remove[..., -min_tokens_to_keep:] = 0
        # scatter sorted tensors to original indexing
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices,
                                                             sorted_indices_to_remove)
        logits = logits.masked_fill(indices_to_remove, filter_value)
    return logits


def hf_generate(lib, model, prompts, max_new_tokens, draw, use_cache=True, temperature=0.7,
                top_k=5, top_p=0.8):
    """Greedy-free sampling with left padding: the attention mask grows by one column a step,
    positions from its cumulative sum, the tuple cache grows by ``torch.cat``."""
    L = max(len(p) for p in prompts)
    ids = lib.tensor([[0] * (L - len(p)) + p for p in prompts])
    attention_mask = lib.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    past, seen = None, []
    for _ in range(max_new_tokens):
        inputs = ids if past is None else ids[:, -1:]
        _, logits, presents = model(inputs, attention_mask=attention_mask,
                                    past_key_values=past, use_cache=use_cache)
        past = presents if use_cache else None
        scores = logits[:, -1, :] / temperature
        seen.append(arr(scores))
        scores = top_k_top_p_filtering(lib, scores, top_k=top_k, top_p=top_p)
        probs = F_softmax(lib, scores)
        next_tokens = draw(lib, probs).squeeze(1)
        ids = lib.cat([ids, next_tokens[:, None]], dim=-1)
        attention_mask = lib.cat(
            [attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=-1)
    return ids.tolist(), seen


def F_softmax(lib, scores):  # noqa: N802 (the functional spelling)
    return lib.nn.functional.softmax(scores, dim=-1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_generate_left_padded_with_cache_matches_torch(attn):
    config = HFConfig(attn=attn, max_position_embeddings=4)
    out = {}
    for lib in (torch, ng):
        model = load_from_torch(lib, lambda L, c=config: hf_llama(L)(c))
        model.eval()
        with lib.no_grad():
            draws = Draws(2)
            cached = hf_generate(lib, model, [[3, 4, 5], [7, 8, 9, 10, 11]], 5, draws)
            plain = hf_generate(lib, model, [[3, 4, 5], [7, 8, 9, 10, 11]], 5, Draws(2),
                                use_cache=False)
        out[lib.__name__] = {"cached": cached, "plain": plain, "probs": draws.seen}
    got, ref = out["nodegrad"], out["torch"]
    assert_same(got, ref)
    assert got["cached"][0] == got["plain"][0]  # the cache changes no token
    assert_same(got["cached"][1], got["plain"][1], 1e-12)
    for p in got["probs"]:
        assert ((p > 0).sum(-1) <= 5).all()  # top-k left at most 5 tokens


def test_top_k_top_p_filtering_matches_torch():
    """Ties at the k-th value, ``min_tokens_to_keep``, all on random logits in float64."""
    rng = np.random.default_rng(4)
    logits = np.round(rng.standard_normal((6, V)) * 2, 1)  # rounded: ties
    for k, p, keep in [(0, 0.9, 1), (4, 1.0, 1), (3, 0.5, 2), (V + 5, 0.2, 3), (1, 0.99, 1)]:
        got = top_k_top_p_filtering(ng, ng.tensor(logits), k, p, min_tokens_to_keep=keep)
        ref = top_k_top_p_filtering(torch, torch.tensor(logits), k, p, min_tokens_to_keep=keep)
        np.testing.assert_array_equal(arr(got), arr(ref))


# ============================ LoRA (loralib / PEFT style) ====================================

def lora(lib):
    nn = lib.nn
    F = lib.nn.functional

    class LoRALinear(nn.Linear):
        """A frozen ``nn.Linear`` plus the low-rank update ``B A`` scaled by ``alpha / r``;
        ``merge`` folds it into the weight, ``unmerge`` takes it out again."""

        def __init__(self, in_features, out_features, r=4, lora_alpha=8, lora_dropout=0.0,
                     bias=True, fan_in_fan_out=False):
            nn.Linear.__init__(self, in_features, out_features, bias=bias)
            self.r = r
            self.lora_alpha = lora_alpha
            self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else nn.Identity()
            self.fan_in_fan_out = fan_in_fan_out
            self.merged = False
            if r > 0:
                self.lora_A = nn.Parameter(self.weight.new_zeros((r, in_features)))
                self.lora_B = nn.Parameter(self.weight.new_zeros((out_features, r)))
                self.scaling = self.lora_alpha / self.r
                # Freezing the pre-trained weight matrix
                self.weight.requires_grad = False
            self.reset_lora_parameters()

        def reset_lora_parameters(self):
            if hasattr(self, "lora_A"):
                # initialize A the same way as the default for nn.Linear and B to zero
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B)

        def train(self, mode: bool = True):
            nn.Linear.train(self, mode)
            if mode and self.merged:  # make sure that the weights are not merged
                self.unmerge()
            elif not mode and not self.merged:
                self.merge()
            return self

        @lib.no_grad()
        def merge(self):
            if self.r > 0:
                self.weight.data += (self.lora_B @ self.lora_A) * self.scaling
            self.merged = True

        def unmerge(self):
            with lib.no_grad():
                self.weight.sub_((self.lora_B @ self.lora_A) * self.scaling)
            self.merged = False

        def forward(self, x):
            result = F.linear(x, self.weight, bias=self.bias)
            if self.r > 0 and not self.merged:
                result = result + (self.lora_dropout(x) @ self.lora_A.transpose(0, 1)
                                   @ self.lora_B.transpose(0, 1)) * self.scaling
            return result

    def mark_only_lora_as_trainable(model, bias="none"):
        for n, p in model.named_parameters():
            if "lora_" not in n:
                p.requires_grad_(False)
        if bias == "lora_only":
            for m in model.modules():
                if isinstance(m, LoRALinear) and m.bias is not None:
                    m.bias.requires_grad = True

    def lora_state_dict(model):
        return {k: v for k, v in model.state_dict().items() if "lora_" in k}

    return LoRALinear, mark_only_lora_as_trainable, lora_state_dict


def lora_finetune(lib, steps=4):
    """A pretrained HF-style model gets LoRA on q_proj and v_proj (PEFT's default targets);
    only the adapters (and the LoRA layers' biases) train."""
    LoRALinear, mark_only_lora_as_trainable, lora_state_dict = lora(lib)
    config = HFConfig(num_hidden_layers=1)
    model = load_from_torch(lib, lambda L: hf_llama(L)(config))
    for layer in model.layers:
        for name in ("q_proj", "v_proj"):
            old = getattr(layer.self_attn, name)
            new = LoRALinear(old.in_features, old.out_features, r=2, lora_alpha=4)
            new.to(lib.float64)
            with lib.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(old.bias)
                new.lora_A.copy_(lib.tensor(np.linspace(-0.3, 0.3, new.lora_A.numel())
                                            .reshape(new.lora_A.shape)))
            setattr(layer.self_attn, name, new)
    mark_only_lora_as_trainable(model, bias="lora_only")
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen_before = {k: arr(v) for k, v in model.state_dict().items() if "lora_" not in k}
    opt = lib.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=5e-2,
                          weight_decay=0.0)
    rec = {"n": [sum(p.numel() for p in trainable)], "loss": [], "grad": [], "lora": []}
    model.train()
    for step in range(steps):
        input_ids, attention_mask, labels = hf_batch(lib, step)
        loss, _, _ = model(input_ids, attention_mask=attention_mask, labels=labels)
        opt.zero_grad()
        loss.backward()
        rec["loss"].append(loss.item())
        rec["grad"].append({n: arr(p.grad) for n, p in model.named_parameters()
                            if p.requires_grad})
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        opt.step()
        rec["lora"].append(arrays(lora_state_dict(model)))
    after = {k: arr(v) for k, v in model.state_dict().items() if "lora_" not in k}
    changed = sorted(k for k in after if not np.array_equal(after[k], frozen_before[k]))
    rec["changed"] = changed  # only the LoRA layers' biases
    input_ids, attention_mask, _ = hf_batch(lib, 99)
    with lib.no_grad():
        unmerged = model(input_ids, attention_mask=attention_mask)[1]
        model.eval()  # merges
        merged = model(input_ids, attention_mask=attention_mask)[1]
        rec["merged_w"] = arr(model.layers[0].self_attn.q_proj.weight)
        model.train()  # unmerges
        again = model(input_ids, attention_mask=attention_mask)[1]
    rec["out"] = [arr(unmerged), arr(merged), arr(again)]
    rec["flags"] = [model.layers[0].self_attn.q_proj.merged,
                    model.layers[0].self_attn.q_proj.weight.requires_grad]
    return rec


def test_lora_finetune_merge_unmerge_matches_torch():
    got = lora_finetune(ng)
    assert_same(got, lora_finetune(torch))
    assert got["changed"] == ["layers.0.self_attn.q_proj.bias", "layers.0.self_attn.v_proj.bias"]
    assert_same(got["out"][1], got["out"][0], 1e-12)  # merging changes no output
    assert_same(got["out"][2], got["out"][0], 1e-12)
    assert got["flags"] == [False, False]


def test_eval_reaches_overridden_train_of_children():
    """``model.eval()`` calls each child's own ``train(False)`` (regression: the flags were
    set directly, so a LoRA layer nested in a model never merged)."""
    calls = []

    class Tracked(ng.nn.Linear):
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    model = ng.nn.Sequential(ng.nn.Linear(2, 2), ng.nn.Sequential(Tracked(2, 2)))
    assert model.eval() is model and calls == [False]
    assert not any(m.training for m in model.modules())
    model.train()
    assert calls == [False, True] and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="boolean"):
        model.train("eval")


# ============================ mixture of experts (Mixtral / mistral-src) =====================

def moe(lib):
    nn = lib.nn
    F = lib.nn.functional

    class Expert(nn.Module):  # MixtralBlockSparseTop2MLP
        def __init__(self, hidden, ffn):
            super().__init__()
            self.w1 = nn.Linear(hidden, ffn, bias=False)
            self.w2 = nn.Linear(ffn, hidden, bias=False)
            self.w3 = nn.Linear(hidden, ffn, bias=False)
            self.act_fn = nn.SiLU()

        def forward(self, hidden_states):
            current_hidden_states = self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states)
            return self.w2(current_hidden_states)

    class SparseMoeBlock(nn.Module):
        """Mixtral's block: softmax router, top-k renormalised, ``torch.where`` over the
        one-hot expert mask to gather each expert's tokens, ``index_add_`` to combine; the
        router logits are kept for the auxiliary losses. ``style="mistral"`` is mistral-src's
        variant: top-k of the logits, softmax over those, ``results[batch_idx] += ...``."""

        def __init__(self, hidden, ffn, num_experts=4, top_k=2, style="mixtral"):
            super().__init__()
            self.hidden_dim, self.num_experts, self.top_k = hidden, num_experts, top_k
            self.style = style
            self.gate = nn.Linear(hidden, num_experts, bias=False)
            self.experts = nn.ModuleList([Expert(hidden, ffn) for _ in range(num_experts)])
            self.router_logits = None

        def forward(self, hidden_states):
            batch_size, sequence_length, hidden_dim = hidden_states.shape
            hidden_states = hidden_states.view(-1, hidden_dim)
            router_logits = self.gate(hidden_states)
            self.router_logits = router_logits
            if self.style == "mistral":
                weights, selected_experts = lib.topk(router_logits, self.top_k)
                weights = F.softmax(weights, dim=1, dtype=lib.float64).to(hidden_states.dtype)
                results = lib.zeros_like(hidden_states)
                for i, expert in enumerate(self.experts):
                    batch_idx, nth_expert = lib.where(selected_experts == i)
                    results[batch_idx] += weights[batch_idx, nth_expert, None] * expert(
                        hidden_states[batch_idx])
                return results.view(batch_size, sequence_length, hidden_dim)

            routing_weights = F.softmax(router_logits, dim=1, dtype=lib.float64)  # float
            routing_weights, selected_experts = lib.topk(routing_weights, self.top_k, dim=-1)
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
            # we cast back to the input dtype
            routing_weights = routing_weights.to(hidden_states.dtype)
            final_hidden_states = lib.zeros(
                (batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype,
                device=hidden_states.device)
            # One hot encode the selected experts to create an expert mask
            # this will be used to easily index which expert is going to be sollicitated
            expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts)
            expert_mask = expert_mask.permute(2, 1, 0)
            # Loop over all available experts in the model and perform the computation
            for expert_idx in range(self.num_experts):
                expert_layer = self.experts[expert_idx]
                idx, top_x = lib.where(expert_mask[expert_idx])
                # Index the correct hidden states and compute the expert hidden state for
                # the current expert. We need to make sure to multiply the output hidden
                # states by `routing_weights` on the corresponding tokens (top-1 and top-2)
                current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
                current_hidden_states = (expert_layer(current_state)
                                         * routing_weights[top_x, idx, None])
                # However `index_add_` only support torch tensors for indexing so we'll use
                # the `top_x` tensor here.
                final_hidden_states.index_add_(0, top_x,
                                               current_hidden_states.to(hidden_states.dtype))
            return final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)

    def load_balancing_loss_func(gate_logits, num_experts, top_k=2, attention_mask=None):
        """Switch Transformer's auxiliary loss over every layer's router logits, padded
        tokens left out through the attention mask."""
        concatenated_gate_logits = lib.cat([g for g in gate_logits], dim=0)
        routing_weights = F.softmax(concatenated_gate_logits, dim=-1)
        _, selected_experts = lib.topk(routing_weights, top_k, dim=-1)
        expert_mask = F.one_hot(selected_experts, num_experts)
        # ``.float()`` in the original: float32 counts times float64 probabilities, which
        # PyTorch promotes and nodegrad refuses (it never widens floats silently)
        expert_mask = expert_mask.to(routing_weights.dtype)
        if attention_mask is None:
            # Compute the percentage of tokens routed to each experts
            tokens_per_expert = lib.mean(expert_mask, dim=0)
            # Compute the average probability of routing to these experts
            router_prob_per_expert = lib.mean(routing_weights, dim=0)
        else:
            batch_size, sequence_length = attention_mask.shape
            num_hidden_layers = concatenated_gate_logits.shape[0] // (
                batch_size * sequence_length)
            # Compute the mask that masks all padding tokens as 0 with the same shape of
            # expert_mask
            expert_attention_mask = (
                attention_mask[None, :, :, None, None]
                .expand((num_hidden_layers, batch_size, sequence_length, top_k, num_experts))
                .reshape(-1, top_k, num_experts)
            )
            # Compute the percentage of tokens routed to each experts
            tokens_per_expert = lib.sum(expert_mask * expert_attention_mask,
                                        dim=0) / lib.sum(expert_attention_mask, dim=0)
            # Compute the mask that masks all padding tokens as 0 with the same shape of
            # tokens_per_expert
            router_per_expert_attention_mask = (
                attention_mask[None, :, :, None]
                .expand((num_hidden_layers, batch_size, sequence_length, num_experts))
                .reshape(-1, num_experts)
            )
            # Compute the average probability of routing to these experts
            router_prob_per_expert = lib.sum(
                routing_weights * router_per_expert_attention_mask, dim=0
            ) / lib.sum(router_per_expert_attention_mask, dim=0)
        overall_loss = lib.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))
        return overall_loss * num_experts

    def router_z_loss_func(router_logits):
        """ST-MoE's z-loss: the squared log-partition of the router, averaged over tokens."""
        num_groups, tokens_per_group, _ = router_logits.shape
        log_z = lib.logsumexp(router_logits, dim=-1)
        z_loss = log_z**2
        return lib.sum(z_loss) / (num_groups * tokens_per_group)

    return SparseMoeBlock, load_balancing_loss_func, router_z_loss_func


def train_moe(lib, style, masked, steps=3):
    """An HF-style model whose MLPs are sparse MoE blocks; loss = LM loss + 0.02 aux +
    0.001 z-loss; SGD with Nesterov momentum, the router and experts all trained."""
    SparseMoeBlock, load_balancing_loss_func, router_z_loss_func = moe(lib)
    config = HFConfig(num_hidden_layers=2)

    def build(L):
        m = hf_llama(L)(config)
        for layer in m.layers:
            layer.mlp = moe(L)[0](config.hidden_size, 12, num_experts=4, top_k=2, style=style)
        return m

    model = load_from_torch(lib, build)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=1e-4)
    rec = {"loss": [], "aux": [], "z": [], "grad": [], "w": []}
    for step in range(steps):
        input_ids, attention_mask, labels = hf_batch(lib, step)
        lm_loss, _, _ = model(input_ids, attention_mask=attention_mask, labels=labels)
        gate_logits = tuple(layer.mlp.router_logits for layer in model.layers)
        aux = load_balancing_loss_func(gate_logits, 4, 2, attention_mask if masked else None)
        z = router_z_loss_func(lib.stack(gate_logits))
        loss = lm_loss + 0.02 * aux + 0.001 * z
        opt.zero_grad()
        loss.backward()
        rec["grad"].append(grads(model))
        opt.step()
        rec["loss"].append(loss.item())
        rec["aux"].append(aux.item())
        rec["z"].append(z.item())
        rec["w"].append(arrays(model.state_dict()))
    return rec


@pytest.mark.parametrize("style,masked", [("mixtral", True), ("mixtral", False),
                                          ("mistral", False)])
def test_moe_training_matches_torch(style, masked):
    got = train_moe(ng, style, masked)
    assert_same(got, train_moe(torch, style, masked))
    # every expert of every layer got some tokens and so a gradient
    assert all(np.abs(g).sum() > 0 for g in got["grad"][0].values())


# ---------------------------- DeepSeek-MoE: shared experts, aux loss through autograd.Function

def deepseek_moe(lib):
    nn = lib.nn
    F = lib.nn.functional

    class AddAuxiliaryLoss(lib.autograd.Function):
        """The trick to include the aux loss in the gradient: identity on ``x``, and a gradient
        of one for ``loss`` (shape (1,) for a 0-d loss)."""

        @staticmethod
        def forward(ctx, x, loss):
            assert loss.numel() == 1
            ctx.dtype = loss.dtype
            ctx.required_aux_loss = loss.requires_grad
            return x

        @staticmethod
        def backward(ctx, grad_output):
            grad_loss = None
            if ctx.required_aux_loss:
                grad_loss = lib.ones(1, dtype=ctx.dtype, device=grad_output.device)
            return grad_output, grad_loss

    class MoEGate(nn.Module):
        def __init__(self, dim, n_routed_experts, top_k, alpha, seq_aux):
            super().__init__()
            self.top_k = top_k
            self.n_routed_experts = n_routed_experts
            self.alpha = alpha
            self.seq_aux = seq_aux
            self.norm_topk_prob = True
            self.weight = nn.Parameter(lib.empty((self.n_routed_experts, dim)))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

        def forward(self, hidden_states):
            bsz, seq_len, h = hidden_states.shape
            hidden_states = hidden_states.view(-1, h)
            logits = F.linear(hidden_states, self.weight, None)
            scores = logits.softmax(dim=-1)
            topk_weight, topk_idx = lib.topk(scores, k=self.top_k, dim=-1, sorted=False)
            if self.top_k > 1 and self.norm_topk_prob:
                denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
                topk_weight = topk_weight / denominator
            if self.training and self.alpha > 0.0:
                scores_for_aux = scores
                aux_topk = self.top_k
                topk_idx_for_aux_loss = topk_idx.view(bsz, -1)
                if self.seq_aux:
                    scores_for_seq_aux = scores_for_aux.view(bsz, seq_len, -1)
                    ce = lib.zeros(bsz, self.n_routed_experts, device=hidden_states.device)
                    ce.scatter_add_(1, topk_idx_for_aux_loss,
                                    lib.ones(bsz, seq_len * aux_topk,
                                             device=hidden_states.device)).div_(
                        seq_len * aux_topk / self.n_routed_experts)
                    aux_loss = (ce * scores_for_seq_aux.mean(dim=1)).sum(dim=1).mean()
                    aux_loss = aux_loss * self.alpha
                else:
                    mask_ce = F.one_hot(topk_idx_for_aux_loss.view(-1),
                                        num_classes=self.n_routed_experts)
                    ce = mask_ce.to(scores.dtype).mean(0)  # .float() originally
                    Pi = scores_for_aux.mean(0)
                    fi = ce * self.n_routed_experts
                    aux_loss = (Pi * fi).sum() * self.alpha
            else:
                aux_loss = None
            return topk_idx, topk_weight, aux_loss

    class MLP(nn.Module):
        def __init__(self, dim, inter):
            super().__init__()
            self.gate_proj = nn.Linear(dim, inter, bias=False)
            self.up_proj = nn.Linear(dim, inter, bias=False)
            self.down_proj = nn.Linear(inter, dim, bias=False)
            self.act_fn = nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    class DeepseekMoE(nn.Module):
        """Routed experts (training: ``repeat_interleave`` the tokens, boolean-mask writes into
        ``empty_like``; inference: ``argsort``/``bincount`` grouping and ``scatter_reduce_``)
        plus always-on shared experts."""

        def __init__(self, dim=16, inter=8, n_routed=4, top_k=2, n_shared=1, alpha=0.01,
                     seq_aux=True):
            super().__init__()
            self.num_experts_per_tok = top_k
            self.experts = nn.ModuleList([MLP(dim, inter) for _ in range(n_routed)])
            self.gate = MoEGate(dim, n_routed, top_k, alpha, seq_aux)
            self.shared_experts = MLP(dim, inter * n_shared)

        def forward(self, hidden_states):
            identity = hidden_states
            orig_shape = hidden_states.shape
            topk_idx, topk_weight, aux_loss = self.gate(hidden_states)
            hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
            flat_topk_idx = topk_idx.view(-1)
            if self.training:
                hidden_states = hidden_states.repeat_interleave(self.num_experts_per_tok, dim=0)
                y = lib.empty_like(hidden_states)
                for i, expert in enumerate(self.experts):
                    y[flat_topk_idx == i] = expert(hidden_states[flat_topk_idx == i])
                y = (y.view(*topk_weight.shape, -1) * topk_weight.unsqueeze(-1)).sum(dim=1)
                y = y.view(*orig_shape)
                y = AddAuxiliaryLoss.apply(y, aux_loss)
            else:
                y = self.moe_infer(hidden_states, flat_topk_idx,
                                   topk_weight.view(-1, 1)).view(*orig_shape)
            y = y + self.shared_experts(identity)
            return y

        @lib.no_grad()
        def moe_infer(self, x, flat_expert_indices, flat_expert_weights):
            expert_cache = lib.zeros_like(x)
            idxs = flat_expert_indices.argsort()
            tokens_per_expert = flat_expert_indices.bincount().cpu().numpy().cumsum(0)
            token_idxs = idxs // self.num_experts_per_tok
            for i, end_idx in enumerate(tokens_per_expert):
                start_idx = 0 if i == 0 else tokens_per_expert[i - 1]
                if start_idx == end_idx:
                    continue
                expert = self.experts[i]
                exp_token_idx = token_idxs[start_idx:end_idx]
                expert_tokens = x[exp_token_idx]
                expert_out = expert(expert_tokens)
                expert_out.mul_(flat_expert_weights[idxs[start_idx:end_idx]])
                expert_cache.scatter_reduce_(
                    0, exp_token_idx.view(-1, 1).repeat(1, x.shape[-1]), expert_out,
                    reduce="sum")
            return expert_cache

    class Net(nn.Module):
        def __init__(self, seq_aux):
            super().__init__()
            # the pad token is a row of its own: a zero row routes with four-way ties, which
            # PyTorch's topk breaks by its own kernel's order and nodegrad by the lower index
            self.embed = nn.Embedding(V + 1, 16, padding_idx=V)
            self.moe = DeepseekMoE(seq_aux=seq_aux)
            self.norm = nn.RMSNorm(16, eps=None)
            self.head = nn.Linear(16, V, bias=False)

        def forward(self, idx):
            return self.head(self.norm(self.moe(self.embed(idx))))

    return Net


def train_deepseek(lib, seq_aux, steps=3):
    F = lib.nn.functional
    model = load_from_torch(lib, lambda L: deepseek_moe(L)(seq_aux))
    opt = lib.optim.Adam(model.parameters(), lr=2e-2)
    data = tokens()
    rec = {"loss": [], "grad": [], "w": [], "infer": []}
    for step in range(steps):
        model.train()
        x, y = get_batch(lib, data, step, 3, 6, pad=True)
        logits = model(x)
        # class dimension second, summed, divided by the number of counted targets
        loss = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="sum")
        loss = loss / (y != -100).sum()
        opt.zero_grad()
        loss.backward()
        rec["grad"].append(grads(model))
        opt.step()
        rec["loss"].append(loss.item())
        rec["w"].append(arrays(model.state_dict()))
        model.eval()
        with lib.no_grad():
            rec["infer"].append(arr(model(x)))
    model.train()
    with lib.no_grad():  # the training path's dispatch gives the inference path's output
        rec["train_path"] = arr(model(x))
    return rec


@pytest.mark.parametrize("seq_aux", [True, False])
def test_deepseek_moe_training_matches_torch(seq_aux):
    """Shared + routed experts, the aux loss added through a custom autograd.Function,
    ``nn.RMSNorm(eps=None)``, an Embedding with ``padding_idx``, CE over dim 1."""
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        ng.set_default_dtype(ng.float64)
        try:
            ref, got = train_deepseek(torch, seq_aux), train_deepseek(ng, seq_aux)
        finally:
            torch.set_default_dtype(torch.float32)
            ng.set_default_dtype(ng.float32)
    assert_same(got, ref)
    assert_same(got["train_path"], got["infer"][-1], 1e-12)
    assert np.all(got["grad"][0]["embed.weight"][V] == 0)  # padding_idx gets no gradient


def test_topk_indices_are_contiguous_and_ties_go_to_the_lower_index():
    """``topk(...).indices.view(bsz, -1)`` as DeepSeek's gate writes it (regression: the
    indices were a strided slice of the full argsort, which ``view`` refused)."""
    scores = ng.tensor(np.random.default_rng(0).random((6, 5)))
    idx = ng.topk(scores, 2, dim=-1, sorted=False).indices
    assert idx.is_contiguous() and tuple(idx.view(3, -1).shape) == (3, 4)
    assert ng.kthvalue(scores, 2, dim=1, keepdim=True).indices.view(-1).shape == (6,)
    assert ng.median(scores, dim=1, keepdim=True).indices.view(2, 3).shape == (2, 3)
    assert ng.topk(ng.full((1, 4), 0.25), 2).indices.tolist() == [[0, 1]]


# ---------------------------- RMSNorm in half precision ---------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rmsnorm_half_precision_matches_torch(dtype):
    """``nn.RMSNorm(dim, eps=None)`` on bfloat16/float16 activations (regression: eps was the
    half dtype's own epsilon, 0.0078 for bfloat16, where PyTorch's kernel takes float32's),
    and the reference's hand-written ``_norm(x.float()).type_as(x) * weight``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype(np.float32) * 3
    w = rng.standard_normal(8).astype(np.float32)
    out = {}
    for lib in (torch, ng):
        dt = getattr(lib, dtype)
        xb = lib.tensor(x).to(dt).requires_grad_()
        norm = lib.nn.RMSNorm(8, eps=None).to(dt)
        with lib.no_grad():
            norm.weight.copy_(lib.tensor(w).to(dt))
        by_hand = (xb.float() * lib.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-5))
        by_hand = by_hand.type_as(xb) * norm.weight
        y = norm(xb)
        ((y.float() + by_hand.float()) * lib.tensor(x)).sum().backward()
        out[lib.__name__] = {"dtype": str(y.dtype).replace("torch.", ""),
                             "y": y.float(), "hand": by_hand.float(), "gx": xb.grad.float(),
                             "gw": norm.weight.grad.float()}
    got, ref = out["nodegrad"], out["torch"]
    assert_same({k: got[k] for k in ("dtype", "y", "hand")},
                {k: ref[k] for k in ("dtype", "y", "hand")}, 0.0)  # bit for bit
    # three half-precision contributions summed into each gradient: their order may round
    # the last bit differently
    assert_same({k: got[k] for k in ("gx", "gw")}, {k: ref[k] for k in ("gx", "gw")},
                1e-2 if dtype == "bfloat16" else 2e-3)


# ============================ DPO on a PEFT-style LoRA policy ================================

def peft_lora(lib):
    nn = lib.nn

    class LoraLayer(nn.Module):
        """PEFT's shape: the frozen ``base_layer`` plus ``lora_A``/``lora_B`` Linears (A as
        nn.Linear's init, B zero), ``merge`` adds ``get_delta_weight()`` into the base."""

        def __init__(self, base_layer, r=2, lora_alpha=4, fan_in_fan_out=False):
            super().__init__()
            self.base_layer = base_layer
            self.fan_in_fan_out = fan_in_fan_out
            self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)
            self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)
            self.scaling = lora_alpha / r
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
            self.merged = False

        def get_delta_weight(self):
            w = self.lora_B.weight @ self.lora_A.weight
            return (w.T if self.fan_in_fan_out else w) * self.scaling

        def merge(self):
            self.base_layer.weight.data += self.get_delta_weight()
            self.merged = True

        def forward(self, x):
            result = self.base_layer(x)
            if not self.merged:
                result = result + self.lora_B(self.lora_A(x)) * self.scaling
            return result

    return LoraLayer


def sequence_logps(lib, logits, labels):
    """Sum of the log-probabilities of each row's label tokens (-100 skipped), shifted."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0  # dummy token; masked below
    per_token_logps = lib.gather(logits.log_softmax(-1), dim=2,
                                 index=labels.unsqueeze(2)).squeeze(2)
    return (per_token_logps * loss_mask).sum(-1)


def dpo(lib, steps=3, beta=0.1):
    """DPO: a frozen deep copy as the reference, LoRA on every attention projection of the
    policy, ``-logsigmoid(beta * (pi_logratios - ref_logratios))``."""
    import copy

    F = lib.nn.functional
    LoraLayer = peft_lora(lib)
    policy = load_from_torch(lib, lambda L: hf_llama(L)(HFConfig(num_hidden_layers=1)))
    reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    reference.eval()
    policy.requires_grad_(False)
    for layer in policy.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lora_layer = LoraLayer(getattr(layer.self_attn, name)).to(lib.float64)
            with lib.no_grad():  # A drawn alike in both runs; a nonzero B so that every
                a = lora_layer.lora_A.weight  # adapter has a gradient at once
                a.copy_(lib.linspace(-0.4, 0.4, a.numel()).reshape(a.shape).flip(-1))
                lora_layer.lora_B.weight.fill_(0.01)
            setattr(layer.self_attn, name, lora_layer)
    for n, p in policy.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    opt = lib.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    rec = {"loss": [], "reward": [], "grad": []}
    for step in range(steps):
        chosen, mask_c, lab_c = hf_batch(lib, 10 + step)
        rejected, mask_r, lab_r = hf_batch(lib, 20 + step)
        ids = lib.cat([chosen, rejected])
        am, labels = lib.cat([mask_c, mask_r]), lib.cat([lab_c, lab_r])
        logps = sequence_logps(lib, policy(ids, attention_mask=am)[1], labels)
        with lib.no_grad():
            ref_logps = sequence_logps(lib, reference(ids, attention_mask=am)[1], labels)
        n = chosen.shape[0]
        pi_logratios = logps[:n] - logps[n:]
        ref_logratios = ref_logps[:n] - ref_logps[n:]
        losses = -F.logsigmoid(beta * (pi_logratios - ref_logratios))
        chosen_rewards = beta * (logps[:n] - ref_logps[:n]).detach()
        loss = losses.mean()
        opt.zero_grad()
        loss.backward()
        rec["grad"].append({k: arr(p.grad) for k, p in policy.named_parameters()
                            if p.grad is not None})
        opt.step()
        rec["loss"].append(loss.item())
        rec["reward"].append(arr(chosen_rewards))
    for layer in policy.layers:
        for name in ("q_proj", "v_proj"):
            getattr(layer.self_attn, name).merge()
    rec["merged"] = arrays(policy.state_dict())
    rec["ref_unchanged"] = all(not p.requires_grad for p in reference.parameters())
    return rec


def test_dpo_with_peft_lora_matches_torch():
    got = dpo(ng)
    assert_same(got, dpo(torch))
    assert len(got["grad"][0]) == 8 and all(k.split(".")[-2].startswith("lora_")
                                            for k in got["grad"][0])
    assert got["ref_unchanged"] is True


def test_sdpa_refuses_a_mask_with_is_causal():
    """PyTorch documents an error for ``attn_mask`` with ``is_causal=True`` (its CPU kernel
    drops the mask silently instead); nodegrad raises, naming both."""
    q = ng.tensor(np.random.default_rng(0).standard_normal((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="attn_mask or is_causal"):
        ng.nn.functional.scaled_dot_product_attention(
            q, q, q, attn_mask=ng.ones(3, 3, dtype=ng.bool), is_causal=True)


def test_bfloat16_broadcast_gradient_rounds_as_torch():
    """The gradient of a broadcast bfloat16 factor (an RMSNorm weight, a bias) is the product
    rounded to bfloat16 and then summed in float32, as PyTorch (regression: the product stayed
    in float32 before the sum, so a third of the entries differed in the last bit)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 16)).astype(np.float32)
    g = rng.standard_normal((6, 8, 16)).astype(np.float32)
    out = {}
    for lib in (torch, ng):
        bf = lib.bfloat16
        xb = lib.tensor(x).to(bf).requires_grad_()
        w = lib.full((16,), 1.5, dtype=bf).requires_grad_()
        b = lib.full((8, 1), 0.3, dtype=bf).requires_grad_()
        (xb * w + b).backward(lib.tensor(g).to(bf))
        out[lib.__name__] = [xb.grad.float(), w.grad.float(), b.grad.float(),
                             str(w.grad.dtype).replace("torch.", "")]
    assert_same(out["nodegrad"], out["torch"], 0.0)
