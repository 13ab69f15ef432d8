"""Metric learning, distillation, Siamese and retrieval programs from PyTorch, ported by changing
only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as its source
writes it: hand-written pytorch-metric-learning style losses (contrastive, batch-all and
batch-hard triplets, N-pair, multi-similarity, ProxyNCA, Proxy-Anchor), margin heads (ArcFace,
CosFace, SphereFace, insightface's in-place versions), centre losses with their own optimiser,
Hinton's knowledge distillation, FitNets hints, attention transfer, born-again networks, Siamese
towers with PyTorch's pair losses, and recall@k / mAP evaluation. Both runs start from the same
weights and data, so losses, gradients and parameters agree in float64 step by step.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest

import nodegrad as ng
from _ports import arr, arrays, assert_same, float64_one_thread, seeded  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(7)
N, D_IN, D_EMB, C = 8, 6, 4, 4
X = RNG.standard_normal((N, D_IN))
BATCHES = [X + 0.2 * RNG.standard_normal(X.shape) for _ in range(3)]
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])
LABELS_ODD = np.array([0, 1, 1, 2, 2, 2, 3, 0])  # uneven classes, every class twice or more

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def both(fn, *args, tol: float = TOL, **kw):
    ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


def embedder(lib, d_in: int = D_IN, hidden: int = 16, d_out: int = D_EMB, seed: int = 0):
    nn = lib.nn
    return seeded(lib, nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d_out)), seed)


def inputs(lib, x: np.ndarray):
    """Data in the default float dtype (float64 here; ``torch.from_numpy(x).float()`` in the
    float32 runs)."""
    return lib.tensor(x).to(lib.get_default_dtype())


def drawn(lib, x: np.ndarray):
    """Initial values drawn with NumPy, as ``torch.randn``'s would come: the default dtype."""
    return lib.tensor(x, dtype=lib.get_default_dtype())


def grads(model) -> dict:
    return {k: arr(p.grad) for k, p in model.named_parameters() if p.grad is not None}


# 1. triplet losses with online mining (the omoindrot / pytorch-metric-learning formulations)

def pairwise_distances(lib, embeddings, squared: bool = False):
    """``_pairwise_distances``: a Gram matrix, clamped, with the zero-distance sqrt guard."""
    dot_product = lib.matmul(embeddings, embeddings.t())
    square_norm = lib.diag(dot_product)
    distances = square_norm.unsqueeze(0) - 2.0 * dot_product + square_norm.unsqueeze(1)
    distances[distances < 0] = 0
    if not squared:
        mask = distances.eq(0).to(distances.dtype)  # ``.float()`` in float32 code
        distances = distances + mask * 1e-16
        distances = (1.0 - mask) * lib.sqrt(distances)
    return distances


def get_triplet_mask(lib, labels):
    indices_equal = lib.eye(labels.size(0), dtype=lib.bool, device=labels.device)
    indices_not_equal = ~indices_equal
    i_not_equal_j = indices_not_equal.unsqueeze(2)
    i_not_equal_k = indices_not_equal.unsqueeze(1)
    j_not_equal_k = indices_not_equal.unsqueeze(0)
    distinct_indices = (i_not_equal_j & i_not_equal_k) & j_not_equal_k
    label_equal = labels.unsqueeze(0) == labels.unsqueeze(1)
    i_equal_j = label_equal.unsqueeze(2)
    i_equal_k = label_equal.unsqueeze(1)
    valid_labels = ~i_equal_k & i_equal_j
    return valid_labels & distinct_indices


def batch_all_triplet_loss(lib, labels, embeddings, margin: float, squared: bool = False):
    pairwise_dist = pairwise_distances(lib, embeddings, squared=squared)
    anchor_positive_dist = pairwise_dist.unsqueeze(2)
    anchor_negative_dist = pairwise_dist.unsqueeze(1)
    triplet_loss = anchor_positive_dist - anchor_negative_dist + margin
    mask = get_triplet_mask(lib, labels).to(pairwise_dist.dtype)
    triplet_loss = mask * triplet_loss
    triplet_loss = lib.nn.functional.relu(triplet_loss)
    valid_triplets = triplet_loss[triplet_loss > 1e-16]
    num_positive_triplets = valid_triplets.size(0)
    num_valid_triplets = mask.sum()
    fraction_positive_triplets = num_positive_triplets / (num_valid_triplets.item() + 1e-16)
    triplet_loss = triplet_loss.sum() / (num_positive_triplets + 1e-16)
    return triplet_loss, fraction_positive_triplets


def batch_hard_triplet_loss(lib, labels, embeddings, margin: float, squared: bool = False):
    pairwise_dist = pairwise_distances(lib, embeddings, squared=squared)
    labels_equal = labels.unsqueeze(0) == labels.unsqueeze(1)
    indices_not_equal = ~lib.eye(labels.size(0), dtype=lib.bool)
    mask_anchor_positive = (indices_not_equal & labels_equal).to(pairwise_dist.dtype)
    anchor_positive_dist = mask_anchor_positive * pairwise_dist
    hardest_positive_dist, _ = anchor_positive_dist.max(1, keepdim=True)
    mask_anchor_negative = (~labels_equal).to(pairwise_dist.dtype)
    max_anchor_negative_dist, _ = pairwise_dist.max(1, keepdim=True)
    anchor_negative_dist = pairwise_dist + max_anchor_negative_dist * (1.0 - mask_anchor_negative)
    hardest_negative_dist, _ = anchor_negative_dist.min(1, keepdim=True)
    tl = hardest_positive_dist - hardest_negative_dist + margin
    tl[tl < 0] = 0
    return tl.mean()


def batch_hard_cdist(lib, embeddings, labels, margin: float = 0.2, soft: bool = False):
    """The re-id variant: ``torch.cdist`` distances, masks by ``labels[:, None] == labels[None]``,
    hardest pairs by ``torch.where`` and a soft margin via ``nn.SoftMarginLoss``."""
    nn = lib.nn
    dist = lib.cdist(embeddings, embeddings)
    is_pos = labels[:, None] == labels[None]
    is_neg = ~is_pos
    dist_ap = lib.where(is_pos, dist, lib.zeros_like(dist)).max(dim=1).values
    dist_an = lib.where(is_neg, dist, lib.full_like(dist, float("inf"))).amin(dim=1)
    y = dist_an.new().resize_as_(dist_an).fill_(1)
    if soft:
        return nn.SoftMarginLoss()(dist_an - dist_ap, y)
    return nn.MarginRankingLoss(margin=margin)(dist_an, dist_ap, y)


def triplet_mining(lib, labels=LABELS, squared: bool = False):
    model = embedder(lib, seed=1)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    labels = lib.tensor(labels)
    rec = []
    for x in BATCHES:
        emb = model(inputs(lib, x))
        l_all, frac = batch_all_triplet_loss(lib, labels, emb, 0.5, squared)
        l_hard = batch_hard_triplet_loss(lib, labels, emb, 0.5, squared)
        l_cd = batch_hard_cdist(lib, emb, labels)
        l_soft = batch_hard_cdist(lib, emb, labels, soft=True)
        loss = l_all + l_hard + l_cd + l_soft
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [t.item() for t in (l_all, l_hard, l_cd, l_soft)], "frac": frac,
                    "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("labels", [LABELS, LABELS_ODD], ids=["pairs", "uneven"])
def test_triplet_batch_all_batch_hard(labels, squared):
    both(triplet_mining, labels, squared)


# 2. PyTorch's triplet modules: TripletMarginLoss and TripletMarginWithDistanceLoss with custom
# distances (a lambda, nn.PairwiseDistance, nn.CosineSimilarity), swap, reductions

def triplet_modules(lib):
    nn, F = lib.nn, lib.nn.functional
    model = embedder(lib, seed=2)
    opt = lib.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    cos_dist = nn.TripletMarginWithDistanceLoss(
        distance_function=lambda x, y: 1.0 - F.cosine_similarity(x, y), margin=0.3)
    l1_dist = nn.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(p=1),
                                               margin=1.0, swap=True, reduction="sum")
    default = nn.TripletMarginWithDistanceLoss()  # Euclidean pairwise_distance, margin 1
    cos_sim = nn.CosineSimilarity(dim=1, eps=1e-8)
    angular = nn.TripletMarginWithDistanceLoss(
        distance_function=lambda a, b: lib.acos(cos_sim(a, b).clamp(-1 + 1e-7, 1 - 1e-7)),
        margin=0.1, reduction="none")
    plain = nn.TripletMarginLoss(margin=0.5, p=3, eps=1e-6, reduction="none")
    rec = []
    for x in BATCHES:
        emb = model(inputs(lib, x))
        a, p, n = emb[0::2], emb[1::2], emb[1::2].roll(1, 0)
        parts = [cos_dist(a, p, n), l1_dist(a, p, n), default(a, p, n),
                 angular(a, p, n), plain(a, p, n),
                 F.triplet_margin_with_distance_loss(a, p, n, distance_function=None,
                                                     margin=0.2),
                 F.triplet_margin_loss(a, p, n, swap=True)]
        loss = sum(t.sum() for t in parts)
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [arr(t) for t in parts], "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_triplet_margin_modules():
    both(triplet_modules)


# 3. N-pair loss (Sohn) with soft targets, and the multi-similarity loss (Wang et al.) as its
# reference code writes it: a Python loop of masked selections, builtin min/max of tensors

def npair_loss(lib, anchor, positive, target, l2_reg: float = 0.02):
    F = lib.nn.functional
    batch_size = anchor.size(0)
    target = target.view(target.size(0), 1)
    target = (target == lib.transpose(target, 0, 1)).to(anchor.dtype)
    target = target / lib.sum(target, dim=1, keepdim=True)
    logit = lib.matmul(anchor, lib.transpose(positive, 0, 1))
    loss_ce = lib.mean(lib.sum(-target * F.log_softmax(logit, -1), -1))
    loss_soft = F.cross_entropy(logit, target)  # probability targets
    l2_loss = lib.sum(anchor ** 2) / batch_size + lib.sum(positive ** 2) / batch_size
    return loss_ce + l2_reg * l2_loss * 0.25, loss_soft


class MultiSimilarityLoss:
    def __init__(self, lib, thresh=0.5, margin=0.1, scale_pos=2.0, scale_neg=40.0):
        self.lib, self.thresh, self.margin = lib, thresh, margin
        self.scale_pos, self.scale_neg = scale_pos, scale_neg

    def __call__(self, feats, labels):
        lib = self.lib
        assert feats.size(0) == labels.size(0), \
            f"feats.size(0): {feats.size(0)} is not equal to labels.size(0): {labels.size(0)}"
        batch_size = feats.size(0)
        sim_mat = lib.matmul(feats, lib.t(feats))
        epsilon = 1e-5
        loss = list()
        for i in range(batch_size):
            pos_pair_ = lib.masked_select(sim_mat[i], labels == labels[i])
            pos_pair_ = lib.masked_select(pos_pair_, pos_pair_ < 1 - epsilon)
            neg_pair_ = lib.masked_select(sim_mat[i], labels != labels[i])
            if len(pos_pair_) < 1 or len(neg_pair_) < 1:
                continue
            neg_pair = lib.masked_select(neg_pair_, neg_pair_ + self.margin > min(pos_pair_))
            pos_pair = lib.masked_select(pos_pair_, pos_pair_ - self.margin < max(neg_pair_))
            if len(neg_pair) < 1 or len(pos_pair) < 1:
                continue
            pos_loss = 1.0 / self.scale_pos * lib.log(
                1 + lib.sum(lib.exp(-self.scale_pos * (pos_pair - self.thresh))))
            neg_loss = 1.0 / self.scale_neg * lib.log(
                1 + lib.sum(lib.exp(self.scale_neg * (neg_pair - self.thresh))))
            loss.append(pos_loss + neg_loss)
        if len(loss) == 0:
            return lib.zeros([], requires_grad=True)
        return sum(loss) / batch_size


def ms_loss_pml(lib, embeddings, labels, alpha=2.0, beta=40.0, base=0.5):
    """pytorch-metric-learning's MultiSimilarityLoss: masked logsumexp with an added zero
    logit (``add_one``), written with ``masked_fill`` and ``torch.logsumexp``."""
    F = lib.nn.functional
    mat = F.normalize(embeddings, p=2, dim=1) @ F.normalize(embeddings, p=2, dim=1).T
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    pos_mask = same & ~lib.eye(len(labels), dtype=lib.bool)
    neg_mask = ~same

    def lse(x, keep_mask):
        x = x.masked_fill(~keep_mask, -lib.finfo(x.dtype).max)
        zeros = lib.zeros(x.size(0), 1, dtype=x.dtype)
        x = lib.cat([x, zeros], dim=1)
        out = lib.logsumexp(x, dim=1, keepdim=True)
        return out.masked_fill(~lib.any(keep_mask, dim=1, keepdim=True), 0)

    pos_loss = (1.0 / alpha) * lse(-alpha * (mat - base), pos_mask)
    neg_loss = (1.0 / beta) * lse(beta * (mat - base), neg_mask)
    return (pos_loss + neg_loss).squeeze(1).mean()


def npair_ms(lib):
    F = lib.nn.functional
    model = embedder(lib, seed=3)
    opt = lib.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.05)
    ms = MultiSimilarityLoss(lib)
    labels = lib.tensor(LABELS_ODD)
    rec = []
    for x in BATCHES:
        emb = model(inputs(lib, x))
        l_np, l_soft = npair_loss(lib, emb[0::2], emb[1::2], lib.arange(N // 2))
        feats = F.normalize(emb)
        l_ms = ms(feats, labels)
        l_pml = ms_loss_pml(lib, emb, labels)
        loss = l_np + l_soft + l_ms + l_pml
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [t.item() for t in (l_np, l_soft, l_ms, l_pml)],
                    "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_npair_multi_similarity():
    both(npair_ms)


# 4. proxy losses with learnable proxies: ProxyNCA (cdist to scaled proxies, smoothed one-hot)
# and Proxy-Anchor (Kim et al.: l2_norm, binarize, nonzero of the valid proxies)

def proxy_losses(lib, nb_classes: int = C, sz_embed: int = D_EMB):
    nn, F = lib.nn, lib.nn.functional
    proxies0 = np.random.default_rng(4).standard_normal((nb_classes, sz_embed))

    def binarize_and_smooth_labels(T, nb_classes, smoothing_const=0.1):
        T = F.one_hot(T, nb_classes).to(lib.get_default_dtype())
        T = T * (1 - smoothing_const)
        T[T == 0] = smoothing_const / (nb_classes - 1)
        return T

    class ProxyNCA(nn.Module):
        def __init__(self, smoothing_const=0.1, scaling_x=1, scaling_p=3):
            super().__init__()
            self.proxies = nn.Parameter(drawn(lib, proxies0) / 8)
            self.smoothing_const = smoothing_const
            self.scaling_x, self.scaling_p = scaling_x, scaling_p

        def forward(self, X, T):
            P = F.normalize(self.proxies, p=2, dim=-1) * self.scaling_p
            X = F.normalize(X, p=2, dim=-1) * self.scaling_x
            D = lib.cdist(X, P) ** 2
            T = binarize_and_smooth_labels(T, len(P), self.smoothing_const)
            loss = lib.sum(-T * F.log_softmax(-D, -1), -1)
            return loss.mean()

    def l2_norm(input):
        input_size = input.size()
        buffer = lib.pow(input, 2)
        normp = lib.sum(buffer, 1).add_(1e-12)
        norm = lib.sqrt(normp)
        _output = lib.div(input, norm.view(-1, 1).expand_as(input))
        return _output.view(input_size)

    class ProxyAnchor(nn.Module):
        def __init__(self, mrg=0.1, alpha=32):
            super().__init__()
            self.proxies = nn.Parameter(drawn(lib, proxies0[::-1].copy()))
            self.mrg, self.alpha = mrg, alpha

        def forward(self, X, T):
            P = self.proxies
            cos = F.linear(l2_norm(X), l2_norm(P))
            P_one_hot = F.one_hot(T, nb_classes).to(cos.dtype)
            N_one_hot = 1 - P_one_hot
            pos_exp = lib.exp(-self.alpha * (cos - self.mrg))
            neg_exp = lib.exp(self.alpha * (cos + self.mrg))
            with_pos_proxies = lib.nonzero(P_one_hot.sum(dim=0) != 0).squeeze(dim=1)
            num_valid_proxies = len(with_pos_proxies)
            P_sim_sum = lib.where(P_one_hot == 1, pos_exp, lib.zeros_like(pos_exp)).sum(dim=0)
            N_sim_sum = lib.where(N_one_hot == 1, neg_exp, lib.zeros_like(neg_exp)).sum(dim=0)
            pos_term = lib.log(1 + P_sim_sum).sum() / num_valid_proxies
            neg_term = lib.log(1 + N_sim_sum).sum() / nb_classes
            return pos_term + neg_term

    return ProxyNCA(), ProxyAnchor()


def proxies(lib, labels=LABELS_ODD):
    model = embedder(lib, seed=4)
    nca, anchor = proxy_losses(lib)
    # the proxies learn 100 times faster, as in the Proxy-Anchor training script
    opt = lib.optim.AdamW([{"params": model.parameters(), "lr": 1e-3},
                           {"params": nca.parameters(), "lr": 1e-1},
                           {"params": anchor.parameters(), "lr": 1e-1}], weight_decay=1e-4)
    sched = lib.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    labels = lib.tensor(labels)
    rec = []
    for x in BATCHES:
        emb = model(inputs(lib, x))
        l_nca, l_pa = nca(emb, labels), anchor(emb, labels)
        loss = l_nca + l_pa
        opt.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_value_(model.parameters(), 10)
        rec.append({"parts": [l_nca.item(), l_pa.item()], "g": grads(model),
                    "gp": [arr(nca.proxies.grad), arr(anchor.proxies.grad)]})
        opt.step()
        sched.step()
    return {"steps": rec, "w": arrays(model.state_dict()), "p": [arr(nca.proxies),
                                                                 arr(anchor.proxies)]}


@pytest.mark.parametrize("labels", [LABELS_ODD, np.array([0, 0, 1, 1, 1, 0, 1, 0])],
                         ids=["all-classes", "missing-classes"])
def test_proxy_nca_proxy_anchor(labels):
    both(proxies, labels)


# 5. margin heads: ArcFace with acos/cos and F.one_hot, CosFace and SphereFace as the
# face-recognition repositories write them, and insightface's in-place heads (index_put on the
# logits, arccos_/cos_ under no_grad so that the margin passes its gradient straight through)

def margin_heads(lib, in_features: int = D_EMB, out_features: int = C):
    nn, F = lib.nn, lib.nn.functional
    w0 = np.random.default_rng(5).standard_normal((out_features, in_features))

    class ArcFace(nn.Module):
        def __init__(self, s=16.0, m=0.3, eps=1e-7):
            super().__init__()
            self.s, self.m, self.eps = s, m, eps
            self.W = nn.Parameter(drawn(lib, w0))

        def forward(self, x, labels):
            W = F.normalize(self.W, dim=1)
            x = F.normalize(x, dim=1)
            wf = x @ W.t()
            theta = lib.acos(lib.clamp(wf, -1.0 + self.eps, 1 - self.eps))
            one_hot = F.one_hot(labels, num_classes=wf.size(1)).to(wf.dtype)
            logits = lib.cos(theta + self.m * one_hot)
            return logits * self.s

    class AddMarginProduct(nn.Module):  # CosFace
        def __init__(self, s=8.0, m=0.35):
            super().__init__()
            self.s, self.m = s, m
            self.weight = nn.Parameter(drawn(lib, w0[::-1].copy()))

        def forward(self, input, label):
            cosine = F.linear(F.normalize(input), F.normalize(self.weight))
            phi = cosine - self.m
            one_hot = lib.zeros(cosine.size(), device=cosine.device)
            one_hot.scatter_(1, label.view(-1, 1).long(), 1)
            output = (one_hot * phi) + ((1.0 - one_hot) * cosine)
            output *= self.s
            return output

    class SphereProduct(nn.Module):  # SphereFace, A-Softmax with an annealed lambda
        def __init__(self, m=4):
            super().__init__()
            self.m = m
            self.base, self.gamma, self.power, self.LambdaMin = 1000.0, 0.12, 1, 5.0
            self.iter = 0
            self.weight = nn.Parameter(drawn(lib, w0 * 0.5))
            self.mlambda = [lambda x: x ** 0, lambda x: x ** 1, lambda x: 2 * x ** 2 - 1,
                            lambda x: 4 * x ** 3 - 3 * x, lambda x: 8 * x ** 4 - 8 * x ** 2 + 1,
                            lambda x: 16 * x ** 5 - 20 * x ** 3 + 5 * x]

        def forward(self, input, label):
            self.iter += 1
            self.lamb = max(self.LambdaMin,
                            self.base * (1 + self.gamma * self.iter) ** (-1 * self.power))
            cos_theta = F.linear(F.normalize(input), F.normalize(self.weight))
            cos_theta = cos_theta.clamp(-1, 1)
            cos_m_theta = self.mlambda[self.m](cos_theta)
            theta = cos_theta.data.acos()
            k = (self.m * theta / 3.14159265).floor()
            phi_theta = ((-1.0) ** k) * cos_m_theta - 2 * k
            NormOfFeature = lib.norm(input, 2, 1)
            one_hot = lib.zeros(cos_theta.size())
            one_hot.scatter_(1, label.view(-1, 1), 1)
            output = (one_hot * (phi_theta - cos_theta) / (1 + self.lamb)) + cos_theta
            output *= NormOfFeature.view(-1, 1)
            return output

    class PartialFC(nn.Module):
        """insightface's head: normalised linear logits, then a margin loss applied in place."""

        def __init__(self, margin_loss):
            super().__init__()
            self.weight = nn.Parameter(drawn(lib, w0 * 0.1))
            self.margin_softmax = margin_loss

        def forward(self, embeddings, labels):
            norm_embeddings = F.normalize(embeddings)
            norm_weight = F.normalize(self.weight)
            logits = F.linear(norm_embeddings, norm_weight)
            logits = logits.clamp(-1, 1)
            logits = self.margin_softmax(logits, labels)
            return F.cross_entropy(logits, labels)

    class InsightArcFace(nn.Module):
        def __init__(self, s=16.0, margin=0.5):
            super().__init__()
            self.scale, self.margin = s, margin
            self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
            self.theta = math.cos(math.pi - margin)
            self.sinmm = math.sin(math.pi - margin) * margin
            self.easy_margin = False

        def forward(self, logits, labels):
            index = lib.where(labels != -1)[0]
            target_logit = logits[index, labels[index].view(-1)]
            with lib.no_grad():
                target_logit.arccos_()
                logits.arccos_()
                final_target_logit = target_logit + self.margin
                logits[index, labels[index].view(-1)] = final_target_logit
                logits.cos_()
            logits = logits * self.scale
            return logits

    class InsightCosFace(nn.Module):
        def __init__(self, s=16.0, m=0.4):
            super().__init__()
            self.s, self.m = s, m

        def forward(self, logits, labels):
            index = lib.where(labels != -1)[0]
            target_logit = logits[index, labels[index].view(-1)]
            final_target_logit = target_logit - self.m
            logits[index, labels[index].view(-1)] = final_target_logit
            logits = logits * self.s
            return logits

    class CombinedMarginLoss(nn.Module):
        """insightface's combined margin (m1, m2, m3) with the easy-margin-free ArcFace path."""

        def __init__(self, s=16.0, m1=1.0, m2=0.5, m3=0.0, interclass_filtering_threshold=0):
            super().__init__()
            self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
            self.interclass_filtering_threshold = interclass_filtering_threshold
            self.cos_m, self.sin_m = math.cos(m2), math.sin(m2)
            self.theta = math.cos(math.pi - m2)
            self.sinmm = math.sin(math.pi - m2) * m2
            self.easy_margin = False

        def forward(self, logits, labels):
            index_positive = lib.where(labels != -1)[0]
            if self.interclass_filtering_threshold > 0:
                with lib.no_grad():
                    dirty = logits > self.interclass_filtering_threshold
                    dirty = dirty.float()
                    mask = lib.ones([index_positive.size(0), logits.size(1)],
                                    device=logits.device)
                    mask.scatter_(1, labels[index_positive], 0)
                    dirty[index_positive] *= mask
                    tensor_mul = 1 - dirty
                logits = tensor_mul * logits
            target_logit = logits[index_positive, labels[index_positive].view(-1)]
            if self.m1 == 1.0 and self.m3 == 0.0:
                sin_theta = lib.sqrt(1.0 - lib.pow(target_logit, 2))
                cos_theta_m = target_logit * self.cos_m - sin_theta * self.sin_m
                if self.easy_margin:
                    final_target_logit = lib.where(target_logit > 0, cos_theta_m, target_logit)
                else:
                    final_target_logit = lib.where(target_logit > self.theta, cos_theta_m,
                                                   target_logit - self.sinmm)
                logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
                logits = logits * self.s
            elif self.m3 > 0:
                final_target_logit = target_logit - self.m3
                logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
                logits = logits * self.s
            else:
                raise ValueError("unsupported margins")
            return logits

    return (ArcFace(), AddMarginProduct(), SphereProduct(), PartialFC(InsightArcFace()),
            PartialFC(InsightCosFace()), PartialFC(CombinedMarginLoss()),
            PartialFC(CombinedMarginLoss(m2=0.0, m3=0.35)))


def margins(lib, labels=LABELS):
    nn = lib.nn
    model = embedder(lib, seed=5)
    heads = margin_heads(lib)
    params = list(model.parameters()) + [p for h in heads for p in h.parameters()]
    opt = lib.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    labels = lib.tensor(labels)
    rec = []
    for x in BATCHES:
        emb = model(inputs(lib, x))
        logits = [h(emb, labels) for h in heads[:3]]
        parts = [criterion(lg, labels) for lg in logits] + [h(emb, labels) for h in heads[3:]]
        loss = sum(parts)
        opt.zero_grad()
        loss.backward()
        rec.append({"logits": [arr(t) for t in logits], "parts": [t.item() for t in parts],
                    "g": grads(model), "gh": [grads(h) for h in heads]})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict()),
            "h": [arrays(h.state_dict()) for h in heads]}


def test_margin_heads():
    both(margins)


def partial_fc_ignored(lib):
    """insightface's heads on a batch where some labels are -1 (classes held by other ranks):
    ``torch.where(labels != -1)[0]`` picks the rows that get a margin, the loss ignores the
    rest."""
    F = lib.nn.functional
    model = embedder(lib, seed=6)
    heads = margin_heads(lib)[3:]
    labels = lib.tensor([0, -1, 1, 1, -1, 2, 3, 3])
    rec = []
    for x in BATCHES[:2]:
        for h in heads:
            emb = model(inputs(lib, x))
            logits = h.margin_softmax(F.linear(F.normalize(emb), F.normalize(h.weight))
                                      .clamp(-1, 1), labels)
            loss = F.cross_entropy(logits, labels, ignore_index=-1)
            model.zero_grad()
            h.zero_grad()
            loss.backward()
            rec.append({"logits": arr(logits), "loss": loss.item(), "g": grads(model),
                        "gh": grads(h)})
    return rec


def test_margin_heads_ignored_labels():
    both(partial_fc_ignored)


# 6. knowledge distillation: Hinton's KD (teacher in eval() under no_grad, batchmean KL times
# T*T), FitNets hints through a 1x1 conv adapter, attention transfer, born-again networks

IMAGES = [RNG.standard_normal((4, 3, 6, 6)) for _ in range(3)]
IMG_LABELS = np.array([0, 1, 2, 1])


def convnet(lib, width: int, n_classes: int = 3, dropout: float = 0.3):
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(2 * width)
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(2 * width, n_classes)

        def forward(self, x):
            g1 = F.relu(self.bn1(self.conv1(x)))
            g2 = F.relu(self.bn2(self.conv2(F.max_pool2d(g1, 2))))
            out = F.adaptive_avg_pool2d(g2, (1, 1)).view(x.size(0), -1)
            return self.fc(self.drop(out)), (g1, g2)

    return Net()


def distillation_loss(lib, y, labels, teacher_scores, T: float, alpha: float):
    F = lib.nn.functional
    return F.kl_div(F.log_softmax(y / T, dim=1), F.softmax(teacher_scores / T, dim=1),
                    reduction="batchmean") * (T * T * 2.0 * alpha) + \
        F.cross_entropy(y, labels) * (1.0 - alpha)


def kd(lib, T: float = 4.0, alpha: float = 0.9, beta: float = 1e2):
    nn, F = lib.nn, lib.nn.functional

    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    def at_loss(x, y):
        return (at(x) - at(y)).pow(2).mean()

    teacher = seeded(lib, convnet(lib, 4), 7)
    # a "pre-trained" teacher: one pass in train mode moves its BatchNorm statistics
    teacher(inputs(lib, IMAGES[0]))
    teacher.eval()
    student = seeded(lib, convnet(lib, 4, dropout=0.0), 8)
    adapter = seeded(lib, nn.Conv2d(4, 8, kernel_size=1, bias=False), 9)  # FitNets regressor
    kl = nn.KLDivLoss(reduction="batchmean", log_target=True)
    opt = lib.optim.SGD(list(student.parameters()) + list(adapter.parameters()), lr=0.1,
                        momentum=0.9, weight_decay=5e-4)
    labels = lib.tensor(IMG_LABELS)
    rec = []
    for x in IMAGES:
        x = inputs(lib, x)
        with lib.no_grad():
            t_out, (t1, t2) = teacher(x)
        s_out, (s1, s2) = student(x)
        l_kd = distillation_loss(lib, s_out, labels, t_out, T, alpha)
        l_kl = kl(F.log_softmax(s_out / T, -1), F.log_softmax(t_out / T, -1)) * T ** 2
        l_hint = F.mse_loss(adapter(s1), lib.cat([t1, t1], 1))
        l_at = beta / 2 * sum(at_loss(a, b) for a, b in ((s1, t1), (s2, t2)))
        loss = l_kd + l_kl + l_hint + l_at
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [t.item() for t in (l_kd, l_kl, l_hint, l_at)],
                    "g": grads(student), "ga": grads(adapter),
                    "teacher_grad": [p.grad is None for p in teacher.parameters()]})
        opt.step()
    return {"steps": rec, "w": arrays(student.state_dict()), "t": arrays(teacher.state_dict())}


def test_knowledge_distillation_fitnets_attention():
    both(kd)


def born_again(lib, generations: int = 2, T: float = 2.0):
    """Born-again networks: each generation's teacher is a frozen ``copy.deepcopy`` of the
    previous student (``requires_grad_(False)``, ``eval()``), the student is re-initialised."""
    F = lib.nn.functional
    student = seeded(lib, convnet(lib, 3, dropout=0.0), 10)
    labels = lib.tensor(IMG_LABELS)
    rec = []
    teacher = None
    for gen in range(generations):
        opt = lib.optim.Adam(student.parameters(), lr=1e-2)
        for x in IMAGES:
            x = inputs(lib, x)
            out, _ = student(x)
            loss = F.cross_entropy(out, labels)
            if teacher is not None:
                with lib.no_grad():
                    soft, _ = teacher(x)
                loss = loss + F.kl_div(F.log_softmax(out / T, 1), F.softmax(soft / T, 1),
                                       reduction="batchmean") * T * T
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.append({"gen": gen, "loss": loss.item(), "g": grads(student)})
        teacher = copy.deepcopy(student)
        teacher.requires_grad_(False)
        teacher.eval()
        rec.append({"frozen": [p.requires_grad for p in teacher.parameters()],
                    "teacher": arrays(teacher.state_dict())})
        for m in student.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        seeded(lib, student, 11 + gen)
    return rec


def test_born_again_deepcopy_frozen_teacher():
    both(born_again)


# 7. Siamese networks: one shared tower, PyTorch's pair losses

class SiameseNetwork:
    """The tutorials' ``forward_once`` tower, called on both inputs."""

    def __init__(self, lib):
        nn = lib.nn
        self.cnn = seeded(lib, nn.Sequential(nn.Linear(D_IN, 12), nn.Tanh(), nn.Linear(12, 12),
                                             nn.PReLU(), nn.Linear(12, D_EMB)), 12)

    def forward_once(self, x):
        return self.cnn(x)

    def __call__(self, input1, input2):
        return self.forward_once(input1), self.forward_once(input2)


class ContrastiveLoss:
    """Hadsell et al. as the Siamese tutorials write it (label 1 = dissimilar)."""

    def __init__(self, lib, margin: float = 2.0):
        self.lib, self.margin = lib, margin

    def __call__(self, output1, output2, label):
        lib, F = self.lib, self.lib.nn.functional
        euclidean_distance = F.pairwise_distance(output1, output2, keepdim=True)
        return lib.mean((1 - label) * lib.pow(euclidean_distance, 2)
                        + label * lib.pow(lib.clamp(self.margin - euclidean_distance, min=0.0),
                                          2))


def siamese(lib):
    nn, F = lib.nn, lib.nn.functional
    net = SiameseNetwork(lib)
    opt = lib.optim.Adam(net.cnn.parameters(), lr=5e-3, betas=(0.8, 0.99))
    contrastive = ContrastiveLoss(lib)
    cos_emb = nn.CosineEmbeddingLoss(margin=0.1)
    cos_none = nn.CosineEmbeddingLoss(reduction="none")
    ranking = nn.MarginRankingLoss(margin=0.5)
    hinge = nn.HingeEmbeddingLoss(margin=1.5)
    hinge_sum = nn.HingeEmbeddingLoss(reduction="sum")
    same = lib.tensor(LABELS[0::2] == LABELS_ODD[0::2])
    y = lib.where(same, 1, -1)  # +1 similar, -1 dissimilar (an integer target)
    rec = []
    for x in BATCHES:
        x = inputs(lib, x)
        o1, o2 = net(x[0::2], x[1::2])
        d = F.pairwise_distance(o1, o2)
        # ranking: the pair distance ranked against the distance to a shuffled partner
        d_neg = F.pairwise_distance(o1, o2.roll(1, 0))
        parts = [contrastive(o1, o2, (~same).to(o1.dtype).view(-1, 1)),
                 cos_emb(o1, o2, y), cos_none(o1, o2, y.to(o1.dtype)).sum(),
                 ranking(d_neg, d, lib.ones_like(d)),
                 F.margin_ranking_loss(d, d_neg, -lib.ones_like(d), margin=0.2,
                                       reduction="sum"),
                 hinge(d, y), hinge_sum(d, y.to(d.dtype)),
                 F.hinge_embedding_loss(d ** 2, y, margin=0.0)]
        loss = sum(parts)
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [t.item() for t in parts], "g": grads(net.cnn)})
        opt.step()
    return {"steps": rec, "w": arrays(net.cnn.state_dict())}


def test_siamese_pair_losses():
    both(siamese)


# 8. retrieval evaluation: recall@k by topk on a similarity matrix, mAP by argsort and cumsum

def recall_at_k(lib, embeddings, labels, ks=(1, 2, 4)):
    F = lib.nn.functional
    x = F.normalize(embeddings, dim=1)
    sim = x @ x.t()
    sim.fill_diagonal_(-float("inf"))  # a query never retrieves itself
    _, idx = sim.topk(max(ks), dim=1, largest=True, sorted=True)
    match = labels[idx] == labels.unsqueeze(1)
    return [match[:, :k].any(dim=1).float().mean().item() for k in ks]


def recall_at_k_pml(lib, embeddings, labels, k=3):
    """The other common spelling: distances by cdist, self excluded by adding a large diagonal,
    ``torch.sort`` ascending, neighbour labels by ``gather``."""
    dist = lib.cdist(embeddings, embeddings) + lib.eye(len(labels)) * 1e9
    _, order = lib.sort(dist, dim=1)
    nn_labels = lib.gather(labels.expand(len(labels), -1), 1, order[:, :k])
    correct = (nn_labels == labels.view(-1, 1)).sum(dim=1).clamp(max=1)
    return correct.double().mean().item(), order


def mean_average_precision(lib, query, gallery, q_labels, g_labels):
    sim = query @ gallery.T
    indices = lib.argsort(sim, dim=1, descending=True)
    matches = (g_labels[indices] == q_labels[:, None]).to(query.dtype)
    aps = []
    for q in range(matches.size(0)):
        m = matches[q]
        num_rel = m.sum()
        if num_rel == 0:
            continue
        tmp_cmc = m.cumsum(dim=0)
        precision = tmp_cmc / lib.arange(1, m.numel() + 1, dtype=m.dtype)
        aps.append((precision * m).sum() / num_rel)
    mAP = lib.stack(aps).mean()
    # the vectorised spelling
    cum = matches.cumsum(1)
    ranks = lib.arange(1, matches.size(1) + 1).to(matches.dtype)
    ap = ((cum / ranks) * matches).sum(1) / matches.sum(1).clamp(min=1)
    return mAP.item(), arr(ap), arr(indices)


def retrieval(lib):
    model = embedder(lib, seed=13)
    labels = lib.tensor(LABELS_ODD)
    model.eval()
    with lib.no_grad():
        emb = model(inputs(lib, X))
        rec = {"recall": recall_at_k(lib, emb.clone(), labels),
               "recall_pml": recall_at_k_pml(lib, emb, labels)[0],
               "order": arr(recall_at_k_pml(lib, emb, labels)[1]),
               "map": mean_average_precision(lib, emb[:4], emb[4:], labels[:4], labels[4:])}
    return rec


def test_retrieval_recall_map():
    both(retrieval)


# 9. centre losses: MNIST_center_loss_pytorch's autograd.Function with its hand-written backward
# (index_select, scatter_add_ of counts) and its own SGD on the centres; Wen et al.'s
# centre update by index_add_ and bincount

def center_loss_module(lib, num_classes: int = C, feat_dim: int = D_EMB, size_average=True):
    nn = lib.nn
    centers0 = np.random.default_rng(14).standard_normal((num_classes, feat_dim))

    class CenterlossFunc(lib.autograd.Function):
        @staticmethod
        def forward(ctx, feature, label, centers, batch_size):
            ctx.save_for_backward(feature, label, centers, batch_size)
            centers_batch = centers.index_select(0, label.long())
            return (feature - centers_batch).pow(2).sum() / 2.0 / batch_size

        @staticmethod
        def backward(ctx, grad_output):
            feature, label, centers, batch_size = ctx.saved_tensors
            centers_batch = centers.index_select(0, label.long())
            diff = centers_batch - feature
            counts = centers.new_ones(centers.size(0))
            ones = centers.new_ones(label.size(0))
            grad_centers = centers.new_zeros(centers.size())
            counts = counts.scatter_add_(0, label.long(), ones)
            grad_centers.scatter_add_(0, label.unsqueeze(1).expand(feature.size()).long(), diff)
            grad_centers = grad_centers / counts.view(-1, 1)
            return -grad_output * diff / batch_size, None, grad_centers / batch_size, None

    class CenterLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.centers = nn.Parameter(drawn(lib, centers0))
            self.centerlossfunc = CenterlossFunc.apply
            self.feat_dim = feat_dim
            self.size_average = size_average

        def forward(self, label, feat):
            batch_size = feat.size(0)
            feat = feat.view(batch_size, -1)
            if feat.size(1) != self.feat_dim:
                raise ValueError(f"Center's dim: {self.feat_dim} should be equal to input "
                                 f"feature's dim: {feat.size(1)}")
            batch_size_tensor = feat.new_empty(1).fill_(batch_size if self.size_average else 1)
            return self.centerlossfunc(feat, label, self.centers, batch_size_tensor)

    return CenterLoss()


def center_losses(lib, loss_weight: float = 0.5, alpha: float = 0.5):
    nn, F = lib.nn, lib.nn.functional
    model = embedder(lib, seed=15)
    head = seeded(lib, nn.Linear(D_EMB, C), 16)
    centerloss = center_loss_module(lib)
    nllloss = nn.NLLLoss()
    optimizer4nn = lib.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.05,
                                 momentum=0.9, weight_decay=5e-4)
    optimzer4center = lib.optim.SGD(centerloss.parameters(), lr=0.5)
    # Wen et al.'s centres: a buffer updated by hand with index_add_, outside autograd
    centers = drawn(lib, np.random.default_rng(17).standard_normal((C, D_EMB)))
    labels = lib.tensor(LABELS_ODD)
    rec = []
    for x in BATCHES:
        feats = model(inputs(lib, x))
        pred = F.log_softmax(head(feats), dim=1)
        l_center = centerloss(labels, feats)
        l_wen = (feats - centers.index_select(0, labels)).pow(2).sum(1).mean() / 2
        loss = nllloss(pred, labels) + loss_weight * (l_center + l_wen)
        optimizer4nn.zero_grad()
        optimzer4center.zero_grad()
        loss.backward()
        optimizer4nn.step()
        optimzer4center.step()
        with lib.no_grad():
            diff = centers[labels] - feats
            delta = lib.zeros_like(centers).index_add_(0, labels, diff)
            counts = lib.bincount(labels, minlength=C).to(centers.dtype)
            centers -= alpha * delta / (1 + counts[:, None])
        rec.append({"parts": [l_center.item(), l_wen.item()], "g": grads(model),
                    "gc": arr(centerloss.centers.grad), "centers": arr(centers)})
    return {"steps": rec, "w": arrays(model.state_dict()), "c": arr(centerloss.centers)}


def test_center_loss_function_and_index_add():
    both(center_losses)


# 10. more heads as InsightFace_Pytorch, CurricularFace and AdaCos write them: a kernel made by
# ``.data`` renorm_/mul_, boolean-mask and index assignment into the logits, scatter_ of a
# tensor, a no_grad running buffer, a median-adapted scale

def more_heads(lib, embedding_size: int = D_EMB, classnum: int = C):
    nn, F = lib.nn, lib.nn.functional
    k0 = np.random.default_rng(18).uniform(-1, 1, (embedding_size, classnum))

    def l2_norm(input, axis=1):
        norm = lib.norm(input, 2, axis, True)
        return lib.div(input, norm)

    class Arcface(nn.Module):
        def __init__(self, s=16.0, m=0.5):
            super().__init__()
            self.classnum = classnum
            self.kernel = nn.Parameter(lib.Tensor(embedding_size, classnum))
            self.kernel.data.copy_(drawn(lib, k0)).renorm_(2, 1, 1e-5).mul_(1e5)
            self.m, self.s = m, s
            self.cos_m, self.sin_m = math.cos(m), math.sin(m)
            self.mm = self.sin_m * m
            self.threshold = math.cos(math.pi - m)

        def forward(self, embbedings, label):
            nB = len(embbedings)
            kernel_norm = l2_norm(self.kernel, axis=0)
            cos_theta = lib.mm(embbedings, kernel_norm)
            cos_theta = cos_theta.clamp(-1, 1)
            cos_theta_2 = lib.pow(cos_theta, 2)
            sin_theta_2 = 1 - cos_theta_2
            sin_theta = lib.sqrt(sin_theta_2)
            cos_theta_m = (cos_theta * self.cos_m - sin_theta * self.sin_m)
            cond_v = cos_theta - self.threshold
            cond_mask = cond_v <= 0
            keep_val = (cos_theta - self.mm)
            cos_theta_m[cond_mask] = keep_val[cond_mask]
            output = cos_theta * 1.0
            idx_ = lib.arange(0, nB, dtype=lib.long)
            output[idx_, label] = cos_theta_m[idx_, label]
            output *= self.s
            return output

    class Am_softmax(nn.Module):
        def __init__(self, m=0.35, s=8.0):
            super().__init__()
            self.kernel = nn.Parameter(lib.Tensor(embedding_size, classnum))
            self.kernel.data.copy_(drawn(lib, k0[:, ::-1].copy())).renorm_(2, 1, 1e-5).mul_(1e5)
            self.m, self.s = m, s

        def forward(self, embbedings, label):
            kernel_norm = l2_norm(self.kernel, axis=0)
            cos_theta = lib.mm(embbedings, kernel_norm)
            cos_theta = cos_theta.clamp(-1, 1)
            phi = cos_theta - self.m
            label = label.view(-1, 1)
            index = cos_theta.data * 0.0
            index.scatter_(1, label.data.view(-1, 1), 1)
            index = index.bool()
            output = cos_theta * 1.0
            output[index] = phi[index]
            output *= self.s
            return output

    class CurricularFace(nn.Module):
        def __init__(self, m=0.5, s=16.0):
            super().__init__()
            self.m, self.s = m, s
            self.cos_m, self.sin_m = math.cos(m), math.sin(m)
            self.threshold = math.cos(math.pi - m)
            self.mm = math.sin(math.pi - m) * m
            self.kernel = nn.Parameter(drawn(lib, k0 * 0.5))
            self.register_buffer("t", lib.zeros(1))

        def forward(self, embbedings, label):
            embbedings = l2_norm(embbedings, axis=1)
            kernel_norm = l2_norm(self.kernel, axis=0)
            cos_theta = lib.mm(embbedings, kernel_norm)
            cos_theta = cos_theta.clamp(-1, 1)
            with lib.no_grad():
                origin_cos = cos_theta.clone()
            target_logit = cos_theta[lib.arange(0, embbedings.size(0)), label].view(-1, 1)
            sin_theta = lib.sqrt(1.0 - lib.pow(target_logit, 2))
            cos_theta_m = target_logit * self.cos_m - sin_theta * self.sin_m
            mask = cos_theta > cos_theta_m
            final_target_logit = lib.where(target_logit > self.threshold, cos_theta_m,
                                           target_logit - self.mm)
            hard_example = cos_theta[mask]
            with lib.no_grad():
                self.t = target_logit.mean() * 0.01 + (1 - 0.01) * self.t
            cos_theta[mask] = hard_example * (self.t + hard_example)
            cos_theta.scatter_(1, label.view(-1, 1).long(), final_target_logit)
            output = cos_theta * self.s
            return output, origin_cos * self.s

    class AdaCos(nn.Module):
        def __init__(self, m=0.50):
            super().__init__()
            self.n_classes = classnum
            self.s = math.sqrt(2) * math.log(classnum - 1)
            self.m = m
            self.W = nn.Parameter(drawn(lib, k0.T.copy()))

        def forward(self, input, label=None):
            x = F.normalize(input)
            W = F.normalize(self.W)
            logits = F.linear(x, W)
            if label is None:
                return logits
            theta = lib.acos(lib.clamp(logits, -1.0 + 1e-7, 1.0 - 1e-7))
            one_hot = lib.zeros_like(logits)
            one_hot.scatter_(1, label.view(-1, 1).long(), 1)
            with lib.no_grad():
                B_avg = lib.where(one_hot < 1, lib.exp(self.s * logits), lib.zeros_like(logits))
                B_avg = lib.sum(B_avg) / input.size(0)
                theta_med = lib.median(theta[one_hot == 1])
                self.s = lib.log(B_avg) / lib.cos(lib.min(math.pi / 4 * lib.ones_like(theta_med),
                                                          theta_med))
            output = self.s * logits
            return output

    return Arcface(), Am_softmax(), CurricularFace(), AdaCos()


def more_margins(lib, labels=LABELS_ODD):
    F = lib.nn.functional
    model = embedder(lib, seed=19)
    arc, am, curr, ada = more_heads(lib)
    opt = lib.optim.SGD([{"params": model.parameters()},
                         {"params": [arc.kernel, am.kernel], "weight_decay": 4e-4}],
                        lr=0.05, momentum=0.9)
    opt.add_param_group({"params": list(curr.parameters()) + list(ada.parameters()),
                         "lr": 0.01})
    labels = lib.tensor(labels)
    rec = []
    for x in BATCHES:
        emb = model(inputs(lib, x))
        emb_n = F.normalize(emb)
        out_c, origin = curr(emb, labels)
        logits = [arc(emb_n, labels), am(emb_n, labels), out_c, ada(emb, labels)]
        parts = [F.cross_entropy(lg, labels) for lg in logits]
        loss = sum(parts)
        opt.zero_grad()
        loss.backward()
        rec.append({"logits": [arr(t) for t in logits], "origin": arr(origin),
                    "t": arr(curr.t), "s": float(ada.s), "g": grads(model),
                    "gh": [grads(h) for h in (arc, am, curr, ada)]})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict()),
            "h": [arrays(h.state_dict()) for h in (arc, am, curr, ada)],
            "opt": [{k: g[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "params")}
                    for g in opt.state_dict()["param_groups"]]}


def test_more_margin_heads():
    both(more_margins)


# 11. more distillation losses as their repositories write them: decoupled KD (scatter_ masks,
# ``keepdims``, legacy ``size_average=False``), relational KD (distance and angle, indexing by
# ``range``), similarity-preserving KD, and sequence-level KL on (B, T, V) logits

def dkd_loss(lib, logits_student, logits_teacher, target, alpha, beta, temperature):
    F = lib.nn.functional

    def _get_gt_mask(logits, target):
        target = target.reshape(-1)
        return lib.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()

    def _get_other_mask(logits, target):
        target = target.reshape(-1)
        return lib.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        t1 = (t * mask1).sum(dim=1, keepdims=True)
        t2 = (t * mask2).sum(1, keepdims=True)
        return lib.cat([t1, t2], dim=1)

    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = lib.log(pred_student)
    tckd_loss = (F.kl_div(log_pred_student, pred_teacher, size_average=False)
                 * (temperature ** 2) / target.shape[0])
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask,
                                           dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, size_average=False)
                 * (temperature ** 2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss


def rkd_pdist(e, squared=False, eps=1e-12):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def rkd_losses(lib, student, teacher):
    F = lib.nn.functional
    with lib.no_grad():
        t_d = rkd_pdist(teacher, squared=False)
        mean_td = t_d[t_d > 0].mean()
        t_d = t_d / mean_td
    d = rkd_pdist(student, squared=False)
    mean_d = d[d > 0].mean()
    d = d / mean_d
    dist = F.smooth_l1_loss(d, t_d, reduction="mean")
    with lib.no_grad():
        td = (teacher.unsqueeze(0) - teacher.unsqueeze(1))
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = lib.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = (student.unsqueeze(0) - student.unsqueeze(1))
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = lib.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    angle = F.smooth_l1_loss(s_angle, t_angle, reduction="mean")
    return dist, angle


def similarity_preserving(lib, g_s, g_t):
    F = lib.nn.functional
    bsz = g_s.shape[0]
    f_s = g_s.view(bsz, -1)
    f_t = g_t.view(bsz, -1)
    G_s = lib.mm(f_s, lib.t(f_s))
    G_s = F.normalize(G_s)
    G_t = lib.mm(f_t, lib.t(f_t))
    G_t = F.normalize(G_t)
    G_diff = G_t - G_s
    return (G_diff * G_diff).view(-1, 1).sum(0) / (bsz * bsz)


def more_kd(lib, T: float = 4.0):
    nn, F = lib.nn, lib.nn.functional
    teacher = seeded(lib, convnet(lib, 4), 20)
    teacher.eval()
    student = seeded(lib, convnet(lib, 3, dropout=0.0), 21)
    seq_student = seeded(lib, nn.Linear(D_IN, 5), 22)
    seq_teacher = seeded(lib, nn.Linear(D_IN, 5), 23).requires_grad_(False)
    opt = lib.optim.SGD(list(student.parameters()) + list(seq_student.parameters()), lr=0.05,
                        momentum=0.9)
    kl = nn.KLDivLoss(reduction="batchmean")
    labels = lib.tensor(IMG_LABELS)
    rec = []
    for epoch, x in enumerate(IMAGES):
        x = inputs(lib, x)
        with lib.no_grad():
            t_out, (t1, t2) = teacher(x)
        s_out, (s1, s2) = student(x)
        warmup = min(epoch / 2, 1.0)
        l_dkd = warmup * dkd_loss(lib, s_out, t_out, labels, 1.0, 8.0, T)
        l_dist, l_angle = rkd_losses(lib, s2.mean((2, 3)), t2.mean((2, 3)))
        l_sp = similarity_preserving(lib, s2, t2)
        seq = inputs(lib, BATCHES[epoch]).view(2, 4, D_IN)  # (B, T, D) tokens
        l_seq = kl(F.log_softmax(seq_student(seq) / T, -1),
                   F.softmax(seq_teacher(seq) / T, -1)) * T * T
        loss = l_dkd + 25 * l_dist + 50 * l_angle + 3000 * l_sp.squeeze() + l_seq
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [t.item() for t in (l_dkd, l_dist, l_angle, l_sp, l_seq)],
                    "g": grads(student), "gs": grads(seq_student)})
        opt.step()
    return {"steps": rec, "w": arrays(student.state_dict())}


def test_dkd_rkd_sp_sequence_kd():
    both(more_kd)


# 12. the same programs in float32, PyTorch's default

@pytest.fixture
def float32():
    torch.set_default_dtype(torch.float32)
    ng.set_default_dtype(ng.float32)
    yield
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)


@pytest.mark.parametrize("program", [triplet_mining, triplet_modules, npair_ms, proxies, margins,
                                     more_margins, kd, born_again, more_kd, siamese, retrieval,
                                     center_losses, partial_fc_ignored])
def test_float32(float32, program):
    # relational KD's Gram-matrix distances cancel: float32 rounding (of either library, as
    # far from float64 as the other) reaches 1e-4 after the 3000-weighted terms
    ref, got = program(torch), program(ng)
    assert_same(got, ref, 1e-3 if program is more_kd else 1e-4)


# 13. a re-identification training loop as reid-strong-baseline writes it: a P x K identity
# sampler under a DataLoader, a backbone whose fc is nn.Identity, a BNNeck with a frozen bias,
# forward hooks collecting features, label-smoothed ID loss plus batch-hard triplet, a
# cross-batch memory (XBM) ring buffer, circle loss, and recall@1 under inference_mode

CIRCLE_X = RNG.standard_normal((24, D_IN))
CIRCLE_Y = np.repeat(np.arange(6), 4)


class RandomIdentitySampler:
    """P identities x K instances per batch, drawn with Python's ``random`` (seeded)."""

    def __init__(self, data_source, batch_size, num_instances, seed=0):
        import random
        from collections import defaultdict
        self.rand = random.Random(seed)
        self.data_source, self.batch_size = data_source, batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = self.batch_size // self.num_instances
        self.index_dic = defaultdict(list)
        for index, (_, pid) in enumerate(self.data_source):
            self.index_dic[int(pid)].append(index)
        self.pids = list(self.index_dic.keys())
        self.length = 0
        for pid in self.pids:
            num = len(self.index_dic[pid])
            if num < self.num_instances:
                num = self.num_instances
            self.length += num - num % self.num_instances

    def __iter__(self):
        from collections import defaultdict
        batch_idxs_dict = defaultdict(list)
        for pid in self.pids:
            idxs = copy.deepcopy(self.index_dic[pid])
            self.rand.shuffle(idxs)
            batch_idxs = []
            for idx in idxs:
                batch_idxs.append(idx)
                if len(batch_idxs) == self.num_instances:
                    batch_idxs_dict[pid].append(batch_idxs)
                    batch_idxs = []
        avai_pids = copy.deepcopy(self.pids)
        final_idxs = []
        while len(avai_pids) >= self.num_pids_per_batch:
            selected_pids = self.rand.sample(avai_pids, self.num_pids_per_batch)
            for pid in selected_pids:
                batch_idxs = batch_idxs_dict[pid].pop(0)
                final_idxs.extend(batch_idxs)
                if len(batch_idxs_dict[pid]) == 0:
                    avai_pids.remove(pid)
        return iter(final_idxs)

    def __len__(self):
        return self.length


def circle_loss(lib, feats, labels, m: float = 0.25, gamma: float = 16.0):
    """Circle loss (Sun et al.) as its reference code writes it: pairs from the upper triangle,
    detached adaptive weights, softplus of two logsumexps."""
    F = lib.nn.functional
    similarity_matrix = feats @ feats.transpose(1, 0)
    label_matrix = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive_matrix = label_matrix.triu(diagonal=1)
    negative_matrix = label_matrix.logical_not().triu(diagonal=1)
    similarity_matrix = similarity_matrix.view(-1)
    positive_matrix = positive_matrix.view(-1)
    negative_matrix = negative_matrix.view(-1)
    sp, sn = similarity_matrix[positive_matrix], similarity_matrix[negative_matrix]
    ap = lib.clamp_min(- sp.detach() + 1 + m, min=0.)
    an = lib.clamp_min(sn.detach() + m, min=0.)
    delta_p, delta_n = 1 - m, m
    logit_p = - ap * (sp - delta_p) * gamma
    logit_n = an * (sn - delta_n) * gamma
    return F.softplus(lib.logsumexp(logit_n, dim=0) + lib.logsumexp(logit_p, dim=0))


class XBM:
    """Cross-batch memory: a ring buffer of detached embeddings and their labels."""

    def __init__(self, lib, size: int, dim: int):
        self.K = size
        self.feats = lib.zeros(self.K, dim)
        self.targets = lib.zeros(self.K, dtype=lib.long)
        self.ptr = 0

    @property
    def is_full(self):
        return self.targets[-1].item() != 0

    def get(self):
        if self.is_full:
            return self.feats, self.targets
        return self.feats[:self.ptr], self.targets[:self.ptr]

    def enqueue_dequeue(self, feats, targets):
        q_size = len(targets)
        if self.ptr + q_size > self.K:
            self.feats[-q_size:] = feats
            self.targets[-q_size:] = targets
            self.ptr = 0
        else:
            self.feats[self.ptr: self.ptr + q_size] = feats
            self.targets[self.ptr: self.ptr + q_size] = targets
            self.ptr += q_size


def reid_baseline(lib, epochs: int = 2):
    nn, F = lib.nn, lib.nn.functional
    DataLoader, TensorDataset = lib.utils.data.DataLoader, lib.utils.data.TensorDataset

    def weights_init_kaiming(m):
        classname = m.__class__.__name__
        if classname.find("BatchNorm") != -1 and m.affine:
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
            self.fc = nn.Linear(8, 100)

        def forward(self, x):
            return self.fc(self.layer2(self.layer1(x)))

    class Baseline(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.base = Backbone()
            self.base.fc = nn.Identity()
            self.bottleneck = nn.BatchNorm1d(8)
            self.bottleneck.bias.requires_grad_(False)
            self.bottleneck.apply(weights_init_kaiming)
            self.classifier = nn.Linear(8, num_classes, bias=False)

        def forward(self, x):
            global_feat = self.base(x)
            feat = self.bottleneck(global_feat)
            if self.training:
                return self.classifier(feat), global_feat
            return feat

    dataset = TensorDataset(inputs(lib, CIRCLE_X), lib.tensor(CIRCLE_Y))
    sampler = RandomIdentitySampler(dataset, batch_size=8, num_instances=2, seed=3)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=0, drop_last=True)
    model = seeded(lib, Baseline(6), 24)
    features = {}

    def hook(name):
        def fn(module, inp, out):
            features[name] = out
        return fn

    handles = [model.base.layer1.register_forward_hook(hook("layer1")),
               model.base.layer2.register_forward_hook(hook("layer2"))]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = lib.optim.Adam(params, lr=3.5e-3, weight_decay=5e-4)
    sched = lib.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
    xent = nn.CrossEntropyLoss(label_smoothing=0.1)
    xbm = XBM(lib, 12, 8)
    rec = []
    for _epoch in range(epochs):
        model.train()
        for img, target in loader:
            score, feat = model(img)
            l_id = xent(score, target)
            l_tri = batch_hard_cdist(lib, feat, target, margin=0.3)
            xbm.enqueue_dequeue(feat.detach(), target.detach())
            mem_feats, mem_targets = xbm.get()
            sim = F.normalize(feat) @ F.normalize(mem_feats).t()
            pos = (target[:, None] == mem_targets[None]).to(sim.dtype)
            l_xbm = ((1 - sim) * pos).sum() / pos.sum().clamp(min=1) + \
                (F.relu(sim - 0.5) * (1 - pos)).sum() / (1 - pos).sum().clamp(min=1)
            l_circle = circle_loss(lib, F.normalize(feat), target)
            l_hint = features["layer2"].pow(2).mean() * 1e-3
            loss = l_id + l_tri + l_xbm + 0.1 * l_circle + l_hint
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.append({"target": arr(target), "parts": [t.item() for t in (
                l_id, l_tri, l_xbm, l_circle, l_hint)], "g": grads(model),
                "lr": opt.param_groups[0]["lr"], "ptr": xbm.ptr,
                "layer1": arr(features["layer1"])})
        sched.step()
    for h in handles:
        h.remove()
    model.eval()
    with lib.inference_mode():
        feats = lib.cat([model(img) for img, _ in DataLoader(dataset, batch_size=10)])
    rec.append({"hooks_gone": len(features), "eval": arr(feats),
                "recall": recall_at_k(lib, feats, lib.tensor(CIRCLE_Y), ks=(1, 4)),
                "bias_frozen": model.bottleneck.bias.grad is None})
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_reid_baseline_loop():
    both(reid_baseline)


#: compiled replays without numba kernels (compiling those takes seconds per test)
FAST = {"compile": {"options": {"fuse": False}}, "jit": {"fuse": False}}


# 14. compiled losses: ``torch.compile`` on the mining losses, whose boolean masks select a
# different number of pairs from batch to batch (PyTorch's compile changes no result, so its
# run is eager here; nodegrad's replays must not reuse the traced call's counts)

def compiled_losses(lib, jit: str = "compile"):
    F = lib.nn.functional
    wrap = (lambda f: f) if lib is torch else partial(getattr(lib, jit), **FAST[jit])

    def hard_mean(embeddings, labels):
        dist = lib.cdist(embeddings, embeddings)
        same = labels[:, None] == labels[None]
        pos = dist[same & ~lib.eye(len(labels), dtype=lib.bool)]
        neg = dist[~same]
        return pos.sum() / pos.size(0) - neg.mean(), pos.numel()

    def circle(embeddings, labels):
        return circle_loss(lib, F.normalize(embeddings), labels)

    fns = [wrap(hard_mean), wrap(circle)]
    model = embedder(lib, seed=25)
    opt = lib.optim.SGD(model.parameters(), lr=0.05)
    label_sets = [LABELS, LABELS_ODD, np.array([0, 0, 0, 0, 1, 1, 1, 2])]
    rec = []
    for x, labels in zip(BATCHES * 2, label_sets * 2):
        emb = model(inputs(lib, x))
        (l_hard, n_pos), l_circle = fns[0](emb, lib.tensor(labels)), fns[1](emb, lib.tensor(labels))
        loss = l_hard + l_circle
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [l_hard.item(), l_circle.item()], "n_pos": int(n_pos),
                    "g": grads(model)})
        opt.step()
    return rec


@pytest.mark.parametrize("jit", ["compile", "jit"])
def test_compiled_losses_with_changing_masks(jit):
    """A boolean-mask index traced under jit had its count frozen into the program: the next
    call's ``x[mask].size(0)`` was the traced one (a wrong loss) and its backward failed on the
    new shape. Such signatures now run eagerly."""
    both(compiled_losses, jit)


def test_boolean_mask_index_under_jit_runs_eagerly():
    x = ng.tensor(np.arange(9.0).reshape(3, 3))
    for jit in (ng.jit, ng.compile):
        f = jit(lambda x: x[x > 2].sum() / x[x > 2].size(0))
        for s in (1.0, 0.5):
            assert f(x * s).item() == (x * s)[(x * s) > 2].mean().item()
    f = ng.jit(lambda x, m: x[m].mean())
    f(x, ng.tensor([True, False, True]))
    assert f.last.program is None and "boolean mask" in f.last.reason


# 15. regressions found by these ports

def test_kl_div_negative_target_is_nan_as_in_pytorch():
    """KD code that passes teacher logits where probabilities belong (a missing softmax) gets
    NaN from PyTorch's kl_div (target * log(target) for target < 0); it got a finite loss."""
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    t[0, 0] = 0.0
    for log_target in (False, True):
        rec = []
        for lib in (torch, ng):
            xi = lib.tensor(x, requires_grad=True)
            ti = lib.tensor(t, requires_grad=True)
            loss = lib.nn.functional.kl_div(xi, ti, reduction="none", log_target=log_target)
            loss.sum().backward()
            rec.append([arr(loss), arr(xi.grad)])
        np.testing.assert_allclose(rec[1][0], rec[0][0], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(rec[1][1], rec[0][1], rtol=1e-12, equal_nan=True)
    assert np.isnan(ng.nn.functional.kl_div(ng.tensor(x), ng.tensor(t),
                                            reduction="batchmean").item())


# 16. self-distillation with an EMA teacher (mean teacher / DINO-style): AveragedModel with
# get_ema_multi_avg_fn over parameters and buffers, BatchNorm frozen by model.apply, a
# temperature-sharpened teacher, a consistency loss ramped up by a sigmoid schedule

def ema_self_distillation(lib, decay: float = 0.9, T: float = 0.5):
    nn, F = lib.nn, lib.nn.functional
    swa_utils = lib.optim.swa_utils
    student = seeded(lib, convnet(lib, 3, dropout=0.0), 26)
    teacher = swa_utils.AveragedModel(student, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(decay),
                                      use_buffers=True)
    teacher_fn = swa_utils.AveragedModel(student, avg_fn=swa_utils.get_ema_avg_fn(decay))
    opt = lib.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=1e-4)

    def set_bn_eval(m):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

    def sigmoid_rampup(current, rampup_length):
        current = np.clip(current, 0.0, rampup_length)
        phase = 1.0 - current / rampup_length
        return float(np.exp(-5.0 * phase * phase))

    labels = lib.tensor(IMG_LABELS)
    rec = []
    for step, x in enumerate(IMAGES * 2):
        x = inputs(lib, x)
        student.train()
        if step >= 3:
            student.apply(set_bn_eval)  # the second pass: BatchNorm statistics frozen
        out, _ = student(x)
        with lib.no_grad():
            t_out, _ = teacher(x)
            t_fn, _ = teacher_fn(x)
        w = sigmoid_rampup(step, 4)
        cons = F.kl_div(F.log_softmax(out / T, 1), F.softmax(t_out / T, 1), reduction="batchmean")
        loss = F.cross_entropy(out, labels) + w * cons + 0.1 * F.mse_loss(F.softmax(out, 1),
                                                                          F.softmax(t_fn, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        teacher.update_parameters(student)
        teacher_fn.update_parameters(student)
        rec.append({"loss": loss.item(), "w": w, "g": grads(student),
                    "n": teacher.n_averaged.item(), "bn_training": student.bn1.training})
    return {"steps": rec, "teacher": arrays(teacher.state_dict()),
            "teacher_fn": arrays(teacher_fn.state_dict()), "w": arrays(student.state_dict())}


def test_ema_self_distillation_averaged_model():
    both(ema_self_distillation)


def test_cdist_uses_matrix_products_where_pytorch_does():
    """Retrieval code computes ``torch.cdist(queries, gallery)`` over thousands of rows:
    PyTorch takes ‖a‖² − 2a·b + ‖b‖² by one matrix product for p = 2 beyond 25 rows (or with
    ``compute_mode='use_mm_for_euclid_dist'``); nodegrad formed every difference, (P, R, M)
    floats (gigabytes for a gallery). Values and gradients agree with PyTorch's either way."""
    import tracemalloc

    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((200, 64)), rng.standard_normal((300, 64))
    with ng.no_grad():
        qt, gt = ng.tensor(q), ng.tensor(g)
        tracemalloc.start()
        d = ng.cdist(qt, gt)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 200 * 300 * 64 * 8 / 8, peak  # an eighth of the differences' bytes
    np.testing.assert_allclose(d.numpy(), torch.cdist(torch.tensor(q), torch.tensor(g)).numpy(),
                               rtol=1e-10)
    # gradients, batched inputs, self-distances (a masked diagonal) and each compute_mode
    x1, x2 = rng.standard_normal((2, 30, 5)), rng.standard_normal((2, 27, 5))
    for mode in ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist",
                 "donot_use_mm_for_euclid_dist"):
        for a, b in ((x1, x2), (x1[:, :5], x2[:, :4]), (x1, None)):
            rec = []
            weights = rng.standard_normal((2, a.shape[1], (a if b is None else b).shape[1]))
            for lib in (torch, ng):
                ta = lib.tensor(a, requires_grad=True)
                tb = ta if b is None else lib.tensor(b, requires_grad=True)
                d = lib.cdist(ta, tb, compute_mode=mode)
                w = lib.tensor(weights)
                if b is None:
                    w = w * (1 - lib.eye(a.shape[1]))  # distances to itself left out
                (d * w).sum().backward()
                off = d * (1 - lib.eye(d.shape[-2], d.shape[-1]))
                rec.append([arr(off), arr(ta.grad)] + ([] if b is None else [arr(tb.grad)]))
            assert_same(rec[1], rec[0], 1e-9, mode)


def compiled_heads(lib, jit: str = "compile"):
    """``torch.compile`` on ArcFace and CosFace heads, with new labels each step: their one-hot
    rows (``F.one_hot``; ``zeros`` then ``scatter_``) must be each call's. (SphereFace counts
    its calls in a Python attribute, which a replay does not run: nodegrad's documented jit
    rule, where PyTorch's compiler guards on the attribute and compiles again.)"""
    model = embedder(lib, seed=5)
    heads = margin_heads(lib)[:2]
    params = list(model.parameters()) + [p for h in heads for p in h.parameters()]
    opt = lib.optim.SGD(params, lr=0.05, momentum=0.9)
    criterion = lib.nn.CrossEntropyLoss()
    fns = [h if lib is torch else getattr(lib, jit)(h, **FAST[jit]) for h in heads]
    label_sets = [LABELS, LABELS_ODD, np.array([3, 3, 2, 2, 1, 1, 0, 0])]
    rec = []
    for i, x in enumerate(BATCHES * 2):
        emb = model(inputs(lib, x))
        labels = lib.tensor(label_sets[i % 3])
        parts = [criterion(f(emb, labels), labels) for f in fns]
        opt.zero_grad()
        sum(parts).backward()
        rec.append({"parts": [t.item() for t in parts], "g": grads(model),
                    "gh": [grads(h) for h in heads]})
        opt.step()
    return rec


@pytest.mark.parametrize("jit", ["compile", "jit"])
def test_compiled_margin_heads_with_changing_labels(jit):
    both(compiled_heads, jit)


@pytest.mark.parametrize("make", ["one_hot", "zeros_scatter_", "zeros_like_add_"])
def test_jit_tensors_made_in_a_differentiable_step_start_fresh(make):
    """A tensor made in a jitted step whose output requires grad (a one-hot of the labels,
    filled in place) kept the traced call's values, or added every replay's in-place change
    to them: the loss and gradient of later calls were wrong."""
    F = ng.nn.functional
    x = ng.tensor(np.arange(12.0).reshape(4, 3), requires_grad=True)
    fns = {"one_hot": lambda t: F.one_hot(t, 3).double(),
           "zeros_scatter_": lambda t: ng.zeros(4, 3, dtype=ng.float64).scatter_(1, t[:, None], 1),
           "zeros_like_add_": lambda t: ng.zeros_like(x).add_(t[:, None].double())}

    def f(t):
        return (fns[make](t) * x).sum()

    for jit in ("jit", "compile"):
        g = getattr(ng, jit)(f, **FAST[jit])
        for t in ([0, 1, 2, 1], [2, 2, 0, 0], [1, 0, 0, 2]):
            t = ng.tensor(t)
            want = f(t)
            want_g, = ng.autograd.grad(want, x)
            got = g(t)
            got_g, = ng.autograd.grad(got, x)
            assert got.item() == want.item()
            np.testing.assert_array_equal(got_g.numpy(), want_g.numpy())


def test_jitted_one_hot_checks_each_calls_labels():
    f = ng.jit(lambda t: ng.nn.functional.one_hot(t, 3) * 2, **FAST["jit"])
    assert f(ng.tensor([0, 1, 2])).tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert f(ng.tensor([2, 2, 0])).tolist() == [[0, 0, 2], [0, 0, 2], [2, 0, 0]]
    with pytest.raises(ValueError, match=r"one_hot: labels must lie in \[0, 3\)"):
        f(ng.tensor([0, 1, 3]))
    assert f.traces == 1


def test_deepcopy_of_a_compiled_module_is_compiled_and_independent():
    """Born-again and EMA teachers are ``copy.deepcopy`` of the student, which may be
    compiled: that raised (the jitted call cannot be copied); PyTorch's gives a compiled copy
    with weights of its own."""
    student = ng.compile(embedder(ng, seed=27), options={"fuse": False})
    x = inputs(ng, X)
    want = student(x).detach().numpy().copy()
    teacher = copy.deepcopy(student)
    assert type(teacher) is type(student) and list(teacher.state_dict()) == \
        list(student.state_dict())
    assert teacher._orig_mod is not student._orig_mod
    teacher.requires_grad_(False)
    np.testing.assert_array_equal(teacher(x).numpy(), want)
    with ng.no_grad():
        for p in student.parameters():
            p.mul_(0.5)
    np.testing.assert_array_equal(teacher(x).numpy(), want)  # the copy's own weights
    assert not np.array_equal(student(x).detach().numpy(), want)
    loss = (student(x) - teacher(x)).pow(2).mean()  # distillation through both
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_compiled_module_forwards_the_original_modules_attributes():
    """``model = torch.compile(model)`` and then ``model.fc``, ``model.bn1.training`` or a
    method of the model: PyTorch's OptimizedModule forwards them to the original module;
    nodegrad's raised AttributeError."""
    for lib in (torch, ng):
        net = seeded(lib, convnet(lib, 3), 28)
        net.embed = lambda x, net=net: net(x)[0]  # a plain attribute
        model = lib.compile(net, backend="eager") if lib is torch else lib.compile(
            net, **FAST["compile"])
        assert model.fc is net.fc and model.bn1.training and model._orig_mod is net
        assert model.embed is net.embed
        model.eval()
        assert not model.bn1.training
        with pytest.raises(AttributeError):
            model.no_such_layer
