"""PyTorch's padding layers (Zero/Constant/Reflection/Replication/CircularPad{1,2,3}d), the
small layers beside them (Softmax2d, ChannelShuffle, SmoothL1Loss, BatchNorm3d) and the 3-D
forms of pooling, unpooling and transposed convolution against torch: values, input gradients
and reprs in float64; clear errors for wrong inputs."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F
from nodegrad.errors import ShapeError
from nodegrad.nn.layers.padding import PADDING_LAYERS

torch = pytest.importorskip("torch")


def _compare(ours, theirs, x, rng, tol=1e-12):
    """Outputs and the input gradient of one random projection, ours against torch's."""
    xo, xt = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yo, yt = ours(xo), theirs(xt)
    assert tuple(yo.shape) == tuple(yt.shape)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=tol, atol=tol)
    g = rng.standard_normal(tuple(yt.shape))
    (yo * ng.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)


def _paddings(cls):
    nd = int(cls.__name__[-2])
    crop = "Constant" in cls.__name__ or "Zero" in cls.__name__  # negative widths crop
    return [2, tuple(range(1, 2 * nd + 1)), tuple([1, -1 if crop else 0] * nd)]


@pytest.mark.parametrize("cls", PADDING_LAYERS, ids=lambda c: c.__name__)
def test_padding_layers_match_torch(cls):
    rng = np.random.default_rng(0)
    nd = int(cls.__name__[-2])
    for pad in _paddings(cls):
        args = (pad, 1.5) if cls.__name__.startswith("Constant") else (pad,)
        ours, theirs = cls(*args), getattr(torch.nn, cls.__name__)(*args)
        assert repr(ours) == repr(theirs)
        for lead in ((2, 3), (3,)):  # batched and unbatched
            _compare(ours, theirs, rng.standard_normal(lead + (7,) * nd), rng)


def test_padding_layers_refuse_wrong_inputs():
    with pytest.raises(ShapeError, match=r"ReflectionPad2d: expected a 3-D \(unbatched\) or 4-D"):
        nn.ReflectionPad2d(1)(ng.zeros(5, 5))
    with pytest.raises(ValueError, match="ZeroPad2d: padding must be an int or 4 widths"):
        nn.ZeroPad2d((1, 2))
    with pytest.raises(ShapeError, match="reflect"):  # wider than the input allows
        nn.ReflectionPad1d(4)(ng.zeros(1, 2, 3))


def test_softmax2d_and_channel_shuffle_match_torch():
    rng = np.random.default_rng(1)
    for shape in ((2, 6, 3, 4), (6, 3, 4)):
        _compare(nn.Softmax2d(), torch.nn.Softmax2d(), rng.standard_normal(shape), rng)
    for shape, g in (((2, 6, 3, 4), 3), ((2, 6, 5), 2), ((1, 4, 2, 2, 2), 4)):
        ours, theirs = nn.ChannelShuffle(g), torch.nn.ChannelShuffle(g)
        assert repr(ours) == repr(theirs)
        _compare(ours, theirs, rng.standard_normal(shape), rng)
    with pytest.raises(ShapeError, match="channel_shuffle: expected .* divisible by groups"):
        nn.ChannelShuffle(4)(ng.zeros(2, 6, 3))
    with pytest.raises(ShapeError, match="Softmax2d: expected a 3-D or 4-D input"):
        nn.Softmax2d()(ng.zeros(2, 3))


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_loss_module_matches_torch(beta, reduction):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    ao = ng.tensor(a, requires_grad=True)
    at = torch.tensor(a, requires_grad=True)
    lo = nn.SmoothL1Loss(reduction, beta)(ao, ng.tensor(b))
    lt = torch.nn.SmoothL1Loss(reduction=reduction, beta=beta)(at, torch.tensor(b))
    np.testing.assert_allclose(lo.numpy(), lt.detach().numpy(), rtol=1e-12)
    lo.sum().backward()
    lt.sum().backward()
    np.testing.assert_allclose(ao.grad.numpy(), at.grad.numpy(), rtol=1e-12)


def test_batch_norm_3d_matches_torch_in_training_and_eval():
    rng = np.random.default_rng(3)
    ours, theirs = nn.BatchNorm3d(4).double(), torch.nn.BatchNorm3d(4).double()
    for _ in range(2):
        _compare(ours, theirs, rng.standard_normal((2, 4, 3, 3, 2)), rng)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).numpy())
    ours.eval()
    theirs.eval()
    _compare(ours, theirs, rng.standard_normal((3, 4, 2, 2, 2)), rng)
    with pytest.raises(ShapeError, match="BatchNorm3d\\(4\\): expected 5-d input"):
        ours(ng.zeros(2, 4, 3, 3))


def _load(ours, theirs):
    ours.double()
    theirs.double()
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})


def test_three_dimensional_pooling_and_transposed_convolution_match_torch():
    """AdaptiveAvgPool3d, AdaptiveMaxPool3d (and its indices), LPPool3d, ConvTranspose3d and
    MaxUnpool3d, the 3-D forms of the 1-D and 2-D layers."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6, 4))
    for ours, theirs in ((nn.AdaptiveAvgPool3d((3, 2, 4)), torch.nn.AdaptiveAvgPool3d((3, 2, 4))),
                         (nn.AdaptiveMaxPool3d((4, 2, 3)), torch.nn.AdaptiveMaxPool3d((4, 2, 3))),
                         (nn.LPPool3d(2, 2), torch.nn.LPPool3d(2, 2)),
                         (nn.LPPool3d(3, (2, 3, 2), stride=1), torch.nn.LPPool3d(3, (2, 3, 2), 1))):
        if not isinstance(ours, nn.LPPool3d):
            assert repr(ours) == repr(theirs)
        _compare(ours, theirs, x, rng)
    np.testing.assert_array_equal(nn.AdaptiveMaxPool3d(2, True)(ng.tensor(x))[1].numpy(),
                                  torch.nn.AdaptiveMaxPool3d(2, True)(torch.tensor(x))[1].numpy())
    ours = nn.ConvTranspose3d(3, 4, 3, stride=2, padding=1, output_padding=1, groups=1)
    theirs = torch.nn.ConvTranspose3d(3, 4, 3, stride=2, padding=1, output_padding=1)
    _load(ours, theirs)
    _compare(ours, theirs, x, rng)
    yo, io = nn.MaxPool3d(2, return_indices=True)(ng.tensor(x))
    yt, it = torch.nn.MaxPool3d(2, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(io.numpy(), it.numpy())
    np.testing.assert_array_equal(nn.MaxUnpool3d(2)(yo, io).numpy(),
                                  torch.nn.MaxUnpool3d(2)(yt, it).numpy())
    with pytest.raises(ShapeError, match=r"adaptive_avg_pool3d: expected input of shape "
                                         r"\(N, C, D, H, W\) or unbatched"):
        nn.AdaptiveAvgPool3d(2)(ng.zeros(3, 4, 4))


def test_parameter_dict_as_torch():
    """Keys in PyTorch's order (a plain dict sorted, pairs and OrderedDicts as given), tensors
    made Parameters, registered for named_parameters, state_dict, optimisers and grad."""
    from collections import OrderedDict

    init = {"b": np.zeros(2, np.float32), "a": np.ones(3, np.float32)}
    ours = nn.ParameterDict({k: ng.tensor(v) for k, v in init.items()})
    theirs = torch.nn.ParameterDict({k: torch.tensor(v) for k, v in init.items()})
    ours["c"], theirs["c"] = ng.ones(2, 2), torch.ones(2, 2)
    ours.update([("e", ng.ones(1)), ("d", ng.ones(1))])
    theirs.update([("e", torch.ones(1)), ("d", torch.ones(1))])
    ours.update(OrderedDict([("g", ng.ones(1)), ("f", ng.ones(1))]))
    theirs.update(OrderedDict([("g", torch.ones(1)), ("f", torch.ones(1))]))
    assert list(ours.keys()) == list(theirs.keys()) == ["a", "b", "c", "e", "d", "g", "f"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in ours.values())
    assert "a" in ours and len(ours) == 7 and ours.get("zz") is None
    del ours["g"]
    assert ours.pop("f").shape == (1,) and list(ours) == ["a", "b", "c", "e", "d"]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = ours

        def forward(self, x):
            return (x * self.p["a"]).sum() + self.p["c"].sum()

    m = Model()
    assert [n for n, _ in m.named_parameters()] == ["p.a", "p.b", "p.c", "p.e", "p.d"]
    assert list(m.state_dict()) == ["p.a", "p.b", "p.c", "p.e", "p.d"]
    m(ng.full((3,), 2.0)).backward()
    np.testing.assert_array_equal(ours["a"].grad.numpy(), [2.0, 2.0, 2.0])
    ng.optim.SGD(m.parameters(), lr=0.5).step()
    np.testing.assert_array_equal(ours["a"].numpy(), [0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="ParameterDict: keys must be strings"):
        ours[1] = ng.ones(1)


ACTIVATIONS = [("ReLU", ()), ("LeakyReLU", (0.2,)), ("ELU", ()), ("CELU", (0.5,)), ("SELU", ()),
               ("SiLU", ()), ("Mish", ()), ("Hardswish", ()), ("Hardsigmoid", ()), ("ReLU6", ()),
               ("Hardtanh", (-2.0, 2.0)), ("Threshold", (0.1, 20.0))]


@pytest.mark.parametrize("name,args", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
@pytest.mark.parametrize("inplace", [False, True])
def test_activations_take_pytorchs_inplace(name, args, inplace):
    """``inplace`` as in PyTorch's constructors and reprs; the result is computed out of place
    (a new tensor, the input unchanged), so gradients are those of the plain layer."""
    rng = np.random.default_rng(5)
    ours = getattr(nn, name)(*args, inplace=inplace)
    theirs = getattr(torch.nn, name)(*args, inplace=False)
    assert repr(ours) == repr(getattr(torch.nn, name)(*args, inplace=inplace))
    x = rng.standard_normal((3, 4))
    xo = ng.tensor(x)
    # PyTorch's float64 hardsigmoid gradient is a float32 1/6 (3e-8 off): ours is 1/6 exactly
    _compare(ours, theirs, x, rng, tol=1e-7 if name == "Hardsigmoid" else 1e-12)
    ours(xo)
    np.testing.assert_array_equal(xo.numpy(), x)


@pytest.mark.parametrize("name", ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                                  "AlphaDropout"])
def test_dropouts_take_pytorchs_inplace(name):
    ours = getattr(nn, name)(0.2, inplace=True)
    assert repr(ours) == repr(getattr(torch.nn, name)(0.2, inplace=True))
    x = ng.ones(*{"Dropout1d": (2, 3, 4), "Dropout3d": (2, 3, 4, 4, 4)}.get(name, (2, 3, 4, 4)))
    y = ours(x)
    assert float(x.numpy().min()) == 1.0 and y.shape == x.shape
    positional = getattr(nn, name)(0.2, True)  # PyTorch's (p, inplace) order
    assert repr(positional) == repr(getattr(torch.nn, name)(0.2, True))
    if name == "Dropout":  # the notes' mode comes second here; a bool there is inplace
        with pytest.raises(TypeError, match="inplace goes second"):
            nn.Dropout(0.2, "inverted", True)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_convolution_padding_modes_and_same_padding_match_torch(nd, mode):
    """``padding_mode`` pads the input in that mode first (PyTorch's widths), and
    ``padding='same'``/``'valid'`` (an even kernel's extra on the right, dilation) as torch."""
    rng = np.random.default_rng(6)
    ours_cls, theirs_cls = getattr(nn, f"Conv{nd}d"), getattr(torch.nn, f"Conv{nd}d")
    for pad, k, d, s in ((1, 3, 1, 1), ("same", 4, 1, 1), ("same", 3, 2, 1), ("valid", 3, 1, 1),
                         (2, 3, 1, 2), (tuple(range(1, nd + 1)), 3, 1, 1)):
        kw = dict(stride=s, padding=pad, dilation=d, padding_mode=mode)
        ours, theirs = ours_cls(2, 3, k, **kw), theirs_cls(2, 3, k, **kw)
        _load(ours, theirs)
        x = rng.standard_normal((2, 2) + (7,) * nd)
        _compare(ours, theirs, x, rng)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        ours_cls(2, 3, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        ours_cls(2, 3, 3, stride=2, padding="same")(ng.zeros(*(1, 2) + (7,) * nd))
    with pytest.raises(ValueError, match="only padding_mode='zeros'"):
        getattr(nn, f"ConvTranspose{nd}d")(2, 3, 3, padding_mode=mode) if mode != "zeros" else \
            getattr(nn, f"ConvTranspose{nd}d")(2, 3, 3, padding_mode="reflect")


def test_embedding_padding_idx_and_layer_norm_without_bias_match_torch():
    """Embedding's ``padding_idx`` (negative from the end): the row starts at zero and gets no
    gradient; LayerNorm(bias=False) keeps a scale only. Unsupported Embedding options say so."""
    rng = np.random.default_rng(7)
    ours, theirs = nn.Embedding(6, 3, padding_idx=-2), torch.nn.Embedding(6, 3, padding_idx=-2)
    assert repr(ours).split("  #")[0] == repr(theirs)  # ours adds the parameter count
    np.testing.assert_array_equal(ours.weight.numpy()[4], np.zeros(3, np.float32))
    _load(ours, theirs)
    idx = np.array([[0, 4, 4], [5, 4, 1]])
    yo, yt = ours(ng.tensor(idx)), theirs(torch.tensor(idx))
    g = rng.standard_normal((2, 3, 3))
    (yo * ng.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy())
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy())
    assert not ours.weight.grad.numpy()[4].any()
    with pytest.raises(NotImplementedError, match="Embedding: sparse=True is not supported"):
        nn.Embedding(6, 3, sparse=True)
    with pytest.raises(ValueError, match="padding_idx 6 must be within the 6 embeddings"):
        nn.Embedding(6, 3, padding_idx=6)
    ours, theirs = nn.LayerNorm(4, bias=False), torch.nn.LayerNorm(4, bias=False)
    assert repr(ours).split("  #")[0] == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == ["weight"]
    _load(ours, theirs)
    _compare(ours, theirs, rng.standard_normal((3, 4)), rng)


def test_rrelu_in_evaluation_matches_torch_and_draws_slopes_in_training():
    """Evaluation: PyTorch's fixed slope (lower + upper) / 2. Training: each negative input's
    slope lies in [lower, upper], varies, is reproducible from the seed, and is its gradient."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 40))
    ours, theirs = nn.RReLU(0.1, 0.3).eval(), torch.nn.RReLU(0.1, 0.3).eval()
    assert repr(ours) == repr(theirs)
    _compare(ours, theirs, x, rng)
    ours.train()
    xo = ng.tensor(x, requires_grad=True)
    ng.manual_seed(3)
    y = ours(xo)
    y.sum().backward()
    neg = x < 0
    slopes = y.numpy()[neg] / x[neg]
    assert 0.1 <= slopes.min() and slopes.max() <= 0.3 and slopes.std() > 0.04
    np.testing.assert_allclose(xo.grad.numpy()[neg], slopes, rtol=1e-12)
    np.testing.assert_array_equal(y.numpy()[~neg], x[~neg])
    ng.manual_seed(3)
    np.testing.assert_array_equal(ours(ng.tensor(x)).numpy(), y.numpy())
    with pytest.raises(ValueError, match="rrelu: expected lower <= upper"):
        F.rrelu(ng.tensor(x), 0.5, 0.1, training=True)


def test_gumbel_softmax_samples_the_softmax_and_hard_passes_soft_gradients():
    """Soft samples are distributions; the hard sample is one-hot with the soft sample's
    gradient; argmax frequencies follow softmax(logits) (20,000 draws, within 4 sigma)."""
    logits = ng.tensor(np.log(np.array([[0.1, 0.2, 0.7]], np.float64)), requires_grad=True)
    ng.manual_seed(0)
    soft = F.gumbel_softmax(logits, tau=0.5)
    np.testing.assert_allclose(soft.numpy().sum(-1), 1.0)
    hard = F.gumbel_softmax(logits, tau=0.5, hard=True)
    assert set(np.unique(hard.numpy())) <= {0.0, 1.0} and hard.numpy().sum() == 1.0
    (hard * ng.tensor(np.array([[1.0, 2.0, 3.0]]))).sum().backward()
    assert np.abs(logits.grad.numpy()).sum() > 0
    draws = F.gumbel_softmax(ng.tensor(np.tile(np.log([0.1, 0.2, 0.7]), (20000, 1))), hard=True)
    freq = draws.numpy().mean(0)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=4 * np.sqrt(0.25 / 20000))
    col = F.gumbel_softmax(ng.tensor(np.zeros((3, 2))), hard=True, dim=0).numpy()
    np.testing.assert_array_equal(col.sum(0), [1.0, 1.0])


def test_pdist_matches_torch():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 4))
    for p in (2.0, 1.0, 3.0):
        xo, xt = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yo, yt = F.pdist(xo, p), torch.nn.functional.pdist(xt, p)
        np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-12)
        g = rng.standard_normal(tuple(yt.shape))
        (yo * ng.tensor(g)).sum().backward()
        (yt * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError, match=r"pdist: expected a 2-D input \(N, M\)"):
        F.pdist(ng.zeros(2, 3, 4))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_sequence_matches_torch(batch_first, side):
    from torch.nn.utils.rnn import pad_sequence as torch_pad_sequence

    from nodegrad.nn.utils.rnn import pad_sequence, unpad_sequence

    rng = np.random.default_rng(10)
    arrays = [rng.standard_normal((n, 3)) for n in (4, 2, 5)]
    xo = [ng.tensor(a, requires_grad=True) for a in arrays]
    xt = [torch.tensor(a, requires_grad=True) for a in arrays]
    yo = pad_sequence(xo, batch_first, -1.0, side)
    yt = torch_pad_sequence(xt, batch_first, -1.0, side)
    np.testing.assert_array_equal(yo.numpy(), yt.detach().numpy())
    g = rng.standard_normal(tuple(yt.shape))
    (yo * ng.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    for a, b in zip(xo, xt):
        np.testing.assert_array_equal(a.grad.numpy(), b.grad.numpy())
    if side == "right":
        back = unpad_sequence(yo, [4, 2, 5], batch_first)
        for a, b in zip(back, arrays):
            np.testing.assert_array_equal(a.numpy(), b)
    with pytest.raises(ShapeError, match=r"sequence 1 has shape \(2, 4\); expected \(L, 3\)"):
        pad_sequence([ng.zeros(3, 3), ng.zeros(2, 4)])
    with pytest.raises(ShapeError, match="unpad_sequence: 2 lengths for a batch of 3"):
        unpad_sequence(yo, [4, 2], batch_first)
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        pad_sequence(xo, padding_side="middle")


@pytest.mark.parametrize("name,args,shape", [
    ("BatchNorm1d", (3,), (4, 3, 5)), ("BatchNorm2d", (3,), (4, 3, 2, 2)),
    ("BatchNorm3d", (3,), (2, 3, 2, 2, 2)), ("GroupNorm", (2, 4), (3, 4, 5)),
    ("InstanceNorm1d", (3,), (2, 3, 6)), ("LayerNorm", (5,), (2, 3, 5))])
def test_norms_without_bias_match_torch(name, args, shape):
    """PyTorch's ``bias=False`` on the affine norms: a learned scale, no shift."""
    rng = np.random.default_rng(11)
    kw = dict(bias=False, **({"affine": True} if name.startswith("Instance") else {}))
    ours, theirs = getattr(nn, name)(*args, **kw), getattr(torch.nn, name)(*args, **kw)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.tensor(rng.standard_normal(tuple(p.shape)), dtype=p.dtype) * 0.1)
    _load(ours, theirs)
    assert [n for n, _ in ours.named_parameters()] == ["weight"]
    _compare(ours, theirs, rng.standard_normal(shape), rng)
