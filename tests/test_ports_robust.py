"""Robustness, interpretability, calibration and optimiser-research programs from PyTorch,
ported by changing only the imports.

Each program (FGSM and PGD attacks, fast and free adversarial training, TRADES, MART, the C&W
attack; saliency, SmoothGrad, Integrated Gradients, Grad-CAM, guided backprop; Hessian-vector
products for influence functions (LiSSA, CG), PyHessian, TracIn; SAM, Lookahead, SWA;
temperature scaling and ECE; distillation, mixup / CutMix, label smoothing, MC dropout) is
written once against a library ``lib`` (``torch`` or ``nodegrad``). Both runs start from the
same seeded weights; random draws are made with PyTorch and the same arrays fed to both, so
losses, gradients, perturbations and weights agree in float64 step by step; ``.data`` is
written as the programs write it (``x.grad.data``, ``p.data.add_(...)``, ``delta.data = ...``).
"""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from _ports import (accuracy, arr, arrays, assert_same,  # noqa: F401
                    float64_one_thread, seeded)

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(0)
N, C = 8, 3
IMAGES = RNG.uniform(0, 1, (N, 1, 8, 8))
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
MEAN, STD = 0.1307, 0.3081

pytestmark = pytest.mark.usefixtures("float64_one_thread")
#: PyTorch's implementation keywords, in its groups (see test_ports_training)
IMPL_KEYS = {"foreach", "fused", "capturable", "differentiable"}


def both(fn, *args, tol: float = TOL, **kw):
    ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


def draws(shape, kind: str = "randn", seed: int = 0, **kw) -> np.ndarray:
    """Random numbers drawn with PyTorch (as a program would), as an array both runs use."""
    g = torch.Generator().manual_seed(seed)
    if kind == "randn":
        return torch.randn(shape, generator=g, dtype=torch.float64).numpy()
    if kind == "uniform":
        lo, hi = kw.get("low", 0.0), kw.get("high", 1.0)
        return torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=g).numpy()
    if kind == "randperm":
        return torch.randperm(shape, generator=g).numpy()
    raise ValueError(kind)


def net(lib, dropout: float = 0.25, bn: bool = False):
    """The FGSM tutorial's LeNet, shrunk: two convolutions, max pooling, dropout, two linears."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, 1)
            self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
            self.conv2 = nn.Conv2d(4, 6, 3, 1)
            self.dropout1 = nn.Dropout(dropout)
            self.fc1 = nn.Linear(6 * 2 * 2, 10)
            self.fc2 = nn.Linear(10, C)

        def forward(self, x):
            x = F.relu(self.bn(self.conv1(x)))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = lib.flatten(x, 1)
            x = F.relu(self.fc1(x))
            return self.fc2(x)

    return seeded(lib, Net())


def grads(model) -> dict:
    return {k: arr(p.grad) for k, p in model.named_parameters() if p.grad is not None}


# 1. FGSM (the PyTorch tutorial), PGD (Madry et al.; Wong & Kolter's tutorial), fast AT

def fgsm_attack(lib, image, epsilon, data_grad):
    sign_data_grad = data_grad.sign()
    perturbed_image = image + epsilon * sign_data_grad
    perturbed_image = lib.clamp(perturbed_image, 0, 1)
    return perturbed_image


def denorm(lib, batch, mean=[MEAN], std=[STD]):  # noqa: B006  (the tutorial's)
    if isinstance(mean, list):
        mean = lib.tensor(mean)
    if isinstance(std, list):
        std = lib.tensor(std)
    return batch * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)


def fgsm_tutorial(lib):
    F = lib.nn.functional
    model = net(lib)
    model.eval()
    out = {}
    for epsilon in [0, 0.05, 0.1, 0.3]:
        correct, adv_examples, preds = 0, [], []
        for i in range(N):
            data = lib.tensor((IMAGES[i:i + 1] - MEAN) / STD)
            target = lib.tensor(LABELS[i:i + 1])
            data.requires_grad = True
            output = F.log_softmax(model(data), dim=1)
            init_pred = output.max(1, keepdim=True)[1]
            loss = F.nll_loss(output, target)
            model.zero_grad()
            loss.backward()
            data_grad = data.grad.data
            data_denorm = denorm(lib, data)
            perturbed_data = fgsm_attack(lib, data_denorm, epsilon, data_grad)
            perturbed_data_normalized = (perturbed_data - MEAN) / STD
            output = model(perturbed_data_normalized)
            final_pred = output.max(1, keepdim=True)[1]
            preds.append((init_pred.item(), final_pred.item()))
            if final_pred.item() == target.item():
                correct += 1
                if len(adv_examples) < 2:
                    adv_ex = perturbed_data.squeeze().detach().cpu().numpy()
                    adv_examples.append(adv_ex)
            out[f"{epsilon}/{i}"] = [data_grad, perturbed_data, output]
        out[f"acc{epsilon}"] = correct / float(N)
        out[f"pred{epsilon}"] = [list(p) for p in preds]
        out[f"ex{epsilon}"] = adv_examples
    return out


def test_fgsm_tutorial():
    both(fgsm_tutorial)


def norms(Z):
    """Per-example l2 norms, shaped to broadcast over images."""
    return Z.view(Z.shape[0], -1).norm(dim=1)[:, None, None, None]


def pgd_linf(lib, model, X, y, epsilon, alpha, num_iter, randomize=None):
    nn = lib.nn
    if randomize is not None:
        delta = lib.tensor(randomize)
        delta.data = delta.data * 2 * epsilon - epsilon
        delta.requires_grad = True
    else:
        delta = lib.zeros_like(X, requires_grad=True)
    for _ in range(num_iter):
        loss = nn.CrossEntropyLoss()(model(X + delta), y)
        loss.backward()
        delta.data = (delta + alpha * delta.grad.detach().sign()).clamp(-epsilon, epsilon)
        delta.grad.zero_()
    return delta.detach()


def pgd_l2(lib, model, X, y, epsilon, alpha, num_iter):
    nn = lib.nn
    delta = lib.zeros_like(X, requires_grad=True)
    for _ in range(num_iter):
        loss = nn.CrossEntropyLoss()(model(X + delta), y)
        loss.backward()
        delta.data += alpha * delta.grad.detach() / norms(delta.grad.detach())
        delta.data = lib.min(lib.max(delta.detach(), -X), 1 - X)  # clip X+delta to [0,1]
        delta.data *= epsilon / norms(delta.detach()).clamp(min=epsilon)
        delta.grad.zero_()
    return delta.detach()


def epoch_adversarial(lib, loader, model, attack, opt=None, **kwargs):
    nn = lib.nn
    total_loss, total_err, n = 0.0, 0.0, 0
    for X, y in loader:
        delta = attack(lib, model, X, y, **kwargs)
        yp = model(X + delta)
        loss = nn.CrossEntropyLoss()(yp, y)
        if opt:
            opt.zero_grad()
            loss.backward()
            opt.step()
        total_err += (yp.max(dim=1)[1] != y).sum().item()
        total_loss += loss.item() * X.shape[0]
        n += X.shape[0]
    return total_err / n, total_loss / n


def madry_training(lib):
    model = net(lib, dropout=0.0)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ds = lib.utils.data.TensorDataset(lib.tensor(IMAGES), lib.tensor(LABELS))
    loader = lib.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    record = {}
    for epoch in range(2):
        record[f"linf{epoch}"] = list(epoch_adversarial(
            lib, loader, model, pgd_linf, opt, epsilon=0.1, alpha=0.02, num_iter=3))
        record[f"l2{epoch}"] = list(epoch_adversarial(
            lib, loader, model, pgd_l2, None, epsilon=0.5, alpha=0.2, num_iter=3))
    X, y = lib.tensor(IMAGES), lib.tensor(LABELS)
    start = draws(IMAGES.shape, "uniform", seed=1)
    record["rand"] = pgd_linf(lib, model, X, y, 0.1, 0.02, 3, randomize=start)
    record["w"] = arrays(model.state_dict())
    return record


def test_pgd_linf_l2_adversarial_training():
    both(madry_training)


def clamp(lib, X, lower_limit, upper_limit):
    return lib.max(lib.min(X, upper_limit), lower_limit)


def fast_at(lib):
    """"Fast is better than free" (Wong et al.): FGSM from a random start, delta kept across
    batches as a leaf whose ``.data`` slices are clamped per batch."""
    F = lib.nn.functional
    model = net(lib, dropout=0.0)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    mu, std = lib.tensor([MEAN]).view(1, 1, 1), lib.tensor([STD]).view(1, 1, 1)
    upper_limit, lower_limit = ((1 - mu) / std), ((0 - mu) / std)
    epsilon, alpha = (8 / 255.) / std, (10 / 255.) / std
    X_all = lib.tensor((IMAGES - MEAN) / STD)
    y_all = lib.tensor(LABELS)
    losses, deltas = [], []
    delta = lib.zeros(4, 1, 8, 8)
    for step in range(4):
        X, y = X_all[4 * (step % 2):4 * (step % 2) + 4], y_all[4 * (step % 2):4 * (step % 2) + 4]
        u = lib.tensor(draws(tuple(delta.shape), "uniform", seed=10 + step))
        delta.data = (u * 2 * epsilon - epsilon).data
        delta.data = clamp(lib, delta, lower_limit - X, upper_limit - X)
        delta.requires_grad = True
        output = model(X + delta[:X.size(0)])
        loss = F.cross_entropy(output, y)
        loss.backward()
        grad = delta.grad.detach()
        delta.data = clamp(lib, delta + alpha * lib.sign(grad), -epsilon, epsilon)
        delta.data[:X.size(0)] = clamp(lib, delta[:X.size(0)], lower_limit - X, upper_limit - X)
        delta = delta.detach()
        output = model(clamp(lib, X + delta[:X.size(0)], lower_limit, upper_limit))
        loss = F.cross_entropy(output, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        deltas.append(delta.clone())
    return {"loss": losses, "delta": deltas, "w": arrays(model.state_dict())}


def test_fast_adversarial_training():
    both(fast_at)


# 2. TRADES (Zhang et al.): KL between clean and adversarial predictions

def trades_loss(lib, model, x_natural, y, optimizer, noise, step_size=0.003, epsilon=0.031,
                perturb_steps=3, beta=6.0, distance="l_inf"):
    nn, F = lib.nn, lib.nn.functional
    Variable = lib.autograd.Variable
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * lib.tensor(noise).detach()
    if distance == "l_inf":
        for _ in range(perturb_steps):
            x_adv.requires_grad_()
            with lib.enable_grad():
                loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                       F.softmax(model(x_natural), dim=1))
            grad = lib.autograd.grad(loss_kl, [x_adv])[0]
            x_adv = x_adv.detach() + step_size * lib.sign(grad.detach())
            x_adv = lib.min(lib.max(x_adv, x_natural - epsilon), x_natural + epsilon)
            x_adv = lib.clamp(x_adv, 0.0, 1.0)
    else:
        delta = 0.001 * lib.tensor(noise).detach()
        delta = Variable(delta.data, requires_grad=True)
        optimizer_delta = lib.optim.SGD([delta], lr=epsilon / perturb_steps * 2)
        for _ in range(perturb_steps):
            adv = x_natural + delta
            optimizer_delta.zero_grad()
            with lib.enable_grad():
                loss = (-1) * criterion_kl(F.log_softmax(model(adv), dim=1),
                                           F.softmax(model(x_natural), dim=1))
            loss.backward()
            grad_norms = delta.grad.view(batch_size, -1).norm(p=2, dim=1)
            delta.grad.div_(grad_norms.view(-1, 1, 1, 1))
            if (grad_norms == 0).any():
                delta.grad[grad_norms == 0] = lib.randn_like(delta.grad[grad_norms == 0])
            optimizer_delta.step()
            delta.data.add_(x_natural)
            delta.data.clamp_(0, 1).sub_(x_natural)
            delta.data.renorm_(p=2, dim=0, maxnorm=epsilon)
        x_adv = Variable(x_natural + delta, requires_grad=False)
    model.train()
    x_adv = Variable(lib.clamp(x_adv, 0.0, 1.0), requires_grad=False)
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    kl = nn.KLDivLoss(reduction="batchmean")
    loss_robust = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
    loss = loss_natural + beta * loss_robust
    return loss, x_adv


def trades(lib, distance):
    model = net(lib, dropout=0.0, bn=True)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = lib.tensor(IMAGES), lib.tensor(LABELS)
    record = []
    for step in range(3):
        noise = draws(IMAGES.shape, seed=20 + step)
        loss, x_adv = trades_loss(lib, model, x, y, opt, noise, step_size=0.01, epsilon=0.05,
                                  distance=distance)
        loss.backward()
        opt.step()
        record.append([loss, x_adv])
    return {"steps": record, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("distance", ["l_inf", "l_2"])
def test_trades(distance):
    both(trades, distance)


def test_variable_is_a_detached_leaf():
    """``Variable(t)`` is ``t.detach()`` with ``requires_grad`` as asked (PyTorch's legacy
    constructor), so TRADES' ``Variable(x_natural + delta)`` cuts the graph, and
    ``Variable(p.data)`` shares p's memory."""
    for lib in (torch, ng):
        a = lib.ones(3, requires_grad=True)
        b = a * 2
        v = lib.autograd.Variable(b, requires_grad=False)
        assert v is not b and v.grad_fn is None and not v.requires_grad and v.is_leaf
        w = lib.autograd.Variable(a.data, requires_grad=True)
        (w * 3).sum().backward()
        assert a.grad is None and w.grad.tolist() == [3.0, 3.0, 3.0]
        with lib.no_grad():
            w.add_(1)
        assert a.tolist() == [2.0, 2.0, 2.0]
        assert isinstance(a, lib.autograd.Variable)
    with pytest.raises(TypeError, match="Variable: expected a tensor or an array, got list"):
        ng.autograd.Variable([1.0])


# 3. Saliency, SmoothGrad, Integrated Gradients, Grad-CAM, guided backprop

RGB = RNG.uniform(0, 1, (4, 3, 6, 6))
RGB_LABELS = np.array([0, 2, 1, 2])


def cnn(lib):
    """A small classifier with separate ReLU modules (guided backprop hooks each one)."""
    nn = lib.nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, C))

        def forward(self, x):
            x = self.features(x)
            x = self.pool(x)
            x = x.view(x.size(0), -1)
            return self.classifier(x)

    return seeded(lib, CNN(), seed=3)


def saliency(lib):
    """CS231n's saliency map and SmoothGrad (Smilkov et al.) with noise drawn by PyTorch."""
    F = lib.nn.functional
    model = cnn(lib)
    model.eval()
    for param in model.parameters():
        param.requires_grad = False
    X, y = lib.tensor(RGB), lib.tensor(RGB_LABELS)
    X.requires_grad_()
    scores = model(X)
    scores = scores.gather(1, y.view(-1, 1)).squeeze()
    scores.backward(lib.ones(scores.shape[0]))
    sal = X.grad.abs()
    sal, _ = lib.max(sal, dim=1)
    # SmoothGrad: the mean (and mean square) of gradients at noisy copies
    x = lib.tensor(RGB[:1])
    stdev = 0.15 * (x.max() - x.min())
    noise = draws((6,) + x.shape[1:], seed=30)
    total, total_sq = lib.zeros_like(x), lib.zeros_like(x)
    for i in range(noise.shape[0]):
        noisy = x + lib.tensor(noise[i]) * stdev
        noisy.requires_grad_(True)
        out = F.softmax(model(noisy), dim=1)
        out[lib.arange(1), y[:1]].sum().backward()
        total += noisy.grad
        total_sq += noisy.grad ** 2
    return {"sal": sal, "argmax": model(X).argmax(dim=1), "smooth": total / noise.shape[0],
            "smooth_sq": total_sq / noise.shape[0]}


def test_saliency_smoothgrad():
    both(saliency)


def integrated_gradients(lib, model, x, baseline, target, steps=16):
    """Integrated Gradients (Sundararajan et al.) with all alphas in one batch, trapezoid rule."""
    F = lib.nn.functional
    alphas = lib.linspace(0, 1, steps + 1)[:, None, None, None]
    path = baseline + alphas * (x - baseline)
    path.requires_grad_(True)
    probs = F.softmax(model(path), dim=1)[:, target]
    grads = lib.autograd.grad(probs, path, grad_outputs=lib.ones_like(probs))[0]
    avg_grads = ((grads[:-1] + grads[1:]) / 2.0).mean(dim=0)
    attributions = (x - baseline) * avg_grads
    return attributions, probs[-1] - probs[0]


def ig(lib):
    model = cnn(lib)
    model.eval()
    out = {}
    for i in range(2):
        x = lib.tensor(RGB[i])
        for name, baseline in [("black", lib.zeros_like(x)),
                               ("blur", x.mean(dim=(1, 2), keepdim=True).expand_as(x))]:
            attr, delta = integrated_gradients(lib, model, x, baseline, int(RGB_LABELS[i]))
            out[f"{i}/{name}"] = [attr, delta, attr.sum()]
    return out


def test_integrated_gradients_batched_alphas():
    got = both(ig)
    attr, delta, total = got["0/black"]
    assert abs(total - delta) < 0.05 * abs(delta) + 1e-3  # completeness, roughly


class GradCAM:
    """Grad-CAM (Selvaraju et al.) as pytorch-grad-cam's first versions wrote it: a forward hook
    keeps the activations, a full backward hook the gradient of the layer's output."""

    def __init__(self, lib, model, target_layer, tensor_hook: bool = False):
        self.lib, self.model = lib, model
        self.gradients, self.activations = None, None
        self.handles = [target_layer.register_forward_hook(self.save_activation)]
        if tensor_hook:
            self.handles.append(target_layer.register_forward_hook(self.hook_output))
        else:
            self.handles.append(target_layer.register_full_backward_hook(self.save_gradient))

    def save_activation(self, module, input, output):
        self.activations = output.detach()

    def save_gradient(self, module, grad_input, grad_output):
        self.gradients = grad_output[0].detach()

    def hook_output(self, module, input, output):
        """pytorch-grad-cam's later form: a hook on the activation tensor itself."""
        if not hasattr(output, "requires_grad") or not output.requires_grad:
            return

        def _store_grad(grad):
            self.gradients = grad.cpu().detach()

        output.register_hook(_store_grad)

    def __call__(self, x, class_idx=None):
        F = self.lib.nn.functional
        self.model.zero_grad()
        logits = self.model(x)
        if class_idx is None:
            class_idx = logits.argmax(dim=1)
        one_hot = self.lib.zeros_like(logits)
        one_hot.scatter_(1, class_idx.unsqueeze(1), 1.0)
        logits.backward(gradient=one_hot, retain_graph=True)
        weights = self.gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * self.activations).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
        cam_min = cam.view(cam.size(0), -1).min(dim=1)[0].view(-1, 1, 1, 1)
        cam_max = cam.view(cam.size(0), -1).max(dim=1)[0].view(-1, 1, 1, 1)
        cam = (cam - cam_min) / (cam_max - cam_min + 1e-8)
        return cam, self.gradients, self.activations

    def remove(self):
        for h in self.handles:
            h.remove()


def gradcam(lib, tensor_hook):
    model = cnn(lib)
    model.eval()
    x = lib.tensor(RGB)
    out = {}
    for name, layer in [("conv", model.features[2]), ("relu", model.features[3])]:
        cam = GradCAM(lib, model, layer, tensor_hook=tensor_hook)
        out[name] = list(cam(x))
        out[name + "/target"] = list(cam(x, lib.tensor(RGB_LABELS)))
        cam.remove()
        out[name + "/param_grad"] = grads(model)
    out["hooks_left"] = [len(m._forward_hooks) + len(m._backward_hooks)
                         for m in model.features]
    return out


@pytest.mark.parametrize("tensor_hook", [False, True], ids=["module_hook", "tensor_hook"])
def test_gradcam(tensor_hook):
    both(gradcam, tensor_hook)


class GuidedBackprop:
    """Guided backprop (Springenberg et al.) as utkuozbulak's visualisation repository writes
    it: forward hooks keep each ReLU's output, backward hooks replace grad_input by the
    positive part of the gradient where the ReLU was active."""

    def __init__(self, lib, model):
        self.lib, self.model = lib, model
        self.forward_relu_outputs = []
        self.hooks = []
        for module in model.modules():
            if isinstance(module, lib.nn.ReLU):
                self.hooks.append(module.register_full_backward_hook(self.relu_backward_hook))
                self.hooks.append(module.register_forward_hook(self.relu_forward_hook))

    def relu_backward_hook(self, module, grad_in, grad_out):
        corresponding_forward_output = self.forward_relu_outputs[-1]
        corresponding_forward_output[corresponding_forward_output > 0] = 1
        modified_grad_out = corresponding_forward_output * self.lib.clamp(grad_in[0], min=0.0)
        del self.forward_relu_outputs[-1]
        return (modified_grad_out,)

    def relu_forward_hook(self, module, ten_in, ten_out):
        self.forward_relu_outputs.append(ten_out)

    def generate_gradients(self, input_image, target_class):
        input_image = input_image.clone().requires_grad_(True)
        model_output = self.model(input_image)
        self.model.zero_grad()
        one_hot_output = self.lib.zeros(1, model_output.size()[-1])
        one_hot_output[0][target_class] = 1
        model_output.backward(gradient=one_hot_output)
        return input_image.grad.data[0]


def guided(lib):
    model = cnn(lib)
    model.eval()
    gbp = GuidedBackprop(lib, model)
    out = {}
    for i in range(2):
        g = gbp.generate_gradients(lib.tensor(RGB[i:i + 1]), int(RGB_LABELS[i]))
        pos_sal = (lib.maximum(lib.zeros_like(g), g) / g.max())
        neg_sal = (lib.maximum(lib.zeros_like(g), -g) / -g.min())
        out[str(i)] = [g, pos_sal, neg_sal]
    out["left"] = len(gbp.forward_relu_outputs)
    for h in gbp.hooks:
        h.remove()
    x = lib.tensor(RGB[:1], requires_grad=True)
    model(x)[0, 0].backward()
    out["plain"] = x.grad
    return out


def test_guided_backprop():
    both(guided)


# 4. Influence functions: Hessian-vector products by double backward, LiSSA, conjugate gradient

TAB = RNG.standard_normal((12, 4))
TAB_Y = np.array([0, 1, 2] * 4)


def mlp(lib, d_in=4, hidden=5, d_out=C, bn=False):
    nn = lib.nn
    layers = [nn.Linear(d_in, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else [])
    return seeded(lib, nn.Sequential(*layers, nn.Tanh(), nn.Linear(hidden, d_out)), seed=5)


def calc_loss(lib, y, t):
    return lib.nn.functional.cross_entropy(y, t)


def grad_z(lib, z, t, model):
    """pytorch-influence-functions' gradient of one example's loss (kept in the graph)."""
    model.eval()
    y = model(z)
    loss = calc_loss(lib, y, t)
    params = [p for p in model.parameters() if p.requires_grad]
    return list(lib.autograd.grad(loss, params, create_graph=True))


def hvp(lib, y, w, v):
    first_grads = lib.autograd.grad(y, w, retain_graph=True, create_graph=True)
    elemwise_products = 0
    for grad_elem, v_elem in zip(first_grads, v):
        elemwise_products += lib.sum(grad_elem * v_elem)
    return lib.autograd.grad(elemwise_products, w, create_graph=True)


def s_test(lib, z_test, t_test, model, z_loader, damp=0.01, scale=25.0, recursion_depth=3):
    """LiSSA (Agarwal et al.) as Koh & Liang's PyTorch port writes it."""
    v = grad_z(lib, z_test, t_test, model)
    h_estimate = v.copy()
    for _ in range(recursion_depth):
        for x, t in z_loader:
            y = model(x)
            loss = calc_loss(lib, y, t)
            params = [p for p in model.parameters() if p.requires_grad]
            hv = hvp(lib, loss, params, h_estimate)
            h_estimate = [_v + (1 - damp) * _h_e - _hv / scale
                          for _v, _h_e, _hv in zip(v, h_estimate, hv)]
            break
    return h_estimate


def conjugate_gradient(lib, Avp, b, iters=10, residual_tol=1e-10):
    x = lib.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = lib.dot(r, r)
    for _ in range(iters):
        Ap = Avp(p)
        alpha = rdotr / lib.dot(p, Ap)
        x += alpha * p
        r -= alpha * Ap
        new_rdotr = lib.dot(r, r)
        if new_rdotr < residual_tol:
            break
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x


def influence(lib):
    nn = lib.nn
    model = mlp(lib)
    params = [p for p in model.parameters() if p.requires_grad]
    X, Y = lib.tensor(TAB), lib.tensor(TAB_Y)
    loader = lib.utils.data.DataLoader(lib.utils.data.TensorDataset(X, Y), batch_size=12)
    z_test, t_test = X[:1], Y[:1]
    s = s_test(lib, z_test, t_test, model, loader)
    influences = []
    for i in range(4):
        g = grad_z(lib, X[i:i + 1], Y[i:i + 1], model)
        influences.append(-sum(lib.sum(k * j).data for k, j in zip(g, s)) / len(X))

    # Newton step / influence with CG on the damped Hessian, flattened parameters
    loss = nn.CrossEntropyLoss()(model(X), Y)
    grads = lib.autograd.grad(loss, params, create_graph=True)
    flat_grad = lib.cat([g.contiguous().view(-1) for g in grads])

    def Hvp(v):
        kl_v = (flat_grad * v).sum()
        hv = lib.autograd.grad(kl_v, params, retain_graph=True)
        return lib.cat([g.contiguous().view(-1) for g in hv]).detach() + 0.1 * v

    test_grad = lib.cat([g.view(-1) for g in grad_z(lib, z_test, t_test, model)]).detach()
    ihvp = conjugate_gradient(lib, Hvp, test_grad)
    residual = Hvp(ihvp) - test_grad
    before = nn.utils.parameters_to_vector(model.parameters()).clone()
    nn.utils.vector_to_parameters(before - 0.1 * ihvp, model.parameters())
    after = nn.utils.parameters_to_vector(model.parameters())
    # the same product through torch.autograd.functional.hvp on a function of the parameters
    names = [n for n, _ in model.named_parameters()]

    def f(*ps):
        out = lib.func.functional_call(model, dict(zip(names, ps)), (X,))
        return nn.functional.cross_entropy(out, Y)

    v = tuple(lib.ones_like(p) for p in params)
    value, hv = lib.autograd.functional.hvp(f, tuple(p.detach() for p in params), v)
    return {"s_test": [t.detach() for t in s], "influence": influences, "ihvp": ihvp,
            "residual": float(residual.norm()) < 1e-6, "after": after, "value": value,
            "hvp": list(hv)}


def test_influence_functions_lissa_cg():
    both(influence)


# 5. SAM (davda54/sam) and Lookahead (Zhang et al.) as Optimizer subclasses

def sam_class(lib):
    class SAM(lib.optim.Optimizer):
        def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
            assert rho >= 0.0, f"Invalid rho, should be non-negative: {rho}"
            defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
            super().__init__(params, defaults)
            self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
            self.param_groups = self.base_optimizer.param_groups
            self.defaults.update(self.base_optimizer.defaults)

        @lib.no_grad()
        def first_step(self, zero_grad=False):
            grad_norm = self._grad_norm()
            for group in self.param_groups:
                scale = group["rho"] / (grad_norm + 1e-12)
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    self.state[p]["old_p"] = p.data.clone()
                    e_w = (lib.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                    p.add_(e_w)  # climb to the local maximum "w + e(w)"
            if zero_grad:
                self.zero_grad()

        @lib.no_grad()
        def second_step(self, zero_grad=False):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    p.data = self.state[p]["old_p"]  # get back to "w" from "w + e(w)"
            self.base_optimizer.step()  # do the actual "sharpness-aware" update
            if zero_grad:
                self.zero_grad()

        @lib.no_grad()
        def step(self, closure=None):
            assert closure is not None, "Sharpness Aware Minimization requires closure"
            closure = lib.enable_grad()(closure)  # the closure does a full forward-backward
            self.first_step(zero_grad=True)
            closure()
            self.second_step()

        def _grad_norm(self):
            shared_device = self.param_groups[0]["params"][0].device
            norm = lib.norm(
                lib.stack([
                    ((lib.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2)
                    .to(shared_device)
                    for group in self.param_groups for p in group["params"]
                    if p.grad is not None
                ]),
                p=2
            )
            return norm

        def load_state_dict(self, state_dict):
            super().load_state_dict(state_dict)
            self.base_optimizer.param_groups = self.param_groups

    return SAM


def disable_running_stats(lib, model):
    def _disable(module):
        if isinstance(module, lib.nn.modules.batchnorm._BatchNorm):
            module.backup_momentum = module.momentum
            module.momentum = 0

    model.apply(_disable)


def enable_running_stats(lib, model):
    def _enable(module):
        if isinstance(module, lib.nn.modules.batchnorm._BatchNorm) and hasattr(
                module, "backup_momentum"):
            module.momentum = module.backup_momentum

    model.apply(_enable)


def smooth_crossentropy(lib, pred, gold, smoothing=0.1):
    n_class = pred.size(1)
    one_hot = lib.full_like(pred, fill_value=smoothing / (n_class - 1))
    one_hot.scatter_(dim=1, index=gold.unsqueeze(1), value=1.0 - smoothing)
    log_prob = lib.nn.functional.log_softmax(pred, dim=1)
    return lib.nn.functional.kl_div(input=log_prob, target=one_hot, reduction="none").sum(-1)


def sam_training(lib, adaptive):
    SAM = sam_class(lib)
    model = mlp(lib, bn=True)
    optimizer = SAM(model.parameters(), lib.optim.SGD, rho=2.0 if adaptive else 0.05,
                    adaptive=adaptive, lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = lib.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    X, Y = lib.tensor(TAB), lib.tensor(TAB_Y)
    losses, lrs, old_p = [], [], []
    for _epoch in range(3):
        model.train()
        for b in range(2):
            inputs, targets = X[6 * b:6 * b + 6], Y[6 * b:6 * b + 6]
            # first forward-backward step
            enable_running_stats(lib, model)
            predictions = model(inputs)
            loss = smooth_crossentropy(lib, predictions, targets, smoothing=0.1)
            loss.mean().backward()
            optimizer.first_step(zero_grad=True)
            old_p.append([optimizer.state[p]["old_p"].clone() for p in model.parameters()])
            # second forward-backward step
            disable_running_stats(lib, model)
            smooth_crossentropy(lib, model(inputs), targets, smoothing=0.1).mean().backward()
            optimizer.second_step(zero_grad=True)
            # p.data = old_p: old_p is p's memory from then on, and moved with the step
            old_p.append([optimizer.state[p]["old_p"].clone() for p in model.parameters()])
            assert all(bool((optimizer.state[p]["old_p"] == p).all()) for p in model.parameters())
            with lib.no_grad():
                correct = lib.argmax(predictions.data, 1) == targets
            losses.append([loss, correct.sum().item()])
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
    # the closure form, then a state dict round trip into a fresh SAM
    for _ in range(2):
        def closure():
            loss = lib.nn.functional.cross_entropy(model(X), Y)
            loss.backward()
            return loss

        loss = lib.nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        optimizer.step(closure)
        optimizer.zero_grad()
        losses.append(loss)
    saved = optimizer.state_dict()
    fresh = SAM(model.parameters(), lib.optim.SGD, rho=0.05, adaptive=adaptive, lr=0.1,
                momentum=0.9, weight_decay=5e-4)
    fresh.load_state_dict(saved)
    assert fresh.base_optimizer.param_groups is fresh.param_groups
    loss = lib.nn.functional.cross_entropy(model(X), Y)
    loss.backward()
    fresh.step(lambda: lib.nn.functional.cross_entropy(model(X), Y).backward())
    groups = [{k: v for k, v in g.items() if k != "params" and k not in IMPL_KEYS}
              for g in fresh.param_groups]
    saved_layout = [[i, sorted(st)] for i, st in saved["state"].items()]
    saved_groups = [sorted(set(g) - IMPL_KEYS) for g in saved["param_groups"]]
    return {"loss": losses, "lr": lrs, "w": arrays(model.state_dict()),
            "groups": [sorted(g.items()) for g in groups], "saved": saved_layout,
            "saved_groups": saved_groups,
            "defaults": sorted((k, v) for k, v in fresh.defaults.items()
                               if k in ("rho", "adaptive", "lr", "momentum", "weight_decay")),
            "momentum": [fresh.base_optimizer.state[p]["momentum_buffer"]
                         for p in model.parameters()],
            "old_p": old_p}


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_optimizer_subclass(adaptive):
    both(sam_training, adaptive)


def lookahead_class(lib):
    from collections import defaultdict

    class Lookahead(lib.optim.Optimizer):
        def __init__(self, optimizer, la_steps=5, la_alpha=0.8, pullback_momentum="none"):
            self.optimizer = optimizer
            self._la_step = 0  # counter for inner optimizer
            self.la_alpha = la_alpha
            self._total_la_steps = la_steps
            pullback_momentum = pullback_momentum.lower()
            assert pullback_momentum in ["reset", "pullback", "none"]
            self.pullback_momentum = pullback_momentum
            self.state = defaultdict(dict)
            # Cache the current optimizer parameters
            for group in optimizer.param_groups:
                for p in group["params"]:
                    param_state = self.state[p]
                    param_state["cached_params"] = lib.zeros_like(p)
                    param_state["cached_params"].copy_(p.data)
                    if self.pullback_momentum == "pullback":
                        param_state["cached_mom"] = lib.zeros_like(p)

        def __getstate__(self):
            return {"state": self.state, "optimizer": self.optimizer,
                    "la_alpha": self.la_alpha, "_la_step": self._la_step,
                    "_total_la_steps": self._total_la_steps,
                    "pullback_momentum": self.pullback_momentum}

        def zero_grad(self):
            self.optimizer.zero_grad()

        def get_la_step(self):
            return self._la_step

        def state_dict(self):
            return self.optimizer.state_dict()

        def load_state_dict(self, state_dict):
            self.optimizer.load_state_dict(state_dict)

        @property
        def param_groups(self):
            return self.optimizer.param_groups

        def step(self, closure=None):
            loss = self.optimizer.step(closure)
            self._la_step += 1
            if self._la_step >= self._total_la_steps:
                self._la_step = 0
                # Lookahead and cache the current optimizer parameters
                for group in self.optimizer.param_groups:
                    for p in group["params"]:
                        param_state = self.state[p]
                        p.data.mul_(self.la_alpha).add_(param_state["cached_params"],
                                                        alpha=1.0 - self.la_alpha)
                        param_state["cached_params"].copy_(p.data)
                        if self.pullback_momentum == "pullback":
                            # the repository: internal_momentum.mul_(...).add_(...); the
                            # optimiser's state holds arrays here
                            internal_momentum = self.optimizer.state[p]["momentum_buffer"]
                            internal_momentum *= self.la_alpha
                            internal_momentum += (1.0 - self.la_alpha) * param_state["cached_mom"]
                            self.optimizer.state[p]["momentum_buffer"] = internal_momentum
                            param_state["cached_mom"] = self.optimizer.state[p][
                                "momentum_buffer"]
                        elif self.pullback_momentum == "reset":
                            self.optimizer.state[p]["momentum_buffer"] = lib.zeros_like(p)
            return loss

    return Lookahead


def lookahead(lib, base, pullback):
    Lookahead = lookahead_class(lib)
    model = mlp(lib)
    if base == "adam":
        inner = lib.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.999))
    else:
        inner = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer = Lookahead(inner, la_steps=3, la_alpha=0.5, pullback_momentum=pullback)
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(inner, T_max=10)
    X, Y = lib.tensor(TAB), lib.tensor(TAB_Y)
    losses = []
    for _step in range(8):
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append([loss, optimizer.get_la_step(), scheduler.get_last_lr()])
    return {"loss": losses, "w": arrays(model.state_dict()),
            "cached": [optimizer.state[p]["cached_params"] for p in model.parameters()],
            # nodegrad's SGD state also counts its steps (PyTorch's keeps none)
            "inner": [sorted(set(s) - {"step"} if base == "sgd" else s)
                      for s in optimizer.state_dict()["state"].values()]}


@pytest.mark.parametrize("base,pullback", [("adam", "none"), ("sgd", "pullback"),
                                           ("sgd", "reset")])
def test_lookahead(base, pullback):
    both(lookahead, base, pullback)


def reset_state(lib):
    """A wrapper's writes into ``optimizer.state[p]``: a momentum reset, a bias-correction
    restart (Adam's step back to 0) and a whole entry assigned."""
    model = mlp(lib)
    sgd = lib.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    adam = lib.optim.Adam(model[2].parameters(), lr=0.01)
    X, Y = lib.tensor(TAB), lib.tensor(TAB_Y)
    losses = []
    for step in range(6):
        sgd.zero_grad()
        adam.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        sgd.step()
        adam.step()
        losses.append(loss)
        if step == 2:
            for p in model[0].parameters():
                sgd.state[p]["momentum_buffer"] = lib.zeros_like(p)
            w = model[2].weight
            adam.state[w]["step"] = lib.tensor(0.0)
            adam.state[model[2].bias] = {"step": lib.tensor(0.0),
                                         "exp_avg": lib.zeros_like(model[2].bias),
                                         "exp_avg_sq": lib.zeros_like(model[2].bias)}
    return {"loss": losses, "w": arrays(model.state_dict()),
            "step": [float(adam.state[p]["step"]) for p in model[2].parameters()]}


def test_optimizer_state_writes_reach_the_step():
    both(reset_state)
    opt = ng.optim.SGD([ng.nn.Parameter(ng.ones(3, dtype=ng.float64))], lr=0.1, momentum=0.9)
    (p,) = opt.param_groups[0]["params"]
    p.grad = ng.ones(3, dtype=ng.float64)
    opt.step()
    opt.state[p]["foo"] = 1  # a name of the caller's own is kept beside the buffers, as
    assert opt.state[p]["foo"] == 1  # PyTorch keeps any (timm's Lookahead's slow weights)
    assert opt.state_dict()["state"][0]["foo"] == 1
    opt.state[p]["momentum_buffer"] = ng.zeros(2, dtype=ng.float64)  # taken, as in PyTorch
    with pytest.raises(ng.errors.ShapeError, match="momentum_buffer.*shape"):
        opt.step()  # where PyTorch's step fails too


# 6. SWA with torch.optim.swa_utils: custom avg_fn, EMA of parameters and buffers, update_bn

def swa_program(lib):
    swa_utils = lib.optim.swa_utils
    model = net(lib, dropout=0.0, bn=True)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ds = lib.utils.data.TensorDataset(lib.tensor(IMAGES), lib.tensor(LABELS))
    loader = lib.utils.data.DataLoader(ds, batch_size=4)
    loss_fn = lib.nn.CrossEntropyLoss()
    swa_model = swa_utils.AveragedModel(model)

    def ema_avg(averaged_model_parameter, model_parameter, num_averaged):
        return 0.1 * averaged_model_parameter + 0.9 * model_parameter

    custom = swa_utils.AveragedModel(model, avg_fn=ema_avg)
    ema_model = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9),
                                        use_buffers=True)
    ema_fn = swa_utils.AveragedModel(model, avg_fn=swa_utils.get_ema_avg_fn(0.8))
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    swa_start = 2
    swa_scheduler = swa_utils.SWALR(optimizer, swa_lr=0.02, anneal_epochs=2)
    lrs = []
    for epoch in range(5):
        for input, target in loader:
            optimizer.zero_grad()
            loss_fn(model(input), target).backward()
            optimizer.step()
            ema_model.update_parameters(model)
        if epoch > swa_start:
            swa_model.update_parameters(model)
            custom.update_parameters(model)
            ema_fn.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    bn_before = arrays(swa_model.module.bn.state_dict())
    swa_utils.update_bn(loader, swa_model)
    preds = swa_model(lib.tensor(IMAGES))
    return {"lr": lrs, "bn_before": bn_before, "swa": arrays(swa_model.state_dict()),
            "custom": arrays(custom.state_dict()), "ema": arrays(ema_model.state_dict()),
            "ema_fn": arrays(ema_fn.state_dict()), "preds": preds,
            "training": [swa_model.training, swa_model.module.bn.training],
            "momentum": swa_model.module.bn.momentum}


def test_swa_custom_avg_fn_ema_update_bn():
    both(swa_program)


# 7. Temperature scaling (Guo et al.; gpleiss/temperature_scaling) and the ECE

def calibration_classes(lib):
    nn, F, optim = lib.nn, lib.nn.functional, lib.optim

    class _ECELoss(nn.Module):
        def __init__(self, n_bins=15):
            super().__init__()
            bin_boundaries = lib.linspace(0, 1, n_bins + 1)
            self.bin_lowers = bin_boundaries[:-1]
            self.bin_uppers = bin_boundaries[1:]

        def forward(self, logits, labels):
            softmaxes = F.softmax(logits, dim=1)
            confidences, predictions = lib.max(softmaxes, 1)
            accuracies = predictions.eq(labels)
            ece = lib.zeros(1, device=logits.device)
            for bin_lower, bin_upper in zip(self.bin_lowers, self.bin_uppers):
                in_bin = confidences.gt(bin_lower.item()) * confidences.le(bin_upper.item())
                prop_in_bin = in_bin.to(logits.dtype).mean()  # the repository: .float()
                if prop_in_bin.item() > 0:
                    accuracy_in_bin = accuracies[in_bin].to(logits.dtype).mean()
                    avg_confidence_in_bin = confidences[in_bin].mean()
                    ece += lib.abs(avg_confidence_in_bin - accuracy_in_bin) * prop_in_bin
            return ece

    class ModelWithTemperature(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.temperature = nn.Parameter(lib.ones(1) * 1.5)

        def forward(self, input):
            logits = self.model(input)
            return self.temperature_scale(logits)

        def temperature_scale(self, logits):
            temperature = self.temperature.unsqueeze(1).expand(logits.size(0), logits.size(1))
            return logits / temperature

        def set_temperature(self, valid_loader, **lbfgs):
            nll_criterion = nn.CrossEntropyLoss()
            ece_criterion = _ECELoss()
            logits_list, labels_list = [], []
            with lib.no_grad():
                for input, label in valid_loader:
                    logits = self.model(input)
                    logits_list.append(logits)
                    labels_list.append(label)
                logits = lib.cat(logits_list)
                labels = lib.cat(labels_list)
            before = [nll_criterion(logits, labels).item(), ece_criterion(logits, labels).item()]
            optimizer = optim.LBFGS([self.temperature], lr=0.01, max_iter=50, **lbfgs)

            def eval():
                optimizer.zero_grad()
                loss = nll_criterion(self.temperature_scale(logits), labels)
                loss.backward()
                return loss

            optimizer.step(eval)
            after = [nll_criterion(self.temperature_scale(logits), labels).item(),
                     ece_criterion(self.temperature_scale(logits), labels).item()]
            return before, after

    return ModelWithTemperature, _ECELoss


CAL_X = RNG.standard_normal((40, 4))
CAL_Y = (CAL_X[:, 0] + 0.7 * RNG.standard_normal(40) > 0).astype(np.int64) + (
    CAL_X[:, 1] > 0.8).astype(np.int64)


def temperature_scaling(lib, lbfgs):
    ModelWithTemperature, _ECELoss = calibration_classes(lib)
    model = mlp(lib)
    # an over-confident classifier: a few steps of Adam at a high rate
    opt = lib.optim.Adam(model.parameters(), lr=0.1)
    X, Y = lib.tensor(CAL_X), lib.tensor(CAL_Y)
    for _ in range(30):
        opt.zero_grad()
        lib.nn.functional.cross_entropy(model(X[:24]), Y[:24]).backward()
        opt.step()
    scaled = ModelWithTemperature(model)
    valid = lib.utils.data.DataLoader(lib.utils.data.TensorDataset(X[24:], Y[24:]),
                                      batch_size=5, shuffle=False)
    before, after = scaled.set_temperature(valid, **lbfgs)
    ece = _ECELoss(n_bins=5)
    with lib.no_grad():
        out = scaled(X)
    return {"before": before, "after": after, "T": scaled.temperature, "out": out,
            "ece5": ece(out, Y), "ece_train": ece(model(X[:24]), Y[:24]),
            "names": [n for n, _ in scaled.named_parameters()][-1:]}


@pytest.mark.parametrize("lbfgs", [{}, {"line_search_fn": "strong_wolfe"}],
                         ids=["plain", "strong_wolfe"])
def test_temperature_scaling_lbfgs_ece(lbfgs):
    both(temperature_scaling, lbfgs, tol=1e-8)


# 8. Knowledge distillation (Hinton et al.; the PyTorch tutorial's losses)

def kd_losses(lib, s, t, labels, T=4.0, alpha=0.7):
    nn, F = lib.nn, lib.nn.functional
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1),
                    reduction="batchmean") * T * T
    log_target = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1),
                          reduction="batchmean", log_target=True) * T * T
    module = nn.KLDivLoss(reduction="batchmean", log_target=True)(
        F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1)) * (T ** 2)
    # the tutorial writes the KL out by hand
    soft_targets = nn.functional.softmax(t / T, dim=-1)
    soft_prob = nn.functional.log_softmax(s / T, dim=-1)
    by_hand = lib.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (
        T ** 2)
    hard = F.cross_entropy(s, labels)
    return alpha * soft + (1 - alpha) * hard, [soft, log_target, module, by_hand,
                                               F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1),
                                                        reduction="sum"),
                                               F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1),
                                                        reduction="mean"),
                                               F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1),
                                                        reduction="none")]


def distillation(lib):
    nn = lib.nn
    teacher = mlp(lib, hidden=8)
    student = seeded(lib, nn.Sequential(nn.Linear(4, 3)), seed=7)
    # a hidden-representation term: the tutorial's cosine loss against the teacher's features
    regressor = seeded(lib, nn.Linear(4, 8), seed=8)
    optimizer = lib.optim.Adam(list(student.parameters()) + list(regressor.parameters()),
                               lr=0.05)
    cosine_loss = nn.CosineEmbeddingLoss()
    X, Y = lib.tensor(TAB), lib.tensor(TAB_Y)
    teacher.eval()
    student.train()
    record = []
    for _epoch in range(4):
        optimizer.zero_grad()
        with lib.no_grad():
            teacher_logits = teacher(X)
            teacher_hidden = teacher[:2](X)
        student_logits = student(X)
        loss, parts = kd_losses(lib, student_logits, teacher_logits, Y)
        hidden = cosine_loss(regressor(X), teacher_hidden, target=lib.ones(X.size(0)))
        (loss + 0.25 * hidden).backward()
        optimizer.step()
        record.append([loss, hidden] + parts)
    return {"steps": record, "student": arrays(student.state_dict()),
            "grad": grads(student)}


def test_knowledge_distillation():
    got = both(distillation)
    soft, log_target, module, by_hand = got["steps"][0][2:6]
    np.testing.assert_allclose([log_target, module, by_hand], [soft] * 3, rtol=1e-12)


# 9. mixup (Zhang et al.; facebookresearch/mixup-cifar10), CutMix (clovaai), label smoothing

def mixup_data(lib, x, y, lam, index):
    """The repository's mixup_data with its two random draws given: lam (NumPy's beta) and
    the permutation (torch.randperm)."""
    mixed_x = lam * x + (1 - lam) * x[index, :]
    y_a, y_b = y, y[index]
    return mixed_x, y_a, y_b, lam


def mixup_criterion(criterion, pred, y_a, y_b, lam):
    return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)


def rand_bbox(size, lam, cx, cy):
    W = size[2]
    H = size[3]
    cut_rat = np.sqrt(1. - lam)
    cut_w = int(W * cut_rat)  # the repository: np.int
    cut_h = int(H * cut_rat)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def mix_training(lib, smoothing):
    nn = lib.nn
    model = net(lib, dropout=0.0)
    criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                              weight_decay=1e-4)
    rng = np.random.default_rng(4)
    record = []
    for step in range(4):
        inputs, targets = lib.tensor(IMAGES), lib.tensor(LABELS)
        index = lib.tensor(draws(N, "randperm", seed=40 + step))
        lam = rng.beta(1.0, 1.0)  # a NumPy float64 scalar on the left of a tensor
        if step % 2 == 0:
            inputs, targets_a, targets_b, lam = mixup_data(lib, inputs, targets, lam, index)
        else:
            targets_a, targets_b = targets, targets[index]
            cx, cy = rng.integers(8), rng.integers(8)
            bbx1, bby1, bbx2, bby2 = rand_bbox(inputs.size(), lam, cx, cy)
            inputs[:, :, bbx1:bbx2, bby1:bby2] = inputs[index, :, bbx1:bbx2, bby1:bby2]
            # adjust lambda to exactly match pixel ratio
            lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (inputs.size()[-1] * inputs.size()[-2]))
        outputs = model(inputs)
        loss = mixup_criterion(criterion, outputs, targets_a, targets_b, lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _, predicted = lib.max(outputs.data, 1)
        correct = (lam * predicted.eq(targets_a.data).cpu().sum().float()
                   + (1 - lam) * predicted.eq(targets_b.data).cpu().sum().float())
        record.append([loss, inputs, float(correct)])
    return {"steps": record, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_cutmix(smoothing):
    both(mix_training, smoothing)


def smoothing_losses(lib):
    nn, F = lib.nn, lib.nn.functional

    class LabelSmoothingLoss(nn.Module):
        def __init__(self, classes, smoothing=0.0, dim=-1):
            super().__init__()
            self.confidence = 1.0 - smoothing
            self.smoothing = smoothing
            self.cls = classes
            self.dim = dim

        def forward(self, pred, target):
            pred = pred.log_softmax(dim=self.dim)
            with lib.no_grad():
                true_dist = lib.zeros_like(pred)
                true_dist.fill_(self.smoothing / (self.cls - 1))
                true_dist.scatter_(1, target.data.unsqueeze(1), self.confidence)
            return lib.mean(lib.sum(-true_dist * pred, dim=self.dim))

    logits = lib.tensor(TAB[:, :3] * 2, requires_grad=True)
    y = lib.tensor(TAB_Y)
    y_ignored = lib.tensor(np.where(np.arange(12) % 5 == 0, -100, TAB_Y))
    w = lib.tensor([0.2, 1.0, 3.0])
    soft = F.softmax(lib.tensor(TAB[:, 1:4]), dim=1)
    losses = {
        "gist": LabelSmoothingLoss(3, smoothing=0.1)(logits, y),
        "builtin": nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y),
        "weighted": F.cross_entropy(logits, y, weight=w, label_smoothing=0.2),
        "ignored": F.cross_entropy(logits, y_ignored, label_smoothing=0.2),
        "weighted_ignored": F.cross_entropy(logits, y_ignored, weight=w, label_smoothing=0.3),
        "sum": F.cross_entropy(logits, y_ignored, weight=w, label_smoothing=0.3,
                               reduction="sum"),
        "none": F.cross_entropy(logits, y_ignored, weight=w, label_smoothing=0.3,
                                reduction="none"),
        "soft": F.cross_entropy(logits, soft, label_smoothing=0.1),
        "soft_weighted": F.cross_entropy(logits, soft, weight=w, label_smoothing=0.1),
        "nll": F.nll_loss(F.log_softmax(logits, 1), y_ignored, weight=w),
        "3d": F.cross_entropy(logits.view(4, 3, 3).transpose(1, 2), y.view(4, 3),
                              label_smoothing=0.15),
    }
    out = {}
    for k, v in losses.items():
        logits.grad = None
        v.sum().backward()
        out[k] = [v, logits.grad]
    return out


def test_label_smoothing_forms():
    both(smoothing_losses)


# 10. MC dropout (Gal & Ghahramani): dropout on at test time, BatchNorm left in eval

def enable_dropout(model):
    """Function to enable the dropout layers during test-time."""
    for m in model.modules():
        if m.__class__.__name__.startswith("Dropout"):
            m.train()


def predictive_stats(lib, preds):
    """Mean prediction, predictive entropy and mutual information (BALD) of MC samples."""
    epsilon = 1e-10
    mean = preds.mean(dim=0)
    entropy = -lib.sum(mean * lib.log(mean + epsilon), dim=-1)
    expected_entropy = -lib.mean(lib.sum(preds * lib.log(preds + epsilon), dim=-1), dim=0)
    return [mean, entropy, entropy - expected_entropy, preds.var(dim=0), preds.std(dim=0)]


def mc_dropout(lib, n_samples=6):
    nn, F = lib.nn, lib.nn.functional
    model = seeded(lib, nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                      nn.Dropout(p=0.5), nn.Linear(16, 16), nn.ReLU(),
                                      nn.Dropout(p=0.1), nn.Linear(16, C)), seed=9)
    X = lib.tensor(TAB)
    model.train()
    model(X)  # running statistics moved once
    model.eval()
    enable_dropout(model)
    seen = []
    handle = model[3].register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    bn_before = arrays(model[1].state_dict())
    with lib.no_grad():
        preds = lib.stack([F.softmax(model(X), dim=1) for _ in range(n_samples)])
    handle.remove()
    # what is deterministic: which modules run in training mode, the BatchNorm's statistics
    # untouched, each Dropout output either 0 or the input / (1 - p), the masks not all equal
    inp, out = (np.stack([arr(t) for t in ts]) for ts in zip(*seen))
    kept = out != 0
    np.testing.assert_allclose(out[kept], inp[kept] / 0.5, rtol=1e-14)
    assert 0.2 < kept.mean() < 0.8 and not (kept[0] == kept[1]).all()
    return {"training": [m.training for m in model.modules()],
            "bn": arrays(model[1].state_dict()), "bn_before": bn_before,
            "preds": preds}


def test_mc_dropout():
    ref, got = mc_dropout(torch), mc_dropout(ng)
    preds = ref.pop("preds")  # the masks are each library's random draws
    got.pop("preds")
    assert_same(got, ref)
    # the uncertainty statistics of the same samples (PyTorch's) in both libraries
    assert_same(predictive_stats(ng, ng.tensor(arr(preds))),
                predictive_stats(torch, torch.tensor(arr(preds))))


# 11. PyHessian (Yao et al.): top eigenvalues by power iteration, Hutchinson's trace

def group_product(lib, xs, ys):
    return sum([lib.sum(x * y) for (x, y) in zip(xs, ys)])


def group_add(lib, params, update, alpha=1):
    for i, _p in enumerate(params):
        params[i].data.add_(update[i] * alpha)
    return params


def normalization(lib, v):
    s = group_product(lib, v, v)
    s = s ** 0.5
    s = s.cpu().item()
    v = [vi / (s + 1e-6) for vi in v]
    return v


def orthnormal(lib, w, v_list):
    for v in v_list:
        w = group_add(lib, w, v, alpha=-group_product(lib, w, v))
    return normalization(lib, w)


def hessian_vector_product(lib, gradsH, params, v):
    return lib.autograd.grad(gradsH, params, grad_outputs=v, only_inputs=True,
                             retain_graph=True)


def pyhessian(lib, train_bn):
    model = net(lib, dropout=0.0, bn=True)
    model.train() if train_bn else model.eval()
    criterion = lib.nn.CrossEntropyLoss()
    inputs, targets = lib.tensor(IMAGES), lib.tensor(LABELS)
    outputs = model(inputs)
    loss = criterion(outputs, targets)
    loss.backward(create_graph=True)
    params, gradsH = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        params.append(param)
        gradsH.append(0. if param.grad is None else param.grad + 0.)
    # top-2 eigenvalues by power iteration with deflation
    eigenvalues, eigenvectors = [], []
    for k in range(2):
        v = [lib.tensor(draws(tuple(p.shape), seed=50 + 10 * k + i))
             for i, p in enumerate(params)]
        v = normalization(lib, v)
        eigenvalue = None
        for _ in range(8):
            v = orthnormal(lib, v, eigenvectors)
            Hv = hessian_vector_product(lib, gradsH, params, v)
            tmp_eigenvalue = group_product(lib, Hv, v).cpu().item()
            v = normalization(lib, Hv)
            eigenvalue = tmp_eigenvalue
        eigenvalues.append(eigenvalue)
        eigenvectors.append(v)
    # Hutchinson's trace with Rademacher vectors drawn by PyTorch (randint_like, 0 -> -1)
    trace_vhv = []
    g = torch.Generator().manual_seed(60)
    for _ in range(3):
        v = [torch.randint(0, 2, tuple(p.shape), generator=g).double() for p in params]
        for v_i in v:
            v_i[v_i == 0] = -1
        v = [lib.tensor(arr(v_i)) for v_i in v]
        Hv = hessian_vector_product(lib, gradsH, params, v)
        trace_vhv.append(group_product(lib, Hv, v).cpu().item())
    return {"eig": eigenvalues, "vec": eigenvectors, "trace": trace_vhv,
            "bn": arrays(model.bn.state_dict())}


@pytest.mark.parametrize("train_bn", [False, True], ids=["eval", "train_bn"])
def test_pyhessian_power_iteration_trace(train_bn):
    both(pyhessian, train_bn, tol=1e-9)


# 12. Module backward hooks at the edges: an input without grad, pre-hooks, several inputs

def hook_edges(lib):
    nn = lib.nn
    model = cnn(lib)
    calls = []

    def record(name):
        def hook(module, grad_input, grad_output):
            calls.append([name, [None if g is None else g.clone() for g in grad_input],
                          [None if g is None else g.clone() for g in grad_output]])
        return hook

    def halve(module, grad_output):
        return tuple(None if g is None else g * 0.5 for g in grad_output)

    handles = [model.features[0].register_full_backward_hook(record("conv0")),
               model.classifier[2].register_full_backward_pre_hook(halve),
               model.classifier[2].register_full_backward_hook(record("fc2")),
               model.pool.register_full_backward_hook(record("pool"))]
    x = lib.tensor(RGB)  # the image needs no gradient: conv0's grad_input is (None,)
    out = model(x)
    out.sum().backward()
    first = grads(model)

    class Bilinear(nn.Module):
        def forward(self, a, b):
            return a * b + a

    bil = Bilinear()
    handles.append(bil.register_full_backward_hook(record("bilinear")))
    a = lib.tensor(TAB[:, :3], requires_grad=True)
    b = lib.tensor(TAB[:, 1:4])  # no grad: its slot of grad_input is None
    bil(a, b).pow(2).sum().backward()
    for h in handles:
        h.remove()
    model.zero_grad()
    model(x).sum().backward()
    return {"calls": calls, "first": first, "after": grads(model), "a": a.grad}


def test_module_backward_hook_edges():
    both(hook_edges)


# 13. MART (Wang et al.), input-gradient regularisation (double backprop), the C&W attack

def mart_loss(lib, model, x_natural, y, optimizer, noise, step_size=0.01, epsilon=0.05,
              perturb_steps=2, beta=6.0):
    nn, F = lib.nn, lib.nn.functional
    kl = nn.KLDivLoss(reduction="none")
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * lib.tensor(noise).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with lib.enable_grad():
            loss_ce = F.cross_entropy(model(x_adv), y)
        grad = lib.autograd.grad(loss_ce, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * lib.sign(grad.detach())
        x_adv = lib.min(lib.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = lib.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = lib.autograd.Variable(lib.clamp(x_adv, 0.0, 1.0), requires_grad=False)
    optimizer.zero_grad()
    logits = model(x_natural)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = lib.argsort(adv_probs, dim=1)[:, -2:]
    new_y = lib.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        lib.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = lib.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / batch_size) * lib.sum(
        lib.sum(kl(lib.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust


def mart_and_gradient_penalty(lib):
    F = lib.nn.functional
    model = net(lib, dropout=0.0, bn=True)
    opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = lib.tensor(IMAGES), lib.tensor(LABELS)
    record = []
    for step in range(2):
        loss = mart_loss(lib, model, x, y, opt, draws(IMAGES.shape, seed=70 + step))
        loss.backward()
        opt.step()
        record.append(loss)
    for _ in range(2):  # Ross & Doshi-Velez: penalise the input gradient's norm
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y)
        grad = lib.autograd.grad(loss, xg, create_graph=True)[0]
        total = loss + 10.0 * grad.pow(2).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
        record.append([loss, total, xg.grad is None])
    return {"steps": record, "w": arrays(model.state_dict())}


def test_mart_and_input_gradient_regularisation():
    both(mart_and_gradient_penalty)


def cw_l2(lib, model, images, labels, c=1.0, kappa=0.0, steps=6, lr=0.05):
    """Carlini & Wagner's L2 attack as torchattacks writes it (tanh space, Adam)."""
    nn = lib.nn

    def tanh_space(x):
        return 1 / 2 * (lib.tanh(x) + 1)

    def atanh(x):
        return 0.5 * lib.log((1 + x) / (1 - x))

    def inverse_tanh_space(x):
        return atanh(lib.clamp(x * 2 - 1, min=-1, max=1))

    def f(outputs, labels):
        one_hot_labels = lib.eye(outputs.shape[1])[labels]
        other = lib.max((1 - one_hot_labels) * outputs, dim=1)[0]
        real = lib.max(one_hot_labels * outputs, dim=1)[0]
        return lib.clamp((real - other), min=-kappa)

    # a random start (PyTorch's draw): from w = atanh(2x - 1) itself, tanh_space(w) - x is
    # rounding noise, whose sign (libm's last bit) Adam's first steps would amplify
    w = inverse_tanh_space(images).detach() + 0.01 * lib.tensor(draws(tuple(images.shape),
                                                                      seed=80))
    w.requires_grad = True
    best_adv_images = images.clone().detach()
    best_L2 = 1e10 * lib.ones(len(images))
    prev_cost = 1e10
    dim = len(images.shape)
    MSELoss = nn.MSELoss(reduction="none")
    Flatten = nn.Flatten()
    optimizer = lib.optim.Adam([w], lr=lr)
    costs = []
    for step in range(steps):
        adv_images = tanh_space(w)
        current_L2 = MSELoss(Flatten(adv_images), Flatten(images)).sum(dim=1)
        L2_loss = current_L2.sum()
        outputs = model(adv_images)
        f_loss = f(outputs, labels).sum()
        cost = L2_loss + c * f_loss
        optimizer.zero_grad()
        cost.backward()
        optimizer.step()
        pre = lib.argmax(outputs.detach(), 1)
        # torchattacks: .float(); float64 here, and nodegrad never promotes silently
        condition = (pre != labels).to(images.dtype)
        mask = condition * (best_L2 > current_L2.detach())
        best_L2 = mask * current_L2.detach() + (1 - mask) * best_L2
        mask = mask.view([-1] + [1] * (dim - 1))
        best_adv_images = mask * adv_images.detach() + (1 - mask) * best_adv_images
        if step % max(steps // 10, 1) == 0:
            if cost.item() > prev_cost:
                break
            prev_cost = cost.item()
        costs.append(cost)
    return best_adv_images, best_L2, costs


def cw(lib):
    model = net(lib, dropout=0.0)
    model.eval()
    images, labels = lib.tensor(IMAGES), lib.tensor(LABELS)
    return list(cw_l2(lib, model, images, labels, c=5.0))


def test_carlini_wagner_l2():
    both(cw)


# 14. Free adversarial training (Shafahi et al.): minibatch replay, one backward for both

def free_at(lib):
    Variable = lib.autograd.Variable
    model = net(lib, dropout=0.0)
    criterion = lib.nn.CrossEntropyLoss()
    optimizer = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    lr_steps = 2 * 3
    scheduler = lib.optim.lr_scheduler.CyclicLR(optimizer, base_lr=0.0, max_lr=0.1,
                                                step_size_up=lr_steps / 2,
                                                step_size_down=lr_steps / 2)
    mean = lib.tensor([MEAN]).view(1, 1, 1, 1)
    std = lib.tensor([STD]).view(1, 1, 1, 1)
    fgsm_step, clip_eps = 2 / 255, 4 / 255
    global_noise_data = lib.zeros([4, 1, 8, 8])
    record = []
    for i in range(2):
        input, target = lib.tensor(IMAGES[4 * i:4 * i + 4]), lib.tensor(LABELS[4 * i:4 * i + 4])
        for _j in range(3):
            noise_batch = Variable(global_noise_data[0:input.size(0)], requires_grad=True)
            in1 = input + noise_batch
            in1.clamp_(0, 1.0)
            in1.sub_(mean).div_(std)
            output = model(in1)
            loss = criterion(output, target)
            prec1, prec2 = accuracy(lib, output, target, topk=(1, 2))
            optimizer.zero_grad()
            loss.backward()
            pert = fgsm_step * lib.sign(noise_batch.grad)
            global_noise_data[0:input.size(0)] += pert.data
            global_noise_data.clamp_(-clip_eps, clip_eps)
            optimizer.step()
            scheduler.step()
            record.append([loss, prec1, prec2, global_noise_data.clone(),
                           optimizer.param_groups[0]["lr"],
                           optimizer.param_groups[0]["momentum"]])
    return {"steps": record, "w": arrays(model.state_dict())}


def test_free_adversarial_training_cyclic_lr():
    both(free_at)


# 15. TracIn (Pruthi et al.) with per-sample gradients by vmap, exact influence by the Hessian

def tracin(lib):
    F = lib.nn.functional
    functional_call, vmap, grad = lib.func.functional_call, lib.func.vmap, lib.func.grad
    model = mlp(lib)
    opt = lib.optim.SGD(model.parameters(), lr=0.2)
    X, Y = lib.tensor(TAB), lib.tensor(TAB_Y)

    def compute_loss(params, buffers, sample, target):
        batch = sample.unsqueeze(0)
        targets = target.unsqueeze(0)
        predictions = functional_call(model, (params, buffers), (batch,))
        return F.cross_entropy(predictions, targets)

    ft_compute_sample_grad = vmap(grad(compute_loss), in_dims=(None, None, 0, 0))
    scores = lib.zeros(len(X), 2)
    for _epoch in range(3):  # a checkpoint per epoch
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        train_grads = ft_compute_sample_grad(params, buffers, X, Y)
        test_grads = ft_compute_sample_grad(params, buffers, X[:2], Y[:2])
        lr = opt.param_groups[0]["lr"]
        for k in train_grads:
            scores += lr * train_grads[k].flatten(1) @ test_grads[k].flatten(1).T
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()
    # exact influence for logistic regression on the last layer's features
    feats = model[:2](X).detach()
    w0 = lib.zeros(feats.shape[1] * C)

    def loss_w(w, f=feats, y=Y):
        return F.cross_entropy(f @ w.view(-1, C), y) + 0.01 * (w ** 2).sum()

    H = lib.func.hessian(loss_w)(w0)
    g_test = lib.func.grad(loss_w)(w0, feats[:1], Y[:1])
    ihvp = lib.linalg.solve(H, g_test)
    g_train = vmap(lib.func.grad(loss_w), in_dims=(None, 0, 0))(w0, feats.unsqueeze(1),
                                                                Y.unsqueeze(1))
    return {"scores": scores, "H": H, "influence": -(g_train @ ihvp)}


def test_tracin_per_sample_grads_and_exact_influence():
    both(tracin)


def test_inplace_relu_module_keeps_its_input():
    """Documented: ``nn.ReLU(inplace=True)`` returns a new tensor and leaves its input as it
    was (``F.relu(x, inplace=True)`` writes into x, as PyTorch's). So a Grad-CAM that keeps a
    convolution's output (a forward hook, ``retain_grad``) before such a ReLU sees the
    pre-activation values and their gradient, where PyTorch's would see them overwritten; the
    weights' gradients are the same."""
    x = ng.tensor([-1.0, 2.0, -3.0, 4.0], requires_grad=True)
    o = x * 1.0
    o.retain_grad()
    y = ng.nn.ReLU(inplace=True)(o)
    (y * ng.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert y is not o and o.tolist() == [-1.0, 2.0, -3.0, 4.0]
    assert o.grad.tolist() == [0.0, 2.0, 0.0, 4.0] == x.grad.tolist()
    o2 = x * 1.0
    assert ng.nn.functional.relu(o2, inplace=True) is o2 and o2.tolist() == [0, 2.0, 0, 4.0]
