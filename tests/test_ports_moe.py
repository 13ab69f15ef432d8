"""Mixture-of-experts routing and efficient-attention code, ported from PyTorch by changing
only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as its
source writes it: Switch Transformer's top-1 router with expert capacity (Hugging Face),
fairseq's GShard top-2 gating, expert-choice routing, sorting tokens by expert (megablocks
style), Shazeer's noisy top-k gating, a tiny MoE transformer trained with AdamW and clipping,
lucidrains' mixture-of-experts, Megatron-Core's router and token permutation, DeepSpeed's
gates, FastMoE's scatter/gather autograd Functions; linear attention (fast-transformers),
Performer's FAVOR+, Reformer's LSH attention, Longformer's sliding chunks, ALiBi (Press's and
BLOOM's), ``scaled_dot_product_attention`` and its documented reference formula, chunked
memory-efficient attention, Linformer and the Nystromformer. Both runs start from the same
weights and data, so outputs, losses, gradients and parameters agree to rounding (float64 to
1e-10, float32 to 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, arrays, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float64_default():
    """Both libraries build float64 tensors by default for each test (restored after)."""
    tdt, ndt = torch.get_default_dtype(), ng.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)
    yield
    torch.set_default_dtype(tdt)
    ng.set_default_dtype(ndt)


def weights_of(lib, build, dtype="float64", seed=0):
    """``build(lib)`` holding the weights PyTorch's seeded ``build(torch)`` draws, in ``dtype``."""
    torch.manual_seed(seed)
    init = {k: v.detach().double().numpy().copy() for k, v in build(torch).state_dict().items()}
    model = build(lib).to(getattr(lib, dtype))
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
        [(k, v.shape) for k, v in init.items()]
    model.load_state_dict({k: lib.tensor(v).to(getattr(lib, dtype)) if v.dtype.kind == "f"
                           else lib.tensor(v) for k, v in init.items()})
    return model


def grads(model) -> dict:
    return {n: arr(p.grad) for n, p in model.named_parameters() if p.grad is not None}


def both(fn, *args, tol=TOL, **kw):
    ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


# ============================ Switch Transformer (Hugging Face) ==============================

@dataclass
class SwitchConfig:
    hidden_size: int = 8
    d_ff: int = 12
    num_experts: int = 4
    expert_capacity: int = 3
    router_bias: bool = False
    router_jitter_noise: float = 0.0
    router_ignore_padding_tokens: bool = False
    router_dtype: str = "float64"  # "float32" in the original config
    dropout_rate: float = 0.0


def switch(lib):
    nn = lib.nn

    class SwitchTransformersTop1Router(nn.Module):
        """Top-1 router: argmax expert, a one-hot mask cut at ``expert_capacity`` tokens per
        expert by ``cumsum`` priority, the winning probability kept for scaling."""

        def __init__(self, config):
            super().__init__()
            self.num_experts = config.num_experts
            self.expert_capacity = config.expert_capacity
            self.classifier = nn.Linear(config.hidden_size, self.num_experts,
                                        bias=config.router_bias)
            self.jitter_noise = config.router_jitter_noise
            self.ignore_padding_tokens = config.router_ignore_padding_tokens
            self.dtype = getattr(lib, config.router_dtype)

        def _compute_router_probabilities(self, hidden_states):
            self.input_dtype = hidden_states.dtype
            hidden_states = hidden_states.to(self.dtype)
            if self.training and self.jitter_noise > 0:
                # Multiply the token inputs by the uniform distribution - adding some noise
                hidden_states *= lib.empty_like(hidden_states).uniform_(
                    1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            # Shape: [num_groups, tokens_per_group, num_experts]
            self._cast_classifier()
            router_logits = self.classifier(hidden_states)
            # Apply Softmax and cast back to the original `dtype`
            router_probabilities = nn.functional.softmax(
                router_logits, dim=-1, dtype=self.dtype).to(self.input_dtype)
            return router_probabilities, router_logits

        def _cast_classifier(self):
            if not (hasattr(self.classifier, "SCB") or hasattr(self.classifier, "CB")):
                self.classifier = self.classifier.to(self.dtype)

        def forward(self, hidden_states):
            router_probs, router_logits = self._compute_router_probabilities(hidden_states)
            expert_index = lib.argmax(router_probs, dim=-1)
            expert_index = lib.nn.functional.one_hot(expert_index, num_classes=self.num_experts)
            # Mask tokens outside expert capacity. Sum over each sequence
            token_priority = lib.cumsum(expert_index, dim=-2)
            # mask if the token routed to to the expert will overflow
            expert_capacity_mask = token_priority <= self.expert_capacity
            expert_index = expert_index * expert_capacity_mask
            router_probs = lib.max(router_probs, dim=-1).values.unsqueeze(-1)
            return expert_index, router_probs, router_logits

    class SwitchTransformersDenseActDense(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.wi = nn.Linear(config.hidden_size, config.d_ff, bias=False)
            self.wo = nn.Linear(config.d_ff, config.hidden_size, bias=False)
            self.dropout = nn.Dropout(config.dropout_rate)
            self.act = nn.ReLU()

        def forward(self, hidden_states):
            hidden_states = self.wi(hidden_states)
            hidden_states = self.act(hidden_states)
            hidden_states = self.dropout(hidden_states)
            hidden_states = self.wo(hidden_states)
            return hidden_states

    class SwitchTransformersSparseMLP(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.router = SwitchTransformersTop1Router(config)
            self.experts = nn.ModuleDict()
            for idx in range(config.num_experts):
                self.experts[f"expert_{idx}"] = SwitchTransformersDenseActDense(config)

        def forward(self, hidden_states):
            router_mask, router_probs, router_logits = self.router(hidden_states)
            expert_index = lib.argmax(router_mask, dim=-1)
            # The routers introduced might not always map all the tokens, to a router, which
            # means that some hidden states can be unchanged from one layer to another. That
            # is why the hidden states are cloned before updating only the seleced ones.
            next_states = hidden_states.clone()
            router_mask = router_mask.bool()
            batch_size, seq_len, num_experts = router_mask.shape
            idx_mask = router_mask.reshape(batch_size * seq_len, num_experts).sum(dim=0)
            idx_mask = lib.nonzero(idx_mask, as_tuple=True)[0].tolist()
            for idx in idx_mask:
                next_states[router_mask[:, :, idx]] = getattr(self.experts, f"expert_{idx}")(
                    hidden_states[router_mask[:, :, idx]])
            hidden_states = router_probs * next_states
            return hidden_states, (router_logits, expert_index)

    def router_z_loss_func(router_logits):
        num_groups, tokens_per_group, _ = router_logits.shape
        log_z = lib.logsumexp(router_logits, dim=-1)
        z_loss = log_z**2
        return lib.sum(z_loss) / (num_groups * tokens_per_group)

    def load_balancing_loss_func(router_probs, expert_indices, mask_dtype=lib.float32):
        num_experts = router_probs.shape[-1]
        # cast the expert indices to int64, otherwise one-hot encoding will fail
        if expert_indices.dtype != lib.int64:
            expert_indices = expert_indices.to(lib.int64)
        if len(expert_indices.shape) == 2:
            expert_indices = expert_indices.unsqueeze(2)
        expert_mask = lib.nn.functional.one_hot(expert_indices, num_experts)
        # For a given token, determine if it was routed to a given expert. (``axis=-2`` in
        # the original: nodegrad's ``max(x, axis=...)`` is NumPy's, values only, by design)
        expert_mask = lib.max(expert_mask, dim=-2).values
        # cast to float32 otherwise mean will fail (float64 runs pass float64: nodegrad
        # never widens float32 * float64 silently)
        expert_mask = expert_mask.to(mask_dtype)
        tokens_per_group_and_expert = lib.mean(expert_mask, axis=-2)
        router_prob_per_group_and_expert = lib.mean(router_probs, axis=-2)
        return lib.mean(tokens_per_group_and_expert * router_prob_per_group_and_expert) * (
            num_experts**2)

    return SwitchTransformersSparseMLP, router_z_loss_func, load_balancing_loss_func


def switch_net(lib, config):
    """A Switch layer (pre-norm residual) under a linear head."""
    nn = lib.nn
    SparseMLP = switch(lib)[0]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(config.hidden_size)
            self.mlp = SparseMLP(config)
            self.head = nn.Linear(config.hidden_size, 2)

        def forward(self, x):
            h, (router_logits, expert_index) = self.mlp(self.ln(x))
            return self.head(x + h), router_logits, expert_index

    return Net()


def train_switch(lib, dtype, steps=4):
    """Loss = MSE + 0.01 aux + 0.001 z; AdamW with gradient clipping. Capacity 3 of 10 tokens
    per expert drops some."""
    nn = lib.nn
    config = SwitchConfig(router_dtype=dtype)
    _, z_loss, lb_loss = switch(lib)
    model = weights_of(lib, lambda L: switch_net(L, config), dtype)
    opt = lib.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.01)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((steps, 2, 10, config.hidden_size))
    Y = rng.standard_normal((steps, 2, 10, 2))
    rec = {"loss": [], "aux": [], "z": [], "kept": [], "norm": [], "grad": [], "w": []}
    for step in range(steps):
        x = lib.tensor(X[step]).to(getattr(lib, dtype))
        y = lib.tensor(Y[step]).to(getattr(lib, dtype))
        out, router_logits, expert_index = model(x)
        router_probs = nn.functional.softmax(router_logits, dim=-1)
        z = z_loss(router_logits)
        aux = lb_loss(router_probs, expert_index, getattr(lib, dtype))
        loss = nn.functional.mse_loss(out, y) + 0.01 * aux + 0.001 * z
        opt.zero_grad()
        loss.backward()
        rec["norm"].append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)))
        rec["grad"].append(grads(model))
        opt.step()
        rec["kept"].append(int(model.mlp.router(model.ln(x))[0].sum()))
        rec["loss"].append(loss.item())
        rec["aux"].append(aux.item())
        rec["z"].append(z.item())
        rec["w"].append(arrays(model.state_dict()))
    return rec


@pytest.mark.parametrize("dtype,tol", [("float64", TOL), ("float32", 1e-5)])
def test_switch_top1_capacity_training_matches_torch(dtype, tol):
    got = both(train_switch, dtype, tol=tol)
    assert min(got["kept"]) < 20  # the capacity dropped tokens


def test_switch_load_balancing_as_written_in_float32():
    """The original casts the expert mask ``.to(torch.float32)`` — in float32 as written."""
    rng = np.random.default_rng(2)
    logits, idx = rng.standard_normal((2, 6, 4)), rng.integers(0, 4, (2, 6))

    def run(lib):
        _, z_loss, lb_loss = switch(lib)
        lg = lib.tensor(logits, dtype=lib.float32, requires_grad=True)
        probs = lg.softmax(-1)
        loss = lb_loss(probs, lib.tensor(idx, dtype=lib.int32)) + z_loss(lg)
        loss.backward()
        return {"loss": loss, "grad": lg.grad}

    both(run, tol=1e-6)


def test_max_with_axis_is_numpys_values_by_design():
    """HF's ``torch.max(mask, axis=-2).values``: ``axis=`` is NumPy's in nodegrad (values
    only, documented); ``dim=`` gives PyTorch's (values, indices)."""
    x = ng.tensor([[1.0, 5.0], [3.0, 2.0]])
    assert ng.max(x, axis=0).tolist() == [3.0, 5.0]
    assert ng.max(x, dim=0).indices.tolist() == [1, 0]


# ============================ GShard top-2 gating (fairseq moe_layer) ========================

def gshard(lib):
    nn = lib.nn
    F = lib.nn.functional

    def one_hot(indices, num_classes, unsqueeze_indices=False):
        if unsqueeze_indices:
            indices = indices.unsqueeze(-1)
        assert indices.shape[-1] == 1, "last dimension of indices must be have size 1"
        output = lib.zeros(indices.shape[:-1] + (num_classes,), device=indices.device,
                           dtype=indices.dtype)
        output.scatter_(len(output.shape) - 1, indices, 1)
        return output

    def fused_cumsum_sub_one(mask):
        return lib.cumsum(mask, dim=0) - 1

    def top2gating(logits, capacity_factor=1.0, second_expert_policy="all"):
        """Implements Top2Gating on logits."""
        gates = F.softmax(logits, dim=1)
        # gates has shape of SE
        num_tokens = gates.shape[0]
        num_experts = gates.shape[1]
        capacity = 2 * math.ceil(num_tokens / num_experts)
        capacity = int(capacity * capacity_factor)
        # Create a mask for 1st's expert per token
        indices1_s = lib.argmax(gates, dim=1, keepdim=True)
        mask1 = one_hot(indices1_s, num_experts)
        logits_w_noise = logits  # the Gumbel noise of the "sampling" policy is left out
        # Replace top-expert with min value
        logits_except1 = logits_w_noise.masked_fill(mask1.bool(), float("-inf"))
        indices2_s = lib.argmax(logits_except1, dim=1, keepdim=True)
        mask2 = one_hot(indices2_s, num_experts)
        gates1_s = (gates * mask1).sum(dim=1)
        gates2_s = (gates * mask2).sum(dim=1)
        # Normalize gate probabilities
        denom_s = gates1_s + gates2_s
        # Avoid divide-by-zero
        denom_s = lib.clamp(denom_s, min=lib.finfo(denom_s.dtype).eps)
        gates1_s /= denom_s
        gates2_s /= denom_s
        if second_expert_policy == "random":
            sampled = (2 * gates2_s) > lib.rand_like(gates2_s)
            mask2 = mask2 * sampled.repeat(num_experts, 1).transpose(1, 0)
        # Compute locations in capacity buffer
        locations1 = fused_cumsum_sub_one(mask1)
        locations2 = fused_cumsum_sub_one(mask2)
        # Update 2nd's location by accounting for locations of 1st
        locations2 += lib.sum(mask1, dim=0, keepdim=True)
        # Compute l_aux
        me = lib.mean(gates, dim=0)
        ce = lib.mean(mask1.to(gates.dtype), dim=0)
        l_aux = lib.mean(me * ce)
        l_aux = l_aux * num_experts * num_experts
        # Remove locations outside capacity from mask
        mask1 = mask1 * lib.lt(locations1, capacity)
        mask2 = mask2 * lib.lt(locations2, capacity)
        # Store the capacity location for each token
        locations1_s = lib.sum(locations1 * mask1, dim=1)
        locations2_s = lib.sum(locations2 * mask2, dim=1)
        # Calculate combine_weights and dispatch_mask
        gates1 = gates1_s.unsqueeze(-1) * mask1.to(gates1_s.dtype)  # einsum("s,se->se")
        gates2 = gates2_s.unsqueeze(-1) * mask2.to(gates2_s.dtype)  # einsum("s,se->se")
        locations1_sc = one_hot(locations1_s, num_classes=capacity, unsqueeze_indices=True)
        locations2_sc = one_hot(locations2_s, num_classes=capacity, unsqueeze_indices=True)
        combine1_sec = lib.bmm(
            # einsum("se,sc->sec")
            gates1.unsqueeze(-1), locations1_sc.to(gates1.dtype).unsqueeze(1))
        combine2_sec = lib.bmm(
            # einsum("se,sc->sec")
            gates2.unsqueeze(-1), locations2_sc.to(gates2.dtype).unsqueeze(1))
        combine_weights = combine1_sec + combine2_sec
        dispatch_mask = combine_weights.bool()
        return l_aux, combine_weights, dispatch_mask

    class Top2Gate(nn.Module):
        def __init__(self, model_dim, num_experts):
            super().__init__()
            self.wg = lib.nn.Linear(model_dim, num_experts, bias=False)

        def forward(self, input, mask=None):
            logits = self.wg(input)
            return top2gating(logits, capacity_factor=0.75)

    class MOELayer(nn.Module):
        def __init__(self, gate, experts):
            super().__init__()
            self.gate = gate
            self.experts = nn.ModuleList(experts)
            self.num_local_experts = len(self.experts)

        def forward(self, *input, input_padding_mask=None, **kwargs):
            assert len(input) == 1, "only single input Tensor supported"
            input = input[0]
            assert len(input.shape) == 3, "input Tensor must have dimensions: (s)equence, " \
                "(t)oken, (m)odel"
            d_model = input.shape[2]
            # Pad to expected batch size
            input_shape = list(input.shape)
            # Reshape into S tokens by dropping sequence dimension.
            reshaped_input = input.reshape(-1, d_model)
            reshaped_input_shape = reshaped_input.shape
            self.l_aux, combine_weights, dispatch_mask = self.gate(reshaped_input)
            dispatch_mask = dispatch_mask.to(input.dtype).permute(1, 2, 0)  # S,E,C -> E,C,S
            E, C, S = dispatch_mask.size()
            M = reshaped_input.size(1)
            assert reshaped_input.size() == (S, M)
            # einsum("sec,sm->ecm")
            dispatched_input = lib.mm(dispatch_mask.view(E * C, S), reshaped_input)
            # Re-shape after all-to-all: ecm -> gecm
            dispatched_input = dispatched_input.reshape(1, self.num_local_experts, -1, d_model)
            chunks = dispatched_input.chunk(self.num_local_experts, dim=1)
            expert_outputs = []
            for chunk, expert in zip(chunks, self.experts):
                expert_outputs += [expert(chunk)]
            expert_output = lib.cat(expert_outputs, dim=1)
            # Re-shape back: gecm -> ecm
            expert_output = expert_output.reshape(1 * self.num_local_experts, -1, d_model)
            # einsum("sec,ecm->sm")
            combined_output = combine_weights.view(S, E * C).mm(expert_output.view(E * C, M))
            # Remove padding here when --max-tokens is specified and not --batch-size
            combined_output = combined_output[:reshaped_input_shape[0], :]
            combined_output = combined_output.reshape(input.shape)
            combined_output = combined_output[:, :input_shape[1], :]
            return combined_output, self.l_aux

    def build(d_model=6, num_experts=4):
        experts = [nn.Sequential(nn.Linear(d_model, 10), nn.GELU(), nn.Linear(10, d_model))
                   for _ in range(num_experts)]
        return MOELayer(Top2Gate(d_model, num_experts), experts)

    return build, top2gating


def run_gshard(lib, steps=3):
    build, top2gating = gshard(lib)
    model = weights_of(lib, lambda L: gshard(L)[0]())
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(3)
    rec = {"out": [], "l_aux": [], "grad": [], "w": [], "x_grad": []}
    for _ in range(steps):
        x = lib.tensor(rng.standard_normal((2, 8, 6)), requires_grad=True)
        out, l_aux = model(x)
        loss = (out ** 2).mean() + 0.01 * l_aux
        opt.zero_grad()
        loss.backward()
        rec["out"].append(out)
        rec["l_aux"].append(l_aux)
        rec["x_grad"].append(x.grad)
        rec["grad"].append(grads(model))
        opt.step()
        rec["w"].append(arrays(model.state_dict()))
    # the gating function alone: capacity 8 of 16 tokens per expert drops some assignments
    l_aux, combine, dispatch = top2gating(lib.tensor(rng.standard_normal((16, 4))))
    rec["gating"] = [l_aux, combine, dispatch.to(lib.float64)]
    rec["kept"] = int(dispatch.sum())
    return rec


def test_gshard_top2_gating_training_matches_torch():
    got = both(run_gshard)
    assert got["kept"] < 2 * 16


# ============================ expert-choice routing (Zhou et al. 2022) =======================

def expert_choice(lib):
    nn = lib.nn
    F = lib.nn.functional

    class ExpertChoiceMoE(nn.Module):
        """Each expert picks its ``capacity`` best tokens (``topk`` over the transposed
        scores); experts run batched through ``einsum`` over stacked weights."""

        def __init__(self, d_model=6, d_ff=8, num_experts=4, capacity_factor=1.0):
            super().__init__()
            self.num_experts = num_experts
            self.capacity_factor = capacity_factor
            self.gate = nn.Linear(d_model, num_experts, bias=False)
            self.w1 = nn.Parameter(lib.randn(num_experts, d_model, d_ff) / math.sqrt(d_model))
            self.w2 = nn.Parameter(lib.randn(num_experts, d_ff, d_model) / math.sqrt(d_ff))

        def forward(self, x):
            B, T, d = x.shape
            x = x.reshape(B * T, d)
            n = x.shape[0]
            capacity = int(n * self.capacity_factor / self.num_experts)
            scores = F.softmax(self.gate(x), dim=-1)  # [n, E]
            gating, index = lib.topk(scores.t(), capacity, dim=-1)  # [E, k]
            dispatch = F.one_hot(index, num_classes=n).to(x.dtype)  # [E, k, n]
            xin = lib.einsum("ekn,nd->ekd", dispatch, x)
            h = F.gelu(lib.einsum("ekd,edh->ekh", xin, self.w1), approximate="tanh")
            out = lib.einsum("ekh,ehd->ekd", h, self.w2)
            combine = lib.einsum("ek,ekn->ekn", gating, dispatch)
            y = lib.einsum("ekn,ekd->nd", combine, out)
            self.tokens_per_token = dispatch.sum(dim=(0, 1))  # how many experts took each
            return y.reshape(B, T, d)

    return ExpertChoiceMoE


def run_expert_choice(lib, steps=3):
    model = weights_of(lib, lambda L: expert_choice(L)())
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(4)
    rec = {"y": [], "grad": [], "w": [], "taken": []}
    for _ in range(steps):
        x = lib.tensor(rng.standard_normal((2, 6, 6)))
        y = model(x)
        loss = ((y - x) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        rec["y"].append(y)
        rec["taken"].append(model.tokens_per_token)
        rec["grad"].append(grads(model))
        opt.step()
        rec["w"].append(arrays(model.state_dict()))
    return rec


def test_expert_choice_routing_matches_torch():
    both(run_expert_choice)


# ============================ sorting tokens by expert (fairseq / megablocks style) ==========

def sorted_moe(lib):
    nn = lib.nn
    F = lib.nn.functional  # noqa: F841

    class SortedMoE(nn.Module):
        """Top-k routing whose tokens are permuted into expert order (``argsort`` of the
        flat expert ids, ``bincount`` counts, ``cumsum`` offsets), run as one contiguous
        ``split`` per expert, and put back with ``scatter_add`` (``mode="scatter"``),
        ``index_add_`` or the inverse permutation's ``gather`` (``mode="gather"``)."""

        def __init__(self, d=6, ffn=8, num_experts=4, top_k=2, mode="scatter"):
            super().__init__()
            self.num_experts, self.top_k, self.mode = num_experts, top_k, mode
            self.router = nn.Linear(d, num_experts, bias=False)
            self.experts = nn.ModuleList([nn.Sequential(nn.Linear(d, ffn), nn.SiLU(),
                                                        nn.Linear(ffn, d))
                                          for _ in range(num_experts)])

        def forward(self, x):
            shape = x.shape
            x = x.view(-1, shape[-1])
            logits = self.router(x)
            scores = logits.softmax(dim=-1)
            expert_weights, top_experts = scores.topk(self.top_k, dim=-1)
            expert_weights = expert_weights / expert_weights.sum(dim=-1, keepdim=True)
            top_experts = top_experts.flatten()
            expert_weights = expert_weights.flatten()
            # permute the (token, slot) pairs into expert order
            indices = lib.argsort(top_experts, stable=True)
            bin_ids = top_experts[indices]
            tokens_per_expert = lib.bincount(top_experts, minlength=self.num_experts)
            bins = lib.cumsum(tokens_per_expert, 0)
            self.offsets = lib.cat([bins.new_zeros(1), bins[:-1]])
            self.hist = lib.histc(top_experts.to(x.dtype), bins=self.num_experts, min=0,
                                  max=self.num_experts - 1)
            token_idx = indices // self.top_k
            permuted = lib.gather(x, 0, token_idx[:, None].expand(-1, x.shape[-1]))
            outs = [expert(chunk) for expert, chunk in
                    zip(self.experts, permuted.split(tokens_per_expert.tolist()))]
            permuted_out = lib.cat(outs) * expert_weights[indices].unsqueeze(-1)
            assert bool((bin_ids[:-1] <= bin_ids[1:]).all())
            if self.mode == "scatter":
                out = lib.zeros_like(x).scatter_add(
                    0, token_idx.unsqueeze(1).expand(-1, x.shape[-1]), permuted_out)
            elif self.mode == "index_add":
                out = x.new_zeros(x.shape)
                out.index_add_(0, token_idx, permuted_out)
            else:  # unpermute with the inverse permutation, then sum each token's k slots
                inverse = lib.empty_like(indices)
                inverse.scatter_(0, indices, lib.arange(indices.numel(), device=x.device))
                unpermuted = permuted_out.gather(
                    0, inverse.unsqueeze(-1).expand(-1, permuted_out.shape[-1]))
                out = unpermuted.view(-1, self.top_k, shape[-1]).sum(dim=1)
            return out.view(shape), logits

    return SortedMoE


@pytest.mark.parametrize("mode", ["scatter", "index_add", "gather"])
def test_sorted_dispatch_moe_matches_torch(mode):
    def run(lib, steps=3):
        model = weights_of(lib, lambda L: sorted_moe(L)(mode=mode))
        opt = lib.optim.AdamW(model.parameters(), lr=1e-2)
        rng = np.random.default_rng(5)
        rec = {"out": [], "grad": [], "w": [], "offsets": [], "hist": []}
        for _ in range(steps):
            x = lib.tensor(rng.standard_normal((3, 5, 6)), requires_grad=True)
            out, logits = model(x)
            z = lib.logsumexp(logits, dim=-1).pow(2).mean()
            loss = out.pow(2).mean() + 1e-3 * z
            opt.zero_grad()
            loss.backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            rec["out"].append(out)
            rec["grad"].append([grads(model), x.grad])
            rec["offsets"].append(model.offsets)
            rec["hist"].append(model.hist)
            opt.step()
            rec["w"].append(arrays(model.state_dict()))
        return rec

    got = both(run)
    if mode == "scatter":  # the three ways of putting tokens back agree
        for other in ("index_add", "gather"):
            torch_other = weights_of(ng, lambda L: sorted_moe(L)(mode=other))
            x = ng.tensor(np.random.default_rng(5).standard_normal((3, 5, 6)))
            assert_same(got["out"][0], torch_other(x)[0], 1e-12)


# ============================ noisy top-k gating (Shazeer et al. 2017) =======================

def noisy_moe(lib):
    """davidmrau/mixture-of-experts as written; ``randn_like`` noise is passed in."""
    nn = lib.nn
    Normal = lib.distributions.normal.Normal

    class SparseDispatcher:
        def __init__(self, num_experts, gates):
            """Create a SparseDispatcher."""
            self._gates = gates
            self._num_experts = num_experts
            # sort experts
            sorted_experts, index_sorted_experts = lib.nonzero(gates).sort(0)
            # drop indices
            _, self._expert_index = sorted_experts.split(1, dim=1)
            # get according batch index for each expert
            self._batch_index = lib.nonzero(gates)[index_sorted_experts[:, 1], 0]
            # calculate num samples that each expert gets
            self._part_sizes = (gates > 0).sum(0).tolist()
            # expand gates to match with self._batch_index
            gates_exp = gates[self._batch_index.flatten()]
            self._nonzero_gates = lib.gather(gates_exp, 1, self._expert_index)

        def dispatch(self, inp):
            # assigns samples to experts whose gate is nonzero
            # expand according to batch index so we can just split by _part_sizes
            inp_exp = inp[self._batch_index].squeeze(1)
            return lib.split(inp_exp, self._part_sizes, dim=0)

        def combine(self, expert_out, multiply_by_gates=True):
            # apply exp to expert outputs, so we are not longer in log space
            stitched = lib.cat(expert_out, 0)
            if multiply_by_gates:
                stitched = stitched.mul(self._nonzero_gates)
            zeros = lib.zeros(self._gates.size(0), expert_out[-1].size(1), requires_grad=True,
                              device=stitched.device)
            # combine samples that have been processed by the same k experts
            combined = zeros.index_add(0, self._batch_index, stitched.double())  # .float()
            return combined

        def expert_to_gates(self):
            # split nonzero gates for each expert
            return lib.split(self._nonzero_gates, self._part_sizes, dim=0)

    class MLP(nn.Module):
        def __init__(self, input_size, output_size, hidden_size):
            super().__init__()
            self.fc1 = nn.Linear(input_size, hidden_size)
            self.fc2 = nn.Linear(hidden_size, output_size)
            self.relu = nn.ReLU()
            self.soft = nn.Softmax(1)

        def forward(self, x):
            out = self.fc1(x)
            out = self.relu(out)
            out = self.fc2(out)
            out = self.soft(out)
            return out

    class MoE(nn.Module):
        def __init__(self, input_size, output_size, num_experts, hidden_size,
                     noisy_gating=True, k=4):
            super().__init__()
            self.noisy_gating = noisy_gating
            self.num_experts = num_experts
            self.output_size = output_size
            self.input_size = input_size
            self.hidden_size = hidden_size
            self.k = k
            # instantiate experts
            self.experts = nn.ModuleList([MLP(self.input_size, self.output_size,
                                              self.hidden_size) for i in range(self.num_experts)])
            self.w_gate = nn.Parameter(lib.zeros(input_size, num_experts), requires_grad=True)
            self.w_noise = nn.Parameter(lib.zeros(input_size, num_experts), requires_grad=True)
            self.softplus = nn.Softplus()
            self.softmax = nn.Softmax(1)
            self.register_buffer("mean", lib.tensor([0.0]))
            self.register_buffer("std", lib.tensor([1.0]))
            assert self.k <= self.num_experts

        def cv_squared(self, x):
            """The squared coefficient of variation of a sample: a loss that is small for
            a uniform distribution."""
            eps = 1e-10
            # if only num_experts = 1
            if x.shape[0] == 1:
                return lib.tensor([0], device=x.device, dtype=x.dtype)
            return x.double().var() / (x.double().mean()**2 + eps)  # .float() originally

        def _gates_to_load(self, gates):
            return (gates > 0).sum(0)

        def _prob_in_top_k(self, clean_values, noisy_values, noise_stddev, noisy_top_values):
            batch = clean_values.size(0)
            m = noisy_top_values.size(1)
            top_values_flat = noisy_top_values.flatten()
            threshold_positions_if_in = lib.arange(batch, device=clean_values.device) * m \
                + self.k
            threshold_if_in = lib.unsqueeze(lib.gather(top_values_flat, 0,
                                                       threshold_positions_if_in), 1)
            is_in = lib.gt(noisy_values, threshold_if_in)
            threshold_positions_if_out = threshold_positions_if_in - 1
            threshold_if_out = lib.unsqueeze(lib.gather(top_values_flat, 0,
                                                        threshold_positions_if_out), 1)
            # is each value currently in the top k.
            normal = Normal(self.mean, self.std)
            prob_if_in = normal.cdf((clean_values - threshold_if_in) / noise_stddev)
            prob_if_out = normal.cdf((clean_values - threshold_if_out) / noise_stddev)
            prob = lib.where(is_in, prob_if_in, prob_if_out)
            return prob

        def noisy_top_k_gating(self, x, train, noise, noise_epsilon=1e-2):
            clean_logits = x @ self.w_gate
            if self.noisy_gating and train:
                raw_noise_stddev = x @ self.w_noise
                noise_stddev = ((self.softplus(raw_noise_stddev) + noise_epsilon))  # noqa: UP034
                noisy_logits = clean_logits + (noise * noise_stddev)
                logits = noisy_logits
            else:
                logits = clean_logits
            # calculate topk + 1 that will be needed for the noisy gates
            logits = self.softmax(logits)
            top_logits, top_indices = logits.topk(min(self.k + 1, self.num_experts), dim=1)
            top_k_logits = top_logits[:, :self.k]
            top_k_indices = top_indices[:, :self.k]
            top_k_gates = top_k_logits / (top_k_logits.sum(1, keepdim=True) + 1e-6)
            zeros = lib.zeros_like(logits, requires_grad=True)
            gates = zeros.scatter(1, top_k_indices, top_k_gates)
            if self.noisy_gating and self.k < self.num_experts and train:
                load = (self._prob_in_top_k(clean_logits, noisy_logits, noise_stddev,
                                            top_logits)).sum(0)
            else:
                load = self._gates_to_load(gates)
            return gates, load

        def forward(self, x, noise, loss_coef=1e-2):
            gates, load = self.noisy_top_k_gating(x, self.training, noise)
            # calculate importance loss
            importance = gates.sum(0)
            loss = self.cv_squared(importance) + self.cv_squared(load)
            loss *= loss_coef
            dispatcher = SparseDispatcher(self.num_experts, gates)
            expert_inputs = dispatcher.dispatch(x)
            gates = dispatcher.expert_to_gates()
            expert_outputs = [self.experts[i](expert_inputs[i])
                              for i in range(self.num_experts)]
            y = dispatcher.combine(expert_outputs)
            return y, loss

    return MoE


def train_noisy(lib, steps=4):
    """The repository's example: 10-way classification of random data, Adam; the gates start
    at zero, so the first steps are ties the noise breaks."""
    nn = lib.nn
    model = weights_of(lib, lambda L: noisy_moe(L)(8, 5, 6, 12, noisy_gating=True, k=2))
    with lib.no_grad():  # the gates start at zero in the original; small values break ties
        model.w_gate.copy_(lib.tensor(np.random.default_rng(6).standard_normal((8, 6)) * 0.1))
    loss_fn = nn.CrossEntropyLoss()
    optim = lib.optim.Adam(model.parameters())
    rng = np.random.default_rng(7)
    rec = {"loss": [], "aux": [], "grad": [], "w": []}
    for _ in range(steps):
        x = lib.tensor(rng.standard_normal((12, 8)))
        y = lib.tensor(rng.integers(0, 5, 12))
        noise = lib.tensor(rng.standard_normal((12, 6)))  # randn_like(clean_logits)
        model.train()
        optim.zero_grad()
        y_hat, aux_loss = model(x, noise)
        loss = loss_fn(y_hat, y)
        total_loss = loss + aux_loss
        total_loss.backward()
        rec["grad"].append(grads(model))
        optim.step()
        rec["loss"].append(loss.item())
        rec["aux"].append(aux_loss.item())
        rec["w"].append(arrays(model.state_dict()))
    model.eval()
    with lib.no_grad():  # evaluation: clean gating, the load counted from the gates
        y_hat, aux_loss = model(x, None)
    rec["eval"] = [y_hat, aux_loss]
    return rec


def test_noisy_top_k_gating_matches_torch():
    got = both(train_noisy)
    assert got["aux"][0] > 0


# ============================ linear attention (fast-transformers) ===========================

def linear_attention(lib):
    nn = lib.nn
    F = lib.nn.functional

    def elu_feature_map(x):
        return F.elu(x) + 1

    class LinearAttention(nn.Module):
        """Katharopoulos et al.: softmax replaced by the elu(x)+1 feature map, so attention
        is ``phi(Q) (phi(K)^T V)`` in linear time; keys masked by their lengths."""

        def __init__(self, query_dimensions, eps=1e-6):
            super().__init__()
            self.feature_map = elu_feature_map
            self.eps = eps

        def forward(self, queries, keys, values, key_lengths):
            # Apply the feature map to the queries and keys
            Q = self.feature_map(queries)
            K = self.feature_map(keys)
            # Apply the key padding mask and make sure that the attn_mask is all_ones
            K = K * key_lengths[:, :, None, None]
            # Compute the KV matrix, namely the dot product of keys and values so that we
            # never explicitly compute the attention matrix and thus decrease the complexity
            KV = lib.einsum("nshd,nshm->nhmd", K, values)
            # Compute the normalizer
            Z = 1 / (lib.einsum("nlhd,nhd->nlh", Q, K.sum(dim=1)) + self.eps)
            # Finally compute and return the new values
            V = lib.einsum("nlhd,nhmd,nlh->nlhm", Q, KV, Z)
            return V.contiguous()

    class CausalLinearAttention(nn.Module):
        """The causal version without the CUDA kernel: prefix sums (``cumsum``) of the
        key-value outer products and of the keys."""

        def __init__(self, query_dimensions, eps=1e-6):
            super().__init__()
            self.feature_map = elu_feature_map
            self.eps = eps

        def forward(self, queries, keys, values):
            Q = self.feature_map(queries).permute(0, 2, 1, 3)  # N, H, L, D
            K = self.feature_map(keys).permute(0, 2, 1, 3)
            values = values.permute(0, 2, 1, 3)
            KV = lib.einsum("nhld,nhlm->nhldm", K, values).cumsum(dim=2)
            Z = 1 / (lib.einsum("nhld,nhld->nhl", Q, K.cumsum(2)) + self.eps)
            V = lib.einsum("nhld,nhldm,nhl->nhlm", Q, KV, Z)
            return V.permute(0, 2, 1, 3).contiguous()

    class AttentionLayer(nn.Module):
        def __init__(self, attention, d_model, n_heads):
            super().__init__()
            d_keys = d_model // n_heads
            self.inner_attention = attention
            self.query_projection = nn.Linear(d_model, d_keys * n_heads)
            self.key_projection = nn.Linear(d_model, d_keys * n_heads)
            self.value_projection = nn.Linear(d_model, d_keys * n_heads)
            self.out_projection = nn.Linear(d_keys * n_heads, d_model)
            self.n_heads = n_heads

        def forward(self, queries, keys, values, *lengths):
            N, L, _ = queries.shape
            _, S, _ = keys.shape
            H = self.n_heads
            queries = self.query_projection(queries).view(N, L, H, -1)
            keys = self.key_projection(keys).view(N, S, H, -1)
            values = self.value_projection(values).view(N, S, H, -1)
            new_values = self.inner_attention(queries, keys, values, *lengths).view(N, L, -1)
            return self.out_projection(new_values)

    return LinearAttention, CausalLinearAttention, AttentionLayer


def run_linear_attention(lib):
    LinearAttention, CausalLinearAttention, AttentionLayer = linear_attention(lib)
    rng = np.random.default_rng(8)
    x = lib.tensor(rng.standard_normal((2, 7, 8)), requires_grad=True)
    lengths = lib.tensor([7, 4])
    key_mask = (lib.arange(7)[None, :] < lengths[:, None]).to(x.dtype)
    rec = {}
    for name, inner, extra in [("full", LinearAttention(4), (key_mask,)),
                               ("causal", CausalLinearAttention(4), ())]:
        layer = weights_of(lib, lambda L, inner=name: linear_attention(L)[2](
            linear_attention(L)[0 if inner == "full" else 1](4), 8, 2))
        out = layer(x, x, x, *extra)
        loss = out.pow(2).sum()
        x.grad = None
        loss.backward()
        rec[name] = [out, x.grad, grads(layer)]
        del inner
    # causal linear attention equals its quadratic form: row-normalised phi(Q) phi(K)^T,
    # lower triangle
    layer = CausalLinearAttention(4)
    q, k, v = (lib.tensor(rng.standard_normal((1, 5, 2, 3))) for _ in range(3))
    phi_q, phi_k = (lib.nn.functional.elu(t) + 1 for t in (q, k))
    A = lib.einsum("nlhd,nshd->nhls", phi_q, phi_k).tril()
    A = A / (A.sum(-1, keepdim=True) + layer.eps)
    rec["quadratic"] = [layer(q, k, v), lib.einsum("nhls,nshm->nlhm", A, v)]
    return rec


def test_linear_attention_matches_torch():
    got = both(run_linear_attention)
    assert_same(got["quadratic"][0], got["quadratic"][1], 1e-6)


# ============================ Performer FAVOR+ (performer-pytorch) ===========================

def performer(lib):
    def orthogonal_matrix_chunk(cols, randn):
        unstructured_block = randn((cols, cols))
        q, r = lib.linalg.qr(unstructured_block.cpu(), mode="reduced")
        q, r = map(lambda t: t.to(unstructured_block.device), (q, r))
        return q.t()

    def gaussian_orthogonal_random_matrix(nb_rows, nb_columns, randn, scaling=0):
        nb_full_blocks = int(nb_rows / nb_columns)
        block_list = []
        for _ in range(nb_full_blocks):
            q = orthogonal_matrix_chunk(nb_columns, randn)
            block_list.append(q)
        remaining_rows = nb_rows - nb_full_blocks * nb_columns
        if remaining_rows > 0:
            q = orthogonal_matrix_chunk(nb_columns, randn)
            block_list.append(q[:remaining_rows])
        final_matrix = lib.cat(block_list)
        if scaling == 0:
            multiplier = randn((nb_rows, nb_columns)).norm(dim=1)
        elif scaling == 1:
            multiplier = math.sqrt((float(nb_columns)))  # noqa: UP034 * lib.ones((nb_rows,))
        else:
            raise ValueError(f"Invalid scaling {scaling}")
        return lib.diag(multiplier) @ final_matrix

    def softmax_kernel(data, *, projection_matrix, is_query, normalize_data=True, eps=1e-4):
        b, h, *_ = data.shape
        data_normalizer = (data.shape[-1] ** -0.25) if normalize_data else 1.
        ratio = (projection_matrix.shape[0] ** -0.5)
        # repeat(projection_matrix, 'j d -> b h j d', b = b, h = h)
        projection = projection_matrix.expand(b, h, *projection_matrix.shape)
        projection = projection.type_as(data)
        data_dash = lib.einsum("...id,...jd->...ij", (data_normalizer * data), projection)
        diag_data = data ** 2
        diag_data = lib.sum(diag_data, dim=-1)
        diag_data = (diag_data / 2.0) * (data_normalizer ** 2)
        diag_data = diag_data.unsqueeze(dim=-1)
        if is_query:
            data_dash = ratio * (
                lib.exp(data_dash - diag_data
                        - lib.amax(data_dash, dim=-1, keepdim=True).detach()) + eps)
        else:
            data_dash = ratio * (
                lib.exp(data_dash - diag_data
                        - lib.amax(data_dash, dim=(-1, -2), keepdim=True).detach()) + eps)
        return data_dash.type_as(data)

    def linear_attention(q, k, v):
        k_cumsum = k.sum(dim=-2)
        D_inv = 1. / lib.einsum("...nd,...d->...n", q, k_cumsum.type_as(q))
        context = lib.einsum("...nd,...ne->...de", k, v)
        out = lib.einsum("...de,...nd,...n->...ne", context, q, D_inv)
        return out

    def causal_linear_attention_noncuda(q, k, v, chunk_size=128, eps=1e-6):
        last_k_cumsum = 0
        last_ctx_cumsum = 0
        outs = []
        for q, k, v in zip(  # noqa: B020
                *map(lambda t: t.chunk(chunk_size, dim=-2), (q, k, v))):
            k_cumsum = last_k_cumsum + k.cumsum(dim=-2)
            D_inv = 1. / lib.einsum("...nd,...nd->...n", q, k_cumsum.type_as(q) + eps)
            context = lib.einsum("...nd,...ne->...nde", k, v)
            context_cumsum = last_ctx_cumsum + context.cumsum(dim=-3)
            out = lib.einsum("...nde,...nd,...n->...ne", context_cumsum, q, D_inv)
            last_k_cumsum = k_cumsum[:, :, -1:]
            last_ctx_cumsum = context_cumsum[:, :, -1:]
            outs.append(out)
        return lib.cat(outs, dim=-2)

    return gaussian_orthogonal_random_matrix, softmax_kernel, linear_attention, \
        causal_linear_attention_noncuda


def run_performer(lib):
    gorm, softmax_kernel, lin_attn, causal_attn = performer(lib)
    rng = np.random.default_rng(9)
    blocks = iter(rng.standard_normal((8, 4, 4)))  # the torch.randn draws, in order
    draws = {"n": 0}

    def randn(shape):
        draws["n"] += 1
        if shape == (4, 4):
            return lib.tensor(next(blocks))
        return lib.tensor(rng.standard_normal(shape))

    proj = gorm(10, 4, randn)  # two full orthogonal blocks and half of a third
    q, k, v = (lib.tensor(rng.standard_normal((2, 2, 6, 4)), requires_grad=True)
               for _ in range(3))
    qp = softmax_kernel(q, projection_matrix=proj, is_query=True)
    kp = softmax_kernel(k, projection_matrix=proj, is_query=False)
    out = lin_attn(qp, kp, v)
    causal = causal_attn(qp, kp, v, chunk_size=3)
    (out.sum() + (causal * causal).sum()).backward()
    # the softmax kernel estimates exp(q.k / sqrt(d)) up to the stabilising shifts
    return {"proj": proj, "out": out, "causal": causal, "grads": [q.grad, k.grad, v.grad],
            "orth": proj[:4] @ proj[:4].t() / (proj[:4].norm(dim=1)[:, None]
                                                * proj[:4].norm(dim=1)[None, :])}


def test_performer_favor_plus_matches_torch():
    got = both(run_performer)
    assert_same(got["orth"], np.eye(4), 1e-12)  # the QR blocks are orthogonal


# ============================ Reformer LSH attention (reformer-pytorch) =======================

TOKEN_SELF_ATTN_VALUE = -5e4


def reformer(lib):
    nn = lib.nn
    F = lib.nn.functional

    def sort_key_val(t1, t2, dim=-1):
        values, indices = t1.sort(dim=dim)
        t2 = t2.expand_as(t1)
        return values, t2.gather(dim, indices)

    def batched_index_select(values, indices):
        last_dim = values.shape[-1]
        return values.gather(1, indices[:, :, None].expand(-1, -1, last_dim))

    def max_neg_value(tensor):
        return -lib.finfo(tensor.dtype).max

    class LSHAttention(nn.Module):
        """Shared-QK attention inside hash buckets: random rotations hash the vectors,
        ``sort`` groups each bucket, chunks attend to themselves and one chunk back, and
        the rounds are combined by their log-sum-exp weights. The rotations are passed in
        (``torch.randn`` in the original)."""

        def __init__(self, bucket_size=4, n_hashes=2, causal=False):
            super().__init__()
            self.bucket_size = bucket_size
            self.n_hashes = n_hashes
            self.causal = causal
            self.dropout = nn.Dropout(0.0)
            self.dropout_for_hash = nn.Dropout(0.0)
            self._attend_across_buckets = False

        def hash_vectors(self, n_buckets, vecs, random_rotations):
            batch_size = vecs.shape[0]
            device = vecs.device
            # See https://arxiv.org/pdf/1509.02897.pdf
            # We sample a different random rotation for each round of hashing to
            # decrease the probability of hash misses.
            assert n_buckets % 2 == 0
            random_rotations = random_rotations.expand(batch_size, -1, -1, -1)
            dropped_vecs = self.dropout_for_hash(vecs)
            rotated_vecs = lib.einsum("btf,bfhi->bhti", dropped_vecs, random_rotations)
            rotated_vecs = lib.cat([rotated_vecs, -rotated_vecs], dim=-1)
            buckets = lib.argmax(rotated_vecs, dim=-1)
            # buckets is now (self.n_hashes, seq_len). Next we add offsets so that
            # bucket numbers from different hashing rounds don't overlap.
            offsets = lib.arange(self.n_hashes, device=device)
            offsets = lib.reshape(offsets * n_buckets, (1, -1, 1))
            buckets = lib.reshape(buckets + offsets, (batch_size, -1,))
            return buckets

        def forward(self, qk, v, random_rotations):
            batch_size, seqlen, dim, device = *qk.shape, qk.device
            n_buckets = seqlen // self.bucket_size
            buckets = self.hash_vectors(n_buckets, qk, random_rotations)
            # We use the same vector as both a query and a key.
            assert int(buckets.shape[1]) == self.n_hashes * seqlen
            total_hashes = self.n_hashes
            ticker = lib.arange(total_hashes * seqlen, device=device).unsqueeze(0).expand_as(
                buckets)
            buckets_and_t = seqlen * buckets + (ticker % seqlen)
            buckets_and_t = buckets_and_t.detach()
            # Hash-based sort ("s" at the start of variable names means "sorted")
            sbuckets_and_t, sticker = sort_key_val(buckets_and_t, ticker, dim=-1)
            _, undo_sort = sticker.sort(dim=-1)
            del ticker
            sbuckets_and_t = sbuckets_and_t.detach()
            sticker = sticker.detach()
            undo_sort = undo_sort.detach()
            st = (sticker % seqlen)
            sqk = batched_index_select(qk, st)
            sv = batched_index_select(v, st)
            # Split off a "bin" axis so that attention only occurs within chunks.
            chunk_size = total_hashes * n_buckets
            bq_t = bkv_t = lib.reshape(st, (batch_size, chunk_size, -1))
            bqk = lib.reshape(sqk, (batch_size, chunk_size, -1, dim))
            bv = lib.reshape(sv, (batch_size, chunk_size, -1, dim))
            # Hashing operates on unit-length vectors. Unnormalized query vectors are fine
            # because they effectively provide a learnable temperature for the attention
            # softmax, but normalizing keys is needed so that similarity-based bucket
            # comparisons can be done.
            bq = bqk
            bk = F.normalize(bqk, p=2, dim=-1).type_as(bq)

            # Allow each chunk to attend within itself, and also one chunk back. Chunk
            # boundaries might occur in the middle of a sequence of items from the same
            # bucket, so this increases the chances of attending to relevant items.
            def look_one_back(x):
                x_extra = lib.cat([x[:, -1:, ...], x[:, :-1, ...]], dim=1)
                return lib.cat([x, x_extra], dim=2)

            bk = look_one_back(bk)
            bv = look_one_back(bv)
            bkv_t = look_one_back(bkv_t)
            # Dot-product attention.
            dots = lib.einsum("bhie,bhje->bhij", bq, bk) * (dim ** -0.5)
            masked_value = max_neg_value(dots)
            # Causal masking
            if self.causal:
                mask = bq_t[:, :, :, None] < bkv_t[:, :, None, :]
                dots.masked_fill_(mask, masked_value)
                del mask
            # Mask out attention to self except when no other targets are available.
            self_mask = bq_t[:, :, :, None] == bkv_t[:, :, None, :]
            dots.masked_fill_(self_mask, TOKEN_SELF_ATTN_VALUE)
            del self_mask
            # Mask out attention to other hash buckets.
            if not self._attend_across_buckets:
                bq_buckets = bkv_buckets = lib.reshape(sbuckets_and_t // seqlen,
                                                       (batch_size, chunk_size, -1))
                bkv_buckets = look_one_back(bkv_buckets)
                bucket_mask = bq_buckets[:, :, :, None] != bkv_buckets[:, :, None, :]
                dots.masked_fill_(bucket_mask, masked_value)
                del bucket_mask
            # Softmax.
            dots_logsumexp = lib.logsumexp(dots, dim=-1, keepdim=True)
            dots = lib.exp(dots - dots_logsumexp).type_as(dots)
            dropped_dots = self.dropout(dots)
            bo = lib.einsum("buij,buje->buie", dropped_dots, bv)
            so = lib.reshape(bo, (batch_size, -1, dim))
            slogits = lib.reshape(dots_logsumexp, (batch_size, -1,))
            # unsort logits
            o = batched_index_select(so, undo_sort)
            logits = slogits.gather(1, undo_sort)
            o = lib.reshape(o, (batch_size, total_hashes, seqlen, dim))
            logits = lib.reshape(logits, (batch_size, total_hashes, seqlen, 1))
            probs = lib.exp(logits - lib.logsumexp(logits, dim=1, keepdim=True))
            out = lib.sum(o * probs, dim=1)
            return out, buckets

    return LSHAttention


@pytest.mark.parametrize("causal", [False, True])
def test_reformer_lsh_attention_matches_torch(causal):
    rng = np.random.default_rng(10)
    QK, VV = rng.standard_normal((2, 16, 4)), rng.standard_normal((2, 16, 4))
    R = rng.standard_normal((1, 4, 2, 2))  # (1, dim, n_hashes, n_buckets // 2)

    def run(lib):
        attn = reformer(lib)(bucket_size=4, n_hashes=2, causal=causal)
        qk = lib.tensor(QK, requires_grad=True)
        v = lib.tensor(VV, requires_grad=True)
        out, buckets = attn(qk, v, lib.tensor(R))
        (out * lib.tensor(VV)).sum().backward()
        return {"out": out, "buckets": buckets, "grads": [qk.grad, v.grad]}

    both(run)


# ============================ Longformer sliding chunks (Hugging Face) =======================

def longformer(lib):
    nn = lib.nn

    def _pad_and_transpose_last_two_dims(hidden_states_padded, padding):
        """pads rows and then flips rows and columns"""
        hidden_states_padded = nn.functional.pad(
            hidden_states_padded, padding
        )  # padding value is not important because it will be overwritten
        hidden_states_padded = hidden_states_padded.view(
            *hidden_states_padded.size()[:-2], hidden_states_padded.size(-1),
            hidden_states_padded.size(-2))
        return hidden_states_padded

    def _pad_and_diagonalize(chunked_hidden_states):
        """shift every row 1 step right, converting columns into diagonals."""
        total_num_heads, num_chunks, window_overlap, hidden_dim = chunked_hidden_states.size()
        chunked_hidden_states = nn.functional.pad(
            chunked_hidden_states, (0, window_overlap + 1)
        )  # total_num_heads x num_chunks x window_overlap x (hidden_dim+window_overlap+1).
        chunked_hidden_states = chunked_hidden_states.view(
            total_num_heads, num_chunks, -1
        )  # total_num_heads x num_chunks x window_overlap*window_overlap+window_overlap
        chunked_hidden_states = chunked_hidden_states[
            :, :, :-window_overlap
        ]  # total_num_heads x num_chunks x window_overlap*window_overlap
        chunked_hidden_states = chunked_hidden_states.view(
            total_num_heads, num_chunks, window_overlap, window_overlap + hidden_dim
        )
        chunked_hidden_states = chunked_hidden_states[:, :, :, :-1]
        return chunked_hidden_states

    def _chunk(hidden_states, window_overlap):
        """convert into overlapping chunks. Chunk size = 2w, overlap size = w"""
        # non-overlapping chunks of size = 2w
        hidden_states = hidden_states.view(
            hidden_states.size(0),
            lib.div(hidden_states.size(1), (window_overlap * 2), rounding_mode="trunc"),
            window_overlap * 2,
            hidden_states.size(2),
        )
        # use `as_strided` to make the chunks overlap with an overlap size = window_overlap
        chunk_size = list(hidden_states.size())
        chunk_size[1] = chunk_size[1] * 2 - 1
        chunk_stride = list(hidden_states.stride())
        chunk_stride[1] = chunk_stride[1] // 2
        return hidden_states.as_strided(size=chunk_size, stride=chunk_stride)

    def _mask_invalid_locations(input_tensor, affected_seq_len):
        beginning_mask_2d = input_tensor.new_ones(affected_seq_len,
                                                  affected_seq_len + 1).tril().flip(dims=[0])
        beginning_mask = beginning_mask_2d[None, :, None, :]
        ending_mask = beginning_mask.flip(dims=(1, 3))
        beginning_input = input_tensor[:, :affected_seq_len, :, : affected_seq_len + 1]
        beginning_mask = beginning_mask.expand(beginning_input.size())
        input_tensor[:, :affected_seq_len, :, : affected_seq_len + 1] = lib.full_like(
            beginning_input, -float("inf")
        ).where(beginning_mask.bool(), beginning_input)
        ending_input = input_tensor[:, -affected_seq_len:, :, -(affected_seq_len + 1):]
        ending_mask = ending_mask.expand(ending_input.size())
        input_tensor[:, -affected_seq_len:, :, -(affected_seq_len + 1):] = lib.full_like(
            ending_input, -float("inf")
        ).where(ending_mask.bool(), ending_input)

    def _sliding_chunks_query_key_matmul(query, key, window_overlap):
        """Matrix multiplication of query and key tensors using with a sliding window
        attention pattern."""
        batch_size, seq_len, num_heads, head_dim = query.size()
        assert (
            seq_len % (window_overlap * 2) == 0
        ), f"Sequence length should be multiple of {window_overlap * 2}. Given {seq_len}"
        assert query.size() == key.size()
        chunks_count = lib.div(seq_len, window_overlap, rounding_mode="trunc") - 1
        # group batch_size and num_heads dimensions into one, then chunk seq_len into chunks
        # of size window_overlap * 2
        query = query.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        key = key.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        query = _chunk(query, window_overlap)
        key = _chunk(key, window_overlap)
        # matrix multiplication
        # bcxd: batch_size * num_heads x chunks x 2window_overlap x head_dim
        # bcyd: batch_size * num_heads x chunks x 2window_overlap x head_dim
        # bcxy: batch_size * num_heads x chunks x 2window_overlap x 2window_overlap
        diagonal_chunked_attention_scores = lib.einsum("bcxd,bcyd->bcxy", (query, key))
        # convert diagonals into columns
        diagonal_chunked_attention_scores = _pad_and_transpose_last_two_dims(
            diagonal_chunked_attention_scores, padding=(0, 0, 0, 1))
        # allocate space for the overall attention matrix where the chunks are combined.
        diagonal_attention_scores = diagonal_chunked_attention_scores.new_zeros(
            (batch_size * num_heads, chunks_count + 1, window_overlap, window_overlap * 2 + 1))
        # copy parts from diagonal_chunked_attention_scores into the combined matrix of
        # attentions - copying the main diagonal and the upper triangle
        diagonal_attention_scores[:, :-1, :, window_overlap:] = \
            diagonal_chunked_attention_scores[:, :, :window_overlap, : window_overlap + 1]
        diagonal_attention_scores[:, -1, :, window_overlap:] = \
            diagonal_chunked_attention_scores[:, -1, window_overlap:, : window_overlap + 1]
        # - copying the lower triangle
        diagonal_attention_scores[:, 1:, :, :window_overlap] = \
            diagonal_chunked_attention_scores[:, :, -(window_overlap + 1): -1,
                                              window_overlap + 1:]
        diagonal_attention_scores[:, 0, 1:window_overlap, 1:window_overlap] = \
            diagonal_chunked_attention_scores[:, 0, : window_overlap - 1, 1 - window_overlap:]
        # separate batch_size and num_heads dimensions again
        diagonal_attention_scores = diagonal_attention_scores.view(
            batch_size, num_heads, seq_len, 2 * window_overlap + 1).transpose(2, 1)
        _mask_invalid_locations(diagonal_attention_scores, window_overlap)
        return diagonal_attention_scores

    def _sliding_chunks_matmul_attn_probs_value(attn_probs, value, window_overlap):
        """Same as _sliding_chunks_query_key_matmul but for attn_probs and value tensors."""
        batch_size, seq_len, num_heads, head_dim = value.size()
        assert seq_len % (window_overlap * 2) == 0
        assert attn_probs.size()[:3] == value.size()[:3]
        assert attn_probs.size(3) == 2 * window_overlap + 1
        chunks_count = lib.div(seq_len, window_overlap, rounding_mode="trunc") - 1
        # group batch_size and num_heads dimensions into one, then chunk seq_len into chunks
        # of size 2 window overlap
        chunked_attn_probs = attn_probs.transpose(1, 2).reshape(
            batch_size * num_heads,
            lib.div(seq_len, window_overlap, rounding_mode="trunc"),
            window_overlap,
            2 * window_overlap + 1,
        )
        # group batch_size and num_heads dimensions into one
        value = value.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
        # pad seq_len with w at the beginning of the sequence and another window overlap at
        # the end
        padded_value = nn.functional.pad(value, (0, 0, window_overlap, window_overlap),
                                         value=-1)
        # chunk padded_value into chunks of size 3 window overlap and an overlap of size
        # window overlap
        chunked_value_size = (batch_size * num_heads, chunks_count + 1, 3 * window_overlap,
                              head_dim)
        chunked_value_stride = padded_value.stride()
        chunked_value_stride = (
            chunked_value_stride[0],
            window_overlap * chunked_value_stride[1],
            chunked_value_stride[1],
            chunked_value_stride[2],
        )
        chunked_value = padded_value.as_strided(size=chunked_value_size,
                                                stride=chunked_value_stride)
        chunked_attn_probs = _pad_and_diagonalize(chunked_attn_probs)
        context = lib.einsum("bcwd,bcdh->bcwh", (chunked_attn_probs, chunked_value))
        return context.view(batch_size, num_heads, seq_len, head_dim).transpose(1, 2)

    def sliding_window_attention(query, key, value, window_overlap):
        """Local attention of every token to ``window_overlap`` tokens either side."""
        query = query / math.sqrt(query.size(-1))
        scores = _sliding_chunks_query_key_matmul(query, key, window_overlap)
        attn_probs = nn.functional.softmax(scores, dim=-1, dtype=lib.float64)
        return _sliding_chunks_matmul_attn_probs_value(attn_probs.type_as(value), value,
                                                       window_overlap)

    return sliding_window_attention


def band_attention(lib, query, key, value, w):
    """The same attention with a dense band mask built from ``ones(...).triu/tril``."""
    L = query.size(1)
    band = lib.ones(L, L, dtype=lib.bool).triu(-w).tril(w)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~band, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_longformer_sliding_chunks_match_torch_and_the_band_mask():
    rng = np.random.default_rng(11)
    data = [rng.standard_normal((2, 8, 2, 3)) for _ in range(3)]

    def run(lib):
        q, k, v = (lib.tensor(d, requires_grad=True) for d in data)
        out = longformer(lib)(q, k, v, 2)
        (out * out).sum().backward()
        grads_ = [t.grad for t in (q, k, v)]
        q2, k2, v2 = (lib.tensor(d, requires_grad=True) for d in data)
        dense = band_attention(lib, q2, k2, v2, 2)
        (dense * dense).sum().backward()
        return {"out": out, "grads": grads_, "dense": dense,
                "dense_grads": [t.grad for t in (q2, k2, v2)]}

    got = both(run)
    assert_same(got["out"], got["dense"], 1e-12)
    assert_same(got["grads"], got["dense_grads"], 1e-12)


# ============================ ALiBi (Press et al.; BLOOM) ====================================

def get_slopes(n):
    """The attention heads' slopes of the ALiBi paper's code (powers of two, and the
    interleaved slopes of the next power of two for other head counts)."""
    def get_slopes_power_of_2(n):
        start = (2**(-2**-(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    else:
        closest_power_of_2 = 2**math.floor(math.log2(n))
        return get_slopes_power_of_2(closest_power_of_2) + \
            get_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2]


def alibi_fairseq(lib, attn_heads, maxpos, batch):
    """The fairseq decoder's ALiBi future mask: ``-inf`` above the diagonal plus
    slope * position (identical rows: softmax is shift invariant)."""
    slopes = lib.Tensor(get_slopes(attn_heads))
    # In the next line, the part after the * is what constructs the diagonal matrix (right
    # matrix in Figure 3 in the paper).
    alibi = slopes.unsqueeze(1).unsqueeze(1) * lib.arange(maxpos).unsqueeze(0).unsqueeze(
        0).expand(attn_heads, -1, -1)
    alibi = alibi.view(attn_heads, 1, maxpos)
    alibi = alibi.repeat(batch, 1, 1)  # batch_size, 1, 1
    future_mask = lib.triu(
        lib.zeros([maxpos, maxpos]).float().fill_(float("-inf")).type_as(alibi), 1)
    future_mask = future_mask.unsqueeze(0) + alibi
    return future_mask


def build_alibi_tensor(lib, attention_mask, num_heads, dtype):
    """BLOOM's: float32 slopes as powers of an int32 range, positions from the cumsum of the
    attention mask (left padding), shape (batch * heads, 1, seq)."""
    torch = lib
    batch_size, seq_length = attention_mask.shape
    closest_power_of_2 = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest_power_of_2) - 3))),
                        device=attention_mask.device, dtype=torch.float32)
    powers = torch.arange(1, 1 + closest_power_of_2, device=attention_mask.device,
                          dtype=torch.int32)
    slopes = torch.pow(base, powers)
    if closest_power_of_2 != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest_power_of_2) - 3))),
                                  device=attention_mask.device, dtype=torch.float32)
        num_remaining_heads = min(closest_power_of_2, num_heads - closest_power_of_2)
        extra_powers = torch.arange(1, 1 + 2 * num_remaining_heads, 2,
                                    device=attention_mask.device, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
    # Note: alibi will added to the attention bias that will be applied to the query, key
    # product of attention => therefore alibi will have to be of shape
    # (batch_size, num_heads, query_length, key_length)
    arange_tensor = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
    alibi = slopes[..., None] * arange_tensor
    return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)


def bloom_attention_scores(lib, query_layer, key_layer, alibi, head_dim, attention_mask):
    """BLOOM's ``alibi.baddbmm(q, k^T, beta, alpha)``, the boolean causal-and-padding mask
    filled with the dtype's minimum, softmax in float32."""
    batch_size_x_heads, q_length, _ = query_layer.shape
    inv_norm_factor = 1.0 / math.sqrt(head_dim)
    beta = 1.0
    matmul_result = alibi.baddbmm(batch1=query_layer, batch2=key_layer.transpose(1, 2),
                                  beta=beta, alpha=inv_norm_factor)
    attention_scores = matmul_result.view(-1, 2, q_length, q_length)
    causal = lib.ones(q_length, q_length, dtype=lib.bool).triu(1)
    mask = causal[None, None] | ~attention_mask.bool()[:, None, None, :]
    attn_weights = lib.masked_fill(attention_scores, mask,
                                   lib.finfo(attention_scores.dtype).min)
    attention_probs = lib.nn.functional.softmax(attn_weights, dim=-1, dtype=lib.float32)
    return attention_probs


@pytest.mark.parametrize("heads", [4, 6, 12])
def test_alibi_slopes_and_masks_match_torch(heads):
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    rng = np.random.default_rng(12)
    q, k = rng.standard_normal((2, 2 * 2, 5, 3)), rng.standard_normal((2, 2 * 2, 5, 3))

    def run(lib):
        rec = {"fairseq": alibi_fairseq(lib, heads, 5, 2),
               "bloom": build_alibi_tensor(lib, lib.tensor(mask), heads, lib.float64)}
        alibi = build_alibi_tensor(lib, lib.tensor(mask), 2, lib.float32)
        ql = lib.tensor(q[0], dtype=lib.float32, requires_grad=True)
        kl = lib.tensor(k[0], dtype=lib.float32)
        probs = bloom_attention_scores(lib, ql, kl, alibi, 3, lib.tensor(mask))
        (probs * lib.arange(5.0, dtype=lib.float32)).sum().backward()
        rec["probs"], rec["q_grad"] = probs, ql.grad
        return rec

    got = both(run, tol=1e-6)
    slopes = get_slopes(heads)
    fairseq = arr(got["fairseq"])
    assert_same(fairseq[1, 1:, 1], np.full(4, slopes[1]), 1e-7)
    assert np.isneginf(fairseq[0]).sum() == 10  # the future masked


# ============================ scaled_dot_product_attention ===================================

def repeat_kv(hidden_states, n_rep):
    """Hugging Face's: (batch, num_key_value_heads, seqlen, head_dim) to (batch,
    num_attention_heads, seqlen, head_dim), the same as ``repeat_interleave(n_rep, dim=1)``."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep,
                                                           slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def manual_attention(lib, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                     scale=None, enable_gqa=False):
    """PyTorch's documented reference implementation of ``scaled_dot_product_attention``."""
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    attn_bias = lib.zeros(L, S, dtype=query.dtype, device=query.device)
    if is_causal:
        assert attn_mask is None
        temp_mask = lib.ones(L, S, dtype=lib.bool).tril(diagonal=0)
        attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
        attn_bias.to(query.dtype)
    if attn_mask is not None:
        if attn_mask.dtype == lib.bool:
            attn_bias = attn_bias.masked_fill(attn_mask.logical_not(), float("-inf"))
        else:
            attn_bias = attn_mask + attn_bias
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight += attn_bias
    attn_weight = lib.softmax(attn_weight, dim=-1)
    attn_weight = lib.dropout(attn_weight, dropout_p, train=True)
    return attn_weight @ value


SDPA_CASES = {
    "plain": {},
    "bool_mask": {"mask": "bool"},
    "bool_mask_batched": {"mask": "bool4"},
    "float_mask": {"mask": "float"},
    "causal": {"is_causal": True},
    "causal_rectangular": {"is_causal": True, "S": 7},
    "scale": {"scale": 0.3, "mask": "float"},
    "gqa": {"enable_gqa": True, "is_causal": True},
    "gqa_mask": {"enable_gqa": True, "mask": "bool"},
}


@pytest.mark.parametrize("case", list(SDPA_CASES))
def test_sdpa_variants_match_torch_and_the_reference_formula(case):
    kw = dict(SDPA_CASES[case])
    mask_kind, S = kw.pop("mask", None), kw.pop("S", 5)
    Hkv = 2 if kw.get("enable_gqa") else 4
    rng = np.random.default_rng(13)
    q = rng.standard_normal((2, 4, 5, 3))
    k, v = rng.standard_normal((2, Hkv, S, 3)), rng.standard_normal((2, Hkv, S, 3))
    band = np.triu(np.tril(np.ones((5, S), bool), 1), -2)
    pad = np.ones((2, 1, 5, S), bool)
    pad[0, :, :, -1] = False
    masks = {"bool": band, "bool4": band & pad, "float": np.where(band, 0.1, -1e9) + 0.2 * q[
        0, 0, :, :1]}

    def run(lib):
        F = lib.nn.functional
        rec = {}
        for name, f in [("sdpa", F.scaled_dot_product_attention),
                        ("manual", lambda *a, **k: manual_attention(lib, *a, **k))]:
            qt, kt, vt = (lib.tensor(a, requires_grad=True) for a in (q, k, v))
            extra = {} if mask_kind is None else {"attn_mask": lib.tensor(masks[mask_kind])}
            out = f(qt, kt, vt, dropout_p=0.0, **extra, **kw)
            (out * lib.tensor(q)).sum().backward()
            rec[name] = [out, qt.grad, kt.grad, vt.grad]
        if kw.get("enable_gqa"):  # HF's repeat_kv spelling of the same
            qt, kt, vt = (lib.tensor(a) for a in (q, k, v))
            extra = {} if mask_kind is None else {"attn_mask": lib.tensor(masks[mask_kind])}
            rec["repeat_kv"] = F.scaled_dot_product_attention(
                qt, repeat_kv(kt, 2), repeat_kv(vt, 2), is_causal=kw.get("is_causal", False),
                **extra)
        return rec

    got = both(run)
    assert_same(got["sdpa"], got["manual"], 1e-12)
    if "repeat_kv" in got:
        assert_same(got["repeat_kv"], got["sdpa"][0], 1e-12)


# ============================ a tiny MoE transformer trained with AdamW ======================

def moe_transformer(lib, vocab=11, dim=16, n_heads=4, n_kv_heads=2, num_experts=4, top_k=2):
    """A pre-norm decoder block (GQA attention through SDPA, a top-2 MoE feed-forward with
    batched ``topk``/``one_hot``/``where``/``index_add_`` dispatch) between an embedding and
    a tied head, as nanoGPT-style MoE forks write it."""
    nn = lib.nn
    F = lib.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.head_dim = dim // n_heads
            self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
            self.wkv = nn.Linear(dim, 2 * n_kv_heads * self.head_dim, bias=False)
            self.wo = nn.Linear(dim, dim, bias=False)

        def forward(self, x):
            B, T, C = x.size()
            q = self.wq(x).view(B, T, n_heads, self.head_dim).transpose(1, 2)
            k, v = self.wkv(x).split(n_kv_heads * self.head_dim, dim=2)
            k = k.view(B, T, n_kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(B, T, n_kv_heads, self.head_dim).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0,
                                               is_causal=True, enable_gqa=True)
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.wo(y)

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(dim, num_experts, bias=False)
            self.experts = nn.ModuleList([
                nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"),
                              nn.Linear(2 * dim, dim)) for _ in range(num_experts)])

        def forward(self, x):
            B, T, C = x.shape
            x = x.view(-1, C)
            logits = self.gate(x)
            self.logits = logits
            weights, selected = lib.topk(logits, top_k, dim=-1)
            weights = F.softmax(weights, dim=-1)
            out = lib.zeros_like(x)
            expert_mask = F.one_hot(selected, num_classes=num_experts).permute(2, 1, 0)
            for i, expert in enumerate(self.experts):
                idx, top_x = lib.where(expert_mask[i])
                if top_x.numel() == 0:
                    continue
                out.index_add_(0, top_x, expert(x[top_x]) * weights[top_x, idx, None])
            return out.view(B, T, C)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.RMSNorm(dim, eps=1e-6)
            self.attn = Attention()
            self.ln_2 = nn.RMSNorm(dim, eps=1e-6)
            self.moe = MoE()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.moe(self.ln_2(x))
            return x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.ln_f = nn.LayerNorm(dim, bias=False)
            self.lm_head = nn.Linear(dim, vocab, bias=False)
            self.wte.weight = self.lm_head.weight  # weight tying

        def forward(self, idx, targets=None):
            x = self.wte(idx)
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                       ignore_index=-1)
            return logits, loss

    return Model


def aux_losses(lib, router_logits, num_experts=4, top_k=2):
    """Switch's load-balancing loss over the top-k assignments and ST-MoE's z-loss."""
    F = lib.nn.functional
    probs = F.softmax(router_logits, dim=-1)
    _, selected = lib.topk(probs, top_k, dim=-1)
    mask = F.one_hot(selected, num_experts).sum(dim=1).to(probs.dtype)
    balance = num_experts * lib.sum(mask.mean(0) / top_k * probs.mean(0))
    z = lib.logsumexp(router_logits, dim=-1).square().mean()
    return balance, z


def train_moe_transformer(lib, dtype="float64", steps=5):
    model = weights_of(lib, lambda L: moe_transformer(L)(), dtype)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = lib.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    sched = lib.optim.lr_scheduler.LambdaLR(
        opt, lambda it: min(1.0, (it + 1) / 3) * 0.5 * (1 + math.cos(math.pi * it / steps)))
    rng = np.random.default_rng(14)
    data = np.cumsum(rng.choice([1, 2], size=200), 0) % 11
    rec = {"loss": [], "balance": [], "z": [], "norm": [], "lr": [], "grad": [], "w": []}
    for _ in range(steps):
        ix = rng.integers(0, len(data) - 9, 3)
        x = lib.tensor(np.stack([data[i:i + 8] for i in ix]))
        y = lib.tensor(np.stack([data[i + 1:i + 9] for i in ix]))
        y[0, :2] = -1  # ignored targets
        logits, loss = model(x, y)
        balance, z = aux_losses(lib, lib.cat([b.moe.logits for b in model.blocks]))
        total = loss + 0.01 * balance + 0.001 * z
        opt.zero_grad(set_to_none=True)
        total.backward()
        norm = lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        rec["grad"].append(grads(model))
        opt.step()
        sched.step()
        rec["loss"].append(loss.item())
        rec["balance"].append(balance.item())
        rec["z"].append(z.item())
        rec["norm"].append(norm.item())
        rec["lr"].append(sched.get_last_lr())
        rec["w"].append(arrays(model.state_dict()))
    return rec


@pytest.mark.parametrize("dtype,tol", [("float64", TOL), ("float32", 2e-5)])
def test_moe_transformer_adamw_clipping_matches_torch(dtype, tol):
    got = both(train_moe_transformer, dtype, tol=tol)
    assert got["loss"][-1] < got["loss"][0]


# ============================ lucidrains/mixture-of-experts (GShard top-2, einsum dispatch) ==

MIN_EXPERT_CAPACITY = 4


def lucidrains_moe(lib):
    """Top-2 gating with capacity by exclusive ``cumsum`` positions, ``safe_one_hot`` (a
    tensor ``num_classes``), einsum dispatch/combine tensors, batched experts; as written
    (``.float()`` masks: run in float32)."""
    nn = lib.nn
    F = lib.nn.functional

    def default(val, default_val):
        return val if val is not None else default_val

    def cast_tuple(el):
        return el if isinstance(el, tuple) else (el,)

    def top1(t):
        values, index = t.topk(k=1, dim=-1)
        values, index = map(lambda x: x.squeeze(dim=-1), (values, index))
        return values, index

    def cumsum_exclusive(t, dim=-1):
        num_pad_dims = - dim - 1
        pre_padding = (0, 0) * num_pad_dims
        pre_slice = (slice(None),) * num_pad_dims
        padded_t = F.pad(t, (*pre_padding, 1, 0)).cumsum(dim=dim)
        return padded_t[(..., slice(None, -1), *pre_slice)]

    def safe_one_hot(indexes, max_length):
        max_index = indexes.max() + 1
        return F.one_hot(indexes, max(max_index + 1, max_length))[..., :max_length]

    def init_(t):
        dim = t.shape[-1]
        std = 1 / math.sqrt(dim)
        return t.uniform_(-std, std)

    class GELU_(nn.Module):
        def forward(self, x):
            return 0.5 * x * (1 + lib.tanh(math.sqrt(2 / math.pi) * (
                x + 0.044715 * lib.pow(x, 3))))

    GELU = nn.GELU if hasattr(nn, "GELU") else GELU_

    class Experts(nn.Module):
        def __init__(self, dim, num_experts=16, hidden_dim=None, activation=GELU):
            super().__init__()
            hidden_dim = default(hidden_dim, dim * 4)
            num_experts = cast_tuple(num_experts)
            w1 = lib.zeros(*num_experts, dim, hidden_dim)
            w2 = lib.zeros(*num_experts, hidden_dim, dim)
            w1 = init_(w1)
            w2 = init_(w2)
            self.w1 = nn.Parameter(w1)
            self.w2 = nn.Parameter(w2)
            self.act = activation()

        def forward(self, x):
            hidden = lib.einsum("...nd,...dh->...nh", x, self.w1)
            hidden = self.act(hidden)
            out = lib.einsum("...nh,...hd->...nd", hidden, self.w2)
            return out

    class Top2Gating(nn.Module):
        def __init__(self, dim, num_gates, eps=1e-9, outer_expert_dims=tuple(),
                     second_policy_train="threshold", second_policy_eval="all",
                     second_threshold_train=0.2, second_threshold_eval=0.2,
                     capacity_factor_train=1.25, capacity_factor_eval=2.):
            super().__init__()
            self.eps = eps
            self.num_gates = num_gates
            self.w_gating = nn.Parameter(lib.randn(*outer_expert_dims, dim, num_gates))
            self.second_policy_train = second_policy_train
            self.second_policy_eval = second_policy_eval
            self.second_threshold_train = second_threshold_train
            self.second_threshold_eval = second_threshold_eval
            self.capacity_factor_train = capacity_factor_train
            self.capacity_factor_eval = capacity_factor_eval

        def forward(self, x, importance=None):
            *_, b, group_size, dim = x.shape
            num_gates = self.num_gates
            if self.training:
                policy = self.second_policy_train
                threshold = self.second_threshold_train
                capacity_factor = self.capacity_factor_train
            else:
                policy = self.second_policy_eval
                threshold = self.second_threshold_eval
                capacity_factor = self.capacity_factor_eval
            raw_gates = lib.einsum("...bnd,...de->...bne", x, self.w_gating)
            raw_gates = raw_gates.softmax(dim=-1)
            # FIND TOP EXPERT
            gate_1, index_1 = top1(raw_gates)
            mask_1 = F.one_hot(index_1, num_gates).float()
            density_1_proxy = raw_gates
            if importance is not None:
                equals_one_mask = (importance == 1.).float()
                mask_1 *= equals_one_mask[..., None]
                gate_1 *= equals_one_mask
                density_1_proxy = density_1_proxy * equals_one_mask[..., None]
                del equals_one_mask
            gates_without_top_1 = raw_gates * (1. - mask_1)
            gate_2, index_2 = top1(gates_without_top_1)
            mask_2 = F.one_hot(index_2, num_gates).float()
            if importance is not None:
                greater_zero_mask = (importance > 0.).float()
                mask_2 *= greater_zero_mask[..., None]
                del greater_zero_mask
            # normalize top2 gate scores
            denom = gate_1 + gate_2 + self.eps
            gate_1 /= denom
            gate_2 /= denom
            # BALANCING LOSSES
            # shape = [batch, experts]
            # We want to equalize the fraction of the batch assigned to each expert
            density_1 = mask_1.mean(dim=-2)
            # Something continuous that is correlated with what we want to equalize.
            density_1_proxy = density_1_proxy.mean(dim=-2)
            loss = (density_1_proxy * density_1).mean() * float(num_gates ** 2)
            # Depending on the policy in the hparams, we may drop out some of the
            # second-place experts.
            if policy == "all":
                pass
            elif policy == "none":
                mask_2 = lib.zeros_like(mask_2)
            elif policy == "threshold":
                mask_2 *= (gate_2 > threshold).float()[..., None]
            else:
                raise ValueError(f"Unknown policy {policy}")
            # Each sequence sends (at most?) expert_capacity positions to each expert.
            # Static expert_capacity dimension is needed for expert batch sizes
            expert_capacity = min(group_size, int((group_size * capacity_factor) / num_gates))
            expert_capacity = max(expert_capacity, MIN_EXPERT_CAPACITY)
            expert_capacity_f = float(expert_capacity)
            # COMPUTE ASSIGNMENT TO EXPERTS
            # [batch, group, experts]
            # This is the position within the expert's mini-batch for this sequence
            position_in_expert_1 = cumsum_exclusive(mask_1, dim=-2) * mask_1
            # Remove the elements that don't fit. [batch, group, experts]
            mask_1 *= (position_in_expert_1 < expert_capacity_f).float()
            # [batch, experts]
            # How many examples in this sequence go to this expert
            mask_1_count = mask_1.sum(dim=-2, keepdim=True)
            # [batch, group] - mostly ones, but zeros where something didn't fit
            mask_1_flat = mask_1.sum(dim=-1)
            # [batch, group]
            position_in_expert_1 = position_in_expert_1.sum(dim=-1)
            # Weight assigned to first expert.  [batch, group]
            gate_1 *= mask_1_flat
            position_in_expert_2 = cumsum_exclusive(mask_2, dim=-2) + mask_1_count
            position_in_expert_2 *= mask_2
            mask_2 *= (position_in_expert_2 < expert_capacity_f).float()
            mask_2_flat = mask_2.sum(dim=-1)
            position_in_expert_2 = position_in_expert_2.sum(dim=-1)
            gate_2 *= mask_2_flat
            # [batch, group, experts, expert_capacity]
            combine_tensor = (
                gate_1[..., None, None]
                * mask_1_flat[..., None, None]
                * F.one_hot(index_1, num_gates)[..., None]
                * safe_one_hot(position_in_expert_1.long(), expert_capacity)[..., None, :]
                + gate_2[..., None, None]
                * mask_2_flat[..., None, None]
                * F.one_hot(index_2, num_gates)[..., None]
                * safe_one_hot(position_in_expert_2.long(), expert_capacity)[..., None, :]
            )
            dispatch_tensor = combine_tensor.bool().to(combine_tensor)
            return dispatch_tensor, combine_tensor, loss

    class MoE(nn.Module):
        def __init__(self, dim, num_experts=16, hidden_dim=None, activation=nn.ReLU,
                     loss_coef=1e-2, experts=None, **gating_kwargs):
            super().__init__()
            self.num_experts = num_experts
            self.gate = Top2Gating(dim, num_gates=num_experts, **gating_kwargs)
            self.experts = default(experts, lambda: Experts(
                dim, num_experts=num_experts, hidden_dim=hidden_dim, activation=activation))()
            self.loss_coef = loss_coef

        def forward(self, inputs, **kwargs):
            b, n, d, e = *inputs.shape, self.num_experts  # noqa: F841
            dispatch_tensor, combine_tensor, loss = self.gate(inputs)
            expert_inputs = lib.einsum("bnd,bnec->ebcd", inputs, dispatch_tensor)
            # Now feed the expert inputs through the experts.
            orig_shape = expert_inputs.shape
            expert_inputs = expert_inputs.reshape(e, -1, d)
            expert_outputs = self.experts(expert_inputs)
            expert_outputs = expert_outputs.reshape(*orig_shape)
            # Now combine the results.
            output = lib.einsum("ebcd,bnec->bnd", expert_outputs, combine_tensor)
            return output, loss * self.loss_coef

    return MoE


def train_lucidrains(lib, steps=3):
    model = weights_of(lib, lambda L: lucidrains_moe(L)(dim=6, num_experts=4, hidden_dim=8),
                       "float32")
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(15)
    rec = {"out": [], "aux": [], "grad": [], "w": []}
    for _ in range(steps):
        x = lib.tensor(rng.standard_normal((2, 16, 6)), dtype=lib.float32)
        out, aux_loss = model(x)
        loss = out.square().mean() + aux_loss
        opt.zero_grad()
        loss.backward()
        rec["out"].append(out)
        rec["aux"].append(aux_loss)
        rec["grad"].append(grads(model))
        opt.step()
        rec["w"].append(arrays(model.state_dict()))
    model.eval()
    with lib.no_grad():
        rec["eval"] = model(x)[0]
    return rec


def test_lucidrains_top2_moe_in_float32_matches_torch():
    both(train_lucidrains, tol=1e-5)


# ============================ Megatron-Core MoE (router, permute/unpermute, aux losses) ======

def megatron_moe(lib):
    """Megatron-Core's top-k router with capacity (``drop_policy="probs"``), its switch
    load-balancing and z losses attached through ``MoEAuxLossAutoScaler``, the
    ``masked_select``/``index_select`` permutation and the ``scatter_add_`` unpermutation,
    and ``SequentialMLP``'s per-expert split."""
    torch = lib
    nn = lib.nn
    F = lib.nn.functional

    class MoEAuxLossAutoScaler(torch.autograd.Function):
        """An AutoScaler that triggers the backward pass and scales the grad for auxiliary
        loss."""

        main_loss_backward_scale = torch.tensor(1.0)

        @staticmethod
        def forward(ctx, output, aux_loss):
            ctx.save_for_backward(aux_loss)
            return output

        @staticmethod
        def backward(ctx, grad_output):
            (aux_loss,) = ctx.saved_tensors
            aux_loss_backward_scale = MoEAuxLossAutoScaler.main_loss_backward_scale
            scaled_aux_loss_grad = torch.ones_like(aux_loss) * aux_loss_backward_scale
            return grad_output, scaled_aux_loss_grad

        @staticmethod
        def set_loss_scale(scale):
            MoEAuxLossAutoScaler.main_loss_backward_scale = scale

    def switch_load_balancing_loss_func(probs, tokens_per_expert, topk, moe_aux_loss_coeff):
        num_sub_sequence = 1
        num_tokens = probs.shape[0] * num_sub_sequence
        num_experts = probs.shape[1]
        aggregated_probs_per_expert = probs.sum(dim=0)
        aux_loss = torch.sum(aggregated_probs_per_expert * tokens_per_expert) * (
            num_experts * moe_aux_loss_coeff / (num_tokens * num_tokens * topk))
        return aux_loss

    def z_loss_func(logits, z_loss_coeff):
        z_loss = torch.mean(torch.square(torch.logsumexp(logits, dim=-1))) * z_loss_coeff
        return z_loss

    def get_capacity(num_tokens, num_experts, capacity_factor, min_capacity=None):
        capacity = math.ceil((num_tokens / num_experts) * capacity_factor)
        if min_capacity is not None and capacity < min_capacity:
            capacity = min_capacity
        return capacity

    def topk_softmax_with_capacity(logits, topk, capacity_factor=None, pad_to_capacity=False,
                                   drop_policy="probs", use_pre_softmax=False):
        num_tokens = logits.shape[0]
        num_experts = logits.shape[1]
        if use_pre_softmax:
            # Pre softmax
            scores = torch.softmax(logits, dim=-1, dtype=torch.float64).type_as(logits)
            probs, top_indices = torch.topk(scores, k=topk, dim=1)
        else:
            # Post softmax
            if topk == 1:
                # Requires applying softmax before selecting the top-k when k is 1,
                # since softmax on a [num_tokens, 1] would yield a zero gradient.
                raise ValueError("Please use --moe-router-pre-softmax when topk is 1.")
            scores, top_indices = torch.topk(logits, k=topk, dim=1)
            probs = torch.softmax(scores, dim=-1, dtype=torch.float64).type_as(logits)
        if capacity_factor is None:
            # TopK without capacity
            tokens_per_expert = torch.bincount(top_indices.view(-1), minlength=num_experts)
            return probs, top_indices, tokens_per_expert
        else:
            # TopK with capacity
            expert_capacity = get_capacity(num_tokens=num_tokens * topk,
                                           num_experts=num_experts,
                                           capacity_factor=capacity_factor)
            # TopK selection, Maskout unused experts
            topk_masked_gates = torch.zeros_like(logits).scatter(1, top_indices, probs)
            topk_mask = torch.zeros_like(logits).scatter(1, top_indices, 1)
            # Maskout exceeded tokens
            if drop_policy == "probs":
                capacity_probs, capacity_indices = torch.topk(
                    topk_masked_gates, k=expert_capacity, dim=0, sorted=False)
                capacity_mask = torch.zeros_like(logits).scatter(0, capacity_indices, 1)
            else:
                raise ValueError(f"Invalid drop_policy: {drop_policy}")
            if pad_to_capacity:
                final_probs, final_indices = (capacity_probs.T.contiguous(),
                                              capacity_indices.T.contiguous())
                tokens_per_expert_before_capacity = topk_mask.sum(dim=0)
            else:
                # Get exceed mask and maskout exceeded probs and indices
                final_mask = torch.logical_and(topk_mask, capacity_mask)
                drop_mask = torch.logical_not(final_mask)
                exceed_mask = torch.gather(drop_mask, 1, top_indices)
                final_probs = probs * torch.logical_not(exceed_mask)
                final_indices = top_indices.clone().masked_fill_(
                    exceed_mask, torch.iinfo(torch.long).max)
                tokens_per_expert_before_capacity = topk_mask.sum(dim=0)
            return final_probs, final_indices, tokens_per_expert_before_capacity

    class TopKRouter(nn.Module):
        def __init__(self, hidden, num_experts, topk, capacity_factor, aux_coeff, z_coeff):
            super().__init__()
            self.topk, self.num_experts = topk, num_experts
            self.capacity_factor = capacity_factor
            self.moe_aux_loss_coeff, self.moe_z_loss_coeff = aux_coeff, z_coeff
            self.weight = nn.Parameter(torch.empty((num_experts, hidden), dtype=torch.float32))
            nn.init.normal_(self.weight, mean=0.0, std=0.1)

        def gating(self, input):
            return F.linear(input, self.weight.type_as(input))

        def aux_loss_load_balancing(self, logits):
            probs, indices, tokens_per_expert = topk_softmax_with_capacity(
                logits, self.topk, capacity_factor=self.capacity_factor, use_pre_softmax=True)
            if self.training:
                # Apply load balancing loss
                scores = torch.softmax(logits, dim=-1, dtype=torch.float64)
                probs = self.apply_load_balancing_loss(scores, tokens_per_expert,
                                                       activation=probs)
            return probs, indices

        def apply_load_balancing_loss(self, probs, num_local_tokens_per_expert, activation):
            aux_loss = switch_load_balancing_loss_func(
                probs, num_local_tokens_per_expert, self.topk, self.moe_aux_loss_coeff)
            self.aux_loss = aux_loss
            activation = MoEAuxLossAutoScaler.apply(activation, aux_loss)
            return activation

        def apply_z_loss(self, logits):
            if self.moe_z_loss_coeff is not None and self.training:
                z_loss = z_loss_func(logits, self.moe_z_loss_coeff)
                logits = MoEAuxLossAutoScaler.apply(logits, z_loss)
                self.z_loss = z_loss
            return logits

        def forward(self, input):
            logits = self.gating(input)
            logits = logits.view(-1, self.num_experts)
            logits = self.apply_z_loss(logits)
            scores, indices = self.aux_loss_load_balancing(logits)
            return scores, indices

    def permute(tokens, indices, num_out_tokens=None, padded_mode=False):
        """Permute the tokens based on the indices (the legacy sort-based version); token
        with the same index will be grouped together. Dropped slots (``iinfo.max``) sort
        last and are cut off by ``num_out_tokens``."""
        if indices.dim() == 1:
            topk = 1
        else:
            topk = indices.size(1)
        flatten_indices = indices.view(-1)
        sorted_indices = torch.argsort(flatten_indices, stable=True)
        if num_out_tokens is not None:
            sorted_indices = sorted_indices[:num_out_tokens]
        permuted_tokens = tokens.index_select(0, sorted_indices // topk)
        return permuted_tokens, sorted_indices

    def unpermute(permuted_tokens, sorted_indices, probs=None, padded_mode=False,
                  restore_shape=None):
        """Unpermute a tensor of permuted tokens based on sorted indices, and optionally
        merge the tokens with their corresponding probabilities."""
        assert sorted_indices.numel() == permuted_tokens.size(0)
        if probs is not None:
            # Unpermute and merge the tokens with their probabilities
            num_unpermuted_tokens = probs.numel()
            topk = probs.size(1)
        else:
            # Unpermute the tokens without merge
            num_unpermuted_tokens = permuted_tokens.size(0)
            topk = 1
        unpermuted_tokens = torch.zeros(
            [num_unpermuted_tokens, permuted_tokens.shape[-1]],
            dtype=permuted_tokens.dtype, device=permuted_tokens.device)
        unpermuted_tokens.index_copy_(0, sorted_indices, permuted_tokens)
        unpermuted_tokens = unpermuted_tokens.reshape(-1, topk, permuted_tokens.size(-1))
        if probs is not None:
            unpermuted_tokens = unpermuted_tokens * probs.unsqueeze(-1)
        unpermuted_tokens = unpermuted_tokens.sum(dim=1)
        return unpermuted_tokens

    class MLP(nn.Module):
        def __init__(self, hidden, ffn):
            super().__init__()
            self.linear_fc1 = nn.Linear(hidden, 2 * ffn, bias=False)
            self.linear_fc2 = nn.Linear(ffn, hidden, bias=False)

        def forward(self, x):
            x = self.linear_fc1(x)
            x = torch.chunk(x, 2, dim=-1)
            return self.linear_fc2(F.silu(x[0]) * x[1])  # swiglu

    class SequentialMLP(nn.Module):
        def __init__(self, num_local_experts, hidden, ffn):
            super().__init__()
            self.local_experts = nn.ModuleList([MLP(hidden, ffn)
                                                for _ in range(num_local_experts)])

        def forward(self, permuted_local_hidden_states, tokens_per_expert):
            output_local = torch.zeros_like(permuted_local_hidden_states)
            cumsum_num_tokens = torch.cumsum(tokens_per_expert, dim=0)
            # Insert zero at the begining for offset index's convenience
            zero_tensor = torch.zeros(1, dtype=torch.long, device=cumsum_num_tokens.device)
            cumsum_num_tokens = torch.cat((zero_tensor, cumsum_num_tokens))
            for expert_num, expert in enumerate(self.local_experts):
                start = cumsum_num_tokens[expert_num]
                end = cumsum_num_tokens[expert_num + 1]
                hidden = permuted_local_hidden_states[start:end]
                output = expert(hidden)
                output_local[start:end] = output
            return output_local

    class MoELayer(nn.Module):
        def __init__(self, hidden=8, ffn=6, num_experts=4, topk=2, capacity_factor=1.0,
                     aux_coeff=1e-2, z_coeff=1e-3):
            super().__init__()
            self.num_experts = num_experts
            self.router = TopKRouter(hidden, num_experts, topk, capacity_factor, aux_coeff,
                                     z_coeff)
            self.experts = SequentialMLP(num_experts, hidden, ffn)

        def forward(self, hidden_states):
            hidden_shape = hidden_states.shape
            hidden_states = hidden_states.view(-1, hidden_shape[-1])
            probs, indices = self.router(hidden_states)
            # the dispatcher: count the kept slots, sort them by expert
            kept = indices != torch.iinfo(torch.long).max
            num_out_tokens = int(kept.sum())
            tokens_per_expert = torch.histc(indices[kept].to(hidden_states.dtype),
                                            bins=self.num_experts, min=0,
                                            max=self.num_experts - 1).long()
            permuted, sorted_indices = permute(hidden_states, indices, num_out_tokens)
            expert_output = self.experts(permuted, tokens_per_expert)
            # dropped slots come back as zeros
            padded = torch.cat([expert_output, expert_output.new_zeros(
                probs.numel() - num_out_tokens, expert_output.size(-1))])
            all_indices = torch.cat([sorted_indices, torch.argsort(
                indices.view(-1), stable=True)[num_out_tokens:]])
            output = unpermute(padded, all_indices, probs=probs)
            return output.view(hidden_shape)

    return MoELayer, MoEAuxLossAutoScaler


def train_megatron(lib, steps=3):
    MoELayer, Scaler = megatron_moe(lib)
    model = weights_of(lib, lambda L: megatron_moe(L)[0]())
    Scaler.set_loss_scale(lib.tensor(0.5))
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(16)
    rec = {"out": [], "aux": [], "z": [], "grad": [], "w": []}
    for _ in range(steps):
        x = lib.tensor(rng.standard_normal((2, 7, 8)))
        out = model(x)
        loss = out.square().mean()
        opt.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=2.0, foreach=True)
        rec["out"].append(out)
        rec["aux"].append(model.router.aux_loss)
        rec["z"].append(model.router.z_loss)
        rec["grad"].append(grads(model))
        opt.step()
        rec["w"].append(arrays(model.state_dict()))
    return rec


def test_megatron_moe_layer_matches_torch():
    got = both(train_megatron)
    assert np.abs(got["grad"][0]["router.weight"]).sum() > 0


# ============================ DeepSpeed top-1 / top-2 gating (sharded_moe.py) ================

def deepspeed_gating(lib, uniform_draws, gumbel_draws):
    """DeepSpeed's gates as written: ``torch.jit.script`` helpers whose capacity is a 0-d
    int64 tensor (given to ``topk`` as ``k`` and to ``one_hot`` as ``num_classes``), random
    token selection through a cached ``Uniform(...).rsample`` and Gumbel noise (both fed
    the same draws in the two libraries), ``.float()`` masks (float32 as written)."""
    torch = lib
    F = lib.nn.functional
    einsum = torch.einsum
    exp_selection_uniform_map = {}
    draws = {"u": iter(uniform_draws), "g": iter(gumbel_draws)}

    def gumbel_rsample(shape, device):
        # gumbel_map[device] = torch.distributions.gumbel.Gumbel(one, zero).rsample
        out = torch.tensor(next(draws["g"]), dtype=torch.float32)
        assert tuple(out.shape) == tuple(shape)
        return out

    # the cached sampler: torch.distributions.uniform.Uniform(low=0, high=1).rsample
    exp_selection_uniform_map["cpu"] = lambda shape: torch.tensor(
        next(draws["u"]), dtype=torch.float32).reshape(shape)

    @torch.jit.script
    def _capacity(gates, capacity_factor, min_capacity):
        # gates has shape of SE
        num_tokens = gates.shape[0]
        num_experts = gates.shape[1]
        # to(torch.int64) works around a bug in torch.onnx.export:
        # it should cast k to int64 when converting torch.topk but it doesn't.
        capacity = torch.ceil((num_tokens / num_experts) * capacity_factor).to(torch.int64)
        if capacity < min_capacity:
            capacity = min_capacity.to(torch.int64)
        return capacity

    @torch.jit.script
    def _top_idx(source, k):
        return torch.topk(source, k=k, dim=0)[1]

    @torch.jit.script
    def _one_hot_to_float(x, num_classes):
        return F.one_hot(x, num_classes=num_classes).float()

    def top1gating(logits, capacity_factor, min_capacity, used_token=None,
                   noisy_gate_policy=None, drop_tokens=True, use_rts=True):
        """Implements Top1Gating on logits."""
        if noisy_gate_policy == "RSample":
            logits_w_noise = logits + gumbel_rsample(logits.shape, device=logits.device)
        # everything is in fp32 in this function
        gates = F.softmax(logits, dim=1)
        capacity = _capacity(gates, torch.tensor(capacity_factor),
                             torch.tensor(min_capacity))
        # Create a mask for 1st's expert per token
        # noisy gating
        indices1_s = torch.argmax(logits_w_noise if noisy_gate_policy == "RSample" else gates,
                                  dim=1)
        num_experts = int(gates.shape[1])
        mask1 = F.one_hot(indices1_s, num_classes=num_experts)
        # mask only used tokens
        if used_token is not None:
            mask1 = einsum("s,se->se", used_token, mask1)
        # gating decisions
        exp_counts = torch.sum(mask1, dim=0).detach().to("cpu")
        # if we don't want to drop any tokens
        if not drop_tokens:
            new_capacity = torch.max(exp_counts).to(logits.device)
            capacity = new_capacity
        # Compute l_aux
        me = torch.mean(gates, dim=0)
        ce = torch.mean(mask1.float(), dim=0)
        l_aux = torch.sum(me * ce) * num_experts
        # Random Token Selection
        if use_rts:
            uniform = exp_selection_uniform_map.get(str(logits.device))
            mask1_rand = mask1 * uniform(mask1.shape)
        else:
            mask1_rand = mask1
        assert logits.shape[0] >= min_capacity, (
            "No. of tokens (batch-size) should be greater than min_capacity. Either set "
            "min_capacity to 0 or increase your batch size.")
        top_idx = _top_idx(mask1_rand, capacity)
        new_mask1 = mask1 * torch.zeros_like(mask1).scatter_(0, top_idx, 1)
        mask1 = new_mask1
        # Compute locations in capacity buffer
        locations1 = torch.cumsum(mask1, dim=0) - 1
        # Store the capacity location for each token
        locations1_s = torch.sum(locations1 * mask1, dim=1)
        # Normalize gate probabilities
        mask1_float = mask1.float()
        gates = gates * mask1_float
        locations1_sc = _one_hot_to_float(locations1_s, capacity)
        combine_weights = einsum("se,sc->sec", gates, locations1_sc)
        dispatch_mask = combine_weights.bool()
        return l_aux, combine_weights, dispatch_mask, exp_counts

    def top2gating(logits, capacity_factor, min_capacity, drop_tokens=True,
                   top2_2nd_expert_sampling=True):
        """Implements Top2Gating on logits."""
        # everything is in fp32 in this function
        gates = F.softmax(logits, dim=1)
        # Create a mask for 1st's expert per token
        indices1_s = torch.argmax(gates, dim=1)
        num_experts = int(gates.shape[1])
        mask1 = F.one_hot(indices1_s, num_classes=num_experts)
        if top2_2nd_expert_sampling:
            # Create a mask for 2nd's expert per token using Gumbel-max trick
            # https://timvieira.github.io/blog/post/2014/07/31/gumbel-max-trick/
            logits += gumbel_rsample(logits.shape, device=logits.device)
        # Replace top-expert with min value
        logits_except1 = logits.masked_fill(mask1.bool(), float("-inf"))
        indices2_s = torch.argmax(logits_except1, dim=1)
        mask2 = F.one_hot(indices2_s, num_classes=num_experts)
        # Compute locations in capacity buffer
        locations1 = torch.cumsum(mask1, dim=0) - 1
        locations2 = torch.cumsum(mask2, dim=0) - 1
        # Update 2nd's location by accounting for locations of 1st
        locations2 += torch.sum(mask1, dim=0, keepdim=True)
        # Compute l_aux
        me = torch.mean(gates, dim=0)
        ce = torch.mean(mask1.float(), dim=0)
        l_aux = torch.mean(me * ce) * num_experts * num_experts
        # gating decisions
        exp_counts = torch.sum(mask1 + mask2, dim=0)
        if drop_tokens:
            # Calculate configured capacity and remove locations outside capacity from mask
            capacity = _capacity(gates, torch.tensor(capacity_factor * 2),
                                 torch.tensor(min_capacity))
            mask1 *= torch.lt(locations1, capacity)
            mask2 *= torch.lt(locations2, capacity)
        else:
            # Do not drop tokens - set capacity according to current expert assignments
            new_capacity = torch.max(exp_counts)
            capacity = new_capacity
        # Store the capacity location for each token
        locations1_s = torch.sum(locations1 * mask1, dim=1)
        locations2_s = torch.sum(locations2 * mask2, dim=1)
        # Normalize gate probabilities
        mask1_float = mask1.float()
        mask2_float = mask2.float()
        gates1_s = einsum("se,se->s", gates, mask1_float)
        gates2_s = einsum("se,se->s", gates, mask2_float)
        denom_s = gates1_s + gates2_s
        # Avoid divide-by-zero
        denom_s = torch.clamp(denom_s, min=torch.finfo(denom_s.dtype).eps)
        gates1_s /= denom_s
        gates2_s /= denom_s
        # Calculate combine_weights and dispatch_mask
        gates1 = einsum("s,se->se", gates1_s, mask1_float)
        gates2 = einsum("s,se->se", gates2_s, mask2_float)
        locations1_sc = _one_hot_to_float(locations1_s, capacity)
        locations2_sc = _one_hot_to_float(locations2_s, capacity)
        combine1_sec = einsum("se,sc->sec", gates1, locations1_sc)
        combine2_sec = einsum("se,sc->sec", gates2, locations2_sc)
        combine_weights = combine1_sec + combine2_sec
        dispatch_mask = combine_weights.bool()
        return l_aux, combine_weights, dispatch_mask, exp_counts.detach().to("cpu")

    return top1gating, top2gating


@pytest.mark.parametrize("gate", ["top1", "top1_rsample", "top1_no_drop", "top2",
                                  "top2_no_drop"])
def test_deepspeed_gating_matches_torch(gate):
    rng = np.random.default_rng(17)
    logits = rng.standard_normal((12, 4)).astype(np.float32)
    uniform_draws = rng.random((3, 12, 4)).astype(np.float32)
    gumbel_draws = -np.log(-np.log(rng.random((3, 12, 4)))).astype(np.float32)

    def run(lib):
        top1, top2 = deepspeed_gating(lib, uniform_draws, gumbel_draws)
        x = lib.tensor(logits, requires_grad=True)
        kw = {"top1": {}, "top1_rsample": {"noisy_gate_policy": "RSample"},
              "top1_no_drop": {"drop_tokens": False}, "top2": {},
              "top2_no_drop": {"drop_tokens": False}}[gate]
        fn = top1 if gate.startswith("top1") else top2
        l_aux, combine, dispatch, counts = fn(x.clone(), 0.75, 2, **kw)
        (l_aux + (combine * lib.arange(combine.shape[-1], dtype=lib.float32)).sum()).backward()
        return {"l_aux": l_aux, "combine": combine, "dispatch": dispatch.float(),
                "counts": counts, "grad": x.grad}

    both(run, tol=1e-6)


def test_deepspeed_top1_without_rts_keeps_the_first_tokens():
    """Without random token selection the capacity cut is ``topk`` over a 0/1 mask: ties,
    which nodegrad breaks by the lower index (the first tokens are kept, as the positions of
    GShard's cumsum would), and PyTorch's kernel by its own order (so no comparison)."""
    rng = np.random.default_rng(17)
    top1, _ = deepspeed_gating(ng, [], [])
    logits = ng.tensor(rng.standard_normal((12, 4)).astype(np.float32))
    _, combine, dispatch, counts = top1(logits, 0.75, 2, use_rts=False)
    mask = ng.nn.functional.one_hot(logits.argmax(1), 4).numpy()
    kept = dispatch.any(-1).numpy()
    for e in range(4):
        tokens = np.flatnonzero(mask[:, e])
        assert list(np.flatnonzero(kept[:, e])) == list(tokens[:3])  # capacity ceil(3 * .75)
    assert counts.tolist() == mask.sum(0).tolist()


# ============================ memory-efficient chunked attention (Rabe & Staats) =============

def memory_efficient(lib, use_reentrant):
    """lucidrains/memory-efficient-attention-pytorch: query and key chunks, each chunk's
    exp-weights and maxima through ``checkpoint``, renormalised by the global maximum."""
    from functools import partial

    torch = lib
    F = lib.nn.functional
    checkpoint = partial(lib.utils.checkpoint.checkpoint, use_reentrant=use_reentrant)

    def exists(val):
        return val is not None

    def summarize_qkv_chunk(q, k, v, mask, attn_bias_chunk, causal, qk_start_indices,
                            dropout):
        q_start_index, k_start_index, q_chunk_size, k_chunk_size, device = \
            *qk_start_indices, q.shape[-2], k.shape[-2], q.device
        weight = torch.einsum("b h i d, b h j d -> b h i j", q, k)
        if exists(attn_bias_chunk):
            weight = weight + attn_bias_chunk
        mask_value = -torch.finfo(weight.dtype).max
        if exists(mask):
            mask = mask[:, None, None, :]  # rearrange(mask, 'b j -> b 1 1 j')
            weight = weight.masked_fill(~mask, mask_value)
        if causal and q_start_index < (k_start_index + k_chunk_size - 1):
            causal_mask = torch.ones((q_chunk_size, k_chunk_size), dtype=torch.bool,
                                     device=device).triu(q_start_index - k_start_index + 1)
            weight = weight.masked_fill(causal_mask, mask_value)
        weight_max = weight.amax(dim=-1, keepdim=True).detach()
        weight = weight - weight_max
        exp_weight = weight.exp()
        exp_weight = F.dropout(exp_weight, p=dropout)
        weighted_value = torch.einsum("b h i j, b h j d -> b h i d", exp_weight, v)
        return exp_weight.sum(dim=-1), weighted_value, weight_max.squeeze(-1)

    checkpointed_summarize_qkv_chunk = partial(checkpoint, summarize_qkv_chunk)

    def memory_efficient_attention(q, k, v, mask=None, causal=False, attn_bias=None,
                                   q_bucket_size=512, k_bucket_size=1024, eps=1e-8,
                                   dropout=0., training=False):
        scale = q.shape[-1] ** -0.5
        q = q * scale
        # function
        needs_backwards = q.requires_grad or k.requires_grad or v.requires_grad
        summarize_qkv_fn = checkpointed_summarize_qkv_chunk if needs_backwards \
            else summarize_qkv_chunk
        # chunk all the inputs
        q_chunks = q.split(q_bucket_size, dim=-2)
        k_chunks = k.split(k_bucket_size, dim=-2)
        v_chunks = v.split(k_bucket_size, dim=-2)
        mask_chunks = mask.split(k_bucket_size, dim=-1) if exists(mask) \
            else ((None,) * len(k_chunks))
        if exists(attn_bias):
            i, j = attn_bias.shape[-2:]
            attn_bias_chunks = attn_bias.split(q_bucket_size, dim=-2)
            attn_bias_chunks = list(map(lambda t: t.split(k_bucket_size, dim=-1),
                                        attn_bias_chunks))
        # loop through all chunks and accumulate
        out = []
        for q_index, q_chunk in enumerate(q_chunks):
            exp_weights = []
            weighted_values = []
            weight_maxes = []
            for k_index, (k_chunk, v_chunk, mask_chunk) in enumerate(
                    zip(k_chunks, v_chunks, mask_chunks)):
                q_start_index = q_index * q_bucket_size
                k_start_index = k_index * k_bucket_size
                if causal and k_start_index > (q_start_index + q_chunk.shape[-2] - 1):
                    # if chunk is to be all masked out causally, skip
                    continue
                attn_bias_chunk = attn_bias_chunks[q_index][k_index] if exists(attn_bias) \
                    else None
                exp_weight_chunk, weighted_value_chunk, weight_max_chunk = summarize_qkv_fn(
                    q_chunk, k_chunk, v_chunk, mask_chunk, attn_bias_chunk, causal,
                    (q_start_index, k_start_index), dropout if training else 0.)
                exp_weights.append(exp_weight_chunk)
                weighted_values.append(weighted_value_chunk)
                weight_maxes.append(weight_max_chunk)
            weight_maxes = torch.stack(weight_maxes, dim=-1)
            weighted_values = torch.stack(weighted_values, dim=-1)
            exp_weights = torch.stack(exp_weights, dim=-1)
            global_max = weight_maxes.amax(dim=-1, keepdim=True)
            renorm_factor = (weight_maxes - global_max).exp().detach()
            exp_weights = exp_weights * renorm_factor
            weighted_values = weighted_values * renorm_factor.unsqueeze(-2)
            all_values = weighted_values.sum(dim=-1)
            all_weights = exp_weights.sum(dim=-1)
            normalized_values = all_values / (all_weights.unsqueeze(-1) + eps)
            out.append(normalized_values)
        return torch.cat(out, dim=-2)

    return memory_efficient_attention


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_memory_efficient_chunked_attention_matches_torch_and_sdpa(use_reentrant):
    rng = np.random.default_rng(18)
    q, k, v = (rng.standard_normal((2, 2, 10, 4)) for _ in range(3))
    bias = rng.standard_normal((2, 10, 10)) * 0.1
    mask = np.ones((2, 10), bool)
    mask[1, 7:] = False

    def run(lib):
        attention = memory_efficient(lib, use_reentrant)
        rec = {}
        for name, kw in [("causal_bias", {"causal": True, "attn_bias": lib.tensor(bias)}),
                         ("masked", {"mask": lib.tensor(mask)})]:
            qt, kt, vt = (lib.tensor(a, requires_grad=True) for a in (q, k, v))
            out = attention(qt, kt, vt, q_bucket_size=4, k_bucket_size=3, **kw)
            (out * out).sum().backward()
            qs, ks, vs = (lib.tensor(a, requires_grad=True) for a in (q, k, v))
            attn_mask = (lib.tensor(bias) + lib.zeros(10, 10).masked_fill(
                lib.ones(10, 10, dtype=lib.bool).triu(1), float("-inf"))
                if name == "causal_bias" else lib.tensor(mask)[:, None, None, :])
            ref = lib.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=attn_mask)
            (ref * ref).sum().backward()
            rec[name] = [out, qt.grad, kt.grad, vt.grad]
            rec[name + "_sdpa"] = [ref, qs.grad, ks.grad, vs.grad]
        return rec

    got = both(run)
    for name in ("causal_bias", "masked"):
        assert_same(got[name], got[name + "_sdpa"], 1e-6)  # eps = 1e-8 in the denominator



# ============================ Linformer and Nystromformer ====================================

def low_rank_attention(lib):
    """lucidrains/linformer's self-attention (keys and values projected along the sequence
    to ``k`` rows by ``einsum`` with learnt (n, k) matrices, one shared kv head expanded to
    all heads) and the Nystromformer's landmark attention (segment means as landmarks, the
    iterative Moore-Penrose inverse, a depthwise convolution over the values)."""
    nn = lib.nn
    torch = lib

    def init_(tensor):
        dim = tensor.shape[-1]
        std = 1 / math.sqrt(dim)
        tensor.uniform_(-std, std)
        return tensor

    class LinformerSelfAttention(nn.Module):
        def __init__(self, dim, seq_len, k=256, heads=8, dim_head=None, one_kv_head=False,
                     share_kv=False, dropout=0.):
            super().__init__()
            assert (dim % heads) == 0, "dimension must be divisible by the number of heads"
            self.seq_len = seq_len
            self.k = k
            self.heads = heads
            dim_head = dim_head if dim_head is not None else (dim // heads)
            self.dim_head = dim_head
            self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
            kv_dim = dim_head if one_kv_head else (dim_head * heads)
            self.to_k = nn.Linear(dim, kv_dim, bias=False)
            self.proj_k = nn.Parameter(init_(torch.zeros(seq_len, k)))
            self.share_kv = share_kv
            if not share_kv:
                self.to_v = nn.Linear(dim, kv_dim, bias=False)
                self.proj_v = nn.Parameter(init_(torch.zeros(seq_len, k)))
            self.dropout = nn.Dropout(dropout)
            self.to_out = nn.Linear(dim_head * heads, dim)

        def forward(self, x, context=None, **kwargs):
            b, n, d, d_h, h, k = *x.shape, self.dim_head, self.heads, self.k  # noqa: F841
            kv_len = n if context is None else context.shape[1]
            assert kv_len <= self.seq_len, f"the sequence length of the key / values must " \
                f"be {self.seq_len} - {kv_len} given"
            queries = self.to_q(x)
            proj_seq_len = lambda args: torch.einsum("bnd,nk->bkd", *args)  # noqa: E731
            kv_input = x if context is None else context
            keys = self.to_k(kv_input)
            values = self.to_v(kv_input) if not self.share_kv else keys
            kv_projs = (self.proj_k, self.proj_v if not self.share_kv else self.proj_k)
            # allow for variable sequence lengths (less than maximum sequence length) by
            # slicing projections
            if kv_len < self.seq_len:
                kv_projs = map(lambda t: t[:kv_len], kv_projs)
            # project keys and values along the sequence length dimension to k
            keys, values = map(proj_seq_len, zip((keys, values), kv_projs))
            # merge head into batch for queries and key / values
            queries = queries.reshape(b, n, h, -1).transpose(1, 2)
            merge_key_values = lambda t: t.reshape(b, k, -1, d_h).transpose(1, 2).expand(  # noqa: E731
                -1, h, -1, -1)
            keys, values = map(merge_key_values, (keys, values))
            # attention
            dots = torch.einsum("bhnd,bhkd->bhnk", queries, keys) * (d_h ** -0.5)
            attn = dots.softmax(dim=-1)
            attn = self.dropout(attn)
            out = torch.einsum("bhnk,bhkd->bhnd", attn, values)
            # split heads
            out = out.transpose(1, 2).reshape(b, n, -1)
            return self.to_out(out)

    class NystromAttention(nn.Module):
        def __init__(self, head_dim, num_head, num_landmarks, seq_len, conv_kernel_size=3,
                     init_option="original"):
            super().__init__()
            self.head_dim = head_dim
            self.num_head = num_head
            self.num_landmarks = num_landmarks
            self.seq_len = seq_len
            self.init_option = init_option
            self.conv = nn.Conv2d(in_channels=self.num_head, out_channels=self.num_head,
                                  kernel_size=(conv_kernel_size, 1),
                                  padding=(conv_kernel_size // 2, 0), bias=False,
                                  groups=self.num_head)

        def forward(self, Q, K, V, mask):
            Q = Q * mask[:, None, :, None] / math.sqrt(math.sqrt(self.head_dim))
            K = K * mask[:, None, :, None] / math.sqrt(math.sqrt(self.head_dim))
            Q_landmarks = Q.reshape(-1, self.num_head, self.num_landmarks,
                                    self.seq_len // self.num_landmarks,
                                    self.head_dim).mean(dim=-2)
            K_landmarks = K.reshape(-1, self.num_head, self.num_landmarks,
                                    self.seq_len // self.num_landmarks,
                                    self.head_dim).mean(dim=-2)
            kernel_1 = torch.nn.functional.softmax(
                torch.matmul(Q, K_landmarks.transpose(-1, -2)), dim=-1)
            kernel_2 = torch.nn.functional.softmax(
                torch.matmul(Q_landmarks, K_landmarks.transpose(-1, -2)), dim=-1)
            kernel_3 = torch.nn.functional.softmax(
                torch.matmul(Q_landmarks, K.transpose(-1, -2))
                - 1e9 * (1 - mask[:, None, None, :]), dim=-1)
            X = torch.matmul(torch.matmul(kernel_1, self.iterative_inv(kernel_2)),
                             torch.matmul(kernel_3, V))
            X += self.conv(V * mask[:, None, :, None])
            return X

        def iterative_inv(self, mat, n_iter=6):
            I = torch.eye(mat.size(-1), device=mat.device)  # noqa: E741
            K = mat
            if self.init_option == "original":
                V = 1 / torch.max(torch.sum(K, dim=-2)) * K.transpose(-1, -2)
            else:
                V = 1 / torch.max(torch.sum(K, dim=-2), dim=-1).values[:, :, None, None] \
                    * K.transpose(-1, -2)
            for _ in range(n_iter):
                KV = torch.matmul(K, V)
                V = torch.matmul(0.25 * V, 13 * I - torch.matmul(
                    KV, 15 * I - torch.matmul(KV, 7 * I - KV)))
            return V

    return LinformerSelfAttention, NystromAttention


@pytest.mark.parametrize("variant", ["linformer", "linformer_one_kv_short", "nystrom",
                                     "nystrom_per_batch_init"])
def test_low_rank_attention_training_matches_torch(variant):
    rng = np.random.default_rng(20)

    def build(L):
        lin, nys = low_rank_attention(L)
        if variant == "linformer":
            return lin(8, seq_len=10, k=4, heads=2)
        if variant == "linformer_one_kv_short":
            return lin(8, seq_len=12, k=4, heads=2, one_kv_head=True, share_kv=True)
        return nys(4, 2, num_landmarks=5, seq_len=10,
                   init_option="original" if variant == "nystrom" else "other")

    def run(lib, steps=3):
        model = weights_of(lib, build)
        opt = lib.optim.AdamW(model.parameters(), lr=1e-2)
        rec = {"out": [], "grad": [], "w": []}
        for _ in range(steps):
            if variant.startswith("linformer"):
                out = model(lib.tensor(rng.standard_normal((2, 10, 8))))
            else:
                mask = np.ones((2, 10))
                mask[1, 8:] = 0
                q, k, v = (lib.tensor(rng.standard_normal((2, 2, 10, 4))) for _ in range(3))
                out = model(q, k, v, lib.tensor(mask))
            loss = out.square().mean()
            opt.zero_grad()
            loss.backward()
            rec["out"].append(out)
            rec["grad"].append(grads(model))
            opt.step()
            rec["w"].append(arrays(model.state_dict()))
        return rec

    state = rng.bit_generator.state
    ref = run(torch)
    rng.bit_generator.state = state
    assert_same(run(ng), ref, 1e-9)


# ============================ FastMoE (custom autograd Functions for scatter and gather) =====

def fastmoe(lib):
    """FastMoE's single-worker path as written: ``NaiveGate`` (top-k with ``sorted=False``,
    softmax over the k), ``MOEScatter``/``MOEGather`` autograd Functions around
    ``index_select``/``index_add_``/``index_copy_`` with the positions from ``argsort`` and the
    counts from ``bincount`` (the CUDA kernels' results), the per-expert loop over
    ``fwd_expert_count.cpu().numpy()`` and the ``bmm`` of scores and slot outputs."""
    torch = lib
    nn = lib.nn
    F = lib.nn.functional
    Function = lib.autograd.Function

    def _local_scatter(inp, pos):
        inp_buf = torch.index_select(inp, 0, pos)
        return inp_buf

    def _local_gather(inp, pos, out_batch_size, maybe_overlap=True):
        inp_buf = torch.zeros(out_batch_size, inp.shape[-1], dtype=inp.dtype, device=inp.device)
        if maybe_overlap:
            inp_buf.index_add_(0, pos, inp)
        else:
            inp_buf.index_copy_(0, pos, inp)
        return inp_buf

    class MOEScatter(Function):
        @staticmethod
        def forward(ctx, inp, pos, local_expert_count, global_expert_count, fwd_batch_size,
                    world_size):
            local_input_buf = _local_scatter(inp, pos)
            global_input_buf = local_input_buf
            ctx.moe_args = inp.shape[0], pos.shape[0], world_size
            variables = (pos, local_expert_count, global_expert_count)
            ctx.save_for_backward(*variables)
            return global_input_buf

        @staticmethod
        def backward(ctx, global_grad_in):
            (pos, local_expert_count, global_expert_count) = ctx.saved_tensors
            (inp_batch_size, buf_batch_size, world_size) = ctx.moe_args
            local_grad_in = global_grad_in
            grad_in = _local_gather(local_grad_in, pos, inp_batch_size)
            return grad_in, None, None, None, None, None

    class MOEGather(Function):
        @staticmethod
        def forward(ctx, global_output_buf, pos, local_expert_count, global_expert_count,
                    local_batch_size, world_size):
            local_output_buf = global_output_buf
            output = _local_gather(local_output_buf, pos, local_batch_size,
                                   maybe_overlap=False)
            ctx.moe_args = (global_output_buf.shape[0], world_size)
            variables = (pos, local_expert_count, global_expert_count)
            ctx.save_for_backward(*variables)
            return output

        @staticmethod
        def backward(ctx, grad_out):
            pos, local_expert_count, global_expert_count = ctx.saved_tensors
            fwd_batch_size, world_size = ctx.moe_args
            grad_out_buf = _local_scatter(grad_out.contiguous(), pos)
            global_grad_out_buf = grad_out_buf
            return global_grad_out_buf, None, None, None, None, None

    def prepare_forward(gate, num_expert, world_size):
        """The counts and positions fmoe_cuda computes: tokens per expert (``bincount``) and
        the slots sorted by expert (a stable ``argsort``)."""
        with torch.no_grad():
            flat = gate.view(-1)
            local_expert_count = torch.bincount(flat, minlength=num_expert)
            pos = torch.argsort(flat, stable=True)
            global_expert_count = local_expert_count
            fwd_expert_count = global_expert_count.view(world_size, num_expert).sum(dim=0)
            fwd_batch_size = int(fwd_expert_count.sum().item())
        return (pos, local_expert_count.cpu(), global_expert_count.cpu(),
                fwd_expert_count.cpu(), fwd_batch_size)

    def _fmoe_general_global_forward(inp, gate, expert_fn, num_expert, world_size):
        (pos, local_expert_count, global_expert_count, fwd_expert_count,
         fwd_batch_size) = prepare_forward(gate, num_expert, world_size)
        topk = 1
        if len(gate.shape) == 2:
            topk = gate.shape[1]
        x = MOEScatter.apply(inp, torch.div(pos, topk, rounding_mode="floor"),
                             local_expert_count, global_expert_count, fwd_batch_size,
                             world_size)
        x = expert_fn(x, fwd_expert_count)
        out_batch_size = inp.shape[0]
        if len(gate.shape) == 2:
            out_batch_size *= gate.shape[1]
        outp = MOEGather.apply(x, pos, local_expert_count, global_expert_count, out_batch_size,
                               world_size)
        return outp

    class NaiveGate(nn.Module):
        def __init__(self, d_model, num_expert, world_size, top_k=2, gate_bias=True):
            super().__init__()
            self.num_expert, self.world_size = num_expert, world_size
            self.tot_expert = num_expert * world_size
            self.gate = nn.Linear(d_model, self.tot_expert, bias=gate_bias)
            self.top_k = top_k

        def forward(self, inp, return_all_scores=False):
            gate = self.gate(inp)
            gate_top_k_val, gate_top_k_idx = torch.topk(gate, k=self.top_k, dim=-1,
                                                        largest=True, sorted=False)
            gate_top_k_val = gate_top_k_val.view(-1, self.top_k)
            # (BxL) x 1 x top_k
            gate_score = F.softmax(gate_top_k_val, dim=-1)
            # dummy loss
            self.loss = torch.zeros(1, requires_grad=True).to(inp.device)
            if return_all_scores:
                return gate_top_k_idx, gate_score, gate
            return gate_top_k_idx, gate_score

    class _Expert(nn.Module):
        def __init__(self, d_model, d_hidden):
            super().__init__()
            self.htoh4 = nn.Linear(d_model, d_hidden)
            self.h4toh = nn.Linear(d_hidden, d_model)
            self.activation = nn.GELU()

        def forward(self, inp, fwd_expert_count):
            x = self.htoh4(inp)
            x = self.activation(x)
            x = self.h4toh(x)
            return x

    class FMoE(nn.Module):
        def __init__(self, num_expert=4, d_model=6, d_hidden=10, top_k=2, world_size=1):
            super().__init__()
            self.num_expert, self.d_model, self.top_k = num_expert, d_model, top_k
            self.world_size = world_size
            self.experts = nn.ModuleList([_Expert(d_model, d_hidden)
                                          for _ in range(num_expert)])
            self.gate = NaiveGate(d_model, num_expert, world_size, top_k)

        def expert_fn(self, inp, fwd_expert_count):
            if isinstance(fwd_expert_count, torch.Tensor):
                fwd_expert_count_cpu = fwd_expert_count.cpu().numpy()
            outputs = []
            base_idx = 0
            for i in range(self.num_expert):
                batch_size = fwd_expert_count_cpu[i]
                inp_slice = inp[base_idx: base_idx + batch_size]
                outputs.append(self.experts[i](inp_slice, torch.tensor([fwd_expert_count[i]])))
                base_idx += batch_size
            return torch.cat(outputs, dim=0)

        def forward(self, moe_inp):
            gate_top_k_idx, gate_score = self.gate(moe_inp)
            fwd = _fmoe_general_global_forward(moe_inp, gate_top_k_idx, self.expert_fn,
                                               self.num_expert, self.world_size)
            dim = fwd.shape[-1]
            moe_outp = fwd.view(-1, self.top_k, dim)
            gate_score = gate_score.view(-1, 1, self.top_k)
            moe_outp = torch.bmm(gate_score, moe_outp).reshape(-1, dim)
            return moe_outp

    return FMoE


def test_fastmoe_custom_scatter_gather_functions_match_torch():
    """The k slots' order of ``topk(sorted=False)`` is the kernel's own; the output and every
    gradient do not depend on it."""
    rng = np.random.default_rng(21)

    def run(lib, steps=3):
        model = weights_of(lib, lambda L: fastmoe(L)())
        opt = lib.optim.Adam(model.parameters(), lr=1e-2)
        rec = {"out": [], "grad": [], "w": []}
        for _ in range(steps):
            x = lib.tensor(rng.standard_normal((7, 6)), requires_grad=True)
            out = model(x)
            loss = (out * out).sum() + model.gate.loss.sum()
            opt.zero_grad()
            loss.backward()
            rec["out"].append(out)
            rec["grad"].append([grads(model), x.grad])
            opt.step()
            rec["w"].append(arrays(model.state_dict()))
        return rec

    state = rng.bit_generator.state
    ref = run(torch)
    rng.bit_generator.state = state
    assert_same(run(ng), ref)


# ============================ Soft MoE and CLIP's attention pooling ==========================

def soft_moe(lib):
    """lucidrains/soft-moe-pytorch: slots as dispatch-weighted averages of the tokens (softmax
    over the tokens), outputs as combine-weighted averages of the slots (softmax over all
    slots), key padding masked with ``-finfo.max``; and CLIP's ``AttentionPool2d``, which calls
    ``F.multi_head_attention_forward`` with separate projection weights."""
    torch = lib
    nn = lib.nn
    F = lib.nn.functional

    class LayerNorm(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(dim))
            self.register_buffer("beta", torch.zeros(dim))

        def forward(self, x):
            return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)

    class FeedForward(nn.Module):
        def __init__(self, dim, mult=4):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(),
                                     nn.Linear(dim * mult, dim))

        def forward(self, x):
            return self.net(x)

    class SoftMoE(nn.Module):
        def __init__(self, dim, *, num_experts=4, num_slots=2, expert_mult=2):
            super().__init__()
            self.norm = LayerNorm(dim)
            self.slot_norm = LayerNorm(dim)
            self.slot_embeds = nn.Parameter(torch.randn(num_experts, num_slots, dim))
            self.experts = nn.ModuleList([FeedForward(dim, expert_mult)
                                          for _ in range(num_experts)])

        def forward(self, x, mask=None):
            x = self.norm(x)
            slot_embeds = self.slot_norm(self.slot_embeds)
            logits = torch.einsum("b n d, e s d -> b n e s", x, slot_embeds)
            # account for key padding mask
            if mask is not None:
                mask = mask[:, :, None, None]  # rearrange(mask, 'b n -> b n 1 1')
                logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
            # get dispatch and combine weights (softmax across right dimensions)
            dispatch_weights = logits.softmax(dim=1)
            combine_weights = logits.flatten(2)  # rearrange(logits, 'b n e s -> b n (e s)')
            combine_weights = combine_weights.softmax(dim=-1)
            # derive slots by weighted average of input tokens using the dispatch weights
            slots = torch.einsum("b n d, b n e s -> b e s d", x, dispatch_weights)
            # route the slots per expert to each expert
            out = torch.stack([expert(slots[:, i]) for i, expert in enumerate(self.experts)],
                              dim=1)
            # combine back out
            out = out.flatten(1, 2)  # rearrange(out, ' b e s d -> b (e s) d')
            out = torch.einsum("b s d, b n s -> b n d", out, combine_weights)
            return out

    class AttentionPool2d(nn.Module):
        def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
            super().__init__()
            self.positional_embedding = nn.Parameter(
                torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
            self.k_proj = nn.Linear(embed_dim, embed_dim)
            self.q_proj = nn.Linear(embed_dim, embed_dim)
            self.v_proj = nn.Linear(embed_dim, embed_dim)
            self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
            self.num_heads = num_heads

        def forward(self, x):
            x = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
            x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1)NC
            x = x + self.positional_embedding[:, None, :].to(x.dtype)  # (HW+1)NC
            x, _ = F.multi_head_attention_forward(
                query=x[:1], key=x, value=x,
                embed_dim_to_check=x.shape[-1],
                num_heads=self.num_heads,
                q_proj_weight=self.q_proj.weight,
                k_proj_weight=self.k_proj.weight,
                v_proj_weight=self.v_proj.weight,
                in_proj_weight=None,
                in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
                bias_k=None,
                bias_v=None,
                add_zero_attn=False,
                dropout_p=0,
                out_proj_weight=self.c_proj.weight,
                out_proj_bias=self.c_proj.bias,
                use_separate_proj_weight=True,
                training=self.training,
                need_weights=False
            )
            return x.squeeze(0)

    return SoftMoE, AttentionPool2d


@pytest.mark.parametrize("which", ["soft_moe", "attention_pool"])
def test_soft_moe_and_clip_attention_pool_training_match_torch(which):
    rng = np.random.default_rng(22)

    def build(L):
        soft, pool = soft_moe(L)
        return soft(6) if which == "soft_moe" else pool(3, 8, 2, 5)

    def run(lib, steps=3):
        model = weights_of(lib, build)
        opt = lib.optim.AdamW(model.parameters(), lr=1e-2)
        rec = {"out": [], "grad": [], "w": []}
        for _ in range(steps):
            if which == "soft_moe":
                mask = np.ones((2, 5), bool)
                mask[1, 3:] = False
                out = model(lib.tensor(rng.standard_normal((2, 5, 6))), lib.tensor(mask))
            else:
                out = model(lib.tensor(rng.standard_normal((2, 8, 3, 3))))
            loss = out.square().mean()
            opt.zero_grad()
            loss.backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            rec["out"].append(out)
            rec["grad"].append(grads(model))
            opt.step()
            rec["w"].append(arrays(model.state_dict()))
        return rec

    state = rng.bit_generator.state
    ref = run(torch)
    rng.bit_generator.state = state
    assert_same(run(ng), ref)

# ============================ Reformer's reversible layers ===================================

def reversible(lib):
    """Reformer's reversible residual layers (reformer-pytorch): no activations kept in the
    forward (``no_grad``); the custom Function's backward walks the blocks in reverse,
    recomputing each input from its output and calling ``autograd.backward`` inside the
    backward on leaves made to require grad (``y1.requires_grad = True``)."""
    nn = lib.nn
    Function = lib.autograd.Function

    class ReversibleBlock(nn.Module):
        def __init__(self, f, g):
            super().__init__()
            self.f = f
            self.g = g

        def forward(self, x, f_args={}, g_args={}):  # noqa: B006
            x1, x2 = lib.chunk(x, 2, dim=2)
            y1, y2 = None, None
            with lib.no_grad():
                y1 = x1 + self.f(x2, **f_args)
                y2 = x2 + self.g(y1, **g_args)
            return lib.cat([y1, y2], dim=2)

        def backward_pass(self, y, dy, f_args={}, g_args={}):  # noqa: B006
            y1, y2 = lib.chunk(y, 2, dim=2)
            del y
            dy1, dy2 = lib.chunk(dy, 2, dim=2)
            del dy
            with lib.enable_grad():
                y1.requires_grad = True
                gy1 = self.g(y1, **g_args)
                lib.autograd.backward(gy1, dy2)
            with lib.no_grad():
                x2 = y2 - gy1
                del y2, gy1
                dx1 = dy1 + y1.grad
                del dy1
                y1.grad = None
            with lib.enable_grad():
                x2.requires_grad = True
                fx2 = self.f(x2, **f_args)
                lib.autograd.backward(fx2, dx1, retain_graph=True)
            with lib.no_grad():
                x1 = y1 - fx2
                del y1, fx2
                dx2 = dy2 + x2.grad
                del dy2
                x2.grad = None
                x = lib.cat([x1, x2.detach()], dim=2)
                dx = lib.cat([dx1, dx2], dim=2)
            return x, dx

    class _ReversibleFunction(Function):
        @staticmethod
        def forward(ctx, x, blocks, kwargs):
            ctx.kwargs = kwargs
            for block in blocks:
                x = block(x, **kwargs)
            ctx.y = x.detach()
            ctx.blocks = blocks
            return x

        @staticmethod
        def backward(ctx, dy):
            y = ctx.y
            kwargs = ctx.kwargs
            for block in ctx.blocks[::-1]:
                y, dy = block.backward_pass(y, dy, **kwargs)
            return dy, None, None

    class ReversibleSequence(nn.Module):
        def __init__(self, blocks):
            super().__init__()
            self.blocks = nn.ModuleList([ReversibleBlock(f, g) for f, g in blocks])

        def forward(self, x, **kwargs):
            x = lib.cat([x, x], dim=-1)
            out = _ReversibleFunction.apply(x, self.blocks, {})
            return lib.stack(out.chunk(2, dim=-1)).mean(dim=0)

    class Plain(nn.Module):
        """The same network with ordinary autograd (activations kept)."""

        def __init__(self, rev):
            super().__init__()
            self.rev = rev

        def forward(self, x):
            x = lib.cat([x, x], dim=-1)
            for b in self.rev.blocks:
                x1, x2 = x.chunk(2, dim=2)
                y1 = x1 + b.f(x2)
                y2 = x2 + b.g(y1)
                x = lib.cat([y1, y2], dim=2)
            return lib.stack(x.chunk(2, dim=-1)).mean(dim=0)

    def build():
        def mk():
            return nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
        return ReversibleSequence([(mk(), mk()) for _ in range(2)])

    return build, Plain


def test_reformer_reversible_layers_match_torch_and_plain_autograd():
    x_np = np.random.default_rng(23).standard_normal((2, 3, 4))

    def run(lib):
        build, Plain = reversible(lib)
        model = weights_of(lib, lambda L: reversible(L)[0]())
        rec = {}
        for name, net in (("reversible", model), ("plain", Plain(model))):
            model.zero_grad()
            x = lib.tensor(x_np, requires_grad=True)
            out = net(x)
            (out ** 2).sum().backward()
            rec[name] = [out, x.grad, grads(model)]
        return rec

    got = both(run)
    assert_same(got["reversible"], got["plain"], 1e-12)

# ============================ regressions ====================================================

def test_top_level_dropout_forms_take_torchs_train_argument():
    """``torch.dropout(x, p, train=True)`` (the reference implementation of SDPA in PyTorch's
    documentation writes it so), ``alpha_dropout``/``feature_alpha_dropout`` likewise, and
    the top-level ``layer_norm``/``group_norm``/``rrelu`` with torch's positional arguments."""
    x = np.random.default_rng(19).standard_normal((2, 4, 3))

    def run(lib):
        t = lib.tensor(x)
        w, b = lib.linspace(0.5, 1.5, 3), lib.linspace(-0.1, 0.1, 3)
        return {"dropout": [lib.dropout(t, 0.0, train=True), lib.dropout(t, 0.5, False),
                            lib.dropout(t, p=0.3, train=False)],
                "alpha": [lib.alpha_dropout(t, 0.5, train=False),
                          lib.feature_alpha_dropout(t, 0.5, False)],
                "layer_norm": lib.layer_norm(t, (3,), w, b, 1e-5, True),
                "group_norm": lib.group_norm(t, 2, lib.ones(4), lib.zeros(4), 1e-5, True),
                "rrelu": lib.rrelu(t, 0.1, 0.3, False, None)}

    both(run)
    t = ng.tensor(x)
    kept = ng.dropout(t, 0.5, train=True)
    assert set(np.round(kept.numpy() / x, 12).ravel()) <= {0.0, 2.0}
    with pytest.raises(TypeError):
        ng.dropout(t, 0.5, training=True)  # nn.functional's keyword is not torch.dropout's


def test_numpy_integers_serve_as_dims_and_sizes():
    """NumPy integers (``np.argmax(...)``, ``np.prod(shape)``, ``.astype(int)`` widths) are
    ints to PyTorch wherever it takes a dim or a size; ``transpose`` of two of them swapped
    nothing (read as NumPy's permutation)."""
    n = np.int64
    x = np.arange(24.0).reshape(2, 3, 4)

    def run(lib):
        t = lib.tensor(x)
        F = lib.nn.functional
        return {"transpose": [t.transpose(n(0), n(2)), t[0].transpose(n(0), n(1)), t.flip(n(0))],
                "reduce": [t.sum(n(1)), t.mean(n(0)), t.amax(n(2)), t.argmax(n(1)),
                           t.logsumexp(n(0)), lib.sum(t, n(2)),
                           t.std(n(0)), F.normalize(t, dim=n(1))],
                "squeeze": t[None].squeeze(n(0)),
                "chunk": [t.chunk(n(2), 2), lib.chunk(t, n(3), dim=1), t.chunk(lib.tensor(2))],
                "roll_movedim": [t.roll(n(1), n(2)), t.movedim(n(0), 2)],
                "layer_norm": lib.nn.LayerNorm(n(4))(t),
                "functional": [F.max_pool1d(t, n(2)), F.interpolate(t, size=n(8)),
                               F.adaptive_avg_pool1d(t, n(3)), F.layer_norm(t, (n(4),))]}

    both(run)


def test_backends_cuda_attention_kernel_switches_match_torch():
    """``torch.backends.cuda.enable_flash_sdp(False)`` and friends, the deprecated
    ``sdp_kernel(...)`` block (a FutureWarning) and ``nn.attention.sdpa_kernel`` read and set
    the same switches, as PyTorch's; nodegrad's one math kernel computes whatever is set."""
    def run(lib):
        b = lib.backends.cuda
        from importlib import import_module
        attention = import_module(f"{lib.__name__}.nn.attention")
        state = lambda: [b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(),  # noqa: E731
                         b.math_sdp_enabled(), b.cudnn_sdp_enabled()]
        rec = [state()]
        b.enable_flash_sdp(False)
        b.enable_cudnn_sdp(False)
        rec.append(state())
        b.enable_flash_sdp(True)
        b.enable_cudnn_sdp(True)
        with pytest.warns(FutureWarning):
            with b.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False):
                rec.append(state())
        with attention.sdpa_kernel(attention.SDPBackend.MATH):
            rec.append(state())
            b.enable_mem_efficient_sdp(True)
            rec.append(state())
        rec.append(state())
        q = lib.ones(1, 1, 2, 2)
        rec.append(lib.nn.functional.scaled_dot_product_attention(q, q, q))
        return rec

    both(run)
    with pytest.raises(TypeError, match="expects a bool"):
        ng.backends.cuda.enable_math_sdp(1)



def test_shape_functions_take_torchs_keywords():
    """``x.expand(size=)``, ``torch.permute(x, dims=)`` and ``torch.broadcast_to(x, size=)``
    (NumPy's ``shape`` still works for the top-level broadcast_to)."""
    x = np.arange(6.0).reshape(1, 2, 3)

    def run(lib):
        t = lib.tensor(x)
        return [t.expand(size=(2, 2, 3)), lib.permute(t, dims=(2, 0, 1)),
                lib.broadcast_to(t, size=(4, 2, 3))]

    both(run)
    assert tuple(ng.broadcast_to(ng.tensor(x), shape=(4, 2, 3)).shape) == (4, 2, 3)
    with pytest.raises(TypeError, match="not both"):
        ng.ones(1, 3).expand(2, 3, size=(2, 3))
    with pytest.raises(TypeError, match="not both"):
        ng.permute(ng.tensor(x), 2, 0, 1, dims=(2, 0, 1))
    with pytest.raises(TypeError, match="once"):
        ng.broadcast_to(ng.tensor(x), (4, 2, 3), size=(4, 2, 3))
