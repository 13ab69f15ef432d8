"""What the port tests (``test_ports_*.py``) share: PyTorch on one thread, and nested records
of results compared element by element."""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """PyTorch on one thread: small programs run faster than with its default pool (imported
    into a test module, this fixture applies to that module)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def arr(x):
    """A tensor of either library (or a nested record of them) as float64 NumPy arrays (copies);
    other values as they are."""
    if isinstance(x, dict):
        return {k: arr(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [arr(v) for v in x]
    if hasattr(x, "detach"):  # a copy: PyTorch's numpy() shares memory, written later
        return np.array(x.detach().numpy(), np.float64)
    return x


def arrays(d: dict) -> dict[str, np.ndarray]:
    """A state dict's tensors as float64 arrays."""
    return {k: arr(v) for k, v in d.items()}


def assert_same(a, b, tol: float = 1e-10, where: str = "") -> None:
    """Nested records (dicts in the same key order, lists, arrays, numbers, strings, bools)
    equal to ``tol``; ``where`` names the first difference."""
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], tol, f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, tol, f"{where}[{i}]")
    elif isinstance(a, str | bool | type(None)):
        assert a == b, f"{where}: {a!r} != {b!r}"
    else:
        a, b = np.asarray(arr(a), float), np.asarray(arr(b), float)
        assert a.shape == b.shape, f"{where}: {a.shape} != {b.shape}"
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=where)


@pytest.fixture(scope="module")
def float64_one_thread():
    """Both libraries default to float64 (programs that write ``lib.tensor(list)``) and PyTorch
    runs on one thread, for one module: ``pytestmark = pytest.mark.usefixtures(...)``."""
    import nodegrad as ng

    torch = pytest.importorskip("torch")
    threads, tdt, ndt = torch.get_num_threads(), torch.get_default_dtype(), ng.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(tdt)
    ng.set_default_dtype(ndt)


def seeded(lib, model, seed: int = 0):
    """``model`` with the same initial weights in both libraries: uniform(±1/sqrt(fan_in)) from
    a seeded NumPy generator, parameter by parameter; buffers keep their values."""
    rng = np.random.default_rng(seed)
    init = dict(model.state_dict())
    for k, v in model.named_parameters():
        shape = tuple(v.shape)
        bound = 1 / np.sqrt(shape[1] if len(shape) > 1 else max(shape[0], 1))
        init[k] = lib.tensor(rng.uniform(-bound, bound, shape))
    model.load_state_dict(init)
    return model


# --- programs run from PyTorch's seeded weights on arrays PyTorch draws ----------------------
def draw(*shape, seed: int = 0, kind: str = "randn", high: int = 2) -> np.ndarray:
    """Arrays drawn with PyTorch's generator, fed to both libraries as NumPy."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    if kind == "randint":
        return torch.randint(0, high, shape, generator=g).numpy()
    return getattr(torch, kind)(*shape, generator=g, dtype=torch.float64).numpy()


def initial_state(build, *args, **kw) -> dict[str, np.ndarray]:
    """``build(torch)``'s seeded float64 state dict as NumPy arrays."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return {k: v.detach().numpy().copy()
            for k, v in build(torch, *args, **kw).double().state_dict().items()}


def start(lib, build, init, *args, dtype: str = "float64", **kw):
    """``build(lib)`` holding ``init`` in ``dtype``; nodegrad's state dict must have PyTorch's
    keys."""
    model = build(lib, *args, **kw).to(getattr(lib, dtype))
    assert list(model.state_dict()) == list(init)
    model.load_state_dict({k: lib.tensor(v).to(getattr(lib, dtype)) if v.dtype.kind == "f"
                           else lib.tensor(v) for k, v in init.items()})
    return model


def seeded_build(lib, build, seed: int = 0):
    """``build(lib)`` in float64 holding the initial weights PyTorch's ``build(torch)`` draws
    for ``seed`` (nodegrad's state dict must have PyTorch's keys and shapes)."""
    import nodegrad as ng

    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    init = {k: v.detach().numpy().copy() for k, v in build(torch).double().state_dict().items()}
    model = build(lib).to(lib.float64)
    if lib is ng:
        assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
            [(k, v.shape) for k, v in init.items()]
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def both(fn, *args, tol: float = 1e-10, **kw):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    import nodegrad as ng

    ref = fn(pytest.importorskip("torch"), *args, **kw)
    got = fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


def accuracy(lib, output, target, topk=(1,)):
    """The ImageNet example's top-k accuracy in percent (MoCo's and the others' copy of it),
    written against ``lib``."""
    with lib.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        res = []
        for k in topk:
            correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


def frozen_batchnorm2d(lib):
    """torchvision's ``FrozenBatchNorm2d`` written against ``lib`` (DETR's backbones and
    fine-tuning code use it): batch norm with fixed statistics and affine terms, all buffers,
    whose ``_load_from_state_dict`` drops ``num_batches_tracked`` so a ``BatchNorm2d``
    checkpoint loads strictly."""
    nn = lib.nn

    class FrozenBatchNorm2d(nn.Module):
        def __init__(self, num_features: int, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            self.register_buffer("weight", lib.ones(num_features))
            self.register_buffer("bias", lib.zeros(num_features))
            self.register_buffer("running_mean", lib.zeros(num_features))
            self.register_buffer("running_var", lib.ones(num_features))

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                  missing_keys, unexpected_keys, error_msgs):
            num_batches_tracked_key = prefix + "num_batches_tracked"
            if num_batches_tracked_key in state_dict:
                del state_dict[num_batches_tracked_key]
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)

        def forward(self, x):
            w = self.weight.reshape(1, -1, 1, 1)
            b = self.bias.reshape(1, -1, 1, 1)
            rv = self.running_var.reshape(1, -1, 1, 1)
            rm = self.running_mean.reshape(1, -1, 1, 1)
            scale = w * (rv + self.eps).rsqrt()
            bias = b - rm * scale
            return x * scale + bias

    return FrozenBatchNorm2d


def square_distance(lib, src, dst):
    """PointNet++'s ``square_distance`` (its reference repository's pointnet2_utils, which the
    point-cloud and graph ports both use): every pair's squared distance, src [B, N, C] and
    dst [B, M, C] -> [B, N, M], as ``-2 src dstᵀ + |src|² + |dst|²``."""
    B, N, _ = src.shape
    _, M, _ = dst.shape
    dist = -2 * lib.matmul(src, dst.permute(0, 2, 1))
    dist += lib.sum(src ** 2, -1).view(B, N, 1)
    dist += lib.sum(dst ** 2, -1).view(B, 1, M)
    return dist


class BoxCoder:
    """torchvision.models.detection._utils.BoxCoder written against ``lib`` (passed as
    ``torch``): (dx, dy, dw, dh) against anchors, the log-scales clamped on decoding (the
    dense-prediction and detection ports both use it)."""

    def __init__(self, torch, weights, bbox_xform_clip: float = math.log(1000.0 / 16)) -> None:
        self.torch = torch
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode_single(self, reference_boxes, proposals):
        torch = self.torch
        dtype = reference_boxes.dtype
        device = reference_boxes.device
        weights = torch.as_tensor(self.weights, dtype=dtype, device=device)
        wx = weights[0]
        wy = weights[1]
        ww = weights[2]
        wh = weights[3]

        proposals_x1 = proposals[:, 0].unsqueeze(1)
        proposals_y1 = proposals[:, 1].unsqueeze(1)
        proposals_x2 = proposals[:, 2].unsqueeze(1)
        proposals_y2 = proposals[:, 3].unsqueeze(1)

        reference_boxes_x1 = reference_boxes[:, 0].unsqueeze(1)
        reference_boxes_y1 = reference_boxes[:, 1].unsqueeze(1)
        reference_boxes_x2 = reference_boxes[:, 2].unsqueeze(1)
        reference_boxes_y2 = reference_boxes[:, 3].unsqueeze(1)

        # implementation starts here
        ex_widths = proposals_x2 - proposals_x1
        ex_heights = proposals_y2 - proposals_y1
        ex_ctr_x = proposals_x1 + 0.5 * ex_widths
        ex_ctr_y = proposals_y1 + 0.5 * ex_heights

        gt_widths = reference_boxes_x2 - reference_boxes_x1
        gt_heights = reference_boxes_y2 - reference_boxes_y1
        gt_ctr_x = reference_boxes_x1 + 0.5 * gt_widths
        gt_ctr_y = reference_boxes_y1 + 0.5 * gt_heights

        targets_dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        targets_dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        targets_dw = ww * torch.log(gt_widths / ex_widths)
        targets_dh = wh * torch.log(gt_heights / ex_heights)

        targets = torch.cat((targets_dx, targets_dy, targets_dw, targets_dh), dim=1)
        return targets

    def decode_single(self, rel_codes, boxes):
        torch = self.torch
        boxes = boxes.to(rel_codes.dtype)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = rel_codes[:, 2::4] / ww
        dh = rel_codes[:, 3::4] / wh

        # Prevent sending too large values into torch.exp()
        dw = torch.clamp(dw, max=self.bbox_xform_clip)
        dh = torch.clamp(dh, max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]

        # Distance from center to box's corner.
        c_to_c_h = torch.tensor(0.5, dtype=pred_ctr_y.dtype, device=pred_h.device) * pred_h
        c_to_c_w = torch.tensor(0.5, dtype=pred_ctr_x.dtype, device=pred_w.device) * pred_w

        pred_boxes1 = pred_ctr_x - c_to_c_w
        pred_boxes2 = pred_ctr_y - c_to_c_h
        pred_boxes3 = pred_ctr_x + c_to_c_w
        pred_boxes4 = pred_ctr_y + c_to_c_h
        pred_boxes = torch.stack((pred_boxes1, pred_boxes2, pred_boxes3, pred_boxes4),
                                 dim=2).flatten(1)
        return pred_boxes


def index_points(lib, points, idx):
    """PointNet++'s gather by batched indices: points [B, N, C], idx [B, S] or [B, S, K] ->
    [B, S(, K), C]."""
    device = points.device
    B = points.shape[0]
    view_shape = list(idx.shape)
    view_shape[1:] = [1] * (len(view_shape) - 1)
    repeat_shape = list(idx.shape)
    repeat_shape[0] = 1
    batch_indices = lib.arange(B, dtype=lib.long).to(device).view(view_shape).repeat(repeat_shape)
    new_points = points[batch_indices, idx, :]
    return new_points


def query_ball_point(lib, radius, nsample, xyz, new_xyz):
    """PointNet++'s ball query: for each of new_xyz [B, S, 3] the first ``nsample`` indices of
    xyz [B, N, 3] within ``radius`` (sorted), padded with the first one."""
    device = xyz.device
    B, N, C = xyz.shape
    _, S, _ = new_xyz.shape
    group_idx = lib.arange(N, dtype=lib.long).to(device).view(1, 1, N).repeat([B, S, 1])
    sqrdists = square_distance(lib, new_xyz, xyz)
    group_idx[sqrdists > radius ** 2] = N
    group_idx = group_idx.sort(dim=-1)[0][:, :, :nsample]
    group_first = group_idx[:, :, 0].view(B, S, 1).repeat([1, 1, nsample])
    mask = group_idx == N
    group_idx[mask] = group_first[mask]
    return group_idx
