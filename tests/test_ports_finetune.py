"""Parameter-efficient fine-tuning and model compression, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) the way
loralib, PEFT's plain-PyTorch layers and the papers' repositories write it: LoRA on Linear,
Embedding and merged QKV, DoRA, adapters by module surgery, prefix/prompt tuning, BitFit, IA3,
freezing mid-training, simulated quantisation, SVD compression, weight clustering, conv-BN
folding, distillation and adapter-only checkpoints. Both runs start from PyTorch's seeded weights;
losses, gradients, parameters and state-dict keys must agree (float64).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import (arr, arrays, both, draw, float64_one_thread,  # noqa: F401
                    frozen_batchnorm2d, seeded_build)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("float64_one_thread")


# ============================ loralib: Embedding, MergedLinear, Linear ========================

def loralib(lib):
    """loralib's layers (microsoft/LoRA, ``loralib/layers.py`` and ``utils.py``)."""
    nn, F = lib.nn, lib.nn.functional

    class LoRALayer:
        def __init__(self, r, lora_alpha, lora_dropout, merge_weights):
            self.r = r
            self.lora_alpha = lora_alpha
            if lora_dropout > 0.:
                self.lora_dropout = nn.Dropout(p=lora_dropout)
            else:
                self.lora_dropout = lambda x: x
            self.merged = False
            self.merge_weights = merge_weights

    class Embedding(nn.Embedding, LoRALayer):
        def __init__(self, num_embeddings, embedding_dim, r=0, lora_alpha=1, merge_weights=True,
                     **kwargs):
            nn.Embedding.__init__(self, num_embeddings, embedding_dim, **kwargs)
            LoRALayer.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=0,
                               merge_weights=merge_weights)
            if r > 0:
                self.lora_A = nn.Parameter(self.weight.new_zeros((r, num_embeddings)))
                self.lora_B = nn.Parameter(self.weight.new_zeros((embedding_dim, r)))
                self.scaling = self.lora_alpha / self.r
                self.weight.requires_grad = False
            self.reset_parameters()

        def reset_parameters(self):
            nn.Embedding.reset_parameters(self)
            if hasattr(self, 'lora_A'):
                nn.init.zeros_(self.lora_A)
                nn.init.normal_(self.lora_B)

        def train(self, mode: bool = True):
            nn.Embedding.train(self, mode)
            if mode:
                if self.merge_weights and self.merged:
                    if self.r > 0:
                        self.weight.data -= (self.lora_B @ self.lora_A).transpose(0, 1) \
                            * self.scaling
                    self.merged = False
            else:
                if self.merge_weights and not self.merged:
                    if self.r > 0:
                        self.weight.data += (self.lora_B @ self.lora_A).transpose(0, 1) \
                            * self.scaling
                    self.merged = True
            return self

        def forward(self, x):
            if self.r > 0 and not self.merged:
                result = nn.Embedding.forward(self, x)
                after_A = F.embedding(x, self.lora_A.transpose(0, 1), self.padding_idx,
                                      self.max_norm, self.norm_type, self.scale_grad_by_freq,
                                      self.sparse)
                result += (after_A @ self.lora_B.transpose(0, 1)) * self.scaling
                return result
            return nn.Embedding.forward(self, x)

    class Linear(nn.Linear, LoRALayer):
        def __init__(self, in_features, out_features, r=0, lora_alpha=1, lora_dropout=0.,
                     fan_in_fan_out=False, merge_weights=True, **kwargs):
            nn.Linear.__init__(self, in_features, out_features, **kwargs)
            LoRALayer.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                               merge_weights=merge_weights)
            self.fan_in_fan_out = fan_in_fan_out
            if r > 0:
                self.lora_A = nn.Parameter(self.weight.new_zeros((r, in_features)))
                self.lora_B = nn.Parameter(self.weight.new_zeros((out_features, r)))
                self.scaling = self.lora_alpha / self.r
                self.weight.requires_grad = False
            self.reset_parameters()
            if fan_in_fan_out:
                self.weight.data = self.weight.data.transpose(0, 1)

        def reset_parameters(self):
            nn.Linear.reset_parameters(self)
            if hasattr(self, 'lora_A'):
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B)

        def train(self, mode: bool = True):
            def T(w):
                return w.transpose(0, 1) if self.fan_in_fan_out else w
            nn.Linear.train(self, mode)
            if mode:
                if self.merge_weights and self.merged:
                    if self.r > 0:
                        self.weight.data -= T(self.lora_B @ self.lora_A) * self.scaling
                    self.merged = False
            else:
                if self.merge_weights and not self.merged:
                    if self.r > 0:
                        self.weight.data += T(self.lora_B @ self.lora_A) * self.scaling
                    self.merged = True
            return self

        def forward(self, x):
            def T(w):
                return w.transpose(0, 1) if self.fan_in_fan_out else w
            if self.r > 0 and not self.merged:
                result = F.linear(x, T(self.weight), bias=self.bias)
                result += (self.lora_dropout(x) @ self.lora_A.transpose(0, 1)
                           @ self.lora_B.transpose(0, 1)) * self.scaling
                return result
            return F.linear(x, T(self.weight), bias=self.bias)

    class MergedLinear(nn.Linear, LoRALayer):
        def __init__(self, in_features, out_features, r=0, lora_alpha=1, lora_dropout=0.,
                     enable_lora=(False,), fan_in_fan_out=False, merge_weights=True, **kwargs):
            nn.Linear.__init__(self, in_features, out_features, **kwargs)
            LoRALayer.__init__(self, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                               merge_weights=merge_weights)
            assert out_features % len(enable_lora) == 0, \
                'The length of enable_lora must divide out_features'
            self.enable_lora = list(enable_lora)
            self.fan_in_fan_out = fan_in_fan_out
            if r > 0 and any(enable_lora):
                self.lora_A = nn.Parameter(
                    self.weight.new_zeros((r * sum(enable_lora), in_features)))
                self.lora_B = nn.Parameter(self.weight.new_zeros(
                    (out_features // len(enable_lora) * sum(enable_lora), r)))
                self.scaling = self.lora_alpha / self.r
                self.weight.requires_grad = False
                self.lora_ind = self.weight.new_zeros(
                    (out_features, ), dtype=lib.bool).view(len(enable_lora), -1)
                self.lora_ind[self.enable_lora, :] = True
                self.lora_ind = self.lora_ind.view(-1)
            self.reset_parameters()
            if fan_in_fan_out:
                self.weight.data = self.weight.data.transpose(0, 1)

        def reset_parameters(self):
            nn.Linear.reset_parameters(self)
            if hasattr(self, 'lora_A'):
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B)

        def zero_pad(self, x):
            result = x.new_zeros((len(self.lora_ind), *x.shape[1:]))
            result[self.lora_ind] = x
            return result

        def merge_AB(self):
            def T(w):
                return w.transpose(0, 1) if self.fan_in_fan_out else w
            delta_w = F.conv1d(
                self.lora_A.unsqueeze(0),
                self.lora_B.unsqueeze(-1),
                groups=sum(self.enable_lora)
            ).squeeze(0)
            return T(self.zero_pad(delta_w))

        def train(self, mode: bool = True):
            nn.Linear.train(self, mode)
            if mode:
                if self.merge_weights and self.merged:
                    if self.r > 0 and any(self.enable_lora):
                        self.weight.data -= self.merge_AB() * self.scaling
                    self.merged = False
            else:
                if self.merge_weights and not self.merged:
                    if self.r > 0 and any(self.enable_lora):
                        self.weight.data += self.merge_AB() * self.scaling
                    self.merged = True
            return self

        def forward(self, x):
            def T(w):
                return w.transpose(0, 1) if self.fan_in_fan_out else w
            if self.merged:
                return F.linear(x, T(self.weight), bias=self.bias)
            result = F.linear(x, T(self.weight), bias=self.bias)
            if self.r > 0:
                result += self.lora_dropout(x) @ T(self.merge_AB().T) * self.scaling
            return result

    def mark_only_lora_as_trainable(model, bias='none'):
        for n, p in model.named_parameters():
            if 'lora_' not in n:
                p.requires_grad = False
        if bias == 'none':
            return
        elif bias == 'all':
            for n, p in model.named_parameters():
                if 'bias' in n:
                    p.requires_grad = True
        elif bias == 'lora_only':
            for m in model.modules():
                if isinstance(m, LoRALayer) and hasattr(m, 'bias') and m.bias is not None:
                    m.bias.requires_grad = True
        else:
            raise NotImplementedError

    def lora_state_dict(model, bias='none'):
        my_state_dict = model.state_dict()
        if bias == 'none':
            return {k: my_state_dict[k] for k in my_state_dict if 'lora_' in k}
        elif bias == 'all':
            return {k: my_state_dict[k] for k in my_state_dict if 'lora_' in k or 'bias' in k}
        elif bias == 'lora_only':
            to_return = {}
            for k in my_state_dict:
                if 'lora_' in k:
                    to_return[k] = my_state_dict[k]
                    bias_name = k.split('lora_')[0] + 'bias'
                    if bias_name in my_state_dict:
                        to_return[bias_name] = my_state_dict[bias_name]
            return to_return
        raise NotImplementedError

    return Embedding, Linear, MergedLinear, mark_only_lora_as_trainable, lora_state_dict


def gpt_lora(lib):
    """A one-block GPT-2-style model with loralib layers: LoRA on the embedding, on the fused
    ``c_attn`` (GPT-2's Conv1D weight layout, q and v adapted, k not) and on the MLP."""
    nn, F = lib.nn, lib.nn.functional
    Embedding, Linear, MergedLinear, _, _ = loralib(lib)

    class Block(nn.Module):
        def __init__(self, d=8, heads=2):
            super().__init__()
            self.heads = heads
            self.ln_1 = nn.LayerNorm(d)
            self.c_attn = MergedLinear(d, 3 * d, r=2, lora_alpha=4, enable_lora=[True, False, True],
                                       fan_in_fan_out=True, merge_weights=True)
            self.c_proj = nn.Linear(d, d)
            self.ln_2 = nn.LayerNorm(d)
            self.c_fc = Linear(d, 2 * d, r=2, lora_alpha=2)
            self.c_out = nn.Linear(2 * d, d)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
            k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
            v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = lib.tril(lib.ones(T, T, dtype=lib.bool))
            att = att.masked_fill(~mask, float('-inf'))
            y = F.softmax(att, dim=-1) @ v
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            x = x + self.c_proj(y)
            return x + self.c_out(F.gelu(self.c_fc(self.ln_2(x)), approximate='tanh'))

    class GPT(nn.Module):
        def __init__(self, vocab=11, d=8):
            super().__init__()
            self.wte = Embedding(vocab, d, r=2, lora_alpha=2)
            self.wpe = nn.Embedding(6, d)
            self.h = nn.ModuleList([Block(d)])
            self.ln_f = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, vocab, bias=False)

        def forward(self, idx):
            pos = lib.arange(idx.size(1))
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return GPT()


TOKENS = draw(3, 6, kind="randint", high=11, seed=1)


def loralib_finetune(lib, steps=4):
    _, _, _, mark_only_lora_as_trainable, lora_state_dict = loralib(lib)
    F = lib.nn.functional
    model = seeded_build(lib, gpt_lora)
    with lib.no_grad():  # a trained adapter: lora_B away from zero, so every path is exercised
        for n, p in model.named_parameters():
            if 'lora_' in n:
                p.copy_(lib.tensor(draw(*p.shape, seed=len(n)) * 0.3))
    mark_only_lora_as_trainable(model, bias='lora_only')
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                          weight_decay=0.01)
    idx = lib.tensor(TOKENS)
    losses, grads = [], []
    model.train()
    for _ in range(steps):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
        losses.append(loss.item())
    frozen_none = all(p.grad is None for p in model.parameters() if not p.requires_grad)
    unmerged_out = model(idx)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()  # merges every LoRA layer into its frozen weight
    merged_out = model(idx)
    merged_w = model.h[0].c_attn.weight.clone()
    model.train()  # unmerges
    restored = model.state_dict()
    return {"trainable": trainable, "loss": losses, "grads": grads, "frozen": frozen_none,
            "out": unmerged_out, "merged_out": merged_out, "merged_w": merged_w,
            "keys": list(lora_state_dict(model, bias='lora_only')),
            "keys_all": list(lora_state_dict(model, bias='all')),
            "restored": [restored[k] - base[k] for k in base],
            "merged": [m.merged for m in model.modules() if hasattr(m, 'merged')]}


def test_loralib_merged_qkv_embedding_linear_train_merge_unmerge():
    got = both(loralib_finetune)
    assert got["frozen"] is True
    assert got["keys"] == ['wte.lora_A', 'wte.lora_B', 'h.0.c_attn.lora_A', 'h.0.c_attn.bias',
                           'h.0.c_attn.lora_B', 'h.0.c_fc.lora_A', 'h.0.c_fc.bias',
                           'h.0.c_fc.lora_B']
    np.testing.assert_allclose(got["merged_out"], got["out"], atol=1e-12)
    assert got["merged"] == [False, False, False]


# ============================ DoRA (weight-decomposed LoRA) ==================================

def dora_model(lib):
    """Raschka's "DoRA from scratch" layers (``LinearWithDoRAMerged``) on a small MLP, with
    PEFT's detached column norm."""
    nn, F = lib.nn, lib.nn.functional

    class LoRALayer(nn.Module):
        def __init__(self, in_dim, out_dim, rank, alpha):
            super().__init__()
            std_dev = 1 / lib.sqrt(lib.tensor(rank).float())
            self.A = nn.Parameter(lib.randn(in_dim, rank) * std_dev)
            self.B = nn.Parameter(lib.zeros(rank, out_dim))
            self.alpha = alpha

        def forward(self, x):
            return self.alpha * (x @ self.A @ self.B)

    class LinearWithDoRAMerged(nn.Module):
        def __init__(self, linear, rank, alpha):
            super().__init__()
            self.linear = linear
            self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)
            self.m = nn.Parameter(self.linear.weight.norm(p=2, dim=0, keepdim=True))

        def forward(self, x):
            lora = self.lora.A @ self.lora.B
            numerator = self.linear.weight + self.lora.alpha * lora.T
            denominator = numerator.norm(p=2, dim=0, keepdim=True).detach()
            directional_component = numerator / denominator
            new_weight = self.m * directional_component
            return F.linear(x, new_weight, self.linear.bias)

    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    for p in model.parameters():
        p.requires_grad = False
    model[0] = LinearWithDoRAMerged(model[0], rank=2, alpha=4)
    model[2] = LinearWithDoRAMerged(model[2], rank=2, alpha=4)
    return model


def dora(lib, steps=4):
    F = lib.nn.functional
    model = seeded_build(lib, dora_model)
    with lib.no_grad():
        model[0].lora.B.copy_(lib.tensor(draw(2, 7, seed=3) * 0.2))
    x, y = lib.tensor(draw(10, 5, seed=4)), lib.tensor(draw(10, kind="randint", high=3))
    opt = lib.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=5e-2)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
        opt.step()
        losses.append(loss.item())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {"loss": losses, "grads": grads, "names": names, "w": arrays(model.state_dict())}


def test_dora_detached_column_norm_matches_torch():
    got = both(dora)
    assert got["names"] == ['0.m', '0.lora.A', '0.lora.B', '2.m', '2.lora.A', '2.lora.B']


# ============================ Houlsby adapters, BitFit, freezing mid-training ================

def adapter_net(lib):
    nn = lib.nn

    class Block(nn.Module):
        def __init__(self, d=6):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.fc1 = nn.Linear(d, 2 * d)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(2 * d, d)

        def forward(self, x):
            return x + self.fc2(self.act(self.fc1(self.norm(x))))

    return nn.Sequential(nn.Linear(4, 6), Block(), Block(), nn.Linear(6, 2))


def add_adapters(lib, model):
    """Houlsby et al.'s bottleneck after every ``fc2``, inserted by module surgery."""
    nn = lib.nn

    class Adapter(nn.Module):
        def __init__(self, d, bottleneck=2):
            super().__init__()
            self.down_project = nn.Linear(d, bottleneck)
            self.up_project = nn.Linear(bottleneck, d)
            nn.init.zeros_(self.up_project.weight)
            nn.init.zeros_(self.up_project.bias)

        def forward(self, x):
            return x + self.up_project(nn.functional.relu(self.down_project(x)))

    targets = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.endswith("fc2")]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        setattr(parent, child, nn.Sequential(old, Adapter(old.out_features)))
    return targets


def adapters_bitfit(lib, steps=6):
    F = lib.nn.functional
    model = seeded_build(lib, adapter_net)
    targets = add_adapters(lib, model)
    with lib.no_grad():  # the adapters start from PyTorch's draws too
        for n, p in model.named_parameters():
            if "project" in n:
                p.copy_(lib.tensor(draw(*p.shape, seed=len(n)) * 0.3))
    # BitFit plus adapters: only biases, norms and adapters train
    for n, p in model.named_parameters():
        p.requires_grad_("bias" in n or "project" in n or "norm" in n)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                          betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    x, y = lib.tensor(draw(12, 4, seed=5)), lib.tensor(draw(12, kind="randint", high=2))
    losses, groups = [], []
    for step in range(steps):
        if step == 3:  # unfreeze the head mid-training, with its own learning rate
            head = model[3]
            for p in head.parameters():
                p.requires_grad = True
            opt.add_param_group({"params": [head.weight], "lr": 1e-3, "weight_decay": 0.0})
        if step == 5:  # freeze the first block again: no gradient, AdamW leaves it alone
            model[1].requires_grad_(False)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        groups.append([(len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups])
    state = opt.state_dict()
    return {"targets": targets, "trainable": trainable, "loss": losses, "groups": groups,
            "keys": list(model.state_dict()), "w": arrays(model.state_dict()),
            "opt_state": sorted(state["state"]),
            "opt_groups": [g["params"] for g in state["param_groups"]],
            "grad_none": [n for n, p in model.named_parameters() if p.grad is None]}


def test_adapters_by_surgery_bitfit_and_add_param_group():
    got = both(adapters_bitfit)
    assert got["targets"] == ["1.fc2", "2.fc2"]
    assert "1.fc2.1.down_project.weight" in got["keys"]


# ============================ prefix tuning, prompt tuning, IA3 ==============================

def prefix_model(lib):
    """A frozen one-layer attention classifier with a learned soft prompt (Lester et al.),
    learned prefix keys/values per layer (Li & Liang) and IA3's rescaling vectors."""
    nn, F = lib.nn, lib.nn.functional

    class PrefixAttention(nn.Module):
        def __init__(self, d=8, heads=2, n_prefix=3):
            super().__init__()
            self.heads, self.d = heads, d
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
            self.prefix_k = nn.Parameter(lib.randn(n_prefix, d) * 0.5)
            self.prefix_v = nn.Parameter(lib.randn(n_prefix, d) * 0.5)
            self.ia3_k = nn.Parameter(lib.ones(d))
            self.ia3_v = nn.Parameter(lib.ones(d))

        def forward(self, x, key_padding_mask):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            k, v = k * self.ia3_k, v * self.ia3_v
            k = lib.cat([self.prefix_k.unsqueeze(0).expand(B, -1, -1), k], dim=1)
            v = lib.cat([self.prefix_v.unsqueeze(0).expand(B, -1, -1), v], dim=1)

            def heads(t):
                return t.view(B, -1, self.heads, self.d // self.heads).transpose(1, 2)
            keep = lib.cat([lib.ones(B, self.prefix_k.size(0), dtype=lib.bool),
                            ~key_padding_mask], dim=1)
            y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v),
                                               attn_mask=keep[:, None, None, :])
            return self.out(y.transpose(1, 2).reshape(B, T, self.d))

    class Classifier(nn.Module):
        def __init__(self, vocab=9, d=8, n_prompt=2):
            super().__init__()
            self.embed = nn.Embedding(vocab, d, padding_idx=0)
            self.soft_prompt = nn.Parameter(lib.empty(n_prompt, d).uniform_(-0.5, 0.5))
            self.attn = PrefixAttention(d)
            self.ff = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, d))
            self.ff_ia3 = nn.Parameter(lib.ones(16))
            self.head = nn.Linear(d, 3)

        def forward(self, tokens):
            B = tokens.size(0)
            x = self.embed(tokens)
            prompt = self.soft_prompt.unsqueeze(0).expand(B, -1, -1)
            x = lib.cat([prompt, x], dim=1)
            pad = lib.cat([lib.zeros(B, prompt.size(1), dtype=lib.bool), tokens == 0], dim=1)
            x = x + self.attn(x, pad)
            h = self.ff[1](self.ff[0](x)) * self.ff_ia3
            x = x + self.ff[2](h)
            keep = (~pad).unsqueeze(-1).to(x.dtype)
            return self.head((x * keep).sum(1) / keep.sum(1))

    return Classifier()


PEFT_NAMES = ("soft_prompt", "prefix_", "ia3")


def prefix_tuning(lib, steps=5):
    F = lib.nn.functional
    model = seeded_build(lib, prefix_model)
    with lib.no_grad():
        for n, p in model.named_parameters():
            if "ia3" in n:
                p.add_(lib.tensor(draw(*p.shape, seed=len(n)) * 0.1))
    for n, p in model.named_parameters():
        p.requires_grad = any(k in n for k in PEFT_NAMES)
    tokens = draw(4, 5, kind="randint", high=9, seed=6)
    tokens[1, 3:] = 0  # padding
    tokens[3, 4:] = 0
    tokens, y = lib.tensor(tokens), lib.tensor(draw(4, kind="randint", high=3, seed=7))
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses, grads = [], []
    for _ in range(steps):
        loss = F.cross_entropy(model(tokens), y)
        opt.zero_grad()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        opt.step()
        losses.append(loss.item())
    return {"loss": losses, "grads": grads, "w": arrays(model.state_dict()),
            "emb_grad": model.embed.weight.grad}


def test_prefix_prompt_tuning_and_ia3_match_torch():
    got = both(prefix_tuning)
    assert got["emb_grad"] is None


# ============================ adapter-only checkpoints: strict=False =========================

def adapter_checkpoint(lib):
    _, _, _, mark_only_lora_as_trainable, lora_state_dict = loralib(lib)
    model = seeded_build(lib, gpt_lora)
    mark_only_lora_as_trainable(model)
    with lib.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    buf = io.BytesIO()
    lib.save(lora_state_dict(model), buf)
    buf.seek(0)
    fresh = seeded_build(lib, gpt_lora)  # the pretrained model, adapters at their init
    loaded = lib.load(buf)
    loaded["h.0.c_attn.lora_extra"] = lib.zeros(2)  # a key this model does not have
    result = fresh.load_state_dict(loaded, strict=False)
    with pytest.raises(RuntimeError, match="lora_extra"):
        fresh.load_state_dict(loaded)
    out_same = (fresh(lib.tensor(TOKENS)) - model(lib.tensor(TOKENS))).abs().max()
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys),
            "fields": list(result._fields), "loaded_keys": sorted(loaded), "diff": out_same,
            "w": arrays(fresh.state_dict())}


def test_adapter_only_checkpoint_strict_false_round_trip():
    got = both(adapter_checkpoint)
    assert got["unexpected"] == ["h.0.c_attn.lora_extra"]
    assert "wte.weight" in got["missing"] and not any("lora" in k for k in got["missing"])
    assert got["diff"] == 0.0


def test_save_load_flat_state_keeps_key_order():
    state = {"wte.lora_A": ng.ones(2), "h.0.c_attn.lora_A": ng.zeros(3), "a": ng.ones(1)}
    buf = io.BytesIO()
    ng.save(state, buf)
    buf.seek(0)
    assert list(ng.load(buf)) == list(state)  # as torch.load gives them


# ============================ QLoRA-style simulated quantisation ============================

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def nf4_quantize(lib, w, blocksize=64):
    """Blockwise absmax NF4 (QLoRA's data type) written with a code table: the nearest code per
    element by bucketizing against the midpoints, the absmax of each block as its scale."""
    code = lib.tensor(NF4, dtype=w.dtype)
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().max(dim=1, keepdim=True).values
    normed = blocks / absmax
    mid = (code[1:] + code[:-1]) / 2
    idx = lib.bucketize(normed, mid)
    return idx.to(lib.uint8), absmax


def nf4_dequantize(lib, idx, absmax, shape):
    code = lib.tensor(NF4, dtype=absmax.dtype)
    return (code[idx.long()] * absmax).view(shape)


def qlora(lib, steps=4):
    nn, F = lib.nn, lib.nn.functional

    class QLoRALinear(nn.Module):
        def __init__(self, linear, r=4, alpha=8):
            super().__init__()
            idx, absmax = nf4_quantize(lib, linear.weight.detach())
            self.register_buffer("weight_idx", idx)
            self.register_buffer("absmax", absmax)
            self.shape = tuple(linear.weight.shape)
            self.bias = linear.bias
            self.bias.requires_grad_(False)
            self.lora_A = nn.Parameter(lib.tensor(draw(r, linear.in_features, seed=8) * 0.1))
            self.lora_B = nn.Parameter(lib.tensor(draw(linear.out_features, r, seed=9) * 0.1))
            self.scaling = alpha / r

        def forward(self, x):
            w = nf4_dequantize(lib, self.weight_idx, self.absmax, self.shape)
            return F.linear(x, w, self.bias) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def build(lib_):
        return lib_.nn.Sequential(lib_.nn.Linear(16, 8), lib_.nn.SiLU(), lib_.nn.Linear(8, 4))

    model = seeded_build(lib, build)
    err = (nf4_dequantize(lib, *nf4_quantize(lib, model[0].weight.detach()), (8, 16))
           - model[0].weight).abs().max()
    model[0] = QLoRALinear(model[0])
    # the head: quantisation-aware training with per-channel int8 fake quantisation
    head = model[2]
    scale = (head.weight.detach().abs().amax(dim=1) / 127).float()  # PyTorch wants float32
    zero_point = lib.zeros(4, dtype=lib.int32)
    x, y = lib.tensor(draw(6, 16, seed=10)), lib.tensor(draw(6, 4, seed=11))
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        h = model[1](model[0](x))
        wq = lib.fake_quantize_per_channel_affine(head.weight, scale, zero_point, 0, -128, 127)
        loss = F.mse_loss(F.linear(h, wq, head.bias), y)
        opt.zero_grad()
        loss.backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
        opt.step()
        losses.append(loss.item())
    return {"err": err, "idx": model[0].weight_idx.long(), "absmax": model[0].absmax,
            "loss": losses, "grads": grads, "keys": list(model.state_dict()),
            "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
            "w": arrays(model.state_dict())}


def test_qlora_nf4_lookup_and_fake_quant_head_match_torch():
    got = both(qlora)
    assert 0 < got["err"] < 0.05
    assert got["trainable"] == ["0.lora_A", "0.lora_B", "2.weight", "2.bias"]


# ============================ truncated-SVD compression, weight clustering ==================

def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 3))


def svd_compress(lib, rank=4, steps=4):
    """Replace a Linear by two (``U_r sqrt(S)`` and ``sqrt(S) V_r^T``), then fine-tune."""
    nn, F = lib.nn, lib.nn.functional
    model = seeded_build(lib, mlp)
    old = model[0]
    U, S, Vh = lib.linalg.svd(old.weight.data if lib is torch else old.weight.detach(),
                              full_matrices=False)
    first = nn.Linear(old.in_features, rank, bias=False)
    second = nn.Linear(rank, old.out_features, bias=True)
    with lib.no_grad():
        first.weight.copy_(S[:rank].sqrt().unsqueeze(1) * Vh[:rank])
        second.weight.copy_(U[:, :rank] * S[:rank].sqrt())
        second.bias.copy_(old.bias)
    x, y = lib.tensor(draw(8, 10, seed=12)), lib.tensor(draw(8, kind="randint", high=3))
    before = model(x)
    model[0] = nn.Sequential(first, second).to(lib.float64)
    rel = (model(x) - before).norm() / before.norm()
    energy = (S[:rank] ** 2).sum() / (S ** 2).sum()
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    n_params = sum(p.numel() for p in model.parameters())
    # factor signs are LAPACK's choice: compare the product, which does not depend on them
    return {"S": S, "rel": rel, "energy": energy, "loss": losses, "n": n_params,
            "W": model[0][1].weight @ model[0][0].weight, "head": model[2].weight}


def test_truncated_svd_compression_then_finetune():
    got = both(svd_compress)
    assert got["n"] == 10 * 4 + 4 * 12 + 12 + 12 * 3 + 3


def kmeans_cluster(lib, k=8, iters=6, steps=3):
    """Deep Compression's weight sharing: k-means on the weights (linear init), each weight
    replaced by its centroid, centroids fine-tuned with the summed gradients of their
    members."""
    F = lib.nn.functional
    model = seeded_build(lib, mlp)
    w = model[0].weight.detach()
    flat = w.reshape(-1, 1)
    centroids = lib.linspace(w.min().item(), w.max().item(), k, dtype=w.dtype).view(-1, 1)
    for _ in range(iters):
        assign = lib.cdist(flat, centroids).argmin(dim=1)
        sums = lib.zeros(k, dtype=w.dtype).index_add_(0, assign, flat.squeeze(1))
        counts = lib.bincount(assign, minlength=k).to(w.dtype)
        centroids = lib.where(counts > 0, sums / counts.clamp(min=1),
                              centroids.squeeze(1)).view(-1, 1)
    shared = centroids.squeeze(1).clone().requires_grad_(True)
    x, y = lib.tensor(draw(8, 10, seed=13)), lib.tensor(draw(8, kind="randint", high=3))
    opt = lib.optim.AdamW([shared], lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        wq = shared[assign].view_as(w)
        h = F.linear(x, wq, model[0].bias.detach())
        loss = F.cross_entropy(model[2](model[1](h)), y)
        opt.zero_grad()
        loss.backward()
        grads.append(shared.grad.clone())
        opt.step()
        losses.append(loss.item())
    return {"assign": assign, "counts": lib.bincount(assign, minlength=k), "c": centroids,
            "loss": losses, "grads": grads, "shared": shared}


def test_kmeans_weight_sharing_matches_torch():
    got = both(kmeans_cluster)
    assert got["counts"].sum() == 120


# ============================ conv-BN folding, knowledge distillation =======================

def conv_bn_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, stride=2), nn.BatchNorm2d(3, momentum=None),
                         nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5))


def fold_bn(lib, steps=3):
    nn, F = lib.nn, lib.nn.functional
    model = seeded_build(lib, conv_bn_net)
    x, y = lib.tensor(draw(6, 2, 5, 5, seed=14)), lib.tensor(draw(6, kind="randint", high=5))
    # SGD, not Adam: a bias right before batch norm gets a gradient of rounding noise only,
    # which Adam would scale up to steps of size lr
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(steps):  # running statistics and affine parameters move off their init
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    ref = model(x)
    fused = nn.Sequential(
        nn.utils.fusion.fuse_conv_bn_eval(model[0], model[1]), model[2],
        nn.utils.fuse_conv_bn_eval(model[3], model[4]), model[5],
        nn.utils.fusion.fuse_linear_bn_eval(model[6], model[7]))
    w, b = nn.utils.fuse_conv_bn_weights(model[0].weight, None, model[1].running_mean,
                                         model[1].running_var, model[1].eps, model[1].weight,
                                         model[1].bias)
    return {"ref": ref, "fused": fused(x), "w": w, "b": b, "keys": list(fused.state_dict()),
            "requires_grad": [p.requires_grad for p in fused.parameters()],
            "types": [type(m).__name__ for m in fused]}


def test_conv_bn_folding_after_training():
    got = both(fold_bn)
    np.testing.assert_allclose(got["fused"], got["ref"], atol=1e-12)


def distill(lib, T=4.0, alpha=0.7, steps=4):
    """Hinton et al.'s loss as the tutorials write it: KL between temperature-softened
    distributions (``log_target=True``), scaled by T², plus the hard-label loss."""
    nn, F = lib.nn, lib.nn.functional

    def teacher_student(lib_):
        nn_ = lib_.nn
        return nn_.ModuleDict({"teacher": nn_.Sequential(nn_.Linear(6, 16), nn_.ReLU(),
                                                         nn_.Linear(16, 4)),
                               "student": nn_.Sequential(nn_.Linear(6, 4))})

    both_models = seeded_build(lib, teacher_student)
    teacher, student = both_models["teacher"], both_models["student"]
    teacher.eval().requires_grad_(False)
    x, y = lib.tensor(draw(10, 6, seed=15)), lib.tensor(draw(10, kind="randint", high=4))
    opt = lib.optim.AdamW(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        with lib.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        soft = F.kl_div(F.log_softmax(s_logits / T, dim=-1), F.log_softmax(t_logits / T, dim=-1),
                        reduction="batchmean", log_target=True) * T * T
        plain = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_logits / T, dim=1),
                                                    F.softmax(t_logits / T, dim=1)) * T ** 2
        hard = F.cross_entropy(s_logits, y)
        loss = alpha * soft + (1 - alpha) * hard
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append([loss.item(), soft.item(), plain.item(), hard.item()])
    return {"loss": losses, "w": arrays(student.state_dict()),
            "t_grad": [p.grad for p in teacher.parameters()]}


def test_distillation_kl_log_target_matches_torch():
    got = both(distill)
    np.testing.assert_allclose([r[1] for r in got["loss"]], [r[2] for r in got["loss"]],
                               rtol=1e-12)


def test_fused_bias_made_from_nothing_is_frozen_as_torch():
    conv, bn = ng.nn.Conv2d(2, 3, 3, bias=False).eval(), ng.nn.BatchNorm2d(3).eval()
    assert ng.nn.utils.fuse_conv_bn_eval(conv, bn).bias.requires_grad is False
    lin, bn1 = ng.nn.Linear(2, 3, bias=False).eval(), ng.nn.BatchNorm1d(3).eval()
    assert ng.nn.utils.fuse_linear_bn_eval(lin, bn1).bias.requires_grad is False
    conv_b = ng.nn.Conv2d(2, 3, 3).eval()
    assert ng.nn.utils.fuse_conv_bn_eval(conv_b, bn).bias.requires_grad is True


# ============================ minLoRA: LoRA as a parametrization ============================

def minlora(lib):
    """cccntu/minLoRA: LoRA registered with ``parametrize.register_parametrization`` on every
    Linear and Embedding weight, merged by ``remove_parametrizations(leave_parametrized=True)``."""
    nn = lib.nn
    parametrize = nn.utils.parametrize
    from functools import partial

    class LoRAParametrization(nn.Module):
        def __init__(self, fan_in, fan_out, fan_in_fan_out=False, rank=4, lora_dropout_p=0.0,
                     lora_alpha=1):
            super().__init__()
            self.swap = (lambda x: (x[1], x[0])) if fan_in_fan_out else (lambda x: x)
            self.lora_A = nn.Parameter(lib.zeros(self.swap((rank, fan_in))))
            self.lora_B = nn.Parameter(lib.zeros(self.swap((fan_out, rank))))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_alpha, self.rank = lora_alpha, rank
            self.scaling = lora_alpha / rank
            self.lora_dropout = nn.Dropout(p=lora_dropout_p) if lora_dropout_p > 0 \
                else lambda x: x
            self.dropout_fn = self._dropout if lora_dropout_p > 0 else lambda x: x
            self.register_buffer("lora_dropout_mask",
                                 lib.ones(self.swap((1, fan_in)), dtype=self.lora_A.dtype))
            self.forward_fn = self.lora_forward

        def _dropout(self, A):
            return A * self.lora_dropout(self.lora_dropout_mask)

        def lora_forward(self, X):
            return X + lib.matmul(*self.swap((self.lora_B, self.dropout_fn(self.lora_A)))
                                  ).view(X.shape) * self.scaling

        def forward(self, X):
            return self.forward_fn(X)

        def disable_lora(self):
            self.forward_fn = lambda x: x

        def enable_lora(self):
            self.forward_fn = self.lora_forward

        @classmethod
        def from_linear(cls, layer, rank=4, lora_dropout_p=0.0, lora_alpha=1):
            fan_out, fan_in = layer.weight.shape
            return cls(fan_in, fan_out, fan_in_fan_out=False, rank=rank,
                       lora_dropout_p=lora_dropout_p, lora_alpha=lora_alpha)

        @classmethod
        def from_embedding(cls, layer, rank=4, lora_dropout_p=0.0, lora_alpha=1):
            fan_in, fan_out = layer.weight.shape
            return cls(fan_in, fan_out, fan_in_fan_out=True, rank=rank,
                       lora_dropout_p=lora_dropout_p, lora_alpha=lora_alpha)

    default_lora_config = {
        nn.Linear: {"weight": partial(LoRAParametrization.from_linear, rank=2, lora_alpha=4)},
        nn.Embedding: {"weight": partial(LoRAParametrization.from_embedding, rank=2)},
    }

    def apply_lora(layer, register=True, merge=False, lora_config=default_lora_config):
        if register:
            if type(layer) in lora_config:
                for attr_name, parametrization in lora_config[type(layer)].items():
                    parametrize.register_parametrization(layer, attr_name,
                                                         parametrization(layer))
        else:
            if hasattr(layer, "parametrizations"):
                for attr_name in list(layer.parametrizations.keys()):
                    parametrize.remove_parametrizations(layer, attr_name,
                                                        leave_parametrized=merge)

    def add_lora(model, lora_config=default_lora_config):
        model.apply(partial(apply_lora, lora_config=lora_config))

    def merge_lora(model):
        model.apply(partial(apply_lora, register=False, merge=True))

    def apply_to_lora(fn):
        def apply_fn(layer):
            if isinstance(layer, LoRAParametrization):
                fn(layer)
        return apply_fn

    def name_is_lora(name):
        return (len(name.split(".")) >= 4 and (name.split(".")[-4]) == "parametrizations"
                and name.split(".")[-1] in ["lora_A", "lora_B"])

    def get_lora_params(model):
        for n, p in model.named_parameters():
            if name_is_lora(n):
                yield p

    def get_lora_state_dict(model):
        return {k: v for k, v in model.state_dict().items() if name_is_lora(k)}

    return (add_lora, merge_lora, apply_to_lora, get_lora_params, get_lora_state_dict,
            LoRAParametrization)


def tiny_lm(lib):
    nn = lib.nn
    return nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 11))


def minlora_finetune(lib, steps=4):
    F = lib.nn.functional
    (add_lora, merge_lora, apply_to_lora, get_lora_params, get_lora_state_dict,
     LoRAParametrization) = minlora(lib)
    model = seeded_build(lib, tiny_lm)
    add_lora(model)
    with lib.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(lib.tensor(draw(*p.shape, seed=len(n)) * 0.2))
    keys = list(model.state_dict())
    opt = lib.optim.AdamW(get_lora_params(model), lr=1e-2)
    idx = lib.tensor(TOKENS)
    losses = []
    for _ in range(steps):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    lora_sd = get_lora_state_dict(model)
    out = model(idx)
    model.apply(apply_to_lora(lambda x: x.disable_lora()))
    base_out = model(idx)
    model.apply(apply_to_lora(lambda x: x.enable_lora()))
    frozen_grads = [model[1].parametrizations.weight.original.grad]
    merge_lora(model)
    return {"keys": keys, "lora_keys": list(lora_sd), "loss": losses, "out": out,
            "base_out": base_out, "merged_out": model(idx), "frozen_grads": frozen_grads,
            "merged_keys": list(model.state_dict()), "w": arrays(model.state_dict())}


def test_minlora_parametrization_train_disable_merge():
    got = both(minlora_finetune)
    assert got["lora_keys"] == ["0.parametrizations.weight.0.lora_A",
                                "0.parametrizations.weight.0.lora_B",
                                "1.parametrizations.weight.0.lora_A",
                                "1.parametrizations.weight.0.lora_B",
                                "3.parametrizations.weight.0.lora_A",
                                "3.parametrizations.weight.0.lora_B"]
    np.testing.assert_allclose(got["merged_out"], got["out"], atol=1e-12)
    # a merged weight is registered anew, after the bias (as PyTorch orders it)
    assert got["merged_keys"] == ["0.weight", "1.bias", "1.weight", "3.bias", "3.weight"]


# ============================ PEFT's DoRA layer, keep_vars filtering, strict=False errors ====

def peft_dora(lib, steps=4):
    """PEFT's ``DoraLinearLayer``: the magnitude per output row, the weight norm detached, the
    base output rescaled rather than the weight rebuilt."""
    nn, F = lib.nn, lib.nn.functional

    class DoraLinear(nn.Module):
        def __init__(self, base_layer, r=2, lora_alpha=4):
            super().__init__()
            self.base_layer = base_layer
            self.lora_A = nn.ModuleDict({"default": nn.Linear(base_layer.in_features, r,
                                                              bias=False)})
            self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base_layer.out_features,
                                                              bias=False)})
            self.scaling = {"default": lora_alpha / r}
            self.lora_magnitude_vector = nn.ParameterDict()  # PEFT 0.9's container

        def update_layer(self):
            weight = self.base_layer.weight
            lora_weight = self.lora_B["default"].weight @ self.lora_A["default"].weight
            weight_norm = self.get_weight_norm(weight, lora_weight, self.scaling["default"])
            self.lora_magnitude_vector["default"] = nn.Parameter(weight_norm,
                                                                 requires_grad=True)

        @staticmethod
        def get_weight_norm(weight, lora_weight, scaling):
            weight = weight + scaling * lora_weight
            return lib.linalg.norm(weight, dim=1).to(weight.dtype)

        def forward(self, x):
            result = self.base_layer(x)
            lora_A, lora_B = self.lora_A["default"], self.lora_B["default"]
            scaling = self.scaling["default"]
            magnitude = self.lora_magnitude_vector["default"]
            weight = self.base_layer.weight
            lora_weight = lora_B.weight @ lora_A.weight
            weight_norm = self.get_weight_norm(weight, lora_weight.detach(), scaling).detach()
            mag_norm_scale = (magnitude / weight_norm).view(1, -1)
            bias = self.base_layer.bias
            base_result = result - bias if bias is not None else result
            result_dora = (mag_norm_scale - 1) * base_result \
                + mag_norm_scale * lora_B(lora_A(x)) * scaling
            return result + result_dora if bias is None else \
                (result - bias) + result_dora + bias

    def build(lib_):
        return lib_.nn.Sequential(lib_.nn.Linear(5, 6), lib_.nn.Tanh(), lib_.nn.Linear(6, 2))

    model = seeded_build(lib, build)
    model.requires_grad_(False)
    for i in (0, 2):
        layer = DoraLinear(model[i]).to(lib.float64)
        with lib.no_grad():
            layer.lora_A["default"].weight.copy_(lib.tensor(draw(2, layer.base_layer.in_features,
                                                                 seed=20 + i)))
            layer.lora_B["default"].weight.copy_(lib.tensor(draw(layer.base_layer.out_features,
                                                                 2, seed=30 + i) * 0.1))
        layer.update_layer()
        model[i] = layer
    x, y = lib.tensor(draw(9, 5, seed=16)), lib.tensor(draw(9, 2, seed=17))
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.smooth_l1_loss(model(x), y, beta=0.5)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    adapter = {k: v for k, v in model.state_dict(keep_vars=True).items() if v.requires_grad}
    # a checkpoint for another shape fails even with strict=False
    bad = {"0.lora_A.default.weight": lib.zeros(3, 5)}
    try:
        model.load_state_dict(bad, strict=False)
        err = None
    except RuntimeError as e:
        err = "size mismatch for 0.lora_A.default.weight" in str(e)
    return {"loss": losses, "adapter_keys": list(adapter), "w": arrays(model.state_dict()),
            "err": err, "is_param": [type(v).__name__ for v in adapter.values()]}


def test_peft_dora_layer_keep_vars_and_size_mismatch():
    got = both(peft_dora)
    assert got["err"] is True
    assert got["adapter_keys"][:3] == ["0.lora_A.default.weight", "0.lora_B.default.weight",
                                       "0.lora_magnitude_vector.default"]


# ============================ gradual unfreezing with discriminative learning rates =========

def ulmfit(lib, steps=6):
    """ULMFiT's recipe: the head first, then one more layer group every epoch, each group's
    learning rate 2.6 times smaller than the one above; the optimizer saved and resumed."""
    F, optim = lib.nn.functional, lib.optim

    def build(lib_):
        n = lib_.nn
        return n.Sequential(n.Linear(4, 8), n.ReLU(), n.Linear(8, 8), n.ReLU(), n.Linear(8, 3))

    model = seeded_build(lib, build)
    groups = [model[0], model[2], model[4]]
    for p in model.parameters():
        p.requires_grad = False
    for p in groups[-1].parameters():
        p.requires_grad = True
    opt = optim.AdamW([{"params": groups[-1].parameters(), "lr": 1e-2}], weight_decay=0.01)
    x, y = lib.tensor(draw(10, 4, seed=18)), lib.tensor(draw(10, kind="randint", high=3))
    losses, lrs, errs = [], [], []
    for step in range(steps):
        if step in (2, 4):
            layer = groups[-1 - step // 2]
            for p in layer.parameters():
                p.requires_grad = True
            try:  # a parameter already in a group is refused
                opt.add_param_group({"params": [groups[-1].weight]})
            except ValueError:
                errs.append(True)
            opt.add_param_group({"params": list(layer.parameters()),
                                 "lr": 1e-2 / 2.6 ** (step // 2)})
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        lrs.append([g["lr"] for g in opt.param_groups])
        if step == 4:  # resume from a checkpoint
            saved = opt.state_dict()
            opt2 = optim.AdamW([{"params": groups[-1].parameters(), "lr": 1e-2}],
                               weight_decay=0.01)
            for layer in (groups[1], groups[0]):
                opt2.add_param_group({"params": list(layer.parameters())})
            opt2.load_state_dict(saved)
            opt = opt2
    return {"loss": losses, "lrs": lrs, "errs": errs, "w": arrays(model.state_dict()),
            "groups": [g["params"] for g in opt.state_dict()["param_groups"]],
            "initial_lr": [g.get("initial_lr") for g in opt.param_groups]}


def test_gradual_unfreezing_discriminative_lr_and_resume():
    got = both(ulmfit)
    assert got["errs"] == [True, True]


# ============================ feature distillation through forward hooks ====================

def feature_distill(lib, steps=4):
    """FitNets-style hints: hidden features captured with ``register_forward_hook`` from both
    networks, the student's projected by a regressor to the teacher's width."""
    F = lib.nn.functional

    def build(lib_):
        n = lib_.nn
        return n.ModuleDict({
            "teacher": n.Sequential(n.Linear(6, 12), n.ReLU(), n.Linear(12, 12), n.ReLU(),
                                    n.Linear(12, 3)),
            "student": n.Sequential(n.Linear(6, 5), n.ReLU(), n.Linear(5, 3)),
            "regressor": n.Linear(5, 12, bias=False)})

    m = seeded_build(lib, build)
    teacher, student, regressor = m["teacher"], m["student"], m["regressor"]
    feats = {}

    def save_to(name):
        def hook(module, inputs, output):
            feats[name] = output
        return hook

    handles = [teacher[3].register_forward_hook(save_to("t")),
               student[1].register_forward_hook(save_to("s"))]
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(student.parameters()) + list(regressor.parameters())
    opt = lib.optim.AdamW(params, lr=1e-2)
    x, y = lib.tensor(draw(7, 6, seed=19)), lib.tensor(draw(7, kind="randint", high=3))
    losses = []
    for _ in range(steps):
        with lib.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        hint = F.mse_loss(regressor(feats["s"]), feats["t"])
        kd = F.kl_div(F.log_softmax(s_logits / 2, 1), F.log_softmax(t_logits / 2, 1),
                      reduction="batchmean", log_target=True) * 4
        loss = F.cross_entropy(s_logits, y) + 0.5 * kd + 0.1 * hint
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append([loss.item(), hint.item(), kd.item()])
    for h in handles:
        h.remove()
    feats.clear()
    student(x)
    return {"loss": losses, "w": arrays(m.state_dict()), "after_remove": sorted(feats),
            "t_req": feats.get("t") is None}


def test_feature_distillation_with_forward_hooks():
    got = both(feature_distill)
    assert got["after_remove"] == []


# ============================ SVD rank chosen by retained energy ============================

def svd_energy_rank(lib, keep=0.9):
    def build(lib_):
        return lib_.nn.Sequential(lib_.nn.Linear(12, 9), lib_.nn.ReLU(), lib_.nn.Linear(9, 2))

    model = seeded_build(lib, build)
    W = model[0].weight.detach()
    S = lib.linalg.svdvals(W)
    energy = lib.cumsum(S ** 2, dim=0) / (S ** 2).sum()
    rank = int(lib.searchsorted(energy, lib.tensor([keep], dtype=energy.dtype)).item()) + 1
    U, S2, V = lib.svd(W)  # the older torch.svd: V, not V^T
    approx = U[:, :rank] @ lib.diag(S2[:rank]) @ V[:, :rank].T
    rel = lib.linalg.matrix_norm(W - approx) / lib.linalg.matrix_norm(W)
    return {"S": S, "S2": S2, "energy": energy, "rank": rank, "rel": rel,
            "matrix_rank": int(lib.linalg.matrix_rank(approx).item()),
            "recon": approx}


def test_svd_rank_by_energy_matches_torch():
    got = both(svd_energy_rank)
    assert got["matrix_rank"] == got["rank"]


# ============================ LLM.int8()-style vector-wise quantisation =====================

def int8_matmul(lib, threshold=1.5):
    """LLM.int8()'s decomposition written out: outlier input columns in float, the rest as
    row-wise (inputs) and column-wise (weights) absmax int8, multiplied in int32."""
    def build(lib_):
        return lib_.nn.Linear(8, 5)

    layer = seeded_build(lib, build)
    x = lib.tensor(draw(4, 8, seed=21))
    x[:, 2] *= 4  # an outlier feature
    W = layer.weight.detach()
    outliers = (x.abs() > threshold).any(dim=0)
    cols = outliers.nonzero().flatten()
    x_in, W_in = x[:, ~outliers], W[:, ~outliers]
    sx = x_in.abs().amax(dim=1, keepdim=True) / 127
    sw = W_in.abs().amax(dim=1, keepdim=True) / 127
    xq = lib.round(x_in / sx).clamp(-127, 127).to(lib.int8)
    wq = lib.round(W_in / sw).clamp(-127, 127).to(lib.int8)
    acc = xq.to(lib.int32) @ wq.to(lib.int32).t()
    out = acc.to(x.dtype) * (sx * sw.t()) + x[:, cols] @ W[:, cols].t() + layer.bias
    err = (out - layer(x)).abs().max() / layer(x).abs().max()
    return {"cols": cols, "xq": xq, "wq": wq, "acc": acc, "acc_dtype": str(acc.dtype)[-5:],
            "out": out, "err": err}


def test_llm_int8_decomposition_matches_torch():
    got = both(int8_matmul)
    assert got["acc_dtype"] == "int32" and got["err"] < 0.02


# ============================ intrinsic dimension: a random subspace of all weights =========

def intrinsic_dimension(lib, d=6, steps=5):
    """Li et al.'s / Aghajanyan et al.'s subspace training: θ = θ₀ + P·z with a fixed random
    projection, only z trained, the model run with ``functional_call`` on the rebuilt weights;
    the flat vectors through ``parameters_to_vector``."""
    nn, F = lib.nn, lib.nn.functional
    functional_call = lib.func.functional_call

    def build(lib_):
        n = lib_.nn
        return n.Sequential(n.Linear(5, 7), n.Tanh(), n.Linear(7, 3))

    model = seeded_build(lib, build)
    theta0 = nn.utils.parameters_to_vector(model.parameters()).detach()
    D = theta0.numel()
    P = lib.tensor(draw(D, d, seed=22)) / math.sqrt(d)
    z = lib.zeros(d, requires_grad=True)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    opt = lib.optim.AdamW([z], lr=5e-2, weight_decay=0.0)
    x, y = lib.tensor(draw(8, 5, seed=23)), lib.tensor(draw(8, kind="randint", high=3))
    losses, grads = [], []
    for _ in range(steps):
        theta = theta0 + P @ z
        # the method: nodegrad's module-level split is NumPy's (cut positions) without dim=
        params = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        opt.zero_grad()
        loss.backward()
        grads.append(z.grad.clone())
        opt.step()
        losses.append(loss.item())
    with lib.no_grad():
        nn.utils.vector_to_parameters(theta0 + P @ z, model.parameters())
    return {"D": D, "loss": losses, "grads": grads, "w": arrays(model.state_dict()),
            "model_grads": [p.grad for p in model.parameters()]}


def test_intrinsic_dimension_functional_call_matches_torch():
    got = both(intrinsic_dimension)
    assert got["D"] == 5 * 7 + 7 + 7 * 3 + 3
    theta = ng.zeros(got["D"])
    with pytest.warns(UserWarning, match="dim=0 for PyTorch's split"):  # documented: NumPy's
        assert len(ng.split(theta, [35, 7, 21, 3])) == 5
    assert [t.shape[0] for t in ng.split(theta, [35, 7, 21, 3], dim=0)] == [35, 7, 21, 3]


# ============================ the NF4 table as a non-persistent buffer ======================

def nf4_module(lib):
    nn, F = lib.nn, lib.nn.functional

    class NF4Linear(nn.Module):
        """A frozen NF4 weight (its codes and scales persistent, the code table not) and a
        trainable bias, as a layer a checkpoint can hold."""

        def __init__(self, linear, blocksize=16):
            super().__init__()
            self.register_buffer("code", lib.tensor(NF4, dtype=linear.weight.dtype),
                                 persistent=False)
            idx, absmax = nf4_quantize(lib, linear.weight.detach(), blocksize)
            self.register_buffer("qweight", idx)
            self.register_buffer("absmax", absmax)
            self.weight_shape = tuple(linear.weight.shape)
            self.bias = nn.Parameter(linear.bias.detach().clone())

        def forward(self, x):
            w = (self.code[self.qweight.long()] * self.absmax).view(self.weight_shape)
            return F.linear(x, w, self.bias)

    def build(lib_):
        return lib_.nn.Sequential(lib_.nn.Linear(8, 4), lib_.nn.ReLU(), lib_.nn.Linear(4, 2))

    model = seeded_build(lib, build)
    model[0] = NF4Linear(model[0])
    sd = model.state_dict()
    fresh = build(lib).to(lib.float64)
    fresh[0] = NF4Linear(fresh[0])
    result = fresh.load_state_dict(sd)
    x = lib.tensor(draw(3, 8, seed=24))
    return {"keys": list(sd), "dtypes": [str(v.dtype)[-5:] for v in sd.values()],
            "buffers": [n for n, _ in model.named_buffers()], "out": model(x),
            "fresh_out": fresh(x), "result": [list(result.missing_keys),
                                              list(result.unexpected_keys)]}


def test_nf4_layer_non_persistent_code_table():
    got = both(nf4_module)
    assert got["keys"] == ["0.bias", "0.qweight", "0.absmax", "2.weight", "2.bias"]
    assert got["buffers"] == ["0.code", "0.qweight", "0.absmax"]
    np.testing.assert_array_equal(got["out"], got["fresh_out"])


def test_loralib_embedding_padding_idx_and_scale_grad_by_freq():
    """lora_A's gradient through ``F.embedding`` of its transpose, with the padding column
    left out and repeated tokens' gradients divided by their counts."""
    def run(lib):
        Embedding = loralib(lib)[0]

        def build(lib_):
            return loralib(lib_)[0](11, 4, r=2, lora_alpha=2, padding_idx=0,
                                    scale_grad_by_freq=True)

        emb = seeded_build(lib, build)
        with lib.no_grad():
            emb.lora_A.copy_(lib.tensor(draw(2, 11, seed=25)))
        idx = lib.tensor([[0, 3, 3, 5], [3, 0, 7, 7]])
        w = lib.tensor(draw(2, 4, 4, seed=26))
        (emb(idx) * w).sum().backward()
        return {"A": emb.lora_A.grad, "B": emb.lora_B.grad, "W": emb.weight.grad,
                "is_lora": isinstance(emb, Embedding)}

    got = both(run)
    assert got["W"] is None and not got["A"][:, 0].any()


# ============================ LSQ and PACT: learned quantisation scales =====================

def lsq_pact(lib, steps=4):
    """Esser et al.'s LSQ as its reference code writes it (``grad_scale`` and ``round_pass``
    straight-through tricks with ``detach``) for weights, PACT's learned clipping level for
    activations, 4-bit."""
    nn, F = lib.nn, lib.nn.functional

    def grad_scale(x, scale):
        y = x
        y_grad = x * scale
        return (y - y_grad).detach() + y_grad

    def round_pass(x):
        y = x.round()
        y_grad = x
        return (y - y_grad).detach() + y_grad

    class LSQLinear(nn.Linear):
        def __init__(self, *args, nbits=4, **kw):
            super().__init__(*args, **kw)
            self.Qn, self.Qp = -2 ** (nbits - 1), 2 ** (nbits - 1) - 1
            self.step_size = nn.Parameter(lib.tensor(1.0))
            self.register_buffer("init_state", lib.zeros(1))

        def forward(self, x):
            if self.training and self.init_state == 0:
                # LSQ's code writes ``self.s.data.copy_(...)``; ``.data`` is an array here
                with lib.no_grad():
                    self.step_size.copy_(2 * self.weight.abs().mean() / math.sqrt(self.Qp))
                self.init_state.fill_(1)
            g = 1.0 / math.sqrt(self.weight.numel() * self.Qp)
            s = grad_scale(self.step_size, g)
            w_q = round_pass((self.weight / s).clamp(self.Qn, self.Qp)) * s
            return F.linear(x, w_q, self.bias)

    class PACT(nn.Module):
        def __init__(self, alpha=2.0, nbits=4):
            super().__init__()
            self.alpha = nn.Parameter(lib.tensor(alpha))
            self.levels = 2 ** nbits - 1

        def forward(self, x):
            y = lib.clamp(x, min=0)
            y = lib.where(y < self.alpha, y, self.alpha)
            scale = self.levels / self.alpha
            return round_pass(y * scale) / scale

    def build(lib_):
        n = lib_.nn
        return n.Sequential(n.Linear(6, 10), n.Linear(10, 3))

    plain = seeded_build(lib, build)
    model = nn.Sequential(LSQLinear(6, 10), PACT(), LSQLinear(10, 3)).to(lib.float64)
    with lib.no_grad():
        for q, p in ((model[0], plain[0]), (model[2], plain[1])):
            q.weight.copy_(p.weight)
            q.bias.copy_(p.bias)
    x, y = lib.tensor(draw(12, 6, seed=27)), lib.tensor(draw(12, kind="randint", high=3))
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append([model[0].step_size.grad, model[1].alpha.grad, model[2].step_size.grad])
        opt.step()
        losses.append(loss.item())
    return {"loss": losses, "grads": grads, "w": arrays(model.state_dict())}


def test_lsq_and_pact_straight_through_match_torch():
    both(lsq_pact)


# ============================ product quantisation of a weight matrix =======================

def product_quantize(lib, sub=2, k=4, iters=5):
    """PQ (as in "And the Bit Goes Down"): the weight's rows cut into sub-vectors, k-means per
    subspace with ``cdist``/``argmin``, centroid updates by ``index_add_``, then a magnitude
    mask from ``quantile`` on what is left."""
    def build(lib_):
        return lib_.nn.Linear(6, 8)

    layer = seeded_build(lib, build)
    W = layer.weight.detach()
    blocks = W.reshape(-1, sub)  # (24, 2)
    C = blocks[lib.arange(0, blocks.size(0), blocks.size(0) // k)].clone()
    for _ in range(iters):
        assign = lib.cdist(blocks, C, p=2.0).argmin(dim=1)
        sums = lib.zeros_like(C).index_add_(0, assign, blocks)
        counts = lib.bincount(assign, minlength=k).unsqueeze(1).to(C.dtype)
        C = lib.where(counts > 0, sums / counts.clamp_min(1), C)
    Wq = C[assign].reshape(W.shape)
    thr = lib.quantile(Wq.abs().flatten(), 0.25)
    mask = Wq.abs() > thr
    kth = lib.kthvalue(W.abs().flatten(), 6).values
    uniq, inv, cnt = lib.unique(assign, return_inverse=True, return_counts=True)
    return {"C": C, "assign": assign, "Wq": Wq * mask, "thr": thr, "kth": kth,
            "uniq": uniq, "inv": inv, "cnt": cnt,
            "err": (W - Wq).norm() / W.norm()}


def test_product_quantisation_matches_torch():
    got = both(product_quantize)
    assert got["err"] < 1


# ============================ new-token rows only; the optimizer step inside backward =======

def new_tokens(lib, steps=4, n_new=3):
    """Vocabulary growth for fine-tuning: the embedding resized (old rows copied, new rows at
    the mean of the old ones), a gradient hook that zeroes the old rows' gradients, and the
    optimizer stepped per parameter from ``register_post_accumulate_grad_hook`` (PyTorch's
    "fuse the optimizer step into backward" recipe)."""
    nn, F = lib.nn, lib.nn.functional

    def build(lib_):
        n = lib_.nn
        return n.ModuleDict({"emb": n.Embedding(8, 4), "head": n.Linear(4, 8 + n_new)})

    m = seeded_build(lib, build)
    old = m["emb"]
    new = nn.Embedding(8 + n_new, 4).to(lib.float64)
    with lib.no_grad():
        new.weight[:8] = old.weight
        new.weight[8:] = old.weight.mean(dim=0, keepdim=True)
    m["emb"] = new
    mask = lib.zeros(8 + n_new, 1, dtype=lib.float64)
    mask[8:] = 1.0
    handle = new.weight.register_hook(lambda grad: grad * mask)
    # no weight decay: decoupled decay would move the old rows too
    optimizer_dict = {p: lib.optim.AdamW([p], lr=1e-2, weight_decay=0.0, foreach=False)
                      for p in m.parameters()}

    def optimizer_hook(parameter) -> None:
        optimizer_dict[parameter].step()
        optimizer_dict[parameter].zero_grad()

    hooks = [p.register_post_accumulate_grad_hook(optimizer_hook) for p in m.parameters()]
    tokens = lib.tensor([[1, 8, 9, 2, 10, 3], [9, 4, 8, 8, 5, 0]])
    losses = []
    for _ in range(steps):
        logits = m["head"](m["emb"](tokens[:, :-1]))
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        losses.append(loss.item())
    handle.remove()
    for h in hooks:
        h.remove()
    return {"loss": losses, "w": arrays(m.state_dict()),
            "grads": [p.grad for p in m.parameters()],
            "old_rows_kept": bool((m["emb"].weight[:8] != old.weight).sum() == 0)}


def test_new_token_rows_and_optimizer_in_backward():
    got = both(new_tokens)
    assert got["old_rows_kept"] is True
    assert got["grads"] == [None, None, None]


# ============================ adapters inside nn.TransformerEncoder by surgery ==============

def encoder_adapters(lib, steps=4):
    """Houlsby adapters after each encoder layer's ``linear2`` of ``nn.TransformerEncoder``
    (pre-norm, GELU, padding mask), only adapters, norms and biases trained."""
    nn, F = lib.nn, lib.nn.functional

    def build(lib_):
        n = lib_.nn
        layer = n.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0,
                                          activation="gelu", batch_first=True, norm_first=True)
        return n.ModuleDict({"enc": n.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                             "head": n.Linear(8, 2)})

    m = seeded_build(lib, build)
    for name, module in list(m.named_modules()):
        if name.endswith("linear2"):
            parent = m.get_submodule(name.rpartition(".")[0])
            bottleneck = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 8))
            with lib.no_grad():
                for p in bottleneck.parameters():
                    p.copy_(lib.tensor(draw(*p.shape, seed=p.numel()) * 0.2))

            class WithAdapter(nn.Module):
                def __init__(self, inner, adapter):
                    super().__init__()
                    self.inner, self.adapter = inner, adapter

                def forward(self, x):
                    h = self.inner(x)
                    return h + self.adapter(h)

            parent.linear2 = WithAdapter(module, bottleneck).to(lib.float64)
    for n, p in m.named_parameters():
        p.requires_grad_("adapter" in n or "norm" in n or n.endswith("bias") or "head" in n)
    x = lib.tensor(draw(3, 5, 8, seed=28))
    pad = lib.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    y = lib.tensor(draw(3, kind="randint", high=2))
    opt = lib.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        h = m["enc"](x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).double()
        loss = F.cross_entropy(m["head"]((h * keep).sum(1) / keep.sum(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"loss": losses, "keys": list(m.state_dict()), "w": arrays(m.state_dict()),
            "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad)}


def test_encoder_layer_adapters_by_surgery():
    got = both(encoder_adapters)
    assert "enc.layers.1.linear2.adapter.2.weight" in got["keys"]


# ============================ loralib's ConvLoRA and a weight-standardised conv =============

def conv_lora(lib, steps=4):
    """loralib's ``ConvLoRA`` (the low-rank update reshaped to the kernel, applied through the
    wrapped layer's ``_conv_forward``, merged on ``eval()``) next to timm's ``StdConv2d``-style
    weight standardisation, which calls ``_conv_forward`` from its own ``forward``."""
    nn, F = lib.nn, lib.nn.functional

    class ConvLoRA(nn.Module):
        def __init__(self, conv_module, in_channels, out_channels, kernel_size, r=0,
                     lora_alpha=1, merge_weights=True, **kwargs):
            super().__init__()
            self.conv = conv_module(in_channels, out_channels, kernel_size, **kwargs)
            self.r, self.lora_alpha, self.merge_weights, self.merged = r, lora_alpha, \
                merge_weights, False
            if r > 0:
                self.lora_A = nn.Parameter(
                    self.conv.weight.new_zeros((r * kernel_size, in_channels * kernel_size)))
                self.lora_B = nn.Parameter(self.conv.weight.new_zeros(
                    (out_channels // self.conv.groups * kernel_size, r * kernel_size)))
                self.scaling = self.lora_alpha / self.r
                self.conv.weight.requires_grad = False
            self.reset_parameters()

        def reset_parameters(self):
            self.conv.reset_parameters()
            if hasattr(self, 'lora_A'):
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
                nn.init.zeros_(self.lora_B)

        def train(self, mode=True):
            super().train(mode)
            delta = (self.lora_B @ self.lora_A).view(self.conv.weight.shape) * self.scaling
            if mode and self.merge_weights and self.merged:
                self.conv.weight.data -= delta
                self.merged = False
            elif not mode and self.merge_weights and not self.merged:
                self.conv.weight.data += delta
                self.merged = True
            return self

        def forward(self, x):
            if self.r > 0 and not self.merged:
                return self.conv._conv_forward(
                    x,
                    self.conv.weight + (self.lora_B @ self.lora_A).view(self.conv.weight.shape)
                    * self.scaling,
                    self.conv.bias)
            return self.conv(x)

    class StdConv2d(nn.Conv2d):
        def __init__(self, *args, eps=1e-6, **kw):
            super().__init__(*args, **kw)
            self.eps = eps

        def forward(self, x):
            w = self.weight
            mean = w.mean(dim=(1, 2, 3), keepdim=True)
            var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
            return self._conv_forward(x, (w - mean) / lib.sqrt(var + self.eps), self.bias)

    model = nn.Sequential(ConvLoRA(nn.Conv2d, 2, 4, 3, r=2, lora_alpha=4, padding=1,
                                   padding_mode="reflect"), nn.ReLU(),
                          StdConv2d(4, 3, 3, stride=2, bias=False), nn.Flatten(),
                          nn.Linear(12, 3)).to(lib.float64)
    with lib.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(lib.tensor(draw(*p.shape, seed=40 + i) * 0.3))
    x, y = lib.tensor(draw(4, 2, 5, 5, seed=29)), lib.tensor(draw(4, kind="randint", high=3))
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
        opt.step()
        losses.append(loss.item())
    out = model(x)
    model.eval()
    merged = model(x)
    return {"loss": losses, "grads": grads, "out": out, "merged": merged,
            "frozen": model[0].conv.weight.grad, "w": arrays(model.state_dict())}


def test_conv_lora_and_std_conv_through_conv_forward():
    got = both(conv_lora)
    assert got["frozen"] is None
    np.testing.assert_allclose(got["merged"], got["out"], atol=1e-12)


# ============================ torchvision's FrozenBatchNorm2d, legacy adapter names =========

def frozen_bn(lib, steps=3):
    """A pretrained conv net's batch norms swapped for torchvision's ``FrozenBatchNorm2d``
    (buffers only; its ``_load_from_state_dict`` drops ``num_batches_tracked``), an adapter
    checkpoint with legacy names renamed by another ``_load_from_state_dict``, then the head
    fine-tuned."""
    nn, F = lib.nn, lib.nn.functional

    FrozenBatchNorm2d = frozen_batchnorm2d(lib)

    class Adapter(nn.Module):
        """Renamed from ``down``/``up`` to ``down_proj``/``up_proj``; old checkpoints load."""

        def __init__(self, c, hidden=2):
            super().__init__()
            self.down_proj = nn.Conv2d(c, hidden, 1)
            self.up_proj = nn.Conv2d(hidden, c, 1)

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                  missing_keys, unexpected_keys, error_msgs):
            for old, new in (("down.", "down_proj."), ("up.", "up_proj.")):
                for k in [k for k in state_dict if k.startswith(prefix + old)]:
                    state_dict[prefix + new + k[len(prefix + old):]] = state_dict.pop(k)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)

        def forward(self, x):
            return x + self.up_proj(F.relu(self.down_proj(x)))

    def build(lib_):
        n = lib_.nn
        return n.Sequential(n.Conv2d(2, 4, 3, padding=1, bias=False), n.BatchNorm2d(4),
                            n.ReLU(), n.AdaptiveAvgPool2d(1), n.Flatten(), n.Linear(4, 3))

    pretrained = seeded_build(lib, build)
    x, y = lib.tensor(draw(5, 2, 4, 4, seed=30)), lib.tensor(draw(5, kind="randint", high=3))
    pretrained(x)  # one batch of statistics
    pretrained.eval()
    sd = pretrained.state_dict()
    model = build(lib).to(lib.float64)
    for name, m in list(model.named_children()):
        if isinstance(m, nn.BatchNorm2d):
            setattr(model, name, FrozenBatchNorm2d(m.num_features).to(lib.float64))
    model.insert(3, Adapter(4).to(lib.float64))
    legacy = {"3.down.weight": lib.tensor(draw(2, 4, 1, 1, seed=31)) * 0.3,
              "3.down.bias": lib.zeros(2), "3.up.weight": lib.tensor(draw(4, 2, 1, 1, seed=32)),
              "3.up.bias": lib.zeros(4)}
    sd = {k if not k.startswith(("3.", "4.", "5.")) else f"{int(k[0]) + 1}{k[1:]}": v
          for k, v in sd.items()}
    result = model.load_state_dict({**sd, **legacy})
    for n_, p in model.named_parameters():
        p.requires_grad_(n_.startswith(("3.", "6.")))
    opt = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"result": [list(result.missing_keys), list(result.unexpected_keys)],
            "keys": list(model.state_dict()), "loss": losses, "w": arrays(model.state_dict()),
            "bn": model[1].running_var}


def test_frozen_batchnorm_and_legacy_adapter_names_load_strictly():
    got = both(frozen_bn)
    assert got["result"] == [[], []]
    assert "1.num_batches_tracked" not in got["keys"]


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_forward_takes_another_weight(nd):
    conv = getattr(ng.nn, f"Conv{nd}d")(2, 3, 3, padding=1, padding_mode="circular")
    x = ng.randn(1, 2, *(5,) * nd)
    w2 = conv.weight * 2
    ref = getattr(ng.nn.functional, f"conv{nd}d")(
        ng.nn.functional.pad(x, (1, 1) * nd, mode="circular"), w2, None)
    np.testing.assert_allclose(conv._conv_forward(x, w2, None).numpy(), ref.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_size_mismatch_named_in_pytorch_words_even_with_strict_false():
    lin = ng.nn.Linear(5, 2)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        lin.load_state_dict({"weight": ng.zeros(3, 5)}, strict=False)
