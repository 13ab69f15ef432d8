"""Graph and set programs in plain PyTorch (no graph library), ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``): GCN on a
normalised dense adjacency and on edge lists, GAT with a segment softmax over incoming edges,
GraphSAGE mean/max aggregation, graph classification with pooling over a batch vector, PointNet
and Deep Sets, link prediction with negative sampling, TransE/DistMult and node classification
with masks. Graphs come from a NumPy stochastic block model; both runs start from PyTorch's seeded
weights in float64, and losses, gradients and parameters are compared step by step.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nodegrad as ng
from _ports import (_one_torch_thread, arr, arrays, assert_same,  # noqa: F401
                    index_points, query_ball_point, square_distance)

torch = pytest.importorskip("torch")

TOL = 1e-10
STEPS = 4


def sbm(n_per: int = 8, blocks: int = 3, p_in: float = 0.5, p_out: float = 0.05,
        feats: int = 5, seed: int = 0):
    """A stochastic block model: undirected edge list (both directions, no self loops),
    node features, block labels and a train mask."""
    r = np.random.default_rng(seed)
    y = np.repeat(np.arange(blocks), n_per)
    n = len(y)
    p = np.where(y[:, None] == y[None, :], p_in, p_out)
    a = np.triu(r.random((n, n)) < p, 1)
    a = a | a.T
    row, col = np.nonzero(a)
    x = r.standard_normal((n, feats)) + 0.5 * np.eye(blocks, feats)[y]
    mask = np.zeros(n, bool)
    mask[r.permutation(n)[: n // 2]] = True
    return np.stack([row, col]).astype(np.int64), x, y.astype(np.int64), mask


EDGES, X, Y, MASK = sbm()
N = X.shape[0]


def init_from_torch(build, lib, *args):
    """``build(lib, *args)`` in float64 with PyTorch's seeded initial weights."""
    torch.manual_seed(0)
    init = {k: v.numpy().copy() for k, v in build(torch, *args).double().state_dict().items()}
    model = build(lib, *args).to(lib.float64)
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def grads(model) -> dict:
    return {k: arr(p.grad) for k, p in model.named_parameters()}


def train(lib, model, loss_fn, opt, steps: int = STEPS) -> dict:
    """A few steps; the record holds every loss, gradient and the final parameters."""
    losses, gs = [], []
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        gs.append(grads(model))
        opt.step()
        losses.append(loss.item())
    return {"loss": losses, "grad": gs, "w": arrays(model.state_dict())}


def both(fn, *args, tol: float = TOL):
    ref, got = fn(torch, *args), fn(ng, *args)
    assert_same(got, ref, tol)
    return got


# --- 1. GCN (Kipf & Welling) on a normalised dense adjacency ------------------------------------

def gcn_dense_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class GraphConvolution(nn.Module):
        def __init__(self, in_features, out_features, bias=True):
            super().__init__()
            self.weight = nn.Parameter(lib.empty(in_features, out_features))
            self.bias = nn.Parameter(lib.empty(out_features)) if bias else None
            stdv = 1.0 / self.weight.size(1) ** 0.5
            self.weight.data.uniform_(-stdv, stdv)
            if self.bias is not None:
                self.bias.data.uniform_(-stdv, stdv)

        def forward(self, x, adj):
            support = lib.mm(x, self.weight)
            output = adj @ support
            return output + self.bias if self.bias is not None else output

    class GCN(nn.Module):
        def __init__(self, nfeat, nhid, nclass, dropout):
            super().__init__()
            self.gc1 = GraphConvolution(nfeat, nhid)
            self.gc2 = GraphConvolution(nhid, nclass)
            self.dropout = dropout

        def forward(self, x, adj):
            x = F.relu(self.gc1(x, adj))
            x = F.dropout(x, self.dropout, training=self.training)
            return F.log_softmax(self.gc2(x, adj), dim=1)

    return GCN(X.shape[1], 8, 3, 0.0)


def normalize_adj(lib, edges, n):
    adj = lib.zeros(n, n, dtype=lib.float64)
    adj[edges[0], edges[1]] = 1.0
    adj = adj + lib.eye(n, dtype=lib.float64)
    deg = adj.sum(1)
    d_inv_sqrt = lib.pow(deg, -0.5)
    d_inv_sqrt[lib.isinf(d_inv_sqrt)] = 0.0
    d_mat = lib.diag(d_inv_sqrt)
    return d_mat.mm(adj).mm(d_mat)


def gcn_dense(lib):
    F = lib.nn.functional
    model = init_from_torch(gcn_dense_build, lib)
    adj = normalize_adj(lib, lib.tensor(EDGES), N)
    x, y, mask = lib.tensor(X), lib.tensor(Y), lib.tensor(MASK)
    idx_train = lib.nonzero(mask).squeeze()
    opt = lib.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)

    def loss_fn():
        out = model(x, adj)
        return F.nll_loss(out[idx_train], y[idx_train])

    rec = train(lib, model, loss_fn, opt)
    model.eval()
    with lib.no_grad():
        pred = model(x, adj).max(1)[1]
    rec["acc"] = pred[~mask].eq(y[~mask]).double().mean().item()
    rec["adj"] = adj
    return rec


def test_gcn_dense_normalised_adjacency():
    both(gcn_dense)


# --- 2. GCN on an edge list, aggregated with index_add_ / scatter_add_ ---------------------------

def gcn_conv_build(lib, via):
    nn, F = lib.nn, lib.nn.functional

    def add_self_loops(edge_index, num_nodes):
        loop = lib.arange(num_nodes, dtype=edge_index.dtype)
        loop = loop.unsqueeze(0).repeat(2, 1)
        return lib.cat([edge_index, loop], dim=1)

    class GCNConv(nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.lin = nn.Linear(in_channels, out_channels, bias=False)
            self.bias = nn.Parameter(lib.zeros(out_channels))

        def forward(self, x, edge_index):
            edge_index = add_self_loops(edge_index, x.size(0))
            x = self.lin(x)
            row, col = edge_index
            deg = lib.zeros(x.size(0), dtype=x.dtype)
            deg.scatter_add_(0, col, lib.ones(col.size(0), dtype=x.dtype))
            deg_inv_sqrt = deg.pow(-0.5)
            deg_inv_sqrt[deg_inv_sqrt == float("inf")] = 0
            norm = deg_inv_sqrt[row] * deg_inv_sqrt[col]
            msg = norm.view(-1, 1) * x[row]
            if via == "index_add_":
                out = lib.zeros_like(x).index_add_(0, col, msg)
            elif via == "index_add":
                out = x.new_zeros(x.shape).index_add(0, col, msg, alpha=1.0)
            else:
                index = col.unsqueeze(-1).expand_as(msg)
                out = lib.zeros(x.size(0), msg.size(1), dtype=x.dtype).scatter_add_(0, index, msg)
            return out + self.bias

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GCNConv(X.shape[1], 8)
            self.conv2 = GCNConv(8, 3)

        def forward(self, x, edge_index):
            x = self.conv1(x, edge_index).relu()
            x = F.dropout(x, p=0.0, training=self.training)
            return self.conv2(x, edge_index)

    return Net()


def gcn_edges(lib, via):
    F = lib.nn.functional
    model = init_from_torch(gcn_conv_build, lib, via)
    x, y, ei, mask = lib.tensor(X), lib.tensor(Y), lib.tensor(EDGES), lib.tensor(MASK)
    opt = lib.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)

    def loss_fn():
        out = model(x, ei)
        return F.cross_entropy(out[mask], y[mask])

    return train(lib, model, loss_fn, opt)


@pytest.mark.parametrize("via", ["index_add_", "index_add", "scatter_add_"])
def test_gcn_edge_list_aggregation(via):
    got = both(gcn_edges, via)
    # the three aggregations are the same computation
    if via != "index_add_":
        assert_same(gcn_edges(ng, "index_add_"), got)


# --- 3. GAT: per-edge scores, segment softmax over incoming edges, multi-head concat -------------

def softmax_amax_index_add(lib, src, index, num_nodes):
    """Softmax of ``src`` (E, H) over edges grouped by target ``index``."""
    idx = index.unsqueeze(-1).expand_as(src)
    src_max = lib.full((num_nodes, src.size(1)), float("-inf"), dtype=src.dtype)
    src_max = src_max.scatter_reduce(0, idx, src, reduce="amax", include_self=False)
    out = (src - src_max.index_select(0, index)).exp()
    denom = lib.zeros(num_nodes, src.size(1), dtype=src.dtype).index_add(0, index, out)
    return out / (denom[index] + 1e-16)


def softmax_gather(lib, src, index, num_nodes):
    """The same softmax written with ``gather`` and ``scatter_add``, the max detached."""
    idx = index.unsqueeze(-1).expand_as(src)
    src_max = lib.zeros(num_nodes, src.size(1), dtype=src.dtype)
    src_max = src_max.scatter_reduce(0, idx, src.detach(), reduce="amax", include_self=False)
    out = (src - src_max.gather(0, idx)).exp()
    denom = lib.zeros_like(src_max).scatter_add(0, idx, out)
    return out / denom.gather(0, idx).clamp(min=1e-16)


def gat_build(lib, heads, softmax):
    nn, F = lib.nn, lib.nn.functional

    class GATConv(nn.Module):
        def __init__(self, in_channels, out_channels, heads=1, concat=True,
                     negative_slope=0.2):
            super().__init__()
            self.heads, self.out_channels, self.concat = heads, out_channels, concat
            self.negative_slope = negative_slope
            self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
            self.att_src = nn.Parameter(lib.empty(1, heads, out_channels))
            self.att_dst = nn.Parameter(lib.empty(1, heads, out_channels))
            self.bias = nn.Parameter(lib.zeros(heads * out_channels if concat else out_channels))
            nn.init.xavier_uniform_(self.att_src)
            nn.init.xavier_uniform_(self.att_dst)

        def forward(self, x, edge_index):
            H, C = self.heads, self.out_channels
            n = x.size(0)
            loops = lib.arange(n).repeat(2, 1)
            src, dst = lib.cat([edge_index, loops], dim=-1)
            x = self.lin(x).view(-1, H, C)
            alpha_src = (x * self.att_src).sum(dim=-1)
            alpha_dst = (x * self.att_dst).sum(-1)
            alpha = alpha_src[src] + alpha_dst[dst]
            alpha = F.leaky_relu(alpha, self.negative_slope)
            alpha = softmax(lib, alpha, dst, n)
            alpha = F.dropout(alpha, p=0.0, training=self.training)
            msg = x[src] * alpha.unsqueeze(-1)
            out = lib.zeros(n, H, C, dtype=x.dtype).index_add_(0, dst, msg)
            out = out.view(-1, H * C) if self.concat else out.mean(dim=1)
            return out + self.bias

    class GAT(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GATConv(X.shape[1], 4, heads=heads)
            self.conv2 = GATConv(4 * heads, 3, heads=1, concat=False)

        def forward(self, x, edge_index):
            x = F.dropout(x, p=0.0, training=self.training)
            x = F.elu(self.conv1(x, edge_index))
            return F.log_softmax(self.conv2(x, edge_index), dim=-1)

    return GAT()


def gat(lib, heads, softmax):
    F = lib.nn.functional
    model = init_from_torch(gat_build, lib, heads, softmax)
    x, y, ei, mask = lib.tensor(X), lib.tensor(Y), lib.tensor(EDGES), lib.tensor(MASK)
    opt = lib.optim.Adam(model.parameters(), lr=0.005, weight_decay=5e-4)

    def loss_fn():
        return F.nll_loss(model(x, ei)[mask], y[mask])

    return train(lib, model, loss_fn, opt)


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("softmax", [softmax_amax_index_add, softmax_gather])
def test_gat_segment_softmax(heads, softmax):
    both(gat, heads, softmax)


# --- 4. GraphSAGE: mean / max aggregation, bincount and degree counts ----------------------------

def sage_build(lib, aggr):
    nn, F = lib.nn, lib.nn.functional

    def degree(index, num_nodes, dtype):
        out = lib.zeros((num_nodes,), dtype=dtype)
        one = lib.ones((index.size(0),), dtype=out.dtype)
        return out.scatter_add_(0, index, one)

    class SAGEConv(nn.Module):
        def __init__(self, in_channels, out_channels, normalize=False):
            super().__init__()
            self.lin_l = nn.Linear(in_channels, out_channels)
            self.lin_r = nn.Linear(in_channels, out_channels, bias=False)
            self.normalize = normalize

        def forward(self, x, edge_index):
            src, dst = edge_index[0], edge_index[1]
            n = x.size(0)
            msg = x[src]
            idx = dst.view(-1, 1).expand(-1, x.size(1))
            if aggr == "mean":
                agg = lib.zeros_like(x).scatter_reduce(0, idx, msg, reduce="mean",
                                                       include_self=False)
            elif aggr == "mean_bincount":
                cnt = lib.bincount(dst, minlength=n).clamp(min=1).to(x.dtype)
                agg = lib.zeros_like(x).index_add_(0, dst, msg) / cnt.unsqueeze(-1)
            elif aggr == "mean_degree":
                deg = degree(dst, n, x.dtype).clamp_(1)
                agg = lib.zeros_like(x).scatter_add_(0, idx, msg) / deg.view(-1, 1)
            else:
                agg = lib.zeros_like(x).scatter_reduce(0, idx, msg, reduce="amax",
                                                       include_self=False)
            out = self.lin_l(agg) + self.lin_r(x)
            if self.normalize:
                out = F.normalize(out, p=2.0, dim=-1)
            return out

    class SAGE(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([SAGEConv(X.shape[1], 8, normalize=True),
                                        SAGEConv(8, 3)])

        def forward(self, x, edge_index):
            for i, conv in enumerate(self.convs):
                x = conv(x, edge_index)
                if i < len(self.convs) - 1:
                    x = x.relu_()
                    x = F.dropout(x, p=0.0, training=self.training)
            return x

    return SAGE()


def sage(lib, aggr):
    F = lib.nn.functional
    model = init_from_torch(sage_build, lib, aggr)
    # a directed graph with isolated targets: some nodes receive no message at all
    keep = EDGES[0] < EDGES[1]
    x, y, ei, mask = lib.tensor(X), lib.tensor(Y), lib.tensor(EDGES[:, keep]), lib.tensor(MASK)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def loss_fn():
        return F.cross_entropy(model(x, ei)[mask], y[mask], label_smoothing=0.1)

    return train(lib, model, loss_fn, opt)


@pytest.mark.parametrize("aggr", ["mean", "mean_bincount", "mean_degree", "max"])
def test_graphsage_aggregation(aggr):
    got = both(sage, aggr)
    if aggr.startswith("mean_"):
        assert_same(sage(ng, "mean"), got)


# --- 5. graph classification: global mean / add / max pooling over a batch vector ---------------

def graph_batch(num_graphs=6, seed=1):
    """Several small SBM graphs collated into one: edges offset, a batch vector, one label each."""
    r = np.random.default_rng(seed)
    edges, xs, sizes, labels, off = [], [], [], [], 0
    for g in range(num_graphs):
        n = int(r.integers(3, 7))
        label = g % 2
        e, x, _, _ = sbm(n_per=n, blocks=1 + label, p_in=0.6, p_out=0.1, feats=4, seed=seed + g)
        edges.append(e + off)
        xs.append(x)
        sizes.append(x.shape[0])
        labels.append(label)
        off += x.shape[0]
    return (np.concatenate(edges, 1), np.concatenate(xs), np.array(sizes),
            np.array(labels, np.float64))


def scatter(lib, src, index, dim=0, dim_size=None, reduce="sum"):
    """``torch_scatter.scatter`` written by hand: ``index`` broadcast to ``src`` along ``dim``."""
    if dim < 0:
        dim = src.dim() + dim
    size = list(src.size())
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() > 0 else 0
    size[dim] = dim_size
    for _ in range(dim):
        index = index.unsqueeze(0)
    for _ in range(index.dim(), src.dim()):
        index = index.unsqueeze(-1)
    index = index.expand(src.size())
    out = src.new_zeros(size)
    if reduce == "sum":
        return out.scatter_add_(dim, index, src)
    if reduce == "mean":
        out = out.scatter_add_(dim, index, src)
        count = src.new_zeros(size).scatter_add_(dim, index, src.new_ones(src.size()))
        return out / count.clamp(min=1)
    return out.scatter_reduce_(dim, index, src, reduce="amax", include_self=False)


def graph_cls_build(lib):
    nn = lib.nn

    class GraphClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = nn.Linear(4, 8)
            self.lin2 = nn.Linear(8, 8)
            self.head = nn.Sequential(nn.Linear(3 * 8, 8), nn.ReLU(), nn.Linear(8, 1))

        def forward(self, x, edge_index, batch, num_graphs):
            src, dst = edge_index
            h = self.lin1(x).relu()
            h = h + scatter(lib, h[src], dst, 0, dim_size=x.size(0), reduce="mean")
            h = self.lin2(h).tanh()
            add = lib.zeros(num_graphs, h.size(1), dtype=h.dtype).index_add_(0, batch, h)
            cnt = lib.bincount(batch, minlength=num_graphs).clamp(min=1).unsqueeze(-1)
            mean = add / cnt
            mx = scatter(lib, h, batch, dim=0, dim_size=num_graphs, reduce="max")
            assert lib.allclose(mean, scatter(lib, h, batch, reduce="mean"))
            return self.head(lib.cat([mean, add, mx], dim=-1)).squeeze(-1)

    return GraphClassifier()


def graph_cls(lib):
    F = lib.nn.functional
    e, x, sizes, labels = graph_batch()
    model = init_from_torch(graph_cls_build, lib)
    batch = lib.repeat_interleave(lib.arange(len(sizes)), lib.tensor(sizes))
    ei, x, y = lib.tensor(e), lib.tensor(x), lib.tensor(labels)
    opt = lib.optim.AdamW(model.parameters(), lr=0.01)

    def loss_fn():
        logits = model(x, ei, batch, len(sizes))
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=lib.tensor(2.0,
                                                                                   dtype=y.dtype))

    return train(lib, model, loss_fn, opt)


def test_graph_classification_pooling():
    both(graph_cls)


# --- 6. PointNet (shared MLP as Conv1d k=1, T-Net, max pool) and Deep Sets ----------------------

def point_clouds(b=6, n=10, seed=2):
    """Noisy points on a sphere (label 0) or in a flat disc (label 1), shape (B, 3, N)."""
    r = np.random.default_rng(seed)
    pts = r.standard_normal((b, 3, n))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    y = np.arange(b) % 2
    pts[y == 1, 2] *= 0.05
    return pts + 0.01 * r.standard_normal(pts.shape), y.astype(np.int64)


def pointnet_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class STNkd(nn.Module):
        def __init__(self, k=3):
            super().__init__()
            self.conv1 = nn.Conv1d(k, 8, 1)
            self.conv2 = nn.Conv1d(8, 16, 1)
            self.fc1 = nn.Linear(16, 8)
            self.fc2 = nn.Linear(8, k * k)
            self.bn1 = nn.BatchNorm1d(8)
            self.bn2 = nn.BatchNorm1d(16)
            self.k = k

        def forward(self, x):
            batchsize = x.size()[0]
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            x = lib.max(x, 2, keepdim=True)[0]
            x = x.view(-1, 16)
            x = self.fc2(F.relu(self.fc1(x)))
            iden = lib.eye(self.k, dtype=x.dtype).flatten().view(1, self.k * self.k)
            iden = iden.repeat(batchsize, 1)
            x = x + iden
            return x.view(-1, self.k, self.k)

    class PointNetCls(nn.Module):
        def __init__(self, k=2):
            super().__init__()
            self.stn = STNkd(3)
            self.conv1 = nn.Conv1d(3, 8, 1)
            self.fstn = STNkd(8)
            self.conv2 = nn.Conv1d(8, 16, 1)
            self.bn1 = nn.BatchNorm1d(8)
            self.bn2 = nn.BatchNorm1d(16)
            self.fc = nn.Sequential(nn.Linear(16, 8), nn.Dropout(p=0.0), nn.ReLU(),
                                    nn.Linear(8, k))

        def forward(self, x):
            n_pts = x.size()[2]
            trans = self.stn(x)
            x = x.transpose(2, 1)
            x = lib.bmm(x, trans)
            x = x.transpose(2, 1)
            x = F.relu(self.bn1(self.conv1(x)))
            trans_feat = self.fstn(x)
            x = lib.bmm(x.transpose(2, 1), trans_feat).transpose(2, 1)
            x = self.bn2(self.conv2(x))
            x = lib.max(x, 2, keepdim=True)[0].view(-1, 16)
            assert n_pts == 10
            return F.log_softmax(self.fc(x), dim=1), trans, trans_feat

    return PointNetCls()


def feature_transform_regularizer(lib, trans):
    d = trans.size()[1]
    eye = lib.eye(d, dtype=trans.dtype)[None, :, :]
    return lib.mean(lib.norm(lib.bmm(trans, trans.transpose(2, 1)) - eye, dim=(1, 2)))


def pointnet(lib):
    F = lib.nn.functional
    pts, labels = point_clouds()
    model = init_from_torch(pointnet_build, lib)
    x, y = lib.tensor(pts), lib.tensor(labels)
    opt = lib.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    sched = lib.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def loss_fn():
        pred, _, trans_feat = model(x)
        return F.nll_loss(pred, y) + feature_transform_regularizer(lib, trans_feat) * 0.001

    rec = {}
    for step in range(STEPS):
        rec[f"step{step}"] = train(lib, model, loss_fn, opt, steps=1)
        sched.step()
    model.eval()
    with lib.no_grad():
        pred = model(x)[0]
        rec["correct"] = pred.max(1)[1].eq(y).cpu().sum().item()
    return rec


def test_pointnet_tnet_max_pool():
    both(pointnet)


def deepsets_build(lib):
    nn = lib.nn

    class DeepSet(nn.Module):
        def __init__(self, in_dim=2, hid=8, pool="sum"):
            super().__init__()
            self.phi = nn.Sequential(nn.Linear(in_dim, hid), nn.ELU(), nn.Linear(hid, hid))
            self.rho = nn.Sequential(nn.Linear(hid, hid), nn.ELU(), nn.Linear(hid, 1))
            self.pool = pool

        def forward(self, x, mask):
            h = self.phi(x) * mask.unsqueeze(-1)  # padded elements contribute nothing
            if self.pool == "sum":
                h = h.sum(dim=1)
            elif self.pool == "mean":
                h = h.sum(1) / mask.sum(1, keepdim=True)
            else:
                h = h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
            return self.rho(h).squeeze(-1)

    return DeepSet()


def deepsets(lib, pool):
    F = lib.nn.functional
    r = np.random.default_rng(3)
    sets = r.standard_normal((8, 6, 2))
    lengths = r.integers(1, 7, size=8)
    mask_np = (np.arange(6)[None, :] < lengths[:, None]).astype(np.float64)
    target = (sets[..., 0] * mask_np).sum(1)  # the sum of each set's first coordinate
    model = init_from_torch(deepsets_build, lib)
    model.pool = pool
    x, mask, t = lib.tensor(sets), lib.tensor(mask_np), lib.tensor(target)
    opt = lib.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.9, momentum=0.5)

    def loss_fn():
        return F.smooth_l1_loss(model(x, mask), t, beta=0.5)

    rec = train(lib, model, loss_fn, opt)
    perm = lib.tensor(np.argsort(r.random(6)))
    with lib.no_grad():  # permutation invariance
        rec["perm"] = (model(x[:, perm], mask[:, perm]) - model(x, mask)).abs().max().item()
    assert rec["perm"] < 1e-12
    return rec


@pytest.mark.parametrize("pool", ["sum", "mean", "max"])
def test_deep_sets_pooling(pool):
    both(deepsets, pool)


# --- 7. link prediction: GCN encoder, negative sampling, dot-product decoder ---------------------

def link_build(lib):
    nn = lib.nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = nn.Linear(X.shape[1], 8)
            self.lin2 = nn.Linear(8, 8)

        def propagate(self, x, edge_index, n):
            row, col = edge_index
            deg = lib.bincount(col, minlength=n).to(x.dtype) + 1
            w = (deg[row] * deg[col]).rsqrt().unsqueeze(1)
            return lib.zeros_like(x).index_add_(0, col, w * x[row]) + x / deg.unsqueeze(1)

        def encode(self, x, edge_index):
            n = x.size(0)
            x = self.propagate(self.lin1(x), edge_index, n).relu()
            return self.propagate(self.lin2(x), edge_index, n)

        def decode(self, z, edge_label_index):
            return (z[edge_label_index[0]] * z[edge_label_index[1]]).sum(dim=-1)

        def decode_all(self, z):
            prob_adj = z @ z.t()
            return (prob_adj > 0).nonzero(as_tuple=False).t()

    return Encoder()


def negative_sampling(lib, num_nodes, num_neg, seed):
    """Uniform random pairs: drawn with ``randint`` (checked for range and dtype); the pairs
    used come from NumPy so both libraries train on the same ones."""
    g = lib.Generator().manual_seed(seed)
    drawn = lib.randint(0, num_nodes, (2, num_neg), generator=g)
    assert drawn.dtype == lib.int64 and drawn.shape == (2, num_neg)
    assert 0 <= int(drawn.min()) and int(drawn.max()) < num_nodes
    r = np.random.default_rng(seed)
    return lib.tensor(r.integers(0, num_nodes, size=(2, num_neg)))


def link_pred(lib):
    F = lib.nn.functional
    model = init_from_torch(link_build, lib)
    # hold out a tenth of the undirected edges; train on the rest
    und = EDGES[:, EDGES[0] < EDGES[1]]
    perm = np.random.default_rng(4).permutation(und.shape[1])
    n_val = und.shape[1] // 10
    train_pos = lib.tensor(und[:, perm[n_val:]])
    val_pos = lib.tensor(und[:, perm[:n_val]])
    train_ei = lib.cat([train_pos, train_pos.flip(0)], dim=1)
    x = lib.tensor(X)
    opt = lib.optim.Adam(params=model.parameters(), lr=0.01)
    losses, gs = [], []
    for epoch in range(STEPS):
        model.train()
        opt.zero_grad()
        z = model.encode(x, train_ei)
        neg = negative_sampling(lib, N, train_pos.size(1), seed=epoch)
        edge_label_index = lib.cat([train_pos, neg], dim=-1)
        edge_label = lib.cat([lib.ones(train_pos.size(1)),
                              lib.zeros(neg.size(1))], dim=0).to(z.dtype)
        out = model.decode(z, edge_label_index).view(-1)
        loss = F.binary_cross_entropy_with_logits(out, edge_label)
        loss.backward()
        gs.append(grads(model))
        opt.step()
        losses.append(loss.item())
    model.eval()
    with lib.no_grad():
        z = model.encode(x, train_ei)
        neg = negative_sampling(lib, N, val_pos.size(1), seed=99)
        scores = model.decode(z, lib.cat([val_pos, neg], dim=-1)).sigmoid()
        labels = lib.cat([lib.ones(val_pos.size(1)), lib.zeros(neg.size(1))]).double()
        order = lib.argsort(scores, descending=True)
        hits = labels[order].cumsum(0)
        acc = ((scores > 0.5).double() == labels).float().mean().item()
        all_edges = model.decode_all(z)
    return {"loss": losses, "grad": gs, "w": arrays(model.state_dict()), "scores": scores,
            "hits": hits, "acc": acc, "decoded": all_edges.double()}


def test_link_prediction_negative_sampling():
    both(link_pred)


# --- 8. knowledge-graph embeddings: TransE and DistMult ----------------------------------------

def triples(num_ent=12, num_rel=3, n=30, seed=5):
    r = np.random.default_rng(seed)
    h = r.integers(0, num_ent, n)
    rel = r.integers(0, num_rel, n)
    t = (h + rel + 1) % num_ent
    corrupt = r.integers(0, num_ent, n)
    flip = r.random(n) < 0.5
    return np.stack([h, rel, t]), np.where(flip, corrupt, h), np.where(flip, t, corrupt)


def kge_build(lib, kind, p_norm):
    nn, F = lib.nn, lib.nn.functional

    class KGEModel(nn.Module):
        def __init__(self, num_nodes=12, num_relations=3, hidden_channels=6, margin=1.0):
            super().__init__()
            self.node_emb = nn.Embedding(num_nodes, hidden_channels)
            self.rel_emb = nn.Embedding(num_relations, hidden_channels)
            self.margin = margin
            bound = 6.0 / hidden_channels ** 0.5
            nn.init.uniform_(self.node_emb.weight, -bound, bound)
            nn.init.uniform_(self.rel_emb.weight, -bound, bound)
            self.rel_emb.weight.data = F.normalize(self.rel_emb.weight.data, p=p_norm, dim=-1)

        def forward(self, head_index, rel_type, tail_index):
            head = self.node_emb(head_index)
            rel = self.rel_emb(rel_type)
            tail = self.node_emb(tail_index)
            if kind == "transe":
                head = F.normalize(head, p=p_norm, dim=-1)
                tail = F.normalize(tail, p=p_norm, dim=-1)
                return -((head + rel) - tail).norm(p=p_norm, dim=-1)
            return (head * rel * tail).sum(dim=-1)

        def loss(self, pos, neg):
            pos_score, neg_score = self(*pos), self(*neg)
            if kind == "transe":
                crit = nn.MarginRankingLoss(margin=self.margin)
                return crit(pos_score, neg_score, target=lib.ones_like(pos_score))
            scores = lib.cat([pos_score, neg_score], dim=0)
            target = lib.cat([lib.ones_like(pos_score), lib.zeros_like(neg_score)], dim=0)
            return F.binary_cross_entropy_with_logits(scores, target)

    return KGEModel()


def kge(lib, kind, p_norm):
    (h, r, t), nh, nt = triples()
    model = init_from_torch(kge_build, lib, kind, p_norm)
    pos = lib.tensor(h), lib.tensor(r), lib.tensor(t)
    neg = lib.tensor(nh), lib.tensor(r), lib.tensor(nt)
    opt = lib.optim.Adagrad(model.parameters(), lr=0.1) if kind == "transe" else \
        lib.optim.Adam(model.parameters(), lr=0.05)
    rec = train(lib, model, lambda: model.loss(pos, neg), opt)
    with lib.no_grad():  # rank every tail for the first triple
        s = model(pos[0][:1].expand(12), pos[1][:1].expand(12), lib.arange(12))
        rec["rank"] = int((s.argsort(descending=True) == pos[2][0]).nonzero().view(-1)[0]) + 1
        rec["dist"] = lib.norm(model.node_emb.weight[:3] - model.node_emb.weight[3:6], p=2,
                               dim=-1)
    return rec


@pytest.mark.parametrize("kind,p_norm", [("transe", 1.0), ("transe", 2.0), ("distmult", 2.0)])
def test_knowledge_graph_embeddings(kind, p_norm):
    both(kge, kind, p_norm)


def test_assigning_a_tensor_to_a_parameters_data_takes_its_values():
    """TransE's ``w.data = F.normalize(w)``: a parameter takes the tensor's values, as
    PyTorch's."""
    emb = ng.nn.Embedding(4, 3)
    unit = ng.nn.functional.normalize(emb.weight, p=2, dim=-1)
    emb.weight.data = unit
    np.testing.assert_array_equal(emb(ng.tensor([0, 1])).detach().numpy(),
                                  unit[:2].detach().numpy())


# --- 9. node classification with masks, unique / argsort splits, index_put_ adjacency ----------

def nodecls_build(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(X.shape[1], 8), nn.ReLU(), nn.Linear(8, 3))


def split_per_class(lib, y, per_class):
    """The first ``per_class`` nodes of each class (in a fixed shuffled order) train; the rest
    split evenly into validation and test, Planetoid-style."""
    classes, counts = lib.unique(y, return_counts=True)
    assert int(counts.min()) >= per_class
    order = lib.argsort(lib.tensor(np.random.default_rng(6).random(len(y))))
    train_mask = lib.zeros(len(y), dtype=lib.bool)
    for c in classes.tolist():
        idx = order[y[order] == c][:per_class]
        train_mask[idx] = True
    rest = (~train_mask).nonzero(as_tuple=True)[0]
    val_mask = lib.zeros_like(train_mask)
    val_mask[rest[: len(rest) // 2]] = True
    test_mask = ~(train_mask | val_mask)
    return train_mask, val_mask, test_mask


def nodecls(lib):
    F = lib.nn.functional
    model = init_from_torch(nodecls_build, lib)
    x, y = lib.tensor(X), lib.tensor(Y)
    row, col = lib.tensor(EDGES)
    # duplicate edges (both directions listed twice) accumulate to weight 2
    vals = lib.ones(row.numel(), dtype=x.dtype)
    adj = lib.zeros(N, N, dtype=x.dtype)
    adj.index_put_((row, col), vals, accumulate=True)
    adj.index_put_((row[:5], col[:5]), vals[:5], accumulate=True)
    adj = adj + lib.diag(lib.ones(N, dtype=x.dtype))
    deg = adj.sum(dim=1, keepdim=True)
    adj = adj / deg  # a random-walk normalisation
    train_mask, val_mask, test_mask = split_per_class(lib, y, 3)
    opt = lib.optim.Adam(model.parameters(), lr=0.02, weight_decay=5e-4)
    records = []

    def loss_fn():
        out = adj @ model(adj @ x)
        return F.cross_entropy(out[train_mask], y[train_mask])

    for _ in range(STEPS):
        rec = train(lib, model, loss_fn, opt, steps=1)
        model.eval()
        with lib.no_grad():
            pred = (adj @ model(adj @ x)).argmax(dim=-1)
            accs = [int((pred[m] == y[m]).sum()) / int(m.sum())
                    for m in (train_mask, val_mask, test_mask)]
        rec["accs"] = accs
        records.append(rec)
    return {"records": records, "masks": [train_mask, val_mask, test_mask],
            "classes": lib.unique(y), "adj": adj}


def test_node_classification_masks_index_put():
    both(nodecls)


# --- 10. hierarchical pooling: TopK pooling and DiffPool over dense batches ---------------------

def topk(lib, x, ratio, batch):
    """Per graph, the indices of the ``ceil(ratio * n)`` best scores (PyG's ``topk``)."""
    num_nodes = lib.zeros(int(batch.max()) + 1, dtype=lib.long).scatter_add_(
        0, batch, batch.new_ones(x.size(0)))
    batch_size, max_num_nodes = num_nodes.size(0), num_nodes.max().item()
    cum_num_nodes = lib.cat([num_nodes.new_zeros(1), num_nodes.cumsum(dim=0)[:-1]], dim=0)
    index = lib.arange(batch.size(0), dtype=lib.long)
    index = (index - cum_num_nodes[batch]) + (batch * max_num_nodes)
    dense_x = x.new_full((batch_size * max_num_nodes,), lib.finfo(x.dtype).min)
    dense_x[index] = x
    dense_x = dense_x.view(batch_size, max_num_nodes)
    _, perm = dense_x.sort(dim=-1, descending=True)
    perm = perm + cum_num_nodes.view(-1, 1)
    perm = perm.view(-1)
    k = (ratio * num_nodes.to(lib.float)).ceil().to(lib.long)
    mask = [lib.arange(k[i], dtype=lib.long) + i * max_num_nodes for i in range(batch_size)]
    return perm[lib.cat(mask, dim=0)]


def filter_adj(lib, edge_index, perm, num_nodes):
    mask = perm.new_full((num_nodes,), -1)
    i = lib.arange(perm.size(0), dtype=lib.long)
    mask[perm] = i
    row, col = edge_index
    row, col = mask[row], mask[col]
    keep = (row >= 0) & (col >= 0)
    return lib.stack([row[keep], col[keep]], dim=0)


def to_dense_batch(lib, x, batch, max_nodes):
    num_nodes = lib.bincount(batch)
    cum = lib.cat([batch.new_zeros(1), num_nodes.cumsum(0)])
    idx = lib.arange(batch.numel()) - cum[batch] + batch * max_nodes
    out = x.new_zeros(num_nodes.numel() * max_nodes, x.size(-1))
    out = out.index_copy(0, idx, x) if x.requires_grad else out.index_put_((idx,), x)
    mask = lib.zeros(num_nodes.numel() * max_nodes, dtype=lib.bool)
    mask[idx] = True
    return out.view(-1, max_nodes, x.size(-1)), mask.view(-1, max_nodes)


def to_dense_adj(lib, edge_index, batch, max_nodes):
    num_graphs = int(batch.max()) + 1
    cum = lib.cat([batch.new_zeros(1), lib.bincount(batch).cumsum(0)])
    b = batch[edge_index[0]]
    row, col = edge_index[0] - cum[b], edge_index[1] - cum[b]
    flat = (b * max_nodes + row) * max_nodes + col
    adj = lib.zeros(num_graphs * max_nodes * max_nodes)
    adj = adj.scatter_add(0, flat, lib.ones(flat.numel()))
    return adj.view(num_graphs, max_nodes, max_nodes)


def pool_build(lib):
    nn = lib.nn

    class TopKNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = nn.Linear(4, 8)
            self.weight = nn.Parameter(lib.randn(1, 8))
            self.lin2 = nn.Linear(8, 8)
            self.assign = nn.Linear(8, 3)
            self.out = nn.Linear(8, 1)

        def forward(self, x, edge_index, batch):
            src, dst = edge_index
            x = self.lin1(x).relu()
            x = x + lib.zeros_like(x).index_add_(0, dst, x[src])
            score = (x * self.weight).sum(dim=-1)
            score = lib.tanh(score / self.weight.norm(p=2, dim=-1))
            perm = topk(lib, score, 0.5, batch)
            x = x[perm] * score[perm].view(-1, 1)
            batch = batch[perm]
            edge_index = filter_adj(lib, edge_index, perm, num_nodes=score.size(0))
            x = self.lin2(x).tanh()
            # DiffPool on the dense batch of the pooled graphs
            max_nodes = int(lib.bincount(batch).max())
            dx, mask = to_dense_batch(lib, x, batch, max_nodes)
            adj = to_dense_adj(lib, edge_index, batch, max_nodes).to(x.dtype)
            s = self.assign(dx).masked_fill(~mask.unsqueeze(-1), 0.0).softmax(dim=-1)
            s = s * mask.unsqueeze(-1).to(s.dtype)
            xp = lib.matmul(s.transpose(1, 2), dx)
            adjp = lib.matmul(lib.matmul(s.transpose(1, 2), adj), s)
            link_loss = lib.norm(adj - lib.matmul(s, s.transpose(1, 2)), p=2) / adj.numel()
            ent_loss = (-s * lib.log(s + 1e-15)).sum(dim=-1).mean()
            h = (adjp @ xp + xp).mean(dim=1)
            return self.out(h).squeeze(-1), link_loss + ent_loss

    return TopKNet()


def hier_pool(lib):
    F = lib.nn.functional
    e, x, sizes, labels = graph_batch(num_graphs=5, seed=7)
    model = init_from_torch(pool_build, lib)
    batch = lib.repeat_interleave(lib.arange(len(sizes)), lib.tensor(sizes))
    ei, x, y = lib.tensor(e), lib.tensor(x), lib.tensor(labels)
    opt = lib.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)

    def loss_fn():
        logits, aux = model(x, ei, batch)
        return F.binary_cross_entropy_with_logits(logits, y) + aux

    return train(lib, model, loss_fn, opt)


def test_topk_and_diffpool():
    both(hier_pool)


# --- 11. GIN with a learnable epsilon, BatchNorm MLPs and jumping-knowledge readout -------------

def gin_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class GINConv(nn.Module):
        def __init__(self, mlp, eps=0.0, train_eps=True):
            super().__init__()
            self.nn = mlp
            self.initial_eps = eps
            if train_eps:
                self.eps = nn.Parameter(lib.Tensor([eps]))
            else:
                self.register_buffer("eps", lib.Tensor([eps]))

        def forward(self, x, edge_index):
            src, dst = edge_index
            out = lib.zeros_like(x).index_add_(0, dst, x.index_select(0, src))
            return self.nn(out + (1 + self.eps) * x)

    def mlp(i, o):
        return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU(), nn.Linear(o, o),
                             nn.ReLU())

    class GIN(nn.Module):
        def __init__(self, layers=3):
            super().__init__()
            self.convs = nn.ModuleList()
            for i in range(layers):
                self.convs.append(GINConv(mlp(4 if i == 0 else 8, 8), train_eps=i != 1))
            self.lin1 = nn.Linear(layers * 8, 8)
            self.lin2 = nn.Linear(8, 2)

        def forward(self, x, edge_index, batch, num_graphs):
            hs = []
            for conv in self.convs:
                x = conv(x, edge_index)
                hs.append(x)
            x = lib.cat(hs, dim=1)
            size = [num_graphs, x.size(1)]
            x = lib.zeros(size, dtype=x.dtype).scatter_add_(
                0, batch.unsqueeze(1).expand(-1, x.size(1)), x)
            x = F.relu(self.lin1(x))
            x = F.dropout(x, p=0.0, training=self.training)
            return F.log_softmax(self.lin2(x), dim=-1)

    return GIN()


def gin(lib):
    F = lib.nn.functional
    e, x, sizes, labels = graph_batch(num_graphs=6, seed=11)
    model = init_from_torch(gin_build, lib)
    batch = lib.repeat_interleave(lib.arange(len(sizes)), lib.tensor(sizes))
    ei, x, y = lib.tensor(e), lib.tensor(x), lib.tensor(labels).long()
    opt = lib.optim.Adam(model.parameters(), lr=0.01)
    sched = lib.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def loss_fn():
        return F.nll_loss(model(x, ei, batch, len(sizes)), y)

    rec = train(lib, model, loss_fn, opt)
    sched.step()
    model.eval()
    with lib.no_grad():
        rec["eval"] = model(x, ei, batch, len(sizes))
    rec["eps"] = [c.eps for c in model.convs]
    rec["n_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return rec


def test_gin_learnable_eps_jumping_knowledge():
    # four Adam steps through batch norms carry the BLASes' float64 rounding (OpenBLAS's and
    # PyTorch's kernels differ by CPU) to ~1e-10 in a bias: 1e-8
    both(gin, tol=1e-8)


# --- 12. DGCNN EdgeConv (kNN graph by topk) and PointNet++ sampling and grouping ----------------

def knn(lib, x, k):
    inner = -2 * lib.matmul(x.transpose(2, 1), x)
    xx = lib.sum(x ** 2, dim=1, keepdim=True)
    pairwise_distance = -xx - inner - xx.transpose(2, 1)
    return pairwise_distance.topk(k=k, dim=-1)[1]  # (batch_size, num_points, k)


def get_graph_feature(lib, x, k=4):
    batch_size, num_dims, num_points = x.size()
    idx = knn(lib, x, k=k)
    idx_base = lib.arange(0, batch_size).view(-1, 1, 1) * num_points
    idx = (idx + idx_base).view(-1)
    x = x.transpose(2, 1).contiguous()
    feature = x.view(batch_size * num_points, -1)[idx, :]
    feature = feature.view(batch_size, num_points, k, num_dims)
    x = x.view(batch_size, num_points, 1, num_dims).repeat(1, 1, k, 1)
    return lib.cat((feature - x, x), dim=3).permute(0, 3, 1, 2).contiguous()


def farthest_point_sample(lib, xyz, npoint):
    B, N, C = xyz.shape
    centroids = lib.zeros(B, npoint, dtype=lib.long)
    distance = lib.ones(B, N, dtype=xyz.dtype) * 1e10
    farthest = lib.zeros(B, dtype=lib.long)  # the reference draws it with randint
    batch_indices = lib.arange(B, dtype=lib.long)
    for i in range(npoint):
        centroids[:, i] = farthest
        centroid = xyz[batch_indices, farthest, :].view(B, 1, 3)
        dist = lib.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = lib.max(distance, -1)[1]
    return centroids


def dgcnn_build(lib):
    nn, F = lib.nn, lib.nn.functional

    class DGCNN(nn.Module):
        def __init__(self, k=4, output_channels=2):
            super().__init__()
            self.k = k
            self.conv1 = nn.Sequential(nn.Conv2d(6, 8, kernel_size=1, bias=False),
                                       nn.BatchNorm2d(8), nn.LeakyReLU(negative_slope=0.2))
            self.conv2 = nn.Sequential(nn.Conv2d(16, 8, kernel_size=1, bias=False),
                                       nn.BatchNorm2d(8), nn.LeakyReLU(negative_slope=0.2))
            self.sa = nn.Sequential(nn.Conv2d(6, 8, kernel_size=1), nn.ReLU())
            self.linear1 = nn.Linear(8 * 2 * 2 + 8, 8, bias=False)
            self.bn6 = nn.BatchNorm1d(8)
            self.linear2 = nn.Linear(8, output_channels)

        def forward(self, x):
            batch_size = x.size(0)
            x1 = self.conv1(get_graph_feature(lib, x, k=self.k)).max(dim=-1, keepdim=False)[0]
            x2 = self.conv2(get_graph_feature(lib, x1, k=self.k)).max(dim=-1)[0]
            x = lib.cat((x1, x2), dim=1)
            x1 = F.adaptive_max_pool1d(x, 1).view(batch_size, -1)
            x2 = F.adaptive_avg_pool1d(x, 1).view(batch_size, -1)
            # a PointNet++ set-abstraction branch: sample, group within a ball, pool
            xyz = self.xyz.transpose(1, 2)
            fps_idx = farthest_point_sample(lib, xyz, 4)
            new_xyz = index_points(lib, xyz, fps_idx)
            idx = query_ball_point(lib, 1.2, 3, xyz, new_xyz)
            grouped = index_points(lib, xyz, idx) - new_xyz.view(batch_size, 4, 1, 3)
            grouped = lib.cat([grouped, index_points(lib, xyz, idx)], dim=-1)
            x3 = self.sa(grouped.permute(0, 3, 2, 1))
            x3 = x3.max(2)[0].mean(-1)
            x = lib.cat((x1, x2, x3), 1)
            x = F.leaky_relu(self.bn6(self.linear1(x)), negative_slope=0.2)
            return self.linear2(x)

    return DGCNN()


def cal_loss(lib, pred, gold, smoothing=True):
    gold = gold.contiguous().view(-1)
    if smoothing:
        eps = 0.2
        n_class = pred.size(1)
        one_hot = lib.zeros_like(pred).scatter(1, gold.view(-1, 1), 1)
        one_hot = one_hot * (1 - eps) + (1 - one_hot) * eps / (n_class - 1)
        log_prb = lib.nn.functional.log_softmax(pred, dim=1)
        return -(one_hot * log_prb).sum(dim=1).mean()
    return lib.nn.functional.cross_entropy(pred, gold, reduction="mean")


def dgcnn(lib):
    pts, labels = point_clouds(b=4, n=8, seed=12)
    model = init_from_torch(dgcnn_build, lib)
    x, y = lib.tensor(pts), lib.tensor(labels)
    model.xyz = x
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = lib.optim.lr_scheduler.CosineAnnealingLR(opt, 3, eta_min=1e-3)
    rec = {}
    for step in range(STEPS):
        rec[f"step{step}"] = train(lib, model, lambda: cal_loss(lib, model(x), y), opt, steps=1)
        sched.step()
    xyz = x.transpose(1, 2)
    fps = farthest_point_sample(lib, xyz, 5)
    rec["fps"] = fps
    rec["ball"] = query_ball_point(lib, 1.0, 4, xyz, index_points(lib, xyz, fps))
    rec["knn"] = knn(lib, x, 3)
    return rec


def test_dgcnn_edgeconv_and_pointnet2_grouping():
    both(dgcnn)


def test_max_with_positional_dim_is_pytorchs():
    """``ng.max(x, 1)`` with a positional dimension is PyTorch's (values, indices), so
    PointNet++'s ``torch.max(distance, -1)[1]`` runs as written; ``axis=`` is NumPy's (values
    only), and the values-and-indices pair in arithmetic names the fix."""
    d = ng.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    assert ng.max(d, -1)[1].tolist() == [1, 0] and ng.min(d, 1).values.tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(ng.max(d, axis=-1).numpy(), [5.0, 7.0])
    np.testing.assert_array_equal(ng.max(d, (0, 1)).numpy(), 7.0)  # a tuple: NumPy's axes
    with pytest.raises(TypeError, match=r"take its \.values"):
        d - ng.max(d, 1)
    assert ng.max(d, dim=-1)[1].tolist() == [1, 0]
    assert ng.max(d, -1, keepdim=True)[1].tolist() == [[1], [0]]
    assert d.max(-1)[1].tolist() == [1, 0]


# --- 13. an ensemble of GNNs under vmap (torch.func's model-ensembling recipe) ------------------

def gnn_ensemble(lib, build, *args):
    func = lib.func
    base, models = build(lib, *args).to(lib.float64), []
    for seed in range(3):
        torch.manual_seed(seed)
        init = {k: v.numpy().copy() for k, v in build(torch, *args).double().state_dict().items()}
        m = copy.deepcopy(base)
        m.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
        models.append(m)
    params, buffers = func.stack_module_state(models)

    def fmodel(params, buffers, x, edge_index):
        return func.functional_call(base, (params, buffers), (x, edge_index))

    x, y, ei, mask = lib.tensor(X), lib.tensor(Y), lib.tensor(EDGES), lib.tensor(MASK)
    out = func.vmap(fmodel, in_dims=(0, 0, None, None))(params, buffers, x, ei)
    loss = lib.nn.functional.cross_entropy(out[:, mask].reshape(-1, 3), y[mask].repeat(3))
    loss.backward()
    return {"out": out, "loss": loss, "grad": {k: p.grad for k, p in params.items()}}


@pytest.mark.parametrize("build,args", [(gcn_conv_build, ("index_add_",)),
                                        (gcn_conv_build, ("index_add",)),
                                        (sage_build, ("mean",)), (sage_build, ("max",))])
def test_gnn_ensemble_under_vmap(build, args):
    """Inside vmap, ``zeros_like(h)`` and ``h.new_zeros(...)`` of a batched ``h`` are batched
    (torch.func's), so the in-place aggregation ``zeros_like(h).index_add_(0, col, msg)``
    takes the batched messages."""
    both(gnn_ensemble, build, *args)


@pytest.mark.parametrize("make", [
    lambda x: ng.zeros_like(x), lambda x: ng.ones_like(x), lambda x: ng.full_like(x, 2.0),
    lambda x: ng.empty_like(x), lambda x: x.new_zeros(x.shape), lambda x: x.new_ones(4, 2),
    lambda x: x.new_full((4, 2), -1.0), lambda x: x.new_empty(4, 2)])
def test_like_of_batched_is_batched_under_vmap(make):
    x = ng.tensor(np.arange(24.0).reshape(3, 4, 2))
    idx = ng.tensor([0, 0, 3, 1])
    out = ng.vmap(lambda h: make(h).index_add_(0, idx, h))(x)
    ref = ng.vmap(lambda h: make(h).index_add(0, idx, h))(x)
    assert out.shape == (3, 4, 2)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    np.testing.assert_array_equal(out[1].numpy() - out[0].numpy(),
                                  np.zeros((4, 2)).__iadd__(8.0 * np.array(
                                      [[2, 2], [1, 1], [0, 0], [1, 1]])))
    # nested vmaps: batched at both levels
    two = ng.vmap(ng.vmap(lambda h: make(h).add_(h)))(ng.stack([x, 2 * x]))
    assert two.shape == (2, 3, 4, 2)


# --- 14. mini-batches of graphs through a DataLoader with a collate function ------------------

def collate_graphs(lib, samples):
    """Graphs into one disjoint union: node offsets on the edges, a batch vector, the labels."""
    xs, edges, ys, batch, offset = [], [], [], [], 0
    for i, (x, edge_index, y) in enumerate(samples):
        xs.append(x)
        edges.append(edge_index + offset)
        ys.append(y)
        batch.append(lib.full((x.size(0),), i, dtype=lib.long))
        offset += x.size(0)
    return lib.cat(xs, 0), lib.cat(edges, 1), lib.stack(ys), lib.cat(batch)


def loader_training(lib):
    data = lib.utils.data
    F = lib.nn.functional

    class GraphDataset(data.Dataset):
        def __init__(self, n=7):
            self.graphs = []
            for g in range(n):
                e, x, _, _ = sbm(n_per=3 + g % 3, blocks=1 + g % 2, p_in=0.7, feats=4, seed=20 + g)
                self.graphs.append((lib.tensor(x), lib.tensor(e),
                                    lib.tensor(float(g % 2), dtype=lib.float64)))

        def __len__(self):
            return len(self.graphs)

        def __getitem__(self, idx):
            return self.graphs[idx]

    loader = data.DataLoader(GraphDataset(), batch_size=3, shuffle=False,
                             collate_fn=lambda s: collate_graphs(lib, s), drop_last=False)
    model = init_from_torch(graph_cls_build, lib)
    opt = lib.optim.Adam(model.parameters(), lr=0.01)
    rec = []
    for _epoch in range(2):
        for x, ei, y, batch in loader:
            num_graphs = int(batch.max()) + 1
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(x, ei, batch, num_graphs), y)
            loss.backward()
            opt.step()
            rec.append({"loss": loss.item(), "n": num_graphs, "grad": grads(model)})
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_graph_minibatches_through_a_dataloader():
    both(loader_training)


# --- 15. a gradient penalty through the aggregations (double backward) -------------------------

def gradient_penalty(lib, build, *args):
    model = init_from_torch(build, lib, *args)
    x = lib.tensor(X, requires_grad=True)
    out = model(x, lib.tensor(EDGES))
    g, = lib.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    pen = ((g.norm(2, dim=1) - 1) ** 2).mean()
    pen.backward()
    return {"pen": pen, "g": g, "grad": grads(model)}


@pytest.mark.parametrize("build,args", [(gcn_conv_build, ("scatter_add_",)),
                                        (gat_build, (2, softmax_amax_index_add)),
                                        (sage_build, ("max",)), (sage_build, ("mean",))])
def test_gradient_penalty_through_aggregation(build, args):
    both(gradient_penalty, build, *args)


# --- 16. GCN with learnable edge weights: PyG's gcn_norm changes pow's output in place --------

def weighted_gcn_build(lib, num_edges):
    nn = lib.nn

    def gcn_norm(edge_index, edge_weight, num_nodes):
        row, col = edge_index[0], edge_index[1]
        deg = lib.zeros(num_nodes, dtype=edge_weight.dtype).scatter_add_(0, col, edge_weight)
        deg_inv_sqrt = deg.pow_(-0.5)
        deg_inv_sqrt.masked_fill_(deg_inv_sqrt == float("inf"), 0)
        return deg_inv_sqrt[row] * edge_weight * deg_inv_sqrt[col]

    class WeightedGCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.edge_logit = nn.Parameter(lib.zeros(num_edges))
            self.lin1 = nn.Linear(X.shape[1], 8)
            self.lin2 = nn.Linear(8, 3)

        def propagate(self, x, edge_index, w):
            return lib.zeros_like(x).index_add_(0, edge_index[1], w.view(-1, 1) * x[edge_index[0]])

        def forward(self, x, edge_index):
            w = gcn_norm(edge_index, self.edge_logit.sigmoid(), x.size(0))
            h = self.propagate(self.lin1(x), edge_index, w).relu()
            return self.propagate(self.lin2(h), edge_index, w)

    return WeightedGCN()


def weighted_gcn(lib):
    F = lib.nn.functional
    keep = EDGES[0] < EDGES[1]  # one direction: some nodes receive nothing (degree 0)
    ei = EDGES[:, keep]
    model = init_from_torch(weighted_gcn_build, lib, ei.shape[1])
    x, y, ei, mask = lib.tensor(X), lib.tensor(Y), lib.tensor(ei), lib.tensor(MASK)
    opt = lib.optim.Adam(model.parameters(), lr=0.05)
    return train(lib, model, lambda: F.cross_entropy(model(x, ei)[mask], y[mask]), opt)


def test_learnable_edge_weights_gcn_norm_in_place():
    """``deg.pow_(-0.5).masked_fill_(inf, 0)`` with ``deg`` needing grad: pow keeps its
    input, not its output, so the later in-place fill does not break backward (PyTorch's)."""
    got = both(weighted_gcn)
    assert np.abs(got["grad"][0]["edge_logit"]).sum() > 0

    def pow_then_fill(lib):
        x = lib.tensor([1.0, 4.0], dtype=lib.float64, requires_grad=True)
        y = x.pow(-0.5)
        y.masked_fill_(y > 0.9, 0.0)
        (y * 3).sum().backward()
        return x.grad

    np.testing.assert_allclose(pow_then_fill(ng).numpy(), [0.0, -1.5 / 8])
    assert_same(pow_then_fill(ng), pow_then_fill(torch))


@pytest.mark.parametrize("op", [lambda x: x.pow(-0.5), lambda x: x ** 3, lambda x: x.sinc(),
                                lambda x: (x / 5).erfinv()])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_output_changed_in_place_after_ops_that_keep_their_input(op, dtype):
    """PyTorch's pow (scalar exponent), sinc and erfinv keep their input for backward, so
    their output may change in place afterwards; the gradient is the one of the changed
    program."""
    def run(lib):
        x = lib.tensor(np.array([0.3, 1.5, 4.0]), dtype=getattr(lib, dtype), requires_grad=True)
        y = op(x)
        y.mul_(2.0).masked_fill_(y > 5.0, 0.0)
        (y * y).sum().backward()
        return [y, x.grad]

    assert_same(run(ng), run(torch), 1e-10 if dtype == "float64" else 1e-5)
