"""bfloat16 (NumPy kind "V") counts as a float wherever nodegrad asks whether a dtype is one:
losses, functional ops, forward-mode and function transforms, custom functions, checkpointing,
the testing helpers, metrics, transfer learning, EMA/SWA, Adafactor, distributions,
preprocessing and random sampling; each compared with PyTorch's bfloat16."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import _backend as B

torch = pytest.importorskip("torch")
F = torch.nn.functional
BF = ng.bfloat16


def _values(t) -> np.ndarray:
    """A nodegrad or torch result as float64 (bfloat16 values are exact there)."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        return (t.double() if t.dtype == torch.bfloat16 else t).numpy().astype(np.float64)
    return np.asarray(t.detach().numpy()).astype(np.float64)


def _close(got, want, rtol=2e-2, atol=2e-2) -> None:
    """Equal to bfloat16's tolerance (8 bits), scaled by the result."""
    g, w = _values(got), _values(want)
    scale = float(np.abs(w[np.isfinite(w)]).max(initial=1.0))
    np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale, equal_nan=True)


def _pair(a, grad: bool = False):
    """The same bfloat16 values as a nodegrad and a torch tensor."""
    b = np.asarray(a, np.float32).astype(B.bfloat16)
    t = torch.tensor(b.astype(np.float32)).bfloat16()
    return ng.tensor(b, requires_grad=grad), t.requires_grad_(grad)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- losses and functional ops -------------------------------------------------------------------
def test_cross_entropy_takes_bfloat16_logits_and_soft_targets():
    x, tx = _pair(_rand(4, 5), grad=True)
    y = np.array([0, 3, 1, 4])
    loss, tloss = ng.nn.functional.cross_entropy(x, ng.tensor(y)), F.cross_entropy(
        tx, torch.tensor(y))
    assert loss.dtype == BF and tloss.dtype == torch.bfloat16
    _close(loss, tloss)
    loss.backward()
    tloss.backward()
    assert x.grad.dtype == BF
    _close(x.grad, tx.grad)
    p, tp = _pair(np.full((4, 5), 0.2))  # class probabilities in bfloat16
    _close(ng.nn.functional.cross_entropy(x, p), F.cross_entropy(tx, tp))


def test_conv_rms_norm_and_attention_masks_take_bfloat16():
    x, tx = _pair(_rand(1, 2, 5, 5))
    w, tw = _pair(_rand(3, 2, 3, 3, seed=1))
    _close(ng.nn.functional.conv2d(x, w), F.conv2d(tx, tw))
    r = ng.nn.functional.rms_norm(x, (5,))  # eps: bfloat16's machine epsilon, as PyTorch
    _close(r, F.rms_norm(tx, (5,)))
    q, tq = _pair(_rand(1, 2, 3, 4, seed=2))
    m, tm = _pair(np.triu(np.full((3, 3), -1e4, np.float32), 1))
    out = ng.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=m)
    assert out.dtype == BF
    _close(out, F.scaled_dot_product_attention(tq, tq, tq, attn_mask=tm))


def test_affine_grid_and_grid_sample_take_bfloat16():
    th, tth = _pair(np.array([[[0.9, 0.1, 0.0], [-0.1, 0.8, 0.1]]]))
    g = ng.nn.functional.affine_grid(th, (1, 1, 4, 4), align_corners=False)
    tg = F.affine_grid(tth, (1, 1, 4, 4), align_corners=False)
    assert g.dtype == BF
    _close(g, tg)
    x, tx = _pair(_rand(1, 1, 4, 4))
    _close(ng.nn.functional.grid_sample(x, g, align_corners=False),
           F.grid_sample(tx, tg, align_corners=False))


def test_fractional_max_pool_and_flex_attention_accept_bfloat16():
    x, tx = _pair(_rand(1, 1, 6, 6))
    out = ng.nn.functional.fractional_max_pool2d(x, 2, output_size=3)
    assert out.dtype == BF and tuple(out.shape) == (1, 1, 3, 3)
    from nodegrad.nn.attention.flex_attention import flex_attention
    q, tq = _pair(_rand(1, 1, 4, 8, seed=3))
    _close(flex_attention(q, q, q), F.scaled_dot_product_attention(tq, tq, tq))


def test_linear_under_autocast_mixes_bfloat16_and_float32():
    x = ng.tensor(_rand(2, 3)).to(BF)
    w = ng.tensor(_rand(4, 3, seed=1))
    with ng.autocast("cpu", dtype=BF):
        y = ng.nn.functional.linear(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ty = F.linear(torch.tensor(x.float().numpy()).bfloat16(), torch.tensor(w.numpy()))
    assert y.dtype == BF and ty.dtype == torch.bfloat16
    _close(y, ty)


# --- forward mode, transforms, custom functions, checkpointing ---------------------------------
def test_forward_ad_make_dual_takes_bfloat16():
    import torch.autograd.forward_ad as tfw
    fw = ng.autograd.forward_ad
    x, tx = _pair(_rand(5))
    v, tv = _pair(_rand(5, seed=1))
    with fw.dual_level():
        out = fw.unpack_dual(ng.sin(fw.make_dual(x, v))).tangent
    with tfw.dual_level():
        tout = tfw.unpack_dual(torch.sin(tfw.make_dual(tx, tv))).tangent
    assert out.dtype == BF
    _close(out, tout)


def test_jacrev_custom_function_and_checkpoint_take_bfloat16():
    x, tx = _pair(_rand(3))
    j = ng.func.jacrev(ng.sin)(x)
    _close(j, torch.func.jacrev(torch.sin)(tx))

    class Square(ng.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            assert ctx.needs_input_grad == (True,)
            return 2 * a * g

    xg = ng.tensor(x.numpy(), requires_grad=True)
    Square.apply(xg).sum().backward()
    assert xg.grad is not None and xg.grad.dtype == BF
    _close(xg.grad, 2 * tx)
    xc, txc = _pair(_rand(3), grad=True)
    ng.utils.checkpoint.checkpoint(ng.tanh, xc, use_reentrant=False).sum().backward()
    torch.utils.checkpoint.checkpoint(torch.tanh, txc, use_reentrant=False).sum().backward()
    _close(xc.grad, txc.grad)


class _WrongGrad(ng.autograd.Function):
    """sin with a wrong gradient (cos + 1): gradcheck must catch it."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return ng.sin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (ng.cos(a) + 1)


def test_gradcheck_differentiates_bfloat16_inputs_in_float64():
    x = ng.tensor(_rand(3)).to(BF)
    assert ng.testing.gradcheck(ng.sin, x)
    with pytest.raises(ng.testing.GradcheckError):
        ng.testing.gradcheck(_WrongGrad.apply, x)  # checked, not passed through as an integer
    assert ng.autograd.gradcheck(lambda a: ng.sin(a), (x.requires_grad_(),))
    with pytest.raises(ng.testing.GradcheckError):
        ng.autograd.gradcheck(_WrongGrad.apply, (x,))


# --- the testing helpers -------------------------------------------------------------------------
def test_assert_close_uses_torchs_bfloat16_tolerances():
    a, ta = _pair([1.0, 2.0, float("nan")])
    b, tb = _pair([1.0078125, 2.0, float("nan")])  # one bfloat16 ulp at 1: within rtol 1.6e-2
    ng.testing.assert_close(a, b, equal_nan=True)
    torch.testing.assert_close(ta, tb, equal_nan=True)
    c, tc = _pair([1.0625, 2.0, float("nan")])  # 6%: outside
    with pytest.raises(AssertionError, match="not close"):
        ng.testing.assert_close(a, c, equal_nan=True)
    with pytest.raises(AssertionError, match="not close"):
        torch.testing.assert_close(ta, tc, equal_nan=True)
    with pytest.raises(AssertionError):
        ng.testing.assert_close(a, b)  # NaN is unequal to NaN without equal_nan


def test_make_tensor_makes_bfloat16_as_torch():
    t = ng.testing.make_tensor((3, 4), dtype=BF, low=-2, high=2, exclude_zero=True)
    tt = torch.testing.make_tensor((3, 4), dtype=torch.bfloat16, device="cpu", low=-2, high=2)
    assert t.dtype == BF and tt.dtype == torch.bfloat16
    v = _values(t)
    assert (v >= -2).all() and (v <= 2).all() and (v != 0).all()
    assert ng.testing.make_tensor(2, dtype=BF, requires_grad=True).requires_grad


def test_compare_with_torch_takes_bfloat16_arrays():
    a = _rand(4).astype(B.bfloat16)
    ng.testing.compare_with_torch(ng.tanh, torch.tanh, a, atol=1e-2, rtol=1e-2)


# --- training tools ------------------------------------------------------------------------------
def test_metrics_read_bfloat16_logits_and_targets():
    logits = ng.tensor(_rand(6, 3)).to(BF)
    y = logits.float().numpy().argmax(1)
    assert ng.train.metrics.accuracy(ng.tensor(y), logits) == 1.0
    y_bf = ng.tensor(y.astype(np.float32)).to(BF)  # whole labels stored as bfloat16
    assert ng.train.metrics.accuracy(y_bf, logits) == 1.0
    one = ng.tensor(np.array([2.0, -1.0, 0.5], np.float32)).to(BF)  # one logit per sample
    assert ng.train.metrics.accuracy(ng.tensor([1, 0, 0]), one) == pytest.approx(2 / 3)


def test_unfreeze_takes_bfloat16_parameters():
    m = ng.nn.Linear(3, 2).to(BF)
    ng.train.freeze(m, "")
    assert not any(p.requires_grad for p in m.parameters())
    ng.train.unfreeze(m, "weight")
    assert m.weight.requires_grad and not m.bias.requires_grad


def test_ema_of_bfloat16_parameters_follows_torch():
    fn = ng.optim.swa_utils.get_ema_multi_avg_fn(0.9)
    tfn = torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)
    e, te = _pair(_rand(5))
    p, tp = _pair(_rand(5, seed=1))
    fn([e], [p], 1)
    tfn([te], [tp], torch.tensor(1))
    _close(e, te, rtol=1e-2, atol=1e-2)


def test_adafactor_steps_bfloat16_parameters_as_torch():
    p, tp = _pair(_rand(3, 4), grad=True)
    opt, topt = ng.optim.Adafactor([p], lr=0.01), torch.optim.Adafactor([tp], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        topt.zero_grad()
        (p * p).sum().backward()
        (tp * tp).sum().backward()
        opt.step()
        topt.step()
    assert p.dtype == BF
    _close(p, tp)


def test_distributions_keep_bfloat16_parameters():
    loc, tloc = _pair(_rand(3))
    d = ng.distributions.Normal(loc, 1.0)
    td = torch.distributions.Normal(tloc, 1.0)
    assert d.scale.dtype == BF and td.scale.dtype == torch.bfloat16
    x, tx = _pair(_rand(3, seed=1))
    _close(d.log_prob(x), td.log_prob(tx))
    assert d.sample().dtype == BF


def test_standardize_keeps_bfloat16_data():
    x = _rand(8, 3).astype(B.bfloat16)
    s = ng.data.preprocess.Standardize().fit(x)
    z = s.transform(x)
    assert z.dtype == B.bfloat16
    np.testing.assert_allclose(z.astype(np.float64).mean(0), 0, atol=2e-2)


# --- random sampling -----------------------------------------------------------------------------
def test_random_sampling_takes_bfloat16_as_torch():
    tbf = torch.bfloat16
    assert ng.randperm(5, dtype=BF).dtype == BF and torch.randperm(5, dtype=tbf).dtype == tbf
    p, tp = _pair(np.full(6, 0.5))
    for fn in ("bernoulli", "poisson"):
        assert getattr(ng, fn)(p).dtype == BF and getattr(torch, fn)(tp).dtype == tbf
    assert ng.normal(p, 1.0).dtype == BF and torch.normal(tp, 1.0).dtype == tbf
    assert ng.multinomial(p, 2).dtype == ng.int64
    t = ng.zeros(2000, dtype=BF).random_()  # integers bfloat16 holds exactly: up to 2**8
    tt = torch.zeros(2000, dtype=tbf).random_()
    assert _values(t).max() <= 256 and _values(tt).max() <= 256 and _values(t).max() > 200
    assert ng.zeros(3, dtype=BF).geometric_(0.3).dtype == BF
    assert ng.zeros(3, dtype=BF).bernoulli_(p[:3]).dtype == BF
    with pytest.raises(NotImplementedError):
        torch.binomial(tp * 4, tp)
    with pytest.raises(ng.errors.DTypeError, match="binomial: bfloat16"):
        ng.binomial(p * 4, p)


# --- ops: in place, order statistics, products, special functions ------------------------------
def test_in_place_ops_refuse_mixing_bfloat16_and_float32_as_out_of_place():
    x = ng.zeros(3, dtype=BF)
    with pytest.raises(ng.errors.DTypeError, match="mixed float dtypes"):
        x + ng.ones(3)
    with pytest.raises(ng.errors.DTypeError, match="mixed float dtypes"):
        x += ng.ones(3)
    x += ng.ones(3, dtype=BF)
    x += 1.5
    x += ng.tensor(2.0)  # 0-d: a scalar
    assert x.dtype == BF and _values(x).tolist() == [4.5] * 3


def test_median_unique_and_nan_reductions_take_bfloat16_as_torch():
    n, tn = _pair([1.0, float("nan"), 3.0, 2.0])
    _close(ng.median(n.reshape(2, 2), 1).values, torch.median(tn.reshape(2, 2), 1).values)
    _close(ng.nanmedian(n), torch.nanmedian(tn))
    assert np.isnan(_values(ng.median(ng.zeros(0, dtype=BF))))
    assert np.isnan(_values(torch.median(torch.zeros(0, dtype=torch.bfloat16))))
    _close(ng.unique(n), torch.unique(tn))
    x, tx = _pair([1.0, 2.0, 2.0, 0.5], grad=True)
    ng.median(x).backward()  # ties share the gradient, as PyTorch's
    torch.median(tx).backward()
    _close(x.grad, tx.grad)
    _close(ng.histc(x.detach(), bins=3), torch.histc(tx.detach(), bins=3))


def test_quantile_histogram_and_window_functions():
    x, tx = _pair([1.0, 2.0, 3.0, 4.0])
    for fn in ("quantile", "nanquantile"):
        with pytest.raises(RuntimeError):
            getattr(torch, fn)(tx, 0.5)
        with pytest.raises(ng.errors.DTypeError, match=f"{fn}: bfloat16 is not supported"):
            getattr(ng, fn)(x, 0.5)
    with pytest.raises(NotImplementedError):
        torch.histogram(tx, bins=2)
    with pytest.raises(ng.errors.DTypeError, match="histogram: bfloat16 is not supported"):
        ng.histogram(x, bins=2)
    for w in ("hann_window", "hamming_window", "blackman_window", "bartlett_window"):
        # computed in float64 and rounded once (PyTorch computes in bfloat16: 1 ulp apart)
        _close(getattr(ng, w)(6, dtype=BF), getattr(torch, w)(6, dtype=torch.bfloat16))
    _close(ng.fft.fftfreq(4, dtype=BF), torch.fft.fftfreq(4, dtype=torch.bfloat16))


def test_products_angle_and_segment_reduce_take_bfloat16_as_torch():
    x, tx = _pair(_rand(3, 4))
    c = ng.cov(x)
    assert c.dtype == BF
    _close(c, torch.cov(tx))
    _close(ng.dist(x, x * 2), torch.dist(tx, tx * 2))
    _close(ng.renorm(x, 2, 0, 1.0), torch.renorm(tx, 2, 0, 1.0))
    _close(ng.angle(x), torch.angle(tx))
    _close(ng.linalg.vecdot(x, x), torch.linalg.vecdot(tx, tx))
    d, td = _pair([1.0, 2.0, 3.0, 4.0])
    _close(ng.segment_reduce(d, "sum", lengths=ng.tensor([2, 2])),
           torch.segment_reduce(td, "sum", lengths=torch.tensor([2, 2])))


def test_special_sign_and_float_steps_take_bfloat16_as_torch():
    bits = np.array([0x3F80, 0x8000, 0xFFC0, 0x4000], np.uint16)  # 1, -0, -NaN, 2
    x = ng.tensor(bits.view(B.bfloat16))
    tx = torch.tensor(bits.view(np.int16)).view(torch.bfloat16)
    y, ty = _pair(np.full(4, 3.0))
    got, want = ng.nextafter(x, y), torch.nextafter(tx, ty)  # bfloat16's next float
    assert (got.numpy().view(np.uint16) == want.view(torch.int16).numpy().view(np.uint16)).all()
    assert ng.nextafter(x, 3.0).numpy().view(np.uint16)[0] == 0x3F81
    assert ng.signbit(x).numpy().tolist() == torch.signbit(tx).tolist()
    _close(ng.sgn(x), torch.sgn(tx))
    _close(ng.ldexp(x, ng.tensor([1, 2, 3, 4])), torch.ldexp(tx, torch.tensor([1, 2, 3, 4])))
    with pytest.raises(NotImplementedError):
        torch.special.chebyshev_polynomial_t(tx, 2)
    with pytest.raises(TypeError, match="bfloat16 is not supported"):
        ng.special.chebyshev_polynomial_t(x, 2)
    with pytest.raises(ng.errors.DTypeError, match="bfloat16 is not supported"):
        ng.special.spherical_bessel_j0(x)


def test_numpy_nan_reductions_take_bfloat16_as_numpy():
    a = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, -2.0]], np.float32)
    x = ng.tensor(a.astype(B.bfloat16))
    np.testing.assert_array_equal(_values(ng.nanmax(x, 1)), np.nanmax(a, 1))
    np.testing.assert_array_equal(ng.nanargmax(x, 1).numpy(), np.nanargmax(a, 1))
    np.testing.assert_array_equal(_values(ng.nanprod(x, 1)), np.nanprod(a, 1))
    np.testing.assert_allclose(_values(ng.nanpercentile(x, 50, 1)), np.nanpercentile(a, 50, 1))
    e = np.array([0.0, 1.0, 4.0], np.float32)
    np.testing.assert_array_equal(
        _values(ng.histogram_bin_edges(ng.tensor(e.astype(B.bfloat16)), 4)),
        np.histogram_bin_edges(e, 4))
    with pytest.raises(ValueError, match="infs or NaNs"):
        ng.asarray_chkfinite(x)
    b = np.array([1.5, 2.5], B.bfloat16)  # NumPy arrays of ml_dtypes' bfloat16 are numbers
    assert ng.asarray_chkfinite(b).dtype == BF and ng.append(b, b).dtype == BF
    np.testing.assert_array_equal(_values(ng.polyval(ng.tensor(b), 2.0)), [5.5])


# --- tools: pruning, diagnostics, TensorBoard, quasi-random -------------------------------------
def test_pruning_diagnostics_and_tensorboard_take_bfloat16(tmp_path):
    m = ng.nn.Linear(4, 2).to(BF)
    mask = ng.tensor(np.array([[1, 0, 1, 0]] * 2, np.float32)).to(BF)
    ng.prune.apply_mask(m, "weight", mask)
    assert (_values(m.weight)[:, 1] == 0).all()
    from torch.nn.utils import prune as tprune
    tm = torch.nn.Linear(4, 2).bfloat16()
    tprune.custom_from_mask(tm, "weight", torch.tensor([[1, 0, 1, 0]] * 2))
    assert (tm.weight[:, 1] == 0).all()
    x = ng.tensor(_rand(2, 4)).to(BF)
    rows = ng.diagnostics.check_gradients(ng.nn.Linear(4, 2), ng.nn.functional.mse_loss, x,
                                          ng.tensor(_rand(2, 2)).to(BF))  # data in float64
    assert max(r["max_rel_error"] for r in rows) < 1e-5
    ng.utils.tensorboard.SummaryWriter(str(tmp_path)).add_histogram("w", x)
    with pytest.raises(NotImplementedError):
        torch.quasirandom.SobolEngine(2).draw(2, dtype=torch.bfloat16)
    with pytest.raises(ng.errors.DTypeError, match="bfloat16 is not supported"):
        ng.quasirandom.SobolEngine(2).draw(2, dtype=BF)


def test_scan_gradients_and_hessian_eigenvalues_take_bfloat16():
    x, tx = _pair([0.5, 1.0, 1.5], grad=True)

    def body(c, xi):
        return c * xi, c

    g = ng.func.grad(lambda v: ng.lax.scan(body, ng.tensor(1.0, dtype=BF), v)[0])(x.detach())
    torch.prod(tx).backward()
    assert g.dtype == BF
    _close(g, tx.grad)
    p = ng.tensor(np.array([1.0, 2.0], np.float32)).to(BF)
    (ev,) = ng.diagnostics.hessian_eigenvalues(lambda w: (w ** 2).sum(), p, k=1)
    assert ev == pytest.approx(2.0, rel=2e-2)
