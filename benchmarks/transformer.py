"""W9: one AdamW training step of a small GPT (nanoGPT's model on Shakespeare's characters, sized
for a CPU): 4 blocks of width 128 with 4 heads, a context of 64, batch 12, vocabulary 65.

Each block is LayerNorm, causal ``scaled_dot_product_attention``, LayerNorm and an MLP with the
exact GELU (nanoGPT's), the embedding tied to the output layer; cross-entropy over every
position, gradients clipped to norm 1, AdamW (lr 1e-3, weight decay 0.1). The model is written
once against ``torch`` or ``nodegrad`` and loaded with the same weights in both. The floor is
the step's matrix products alone (forward and backward, as NumPy runs them).
"""

from __future__ import annotations

import numpy as np

from ._harness import Workload, main

VOCAB, BLOCK, LAYERS, HEADS, WIDTH, BATCH = 65, 64, 4, 4, 128, 12


def make_data(seed=0) -> dict:
    """Token batches and every weight of the model by its state-dict key, GPT-2's
    initialisation (N(0, 0.02); LayerNorms at one and zero)."""
    rng = np.random.default_rng(seed)
    d = {"x": rng.integers(0, VOCAB, (BATCH, BLOCK)), "y": rng.integers(0, VOCAB, (BATCH, BLOCK))}
    for key, shape in _shapes():
        if key.endswith("bias"):
            d[key] = np.zeros(shape, np.float32)
        elif "ln" in key:
            d[key] = np.ones(shape, np.float32)
        else:
            d[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return d


def _shapes():
    """The state dict's keys and shapes."""
    yield "wte.weight", (VOCAB, WIDTH)
    yield "wpe.weight", (BLOCK, WIDTH)
    for i in range(LAYERS):
        for name, shape in (("ln1", (WIDTH, WIDTH)), ("attn", (3 * WIDTH, WIDTH)),
                            ("proj", (WIDTH, WIDTH)), ("ln2", (WIDTH, WIDTH)),
                            ("fc", (4 * WIDTH, WIDTH)), ("out", (WIDTH, 4 * WIDTH))):
            o, n = shape
            yield f"h.{i}.{name}.weight", (o,) if name.startswith("ln") else (o, n)
            yield f"h.{i}.{name}.bias", (o,)
    yield "lnf.weight", (WIDTH,)
    yield "lnf.bias", (WIDTH,)


def _gpt(lib, d: dict):
    """The model in ``lib`` (torch or nodegrad), its weights from ``d``."""
    nn, F = lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.attn, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
            self.fc, self.out = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.attn(self.ln1(x)).split(WIDTH, dim=2)
            q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(BLOCK, WIDTH)
            self.h = nn.ModuleList([Block() for _ in range(LAYERS)])
            self.lnf = nn.LayerNorm(WIDTH)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(lib.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = F.linear(self.lnf(x), self.wte.weight)  # tied to the embedding
            return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))

    model = GPT()
    model.load_state_dict({k: lib.from_numpy(d[k].copy()) for k, _ in _shapes()})
    return model


def model_and_step(lib, d: dict):
    """The model, its AdamW (decay on matrices only) and ``step(x, y)``: forward, zero_grad,
    backward, clipping, update (J9 jits this same step)."""
    model = _gpt(lib, d)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = lib.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": other, "weight_decay": 0.0}], lr=1e-3)

    def step(x, y):
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return model, opt, step


def _step(lib, d: dict):
    _, _, step = model_and_step(lib, d)
    x, y = lib.from_numpy(d["x"]), lib.from_numpy(d["y"])
    return lambda: step(x, y)


def nodegrad_step(d: dict):
    import nodegrad

    return _step(nodegrad, d)


def torch_step(d: dict):
    import torch

    return _step(torch, d)


def matmul_floor(d: dict):
    """The step's products on NumPy arrays of their shapes: each linear layer's forward, input
    and weight gradient (rows = batch × context, the tied output layer too), and the
    attention's two batched products and their four gradients."""
    rng = np.random.default_rng(0)
    rows, dh = BATCH * BLOCK, WIDTH // HEADS
    layers = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)]
    layers = layers * LAYERS + [(WIDTH, VOCAB)]  # and the tied output layer
    mats = [(rng.standard_normal((rows, i), dtype=np.float32),
             rng.standard_normal((i, o), dtype=np.float32),
             rng.standard_normal((rows, o), dtype=np.float32)) for i, o in layers]
    q = rng.standard_normal((BATCH, HEADS, BLOCK, dh), dtype=np.float32)
    kt = rng.standard_normal((BATCH, HEADS, dh, BLOCK), dtype=np.float32)
    a = rng.standard_normal((BATCH, HEADS, BLOCK, BLOCK), dtype=np.float32)
    at = a.transpose(0, 1, 3, 2)

    def step():
        for x, w, g in mats:
            x @ w
            x.T @ g
            g @ w.T
        for _ in range(LAYERS):  # scores, values; their gradients: dP, dV, dQ, dK
            q @ kt
            a @ q
            q @ kt
            at @ q
            a @ q
            at @ q
        return None

    return step


WORKLOADS = [
    Workload("W9", "GPT (nanoGPT, 4 x 128, context 64, batch 12), AdamW",
             make_data, nodegrad_step, torch_step, matmul_floor, floor_name="matmul floor"),
]

if __name__ == "__main__":
    raise SystemExit(main(WORKLOADS, description=__doc__.splitlines()[0]))
