"""Volumetric and video programs in PyTorch, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``): a 3-D U-Net
with Dice + cross-entropy, V-Net's residual stages, C3D and R(2+1)D video blocks, divided
space-time attention, an occupancy network sampling a feature volume with ``grid_sample``, and
the 3-D pooling, padding, convolution and memory-format idioms they rely on. Both runs start
from PyTorch's seeded initial weights and see the same arrays (drawn with PyTorch), in float64.
"""
# ruff: noqa: UP008, UP018, UP031  (the programs keep their sources' own spellings)

from __future__ import annotations

import re

import numpy as np
import pytest

import nodegrad as ng
from _ports import (arr, assert_same, both, draw,  # noqa: F401
                    float64_one_thread, initial_state, start)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("float64_one_thread")


def grads(model) -> dict:
    return {k: p.grad for k, p in model.named_parameters()}


def plain_repr(module) -> str:
    """``repr(module)`` without nodegrad's trailing parameter count (a documented addition)."""
    return re.sub(r"  # [\d,]+ parameters( in all)?", "", repr(module))


# --- 1. 3-D U-Net (Çiçek et al.; wolny/pytorch-3dunet style) with Dice + cross-entropy -------
def unet3d(lib, norm: str = "bn", up: str = "transpose", align_corners: bool = False):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    def Norm(c):
        return nn.BatchNorm3d(c) if norm == "bn" else nn.InstanceNorm3d(c, affine=True)

    class DoubleConv(nn.Module):
        def __init__(self, in_ch, out_ch):
            super().__init__()
            self.block = nn.Sequential(
                nn.Conv3d(in_ch, out_ch // 2, kernel_size=3, padding=1, bias=False),
                Norm(out_ch // 2), nn.ReLU(inplace=True),
                nn.Conv3d(out_ch // 2, out_ch, kernel_size=3, padding=1, bias=False),
                Norm(out_ch), nn.ReLU(inplace=True))

        def forward(self, x):
            return self.block(x)

    class Decoder(nn.Module):
        def __init__(self, in_ch, skip_ch, out_ch):
            super().__init__()
            if up == "transpose":
                self.up = nn.ConvTranspose3d(in_ch, in_ch, kernel_size=2, stride=2)
            else:
                self.up = None
            self.conv = DoubleConv(in_ch + skip_ch, out_ch)

        def forward(self, encoder_features, x):
            if self.up is not None:
                x = self.up(x)
            else:
                x = F.interpolate(x, size=encoder_features.size()[2:], mode="trilinear",
                                  align_corners=align_corners)
            x = torch.cat((encoder_features, x), dim=1)
            return self.conv(x)

    class UNet3D(nn.Module):
        def __init__(self, in_channels=1, out_channels=3, f_maps=4):
            super(UNet3D, self).__init__()
            self.enc1 = DoubleConv(in_channels, f_maps)
            self.pool = nn.MaxPool3d(kernel_size=2)
            self.enc2 = DoubleConv(f_maps, 2 * f_maps)
            self.enc3 = DoubleConv(2 * f_maps, 4 * f_maps)
            self.dec2 = Decoder(4 * f_maps, 2 * f_maps, 2 * f_maps)
            self.dec1 = Decoder(2 * f_maps, f_maps, f_maps)
            self.final_conv = nn.Conv3d(f_maps, out_channels, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            e3 = self.enc3(self.pool(e2))
            d2 = self.dec2(e2, e3)
            d1 = self.dec1(e1, d2)
            return self.final_conv(d1)

    return UNet3D()


def dice_loss(lib, logits, target, n_classes, eps=1e-6):
    """Soft Dice over classes, as in pytorch-3dunet's DiceLoss (softmax normalisation)."""
    F = lib.nn.functional
    probs = F.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    intersect = (probs * onehot).sum(dim=dims)
    denominator = (probs * probs).sum(dim=dims) + (onehot * onehot).sum(dim=dims)
    dice = 2 * intersect / denominator.clamp(min=eps)
    return 1.0 - dice.mean()


def unet3d_train(lib, init, norm, up, align_corners):
    F = lib.nn.functional
    model = start(lib, unet3d, init, norm, up, align_corners)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    x = lib.tensor(draw(2, 1, 8, 8, 8, seed=1))
    y = lib.tensor(draw(2, 8, 8, 8, seed=2, kind="randint", high=3))
    weight = lib.tensor([0.2, 0.5, 0.3], dtype=lib.float64)
    rec = []
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y, weight=weight) + dice_loss(lib, out, y, 3)
        loss.backward()
        rec.append({"loss": loss, "out": out, "g": grads(model)})
        opt.step()
    model.eval()
    with lib.no_grad():
        pred = model(x).argmax(dim=1)
    return {"train": rec, "state": dict(model.state_dict()), "pred": pred}


@pytest.mark.parametrize("norm,up,align", [("bn", "transpose", False),
                                           ("in", "trilinear", False),
                                           ("bn", "trilinear", True)])
def test_unet3d_dice_cross_entropy_training_matches_pytorch(norm, up, align):
    both(unet3d_train, initial_state(unet3d, norm, up, align), norm, up, align)


# --- 2. V-Net (mattmacy/vnet.pytorch): residual stages, PReLU, strided Conv3d down ----------
def vnet(lib, elu: bool = False):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    def ELUCons(elu, nchan):
        if elu:
            return nn.ELU(inplace=True)
        else:
            return nn.PReLU(nchan)

    class LUConv(nn.Module):
        def __init__(self, nchan, elu):
            super(LUConv, self).__init__()
            self.relu1 = ELUCons(elu, nchan)
            self.conv1 = nn.Conv3d(nchan, nchan, kernel_size=5, padding=2)
            self.bn1 = nn.BatchNorm3d(nchan)

        def forward(self, x):
            out = self.relu1(self.bn1(self.conv1(x)))
            return out

    def _make_nConv(nchan, depth, elu):
        layers = []
        for _ in range(depth):
            layers.append(LUConv(nchan, elu))
        return nn.Sequential(*layers)

    class InputTransition(nn.Module):
        def __init__(self, outChans, elu):
            super(InputTransition, self).__init__()
            self.conv1 = nn.Conv3d(1, outChans, kernel_size=5, padding=2)
            self.bn1 = nn.BatchNorm3d(outChans)
            self.relu1 = ELUCons(elu, outChans)

        def forward(self, x):
            out = self.bn1(self.conv1(x))
            # split input in to 4 channels (the paper's 16, scaled down)
            x4 = torch.cat((x, x, x, x), 1)
            out = self.relu1(torch.add(out, x4))
            return out

    class DownTransition(nn.Module):
        def __init__(self, inChans, nConvs, elu):
            super(DownTransition, self).__init__()
            outChans = 2 * inChans
            self.down_conv = nn.Conv3d(inChans, outChans, kernel_size=2, stride=2)
            self.bn1 = nn.BatchNorm3d(outChans)
            self.relu1 = ELUCons(elu, outChans)
            self.relu2 = ELUCons(elu, outChans)
            self.ops = _make_nConv(outChans, nConvs, elu)

        def forward(self, x):
            down = self.relu1(self.bn1(self.down_conv(x)))
            out = self.ops(down)
            out = self.relu2(torch.add(out, down))
            return out

    class UpTransition(nn.Module):
        def __init__(self, inChans, outChans, nConvs, elu):
            super(UpTransition, self).__init__()
            self.up_conv = nn.ConvTranspose3d(inChans, outChans // 2, kernel_size=2, stride=2)
            self.bn1 = nn.BatchNorm3d(outChans // 2)
            self.relu1 = ELUCons(elu, outChans // 2)
            self.relu2 = ELUCons(elu, outChans)
            self.ops = _make_nConv(outChans, nConvs, elu)

        def forward(self, x, skipx):
            out = self.relu1(self.bn1(self.up_conv(x)))
            xcat = torch.cat((out, skipx), 1)
            out = self.ops(xcat)
            out = self.relu2(torch.add(out, xcat))
            return out

    class OutputTransition(nn.Module):
        def __init__(self, inChans, elu):
            super(OutputTransition, self).__init__()
            self.conv1 = nn.Conv3d(inChans, 2, kernel_size=5, padding=2)
            self.bn1 = nn.BatchNorm3d(2)
            self.conv2 = nn.Conv3d(2, 2, kernel_size=1)
            self.relu1 = ELUCons(elu, 2)

        def forward(self, x):
            out = self.relu1(self.bn1(self.conv1(x)))
            out = self.conv2(out)
            # make channels the last axis
            out = out.permute(0, 2, 3, 4, 1).contiguous()
            # flatten
            out = out.view(out.numel() // 2, 2)
            out = F.log_softmax(out, dim=1)
            return out

    class VNet(nn.Module):
        def __init__(self, elu=True):
            super(VNet, self).__init__()
            self.in_tr = InputTransition(4, elu)
            self.down_tr32 = DownTransition(4, 1, elu)
            self.down_tr64 = DownTransition(8, 2, elu)
            self.up_tr64 = UpTransition(16, 16, 2, elu)
            self.up_tr32 = UpTransition(16, 8, 1, elu)
            self.out_tr = OutputTransition(8, elu)

        def forward(self, x):
            out16 = self.in_tr(x)
            out32 = self.down_tr32(out16)
            out64 = self.down_tr64(out32)
            out = self.up_tr64(out64, out32)
            out = self.up_tr32(out, out16)
            out = self.out_tr(out)
            return out

    return VNet(elu)


def vnet_train(lib, init, elu):
    F = lib.nn.functional
    model = start(lib, vnet, init, elu)
    opt = lib.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, weight_decay=1e-8)
    x = lib.tensor(draw(1, 1, 8, 8, 8, seed=3))
    target = lib.tensor(draw(1, 8, 8, 8, seed=4, kind="randint", high=2))
    rec = []
    for _ in range(2):
        opt.zero_grad()
        output = model(x)
        target_flat = target.view(target.numel())
        loss = F.nll_loss(output, target_flat)
        loss.backward()
        pred = output.data.max(1)[1]  # get the index of the max log-probability
        incorrect = pred.ne(target_flat.data).sum()
        rec.append({"loss": loss, "wrong": int(incorrect), "g": grads(model)})
        opt.step()
    return {"train": rec, "state": dict(model.state_dict())}


@pytest.mark.parametrize("elu", [False, True])
def test_vnet_prelu_residual_stages_match_pytorch(elu):
    both(vnet_train, initial_state(vnet, elu), elu)


# --- 3. C3D and R(2+1)D video blocks ---------------------------------------------------------
def c3d(lib):
    nn = lib.nn

    class C3D(nn.Module):
        """The C3D network (Tran et al. 2015), channel widths scaled down."""

        def __init__(self, num_classes=3):
            super(C3D, self).__init__()
            self.conv1 = nn.Conv3d(3, 4, kernel_size=(3, 3, 3), padding=(1, 1, 1))
            self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
            self.conv2 = nn.Conv3d(4, 8, kernel_size=(3, 3, 3), padding=(1, 1, 1))
            self.pool2 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
            self.conv3a = nn.Conv3d(8, 8, kernel_size=(3, 3, 3), padding=(1, 1, 1))
            self.pool5 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2),
                                      padding=(0, 1, 1))
            self.fc6 = nn.Linear(8 * 1 * 2 * 2, 16)
            self.fc8 = nn.Linear(16, num_classes)
            self.dropout = nn.Dropout(p=0.0)
            self.relu = nn.ReLU()

        def forward(self, x):
            x = self.relu(self.conv1(x))
            x = self.pool1(x)
            x = self.relu(self.conv2(x))
            x = self.pool2(x)
            x = self.relu(self.conv3a(x))
            x = self.pool5(x)
            x = x.view(-1, 8 * 1 * 2 * 2)
            x = self.relu(self.fc6(x))
            x = self.dropout(x)
            logits = self.fc8(x)
            return logits

    return C3D()


def r2plus1d(lib):
    nn = lib.nn

    class SpatioTemporalConv(nn.Module):
        """(2+1)D: a spatial (1, k, k) convolution, then a temporal (k, 1, 1) one, with the
        intermediate width M_i of the paper."""

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                     bias=False):
            super(SpatioTemporalConv, self).__init__()
            kernel_size = nn.modules.utils._triple(kernel_size)
            stride = nn.modules.utils._triple(stride)
            padding = nn.modules.utils._triple(padding)
            spatial_kernel_size = [1, kernel_size[1], kernel_size[2]]
            spatial_stride = [1, stride[1], stride[2]]
            spatial_padding = [0, padding[1], padding[2]]
            temporal_kernel_size = [kernel_size[0], 1, 1]
            temporal_stride = [stride[0], 1, 1]
            temporal_padding = [padding[0], 0, 0]
            intermed_channels = int(
                (kernel_size[0] * kernel_size[1] * kernel_size[2] * in_channels * out_channels)
                / (kernel_size[1] * kernel_size[2] * in_channels
                   + kernel_size[0] * out_channels))
            self.spatial_conv = nn.Conv3d(in_channels, intermed_channels, spatial_kernel_size,
                                          stride=spatial_stride, padding=spatial_padding,
                                          bias=bias)
            self.bn = nn.BatchNorm3d(intermed_channels)
            self.relu = nn.ReLU()
            self.temporal_conv = nn.Conv3d(intermed_channels, out_channels,
                                           temporal_kernel_size, stride=temporal_stride,
                                           padding=temporal_padding, bias=bias)

        def forward(self, x):
            x = self.relu(self.bn(self.spatial_conv(x)))
            x = self.temporal_conv(x)
            return x

    class SpatioTemporalResBlock(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, downsample=False):
            super(SpatioTemporalResBlock, self).__init__()
            self.downsample = downsample
            padding = kernel_size // 2
            if self.downsample:
                self.downsampleconv = SpatioTemporalConv(in_channels, out_channels, 1,
                                                         stride=2)
                self.downsamplebn = nn.BatchNorm3d(out_channels)
                self.conv1 = SpatioTemporalConv(in_channels, out_channels, kernel_size,
                                                padding=padding, stride=2)
            else:
                self.conv1 = SpatioTemporalConv(in_channels, out_channels, kernel_size,
                                                padding=padding)
            self.bn1 = nn.BatchNorm3d(out_channels)
            self.relu1 = nn.ReLU()
            self.conv2 = SpatioTemporalConv(out_channels, out_channels, kernel_size,
                                            padding=padding)
            self.bn2 = nn.BatchNorm3d(out_channels)
            self.outrelu = nn.ReLU()

        def forward(self, x):
            res = self.relu1(self.bn1(self.conv1(x)))
            res = self.bn2(self.conv2(res))
            if self.downsample:
                x = self.downsamplebn(self.downsampleconv(x))
            return self.outrelu(x + res)

    class R2Plus1DClassifier(nn.Module):
        def __init__(self, num_classes=3):
            super(R2Plus1DClassifier, self).__init__()
            self.conv1 = SpatioTemporalConv(3, 4, [3, 7, 7], stride=[1, 2, 2],
                                            padding=[1, 3, 3])
            self.conv2 = SpatioTemporalResBlock(4, 4, 3)
            self.conv3 = SpatioTemporalResBlock(4, 8, 3, downsample=True)
            self.pool = nn.AdaptiveAvgPool3d(1)
            self.linear = nn.Linear(8, num_classes)

        def forward(self, x):
            x = self.conv3(self.conv2(self.conv1(x)))
            x = self.pool(x)
            x = x.view(-1, 8)
            return self.linear(x)

    return R2Plus1DClassifier()


def video_train(lib, build, init, dtype="float64"):
    nn = lib.nn
    model = start(lib, build, init, dtype=dtype)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    clips = lib.tensor(draw(2, 3, 4, 8, 8, seed=5)).to(getattr(lib, dtype))  # (B, C, T, H, W)
    labels = lib.tensor(draw(2, seed=6, kind="randint", high=3))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    rec = []
    for _ in range(2):
        opt.zero_grad()
        logits = model(clips)
        loss = criterion(logits, labels)
        loss.backward()
        rec.append({"loss": loss, "logits": logits, "g": grads(model)})
        opt.step()
    return {"train": rec, "state": dict(model.state_dict())}


@pytest.mark.parametrize("build", [c3d, r2plus1d], ids=["c3d", "r2plus1d"])
def test_video_networks_training_match_pytorch(build):
    both(video_train, build, initial_state(build))


def test_video_network_training_in_float32_matches_pytorch():
    got = both(video_train, r2plus1d, initial_state(r2plus1d), "float32", tol=1e-4)
    assert all(v.dtype == ng.float32 for k, v in got["state"].items() if "num_batches" not in k)
    model = start(ng, r2plus1d, initial_state(r2plus1d), dtype="float32")
    out = model(ng.tensor(draw(1, 3, 4, 8, 8, seed=5)).float())
    assert out.dtype == ng.float32 and all(
        p.dtype == ng.float32 for p in model.parameters())


def adaptive_pools(lib):
    nn = lib.nn
    x = lib.tensor(draw(2, 3, 5, 7, 6, seed=7), requires_grad=True)
    pools = [nn.AdaptiveAvgPool3d((1, None, None)), nn.AdaptiveAvgPool3d((2, 3, 4)),
             nn.AdaptiveMaxPool3d((None, 2, 3)), nn.AdaptiveAvgPool3d(1),
             nn.AdaptiveMaxPool3d(2)]
    ys = [p(x) for p in pools]
    sum((y * lib.tensor(draw(*y.shape, seed=8 + i))).sum() for i, y in enumerate(ys)).backward()
    return {"y": ys, "g": x.grad, "repr": [repr(p) for p in pools]}


def test_adaptive_pool3d_with_none_sizes_matches_pytorch():
    both(adaptive_pools)


# --- 4. TimeSformer-style divided space-time attention (no einops) ---------------------------
def timesformer(lib):
    torch, nn = lib, lib.nn

    class Attention(nn.Module):
        def __init__(self, dim, num_heads=2, qkv_bias=True):
            super().__init__()
            self.num_heads = num_heads
            head_dim = dim // num_heads
            self.scale = head_dim ** -0.5
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
            qkv = qkv.permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(B, N, C)
            return self.proj(x)

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.temporal_norm1 = nn.LayerNorm(dim)
            self.temporal_attn = Attention(dim)
            self.temporal_fc = nn.Linear(dim, dim)
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x, B, T, W):
            num_spatial_tokens = (x.size(1) - 1) // T
            H = num_spatial_tokens // W
            # temporal attention: (b, h w t, m) -> (b h w, t, m)
            xt = x[:, 1:, :]
            xt = xt.reshape(B, H * W, T, -1).reshape(B * H * W, T, -1)
            res_temporal = self.temporal_attn(self.temporal_norm1(xt))
            res_temporal = res_temporal.reshape(B, H * W * T, -1)
            res_temporal = self.temporal_fc(res_temporal)
            xt = x[:, 1:, :] + res_temporal
            # spatial attention: (b, h w t, m) -> (b t, h w, m), a cls token per frame
            init_cls_token = x[:, 0, :].unsqueeze(1)
            cls_token = init_cls_token.repeat(1, T, 1)
            cls_token = cls_token.reshape(B * T, -1).unsqueeze(1)
            xs = xt.reshape(B, H * W, T, -1).permute(0, 2, 1, 3).reshape(B * T, H * W, -1)
            xs = torch.cat((cls_token, xs), 1)
            res_spatial = self.attn(self.norm1(xs))
            cls_token = res_spatial[:, 0, :].reshape(B, T, -1)
            cls_token = torch.mean(cls_token, 1, True)
            res_spatial = res_spatial[:, 1:, :]
            res_spatial = res_spatial.reshape(B, T, H * W, -1).permute(0, 2, 1, 3)
            res_spatial = res_spatial.reshape(B, H * W * T, -1)
            x = torch.cat((init_cls_token, xt), 1) + torch.cat((cls_token, res_spatial), 1)
            x = x + self.mlp(self.norm2(x))
            return x

    class PatchEmbed(nn.Module):
        def __init__(self, patch_size=4, in_chans=3, embed_dim=8):
            super().__init__()
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(1, patch_size, patch_size),
                                  stride=(1, patch_size, patch_size))

        def forward(self, x):
            x = self.proj(x)  # (B, D, T, H', W')
            B, D, T, H, W = x.shape
            return x.flatten(3).permute(0, 3, 2, 1).reshape(B, H * W * T, D), T, W

    class TimeSformer(nn.Module):
        def __init__(self, dim=8, num_frames=4, num_patches=4, num_classes=3):
            super().__init__()
            self.patch_embed = PatchEmbed(embed_dim=dim)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            self.blocks = nn.ModuleList([Block(dim) for _ in range(2)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x):
            B = x.shape[0]
            x, T, W = self.patch_embed(x)  # tokens ordered (h w t)
            N = x.size(1) // T
            xs = x.reshape(B, N, T, -1).permute(0, 2, 1, 3).reshape(B * T, N, -1)
            cls_tokens = self.cls_token.expand(xs.size(0), -1, -1)
            xs = torch.cat((cls_tokens, xs), dim=1) + self.pos_embed
            cls_tokens = xs[:B, 0, :].unsqueeze(1)
            xs = xs[:, 1:]
            # time embeddings: (b t, n, m) -> (b n, t, m)
            xt = xs.reshape(B, T, N, -1).permute(0, 2, 1, 3).reshape(B * N, T, -1)
            xt = xt + self.time_embed
            xt = xt.reshape(B, N * T, -1)
            x = torch.cat((cls_tokens, xt), dim=1)
            for blk in self.blocks:
                x = blk(x, B, T, W)
            x = self.norm(x)
            return self.head(x[:, 0])

    return TimeSformer()


def timesformer_train(lib, init):
    F = lib.nn.functional
    model = start(lib, timesformer, init)
    opt = lib.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    clips = lib.tensor(draw(2, 3, 4, 8, 8, seed=9))
    labels = lib.tensor(draw(2, seed=10, kind="randint", high=3))
    rec = []
    for _ in range(2):
        opt.zero_grad()
        logits = model(clips)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        rec.append({"loss": loss, "logits": logits, "g": grads(model)})
        opt.step()
    return {"train": rec, "state": dict(model.state_dict())}


def test_timesformer_divided_space_time_attention_matches_pytorch():
    both(timesformer_train, initial_state(timesformer))


# --- 5. occupancy network: a voxel encoder, trilinear grid_sample at query points -----------
def occupancy(lib):
    nn, F = lib.nn, lib.nn.functional

    class ResnetBlockFC(nn.Module):
        def __init__(self, size_in, size_out=None, size_h=None):
            super().__init__()
            size_out = size_in if size_out is None else size_out
            size_h = min(size_in, size_out) if size_h is None else size_h
            self.fc_0 = nn.Linear(size_in, size_h)
            self.fc_1 = nn.Linear(size_h, size_out)
            self.actvn = nn.ReLU()
            self.shortcut = None if size_in == size_out else nn.Linear(size_in, size_out,
                                                                       bias=False)
            nn.init.zeros_(self.fc_1.weight)

        def forward(self, x):
            net = self.fc_0(self.actvn(x))
            dx = self.fc_1(self.actvn(net))
            x_s = x if self.shortcut is None else self.shortcut(x)
            return x_s + dx

    class VoxelEncoder(nn.Module):
        def __init__(self, c_dim=8):
            super().__init__()
            self.conv_in = nn.Conv3d(1, 4, 3, padding=1)
            self.conv_0 = nn.Conv3d(4, c_dim, 3, padding=1, stride=2)
            self.actvn = F.relu

        def forward(self, x):
            x = x.unsqueeze(1)
            net = self.conv_in(x)
            return self.conv_0(self.actvn(net))  # (B, c_dim, 4, 4, 4)

    class LocalDecoder(nn.Module):
        def __init__(self, c_dim=8, hidden_size=16, padding=0.1, mode="bilinear"):
            super().__init__()
            self.fc_p = nn.Linear(3, hidden_size)
            self.fc_c = nn.Linear(c_dim, hidden_size)
            self.block = ResnetBlockFC(hidden_size)
            self.fc_out = nn.Linear(hidden_size, 1)
            self.padding = padding
            self.mode = mode

        def sample_grid_feature(self, p, c):
            p_nor = p / (1 + self.padding + 10e-4) + 0.5  # to [0, 1]
            p_nor = p_nor.clamp(0, 1 - 10e-6)
            vgrid = 2.0 * p_nor - 1.0
            vgrid = vgrid[:, :, None, None].float().to(c.dtype)
            c = F.grid_sample(c, vgrid, padding_mode="border", align_corners=True,
                              mode=self.mode).squeeze(-1).squeeze(-1)
            return c.transpose(1, 2)

        def forward(self, p, c):
            c = self.sample_grid_feature(p, c)
            net = self.fc_p(p) + self.fc_c(c)
            net = self.block(net)
            return self.fc_out(F.relu(net)).squeeze(-1)

    class ONet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = VoxelEncoder()
            self.decoder = LocalDecoder()

        def forward(self, p, inputs):
            c = self.encoder(inputs)
            return self.decoder(p, c)

    return ONet()


def occupancy_train(lib, init):
    F = lib.nn.functional
    model = start(lib, occupancy, init)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    voxels = lib.tensor((draw(2, 8, 8, 8, seed=11, kind="rand") > 0.5).astype(np.float64))
    p = lib.tensor(draw(2, 16, 3, seed=12, kind="rand") - 0.5)
    occ = lib.tensor((draw(2, 16, seed=13, kind="rand") > 0.5).astype(np.float64))
    rec = []
    for _ in range(2):
        opt.zero_grad()
        logits = model(p, voxels)
        loss_i = F.binary_cross_entropy_with_logits(logits, occ, reduction="none")
        loss = loss_i.sum(-1).mean()
        loss.backward()
        rec.append({"loss": loss, "logits": logits, "g": grads(model)})
        opt.step()
    # gradient of occupancy with respect to query points (surface normals)
    q = p.clone().requires_grad_(True)
    (model(q, voxels).sigmoid().sum()).backward()
    return {"train": rec, "state": dict(model.state_dict()), "normals": q.grad}


def test_occupancy_network_grid_sample_5d_matches_pytorch():
    both(occupancy_train, initial_state(occupancy))


@pytest.mark.parametrize("mode,padding_mode,align", [
    ("bilinear", "zeros", False), ("bilinear", "border", True),
    ("bilinear", "reflection", True), ("nearest", "zeros", True),
    ("bilinear", "reflection", False)])
def test_grid_sample_5d_at_points_matches_pytorch(mode, padding_mode, align):
    def run(lib):
        F = lib.nn.functional
        c = lib.tensor(draw(2, 3, 4, 5, 6, seed=14), requires_grad=True)
        g = lib.tensor(draw(2, 7, 1, 1, 3, seed=15) * 0.8, requires_grad=True)
        y = F.grid_sample(c, g, mode=mode, padding_mode=padding_mode, align_corners=align)
        (y * lib.tensor(draw(*y.shape, seed=16))).sum().backward()
        return {"y": y, "gc": c.grad, "gg": g.grad if mode != "nearest" else None}

    both(run)


# --- 6. pooling: AvgPool3d options, MaxPool3d indices + MaxUnpool3d -------------------------
@pytest.mark.parametrize("kw", [
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
    {"kernel_size": (1, 3, 3), "stride": (1, 2, 2), "padding": (0, 1, 1),
     "count_include_pad": False},
    {"kernel_size": 2, "divisor_override": 3},
    {"kernel_size": (2, 3, 3), "stride": 2, "padding": (1, 1, 0), "ceil_mode": True,
     "divisor_override": 5},
    {"kernel_size": 2, "stride": None},
])
def test_avgpool3d_options_match_pytorch(kw):
    def run(lib):
        x = lib.tensor(draw(2, 2, 5, 7, 6, seed=17), requires_grad=True)
        y = lib.nn.AvgPool3d(**kw)(x)
        z = lib.nn.functional.avg_pool3d(x, **kw)
        (y * lib.tensor(draw(*y.shape, seed=18))).sum().backward()
        return {"y": y, "z": z, "g": x.grad}

    both(run)


def maxunpool(lib):
    nn, F = lib.nn, lib.nn.functional
    x = lib.tensor(draw(1, 2, 6, 6, 6, seed=19), requires_grad=True)
    pool = nn.MaxPool3d(2, stride=2, return_indices=True)
    unpool = nn.MaxUnpool3d(2, stride=2)
    out, indices = pool(x)
    up = unpool(out, indices)
    # SegNet-style with an explicit size (odd input)
    x7 = lib.tensor(draw(1, 2, 7, 5, 7, seed=20), requires_grad=True)
    o7, i7 = F.max_pool3d(x7, kernel_size=2, stride=2, return_indices=True)
    u7 = unpool(o7, i7, output_size=x7.size())
    u7b = F.max_unpool3d(o7, i7, kernel_size=2, stride=2, output_size=x7.shape[2:])
    p3, i3 = F.max_pool3d(x7, 3, stride=2, padding=1, return_indices=True, ceil_mode=True)
    u3 = F.max_unpool3d(p3, i3, 3, stride=2, padding=1, output_size=list(x7.shape))
    loss = (up * lib.tensor(draw(*up.shape, seed=21))).sum() + (u7 ** 2).sum() + u7b.sum() \
        + (u3 * lib.tensor(draw(*u3.shape, seed=22))).sum()
    loss.backward()
    return {"out": out, "idx": indices, "up": up, "u7": u7, "u7b": u7b, "i3": i3, "u3": u3,
            "gx": x.grad, "gx7": x7.grad}


def test_maxpool3d_indices_and_maxunpool3d_match_pytorch():
    both(maxunpool)


# --- 7. F.pad on 5-D tensors, Conv3d options ------------------------------------------------
@pytest.mark.parametrize("mode,pad", [
    ("constant", (1, 2)), ("constant", (1, 0, 2, 1, 0, 3)), ("constant", (1, 1, 1, 1, 1, 1, 1, 1)),
    ("constant", (-1, 2, 0, -1, 1, 0)),
    ("reflect", (1, 2, 2, 1, 1, 1)), ("reflect", (0, 0, 1, 0, 2, 2)),
    ("replicate", (1, 2, 0, 3, 2, 1)), ("replicate", (3, 3, 0, 0, 4, 1)),
    ("circular", (1, 2, 2, 1, 1, 0)), ("circular", (4, 0, 0, 3, 2, 2)),
])
def test_pad_5d_in_each_mode_matches_pytorch(mode, pad):
    def run(lib):
        F = lib.nn.functional
        x = lib.tensor(draw(2, 2, 3, 4, 5, seed=23), requires_grad=True)
        kw = {"value": 0.5} if mode == "constant" else {}
        y = F.pad(x, pad, mode=mode, **kw)
        (y * lib.tensor(draw(*y.shape, seed=24))).sum().backward()
        return {"y": y, "g": x.grad}

    both(run)


@pytest.mark.parametrize("kw", [
    {"kernel_size": 3, "groups": 2, "padding": 1},
    {"kernel_size": 3, "groups": 4, "dilation": 2, "padding": 2},
    {"kernel_size": (3, 1, 2), "dilation": (1, 2, 1), "padding": "same"},
    {"kernel_size": 4, "padding": "same", "groups": 2},
    {"kernel_size": 3, "padding": "valid", "stride": (1, 2, 2)},
    {"kernel_size": 3, "padding": 1, "padding_mode": "replicate"},
    {"kernel_size": 3, "padding": (1, 2, 1), "padding_mode": "circular", "stride": 2},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect", "groups": 2, "dilation": 1},
    {"kernel_size": 3, "padding": "same", "padding_mode": "reflect", "dilation": (1, 2, 1)},
    {"kernel_size": 2, "padding": "same", "padding_mode": "circular"},
])
def test_conv3d_groups_dilation_padding_modes_match_pytorch(kw):
    def build(lib):
        return lib.nn.Conv3d(4, 4, **kw)

    def run(lib, init):
        conv = start(lib, build, init)
        x = lib.tensor(draw(2, 4, 5, 6, 7, seed=25), requires_grad=True)
        y = conv(x)
        (y * lib.tensor(draw(*y.shape, seed=26))).sum().backward()
        return {"y": y, "gx": x.grad, "g": grads(conv), "repr": plain_repr(conv)}

    both(run, initial_state(build))


def test_conv_transpose3d_options_match_pytorch():
    def build(lib):
        nn = lib.nn
        return nn.ModuleList([
            nn.ConvTranspose3d(4, 2, kernel_size=(1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
            nn.ConvTranspose3d(4, 2, 3, stride=(2, 1, 2), dilation=2, bias=False)])

    def run(lib, init):
        mods = start(lib, build, init)
        x = lib.tensor(draw(1, 4, 3, 4, 3, seed=27), requires_grad=True)
        ys = [m(x) for m in mods]
        y2 = mods[1](x, output_size=[6, 7, 6])
        sum((y * lib.tensor(draw(*y.shape, seed=28 + i))).sum()
            for i, y in enumerate(ys + [y2])).backward()
        return {"y": ys, "y2": y2, "gx": x.grad, "g": grads(mods)}

    both(run, initial_state(build))


# --- 8. upsampling, 3-D pixel shuffle, channels_last_3d --------------------------------------
def test_upsample_anisotropic_scale_matches_pytorch():
    def run(lib):
        nn = lib.nn
        x = lib.tensor(draw(1, 2, 3, 4, 5, seed=32), requires_grad=True)
        layers = [nn.Upsample(scale_factor=(1, 2, 2)),
                  nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear"),
                  nn.Upsample(scale_factor=(2, 1.5, 2), mode="trilinear", align_corners=True),
                  nn.Upsample(size=(3, 8, 10), mode="nearest-exact"),
                  nn.Upsample(scale_factor=2.0, mode="trilinear", align_corners=False)]
        ys = [m(x) for m in layers]
        sum((y * lib.tensor(draw(*y.shape, seed=33 + i))).sum()
            for i, y in enumerate(ys)).backward()
        return {"y": ys, "g": x.grad, "repr": [repr(m) for m in layers]}

    both(run)


def pixel_shuffle_3d(lib, x, scale):
    """Sub-pixel convolution's rearrangement in 3-D: (B, C r^3, D, H, W) -> (B, C, rD, rH, rW)."""
    batch_size, channels, in_depth, in_height, in_width = x.size()
    channels //= scale ** 3
    out_depth, out_height, out_width = in_depth * scale, in_height * scale, in_width * scale
    input_view = x.contiguous().view(batch_size, channels, scale, scale, scale, in_depth,
                                     in_height, in_width)
    output = input_view.permute(0, 1, 5, 2, 6, 3, 7, 4).contiguous()
    return output.view(batch_size, channels, out_depth, out_height, out_width)


def pixel_unshuffle_3d(lib, x, scale):
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // scale, scale, h // scale, scale, w // scale, scale)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * scale ** 3, d // scale, h // scale,
                                                     w // scale)


def sr3d(lib):
    nn = lib.nn

    class SubPixel3D(nn.Module):
        def __init__(self, scale=2):
            super().__init__()
            self.scale = scale
            self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv3d(4, scale ** 3, 3, padding=1)

        def forward(self, x):
            x = self.conv2(nn.functional.relu(self.conv1(x)))
            return pixel_shuffle_3d(lib, x, self.scale)

    return SubPixel3D()


def sr3d_train(lib, init):
    F = lib.nn.functional
    model = start(lib, sr3d, init)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    hr = lib.tensor(draw(1, 1, 8, 8, 8, seed=34))
    lr_ = F.avg_pool3d(hr, 2)
    rec = []
    for _ in range(2):
        opt.zero_grad()
        sr = model(lr_)
        loss = F.l1_loss(sr, hr)
        loss.backward()
        rec.append({"loss": loss, "g": grads(model)})
        opt.step()
    back = pixel_unshuffle_3d(lib, pixel_shuffle_3d(lib, lib.tensor(draw(1, 16, 2, 3, 2)), 2), 2)
    return {"train": rec, "roundtrip": back}


def test_pixel_shuffle_3d_super_resolution_matches_pytorch():
    got = both(sr3d_train, initial_state(sr3d))
    np.testing.assert_array_equal(got["roundtrip"], draw(1, 16, 2, 3, 2))


def channels_last(lib, init):
    model = start(lib, unet3d, init, "bn", "transpose", False)
    model = model.to(memory_format=lib.channels_last_3d)
    x = lib.tensor(draw(2, 1, 8, 8, 8, seed=35)).to(memory_format=lib.channels_last_3d)
    assert x.is_contiguous(memory_format=lib.channels_last_3d)
    out = model(x)
    out = out.contiguous(memory_format=lib.channels_last_3d)
    assert out.is_contiguous(memory_format=lib.channels_last_3d)
    loss = out.square().mean()
    loss.backward()
    y = lib.tensor(draw(1, 3, 2, 3, 4, seed=36)).contiguous(memory_format=lib.channels_last_3d)
    z = lib.empty_like(y, memory_format=lib.preserve_format).copy_(y)
    return {"out": out, "loss": loss, "g": grads(model), "y": y, "ycont": y.contiguous(),
            "z": z, "strides": y.stride()}


def test_channels_last_3d_memory_format_matches_pytorch():
    init = initial_state(unet3d, "bn", "transpose", False)
    ref, got = channels_last(torch, init), channels_last(ng, init)
    # nodegrad's arrays stay C-ordered (documented): same values, C-order strides
    assert ref.pop("strides") == (72, 1, 36, 12, 3)
    assert got.pop("strides") == (72, 24, 12, 4, 1)
    assert_same(got, ref)


# --- 9. I3D (piergiaj/pytorch-i3d): TF "SAME" padding computed per input, inflated 2-D weights
def i3d(lib):
    nn, F = lib.nn, lib.nn.functional
    torch = lib

    class MaxPool3dSamePadding(nn.MaxPool3d):
        def compute_pad(self, dim, s):
            if s % self.stride[dim] == 0:
                return max(self.kernel_size[dim] - self.stride[dim], 0)
            else:
                return max(self.kernel_size[dim] - (s % self.stride[dim]), 0)

        def forward(self, x):
            (batch, channel, t, h, w) = x.size()
            pad_t = self.compute_pad(0, t)
            pad_h = self.compute_pad(1, h)
            pad_w = self.compute_pad(2, w)
            pad_t_f = pad_t // 2
            pad_t_b = pad_t - pad_t_f
            pad_h_f = pad_h // 2
            pad_h_b = pad_h - pad_h_f
            pad_w_f = pad_w // 2
            pad_w_b = pad_w - pad_w_f
            pad = (pad_w_f, pad_w_b, pad_h_f, pad_h_b, pad_t_f, pad_t_b)
            x = F.pad(x, pad)
            return super(MaxPool3dSamePadding, self).forward(x)

    class Unit3D(nn.Module):
        def __init__(self, in_channels, output_channels, kernel_shape=(1, 1, 1), stride=(1, 1, 1),
                     activation_fn=F.relu, use_batch_norm=True, use_bias=False, name="unit_3d"):
            super(Unit3D, self).__init__()
            self._output_channels = output_channels
            self._kernel_shape = kernel_shape
            self._stride = stride
            self._use_batch_norm = use_batch_norm
            self._activation_fn = activation_fn
            self._use_bias = use_bias
            self.name = name
            self.conv3d = nn.Conv3d(in_channels=in_channels, out_channels=self._output_channels,
                                    kernel_size=self._kernel_shape, stride=self._stride,
                                    padding=0, bias=self._use_bias)
            if self._use_batch_norm:
                self.bn = nn.BatchNorm3d(self._output_channels, eps=0.001, momentum=0.01)

        def compute_pad(self, dim, s):
            if s % self._stride[dim] == 0:
                return max(self._kernel_shape[dim] - self._stride[dim], 0)
            else:
                return max(self._kernel_shape[dim] - (s % self._stride[dim]), 0)

        def forward(self, x):
            (batch, channel, t, h, w) = x.size()
            pad_t = self.compute_pad(0, t)
            pad_h = self.compute_pad(1, h)
            pad_w = self.compute_pad(2, w)
            pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2,
                   pad_t // 2, pad_t - pad_t // 2)
            x = F.pad(x, pad)
            x = self.conv3d(x)
            if self._use_batch_norm:
                x = self.bn(x)
            if self._activation_fn is not None:
                x = self._activation_fn(x)
            return x

    class InceptionModule(nn.Module):
        def __init__(self, in_channels, out_channels, name):
            super(InceptionModule, self).__init__()
            self.b0 = Unit3D(in_channels, out_channels[0], kernel_shape=[1, 1, 1],
                             name=name + "/Branch_0/Conv3d_0a_1x1")
            self.b1a = Unit3D(in_channels, out_channels[1], kernel_shape=[1, 1, 1],
                              name=name + "/Branch_1/Conv3d_0a_1x1")
            self.b1b = Unit3D(out_channels[1], out_channels[2], kernel_shape=[3, 3, 3],
                              name=name + "/Branch_1/Conv3d_0b_3x3")
            self.b3a = MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(1, 1, 1), padding=0)
            self.b3b = Unit3D(in_channels, out_channels[3], kernel_shape=[1, 1, 1],
                              name=name + "/Branch_3/Conv3d_0b_1x1")

        def forward(self, x):
            b0 = self.b0(x)
            b1 = self.b1b(self.b1a(x))
            b3 = self.b3b(self.b3a(x))
            return torch.cat([b0, b1, b3], dim=1)

    class I3D(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.Conv3d_1a_7x7 = Unit3D(3, 4, kernel_shape=[7, 7, 7], stride=(2, 2, 2))
            self.MaxPool3d_2a_3x3 = MaxPool3dSamePadding(kernel_size=[1, 3, 3], stride=(1, 2, 2),
                                                         padding=0)
            self.Mixed_3b = InceptionModule(4, [2, 2, 4, 2], "Mixed_3b")
            self.avg_pool = nn.AvgPool3d(kernel_size=[1, 3, 3], stride=(1, 1, 1))
            self.dropout = nn.Dropout(0.0)
            self.logits = Unit3D(8, num_classes, kernel_shape=[1, 1, 1], activation_fn=None,
                                 use_batch_norm=False, use_bias=True, name="logits")

        def forward(self, x):
            x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
            x = self.Mixed_3b(x)
            x = self.logits(self.dropout(self.avg_pool(x)))
            logits = x.squeeze(3).squeeze(3)  # (B, classes, T)
            return logits

    return I3D()


def i3d_train(lib, init):
    F = lib.nn.functional
    model = start(lib, i3d, init)
    # inflate a 2-D stem (ImageNet-style weights) into the 3-D one: repeat over time, / T
    w2d = lib.tensor(draw(4, 3, 7, 7, seed=40))
    with lib.no_grad():
        model.Conv3d_1a_7x7.conv3d.weight.copy_(w2d.unsqueeze(2).repeat(1, 1, 7, 1, 1) / 7)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-7)
    sched = lib.optim.lr_scheduler.MultiStepLR(opt, [1])
    inputs = lib.tensor(draw(2, 3, 6, 9, 10, seed=41))
    labels = lib.tensor(draw(2, 3, seed=42, kind="rand") > 0.5).to(lib.float64)
    rec = []
    for _ in range(2):
        opt.zero_grad()
        per_frame_logits = model(inputs)
        t = inputs.size(2)
        per_frame_logits = F.interpolate(per_frame_logits, t, mode="linear", align_corners=True)
        per_frame_labels = labels.unsqueeze(2).expand(-1, -1, t)
        loc_loss = F.binary_cross_entropy_with_logits(per_frame_logits, per_frame_labels)
        cls_loss = F.binary_cross_entropy_with_logits(torch_max(lib, per_frame_logits),
                                                      labels)
        loss = (0.5 * loc_loss + 0.5 * cls_loss) / 2
        loss.backward()
        rec.append({"loss": loss, "logits": per_frame_logits, "g": grads(model)})
        opt.step()
        sched.step()
    return {"train": rec, "state": dict(model.state_dict())}


def torch_max(lib, x):
    return lib.max(x, dim=2)[0]


def test_i3d_same_padding_and_inflated_weights_match_pytorch():
    both(i3d_train, initial_state(i3d))


# --- 10. TSM temporal shift (in-place slice writes) and SlowFast lateral connections ---------
def temporal_shift(lib, x, n_segment, fold_div=4):
    nt, c, h, w = x.size()
    n_batch = nt // n_segment
    x = x.view(n_batch, n_segment, c, h, w)
    fold = c // fold_div
    out = lib.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
    out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]  # shift right
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # not shift
    return out.view(nt, c, h, w)


def tsm_and_slowfast(lib, init):
    torch, F = lib, lib.nn.functional
    mods = start(lib, slowfast_parts, init)
    frames = lib.tensor(draw(2, 8, 3, 6, 6, seed=43))  # (B, T, C, H, W)
    # TSM: frames folded into the batch, 2-D convolutions with a shift before each
    b, t, c, h, w = frames.shape
    x = frames.reshape(b * t, c, h, w)
    x = mods.tsm_conv(temporal_shift(lib, F.relu(mods.stem(x)), t))
    tsm_logits = x.mean(dim=(2, 3)).view(b, t, -1).mean(dim=1)
    # SlowFast: the fast pathway sees every frame, the slow one every alpha-th
    clip = frames.permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
    alpha = 4
    index = torch.linspace(0, clip.shape[2] - 1, clip.shape[2] // alpha).long()
    slow = torch.index_select(clip, 2, index)
    fast = F.relu(mods.fast(clip))
    slow = F.relu(mods.slow(slow))
    lateral = mods.lateral(fast)  # (5, 1, 1) kernel, temporal stride alpha
    slow = torch.cat([slow, lateral], dim=1)
    pooled = [F.adaptive_avg_pool3d(p, 1).flatten(1) for p in (slow, fast)]
    logits = mods.head(torch.cat(pooled, dim=1)) + tsm_logits
    loss = F.cross_entropy(logits, lib.tensor([0, 2]))
    loss.backward()
    return {"loss": loss, "logits": logits, "g": grads(mods), "index": index}


def slowfast_parts(lib):
    nn = lib.nn
    return nn.ModuleDict({
        "stem": nn.Conv2d(3, 4, 3, padding=1), "tsm_conv": nn.Conv2d(4, 3, 3, padding=1),
        "slow": nn.Conv3d(3, 4, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        "fast": nn.Conv3d(3, 2, kernel_size=(5, 3, 3), padding=(2, 1, 1)),
        "lateral": nn.Conv3d(2, 4, kernel_size=(5, 1, 1), stride=(4, 1, 1), padding=(2, 0, 0),
                             bias=False),
        "head": nn.Linear(10, 3)})


def test_temporal_shift_and_slowfast_lateral_match_pytorch():
    both(tsm_and_slowfast, initial_state(slowfast_parts))


# --- 11. 3D-GAN (Wu et al.) on voxels with a WGAN-GP gradient penalty (double backward) -----
def gan3d(lib):
    nn = lib.nn

    class Generator(nn.Module):
        def __init__(self, z_dim=4):
            super().__init__()
            self.z_dim = z_dim
            self.main = nn.Sequential(
                nn.ConvTranspose3d(z_dim, 8, kernel_size=4, stride=2, padding=0, bias=False),
                nn.BatchNorm3d(8), nn.ReLU(True),
                nn.ConvTranspose3d(8, 1, kernel_size=4, stride=2, padding=1, bias=False),
                nn.Sigmoid())

        def forward(self, z):
            return self.main(z.view(-1, self.z_dim, 1, 1, 1))

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(
                nn.Conv3d(1, 4, kernel_size=4, stride=2, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv3d(4, 8, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(2, 8), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv3d(8, 1, kernel_size=2, stride=1, padding=0))

        def forward(self, x):
            return self.main(x).view(-1)

    return nn.ModuleDict({"G": Generator(), "D": Discriminator()})


def gan3d_train(lib, init):
    torch = lib
    nets = start(lib, gan3d, init)
    G, D = nets["G"], nets["D"]
    opt_g = lib.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = lib.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    real = lib.tensor((draw(2, 1, 8, 8, 8, seed=44, kind="rand") > 0.5).astype(np.float64))
    z = lib.tensor(draw(2, 4, seed=45))
    eps = lib.tensor(draw(2, 1, 1, 1, 1, seed=46, kind="rand"))
    rec = []
    for _ in range(2):
        fake = G(z)
        opt_d.zero_grad()
        interp = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
        d_interp = D(interp)
        gradients = torch.autograd.grad(outputs=d_interp, inputs=interp,
                                        grad_outputs=torch.ones_like(d_interp),
                                        create_graph=True, retain_graph=True)[0]
        gradients = gradients.view(gradients.size(0), -1)
        gp = ((gradients.norm(2, dim=1) - 1) ** 2).mean()
        d_loss = D(fake.detach()).mean() - D(real).mean() + 10 * gp
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = -D(fake).mean()
        g_loss.backward()
        opt_g.step()
        rec.append({"d": d_loss, "gp": gp, "g": g_loss, "gD": grads(D), "gG": grads(G)})
    return {"train": rec, "state": dict(nets.state_dict())}


def test_voxel_gan_gradient_penalty_matches_pytorch():
    both(gan3d_train, initial_state(gan3d))


# --- 12. losses on volumes, norms, LPPool3d, Tensor.unfold, fan computation -----------------
def volume_losses(lib):
    F = lib.nn.functional
    logits = lib.tensor(draw(2, 3, 3, 4, 5, seed=47), requires_grad=True)
    target = draw(2, 3, 4, 5, seed=48, kind="randint", high=3)
    target[0, 0, :2] = 255
    target = lib.tensor(target)
    w = lib.tensor([1.0, 2.0, 0.5], dtype=lib.float64)
    losses = [F.cross_entropy(logits, target, ignore_index=255),
              F.cross_entropy(logits, target, weight=w, ignore_index=255, label_smoothing=0.2),
              F.cross_entropy(logits, target, ignore_index=255, reduction="sum",
                              label_smoothing=0.1),
              F.nll_loss(F.log_softmax(logits, 1), target, weight=w, ignore_index=255),
              F.cross_entropy(logits, F.softmax(lib.tensor(draw(2, 3, 3, 4, 5, seed=49)), 1),
                              label_smoothing=0.1)]
    none = F.cross_entropy(logits, target, weight=w, ignore_index=255, reduction="none")
    total = sum(losses) + (none * lib.tensor(draw(2, 3, 4, 5, seed=50))).sum()
    total.backward()
    return {"losses": losses, "none": none, "g": logits.grad}


def test_cross_entropy_on_volumes_with_ignore_index_matches_pytorch():
    both(volume_losses)


def norms_and_pools(lib, init):
    nn = lib.nn
    mods = start(lib, norm_layers, init)
    x = lib.tensor(draw(2, 4, 3, 4, 5, seed=51), requires_grad=True)
    outs = []
    for _ in range(2):
        mods.train()
        outs.append([mods["gn"](x), mods["bn"](x), mods["inr"](x), mods["bnc"](x)])
    mods.eval()
    outs.append([mods["gn"](x), mods["bn"](x), mods["inr"](x), mods["bnc"](x)])
    lp = nn.LPPool3d(2, kernel_size=2, stride=(1, 2, 2))
    outs.append([lp(x.abs() + 0.1)])
    sum((o * o).sum() for row in outs for o in row).backward()
    return {"outs": outs, "g": x.grad, "state": dict(mods.state_dict()), "gp": grads(mods)}


def norm_layers(lib):
    nn = lib.nn
    return nn.ModuleDict({
        "gn": nn.GroupNorm(2, 4), "bn": nn.BatchNorm3d(4, momentum=None),
        "inr": nn.InstanceNorm3d(4, affine=True, track_running_stats=True),
        "bnc": nn.BatchNorm3d(4, affine=False, momentum=0.3)})


def test_volume_norms_train_eval_and_lppool3d_match_pytorch():
    both(norms_and_pools, initial_state(norm_layers))


def patches_and_fans(lib):
    nn = lib.nn
    x = lib.tensor(draw(1, 2, 6, 6, 6, seed=52), requires_grad=True)
    # 3-D patches (as for patch-based training on large volumes) with Tensor.unfold
    p = x.unfold(2, 4, 2).unfold(3, 4, 2).unfold(4, 4, 2)  # (1, 2, 2, 2, 2, 4, 4, 4)
    patches = p.contiguous().view(1, 2, -1, 4, 4, 4).permute(0, 2, 1, 3, 4, 5)
    (patches * lib.tensor(draw(*patches.shape, seed=53))).sum().backward()
    conv = nn.Conv3d(3, 5, (2, 3, 4))
    convt = nn.ConvTranspose3d(3, 5, (2, 3, 4), groups=1)
    fans = [nn.init._calculate_fan_in_and_fan_out(conv.weight),
            nn.init._calculate_fan_in_and_fan_out(convt.weight),
            nn.init._calculate_correct_fan(conv.weight, "fan_out")]
    return {"patches": patches, "g": x.grad, "fans": fans, "shape": list(p.shape)}


def test_volume_patches_and_conv3d_fans_match_pytorch():
    both(patches_and_fans)


# --- 13. per-clip gradients with torch.func ------------------------------------------------
def per_clip_grads(lib, init):
    from_func = lib.func
    F = lib.nn.functional
    model = start(lib, c3d, init)
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    clips = lib.tensor(draw(3, 3, 4, 8, 8, seed=60))
    labels = lib.tensor(draw(3, seed=61, kind="randint", high=3))

    def compute_loss(params, clip, label):
        logits = from_func.functional_call(model, params, (clip.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    per_sample = from_func.vmap(from_func.grad(compute_loss), in_dims=(None, 0, 0))(
        params, clips, labels)
    return per_sample


def test_per_clip_gradients_with_vmap_match_pytorch():
    both(per_clip_grads, initial_state(c3d))



# --- 14. VoxelMorph (voxelmorph/torch): spatial transformer, scaling and squaring, NCC -------
def voxelmorph(lib, int_steps=3):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class SpatialTransformer(nn.Module):
        """N-D Spatial Transformer"""

        def __init__(self, size, mode="bilinear"):
            super().__init__()
            self.mode = mode
            # create sampling grid
            vectors = [torch.arange(0, s) for s in size]
            grids = torch.meshgrid(vectors, indexing="ij")
            grid = torch.stack(grids)
            grid = torch.unsqueeze(grid, 0)
            grid = grid.type(torch.FloatTensor)
            self.register_buffer("grid", grid, persistent=False)

        def forward(self, src, flow):
            # new locations
            new_locs = self.grid.to(flow.dtype) + flow
            shape = flow.shape[2:]
            # need to normalize grid values to [-1, 1] for resampler
            for i in range(len(shape)):
                new_locs[:, i, ...] = 2 * (new_locs[:, i, ...] / (shape[i] - 1) - 0.5)
            # move channels dim to last position; also not sure why, but the channels need
            # to be reversed
            if len(shape) == 2:
                new_locs = new_locs.permute(0, 2, 3, 1)
                new_locs = new_locs[..., [1, 0]]
            elif len(shape) == 3:
                new_locs = new_locs.permute(0, 2, 3, 4, 1)
                new_locs = new_locs[..., [2, 1, 0]]
            return F.grid_sample(src, new_locs, align_corners=True, mode=self.mode)

    class VecInt(nn.Module):
        """Integrates a vector field via scaling and squaring."""

        def __init__(self, inshape, nsteps):
            super().__init__()
            assert nsteps >= 0, "nsteps should be >= 0, found: %d" % nsteps
            self.nsteps = nsteps
            self.scale = 1.0 / (2 ** self.nsteps)
            self.transformer = SpatialTransformer(inshape)

        def forward(self, vec):
            vec = vec * self.scale
            for _ in range(self.nsteps):
                vec = vec + self.transformer(vec, vec)
            return vec

    class ResizeTransform(nn.Module):
        def __init__(self, vel_resize, ndims):
            super().__init__()
            self.factor = 1.0 / vel_resize
            self.mode = "linear"
            if ndims == 2:
                self.mode = "bi" + self.mode
            elif ndims == 3:
                self.mode = "tri" + self.mode

        def forward(self, x):
            if self.factor < 1:
                # resize first to save memory
                x = F.interpolate(x, align_corners=True, scale_factor=self.factor,
                                  mode=self.mode)
                x = self.factor * x
            elif self.factor > 1:
                # multiply first to save memory
                x = self.factor * x
                x = F.interpolate(x, align_corners=True, scale_factor=self.factor,
                                  mode=self.mode)
            return x

    class ConvBlock(nn.Module):
        def __init__(self, ndims, in_channels, out_channels, stride=1):
            super().__init__()
            Conv = getattr(nn, "Conv%dd" % ndims)
            self.main = Conv(in_channels, out_channels, 3, stride, 1)
            self.activation = nn.LeakyReLU(0.2)

        def forward(self, x):
            out = self.main(x)
            out = self.activation(out)
            return out

    class VxmDense(nn.Module):
        def __init__(self, inshape, int_steps=7, int_downsize=2):
            super().__init__()
            ndims = len(inshape)
            self.enc = nn.ModuleList([ConvBlock(ndims, 2, 4, 2), ConvBlock(ndims, 4, 4, 1)])
            self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
            self.dec = ConvBlock(ndims, 4 + 2, 4)
            Conv = getattr(nn, "Conv%dd" % ndims)
            self.flow = Conv(4, ndims, kernel_size=3, padding=1)
            # init flow layer with small weights and bias
            self.flow.weight = nn.Parameter(torch.distributions.Normal(0, 1e-5).sample(
                self.flow.weight.shape))
            self.flow.bias = nn.Parameter(torch.zeros(self.flow.bias.shape))
            self.resize = ResizeTransform(int_downsize, ndims)
            self.fullsize = ResizeTransform(1 / int_downsize, ndims)
            down_shape = [int(dim / int_downsize) for dim in inshape]
            self.integrate = VecInt(down_shape, int_steps)
            self.transformer = SpatialTransformer(inshape)

        def forward(self, source, target, registration=False):
            x = torch.cat([source, target], dim=1)
            skip = x
            for layer in self.enc:
                x = layer(x)
            x = self.upsample(x)
            x = torch.cat([x, skip], dim=1)
            x = self.dec(x)
            flow_field = self.flow(x) * 100  # the small init scaled up for the test
            pos_flow = self.resize(flow_field)
            preint_flow = pos_flow
            pos_flow = self.integrate(pos_flow)
            pos_flow = self.fullsize(pos_flow)
            y_source = self.transformer(source, pos_flow)
            return (y_source, preint_flow) if not registration else (y_source, pos_flow)

    return VxmDense((8, 8, 8), int_steps=int_steps)


class NCC:
    """Local (over window) normalized cross correlation loss."""

    def __init__(self, lib, win=None):
        self.lib = lib
        self.win = win

    def loss(self, y_true, y_pred):
        torch, F = self.lib, self.lib.nn.functional
        Ii = y_true
        Ji = y_pred
        ndims = len(list(Ii.size())) - 2
        assert ndims in [1, 2, 3], "volumes should be 1 to 3 dimensions. found: %d" % ndims
        win = [9] * ndims if self.win is None else self.win
        sum_filt = torch.ones([1, 1, *win]).to(Ii.dtype)
        pad_no = win[0] // 2
        if ndims == 1:
            stride = (1)
            padding = (pad_no)
        elif ndims == 2:
            stride = (1, 1)
            padding = (pad_no, pad_no)
        else:
            stride = (1, 1, 1)
            padding = (pad_no, pad_no, pad_no)
        conv_fn = getattr(F, "conv%dd" % ndims)
        I2 = Ii * Ii
        J2 = Ji * Ji
        IJ = Ii * Ji
        I_sum = conv_fn(Ii, sum_filt, stride=stride, padding=padding)
        J_sum = conv_fn(Ji, sum_filt, stride=stride, padding=padding)
        I2_sum = conv_fn(I2, sum_filt, stride=stride, padding=padding)
        J2_sum = conv_fn(J2, sum_filt, stride=stride, padding=padding)
        IJ_sum = conv_fn(IJ, sum_filt, stride=stride, padding=padding)
        win_size = np.prod(win)
        u_I = I_sum / win_size
        u_J = J_sum / win_size
        cross = IJ_sum - u_J * I_sum - u_I * J_sum + u_I * u_J * win_size
        I_var = I2_sum - 2 * u_I * I_sum + u_I * u_I * win_size
        J_var = J2_sum - 2 * u_J * J_sum + u_J * u_J * win_size
        cc = cross * cross / (I_var * J_var + 1e-5)
        return -torch.mean(cc)


class Grad:
    """N-D gradient loss."""

    def __init__(self, lib, penalty="l1", loss_mult=None):
        self.lib = lib
        self.penalty = penalty
        self.loss_mult = loss_mult

    def loss(self, _, y_pred):
        dy = self.lib.abs(y_pred[:, :, 1:, :, :] - y_pred[:, :, :-1, :, :])
        dx = self.lib.abs(y_pred[:, :, :, 1:, :] - y_pred[:, :, :, :-1, :])
        dz = self.lib.abs(y_pred[:, :, :, :, 1:] - y_pred[:, :, :, :, :-1])
        if self.penalty == "l2":
            dy = dy * dy
            dx = dx * dx
            dz = dz * dz
        d = self.lib.mean(dx) + self.lib.mean(dy) + self.lib.mean(dz)
        grad = d / 3.0
        if self.loss_mult is not None:
            grad *= self.loss_mult
        return grad


def voxelmorph_train(lib, init):
    model = start(lib, voxelmorph, init)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    moving = lib.tensor(draw(1, 1, 8, 8, 8, seed=70, kind="rand"))
    fixed = lib.tensor(draw(1, 1, 8, 8, 8, seed=71, kind="rand"))
    losses = [NCC(lib, win=[5, 5, 5]).loss, Grad(lib, "l2", loss_mult=2).loss]
    weights = [1, 0.01]
    rec = []
    for _ in range(2):
        y_pred = model(moving, fixed)
        loss = 0
        loss_list = []
        for n, loss_function in enumerate(losses):
            curr_loss = loss_function(fixed, y_pred[n]) * weights[n]
            loss_list.append(curr_loss.item())
            loss += curr_loss
        opt.zero_grad()
        loss.backward()
        rec.append({"losses": loss_list, "moved": y_pred[0], "g": grads(model)})
        opt.step()
    with lib.no_grad():
        moved, warp = model(moving, fixed, registration=True)
    return {"train": rec, "warp": warp, "moved": moved}


def test_voxelmorph_registration_matches_pytorch():
    init = initial_state(voxelmorph)
    init["flow.weight"] = draw(*init["flow.weight"].shape, seed=72) * 1e-2
    both(voxelmorph_train, init)


# --- 15. nnU-Net-style deep supervision with DC + CE, and sliding-window inference ----------
def softmax_helper_dim1(lib, x):
    return lib.softmax(x, 1)


def get_tp_fp_fn_tn(lib, net_output, gt, axes=None, mask=None, square=False):
    torch = lib
    if axes is None:
        axes = tuple(range(2, net_output.ndim))
    with torch.no_grad():
        if net_output.ndim != gt.ndim:
            gt = gt.view((gt.shape[0], 1, *gt.shape[1:]))
        if net_output.shape == gt.shape:
            # if this is the case then gt is probably already a one hot encoding
            y_onehot = gt
        else:
            y_onehot = torch.zeros(net_output.shape, device=net_output.device,
                                   dtype=net_output.dtype)
            y_onehot.scatter_(1, gt.long(), 1)
    tp = net_output * y_onehot
    fp = net_output * (1 - y_onehot)
    fn = (1 - net_output) * y_onehot
    tn = (1 - net_output) * (1 - y_onehot)
    if square:
        tp = tp ** 2
        fp = fp ** 2
        fn = fn ** 2
        tn = tn ** 2
    if len(axes) > 0:
        tp = tp.sum(dim=axes, keepdim=False)
        fp = fp.sum(dim=axes, keepdim=False)
        fn = fn.sum(dim=axes, keepdim=False)
        tn = tn.sum(dim=axes, keepdim=False)
    return tp, fp, fn, tn


class SoftDiceLoss:
    def __init__(self, lib, batch_dice=False, do_bg=True, smooth=1.0):
        self.lib, self.batch_dice, self.do_bg, self.smooth = lib, batch_dice, do_bg, smooth

    def __call__(self, x, y):
        shp_x = x.shape
        if self.batch_dice:
            axes = [0] + list(range(2, len(shp_x)))
        else:
            axes = list(range(2, len(shp_x)))
        x = softmax_helper_dim1(self.lib, x)
        tp, fp, fn, _ = get_tp_fp_fn_tn(self.lib, x, y, axes)
        nominator = 2 * tp
        denominator = 2 * tp + fp + fn
        dc = (nominator + self.smooth) / (self.lib.clip(denominator + self.smooth, 1e-8))
        if not self.do_bg:
            if self.batch_dice:
                dc = dc[1:]
            else:
                dc = dc[:, 1:]
        dc = dc.mean()
        return -dc


def dc_and_ce(lib, net_output, target):
    ce = lib.nn.CrossEntropyLoss()
    dc = SoftDiceLoss(lib, batch_dice=True, do_bg=False, smooth=1e-5)
    dc_loss = dc(net_output, target)
    ce_loss = ce(net_output, target[:, 0].long())
    return ce_loss + dc_loss


def deep_supervision(lib, init):
    F = lib.nn.functional
    model = start(lib, unet3d, init, "in", "transpose", False)
    opt = lib.optim.SGD(model.parameters(), lr=1e-2, weight_decay=3e-5, momentum=0.99,
                        nesterov=True)
    x = lib.tensor(draw(2, 1, 8, 8, 8, seed=80))
    target = lib.tensor(draw(2, 1, 8, 8, 8, seed=81, kind="randint", high=3))
    weights = np.array([1 / (2 ** i) for i in range(3)])
    weights = weights / weights.sum()
    rec = []
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        outputs = [out, F.avg_pool3d(out, 2), F.avg_pool3d(out, 4)]
        targets = [target] + [F.interpolate(target.float().to(out.dtype), scale_factor=s,
                                            mode="nearest").long() for s in (0.5, 0.25)]
        loss = sum(weights[i] * dc_and_ce(lib, outputs[i], targets[i])
                   for i in range(len(outputs)))
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 12)
        opt.step()
        rec.append({"loss": loss, "g": grads(model)})
    return {"train": rec, "infer": sliding_window(lib, model, lib.tensor(
        draw(1, 1, 10, 9, 12, seed=82)), roi=(8, 8, 8), overlap=0.5)}


def gaussian_map(lib, roi, sigma_scale=0.125):
    torch = lib
    axes = []
    for s in roi:
        c = (s - 1) / 2
        r = torch.arange(s, dtype=torch.float64)
        axes.append(torch.exp(-((r - c) ** 2) / (2 * (s * sigma_scale) ** 2)))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / torch.max(g)
    return g.clamp(min=g[g > 0].min())


def sliding_window(lib, model, image, roi, overlap):
    """MONAI-style: pad to the window, visit overlapping windows, blend with a Gaussian."""
    torch, F = lib, lib.nn.functional
    model.eval()
    shape = image.shape[2:]
    pad = []
    for k in range(len(shape) - 1, -1, -1):
        diff = max(roi[k] - shape[k], 0)
        half = diff // 2
        pad.extend([half, diff - half])
    image = F.pad(image, pad=pad, mode="constant", value=0)
    shape = image.shape[2:]
    steps = []
    for s, r in zip(shape, roi):
        step = max(int(r * (1 - overlap)), 1)
        n = int(np.ceil((s - r) / step)) + 1
        steps.append(sorted({min(i * step, s - r) for i in range(n)}))
    importance = gaussian_map(lib, roi)
    out = torch.zeros((1, 3, *shape), dtype=image.dtype)
    count = torch.zeros((1, 1, *shape), dtype=image.dtype)
    with torch.no_grad():
        for d in steps[0]:
            for h in steps[1]:
                for w in steps[2]:
                    sl = (slice(None), slice(None), slice(d, d + roi[0]), slice(h, h + roi[1]),
                          slice(w, w + roi[2]))
                    pred = torch.softmax(model(image[sl]), dim=1)
                    out[sl] += pred * importance
                    count[sl] += importance
    return out / count


def test_deep_supervision_dc_ce_and_sliding_window_match_pytorch():
    both(deep_supervision, initial_state(unet3d, "in", "transpose", False))


# --- 16. the 3-D layers as printed and as configured -----------------------------------------
def layers_3d(lib):
    nn = lib.nn
    return [nn.MaxPool3d([1, 3, 3], stride=(1, 2, 2), padding=0),
            nn.MaxPool3d(2, return_indices=True, ceil_mode=True),
            nn.AvgPool3d([1, 2, 2], stride=(1, 1, 1)),
            nn.AvgPool3d(3, 2, 1, ceil_mode=True, count_include_pad=False, divisor_override=4),
            nn.MaxUnpool3d(2), nn.MaxUnpool3d((1, 2, 2), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.MaxUnpool2d(2, stride=1), nn.MaxUnpool1d(3, 2, 1),
            nn.AdaptiveAvgPool3d((1, None, None)), nn.AdaptiveMaxPool3d(2, return_indices=True),
            nn.Upsample(scale_factor=(1, 2, 2)),
            nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=True),
            nn.LPPool3d(2, 3), nn.LPPool3d(1.5, (1, 2, 2), stride=1, ceil_mode=True),
            nn.Conv3d(4, 8, [3, 3, 3], stride=[1, 2, 2], padding=[1, 1, 1], bias=False),
            nn.Conv3d(4, 8, (1, 3, 3), padding=(0, 1, 1), padding_mode="replicate"),
            nn.Conv3d(4, 8, 3, padding="same", dilation=2, groups=4),
            nn.ConvTranspose3d(4, 8, (1, 4, 4), (1, 2, 2), (0, 1, 1), output_padding=(0, 1, 1),
                               groups=2),
            nn.BatchNorm3d(4, eps=1e-3, momentum=0.01),
            nn.InstanceNorm3d(4, affine=True, track_running_stats=True),
            nn.Dropout3d(0.2), nn.PReLU(8), nn.ReflectionPad3d((1, 0, 1, 0, 1, 0)),
            nn.ConstantPad3d(2, 3.5), nn.ZeroPad3d((1, 2, 3, 4, 5, 6)), nn.CircularPad3d(1)]


def test_3d_layers_print_and_configure_as_pytorch():
    for theirs, ours in zip(layers_3d(torch), layers_3d(ng)):
        assert plain_repr(ours) == repr(theirs)
        for name in ("kernel_size", "stride", "padding", "dilation", "output_size"):
            if hasattr(theirs, name):
                assert getattr(ours, name) == getattr(theirs, name), (theirs, name)


# --- 17. a video clip pipeline on uint8 frames; integer average pooling ---------------------
def clip_pipeline(lib):
    F = lib.nn.functional
    frames = (draw(6, 10, 12, 3, seed=90, kind="rand") * 256).astype(np.uint8)  # T H W C
    video = lib.from_numpy(frames)
    idx = lib.linspace(0, video.shape[0] - 1, 4).long()
    clip = video.index_select(0, idx).permute(3, 0, 1, 2)  # C T H W
    small = F.interpolate(clip[None], size=(4, 5, 6), mode="nearest")
    x = clip.float().div(255)
    # float32 statistics: nodegrad does not promote float32 with float64 (documented)
    mean = lib.tensor([0.43216, 0.394666, 0.37645], dtype=lib.float32)
    std = lib.tensor([0.22803, 0.22145, 0.216989], dtype=lib.float32)
    x = (x - mean[:, None, None, None]) / std[:, None, None, None]
    x = lib.flip(x[:, :, 1:9, 2:10], dims=[-1])
    y = F.interpolate(x[None], size=(4, 7, 7), mode="trilinear", align_corners=False)
    dtypes = [str(t.dtype).split(".")[-1] for t in (small, x, y)]
    return {"idx": idx, "small": small, "dtypes": dtypes, "x": x, "y": y,
            "sum": clip.sum(dim=(1, 2, 3))}


def test_uint8_video_clip_pipeline_matches_pytorch():
    got = both(clip_pipeline, tol=1e-6)
    assert got["dtypes"] == ["uint8", "float32", "float32"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
@pytest.mark.parametrize("kw", [{"kernel_size": 2},
                                {"kernel_size": 7, "stride": 1, "padding": 3,
                                 "count_include_pad": False},
                                {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}])
def test_integer_average_pooling_does_not_wrap_around(dtype, kw):
    # PyTorch pools int64 only; narrower integers (uint8 masks and frames) give the same
    # truncated means here, summed wide before narrowing
    a = (draw(1, 2, 7, 8, 9, seed=91, kind="rand") * 250).astype(dtype)
    want = torch.nn.functional.avg_pool3d(torch.tensor(a.astype(np.int64)), **kw).numpy()
    got = ng.nn.functional.avg_pool3d(ng.tensor(a), **kw)
    assert got.dtype == ng.tensor(a).dtype
    np.testing.assert_array_equal(got.numpy(), want.astype(dtype))
    got2 = ng.nn.functional.avg_pool2d(ng.tensor(a[0]), **kw)
    want2 = torch.nn.functional.avg_pool2d(torch.tensor(a[0].astype(np.int64)), **kw).numpy()
    np.testing.assert_array_equal(got2.numpy(), want2.astype(dtype))



def test_dropout2d_and_dropout3d_of_other_ranks_warn_and_drop_as_pytorch():
    # 3-D networks that reuse nn.Dropout2d: PyTorch warns and drops whole (N, C) slices
    x = draw(2, 8, 3, 4, 4, seed=100)
    for lib in (torch, ng):
        assert_same(arr(lib.nn.Dropout2d(0.5).eval()(lib.tensor(x))), x)
        with pytest.warns(UserWarning, match="dropout2d"):
            y = arr(lib.nn.functional.dropout2d(lib.tensor(x), 0.5))
        kept = y.reshape(16, -1) != 0
        assert all(row.all() or not row.any() for row in kept)
        np.testing.assert_allclose(y[y != 0], 2 * x[y != 0])
        with pytest.warns(UserWarning, match="dropout3d"):
            z = arr(lib.nn.functional.dropout3d(lib.tensor(x[0, :, :, 0]), 0.5))  # (C, D)
        assert all(row.all() or not row.any() for row in z != 0)
    with pytest.raises(ng.errors.ShapeError, match="dropout1d"):
        ng.nn.functional.dropout1d(ng.tensor(x), 0.5)

# --- 18. activation checkpointing through a 3-D U-Net with BatchNorm -------------------------
def checkpointed_unet3d(lib, init, use_reentrant):
    cp = lib.utils.checkpoint
    model = start(lib, unet3d, init, "bn", "transpose", False)
    x = lib.tensor(draw(2, 1, 8, 8, 8, seed=1))
    e1 = cp.checkpoint(model.enc1, x, use_reentrant=use_reentrant)
    e2 = cp.checkpoint(lambda t: model.enc2(model.pool(t)), e1, use_reentrant=use_reentrant)
    e3 = cp.checkpoint_sequential(model.enc3.block, 2, model.pool(e2),
                                  use_reentrant=use_reentrant)
    out = model.final_conv(model.dec1(e1, model.dec2(e2, e3)))
    out.square().mean().backward()
    return {"out": out, "g": grads(model), "state": dict(model.state_dict())}


def test_checkpointed_unet3d_matches_pytorch():
    init = initial_state(unet3d, "bn", "transpose", False)
    got = both(checkpointed_unet3d, init, False)
    # the reentrant kind: PyTorch leaves the first block's weights without gradients when the
    # block's input does not require grad; nodegrad computes the same gradients for both kinds
    # (documented), so they match the non-reentrant run
    assert_same(checkpointed_unet3d(ng, init, True), got)


# --- 19. Video Swin Transformer: 3-D shifted windows, attention masks, relative bias --------
def window_partition(x, window_size):
    B, D, H, W, C = x.shape
    x = x.view(B, D // window_size[0], window_size[0], H // window_size[1], window_size[1],
               W // window_size[2], window_size[2], C)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, reduce_mul(window_size),
                                                                   C)
    return windows


def window_reverse(windows, window_size, B, D, H, W):
    x = windows.view(B, D // window_size[0], H // window_size[1], W // window_size[2],
                     window_size[0], window_size[1], window_size[2], -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(B, D, H, W, -1)
    return x


def reduce_mul(t):
    out = 1
    for v in t:
        out *= v
    return out


def compute_mask(lib, D, H, W, window_size, shift_size):
    img_mask = lib.zeros((1, D, H, W, 1))
    cnt = 0
    for d in slice(-window_size[0]), slice(-window_size[0], -shift_size[0]), \
            slice(-shift_size[0], None):
        for h in slice(-window_size[1]), slice(-window_size[1], -shift_size[1]), \
                slice(-shift_size[1], None):
            for w in slice(-window_size[2]), slice(-window_size[2], -shift_size[2]), \
                    slice(-shift_size[2], None):
                img_mask[:, d, h, w, :] = cnt
                cnt += 1
    mask_windows = window_partition(img_mask, window_size)
    mask_windows = mask_windows.squeeze(-1)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(
        attn_mask == 0, float(0.0))
    return attn_mask


def video_swin(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class WindowAttention3D(nn.Module):
        def __init__(self, dim, window_size, num_heads, qkv_bias=False, qk_scale=None):
            super().__init__()
            self.dim = dim
            self.window_size = window_size  # Wd, Wh, Ww
            self.num_heads = num_heads
            head_dim = dim // num_heads
            self.scale = qk_scale or head_dim ** -0.5
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1)
                            * (2 * window_size[2] - 1), num_heads))
            coords_d = torch.arange(self.window_size[0])
            coords_h = torch.arange(self.window_size[1])
            coords_w = torch.arange(self.window_size[2])
            coords = torch.stack(torch.meshgrid(coords_d, coords_h, coords_w, indexing="ij"))
            coords_flatten = torch.flatten(coords, 1)
            relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
            relative_coords = relative_coords.permute(1, 2, 0).contiguous()
            relative_coords[:, :, 0] += self.window_size[0] - 1
            relative_coords[:, :, 1] += self.window_size[1] - 1
            relative_coords[:, :, 2] += self.window_size[2] - 1
            relative_coords[:, :, 0] *= (2 * self.window_size[1] - 1) * (
                2 * self.window_size[2] - 1)
            relative_coords[:, :, 1] *= (2 * self.window_size[2] - 1)
            relative_position_index = relative_coords.sum(-1)
            self.register_buffer("relative_position_index", relative_position_index)
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)
            nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)
            self.softmax = nn.Softmax(dim=-1)

        def forward(self, x, mask=None):
            B_, N, C = x.shape
            qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads,
                                      C // self.num_heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            relative_position_bias = self.relative_position_bias_table[
                self.relative_position_index[:N, :N].reshape(-1)].reshape(N, N, -1)
            relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
            attn = attn + relative_position_bias.unsqueeze(0)
            if mask is not None:
                nW = mask.shape[0]
                attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + \
                    mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, N, N)
                attn = self.softmax(attn)
            else:
                attn = self.softmax(attn)
            x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
            return self.proj(x)

    class SwinTransformerBlock3D(nn.Module):
        def __init__(self, dim, num_heads, window_size=(2, 2, 2), shift_size=(0, 0, 0)):
            super().__init__()
            self.window_size, self.shift_size = window_size, shift_size
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention3D(dim, window_size=self.window_size,
                                          num_heads=num_heads, qkv_bias=True)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x, mask_matrix):
            B, D, H, W, C = x.shape
            window_size, shift_size = self.window_size, self.shift_size
            shortcut = x
            x = self.norm1(x)
            # pad feature maps to multiples of window size
            pad_l = pad_t = pad_d0 = 0
            pad_d1 = (window_size[0] - D % window_size[0]) % window_size[0]
            pad_b = (window_size[1] - H % window_size[1]) % window_size[1]
            pad_r = (window_size[2] - W % window_size[2]) % window_size[2]
            x = F.pad(x, (0, 0, pad_l, pad_r, pad_t, pad_b, pad_d0, pad_d1))
            _, Dp, Hp, Wp, _ = x.shape
            if any(i > 0 for i in shift_size):
                shifted_x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1],
                                                  -shift_size[2]), dims=(1, 2, 3))
                attn_mask = mask_matrix
            else:
                shifted_x = x
                attn_mask = None
            x_windows = window_partition(shifted_x, window_size)
            attn_windows = self.attn(x_windows, mask=attn_mask)
            attn_windows = attn_windows.view(-1, *(window_size + (C,)))
            shifted_x = window_reverse(attn_windows, window_size, B, Dp, Hp, Wp)
            if any(i > 0 for i in shift_size):
                x = torch.roll(shifted_x, shifts=(shift_size[0], shift_size[1], shift_size[2]),
                               dims=(1, 2, 3))
            else:
                x = shifted_x
            if pad_d1 > 0 or pad_r > 0 or pad_b > 0:
                x = x[:, :D, :H, :W, :].contiguous()
            x = shortcut + x
            return x + self.mlp(self.norm2(x))

    class PatchMerging(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
            self.norm = nn.LayerNorm(4 * dim)

        def forward(self, x):
            B, D, H, W, C = x.shape
            pad_input = (H % 2 == 1) or (W % 2 == 1)
            if pad_input:
                x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            x0 = x[:, :, 0::2, 0::2, :]
            x1 = x[:, :, 1::2, 0::2, :]
            x2 = x[:, :, 0::2, 1::2, :]
            x3 = x[:, :, 1::2, 1::2, :]
            x = torch.cat([x0, x1, x2, x3], -1)
            return self.reduction(self.norm(x))

    class VideoSwin(nn.Module):
        def __init__(self, dim=8, num_classes=3):
            super().__init__()
            self.patch_embed = nn.Conv3d(3, dim, kernel_size=(2, 2, 2), stride=(2, 2, 2))
            self.window_size, self.shift = (2, 2, 2), (1, 1, 1)
            self.blocks = nn.ModuleList([
                SwinTransformerBlock3D(dim, 2, self.window_size, (0, 0, 0)),
                SwinTransformerBlock3D(dim, 2, self.window_size, self.shift)])
            self.downsample = PatchMerging(dim)
            self.norm = nn.LayerNorm(2 * dim)
            self.head = nn.Linear(2 * dim, num_classes)

        def forward(self, x):
            x = self.patch_embed(x)  # B C D H W
            B, C, D, H, W = x.shape
            x = x.permute(0, 2, 3, 4, 1)  # b c d h w -> b d h w c
            Dp = int(np.ceil(D / self.window_size[0])) * self.window_size[0]
            Hp = int(np.ceil(H / self.window_size[1])) * self.window_size[1]
            Wp = int(np.ceil(W / self.window_size[2])) * self.window_size[2]
            attn_mask = compute_mask(lib, Dp, Hp, Wp, self.window_size, self.shift)
            for blk in self.blocks:
                x = blk(x, attn_mask)
            x = self.downsample(x)
            x = self.norm(x)
            x = x.permute(0, 4, 1, 2, 3)  # b d h w c -> b c d h w
            x = F.adaptive_avg_pool3d(x, 1).flatten(1)
            return self.head(x)

    return VideoSwin()


def video_swin_train(lib, init):
    F = lib.nn.functional
    model = start(lib, video_swin, init)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or "relative_position_bias_table" in name else decay).append(p)
    opt = lib.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                           {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    clips = lib.tensor(draw(2, 3, 6, 10, 8, seed=95))
    labels = lib.tensor(draw(2, seed=96, kind="randint", high=3))
    rec = []
    for _ in range(2):
        opt.zero_grad()
        logits = model(clips)
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
        loss.backward()
        rec.append({"loss": loss, "logits": logits, "g": grads(model)})
        opt.step()
    mask = compute_mask(lib, 4, 4, 4, (2, 2, 2), (1, 1, 1))
    return {"train": rec, "state": dict(model.state_dict()), "mask": mask}


def test_video_swin_shifted_window_attention_matches_pytorch():
    both(video_swin_train, initial_state(video_swin))


# --- 20. spectral and weight normalisation on 3-D (transposed) convolutions ------------------
def normalised_convs(lib, kind):
    nn = lib.nn
    if kind == "old":
        SN, WN = nn.utils.spectral_norm, nn.utils.weight_norm
    else:
        SN, WN = nn.utils.parametrizations.spectral_norm, nn.utils.parametrizations.weight_norm
    return nn.Sequential(SN(nn.Conv3d(2, 4, 3, padding=1)), nn.LeakyReLU(0.2),
                         SN(nn.ConvTranspose3d(4, 3, 2, stride=2)),
                         WN(nn.Conv3d(3, 2, (1, 3, 3), padding=(0, 1, 1)), dim=0),
                         WN(nn.ConvTranspose3d(2, 2, 1), dim=1))


def normalised_train(lib, init, kind):
    model = start(lib, normalised_convs, init, kind)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    x = lib.tensor(draw(2, 2, 3, 4, 4, seed=99))
    rec = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        rec.append({"loss": loss, "g": grads(model)})
    model.eval()
    with lib.no_grad():
        out = model(x)
    return {"train": rec, "state": dict(model.state_dict()), "eval": out}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["old", "new"])
def test_spectral_and_weight_norm_on_3d_convs_match_pytorch(kind):
    both(normalised_train, initial_state(normalised_convs, kind), kind)


def test_memory_format_of_another_rank_is_refused_as_pytorch():
    x4, x5 = draw(4, 3, 4, 5, seed=97), draw(2, 4, 3, 4, 5, seed=98)
    for lib in (torch, ng):
        a, b = lib.tensor(x4), lib.tensor(x5)
        with pytest.raises((RuntimeError, ValueError), match="rank|needs a 5-d"):
            a.to(memory_format=lib.channels_last_3d)
        with pytest.raises((RuntimeError, ValueError), match="rank|needs a 4-d"):
            b.contiguous(memory_format=lib.channels_last)
        assert not a.is_contiguous(memory_format=lib.channels_last_3d)
        assert not b.is_contiguous(memory_format=lib.channels_last)
