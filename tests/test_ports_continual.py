"""Continual-learning, few-shot and multi-task PyTorch programs, ported by changing only the
imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) the way its
paper code or tutorial writes it: EWC (Fisher by a loop and by ``vmap(grad)``, online EWC),
Synaptic Intelligence, LwF, A-GEM and GEM, reservoir experience replay, iCaRL, task-masked
single-head and multi-head models, PackNet, HAT, Prototypical, Matching and Relation Networks,
Reptile, uncertainty-weighted multi-task losses, GradNorm, PCGrad and two-task MGDA. Both runs
start from PyTorch's seeded initial weights and see the same data and the same random draws
(made once with PyTorch), in float64, so every recorded value must agree to rounding.
"""

from __future__ import annotations

import collections
import copy

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, assert_same, both  # noqa: F401
from _ports import seeded_build as seeded

torch = pytest.importorskip("torch")

TOL = 1e-10
GEN = torch.Generator().manual_seed(0)


def randn(*shape: int) -> np.ndarray:
    """Standard normal draws made by PyTorch, as a float64 array both runs read."""
    return torch.randn(*shape, generator=GEN, dtype=torch.float64).numpy().copy()


def randint(high: int, *shape: int) -> np.ndarray:
    """Integer draws in [0, high) made by PyTorch."""
    return torch.randint(0, high, shape, generator=GEN).numpy().copy()


def randperm(n: int) -> np.ndarray:
    """A permutation drawn by PyTorch."""
    return torch.randperm(n, generator=GEN).numpy().copy()




# Three tasks of two classes each (global labels 2t, 2t + 1), five features.
N_TASKS, PER = 3, 12
TASKS = []
for _t in range(N_TASKS):
    _centres = 1.5 * randn(2, 5)
    _y = np.repeat([0, 1], PER // 2)
    TASKS.append((_centres[_y] + randn(PER, 5), _y + 2 * _t))


def task(lib, t: int):
    x, y = TASKS[t]
    return lib.tensor(x), lib.tensor(y)


def mlp(lib, n_out: int = 6):
    nn = lib.nn
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, n_out))


def multihead(lib, n_heads: int = N_TASKS, n_cls: int = 2):
    nn = lib.nn

    class MultiHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh())
            self.heads = nn.ModuleList([nn.Linear(8, n_cls) for _ in range(n_heads)])

        def forward(self, x, t: int):
            return self.heads[t](self.features(x))

    return MultiHead()


# 1. EWC: diagonal Fisher by a per-sample loop and by vmap(grad), penalty, online EWC ---------

class EWC:
    """The EWC of the usual PyTorch repositories: means ``p.clone().detach()``, a diagonal
    Fisher of squared per-sample log-likelihood gradients at the model's own predictions."""

    def __init__(self, lib, model, xs):
        self.lib, self.model, self.xs = lib, model, xs
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._means = {n: p.clone().detach() for n, p in self.params.items()}
        self._precision_matrices = self._diag_fisher()

    def _diag_fisher(self):
        F = self.lib.nn.functional
        precision = {n: p.clone().detach().zero_() for n, p in self.params.items()}
        self.model.eval()
        for x in self.xs:
            self.model.zero_grad()
            output = self.model(x).view(1, -1)
            label = output.max(1)[1].view(-1)
            loss = F.nll_loss(F.log_softmax(output, dim=1), label)
            loss.backward()
            for n, p in self.model.named_parameters():
                precision[n].data += p.grad.data ** 2 / len(self.xs)
        self.model.train()
        return precision

    def penalty(self, model):
        loss = 0
        for n, p in model.named_parameters():
            _loss = self._precision_matrices[n] * (p - self._means[n]) ** 2
            loss += _loss.sum()
        return loss


def fisher_vmap(lib, model, x):
    """The ``torch.func`` per-sample-gradient recipe, squared and averaged."""
    F = lib.nn.functional
    from_func = lib.func
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    with lib.no_grad():
        labels = model(x).argmax(dim=1)

    def compute_loss(params, buffers, sample, target):
        batch = sample.unsqueeze(0)
        predictions = from_func.functional_call(model, (params, buffers), (batch,))
        return F.cross_entropy(predictions, target.unsqueeze(0))

    ft_compute_grad = from_func.grad(compute_loss)
    ft_compute_sample_grad = from_func.vmap(ft_compute_grad, in_dims=(None, None, 0, 0))
    per_sample = ft_compute_sample_grad(params, buffers, x, labels)
    return {k: (g ** 2).mean(0) for k, g in per_sample.items()}


def fisher_one_forward(lib, model, x):
    """One forward, the log-likelihood of each sample differentiated in turn with
    ``retain_graph=True``; and the same through ``jacrev`` of all log-likelihoods."""
    F = lib.nn.functional
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x)
    labels = out.argmax(dim=1, keepdim=True)
    ll = F.log_softmax(out, dim=1).gather(1, labels).squeeze(1)
    fisher = [lib.zeros_like(p) for p in params]
    for i in range(len(x)):
        grads = lib.autograd.grad(ll[i], params, retain_graph=i < len(x) - 1)
        for f, g in zip(fisher, grads):
            f += g.detach() ** 2 / len(x)
    named = {k: v.detach() for k, v in model.named_parameters()}

    def log_likelihoods(p):
        logits = lib.func.functional_call(model, p, (x,))
        return F.log_softmax(logits, dim=1).gather(1, labels).squeeze(1)

    jac = lib.func.jacrev(log_likelihoods)(named)
    return fisher, [(jac[k] ** 2).mean(0) for k in named]


def ewc_program(lib):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, mlp)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rec = {"loss": [], "fisher": [], "vmap": [], "loop": [], "jacrev": [], "online": []}
    ewc, fisher, means, lam, gamma = None, None, None, 5.0, 0.7
    for t in range(N_TASKS):
        x, y = task(lib, t)
        for _ in range(6):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if t == 1:  # offline EWC against task 0
                loss = loss + lam / 2 * ewc.penalty(model)
            if t == 2:  # online EWC: one running Fisher, means at the last task
                reg = sum((fisher[n] * (p - means[n]).pow(2)).sum()
                          for n, p in model.named_parameters())
                loss = loss + lam / 2 * reg
            loss.backward()
            opt.step()
            rec["loss"].append(loss.item())
        ewc = EWC(lib, model, x)
        fv = fisher_vmap(lib, model, x)
        rec["fisher"].append([ewc._precision_matrices[n] for n, _ in model.named_parameters()])
        rec["vmap"].append([fv[n] for n, _ in model.named_parameters()])
        loop, jac = fisher_one_forward(lib, model, x)
        rec["loop"].append(loop)
        rec["jacrev"].append(jac)
        fisher = fv if fisher is None else {n: gamma * fisher[n] + fv[n] for n in fv}
        means = {n: p.detach().clone() for n, p in model.named_parameters()}
        rec["online"].append(list(fisher.values()))
    return rec


def test_ewc_fisher_loop_vmap_online():
    got = both(ewc_program)
    for other in ("vmap", "loop", "jacrev"):  # the Fisher recipes agree
        assert_same(got["fisher"], got[other])


# 2. Synaptic Intelligence: path integral of -grad * delta --------------------------------

def si_program(lib):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, mlp)
    opt = optim.Adam(model.parameters(), lr=0.05)
    si_c, epsilon = 0.5, 0.1
    W = {n: p.detach().clone().zero_() for n, p in model.named_parameters()}
    p_old = {n: p.detach().clone() for n, p in model.named_parameters()}
    prev_task = {n: p.detach().clone() for n, p in model.named_parameters()}
    omega = {n: lib.zeros_like(p) for n, p in model.named_parameters()}
    losses, omegas = [], []
    for t in range(N_TASKS):
        x, y = task(lib, t)
        for _ in range(5):
            surrogate = 0.
            for n, p in model.named_parameters():
                surrogate += (omega[n] * (p - prev_task[n]) ** 2).sum()
            loss = F.cross_entropy(model(x), y) + si_c * surrogate
            opt.zero_grad()
            loss.backward()
            opt.step()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    W[n].add_(-p.grad * (p.detach() - p_old[n]))
                p_old[n] = p.detach().clone()
            losses.append(loss.item())
        for n, p in model.named_parameters():
            p_current = p.detach().clone()
            p_change = p_current - prev_task[n]
            omega[n] = omega[n] + W[n] / (p_change ** 2 + epsilon)
            prev_task[n] = p_current
            W[n].zero_()
        omegas.append(list(omega.values()))
    return {"loss": losses, "omega": omegas}


def test_synaptic_intelligence():
    both(si_program)


def si_buffers_program(lib):
    """SI as the continual-learning baselines write it: the previous-task values and omegas
    registered as buffers named ``{n}_SI_prev_task`` (dots replaced by ``__``)."""
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, mlp)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    si_c, epsilon = 1.0, 0.1

    def surrogate_loss():
        try:
            losses = []
            for n, p in model.named_parameters():
                if p.requires_grad:
                    n = n.replace(".", "__")
                    prev_values = getattr(model, f"{n}_SI_prev_task")
                    omega = getattr(model, f"{n}_SI_omega")
                    losses.append((omega * (p - prev_values) ** 2).sum())
            return sum(losses)
        except AttributeError:
            return lib.tensor(0.0, dtype=lib.float64)

    def update_omega(W, epsilon):
        for n, p in model.named_parameters():
            if p.requires_grad:
                n = n.replace(".", "__")
                p_prev = getattr(model, f"{n}_SI_prev_task")
                p_current = p.detach().clone()
                p_change = p_current - p_prev
                omega_add = W[n] / (p_change ** 2 + epsilon)
                try:
                    omega = getattr(model, f"{n}_SI_omega")
                except AttributeError:
                    omega = p.detach().clone().zero_()
                omega_new = omega + omega_add
                model.register_buffer(f"{n}_SI_prev_task", p_current)
                model.register_buffer(f"{n}_SI_omega", omega_new)

    for n, p in model.named_parameters():
        model.register_buffer(f"{n.replace('.', '__')}_SI_prev_task", p.detach().clone())
    losses = []
    for t in range(N_TASKS):
        x, y = task(lib, t)
        W, p_old = {}, {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                n = n.replace(".", "__")
                W[n] = p.detach().clone().zero_()
                p_old[n] = p.detach().clone()
        for _ in range(5):
            loss = F.cross_entropy(model(x), y) + si_c * surrogate_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            for n, p in model.named_parameters():
                if p.requires_grad:
                    n = n.replace(".", "__")
                    if p.grad is not None:
                        W[n].add_(-p.grad * (p.detach() - p_old[n]))
                    p_old[n] = p.detach().clone()
            losses.append(loss.item())
        update_omega(W, epsilon)
    return {"loss": losses, "state": dict(model.state_dict())}


def test_synaptic_intelligence_buffers():
    got = both(si_buffers_program)
    assert "0__weight_SI_omega" in got["state"]


# 3. LwF: distillation on the old heads with a temperature ----------------------------------

def multi_class_cross_entropy(lib, logits, labels, T):
    """LwF's distillation loss as its reference code writes it."""
    labels = labels.detach()
    outputs = lib.log_softmax(logits / T, dim=1)
    labels = lib.softmax(labels / T, dim=1)
    outputs = lib.sum(outputs * labels, dim=1, keepdim=False)
    outputs = -lib.mean(outputs, dim=0, keepdim=False)
    return outputs


def lwf_program(lib):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, multihead)
    T, lamb = 2.0, 1.0
    old_model, losses, accs = None, [], []
    for t in range(N_TASKS):
        x, y = task(lib, t)
        y = y - 2 * t
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for _ in range(5):
            opt.zero_grad()
            loss = F.cross_entropy(model(x, t), y)
            if old_model is not None:
                with lib.no_grad():
                    targets = [old_model(x, k) for k in range(t)]
                for k in range(t):
                    out = model(x, k)
                    loss += lamb * multi_class_cross_entropy(lib, out, targets[k], T)
                    loss += 0.1 * F.kl_div(F.log_softmax(out / T, dim=1),
                                           F.softmax(targets[k] / T, dim=1),
                                           reduction="batchmean") * T * T
                    loss += 0.1 * F.kl_div(F.log_softmax(out / T, dim=1),
                                           F.log_softmax(targets[k] / T, dim=1),
                                           reduction="batchmean", log_target=True) * T ** 2
            loss.backward()
            opt.step()
            losses.append(loss.item())
        old_model = copy.deepcopy(model)
        old_model.eval()
        for param in old_model.parameters():
            param.requires_grad = False
        with lib.no_grad():
            accs.append([(model(task(lib, k)[0], k).argmax(1) == task(lib, k)[1] - 2 * k)
                         .float().mean().item() for k in range(t + 1)])
    assert all(not p.requires_grad for p in old_model.parameters())
    return {"loss": losses, "acc": accs, "w": dict(model.state_dict())}


def test_lwf_distillation():
    both(lwf_program)


# 4. A-GEM and GEM: gradient projection through flat vectors ------------------------------

def store_grad(lib, pp, grads, grad_dims, tid):
    """GEM's ``store_grad``: the parameters' gradients into column ``tid``."""
    grads[:, tid].fill_(0.0)
    cnt = 0
    for param in pp():
        if param.grad is not None:
            beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
            en = sum(grad_dims[:cnt + 1])
            grads[beg:en, tid].copy_(param.grad.view(-1))
        cnt += 1


def overwrite_grad(pp, newgrad, grad_dims):
    """GEM's ``overwrite_grad``: a flat vector back into the parameters' gradients."""
    cnt = 0
    for param in pp():
        if param.grad is not None:
            beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
            en = sum(grad_dims[:cnt + 1])
            this_grad = newgrad[beg:en].contiguous().view(param.grad.size())
            param.grad.copy_(this_grad)
        cnt += 1


def project2cone2(lib, gradient, memories, steps: int = 200):
    """GEM's projection onto {z : memories^T z >= 0} through its dual (a small non-negative
    least-squares problem, solved on the host by projected gradient as GEM hands it to a QP)."""
    memories_np = memories.cpu().t().double().numpy()
    gradient_np = gradient.cpu().contiguous().view(-1).double().numpy()
    P = memories_np @ memories_np.T
    q = memories_np @ gradient_np
    v = np.zeros(len(q))
    step = 1.0 / np.linalg.eigvalsh(P).max()
    for _ in range(steps):
        v = np.maximum(v - step * (P @ v + q), 0.0)
    x = memories_np.T @ v + gradient_np
    gradient.copy_(lib.tensor(x).view(-1, 1))


MEM = randperm(PER)[:4]


def gem_program(lib, variant: str):
    F, optim = lib.nn.functional, lib.optim
    parameters_to_vector = lib.nn.utils.parameters_to_vector
    vector_to_parameters = lib.nn.utils.vector_to_parameters
    model = seeded(lib, mlp)
    opt = optim.SGD(model.parameters(), lr=0.2)
    grad_dims = [p.numel() for p in model.parameters()]
    grads = lib.zeros(sum(grad_dims), N_TASKS, dtype=lib.float64)
    memory = []
    losses, dots, projected = [], [], 0
    for t in range(N_TASKS):
        x, y = task(lib, t)
        for _ in range(6):
            if memory and variant == "gem":
                for past, (mx, my) in enumerate(memory):
                    model.zero_grad()
                    F.cross_entropy(model(mx), my).backward()
                    store_grad(lib, model.parameters, grads, grad_dims, past)
            if memory and variant == "agem":
                mx = lib.cat([m[0] for m in memory])
                my = lib.cat([m[1] for m in memory])
                opt.zero_grad()
                F.cross_entropy(model(mx), my).backward()
                g_ref = parameters_to_vector([p.grad for p in model.parameters()]).clone()
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if memory and variant == "agem":
                g = parameters_to_vector([p.grad for p in model.parameters()])
                dot = lib.dot(g, g_ref)
                dots.append(dot.item())
                if dot < 0:
                    projected += 1
                    g = g - dot / lib.dot(g_ref, g_ref) * g_ref
                    vector_to_parameters(g, [p.grad for p in model.parameters()])
            if memory and variant == "gem":
                store_grad(lib, model.parameters, grads, grad_dims, t)
                indx = lib.tensor(list(range(t)), dtype=lib.long)
                dotp = lib.mm(grads[:, t].unsqueeze(0), grads.index_select(1, indx))
                dots.append(dotp.view(-1).tolist())
                if (dotp < 0).sum() != 0:
                    projected += 1
                    project2cone2(lib, grads[:, t].unsqueeze(1), grads.index_select(1, indx))
                    overwrite_grad(model.parameters, grads[:, t], grad_dims)
            opt.step()
            losses.append(loss.item())
        memory.append((x[MEM], y[MEM]))
    return {"loss": losses, "dots": dots, "projected": projected,
            "w": dict(model.state_dict())}


@pytest.mark.parametrize("variant", ["agem", "gem"])
def test_agem_gem_projection(variant):
    got = both(gem_program, variant)
    assert got["projected"] > 0  # the projection branch ran


# 5. Experience replay with a reservoir buffer ------------------------------------------------

STREAM_J = randint(10 ** 6, N_TASKS * PER)  # reservoir draws, reduced modulo seen + 1
REPLAY = [randperm(6)[:3] for _ in range(N_TASKS * 4)]


class Reservoir:
    """A reservoir buffer: every example of the stream is kept with probability size/seen."""

    def __init__(self, size: int):
        self.size, self.seen, self.x, self.y = size, 0, [], []

    def add(self, xs, ys, draws):
        for x, y in zip(xs, ys):
            if len(self.x) < self.size:
                self.x.append(x.clone())
                self.y.append(y.clone())
            else:
                j = int(draws[self.seen]) % (self.seen + 1)
                if j < self.size:
                    self.x[j], self.y[j] = x.clone(), y.clone()
            self.seen += 1


def replay_program(lib):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, mlp)
    opt = optim.SGD(model.parameters(), lr=0.1)
    buf = Reservoir(6)
    losses, step = [], 0
    for t in range(N_TASKS):
        x, y = task(lib, t)
        for b in range(0, PER, 3):
            bx, by = x[b:b + 3], y[b:b + 3]
            if buf.x:
                idx = lib.tensor(REPLAY[step] % len(buf.x))
                mem_x, mem_y = lib.stack(buf.x), lib.stack(buf.y)
                bx, by = lib.cat([bx, mem_x[idx]]), lib.cat([by, mem_y[idx]])
            opt.zero_grad()
            loss = F.cross_entropy(model(bx), by)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            buf.add(x[b:b + 3], y[b:b + 3], STREAM_J)
            step += 1
    return {"loss": losses, "buffer": lib.stack(buf.x), "labels": lib.stack(buf.y).tolist(),
            "w": dict(model.state_dict())}


def test_reservoir_replay():
    both(replay_program)


# 6. iCaRL: herding, distillation with sigmoid targets, nearest mean of exemplars -----------

def icarl_program(lib):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim

    def build(lib):
        nn = lib.nn
        return nn.ModuleDict({"features": nn.Sequential(nn.Linear(5, 8), nn.ReLU()),
                              "fc": nn.Linear(8, 6)})

    net = seeded(lib, build)

    def forward(m, x):
        return m["fc"](m["features"](x))

    @lib.no_grad()
    def classify(x):
        """Nearest mean of exemplars over all classes seen."""
        exemplar_means = []
        for e, _ in exemplars:
            f = F.normalize(net["features"](e), p=2, dim=1)
            mu = f.mean(0)
            exemplar_means.append(mu / mu.norm())
        means = lib.stack(exemplar_means)
        feature = F.normalize(net["features"](x), dim=1)
        dists = (feature.unsqueeze(2) - means.t().unsqueeze(0)).pow(2).sum(1).squeeze()
        _, pred = dists.min(1)
        return means, pred

    m_per_class, exemplars, old = 3, [], None
    losses, chosen, preds, means_rec = [], [], [], []
    for t in range(N_TASKS):
        x, y = task(lib, t)
        if exemplars:
            x = lib.cat([x] + [e for e, _ in exemplars])
            y = lib.cat([y] + [lib.full((len(e),), c, dtype=lib.long) for e, c in exemplars])
        n_old = 2 * t
        opt = optim.SGD(net.parameters(), lr=0.5)
        criterion = nn.BCEWithLogitsLoss()
        for _ in range(5):
            out = forward(net, x)
            target = F.one_hot(y, 6).double()
            if old is not None:
                with lib.no_grad():
                    q = lib.sigmoid(forward(old, x))
                target[:, :n_old] = q[:, :n_old]
            loss = criterion(out, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        old = copy.deepcopy(net)
        # herding: exemplars whose running mean tracks the class mean
        xt, yt = task(lib, t)
        for c in (2 * t, 2 * t + 1):
            images = xt[yt == c]
            with lib.no_grad():
                features = F.normalize(net["features"](images), p=2, dim=1)
            class_mean = features.mean(0)
            class_mean = class_mean / class_mean.norm()
            exemplar_set, exemplar_features, picked = [], [], []
            for k in range(1, m_per_class + 1):
                S = lib.sum(lib.stack(exemplar_features), dim=0) if exemplar_features else 0
                mu_p = 1.0 / k * (features + S)
                mu_p = mu_p / mu_p.norm(dim=1, keepdim=True)
                i = int(lib.argmin(lib.sqrt(lib.sum((class_mean - mu_p) ** 2, dim=1))))
                picked.append(i)
                exemplar_set.append(images[i])
                exemplar_features.append(features[i])
            chosen.append(picked)
            exemplars.append((lib.stack(exemplar_set), c))
        means, pred = classify(lib.cat([task(lib, k)[0] for k in range(t + 1)]))
        assert not pred.requires_grad and not means.requires_grad
        preds.append(pred.tolist())
        means_rec.append(means)
    return {"loss": losses, "chosen": chosen, "pred": preds, "means": means_rec}


def test_icarl_herding_nme():
    both(icarl_program)


NEW_ROWS = [randn(2, 8) * 0.3 for _ in range(N_TASKS)]


def expanding_program(lib):
    """Class-incremental training with a growing classifier (iCaRL's ``increment_classes``:
    the old rows copied through ``.data``), weight aligning of the new rows' norms (WA) and a
    LUCIR-style cosine classifier with a learned scale, ``CosineEmbeddingLoss`` on features and
    ``MarginRankingLoss`` on the hardest old classes."""
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim

    def build(lib):
        nn = lib.nn
        return nn.ModuleDict({"features": nn.Sequential(nn.Linear(5, 8), nn.Tanh()),
                              "fc": nn.Linear(8, 2)})

    net = seeded(lib, build)
    sigma = nn.Parameter(lib.tensor(4.0, dtype=lib.float64))
    net["fc"].weight.data[:] = lib.tensor(NEW_ROWS[0])
    old, rec = None, {"loss": [], "gamma": [], "cos": []}
    for t in range(N_TASKS):
        if t > 0:  # grow the head by two classes, keeping the old rows
            fc = net["fc"]
            in_features, out_features = fc.in_features, fc.out_features
            weight, bias = fc.weight.data, fc.bias.data
            net["fc"] = nn.Linear(in_features, out_features + 2, bias=True).to(lib.float64)
            net["fc"].weight.data[:out_features] = weight
            net["fc"].bias.data[:out_features] = bias
            net["fc"].weight.data[out_features:] = lib.tensor(NEW_ROWS[t])
            net["fc"].bias.data[out_features:] = 0.0
        x, y = task(lib, t)
        opt = optim.SGD([{"params": net.parameters()},
                         {"params": [sigma], "lr": 0.01, "weight_decay": 0.0}],
                        lr=0.1, momentum=0.9, weight_decay=1e-3)
        n_old = 2 * t
        for _ in range(4):
            feats = net["features"](x)
            logits = net["fc"](feats)
            cos = F.linear(F.normalize(feats, p=2, dim=1), F.normalize(net["fc"].weight, p=2,
                                                                      dim=1))
            loss = F.cross_entropy(logits, y) + F.cross_entropy(sigma * cos, y)
            if old is not None:
                with lib.no_grad():
                    old_feats = old["features"](x)
                loss = loss + nn.CosineEmbeddingLoss()(feats, old_feats.detach(),
                                                       lib.ones(x.shape[0], dtype=lib.float64))
                gt_scores = cos.gather(1, y.view(-1, 1)).repeat(1, 1)
                hard_scores = cos[:, :n_old].topk(1, dim=1)[0]
                loss = loss + nn.MarginRankingLoss(margin=0.2)(
                    gt_scores.view(-1, 1), hard_scores.view(-1, 1),
                    lib.ones(x.shape[0], 1, dtype=lib.float64))
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec["loss"].append(loss.item())
        if t > 0:  # weight aligning: new rows scaled to the old rows' mean norm
            w = net["fc"].weight.data
            newnorm = lib.norm(w[n_old:, :], p=2, dim=1)
            oldnorm = lib.norm(w[:n_old, :], p=2, dim=1)
            gamma = lib.mean(oldnorm) / lib.mean(newnorm)
            net["fc"].weight.data[n_old:, :] *= gamma
            rec["gamma"].append(gamma.item())
        old = copy.deepcopy(net)
        rec["cos"].append(cos)
    rec["state"] = dict(net.state_dict())
    rec["sigma"] = sigma
    return rec


def test_growing_head_weight_aligning_cosine_classifier():
    both(expanding_program)


# 7. Task-incremental: one masked head vs a ModuleList of heads -----------------------------

def task_masks_program(lib, how: str):
    F, optim = lib.nn.functional, lib.optim
    single = seeded(lib, mlp)
    multi = seeded(lib, multihead, seed=1)
    opt = optim.SGD(list(single.parameters()) + list(multi.parameters()), lr=0.1)
    rec = {"single": [], "multi": [], "acc": []}
    for t in range(N_TASKS):
        x, y = task(lib, t)
        offset1, offset2 = 2 * t, 2 * t + 2
        for _ in range(4):
            output = single(x)
            if how == "inplace":  # GEM's masking of other tasks' logits
                if offset1 > 0:
                    output[:, :offset1].fill_(-10e10)
                if offset2 < 6:
                    output[:, offset2:6].fill_(-10e10)
            else:
                mask = lib.zeros(6, dtype=lib.bool)
                mask[offset1:offset2] = True
                output = output.masked_fill(~mask, float("-inf"))
            loss_s = F.cross_entropy(output, y)
            loss_m = F.cross_entropy(multi(x, t), y - offset1)
            opt.zero_grad()
            (loss_s + loss_m).backward()
            opt.step()
            rec["single"].append(loss_s.item())
            rec["multi"].append(loss_m.item())
        with lib.no_grad():
            for k in range(t + 1):
                xk, yk = task(lib, k)
                logits = single(xk)[:, 2 * k:2 * k + 2]
                rec["acc"].append([(logits.argmax(1) + 2 * k == yk).double().mean().item(),
                                   (multi(xk, k).argmax(1) + 2 * k == yk).double().mean()
                                   .item()])
    rec["w"] = [dict(single.state_dict()), dict(multi.state_dict())]
    return rec


@pytest.mark.parametrize("how", ["inplace", "masked_fill"])
def test_single_head_task_masks_vs_multihead(how):
    both(task_masks_program, how)


# 8. PackNet: prune, freeze the kept weights with gradient hooks, retrain -----------------

def packnet_program(lib):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, multihead)
    owner = {n: lib.zeros_like(p, dtype=lib.long) for n, p in model.named_parameters()
             if n.startswith("features") and n.endswith("weight")}
    losses, handles = [], []
    for t in range(2):
        x, y = task(lib, t)
        y = y - 2 * t
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(5):
            opt.zero_grad()
            loss = F.cross_entropy(model(x, t), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        # prune half of the free weights by magnitude; they go to the next task
        for n, p in model.named_parameters():
            if n not in owner:
                continue
            free = owner[n] == 0
            values = p.detach().abs()[free]
            k = values.numel() // 2
            threshold = values.kthvalue(k).values
            keep = free & (p.detach().abs() > threshold)
            owner[n][keep] = t + 1
            with lib.no_grad():
                p.mul_((owner[n] > 0).double() if t == 0 else lib.ones_like(p))
        for h in handles:
            h.remove()
        handles = []
        for n, p in model.named_parameters():
            if n in owner:
                frozen = (owner[n] > 0).double()
                handles.append(p.register_hook(lambda grad, m=frozen: grad * (1 - m)))
    with lib.no_grad():
        x0, y0 = task(lib, 0)
        masked = {n: p * (owner[n] == 1).double() if n in owner else p
                  for n, p in model.named_parameters()}
        out0 = lib.func.functional_call(model, masked, (x0, 0))
    return {"loss": losses, "owner": [o.tolist() for o in owner.values()],
            "w": dict(model.state_dict()), "out0": out0}


def test_packnet_masks_with_hooks():
    both(packnet_program)


# 9. HAT: hard attention to the task, gradient compensation, embedding clamp -------------

def hat_net(lib):
    nn = lib.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.fc1 = nn.Linear(5, 8)
            self.efc1 = nn.Embedding(N_TASKS, 8)
            self.fc2 = nn.Linear(8, 8)
            self.efc2 = nn.Embedding(N_TASKS, 8)
            self.last = nn.ModuleList([nn.Linear(8, 2) for _ in range(N_TASKS)])
            self.gate = nn.Sigmoid()

        def mask(self, t, s=1):
            gfc1 = self.gate(s * self.efc1(t))
            gfc2 = self.gate(s * self.efc2(t))
            return [gfc1, gfc2]

        def forward(self, t, x, s=1):
            masks = self.mask(t, s=s)
            gfc1, gfc2 = masks
            h = self.relu(self.fc1(x))
            h = h * gfc1.expand_as(h)
            h = self.relu(self.fc2(h))
            h = h * gfc2.expand_as(h)
            y = [head(h) for head in self.last]
            return y, masks

        def get_view_for(self, n, masks):
            gfc1, gfc2 = masks
            if n == "fc1.weight":
                return gfc1.view(-1, 1).expand_as(self.fc1.weight)
            if n == "fc1.bias":
                return gfc1.view(-1)
            if n == "fc2.weight":
                post = gfc2.view(-1, 1).expand_as(self.fc2.weight)
                pre = gfc1.view(1, -1).expand_as(self.fc2.weight)
                return lib.min(post, pre)
            if n == "fc2.bias":
                return gfc2.view(-1)
            return None

    return Net()


def hat_program(lib):
    nn, optim = lib.nn, lib.optim
    model = seeded(lib, hat_net)
    ce = nn.CrossEntropyLoss()
    smax, lamb, thres_cosh, thres_emb, clipgrad = 50.0, 0.75, 50.0, 6.0, 100.0
    mask_pre, mask_back = None, None
    losses, masks_rec = [], []
    for t in range(N_TASKS):
        x, y = task(lib, t)
        y = y - 2 * t
        task_t = lib.tensor([t], dtype=lib.long)
        opt = optim.SGD(model.parameters(), lr=0.05)
        nbatches = 4
        for i in range(nbatches):
            s = (smax - 1 / smax) * i / (nbatches - 1) + 1 / smax
            outputs, masks = model.forward(task_t, x, s=s)
            output = outputs[t]
            reg, count = 0, 0
            if mask_pre is not None:
                for m, mp in zip(masks, mask_pre):
                    aux = 1 - mp
                    reg += (m * aux).sum()
                    count += aux.sum()
            else:
                for m in masks:
                    reg += m.sum()
                    count += np.prod(m.size()).item()
            reg /= count
            loss = ce(output, y) + lamb * reg
            opt.zero_grad()
            loss.backward()
            if t > 0:  # restrict layer gradients in the backprop
                for n, p in model.named_parameters():
                    if n in mask_back:
                        p.grad.data *= mask_back[n]
            for n, p in model.named_parameters():  # compensate the embedding gradients
                if n.startswith("e"):
                    num = lib.cosh(lib.clamp(s * p.data, -thres_cosh, thres_cosh)) + 1
                    den = lib.cosh(p.data) + 1
                    p.grad.data *= smax / s * num / den
            nn.utils.clip_grad_norm_(model.parameters(), clipgrad)
            opt.step()
            for n, p in model.named_parameters():  # constrain the embeddings
                if n.startswith("e"):
                    p.data = lib.clamp(p.data, -thres_emb, thres_emb)
            losses.append(loss.item())
        mask = model.mask(task_t, s=smax)
        for i in range(len(mask)):
            mask[i] = mask[i].detach().clone()
        if t == 0:
            mask_pre = mask
        else:
            for i in range(len(mask_pre)):
                mask_pre[i] = lib.max(mask_pre[i], mask[i])
        mask_back = {}
        for n, _ in model.named_parameters():
            vals = model.get_view_for(n, mask_pre)
            if vals is not None:
                mask_back[n] = 1 - vals
        masks_rec.append([m.detach().clone() for m in mask_pre])
    return {"loss": losses, "masks": masks_rec, "w": dict(model.state_dict())}


def test_hat_attention_masks():
    both(hat_program)


# 10. Few-shot: Prototypical, Matching and Relation Networks ------------------------------

N_CLS, N_PER = 6, 6
FS_X = (2.0 * randn(N_CLS, 1, 5) + randn(N_CLS, N_PER, 5))
N_WAY, K_SHOT, N_QUERY = 3, 2, 3
EPISODES = [(randperm(N_CLS)[:N_WAY], [randperm(N_PER) for _ in range(N_WAY)])
            for _ in range(4)]


def episode(lib, e: int):
    """Support (n_way * k_shot, 5) and query (n_way * n_query, 5), grouped by class."""
    classes, perms = EPISODES[e]
    support = np.stack([FS_X[c, p[:K_SHOT]] for c, p in zip(classes, perms)])
    query = np.stack([FS_X[c, p[K_SHOT:K_SHOT + N_QUERY]] for c, p in zip(classes, perms)])
    return lib.tensor(support.reshape(-1, 5)), lib.tensor(query.reshape(-1, 5))


def encoder(lib):
    """An embedding network. Its last layer has no bias: distances between embeddings do not
    see a shift, so that bias would get a gradient of pure rounding, which Adam amplifies."""
    nn = lib.nn
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))


def euclidean_dist(lib, x, y):
    n, m, d = x.size(0), y.size(0), x.size(1)
    x = x.unsqueeze(1).expand(n, m, d)
    y = y.unsqueeze(0).expand(n, m, d)
    return lib.pow(x - y, 2).sum(2)


def protonet_program(lib, how: str):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, encoder)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    rec = {"loss": [], "acc": [], "dists": []}
    for e in range(len(EPISODES)):
        support, query = episode(lib, e)
        z = model(lib.cat([support, query], 0))
        z_dim = z.size(-1)
        z_proto = z[:N_WAY * K_SHOT].view(N_WAY, K_SHOT, z_dim).mean(1)
        zq = z[N_WAY * K_SHOT:]
        if how == "cdist":
            dists = lib.cdist(zq, z_proto) ** 2
        else:
            dists = euclidean_dist(lib, zq, z_proto)
        log_p_y = F.log_softmax(-dists, dim=1).view(N_WAY, N_QUERY, -1)
        target_inds = lib.arange(0, N_WAY).view(N_WAY, 1, 1).expand(N_WAY, N_QUERY, 1).long()
        loss_val = -log_p_y.gather(2, target_inds).squeeze().view(-1).mean()
        _, y_hat = log_p_y.max(2)
        acc_val = lib.eq(y_hat, target_inds.squeeze()).float().mean()
        opt.zero_grad()
        loss_val.backward()
        opt.step()
        sched.step()
        rec["loss"].append(loss_val.item())
        rec["acc"].append(acc_val.item())
        rec["dists"].append(dists)
    rec["w"] = dict(model.state_dict())
    return rec


@pytest.mark.parametrize("how", ["cdist", "expand"])
def test_prototypical_networks(how):
    both(protonet_program, how)


def protonet_batched(lib):
    """Several episodes per step as one batch: (B, way * shot, D) supports, a batched
    ``cdist``, prototypes by ``mean`` over the shot axis, ``cross_entropy`` on -distances."""
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, encoder)
    opt = optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    support = lib.stack([episode(lib, e)[0] for e in range(len(EPISODES))])
    query = lib.stack([episode(lib, e)[1] for e in range(len(EPISODES))])
    b = support.shape[0]
    labels = lib.arange(N_WAY).repeat_interleave(N_QUERY).repeat(b)
    rec = {"loss": [], "acc": []}
    for _ in range(3):
        prototypes = model(support).reshape(b, N_WAY, K_SHOT, -1).mean(dim=2)
        embeddings = model(query)
        dists = lib.cdist(embeddings, prototypes, p=2.0).pow(2)
        logits = (-dists).flatten(0, 1)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec["loss"].append(loss.item())
        rec["acc"].append(acc.item())
    rec["w"] = dict(model.state_dict())
    return rec


def test_prototypical_networks_batched_episodes():
    both(protonet_batched)


def matching_program(lib, how: str):
    F, optim = lib.nn.functional, lib.optim
    model = seeded(lib, encoder)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    rec = {"loss": [], "sims": []}
    ys = lib.arange(N_WAY).repeat_interleave(K_SHOT)
    yq = lib.arange(N_WAY).repeat_interleave(N_QUERY)
    for e in range(len(EPISODES)):
        support, query = episode(lib, e)
        s, q = model(support), model(query)
        if how == "functional":
            similarities = F.cosine_similarity(q.unsqueeze(1), s.unsqueeze(0), dim=2)
        else:  # the DistanceNetwork of the reference Matching Networks port
            eps = 1e-10
            similarities = []
            for support_image in s:
                sum_support = lib.sum(lib.pow(support_image, 2), 0)
                support_magnitude = sum_support.clamp(eps, float("inf")).rsqrt()
                dot_product = q.unsqueeze(1).bmm(
                    support_image.unsqueeze(0).expand(len(q), -1).unsqueeze(2)).squeeze()
                similarities.append(dot_product * support_magnitude)
            similarities = lib.stack(similarities).t()
        attention = F.softmax(similarities * 5.0, dim=1)
        preds = attention.unsqueeze(1).bmm(
            F.one_hot(ys, N_WAY).double().unsqueeze(0).expand(len(q), -1, -1)).squeeze(1)
        loss = F.nll_loss(lib.log(preds + 1e-8), yq)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec["loss"].append(loss.item())
        rec["sims"].append(similarities)
    rec["w"] = dict(model.state_dict())
    return rec


@pytest.mark.parametrize("how", ["functional", "distance_network"])
def test_matching_networks(how):
    both(matching_program, how)


def relation_program(lib):
    nn, optim = lib.nn, lib.optim

    def build(lib):
        nn = lib.nn
        return nn.ModuleDict({
            "feature": nn.Sequential(nn.Linear(5, 8), nn.ReLU()),
            "relation": nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1),
                                      nn.Sigmoid())})

    net = seeded(lib, build)
    feature_encoder, relation_network = net["feature"], net["relation"]
    f_opt = optim.Adam(feature_encoder.parameters(), lr=1e-2)
    r_opt = optim.Adam(relation_network.parameters(), lr=1e-2)
    f_sched = optim.lr_scheduler.StepLR(f_opt, step_size=2, gamma=0.5)
    mse = nn.MSELoss()
    labels = lib.arange(N_WAY).repeat_interleave(N_QUERY)
    rec = {"loss": [], "rel": []}
    for e in range(len(EPISODES)):
        support, query = episode(lib, e)
        sample_features = feature_encoder(support).view(N_WAY, K_SHOT, 8).sum(1)
        batch_features = feature_encoder(query)
        sample_features_ext = sample_features.unsqueeze(0).repeat(N_WAY * N_QUERY, 1, 1)
        batch_features_ext = batch_features.unsqueeze(0).repeat(N_WAY, 1, 1)
        batch_features_ext = lib.transpose(batch_features_ext, 0, 1)
        relation_pairs = lib.cat((sample_features_ext, batch_features_ext), 2).view(-1, 16)
        relations = relation_network(relation_pairs).view(-1, N_WAY)
        one_hot_labels = lib.zeros(N_WAY * N_QUERY, N_WAY, dtype=lib.float64).scatter_(
            1, labels.view(-1, 1), 1)
        loss = mse(relations, one_hot_labels)
        feature_encoder.zero_grad()
        relation_network.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(feature_encoder.parameters(), 0.5)
        lib.nn.utils.clip_grad_norm_(relation_network.parameters(), 0.5)
        f_opt.step()
        r_opt.step()
        f_sched.step()
        rec["loss"].append(loss.item())
        rec["rel"].append(relations)
    rec["w"] = dict(net.state_dict())
    return rec


def test_relation_networks():
    both(relation_program)


IMG = randn(N_CLS, N_PER, 1, 6, 6)


def relation_cnn(lib):
    """The Omniglot Relation Network's encoder and relation module, at a tiny size."""
    nn, F = lib.nn, lib.nn.functional

    class CNNEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(nn.Conv2d(1, 4, kernel_size=3, padding=0),
                                        nn.BatchNorm2d(4, momentum=1, affine=True),
                                        nn.ReLU(), nn.MaxPool2d(2))
            self.layer2 = nn.Sequential(nn.Conv2d(4, 4, kernel_size=1, padding=0),
                                        nn.BatchNorm2d(4, momentum=1, affine=True), nn.ReLU())

        def forward(self, x):
            return self.layer2(self.layer1(x))

    class RelationNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = nn.Sequential(nn.Conv2d(8, 4, kernel_size=1, padding=0),
                                        nn.BatchNorm2d(4, momentum=1, affine=True),
                                        nn.ReLU(), nn.MaxPool2d(2))
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 1)

        def forward(self, x):
            out = self.layer1(x)
            out = out.view(out.size(0), -1)
            out = F.relu(self.fc1(out))
            return F.sigmoid(self.fc2(out))

    return nn.ModuleList([CNNEncoder(), RelationNetwork()])


def relation_conv_program(lib):
    """The Omniglot Relation Network: conv blocks with ``BatchNorm2d(momentum=1)``, feature
    maps of support and query concatenated on the channel axis, then evaluated in eval mode."""
    nn, optim = lib.nn, lib.optim
    net = seeded(lib, relation_cnn)
    feature_encoder, relation_network = net
    f_opt = optim.Adam(feature_encoder.parameters(), lr=1e-2)
    r_opt = optim.Adam(relation_network.parameters(), lr=1e-2)
    mse = nn.MSELoss()
    rec = {"loss": []}
    for e in range(3):
        classes, perms = EPISODES[e]
        samples = lib.tensor(np.stack([IMG[c, p[:1]] for c, p in zip(classes, perms)])
                             .reshape(-1, 1, 6, 6))
        batches = lib.tensor(np.stack([IMG[c, p[1:3]] for c, p in zip(classes, perms)])
                             .reshape(-1, 1, 6, 6))
        batch_labels = lib.arange(N_WAY).repeat_interleave(2)
        sample_features = feature_encoder(samples)
        batch_features = feature_encoder(batches)
        sample_features_ext = sample_features.unsqueeze(0).repeat(len(batches), 1, 1, 1, 1)
        batch_features_ext = batch_features.unsqueeze(0).repeat(N_WAY, 1, 1, 1, 1)
        batch_features_ext = lib.transpose(batch_features_ext, 0, 1)
        relation_pairs = lib.cat((sample_features_ext, batch_features_ext), 2).view(-1, 8, 2, 2)
        relations = relation_network(relation_pairs).view(-1, N_WAY)
        one_hot_labels = lib.zeros(len(batches), N_WAY, dtype=lib.float64).scatter_(
            1, batch_labels.view(-1, 1), 1)
        loss = mse(relations, one_hot_labels)
        feature_encoder.zero_grad()
        relation_network.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(feature_encoder.parameters(), 0.5)
        nn.utils.clip_grad_norm_(relation_network.parameters(), 0.5)
        f_opt.step()
        r_opt.step()
        rec["loss"].append(loss.item())
    net.eval()
    with lib.no_grad():
        rec["eval"] = feature_encoder(lib.tensor(IMG[0]))
    rec["state"] = dict(net.state_dict())
    return rec


def test_relation_networks_conv_bn_momentum_one():
    both(relation_conv_program)


# 11. Reptile: the sine-wave script and a batched variant with an outer optimiser ---------

SINE = [(np.random.default_rng(i).uniform(0.1, 5.0), np.random.default_rng(i).uniform(0, np.pi))
        for i in range(4)]
SINE_X = np.linspace(-5, 5, 10)[:, None]
SINE_ORDER = [randperm(10) for _ in range(4)]


def sine_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def reptile_script(lib):
    """OpenAI's Reptile sine example in PyTorch: ``param.data -= lr * param.grad.data`` and a
    ``load_state_dict`` of the interpolated weights."""
    model = seeded(lib, sine_net)
    innerstepsize, innerepochs, outerstepsize0, niterations = 0.02, 2, 0.1, len(SINE)

    def train_on_batch(x, y):
        x, y = lib.tensor(x), lib.tensor(y)
        model.zero_grad()
        ypred = model(x)
        loss = (ypred - y).pow(2).mean()
        loss.backward()
        for param in model.parameters():
            param.data -= innerstepsize * param.grad.data
        return loss.item()

    losses = []
    for iteration in range(niterations):
        weights_before = copy.deepcopy(model.state_dict())
        amp, phase = SINE[iteration]
        y_all = amp * np.sin(SINE_X + phase)
        inds = SINE_ORDER[iteration]
        for _ in range(innerepochs):
            for start in range(0, len(SINE_X), 5):
                mbinds = inds[start:start + 5]
                losses.append(train_on_batch(SINE_X[mbinds], y_all[mbinds]))
        outerstepsize = outerstepsize0 * (1 - iteration / niterations)
        weights_after = model.state_dict()
        model.load_state_dict({name: weights_before[name] + (weights_after[name] -
                               weights_before[name]) * outerstepsize
                               for name in weights_before})
    return {"loss": losses, "w": dict(model.state_dict())}


def reptile_batched(lib):
    """Reptile with a copied model per task, the interpolation under ``no_grad`` with in-place
    tensor ops, and an outer Adam step on ``p.grad = p - q``."""
    F, optim = lib.nn.functional, lib.optim
    parameters_to_vector = lib.nn.utils.parameters_to_vector
    vector_to_parameters = lib.nn.utils.vector_to_parameters
    model = seeded(lib, sine_net)
    meta_opt = optim.Adam(model.parameters(), lr=1e-2)
    epsilon, losses = 0.5, []
    for iteration in range(3):
        for half in range(2):
            tasks = SINE[2 * half:2 * half + 2]
            deltas = [lib.zeros_like(p) for p in model.parameters()]
            for amp, phase in tasks:
                fast = copy.deepcopy(model)
                inner = optim.SGD(fast.parameters(), lr=0.02)
                x = lib.tensor(SINE_X)
                y = amp * lib.sin(x + phase)
                for _ in range(3):
                    inner.zero_grad()
                    loss = F.mse_loss(fast(x), y)
                    loss.backward()
                    inner.step()
                    losses.append(loss.item())
                for d, p, q in zip(deltas, model.parameters(), fast.parameters()):
                    d.add_(q.detach() - p.detach(), alpha=1 / len(tasks))
            if iteration == 0 and half == 0:
                with lib.no_grad():
                    for p, d in zip(model.parameters(), deltas):
                        p.add_(d, alpha=epsilon)
            elif iteration == 0:
                theta = parameters_to_vector(model.parameters())
                delta = parameters_to_vector(deltas)
                vector_to_parameters(theta + epsilon * delta, model.parameters())
            else:
                meta_opt.zero_grad()
                for p, d in zip(model.parameters(), deltas):
                    p.grad = -d
                meta_opt.step()
    return {"loss": losses, "w": dict(model.state_dict())}


def test_reptile_sine_script():
    both(reptile_script)


def test_reptile_batched_outer_optimizer():
    both(reptile_batched)


# 12. Multi-task: uncertainty weighting, GradNorm, PCGrad, two-task MGDA ------------------

MT_X = randn(16, 5)
MT_Y1 = np.tanh(MT_X @ randn(5, 1))
MT_Y2 = (MT_X[:, 0] - MT_X[:, 1] > 0).astype(np.int64)
MT_Y3 = -MT_Y1 + 0.3 * randn(16, 1)


def shared_net(lib, n_tasks: int = 2):
    nn = lib.nn

    class MTL(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
            self.reg = nn.Linear(8, 1)
            self.cls = nn.Linear(8, 2)
            if n_tasks == 3:
                self.reg2 = nn.Linear(8, 1)

        def forward(self, x):
            h = self.shared(x)
            outs = [self.reg(h), self.cls(h)]
            if n_tasks == 3:
                outs.append(self.reg2(h))
            return outs

        def get_last_shared_layer(self):
            return self.shared[2]

    return MTL()


def task_losses(lib, outs):
    F = lib.nn.functional
    losses = [F.mse_loss(outs[0], lib.tensor(MT_Y1)), F.cross_entropy(outs[1], lib.tensor(MT_Y2))]
    if len(outs) == 3:
        losses.append(F.mse_loss(outs[2], lib.tensor(MT_Y3)))
    return losses


def uncertainty_program(lib):
    nn, optim = lib.nn, lib.optim

    class MultiTaskLoss(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.log_vars = nn.Parameter(lib.zeros(n, dtype=lib.float64))

        def forward(self, losses):
            precision = lib.exp(-self.log_vars)
            return lib.sum(precision * losses + self.log_vars)

    model, criterion = seeded(lib, shared_net), MultiTaskLoss(2)
    opt = optim.Adam(list(model.parameters()) + list(criterion.parameters()), lr=0.05)
    rec = {"loss": [], "log_vars": []}
    x = lib.tensor(MT_X)
    for _ in range(8):
        loss = criterion(lib.stack(task_losses(lib, model(x))))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec["loss"].append(loss.item())
        rec["log_vars"].append(criterion.log_vars.detach().clone())
    return rec


def test_uncertainty_weighting():
    both(uncertainty_program)


def gradnorm_program(lib):
    optim = lib.optim
    model = seeded(lib, shared_net)
    model.weights = lib.nn.Parameter(lib.ones(2, dtype=lib.float64))
    opt = optim.SGD(model.parameters(), lr=0.05)
    alpha, n_tasks, x = 1.5, 2, lib.tensor(MT_X)
    rec = {"loss": [], "weights": [], "norms": []}
    initial_task_loss = None
    for t in range(6):
        task_loss = lib.stack(task_losses(lib, model(x)))
        weighted_task_loss = lib.mul(model.weights, task_loss)
        if t == 0:
            initial_task_loss = task_loss.detach().numpy()
        loss = lib.sum(weighted_task_loss)
        opt.zero_grad(set_to_none=False)
        loss.backward(retain_graph=True)
        model.weights.grad.data = model.weights.grad.data * 0.0
        W = model.get_last_shared_layer()
        norms = []
        for i in range(len(task_loss)):
            gygw = lib.autograd.grad(weighted_task_loss[i], W.weight, retain_graph=True,
                                     create_graph=True)[0]
            norms.append(lib.norm(gygw))
        norms = lib.stack(norms)
        loss_ratio = task_loss.detach().numpy() / initial_task_loss
        inverse_train_rate = loss_ratio / np.mean(loss_ratio)
        mean_norm = np.mean(norms.detach().numpy())
        constant_term = lib.tensor(mean_norm * (inverse_train_rate ** alpha), requires_grad=False)
        grad_norm_loss = lib.sum(lib.abs(norms - constant_term))
        model.weights.grad = lib.autograd.grad(grad_norm_loss, model.weights)[0]
        opt.step()
        normalize_coeff = n_tasks / lib.sum(model.weights.data, dim=0)
        model.weights.data = model.weights.data * normalize_coeff
        rec["loss"].append(loss.item())
        rec["weights"].append(model.weights.detach().clone())
        rec["norms"].append(norms)
    rec["w"] = dict(model.state_dict())
    return rec


def test_gradnorm():
    both(gradnorm_program)


PC_ORDER = [[randperm(3) for _ in range(3)] for _ in range(5)]


def pcgrad_program(lib):
    optim = lib.optim
    model = seeded(lib, lambda lib: shared_net(lib, 3))
    params = list(model.parameters())
    opt = optim.Adam(params, lr=0.02)
    x = lib.tensor(MT_X)
    rec = {"loss": [], "conflicts": 0}
    for step in range(5):
        losses = task_losses(lib, model(x))
        grads = []
        for loss in losses:
            opt.zero_grad(set_to_none=False)
            loss.backward(retain_graph=True)
            grads.append(lib.cat([p.grad.flatten() if p.grad is not None
                                  else lib.zeros(p.numel(), dtype=p.dtype, device=p.device)
                                  for p in params]).clone())
        pc_grad = [g.clone() for g in grads]
        for i, g_i in enumerate(pc_grad):
            for j in PC_ORDER[step][i].tolist():
                if j == i:
                    continue
                g_j = grads[j]
                g_i_g_j = lib.dot(g_i, g_j)
                if g_i_g_j < 0:
                    rec["conflicts"] += 1
                    g_i -= g_i_g_j * g_j / (g_j.norm() ** 2)
        merged = lib.stack(pc_grad).sum(dim=0)
        idx = 0
        for p in params:
            n = p.numel()
            p.grad = merged[idx:idx + n].view_as(p).clone()
            idx += n
        opt.step()
        rec["loss"].append([loss.item() for loss in losses])
    rec["w"] = dict(model.state_dict())
    return rec


def test_pcgrad():
    got = both(pcgrad_program)
    assert got["conflicts"] > 0


def min_norm_element_from2(v1v1: float, v1v2: float, v2v2: float):
    """MGDA-UB's analytic two-point min-norm solution (MinNormSolver)."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def mgda_program(lib):
    optim = lib.optim
    model = seeded(lib, shared_net)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    x = lib.tensor(MT_X)
    heads = [model.reg, model.cls]
    rec = {"loss": [], "scale": []}
    for _ in range(6):
        opt.zero_grad()
        with lib.no_grad():
            rep = model.shared(x)
        rep_variable = rep.detach().clone().requires_grad_(True)
        grads, loss_data = [], []
        for t in range(len(heads)):
            opt.zero_grad()
            loss_t = task_losses(lib, [h(rep_variable) for h in heads])[t]
            loss_data.append(loss_t.item())
            loss_t.backward()
            grads.append(rep_variable.grad.clone().view(-1))
            rep_variable.grad.zero_()
        grads = [g / loss_data[t] for t, g in enumerate(grads)]  # 'loss+' normalisation
        gamma, _ = min_norm_element_from2(lib.dot(grads[0], grads[0]).item(),
                                          lib.dot(grads[0], grads[1]).item(),
                                          lib.dot(grads[1], grads[1]).item())
        scale = [gamma, 1 - gamma]
        opt.zero_grad()
        losses = task_losses(lib, model(x))
        loss = scale[0] * losses[0] + scale[1] * losses[1]
        loss.backward()
        opt.step()
        rec["loss"].append(loss.item())
        rec["scale"].append(scale)
    rec["w"] = dict(model.state_dict())
    return rec


def test_mgda_two_tasks():
    both(mgda_program)


# 13. Compiled: a whole EWC step with gradient-mask hooks, a compiled few-shot encoder ------

def compiled_program(lib, **compile_kw):
    """``lib.compile`` of a training step (zero_grad, a multi-head loss with an EWC penalty
    read from dicts, backward through parameter hooks, clipping, SGD with momentum) and of a
    Prototypical Network encoder module trained across episodes."""
    F = lib.nn.functional
    model = seeded(lib, multihead)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    means = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: lib.ones_like(p) * 0.5 for n, p in model.named_parameters()}
    masks = {n: (p.detach().abs() > 0.2).double() for n, p in model.named_parameters()
             if n.startswith("features")}
    for n, p in model.named_parameters():
        if n in masks:
            p.register_hook(lambda grad, m=masks[n]: grad * m)

    @lib.compile(**compile_kw)
    def train_step(x, y, t):
        opt.zero_grad()
        loss = F.cross_entropy(model(x, t), y)
        reg = sum((fisher[n] * (p - means[n]) ** 2).sum() for n, p in model.named_parameters())
        loss = loss + 2.0 * reg
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    rec = {"loss": []}
    for t in range(2):
        x, y = task(lib, t)
        for _ in range(4):
            rec["loss"].append(train_step(x, y - 2 * t, t).item())
    rec["w"] = dict(model.state_dict())

    encoder_net = seeded(lib, encoder)
    compiled = lib.compile(encoder_net, **compile_kw)
    enc_opt = lib.optim.SGD(encoder_net.parameters(), lr=0.1)
    labels = lib.arange(N_WAY).repeat_interleave(N_QUERY)
    for e in range(len(EPISODES)):
        support, query = episode(lib, e)
        z = compiled(lib.cat([support, query], 0))
        z_proto = z[:N_WAY * K_SHOT].view(N_WAY, K_SHOT, -1).mean(1)
        dists = lib.cdist(z[N_WAY * K_SHOT:], z_proto) ** 2
        loss = F.cross_entropy(-dists, labels)
        enc_opt.zero_grad()
        loss.backward()
        enc_opt.step()
        rec["loss"].append(loss.item())
    rec["encoder"] = dict(encoder_net.state_dict())
    return rec


def test_compiled_ewc_step_and_encoder():
    ref = compiled_program(torch, disable=True)  # PyTorch eager is the reference
    got = compiled_program(ng)
    assert_same(arr(got), arr(ref))


# 14. Heads added per task: ModuleList.append, add_param_group, a frozen trunk -------------

def growing_heads_program(lib):
    """Task-incremental training that appends a head per task and hands it to the running
    optimizer (``add_param_group``, or ``param_groups[0]["params"].extend``); after the first
    task the trunk is frozen with ``requires_grad_(False)``; the optimizer is rebuilt with an
    assigned ``param_groups[0]["params"]`` and resumed; one over ``filter(requires_grad)``."""
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim
    model = seeded(lib, lambda lib: multihead(lib, n_heads=1))
    opt = optim.Adam(model.parameters(), lr=0.02, weight_decay=1e-3)
    rec = {"loss": [], "groups": [], "norm": []}
    for t in range(N_TASKS):
        if t > 0:
            torch.manual_seed(t)
            head = nn.Linear(8, 2).to(lib.float64)
            with lib.no_grad():
                head.weight.copy_(lib.tensor(NEW_ROWS[t][:, :8].reshape(2, 8)))
                head.bias.zero_()
            model.heads.append(head)
            if t == 1:
                opt.add_param_group({"params": head.parameters(), "lr": 0.05})
            else:
                opt.param_groups[0]["params"].extend(head.parameters())
        if t == 1:
            model.features.requires_grad_(False)
        x, y = task(lib, t)
        for _ in range(4):
            opt.zero_grad()
            loss = F.cross_entropy(model(x, t), y - 2 * t)
            loss.backward()
            rec["norm"].append(float(nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None], 1.0, norm_type="inf")))
            opt.step()
            rec["loss"].append(loss.item())
        rec["groups"].append([len(g["params"]) for g in opt.param_groups])
    saved = opt.state_dict()
    rebuilt = optim.Adam(model.parameters(), lr=0.02, weight_decay=1e-3)
    head1 = list(model.heads[1].parameters())
    rebuilt.param_groups[0]["params"] = [p for p in model.parameters()
                                         if all(p is not q for q in head1)]
    rebuilt.add_param_group({"params": head1, "lr": 0.05})
    rebuilt.load_state_dict(saved)
    finetune = optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1)
    x, y = task(lib, 0)
    for opt_ in (rebuilt, finetune):
        opt_.zero_grad()
        F.cross_entropy(model(x, 0), y).backward()
        opt_.step()
    rec["w"] = dict(model.state_dict())
    rec["frozen"] = [p.grad is None for p in model.features.parameters()]
    return rec


def test_heads_added_per_task_param_groups():
    both(growing_heads_program)


def edited_groups(lib, how: str):
    """An optimizer whose ``param_groups[0]["params"]`` is edited after it was built."""
    a, b = lib.nn.Linear(2, 2).double(), lib.nn.Linear(2, 1).double()
    with lib.no_grad():
        for p in [*a.parameters(), *b.parameters()]:
            p.fill_(0.5)
    x = lib.ones(3, 2, dtype=lib.float64)
    if how == "assign":
        opt = lib.optim.SGD([*a.parameters(), *b.parameters()], lr=0.1)
        opt.param_groups[0]["params"] = list(a.parameters())
        opt.add_param_group({"params": b.parameters(), "lr": 0.01})
        groups = [len(g["params"]) for g in opt.state_dict()["param_groups"]]
    else:  # a step, then more parameters appended to the group
        opt = lib.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
        opt.zero_grad()
        b(a(x)).sum().backward()
        opt.step()
        opt.param_groups[0]["params"].extend(b.parameters())
        groups = [len(opt.param_groups[0]["params"])]
    for _ in range(2):
        opt.zero_grad()
        b(a(x)).sum().backward()
        opt.step()
    return {"w": [a.weight, b.weight, b.bias], "groups": groups}


@pytest.mark.parametrize("how", ["assign", "extend"])
def test_optimizer_follows_edited_param_groups(how):
    both(edited_groups, how)


# 15. functional_call over a plain tensor attribute (a fixed mask kept unregistered) --------

def masked_net(lib):
    nn = lib.nn

    class MaskedNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 2)
            self.mask = lib.ones(2, 5)  # a plain attribute: neither parameter nor buffer

        def forward(self, x):
            return F.linear(x, self.fc.weight * self.mask, self.fc.bias)

    F = lib.nn.functional
    return MaskedNet()


def tensor_attribute_program(lib):
    model = seeded(lib, masked_net)
    model.mask = lib.tensor(np.ones((2, 5)))
    x, y = task(lib, 0)
    mask = lib.tensor((TASKS[1][0][:2] > 0).astype(np.float64))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(params, mask):
        out = lib.func.functional_call(model, {**params, "mask": mask}, (x,))
        return lib.nn.functional.cross_entropy(out, y % 2)

    value = loss(params, mask)
    grads = lib.func.grad(loss, argnums=(0, 1))(params, mask)
    return {"value": value, "grads": grads[0], "mask_grad": grads[1], "after": model(x)}


def test_functional_call_replaces_tensor_attribute():
    both(tensor_attribute_program)


# 16. Optimizer state reset between tasks -------------------------------------------------

def reset_state_program(lib, how: str):
    """One Adam across tasks whose state is reset at each task boundary, the ways PyTorch
    code does it: a fresh ``defaultdict``, ``del state[p]``, ``state[p] = {}``, ``clear()``."""
    F = lib.nn.functional
    model = seeded(lib, mlp)
    opt = lib.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for t in range(N_TASKS):
        x, y = task(lib, t)
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if how == "defaultdict":
            opt.state = collections.defaultdict(dict)
        elif how == "del":
            for p in model[2].parameters():  # only the classifier starts afresh
                del opt.state[p]
        elif how == "assign":
            for p in model.parameters():
                opt.state[p] = {}
        else:
            opt.state.clear()
    return {"loss": losses, "w": dict(model.state_dict())}


@pytest.mark.parametrize("how", ["defaultdict", "del", "assign", "clear"])
def test_optimizer_state_reset_between_tasks(how):
    both(reset_state_program, how)
