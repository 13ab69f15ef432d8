"""PyTorch vision and generative training scripts, ported by changing only the imports.

Each script is written once, against the names ``torch``, ``nn``, ``F`` and ``optim``, and run
with those bound to PyTorch and to nodegrad (``import nodegrad as torch``). Both runs start from
the same weights (PyTorch's initial state dict, through NumPy) and see the same data (scikit-learn's
8x8 digits, MNIST-1D, or generated), so their losses and final weights must agree: to ~1e-8 in
float64, where the arithmetic is the same up to rounding, and to ~1e-4 in float32.
"""

from __future__ import annotations

import copy
import functools
import re

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")
sk_datasets = pytest.importorskip("sklearn.datasets")

TOL = {"float64": 1e-8, "float32": 1e-4}
DTYPES = pytest.mark.parametrize("dtype", ["float64", "float32"])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """PyTorch on one thread: these small models run 10-50x slower on a busy machine with its
    default thread pool (nodegrad's NumPy is untouched)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) floats in [0, 1] and int64 labels."""
    d = sk_datasets.load_digits()
    return (d.data / 16.0).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def initial_state(build) -> dict[str, np.ndarray]:
    """PyTorch's seeded initial weights of ``build(torch)`` as float64 NumPy arrays."""
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in build(torch).double().state_dict().items()}


def start(lib, build, init, dtype: str):
    """``build(lib)`` in ``dtype`` holding the weights ``init``, loaded as a user would."""
    model = build(lib).to(getattr(lib, dtype))
    model.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
    return model


def weights(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.detach().numpy(), np.float64) for k, v in model.state_dict().items()}


def assert_same_run(ours: dict, theirs: dict, dtype: str) -> None:
    """Every recorded series and every final weight of the nodegrad run matches PyTorch's."""
    tol = TOL[dtype]
    assert ours.keys() == theirs.keys()
    for key in theirs:
        if key == "weights":
            assert ours[key].keys() == theirs[key].keys()
            for name, w in theirs[key].items():
                np.testing.assert_allclose(ours[key][name], w, rtol=tol, atol=tol,
                                           err_msg=f"final weight {name}")
        else:
            np.testing.assert_allclose(np.asarray(ours[key], np.float64),
                                       np.asarray(theirs[key], np.float64),
                                       rtol=tol, atol=tol, err_msg=key)


def both(script, *args, **kw) -> tuple[dict, dict]:
    """``script`` run with nodegrad, then with PyTorch."""
    return script(ng, *args, **kw), script(torch, *args, **kw)


def plain_repr(model) -> str:
    """A module's repr without nodegrad's trailing parameter counts (PyTorch prints none)."""
    return re.sub(r"  # [\d,]+ parameters( in all)?$", "", repr(model), flags=re.M)


# --- 1. a CNN on the digits: BatchNorm, pooling, Nesterov SGD, OneCycleLR, a resumed run --------
def cnn(lib, p: float = 0.0):
    nn = lib.nn
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(p), nn.Linear(64, 10))


def cnn_script(torch, init, dtype, folder, steps=24):
    nn, optim = torch.nn, torch.optim
    X, y = digits()
    X, y = torch.tensor(X.astype(dtype)), torch.tensor(y)

    def make(model):
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
        return opt, optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)

    model = start(torch, cnn, init, dtype)
    opt, sched = make(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    out = {"loss": [], "norm": [], "lr": [], "momentum": []}
    for step in range(steps):
        model.train()
        i = slice(step * 64 % 1024, step * 64 % 1024 + 64)
        opt.zero_grad()
        loss = criterion(model(X[i]), y[i])
        loss.backward()
        out["norm"].append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)))
        opt.step()
        sched.step()
        out["loss"].append(loss.item())
        out["lr"].append(sched.get_last_lr()[0])
        out["momentum"].append(opt.param_groups[0]["momentum"])
        if step == steps // 2:  # resume from a checkpoint into fresh objects
            path = f"{folder}/{torch.__name__}-checkpoint.pt"  # safetensors from nodegrad
            torch.save(model.state_dict(), path)
            states = copy.deepcopy((opt.state_dict(), sched.state_dict()))
            model = start(torch, cnn, init, dtype)
            model.load_state_dict(torch.load(path))
            opt, sched = make(model)
            opt.load_state_dict(states[0])
            sched.load_state_dict(states[1])
    model.eval()
    correct, logits = 0, []
    with torch.no_grad():
        for j in range(1024, len(y), 256):
            o = model(X[j:j + 256])
            logits.append(o.numpy())
            correct += (o.argmax(dim=1) == y[j:j + 256]).sum().item()
    out["correct"] = [correct]
    out["eval_logits"] = np.concatenate(logits)
    out["weights"] = weights(model)
    return out


@DTYPES
def test_cnn_with_batchnorm_onecycle_and_a_resumed_run_matches_pytorch(dtype, tmp_path):
    init = initial_state(cnn)
    ours, theirs = both(cnn_script, init, dtype, str(tmp_path))
    assert_same_run(ours, theirs, dtype)
    assert theirs["correct"][0] > 500  # of 773: it learned


def test_cnn_repr_names_and_parameter_counts_match_pytorch():
    t, n = cnn(torch, 0.25), cnn(ng, 0.25)
    assert plain_repr(n) == repr(t)
    assert [k for k, _ in n.named_modules()] == [k for k, _ in t.named_modules()]
    assert [type(m).__name__ for _, m in n.named_modules()] == \
        [type(m).__name__ for _, m in t.named_modules()]
    assert sum(p.numel() for p in n.parameters()) == sum(p.numel() for p in t.parameters())
    assert sum(p.numel() for p in n.parameters() if p.requires_grad) == 1946


def test_dropout_masks_while_training_and_not_in_eval():
    ng.manual_seed(0)
    model = cnn(ng, p=0.5)
    X, y = digits()
    x, t = ng.tensor(X[:128].astype(np.float32)), ng.tensor(y[:128])
    drop = model[9]
    seen = []
    h = drop.register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))
    model.train()
    model(x)
    (a, b), = seen
    kept = b.numpy() != 0
    assert 0.4 < 1 - kept.mean() < 0.6  # about p of the units dropped
    np.testing.assert_allclose(b.numpy()[kept], 2 * a.numpy()[kept], rtol=1e-6)  # 1 / (1 - p)
    h.remove()
    assert not np.array_equal(model(x).detach().numpy(), model(x).detach().numpy())
    model.eval()
    assert not any(m.training for m in model.modules())
    with ng.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    model.train()
    opt = ng.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ng.nn.functional.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


# --- 2. a residual network: a Module subclass, GroupNorm, AdamW, cosine annealing, a hook -------
def resnet(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.gn1 = nn.GroupNorm(4, c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.gn2 = nn.GroupNorm(4, c)

        def forward(self, x):
            out = F.relu(self.gn1(self.conv1(x)))
            return F.relu(self.gn2(self.conv2(out)) + x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(4, 8),
                                      nn.ReLU())
            self.block = Block(8)
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = self.block(self.stem(x))
            return self.fc(torch.flatten(self.pool(x), 1))

    return Net()


def resnet_script(torch, init, dtype, steps=20):
    F, optim, data = torch.nn.functional, torch.optim, torch.utils.data
    X, y = digits()
    X, y = torch.tensor(X.astype(dtype)), torch.tensor(y)
    loader = data.DataLoader(data.TensorDataset(X[:32 * steps], y[:32 * steps]), batch_size=32)
    model = start(torch, resnet, init, dtype)
    features = []
    handle = model.block.register_forward_hook(
        lambda module, inputs, output: features.append(output.detach().mean(dim=(0, 2, 3))))
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    out = {"loss": [], "lr": []}
    for xb, yb in loader:  # in order: the same batches in both
        assert xb.dtype == getattr(torch, dtype)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        sched.step()
        out["loss"].append(loss.item())
        out["lr"].append(sched.get_last_lr()[0])
    handle.remove()
    model(X[:4])
    assert len(features) == steps  # nothing captured after remove()
    out["features"] = np.stack([f.numpy() for f in features])
    out["weights"] = weights(model)
    return out


@DTYPES
def test_resnet_block_with_groupnorm_adamw_cosine_and_a_hook_matches_pytorch(dtype):
    assert_same_run(*both(resnet_script, initial_state(resnet), dtype), dtype)


def test_resnet_repr_matches_pytorch():
    assert plain_repr(resnet(ng)) == repr(resnet(torch))


# --- 3. a variational autoencoder: reparameterisation, summed BCE plus KL, Adam ----------------
def vae(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class VAE(nn.Module):
        def __init__(self, d=64, h=32, z=4):
            super().__init__()
            self.enc = nn.Linear(d, h)
            self.mu = nn.Linear(h, z)
            self.logvar = nn.Linear(h, z)
            self.dec = nn.Sequential(nn.Linear(z, h), nn.Tanh(), nn.Linear(h, d))

        def encode(self, x):
            h = F.relu(self.enc(x))
            return self.mu(h), self.logvar(h)

        def reparameterize(self, mu, logvar, eps=None):
            std = torch.exp(0.5 * logvar)
            if eps is None:
                eps = torch.randn_like(std)
            return mu + eps * std

        def forward(self, x, eps=None):
            mu, logvar = self.encode(x.view(-1, 64))
            return torch.sigmoid(self.dec(self.reparameterize(mu, logvar, eps))), mu, logvar

    return VAE()


def vae_script(torch, init, dtype, steps=25):
    F, optim = torch.nn.functional, torch.optim

    def loss_function(recon_x, x, mu, logvar):
        bce = F.binary_cross_entropy(recon_x, x.view(-1, 64), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    X, _ = digits()
    eps = np.random.default_rng(0).standard_normal((len(X), 4))
    X, E = torch.tensor(X.astype(dtype)), torch.tensor(eps.astype(dtype))
    model = start(torch, vae, init, dtype)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    out = {"loss": []}
    model.train()
    for s in range(steps):
        i = slice(s * 32, s * 32 + 32)
        opt.zero_grad()
        recon, mu, logvar = model(X[i], E[i])
        loss = loss_function(recon, X[i], mu, logvar)
        loss.backward()
        opt.step()
        out["loss"].append(loss.item() / 32)
    model.eval()
    with torch.no_grad():
        out["samples"] = torch.sigmoid(model.dec(E[:8])).numpy()
        drawn, _, _ = model(X[:8])  # eps from randn_like
    assert tuple(drawn.shape) == (8, 64) and drawn.dtype == getattr(torch, dtype)
    out["weights"] = weights(model)
    return out


@DTYPES
def test_vae_with_bce_sum_and_kl_matches_pytorch(dtype):
    ours, theirs = both(vae_script, initial_state(vae), dtype)
    assert_same_run(ours, theirs, dtype)
    assert theirs["loss"][-1] < theirs["loss"][0]


# --- 4. a GAN: two optimisers, detach, BCEWithLogitsLoss, set_to_none, frozen discriminator ------
def gan(lib):
    nn = lib.nn
    return nn.ModuleDict({
        "G": nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 2)),
        "D": nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))})


def gan_script(torch, init, dtype, steps=30):
    nn, optim = torch.nn, torch.optim
    rng = np.random.default_rng(0)
    real = rng.standard_normal((32 * steps, 2)) * 0.5 + np.array([2.0, -1.0])
    noise = rng.standard_normal((32 * steps, 2))
    models = start(torch, gan, init, dtype)
    G, D = models["G"], models["D"]
    opt_g = optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    R, Z = torch.tensor(real.astype(dtype)), torch.tensor(noise.astype(dtype))
    ones = torch.ones(32, 1, dtype=getattr(torch, dtype))
    zeros = torch.zeros(32, 1, dtype=getattr(torch, dtype))
    out = {"loss_d": [], "loss_g": []}
    for s in range(steps):
        i = slice(s * 32, s * 32 + 32)
        fake = G(Z[i])
        grads_g = [None if p.grad is None else p.grad.numpy().copy() for p in G.parameters()]
        opt_d.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in D.parameters())
        loss_d = criterion(D(R[i]), ones) + criterion(D(fake.detach()), zeros)
        loss_d.backward()
        assert all(g is None if p.grad is None else np.array_equal(g, p.grad.numpy())
                   for g, p in zip(grads_g, G.parameters()))  # detached: G untouched
        opt_d.step()
        D.requires_grad_(False)
        grads_d = [p.grad.numpy().copy() for p in D.parameters()]
        opt_g.zero_grad(set_to_none=True)
        loss_g = criterion(D(fake), ones)
        loss_g.backward()
        assert all(np.array_equal(g, p.grad.numpy()) for g, p in zip(grads_d, D.parameters()))
        assert all(p.grad is not None for p in G.parameters())
        opt_g.step()
        D.requires_grad_(True)
        out["loss_d"].append(loss_d.item())
        out["loss_g"].append(loss_g.item())
    out["weights"] = weights(models)
    return out


@DTYPES
def test_gan_with_two_optimisers_and_a_frozen_discriminator_matches_pytorch(dtype):
    assert_same_run(*both(gan_script, initial_state(gan), dtype), dtype)


def dcgan(lib):
    nn = lib.nn

    def weights_init(m):  # the DCGAN tutorial's, through ``.data``
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    net = nn.ModuleDict({
        "G": nn.Sequential(nn.ConvTranspose2d(4, 16, 4, 1, 0, bias=False), nn.BatchNorm2d(16),
                           nn.ReLU(True), nn.ConvTranspose2d(16, 1, 4, 2, 1, bias=False),
                           nn.Tanh()),
        "D": nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                           nn.Conv2d(16, 1, 4, 1, 0, bias=False), nn.Sigmoid())})
    return net.apply(weights_init)


def dcgan_script(torch, init, dtype, steps=12):
    nn, optim = torch.nn, torch.optim
    X, _ = digits()
    real_images = torch.tensor((X[:16 * steps] * 2 - 1).astype(dtype))
    noise = torch.tensor(np.random.default_rng(1).standard_normal((16 * steps, 4, 1, 1))
                         .astype(dtype))
    net = start(torch, dcgan, init, dtype)
    netG, netD = net["G"], net["D"]
    criterion = nn.BCELoss()
    optimizerD = optim.Adam(netD.parameters(), lr=2e-3, betas=(0.5, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=2e-3, betas=(0.5, 0.999))
    real_label, fake_label = 1.0, 0.0
    out = {"errD": [], "errG": [], "D_x": [], "D_G_z": []}
    for i in range(steps):
        real = real_images[16 * i:16 * i + 16]
        netD.zero_grad()
        label = torch.full((16,), real_label, dtype=getattr(torch, dtype))
        output = netD(real).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        fake = netG(noise[16 * i:16 * i + 16])
        label.fill_(fake_label)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        optimizerD.step()
        netG.zero_grad()
        label.fill_(real_label)
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        optimizerG.step()
        out["errD"].append((errD_real + errD_fake).item())
        out["errG"].append(errG.item())
        out["D_x"].append(D_x)
        out["D_G_z"].append(output.mean().item())
    out["weights"] = weights(net)
    return out


@DTYPES
def test_dcgan_tutorial_loop_matches_pytorch(dtype):
    assert_same_run(*both(dcgan_script, initial_state(dcgan), dtype), dtype)


def test_dcgan_weights_init_through_data_fills_the_parameters():
    ng.manual_seed(0)
    net = dcgan(ng)
    w = net["G"][0].weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bn = net["G"][1]
    assert abs(bn.weight.mean().item() - 1) < 0.02 and not bn.bias.detach().numpy().any()
    a = bn.bias.data
    assert ng.nn.init.constant_(a, 0.5) is a and (bn.bias.numpy() == 0.5).all()


# --- 5. a 1-D U-Net on MNIST-1D: transposed convolutions, skips, RMSprop, ReduceLROnPlateau ------
def unet(lib):
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class UNet1d(nn.Module):
        def __init__(self, ch=(1, 8, 16)):
            super().__init__()
            self.down = nn.ModuleList([nn.Conv1d(ch[i], ch[i + 1], 3, padding=1)
                                       for i in range(len(ch) - 1)])
            self.up = nn.ModuleList([nn.ConvTranspose1d(ch[i + 1], ch[i + 1], 2, stride=2)
                                     for i in reversed(range(1, len(ch) - 1))])
            self.merge = nn.ModuleList([nn.Conv1d(ch[i + 1] + ch[i], ch[i], 3, padding=1)
                                        for i in reversed(range(1, len(ch) - 1))])
            self.heads = nn.ModuleDict({"cls": nn.Linear(ch[1] * 40, 10),
                                        "rec": nn.Conv1d(ch[1], 1, 1)})
            self.alpha = nn.Parameter(torch.tensor(0.5))
            self.beta = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            skips = []
            for i, conv in enumerate(self.down):
                x = F.relu(conv(x))
                if i < len(self.down) - 1:
                    skips.append(x)
                    x = F.max_pool1d(x, 2)
            for up, merge in zip(self.up, self.merge):
                smooth = F.interpolate(x, scale_factor=2, mode="linear", align_corners=False)
                x = self.alpha * up(x) + (1 - self.alpha) * smooth
                x = F.relu(merge(torch.cat([x, skips.pop()], dim=1)))
            return self.heads["cls"](x.flatten(1)), self.heads["rec"](x) + self.beta

    return UNet1d()


@functools.cache
def mnist1d() -> tuple[np.ndarray, np.ndarray]:
    data = pytest.importorskip("mnist1d.data")
    args = data.get_dataset_args()
    args.num_samples = 400
    d = data.make_dataset(args)  # generated from templates, no download
    return d["x"], d["y"].astype(np.int64)


def unet_script(torch, init, dtype, steps=30):
    F, optim = torch.nn.functional, torch.optim
    X, y = mnist1d()
    X, y = torch.tensor(X.astype(dtype)).unsqueeze(1), torch.tensor(y)
    model = start(torch, unet, init, dtype)
    opt = optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, momentum=0.5, centered=True)
    sched = optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2)
    out = {"loss": [], "lr": []}
    for s in range(steps):
        i = slice(s % 10 * 32, s % 10 * 32 + 32)
        opt.zero_grad()
        logits, rec = model(X[i])
        loss = F.cross_entropy(logits, y[i]) + F.mse_loss(rec, X[i])
        loss.backward()
        opt.step()
        sched.step(loss.item() if s < 10 else 10.0)  # a plateau from step 10 on
        out["loss"].append(loss.item())
        out["lr"].append(opt.param_groups[0]["lr"])
    out["weights"] = weights(model)
    return out


@DTYPES
def test_unet1d_with_transposed_convs_rmsprop_and_plateau_matches_pytorch(dtype):
    mnist1d()
    ours, theirs = both(unet_script, initial_state(unet), dtype)
    assert_same_run(ours, theirs, dtype)
    assert theirs["lr"][-1] < 1e-4  # the plateau halved it


def test_unet1d_repr_matches_pytorch():
    assert plain_repr(unet(ng)) == repr(unet(torch))


# --- the pieces around the scripts -------------------------------------------------------------
@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_data_pipeline_random_split_and_seeded_shuffling(lib):
    data = lib.utils.data
    X, y = digits()
    ds = data.TensorDataset(lib.tensor(X[:100].astype(np.float32)), lib.tensor(y[:100]))
    train, val = data.random_split(ds, [0.8, 0.2], generator=lib.Generator().manual_seed(0))
    assert (len(train), len(val)) == (80, 20)
    assert isinstance(train.indices, list)  # lists of ints, as PyTorch's random_split gives
    assert sorted(train.indices + val.indices) == list(range(100))

    def epoch(seed):
        loader = data.DataLoader(train, batch_size=32, shuffle=True,
                                 generator=lib.Generator().manual_seed(seed))
        batches = list(loader)
        assert [tuple(b[0].shape) for b in batches] == [(32, 1, 8, 8), (32, 1, 8, 8),
                                                       (16, 1, 8, 8)]
        assert batches[0][0].dtype == lib.float32 and batches[0][1].dtype == lib.int64
        return [int(v) for _, b in batches for v in b]

    first = epoch(0)
    assert sorted(first) == sorted(int(y[i]) for i in train.indices)
    assert epoch(0) == first and epoch(1) != first


@pytest.mark.parametrize("lib", [torch, ng], ids=["torch", "nodegrad"])
def test_apply_kaiming_init_and_to_device(lib):
    nn = lib.nn
    lib.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 36, 10))

    def init_fn(m):
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    assert model.apply(init_fn) is model
    assert model[0].weight.std().item() == pytest.approx(np.sqrt(2 / (64 * 9)), rel=0.1)
    assert model[3].bias.abs().sum().item() == 0
    dev = lib.device("cpu")
    assert model.to(dev) is model and str(next(model.parameters()).device) == "cpu"
    x = lib.randn(2, 1, 8, 8).to(dev)
    assert tuple(model(x).shape) == (2, 10)
    lib.manual_seed(1)
    a = lib.randn(3)
    lib.manual_seed(1)
    assert bool((a == lib.randn(3)).all())  # ng.equal is NumPy's elementwise one


# --- regressions found by the ports ---------------------------------------------------------
def test_float32_mean_over_outer_axes_of_a_channels_last_array_is_as_exact_as_pytorchs():
    # BatchNorm's batch mean over (N, H, W) of a convolution's output, which lies channels-last
    # in memory: NumPy's own mean drifted by ~25 ulps there, and a float32 CNN parted from
    # PyTorch's trajectory by 1e-3 within 20 steps
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((256, 8, 8, 8)) * 0.1 + 1.0).astype(np.float32)
    x = x.transpose(0, 3, 1, 2)
    exact = x.astype(np.float64).mean(axis=(0, 2, 3))
    got = ng.tensor(x).mean(dim=(0, 2, 3))
    assert got.dtype == ng.float32
    assert np.abs(got.numpy() - exact).max() < 4 * np.finfo(np.float32).eps
    y = ng.nn.functional.batch_norm(ng.tensor(x), None, None, training=True)
    want = torch.nn.functional.batch_norm(torch.from_numpy(x.astype(np.float64)), None, None,
                                          training=True)
    np.testing.assert_allclose(y.numpy(), want.numpy(), atol=2e-6)


@pytest.mark.parametrize("name, args, kw", [
    ("MaxPool1d", (2,), {}), ("MaxPool2d", (3, 1, 1), {"return_indices": True}),
    ("MaxPool3d", (2,), {"ceil_mode": True, "dilation": 2}), ("AvgPool1d", (2,), {}),
    ("AvgPool2d", (3, 1, 1), {"ceil_mode": True}), ("AvgPool2d", (2,), {"divisor_override": 3}),
    ("AvgPool3d", (2,), {"count_include_pad": False}), ("Upsample", (), {"scale_factor": 2}),
    ("Upsample", (), {"scale_factor": (2, 3), "mode": "bilinear", "align_corners": True}),
    ("Upsample", (4,), {}), ("UpsamplingNearest2d", (None, 2), {})])
def test_pooling_and_upsampling_layers_print_as_pytorchs(name, args, kw):
    assert repr(getattr(ng.nn, name)(*args, **kw)) == repr(getattr(torch.nn, name)(*args, **kw))


def test_subset_keeps_its_indices_as_given_and_gathers_from_a_copy():
    ds = ng.utils.data.TensorDataset(ng.arange(10) * 10)
    sub = ng.utils.data.Subset(ds, [7, 2])
    assert sub.indices == [7, 2] and int(sub[1][0]) == 20
    sub.indices = range(3, 6)  # reassigned, as PyTorch allows
    assert len(sub) == 3 and int(sub[0][0]) == 30
    with pytest.raises(TypeError, match="Subset: indices must be integers"):
        ng.utils.data.Subset(ds, [1.5])
