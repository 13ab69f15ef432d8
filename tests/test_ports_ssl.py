"""Self-supervised and metric-learning programs from PyTorch, ported by changing only the imports.

Each program (SimCLR, BYOL, MoCo v2, Barlow Twins, VICReg, DINO, triplet and contrastive
losses) is written once against a library ``lib`` (``torch`` or ``nodegrad``) with
``nn = lib.nn`` and ``F = lib.nn.functional``. Both runs start from the same seeded weights and
see the same two "augmented views" (NumPy noise), so losses, gradients, EMA targets, queues,
centres and weights agree in float64 step by step.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nodegrad as ng
from _ports import (accuracy, arr, arrays, assert_same,  # noqa: F401
                    float64_one_thread, seeded)

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(0)
N, D_IN = 8, 6
X = RNG.standard_normal((N, D_IN))
VIEWS = [(X + 0.1 * RNG.standard_normal(X.shape), X * RNG.uniform(0.8, 1.2, X.shape))
         for _ in range(4)]
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3])


pytestmark = pytest.mark.usefixtures("float64_one_thread")


def both(fn, *args, tol: float = TOL, **kw):
    ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


def mlp(lib, d_in: int, hidden: int, d_out: int, bn: bool = True, bias: bool = True):
    nn = lib.nn
    layers = [nn.Linear(d_in, hidden, bias=not bn)]  # no bias before a BatchNorm
    if bn:
        layers.append(nn.BatchNorm1d(hidden))
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Linear(hidden, d_out, bias=bias))


def grads(model) -> dict:
    return {k: arr(p.grad) for k, p in model.named_parameters() if p.grad is not None}


# 1. SimCLR: NT-Xent over the (2N, 2N) similarity matrix

def nt_xent(lib, z1, z2, temperature: float = 0.5, fill: str = "masked_fill"):
    F = lib.nn.functional
    n = z1.shape[0]
    z = F.normalize(lib.cat([z1, z2], dim=0), dim=1)
    sim = lib.matmul(z, z.T) / temperature
    if fill == "masked_fill":
        mask = lib.eye(2 * n, dtype=lib.bool)
        sim = sim.masked_fill(mask, float("-inf"))
    else:
        sim = sim.clone()
        sim.fill_diagonal_(-1e9)
    labels = lib.cat([lib.arange(n) + n, lib.arange(n)])
    return F.cross_entropy(sim, labels)


def nt_xent_info_nce(lib, features, temperature: float = 0.5):
    """The SimCLR repository's ``info_nce_loss``: positives gathered by a boolean mask."""
    F = lib.nn.functional
    n = features.shape[0] // 2
    labels = lib.cat([lib.arange(n) for _ in range(2)], dim=0)
    labels = (labels.unsqueeze(0) == labels.unsqueeze(1)).float()
    features = F.normalize(features, dim=1)
    similarity = lib.matmul(features, features.T)
    mask = lib.eye(labels.shape[0], dtype=lib.bool)
    labels = labels[~mask].view(labels.shape[0], -1)
    similarity = similarity[~mask].view(similarity.shape[0], -1)
    positives = similarity[labels.bool()].view(labels.shape[0], -1)
    negatives = similarity[~labels.bool()].view(similarity.shape[0], -1)
    logits = lib.cat([positives, negatives], dim=1) / temperature
    targets = lib.zeros(logits.shape[0], dtype=lib.long)
    return F.cross_entropy(logits, targets)


def simclr(lib, fill: str = "masked_fill"):
    model = seeded(lib, mlp(lib, D_IN, 16, 4))
    opt = lib.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    rec = []
    for v1, v2 in VIEWS:
        opt.zero_grad()
        z1, z2 = model(lib.tensor(v1)), model(lib.tensor(v2))
        loss = nt_xent(lib, z1, z2, 0.5, fill)
        loss2 = nt_xent_info_nce(lib, lib.cat([z1, z2]), 0.5)
        (loss + loss2).backward()
        rec.append({"loss": loss.item(), "loss2": loss2.item(), "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("fill", ["masked_fill", "fill_diagonal_"])
def test_simclr_nt_xent(fill):
    both(simclr, fill)


# 2. BYOL: online network + predictor, EMA target, symmetric 2 - 2 cos

class BYOL:
    def __init__(self, lib, tau: float = 0.9, use_lerp: bool = False):
        self.lib, self.tau, self.use_lerp = lib, tau, use_lerp
        self.online = seeded(lib, mlp(lib, D_IN, 16, 4), 1)
        self.predictor = seeded(lib, mlp(lib, 4, 8, 4), 2)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad = False

    @staticmethod
    def regression_loss(lib, x, y):
        F = lib.nn.functional
        x, y = F.normalize(x, dim=-1, p=2), F.normalize(y, dim=-1, p=2)
        return 2 - 2 * (x * y).sum(dim=-1)

    def loss(self, v1, v2):
        p1, p2 = self.predictor(self.online(v1)), self.predictor(self.online(v2))
        with self.lib.no_grad():
            t1, t2 = self.target(v1), self.target(v2)
        loss = self.regression_loss(self.lib, p1, t2.detach())
        loss = loss + self.regression_loss(self.lib, p2, t1.detach())
        return loss.mean()

    @property
    def params(self):
        return list(self.online.parameters()) + list(self.predictor.parameters())

    def update_target(self):
        with self.lib.no_grad():
            for p_o, p_t in zip(self.online.parameters(), self.target.parameters()):
                if self.use_lerp:
                    p_t.lerp_(p_o, 1 - self.tau)
                else:
                    p_t.data.mul_(self.tau).add_((1 - self.tau) * p_o.data)
            for b_o, b_t in zip(self.online.buffers(), self.target.buffers()):
                b_t.copy_(b_o)


def byol(lib, use_lerp: bool = False):
    m = BYOL(lib, use_lerp=use_lerp)
    opt = lib.optim.SGD(m.params, lr=0.1, momentum=0.9, nesterov=True)
    rec = []
    for v1, v2 in VIEWS:
        opt.zero_grad()
        loss = m.loss(lib.tensor(v1), lib.tensor(v2))
        loss.backward()
        rec.append({"loss": loss.item(), "g": grads(m.online), "gp": grads(m.predictor),
                    "tg": [p.grad is None for p in m.target.parameters()]})
        opt.step()
        m.update_target()
        rec[-1]["target"] = arrays(m.target.state_dict())
    return {"steps": rec, "w": arrays(m.online.state_dict())}


@pytest.mark.parametrize("use_lerp", [False, True])
def test_byol_ema_target(use_lerp):
    both(byol, use_lerp)


# 3. MoCo v2: key queue as a buffer, momentum encoder, einsum logits

def moco_module(lib, dim: int = 4, K: int = 16, m: float = 0.99, T: float = 0.2):
    nn, F = lib.nn, lib.nn.functional

    class MoCo(nn.Module):
        def __init__(self):
            super().__init__()
            self.K, self.m, self.T = K, m, T
            self.encoder_q = seeded(lib, mlp(lib, D_IN, 16, dim, bn=False), 3)
            self.encoder_k = seeded(lib, mlp(lib, D_IN, 16, dim, bn=False), 4)
            for param_q, param_k in zip(self.encoder_q.parameters(),
                                        self.encoder_k.parameters()):
                param_k.data.copy_(param_q.data)  # initialize
                param_k.requires_grad = False  # not update by gradient
            queue = np.random.default_rng(5).standard_normal((dim, K))
            queue = lib.as_tensor(queue, dtype=lib.get_default_dtype())
            self.register_buffer("queue", F.normalize(queue, dim=0))
            self.register_buffer("queue_ptr", lib.zeros(1, dtype=lib.long))

        @lib.no_grad()
        def _momentum_update_key_encoder(self):
            for param_q, param_k in zip(self.encoder_q.parameters(),
                                        self.encoder_k.parameters()):
                param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

        @lib.no_grad()
        def _dequeue_and_enqueue(self, keys):
            batch_size = keys.shape[0]
            ptr = int(self.queue_ptr)
            assert self.K % batch_size == 0
            self.queue[:, ptr:ptr + batch_size] = keys.T
            ptr = (ptr + batch_size) % self.K
            self.queue_ptr[0] = ptr

        def forward(self, im_q, im_k):
            q = F.normalize(self.encoder_q(im_q), dim=1)
            with lib.no_grad():
                self._momentum_update_key_encoder()
                k = F.normalize(self.encoder_k(im_k), dim=1)
            l_pos = lib.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
            l_neg = lib.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
            logits = lib.cat([l_pos, l_neg], dim=1)
            logits /= self.T
            labels = lib.zeros(logits.shape[0], dtype=lib.long)
            self._dequeue_and_enqueue(k)
            return logits, labels

    return MoCo()


def moco(lib):
    model = moco_module(lib)
    criterion = lib.nn.CrossEntropyLoss()
    opt = lib.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.05,
                        momentum=0.9, weight_decay=1e-4)
    rec = []
    for v1, v2 in VIEWS:
        output, target = model(lib.tensor(v1), lib.tensor(v2))
        loss = criterion(output, target)
        acc = (output.argmax(dim=1) == target).float().mean()
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss.item(), "acc": acc.item(), "g": grads(model.encoder_q),
                    "queue": arr(model.queue), "ptr": int(model.queue_ptr),
                    "k": arrays(model.encoder_k.state_dict())})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_moco_v2_queue():
    got = both(moco)
    assert [s["ptr"] for s in got["steps"]] == [8, 0, 8, 0]


# 4. Barlow Twins: cross-correlation of batch-normalised embeddings

def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow(lib, lambd: float = 0.0051):
    nn = lib.nn
    # a bias before BatchNorm gets a round-off gradient (~1e-17) that Adam would scale up to
    # ~lr * 1e-9, so SGD (Barlow Twins trains with LARS) and a bias-free last layer
    backbone = seeded(lib, mlp(lib, D_IN, 16, 6, bias=False), 6)
    bn = nn.BatchNorm1d(6, affine=False)
    opt = lib.optim.SGD(backbone.parameters(), lr=0.05, momentum=0.9, weight_decay=1.5e-6)
    rec = []
    for v1, v2 in VIEWS:
        z1, z2 = backbone(lib.tensor(v1)), backbone(lib.tensor(v2))
        c = bn(z1).T @ bn(z2)
        c.div_(N)
        on_diag = lib.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        loss = on_diag + lambd * off_diag
        opt.zero_grad()
        loss.backward()
        rec.append({"on": on_diag.item(), "off": off_diag.item(), "g": grads(backbone),
                    "bn": arrays(bn.state_dict())})
        opt.step()
    return {"steps": rec, "w": arrays(backbone.state_dict())}


def test_barlow_twins():
    both(barlow)


# 5. VICReg: invariance, variance, covariance

def vicreg(lib, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0):
    F = lib.nn.functional
    backbone = seeded(lib, mlp(lib, D_IN, 16, 6), 7)
    opt = lib.optim.SGD(backbone.parameters(), lr=0.01)
    rec = []
    for v1, v2 in VIEWS:
        x, y = backbone(lib.tensor(v1)), backbone(lib.tensor(v2))
        repr_loss = F.mse_loss(x, y)
        x = x - x.mean(dim=0)
        y = y - y.mean(dim=0)
        std_x = lib.sqrt(x.var(dim=0) + 0.0001)
        std_y = lib.sqrt(y.var(dim=0) + 0.0001)
        std_loss = lib.mean(F.relu(1 - std_x)) / 2 + lib.mean(F.relu(1 - std_y)) / 2
        num_features = x.shape[1]
        cov_x = (x.T @ x) / (N - 1)
        cov_y = (y.T @ y) / (N - 1)
        cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + \
            off_diagonal(cov_y).pow_(2).sum().div(num_features)
        loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [repr_loss.item(), std_loss.item(), cov_loss.item()],
                    "g": grads(backbone)})
        opt.step()
    return {"steps": rec, "w": arrays(backbone.state_dict())}


def test_vicreg():
    both(vicreg)


# 6. DINO: centred, sharpened teacher; student cross-entropy across views

def dino_loss_module(lib, out_dim: int, ncrops: int = 2, student_temp: float = 0.1,
                     teacher_temp: float = 0.04, center_momentum: float = 0.9):
    nn, F = lib.nn, lib.nn.functional

    class DINOLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.student_temp, self.teacher_temp = student_temp, teacher_temp
            self.center_momentum, self.ncrops = center_momentum, ncrops
            self.register_buffer("center", lib.zeros(1, out_dim))

        def forward(self, student_output, teacher_output):
            student_out = student_output / self.student_temp
            student_out = student_out.chunk(self.ncrops)
            teacher_out = F.softmax((teacher_output - self.center) / self.teacher_temp, dim=-1)
            teacher_out = teacher_out.detach().chunk(2)
            total_loss, n_loss_terms = 0, 0
            for iq, q in enumerate(teacher_out):
                for v in range(len(student_out)):
                    if v == iq:
                        continue
                    loss = lib.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                    total_loss += loss.mean()
                    n_loss_terms += 1
            total_loss /= n_loss_terms
            self.update_center(teacher_output)
            return total_loss

        @lib.no_grad()
        def update_center(self, teacher_output):
            batch_center = lib.sum(teacher_output, dim=0, keepdim=True)
            batch_center = batch_center / len(teacher_output)
            self.center = self.center * self.center_momentum + \
                batch_center * (1 - self.center_momentum)

    return DINOLoss()


def dino(lib, out_dim: int = 5):
    student = seeded(lib, nn_head(lib, out_dim), 8)
    teacher = seeded(lib, nn_head(lib, out_dim), 9)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    loss_fn = dino_loss_module(lib, out_dim)
    opt = lib.optim.AdamW(student.parameters(), lr=5e-3, weight_decay=0.04)
    rec = []
    for it, (v1, v2) in enumerate(VIEWS):
        images = [lib.tensor(v1), lib.tensor(v2)]
        teacher_output = teacher(lib.cat(images[:2]))
        student_output = student(lib.cat(images))
        loss = loss_fn(student_output, teacher_output)
        opt.zero_grad()
        loss.backward()
        param_norms = lib.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        rec.append({"loss": loss.item(), "norm": float(param_norms), "g": grads(student),
                    "center": arr(loss_fn.center)})
        opt.step()
        with lib.no_grad():
            m = 0.996 - 0.1 * it
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.mul_(m).add_((1 - m) * param_q.detach())
        rec[-1]["teacher"] = arrays(teacher.state_dict())
    return {"steps": rec}


def nn_head(lib, out_dim: int):
    nn = lib.nn

    class Head(nn.Module):
        """DINO's projection head: MLP, L2 bottleneck, weight-normalised last layer."""

        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(D_IN, 16), nn.GELU(), nn.Linear(16, 4))
            self.last_layer = nn.Linear(4, out_dim, bias=False)

        def forward(self, x):
            x = self.mlp(x)
            x = nn.functional.normalize(x, dim=-1, p=2)
            return self.last_layer(x)

    return Head()


def test_dino_center_teacher():
    both(dino)


# 7. triplet and contrastive losses, batch-hard mining

def batch_hard_triplet(lib, embeddings, labels, margin: float = 0.3):
    F = lib.nn.functional
    dist = lib.cdist(embeddings, embeddings, p=2)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    hardest_pos = dist.masked_fill(~same, 0.0).max(dim=1)[0]
    hardest_neg, _ = dist.masked_fill(same, float("inf")).min(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def contrastive(lib, x1, x2, y, margin: float = 1.0):
    F = lib.nn.functional
    d = F.pairwise_distance(x1, x2, keepdim=True)
    return lib.mean((1 - y) * lib.pow(d, 2) + y * lib.pow(lib.clamp(margin - d, min=0.0), 2))


def metric(lib):
    nn, F = lib.nn, lib.nn.functional
    model = seeded(lib, mlp(lib, D_IN, 16, 4, bn=False), 10)
    triplet = nn.TripletMarginLoss(margin=1.0, p=2)
    triplet_swap = nn.TripletMarginLoss(margin=0.5, p=1, swap=True, reduction="sum")
    cosine = nn.CosineEmbeddingLoss(margin=0.2)
    opt = lib.optim.RMSprop(model.parameters(), lr=1e-2)
    labels = lib.tensor(LABELS)
    rec = []
    for v1, v2 in VIEWS:
        e1, e2 = model(lib.tensor(v1)), model(lib.tensor(v2))
        anchor, positive, negative = e1, e2, e2.roll(2, dims=0)
        parts = [triplet(anchor, positive, negative), triplet_swap(anchor, positive, negative),
                 F.triplet_margin_loss(anchor, positive, negative, margin=0.2, eps=1e-6),
                 batch_hard_triplet(lib, lib.cat([e1, e2]), lib.cat([labels, labels])),
                 contrastive(lib, e1, e2.flip(0), (labels != labels.flip(0)).double()[:, None]),
                 cosine(e1, e2.roll(1, dims=0), lib.tensor([1, -1] * (N // 2)))]
        loss = sum(parts)
        opt.zero_grad()
        loss.backward()
        rec.append({"parts": [p.item() for p in parts], "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_triplet_contrastive_losses():
    both(metric)


# 8. SupCon (Khosla et al.): the reference implementation's masks and log-prob

def supcon_loss(lib, features, labels=None, temperature: float = 0.07,
                base_temperature: float = 0.07, contrast_mode: str = "all"):
    batch_size = features.shape[0]
    if labels is None:
        mask = lib.eye(batch_size, dtype=lib.float32).to(features.dtype)
    else:
        labels = labels.contiguous().view(-1, 1)
        if labels.shape[0] != batch_size:
            raise ValueError("Num of labels does not match num of features")
        # ``.float()`` in the reference: float32 with float64 features raises here
        mask = lib.eq(labels, labels.T).to(features.dtype)
    contrast_count = features.shape[1]
    contrast_feature = lib.cat(lib.unbind(features, dim=1), dim=0)
    if contrast_mode == "one":
        anchor_feature, anchor_count = features[:, 0], 1
    else:
        anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = lib.div(lib.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = lib.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = lib.scatter(lib.ones_like(mask), 1,
                              lib.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = lib.exp(logits) * logits_mask
    log_prob = logits - lib.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = lib.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


def supcon(lib, supervised: bool = True, mode: str = "all"):
    F = lib.nn.functional
    model = seeded(lib, mlp(lib, D_IN, 16, 4), 11)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    labels = lib.tensor(LABELS) if supervised else None
    rec = []
    for v1, v2 in VIEWS:
        images = lib.cat([lib.tensor(v1), lib.tensor(v2)], dim=0)
        features = F.normalize(model(images), dim=1)
        f1, f2 = lib.split(features, [N, N], dim=0)
        features = lib.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1)
        loss = supcon_loss(lib, features, labels, contrast_mode=mode)
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss.item(), "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("supervised,mode", [(True, "all"), (False, "all"), (True, "one")])
def test_supcon(supervised, mode):
    both(supcon, supervised, mode)


# 9. SimSiam (stop-gradient, cosine_similarity) and SwAV (Sinkhorn-Knopp, prototypes)

def simsiam(lib):
    nn, F = lib.nn, lib.nn.functional
    encoder = seeded(lib, mlp(lib, D_IN, 16, 4), 12)
    predictor = seeded(lib, mlp(lib, 4, 8, 4), 13)
    criterion = nn.CosineSimilarity(dim=1)
    params = [{"params": encoder.parameters(), "fix_lr": False},
              {"params": predictor.parameters(), "fix_lr": True}]
    opt = lib.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    rec = []
    for it, (v1, v2) in enumerate(VIEWS):
        for group in opt.param_groups:
            group["lr"] = 0.05 if group["fix_lr"] else 0.05 * 0.5 * (1 + np.cos(np.pi * it / 4))
        z1, z2 = encoder(lib.tensor(v1)), encoder(lib.tensor(v2))
        p1, p2 = predictor(z1), predictor(z2)
        loss = -(criterion(p1, z2.detach()).mean() + criterion(p2, z1.detach()).mean()) * 0.5
        sym = (2 - 2 * F.cosine_similarity(p1, z2.detach(), dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss.item(), "sym": sym.item(), "g": grads(encoder),
                    "z_std": F.normalize(z1, dim=1).std(dim=0).mean().item()})
        opt.step()
    return {"steps": rec, "w": arrays(encoder.state_dict()), "p": arrays(predictor.state_dict())}


def test_simsiam():
    both(simsiam)


def distributed_sinkhorn(lib, out, epsilon: float = 0.05, iters: int = 3):
    Q = lib.exp(out / epsilon).t()
    B, K = Q.shape[1], Q.shape[0]
    sum_Q = lib.sum(Q)
    Q /= sum_Q
    for _ in range(iters):
        sum_of_rows = lib.sum(Q, dim=1, keepdim=True)
        Q /= sum_of_rows
        Q /= K
        Q /= lib.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def swav(lib, n_prototypes: int = 5, temperature: float = 0.1):
    nn, F = lib.nn, lib.nn.functional
    model = seeded(lib, mlp(lib, D_IN, 16, 4), 14)
    prototypes = seeded(lib, nn.Linear(4, n_prototypes, bias=False), 15)
    opt = lib.optim.SGD(list(model.parameters()) + list(prototypes.parameters()), lr=0.1)
    rec = []
    for v1, v2 in VIEWS:
        with lib.no_grad():
            w = prototypes.weight.data.clone()
            w = F.normalize(w, dim=1, p=2)
            prototypes.weight.copy_(w)
        inputs = [lib.tensor(v1), lib.tensor(v2)]
        embedding = F.normalize(model(lib.cat(inputs)), dim=1, p=2)
        output = prototypes(embedding)
        embedding = embedding.detach()
        loss = 0
        for crop_id in [0, 1]:
            with lib.no_grad():
                out = output[N * crop_id:N * (crop_id + 1)].detach()
                q = distributed_sinkhorn(lib, out)[-N:]
            subloss = 0
            for v in np.delete(np.arange(2), crop_id):
                x = output[N * v:N * (v + 1)] / temperature
                subloss -= lib.mean(lib.sum(q * F.log_softmax(x, dim=1), dim=1))
            loss += subloss / (2 - 1)
        loss /= 2
        opt.zero_grad()
        loss.backward()
        rec.append({"loss": loss.item(), "q": arr(q), "g": grads(model),
                    "gp": grads(prototypes)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict()), "p": arrays(prototypes.state_dict())}


def test_swav_sinkhorn():
    both(swav)


# 10. small pieces: in-place views, zero distances, top-k accuracy, buffers

def pieces(lib):
    F = lib.nn.functional
    rng = np.random.default_rng(3)
    out = {}
    c = lib.tensor(rng.standard_normal((4, 4)), requires_grad=True)
    c2 = c * 1.0
    on_diag = lib.diagonal(c2).add_(-1).pow_(2).sum()  # writes through the view into c2
    total = on_diag + (c2 * lib.tensor(rng.standard_normal((4, 4)))).sum()
    total.backward()
    out["diag_view"] = [arr(c2), arr(c.grad)]
    e = lib.tensor(rng.standard_normal((6, 3)), requires_grad=True)
    d = lib.cdist(e, e)  # a zero diagonal: PyTorch's gradient there is zero
    (d * lib.tensor(rng.uniform(size=(6, 6)))).sum().backward()
    out["cdist_zero"] = [arr(d), arr(e.grad)]
    e.grad = None
    pd = F.pairwise_distance(e, e)  # ||x - y + eps||: never zero
    pd.sum().backward()
    out["pairwise_same"] = [arr(pd), arr(e.grad)]
    logits = lib.tensor(rng.standard_normal((10, 5)))
    target = lib.tensor(rng.integers(0, 5, 10))
    out["acc"] = [arr(a) for a in accuracy(lib, logits, target, topk=(1, 3))]
    sim = lib.tensor(rng.standard_normal((6, 6)), requires_grad=True)
    s = sim.clone()
    s.fill_diagonal_(float("-inf"))
    loss = F.cross_entropy(s, lib.tensor([3, 4, 5, 0, 1, 2]), label_smoothing=0.0)
    loss.backward()
    out["fill_diag"] = [arr(loss), arr(sim.grad)]
    z = lib.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    cos = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    (cos * lib.tensor(rng.standard_normal((5, 5)))).sum().backward()
    out["cos_matrix"] = [arr(cos), arr(z.grad)]
    return out


def test_small_pieces():
    both(pieces)


# 11. re-identification and face-recognition losses: open-reid's TripletLoss, CenterLoss, ArcFace

def reid_losses(lib, margin: float = 0.3, num_classes: int = 4, feat_dim: int = 4):
    nn, F = lib.nn, lib.nn.functional

    class TripletLoss(nn.Module):
        """Batch-hard triplet loss as open-reid writes it: a Gram-expanded distance matrix."""

        def __init__(self):
            super().__init__()
            self.ranking_loss = nn.MarginRankingLoss(margin=margin)

        def forward(self, inputs, targets):
            n = inputs.size(0)
            dist = lib.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)
            dist = dist + dist.t()
            dist.addmm_(inputs, inputs.t(), beta=1, alpha=-2)
            dist = dist.clamp(min=1e-12).sqrt()
            mask = targets.expand(n, n).eq(targets.expand(n, n).t())
            dist_ap, dist_an = [], []
            for i in range(n):
                dist_ap.append(dist[i][mask[i]].max().unsqueeze(0))
                dist_an.append(dist[i][mask[i] == 0].min().unsqueeze(0))
            dist_ap, dist_an = lib.cat(dist_ap), lib.cat(dist_an)
            y = lib.ones_like(dist_an)
            loss = self.ranking_loss(dist_an, dist_ap, y)
            prec = (dist_an.data > dist_ap.data).sum() * 1.0 / y.size(0)
            return loss, prec

    class CenterLoss(nn.Module):
        def __init__(self):
            super().__init__()
            centers = np.random.default_rng(16).standard_normal((num_classes, feat_dim))
            self.centers = nn.Parameter(lib.as_tensor(centers, dtype=lib.get_default_dtype()))

        def forward(self, x, labels):
            batch_size = x.size(0)
            distmat = lib.pow(x, 2).sum(dim=1, keepdim=True).expand(batch_size, num_classes) + \
                lib.pow(self.centers, 2).sum(dim=1, keepdim=True).expand(
                    num_classes, batch_size).t()
            distmat.addmm_(x, self.centers.t(), beta=1, alpha=-2)
            classes = lib.arange(num_classes).long()
            labels = labels.unsqueeze(1).expand(batch_size, num_classes)
            mask = labels.eq(classes.expand(batch_size, num_classes))
            dist = distmat * mask.to(distmat.dtype)  # ``mask.float()`` in float32 code
            return dist.clamp(min=1e-12, max=1e+12).sum() / batch_size

    class ArcMarginProduct(nn.Module):
        def __init__(self, s: float = 30.0, m: float = 0.5, easy_margin: bool = False):
            super().__init__()
            self.s, self.m, self.easy_margin = s, m, easy_margin
            self.weight = nn.Parameter(lib.empty(num_classes, feat_dim))
            nn.init.xavier_uniform_(self.weight)
            self.cos_m, self.sin_m = np.cos(m), np.sin(m)
            self.th = np.cos(np.pi - m)
            self.mm = np.sin(np.pi - m) * m

        def forward(self, input, label):
            cosine = F.linear(F.normalize(input), F.normalize(self.weight))
            sine = lib.sqrt((1.0 - lib.pow(cosine, 2)).clamp(0, 1))
            phi = cosine * self.cos_m - sine * self.sin_m
            if self.easy_margin:
                phi = lib.where(cosine > 0, phi, cosine)
            else:
                phi = lib.where(cosine > self.th, phi, cosine - self.mm)
            one_hot = lib.zeros(cosine.size())
            one_hot.scatter_(1, label.view(-1, 1).long(), 1)
            output = (one_hot * phi) + ((1.0 - one_hot) * cosine)
            output *= self.s
            return output

    return TripletLoss(), CenterLoss(), ArcMarginProduct()


def reid(lib):
    nn = lib.nn
    model = seeded(lib, mlp(lib, D_IN, 16, 4, bn=False), 17)
    triplet, center, arc = reid_losses(lib)
    seeded(lib, arc, 18)
    xent = nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = lib.optim.Adam([{"params": model.parameters()}, {"params": arc.parameters()}],
                         lr=1e-2)
    opt_center = lib.optim.SGD(center.parameters(), lr=0.5)
    labels = lib.tensor(LABELS)
    rec = []
    for v1, _ in VIEWS:
        feats = model(lib.tensor(v1))
        l_tri, prec = triplet(feats, labels)
        l_center = center(feats, labels)
        l_arc = xent(arc(feats, labels), labels)
        loss = l_tri + 0.01 * l_center + l_arc
        opt.zero_grad()
        opt_center.zero_grad()
        loss.backward()
        for param in center.parameters():  # the centres learn at their own rate
            param.grad.data *= (1.0 / 0.01)
        rec.append({"parts": [l_tri.item(), l_center.item(), l_arc.item()],
                    "prec": prec.item(), "g": grads(model), "gc": grads(center),
                    "ga": grads(arc)})
        opt.step()
        opt_center.step()
    return {"steps": rec, "w": arrays(model.state_dict()), "c": arrays(center.state_dict())}


def test_reid_triplet_center_arcface():
    both(reid)


# 12. DINO in full: multi-crop, weight-normalised last layer, schedules, per-group weight decay

def dino_head(lib, in_dim: int, out_dim: int, bottleneck: int = 4):
    nn = lib.nn

    class DINOHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(in_dim, 8), nn.GELU(), nn.Linear(8, bottleneck))
            self.apply(self._init_weights)
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
            self.last_layer.weight_g.data.fill_(1)
            self.last_layer.weight_g.requires_grad = False

        def _init_weights(self, m):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.constant_(m.bias, 0)

        def forward(self, x):
            x = self.mlp(x)
            x = nn.functional.normalize(x, dim=-1, p=2)
            return self.last_layer(x)

    return DINOHead()


def get_params_groups(model):
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or len(param.shape) == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model, clip):
    """DINO's per-parameter clipping."""
    norms = []
    for _, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def dino_full(lib, out_dim: int = 6, ncrops: int = 4, epochs: int = 2):
    F = lib.nn.functional
    student = seeded(lib, dino_head(lib, D_IN, out_dim), 19)
    teacher = dino_head(lib, D_IN, out_dim)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    warm, temp = 0.04, 0.07
    teacher_temp_schedule = np.concatenate((np.linspace(warm, temp, 2), np.ones(epochs) * temp))
    center = lib.zeros(1, out_dim)
    opt = lib.optim.AdamW(get_params_groups(student), lr=0.0)
    niter = epochs * len(VIEWS[:2])
    lr_schedule = 1e-2 * 0.5 * (1 + np.cos(np.pi * np.arange(niter) / niter))
    wd_schedule = np.linspace(0.04, 0.4, niter)
    momentum_schedule = 1 - (1 - 0.99) * (np.cos(np.pi * np.arange(niter) / niter) + 1) / 2
    rec = []
    for epoch in range(epochs):
        for i, (v1, v2) in enumerate(VIEWS[:2]):
            it = len(VIEWS[:2]) * epoch + i
            for j, param_group in enumerate(opt.param_groups):
                param_group["lr"] = lr_schedule[it]
                if j == 0:
                    param_group["weight_decay"] = wd_schedule[it]
            crops = [lib.tensor(v1), lib.tensor(v2), lib.tensor(0.5 * v1), lib.tensor(v2 - v1)]
            teacher_output = teacher(lib.cat(crops[:2]))
            student_output = student(lib.cat(crops))
            student_out = (student_output / 0.1).chunk(ncrops)
            t = teacher_temp_schedule[epoch]
            teacher_out = F.softmax((teacher_output - center) / t, dim=-1).detach().chunk(2)
            total_loss, n_terms = 0, 0
            for iq, q in enumerate(teacher_out):
                for v in range(len(student_out)):
                    if v == iq:
                        continue
                    total_loss += lib.sum(-q * F.log_softmax(student_out[v], dim=-1),
                                          dim=-1).mean()
                    n_terms += 1
            loss = total_loss / n_terms
            with lib.no_grad():
                batch_center = lib.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
                center = center * 0.9 + batch_center * 0.1
            opt.zero_grad()
            loss.backward()
            norms = clip_gradients(student, 0.05)
            if epoch < 1:  # cancel_gradients_last_layer
                for n, p in student.named_parameters():
                    if "last_layer" in n:
                        p.grad = None
            opt.step()
            with lib.no_grad():
                m = momentum_schedule[it]
                for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                    param_k.mul_(m).add_((1 - m) * param_q.detach())
            rec.append({"loss": loss.item(), "norms": norms, "center": arr(center),
                        "teacher": arrays(teacher.state_dict()),
                        "wd": [g["weight_decay"] for g in opt.param_groups]})
    return {"steps": rec, "w": arrays(student.state_dict())}


def test_dino_multicrop_weight_norm_schedules():
    both(dino_full)


# 13. Barlow Twins' LARS: a user-written Optimizer subclass, two groups, checkpoint resume

def lars_class(lib):
    class LARS(lib.optim.Optimizer):
        def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001,
                     weight_decay_filter=False, lars_adaptation_filter=False):
            defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                            weight_decay_filter=weight_decay_filter,
                            lars_adaptation_filter=lars_adaptation_filter)
            super().__init__(params, defaults)

        def exclude_bias_and_norm(self, p):
            return p.ndim == 1

        @lib.no_grad()
        def step(self):
            for g in self.param_groups:
                for p in g["params"]:
                    dp = p.grad
                    if dp is None:
                        continue
                    if not g["weight_decay_filter"] or not self.exclude_bias_and_norm(p):
                        dp = dp.add(p, alpha=g["weight_decay"])
                    if not g["lars_adaptation_filter"] or not self.exclude_bias_and_norm(p):
                        param_norm = lib.norm(p)
                        update_norm = lib.norm(dp)
                        one = lib.ones_like(param_norm)
                        q = lib.where(param_norm > 0.,
                                      lib.where(update_norm > 0,
                                                (g["eta"] * param_norm / update_norm), one), one)
                        dp = dp.mul(q)
                    param_state = self.state[p]
                    if "mu" not in param_state:
                        param_state["mu"] = lib.zeros_like(p)
                    mu = param_state["mu"]
                    mu.mul_(g["momentum"]).add_(dp)
                    p.add_(mu, alpha=-g["lr"])

    return LARS


def barlow_lars(lib, resume_at: int | None = 1, lambd: float = 0.0051):
    nn = lib.nn
    LARS = lars_class(lib)
    backbone = seeded(lib, mlp(lib, D_IN, 16, 6, bias=False), 20)
    bn = nn.BatchNorm1d(6, affine=False)
    param_weights = [p for p in backbone.parameters() if p.ndim != 1]
    param_biases = [p for p in backbone.parameters() if p.ndim == 1]

    def make():
        return LARS([{"params": param_weights}, {"params": param_biases}], lr=0,
                    weight_decay=1e-6, weight_decay_filter=True, lars_adaptation_filter=True)

    opt = make()
    rec = []
    for step, (v1, v2) in enumerate(VIEWS):
        lr = 0.2 * 0.5 * (1 + np.cos(np.pi * step / len(VIEWS)))
        opt.param_groups[0]["lr"] = lr * 0.2
        opt.param_groups[1]["lr"] = lr * 0.0048
        z1, z2 = backbone(lib.tensor(v1)), backbone(lib.tensor(v2))
        c = bn(z1).T @ bn(z2)
        c.div_(N)
        on_diag = lib.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        loss = on_diag + lambd * off_diag
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append({"loss": loss.item(), "w": arrays(backbone.state_dict()),
                    "mu": [arr(opt.state[p]["mu"]) for p in backbone.parameters()]})
        if step == resume_at:
            saved = opt.state_dict()
            opt = make()
            opt.load_state_dict(saved)
    return {"steps": rec}


def test_barlow_lars_custom_optimizer():
    got = both(barlow_lars)
    assert_same(barlow_lars(ng, resume_at=None), got, 0.0)


# 14. the same programs in float32, PyTorch's default

@pytest.fixture
def float32(monkeypatch):
    """float32 defaults and float32 NumPy views (``lib.tensor`` keeps a NumPy array's dtype)."""
    views = [(a.astype(np.float32), b.astype(np.float32)) for a, b in VIEWS]
    monkeypatch.setitem(globals(), "VIEWS", views)
    torch.set_default_dtype(torch.float32)
    ng.set_default_dtype(ng.float32)
    yield
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)


@pytest.mark.parametrize("program", [simclr, byol, moco, vicreg, dino_full, supcon, swav, reid,
                                     barlow_lars])
def test_float32(float32, program):
    both(program, tol=2e-5)


# 15. two more NT-Xent spellings: Spijkervet/SimCLR's masks and diagonals, SimCLR-from-scratch's
# masked_select of exponentiated similarities

class NTXent:
    def __init__(self, lib, batch_size: int, temperature: float, world_size: int = 1):
        nn = lib.nn
        self.lib, self.batch_size, self.temperature = lib, batch_size, temperature
        self.world_size = world_size
        self.mask = self.mask_correlated_samples(batch_size, world_size)
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.similarity_f = nn.CosineSimilarity(dim=2)

    def mask_correlated_samples(self, batch_size, world_size):
        N = 2 * batch_size * world_size
        mask = self.lib.ones((N, N), dtype=bool)
        mask = mask.fill_diagonal_(0)
        for i in range(batch_size * world_size):
            mask[i, batch_size * world_size + i] = 0
            mask[batch_size * world_size + i, i] = 0
        return mask

    def __call__(self, z_i, z_j):
        lib = self.lib
        N = 2 * self.batch_size * self.world_size
        z = lib.cat((z_i, z_j), dim=0)
        sim = self.similarity_f(z.unsqueeze(1), z.unsqueeze(0)) / self.temperature
        sim_i_j = lib.diag(sim, self.batch_size * self.world_size)
        sim_j_i = lib.diag(sim, -self.batch_size * self.world_size)
        positive_samples = lib.cat((sim_i_j, sim_j_i), dim=0).reshape(N, 1)
        negative_samples = sim[self.mask].reshape(N, -1)
        labels = lib.zeros(N).long()
        logits = lib.cat((positive_samples, negative_samples), dim=1)
        loss = self.criterion(logits, labels)
        loss /= N
        return loss


def exp_masked_select(lib, out_1, out_2, temperature: float = 0.5):
    F = lib.nn.functional
    out_1, out_2 = F.normalize(out_1, dim=-1), F.normalize(out_2, dim=-1)
    batch_size = out_1.shape[0]
    out = lib.cat([out_1, out_2], dim=0)
    sim_matrix = lib.exp(lib.mm(out, out.t().contiguous()) / temperature)
    mask = (lib.ones_like(sim_matrix) - lib.eye(2 * batch_size)).bool()
    sim_matrix = sim_matrix.masked_select(mask).view(2 * batch_size, -1)
    pos_sim = lib.exp(lib.sum(out_1 * out_2, dim=-1) / temperature)
    pos_sim = lib.cat([pos_sim, pos_sim], dim=0)
    return (-lib.log(pos_sim / sim_matrix.sum(dim=-1))).mean()


def simclr_variants(lib):
    model = seeded(lib, mlp(lib, D_IN, 16, 4), 21)
    criterion = NTXent(lib, N, 0.5)
    opt = lib.optim.Adam(model.parameters(), lr=3e-3)
    rec = []
    for v1, v2 in VIEWS:
        h_i, h_j = model(lib.tensor(v1)), model(lib.tensor(v2))
        loss = criterion(h_i, h_j)
        loss2 = exp_masked_select(lib, h_i, h_j)
        opt.zero_grad()
        (loss + loss2).backward()
        rec.append({"loss": [loss.item(), loss2.item()], "g": grads(model)})
        opt.step()
    return {"steps": rec, "w": arrays(model.state_dict())}


def test_simclr_nt_xent_variants():
    got = both(simclr_variants)
    # both spellings are the same loss on the same embeddings
    np.testing.assert_allclose(*got["steps"][0]["loss"], rtol=1e-12)


def test_cdist_rejects_bad_arguments():
    """PyTorch refuses an unknown ``compute_mode`` and a NaN ``p``; so does nodegrad, rather than
    ignoring the mode or answering a matrix of NaN."""
    a = ng.ones(2, 3)
    with pytest.raises(ValueError, match="compute_mode"):
        ng.cdist(a, a, compute_mode="use_mm")
    with pytest.raises(ValueError, match="non-negative"):
        ng.cdist(a, a, p=float("nan"))
    for mode in ("use_mm_for_euclid_dist_if_necessary", "use_mm_for_euclid_dist",
                 "donot_use_mm_for_euclid_dist"):
        assert float(ng.nn.functional.cdist(a, a, compute_mode=mode).sum()) == 0.0


# 16. BYOL as lucidrains/byol-pytorch writes it: a forward hook on a hidden layer, a lazily built
# projector, a target made by ``copy.deepcopy`` of the hooked wrapper, ``.data`` EMA updates

def byol_hooked(lib, beta: float = 0.99):
    nn, F = lib.nn, lib.nn.functional

    def flatten(t):
        return t.reshape(t.shape[0], -1)

    def set_requires_grad(model, val):
        for p in model.parameters():
            p.requires_grad = val

    class NetWrapper(nn.Module):
        def __init__(self, net, projection_size, layer=-2):
            super().__init__()
            self.net, self.layer, self.projection_size = net, layer, projection_size
            self.projector = None
            self.hidden = {}
            self.hook_registered = False

        def _find_layer(self):
            if type(self.layer) is str:
                return dict([*self.net.named_modules()]).get(self.layer, None)
            return [*self.net.children()][self.layer]

        def _hook(self, _, input, output):
            self.hidden[input[0].device] = flatten(output)

        def _register_hook(self):
            layer = self._find_layer()
            assert layer is not None, f"hidden layer ({self.layer}) not found"
            layer.register_forward_hook(self._hook)
            self.hook_registered = True

        def _get_projector(self, hidden):
            if self.projector is None:
                _, dim = hidden.shape
                self.projector = seeded(lib, mlp(lib, dim, 8, self.projection_size).to(hidden),
                                        30)
            return self.projector

        def get_representation(self, x):
            if not self.hook_registered:
                self._register_hook()
            self.hidden.clear()
            _ = self.net(x)
            hidden = self.hidden[x.device]
            self.hidden.clear()
            return hidden

        def forward(self, x, return_projection=True):
            representation = self.get_representation(x)
            if not return_projection:
                return representation
            return self._get_projector(representation)(representation), representation

    def loss_fn(x, y):
        x, y = F.normalize(x, dim=-1, p=2), F.normalize(y, dim=-1, p=2)
        return 2 - 2 * (x * y).sum(dim=-1)

    net = seeded(lib, nn.Sequential(nn.Linear(D_IN, 12), nn.ReLU(), nn.Linear(12, 5), nn.ReLU(),
                                    nn.Linear(5, 3)), 31)
    online = NetWrapper(net, 4, layer=-2)
    predictor = seeded(lib, mlp(lib, 4, 8, 4), 32)
    online(lib.tensor(X))  # a first call builds the projector
    target = copy.deepcopy(online)
    set_requires_grad(target, False)
    # SGD: a hidden bias feeding the projector's BatchNorm through always-active ReLUs gets a
    # round-off gradient (~1e-16) that Adam would scale up to ~lr * 1e-8
    opt = lib.optim.SGD(list(online.parameters()) + list(predictor.parameters()), lr=0.05,
                        momentum=0.9)
    rec = []
    for v1, v2 in VIEWS:
        images = lib.cat((lib.tensor(v1), lib.tensor(v2)), dim=0)
        online_projections, _ = online(images)
        online_pred_one, online_pred_two = predictor(online_projections).chunk(2, dim=0)
        with lib.no_grad():
            target_projections, _ = target(images)
            target_proj_one, target_proj_two = target_projections.detach().chunk(2, dim=0)
        loss = loss_fn(online_pred_one, target_proj_two.detach()) + \
            loss_fn(online_pred_two, target_proj_one.detach())
        loss = loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for current_params, ma_params in zip(online.parameters(), target.parameters()):
            old_weight, up_weight = ma_params.data, current_params.data
            ma_params.data = old_weight * beta + (1 - beta) * up_weight
        for current_buffers, ma_buffers in zip(online.buffers(), target.buffers()):
            ma_buffers.copy_(ma_buffers.data * beta + (1 - beta) * current_buffers.data)
        rec.append({"loss": loss.item(), "target": arrays(target.state_dict()),
                    "hidden": [len(online.hidden), len(target.hidden)]})
    return {"steps": rec, "w": arrays(online.state_dict())}


def test_byol_hooked_wrapper_deepcopy():
    both(byol_hooked)


def test_deepcopy_rebinds_method_hooks():
    """A deep-copied module's hooks are deep-copied too (PyTorch's): a bound method of the
    module's owner is bound to the owner's copy, a plain function stays the same."""
    calls = []

    class Owner(ng.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ng.nn.Linear(2, 2)
            self.seen = []
            self.net.register_forward_hook(self.record)
            self.net.register_forward_pre_hook(lambda m, args: calls.append(m))

        def record(self, module, args, output):
            self.seen.append(module)

        def forward(self, x):
            return self.net(x)

    a = Owner()
    b = copy.deepcopy(a)
    b(ng.ones(1, 2))
    assert a.seen == [] and b.seen == [b.net] and calls == [b.net]
    a(ng.ones(1, 2))
    assert a.seen == [a.net] and len(b.seen) == 1


# 17. DINO's MultiCropWrapper: crops of two resolutions, grouped with unique_consecutive

def multicrop(lib):
    nn = lib.nn

    class Backbone(nn.Module):
        """Per-position features averaged over the last axis (any resolution)."""

        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 6)

        def forward(self, x):
            return self.proj(x.transpose(1, 2)).relu().mean(1)

    class MultiCropWrapper(nn.Module):
        def __init__(self, backbone, head):
            super().__init__()
            backbone.fc, backbone.head = nn.Identity(), nn.Identity()
            self.backbone, self.head = backbone, head

        def forward(self, x):
            if not isinstance(x, list):
                x = [x]
            idx_crops = lib.cumsum(lib.unique_consecutive(
                lib.tensor([inp.shape[-1] for inp in x]), return_counts=True)[1], 0)
            start_idx, output = 0, lib.empty(0).to(x[0].device)
            for end_idx in idx_crops:
                _out = self.backbone(lib.cat(x[start_idx: end_idx]))
                if isinstance(_out, tuple):
                    _out = _out[0]
                output = lib.cat((output, _out))
                start_idx = end_idx
            return self.head(output)

    model = seeded(lib, MultiCropWrapper(Backbone(), nn.Linear(6, 4)), 33)
    rng = np.random.default_rng(4)
    crops = [lib.tensor(rng.standard_normal((2, 3, r))) for r in (5, 5, 3, 3, 3)]
    out = model(crops)
    (out ** 2).sum().backward()
    return {"out": arr(out), "g": grads(model)}


def test_dino_multicrop_wrapper():
    both(multicrop)
