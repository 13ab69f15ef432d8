"""PyTorch's call forms of nn.functional against torch: ``inplace=True`` (the input changed and
returned), the first parameter named ``input`` and torch's names and order, unbatched inputs
to convolutions and pools (values and gradients as the batched call's), adaptive output sizes
with ``None``, integer average pooling, pad's edge cases, ``normalize(out=)``, embedding's
``scale_grad_by_freq`` and Hardtanh's old keyword names. Values and gradients in float64."""

import inspect
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import GradError, ShapeError
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional
TOL = 1e-12


def _pair(ours, theirs, *arrays, grads=True, seed=1):
    """``ours``/``theirs`` on the same float64 arrays: outputs equal, and the gradients of one
    random projection of the (first) output with respect to every array."""
    xo = [ng.tensor(a, requires_grad=grads) for a in arrays]
    xt = [torch.tensor(a, requires_grad=grads) for a in arrays]
    yo, yt = ours(*xo), theirs(*xt)
    outs_o = yo if isinstance(yo, tuple) else (yo,)
    outs_t = yt if isinstance(yt, tuple) else (yt,)
    for a, b in zip(outs_o, outs_t):
        assert tuple(a.shape) == tuple(b.shape)
        assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1]
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=TOL, atol=TOL)
    if grads:
        g = np.random.default_rng(seed).standard_normal(tuple(outs_t[0].shape))
        (outs_o[0] * ng.tensor(g)).sum().backward()
        (outs_t[0] * torch.tensor(g)).sum().backward()
        for a, b in zip(xo, xt):
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=TOL, atol=TOL)


# --- inplace= -----------------------------------------------------------------------------------
INPLACE = [("relu", ()), ("relu6", ()), ("elu", (0.7,)), ("selu", ()), ("celu", (0.5,)),
           ("leaky_relu", (0.2,)), ("hardtanh", (-0.5, 0.8)), ("hardsigmoid", ()),
           ("hardswish", ()), ("silu", ()), ("mish", ()), ("threshold", (0.1, -3.0)),
           ("rrelu", (0.1, 0.3, False)), ("dropout", (0.3, False)),
           ("alpha_dropout", (0.3, False)), ("dropout1d", (0.3, False)),
           ("dropout2d", (0.3, False)), ("dropout3d", (0.3, False)),
           ("feature_alpha_dropout", (0.3, False))]


@pytest.mark.parametrize("name,args", INPLACE, ids=[n for n, _ in INPLACE])
def test_inplace_changes_and_returns_the_input_as_torch(name, args):
    shape = (2, 3, 4) if name == "dropout1d" else (2, 3, 4, 4)
    x = np.random.default_rng(0).standard_normal(shape) * 4
    # PyTorch's float64 hardsigmoid gradient is a float32 1/6 (3e-8 off): ours is 1/6 exactly
    tol = 1e-7 if name == "hardsigmoid" else TOL
    xo, xt = ng.tensor(x), torch.tensor(x)
    yo = getattr(F, name)(xo, *args, inplace=True)
    getattr(TF, name)(xt, *args, inplace=True)
    assert yo is xo
    np.testing.assert_allclose(xo.numpy(), xt.numpy(), rtol=TOL, atol=TOL)
    # recorded: the input (a non-leaf) is rebound, the gradient is the out-of-place one
    lo, lt = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    ho, ht = lo * 2.0, lt * 2.0
    assert getattr(F, name)(ho, *args, inplace=True) is ho
    getattr(TF, name)(ht, *args, inplace=True)
    np.testing.assert_allclose(ho.numpy(), ht.detach().numpy(), rtol=TOL, atol=TOL)
    g = np.random.default_rng(2).standard_normal(x.shape)
    (ho * ng.tensor(g)).sum().backward()
    (ht * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(lo.grad.numpy(), lt.grad.numpy(), rtol=tol, atol=tol)
    # out of place by default: the input is untouched
    zo = ng.tensor(x)
    getattr(F, name)(zo, *args)
    np.testing.assert_array_equal(zo.numpy(), x)


def test_inplace_on_a_leaf_that_requires_grad_is_refused_as_torch():
    x = ng.tensor([1.0, -2.0], requires_grad=True)
    with pytest.raises(GradError, match="relu_: a leaf tensor"):
        F.relu(x, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        TF.relu(torch.tensor([1.0, -2.0], requires_grad=True), inplace=True)


def test_dropout_inplace_while_training_keeps_the_drawn_mask_in_the_input():
    x = ng.ones(1000)
    y = F.dropout(x, 0.5, True, True, generator=ng.Generator(seed=3))
    assert y is x
    vals = set(np.unique(x.numpy()).tolist())
    assert vals <= {0.0, 2.0} and len(vals) == 2
    with pytest.raises(TypeError, match=r"dropout: inplace must be a bool.*mode= as a keyword"):
        F.dropout(ng.ones(3), 0.5, True, "classic")
    classic = F.dropout(ng.ones(4), 0.5, False, mode="classic")
    np.testing.assert_array_equal(classic.numpy(), np.full(4, 0.5))


def test_softmax_family_takes_stacklevel_and_dtype_positionally():
    x = np.random.default_rng(0).standard_normal((3, 4))
    for name in ("softmax", "softmin", "log_softmax"):
        yo = getattr(F, name)(ng.tensor(x, dtype=ng.float32), 1, 3, ng.float64)
        yt = getattr(TF, name)(torch.tensor(x, dtype=torch.float32), 1, 3, torch.float64)
        assert yo.dtype == ng.float64
        np.testing.assert_allclose(yo.numpy(), yt.numpy(), rtol=1e-6)
        _pair(lambda t, n=name: getattr(F, n)(t, dim=0, _stacklevel=5),
              lambda t, n=name: getattr(TF, n)(t, dim=0, _stacklevel=5), x)
    np.testing.assert_allclose(F.log_softmax(ng.tensor(x), axis=-1).numpy(),
                               TF.log_softmax(torch.tensor(x), -1).numpy(), rtol=TOL)


# --- names and order ----------------------------------------------------------------------------
SIGNATURES = ["relu", "relu6", "elu", "selu", "celu", "leaky_relu", "hardtanh", "hardsigmoid",
              "hardswish", "silu", "mish", "threshold", "rrelu", "glu", "softmin", "softmax",
              "log_softmax", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
              "feature_alpha_dropout", "normalize", "batch_norm", "layer_norm", "group_norm",
              "instance_norm", "local_response_norm", "rms_norm", "embedding", "interpolate",
              "fold", "unfold", "lp_pool1d", "lp_pool2d", "lp_pool3d", "max_unpool1d",
              "max_unpool2d", "max_unpool3d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
              "upsample"]


@pytest.mark.parametrize("name", SIGNATURES)
def test_parameters_have_torchs_names_order_and_defaults(name):
    theirs = list(inspect.signature(getattr(TF, name)).parameters.values())
    ours = list(inspect.signature(getattr(F, name)).parameters.values())
    assert [p.name for p in ours[:len(theirs)]] == [p.name for p in theirs]
    for a, b in zip(ours, theirs):
        assert a.default == b.default or b.default is inspect.Parameter.empty and \
            a.default is inspect.Parameter.empty


def test_keyword_input_as_torch():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    np.testing.assert_allclose(
        F.conv2d(input=ng.tensor(x), weight=ng.tensor(w)).numpy(),
        TF.conv2d(input=torch.tensor(x), weight=torch.tensor(w)).numpy(), rtol=TOL, atol=TOL)
    for name in ("relu", "gelu", "sigmoid", "tanh", "softplus", "logsigmoid", "softsign",
                 "tanhshrink", "softshrink", "hardshrink", "silu", "selu"):
        np.testing.assert_allclose(getattr(F, name)(input=ng.tensor(x)).numpy(),
                                   getattr(TF, name)(input=torch.tensor(x)).numpy(),
                                   rtol=1e-12, atol=1e-12, err_msg=name)
    a = np.array([0.3, 0.1])
    np.testing.assert_allclose(F.prelu(input=ng.tensor(x), weight=ng.tensor(a)).numpy(),
                               TF.prelu(torch.tensor(x), torch.tensor(a)).numpy())


def test_normalize_writes_into_out_and_takes_a_scalar():
    x = np.random.default_rng(0).standard_normal((3, 4))
    out = ng.empty(3, 4, dtype=ng.float64)
    assert F.normalize(ng.tensor(x), 1.5, 0, out=out) is out
    np.testing.assert_allclose(out.numpy(), TF.normalize(torch.tensor(x), 1.5, 0).numpy(),
                               rtol=TOL)
    _pair(lambda t: F.normalize(t, 1.2, 0), lambda t: TF.normalize(t, 1.2, 0), np.array(-0.7))


# --- unbatched input ----------------------------------------------------------------------------
def _unbatched_pair(ours, theirs, x, *rest):
    """The unbatched call against torch's, and against our own batched call of one."""
    _pair(ours, theirs, x, *rest)
    xo = ng.tensor(x)
    single = ours(xo, *[ng.tensor(r) for r in rest])
    batch = ours(ng.tensor(x[None]), *[ng.tensor(r) for r in rest])
    singles = single if isinstance(single, tuple) else (single,)
    batches = batch if isinstance(batch, tuple) else (batch,)
    for a, b in zip(singles, batches):
        np.testing.assert_allclose(a.numpy(), b.numpy()[0], rtol=TOL, atol=TOL)


CONVS = [
    ("conv1d", (3, 8), (4, 3, 3), dict(stride=2, padding=1)),
    ("conv1d", (4, 8), (2, 2, 3), dict(stride=3, padding=1, groups=2, dilation=2)),
    ("conv1d", (4, 5), (1, 4, 2), dict(padding="same")),
    ("conv2d", (3, 6, 5), (2, 3, 3, 2), dict(stride=(2, 1), padding=(1,))),
    ("conv3d", (2, 4, 4, 3), (3, 2, 2, 2, 2), dict(dilation=(1,), padding=1)),
    ("conv_transpose1d", (3, 4), (3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose2d", (2, 4, 4), (2, 2, 4, 3), dict(stride=(3, 2), groups=2, dilation=2)),
    ("conv_transpose3d", (2, 3, 2, 3), (2, 1, 2, 2, 2), dict(stride=2, output_padding=1)),
]


@pytest.mark.parametrize("name,xs,ws,kw", CONVS, ids=[c[0] for c in CONVS])
def test_unbatched_convolutions_match_torch(name, xs, ws, kw):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    out_channels = ws[1] * kw.get("groups", 1) if "transpose" in name else ws[0]
    b = rng.standard_normal(out_channels)
    _unbatched_pair(lambda t, v, c: getattr(F, name)(t, v, c, **kw),
                    lambda t, v, c: getattr(TF, name)(t, v, c, **kw), x, w, b)


def test_unbatched_convolution_modules_match_torch():
    rng = np.random.default_rng(3)
    for ours, theirs, shape in ((nn.Conv1d, torch.nn.Conv1d, (2, 7)),
                                (nn.Conv2d, torch.nn.Conv2d, (2, 5, 6)),
                                (nn.ConvTranspose2d, torch.nn.ConvTranspose2d, (2, 3, 4))):
        mo, mt = ours(2, 3, 3, padding=1).double(), theirs(2, 3, 3, padding=1).double()
        with torch.no_grad():
            mt.weight.copy_(torch.tensor(mo.weight.numpy()))
            mt.bias.copy_(torch.tensor(mo.bias.numpy()))
        x = rng.standard_normal(shape)
        _pair(mo, mt, x)
    mo = nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect").double()
    mt = torch.nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect").double()
    with torch.no_grad():
        mt.weight.copy_(torch.tensor(mo.weight.numpy()))
        mt.bias.copy_(torch.tensor(mo.bias.numpy()))
    _pair(mo, mt, rng.standard_normal((2, 6)))


POOLS = [
    ("max_pool1d", (3, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool2d", (2, 5, 6), dict(kernel_size=(3,), stride=1, padding=(1,), ceil_mode=True)),
    ("max_pool3d", (2, 4, 4, 5), dict(kernel_size=2, dilation=(1, 2, 1))),
    ("avg_pool1d", (3, 9), dict(kernel_size=3, padding=1, count_include_pad=False)),
    ("avg_pool2d", (2, 9, 9), dict(kernel_size=3, stride=(2,), padding=(1,), ceil_mode=True,
                                   count_include_pad=False, divisor_override=2)),
    ("avg_pool3d", (2, 4, 4, 4), dict(kernel_size=2, stride=1, padding=1)),
    ("lp_pool1d", (3, 8), dict(norm_type=2, kernel_size=3)),
    ("lp_pool2d", (2, 6, 6), dict(norm_type=3, kernel_size=2)),
    ("adaptive_avg_pool1d", (3, 8), dict(output_size=(5,))),
    ("adaptive_avg_pool2d", (3, 8, 7), dict(output_size=(None, 3))),
    ("adaptive_avg_pool3d", (2, 4, 3, 7), dict(output_size=(None, None, 2))),
    ("adaptive_max_pool1d", (4, 7), dict(output_size=3, return_indices=True)),
    ("adaptive_max_pool2d", (4, 5, 6), dict(output_size=(None, 3), return_indices=True)),
    ("adaptive_max_pool3d", (2, 4, 3, 5), dict(output_size=(None, 2, None))),
    ("max_pool2d", (2, 5, 6), dict(kernel_size=2, return_indices=True)),
]


@pytest.mark.parametrize("name,shape,kw", POOLS, ids=[p[0] for p in POOLS])
def test_unbatched_pools_match_torch(name, shape, kw):
    x = np.random.default_rng(0).standard_normal(shape)
    if name.startswith("lp_pool"):
        x = np.abs(x) + 0.1
    _unbatched_pair(lambda t: getattr(F, name)(t, **kw), lambda t: getattr(TF, name)(t, **kw), x)


def test_adaptive_pools_with_none_keep_the_batched_axis():
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 6))
    _pair(lambda t: F.adaptive_avg_pool2d(t, (None, 4)),
          lambda t: TF.adaptive_avg_pool2d(t, (None, 4)), x)
    _pair(lambda t: F.adaptive_max_pool2d(t, (5, None), True),
          lambda t: TF.adaptive_max_pool2d(t, (5, None), True), x)
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size must be an int or 2"):
        F.adaptive_avg_pool2d(ng.tensor(x), (1, 2, 3))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched_max_unpool_matches_torch(nd):
    x = np.random.default_rng(nd).standard_normal((3,) + (4,) * nd)
    pool, unpool = getattr(TF, f"max_pool{nd}d"), getattr(F, f"max_unpool{nd}d")
    yt, it = pool(torch.tensor(x), 2, return_indices=True)
    io = ng.tensor(it.numpy())
    _pair(lambda t: unpool(t, io, 2), lambda t: getattr(TF, f"max_unpool{nd}d")(t, it, 2),
          yt.numpy())


def test_unbatched_errors_name_both_forms():
    with pytest.raises(ShapeError, match=r"conv2d: expected input of shape \(N, C, H, W\) or "
                                         r"unbatched \(C, H, W\), got \(5,\)"):
        F.conv2d(ng.ones(5), ng.ones(1, 1, 1, 1))
    with pytest.raises(ShapeError, match=r"max_pool1d: .*unbatched \(C, L\), got \(2, 2, 2, 2\)"):
        F.max_pool1d(ng.ones(2, 2, 2, 2), 2)
    with pytest.raises(ShapeError, match="adaptive_avg_pool3d: expected input of shape"):
        nn.AdaptiveAvgPool3d(2)(ng.zeros(3, 4, 4))


# --- integer pooling and activations ------------------------------------------------------------
INT_POOLS = [
    ("avg_pool1d", (2, 3, 9), dict(kernel_size=3)),
    ("avg_pool1d", (1, 3, 9), dict(kernel_size=3, stride=1, padding=1, ceil_mode=True,
                                   count_include_pad=False)),
    ("avg_pool2d", (1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("avg_pool2d", (1, 1, 4, 4), dict(kernel_size=2, divisor_override=-3)),
    ("avg_pool3d", (1, 2, 4, 4, 4), dict(kernel_size=2, stride=1, padding=1, ceil_mode=True,
                                         count_include_pad=False, divisor_override=3)),
    ("avg_pool3d", (2, 3, 4), dict(kernel_size=2, padding=1, count_include_pad=False)),
]


@pytest.mark.parametrize("name,shape,kw", INT_POOLS)
def test_integer_average_pools_stay_integer_and_truncate_as_torch(name, shape, kw):
    x = np.random.default_rng(0).integers(-50, 50, shape)
    if len(shape) == 3 and name == "avg_pool3d":
        x = x[None]
    _pair(lambda t: getattr(F, name)(t, **kw), lambda t: getattr(TF, name)(t, **kw), x,
          grads=False)


def test_integer_hardtanh_relu6_threshold_keep_the_dtype_as_torch():
    x = np.arange(-7, 8)
    for fo, ft in ((lambda t: F.hardtanh(t, -2.7, 3.5), lambda t: TF.hardtanh(t, -2.7, 3.5)),
                   (lambda t: F.hardtanh(t, -0.5, 0.5), lambda t: TF.hardtanh(t, -0.5, 0.5)),
                   (F.relu6, TF.relu6),
                   (lambda t: F.threshold(t, 1.5, 2.7), lambda t: TF.threshold(t, 1.5, 2.7))):
        _pair(fo, ft, x, grads=False)


def test_integer_transposed_convolution_matches_torch():
    rng = np.random.default_rng(0)
    x, w, b = rng.integers(-5, 5, (2, 4, 4)), rng.integers(-5, 5, (2, 2, 4, 5)), \
        rng.integers(-5, 5, (4,))
    kw = dict(stride=(3, 2), padding=(1, 2), output_padding=(2, 3), groups=2, dilation=(4, 4))
    _pair(lambda *t: F.conv_transpose2d(*t, **kw), lambda *t: TF.conv_transpose2d(*t, **kw),
          x, w, b, grads=False)


# --- edge shapes ----------------------------------------------------------------------------------
def test_empty_and_edge_shapes_as_torch():
    rng = np.random.default_rng(0)
    _pair(lambda t: F.unfold(t, 2, 1, 0, (1, 2)), lambda t: TF.unfold(t, 2, 1, 0, (1, 2)),
          rng.standard_normal((0, 1, 5, 5)))
    _pair(lambda t: F.adaptive_avg_pool1d(t, (5,)), lambda t: TF.adaptive_avg_pool1d(t, (5,)),
          rng.standard_normal((0, 8, 8)))
    for training in (True, False):
        _pair(lambda t, r, v: F.batch_norm(t, r, v, training=training),
              lambda t, r, v: TF.batch_norm(t, r, v, training=training),
              np.zeros(0), np.zeros(0), np.zeros(0), grads=False)
    with pytest.raises(ShapeError, match="batch_norm: expected"):
        F.batch_norm(ng.ones(3), ng.ones(3), ng.ones(3))
    x = ng.tensor(rng.standard_normal(5))
    for p in (0.0, 0.5, 1.0):
        assert F.feature_alpha_dropout(x, p, False) is x
    with pytest.raises(ShapeError, match="feature_alpha_dropout: feature dropout needs"):
        F.feature_alpha_dropout(x, 0.5, True)


PADS = [((0, 3, 3), (1, 2), "reflect"), ((0, 3, 3), (0, 1), "circular"),
        ((5, 3, 4, 4), (-4, 5, 0, 0), "replicate"), ((6, 2, 4, 4), (0, 0, 2, -4), "replicate"),
        ((2, 3, 4, 4), (5, -4, -4, 3), "replicate"), ((2, 3, 5), (-1, 2), "replicate")]


@pytest.mark.parametrize("shape,widths,mode", PADS)
def test_pad_edge_cases_match_torch(shape, widths, mode):
    x = np.random.default_rng(0).standard_normal(shape)
    _pair(lambda t: F.pad(t, widths, mode), lambda t: TF.pad(t, widths, mode), x)


def test_pad_keeps_its_errors():
    with pytest.raises(ShapeError, match="pad: widths"):
        F.pad(ng.ones(2, 3, 0), (1, 1), "reflect")
    with pytest.raises(ShapeError, match="pad: widths"):
        F.pad(ng.ones(2, 3, 4), (-3, -2), "replicate")


# --- embedding and Hardtanh ----------------------------------------------------------------
def test_embedding_scale_grad_by_freq_matches_torch():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3))
    idx = np.array([[0, 2, 2, 5], [2, 1, 0, 2]])
    for pad in (None, 2):
        wo, wt = ng.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)
        yo = F.embedding(ng.tensor(idx), wo, pad, scale_grad_by_freq=True)
        yt = TF.embedding(torch.tensor(idx), wt, pad, scale_grad_by_freq=True)
        np.testing.assert_array_equal(yo.numpy(), yt.detach().numpy())
        g = rng.standard_normal(yt.shape)
        (yo * ng.tensor(g)).sum().backward()
        (yt * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(wo.grad.numpy(), wt.grad.numpy(), rtol=TOL, atol=TOL)


def test_hardtanh_takes_the_old_keyword_names_with_a_warning():
    with pytest.warns(FutureWarning, match="min_value"):
        ours = nn.Hardtanh(min_value=-2.0, max_value=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.nn.Hardtanh(min_value=-2.0, max_value=0.5)
    assert repr(ours) == repr(theirs)
    x = np.linspace(-3, 3, 13)
    np.testing.assert_array_equal(ours(ng.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy())
    with pytest.raises(ValueError, match="Hardtanh: min_val 2.0 must not exceed max_val 1.0"):
        nn.Hardtanh(2.0, 1.0)


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_conv_tbc_matches_torch(pad):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(pad)
    x, w, b = rng.standard_normal((7, 2, 3)), rng.standard_normal((3, 3, 4)), rng.standard_normal(4)
    ours = [ng.tensor(a, requires_grad=True) for a in (x, w, b)]
    theirs = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    yo, yt = F.conv_tbc(*ours, pad), torch.nn.functional.conv_tbc(*theirs, pad)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(yo.shape)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-10)
    with pytest.raises(ng.ShapeError, match="conv_tbc: weight"):
        F.conv_tbc(ours[0], ng.randn(3, 5, 4, dtype=ng.float64), ours[2])
