"""Common PyTorch models ported both ways through ONNX.

Each model is written once against a library ``lib`` (``torch`` or ``nodegrad``) and built in
both from PyTorch's seeded weights. (1) nodegrad's model exported with ``nodegrad.onnx.export``
runs in onnxruntime with PyTorch's outputs at two batch sizes; (2) PyTorch's model exported with
``torch.onnx.export`` loads with ``nodegrad.onnx.load`` with PyTorch's outputs, and a few SGD
steps on the loaded weights follow PyTorch's steps on the same weights (float32).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread  # noqa: F401

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nodegrad.onnx import export, load  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


# the models, as their tutorials write them

def resnet(lib):
    nn, F = lib.nn, lib.nn.functional

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += self.shortcut(x)
            return F.relu(out)

    class ResNet(nn.Module):
        def __init__(self, num_classes=5):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 4))
            self.layer2 = nn.Sequential(BasicBlock(4, 8, stride=2))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(8, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer2(self.layer1(out))
            out = lib.flatten(self.avgpool(out), 1)
            return self.linear(out)

    return ResNet()


def mobilenet(lib):
    nn = lib.nn

    class ConvBNReLU(nn.Sequential):
        def __init__(self, cin, cout, k=3, stride=1, groups=1):
            super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                       bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(round(inp * expand_ratio))
            self.use_res_connect = stride == 1 and inp == oup
            layers = [] if expand_ratio == 1 else [ConvBNReLU(inp, hidden, k=1)]
            layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                       nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            feats, prev = [ConvBNReLU(3, 8, stride=2)], 8
            for t, c, s in [(1, 8, 1), (4, 12, 2), (4, 12, 1)]:
                feats.append(InvertedResidual(prev, c, s, t))
                prev = c
            feats.append(ConvBNReLU(prev, 16, k=1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
            return self.classifier(lib.flatten(x, 1))

    return MobileNetV2()


def unet(lib):
    nn = lib.nn

    class DoubleConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.double_conv = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True))

        def forward(self, x):
            return self.double_conv(x)

    class Up(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin, cout)

        def forward(self, x1, x2):
            x1 = self.up(x1)
            return self.conv(lib.cat([x2, x1], dim=1))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.inc = DoubleConv(2, 4)
            self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(4, 8))
            self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(8, 16))
            self.up1 = Up(16, 8)
            self.up2 = Up(8, 4)
            self.outc = nn.Conv2d(4, 3, kernel_size=1)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down1(x1)
            x3 = self.down2(x2)
            return self.outc(self.up2(self.up1(x3, x2), x1))

    return UNet()


def rnn_classifier(lib, kind="LSTM"):
    nn = lib.nn

    class TextClassifier(nn.Module):
        def __init__(self, vocab=20, emb=6, hidden=5, classes=3):
            super().__init__()
            self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
            rnn = getattr(nn, kind)
            self.rnn = rnn(emb, hidden, num_layers=2, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * hidden, classes)

        def forward(self, tokens):
            mask = (tokens != 0).unsqueeze(-1).float()
            out, _ = self.rnn(self.embedding(tokens))
            pooled = (out * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return self.fc(pooled)

    return TextClassifier()


def transformer_classifier(lib):
    nn = lib.nn

    class PositionalEncoding(nn.Module):
        def __init__(self, d_model, max_len=32):
            super().__init__()
            position = lib.arange(max_len).unsqueeze(1).float()
            div_term = lib.exp(lib.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
            pe = lib.zeros(1, max_len, d_model)
            pe[0, :, 0::2] = lib.sin(position * div_term)
            pe[0, :, 1::2] = lib.cos(position * div_term)
            self.register_buffer("pe", pe)

        def forward(self, x):
            return x + self.pe[:, :x.size(1)]

    class TransformerClassifier(nn.Module):
        def __init__(self, vocab=20, d_model=8, nhead=2, classes=3):
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
            self.pos = PositionalEncoding(d_model)
            layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=16, dropout=0.0,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, classes)
            self.d_model = d_model

        def forward(self, tokens):
            pad = tokens == 0
            x = self.pos(self.embed(tokens) * math.sqrt(self.d_model))
            x = self.encoder(x, src_key_padding_mask=pad)
            keep = (~pad).unsqueeze(-1).float()
            return self.head((x * keep).sum(1) / keep.sum(1))

    return TransformerClassifier()


def vit(lib):
    nn = lib.nn

    class PatchEmbed(nn.Module):
        def __init__(self, patch=4, cin=3, dim=8):
            super().__init__()
            self.proj = nn.Conv2d(cin, dim, kernel_size=patch, stride=patch)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Block(nn.Module):
        def __init__(self, dim=8, heads=2):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, dim=8, classes=4):
            super().__init__()
            self.patch_embed = PatchEmbed(dim=dim)
            self.cls_token = nn.Parameter(lib.randn(1, 1, dim) * 0.02)
            self.pos_embed = nn.Parameter(lib.randn(1, 5, dim) * 0.02)
            self.blocks = nn.Sequential(Block(dim), Block(dim))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.patch_embed(x)
            cls = self.cls_token.expand(x.shape[0], -1, -1)
            x = lib.cat((cls, x), dim=1) + self.pos_embed
            x = self.norm(self.blocks(x))
            return self.head(x[:, 0])

    return ViT()


def autoencoder(lib):
    nn, F = lib.nn, lib.nn.functional

    class AutoEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
            self.dec1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                      nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
            self.dec2 = nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x):
            z = self.encoder(x)
            h = self.dec1(z)
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            return lib.sigmoid(self.dec2(h))

    return AutoEncoder()


def mixer(lib):
    nn = lib.nn

    class MlpBlock(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class MixerBlock(nn.Module):
        def __init__(self, tokens, dim):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim)
            self.token_mix = MlpBlock(tokens, 2 * tokens)
            self.norm2 = nn.LayerNorm(dim)
            self.channel_mix = MlpBlock(dim, 2 * dim)

        def forward(self, x):
            x = x + self.token_mix(self.norm1(x).transpose(1, 2)).transpose(1, 2)
            return x + self.channel_mix(self.norm2(x))

    class MLPMixer(nn.Module):
        def __init__(self, dim=8, classes=3):
            super().__init__()
            self.stem = nn.Conv2d(3, dim, kernel_size=4, stride=4)
            self.blocks = nn.Sequential(*[MixerBlock(4, dim) for _ in range(2)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x):
            x = self.stem(x)
            b, c, h, w = x.shape
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
            x = self.norm(self.blocks(x))
            return self.head(x.mean(dim=1))

    return MLPMixer()


def wavenet(lib):
    nn, F = lib.nn, lib.nn.functional

    class CausalConv1d(nn.Conv1d):
        def __init__(self, cin, cout, kernel_size, dilation=1):
            super().__init__(cin, cout, kernel_size, dilation=dilation)
            self.left = (kernel_size - 1) * dilation

        def forward(self, x):
            return super().forward(F.pad(x, (self.left, 0)))

    class ResidualBlock(nn.Module):
        def __init__(self, channels, skip, dilation):
            super().__init__()
            self.filter = CausalConv1d(channels, channels, 2, dilation)
            self.gate = CausalConv1d(channels, channels, 2, dilation)
            self.res = nn.Conv1d(channels, channels, 1)
            self.skip = nn.Conv1d(channels, skip, 1)

        def forward(self, x):
            z = lib.tanh(self.filter(x)) * lib.sigmoid(self.gate(x))
            return x + self.res(z), self.skip(z)

    class WaveNet(nn.Module):
        def __init__(self, channels=4, skip=6, classes=5):
            super().__init__()
            self.causal = CausalConv1d(1, channels, 2)
            self.blocks = nn.ModuleList([ResidualBlock(channels, skip, d) for d in (1, 2, 4)])
            self.out = nn.Sequential(nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(),
                                     nn.Conv1d(skip, classes, 1))

        def forward(self, x):
            x = self.causal(x)
            skips = 0
            for block in self.blocks:
                x, s = block(x)
                skips = skips + s
            return F.log_softmax(self.out(skips), dim=1)

    return WaveNet()


def norm_heads(lib):
    nn = lib.nn

    class NormNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                nn.Conv2d(8, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.Hardswish(),
                nn.Conv2d(8, 6, 1), nn.Mish())
            self.head = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6),
                                      nn.GELU(approximate="tanh"), nn.Linear(6, 2))

        def forward(self, x):
            return self.head(self.body(x).mean(dim=(2, 3)))

    return NormNet()


def cbam(lib):
    nn, F = lib.nn, lib.nn.functional

    class ChannelAttention(nn.Module):
        def __init__(self, planes, ratio=4):
            super().__init__()
            self.fc = nn.Sequential(nn.Conv2d(planes, planes // ratio, 1, bias=False), nn.ReLU(),
                                    nn.Conv2d(planes // ratio, planes, 1, bias=False))

        def forward(self, x):
            avg = self.fc(F.adaptive_avg_pool2d(x, 1))
            mx = self.fc(F.adaptive_max_pool2d(x, 1))
            return lib.sigmoid(avg + mx)

    class SpatialAttention(nn.Module):
        def __init__(self, kernel_size=7):
            super().__init__()
            self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

        def forward(self, x):
            avg_out = lib.mean(x, dim=1, keepdim=True)
            max_out, _ = lib.max(x, dim=1, keepdim=True)
            return lib.sigmoid(self.conv(lib.cat([avg_out, max_out], dim=1)))

    class CBAMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.ca, self.sa = ChannelAttention(8), SpatialAttention()
            self.fc = nn.Linear(8 * 2 * 2, 3)

        def forward(self, x):
            x = F.relu(self.conv(x))
            x = self.ca(x) * x
            x = self.sa(x) * x
            return self.fc(F.adaptive_max_pool2d(x, (2, 2)).flatten(1))

    return CBAMNet()


def annotated_transformer(lib):
    """The Annotated Transformer's own LayerNorm (std with Bessel's correction) and attention
    masked where the input is padding."""
    nn = lib.nn

    class LayerNorm(nn.Module):
        def __init__(self, features, eps=1e-6):
            super().__init__()
            self.a_2 = nn.Parameter(lib.ones(features))
            self.b_2 = nn.Parameter(lib.zeros(features))
            self.eps = eps

        def forward(self, x):
            mean = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True)
            return self.a_2 * (x - mean) / (std + self.eps) + self.b_2

    def attention(query, key, value, mask=None):
        d_k = query.size(-1)
        scores = lib.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)
        return lib.matmul(scores.softmax(dim=-1), value)

    class Encoder(nn.Module):
        def __init__(self, vocab=20, d=8):
            super().__init__()
            self.lut = nn.Embedding(vocab, d)
            self.norm = LayerNorm(d)
            self.proj = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, 3)
            self.d = d

        def forward(self, src):
            mask = (src != 0).unsqueeze(-2)
            x = self.lut(src) * math.sqrt(self.d)
            q, k, v = self.proj(self.norm(x)).chunk(3, dim=-1)
            x = x + attention(q, k, v, mask)
            return self.out(x[:, 0])

    return Encoder()


def _image(b, c=3, s=8):
    return np.random.default_rng(b).standard_normal((b, c, s, s)).astype(np.float32)


def _tokens(b, t=7):
    tok = np.random.default_rng(b).integers(1, 20, (b, t))
    for i in range(b):  # right padding, one sequence of each batch at full length
        tok[i, t - i % t:] = 0
    return tok.astype(np.int64)


MODELS = {  # name -> (build, input of a batch size)
    "resnet": (resnet, _image),
    "mobilenet_v2": (mobilenet, _image),
    "unet": (unet, lambda b: _image(b, 2, 8)),
    "lstm_text": (lambda lib: rnn_classifier(lib, "LSTM"), _tokens),
    "gru_text": (lambda lib: rnn_classifier(lib, "GRU"), _tokens),
    "transformer_text": (transformer_classifier, _tokens),
    "vit": (vit, _image),
    "autoencoder": (autoencoder, lambda b: _image(b, 1, 8)),
    "mlp_mixer": (mixer, _image),
    "wavenet": (wavenet, lambda b: np.random.default_rng(b).standard_normal((b, 1, 12))
                .astype(np.float32)),
    "norm_heads": (norm_heads, _image),
    "cbam": (cbam, _image),
    "annotated_transformer": (annotated_transformer, _tokens),
}


def _pair(name):
    """The model built in PyTorch (seeded) and in nodegrad with the same weights, both in eval."""
    build = MODELS[name][0]
    torch.manual_seed(0)
    ref = build(torch)
    with torch.no_grad():  # running statistics other than (0, 1)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = build(ng)
    state = {k: ng.tensor(v.numpy().copy()) for k, v in ref.state_dict().items()}
    model.load_state_dict(state)
    return ref.eval(), model.eval()


def _torch_out(ref, x):
    with torch.no_grad():
        return ref(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", list(MODELS))
def test_nodegrad_export_runs_in_onnxruntime_with_pytorchs_outputs(name):
    ref, model = _pair(name)
    make = MODELS[name][1]
    proto = export(model, ng.tensor(make(2)))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    for b in (2, 3):
        x = make(b)
        want = _torch_out(ref, x)
        np.testing.assert_allclose(model(ng.tensor(x)).numpy(), want, rtol=RTOL, atol=ATOL)
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def _torch_export(ref, x):
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ref, (torch.from_numpy(x),), buf, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                              do_constant_folding=False)
    except (ImportError, ModuleNotFoundError) as e:  # pragma: no cover - environment
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    return buf.getvalue()


def _loss(lib, out):
    target = lib.tensor(np.linspace(-1, 1, out.numel(), dtype=np.float32).reshape(out.shape))
    return ((out - target) ** 2).mean()


@pytest.mark.parametrize("name", list(MODELS))
def test_pytorch_export_loads_and_fine_tunes_as_in_pytorch(name):
    ref, _ = _pair(name)
    make = MODELS[name][1]
    back = load(_torch_export(ref, make(2)))
    for b in (2, 3):
        x = make(b)
        np.testing.assert_allclose(back(ng.tensor(x)).numpy(), _torch_out(ref, x), rtol=RTOL,
                                   atol=ATOL)
    # a few SGD steps on the loaded weights; PyTorch's model runs the same steps in eval mode
    # (an ONNX graph is an inference graph: batch norm keeps its running statistics)
    # float initializers load as trainable parameters: PyTorch's buffers (a positional
    # encoding) are frozen again, as a user fine-tuning the import would
    buffers = dict(ref.named_buffers())
    for k, p in back.named_parameters():
        if k in buffers:
            p.requires_grad_(False)
    # ONNX's Gather has no padding_idx: its row's gradient is zeroed by hand
    padded = [(k, m.padding_idx) for k, m in ref.named_modules()
              if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None]
    x = make(3)
    opt_ng = ng.optim.SGD([p for p in back.parameters() if p.requires_grad], lr=0.05)
    opt_t = torch.optim.SGD(ref.parameters(), lr=0.05)
    for step in range(3):
        opt_ng.zero_grad()
        loss_ng = _loss(ng, back(ng.tensor(x)))
        loss_ng.backward()
        for k, row in padded:
            back.get_submodule(k).weight.grad[row] = 0
        opt_t.zero_grad()
        loss_t = _loss(torch, ref(torch.from_numpy(x)))
        loss_t.backward()
        np.testing.assert_allclose(loss_ng.item(), loss_t.item(), rtol=1e-5, err_msg=f"{step}")
        if step == 0:
            grads = [p.grad for p in back.parameters() if p.requires_grad]
            assert all(g is not None for g in grads)
            assert sum(float(np.abs(g.numpy()).sum()) for g in grads) > 0
            named = dict(ref.named_parameters())
            for k, p in back.named_parameters():  # the weights PyTorch names keep their names
                if k in named:
                    np.testing.assert_allclose(p.grad.numpy(), named[k].grad.numpy(),
                                               rtol=1e-4, atol=1e-6, err_msg=k)
        opt_ng.step()
        opt_t.step()


# idioms of these models that the export once got wrong or refused

def _ort_matches(model, make, batches=(2, 3)):
    """``model`` exported on the first batch size runs in onnxruntime with its own outputs."""
    model.eval()
    proto = export(model, ng.tensor(make(batches[0])))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for b in batches:
        x = make(b)
        np.testing.assert_allclose(sess.run(None, {"input": x})[0],
                                   model(ng.tensor(x)).numpy(), rtol=RTOL, atol=ATOL)
    return proto


def _rows(b, *shape):
    return np.random.default_rng(b).standard_normal((b, *shape)).astype(np.float32)


class _InPlace(ng.nn.Module):
    """torchvision's ``out += identity`` and other in-place updates of traced values."""

    def __init__(self, form):
        super().__init__()
        self.lin, self.form = ng.nn.Linear(4, 4), form
        self.act = ng.nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.lin(x)
        if self.form == "residual":
            h += x
            h = self.act(h)
        elif self.form == "methods":
            h.relu_()
            h *= 2
            h.sub_(x, alpha=0.5)
            h.clamp_(min=-0.1).mul_(3)
            ng.nn.functional.relu(h, inplace=True)
        elif self.form == "setitem":
            h[:, 0] = 0
        elif self.form == "view":
            v = h[:, :2]
            v += 1
        elif self.form == "copy_":
            h.copy_(x)
        return h


@pytest.mark.parametrize("form", ["residual", "methods"])
def test_in_place_updates_in_a_forward_are_exported(form):
    # the export wrote the value from before the update (ResNet's residuals were dropped)
    proto = _ort_matches(_InPlace(form), lambda b: _rows(b, 4))
    ops = [n.op_type for n in proto.graph.node]
    assert "Add" in ops or form != "residual"


@pytest.mark.parametrize("form", ["setitem", "view", "copy_"])
def test_in_place_writes_the_export_cannot_write_are_refused(form):
    with pytest.raises(ng.onnx.UnsupportedError, match="changed in place"):
        export(_InPlace(form).eval(), ng.tensor(_rows(2, 4)))


class _ClsToken(ng.nn.Module):
    def __init__(self, repeat):
        super().__init__()
        self.cls_token = ng.nn.Parameter(ng.randn(1, 1, 4))
        self.repeat = repeat

    def forward(self, x):
        b = x.shape[0]
        cls = self.cls_token.repeat(b, 1, 1) if self.repeat else self.cls_token.expand(b, -1, -1)
        return ng.cat((cls, x), dim=1)


@pytest.mark.parametrize("repeat", [False, True])
def test_a_token_expanded_to_the_batch_size_exports(repeat):
    # expand(x.shape[0], -1, -1) was refused: the batch size is read from the input now
    _ort_matches(_ClsToken(repeat), lambda b: _rows(b, 3, 4))


class _ZeroStates(ng.nn.Module):
    """States made in the forward for the batch size, as recurrent tutorials write them."""

    def __init__(self, form):
        super().__init__()
        self.form = form
        self.lstm = ng.nn.LSTM(4, 5, num_layers=2, batch_first=True)
        self.lstm_cell, self.gru_cell = ng.nn.LSTMCell(4, 5), ng.nn.GRUCell(5, 3)

    def forward(self, x):
        if self.form == "lstm_h0":
            h0 = ng.zeros(2, x.size(0), 5)
            c0 = ng.zeros(2, x.size(0), 5)
            return self.lstm(x, (h0, c0))[0][:, -1]
        if self.form == "cells":
            h, c, g = x.new_zeros(x.size(0), 5), ng.zeros(x.size(0), 5), ng.ones(x.size(0), 3)
            for t in range(x.size(1)):
                h, c = self.lstm_cell(x[:, t], (h, c))
                g = self.gru_cell(h, g)
            return g
        if self.form == "default_cells":
            return self.gru_cell(self.lstm_cell(x[:, 0])[0])
        if self.form == "sum":
            return x[:, 0] + ng.full((x.shape[0], 4), 0.5)
        return x[:, 0] + ng.arange(x.shape[0] * 4).reshape(-1, 4)  # not one value: refused


@pytest.mark.parametrize("form", ["lstm_h0", "cells", "default_cells", "sum"])
def test_constants_of_the_batch_size_export(form):
    # zeros(layers, x.size(0), hidden) was refused, GRUCell's fused step had no converter
    _ort_matches(_ZeroStates(form), lambda b: _rows(b, 3, 4))


def test_a_constant_of_the_batch_size_of_several_values_is_still_refused():
    with pytest.raises(ng.onnx.UnsupportedError, match="constant of shape"):
        export(_ZeroStates("arange").eval(), ng.tensor(_rows(2, 3, 4)))


def test_pytorchs_tile_and_trilu_import():
    """``repeat`` (Tile), ``triu``/``tril`` with a diagonal and causal attention (Trilu)."""
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 4))
            self.qkv = torch.nn.Linear(4, 12)

        def forward(self, x):
            x = torch.cat([self.cls.repeat(x.shape[0], 1, 1), x], 1)
            q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
            return y.triu(1) + y.tril(-1) * 2

    torch.manual_seed(0)
    net = Net()
    back = load(_torch_export(net, _rows(2, 4, 4)))
    ops = {n[0] for n in back.nodes}
    assert {"Tile", "Trilu"} <= ops
    x = _rows(3, 4, 4)
    out = back(ng.tensor(x))
    want = net(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), want.detach().numpy(), rtol=RTOL, atol=ATOL)
    out.square().sum().backward()
    want.square().sum().backward()
    np.testing.assert_allclose(back.cls.grad.numpy(), net.cls.grad.numpy(), rtol=1e-4, atol=1e-6)


class _OuterIndex(ng.nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        if self.form == "outer":  # rows and columns: an outer product of index arrays
            return x[:, :, ng.tensor([[0], [2]]), ng.tensor([1, -1, 3])]
        if self.form == "pool":
            return ng.nn.functional.adaptive_max_pool1d(x.flatten(2), 5)
        if self.form == "apart":
            return x[:, ng.tensor([0, 3]), :, ng.tensor([1, 2])]
        return x[:, :, ng.tensor([0, 1]), ng.tensor([1, 2])]  # pairs: not an outer product


@pytest.mark.parametrize("form", ["outer", "pool"])
def test_outer_products_of_index_arrays_export_as_gathers(form):
    # several index arrays were refused, and with them the adaptive max pooling functions
    _ort_matches(_OuterIndex(form), lambda b: _rows(b, 4, 6, 6))


@pytest.mark.parametrize("form,needle", [("apart", "not adjacent"), ("pairs", "outer product")])
def test_other_index_arrays_are_refused(form, needle):
    with pytest.raises(ng.onnx.UnsupportedError, match=needle):
        export(_OuterIndex(form), ng.tensor(_rows(2, 4, 6, 6)))
