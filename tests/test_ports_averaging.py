"""Programs that copy, average and merge models, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) the way its
source writes it: FedAvg (``copy.deepcopy`` of the global model per client, state dicts summed
key by key, ``torch.div`` by the count, BatchNorm's ``num_batches_tracked`` averaged as the
sources average it), FedML's sample-weighted aggregation, a ``torch.stack(...).mean(0)`` server
with FedBN's skipped keys, FedProx with its proximal term over ``zip`` of two models'
parameters and ``.data`` assignments, FedOpt's server optimisers on pseudo-gradients, SWA and
EMA through ``swa_utils`` (custom ``avg_fn``, ``use_buffers``) and the SWA paper's own
utilities, SWAG, timm's ``ModelEmaV2``/``ModelEmaV3``, YOLOv5's ModelEMA, diffusers'
EMAModel, pytorch_ema, the mean teacher, model soups (uniform and greedy, from checkpoints on
disk), task arithmetic and TIES merging, fairseq's ``average_checkpoints``, AWD-LSTM's ASGD
averaged weights, Polyak-averaged target networks, Lookahead's slow weights (lonePatient's
and timm's, whose slow buffers live in the wrapped optimiser's state), and the state-dict
semantics all of them lean on. Both runs start from PyTorch's seeded initial weights and see
the same data in float64, so every recorded value must agree to rounding.
"""

from __future__ import annotations

import collections
import copy
import math
import random
import re
from collections import OrderedDict, defaultdict

import numpy as np
import pytest

import nodegrad as ng
from _ports import _one_torch_thread, arrays, assert_same, both, draw  # noqa: F401
from _ports import seeded_build as seeded

torch = pytest.importorskip("torch")

X = draw(40, 5, seed=1)
Y = draw(40, seed=2, kind="randint", high=3)
XT = draw(20, 5, seed=3)
YT = draw(20, seed=4, kind="randint", high=3)
R = draw(40, 1, seed=5).clip(-2, 2) * 0.2 + 0.5  # regression targets in (0, 1)


def mlp_bn(lib):
    """The CNNMnist-like classifier the FedAvg code trains, as an MLP with batch norm."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(5, 8, bias=False)  # (Adam would amplify a bias's zero gradient)
            self.bn1 = nn.BatchNorm1d(8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(self.bn1(self.fc1(x)))
            return F.log_softmax(self.fc2(x), dim=1)

    return Net()


def dtypes(sd) -> dict:
    """A state dict's dtypes by name (``float64``, ``int64``), comparable across libraries."""
    return {k: str(v.dtype).rpartition(".")[2] for k, v in sd.items()}


# 1. FedAvg as shaoxiongji/federated-learning writes it ----------------------------------------

def fedavg(lib, all_clients: bool = True):
    nn, F = lib.nn, lib.nn.functional
    Dataset, DataLoader = lib.utils.data.Dataset, lib.utils.data.DataLoader
    device = lib.device("cpu")

    class DatasetSplit(Dataset):
        def __init__(self, dataset, idxs):
            self.dataset = dataset
            self.idxs = list(idxs)

        def __len__(self):
            return len(self.idxs)

        def __getitem__(self, item):
            image, label = self.dataset[self.idxs[item]]
            return image, label

    class LocalUpdate:
        def __init__(self, args, dataset=None, idxs=None):
            self.args = args
            self.loss_func = nn.CrossEntropyLoss()
            self.ldr_train = DataLoader(DatasetSplit(dataset, idxs),
                                        batch_size=self.args["local_bs"], shuffle=False)

        def train(self, net):
            net.train()
            optimizer = lib.optim.SGD(net.parameters(), lr=self.args["lr"],
                                      momentum=self.args["momentum"])
            epoch_loss = []
            for _ in range(self.args["local_ep"]):
                batch_loss = []
                for batch_idx, (images, labels) in enumerate(self.ldr_train):  # noqa: B007
                    images, labels = images.to(device), labels.to(device)
                    net.zero_grad()
                    log_probs = net(images)
                    loss = self.loss_func(log_probs, labels)
                    loss.backward()
                    optimizer.step()
                    batch_loss.append(loss.item())
                epoch_loss.append(sum(batch_loss) / len(batch_loss))
            return net.state_dict(), sum(epoch_loss) / len(epoch_loss)

    def FedAvg(w):
        w_avg = copy.deepcopy(w[0])
        for k in w_avg.keys():
            for i in range(1, len(w)):
                w_avg[k] += w[i][k]
            w_avg[k] = lib.div(w_avg[k], len(w))
        return w_avg

    def test_img(net_g, datatest):
        net_g.eval()
        test_loss = 0
        correct = 0
        data_loader = DataLoader(datatest, batch_size=8)
        for idx, (data, target) in enumerate(data_loader):  # noqa: B007
            log_probs = net_g(data)
            test_loss += F.cross_entropy(log_probs, target, reduction="sum").item()
            y_pred = log_probs.data.max(1, keepdim=True)[1]
            correct += y_pred.eq(target.data.view_as(y_pred)).long().cpu().sum()
        test_loss /= len(data_loader.dataset)
        accuracy = 100.00 * correct / len(data_loader.dataset)
        return accuracy, test_loss

    args = {"local_bs": 4, "lr": 0.1, "momentum": 0.5, "local_ep": 2, "num_users": 4,
            "frac": 0.5}
    dataset_train = lib.utils.data.TensorDataset(lib.tensor(X), lib.tensor(Y))
    dataset_test = lib.utils.data.TensorDataset(lib.tensor(XT), lib.tensor(YT))
    dict_users = {0: range(6), 1: range(6, 16), 2: range(16, 28), 3: range(28, 40)}
    net_glob = seeded(lib, mlp_bn).to(device)
    net_glob.train()
    w_glob = net_glob.state_dict()
    if all_clients:  # every user's slot starts as the global model's live state dict
        w_locals = [w_glob for i in range(args["num_users"])]
    rng = np.random.RandomState(3)
    loss_train, kinds = [], []
    for _ in range(3):
        loss_locals = []
        if not all_clients:
            w_locals = []
        m = max(int(args["frac"] * args["num_users"]), 1)
        idxs_users = rng.choice(range(args["num_users"]), m, replace=False)
        for idx in idxs_users:
            local = LocalUpdate(args=args, dataset=dataset_train, idxs=dict_users[idx])
            w, loss = local.train(net=copy.deepcopy(net_glob).to(device))
            if all_clients:
                w_locals[idx] = copy.deepcopy(w)
            else:
                w_locals.append(copy.deepcopy(w))
            loss_locals.append(copy.deepcopy(loss))
        w_glob = FedAvg(w_locals)
        kinds.append(dtypes(w_glob))
        net_glob.load_state_dict(w_glob)
        loss_train.append(sum(loss_locals) / len(loss_locals))
    acc, test_loss = test_img(net_glob, dataset_test)
    return {"loss": loss_train, "dtypes": kinds, "w": arrays(net_glob.state_dict()),
            "w_glob": arrays(w_glob), "acc": acc, "test_loss": test_loss,
            "nbt": int(net_glob.bn1.num_batches_tracked)}


@pytest.mark.parametrize("all_clients", [True, False])
def test_fedavg_deepcopy_state_dicts_div(all_clients):
    both(fedavg, all_clients)


# 2. FedML's sample-weighted aggregation and a stack/mean server with FedBN's local BN ---------

def fedml(lib, fedbn: bool = False):
    F = lib.nn.functional

    def local_train(model, x, y):
        model.train()
        opt = lib.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
        for i in range(0, len(x), 5):
            opt.zero_grad()
            F.nll_loss(model(x[i:i + 5]), y[i:i + 5]).backward()
            opt.step()

    def aggregate(w_locals):  # FedML's FedAVGAggregator._aggregate
        training_num = 0
        for idx in range(len(w_locals)):
            (sample_num, averaged_params) = w_locals[idx]
            training_num += sample_num
        (sample_num, averaged_params) = w_locals[0]
        for k in averaged_params.keys():
            for i in range(0, len(w_locals)):  # noqa: PIE808
                local_sample_number, local_model_params = w_locals[i]
                w = local_sample_number / training_num
                if i == 0:
                    averaged_params[k] = local_model_params[k] * w
                else:
                    averaged_params[k] += local_model_params[k] * w
        return averaged_params

    def server_aggregate(global_model, client_models):  # the stack/mean tutorial server
        global_dict = global_model.state_dict()
        for k in global_dict.keys():
            if fedbn and "bn" in k:
                continue
            global_dict[k] = lib.stack([client_models[i].state_dict()[k].double()
                                        for i in range(len(client_models))], 0).mean(0)
        global_model.load_state_dict(global_dict)
        for model in client_models:
            for key in global_model.state_dict().keys():  # FedBN keeps each client's BN
                if not (fedbn and "bn" in key):
                    model.state_dict()[key].data.copy_(global_model.state_dict()[key])

    splits = [(0, 7), (7, 22), (22, 40)]
    x, y = lib.tensor(X), lib.tensor(Y)
    global_model = seeded(lib, mlp_bn)
    out = {}
    # FedML: clients train copies, the server weights their state dicts by sample counts
    w_locals = []
    for lo, hi in splits:
        client = copy.deepcopy(global_model)
        local_train(client, x[lo:hi], y[lo:hi])
        w_locals.append((hi - lo, client.state_dict()))
    avg = aggregate(w_locals)
    out["fedml_dtypes"] = dtypes(avg)
    out["fedml"] = arrays(avg)
    missing = global_model.load_state_dict(avg)
    out["fedml_keys"] = [list(missing.missing_keys), list(missing.unexpected_keys)]
    out["fedml_nbt"] = int(global_model.bn1.num_batches_tracked)
    # the tutorial's server: clients are persistent models, reset to the global one each round
    client_models = [seeded(lib, mlp_bn) for _ in splits]
    for model in client_models:
        model.load_state_dict(global_model.state_dict())
    for _ in range(2):
        for model, (lo, hi) in zip(client_models, splits):
            local_train(model, x[lo:hi], y[lo:hi])
        server_aggregate(global_model, client_models)
    global_model.eval()
    with lib.no_grad():
        out["test"] = F.nll_loss(global_model(lib.tensor(XT)), lib.tensor(YT)).item()
    out["global"] = arrays(global_model.state_dict())
    out["clients"] = [arrays(m.state_dict()) for m in client_models]
    return out


@pytest.mark.parametrize("fedbn", [False, True])
def test_fedml_weighted_and_stack_mean_servers(fedbn):
    both(fedml, fedbn)


# 3. FedProx as ki-ljl/FedProx-PyTorch writes it ----------------------------------------------

def ann_class(lib):
    """ki-ljl/FedProx-PyTorch's ANN (a name, a data length and a loss kept on the module)."""
    nn = lib.nn

    class ANN(nn.Module):
        def __init__(self, args, name):
            super(ANN, self).__init__()  # noqa: UP008
            self.name = name
            self.len = 0
            self.loss = 0
            self.fc1 = nn.Linear(args["input_dim"], 8)
            self.relu = nn.ReLU()
            self.sigmoid = nn.Sigmoid()
            self.dropout = nn.Dropout()
            self.fc2 = nn.Linear(8, 4)
            self.fc3 = nn.Linear(4, 1)

        def forward(self, data):
            x = self.fc1(data)
            x = self.sigmoid(x)
            x = self.fc2(x)
            x = self.sigmoid(x)
            x = self.fc3(x)
            x = self.sigmoid(x)
            return x

    return ANN


def fedprox(lib, optimizer: str = "adam"):
    nn = lib.nn

    args = {"input_dim": 5, "K": 3, "C": 0.7, "r": 3, "E": 2, "B": 5, "lr": 0.05, "mu": 0.1,
            "weight_decay": 1e-4, "step_size": 1, "gamma": 0.5, "optimizer": optimizer,
            "clients": ["a", "b", "c"], "device": lib.device("cpu")}
    shards = {"a": (0, 10), "b": (10, 25), "c": (25, 40)}
    seen_grads = []

    def nn_seq_wind(name, B):
        lo, hi = shards[name]
        ds = lib.utils.data.TensorDataset(lib.tensor(X[lo:hi]), lib.tensor(R[lo:hi]))
        return lib.utils.data.DataLoader(ds, batch_size=B, shuffle=False), None

    def train(args, model, server):
        model.train()
        Dtr, Dte = nn_seq_wind(model.name, args["B"])
        model.len = len(Dtr)
        global_model = copy.deepcopy(server)
        lr = args["lr"]
        if args["optimizer"] == "adam":
            optimizer = lib.optim.Adam(model.parameters(), lr=lr,
                                       weight_decay=args["weight_decay"])
        else:
            optimizer = lib.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                                      weight_decay=args["weight_decay"])
        stepLR = lib.optim.lr_scheduler.StepLR(optimizer, step_size=args["step_size"],
                                               gamma=args["gamma"])
        loss_function = nn.MSELoss().to(args["device"])
        losses = []
        for epoch in range(args["E"]):  # noqa: B007
            train_loss = []
            for (seq, label) in Dtr:
                seq = seq.to(args["device"])
                label = label.to(args["device"])
                y_pred = model(seq)
                optimizer.zero_grad()
                proximal_term = 0.0
                for w, w_t in zip(model.parameters(), global_model.parameters()):
                    proximal_term += (w - w_t).norm(2)
                loss = loss_function(y_pred, label) + (args["mu"] / 2) * proximal_term
                train_loss.append(loss.item())
                loss.backward()
                optimizer.step()
            stepLR.step()
            losses.append(np.mean(train_loss))
        # the server copy collected gradients through w_t (never zeroed)
        seen_grads.append([p.grad for p in global_model.parameters()])
        return model

    class FedProx:
        def __init__(self, args):
            self.args = args
            self.nn = seeded(lib, lambda lib: ann_class(lib)(args=self.args, name="server"))
            self.nn.to(args["device"])
            self.nns = []
            for i in range(self.args["K"]):
                temp = copy.deepcopy(self.nn)
                temp.name = self.args["clients"][i]
                self.nns.append(temp)

        def server(self):
            rand = random.Random(0)
            for t in range(self.args["r"]):  # noqa: B007
                m = np.max([int(self.args["C"] * self.args["K"]), 1])
                index = rand.sample(range(0, self.args["K"]), m)  # noqa: PIE808
                self.dispatch(index)
                self.client_update(index)
                self.aggregation(index)
            return self.nn

        def aggregation(self, index):
            s = 0
            for j in index:
                s += self.nns[j].len
            params = {}
            for k, v in self.nns[0].named_parameters():
                params[k] = lib.zeros_like(v.data)
            for j in index:
                for k, v in self.nns[j].named_parameters():
                    params[k] += v.data * (self.nns[j].len / s)
            for k, v in self.nn.named_parameters():
                v.data = params[k].data.clone()

        def dispatch(self, index):
            for j in index:
                for old_params, new_params in zip(self.nns[j].parameters(),
                                                  self.nn.parameters()):
                    old_params.data = new_params.data.clone()

        def client_update(self, index):
            for k in index:
                self.nns[k] = train(self.args, self.nns[k], self.nn)

    fed = FedProx(args)
    model = fed.server()
    model.eval()
    with lib.no_grad():
        pred = model(lib.tensor(XT))
    return {"w": arrays(model.state_dict()), "pred": pred,
            "clients": [arrays(m.state_dict()) for m in fed.nns],
            "lens": [m.len for m in fed.nns], "server_grads": seen_grads,
            "leaf": [p.is_leaf and p.requires_grad for p in model.parameters()]}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fedprox_proximal_norm_data_assignments(optimizer):
    both(fedprox, optimizer)


def test_norm_gradient_at_zero_is_zero():
    """The proximal term's first step: ``(w - w_t).norm(2)`` at w = w_t has gradient 0, as
    PyTorch's (a subgradient; not NaN)."""
    for lib in (torch, ng):
        w = lib.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=lib.float64, requires_grad=True)
        w_t = w.detach().clone()
        ((w - w_t).norm(2) + (w - w_t).norm() + lib.linalg.vector_norm(w - w_t)).backward()
        assert np.array_equal(w.grad.numpy(), np.zeros((2, 2))), lib.__name__


# 4. SWA and EMA through swa_utils: a custom avg_fn, buffers averaged, a saved averaged model --

def swa_custom(lib, tmp_path, use_buffers: bool = True):
    F = lib.nn.functional
    swa_utils = lib.optim.swa_utils
    model = seeded(lib, mlp_bn)
    ema_avg = lambda averaged_model_parameter, model_parameter, num_averaged: \
        0.1 * averaged_model_parameter + 0.9 * model_parameter  # noqa: E731
    ema_model = swa_utils.AveragedModel(model, avg_fn=ema_avg, use_buffers=use_buffers)
    swa_model = swa_utils.AveragedModel(model, device=lib.device("cpu"),
                                        use_buffers=use_buffers)
    ema_fn = swa_utils.AveragedModel(model, avg_fn=swa_utils.get_ema_avg_fn(0.8),
                                     use_buffers=use_buffers)
    # (PyTorch's SWA multi_avg_fn refuses integer buffers: its addcdiv has no integer division)
    swa_multi = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_swa_multi_avg_fn())
    ema_multi = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.9),
                                        use_buffers=use_buffers)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    swa_start = 2
    swa_scheduler = swa_utils.SWALR(optimizer, swa_lr=0.05, anneal_epochs=2)
    loader = [(lib.tensor(X[i:i + 8]), lib.tensor(Y[i:i + 8])) for i in range(0, 40, 8)]
    lrs, nbts = [], []
    for epoch in range(6):
        for input, target in loader:
            optimizer.zero_grad()
            F.nll_loss(model(input), target).backward()
            optimizer.step()
        ema_model.update_parameters(model)
        ema_fn.update_parameters(model)
        ema_multi.update_parameters(model)
        if epoch > swa_start:
            swa_model.update_parameters(model)
            swa_multi.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        nbts.append([int(m.module.bn1.num_batches_tracked)
                     for m in (ema_model, swa_model, ema_fn, swa_multi, ema_multi)])
    out = {"lr": lrs, "nbt": nbts}
    for name, m in (("ema", ema_model), ("swa", swa_model), ("ema_fn", ema_fn),
                    ("swa_multi", swa_multi), ("ema_multi", ema_multi)):
        out[name] = arrays(m.state_dict())
        out[name + "_dtypes"] = dtypes(m.state_dict())
    lib.optim.swa_utils.update_bn(loader, swa_model, device=lib.device("cpu"))
    out["bn"] = arrays(swa_model.module.bn1.state_dict())
    # the averaged model saved and loaded into a fresh one (n_averaged included)
    path = tmp_path / ("swa.pt" if lib is torch else "swa.safetensors")
    lib.save(swa_model.state_dict(), path)
    fresh = swa_utils.AveragedModel(seeded(lib, mlp_bn))
    fresh.load_state_dict(lib.load(path))
    fresh.eval()
    with lib.no_grad():
        out["preds"] = fresh(lib.tensor(XT))
    out["n_averaged"] = int(fresh.n_averaged)
    return out


@pytest.fixture
def float64_default():
    """Both libraries' default dtype float64 for one test (PyTorch's SWA multi_avg_fn takes its
    weight ``1 / (n_averaged + 1)`` in it)."""
    tdt, ndt = torch.get_default_dtype(), ng.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    ng.set_default_dtype(ng.float64)
    yield
    torch.set_default_dtype(tdt)
    ng.set_default_dtype(ndt)


@pytest.mark.parametrize("use_buffers", [True, False])
def test_swa_custom_avg_fn_buffers_saved(tmp_path, use_buffers, float64_default):
    (tmp_path / "torch").mkdir()
    (tmp_path / "ng").mkdir()
    assert_same(swa_custom(ng, tmp_path / "ng", use_buffers),
                swa_custom(torch, tmp_path / "torch", use_buffers))


# 5. timm's ModelEmaV2 and ModelEmaV3 --------------------------------------------------------

def timm_ema(lib, foreach: bool = True, exclude_buffers: bool = False, old_torch: bool = False):
    """timm's EMA classes; ``old_torch``: the fallback timm takes where ``_foreach_lerp_`` is
    missing (``_foreach_mul_(..., scalar=decay)`` then ``_foreach_add_(..., alpha=...)``)."""
    nn, F = lib.nn, lib.nn.functional
    deepcopy = copy.deepcopy
    has_lerp = not old_torch

    class ModelEmaV2(nn.Module):
        def __init__(self, model, decay=0.9999, device=None):
            super().__init__()
            self.module = deepcopy(model)
            self.module.eval()
            self.decay = decay
            self.device = device
            if self.device is not None:
                self.module.to(device=device)

        def _update(self, model, update_fn):
            with lib.no_grad():
                for ema_v, model_v in zip(self.module.state_dict().values(),
                                          model.state_dict().values()):
                    if self.device is not None:
                        model_v = model_v.to(device=self.device)
                    ema_v.copy_(update_fn(ema_v, model_v))

        def update(self, model):
            self._update(model, update_fn=lambda e, m: self.decay * e + (1. - self.decay) * m)

        def set(self, model):
            self._update(model, update_fn=lambda e, m: m)

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    class ModelEmaV3(nn.Module):
        def __init__(self, model, decay=0.9999, min_decay=0.0, update_after_step=0,
                     use_warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, device=None,
                     foreach=True, exclude_buffers=False):
            super().__init__()
            self.module = deepcopy(model)
            self.module.eval()
            self.decay = decay
            self.min_decay = min_decay
            self.update_after_step = update_after_step
            self.use_warmup = use_warmup
            self.warmup_gamma = warmup_gamma
            self.warmup_power = warmup_power
            self.foreach = foreach
            self.device = device
            self.exclude_buffers = exclude_buffers
            if self.device is not None and device != next(model.parameters()).device:
                self.foreach = False
                self.module.to(device=device)

        def get_decay(self, step=None):
            if step is None:
                return self.decay
            step = max(0, step - self.update_after_step - 1)
            if step <= 0:
                return 0.0
            if self.use_warmup:
                decay = 1 - (1 + step / self.warmup_gamma) ** -self.warmup_power
                decay = max(min(decay, self.decay), self.min_decay)
            else:
                decay = self.decay
            return decay

        @lib.no_grad()
        def update(self, model, step=None):
            decay = self.get_decay(step)
            if self.exclude_buffers:
                self.apply_update_no_buffers_(model, decay)
            else:
                self.apply_update_(model, decay)

        def apply_update_(self, model, decay):
            if self.foreach:
                ema_lerp_values = []
                model_lerp_values = []
                for ema_v, model_v in zip(self.module.state_dict().values(),
                                          model.state_dict().values()):
                    if ema_v.is_floating_point():
                        ema_lerp_values.append(ema_v)
                        model_lerp_values.append(model_v)
                    else:
                        ema_v.copy_(model_v)
                if has_lerp and hasattr(lib, "_foreach_lerp_"):
                    lib._foreach_lerp_(ema_lerp_values, model_lerp_values, weight=1. - decay)
                else:
                    lib._foreach_mul_(ema_lerp_values, scalar=decay)
                    lib._foreach_add_(ema_lerp_values, model_lerp_values, alpha=1. - decay)
            else:
                for ema_v, model_v in zip(self.module.state_dict().values(),
                                          model.state_dict().values()):
                    if ema_v.is_floating_point():
                        ema_v.lerp_(model_v.to(device=self.device), weight=1. - decay)
                    else:
                        ema_v.copy_(model_v.to(device=self.device))

        def apply_update_no_buffers_(self, model, decay):
            ema_params = tuple(self.module.parameters())
            model_params = tuple(model.parameters())
            if self.foreach:
                if has_lerp and hasattr(lib, "_foreach_lerp_"):
                    lib._foreach_lerp_(ema_params, model_params, weight=1. - decay)
                else:
                    lib._foreach_mul_(ema_params, scalar=decay)
                    lib._foreach_add_(ema_params, model_params, alpha=1 - decay)
            else:
                for ema_p, model_p in zip(ema_params, model_params):
                    ema_p.lerp_(model_p.to(device=self.device), weight=1. - decay)
            for ema_b, model_b in zip(self.module.buffers(), model.buffers()):
                ema_b.detach().copy_(model_b.to(device=self.device))

        @lib.no_grad()
        def set(self, model):
            for ema_v, model_v in zip(self.module.state_dict().values(),
                                      model.state_dict().values()):
                ema_v.copy_(model_v.to(device=self.device))

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    model = seeded(lib, mlp_bn)
    v2 = ModelEmaV2(model, decay=0.9)
    v3 = ModelEmaV3(model, decay=0.95, use_warmup=True, warmup_power=3 / 4,
                    update_after_step=1, foreach=foreach, exclude_buffers=exclude_buffers)
    v3_fixed = ModelEmaV3(model, decay=0.9, foreach=foreach, exclude_buffers=exclude_buffers)
    optimizer = lib.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.05)
    decays, nbt, evals = [], [], []
    for step in range(12):
        i = (8 * step) % 40
        model.train()
        optimizer.zero_grad()
        F.nll_loss(model(lib.tensor(X[i:i + 8])), lib.tensor(Y[i:i + 8])).backward()
        optimizer.step()
        v2.update(model)
        v3.update(model, step=step)
        v3_fixed.update(model)
        decays.append(v3.get_decay(step))
        nbt.append([int(m.module.bn1.num_batches_tracked) for m in (v2, v3, v3_fixed)])
        with lib.no_grad():  # timm validates the EMA model every few steps
            evals.append(F.nll_loss(v3(lib.tensor(XT)), lib.tensor(YT)).item())
    out = {"decay": decays, "nbt": nbt, "eval": evals, "v2": arrays(v2.module.state_dict()),
           "v3": arrays(v3.module.state_dict()), "v3_fixed": arrays(v3_fixed.state_dict()),
           "ema_grad": [p.requires_grad for p in v3.parameters()]}
    v2.set(model)
    out["set"] = arrays(v2.state_dict())
    return out


@pytest.mark.parametrize("foreach,exclude_buffers,old_torch", [
    (True, False, False), (False, False, False), (True, True, False), (False, True, False),
    (True, False, True), (True, True, True)])
def test_timm_model_ema_v2_v3(foreach, exclude_buffers, old_torch):
    both(timm_ema, foreach, exclude_buffers, old_torch)


# 6. The mean teacher (CuriousAI/mean-teacher) ----------------------------------------------

def mean_teacher(lib):
    nn, F = lib.nn, lib.nn.functional
    Variable = lib.autograd.Variable
    NO_LABEL = -1

    def create_model(ema=False):
        model = seeded(lib, mlp_bn)
        if ema:
            for param in model.parameters():
                param.detach_()
        return model

    def sigmoid_rampup(current, rampup_length):
        if rampup_length == 0:
            return 1.0
        current = np.clip(current, 0.0, rampup_length)
        phase = 1.0 - current / rampup_length
        return float(np.exp(-5.0 * phase * phase))

    def softmax_mse_loss(input_logits, target_logits):
        assert input_logits.size() == target_logits.size()
        input_softmax = F.softmax(input_logits, dim=1)
        target_softmax = F.softmax(target_logits, dim=1)
        num_classes = input_logits.size()[1]
        return F.mse_loss(input_softmax, target_softmax, size_average=False) / num_classes

    def update_ema_variables(model, ema_model, alpha, global_step):
        alpha = min(1 - 1 / (global_step + 1), alpha)
        for ema_param, param in zip(ema_model.parameters(), model.parameters()):
            ema_param.data.mul_(alpha).add_(1 - alpha, param.data)

    model = create_model()
    ema_model = create_model(ema=True)
    optimizer = lib.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4,
                              nesterov=True)
    class_criterion = nn.CrossEntropyLoss(size_average=False, ignore_index=NO_LABEL)
    consistency_criterion = softmax_mse_loss
    labels = Y.copy()
    labels[::3] = NO_LABEL  # a third unlabelled
    global_step = 0
    noise = draw(40, 5, seed=9) * 0.1
    out = {"class": [], "cons": [], "leaf": [p.requires_grad for p in ema_model.parameters()]}
    for epoch in range(2):
        model.train()
        ema_model.train()
        for i in range(0, 40, 10):
            input_var = Variable(lib.tensor(X[i:i + 10]))
            ema_input_var = Variable(lib.tensor(X[i:i + 10] + noise[i:i + 10]), volatile=True)
            target_var = Variable(lib.tensor(labels[i:i + 10]))
            minibatch_size = len(target_var)
            ema_model_out = ema_model(ema_input_var)
            model_out = model(input_var)
            logit1, ema_logit = model_out, ema_model_out
            ema_logit = Variable(ema_logit.detach().data, requires_grad=False)
            class_loss = class_criterion(logit1, target_var) / minibatch_size
            consistency_weight = 10.0 * sigmoid_rampup(epoch, 2)
            consistency_loss = consistency_weight * consistency_criterion(
                logit1, ema_logit) / minibatch_size
            loss = class_loss + consistency_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            global_step += 1
            update_ema_variables(model, ema_model, 0.99, global_step)
            out["class"].append(class_loss.item())
            out["cons"].append(consistency_loss.item())
    out["student"] = arrays(model.state_dict())
    out["teacher"] = arrays(ema_model.state_dict())
    out["teacher_grads"] = [p.grad is None for p in ema_model.parameters()]
    return out


def test_mean_teacher_detached_ema():
    both(mean_teacher)


# 7. Model soups (mlfoundations/model-soups): uniform and greedy, from checkpoints on disk -----

def soup_classes(lib):
    """model-soups' ModelWrapper around a CLIP-like encoder (``encode_image``, and a language
    part the wrapper deletes)."""
    nn = lib.nn

    class Encoder(nn.Module):  # a CLIP-like base: encode_image, and a language part to drop
        def __init__(self):
            super().__init__()
            self.visual = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.GELU(),
                                        nn.Linear(6, 4))
            self.transformer = nn.Linear(3, 3)

        def encode_image(self, images):
            return self.visual(images)

    class ModelWrapper(nn.Module):
        def __init__(self, model, feature_dim, num_classes, normalize=False,
                     initial_weights=None):
            super(ModelWrapper, self).__init__()  # noqa: UP008
            self.model = model
            self.classification_head = nn.Linear(feature_dim, num_classes)
            self.normalize = normalize
            if initial_weights is None:
                initial_weights = lib.zeros_like(self.classification_head.weight)
                nn.init.kaiming_uniform_(initial_weights, a=math.sqrt(5))
            self.classification_head.weight = nn.Parameter(initial_weights.clone())
            self.classification_head.bias = nn.Parameter(
                lib.zeros_like(self.classification_head.bias))
            if hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")

        def forward(self, images, return_features=False):
            features = self.model.encode_image(images)
            if self.normalize:
                features = features / features.norm(dim=-1, keepdim=True)
            logits = self.classification_head(features)
            if return_features:
                return logits, features
            return logits

    return Encoder, ModelWrapper


def soups(lib, tmp_path):
    nn, F = lib.nn, lib.nn.functional
    ext = ".pt" if lib is torch else ".safetensors"
    Encoder, ModelWrapper = soup_classes(lib)

    def get_model_from_sd(state_dict, base_model):
        feature_dim = state_dict["classification_head.weight"].shape[1]
        num_classes = state_dict["classification_head.weight"].shape[0]
        model = ModelWrapper(base_model, feature_dim, num_classes, normalize=True)
        for p in model.parameters():  # the source's .float() for its float32 checkpoints
            p.data = p.data.double()
        model.load_state_dict(state_dict)
        devices = [x for x in range(lib.cuda.device_count())]
        return nn.DataParallel(model, device_ids=devices)

    def test_model_on_dataset(model, x, y):
        model.eval()
        with lib.no_grad():
            logits = model(x)
            pred = logits.argmax(dim=1, keepdim=True)
            correct = pred.eq(y.view_as(pred)).sum().item()
        return correct / y.size(0)

    base_model = Encoder()
    init = seeded(lib, lambda lib: soup_classes(lib)[1](soup_classes(lib)[0](), 4, 3,
                                                         normalize=True))
    zeroshot = init.state_dict()
    x, y = lib.tensor(X[:30]), lib.tensor(Y[:30])
    xv, yv = lib.tensor(X[30:]), lib.tensor(Y[30:])
    # fine-tune copies with a hyperparameter sweep, each saved to disk
    model_paths = []
    for j, (lr, wd, steps) in enumerate([(0.05, 0.0, 4), (0.1, 0.1, 3), (0.02, 0.01, 6),
                                         (0.3, 0.0, 2)]):
        model = copy.deepcopy(init)
        opt = lib.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            opt.step()
        path = str(tmp_path / f"model_{j}{ext}")
        lib.save(model.state_dict(), path)
        model_paths.append(path)
    NUM_MODELS = len(model_paths)
    val_results = {}
    for j, model_path in enumerate(model_paths):
        state_dict = lib.load(model_path, map_location=lib.device("cpu"))
        model = get_model_from_sd(state_dict, base_model)
        val_results[f"model_{j}"] = test_model_on_dataset(model, xv, yv) + 1e-3 * j
    # the uniform soup
    for j, model_path in enumerate(model_paths):
        state_dict = lib.load(model_path, map_location=lib.device("cpu"))
        if j == 0:
            uniform_soup = {k: v * (1. / NUM_MODELS) for k, v in state_dict.items()}
        else:
            uniform_soup = {k: v * (1. / NUM_MODELS) + uniform_soup[k]
                            for k, v in state_dict.items()}
    model = get_model_from_sd(uniform_soup, base_model)
    uniform_acc = test_model_on_dataset(model, xv, yv)
    # the greedy soup, candidates by held-out accuracy
    sorted_models = sorted(val_results.items(), key=lambda kv: kv[1], reverse=True)
    sorted_models = [k for k, _ in sorted_models]
    greedy_soup_ingredients = [sorted_models[0]]
    greedy_soup_params = lib.load(str(tmp_path / f"{sorted_models[0]}{ext}"))
    best_val_acc_so_far = val_results[sorted_models[0]] - 0.5
    for i in range(1, NUM_MODELS):
        new_ingredient_params = lib.load(str(tmp_path / f"{sorted_models[i]}{ext}"))
        num_ingredients = len(greedy_soup_ingredients)
        potential_greedy_soup_params = {
            k: greedy_soup_params[k].clone() * (num_ingredients / (num_ingredients + 1.)) +
            new_ingredient_params[k].clone() * (1. / (num_ingredients + 1))
            for k in new_ingredient_params
        }
        model = get_model_from_sd(potential_greedy_soup_params, base_model)
        held_out_val_accuracy = test_model_on_dataset(model, xv, yv)
        if held_out_val_accuracy >= best_val_acc_so_far:
            greedy_soup_ingredients.append(sorted_models[i])
            best_val_acc_so_far = held_out_val_accuracy
            greedy_soup_params = potential_greedy_soup_params
    model = get_model_from_sd(greedy_soup_params, base_model)
    with lib.no_grad():
        logits = model(xv)
    return {"val": val_results, "uniform": arrays(uniform_soup), "uniform_acc": uniform_acc,
            "greedy": greedy_soup_ingredients, "greedy_params": arrays(greedy_soup_params),
            "logits": logits, "keys": list(model.state_dict()), "zeroshot": list(zeroshot),
            "transformer": hasattr(base_model, "transformer")}


def test_model_soups_uniform_greedy(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "ng").mkdir()
    assert_same(soups(ng, tmp_path / "ng"), soups(torch, tmp_path / "torch"))


# 8. Task arithmetic (Ilharco et al.) and TIES merging (Yadav et al.) ---------------------------

def task_arithmetic(lib, tmp_path):
    F = lib.nn.functional
    ext = ".pt" if lib is torch else ".safetensors"

    class TaskVector():  # noqa: UP039
        def __init__(self, pretrained_checkpoint=None, finetuned_checkpoint=None, vector=None):
            if vector is not None:
                self.vector = vector
            else:
                assert pretrained_checkpoint is not None and finetuned_checkpoint is not None
                with lib.no_grad():
                    pretrained_state_dict = lib.load(pretrained_checkpoint)
                    finetuned_state_dict = lib.load(finetuned_checkpoint)
                    self.vector = {}
                    for key in pretrained_state_dict:
                        if pretrained_state_dict[key].dtype in [lib.int64, lib.uint8]:
                            continue
                        self.vector[key] = finetuned_state_dict[key] - pretrained_state_dict[key]

        def __add__(self, other):
            with lib.no_grad():
                new_vector = {}
                for key in self.vector:
                    if key not in other.vector:
                        print(f"Warning, key {key} is not present in both task vectors.")
                        continue
                    new_vector[key] = self.vector[key] + other.vector[key]
            return TaskVector(vector=new_vector)

        def __radd__(self, other):
            if other is None or isinstance(other, int):
                return self
            return self.__add__(other)

        def __neg__(self):
            with lib.no_grad():
                new_vector = {}
                for key in self.vector:
                    new_vector[key] = - self.vector[key]
            return TaskVector(vector=new_vector)

        def apply_to(self, pretrained_model, scaling_coef=1.0):
            with lib.no_grad():
                new_state_dict = {}
                pretrained_state_dict = pretrained_model.state_dict()
                for key in pretrained_state_dict:
                    if key not in self.vector:
                        print(f"Warning: key {key} is present in the pretrained state dict "
                              "but not in the task vector")
                        continue
                    new_state_dict[key] = (pretrained_state_dict[key]
                                           + scaling_coef * self.vector[key])
            keys = pretrained_model.load_state_dict(new_state_dict, strict=False)
            return pretrained_model, keys

    # TIES merging, as the authors' ties_minimal notebook writes it
    def state_dict_to_vector(state_dict, remove_keys=[]):  # noqa: B006
        shared_state_dict = copy.deepcopy(state_dict)
        for key in remove_keys:
            if key in shared_state_dict:
                del shared_state_dict[key]
        sorted_shared_state_dict = OrderedDict(sorted(shared_state_dict.items()))
        return lib.nn.utils.parameters_to_vector(
            [value.reshape(-1) for key, value in sorted_shared_state_dict.items()])

    def vector_to_state_dict(vector, state_dict, remove_keys=[]):  # noqa: B006
        reference_dict = copy.deepcopy(state_dict)
        for key in remove_keys:
            if key in reference_dict:
                del reference_dict[key]
        sorted_reference_dict = OrderedDict(sorted(reference_dict.items()))
        lib.nn.utils.vector_to_parameters(vector, sorted_reference_dict.values())
        return sorted_reference_dict

    def topk_values_mask(M, K=0.7, return_mask=False):
        if K > 1:
            K /= 100
        original_shape = M.shape
        if M.dim() == 1:
            M = M.unsqueeze(0)
        n, d = M.shape
        k = int(d * K)
        k = d - k  # Keep top k elements instead of bottom k elements
        kth_values, _ = M.abs().kthvalue(k, dim=1, keepdim=True)
        mask = M.abs() >= kth_values
        final_mask = mask.squeeze() if original_shape == M.squeeze().shape else mask
        if return_mask:
            return M * final_mask, final_mask.float().mean(dim=1), final_mask
        return M * final_mask, final_mask.float().mean(dim=1)

    def resolve_zero_signs(sign_to_mult, method="majority"):
        majority_sign = lib.sign(sign_to_mult.sum())
        if method == "majority":
            sign_to_mult[sign_to_mult == 0] = majority_sign
        elif method == "minority":
            sign_to_mult[sign_to_mult == 0] = -1 * majority_sign
        return sign_to_mult

    def resolve_sign(Tensor):
        sign_to_mult = lib.sign(Tensor.sum(dim=0))
        sign_to_mult = resolve_zero_signs(sign_to_mult, "majority")
        return sign_to_mult

    def disjoint_merge(Tensor, merge_func, sign_to_mult):
        merge_func = merge_func.split("-")[-1]
        if sign_to_mult is not None:
            rows_to_keep = lib.where(sign_to_mult.unsqueeze(0) > 0, Tensor > 0, Tensor < 0)
            selected_entries = Tensor * rows_to_keep
        else:
            rows_to_keep = Tensor != 0
            selected_entries = Tensor * rows_to_keep
        if merge_func == "mean":
            # (.float() in the source, whose checkpoints are float32)
            non_zero_counts = (selected_entries != 0).sum(dim=0).double()
            disjoint_aggs = lib.sum(selected_entries, dim=0) / lib.clamp(non_zero_counts, min=1)
        elif merge_func == "sum":
            disjoint_aggs = lib.sum(selected_entries, dim=0)
        elif merge_func == "max":
            disjoint_aggs = selected_entries.abs().max(dim=0)[0]
            disjoint_aggs *= sign_to_mult
        return disjoint_aggs

    def ties_merging(flat_task_checks, reset_thresh=None, merge_func=""):
        all_checks = flat_task_checks.clone()
        updated_checks, *_ = topk_values_mask(all_checks, K=reset_thresh, return_mask=False)
        final_signs = resolve_sign(updated_checks)
        assert final_signs is not None
        merged_tv = disjoint_merge(updated_checks, merge_func, final_signs)
        return merged_tv

    pretrained = seeded(lib, mlp_bn)
    pre_path = str(tmp_path / f"pre{ext}")
    lib.save(pretrained.state_dict(), pre_path)
    ft_paths, ft_checks = [], []
    for t, (lo, hi) in enumerate([(0, 14), (14, 27), (27, 40)]):
        model = copy.deepcopy(pretrained)
        opt = lib.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        model.train()
        for _ in range(5):
            opt.zero_grad()
            F.nll_loss(model(lib.tensor(X[lo:hi])), lib.tensor(Y[lo:hi])).backward()
            opt.step()
        path = str(tmp_path / f"ft{t}{ext}")
        lib.save(model.state_dict(), path)
        ft_paths.append(path)
        ft_checks.append(model.state_dict())
    out = {}
    task_vectors = [TaskVector(pre_path, p) for p in ft_paths]
    task_vector_sum = sum(task_vectors)
    merged, keys = task_vector_sum.apply_to(copy.deepcopy(pretrained), scaling_coef=0.4)
    out["sum"] = arrays(merged.state_dict())
    out["sum_keys"] = [keys.missing_keys, keys.unexpected_keys]
    neg = -task_vectors[0]
    forgot, _ = neg.apply_to(copy.deepcopy(pretrained), scaling_coef=0.5)
    out["neg"] = arrays(forgot.state_dict())
    # TIES over the flattened checkpoints
    remove_keys = ["bn1.num_batches_tracked"]
    ptm_check = pretrained.state_dict()
    flat_ft = lib.vstack([state_dict_to_vector(check, remove_keys) for check in ft_checks])
    flat_ptm = state_dict_to_vector(ptm_check, remove_keys)
    tv_flat_checks = flat_ft - flat_ptm
    assert lib.allclose(vector_to_state_dict(flat_ptm, ptm_check, remove_keys)["fc1.weight"],
                        ptm_check["fc1.weight"])
    for merge_func in ("dis-mean", "dis-sum", "dis-max"):
        merged_tv = ties_merging(tv_flat_checks, reset_thresh=20, merge_func=merge_func)
        merged_check = flat_ptm + 0.7 * merged_tv
        merged_state_dict = vector_to_state_dict(merged_check, ptm_check,
                                                 remove_keys=remove_keys)
        out[merge_func] = arrays(merged_state_dict)
        model = copy.deepcopy(pretrained)
        res = model.load_state_dict(merged_state_dict, strict=False)
        out[merge_func + "_keys"] = [res.missing_keys, res.unexpected_keys]
        model.eval()
        with lib.no_grad():
            out[merge_func + "_loss"] = F.nll_loss(model(lib.tensor(XT)), lib.tensor(YT)).item()
    masked, density, mask = topk_values_mask(tv_flat_checks, K=0.3, return_mask=True)
    out["density"] = density
    out["mask"] = mask.float()
    out["pre_unchanged"] = arrays(pretrained.state_dict())
    return out


def test_task_arithmetic_and_ties_merging(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "ng").mkdir()
    assert_same(task_arithmetic(ng, tmp_path / "ng"), task_arithmetic(torch, tmp_path / "torch"))


# 9. fairseq's average_checkpoints over nested checkpoints on disk ------------------------------

def fairseq_average(lib, tmp_path):
    F = lib.nn.functional
    ext = ".pt" if lib is torch else ".safetensors"

    def average_checkpoints(inputs):
        params_dict = collections.OrderedDict()
        params_keys = None
        new_state = None
        num_models = len(inputs)
        for fpath in inputs:
            with open(fpath, "rb") as f:
                state = lib.load(f, map_location=(lambda s, _: s))
            if new_state is None:
                new_state = state
            model_params = state["model"]
            model_params_keys = list(model_params.keys())
            if params_keys is None:
                params_keys = model_params_keys
            elif params_keys != model_params_keys:
                raise KeyError(f"For checkpoint {f}, expected list of params: {params_keys}, "
                               f"but found: {model_params_keys}")
            for k in params_keys:
                p = model_params[k]
                if isinstance(p, lib.HalfTensor):
                    p = p.float()
                if k not in params_dict:
                    params_dict[k] = p.clone()
                else:
                    params_dict[k] += p
        averaged_params = collections.OrderedDict()
        for k, v in params_dict.items():
            averaged_params[k] = v
            if averaged_params[k].is_floating_point():
                averaged_params[k].div_(num_models)
            else:
                averaged_params[k] //= num_models
        new_state["model"] = averaged_params
        return new_state

    def last_n_checkpoints(paths, n, update_based, upper_bound=None):
        assert len(paths) == 1
        path = paths[0]
        if update_based:
            pt_regexp = re.compile(r"checkpoint_\d+_(\d+)\.(pt|safetensors)")
        else:
            pt_regexp = re.compile(r"checkpoint(\d+)\.(pt|safetensors)")
        files = [p.name for p in path.iterdir()]
        entries = []
        for f in files:
            m = pt_regexp.fullmatch(f)
            if m is not None:
                sort_key = int(m.group(1))
                if upper_bound is None or sort_key <= upper_bound:
                    entries.append((sort_key, m.group(0)))
        if len(entries) < n:
            raise Exception(f"Found {len(entries)} checkpoint files but need at least {n}")
        return [str(path / x[1]) for x in sorted(entries, reverse=True)[:n]]

    model = seeded(lib, mlp_bn)
    optimizer = lib.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(1, 6):
        model.train()
        for i in range(0, 40, 10):
            optimizer.zero_grad()
            F.nll_loss(model(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10])).backward()
            optimizer.step()
        state = {"args": None, "model": model.state_dict(),
                 "optimizer_history": [{"criterion_name": "CrossEntropyCriterion",
                                        "optimizer_name": "Adam", "num_updates": 4 * epoch}],
                 "extra_state": {"epoch": epoch, "val_loss": 1.0 / epoch},
                 "last_optimizer_state": optimizer.state_dict()}
        lib.save(state, str(tmp_path / f"checkpoint{epoch}{ext}"))
    inputs = last_n_checkpoints([tmp_path], 3, False, upper_bound=4)
    new_state = average_checkpoints(inputs)
    lib.save(new_state, str(tmp_path / f"averaged{ext}"))
    loaded = lib.load(str(tmp_path / f"averaged{ext}"))
    avg_model = seeded(lib, mlp_bn)
    avg_model.load_state_dict(loaded["model"], strict=True)
    avg_model.eval()
    with lib.no_grad():
        loss = F.nll_loss(avg_model(lib.tensor(XT)), lib.tensor(YT)).item()
    return {"inputs": [p.rpartition("/")[2].split(".")[0] for p in inputs],
            "model": arrays(loaded["model"]), "dtypes": dtypes(loaded["model"]),
            "epoch": loaded["extra_state"]["epoch"],
            "history": loaded["optimizer_history"][0]["num_updates"],
            "keys": list(loaded), "loss": loss,
            "opt_steps": [float(v["step"]) for v in
                          loaded["last_optimizer_state"]["state"].values()]}


def test_fairseq_average_checkpoints(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "ng").mkdir()
    assert_same(fairseq_average(ng, tmp_path / "ng"), fairseq_average(torch, tmp_path / "torch"))


# 10. Polyak-averaged target networks (DDPG / TD3 / Spinning Up) --------------------------------

def polyak(lib):
    F = lib.nn.functional

    def build(lib):
        return lib.nn.Sequential(lib.nn.Linear(6, 8), lib.nn.ReLU(), lib.nn.Linear(8, 1))

    def soft_update(target, source, tau):
        for target_param, param in zip(target.parameters(), source.parameters()):
            target_param.data.copy_(tau * param.data + (1.0 - tau) * target_param.data)

    def hard_update(target, source):
        for target_param, param in zip(target.parameters(), source.parameters()):
            target_param.data.copy_(param.data)

    critic = seeded(lib, build)
    critic_target = copy.deepcopy(critic)
    ac_targ = seeded(lib, build, seed=1)
    hard_update(ac_targ, critic)
    for p in ac_targ.parameters():
        p.requires_grad = False
    critic_optimizer = lib.optim.Adam(critic.parameters(), lr=1e-2)
    s = lib.tensor(np.concatenate([X[:, :5], R], axis=1))
    r = lib.tensor(R[:, 0])
    losses = []
    for _ in range(6):
        with lib.no_grad():
            target_Q = r.unsqueeze(1) + 0.99 * critic_target(s).detach()
            q_pi_targ = ac_targ(s)
        current_Q = critic(s)
        critic_loss = F.mse_loss(current_Q, target_Q) + 0.1 * ((current_Q - q_pi_targ) ** 2).mean()
        critic_optimizer.zero_grad()
        critic_loss.backward()
        critic_optimizer.step()
        losses.append(critic_loss.item())
        soft_update(critic_target, critic, 0.05)
        with lib.no_grad():  # Spinning Up's in-place Polyak update
            for p, p_targ in zip(critic.parameters(), ac_targ.parameters()):
                p_targ.data.mul_(0.995)
                p_targ.data.add_((1 - 0.995) * p.data)
    return {"loss": losses, "target": arrays(critic_target.state_dict()),
            "ac_targ": arrays(ac_targ.state_dict()),
            "flags": [p.requires_grad for p in ac_targ.parameters()]
            + [p.grad is None for p in critic_target.parameters()]}


def test_polyak_target_networks():
    both(polyak)


# 11. Lookahead (lonePatient/lookahead_pytorch) with momentum pull-back -----------------------

def lookahead(lib, pullback_momentum: str = "pullback"):
    F = lib.nn.functional
    Optimizer = lib.optim.Optimizer

    class Lookahead(Optimizer):
        def __init__(self, optimizer, alpha=0.5, k=6, pullback_momentum="none"):
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"Invalid slow update rate: {alpha}")
            if not 1 <= k:
                raise ValueError(f"Invalid lookahead steps: {k}")
            self.optimizer = optimizer
            self.param_groups = self.optimizer.param_groups
            self.alpha = alpha
            self.k = k
            self.step_counter = 0
            assert pullback_momentum in ["reset", "pullback", "none"]
            self.pullback_momentum = pullback_momentum
            self.state = defaultdict(dict)
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    param_state = self.state[p]
                    param_state["cached_params"] = lib.zeros_like(p.data)
                    param_state["cached_params"].copy_(p.data)

        def zero_grad(self):
            self.optimizer.zero_grad()

        def state_dict(self):
            return self.optimizer.state_dict()

        def load_state_dict(self, state_dict):
            self.optimizer.load_state_dict(state_dict)

        def _backup_and_load_cache(self):
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    param_state = self.state[p]
                    param_state["backup_params"] = lib.zeros_like(p.data)
                    param_state["backup_params"].copy_(p.data)
                    p.data.copy_(param_state["cached_params"])

        def _clear_and_load_backup(self):
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    param_state = self.state[p]
                    p.data.copy_(param_state["backup_params"])
                    del param_state["backup_params"]

        def step(self, closure=None):
            loss = self.optimizer.step(closure)
            self.step_counter += 1
            if self.step_counter >= self.k:
                self.step_counter = 0
                for group in self.optimizer.param_groups:
                    for p in group["params"]:
                        param_state = self.state[p]
                        p.data.mul_(self.alpha).add_(param_state["cached_params"],
                                                     alpha=1.0 - self.alpha)
                        param_state["cached_params"].copy_(p.data)
                        if self.pullback_momentum == "pullback":
                            internal_momentum = self.optimizer.state[p]["momentum_buffer"]
                            self.optimizer.state[p]["momentum_buffer"] = internal_momentum.mul_(
                                self.alpha).add_(param_state["cached_mom"],
                                                 alpha=1.0 - self.alpha)
                            param_state["cached_mom"] = self.optimizer.state[p]["momentum_buffer"]
                        elif self.pullback_momentum == "reset":
                            self.optimizer.state[p]["momentum_buffer"] = lib.zeros_like(p.data)
            return loss

    model = seeded(lib, mlp_bn)
    base = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer = Lookahead(base, alpha=0.5, k=3, pullback_momentum=pullback_momentum)
    if pullback_momentum == "pullback":
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p]["cached_mom"] = lib.zeros_like(p.data)
    losses, evals = [], []
    for step in range(10):
        i = (10 * step) % 40
        model.train()
        optimizer.zero_grad()
        loss = F.nll_loss(model(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10]))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 4 == 3:  # evaluate on the slow weights
            optimizer._backup_and_load_cache()
            model.eval()
            with lib.no_grad():
                evals.append(F.nll_loss(model(lib.tensor(XT)), lib.tensor(YT)).item())
            optimizer._clear_and_load_backup()
    return {"loss": losses, "eval": evals, "w": arrays(model.state_dict()),
            "mom": [base.state[p]["momentum_buffer"] for p in model.parameters()],
            "cached": [optimizer.state[p]["cached_params"] for p in model.parameters()]}


@pytest.mark.parametrize("pullback", ["pullback", "reset", "none"])
def test_lookahead_slow_weights_momentum(pullback):
    both(lookahead, pullback)


def timm_lookahead(lib, resume: bool = False):
    """timm's Lookahead wrapper: its slow weights live in the base optimiser's state
    (``base.state[p]['lookahead_slow_buff']``), its settings in the base's param groups, and
    its state dict is the base's (slow buffers included)."""
    F = lib.nn.functional
    Optimizer = lib.optim.Optimizer

    class Lookahead(Optimizer):
        def __init__(self, base_optimizer, alpha=0.5, k=6):
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"Invalid slow update rate: {alpha}")
            if not 1 <= k:
                raise ValueError(f"Invalid lookahead steps: {k}")
            defaults = dict(lookahead_alpha=alpha, lookahead_k=k, lookahead_step=0)
            self._base_optimizer = base_optimizer
            self.param_groups = base_optimizer.param_groups
            self.defaults = base_optimizer.defaults
            self.defaults.update(defaults)
            self.state = defaultdict(dict)
            # (super().__init__() is not called: the hook tables PyTorch's step wrapper reads)
            self._optimizer_step_pre_hooks = OrderedDict()
            self._optimizer_step_post_hooks = OrderedDict()
            for name, default in defaults.items():
                for group in self._base_optimizer.param_groups:
                    group.setdefault(name, default)

        @lib.no_grad()
        def update_slow(self, group):
            for fast_p in group["params"]:
                if fast_p.grad is None:
                    continue
                param_state = self._base_optimizer.state[fast_p]
                if "lookahead_slow_buff" not in param_state:
                    param_state["lookahead_slow_buff"] = lib.empty_like(fast_p)
                    param_state["lookahead_slow_buff"].copy_(fast_p)
                slow = param_state["lookahead_slow_buff"]
                slow.add_(fast_p - slow, alpha=group["lookahead_alpha"])
                fast_p.copy_(slow)

        def sync_lookahead(self):
            for group in self._base_optimizer.param_groups:
                self.update_slow(group)

        @lib.no_grad()
        def step(self, closure=None):
            loss = self._base_optimizer.step(closure)
            for group in self._base_optimizer.param_groups:
                group["lookahead_step"] += 1
                if group["lookahead_step"] % group["lookahead_k"] == 0:
                    self.update_slow(group)
            return loss

        def state_dict(self):
            return self._base_optimizer.state_dict()

        def load_state_dict(self, state_dict):
            self._base_optimizer.load_state_dict(state_dict)
            self.param_groups = self._base_optimizer.param_groups

    def make(model):
        return Lookahead(lib.optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.01),
                         alpha=0.5, k=3)

    model = seeded(lib, mlp_bn)
    optimizer = make(model)
    scheduler = None if resume else lib.optim.lr_scheduler.StepLR(optimizer, 4, gamma=0.5)
    losses, lrs = [], []
    for step in range(10):
        i = (10 * step) % 40
        model.train()
        optimizer.zero_grad()
        loss = F.nll_loss(model(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10]))
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
            lrs.append(scheduler.get_last_lr())
        losses.append(loss.item())
        if resume and step == 4:
            saved = copy.deepcopy(optimizer.state_dict())
            optimizer = make(model)
            optimizer.load_state_dict(saved)
    optimizer.sync_lookahead()
    sd = optimizer.state_dict()
    return {"loss": losses, "lr": lrs, "w": arrays(model.state_dict()),
            "keys": [sorted(v) for v in sd["state"].values()],
            "slow": [v["lookahead_slow_buff"] for v in sd["state"].values()],
            "groups": [{k: v for k, v in g.items() if k.startswith("lookahead")}
                       for g in sd["param_groups"]]}


@pytest.mark.parametrize("resume", [False, True])
def test_timm_lookahead_slow_buffers_in_base_state(resume):
    both(timm_lookahead, resume)


# 12. What averaging code relies on in state_dict() and load_state_dict() -----------------------

def state_dict_semantics(lib):
    F = lib.nn.functional
    model = seeded(lib, mlp_bn)
    out = {}
    sd = model.state_dict()
    out["type"] = type(sd).__name__
    out["order"] = list(sd)
    out["detached"] = [v.requires_grad for v in sd.values()]
    out["leaf"] = [v.is_leaf for v in sd.values()]
    out["param_type"] = [type(v).__name__ for v in sd.values()]
    sd["fc1.weight"].add_(1.0)  # a state-dict entry is the parameter's memory
    sd["bn1.running_var"].mul_(2.0)
    out["shared"] = [float(model.fc1.weight[0, 0]), float(model.bn1.running_var[0])]
    kv = model.state_dict(keep_vars=True)
    out["keep_vars"] = [v is getattr(model, k.split(".")[0]).__getattr__(k.split(".")[1])
                        for k, v in kv.items()]
    out["keep_vars_grad"] = [v.requires_grad for v in kv.values()]
    out["prefixed"] = list(model.state_dict(prefix="net."))
    snapshot = copy.deepcopy(model.state_dict())
    model.fc2.bias.data.add_(5.0)
    out["deepcopy_independent"] = snapshot["fc2.bias"]
    clones = {k: v.clone() for k, v in model.state_dict().items()}
    # strict=False: missing and unexpected keys, PyTorch's named tuple
    partial = OrderedDict((k, v) for k, v in clones.items() if not k.startswith("fc2"))
    partial["head.weight"] = lib.zeros(3, 8, dtype=lib.float64)
    res = model.load_state_dict(partial, strict=False)
    out["strict_false"] = [res.missing_keys, res.unexpected_keys, list(res), list(res._fields)]
    out["all_matched"] = repr(model.load_state_dict(clones))
    with pytest.raises(RuntimeError, match="fc2.weight"):
        model.load_state_dict(partial)
    with pytest.raises(RuntimeError, match="size mismatch"):
        bad = dict(clones)
        bad["fc2.weight"] = lib.zeros(2, 8, dtype=lib.float64)
        model.load_state_dict(bad)
    # load_state_dict after optimiser steps: the optimiser keeps working on the loaded values
    opt = lib.optim.Adam(model.parameters(), lr=0.05, foreach=False)
    sgd_model = copy.deepcopy(model)
    sgd = lib.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9)
    x, y = lib.tensor(X), lib.tensor(Y)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for step in range(8):
        for m, o in ((model, opt), (sgd_model, sgd)):
            o.zero_grad(set_to_none=step % 2 == 0)
            loss = F.nll_loss(m(x), y)
            loss.backward()
            o.step()
            losses.append(loss.item())
        if step == 3:  # restore the start (early stopping's "best" weights), keep the state
            model.load_state_dict(start)
            sgd_model.load_state_dict(model.state_dict())
        if step == 5:  # FedProx's dispatch: new memory for each parameter
            for old, new in zip(sgd_model.parameters(), model.parameters()):
                old.data = new.data.clone()
    out["losses"] = losses
    out["after"] = arrays(model.state_dict())
    out["sgd_after"] = arrays(sgd_model.state_dict())
    out["mom"] = [sgd.state[p]["momentum_buffer"] for p in sgd_model.parameters()]
    out["adam"] = arrays({str(i): v["exp_avg"] for i, v in opt.state_dict()["state"].items()})
    # assign=True: the optimiser still holds the old parameters, as in PyTorch
    fresh = {k: v.clone() for k, v in start.items()}
    model.load_state_dict(fresh, assign=True)
    opt.zero_grad()
    F.nll_loss(model(x), y).backward()
    opt.step()
    out["assign"] = [model.fc1.weight is not p for p in opt.param_groups[0]["params"][:1]]
    out["assign_w"] = arrays(model.state_dict())
    out["assign_grad"] = model.fc1.weight.grad
    return out


def test_state_dict_semantics_and_reload_under_optimizers():
    both(state_dict_semantics)


# 12b. timgaripov/swa's own utilities, pytorch_ema's ExponentialMovingAverage, FedOpt servers --

def timgaripov_swa(lib):
    """The SWA paper's code: ``moving_average`` with ``.data *=`` / ``+=``, and ``bn_update``
    resetting batch norm's buffers by assignment and setting a per-batch momentum."""
    F = lib.nn.functional

    def moving_average(net1, net2, alpha=1):
        for param1, param2 in zip(net1.parameters(), net2.parameters()):
            param1.data *= (1.0 - alpha)
            param1.data += param2.data * alpha

    def _check_bn(module, flag):
        if issubclass(module.__class__, lib.nn.modules.batchnorm._BatchNorm):
            flag[0] = True

    def check_bn(model):
        flag = [False]
        model.apply(lambda module: _check_bn(module, flag))
        return flag[0]

    def reset_bn(module):
        if issubclass(module.__class__, lib.nn.modules.batchnorm._BatchNorm):
            module.running_mean = lib.zeros_like(module.running_mean)
            module.running_var = lib.ones_like(module.running_var)

    def _get_momenta(module, momenta):
        if issubclass(module.__class__, lib.nn.modules.batchnorm._BatchNorm):
            momenta[module] = module.momentum

    def _set_momenta(module, momenta):
        if issubclass(module.__class__, lib.nn.modules.batchnorm._BatchNorm):
            module.momentum = momenta[module]

    def bn_update(loader, model):
        if not check_bn(model):
            return
        model.train()
        momenta = {}
        model.apply(reset_bn)
        model.apply(lambda module: _get_momenta(module, momenta))
        n = 0
        for input, _ in loader:
            input_var = lib.autograd.Variable(input)
            b = input_var.data.size(0)
            momentum = b / (n + b)
            for module in momenta.keys():
                module.momentum = momentum
            model(input_var)
            n += b
        model.apply(lambda module: _set_momenta(module, momenta))

    def learning_rate_schedule(base_lr, epoch, total_epochs, swa_lr):
        alpha = epoch / total_epochs
        if alpha <= 0.5:
            factor = 1.0
        elif alpha <= 0.9:
            factor = 1.0 - (alpha - 0.5) / 0.4 * (1 - swa_lr / base_lr)
        else:
            factor = swa_lr / base_lr
        return base_lr * factor

    def adjust_learning_rate(optimizer, lr):
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        return lr

    model = seeded(lib, mlp_bn)
    swa_model = seeded(lib, mlp_bn, seed=1)
    swa_n = 0
    optimizer = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = [(lib.tensor(X[i:i + 8]), lib.tensor(Y[i:i + 8])) for i in range(0, 40, 8)]
    out = {"lr": [], "loss": []}
    for epoch in range(6):
        lr = learning_rate_schedule(0.1, epoch, 6, 0.02)
        adjust_learning_rate(optimizer, lr)
        model.train()
        for input, target in loader:
            loss = F.nll_loss(model(input), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out["loss"].append(loss.item())
        if epoch + 1 >= 3:
            moving_average(swa_model, model, 1.0 / (swa_n + 1))
            swa_n += 1
            bn_update(loader, swa_model)
        out["lr"].append(lr)
    swa_model.eval()
    with lib.no_grad():
        out["test"] = F.nll_loss(swa_model(lib.tensor(XT)), lib.tensor(YT)).item()
    out["swa"] = arrays(swa_model.state_dict())
    out["momentum"] = swa_model.bn1.momentum
    out["buffers"] = [k for k, _ in swa_model.named_buffers()]
    return out


def test_timgaripov_swa_moving_average_bn_update():
    both(timgaripov_swa)


def pytorch_ema(lib, tmp_path):
    """fadel/pytorch_ema's ExponentialMovingAverage: shadow copies, weak references to the
    parameters, ``average_parameters()`` around evaluation, its state saved in a checkpoint."""
    import contextlib
    import weakref

    F = lib.nn.functional

    class ExponentialMovingAverage:
        def __init__(self, parameters, decay, use_num_updates=True):
            if decay < 0.0 or decay > 1.0:
                raise ValueError("Decay must be between 0 and 1")
            self.decay = decay
            self.num_updates = 0 if use_num_updates else None
            parameters = list(parameters)
            self.shadow_params = [p.clone().detach() for p in parameters]
            self.collected_params = None
            self._params_refs = [weakref.ref(p) for p in parameters]

        def _get_parameters(self, parameters):
            if parameters is None:
                parameters = [p() for p in self._params_refs]
                if any(p is None for p in parameters):
                    raise ValueError("(One of) the parameters with which this "
                                     "ExponentialMovingAverage was initialized no longer exists")
                return parameters
            parameters = list(parameters)
            if len(parameters) != len(self.shadow_params):
                raise ValueError("Number of parameters passed as argument is different from "
                                 "number of shadow parameters maintained by this EMA")
            return parameters

        def update(self, parameters=None):
            parameters = self._get_parameters(parameters)
            decay = self.decay
            if self.num_updates is not None:
                self.num_updates += 1
                decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
            one_minus_decay = 1.0 - decay
            with lib.no_grad():
                for s_param, param in zip(self.shadow_params, parameters):
                    tmp = (s_param - param)
                    tmp.mul_(one_minus_decay)
                    s_param.sub_(tmp)

        def copy_to(self, parameters=None):
            parameters = self._get_parameters(parameters)
            for s_param, param in zip(self.shadow_params, parameters):
                param.data.copy_(s_param.data)

        def store(self, parameters=None):
            parameters = self._get_parameters(parameters)
            self.collected_params = [param.clone() for param in parameters]

        def restore(self, parameters=None):
            if self.collected_params is None:
                raise RuntimeError("This ExponentialMovingAverage has no `store()`ed weights "
                                   "to `restore()`")
            parameters = self._get_parameters(parameters)
            for c_param, param in zip(self.collected_params, parameters):
                param.data.copy_(c_param.data)

        @contextlib.contextmanager
        def average_parameters(self, parameters=None):
            parameters = self._get_parameters(parameters)
            self.store(parameters)
            self.copy_to(parameters)
            try:
                yield
            finally:
                self.restore(parameters)

        def state_dict(self) -> dict:
            return {"decay": self.decay, "num_updates": self.num_updates,
                    "shadow_params": self.shadow_params,
                    "collected_params": self.collected_params}

        def load_state_dict(self, state_dict: dict) -> None:
            state_dict = copy.deepcopy(state_dict)
            self.decay = state_dict["decay"]
            self.num_updates = state_dict["num_updates"]
            self.shadow_params = state_dict["shadow_params"]
            assert len(self.shadow_params) == len(self._params_refs)
            assert all(isinstance(p, lib.Tensor) for p in self.shadow_params)
            self.collected_params = state_dict["collected_params"]

    model = seeded(lib, mlp_bn)
    optimizer = lib.optim.Adam(model.parameters(), lr=0.02)
    ema = ExponentialMovingAverage(model.parameters(), decay=0.95)
    out = {"loss": [], "eval": []}
    for step in range(8):
        i = (10 * step) % 40
        model.train()
        optimizer.zero_grad()
        loss = F.nll_loss(model(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10]))
        loss.backward()
        optimizer.step()
        ema.update()
        out["loss"].append(loss.item())
        if step % 3 == 2:
            model.eval()
            with ema.average_parameters(), lib.no_grad():
                out["eval"].append(F.nll_loss(model(lib.tensor(XT)), lib.tensor(YT)).item())
    path = tmp_path / ("ckpt.pt" if lib is torch else "ckpt.safetensors")
    lib.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
              "ema": ema.state_dict()}, path)
    ckpt = lib.load(path)
    model2 = seeded(lib, mlp_bn, seed=3)
    model2.load_state_dict(ckpt["model"])
    ema2 = ExponentialMovingAverage(model2.parameters(), decay=0.5)
    ema2.load_state_dict(ckpt["ema"])
    ema2.copy_to()
    out["restored"] = arrays(model2.state_dict())
    out["ema_state"] = [ema2.decay, ema2.num_updates, ema2.collected_params is None]
    out["shadow"] = ema2.shadow_params
    out["model"] = arrays(model.state_dict())
    return out


def test_pytorch_ema_weakrefs_context_checkpoint(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "ng").mkdir()
    assert_same(pytorch_ema(ng, tmp_path / "ng"), pytorch_ema(torch, tmp_path / "torch"))


def fedopt(lib, server: str = "adam"):
    """FedOpt (Reddi et al.): the server steps an optimiser on the pseudo-gradient, the global
    weights minus the clients' weighted mean, written into ``p.grad`` by hand (FedAvgM with
    server momentum, FedAdam)."""
    F = lib.nn.functional
    global_model = seeded(lib, mlp_bn)
    if server == "adam":
        server_opt = lib.optim.Adam(global_model.parameters(), lr=0.05, betas=(0.9, 0.99),
                                    eps=1e-3)
    else:
        server_opt = lib.optim.SGD(global_model.parameters(), lr=1.0, momentum=0.9)
    splits = [(0, 12), (12, 26), (26, 40)]
    out = {"loss": []}
    for _ in range(3):
        states, sizes = [], []
        for lo, hi in splits:
            client = copy.deepcopy(global_model)
            client.train()
            opt = lib.optim.SGD(client.parameters(), lr=0.1)
            for i in range(lo, hi, 7):
                opt.zero_grad()
                loss = F.nll_loss(client(lib.tensor(X[i:min(i + 7, hi)])),
                                  lib.tensor(Y[i:min(i + 7, hi)]))
                loss.backward()
                opt.step()
            states.append(client.state_dict())
            sizes.append(hi - lo)
            out["loss"].append(loss.item())
        total = sum(sizes)
        avg = {k: sum(sd[k] * (n / total) for sd, n in zip(states, sizes))
               for k in states[0] if states[0][k].is_floating_point()}
        server_opt.zero_grad()
        for name, p in global_model.named_parameters():
            p.grad = p.data - avg[name]  # the pseudo-gradient
        server_opt.step()
        with lib.no_grad():  # the buffers are averaged plainly
            for name, b in global_model.named_buffers():
                if name in avg:
                    b.copy_(avg[name])
                else:
                    b.copy_(max(sd[name] for sd in states))
    out["global"] = arrays(global_model.state_dict())
    out["server_state"] = [arrays(v) for v in server_opt.state_dict()["state"].values()]
    return out


@pytest.mark.parametrize("server", ["adam", "sgd"])
def test_fedopt_server_optimizer_on_pseudo_gradients(server):
    both(fedopt, server)


def diffusers_ema(lib, foreach: bool = False):
    """diffusers' EMAModel: shadow parameters, warmup decay, frozen parameters copied rather
    than averaged, ``_foreach_sub_``/``_foreach_copy_(non_blocking=True)``, ``store``/
    ``copy_to``/``restore`` around evaluation, its state dict loaded into a fresh one."""
    import contextlib

    F = lib.nn.functional

    class EMAModel:
        def __init__(self, parameters, decay=0.9999, min_decay=0.0, update_after_step=0,
                     use_ema_warmup=False, inv_gamma=1.0, power=2 / 3, foreach=False):
            parameters = list(parameters)
            self.shadow_params = [p.clone().detach() for p in parameters]
            self.temp_stored_params = None
            self.decay = decay
            self.min_decay = min_decay
            self.update_after_step = update_after_step
            self.use_ema_warmup = use_ema_warmup
            self.inv_gamma = inv_gamma
            self.power = power
            self.optimization_step = 0
            self.cur_decay_value = None
            self.foreach = foreach

        def get_decay(self, optimization_step: int) -> float:
            step = max(0, optimization_step - self.update_after_step - 1)
            if step <= 0:
                return 0.0
            if self.use_ema_warmup:
                cur_decay_value = 1 - (1 + step / self.inv_gamma) ** -self.power
            else:
                cur_decay_value = (1 + step) / (10 + step)
            cur_decay_value = min(cur_decay_value, self.decay)
            cur_decay_value = max(cur_decay_value, self.min_decay)
            return cur_decay_value

        @lib.no_grad()
        def step(self, parameters):
            parameters = list(parameters)
            self.optimization_step += 1
            decay = self.get_decay(self.optimization_step)
            self.cur_decay_value = decay
            one_minus_decay = 1 - decay
            context_manager = contextlib.nullcontext
            if self.foreach:
                with context_manager():
                    params_grad = [param for param in parameters if param.requires_grad]
                    s_params_grad = [s_param for s_param, param in
                                     zip(self.shadow_params, parameters) if param.requires_grad]
                    if len(params_grad) < len(parameters):
                        lib._foreach_copy_(
                            [s_param for s_param, param in zip(self.shadow_params, parameters)
                             if not param.requires_grad],
                            [param for param in parameters if not param.requires_grad],
                            non_blocking=True)
                    lib._foreach_sub_(s_params_grad,
                                      lib._foreach_sub(s_params_grad, params_grad),
                                      alpha=one_minus_decay)
            else:
                for s_param, param in zip(self.shadow_params, parameters):
                    with context_manager():
                        if param.requires_grad:
                            s_param.sub_(one_minus_decay * (s_param - param))
                        else:
                            s_param.copy_(param)

        def copy_to(self, parameters) -> None:
            parameters = list(parameters)
            if self.foreach:
                lib._foreach_copy_(
                    [param.data for param in parameters],
                    [s_param.to(param.device).data for s_param, param in
                     zip(self.shadow_params, parameters)])
            else:
                for s_param, param in zip(self.shadow_params, parameters):
                    param.data.copy_(s_param.to(param.device).data)

        def to(self, device=None, dtype=None, non_blocking=False) -> None:
            self.shadow_params = [
                p.to(device=device, dtype=dtype, non_blocking=non_blocking)
                if p.is_floating_point() else p.to(device=device, non_blocking=non_blocking)
                for p in self.shadow_params]

        def state_dict(self) -> dict:
            return {"decay": self.decay, "min_decay": self.min_decay,
                    "optimization_step": self.optimization_step,
                    "update_after_step": self.update_after_step,
                    "use_ema_warmup": self.use_ema_warmup, "inv_gamma": self.inv_gamma,
                    "power": self.power, "shadow_params": self.shadow_params}

        def store(self, parameters) -> None:
            self.temp_stored_params = [param.detach().cpu().clone() for param in parameters]

        def restore(self, parameters) -> None:
            if self.temp_stored_params is None:
                raise RuntimeError("This ExponentialMovingAverage has no `store()`ed weights")
            if self.foreach:
                lib._foreach_copy_([param.data for param in parameters],
                                   [c_param.data for c_param in self.temp_stored_params])
            else:
                for c_param, param in zip(self.temp_stored_params, parameters):
                    param.data.copy_(c_param.data)
            self.temp_stored_params = None

        def load_state_dict(self, state_dict: dict) -> None:
            state_dict = copy.deepcopy(state_dict)
            self.decay = state_dict.get("decay", self.decay)
            self.optimization_step = state_dict.get("optimization_step",
                                                    self.optimization_step)
            self.use_ema_warmup = state_dict.get("use_ema_warmup", self.use_ema_warmup)
            self.power = state_dict.get("power", self.power)
            shadow_params = state_dict.get("shadow_params", None)
            if shadow_params is not None:
                self.shadow_params = shadow_params
                if not isinstance(self.shadow_params, list):
                    raise ValueError("shadow_params must be a list")
                if not all(isinstance(p, lib.Tensor) for p in self.shadow_params):
                    raise ValueError("shadow_params must all be Tensors")

    model = seeded(lib, mlp_bn)
    model.fc1.requires_grad_(False)  # a frozen layer: copied, not averaged
    optimizer = lib.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.02)
    ema = EMAModel(model.parameters(), decay=0.99, use_ema_warmup=True, power=3 / 4,
                   update_after_step=1, foreach=foreach)
    out = {"loss": [], "eval": [], "decay": []}
    for step in range(9):
        i = (10 * step) % 40
        model.train()
        optimizer.zero_grad()
        loss = F.nll_loss(model(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10]))
        loss.backward()
        optimizer.step()
        if step == 4:  # the frozen layer is changed by hand: the EMA copies it
            with lib.no_grad():
                model.fc1.weight.mul_(0.5)
        ema.step(model.parameters())
        out["loss"].append(loss.item())
        out["decay"].append(ema.cur_decay_value)
        if step % 4 == 3:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            model.eval()
            with lib.no_grad():
                out["eval"].append(F.nll_loss(model(lib.tensor(XT)), lib.tensor(YT)).item())
            ema.restore(model.parameters())
    fresh = EMAModel(model.parameters(), foreach=foreach)
    fresh.load_state_dict(ema.state_dict())
    fresh.to(dtype=lib.float64)
    out["shadow"] = fresh.shadow_params
    out["w"] = arrays(model.state_dict())
    out["step"] = fresh.optimization_step
    return out


@pytest.mark.parametrize("foreach", [False, True])
def test_diffusers_ema_model_frozen_params_store_restore(foreach):
    both(diffusers_ema, foreach)


def awd_asgd(lib):
    """AWD-LSTM's switch from SGD to ASGD (non-monotonically triggered) and its evaluation on
    the averaged weights: ``prm.data = optimizer.state[prm]['ax'].clone()``, then the training
    weights put back with ``prm.data = tmp[prm].clone()``, and training goes on."""
    F = lib.nn.functional

    def build(lib):
        nn = lib.nn
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))

    model = seeded(lib, build)
    xr, yr = lib.tensor(X), lib.tensor(R)

    def evaluate():
        model.eval()
        with lib.no_grad():
            return F.mse_loss(model(lib.tensor(XT)), lib.tensor(R[:20])).item()

    optimizer = lib.optim.SGD(model.parameters(), lr=0.2, weight_decay=1.2e-6)
    best_val_loss, stored_loss, out = [], 1e8, {"train": [], "val": [], "val2": []}
    for epoch in range(1, 9):
        model.train()
        for i in range(0, 40, 10):
            optimizer.zero_grad()
            loss = F.mse_loss(model(xr[i:i + 10]), yr[i:i + 10])
            loss.backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            optimizer.step()
            out["train"].append(loss.item())
        if "t0" in optimizer.param_groups[0]:
            tmp = {}
            for prm in model.parameters():
                tmp[prm] = prm.data.clone()
                prm.data = optimizer.state[prm]["ax"].clone()
            val_loss2 = evaluate()
            out["val2"].append(val_loss2)
            if val_loss2 < stored_loss:
                stored_loss = val_loss2
            for prm in model.parameters():
                prm.data = tmp[prm].clone()
        else:
            val_loss = evaluate()
            out["val"].append(val_loss)
            if val_loss < stored_loss:
                stored_loss = val_loss
            if epoch >= 3:  # (nonmono=2: worse than two epochs ago, or the third epoch here)
                optimizer = lib.optim.ASGD(model.parameters(), lr=0.2, t0=0, lambd=0.,
                                           weight_decay=1.2e-6)
            best_val_loss.append(val_loss)
    out["w"] = arrays(model.state_dict())
    out["ax"] = [optimizer.state[p]["ax"] for p in model.parameters()]
    out["eta_mu"] = [[float(optimizer.state[p]["eta"]), float(optimizer.state[p]["mu"])]
                     for p in model.parameters()]
    return out


def test_awd_lstm_asgd_averaged_weights_by_data_assignment(float64_default):
    """(PyTorch keeps ASGD's eta and mu in its default dtype: float64 here, as nodegrad's.)"""
    both(awd_asgd)


def swag(lib):
    """SWA-Gaussian (wjmaddox/swa_gaussian): each parameter popped from ``_parameters`` and
    replaced by ``_mean``/``_sq_mean``/``_cov_mat_sqrt`` buffers (reassigned with new shapes as
    models are collected), weights sampled as plain tensor attributes, its state dict loaded
    into a fresh SWAG after resizing the buffers. (The Gaussian draws come from one NumPy
    stream, in the order ``torch.randn_like`` and ``normal_`` would make them.)"""
    F = lib.nn.functional
    noise = iter(draw(400, seed=11))

    def randn_like(t):
        n = t.numel()
        return lib.tensor(np.array([next(noise) for _ in range(n)])).view_as(t).to(t.dtype)

    def swag_parameters(module, params, no_cov_mat=True):
        for name in list(module._parameters.keys()):
            if module._parameters[name] is None:
                continue
            data = module._parameters[name].data
            module._parameters.pop(name)
            module.register_buffer("%s_mean" % name, data.new(data.size()).zero_())  # noqa: UP031
            module.register_buffer("%s_sq_mean" % name, data.new(data.size()).zero_())  # noqa: UP031
            if no_cov_mat is False:
                module.register_buffer("%s_cov_mat_sqrt" % name,  # noqa: UP031
                                       data.new_empty((0, data.numel())).zero_())
            params.append((module, name))

    def base(lib):
        nn = lib.nn
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))

    class SWAG(lib.nn.Module):
        def __init__(self, base, no_cov_mat=True, max_num_models=0, var_clamp=1e-30):
            super(SWAG, self).__init__()  # noqa: UP008
            self.register_buffer("n_models", lib.zeros([1], dtype=lib.long))
            self.params = list()
            self.no_cov_mat = no_cov_mat
            self.max_num_models = max_num_models
            self.var_clamp = var_clamp
            self.base = base(lib).double()
            self.base.apply(lambda module: swag_parameters(module=module, params=self.params,
                                                           no_cov_mat=self.no_cov_mat))

        def forward(self, *args, **kwargs):
            return self.base(*args, **kwargs)

        def sample(self, scale=1.0, cov=False, fullrank=True):
            for module, name in self.params:
                mean = module.__getattr__("%s_mean" % name)  # noqa: UP031
                sq_mean = module.__getattr__("%s_sq_mean" % name)  # noqa: UP031
                eps = randn_like(mean)
                var = lib.clamp(sq_mean - mean ** 2, self.var_clamp)
                scaled_diag_sample = scale * lib.sqrt(var) * eps
                if cov is True:
                    cov_mat_sqrt = module.__getattr__("%s_cov_mat_sqrt" % name)  # noqa: UP031
                    eps = randn_like(cov_mat_sqrt.new_empty((cov_mat_sqrt.size(0), 1)))
                    cov_sample = (scale / ((self.max_num_models - 1) ** 0.5)) * \
                        cov_mat_sqrt.t().matmul(eps).view_as(mean)
                    w = mean + scaled_diag_sample + cov_sample if fullrank \
                        else mean + scaled_diag_sample
                else:
                    w = mean + scaled_diag_sample
                module.__setattr__(name, w)

        def collect_model(self, base_model):
            for (module, name), base_param in zip(self.params, base_model.parameters()):
                mean = module.__getattr__("%s_mean" % name)  # noqa: UP031
                sq_mean = module.__getattr__("%s_sq_mean" % name)  # noqa: UP031
                mean = mean * self.n_models.item() / (self.n_models.item() + 1.0) + \
                    base_param.data / (self.n_models.item() + 1.0)
                sq_mean = sq_mean * self.n_models.item() / (self.n_models.item() + 1.0) + \
                    base_param.data ** 2 / (self.n_models.item() + 1.0)
                if self.no_cov_mat is False:
                    cov_mat_sqrt = module.__getattr__("%s_cov_mat_sqrt" % name)  # noqa: UP031
                    dev = (base_param.data - mean).view(-1, 1)
                    cov_mat_sqrt = lib.cat((cov_mat_sqrt, dev.view(-1, 1).t()), dim=0)
                    if (self.n_models.item() + 1) > self.max_num_models:
                        cov_mat_sqrt = cov_mat_sqrt[1:, :]
                    module.__setattr__("%s_cov_mat_sqrt" % name, cov_mat_sqrt)  # noqa: UP031
                module.__setattr__("%s_mean" % name, mean)  # noqa: UP031
                module.__setattr__("%s_sq_mean" % name, sq_mean)  # noqa: UP031
            self.n_models.add_(1)

        def load_state_dict(self, state_dict, strict=True):
            if not self.no_cov_mat:
                n_models = state_dict["n_models"].item()
                rank = min(n_models, self.max_num_models)
                for module, name in self.params:
                    mean = module.__getattr__("%s_mean" % name)  # noqa: UP031
                    module.__setattr__("%s_cov_mat_sqrt" % name,  # noqa: UP031
                                       mean.new_empty((rank, mean.numel())).zero_())
            super(SWAG, self).load_state_dict(state_dict, strict)  # noqa: UP008

    model = seeded(lib, base)
    swag_model = SWAG(base, no_cov_mat=False, max_num_models=3)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = {"loss": [], "shapes": []}
    for epoch in range(6):
        for i in range(0, 40, 10):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10]))
            loss.backward()
            optimizer.step()
            out["loss"].append(loss.item())
        if epoch >= 1:
            swag_model.collect_model(model)
            out["shapes"].append(list(swag_model.base[0].weight_cov_mat_sqrt.shape))
    sd = swag_model.state_dict()
    out["keys"] = list(sd)
    out["sd"] = arrays(sd)
    fresh = SWAG(base, no_cov_mat=False, max_num_models=3)
    fresh.load_state_dict(sd)
    preds = []
    for cov in (False, True):
        fresh.sample(scale=0.5, cov=cov)
        fresh.eval()
        with lib.no_grad():
            preds.append(F.softmax(fresh(lib.tensor(XT)), dim=1))
    out["preds"] = preds
    out["sampled_is_param"] = [isinstance(fresh.base[0].weight, lib.nn.Parameter),
                               "weight" in dict(fresh.base[0].named_parameters())]
    return out


def test_swag_buffers_reassigned_and_sampled_weights():
    both(swag)


def yolo_ema(lib):
    """YOLOv5's ModelEMA: a deep copy of the de-paralleled model, every floating state-dict
    entry updated in place (``v *= d; v += (1 - d) * msd[k].detach()``, buffers included),
    a ramped decay, and ``copy_attr`` of the model's plain attributes. (The source tests
    ``v.dtype.is_floating_point``, a ``torch.dtype`` attribute; nodegrad's dtypes are NumPy's,
    so the port asks the tensor: ``v.is_floating_point()``.)"""
    F = lib.nn.functional
    nn = lib.nn
    deepcopy = copy.deepcopy

    def is_parallel(model):
        return type(model) in (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)

    def de_parallel(model):
        return model.module if is_parallel(model) else model

    def copy_attr(a, b, include=(), exclude=()):
        for k, v in b.__dict__.items():
            if (len(include) and k not in include) or k.startswith("_") or k in exclude:
                continue
            setattr(a, k, v)

    class ModelEMA:
        def __init__(self, model, decay=0.9999, tau=2000, updates=0):
            self.ema = deepcopy(de_parallel(model)).eval()
            self.updates = updates
            self.decay = lambda x: decay * (1 - math.exp(-x / tau))
            for p in self.ema.parameters():
                p.requires_grad_(False)

        def update(self, model):
            self.updates += 1
            d = self.decay(self.updates)
            msd = de_parallel(model).state_dict()
            for k, v in self.ema.state_dict().items():
                if v.is_floating_point():
                    v *= d
                    v += (1 - d) * msd[k].detach()

        def update_attr(self, model, include=(), exclude=("process_group", "reducer")):
            copy_attr(self.ema, model, include, exclude)

    model = seeded(lib, mlp_bn)
    model.nc, model.names = 3, ["a", "b", "c"]
    parallel = nn.DataParallel(model, device_ids=[])
    ema = ModelEMA(parallel, decay=0.99, tau=5)
    optimizer = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.937, nesterov=True)
    out = {"loss": []}
    for step in range(8):
        i = (10 * step) % 40
        parallel.train()
        optimizer.zero_grad()
        loss = F.nll_loss(parallel(lib.tensor(X[i:i + 10])), lib.tensor(Y[i:i + 10]))
        loss.backward()
        optimizer.step()
        ema.update(parallel)
        out["loss"].append(loss.item())
    ema.update_attr(model, include=["nc", "names"])
    with lib.no_grad():
        out["eval"] = F.nll_loss(ema.ema(lib.tensor(XT)), lib.tensor(YT)).item()
    out["ema"] = arrays(ema.ema.state_dict())
    out["attrs"] = [ema.ema.nc, ema.ema.names, ema.ema.training,
                    [p.requires_grad for p in ema.ema.parameters()], ema.updates]
    return out


def test_yolov5_model_ema_state_dict_in_place():
    both(yolo_ema)


# 13. Smaller checks the programs above found --------------------------------------------------

def int_ema(lib):
    """EMA arithmetic on integer tensors (``num_batches_tracked`` under timm's ModelEmaV2 and
    ``get_ema_multi_avg_fn``): ``int * float`` is the default float's arithmetic, as PyTorch
    computes it (the int cast to float32, then float32 products), then truncated by ``copy_``."""
    e = lib.arange(0, 400)
    ema = e.clone()
    ema.copy_(0.9 * ema + (1. - 0.9) * e)
    products = [e * 0.9, 0.9999 * e + (1 - 0.9999) * e, e * 0.1 + 0.5, e.float() * 0.9]
    model = seeded(lib, mlp_bn)
    avg = lib.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=lib.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True)
    nbt = []
    for _ in range(5):
        model(lib.tensor(X))
        avg.update_parameters(model)
        nbt.append(int(avg.module.bn1.num_batches_tracked))
    return {"ema": ema, "products": products, "dtypes": [str(p.dtype)[-7:] for p in products],
            "nbt": nbt}


def test_int_times_float_is_default_float_arithmetic():
    both(int_ema, tol=0.0)


def swa_multi_weight(lib):
    """``get_swa_multi_avg_fn`` lerps by the exact ``1 / (n_averaged + 1)``: PyTorch's under a
    float64 default dtype; under float32 PyTorch rounds that weight to float32 (documented)."""
    model = seeded(lib, mlp_bn)
    avg = lib.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=lib.optim.swa_utils.get_swa_multi_avg_fn())
    for i in range(4):
        with lib.no_grad():
            for p in model.parameters():
                p.mul_(0.9).add_(0.01 * i)
        avg.update_parameters(model)
    return arrays(avg.module.state_dict())


def test_swa_multi_avg_fn_weight_as_pytorchs(float64_default):
    both(swa_multi_weight, tol=1e-15)


def test_swa_multi_avg_fn_weight_under_float32_default():
    """The documented difference: PyTorch's weight rounded to float32, nodegrad's exact."""
    both(swa_multi_weight, tol=1e-7)


def live_state(lib, opt_name: str = "sgd"):
    """``optimizer.state[p]`` as PyTorch keeps it: SGD's holds only ``momentum_buffer``
    (nothing without momentum); a script's own ``state[p]["step"] += 1`` is read by the next
    step; an entry moved to a grown parameter (3D Gaussian splatting's densification: the
    state concatenated, the old key deleted, the new parameter keyed) keeps training."""
    p = lib.nn.Parameter(lib.ones(3, dtype=lib.float64))
    q = lib.nn.Parameter(lib.ones(2, dtype=lib.float64))
    sgd = lib.optim.SGD([p], lr=0.1, momentum=0.9)
    plain = lib.optim.SGD([q], lr=0.1)
    adam = lib.optim.Adam([p, q], lr=0.1)
    p.grad = lib.full((3,), 0.5, dtype=lib.float64)
    q.grad = lib.full((2,), -0.25, dtype=lib.float64)
    for opt in (sgd, plain, adam):
        opt.step()
    st = adam.state[p]
    st["step"] += 1  # a script's own bookkeeping, read by the next step
    adam.step()
    out = {"sgd": sorted(sgd.state[p]), "plain": sorted(plain.state[q]),
           "adam": sorted(adam.state[p]), "step": float(adam.state[p]["step"]),
           "len": [len(sgd.state[p]), len(plain.state[q])], "p": p.detach().clone()}
    opt = sgd if opt_name == "sgd" else adam
    group = opt.param_groups[0]
    stored_state = opt.state.get(group["params"][0], None)
    for k, v in stored_state.items():
        if isinstance(v, lib.Tensor) and v.dim() > 0:
            stored_state[k] = lib.cat((v, lib.zeros_like(v[:2])), dim=0)
    del opt.state[group["params"][0]]
    new_p = lib.nn.Parameter(lib.cat((group["params"][0].detach(),
                                      lib.ones(2, dtype=lib.float64))).requires_grad_(True))
    group["params"][0] = new_p
    opt.state[new_p] = stored_state
    for _ in range(2):
        new_p.grad = lib.linspace(-1, 1, 5, dtype=lib.float64)
        if opt is adam:
            q.grad = lib.full((2,), 0.5, dtype=lib.float64)
        opt.step()
    out["grown"] = new_p
    out["grown_state"] = {k: v for k, v in opt.state[new_p].items() if k != "step"}
    return out


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_live_optimizer_state_is_pytorchs(opt_name):
    both(live_state, opt_name)


FOREACH_KEYWORDS = [
    ("_foreach_mul_", {"scalar": 2.0}), ("_foreach_mul_", {"scalars": [2.0, 3.0]}),
    ("_foreach_mul_", {"other": "list"}), ("_foreach_mul", {"other": "tensor"}),
    ("_foreach_add_", {"scalar": 1.0}), ("_foreach_add_", {"other": "list", "alpha": 2.0}),
    ("_foreach_add", {"scalars": [1.0, 2.0]}), ("_foreach_div_", {"scalar": 2.0}),
    ("_foreach_sub_", {"scalar": 1.0}), ("_foreach_pow", {"exponent": 2.0}),
    ("_foreach_pow", {"exponent": [2.0, 3.0]}), ("_foreach_clamp_min_", {"scalar": 1.5}),
    ("_foreach_maximum_", {"scalar": 1.5}), ("_foreach_maximum", {"other": "list"}),
    ("_foreach_lerp_", {"tensors1": "list", "weight": 0.25}),
    ("_foreach_lerp_", {"tensors1": "list", "weights": "list"}),
    ("_foreach_addcmul_", {"tensor1": "list", "tensor2": "list", "value": 2.0}),
    ("_foreach_addcmul_", {"tensor1": "list", "tensor2": "list", "scalars": [2.0, 0.5]}),
    ("_foreach_addcdiv_", {"tensor1": "list", "tensor2": "list", "scalars": [2.0, 0.5]}),
    ("_foreach_copy_", {"src": "list"}),
]


@pytest.mark.parametrize("name,kw", FOREACH_KEYWORDS)
def test_foreach_keywords_as_pytorchs(name, kw):
    """The ``_foreach_*`` functions take PyTorch's keyword names (timm's fallback EMA writes
    ``torch._foreach_mul_(ema, scalar=decay)``)."""
    def run(lib):
        xs = [lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64), lib.tensor([[0.5, -1.0]],
                                                                          dtype=lib.float64)]
        ys = [x * 0.5 + 1.0 for x in xs]
        given = {k: ys if v == "list" else lib.tensor(2.0, dtype=lib.float64) if v == "tensor"
                 else v for k, v in kw.items()}
        out = getattr(lib, name)(xs, **given)  # (an in-place one's result is not compared:
        return {"xs": xs, "out": None if name.endswith("_") else list(out)}  # None here)

    both(run, tol=0.0)


def test_mask_optimizer_state_zeroes_the_live_state():
    """``prune.mask_optimizer_state`` zeroes the momentum at pruned positions (the live state
    entries hold tensors on the optimiser's buffers)."""
    lin = ng.nn.Linear(4, 3)
    opt = ng.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(ng.ones(2, 4)).sum().backward()
    opt.step()
    keep = (np.arange(12).reshape(3, 4) % 2).astype(np.float32)
    ng.prune.apply_mask(lin, "weight", ng.tensor(keep))
    assert ng.prune.mask_optimizer_state(opt, lin) == 1
    mom = next(v["momentum_buffer"] for v in opt.state.values()
               if tuple(v["momentum_buffer"].shape) == (3, 4))
    assert np.all(mom.numpy()[keep == 0] == 0) and np.all(mom.numpy()[keep == 1] == 2)


def wrapper_names(lib):
    """Names a wrapper adds to ``optimizer.state[p]`` (by assignment, ``setdefault`` or
    ``update``) are kept across steps, saved in ``state_dict()`` and loaded back."""
    model = seeded(lib, mlp_bn)
    opt = lib.optim.AdamW(model.parameters(), lr=0.1)
    x = lib.tensor(X)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        for p in model.parameters():
            opt.state[p].setdefault("slow", p.detach().clone())
            opt.state[p].update(seen=opt.state[p].get("seen", lib.zeros((), dtype=lib.float64))
                                + 1)
            opt.state[p]["slow"].lerp_(p.detach(), 0.5)
    sd = opt.state_dict()
    opt2 = lib.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(sd)
    opt2.zero_grad()
    model(x).pow(2).mean().backward()
    opt2.step()
    return {"keys": [sorted(v) for v in sd["state"].values()],
            "slow": [opt2.state[p]["slow"] for p in model.parameters()],
            "seen": [opt2.state[p]["seen"] for p in model.parameters()],
            "w": arrays(model.state_dict())}


def test_wrapper_state_names_kept_and_saved():
    both(wrapper_names)
