"""jit on generative-model and reinforcement-learning training steps, written as PyTorch users
write them (VAE, DDPM with an EMA, conditional GAN, WGAN-GP, a coupling flow, DQN, A2C, PPO,
SAC): each runs eagerly and under ``ng.jit(step, state=...)`` from the same weights and seed and
agrees after every step, bit for bit without fusion; the random draws inside the step (noise,
timesteps, samples of a distribution, minibatch permutations) are the numbers eager draws."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn, optim
from nodegrad.distributions import Categorical, Normal, kl_divergence
from nodegrad.nn import functional as F
from tests.test_jit_real_steps import Run, check
# (an autouse fixture: slow cases skip unless asked for, the default dtype is restored)
from tests.test_jit_real_steps import _restore_dtype  # noqa: F401

STEPS = 12
FUSE = [pytest.param(False, id="unfused"), pytest.param(True, id="fused")]
# fused programs compile their kernels with numba in each session (~0.5 s a kernel): the larger
# ones run fused under ``pytest -m slow``
FUSE_SLOW = [pytest.param(False, id="unfused"),
             pytest.param(True, id="fused", marks=pytest.mark.slow)]


def _f(rng, *shape, dtype=np.float32):
    return ng.tensor(rng.standard_normal(shape).astype(dtype))


# --- 1. a VAE: reparameterisation with randn_like, the KL term, BCE with logits --------------

def vae(dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))

        class VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(12, 16)
                self.fc21 = nn.Linear(16, 3)
                self.fc22 = nn.Linear(16, 3)
                self.fc3 = nn.Linear(3, 16)
                self.fc4 = nn.Linear(16, 12)

            def encode(self, x):
                h1 = F.relu(self.fc1(x))
                return self.fc21(h1), self.fc22(h1)

            def reparameterize(self, mu, logvar):
                std = ng.exp(0.5 * logvar)
                eps = ng.randn_like(std)
                return mu + eps * std

            def decode(self, z):
                return self.fc4(F.relu(self.fc3(z)))

            def forward(self, x):
                mu, logvar = self.encode(x.view(-1, 12))
                z = self.reparameterize(mu, logvar)
                return self.decode(z), mu, logvar

        model = VAE()
        opt = optim.Adam(model.parameters(), lr=1e-3)

        def train_step(x):
            model.train()
            opt.zero_grad()
            logits, mu, logvar = model(x)
            bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 12), reduction="sum")
            kld = -0.5 * ng.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = bce + kld
            loss.backward()
            opt.step()
            return loss, kld
        rng = np.random.default_rng(1)
        dt = np.float32 if dtype == "float32" else np.float64
        batches = [(ng.tensor((rng.random((8, 3, 4)) > 0.5).astype(dt)),) for _ in range(STEPS)]
        return Run((model, opt), train_step, batches)
    return make


@pytest.mark.parametrize("dtype,fuse", [
    pytest.param("float32", False, id="float32-unfused"),
    pytest.param("float64", False, id="float64-unfused"),
    pytest.param("float32", True, id="float32-fused"),
    pytest.param("float64", True, id="float64-fused", marks=pytest.mark.slow)])
def test_vae_reparameterised(dtype, fuse):
    check(vae(dtype), fuse)


# --- 2. DDPM: random timesteps, the schedule gathered by index, an EMA updated in the step -----

def ddpm(ema_form):
    def make():
        ng.set_default_dtype(ng.float32)
        T = 50
        betas = ng.linspace(1e-4, 0.02, T)
        alphas = 1.0 - betas
        alphas_cumprod = ng.cumprod(alphas, dim=0)

        class EpsModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.t_embed = nn.Embedding(T, 16)
                self.inp = nn.Linear(2, 16)
                self.net = nn.Sequential(nn.SiLU(), nn.Linear(16, 16), nn.SiLU(),
                                         nn.Linear(16, 2))
                self.register_buffer("sqrt_ab", alphas_cumprod.sqrt())

            def forward(self, x, t):
                return self.net(self.inp(x) + self.t_embed(t))

        model = EpsModel()
        ema = EpsModel()
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
        opt = optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
        decay = 0.9

        def train_step(x0):
            t = ng.randint(0, T, (x0.shape[0],), device=x0.device)
            noise = ng.randn_like(x0)
            if ema_form == "buffer":
                a = model.sqrt_ab[t].view(-1, 1)
                x_t = a * x0 + (1 - a ** 2).sqrt() * noise
            else:
                ab = alphas_cumprod[t][:, None]
                x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            loss = F.mse_loss(model(x_t, t), noise)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with ng.no_grad():
                if ema_form == "lerp":
                    for pe, p in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(p, 1 - decay)
                elif ema_form == "foreach":
                    ng._foreach_lerp_(list(ema.parameters()), list(model.parameters()),
                                      1 - decay)
                elif ema_form == "foreach_mul_add":
                    ema_params = list(ema.parameters())
                    ng._foreach_mul_(ema_params, decay)
                    ng._foreach_add_(ema_params, list(model.parameters()), alpha=1 - decay)
                else:
                    for pe, p in zip(ema.parameters(), model.parameters()):
                        pe.mul_(decay).add_(p, alpha=1 - decay)
            return loss, t
        rng = np.random.default_rng(2)
        batches = [(_f(rng, 16, 2),) for _ in range(STEPS)]
        return Run((model, ema, opt), train_step, batches)
    return make


@pytest.mark.parametrize("ema_form", ["mul_add", "lerp", "foreach", "foreach_mul_add", "buffer"])
def test_ddpm_step_with_ema(ema_form):
    check(ddpm(ema_form))


def test_ddpm_step_fused():
    check(ddpm("lerp"), fuse=True)


def test_latent_diffusion_ema_counter_read_into_python_raises():
    # LitEma's warm-up reads its update counter (a buffer) into Python: an error at trace time
    # that names the line, not a decay frozen at the traced call's value
    from nodegrad.errors import JitError

    class LitEma(nn.Module):
        def __init__(self, model, decay=0.9999):
            super().__init__()
            self.register_buffer("decay", ng.tensor(decay, dtype=ng.float32))
            self.register_buffer("num_updates", ng.tensor(0, dtype=ng.int32))
            for name, p in model.named_parameters():
                self.register_buffer(name.replace(".", ""), p.clone().detach().data)

        def forward(self, model):
            decay = self.decay
            if self.num_updates >= 0:
                self.num_updates += 1
                decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
            shadow = dict(self.named_buffers())
            with ng.no_grad():
                for key, p in model.named_parameters():
                    s = shadow[key.replace(".", "")]
                    s.sub_((1.0 - decay) * (s - p))

    net = nn.Linear(3, 2)
    ema = LitEma(net)
    f = ng.jit(lambda x: ema(net), state=(net, ema))
    with pytest.raises(JitError) as e:
        f(ng.ones(2, 3))
    assert "if self.num_updates >= 0" in str(e.value)


def test_ddpm_timesteps_are_fresh_each_call():
    ng.manual_seed(0)
    run = ddpm("lerp")()
    j = ng.jit(run.step, state=run.state, fuse=False)
    ts = [j(*b)[1].numpy().copy() for b in run.batches[:4]]
    assert j.traces == 1 and j.last.program is not None
    assert all(not np.array_equal(ts[0], t) for t in ts[1:])


# --- 3. a conditional GAN: labels embedded, random labels drawn in the step --------------------

def cgan():
    def make():
        ng.set_default_dtype(ng.float32)
        n_classes, nz = 3, 4

        class Generator(nn.Module):
            def __init__(self):
                super().__init__()
                self.label_emb = nn.Embedding(n_classes, n_classes)
                self.model = nn.Sequential(nn.Linear(nz + n_classes, 16), nn.LeakyReLU(0.2),
                                           nn.Linear(16, 6), nn.Tanh())

            def forward(self, noise, labels):
                return self.model(ng.cat((self.label_emb(labels), noise), -1))

        class Discriminator(nn.Module):
            def __init__(self):
                super().__init__()
                self.label_embedding = nn.Embedding(n_classes, n_classes)
                self.model = nn.Sequential(nn.Linear(6 + n_classes, 16), nn.LeakyReLU(0.2),
                                           nn.Dropout(0.3), nn.Linear(16, 1))

            def forward(self, img, labels):
                return self.model(ng.cat((img.view(img.size(0), -1),
                                          self.label_embedding(labels)), -1))

        G, D = Generator(), Discriminator()
        opt_G = optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
        opt_D = optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
        adversarial_loss = nn.MSELoss()  # LSGAN's loss, as the PyTorch-GAN cgan does

        def step(imgs, labels):
            b = imgs.shape[0]
            valid = ng.ones(b, 1, requires_grad=False)
            fake = ng.zeros(b, 1, requires_grad=False)
            opt_G.zero_grad()
            z = ng.randn(b, nz)
            gen_labels = ng.randint(0, n_classes, (b,))
            gen_imgs = G(z, gen_labels)
            g_loss = adversarial_loss(D(gen_imgs, gen_labels), valid)
            g_loss.backward()
            opt_G.step()
            opt_D.zero_grad()
            d_real_loss = adversarial_loss(D(imgs, labels), valid)
            d_fake_loss = adversarial_loss(D(gen_imgs.detach(), gen_labels), fake)
            d_loss = (d_real_loss + d_fake_loss) / 2
            d_loss.backward()
            opt_D.step()
            return d_loss, g_loss, gen_labels
        rng = np.random.default_rng(3)
        batches = [(_f(rng, 8, 2, 3), ng.tensor(rng.integers(0, n_classes, 8)))
                   for _ in range(STEPS)]
        return Run((G, D, opt_G, opt_D), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_conditional_gan(fuse):
    check(cgan(), fuse)


# --- 4. WGAN-GP: n_critic updates in the step, the penalty with grad_outputs ------------------

def wgan_gp():
    def make():
        ng.set_default_dtype(ng.float32)
        G = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
        D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        opt_G = optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9))
        opt_D = optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
        lambda_gp, n_critic = 10.0, 2

        def compute_gradient_penalty(D, real_samples, fake_samples):
            alpha = ng.rand(real_samples.size(0), 1)
            interpolates = (alpha * real_samples + ((1 - alpha) * fake_samples)
                            ).requires_grad_(True)
            d_interpolates = D(interpolates)
            fake = ng.ones(real_samples.shape[0], 1).requires_grad_(False)
            gradients = ng.autograd.grad(outputs=d_interpolates, inputs=interpolates,
                                         grad_outputs=fake, create_graph=True,
                                         retain_graph=True, only_inputs=True)[0]
            gradients = gradients.view(gradients.size(0), -1)
            return ((gradients.norm(2, dim=1) - 1) ** 2).mean()

        def step(real):
            for _ in range(n_critic):
                opt_D.zero_grad()
                z = ng.randn(real.shape[0], 3)
                fake_imgs = G(z)
                gp = compute_gradient_penalty(D, real.data, fake_imgs.data)
                d_loss = -ng.mean(D(real)) + ng.mean(D(fake_imgs)) + lambda_gp * gp
                d_loss.backward()
                opt_D.step()
            opt_G.zero_grad()
            g_loss = -ng.mean(D(G(ng.randn(real.shape[0], 3))))
            g_loss.backward()
            opt_G.step()
            return d_loss, g_loss, gp
        rng = np.random.default_rng(4)
        batches = [(ng.tensor((rng.standard_normal((8, 2)) + 2).astype(np.float32)),)
                   for _ in range(STEPS)]
        return Run((G, D, opt_G, opt_D), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_wgan_gp_critic_loop(fuse):
    check(wgan_gp(), fuse)


def wgan_clip():
    def make():
        ng.set_default_dtype(ng.float32)
        G = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
        D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
        opt_G = optim.RMSprop(G.parameters(), lr=5e-3)
        opt_D = optim.RMSprop(D.parameters(), lr=5e-3)

        def critic_step(real):
            opt_D.zero_grad()
            fake = G(ng.randn(real.shape[0], 3)).detach()
            loss_D = -ng.mean(D(real)) + ng.mean(D(fake))
            loss_D.backward()
            opt_D.step()
            for p in D.parameters():
                p.data.clamp_(-0.05, 0.05)
            return loss_D

        def gen_step(real):
            opt_G.zero_grad()
            loss_G = -ng.mean(D(G(ng.randn(real.shape[0], 3))))
            loss_G.backward()
            opt_G.step()
            return loss_G
        return critic_step, gen_step, (G, D, opt_G, opt_D)
    return make


@pytest.mark.parametrize("fuse", FUSE)
def test_wgan_weight_clipping_generator_every_few_calls(fuse):
    # two jitted steps over one set of modules: the critic every call, the generator every 3rd
    def run(jit):
        ng.manual_seed(0)
        critic_step, gen_step, state = wgan_clip()()
        if jit:
            critic_step = ng.jit(critic_step, state=state, fuse=fuse)
            gen_step = ng.jit(gen_step, state=state, fuse=fuse)
        rng = np.random.default_rng(5)
        outs = []
        for i in range(STEPS):
            real = ng.tensor((rng.standard_normal((8, 2)) + 2).astype(np.float32))
            outs.append(critic_step(real).numpy().copy())
            if i % 3 == 2:
                outs.append(gen_step(real).numpy().copy())
        for m in state[:2]:
            outs += [v.numpy().copy() for v in m.state_dict().values()]
        return outs, critic_step, gen_step
    ref, _, _ = run(False)
    got, c, g = run(True)
    for a, b in zip(ref, got, strict=True):
        if fuse:
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
        else:
            assert a.tobytes() == b.tobytes()
    assert c.last.program is not None and g.last.program is not None


# --- 5. a coupling flow: masks as buffers, log-det sums, the exact likelihood ---------------------

def realnvp(dtype):
    def make():
        ng.set_default_dtype(getattr(ng, dtype))

        class Coupling(nn.Module):
            def __init__(self, mask):
                super().__init__()
                self.register_buffer("mask", mask)
                self.s = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4), nn.Tanh())
                self.t = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 4))

            def forward(self, x):
                x_ = x * self.mask
                s = self.s(x_) * (1 - self.mask)
                t = self.t(x_) * (1 - self.mask)
                y = x_ + (1 - self.mask) * (x * ng.exp(s) + t)
                return y, s.sum(dim=1)

        class Flow(nn.Module):
            def __init__(self):
                super().__init__()
                m = ng.tensor([1.0, 0.0, 1.0, 0.0])
                self.layers = nn.ModuleList([Coupling(m), Coupling(1 - m), Coupling(m)])
                self.log_scale = nn.Parameter(ng.zeros(4))

            def forward(self, x):
                log_det = ng.zeros(x.shape[0])
                for layer in self.layers:
                    x, ld = layer(x)
                    log_det += ld
                x = x * self.log_scale.exp()
                return x, log_det + self.log_scale.sum()

        flow = Flow()
        opt = optim.Adam(flow.parameters(), lr=1e-3, weight_decay=1e-5)
        sched = optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)

        def step(x):
            z, log_det = flow(x)
            prior_ll = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)
            loss = -(prior_ll + log_det).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, log_det
        rng = np.random.default_rng(6)
        dt = np.float32 if dtype == "float32" else np.float64
        batches = [(ng.tensor((rng.standard_normal((16, 4)) * [1, 2, 0.5, 1]).astype(dt)),)
                   for _ in range(STEPS)]
        return Run((flow, opt), step, batches, between=lambda i, out: sched.step())
    return make


@pytest.mark.parametrize("dtype,fuse", [
    pytest.param("float32", False, id="float32-unfused"),
    pytest.param("float64", False, id="float64-unfused"),
    pytest.param("float32", True, id="float32-fused", marks=pytest.mark.slow),
    pytest.param("float64", True, id="float64-fused", marks=pytest.mark.slow)])
def test_coupling_flow_log_det(dtype, fuse):
    check(realnvp(dtype), fuse)


# --- 6. DQN: Q(s, a) by gather, a target network synced between calls, Huber losses ------------

def _transitions(n, batch=16, obs=4, n_actions=3, seed=7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.standard_normal((batch, obs)).astype(np.float32)
        a = rng.integers(0, n_actions, batch)
        r = rng.standard_normal(batch).astype(np.float32)
        s2 = rng.standard_normal((batch, obs)).astype(np.float32)
        done = (rng.random(batch) < 0.2).astype(np.float32)
        out.append((ng.tensor(s), ng.tensor(a), ng.tensor(r), ng.tensor(s2), ng.tensor(done)))
    return out


def dqn(kind, sync="between"):
    def make():
        ng.set_default_dtype(ng.float32)
        policy_net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
        target_net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3))
        target_net.load_state_dict(policy_net.state_dict())
        target_net.eval()
        optimizer = optim.RMSprop(policy_net.parameters(), lr=1e-3) if kind == "huber" else \
            optim.AdamW(policy_net.parameters(), lr=1e-3, amsgrad=True)
        gamma = 0.99
        criterion = nn.HuberLoss(delta=0.5) if kind == "huber" else nn.SmoothL1Loss()

        def optimize_model(state, action, reward, next_state, done):
            state_action_values = policy_net(state).gather(1, action.unsqueeze(1))
            with ng.no_grad():
                if kind == "double":
                    next_actions = policy_net(next_state).max(1)[1].unsqueeze(1)
                    next_q = target_net(next_state).gather(1, next_actions).squeeze(1)
                else:
                    next_q = target_net(next_state).max(1)[0].detach()
            expected = reward + gamma * next_q * (1 - done)
            loss = criterion(state_action_values, expected.unsqueeze(1))
            optimizer.zero_grad()
            loss.backward()
            if kind == "huber":
                for param in policy_net.parameters():
                    param.grad.data.clamp_(-1, 1)
            else:
                nn.utils.clip_grad_value_(policy_net.parameters(), 100)
            optimizer.step()
            if sync == "soft":  # the PyTorch tutorial's soft update, through the state dicts
                target_net_state_dict = target_net.state_dict()
                policy_net_state_dict = policy_net.state_dict()
                for key in policy_net_state_dict:
                    target_net_state_dict[key] = (policy_net_state_dict[key] * 0.1
                                                  + target_net_state_dict[key] * (1 - 0.1))
                target_net.load_state_dict(target_net_state_dict)
            elif sync == "hard":
                target_net.load_state_dict(policy_net.state_dict())
            return loss, state_action_values

        def between(i, out):
            if sync == "between" and i % 3 == 2:  # the target follows every few steps
                target_net.load_state_dict(policy_net.state_dict())
        return Run((policy_net, target_net, optimizer), optimize_model, _transitions(STEPS),
                   between=between)
    return make


@pytest.mark.parametrize("kind", ["smooth_l1", "double", "huber"])
def test_dqn_target_network_synced_between_calls(kind):
    check(dqn(kind))


@pytest.mark.parametrize("sync", ["soft", "hard"])
def test_dqn_target_network_synced_inside_the_step(sync):
    # the tutorial's soft update writes values computed in the step through load_state_dict;
    # a replay skipped its copies: the target network stayed as the traced call left it
    check(dqn("smooth_l1", sync))


def test_dqn_fused():
    check(dqn("double"), fuse=True)


def test_dqn_epsilon_greedy_outside_the_step():
    # acting is eager (epsilon-greedy on Python's random numbers), learning is jitted; the
    # acting network's greedy actions follow the jitted updates
    def run(jit):
        ng.manual_seed(0)
        r = dqn("smooth_l1")()
        policy_net = r.state[0]
        learn = ng.jit(r.step, state=r.state, fuse=False) if jit else r.step
        rng = np.random.default_rng(11)
        acts = []
        for i, (s, a, rew, s2, d) in enumerate(r.batches):
            eps = max(0.05, 0.9 * 0.8 ** i)
            if rng.random() > eps:
                with ng.no_grad():
                    a = policy_net(s).max(1).indices
            acts.append(a.numpy().copy())
            learn(s, a, rew, s2, d)
            r.between(i, None)
        return acts + [v.numpy().copy() for v in policy_net.state_dict().values()], learn
    ref, _ = run(False)
    got, learn = run(True)
    for a, b in zip(ref, got, strict=True):
        assert a.tobytes() == b.tobytes()
    assert learn.last.program is not None


# --- 7. A2C: Categorical sampled in the step, log_prob, entropy, advantages --------------------

def a2c():
    def make():
        ng.set_default_dtype(ng.float32)

        class ActorCritic(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh())
                self.actor = nn.Linear(32, 3)
                self.critic = nn.Linear(32, 1)

            def forward(self, x):
                h = self.body(x)
                return Categorical(logits=self.actor(h)), self.critic(h).squeeze(-1)

        ac = ActorCritic()
        opt = optim.Adam(ac.parameters(), lr=7e-4, eps=1e-5)

        def step(obs, rewards, masks, next_obs):
            dist, values = ac(obs)
            actions = dist.sample()
            log_probs = dist.log_prob(actions)
            with ng.no_grad():
                _, next_value = ac(next_obs)
            returns = rewards + 0.99 * next_value * masks
            advantages = returns - values
            actor_loss = -(log_probs * advantages.detach()).mean()
            critic_loss = advantages.pow(2).mean()
            loss = actor_loss + 0.5 * critic_loss - 0.01 * dist.entropy().mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(ac.parameters(), 0.5)
            opt.step()
            return loss, actions
        rng = np.random.default_rng(8)
        batches = [(_f(rng, 16, 4), _f(rng, 16), ng.tensor((rng.random(16) > 0.1)
                                                            .astype(np.float32)),
                    _f(rng, 16, 4)) for _ in range(STEPS)]
        return Run((ac, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_a2c_categorical_sampled_in_the_step(fuse):
    check(a2c(), fuse)


def masked_policy(kind):
    def make():
        ng.set_default_dtype(ng.float32)
        net = nn.Linear(4, 5)
        opt = optim.Adam(net.parameters(), lr=1e-2)

        def step(obs, action_mask, adv):  # invalid actions masked out of the policy
            logits = net(obs)
            if kind == "inf":
                logits = logits.masked_fill(~action_mask, float("-inf"))
            else:
                logits = ng.where(action_mask, logits, ng.tensor(-1e8))
            dist = Categorical(logits=logits)
            a = dist.sample()
            loss = -(dist.log_prob(a) * adv).mean() - 0.01 * dist.entropy().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, a
        rng = np.random.default_rng(26)
        batches = []
        for _ in range(STEPS):
            m = rng.random((6, 5)) < 0.6
            m[:, 0] = True
            batches.append((_f(rng, 6, 4), ng.tensor(m), _f(rng, 6)))
        return Run((net, opt), step, batches)
    return make


@pytest.mark.parametrize("kind", ["inf", "where"])
def test_invalid_action_masking(kind):
    check(masked_policy(kind))

# --- 8. PPO: a rollout, epochs of minibatches over randperm, the clipped surrogate -------------

def ppo(continuous, norm_adv=True):
    def make():
        ng.set_default_dtype(ng.float32)
        obs_dim, act_dim, n_roll, mb, epochs = 4, 2, 32, 8, 3

        class Agent(nn.Module):
            def __init__(self):
                super().__init__()
                self.critic = nn.Sequential(nn.Linear(obs_dim, 16), nn.Tanh(), nn.Linear(16, 1))
                self.actor = nn.Sequential(nn.Linear(obs_dim, 16), nn.Tanh(),
                                           nn.Linear(16, act_dim if continuous else 3))
                if continuous:
                    self.actor_logstd = nn.Parameter(ng.zeros(1, act_dim))

            def get_value(self, x):
                return self.critic(x)

            def get_action_and_value(self, x, action=None):
                if continuous:
                    mean = self.actor(x)
                    std = self.actor_logstd.expand_as(mean).exp()
                    probs = Normal(mean, std)
                else:
                    probs = Categorical(logits=self.actor(x))
                if action is None:
                    action = probs.sample()
                if continuous:
                    return (action, probs.log_prob(action).sum(1), probs.entropy().sum(1),
                            self.critic(x))
                return action, probs.log_prob(action), probs.entropy(), self.critic(x)

        agent = Agent()
        optimizer = optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
        clip_coef, ent_coef, vf_coef = 0.2, 0.01, 0.5

        def update(obs, rewards, dones):
            # the rollout's actions and log-probabilities, sampled with the current policy
            with ng.no_grad():
                actions, logprobs, _, values = agent.get_action_and_value(obs)
                values = values.flatten()
                advantages = ng.zeros_like(rewards)
                lastgaelam = 0
                for t in reversed(range(n_roll)):
                    nextvalues = values[t + 1] if t + 1 < n_roll else ng.zeros(())
                    nonterminal = 1.0 - dones[t]
                    delta = rewards[t] + 0.99 * nextvalues * nonterminal - values[t]
                    advantages[t] = lastgaelam = delta + 0.99 * 0.95 * nonterminal * lastgaelam
                returns = advantages + values
            clipfracs = []
            for _ in range(epochs):
                b_inds = ng.randperm(n_roll)
                for start in range(0, n_roll, mb):
                    mb_inds = b_inds[start:start + mb]
                    _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                        obs[mb_inds], actions[mb_inds])
                    logratio = newlogprob - logprobs[mb_inds]
                    ratio = logratio.exp()
                    with ng.no_grad():
                        approx_kl = ((ratio - 1) - logratio).mean()
                        clipfracs.append(((ratio - 1.0).abs() > clip_coef).float().mean())
                    mb_adv = advantages[mb_inds]
                    if norm_adv:
                        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    pg_loss1 = -mb_adv * ratio
                    pg_loss2 = -mb_adv * ng.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
                    pg_loss = ng.max(pg_loss1, pg_loss2).mean()
                    newvalue = newvalue.view(-1)
                    v_loss = 0.5 * ((newvalue - returns[mb_inds]) ** 2).mean()
                    loss = pg_loss - ent_coef * entropy.mean() + v_loss * vf_coef
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                    optimizer.step()
            return loss, approx_kl, ng.stack(clipfracs).mean(), actions
        rng = np.random.default_rng(9)
        batches = [(_f(rng, n_roll, obs_dim), _f(rng, n_roll),
                    ng.tensor((rng.random(n_roll) < 0.1).astype(np.float32)))
                   for _ in range(STEPS // 2)]
        return Run((agent, optimizer), update, batches)
    return make


@pytest.mark.parametrize("continuous", [False, True], ids=["categorical", "normal"])
@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_ppo_epochs_of_minibatches(continuous, fuse):
    check(ppo(continuous), fuse)


def cleanrl_ppo(draw):
    def make():
        ng.set_default_dtype(ng.float32)
        agent = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        optimizer = optim.Adam(agent.parameters(), lr=1e-3)

        def update(b_obs, b_returns):
            b_inds = np.arange(16)
            for _ in range(2):
                if draw == "numpy":  # CleanRL's minibatches: NumPy's global generator
                    np.random.shuffle(b_inds)
                for start in range(0, 16, 8):
                    mb_inds = b_inds[start:start + 8]
                    if draw == "python" and random.random() < 0.5:
                        mb_inds = mb_inds[::-1].copy()
                    v_loss = 0.5 * ((agent(b_obs[mb_inds]).view(-1) - b_returns[mb_inds]) ** 2
                                    ).mean()
                    optimizer.zero_grad()
                    v_loss.backward()
                    optimizer.step()
            return v_loss
        np.random.seed(0)
        random.seed(0)
        rng = np.random.default_rng(21)
        return Run((agent, optimizer), update, [(_f(rng, 16, 4), _f(rng, 16))
                                                 for _ in range(STEPS // 2)])
    return make


@pytest.mark.parametrize("draw", ["numpy", "python"])
def test_host_random_draws_in_the_step_run_eagerly(draw):
    # np.random.shuffle's permutation (and random.random()'s branch) were the traced call's on
    # every replay: the same minibatches each update
    j = check(cleanrl_ppo(draw), replays=False)
    assert j.last.program is None and "np.random" in j.last.reason


# --- 9. SAC: squashed Gaussian policy, twin Q targets, polyak averaging through .data / lerp_ --

def sac(polyak_form):
    def make():
        ng.set_default_dtype(ng.float32)
        obs_dim, act_dim = 3, 2

        def mlp(i, o):
            return nn.Sequential(nn.Linear(i, 16), nn.ReLU(), nn.Linear(16, o))

        class Actor(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = mlp(obs_dim, 2 * act_dim)

            def forward(self, obs):
                mu, log_std = self.net(obs).chunk(2, dim=-1)
                log_std = ng.clamp(log_std, -20, 2)
                pi_distribution = Normal(mu, ng.exp(log_std))
                pi_action = pi_distribution.rsample()
                logp_pi = pi_distribution.log_prob(pi_action).sum(axis=-1)
                logp_pi -= (2 * (math.log(2) - pi_action - F.softplus(-2 * pi_action))
                            ).sum(axis=1)
                return ng.tanh(pi_action), logp_pi

        class QNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.q = mlp(obs_dim + act_dim, 1)

            def forward(self, o, a):
                return ng.squeeze(self.q(ng.cat([o, a], dim=-1)), -1)

        pi, q1, q2 = Actor(), QNet(), QNet()
        q1_targ, q2_targ = QNet(), QNet()
        q1_targ.load_state_dict(q1.state_dict())
        q2_targ.load_state_dict(q2.state_dict())
        for p in list(q1_targ.parameters()) + list(q2_targ.parameters()):
            p.requires_grad = False
        q_params = list(q1.parameters()) + list(q2.parameters())
        targ_params = list(q1_targ.parameters()) + list(q2_targ.parameters())
        pi_optimizer = optim.Adam(pi.parameters(), lr=1e-3)
        q_optimizer = optim.Adam(q_params, lr=1e-3)
        log_alpha = nn.Parameter(ng.zeros(1))
        alpha_optimizer = optim.Adam([log_alpha], lr=1e-3)
        polyak, gamma, target_entropy = 0.9, 0.99, -act_dim
        holder = nn.Module()
        holder.log_alpha = log_alpha

        def update(o, a, r, o2, d):
            alpha = log_alpha.exp().detach()
            q_optimizer.zero_grad()
            q1v, q2v = q1(o, a), q2(o, a)
            with ng.no_grad():
                a2, logp_a2 = pi(o2)
                q_pi_targ = ng.min(q1_targ(o2, a2), q2_targ(o2, a2))
                backup = r + gamma * (1 - d) * (q_pi_targ - alpha * logp_a2)
            loss_q = ((q1v - backup) ** 2).mean() + ((q2v - backup) ** 2).mean()
            loss_q.backward()
            q_optimizer.step()

            for p in q_params:
                p.requires_grad = False
            pi_optimizer.zero_grad()
            a_pi, logp_pi = pi(o)
            q_pi = ng.min(q1(o, a_pi), q2(o, a_pi))
            loss_pi = (alpha * logp_pi - q_pi).mean()
            loss_pi.backward()
            pi_optimizer.step()
            for p in q_params:
                p.requires_grad = True

            alpha_loss = -(log_alpha * (logp_pi + target_entropy).detach()).mean()
            alpha_optimizer.zero_grad()
            alpha_loss.backward()
            alpha_optimizer.step()

            with ng.no_grad():
                for p, p_targ in zip(q_params, targ_params):
                    if polyak_form == "data":
                        p_targ.data.mul_(polyak)
                        p_targ.data.add_((1 - polyak) * p.data)
                    elif polyak_form == "lerp":
                        p_targ.lerp_(p, 1 - polyak)
                    else:
                        p_targ.copy_(polyak * p_targ + (1 - polyak) * p)
            return loss_q, loss_pi, alpha_loss
        rng = np.random.default_rng(10)
        batches = [(_f(rng, 8, obs_dim), ng.tensor(np.tanh(rng.standard_normal((8, act_dim)))
                                                    .astype(np.float32)),
                    _f(rng, 8), _f(rng, 8, obs_dim),
                    ng.tensor((rng.random(8) < 0.1).astype(np.float32)))
                   for _ in range(STEPS)]
        return Run((pi, q1, q2, q1_targ, q2_targ, holder, pi_optimizer, q_optimizer,
                    alpha_optimizer), update, batches)
    return make


@pytest.mark.parametrize("polyak_form", ["data", "lerp", "copy"])
def test_sac_soft_target_updates(polyak_form):
    check(sac(polyak_form))


@pytest.mark.slow
def test_sac_fused():
    check(sac("data"), fuse=True)


# --- 10. an RBM trained by contrastive divergence: Bernoulli draws, updates by hand ------------

def rbm(k_steps):
    def make():
        ng.set_default_dtype(ng.float32)

        class RBM(nn.Module):
            def __init__(self, n_vis=12, n_hin=6):
                super().__init__()
                self.W = nn.Parameter(ng.randn(n_hin, n_vis) * 1e-2)
                self.v_bias = nn.Parameter(ng.zeros(n_vis))
                self.h_bias = nn.Parameter(ng.zeros(n_hin))

            def sample_from_p(self, p):
                return F.relu(ng.sign(p - ng.rand(p.size())))

            def v_to_h(self, v):
                p_h = ng.sigmoid(F.linear(v, self.W, self.h_bias))
                return p_h, self.sample_from_p(p_h)

            def h_to_v(self, h):
                p_v = ng.sigmoid(F.linear(h, self.W.t(), self.v_bias))
                return p_v, self.sample_from_p(p_v)

            def free_energy(self, v):
                vbias_term = v.mv(self.v_bias)
                wx_b = F.linear(v, self.W, self.h_bias)
                hidden_term = wx_b.exp().add(1).log().sum(1)
                return (-hidden_term - vbias_term).mean()

        model = RBM()
        opt = optim.SGD(model.parameters(), lr=0.1)

        def cd_step(v):
            ph0, h_ = model.v_to_h(v)
            for _ in range(k_steps):
                pv_, v_ = model.h_to_v(h_)
                ph_, h_ = model.v_to_h(v_)
            loss = model.free_energy(v) - model.free_energy(v_.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
            with ng.no_grad():  # a hand-written CD update of the biases besides
                model.h_bias.add_(0.01 * (ph0 - ph_).mean(0))
                v_bern = ng.bernoulli(pv_)
            return loss, v_, v_bern
        rng = np.random.default_rng(12)
        batches = [(ng.tensor((rng.random((8, 12)) > 0.5).astype(np.float32)),)
                   for _ in range(STEPS)]
        return Run((model, opt), cd_step, batches)
    return make


@pytest.mark.parametrize("k_steps", [1, 3])
def test_rbm_contrastive_divergence(k_steps):
    check(rbm(k_steps))


# --- 11. TD3: clipped target-policy noise, epsilon-greedy by masks, updates every other call ---

def td3():
    def make():
        ng.set_default_dtype(ng.float32)
        obs_dim, act_dim, max_action = 3, 2, 1.0
        actor = nn.Sequential(nn.Linear(obs_dim, 16), nn.ReLU(), nn.Linear(16, act_dim),
                              nn.Tanh())
        actor_target = nn.Sequential(nn.Linear(obs_dim, 16), nn.ReLU(), nn.Linear(16, act_dim),
                                     nn.Tanh())
        actor_target.load_state_dict(actor.state_dict())

        class Critic(nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = nn.Linear(obs_dim + act_dim, 16)
                self.l2 = nn.Linear(16, 1)
                self.l4 = nn.Linear(obs_dim + act_dim, 16)
                self.l5 = nn.Linear(16, 1)

            def forward(self, state, action):
                sa = ng.cat([state, action], 1)
                return self.l2(F.relu(self.l1(sa))), self.l5(F.relu(self.l4(sa)))

            def Q1(self, state, action):
                return self.l2(F.relu(self.l1(ng.cat([state, action], 1))))

        critic, critic_target = Critic(), Critic()
        critic_target.load_state_dict(critic.state_dict())
        actor_optimizer = optim.Adam(actor.parameters(), lr=3e-4)
        critic_optimizer = optim.Adam(critic.parameters(), lr=3e-4)
        tau, discount, policy_noise, noise_clip = 0.05, 0.99, 0.2, 0.5

        def train_critic(state, action, next_state, reward, not_done):
            with ng.no_grad():
                noise = (ng.randn_like(action) * policy_noise).clamp(-noise_clip, noise_clip)
                next_action = (actor_target(next_state) + noise).clamp(-max_action, max_action)
                target_Q1, target_Q2 = critic_target(next_state, next_action)
                target_Q = ng.min(target_Q1, target_Q2)
                target_Q = reward + not_done * discount * target_Q
            current_Q1, current_Q2 = critic(state, action)
            critic_loss = F.mse_loss(current_Q1, target_Q) + F.mse_loss(current_Q2, target_Q)
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_optimizer.step()
            return critic_loss

        def train_actor(state):
            actor_loss = -critic.Q1(state, actor(state)).mean()
            actor_optimizer.zero_grad()
            actor_loss.backward()
            actor_optimizer.step()
            for param, target_param in zip(critic.parameters(), critic_target.parameters()):
                target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)
            for param, target_param in zip(actor.parameters(), actor_target.parameters()):
                target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)
            return actor_loss

        def select_actions(state, eps):
            # exploration with tensors: Gaussian noise, and uniform actions where a draw < eps
            with ng.no_grad():
                a = actor(state)
                a = (a + ng.normal(0, max_action * 0.1, size=a.shape)).clamp(-1, 1)
                explore = ng.rand(a.shape[0], 1) < eps
                return ng.where(explore, ng.rand_like(a) * 2 - 1, a)
        return (train_critic, train_actor, select_actions,
                (actor, actor_target, critic, critic_target, actor_optimizer, critic_optimizer))
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_td3_delayed_policy_updates(fuse):
    def run(jit):
        ng.manual_seed(0)
        train_critic, train_actor, select, state = td3()()
        if jit:
            train_critic = ng.jit(train_critic, state=state, fuse=fuse)
            train_actor = ng.jit(train_actor, state=state, fuse=fuse)
            select = ng.jit(select, state=state, fuse=fuse)
        rng = np.random.default_rng(13)
        outs = []
        eps = ng.tensor(np.float32(0.3))
        for it in range(STEPS):
            s = _f(rng, 8, 3)
            a = select(s, eps)
            outs.append(a.numpy().copy())
            s2, r = _f(rng, 8, 3), _f(rng, 8, 1)
            nd = ng.tensor((rng.random((8, 1)) > 0.1).astype(np.float32))
            outs.append(train_critic(s, a, s2, r, nd).numpy().copy())
            if it % 2 == 0:  # the policy and the targets every other critic step
                outs.append(train_actor(s).numpy().copy())
        for m in state[:4]:
            outs += [v.numpy().copy() for v in m.state_dict().values()]
        return outs, (train_critic, train_actor, select)
    ref, _ = run(False)
    got, fns = run(True)
    for a, b in zip(ref, got, strict=True):
        if fuse:
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
        else:
            assert a.tobytes() == b.tobytes()
    assert all(f.last.program is not None for f in fns)


# --- 12. REINFORCE with a Gaussian policy: Normal.sample() in the step, returns to go ---------

def reinforce():
    def make():
        ng.set_default_dtype(ng.float32)
        policy = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
        log_std = nn.Parameter(ng.full((2,), -0.5))
        holder = nn.Module()
        holder.log_std = log_std
        opt = optim.Adam(list(policy.parameters()) + [log_std], lr=1e-2)
        gamma = 0.9

        def step(obs, rewards):
            dist = Normal(policy(obs), log_std.exp())
            acts = dist.sample()
            logp = dist.log_prob(acts).sum(-1)
            returns = ng.zeros_like(rewards)
            running = ng.zeros(())
            for t in reversed(range(rewards.shape[0])):
                running = rewards[t] + gamma * running
                returns[t] = running
            returns = (returns - returns.mean()) / (returns.std() + 1e-8)
            loss = -(logp * returns).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, acts
        rng = np.random.default_rng(14)
        batches = [(_f(rng, 10, 3), _f(rng, 10)) for _ in range(STEPS)]
        return Run((policy, holder, opt), step, batches)
    return make


def test_reinforce_gaussian_policy():
    check(reinforce())


# --- 13. a Glow-style flow: an invertible 1x1 mixing with slogdet, actnorm, a planar flow -----

def glow():
    def make():
        ng.set_default_dtype(ng.float64)

        class InvLinear(nn.Module):
            def __init__(self, d):
                super().__init__()
                w = ng.linalg.qr(ng.randn(d, d))[0]
                self.weight = nn.Parameter(w)

            def forward(self, x):
                return x @ self.weight, ng.slogdet(self.weight)[1].expand(x.shape[0])

        class ActNorm(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.loc = nn.Parameter(ng.zeros(1, d))
                self.log_scale = nn.Parameter(ng.zeros(1, d))

            def forward(self, x):
                return (x + self.loc) * ng.exp(self.log_scale), \
                    self.log_scale.sum().expand(x.shape[0])

        class Planar(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.u = nn.Parameter(ng.randn(1, d) * 0.1)
                self.w = nn.Parameter(ng.randn(1, d) * 0.1)
                self.b = nn.Parameter(ng.zeros(1))

            def forward(self, z):
                lin = z @ self.w.t() + self.b
                f_z = z + self.u * ng.tanh(lin)
                psi = (1 - ng.tanh(lin) ** 2) * self.w
                log_det = ng.log(ng.abs(1 + psi @ self.u.t()) + 1e-8)
                return f_z, log_det.squeeze(-1)

        flows = nn.ModuleList([ActNorm(3), InvLinear(3), Planar(3), InvLinear(3), Planar(3)])
        opt = optim.Adam(flows.parameters(), lr=1e-2)
        base = Normal(ng.zeros(3), ng.ones(3))

        def step(x):
            log_det = ng.zeros(x.shape[0])
            for f in flows:
                x, ld = f(x)
                log_det = log_det + ld
            loss = -(base.log_prob(x).sum(-1) + log_det).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        rng = np.random.default_rng(15)
        batches = [(ng.tensor(rng.standard_normal((16, 3)) @ np.array(
            [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 0.5]])),) for _ in range(STEPS)]
        return Run((flows, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_glow_style_flow_slogdet(fuse):
    check(glow(), fuse)


# --- 14. a discrete VAE: gumbel-softmax with a temperature annealed between calls -------------

def gumbel_vae():
    def make():
        ng.set_default_dtype(ng.float32)
        enc = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4 * 3))
        dec = nn.Sequential(nn.Linear(4 * 3, 16), nn.ReLU(), nn.Linear(16, 12))
        opt = optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
        temp = ng.tensor(np.float32(1.0))

        def step(x):
            logits = enc(x).view(-1, 4, 3)
            z = F.gumbel_softmax(logits, tau=1.0, hard=True)
            q_y = F.softmax(logits, dim=-1)
            log_ratio = ng.log(q_y * 3 + 1e-20)
            kld = ng.sum(q_y * log_ratio, dim=-1).mean()
            recon = F.binary_cross_entropy_with_logits(dec(z.view(-1, 12) / temp), x,
                                                       reduction="sum") / x.shape[0]
            loss = recon + kld
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, z

        def between(i, out):
            temp.data.copy_(ng.tensor(np.float32(max(0.5, math.exp(-0.1 * (i + 1))))))
        rng = np.random.default_rng(16)
        batches = [(ng.tensor((rng.random((8, 12)) > 0.5).astype(np.float32)),)
                   for _ in range(STEPS)]
        return Run((enc, dec, opt), step, batches, between=between, extra=lambda: [temp])
    return make


def test_gumbel_softmax_vae():
    check(gumbel_vae())


# --- 15. DCGAN as the tutorial writes it: label.fill_, transposed convolutions, batch norm -----

def dcgan():
    def make():
        ng.set_default_dtype(ng.float32)
        nz = 4
        netG = nn.Sequential(nn.ConvTranspose2d(nz, 8, 4, 1, 0, bias=False), nn.BatchNorm2d(8),
                             nn.ReLU(True), nn.ConvTranspose2d(8, 1, 4, 2, 1, bias=False),
                             nn.Tanh())
        netD = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

        def weights_init(m):
            classname = m.__class__.__name__
            if classname.find("Conv") != -1:
                nn.init.normal_(m.weight.data, 0.0, 0.02)
            elif classname.find("BatchNorm") != -1:
                nn.init.normal_(m.weight.data, 1.0, 0.02)
                nn.init.constant_(m.bias.data, 0)
        netG.apply(weights_init)
        netD.apply(weights_init)
        criterion = nn.BCELoss()
        real_label, fake_label = 1., 0.
        optimizerD = optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        optimizerG = optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))

        def step(real_cpu):
            netD.zero_grad()
            b_size = real_cpu.size(0)
            label = ng.full((b_size,), real_label, dtype=ng.float)
            output = netD(real_cpu).view(-1)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean()
            noise = ng.randn(b_size, nz, 1, 1)
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach()).view(-1)
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean()
            errD = errD_real + errD_fake
            optimizerD.step()
            netG.zero_grad()
            label.fill_(real_label)
            output = netD(fake).view(-1)
            errG = criterion(output, label)
            errG.backward()
            optimizerG.step()
            return errD, errG, D_x, D_G_z1
        rng = np.random.default_rng(17)
        batches = [(ng.tensor(np.tanh(rng.standard_normal((4, 1, 8, 8))).astype(np.float32)),)
                   for _ in range(STEPS // 2)]
        return Run((netG, netD, optimizerD, optimizerG), step, batches)
    return make


def test_dcgan_tutorial_step():
    check(dcgan())


# --- 16. a hinge-loss GAN with spectral norm (power iterations update buffers in forward) ------

def sn_gan(param):
    def make():
        ng.set_default_dtype(ng.float32)
        if param:
            from nodegrad.nn.utils.parametrizations import spectral_norm
        else:
            spectral_norm = nn.utils.spectral_norm
        D = nn.Sequential(spectral_norm(nn.Linear(2, 16)), nn.LeakyReLU(0.1),
                          spectral_norm(nn.Linear(16, 1)))
        G = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
        opt_D = optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
        opt_G = optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.9))

        def step(real):
            fake = G(ng.randn(real.shape[0], 3))
            d_loss = F.relu(1. - D(real)).mean() + F.relu(1. + D(fake.detach())).mean()
            opt_D.zero_grad()
            d_loss.backward()
            opt_D.step()
            g_loss = -D(fake).mean()
            opt_G.zero_grad()
            g_loss.backward()
            opt_G.step()
            return d_loss, g_loss
        rng = np.random.default_rng(18)
        batches = [(_f(rng, 8, 2),) for _ in range(STEPS)]
        return Run((D, G, opt_D, opt_G), step, batches)
    return make


@pytest.mark.parametrize("param", [False, True], ids=["hook", "parametrization"])
def test_spectral_norm_hinge_gan(param):
    check(sn_gan(param))


# --- 17. a recurrent policy: the LSTM's state returned and fed back on the next call -----------

def test_recurrent_policy_state_carried_between_calls():
    def run(jit):
        ng.manual_seed(0)
        lstm, head = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 2)
        opt = optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)

        def step(x, h, c, adv):
            out, (h2, c2) = lstm(x, (h, c))
            dist = Categorical(logits=head(out))
            a = dist.sample()
            loss = -(dist.log_prob(a) * adv).mean() - 0.01 * dist.entropy().mean()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(lstm.parameters(), 0.5)
            opt.step()
            return loss, h2.detach(), c2.detach(), a
        f = ng.jit(step, state=(lstm, head, opt), fuse=False) if jit else step
        rng = np.random.default_rng(19)
        h, c, outs = ng.zeros(1, 4, 8), ng.zeros(1, 4, 8), []
        for _ in range(STEPS // 2):
            loss, h, c, a = f(_f(rng, 4, 5, 3), h, c, _f(rng, 4, 5))
            outs += [loss.numpy().copy(), h.numpy().copy(), a.numpy().copy()]
        return outs + [v.numpy().copy() for v in lstm.state_dict().values()], f
    ref, _ = run(False)
    got, f = run(True)
    for a, b in zip(ref, got, strict=True):
        assert a.tobytes() == b.tobytes()
    assert f.last.program is not None


# --- 18. a conditional DDPM as the minimal repositories write it: extract(), sinusoidal --------
# embeddings, classifier-free guidance by dropping the condition where a draw is under p_uncond

def cfg_ddpm():
    def make():
        ng.set_default_dtype(ng.float32)
        T = 30
        betas = ng.linspace(1e-4, 0.02, T)
        alphas_cumprod = ng.cumprod(1 - betas, 0)
        sqrt_ab, sqrt_1m_ab = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
        net = nn.Sequential(nn.Linear(2 + 8 + 4, 16), nn.SiLU(), nn.Linear(16, 2))
        emb = nn.Embedding(3, 4)
        holder = nn.Module()
        holder.null = nn.Parameter(ng.zeros(4))
        opt = optim.Adam(list(net.parameters()) + list(emb.parameters()) + [holder.null],
                         lr=1e-3)

        def timestep_embedding(t, dim):
            half = dim // 2
            freqs = ng.exp(-math.log(10000) * ng.arange(0, half, dtype=ng.float32) / half)
            args = t[:, None].float() * freqs[None]
            return ng.cat([ng.cos(args), ng.sin(args)], dim=-1)

        def extract(a, t, x_shape):
            b, *_ = t.shape
            out = a.gather(-1, t)
            return out.reshape(b, *((1,) * (len(x_shape) - 1)))

        def step(x0, y):
            t = ng.randint(0, T, (x0.shape[0],)).long()
            noise = ng.randn_like(x0)
            x_t = extract(sqrt_ab, t, x0.shape) * x0 + extract(sqrt_1m_ab, t, x0.shape) * noise
            c = emb(y)
            drop = ng.rand(x0.shape[0]) < 0.2
            c = ng.where(drop[:, None], holder.null.expand_as(c), c)
            pred = net(ng.cat([x_t, timestep_embedding(t, 8), c], 1))
            loss = F.mse_loss(pred, noise, reduction="none").mean(
                dim=list(range(1, len(pred.shape)))).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, t, drop
        rng = np.random.default_rng(20)
        batches = [(_f(rng, 8, 2), ng.tensor(rng.integers(0, 3, 8))) for _ in range(STEPS)]
        return Run((net, emb, holder, opt), step, batches)
    return make


@pytest.mark.parametrize("fuse", FUSE_SLOW)
def test_conditional_ddpm_guidance_dropout(fuse):
    check(cfg_ddpm(), fuse)


# --- 19. C51's categorical projection: index_add_ at floor/ceil atoms; the boolean-mask fix-up
# of the atoms' indices selects a value-dependent count, so that signature runs eagerly -------

def c51(masked_fixup):
    def make():
        ng.set_default_dtype(ng.float32)
        n_atoms, v_min, v_max, n_actions = 11, -5.0, 5.0, 3
        net = nn.Linear(4, n_actions * n_atoms)
        target = nn.Linear(4, n_actions * n_atoms)
        target.load_state_dict(net.state_dict())
        opt = optim.Adam(net.parameters(), lr=1e-3)
        support = ng.linspace(v_min, v_max, n_atoms)
        delta_z = (v_max - v_min) / (n_atoms - 1)

        def step(s, a, r, s2, d):
            B = s.shape[0]
            with ng.no_grad():
                next_dist = F.softmax(target(s2).view(B, n_actions, n_atoms), -1)
                next_a = (next_dist * support).sum(2).argmax(1)
                next_dist = next_dist[ng.arange(B), next_a]
                Tz = (r.unsqueeze(1) + (1 - d.unsqueeze(1)) * 0.99 * support.unsqueeze(0)
                      ).clamp(min=v_min, max=v_max)
                b = (Tz - v_min) / delta_z
                lo, up = b.floor().long(), b.ceil().long()
                if masked_fixup:
                    lo[(up > 0) * (lo == up)] -= 1
                    up[(lo < (n_atoms - 1)) * (lo == up)] += 1
                else:
                    lo = ng.where((lo == up) & (up > 0), lo - 1, lo)
                    up = ng.where((lo == up) & (lo < n_atoms - 1), up + 1, up)
                m = ng.zeros(B, n_atoms)
                offset = ng.linspace(0, (B - 1) * n_atoms, B).long().unsqueeze(1).expand(
                    B, n_atoms)
                m.view(-1).index_add_(0, (lo + offset).view(-1),
                                      (next_dist * (up.float() - b)).view(-1))
                m.view(-1).index_add_(0, (up + offset).view(-1),
                                      (next_dist * (b - lo.float())).view(-1))
            log_p = F.log_softmax(net(s).view(B, n_actions, n_atoms), -1)[range(B), a]
            loss = -(m * log_p).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, m
        batches = []
        for s, a, r, s2, d in _transitions(STEPS, batch=6):
            batches.append((s, a, r * 3, s2, d))
        return Run((net, target, opt), step, batches)
    return make


def test_c51_projection():
    check(c51(False))


def test_c51_masked_index_fixup_runs_eagerly():
    j = check(c51(True), replays=False)
    assert j.last.program is None and "boolean mask" in j.last.reason


# --- 20. a VQ-VAE: nearest codes by argmin, the straight-through estimator, an EMA codebook -----

def vqvae():
    def make():
        ng.set_default_dtype(ng.float32)

        class VectorQuantizerEMA(nn.Module):
            def __init__(self, n_codes=6, dim=3, decay=0.9, eps=1e-5):
                super().__init__()
                self.decay, self.eps = decay, eps
                embed = ng.randn(n_codes, dim)
                self.register_buffer("embed", embed)
                self.register_buffer("cluster_size", ng.zeros(n_codes))
                self.register_buffer("embed_avg", embed.clone())

            def forward(self, z):
                flat = z.reshape(-1, z.shape[-1])
                dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t()
                        + self.embed.pow(2).sum(1)[None])
                idx = dist.argmin(1)
                onehot = F.one_hot(idx, self.embed.shape[0]).type(flat.dtype)
                quant = F.embedding(idx, self.embed)
                if self.training:
                    with ng.no_grad():
                        self.cluster_size.data.mul_(self.decay).add_(onehot.sum(0),
                                                                     alpha=1 - self.decay)
                        self.embed_avg.data.mul_(self.decay).add_(onehot.t() @ flat,
                                                                  alpha=1 - self.decay)
                        n = self.cluster_size.sum()
                        size = (self.cluster_size + self.eps) / (
                            n + self.embed.shape[0] * self.eps) * n
                        self.embed.data.copy_(self.embed_avg / size.unsqueeze(1))
                diff = (quant.detach() - flat).pow(2).mean()
                return flat + (quant - flat).detach(), diff, idx

        enc, dec, vq = nn.Linear(4, 3), nn.Linear(3, 4), VectorQuantizerEMA()
        opt = optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)

        def step(x):
            q, commit, idx = vq(enc(x))
            loss = F.mse_loss(dec(q), x) + 0.25 * commit
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, idx
        rng = np.random.default_rng(22)
        return Run((enc, dec, vq, opt), step, [(_f(rng, 8, 4),) for _ in range(STEPS)])
    return make


def test_vqvae_ema_codebook():
    check(vqvae())


# --- 21. an R1 penalty on the real samples (requires_grad set on the input in the step) --------

def r1_gan():
    def make():
        ng.set_default_dtype(ng.float32)
        D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        opt = optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))

        def step(real, fake):
            real.requires_grad = True
            real_pred = D(real)
            grad_real, = ng.autograd.grad(outputs=real_pred.sum(), inputs=real,
                                          create_graph=True)
            r1 = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
            loss = F.softplus(-real_pred).mean() + F.softplus(D(fake)).mean() + 5.0 * r1
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, r1
        rng = np.random.default_rng(23)
        return Run((D, opt), step, [(_f(rng, 8, 2), _f(rng, 8, 2)) for _ in range(STEPS)])
    return make


def test_r1_penalty():
    check(r1_gan())


# --- 22. TRPO's natural gradient: Hessian-vector products, fixed conjugate-gradient iterations,
# the step written back with vector_to_parameters -------------------------------------------

def trpo():
    def make():
        ng.set_default_dtype(ng.float64)
        policy = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))

        def flat_grad(y, params, **kw):
            return ng.cat([g.reshape(-1) for g in ng.autograd.grad(y, params, **kw)])

        def step(obs, act, adv):
            params = list(policy.parameters())
            logits = policy(obs)
            dist = Categorical(logits=logits)
            logp_old = dist.log_prob(act).detach()
            surr = ((dist.log_prob(act) - logp_old).exp() * adv).mean()
            g = flat_grad(surr, params, retain_graph=True)
            kl = kl_divergence(Categorical(logits=logits.detach()), dist).mean()
            grads = flat_grad(kl, params, create_graph=True)

            def Hv(v):
                return flat_grad((grads * v).sum(), params, retain_graph=True) + 0.1 * v
            x, r, p = ng.zeros_like(g), g.clone(), g.clone()
            rdotr = r @ r
            for _ in range(5):
                z = Hv(p)
                alpha = rdotr / (p @ z)
                x = x + alpha * p
                r = r - alpha * z
                new_rdotr = r @ r
                p = r + new_rdotr / rdotr * p
                rdotr = new_rdotr
            step_size = ng.sqrt(2 * 0.01 / (x @ Hv(x)))
            with ng.no_grad():
                flat = nn.utils.parameters_to_vector(params)
                nn.utils.vector_to_parameters(flat + step_size * x, params)
            return surr, kl
        rng = np.random.default_rng(24)
        return Run((policy,), step, [(ng.tensor(rng.standard_normal((6, 3))),
                                      ng.tensor(rng.integers(0, 2, 6)),
                                      ng.tensor(rng.standard_normal(6)))
                                     for _ in range(STEPS // 2)])
    return make


def test_trpo_natural_gradient_step():
    check(trpo())


# --- 23. an ensemble of Q-networks stacked for vmap (REDQ-style), a functional update ----------

def test_vmapped_q_ensemble_functional_update():
    from nodegrad.func import functional_call, stack_module_state

    def run(jit):
        ng.manual_seed(0)
        ng.set_default_dtype(ng.float32)
        models = [nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)) for _ in range(4)]
        params, buffers = stack_module_state(models)
        base = models[0]

        def fmodel(p, b, x):
            return functional_call(base, (p, b), (x,))

        def loss_fn(params, x, y):
            q = ng.vmap(fmodel, in_dims=(0, 0, None))(params, buffers, x)
            return ((q.squeeze(-1) - y) ** 2).mean()

        def step(params, x, y):
            loss, g = ng.value_and_grad(loss_fn)(params, x, y)
            return loss, {k: params[k] - 0.1 * g[k] for k in params}
        f = ng.jit(step, fuse=False) if jit else step
        rng = np.random.default_rng(25)
        out = []
        for _ in range(STEPS // 2):
            loss, params = f(params, _f(rng, 6, 3), _f(rng, 6))
            out += [loss.numpy().copy()] + [params[k].numpy().copy() for k in sorted(params)]
        return out, f
    ref, _ = run(False)
    got, f = run(True)
    for a, b in zip(ref, got, strict=True):
        assert a.tobytes() == b.tobytes()
    # its outputs require grad: replayed as a differentiable program pair
    assert f.traces == 1 and f.last.reason is None and f.last.diff is not None


# --- 24. gradients cleared by assigning None (the performance guide's form of zero_grad) ------

def grad_none(where):
    def make():
        ng.set_default_dtype(ng.float32)
        q = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = optim.Adam(q.parameters(), lr=1e-3)

        def step(state, action, reward, next_state, done):
            if where == "start":
                for param in q.parameters():
                    param.grad = None
            with ng.no_grad():
                target = reward + 0.9 * q(next_state).max(1).values * (1 - done)
            loss = F.smooth_l1_loss(q(state).gather(1, action[:, None]).squeeze(1), target)
            loss.backward()
            if where == "manual":  # the tutorials' update by hand
                with ng.no_grad():
                    for param in q.parameters():
                        param -= 0.01 * param.grad
                        param.grad = None
                return loss
            opt.step()
            if where == "end":
                for param in q.parameters():
                    param.grad = None
            return loss
        return Run((q, opt), step, _transitions(STEPS))
    return make


@pytest.mark.parametrize("where", ["start", "end", "manual"])
def test_grads_set_to_none_in_the_step(where):
    # at the start of the step a replay skipped the assignment, so the gradients added up
    # across calls; after backward it made the signature run eagerly. Now a recorded step,
    # which the optimiser's lowering reads as zero_grad()
    j = check(grad_none(where))
    if where != "manual":
        assert j.last.program.counts()["lowered_steps"] == 1

# --- 25. a cotangent summed from three messages of mixed memory layouts -------------------------

def test_summed_cotangent_keeps_the_layout_a_replay_gives():
    # a wide hidden layer makes the logits F-ordered; the Categorical's log_prob, entropy and
    # probabilities send three cotangents to them (two F-ordered, one C-ordered). Eager backward
    # added the third into the first two's sum in place (F-ordered) where the trace's sum is a
    # new C-ordered array: the bias gradient's sum over 8 rows then added in another order (one
    # ulp off in the traced and replayed calls)
    ng.set_default_dtype(ng.float32)
    rng = np.random.default_rng(0)
    ng.manual_seed(0)
    actor = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    x, adv = _f(rng, 8, 4), _f(rng, 8)
    act = ng.tensor(rng.integers(0, 3, 8))

    def step(x, adv):
        dist = Categorical(logits=actor(x))
        loss = -(dist.log_prob(act) * adv).mean() - 0.01 * dist.entropy().mean()
        actor.zero_grad()
        loss.backward()
        return loss, actor[2].bias.grad.clone(), actor[0].weight.grad.clone()
    ref = [t.numpy().copy() for t in step(x, adv)]
    j = ng.jit(step, state=actor, fuse=False)
    for _ in range(2):
        got = [t.numpy().copy() for t in j(x, adv)]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(ref, got))
    assert j.last.program is not None
