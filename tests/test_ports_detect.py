"""Object detection in plain PyTorch (no torchvision), ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) the way the
reference repositories write it: DETR's box conversions, ``box_iou`` and generalized IoU;
torchvision's DIoU/CIoU losses and ``sigmoid_focal_loss``; anchor generation over a
``meshgrid``; SSD and RetinaNet box coding with variances and weights; SSD's matching with
forced best-prior matches and hard negative mining by a double ``sort``; torchvision's
``Matcher`` with low-quality matches; a greedy NMS loop and the batched-NMS offset trick;
DETR's Hungarian matcher and set criterion; YOLOv3's ``build_targets`` and loss; FCOS targets
and center-ness; a tiny FPN; RoIAlign through ``grid_sample``; VOC mAP@0.5. A tiny RetinaNet
trains a few steps with SGD momentum and a warmup ``LambdaLR``, on images with no boxes and
with degenerate boxes. Both runs see the same float64 arrays and start from PyTorch's seeded
weights; values, matches, gradients and parameters are compared.
"""
# ruff: noqa: B008, N806, E741  (the programs keep their sources' own spellings)

from __future__ import annotations

import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import (BoxCoder, both, draw, float64_one_thread,  # noqa: F401
                    frozen_batchnorm2d, initial_state, start)

torch = pytest.importorskip("torch")
linear_sum_assignment = pytest.importorskip("scipy.optimize").linear_sum_assignment
pytestmark = pytest.mark.usefixtures("float64_one_thread")


def random_boxes(n: int, seed: int, size: float = 32.0) -> np.ndarray:
    """``n`` xyxy boxes inside a ``size`` square (float64)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size * 0.7, (n, 2))
    wh = rng.uniform(2, size * 0.3, (n, 2))
    return np.concatenate([xy, xy + wh], 1)


# 1. box utilities (DETR's util/box_ops.py, torchvision's _box_inter_union / ciou)

def box_cxcywh_to_xyxy(lib, x):
    x_c, y_c, w, h = x.unbind(-1)
    b = [(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)]
    return lib.stack(b, dim=-1)


def box_xyxy_to_cxcywh(lib, x):
    x0, y0, x1, y1 = x.unbind(-1)
    b = [(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0), (y1 - y0)]
    return lib.stack(b, dim=-1)


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(lib, boxes1, boxes2):
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = lib.max(boxes1[:, None, :2], boxes2[:, :2])  # [N,M,2]
    rb = lib.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N,M,2]
    wh = (rb - lt).clamp(min=0)  # [N,M,2]
    inter = wh[:, :, 0] * wh[:, :, 1]  # [N,M]
    union = area1[:, None] + area2 - inter
    iou = inter / union
    return iou, union


def generalized_box_iou(lib, boxes1, boxes2):
    # degenerate boxes gives inf / nan results, so do an early check
    assert (boxes1[:, 2:] >= boxes1[:, :2]).all()
    assert (boxes2[:, 2:] >= boxes2[:, :2]).all()
    iou, union = box_iou(lib, boxes1, boxes2)
    lt = lib.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = lib.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)  # [N,M,2]
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area


def _upcast(lib, t):
    if t.is_floating_point():
        return t if t.dtype in (lib.float32, lib.float64) else t.float()
    return t if t.dtype in (lib.int32, lib.int64) else t.int()


def _loss_inter_union(lib, boxes1, boxes2):
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1 = lib.max(x1, x1g)
    ykis1 = lib.max(y1, y1g)
    xkis2 = lib.min(x2, x2g)
    ykis2 = lib.min(y2, y2g)
    intsctk = lib.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    return intsctk, unionk


def _diou_iou_loss(lib, boxes1, boxes2, eps=1e-7):
    intsct, union = _loss_inter_union(lib, boxes1, boxes2)
    iou = intsct / (union + eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xc1 = lib.min(x1, x1g)
    yc1 = lib.min(y1, y1g)
    xc2 = lib.max(x2, x2g)
    yc2 = lib.max(y2, y2g)
    diagonal_distance_squared = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    x_p = (x2 + x1) / 2
    y_p = (y2 + y1) / 2
    x_g = (x1g + x2g) / 2
    y_g = (y1g + y2g) / 2
    centers_distance_squared = ((x_p - x_g) ** 2) + ((y_p - y_g) ** 2)
    loss = 1 - iou + (centers_distance_squared / diagonal_distance_squared)
    return loss, iou


def complete_box_iou_loss(lib, boxes1, boxes2, reduction="none", eps=1e-7):
    boxes1 = _upcast(lib, boxes1)
    boxes2 = _upcast(lib, boxes2)
    diou_loss, iou = _diou_iou_loss(lib, boxes1, boxes2, eps)
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    w_pred = x2 - x1
    h_pred = y2 - y1
    w_gt = x2g - x1g
    h_gt = y2g - y1g
    v = (4 / (lib.pi**2)) * lib.pow((lib.atan(w_gt / h_gt) - lib.atan(w_pred / h_pred)), 2)
    with lib.no_grad():
        alpha = v / (1 - iou + v + eps)
    loss = diou_loss + alpha * v
    if reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def box_losses(lib):
    pred = lib.tensor(random_boxes(7, 1), requires_grad=True)
    gt_np = random_boxes(7, 2)
    gt_np[3] = gt_np[3, [0, 1, 0, 3]]  # zero width: a degenerate box
    gt_np[5] = pred.detach().numpy()[5]  # a perfect prediction
    gt = lib.tensor(gt_np)
    cxcywh = box_xyxy_to_cxcywh(lib, pred)
    back = box_cxcywh_to_xyxy(lib, cxcywh)
    iou, union = box_iou(lib, pred, gt)
    giou = generalized_box_iou(lib, pred, gt)
    ciou = complete_box_iou_loss(lib, pred, gt, reduction="mean")
    diou, _ = _diou_iou_loss(lib, pred, gt)
    loss = (1 - lib.diag(giou)).sum() + ciou + diou.sum() + iou.max(dim=1).values.sum()
    loss.backward()
    empty = complete_box_iou_loss(lib, pred[:0], gt[:0], reduction="mean")
    return {"cxcywh": cxcywh, "back": back, "iou": iou, "union": union, "giou": giou,
            "ciou": ciou, "diou": diou, "grad": pred.grad, "empty": empty,
            "empty_iou": box_iou(lib, pred, gt[:0])[0].shape[1]}


def test_box_conversions_iou_giou_diou_ciou_and_their_gradients():
    both(box_losses)


def test_generalized_iou_rejects_an_inverted_box_as_detr_asserts():
    boxes = ng.tensor([[0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 1.0, 4.0]])
    with pytest.raises(AssertionError):
        generalized_box_iou(ng, boxes, boxes)


# 2. anchors (torchvision's AnchorGenerator, written out) and box coders

def generate_anchors(lib, scales, aspect_ratios, dtype):
    scales = lib.as_tensor(scales, dtype=dtype)
    aspect_ratios = lib.as_tensor(aspect_ratios, dtype=dtype)
    h_ratios = lib.sqrt(aspect_ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    base_anchors = lib.stack([-ws, -hs, ws, hs], dim=1) / 2
    return base_anchors.round()


def grid_anchors(lib, grid_sizes, strides, cell_anchors):
    anchors = []
    for size, stride, base_anchors in zip(grid_sizes, strides, cell_anchors):
        grid_height, grid_width = size
        stride_height, stride_width = stride
        shifts_x = lib.arange(0, grid_width, dtype=lib.int32) * stride_width
        shifts_y = lib.arange(0, grid_height, dtype=lib.int32) * stride_height
        shift_y, shift_x = lib.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x = shift_x.reshape(-1)
        shift_y = shift_y.reshape(-1)
        shifts = lib.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        anchors.append((shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4))
    return anchors


def make_anchors(lib, image_size=32, grid_sizes=((4, 4), (2, 2)), sizes=(8, 16)):
    cell = [generate_anchors(lib, (s,), (0.5, 1.0, 2.0), lib.float64) for s in sizes]
    strides = [[image_size // g[0], image_size // g[1]] for g in grid_sizes]
    return lib.cat(grid_anchors(lib, grid_sizes, strides, cell))


def point_form(lib, boxes):
    return lib.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)


def center_size(lib, boxes):
    return lib.cat(((boxes[:, 2:] + boxes[:, :2]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)


def ssd_encode(lib, matched, priors, variances):
    """ssd.pytorch's layers/box_utils.encode: priors in center-size form."""
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy /= (variances[0] * priors[:, 2:])
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = lib.log(g_wh) / variances[1]
    return lib.cat([g_cxcy, g_wh], 1)


def ssd_decode(lib, loc, priors, variances):
    boxes = lib.cat((
        priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
        priors[:, 2:] * lib.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def anchors_and_coders(lib):
    anchors = make_anchors(lib)
    gt = lib.tensor(random_boxes(anchors.shape[0], 3))
    coder = BoxCoder(lib, (10.0, 10.0, 5.0, 5.0))
    codes = coder.encode_single(gt, anchors)
    codes.requires_grad_(True)
    decoded = coder.decode_single(codes, anchors)
    big = coder.decode_single(codes.detach() * 30, anchors)  # clamped log-scale
    priors = center_size(lib, anchors) / 32
    loc = ssd_encode(lib, gt / 32, priors, [0.1, 0.2])
    dec = ssd_decode(lib, loc, priors, [0.1, 0.2])
    (decoded ** 2).sum().backward()
    return {"anchors": anchors, "dtype": str(anchors.dtype).split(".")[-1], "codes": codes,
            "decoded": decoded, "big": big, "loc": loc, "ssd_dec": dec * 32,
            "pf": point_form(lib, priors) * 32, "grad": codes.grad}


def test_anchor_generation_and_box_coders_round_trip():
    got = both(anchors_and_coders)
    np.testing.assert_allclose(got["decoded"], random_boxes(60, 3), atol=1e-9)
    np.testing.assert_allclose(got["ssd_dec"], random_boxes(60, 3), atol=1e-9)


# 3. focal loss, SSD matching and hard negative mining, torchvision's Matcher

def sigmoid_focal_loss(lib, inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    F = lib.nn.functional
    p = lib.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def intersect(lib, box_a, box_b):
    A = box_a.size(0)
    B = box_b.size(0)
    max_xy = lib.min(box_a[:, 2:].unsqueeze(1).expand(A, B, 2),
                     box_b[:, 2:].unsqueeze(0).expand(A, B, 2))
    min_xy = lib.max(box_a[:, :2].unsqueeze(1).expand(A, B, 2),
                     box_b[:, :2].unsqueeze(0).expand(A, B, 2))
    inter = lib.clamp((max_xy - min_xy), min=0)
    return inter[:, :, 0] * inter[:, :, 1]


def jaccard(lib, box_a, box_b):
    inter = intersect(lib, box_a, box_b)
    area_a = ((box_a[:, 2] - box_a[:, 0]) *
              (box_a[:, 3] - box_a[:, 1])).unsqueeze(1).expand_as(inter)  # [A,B]
    area_b = ((box_b[:, 2] - box_b[:, 0]) *
              (box_b[:, 3] - box_b[:, 1])).unsqueeze(0).expand_as(inter)  # [A,B]
    union = area_a + area_b - inter
    return inter / union


def ssd_match(lib, threshold, truths, priors, variances, labels, loc_t, conf_t, idx):
    """ssd.pytorch's match: every truth keeps its best prior (index_fill_ and a loop)."""
    overlaps = jaccard(lib, truths, point_form(lib, priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)
    best_truth_overlap, best_truth_idx = overlaps.max(0, keepdim=True)
    best_truth_idx.squeeze_(0)
    best_truth_overlap.squeeze_(0)
    best_prior_idx.squeeze_(1)
    best_prior_overlap.squeeze_(1)
    best_truth_overlap.index_fill_(0, best_prior_idx, 2)  # ensure best prior
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx] + 1
    conf[best_truth_overlap < threshold] = 0
    loc = ssd_encode(lib, matches, priors, variances)
    loc_t[idx] = loc
    conf_t[idx] = conf


def log_sum_exp(lib, x):
    x_max = x.detach().max()
    return lib.log(lib.sum(lib.exp(x - x_max), 1, keepdim=True)) + x_max


def multibox_loss(lib, loc_data, conf_data, priors, targets, num_classes, negpos_ratio=3):
    """ssd.pytorch's MultiBoxLoss.forward; an image without boxes has no positives."""
    F = lib.nn.functional
    num = loc_data.size(0)
    num_priors = priors.size(0)
    loc_t = lib.zeros(num, num_priors, 4)
    conf_t = lib.zeros(num, num_priors, dtype=lib.long)
    for idx in range(num):
        truths = targets[idx][:, :-1].detach()
        labels = targets[idx][:, -1].detach()
        if truths.numel() == 0:
            continue
        ssd_match(lib, 0.5, truths, priors.detach(), [0.1, 0.2], labels, loc_t, conf_t, idx)
    pos = conf_t > 0
    num_pos = pos.sum(dim=1, keepdim=True)
    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    loc_p = loc_data[pos_idx].view(-1, 4)
    loc_t = loc_t[pos_idx].view(-1, 4)
    loss_l = F.smooth_l1_loss(loc_p, loc_t, reduction="sum")
    batch_conf = conf_data.view(-1, num_classes)
    loss_c = log_sum_exp(lib, batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))
    loss_c = loss_c.view(num, -1)
    loss_c[pos] = 0  # filter out pos boxes for now
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = lib.clamp(negpos_ratio * num_pos, max=pos.size(1) - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, num_classes)
    targets_weighted = conf_t[(pos + neg).gt(0)]
    loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")
    N = num_pos.sum().double()
    return loss_l / N, loss_c / N, conf_t, neg


def ssd_targets(lib):
    t1 = np.concatenate([random_boxes(3, 5) / 32, [[1], [0], [2]]], 1)
    t2 = np.zeros((0, 5))
    t3 = np.concatenate([random_boxes(1, 6) / 32, [[1]]], 1)
    return [lib.tensor(t) for t in (t1, t2, t3)]


def ssd_loss(lib):
    priors = center_size(lib, make_anchors(lib)) / 32
    loc = lib.tensor(draw(3, 60, 4, seed=1), requires_grad=True)
    conf = lib.tensor(draw(3, 60, 4, seed=2), requires_grad=True)
    loss_l, loss_c, conf_t, neg = multibox_loss(lib, loc, conf, priors, ssd_targets(lib), 4)
    (loss_l + loss_c).backward()
    return {"loss_l": loss_l, "loss_c": loss_c, "conf_t": conf_t, "neg": neg,
            "gloc": loc.grad, "gconf": conf.grad}


def test_ssd_matching_and_hard_negative_mining_with_an_image_without_boxes():
    got = both(ssd_loss)
    assert got["conf_t"][1].sum() == 0 and got["neg"][1].sum() == 0


class Matcher:
    """torchvision's det_utils.Matcher (allow_low_quality_matches)."""

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, lib, high_threshold, low_threshold, allow_low_quality_matches=False):
        self.lib = lib
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix):
        lib = self.lib
        if match_quality_matrix.numel() == 0:
            if match_quality_matrix.shape[0] == 0:
                return lib.full((match_quality_matrix.shape[1],), -1, dtype=lib.int64)
            raise ValueError("No proposal boxes available for one of the images")
        matched_vals, matches = match_quality_matrix.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        below_low_threshold = matched_vals < self.low_threshold
        between_thresholds = (matched_vals >= self.low_threshold) & (
            matched_vals < self.high_threshold)
        matches[below_low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[between_thresholds] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(matches, all_matches, match_quality_matrix)
        return matches

    def set_low_quality_matches_(self, matches, all_matches, match_quality_matrix):
        highest_quality_foreach_gt, _ = match_quality_matrix.max(dim=1)
        gt_pred_pairs_of_highest_quality = self.lib.where(
            match_quality_matrix == highest_quality_foreach_gt[:, None])
        pred_inds_to_update = gt_pred_pairs_of_highest_quality[1]
        matches[pred_inds_to_update] = all_matches[pred_inds_to_update]


def matcher_run(lib):
    anchors = make_anchors(lib)
    out = []
    for seed, n in ((7, 3), (8, 0), (9, 1)):
        gt = lib.tensor(random_boxes(n, seed))
        iou = box_iou(lib, gt, anchors)[0]
        m = Matcher(lib, 0.5, 0.4, allow_low_quality_matches=True)(iou)
        plain = Matcher(lib, 0.5, 0.4)(iou)
        out.append([m, plain, str(m.dtype).split(".")[-1]])
    with pytest.raises(ValueError, match="No proposal"):
        Matcher(lib, 0.5, 0.4)(lib.zeros(2, 0))
    return out


def test_torchvision_matcher_with_low_quality_matches_and_no_targets():
    both(matcher_run)


def focal_run(lib):
    x = lib.tensor(draw(5, 48, 3, seed=4), requires_grad=True)
    t = (lib.tensor(draw(5, 48, 3, seed=5, kind="rand")) > 0.8).to(x.dtype)
    losses = [sigmoid_focal_loss(lib, x, t, reduction=r) for r in ("none", "mean", "sum")]
    losses.append(sigmoid_focal_loss(lib, x, t, alpha=-1, gamma=0.0, reduction="sum"))
    sum(li.sum() for li in losses).backward()
    return {"losses": losses, "grad": x.grad}


def test_sigmoid_focal_loss_as_torchvision_writes_it():
    both(focal_run)


# 4. NMS: greedy loop, batched offsets, score filtering and topk

def nms(lib, boxes, scores, iou_threshold):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        if order.numel() == 1:
            break
        ious = box_iou(lib, boxes[i].unsqueeze(0), boxes[order[1:]])[0].squeeze(0)
        order = order[1:][ious <= iou_threshold]
    if not keep:
        return lib.empty((0,), dtype=lib.int64)
    return lib.stack(keep)


def batched_nms(lib, boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return lib.empty((0,), dtype=lib.int64)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + lib.tensor(1).to(boxes))
    boxes_for_nms = boxes + offsets[:, None]
    return nms(lib, boxes_for_nms, scores, iou_threshold)


def postprocess(lib, logits, deltas, anchors, score_thresh=0.3, topk=20, nms_thresh=0.5):
    coder = BoxCoder(lib, (1.0, 1.0, 1.0, 1.0))
    results = []
    for cls_i, reg_i in zip(logits, deltas):
        num_classes = cls_i.shape[-1]
        scores_all = lib.sigmoid(cls_i).flatten()
        keep_idxs = scores_all > score_thresh
        scores = scores_all[keep_idxs]
        topk_idxs = lib.where(keep_idxs)[0]
        num_topk = min(topk, topk_idxs.size(0))
        scores, idxs = scores.topk(num_topk)
        topk_idxs = topk_idxs[idxs]
        anchor_idxs = lib.div(topk_idxs, num_classes, rounding_mode="floor")
        labels = topk_idxs % num_classes
        boxes = coder.decode_single(reg_i[anchor_idxs], anchors[anchor_idxs])
        boxes = boxes.clamp(min=0, max=32)
        keep = batched_nms(lib, boxes, scores, labels, nms_thresh)
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def nms_run(lib):
    anchors = make_anchors(lib)
    logits = lib.tensor(draw(2, 60, 3, seed=10))
    deltas = lib.tensor(draw(2, 60, 4, seed=11) * 0.2)
    res = postprocess(lib, logits, deltas, anchors)
    res.append(postprocess(lib, logits - 20, deltas, anchors)[0])  # nothing passes
    boxes = lib.tensor(random_boxes(12, 12))
    scores = lib.tensor(draw(12, seed=13, kind="rand"))
    res.append({"keep": nms(lib, boxes, scores, 0.1), "one": nms(lib, boxes[:1], scores[:1], 0.5)})
    return res


def test_greedy_nms_and_batched_offsets_with_topk_postprocessing():
    got = both(nms_run)
    assert len(got[2]["boxes"]) == 0 and len(got[0]["boxes"]) > 1


# 5. DETR: Hungarian matcher and set criterion

class HungarianMatcher:
    def __init__(self, lib, cost_class=1, cost_bbox=5, cost_giou=2):
        self.lib = lib
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def __call__(self, outputs, targets):
        lib = self.lib
        with lib.no_grad():
            bs, num_queries = outputs["pred_logits"].shape[:2]
            out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
            out_bbox = outputs["pred_boxes"].flatten(0, 1)
            tgt_ids = lib.cat([v["labels"] for v in targets])
            tgt_bbox = lib.cat([v["boxes"] for v in targets])
            cost_class = -out_prob[:, tgt_ids]
            cost_bbox = lib.cdist(out_bbox, tgt_bbox, p=1)
            cost_giou = -generalized_box_iou(lib, box_cxcywh_to_xyxy(lib, out_bbox),
                                             box_cxcywh_to_xyxy(lib, tgt_bbox))
            C = self.cost_bbox * cost_bbox + self.cost_class * cost_class \
                + self.cost_giou * cost_giou
            C = C.view(bs, num_queries, -1).cpu()
            sizes = [len(v["boxes"]) for v in targets]
            indices = [linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]
            return [(lib.as_tensor(i, dtype=lib.int64), lib.as_tensor(j, dtype=lib.int64))
                    for i, j in indices]


class SetCriterion:
    def __init__(self, lib, num_classes, matcher, eos_coef, weight_dict):
        self.lib, self.num_classes, self.matcher = lib, num_classes, matcher
        self.weight_dict, self.eos_coef = weight_dict, eos_coef
        empty_weight = lib.ones(num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.empty_weight = empty_weight

    def _get_src_permutation_idx(self, indices):
        lib = self.lib
        batch_idx = lib.cat([lib.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = lib.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    def loss_labels(self, outputs, targets, indices, num_boxes):
        lib, F = self.lib, self.lib.nn.functional
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = lib.cat([t["labels"][J] for t, (_, J) in zip(targets, indices)])
        target_classes = lib.full(src_logits.shape[:2], self.num_classes, dtype=lib.int64)
        target_classes[idx] = target_classes_o
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        acc = (src_logits[idx].argmax(-1) == target_classes_o).float().mean() * 100
        return {"loss_ce": loss_ce, "class_error": 100 - acc}

    def loss_cardinality(self, outputs, targets, indices, num_boxes):
        lib, F = self.lib, self.lib.nn.functional
        pred_logits = outputs["pred_logits"]
        tgt_lengths = lib.as_tensor([len(v["labels"]) for v in targets])
        card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        card_err = F.l1_loss(card_pred.float(), tgt_lengths.float())
        return {"cardinality_error": card_err}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        lib, F = self.lib, self.lib.nn.functional
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = lib.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - lib.diag(generalized_box_iou(
            lib, box_cxcywh_to_xyxy(lib, src_boxes), box_cxcywh_to_xyxy(lib, target_boxes)))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def __call__(self, outputs, targets):
        lib = self.lib
        indices = self.matcher(outputs, targets)
        num_boxes = sum(len(t["labels"]) for t in targets)
        num_boxes = lib.as_tensor([num_boxes], dtype=lib.float)
        num_boxes = lib.clamp(num_boxes, min=1).item()
        losses = {}
        for loss in (self.loss_labels, self.loss_cardinality, self.loss_boxes):
            losses.update(loss(outputs, targets, indices, num_boxes))
        return losses, indices


def detr_targets(lib):
    out = []
    for n, seed in ((3, 20), (0, 21), (2, 22)):
        b = box_xyxy_to_cxcywh(lib, lib.tensor(random_boxes(n, seed) / 32))
        labels = lib.tensor(draw(n, seed=seed, kind="randint", high=3)) if n else \
            lib.zeros(0, dtype=lib.int64)
        out.append({"boxes": b, "labels": labels})
    return out


def detr_run(lib):
    nn = lib.nn
    lib.manual_seed(0)
    feats = lib.tensor(draw(3, 6, 8, seed=23))
    head_c = nn.Linear(8, 4).double()
    head_b = nn.Linear(8, 4).double()
    init = {k: lib.tensor(draw(*v.shape, seed=30 + i) * 0.3)
            for i, (k, v) in enumerate(list(head_c.state_dict().items())
                                       + list(head_b.state_dict().items()))}
    names = list(init)
    head_c.load_state_dict({"weight": init[names[0]], "bias": init[names[1]]})
    head_b.load_state_dict({"weight": init[names[0]], "bias": init[names[1]]})
    outputs = {"pred_logits": head_c(feats), "pred_boxes": head_b(feats).sigmoid()}
    weight_dict = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
    crit = SetCriterion(lib, 3, HungarianMatcher(lib), 0.1, weight_dict)
    losses, indices = crit(outputs, detr_targets(lib))
    total = sum(losses[k] * weight_dict[k] for k in losses if k in weight_dict)
    total.backward()
    return {"losses": losses, "indices": indices, "gw": head_c.weight.grad,
            "gb": head_b.weight.grad, "gbb": head_b.bias.grad}


def test_detr_hungarian_matcher_and_set_criterion_with_an_empty_image():
    got = both(detr_run)
    assert len(got["indices"][1][0]) == 0


# 6. YOLOv3 targets and loss (eriklindernoren's build_targets, clamped grid cells)

def bbox_wh_iou(lib, wh1, wh2):
    wh2 = wh2.t()
    w1, h1 = wh1[0], wh1[1]
    w2, h2 = wh2[0], wh2[1]
    inter_area = lib.min(w1, w2) * lib.min(h1, h2)
    union_area = (w1 * h1 + 1e-16) + w2 * h2 - inter_area
    return inter_area / union_area


def bbox_iou(lib, box1, box2, x1y1x2y2=True):
    if not x1y1x2y2:
        b1_x1, b1_x2 = box1[:, 0] - box1[:, 2] / 2, box1[:, 0] + box1[:, 2] / 2
        b1_y1, b1_y2 = box1[:, 1] - box1[:, 3] / 2, box1[:, 1] + box1[:, 3] / 2
        b2_x1, b2_x2 = box2[:, 0] - box2[:, 2] / 2, box2[:, 0] + box2[:, 2] / 2
        b2_y1, b2_y2 = box2[:, 1] - box2[:, 3] / 2, box2[:, 1] + box2[:, 3] / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1[:, 0], box1[:, 1], box1[:, 2], box1[:, 3]
        b2_x1, b2_y1, b2_x2, b2_y2 = box2[:, 0], box2[:, 1], box2[:, 2], box2[:, 3]
    inter_rect_x1 = lib.max(b1_x1, b2_x1)
    inter_rect_y1 = lib.max(b1_y1, b2_y1)
    inter_rect_x2 = lib.min(b1_x2, b2_x2)
    inter_rect_y2 = lib.min(b1_y2, b2_y2)
    inter_area = lib.clamp(inter_rect_x2 - inter_rect_x1 + 1, min=0) * lib.clamp(
        inter_rect_y2 - inter_rect_y1 + 1, min=0)
    b1_area = (b1_x2 - b1_x1 + 1) * (b1_y2 - b1_y1 + 1)
    b2_area = (b2_x2 - b2_x1 + 1) * (b2_y2 - b2_y1 + 1)
    return inter_area / (b1_area + b2_area - inter_area + 1e-16)


def build_targets(lib, pred_boxes, pred_cls, target, anchors, ignore_thres):
    nB, nA, nG = pred_boxes.size(0), pred_boxes.size(1), pred_boxes.size(2)
    nC = pred_cls.size(-1)
    obj_mask = lib.zeros(nB, nA, nG, nG, dtype=lib.bool)
    noobj_mask = lib.ones(nB, nA, nG, nG, dtype=lib.bool)
    class_mask = lib.zeros(nB, nA, nG, nG)
    iou_scores = lib.zeros(nB, nA, nG, nG)
    tx = lib.zeros(nB, nA, nG, nG)
    ty = lib.zeros(nB, nA, nG, nG)
    tw = lib.zeros(nB, nA, nG, nG)
    th = lib.zeros(nB, nA, nG, nG)
    tcls = lib.zeros(nB, nA, nG, nG, nC)
    target_boxes = target[:, 2:6] * nG
    gxy = target_boxes[:, :2]
    gwh = target_boxes[:, 2:]
    ious = lib.stack([bbox_wh_iou(lib, anchor, gwh) for anchor in anchors])
    best_ious, best_n = ious.max(0)
    b, target_labels = target[:, :2].long().t()
    gx, gy = gxy.t()
    gw, gh = gwh.t()
    gi, gj = gxy.long().t()
    gi = lib.clamp(gi, 0, nG - 1)
    gj = lib.clamp(gj, 0, nG - 1)
    obj_mask[b, best_n, gj, gi] = 1
    noobj_mask[b, best_n, gj, gi] = 0
    for i, anchor_ious in enumerate(ious.t()):
        noobj_mask[b[i], anchor_ious > ignore_thres, gj[i], gi[i]] = 0
    tx[b, best_n, gj, gi] = gx - gx.floor()
    ty[b, best_n, gj, gi] = gy - gy.floor()
    best_wh = anchors.gather(0, best_n[:, None].expand(-1, 2))
    tw[b, best_n, gj, gi] = lib.log(gw / best_wh[:, 0] + 1e-16)
    th[b, best_n, gj, gi] = lib.log(gh / best_wh[:, 1] + 1e-16)
    tcls[b, best_n, gj, gi, target_labels] = 1
    class_mask[b, best_n, gj, gi] = (
        pred_cls[b, best_n, gj, gi].argmax(-1) == target_labels).to(class_mask.dtype)
    iou_scores[b, best_n, gj, gi] = bbox_iou(lib, pred_boxes[b, best_n, gj, gi], target_boxes,
                                             x1y1x2y2=False)
    tconf = obj_mask.to(tx.dtype)
    return iou_scores, class_mask, obj_mask, noobj_mask, tx, ty, tw, th, tcls, tconf


def yolo_layer(lib, x, targets, anchors, num_classes=2, img_dim=32, ignore_thres=0.5):
    F = lib.nn.functional
    num_samples, grid_size = x.size(0), x.size(2)
    num_anchors = len(anchors)
    prediction = x.view(num_samples, num_anchors, num_classes + 5, grid_size, grid_size) \
        .permute(0, 1, 3, 4, 2).contiguous()
    px = lib.sigmoid(prediction[..., 0])
    py = lib.sigmoid(prediction[..., 1])
    w = prediction[..., 2]
    h = prediction[..., 3]
    pred_conf = lib.sigmoid(prediction[..., 4])
    pred_cls = lib.sigmoid(prediction[..., 5:])
    stride = img_dim / grid_size
    grid_x = lib.arange(grid_size).repeat(grid_size, 1).view([1, 1, grid_size, grid_size]).double()
    grid_y = lib.arange(grid_size).repeat(grid_size, 1).t().view(
        [1, 1, grid_size, grid_size]).double()
    scaled_anchors = lib.tensor([(a_w / stride, a_h / stride) for a_w, a_h in anchors])
    anchor_w = scaled_anchors[:, 0:1].view((1, num_anchors, 1, 1))
    anchor_h = scaled_anchors[:, 1:2].view((1, num_anchors, 1, 1))
    pred_boxes = lib.empty(prediction[..., :4].shape)
    pred_boxes[..., 0] = px.detach() + grid_x
    pred_boxes[..., 1] = py.detach() + grid_y
    pred_boxes[..., 2] = lib.exp(w.detach()) * anchor_w
    pred_boxes[..., 3] = lib.exp(h.detach()) * anchor_h
    output = lib.cat((pred_boxes.view(num_samples, -1, 4) * stride,
                      pred_conf.view(num_samples, -1, 1),
                      pred_cls.view(num_samples, -1, num_classes)), -1)
    iou_scores, class_mask, obj_mask, noobj_mask, tx, ty, tw, th, tcls, tconf = build_targets(
        lib, pred_boxes, pred_cls, targets, scaled_anchors, ignore_thres)
    mse, bce = F.mse_loss, F.binary_cross_entropy
    loss_x = mse(px[obj_mask], tx[obj_mask])
    loss_y = mse(py[obj_mask], ty[obj_mask])
    loss_w = mse(w[obj_mask], tw[obj_mask])
    loss_h = mse(h[obj_mask], th[obj_mask])
    loss_conf_obj = bce(pred_conf[obj_mask], tconf[obj_mask])
    loss_conf_noobj = bce(pred_conf[noobj_mask], tconf[noobj_mask])
    loss_conf = loss_conf_obj + 100 * loss_conf_noobj
    loss_cls = bce(pred_cls[obj_mask], tcls[obj_mask])
    total_loss = loss_x + loss_y + loss_w + loss_h + loss_conf + loss_cls
    cls_acc = 100 * class_mask[obj_mask].mean()
    iou50 = (iou_scores > 0.5).to(iou_scores.dtype)
    detected_mask = iou50 * class_mask * tconf
    recall50 = lib.sum(iou50 * detected_mask) / (obj_mask.sum() + 1e-16)
    return output, total_loss, {"cls_acc": cls_acc, "recall50": recall50,
                                "obj": obj_mask, "noobj": noobj_mask, "tw": tw}


def yolo_run(lib):
    x = lib.tensor(draw(2, 3 * 7, 4, 4, seed=40), requires_grad=True)
    t = np.array([[0, 1, 0.30, 0.40, 0.20, 0.30],
                  [0, 0, 0.70, 0.75, 0.50, 0.40],
                  [1, 1, 0.999, 1.0, 0.10, 0.10],  # on the far edge: clamped into the grid
                  [1, 0, 0.10, 0.12, 0.05, 0.30]])
    anchors = [(4, 6), (10, 8), (16, 20)]
    output, loss, metrics = yolo_layer(lib, x, lib.tensor(t), anchors)
    loss.backward()
    return {"output": output, "loss": loss, "m": metrics, "grad": x.grad}


def test_yolov3_build_targets_and_loss():
    both(yolo_run)


# 7. FCOS targets and center-ness, a tiny FPN, RoIAlign through grid_sample

def fcos_targets(lib, locations, boxes, labels):
    INF = 100000000
    xs, ys = locations[:, 0], locations[:, 1]
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    l = xs[:, None] - boxes[:, 0][None]
    t = ys[:, None] - boxes[:, 1][None]
    r = boxes[:, 2][None] - xs[:, None]
    b = boxes[:, 3][None] - ys[:, None]
    reg_targets_per_im = lib.stack([l, t, r, b], dim=2)
    is_in_boxes = reg_targets_per_im.min(dim=2)[0] > 0
    max_reg_targets_per_im = reg_targets_per_im.max(dim=2)[0]
    is_cared_in_the_level = (max_reg_targets_per_im >= 0) & (max_reg_targets_per_im <= 64)
    locations_to_gt_area = area[None].repeat(len(locations), 1)
    locations_to_gt_area[is_in_boxes == 0] = INF
    locations_to_gt_area[is_cared_in_the_level == 0] = INF
    locations_to_min_area, locations_to_gt_inds = locations_to_gt_area.min(dim=1)
    reg_targets_per_im = reg_targets_per_im[range(len(locations)), locations_to_gt_inds]
    labels_per_im = labels[locations_to_gt_inds]
    labels_per_im[locations_to_min_area == INF] = 0
    return labels_per_im, reg_targets_per_im


def compute_centerness_targets(lib, reg_targets):
    left_right = reg_targets[:, [0, 2]]
    top_bottom = reg_targets[:, [1, 3]]
    centerness = (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0]) * \
        (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
    return lib.sqrt(centerness)


def fcos_run(lib):
    stride = 4
    shifts_x = lib.arange(0, 8 * stride, step=stride, dtype=lib.float32)
    shifts_y = lib.arange(0, 8 * stride, step=stride, dtype=lib.float32)
    shift_y, shift_x = lib.meshgrid((shifts_y, shifts_x), indexing="ij")
    locations = lib.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2
    locations = locations.double()
    boxes = lib.tensor(random_boxes(3, 41))
    labels = lib.tensor([1, 2, 3])
    labels_t, reg_t = fcos_targets(lib, locations, boxes, labels)
    pos = lib.nonzero(labels_t > 0).squeeze(1)
    ctr = compute_centerness_targets(lib, reg_t[pos])
    logits = lib.tensor(draw(64, seed=42), requires_grad=True)
    F = lib.nn.functional
    ctr_loss = F.binary_cross_entropy_with_logits(logits[pos], ctr, reduction="sum")
    ctr_loss.backward()
    return {"labels": labels_t, "reg": reg_t, "pos": pos, "ctr": ctr, "loss": ctr_loss,
            "grad": logits.grad, "loc_dtype": str(shift_x.dtype).split(".")[-1]}


def test_fcos_targets_and_centerness():
    both(fcos_run)


def tiny_fpn(lib):
    nn, F = lib.nn, lib.nn.functional

    class TinyFPN(nn.Module):
        def __init__(self, out_channels=8):
            super().__init__()
            self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.c4 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.inner_blocks = nn.ModuleList(
                [nn.Conv2d(c, out_channels, 1) for c in (4, 8, 8)])
            self.layer_blocks = nn.ModuleList(
                [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(3)])

        def forward(self, x):
            c2 = F.relu(self.c2(x))
            c3 = F.relu(self.c3(c2))
            c4 = F.relu(self.c4(c3))
            feats = [c2, c3, c4]
            last_inner = self.inner_blocks[-1](feats[-1])
            results = [self.layer_blocks[-1](last_inner)]
            for idx in range(len(feats) - 2, -1, -1):
                inner_lateral = self.inner_blocks[idx](feats[idx])
                feat_shape = inner_lateral.shape[-2:]
                if idx == 0:
                    inner_top_down = F.interpolate(last_inner, scale_factor=2, mode="nearest")
                else:
                    inner_top_down = F.interpolate(last_inner, size=feat_shape, mode="nearest")
                last_inner = inner_lateral + inner_top_down
                results.insert(0, self.layer_blocks[idx](last_inner))
            results.append(F.max_pool2d(results[-1], 1, 2, 0))  # LastLevelMaxPool
            return results

    return TinyFPN()


def roi_align_lite(lib, features, rois, output_size=2, spatial_scale=0.25, sampling=2):
    """RoIAlign as bilinear samples averaged per bin, through grid_sample (align_corners=False):
    rois is [K, 5] (batch index, x1, y1, x2, y2) in image coordinates."""
    F = lib.nn.functional
    _, _, H, W = features.shape
    batch_idx = rois[:, 0].long()
    boxes = rois[:, 1:] * spatial_scale - 0.5
    n = output_size * sampling
    steps = (lib.arange(n, dtype=features.dtype) + 0.5) / n
    x1, y1, x2, y2 = boxes.unbind(1)
    xs = x1[:, None] + (x2 - x1)[:, None] * steps[None]
    ys = y1[:, None] + (y2 - y1)[:, None] * steps[None]
    gx = (2 * xs + 1) / W - 1
    gy = (2 * ys + 1) / H - 1
    grid = lib.stack(lib.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    sampled = F.grid_sample(features[batch_idx], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return F.avg_pool2d(sampled, sampling)


def fpn_roi_run(lib, init):
    model = start(lib, tiny_fpn, init)
    x = lib.tensor(draw(2, 3, 16, 16, seed=50))
    feats = model(x)
    rois = lib.tensor([[0, 1.0, 2.0, 9.0, 12.0], [1, 0.0, 0.0, 16.0, 16.0],
                       [1, 5.0, 5.0, 5.0, 9.0], [0, 10.0, 3.0, 15.5, 7.5]], requires_grad=True)
    pooled = roi_align_lite(lib, feats[0], rois, spatial_scale=0.5)
    loss = sum(f.pow(2).mean() for f in feats) + pooled.square().sum()
    loss.backward()
    return {"feats": feats, "pooled": pooled, "rois": rois.grad,
            "grads": {k: p.grad for k, p in model.named_parameters()}}


def test_tiny_fpn_top_down_and_roi_align_through_grid_sample():
    both(fpn_roi_run, initial_state(tiny_fpn))


# 8. mAP@0.5 (VOC all-point interpolation), cumsum over sorted scores

def voc_ap(lib, rec, prec):
    mrec = lib.cat((lib.tensor([0.0]), rec, lib.tensor([1.0])))
    mpre = lib.cat((lib.tensor([0.0]), prec, lib.tensor([0.0])))
    mpre = lib.flip(lib.cummax(lib.flip(mpre, [0]), 0)[0], [0])
    i = lib.where(mrec[1:] != mrec[:-1])[0]
    return lib.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def mean_average_precision(lib, detections, ground_truths, num_classes, iou_threshold=0.5):
    aps = []
    for c in range(num_classes):
        dets = [(img, b, s) for img, d in enumerate(detections)
                for b, s, l in zip(d["boxes"], d["scores"], d["labels"]) if l == c]
        gts = {img: g["boxes"][g["labels"] == c] for img, g in enumerate(ground_truths)}
        npos = sum(len(v) for v in gts.values())
        if npos == 0:
            continue
        if not dets:
            aps.append(lib.tensor(0.0))
            continue
        scores = lib.stack([s for _, _, s in dets])
        order = lib.argsort(scores, descending=True)
        used = {img: lib.zeros(len(v), dtype=lib.bool) for img, v in gts.items()}
        tp = lib.zeros(len(dets))
        fp = lib.zeros(len(dets))
        for k, d in enumerate(order.tolist()):
            img, box, _ = dets[d]
            g = gts[img]
            if len(g) == 0:
                fp[k] = 1
                continue
            ious = box_iou(lib, box[None], g)[0][0]
            best, j = ious.max(0)
            if best >= iou_threshold and not used[img][j]:
                tp[k] = 1
                used[img][j] = True
            else:
                fp[k] = 1
        tp = lib.cumsum(tp, dim=0)
        fp = lib.cumsum(fp, dim=0)
        rec = tp / npos
        prec = tp / lib.clamp(tp + fp, min=lib.finfo(lib.float64).eps)
        aps.append(voc_ap(lib, rec, prec))
    return lib.stack(aps).mean(), aps


def map_run(lib):
    gts, dets = [], []
    for img in range(3):
        n = (3, 0, 2)[img]
        g = random_boxes(n, 60 + img)
        gl = draw(n, seed=70 + img, kind="randint", high=2) if n else np.zeros(0, np.int64)
        gts.append({"boxes": lib.tensor(g), "labels": lib.tensor(gl)})
        jitter = draw(n + 2, 4, seed=80 + img) * 1.5
        d = np.concatenate([g, random_boxes(2, 90 + img)]) + jitter
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        dl = np.concatenate([gl, [0, 1]])
        dets.append({"boxes": lib.tensor(d), "scores": lib.tensor(draw(n + 2, seed=95 + img,
                                                                       kind="rand")),
                     "labels": lib.tensor(dl)})
    return mean_average_precision(lib, dets, gts, 3)


def test_map_at_half_iou_with_an_image_without_ground_truth():
    got = both(map_run)
    assert 0 < got[0] < 1


# 9. a tiny RetinaNet trained a few steps: SGD momentum, warmup LambdaLR, empty and degenerate
#    targets (filtered as the COCO loader does)

def tiny_retinanet(lib, num_classes=3, num_anchors=3, prior_probability=0.01):
    nn = lib.nn

    class Head(nn.Module):
        def __init__(self, in_channels=8):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1),
                                      nn.ReLU())
            self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
            self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
            for layer in (self.conv[0], self.cls_logits, self.bbox_reg):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)
            nn.init.constant_(self.cls_logits.bias,
                              -math.log((1 - prior_probability) / prior_probability))

        def forward(self, x):
            all_cls, all_reg = [], []
            for features in x:
                t = self.conv(features)
                cls_logits = self.cls_logits(t)
                bbox = self.bbox_reg(t)
                N, _, H, W = cls_logits.shape
                cls_logits = cls_logits.view(N, -1, num_classes, H, W)
                cls_logits = cls_logits.permute(0, 3, 4, 1, 2).reshape(N, -1, num_classes)
                bbox = bbox.view(N, -1, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 4)
                all_cls.append(cls_logits)
                all_reg.append(bbox)
            return lib.cat(all_cls, dim=1), lib.cat(all_reg, dim=1)

    class RetinaNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = tiny_fpn(lib)
            self.head = Head()

        def forward(self, images):
            feats = self.backbone(images)[1:3]  # strides 4 and 8
            return self.head(feats)

    return RetinaNet()


def prepare_target(lib, boxes, labels, w=16, h=16):
    """The COCO loader's clean-up: clamp into the image, drop degenerate boxes."""
    boxes = lib.as_tensor(boxes, dtype=lib.float64).reshape(-1, 4)
    boxes[:, 0::2].clamp_(min=0, max=w)
    boxes[:, 1::2].clamp_(min=0, max=h)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    return {"boxes": boxes[keep], "labels": lib.as_tensor(labels, dtype=lib.int64)[keep]}


def retina_loss(lib, targets, cls_logits, bbox_regression, anchors, matcher, coder):
    F = lib.nn.functional
    matched_idxs = []
    for t in targets:
        if t["boxes"].numel() == 0:
            matched_idxs.append(lib.full((anchors.size(0),), -1, dtype=lib.int64))
            continue
        matched_idxs.append(matcher(box_iou(lib, t["boxes"], anchors)[0]))
    cls_losses, reg_losses = [], []
    for t, logits_i, reg_i, m in zip(targets, cls_logits, bbox_regression, matched_idxs):
        foreground = m >= 0
        num_foreground = foreground.sum()
        gt_classes_target = lib.zeros_like(logits_i)
        gt_classes_target[foreground, t["labels"][m[foreground]]] = 1.0
        valid = m != Matcher.BETWEEN_THRESHOLDS
        cls_losses.append(sigmoid_focal_loss(lib, logits_i[valid], gt_classes_target[valid],
                                             reduction="sum") / max(1, num_foreground))
        matched_gt = t["boxes"][m[foreground]]
        target_regression = coder.encode_single(matched_gt, anchors[foreground, :])
        reg_losses.append(F.l1_loss(reg_i[foreground, :], target_regression, reduction="sum")
                          / max(1, num_foreground))
    return sum(cls_losses) / len(targets), sum(reg_losses) / len(targets), matched_idxs


def warmup_lr_scheduler(lib, optimizer, warmup_iters, warmup_factor):
    def f(x):
        if x >= warmup_iters:
            return 1
        alpha = float(x) / warmup_iters
        return warmup_factor * (1 - alpha) + alpha

    return lib.optim.lr_scheduler.LambdaLR(optimizer, f)


def retina_train(lib, init, steps=4, dtype="float64"):
    dt = getattr(lib, dtype)
    model = start(lib, tiny_retinanet, init, dtype=dtype)
    images = lib.tensor(draw(3, 3, 16, 16, seed=100)).to(dt)
    targets = [prepare_target(lib, [[1.0, 2.0, 9.0, 12.0], [6.0, 4.0, 15.0, 9.0]], [0, 2]),
               prepare_target(lib, np.zeros((0, 4)), np.zeros(0, np.int64)),  # no boxes
               prepare_target(lib, [[3.0, 3.0, 3.0, 8.0], [-2.0, 8.0, 7.0, 19.0]], [1, 1])]
    for t in targets:
        t["boxes"] = t["boxes"].to(dt)
    anchors = make_anchors(lib, 16, ((4, 4), (2, 2)), sizes=(6, 12)).to(dt)
    matcher = Matcher(lib, 0.5, 0.4, allow_low_quality_matches=True)
    coder = BoxCoder(lib, (1.0, 1.0, 1.0, 1.0))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = lib.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    lr_scheduler = warmup_lr_scheduler(lib, optimizer, 3, 1.0 / 10)
    model.train()
    record = {"targets": targets, "loss": [], "lr": [], "matches": [], "grads": []}
    for _ in range(steps):
        cls_logits, bbox_regression = model(images)
        loss_cls, loss_reg, matched = retina_loss(lib, targets, cls_logits, bbox_regression,
                                                  anchors, matcher, coder)
        losses = loss_cls + loss_reg
        optimizer.zero_grad()
        losses.backward()
        lib.nn.utils.clip_grad_norm_(params, 10.0)
        record["grads"].append({k: p.grad for k, p in model.named_parameters()})
        optimizer.step()
        lr_scheduler.step()
        record["loss"].append([loss_cls.item(), loss_reg.item()])
        record["lr"].append(optimizer.param_groups[0]["lr"])
        record["matches"].append(matched)
    model.eval()
    with lib.no_grad():
        cls_logits, bbox_regression = model(images)
        record["detections"] = postprocess(lib, cls_logits, bbox_regression, anchors,
                                           score_thresh=0.005)
    record["params"] = dict(model.state_dict())
    return record


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tiny_retinanet_trains_with_warmup_on_empty_and_degenerate_targets(dtype):
    got = both(retina_train, initial_state(tiny_retinanet), dtype=dtype,
               tol=1e-10 if dtype == "float64" else 2e-5)
    assert len(got["targets"][2]["boxes"]) == 1  # the zero-width box was dropped
    np.testing.assert_array_equal(got["targets"][2]["boxes"][0], [0, 8, 7, 16])
    assert got["loss"][-1][0] < got["loss"][0][0]


# 10. YOLOv5's build_targets (neighbour-cell offsets, anchor-ratio filter) and CIoU loss

def bbox_iou_v5(lib, box1, box2, xywh=True, CIoU=False, eps=1e-7):
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
        w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * \
        (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if CIoU:
        cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
        ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
        c2 = cw ** 2 + ch ** 2 + eps
        rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
        v = (4 / math.pi ** 2) * lib.pow(lib.atan(w2 / h2) - lib.atan(w1 / h1), 2)
        with lib.no_grad():
            alpha = v / (v - iou + (1 + eps))
        return iou - (rho2 / c2 + v * alpha)
    return iou


def build_targets_v5(lib, p, targets, anchors, anchor_t=4.0):
    na, nt = anchors.shape[1], targets.shape[0]
    tcls, tbox, indices, anch = [], [], [], []
    gain = lib.ones(7)
    ai = lib.arange(na).float().view(na, 1).repeat(1, nt).to(targets.dtype)
    targets = lib.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)
    g = 0.5
    off = lib.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]).to(targets.dtype) * g
    for i in range(len(p)):
        anchors_i, shape = anchors[i], p[i].shape
        gain[2:6] = lib.tensor(shape)[[3, 2, 3, 2]]
        t = targets * gain
        if nt:
            r = t[..., 4:6] / anchors_i[:, None]
            j = lib.max(r, 1 / r).max(2)[0] < anchor_t
            t = t[j]
            gxy = t[:, 2:4]
            gxi = gain[[2, 3]] - gxy
            j, k = ((gxy % 1 < g) & (gxy > 1)).T
            l, m = ((gxi % 1 < g) & (gxi > 1)).T
            j = lib.stack((lib.ones_like(j), j, k, l, m))
            t = t.repeat((5, 1, 1))[j]
            offsets = (lib.zeros_like(gxy)[None] + off[:, None])[j]
        else:
            t = targets[0]
            offsets = 0
        bc, gxy, gwh, a = t.chunk(4, 1)
        a, (b, c) = a.long().view(-1), bc.long().T
        gij = (gxy - offsets).long()
        gi, gj = gij.T
        indices.append((b, a, gj.clamp_(0, shape[2] - 1), gi.clamp_(0, shape[3] - 1)))
        tbox.append(lib.cat((gxy - gij, gwh), 1))
        anch.append(anchors_i[a])
        tcls.append(c)
    return tcls, tbox, indices, anch


def compute_loss_v5(lib, p, targets, anchors, nc=2):
    nn = lib.nn
    BCEcls = nn.BCEWithLogitsLoss(pos_weight=lib.tensor([1.0]))
    BCEobj = nn.BCEWithLogitsLoss(pos_weight=lib.tensor([1.0]))
    balance = [4.0, 1.0]
    lcls, lbox, lobj = lib.zeros(1), lib.zeros(1), lib.zeros(1)
    tcls, tbox, indices, anch = build_targets_v5(lib, p, targets, anchors)
    for i, pi in enumerate(p):
        b, a, gj, gi = indices[i]
        tobj = lib.zeros(pi.shape[:4], dtype=pi.dtype)
        n = b.shape[0]
        if n:
            pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, nc), 1)
            pxy = pxy.sigmoid() * 2 - 0.5
            pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
            pbox = lib.cat((pxy, pwh), 1)
            iou = bbox_iou_v5(lib, pbox, tbox[i], CIoU=True).squeeze()
            lbox += (1.0 - iou).mean()
            iou = iou.detach().clamp(0).type(tobj.dtype)
            tobj[b, a, gj, gi] = iou
            t = lib.full_like(pcls, 0.0)
            t[range(n), tcls[i]] = 1.0
            lcls += BCEcls(pcls, t)
        lobj += BCEobj(pi[..., 4], tobj) * balance[i]
    bs = tobj.shape[0]
    return (lbox * 0.05 + lobj + lcls * 0.5) * bs, lib.cat((lbox, lobj, lcls)).detach(), indices


def yolov5_run(lib, empty: bool = False):
    anchors = lib.tensor([[[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]],
                          [[1.875, 3.8125], [3.875, 2.8125], [3.6875, 7.4375]]])
    p = [lib.tensor(draw(2, 3, 8, 8, 7, seed=110), requires_grad=True),
         lib.tensor(draw(2, 3, 4, 4, 7, seed=111), requires_grad=True)]
    targets = lib.tensor([[0, 1, 0.30, 0.40, 0.20, 0.30], [0, 0, 0.72, 0.77, 0.50, 0.40],
                          [1, 1, 0.97, 0.03, 0.10, 0.10], [1, 0, 0.55, 0.12, 0.05, 0.30]])
    if empty:
        targets = targets[:0]
    loss, items, indices = compute_loss_v5(lib, p, targets, anchors)
    loss.backward()
    return {"loss": loss, "items": items, "indices": indices, "g0": p[0].grad, "g1": p[1].grad}


@pytest.mark.parametrize("empty", [False, True], ids=["targets", "no-targets"])
def test_yolov5_build_targets_and_ciou_loss(empty):
    both(yolov5_run, empty)


# 11. DETR-lite trained a few steps: learned queries attending to conv features, Hungarian
#     matching every step, AdamW with a backbone parameter group, clipping and StepLR

def detr_lite(lib, num_classes=3, num_queries=5, d=8):
    nn, F = lib.nn, lib.nn.functional

    class MLP(nn.Module):
        def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
            super().__init__()
            self.num_layers = num_layers
            h = [hidden_dim] * (num_layers - 1)
            self.layers = nn.ModuleList(nn.Linear(n, k)
                                        for n, k in zip([input_dim] + h, h + [output_dim]))

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
            return x

    class DETR(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, d, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.Conv2d(d, d, 3, stride=2, padding=1))
            self.query_embed = nn.Embedding(num_queries, d)
            self.row_embed = nn.Parameter(lib.rand(4, d // 2))
            self.col_embed = nn.Parameter(lib.rand(4, d // 2))
            self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
            self.norm = nn.LayerNorm(d)
            self.class_embed = nn.Linear(d, num_classes + 1)
            self.bbox_embed = MLP(d, d, 4, 3)

        def forward(self, x):
            h = self.backbone(x)
            N, C, H, W = h.shape
            pos = lib.cat([self.col_embed[:W].unsqueeze(0).repeat(H, 1, 1),
                           self.row_embed[:H].unsqueeze(1).repeat(1, W, 1)], dim=-1)
            memory = h.flatten(2).permute(0, 2, 1) + pos.flatten(0, 1).unsqueeze(0)
            q = self.query_embed.weight.unsqueeze(0).repeat(N, 1, 1)
            hs, _ = self.attn(q, memory, memory, need_weights=False)
            hs = self.norm(hs + q)
            return {"pred_logits": self.class_embed(hs),
                    "pred_boxes": self.bbox_embed(hs).sigmoid()}

    return DETR()


def detr_train(lib, init, steps=3):
    model = start(lib, detr_lite, init)
    images = lib.tensor(draw(3, 3, 16, 16, seed=120))
    targets = detr_targets(lib)
    weight_dict = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
    criterion = SetCriterion(lib, 3, HungarianMatcher(lib), 0.1, weight_dict)
    param_dicts = [
        {"params": [p for n, p in model.named_parameters()
                    if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters()
                    if "backbone" in n and p.requires_grad], "lr": 1e-3},
    ]
    optimizer = lib.optim.AdamW(param_dicts, lr=1e-2, weight_decay=1e-4)
    lr_scheduler = lib.optim.lr_scheduler.StepLR(optimizer, 2)
    record = {"loss": [], "indices": [], "norm": [], "lr": []}
    for _ in range(steps):
        outputs = model(images)
        loss_dict, indices = criterion(outputs, targets)
        losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict.keys() if k in weight_dict)
        optimizer.zero_grad()
        losses.backward()
        record["norm"].append(lib.nn.utils.clip_grad_norm_(model.parameters(), 0.1))
        optimizer.step()
        lr_scheduler.step()
        record["loss"].append({k: v.item() for k, v in loss_dict.items()})
        record["indices"].append(indices)
        record["lr"].append([g["lr"] for g in optimizer.param_groups])
    record["params"] = dict(model.state_dict())
    return record


def test_detr_lite_trains_with_hungarian_matching_every_step():
    both(detr_train, initial_state(detr_lite))


# 12. YOLOv5's training loop: three parameter groups (BatchNorm weights without decay), nesterov
#     SGD, warmup by np.interp of each group's lr and momentum, a one-cycle LambdaLR, a disabled
#     GradScaler, gradient accumulation and ModelEMA

def tiny_yolo(lib, na=3, nc=2):
    nn = lib.nn

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1 = Conv(3, 8, 3, 2)
            self.b2 = Conv(8, 8, 3, 2)
            self.b3 = Conv(8, 8, 3, 2)
            self.m = nn.ModuleList(nn.Conv2d(8, na * (nc + 5), 1) for _ in range(2))

        def forward(self, x):
            x1 = self.b2(self.b1(x))
            x2 = self.b3(x1)
            out = []
            for i, xi in enumerate((x1, x2)):
                y = self.m[i](xi)
                bs, _, ny, nx = y.shape
                out.append(y.view(bs, na, nc + 5, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
            return out

    return Model()


class ModelEMA:
    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        import copy

        self.ema = copy.deepcopy(model).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, lib, model):
        with lib.no_grad():
            self.updates += 1
            d = self.decay(self.updates)
            msd = model.state_dict()
            for k, v in self.ema.state_dict().items():
                if v.is_floating_point():  # YOLOv5: v.dtype.is_floating_point (NumPy dtypes)
                    v *= d
                    v += (1 - d) * msd[k].detach()


def yolov5_train(lib, init, steps=4):
    nn = lib.nn
    model = start(lib, tiny_yolo, init)
    anchors = lib.tensor([[[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]],
                          [[1.875, 3.8125], [3.875, 2.8125], [3.6875, 7.4375]]])
    imgs = lib.tensor(draw(2, 3, 32, 32, seed=130))
    targets = lib.tensor([[0, 1, 0.30, 0.40, 0.20, 0.30], [0, 0, 0.72, 0.77, 0.50, 0.40],
                          [1, 1, 0.55, 0.12, 0.05, 0.30]])
    lr0, momentum, warmup_momentum, warmup_bias_lr, weight_decay = 0.01, 0.937, 0.8, 0.1, 5e-4
    g = [], [], []
    bn = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for v in model.modules():
        for p_name, p in v.named_parameters(recurse=0):
            if p_name == "bias":
                g[2].append(p)
            elif p_name == "weight" and isinstance(v, bn):
                g[1].append(p)
            else:
                g[0].append(p)
    optimizer = lib.optim.SGD(g[2], lr=lr0, momentum=momentum, nesterov=True)
    optimizer.add_param_group({"params": g[0], "weight_decay": weight_decay})
    optimizer.add_param_group({"params": g[1], "weight_decay": 0.0})
    epochs, lrf = 3, 0.01

    def lf(x):
        return ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1

    scheduler = lib.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    scheduler.last_epoch = -1
    ema = ModelEMA(model)
    scaler = lib.cuda.amp.GradScaler(enabled=False)
    nw, nbs, batch_size = 3, 4, 2
    accumulate = max(round(nbs / batch_size), 1)
    last_opt_step = -1
    record = {"loss": [], "groups": [], "sizes": [len(x) for x in g]}
    optimizer.zero_grad()
    for ni in range(steps):
        epoch = ni // 2
        if ni <= nw:
            xi = [0, nw]
            accumulate = max(1, np.interp(ni, xi, [1, nbs / batch_size]).round())
            for j, x in enumerate(optimizer.param_groups):
                x["lr"] = np.interp(ni, xi, [warmup_bias_lr if j == 0 else 0.0,
                                             x["initial_lr"] * lf(epoch)])
                if "momentum" in x:
                    x["momentum"] = np.interp(ni, xi, [warmup_momentum, momentum])
        pred = model(imgs)
        loss, loss_items, _ = compute_loss_v5(lib, pred, targets, anchors)
        scaler.scale(loss).backward()
        if ni - last_opt_step >= accumulate:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ema.update(lib, model)
            last_opt_step = ni
        record["loss"].append(loss_items)
        record["groups"].append([[float(x["lr"]), float(x["momentum"])]
                                 for x in optimizer.param_groups])
        if ni % 2 == 1:
            scheduler.step()
    record["params"] = dict(model.state_dict())
    record["ema"] = dict(ema.ema.state_dict())
    return record


def test_yolov5_training_loop_with_warmup_groups_and_ema():
    both(yolov5_train, initial_state(tiny_yolo))


# 13. CenterNet in float32: heatmap focal loss, sigmoid_ clamped, gathered regression, peak NMS
#     by max-pooling, top-K decoding (xingyizhou/CenterNet's losses and decode)

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
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        np.maximum(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def centernet_batch(num_classes=2, size=8, max_objs=4):
    hm = np.zeros((2, num_classes, size, size), np.float32)
    wh = np.zeros((2, max_objs, 2), np.float32)
    ind = np.zeros((2, max_objs), np.int64)
    reg_mask = np.zeros((2, max_objs), np.uint8)
    objs = [[(1, 2.4, 3.7, 3.0, 2.0), (0, 6.2, 1.1, 2.0, 4.0)], []]  # the second image is empty
    for b, boxes in enumerate(objs):
        for k, (cls, cx, cy, w, h) in enumerate(boxes):
            ct_int = np.array([cx, cy]).astype(np.int32)
            draw_umich_gaussian(hm[b, cls], ct_int, 1)
            wh[b, k] = w, h
            ind[b, k] = ct_int[1] * size + ct_int[0]
            reg_mask[b, k] = 1
    return hm, wh, ind, reg_mask


def centernet_run(lib, init):
    nn, F = lib.nn, lib.nn.functional

    def _neg_loss(pred, gt):
        pos_inds = gt.eq(1).float()
        neg_inds = gt.lt(1).float()
        neg_weights = lib.pow(1 - gt, 4)
        loss = 0
        pos_loss = lib.log(pred) * lib.pow(1 - pred, 2) * pos_inds
        neg_loss = lib.log(1 - pred) * lib.pow(pred, 2) * neg_weights * neg_inds
        num_pos = pos_inds.float().sum()
        pos_loss = pos_loss.sum()
        neg_loss = neg_loss.sum()
        if num_pos == 0:
            loss = loss - neg_loss
        else:
            loss = loss - (pos_loss + neg_loss) / num_pos
        return loss

    def _sigmoid(x):
        return lib.clamp(x.sigmoid_(), min=1e-4, max=1 - 1e-4)

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
        return _gather_feat(feat, ind)

    def reg_l1_loss(output, mask, ind, target):
        pred = _transpose_and_gather_feat(output, ind)
        mask = mask.unsqueeze(2).expand_as(pred).float()
        loss = F.l1_loss(pred * mask, target * mask, size_average=False)
        return loss / (mask.sum() + 1e-4)

    def _nms(heat, kernel=3):
        pad = (kernel - 1) // 2
        hmax = nn.functional.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
        keep = (hmax == heat).float()
        return heat * keep

    def _topk(scores, K=5):
        batch, cat, height, width = scores.size()
        topk_scores, topk_inds = lib.topk(scores.view(batch, cat, -1), K)
        topk_inds = topk_inds % (height * width)
        topk_ys = (topk_inds / width).int().float()
        topk_xs = (topk_inds % width).int().float()
        topk_score, topk_ind = lib.topk(topk_scores.view(batch, -1), K)
        topk_clses = (topk_ind / K).int()
        topk_inds = _gather_feat(topk_inds.view(batch, -1, 1), topk_ind).view(batch, K)
        topk_ys = _gather_feat(topk_ys.view(batch, -1, 1), topk_ind).view(batch, K)
        topk_xs = _gather_feat(topk_xs.view(batch, -1, 1), topk_ind).view(batch, K)
        return topk_score, topk_inds, topk_clses, topk_ys, topk_xs

    model = start(lib, centernet_head, init, dtype="float32")
    hm, wh, ind, reg_mask = (lib.tensor(a) for a in centernet_batch())
    x = lib.tensor(draw(2, 3, 16, 16, seed=140), dtype=lib.float32)
    opt = lib.optim.Adam(model.parameters(), lr=1.25e-4 * 100)
    record = {"loss": []}
    for _ in range(3):
        out = model(x)
        out["hm"] = _sigmoid(out["hm"])
        hm_loss = _neg_loss(out["hm"], hm)
        wh_loss = reg_l1_loss(out["wh"], reg_mask, ind, wh)
        loss = hm_loss + 0.1 * wh_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        record["loss"].append([hm_loss, wh_loss])
    record["empty"] = _neg_loss(out["hm"][1:], hm[1:])  # no positives: the negatives' sum
    with lib.no_grad():
        heat = _nms(model(x)["hm"].sigmoid())
        record["peaks"] = heat
        scores, inds, clses, ys, xs = _topk(heat)
        record["topk"] = [scores, inds, clses, ys, xs]
    record["params"] = dict(model.state_dict())
    return record


def centernet_head(lib, num_classes=2):
    nn = lib.nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(inplace=True))
            self.heads = nn.ModuleDict({
                "hm": nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(8, num_classes, 1)),
                "wh": nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(8, 2, 1))})
            self.heads["hm"][-1].bias.data.fill_(-2.19)

        def forward(self, x):
            x = self.base(x)
            return {head: self.heads[head](x) for head in self.heads}

    return Head()


def test_centernet_float32_focal_heatmap_regression_and_topk_decode():
    both(centernet_run, initial_state(centernet_head), tol=2e-5)


# 14. Faster R-CNN pieces: the RPN's per-level top-n and proposal filtering, clipping, small-box
#     removal, the FPN level mapper, and the box head's loss on class-specific regressions

def clip_boxes_to_image(lib, boxes, size):
    dim = boxes.dim()
    boxes_x = boxes[..., 0::2]
    boxes_y = boxes[..., 1::2]
    height, width = size
    boxes_x = boxes_x.clamp(min=0, max=width)
    boxes_y = boxes_y.clamp(min=0, max=height)
    clipped_boxes = lib.stack((boxes_x, boxes_y), dim=dim)
    return clipped_boxes.reshape(boxes.shape)


def remove_small_boxes(lib, boxes, min_size):
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return lib.where(keep)[0]


def filter_proposals(lib, proposals, objectness, image_shapes, num_anchors_per_level,
                     pre_nms_top_n=6, post_nms_top_n=5, nms_thresh=0.7, min_size=1e-3):
    num_images = proposals.shape[0]
    objectness = objectness.detach().reshape(num_images, -1)
    levels = [lib.full((n,), idx, dtype=lib.int64)
              for idx, n in enumerate(num_anchors_per_level)]
    levels = lib.cat(levels, 0).reshape(1, -1).expand_as(objectness)
    r, offset = [], 0
    for ob in objectness.split(num_anchors_per_level, 1):
        num_anchors = ob.shape[1]
        _, top_n_idx = ob.topk(min(pre_nms_top_n, num_anchors), dim=1)
        r.append(top_n_idx + offset)
        offset += num_anchors
    top_n_idx = lib.cat(r, dim=1)
    image_range = lib.arange(num_images)
    batch_idx = image_range[:, None]
    objectness = objectness[batch_idx, top_n_idx]
    levels = levels[batch_idx, top_n_idx]
    proposals = proposals[batch_idx, top_n_idx]
    objectness_prob = lib.sigmoid(objectness)
    final_boxes, final_scores = [], []
    for boxes, scores, lvl, img_shape in zip(proposals, objectness_prob, levels, image_shapes):
        boxes = clip_boxes_to_image(lib, boxes, img_shape)
        keep = remove_small_boxes(lib, boxes, min_size)
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = lib.where(scores >= 0.0)[0]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(lib, boxes, scores, lvl, nms_thresh)
        keep = keep[:post_nms_top_n]
        final_boxes.append(boxes[keep])
        final_scores.append(scores[keep])
    return final_boxes, final_scores


def level_mapper(lib, boxes, k_min=2, k_max=3, canonical_scale=16, canonical_level=3, eps=1e-6):
    s = lib.sqrt(lib.cat([box_area(b) for b in boxes]))
    target_lvls = lib.floor(canonical_level + lib.log2(s / canonical_scale)
                            + lib.log2(lib.tensor(eps, dtype=s.dtype)))
    target_lvls = lib.clamp(target_lvls, min=k_min, max=k_max)
    return (target_lvls.to(lib.int64) - k_min).to(lib.int64)


def fastrcnn_loss(lib, class_logits, box_regression, labels, regression_targets):
    F = lib.nn.functional
    labels = lib.cat(labels, dim=0)
    regression_targets = lib.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    sampled_pos_inds_subset = lib.where(labels > 0)[0]
    labels_pos = labels[sampled_pos_inds_subset]
    N, num_classes = class_logits.shape
    box_regression = box_regression.reshape(N, box_regression.size(-1) // 4, 4)
    box_loss = F.smooth_l1_loss(box_regression[sampled_pos_inds_subset, labels_pos],
                                regression_targets[sampled_pos_inds_subset],
                                beta=1 / 9, reduction="sum")
    return classification_loss, box_loss / labels.numel()


def rcnn_run(lib):
    anchors = make_anchors(lib)
    coder = BoxCoder(lib, (1.0, 1.0, 1.0, 1.0))
    deltas = lib.tensor(draw(2 * 60, 4, seed=150) * 0.3)
    proposals = coder.decode_single(deltas, lib.cat([anchors, anchors])).view(2, -1, 4)
    objectness = lib.tensor(draw(2, 60, seed=151), requires_grad=True)
    boxes, scores = filter_proposals(lib, proposals, objectness, [(32, 32), (30, 28)], [48, 12])
    lvls = level_mapper(lib, boxes)
    gt = [lib.tensor(random_boxes(2, 152)), lib.zeros(0, 4)]
    boxes = [lib.cat((props, g)) for props, g in zip(boxes, gt)]  # add_gt_proposals
    labels, targets = [], []
    for props, g in zip(boxes, gt):
        if g.numel() == 0:  # an image without boxes: every proposal is background
            labels.append(lib.zeros((props.shape[0],), dtype=lib.int64))
            targets.append(lib.zeros_like(props))
            continue
        m = Matcher(lib, 0.5, 0.5)(box_iou(lib, g, props)[0])
        lab = lib.tensor([1, 2])[m.clamp(min=0)]
        lab[m < 0] = 0
        labels.append(lab)
        targets.append(coder.encode_single(g[m.clamp(min=0)], props))
    n = sum(b.shape[0] for b in boxes)
    logits = lib.tensor(draw(n, 3, seed=153), requires_grad=True)
    reg = lib.tensor(draw(n, 12, seed=154), requires_grad=True)
    cls_loss, box_loss = fastrcnn_loss(lib, logits, reg, labels, targets)
    (cls_loss + box_loss).backward()
    return {"boxes": boxes, "scores": scores, "lvls": lvls, "labels": labels,
            "cls": cls_loss, "box": box_loss, "glogits": logits.grad, "greg": reg.grad,
            "gobj": objectness.grad}


def test_rpn_proposal_filtering_level_mapper_and_box_head_loss():
    got = both(rcnn_run)
    assert got["gobj"] is None and sum(int(lab.sum()) for lab in got["labels"]) > 0


# 15. matching against an image without boxes, unguarded: a clear error naming the reduction

def test_max_over_an_empty_dim_names_the_op_and_the_empty_dim():
    overlaps = ng.zeros(0, 60)  # no truths: SSD's best prior per truth is fine (empty) ...
    assert overlaps.max(1, keepdim=True)[0].shape == (0, 1)
    with pytest.raises(IndexError, match=r"max: reduction dim 0 is empty \(shape \(0, 60\)\)"):
        overlaps.max(0, keepdim=True)  # ... its best truth per prior is not (PyTorch's type)
    with pytest.raises(IndexError, match="min: reduction dim 1 is empty"):
        ng.zeros(3, 0).min(dim=-1)
    for call, op in [(lambda: ng.zeros(0, 3).amax(0), "max"),
                     (lambda: ng.zeros(0).argmax(), "argmax"),
                     (lambda: ng.argmin(ng.zeros(2, 0), 1), "argmin"),
                     (lambda: ng.zeros(0, 2).max(), "max")]:
        with pytest.raises(ValueError, match=f"^{op}: reduction dim . is empty"):
            call()
    assert ng.zeros(3, 0).argmax(0).shape == (0,)  # an empty dim that is kept is fine


def check_targets(lib, images, targets):
    """torchvision's GeneralizedRCNN input checks, through ``torch._assert``."""
    for target in targets:
        boxes = target["boxes"]
        lib._assert(isinstance(boxes, lib.Tensor), "Expected target boxes to be of type Tensor.")
        lib._assert(len(boxes.shape) == 2 and boxes.shape[-1] == 4,
                    f"Expected target boxes to be a tensor of shape [N, 4], got {boxes.shape}.")
        degenerate_boxes = boxes[:, 2:] <= boxes[:, :2]
        lib._assert(not degenerate_boxes.any(), "All bounding boxes should have positive "
                    "height and width.")
    return [img.shape[-2:] for img in images]


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_torchvision_input_checks_through_underscore_assert(lib):
    good = {"boxes": lib.tensor([[1.0, 2.0, 5.0, 6.0]])}
    assert check_targets(lib, [lib.zeros(3, 8, 9)], [good, {"boxes": lib.zeros(0, 4)}]) == \
        [(8, 9)]
    with pytest.raises(AssertionError, match="positive height and width"):
        check_targets(lib, [], [{"boxes": lib.tensor([[1.0, 2.0, 1.0, 6.0]])}])
    with pytest.raises(AssertionError, match="shape"):
        check_targets(lib, [], [{"boxes": lib.zeros(4)}])


# 16. DETR's batching of images of different sizes (a padded batch and its mask, written through
#     the views that iterating a tensor gives), the mask interpolated to the feature map, the
#     sine position embedding, and a detection DataLoader with a tuple(zip(*batch)) collate

def _max_by_axis(the_list):
    maxes = the_list[0]
    for sublist in the_list[1:]:
        for index, item in enumerate(sublist):
            maxes[index] = max(maxes[index], item)
    return maxes


def nested_tensor_from_tensor_list(lib, tensor_list):
    max_size = _max_by_axis([list(img.shape) for img in tensor_list])
    batch_shape = [len(tensor_list)] + max_size
    b, c, h, w = batch_shape
    dtype = tensor_list[0].dtype
    device = tensor_list[0].device
    tensor = lib.zeros(batch_shape, dtype=dtype, device=device)
    mask = lib.ones((b, h, w), dtype=lib.bool, device=device)
    for img, pad_img, m in zip(tensor_list, tensor, mask):
        pad_img[: img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
        m[: img.shape[1], :img.shape[2]] = False
    return tensor, mask


def position_embedding_sine(lib, mask, num_pos_feats=4, temperature=10000, normalize=True,
                            scale=2 * math.pi):
    not_mask = ~mask
    y_embed = not_mask.cumsum(1, dtype=lib.float32)
    x_embed = not_mask.cumsum(2, dtype=lib.float32)
    if normalize:
        eps = 1e-6
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = lib.arange(num_pos_feats, dtype=lib.float32, device=mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = lib.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = lib.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return lib.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def detr_batching(lib):
    F = lib.nn.functional
    sizes = [(3, 9, 7), (3, 6, 10), (3, 8, 8)]
    images = [lib.tensor(draw(*s, seed=160 + i), dtype=lib.float32) for i, s in enumerate(sizes)]

    class Dataset(lib.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, idx):
            n = idx + 1 if idx != 1 else 0
            target = {"boxes": lib.tensor(random_boxes(n, 170 + idx) / 32, dtype=lib.float32),
                      "labels": lib.ones(n, dtype=lib.int64), "image_id": lib.tensor([idx])}
            return images[idx], target

    def collate_fn(batch):
        batch = list(zip(*batch))
        batch[0] = nested_tensor_from_tensor_list(lib, batch[0])
        return tuple(batch)

    loader = lib.utils.data.DataLoader(Dataset(), batch_size=2, shuffle=False,
                                       collate_fn=collate_fn, drop_last=False)
    out = []
    for (samples, mask), targets in loader:
        feat_mask = F.interpolate(mask[None].float(), size=(3, 3)).to(lib.bool)[0]
        pos = position_embedding_sine(lib, feat_mask)
        out.append({"samples": samples, "mask": mask, "feat_mask": feat_mask, "pos": pos,
                    "n": [len(t["boxes"]) for t in targets],
                    "ids": [t["image_id"] for t in targets]})
    return out


def test_detr_padded_batches_masks_and_sine_position_embedding():
    got = both(detr_batching, tol=1e-6)
    assert got[0]["mask"][1, :6, :10].sum() == 0 and got[0]["mask"][0, :, 7:].all()


# 17. DETR's backbone: FrozenBatchNorm2d drops num_batches_tracked in _load_from_state_dict to
#     load a BatchNorm2d checkpoint; IntermediateLayerGetter; the stem frozen by name

def frozen_backbone(lib, frozen: bool = True):
    from collections import OrderedDict

    nn = lib.nn

    FrozenBatchNorm2d = frozen_batchnorm2d(lib)

    class IntermediateLayerGetter(nn.ModuleDict):
        def __init__(self, model, return_layers):
            orig_return_layers = return_layers
            return_layers = {str(k): str(v) for k, v in return_layers.items()}
            layers = OrderedDict()
            for name, module in model.named_children():
                layers[name] = module
                if name in return_layers:
                    del return_layers[name]
                if not return_layers:
                    break
            super().__init__(layers)
            self.return_layers = orig_return_layers

        def forward(self, x):
            out = OrderedDict()
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out

    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    body = nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), norm(4), nn.ReLU())),
        ("layer1", nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, bias=False), norm(8), nn.ReLU())),
        ("layer2", nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, bias=False), norm(8), nn.ReLU())),
        ("fc", nn.Linear(8, 10))]))
    return IntermediateLayerGetter(body, {"layer1": "0", "layer2": "1"})


def frozen_run(lib, ckpt):
    backbone = frozen_backbone(lib).double()
    result = backbone.load_state_dict({k: lib.tensor(v) for k, v in ckpt.items()})
    for name, parameter in backbone.named_parameters():
        if "layer1" not in name and "layer2" not in name:
            parameter.requires_grad_(False)
    opt = lib.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1,
                        momentum=0.9)
    x = lib.tensor(draw(2, 3, 16, 16, seed=180))
    losses = []
    for _ in range(2):
        out = backbone(x)
        loss = sum(v.square().mean() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys),
            "loss": losses, "state": dict(backbone.state_dict()),
            "stem_grad": backbone.stem[0].weight.grad}


def test_frozen_batchnorm_loads_a_batchnorm_checkpoint_through_load_from_state_dict():
    torch.manual_seed(0)
    src = frozen_backbone(torch, frozen=False).double()
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked += 7
    ckpt = {k: v.detach().numpy().copy() for k, v in src.state_dict().items()}
    assert "stem.1.num_batches_tracked" in ckpt
    got = both(frozen_run, ckpt)
    assert got["missing"] == [] and got["unexpected"] == [] and got["stem_grad"] is None


def renamed_head(lib):
    """A detector head whose checkpoints renamed ``cls`` to ``cls_logits`` (converted on
    loading by an old-style pre-hook) and which saves its anchors' count beside its tensors."""
    nn = lib.nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_logits = nn.Linear(4, 3)
            self.register_buffer("anchors", lib.ones(6, 4))
            self._register_load_state_dict_pre_hook(self._rename)

        @staticmethod
        def _rename(state_dict, prefix, local_metadata, strict, missing_keys,
                    unexpected_keys, error_msgs):
            for name in ("weight", "bias"):
                if prefix + "cls." + name in state_dict:
                    state_dict[prefix + "cls_logits." + name] = state_dict.pop(
                        prefix + "cls." + name)

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination[prefix + "num_anchors"] = lib.tensor(self.anchors.shape[0])

        def _load_from_state_dict(self, state_dict, prefix, *args):
            state_dict.pop(prefix + "num_anchors", None)
            super()._load_from_state_dict(state_dict, prefix, *args)

    return nn.Sequential(nn.Linear(4, 4), Head())


def head_checkpoint(lib):
    model = renamed_head(lib).double()
    old = {k: lib.tensor(draw(*v.shape, seed=190 + i)) for i, (k, v) in enumerate(
        model.state_dict().items()) if k != "1.num_anchors"}
    old = {k.replace("cls_logits", "cls"): v for k, v in old.items()}
    result = model.load_state_dict(old)
    return {"keys": list(model.state_dict()), "state": dict(model.state_dict()),
            "result": [list(result.missing_keys), list(result.unexpected_keys)]}


def test_old_style_load_pre_hook_and_save_to_state_dict_overrides():
    got = both(head_checkpoint)
    assert got["keys"][2:4] == ["1.anchors", "1.num_anchors"] and got["result"] == [[], []]
