"""Generative-model programs from PyTorch, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) with
``nn = lib.nn``, ``F = lib.nn.functional``, ``D = lib.distributions``, in the style of the
PyTorch examples, tutorials and paper repositories: VAEs (plain, conditional, beta with
distribution objects), DCGAN, WGAN-GP and weight-clipped WGAN, a small DDPM, VQ-VAE (straight
through, EMA codebook), PixelCNN, RealNVP, denoising score matching with Langevin sampling and
an energy-based model. Both runs start from the same weights; every random draw is made once by
PyTorch and fed to both as the same array, so differences are the libraries'. Float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nodegrad as ng
from _ports import arrays, assert_same, both, float64_one_thread, seeded  # noqa: F401

torch = pytest.importorskip("torch")

TOL = 1e-10

pytestmark = pytest.mark.usefixtures("float64_one_thread")




def draw(seed: int, *shape, kind: str = "randn") -> np.ndarray:
    """Noise drawn by PyTorch (seeded), as a NumPy array both runs are fed."""
    g = torch.Generator().manual_seed(seed)
    if kind == "rand":
        return torch.rand(*shape, generator=g, dtype=torch.float64).numpy().copy()
    return torch.randn(*shape, generator=g, dtype=torch.float64).numpy().copy()


def draw_int(seed: int, high: int, *shape) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g).numpy().copy()


IMAGES = 1 / (1 + np.exp(-2 * draw(100, 24, 1, 8, 8)))  # values in (0, 1), for BCE
BINARY = (draw(101, 24, 1, 8, 8, kind="rand") < IMAGES).astype(np.float64)
LABELS = draw_int(102, 3, 24)


# 1. VAE (the PyTorch examples repository, with a convolutional encoder) -------------------------

def conv_vae(lib, cond: int = 0):
    nn, F = lib.nn, lib.nn.functional

    class VAE(nn.Module):
        def __init__(self, z_dim=3):
            super().__init__()
            self.conv1 = nn.Conv2d(1 + cond, 4, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.fc_mu = nn.Linear(8 * 2 * 2, z_dim)
            self.fc_var = nn.Linear(8 * 2 * 2, z_dim)
            self.fc3 = nn.Linear(z_dim + cond, 8 * 2 * 2)
            self.deconv1 = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
            self.deconv2 = nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1)

        def encode(self, x):
            h = F.leaky_relu(self.conv1(x), 0.2)
            h = F.leaky_relu(self.conv2(h), 0.2)
            h = lib.flatten(h, start_dim=1)
            return self.fc_mu(h), self.fc_var(h)

        def reparameterize(self, mu, logvar, eps):
            std = lib.exp(0.5 * logvar)
            return mu + eps * std

        def decode(self, z):
            h = F.relu(self.fc3(z)).view(-1, 8, 2, 2)
            return lib.sigmoid(self.deconv2(F.relu(self.deconv1(h))))

        def forward(self, x, eps):
            mu, logvar = self.encode(x)
            z = self.reparameterize(mu, logvar, eps)
            return self.decode(z), mu, logvar

    return VAE()


def loss_function(lib, recon_x, x, mu, logvar):
    """Reconstruction + KL divergence losses summed over all elements and batch."""
    BCE = lib.nn.functional.binary_cross_entropy(recon_x.view(-1, 64), x.view(-1, 64),
                                                 reduction="sum")
    KLD = -0.5 * lib.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def vae_program(lib):
    model = seeded(lib, conv_vae(lib))
    optimizer = lib.optim.Adam(model.parameters(), lr=1e-2)
    data = lib.tensor(IMAGES)
    eps = lib.tensor(draw(1, 24, 3))
    rec = {"loss": []}
    for _epoch in range(2):
        model.train()
        train_loss = 0
        for batch_idx in range(3):
            x = data[8 * batch_idx:8 * batch_idx + 8]
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(x, eps[8 * batch_idx:8 * batch_idx + 8])
            loss = loss_function(lib, recon_batch, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        rec["loss"].append(train_loss / 24)
    model.eval()
    with lib.no_grad():
        sample = model.decode(lib.tensor(draw(2, 4, 3))).cpu()
        comparison = lib.cat([data[:4], model(data[:4], eps[:4])[0].view(4, 1, 8, 8)])
    rec["sample"], rec["comparison"] = sample, comparison
    rec["w"] = arrays(model.state_dict())
    return rec


def test_conv_vae_bce_sum_plus_kl():
    got = both(vae_program)
    assert got["loss"][1] < got["loss"][0]


def cvae_program(lib):
    """A conditional VAE: the label, one-hot, joins the image as channels and the code as
    features."""
    F = lib.nn.functional
    model = seeded(lib, conv_vae(lib, cond=3), seed=1)
    optimizer = lib.optim.Adam(model.parameters(), lr=5e-3, weight_decay=1e-4)
    data, labels = lib.tensor(IMAGES), lib.tensor(LABELS)
    eps = lib.tensor(draw(3, 24, 3))
    rec = []
    for i in range(3):
        x, y = data[8 * i:8 * i + 8], labels[8 * i:8 * i + 8]
        c = F.one_hot(y, num_classes=3).to(x.dtype)
        x_c = lib.cat([x, c[:, :, None, None].expand(-1, -1, 8, 8)], dim=1)
        mu, logvar = model.encode(x_c)
        z = model.reparameterize(mu, logvar, eps[8 * i:8 * i + 8])
        recon = model.decode(lib.cat((z, c), dim=-1))
        bce = F.binary_cross_entropy(recon, x, reduction="sum") / x.size(0)
        kld = lib.mean(-0.5 * lib.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1), dim=0)
        loss = bce + kld
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.append([bce.item(), kld.item()])
    with lib.no_grad():  # one sample per class from the same code
        c = lib.eye(3)
        z = lib.tensor(draw(4, 1, 3)).repeat(3, 1)
        rec.append(model.decode(lib.cat([z, c], 1)))
    return rec, model.state_dict()


def test_conditional_vae_one_hot_labels():
    both(cvae_program)


def beta_vae_program(lib, decoder: str):
    """A beta-VAE whose posterior, prior and likelihood are distribution objects: the ELBO from
    ``log_prob`` and ``kl_divergence`` (Bernoulli or Normal decoder)."""
    nn, D = lib.nn, lib.distributions
    enc = seeded(lib, nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Softplus(),
                                    nn.Linear(16, 2 * 2)), seed=2)
    dec = seeded(lib, nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 64),
                                    nn.Unflatten(1, (1, 8, 8))), seed=3)
    log_sigma = nn.Parameter(lib.zeros(1))
    params = list(enc.parameters()) + list(dec.parameters()) + [log_sigma]
    opt = lib.optim.Adam(params, lr=3e-3)
    beta = 4.0
    data = lib.tensor(BINARY if decoder == "bernoulli" else IMAGES)
    eps = lib.tensor(draw(5, 24, 2))
    rec = []
    for i in range(3):
        x = data[8 * i:8 * i + 8]
        mu, log_std = enc(x).chunk(2, dim=-1)
        q_z = D.Normal(mu, log_std.exp())
        p_z = D.Normal(lib.zeros_like(mu), lib.ones_like(mu))
        z = q_z.loc + q_z.scale * eps[8 * i:8 * i + 8]  # rsample with the fed noise
        out = dec(z)
        if decoder == "bernoulli":
            p_x = D.Independent(D.Bernoulli(logits=out), 3)
        else:
            p_x = D.Independent(D.Normal(out, log_sigma.exp().expand_as(out)), 3)
        log_lik = p_x.log_prob(x)
        kl = D.kl_divergence(q_z, p_z).sum(-1)
        loss = -(log_lik - beta * kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append([log_lik, kl, q_z.log_prob(z).sum(-1), p_x.entropy(), p_x.mean])
    return rec, enc.state_dict(), dec.state_dict(), log_sigma


@pytest.mark.parametrize("decoder", ["bernoulli", "normal"])
def test_beta_vae_distribution_objects(decoder):
    both(beta_vae_program, decoder)


# 2. GANs: DCGAN (BatchNorm on both sides, logits), WGAN-GP, WGAN with weight clipping ----------

def dcgan_nets(lib, nz: int = 4):
    nn = lib.nn

    class Generator(nn.Module):
        def __init__(self, ngf=8):
            super().__init__()
            self.main = nn.Sequential(
                nn.ConvTranspose2d(nz, ngf * 2, 2, 1, 0, bias=False),  # 2x2
                nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),  # 4x4
                nn.BatchNorm2d(ngf), nn.ReLU(True),
                nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False),  # 8x8
                nn.Tanh())

        def forward(self, input):
            return self.main(input)

    class Discriminator(nn.Module):
        def __init__(self, ndf=8):
            super().__init__()
            self.main = nn.Sequential(
                nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(ndf * 2, 1, 2, 1, 0, bias=False))

        def forward(self, input):
            return self.main(input).view(-1, 1).squeeze(1)

    return seeded(lib, Generator(), seed=4), seeded(lib, Discriminator(), seed=5)


def dcgan_program(lib):
    nn, optim = lib.nn, lib.optim
    netG, netD = dcgan_nets(lib)
    criterion = nn.BCEWithLogitsLoss()
    optimizerD = optim.Adam(netD.parameters(), lr=2e-3, betas=(0.5, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=2e-3, betas=(0.5, 0.999))
    fixed_noise = lib.tensor(draw(6, 4, 4, 1, 1))
    noise_all = lib.tensor(draw(7, 4, 8, 4, 1, 1))
    data = lib.tensor(IMAGES * 2 - 1)
    real_label, fake_label = 0.9, 0.0  # one-sided label smoothing
    rec = []
    for i in range(4):
        real_cpu = data[(6 * i) % 16:(6 * i) % 16 + 8]
        batch_size = real_cpu.size(0)
        # (1) update D: maximise log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        label = lib.full((batch_size,), real_label, dtype=real_cpu.dtype)
        output = netD(real_cpu)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = lib.sigmoid(output).mean().item()
        fake = netG(noise_all[i])
        label.fill_(fake_label)
        output = netD(fake.detach())
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.sigmoid().mean().item()
        errD = errD_real + errD_fake
        optimizerD.step()
        # (2) update G: maximise log(D(G(z)))
        netG.zero_grad()
        label.fill_(real_label)
        output = netD(fake)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = lib.sigmoid(output).mean().item()
        optimizerG.step()
        rec.append([errD.item(), errG.item(), D_x, D_G_z1, D_G_z2])
    netG.eval()
    with lib.no_grad():
        rec.append(netG(fixed_noise).detach())
    return rec, netG.state_dict(), netD.state_dict()


def test_dcgan_batchnorm_both_sides_bce_with_logits():
    both(dcgan_program)


def wgan_critic(lib):
    nn = lib.nn
    return seeded(lib, nn.Sequential(
        nn.Conv2d(1, 4, 4, 2, 1), nn.InstanceNorm2d(4, affine=True), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 8, 4, 2, 1), nn.LayerNorm([8, 2, 2]), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(32, 1)), seed=6)


def wgan_generator(lib):
    nn = lib.nn
    return seeded(lib, nn.Sequential(nn.Linear(4, 32), nn.ReLU(True), nn.Unflatten(1, (8, 2, 2)),
                                     nn.Upsample(scale_factor=2), nn.Conv2d(8, 4, 3, padding=1),
                                     nn.ReLU(True), nn.Upsample(scale_factor=2, mode="bilinear"),
                                     nn.Conv2d(4, 1, 3, padding=1), nn.Tanh()), seed=7)


def calc_gradient_penalty(lib, netD, real_data, fake_data, alpha, LAMBDA=10):
    """The penalty as the improved-WGAN reference code writes it."""
    interpolates = alpha * real_data + ((1 - alpha) * fake_data)
    interpolates = interpolates.requires_grad_(True)
    disc_interpolates = netD(interpolates)
    gradients = lib.autograd.grad(outputs=disc_interpolates, inputs=interpolates,
                                  grad_outputs=lib.ones_like(disc_interpolates),
                                  create_graph=True, retain_graph=True, only_inputs=True)[0]
    gradients = gradients.view(gradients.size(0), -1)
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * LAMBDA


def wgan_gp_program(lib):
    netD, netG = wgan_critic(lib), wgan_generator(lib)
    optimizerD = lib.optim.Adam(netD.parameters(), lr=1e-3, betas=(0.5, 0.9))
    optimizerG = lib.optim.Adam(netG.parameters(), lr=1e-3, betas=(0.5, 0.9))
    one = lib.tensor(1, dtype=lib.float)  # float32, as the reference code has it
    mone = one * -1
    data = lib.tensor(IMAGES * 2 - 1)
    noise = lib.tensor(draw(8, 10, 8, 4))
    alphas = lib.tensor(draw(9, 10, 8, 1, 1, 1, kind="rand"))
    rec, k = [], 0
    for _iteration in range(3):
        for p in netD.parameters():
            p.requires_grad = True
        for i in range(2):  # CRITIC_ITERS
            real_data_v = data[8 * i:8 * i + 8]
            netD.zero_grad()
            D_real = netD(real_data_v).mean()
            D_real.backward(mone)
            with lib.no_grad():
                fake = netG(noise[k])
            D_fake = netD(fake).mean()
            D_fake.backward(one)
            gradient_penalty = calc_gradient_penalty(lib, netD, real_data_v, fake, alphas[k])
            gradient_penalty.backward()
            D_cost = D_fake - D_real + gradient_penalty
            Wasserstein_D = D_real - D_fake
            optimizerD.step()
            rec.append([D_cost.item(), Wasserstein_D.item(), gradient_penalty.item()])
            k += 1
        for p in netD.parameters():
            p.requires_grad = False  # avoid computation
        netG.zero_grad()
        G = netD(netG(noise[k])).mean()
        G.backward(mone)
        optimizerG.step()
        rec.append(-G.item())
        k += 1
    return rec, netD.state_dict(), netG.state_dict()


def test_wgan_gp_reference_code_backward_with_one_and_mone():
    both(wgan_gp_program)


def wgan_clip_program(lib):
    """The original WGAN: RMSprop, the critic's weights clamped in place before every critic
    step, a BatchNorm critic."""
    nn = lib.nn
    netD = seeded(lib, nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2),
                                     nn.Linear(16, 1)), seed=8)
    netG = seeded(lib, nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 64),
                                     nn.Sigmoid()), seed=9)
    optimizerD = lib.optim.RMSprop(netD.parameters(), lr=5e-3)
    optimizerG = lib.optim.RMSprop(netG.parameters(), lr=5e-3)
    clamp_lower, clamp_upper = -0.05, 0.05
    data = lib.tensor(IMAGES).view(24, -1)
    noise = lib.tensor(draw(10, 12, 8, 4))
    rec, k = [], 0
    for _gen_iterations in range(3):
        for p in netD.parameters():
            p.requires_grad = True
        for i in range(3):
            for p in netD.parameters():
                p.data.clamp_(clamp_lower, clamp_upper)
            netD.zero_grad()
            errD_real = netD(data[8 * i:8 * i + 8]).mean(0).view(1)
            fake = netG(noise[k]).detach()
            errD_fake = netD(fake).mean(0).view(1)
            errD = errD_real - errD_fake
            errD.backward(lib.ones(1))
            optimizerD.step()
            rec.append(errD.item())
            k += 1
        for p in netD.parameters():
            p.requires_grad = False
        netG.zero_grad()
        errG = netD(netG(noise[k])).mean(0).view(1)
        errG.backward(lib.ones(1))
        optimizerG.step()
        rec.append(errG.item())
        k += 1
    with lib.no_grad():
        for p in netD.parameters():
            p.clamp_(clamp_lower, clamp_upper)
    assert all(float(p.abs().max()) <= 0.05 for p in netD.parameters())
    return rec, netD.state_dict(), netG.state_dict()


def test_wgan_weight_clipping_rmsprop():
    both(wgan_clip_program)


# 3. DDPM (the annotated-diffusion style): schedules, extract by gather, a small U-Net ----------

def linear_beta_schedule(lib, timesteps):
    beta_start, beta_end = 0.0001, 0.02
    return lib.linspace(beta_start, beta_end, timesteps)


def cosine_beta_schedule(lib, timesteps, s=0.008):
    """As proposed in https://arxiv.org/abs/2102.09672"""
    steps = timesteps + 1
    x = lib.linspace(0, timesteps, steps)
    alphas_cumprod = lib.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return lib.clip(betas, 0.0001, 0.9999)


def extract(a, t, x_shape):
    batch_size = t.shape[0]
    out = a.gather(-1, t.cpu())
    return out.reshape(batch_size, *((1,) * (len(x_shape) - 1))).to(t.device)


def diffusion_nets(lib):
    nn = lib.nn

    class SinusoidalPositionEmbeddings(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dim = dim

        def forward(self, time):
            device = time.device
            half_dim = self.dim // 2
            embeddings = math.log(10000) / (half_dim - 1)
            embeddings = lib.exp(lib.arange(half_dim, device=device) * -embeddings)
            embeddings = time[:, None] * embeddings[None, :]
            return lib.cat((embeddings.sin(), embeddings.cos()), dim=-1)

    class Block(nn.Module):
        def __init__(self, dim, dim_out, groups=2):
            super().__init__()
            self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)
            self.norm = nn.GroupNorm(groups, dim_out)
            self.act = nn.SiLU()

        def forward(self, x, scale_shift=None):
            x = self.norm(self.proj(x))
            if scale_shift is not None:
                scale, shift = scale_shift
                x = x * (scale + 1) + shift
            return self.act(x)

    class ResnetBlock(nn.Module):
        def __init__(self, dim, dim_out, *, time_emb_dim=None, groups=2):
            super().__init__()
            self.mlp = (nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2))
                        if time_emb_dim is not None else None)
            self.block1 = Block(dim, dim_out, groups=groups)
            self.block2 = Block(dim_out, dim_out, groups=groups)
            self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

        def forward(self, x, time_emb=None):
            scale_shift = None
            if self.mlp is not None and time_emb is not None:
                time_emb = self.mlp(time_emb)
                time_emb = time_emb[:, :, None, None]  # "b c -> b c 1 1"
                scale_shift = time_emb.chunk(2, dim=1)
            h = self.block1(x, scale_shift=scale_shift)
            h = self.block2(h)
            return h + self.res_conv(x)

    class Unet(nn.Module):
        def __init__(self, dim=4, channels=1):
            super().__init__()
            time_dim = dim * 4
            self.init_conv = nn.Conv2d(channels, dim, 1, padding=0)
            self.time_mlp = nn.Sequential(SinusoidalPositionEmbeddings(dim),
                                          nn.Linear(dim, time_dim), nn.GELU(),
                                          nn.Linear(time_dim, time_dim))
            self.down1 = ResnetBlock(dim, dim, time_emb_dim=time_dim)
            self.downsample = nn.Conv2d(dim, dim * 2, 4, 2, 1)
            self.mid = ResnetBlock(dim * 2, dim * 2, time_emb_dim=time_dim)
            self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                          nn.Conv2d(dim * 2, dim, 3, padding=1))
            self.up1 = ResnetBlock(dim * 2, dim, time_emb_dim=time_dim)
            self.final_conv = nn.Conv2d(dim, channels, 1)

        def forward(self, x, time):
            x = self.init_conv(x)
            r = x.clone()
            t = self.time_mlp(time)
            h = self.down1(x, t)
            x = self.mid(self.downsample(h), t)
            x = self.upsample(x)
            x = lib.cat((x, h), dim=1)  # skip connection
            x = self.up1(x, t)
            return self.final_conv(x + r)

    return seeded(lib, Unet(), seed=10)


def ddpm_program(lib, schedule: str, loss_type: str):
    F = lib.nn.functional
    timesteps = 20
    betas = (linear_beta_schedule if schedule == "linear" else cosine_beta_schedule)(
        lib, timesteps)
    alphas = 1.0 - betas
    alphas_cumprod = lib.cumprod(alphas, axis=0)
    alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
    sqrt_recip_alphas = lib.sqrt(1.0 / alphas)
    sqrt_alphas_cumprod = lib.sqrt(alphas_cumprod)
    sqrt_one_minus_alphas_cumprod = lib.sqrt(1.0 - alphas_cumprod)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

    def q_sample(x_start, t, noise):
        sqrt_alphas_cumprod_t = extract(sqrt_alphas_cumprod, t, x_start.shape)
        sqrt_one_minus_alphas_cumprod_t = extract(sqrt_one_minus_alphas_cumprod, t,
                                                  x_start.shape)
        return sqrt_alphas_cumprod_t * x_start + sqrt_one_minus_alphas_cumprod_t * noise

    def p_losses(denoise_model, x_start, t, noise):
        x_noisy = q_sample(x_start=x_start, t=t, noise=noise)
        predicted_noise = denoise_model(x_noisy, t)
        if loss_type == "l1":
            return F.l1_loss(noise, predicted_noise)
        if loss_type == "l2":
            return F.mse_loss(noise, predicted_noise)
        return F.smooth_l1_loss(noise, predicted_noise)

    @lib.no_grad()
    def p_sample(model, x, t, t_index, noise):
        betas_t = extract(betas, t, x.shape)
        sqrt_one_minus_alphas_cumprod_t = extract(sqrt_one_minus_alphas_cumprod, t, x.shape)
        sqrt_recip_alphas_t = extract(sqrt_recip_alphas, t, x.shape)
        model_mean = sqrt_recip_alphas_t * (
            x - betas_t * model(x, t) / sqrt_one_minus_alphas_cumprod_t)
        if t_index == 0:
            return model_mean
        posterior_variance_t = extract(posterior_variance, t, x.shape)
        return model_mean + lib.sqrt(posterior_variance_t) * noise

    model = diffusion_nets(lib)
    optimizer = lib.optim.Adam(model.parameters(), lr=1e-3)
    data = lib.tensor(IMAGES * 2 - 1)
    ts = lib.tensor(draw_int(11, timesteps, 3, 8))
    noises = lib.tensor(draw(12, 3, 8, 1, 8, 8))
    rec = {"sched": [betas, alphas_cumprod_prev, posterior_variance], "loss": []}
    for step in range(3):
        optimizer.zero_grad()
        batch = data[8 * step:8 * step + 8]
        loss = p_losses(model, batch, ts[step], noises[step])
        loss.backward()
        optimizer.step()
        rec["loss"].append(loss.item())
    img = lib.tensor(draw(13, 2, 1, 8, 8))
    z = lib.tensor(draw(14, 4, 2, 1, 8, 8))
    for i in reversed(range(4)):  # the last few steps of the reverse chain
        img = p_sample(model, img, lib.full((2,), i, dtype=lib.long), i, z[i])
    assert not img.requires_grad
    rec["img"], rec["w"] = img, arrays(model.state_dict())
    return rec


@pytest.mark.parametrize("schedule, loss_type", [("linear", "huber"), ("cosine", "l2"),
                                                 ("linear", "l1")])
def test_ddpm_unet_training_and_sampling(schedule, loss_type):
    both(ddpm_program, schedule, loss_type)


# 4. VQ-VAE: nearest code, straight-through estimator, commitment loss, EMA codebook -----------

def vq_nets(lib, ema: bool, by: str):
    nn, F = lib.nn, lib.nn.functional

    class VectorQuantizer(nn.Module):
        def __init__(self, num_embeddings, embedding_dim, commitment_cost):
            super().__init__()
            self._embedding_dim = embedding_dim
            self._num_embeddings = num_embeddings
            self._embedding = nn.Embedding(self._num_embeddings, self._embedding_dim)
            nn.init.uniform_(self._embedding.weight, -1 / num_embeddings, 1 / num_embeddings)
            self._commitment_cost = commitment_cost

        def forward(self, inputs):
            inputs = inputs.permute(0, 2, 3, 1).contiguous()  # BCHW -> BHWC
            input_shape = inputs.shape
            flat_input = inputs.view(-1, self._embedding_dim)
            if by == "cdist":
                distances = lib.cdist(flat_input, self._embedding.weight) ** 2
            else:
                distances = (lib.sum(flat_input ** 2, dim=1, keepdim=True)
                             + lib.sum(self._embedding.weight ** 2, dim=1)
                             - 2 * lib.matmul(flat_input, self._embedding.weight.t()))
            encoding_indices = lib.argmin(distances, dim=1).unsqueeze(1)
            encodings = lib.zeros(encoding_indices.shape[0], self._num_embeddings,
                                  device=inputs.device, dtype=inputs.dtype)
            encodings.scatter_(1, encoding_indices, 1)
            quantized = lib.matmul(encodings, self._embedding.weight).view(input_shape)
            e_latent_loss = F.mse_loss(quantized.detach(), inputs)
            q_latent_loss = F.mse_loss(quantized, inputs.detach())
            loss = q_latent_loss + self._commitment_cost * e_latent_loss
            quantized = inputs + (quantized - inputs).detach()
            avg_probs = lib.mean(encodings, dim=0)
            perplexity = lib.exp(-lib.sum(avg_probs * lib.log(avg_probs + 1e-10)))
            return loss, quantized.permute(0, 3, 1, 2).contiguous(), perplexity, encodings

    class VectorQuantizerEMA(nn.Module):
        """The rosinality form: buffers updated in place, codes looked up with F.embedding."""

        def __init__(self, dim, n_embed, decay=0.9, eps=1e-5):
            super().__init__()
            self.dim, self.n_embed, self.decay, self.eps = dim, n_embed, decay, eps
            embed = lib.tensor(draw(15, dim, n_embed))
            self.register_buffer("embed", embed)
            self.register_buffer("cluster_size", lib.zeros(n_embed))
            self.register_buffer("embed_avg", embed.clone())

        def forward(self, input):
            input = input.permute(0, 2, 3, 1)
            flatten = input.reshape(-1, self.dim)
            dist = (flatten.pow(2).sum(1, keepdim=True) - 2 * flatten @ self.embed
                    + self.embed.pow(2).sum(0, keepdim=True))
            _, embed_ind = (-dist).max(1)
            embed_onehot = F.one_hot(embed_ind, self.n_embed).type(flatten.dtype)
            embed_ind = embed_ind.view(*input.shape[:-1])
            quantize = self.embed_code(embed_ind)
            if self.training:
                embed_onehot_sum = embed_onehot.sum(0)
                embed_sum = flatten.transpose(0, 1) @ embed_onehot
                self.cluster_size.data.mul_(self.decay).add_(embed_onehot_sum,
                                                             alpha=1 - self.decay)
                self.embed_avg.data.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
                n = self.cluster_size.sum()
                cluster_size = ((self.cluster_size + self.eps)
                                / (n + self.n_embed * self.eps) * n)
                embed_normalized = self.embed_avg / cluster_size.unsqueeze(0)
                self.embed.data.copy_(embed_normalized)
            diff = (quantize.detach() - input).pow(2).mean()
            quantize = input + (quantize - input).detach()
            return quantize.permute(0, 3, 1, 2), diff, embed_ind

        def embed_code(self, embed_id):
            return F.embedding(embed_id, self.embed.transpose(0, 1))

    class Model(nn.Module):
        def __init__(self, hidden=4, num_embeddings=6):
            super().__init__()
            self._encoder = nn.Sequential(nn.Conv2d(1, hidden, 4, 2, 1), nn.ReLU(),
                                          nn.Conv2d(hidden, hidden, 3, 1, 1))
            if ema:
                self._vq_vae = VectorQuantizerEMA(hidden, num_embeddings)
            else:
                self._vq_vae = VectorQuantizer(num_embeddings, hidden, 0.25)
            self._decoder = nn.Sequential(nn.ConvTranspose2d(hidden, hidden, 4, 2, 1),
                                          nn.ReLU(), nn.Conv2d(hidden, 1, 3, 1, 1))

        def forward(self, x):
            z = self._encoder(x)
            if ema:
                quantized, loss, ind = self._vq_vae(z)
                perplexity = ind
            else:
                loss, quantized, perplexity, _ = self._vq_vae(z)
            return loss, self._decoder(quantized), perplexity

    return seeded(lib, Model(), seed=11)


def vqvae_program(lib, ema: bool, by: str = "expand"):
    F = lib.nn.functional
    model = vq_nets(lib, ema, by)
    optimizer = lib.optim.Adam(model.parameters(), lr=1e-2, amsgrad=False)
    data = lib.tensor(IMAGES - 0.5)
    data_variance = float(np.var(IMAGES))
    rec = []
    model.train()
    for i in range(4):
        x = data[(5 * i) % 16:(5 * i) % 16 + 8]
        optimizer.zero_grad()
        vq_loss, data_recon, perplexity = model(x)
        recon_error = F.mse_loss(data_recon, x) / data_variance
        loss = recon_error + (0.25 * vq_loss if ema else vq_loss)
        loss.backward()
        optimizer.step()
        rec.append([recon_error.item(), vq_loss.item(), perplexity])
    model.eval()
    with lib.no_grad():
        rec.append(model(data[:4])[1])
    return rec, model.state_dict()


@pytest.mark.parametrize("by", ["expand", "cdist"])
def test_vqvae_straight_through_commitment(by):
    both(vqvae_program, False, by)


def test_vqvae_ema_codebook_in_place_buffers():
    rec = both(vqvae_program, True)
    assert len({int(i) for i in np.ravel(rec[0][0][2])}) > 1  # more than one code in use


# 5. PixelCNN: masked convolutions (the mask a buffer multiplied into the weight) ---------------

def pixelcnn(lib, levels: int = 4):
    nn = lib.nn

    class MaskedConv2d(nn.Conv2d):
        def __init__(self, mask_type, *args, **kwargs):
            super().__init__(*args, **kwargs)
            assert mask_type in {"A", "B"}
            self.register_buffer("mask", self.weight.data.clone())
            _, _, kH, kW = self.weight.size()
            self.mask.fill_(1)
            self.mask[:, :, kH // 2, kW // 2 + (mask_type == "B"):] = 0
            self.mask[:, :, kH // 2 + 1:] = 0

        def forward(self, x):
            self.weight.data *= self.mask
            return super().forward(x)

    fm = 8
    net = nn.Sequential(
        MaskedConv2d("A", 1, fm, 5, 1, 2, bias=False), nn.BatchNorm2d(fm), nn.ReLU(True),
        MaskedConv2d("B", fm, fm, 3, 1, 1, bias=False), nn.BatchNorm2d(fm), nn.ReLU(True),
        MaskedConv2d("B", fm, fm, 3, 1, 1, bias=False), nn.BatchNorm2d(fm), nn.ReLU(True),
        nn.Conv2d(fm, levels, 1))
    return seeded(lib, net, seed=12)


def pixelcnn_program(lib):
    F = lib.nn.functional
    net = pixelcnn(lib)
    optimizer = lib.optim.Adam(net.parameters(), lr=1e-2)
    target_all = lib.tensor(np.floor(IMAGES * 3.999)).long()[:, 0]
    rec = []
    net.train()
    for i in range(3):
        target = target_all[8 * i:8 * i + 8]
        input = target.unsqueeze(1) / 3.0  # int64 over a float: the default dtype
        loss = F.cross_entropy(net(input), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.append(loss.item())
    # the receptive field is causal: pixel (3, 4) sees only pixels before it in raster order
    net.eval()
    x = lib.tensor(IMAGES[:1]).requires_grad_()
    net(x)[0, :, 3, 4].sum().backward()
    rec.append(x.grad)
    # sampling pixel by pixel, categories chosen by the inverse CDF of fed uniform draws
    u = lib.tensor(draw(16, 2, 4, 4, kind="rand"))
    sample = lib.zeros(2, 1, 4, 4)
    with lib.no_grad():
        for i in range(4):
            for j in range(4):
                probs = F.softmax(net(sample)[:, :, i, j], dim=-1)
                cdf = lib.cumsum(probs, dim=1)
                k = (cdf < u[:, i, j].unsqueeze(1)).sum(1).clamp(max=3)
                sample[:, :, i, j] = k.unsqueeze(1).to(sample.dtype) / 3.0
    rec.append(sample)
    return rec, net.state_dict()


def test_pixelcnn_masked_convolutions():
    rec = both(pixelcnn_program)
    g = np.abs(np.asarray(rec[0][3]))[0, 0]
    assert g[3, 4:].max() == 0 and g[4:].max() == 0 and g[3, :4].max() > 0


# 6. RealNVP: affine couplings, a distributions base, exact log-likelihood and inversion --------

MASKS = np.array([[0, 1], [1, 0]] * 2).astype(np.float64)


def realnvp(lib):
    nn, D = lib.nn, lib.distributions

    class RealNVP(nn.Module):
        def __init__(self, nets, nett, mask, prior):
            super().__init__()
            self.prior = prior
            self.mask = nn.Parameter(mask, requires_grad=False)
            self.t = nn.ModuleList([nett() for _ in range(len(mask))])
            self.s = nn.ModuleList([nets() for _ in range(len(mask))])

        def g(self, z):
            x = z
            for i in range(len(self.t)):
                x_ = x * self.mask[i]
                s = self.s[i](x_) * (1 - self.mask[i])
                t = self.t[i](x_) * (1 - self.mask[i])
                x = x_ + (1 - self.mask[i]) * (x * lib.exp(s) + t)
            return x

        def f(self, x):
            log_det_J, z = x.new_zeros(x.shape[0]), x
            for i in reversed(range(len(self.t))):
                z_ = self.mask[i] * z
                s = self.s[i](z_) * (1 - self.mask[i])
                t = self.t[i](z_) * (1 - self.mask[i])
                z = (1 - self.mask[i]) * (z - t) * lib.exp(-s) + z_
                log_det_J -= s.sum(dim=1)
            return z, log_det_J

        def log_prob(self, x):
            z, logp = self.f(x)
            return self.prior.log_prob(z) + logp

        def sample(self, z):
            return self.g(z)

    def nets():
        return nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(), nn.Linear(16, 16),
                             nn.LeakyReLU(), nn.Linear(16, 2), nn.Tanh())

    def nett():
        return nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(), nn.Linear(16, 16),
                             nn.LeakyReLU(), nn.Linear(16, 2))

    masks = lib.from_numpy(MASKS.copy())  # shares memory, as the parameter made of it
    prior = D.MultivariateNormal(lib.zeros(2), lib.eye(2))
    flow = seeded(lib, RealNVP(nets, nett, masks, prior), seed=13)
    with lib.no_grad():  # the masks are a parameter too: seeded anew, then put back
        flow.mask.copy_(lib.tensor(MASKS))
    return flow


MOONS = np.stack([np.cos(np.linspace(0, np.pi, 32)), np.sin(np.linspace(0, np.pi, 32))], 1) \
    + 0.1 * draw(17, 32, 2)


def realnvp_program(lib):
    flow = realnvp(lib)
    optimizer = lib.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=1e-3)
    base = lib.distributions.Independent(
        lib.distributions.Normal(lib.zeros(2), lib.ones(2)), 1)
    rec = []
    for t in range(4):
        noisy_moons = lib.from_numpy(MOONS[8 * t:8 * t + 8])
        loss = -flow.log_prob(noisy_moons).mean()
        optimizer.zero_grad()
        loss.backward(retain_graph=True)
        optimizer.step()
        z, logdet = flow.f(noisy_moons)
        rec.append([loss.item(), base.log_prob(z) + logdet])
    z = lib.tensor(draw(18, 6, 2))
    x = flow.sample(z)
    rec.append([x, flow.f(x)[0] - z])  # f inverts g
    assert flow.mask.grad is None and not flow.mask.requires_grad
    return rec, flow.state_dict()


def test_realnvp_coupling_flow():
    rec = both(realnvp_program)
    assert np.abs(np.asarray(rec[0][-1][1])).max() < 1e-12


# 7. Denoising score matching over noise levels (NCSN) and annealed Langevin sampling ----------

SIGMAS = np.exp(np.linspace(np.log(1.0), np.log(0.05), 4))


def score_nets(lib, energy: bool):
    nn, F = lib.nn, lib.nn.functional

    class CondScoreNet(nn.Module):
        """s(x, sigma_i): the noise level enters as a learned per-level gain."""

        def __init__(self, num_classes=4, hidden=16):
            super().__init__()
            self.fc1 = nn.Linear(2, hidden)
            self.embed = nn.Embedding(num_classes, hidden)
            self.fc2 = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, 2)

        def forward(self, x, y):
            h = F.softplus(self.fc1(x)) * self.embed(y)
            return self.out(F.elu(self.fc2(h)))

    class EnergyScore(nn.Module):
        """The score as minus the gradient of a scalar energy (kept in the graph)."""

        def __init__(self, hidden=16):
            super().__init__()
            self.energy = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                        nn.SiLU(), nn.Linear(hidden, 1))

        def forward(self, x, y):
            sigma = lib.tensor(SIGMAS, dtype=x.dtype)[y].unsqueeze(-1)
            if not x.requires_grad:
                x = x.requires_grad_()
            e = self.energy(lib.cat([x, sigma.log()], dim=-1)).squeeze(-1)
            return -lib.autograd.grad(e.sum(), x, create_graph=True)[0]

    return seeded(lib, EnergyScore() if energy else CondScoreNet(), seed=14)


def anneal_dsm_score_estimation(scorenet, samples, sigmas, labels, noise, anneal_power=2.0):
    used_sigmas = sigmas[labels].view(samples.shape[0], *([1] * len(samples.shape[1:])))
    perturbed_samples = samples + noise * used_sigmas
    target = -1 / (used_sigmas ** 2) * (perturbed_samples - samples)
    scores = scorenet(perturbed_samples, labels)
    target = target.view(target.shape[0], -1)
    scores = scores.view(scores.shape[0], -1)
    loss = 1 / 2.0 * ((scores - target) ** 2).sum(dim=-1) * used_sigmas.squeeze() ** anneal_power
    return loss.mean(dim=0)


def dsm_program(lib, energy: bool):
    scorenet = score_nets(lib, energy)
    optimizer = lib.optim.Adam(scorenet.parameters(), lr=1e-3, weight_decay=0.0, eps=1e-8,
                               amsgrad=False)
    sigmas = lib.tensor(SIGMAS)
    labels_all = lib.tensor(draw_int(19, len(SIGMAS), 4, 8))
    noise_all = lib.tensor(draw(20, 4, 8, 2))
    rec = []
    for step in range(4):
        X = lib.from_numpy(MOONS[8 * step:8 * step + 8])
        loss = anneal_dsm_score_estimation(scorenet, X, sigmas, labels_all[step],
                                           noise_all[step])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.append(loss.item())

    def anneal_langevin_dynamics(x_mod, scorenet, sigmas, noises, n_steps_each=2, step_lr=1e-3):
        images = []
        k = 0
        with lib.set_grad_enabled(energy):  # the energy's score needs autograd
            for c, sigma in enumerate(sigmas):
                labels = lib.ones(x_mod.shape[0], device=x_mod.device) * c
                labels = labels.long()
                step_size = step_lr * (sigma / sigmas[-1]) ** 2
                for _s in range(n_steps_each):
                    images.append(lib.clamp(x_mod, -3.0, 3.0).to("cpu"))
                    noise = noises[k] * lib.sqrt(step_size * 2)
                    grad = scorenet(x_mod, labels)
                    x_mod = (x_mod + step_size * grad + noise).detach()
                    k += 1
            return images

    x0 = lib.tensor(draw(21, 6, 2, kind="rand")) * 2 - 1
    images = anneal_langevin_dynamics(x0, scorenet, sigmas, lib.tensor(draw(22, 8, 6, 2)))
    rec.append(images)
    return rec, scorenet.state_dict()


@pytest.mark.parametrize("energy", [False, True], ids=["score_net", "energy_grad"])
def test_dsm_and_annealed_langevin(energy):
    both(dsm_program, energy)


# 8. An energy-based model trained by contrastive divergence with a replay buffer --------------

def ebm_program(lib):
    """The image EBM of the UvA deep-learning tutorials: Swish CNN, Langevin steps with the
    gradient and the images clamped, a replay buffer, the regularised contrastive loss."""
    nn = lib.nn

    class Swish(nn.Module):
        def forward(self, x):
            return x * lib.sigmoid(x)

    class CNNModel(nn.Module):
        def __init__(self, hidden_features=4):
            super().__init__()
            c1, c2 = hidden_features, hidden_features * 2
            self.cnn_layers = nn.Sequential(
                nn.Conv2d(1, c1, kernel_size=3, stride=2, padding=1), Swish(),
                nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1), Swish(),
                nn.Flatten(), nn.Linear(c2 * 4, c2), Swish(), nn.Linear(c2, 1))

        def forward(self, x):
            return self.cnn_layers(x).squeeze(dim=-1)

    def generate_samples(model, inp_imgs, noises, steps=6, step_size=10):
        is_training = model.training
        model.eval()
        for p in model.parameters():
            p.requires_grad = False
        inp_imgs.requires_grad = True
        had_gradients_enabled = lib.is_grad_enabled()
        lib.set_grad_enabled(True)
        for i in range(steps):
            inp_imgs.data.add_(noises[i].data)
            inp_imgs.data.clamp_(min=-1.0, max=1.0)
            out_imgs = -model(inp_imgs)
            out_imgs.sum().backward()
            inp_imgs.grad.data.clamp_(-0.03, 0.03)
            inp_imgs.data.add_(-step_size * inp_imgs.grad.data)
            inp_imgs.grad.detach_()
            inp_imgs.grad.zero_()
            inp_imgs.data.clamp_(min=-1.0, max=1.0)
        for p in model.parameters():
            p.requires_grad = True
        model.train(is_training)
        lib.set_grad_enabled(had_gradients_enabled)
        return inp_imgs

    model = seeded(lib, CNNModel(), seed=15)
    optimizer = lib.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999))
    scheduler = lib.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.97)
    rng = np.random.default_rng(23)
    examples = [(lib.tensor(draw(24 + i, 1, 1, 8, 8, kind="rand")) * 2 - 1) for i in range(8)]
    data = lib.tensor(IMAGES * 2 - 1)
    rec = []
    for step in range(3):
        real_imgs = data[4 * step:4 * step + 4].clone()
        small_noise = lib.tensor(draw(40 + step, 4, 1, 8, 8)) * 0.005
        real_imgs += small_noise
        real_imgs.clamp_(min=-1.0, max=1.0)
        n_new = 1
        rand_imgs = lib.tensor(draw(50 + step, n_new, 1, 8, 8, kind="rand")) * 2 - 1
        old_imgs = lib.cat([examples[j] for j in rng.integers(0, len(examples), 4 - n_new)],
                           dim=0)
        inp_imgs = lib.cat([rand_imgs, old_imgs], dim=0).detach()
        noises = lib.tensor(draw(60 + step, 6, 4, 1, 8, 8)) * 0.005
        fake_imgs = generate_samples(model, inp_imgs, noises)
        examples = list(fake_imgs.detach().to(lib.device("cpu")).chunk(4, dim=0)) + examples
        examples = examples[:10]
        inp_imgs = lib.cat([real_imgs, fake_imgs.detach()], dim=0)
        real_out, fake_out = model(inp_imgs).chunk(2, dim=0)
        reg_loss = 0.1 * (real_out ** 2 + fake_out ** 2).mean()
        cdiv_loss = fake_out.mean() - real_out.mean()
        loss = reg_loss + cdiv_loss
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
        optimizer.step()
        scheduler.step()
        rec.append([loss.item(), reg_loss.item(), cdiv_loss.item(), fake_imgs.detach()])
    assert lib.is_grad_enabled()
    return rec, [e for e in examples], model.state_dict()


def test_ebm_contrastive_divergence_replay_buffer():
    both(ebm_program)


# 9. Sliced score matching: third derivatives through normalisation layers --------------------

class ComposedNorm:
    """LayerNorm / BatchNorm2d written out from means and variances: PyTorch's fused norms give
    wrong third derivatives (their double backward treats the saved statistics as constants,
    pytorch/pytorch#175754 and #186256), so the PyTorch run uses these to be the reference."""

    @staticmethod
    def layer(lib, n):
        class LayerNorm(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = lib.nn.Parameter(lib.ones(n))
                self.bias = lib.nn.Parameter(lib.zeros(n))

            def forward(self, x):
                m = x.mean(-1, keepdim=True)
                v = x.var(-1, unbiased=False, keepdim=True)
                return (x - m) / lib.sqrt(v + 1e-5) * self.weight + self.bias

        return LayerNorm()

    @staticmethod
    def batch2d(lib, c):
        class BatchNorm2d(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = lib.nn.Parameter(lib.ones(c))
                self.bias = lib.nn.Parameter(lib.zeros(c))

            def forward(self, x):
                m = x.mean((0, 2, 3), keepdim=True)
                v = x.var((0, 2, 3), unbiased=False, keepdim=True)
                return ((x - m) / lib.sqrt(v + 1e-5) * self.weight[:, None, None]
                        + self.bias[:, None, None])

        return BatchNorm2d()


def ssm_energy(lib, kind: str, composed: bool):
    nn = lib.nn
    if kind == "mlp":
        norm = ComposedNorm.layer(lib, 8) if composed else nn.LayerNorm(8)
        net = nn.Sequential(nn.Linear(2, 8), nn.Softplus(), nn.Linear(8, 8), norm, nn.ELU(),
                            nn.Linear(8, 1))
    else:
        norm = ComposedNorm.batch2d(lib, 4) if composed else nn.BatchNorm2d(4)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm, nn.SiLU(),
                            nn.Conv2d(4, 2, 3, stride=2, padding=1), nn.Flatten(),
                            nn.Linear(2 * 4 * 4, 1))
    return seeded(lib, net, seed=16)


def sliced_score_estimation(lib, energy, samples, vectors):
    """Song et al.'s sliced score matching with the score as -dE/dx: its loss takes second
    derivatives of the energy, its parameter gradient third."""
    samples.requires_grad_(True)
    logp = -energy(samples).sum()
    grad1 = lib.autograd.grad(logp, samples, create_graph=True)[0]
    gradv = lib.sum(grad1 * vectors)
    loss1 = lib.sum((grad1 * vectors).flatten(1), dim=-1) ** 2 * 0.5
    grad2 = lib.autograd.grad(gradv, samples, create_graph=True)[0]
    loss2 = lib.sum((vectors * grad2).flatten(1), dim=-1)
    loss = loss1 + loss2
    return loss.mean(), grad1


def ssm_program(lib, kind: str, composed: bool = False):
    energy = ssm_energy(lib, kind, composed)
    optimizer = lib.optim.Adam(energy.parameters(), lr=1e-3)
    rec = []
    for step in range(2):
        if kind == "mlp":
            x = lib.from_numpy(MOONS[8 * step:8 * step + 8].copy())
        else:
            x = lib.tensor(IMAGES[4 * step:4 * step + 4])
        vectors = lib.tensor(draw(70 + step, *x.shape))  # Gaussian projections
        loss, score = sliced_score_estimation(lib, energy, x, vectors)
        optimizer.zero_grad()
        loss.backward()
        rec.append([loss.item(), score.detach(), [p.grad for p in energy.parameters()]])
        optimizer.step()
    return rec


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_sliced_score_matching_third_derivatives_of_norm_layers(kind):
    theirs = ssm_program(torch, kind, composed=True)
    assert_same(ssm_program(ng, kind), theirs)  # nodegrad's fused norms
    assert_same(ssm_program(ng, kind, composed=True), theirs)


def test_third_derivative_of_layer_norm_matches_finite_differences():
    """d/dx of a second directional derivative of layer_norm, against central differences of
    that second derivative (where PyTorch's fused layer_norm is off)."""
    x0 = draw(80, 3, 4)
    v, w = ng.tensor(draw(81, 3, 4)), ng.tensor(draw(82, 4))

    def second(x, create: bool):
        f = (ng.nn.functional.layer_norm(x, (4,)) * w).tanh().sum()
        g = ng.autograd.grad(f, x, create_graph=True)[0]
        g = ng.autograd.grad((g * v).sum(), x, create_graph=create)[0]
        return (g * v).sum()

    x = ng.tensor(x0, requires_grad=True)
    second(x, True).backward()
    fd, h = np.zeros_like(x0), 1e-5
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = h
        fd[i] = (second(ng.tensor(x0 + e, requires_grad=True), False).item()
                 - second(ng.tensor(x0 - e, requires_grad=True), False).item()) / (2 * h)
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-6, atol=1e-6)


# 10. VQ-VAE with the straight-through estimator as autograd Functions ------------------------

def vq_functions(lib):
    Function = lib.autograd.Function

    class VectorQuantization(Function):
        @staticmethod
        def forward(ctx, inputs, codebook):
            with lib.no_grad():
                embedding_size = codebook.size(1)
                inputs_size = inputs.size()
                inputs_flatten = inputs.view(-1, embedding_size)
                codebook_sqr = lib.sum(codebook ** 2, dim=1)
                inputs_sqr = lib.sum(inputs_flatten ** 2, dim=1, keepdim=True)
                distances = lib.addmm(codebook_sqr + inputs_sqr, inputs_flatten, codebook.t(),
                                      alpha=-2.0, beta=1.0)
                _, indices_flatten = lib.min(distances, dim=1)
                indices = indices_flatten.view(*inputs_size[:-1])
                ctx.mark_non_differentiable(indices)
                return indices

        @staticmethod
        def backward(ctx, grad_output):
            raise RuntimeError("Trying to call `.grad()` on graph containing "
                               "`VectorQuantization`. The function `VectorQuantization` "
                               "is not differentiable. Use `VectorQuantizationStraightThrough` "
                               "if you want a straight-through estimator of the gradient.")

    vq = VectorQuantization.apply

    class VectorQuantizationStraightThrough(Function):
        @staticmethod
        def forward(ctx, inputs, codebook):
            indices = vq(inputs, codebook)
            indices_flatten = indices.view(-1)
            ctx.save_for_backward(indices_flatten, codebook)
            ctx.mark_non_differentiable(indices_flatten)
            codes_flatten = lib.index_select(codebook, dim=0, index=indices_flatten)
            codes = codes_flatten.view_as(inputs)
            return (codes, indices_flatten)

        @staticmethod
        def backward(ctx, grad_output, grad_indices):
            grad_inputs, grad_codebook = None, None
            if ctx.needs_input_grad[0]:
                grad_inputs = grad_output.clone()
            if ctx.needs_input_grad[1]:
                indices, codebook = ctx.saved_tensors
                embedding_size = codebook.size(1)
                grad_output_flatten = grad_output.contiguous().view(-1, embedding_size)
                grad_codebook = lib.zeros_like(codebook)
                grad_codebook.index_add_(0, indices, grad_output_flatten)
            return (grad_inputs, grad_codebook)

    return vq, VectorQuantizationStraightThrough.apply


def vq_function_program(lib):
    nn, F = lib.nn, lib.nn.functional
    vq, vq_st = vq_functions(lib)

    class VQEmbedding(nn.Module):
        def __init__(self, K, D):
            super().__init__()
            self.embedding = nn.Embedding(K, D)
            self.embedding.weight.data.uniform_(-1.0 / K, 1.0 / K)

        def forward(self, z_e_x):
            z_e_x_ = z_e_x.permute(0, 2, 3, 1).contiguous()
            return vq(z_e_x_, self.embedding.weight)

        def straight_through(self, z_e_x):
            z_e_x_ = z_e_x.permute(0, 2, 3, 1).contiguous()
            z_q_x_, indices = vq_st(z_e_x_, self.embedding.weight.detach())
            z_q_x = z_q_x_.permute(0, 3, 1, 2).contiguous()
            z_q_x_bar_flatten = lib.index_select(self.embedding.weight, dim=0, index=indices)
            z_q_x_bar_ = z_q_x_bar_flatten.view_as(z_e_x_)
            z_q_x_bar = z_q_x_bar_.permute(0, 3, 1, 2).contiguous()
            return z_q_x, z_q_x_bar

    class VectorQuantizedVAE(nn.Module):
        def __init__(self, input_dim=1, dim=4, K=5):
            super().__init__()
            # no bias before a BatchNorm: its gradient is zero up to rounding, which Adam's
            # 1 / eps would magnify into differences between any two libraries
            self.encoder = nn.Sequential(nn.Conv2d(input_dim, dim, 4, 2, 1, bias=False),
                                         nn.BatchNorm2d(dim), nn.ReLU(True),
                                         nn.Conv2d(dim, dim, 3, 1, 1))
            self.codebook = VQEmbedding(K, dim)
            self.decoder = nn.Sequential(nn.ReLU(True),
                                         nn.ConvTranspose2d(dim, dim, 4, 2, 1, bias=False),
                                         nn.BatchNorm2d(dim), nn.ReLU(True),
                                         nn.Conv2d(dim, input_dim, 3, 1, 1), nn.Tanh())

        def encode(self, x):
            return self.codebook(self.encoder(x))

        def forward(self, x):
            z_e_x = self.encoder(x)
            z_q_x_st, z_q_x = self.codebook.straight_through(z_e_x)
            return self.decoder(z_q_x_st), z_e_x, z_q_x

    model = seeded(lib, VectorQuantizedVAE(), seed=17)
    optimizer = lib.optim.Adam(model.parameters(), lr=2e-3)
    data = lib.tensor(IMAGES * 2 - 1)
    rec = []
    for i in range(3):
        images = data[8 * i:8 * i + 8]
        optimizer.zero_grad()
        x_tilde, z_e_x, z_q_x = model(images)
        loss_recons = F.mse_loss(x_tilde, images)  # reconstruction loss
        loss_vq = F.mse_loss(z_q_x, z_e_x.detach())  # vector quantization objective
        loss_commit = F.mse_loss(z_e_x, z_q_x.detach())  # commitment objective
        loss = loss_recons + loss_vq + 0.25 * loss_commit
        loss.backward()
        optimizer.step()
        rec.append([loss_recons.item(), loss_vq.item(), loss_commit.item()])
    model.eval()
    with lib.no_grad():
        indices = model.encode(data[:2])
    assert not indices.requires_grad and indices.dtype == lib.int64
    rec.append(indices)
    z = model.encoder(data[:2]).permute(0, 2, 3, 1).contiguous()
    ind = vq(z, model.codebook.embedding.weight)  # recorded inputs, a non-differentiable output
    assert not ind.requires_grad and ind.grad_fn is None and ind.equal(indices)
    return rec, model.state_dict()


def test_vqvae_straight_through_autograd_functions():
    both(vq_function_program)


# 11. PyTorch-GAN style: Variable, typed tensor constructors, a conditional LSGAN ---------------

def cgan_program(lib):
    nn = lib.nn
    Variable = lib.autograd.Variable
    FloatTensor = lib.DoubleTensor  # ``torch.cuda.FloatTensor if cuda else torch.FloatTensor``
    LongTensor = lib.LongTensor
    n_classes, latent_dim, img_shape = 3, 4, (1, 8, 8)

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.label_emb = nn.Embedding(n_classes, n_classes)

            def block(in_feat, out_feat, normalize=True):
                layers = [nn.Linear(in_feat, out_feat)]
                if normalize:
                    layers.append(nn.BatchNorm1d(out_feat, 0.8))
                layers.append(nn.LeakyReLU(0.2, inplace=True))
                return layers

            self.model = nn.Sequential(
                *block(latent_dim + n_classes, 16, normalize=False), *block(16, 32),
                nn.Linear(32, int(np.prod(img_shape))), nn.Tanh())

        def forward(self, noise, labels):
            gen_input = lib.cat((self.label_emb(labels), noise), -1)
            img = self.model(gen_input)
            return img.view(img.size(0), *img_shape)

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.label_embedding = nn.Embedding(n_classes, n_classes)
            self.model = nn.Sequential(
                nn.Linear(n_classes + int(np.prod(img_shape)), 32),
                nn.LeakyReLU(0.2, inplace=True), nn.Linear(32, 32), nn.Dropout(0.0),
                nn.LeakyReLU(0.2, inplace=True), nn.Linear(32, 1))

        def forward(self, img, labels):
            d_in = lib.cat((img.view(img.size(0), -1), self.label_embedding(labels)), -1)
            return self.model(d_in)

    adversarial_loss = nn.MSELoss()
    generator, discriminator = seeded(lib, Generator(), seed=18), seeded(lib, Discriminator(),
                                                                          seed=19)
    optimizer_G = lib.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    optimizer_D = lib.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    rng = np.random.default_rng(20)
    rec = []
    for i in range(3):
        imgs = lib.tensor(IMAGES[8 * i:8 * i + 8] * 2 - 1)
        labels = lib.tensor(LABELS[8 * i:8 * i + 8])
        batch_size = imgs.shape[0]
        valid = Variable(FloatTensor(batch_size, 1).fill_(1.0), requires_grad=False)
        fake = Variable(FloatTensor(batch_size, 1).fill_(0.0), requires_grad=False)
        real_imgs = Variable(imgs.type(FloatTensor))
        labels = Variable(labels.type(LongTensor))
        optimizer_G.zero_grad()
        z = Variable(FloatTensor(rng.normal(0, 1, (batch_size, latent_dim))))
        gen_labels = Variable(LongTensor(rng.integers(0, n_classes, batch_size)))
        gen_imgs = generator(z, gen_labels)
        validity = discriminator(gen_imgs, gen_labels)
        g_loss = adversarial_loss(validity, valid)
        g_loss.backward()
        optimizer_G.step()
        optimizer_D.zero_grad()
        validity_real = discriminator(real_imgs, labels)
        d_real_loss = adversarial_loss(validity_real, valid)
        validity_fake = discriminator(gen_imgs.detach(), gen_labels)
        d_fake_loss = adversarial_loss(validity_fake, fake)
        d_loss = (d_real_loss + d_fake_loss) / 2
        d_loss.backward()
        optimizer_D.step()
        rec.append([d_loss.item(), g_loss.item()])
    # sample_image: a grid of generated digits ranging from 0 to n_classes per row
    generator.eval()
    z = Variable(FloatTensor(np.random.default_rng(21).normal(0, 1, (n_classes ** 2, latent_dim))))
    labels = np.array([num for _ in range(n_classes) for num in range(n_classes)])
    labels = Variable(LongTensor(labels))
    rec.append(generator(z, labels).data)
    assert real_imgs.dtype == lib.float64 and labels.dtype == lib.int64
    return rec, generator.state_dict(), discriminator.state_dict()


def test_pytorch_gan_style_conditional_lsgan():
    both(cgan_program)


# 12. Glow: ActNorm with data-dependent init, LU-decomposed 1x1 convolution, affine coupling ----

def glow(lib):
    nn, F = lib.nn, lib.nn.functional
    logabs = lambda x: lib.log(lib.abs(x))  # noqa: E731

    class ActNorm(nn.Module):
        def __init__(self, in_channel, logdet=True):
            super().__init__()
            self.loc = nn.Parameter(lib.zeros(1, in_channel, 1, 1))
            self.scale = nn.Parameter(lib.ones(1, in_channel, 1, 1))
            self.register_buffer("initialized", lib.tensor(0, dtype=lib.uint8))
            self.logdet = logdet

        def initialize(self, input):
            with lib.no_grad():
                flatten = input.permute(1, 0, 2, 3).contiguous().view(input.shape[1], -1)
                mean = (flatten.mean(1).unsqueeze(1).unsqueeze(2).unsqueeze(3)
                        .permute(1, 0, 2, 3))
                # ``flatten.std(1)`` in the original: nodegrad's positional axis is NumPy's
                # (ddof=0), ``dim=`` PyTorch's (N - 1), as documented
                std = (flatten.std(dim=1).unsqueeze(1).unsqueeze(2).unsqueeze(3)
                       .permute(1, 0, 2, 3))
                self.loc.data.copy_(-mean)
                self.scale.data.copy_(1 / (std + 1e-6))

        def forward(self, input):
            _, _, height, width = input.shape
            if self.initialized.item() == 0:
                self.initialize(input)
                self.initialized.fill_(1)
            log_abs = logabs(self.scale)
            logdet = height * width * lib.sum(log_abs)
            if self.logdet:
                return self.scale * (input + self.loc), logdet
            return self.scale * (input + self.loc)

        def reverse(self, output):
            return output / self.scale - self.loc

    class InvConv2dLU(nn.Module):
        def __init__(self, in_channel):
            super().__init__()
            weight = np.random.default_rng(22).standard_normal((in_channel, in_channel))
            q, _ = np.linalg.qr(weight)
            w_p, w_l, w_u = (t.numpy() for t in torch.linalg.lu(torch.from_numpy(q)))
            w_s = np.diag(w_u)
            w_u = np.triu(w_u, 1)
            u_mask = np.triu(np.ones_like(w_u), 1)
            l_mask = u_mask.T
            w_p = lib.from_numpy(w_p.copy())
            w_l = lib.from_numpy(w_l.copy())
            w_s = lib.from_numpy(w_s.copy())
            w_u = lib.from_numpy(w_u.copy())
            self.register_buffer("w_p", w_p)
            self.register_buffer("u_mask", lib.from_numpy(u_mask.copy()))
            self.register_buffer("l_mask", lib.from_numpy(l_mask.copy()))
            self.register_buffer("s_sign", lib.sign(w_s))
            self.register_buffer("l_eye", lib.eye(l_mask.shape[0]))
            self.w_l = nn.Parameter(w_l)
            self.w_s = nn.Parameter(logabs(w_s))
            self.w_u = nn.Parameter(w_u)

        def forward(self, input):
            _, _, height, width = input.shape
            weight = self.calc_weight()
            out = F.conv2d(input, weight)
            logdet = height * width * lib.sum(self.w_s)
            return out, logdet

        def calc_weight(self):
            weight = (self.w_p @ (self.w_l * self.l_mask + self.l_eye)
                      @ ((self.w_u * self.u_mask) + lib.diag(self.s_sign * lib.exp(self.w_s))))
            return weight.unsqueeze(2).unsqueeze(3)

        def reverse(self, output):
            weight = self.calc_weight()
            return F.conv2d(output, weight.squeeze().inverse().unsqueeze(2).unsqueeze(3))

    class ZeroConv2d(nn.Module):
        def __init__(self, in_channel, out_channel):
            super().__init__()
            self.conv = nn.Conv2d(in_channel, out_channel, 3, padding=0)
            self.conv.weight.data.zero_()
            self.conv.bias.data.zero_()
            self.scale = nn.Parameter(lib.zeros(1, out_channel, 1, 1))

        def forward(self, input):
            out = F.pad(input, [1, 1, 1, 1], value=1)
            out = self.conv(out)
            return out * lib.exp(self.scale * 3)

    class AffineCoupling(nn.Module):
        def __init__(self, in_channel, filter_size=8):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(in_channel // 2, filter_size, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(filter_size, filter_size, 1), nn.ReLU(inplace=True),
                ZeroConv2d(filter_size, in_channel))

        def forward(self, input):
            in_a, in_b = input.chunk(2, 1)
            log_s, t = self.net(in_a).chunk(2, 1)
            s = F.sigmoid(log_s + 2)
            out_b = (in_b + t) * s
            logdet = lib.sum(lib.log(s).view(input.shape[0], -1), 1)
            return lib.cat([in_a, out_b], 1), logdet

        def reverse(self, output):
            out_a, out_b = output.chunk(2, 1)
            log_s, t = self.net(out_a).chunk(2, 1)
            s = F.sigmoid(log_s + 2)
            in_b = out_b / s - t
            return lib.cat([out_a, in_b], 1)

    class Flow(nn.Module):
        def __init__(self, in_channel):
            super().__init__()
            self.actnorm = ActNorm(in_channel)
            self.invconv = InvConv2dLU(in_channel)
            self.coupling = AffineCoupling(in_channel)

        def forward(self, input):
            out, logdet = self.actnorm(input)
            out, det1 = self.invconv(out)
            out, det2 = self.coupling(out)
            logdet = logdet + det1
            if det2 is not None:
                logdet = logdet + det2
            return out, logdet

        def reverse(self, output):
            input = self.coupling.reverse(output)
            input = self.invconv.reverse(input)
            return self.actnorm.reverse(input)

    class Glow(nn.Module):
        def __init__(self, n_flow=2):
            super().__init__()
            self.flows = nn.ModuleList([Flow(4) for _ in range(n_flow)])

        def forward(self, input):
            b_size, n_channel, height, width = input.shape
            squeezed = input.view(b_size, n_channel, height // 2, 2, width // 2, 2)
            squeezed = squeezed.permute(0, 1, 3, 5, 2, 4)
            out = squeezed.contiguous().view(b_size, n_channel * 4, height // 2, width // 2)
            logdet = 0
            for flow in self.flows:
                out, det = flow(out)
                logdet = logdet + det
            zero = lib.zeros_like(out)
            log_p = gaussian_log_p(out, zero, zero).view(b_size, -1).sum(1)
            return log_p, logdet, out

        def reverse(self, z):
            for flow in self.flows[::-1]:
                z = flow.reverse(z)
            b_size, n_channel, height, width = z.shape
            unsqueezed = z.view(b_size, n_channel // 4, 2, 2, height, width)
            unsqueezed = unsqueezed.permute(0, 1, 4, 2, 5, 3)
            return unsqueezed.contiguous().view(b_size, n_channel // 4, height * 2, width * 2)

    def gaussian_log_p(x, mean, log_sd):
        return -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (x - mean) ** 2 / lib.exp(2 * log_sd)

    return Glow()


def glow_program(lib):
    model = glow(lib)
    with lib.no_grad():  # random weights where Glow starts from zeros, so that steps matter
        seeded(lib, model.flows, seed=23)
    optimizer = lib.optim.Adam(model.parameters(), lr=1e-3)
    n_bits, n_pixel = 5, 8 * 8 * 1
    n_bins = 2.0 ** n_bits
    dequant = lib.tensor(draw(90, 3, 8, 1, 8, 8, kind="rand"))
    rec = []
    for i in range(3):
        image = lib.tensor(IMAGES[8 * i:8 * i + 8])
        image = image * 255
        if n_bits < 8:
            image = lib.floor(image / 2 ** (8 - n_bits))
        image = image / n_bins - 0.5
        log_p, logdet, _ = model(image + dequant[i] / n_bins)
        logdet = logdet.mean()
        loss = -math.log(n_bins) * n_pixel
        loss = loss + logdet + log_p
        loss = (-loss / (math.log(2) * n_pixel)).mean()
        model.zero_grad()
        loss.backward()
        warmup_lr = 1e-3 * min(1, (i + 1) * 8 / 20)
        optimizer.param_groups[0]["lr"] = warmup_lr
        optimizer.step()
        rec.append([loss.item(), (log_p / (math.log(2) * n_pixel)).mean().item(),
                    (logdet / (math.log(2) * n_pixel)).item()])
    with lib.no_grad():
        x = lib.tensor(IMAGES[:2]) - 0.5
        _, _, z = model(x)
        rec.append([z, model.reverse(z) - x])
    assert all(int(f.actnorm.initialized) == 1 for f in model.flows)
    return rec, model.state_dict()


def test_glow_actnorm_lu_invconv_affine_coupling():
    rec = both(glow_program)
    assert np.abs(np.asarray(rec[0][-1][1])).max() < 1e-10  # reverse inverts forward


def test_std_method_is_pytorchs_and_numpy_keywords_numpys():
    """What Glow's ActNorm meets: ``x.std(1)`` and ``x.std()`` divide by N - 1 (PyTorch's
    method); NumPy's ``axis=`` or ``ddof=`` (and the function ``ng.std``) by N."""
    a = draw(91, 3, 5)
    x, t = ng.tensor(a), torch.tensor(a)
    for got in (x.std(1), x.std(dim=1), x.std(1, unbiased=True), x.std(1, correction=1)):
        np.testing.assert_allclose(got.numpy(), t.std(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.std().numpy(), t.std().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.std(axis=1).numpy(), a.std(1), rtol=1e-12)
    np.testing.assert_allclose(ng.std(x).numpy(), a.std(), rtol=1e-12)


# 13. SNGAN: spectral normalisation (both APIs), hinge loss, n_dis critic steps ----------------

def sngan_program(lib, parametrized: bool):
    nn = lib.nn
    SN = nn.utils.parametrizations.spectral_norm if parametrized else nn.utils.spectral_norm

    class Discriminator(nn.Module):
        def __init__(self, ch=4):
            super().__init__()
            self.main = nn.Sequential(
                SN(nn.Conv2d(1, ch, 3, 1, 1)), nn.LeakyReLU(0.1),
                SN(nn.Conv2d(ch, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.1),
                SN(nn.Conv2d(ch * 2, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.1))
            self.linear = SN(nn.Linear(ch * 2 * 2 * 2, 1))

        def forward(self, x):
            return self.linear(lib.flatten(self.main(x), start_dim=1))

    class Generator(nn.Module):
        def __init__(self, z_dim=4, ch=4):
            super().__init__()
            self.linear = nn.Linear(z_dim, 2 * 2 * ch * 2)
            self.main = nn.Sequential(
                nn.BatchNorm2d(ch * 2), nn.ReLU(True),
                nn.ConvTranspose2d(ch * 2, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU(True),
                nn.ConvTranspose2d(ch, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU(True),
                nn.Conv2d(ch, 1, 3, 1, 1), nn.Tanh())

        def forward(self, z):
            return self.main(self.linear(z).view(-1, 8, 2, 2))

    net_D = Discriminator()
    # every parameter and buffer from one generator: the power iteration's u (and v) included
    rng = np.random.default_rng(24)
    net_D.load_state_dict({k: lib.tensor(rng.standard_normal(tuple(v.shape)) * 0.3)
                           for k, v in net_D.state_dict().items()})
    net_G = seeded(lib, Generator(), seed=25)
    optim_G = lib.optim.Adam(net_G.parameters(), lr=2e-3, betas=(0.0, 0.9))
    optim_D = lib.optim.Adam(net_D.parameters(), lr=2e-3, betas=(0.0, 0.9))
    sched_G = lib.optim.lr_scheduler.LambdaLR(optim_G, lambda step: 1 - step / 10)
    sched_D = lib.optim.lr_scheduler.LambdaLR(optim_D, lambda step: 1 - step / 10)
    data = lib.tensor(IMAGES * 2 - 1)
    zs = lib.tensor(draw(92, 9, 8, 4))
    rec, k = [], 0
    for _step in range(3):
        for n in range(2):  # n_dis
            with lib.no_grad():
                x_fake = net_G(zs[k]).detach()
            x_real = data[8 * n:8 * n + 8]
            # ``dim=0`` spelled out: without it ``ng.split`` is NumPy's (cut positions)
            net_D_real, net_D_fake = lib.split(net_D(lib.cat([x_real, x_fake])),
                                               [x_real.shape[0], x_fake.shape[0]], dim=0)
            loss_D = (lib.nn.functional.relu(1 - net_D_real).mean()
                      + lib.nn.functional.relu(1 + net_D_fake).mean())
            optim_D.zero_grad()
            loss_D.backward()
            optim_D.step()
            rec.append(loss_D.item())
            k += 1
        for p in net_D.parameters():
            p.requires_grad_(False)
        loss_G = -net_D(net_G(zs[k])).mean()
        optim_G.zero_grad()
        loss_G.backward()
        optim_G.step()
        for p in net_D.parameters():
            p.requires_grad_(True)
        sched_G.step()
        sched_D.step()
        rec.append([loss_G.item(), sched_G.get_last_lr()])
        k += 1
    net_D.eval()
    with lib.no_grad():
        rec.append(net_D(data[:4]))
        rec.append(net_D.linear.weight)  # sigma-normalised
    return rec, net_D.state_dict(), net_G.state_dict()


@pytest.mark.parametrize("parametrized", [False, True], ids=["hook", "parametrization"])
def test_sngan_spectral_norm_hinge_loss(parametrized):
    both(sngan_program, parametrized)


# 14. StyleGAN2 pieces: equalised learning rate, modulated grouped convolution, noise, mbstd -----

def stylegan_program(lib):
    nn, F = lib.nn, lib.nn.functional

    class EqualLinear(nn.Module):
        def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1):
            super().__init__()
            self.weight = nn.Parameter(lib.randn(out_dim, in_dim).div_(lr_mul))
            self.bias = nn.Parameter(lib.zeros(out_dim).fill_(bias_init)) if bias else None
            self.scale = (1 / math.sqrt(in_dim)) * lr_mul
            self.lr_mul = lr_mul

        def forward(self, input):
            out = F.linear(input, self.weight * self.scale)
            return F.leaky_relu(out + self.bias * self.lr_mul, 0.2) * math.sqrt(2)

    class ModulatedConv2d(nn.Module):
        def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True):
            super().__init__()
            self.eps = 1e-8
            self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_channel, \
                out_channel
            fan_in = in_channel * kernel_size ** 2
            self.scale = 1 / math.sqrt(fan_in)
            self.padding = kernel_size // 2
            self.weight = nn.Parameter(lib.randn(1, out_channel, in_channel, kernel_size,
                                                 kernel_size))
            self.modulation = nn.Linear(style_dim, in_channel)
            self.demodulate = demodulate

        def forward(self, input, style):
            batch, in_channel, height, width = input.shape
            style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
            weight = self.scale * self.weight * style
            if self.demodulate:
                demod = lib.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
                weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
            weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size,
                                 self.kernel_size)
            input = input.view(1, batch * in_channel, height, width)
            out = F.conv2d(input, weight, padding=self.padding, groups=batch)
            _, _, height, width = out.shape
            return out.view(batch, self.out_channel, height, width)

    class NoiseInjection(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(lib.zeros(1))

        def forward(self, image, noise):
            return image + self.weight * noise

    class Generator(nn.Module):
        def __init__(self, style_dim=4, ch=4):
            super().__init__()
            self.style = nn.Sequential(EqualLinear(style_dim, style_dim, lr_mul=0.01),
                                       EqualLinear(style_dim, style_dim, lr_mul=0.01))
            self.input = nn.Parameter(lib.randn(1, ch, 4, 4))
            self.conv1 = ModulatedConv2d(ch, ch, 3, style_dim)
            self.noise1 = NoiseInjection()
            self.to_rgb = ModulatedConv2d(ch, 1, 1, style_dim, demodulate=False)

        def forward(self, z, noise, truncation=1, truncation_latent=None):
            w = self.style(z)
            if truncation < 1:
                w = truncation_latent + truncation * (w - truncation_latent)
            out = self.input.repeat(z.shape[0], 1, 1, 1)
            out = self.noise1(self.conv1(out, w), noise)
            out = F.leaky_relu(out, 0.2) * math.sqrt(2)
            out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=False)
            return self.to_rgb(out, w), w

    class Discriminator(nn.Module):
        def __init__(self, ch=4):
            super().__init__()
            self.conv = nn.Conv2d(1, ch, 3, 2, 1)
            self.stddev_group, self.stddev_feat = 2, 1
            self.final = nn.Linear((ch + 1) * 4 * 4, 1)

        def forward(self, input):
            out = F.leaky_relu(self.conv(input), 0.2)
            batch, channel, height, width = out.shape
            group = min(batch, self.stddev_group)
            stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat,
                              height, width)
            stddev = lib.sqrt(stddev.var(0, unbiased=False) + 1e-8)
            stddev = stddev.mean([2, 3, 4], keepdims=True).squeeze(2)
            stddev = stddev.repeat(group, 1, height, width)
            out = lib.cat([out, stddev], 1)
            return self.final(out.view(batch, -1))

    generator, discriminator = Generator(), Discriminator()
    seeded(lib, generator, seed=26)
    seeded(lib, discriminator, seed=27)
    g_optim = lib.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.0, 0.99))
    d_optim = lib.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.0, 0.99))
    zs, noises = lib.tensor(draw(93, 6, 4, 4)), lib.tensor(draw(94, 6, 4, 1, 4, 4))
    real = lib.tensor(IMAGES * 2 - 1)
    rec = []

    def requires_grad(model, flag=True):
        for p in model.parameters():
            p.requires_grad = flag

    for i in range(3):
        real_img = real[4 * i:4 * i + 4]
        requires_grad(generator, False)
        requires_grad(discriminator, True)
        fake_img, _ = generator(zs[2 * i], noises[2 * i])
        d_loss = F.softplus(discriminator(fake_img)).mean() + \
            F.softplus(-discriminator(real_img)).mean()
        discriminator.zero_grad()
        d_loss.backward()
        d_optim.step()
        # R1 on the real images, the lazy regulariser's form
        real_img.requires_grad = True
        real_pred = discriminator(real_img)
        grad_real, = lib.autograd.grad(outputs=real_pred.sum(), inputs=real_img,
                                       create_graph=True)
        r1_loss = grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()
        discriminator.zero_grad()
        (10 / 2 * r1_loss * 16 + 0 * real_pred[0]).backward()
        d_optim.step()
        requires_grad(generator, True)
        requires_grad(discriminator, False)
        fake_img, latents = generator(zs[2 * i + 1], noises[2 * i + 1])
        g_loss = F.softplus(-discriminator(fake_img)).mean()
        generator.zero_grad()
        g_loss.backward()
        g_optim.step()
        rec.append([d_loss.item(), r1_loss.item(), g_loss.item()])
    with lib.no_grad():
        mean_latent = generator.style(lib.tensor(draw(95, 16, 4))).mean(0, keepdim=True)
        rec.append(generator(zs[0], noises[0], truncation=0.7,
                             truncation_latent=mean_latent)[0])
    return rec, generator.state_dict(), discriminator.state_dict()


def test_stylegan2_modulated_conv_mbstd_r1():
    both(stylegan_program)


def test_repeat_and_flip_of_a_parameter_are_new_memory():
    """StyleGAN's constant input, ``self.input.repeat(batch, 1, 1, 1)``, then ``view``: the ops
    PyTorch documents as copying (repeat, tile, flip, roll) copied a plain tensor but gave a
    Parameter a view of its array (stride 0 after repeat, so ``view`` refused, and an update
    of the parameter showed through)."""
    p = ng.nn.Parameter(ng.tensor(draw(96, 1, 2, 3, 3)))
    out = p.repeat(4, 1, 1, 1)
    assert out.is_contiguous() and tuple(out.view(1, 8, 3, 3).shape) == (1, 8, 3, 3)
    made = [out, p.tile((2, 1, 1, 1)), p.flip(-1), p.roll(1, -1), ng.flip(p, [2])]
    before = [m.detach().numpy().copy() for m in made]
    with ng.no_grad():
        p.add_(1.0)
    for m, b in zip(made, before):
        np.testing.assert_array_equal(m.detach().numpy(), b)
    b = ng.nn.Buffer(ng.zeros(2, 3)) if hasattr(ng.nn, "Buffer") else None
    if b is not None:
        r = b.repeat(2, 1)
        b.fill_(1.0)
        assert not r.detach().numpy().any()


# 15. A discrete VAE (DALL-E style): straight-through Gumbel-softmax with fed Gumbel noise -----

def gumbel_softmax(lib, logits, gumbels, tau: float = 1.0, hard: bool = False, dim: int = -1):
    """PyTorch's ``F.gumbel_softmax`` body, with the Gumbel draws given."""
    gumbels = (logits + gumbels) / tau
    y_soft = gumbels.softmax(dim)
    if hard:
        index = y_soft.max(dim, keepdim=True)[1]
        y_hard = lib.zeros_like(logits, memory_format=lib.preserve_format).scatter_(
            dim, index, 1.0)
        return y_hard - y_soft.detach() + y_soft
    return y_soft


def dvae_program(lib, hard: bool):
    nn, F, D = lib.nn, lib.nn.functional, lib.distributions
    num_tokens, codebook_dim = 5, 3
    encoder = seeded(lib, nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.ReLU(),
                                        nn.Conv2d(8, num_tokens, 1)), seed=28)
    codebook = seeded(lib, nn.Embedding(num_tokens, codebook_dim), seed=29)
    decoder = seeded(lib, nn.Sequential(nn.ConvTranspose2d(codebook_dim, 8, 4, 2, 1), nn.ReLU(),
                                        nn.Conv2d(8, 1, 1)), seed=30)
    params = [*encoder.parameters(), *codebook.parameters(), *decoder.parameters()]
    opt = lib.optim.AdamW(params, lr=3e-3)
    u = draw(97, 3, 8, num_tokens, 4, 4, kind="rand")
    # ``-torch.empty_like(logits).exponential_().log()``, drawn by PyTorch
    gumbels_all = lib.tensor(-np.log(-np.log(u)))
    temps = [1.0 * math.exp(-0.5 * i) for i in range(3)]
    rec = []
    for i in range(3):
        img = lib.tensor(IMAGES[8 * i:8 * i + 8])
        logits = encoder(img)
        soft_one_hot = gumbel_softmax(lib, logits, gumbels_all[i], tau=temps[i], hard=hard,
                                      dim=1)
        sampled = lib.einsum("b n h w, n d -> b d h w", soft_one_hot, codebook.weight)
        out = decoder(sampled)
        recon_loss = F.smooth_l1_loss(img, lib.sigmoid(out))
        # KL to the uniform prior over tokens
        logits_ = logits.permute(0, 2, 3, 1).reshape(-1, num_tokens)
        log_qy = F.log_softmax(logits_, dim=-1)
        log_uniform = lib.log(lib.tensor([1.0 / num_tokens]))
        kl_div = F.kl_div(log_uniform, log_qy, None, None, "batchmean", log_target=True)
        qy = D.Categorical(logits=logits_)
        loss = recon_loss + 1e-2 * kl_div
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append([recon_loss.item(), kl_div.item(), qy.entropy().mean().item(),
                    logits.argmax(dim=1)])
    return rec, encoder.state_dict(), codebook.state_dict(), decoder.state_dict()


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_dvae_gumbel_softmax_straight_through(hard):
    both(dvae_program, hard)


# 16. Improved-DDPM's variational bound terms and a DiT block (adaLN modulation, unpatchify) ---

def vlb_dit_program(lib):
    th, nn = lib, lib.nn

    def approx_standard_normal_cdf(x):
        return 0.5 * (1.0 + th.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * th.pow(x, 3))))

    def discretized_gaussian_log_likelihood(x, *, means, log_scales):
        assert x.shape == means.shape == log_scales.shape
        centered_x = x - means
        inv_stdv = th.exp(-log_scales)
        plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
        cdf_plus = approx_standard_normal_cdf(plus_in)
        min_in = inv_stdv * (centered_x - 1.0 / 255.0)
        cdf_min = approx_standard_normal_cdf(min_in)
        log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
        cdf_delta = cdf_plus - cdf_min
        return th.where(x < -0.999, log_cdf_plus,
                        th.where(x > 0.999, log_one_minus_cdf_min,
                                 th.log(cdf_delta.clamp(min=1e-12))))

    def normal_kl(mean1, logvar1, mean2, logvar2):
        tensor = None
        for obj in (mean1, logvar1, mean2, logvar2):
            if isinstance(obj, th.Tensor):
                tensor = obj
                break
        logvar1, logvar2 = [x if isinstance(x, th.Tensor) else th.tensor(x).to(tensor)
                            for x in (logvar1, logvar2)]
        return 0.5 * (-1.0 + logvar2 - logvar1 + th.exp(logvar1 - logvar2)
                      + ((mean1 - mean2) ** 2) * th.exp(-logvar2))

    def mean_flat(tensor):
        return tensor.mean(dim=list(range(1, len(tensor.shape))))

    def _extract_into_tensor(arr, timesteps, broadcast_shape):
        # ``...[timesteps].float()`` in the original, where everything is float32
        res = th.from_numpy(arr).to(device=timesteps.device)[timesteps]
        while len(res.shape) < len(broadcast_shape):
            res = res[..., None]
        return res.expand(broadcast_shape)

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    class DiTBlock(nn.Module):
        def __init__(self, hidden_size=8, num_heads=2, mlp_ratio=2.0):
            super().__init__()
            self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            mlp_hidden_dim = int(hidden_size * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(hidden_size, mlp_hidden_dim),
                                     nn.GELU(approximate="tanh"),
                                     nn.Linear(mlp_hidden_dim, hidden_size))
            self.adaLN_modulation = nn.Sequential(nn.SiLU(),
                                                  nn.Linear(hidden_size, 6 * hidden_size))

        def forward(self, x, c):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
                self.adaLN_modulation(c).chunk(6, dim=1)
            h = modulate(self.norm1(x), shift_msa, scale_msa)
            x = x + gate_msa.unsqueeze(1) * self.attn(h, h, h, need_weights=False)[0]
            return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp,
                                                                 scale_mlp))

    class TinyDiT(nn.Module):
        def __init__(self, p=2, hidden=8):
            super().__init__()
            self.p = p
            self.x_embedder = nn.Conv2d(1, hidden, p, p)
            self.t_embedder = nn.Embedding(10, hidden)
            self.block = DiTBlock(hidden)
            self.final = nn.Linear(hidden, p * p * 2)  # mean and variance interpolation

        def unpatchify(self, x, c=2):
            p = self.p
            h = w = int(x.shape[1] ** 0.5)
            assert h * w == x.shape[1]
            x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
            x = th.einsum("nhwpqc->nchpwq", x)
            return x.reshape(shape=(x.shape[0], c, h * p, h * p))

        def forward(self, x, t):
            x = self.x_embedder(x).flatten(2).transpose(1, 2)  # (N, T, D)
            x = self.block(x, self.t_embedder(t))
            return self.unpatchify(self.final(x))

    model = seeded(lib, TinyDiT(), seed=31)
    opt = th.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    betas = np.linspace(1e-4, 0.2, 10)
    alphas_cumprod = np.cumprod(1.0 - betas)
    log_betas = np.log(betas)
    rec = []
    for i in range(2):
        x_start = th.tensor(np.round((IMAGES[4 * i:4 * i + 4] * 2 - 1) * 127.5) / 127.5)
        t = th.tensor(draw_int(98 + i, 10, 4))
        noise = th.tensor(draw(100 + i, 4, 1, 8, 8))
        x_t = (_extract_into_tensor(np.sqrt(alphas_cumprod), t, x_start.shape) * x_start
               + _extract_into_tensor(np.sqrt(1.0 - alphas_cumprod), t, x_start.shape) * noise)
        out = model(x_t, t)
        eps, frac = th.split(out, 1, dim=1)
        frac = (frac.tanh() + 1) / 2  # learned range between beta and the posterior variance
        min_log = _extract_into_tensor(log_betas - 1.0, t, x_t.shape)
        max_log = _extract_into_tensor(log_betas, t, x_t.shape)
        model_log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (x_t - _extract_into_tensor(np.sqrt(1.0 - alphas_cumprod), t, x_t.shape)
                       * eps) / _extract_into_tensor(np.sqrt(alphas_cumprod), t, x_t.shape)
        model_mean = pred_xstart.clamp(-1, 1)
        kl = normal_kl(x_start, th.zeros_like(x_start), model_mean.detach(), model_log_variance)
        kl = mean_flat(kl) / np.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=model_mean.detach(), log_scales=0.5 * model_log_variance)
        nll = mean_flat(nll) / np.log(2.0)
        vb = th.where((t == 0), nll, kl)
        mse = mean_flat((noise - eps) ** 2)
        loss = (mse + vb).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.append([loss.item(), vb, mse])
    return rec, model.state_dict()


def test_improved_ddpm_vlb_terms_with_a_dit_block():
    both(vlb_dit_program)


# 17. PixelCNN++'s discretised mixture-of-logistics likelihood ---------------------------------

def mix_logistic_program(lib):
    torch_, F = lib, lib.nn.functional

    def log_sum_exp(x):
        """numerically stable log_sum_exp implementation that prevents overflow"""
        axis = len(x.size()) - 1
        m, _ = torch_.max(x, dim=axis)
        m2, _ = torch_.max(x, dim=axis, keepdim=True)
        return m + torch_.log(torch_.sum(torch_.exp(x - m2), dim=axis))

    def log_prob_from_logits(x):
        axis = len(x.size()) - 1
        m, _ = torch_.max(x, dim=axis, keepdim=True)
        return x - m - torch_.log(torch_.sum(torch_.exp(x - m), dim=axis, keepdim=True))

    def discretized_mix_logistic_loss_1d(x, l):
        x = x.permute(0, 2, 3, 1)
        l = l.permute(0, 2, 3, 1)  # noqa: E741
        xs = [int(y) for y in x.size()]
        ls = [int(y) for y in l.size()]
        nr_mix = int(ls[-1] / 3)
        logit_probs = l[:, :, :, :nr_mix]
        l = l[:, :, :, nr_mix:].contiguous().view(xs + [nr_mix * 2])  # noqa: E741
        means = l[:, :, :, :, :nr_mix]
        log_scales = torch_.clamp(l[:, :, :, :, nr_mix:2 * nr_mix], min=-7.0)
        x = x.contiguous()
        x = x.unsqueeze(-1) + torch_.zeros(xs + [nr_mix], dtype=x.dtype, requires_grad=False)
        centered_x = x - means
        inv_stdv = torch_.exp(-log_scales)
        plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
        cdf_plus = F.sigmoid(plus_in)
        min_in = inv_stdv * (centered_x - 1.0 / 255.0)
        cdf_min = F.sigmoid(min_in)
        log_cdf_plus = plus_in - F.softplus(plus_in)
        log_one_minus_cdf_min = -F.softplus(min_in)
        cdf_delta = cdf_plus - cdf_min
        mid_in = inv_stdv * centered_x
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
        # ``.float()`` in the original (float32 throughout); nodegrad does not mix float dtypes
        inner_inner_cond = (cdf_delta > 1e-5).to(x.dtype)
        inner_inner_out = (inner_inner_cond * torch_.log(torch_.clamp(cdf_delta, min=1e-12))
                           + (1.0 - inner_inner_cond) * (log_pdf_mid - np.log(127.5)))
        inner_cond = (x > 0.999).to(x.dtype)
        inner_out = inner_cond * log_one_minus_cdf_min + (1.0 - inner_cond) * inner_inner_out
        cond = (x < -0.999).to(x.dtype)
        log_probs = cond * log_cdf_plus + (1.0 - cond) * inner_out
        log_probs = torch_.sum(log_probs, dim=3) + log_prob_from_logits(logit_probs)
        return -torch_.sum(log_sum_exp(log_probs))

    net = seeded(lib, pixelcnn(lib, levels=9), seed=32)  # 3 mixtures: logits, means, scales
    opt = lib.optim.Adam(net.parameters(), lr=2e-3)
    rec = []
    for i in range(3):
        x = lib.tensor(np.round((IMAGES[8 * i:8 * i + 8] * 2 - 1) * 127.5) / 127.5)
        loss = discretized_mix_logistic_loss_1d(x, net(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        deno = 8 * 8 * 8 * np.log(2.0)
        rec.append(loss.item() / deno)  # bits per dim
    return rec, net.state_dict()


def test_pixelcnnpp_discretized_mix_logistic_loss():
    both(mix_logistic_program)
