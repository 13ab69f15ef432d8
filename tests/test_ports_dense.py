"""Dense-prediction and image-to-image programs in PyTorch, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``): U-Net, FCN
and DeepLab heads, a spatial transformer, super-resolution nets, neural style transfer with
L-BFGS, detection losses and box coding, a CRNN with CTC. Both runs start from PyTorch's seeded
initial weights and see the same arrays (drawn with PyTorch), in float64.
"""
# ruff: noqa: UP008, UP030, UP032, UP034  (the programs keep their sources' own spellings)

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import nodegrad as ng
from _ports import (BoxCoder, arr, arrays, assert_same, both, draw,  # noqa: F401
                    float64_one_thread, initial_state, start)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("float64_one_thread")


# --- 0. interpolate: every mode with sizes, scale factors and recompute_scale_factor -----------
INTERP = [
    ("nearest", None, 2, None), ("nearest", None, 1.7, None), ("nearest", None, 1.7, True),
    ("nearest", None, 0.6, None), ("nearest", None, (0.5, 2.5), None),
    ("nearest-exact", None, 1.7, None), ("nearest-exact", None, 0.6, True),
    ("nearest-exact", None, 2, None),
    ("bilinear", False, 2, None), ("bilinear", True, 2, None), ("bilinear", False, 1.7, None),
    ("bilinear", False, 1.7, True), ("bilinear", True, 0.6, None), ("bilinear", False, 0.45, None),
    ("bilinear", False, (0.5, 1.3), True),
    ("bicubic", False, 2, None), ("bicubic", True, 1.7, None), ("bicubic", False, 0.6, None),
    ("bicubic", False, 1.3, True),
    ("area", None, 0.5, None), ("area", None, 0.6, None), ("area", None, 1.7, None),
    ("area", None, 0.6, True),
]


def interp(lib, mode, align, scale, recompute, size=None, shape=(2, 3, 5, 7)):
    F = lib.nn.functional
    x = lib.tensor(draw(*shape, seed=1), requires_grad=True)
    kw = {} if align is None else {"align_corners": align}
    if size is None:
        y = F.interpolate(x, scale_factor=scale, mode=mode, recompute_scale_factor=recompute,
                          **kw)
    else:
        y = F.interpolate(x, size=size, mode=mode, **kw)
    w = lib.tensor(draw(*y.shape, seed=2))
    (y * w).sum().backward()
    return {"shape": list(y.shape), "y": y, "grad": x.grad}


@pytest.mark.parametrize("mode,align,scale,recompute", INTERP)
def test_interpolate_scale_factor_forward_and_backward_match_pytorch(mode, align, scale,
                                                                     recompute):
    both(interp, mode, align, scale, recompute)


@pytest.mark.parametrize("mode,size", [
    ("nearest", (9, 4)), ("nearest-exact", (3, 11)), ("bilinear", (9, 4)), ("bicubic", (3, 11)),
    ("area", (3, 4)), ("area", (9, 11)), ("bilinear", 6)])
def test_interpolate_to_a_size_matches_pytorch(mode, size):
    align = False if mode in ("bilinear", "bicubic") else None
    both(interp, mode, align, None, None, size=size)


@pytest.mark.parametrize("mode,align,scale,shape", [
    ("linear", False, 1.7, (2, 3, 6)), ("linear", True, 0.6, (2, 3, 6)),
    ("nearest", None, 2.5, (2, 3, 6)), ("nearest-exact", None, 0.7, (2, 3, 6)),
    ("area", None, 0.5, (2, 3, 6)),
    ("trilinear", False, 1.5, (1, 2, 3, 4, 5)), ("trilinear", True, 2, (1, 2, 3, 4, 5)),
    ("nearest", None, 1.5, (1, 2, 3, 4, 5)), ("area", None, 0.7, (1, 2, 3, 4, 5))])
def test_interpolate_in_one_and_three_dimensions_matches_pytorch(mode, align, scale, shape):
    both(interp, mode, align, scale, None, shape=shape)
    both(interp, mode, align, scale, True, shape=shape)


def upsample_layers(lib):
    nn = lib.nn
    x = lib.tensor(draw(1, 2, 3, 4, seed=3), requires_grad=True)
    layers = [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
              nn.Upsample(size=(5, 7), mode="nearest"), nn.UpsamplingBilinear2d(scale_factor=2),
              nn.UpsamplingNearest2d(size=(6, 6)), nn.Upsample(scale_factor=(1.5, 2.0),
                                                               mode="bicubic")]
    ys = [m(x) for m in layers]
    sum((y ** 2).sum() for y in ys).backward()
    return {"y": ys, "g": x.grad, "repr": [repr(m) for m in layers]}


def test_upsample_modules_match_pytorch():
    both(upsample_layers)


# --- 1. U-Net (milesial/Pytorch-UNet): DoubleConv, Down, Up, F.pad, skips, CE + Dice ----------
def unet(lib, bilinear: bool = True, n_channels: int = 2, n_classes: int = 3):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class DoubleConv(nn.Module):
        """(convolution => [BN] => ReLU) * 2"""

        def __init__(self, in_channels, out_channels, mid_channels=None):
            super().__init__()
            if not mid_channels:
                mid_channels = out_channels
            self.double_conv = nn.Sequential(
                nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(mid_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )

        def forward(self, x):
            return self.double_conv(x)

    class Down(nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.maxpool_conv = nn.Sequential(
                nn.MaxPool2d(2),
                DoubleConv(in_channels, out_channels)
            )

        def forward(self, x):
            return self.maxpool_conv(x)

    class Up(nn.Module):
        def __init__(self, in_channels, out_channels, bilinear=True):
            super().__init__()
            if bilinear:
                self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
                self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
            else:
                self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2,
                                             stride=2)
                self.conv = DoubleConv(in_channels, out_channels)

        def forward(self, x1, x2):
            x1 = self.up(x1)
            # input is CHW
            diffY = x2.size()[2] - x1.size()[2]
            diffX = x2.size()[3] - x1.size()[3]
            x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
            x = torch.cat([x2, x1], dim=1)
            return self.conv(x)

    class OutConv(nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

        def forward(self, x):
            return self.conv(x)

    class UNet(nn.Module):
        def __init__(self, n_channels, n_classes, bilinear=False):
            super().__init__()
            self.n_channels = n_channels
            self.n_classes = n_classes
            self.bilinear = bilinear
            self.inc = DoubleConv(n_channels, 4)
            self.down1 = Down(4, 8)
            factor = 2 if bilinear else 1
            self.down2 = Down(8, 16 // factor)
            self.up1 = Up(16, 8 // factor, bilinear)
            self.up2 = Up(8, 4, bilinear)
            self.outc = OutConv(4, n_classes)

        def forward(self, x):
            x1 = self.inc(x)
            x2 = self.down1(x1)
            x3 = self.down2(x2)
            x = self.up1(x3, x2)
            x = self.up2(x, x1)
            return self.outc(x)

    return UNet(n_channels, n_classes, bilinear)


def dice_coeff(input, target, reduce_batch_first: bool = False, epsilon: float = 1e-6):
    # Average of Dice coefficient for all batches, or for a single mask
    assert input.size() == target.size()
    assert input.dim() == 3 or not reduce_batch_first
    sum_dim = (-1, -2) if input.dim() == 2 or not reduce_batch_first else (-1, -2, -3)
    inter = 2 * (input * target).sum(dim=sum_dim)
    sets_sum = input.sum(dim=sum_dim) + target.sum(dim=sum_dim)
    sets_sum = torch_where(input)(sets_sum == 0, inter, sets_sum)
    dice = (inter + epsilon) / (sets_sum + epsilon)
    return dice.mean()


def torch_where(x):
    """The library a tensor belongs to, for the free functions a program calls."""
    return (torch if isinstance(x, torch.Tensor) else ng).where


def multiclass_dice_coeff(input, target, reduce_batch_first: bool = False, epsilon=1e-6):
    # Average of Dice coefficient for all classes
    return dice_coeff(input.flatten(0, 1), target.flatten(0, 1), reduce_batch_first, epsilon)


def dice_loss(input, target, multiclass: bool = False):
    # Dice loss (objective to minimize) between 0 and 1
    fn = multiclass_dice_coeff if multiclass else dice_coeff
    return 1 - fn(input, target, reduce_batch_first=True)


def unet_script(lib, init, bilinear, steps=4):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    model = start(lib, unet, init, bilinear)
    model = model.to(memory_format=lib.channels_last)
    images = lib.tensor(draw(steps + 1, 2, 2, 11, 13, seed=4))
    masks = lib.tensor(draw(steps + 1, 2, 11, 13, seed=5, kind="randint", high=3))
    optimizer = optim.RMSprop(model.parameters(), lr=1e-3, weight_decay=1e-8, momentum=0.999,
                              foreach=True)
    scheduler = optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", patience=1)
    grad_scaler = lib.amp.GradScaler("cpu", enabled=False)
    criterion = nn.CrossEntropyLoss() if model.n_classes > 1 else nn.BCEWithLogitsLoss()
    out = {"loss": [], "norm": [], "score": [], "lr": []}
    for step in range(steps):
        model.train()
        image = images[step].to(dtype=lib.float64, memory_format=lib.channels_last)
        true_masks = masks[step].to(dtype=lib.long)
        with lib.autocast("cpu", enabled=False):
            masks_pred = model(image)
            loss = criterion(masks_pred, true_masks)
            loss += dice_loss(F.softmax(masks_pred, dim=1).double(),
                              F.one_hot(true_masks, model.n_classes).permute(0, 3, 1, 2).double(),
                              multiclass=True)
        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        out["norm"].append(float(lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        grad_scaler.step(optimizer)
        grad_scaler.update()
        out["loss"].append(loss.item())
        # evaluate(): argmax masks as one-hot, the Dice score without the background
        model.eval()
        with lib.inference_mode():
            mask_pred = model(images[-1])
            mask_true = F.one_hot(masks[-1].long(), model.n_classes).permute(0, 3, 1, 2).float()
            mask_pred = F.one_hot(mask_pred.argmax(dim=1), model.n_classes).permute(0, 3, 1, 2)
            score = multiclass_dice_coeff(mask_pred[:, 1:].float(), mask_true[:, 1:],
                                          reduce_batch_first=False)
        scheduler.step(score)
        out["score"].append(score.item())
        out["lr"].append(optimizer.param_groups[0]["lr"])
    out["w"] = arrays(model.state_dict())
    return out


@pytest.mark.parametrize("bilinear", [True, False])
def test_unet_cross_entropy_plus_dice_rmsprop_plateau_matches_pytorch(bilinear):
    both(unet_script, initial_state(unet, bilinear), bilinear, tol=1e-9)


def test_unet_repr_and_parameter_count_match_pytorch():
    for bilinear in (True, False):
        a, b = unet(torch, bilinear), unet(ng, bilinear)
        plain = re.sub(r"  # [\d,]+ parameters( in all)?$", "", repr(b), flags=re.M)
        assert plain == repr(a)  # less nodegrad's parameter counts
        assert sum(p.numel() for p in b.parameters()) == sum(p.numel() for p in a.parameters())


# --- 2. torchvision's FCN and DeepLabV3 heads: ASPP, image pooling, interpolate to the input ----
def deeplab(lib, head: str = "deeplab"):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class ASPPConv(nn.Sequential):
        def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
            modules = [
                nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation,
                          bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            super().__init__(*modules)

    class ASPPPooling(nn.Sequential):
        def __init__(self, in_channels: int, out_channels: int) -> None:
            super().__init__(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            )

        def forward(self, x):
            size = x.shape[-2:]
            for mod in self:
                x = mod(x)
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    class ASPP(nn.Module):
        def __init__(self, in_channels, atrous_rates, out_channels: int = 256) -> None:
            super().__init__()
            modules = []
            modules.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                         nn.BatchNorm2d(out_channels), nn.ReLU()))
            rates = tuple(atrous_rates)
            for rate in rates:
                modules.append(ASPPConv(in_channels, out_channels, rate))
            modules.append(ASPPPooling(in_channels, out_channels))
            self.convs = nn.ModuleList(modules)
            self.project = nn.Sequential(
                nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.Dropout(0.5),
            )

        def forward(self, x):
            _res = []
            for conv in self.convs:
                _res.append(conv(x))
            res = torch.cat(_res, dim=1)
            return self.project(res)

    class DeepLabHead(nn.Sequential):
        def __init__(self, in_channels: int, num_classes: int, atrous_rates=(1, 2, 3)) -> None:
            super().__init__(
                ASPP(in_channels, atrous_rates, out_channels=6),
                nn.Conv2d(6, 6, 3, padding=1, bias=False),
                nn.BatchNorm2d(6),
                nn.ReLU(),
                nn.Conv2d(6, num_classes, 1),
            )

    class FCNHead(nn.Sequential):
        def __init__(self, in_channels: int, channels: int) -> None:
            inter_channels = in_channels // 4
            layers = [
                nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(inter_channels),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Conv2d(inter_channels, channels, 1),
            ]
            super().__init__(*layers)

    class SimpleSegmentationModel(nn.Module):
        def __init__(self, backbone, classifier, aux_classifier=None) -> None:
            super().__init__()
            self.backbone = backbone
            self.classifier = classifier
            self.aux_classifier = aux_classifier

        def forward(self, x):
            input_shape = x.shape[-2:]
            # contract: features is a dict of tensors
            aux = self.backbone[0](x)
            features = {"aux": aux, "out": self.backbone[1](aux)}
            result = {}
            x = features["out"]
            x = self.classifier(x)
            x = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
            result["out"] = x
            if self.aux_classifier is not None:
                x = features["aux"]
                x = self.aux_classifier(x)
                x = F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)
                result["aux"] = x
            return result

    backbone = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU()))
    classifier = DeepLabHead(12, 4) if head == "deeplab" else FCNHead(12, 4)
    model = SimpleSegmentationModel(backbone, classifier, FCNHead(8, 4))
    for m in model.modules():  # no dropout masks to share between the libraries
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def criterion(lib, inputs, target):
    losses = {}
    for name, x in inputs.items():
        losses[name] = lib.nn.functional.cross_entropy(x, target, ignore_index=255)
    if len(losses) == 1:
        return losses["out"]
    return losses["out"] + 0.5 * losses["aux"]


def deeplab_script(lib, init, head, steps=3):
    optim = lib.optim
    model = start(lib, deeplab, init, head)
    images = lib.tensor(draw(steps, 2, 3, 13, 10, seed=6))
    target = draw(steps, 2, 13, 10, seed=7, kind="randint", high=4)
    target[:, :, :2] = 255  # a border to ignore
    target = lib.tensor(target)
    params_to_optimize = [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad]},
        {"params": [p for p in model.classifier.parameters() if p.requires_grad]},
        {"params": [p for p in model.aux_classifier.parameters() if p.requires_grad],
         "lr": 0.02 * 10},
    ]
    optimizer = optim.SGD(params_to_optimize, lr=0.02, momentum=0.9, weight_decay=1e-4)
    iters = steps
    lr_scheduler = optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / iters) ** 0.9)
    out = {"loss": [], "lr": []}
    model.train()
    for i in range(steps):
        output = model(images[i])
        loss = criterion(lib, output, target[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        out["loss"].append(loss.item())
        out["lr"].append([g["lr"] for g in optimizer.param_groups])
    model.eval()
    with lib.no_grad():
        output = model(images[0])["out"]
        pred = output.argmax(1).flatten()
        # the reference scripts' ConfusionMatrix.update
        a, b, n = target[0].flatten(), pred, 4
        k = (a >= 0) & (a < n)
        inds = n * a[k].to(lib.int64) + b[k]
        mat = lib.bincount(inds, minlength=n ** 2).reshape(n, n)
        h = mat.double()
        acc_global = lib.diag(h).sum() / h.sum()
        iu = lib.diag(h) / (h.sum(1) + h.sum(0) - lib.diag(h))
    out.update(out=output, mat=mat, acc=acc_global, iu=iu, w=arrays(model.state_dict()))
    return out


@pytest.mark.parametrize("head", ["deeplab", "fcn"])
def test_deeplab_aspp_and_fcn_heads_with_aux_loss_and_poly_lr_match_pytorch(head):
    both(deeplab_script, initial_state(deeplab, head), head, tol=1e-9)


# --- 3. the spatial transformer: affine_grid + grid_sample in every mode and padding ----------
def stn_sample(lib, mode, padding_mode, align_corners, size=(2, 2, 5, 6), out_size=None):
    F = lib.nn.functional
    x = lib.tensor(draw(*size, seed=8), requires_grad=True)
    theta = lib.tensor(draw(size[0], 2, 3, seed=9) * 0.4
                       + np.array([[1.1, 0.1, 0.05], [-0.1, 0.9, 0.1]]), requires_grad=True)
    grid = F.affine_grid(theta, out_size or x.size(), align_corners=align_corners)
    y = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    w = lib.tensor(draw(*y.shape, seed=10))
    (y * w).sum().backward()
    return {"grid": grid, "y": y, "gx": x.grad, "gtheta": theta.grad}


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_sample_modes_and_paddings_match_pytorch(mode, padding_mode, align_corners):
    both(stn_sample, mode, padding_mode, align_corners)
    both(stn_sample, mode, padding_mode, align_corners, out_size=(2, 2, 7, 3))


def stn_tutorial(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super(Net, self).__init__()
            self.conv1 = nn.Conv2d(1, 4, kernel_size=3)
            self.fc1 = nn.Linear(4 * 5 * 5, 10)
            # Spatial transformer localization-network
            self.localization = nn.Sequential(
                nn.Conv2d(1, 4, kernel_size=3),
                nn.MaxPool2d(2, stride=2),
                nn.ReLU(True),
            )
            # Regressor for the 3 * 2 affine matrix
            self.fc_loc = nn.Sequential(
                nn.Linear(4 * 5 * 5, 8),
                nn.ReLU(True),
                nn.Linear(8, 3 * 2),
            )
            # Initialize the weights/bias with identity transformation
            self.fc_loc[2].weight.data.zero_()
            self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))

        # Spatial transformer network forward function
        def stn(self, x):
            xs = self.localization(x)
            xs = xs.view(-1, 4 * 5 * 5)
            theta = self.fc_loc(xs)
            theta = theta.view(-1, 2, 3)
            grid = F.affine_grid(theta, x.size(), align_corners=False)
            x = F.grid_sample(x, grid, align_corners=False)
            return x

        def forward(self, x):
            # transform the input
            x = self.stn(x)
            # Perform the usual forward pass
            x = F.relu(F.max_pool2d(self.conv1(x), 2))
            x = x.view(-1, 4 * 5 * 5)
            x = F.dropout(x, training=False)
            return F.log_softmax(self.fc1(x), dim=1)

    return Net()


def stn_tutorial_script(lib, init, steps=4):
    F, optim = lib.nn.functional, lib.optim
    model = start(lib, stn_tutorial, init)
    data = lib.tensor(draw(steps, 4, 1, 12, 12, seed=11))
    target = lib.tensor(draw(steps, 4, seed=12, kind="randint", high=10))
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    out = {"loss": [], "theta_grad": []}
    model.train()
    for batch_idx in range(steps):
        optimizer.zero_grad()
        output = model(data[batch_idx])
        loss = F.nll_loss(output, target[batch_idx])
        loss.backward()
        out["theta_grad"].append(model.fc_loc[2].bias.grad.clone())
        optimizer.step()
        out["loss"].append(loss.item())
    with lib.no_grad():
        model.eval()
        test_loss = F.nll_loss(model(data[0]), target[0], reduction="sum").item()
        pred = model(data[0]).max(1, keepdim=True)[1]
        correct = pred.eq(target[0].view_as(pred)).sum().item()
    out.update(test=[test_loss, correct], w=arrays(model.state_dict()))
    return out


def test_spatial_transformer_tutorial_from_the_identity_matches_pytorch():
    both(stn_tutorial_script, initial_state(stn_tutorial))


def volume_sample(lib, mode, padding_mode, align_corners):
    F = lib.nn.functional
    x = lib.tensor(draw(1, 2, 3, 4, 5, seed=13), requires_grad=True)
    theta = lib.tensor(draw(1, 3, 4, seed=14) * 0.3 + np.eye(3, 4), requires_grad=True)
    grid = F.affine_grid(theta, [1, 2, 4, 3, 5], align_corners=align_corners)
    y = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    (y * lib.tensor(draw(*y.shape, seed=15))).sum().backward()
    return {"y": y, "gx": x.grad, "gtheta": theta.grad}


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding_mode,align_corners", [("zeros", False), ("border", True),
                                                        ("reflection", False)])
def test_volumetric_affine_grid_sample_matches_pytorch(mode, padding_mode, align_corners):
    both(volume_sample, mode, padding_mode, align_corners)


# --- 4. super-resolution: ESPCN (pixel shuffle), SRCNN (bicubic input) -----------------------
def espcn(lib, upscale_factor: int = 3):
    nn, init = lib.nn, lib.nn.init

    class Net(nn.Module):
        def __init__(self, upscale_factor):
            super(Net, self).__init__()
            self.relu = nn.ReLU()
            self.conv1 = nn.Conv2d(1, 8, (5, 5), (1, 1), (2, 2))
            self.conv2 = nn.Conv2d(8, 8, (3, 3), (1, 1), (1, 1))
            self.conv3 = nn.Conv2d(8, 4, (3, 3), (1, 1), (1, 1))
            self.conv4 = nn.Conv2d(4, upscale_factor ** 2, (3, 3), (1, 1), (1, 1))
            self.pixel_shuffle = nn.PixelShuffle(upscale_factor)
            self._initialize_weights()

        def forward(self, x):
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.relu(self.conv3(x))
            x = self.pixel_shuffle(self.conv4(x))
            return x

        def _initialize_weights(self):
            init.orthogonal_(self.conv1.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv2.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv3.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv4.weight)

    return Net(upscale_factor)


def srcnn(lib):
    nn = lib.nn

    class SRCNN(nn.Module):
        def __init__(self, num_channels=1):
            super(SRCNN, self).__init__()
            self.conv1 = nn.Conv2d(num_channels, 8, kernel_size=9, padding=9 // 2)
            self.conv2 = nn.Conv2d(8, 4, kernel_size=5, padding=5 // 2)
            self.conv3 = nn.Conv2d(4, num_channels, kernel_size=5, padding=5 // 2)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.conv3(x)
            return x

    return SRCNN()


def sr_script(lib, init, net, steps=4):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    hr = lib.tensor(draw(steps + 1, 2, 1, 12, 12, seed=16, kind="rand"))
    out = {"loss": [], "psnr": []}
    criterion = nn.MSELoss()
    if net == "espcn":
        model = start(lib, espcn, init)
        optimizer = optim.Adam(model.parameters(), lr=0.01)
    else:
        model = start(lib, srcnn, init)
        optimizer = optim.Adam([
            {"params": model.conv1.parameters()},
            {"params": model.conv2.parameters()},
            {"params": model.conv3.parameters(), "lr": 1e-3 * 0.1},
        ], lr=1e-3)
    for i in range(steps + 1):
        target = hr[i]
        lr = F.interpolate(target, scale_factor=1 / 3, mode="area")
        if net == "espcn":
            inp = lr
        else:  # SRCNN sees the bicubic upscale of the low-resolution image
            inp = F.interpolate(lr, scale_factor=3, mode="bicubic", align_corners=False)
            inp = inp.clamp(0.0, 1.0)
        if i < steps:
            model.train()
            optimizer.zero_grad()
            loss = criterion(model(inp), target)
            loss.backward()
            optimizer.step()
            out["loss"].append(loss.item())
        with lib.no_grad():
            model.eval()
            mse = criterion(model(inp).clamp(0.0, 1.0), target)
            out["psnr"].append(10 * math.log10(1 / mse.item()))
    shuffle = nn.PixelShuffle(2)
    unshuffle = nn.PixelUnshuffle(2)
    x = lib.tensor(draw(1, 8, 3, 2, seed=17), requires_grad=True)
    y = unshuffle(shuffle(x) * 2.0)
    (y * lib.tensor(draw(1, 8, 3, 2, seed=18))).sum().backward()
    out.update(w=arrays(model.state_dict()), shuffle=shuffle(x), round=y, g=x.grad,
               repr=[repr(shuffle), repr(unshuffle)])
    return out


@pytest.mark.parametrize("net,build", [("espcn", espcn), ("srcnn", srcnn)])
def test_super_resolution_espcn_and_srcnn_match_pytorch(net, build):
    both(sr_script, initial_state(build), net)


def identity_sample(lib, n, align_corners, dtype):
    F = lib.nn.functional
    theta = lib.tensor([[[1.0, 0, 0], [0, 1, 0]]], dtype=getattr(lib, dtype), requires_grad=True)
    x = lib.tensor(draw(1, 2, n, n + 1, seed=19), dtype=getattr(lib, dtype))
    grid = F.affine_grid(theta, [1, 2, n, n + 1], align_corners=align_corners)
    y = F.grid_sample(x, grid, align_corners=align_corners)
    (y * lib.tensor(draw(*y.shape, seed=20), dtype=getattr(lib, dtype))).sum().backward()
    return {"grid": grid, "y": y, "gtheta": theta.grad}


@pytest.mark.parametrize("n", [5, 6, 12, 13, 33])
@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_grid_lands_on_pytorchs_side_of_each_pixel_centre(n, align_corners):
    """The identity grid's points sit on pixel centres, where the bilinear slope switches
    sides: affine_grid's positions (PyTorch's linspace) and grid_sample's unnormalisation (one
    rounding, PyTorch's fused multiply-add) must match PyTorch's bits, or the theta gradient
    differs by O(1)."""
    got = identity_sample(ng, n, align_corners, "float64")
    ref = identity_sample(torch, n, align_corners, "float64")
    assert_same(got["grid"], ref["grid"], 0.0)
    assert_same(got, ref, 1e-12)
    assert_same(identity_sample(ng, n, align_corners, "float32"),
                identity_sample(torch, n, align_corners, "float32"), 1e-4)


# --- 5. neural style transfer (the PyTorch tutorial): Gram matrices, loss modules, L-BFGS -----
def vgg_like(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, 2), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(inplace=True), nn.Conv2d(6, 6, 3, padding=1))


def style_transfer(lib, init, num_steps=3, lbfgs_kw=None):
    torch, nn, F, optim = lib, lib.nn, lib.nn.functional, lib.optim

    class ContentLoss(nn.Module):

        def __init__(self, target,):
            super(ContentLoss, self).__init__()
            # we 'detach' the target content from the tree used
            # to dynamically compute the gradient: this is a stated value,
            # not a variable. Otherwise the forward method of the criterion
            # will throw an error.
            self.target = target.detach()

        def forward(self, input):
            self.loss = F.mse_loss(input, self.target)
            return input

    def gram_matrix(input):
        a, b, c, d = input.size()  # a=batch size(=1)
        # b=number of feature maps
        # (c,d)=dimensions of a f. map (N=c*d)

        features = input.view(a * b, c * d)  # resize F_XL into \\hat F_XL

        G = torch.mm(features, features.t())  # compute the gram product

        # we 'normalize' the values of the gram matrix
        # by dividing by the number of element in each feature maps.
        return G.div(a * b * c * d)

    class StyleLoss(nn.Module):

        def __init__(self, target_feature):
            super(StyleLoss, self).__init__()
            self.target = gram_matrix(target_feature).detach()

        def forward(self, input):
            G = gram_matrix(input)
            self.loss = F.mse_loss(G, self.target)
            return input

    cnn_normalization_mean = torch.tensor([0.485, 0.456, 0.406])
    cnn_normalization_std = torch.tensor([0.229, 0.224, 0.225])

    # create a module to normalize input image so we can easily put it in a
    # ``nn.Sequential``
    class Normalization(nn.Module):
        def __init__(self, mean, std):
            super(Normalization, self).__init__()
            # .view the mean and std to make them [C x 1 x 1] so that they can
            # directly work with image Tensor of shape [B x C x H x W].
            # B is batch size. C is number of channels. H is height and W is width.
            self.mean = torch.tensor(mean).view(-1, 1, 1)
            self.std = torch.tensor(std).view(-1, 1, 1)

        def forward(self, img):
            # normalize ``img``
            return (img - self.mean) / self.std

    # desired depth layers to compute style/content losses :
    content_layers_default = ['conv_4']
    style_layers_default = ['conv_1', 'conv_2', 'conv_3', 'conv_4', 'conv_5']

    def get_style_model_and_losses(cnn, normalization_mean, normalization_std,
                                   style_img, content_img,
                                   content_layers=content_layers_default,
                                   style_layers=style_layers_default):
        # normalization module
        normalization = Normalization(normalization_mean, normalization_std)

        # just in order to have an iterable access to or list of content/style
        # losses
        content_losses = []
        style_losses = []

        # assuming that ``cnn`` is a ``nn.Sequential``, so we make a new ``nn.Sequential``
        # to put in modules that are supposed to be activated sequentially
        model = nn.Sequential(normalization)

        i = 0  # increment every time we see a conv
        for layer in cnn.children():
            if isinstance(layer, nn.Conv2d):
                i += 1
                name = 'conv_{}'.format(i)
            elif isinstance(layer, nn.ReLU):
                name = 'relu_{}'.format(i)
                # The in-place version doesn't play very nicely with the ``ContentLoss``
                # and ``StyleLoss`` we insert below. So we replace with out-of-place
                # ones here.
                layer = nn.ReLU(inplace=False)
            elif isinstance(layer, nn.MaxPool2d):
                name = 'pool_{}'.format(i)
            elif isinstance(layer, nn.BatchNorm2d):
                name = 'bn_{}'.format(i)
            else:
                raise RuntimeError('Unrecognized layer: {}'.format(layer.__class__.__name__))

            model.add_module(name, layer)

            if name in content_layers:
                # add content loss:
                target = model(content_img).detach()
                content_loss = ContentLoss(target)
                model.add_module("content_loss_{}".format(i), content_loss)
                content_losses.append(content_loss)

            if name in style_layers:
                # add style loss:
                target_feature = model(style_img).detach()
                style_loss = StyleLoss(target_feature)
                model.add_module("style_loss_{}".format(i), style_loss)
                style_losses.append(style_loss)

        # now we trim off the layers after the last content and style losses
        for i in range(len(model) - 1, -1, -1):
            if isinstance(model[i], ContentLoss) or isinstance(model[i], StyleLoss):
                break

        model = model[:(i + 1)]

        return model, style_losses, content_losses

    def get_input_optimizer(input_img):
        # this line to show that input is a parameter that requires a gradient
        optimizer = optim.LBFGS([input_img.requires_grad_()], **(lbfgs_kw or {}))
        return optimizer

    record = {"loss": []}

    def run_style_transfer(cnn, normalization_mean, normalization_std,
                           content_img, style_img, input_img, num_steps=300,
                           style_weight=1000000, content_weight=1):
        """Run the style transfer."""
        model, style_losses, content_losses = get_style_model_and_losses(
            cnn, normalization_mean, normalization_std, style_img, content_img)

        # We want to optimize the input and not the model parameters so we
        # update all the requires_grad fields accordingly
        input_img.requires_grad_(True)
        # We also put the model in evaluation mode, so that specific layers
        # such as dropout or batch normalization layers behave correctly.
        model.eval()
        model.requires_grad_(False)

        optimizer = get_input_optimizer(input_img)

        run = [0]
        while run[0] <= num_steps:

            def closure():
                # correct the values of updated input image
                with torch.no_grad():
                    input_img.clamp_(0, 1)

                optimizer.zero_grad()
                model(input_img)
                style_score = 0
                content_score = 0

                for sl in style_losses:
                    style_score += sl.loss
                for cl in content_losses:
                    content_score += cl.loss

                style_score *= style_weight
                content_score *= content_weight

                loss = style_score + content_score
                loss.backward()

                run[0] += 1
                record["loss"].append([style_score.item(), content_score.item()])
                return style_score + content_score

            optimizer.step(closure)

        # a last correction...
        with torch.no_grad():
            input_img.clamp_(0, 1)

        record["state"] = {k: arr(v) for k, v in optimizer.state_dict()["state"][0].items()
                           if k not in ("old_dirs", "old_stps", "ro")}
        return input_img, model

    cnn = start(lib, vgg_like, init).eval()
    content_img = torch.tensor(draw(1, 3, 8, 8, seed=21, kind="rand"))
    style_img = torch.tensor(draw(1, 3, 8, 8, seed=22, kind="rand"))
    input_img = content_img.clone()
    output, model = run_style_transfer(cnn, cnn_normalization_mean, cnn_normalization_std,
                                       content_img, style_img, input_img, num_steps=num_steps)
    record.update(output=output, names=[name for name, _ in model.named_children()],
                  frozen=[p.requires_grad for p in model.parameters()])
    return record


@pytest.mark.parametrize("lbfgs_kw", [None, {"max_iter": 4, "history_size": 3,
                                             "line_search_fn": "strong_wolfe"}])
def test_neural_style_transfer_tutorial_with_lbfgs_matches_pytorch(lbfgs_kw):
    both(style_transfer, initial_state(vgg_like), lbfgs_kw=lbfgs_kw, tol=1e-8)


def test_style_transfer_clamp_through_data():
    """The tutorial's older ``input_img.data.clamp_(0, 1)``: PyTorch's ``.data``, so the clamp
    reaches the image, which stays a leaf that requires grad."""
    img = ng.tensor(draw(1, 3, 4, 4, seed=23) * 2).requires_grad_()
    ref = torch.tensor(draw(1, 3, 4, 4, seed=23) * 2).requires_grad_()
    for t in (img, ref):
        t.data.clamp_(0, 1)
    assert_same(img, ref, 0.0)
    assert img.requires_grad and img.is_leaf and img.grad is None


# --- 6. detection losses: focal, Dice, IoU/GIoU/DIoU/CIoU, box coding, a YOLO loss ----------
def sigmoid_focal_loss(torch, inputs, targets, alpha: float = 0.25, gamma: float = 2,
                       reduction: str = "none"):
    """torchvision.ops.sigmoid_focal_loss as written there."""
    F = torch.nn.functional
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)

    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss

    # Check reduction option and return loss accordingly
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    else:
        raise ValueError(
            f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: "
            "'none', 'mean', 'sum'"
        )
    return loss


def _upcast(torch, t):
    # Protects from numerical overflows in multiplications by upcasting to the equivalent
    # higher type
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    else:
        return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(torch, boxes):
    boxes = _upcast(torch, boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_inter_union(torch, boxes1, boxes2):
    area1 = box_area(torch, boxes1)
    area2 = box_area(torch, boxes2)

    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # [N,M,2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N,M,2]

    wh = _upcast(torch, rb - lt).clamp(min=0)  # [N,M,2]
    inter = wh[:, :, 0] * wh[:, :, 1]  # [N,M]

    union = area1[:, None] + area2 - inter

    return inter, union


def box_iou(torch, boxes1, boxes2):
    inter, union = _box_inter_union(torch, boxes1, boxes2)
    iou = inter / union
    return iou


def generalized_box_iou(torch, boxes1, boxes2):
    inter, union = _box_inter_union(torch, boxes1, boxes2)
    iou = inter / union

    lti = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rbi = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])

    whi = _upcast(torch, rbi - lti).clamp(min=0)  # [N,M,2]
    areai = whi[:, :, 0] * whi[:, :, 1]

    return iou - (areai - union) / areai


def _loss_inter_union(torch, boxes1, boxes2):
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

    # Intersection keypoints
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)

    intsctk = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk

    return intsctk, unionk


def generalized_box_iou_loss(torch, boxes1, boxes2, reduction: str = "none", eps: float = 1e-7):
    boxes1 = _upcast(torch, boxes1)
    boxes2 = _upcast(torch, boxes2)
    intsctk, unionk = _loss_inter_union(torch, boxes1, boxes2)
    iouk = intsctk / (unionk + eps)

    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)

    # smallest enclosing box
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)

    area_c = (xc2 - xc1) * (yc2 - yc1)
    miouk = iouk - ((area_c - unionk) / (area_c + eps))

    loss = 1 - miouk

    # Check reduction option and return loss accordingly
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def complete_box_iou_loss(torch, boxes1, boxes2, reduction: str = "none", eps: float = 1e-7):
    """torchvision's CIoU loss (its DIoU part inlined)."""
    boxes1 = _upcast(torch, boxes1)
    boxes2 = _upcast(torch, boxes2)
    intsct, union = _loss_inter_union(torch, boxes1, boxes2)
    iou = intsct / (union + eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    # smallest enclosing box
    xc1 = torch.min(x1, x1g)
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    # The diagonal distance of the smallest enclosing box squared
    diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    # centers of boxes
    x_p = (x2 + x1) / 2
    y_p = (y2 + y1) / 2
    x_g = (x1g + x2g) / 2
    y_g = (y1g + y2g) / 2
    # The distance between boxes' centers squared.
    centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
    diou_loss = 1 - iou + (centers_distance_squared / diagonal_distance_squared)

    w_pred = x2 - x1
    h_pred = y2 - y1
    w_gt = x2g - x1g
    h_gt = y2g - y1g
    v = (4 / (math.pi ** 2)) * torch.pow((torch.atan(w_gt / h_gt) - torch.atan(w_pred / h_pred)), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)

    loss = diou_loss + alpha * v

    # Check reduction option and return loss accordingly
    if reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def anchors(torch, sizes=(8.0, 16.0), aspect_ratios=(0.5, 1.0, 2.0), grid=(3, 4), stride=4):
    """AnchorGenerator.generate_anchors and grid_anchors for one feature map."""
    scales = torch.as_tensor(sizes, dtype=torch.float64)
    aspect_ratios = torch.as_tensor(aspect_ratios, dtype=torch.float64)
    h_ratios = torch.sqrt(aspect_ratios)
    w_ratios = 1 / h_ratios

    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)

    base_anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    base_anchors = base_anchors.round()
    shifts_x = torch.arange(0, grid[1], dtype=torch.int32) * stride
    shifts_y = torch.arange(0, grid[0], dtype=torch.int32) * stride
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4)


def boxes_from(raw, torch):
    """Valid (x1, y1, x2, y2) boxes from a (N, 4) draw."""
    xy = raw[:, :2] * 8
    return torch.tensor(np.concatenate([xy, xy + 1 + np.abs(raw[:, 2:]) * 6], axis=1))


def detection_losses(torch):
    F = torch.nn.functional
    out = {}
    logits = torch.tensor(draw(6, 5, seed=24) * 2, requires_grad=True)
    targets = torch.tensor(draw(6, 5, seed=25, kind="randint", high=2)).to(torch.float64)
    for red in ("none", "mean", "sum"):
        out["focal_" + red] = sigmoid_focal_loss(torch, logits, targets, reduction=red)
    out["focal_gamma0"] = sigmoid_focal_loss(torch, logits, targets, alpha=-1, gamma=0,
                                             reduction="sum")
    sigmoid_focal_loss(torch, logits, targets, reduction="mean").backward()
    out["focal_grad"] = logits.grad
    # binary Dice on logits (segmentation_models style) and soft IoU
    pr = torch.tensor(draw(2, 1, 5, 6, seed=26), requires_grad=True)
    gt = torch.tensor(draw(2, 1, 5, 6, seed=27, kind="randint", high=2)).to(torch.float64)
    p = pr.sigmoid()
    dims = (0, 2, 3)
    intersection = torch.sum(p * gt, dim=dims)
    cardinality = torch.sum(p + gt, dim=dims)
    dice = (2.0 * intersection + 1.0) / (cardinality + 1.0).clamp_min(1e-7)
    jaccard = (intersection + 1.0) / (cardinality - intersection + 1.0).clamp_min(1e-7)
    loss = (1 - dice).mean() + (1 - jaccard).mean() + F.binary_cross_entropy_with_logits(pr, gt)
    loss.backward()
    out.update(dice=dice, jaccard=jaccard, seg_grad=pr.grad)
    # boxes: pairwise IoU / GIoU matrices, the elementwise GIoU and CIoU losses
    b1 = boxes_from(draw(5, 4, seed=28), torch).requires_grad_()
    b2 = boxes_from(draw(5, 4, seed=29), torch)
    b2 = torch.cat([b2[:4], b1[:1].detach() + 20])  # one pair without overlap
    out["iou"] = box_iou(torch, b1, b2)
    out["giou"] = generalized_box_iou(torch, b1, b2)
    giou = generalized_box_iou_loss(torch, b1, b2, reduction="mean")
    ciou = complete_box_iou_loss(torch, b1, b2, reduction="sum")
    (giou + ciou + (1 - torch.diag(generalized_box_iou(torch, b1, b2))).sum()).backward()
    out.update(giou_loss=giou, ciou_loss=ciou, box_grad=b1.grad)
    out["empty"] = generalized_box_iou_loss(torch, b1[:0], b2[:0], reduction="mean")
    # anchors, matching by IoU, encoding and decoding
    anc = anchors(torch)
    gt_boxes = boxes_from(draw(3, 4, seed=30), torch)
    match_quality = box_iou(torch, gt_boxes, anc)
    matched_vals, matches = match_quality.max(dim=0)
    below = matched_vals < 0.3
    between = (matched_vals >= 0.3) & (matched_vals < 0.5)
    matches[below] = -1
    matches[between] = -2
    coder = BoxCoder(torch, (10.0, 10.0, 5.0, 5.0))
    fg = torch.where(matches >= 0)[0]
    codes = coder.encode_single(gt_boxes[matches[fg]], anc[fg])
    deltas = torch.tensor(draw(anc.shape[0], 4, seed=31) * 3, requires_grad=True)
    decoded = coder.decode_single(deltas, anc)
    regression = F.smooth_l1_loss(deltas[fg], codes, beta=1 / 9, reduction="sum") / max(
        1, fg.numel())
    (regression + decoded.square().mean() * 1e-3).backward()
    out.update(anchors=anc, matches=matches, codes=codes, decoded=decoded, reg=regression,
               deltas_grad=deltas.grad,
               roundtrip=coder.decode_single(codes, anc[fg]) - gt_boxes[matches[fg]])
    return out


def test_focal_dice_iou_giou_ciou_and_box_coding_match_pytorch():
    both(detection_losses)


def yolo(lib, S=3, B=2, C=4):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                         nn.AdaptiveAvgPool2d((S, S)), nn.Flatten(),
                         nn.Linear(8 * S * S, 16), nn.Dropout(0.0), nn.LeakyReLU(0.1),
                         nn.Linear(16, S * S * (C + B * 5)))


def intersection_over_union(torch, boxes_preds, boxes_labels, box_format="midpoint"):
    """The YOLOv1-from-scratch utility: IoU of (..., 4) midpoint boxes."""
    if box_format == "midpoint":
        box1_x1 = boxes_preds[..., 0:1] - boxes_preds[..., 2:3] / 2
        box1_y1 = boxes_preds[..., 1:2] - boxes_preds[..., 3:4] / 2
        box1_x2 = boxes_preds[..., 0:1] + boxes_preds[..., 2:3] / 2
        box1_y2 = boxes_preds[..., 1:2] + boxes_preds[..., 3:4] / 2
        box2_x1 = boxes_labels[..., 0:1] - boxes_labels[..., 2:3] / 2
        box2_y1 = boxes_labels[..., 1:2] - boxes_labels[..., 3:4] / 2
        box2_x2 = boxes_labels[..., 0:1] + boxes_labels[..., 2:3] / 2
        box2_y2 = boxes_labels[..., 1:2] + boxes_labels[..., 3:4] / 2
    x1 = torch.max(box1_x1, box2_x1)
    y1 = torch.max(box1_y1, box2_y1)
    x2 = torch.min(box1_x2, box2_x2)
    y2 = torch.min(box1_y2, box2_y2)
    intersection = (x2 - x1).clamp(0) * (y2 - y1).clamp(0)
    box1_area = abs((box1_x2 - box1_x1) * (box1_y2 - box1_y1))
    box2_area = abs((box2_x2 - box2_x1) * (box2_y2 - box2_y1))
    return intersection / (box1_area + box2_area - intersection + 1e-6)


def yolo_loss_fn(lib, S=3, B=2, C=4):
    torch, nn = lib, lib.nn

    class YoloLoss(nn.Module):
        """Calculate the loss for yolo (v1) model"""

        def __init__(self, S=7, B=2, C=20):
            super(YoloLoss, self).__init__()
            self.mse = nn.MSELoss(reduction="sum")
            self.S = S
            self.B = B
            self.C = C
            # These are from Yolo paper, signifying how much we should
            # pay loss for no object (noobj) and the box coordinates (coord)
            self.lambda_noobj = 0.5
            self.lambda_coord = 5

        def forward(self, predictions, target):
            # predictions are shaped (BATCH_SIZE, S*S(C+B*5) when inputted
            predictions = predictions.reshape(-1, self.S, self.S, self.C + self.B * 5)
            C = self.C
            # Calculate IoU for the two predicted bounding boxes with target bbox
            iou_b1 = intersection_over_union(torch, predictions[..., C + 1:C + 5],
                                             target[..., C + 1:C + 5])
            iou_b2 = intersection_over_union(torch, predictions[..., C + 6:C + 10],
                                             target[..., C + 1:C + 5])
            ious = torch.cat([iou_b1.unsqueeze(0), iou_b2.unsqueeze(0)], dim=0)

            # Take the box with highest IoU out of the two prediction
            # Note that bestbox will be indices of 0, 1 for which bbox was best
            iou_maxes, bestbox = torch.max(ious, dim=0)
            exists_box = target[..., C].unsqueeze(3)  # in paper this is Iobj_i

            # ======================== #
            #   FOR BOX COORDINATES    #
            # ======================== #
            box_predictions = exists_box * (
                (bestbox * predictions[..., C + 6:C + 10]
                 + (1 - bestbox) * predictions[..., C + 1:C + 5])
            )
            box_targets = exists_box * target[..., C + 1:C + 5]

            # Take sqrt of width, height of boxes to ensure that
            box_predictions[..., 2:4] = torch.sign(box_predictions[..., 2:4]) * torch.sqrt(
                torch.abs(box_predictions[..., 2:4] + 1e-6)
            )
            box_targets[..., 2:4] = torch.sqrt(box_targets[..., 2:4])

            box_loss = self.mse(
                torch.flatten(box_predictions, end_dim=-2),
                torch.flatten(box_targets, end_dim=-2),
            )

            # ==================== #
            #   FOR OBJECT LOSS    #
            # ==================== #
            pred_box = (
                bestbox * predictions[..., C + 5:C + 6]
                + (1 - bestbox) * predictions[..., C:C + 1]
            )
            object_loss = self.mse(
                torch.flatten(exists_box * pred_box),
                torch.flatten(exists_box * target[..., C:C + 1]),
            )

            # ======================= #
            #   FOR NO OBJECT LOSS    #
            # ======================= #
            no_object_loss = self.mse(
                torch.flatten((1 - exists_box) * predictions[..., C:C + 1], start_dim=1),
                torch.flatten((1 - exists_box) * target[..., C:C + 1], start_dim=1),
            )
            no_object_loss += self.mse(
                torch.flatten((1 - exists_box) * predictions[..., C + 5:C + 6], start_dim=1),
                torch.flatten((1 - exists_box) * target[..., C:C + 1], start_dim=1),
            )

            # ================== #
            #   FOR CLASS LOSS   #
            # ================== #
            class_loss = self.mse(
                torch.flatten(exists_box * predictions[..., :C], end_dim=-2,),
                torch.flatten(exists_box * target[..., :C], end_dim=-2,),
            )

            loss = (
                self.lambda_coord * box_loss  # first two rows in paper
                + object_loss  # third row in paper
                + self.lambda_noobj * no_object_loss  # forth row in paper
                + class_loss  # fifth row
            )
            return loss

    return YoloLoss(S, B, C)


def yolo_targets(n=4, S=3, C=4, seed=32):
    """YOLOv1 label grids: class one-hot, objectness, (x, y, w, h) in cell units."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(n, S, S, C + 5, dtype=torch.float64)
    has = torch.rand(n, S, S, generator=g) < 0.4
    cls = torch.randint(0, C, (n, S, S), generator=g)
    box = torch.rand(n, S, S, 4, generator=g, dtype=torch.float64)
    box[..., 2:] = box[..., 2:] * 2 + 0.1
    t[..., :C] = torch.nn.functional.one_hot(cls, C).double()
    t[..., C] = has.double()
    t[..., C + 1:] = box
    return (t * has[..., None]).numpy()


def yolo_script(lib, init, steps=4):
    torch, optim = lib, lib.optim
    model = start(lib, yolo, init)
    loss_fn = yolo_loss_fn(lib)
    x = torch.tensor(draw(steps, 4, 3, 12, 12, seed=33))
    y = torch.tensor(np.stack([yolo_targets(seed=34 + i) for i in range(steps)]))
    optimizer = optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    out = {"loss": []}
    for i in range(steps):
        pred = model(x[i])
        loss = loss_fn(pred, y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out["loss"].append(loss.item())
    # inference: cell-relative boxes to image coordinates, best of the two boxes per cell
    with torch.no_grad():
        p = model(x[0]).reshape(-1, 3, 3, 14)
        b1, b2 = p[..., 5:9], p[..., 10:14]
        scores = torch.cat((p[..., 4].unsqueeze(0), p[..., 9].unsqueeze(0)), dim=0)
        best = scores.argmax(0).unsqueeze(-1)
        best_boxes = b1 * (1 - best) + best * b2
        cell_indices = torch.arange(3).repeat(4, 3, 1).unsqueeze(-1)
        cx = 1 / 3 * (best_boxes[..., :1] + cell_indices)
        cy = 1 / 3 * (best_boxes[..., 1:2] + cell_indices.permute(0, 2, 1, 3))
        wy = 1 / 3 * best_boxes[..., 2:4]
        conf = torch.max(p[..., 4], p[..., 9]).unsqueeze(-1)
        pred_cls = p[..., :4].argmax(-1).unsqueeze(-1)
        conv = torch.cat((pred_cls, conf, cx, cy, wy), dim=-1)
        keep = torch.where(conf > conf.median(), conv, torch.zeros_like(conv))
    out.update(converted=conv, keep=keep, w=arrays(model.state_dict()))
    return out


def test_yolo_v1_loss_with_masks_best_box_and_where_matches_pytorch():
    both(yolo_script, initial_state(yolo))


# --- 7. CenterNet: a heatmap focal loss, max-pool NMS and top-k decoding -------------------
def centernet(lib, classes=3):
    nn = lib.nn

    class CenterNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
            self.hm = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(8, classes, 1))
            self.wh = nn.Conv2d(8, 2, 1)
            self.reg = nn.Conv2d(8, 2, 1)
            with lib.no_grad():  # the focal-loss prior (``.data.fill_`` there, documented)
                self.hm[-1].bias.fill_(-2.19)

        def forward(self, x):
            z = self.body(x)
            return {"hm": self.hm(z), "wh": self.wh(z), "reg": self.reg(z)}

    return CenterNet()


def _sigmoid(torch, x):
    y = torch.clamp(x.sigmoid_(), min=1e-4, max=1 - 1e-4)
    return y


def _neg_loss(torch, pred, gt):
    """Modified focal loss. Exactly the same as CornerNet. Runs faster and costs a little bit
    more memory"""
    pos_inds = gt.eq(1).float()
    neg_inds = gt.lt(1).float()

    neg_weights = torch.pow(1 - gt, 4)

    loss = 0

    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * pos_inds
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg_inds

    num_pos = pos_inds.float().sum()
    pos_loss = pos_loss.sum()
    neg_loss = neg_loss.sum()

    if num_pos == 0:
        loss = loss - neg_loss
    else:
        loss = loss - (pos_loss + neg_loss) / num_pos
    return loss


def _gather_feat(feat, ind, mask=None):
    dim = feat.size(2)
    ind = ind.unsqueeze(2).expand(ind.size(0), ind.size(1), dim)
    feat = feat.gather(1, ind)
    if mask is not None:
        mask = mask.unsqueeze(2).expand_as(feat)
        feat = feat[mask]
        feat = feat.view(-1, dim)
    return feat


def _transpose_and_gather_feat(feat, ind):
    feat = feat.permute(0, 2, 3, 1).contiguous()
    feat = feat.view(feat.size(0), -1, feat.size(3))
    feat = _gather_feat(feat, ind)
    return feat


def reg_l1_loss(torch, output, mask, ind, target):
    F = torch.nn.functional
    pred = _transpose_and_gather_feat(output, ind)
    mask = mask.unsqueeze(2).expand_as(pred).float()
    loss = F.l1_loss(pred * mask, target * mask, reduction="sum")
    loss = loss / (mask.sum() + 1e-4)
    return loss


def _nms(torch, heat, kernel=3):
    pad = (kernel - 1) // 2

    hmax = torch.nn.functional.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
    keep = (hmax == heat).float()
    return heat * keep


def _topk(torch, scores, K=40):
    batch, cat, height, width = scores.size()

    topk_scores, topk_inds = torch.topk(scores.view(batch, cat, -1), K)

    topk_inds = topk_inds % (height * width)
    topk_ys = (topk_inds / width).int().float()
    topk_xs = (topk_inds % width).int().float()

    topk_score, topk_ind = torch.topk(topk_scores.view(batch, -1), K)
    topk_clses = (topk_ind / K).int()
    topk_inds = _gather_feat(topk_inds.view(batch, -1, 1), topk_ind).view(batch, K)
    topk_ys = _gather_feat(topk_ys.view(batch, -1, 1), topk_ind).view(batch, K)
    topk_xs = _gather_feat(topk_xs.view(batch, -1, 1), topk_ind).view(batch, K)

    return topk_score, topk_inds, topk_clses, topk_ys, topk_xs


def ctdet_decode(torch, heat, wh, reg=None, K=100):
    batch, cat, height, width = heat.size()

    # heat = torch.sigmoid(heat)
    # perform nms on heatmaps
    heat = _nms(torch, heat)

    scores, inds, clses, ys, xs = _topk(torch, heat, K=K)
    if reg is not None:
        reg = _transpose_and_gather_feat(reg, inds)
        reg = reg.view(batch, K, 2)
        xs = xs.view(batch, K, 1) + reg[:, :, 0:1]
        ys = ys.view(batch, K, 1) + reg[:, :, 1:2]
    else:
        xs = xs.view(batch, K, 1) + 0.5
        ys = ys.view(batch, K, 1) + 0.5
    wh = _transpose_and_gather_feat(wh, inds)
    wh = wh.view(batch, K, 2)
    clses = clses.view(batch, K, 1).float()
    scores = scores.view(batch, K, 1)
    bboxes = torch.cat([xs - wh[..., 0:1] / 2,
                        ys - wh[..., 1:2] / 2,
                        xs + wh[..., 0:1] / 2,
                        ys + wh[..., 1:2] / 2], dim=2)
    detections = torch.cat([bboxes, scores, clses], dim=2)

    return detections


def gaussian2D(shape, sigma=1):
    m, n = [(ss - 1.) / 2. for ss in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]

    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def draw_umich_gaussian(heatmap, center, radius, k=1):
    diameter = 2 * radius + 1
    gaussian = gaussian2D((diameter, diameter), sigma=diameter / 6)

    x, y = int(center[0]), int(center[1])

    height, width = heatmap.shape[0:2]

    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)

    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:  # TODO debug
        np.maximum(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def centernet_targets(n=2, classes=3, size=8, objects=3, max_objs=5, seed=40):
    """CenterNet's ctdet targets: Gaussian heatmaps, sizes, offsets, indices and masks."""
    g = torch.Generator().manual_seed(seed)
    hm = np.zeros((n, classes, size, size))
    wh = np.zeros((n, max_objs, 2))
    reg = np.zeros((n, max_objs, 2))
    ind = np.zeros((n, max_objs), dtype=np.int64)
    mask = np.zeros((n, max_objs), dtype=np.uint8)
    for b in range(n):
        for k in range(objects):
            ct = torch.rand(2, generator=g, dtype=torch.float64).numpy() * (size - 1)
            cls = int(torch.randint(0, classes, (1,), generator=g))
            ct_int = ct.astype(np.int32)
            draw_umich_gaussian(hm[b, cls], ct_int, radius=1 + k % 2)
            wh[b, k] = 1.0 + ct / 2
            ind[b, k] = ct_int[1] * size + ct_int[0]
            reg[b, k] = ct - ct_int
            mask[b, k] = 1
    return hm, wh, reg, ind, mask


def centernet_script(lib, init, steps=3):
    """In float32, as CenterNet runs (its ``.float()`` masks would mix float dtypes in float64,
    which nodegrad refuses: see the test below)."""
    torch, optim = lib, lib.optim
    model = start(lib, centernet, init, dtype="float32")
    x = torch.tensor(draw(steps, 2, 3, 8, 8, seed=41)).float()
    hm, wh, reg, ind, mask = (torch.tensor(a) for a in centernet_targets())
    hm, wh, reg = hm.float(), wh.float(), reg.float()
    optimizer = optim.Adam(model.parameters(), lr=1.25e-4 * 40)
    out = {"loss": [], "parts": []}
    for i in range(steps):
        output = model(x[i])
        output["hm"] = _sigmoid(torch, output["hm"])
        hm_loss = _neg_loss(torch, output["hm"], hm)
        wh_loss = reg_l1_loss(torch, output["wh"], mask, ind, wh)
        off_loss = reg_l1_loss(torch, output["reg"], mask, ind, reg)
        loss = 1 * hm_loss + 0.1 * wh_loss + 1 * off_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out["loss"].append(loss.item())
        out["parts"].append([hm_loss.item(), wh_loss.item(), off_loss.item()])
    model.eval()
    with torch.no_grad():
        output = model(x[0])
        dets = ctdet_decode(torch, output["hm"].sigmoid_(), output["wh"], reg=output["reg"], K=6)
        nms = _nms(torch, hm)
    out.update(dets=dets, nms=nms, w=arrays(model.state_dict()),
               no_pos=_neg_loss(torch, torch.full((1, 1, 2, 2), 0.3).float(),
                                torch.zeros(1, 1, 2, 2).float()))
    return out


def test_centernet_heatmap_focal_loss_and_topk_decoding_match_pytorch():
    both(centernet_script, initial_state(centernet), tol=2e-5)


def test_float32_masks_on_float64_heatmaps_raise_as_documented():
    """nodegrad never upcasts floats silently (documented): CenterNet's ``gt.eq(1).float()``
    against a float64 prediction raises where PyTorch promotes."""
    pred, gt = ng.full((1, 1, 2, 2), 0.3), ng.tensor([[[[1.0, 0.5], [0.0, 1.0]]]])
    with pytest.raises(ng.DTypeError, match="float64 and float32|float32 and float64"):
        _neg_loss(ng, pred, gt)
    ref = _neg_loss(torch, torch.full((1, 1, 2, 2), 0.3), torch.tensor([[[[1.0, 0.5],
                                                                          [0.0, 1.0]]]]))
    got = _neg_loss(ng, pred.float(), gt.float())
    assert_same(got, ref, 1e-6)


# --- 8. CRNN: convolutions to a sequence, a bidirectional LSTM, CTC, greedy decoding -------
def crnn(lib, nclass=5, nh=6):
    nn, F = lib.nn, lib.nn.functional

    class BidirectionalLSTM(nn.Module):

        def __init__(self, nIn, nHidden, nOut):
            super(BidirectionalLSTM, self).__init__()

            self.rnn = nn.LSTM(nIn, nHidden, bidirectional=True)
            self.embedding = nn.Linear(nHidden * 2, nOut)

        def forward(self, input):
            recurrent, _ = self.rnn(input)
            T, b, h = recurrent.size()
            t_rec = recurrent.view(T * b, h)

            output = self.embedding(t_rec)  # [T * b, nOut]
            output = output.view(T, b, -1)

            return output

    class CRNN(nn.Module):

        def __init__(self, imgH, nc, nclass, nh, leakyRelu=False):
            super(CRNN, self).__init__()
            assert imgH % 8 == 0, 'imgH has to be a multiple of 8'

            ks = [3, 3, 3]
            ps = [1, 1, 1]
            ss = [1, 1, 1]
            nm = [4, 6, 8]

            cnn = nn.Sequential()

            def convRelu(i, batchNormalization=False):
                nIn = nc if i == 0 else nm[i - 1]
                nOut = nm[i]
                cnn.add_module('conv{0}'.format(i),
                               nn.Conv2d(nIn, nOut, ks[i], ss[i], ps[i]))
                if batchNormalization:
                    cnn.add_module('batchnorm{0}'.format(i), nn.BatchNorm2d(nOut))
                if leakyRelu:
                    cnn.add_module('relu{0}'.format(i),
                                   nn.LeakyReLU(0.2, inplace=True))
                else:
                    cnn.add_module('relu{0}'.format(i), nn.ReLU(True))

            convRelu(0)
            cnn.add_module('pooling{0}'.format(0), nn.MaxPool2d(2, 2))  # 4x16
            convRelu(1, True)
            cnn.add_module('pooling{0}'.format(1),
                           nn.MaxPool2d((2, 2), (2, 1), (0, 1)))  # 2x17
            convRelu(2, True)
            cnn.add_module('pooling{0}'.format(2),
                           nn.MaxPool2d((2, 2), (2, 1), (0, 1)))  # 1x18

            self.cnn = cnn
            self.rnn = nn.Sequential(
                BidirectionalLSTM(nm[-1], nh, nh),
                BidirectionalLSTM(nh, nh, nclass))

        def forward(self, input):
            # conv features
            conv = self.cnn(input)
            b, c, h, w = conv.size()
            assert h == 1, "the height of conv must be 1"
            conv = conv.squeeze(2)
            conv = conv.permute(2, 0, 1)  # [w, b, c]

            # rnn features
            output = self.rnn(conv)

            # add log_softmax to converge output
            output = F.log_softmax(output, dim=2)

            return output

    return CRNN(8, 1, nclass, nh, leakyRelu=True)


class StrLabelConverter:
    """CRNN's converter between strings and CTC labels (0 is the blank)."""

    def __init__(self, alphabet):
        self.alphabet = alphabet + '-'  # for `-1` index
        self.dict = {}
        for i, char in enumerate(alphabet):
            # NOTE: 0 is reserved for 'blank' required by wrap_ctc
            self.dict[char] = i + 1

    def encode(self, torch, text):
        length = [len(s) for s in text]
        text = ''.join(text)
        text = [self.dict[char] for char in text]
        return (torch.IntTensor(text), torch.IntTensor(length))

    def decode(self, t, length, raw=False):
        if length.numel() == 1:
            length = length[0]
            assert t.numel() == length, "text with length: {} does not match declared length: {}".format(t.numel(), length)  # noqa: E501
            if raw:
                return ''.join([self.alphabet[i - 1] for i in t])
            else:
                char_list = []
                for i in range(length):
                    if t[i] != 0 and (not (i > 0 and t[i - 1] == t[i])):
                        char_list.append(self.alphabet[t[i] - 1])
                return ''.join(char_list)
        else:
            # batch mode
            assert t.numel() == length.sum(), "texts with length: {} does not match declared length: {}".format(t.numel(), length.sum())  # noqa: E501
            texts = []
            index = 0
            for i in range(length.numel()):
                ln = length[i]
                texts.append(
                    self.decode(
                        t[index:index + ln], length[i:i + 1], raw=raw))
                index += ln
            return texts


def crnn_script(lib, init, steps=4):
    torch, nn, optim = lib, lib.nn, lib.optim
    model = start(lib, crnn, init)
    converter = StrLabelConverter("abcd")
    words = [["ab", "cd", "dad", "b"], ["ccc", "abcd", "a", "bb"], ["dd", "", "cab", "ba"],
             ["a", "bd", "dcba", "aa"]]
    images = torch.tensor(draw(steps, 4, 1, 8, 32, seed=42))
    criterion = nn.CTCLoss(zero_infinity=True)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    out = {"loss": [], "decoded": []}
    for i in range(steps):
        text, length = converter.encode(torch, words[i])
        batch_size = images[i].size(0)
        preds = model(images[i])
        preds_size = torch.IntTensor([preds.size(0)] * batch_size)
        cost = criterion(preds, text, preds_size, length) / batch_size
        model.zero_grad()
        cost.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5)
        optimizer.step()
        out["loss"].append(cost.item())
        _, preds = preds.max(2)
        preds = preds.transpose(1, 0).contiguous().view(-1)
        out["decoded"].append(converter.decode(preds, preds_size, raw=False))
    # padded (N, S) targets, every reduction, an impossible target zeroed or infinite
    model.eval()
    with torch.no_grad():
        logits = model(images[0])
    # through log_softmax: PyTorch's ctc gradient in a leaf ``log_probs`` is the one in the
    # logits, nodegrad's the exact one in log_probs (documented); composed they agree
    logits.requires_grad_(True)
    log_probs = logits.log_softmax(2)
    T = log_probs.size(0)
    targets = torch.tensor([[1, 2, 0, 0], [3, 3, 3, 3], [4] * 4, [2, 1, 0, 0]])
    target_lengths = torch.tensor([2, 4, 4, 2])
    input_lengths = torch.tensor([T, T, 3, T - 2])
    F = nn.functional
    res = {}
    for red in ("none", "sum", "mean"):
        for zi in (False, True):
            res[f"{red}_{zi}"] = F.ctc_loss(log_probs, targets, input_lengths, target_lengths,
                                            reduction=red, zero_infinity=zi)
    loss = res["mean_True"] + res["none_True"][0] * 0.5
    loss.backward()
    out.update(ctc=res, ctc_grad=logits.grad, w=arrays(model.state_dict()))
    return out


def test_crnn_with_ctc_adadelta_and_greedy_decoding_matches_pytorch():
    both(crnn_script, initial_state(crnn), tol=1e-9)


# --- 9. segmentation and restoration pieces: antialiasing, pads, warps, SSIM, Lovász, OHEM ---
@pytest.mark.parametrize("mode,size", [("bilinear", (3, 4)), ("bicubic", (3, 5)),
                                       ("bilinear", (7, 9)), ("bicubic", (2, 11))])
def test_antialiased_interpolate_matches_pytorch(mode, size):
    def fn(lib):
        F = lib.nn.functional
        x = lib.tensor(draw(2, 2, 8, 10, seed=43), requires_grad=True)
        y = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        (y * lib.tensor(draw(*y.shape, seed=44))).sum().backward()
        return {"y": y, "g": x.grad}
    both(fn)


def pads_and_transposed(lib):
    nn, F = lib.nn, lib.nn.functional
    x = lib.tensor(draw(1, 2, 5, 6, seed=45), requires_grad=True)
    out = {}
    for mode in ("constant", "reflect", "replicate", "circular"):
        out[mode] = F.pad(x, (2, 1, 1, 2), mode=mode)
    out["negative"] = F.pad(x, [-1, 2, 0, -2])  # a crop on one side, a pad on the other
    out["value"] = F.pad(x, (1, 1), value=-1.5)
    out["reflection_layer"] = nn.ReflectionPad2d(1)(x)
    out["replication_layer"] = nn.ReplicationPad2d((0, 1, 2, 0))(x)
    out["zero_layer"] = nn.ZeroPad2d((1, 0, 0, 1))(x)
    torch = lib
    torch.manual_seed(0)
    up = nn.ConvTranspose2d(2, 3, kernel_size=3, stride=2, padding=1).to(lib.float64)
    with lib.no_grad():
        up.weight.copy_(lib.tensor(draw(2, 3, 3, 3, seed=46)))
        up.bias.copy_(lib.tensor(draw(3, seed=47)))
    out["output_size"] = up(x, output_size=[10, 12])
    out["output_size_default"] = up(x)
    out["output_padding"] = F.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1,
                                               output_padding=1)
    total = sum((v * v).sum() for v in out.values())
    total.backward()
    out["g"] = x.grad
    out["gw"] = up.weight.grad
    return out


def test_pad_modes_negative_pads_and_transposed_conv_output_size_match_pytorch():
    both(pads_and_transposed)


def seg_losses(lib):
    F, nn = lib.nn.functional, lib.nn
    torch = lib
    logits = torch.tensor(draw(2, 4, 5, 6, seed=48), requires_grad=True)
    target = draw(2, 5, 6, seed=49, kind="randint", high=4)
    target[0, 0] = 255
    target = torch.tensor(target)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5])
    out = {}
    out["ce_w"] = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    out["ce_ls"] = nn.CrossEntropyLoss(weight=weight, ignore_index=255,
                                       label_smoothing=0.1)(logits, target)
    out["ce_none"] = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    out["nll"] = F.nll_loss(F.log_softmax(logits, 1), target, ignore_index=255,
                            reduction="sum")
    # multi-class focal loss over pixels
    ce = F.cross_entropy(logits, target, reduction="none", ignore_index=255)
    pt = torch.exp(-ce)
    out["focal"] = ((1 - pt) ** 2 * ce).mean()
    # OHEM: the hardest 25% of the valid pixels
    valid = target != 255
    pixel_losses = ce[valid].contiguous().view(-1)
    pixel_losses, _ = pixel_losses.sort(descending=True)
    out["ohem"] = pixel_losses[:int(0.25 * pixel_losses.numel())].mean()
    hard = torch.topk(ce.flatten(), k=7)[0]
    out["topk"] = hard.mean()
    # resizing the label map: nearest on a float copy, back to long
    resized = F.interpolate(target[:, None].float(), size=(9, 4), mode="nearest").long()
    out["resized"] = resized
    out["resized_u8"] = F.interpolate(target[:, None].to(torch.uint8), scale_factor=2,
                                      mode="nearest")
    sum(v for k, v in out.items() if k not in ("ce_none", "resized", "resized_u8")).backward()
    out["g"] = logits.grad
    return out


def test_segmentation_cross_entropy_forms_focal_ohem_and_label_resizing_match_pytorch():
    both(seg_losses)


def flow_warp(lib, padding_mode, align_corners):
    """RAFT / BasicVSR's flow_warp: sample x at pixel + flow (x, y order)."""
    torch, F = lib, lib.nn.functional
    x = torch.tensor(draw(2, 3, 5, 6, seed=50), requires_grad=True)
    flow = torch.tensor(draw(2, 5, 6, 2, seed=51) * 1.5, requires_grad=True)
    _, _, h, w = x.size()
    # create mesh grid
    grid_y, grid_x = torch.meshgrid(torch.arange(0, h), torch.arange(0, w), indexing="ij")
    grid = torch.stack((grid_x, grid_y), 2).type_as(x)  # (h, w, 2)
    grid.requires_grad = False

    vgrid = grid + flow
    # scale grid to [-1,1]
    vgrid_x = 2.0 * vgrid[:, :, :, 0] / max(w - 1, 1) - 1.0
    vgrid_y = 2.0 * vgrid[:, :, :, 1] / max(h - 1, 1) - 1.0
    vgrid_scaled = torch.stack((vgrid_x, vgrid_y), dim=3)
    output = F.grid_sample(x, vgrid_scaled, mode="bilinear", padding_mode=padding_mode,
                           align_corners=align_corners)
    (output * torch.tensor(draw(*output.shape, seed=52))).sum().backward()
    return {"out": output, "gx": x.grad, "gflow": flow.grad}


@pytest.mark.parametrize("padding_mode,align_corners", [("zeros", True), ("border", True),
                                                        ("reflection", False)])
def test_optical_flow_warp_matches_pytorch(padding_mode, align_corners):
    both(flow_warp, padding_mode, align_corners)


def psp(lib):
    nn, F = lib.nn, lib.nn.functional
    torch = lib

    class PPM(nn.Module):
        def __init__(self, in_dim, reduction_dim, bins):
            super(PPM, self).__init__()
            self.features = []
            for bin in bins:
                self.features.append(nn.Sequential(
                    nn.AdaptiveAvgPool2d(bin),
                    nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                    nn.BatchNorm2d(reduction_dim),
                    nn.ReLU(inplace=True)
                ))
            self.features = nn.ModuleList(self.features)

        def forward(self, x):
            x_size = x.size()
            out = [x]
            for f in self.features:
                out.append(F.interpolate(f(x), x_size[2:], mode='bilinear', align_corners=True))
            return torch.cat(out, 1)

    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), PPM(4, 2, (1, 2, 3, 6)),
                         nn.Conv2d(12, 3, 1))


def psp_script(lib, init, steps=3):
    F = lib.nn.functional
    model = start(lib, psp, init)
    x = lib.tensor(draw(steps, 2, 3, 7, 9, seed=53))
    y = lib.tensor(draw(steps, 2, 7, 9, seed=54, kind="randint", high=3))
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = []
    for i in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i]), y[i])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"loss": losses, "w": arrays(model.state_dict())}


def test_pspnet_pyramid_pooling_with_uneven_bins_matches_pytorch():
    both(psp_script, initial_state(psp))


def gaussian(torch, window_size, sigma):
    gauss = torch.Tensor([math.exp(-(x - window_size // 2) ** 2 / float(2 * sigma ** 2))
                          for x in range(window_size)])
    return gauss / gauss.sum()


def create_window(torch, window_size, channel):
    _1D_window = gaussian(torch, window_size, 1.5).unsqueeze(1)
    _2D_window = _1D_window.mm(_1D_window.t()).float().unsqueeze(0).unsqueeze(0)
    window = _2D_window.expand(channel, 1, window_size, window_size).contiguous()
    return window


def _ssim(torch, img1, img2, window, window_size, channel, size_average=True):
    F = torch.nn.functional
    mu1 = F.conv2d(img1, window, padding=window_size // 2, groups=channel)
    mu2 = F.conv2d(img2, window, padding=window_size // 2, groups=channel)

    mu1_sq = mu1.pow(2)
    mu2_sq = mu2.pow(2)
    mu1_mu2 = mu1 * mu2

    sigma1_sq = F.conv2d(img1 * img1, window, padding=window_size // 2, groups=channel) - mu1_sq
    sigma2_sq = F.conv2d(img2 * img2, window, padding=window_size // 2, groups=channel) - mu2_sq
    sigma12 = F.conv2d(img1 * img2, window, padding=window_size // 2, groups=channel) - mu1_mu2

    C1 = 0.01 ** 2
    C2 = 0.03 ** 2

    ssim_map = (((2 * mu1_mu2 + C1) * (2 * sigma12 + C2))
                / ((mu1_sq + mu2_sq + C1) * (sigma1_sq + sigma2_sq + C2)))

    if size_average:
        return ssim_map.mean()
    else:
        return ssim_map.mean(1).mean(1).mean(1)


def lovasz_grad(gt_sorted):
    """Computes gradient of the Lovasz extension w.r.t sorted errors
    See Alg. 1 in paper
    """
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.float().cumsum(0)
    union = gts + (1 - gt_sorted).float().cumsum(0)
    jaccard = 1. - intersection / union
    if p > 1:  # cover 1-pixel case
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def lovasz_hinge_flat(torch, logits, labels):
    """Binary Lovasz hinge loss"""
    F = torch.nn.functional
    if len(labels) == 0:
        # only void pixels, the gradients should be 0
        return logits.sum() * 0.
    signs = 2. * labels.float() - 1.
    errors = (1. - logits * signs)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    perm = perm.data
    gt_sorted = labels[perm]
    grad = lovasz_grad(gt_sorted)
    loss = torch.dot(F.relu(errors_sorted), grad)
    return loss


def lovasz_softmax_flat(torch, probas, labels, classes='present'):
    """Multi-class Lovasz-Softmax loss"""
    if probas.numel() == 0:
        # only void pixels, the gradients should be 0
        return probas * 0.
    C = probas.size(1)
    losses = []
    class_to_sum = list(range(C)) if classes in ['all', 'present'] else classes
    for c in class_to_sum:
        fg = (labels == c).float()  # foreground for class c
        if (classes == 'present' and fg.sum() == 0):
            continue
        class_pred = probas[:, c]
        errors = (fg - class_pred).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        perm = perm.data
        fg_sorted = fg[perm]
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg_sorted)))
    return sum(losses) / len(losses)


def restoration_losses(lib):
    """In float32, as these are written (``.float()`` windows and masks)."""
    torch, F = lib, lib.nn.functional
    img1 = torch.tensor(draw(2, 3, 9, 10, seed=55, kind="rand")).float().requires_grad_()
    img2 = torch.tensor(draw(2, 3, 9, 10, seed=56, kind="rand")).float()
    window = create_window(torch, 5, 3).type_as(img1)
    ssim = _ssim(torch, img1, img2, window, 5, 3)
    ssim_per = _ssim(torch, img1, img2, window, 5, 3, size_average=False)
    tv = (torch.sum(torch.abs(img1[:, :, :, :-1] - img1[:, :, :, 1:]))
          + torch.sum(torch.abs(img1[:, :, :-1, :] - img1[:, :, 1:, :])))
    logits = torch.tensor(draw(30, seed=57)).float().requires_grad_()
    labels = torch.tensor(draw(30, seed=58, kind="randint", high=2))
    hinge = lovasz_hinge_flat(torch, logits, labels)
    scores = torch.tensor(draw(24, 3, seed=59)).float().requires_grad_()
    probas = F.softmax(scores, dim=1)
    lab = torch.tensor(draw(24, seed=60, kind="randint", high=2))  # class 2 absent
    lsoft = lovasz_softmax_flat(torch, probas, lab)
    ((1 - ssim) + 1e-3 * tv + hinge + lsoft).backward()
    return {"ssim": ssim, "ssim_per": ssim_per, "tv": tv, "hinge": hinge, "lsoft": lsoft,
            "window": window, "g1": img1.grad, "gl": logits.grad, "gs": scores.grad}


def test_ssim_total_variation_and_lovasz_losses_match_pytorch():
    both(restoration_losses, tol=2e-6)


def segnet(lib):
    nn, F = lib.nn, lib.nn.functional

    class SegNet(nn.Module):
        """SegNet's encoder-decoder: max-pool indices carried to max-unpooling."""

        def __init__(self, in_ch=2, classes=3):
            super().__init__()
            self.enc1 = nn.Sequential(nn.Conv2d(in_ch, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.PReLU())
            self.enc2 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6),
                                      nn.PReLU(6))
            self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
            self.unpool = nn.MaxUnpool2d(2, stride=2)
            self.dec2 = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU())
            self.dec1 = nn.Conv2d(4, classes, 3, padding=1)
            self.drop = nn.Dropout2d(0.0)

        def forward(self, x):
            size1 = x.size()
            x, idx1 = self.pool(self.enc1(x))
            size2 = x.size()
            x, idx2 = F.max_pool2d(self.enc2(x), 2, 2, return_indices=True)
            x = self.drop(x)
            x = F.max_unpool2d(x, idx2, 2, 2, output_size=size2)
            x = self.dec2(x)
            x = self.unpool(x, idx1, output_size=size1)
            return self.dec1(x)

    return SegNet()


def segnet_script(lib, init, steps=3):
    torch, F = lib, lib.nn.functional
    model = start(lib, segnet, init)
    x = torch.tensor(draw(steps, 2, 2, 9, 10, seed=61))
    y = torch.tensor(draw(steps, 2, 9, 10, seed=62, kind="randint", high=3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    out = {"loss": [], "dice": []}
    for i in range(steps):
        logits = model(x[i])
        probs = F.softmax(logits, dim=1)
        # one-hot by scatter_, a Dice by einsum
        one_hot = torch.zeros_like(probs).scatter_(1, y[i].unsqueeze(1), 1)
        inter = torch.einsum("bchw,bchw->bc", probs, one_hot)
        card = torch.einsum("bchw->bc", probs + one_hot)
        dice = (2 * inter + 1) / (card + 1)
        loss = F.cross_entropy(logits, y[i]) + (1 - dice).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out["loss"].append(loss.item())
        out["dice"].append(dice)
    with torch.no_grad():
        pred = model(x[0]).argmax(dim=1, keepdim=True)
        # per-class IoU with nanmean over classes absent from both
        ious = []
        for c in range(4):
            p, t = pred[:, 0] == c, y[0] == c
            inter = (p & t).sum().double()
            union = (p | t).sum().double()
            ious.append(inter / union if union > 0 else torch.tensor(float("nan")))
        miou = torch.nanmean(torch.stack(ious))
    out.update(pred=pred, miou=miou, w=arrays(model.state_dict()))
    return out


def test_segnet_max_unpooling_scatter_one_hot_and_einsum_dice_match_pytorch():
    both(segnet_script, initial_state(segnet))


def second_order(lib):
    """A gradient penalty through sampling: the gradient's norm, differentiated again."""
    torch, F = lib, lib.nn.functional
    x = torch.tensor(draw(1, 2, 4, 5, seed=63), requires_grad=True)
    theta = torch.tensor(draw(1, 2, 3, seed=64) * 0.3 + np.array([[1.0, 0, 0], [0, 1, 0]]),
                         requires_grad=True)
    out = {}
    for mode in ("bilinear", "bicubic"):
        grid = F.affine_grid(theta, [1, 2, 3, 4], align_corners=False)
        y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        up = F.interpolate(y, scale_factor=2, mode=mode, align_corners=False)
        score = (up.tanh() * torch.tensor(draw(*up.shape, seed=65))).sum()
        gx, gt = torch.autograd.grad(score, (x, theta), create_graph=True)
        penalty = (gx.pow(2).sum() + gt.pow(2).sum() - 1) ** 2
        hx, ht = torch.autograd.grad(penalty, (x, theta))
        out[mode] = [score, gx, gt, penalty, hx, ht]
    return out


def test_double_backward_through_grid_sample_and_interpolate_matches_pytorch():
    both(second_order, tol=1e-9)


def unfold_fold(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional
    x = torch.tensor(draw(2, 3, 7, 8, seed=66), requires_grad=True)
    cols = F.unfold(x, kernel_size=(3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
    back = F.fold(cols, output_size=(7, 8), kernel_size=(3, 2), dilation=(1, 2), padding=1,
                  stride=(2, 1))
    ones = torch.ones_like(x)
    divisor = F.fold(F.unfold(ones, 3, padding=1), (7, 8), 3, padding=1)
    mean_filter = F.fold(F.unfold(x, 3, padding=1), (7, 8), 3, padding=1) / divisor
    patches = nn.Unfold(kernel_size=2, stride=2)(x[..., :6, :8])
    (back.square().sum() + mean_filter.sum() + patches.pow(3).sum()).backward()
    return {"cols": cols, "back": back, "mean": mean_filter, "patches": patches, "g": x.grad}


def test_unfold_fold_local_patches_match_pytorch():
    both(unfold_fold)


@pytest.mark.parametrize("kw", [
    {"scale_factor": 2, "mode": "nearest", "align_corners": True},
    {"size": (4, 4), "scale_factor": 2},
    {"scale_factor": (2, 2, 2), "mode": "bilinear"},
    {"size": (4, 4, 4), "mode": "bilinear"},
    {"mode": "bilinear"},
    {"scale_factor": 2, "mode": "linear"},
    {"scale_factor": 2, "mode": "cubic"},
    {"scale_factor": 2, "mode": "nearest", "antialias": True},
])
def test_bad_interpolate_arguments_raise_as_in_pytorch(kw):
    with pytest.raises((ValueError, NotImplementedError, RuntimeError)):
        torch.nn.functional.interpolate(torch.zeros(1, 1, 3, 3), **kw)
    with pytest.raises((ValueError, NotImplementedError, RuntimeError, TypeError)) as e:
        ng.nn.functional.interpolate(ng.zeros(1, 1, 3, 3), **kw)
    assert "interpolate" in str(e.value) or "align_corners" in str(e.value) or "mode" in str(
        e.value), str(e.value)
