"""State-space and linear-recurrence sequence models, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) the way the
papers' reference code writes it in PyTorch: S4D (complex diagonal state, a Vandermonde kernel,
FFT convolution), Mamba's ``selective_scan_ref`` and its chunked form, RWKV-4 time and channel
mixing, RetNet retention in its three forms, linear attention, Performer and Linformer, the
LRU, and Hyena's long convolutions. Both libraries start from PyTorch's seeded weights and see
the same data, so losses, gradients (complex ones in PyTorch's conjugate convention) and
parameters agree step by step, and the recurrent and parallel forms agree with each other.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = {"float64": 1e-9, "float32": 2e-4}


# --- shared pieces: weights, records -----------------------------------------------------------
def torch_init(build, dtype: str, seed: int = 0, cast: bool = True) -> dict:
    """PyTorch's seeded initial state of ``build(torch)`` in ``dtype`` as NumPy arrays (built
    under that default dtype; ``cast=False`` for complex parameters, which PyTorch's
    ``Module.to(float dtype)`` would make real)."""
    torch.manual_seed(seed)
    with default_dtype(torch, dtype):
        model = build(torch)
    if cast:
        model = model.to(getattr(torch, dtype))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class default_dtype:
    """``lib``'s default float dtype set to ``dtype`` for a block."""

    def __init__(self, lib, dtype: str):
        self.lib, self.dtype = lib, getattr(lib, dtype)

    def __enter__(self):
        self.before = self.lib.get_default_dtype()
        self.lib.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        self.lib.set_default_dtype(self.before)


def load_init(model, init: dict, lib) -> None:
    """Load PyTorch's initial state into ``model``; nodegrad's state dict must match it key for
    key (names, order, shapes, dtypes)."""
    if lib is ng:
        mine = model.state_dict()
        assert list(mine) == list(init)
        assert [tuple(v.shape) for v in mine.values()] == [v.shape for v in init.values()]
        assert [str(v.dtype).split(".")[-1] for v in mine.values()] == \
            [str(v.dtype) for v in init.values()]
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})


def carr(x):
    """A tensor (complex allowed) as a float64 NumPy array, complex ones as (..., 2) pairs."""
    a = np.array(x.detach().resolve_conj().numpy() if hasattr(x, "resolve_conj")
                 else x.detach().numpy())
    if np.iscomplexobj(a):
        return np.stack([a.real, a.imag], -1).astype(np.float64)
    return a.astype(np.float64)


def grads(model) -> dict:
    return {k: carr(p.grad) for k, p in model.named_parameters() if p.grad is not None}


def state(model) -> dict:
    return {k: carr(v) for k, v in model.state_dict().items()}


def both(script, build, dtype="float64", tol=None, cast=True, **kw):
    """``script`` with PyTorch and with nodegrad from the same initial weights; their records
    (losses, gradients, parameters, extra values) must agree."""
    init = torch_init(build, dtype, cast=cast)
    ref = script(torch, build, init, dtype, **kw)
    got = script(ng, build, init, dtype, **kw)
    assert_same(got, ref, tol or TOL[dtype])
    return got


def data(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --- 1. S4D: complex diagonal kernel, FFT convolution, per-parameter optimiser groups -----------
def s4d_build(lib, d_input=3, d_model=8, d_state=8, n_layers=2, d_output=4):
    nn = lib.nn

    class S4DKernel(nn.Module):
        """Generate convolution kernel from diagonal SSM parameters (state-spaces/s4, s4d.py)."""

        def __init__(self, d_model, N=64, dt_min=0.001, dt_max=0.1, lr=None):
            super().__init__()
            H = d_model
            log_dt = lib.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            C = lib.randn(H, N // 2, dtype=lib.cfloat)
            self.C = nn.Parameter(lib.view_as_real(C))
            self.register("log_dt", log_dt, lr)
            log_A_real = lib.log(0.5 * lib.ones(H, N // 2))
            A_imag = math.pi * lib.arange(N // 2).unsqueeze(0).repeat(H, 1)
            self.register("log_A_real", log_A_real, lr)
            self.register("A_imag", A_imag, lr)

        def forward(self, L):
            dt = lib.exp(self.log_dt)  # (H)
            C = lib.view_as_complex(self.C)  # (H N)
            A = -lib.exp(self.log_A_real) + 1j * self.A_imag  # (H N)
            dtA = A * dt.unsqueeze(-1)  # (H N)
            K = dtA.unsqueeze(-1) * lib.arange(L, device=A.device)  # (H N L)
            C = C * (lib.exp(dtA) - 1.) / A
            K = 2 * lib.einsum('hn, hnl -> hl', C, lib.exp(K)).real
            return K

        def register(self, name, tensor, lr=None):
            """Register a tensor with a configurable learning rate and 0 weight decay."""
            if lr == 0.0:
                self.register_buffer(name, tensor)
            else:
                self.register_parameter(name, nn.Parameter(tensor))
                optim = {"weight_decay": 0.0}
                if lr is not None:
                    optim["lr"] = lr
                setattr(getattr(self, name), "_optim", optim)  # noqa: B010

    class S4D(nn.Module):
        def __init__(self, d_model, d_state=64, dropout=0.0, transposed=True, **kernel_args):
            super().__init__()
            self.h = d_model
            self.n = d_state
            self.d_output = self.h
            self.transposed = transposed
            self.D = nn.Parameter(lib.randn(self.h))
            self.kernel = S4DKernel(self.h, N=self.n, **kernel_args)
            self.activation = nn.GELU()
            self.dropout = nn.Dropout1d(dropout) if dropout > 0.0 else nn.Identity()
            self.output_linear = nn.Sequential(
                nn.Conv1d(self.h, 2 * self.h, kernel_size=1),
                nn.GLU(dim=-2),
            )

        def forward(self, u, **kwargs):
            if not self.transposed:
                u = u.transpose(-1, -2)
            L = u.size(-1)
            k = self.kernel(L=L)  # (H L)
            k_f = lib.fft.rfft(k, n=2 * L)  # (H L)
            u_f = lib.fft.rfft(u, n=2 * L)  # (B H L)
            y = lib.fft.irfft(u_f * k_f, n=2 * L)[..., :L]  # (B H L)
            y = y + u * self.D.unsqueeze(-1)
            y = self.dropout(self.activation(y))
            y = self.output_linear(y)
            if not self.transposed:
                y = y.transpose(-1, -2)
            return y, None

    class S4Model(nn.Module):
        def __init__(self, prenorm=False):
            super().__init__()
            self.prenorm = prenorm
            self.encoder = nn.Linear(d_input, d_model)
            self.s4_layers = nn.ModuleList()
            self.norms = nn.ModuleList()
            self.dropouts = nn.ModuleList()
            for _ in range(n_layers):
                self.s4_layers.append(S4D(d_model, d_state=d_state, dropout=0.0,
                                          transposed=True, lr=0.001))
                self.norms.append(nn.LayerNorm(d_model))
                self.dropouts.append(nn.Identity())
            self.decoder = nn.Linear(d_model, d_output)

        def forward(self, x):
            x = self.encoder(x)  # (B, L, d_input) -> (B, L, d_model)
            x = x.transpose(-1, -2)  # (B, L, d_model) -> (B, d_model, L)
            for layer, norm, dropout in zip(self.s4_layers, self.norms, self.dropouts):
                z = x
                if self.prenorm:
                    z = norm(z.transpose(-1, -2)).transpose(-1, -2)
                z, _ = layer(z)
                z = dropout(z)
                x = z + x
                if not self.prenorm:
                    x = norm(x.transpose(-1, -2)).transpose(-1, -2)
            x = x.transpose(-1, -2)
            x = x.mean(dim=1)
            x = self.decoder(x)
            return x

    return S4Model()


def setup_optimizer(lib, model, lr, weight_decay, epochs):
    """S4's example.py: special hyperparameters for the SSM parameters, a cosine schedule."""
    all_parameters = list(model.parameters())
    params = [p for p in all_parameters if not hasattr(p, "_optim")]
    optimizer = lib.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    hps = [getattr(p, "_optim") for p in all_parameters if hasattr(p, "_optim")]  # noqa: B009
    hps = [dict(s) for s in sorted(list(dict.fromkeys(frozenset(hp.items()) for hp in hps)))]
    for hp in hps:
        params = [p for p in all_parameters if getattr(p, "_optim", None) == hp]
        optimizer.add_param_group({"params": params, **hp})
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    groups = [(len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    return optimizer, scheduler, groups


def s4d_script(lib, build, init, dtype, steps=5):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    # hps set in __init__ stay on the parameters load_state_dict copied into
    optimizer, scheduler, groups = setup_optimizer(lib, model, 0.01, 0.01, steps)
    x = lib.tensor(data(4, 16, 3), dtype=dt)
    y = lib.tensor([0, 1, 2, 3])
    criterion = lib.nn.CrossEntropyLoss()
    rec = {"groups": groups, "loss": [], "lr": [], "norm": []}
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        rec["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        optimizer.step()
        scheduler.step()
        rec["loss"].append(loss.item())
        rec["lr"].append(scheduler.get_last_lr())
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_s4d_trains_as_torch(dtype):
    rec = both(s4d_script, s4d_build, dtype)
    assert rec["groups"] == [(16, 0.01, 0.01), (6, 0.001, 0.0)]


def test_complex_randn_and_rand_draw_both_parts_as_torch():
    """``randn(..., dtype=cfloat)`` (S4D's C): parts of variance 1/2 each, so E|z|^2 = 1;
    ``rand`` complex: both parts uniform on [0, 1)."""
    ng.manual_seed(0)
    z = ng.randn(4000, dtype=ng.cfloat)
    assert z.dtype == ng.complex64 and ng.randn(2, dtype=ng.cdouble).dtype == ng.complex128
    assert abs((z.abs() ** 2).mean().item() - 1) < 0.1
    assert abs(z.real.var().item() - 0.5) < 0.05 and abs(z.imag.var().item() - 0.5) < 0.05
    u = ng.rand(4000, dtype=ng.cdouble)
    assert 0 <= u.real.min().item() and u.imag.max().item() < 1 and u.imag.mean().item() > 0.4
    assert ng.randn_like(z).dtype == ng.complex64 and ng.rand_like(u).shape == (4000,)
    with pytest.raises(ng.errors.DTypeError, match="randn"):
        ng.randn(2, dtype=ng.int64)


def test_parameter_keeps_user_attributes():
    """Optimiser setups tag parameters (S4's ``_optim``, Mamba's ``_no_weight_decay``); the tag
    stays through ``to`` and ``load_state_dict``."""
    for lib in (torch, ng):
        lin = lib.nn.Linear(2, 2)
        lin.weight._no_weight_decay = True
        lin.to(lib.float64)
        lin.load_state_dict({k: v.clone() for k, v in lin.state_dict().items()})
        decay = [n for n, p in lin.named_parameters() if not getattr(p, "_no_weight_decay", 0)]
        assert decay == ["bias"]


# --- 2. Mamba: selective_scan_ref, a minimal Mamba LM, Mamba-2's chunked SSD --------------------
def selective_scan_ref(lib, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, return_last_state=False):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_ref (einops written out).

    u: (B D L), delta: (B D L), A: (D N), B/C: (D N) or (B N L) or (B G N L) (complex A: real
    pairs 2N), D: (D), z: (B D L), delta_bias: (D) -> out: (B D L), last_state: (B D N)."""
    F = lib.nn.functional
    dtype_in = u.dtype
    u = u.to(A.real.dtype)
    delta = delta.to(u.dtype)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(u.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    if A.is_complex():
        if is_variable_B:
            B = lib.view_as_complex(B.reshape(*B.shape[:-2], -1, 2, B.shape[-1])
                                    .transpose(-1, -2).contiguous())
        if is_variable_C:
            C = lib.view_as_complex(C.reshape(*C.shape[:-2], -1, 2, C.shape[-1])
                                    .transpose(-1, -2).contiguous())
    else:
        B = B.to(u.dtype)
        C = C.to(u.dtype)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = lib.exp(lib.einsum('bdl,dn->bdln', delta, A))
    if not is_variable_B:
        deltaB_u = lib.einsum('bdl,dn,bdl->bdln', delta, B, u)
    else:
        if B.dim() == 3:
            deltaB_u = lib.einsum('bdl,bnl,bdl->bdln', delta, B, u)
        else:
            B = B.repeat_interleave(dim // B.shape[1], dim=1)
            deltaB_u = lib.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if not is_variable_C:
            y = lib.einsum('bdn,dn->bd', x, C)
        else:
            if C.dim() == 3:
                y = lib.einsum('bdn,bn->bd', x, C[:, :, i])
            else:
                y = lib.einsum('bdn,bdn->bd', x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        if y.is_complex():
            y = y.real * 2
        ys.append(y)
    y = lib.stack(ys, dim=2)  # (batch dim L)
    out = y if D is None else y + u * D.unsqueeze(-1)
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


def _scan_inputs(lib, complex_a: bool, groups: int | None, seed=0):
    r = np.random.default_rng(seed)
    b, d, n, L = 2, 4, 3, 5
    t = lambda *s: lib.tensor(r.standard_normal(s), requires_grad=True)  # noqa: E731
    if complex_a:
        A = lib.complex(-lib.tensor(r.uniform(0.5, 1.5, (d, n))),
                        lib.tensor(r.standard_normal((d, n))))
        A.requires_grad_()
        n2 = 2 * n
    else:
        A, n2 = (-lib.tensor(r.uniform(0.5, 1.5, (d, n)))).requires_grad_(), n
    shape = (b, n2, L) if groups is None else (b, groups, n2, L)
    return dict(u=t(b, d, L), delta=t(b, d, L), A=A, B=t(*shape), C=t(*shape), D=t(d),
                z=t(b, d, L), delta_bias=t(d))


@pytest.mark.parametrize("complex_a,groups", [(False, None), (False, 2), (True, None),
                                              (True, 2)])
def test_selective_scan_ref_values_and_gradients_match_torch(complex_a, groups):
    def run(lib):
        kw = _scan_inputs(lib, complex_a, groups)
        out, last = selective_scan_ref(lib, delta_softplus=True, return_last_state=True, **kw)
        loss = (out ** 2).sum() + (last.abs() ** 2).sum()
        loss.backward()
        return [out, carr(last)] + [carr(v.grad) for v in kw.values()]

    assert_same(run(ng), run(torch), 1e-10)


def mamba_build(lib, d_model=8, n_layer=2, vocab_size=11, d_state=4, expand=2, d_conv=3):
    """johnma2006/mamba-minimal's Mamba with mamba_ssm's parameter initialisation."""
    nn, F = lib.nn, lib.nn.functional
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)

    class RMSNorm(nn.Module):
        def __init__(self, d_model: int, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(lib.ones(d_model))

        def forward(self, x):
            return x * lib.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class MambaBlock(nn.Module):
        def __init__(self, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_scale=1.0):
            super().__init__()
            self.in_proj = nn.Linear(d_model, d_inner * 2, bias=False)
            self.conv1d = nn.Conv1d(in_channels=d_inner, out_channels=d_inner, bias=True,
                                    kernel_size=d_conv, groups=d_inner, padding=d_conv - 1)
            self.x_proj = nn.Linear(d_inner, dt_rank + d_state * 2, bias=False)
            self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
            dt_init_std = dt_rank ** -0.5 * dt_scale
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = lib.exp(lib.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
                         + math.log(dt_min)).clamp(min=dt_init_floor)
            inv_dt = dt + lib.log(-lib.expm1(-dt))  # inverse of softplus
            with lib.no_grad():
                self.dt_proj.bias.copy_(inv_dt)
            self.dt_proj.bias._no_reinit = True
            A = lib.arange(1, d_state + 1, dtype=lib.float32).repeat(d_inner, 1).contiguous()
            self.A_log = nn.Parameter(lib.log(A))
            self.A_log._no_weight_decay = True
            self.D = nn.Parameter(lib.ones(d_inner))
            self.D._no_weight_decay = True
            self.out_proj = nn.Linear(d_inner, d_model, bias=False)

        def forward(self, x):
            (b, l, d) = x.shape
            x_and_res = self.in_proj(x)  # (b, l, 2 * d_in)
            (x, res) = x_and_res.split(split_size=[d_inner, d_inner], dim=-1)
            x = x.permute(0, 2, 1)
            x = self.conv1d(x)[:, :, :l]
            x = x.permute(0, 2, 1)
            x = F.silu(x)
            y = self.ssm(x)
            y = y * F.silu(res)
            return self.out_proj(y)

        def ssm(self, x):
            (d_in, n) = self.A_log.shape
            A = -lib.exp(self.A_log)  # (d_in, n); the reference's .float() would mix dtypes
            D = self.D
            x_dbl = self.x_proj(x)  # (b, l, dt_rank + 2*n)
            (delta, B, C) = x_dbl.split(split_size=[dt_rank, n, n], dim=-1)
            delta = F.softplus(self.dt_proj(delta))  # (b, l, d_in)
            return self.selective_scan(x, delta, A, B, C, D)

        def step(self, hidden_states, conv_state, ssm_state):
            """mamba_simple.py's one-token decoding step: the conv window rolled in place, the
            SSM state updated in place."""
            dtype = hidden_states.dtype
            assert hidden_states.shape[1] == 1, "Only support decoding with 1 token at a time"
            xz = self.in_proj(hidden_states.squeeze(1))  # (B 2D)
            x, z = xz.chunk(2, dim=-1)  # (B D)
            conv_state.copy_(lib.roll(conv_state, shifts=-1, dims=-1))  # (B D W)
            conv_state[:, :, -1] = x
            x = lib.sum(conv_state * self.conv1d.weight.squeeze(1), dim=-1)  # (B D)
            x = x + self.conv1d.bias
            x = F.silu(x).to(dtype=dtype)
            x_db = self.x_proj(x)  # (B dt_rank+2*d_state)
            dt, B, C = lib.split(x_db, [dt_rank, d_state, d_state], dim=-1)
            dt = F.linear(dt, self.dt_proj.weight)  # (B d_inner), dt_bias added below
            A = -lib.exp(self.A_log)  # (d_inner, d_state)
            dt = F.softplus(dt + self.dt_proj.bias.to(dtype=dt.dtype))
            dA = lib.exp(lib.einsum("bd,dn->bdn", dt, A))
            dB = lib.einsum("bd,bn->bdn", dt, B)
            ssm_state.copy_(ssm_state * dA + x.unsqueeze(-1) * dB)
            y = lib.einsum("bdn,bn->bd", ssm_state.to(dtype), C)
            y = y + self.D.to(dtype) * x
            y = y * F.silu(z)  # (B D)
            out = self.out_proj(y)
            return out.unsqueeze(1), conv_state, ssm_state

        def selective_scan(self, u, delta, A, B, C, D):
            (b, l, d_in) = u.shape
            deltaA = lib.exp(lib.einsum('bld,dn->bldn', delta, A))
            deltaB_u = lib.einsum('bld,bln,bld->bldn', delta, B, u)
            x = lib.zeros((b, d_in, A.shape[1]), device=deltaA.device, dtype=u.dtype)
            ys = []
            for i in range(l):
                x = deltaA[:, i] * x + deltaB_u[:, i]
                y = lib.einsum('bdn,bn->bd', x, C[:, i, :])
                ys.append(y)
            y = lib.stack(ys, dim=1)  # (b, l, d_in)
            return y + u * D

    class ResidualBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = MambaBlock()
            self.norm = RMSNorm(d_model)

        def forward(self, x):
            return self.mixer(self.norm(x)) + x

        def step(self, x, conv_state, ssm_state):
            out, _, _ = self.mixer.step(self.norm(x), conv_state, ssm_state)
            return out + x

    class Mamba(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, d_model)
            self.layers = nn.ModuleList([ResidualBlock() for _ in range(n_layer)])
            self.norm_f = RMSNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
            self.lm_head.weight = self.embedding.weight  # tie output projection to embedding

        def forward(self, input_ids):
            x = self.embedding(input_ids)
            for layer in self.layers:
                x = layer(x)
            x = self.norm_f(x)
            return self.lm_head(x)

        @lib.no_grad()
        def generate(self, input_ids, max_new_tokens):
            """Greedy decoding with the recurrent step: the prompt is fed token by token into
            the per-layer states, then each new token; returns the ids and every step's
            logits."""
            b = input_ids.shape[0]
            dt = self.embedding.weight.dtype
            states = [(lib.zeros(b, d_inner, d_conv, dtype=dt),
                       lib.zeros(b, d_inner, d_state, dtype=dt)) for _ in self.layers]
            ids, logits = input_ids, []
            for t in range(input_ids.shape[1] + max_new_tokens - 1):
                x = self.embedding(ids[:, t:t + 1])
                for layer, (conv_state, ssm_state) in zip(self.layers, states):
                    x = layer.step(x, conv_state, ssm_state)
                logits.append(self.lm_head(self.norm_f(x)))
                if t + 1 >= ids.shape[1]:
                    ids = lib.cat([ids, logits[-1].argmax(-1)], dim=1)
            return ids, lib.cat(logits, dim=1)

    return Mamba()


def mamba_script(lib, build, init, dtype, steps=4):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # noqa: B007
        (no_decay if getattr(p, "_no_weight_decay", False) or p.ndim < 2 else decay).append(p)
    opt = lib.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                           {"params": no_decay, "weight_decay": 0.0}], lr=3e-3,
                          betas=(0.9, 0.95))
    ids = lib.tensor(np.random.default_rng(0).integers(0, 11, (3, 9)))
    rec = {"groups": [len(decay), len(no_decay)], "loss": [], "norm": []}
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = lib.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                               ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        rec["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())
        opt.step()
        rec["loss"].append(loss.item())
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mamba_lm_trains_as_torch(dtype):
    rec = both(mamba_script, mamba_build, dtype)
    assert rec["groups"] == [11, 11]


def segsum(lib, x):
    """Mamba-2's stable segment sum: exp(segsum(A)) is the 1-semiseparable decay mask."""
    T = x.size(-1)
    x = x.unsqueeze(-1).expand(*x.shape, T)
    mask = lib.tril(lib.ones(T, T, device=x.device, dtype=bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    x_segsum = lib.cumsum(x, dim=-2)
    mask = lib.tril(lib.ones(T, T, device=x.device, dtype=bool), diagonal=0)
    x_segsum = x_segsum.masked_fill(~mask, -lib.inf)
    return x_segsum


def ssd_minimal_discrete(lib, X, A, B, C, block_len, initial_states=None):
    """Mamba-2's ssd_minimal.py: X (b, l, h, p), A (b, l, h), B/C (b, l, h, n)."""
    F = lib.nn.functional
    assert X.dtype == A.dtype == B.dtype == C.dtype
    assert X.shape[1] % block_len == 0
    X, A, B, C = [x.reshape(x.shape[0], -1, block_len, *x.shape[2:]) for x in (X, A, B, C)]
    A = A.permute(0, 3, 1, 2)  # b c l h -> b h c l
    A_cumsum = lib.cumsum(A, dim=-1)
    # 1. the output of each intra-chunk (diagonal blocks)
    L = lib.exp(segsum(lib, A))
    Y_diag = lib.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    # 2. the state of each intra-chunk
    decay_states = lib.exp((A_cumsum[:, :, :, -1:] - A_cumsum))  # noqa: UP034
    states = lib.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    # 3. the inter-chunk SSM recurrence
    if initial_states is None:
        initial_states = lib.zeros_like(states[:, :1])
    states = lib.cat([initial_states, states], dim=1)
    decay_chunk = lib.exp(segsum(lib, F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = lib.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    # 4. state -> output per chunk
    state_decay_out = lib.exp(A_cumsum)
    Y_off = lib.einsum('bclhn,bchpn,bhcl->bclhp', C, states, state_decay_out)
    Y = (Y_diag + Y_off).flatten(1, 2)
    return Y, final_state


def _ssd_inputs(lib, seed=0):
    r = np.random.default_rng(seed)
    b, L, h, p, n = 2, 8, 2, 3, 4
    X, B, C = (lib.tensor(r.standard_normal(s), requires_grad=True)
               for s in [(b, L, h, p), (b, L, h, n), (b, L, h, n)])
    dt = lib.nn.functional.softplus(lib.tensor(r.standard_normal((b, L, h)) - 1))
    A_log = lib.tensor(r.standard_normal(h) * 0.3, requires_grad=True)
    A = -lib.exp(A_log) * dt  # the discretised decay, (b, l, h)
    return X, A, B, C, A_log


@pytest.mark.parametrize("block_len", [2, 4, 8])
def test_mamba2_chunked_ssd_matches_its_recurrence_and_torch(block_len):
    def run(lib):
        X, A, B, C, A_log = _ssd_inputs(lib)
        Y, final = ssd_minimal_discrete(lib, X, A, B, C, block_len)
        # the same SSM as a sequential recurrence h_t = exp(A_t) h_{t-1} + B_t x_t^T
        h = lib.zeros(2, 2, 3, 4, dtype=lib.float64)
        ys = []
        for t in range(X.shape[1]):
            h = lib.exp(A[:, t])[..., None, None] * h + \
                lib.einsum("bhp,bhn->bhpn", X[:, t], B[:, t])
            ys.append(lib.einsum("bhpn,bhn->bhp", h, C[:, t]))
        rec = lib.stack(ys, 1)
        assert_same(Y, rec, 1e-10)
        assert_same(final, h, 1e-10)
        (Y.sin().sum() + final.square().sum()).backward()
        return [Y, final, X.grad, B.grad, C.grad, A_log.grad]

    assert_same(run(ng), run(torch), 1e-10)


def parallel_scan_log(lib, log_coeffs, log_values):
    """Heinsen's scan in log space (minGRU's): h_t = a_t h_{t-1} + b_t by cumsum and
    logcumsumexp. log_coeffs (b, L, d), log_values (b, L + 1, d) with h_0 first."""
    F = lib.nn.functional
    a_star = F.pad(lib.cumsum(log_coeffs, dim=1), (0, 0, 1, 0))
    log_h0_plus_b_star = lib.logcumsumexp(log_values - a_star, dim=1)
    log_h = a_star + log_h0_plus_b_star
    return lib.exp(log_h)[:, 1:]


def complex_log(lib, input, eps=1e-12):
    """The log of a real tensor with negative entries: log|x| + i*pi where x < 0."""
    eps = input.new_tensor(eps)
    real = input.abs().maximum(eps).log()
    imag = (input < 0).to(input.dtype) * math.pi
    return lib.complex(real, imag)


def test_mingru_log_space_scan_matches_sequential_and_torch():
    """minGRU in parallel (real logs, g(x) > 0) and Heinsen's scan of signed values through a
    complex log: both equal the loop, gradients equal PyTorch's."""
    def run(lib):
        F = lib.nn.functional
        r = np.random.default_rng(0)
        k, hid = (lib.tensor(r.standard_normal((2, 6, 3)), requires_grad=True)
                  for _ in range(2))
        h0 = lib.tensor(r.uniform(0.5, 1, (2, 1, 3)))

        def g(x):
            return lib.where(x >= 0, x + 0.5, lib.sigmoid(x))

        def log_g(x):
            return lib.where(x >= 0, (F.relu(x) + 0.5).log(), -F.softplus(-x))

        log_z = -F.softplus(-k)
        log_coeffs = -F.softplus(k)
        log_values = lib.cat([h0.log(), log_z + log_g(hid)], dim=1)
        h = parallel_scan_log(lib, log_coeffs, log_values)
        z = lib.sigmoid(k)
        ht, seq = h0[:, 0], []
        for t in range(6):
            ht = (1 - z[:, t]) * ht + z[:, t] * g(hid[:, t])
            seq.append(ht)
        assert_same(h, lib.stack(seq, 1), 1e-10)
        # signed values: the complex log and logcumsumexp of complex numbers
        b = lib.tensor(r.standard_normal((2, 6, 3)), requires_grad=True)
        a = lib.tensor(r.uniform(0.3, 0.9, (2, 6, 3)), requires_grad=True)
        lv = lib.cat([complex_log(lib, h0[..., :3] * 0 + 1e-30), complex_log(lib, b)], 1)
        hs = parallel_scan_log(lib, lib.complex(a.log(), lib.zeros_like(a)), lv).real
        ht, seq = 0, []
        for t in range(6):
            ht = a[:, t] * ht + b[:, t]
            seq.append(ht)
        assert_same(hs, lib.stack(seq, 1), 1e-9)
        (h.square().sum() + hs.square().sum()).backward()
        return [h, hs, k.grad, hid.grad, a.grad, b.grad]

    assert_same(run(ng), run(torch), 1e-10)


# --- 3. RWKV-4: time mixing (WKV with the max trick), channel mixing, L2Wrap --------------------
def wkv(lib, w, u, k, v):
    """RWKV-4's WKV (the CUDA kernel's loop, one step per token): numerically stable through
    the running maximum exponent ``p``. w = -exp(time_decay), u = time_first; k, v (B, T, C)."""
    B, T, C = k.shape
    aa = lib.zeros(B, C, dtype=k.dtype)
    bb = lib.zeros(B, C, dtype=k.dtype)
    pp = lib.full((B, C), -1e38, dtype=k.dtype)
    ys = []
    for t in range(T):
        kk, vv = k[:, t], v[:, t]
        ww = u + kk
        p = lib.maximum(pp, ww)
        e1 = lib.exp(pp - p)
        e2 = lib.exp(ww - p)
        ys.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
        ww = w + pp
        p = lib.maximum(ww, kk)
        e1 = lib.exp(ww - p)
        e2 = lib.exp(kk - p)
        aa = e1 * aa + e2 * vv
        bb = e1 * bb + e2
        pp = p
    return lib.stack(ys, dim=1)


def wkv_parallel(lib, w, u, k, v):
    """The same WKV as one masked sum ("GPT mode"): weight exp(k_i + (t-1-i) w) for i < t and
    exp(u + k_t) for i = t."""
    T = k.shape[1]
    t = lib.arange(T, dtype=k.dtype)
    dist = (t.view(-1, 1) - 1 - t.view(1, -1))  # (t, i)
    logits = dist.unsqueeze(-1) * w + k.unsqueeze(1)  # (B, t, i, C)
    logits = logits.masked_fill((dist < 0).unsqueeze(-1), -math.inf)
    diag = lib.eye(T, dtype=bool).unsqueeze(-1)
    logits = lib.where(diag, (u + k).unsqueeze(1), logits)
    att = lib.softmax(logits, dim=2)
    return (att * v.unsqueeze(1)).sum(2)


def rwkv_build(lib, n_embd=8, n_layer=2, vocab_size=13, ctx_len=8):
    nn, F = lib.nn, lib.nn.functional

    class TimeMix(nn.Module):
        def __init__(self, layer_id):
            super().__init__()
            attn_sz = n_embd
            with lib.no_grad():  # fancy init
                ratio_0_to_1 = (layer_id / (n_layer - 1))  # 0 to 1
                ratio_1_to_almost0 = (1.0 - (layer_id / n_layer))  # 1 to ~0
                decay_speed = lib.ones(attn_sz)
                for h in range(attn_sz):
                    decay_speed[h] = -5 + 8 * (h / (attn_sz - 1)) ** (0.7 + 1.3 * ratio_0_to_1)
                self.time_decay = nn.Parameter(decay_speed)
                zigzag = (lib.tensor([(i + 1) % 3 - 1 for i in range(attn_sz)]) * 0.5)
                self.time_first = nn.Parameter(lib.ones(attn_sz) * math.log(0.3) + zigzag)
                x = lib.ones(1, 1, n_embd)
                for i in range(n_embd):
                    x[0, 0, i] = i / n_embd
                self.time_mix_k = nn.Parameter(lib.pow(x, ratio_1_to_almost0))
                self.time_mix_v = nn.Parameter(lib.pow(x, ratio_1_to_almost0)
                                               + 0.3 * ratio_0_to_1)
                self.time_mix_r = nn.Parameter(lib.pow(x, 0.5 * ratio_1_to_almost0))
            self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
            self.key = nn.Linear(n_embd, attn_sz, bias=False)
            self.value = nn.Linear(n_embd, attn_sz, bias=False)
            self.receptance = nn.Linear(n_embd, attn_sz, bias=False)
            self.output = nn.Linear(attn_sz, n_embd, bias=False)

        def forward(self, x, parallel=False):
            xx = self.time_shift(x)  # mix x with the previous timestep
            xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
            xv = x * self.time_mix_v + xx * (1 - self.time_mix_v)
            xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
            k = self.key(xk)
            v = self.value(xv)
            r = self.receptance(xr)
            sr = lib.sigmoid(r)
            run = wkv_parallel if parallel else wkv
            rwkv = sr * run(lib, -lib.exp(self.time_decay), self.time_first, k, v)
            return self.output(rwkv)

    class ChannelMix(nn.Module):
        def __init__(self, layer_id):
            super().__init__()
            self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
            with lib.no_grad():
                ratio_1_to_almost0 = (1.0 - (layer_id / n_layer))
                x = lib.ones(1, 1, n_embd)
                for i in range(n_embd):
                    x[0, 0, i] = i / n_embd
                self.time_mix_k = nn.Parameter(lib.pow(x, ratio_1_to_almost0))
                self.time_mix_r = nn.Parameter(lib.pow(x, ratio_1_to_almost0))
            hidden_sz = 4 * n_embd
            self.key = nn.Linear(n_embd, hidden_sz, bias=False)
            self.receptance = nn.Linear(n_embd, n_embd, bias=False)
            self.value = nn.Linear(hidden_sz, n_embd, bias=False)

        def forward(self, x):
            xx = self.time_shift(x)
            xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
            xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
            k = self.key(xk)
            k = lib.square(lib.relu(k))
            kv = self.value(k)
            return lib.sigmoid(self.receptance(xr)) * kv

    class Block(nn.Module):
        def __init__(self, layer_id):
            super().__init__()
            self.layer_id = layer_id
            self.ln1 = nn.LayerNorm(n_embd)
            self.ln2 = nn.LayerNorm(n_embd)
            if self.layer_id == 0:
                self.ln0 = nn.LayerNorm(n_embd)
            self.att = TimeMix(layer_id)
            self.ffn = ChannelMix(layer_id)

        def forward(self, x, parallel=False):
            if self.layer_id == 0:
                x = self.ln0(x)
            x = x + self.att(self.ln1(x), parallel)
            return x + self.ffn(self.ln2(x))

    class L2Wrap(lib.autograd.Function):
        @staticmethod
        def forward(ctx, loss, y):
            ctx.save_for_backward(y)
            return loss

        @staticmethod
        def backward(ctx, grad_output):
            y = ctx.saved_tensors[0]
            # to encourage the logits to be close to 0
            factor = 1e-4 / (y.shape[0] * y.shape[1])
            maxx, ids = lib.max(y, -1, keepdim=True)
            gy = lib.zeros_like(y)
            gy.scatter_(-1, ids, maxx * factor)
            return (grad_output, gy)

    class RWKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab_size, n_embd)
            self.blocks = nn.Sequential(*[Block(i) for i in range(n_layer)])
            self.ln_out = nn.LayerNorm(n_embd)
            self.head = nn.Linear(n_embd, vocab_size, bias=False)
            self.ctx_len = ctx_len

        def forward(self, idx, targets=None, parallel=False):
            B, T = idx.size()
            assert T <= self.ctx_len, "Cannot forward, because len(input) > model ctx_len."
            x = self.emb(idx)
            for block in self.blocks:
                x = block(x, parallel)
            x = self.ln_out(x)
            x = self.head(x)
            if targets is None:
                return x
            loss = F.cross_entropy(x.view(-1, x.size(-1)), targets.view(-1))
            return L2Wrap.apply(loss, x)

    return RWKV()


def rwkv_script(lib, build, init, dtype, steps=4):
    dt = getattr(lib, dtype)
    model = build(lib).to(dt)
    load_init(model, init, lib)
    lr = 4e-3
    # RWKV-LM's configure_optimizers: time_decay at 2x lr, time_* unregularised
    lr_1x, lr_2x, lr_decay = [], [], []
    for n, p in model.named_parameters():
        if "time_decay" in n:
            lr_2x.append(p)
        elif "time_" in n or p.ndim < 2:
            lr_1x.append(p)
        else:
            lr_decay.append(p)
    opt = lib.optim.AdamW([{"params": lr_1x, "weight_decay": 0.0, "my_lr_scale": 1.0},
                           {"params": lr_2x, "weight_decay": 0.0, "my_lr_scale": 2.0},
                           {"params": lr_decay, "weight_decay": 0.01, "my_lr_scale": 1.0}],
                          lr=lr, betas=(0.9, 0.99), eps=1e-8)
    ids = lib.tensor(np.random.default_rng(1).integers(0, 13, (3, 9)))
    rec = {"loss": [], "gap": []}
    for _ in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * g["my_lr_scale"]
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        with lib.no_grad():
            gap = (model(x) - model(x, parallel=True)).abs().max()
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec["loss"].append(loss.item())
        rec["gap"].append(gap.item() < 1e-9 if dtype == "float64" else gap.item() < 1e-4)
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rwkv4_trains_as_torch(dtype):
    rec = both(rwkv_script, rwkv_build, dtype)
    assert all(rec["gap"])  # the stable recurrence equals the masked parallel sum


def test_zeropad2d_negative_padding_shifts_tokens_as_torch():
    """``nn.ZeroPad2d((0, 0, 1, -1))`` on (B, T, C): one zero row in front, the last row
    cropped (RWKV's token shift); the gradient of the cropped row is zero."""
    def run(lib):
        x = lib.tensor(data(2, 4, 3), requires_grad=True)
        y = lib.nn.ZeroPad2d((0, 0, 1, -1))(x)
        z = lib.nn.functional.pad(x, (-1, 2, 0, -2), value=0.5)
        (y * lib.arange(12.0, dtype=lib.float64).view(4, 3)).sum().backward()
        return [y, z, x.grad]

    assert_same(run(ng), run(torch))


# --- 4. LRU: complex diagonal recurrence, exp(-exp(nu)) and gamma normalisation, complex params -
def lru_build(lib, d_in=3, d_state=6, d_out=4, rmin=0.4, rmax=0.9, max_phase=6.283):
    """The Linear Recurrent Unit (Orvieto et al. 2023) as its PyTorch ports write it: complex
    parameters B and C, Lambda from (nu_log, theta_log), a real skip D."""
    nn = lib.nn

    class LRU(nn.Module):
        def __init__(self, in_features, out_features, state_features):
            super().__init__()
            self.out_features = out_features
            self.D = nn.Parameter(lib.randn([out_features, in_features])
                                  / math.sqrt(in_features))
            u1 = lib.rand(state_features)
            u2 = lib.rand(state_features)
            self.nu_log = nn.Parameter(lib.log(-0.5 * lib.log(u1 * (rmax + rmin) * (rmax - rmin)
                                                              + rmin ** 2)))
            self.theta_log = nn.Parameter(lib.log(max_phase * u2))
            Lambda_mod = lib.exp(-lib.exp(self.nu_log))
            self.gamma_log = nn.Parameter(lib.log(lib.sqrt(lib.ones_like(Lambda_mod)
                                                           - lib.square(Lambda_mod))))
            B_re = lib.randn([state_features, in_features]) / math.sqrt(2 * in_features)
            B_im = lib.randn([state_features, in_features]) / math.sqrt(2 * in_features)
            self.B = nn.Parameter(lib.complex(B_re, B_im))
            C_re = lib.randn([out_features, state_features]) / math.sqrt(state_features)
            C_im = lib.randn([out_features, state_features]) / math.sqrt(state_features)
            self.C = nn.Parameter(lib.complex(C_re, C_im))

        def lambdas(self):
            Lambda_mod = lib.exp(-lib.exp(self.nu_log))
            Lambda_re = Lambda_mod * lib.cos(lib.exp(self.theta_log))
            Lambda_im = Lambda_mod * lib.sin(lib.exp(self.theta_log))
            return lib.complex(Lambda_re, Lambda_im)

        def forward(self, input):
            """The loop of the reference port: a state per sequence, rows written in place."""
            Lambda = self.lambdas()
            gammas = lib.exp(self.gamma_log).unsqueeze(-1)
            output = lib.empty([i for i in input.shape[:-1]] + [self.out_features],
                               dtype=input.dtype)
            for i, batch in enumerate(input):
                state = lib.complex(lib.zeros_like(self.nu_log), lib.zeros_like(self.nu_log))
                out_seq = lib.empty(input.shape[1], self.out_features, dtype=input.dtype)
                for j, step in enumerate(batch):
                    state = (Lambda * state + gammas * self.B @ step.to(dtype=self.B.dtype))
                    out_step = (self.C @ state).real + self.D @ step
                    out_seq[j] = out_step
                output[i] = out_seq
            return output

        def forward_scan(self, u):
            """The S5/LRU parallel form: an associative scan (Hillis-Steele doubling) of the
            elements (Lambda, gamma B u_t) under (a, b) o (a', b') = (a' a, a' b + b')."""
            Lambda = lib.polar(lib.exp(-lib.exp(self.nu_log)), lib.exp(self.theta_log))
            Bu = lib.einsum("hd,bld->blh", self.B * lib.exp(self.gamma_log).unsqueeze(-1),
                            u.to(self.B.dtype))
            A = Lambda.expand_as(Bu)
            L, offset = u.shape[1], 1
            while offset < L:
                a_prev = lib.cat([lib.ones_like(A[:, :offset]), A[:, :-offset]], dim=1)
                b_prev = lib.cat([lib.zeros_like(Bu[:, :offset]), Bu[:, :-offset]], dim=1)
                Bu = A * b_prev + Bu
                A = A * a_prev
                offset *= 2
            return lib.einsum("oh,blh->blo", self.C, Bu).real + u @ self.D.T

        def forward_fft(self, u):
            """The convolution form: kernel Lambda^t gamma B by a complex FFT of length 2L."""
            L = u.shape[1]
            t = lib.arange(L, dtype=self.nu_log.dtype)
            log_lambda = lib.complex(-lib.exp(self.nu_log), lib.exp(self.theta_log))
            K = lib.exp(t[:, None] * log_lambda)  # (L, H) powers of Lambda
            Bu = (u.to(self.B.dtype) @ self.B.T) * lib.exp(self.gamma_log)  # (b, L, H)
            x = lib.fft.ifft(lib.fft.fft(Bu, n=2 * L, dim=1) * lib.fft.fft(K, n=2 * L, dim=0),
                             dim=1)[:, :L]
            return (x @ self.C.T).real + u @ self.D.T

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lru = LRU(d_in, d_out, d_state)
            self.head = nn.Linear(d_out, d_out)

        def forward(self, x, form="loop"):
            y = {"loop": self.lru, "scan": self.lru.forward_scan,
                 "fft": self.lru.forward_fft}[form](x)
            return self.head(lib.tanh(y))

    return Model()


def lru_script(lib, build, init, dtype, steps=4):
    dt = getattr(lib, dtype)
    with default_dtype(lib, dtype):
        model = build(lib)
    load_init(model, init, lib)
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    x = lib.tensor(data(2, 5, 3), dtype=dt)
    target = lib.tensor(data(2, 5, 4, seed=1), dtype=dt)
    rec = {"loss": [], "norm": [], "forms": []}
    tol = 1e-10 if dtype == "float64" else 1e-4
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        for form in ("scan", "fft"):
            rec["forms"].append((model(x, form) - out).abs().max().item() < tol)
        loss = lib.nn.functional.mse_loss(out, target)
        loss.backward()
        rec["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), 0.1).item())
        opt.step()
        rec["loss"].append(loss.item())
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lru_with_complex_parameters_trains_as_torch(dtype):
    rec = both(lru_script, lru_build, dtype, cast=False)
    assert all(rec["forms"])


def test_module_to_complex_dtype_casts_complex_parameters():
    """``Module.to(complex128)`` widens complex64 parameters and makes float ones complex
    (PyTorch's rule); ``Module.to(float64)`` leaves complex ones complex, keeping the imaginary
    parts that PyTorch's cast drops with a warning."""
    lin = ng.nn.Linear(2, 2)
    lin.weight = ng.nn.Parameter(ng.ones(2, 2, dtype=ng.complex64) * 1j)
    lin.to(ng.float64)
    assert (lin.weight.dtype, lin.bias.dtype) == (ng.complex64, ng.float64)
    lin.to(ng.complex128)
    assert (lin.weight.dtype, lin.bias.dtype) == (ng.complex128, ng.complex128)
    assert lin.weight.imag.sum().item() == 4


# --- 5. RetNet (torchscale): parallel, recurrent and chunkwise retention, rotary theta shift -----
def retnet_build(lib, embed_dim=8, value_factor=2, heads=2, layers=2, vocab=11, chunk=3,
                 eps=1e-24):
    nn, F = lib.nn, lib.nn.functional

    def rotate_every_two(x):
        x1 = x[:, :, :, ::2]
        x2 = x[:, :, :, 1::2]
        x = lib.stack((-x2, x1), dim=-1)
        return x.flatten(-2)

    def theta_shift(x, sin, cos):
        return (x * cos) + (rotate_every_two(x) * sin)

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps=1e-6, elementwise_affine=True):
            super().__init__()
            self.eps = eps
            self.elementwise_affine = elementwise_affine
            if self.elementwise_affine:
                self.weight = nn.Parameter(lib.ones(dim))
            else:
                self.register_parameter('weight', None)

        def _norm(self, x):
            return x * lib.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

        def forward(self, x):
            # the reference's x.float() upcasts half precision; float64 stays float64 here
            output = self._norm(x.to(lib.promote_types(x.dtype, lib.float32))).type_as(x)
            if self.weight is not None:
                output = output * self.weight
            return output

    class RetNetRelPos(nn.Module):
        def __init__(self):
            super().__init__()
            angle = 1.0 / (10000 ** lib.linspace(0, 1, embed_dim // heads // 2))
            angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
            decay = lib.log(1 - 2 ** (-5 - lib.arange(heads, dtype=lib.float)))
            self.register_buffer("angle", angle)
            self.register_buffer("decay", decay)
            self.recurrent_chunk_size = chunk

        def forward(self, slen, activate_recurrent=False, chunkwise_recurrent=False):
            if activate_recurrent:
                sin = lib.sin(self.angle * (slen - 1))
                cos = lib.cos(self.angle * (slen - 1))
                retention_rel_pos = ((sin, cos), self.decay.exp())
            elif chunkwise_recurrent:
                index = lib.arange(slen).to(self.decay)
                sin = lib.sin(index[:, None] * self.angle[None, :])
                cos = lib.cos(index[:, None] * self.angle[None, :])
                block_index = lib.arange(self.recurrent_chunk_size).to(self.decay)
                mask = lib.tril(lib.ones(self.recurrent_chunk_size,
                                         self.recurrent_chunk_size).to(self.decay))
                mask = lib.masked_fill(block_index[:, None] - block_index[None, :],
                                       ~mask.bool(), float("inf"))
                mask = lib.exp(mask * self.decay[:, None, None])
                mask = lib.nan_to_num(mask)
                value_inner_decay = mask[:, -1] / mask[:, -1].sum(dim=-1, keepdim=True)
                value_inner_decay = value_inner_decay.unsqueeze(-1)
                scale = mask.sum(dim=-1, keepdim=True).sqrt()
                inner_mask = mask / scale
                cross_decay = lib.exp(self.decay * self.recurrent_chunk_size)
                query_inner_decay = lib.exp(self.decay[:, None] * (block_index + 1))
                query_inner_decay = query_inner_decay[:, :, None] / (
                    scale / mask[:, -1].sum(dim=-1)[:, None, None])
                cross_decay = cross_decay[:, None, None]
                retention_rel_pos = ((sin, cos), (inner_mask, cross_decay, query_inner_decay,
                                                  value_inner_decay))
            else:
                index = lib.arange(slen).to(self.decay)
                sin = lib.sin(index[:, None] * self.angle[None, :])
                cos = lib.cos(index[:, None] * self.angle[None, :])
                mask = lib.tril(lib.ones(slen, slen).to(self.decay))
                mask = lib.masked_fill(index[:, None] - index[None, :], ~mask.bool(),
                                       float("inf"))
                mask = lib.exp(mask * self.decay[:, None, None])
                mask = lib.nan_to_num(mask)
                mask = mask / mask.sum(dim=-1, keepdim=True).sqrt()
                retention_rel_pos = ((sin, cos), mask)
            return retention_rel_pos

    class MultiScaleRetention(nn.Module):
        def __init__(self, value_dim, num_heads):
            super().__init__()
            self.embed_dim = embed_dim
            self.value_dim = value_dim
            self.num_heads = num_heads
            self.head_dim = self.value_dim // num_heads
            self.key_dim = self.embed_dim // num_heads
            self.scaling = self.key_dim ** -0.5
            self.gate_fn = F.silu
            self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)
            self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)
            self.v_proj = nn.Linear(embed_dim, value_dim, bias=False)
            self.g_proj = nn.Linear(embed_dim, value_dim, bias=False)
            self.out_proj = nn.Linear(value_dim, embed_dim, bias=False)
            self.group_norm = RMSNorm(self.head_dim, eps=eps, elementwise_affine=False)
            self.reset_parameters()

        def reset_parameters(self):
            nn.init.xavier_uniform_(self.q_proj.weight, gain=2 ** -2.5)
            nn.init.xavier_uniform_(self.k_proj.weight, gain=2 ** -2.5)
            nn.init.xavier_uniform_(self.v_proj.weight, gain=2 ** -2.5)
            nn.init.xavier_uniform_(self.g_proj.weight, gain=2 ** -2.5)
            nn.init.xavier_uniform_(self.out_proj.weight, gain=2 ** -1)

        def parallel_forward(self, qr, kr, v, mask):
            bsz, tgt_len, embed_dim = v.size()
            vr = v.view(bsz, tgt_len, self.num_heads, self.head_dim).transpose(1, 2)
            qk_mat = qr @ kr.transpose(-1, -2)  # bsz * m * tgt_len * tgt_len
            qk_mat = qk_mat * mask
            # invariant after normalization
            qk_mat = qk_mat / qk_mat.detach().abs().sum(dim=-1, keepdim=True).clamp(min=1,
                                                                                    max=5e4)
            output = lib.matmul(qk_mat, vr)
            return output.transpose(1, 2)

        def recurrent_forward(self, qr, kr, v, decay, incremental_state):
            bsz = v.size(0)
            v = v.view(bsz, self.num_heads, self.head_dim, 1)
            kv = kr * v
            if "prev_key_value" in incremental_state:
                prev_kv = incremental_state["prev_key_value"]
                prev_scale = incremental_state["scale"]
                scale = prev_scale * decay + 1
                kv = prev_kv * (prev_scale.sqrt() * decay / scale.sqrt()).view(
                    self.num_heads, 1, 1) + kv / scale.sqrt().view(self.num_heads, 1, 1)
            else:
                scale = lib.ones_like(decay)
            incremental_state["prev_key_value"] = kv
            incremental_state["scale"] = scale
            return lib.sum(qr * kv, dim=3)

        def chunk_recurrent_forward(self, qr, kr, v, inner_mask):
            mask, cross_decay, query_inner_decay, value_inner_decay = inner_mask
            bsz, tgt_len, embed_dim = v.size()
            chunk_len = mask.size(1)
            num_chunks = tgt_len // chunk_len
            assert tgt_len % chunk_len == 0
            qr = qr.view(bsz, self.num_heads, num_chunks, chunk_len, self.key_dim).transpose(1, 2)
            kr = kr.view(bsz, self.num_heads, num_chunks, chunk_len, self.key_dim).transpose(1, 2)
            v = v.view(bsz, num_chunks, chunk_len, self.num_heads, self.head_dim).transpose(2, 3)
            kr_t = kr.transpose(-1, -2)
            qk_mat = qr @ kr_t  # bsz * num_heads * chunk_len * chunk_len
            qk_mat = qk_mat * mask
            inner_scale = qk_mat.detach().abs().sum(dim=-1, keepdim=True).clamp(min=1)
            qk_mat = qk_mat / inner_scale
            inner_output = lib.matmul(qk_mat, v)
            # reduce kv in one chunk
            kv = kr_t @ (v * value_inner_decay)
            kv_recurrent = []
            cross_scale = []
            kv_state = lib.zeros(bsz, self.num_heads, self.key_dim, self.head_dim).to(v)
            kv_scale = lib.ones(bsz, self.num_heads, 1, 1).to(v)
            # accumulate kv by loop
            for i in range(num_chunks):
                kv_recurrent.append(kv_state / kv_scale)
                cross_scale.append(kv_scale)
                kv_state = kv_state * cross_decay + kv[:, i]
                kv_scale = kv_state.detach().abs().sum(dim=-2, keepdim=True).max(
                    dim=-1, keepdim=True).values.clamp(min=1)
            kv_recurrent = lib.stack(kv_recurrent, dim=1)
            cross_scale = lib.stack(cross_scale, dim=1)
            all_scale = lib.maximum(inner_scale, cross_scale)
            align_inner_scale = all_scale / inner_scale
            align_cross_scale = all_scale / cross_scale
            cross_output = (qr * query_inner_decay) @ kv_recurrent
            output = inner_output / align_inner_scale + cross_output / align_cross_scale
            return output.transpose(2, 3)

        def forward(self, x, rel_pos, chunkwise_recurrent=False, incremental_state=None):
            bsz, tgt_len, _ = x.size()
            (sin, cos), inner_mask = rel_pos
            q = self.q_proj(x)
            k = self.k_proj(x)
            v = self.v_proj(x)
            g = self.g_proj(x)
            k *= self.scaling
            q = q.view(bsz, tgt_len, self.num_heads, self.key_dim).transpose(1, 2)
            k = k.view(bsz, tgt_len, self.num_heads, self.key_dim).transpose(1, 2)
            qr = theta_shift(q, sin, cos)
            kr = theta_shift(k, sin, cos)
            if incremental_state is not None:
                output = self.recurrent_forward(qr, kr, v, inner_mask, incremental_state)
            elif chunkwise_recurrent:
                output = self.chunk_recurrent_forward(qr, kr, v, inner_mask)
            else:
                output = self.parallel_forward(qr, kr, v, inner_mask)
            output = self.group_norm(output).reshape(bsz, tgt_len,
                                                     self.head_dim * self.num_heads)
            output = self.gate_fn(g) * output
            return self.out_proj(output)

    class DecoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.retention = MultiScaleRetention(embed_dim * value_factor, heads)
            self.retention_layer_norm = RMSNorm(embed_dim, eps=eps)
            self.ffn = nn.Sequential(nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(),
                                     nn.Linear(2 * embed_dim, embed_dim))
            self.final_layer_norm = RMSNorm(embed_dim, eps=eps)

        def forward(self, x, incremental_state=None, chunkwise_recurrent=False,
                    retention_rel_pos=None):
            residual = x
            x = self.retention_layer_norm(x)
            x = self.retention(x, incremental_state=incremental_state,
                               rel_pos=retention_rel_pos,
                               chunkwise_recurrent=chunkwise_recurrent)
            x = residual + x
            residual = x
            x = self.final_layer_norm(x)
            return residual + self.ffn(x)

    class RetNetDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, embed_dim)
            self.layers = nn.ModuleList([DecoderLayer() for _ in range(layers)])
            self.layer_norm = RMSNorm(embed_dim, eps=eps)
            self.retnet_rel_pos = RetNetRelPos()
            self.output_projection = nn.Linear(embed_dim, vocab, bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0, std=embed_dim ** -0.5)

        def forward(self, prev_output_tokens, incremental_state=None,
                    chunkwise_recurrent=False):
            slen = prev_output_tokens.size(1)
            if incremental_state is not None:  # decode the last token from the state
                prev_output_tokens = prev_output_tokens[:, -1:]
            x = self.embed_tokens(prev_output_tokens)
            retention_rel_pos = self.retnet_rel_pos(
                slen, incremental_state is not None, chunkwise_recurrent=chunkwise_recurrent)
            for idx, layer in enumerate(self.layers):
                if incremental_state is None:
                    state = None
                else:
                    state = incremental_state.setdefault(idx, {})
                x = layer(x, incremental_state=state, retention_rel_pos=retention_rel_pos,
                          chunkwise_recurrent=chunkwise_recurrent)
            return self.output_projection(self.layer_norm(x))

    return RetNetDecoder()


def retnet_script(lib, build, init, dtype, steps=3):
    dt = getattr(lib, dtype)
    with default_dtype(lib, dtype):
        model = build(lib).to(dt)
        load_init(model, init, lib)
        opt = lib.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98),
                              weight_decay=0.01)
        ids = lib.tensor(np.random.default_rng(2).integers(0, 11, (2, 7)))
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        rec = {"loss": [], "forms": []}
        for step in range(steps):
            logits = model(x, chunkwise_recurrent=step % 2 == 1)
            loss = lib.nn.functional.cross_entropy(logits.transpose(1, 2), y)
            opt.zero_grad()
            loss.backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=2.0)
            opt.step()
            rec["loss"].append(loss.item())
        with lib.no_grad():
            parallel = model(x)
            chunked = model(x, chunkwise_recurrent=True)
            state, steps_out = {}, []
            for t in range(x.size(1)):
                steps_out.append(model(x[:, :t + 1], incremental_state=state))
            recurrent = lib.cat(steps_out, dim=1)
        rec["forms"] = [parallel, chunked, recurrent]
        rec["grads"], rec["state"] = grads(model), state_of(model)
    return rec


state_of = state


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_retnet_three_forms_train_as_torch(dtype):
    rec = both(retnet_script, retnet_build, dtype)
    parallel, chunked, recurrent = rec["forms"]
    # the forms differ only in the scale the per-head RMSNorm removes (up to its eps)
    tol = 1e-9 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(chunked, parallel, rtol=tol, atol=tol)
    np.testing.assert_allclose(recurrent, parallel, rtol=tol, atol=tol)


# --- 6. linear attention (elu + 1), Performer's FAVOR+, Linformer --------------------------------
def elu_feature_map(lib, x):
    return lib.nn.functional.elu(x) + 1


def causal_linear_attention(lib, q, k, v, eps=1e-6):
    """Katharopoulos et al.: phi(q_i) sum_{j<=i} phi(k_j) v_j^T / phi(q_i) sum_{j<=i} phi(k_j),
    the prefix sums by cumsum. q, k (n, l, h, d), v (n, l, h, m)."""
    Q, K = elu_feature_map(lib, q), elu_feature_map(lib, k)
    KV = lib.einsum("nlhd,nlhm->nlhdm", K, v).cumsum(dim=1)
    Z = 1 / (lib.einsum("nlhd,nlhd->nlh", Q, K.cumsum(dim=1)) + eps)
    return lib.einsum("nlhd,nlhdm,nlh->nlhm", Q, KV, Z)


def quadratic_linear_attention(lib, q, k, v, eps=1e-6):
    """The same attention through the masked (l, l) similarity matrix."""
    Q, K = elu_feature_map(lib, q), elu_feature_map(lib, k)
    A = lib.einsum("nlhd,nshd->nhls", Q, K)
    A = A * lib.ones(A.shape[-2:], dtype=bool).tril()
    out = lib.einsum("nhls,nshm->nlhm", A, v)
    return out / (A.sum(-1).transpose(1, 2).unsqueeze(-1) + eps)


def orthogonal_matrix_chunk(lib, cols, device=None):
    unstructured_block = lib.randn((cols, cols), device=device)
    q, r = lib.linalg.qr(unstructured_block.cpu(), mode='reduced')
    q, r = map(lambda t: t.to(device), (q, r))
    return q.t()


def gaussian_orthogonal_random_matrix(lib, nb_rows, nb_columns, scaling=0, device=None):
    nb_full_blocks = int(nb_rows / nb_columns)
    block_list = []
    for _ in range(nb_full_blocks):
        q = orthogonal_matrix_chunk(lib, nb_columns, device=device)
        block_list.append(q)
    remaining_rows = nb_rows - nb_full_blocks * nb_columns
    if remaining_rows > 0:
        q = orthogonal_matrix_chunk(lib, nb_columns, device=device)
        block_list.append(q[:remaining_rows])
    final_matrix = lib.cat(block_list)
    if scaling == 0:
        multiplier = lib.randn((nb_rows, nb_columns), device=device).norm(dim=1)
    elif scaling == 1:
        multiplier = math.sqrt(float(nb_columns)) * lib.ones((nb_rows,), device=device)
    else:
        raise ValueError(f'Invalid scaling {scaling}')
    return lib.diag(multiplier) @ final_matrix


def softmax_kernel(lib, data, *, projection_matrix, is_query, normalize_data=True, eps=1e-4):
    """performer-pytorch's positive random features for the softmax kernel (FAVOR+)."""
    b, h, *_ = data.shape
    data_normalizer = (data.shape[-1] ** -0.25) if normalize_data else 1.
    ratio = (projection_matrix.shape[0] ** -0.5)
    projection = projection_matrix.expand(b, h, *projection_matrix.shape)
    projection = projection.type_as(data)
    data_dash = lib.einsum('...id,...jd->...ij', (data_normalizer * data), projection)
    diag_data = data ** 2
    diag_data = lib.sum(diag_data, dim=-1)
    diag_data = (diag_data / 2.0) * (data_normalizer ** 2)
    diag_data = diag_data.unsqueeze(dim=-1)
    if is_query:
        data_dash = ratio * (lib.exp(data_dash - diag_data - lib.amax(
            data_dash, dim=-1, keepdim=True).detach()) + eps)
    else:
        data_dash = ratio * (lib.exp(data_dash - diag_data - lib.amax(
            data_dash, dim=(-1, -2), keepdim=True).detach()) + eps)
    return data_dash.type_as(data)


def performer_linear_attention(lib, q, k, v):
    k_cumsum = k.sum(dim=-2)
    D_inv = 1. / lib.einsum('...nd,...d->...n', q, k_cumsum.type_as(q))
    context = lib.einsum('...nd,...ne->...de', k, v)
    return lib.einsum('...de,...nd,...n->...ne', context, q, D_inv)


def causal_linear_attention_noncuda(lib, q, k, v, chunk_size=128, eps=1e-6):
    """performer-pytorch's causal form; ``t.chunk(chunk_size)`` asks for that many chunks
    (more than the length here: one position each)."""
    last_k_cumsum = 0
    last_context_cumsum = 0
    outs = []
    for q, k, v in zip(*map(lambda t: t.chunk(chunk_size, dim=-2), (q, k, v))):  # noqa: B020
        k_cumsum = last_k_cumsum + k.cumsum(dim=-2)
        D_inv = 1. / lib.einsum('...nd,...nd->...n', q, k_cumsum.type_as(q) + eps)
        context = lib.einsum('...nd,...ne->...nde', k, v)
        context_cumsum = last_context_cumsum + context.cumsum(dim=-3)
        out = lib.einsum('...nde,...nd,...n->...ne', context_cumsum, q, D_inv)
        last_k_cumsum = k_cumsum[:, :, -1:]
        last_context_cumsum = context_cumsum[:, :, -1:]
        outs.append(out)
    return lib.cat(outs, dim=-2)


def attention_build(lib, kind, dim=8, heads=2, seq_len=6, n_classes=3, nb_features=6, k=3):
    nn = lib.nn
    dim_head = dim // heads

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.to_out = nn.Linear(dim, dim)
            if kind.startswith("performer"):
                projection_matrix = gaussian_orthogonal_random_matrix(lib, nb_features,
                                                                      dim_head, scaling=0)
                self.register_buffer('projection_matrix', projection_matrix)
            if kind == "linformer":
                std = 1 / math.sqrt(dim_head)
                init_ = lambda t: t.uniform_(-std, std)  # noqa: E731
                self.to_q = nn.Linear(dim, dim, bias=False)
                self.to_k = nn.Linear(dim, dim_head, bias=False)  # one_kv_head
                self.proj_k = nn.Parameter(init_(lib.zeros(seq_len, k)))
                self.to_v = nn.Linear(dim, dim_head, bias=False)
                self.proj_v = nn.Parameter(init_(lib.zeros(seq_len, k)))

        def forward(self, x):
            b, n, _ = x.shape
            if kind == "linformer":
                return self.to_out(self.linformer(x))
            q, k_, v = self.to_qkv(x).chunk(3, dim=-1)
            if kind in ("linear", "linear_quadratic"):
                q, k_, v = (t.reshape(b, n, heads, dim_head) for t in (q, k_, v))
                fn = causal_linear_attention if kind == "linear" else quadratic_linear_attention
                out = fn(lib, q, k_, v).reshape(b, n, dim)
            else:
                q, k_, v = (t.reshape(b, n, heads, dim_head).transpose(1, 2)
                            for t in (q, k_, v))
                q = softmax_kernel(lib, q, is_query=True,
                                   projection_matrix=self.projection_matrix)
                k_ = softmax_kernel(lib, k_, is_query=False,
                                    projection_matrix=self.projection_matrix)
                if kind == "performer":
                    out = performer_linear_attention(lib, q, k_, v)
                else:
                    out = causal_linear_attention_noncuda(lib, q, k_, v)
                out = out.transpose(1, 2).reshape(b, n, dim)
            return self.to_out(out)

        def linformer(self, x):
            b, n, d, d_h, h = *x.shape, dim_head, heads  # noqa: F841
            kv_len = n
            queries = self.to_q(x)
            proj_seq_len = lambda args: lib.einsum('bnd,nk->bkd', *args)  # noqa: E731
            keys = self.to_k(x)
            values = self.to_v(x)
            kv_projs = (self.proj_k, self.proj_v)
            if kv_len < seq_len:
                kv_projs = map(lambda t: t[:kv_len], kv_projs)
            keys, values = map(proj_seq_len, zip((keys, values), kv_projs))
            queries = queries.reshape(b, n, h, -1).transpose(1, 2)
            merge_key_values = lambda t: (  # noqa: E731
                t.reshape(b, k, -1, d_h).transpose(1, 2).expand(-1, h, -1, -1))
            keys, values = map(merge_key_values, (keys, values))
            dots = lib.einsum('bhnd,bhkd->bhnk', queries, keys) * (d_h ** -0.5)
            attn = dots.softmax(dim=-1)
            out = lib.einsum('bhnk,bhkd->bhnd', attn, values)
            return out.transpose(1, 2).reshape(b, n, -1)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, dim)
            self.pos = nn.Parameter(lib.randn(1, seq_len, dim) * 0.02)
            self.attn = Attention()
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, n_classes)

        def forward(self, x):
            x = self.embed(x) + self.pos[:, :x.shape[1]]
            x = x + self.attn(self.norm(x))
            return self.head(x.mean(1))

    return Classifier()


def attention_script(lib, build, init, dtype, kind, steps=4):
    dt = getattr(lib, dtype)
    with default_dtype(lib, dtype):
        model = build(lib).to(dt)
    load_init(model, init, lib)
    opt = lib.optim.AdamW(model.parameters(), lr=5e-3)
    x = lib.tensor(data(4, 6, 3), dtype=dt)
    y = lib.tensor([0, 1, 2, 1])
    rec = {"loss": []}
    for _ in range(steps):
        opt.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=2.0,
                                     error_if_nonfinite=True)
        opt.step()
        rec["loss"].append(loss.item())
    if kind == "linformer":  # shorter sequences slice the projections
        rec["short"] = model(x[:, :4])
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("kind", ["linear", "performer", "performer_causal", "linformer"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_efficient_attention_trains_as_torch(kind, dtype):
    both(attention_script, functools.partial(attention_build, kind=kind), dtype, kind=kind)


def test_linear_attention_cumsum_equals_masked_quadratic_form():
    def run(lib):
        r = np.random.default_rng(3)
        q, k, v = (lib.tensor(r.standard_normal((2, 5, 2, 3)), requires_grad=True)
                   for _ in range(3))
        fast = causal_linear_attention(lib, q, k, v)
        slow = quadratic_linear_attention(lib, q, k, v)
        assert_same(fast, slow, 1e-10)
        fast.square().sum().backward()
        return [fast, q.grad, k.grad, v.grad]

    assert_same(run(ng), run(torch), 1e-10)


def test_performer_orthogonal_features_and_causal_chunks():
    """QR-orthogonal blocks (the same Q as PyTorch's for the same block), FAVOR+ features that
    estimate the softmax kernel, and the chunked causal form equal to the masked sum."""
    r = np.random.default_rng(0)
    block = r.standard_normal((4, 4))
    qt, qn = torch.linalg.qr(torch.tensor(block)), ng.linalg.qr(ng.tensor(block))
    assert_same(list(qn), list(qt), 1e-12)
    ng.manual_seed(0)
    with default_dtype(ng, "float64"):
        m = gaussian_orthogonal_random_matrix(ng, 10, 4, scaling=1)
        assert m.dtype == ng.float64
        np.testing.assert_allclose((m[:4] @ m[:4].T).numpy(), 4 * np.eye(4), atol=1e-12)
        m = gaussian_orthogonal_random_matrix(ng, 4000, 4)
        x = ng.tensor(r.standard_normal((1, 1, 3, 4)) * 0.5)
        y = ng.tensor(r.standard_normal((1, 1, 3, 4)) * 0.5)
        qf = softmax_kernel(ng, x, projection_matrix=m, is_query=True, normalize_data=False,
                            eps=0)
        kf = softmax_kernel(ng, y, projection_matrix=m, is_query=True, normalize_data=False,
                            eps=0)
        # features estimate exp(x_i . y_j) up to the per-row maxima the maps divide out: the
        # log ratio is a_i + b_j, so it vanishes when centred by rows and columns
        lr = ((qf @ kf.mT) / ((x @ y.mT).exp())).log()[0, 0].numpy()
        lr = lr - lr.mean(0) - lr.mean(1, keepdims=True) + lr.mean()
        assert np.abs(lr).max() < 0.1

    def run(lib):
        q, k, v = (lib.tensor(r2.uniform(0.1, 1, (1, 2, 5, 3)), requires_grad=True)
                   for r2 in [np.random.default_rng(s) for s in (4, 5, 6)])
        out = causal_linear_attention_noncuda(lib, q, k, v, chunk_size=2)
        A = (q @ k.mT) * lib.ones(5, 5, dtype=bool).tril()
        assert_same(out, (A @ v) / (A.sum(-1, keepdim=True) + 1e-6 * q.sum(-1, keepdim=True)),
                    1e-10)
        out.sum().backward()
        return [out, q.grad, k.grad, v.grad]

    assert_same(run(ng), run(torch), 1e-10)


# --- 7. Hyena: implicit long filters, FFT convolution with norm="forward" -----------------------
def fftconv(lib, u, k, D):
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = lib.fft.rfft(k, n=fft_size) / fft_size
    u_f = lib.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    if len(u.shape) > 3:
        k_f = k_f.unsqueeze(1)
    y = lib.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


def hyena_build(lib, d_model=6, l_max=10, order=2, filter_order=8, n_classes=3):
    """safari's standalone_hyena.py (einops written out) under a small classifier."""
    nn = lib.nn

    class OptimModule(nn.Module):
        def register(self, name, tensor, lr=None, wd=0.0):
            if lr == 0.0:
                self.register_buffer(name, tensor)
            else:
                self.register_parameter(name, nn.Parameter(tensor))
                optim = {}
                if lr is not None:
                    optim["lr"] = lr
                if wd is not None:
                    optim["weight_decay"] = wd
                setattr(getattr(self, name), "_optim", optim)  # noqa: B010

    class Sin(nn.Module):
        def __init__(self, dim, w=10, train_freq=True):
            super().__init__()
            self.freq = nn.Parameter(w * lib.ones(1, dim)) if train_freq else w * lib.ones(1, dim)

        def forward(self, x):
            return lib.sin(self.freq * x)

    class PositionalEmbedding(OptimModule):
        def __init__(self, emb_dim: int, seq_len: int, lr_pos_emb: float = 1e-5, **kwargs):
            super().__init__()
            self.seq_len = seq_len
            # the time embedding fed to the filters is normalized so that t_f = 1
            t = lib.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1
            bands = (emb_dim - 1) // 2
            t_rescaled = lib.linspace(0, seq_len - 1, seq_len)[None, :, None]
            w = 2 * math.pi * t_rescaled / seq_len  # 1, L, 1
            f = lib.linspace(1e-4, bands - 1, bands)[None, None]
            z = lib.exp(-1j * f * w)
            z = lib.cat([t, z.real, z.imag], dim=-1)
            self.register("z", z, lr=lr_pos_emb)
            self.register("t", t, lr=0.0)

        def forward(self, L):
            return self.z[:, :L], self.t[:, :L]

    class ExponentialModulation(OptimModule):
        def __init__(self, d_model, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2,
                     modulation_lr=0.0, modulate: bool = True, shift: float = 0.0, **kwargs):
            super().__init__()
            self.modulate = modulate
            self.shift = shift
            max_decay = math.log(target) / fast_decay_pct
            min_decay = math.log(target) / slow_decay_pct
            deltas = lib.linspace(min_decay, max_decay, d_model)[None, None]
            self.register("deltas", deltas, lr=modulation_lr)

        def forward(self, t, x):
            if self.modulate:
                decay = lib.exp(-t * self.deltas.abs())
                x = x * (decay + self.shift)
            return x

    class HyenaFilter(OptimModule):
        def __init__(self, d_model, emb_dim=3, order=16, seq_len=1024, lr=1e-3, lr_pos_emb=1e-5,
                     dropout=0.0, w=1, wd=0, bias=True, num_inner_mlps=2, **kwargs):
            super().__init__()
            self.d_model = d_model
            self.bias = nn.Parameter(lib.randn(self.d_model))
            self.dropout = nn.Dropout(dropout)
            act = Sin(dim=order, w=w)
            assert emb_dim % 2 != 0 and emb_dim >= 3
            self.seq_len = seq_len
            self.pos_emb = PositionalEmbedding(emb_dim, seq_len, lr_pos_emb)
            self.implicit_filter = nn.Sequential(nn.Linear(emb_dim, order), act)
            for i in range(num_inner_mlps):  # noqa: B007
                self.implicit_filter.append(nn.Linear(order, order))
                self.implicit_filter.append(act)
            self.implicit_filter.append(nn.Linear(order, d_model, bias=False))
            self.modulation = ExponentialModulation(d_model, **kwargs)
            for c in self.implicit_filter.children():
                for name, v in c.state_dict().items():  # noqa: B007
                    optim = {"weight_decay": wd, "lr": lr}
                    setattr(getattr(c, name), "_optim", optim)  # noqa: B010

        def filter(self, L, *args, **kwargs):
            z, t = self.pos_emb(L)
            h = self.implicit_filter(z)
            return self.modulation(t, h)

        def forward(self, x, L, k=None, bias=None, *args, **kwargs):
            if k is None:
                k = self.filter(L)
            k = k[0] if type(k) is tuple else k
            return fftconv(lib, x, k, bias)

    class HyenaOperator(nn.Module):
        def __init__(self, d_model, l_max, order=2, filter_order=64, dropout=0.0,
                     filter_dropout=0.0, **filter_args):
            super().__init__()
            self.d_model = d_model
            self.l_max = l_max
            self.order = order
            inner_width = d_model * (order + 1)
            self.dropout = nn.Dropout(dropout)
            self.in_proj = nn.Linear(d_model, inner_width)
            self.out_proj = nn.Linear(d_model, d_model)
            self.short_filter = nn.Conv1d(inner_width, inner_width, 3, padding=2,
                                          groups=inner_width)
            self.filter_fn = HyenaFilter(d_model * (order - 1), order=filter_order,
                                         seq_len=l_max, channels=1, dropout=filter_dropout,
                                         **filter_args)

        def forward(self, u, *args, **kwargs):
            l = u.size(-2)  # noqa: E741
            l_filter = min(l, self.l_max)
            u = self.in_proj(u)
            u = u.transpose(1, 2)  # b l d -> b d l
            uc = self.short_filter(u)[..., :l_filter]
            *x, v = uc.split(self.d_model, dim=1)
            k = self.filter_fn.filter(l_filter)[0]
            k = k.reshape(l_filter, self.order - 1, self.d_model).permute(1, 2, 0)
            bias = self.filter_fn.bias.reshape(self.order - 1, self.d_model)
            for o, x_i in enumerate(reversed(x[1:])):
                v = self.dropout(v * x_i)
                v = self.filter_fn(v, l_filter, k=k[o], bias=bias[o])
            y = (v * x[0]).transpose(1, 2)  # b d l -> b l d
            return self.out_proj(y)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, d_model)
            self.hyena = HyenaOperator(d_model, l_max, order=order, filter_order=filter_order)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, n_classes)

        def forward(self, x):
            h = self.embed(x)
            h = h + self.hyena(self.norm(h))
            return self.head(h.mean(1))

    return Model()


def hyena_script(lib, build, init, dtype, steps=4):
    dt = getattr(lib, dtype)
    with default_dtype(lib, dtype):
        model = build(lib).to(dt)
    load_init(model, init, lib)
    optimizer, scheduler, groups = setup_optimizer(lib, model, 3e-3, 0.1, steps)
    x = lib.tensor(data(4, 10, 2), dtype=dt)
    y = lib.tensor([2, 0, 1, 2])
    rec = {"groups": groups, "loss": []}
    for _ in range(steps):
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        scheduler.step()
        rec["loss"].append(loss.item())
    rec["short"] = model(x[:, :7])  # a shorter sequence: a shorter filter
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hyena_trains_as_torch(dtype):
    rec = both(hyena_script, hyena_build, dtype)
    assert [g[0] for g in rec["groups"]] == [13, 1, 8]


def test_fftconv_equals_causal_direct_convolution():
    """Zero padding to 2L makes the FFT product a causal (not circular) convolution, for each
    norm convention that keeps the round trip exact."""
    def run(lib):
        r = np.random.default_rng(0)
        u = lib.tensor(r.standard_normal((2, 3, 7)), requires_grad=True)
        k = lib.tensor(r.standard_normal((3, 7)), requires_grad=True)
        D = lib.tensor(r.standard_normal(3))
        y = fftconv(lib, u, k, D)
        direct = lib.stack([(u[..., :t + 1] * k.flip(-1)[..., 6 - t:]).sum(-1)
                            for t in range(7)], -1) + u * D[:, None]
        assert_same(y, direct, 1e-10)
        outs = [y]
        for norm in ("backward", "ortho", "forward"):
            uf = lib.fft.rfft(u, n=14, norm=norm)
            kf = lib.fft.rfft(k, n=14, norm=norm)
            scale = {"backward": 1, "ortho": math.sqrt(14), "forward": 14}[norm]
            z = lib.fft.irfft(uf * kf * scale, n=14, norm=norm)[..., :7]
            assert_same(z, y - u * D[:, None], 1e-10)
            outs.append(z)
        sum(o.square().sum() for o in outs).backward()
        return outs + [u.grad, k.grad]

    assert_same(run(ng), run(torch), 1e-10)


# --- 8. S5: HiPPO-initialised complex diagonal SSM, ZOH/bilinear, associative scan ------------
def make_DPLR_HiPPO(lib, N):
    """S5's diagonalised HiPPO-LegS: the normal part's eigenvalues by a complex Hermitian
    eigendecomposition, and B in that eigenbasis."""
    P = lib.sqrt(1 + 2 * lib.arange(N, dtype=lib.float64))
    A = P[:, None] * P[None, :]
    A = -(lib.tril(A) - lib.diag(lib.arange(N, dtype=lib.float64)))
    P = lib.sqrt(lib.arange(N, dtype=lib.float64) + 0.5)
    B = lib.sqrt(2 * lib.arange(N, dtype=lib.float64) + 1.0)
    S = A + P[:, None] * P[None, :]
    S_diag = lib.diagonal(S)
    Lambda_real = lib.mean(S_diag) * lib.ones_like(S_diag)
    Lambda_imag, V = lib.linalg.eigh(S * -1j)
    B = V.conj().T @ B.to(V.dtype)
    return lib.complex(Lambda_real, Lambda_imag), B, V


def binary_operator(q_i, q_j):
    """S5's operator on (A, Bu) pairs: (A_i, b_i) o (A_j, b_j) = (A_j A_i, A_j b_i + b_j)."""
    A_i, b_i = q_i
    A_j, b_j = q_j
    return A_j * A_i, A_j * b_i + b_j


def associative_scan(lib, operator, elems):
    """jax.lax.associative_scan along axis 0 in plain tensor code (the PyTorch ports' copy):
    combine pairs, recurse on the half, fill in the evens, interleave."""
    def combine(a, b):
        return operator(tuple(a), tuple(b))

    def interleave(a, b):
        if b.shape[0] < a.shape[0]:
            b = lib.cat([b, lib.zeros_like(a[:1])])
            return lib.stack([a, b], 1).flatten(0, 1)[:-1]
        return lib.stack([a, b], 1).flatten(0, 1)

    def _scan(elems):
        num_elems = elems[0].shape[0]
        if num_elems < 2:
            return elems
        reduced_elems = combine([e[0:-1:2] for e in elems], [e[1::2] for e in elems])
        odd_elems = _scan(reduced_elems)
        if num_elems % 2 == 0:
            even_elems = combine([e[:-1] for e in odd_elems], [e[2::2] for e in elems])
        else:
            even_elems = combine(odd_elems, [e[2::2] for e in elems])
        even_elems = [lib.cat([e[0:1], r]) for e, r in zip(elems, even_elems)]
        return [interleave(a, b) for a, b in zip(even_elems, odd_elems)]

    return _scan(list(elems))


def s5_build(lib, H=4, P=6, n_classes=3, dt_min=0.001, dt_max=0.1):
    nn = lib.nn

    class S5SSM(nn.Module):
        def __init__(self, discretization="zoh"):
            super().__init__()
            self.discretization = discretization
            Lambda, _, V = make_DPLR_HiPPO(lib, P)
            half = P // 2  # conjugate symmetry: keep one of each pair
            Lambda, V = Lambda[:half], V[:, :half]
            self.Lambda_re = nn.Parameter(Lambda.real.clone().to(lib.get_default_dtype()))
            self.Lambda_im = nn.Parameter(Lambda.imag.clone().to(lib.get_default_dtype()))
            B = lib.randn(P, H) * math.sqrt(1 / H)
            B_tilde = V.conj().T @ B.to(V.dtype)
            self.B = nn.Parameter(lib.view_as_real(B_tilde.to(
                lib.complex64 if lib.get_default_dtype() == lib.float32 else lib.complex128)))
            C = lib.randn(H, half, dtype=self.B.dtype) * math.sqrt(0.5)
            self.C = nn.Parameter(lib.stack([C, lib.randn_like(C)], -1))
            self.D = nn.Parameter(lib.randn(H))
            self.log_step = nn.Parameter(lib.rand(half, 1) * (math.log(dt_max) - math.log(dt_min))
                                         + math.log(dt_min))

        def discretize(self):
            Lambda = lib.complex(lib.clip(self.Lambda_re, None, -1e-4), self.Lambda_im)
            B_tilde = lib.view_as_complex(self.B)
            Delta = lib.exp(self.log_step[:, 0])
            Identity = lib.ones(Lambda.shape[0], dtype=Lambda.dtype)
            if self.discretization == "zoh":
                Lambda_bar = lib.exp(Lambda * Delta)
                B_bar = (1 / Lambda * (Lambda_bar - Identity))[..., None] * B_tilde
            else:
                BL = 1 / (Identity - (Delta / 2.0) * Lambda)
                Lambda_bar = BL * (Identity + (Delta / 2.0) * Lambda)
                B_bar = (BL * Delta)[..., None] * B_tilde
            return Lambda_bar, B_bar

        def forward(self, u, form="scan"):
            """u (L, H) -> (L, H)."""
            Lambda_bar, B_bar = self.discretize()
            C_tilde = lib.view_as_complex(self.C)
            Lambda_elements = Lambda_bar * lib.ones(u.shape[0], Lambda_bar.shape[0],
                                                    dtype=Lambda_bar.dtype)
            Bu_elements = u.to(B_bar.dtype) @ B_bar.T
            if form == "scan":
                _, xs = associative_scan(lib, binary_operator, (Lambda_elements, Bu_elements))
            elif form == "lax":
                _, xs = lib.lax.associative_scan(binary_operator,
                                                 (Lambda_elements, Bu_elements))
            else:
                x, out = lib.zeros_like(Bu_elements[0]), []
                for k in range(u.shape[0]):
                    x = Lambda_bar * x + Bu_elements[k]
                    out.append(x)
                xs = lib.stack(out)
            ys = 2 * (xs @ C_tilde.T).real
            return ys + u * self.D

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, H)
            self.ssm = nn.ModuleList([S5SSM("zoh"), S5SSM("bilinear")])
            self.norm = nn.BatchNorm1d(H)
            self.decoder = nn.Linear(H, n_classes)

        def forward(self, x, form="scan"):
            h = self.encoder(x)  # (B, L, H)
            for layer in self.ssm:
                y = lib.stack([layer(seq, form) for seq in h])  # the papers vmap this
                h = h + lib.nn.functional.gelu(y)
                h = self.norm(h.transpose(1, 2)).transpose(1, 2)
            return self.decoder(h.mean(1))

    return Model()


def s5_script(lib, build, init, dtype, steps=3):
    dt = getattr(lib, dtype)
    with default_dtype(lib, dtype):
        model = build(lib)
    load_init(model, init, lib)
    ssm = [p for n, p in model.named_parameters() if n.startswith("ssm") and "D" not in n]
    other = [p for n, p in model.named_parameters() if not n.startswith("ssm") or "D" in n]
    opt = lib.optim.AdamW([{"params": other}, {"params": ssm, "lr": 1e-3, "weight_decay": 0}],
                          lr=4e-3, weight_decay=0.05)
    x = lib.tensor(data(3, 7, 2), dtype=dt)
    y = lib.tensor([0, 2, 1])
    rec = {"loss": [], "forms": []}
    tol = 1e-10 if dtype == "float64" else 1e-4
    for _ in range(steps):
        opt.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec["loss"].append(loss.item())
        with lib.no_grad():
            model.eval()
            ref = model(x, "scan")
            rec["forms"] += [(model(x, f) - ref).abs().max().item() < tol
                             for f in ("loop", "lax") if lib is ng or f != "lax"]
            model.train()
    rec["forms"] = all(rec["forms"])
    rec["grads"], rec["state"] = grads(model), state(model)
    return rec


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_s5_trains_as_torch(dtype):
    rec = both(s5_script, s5_build, dtype, cast=False)
    assert rec["forms"]


def test_hippo_eigendecomposition_matches_torch():
    """The complex Hermitian eigh behind S5's and S4D's HiPPO initialisations: eigenvalues,
    and eigenvectors up to the phase of each column (LAPACK's choice), as PyTorch's."""
    (lt, bt, vt), (ln, bn, vn) = (make_DPLR_HiPPO(lib, 8) for lib in (torch, ng))
    assert vn.dtype == ng.complex128
    np.testing.assert_allclose(ln.numpy(), lt.numpy(), atol=1e-12)
    vt, vn = vt.numpy(), vn.numpy()
    phase = (vt.conj() * vn).sum(0)
    np.testing.assert_allclose(np.abs(phase), 1, atol=1e-10)
    np.testing.assert_allclose(vn, vt * phase, atol=1e-10)
    np.testing.assert_allclose(np.abs(bn.numpy()), np.abs(bt.numpy()), atol=1e-10)


def wkv_function(lib):
    """RWKV-4's WKV as the repository's autograd.Function, its backward the CUDA kernel's two
    loops written with tensors (the CPU fallback): the forward keeps y, the backward rebuilds
    the running sums forwards, then backwards."""

    class WKV(lib.autograd.Function):
        @staticmethod
        def forward(ctx, B, T, C, w, u, k, v):
            ctx.B, ctx.T, ctx.C = B, T, C
            w = -lib.exp(w.contiguous())
            u, k, v = u.contiguous(), k.contiguous(), v.contiguous()
            y = wkv(lib, w, u, k, v)
            ctx.save_for_backward(w, u, k, v, y)
            return y

        @staticmethod
        def backward(ctx, gy):
            B, T, C = ctx.B, ctx.T, ctx.C
            w, u, k, v, y = ctx.saved_tensors
            z = lib.zeros(B, C, dtype=k.dtype)
            gw, gu, aa, bb, ga, gb = z, z, z, z, z, z
            pp = lib.full((B, C), -1e38, dtype=k.dtype)
            q, r = [], []
            for i in range(T):
                kk, vv, yy = k[:, i], v[:, i], y[:, i]
                ww = u + kk
                p = lib.maximum(pp, ww)
                e1, e2 = lib.exp(pp - p), lib.exp(ww - p)
                qq = gy[:, i] / (e1 * bb + e2)
                gw = gw + (ga - gb * yy) * e1 * qq
                gu = gu + (vv - yy) * e2 * qq
                q.append(qq)
                r.append(ww - p)
                ww = w + pp
                p = lib.maximum(ww, kk)
                e1, e2 = lib.exp(ww - p), lib.exp(kk - p)
                ga = e1 * (aa + ga)
                gb = e1 * (bb + gb)
                aa = e1 * aa + e2 * vv
                bb = e1 * bb + e2
                pp = p
            gw = gw * w  # w -> -exp(w) in forward
            gk, gv = lib.empty_like(k), lib.empty_like(v)
            aa, bb, pp = z, z, lib.full((B, C), -1e38, dtype=k.dtype)
            for i in range(T - 1, -1, -1):
                kk, vv, yy, qq, rr = k[:, i], v[:, i], y[:, i], q[i], r[i]
                e1 = qq * lib.exp(rr)
                e2 = lib.exp(kk + pp)
                gk[:, i] = e1 * (vv - yy) + e2 * (aa * vv + bb)
                gv[:, i] = e1 + e2 * aa
                ww = w + pp
                www = rr - u - kk
                p = lib.maximum(ww, www)
                e1, e2 = lib.exp(ww - p), qq * lib.exp(www - p)
                aa = e1 * aa + e2
                bb = e1 * bb - yy * e2
                pp = p
            gw = lib.sum(gw, dim=0)
            gu = lib.sum(gu, dim=0)
            return (None, None, None, gw, gu, gk, gv)

    return WKV


def test_rwkv4_wkv_function_with_handwritten_backward_matches_autograd_and_torch():
    def run(lib):
        r = np.random.default_rng(7)
        B, T, C = 2, 6, 3
        w, u = (lib.tensor(r.standard_normal(C), requires_grad=True) for _ in range(2))
        k, v = (lib.tensor(r.standard_normal((B, T, C)) * 2, requires_grad=True)
                for _ in range(2))
        gy = lib.tensor(r.standard_normal((B, T, C)))
        y = wkv_function(lib).apply(B, T, C, w, u, k, v)
        grads_fn = lib.autograd.grad(y, [w, u, k, v], gy)
        y_ad = wkv(lib, -lib.exp(w), u, k, v)
        grads_ad = lib.autograd.grad(y_ad, [w, u, k, v], gy)
        assert_same(y, y_ad, 1e-12)
        assert_same(list(grads_fn), list(grads_ad), 1e-10)
        return [y, *grads_fn]

    assert_same(run(ng), run(torch), 1e-10)


def test_mamba_recurrent_decoding_matches_parallel_forward_and_torch():
    def run(lib):
        init = torch_init(mamba_build, "float64")
        model = mamba_build(lib).to(lib.float64)
        load_init(model, init, lib)
        prompt = lib.tensor([[1, 4, 2], [3, 3, 0]])
        ids, logits = model.generate(prompt, max_new_tokens=4)
        with lib.no_grad():
            full = model(ids[:, :-1])
        assert_same(logits, full, 1e-10)
        return [ids, logits]

    assert_same(run(ng), run(torch), 1e-10)


def causal_conv1d_ref(lib, x, weight, bias=None, initial_states=None,
                      return_final_states=False, activation=None):
    """causal_conv1d's reference: x (batch, dim, seqlen), weight (dim, width); the last
    width - 1 inputs are the state the next call starts from."""
    F = lib.nn.functional
    dtype_in = x.dtype
    x = x.to(weight.dtype)
    seqlen = x.shape[-1]
    dim, width = weight.shape
    if initial_states is None:
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)
    else:
        x = lib.cat([initial_states, x], dim=-1)
        out = F.conv1d(x, weight.unsqueeze(1), bias, padding=0, groups=dim)
    out = out[..., :seqlen]
    final_states = None
    if return_final_states:
        final_states = F.pad(x, (width - 1 - x.shape[-1], 0)).to(dtype_in)
    out = (out if activation is None else F.silu(out)).to(dtype=dtype_in)
    return out if not return_final_states else (out, final_states)


@pytest.mark.parametrize("lengths", [(2, 5), (1, 1, 3), (6,)])
def test_causal_conv1d_in_pieces_equals_whole_and_torch(lengths):
    """Chunks fed with the previous chunk's final states equal one call on the whole sequence
    (the final states of a short chunk come from negative left padding, or zeros)."""
    def run(lib):
        r = np.random.default_rng(1)
        x = lib.tensor(r.standard_normal((2, 3, sum(lengths))), requires_grad=True)
        w = lib.tensor(r.standard_normal((3, 4)), requires_grad=True)
        b = lib.tensor(r.standard_normal(3), requires_grad=True)
        whole, final = causal_conv1d_ref(lib, x, w, b, return_final_states=True,
                                         activation="silu")
        state, outs, start = lib.zeros(2, 3, 3, dtype=x.dtype), [], 0
        for n in lengths:
            out, state = causal_conv1d_ref(lib, x[..., start:start + n], w, b, state, True,
                                           "silu")
            outs.append(out)
            start += n
        assert_same(lib.cat(outs, -1), whole, 1e-12)
        assert_same(state, final, 1e-12)
        (whole.square().sum() + state.sum()).backward()
        return [whole, final, x.grad, w.grad, b.grad]

    assert_same(run(ng), run(torch), 1e-10)


def test_complex128_checkpoint_resumes_training(tmp_path):
    """An LRU in float64 (complex128 B and C, complex Adam moments) saved with its optimiser
    mid-run and loaded into a fresh model trains on as if never interrupted; infinities and
    NaNs in either part come back as they were."""
    init = torch_init(lru_build, "float64", cast=False)
    x = ng.tensor(data(2, 5, 3))
    target = ng.tensor(data(2, 5, 4, seed=1))

    def fresh():
        with default_dtype(ng, "float64"):
            model = lru_build(ng)
        load_init(model, init, ng)
        return model, ng.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            ng.nn.functional.mse_loss(model(x), target).backward()
            opt.step()

    model, opt = fresh()
    train(model, opt, 2)
    path = tmp_path / "lru.safetensors"
    ng.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2}, path)
    train(model, opt, 2)
    ck = ng.load(path)
    assert ck["model"]["lru.B"].dtype == ng.complex128 and ck["epoch"] == 2
    resumed, opt2 = fresh()
    resumed.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["optimizer"])
    train(resumed, opt2, 2)
    assert_same(state(resumed), state(model), 0)
    odd = ng.tensor(np.array([complex(1, np.inf), complex(np.nan, -2), complex(-np.inf, 0)]))
    ng.save({"odd": odd}, path)
    np.testing.assert_array_equal(ng.load(path)["odd"].numpy(), odd.numpy())


def test_random_fills_and_inits_of_complex_parameters_follow_torch():
    """``normal_(mean, std)`` on a complex tensor: N(mean, std²/2) in each part; ``uniform_``:
    each part uniform; the xavier/kaiming initialisers fill complex weights through them
    (PyTorch's rules); the others refuse by name."""
    ng.manual_seed(0)
    p = ng.zeros(200, 300, dtype=ng.complex64)
    p.normal_(3.0, 2.0)
    assert p.dtype == ng.complex64
    for part in (p.real, p.imag):
        assert abs(part.mean().item() - 3) < 0.05 and abs(part.std().item() - math.sqrt(2)) < 0.05
    p.uniform_(-1.0, 2.0)
    assert p.real.min().item() >= -1 and p.imag.max().item() < 2
    assert abs(p.imag.mean().item() - 0.5) < 0.05
    w = ng.zeros(300, 200, dtype=ng.complex128)
    ng.nn.init.xavier_normal_(w)
    assert abs(w.real.std().item() - math.sqrt(2 / 500) / math.sqrt(2)) < 2e-3
    ng.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    bound = math.sqrt(3) * math.sqrt(2 / 6) / math.sqrt(200)
    assert 0 < w.imag.max().item() <= bound and w.real.min().item() >= -bound
    with pytest.raises(ng.errors.DTypeError, match="trunc_normal_"):
        ng.nn.init.trunc_normal_(w)
    with pytest.raises(ng.errors.DTypeError, match="exponential_"):
        w.exponential_()


def rwkv_rnn_build(lib, w: dict, n_layer: int, n_embd: int):
    """RWKV_in_150_lines.py's RNN (a ScriptModule with script_method mixers writing the state
    in place), its weights a GPT-mode model's state dict, kept in float64 here (the original
    casts to float32)."""
    F = lib.nn.functional

    class RWKV_RNN(lib.jit.ScriptModule):
        def __init__(self):
            super().__init__()
            self.n_layer, self.n_embd = n_layer, n_embd
            self.eval()  # set to inference mode
            for k in w.keys():
                if '.time_' in k:
                    w[k] = w[k].squeeze()
                if '.time_decay' in k:
                    w[k] = -lib.exp(w[k].double())  # the real time decay is like e^{-e^x}
                else:
                    w[k] = w[k].double()
            self.w = types.SimpleNamespace()  # self.w.blocks[0].att.time_first, ...
            self.w.blocks = {}
            for k in w.keys():
                parts = k.split('.')
                last = parts.pop()
                here = self.w
                for p in parts:
                    if p.isdigit():
                        p = int(p)
                        if p not in here:
                            here[p] = types.SimpleNamespace()
                        here = here[p]
                    else:
                        if not hasattr(here, p):
                            setattr(here, p, types.SimpleNamespace())
                        here = getattr(here, p)
                setattr(here, last, w[k])

        def layer_norm(self, x, w):
            return F.layer_norm(x, (self.n_embd,), weight=w.weight, bias=w.bias)

        @lib.jit.script_method
        def channel_mixing(self, x, state, i: int, time_mix_k, time_mix_r, kw, vw, rw):
            xk = x * time_mix_k + state[5 * i + 0] * (1 - time_mix_k)
            xr = x * time_mix_r + state[5 * i + 0] * (1 - time_mix_r)
            state[5 * i + 0] = x
            r = lib.sigmoid(rw @ xr)
            k = lib.square(lib.relu(kw @ xk))  # square relu, primer paper
            return r * (vw @ k)

        @lib.jit.script_method
        def time_mixing(self, x, state, i: int, time_mix_k, time_mix_v, time_mix_r, time_first,
                        time_decay, kw, vw, rw, ow):
            xk = x * time_mix_k + state[5 * i + 1] * (1 - time_mix_k)
            xv = x * time_mix_v + state[5 * i + 1] * (1 - time_mix_v)
            xr = x * time_mix_r + state[5 * i + 1] * (1 - time_mix_r)
            state[5 * i + 1] = x
            r = lib.sigmoid(rw @ xr)
            k = kw @ xk
            v = vw @ xv
            aa = state[5 * i + 2]
            bb = state[5 * i + 3]
            pp = state[5 * i + 4]
            ww = time_first + k
            qq = lib.maximum(pp, ww)
            e1 = lib.exp(pp - qq)
            e2 = lib.exp(ww - qq)
            a = e1 * aa + e2 * v
            b = e1 * bb + e2
            wkv = a / b
            ww = pp + time_decay
            qq = lib.maximum(ww, k)
            e1 = lib.exp(ww - qq)
            e2 = lib.exp(k - qq)
            state[5 * i + 2] = e1 * aa + e2 * v
            state[5 * i + 3] = e1 * bb + e2
            state[5 * i + 4] = qq
            return ow @ (r * wkv)

        def forward(self, token, state):
            with lib.no_grad():
                if state is None:
                    state = lib.zeros(self.n_layer * 5, self.n_embd, dtype=lib.float64)
                    for i in range(self.n_layer):
                        state[5 * i + 4] = -1e30  # -infinity
                x = self.w.emb.weight[token]
                x = self.layer_norm(x, self.w.blocks[0].ln0)
                for i in range(self.n_layer):
                    att = self.w.blocks[i].att
                    x = x + self.time_mixing(
                        self.layer_norm(x, self.w.blocks[i].ln1), state, i, att.time_mix_k,
                        att.time_mix_v, att.time_mix_r, att.time_first, att.time_decay,
                        att.key.weight, att.value.weight, att.receptance.weight,
                        att.output.weight)
                    ffn = self.w.blocks[i].ffn
                    x = x + self.channel_mixing(
                        self.layer_norm(x, self.w.blocks[i].ln2), state, i, ffn.time_mix_k,
                        ffn.time_mix_r, ffn.key.weight, ffn.value.weight,
                        ffn.receptance.weight)
                x = self.w.head.weight @ self.layer_norm(x, self.w.ln_out)
                return x.double(), state

    return RWKV_RNN()


def test_rwkv4_rnn_script_module_matches_gpt_mode_and_torch():
    """The RNN form (one token at a time, the state a (5 n_layer, n_embd) tensor written in
    place) gives the GPT-mode model's logits at every position."""
    init = torch_init(rwkv_build, "float64")
    tokens = [3, 7, 1, 1, 12, 0, 5]

    def run(lib):
        gpt = rwkv_build(lib).to(lib.float64)
        load_init(gpt, init, lib)
        with lib.no_grad():
            full = gpt(lib.tensor([tokens]))[0]
        rnn = rwkv_rnn_build(lib, {k: lib.tensor(v) for k, v in init.items()}, 2, 8)
        state, outs = None, []
        for t in tokens:
            out, state = rnn(t, state)
            outs.append(out)
        assert_same(lib.stack(outs), full, 1e-10)
        return [full, state]

    assert_same(run(ng), run(torch), 1e-10)


def test_complex_logcumsumexp_keeps_torch_branch_of_the_imaginary_part():
    """Heinsen's scan of signed values runs logcumsumexp on complex logs: the larger term's
    imaginary part is kept as it is (not wrapped into (-pi, pi]), as PyTorch's, so values and
    ``.imag`` agree, not only their exponentials; NaN and infinite real parts as PyTorch's."""
    r = np.random.default_rng(0)
    inf, nan = np.inf, np.nan
    zs = [r.standard_normal((3, 7)) * 300 + 1j * r.standard_normal((3, 7)) * 5,
          np.array([[1 + 3j, 1 - 3j, complex(1 + math.log(2), 3), 50 + 9j, 50 - 9j,
                     complex(-inf, 1), complex(inf, 2)],
                    [complex(-inf, 0), complex(-inf, 2), 1 + 5j, complex(inf, 1),
                     complex(inf, -1), complex(2, nan), 3 + 3j]])]
    for z in zs:
        for dt in ("complex128", "complex64"):
            got = ng.logcumsumexp(ng.tensor(z).to(getattr(ng, dt)), 1).numpy()
            ref = torch.logcumsumexp(torch.tensor(z).to(getattr(torch, dt)), 1).numpy()
            np.testing.assert_allclose(got, ref, rtol=1e-5 if dt == "complex64" else 1e-12,
                                       equal_nan=True)
    z = ng.tensor(zs[0] * 0.01, requires_grad=True)
    y = ng.logcumsumexp(z, 0)
    (y.imag * y.real).sum().backward()
    zt = torch.tensor(zs[0] * 0.01, requires_grad=True)
    yt = torch.logcumsumexp(zt, 0)
    (yt.imag * yt.real).sum().backward()
    assert_same([carr(y), carr(z.grad)], [carr(yt), carr(zt.grad)], 1e-10)


def test_nan_to_num_of_complex_replaces_each_part_as_torch():
    """A kernel built by complex division (a Cauchy or DSS reciprocal) can meet 1/0: each part's
    NaN and infinities are replaced on their own."""
    z = np.array([1 + 2j, complex(np.inf, 1), complex(np.nan, -np.inf), complex(-np.inf, np.nan)])
    for dtype in ("complex64", "complex128"):
        got = ng.nan_to_num(ng.tensor(z).to(getattr(ng, dtype)), nan=1.0, posinf=2.0,
                            neginf=-3.0)
        ref = torch.nan_to_num(torch.tensor(z).to(getattr(torch, dtype)), nan=1.0, posinf=2.0,
                               neginf=-3.0)
        assert got.dtype == getattr(ng, dtype)
        np.testing.assert_array_equal(got.numpy(), ref.numpy())
        np.testing.assert_array_equal(ng.nan_to_num(ng.tensor(z).to(getattr(ng, dtype))).numpy(),
                                      torch.nan_to_num(torch.tensor(z).to(
                                          getattr(torch, dtype))).numpy())
