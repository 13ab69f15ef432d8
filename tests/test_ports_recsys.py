"""Recommender-system and embedding-heavy PyTorch programs, ported by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as tutorials
and paper repositories write it: matrix factorisation with biases, NCF / NeuMF, BPR with sampled
negatives, factorisation machines, DeepFM, Wide&Deep, DCN, DLRM, two-tower retrieval, SASRec,
GRU4Rec, word2vec, and the ranking metrics. Both runs start from the same seeded weights and see
the same data (negatives drawn once with PyTorch's generator and handed to both) in float64, so
every recorded value (losses, scores, metrics, final weights) must agree to rounding.
"""

# the programs' own spelling (super(Cls, self), range(0, n), unused loop names) is kept
# ruff: noqa: UP008, B007, PIE808

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from _ports import arr, arrays, assert_same, float64_one_thread, seeded  # noqa: F401

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("float64_one_thread")

TOL = 1e-10
N_USERS, N_ITEMS = 9, 14


def both(fn, *args, tol: float = TOL, **kw):
    """``fn`` run with PyTorch and with nodegrad; their records must agree."""
    ref, got = fn(torch, *args, **kw), fn(ng, *args, **kw)
    assert_same(got, ref, tol)
    return got


def draws(seed: int, high: int, size) -> np.ndarray:
    """Indices drawn with PyTorch's seeded generator (as the programs sample negatives), then
    handed to both libraries."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, size, generator=g).numpy().copy()


def interactions(n: int = 40, seed: int = 0):
    """(user, item, rating) triples of a tiny explicit-feedback data set."""
    r = np.random.default_rng(seed)
    users = r.integers(0, N_USERS, n)
    items = r.integers(0, N_ITEMS, n)
    ratings = r.integers(1, 6, n).astype(np.float64)
    return users, items, ratings


# --- 1. matrix factorisation with biases: weight decay by the optimiser or an explicit L2 -------

def matrix_factorization(lib, explicit_l2: bool, opt_name: str = "SGD"):
    nn, F = lib.nn, lib.nn.functional

    class MF(nn.Module):
        def __init__(self, num_users, num_items, emb_size=5):
            super().__init__()
            self.user_emb = nn.Embedding(num_users, emb_size)
            self.user_bias = nn.Embedding(num_users, 1)
            self.item_emb = nn.Embedding(num_items, emb_size)
            self.item_bias = nn.Embedding(num_items, 1)
            self.global_bias = nn.Parameter(lib.zeros(1))
            self.user_emb.weight.data.uniform_(0, 0.05)
            self.item_emb.weight.data.uniform_(0, 0.05)
            nn.init.uniform_(self.user_bias.weight, -0.01, 0.01)
            nn.init.uniform_(self.item_bias.weight, -0.01, 0.01)

        def forward(self, u, v):
            U = self.user_emb(u)
            V = self.item_emb(v)
            b_u = self.user_bias(u).squeeze()
            b_v = self.item_bias(v).squeeze()
            return (U * V).sum(1) + b_u + b_v + self.global_bias

    model = seeded(lib, MF(N_USERS, N_ITEMS))
    users, items, ratings = interactions()
    wd = 0.0 if explicit_l2 else 1e-2
    if opt_name == "SGD":
        optimizer = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=wd)
    else:
        optimizer = lib.optim.Adam(model.parameters(), lr=0.01, weight_decay=wd)
    losses = []
    for epoch in range(3):
        model.train()
        for b in range(0, len(users), 10):
            u = lib.LongTensor(users[b:b + 10])
            v = lib.LongTensor(items[b:b + 10])
            y = lib.FloatTensor(ratings[b:b + 10]).double()
            y_hat = model(u, v)
            loss = F.mse_loss(y_hat, y)
            if explicit_l2:
                reg = (model.user_emb(u).pow(2).sum() + model.item_emb(v).pow(2).sum()
                       + model.user_bias(u).norm(2).pow(2) + model.item_bias(v).norm(2) ** 2)
                loss = loss + 1e-3 * reg / len(u)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    with lib.no_grad():
        rmse = lib.sqrt(F.mse_loss(model(lib.LongTensor(users), lib.LongTensor(items)),
                                   lib.tensor(ratings)))
    return {"loss": losses, "rmse": rmse.item(), "w": arrays(model.state_dict())}


@pytest.mark.parametrize("explicit_l2", [False, True])
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_matrix_factorization_biases_weight_decay(explicit_l2, opt_name):
    both(matrix_factorization, explicit_l2, opt_name)


# --- 2. NeuMF: GMF and MLP towers, BCEWithLogits on implicit feedback with sampled negatives ---

def implicit_batches(steps: int, batch: int = 8, num_ng: int = 2, seed: int = 1):
    """(users, items, labels) per step: each positive pair followed by ``num_ng`` negatives
    drawn with PyTorch's generator (NCF's ``ng_sample``)."""
    users, items, _ = interactions(steps * batch, seed)
    neg = draws(seed, N_ITEMS, (steps * batch, num_ng))
    out = []
    for s in range(steps):
        sl = slice(s * batch, (s + 1) * batch)
        u = np.repeat(users[sl], num_ng + 1)
        i = np.concatenate([items[sl, None], neg[sl]], 1).reshape(-1)
        y = np.tile([1.0] + [0.0] * num_ng, batch)
        out.append((u, i, y))
    return out


def neumf(lib, model_name="NeuMF-end"):
    nn = lib.nn

    class NCF(nn.Module):
        def __init__(self, user_num, item_num, factor_num, num_layers, dropout, model):
            super(NCF, self).__init__()
            self.dropout = dropout
            self.model = model
            self.embed_user_GMF = nn.Embedding(user_num, factor_num)
            self.embed_item_GMF = nn.Embedding(item_num, factor_num)
            self.embed_user_MLP = nn.Embedding(user_num, factor_num * (2 ** (num_layers - 1)))
            self.embed_item_MLP = nn.Embedding(item_num, factor_num * (2 ** (num_layers - 1)))
            MLP_modules = []
            for i in range(num_layers):
                input_size = factor_num * (2 ** (num_layers - i))
                MLP_modules.append(nn.Dropout(p=self.dropout))
                MLP_modules.append(nn.Linear(input_size, input_size // 2))
                MLP_modules.append(nn.ReLU())
            self.MLP_layers = nn.Sequential(*MLP_modules)
            if self.model in ['MLP', 'GMF']:
                predict_size = factor_num
            else:
                predict_size = factor_num * 2
            self.predict_layer = nn.Linear(predict_size, 1)
            self._init_weight_()

        def _init_weight_(self):
            nn.init.normal_(self.embed_user_GMF.weight, std=0.01)
            nn.init.normal_(self.embed_user_MLP.weight, std=0.01)
            nn.init.normal_(self.embed_item_GMF.weight, std=0.01)
            nn.init.normal_(self.embed_item_MLP.weight, std=0.01)
            for m in self.MLP_layers:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
            nn.init.kaiming_uniform_(self.predict_layer.weight, a=1, nonlinearity='sigmoid')
            for m in self.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

        def forward(self, user, item):
            if not self.model == 'MLP':
                embed_user_GMF = self.embed_user_GMF(user)
                embed_item_GMF = self.embed_item_GMF(item)
                output_GMF = embed_user_GMF * embed_item_GMF
            if not self.model == 'GMF':
                embed_user_MLP = self.embed_user_MLP(user)
                embed_item_MLP = self.embed_item_MLP(item)
                interaction = lib.cat((embed_user_MLP, embed_item_MLP), -1)
                output_MLP = self.MLP_layers(interaction)
            if self.model == 'GMF':
                concat = output_GMF
            elif self.model == 'MLP':
                concat = output_MLP
            else:
                concat = lib.cat((output_GMF, output_MLP), -1)
            prediction = self.predict_layer(concat)
            return prediction.view(-1)

    model = seeded(lib, NCF(N_USERS, N_ITEMS, 4, 2, 0.0, model_name))
    loss_function = nn.BCEWithLogitsLoss()
    optimizer = lib.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for user, item, label in implicit_batches(5):
        user, item, label = lib.tensor(user), lib.tensor(item), lib.tensor(label)
        model.zero_grad()
        prediction = model(user, item)
        loss = loss_function(prediction, label)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with lib.no_grad():  # hit ratio: the held-out item ranked among 10 by the model's score
        cand = lib.tensor(draws(7, N_ITEMS, (N_USERS, 10)))
        users = lib.arange(N_USERS).unsqueeze(1).expand_as(cand)
        scores = model(users.reshape(-1), cand.reshape(-1)).view(N_USERS, 10)
        _, indices = lib.topk(scores, 3)
        recommends = lib.take(cand, indices + 10 * lib.arange(N_USERS)[:, None])
        hr = (recommends == cand[:, :1]).any(dim=1).float().mean()
    return {"loss": losses, "hr": hr.item(), "rec": recommends, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("model_name", ["NeuMF-end", "GMF", "MLP"])
def test_neumf_gmf_mlp_towers(model_name):
    both(neumf, model_name)


# --- 3. BPR with sampled negatives: logsigmoid of the score difference ---------------------

def bpr(lib, loss_form="logsigmoid"):
    nn, F = lib.nn, lib.nn.functional

    class BPR(nn.Module):
        def __init__(self, user_num, item_num, factor_num):
            super(BPR, self).__init__()
            self.embed_user = nn.Embedding(user_num, factor_num)
            self.embed_item = nn.Embedding(item_num, factor_num)
            nn.init.normal_(self.embed_user.weight, std=0.01)
            nn.init.normal_(self.embed_item.weight, std=0.01)

        def forward(self, user, item_i, item_j):
            user = self.embed_user(user)
            item_i = self.embed_item(item_i)
            item_j = self.embed_item(item_j)
            prediction_i = (user * item_i).sum(dim=-1)
            prediction_j = (user * item_j).sum(dim=-1)
            return prediction_i, prediction_j

    class BPRData(lib.utils.data.Dataset):
        def __init__(self, features, negatives):
            super(BPRData, self).__init__()
            self.features = features
            self.negatives = negatives

        def __len__(self):
            return len(self.features)

        def __getitem__(self, idx):
            user, item_i = self.features[idx]
            return user, item_i, self.negatives[idx]

    model = seeded(lib, BPR(N_USERS, N_ITEMS, 4))
    optimizer = lib.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    users, items, _ = interactions(30, seed=2)
    train_dataset = BPRData(list(zip(users.tolist(), items)), draws(3, N_ITEMS, (30,)))
    train_loader = lib.utils.data.DataLoader(train_dataset, batch_size=8, shuffle=False,
                                             num_workers=0, drop_last=False)
    losses = []
    for epoch in range(2):
        for user, item_i, item_j in train_loader:
            model.zero_grad()
            prediction_i, prediction_j = model(user, item_i, item_j)
            if loss_form == "logsigmoid":
                loss = -F.logsigmoid(prediction_i - prediction_j).mean()
            elif loss_form == "sigmoid_log":  # the NCF repository's spelling
                loss = - (prediction_i - prediction_j).sigmoid().log().sum()
            else:  # softplus(-x) = -log σ(x)
                loss = F.softplus(prediction_j - prediction_i).mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return {"loss": losses, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("loss_form", ["logsigmoid", "sigmoid_log", "softplus"])
def test_bpr_sampled_negatives(loss_form):
    both(bpr, loss_form)


# --- 4. factorisation machines, DeepFM, Wide&Deep, DCN over fields with offsets ----------------

FIELD_DIMS = [4, 6, 3, 5]


def ctr_data(n=24, seed=4):
    """(n, fields) categorical features (each in its own field's range) and click labels."""
    r = np.random.default_rng(seed)
    x = np.stack([r.integers(0, d, n) for d in FIELD_DIMS], 1)
    y = (r.random(n) < 0.4).astype(np.float64)
    return x, y


def ctr_layers(lib):
    """pytorch-fm's building blocks, as its layer.py writes them."""
    nn = lib.nn

    class FeaturesLinear(nn.Module):
        def __init__(self, field_dims, output_dim=1):
            super().__init__()
            self.fc = nn.Embedding(sum(field_dims), output_dim)
            self.bias = nn.Parameter(lib.zeros((output_dim,)))
            self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)

        def forward(self, x):
            x = x + x.new_tensor(self.offsets).unsqueeze(0)
            return lib.sum(self.fc(x), dim=1) + self.bias

    class FeaturesEmbedding(nn.Module):
        def __init__(self, field_dims, embed_dim):
            super().__init__()
            self.embedding = nn.Embedding(sum(field_dims), embed_dim)
            self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)
            nn.init.xavier_uniform_(self.embedding.weight.data)

        def forward(self, x):
            x = x + x.new_tensor(self.offsets).unsqueeze(0)
            return self.embedding(x)

    class FactorizationMachine(nn.Module):
        def __init__(self, reduce_sum=True):
            super().__init__()
            self.reduce_sum = reduce_sum

        def forward(self, x):
            square_of_sum = lib.sum(x, dim=1) ** 2
            sum_of_square = lib.sum(x ** 2, dim=1)
            ix = square_of_sum - sum_of_square
            if self.reduce_sum:
                ix = lib.sum(ix, dim=1, keepdim=True)
            return 0.5 * ix

    class MultiLayerPerceptron(nn.Module):
        def __init__(self, input_dim, embed_dims, dropout, output_layer=True):
            super().__init__()
            layers = list()
            for embed_dim in embed_dims:
                layers.append(nn.Linear(input_dim, embed_dim))
                layers.append(nn.BatchNorm1d(embed_dim))
                layers.append(nn.ReLU())
                layers.append(nn.Dropout(p=dropout))
                input_dim = embed_dim
            if output_layer:
                layers.append(nn.Linear(input_dim, 1))
            self.mlp = nn.Sequential(*layers)

        def forward(self, x):
            return self.mlp(x)

    class CrossNetwork(nn.Module):
        def __init__(self, input_dim, num_layers):
            super().__init__()
            self.num_layers = num_layers
            self.w = nn.ModuleList([
                nn.Linear(input_dim, 1, bias=False) for _ in range(num_layers)
            ])
            self.b = nn.ParameterList([
                nn.Parameter(lib.zeros((input_dim,))) for _ in range(num_layers)
            ])

        def forward(self, x):
            x0 = x
            for i in range(self.num_layers):
                xw = self.w[i](x)
                x = x0 * xw + self.b[i] + x
            return x

    return FeaturesLinear, FeaturesEmbedding, FactorizationMachine, MultiLayerPerceptron, \
        CrossNetwork


def ctr_model(lib, name):
    nn = lib.nn
    FeaturesLinear, FeaturesEmbedding, FactorizationMachine, MultiLayerPerceptron, \
        CrossNetwork = ctr_layers(lib)

    class FactorizationMachineModel(nn.Module):
        def __init__(self, field_dims, embed_dim):
            super().__init__()
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.linear = FeaturesLinear(field_dims)
            self.fm = FactorizationMachine(reduce_sum=True)

        def forward(self, x):
            x = self.linear(x) + self.fm(self.embedding(x))
            return lib.sigmoid(x.squeeze(1))

    class DeepFactorizationMachineModel(nn.Module):
        def __init__(self, field_dims, embed_dim, mlp_dims, dropout):
            super().__init__()
            self.linear = FeaturesLinear(field_dims)
            self.fm = FactorizationMachine(reduce_sum=True)
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.embed_output_dim = len(field_dims) * embed_dim
            self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp_dims, dropout)

        def forward(self, x):
            embed_x = self.embedding(x)
            x = self.linear(x) + self.fm(embed_x) + self.mlp(embed_x.view(-1,
                                                                          self.embed_output_dim))
            return lib.sigmoid(x.squeeze(1))

    class WideAndDeepModel(nn.Module):
        def __init__(self, field_dims, embed_dim, mlp_dims, dropout):
            super().__init__()
            self.linear = FeaturesLinear(field_dims)
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.embed_output_dim = len(field_dims) * embed_dim
            self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp_dims, dropout)

        def forward(self, x):
            embed_x = self.embedding(x)
            x = self.linear(x) + self.mlp(embed_x.view(-1, self.embed_output_dim))
            return lib.sigmoid(x.squeeze(1))

    class DeepCrossNetworkModel(nn.Module):
        def __init__(self, field_dims, embed_dim, num_layers, mlp_dims, dropout):
            super().__init__()
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.embed_output_dim = len(field_dims) * embed_dim
            self.cn = CrossNetwork(self.embed_output_dim, num_layers)
            self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp_dims, dropout,
                                            output_layer=False)
            self.linear = nn.Linear(mlp_dims[-1] + self.embed_output_dim, 1)

        def forward(self, x):
            embed_x = self.embedding(x).view(-1, self.embed_output_dim)
            x_l1 = self.cn(embed_x)
            h_l2 = self.mlp(embed_x)
            x_stack = lib.cat([x_l1, h_l2], dim=1)
            p = self.linear(x_stack)
            return lib.sigmoid(p.squeeze(1))

    if name == "fm":
        return FactorizationMachineModel(FIELD_DIMS, 3)
    if name == "deepfm":
        return DeepFactorizationMachineModel(FIELD_DIMS, 3, (8, 4), dropout=0.0)
    if name == "wd":
        return WideAndDeepModel(FIELD_DIMS, 3, (8, 4), dropout=0.0)
    return DeepCrossNetworkModel(FIELD_DIMS, 3, 2, (8, 4), dropout=0.0)


def ctr_train(lib, name, opt_name="Adam"):
    model = seeded(lib, ctr_model(lib, name))
    criterion = lib.nn.BCELoss()
    if opt_name == "Adam":
        optimizer = lib.optim.Adam(params=model.parameters(), lr=0.01, weight_decay=1e-6)
    else:
        optimizer = lib.optim.Adagrad(model.parameters(), lr=0.05, lr_decay=0.1,
                                      initial_accumulator_value=0.1, weight_decay=1e-4)
    x_all, y_all = ctr_data()
    losses = []
    for epoch in range(2):
        model.train()
        for b in range(0, len(x_all), 8):
            fields, target = lib.tensor(x_all[b:b + 8]), lib.tensor(y_all[b:b + 8])
            y = model(fields)
            loss = criterion(y, target)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    with lib.no_grad():
        pred = model(lib.tensor(x_all))
    return {"loss": losses, "pred": pred, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("name", ["fm", "deepfm", "wd", "dcn"])
def test_ctr_models_with_field_offsets(name):
    both(ctr_train, name)


@pytest.mark.parametrize("name", ["fm", "dcn"])
def test_ctr_models_adagrad_accumulator_and_decay(name):
    both(ctr_train, name, "Adagrad")


def test_fm_pairwise_trick_equals_explicit_pairs():
    """0.5·((Σv)² − Σv²) is the sum of the pairwise inner products ⟨v_i, v_j⟩ over i < j."""
    fm = ctr_layers(ng)[2]()
    v = ng.tensor(np.random.default_rng(0).standard_normal((3, 4, 2)))
    pairs = sum((v[:, i] * v[:, j]).sum(1) for i in range(4) for j in range(i + 1, 4))
    np.testing.assert_allclose(arr(fm(v))[:, 0], arr(pairs), rtol=1e-12)


# --- 5. DLRM: EmbeddingBag tables with offsets, bottom/top MLPs, dot interaction ------------

TABLES = [7, 5, 6]


def dlrm_batches(steps, batch=4, seed=5):
    """Dense features, one multi-hot bag per table per sample (1-d indices with offsets, some
    bags empty), per-sample weights and click labels."""
    r = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        dense = r.standard_normal((batch, 3))
        bags = []
        for n in TABLES:
            lens = r.integers(0, 4, batch)
            lens[0] = max(lens[0], 1)
            idx = r.integers(0, n, lens.sum())
            offs = np.concatenate([[0], np.cumsum(lens)[:-1]])
            bags.append((idx, offs, r.uniform(0.5, 1.5, lens.sum())))
        out.append((dense, bags, (r.random(batch) < 0.5).astype(np.float64)))
    return out


def dlrm(lib, mode="sum", interaction="dlrm", psw=False, padding_idx=None):
    nn = lib.nn

    class DLRM_Net(nn.Module):
        def create_mlp(self, ln, sigmoid_layer):
            layers = nn.ModuleList()
            for i in range(0, ln.size - 1):
                n = ln[i]
                m = ln[i + 1]
                LL = nn.Linear(int(n), int(m), bias=True)
                mean = 0.0
                std_dev = np.sqrt(2 / (m + n))
                W = np.random.default_rng(i).normal(mean, std_dev, size=(m, n))
                std_dev = np.sqrt(1 / m)
                bt = np.random.default_rng(i + 9).normal(mean, std_dev, size=m)
                LL.weight.data = lib.tensor(W, requires_grad=True)
                LL.bias.data = lib.tensor(bt, requires_grad=True)
                layers.append(LL)
                if i == sigmoid_layer:
                    layers.append(nn.Sigmoid())
                else:
                    layers.append(nn.ReLU())
            return nn.Sequential(*layers)

        def create_emb(self, m, ln):
            emb_l = nn.ModuleList()
            for i in range(0, ln.size):
                n = ln[i]
                EE = nn.EmbeddingBag(n, m, mode=mode, sparse=False, padding_idx=padding_idx)
                W = np.random.default_rng(20 + i).uniform(
                    low=-np.sqrt(1 / n), high=np.sqrt(1 / n), size=(n, m))
                EE.weight.data = lib.tensor(W, requires_grad=True)
                emb_l.append(EE)
            return emb_l

        def __init__(self, m_spa, ln_emb, ln_bot, ln_top, arch_interaction_itself=False):
            super(DLRM_Net, self).__init__()
            self.arch_interaction_itself = arch_interaction_itself
            self.emb_l = self.create_emb(m_spa, ln_emb)
            self.bot_l = self.create_mlp(ln_bot, -1)
            self.top_l = self.create_mlp(ln_top, ln_top.size - 2)

        def apply_emb(self, lS_o, lS_i, lS_w):
            ly = []
            for k, sparse_index_group_batch in enumerate(lS_i):
                sparse_offset_group_batch = lS_o[k]
                per_sample_weights = lS_w[k] if psw else None
                E = self.emb_l[k]
                V = E(sparse_index_group_batch, sparse_offset_group_batch,
                      per_sample_weights=per_sample_weights)
                ly.append(V)
            return ly

        def interact_features(self, x, ly):
            (batch_size, d) = x.shape
            T = lib.cat([x] + ly, dim=1).view((batch_size, -1, d))
            Z = lib.bmm(T, lib.transpose(T, 1, 2))
            _, ni, nj = Z.shape
            if interaction == "dlrm":
                offset = 1 if self.arch_interaction_itself else 0
                li = lib.tensor([i for i in range(ni) for j in range(i + offset)])
                lj = lib.tensor([j for i in range(nj) for j in range(i + offset)])
                Zflat = Z[:, li, lj]
            else:  # torchrec's spelling: the strict upper triangle
                iu = lib.triu_indices(ni, nj, offset=1)
                Zflat = Z[:, iu[0], iu[1]]
            R = lib.cat([x] + [Zflat], dim=1)
            return R

        def forward(self, dense_x, lS_o, lS_i, lS_w):
            x = self.bot_l(dense_x)
            ly = self.apply_emb(lS_o, lS_i, lS_w)
            z = self.interact_features(x, ly)
            p = self.top_l(z)
            return p

    m_spa = 4
    n_inter = (len(TABLES) + 1) * len(TABLES) // 2
    model = DLRM_Net(m_spa, np.array(TABLES), np.array([3, 6, m_spa]),
                     np.array([m_spa + n_inter, 5, 1]))
    loss_fn = nn.BCELoss(reduction="mean")
    optimizer = lib.optim.SGD(model.parameters(), lr=0.1)
    losses, preds = [], []
    for dense, bags, y in dlrm_batches(4):
        lS_i = [lib.tensor(i) for i, _, _ in bags]
        lS_o = [lib.tensor(o) for _, o, _ in bags]
        lS_w = [lib.tensor(w) for _, _, w in bags]
        Z = model(lib.tensor(dense), lS_o, lS_i, lS_w)
        eps = 1e-7
        Z = lib.clamp(Z, min=eps, max=1.0 - eps)
        E = loss_fn(Z, lib.tensor(y).view(-1, 1))
        optimizer.zero_grad()
        E.backward()
        optimizer.step()
        losses.append(E.detach().cpu().numpy())
        preds.append(Z)
    return {"loss": losses, "pred": preds, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("mode,psw,padding_idx", [("sum", False, None), ("mean", False, None),
                                                  ("max", False, None), ("sum", True, None),
                                                  ("sum", True, 2), ("mean", False, 0)])
def test_dlrm_embedding_bags(mode, psw, padding_idx):
    both(dlrm, mode, "dlrm", psw, padding_idx)


def test_dlrm_triu_indices_interaction():
    both(dlrm, "sum", "triu")


def test_assigning_a_tensor_to_param_data_takes_its_values():
    """DLRM's ``LL.weight.data = torch.tensor(W, requires_grad=True)``: the parameter holds W's
    values (it stored the Tensor itself once, and the next forward failed deep inside a
    product) and stays a parameter that requires grad; its ``.data`` is a tensor that does not."""
    lin = ng.nn.Linear(2, 3).double()
    w = np.arange(6.0).reshape(3, 2)
    lin.weight.data = ng.tensor(w, requires_grad=True)
    assert isinstance(lin.weight.data, ng.Tensor) and not lin.weight.data.requires_grad
    assert lin.weight.requires_grad and isinstance(lin.weight, ng.nn.Parameter)
    lin(ng.ones(4, 2, dtype=ng.float64)).sum().backward()
    np.testing.assert_array_equal(arr(lin.weight), w)
    np.testing.assert_array_equal(arr(lin.weight.grad), np.full((3, 2), 4.0))


def functional_bags(lib):
    """``F.embedding_bag`` over one flat index list with offsets in every mode, with and without
    ``include_last_offset`` and ``padding_idx`` (an empty bag, repeated and padded entries)."""
    F = lib.nn.functional
    table = np.random.default_rng(22).standard_normal((7, 3))
    out = {}
    for mode in ("sum", "mean", "max"):
        for pad in (None, 2, -1):
            for last in (False, True):
                w = lib.tensor(table, requires_grad=True)
                idx = lib.tensor([1, 2, 6, 2, 2, 0, 5, 6])
                offsets = lib.tensor([0, 3, 3, 5, 8] if last else [0, 3, 3, 5])
                psw = lib.tensor(np.linspace(0.5, 2, 8), requires_grad=True) \
                    if mode == "sum" else None
                bags = F.embedding_bag(idx, w, offsets, mode=mode, per_sample_weights=psw,
                                       include_last_offset=last, padding_idx=pad)
                (bags * lib.tensor([1.0, -2.0, 3.0])).sum().backward()
                out[f"{mode}-{pad}-{last}"] = [bags, w.grad, None if psw is None else psw.grad]
    return out


def test_functional_embedding_bag_modes_offsets_padding():
    both(functional_bags)


# --- 6. two-tower retrieval: in-batch softmax with the logQ correction ------------------------

def two_tower(lib, logq=True, remove_hits=True, temperature=0.1):
    nn, F = lib.nn, lib.nn.functional

    class Tower(nn.Module):
        def __init__(self, num, dim, out):
            super().__init__()
            self.emb = nn.Embedding(num, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 8), nn.ReLU(), nn.Linear(8, out))

        def forward(self, ids):
            return F.normalize(self.mlp(self.emb(ids)), p=2, dim=-1)

    class TwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.query_tower = Tower(N_USERS, 5, 4)
            self.item_tower = Tower(N_ITEMS, 5, 4)

        def forward(self, users, items):
            return self.query_tower(users), self.item_tower(items)

    model = seeded(lib, TwoTower())
    users, items, _ = interactions(36, seed=6)
    counts = np.bincount(items, minlength=N_ITEMS) + 1.0
    item_prob = lib.tensor(counts / counts.sum())  # the sampling probability of each item
    optimizer = lib.optim.Adagrad(model.parameters(), lr=0.1, initial_accumulator_value=0.1)
    losses = []
    for b in range(0, 36, 6):
        u, i = lib.tensor(users[b:b + 6]), lib.tensor(items[b:b + 6])
        q, c = model(u, i)
        logits = q @ c.T / temperature
        if logq:
            logits = logits - lib.log(item_prob[i]).unsqueeze(0)
        if remove_hits:  # an item twice in the batch is no negative for its own query
            hits = i.unsqueeze(0) == i.unsqueeze(1)
            hits.fill_diagonal_(False)
            logits = logits.masked_fill(hits, lib.finfo(logits.dtype).min)
        labels = lib.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, labels, label_smoothing=0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with lib.no_grad():  # retrieval: every item scored for every user
        q = model.query_tower(lib.arange(N_USERS))
        c = model.item_tower(lib.arange(N_ITEMS))
        top = (q @ c.t()).topk(3, dim=1).indices
    return {"loss": losses, "top": top, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("logq,remove_hits", [(True, True), (False, False)])
def test_two_tower_in_batch_softmax_logq(logq, remove_hits):
    both(two_tower, logq, remove_hits)


# --- 7. SASRec: causal self-attention over left-padded item sequences ------------------------

MAXLEN = 5


def seq_data(n=6, seed=8):
    """Left-padded item histories (0 is padding, items 1..N_ITEMS-1), next-item targets and
    sampled negatives (SASRec's ``WarpSampler``)."""
    r = np.random.default_rng(seed)
    seqs = np.zeros((n, MAXLEN + 1), np.int64)
    for k in range(n):
        L = r.integers(2, MAXLEN + 2)
        seqs[k, -L:] = r.integers(1, N_ITEMS, L)
    neg = draws(seed, N_ITEMS - 1, (n, MAXLEN)) + 1
    pos = seqs[:, 1:]
    neg = np.where(pos != 0, neg, 0)
    return seqs[:, :-1], pos, neg


def sasrec(lib, key_padding=False, float_mask=False):
    nn = lib.nn

    class PointWiseFeedForward(nn.Module):
        def __init__(self, hidden_units, dropout_rate):
            super(PointWiseFeedForward, self).__init__()
            self.conv1 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
            self.dropout1 = nn.Dropout(p=dropout_rate)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv1d(hidden_units, hidden_units, kernel_size=1)
            self.dropout2 = nn.Dropout(p=dropout_rate)

        def forward(self, inputs):
            outputs = self.dropout2(self.conv2(self.relu(self.dropout1(self.conv1(
                inputs.transpose(-1, -2))))))
            outputs = outputs.transpose(-1, -2)
            outputs += inputs
            return outputs

    class SASRec(nn.Module):
        def __init__(self, item_num, hidden_units=4, num_blocks=2, num_heads=2, dropout=0.0):
            super(SASRec, self).__init__()
            self.item_emb = nn.Embedding(item_num + 1, hidden_units, padding_idx=0)
            self.pos_emb = nn.Embedding(MAXLEN + 1, hidden_units, padding_idx=0)
            self.emb_dropout = nn.Dropout(p=dropout)
            self.attention_layernorms = nn.ModuleList()
            self.attention_layers = nn.ModuleList()
            self.forward_layernorms = nn.ModuleList()
            self.forward_layers = nn.ModuleList()
            self.last_layernorm = nn.LayerNorm(hidden_units, eps=1e-8)
            for _ in range(num_blocks):
                self.attention_layernorms.append(nn.LayerNorm(hidden_units, eps=1e-8))
                self.attention_layers.append(nn.MultiheadAttention(hidden_units, num_heads,
                                                                   dropout))
                self.forward_layernorms.append(nn.LayerNorm(hidden_units, eps=1e-8))
                self.forward_layers.append(PointWiseFeedForward(hidden_units, dropout))

        def log2feats(self, log_seqs):
            seqs = self.item_emb(lib.LongTensor(log_seqs))
            seqs *= self.item_emb.embedding_dim ** 0.5
            poss = np.tile(np.arange(1, log_seqs.shape[1] + 1), [log_seqs.shape[0], 1])
            poss *= (log_seqs != 0)
            seqs += self.pos_emb(lib.LongTensor(poss))
            seqs = self.emb_dropout(seqs)
            tl = seqs.shape[1]
            attention_mask = ~lib.tril(lib.ones((tl, tl), dtype=lib.bool))
            if float_mask:
                attention_mask = lib.zeros(tl, tl).masked_fill(attention_mask, float("-inf"))
            padding = lib.tensor(log_seqs == 0)
            for i in range(len(self.attention_layers)):
                seqs = lib.transpose(seqs, 0, 1)
                Q = self.attention_layernorms[i](seqs)
                if key_padding:  # a padded query sees no key: PyTorch's SDPA path gives 0
                    mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs,
                                                              key_padding_mask=padding,
                                                              attn_mask=attention_mask,
                                                              need_weights=False)
                else:
                    mha_outputs, _ = self.attention_layers[i](Q, seqs, seqs,
                                                              attn_mask=attention_mask)
                seqs = Q + mha_outputs
                seqs = lib.transpose(seqs, 0, 1)
                seqs = self.forward_layernorms[i](seqs)
                seqs = self.forward_layers[i](seqs)
            log_feats = self.last_layernorm(seqs)
            return log_feats

        def forward(self, user_ids, log_seqs, pos_seqs, neg_seqs):
            log_feats = self.log2feats(log_seqs)
            pos_embs = self.item_emb(lib.LongTensor(pos_seqs))
            neg_embs = self.item_emb(lib.LongTensor(neg_seqs))
            pos_logits = (log_feats * pos_embs).sum(dim=-1)
            neg_logits = (log_feats * neg_embs).sum(dim=-1)
            return pos_logits, neg_logits

        def predict(self, user_ids, log_seqs, item_indices):
            log_feats = self.log2feats(log_seqs)
            final_feat = log_feats[:, -1, :]
            item_embs = self.item_emb(lib.LongTensor(item_indices))
            logits = item_embs.matmul(final_feat.unsqueeze(-1)).squeeze(-1)
            return logits

    model = SASRec(N_ITEMS)
    for name, param in model.named_parameters():
        try:
            nn.init.xavier_normal_(param.data)
        except Exception:
            pass
    model = seeded(lib, model)
    model.pos_emb.weight.data[0, :] = 0
    model.item_emb.weight.data[0, :] = 0
    model.train()
    bce_criterion = nn.BCEWithLogitsLoss()
    adam_optimizer = lib.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.98))
    seq, pos, neg = seq_data()
    losses = []
    for step in range(3):
        u = np.arange(len(seq))
        pos_logits, neg_logits = model(u, seq, pos, neg)
        pos_labels = lib.ones(pos_logits.shape)
        neg_labels = lib.zeros(neg_logits.shape)
        adam_optimizer.zero_grad()
        indices = np.where(pos != 0)
        loss = bce_criterion(pos_logits[indices], pos_labels[indices])
        loss += bce_criterion(neg_logits[indices], neg_labels[indices])
        for param in model.item_emb.parameters():
            loss += 1e-3 * lib.norm(param)
        loss.backward()
        adam_optimizer.step()
        losses.append(loss.item())
    model.eval()
    with lib.no_grad():
        item_idx = np.concatenate([pos[:, -1:], neg[:, -1:], neg[:, :2]], 1)
        predictions = -model.predict(None, seq, item_idx)
        rank = predictions.argsort().argsort()[:, 0]
    return {"loss": losses, "pred": predictions, "rank": rank, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("key_padding,float_mask", [(False, False), (True, False),
                                                    (False, True)])
def test_sasrec_causal_attention(key_padding, float_mask):
    both(sasrec, key_padding, float_mask)


def test_fully_masked_attention_rows_are_zero_not_nan():
    """A query whose every key is masked: nodegrad gives zero weights and a zero output (as
    PyTorch's ``need_weights=False`` / SDPA path), never NaN (PyTorch's weights path)."""
    mha = ng.nn.MultiheadAttention(4, 2)
    x = ng.tensor(np.random.default_rng(0).standard_normal((3, 2, 4)))
    kpm = ng.tensor([[True, False, False], [False, False, False]])
    causal = ~ng.tril(ng.ones((3, 3), dtype=ng.bool))
    out, w = mha(x, x, x, key_padding_mask=kpm, attn_mask=causal)
    assert np.all(arr(out)[0, 0] == 0) and np.all(arr(w)[0, 0] == 0)
    assert np.isfinite(arr(out)).all()


# --- 8. GRU4Rec: session-parallel mini-batches, hidden reset, TOP1 / BPR over in-batch items ---

def sessions(n=7, seed=9):
    r = np.random.default_rng(seed)
    return [r.integers(0, N_ITEMS, r.integers(2, 6)) for _ in range(n)]


def session_parallel(sess, batch=3):
    """GRU4Rec's SessionDataLoader: (input, target, mask of sessions that just started)."""
    iters = np.arange(batch)
    maxiter = iters.max()
    pos = np.zeros(batch, np.int64)
    mask = np.zeros(batch, bool)
    while True:
        lens = np.array([len(sess[s]) for s in iters])
        minlen = (lens - pos).min()
        for i in range(minlen - 1):
            inp = np.array([sess[s][p + i] for s, p in zip(iters, pos)])
            tgt = np.array([sess[s][p + i + 1] for s, p in zip(iters, pos)])
            yield inp, tgt, np.nonzero(mask)[0]
            mask[:] = False
        pos += minlen - 1
        ended = np.nonzero(pos + 1 >= lens)[0]
        for idx in ended:
            maxiter += 1
            if maxiter >= len(sess):
                return
            iters[idx] = maxiter
            pos[idx] = 0
            mask[idx] = True


def gru4rec(lib, loss_type="TOP1", embedding=True):
    nn, F = lib.nn, lib.nn.functional

    class GRU4REC(nn.Module):
        def __init__(self, input_size, hidden_size, output_size, num_layers=1, batch_size=3,
                     embedding_dim=-1):
            super(GRU4REC, self).__init__()
            self.input_size = input_size
            self.hidden_size = hidden_size
            self.num_layers = num_layers
            self.batch_size = batch_size
            self.embedding_dim = embedding_dim
            self.onehot_buffer = self.init_emb()
            self.h2o = nn.Linear(hidden_size, output_size)
            self.final_activation = nn.Tanh()
            if self.embedding_dim != -1:
                self.look_up = nn.Embedding(input_size, self.embedding_dim)
                self.gru = nn.GRU(self.embedding_dim, self.hidden_size, self.num_layers)
            else:
                self.gru = nn.GRU(self.input_size, self.hidden_size, self.num_layers)

        def forward(self, input, hidden):
            if self.embedding_dim == -1:
                embedded = self.onehot_encode(input)
                embedded = embedded.unsqueeze(0)
            else:
                embedded = input.unsqueeze(0)
                embedded = self.look_up(embedded)
            output, hidden = self.gru(embedded, hidden)
            output = output.view(-1, output.size(-1))
            logit = self.final_activation(self.h2o(output))
            return logit, hidden

        def init_emb(self):
            return lib.FloatTensor(self.batch_size, self.input_size).double()

        def onehot_encode(self, input):
            self.onehot_buffer.zero_()
            index = input.view(-1, 1)
            one_hot = self.onehot_buffer.scatter_(1, index, 1)
            return one_hot

        def init_hidden(self):
            return lib.zeros(self.num_layers, self.batch_size, self.hidden_size)

    def top1(logit):
        diff = -(logit.diag().view(-1, 1).expand_as(logit) - logit)
        loss = lib.sigmoid(diff).mean() + lib.sigmoid(logit ** 2).mean()
        return loss

    def bpr_loss(logit):
        diff = logit.diag().view(-1, 1).expand_as(logit) - logit
        return -lib.mean(F.logsigmoid(diff))

    def bpr_max(logit):
        logit_softmax = F.softmax(logit, dim=1)
        diff = logit.diag().view(-1, 1).expand_as(logit) - logit
        return -lib.log(lib.mean(logit_softmax * lib.sigmoid(diff)))

    def cross_entropy(logit):  # the in-batch targets sit on the diagonal
        return F.cross_entropy(logit, lib.arange(logit.size(0)))

    loss_fn = {"TOP1": top1, "BPR": bpr_loss, "BPR-max": bpr_max, "CE": cross_entropy}
    model = seeded(lib, GRU4REC(N_ITEMS, 6, N_ITEMS, embedding_dim=4 if embedding else -1))
    optimizer = lib.optim.Adagrad(model.parameters(), lr=0.05, eps=1e-6)
    hidden = model.init_hidden()
    losses = []
    for inp, target, mask in session_parallel(sessions()):
        if len(mask) != 0:  # reset the hidden states of sessions that just started
            hidden[:, lib.tensor(mask), :] = 0
        hidden = hidden.detach()
        inp, target = lib.tensor(inp), lib.tensor(target)
        optimizer.zero_grad()
        logit, hidden = model(inp, hidden)
        logit_sampled = logit[:, target.view(-1)]
        loss = loss_fn[loss_type](logit_sampled)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"loss": losses, "h": hidden, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("loss_type,embedding", [("TOP1", True), ("BPR", True),
                                                 ("BPR-max", False), ("CE", True)])
def test_gru4rec_session_parallel(loss_type, embedding):
    both(gru4rec, loss_type, embedding)


# --- 9. word2vec skip-gram with negative sampling; Embedding's max_norm and from_pretrained ---

def skipgram(lib, max_norm=None, opt_name="SGD"):
    nn, F = lib.nn, lib.nn.functional
    V, D, K = 12, 4, 3

    class SkipGramModel(nn.Module):
        def __init__(self, emb_size, emb_dimension):
            super(SkipGramModel, self).__init__()
            self.emb_size = emb_size
            self.emb_dimension = emb_dimension
            self.u_embeddings = nn.Embedding(emb_size, emb_dimension, max_norm=max_norm)
            self.v_embeddings = nn.Embedding(emb_size, emb_dimension)
            initrange = 1.0 / self.emb_dimension
            nn.init.uniform_(self.u_embeddings.weight.data, -initrange, initrange)
            nn.init.constant_(self.v_embeddings.weight.data, 0)

        def forward(self, pos_u, pos_v, neg_v):
            emb_u = self.u_embeddings(pos_u)
            emb_v = self.v_embeddings(pos_v)
            emb_neg_v = self.v_embeddings(neg_v)
            score = lib.sum(lib.mul(emb_u, emb_v), dim=1)
            score = lib.clamp(score, max=10, min=-10)
            score = -F.logsigmoid(score)
            neg_score = lib.bmm(emb_neg_v, emb_u.unsqueeze(2)).squeeze()
            neg_score = lib.clamp(neg_score, max=10, min=-10)
            neg_score = -lib.sum(F.logsigmoid(-neg_score), dim=1)
            return lib.mean(score + neg_score)

    model = seeded(lib, SkipGramModel(V, D))
    if opt_name == "SGD":
        optimizer = lib.optim.SGD(model.parameters(), lr=0.5)
    else:  # SparseAdam over the (dense here) embedding gradients, as the repo's lazy Adam
        optimizer = lib.optim.SparseAdam(list(model.parameters()), lr=0.05)
    r = np.random.default_rng(10)
    centre = r.integers(0, V, 24)
    context = (centre + r.choice([-1, 1], 24)) % V
    # unigram^0.75 negatives drawn with PyTorch's multinomial, then handed to both
    freq = torch.tensor(np.bincount(centre, minlength=V) + 1.0) ** 0.75
    neg = torch.multinomial(freq / freq.sum(), 24 * K, replacement=True,
                            generator=torch.Generator().manual_seed(11)).view(24, K).numpy()
    losses, norms = [], []
    for b in range(0, 24, 6):
        pos_u, pos_v = lib.LongTensor(centre[b:b + 6]), lib.LongTensor(context[b:b + 6])
        neg_v = lib.LongTensor(neg[b:b + 6])
        optimizer.zero_grad()
        loss = model.forward(pos_u, pos_v, neg_v)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        norms.append(model.u_embeddings.weight.norm(dim=1))
    return {"loss": losses, "norms": norms, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("max_norm", [None, 0.3])
def test_word2vec_skipgram_logsigmoid(max_norm):
    both(skipgram, max_norm)


def test_sparse_adam_needs_sparse_gradients_in_pytorch_only():
    """PyTorch's SparseAdam refuses the dense gradients of ``sparse=False`` embeddings; nodegrad
    (dense gradients throughout, ``sparse=True`` refused) runs the lazy update on them."""
    with pytest.raises(RuntimeError, match="dense"):
        skipgram(torch, opt_name="SparseAdam")
    out = skipgram(ng, opt_name="SparseAdam")
    assert np.isfinite(out["loss"]).all()
    with pytest.raises(NotImplementedError, match="sparse=True"):
        ng.nn.Embedding(4, 2, sparse=True)


def pretrained(lib, freeze, scale_grad_by_freq, padding_idx):
    nn, F = lib.nn, lib.nn.functional
    vectors = lib.tensor(np.random.default_rng(12).standard_normal((8, 3)))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding.from_pretrained(vectors, freeze=freeze,
                                                          padding_idx=padding_idx)
            self.proj = nn.Parameter(lib.tensor(np.linspace(-1, 1, 6).reshape(3, 2)))
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            e = F.embedding(x, self.embedding.weight, padding_idx=padding_idx,
                            scale_grad_by_freq=scale_grad_by_freq)
            return self.fc((e @ self.proj).mean(1))

    model = Classifier()
    model.fc.load_state_dict({"weight": lib.tensor([[0.3, -0.2], [0.1, 0.4]]),
                              "bias": lib.tensor([0.0, 0.1])})
    optimizer = lib.optim.Adagrad(filter(lambda p: p.requires_grad, model.parameters()),
                                  lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2)
    x = lib.tensor([[1, 2, 2, 0], [3, 3, 3, 1], [7, 0, 0, 0]])
    y = lib.tensor([0, 1, 1])
    losses, grads = [], []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        g = model.embedding.weight.grad
        grads.append(lib.zeros(8, 3) if g is None else g.clone())
    return {"loss": losses, "grads": grads, "req": model.embedding.weight.requires_grad,
            "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "w": arrays(model.state_dict()), "state": len(optimizer.state)}


@pytest.mark.parametrize("freeze,scale,pad", [(True, False, None), (False, False, None),
                                              (False, True, None), (False, True, 0)])
def test_from_pretrained_freeze_scale_grad_by_freq(freeze, scale, pad):
    both(pretrained, freeze, scale, pad)


def test_from_pretrained_shares_the_given_vectors():
    """PyTorch's ``Embedding.from_pretrained`` holds the given tensor's storage (as
    ``EmbeddingBag.from_pretrained`` here already did); it held a copy. (An optimizer built
    over it later copies its parameters into one flat buffer, which ends the sharing.)"""
    vectors = ng.tensor(np.ones((3, 2)))
    emb = ng.nn.Embedding.from_pretrained(vectors, freeze=False)
    with ng.no_grad():
        emb.weight.mul_(2)
    np.testing.assert_array_equal(arr(vectors), np.full((3, 2), 2.0))
    frozen = ng.nn.Embedding.from_pretrained(vectors, max_norm=1.0)
    frozen(ng.tensor([0]))  # renormalises row 0 of the shared table in place
    np.testing.assert_allclose(np.linalg.norm(arr(vectors)[0]), 1.0, rtol=1e-6)
    assert not frozen.weight.requires_grad and emb.weight.requires_grad


def max_norm_lookup(lib, norm_type):
    """Embedding(max_norm=...) renormalises the looked-up rows of the weight in place, before
    the lookup, and the gradient flows through the renormalised rows."""
    emb = lib.nn.Embedding(6, 3, max_norm=1.0, norm_type=norm_type)
    with lib.no_grad():
        emb.weight.copy_(lib.tensor(np.random.default_rng(13).standard_normal((6, 3)) * 2))
    idx = lib.tensor([[0, 2], [2, 5]])
    out = emb(idx)
    (out ** 2 * lib.tensor([1.0, 2.0, 3.0])).sum().backward()
    return {"out": out, "w": emb.weight, "g": emb.weight.grad}


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0])
def test_embedding_max_norm_renormalises_in_place(norm_type):
    both(max_norm_lookup, norm_type)


# --- 10. evaluation: recall@k, NDCG@k, hit ratio and MRR with topk, scatter_, gather, isin ---

def ranking_metrics(lib, k=4):
    r = np.random.default_rng(14)
    scores = lib.tensor(r.standard_normal((N_USERS, N_ITEMS)))
    train = lib.tensor(r.random((N_USERS, N_ITEMS)) < 0.25)
    test_items = [sorted(set(r.integers(0, N_ITEMS, r.integers(1, 5)).tolist()))
                  for _ in range(N_USERS)]
    test_items[2] = []  # a user without held-out items
    # exclude what each user saw in training
    scores = scores.masked_fill(train, -np.inf)
    scores[lib.tensor([0, 0]), lib.tensor([1, 3])] = -float("inf")
    _, topk = lib.topk(scores, k, dim=1)
    # ground truth as a dense 0/1 matrix built with scatter_
    truth = lib.zeros(N_USERS, N_ITEMS)
    for u, items in enumerate(test_items):
        if items:
            truth[u].scatter_(0, lib.tensor(items), 1.0)
    hits = lib.gather(truth, 1, topk)
    n_truth = truth.sum(dim=1)
    recall = hits.sum(dim=1) / n_truth.clamp(min=1)
    precision = hits.sum(dim=1) / k
    discount = 1.0 / lib.log2(lib.arange(2, k + 2).double())
    dcg = (hits * discount).sum(dim=1)
    idcg = lib.stack([discount[:min(int(n), k)].sum() for n in n_truth])
    ndcg = lib.where(n_truth > 0, dcg / idcg.clamp(min=1e-12), lib.zeros_like(dcg))
    # the same hits by isin, and a 0/1 recommendation matrix scattered from topk
    hits_isin = lib.stack([lib.isin(topk[u], lib.tensor(items, dtype=topk.dtype))
                           for u, items in enumerate(test_items)]).double()
    rec = lib.zeros_like(scores).scatter_(1, topk, 1.0)
    # leave-one-out hit ratio and MRR of the first held-out item
    target = lib.tensor([items[0] if items else 0 for items in test_items]).unsqueeze(1)
    target_score = scores.gather(1, target)
    rank = (scores > target_score).sum(dim=1) + 1
    hr = (topk == target).any(dim=1).float()
    mrr = lib.where(rank <= k, 1.0 / rank.double(), lib.zeros(N_USERS))
    valid = n_truth > 0
    return {"topk": topk, "hits": hits, "hits_isin": hits_isin, "recall": recall,
            "precision": precision, "ndcg": ndcg, "rec": rec, "rank": rank, "hr": hr,
            "mrr": mrr, "mean_recall": recall[valid].mean().item(),
            "mean_ndcg": ndcg[valid].mean().item(), "rec_count": rec.sum(0)}


def test_ranking_metrics_recall_ndcg():
    got = both(ranking_metrics)
    assert_same(got["hits"], got["hits_isin"], 0.0)


# --- 11. more CTR models: FFM, AFM, xDeepFM's CIN, AutoInt, PNN -----------------------------

def ctr_more(lib, name):
    nn, F = lib.nn, lib.nn.functional
    FeaturesLinear, FeaturesEmbedding, _, MultiLayerPerceptron, _ = ctr_layers(lib)

    class FieldAwareFactorizationMachine(nn.Module):
        def __init__(self, field_dims, embed_dim):
            super().__init__()
            self.num_fields = len(field_dims)
            self.embeddings = nn.ModuleList([
                nn.Embedding(sum(field_dims), embed_dim) for _ in range(self.num_fields)
            ])
            self.offsets = np.array((0, *np.cumsum(field_dims)[:-1]), dtype=np.int64)
            for embedding in self.embeddings:
                nn.init.xavier_uniform_(embedding.weight.data)

        def forward(self, x):
            x = x + x.new_tensor(self.offsets).unsqueeze(0)
            xs = [self.embeddings[i](x) for i in range(self.num_fields)]
            ix = list()
            for i in range(self.num_fields - 1):
                for j in range(i + 1, self.num_fields):
                    ix.append(xs[j][:, i] * xs[i][:, j])
            ix = lib.stack(ix, dim=1)
            return ix

    class FFM(nn.Module):
        def __init__(self, field_dims, embed_dim):
            super().__init__()
            self.linear = FeaturesLinear(field_dims)
            self.ffm = FieldAwareFactorizationMachine(field_dims, embed_dim)

        def forward(self, x):
            ffm_term = lib.sum(lib.sum(self.ffm(x), dim=1), dim=1, keepdim=True)
            x = self.linear(x) + ffm_term
            return lib.sigmoid(x.squeeze(1))

    class AttentionalFactorizationMachine(nn.Module):
        def __init__(self, embed_dim, attn_size, dropouts):
            super().__init__()
            self.attention = nn.Linear(embed_dim, attn_size)
            self.projection = nn.Linear(attn_size, 1)
            self.fc = nn.Linear(embed_dim, 1)
            self.dropouts = dropouts

        def forward(self, x):
            num_fields = x.shape[1]
            row, col = list(), list()
            for i in range(num_fields - 1):
                for j in range(i + 1, num_fields):
                    row.append(i), col.append(j)
            p, q = x[:, row], x[:, col]
            inner_product = p * q
            attn_scores = F.relu(self.attention(inner_product))
            attn_scores = F.softmax(self.projection(attn_scores), dim=1)
            attn_scores = F.dropout(attn_scores, p=self.dropouts[0], training=self.training)
            attn_output = lib.sum(attn_scores * inner_product, dim=1)
            attn_output = F.dropout(attn_output, p=self.dropouts[1], training=self.training)
            return self.fc(attn_output)

    class AFM(nn.Module):
        def __init__(self, field_dims, embed_dim, attn_size, dropouts):
            super().__init__()
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.linear = FeaturesLinear(field_dims)
            self.afm = AttentionalFactorizationMachine(embed_dim, attn_size, dropouts)

        def forward(self, x):
            x = self.linear(x) + self.afm(self.embedding(x))
            return lib.sigmoid(x.squeeze(1))

    class CompressedInteractionNetwork(nn.Module):
        def __init__(self, input_dim, cross_layer_sizes, split_half=True):
            super().__init__()
            self.num_layers = len(cross_layer_sizes)
            self.split_half = split_half
            self.conv_layers = nn.ModuleList()
            prev_dim, fc_input_dim = input_dim, 0
            for i in range(self.num_layers):
                cross_layer_size = cross_layer_sizes[i]
                self.conv_layers.append(nn.Conv1d(input_dim * prev_dim, cross_layer_size, 1,
                                                  stride=1, dilation=1, bias=True))
                if self.split_half and i != self.num_layers - 1:
                    cross_layer_size //= 2
                prev_dim = cross_layer_size
                fc_input_dim += prev_dim
            self.fc = nn.Linear(fc_input_dim, 1)

        def forward(self, x):
            xs = list()
            x0, h = x.unsqueeze(2), x
            for i in range(self.num_layers):
                x = x0 * h.unsqueeze(1)
                batch_size, f0_dim, fin_dim, embed_dim = x.shape
                x = x.view(batch_size, f0_dim * fin_dim, embed_dim)
                x = F.relu(self.conv_layers[i](x))
                if self.split_half and i != self.num_layers - 1:
                    x, h = lib.split(x, x.shape[1] // 2, dim=1)
                else:
                    h = x
                xs.append(x)
            return self.fc(lib.sum(lib.cat(xs, dim=1), 2))

    class XDeepFM(nn.Module):
        def __init__(self, field_dims, embed_dim, mlp_dims, dropout, cross_layer_sizes):
            super().__init__()
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.embed_output_dim = len(field_dims) * embed_dim
            self.cin = CompressedInteractionNetwork(len(field_dims), cross_layer_sizes, True)
            self.mlp = MultiLayerPerceptron(self.embed_output_dim, mlp_dims, dropout)
            self.linear = FeaturesLinear(field_dims)

        def forward(self, x):
            embed_x = self.embedding(x)
            x = self.linear(x) + self.cin(embed_x) + self.mlp(
                embed_x.view(-1, self.embed_output_dim))
            return lib.sigmoid(x.squeeze(1))

    class AutoInt(nn.Module):
        def __init__(self, field_dims, embed_dim, atten_embed_dim, num_heads, num_layers):
            super().__init__()
            self.num_fields = len(field_dims)
            self.linear = FeaturesLinear(field_dims)
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.atten_embedding = nn.Linear(embed_dim, atten_embed_dim)
            self.atten_output_dim = len(field_dims) * atten_embed_dim
            self.self_attns = nn.ModuleList([
                nn.MultiheadAttention(atten_embed_dim, num_heads, dropout=0.0,
                                      batch_first=True) for _ in range(num_layers)
            ])
            self.attn_fc = nn.Linear(self.atten_output_dim, 1)
            self.V_res_embedding = nn.Linear(embed_dim, atten_embed_dim)

        def forward(self, x):
            embed_x = self.embedding(x)
            atten_x = self.atten_embedding(embed_x)
            cross_term = atten_x
            for self_attn in self.self_attns:
                cross_term, weights = self_attn(cross_term, cross_term, cross_term,
                                                average_attn_weights=False)
            V_res = self.V_res_embedding(embed_x)
            cross_term += V_res
            cross_term = F.relu(cross_term).contiguous().view(-1, self.atten_output_dim)
            x = self.linear(x) + self.attn_fc(cross_term)
            return lib.sigmoid(x.squeeze(1)), weights

    class InnerProductNetwork(nn.Module):
        def forward(self, x):
            num_fields = x.shape[1]
            row, col = list(), list()
            for i in range(num_fields - 1):
                for j in range(i + 1, num_fields):
                    row.append(i), col.append(j)
            return lib.sum(x[:, row] * x[:, col], dim=2)

    class PNN(nn.Module):
        def __init__(self, field_dims, embed_dim, mlp_dims, dropout):
            super().__init__()
            num_fields = len(field_dims)
            self.pn = InnerProductNetwork()
            self.embedding = FeaturesEmbedding(field_dims, embed_dim)
            self.linear = FeaturesLinear(field_dims, embed_dim)
            self.embed_output_dim = num_fields * embed_dim
            self.mlp = MultiLayerPerceptron(num_fields * (num_fields - 1) // 2
                                            + self.embed_output_dim, mlp_dims, dropout)

        def forward(self, x):
            embed_x = self.embedding(x)
            cross_term = self.pn(embed_x)
            x = lib.cat([embed_x.view(-1, self.embed_output_dim), cross_term], dim=1)
            x = self.mlp(x)
            return lib.sigmoid(x.squeeze(1))

    return {"ffm": lambda: FFM(FIELD_DIMS, 2),
            "afm": lambda: AFM(FIELD_DIMS, 3, 4, dropouts=(0.0, 0.0)),
            "xdeepfm": lambda: XDeepFM(FIELD_DIMS, 3, (6,), 0.0, (4, 4)),
            "autoint": lambda: AutoInt(FIELD_DIMS, 3, 4, 2, 2),
            "pnn": lambda: PNN(FIELD_DIMS, 3, (6,), 0.0)}[name]()


def ctr_more_train(lib, name):
    model = seeded(lib, ctr_more(lib, name))
    criterion = lib.nn.BCELoss()
    optimizer = lib.optim.Adam(params=model.parameters(), lr=0.02, weight_decay=1e-6)
    x_all, y_all = ctr_data(seed=15)
    losses, extra = [], []
    for b in range(0, len(x_all), 8):
        fields, target = lib.tensor(x_all[b:b + 8]), lib.tensor(y_all[b:b + 8])
        y = model(fields)
        if isinstance(y, tuple):
            y, weights = y
            extra.append(weights)
        loss = criterion(y, target)
        model.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"loss": losses, "extra": extra, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("name", ["ffm", "afm", "xdeepfm", "autoint", "pnn"])
def test_more_ctr_models(name):
    both(ctr_more_train, name)


# --- 12. DIN: target attention over a padded behaviour sequence, Dice activation -------------

def din(lib, softmax_stag=False):
    nn, F = lib.nn, lib.nn.functional

    class Dice(nn.Module):
        def __init__(self, emb_size, dim=2, epsilon=1e-8):
            super(Dice, self).__init__()
            self.dim = dim
            self.bn = nn.BatchNorm1d(emb_size, eps=epsilon)
            self.sigmoid = nn.Sigmoid()
            if self.dim == 2:
                self.alpha = nn.Parameter(lib.zeros((emb_size,)))
            else:
                self.alpha = nn.Parameter(lib.zeros((emb_size, 1)))

        def forward(self, x):
            if self.dim == 2:
                x_p = self.sigmoid(self.bn(x))
                out = self.alpha * (1 - x_p) * x + x_p * x
            else:
                x = lib.transpose(x, 1, 2)
                x_p = self.sigmoid(self.bn(x))
                out = self.alpha * (1 - x_p) * x + x_p * x
                out = lib.transpose(out, 1, 2)
            return out

    class LocalActivationUnit(nn.Module):
        def __init__(self, emb, hidden=6):
            super().__init__()
            self.fc1 = nn.Linear(4 * emb, hidden)
            self.act = Dice(hidden, dim=3)
            self.fc2 = nn.Linear(hidden, 1)

        def forward(self, query, user_behavior):
            seq_len = user_behavior.size(1)
            queries = query.expand(-1, seq_len, -1)
            attention_input = lib.cat([queries, user_behavior, queries - user_behavior,
                                       queries * user_behavior], dim=-1)
            return self.fc2(self.act(self.fc1(attention_input)))

    class DIN(nn.Module):
        def __init__(self, n_items, emb=4):
            super().__init__()
            self.item_emb = nn.Embedding(n_items, emb, padding_idx=0)
            self.attn = LocalActivationUnit(emb)
            self.mlp = nn.Sequential(nn.Linear(2 * emb, 6), Dice(6), nn.Linear(6, 1))

        def forward(self, hist, target):
            keys = self.item_emb(hist)                       # (B, T, E)
            query = self.item_emb(target).unsqueeze(1)       # (B, 1, E)
            scores = self.attn(query, keys).transpose(1, 2)  # (B, 1, T)
            mask = (hist != 0).unsqueeze(1)
            if softmax_stag:  # DIEN's softmax over the valid behaviours
                paddings = lib.ones_like(scores) * (-2 ** 32 + 1)
                scores = lib.where(mask, scores, paddings)
                scores = F.softmax(scores, dim=-1)
            else:  # DIN's weighted sum, no normalisation
                scores = scores * mask
            interest = lib.matmul(scores, keys).squeeze(1)
            return self.mlp(lib.cat([interest, query.squeeze(1)], -1)).squeeze(-1)

    model = seeded(lib, DIN(N_ITEMS))
    seq, pos, neg = seq_data(8, seed=16)
    hist = lib.tensor(np.concatenate([seq, seq]))
    target = lib.tensor(np.concatenate([pos[:, -1], neg[:, -1]]))
    label = lib.tensor([1.0] * 8 + [0.0] * 8)
    optimizer = lib.optim.Adagrad(model.parameters(), lr=0.05, initial_accumulator_value=0.1)
    losses = []
    for _ in range(3):
        logits = model(hist, target)
        loss = F.binary_cross_entropy_with_logits(logits, label, pos_weight=lib.tensor(2.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"loss": losses, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("softmax_stag", [False, True])
def test_din_target_attention_dice(softmax_stag):
    both(din, softmax_stag)


# --- 13. LightGCN: normalised propagation over the user-item graph -------------------------

def lightgcn(lib, propagate="index_add"):
    nn, F = lib.nn, lib.nn.functional
    users, items, _ = interactions(30, seed=17)
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    n = N_USERS + N_ITEMS
    src = np.concatenate([pairs[:, 0], pairs[:, 1] + N_USERS])
    dst = np.concatenate([pairs[:, 1] + N_USERS, pairs[:, 0]])

    class LightGCN(nn.Module):
        def __init__(self, dim=4, n_layers=2):
            super().__init__()
            self.embedding_user = nn.Embedding(N_USERS, dim)
            self.embedding_item = nn.Embedding(N_ITEMS, dim)
            nn.init.normal_(self.embedding_user.weight, std=0.1)
            nn.init.normal_(self.embedding_item.weight, std=0.1)
            self.n_layers = n_layers
            row, col = lib.tensor(src), lib.tensor(dst)
            deg = lib.zeros(n).scatter_add_(0, row, lib.ones(row.numel()))
            deg_inv_sqrt = deg.pow(-0.5)
            deg_inv_sqrt[deg_inv_sqrt == float('inf')] = 0
            self.register_buffer("norm", deg_inv_sqrt[row] * deg_inv_sqrt[col])
            self.row, self.col = row, col
            dense = lib.zeros(n, n)
            dense[row, col] = self.norm
            self.register_buffer("graph", dense)

        def computer(self):
            all_emb = lib.cat([self.embedding_user.weight, self.embedding_item.weight])
            embs = [all_emb]
            for _ in range(self.n_layers):
                if propagate == "index_add":
                    msg = all_emb[self.row] * self.norm.unsqueeze(-1)
                    all_emb = lib.zeros_like(all_emb).index_add_(0, self.col, msg)
                elif propagate == "scatter_add":
                    msg = all_emb.index_select(0, self.row) * self.norm.view(-1, 1)
                    idx = self.col.view(-1, 1).expand_as(msg)
                    all_emb = lib.zeros_like(all_emb).scatter_add(0, idx, msg)
                else:  # a dense normalised adjacency (the sparse.mm of the original)
                    all_emb = lib.mm(self.graph.T, all_emb)
                embs.append(all_emb)
            light_out = lib.mean(lib.stack(embs, dim=1), dim=1)
            # ``torch.split(light_out, [n_users, n_items])`` in the original: nodegrad's
            # top-level split is NumPy's (cut positions, with a warning here) unless given ``dim=``
            return lib.split(light_out, [N_USERS, N_ITEMS], dim=0)

        def bpr_loss(self, users, pos, neg):
            all_users, all_items = self.computer()
            users_emb, pos_emb, neg_emb = all_users[users], all_items[pos], all_items[neg]
            reg_loss = (1 / 2) * (self.embedding_user(users).norm(2).pow(2)
                                  + self.embedding_item(pos).norm(2).pow(2)
                                  + self.embedding_item(neg).norm(2).pow(2)) / float(len(users))
            pos_scores = lib.sum(lib.mul(users_emb, pos_emb), dim=1)
            neg_scores = lib.sum(lib.mul(users_emb, neg_emb), dim=1)
            loss = lib.mean(F.softplus(neg_scores - pos_scores))
            return loss, reg_loss

    model = seeded(lib, LightGCN())
    opt = lib.optim.Adam(model.parameters(), lr=0.05)
    negs = draws(18, N_ITEMS, (len(pairs),))
    losses = []
    for b in range(0, len(pairs), 10):
        u = lib.tensor(pairs[b:b + 10, 0])
        p, q = lib.tensor(pairs[b:b + 10, 1]), lib.tensor(negs[b:b + 10])
        loss, reg_loss = model.bpr_loss(u, p, q)
        loss = loss + reg_loss * 1e-3
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with lib.no_grad():
        all_users, all_items = model.computer()
        rating = lib.sigmoid(lib.matmul(all_users, all_items.t()))
    return {"loss": losses, "rating": rating, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("propagate", ["index_add", "scatter_add", "dense"])
def test_lightgcn_propagation(propagate):
    both(lightgcn, propagate)


# --- 14. BERT4Rec: cloze task over right-padded sequences, TransformerEncoder, ignore_index ----

def bert4rec(lib, norm_first=False):
    nn, F = lib.nn, lib.nn.functional
    mask_token = N_ITEMS  # items 1..N_ITEMS-1, 0 padding, N_ITEMS the [MASK]

    class BERT4Rec(nn.Module):
        def __init__(self, hidden=4, heads=2, layers=2, max_len=MAXLEN):
            super().__init__()
            self.item_embedding = nn.Embedding(N_ITEMS + 1, hidden, padding_idx=0)
            self.position_embedding = nn.Embedding(max_len, hidden)
            self.ln = nn.LayerNorm(hidden)
            encoder_layer = nn.TransformerEncoderLayer(
                d_model=hidden, nhead=heads, dim_feedforward=4 * hidden, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=norm_first)
            self.encoder = nn.TransformerEncoder(encoder_layer, num_layers=layers,
                                                 enable_nested_tensor=False)
            self.out = nn.Linear(hidden, N_ITEMS + 1)

        def forward(self, seq):
            positions = lib.arange(seq.size(1), device=seq.device).unsqueeze(0)
            x = self.ln(self.item_embedding(seq) + self.position_embedding(positions))
            x = self.encoder(x, src_key_padding_mask=seq == 0)
            return self.out(x)

    model = seeded(lib, BERT4Rec())
    optimizer = lib.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    seq, pos, _ = seq_data(6, seed=19)
    full = np.concatenate([seq, pos[:, -1:]], 1)[:, 1:]
    # right-pad: move the zeros to the end of each row
    right = np.stack([np.concatenate([r[r != 0], r[r == 0]]) for r in full])
    cloze = draws(20, 3, right.shape) == 0  # mask about a third of the items
    cloze &= right != 0
    cloze[:, 0] |= ~cloze.any(1)
    inputs = np.where(cloze, mask_token, right)
    labels = np.where(cloze, right, 0)
    losses = []
    for _ in range(3):
        logits = model(lib.tensor(inputs))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), lib.tensor(labels).view(-1),
                               ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        lib.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        losses.append(loss.item())
    return {"loss": losses, "w": arrays(model.state_dict())}


@pytest.mark.parametrize("norm_first", [False, True])
def test_bert4rec_cloze(norm_first):
    both(bert4rec, norm_first)


# --- 15. Adagrad over parameter groups (no decay on embeddings), resumed from its state dict ---

def adagrad_resume(lib, resume_at):
    F = lib.nn.functional
    model = seeded(lib, ctr_model(lib, "fm"))
    emb = [p for n, p in model.named_parameters() if "embedding" in n or "fc" in n]
    rest = [p for n, p in model.named_parameters() if not ("embedding" in n or "fc" in n)]
    groups = [{"params": emb, "weight_decay": 0.0}, {"params": rest, "lr": 0.02}]

    def make():
        return lib.optim.Adagrad(groups, lr=0.05, lr_decay=0.1, weight_decay=1e-3,
                                 initial_accumulator_value=0.1, eps=1e-10)

    optimizer = make()
    x_all, y_all = ctr_data(seed=21)
    losses = []
    for step, b in enumerate(range(0, len(x_all), 4)):
        y = model(lib.tensor(x_all[b:b + 4]))
        loss = F.binary_cross_entropy(y, lib.tensor(y_all[b:b + 4]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == resume_at:
            saved = optimizer.state_dict()
            optimizer = make()
            optimizer.load_state_dict(saved)
    sd = optimizer.state_dict()
    return {"loss": losses, "sum": [sd["state"][k]["sum"] for k in sorted(sd["state"])],
            "step": [float(sd["state"][k]["step"]) for k in sorted(sd["state"])],
            "w": arrays(model.state_dict())}


def test_adagrad_groups_resume():
    got = both(adagrad_resume, 2)
    assert_same(adagrad_resume(ng, None), got, 0.0)


def test_param_group_dicts_keep_their_parameters_for_a_rebuilt_optimizer():
    """PyTorch's ``add_param_group`` writes the list back into the caller's dict, so an
    optimiser rebuilt from the same dicts (a resume) sees the parameters a generator held; a
    set (no stable order) is refused."""
    def run(lib):
        model = seeded(lib, ctr_model(lib, "fm"))
        groups = [{"params": model.embedding.parameters(), "weight_decay": 0.0},
                  {"params": model.linear.parameters()}]
        first = lib.optim.Adagrad(groups, lr=0.1)
        again = lib.optim.Adagrad(groups, lr=0.1)
        again.load_state_dict(first.state_dict())
        return [len(g["params"]) for g in again.param_groups]

    assert run(ng) == run(torch) == [1, 2]
    p = ng.nn.Parameter(ng.ones(2))
    with pytest.raises(TypeError, match="ordered collections"):
        ng.optim.SGD([{"params": {p}}], lr=0.1)
