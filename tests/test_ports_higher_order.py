"""PyTorch programs built on higher-order gradients, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as its
tutorial or paper code writes it: MAML, a physics-informed network, the WGAN-GP penalty, the
``torch.func`` tutorials (ensembles, per-sample gradients, Jacobians and Hessians),
``torch.autograd.functional``, a learned learning rate and an unrolled RK4 neural ODE. Both
runs start from PyTorch's seeded initial weights and see the same data, in float64, so every
recorded value must agree to rounding.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arr, assert_same, both  # noqa: F401
from _ports import seeded_build as seeded

torch = pytest.importorskip("torch")

TOL = 1e-10
RNG = np.random.default_rng(0)




# 1. MAML on sine-wave regression ------------------------------------------------------------

def sine_tasks(n_iter: int, n_tasks: int, k: int) -> list:
    """Per meta-iteration, tasks of (support x, support y, query x, query y)."""
    out = []
    for _ in range(n_iter):
        tasks = []
        for _ in range(n_tasks):
            amp, phase = RNG.uniform(0.1, 5.0), RNG.uniform(0, np.pi)
            xs, xq = RNG.uniform(-5, 5, (k, 1)), RNG.uniform(-5, 5, (k, 1))
            tasks.append((xs, amp * np.sin(xs - phase), xq, amp * np.sin(xq - phase)))
        out.append(tasks)
    return out


TASKS = sine_tasks(3, 2, 10)


def sine_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 20), nn.Tanh(),
                         nn.Linear(20, 1))


def maml_functional_call(lib):
    """MAML as the torch.func idiom writes it: fast weights as a dict, the inner loop through
    ``functional_call`` and ``autograd.grad(create_graph=True)``, outer Adam."""
    F = lib.nn.functional
    model = seeded(lib, sine_net)
    meta_opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    rec = []
    for tasks in TASKS:
        meta_opt.zero_grad()
        meta_loss = 0.0
        for xs, ys, xq, yq in tasks:
            xs, ys, xq, yq = (lib.tensor(a) for a in (xs, ys, xq, yq))
            fast = dict(model.named_parameters())
            for _ in range(2):
                loss = F.mse_loss(lib.func.functional_call(model, fast, (xs,)), ys)
                grads = lib.autograd.grad(loss, fast.values(), create_graph=True)
                fast = {n: w - 0.05 * g for (n, w), g in zip(fast.items(), grads)}
            meta_loss = meta_loss + F.mse_loss(lib.func.functional_call(model, fast, xq), yq)
        meta_loss = meta_loss / len(tasks)
        meta_loss.backward()
        rec.append([meta_loss.item(), [p.grad for p in model.parameters()]])
        meta_opt.step()
    return rec, model.state_dict()


def maml_manual(lib):
    """MAML as the original paper code writes it: a hand-written functional forward over a
    list of weights, ``grad(loss, model.parameters())`` for the first inner step, first-order
    terms kept with ``retain_graph``, and per-task meta-gradients accumulated by backward."""
    F = lib.nn.functional
    model = seeded(lib, sine_net)
    meta_opt = lib.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), amsgrad=True)

    def forward(x, w):
        x = F.relu(F.linear(x, w[0], w[1]))
        x = lib.tanh(F.linear(x, w[2], w[3]))
        return F.linear(x, w[4], w[5])

    rec = []
    for tasks in TASKS:
        meta_opt.zero_grad()
        for xs, ys, xq, yq in tasks:
            xs, ys, xq, yq = (lib.tensor(a) for a in (xs, ys, xq, yq))
            loss = F.mse_loss(model(xs), ys)
            grads = lib.autograd.grad(loss, model.parameters(), create_graph=True)
            fast = list(map(lambda p: p[1] - 0.05 * p[0], zip(grads, model.parameters())))
            loss = (forward(xs, fast) - ys).pow(2).mean()
            grads = lib.autograd.grad(loss, fast, create_graph=True, retain_graph=True)
            fast = [w - 0.05 * g for w, g in zip(fast, grads)]
            q = F.mse_loss(forward(xq, fast), yq, reduction="sum") / len(tasks)
            q.backward()
            rec.append(q.item())
        rec.append([p.grad.clone() for p in model.parameters()])
        meta_opt.step()
    return rec, model.state_dict()


def test_maml_functional_call_inner_loop():
    both(maml_functional_call)


def test_maml_paper_style_with_parameter_generator():
    both(maml_manual)


# 2. physics-informed networks -----------------------------------------------------------------

def pinn_net(lib, inputs: int = 1):
    nn = lib.nn
    return nn.Sequential(nn.Linear(inputs, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def pinn_poisson(lib, use_lbfgs: bool):
    """u'' = -pi^2 sin(pi x) on [0, 1] with u(0) = u(1) = 0: residual through two
    ``autograd.grad(create_graph=True, grad_outputs=ones_like)`` calls, Adam then L-BFGS."""
    model = seeded(lib, pinn_net)
    x = lib.tensor(np.linspace(0, 1, 17)[:, None], requires_grad=True)
    xb = lib.tensor([[0.0], [1.0]], dtype=lib.float64)
    f = -(math.pi ** 2) * lib.sin(math.pi * x.detach())

    def loss_fn():
        u = model(x)
        u_x = lib.autograd.grad(u, x, grad_outputs=lib.ones_like(u), create_graph=True)[0]
        u_xx = lib.autograd.grad(u_x, x, grad_outputs=lib.ones_like(u_x),
                                 create_graph=True)[0]
        res = u_xx - f
        return lib.mean(res ** 2) + lib.mean(model(xb) ** 2)

    rec = []
    opt = lib.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        rec.append(loss.item())
    if use_lbfgs:
        lbfgs = lib.optim.LBFGS(model.parameters(), lr=1, max_iter=6, history_size=5,
                                line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        for _ in range(2):
            rec.append(lbfgs.step(closure).item())
    rec.append(arr(x.grad) if x.grad is not None else None)
    return rec, model.state_dict()


def test_pinn_poisson_adam():
    both(pinn_poisson, False)


def test_pinn_poisson_lbfgs_strong_wolfe():
    both(pinn_poisson, True, tol=1e-8)


def pinn_burgers(lib):
    """Burgers' equation u_t + u u_x - nu u_xx = 0 as the PINN papers write it: separate x and
    t leaves made to require grad by attribute, joined with ``cat``, u_t and u_x from one
    ``grad`` call over both, a data term on the initial condition."""
    model = seeded(lib, lambda lib: pinn_net(lib, 2), seed=1)
    g = np.random.default_rng(1)
    x = lib.tensor(g.uniform(-1, 1, (24, 1)))
    t = lib.tensor(g.uniform(0, 1, (24, 1)))
    x.requires_grad = True
    t.requires_grad = True
    x0 = lib.tensor(np.linspace(-1, 1, 9)[:, None])
    u0 = -lib.sin(math.pi * x0)
    nu = 0.01 / math.pi
    opt = lib.optim.Adam(model.parameters(), lr=5e-3)
    sched = lib.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    rec = []
    for _ in range(4):
        u = model(lib.cat([x, t], dim=1))
        u_x, u_t = lib.autograd.grad(u.sum(), (x, t), create_graph=True)
        u_xx = lib.autograd.grad(u_x, x, lib.ones_like(u_x), retain_graph=True,
                                 create_graph=True)[0]
        f = u_t + u * u_x - nu * u_xx
        pred0 = model(lib.cat((x0, lib.zeros_like(x0)), 1))
        loss = lib.nn.MSELoss()(f, lib.zeros_like(f)) + lib.nn.functional.mse_loss(pred0, u0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        rec.append([loss.item(), f.detach(), u_xx.detach()])
    return rec, model.state_dict()


def test_pinn_burgers_two_leaves():
    both(pinn_burgers)


# 3. WGAN-GP -----------------------------------------------------------------------------------

def critic_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 1))


def gen_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(4, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 64),
                         nn.Tanh(), nn.Unflatten(1, (1, 8, 8)))


REAL = [np.tanh(RNG.standard_normal((6, 1, 8, 8))) for _ in range(3)]
NOISE = [RNG.standard_normal((6, 4)) for _ in range(6)]
ALPHA = [RNG.uniform(size=(6, 1, 1, 1)) for _ in range(6)]


def compute_gradient_penalty(lib, D, real_samples, fake_samples, alpha):
    """The penalty as the PyTorch-GAN repository writes it."""
    interpolates = (alpha * real_samples + ((1 - alpha) * fake_samples)).requires_grad_(True)
    d_interpolates = D(interpolates)
    fake = lib.ones(real_samples.shape[0], 1, dtype=lib.float64, requires_grad=False)
    gradients = lib.autograd.grad(outputs=d_interpolates, inputs=interpolates,
                                  grad_outputs=fake, create_graph=True, retain_graph=True,
                                  only_inputs=True)[0]
    gradients = gradients.view(gradients.size(0), -1)
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean()


def wgan_gp(lib):
    D, G = seeded(lib, critic_net), seeded(lib, gen_net, seed=1)
    opt_d = lib.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_g = lib.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9))
    rec, k = [], 0
    for i, real in enumerate(REAL):
        real = lib.tensor(real)
        for _ in range(2):  # n_critic
            opt_d.zero_grad()
            fake = G(lib.tensor(NOISE[k])).detach()
            gp = compute_gradient_penalty(lib, D, real, fake, lib.tensor(ALPHA[k]))
            d_loss = -lib.mean(D(real)) + lib.mean(D(fake)) + 10 * gp
            d_loss.backward()
            opt_d.step()
            rec.append([d_loss.item(), gp.item()])
            k += 1
        opt_g.zero_grad()
        g_loss = -lib.mean(D(G(lib.tensor(NOISE[i]))))
        g_loss.backward()
        opt_g.step()
        rec.append(g_loss.item())
    return rec, D.state_dict(), G.state_dict()


def test_wgan_gp_conv_critic():
    both(wgan_gp)


def gp_one_sided(lib):
    """The penalty on a flat critic with the norm taken by ``linalg.vector_norm``, the
    one-sided variant ``relu(norm - 1)^2`` and ``grad_outputs`` left out via ``.sum()``."""
    D = seeded(lib, lambda m: m.nn.Sequential(m.nn.Linear(5, 16), m.nn.SiLU(),
                                              m.nn.Linear(16, 16), m.nn.Softplus(),
                                              m.nn.Linear(16, 1)), seed=3)
    opt = lib.optim.RMSprop(D.parameters(), lr=1e-3)
    g = np.random.default_rng(3)
    rec = []
    for _ in range(3):
        real, fake = lib.tensor(g.standard_normal((8, 5))), lib.tensor(g.standard_normal((8, 5)))
        eps = lib.tensor(g.uniform(size=(8, 1)))
        x_hat = eps * real + (1 - eps) * fake
        x_hat.requires_grad_()
        (grad,) = lib.autograd.grad(D(x_hat).sum(), [x_hat], create_graph=True)
        norm = lib.linalg.vector_norm(grad, ord=2, dim=-1)
        gp = lib.nn.functional.relu(norm - 1).pow(2).mean()
        loss = D(fake).mean() - D(real).mean() + 10.0 * gp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec.append([loss.item(), norm.detach()])
    return rec, D.state_dict()


def test_wgan_gp_one_sided_vector_norm():
    both(gp_one_sided)


# 4. torch.func: ensembles, per-sample gradients, Jacobians and Hessians -----------------------

class EnsembleMLP:
    """The model-ensembling tutorial's MLP, with an eval-mode BatchNorm so buffers travel
    (one class per library: ``stack_module_state`` wants models of one class)."""

    classes: dict = {}

    @staticmethod
    def build(lib):
        if lib in EnsembleMLP.classes:
            return EnsembleMLP.classes[lib]()
        nn, F = lib.nn, lib.nn.functional

        class SimpleMLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(12, 16)
                self.bn = nn.BatchNorm1d(16)
                self.fc2 = nn.Linear(16, 8)
                self.fc3 = nn.Linear(8, 3)

            def forward(self, x):
                x = x.flatten(1)
                x = F.relu(self.bn(self.fc1(x)))
                x = F.relu(self.fc2(x))
                return self.fc3(x)

        EnsembleMLP.classes[lib] = SimpleMLP
        return SimpleMLP()


ENS_X = RNG.standard_normal((3, 5, 2, 6))
ENS_Y = RNG.integers(0, 3, (5,))


def ensemble(lib):
    func, F = lib.func, lib.nn.functional
    models = [seeded(lib, EnsembleMLP.build, seed=i) for i in range(3)]
    for m in models:  # running statistics that are not the identity
        m.bn.running_mean.copy_(lib.tensor(np.linspace(-0.5, 0.5, 16)))
        m.bn.running_var.fill_(1.5)
        m.eval()
    minibatches = lib.tensor(ENS_X)
    minibatch = minibatches[0]
    loop = [model(mb) for model, mb in zip(models, minibatches)]
    params, buffers = func.stack_module_state(models)
    base_model = copy.deepcopy(models[0])

    def fmodel(params, buffers, x):
        return func.functional_call(base_model, (params, buffers), (x,))

    p1 = func.vmap(fmodel)(params, buffers, minibatches)
    p2 = func.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, minibatch)
    # training the stacked ensemble: one loss over all members, Adam on the stacked leaves
    opt = lib.optim.Adam(list(params.values()), lr=1e-2)
    targets = lib.tensor(ENS_Y)
    losses = []
    for _ in range(3):
        logits = func.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, minibatch)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.repeat(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return [loop, p1, p2, losses, params, buffers]


def test_ensemble_stack_module_state_vmap():
    got = both(ensemble)
    assert_same(arr(got[1]), arr(got[0]))  # the vmapped ensemble is the loop


def cnn(lib):
    nn, F = lib.nn, lib.nn.functional

    class SimpleCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, 1)
            self.conv2 = nn.Conv2d(4, 6, 3, 1)
            self.fc1 = nn.Linear(24, 16)
            self.fc2 = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.relu(self.conv2(x))
            x = F.max_pool2d(x, 2)
            x = lib.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    return SimpleCNN()


def per_sample_grads(lib):
    """The per-sample-gradients tutorial: vmap(grad(loss of functional_call)) against a loop
    of ``backward`` calls, then the DP-SGD use: clip each, average, step."""
    func, F = lib.func, lib.nn.functional
    model = seeded(lib, cnn)
    g = np.random.default_rng(4)
    data = lib.tensor(g.standard_normal((6, 1, 8, 8)))
    targets = lib.tensor(g.integers(0, 10, (6,)))

    def loss_fn(predictions, targets):
        return F.nll_loss(predictions, targets)

    def compute_grad(sample, target):
        sample, target = sample.unsqueeze(0), target.unsqueeze(0)
        loss = loss_fn(model(sample), target)
        return lib.autograd.grad(loss, list(model.parameters()))

    loop = [compute_grad(data[i], targets[i]) for i in range(6)]
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def compute_loss(params, buffers, sample, target):
        batch, targets = sample.unsqueeze(0), target.unsqueeze(0)
        predictions = func.functional_call(model, (params, buffers), (batch,))
        return loss_fn(predictions, targets)

    ft_compute_grad = func.grad(compute_loss)
    ft_compute_sample_grad = func.vmap(ft_compute_grad, in_dims=(None, None, 0, 0))
    ft = ft_compute_sample_grad(params, buffers, data, targets)
    # DP-SGD: clip every example's gradient to norm 1, average, take an SGD step
    norms = lib.stack([g.flatten(1).norm(dim=1) for g in ft.values()], 1).norm(dim=1)
    scale = (1.0 / (norms + 1e-6)).clamp(max=1.0)
    opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for p, g in zip(model.parameters(), ft.values()):
        p.grad = (g * scale.view(-1, *[1] * (g.dim() - 1))).mean(0)
    opt.step()
    return [loop, ft, norms, model.state_dict()]


def test_per_sample_grads_tutorial():
    got = both(per_sample_grads)
    stacked = [np.stack([row[k] for row in arr(got[0])]) for k in range(8)]
    assert_same(list(arr(got[1]).values()), stacked)


def jacobians_hessians(lib):
    """The torch.func Jacobians-and-Hessians tutorial, every variant it shows."""
    func, F = lib.func, lib.nn.functional
    g = np.random.default_rng(5)
    D = 6
    weight, bias = lib.tensor(g.standard_normal((D, D))), lib.tensor(g.standard_normal(D))
    x = lib.tensor(g.standard_normal(D))
    xs = lib.tensor(g.standard_normal((4, D)))

    def predict(weight, bias, x):
        return F.linear(x, weight, bias).tanh()

    _, vjp_fn = func.vjp(partial(predict, weight, bias), x)
    (ft_jacobian,) = func.vmap(vjp_fn)(lib.eye(D, dtype=lib.float64))
    rec = [ft_jacobian, func.jacrev(predict, argnums=2)(weight, bias, x)]
    rec.append(list(func.jacrev(predict, argnums=(0, 1))(weight, bias, x)))
    rec.append(func.jacfwd(predict, argnums=2)(weight, bias, x))
    rec.append(list(func.jacfwd(predict, argnums=(0, 1))(weight, bias, x)))
    rec.append(func.hessian(predict, argnums=2)(weight, bias, x))
    rec.append(func.jacfwd(func.jacfwd(predict, argnums=2), argnums=2)(weight, bias, x))
    rec.append(func.jacrev(func.jacrev(predict, argnums=2), argnums=2)(weight, bias, x))
    rec.append(func.jacrev(predict, argnums=2, chunk_size=2)(weight, bias, x))
    rec.append(func.vmap(func.jacrev(predict, argnums=2), in_dims=(None, None, 0))(
        weight, bias, xs))

    def predict_with_output_summed(weight, bias, x):
        return predict(weight, bias, x).sum(0)

    rec.append(func.jacrev(predict_with_output_summed, argnums=2)(weight, bias, xs)
               .movedim(1, 0))
    rec.append(func.vmap(func.hessian(predict, argnums=2), in_dims=(None, None, 0))(
        weight, bias, xs))

    def f(x):
        return x.sin().sum()

    def hvp(f, primals, tangents):
        return func.jvp(func.grad(f), primals, tangents)[1]

    def hvp_revrev(f, primals, tangents):
        _, vjp_fn = func.vjp(func.grad(f), *primals)
        return vjp_fn(*tangents)

    tangent = lib.tensor(g.standard_normal(D))
    rec += [hvp(f, (x,), (tangent,)), hvp_revrev(f, (x,), (tangent,))]
    out, jvp_out = func.jvp(partial(predict, weight, bias), (x,), (tangent,))
    out2, jvp_fn = func.linearize(partial(predict, weight, bias), x)
    rec += [out, jvp_out, out2, jvp_fn(tangent)]
    return rec


def test_jacobians_hessians_tutorial():
    got = arr(both(jacobians_hessians))
    assert_same(got[0], got[1])
    assert_same(got[5], got[6])
    assert_same(got[-5][0], got[-6])


def param_dict_derivatives(lib):
    """grad/jacrev/jacfwd/hessian with respect to a parameter dict through functional_call,
    grad_and_value with has_aux, and the empirical NTK tutorial (Jacobian contraction and the
    vjp/jvp product form)."""
    func, F = lib.func, lib.nn.functional
    net = seeded(lib, lambda m: m.nn.Sequential(m.nn.Linear(3, 5), m.nn.Tanh(),
                                                m.nn.Linear(5, 2)), seed=6)
    g = np.random.default_rng(6)
    x = lib.tensor(g.standard_normal((4, 3)))
    y = lib.tensor(g.standard_normal((4, 2)))
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, x, y):
        out = func.functional_call(net, p, (x,))
        return F.mse_loss(out, y), out

    rec = [func.grad(loss, has_aux=True)(params, x, y)[0]]
    grads, (value, out) = func.grad_and_value(loss, has_aux=True)(params, x, y)
    rec += [grads, value, out]
    rec.append(func.jacrev(lambda p: func.functional_call(net, p, (x,)))(params))
    rec.append(func.jacfwd(lambda p: func.functional_call(net, p, (x,)))(params))
    small = {k: params[k] for k in ("2.weight", "2.bias")}

    def last_layer_loss(p):
        return loss({**params, **p}, x, y)[0]

    rec.append(func.hessian(last_layer_loss)(small))

    def fnet_single(params, x):
        return func.functional_call(net, params, (x.unsqueeze(0),)).squeeze(0)

    def ntk_jacobian_contraction(params, x1, x2):
        jac1 = func.vmap(func.jacrev(fnet_single), (None, 0))(params, x1)
        jac1 = [j.flatten(2) for j in jac1.values()]
        jac2 = func.vmap(func.jacrev(fnet_single), (None, 0))(params, x2)
        jac2 = [j.flatten(2) for j in jac2.values()]
        result = lib.stack([lib.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2)])
        return result.sum(0)

    def ntk_vps(params, x1, x2):
        def get_ntk(x1, x2):
            def func_x1(params):
                return fnet_single(params, x1)

            def func_x2(params):
                return fnet_single(params, x2)

            output, vjp_fn = func.vjp(func_x1, params)

            def get_ntk_slice(vec):
                vjps = vjp_fn(vec)
                _, jvps = func.jvp(func_x2, (params,), vjps)
                return jvps

            basis = lib.eye(output.numel(), dtype=output.dtype).view(output.numel(), -1)
            return func.vmap(get_ntk_slice)(basis)

        return func.vmap(func.vmap(get_ntk, (None, 0)), (0, None))(x1, x2)

    x2 = x[:3] * 0.5
    rec += [ntk_jacobian_contraction(params, x, x2), ntk_vps(params, x, x2)]
    return rec


def test_param_dict_derivatives_and_ntk():
    got = arr(both(param_dict_derivatives))
    assert_same(got[0], got[1])
    assert_same(got[-2], got[-1])


# 5. torch.autograd.functional ------------------------------------------------------------------

def autograd_functional(lib):
    """The documented examples of ``torch.autograd.functional``, with every keyword."""
    AF = lib.autograd.functional
    g = np.random.default_rng(7)
    inputs = lib.tensor(g.uniform(size=(2, 2)))
    x, y = lib.tensor(g.uniform(size=2)), lib.tensor(g.uniform(size=2))
    v2 = lib.tensor(g.standard_normal(2))
    v22 = lib.tensor(g.standard_normal((2, 2)))

    def exp_reducer(x):
        return x.exp().sum(dim=1)

    def exp_adder(x, y):
        return 2 * x.exp() + 3 * y

    def pow_reducer(x):
        return x.pow(3).sum()

    def pow_adder_reducer(x, y):
        return (2 * x.pow(2) + 3 * y.pow(2)).sum()

    def adder(x, y):
        return 2 * x + 3 * y

    rec = [AF.jacobian(exp_reducer, inputs)]
    jac = AF.jacobian(exp_reducer, inputs.clone().requires_grad_(), create_graph=True)
    rec += [jac, jac.grad_fn is not None]
    rec.append(list(AF.jacobian(exp_adder, (x, y))))
    rec.append(list(AF.jacobian(exp_adder, (x, y), vectorize=True)))
    rec.append(list(AF.jacobian(exp_adder, (x, y), vectorize=True, strategy="forward-mode")))
    rec.append(AF.jacobian(exp_reducer, inputs, strict=True))
    rec.append(AF.hessian(pow_reducer, inputs))
    rec.append([list(r) for r in AF.hessian(pow_adder_reducer, (x, y))])
    rec.append([list(r) for r in AF.hessian(pow_adder_reducer, (x, y), vectorize=True,
                                           outer_jacobian_strategy="forward-mode")])
    h = AF.hessian(pow_reducer, inputs.clone().requires_grad_(), create_graph=True)
    rec.append(h.grad_fn is not None)
    rec.append(list(AF.vjp(exp_reducer, inputs, v2)))
    out, (gx, gy) = AF.vjp(adder, (x, y), v2)
    rec += [out, gx, gy]
    rec.append(list(AF.jvp(exp_reducer, inputs, v22)))
    out, jv = AF.jvp(adder, (x, y), (v2, v2))
    rec += [out, jv]
    rec.append(list(AF.hvp(pow_reducer, inputs, v22)))
    rec.append(list(AF.vhp(pow_reducer, inputs, v22)))
    out, (hx, hy) = AF.hvp(pow_adder_reducer, (x, y), (v2, v2))
    rec += [out, hx, hy]
    # non-strict: an output independent of an input gives zeros; strict refuses it
    rec.append(list(AF.jacobian(lambda a, b: a * 2, (x, y))))
    with pytest.raises(RuntimeError):
        AF.jacobian(lambda a: lib.ones(2, dtype=lib.float64), x, strict=True)
    with pytest.raises(RuntimeError):
        AF.vjp(lambda a, b: a * 2, (x, y), v2, strict=True)
    return rec


def test_autograd_functional_documented_calls():
    both(autograd_functional)


def test_autograd_functional_import_path():
    from nodegrad.autograd.functional import hessian, jacobian

    assert jacobian is ng.autograd.functional.jacobian
    assert hessian(lambda x: (x ** 3).sum(), ng.tensor([1.0, 2.0])).tolist() == \
        [[6.0, 0.0], [0.0, 12.0]]


def contractive_autoencoder(lib):
    """Jacobian regularisation (a contractive autoencoder): the encoder's Jacobian per example
    by ``autograd.functional.jacobian(create_graph=True)``, its Frobenius norm in the loss."""
    nn, AF = lib.nn, lib.autograd.functional

    def build(m):
        return m.nn.ModuleDict({"enc": m.nn.Sequential(m.nn.Linear(5, 3), m.nn.Sigmoid()),
                                "dec": m.nn.Linear(3, 5)})

    model = seeded(lib, build, seed=8)
    data = lib.tensor(np.random.default_rng(8).standard_normal((4, 5)))
    opt = lib.optim.Adagrad(model.parameters(), lr=0.1)
    rec = []
    for _ in range(3):
        recon = model["dec"](model["enc"](data))
        penalty = 0.0
        for row in data:
            J = AF.jacobian(model["enc"], row, create_graph=True)
            penalty = penalty + J.pow(2).sum()
        loss = nn.functional.mse_loss(recon, data) + 0.1 * penalty / len(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append([loss.item(), penalty.item()])
    return rec, model.state_dict()


def test_contractive_autoencoder_jacobian_penalty():
    both(contractive_autoencoder)


# 6. hypergradients and unrolled integrators ------------------------------------------------------

def learned_learning_rate(lib):
    """A learning rate learned through an unrolled inner loop: inner SGD with momentum written
    by hand, gradients by ``autograd.grad(create_graph=True)``, the validation loss
    differentiated with respect to log(lr) and the initial weights together."""
    g = np.random.default_rng(9)
    xtr, xval = lib.tensor(g.standard_normal((16, 4))), lib.tensor(g.standard_normal((8, 4)))
    w_true = lib.tensor(g.standard_normal((4, 1)))
    ytr = xtr @ w_true + 0.1 * lib.tensor(g.standard_normal((16, 1)))
    yval = xval @ w_true
    log_lr = lib.tensor(math.log(0.05), dtype=lib.float64, requires_grad=True)
    w0 = lib.tensor(g.standard_normal((4, 1)) * 0.1, requires_grad=True)
    hyper_opt = lib.optim.Adam([{"params": [log_lr], "lr": 0.05}, {"params": [w0]}], lr=1e-2)
    rec = []
    for _ in range(3):
        w, v = w0.clone(), lib.zeros_like(w0)
        for _ in range(5):
            train_loss = ((lib.tanh(xtr @ w) - ytr) ** 2).mean()
            (gw,) = lib.autograd.grad(train_loss, w, create_graph=True)
            v = 0.9 * v + gw
            w = w - log_lr.exp() * v
        val_loss = lib.nn.functional.l1_loss(lib.tanh(xval @ w), yval)
        hyper_opt.zero_grad()
        val_loss.backward()
        rec.append([val_loss.item(), log_lr.grad.clone(), w0.grad.clone()])
        hyper_opt.step()
    return rec, [log_lr, w0]


def test_learned_learning_rate_hypergradient():
    both(learned_learning_rate)


def hessian_free_step(lib):
    """A damped Newton step by conjugate gradients on Hessian-vector products, the double
    backward form (``grad`` of ``grad . v``) that Hessian-free and TRPO code uses."""
    model = seeded(lib, lambda m: m.nn.Sequential(m.nn.Linear(3, 6), m.nn.Softplus(),
                                                  m.nn.Linear(6, 1)), seed=10)
    g = np.random.default_rng(10)
    x, y = lib.tensor(g.standard_normal((12, 3))), lib.tensor(g.standard_normal((12, 1)))
    params = list(model.parameters())
    rec = []
    for _ in range(2):
        loss = lib.nn.functional.mse_loss(model(x), y)
        grads = lib.autograd.grad(loss, params, create_graph=True)
        flat_grad = lib.cat([gr.reshape(-1) for gr in grads])

        def hvp(vec):
            hv = lib.autograd.grad(flat_grad @ vec, params, retain_graph=True)
            return lib.cat([h.contiguous().view(-1) for h in hv]) + 0.1 * vec

        b = -flat_grad.detach()
        p_, r = b.clone(), b.clone()
        s = lib.zeros_like(b)
        rs = r.dot(r)
        for _ in range(5):
            Ap = hvp(p_)
            alpha = rs / p_.dot(Ap)
            s += alpha * p_
            r -= alpha * Ap
            rs_new = r.dot(r)
            p_ = r + rs_new / rs * p_
            rs = rs_new
        with lib.no_grad():
            k = 0
            for p in params:
                n = p.numel()
                p.add_(s[k:k + n].view_as(p))
                k += n
        rec.append([loss.item(), s])
    return rec, model.state_dict()


def test_hessian_free_conjugate_gradient_step():
    both(hessian_free_step, tol=1e-9)


class ODEFunc:
    """torchdiffeq's ``ode_demo`` right-hand side: dy/dt = net(y^3)."""

    classes: dict = {}

    @staticmethod
    def build(lib):
        if lib not in ODEFunc.classes:
            nn = lib.nn

            class Func(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
                    for m in self.net.modules():
                        if isinstance(m, nn.Linear):
                            nn.init.normal_(m.weight, mean=0, std=0.1)
                            nn.init.constant_(m.bias, val=0)

                def forward(self, t, y):
                    return self.net(y ** 3)

            ODEFunc.classes[lib] = Func
        return ODEFunc.classes[lib]()


def odeint_rk4(lib, func, y0, t):
    """Fixed-step classical Runge-Kutta over the times ``t``, unrolled (backprop through it)."""
    ys = [y0]
    y = y0
    for t0, t1 in zip(t[:-1], t[1:]):
        dt = t1 - t0
        k1 = func(t0, y)
        k2 = func(t0 + dt / 2, y + dt * k1 / 2)
        k3 = func(t0 + dt / 2, y + dt * k2 / 2)
        k4 = func(t1, y + dt * k3)
        y = y + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        ys.append(y)
    return lib.stack(ys)


def neural_ode(lib):
    true_A = lib.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=lib.float64)
    t = lib.linspace(0.0, 1.0, 9, dtype=lib.float64)
    true_y0 = lib.tensor([[2.0, 0.0]], dtype=lib.float64)
    with lib.no_grad():
        true_y = odeint_rk4(lib, lambda t, y: lib.mm(y ** 3, true_A), true_y0, t)
    func = seeded(lib, ODEFunc.build, seed=11)
    optimizer = lib.optim.RMSprop(func.parameters(), lr=1e-3)
    idx = [np.array([0, 2, 4]), np.array([1, 3, 5])]
    rec = []
    for itr in range(2):
        optimizer.zero_grad()
        s = lib.from_numpy(idx[itr])
        batch_y0 = true_y[s]  # (M, 1, D)
        batch_t = t[:4]
        batch_y = lib.stack([true_y[s + i] for i in range(4)], dim=0)
        pred_y = odeint_rk4(lib, func, batch_y0, batch_t)
        loss = lib.mean(lib.abs(pred_y - batch_y))
        loss.backward()
        optimizer.step()
        rec.append([loss.item(), pred_y.detach()])
    with lib.no_grad():
        rec.append(odeint_rk4(lib, func, true_y0, t))
    return rec, func.state_dict()


def test_neural_ode_rk4_unrolled():
    both(neural_ode)


# 7. more idioms: MAML through torch.func.grad, BatchNorm fast weights, R1 penalty ----------------

def bn_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(1, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 1))


def maml_func_grad(lib):
    """MAML written with ``torch.func.grad`` over a parameter dict that carries the meta
    graph, through a BatchNorm in training mode (running statistics off, as torch.func asks),
    and the inner step as a dict comprehension over ``grads.items()``."""
    func, F = lib.func, lib.nn.functional
    model = seeded(lib, bn_net, seed=12)
    func.replace_all_batch_norm_modules_(model)  # torch.func's way to BatchNorm under grad
    meta_opt = lib.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def inner_loss(params, x, y):
        return F.mse_loss(func.functional_call(model, params, (x,)), y)

    rec = []
    for tasks in TASKS[:2]:
        meta_opt.zero_grad()
        total = 0.0
        for xs, ys, xq, yq in tasks:
            xs, ys, xq, yq = (lib.tensor(a) for a in (xs, ys, xq, yq))
            params = {k: v for k, v in model.named_parameters()}
            for _ in range(2):
                grads = func.grad(inner_loss)(params, xs, ys)
                params = {k: params[k] - 0.1 * g for k, g in grads.items()}
            total = total + inner_loss(params, xq, yq)
        total.backward()
        rec.append([total.item(), [p.grad for p in model.parameters()]])
        meta_opt.step()
    return rec, model.state_dict()


def test_maml_with_func_grad_and_batchnorm():
    both(maml_func_grad)


def r1_critic(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.GELU(),
                         nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1, bias=False),
                         nn.InstanceNorm2d(4, affine=True), nn.ELU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 1))


def r1_penalty(lib):
    """StyleGAN2's R1 regulariser on real images, the critic's double backward through
    convolutions, group/instance/layer norms, GELU, ELU and pooling."""
    D = seeded(lib, r1_critic, seed=13)
    opt = lib.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99), eps=1e-8)
    g = np.random.default_rng(13)
    rec = []
    for _ in range(3):
        real_img = lib.tensor(g.standard_normal((3, 2, 6, 6)))
        fake_img = lib.tensor(g.standard_normal((3, 2, 6, 6)))
        real_img.requires_grad = True
        real_pred = D(real_img)
        (grad_real,) = lib.autograd.grad(outputs=real_pred.sum(), inputs=real_img,
                                         create_graph=True)
        grad_penalty = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
        d_loss = lib.nn.functional.softplus(D(fake_img)).mean() + \
            lib.nn.functional.softplus(-real_pred).mean()
        opt.zero_grad()
        (d_loss + 10 / 2 * grad_penalty).backward()
        opt.step()
        rec.append([d_loss.item(), grad_penalty.item(), real_img.grad])
    return rec, D.state_dict()


def test_r1_penalty_norm_layers_double_backward():
    both(r1_penalty)


def pinn_sliced_columns(lib):
    """The PINN idiom with one input tensor: derivatives by ``grad(u, X)`` then column slices,
    u_xx from the u_x column, ``retain_graph`` on a derivative taken before ``backward``."""
    model = seeded(lib, lambda m: pinn_net(m, 2), seed=14)
    g = np.random.default_rng(14)
    X = lib.tensor(g.uniform(-1, 1, (20, 2)), requires_grad=True)
    opt = lib.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
    rec = []
    for _ in range(3):
        u = model(X)
        u_X = lib.autograd.grad(u, X, grad_outputs=lib.ones_like(u), retain_graph=True,
                                create_graph=True)[0]
        u_x, u_t = u_X[:, 0:1], u_X[:, 1:2]
        u_xx = lib.autograd.grad(u_x, X, grad_outputs=lib.ones_like(u_x),
                                 create_graph=True)[0][:, [0]]
        residual = u_t - 0.1 * u_xx + lib.sin(u)
        loss = residual.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append([loss.item(), u_xx.detach(), X.grad])
    return rec, model.state_dict()


def test_pinn_sliced_derivative_columns():
    both(pinn_sliced_columns)


def batched_grad_jacobian(lib):
    """Jacobian rows by ``autograd.grad(is_grads_batched=True)`` against the loop of
    ``grad`` calls with ``retain_graph``, and ``allow_unused``/``materialize_grads``."""
    g = np.random.default_rng(15)
    x = lib.tensor(g.standard_normal(4), requires_grad=True)
    unused = lib.tensor(g.standard_normal(2), requires_grad=True)
    A = lib.tensor(g.standard_normal((3, 4)))
    y = lib.tanh(A @ x) * x[:3]
    eye = lib.eye(3, dtype=lib.float64)
    (jac,) = lib.autograd.grad(y, x, eye, retain_graph=True, is_grads_batched=True)
    rows = [lib.autograd.grad(y, x, eye[i], retain_graph=True)[0] for i in range(3)]
    gx, gu = lib.autograd.grad(y.sum(), [x, unused], retain_graph=True, allow_unused=True)
    gx2, gu2 = lib.autograd.grad(y.sum(), [x, unused], materialize_grads=True)
    return [jac, rows, gx, gu is None, gx2, gu2]


def test_batched_grad_jacobian_rows():
    got = both(batched_grad_jacobian)
    assert_same(arr(got[0]), np.stack(arr(got[1])))


# 8. the fixes these ports needed, each on its own ------------------------------------------------

def test_grad_and_backward_take_any_iterable_of_tensors():
    """``autograd.grad(loss, model.parameters())`` (a generator) and dict values, as PyTorch."""
    def run(lib):
        model = seeded(lib, sine_net)
        x = lib.tensor(np.linspace(-1, 1, 5)[:, None])
        loss = model(x).pow(2).sum()
        g1 = lib.autograd.grad(loss, model.parameters(), retain_graph=True)
        g2 = lib.autograd.grad(loss, dict(model.named_parameters()).values(), retain_graph=True)
        loss.backward(inputs=(p for n, p in model.named_parameters() if "bias" in n),
                      retain_graph=True)
        lib.autograd.backward(iter([loss]), inputs=iter([model[0].weight]))
        return [list(g1), list(g2), [p.grad for p in model.parameters()]]

    got = both(run)
    assert_same(arr(got[0]), arr(got[1]))
    x = ng.tensor([1.0], requires_grad=True)
    with pytest.raises(TypeError, match="grad: inputs must be a tensor or a sequence"):
        ng.autograd.grad(x * 2, [x, 3.0])
    with pytest.raises(ng.errors.GradError, match="inputs argument cannot be empty"):
        ng.autograd.grad(x * 2, iter([]))


def test_transforms_return_dicts_in_their_input_order():
    """A dict of gradients iterates as the parameters did (torch.func's order), so zipping
    ``grads.values()`` with ``model.parameters()`` pairs each weight with its own gradient;
    sorting them instead paired ``fc.bias`` with ``fc.weight``, which broadcasting hid."""
    params = {"fc.weight": ng.ones(2, 3), "fc.bias": ng.zeros(2)}
    grads = ng.func.grad(lambda p: (p["fc.weight"].sum(1) * 2 + p["fc.bias"]).sum())(params)
    assert list(grads) == list(params)
    assert list(ng.func.tree_map(lambda t: t, params)) == list(params)
    leaves, tdef = ng.func.tree_flatten(params)  # the leaves stay in sorted order, as JAX's
    assert [tuple(t.shape) for t in leaves] == [(2,), (2, 3)]
    assert tdef == ng.func.tree_structure({"fc.bias": 0, "fc.weight": 0})
    vm = ng.func.vmap(lambda p: p, in_dims=({"fc.weight": 0, "fc.bias": 0},))(
        {"fc.weight": ng.ones(4, 2, 3), "fc.bias": ng.zeros(4, 2)})
    assert list(vm) == list(params)


def nested_vmap_vjp_jvp(lib):
    """``vjp_fn`` and ``linearize``'s ``jvp_fn`` made inside a vmap, called inside a further
    vmap of their own (the empirical-NTK tutorial's pattern)."""
    func = lib.func
    g = np.random.default_rng(16)
    W = lib.tensor(g.standard_normal((3, 2)))
    xs = lib.tensor(g.standard_normal((4, 2)))

    def per_x(x):
        out, vjp_fn = func.vjp(lambda w: lib.tanh(w @ x), W)
        basis = lib.eye(3, dtype=lib.float64)
        rows = func.vmap(vjp_fn)(basis)[0]
        twice = func.vmap(func.vmap(vjp_fn))(lib.stack([basis, 2 * basis]))[0]  # two more
        return rows, twice, func.vmap(
            lambda r: func.jvp(lambda w: lib.tanh(w @ x), (W,), (r,))[1])(rows)

    return list(func.vmap(per_x)(xs))


def test_vjp_fn_called_inside_a_nested_vmap():
    both(nested_vmap_vjp_jvp)
    _, fn = ng.func.linearize(lambda x: x.sin(), ng.ones(3))
    out = ng.func.vmap(lambda x: ng.func.vmap(fn)(ng.stack([x, 2 * x])))(ng.ones(2, 3))
    np.testing.assert_allclose(out.numpy(), np.cos(1.0) * np.array([[1, 2]] * 2)[..., None]
                               * np.ones((2, 2, 3)))
    made = []

    def keep(x):
        out, fn = ng.func.vjp(lambda y: y * 2, x)
        made.append(fn)
        return out

    ng.func.vmap(keep)(ng.ones(2, 3))
    with pytest.raises(ng.errors.GradError, match="called outside it"):
        made[0](ng.ones(3))


def closed_over_parameters(lib):
    """Transforms of a function that closes over a tensor requiring grad: the results carry
    its graph (torch.func composes with ``backward``), and ``autograd.functional`` with
    ``create_graph=True`` too; without it they are detached."""
    x = lib.tensor([0.1, 0.2, 0.3], dtype=lib.float64)
    w = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)

    def f(x):
        return (w * x).sin()

    def s(x):
        return f(x).sum()

    AF = lib.autograd.functional
    outs = [lib.func.grad(s)(x), lib.func.jacrev(f)(x), lib.func.jacfwd(f)(x),
            lib.func.vjp(f, x)[1](lib.ones(3, dtype=lib.float64))[0], lib.func.hessian(s)(x),
            lib.func.jvp(f, (x,), (x,))[1], lib.func.vmap(lib.func.grad(s))(lib.stack([x, x])),
            AF.jacobian(f, x, create_graph=True), AF.hessian(s, x, create_graph=True),
            AF.hvp(s, x, x, create_graph=True)[1], AF.vjp(f, x, x, create_graph=True)[1],
            AF.jvp(f, x, x, create_graph=True)[1]]
    flags = [t.requires_grad for t in outs] + [AF.jacobian(f, x).requires_grad]
    grads = []
    for t in outs:
        w.grad = None
        (t * t).sum().backward()
        grads.append(w.grad.clone())
    with lib.no_grad():
        flags.append(lib.func.grad(s)(x).requires_grad)
    return [flags, grads]


def test_transforms_keep_the_graph_of_closed_over_tensors():
    got = both(closed_over_parameters)
    assert got[0] == [True] * 12 + [False, False]


def test_func_jvp_strict_and_jacfwd_randomness():
    def run(lib):
        x = lib.tensor([1.0, 2.0], dtype=lib.float64)
        out = [lib.func.jvp(lambda a: a.exp(), (x,), (x,), strict=True)[1],
               lib.func.jacfwd(lambda a: a.exp(), randomness="same")(x)]
        with pytest.raises(RuntimeError, match="independent of the inputs"):
            lib.func.jvp(lambda a: lib.ones(2), (x,), (x,), strict=True)
        return out

    both(run)
    with pytest.raises(ValueError, match="randomness"):
        ng.func.jacfwd(lambda a: a, randomness="sometimes")


# 9. MAML on few-shot classification: functional conv net, and the vmap-over-tasks version -------

def omniglot_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=1.0, affine=True),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2, 2), nn.Conv2d(4, 4, 3),
                         nn.BatchNorm2d(4, momentum=1.0, affine=True), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(4, 3))


FEW = np.random.default_rng(17)
FEW_SHOT = [(FEW.standard_normal((2, 6, 1, 10, 10)), FEW.integers(0, 3, (2, 6)),
             FEW.standard_normal((2, 6, 1, 10, 10)), FEW.integers(0, 3, (2, 6)))
            for _ in range(2)]


def maml_omniglot_vmap(lib, use_vmap: bool = True):
    """functorch's maml-omniglot example: ``vmap`` over tasks of an inner loop of
    ``grad(compute_loss)`` on a parameter dict that requires grad (the meta-parameters), the
    BatchNorms made stateless, the summed query losses backpropagated to the model.
    ``use_vmap=False`` runs the tasks one by one (the same numbers)."""
    func, F = lib.func, lib.nn.functional
    net = seeded(lib, omniglot_net, seed=17)
    func.replace_all_batch_norm_modules_(net)
    meta_opt = lib.optim.Adam(net.parameters(), lr=1e-3)
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())

    def fnet(params, buffers, x):
        return func.functional_call(net, (params, buffers), (x,))

    def loss_for_task(n_inner_iter, x_spt, y_spt, x_qry, y_qry):
        def compute_loss(new_params, buffers, x, y):
            return F.cross_entropy(fnet(new_params, buffers, x), y)

        new_params = params
        for _ in range(n_inner_iter):
            grads = func.grad(compute_loss)(new_params, buffers, x_spt, y_spt)
            new_params = {k: new_params[k] - g * 1e-1 for k, g in grads.items()}
        qry_logits = fnet(new_params, buffers, x_qry)
        qry_loss = F.cross_entropy(qry_logits, y_qry)
        qry_acc = (qry_logits.argmax(dim=1) == y_qry).float().mean()
        return qry_loss, qry_acc

    rec = []
    for x_spt, y_spt, x_qry, y_qry in FEW_SHOT:
        x_spt, x_qry = lib.tensor(x_spt), lib.tensor(x_qry)
        y_spt, y_qry = lib.tensor(y_spt), lib.tensor(y_qry)
        meta_opt.zero_grad()
        run = partial(loss_for_task, 2)
        if use_vmap:
            qry_losses, qry_accs = func.vmap(run)(x_spt, y_spt, x_qry, y_qry)
        else:
            per_task = [run(x_spt[t], y_spt[t], x_qry[t], y_qry[t]) for t in range(2)]
            qry_losses, qry_accs = (lib.stack(r) for r in zip(*per_task))
        qry_losses.sum().backward()
        meta_opt.step()
        rec.append([qry_losses.detach(), qry_accs, [p.grad for p in net.parameters()]])
    return rec, net.state_dict()


def test_maml_omniglot_vmap_over_tasks():
    """Against PyTorch's task-by-task loop: PyTorch's own vmap of this program gives other
    meta-gradients for the weights before each BatchNorm (its batching of batch norm's double
    backward; its loop, and nodegrad's vmap and loop, agree)."""
    ref = maml_omniglot_vmap(torch, use_vmap=False)
    assert_same(arr(maml_omniglot_vmap(ng)), arr(ref))
    assert_same(arr(maml_omniglot_vmap(ng, use_vmap=False)), arr(ref))


def maml_conv_functional(lib):
    """The original MAML conv model written functionally: ``F.conv2d``, ``F.batch_norm`` in
    training mode without running statistics, ``F.max_pool2d``, cross-entropy with label
    smoothing, fast weights from ``autograd.grad(create_graph=True)`` per task."""
    F = lib.nn.functional
    net = seeded(lib, omniglot_net, seed=18)
    weights = [p for p in net.parameters()]
    meta_opt = lib.optim.Adam(weights, lr=1e-3)

    def forward(x, w):
        for i in (0, 4):
            x = F.conv2d(x, w[i], w[i + 1])
            x = F.batch_norm(x, None, None, weight=w[i + 2], bias=w[i + 3], training=True)
            x = F.max_pool2d(F.relu(x), kernel_size=2, stride=2)
        return F.linear(x.view(x.size(0), -1), w[8], w[9])

    rec = []
    for x_spt, y_spt, x_qry, y_qry in FEW_SHOT:
        meta_opt.zero_grad()
        losses = []
        for t in range(2):
            xs, xq = lib.tensor(x_spt[t]), lib.tensor(x_qry[t])
            ys, yq = lib.tensor(y_spt[t]), lib.tensor(y_qry[t])
            fast = weights
            for _ in range(2):
                loss = F.cross_entropy(forward(xs, fast), ys, label_smoothing=0.1)
                grads = lib.autograd.grad(loss, fast, create_graph=True)
                fast = [w - 0.4 * g for w, g in zip(fast, grads)]
            losses.append(F.cross_entropy(forward(xq, fast), yq))
        meta_loss = lib.stack(losses).mean()
        meta_loss.backward()
        meta_opt.step()
        rec.append([meta_loss.item(), [w.grad for w in weights]])
    return rec, net.state_dict()


def test_maml_conv_functional_batch_norm():
    both(maml_conv_functional)


# 10. torch.func call forms ---------------------------------------------------------------------

def func_call_forms(lib):
    """functional_call with a single tensor argument, kwargs, a partial dict, strict and tied
    weights; grad over (params, x) with argnums and keyword arguments; has_aux in vjp and
    jacrev; vmap with out_dims, chunk_size and dict in_dims."""
    func, F = lib.func, lib.nn.functional

    def build(m):
        class Tied(m.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = m.nn.Linear(3, 4, bias=False)
                self.out = m.nn.Linear(4, 3, bias=False)
                self.out.weight = self.emb.weight  # transposed use below, one tensor

            def forward(self, x, scale=1.0):
                h = m.tanh(self.emb(x)) * scale
                return F.linear(h, self.out.weight.t())

        return Tied()

    model = seeded(lib, build, seed=19)
    g = np.random.default_rng(19)
    x = lib.tensor(g.standard_normal((5, 3)))
    params = {k: v.detach() for k, v in model.named_parameters()}
    assert list(params) == ["emb.weight"]  # a tied weight is named once
    w2 = params["emb.weight"] * 2
    rec = [func.functional_call(model, {"emb.weight": w2}, x),
           func.functional_call(model, {"emb.weight": w2}, (x,), {"scale": 0.5}),
           func.functional_call(model, {"out.weight": w2}, (x,)),  # tied: both replaced
           func.functional_call(model, {"emb.weight": w2}, (x,), tie_weights=False),
           func.functional_call(model, {"emb.weight": w2}, (x,), strict=True)]
    with pytest.raises((RuntimeError, ValueError)):
        func.functional_call(model, {}, (x,), strict=True)

    def loss(p, x, *, scale):
        out = func.functional_call(model, p, (x,), {"scale": scale})
        return out.pow(2).mean(), out

    (gp, gx), aux = func.grad(loss, argnums=(0, 1), has_aux=True)(params, x, scale=0.7)
    rec += [gp, gx, aux]
    out, vjp_fn, aux2 = func.vjp(lambda p: loss(p, x, scale=1.0), params, has_aux=True)
    rec += [out, vjp_fn(lib.tensor(1.0, dtype=lib.float64)), aux2]
    jac, aux3 = func.jacrev(lambda x: (lib.sin(x) * 2, x.sum()), has_aux=True)(x[0])
    rec += [jac, aux3]

    def two_outputs(w, x):
        y = x @ w
        return y, y.sum(-1)

    ws = lib.tensor(g.standard_normal((4, 3, 2)))
    a, b = func.vmap(two_outputs, in_dims=(0, None), out_dims=(1, 0), chunk_size=3)(ws, x)
    rec += [a, b]
    ens = {"w": ws, "b": lib.tensor(g.standard_normal(2))}
    rec.append(func.vmap(lambda p, x: x @ p["w"] + p["b"], in_dims=({"w": 0, "b": None}, None))(
        ens, x))
    return rec


def test_func_call_forms():
    both(func_call_forms)


# 11. continuous normalising flow, score matching, a third-order PDE residual ---------------------

def cnf_net(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(3, 16), nn.Softplus(beta=2.0), nn.Linear(16, 16),
                         nn.GELU(approximate="tanh"), nn.Linear(16, 2))


def divergence(lib, f, x):
    """FFJORD's exact trace: one ``grad`` per dimension, the diagonal picked by slicing."""
    sum_diag = 0.0
    for i in range(x.shape[1]):
        sum_diag += lib.autograd.grad(f[:, i].sum(), x, create_graph=True)[0].contiguous()[:, i]
    return sum_diag.contiguous()


def cnf(lib):
    """A continuous normalising flow trained by maximum likelihood: the state and the
    log-density change integrated together by RK4, the divergence exact (training) and by
    Hutchinson's estimator with fixed probes (evaluation)."""
    net = seeded(lib, cnf_net, seed=20)
    g = np.random.default_rng(20)
    data = lib.tensor(g.standard_normal((8, 2)) * 0.5 + 1.0)
    probes = lib.tensor(g.choice([-1.0, 1.0], size=(8, 2)))
    opt = lib.optim.Adam(net.parameters(), lr=1e-2)

    def dynamics(t, z, exact=True):
        z = z.requires_grad_(True) if not z.requires_grad else z
        tt = lib.full((z.shape[0], 1), t, dtype=z.dtype)
        dz = net(lib.cat([z, tt], 1))
        if exact:
            return dz, -divergence(lib, dz, z)
        e_dzdx = lib.autograd.grad(dz, z, probes, create_graph=True)[0]
        return dz, -(e_dzdx * probes).view(z.shape[0], -1).sum(dim=1)

    def integrate(z, exact=True, steps=3):
        logp = lib.zeros(z.shape[0], dtype=z.dtype)
        h = 1.0 / steps
        for k in range(steps):
            t = k * h
            k1 = dynamics(t, z, exact)
            k2 = dynamics(t + h / 2, z + h / 2 * k1[0], exact)
            k3 = dynamics(t + h / 2, z + h / 2 * k2[0], exact)
            k4 = dynamics(t + h, z + h * k3[0], exact)
            z = z + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            logp = logp + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return z, logp

    rec = []
    for _ in range(2):
        z, dlogp = integrate(data.clone())
        logp_z = -0.5 * (z ** 2).sum(1) - math.log(2 * math.pi)
        loss = -(logp_z - dlogp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append([loss.item(), z.detach(), dlogp.detach()])
    z, dlogp = integrate(data.clone(), exact=False, steps=2)
    rec.append([z.detach(), dlogp.detach()])
    return rec, net.state_dict()


def test_cnf_exact_and_hutchinson_divergence():
    both(cnf)


def score_matching(lib):
    """Denoising and sliced score matching: the score network's Jacobian-vector products by
    ``grad`` with random projections, SiLU/Mish/ELU/LogSigmoid layers twice differentiated."""
    nn = lib.nn

    def build(m):
        return m.nn.Sequential(m.nn.Linear(2, 12), m.nn.SiLU(), m.nn.Linear(12, 12),
                               m.nn.Mish(), m.nn.Linear(12, 12), m.nn.ELU(alpha=0.5),
                               m.nn.Linear(12, 12), m.nn.LogSigmoid(), m.nn.Linear(12, 2))

    score = seeded(lib, build, seed=21)
    g = np.random.default_rng(21)
    opt = lib.optim.Adam(score.parameters(), lr=1e-3)
    rec = []
    for _ in range(3):
        x = lib.tensor(g.standard_normal((10, 2)))
        v = lib.tensor(g.standard_normal((10, 2)))
        x.requires_grad_(True)
        s = score(x)
        gradv = lib.autograd.grad(lib.sum(s * v), x, create_graph=True)[0]
        loss1 = lib.sum(s * v, dim=-1) ** 2 * 0.5
        loss2 = lib.sum(v * gradv, dim=-1)
        loss = (loss1 + loss2).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(score.parameters(), 1.0)
        opt.step()
        rec.append(loss.item())
    return rec, score.state_dict()


def test_sliced_score_matching():
    both(score_matching)


def kdv_pinn(lib):
    """The Korteweg-de Vries residual u_t + 6 u u_x + u_xxx: a third derivative by three
    nested ``grad`` calls, a sine network's ``torch.sin`` activation, LBFGS with its default
    line search."""
    def build(m):
        class Sine(m.nn.Module):
            def forward(self, x):
                return m.sin(x)

        return m.nn.Sequential(m.nn.Linear(2, 12), Sine(), m.nn.Linear(12, 12), m.nn.Tanh(),
                               m.nn.Linear(12, 1))

    model = seeded(lib, build, seed=22)
    g = np.random.default_rng(22)
    x = lib.tensor(g.uniform(-1, 1, (16, 1)), requires_grad=True)
    t = lib.tensor(g.uniform(0, 1, (16, 1)), requires_grad=True)
    opt = lib.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=3)
    rec = []

    def closure():
        opt.zero_grad()
        u = model(lib.hstack([x, t]))
        ones = lib.ones_like(u)
        u_t = lib.autograd.grad(u, t, ones, create_graph=True)[0]
        u_x = lib.autograd.grad(u, x, ones, create_graph=True)[0]
        u_xx = lib.autograd.grad(u_x, x, ones, create_graph=True)[0]
        u_xxx = lib.autograd.grad(u_xx, x, ones, create_graph=True)[0]
        loss = (u_t + 6 * u * u_x + u_xxx).pow(2).mean()
        loss.backward()
        rec.append(loss.item())
        return loss

    for _ in range(2):
        opt.step(closure)
    return rec, model.state_dict()


def test_kdv_third_derivative_lbfgs():
    both(kdv_pinn, tol=1e-9)


def implicit_hypergradient(lib):
    """Hyperparameters by the implicit function theorem (Lorraine et al.): per-weight decay
    rates learned with a Neumann-series inverse-Hessian-vector product, every product a
    ``grad`` of the flat training gradient with ``grad_outputs`` and ``retain_graph``."""
    model = seeded(lib, lambda m: m.nn.Sequential(m.nn.Linear(3, 5), m.nn.Tanh(),
                                                  m.nn.Linear(5, 1)), seed=23)
    params = list(model.parameters())
    g = np.random.default_rng(23)
    xt, yt = lib.tensor(g.standard_normal((20, 3))), lib.tensor(g.standard_normal((20, 1)))
    xv, yv = lib.tensor(g.standard_normal((10, 3))), lib.tensor(g.standard_normal((10, 1)))
    log_wd = [lib.full_like(p, -3.0).requires_grad_() for p in params]
    opt = lib.optim.SGD(params, lr=0.1)
    hyper_opt = lib.optim.RMSprop(log_wd, lr=0.01)

    def gather_flat_grad(grads):
        return lib.cat([gr.view(-1) for gr in grads])

    def train_loss():
        reg = sum((lw.exp() * p.pow(2)).sum() for lw, p in zip(log_wd, params))
        return lib.nn.functional.mse_loss(model(xt), yt) + reg

    rec = []
    for step in range(6):
        opt.zero_grad()
        train_loss().backward()
        opt.step()
        if step % 3 != 2:
            continue
        d_train_d_w = gather_flat_grad(lib.autograd.grad(train_loss(), params,
                                                         create_graph=True))
        val_loss = lib.nn.functional.mse_loss(model(xv), yv)
        d_val_d_w = gather_flat_grad(lib.autograd.grad(val_loss, params))
        preconditioner = d_val_d_w.detach()
        counter = preconditioner
        for _ in range(3):
            hessian_term = gather_flat_grad(lib.autograd.grad(
                d_train_d_w, params, grad_outputs=counter.view(-1), retain_graph=True))
            counter = counter - 0.1 * hessian_term
            preconditioner = preconditioner + counter
        indirect = lib.autograd.grad(d_train_d_w, log_wd, grad_outputs=0.1 * preconditioner)
        hyper_opt.zero_grad()
        for lw, gr in zip(log_wd, indirect):
            lw.grad = -gr
        hyper_opt.step()
        rec.append([val_loss.item(), preconditioner, list(indirect)])
    return rec, model.state_dict(), log_wd


def test_implicit_function_theorem_hypergradient():
    both(implicit_hypergradient)


def test_closed_over_tensors_with_a_jitted_function_inside_grad():
    """A jitted call replays compiled inside a first-order grad; its backward cannot be
    recorded, so there the gradient stays cut from the closed-over tensor (no error)."""
    w = ng.tensor([1.0, 2.0, 3.0], dtype=ng.float64, requires_grad=True)
    x = ng.tensor([0.1, 0.2, 0.3], dtype=ng.float64)
    f = ng.jit(lambda x: (w * x).sin().sum())
    for _ in range(3):
        g = ng.func.grad(f)(x)
        np.testing.assert_allclose(g.numpy(), np.cos(w.detach().numpy() * 0.1 * np.arange(1, 4))
                                   * w.detach().numpy(), rtol=1e-12)


def adahessian(lib):
    """AdaHessian's Hutchinson diagonal: ``loss.backward(create_graph=True)`` leaves
    differentiable ``.grad`` tensors, whose Hessian-vector products with Rademacher probes
    come from ``grad(grads, params, grad_outputs=zs)``; a double-backprop penalty on the
    ``.grad`` norm follows."""
    model = seeded(lib, lambda m: m.nn.Sequential(m.nn.Linear(4, 6), m.nn.Tanh(),
                                                  m.nn.Linear(6, 2)), seed=24)
    params = list(model.parameters())
    g = np.random.default_rng(24)
    x, y = lib.tensor(g.standard_normal((10, 4))), lib.tensor(g.integers(0, 2, (10,)))
    exp_avg = [lib.zeros_like(p) for p in params]
    exp_hess = [lib.zeros_like(p) for p in params]
    rec = []
    for step in range(1, 4):
        for p in params:
            p.grad = None
        loss = lib.nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=True)
        grads = [p.grad for p in params]
        zs = [lib.tensor(g.choice([-1.0, 1.0], size=tuple(p.shape))) for p in params]
        hzs = lib.autograd.grad(grads, params, grad_outputs=zs, only_inputs=True,
                                retain_graph=True)
        hut = [(hz * z).abs() for hz, z in zip(hzs, zs)]
        penalty = sum(gr.pow(2).sum() for gr in grads)
        pen_grads = lib.autograd.grad(penalty, params)
        with lib.no_grad():
            for p, gr, h, m, v, pg in zip(params, grads, hut, exp_avg, exp_hess, pen_grads):
                m.mul_(0.9).add_(gr.detach(), alpha=0.1)
                v.mul_(0.999).addcmul_(h, h, value=0.001)
                denom = (v / (1 - 0.999 ** step)).sqrt().add_(1e-4)
                p.addcdiv_(m / (1 - 0.9 ** step), denom, value=-0.05)
                p.sub_(0.01 * pg)
        rec.append([loss.item(), hut, penalty.item()])
    return rec, model.state_dict()


def test_adahessian_backward_create_graph():
    both(adahessian)


def loss_hessian(lib):
    """The Hessian of a network's loss with respect to all its weights, the two common
    recipes: ``autograd.functional.hessian`` over the parameter tuple through
    ``functional_call``, and over one flat vector unflattened by hand; then its spectrum."""
    model = seeded(lib, lambda m: m.nn.Sequential(m.nn.Linear(2, 3), m.nn.Sigmoid(),
                                                  m.nn.Linear(3, 1)), seed=25)
    g = np.random.default_rng(25)
    x, y = lib.tensor(g.standard_normal((7, 2))), lib.tensor(g.standard_normal((7, 1)))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss_of(*params):
        out = lib.func.functional_call(model, dict(zip(names, params)), x)
        return lib.nn.functional.mse_loss(out, y)

    blocks = lib.autograd.functional.hessian(loss_of, tuple(model.parameters()))
    flat = lib.nn.utils.parameters_to_vector(model.parameters()).detach()

    def loss_flat(v):
        params, k = [], 0
        for s in shapes:
            n = math.prod(s)
            params.append(v[k:k + n].view(s))
            k += n
        return loss_of(*params)

    H = lib.autograd.functional.hessian(loss_flat, flat)
    evals = lib.linalg.eigvalsh(H)
    _, hv = lib.autograd.functional.vhp(loss_flat, flat, lib.ones_like(flat))
    return [[list(r) for r in blocks], H, evals, hv]


def test_loss_hessian_over_parameters():
    got = arr(both(loss_hessian))
    np.testing.assert_allclose(got[1] @ np.ones(len(got[1])), got[3], rtol=1e-12)


def adjoint_gradients(lib):
    """torchdiffeq's adjoint method on a fixed RK4 grid: the augmented state (y, a, a_params)
    integrated backwards, its dynamics from one ``autograd.grad`` call over ``(t, y) +
    params`` with ``-a`` as ``grad_outputs``, ``allow_unused`` (the dynamics ignore ``t``)
    and ``retain_graph``; the result used as the parameters' ``.grad`` for an Adam step."""
    func = seeded(lib, ODEFunc.build, seed=26)
    params = tuple(func.parameters())
    y0 = lib.tensor([[1.5, -0.5]], dtype=lib.float64)
    target = lib.tensor([[0.5, 0.8]], dtype=lib.float64)
    opt = lib.optim.Adam(params, lr=1e-2)
    steps, T = 4, 0.5
    h = T / steps

    def rk4(f, t, state, dt):
        k1 = f(t, state)
        k2 = f(t + dt / 2, [s + dt / 2 * k for s, k in zip(state, k1)])
        k3 = f(t + dt / 2, [s + dt / 2 * k for s, k in zip(state, k2)])
        k4 = f(t + dt, [s + dt * k for s, k in zip(state, k3)])
        return [s + dt / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in
                zip(state, k1, k2, k3, k4)]

    def aug_dynamics(t, state):
        y, adj_y = state[0], state[1]
        with lib.enable_grad():
            t_ = lib.tensor(t, dtype=lib.float64).requires_grad_(True)
            y_ = y.detach().requires_grad_(True)
            func_eval = func(t_, y_)
            vjp_t, vjp_y, *vjp_params = lib.autograd.grad(
                func_eval, (t_, y_) + params, -adj_y, allow_unused=True, retain_graph=True)
        assert vjp_t is None
        vjp_params = [lib.zeros_like(p) if v is None else v for p, v in zip(params, vjp_params)]
        return [func_eval.detach(), vjp_y] + vjp_params

    rec = []
    for _ in range(2):
        with lib.no_grad():
            y = y0
            for k in range(steps):
                y = rk4(lambda t, s: [func(t, s[0])], k * h, [y], h)[0]
        loss_grad = 2 * (y - target)
        state = [y, loss_grad] + [lib.zeros_like(p) for p in params]
        with lib.no_grad():
            for k in range(steps, 0, -1):
                state = rk4(aug_dynamics, k * h, state, -h)
        opt.zero_grad()
        for p, gr in zip(params, state[2:]):
            p.grad = gr.clone()
        opt.step()
        rec.append([((y - target) ** 2).sum().item(), state[1], state[2:]])
    return rec, func.state_dict()


def test_neural_ode_adjoint_gradients():
    both(adjoint_gradients)


# 12. learning to learn: an LSTM optimiser trained through the unrolled optimisee -----------------

def lstm_optimizer_net(lib):
    nn = lib.nn

    class Optimizer(nn.Module):
        """Coordinatewise LSTM optimiser (Andrychowicz et al.)."""

        def __init__(self):
            super().__init__()
            self.cell1 = nn.LSTMCell(1, 6)
            self.cell2 = nn.LSTMCell(6, 6)
            self.out = nn.Linear(6, 1)

        def forward(self, g, state):
            h1, c1 = self.cell1(g, state[0])
            h2, c2 = self.cell2(h1, state[1])
            return self.out(h2) * 0.1, ((h1, c1), (h2, c2))

    return Optimizer()


def learning_to_learn(lib, second_order: bool = True):
    opt_net = seeded(lib, lstm_optimizer_net, seed=27)
    meta_opt = lib.optim.Adam(opt_net.parameters(), lr=1e-2)
    g = np.random.default_rng(27)
    rec = []
    for _ in range(2):
        W, y = lib.tensor(g.standard_normal((5, 5))), lib.tensor(g.standard_normal(5))
        theta = lib.zeros(5, dtype=lib.float64, requires_grad=True)
        state = [(lib.zeros(5, 6, dtype=lib.float64), lib.zeros(5, 6, dtype=lib.float64))
                 for _ in range(2)]
        total = 0.0
        for _ in range(4):
            loss = ((W @ theta - y) ** 2).sum()
            total = total + loss
            (grad,) = lib.autograd.grad(loss, theta, create_graph=second_order,
                                        retain_graph=True)  # ``total`` backpropagates later
            update, state = opt_net(grad.unsqueeze(1), state)
            theta = theta + update.squeeze(1)
        meta_opt.zero_grad()
        total.backward()
        meta_opt.step()
        rec.append([total.item(), [p.grad for p in opt_net.parameters()]])
    return rec, opt_net.state_dict()


def test_learning_to_learn_lstm_optimizer():
    both(learning_to_learn)
    both(learning_to_learn, False)  # first order: the gradients enter as constants


def reptile(lib):
    """Reptile (OpenAI's sine example): first-order meta-learning by in-place parameter
    interpolation, a deep copy per task, ``.data`` arithmetic and manual SGD on ``.grad``."""
    model = seeded(lib, sine_net)
    rec = []
    for it, tasks in enumerate(TASKS):
        weights_before = copy.deepcopy(model.state_dict())
        xs, ys, _, _ = tasks[0]
        x, y = lib.tensor(xs), lib.tensor(ys)
        inner = copy.deepcopy(model)
        for start in range(0, 10, 5):
            inner.zero_grad()
            loss = (inner(x[start:start + 5]) - y[start:start + 5]).pow(2).mean()
            loss.backward()
            for param in inner.parameters():
                param.data -= 0.02 * param.grad.data
        outer_step = 0.1 * (1 - it / len(TASKS))
        weights_after = inner.state_dict()
        model.load_state_dict({name: weights_before[name] + (weights_after[name] -
                                                              weights_before[name]) * outer_step
                               for name in weights_before})
        rec.append(loss.item())
    return rec, model.state_dict()


def test_reptile_first_order():
    both(reptile)
