"""Fake quantisation (``ng.fake_quantize_per_tensor_affine``, ``..._per_channel_affine``) against
PyTorch's bit for bit, its straight-through gradient, the transforms, bad input, and
quantisation-aware training on scikit-learn's digits step by step against PyTorch."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

_TIES = [0.5, 1.5, 2.5, -0.5, -1.5, 12.75, -12.85, 0.05, 0.15, 1e-30, -0.0, 0.0]


def _inputs(dtype, shape, seed=0, lo=-30.0, hi=30.0):
    x = np.random.default_rng(seed).uniform(lo, hi, shape)
    flat = x.reshape(-1)
    flat[:len(_TIES)] = _TIES
    t = torch.tensor(x).to(getattr(torch, dtype))
    return t, ng.tensor(t.float().numpy() if dtype == "bfloat16" else t.numpy()).astype(
        getattr(ng, dtype))


def _both(fn_t, fn_n, t, n):
    t = t.detach().requires_grad_(True)
    n = n.detach().requires_grad_(True)
    yt, yn = fn_t(t), fn_n(n)
    gt = torch.linspace(-1, 1, yt.numel(), dtype=torch.float64).reshape(yt.shape).to(yt.dtype)
    yt.backward(gt)
    yn.backward(ng.tensor(gt.float().numpy() if gt.dtype == torch.bfloat16 else gt.numpy()))
    return yt, yn, t.grad, n.grad


def _same(a_t, a_n):
    assert str(a_n.dtype) == str(a_t.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(a_n.astype(ng.float64).numpy(),
                                  a_t.double().numpy() if a_t.dtype != torch.float64
                                  else a_t.numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("qp", [(0.1, 3, -128, 127), (0.25, 0, 0, 255), (1.0, 0, -8, 7),
                                (0.037, -5, -20, 20)])
def test_per_tensor_is_pytorchs_bit_for_bit(dtype, qp):
    t, n = _inputs(dtype, (40, 50), lo=-30 * qp[0] * 12, hi=30 * qp[0] * 12)
    yt, yn, gt, gn = _both(lambda a: torch.fake_quantize_per_tensor_affine(a, *qp),
                           lambda a: ng.fake_quantize_per_tensor_affine(a, *qp), t, n)
    _same(yt.detach(), yn.detach())
    _same(gt, gn)  # the straight-through gradient: g inside the range, 0 where clamped
    assert 0 < (gn.numpy() == 0).sum() < gn.numpy().size


def test_per_tensor_takes_tensor_qparams():
    t, n = _inputs("float32", (6, 7))
    want = torch.fake_quantize_per_tensor_affine(t, torch.tensor(0.2),
                                                 torch.tensor(2, dtype=torch.int32), -16, 15)
    got = ng.fake_quantize_per_tensor_affine(n, ng.tensor(0.2), ng.tensor(2, dtype=ng.int32),
                                             -16, 15)
    _same(want, got)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("zdtype", ["int32", "float32"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_is_pytorchs_bit_for_bit(dtype, zdtype, axis):
    t, n = _inputs(dtype, (5, 4, 6), lo=-3, hi=3)
    c = t.shape[axis]
    rng = np.random.default_rng(axis)
    scale = rng.uniform(0.01, 0.05, c).astype(np.float32)
    zp = (rng.integers(-4, 5, c) + (0.25 if zdtype == "float32" else 0)).astype(zdtype)
    yt, yn, gt, gn = _both(
        lambda a: torch.fake_quantize_per_channel_affine(a, torch.tensor(scale),
                                                         torch.tensor(zp), axis, -32, 31),
        lambda a: ng.fake_quantize_per_channel_affine(a, ng.tensor(scale), ng.tensor(zp),
                                                      axis, -32, 31), t, n)
    _same(yt.detach(), yn.detach())
    _same(gt, gn)


def test_composes_with_grad_jit_and_vmap():
    x = ng.tensor(np.linspace(-3, 3, 24).reshape(4, 6))

    def f(a):
        return (ng.fake_quantize_per_tensor_affine(a, 0.25, 1, -8, 7) * a).sum()

    q = ng.fake_quantize_per_tensor_affine(x, 0.25, 1, -8, 7)
    codes = np.round(x.numpy() / 0.25) + 1
    inside = (codes >= -8) & (codes <= 7)
    np.testing.assert_array_equal(ng.grad(f)(x).numpy(), q.numpy() + inside * x.numpy())
    np.testing.assert_array_equal(ng.jit(ng.grad(f))(x).numpy(), ng.grad(f)(x).numpy())
    per_row = ng.vmap(lambda r: ng.fake_quantize_per_channel_affine(
        r, ng.tensor([0.5, 0.25, 0.5, 0.25, 0.5, 0.25], dtype=ng.float32),
        ng.zeros(6, dtype=ng.int32), 0, -4, 3))(x)
    whole = ng.fake_quantize_per_channel_affine(
        x, ng.tensor([0.5, 0.25, 0.5, 0.25, 0.5, 0.25], dtype=ng.float32),
        ng.zeros(6, dtype=ng.int32), 1, -4, 3)
    np.testing.assert_array_equal(per_row.numpy(), whole.numpy())


def test_bad_input_is_refused_by_name():
    x = ng.ones((2, 3))
    fpt, fpc = ng.fake_quantize_per_tensor_affine, ng.fake_quantize_per_channel_affine
    s3, z3 = ng.ones(3, dtype=ng.float32), ng.zeros(3, dtype=ng.int32)
    with pytest.raises(ValueError, match="quant_min .5. must not exceed quant_max .3."):
        fpt(x, 1.0, 0, 5, 3)
    with pytest.raises(ValueError, match="zero_point .200. must lie in"):
        fpt(x, 1.0, 200, -128, 127)
    with pytest.raises(ValueError, match="scale must be positive and finite, got 0.0"):
        fpt(x, 0.0, 0, -128, 127)  # PyTorch divides by it: inf and NaN
    with pytest.raises(TypeError, match="floating-point input .* got int64"):
        fpt(ng.ones(3, dtype=ng.int64), 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=r"shape \(2,\) for axis 0"):
        fpc(x, s3, z3, 0, -128, 127)
    with pytest.raises(ValueError, match=r"axis must lie in \[0, 2\)"):
        fpc(x, s3, z3, -1, -128, 127)  # PyTorch refuses a negative axis too
    with pytest.raises(TypeError, match="zero_point must be int32"):
        fpc(x, s3, z3.astype(ng.int64), 1, -128, 127)
    with pytest.raises(TypeError, match="scale must be float32"):
        fpc(x, s3.astype(ng.float64), z3, 1, -128, 127)
    with pytest.raises(ValueError, match="every zero_point must lie in"):
        fpc(x, s3, ng.tensor([0, 300, 0], dtype=ng.int32), 1, -128, 127)


def _qat_run(lib, data, steps):
    """Quantisation-aware training as hand-written QAT code does it: int8 weights per output
    channel (symmetric, scale from each row's largest magnitude), uint8 activations per tensor
    with a scale from the batch's range, a float model underneath trained by SGD."""
    x_tr, y_tr = (lib.tensor(a) for a in data["train"])
    params = [lib.tensor(a, requires_grad=True) for a in data["init"]]
    opt = lib.optim.SGD(params, lr=0.1, momentum=0.9)
    lib_int32 = lib.int32

    def qweight(w):
        scale = (w.detach().abs().amax(dim=1) / 127).clamp(min=1e-8).float()
        return lib.fake_quantize_per_channel_affine(
            w, scale, lib.zeros(w.shape[0], dtype=lib_int32), 0, -127, 127)

    def qact(h):
        scale = float(h.detach().max()) / 255 or 1.0
        return lib.fake_quantize_per_tensor_affine(h, scale, 0, 0, 255)

    def forward(x):
        w1, b1, w2, b2 = params
        h = qact(lib.relu(x @ qweight(w1).T + b1))
        return h @ qweight(w2).T + b2

    losses = []
    for step in range(steps):
        i = slice(32 * step % 1024, 32 * step % 1024 + 32)
        loss = lib.nn.functional.cross_entropy(forward(x_tr[i]), y_tr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    with lib.no_grad():
        x_te, y_te = (lib.tensor(a) for a in data["test"])
        acc = float((forward(x_te).argmax(1) == y_te).double().mean())
    return losses, [p.detach().numpy() for p in params], acc


def test_quantisation_aware_training_on_digits_matches_pytorch():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = d.data / 16.0
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], d.target[order]
    init = [rng.standard_normal((32, 64)) * 0.15, np.zeros(32),
            rng.standard_normal((10, 32)) * 0.2, np.zeros(10)]
    data = {"train": (x[:1024], y[:1024]), "test": (x[1024:], y[1024:]), "init": init}
    lt, pt, acc_t = _qat_run(torch, data, 120)
    ln, pn, acc_n = _qat_run(ng, data, 120)
    np.testing.assert_allclose(ln, lt, rtol=1e-10)
    for a, b in zip(pn, pt):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert acc_n == acc_t and acc_n > 0.85, (acc_n, acc_t)


def test_per_tensor_is_a_float32_op_under_cpu_autocast():
    t, n = _inputs("bfloat16", (5, 6), lo=-3, hi=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.fake_quantize_per_tensor_affine(t, 0.05, 0, -128, 127)
    with ng.autocast("cpu", dtype=ng.bfloat16):
        got = ng.fake_quantize_per_tensor_affine(n, 0.05, 0, -128, 127)
    _same(want, got)  # float32, as PyTorch's CPU autocast lists it
