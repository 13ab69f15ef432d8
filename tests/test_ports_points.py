"""Geometric deep learning in plain PyTorch (no graph library), ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) the way the
reference repositories write it: PointNet++'s sampling, grouping, set abstraction, feature
propagation and its custom autograd ops; DGCNN's dynamic k-NN edge convolution and transform
net; SchNet's continuous-filter convolution over edge lists and schnetpack's padded neighbour
lists; EGNN's equivariant coordinate updates; DimeNet-style angles; uniform and cotangent mesh
Laplacians with Chamfer and normal losses; SIREN; DeepSDF with an eikonal loss; forces from
energy models trained through double backward, and vmapped force Jacobians; an einsum
tensor-product layer; a Point Transformer layer; voxel pooling; segment reductions over batch
vectors. Both runs start from PyTorch's seeded weights in float64 and see the same arrays, and
losses, gradients and parameters are compared step by step.
"""
# ruff: noqa: B007, B008, PIE808, UP031  (the programs keep their sources' own spellings)

from __future__ import annotations

import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import (both, draw, float64_one_thread, index_points,  # noqa: F401
                    initial_state, query_ball_point, square_distance, start)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("float64_one_thread")

STEPS = 3


def grads(model) -> dict:
    return {k: p.grad for k, p in model.named_parameters()}


# 1. PointNet++ (the reference repository's pointnet2_utils, minus the random start point)

def farthest_point_sample(lib, xyz, npoint):
    device = xyz.device
    B, N, C = xyz.shape
    centroids = lib.zeros(B, npoint, dtype=lib.long).to(device)
    distance = lib.ones(B, N).to(device) * 1e10
    farthest = lib.tensor([0, 3])[:B].to(device)  # the reference draws lib.randint(0, N, (B,))
    batch_indices = lib.arange(B, dtype=lib.long).to(device)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(B, 1, 3)
        dist = lib.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = lib.max(distance, -1)[1]
    return centroids


def sample_and_group(lib, npoint, radius, nsample, xyz, points, returnfps=False):
    B, N, C = xyz.shape
    S = npoint
    fps_idx = farthest_point_sample(lib, xyz, npoint)  # [B, npoint]
    new_xyz = index_points(lib, xyz, fps_idx)
    idx = query_ball_point(lib, radius, nsample, xyz, new_xyz)
    grouped_xyz = index_points(lib, xyz, idx)  # [B, npoint, nsample, C]
    grouped_xyz_norm = grouped_xyz - new_xyz.view(B, S, 1, C)
    if points is not None:
        grouped_points = index_points(lib, points, idx)
        new_points = lib.cat([grouped_xyz_norm, grouped_points], dim=-1)
    else:
        new_points = grouped_xyz_norm
    if returnfps:
        return new_xyz, new_points, grouped_xyz, fps_idx
    return new_xyz, new_points


def sample_and_group_all(lib, xyz, points):
    device = xyz.device
    B, N, C = xyz.shape
    new_xyz = lib.zeros(B, 1, C).to(device)
    grouped_xyz = xyz.view(B, 1, N, C)
    if points is not None:
        new_points = lib.cat([grouped_xyz, points.view(B, 1, N, -1)], dim=-1)
    else:
        new_points = grouped_xyz
    return new_xyz, new_points


def pointnet2(lib):
    nn, F = lib.nn, lib.nn.functional

    class PointNetSetAbstraction(nn.Module):
        def __init__(self, npoint, radius, nsample, in_channel, mlp, group_all):
            super().__init__()
            self.npoint = npoint
            self.radius = radius
            self.nsample = nsample
            self.mlp_convs = nn.ModuleList()
            self.mlp_bns = nn.ModuleList()
            last_channel = in_channel
            for out_channel in mlp:
                self.mlp_convs.append(nn.Conv2d(last_channel, out_channel, 1))
                self.mlp_bns.append(nn.BatchNorm2d(out_channel))
                last_channel = out_channel
            self.group_all = group_all

        def forward(self, xyz, points):
            xyz = xyz.permute(0, 2, 1)
            if points is not None:
                points = points.permute(0, 2, 1)
            if self.group_all:
                new_xyz, new_points = sample_and_group_all(lib, xyz, points)
            else:
                new_xyz, new_points = sample_and_group(lib, self.npoint, self.radius,
                                                       self.nsample, xyz, points)
            new_points = new_points.permute(0, 3, 2, 1)  # [B, C+D, nsample, npoint]
            for i, conv in enumerate(self.mlp_convs):
                bn = self.mlp_bns[i]
                new_points = F.relu(bn(conv(new_points)))
            new_points = lib.max(new_points, 2)[0]
            new_xyz = new_xyz.permute(0, 2, 1)
            return new_xyz, new_points

    class PointNetFeaturePropagation(nn.Module):
        def __init__(self, in_channel, mlp):
            super().__init__()
            self.mlp_convs = nn.ModuleList()
            self.mlp_bns = nn.ModuleList()
            last_channel = in_channel
            for out_channel in mlp:
                self.mlp_convs.append(nn.Conv1d(last_channel, out_channel, 1))
                self.mlp_bns.append(nn.BatchNorm1d(out_channel))
                last_channel = out_channel

        def forward(self, xyz1, xyz2, points1, points2):
            xyz1 = xyz1.permute(0, 2, 1)
            xyz2 = xyz2.permute(0, 2, 1)
            points2 = points2.permute(0, 2, 1)
            B, N, C = xyz1.shape
            _, S, _ = xyz2.shape
            if S == 1:
                interpolated_points = points2.repeat(1, N, 1)
            else:
                dists = square_distance(lib, xyz1, xyz2)
                dists, idx = dists.sort(dim=-1)
                dists, idx = dists[:, :, :3], idx[:, :, :3]  # [B, N, 3]
                dist_recip = 1.0 / (dists + 1e-8)
                norm = lib.sum(dist_recip, dim=2, keepdim=True)
                weight = dist_recip / norm
                interpolated_points = lib.sum(index_points(lib, points2, idx)
                                              * weight.view(B, N, 3, 1), dim=2)
            if points1 is not None:
                points1 = points1.permute(0, 2, 1)
                new_points = lib.cat([points1, interpolated_points], dim=-1)
            else:
                new_points = interpolated_points
            new_points = new_points.permute(0, 2, 1)
            for i, conv in enumerate(self.mlp_convs):
                bn = self.mlp_bns[i]
                new_points = F.relu(bn(conv(new_points)))
            return new_points

    class PartSeg(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.sa1 = PointNetSetAbstraction(8, 0.6, 4, 3 + 3, [8, 8], False)
            self.sa2 = PointNetSetAbstraction(4, 1.2, 4, 8 + 3, [8, 16], False)
            self.sa3 = PointNetSetAbstraction(None, None, None, 16 + 3, [16], True)
            self.fp3 = PointNetFeaturePropagation(16 + 16, [16])
            self.fp2 = PointNetFeaturePropagation(16 + 8, [8])
            self.fp1 = PointNetFeaturePropagation(8 + 3, [8])
            self.conv1 = nn.Conv1d(8, 8, 1)
            self.bn1 = nn.BatchNorm1d(8)
            self.drop1 = nn.Dropout(0.0)
            self.conv2 = nn.Conv1d(8, num_classes, 1)

        def forward(self, xyz):
            l0_points = xyz
            l0_xyz = xyz[:, :3, :]
            l1_xyz, l1_points = self.sa1(l0_xyz, l0_points)
            l2_xyz, l2_points = self.sa2(l1_xyz, l1_points)
            l3_xyz, l3_points = self.sa3(l2_xyz, l2_points)
            l2_points = self.fp3(l2_xyz, l3_xyz, l2_points, l3_points)
            l1_points = self.fp2(l1_xyz, l2_xyz, l1_points, l2_points)
            l0_points = self.fp1(l0_xyz, l1_xyz, l0_points, l1_points)
            feat = F.relu(self.bn1(self.conv1(l0_points)))
            x = self.drop1(feat)
            x = self.conv2(x)
            x = F.log_softmax(x, dim=1)
            x = x.permute(0, 2, 1)
            return x, l3_points

    return PartSeg()


def train_pointnet2(lib):
    init = initial_state(pointnet2)
    model = start(lib, pointnet2, init)
    xyz = lib.tensor(draw(2, 3, 16, seed=1))
    target = lib.tensor(draw(2, 16, seed=2, kind="randint", high=3))
    opt = lib.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-08,
                         weight_decay=1e-4)
    rec = []
    for _ in range(STEPS):
        model.train()
        opt.zero_grad()
        seg_pred, trans_feat = model(xyz)
        seg_pred = seg_pred.contiguous().view(-1, 3)
        loss = lib.nn.functional.nll_loss(seg_pred, target.view(-1, 1)[:, 0])
        loss.backward()
        opt.step()
        pred_choice = seg_pred.data.max(1)[1]
        correct = pred_choice.eq(target.view(-1, 1)[:, 0]).cpu().sum()
        rec.append({"loss": loss, "correct": correct, "g": grads(model)})
    model.eval()
    with lib.no_grad():
        out, _ = model(xyz)
    fps = farthest_point_sample(lib, xyz.permute(0, 2, 1), 6)
    ball = query_ball_point(lib, 0.8, 5, xyz.permute(0, 2, 1), xyz.permute(0, 2, 1)[:, :4])
    return {"steps": rec, "out": out, "state": dict(model.state_dict()), "fps": fps, "ball": ball}


def test_pointnet2_part_segmentation():
    both(train_pointnet2)


# 2. DGCNN (dynamic k-NN graph, EdgeConv, label-smoothed loss, SGD + cosine schedule)

def knn(lib, x, k):
    inner = -2 * lib.matmul(x.transpose(2, 1), x)
    xx = lib.sum(x ** 2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)
    idx = pairwise_distance.topk(k=k, dim=-1)[1]  # (batch_size, num_points, k)
    return idx


def get_graph_feature(lib, x, k=20, idx=None):
    batch_size = x.size(0)
    num_points = x.size(2)
    x = x.view(batch_size, -1, num_points)
    if idx is None:
        idx = knn(lib, x, k=k)  # (batch_size, num_points, k)
    device = x.device
    idx_base = lib.arange(0, batch_size, device=device).view(-1, 1, 1) * num_points
    idx = idx + idx_base
    idx = idx.view(-1)
    _, num_dims, _ = x.size()
    x = x.transpose(2, 1).contiguous()  # (batch_size, num_points, num_dims)
    feature = x.view(batch_size * num_points, -1)[idx, :]
    feature = feature.view(batch_size, num_points, k, num_dims)
    x = x.view(batch_size, num_points, 1, num_dims).repeat(1, 1, k, 1)
    feature = lib.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()
    return feature


def dgcnn(lib, k=4, emb_dims=16, output_channels=5):
    nn, F = lib.nn, lib.nn.functional

    class DGCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = k
            self.bn1 = nn.BatchNorm2d(8)
            self.bn2 = nn.BatchNorm2d(8)
            self.bn3 = nn.BatchNorm2d(16)
            self.bn5 = nn.BatchNorm1d(emb_dims)
            self.conv1 = nn.Sequential(nn.Conv2d(6, 8, kernel_size=1, bias=False), self.bn1,
                                       nn.LeakyReLU(negative_slope=0.2))
            self.conv2 = nn.Sequential(nn.Conv2d(8 * 2, 8, kernel_size=1, bias=False), self.bn2,
                                       nn.LeakyReLU(negative_slope=0.2))
            self.conv3 = nn.Sequential(nn.Conv2d(8 * 2, 16, kernel_size=1, bias=False), self.bn3,
                                       nn.LeakyReLU(negative_slope=0.2))
            self.conv5 = nn.Sequential(nn.Conv1d(32, emb_dims, kernel_size=1, bias=False),
                                       self.bn5, nn.LeakyReLU(negative_slope=0.2))
            self.linear1 = nn.Linear(emb_dims * 2, 16, bias=False)
            self.bn6 = nn.BatchNorm1d(16)
            self.dp1 = nn.Dropout(p=0.0)
            self.linear2 = nn.Linear(16, 8)
            self.bn7 = nn.BatchNorm1d(8)
            self.linear3 = nn.Linear(8, output_channels)

        def forward(self, x):
            batch_size = x.size(0)
            x = get_graph_feature(lib, x, k=self.k)
            x = self.conv1(x)
            x1 = x.max(dim=-1, keepdim=False)[0]
            x = get_graph_feature(lib, x1, k=self.k)
            x = self.conv2(x)
            x2 = x.max(dim=-1, keepdim=False)[0]
            x = get_graph_feature(lib, x2, k=self.k)
            x = self.conv3(x)
            x3 = x.max(dim=-1, keepdim=False)[0]
            x = lib.cat((x1, x2, x3), dim=1)
            x = self.conv5(x)
            x1 = F.adaptive_max_pool1d(x, 1).view(batch_size, -1)
            x2 = F.adaptive_avg_pool1d(x, 1).view(batch_size, -1)
            x = lib.cat((x1, x2), 1)
            x = F.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2)
            x = self.dp1(x)
            x = F.leaky_relu(self.bn7(self.linear2(x)), negative_slope=0.2)
            x = self.linear3(x)
            return x

    return DGCNN()


def cal_loss(lib, pred, gold, smoothing=True):
    """Cross-entropy with label smoothing (DGCNN's util.cal_loss)."""
    F = lib.nn.functional
    gold = gold.contiguous().view(-1)
    if smoothing:
        eps = 0.2
        n_class = pred.size(1)
        one_hot = lib.zeros_like(pred).scatter(1, gold.view(-1, 1), 1)
        one_hot = one_hot * (1 - eps) + (1 - one_hot) * eps / (n_class - 1)
        log_prb = F.log_softmax(pred, dim=1)
        loss = -(one_hot * log_prb).sum(dim=1).mean()
    else:
        loss = F.cross_entropy(pred, gold, reduction="mean")
    return loss


def train_dgcnn(lib):
    init = initial_state(dgcnn)
    model = start(lib, dgcnn, init)
    data = lib.tensor(draw(4, 12, 3, seed=3))
    label = lib.tensor(draw(4, 1, seed=4, kind="randint", high=5))
    opt = lib.optim.SGD(model.parameters(), lr=0.1 * 100, momentum=0.9, weight_decay=1e-4)
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(opt, 10, eta_min=1e-3)
    rec = []
    for _ in range(STEPS):
        model.train()
        data_p = data.permute(0, 2, 1)
        label_s = label.squeeze()
        opt.zero_grad()
        logits = model(data_p)
        loss = cal_loss(lib, logits, label_s)
        loss.backward()
        opt.step()
        scheduler.step()
        preds = logits.max(dim=1)[1]
        rec.append({"loss": loss, "preds": preds, "lr": scheduler.get_last_lr(),
                    "g": grads(model)})
    model.eval()
    with lib.no_grad():
        logits = model(data.permute(0, 2, 1))
        plain = cal_loss(lib, logits, label.squeeze(), smoothing=False)
    idx = knn(lib, data.permute(0, 2, 1), 5)
    return {"steps": rec, "logits": logits, "plain": plain, "knn": idx,
            "state": dict(model.state_dict())}


def test_dgcnn_dynamic_knn_edgeconv():
    both(train_dgcnn)


# 3. SchNet on a batch of molecules, and forces from its energy (double backward)

def radius_graph(lib, pos, batch, cutoff):
    """Edges (source j, target i) between atoms of one molecule closer than ``cutoff``."""
    with lib.no_grad():
        dist = lib.cdist(pos, pos)
        same = batch.view(-1, 1) == batch.view(1, -1)
        mask = same & (dist < cutoff) & ~lib.eye(pos.size(0), dtype=lib.bool)
        edge_index = mask.nonzero().t()
    return edge_index


def schnet(lib, hidden=8, filters=8, gaussians=10, interactions=2, cutoff=3.0):
    nn, F = lib.nn, lib.nn.functional

    class ShiftedSoftplus(nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = lib.log(lib.tensor(2.0)).item()

        def forward(self, x):
            return F.softplus(x) - self.shift

    class GaussianSmearing(nn.Module):
        def __init__(self, start=0.0, stop=5.0, num_gaussians=50):
            super().__init__()
            offset = lib.linspace(start, stop, num_gaussians)
            self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
            self.register_buffer("offset", offset)

        def forward(self, dist):
            dist = dist.view(-1, 1) - self.offset.view(1, -1)
            return lib.exp(self.coeff * lib.pow(dist, 2))

    class CFConv(nn.Module):
        def __init__(self, in_channels, out_channels, num_filters, net, cutoff):
            super().__init__()
            self.lin1 = nn.Linear(in_channels, num_filters, bias=False)
            self.lin2 = nn.Linear(num_filters, out_channels)
            self.nn = net
            self.cutoff = cutoff

        def forward(self, x, edge_index, edge_weight, edge_attr):
            C = 0.5 * (lib.cos(edge_weight * math.pi / self.cutoff) + 1.0)
            W = self.nn(edge_attr) * C.view(-1, 1)
            x = self.lin1(x)
            j, i = edge_index
            msg = x[j] * W
            out = lib.zeros_like(x).index_add_(0, i, msg)
            return self.lin2(out)

    class InteractionBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(gaussians, filters), ShiftedSoftplus(),
                                     nn.Linear(filters, filters))
            self.conv = CFConv(hidden, hidden, filters, self.mlp, cutoff)
            self.act = ShiftedSoftplus()
            self.lin = nn.Linear(hidden, hidden)

        def forward(self, x, edge_index, edge_weight, edge_attr):
            x = self.conv(x, edge_index, edge_weight, edge_attr)
            x = self.act(x)
            return self.lin(x)

    class SchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, hidden, padding_idx=0)
            self.distance_expansion = GaussianSmearing(0.0, cutoff, gaussians)
            self.interactions = nn.ModuleList([InteractionBlock() for _ in range(interactions)])
            self.lin1 = nn.Linear(hidden, hidden // 2)
            self.act = ShiftedSoftplus()
            self.lin2 = nn.Linear(hidden // 2, 1)

        def forward(self, z, pos, batch):
            edge_index = radius_graph(lib, pos, batch, cutoff)
            row, col = edge_index
            edge_weight = (pos[row] - pos[col]).norm(dim=-1)
            edge_attr = self.distance_expansion(edge_weight)
            h = self.embedding(z)
            for interaction in self.interactions:
                h = h + interaction(h, edge_index, edge_weight, edge_attr)
            h = self.lin1(h)
            h = self.act(h)
            h = self.lin2(h)
            num_graphs = int(batch.max()) + 1
            out = lib.zeros(num_graphs, 1, dtype=h.dtype).scatter_add_(
                0, batch.unsqueeze(-1), h)
            return out

    return SchNet()


def molecules(n_mols=3, seed=5):
    """Atom types, positions and the batch vector of a few small molecules of unequal size."""
    sizes = [4, 6, 3][:n_mols]
    z = draw(sum(sizes), seed=seed, kind="randint", high=9) + 1
    pos = draw(sum(sizes), 3, seed=seed + 1) * 1.2
    batch = np.repeat(np.arange(len(sizes)), sizes)
    return z, pos, batch


def train_schnet(lib):
    init = initial_state(schnet)
    model = start(lib, schnet, init)
    z, pos, batch = (lib.tensor(a) for a in molecules())
    y = lib.tensor(draw(3, 1, seed=7))
    opt = lib.optim.AdamW(model.parameters(), lr=5e-3)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        out = model(z, pos, batch)
        loss = lib.nn.functional.l1_loss(out, y)
        loss.backward()
        opt.step()
        rec.append({"loss": loss, "out": out, "g": grads(model)})
    edges = radius_graph(lib, pos, batch, 3.0)
    return {"steps": rec, "edges": edges, "state": dict(model.state_dict())}


def test_schnet_cfconv_index_add():
    both(train_schnet)


def train_forces(lib):
    """Energy and force matching: forces = -dE/dx with create_graph, trained on both."""
    init = initial_state(schnet)
    model = start(lib, schnet, init)
    z, pos, batch = (lib.tensor(a) for a in molecules())
    e_true = lib.tensor(draw(3, 1, seed=8))
    f_true = lib.tensor(draw(pos.shape[0], 3, seed=9))
    opt = lib.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    rho = 0.9
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        pos_ = pos.clone().requires_grad_(True)
        energy = model(z, pos_, batch)
        forces = -lib.autograd.grad(energy, pos_, grad_outputs=lib.ones_like(energy),
                                    create_graph=True, retain_graph=True)[0]
        e_loss = lib.nn.functional.mse_loss(energy, e_true)
        f_loss = lib.nn.functional.mse_loss(forces, f_true)
        loss = (1 - rho) * e_loss + rho * f_loss
        loss.backward()
        opt.step()
        rec.append({"e": e_loss, "f": f_loss, "forces": forces, "g": grads(model)})
    return {"steps": rec, "state": dict(model.state_dict())}


def test_forces_from_energy_double_backward():
    both(train_forces)


def md_schnet(lib):
    """Velocity-Verlet molecular dynamics on the learnt energy: forces by autograd.grad each
    step, positions (a leaf that requires grad) updated in place under no_grad; then the
    backward form of the forces, ``-pos.grad``, with ``pos.grad.zero_()`` between calls."""
    init = initial_state(schnet)
    model = start(lib, schnet, init)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    z, pos0, batch = (lib.tensor(a) for a in molecules())
    mass = lib.tensor([1.0, 12.0, 14.0, 16.0, 1.0, 1.0, 12.0, 1.0, 1.0, 1.0, 16.0, 1.0, 1.0])
    pos = pos0.clone().requires_grad_(True)
    vel = lib.zeros_like(pos0)
    dt = 0.05

    def forces():
        E = model(z, pos, batch).sum()
        F, = lib.autograd.grad(E, pos)
        return E, -F

    E, F = forces()
    traj = []
    for _ in range(4):
        with lib.no_grad():
            vel += 0.5 * dt * F / mass[:, None]
            pos += dt * vel
        E, F = forces()
        with lib.no_grad():
            vel += 0.5 * dt * F / mass[:, None]
        kin = 0.5 * (mass[:, None] * vel ** 2).sum()
        traj.append([pos.detach().clone(), E.detach(), kin])
    pos2 = pos0.clone().requires_grad_()
    model(z, pos2, batch).sum().backward()
    f2 = -pos2.grad
    pos2.grad.zero_()
    model(z, pos2 * 1.01, batch).sum().backward()
    return [traj, f2, pos2.grad, pos.requires_grad]


def test_velocity_verlet_on_learnt_forces():
    both(md_schnet)


# 4. EGNN (E(n)-equivariant graph convolution, the reference egnn_clean.py)

def unsorted_segment_sum(data, segment_ids, num_segments):
    result_shape = (num_segments, data.size(1))
    result = data.new_full(result_shape, 0)  # Init empty result tensor.
    segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
    result.scatter_add_(0, segment_ids, data)
    return result


def unsorted_segment_mean(lib, data, segment_ids, num_segments):
    result_shape = (num_segments, data.size(1))
    segment_ids = segment_ids.unsqueeze(-1).expand(-1, data.size(1))
    result = data.new_full(result_shape, 0)  # Init empty result tensor.
    count = data.new_full(result_shape, 0)
    result.scatter_add_(0, segment_ids, data)
    count.scatter_add_(0, segment_ids, lib.ones_like(data))
    return result / count.clamp(min=1)


def egnn(lib, in_node_nf=3, hidden_nf=8, out_node_nf=2, n_layers=2, attention=True,
         normalize=True, tanh=True):
    nn = lib.nn

    class E_GCL(nn.Module):
        def __init__(self, input_nf, output_nf, hidden_nf, edges_in_d=0, act_fn=nn.SiLU(),
                     residual=True, attention=False, normalize=False, coords_agg="mean",
                     tanh=False):
            super().__init__()
            input_edge = input_nf * 2
            self.residual = residual
            self.attention = attention
            self.normalize = normalize
            self.coords_agg = coords_agg
            self.tanh = tanh
            self.epsilon = 1e-8
            edge_coords_nf = 1
            self.edge_mlp = nn.Sequential(
                nn.Linear(input_edge + edge_coords_nf + edges_in_d, hidden_nf), act_fn,
                nn.Linear(hidden_nf, hidden_nf), act_fn)
            self.node_mlp = nn.Sequential(
                nn.Linear(hidden_nf + input_nf, hidden_nf), act_fn,
                nn.Linear(hidden_nf, output_nf))
            layer = nn.Linear(hidden_nf, 1, bias=False)
            lib.nn.init.xavier_uniform_(layer.weight, gain=0.001)
            coord_mlp = []
            coord_mlp.append(nn.Linear(hidden_nf, hidden_nf))
            coord_mlp.append(act_fn)
            coord_mlp.append(layer)
            if self.tanh:
                coord_mlp.append(nn.Tanh())
            self.coord_mlp = nn.Sequential(*coord_mlp)
            if self.attention:
                self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid())

        def edge_model(self, source, target, radial, edge_attr):
            if edge_attr is None:  # Unused.
                out = lib.cat([source, target, radial], dim=1)
            else:
                out = lib.cat([source, target, radial, edge_attr], dim=1)
            out = self.edge_mlp(out)
            if self.attention:
                att_val = self.att_mlp(out)
                out = out * att_val
            return out

        def node_model(self, x, edge_index, edge_attr, node_attr):
            row, col = edge_index
            agg = unsorted_segment_sum(edge_attr, row, num_segments=x.size(0))
            if node_attr is not None:
                agg = lib.cat([x, agg, node_attr], dim=1)
            else:
                agg = lib.cat([x, agg], dim=1)
            out = self.node_mlp(agg)
            if self.residual:
                out = x + out
            return out, agg

        def coord_model(self, coord, edge_index, coord_diff, edge_feat):
            row, col = edge_index
            trans = coord_diff * self.coord_mlp(edge_feat)
            if self.coords_agg == "sum":
                agg = unsorted_segment_sum(trans, row, num_segments=coord.size(0))
            elif self.coords_agg == "mean":
                agg = unsorted_segment_mean(lib, trans, row, num_segments=coord.size(0))
            else:
                raise Exception("Wrong coords_agg parameter %s" % self.coords_agg)
            coord = coord + agg
            return coord

        def coord2radial(self, edge_index, coord):
            row, col = edge_index
            coord_diff = coord[row] - coord[col]
            radial = lib.sum(coord_diff ** 2, 1).unsqueeze(1)
            if self.normalize:
                norm = lib.sqrt(radial).detach() + self.epsilon
                coord_diff = coord_diff / norm
            return radial, coord_diff

        def forward(self, h, edge_index, coord, edge_attr=None, node_attr=None):
            row, col = edge_index
            radial, coord_diff = self.coord2radial(edge_index, coord)
            edge_feat = self.edge_model(h[row], h[col], radial, edge_attr)
            coord = self.coord_model(coord, edge_index, coord_diff, edge_feat)
            h, agg = self.node_model(h, edge_index, edge_feat, node_attr)
            return h, coord, edge_attr

    class EGNN(nn.Module):
        def __init__(self, in_edge_nf=1, device="cpu", act_fn=nn.SiLU(), residual=True):
            super().__init__()
            self.hidden_nf = hidden_nf
            self.device = device
            self.n_layers = n_layers
            self.embedding_in = nn.Linear(in_node_nf, self.hidden_nf)
            self.embedding_out = nn.Linear(self.hidden_nf, out_node_nf)
            for i in range(0, n_layers):
                self.add_module("gcl_%d" % i, E_GCL(
                    self.hidden_nf, self.hidden_nf, self.hidden_nf, edges_in_d=in_edge_nf,
                    act_fn=act_fn, residual=residual, attention=attention,
                    normalize=normalize, tanh=tanh))
            self.to(self.device)

        def forward(self, h, x, edges, edge_attr):
            h = self.embedding_in(h)
            for i in range(0, self.n_layers):
                h, x, _ = self._modules["gcl_%d" % i](h, edges, x, edge_attr=edge_attr)
            h = self.embedding_out(h)
            return h, x

    return EGNN()


def get_edges(n_nodes):
    rows, cols = [], []
    for i in range(n_nodes):
        for j in range(n_nodes):
            if i != j:
                rows.append(i)
                cols.append(j)
    edges = [rows, cols]
    return edges


def get_edges_batch(lib, n_nodes, batch_size):
    edges = get_edges(n_nodes)
    edge_attr = lib.ones(len(edges[0]) * batch_size, 1)
    edges = [lib.LongTensor(edges[0]), lib.LongTensor(edges[1])]
    if batch_size == 1:
        return edges, edge_attr
    elif batch_size > 1:
        rows, cols = [], []
        for i in range(batch_size):
            rows.append(edges[0] + n_nodes * i)
            cols.append(edges[1] + n_nodes * i)
        edges = [lib.cat(rows), lib.cat(cols)]
    return edges, edge_attr


def train_egnn(lib):
    init = initial_state(egnn)
    model = start(lib, egnn, init)
    batch_size, n_nodes = 2, 4
    h = lib.tensor(draw(batch_size * n_nodes, 3, seed=10))
    x = lib.tensor(draw(batch_size * n_nodes, 3, seed=11))
    target = lib.tensor(draw(batch_size * n_nodes, 3, seed=12))
    edges, edge_attr = get_edges_batch(lib, n_nodes, batch_size)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-12)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        h_out, x_out = model(h, x, edges, edge_attr)
        loss = lib.nn.functional.mse_loss(x_out, target) + h_out.pow(2).mean()
        loss.backward()
        opt.step()
        rec.append({"loss": loss, "g": grads(model)})
    # equivariance: rotate and translate the input coordinates
    q, r = lib.linalg.qr(lib.tensor(draw(3, 3, seed=13)))
    q = q * lib.sign(lib.diagonal(r)).unsqueeze(0)
    shift = lib.tensor(draw(1, 3, seed=14))
    with lib.no_grad():
        h1, x1 = model(h, x, edges, edge_attr)
        h2, x2 = model(h, x @ q + shift, edges, edge_attr)
    assert float((h1 - h2).abs().max()) < 1e-10
    assert float((x1 @ q + shift - x2).abs().max()) < 1e-10
    return {"steps": rec, "q": q, "h": h1, "x": x1, "state": dict(model.state_dict())}


def test_egnn_equivariant_updates():
    both(train_egnn)


# 5. DimeNet-style directional messages: triplets, angles by atan2, Bessel and envelope bases

def triplets(lib, edge_index, num_nodes):
    """For every pair of edges k->j and j->i with k != i: (i, j, k, edge kj, edge ji)."""
    row, col = edge_index  # j -> i: row = j (source), col = i (target)
    value = lib.arange(row.size(0), device=row.device)
    match = (col.view(-1, 1) == row.view(1, -1)) & (row.view(-1, 1) != col.view(1, -1))
    idx_kj, idx_ji = match.nonzero(as_tuple=True)
    idx_k = row[idx_kj]
    idx_j = col[idx_kj]
    idx_i = col[idx_ji]
    return col, row, idx_i, idx_j, idx_k, value[idx_kj], value[idx_ji]


def dimenet_lite(lib, hidden=8, num_radial=4, num_spherical=3, cutoff=3.0, p=6):
    nn, F = lib.nn, lib.nn.functional

    class Envelope(nn.Module):
        def __init__(self, exponent):
            super().__init__()
            self.p = exponent + 1
            self.a = -(self.p + 1) * (self.p + 2) / 2
            self.b = self.p * (self.p + 2)
            self.c = -self.p * (self.p + 1) / 2

        def forward(self, x):
            p, a, b, c = self.p, self.a, self.b, self.c
            x_pow_p0 = x.pow(p - 1)
            x_pow_p1 = x_pow_p0 * x
            x_pow_p2 = x_pow_p1 * x
            return (1. / x + a * x_pow_p0 + b * x_pow_p1 + c * x_pow_p2) * (x < 1.0).to(x.dtype)

    class BesselBasisLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.cutoff = cutoff
            self.envelope = Envelope(p)
            self.freq = nn.Parameter(lib.Tensor(num_radial))
            self.reset_parameters()

        def reset_parameters(self):
            with lib.no_grad():
                lib.arange(1, self.freq.numel() + 1, out=self.freq).mul_(math.pi)
            assert not self.freq.requires_grad  # out= of a factory leaves it frozen
            self.freq.requires_grad_()

        def forward(self, dist):
            dist = (dist.unsqueeze(-1) / self.cutoff)
            return self.envelope(dist) * (self.freq * dist).sin()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rbf = BesselBasisLayer()
            self.emb = nn.Embedding(10, hidden)
            self.lin_rbf = nn.Linear(num_radial, hidden, bias=False)
            self.lin_sbf = nn.Linear(num_radial * num_spherical, hidden, bias=False)
            self.lin_kj = nn.Linear(hidden, hidden)
            self.lin_ji = nn.Linear(hidden, hidden)
            self.lin_out = nn.Linear(hidden, 1)

        def forward(self, z, pos, batch):
            edge_index = radius_graph(lib, pos, batch, cutoff)
            i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(lib, edge_index, z.size(0))
            dist = (pos[i] - pos[j]).pow(2).sum(dim=-1).sqrt()
            pos_i = pos[idx_i]
            pos_ji, pos_ki = pos[idx_j] - pos_i, pos[idx_k] - pos_i
            a = (pos_ji * pos_ki).sum(dim=-1)
            b = lib.cross(pos_ji, pos_ki, dim=1).norm(dim=-1)
            angle = lib.atan2(b, a)
            rbf = self.rbf(dist)
            cbf = lib.stack([lib.cos(n * angle) for n in range(num_spherical)], dim=1)
            sbf = (rbf[idx_kj].unsqueeze(1) * cbf.unsqueeze(-1)).view(-1, num_spherical
                                                                         * num_radial)
            x = self.emb(z)
            m = F.silu(self.lin_ji(x[i] + x[j])) * self.lin_rbf(rbf)
            m_kj = F.silu(self.lin_kj(m))[idx_kj] * self.lin_sbf(sbf)
            m = m + lib.zeros_like(m).index_add(0, idx_ji, m_kj)
            h = lib.zeros(z.size(0), hidden, dtype=m.dtype).index_add_(0, i, m)
            return self.lin_out(h).squeeze(-1), angle

    return Net()


def train_dimenet(lib):
    init = initial_state(dimenet_lite)
    model = start(lib, dimenet_lite, init)
    z, pos, batch = (lib.tensor(a) for a in molecules())
    y = lib.tensor(draw(3, seed=15))
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        atom_e, angle = model(z, pos, batch)
        energy = lib.zeros(3, dtype=atom_e.dtype).scatter_add_(0, batch, atom_e)
        loss = lib.nn.functional.mse_loss(energy, y)
        loss.backward()
        opt.step()
        rec.append({"loss": loss, "angle": angle, "g": grads(model)})
    return {"steps": rec, "state": dict(model.state_dict())}


def test_dimenet_angles_atan2_triplets():
    got = both(train_dimenet)
    angle = got["steps"][0]["angle"]
    assert angle.numel() > 0 and float(angle.min()) >= 0 and float(angle.max()) <= math.pi


# 6. Mesh deformation (the PyTorch3D tutorial, plain): Chamfer, edge length, uniform Laplacian

def grid_mesh(lib, n=3):
    """A flat n x n grid of vertices and its triangles."""
    xs = lib.linspace(-1, 1, n)
    gx, gy = lib.meshgrid(xs, xs, indexing="ij")
    verts = lib.stack([gx.reshape(-1), gy.reshape(-1), lib.zeros(n * n)], dim=1)
    faces = []
    for r in range(n - 1):
        for c in range(n - 1):
            v = r * n + c
            faces += [[v, v + 1, v + n], [v + 1, v + n + 1, v + n]]
    return verts, lib.tensor(faces)


def mesh_edges(lib, faces):
    """Unique undirected edges of a triangle mesh, as (E, 2) with the smaller index first."""
    e = lib.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    e, _ = e.sort(dim=1)
    return lib.unique(e, dim=0)


def chamfer_distance(lib, x, y):
    """Symmetric Chamfer distance between batched point sets x [B, N, 3] and y [B, M, 3]."""
    d = lib.cdist(x, y) ** 2
    return d.min(dim=2).values.mean() + d.min(dim=1)[0].mean()


def laplacian_smoothing(lib, verts, edges):
    V = verts.shape[0]
    e0, e1 = edges.unbind(1)
    idx = lib.cat([e0, e1])
    nbr = lib.cat([e1, e0])
    deg = lib.bincount(idx, minlength=V).to(verts.dtype)
    nbr_sum = lib.zeros_like(verts).index_add_(0, idx, verts[nbr])
    lap = nbr_sum / deg.clamp(min=1).unsqueeze(1) - verts
    return lap.norm(dim=1).mean()


def deform_mesh(lib):
    verts, faces = grid_mesh(lib)
    edges = mesh_edges(lib, faces)
    target = lib.tensor(draw(1, 20, 3, seed=16)) * 0.7
    deform_verts = lib.full(verts.shape, 0.0, requires_grad=True)
    optimizer = lib.optim.SGD([deform_verts], lr=1.0, momentum=0.9)
    w_chamfer, w_edge, w_laplacian = 1.0, 1.0, 0.1
    rec = []
    for _ in range(4):
        optimizer.zero_grad()
        new_verts = verts + deform_verts
        sample = new_verts[faces].mean(dim=1).unsqueeze(0)  # face centroids as samples
        loss_chamfer = chamfer_distance(lib, sample, target)
        v0, v1 = new_verts[edges[:, 0]], new_verts[edges[:, 1]]
        loss_edge = ((v0 - v1).norm(dim=1, p=2) - 0.5).pow(2).mean()
        loss_laplacian = laplacian_smoothing(lib, new_verts, edges)
        loss = loss_chamfer * w_chamfer + loss_edge * w_edge + loss_laplacian * w_laplacian
        loss.backward()
        optimizer.step()
        rec.append({"chamfer": loss_chamfer, "edge": loss_edge, "lap": loss_laplacian,
                    "g": deform_verts.grad})
    return {"edges": edges, "steps": rec, "verts": deform_verts}


def test_mesh_laplacian_chamfer_deformation():
    got = both(deform_mesh)
    assert got["edges"].shape == (16, 2)


# 7. SIREN (sine layers, its uniform init, omega_0) fitting an image's gradient and Laplacian

def siren(lib, in_features=2, hidden_features=12, hidden_layers=2, out_features=1,
          outermost_linear=True, first_omega_0=30, hidden_omega_0=30.):
    nn = lib.nn

    class SineLayer(nn.Module):
        def __init__(self, in_features, out_features, bias=True, is_first=False, omega_0=30):
            super().__init__()
            self.omega_0 = omega_0
            self.is_first = is_first
            self.in_features = in_features
            self.linear = nn.Linear(in_features, out_features, bias=bias)
            self.init_weights()

        def init_weights(self):
            with lib.no_grad():
                if self.is_first:
                    self.linear.weight.uniform_(-1 / self.in_features, 1 / self.in_features)
                else:
                    self.linear.weight.uniform_(-np.sqrt(6 / self.in_features) / self.omega_0,
                                                np.sqrt(6 / self.in_features) / self.omega_0)

        def forward(self, input):
            return lib.sin(self.omega_0 * self.linear(input))

    class Siren(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = []
            self.net.append(SineLayer(in_features, hidden_features, is_first=True,
                                      omega_0=first_omega_0))
            for i in range(hidden_layers):
                self.net.append(SineLayer(hidden_features, hidden_features, is_first=False,
                                          omega_0=hidden_omega_0))
            if outermost_linear:
                final_linear = nn.Linear(hidden_features, out_features)
                with lib.no_grad():
                    final_linear.weight.uniform_(
                        -np.sqrt(6 / hidden_features) / hidden_omega_0,
                        np.sqrt(6 / hidden_features) / hidden_omega_0)
                self.net.append(final_linear)
            else:
                self.net.append(SineLayer(hidden_features, out_features, is_first=False,
                                          omega_0=hidden_omega_0))
            self.net = nn.Sequential(*self.net)

        def forward(self, coords):
            coords = coords.clone().detach().requires_grad_(True)  # derivatives w.r.t. input
            output = self.net(coords)
            return output, coords

    return Siren()


def get_mgrid(lib, sidelen, dim=2):
    tensors = tuple(dim * [lib.linspace(-1, 1, steps=sidelen)])
    mgrid = lib.stack(lib.meshgrid(*tensors, indexing="ij"), dim=-1)
    mgrid = mgrid.reshape(-1, dim)
    return mgrid


def gradient(lib, y, x, grad_outputs=None):
    if grad_outputs is None:
        grad_outputs = lib.ones_like(y)
    grad = lib.autograd.grad(y, [x], grad_outputs=grad_outputs, create_graph=True)[0]
    return grad


def divergence(lib, y, x):
    div = 0.
    for i in range(y.shape[-1]):
        div += lib.autograd.grad(y[..., i], x, lib.ones_like(y[..., i]),
                                 create_graph=True)[0][..., i:i + 1]
    return div


def laplace(lib, y, x):
    grad = gradient(lib, y, x)
    return divergence(lib, grad, x)


def fit_siren(lib):
    init = initial_state(siren)
    model = start(lib, siren, init)
    coords = get_mgrid(lib, 5)
    img = lib.sin(3 * coords[:, :1]) * lib.cos(2 * coords[:, 1:])
    gt_grad = lib.cat([3 * lib.cos(3 * coords[:, :1]) * lib.cos(2 * coords[:, 1:]),
                       -2 * lib.sin(3 * coords[:, :1]) * lib.sin(2 * coords[:, 1:])], dim=-1)
    gt_lap = -13 * img
    optim = lib.optim.Adam(lr=1e-4, params=model.parameters())
    rec = []
    for _ in range(2):
        model_output, coords_ = model(coords)
        img_grad = gradient(lib, model_output, coords_)
        img_laplacian = laplace(lib, model_output, coords_)
        loss = ((model_output - img) ** 2).mean() + ((img_grad - gt_grad) ** 2).mean() \
            + 1e-4 * ((img_laplacian - gt_lap) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        rec.append({"loss": loss, "lap": img_laplacian, "g": grads(model)})
    return {"steps": rec, "state": dict(model.state_dict())}


def test_siren_gradient_laplacian_fit():
    both(fit_siren, tol=1e-9)


def test_siren_init_bounds():
    model = siren(ng)
    first, hidden = model.net[0].linear.weight, model.net[1].linear.weight
    assert float(first.abs().max()) <= 1 / 2 and float(first.abs().max()) > 0.1
    assert float(hidden.abs().max()) <= np.sqrt(6 / 12) / 30


# 8. DeepSDF: weight-normed decoder with a latent skip, per-shape codes, clamped L1 + eikonal

def deepsdf(lib, latent_size=4, dims=(16, 16, 16), latent_in=(2,), num_scenes=3):
    nn = lib.nn

    class Decoder(nn.Module):
        def __init__(self, dropout_prob=0.0, use_tanh=True):
            super().__init__()
            dims_ = [latent_size + 3] + list(dims) + [1]
            self.num_layers = len(dims_)
            self.latent_in = latent_in
            for layer in range(0, self.num_layers - 1):
                if layer + 1 in latent_in:
                    out_dim = dims_[layer + 1] - dims_[0]
                else:
                    out_dim = dims_[layer + 1]
                if layer < self.num_layers - 2:
                    setattr(self, "lin" + str(layer),
                            nn.utils.weight_norm(nn.Linear(dims_[layer], out_dim)))
                else:
                    setattr(self, "lin" + str(layer), nn.Linear(dims_[layer], out_dim))
            self.use_tanh = use_tanh
            if use_tanh:
                self.tanh = nn.Tanh()
            self.relu = nn.ReLU()
            self.dropout_prob = dropout_prob
            self.th = nn.Tanh()

        def forward(self, input):
            x = input
            for layer in range(0, self.num_layers - 1):
                lin = getattr(self, "lin" + str(layer))
                if layer in self.latent_in:
                    x = lib.cat([x, input], 1)
                x = lin(x)
                if layer == self.num_layers - 2 and self.use_tanh:
                    x = self.tanh(x)
                if layer < self.num_layers - 2:
                    x = self.relu(x)
                    x = nn.functional.dropout(x, p=self.dropout_prob, training=self.training)
            if hasattr(self, "th"):
                x = self.th(x)
            return x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Decoder()
            self.lat_vecs = nn.Embedding(num_scenes, latent_size, max_norm=1.0)
            nn.init.normal_(self.lat_vecs.weight.data, 0.0, 1.0 / math.sqrt(latent_size))

    return Model()


def train_deepsdf(lib):
    init = initial_state(deepsdf)
    model = start(lib, deepsdf, init)
    decoder, lat_vecs = model.decoder, model.lat_vecs
    xyz = lib.tensor(draw(3, 6, 3, seed=17)) * 0.5
    sdf_gt = lib.tensor(draw(3, 6, 1, seed=18)) * 0.2
    indices = lib.tensor([0, 2, 1])
    optimizer_all = lib.optim.Adam([
        {"params": decoder.parameters(), "lr": 5e-4},
        {"params": lat_vecs.parameters(), "lr": 1e-3},
    ])
    clamp_dist, code_reg_lambda, eik_lambda = 0.1, 1e-4, 0.1
    loss_l1 = lib.nn.L1Loss(reduction="sum")
    rec = []
    for epoch in range(1, STEPS + 1):
        decoder.train()
        optimizer_all.zero_grad()
        num_sdf_samples = xyz.shape[0] * xyz.shape[1]
        idx = indices.unsqueeze(-1).repeat(1, xyz.shape[1]).view(-1)
        pts = xyz.reshape(-1, 3).clone().requires_grad_(True)
        batch_vecs = lat_vecs(idx)
        input = lib.cat([batch_vecs, pts], dim=1)
        pred_sdf = decoder(input)
        pred_sdf_c = lib.clamp(pred_sdf, -clamp_dist, clamp_dist)
        sdf_c = lib.clamp(sdf_gt.reshape(-1, 1), -clamp_dist, clamp_dist)
        chunk_loss = loss_l1(pred_sdf_c, sdf_c) / num_sdf_samples
        l2_size_loss = lib.sum(lib.norm(batch_vecs, dim=1))
        reg_loss = (code_reg_lambda * min(1, epoch / 100) * l2_size_loss) / num_sdf_samples
        grad = lib.autograd.grad(pred_sdf, pts, lib.ones_like(pred_sdf), create_graph=True)[0]
        eikonal = ((grad.norm(2, dim=-1) - 1) ** 2).mean()
        loss = chunk_loss + reg_loss + eik_lambda * eikonal
        loss.backward()
        optimizer_all.step()
        rec.append({"l1": chunk_loss, "eik": eikonal, "g": grads(model),
                    "codes": lat_vecs.weight.detach().clone()})
    return {"steps": rec, "state": dict(model.state_dict())}


def test_deepsdf_weight_norm_eikonal():
    got = both(train_deepsdf)
    assert list(got["state"])[:3] == ["decoder.lin0.bias", "decoder.lin0.weight_g",
                                      "decoder.lin0.weight_v"]


# 9. A tensor-product-lite layer: scalar and vector channels mixed by einsum outer products

def tp_lite(lib, cs=4, cv=3, num_rbf=5, cutoff=3.0):
    nn, F = lib.nn, lib.nn.functional

    class TPConv(nn.Module):
        """Messages j -> i: s*R, v*R, s (x) r_hat, v . r_hat, v x r_hat (all rotation safe)."""

        def __init__(self):
            super().__init__()
            self.radial = nn.Sequential(nn.Linear(num_rbf, 16), nn.SiLU(),
                                        nn.Linear(16, 5 * cs))
            self.w_ss = nn.Parameter(lib.randn(cs, cs) / cs)
            self.w_vv = nn.Parameter(lib.randn(cv, cv) / cv)
            self.w_sv = nn.Parameter(lib.randn(cs, cv) / cs)
            self.w_vs = nn.Parameter(lib.randn(cv, cs) / cv)
            self.w_cross = nn.Parameter(lib.randn(cv, cv) / cv)
            self.gate = nn.Linear(cs, cv)

        def forward(self, s, v, pos, edge_index):
            j, i = edge_index
            rij = pos[i] - pos[j]
            d = rij.norm(dim=-1, keepdim=True)
            r_hat = rij / d
            mu = lib.linspace(0, cutoff, num_rbf)
            rbf = lib.exp(-((d - mu) ** 2) / 0.5) * (0.5 * (lib.cos(math.pi * d / cutoff) + 1))
            R = self.radial(rbf).view(-1, 5, cs)
            s_j, v_j = s[j], v[j]
            m_s = lib.einsum("ec,cd->ed", s_j * R[:, 0], self.w_ss)
            m_s = m_s + lib.einsum("eci,ei,cd->ed", v_j, r_hat, self.w_vs) * R[:, 1]
            m_v = lib.einsum("ec,cd,ei->edi", s_j * R[:, 2], self.w_sv, r_hat)
            m_v = m_v + lib.einsum("eci,cd->edi", v_j, self.w_vv) * R[:, 3, :cv, None]
            cross = lib.linalg.cross(v_j, r_hat.unsqueeze(1).expand_as(v_j), dim=-1)
            m_v = m_v + lib.einsum("eci,cd->edi", cross, self.w_cross)
            outer = lib.einsum("eci,ej->ecij", v_j, r_hat)  # rank-2 part, contracted back
            m_s = m_s + lib.einsum("ecii->ec", outer) @ self.w_vs * R[:, 4]
            agg_s = lib.zeros_like(s).index_add_(0, i, m_s)
            agg_v = lib.zeros_like(v).index_add_(0, i, m_v)
            s = s + F.silu(agg_s)
            v = v + agg_v * lib.sigmoid(self.gate(s)).unsqueeze(-1)
            return s, v

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, cs)
            self.convs = nn.ModuleList([TPConv(), TPConv()])
            self.out = nn.Linear(cs + cv, 1)

        def forward(self, z, pos, batch):
            edge_index = radius_graph(lib, pos, batch, cutoff)
            s = self.emb(z)
            v = lib.zeros(z.size(0), cv, 3, dtype=s.dtype)
            v[:, 0] = pos - pos.mean(0, keepdim=True)  # an equivariant seed
            for conv in self.convs:
                s, v = conv(s, v, pos, edge_index)
            inv = lib.cat([s, (v * v).sum(-1)], dim=-1)
            return self.out(inv).squeeze(-1), v

    return Net()


def train_tp(lib):
    init = initial_state(tp_lite)
    model = start(lib, tp_lite, init)
    z, pos, batch = (lib.tensor(a) for a in molecules())
    y = lib.tensor(draw(3, seed=19))
    opt = lib.optim.RAdam(model.parameters(), lr=1e-2)
    counts = lib.bincount(batch)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        atom, v = model(z, pos, batch)
        mol = lib.zeros(3, dtype=atom.dtype).index_add(0, batch, atom) / counts
        loss = lib.nn.functional.smooth_l1_loss(mol, y, beta=0.5)
        loss.backward()
        opt.step()
        rec.append({"loss": loss, "g": grads(model)})
    q, r = lib.linalg.qr(lib.tensor(draw(3, 3, seed=20)))
    with lib.no_grad():
        a1, v1 = model(z, pos, batch)
        a2, v2 = model(z, pos @ q, batch)
    assert float((a1 - a2).abs().max()) < 1e-10
    assert float((v1 @ q - v2).abs().max()) < 1e-10
    return {"steps": rec, "atom": a1, "v": v1, "state": dict(model.state_dict())}


def test_tensor_product_lite_einsum_equivariance():
    both(train_tp)


# 10. Batches of graphs of unequal size: pooling by batch vectors and segment reductions

def pool_program(lib):
    """Global max/mean/sum pools of node features through the batch vector (one graph empty),
    as scatter_reduce, index_reduce, segment_reduce and a sort-free softmax over segments."""
    x = lib.tensor(draw(9, 4, seed=21), requires_grad=True)
    x2 = lib.cat([x[:2], x[2:3].repeat(2, 1), x[4:]])  # ties inside a graph
    sizes = lib.tensor([3, 0, 4, 2])
    batch = lib.repeat_interleave(lib.arange(4), sizes)
    B, C = int(sizes.numel()), x.size(1)
    assert lib.bincount(batch, minlength=B).equal(sizes)  # ng.equal is NumPy's elementwise
    ptr = lib.cat([sizes.new_zeros(1), lib.cumsum(sizes, 0)])
    idx = batch.unsqueeze(-1).expand(-1, C)
    amax = lib.zeros(B, C).scatter_reduce(0, idx, x2, "amax", include_self=False)
    amin = x2.new_full((B, C), 7.0).scatter_reduce(0, idx, x2, reduce="amin",
                                                  include_self=True)
    mean = lib.zeros(B, C).scatter_reduce(0, idx, x2, "mean", include_self=False)
    summ = lib.zeros(B, C).index_reduce_(0, batch, x2, "prod", include_self=False)
    seg = lib.segment_reduce(x2, "max", lengths=sizes, unsafe=True, initial=-1.0)
    seg_mean = lib.segment_reduce(x2, "mean", offsets=ptr)
    seg_mean = lib.nan_to_num(seg_mean)  # the empty graph's mean is nan
    # softmax over each graph's nodes (attention pooling), stable by the segment max
    score = x2.sum(-1)
    smax = lib.full((B,), float("-inf")).scatter_reduce(0, batch, score, "amax")
    e = lib.exp(score - smax[batch])
    denom = lib.zeros(B).index_add_(0, batch, e)
    alpha = e / denom[batch]
    att = lib.zeros(B, C).index_add_(0, batch, alpha.unsqueeze(-1) * x2)
    counts = lib.bincount(batch, minlength=B).clamp(min=1).unsqueeze(-1)
    mean_ = lib.zeros(B, C).index_add_(0, batch, x2) / counts
    loss = (amax * lib.arange(1.0, B * C + 1).view(B, C)).sum() + amin.pow(2).sum() \
        + mean.sum() + summ.sum() + seg.tanh().sum() + (seg_mean * 2).sum() + att.sum() \
        + (mean_ * mean_).sum()
    loss.backward()
    return {"batch": batch, "ptr": ptr, "amax": amax, "amin": amin, "mean": mean,
            "prod": summ, "seg": seg, "seg_mean": seg_mean, "alpha": alpha, "att": att,
            "mean_": mean_, "grad": x.grad}


def test_batch_vector_segment_reductions():
    got = both(pool_program)
    assert float(got["amax"][1].abs().max()) == 0.0  # the empty graph keeps self


def collate_program(lib):
    """A DataLoader over point clouds of unequal size with a collate_fn that concatenates
    them and builds the batch vector, then mean-pools a shared MLP per cloud."""
    data = lib.utils.data
    clouds = [draw(n, 3, seed=30 + n) for n in (5, 3, 6, 4)]
    labels = [0, 1, 1, 0]

    class Clouds(data.Dataset):
        def __len__(self):
            return len(clouds)

        def __getitem__(self, i):
            return lib.tensor(clouds[i]), labels[i]

    def collate(items):
        pos = lib.cat([p for p, _ in items], dim=0)
        batch = lib.cat([lib.full((p.size(0),), k, dtype=lib.long)
                         for k, (p, _) in enumerate(items)])
        return pos, batch, lib.tensor([y for _, y in items])

    lib.manual_seed(0)
    mlp = lib.nn.Sequential(lib.nn.Linear(3, 8), lib.nn.ReLU(), lib.nn.Linear(8, 2))
    mlp = start(lib, lambda lib: lib.nn.Sequential(lib.nn.Linear(3, 8), lib.nn.ReLU(),
                                                   lib.nn.Linear(8, 2)),
                initial_state(lambda lib: lib.nn.Sequential(
                    lib.nn.Linear(3, 8), lib.nn.ReLU(), lib.nn.Linear(8, 2))))
    opt = lib.optim.SGD(mlp.parameters(), lr=0.1, nesterov=True, momentum=0.9)
    loader = data.DataLoader(Clouds(), batch_size=2, shuffle=False, collate_fn=collate)
    rec = []
    for pos, batch, y in loader:
        h = mlp(pos)
        n = lib.bincount(batch).unsqueeze(1)
        pooled = lib.zeros(int(batch.max()) + 1, 2).index_add_(0, batch, h) / n
        loss = lib.nn.functional.cross_entropy(pooled, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append({"loss": loss, "batch": batch, "g": grads(mlp)})
    return rec


def test_dataloader_collate_batch_vector():
    both(collate_program)



# 11. Training utilities of these repositories, padded neighbour lists, voxels, vmapped forces

def transform_net(lib):
    """DGCNN's Transform_Net head: the 3x3 transform starts at the identity through
    ``init.eye_`` on a view of the bias."""
    nn, init = lib.nn, lib.nn.init

    class TransformNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = 3
            self.conv1 = nn.Sequential(nn.Conv2d(6, 8, kernel_size=1, bias=False),
                                       nn.BatchNorm2d(8), nn.LeakyReLU(negative_slope=0.2))
            self.conv3 = nn.Sequential(nn.Conv1d(8, 16, kernel_size=1, bias=False),
                                       nn.BatchNorm1d(16), nn.LeakyReLU(negative_slope=0.2))
            self.linear1 = nn.Linear(16, 8, bias=False)
            self.bn3 = nn.BatchNorm1d(8)
            self.transform = nn.Linear(8, 3 * 3)
            init.constant_(self.transform.weight, 0)
            init.eye_(self.transform.bias.view(3, 3))

        def forward(self, x):
            batch_size = x.size(0)
            x = self.conv1(x)
            x = x.max(dim=-1, keepdim=False)[0]
            x = self.conv3(x)
            x = x.max(dim=-1, keepdim=False)[0]
            x = F_leaky(lib, self.bn3(self.linear1(x)))
            x = self.transform(x)
            x = x.view(batch_size, 3, 3)
            return x

    return TransformNet()


def F_leaky(lib, x):
    return lib.nn.functional.leaky_relu(x, negative_slope=0.2)


def weights_init(lib, m):
    """PointNet++'s train script's initialiser, its deterministic part: biases zeroed through
    ``.data``."""
    classname = m.__class__.__name__
    if classname.find("Conv2d") != -1 or classname.find("Conv1d") != -1:
        lib.nn.init.constant_(m.bias.data, 0.0) if m.bias is not None else None
    elif classname.find("Linear") != -1 and m.bias is not None:
        lib.nn.init.constant_(m.bias.data, 0.0)


def inplace_relu(m):
    classname = m.__class__.__name__
    if classname.find("ReLU") != -1:
        m.inplace = True


def bn_momentum_adjust(lib, m, momentum):
    if isinstance(m, lib.nn.BatchNorm2d) or isinstance(m, lib.nn.BatchNorm1d):
        m.momentum = momentum


def train_transform(lib):
    net = transform_net(lib)
    assert float((net.transform.bias - lib.eye(3).view(-1)).abs().max()) == 0.0
    init = initial_state(transform_net)
    model = start(lib, transform_net, init)
    model.apply(inplace_relu)
    model.apply(lambda m: weights_init(lib, m))
    x = lib.tensor(draw(3, 3, 10, seed=60))
    opt = lib.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-08,
                         weight_decay=1e-4)
    scheduler = lib.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
    rec = []
    for epoch in range(STEPS):
        momentum = max(0.1 * (0.5 ** (epoch // 1)), 0.01)
        model.apply(lambda m: bn_momentum_adjust(lib, m, momentum))
        model.train()
        opt.zero_grad()
        trans = model(get_graph_feature(lib, x, k=3))
        pts = lib.bmm(x.transpose(2, 1), trans).transpose(2, 1)
        iden = lib.eye(3).unsqueeze(0)
        reg = lib.mean(lib.norm(lib.bmm(trans, trans.transpose(2, 1)) - iden, dim=(1, 2)))
        loss = pts.pow(2).mean() + 1e-3 * reg
        loss.backward()
        opt.step()
        scheduler.step()
        rec.append({"loss": loss, "lr": opt.param_groups[0]["lr"], "g": grads(model),
                    "state": dict(model.state_dict())})
    return rec


def test_dgcnn_transform_net_utilities():
    both(train_transform)


def schnetpack(lib, n_atom_basis=6, n_filters=6, n_gaussians=8, cutoff=2.5):
    """The SchNet of schnetpack's first versions: padded neighbour lists (-1 for none),
    neighbours gathered with ``torch.gather``, masks instead of edge lists."""
    nn, F = lib.nn, lib.nn.functional

    def shifted_softplus(x):
        return F.softplus(x) - np.log(2.0)

    def atom_distances(positions, neighbors, neighbor_mask=None):
        n_batch = positions.size()[0]
        idx_m = lib.arange(n_batch, device=positions.device, dtype=lib.long)[:, None, None]
        pos_xyz = positions[idx_m, neighbors[:, :, :], :]
        dist_vec = pos_xyz - positions[:, :, None, :]
        distances = lib.norm(dist_vec, 2, 3)
        if neighbor_mask is not None:
            tmp_distances = lib.zeros_like(distances)
            tmp_distances[neighbor_mask != 0] = distances[neighbor_mask != 0]
            distances = tmp_distances
        return distances

    class Dense(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, activation=None,
                     weight_init=nn.init.xavier_uniform_, bias_init=nn.init.zeros_):
            self.weight_init = weight_init  # plain attributes set before Module.__init__,
            self.bias_init = bias_init  # which calls the reset_parameters below
            self.activation = activation
            super().__init__(in_features, out_features, bias)

        def reset_parameters(self):
            self.weight_init(self.weight)
            if self.bias is not None:
                self.bias_init(self.bias)

        def forward(self, inputs):
            y = super().forward(inputs)
            if self.activation:
                y = self.activation(y)
            return y

    class CFConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.in2f = Dense(n_atom_basis, n_filters, bias=False)
            self.f2out = Dense(n_filters, n_atom_basis, bias=True, activation=shifted_softplus)
            self.filter_network = nn.Sequential(
                Dense(n_gaussians, n_filters, activation=shifted_softplus),
                Dense(n_filters, n_filters))

        def forward(self, x, r_ij, neighbors, pairwise_mask, f_ij):
            W = self.filter_network(f_ij)
            C = 0.5 * (lib.cos(r_ij * np.pi / cutoff) + 1.0)
            C = C * (r_ij < cutoff).to(r_ij.dtype)
            W = W * C.unsqueeze(-1)
            y = self.in2f(x)
            nbh_size = neighbors.size()
            nbh = neighbors.view(-1, nbh_size[1] * nbh_size[2], 1)
            nbh = nbh.expand(-1, -1, y.size(2))
            y = lib.gather(y, 1, nbh)
            y = y.view(nbh_size[0], nbh_size[1], nbh_size[2], -1)
            y = y * W
            y = y * pairwise_mask.unsqueeze(-1)
            y = lib.sum(y, 2)
            return self.f2out(y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, n_atom_basis, padding_idx=0)
            offset = lib.linspace(0.0, cutoff, n_gaussians)
            widths = (offset[1] - offset[0]) * lib.ones_like(offset)
            self.register_buffer("width", widths)
            self.register_buffer("offsets", offset)
            self.interactions = nn.ModuleList([CFConv() for _ in range(2)])
            self.out = nn.Sequential(Dense(n_atom_basis, 4, activation=shifted_softplus),
                                     Dense(4, 1))

        def forward(self, z, positions, neighbors, neighbor_mask, atom_mask):
            r_ij = atom_distances(positions, neighbors, neighbor_mask)
            coeff = -0.5 / lib.pow(self.width, 2)
            diff = r_ij[:, :, :, None] - self.offsets[None, None, None, :]
            f_ij = lib.exp(coeff * lib.pow(diff, 2))
            x = self.embedding(z)
            for interaction in self.interactions:
                v = interaction(x, r_ij, neighbors, neighbor_mask, f_ij)
                x = x + v
            yi = self.out(x) * atom_mask[..., None]
            return lib.sum(yi, 1)

    return Net()


def padded_molecules(lib):
    """Two molecules padded to 5 atoms, with all-pairs neighbour lists (-1 marks padding)."""
    z = lib.tensor([[1, 6, 8, 1, 0], [6, 6, 1, 1, 1]])
    pos = lib.tensor(draw(2, 5, 3, seed=61))
    atom_mask = (z > 0).to(pos.dtype)
    nbrs = []
    for m in range(2):
        n = int((z[m] > 0).sum())
        rows = []
        for i in range(5):
            row = [j for j in range(n) if j != i] if i < n else []
            rows.append(row + [-1] * (4 - len(row)))
        nbrs.append(rows)
    neighbors = lib.tensor(nbrs)
    neighbor_mask = (neighbors >= 0).to(pos.dtype)
    neighbors = neighbors * (neighbors >= 0).long()  # padded entries point at atom 0
    return z, pos, neighbors, neighbor_mask, atom_mask


def train_schnetpack(lib):
    init = initial_state(schnetpack)
    model = start(lib, schnetpack, init)
    z, pos, neighbors, neighbor_mask, atom_mask = padded_molecules(lib)
    energy_true = lib.tensor([[-1.0], [0.5]])
    forces_true = lib.tensor(draw(2, 5, 3, seed=62)) * atom_mask[..., None]
    opt = lib.optim.Adam(model.parameters(), lr=1e-3)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        positions = pos.clone().requires_grad_()
        energy = model(z, positions, neighbors, neighbor_mask, atom_mask)
        forces = -lib.autograd.grad(energy, positions, grad_outputs=lib.ones_like(energy),
                                    create_graph=True, retain_graph=True)[0]
        err_sq = 0.01 * lib.mean((energy - energy_true) ** 2) \
            + 0.99 * lib.mean((forces - forces_true) ** 2)
        err_sq.backward()
        opt.step()
        rec.append({"loss": err_sq, "forces": forces, "g": grads(model)})
    return rec


def test_schnetpack_padded_neighbours_forces():
    got = both(train_schnetpack)
    assert float(got[0]["forces"][0, 4].abs().max()) == 0.0  # the padded atom feels nothing


def sdf_siren(lib):
    """SIREN's SDF loss: on-surface value, off-surface exponential, normal alignment by
    cosine similarity and |grad| = 1, from a Jacobian filled column by column."""
    init = initial_state(siren, 3, 12, 1, 1)
    model = start(lib, siren, init, 3, 12, 1, 1)
    F = lib.nn.functional
    coords = lib.tensor(draw(1, 8, 3, seed=63)) * 0.5
    gt_sdf = lib.tensor([[[0.0]] * 4 + [[-1.0]] * 4])
    gt_normals = lib.tensor(draw(1, 8, 3, seed=64))
    opt = lib.optim.Adam(model.parameters(), lr=1e-4)
    rec = []
    for _ in range(2):
        pred_sdf, x = model(coords)
        gradient_ = gradient(lib, pred_sdf, x)
        jac = lib.zeros(1, 8, 1, 3)
        for i in range(pred_sdf.shape[-1]):
            y_flat = pred_sdf[..., i].view(-1, 1)
            jac[:, :, i, :] = lib.autograd.grad(y_flat, x, lib.ones_like(y_flat),
                                                create_graph=True)[0]
        sdf_constraint = lib.where(gt_sdf != -1, pred_sdf, lib.zeros_like(pred_sdf))
        inter_constraint = lib.where(gt_sdf != -1, lib.zeros_like(pred_sdf),
                                     lib.exp(-1e2 * lib.abs(pred_sdf)))
        normal_constraint = lib.where(
            gt_sdf != -1, 1 - F.cosine_similarity(gradient_, gt_normals, dim=-1)[..., None],
            lib.zeros_like(gradient_[..., :1]))
        grad_constraint = lib.abs(jac[:, :, 0].norm(dim=-1) - 1)
        losses = {"sdf": lib.abs(sdf_constraint).mean() * 3e3,
                  "inter": inter_constraint.mean() * 1e2,
                  "normal_constraint": normal_constraint.mean() * 1e2,
                  "grad_constraint": grad_constraint.mean() * 5e1}
        train_loss = 0.
        for loss_name, loss in losses.items():
            single_loss = loss.mean()
            train_loss += single_loss
        opt.zero_grad()
        train_loss.backward()
        opt.step()
        rec.append({"losses": losses, "g": grads(model)})
    return rec


def test_siren_sdf_losses():
    both(sdf_siren, tol=1e-9)


def voxel_pool(lib):
    """Voxel-grid downsampling: integer voxel coordinates, unique rows with inverse and counts,
    a mean of features per voxel by index_add_, a spatial hash by XOR of large primes."""
    pos = lib.tensor(draw(24, 3, seed=65)) * 2
    feat = lib.tensor(draw(24, 4, seed=66), requires_grad=True)
    voxel_size = 1.5
    coords = lib.floor(pos / voxel_size).int()
    unique, inverse, counts = lib.unique(coords, dim=0, return_inverse=True, return_counts=True)
    pooled = lib.zeros(len(unique), 4).index_add_(0, inverse, feat) / counts[:, None]
    centers = lib.zeros(len(unique), 3).index_add_(0, inverse, pos) / counts[:, None]
    (pooled.pow(2).sum() + (pooled * centers[:, :1]).sum()).backward()
    c = coords.long()
    key = (c[:, 0] * 73856093) ^ (c[:, 1] * 19349663) ^ (c[:, 2] * 83492791)
    return [unique, inverse, counts, pooled, centers, feat.grad, key,
            lib.div(pos, voxel_size, rounding_mode="floor"), coords // 2, coords % 3]


def test_voxel_grid_pooling():
    both(voxel_pool)


def vmapped_forces(lib):
    """Energies, forces and force Jacobians of a batch of conformations of one molecule by
    ``torch.func``: vmap over grad and jacrev of an edge-list energy (index_add, atan2)."""
    func = lib.func
    row, col = lib.tensor([0, 1, 2, 3, 4, 1]), lib.tensor([1, 2, 3, 4, 0, 3])
    W = lib.tensor(draw(3, 4, seed=67))

    def energy(pos):
        rel = pos[row] - pos[col]
        d = rel.norm(dim=-1)
        rbf = lib.exp(-(d[:, None] - lib.linspace(0, 2, 4)) ** 2)
        m = lib.tanh(rbf @ W.T)
        agg = lib.zeros(5, 3, dtype=pos.dtype).index_add(0, col, m)
        nxt = pos[(col + 1) % 5] - pos[col]
        ang = lib.atan2(lib.linalg.cross(rel, nxt, dim=-1).norm(dim=-1), (rel * nxt).sum(-1))
        return (agg ** 2).sum() + lib.cos(ang).sum()

    pos = lib.tensor(draw(3, 5, 3, seed=68))
    e = func.vmap(energy)(pos)
    forces = -func.vmap(func.grad(energy))(pos)
    hess = func.vmap(func.jacrev(func.grad(energy)))(pos)
    return [e, forces, hess]


def test_vmapped_forces_and_hessians():
    both(vmapped_forces)


# 12. Cotangent-Laplacian mesh losses and a Point Transformer layer

def cot_laplacian(lib, verts, faces, eps=1e-12):
    """PyTorch3D's cot_laplacian, dense: the sparse matrix becomes index_put_ accumulate."""
    V, F = verts.shape[0], faces.shape[0]
    face_verts = verts[faces]
    v0, v1, v2 = face_verts[:, 0], face_verts[:, 1], face_verts[:, 2]
    A = (v1 - v2).norm(dim=1)
    B = (v0 - v2).norm(dim=1)
    C = (v0 - v1).norm(dim=1)
    s = 0.5 * (A + B + C)
    area = (s * (s - A) * (s - B) * (s - C)).clamp_(min=eps).sqrt()
    A2, B2, C2 = A * A, B * B, C * C
    cota = (B2 + C2 - A2) / area
    cotb = (A2 + C2 - B2) / area
    cotc = (A2 + B2 - C2) / area
    cot = lib.stack([cota, cotb, cotc], dim=1)
    cot /= 4.0
    ii = faces[:, [1, 2, 0]]
    jj = faces[:, [2, 0, 1]]
    idx = lib.stack([ii, jj], dim=0).view(2, F * 3)
    L = lib.zeros(V, V, dtype=verts.dtype).index_put_((idx[0], idx[1]), cot.view(-1),
                                                      accumulate=True)
    L = L + L.t()
    idx = faces.view(-1)
    inv_areas = lib.zeros(V, dtype=verts.dtype)
    val = lib.stack([area] * 3, dim=1).view(-1)
    inv_areas.scatter_add_(0, idx, val)
    idx = inv_areas > 0
    inv_areas[idx] = 1.0 / inv_areas[idx]
    inv_areas = inv_areas.view(-1, 1)
    return L, inv_areas


def face_normals(lib, verts, faces):
    """Face normals by cross products, vertex normals as sums of their faces', normalised."""
    F = lib.nn.functional
    v0, v1, v2 = verts[faces].unbind(1)
    n = lib.cross(v1 - v0, v2 - v0, dim=1)
    vn = lib.zeros_like(verts).index_add(0, faces[:, 0], n).index_add(
        0, faces[:, 1], n).index_add(0, faces[:, 2], n)
    return F.normalize(n, dim=1, eps=1e-6), F.normalize(vn, dim=1, eps=1e-6)


def cot_mesh(lib):
    """Cotangent Laplacian smoothing with PyTorch3D's row normalisation, normal consistency
    of faces sharing an edge, and Chamfer distance with a normal term."""
    F = lib.nn.functional
    verts, faces = grid_mesh(lib, 4)
    verts = verts + lib.tensor(draw(16, 3, seed=70)) * 0.1
    deform = lib.zeros_like(verts, requires_grad=True)
    opt = lib.optim.Adam([deform], lr=0.01)
    tgt = lib.tensor(draw(1, 30, 3, seed=71))
    tgt_n = F.normalize(lib.tensor(draw(1, 30, 3, seed=72)), dim=-1)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        v = verts + deform
        L, inv_areas = cot_laplacian(lib, v, faces)
        with lib.no_grad():
            norm_w = L.sum(dim=1, keepdims=True)
            idx = norm_w > 0
            norm_w[idx] = 1.0 / norm_w[idx]
        lap = L.mm(v) * norm_w - v
        lap_loss = lap.norm(dim=1).mean()
        fn, vn = face_normals(lib, v, faces)
        nc = (1 - F.cosine_similarity(fn[0::2], fn[1::2], dim=1)).mean()
        x = v.unsqueeze(0)
        d = lib.cdist(x, tgt) ** 2
        dmin, idx_x = d.min(dim=2)
        nn_normals = lib.gather(tgt_n, 1, idx_x.unsqueeze(-1).expand(-1, -1, 3))
        cham_n = (1 - lib.abs(F.cosine_similarity(vn.unsqueeze(0), nn_normals, dim=2,
                                                  eps=1e-6))).mean()
        loss = dmin.mean() + d.min(dim=1).values.mean() + 0.1 * lap_loss + 0.1 * nc \
            + 0.01 * cham_n
        loss.backward()
        opt.step()
        rec.append([loss, lap_loss, nc, cham_n, deform.grad, inv_areas])
    return rec


def point_transformer(lib):
    """The Point Transformer layer (vector attention over k nearest neighbours, a position
    encoding through BatchNorm1d on transposed neighbour tensors, shared planes)."""
    nn = lib.nn

    class PointTransformerLayer(nn.Module):
        def __init__(self, in_planes, out_planes, share_planes=2, nsample=4):
            super().__init__()
            self.mid_planes = mid_planes = out_planes // 1
            self.out_planes = out_planes
            self.share_planes = share_planes
            self.nsample = nsample
            self.linear_q = nn.Linear(in_planes, mid_planes)
            self.linear_k = nn.Linear(in_planes, mid_planes)
            self.linear_v = nn.Linear(in_planes, out_planes)
            self.linear_p = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3),
                                          nn.ReLU(inplace=True), nn.Linear(3, out_planes))
            self.linear_w = nn.Sequential(
                nn.BatchNorm1d(mid_planes), nn.ReLU(inplace=True),
                nn.Linear(mid_planes, mid_planes // share_planes),
                nn.BatchNorm1d(mid_planes // share_planes), nn.ReLU(inplace=True),
                nn.Linear(out_planes // share_planes, out_planes // share_planes))
            self.softmax = nn.Softmax(dim=1)

        def forward(self, p, x):
            x_q, x_k, x_v = self.linear_q(x), self.linear_k(x), self.linear_v(x)
            d = lib.cdist(p, p)
            idx = d.topk(self.nsample, dim=-1, largest=False)[1]
            p_r = p[idx] - p.unsqueeze(1)  # (n, nsample, 3)
            x_k = x_k[idx]
            x_v = x_v[idx]
            for i, layer in enumerate(self.linear_p):
                p_r = layer(p_r.transpose(1, 2).contiguous()).transpose(1, 2).contiguous() \
                    if i == 1 else layer(p_r)
            w = x_k - x_q.unsqueeze(1) + p_r.view(p_r.shape[0], p_r.shape[1],
                                                  self.out_planes // self.mid_planes,
                                                  self.mid_planes).sum(2)
            for i, layer in enumerate(self.linear_w):
                w = layer(w.transpose(1, 2).contiguous()).transpose(1, 2).contiguous() \
                    if i % 3 == 0 else layer(w)
            w = self.softmax(w)
            n, nsample, c = x_v.shape
            s = self.share_planes
            x = ((x_v + p_r).view(n, nsample, s, c // s) * w.unsqueeze(2)).sum(1).view(n, c)
            return x

    return PointTransformerLayer(4, 4)


def train_point_transformer(lib):
    init = initial_state(point_transformer)
    model = start(lib, point_transformer, init)
    p = lib.tensor(draw(10, 3, seed=73))
    x = lib.tensor(draw(10, 4, seed=74))
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    rec = []
    for _ in range(STEPS):
        opt.zero_grad()
        out = model(p, x)
        loss = out.pow(2).mean()
        loss.backward()
        opt.step()
        rec.append([loss, grads(model)])
    return rec


def test_cotangent_laplacian_normals():
    both(cot_mesh)


def test_point_transformer_vector_attention():
    both(train_point_transformer)


# 13. The idioms above that nodegrad first refused

def sublist_einsum(lib):
    """einsum's sublist form (NumPy's and PyTorch's): integers for letters, Ellipsis, an
    implicit output sorted as the integers are."""
    a = lib.tensor(draw(2, 3, seed=40), requires_grad=True)
    b = lib.tensor(draw(3, 4, seed=41), requires_grad=True)
    c = lib.tensor(draw(5, 2, 3, seed=42), requires_grad=True)
    explicit = lib.einsum(a, [0, 1], b, [1, 2], [0, 2])
    implicit = lib.einsum(a, [30, 1], b, [1, 2])  # the output's axes sorted: 2 before 30
    batched = lib.einsum(c, [Ellipsis, 1], b, [1, 2], [Ellipsis, 2])
    trace = lib.einsum(a[:, :2], [7, 7])
    (explicit.sum() + (implicit * implicit).sum() + batched.tanh().sum() + trace).backward()
    return [explicit, implicit, batched, trace, a.grad, b.grad, c.grad]


def test_einsum_sublist_form():
    both(sublist_einsum)
    with pytest.raises(ValueError, match="einsum: sublist entries"):
        ng.einsum(ng.ones(2, 2), [0, 52])
    with pytest.raises(TypeError, match="einsum: a sublist"):
        ng.einsum(ng.ones(2, 2), "ij")


def legacy_sizes(lib):
    """``Tensor(*sizes)`` (uninitialised in PyTorch; filled before use, as reset_parameters
    does) in the default dtype, as a Parameter's storage."""
    w = lib.nn.Parameter(lib.Tensor(3, 2))
    v = lib.Tensor(4)
    with lib.no_grad():
        w.fill_(0.5)
        v.zero_()
    ints = lib.tensor([1, 2])
    alias = lib.Tensor(ints)  # a tensor keeps its dtype and shares its values
    alias[0] = 7
    acc = lib.Tensor()  # an empty accumulator, grown by cat
    for k in range(2):
        acc = lib.cat([acc, lib.full((2,), float(k))])
    return [lib.tensor(list(w.shape)), lib.tensor(list(v.shape)), lib.tensor(list(
        lib.Tensor(2, 1, 3, 1).shape)), w, v, lib.tensor(str(w.dtype) == str(v.dtype)),
        alias, ints, lib.tensor(str(alias.dtype).split(".")[-1] == "int64"), acc]


def test_tensor_of_sizes():
    both(legacy_sizes)
    assert ng.Tensor(2, 3).dtype == ng.get_default_dtype()
    assert ng.Tensor([1, 2]).shape == (2,)  # a sequence is still data
    with pytest.raises(TypeError, match="sizes must be integers"):
        ng.Tensor(2, 3.0)
    with pytest.raises(ValueError, match="negative dimension"):
        ng.Tensor(-1)
    with pytest.raises(ng.errors.GradError, match="view_as"):
        ng.Tensor(ng.ones(2, requires_grad=True))  # PyTorch's alias would be recorded


def factory_out(lib):
    """Factories given out= and no dtype make out's dtype; under no_grad a Parameter written
    so stops requiring grad (PyTorch's; code calls requires_grad_() after)."""
    got = []
    for dt in (lib.float64, lib.float32, lib.int64, lib.int32):
        for make in (lambda o: lib.arange(1, 5, out=o), lambda o: lib.arange(4, out=o),
                     lambda o: lib.zeros(4, out=o), lambda o: lib.ones(4, out=o),
                     lambda o: lib.full((4,), 3, out=o),
                     lambda o: lib.linspace(0, 3, 4, out=o)):
            o = lib.empty(4, dtype=dt)
            r = make(o)
            got += [r is o, str(r.dtype).split(".")[-1], o.double()]
    p = lib.nn.Parameter(lib.ones(4))
    with lib.no_grad():
        lib.arange(1, p.numel() + 1, out=p).mul_(math.pi)
    got += [p.requires_grad, p.detach()]
    p.requires_grad_()
    return got + [p.requires_grad]


def test_factory_out_takes_out_dtype():
    both(factory_out)
    p = ng.nn.Parameter(ng.ones(4))
    with pytest.raises(ng.errors.GradError, match="out is a leaf"):
        ng.zeros(4, out=p)  # while recording, as PyTorch's


def test_module_plain_attributes_before_init():
    def early(lib):
        class Scaled(lib.nn.Linear):
            def __init__(self, n, scale):
                self.scale = scale  # read by reset_parameters, which Linear.__init__ calls
                super().__init__(n, n)

            def reset_parameters(self):
                with lib.no_grad():
                    self.weight.fill_(self.scale)
                    self.bias.zero_()

        m = Scaled(3, 0.5).double()
        return [m.weight, m(lib.ones(2, 3, dtype=lib.float64)), lib.tensor(m.scale)]

    both(early)

    class Bad(ng.nn.Module):
        def __init__(self):
            self.w = ng.nn.Parameter(ng.ones(2))
            super().__init__()

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Bad()


def test_segment_max_ties_share_the_gradient():
    """Ties of a segment max share its gradient evenly. PyTorch's CPU kernel agrees for a
    positive gradient; a negative one it gives whole to every tie (its kernel divides only
    entries > 0), which would count that gradient twice: nodegrad splits it as for amax."""
    def tied(lib, sign):
        x = lib.tensor([2.0, 2.0, 1.0, 5.0, 5.0, 5.0], requires_grad=True)
        out = lib.segment_reduce(x, "max", lengths=lib.tensor([3, 3]))
        (out * sign).sum().backward()
        return [out, x.grad]

    both(tied, 1.0)
    got = tied(ng, -1.0)[1].numpy()
    np.testing.assert_allclose(got, [-0.5, -0.5, 0, -1 / 3, -1 / 3, -1 / 3])


# 14. Custom autograd Functions as the plain-PyTorch PointNet++ ops write them

def pointnet2_ops(lib):
    """Furthest point sampling (non-differentiable output), a gather and a three-point
    interpolation as ``autograd.Function``s whose backward scatters by hand and returns None
    for the interpolation weights."""
    Function = lib.autograd.Function

    class FurthestPointSampling(Function):
        @staticmethod
        def forward(ctx, xyz, npoint):
            B, N, _ = xyz.size()
            out = lib.zeros(B, npoint, dtype=lib.int32)
            dist = lib.full((B, N), 1e10, dtype=xyz.dtype)
            far = lib.zeros(B, dtype=lib.long)
            for i in range(npoint):
                out[:, i] = far.int()
                c = xyz[lib.arange(B), far].unsqueeze(1)
                dist = lib.minimum(dist, ((xyz - c) ** 2).sum(-1))
                far = dist.argmax(-1)
            ctx.mark_non_differentiable(out)
            return out

        @staticmethod
        def backward(ctx, a=None):
            return None, None

    class GatherOperation(Function):
        @staticmethod
        def forward(ctx, features, idx):
            B, C, N = features.size()
            ctx.for_backwards = (idx, C, N)
            return lib.gather(features, 2, idx.long().unsqueeze(1).expand(-1, C, -1))

        @staticmethod
        def backward(ctx, grad_out):
            idx, C, N = ctx.for_backwards
            grad_features = lib.zeros(grad_out.size(0), C, N, dtype=grad_out.dtype)
            grad_features.scatter_add_(2, idx.long().unsqueeze(1).expand(-1, C, -1), grad_out)
            return grad_features, None

    class ThreeInterpolate(Function):
        @staticmethod
        def forward(ctx, features, idx, weight):
            B, c, m = features.size()
            n = idx.size(1)
            ctx.save_for_backward(idx, weight)
            ctx.m = m
            g = lib.gather(features.unsqueeze(2).expand(-1, -1, n, -1), 3,
                           idx.long().unsqueeze(1).expand(-1, c, -1, -1))
            return (g * weight.unsqueeze(1)).sum(-1)

        @staticmethod
        @lib.autograd.function.once_differentiable
        def backward(ctx, grad_out):
            idx, weight = ctx.saved_tensors
            B, c, n = grad_out.size()
            g = (grad_out.unsqueeze(-1) * weight.unsqueeze(1)).reshape(B, c, -1)
            grad_features = lib.zeros(B, c, ctx.m, dtype=grad_out.dtype)
            grad_features.scatter_add_(2, idx.long().reshape(B, 1, -1).expand(-1, c, -1), g)
            return grad_features, None, None

    return FurthestPointSampling.apply, GatherOperation.apply, ThreeInterpolate.apply


def custom_ops_program(lib, xyz_grad: bool = False):
    fps, gather, interp = pointnet2_ops(lib)
    xyz = lib.tensor(draw(2, 12, 3, seed=90), requires_grad=xyz_grad)
    feats = lib.tensor(draw(2, 4, 12, seed=91), requires_grad=True)
    idx = fps(xyz, 5)
    sub = gather(feats, idx)
    new_xyz = gather(xyz.transpose(1, 2).contiguous(), idx).transpose(1, 2)
    d = lib.cdist(xyz, new_xyz) ** 2
    dist, nidx = lib.topk(d, 3, dim=-1, largest=False)
    dist_recip = 1.0 / (dist + 1e-8)
    weight = dist_recip / dist_recip.sum(-1, keepdim=True)
    up = interp(sub, nidx.int(), weight)
    loss = (up ** 2).sum() + sub.sum()
    loss.backward()
    return [idx, idx.requires_grad, sub, up, feats.grad] + ([xyz.grad] if xyz_grad else [])


def test_pointnet2_custom_functions():
    both(custom_ops_program)


def test_custom_function_runs_on_materialised_zeros():
    """The positions reach the loss only through the interpolation weights, whose gradient
    ThreeInterpolate returns as None: PyTorch still runs the gather's backward on zeros, so
    the positions get a zero gradient rather than None."""
    got = both(custom_ops_program, True)
    assert float(got[-1].abs().max()) == 0.0
