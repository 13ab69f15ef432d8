"""ONNX both ways: export checked by the full checker and onnxruntime, import checked against
PyTorch's outputs and gradients, and the round trip nodegrad -> ONNX -> nodegrad."""

import io
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import models, nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nodegrad.onnx import UnsupportedError, export, load  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _flat(out):
    if isinstance(out, ng.Tensor):
        return [out.numpy()]
    return [a for o in out for a in _flat(o)]


def _check_export(model, make, batches=(3, 5)):
    """Export on batch 3, then compare onnxruntime with nodegrad on batches 3 and 5."""
    model.eval()
    proto = export(model, make(batches[0]), dynamic_axes=_batch_axes(make))
    onnx.checker.check_model(proto, full_check=True)
    sess = _session(proto)
    for b in batches:
        x = make(b)
        xs = x if isinstance(x, tuple) else (x,)
        want = _flat(model(*xs))
        got = sess.run(None, {i.name: v.numpy() for i, v in zip(sess.get_inputs(), xs)})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)
    return proto


def _batch_axes(make):
    """The dynamic axes of ``make``'s inputs: those whose size follows the batch size."""
    x0, x1 = make(3), make(5)
    x0s, x1s = (x0, x1) if isinstance(x0, tuple) else ((x0,), (x1,))
    return {i: {a: "batch" for a, (s, t) in enumerate(zip(u.shape, v.shape)) if s != t}
            for i, (u, v) in enumerate(zip(x0s, x1s))}


def _randn(*shape, seed=0):
    return ng.as_tensor(np.random.default_rng(seed + shape[0]).standard_normal(shape)
                     .astype(np.float32))


_INPUT = {"mnist1d": (40,), "digits": (64,), "regression1d": (1,)}


@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_zoo_models_export_and_match_onnxruntime(name):
    model = models.create(name, seed=0)
    shape = _INPUT[models.REGISTRY[name].dataset]
    proto = _check_export(model, lambda b: _randn(b, *shape))
    inits = {t.name for t in proto.graph.initializer}
    assert {n for n, _ in model.named_parameters()} <= inits
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


class _Ops(nn.Module):
    """Functional code in a custom forward: reshape, concat, slicing, indexing, softmaxes."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)

    def forward(self, x):
        h = self.lin(x).tanh()                               # (N, 8)
        a = ng.concatenate([h[:, :3], h[:, 5:], h[:, 3:5] * 2.0], axis=1)
        b = a.reshape(a.shape[0], 2, 4).transpose(0, 2, 1)   # (N, 4, 2)
        c = b[:, 1:, 0] + b[:, ::2, 1].sum(axis=1, keepdims=True) - b[:, -1:, 1]
        d = ng.softmax(c, axis=-1) + ng.log_softmax(c, axis=1).exp() + c.max(axis=1,
                                                                              keepdims=True)
        e = ng.where(d > 0.5, d, -d) + ng.sqrt(d.abs() + 1.0) / (1.0 + d.square())
        f = h[:, [0, 2, 2, 7]] * h[..., -3:].max(axis=-1, keepdims=True)  # an index array
        return ng.concatenate([e, h.mean(axis=1, keepdims=True), x[:, None, 2].flatten(1), f],
                              1)


class _BatchSlices(nn.Module):
    """Slices and elements of the batch axis itself, numbers of other dtypes."""

    def forward(self, x):
        cols = ng.arange(x.shape[1])                         # int64, not batch-dependent
        y = ng.where(x > 0, x, 0) + (cols * 2).astype(x.dtype) / 3
        return (ng.concatenate([x[1:], x[:-1] * 2.0], axis=1), x[-1], x[-2:], x[::-1],
                y[::2, ::-1], (x > 0.5).astype(ng.float32) + x[:, 0:1])


class _MoreOps(nn.Module):
    """The other primitives with an ONNX counterpart."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(ng.randn(6, 3))

    def forward(self, x):                                    # (N, 6)
        a = ng.logsumexp(x, axis=1, keepdims=True) + ng.logsumexp(
            x.reshape(x.shape[0], 2, 3), axis=(1, 2))[:, None]
        b = ng.einsum("ni,ij->nj", x, self.w) + ng.pad(x[:, :1], ((0, 0), (1, 1)),
                                                       constant_values=0.5)
        c = ng.flip(x, axis=1)[:, :3] + ng.clip(x[:, 3:], -0.5, 0.7) + ng.expm1(x[:, :3])
        d = ng.log1p(x.abs()[:, :3]) + ng.maximum(x[:, :3], ng.minimum(x[:, 3:], 0.2))
        e = x.abs()[:, :3] ** 1.5 + x[:, 3:] ** 2 - ng.sign(x[:, :3]) * x.min(axis=1,
                                                                               keepdims=True)
        return ng.concatenate([a, b, c, d, e], axis=1), ng.argmax(x, axis=1)


class _FunctionalLayerNorm(nn.Module):
    """nanoGPT's LayerNorm (``F.layer_norm`` with an optional bias) and one without a scale:
    the primitive's own export."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(ng.as_tensor(np.linspace(0.5, 1.5, 6, dtype=np.float32)))

    def forward(self, x):
        y = nn.functional.layer_norm(x, (6,), self.weight, None, 1e-5)
        return nn.functional.layer_norm(y * 3.0, (5, 6), None, None, 1e-3)


class _MHA(nn.Module):
    def __init__(self, batch_first, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, **kw)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _seq(*m):
    return nn.Sequential(*m)


# (id, module builder, input maker from the batch size)
LAYERS = [
    ("linear", lambda: nn.Linear(5, 3), lambda b: _randn(b, 5)),
    ("linear_3d", lambda: nn.Linear(5, 3, bias=False), lambda b: _randn(b, 4, 5)),
    ("conv1d", lambda: nn.Conv1d(2, 4, 3), lambda b: _randn(b, 2, 11)),
    ("conv1d_stride_pad_dil", lambda: nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2),
     lambda b: _randn(b, 2, 13)),
    ("conv1d_groups", lambda: nn.Conv1d(4, 6, 3, padding=1, groups=2),
     lambda b: _randn(b, 4, 9)),
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), lambda b: _randn(b, 3, 7, 6)),
    ("conv2d_stride_dil_groups", lambda: nn.Conv2d(4, 4, (3, 2), stride=(2, 1), padding=(1, 2),
                                                   dilation=(1, 2), groups=4, bias=False),
     lambda b: _randn(b, 4, 9, 8)),
    ("maxpool1d", lambda: nn.MaxPool1d(3, 2, 1), lambda b: _randn(b, 2, 10)),
    ("maxpool2d", lambda: nn.MaxPool2d(2), lambda b: _randn(b, 2, 6, 7)),
    ("avgpool1d", lambda: nn.AvgPool1d(3, 2, 1), lambda b: _randn(b, 2, 10)),
    ("avgpool2d", lambda: nn.AvgPool2d((2, 3), padding=(1, 1)), lambda b: _randn(b, 2, 6, 7)),
    ("avgpool2d_pad_not_counted", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
     lambda b: _randn(b, 2, 6, 7)),
    ("maxpool2d_dilation", lambda: nn.MaxPool2d(2, 1, dilation=2), lambda b: _randn(b, 2, 6, 7)),
    ("adaptive_avg1d", lambda: nn.AdaptiveAvgPool1d(3), lambda b: _randn(b, 2, 10)),
    ("adaptive_avg2d", lambda: nn.AdaptiveAvgPool2d((2, 3)), lambda b: _randn(b, 2, 6, 6)),
    ("global_avg", lambda: nn.GlobalAvgPool(), lambda b: _randn(b, 3, 4, 5)),
    ("batchnorm1d", lambda: _trained_bn(nn.BatchNorm1d(4)), lambda b: _randn(b, 4)),
    ("batchnorm1d_3d", lambda: _trained_bn(nn.BatchNorm1d(4, affine=False)),
     lambda b: _randn(b, 4, 6)),
    ("batchnorm2d", lambda: _trained_bn(nn.BatchNorm2d(3)), lambda b: _randn(b, 3, 4, 4)),
    ("layernorm", lambda: nn.LayerNorm((3, 4)), lambda b: _randn(b, 5, 3, 4)),
    ("functional_layer_norm", lambda: _FunctionalLayerNorm(), lambda b: _randn(b, 5, 6)),
    ("groupnorm_instancenorm_rmsnorm", lambda: _seq(nn.GroupNorm(2, 4), nn.InstanceNorm1d(
        4, affine=True), nn.RMSNorm(6)), lambda b: _randn(b, 4, 6)),
    ("conv3d", lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1),
     lambda b: _randn(b, 2, 4, 5, 3)),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 0.8), lambda b: _randn(b, 7)),
    ("activations", lambda: _seq(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.LeakyReLU(0.2),
                                 nn.ELU(0.7), nn.Sigmoid(), nn.Tanh(), nn.SiLU(),
                                 nn.Softplus(2.0, 3.0), nn.GELU(), nn.GELU("tanh")),
     lambda b: _randn(b, 4)),
    ("prelu", lambda: _seq(nn.Conv1d(2, 3, 1), nn.PReLU(3), nn.PReLU()),
     lambda b: _randn(b, 2, 5)),
    ("softmaxes", lambda: _seq(nn.Linear(4, 6), nn.Softmax(dim=1), nn.Linear(6, 6),
                               nn.LogSoftmax(dim=-1)), lambda b: _randn(b, 4)),
    ("dropout_flatten_identity", lambda: _seq(nn.Dropout(0.5), nn.Flatten(), nn.Identity(),
                                              nn.Linear(12, 2)), lambda b: _randn(b, 3, 4)),
    ("embedding", lambda: _seq(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)),
     lambda b: ng.as_tensor(np.random.default_rng(b).integers(0, 10, (b, 3)))),
    ("gru", lambda: nn.GRU(3, 4), lambda b: _randn(6, b, 3)),
    ("gru_bi_batch_first", lambda: nn.GRU(3, 4, batch_first=True, bidirectional=True),
     lambda b: _randn(b, 6, 3)),
    ("lstm_2layers_bi", lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True),
     lambda b: _randn(5, b, 3)),
    ("lstm_batch_first", lambda: nn.LSTM(3, 4, batch_first=True), lambda b: _randn(b, 5, 3)),
    ("rnn_tanh_bi", lambda: nn.RNN(3, 4, bidirectional=True), lambda b: _randn(5, b, 3)),
    ("rnn_relu_no_bias", lambda: nn.RNN(3, 4, nonlinearity="relu", bias=False,
                                        batch_first=True), lambda b: _randn(b, 5, 3)),
    ("multihead_attention", lambda: _MHA(False), lambda b: _randn(5, b, 8)),
    ("multihead_attention_batch_first", lambda: _MHA(True), lambda b: _randn(b, 5, 8)),
    ("conv2d_reflect", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
     lambda b: _randn(b, 2, 5, 6)),
    ("conv1d_same_even_circular", lambda: nn.Conv1d(2, 3, 4, padding="same",
                                                    padding_mode="circular"),
     lambda b: _randn(b, 2, 7)),
    ("conv2d_same_dilated", lambda: nn.Conv2d(2, 3, 3, padding="same", dilation=2),
     lambda b: _randn(b, 2, 6, 6)),
    ("reflection_pad2d", lambda: nn.ReflectionPad2d((1, 2, 0, 1)), lambda b: _randn(b, 2, 5, 6)),
    ("zero_pad2d", lambda: nn.ZeroPad2d((1, -1, 2, 0)), lambda b: _randn(b, 2, 5, 6)),
    ("circular_pad1d", lambda: nn.CircularPad1d(2), lambda b: _randn(b, 3, 5)),
    ("replication_pad3d", lambda: nn.ReplicationPad3d(1), lambda b: _randn(b, 2, 3, 4, 5)),
    ("channel_shuffle", lambda: nn.ChannelShuffle(2), lambda b: _randn(b, 4, 3, 3)),
    ("softmax2d", lambda: nn.Softmax2d(), lambda b: _randn(b, 4, 3, 3)),
    ("multihead_attention_bias_kv_zero_attn",  # a learned and a zero key; the length varies
     lambda: _MHA(False, add_bias_kv=True, add_zero_attn=True), lambda b: _randn(b, 3, 8)),
    ("transformer_encoder_layer", lambda: nn.TransformerEncoderLayer(8, 2, 16),
     lambda b: _randn(5, b, 8)),
    ("transformer_encoder_layer_pre_norm_gelu", lambda: nn.TransformerEncoderLayer(
        8, 2, 16, activation="gelu", norm_first=True, batch_first=True),
     lambda b: _randn(b, 5, 8)),
    ("functional_ops", _Ops, lambda b: _randn(b, 6)),
    ("batch_axis_slices", _BatchSlices, lambda b: _randn(b, 4)),
    ("more_ops", _MoreOps, lambda b: _randn(b, 6)),
]


class _Fn(nn.Module):
    """A forward given as a function of the module and the input (functional forms)."""

    def __init__(self, f, **mods):
        super().__init__()
        self.f = f
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.f(self, x)


F = nn.functional

# the layers and functions that have an ONNX op of their own beyond the first set, or whose
# export needed more than their primitives: exported, run by onnxruntime and loaded back exactly
NEW_LAYERS = [
    ("conv_transpose1d", lambda: nn.ConvTranspose1d(2, 4, 3, stride=2, padding=1,
                                                    output_padding=1), lambda b: _randn(b, 2, 7)),
    ("conv_transpose2d_groups_dil", lambda: nn.ConvTranspose2d(
        4, 6, (3, 2), stride=(2, 1), padding=(1, 0), groups=2, dilation=(1, 2)),
     lambda b: _randn(b, 4, 5, 6)),
    ("conv_transpose2d_no_bias", lambda: nn.ConvTranspose2d(3, 2, 2, stride=2, bias=False),
     lambda b: _randn(b, 3, 3, 4)),
    ("f_conv2d_conv_transpose2d", lambda: _Fn(
        lambda s, x: F.conv_transpose2d(F.conv2d(x, s.w, None, 2, 1), s.w, None, 2, 1, 1),
        w=nn.Parameter(ng.randn(3, 2, 3, 3) * 0.2)), lambda b: _randn(b, 2, 6, 6)),
    ("f_pooling", lambda: _Fn(lambda s, x: ng.concatenate([p.flatten(1) for p in (
        F.max_pool2d(x, 3, 2, 1, 1, True), F.max_pool2d(x, 2, 1, 0, 2),
        F.avg_pool2d(x, 3, 2, 1), F.lp_pool2d(x.abs(), 1.5, 2, 2))], 1)),
     lambda b: _randn(b, 2, 7, 6)),
    ("maxpool3d", lambda: nn.MaxPool3d(2, (1, 2, 2), padding=1), lambda b: _randn(b, 2, 4, 5, 4)),
    ("avgpool3d", lambda: nn.AvgPool3d(2, padding=1, count_include_pad=False),
     lambda b: _randn(b, 2, 4, 5, 4)),
    ("maxpool2d_ceil", lambda: nn.MaxPool2d(2, ceil_mode=True), lambda b: _randn(b, 2, 5, 7)),
    ("maxpool1d_ceil_pad", lambda: nn.MaxPool1d(3, 2, 1, ceil_mode=True),
     lambda b: _randn(b, 2, 10)),
    ("avgpool2d_ceil", lambda: nn.AvgPool2d(3, 2, ceil_mode=True), lambda b: _randn(b, 2, 6, 8)),
    ("avgpool2d_ceil_pad_not_counted", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True,
                                                            count_include_pad=False),
     lambda b: _randn(b, 2, 6, 8)),
    ("maxpool2d_indices", lambda: nn.MaxPool2d(2, padding=1, return_indices=True),
     lambda b: _randn(b, 2, 4, 5)),
    ("maxpool3d_indices_ceil", lambda: nn.MaxPool3d(2, ceil_mode=True, return_indices=True),
     lambda b: _randn(b, 1, 3, 5, 4)),
    ("maxpool_unpool", lambda: _Fn(lambda s, x: ng.concatenate([
        s.unpool(*s.pool(x), output_size=(5, 7))[..., :4, :6], s.unpool(*s.pool(x))], -1),
        pool=nn.MaxPool2d(2, return_indices=True), unpool=nn.MaxUnpool2d(2)),
     lambda b: _randn(b, 2, 4, 6)),
    ("maxpool_unpool1d_overlapping", lambda: _Fn(lambda s, x: s.unpool(*s.pool(x)),
                                                 pool=nn.MaxPool1d(3, 2, 1, return_indices=True),
                                                 unpool=nn.MaxUnpool1d(3, 2, 1)),
     lambda b: _randn(b, 3, 9)),
    ("lppool1d", lambda: nn.LPPool1d(2, 3, 2), lambda b: _randn(b, 2, 9)),
    ("lppool2d_ceil", lambda: nn.LPPool2d(2, 2, ceil_mode=True), lambda b: _randn(b, 2, 5, 6)),
    ("adaptive_max1d", lambda: nn.AdaptiveMaxPool1d(3), lambda b: _randn(b, 2, 10)),
    ("adaptive_max2d", lambda: nn.AdaptiveMaxPool2d((2, 3)), lambda b: _randn(b, 2, 6, 7)),
    ("local_response_norm", lambda: _seq(nn.LocalResponseNorm(3), nn.LocalResponseNorm(
        4, 0.1, 0.5, 2.0)), lambda b: _randn(b, 5, 4, 3)),
    ("unfold", lambda: nn.Unfold((2, 3), dilation=(1, 2), padding=1, stride=(2, 1)),
     lambda b: _randn(b, 2, 5, 6)),
    ("elu_selu_celu", lambda: _seq(nn.ELU(0.7), nn.SELU(), nn.CELU(0.5)),
     lambda b: _randn(b, 7) * 2),
    ("hard_activations", lambda: _seq(nn.Hardsigmoid(), nn.Linear(7, 7), nn.Hardswish(),
                                      nn.ReLU6()), lambda b: _randn(b, 7) * 4),
    ("shrinks_thresholds", lambda: _seq(nn.Softshrink(0.3), nn.Hardshrink(0.2), nn.Softsign(),
                                        nn.Threshold(0.1, 0.0), nn.Threshold(-0.1, -2.0)),
     lambda b: _randn(b, 7) * 2),
    ("more_activations", lambda: _seq(nn.Mish(), nn.LogSigmoid(), nn.Tanhshrink(),
                                      nn.Softmin(1), nn.GLU()), lambda b: _randn(b, 8)),
    ("norms_per_sample", lambda: _seq(nn.InstanceNorm2d(3, affine=True), nn.GroupNorm(
        3, 3)), lambda b: _randn(b, 3, 4, 5)),
    ("pixel_shuffles", lambda: _seq(nn.PixelShuffle(2), nn.PixelUnshuffle(2)),
     lambda b: _randn(b, 8, 3, 3)),
    ("upsample_modes", lambda: _seq(nn.Upsample(scale_factor=2), nn.Upsample(
        scale_factor=1.5, mode="bilinear"), nn.UpsamplingBilinear2d(size=(5, 7)), nn.Upsample(
        size=(6, 8), mode="bicubic"), nn.Upsample(size=(7, 9), mode="nearest-exact")),
     lambda b: _randn(b, 2, 3, 4)),
    ("upsample_linear_trilinear_area", lambda: _Fn(lambda s, x: ng.concatenate([
        s.tri(ng.concatenate([x[:, :, None], x[:, :, None]], 2)).mean(axis=2)[..., ::2, ::2],
        s.area(x) * 0.5, s.rec(x)[..., :3, :4]], axis=1), tri=nn.Upsample(
        scale_factor=2, mode="trilinear"), area=nn.Upsample(size=(3, 4), mode="area"),
        rec=nn.Upsample(scale_factor=1.7, mode="bilinear", align_corners=True,
                        recompute_scale_factor=True)), lambda b: _randn(b, 2, 3, 4)),
    ("upsample_linear_1d", lambda: nn.Upsample(scale_factor=2.5, mode="linear"),
     lambda b: _randn(b, 2, 6)),
    ("pad_modes", lambda: _Fn(lambda s, x: F.pad(F.pad(F.pad(F.pad(
        x, (1, 2), mode="reflect"), (2, 1), mode="replicate"), (1, 1), mode="circular"),
        (-1, 2), value=0.5)), lambda b: _randn(b, 2, 5)),
    ("normalize_cosine_distance", lambda: _Fn(lambda s, x: ng.concatenate([
        F.normalize(x), s.cos(x, x.flip(axis=1))[:, None], s.dist(x, x * 0.5)[:, None],
        ng.linalg.vector_norm(x, float("inf"), 1, True)], axis=1),
        cos=nn.CosineSimilarity(), dist=nn.PairwiseDistance()), lambda b: _randn(b, 4)),
    ("unflatten_flatten", lambda: _seq(nn.Unflatten(1, (2, 3)), nn.Flatten(0, 1)),
     lambda b: _randn(b, 6)),
    ("transformer_decoder_layer", lambda: _Fn(
        lambda s, x: s.dec(x, x[:3] * 0.5), dec=nn.TransformerDecoderLayer(8, 2, 16)),
     lambda b: _randn(5, b, 8)),
]


@pytest.mark.parametrize("build,make", [(b, m) for _, b, m in NEW_LAYERS],
                         ids=[n for n, _, _ in NEW_LAYERS])
def test_more_layers_export_match_onnxruntime_and_round_trip_exactly(build, make):
    ng.manual_seed(0)
    model = build()
    proto = _check_export(model, make)
    back = load(proto.SerializeToString())
    x = make(4)
    xs = x if isinstance(x, tuple) else (x,)
    for a, b in zip(_flat(back(*xs)), _flat(model(*xs))):
        np.testing.assert_array_equal(a, b)


def test_pad_modes_export_as_pad():
    """F.pad's reflect and replicate read positions that Pad's reflect and edge give; circular
    is Pad's wrap from opset 19 (a Gather before)."""
    model = _Fn(lambda s, x: F.pad(F.pad(F.pad(x, (1, 2, 0, 1), mode="reflect"),
                                         (2, 1, 0, 0), mode="replicate"), (1, 1, 1, 0),
                                   mode="circular"))
    for opset, wrap in ((17, 0), (19, 1)):
        proto = export(model, _randn(3, 2, 4, 5), opset=opset)
        pads = [n for n in proto.graph.node if n.op_type == "Pad"]
        modes = [a.s.decode() for n in pads for a in n.attribute if a.name == "mode"]
        assert sorted(modes) == sorted(["reflect", "reflect", "edge"] + ["wrap"] * 2 * wrap)
        sess = _session(proto)
        for b in (3, 5):
            x = _randn(b, 2, 4, 5)
            np.testing.assert_array_equal(sess.run(None, {"input": x.numpy()})[0],
                                          model(x).numpy())
        np.testing.assert_array_equal(load(proto.SerializeToString())(x).numpy(),
                                      model(x).numpy())


class _Losses(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x, t):
        z = self.lin(x)
        return (F.cross_entropy(z, t), F.cross_entropy(z, t, reduction="sum", ignore_index=2),
                F.cross_entropy(z, t, reduction="none"))


def test_cross_entropy_exports_as_softmax_cross_entropy_loss():
    ng.manual_seed(0)

    def make(b):
        return _randn(b, 4), ng.as_tensor(np.random.default_rng(b).integers(0, 3, b))
    proto = _check_export(_Losses(), make)
    assert "SoftmaxCrossEntropyLoss" in {n.op_type for n in proto.graph.node}
    back, model = load(proto.SerializeToString()), _Losses()
    model.load_state_dict(dict(back.named_parameters()))
    x, t = make(4)
    for a, b in zip(_flat(back(x, t)), _flat(model(x, t))):
        np.testing.assert_array_equal(a, b)
    # NegativeLogLikelihoodLoss (PyTorch's nll_loss) against onnxruntime, with class weights
    h = onnx.helper
    g = h.make_graph([h.make_node("NegativeLogLikelihoodLoss", ["x", "t", "w"], ["y"],
                                  reduction="mean", ignore_index=1)], "g",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 3]),
                      h.make_tensor_value_info("t", onnx.TensorProto.INT64, [5])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])],
                     initializer=[onnx.numpy_helper.from_array(
                         np.array([0.5, 1.0, 2.0], np.float32), "w")])
    nll = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    nll.ir_version = 9
    xs, ts = _randn(5, 3).numpy(), np.array([0, 1, 2, 2, 0])
    np.testing.assert_allclose(load(nll.SerializeToString())(ng.as_tensor(xs), ng.as_tensor(ts))
                               .numpy(), _session(nll).run(None, {"x": xs, "t": ts})[0],
                               rtol=RTOL, atol=ATOL)


def test_fold_exports_as_col2im_from_opset_18():
    ng.manual_seed(0)
    model = nn.Fold((4, 5), (2, 3), padding=1, stride=(1, 2))

    def make(b):
        return _randn(b, 12, 15)
    with pytest.raises(UnsupportedError, match=r"Fold needs opset 18.*'Fold'"):
        export(model, make(2))
    proto = export(model, make(3), opset=18)
    onnx.checker.check_model(proto, full_check=True)
    sess = _session(proto)
    for b in (3, 5):
        got = sess.run(None, {"input": make(b).numpy()})[0]
        np.testing.assert_allclose(got, model(make(b)).numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(load(proto.SerializeToString())(make(4)).numpy(),
                                  model(make(4)).numpy())


class _Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)

    def forward(self, x):
        return self.bag(x)


class _OneHot(nn.Module):
    def forward(self, x):
        return F.one_hot(x, 5)


@pytest.mark.parametrize("model,x,needle", [
    (lambda: _seq(nn.Linear(4, 4), _Fn(lambda s, x: F.avg_pool1d(
        x[:, None], 3, 1, 1, count_include_pad=False))), lambda: _randn(2, 4),
     r"divided by other than the window size.*'1'"),
    (lambda: _seq(nn.Linear(4, 4), _Fn(lambda s, x: F.unfold(x[:, None, None], (1, 2)))),
     lambda: _randn(2, 4), r"sliding_window_view: only a max over its windows.*'1'"),
    (lambda: _seq(nn.AvgPool2d(2, divisor_override=3)), lambda: _randn(2, 1, 4, 4),
     r"AvgPool2d with divisor_override=3.*'0'"),
    (lambda: nn.AdaptiveMaxPool1d(2, return_indices=True), lambda: _randn(2, 1, 4),
     "AdaptiveMaxPool1d with return_indices"),
    (lambda: _seq(_Bag()), lambda: ng.as_tensor(np.arange(6).reshape(2, 3)), r"'0.bag'"),
    (_OneHot, lambda: ng.as_tensor(np.arange(3)), "computed outside the traced operations"),
])
def test_what_has_no_counterpart_still_raises(model, x, needle):
    with pytest.raises(UnsupportedError, match=needle):
        export(model(), x())


def _trained_bn(bn):
    """A batch norm whose running statistics moved away from 0 and 1."""
    bn.train()
    for s in range(3):
        bn(_randn(8, *((4,) if isinstance(bn, nn.BatchNorm1d) else (3, 4, 4)), seed=s) * 2 + 1)
    return bn


@pytest.mark.parametrize("build,make", [(b, m) for _, b, m in LAYERS],
                         ids=[n for n, _, _ in LAYERS])
def test_layer_matrix_exports_and_matches_onnxruntime(build, make):
    ng.manual_seed(0)
    _check_export(build(), make)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(5, 4)

    def forward(self, x, y):
        return self.a(x) * self.b(y).sigmoid(), ng.concatenate([x, y], axis=1)


def test_several_inputs_and_outputs():
    ng.manual_seed(0)
    proto = _check_export(_TwoInputs(), lambda b: (_randn(b, 3), _randn(b, 5, seed=1)))
    assert [i.name for i in proto.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    named = export(_TwoInputs(), (_randn(2, 3), _randn(2, 5)), input_names=["x", "y"],
                   output_names=["gated", "joined"])
    assert [i.name for i in named.graph.input] == ["x", "y"]
    assert [o.name for o in named.graph.output] == ["gated", "joined"]


def test_static_shapes_and_opsets(tmp_path):
    model = models.create("digits_cnn", seed=0)
    model.eval()
    x = _randn(2, 64)
    for opset in (17, 18, 21):
        proto = export(model, x, tmp_path / "m.onnx", opset=opset, dynamic_axes={})
        assert proto.opset_import[0].version == opset
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
        got = _session(onnx.load(str(tmp_path / "m.onnx"))).run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, model(x).numpy(), rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="opset"):
        export(model, x, opset=9)


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))

    def forward(self, x):
        return ng.sliding_window_view(self.inner(x), 2, axis=1)


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Unsupported()

    def forward(self, x):
        return self.block(x)


def test_unsupported_op_names_op_and_module_path():
    with pytest.raises(UnsupportedError, match=r"sliding_window_view.*'block'"):
        export(_Nested(), _randn(2, 4))


class _BatchDependent(nn.Module):
    def forward(self, x):
        return x[: x.shape[0] - 1]


def test_batch_dependent_slicing_is_refused_not_wrong():
    with pytest.raises(UnsupportedError, match="follows the dynamic axes"):
        export(_BatchDependent(), _randn(3, 2))
    proto = export(_BatchDependent(), _randn(3, 2), dynamic_axes={})  # static: fine
    got = _session(proto).run(None, {"input": _randn(3, 2).numpy()})[0]
    np.testing.assert_array_equal(got, _randn(3, 2).numpy()[:2])


def test_appended_keys_follow_a_dynamic_batch():
    """MultiheadAttention's appended key and value (add_bias_kv) and zero attention are
    expanded to the batch size read from the input; with static shapes it matches too."""
    model = _MHA(True, add_bias_kv=True, add_zero_attn=True).eval()
    sess = _session(export(model, _randn(3, 5, 8)))
    for b in (3, 4):
        x = _randn(b, 5, 8)
        np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], model(x).numpy(),
                                   rtol=RTOL, atol=ATOL)
    x = _randn(3, 5, 8)
    got = _session(export(model, x, dynamic_axes={})).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).numpy(), rtol=RTOL, atol=ATOL)


class _ShapeConstant(nn.Module):
    def forward(self, x):  # (one value throughout, as zeros(x.shape[0], 3), exports)
        return x + ng.arange(x.shape[0] * 3).reshape(-1, 3)


class _ShapeNumber(nn.Module):
    def forward(self, x):
        return x.sum(axis=0) / x.shape[0]


class _StateKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(2, 3)

    def forward(self, x):
        return self.rnn(x, hx=x[:1, :, :1] * ng.ones(1, 1, 3))[0]


@pytest.mark.parametrize("module,needle", [(_ShapeConstant, "constant of shape"),
                                           (_ShapeNumber, "number 4 follows"),
                                           (_StateKeyword, "keyword")])
def test_values_that_follow_the_batch_size_are_refused(module, needle):
    x = _randn(4, 3, 2)[:, :, 0] if module is not _StateKeyword else _randn(5, 3, 2)
    with pytest.raises(UnsupportedError, match=needle):
        export(module(), x, dynamic_axes={0: {0: "n"}} if module is not _StateKeyword
               else {0: {1: "batch"}})


# --- import -----------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
tnn = torch.nn


def _torch_export(model, x, dynamic=True) -> bytes:
    model.eval()
    f = io.BytesIO()
    axes = {"x": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():  # the TorchScript exporter's tracer and deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes, do_constant_folding=False)
    return f.getvalue()


class _TorchMNIST1DCNN(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv1d(1, 25, 5, stride=2, padding=1)
        self.conv2 = tnn.Conv1d(25, 25, 3, stride=2, padding=1)
        self.conv3 = tnn.Conv1d(25, 25, 3, stride=2, padding=1)
        self.linear = tnn.Linear(125, 10)

    def forward(self, x):
        h = self.conv1(x.reshape(x.shape[0], 1, 40)).relu()
        h = self.conv3(self.conv2(h).relu()).relu()
        return self.linear(h.flatten(1))


class _TorchGRU(tnn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = tnn.GRU(1, 6, batch_first=True, bidirectional=True)
        self.linear = tnn.Linear(480, 10)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(x.shape[0], 40, 1))
        return self.linear(out.flatten(1))


class _TorchCNN2d(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = tnn.BatchNorm2d(6)
        self.conv2 = tnn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = tnn.BatchNorm2d(8)
        self.pool = tnn.MaxPool2d(2)
        self.avg = tnn.AvgPool2d(2)
        self.fc = tnn.Linear(32, 5)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = self.avg(torch.relu(self.bn2(self.conv2(h))))
        return torch.log_softmax(self.fc(torch.flatten(h, 1)), dim=1)


class _TorchEncoder(tnn.Module):
    def __init__(self):
        super().__init__()
        self.layer = tnn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = tnn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x, is_causal=False).mean(dim=1))


def _bn_stats(model):
    """Running statistics away from the defaults (as after training)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, tnn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


class _TorchFn(tnn.Module):
    def __init__(self, f, **mods):
        super().__init__()
        self.f = f
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.f(self, x)


TF = torch.nn.functional

# what torch.onnx.export writes for the layers added later: ConvTranspose, 3-D and ceil_mode
# pooling, the activations with ONNX ops, InstanceNormalization, DepthToSpace, Resize, Pad modes
TORCH_MORE = [
    ("conv_transpose", lambda: tnn.Sequential(
        tnn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1), tnn.Tanh(),
        tnn.ConvTranspose2d(4, 4, 2, groups=2, dilation=2)), (2, 4, 5)),
    ("pool3d_ceil", lambda: tnn.Sequential(tnn.MaxPool3d(2, ceil_mode=True), tnn.AvgPool3d(
        2, padding=1, ceil_mode=True)), (2, 5, 5, 4)),
    ("pool2d_ceil_lppool", lambda: tnn.Sequential(tnn.AvgPool2d(
        3, 2, ceil_mode=True, count_include_pad=False), tnn.MaxPool2d(2, ceil_mode=True),
        tnn.LPPool2d(2, 2)), (2, 11, 10)),
    ("activations", lambda: tnn.Sequential(
        tnn.Linear(8, 8), tnn.ELU(), tnn.SELU(), tnn.CELU(0.5), tnn.Hardsigmoid(),
        tnn.Hardswish(), tnn.Mish(), tnn.Softsign(), tnn.LogSigmoid(), tnn.ReLU6(),
        tnn.Softshrink(0.1), tnn.Hardshrink(0.05), tnn.Tanhshrink(), tnn.Softmin(1), tnn.GLU(),
        tnn.GELU("tanh"), tnn.SiLU()), (8,)),
    ("norms_shuffles", lambda: tnn.Sequential(
        tnn.Conv2d(2, 8, 1), tnn.InstanceNorm2d(8, affine=True), tnn.GroupNorm(2, 8),
        tnn.LocalResponseNorm(3), tnn.LocalResponseNorm(4, 0.1, 0.5, 2.0),  # an If inside
        tnn.PixelShuffle(2), tnn.PixelUnshuffle(2)), (2, 3, 4)),
    ("resize_pad_normalize", lambda: _TorchFn(lambda s, x: TF.normalize(s.up(TF.pad(TF.pad(
        x, (1, 2, 0, 1), mode="reflect"), (2, 1, 1, 0), mode="replicate")), dim=1),
        up=tnn.Sequential(
        tnn.Upsample(scale_factor=2), tnn.Upsample(scale_factor=1.5, mode="bilinear"),
        tnn.UpsamplingBilinear2d(scale_factor=2), tnn.Upsample(size=(9, 11), mode="bicubic"))),
     (2, 3, 4)),
    ("adaptive_max_pool", lambda: tnn.Sequential(tnn.AdaptiveMaxPool2d((2, 3))), (2, 6, 6)),
]


TORCH_MODELS = [
    ("mlp", lambda: tnn.Sequential(tnn.Linear(8, 16), tnn.ReLU(), tnn.Linear(16, 16), tnn.Tanh(),
                                   tnn.Linear(16, 3)), (8,)),
    ("mnist1d_cnn", _TorchMNIST1DCNN, (40,)),
    ("mnist1d_gru", _TorchGRU, (40,)),
    ("cnn2d_batchnorm_pool", lambda: _bn_stats(_TorchCNN2d()), (1, 8, 8)),
    ("transformer_encoder_layer", _TorchEncoder, (5, 8)),
]


@pytest.mark.parametrize("build,shape", [(b, s) for _, b, s in TORCH_MODELS + TORCH_MORE],
                         ids=[n for n, _, _ in TORCH_MODELS + TORCH_MORE])
def test_pytorch_models_import_with_outputs_and_gradients(build, shape):
    torch.manual_seed(0)
    tm = build().eval()
    model = load(_torch_export(tm, torch.randn(2, *shape)))
    tnames = dict(tm.named_parameters())
    names = [n for n, _ in model.named_parameters()]
    assert set(tnames) <= set(names), names  # readable names survive the trip
    x = np.random.default_rng(3).standard_normal((5, *shape)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    w = torch.tensor(np.random.default_rng(4).standard_normal(ty.shape).astype(np.float32))
    (ty * w).sum().backward()
    nx = ng.tensor(x, requires_grad=True)
    ny = model(nx)
    np.testing.assert_allclose(ny.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    (ny * ng.as_tensor(w.numpy())).sum().backward()
    np.testing.assert_allclose(nx.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    checked = 0
    for n, p in model.named_parameters():
        if n in tnames:
            np.testing.assert_allclose(p.grad.numpy(), tnames[n].grad.numpy(), rtol=1e-4,
                                       atol=1e-5, err_msg=n)
            checked += 1
    assert checked == len(tnames)


def test_imported_model_trains_with_vmap_and_transfer_helpers():
    from nodegrad.train import freeze, replace_head

    torch.manual_seed(0)
    tm = _TorchCNN2d()
    model = load(_torch_export(tm, torch.randn(2, 1, 8, 8)))
    assert isinstance(model.fc, nn.Linear)
    head = replace_head(model, 3, seed=0)
    assert model.fc is head
    frozen = freeze(model, "conv1")
    assert frozen == ["conv1.weight", "conv1.bias"]
    x = _randn(4, 1, 8, 8)
    assert model(x).shape == (4, 3)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def loss(ps, xi):
        return nn.functional_call(model, ps, xi[None]).sum()

    per_example = ng.vmap(ng.grad(loss), in_axes=(None, 0))(params, x)
    whole = ng.grad(lambda ps: nn.functional_call(model, ps, x).sum())(params)
    for n in params:
        np.testing.assert_allclose(per_example[n].numpy().sum(0), whole[n].numpy(),
                                   rtol=1e-4, atol=1e-5)
    opt = ng.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = model.fc.weight.numpy().copy()
    model(x).sum().backward()
    opt.step()
    assert not np.array_equal(before, model.fc.weight.numpy())
    assert model.conv1.weight.grad is None


@pytest.mark.parametrize("kind,gates", [("GRU", 3), ("LSTM", 4), ("RNN", 1)])
@pytest.mark.parametrize("direction,lens", [("reverse", None), ("reverse", [5, 2, 3]),
                                            ("forward", [1, 5, 3]),
                                            ("bidirectional", [4, 5, 2])])
def test_recurrent_import_reverse_and_sequence_lens_match_onnxruntime(kind, gates, direction,
                                                                      lens):
    """ONNX's reverse direction and sequence_lens (each sequence runs over its own length, its
    state then held and its outputs zero), against onnxruntime."""
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    T, N, I, H = 5, 3, 2, 4
    D = 2 if direction == "bidirectional" else 1
    inits = [nh.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in
             (("W", (D, gates * H, I)), ("R", (D, gates * H, H)), ("B", (D, 2 * gates * H)))]
    ins = ["x", "W", "R", "B"]
    if lens is not None:
        inits.append(nh.from_array(np.array(lens, np.int32), "L"))
        ins.append("L")
    attrs = {"hidden_size": H, "direction": direction}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    outs = ["y", "y_h"] + (["y_c"] if kind == "LSTM" else [])
    g = h.make_graph([h.make_node(kind, ins, outs, **attrs)], "g",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [T, N, I])],
                     [h.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs],
                     initializer=inits)
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    proto.ir_version = 9
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    want = _session(proto).run(None, {"x": x})
    model = load(proto.SerializeToString())
    nx = ng.tensor(x, requires_grad=True)
    got = model(nx)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b.numpy(), a, rtol=RTOL, atol=ATOL)
    sum(o.sum() for o in got).backward()  # differentiable through the held states
    gx = nx.grad.numpy()
    assert np.isfinite(gx).all() and np.abs(gx).sum() > 0
    if lens is not None:  # the steps past a sequence's end take no part
        past = np.arange(T)[:, None] >= np.array(lens)[None, :]
        assert (gx[past] == 0).all() and (np.abs(gx[~past]).sum(-1) > 0).all()


def test_unsupported_ops_are_listed_together():
    h = onnx.helper
    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Hardmax", ["a"], ["b"]),
             h.make_node("TopK", ["b", "k"], ["c", "i"]), h.make_node("Hardmax", ["c"], ["y"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
                     initializer=[onnx.numpy_helper.from_array(np.array([1], np.int64), "k")])
    with pytest.raises(UnsupportedError, match="2 operator type.*Hardmax, TopK"):
        load(h.make_model(g).SerializeToString())


# --- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_round_trip_zoo_is_exact(name, tmp_path):
    model = models.create(name, seed=1)
    model.eval()
    shape = _INPUT[models.REGISTRY[name].dataset]
    export(model, _randn(2, *shape), tmp_path / "m.onnx")
    back = load(tmp_path / "m.onnx")
    x = _randn(6, *shape, seed=5)
    np.testing.assert_array_equal(back(x).numpy(), model(x).numpy())
    ours = dict(model.named_parameters())
    for n, p in back.named_parameters():
        np.testing.assert_array_equal(p.numpy(), ours[n].numpy())
    assert {n for n, _ in back.named_parameters()} == set(ours)
    from nodegrad.train import load_pretrained

    fresh = models.create(name, seed=2)
    assert load_pretrained(fresh, back).ok  # an imported model is a pretrained source
    fresh.eval()
    np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())


@pytest.mark.parametrize("build,make", [(b, m) for n, b, m in LAYERS if n in (
    "conv2d_stride_dil_groups", "batchnorm2d", "layernorm", "lstm_2layers_bi",
    "gru_bi_batch_first", "transformer_encoder_layer", "functional_ops", "embedding")])
def test_round_trip_layers(build, make):
    ng.manual_seed(0)
    model = build()
    model.eval()
    back = load(export(model, make(2), dynamic_axes=_batch_axes(make)).SerializeToString())
    x = make(4)
    for a, b in zip(_flat(back(x)), _flat(model(x))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- the command ------------------------------------------------------------------------------
def test_cli_export_run_dir(tmp_path, capsys):
    from nodegrad.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", "digits_cnn", "--epochs", "1", "--quiet", "--out",
                 str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert str(run / "model.onnx") in capsys.readouterr().out
    proto = onnx.load(str(run / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    trained = models.create("digits_cnn")
    trained.load_state_dict(ng.load(run / "model.safetensors"))
    trained.eval()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    x = _randn(7, *[d.dim_value for d in dims[1:]])
    got = _session(proto).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, trained(x).numpy(), rtol=RTOL, atol=ATOL)
    out = tmp_path / "elsewhere" / "digits.onnx"
    assert main(["export", str(run), "--out", str(out), "--opset", "18"]) == 0
    assert onnx.load(str(out)).opset_import[0].version == 18
    for args, needle in ((["export", str(tmp_path)], "no config.json"),
                         (["export", str(run), "--format", "tflite"], "unknown format"),
                         (["export", str(run), "--opset", "30"], "at most")):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def test_onnx_transfer_example_runs(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run([sys.executable, str(root / "examples" / "onnx_transfer.py"),
                          "--per-class", "3", "--steps", "5", "--torch-epochs", "1",
                          "--seeds", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "imported into nodegrad" in res.stdout and "| 3 |" in res.stdout


class _Sampler(nn.Module):
    def __init__(self, mode, padding_mode, align_corners):
        super().__init__()
        self.opts = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    def forward(self, x, grid):
        return nn.functional.grid_sample(x, grid, **self.opts)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_exports_with_static_shapes_and_matches_onnxruntime(mode, padding_mode):
    x, grid = _randn(2, 2, 5, 6), ng.rand(2, 3, 4, 2) * 2.6 - 1.3  # reaching outside [-1, 1]
    for align in (False, True):
        model = _Sampler(mode, padding_mode, align)
        proto = export(model, (x, grid), dynamic_axes={})
        sess = _session(proto)
        names = [i.name for i in sess.get_inputs()]
        got = sess.run(None, dict(zip(names, [x.numpy(), grid.numpy()])))[0]
        np.testing.assert_allclose(got, model(x, grid).numpy(), rtol=1e-5, atol=1e-6)


def test_bitwise_ops_export_on_bools_and_on_integers_from_opset_18():
    class Bits(nn.Module):
        def forward(self, x):
            b = (x > 0) & (x < 1) | ~(x > 2)
            i = (x * 10).astype(ng.int64)
            return b.astype(ng.float32) + ((i & 6) ^ 3).astype(ng.float32)

    x = _randn(3, 4) * 3
    with pytest.raises(UnsupportedError, match="opset 18"):
        export(Bits(), x, opset=17)
    proto = export(Bits(), x, opset=18, dynamic_axes={})
    got = _session(proto).run(None, {_session(proto).get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_array_equal(got, Bits()(x).numpy())


def test_diagonals_export_as_one_gather(tmp_path):
    """x.diagonal() (any offset and axes) and trace: a primitive of their own, exported as a
    Transpose, a Reshape and one Gather, at other batch sizes too (onnxruntime sums in its
    own order)."""
    import onnxruntime as ort

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 5)

        def forward(self, x):
            y = self.lin(x)
            z = y.unsqueeze(1) * y.unsqueeze(2) + self.lin.weight[:, :1]
            return (z.diagonal(1, 1, 2).sum(-1) + z.diagonal(-2, 2, 1).sum(-1)
                    + ng.trace(self.lin.weight[:, :4]) + z.diagonal(0, -1, -2)[:, 0])

    m = M()
    path = tmp_path / "diag.onnx"
    export(m, (ng.tensor(np.ones((2, 4), np.float32)),), str(path))
    sess = ort.InferenceSession(str(path))
    for b in (2, 3, 7):
        xb = np.random.default_rng(b).standard_normal((b, 4)).astype(np.float32)
        out = sess.run(None, {sess.get_inputs()[0].name: xb})[0]
        np.testing.assert_allclose(out, m(ng.tensor(xb)).numpy(), rtol=1e-6, atol=1e-6)
