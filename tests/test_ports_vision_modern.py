"""Modern PyTorch vision programs, ported by changing only the imports.

A timm-style Vision Transformer, MobileNetV2's inverted residuals, ConvNeXt blocks, the ImageNet
training recipe's pieces (mixup, cutmix, label smoothing, AdamW groups without decay on norms and
biases, warmup + cosine through LambdaLR, gradient accumulation, an EMA of the weights, top-k
accuracy) and test-time pieces (interpolation, a spatial transformer, flips, reflect padding).
Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``); both runs
start from PyTorch's seeded initial weights and see the same data, with every random draw
(Beta lambdas, permutations, crop boxes) made once in NumPy and fed to both, so their records
agree in float64 to ~1e-10.
"""

from __future__ import annotations

import copy
import math
import re
from functools import partial

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, accuracy, arrays, assert_same  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10


def initial_state(build, **kw) -> dict[str, np.ndarray]:
    """PyTorch's seeded initial weights of ``build(torch)`` as float64 NumPy arrays."""
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in build(torch, **kw).double().state_dict().items()}


def start(lib, build, init, **kw):
    """``build(lib)`` in float64 holding the weights ``init``, loaded as a user would."""
    model = build(lib, **kw).to(lib.float64)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def both(fn, *args, **kw):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref)
    return got, ref


def images(n: int = 32, c: int = 1, size: int = 8, classes: int = 10, seed: int = 0):
    """Random images whose class is visible in them (a bright patch), and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, c, size, size)) * 0.5
    for i, k in enumerate(y):
        r, s = divmod(int(k) % (size * size // 4), size // 2)
        x[i, :, r % size, (2 * s) % size] += 2.0
    return x, y.astype(np.int64)


# --- 1. a Vision Transformer, as timm writes it ------------------------------------------------
def vit(lib, depth: int = 2, drop_path_rate: float = 0.0, attn: str = "qkv",
        grad_checkpointing: bool = False, img_size: int = 8):
    torch, nn, F = lib, lib.nn, lib.nn.functional
    Final = torch.jit.Final
    checkpoint = torch.utils.checkpoint.checkpoint
    mha = attn == "mha"
    trunc_normal_ = nn.init.trunc_normal_

    def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
        if drop_prob == 0.0 or not training:
            return x
        keep_prob = 1 - drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
        if keep_prob > 0.0 and scale_by_keep:
            random_tensor.div_(keep_prob)
        return x * random_tensor

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
            super().__init__()
            self.drop_prob = drop_prob
            self.scale_by_keep = scale_by_keep

        def forward(self, x):
            return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

        def extra_repr(self):
            return f"drop_prob={round(self.drop_prob, 3):0.3f}"

    class PatchEmbed(nn.Module):
        def __init__(self, img_size=8, patch_size=2, in_chans=1, embed_dim=16):
            super().__init__()
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)  # BCHW -> BNC

    class Attention(nn.Module):
        fused_attn: Final[bool]

        def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0):
            super().__init__()
            self.num_heads = num_heads
            head_dim = dim // num_heads
            self.scale = head_dim ** -0.5
            self.fused_attn = attn == "sdpa"
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.attn_drop = nn.Dropout(attn_drop)
            self.proj = nn.Linear(dim, dim)
            self.proj_drop = nn.Dropout(proj_drop)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
            qkv = qkv.permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            if self.fused_attn:
                x = F.scaled_dot_product_attention(
                    q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
            else:
                attn = (q @ k.transpose(-2, -1)) * self.scale
                attn = attn.softmax(dim=-1)
                attn = self.attn_drop(attn)
                x = attn @ v
            x = x.transpose(1, 2).reshape(B, N, C)
            x = self.proj(x)
            return self.proj_drop(x)

    class Mlp(nn.Module):
        def __init__(self, in_features, hidden_features=None, act_layer=nn.GELU, drop=0.0):
            super().__init__()
            hidden_features = hidden_features or in_features
            self.fc1 = nn.Linear(in_features, hidden_features)
            self.act = act_layer()
            self.fc2 = nn.Linear(hidden_features, in_features)
            self.drop = nn.Dropout(drop)

        def forward(self, x):
            return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    class Block(nn.Module):
        def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, drop_path=0.0,
                     norm_layer=nn.LayerNorm):
            super().__init__()
            self.norm1 = norm_layer(dim)
            if mha:
                self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
            else:
                self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
            self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

        def forward(self, x):
            if mha:
                y = self.norm1(x)
                x = x + self.drop_path(self.attn(y, y, y, need_weights=False)[0])
            else:
                x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))

    class VisionTransformer(nn.Module):
        def __init__(self, img_size=img_size, patch_size=2, in_chans=1, num_classes=10,
                     embed_dim=16,
                     depth=depth, num_heads=2, mlp_ratio=2.0, qkv_bias=True, drop_rate=0.0,
                     drop_path_rate=drop_path_rate, norm_layer=None):
            super().__init__()
            norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
            self.num_features = self.embed_dim = embed_dim
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            num_patches = self.patch_embed.num_patches
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
            self.pos_drop = nn.Dropout(p=drop_rate)
            self.grad_checkpointing = grad_checkpointing
            dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
            self.blocks = nn.Sequential(*[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], norm_layer)
                for i in range(depth)])
            self.norm = norm_layer(embed_dim)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 \
                else nn.Identity()
            trunc_normal_(self.pos_embed, std=0.02)
            trunc_normal_(self.cls_token, std=0.02)
            self.apply(self._init_weights)

        def _init_weights(self, m):
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)

        @torch.jit.ignore
        def no_weight_decay(self):
            return {"pos_embed", "cls_token"}

        def forward_features(self, x):
            B = x.shape[0]
            x = self.patch_embed(x)
            cls_tokens = self.cls_token.expand(B, -1, -1)
            x = torch.cat((cls_tokens, x), dim=1)
            x = self.pos_drop(x + self.pos_embed)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                for blk in self.blocks:
                    x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = self.blocks(x)
            return self.norm(x)[:, 0]

        def forward(self, x):
            return self.head(self.forward_features(x))

    return VisionTransformer()


def param_groups_weight_decay(model, weight_decay=1e-5, no_weight_decay_list=()):
    """timm's: no decay on biases, norms (1-D parameters) and the listed names."""
    no_weight_decay_list = set(no_weight_decay_list)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def warmup_cosine(warmup: int, total: int):
    def lr_lambda(step):
        if step < warmup:
            return float(step + 1) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr_lambda


class ModelEma:
    """An exponential moving average of a model's weights (timm's ModelEmaV2, as a loop)."""

    def __init__(self, model, decay: float = 0.9):
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.decay = decay

    def update(self, torch, model):
        d = self.decay
        with torch.no_grad():
            for p_ema, p in zip(self.module.parameters(), model.parameters()):
                p_ema.mul_(d).add_(p, alpha=1 - d)
            for b_ema, b in zip(self.module.buffers(), model.buffers()):
                b_ema.copy_(b)


def vit_script(torch, init, attn="qkv", steps=8, accum=2, **kw):
    optim = torch.optim
    X, Y = images(steps * accum * 4)
    X, Y = torch.tensor(X), torch.tensor(Y)
    lams = np.random.default_rng(1).beta(0.8, 0.8, steps * accum)
    perms = [np.random.default_rng(2 + i).permutation(4) for i in range(steps * accum)]
    model = start(torch, vit, init, attn=attn, **kw)
    ema = ModelEma(model, decay=0.8)
    skip = model.no_weight_decay()
    groups = param_groups_weight_decay(model, 0.05, skip)
    opt = optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.999))
    sched = optim.lr_scheduler.LambdaLR(opt, warmup_cosine(3, steps))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    out = {"loss": [], "lr": [], "norm": []}
    model.train()
    opt.zero_grad()
    for i in range(steps * accum):
        xb, yb = X[4 * i:4 * i + 4], Y[4 * i:4 * i + 4]
        index = torch.tensor(perms[i])  # torch.randperm(4) in the original
        lam = float(lams[i])
        mixed = lam * xb + (1 - lam) * xb[index, :]
        pred = model(mixed)
        loss = lam * criterion(pred, yb) + (1 - lam) * criterion(pred, yb[index])
        (loss / accum).backward()
        if (i + 1) % accum == 0:
            out["norm"].append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            ema.update(torch, model)
            out["lr"].append([g["lr"] for g in opt.param_groups])
        out["loss"].append(loss.item())
    model.eval()
    with torch.inference_mode():
        logits = model(X[:32])
        ema_logits = ema.module(X[:32])
        top1, top5 = accuracy(torch, logits, Y[:32], topk=(1, 5))
        assert not logits.requires_grad
    out["logits"], out["ema_logits"] = logits.numpy(), ema_logits.numpy()
    out["acc"] = [top1.item(), top5.item()]
    out["weights"] = arrays(model.state_dict())
    out["ema"] = arrays(ema.module.state_dict())
    out["groups"] = [len(g["params"]) for g in opt.param_groups]
    return out


@pytest.mark.parametrize("attn, kw", [("qkv", {}), ("mha", {}),
                                      ("sdpa", {"grad_checkpointing": True})],
                         ids=["qkv", "mha", "sdpa-checkpointed"])
def test_vit_mixup_label_smoothing_adamw_groups_warmup_cosine_ema_matches_pytorch(attn, kw):
    got, ref = both(vit_script, initial_state(vit, attn=attn), attn=attn, **kw)
    assert got["groups"] == ref["groups"]
    assert sum(got["groups"]) == len(list(vit(ng, attn=attn).parameters()))


def test_vit_init_matches_pytorchs_statistics():
    ng.manual_seed(0)
    model = vit(ng, depth=4)
    w = model.blocks[0].mlp.fc1.weight.detach().numpy()
    assert abs(w.std() - 0.02) < 0.004 and np.abs(w).max() <= 2.0  # truncated at |x| <= 2
    assert not model.blocks[0].mlp.fc1.bias.detach().numpy().any()
    assert (model.norm.weight.detach().numpy() == 1).all() and model.norm.eps == 1e-6
    assert model.cls_token.shape == (1, 1, 16) and model.pos_embed.shape == (1, 17, 16)


def test_vit_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    init = initial_state(vit, drop_path_rate=0.3)
    x = images(6)[0]
    plain = {lib: start(lib, vit, init).eval() for lib in (ng, torch)}
    dropped = {lib: start(lib, vit, init, drop_path_rate=0.3).eval() for lib in (ng, torch)}
    for lib in (ng, torch):
        with lib.inference_mode():
            a = dropped[lib](lib.tensor(x)).numpy()
            b = plain[lib](lib.tensor(x)).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert_same(plain[ng](ng.tensor(x)).detach().numpy(),
                plain[torch](torch.tensor(x)).detach().numpy())
    assert repr(dropped[ng].blocks[1].drop_path) == "DropPath(drop_prob=0.300)"
    model = dropped[ng].train()
    ng.manual_seed(0)
    path = model.blocks[1].drop_path
    h = ng.ones(64, 3, 2, dtype=ng.float64)
    out = path(h).numpy()
    kept = out[:, 0, 0] != 0
    assert 0.1 < 1 - kept.mean() < 0.6
    np.testing.assert_allclose(out[kept], 1 / 0.7)  # whole samples kept and rescaled
    assert not out[~kept].any()


# --- 2. MobileNetV2 and ConvNeXt ----------------------------------------------------------------
def mobilenet_v2(lib, dropout: float = 0.0):
    torch, nn = lib, lib.nn

    class ConvBNReLU(nn.Sequential):
        def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
            padding = (kernel_size - 1) // 2
            super().__init__(
                nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups,
                          bias=False),
                nn.BatchNorm2d(out_planes),
                nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            self.stride = stride
            assert stride in [1, 2]
            hidden_dim = int(round(inp * expand_ratio))
            self.use_res_connect = self.stride == 1 and inp == oup
            layers = []
            if expand_ratio != 1:
                layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
            layers.extend([
                ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup)])
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            if self.use_res_connect:
                return x + self.conv(x)
            return self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes=10, width=8):
            super().__init__()
            setting = [[1, 8, 1, 1], [4, 12, 2, 2], [4, 16, 1, 1]]  # t, c, n, s
            features = [ConvBNReLU(1, width, stride=1)]
            input_channel = width
            for t, c, n, s in setting:
                for i in range(n):
                    stride = s if i == 0 else 1
                    features.append(InvertedResidual(input_channel, c, stride, expand_ratio=t))
                    input_channel = c
            features.append(ConvBNReLU(input_channel, 24, kernel_size=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(24, num_classes))
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
            x = torch.flatten(x, 1)
            return self.classifier(x)

    model = MobileNetV2()
    model.pool = nn.AdaptiveAvgPool2d(1)  # the module form, used by the features check
    return model


def mobilenet_script(torch, init, steps=6):
    F, optim = torch.nn.functional, torch.optim
    X, Y = images(steps * 8, size=8)
    X, Y = torch.tensor(X), torch.tensor(Y)
    model = start(torch, mobilenet_v2, init)
    model_ema = copy.deepcopy(model).eval()
    for p in model_ema.parameters():
        p.requires_grad_(False)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                    weight_decay=4e-5)
    out = {"loss": []}
    for i in range(steps):
        model.train()
        xb, yb = X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]
        loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
        with torch.no_grad():  # timm's ModelEmaV3 update, over the state dict
            decay = min(0.9, (1 + i) / (10 + i))
            for ema_v, model_v in zip(model_ema.state_dict().values(),
                                      model.state_dict().values()):
                if ema_v.is_floating_point():
                    ema_v.lerp_(model_v.to(dtype=ema_v.dtype), weight=1. - decay)
                else:
                    ema_v.copy_(model_v)
    model.eval()
    with torch.inference_mode():
        out["logits"] = model(X[:16]).numpy()
        out["ema_logits"] = model_ema(X[:16]).numpy()
        out["pooled"] = model.pool(model.features(X[:4])).flatten(1).numpy()
    out["weights"] = arrays(model.state_dict())
    out["ema"] = arrays(model_ema.state_dict())
    assert int(model_ema.features[0][1].num_batches_tracked) == steps
    return out


def test_mobilenet_v2_inverted_residuals_depthwise_relu6_matches_pytorch():
    both(mobilenet_script, initial_state(mobilenet_v2))


def convnext(lib, layer_scale_init_value: float = 0.5, head_init_scale: float = 1.0):
    torch, nn, F = lib, lib.nn, lib.nn.functional
    trunc_normal_ = nn.init.trunc_normal_

    class LayerNorm(nn.Module):
        """LayerNorm over channels_last (B, H, W, C) or channels_first (B, C, H, W) input."""

        def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(normalized_shape))
            self.bias = nn.Parameter(torch.zeros(normalized_shape))
            self.eps = eps
            self.data_format = data_format
            if self.data_format not in ["channels_last", "channels_first"]:
                raise NotImplementedError
            self.normalized_shape = (normalized_shape, )

        def forward(self, x):
            if self.data_format == "channels_last":
                return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + self.eps)
            return self.weight[:, None, None] * x + self.bias[:, None, None]

    class Block(nn.Module):
        def __init__(self, dim, layer_scale_init_value=1e-6):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
            self.norm = LayerNorm(dim, eps=1e-6)
            self.pwconv1 = nn.Linear(dim, 4 * dim)
            self.act = nn.GELU()
            self.pwconv2 = nn.Linear(4 * dim, dim)
            self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim),
                                      requires_grad=True) if layer_scale_init_value > 0 else None
            self.drop_path = nn.Identity()

        def forward(self, x):
            input = x
            x = self.dwconv(x)
            x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            x = self.norm(x)
            x = self.pwconv1(x)
            x = self.act(x)
            x = self.pwconv2(x)
            if self.gamma is not None:
                x = self.gamma * x
            x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
            return input + self.drop_path(x)

    class ConvNeXt(nn.Module):
        def __init__(self, in_chans=1, num_classes=10, depths=(1, 1), dims=(8, 16)):
            super().__init__()
            self.downsample_layers = nn.ModuleList()
            stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=2, stride=2),
                                 LayerNorm(dims[0], eps=1e-6, data_format="channels_first"))
            self.downsample_layers.append(stem)
            for i in range(len(dims) - 1):
                self.downsample_layers.append(nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
            self.stages = nn.ModuleList()
            for i in range(len(dims)):
                self.stages.append(nn.Sequential(*[
                    Block(dims[i], layer_scale_init_value) for _ in range(depths[i])]))
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes)
            self.apply(self._init_weights)
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

        def _init_weights(self, m):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.2)
                nn.init.constant_(m.bias, 0)

        def forward(self, x):
            for i in range(len(self.stages)):
                x = self.downsample_layers[i](x)
                x = self.stages[i](x)
            return self.head(self.norm(x.mean([-2, -1])))

    return ConvNeXt()


def convnext_script(torch, init, steps=6):
    F, optim = torch.nn.functional, torch.optim
    X, Y = images(steps * 8, size=8)
    X, Y = torch.tensor(X), torch.tensor(Y)
    model = start(torch, convnext, init)
    opt = optim.AdamW(param_groups_weight_decay(model, 0.05), lr=4e-3)
    out = {"loss": [], "gamma": []}
    for i in range(steps):
        xb, yb = X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]
        if i % 2:
            loss = F.cross_entropy(model(xb), yb)
        else:  # timm's BinaryCrossEntropy with smoothing (the ResNet strikes back recipe)
            x = model(xb)
            num_classes = x.shape[-1]
            off_value = 0.1 / num_classes
            on_value = 1. - 0.1 + off_value
            target = yb.long().view(-1, 1)
            target = torch.full((target.size()[0], num_classes), off_value, device=x.device,
                                dtype=x.dtype).scatter_(1, target, on_value)
            target = target.gt(0.2).to(dtype=target.dtype)  # target_threshold=0.2
            loss = F.binary_cross_entropy_with_logits(x, target, reduction="sum") / x.shape[0]
        opt.zero_grad()
        loss.backward()
        out["gamma"].append(model.stages[1][0].gamma.grad.numpy().copy())
        opt.step()
        out["loss"].append(loss.item())
    out["weights"] = arrays(model.state_dict())
    return out


def test_convnext_blocks_channels_last_layernorm_layer_scale_matches_pytorch():
    both(convnext_script, initial_state(convnext))


# --- 3. the training recipe's pieces -----------------------------------------------------------
def one_hot(torch, x, num_classes, on_value=1.0, off_value=0.0):
    x = x.long().view(-1, 1)
    return torch.full((x.size()[0], num_classes), off_value, device=x.device).scatter_(
        1, x, on_value)


def mixup_target(torch, target, num_classes, lam=1.0, smoothing=0.0):
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    y1 = one_hot(torch, target, num_classes, on_value=on_value, off_value=off_value)
    y2 = one_hot(torch, target.flip(0), num_classes, on_value=on_value, off_value=off_value)
    return y1 * lam + y2 * (1.0 - lam)


def rand_bbox(size, lam, cx, cy):
    """CutMix's box (the reference code's), its centre given instead of drawn."""
    W = size[2]
    H = size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w = int(W * cut_rat)
    cut_h = int(H * cut_rat)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def soft_target_cross_entropy(torch, x, target):
    loss = torch.sum(-target * torch.nn.functional.log_softmax(x, dim=-1), dim=-1)
    return loss.mean()


def label_smoothing_cross_entropy(torch, x, target, smoothing=0.1):
    confidence = 1.0 - smoothing
    logprobs = torch.nn.functional.log_softmax(x, dim=-1)
    nll_loss = -logprobs.gather(dim=-1, index=target.unsqueeze(1))
    nll_loss = nll_loss.squeeze(1)
    smooth_loss = -logprobs.mean(dim=-1)
    loss = confidence * nll_loss + smoothing * smooth_loss
    return loss.mean()


def recipe_script(torch, init, steps=6):
    """CutMix (the reference code's and timm's), timm's flipped-batch mixup with soft targets,
    three label-smoothing losses, AdamW groups, warmup + cosine, gradient accumulation."""
    F, optim = torch.nn.functional, torch.optim
    X, Y = images(steps * 8, size=8)
    X, Y = torch.tensor(X), torch.tensor(Y)
    rng = np.random.default_rng(3)
    lams, centres = rng.beta(1.0, 1.0, steps), rng.integers(0, 8, (steps, 2))
    perms = [rng.permutation(8) for _ in range(steps)]
    model = start(torch, vit, init, depth=1)
    opt = optim.AdamW(param_groups_weight_decay(model, 0.05, model.no_weight_decay()), lr=5e-3)
    sched = optim.lr_scheduler.LambdaLR(opt, warmup_cosine(2, steps))
    out = {"loss": [], "lam": [], "targets": [], "lr": []}
    for i in range(steps):
        x, target = X[8 * i:8 * i + 8].clone(), Y[8 * i:8 * i + 8]
        lam = float(lams[i])
        if i % 3 == 0:  # the CutMix paper's code
            rand_index = torch.tensor(perms[i])
            bbx1, bby1, bbx2, bby2 = rand_bbox(x.size(), lam, *centres[i])
            x[:, :, bbx1:bbx2, bby1:bby2] = x[rand_index, :, bbx1:bbx2, bby1:bby2]
            lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (x.size()[-1] * x.size()[-2]))
            output = model(x)
            loss = F.cross_entropy(output, target) * lam + \
                F.cross_entropy(output, target[rand_index]) * (1.0 - lam)
            out["targets"].append(np.zeros((8, 10)))
        elif i % 3 == 1:  # timm's Mixup: the flipped batch, soft targets with smoothing
            x_flipped = x.flip(0).mul_(1.0 - lam)
            x.mul_(lam).add_(x_flipped)
            soft = mixup_target(torch, target, 10, lam, smoothing=0.1)
            loss = soft_target_cross_entropy(torch, model(x), soft)
            loss2 = F.cross_entropy(model(x), soft)  # probabilities as the target
            assert abs(loss.item() - loss2.item()) < 1e-6
            out["targets"].append(soft.numpy())
        else:  # timm's cutmix: a box from the flipped batch, smoothed hard labels
            (yl, xl), h = centres[i] // 2, 4
            x[:, :, yl:yl + h, xl:xl + h] = x.flip(0)[:, :, yl:yl + h, xl:xl + h]
            lam = 1.0 - h * h / 64
            output = model(x)
            loss = label_smoothing_cross_entropy(torch, output, target) * lam + \
                F.cross_entropy(output, target.flip(0), label_smoothing=0.1) * (1 - lam)
            out["targets"].append(np.zeros((8, 10)))
        (loss / 2).backward()
        if i % 2 == 1:
            opt.step()
            opt.zero_grad()
        sched.step()
        out["loss"].append(loss.item())
        out["lam"].append(lam)
        out["lr"].append(sched.get_last_lr())
    out["weights"] = arrays(model.state_dict())
    return out


@pytest.fixture
def float64_default():
    """float64 as both libraries' default dtype, as a float64 experiment sets it."""
    before = torch.get_default_dtype(), ng.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)
    yield
    torch.set_default_dtype(before[0])
    ng.set_default_dtype(before[1])


def test_cutmix_mixup_soft_targets_and_label_smoothing_losses_match_pytorch(float64_default):
    both(recipe_script, initial_state(vit, depth=1))


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_topk_accuracy_and_one_hot_targets(lib):
    logits = lib.tensor([[0.1, 0.9, 0.0, 0.3], [0.8, 0.1, 0.05, 0.2], [0.0, 0.1, 0.2, 0.7]])
    target = lib.tensor([1, 3, 0])
    top1, top3 = accuracy(lib, logits, target, topk=(1, 3))
    assert top1.shape == (1,) and top1.dtype == lib.float32
    assert top1.item() == pytest.approx(100 / 3) and top3.item() == pytest.approx(200 / 3)
    soft = mixup_target(lib, target, 4, lam=0.7, smoothing=0.2)
    assert soft.dtype == lib.float32
    np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(soft.numpy()[0], [0.29, 0.61, 0.05, 0.05], rtol=1e-6)


def test_float32_soft_targets_with_float64_logits_raise_as_documented():
    # timm's one_hot fills in the default dtype; PyTorch promotes float32 * float64 silently,
    # nodegrad refuses (a documented difference): float64 runs set the default dtype
    soft = mixup_target(ng, ng.tensor([1, 0]), 3, lam=0.5)
    logits = ng.zeros(2, 3, dtype=ng.float64)
    with pytest.raises(ng.DTypeError, match="float32 and float64"):
        soft_target_cross_entropy(ng, logits, soft)
    loss = soft_target_cross_entropy(ng, logits, soft.double())
    assert loss.dtype == ng.float64 and loss.item() == pytest.approx(math.log(3))


# --- 4. test-time pieces: interpolation, a spatial transformer, flips, padding -----------------
def stn(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, kernel_size=3, padding=1)
            self.fc = nn.Linear(4 * 4 * 4, 10)
            self.localization = nn.Sequential(
                nn.Conv2d(1, 4, kernel_size=3), nn.MaxPool2d(2, stride=2), nn.ReLU(True))
            self.fc_loc = nn.Sequential(nn.Linear(4 * 3 * 3, 8), nn.ReLU(True), nn.Linear(8, 6))
            nn.init.normal_(self.fc_loc[2].weight.data, 0, 1e-2)
            self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))

        def stn(self, x, align_corners):
            xs = self.localization(x)
            xs = xs.view(-1, 4 * 3 * 3)
            theta = self.fc_loc(xs)
            theta = theta.view(-1, 2, 3)
            grid = F.affine_grid(theta, x.size(), align_corners=align_corners)
            return F.grid_sample(x, grid, align_corners=align_corners)

        def forward(self, x, align_corners=False):
            x = self.stn(x, align_corners)
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            return self.fc(x.view(-1, 4 * 4 * 4))

    return Net()


def stn_script(torch, init, steps=4):
    F, optim = torch.nn.functional, torch.optim
    X, Y = images(steps * 8 + 8, size=8)
    X, Y = torch.tensor(X), torch.tensor(Y)
    model = start(torch, stn, init)
    opt = optim.SGD(model.parameters(), lr=0.05)
    out = {"loss": [], "theta": []}
    for i in range(steps):
        xb, yb = X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]
        opt.zero_grad()
        loss = F.nll_loss(F.log_softmax(model(xb, align_corners=i % 2 == 1), dim=1), yb)
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
    model.eval()
    x = X[-8:]
    with torch.no_grad():
        for ac in (False, True):
            out["theta"].append(model.stn(x, ac).numpy())
        # test-time augmentation: the mean over a flip and two rescalings
        probs = F.softmax(model(x), dim=1) + F.softmax(model(torch.flip(x, dims=[3])), dim=1)
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        down = F.interpolate(up, size=(8, 8), mode="bilinear", align_corners=True)
        probs += F.softmax(model(down), dim=1)
        near = F.interpolate(F.interpolate(x, size=(12, 12), mode="nearest"), size=x.shape[-2:])
        probs += F.softmax(model(near), dim=1)
        out["tta"] = (probs / 4).numpy()
    out["weights"] = arrays(model.state_dict())
    return out


def test_spatial_transformer_and_test_time_augmentation_match_pytorch():
    both(stn_script, initial_state(stn))


def segmenter(lib):
    nn, F = lib.nn, lib.nn.functional

    class Seg(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.enc = nn.Conv2d(1, 6, 3, stride=2)
            self.mid = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")
            self.cls = nn.Conv2d(6, classes, 1)

        def forward(self, x, mode="bilinear", align_corners=False):
            size = x.shape[-2:]
            h = F.relu(self.enc(F.pad(x, (1, 1, 1, 1), mode="reflect")))
            h = F.relu(self.mid(F.pad(h, (1, 0, 0, 1), mode="replicate")[..., :-1, 1:]))
            h = self.cls(h)
            kw = {} if mode == "nearest" else {"align_corners": align_corners}
            return F.interpolate(h, size=size, mode=mode, **kw)

    return Seg()


def segmenter_script(torch, init, steps=6):
    F, optim = torch.nn.functional, torch.optim
    rng = np.random.default_rng(5)
    X = rng.standard_normal((steps * 4, 1, 8, 8))
    masks = (X[:, 0] > 0.5).astype(np.int64) + (X[:, 0] > 1.2)
    masks[:, :1] = 255  # an unlabelled border row
    X, M = torch.tensor(X), torch.tensor(masks)
    model = start(torch, segmenter, init)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    out = {"loss": [], "pred": []}
    settings = [("bilinear", False), ("bilinear", True), ("nearest", None)]
    for i in range(steps):
        mode, ac = settings[i % 3]
        xb, mb = X[4 * i:4 * i + 4], M[4 * i:4 * i + 4]
        # a padded random crop, its offsets drawn once
        dy, dx = (i * 3) % 5, (i * 7) % 5
        xb = F.pad(xb, (2, 2, 2, 2), mode="reflect")[..., dy:dy + 8, dx:dx + 8]
        mb = F.pad(mb[:, None].float(), (2, 2, 2, 2), mode="replicate")[:, 0, dy:dy + 8,
                                                                           dx:dx + 8].long()
        opt.zero_grad()
        loss = F.cross_entropy(model(xb, mode, ac), mb, ignore_index=255)
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
    with torch.no_grad():
        small = F.interpolate(M[:2, None].float(), scale_factor=0.5, mode="nearest").long()
        out["pred"] = [model(X[:2], *s).argmax(1).numpy() for s in settings] + [small.numpy()]
    out["weights"] = arrays(model.state_dict())
    return out


def test_segmentation_with_reflect_padding_interpolated_logits_and_ignore_index_matches():
    both(segmenter_script, initial_state(segmenter))


# --- 5. fine-tuning at another resolution: resampled position embeddings, layer-wise lr decay ---
def resample_abs_pos_embed(torch, posemb, new_size, old_size=None, num_prefix_tokens=1,
                           interpolation="bicubic", antialias=True):
    """timm's: the position embedding's grid resized by interpolation (in float32)."""
    F = torch.nn.functional
    num_pos_tokens = posemb.shape[1]
    num_new_tokens = new_size[0] * new_size[1] + num_prefix_tokens
    if num_new_tokens == num_pos_tokens and new_size[0] == new_size[1]:
        return posemb
    if old_size is None:
        hw = int(math.sqrt(num_pos_tokens - num_prefix_tokens))
        old_size = hw, hw
    if num_prefix_tokens:
        posemb_prefix, posemb = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    else:
        posemb_prefix, posemb = None, posemb
    embed_dim = posemb.shape[-1]
    orig_dtype = posemb.dtype
    posemb = posemb.float()  # interpolate needs float32
    posemb = posemb.reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2)
    posemb = F.interpolate(posemb, size=new_size, mode=interpolation, antialias=antialias)
    posemb = posemb.permute(0, 2, 3, 1).reshape(1, -1, embed_dim)
    posemb = posemb.to(orig_dtype)
    if posemb_prefix is not None:
        posemb = torch.cat([posemb_prefix, posemb], dim=1)
    return posemb


def interpolate_pos_embed(torch, model, checkpoint_model):
    """MAE's: bicubic, align_corners=False, in the checkpoint's dtype."""
    pos_embed_checkpoint = checkpoint_model["pos_embed"]
    embedding_size = pos_embed_checkpoint.shape[-1]
    num_patches = model.patch_embed.num_patches
    num_extra_tokens = model.pos_embed.shape[-2] - num_patches
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches ** 0.5)
    if orig_size != new_size:
        extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
        pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
        pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size)
        pos_tokens = pos_tokens.permute(0, 3, 1, 2)
        pos_tokens = torch.nn.functional.interpolate(
            pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
        pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
        new_pos_embed = torch.cat((extra_tokens, pos_tokens), dim=1)
        checkpoint_model["pos_embed"] = new_pos_embed


def param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75):
    """MAE's (from BEiT): a group per layer and decay, with the layer's ``lr_scale``."""
    param_groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay, this_decay = "no_decay", 0.0
        else:
            g_decay, this_decay = "decay", weight_decay
        if n in ["cls_token", "pos_embed"] or n.startswith("patch_embed"):
            layer_id = 0
        elif n.startswith("blocks"):
            layer_id = int(n.split(".")[1]) + 1
        else:
            layer_id = num_layers
        group_name = f"layer_{layer_id}_{g_decay}"
        if group_name not in param_groups:
            param_groups[group_name] = {"lr_scale": layer_scales[layer_id],
                                        "weight_decay": this_decay, "params": []}
        param_groups[group_name]["params"].append(p)
    return list(param_groups.values())


def adjust_learning_rate(optimizer, epoch, lr=1e-2, min_lr=1e-4, warmup_epochs=1, epochs=4):
    """MAE's half-cycle cosine after a linear warmup, set by hand on every group."""
    if epoch < warmup_epochs:
        lr = lr * epoch / warmup_epochs
    else:
        lr = min_lr + (lr - min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


def finetune_script(torch, init, new_img, steps=6, accum=2):
    F = torch.nn.functional
    pretrained = start(torch, vit, init)
    checkpoint_model = dict(pretrained.state_dict())
    model = vit(torch, img_size=new_img).to(torch.float64)
    out = {"loss": [], "lr": []}
    if new_img > 8:  # MAE's way, in float64
        interpolate_pos_embed(torch, model, checkpoint_model)
    else:  # timm's way, antialiased, through float32
        checkpoint_model["pos_embed"] = resample_abs_pos_embed(
            torch, checkpoint_model["pos_embed"], (new_img // 2, new_img // 2))
    out["pos_embed"] = checkpoint_model["pos_embed"].numpy()
    for k in ["head.weight", "head.bias"]:
        del checkpoint_model[k]
    msg = model.load_state_dict(checkpoint_model, strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias"} and not msg.unexpected_keys
    torch.nn.init.zeros_(model.head.weight)  # a fresh head, zero as BEiT starts it
    torch.nn.init.constant_(model.head.bias, 0.0)
    groups = param_groups_lrd(model, 0.05, model.no_weight_decay(), layer_decay=0.75)
    opt = torch.optim.AdamW(groups, lr=1e-2)
    X, Y = images(steps * 4, size=new_img, seed=7)
    X, Y = torch.tensor(X), torch.tensor(Y)
    for i in range(steps):
        if i % accum == 0:
            adjust_learning_rate(opt, i / accum + 0.5)
        loss = F.cross_entropy(model(X[4 * i:4 * i + 4]), Y[4 * i:4 * i + 4],
                               label_smoothing=0.1)
        (loss / accum).backward()
        if (i + 1) % accum == 0:
            opt.step()
            opt.zero_grad()
        out["loss"].append(loss.item())
        out["lr"].append([g["lr"] for g in opt.param_groups])
    out["weights"] = arrays(model.state_dict())
    return out


@pytest.mark.parametrize("new_img", [12, 6], ids=["mae-bicubic-up", "timm-antialiased-down"])
def test_finetune_at_another_resolution_with_resampled_pos_embed_and_layer_decay(new_img):
    init = initial_state(vit)
    ref, got = finetune_script(torch, init, new_img), finetune_script(ng, init, new_img)
    tol = TOL if new_img > 8 else 1e-6  # timm resamples in float32
    assert_same(got, ref, tol)


# --- 6. lucidrains' SimpleViT: fixed 2-D sin-cos position embedding, mean pooling ---------------
def simple_vit(lib, image_size=8, patch_size=2, num_classes=10, dim=16, depth=2, heads=2,
               mlp_dim=32, channels=1, dim_head=8):
    torch, nn = lib, lib.nn

    def posemb_sincos_2d(h, w, dim, temperature: int = 10000, dtype=torch.float32):
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        assert (dim % 4) == 0, "feature dimension must be multiple of 4 for sincos emb"
        omega = torch.arange(dim // 4) / (dim // 4 - 1)
        omega = 1.0 / (temperature ** omega)
        y = y.flatten()[:, None] * omega[None, :]
        x = x.flatten()[:, None] * omega[None, :]
        pe = torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)
        return pe.type(dtype)

    class Rearrange(nn.Module):  # einops' 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'
        def __init__(self, p1, p2):
            super().__init__()
            self.p1, self.p2 = p1, p2

        def forward(self, x):
            b, c, H, W = x.shape
            h, w = H // self.p1, W // self.p2
            x = x.reshape(b, c, h, self.p1, w, self.p2).permute(0, 2, 4, 3, 5, 1)
            return x.reshape(b, h * w, self.p1 * self.p2 * c)

    class FeedForward(nn.Module):
        def __init__(self, dim, hidden_dim):
            super().__init__()
            self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(),
                                     nn.Linear(hidden_dim, dim))

        def forward(self, x):
            return self.net(x)

    class Attention(nn.Module):
        def __init__(self, dim, heads=8, dim_head=64):
            super().__init__()
            inner_dim = dim_head * heads
            self.heads = heads
            self.scale = dim_head ** -0.5
            self.norm = nn.LayerNorm(dim)
            self.attend = nn.Softmax(dim=-1)
            self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
            self.to_out = nn.Linear(inner_dim, dim, bias=False)

        def forward(self, x):
            x = self.norm(x)
            qkv = self.to_qkv(x).chunk(3, dim=-1)
            b, n, _ = x.shape
            q, k, v = map(lambda t: t.view(b, n, self.heads, -1).transpose(1, 2), qkv)
            dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            attn = self.attend(dots)
            out = torch.matmul(attn, v)
            out = out.transpose(1, 2).contiguous().view(b, n, -1)
            return self.to_out(out)

    class Transformer(nn.Module):
        def __init__(self, dim, depth, heads, dim_head, mlp_dim):
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.layers = nn.ModuleList([])
            for _ in range(depth):
                self.layers.append(nn.ModuleList([
                    Attention(dim, heads=heads, dim_head=dim_head),
                    FeedForward(dim, mlp_dim)]))

        def forward(self, x):
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return self.norm(x)

    class SimpleViT(nn.Module):
        def __init__(self):
            super().__init__()
            patch_dim = channels * patch_size * patch_size
            self.to_patch_embedding = nn.Sequential(
                Rearrange(patch_size, patch_size), nn.LayerNorm(patch_dim),
                nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
            self.pos_embedding = posemb_sincos_2d(
                h=image_size // patch_size, w=image_size // patch_size, dim=dim)
            self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)
            self.pool = "mean"
            self.to_latent = nn.Identity()
            self.linear_head = nn.Linear(dim, num_classes)

        def forward(self, img):
            device = img.device
            x = self.to_patch_embedding(img)
            x += self.pos_embedding.to(device, dtype=x.dtype)
            x = self.transformer(x)
            x = x.mean(dim=1)
            x = self.to_latent(x)
            return self.linear_head(x)

    return SimpleViT()


def simple_vit_script(torch, init, steps=5):
    F = torch.nn.functional
    model = start(torch, simple_vit, init)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    X, Y = images(steps * 8, seed=9)
    X, Y = torch.tensor(X), torch.tensor(Y)
    out = {"loss": [], "pe": model.pos_embedding.numpy()}
    for i in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(X[8 * i:8 * i + 8]), Y[8 * i:8 * i + 8])
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
    out["weights"] = arrays(model.state_dict())
    return out


def test_lucidrains_simple_vit_with_sincos_embedding_matches_pytorch(float64_default):
    init = initial_state(simple_vit)
    got, _ = both(simple_vit_script, init)
    assert got["pe"].dtype == np.float32 and got["pe"].shape == (16, 16)


# --- 7. a masked autoencoder (MAE): random masking by argsort, gather, mask tokens ----------------
def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
    """MAE's, in NumPy."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])

    def from_grid(embed_dim, pos):
        omega = np.arange(embed_dim // 2, dtype=np.float64)
        omega /= embed_dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([from_grid(embed_dim // 2, grid[0]),
                          from_grid(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def mae(lib, img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2,
        decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0,
        norm_pix_loss=True):
    torch, nn = lib, lib.nn
    Block = vit(lib, depth=1).blocks[0].__class__
    PatchEmbed = vit(lib, depth=1).patch_embed.__class__
    norm_layer = partial(nn.LayerNorm, eps=1e-6)

    class MaskedAutoencoderViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
            num_patches = self.patch_embed.num_patches
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim),
                                          requires_grad=False)  # fixed sin-cos embedding
            self.blocks = nn.ModuleList([
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for i in range(depth)])
            self.norm = norm_layer(embed_dim)
            self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
            self.decoder_pos_embed = nn.Parameter(
                torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
            self.decoder_blocks = nn.ModuleList([
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                      norm_layer=norm_layer) for i in range(decoder_depth)])
            self.decoder_norm = norm_layer(decoder_embed_dim)
            self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
            self.norm_pix_loss = norm_pix_loss
            self.initialize_weights()

        def initialize_weights(self):
            grid = int(self.patch_embed.num_patches ** .5)
            pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid, cls_token=True)
            decoder_pos_embed = get_2d_sincos_pos_embed(
                self.decoder_pos_embed.shape[-1], grid, cls_token=True)
            self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
            self.decoder_pos_embed.data.copy_(
                torch.from_numpy(decoder_pos_embed).float().unsqueeze(0))
            w = self.patch_embed.proj.weight.data
            torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
            torch.nn.init.normal_(self.cls_token, std=.02)
            torch.nn.init.normal_(self.mask_token, std=.02)
            self.apply(self._init_weights)

        def _init_weights(self, m):
            if isinstance(m, nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)

        def patchify(self, imgs):
            p = self.patch_embed.proj.kernel_size[0]
            assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
            h = w = imgs.shape[2] // p
            x = imgs.reshape(shape=(imgs.shape[0], in_chans, h, p, w, p))
            x = torch.einsum("nchpwq->nhwpqc", x)
            return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * in_chans))

        def unpatchify(self, x):
            p = self.patch_embed.proj.kernel_size[0]
            h = w = int(x.shape[1] ** .5)
            assert h * w == x.shape[1]
            x = x.reshape(shape=(x.shape[0], h, w, p, p, in_chans))
            x = torch.einsum("nhwpqc->nchpwq", x)
            return x.reshape(shape=(x.shape[0], in_chans, h * p, h * p))

        def random_masking(self, x, mask_ratio, noise):
            N, L, D = x.shape  # batch, length, dim
            len_keep = int(L * (1 - mask_ratio))
            # noise = torch.rand(N, L, device=x.device) in the original: drawn once, fed in
            ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            ids_keep = ids_shuffle[:, :len_keep]
            x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
            mask = torch.ones([N, L], device=x.device)
            mask[:, :len_keep] = 0
            mask = torch.gather(mask, dim=1, index=ids_restore)
            return x_masked, mask, ids_restore

        def forward_encoder(self, x, mask_ratio, noise):
            x = self.patch_embed(x)
            x = x + self.pos_embed[:, 1:, :]
            x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
            cls_token = self.cls_token + self.pos_embed[:, :1, :]
            cls_tokens = cls_token.expand(x.shape[0], -1, -1)
            x = torch.cat((cls_tokens, x), dim=1)
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x), mask, ids_restore

        def forward_decoder(self, x, ids_restore):
            x = self.decoder_embed(x)
            mask_tokens = self.mask_token.repeat(
                x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
            x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # no cls token
            x_ = torch.gather(x_, dim=1,
                              index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
            x = torch.cat([x[:, :1, :], x_], dim=1)  # append cls token
            x = x + self.decoder_pos_embed
            for blk in self.decoder_blocks:
                x = blk(x)
            x = self.decoder_norm(x)
            x = self.decoder_pred(x)
            return x[:, 1:, :]  # remove cls token

        def forward_loss(self, imgs, pred, mask):
            target = self.patchify(imgs)
            if self.norm_pix_loss:
                mean = target.mean(dim=-1, keepdim=True)
                var = target.var(dim=-1, keepdim=True)
                target = (target - mean) / (var + 1.e-6) ** .5
            loss = (pred - target) ** 2
            loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
            return (loss * mask).sum() / mask.sum()  # mean loss on removed patches

        def forward(self, imgs, noise, mask_ratio=0.75):
            latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
            pred = self.forward_decoder(latent, ids_restore)
            loss = self.forward_loss(imgs, pred, mask)
            return loss, pred, mask

    return MaskedAutoencoderViT()


def mae_script(torch, init, steps=6):
    model = start(torch, mae, init)
    param_groups = param_groups_weight_decay(model, 0.05)
    optimizer = torch.optim.AdamW(param_groups, lr=1e-2, betas=(0.9, 0.95))
    X, _ = images(steps * 4, seed=11)
    X = torch.tensor(X)
    noise = torch.tensor(np.random.default_rng(12).random((steps * 4, 16)))
    out = {"loss": [], "mask": []}
    model.train(True)
    for i in range(steps):
        samples = X[4 * i:4 * i + 4]
        loss, pred, mask = model(samples, noise[4 * i:4 * i + 4], mask_ratio=0.75)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"Loss is {loss_value}, stopping training")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out["loss"].append(loss_value)
        out["mask"].append(mask.numpy())
    with torch.no_grad():
        out["recon"] = model.unpatchify(pred).numpy()
        assert model.unpatchify(model.patchify(samples)).equal(samples)
    out["weights"] = arrays(model.state_dict())
    return out


def test_masked_autoencoder_pretraining_matches_pytorch(float64_default):
    init = initial_state(mae)
    got, _ = both(mae_script, init)
    assert all(m.sum() == 4 * 12 for m in got["mask"])  # 75% of 16 patches masked


# --- 8. a Swin Transformer: shifted windows, relative position bias, patch merging -------------
def swin(lib, img_size=8, patch_size=2, embed_dim=8, num_heads=2, window_size=2, num_classes=10):
    torch, nn = lib, lib.nn
    trunc_normal_ = nn.init.trunc_normal_

    def window_partition(x, window_size):
        B, H, W, C = x.shape
        x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
        return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)

    def window_reverse(windows, window_size, H, W):
        B = int(windows.shape[0] / (H * W / window_size / window_size))
        x = windows.view(B, H // window_size, W // window_size, window_size, window_size, -1)
        return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)

    class WindowAttention(nn.Module):
        def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None):
            super().__init__()
            self.dim = dim
            self.window_size = window_size  # Wh, Ww
            self.num_heads = num_heads
            head_dim = dim // num_heads
            self.scale = qk_scale or head_dim ** -0.5
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
            coords_h = torch.arange(self.window_size[0])
            coords_w = torch.arange(self.window_size[1])
            coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))
            coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
            relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
            relative_coords = relative_coords.permute(1, 2, 0).contiguous()
            relative_coords[:, :, 0] += self.window_size[0] - 1  # shift to start from 0
            relative_coords[:, :, 1] += self.window_size[1] - 1
            relative_coords[:, :, 0] *= 2 * self.window_size[1] - 1
            relative_position_index = relative_coords.sum(-1)  # Wh*Ww, Wh*Ww
            self.register_buffer("relative_position_index", relative_position_index)
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)
            trunc_normal_(self.relative_position_bias_table, std=.02)
            self.softmax = nn.Softmax(dim=-1)

        def forward(self, x, mask=None):
            B_, N, C = x.shape
            qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads)
            qkv = qkv.permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1))
            relative_position_bias = self.relative_position_bias_table[
                self.relative_position_index.view(-1)].view(
                self.window_size[0] * self.window_size[1],
                self.window_size[0] * self.window_size[1], -1)
            relative_position_bias = relative_position_bias.permute(2, 0, 1).contiguous()
            attn = attn + relative_position_bias.unsqueeze(0)
            if mask is not None:
                nW = mask.shape[0]
                attn = attn.view(B_ // nW, nW, self.num_heads, N, N) + \
                    mask.unsqueeze(1).unsqueeze(0)
                attn = attn.view(-1, self.num_heads, N, N)
            attn = self.softmax(attn)
            x = (attn @ v).transpose(1, 2).reshape(B_, N, C)
            return self.proj(x)

    class SwinTransformerBlock(nn.Module):
        def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0,
                     mlp_ratio=4.):
            super().__init__()
            self.dim = dim
            self.input_resolution = input_resolution
            self.window_size = window_size
            self.shift_size = shift_size
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, window_size=(window_size, window_size),
                                        num_heads=num_heads)
            self.norm2 = nn.LayerNorm(dim)
            hidden = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            if self.shift_size > 0:
                H, W = self.input_resolution
                img_mask = torch.zeros((1, H, W, 1))  # 1 H W 1
                h_slices = (slice(0, -self.window_size),
                            slice(-self.window_size, -self.shift_size),
                            slice(-self.shift_size, None))
                w_slices = h_slices
                cnt = 0
                for h in h_slices:
                    for w in w_slices:
                        img_mask[:, h, w, :] = cnt
                        cnt += 1
                mask_windows = window_partition(img_mask, self.window_size)
                mask_windows = mask_windows.view(-1, self.window_size * self.window_size)
                attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
                attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(
                    attn_mask == 0, 0.0)
            else:
                attn_mask = None
            self.register_buffer("attn_mask", attn_mask)

        def forward(self, x):
            H, W = self.input_resolution
            B, L, C = x.shape
            assert L == H * W, "input feature has wrong size"
            shortcut = x
            x = self.norm1(x)
            x = x.view(B, H, W, C)
            if self.shift_size > 0:
                shifted_x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size),
                                       dims=(1, 2))
            else:
                shifted_x = x
            x_windows = window_partition(shifted_x, self.window_size)
            x_windows = x_windows.view(-1, self.window_size * self.window_size, C)
            attn_windows = self.attn(x_windows, mask=self.attn_mask)
            attn_windows = attn_windows.view(-1, self.window_size, self.window_size, C)
            shifted_x = window_reverse(attn_windows, self.window_size, H, W)  # B H' W' C
            if self.shift_size > 0:
                x = torch.roll(shifted_x, shifts=(self.shift_size, self.shift_size),
                               dims=(1, 2))
            else:
                x = shifted_x
            x = x.view(B, H * W, C)
            x = shortcut + x
            return x + self.mlp(self.norm2(x))

    class PatchMerging(nn.Module):
        def __init__(self, input_resolution, dim, norm_layer=nn.LayerNorm):
            super().__init__()
            self.input_resolution = input_resolution
            self.dim = dim
            self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
            self.norm = norm_layer(4 * dim)

        def forward(self, x):
            H, W = self.input_resolution
            B, L, C = x.shape
            x = x.view(B, H, W, C)
            x0 = x[:, 0::2, 0::2, :]  # B H/2 W/2 C
            x1 = x[:, 1::2, 0::2, :]
            x2 = x[:, 0::2, 1::2, :]
            x3 = x[:, 1::2, 1::2, :]
            x = torch.cat([x0, x1, x2, x3], -1)  # B H/2 W/2 4*C
            x = x.view(B, -1, 4 * C)  # B H/2*W/2 4*C
            return self.reduction(self.norm(x))

    class SwinTiny(nn.Module):
        def __init__(self):
            super().__init__()
            res = img_size // patch_size
            self.patch_embed = nn.Conv2d(1, embed_dim, patch_size, stride=patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res * res, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=.02)
            self.blocks = nn.ModuleList([
                SwinTransformerBlock(embed_dim, (res, res), num_heads, window_size,
                                     shift_size=0 if (i % 2 == 0) else window_size // 2)
                for i in range(2)])
            self.downsample = PatchMerging((res, res), embed_dim)
            self.norm = nn.LayerNorm(2 * embed_dim)
            self.avgpool = nn.AdaptiveAvgPool1d(1)
            self.head = nn.Linear(2 * embed_dim, num_classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.absolute_pos_embed
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(self.downsample(x))  # B L C
            x = self.avgpool(x.transpose(1, 2))  # B C 1
            return self.head(torch.flatten(x, 1))

    return SwinTiny()


def swin_script(torch, init, steps=5):
    model = start(torch, swin, init)
    opt = torch.optim.AdamW(param_groups_weight_decay(
        model, 0.05, {"absolute_pos_embed", "relative_position_bias_table"}), lr=5e-3)
    X, Y = images(steps * 4, seed=21)
    X, Y = torch.tensor(X), torch.tensor(Y)
    out = {"loss": [], "mask": model.blocks[1].attn_mask.numpy(),
           "index": model.blocks[0].attn.relative_position_index.numpy()}
    for i in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X[4 * i:4 * i + 4]), Y[4 * i:4 * i + 4])
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
    out["weights"] = arrays(model.state_dict())
    return out


def test_swin_shifted_windows_and_relative_position_bias_match_pytorch(float64_default):
    got, ref = both(swin_script, initial_state(swin))
    assert (got["mask"] == -100).any() and got["index"].max() == 8

# --- 9. linear probing with LARS (MAE's), and DeiT's hard and soft distillation ----------------
def lars_class(torch):
    class LARS(torch.optim.Optimizer):
        """LARS for SGD with momentum, MAE's: trust ratio on weights, none on biases/norms."""

        def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
            defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                            trust_coefficient=trust_coefficient)
            super().__init__(params, defaults)

        @torch.no_grad()
        def step(self):
            for g in self.param_groups:
                for p in g["params"]:
                    dp = p.grad
                    if dp is None:
                        continue
                    if p.ndim > 1:  # if not normalization gamma/beta or bias
                        dp = dp.add(p, alpha=g["weight_decay"])
                        param_norm = torch.norm(p)
                        update_norm = torch.norm(dp)
                        one = torch.ones_like(param_norm)
                        q = torch.where(param_norm > 0.,
                                        torch.where(update_norm > 0,
                                                    (g["trust_coefficient"] * param_norm
                                                     / update_norm), one), one)
                        dp = dp.mul(q)
                    param_state = self.state[p]
                    if "mu" not in param_state:
                        param_state["mu"] = torch.zeros_like(p)
                    mu = param_state["mu"]
                    mu.mul_(g["momentum"]).add_(dp)
                    p.add_(mu, alpha=-g["lr"])

    return LARS


def linprobe_script(torch, init, teacher_init, steps=6):
    F = torch.nn.functional
    model = start(torch, vit, init)
    teacher = start(torch, mobilenet_v2, teacher_init).eval()
    # MAE's linear probe: a BatchNorm without affine before the head, everything else frozen
    model.head = torch.nn.Sequential(
        torch.nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
    model.to(torch.float64)
    for _, p in model.named_parameters():
        p.requires_grad = False
    for _, p in model.head.named_parameters():
        p.requires_grad = True
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = lars_class(torch)(model.head.parameters(), lr=0.5, weight_decay=0.01)
    X, Y = images(steps * 8, seed=13)
    X, Y = torch.tensor(X), torch.tensor(Y)
    out = {"loss": [], "n": [n_parameters], "running": []}
    tau, alpha = 2.0, 0.5
    for i in range(steps):
        xb, yb = X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]
        outputs = model(xb)
        with torch.no_grad():
            teacher_outputs = teacher(xb)
        base_loss = F.cross_entropy(outputs, yb)
        if i % 2:  # DeiT's soft distillation
            T = tau
            distillation_loss = F.kl_div(
                F.log_softmax(outputs / T, dim=1), F.log_softmax(teacher_outputs / T, dim=1),
                reduction="sum", log_target=True) * (T * T) / outputs.numel()
        else:  # hard distillation
            distillation_loss = F.cross_entropy(outputs, teacher_outputs.argmax(dim=1))
        loss = base_loss * (1 - alpha) + distillation_loss * alpha
        loss = loss + 0.1 * F.kl_div(F.log_softmax(outputs, -1), F.softmax(teacher_outputs, -1),
                                     reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        assert model.blocks[0].attn.qkv.weight.grad is None
        optimizer.step()
        out["loss"].append(loss.item())
        out["running"].append(model.head[0].running_var.numpy().copy())
    out["weights"] = arrays(model.state_dict())
    out["state"] = [v["mu"].numpy() for v in optimizer.state.values()]
    return out


#: PyTorch-style optimizers keep ``self.state[p][...]`` between steps (LARS, SAM)


def test_linear_probe_with_lars_and_deit_distillation_matches_pytorch():
    init, teacher_init = initial_state(vit), initial_state(mobilenet_v2)
    got, _ = both(linprobe_script, init, teacher_init)
    assert got["n"] == [16 * 10 + 10]


def test_a_pytorch_style_optimizer_keeps_its_state_and_round_trips():
    # MAE's LARS writes self.state[p]["mu"]: nodegrad's state was a fresh dict per read
    runs = {}
    for lib in (torch, ng):
        p = lib.nn.Parameter(lib.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=lib.float64))
        b = lib.nn.Parameter(lib.tensor([0.5, -0.5], dtype=lib.float64))
        opt = lars_class(lib)([p, b], lr=0.1, weight_decay=0.01)
        for _ in range(3):
            opt.zero_grad()
            ((p ** 2).sum() + (b * p).sum()).backward()
            opt.step()
        sd = opt.state_dict()
        runs[lib] = (p.detach().numpy().copy(), sd)
    np.testing.assert_allclose(runs[ng][0], runs[torch][0], rtol=1e-12)
    assert sorted(runs[ng][1]["state"]) == sorted(runs[torch][1]["state"]) == [0, 1]
    np.testing.assert_allclose(runs[ng][1]["state"][0]["mu"].numpy(),
                               runs[torch][1]["state"][0]["mu"].numpy(), rtol=1e-12)
    # PyTorch's state dict loads into nodegrad's optimizer, and steps on from there
    q = ng.nn.Parameter(ng.tensor(runs[torch][0]))
    c = ng.nn.Parameter(ng.tensor([0.5, -0.5], dtype=ng.float64))
    opt = lars_class(ng)([q, c], lr=0.1, weight_decay=0.01)
    opt.load_state_dict(runs[torch][1])
    assert isinstance(opt.state[q]["mu"], ng.Tensor)
    np.testing.assert_allclose(opt.state[q]["mu"].numpy(),
                               runs[torch][1]["state"][0]["mu"].numpy())
    clone = copy.deepcopy(opt)
    assert len(clone.state) == 2
    opt.state[q]["extra"] = 1
    assert opt.state[q]["extra"] == 1
    opt.state[c] = {"mu": ng.zeros(2, dtype=ng.float64)}
    assert not opt.state[c]["mu"].numpy().any()


# --- regressions found by these ports --------------------------------------------------------
def test_reshape_takes_pytorchs_shape_keyword():
    # MAE's patchify writes imgs.reshape(shape=(...)); it was a TypeError
    x = ng.arange(24.0).reshape(2, 12)
    want = torch.arange(24.0).reshape(2, 12)
    assert x.reshape(shape=(2, 3, 4)).shape == tuple(want.reshape(shape=(2, 3, 4)).shape)
    np.testing.assert_array_equal(ng.reshape(x, shape=[4, -1]).numpy(),
                                  torch.reshape(want, shape=[4, -1]).numpy())
    assert x.reshape((3, 8)).shape == x.reshape(3, 8).shape == (3, 8)
    with pytest.raises(TypeError, match="reshape: pass the shape positionally or as shape="):
        x.reshape(4, shape=(4, 6))


def test_torchscript_markers_are_eager_no_ops_as_in_pytorch():
    # timm decorates methods with @torch.jit.ignore and asks torch.jit.is_scripting()
    class Net(ng.nn.Module):
        flag: ng.jit.Final[bool]

        @ng.jit.ignore
        def no_weight_decay(self):
            return {"pos_embed"}

        @ng.jit.unused
        def debug_branch(self, x):
            return x + 1

        @ng.jit.ignore(drop=True)
        def dropped(self):
            return 3

        @ng.jit.export
        def exported(self):
            return 4

    net = Net()
    assert net.no_weight_decay() == {"pos_embed"} and net.debug_branch(1) == 2
    assert net.dropped() == 3 and net.exported() == 4
    assert ng.jit.is_scripting() is torch.jit.is_scripting() is False
    assert ng.jit.is_tracing() is torch.jit.is_tracing() is False
    assert ng.jit.annotate(list[int], []) == torch.jit.annotate(list[int], []) == []
    assert ng.jit.Final[int] == torch.jit.Final[int]
    with pytest.raises(TypeError, match="jit.ignore: expected a function"):
        ng.jit.ignore(3)
    f = ng.jit(lambda x: x * 2)  # ng.jit itself still compiles
    assert f(ng.ones(2)).tolist() == [2.0, 2.0]


def test_gelu_prints_its_approximation_as_pytorchs():
    # every ViT/ConvNeXt printout had GELU() where PyTorch prints GELU(approximate='none')
    for args in [(), ("tanh",)]:
        assert repr(ng.nn.GELU(*args)) == repr(torch.nn.GELU(*args))


@pytest.mark.parametrize("build, kw", [(vit, {"drop_path_rate": 0.2}), (convnext, {}),
                                       (swin, {}), (mobilenet_v2, {})],
                         ids=["vit", "convnext", "swin", "mobilenet"])
def test_model_reprs_match_pytorch(build, kw):
    ours = re.sub(r"  # [\d,]+ parameters( in all)?$", "", repr(build(ng, **kw)), flags=re.M)
    assert ours == repr(build(torch, **kw))


# --- 10. explaining and attacking a trained model: Grad-CAM, saliency, FGSM and PGD -------------
def explain_script(torch, init, steps=3):
    F = torch.nn.functional
    model = start(torch, convnext, init)
    X, Y = images(8, size=8, seed=31)
    X, Y = torch.tensor(X), torch.tensor(Y)
    model.eval()
    out = {}
    # Grad-CAM on the last stage: a forward hook keeps the activation, a full backward hook
    # its gradient
    activations, gradients = [], []
    layer = model.stages[1]
    h1 = layer.register_forward_hook(lambda m, i, o: activations.append(o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: gradients.append(go[0]))
    logits = model(X)
    cls = logits.argmax(dim=1)
    model.zero_grad()
    logits.gather(1, cls[:, None]).sum().backward()
    h1.remove()
    h2.remove()
    weights = gradients[0].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations[0]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=X.shape[-2:], mode="bilinear", align_corners=False)
    cam_min = cam.amin(dim=(2, 3), keepdim=True)
    cam_max = cam.amax(dim=(2, 3), keepdim=True)
    out["cam"] = ((cam - cam_min) / (cam_max - cam_min + 1e-8)).detach().numpy()
    # a saliency map
    x = X.clone().requires_grad_(True)
    model(x).max(1)[0].sum().backward()
    out["saliency"] = x.grad.abs().amax(dim=1).numpy()
    # FGSM, then PGD in an L-inf ball
    eps, alpha = 0.1, 0.04
    x = X.clone().detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), Y)
    grad, = torch.autograd.grad(loss, x)
    x_adv = (X + eps * grad.sign()).clamp(-3, 3).detach()
    out["fgsm"] = F.cross_entropy(model(x_adv), Y).item()
    x_adv = X.clone().detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), Y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + alpha * x_adv.grad.sign()
            x_adv = torch.min(torch.max(x_adv, X - eps), X + eps).clamp(-3, 3)
        x_adv = x_adv.detach()
    out["pgd"] = F.cross_entropy(model(x_adv), Y).item()
    out["pgd_x"] = x_adv.numpy()
    assert all(p.grad is None or p.grad.abs().sum().item() > 0 for p in model.parameters())
    return out


def test_grad_cam_saliency_fgsm_and_pgd_match_pytorch():
    got, _ = both(explain_script, initial_state(convnext))
    assert got["pgd"] > got["fgsm"] * 0.5 and got["cam"].max() <= 1.0


def test_module_to_takes_channels_last_non_blocking_and_a_tensor():
    # timm's train.py: model.to(memory_format=torch.channels_last) with --channels-last
    for lib in (torch, ng):
        model = mobilenet_v2(lib)
        assert model.to(memory_format=lib.channels_last) is model
        assert model.to("cpu", non_blocking=True) is model
        assert model.to(lib.ones(1, dtype=lib.float64)).classifier[1].weight.dtype == lib.float64
        x = lib.ones(2, 1, 8, 8, dtype=lib.float64).to(memory_format=lib.channels_last)
        assert tuple(model.eval()(x).shape) == (2, 10)
    with pytest.raises(TypeError, match="Module.to: memory_format must be one of"):
        mobilenet_v2(ng).to(memory_format="rows")
