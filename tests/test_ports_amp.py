"""Mixed-precision and low-precision training code, ported from PyTorch by changing only the
imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) and run on
both from PyTorch's seeded initial weights: CPU autocast to bfloat16 and float16 around forward
and loss, ``GradScaler`` with unscaling, clipping and skipped steps, models converted to
bfloat16 or float16 and trained in that precision, float32 master weights with bfloat16
compute, nested regions, ``custom_fwd``, and the dtype rules (promotion, reductions, ``finfo``).
Low-precision values are compared bit for bit; float32 values that PyTorch accumulates in its
own order (losses, optimiser updates) to float32's rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread  # noqa: F401

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
X = RNG.standard_normal((12, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 12)
IMG = RNG.standard_normal((4, 2, 6, 6)).astype(np.float32)
SEQ = RNG.standard_normal((3, 5, 8)).astype(np.float32)
F32_TOL = 2e-6  # float32 sums PyTorch vectorises in another order: a few float32 roundings


def dt(t) -> str:
    """A tensor's (or dtype's) name without the library prefix."""
    return str(getattr(t, "dtype", t)).split(".")[-1]


def f32(t) -> np.ndarray:
    """A tensor's values as float32 NumPy (exact for bfloat16, float16 and float32); arrays and
    numbers as float32 too."""
    if not hasattr(t, "detach"):
        return np.array(t, np.float32)
    return np.array(t.detach().float().numpy(), np.float32)


def init_from_torch(build, lib, dtype=None):
    """``build(lib)`` holding ``build(torch)``'s seeded float32 initial weights."""
    torch.manual_seed(0)
    init = {k: v.detach().numpy().copy() for k, v in build(torch).state_dict().items()}
    model = build(lib)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model if dtype is None else model.to(getattr(lib, dtype))


def compare(ref: list, got: list, tol: float = F32_TOL, tols: dict | None = None) -> None:
    """Records of (tag, value): dtype names equal, low-precision arrays equal bit for bit,
    float32 arrays to ``tol`` (or ``tols[tag]``)."""
    assert len(ref) == len(got)
    for i, ((tag, a), (tag2, b)) in enumerate(zip(ref, got)):
        assert tag == tag2, (i, tag, tag2)
        if isinstance(a, str):
            assert a == b, f"{i} {tag}: {a} != {b}"
        elif tag.startswith("exact"):
            np.testing.assert_array_equal(b, a, err_msg=f"{i} {tag}")
        else:
            t = (tols or {}).get(tag, tol)
            np.testing.assert_allclose(b, a, rtol=t, atol=t, err_msg=f"{i} {tag}")


# --- 1. CPU autocast to bfloat16 around forward and loss: an MLP, SGD with momentum ---------

def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(),
                         nn.Linear(16, 3))


def autocast_mlp(lib, dtype="bfloat16", steps=4):
    F = lib.nn.functional
    model = init_from_torch(mlp, lib)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x, y = lib.tensor(X), lib.tensor(Y)
    rec = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with lib.autocast(device_type="cpu", dtype=getattr(lib, dtype)):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        rec += [("dtype", dt(logits)), ("dtype", dt(loss)), ("exact logits", f32(logits)),
                ("loss", f32(loss))]
        loss.backward()
        rec += [("dtype", dt(model[0].weight.grad)), ("grad", f32(model[0].weight.grad))]
        opt.step()
    return rec + [("weight", f32(p)) for p in model.parameters()]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_mlp_training_loop_matches_torch(dtype):
    ref, got = autocast_mlp(torch, dtype), autocast_mlp(ng, dtype)
    assert ref[:2] == [("dtype", dtype), ("dtype", "float32")]
    compare(ref, got)


# --- 2. a CNN under bfloat16 autocast with BatchNorm, pooling and SGD with momentum --------

def cnn(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3))


def autocast_cnn(lib, steps=3):
    F = lib.nn.functional
    model = init_from_torch(cnn, lib)
    # SGD, not Adam: Adam's first step moves each weight by ±lr whatever the gradient's size,
    # so a tiny bfloat16 gradient whose sign is rounding noise (PyTorch's kernels differ by CPU)
    # would move it by 2·lr; SGD moves it by its gradient
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = lib.tensor(IMG), lib.tensor(Y[:4])
    rec = []
    for step in range(steps):
        opt.zero_grad()
        with lib.autocast("cpu", dtype=lib.bfloat16):
            c = model[0](x)
            h = model[1](c)
            out = model[2:](h)
            loss = F.cross_entropy(out, y)
        # the first step's convolution (the same weights) bit for bit; later ones follow weights
        # that agree to ~1e-2 (PyTorch's bfloat16 weight gradient depends on the CPU's kernels)
        rec += [("dtype", dt(c)), ("dtype", dt(h)), ("dtype", dt(out)), ("dtype", dt(loss)),
                ("exact conv" if step == 0 else "conv", f32(c)), ("loss", f32(loss))]
        loss.backward()
        rec += [("dtype", dt(model[0].weight.grad)), ("grad", f32(model[0].weight.grad))]
        opt.step()
    rec += [("running", f32(model[1].running_mean)), ("running", f32(model[1].running_var))]
    return rec + [("weight", f32(p)) for p in model.parameters()]


def test_autocast_cnn_with_batch_norm_matches_torch():
    ref, got = autocast_cnn(torch), autocast_cnn(ng)
    assert [v for _, v in ref[:4]] == ["bfloat16", "bfloat16", "bfloat16", "float32"]
    # bfloat16 BatchNorm output rounds near ties where PyTorch's fused kernel adds in another
    # order: values after it agree to one bfloat16 step, so gradients and weights to ~1e-2
    compare(ref, got, tol=2e-2)


# --- 3. a small pre-norm transformer block under bfloat16 autocast, AdamW -----------------------

class Block:
    """A GPT-style block as users write it: pre-norm attention with ``is_causal`` and a GELU MLP."""

    @staticmethod
    def build(lib):
        nn, F = lib.nn, lib.nn.functional

        class B(nn.Module):
            def __init__(self, d=8, heads=2):
                super().__init__()
                self.heads = heads
                self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
                self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
                self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"),
                                         nn.Linear(4 * d, d))
                self.head = nn.Linear(d, 3, bias=False)

            def forward(self, x):
                b, t, c = x.shape
                q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
                q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                           for z in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
                x = x + self.mlp(self.ln2(x))
                return self.head(x)

        return B()


def autocast_block(lib, steps=3):
    F = lib.nn.functional
    model = init_from_torch(Block.build, lib)
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    x, y = lib.tensor(SEQ), lib.tensor(RNG_SEQ_Y)
    rec = []
    for _ in range(steps):
        with lib.autocast(device_type="cpu"):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, 3), y.view(-1))
        rec += [("dtype", dt(logits)), ("dtype", dt(loss)), ("logits", f32(logits)),
                ("loss", f32(loss))]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        rec += [("dtype", dt(model.qkv.weight.grad)), ("grad", f32(model.qkv.weight.grad))]
        opt.step()
    return rec + [("weight", f32(p)) for p in model.parameters()]


RNG_SEQ_Y = RNG.integers(0, 3, (3, 5))


def test_autocast_transformer_block_matches_torch():
    ref, got = autocast_block(torch), autocast_block(ng)
    assert [v for _, v in ref[:2]] == ["bfloat16", "float32"]
    # PyTorch's CPU attention kernel rounds the attention weights to bfloat16 before their
    # product with the values (a blocked kernel); nodegrad computes attention in float32 and
    # rounds once (PyTorch's math path): outputs agree to a bfloat16 step or two; AdamW's
    # normalised step moves a weight whose gradient is near 0 by up to lr whatever its size
    compare(ref, got, tol=3e-2, tols={"weight": 8e-2})


# --- 4. an LSTM classifier under bfloat16 autocast -----------------------------------------------

def lstm_model(lib):
    nn = lib.nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 6, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            out, (h, c) = self.lstm(x)
            return self.fc(out[:, -1]), out, h

    return M()


def autocast_lstm(lib, steps=3):
    F = lib.nn.functional
    model = init_from_torch(lstm_model, lib)
    opt = lib.optim.SGD(model.parameters(), lr=0.5)
    x, y = lib.tensor(SEQ), lib.tensor(Y[:3])
    rec = []
    for _ in range(steps):
        opt.zero_grad()
        with lib.autocast("cpu", dtype=lib.bfloat16):
            logits, out, h = model(x)
            loss = F.cross_entropy(logits, y)
        rec += [("dtype", dt(out)), ("dtype", dt(h)), ("dtype", dt(logits)), ("dtype", dt(loss)),
                ("logits", f32(logits)), ("loss", f32(loss))]
        loss.backward()
        rec += [("dtype", dt(model.lstm.weight_hh_l0.grad))]
        opt.step()
    return rec + [("weight", f32(p)) for p in model.parameters()]


def test_autocast_lstm_matches_torch():
    try:
        ref = autocast_lstm(torch)
    except RuntimeError as e:  # oneDNN's bfloat16 LSTM needs CPU instructions some CPUs lack
        pytest.skip(f"PyTorch cannot run its bfloat16 LSTM on this CPU: {e}")
    got = autocast_lstm(ng)
    compare(ref, got, tol=2e-2)


# --- 5. GradScaler with float16 autocast: unscale_, clipping, skipped steps, growth/backoff -----

def scaler_loop(lib, steps=8):
    F = lib.nn.functional
    model = init_from_torch(mlp, lib)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    scaler = lib.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_factor=2.0,
                                backoff_factor=0.5, growth_interval=2)
    x, y = lib.tensor(X), lib.tensor(Y)
    rec = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        xb = x * 3e4 if step in (3, 4) else x  # a batch that overflows float16 in the product
        with lib.autocast(device_type="cpu", dtype=lib.float16):
            logits = model(xb)
            loss = F.cross_entropy(logits, y)
        rec += [("dtype", dt(logits)), ("dtype", dt(loss)),
                ("finite", str(bool(lib.isfinite(logits).all())))]
        scaler.scale(loss).backward()
        scaler.unscale_(opt)  # the true gradients, to clip
        norm = lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        rec += [("norm", str(bool(norm.isfinite()))), ("dtype", dt(model[0].weight.grad))]
        if bool(norm.isfinite()):
            rec += [("norm value", f32(norm)), ("loss", f32(loss)),
                    ("grad", f32(model[0].weight.grad))]
        scaler.step(opt)
        scaler.update()
        rec += [("scale", np.float32(scaler.get_scale())),
                ("tracker", f32(scaler.state_dict()["_growth_tracker"]))]
    rec += [("state", f32(opt.state_dict()["state"][0]["exp_avg"])),
            ("step", f32(opt.state_dict()["state"][0]["step"]))]
    return rec + [("weight", f32(p)) for p in model.parameters()]


def test_grad_scaler_float16_autocast_loop_matches_torch():
    ref, got = scaler_loop(torch), scaler_loop(ng)
    scales = [float(v) for t, v in ref if t == "scale"]
    assert scales == [256.0, 512.0, 512.0, 256.0, 128.0, 128.0, 256.0, 256.0]
    compare(ref, got, tols={"weight": 1e-5, "state": 1e-5})


# --- 6. models converted to bfloat16 / float16 and trained in that precision --------------------

PURE = [("bfloat16", "SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
        ("bfloat16", "Adam", {"lr": 1e-2}),
        ("bfloat16", "AdamW", {"lr": 1e-2, "weight_decay": 0.05}),
        ("float16", "SGD", {"lr": 0.1, "momentum": 0.9}),
        ("float16", "Adam", {"lr": 1e-2, "eps": 1e-4})]


def pure_low(lib, dtype, opt_name, kw, steps=4):
    F = lib.nn.functional
    low = getattr(lib, dtype)
    model = init_from_torch(mlp, lib)
    model = model.to(low) if dtype == "bfloat16" else model.half()
    opt = getattr(lib.optim, opt_name)(model.parameters(), **kw)
    x, y = lib.tensor(X).to(low), lib.tensor(Y)
    rec = []
    for step in range(steps):
        opt.zero_grad()
        logits = model(x)
        loss = F.mse_loss(logits, F.one_hot(y, 3).to(low))
        tag = "exact" if step == 0 else "after"  # the first forward and backward: bit for bit
        rec += [("dtype", dt(logits)), ("dtype", dt(loss)), (f"{tag} logits", f32(logits)),
                (f"{tag} loss", f32(loss))]
        loss.backward()
        rec += [("dtype", dt(model[0].weight.grad)), (f"{tag} grad", f32(model[0].weight.grad))]
        opt.step()
    state = opt.state[model[0].weight]
    rec += [("dtype", dt(v)) for k, v in sorted(state.items()) if k != "step"]
    return rec + [("after weight", f32(p)) for p in model.parameters()]


@pytest.mark.parametrize("dtype,opt_name,kw", PURE, ids=[f"{d}-{o}" for d, o, _ in PURE])
def test_pure_low_precision_training_matches_torch(dtype, opt_name, kw):
    ref, got = pure_low(torch, dtype, opt_name, kw), pure_low(ng, dtype, opt_name, kw)
    assert ref[:2] == [("dtype", dtype), ("dtype", dtype)]
    # the optimiser's update rounds in another order than PyTorch's single-tensor loop (one
    # rounding per op there), so the steps after the first agree to a low-precision step
    compare(ref, got, tols={f"after {k}": 3e-2 for k in ("logits", "loss", "grad", "weight")})


# --- 7. float32 master weights with bfloat16 compute, written by hand ---------------------------

def master_weights(lib, steps=4):
    F = lib.nn.functional
    model = init_from_torch(mlp, lib)
    master = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    model.to(lib.bfloat16)  # the compute copy
    opt = lib.optim.AdamW(master, lr=1e-2)
    x, y = lib.tensor(X).bfloat16(), lib.tensor(Y)
    rec = []
    for _ in range(steps):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        model.zero_grad(set_to_none=True)
        (loss * 128.0).backward()  # a static loss scale
        for p, m in zip(model.parameters(), master):
            m.grad = p.grad.detach().float() / 128.0
        opt.step()
        opt.zero_grad()
        with lib.no_grad():
            for p, m in zip(model.parameters(), master):
                p.copy_(m)  # rounded to bfloat16 for the next forward
        rec += [("dtype", dt(logits)), ("dtype", dt(loss)), ("loss", f32(loss)),
                ("dtype", dt(master[0].grad)), ("grad", f32(master[0].grad))]
    return rec + [("master", f32(m)) for m in master] + [
        ("exact weight", f32(p)) for p in model.parameters()]


def test_master_weights_recipe_matches_torch():
    ref, got = master_weights(torch), master_weights(ng)
    assert [v for _, v in ref[:2]] == ["bfloat16", "float32"]
    compare(ref, got)


# --- 8. nested regions, the state functions, custom_fwd / custom_bwd ---------------------------

def nested_regions(lib):
    a, b = lib.tensor(X), lib.tensor(X.T.copy())
    rec = [("enabled", str(lib.is_autocast_enabled("cpu")))]
    with lib.autocast(device_type="cpu", dtype=lib.bfloat16):
        rec += [("enabled", str(lib.is_autocast_enabled("cpu"))),
                ("dtype", dt(lib.get_autocast_dtype("cpu"))), ("dtype", dt(a @ b))]
        with lib.autocast(device_type="cpu", enabled=False):
            rec += [("enabled", str(lib.is_autocast_enabled("cpu"))), ("dtype", dt(a @ b))]
            low = (a @ b).bfloat16()
            rec += [("dtype", dt(low)), ("dtype", dt(low.float() @ low.float()[:, :2]))]
        with lib.autocast(device_type="cpu", dtype=lib.float16):
            rec += [("dtype", dt(lib.get_autocast_dtype("cpu"))), ("dtype", dt(a @ b))]
        rec += [("dtype", dt(lib.get_autocast_dtype("cpu"))), ("exact", f32(a @ b)),
                ("dtype", dt((a @ b).float()))]
    rec += [("enabled", str(lib.is_autocast_enabled("cpu"))), ("dtype", dt(a @ b))]

    @lib.autocast(device_type="cpu")  # the decorator form
    def f(u, v):
        return u @ v

    return rec + [("dtype", dt(f(a, b)))]


def test_nested_regions_and_state_functions_match_torch():
    compare(nested_regions(torch), nested_regions(ng))


def custom_function(lib):
    amp = lib.amp

    class Scaled(lib.autograd.Function):
        @staticmethod
        @amp.custom_fwd(device_type="cpu", cast_inputs=lib.float32)
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return (x @ w).exp()

        @staticmethod
        @amp.custom_bwd(device_type="cpu")
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            y = (x @ w).exp()
            return (g * y) @ w.T, x.T @ (g * y)

    class Plain(lib.autograd.Function):  # custom_fwd without cast_inputs: runs in the region
        @staticmethod
        @amp.custom_fwd(device_type="cpu")
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        @amp.custom_bwd(device_type="cpu")
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ w.T, x.T @ g

    x = lib.tensor(X[:4] * 0.3, requires_grad=True)
    w = lib.tensor(X[:6, :3] * 0.3, requires_grad=True)
    rec = []
    with lib.autocast(device_type="cpu", dtype=lib.bfloat16):
        y = Scaled.apply(x, w)
        z = Plain.apply(x, w)
        rec += [("dtype", dt(y)), ("dtype", dt(z)), ("exact z", f32(z))]
        y.sum().backward()
        z.float().sum().backward()
    rec += [("y", f32(y)), ("dtype", dt(x.grad)), ("grad", f32(x.grad)),
            ("dtype", dt(w.grad)), ("grad", f32(w.grad))]
    return rec


def test_custom_fwd_and_bwd_match_torch():
    ref, got = custom_function(torch), custom_function(ng)
    assert [v for _, v in ref[:2]] == ["float32", "bfloat16"]
    compare(ref, got, tols={"grad": 1e-2})


# --- 9. which ops run in bfloat16 under CPU autocast, and which in float32 ----------------------

def region_ops(lib):
    F = lib.nn.functional
    x = lib.tensor(X)
    lo = x.bfloat16()
    w, b = lib.tensor(X[:4] * 0.5), lib.tensor(X[0, :4])
    img, k = lib.tensor(IMG), lib.tensor(IMG[:3, :, :3, :3] * 0.3)
    y = lib.tensor(Y)
    out = {}
    with lib.autocast("cpu", dtype=lib.bfloat16):
        out["matmul"] = x @ x.T
        out["mm"] = lib.mm(x, x.T)
        out["bmm"] = lib.bmm(x.view(2, 6, 6), x.view(2, 6, 6))
        out["linear"] = F.linear(x, w, b)
        out["conv2d"] = F.conv2d(img, k, padding=1)
        out["conv1d"] = F.conv1d(img[:, 0], lib.tensor(IMG[:3, 0, :, :3] * 0.3), stride=2)
        out["prelu"] = F.prelu(x, lib.tensor([0.25]))
        out["relu"] = F.relu(lo)
        out["softmax"] = F.softmax(lo, dim=-1)
        out["softmax32"] = F.softmax(x, dim=-1)
        out["layer_norm"] = F.layer_norm(lo, (6,))
        out["layer_norm_affine"] = F.layer_norm(lo, (6,), lib.ones(6), lib.zeros(6))
        out["group_norm"] = F.group_norm(lo.view(3, 4, 6), 2)
        out["cross_entropy"] = F.cross_entropy(lo[:, :3], y)
        out["cross_entropy_smooth"] = F.cross_entropy(lo[:, :3], y, label_smoothing=0.1)
        out["mse_loss"] = F.mse_loss(lo, x)
        out["l1_loss"] = F.l1_loss(lo, lo * 0.5)
        out["bce_logits"] = F.binary_cross_entropy_with_logits(lo, (lo > 0).to(lo.dtype))
        out["kl_div"] = F.kl_div(lo.float().log_softmax(1), lo.softmax(1), reduction="batchmean")
        out["nll_loss"] = F.nll_loss(lo[:, :3].float().log_softmax(1), y)
        out["cosine_embedding"] = F.cosine_embedding_loss(lo, lo.flip(0), lib.ones(12))
        out["soft_margin"] = F.soft_margin_loss(lo, lo.sign())
        out["poisson_nll"] = F.poisson_nll_loss(lo, lo.abs())
        out["cdist"] = lib.cdist(lo, lo)
        out["prod"] = lo[:2].prod()
        out["sum"] = lo.sum()
        out["add_mixed"] = lo + x  # a mix of widths: promoted to float32, as PyTorch
        out["mul_scalar"] = lo * 3.5
        out["sdpa"] = F.scaled_dot_product_attention(x.view(2, 6, 6), x.view(2, 6, 6),
                                                     x.view(2, 6, 6))
    return out


EXACT_OPS = {"matmul", "mm", "bmm", "linear", "conv2d", "conv1d", "prelu", "relu", "softmax",
             "layer_norm", "layer_norm_affine", "group_norm", "add_mixed",
             "mul_scalar", "sdpa", "prod", "sum"}


def test_cpu_autocast_op_lists_match_torch():
    ref, got = region_ops(torch), region_ops(ng)
    low = {k for k, v in ref.items() if dt(v) == "bfloat16"}
    assert low == {"matmul", "mm", "bmm", "linear", "conv2d", "conv1d", "prelu", "relu",
                   "softmax", "layer_norm", "layer_norm_affine", "group_norm", "sum", "mul_scalar",
                   "sdpa"}
    for k in ref:
        assert dt(got[k]) == dt(ref[k]), (k, dt(got[k]), dt(ref[k]))
        a, b = f32(ref[k]), f32(got[k])
        if k in EXACT_OPS:
            np.testing.assert_array_equal(b, a, err_msg=k)
        else:  # float32 results of bfloat16 inputs, summed in PyTorch's vectorised order
            np.testing.assert_allclose(b, a, rtol=2e-6, atol=2e-6, err_msg=k)


# --- 10. type promotion, reductions' accumulation, finfo ----------------------------------------

def promotion(lib):
    lo = lib.tensor(X[0]).bfloat16()
    ints, flags = lib.arange(6), lib.arange(6) > 2
    f0 = lib.tensor(2.5)  # a 0-d float32 tensor counts like a scalar: no widening
    rec = [("dtype", dt(lo + ints)), ("dtype", dt(lo * flags)), ("dtype", dt(lo * 2.5)),
           ("dtype", dt(lo + 3)), ("dtype", dt(2 ** lo)), ("dtype", dt(lo / 3)),
           ("dtype", dt(lo + f0)), ("dtype", dt(ints / 2)), ("dtype", dt(ints * 0.5)),
           ("dtype", dt(lib.result_type(lo, ints))), ("dtype", dt(lib.result_type(lo, 1.0))),
           ("dtype", dt(lib.result_type(lo, f0))),
           ("dtype", dt(lib.promote_types(lib.bfloat16, lib.float16))),
           ("dtype", dt(lib.promote_types(lib.bfloat16, lib.int64))),
           ("dtype", dt(lib.promote_types(lib.bfloat16, lib.float32))),
           ("exact", f32(lo * 2.5)), ("exact", f32(lo + ints)), ("exact", f32(lo / 3)),
           ("exact", f32(lo + f0)), ("exact", f32(lo * 0.1))]
    fi = lib.finfo(lib.bfloat16)
    rec += [("finfo", np.float32([fi.eps, fi.max, fi.min, fi.tiny])),
            ("bits", str(fi.bits)), ("finfo16", np.float32([lib.finfo(lib.float16).eps]))]
    return rec


def test_promotion_and_finfo_match_torch():
    compare(promotion(torch), promotion(ng))


def test_bfloat16_with_float32_tensors_is_refused_outside_a_region():
    """nodegrad's documented difference: two float widths in one op raise outside an autocast
    region (PyTorch promotes to float32); ``.float()`` first gives PyTorch's result."""
    lo, hi = ng.tensor(X[0]).bfloat16(), ng.tensor(X[1])
    with pytest.raises(ng.DTypeError, match="mixed float dtypes"):
        lo + hi
    want = torch.tensor(X[0]).bfloat16() + torch.tensor(X[1])
    np.testing.assert_array_equal(f32(lo.float() + hi), f32(want))
    with ng.autocast("cpu"):  # inside a region the mix promotes, as PyTorch
        assert (lo + hi).dtype == ng.float32


def reductions(lib, dtype):
    a = lib.tensor(np.concatenate([X, X * 1e3]).reshape(8, 18)).to(getattr(lib, dtype))
    out = {"sum": a.sum(), "sum1": a.sum(1), "mean": a.mean(0), "var": a.var(1),
           "std": a.std(), "softmax": a.softmax(-1), "cumsum": a.cumsum(1),
           "sum_f32": a.sum(dtype=lib.float32), "norm": a.norm(), "max": a.amax(1),
           "logsumexp": a.logsumexp(1) if dtype == "bfloat16" else a.exp().sum()}
    return {k: (dt(v), f32(v)) for k, v in out.items()}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reductions_accumulate_in_float32_as_torch(dtype):
    ref, got = reductions(torch, dtype), reductions(ng, dtype)
    for k, (d, v) in ref.items():
        assert got[k][0] == d, k
        if k == "logsumexp":  # PyTorch's bfloat16 kernel rounds inside: one unit apart at most
            np.testing.assert_allclose(got[k][1], v, rtol=2 ** -7, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k][1], v, err_msg=k)


# --- 11. half-precision kernels computed in float32 and rounded once ----------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_norms_and_half_kernels_round_once_as_torch(dtype):
    """A layer norm's affine step, a group norm, float16 GELU, softmax and variance, and float16
    linear and convolution layers with a bias, each rounded once from float32 (they rounded
    after each step, up to thousands of units in the last place off where terms cancel)."""
    def run(lib):
        F = lib.nn.functional
        low = getattr(lib, dtype)
        m = lib.tensor(RNG_BIG, requires_grad=True)
        x = m.to(low)
        w = lib.tensor(RNG_BIG[0], requires_grad=True)
        img = lib.tensor(IMG).to(low)
        k, kb = lib.tensor(IMG[:3, :, :3, :3]).to(low), lib.tensor(X[0, :3]).to(low)
        lw, lb = lib.tensor(X[:5, :6].reshape(-1)[:20]).to(low), lib.tensor(X[0, :5]).to(low)
        out = {"layer_norm": F.layer_norm(x, (20,), w.to(low), w.to(low)),
               "group_norm": F.group_norm(x.view(4, 4, 5), 2, w[:4].to(low), w[4:8].to(low)),
               "gelu": F.gelu(x), "gelu_tanh": F.gelu(x, approximate="tanh"),
               "softmax": F.softmax(x, 1), "var": x.var(1),
               "linear": F.linear(x[:, :4], lw.view(5, 4), lb),
               "conv": F.conv2d(img, k, kb, padding=1)}
        rec = {k: (dt(v), f32(v)) for k, v in out.items()}
        out["layer_norm"].float().pow(2).sum().backward()
        return rec, f32(m.grad), f32(w.grad)

    (ref, rg, rw), (got, gg, gw) = run(torch), run(ng)
    for k, (d, v) in ref.items():
        assert got[k][0] == d, k
        if k.startswith("gelu"):  # PyTorch's vectorised erf and tanh differ from NumPy's in
            # float32's last bits: a unit or two in the rounded result (tanh saturates to -1
            # there for x < -9, giving -0.0 where NumPy's gives -1.5e-07)
            np.testing.assert_allclose(got[k][1], v, rtol=8e-3, atol=3e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k][1], v, err_msg=k)
    # the layer norm's gradients: PyTorch's backward kernel for half precision is not the
    # float32 one rounded once; they agree to a few low-precision units
    np.testing.assert_allclose(gg, rg, atol=2e-2 * np.abs(rg).max())
    np.testing.assert_allclose(gw, rw, atol=3e-2 * np.abs(rw).max())


RNG_BIG = RNG.standard_normal((4, 20)).astype(np.float32) * 3


def test_float16_ops_on_its_own_grid_stay_native():
    """float16 ops computed through float32 keep float16's own limits where they answer in its
    grid: ``nan_to_num`` gives float16's largest, ``nextafter`` its next float, as PyTorch."""
    raw = np.array([np.inf, -np.inf, np.nan, 1.0], np.float16)
    got = ng.nan_to_num(ng.tensor(raw))
    want = torch.nan_to_num(torch.tensor(raw))
    np.testing.assert_array_equal(f32(got), f32(want))
    one, two = np.float16([1.0]), np.float16([2.0])
    np.testing.assert_array_equal(f32(ng.nextafter(ng.tensor(one), ng.tensor(two))),
                                  f32(torch.nextafter(torch.tensor(one), torch.tensor(two))))


# --- the product family under CPU autocast: which ops PyTorch lists (lower precision) --------
_PRODUCTS = {
    "dot": lambda L, v, M, A, B, C: L.dot(v, v),
    "vdot": lambda L, v, M, A, B, C: L.vdot(v, v),
    "inner": lambda L, v, M, A, B, C: L.inner(v, v),
    "inner-2d": lambda L, v, M, A, B, C: L.inner(M, M),
    "mv": lambda L, v, M, A, B, C: L.mv(M, v),
    "addmv": lambda L, v, M, A, B, C: L.addmv(A[0], M, v),
    "matmul": lambda L, v, M, A, B, C: L.matmul(v, v),
    "mm": lambda L, v, M, A, B, C: L.mm(M, M.t()),
    "addmm": lambda L, v, M, A, B, C: L.addmm(A, M, M.t(), beta=0.5),
    "baddbmm": lambda L, v, M, A, B, C: L.baddbmm(A.expand(4, 2, 2), B, C, alpha=2.0),
    "addbmm": lambda L, v, M, A, B, C: L.addbmm(A, B, C),
    "bmm": lambda L, v, M, A, B, C: L.bmm(B, C),
    "linalg.vecdot": lambda L, v, M, A, B, C: L.linalg.vecdot(M, M),
}


@pytest.mark.parametrize("name", list(_PRODUCTS))
def test_products_under_autocast_take_pytorchs_dtype(name):
    """dot, vdot, inner of two vectors, mv and addmv are not on PyTorch's CPU lower-precision
    list (float32 in, float32 out, no bfloat16 rounding of the product); addmm, baddbmm, addbmm
    and linalg.vecdot are, with a float32 input too."""
    g = torch.Generator().manual_seed(3)
    arrays = [torch.randn(*s, generator=g).numpy() for s in ((3,), (2, 3), (2, 2), (4, 2, 3),
                                                               (4, 3, 2))]
    out = {}
    for lib in (torch, ng):
        with lib.autocast("cpu", dtype=lib.bfloat16):
            r = _PRODUCTS[name](lib, *(lib.tensor(a) for a in arrays))
        out[lib.__name__] = r
    t, n = out["torch"], out["nodegrad"]
    assert str(n.dtype) == str(t.dtype).replace("torch.", "")
    exact = t.dtype == torch.float32  # else each rounds to bfloat16 in its own order
    np.testing.assert_allclose(n.float().numpy(), t.float().numpy(),
                               rtol=1e-6 if exact else 1e-2, atol=1e-6 if exact else 1e-2)
