"""Deep learning on tables, ported from PyTorch by changing only the imports.

Each program is written once against a library ``lib`` (``torch`` or ``nodegrad``) as the
papers' reference code writes it: TabNet (sparsemax, ghost batch norm, GLU blocks, attentive
transformer with its prior), FT-Transformer (feature tokenizer with categorical offsets, a CLS
token), NODE's entmax-1.5 and its oblivious decision trees, DCN-v2's cross layers, SAINT's
intersample attention, periodic numerical embeddings (PLR), and a training loop with AdamW
parameter groups (no decay on biases and norms), OneCycleLR, label smoothing and gradient
clipping. Data: scikit-learn's wine table with two categorical columns binned from it, the
same arrays for both libraries, float64; every recorded value must agree to rounding.
"""

# the programs' own spelling is kept
# ruff: noqa: UP008

from __future__ import annotations

import numpy as np
import pytest

from _ports import both, float64_one_thread, seeded_build  # noqa: F401

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("sklearn.datasets")
pytestmark = pytest.mark.usefixtures("float64_one_thread")

TOL = 1e-9


def wine():
    """Standardised numeric features, two categorical columns (quartile bins of two features,
    cardinalities 4 and 3) and the labels, in a fixed shuffled order."""
    d = datasets.load_wine()
    x = d.data
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target[order]
    cat = np.stack([np.digitize(x[:, 0], np.quantile(x[:, 0], [0.25, 0.5, 0.75])),
                    np.digitize(x[:, 6], np.quantile(x[:, 6], [1 / 3, 2 / 3]))], 1)
    num = (x - x.mean(0)) / x.std(0)
    return num, cat.astype(np.int64), y.astype(np.int64)


# --- TabNet ---------------------------------------------------------------------------------------

def tabnet_modules(lib):
    nn, F = lib.nn, lib.nn.functional

    def sparsemax(input, dim=-1):
        # Martins & Astudillo, as pytorch-tabnet's SparsemaxFunction computes the forward
        max_val, _ = input.max(dim=dim, keepdim=True)
        input = input - max_val
        input_srt, _ = lib.sort(input, descending=True, dim=dim)
        input_cumsum = input_srt.cumsum(dim) - 1
        d = input.size(dim)
        rhos = lib.arange(1, d + 1, dtype=input.dtype).view(1, -1)
        support = rhos * input_srt > input_cumsum
        support_size = support.sum(dim=dim).unsqueeze(dim)
        tau = input_cumsum.gather(dim, support_size - 1)
        tau = tau / support_size.to(input.dtype)
        return lib.clamp(input - tau, min=0)

    class GBN(nn.Module):
        """Ghost batch norm: batch norm over virtual batches."""

        def __init__(self, input_dim, virtual_batch_size=8, momentum=0.01):
            super(GBN, self).__init__()
            self.input_dim = input_dim
            self.virtual_batch_size = virtual_batch_size
            self.bn = nn.BatchNorm1d(self.input_dim, momentum=momentum)

        def forward(self, x):
            chunks = x.chunk(int(np.ceil(x.shape[0] / self.virtual_batch_size)), 0)
            res = [self.bn(x_) for x_ in chunks]
            return lib.cat(res, dim=0)

    class GLULayer(nn.Module):
        def __init__(self, input_dim, output_dim, fc=None, virtual_batch_size=8):
            super(GLULayer, self).__init__()
            self.output_dim = output_dim
            self.fc = fc if fc is not None else nn.Linear(input_dim, 2 * output_dim, bias=False)
            self.bn = GBN(2 * output_dim, virtual_batch_size=virtual_batch_size)

        def forward(self, x):
            x = self.fc(x)
            x = self.bn(x)
            return lib.mul(x[:, : self.output_dim], lib.sigmoid(x[:, self.output_dim:]))

    class FeatTransformer(nn.Module):
        def __init__(self, input_dim, output_dim, shared, n_independent=1):
            super().__init__()
            self.shared = GLULayer(input_dim, output_dim, fc=shared)
            self.independent = nn.ModuleList(
                [GLULayer(output_dim, output_dim) for _ in range(n_independent)])
            self.scale = lib.sqrt(lib.tensor([0.5], dtype=lib.float64))

        def forward(self, x):
            x = self.shared(x)
            for glu in self.independent:
                x = lib.add(x, glu(x))
                x = x * self.scale
            return x

    class AttentiveTransformer(nn.Module):
        def __init__(self, input_dim, group_dim):
            super().__init__()
            self.fc = nn.Linear(input_dim, group_dim, bias=False)
            self.bn = GBN(group_dim)

        def forward(self, priors, processed_feat):
            x = self.fc(processed_feat)
            x = self.bn(x)
            x = lib.mul(x, priors)
            return sparsemax(x)

    class TabNet(nn.Module):
        def __init__(self, input_dim, output_dim, n_d=6, n_a=6, n_steps=3, gamma=1.3):
            super().__init__()
            self.n_d, self.n_steps, self.gamma = n_d, n_steps, gamma
            self.initial_bn = nn.BatchNorm1d(input_dim, momentum=0.01)
            shared = nn.Linear(input_dim, 2 * (n_d + n_a), bias=False)
            self.initial_splitter = FeatTransformer(input_dim, n_d + n_a, shared)
            self.feat_transformers = nn.ModuleList(
                [FeatTransformer(input_dim, n_d + n_a, shared) for _ in range(n_steps)])
            self.att_transformers = nn.ModuleList(
                [AttentiveTransformer(n_a, input_dim) for _ in range(n_steps)])
            self.final_mapping = nn.Linear(n_d, output_dim, bias=False)

        def forward(self, x):
            res = 0
            x = self.initial_bn(x)
            prior = lib.ones(x.shape).to(x.device)
            M_loss = 0
            att = self.initial_splitter(x)[:, self.n_d:]
            masks = []
            for step in range(self.n_steps):
                M = self.att_transformers[step](prior, att)
                M_loss += lib.mean(lib.sum(lib.mul(M, lib.log(M + 1e-15)), dim=1))
                prior = lib.mul(self.gamma - M, prior)
                masked_x = lib.mul(M, x)
                out = self.feat_transformers[step](masked_x)
                d = F.relu(out[:, : self.n_d])
                res = lib.add(res, d)
                att = out[:, self.n_d:]
                masks.append(M)
            M_loss /= self.n_steps
            return self.final_mapping(res), M_loss, masks

    return sparsemax, TabNet


def test_sparsemax_matches_its_definition_and_torch():
    def run(lib):
        sparsemax, _ = tabnet_modules(lib)
        z = lib.tensor(np.random.default_rng(1).standard_normal((6, 7)) * 2,
                       requires_grad=True)
        p = sparsemax(z)
        (p * lib.arange(7.0)).sum().backward()
        return {"p": p, "sum": p.sum(1), "nnz": (p > 0).sum(1).double(), "grad": z.grad}

    rec = both(run, tol=TOL)
    np.testing.assert_allclose(rec["sum"], 1.0, rtol=1e-12)


def test_tabnet_trains_with_its_sparsity_loss():
    num, _, y = wine()

    def run(lib):
        _, TabNet = tabnet_modules(lib)
        model = seeded_build(lib, lambda L: tabnet_modules(L)[1](13, 3))
        opt = lib.optim.Adam(model.parameters(), lr=2e-2)
        rec = []
        for step in range(6):
            i = slice(32 * step, 32 * step + 32)
            out, m_loss, masks = model(lib.tensor(num[i]))
            loss = lib.nn.functional.cross_entropy(out, lib.tensor(y[i])) + 1e-3 * m_loss
            opt.zero_grad()
            loss.backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            rec.append([loss, m_loss, masks[0][:2]])
        model.eval()
        with lib.no_grad():
            logits, _, masks = model(lib.tensor(num[128:]))
        return {"steps": rec, "logits": logits, "masks": masks,
                "state": dict(model.state_dict())}

    both(run, tol=TOL)


# --- FT-Transformer -------------------------------------------------------------------------------

def ft_transformer(lib, n_num, cards, d_token=8, n_blocks=2, n_out=3):
    nn, F = lib.nn, lib.nn.functional

    class Tokenizer(nn.Module):
        def __init__(self, d_numerical, categories, d_token, bias=True):
            super().__init__()
            d_bias = d_numerical + len(categories)
            category_offsets = lib.tensor([0] + categories[:-1]).cumsum(0)
            self.register_buffer("category_offsets", category_offsets)
            self.category_embeddings = nn.Embedding(sum(categories), d_token)
            nn.init.kaiming_uniform_(self.category_embeddings.weight, a=np.sqrt(5))
            self.weight = nn.Parameter(lib.Tensor(d_numerical + 1, d_token))
            self.bias = nn.Parameter(lib.Tensor(d_bias, d_token)) if bias else None
            nn.init.kaiming_uniform_(self.weight, a=np.sqrt(5))
            nn.init.kaiming_uniform_(self.bias, a=np.sqrt(5))

        def forward(self, x_num, x_cat):
            x_num = lib.cat([lib.ones(len(x_num), 1, device=x_num.device)] + [x_num], dim=1)
            x = self.weight[None] * x_num[:, :, None]
            x = lib.cat([x, self.category_embeddings(x_cat + self.category_offsets[None])],
                        dim=1)
            bias = lib.cat([lib.zeros(1, self.bias.shape[1], device=x.device), self.bias])
            return x + bias[None]

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm0 = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, 2, dropout=0.0, batch_first=True)
            self.norm1 = nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, 2 * d * 2 // 2 * 2), nn.ReLU(),
                                     nn.Linear(2 * d * 2 // 2 * 2, d))

        def forward(self, x, last):
            h = self.norm0(x)
            q = h[:, :1] if last else h  # the last block attends from the CLS token only
            a, _ = self.attn(q, h, h, need_weights=False)
            x = (x[:, :1] if last else x) + a
            return x + self.ffn(self.norm1(x))

    class FTTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = Tokenizer(n_num, cards, d_token)
            self.blocks = nn.ModuleList([Block(d_token) for _ in range(n_blocks)])
            self.head_norm = nn.LayerNorm(d_token)
            self.head = nn.Linear(d_token, n_out)

        def forward(self, x_num, x_cat):
            x = self.tokenizer(x_num, x_cat)
            for i, block in enumerate(self.blocks):
                x = block(x, last=i == len(self.blocks) - 1)
            return self.head(F.relu(self.head_norm(x[:, 0])))

    return FTTransformer()


def _no_decay_groups(model, weight_decay):
    """The common AdamW grouping: no decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name.endswith("bias") or "norm" in name or "embeddings" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def test_ft_transformer_trains_with_onecycle_and_label_smoothing():
    num, cat, y = wine()

    def run(lib):
        model = seeded_build(lib, lambda L: ft_transformer(L, 13, [4, 3]))
        opt = lib.optim.AdamW(_no_decay_groups(model, 1e-2), lr=1e-3)
        sched = lib.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=8)
        crit = lib.nn.CrossEntropyLoss(label_smoothing=0.1)
        rec = []
        for step in range(8):
            i = slice(20 * step, 20 * step + 20)
            loss = crit(model(lib.tensor(num[i]), lib.tensor(cat[i])), lib.tensor(y[i]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            rec.append([loss, sched.get_last_lr()[0], opt.param_groups[1]["betas"][0]])
        with lib.no_grad():
            pred = model(lib.tensor(num[160:]), lib.tensor(cat[160:])).argmax(-1)
        return {"steps": rec, "pred": pred.double(), "state": dict(model.state_dict())}

    both(run, tol=TOL)


# --- NODE: entmax-1.5 and oblivious decision trees ------------------------------------------------

def entmax15(lib, input, dim=-1):
    """Peters et al.'s exact entmax-1.5 by sorting (the entmax package's forward)."""
    max_val, _ = input.max(dim=dim, keepdim=True)
    input = (input - max_val) / 2
    Xsrt, _ = lib.sort(input, descending=True, dim=dim)
    d = input.shape[dim]
    view = [1] * input.dim()
    view[dim] = -1  # the entmax package's _make_ix_like(X, dim)
    rho = lib.arange(1, d + 1, dtype=input.dtype).view(view)
    mean = Xsrt.cumsum(dim) / rho
    mean_sq = (Xsrt ** 2).cumsum(dim) / rho
    ss = rho * (mean_sq - mean ** 2)
    delta = (1 - ss) / rho
    delta_nz = lib.clamp(delta, 0)
    tau = mean - lib.sqrt(delta_nz)
    support_size = (tau <= Xsrt).sum(dim).unsqueeze(dim)
    tau_star = tau.gather(dim, support_size - 1)
    return lib.clamp(input - tau_star, min=0) ** 2


def node_layer(lib, in_features, num_trees=4, depth=3, tree_dim=3):
    nn = lib.nn

    class ODST(nn.Module):
        def __init__(self):
            super().__init__()
            self.response = nn.Parameter(lib.zeros([num_trees, tree_dim, 2 ** depth]))
            nn.init.normal_(self.response)
            self.feature_selection_logits = nn.Parameter(
                lib.zeros([in_features, num_trees, depth]))
            nn.init.uniform_(self.feature_selection_logits)
            self.feature_thresholds = nn.Parameter(lib.zeros([num_trees, depth]))
            self.log_temperatures = nn.Parameter(lib.zeros([num_trees, depth]))
            with lib.no_grad():
                indices = lib.arange(2 ** depth)
                offsets = 2 ** lib.arange(depth)
                bin_codes = (indices.view(1, -1) // offsets.view(-1, 1) % 2).to(lib.float64)
                bin_codes_1hot = lib.stack([bin_codes, 1.0 - bin_codes], dim=-1)
            self.bin_codes_1hot = nn.Parameter(bin_codes_1hot, requires_grad=False)

        def forward(self, input):
            feature_selectors = entmax15(lib, self.feature_selection_logits, dim=0)
            feature_values = lib.einsum("bi,ind->bnd", input, feature_selectors)
            threshold_logits = (feature_values - self.feature_thresholds) * lib.exp(
                -self.log_temperatures)
            threshold_logits = lib.stack([-threshold_logits, threshold_logits], dim=-1)
            bins = lib.sigmoid(threshold_logits)  # sparsemoid's smooth cousin
            bin_matches = lib.einsum("btds,dcs->btdc", bins, self.bin_codes_1hot)
            response_weights = lib.prod(bin_matches, dim=-2)
            response = lib.einsum("bnd,ncd->bnc", response_weights, self.response)
            return response.flatten(1, 2)

    return ODST()


def test_entmax15_and_node_trees_train():
    num, _, y = wine()

    def run(lib):
        z = lib.tensor(np.random.default_rng(2).standard_normal((5, 9)), requires_grad=True)
        p = entmax15(lib, z)
        (p * lib.linspace(-1, 1, 9)).sum().backward()
        rec = {"entmax": p, "sums": p.sum(-1), "grad": z.grad}
        model = seeded_build(lib, lambda L: L.nn.Sequential(node_layer(L, 13), L.nn.Linear(12, 3)))
        opt = lib.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for step in range(5):
            i = slice(32 * step, 32 * step + 32)
            loss = lib.nn.functional.cross_entropy(model(lib.tensor(num[i])), lib.tensor(y[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss)
        rec.update(losses=losses, state=dict(model.state_dict()))
        return rec

    rec = both(run, tol=TOL)
    np.testing.assert_allclose(rec["sums"], 1.0, rtol=1e-12)


# --- DCN-v2 and SAINT -----------------------------------------------------------------------------

def dcn_v2(lib, d_in, n_cross=2, low_rank=None):
    nn = lib.nn

    class CrossNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.U = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(
                lib.empty(d_in, low_rank or d_in))) for _ in range(n_cross)])
            self.V = nn.ParameterList([nn.Parameter(nn.init.xavier_normal_(
                lib.empty(d_in, low_rank or d_in))) for _ in range(n_cross)]) \
                if low_rank else None
            self.bias = nn.ParameterList([nn.Parameter(nn.init.zeros_(lib.empty(d_in, 1)))
                                          for _ in range(n_cross)])

        def forward(self, inputs):
            x_0 = inputs.unsqueeze(2)
            x_l = x_0
            for i in range(n_cross):
                if self.V is None:
                    xl_w = lib.matmul(self.U[i].T, x_l) + self.bias[i]
                else:
                    xl_w = lib.matmul(self.U[i], lib.matmul(self.V[i].T, x_l)) + self.bias[i]
                x_l = x_0 * xl_w + x_l
            return lib.squeeze(x_l, dim=2)

    class DCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.cross = CrossNetV2()
            self.deep = nn.Sequential(nn.Linear(d_in, 16), nn.ReLU(), nn.Dropout(0.0),
                                      nn.Linear(16, 8), nn.ReLU())
            self.out = nn.Linear(d_in + 8, 3)

        def forward(self, x):
            return self.out(lib.cat([self.cross(x), self.deep(x)], dim=-1))

    return DCN()


def saint(lib, n_feat, d=8):
    nn, F = lib.nn, lib.nn.functional

    class IntersampleAttention(nn.Module):
        """SAINT's row attention: each sample attends over the batch, its features flattened."""

        def __init__(self, dim, heads=2, dim_head=4):
            super().__init__()
            inner_dim = dim_head * heads
            self.heads = heads
            self.scale = dim_head ** -0.5
            self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
            self.to_out = nn.Linear(inner_dim, dim)

        def forward(self, x):
            b, n, dd = x.shape
            x = x.reshape(1, b, n * dd)
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            q, k, v = (t.reshape(1, b, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            sim = lib.einsum("bhid,bhjd->bhij", q, k) * self.scale
            attn = sim.softmax(dim=-1)
            out = lib.einsum("bhij,bhjd->bhid", attn, v)
            out = out.transpose(1, 2).reshape(1, b, -1)
            return self.to_out(out).reshape(b, n, dd)

    class SAINT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeds = nn.ModuleList([nn.Linear(1, d) for _ in range(n_feat)])
            self.norm = nn.LayerNorm(n_feat * d)
            self.row_attn = IntersampleAttention(n_feat * d)
            self.ff = nn.Sequential(nn.Linear(n_feat * d, 16), nn.GELU(), nn.Linear(16, 3))

        def forward(self, x):
            tokens = lib.stack([emb(x[:, i:i + 1]) for i, emb in enumerate(self.embeds)], 1)
            h = tokens.flatten(1).unsqueeze(1)
            h = h + self.row_attn(self.norm(h).view(h.shape[0], 1, -1))
            return self.ff(F.layer_norm(h.squeeze(1), (h.shape[-1],)))

    return SAINT()


@pytest.mark.parametrize("which", ["dcn_full", "dcn_low_rank", "saint"])
def test_dcn_v2_and_saint_train(which):
    num, _, y = wine()
    build = {"dcn_full": lambda L: dcn_v2(L, 13),
             "dcn_low_rank": lambda L: dcn_v2(L, 13, low_rank=4),
             "saint": lambda L: saint(L, 6)}[which]
    cols = slice(None) if which != "saint" else slice(0, 6)

    def run(lib):
        model = seeded_build(lib, build)
        opt = lib.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
        rec = []
        for step in range(5):
            i = slice(24 * step, 24 * step + 24)
            loss = lib.nn.functional.cross_entropy(model(lib.tensor(num[i, cols])),
                                                   lib.tensor(y[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.append(loss)
        return {"losses": rec, "state": dict(model.state_dict())}

    both(run, tol=TOL)


# --- periodic numerical embeddings (Gorishniy et al. 2022), mixup and target encoding -------------

def test_plr_embeddings_mixup_and_target_encoding():
    num, cat, y = wine()

    def run(lib):
        nn, F = lib.nn, lib.nn.functional

        class Periodic(nn.Module):
            def __init__(self, n_features, k=4, sigma=0.5):
                super().__init__()
                self.coefficients = nn.Parameter(lib.normal(0.0, sigma, (n_features, k)))

            def forward(self, x):
                x = 2 * np.pi * self.coefficients[None] * x[..., None]
                return lib.cat([lib.cos(x), lib.sin(x)], -1)

        class PLR(nn.Module):
            def __init__(self, n_features, k=4, d=6):
                super().__init__()
                self.periodic = Periodic(n_features, k)
                self.linear = nn.Linear(2 * k, d)
                self.head = nn.Linear(n_features * d, 3)

            def forward(self, x):
                return self.head(F.relu(self.linear(self.periodic(x))).flatten(1))

        model = PLR(13).double()
        state = {k: lib.tensor(np.random.default_rng(3).standard_normal(tuple(v.shape)) * 0.3)
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        opt = lib.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        lam = np.random.default_rng(4).beta(0.4, 0.4, 6)
        perm = [np.random.default_rng(5 + s).permutation(24) for s in range(6)]
        rec = []
        for step in range(6):
            i = slice(24 * step, 24 * step + 24)
            x, t = lib.tensor(num[i]), lib.tensor(y[i])
            idx = lib.tensor(perm[step])
            mixed = lam[step] * x + (1 - lam[step]) * x[idx]
            out = model(mixed)
            loss = lam[step] * F.cross_entropy(out, t) + (1 - lam[step]) * F.cross_entropy(
                out, t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.append(loss)
        # smoothed target encoding of a categorical column with scatter_add / bincount
        c, t = lib.tensor(cat[:, 0]), F.one_hot(lib.tensor(y), 3).double()
        sums = lib.zeros(4, 3, dtype=lib.float64).scatter_add_(0, c[:, None].expand(-1, 3), t)
        counts = lib.bincount(c, minlength=4).double()[:, None]
        prior = t.mean(0, keepdim=True)
        enc = (sums + 5 * prior) / (counts + 5)
        return {"losses": rec, "state": dict(model.state_dict()), "encoding": enc[c[:7]],
                "bucket": lib.bucketize(lib.tensor(num[:9, 0]),
                                        lib.tensor([-1.0, 0.0, 1.0]), right=True).double()}

    both(run, tol=TOL)


# --- preprocessing in tensors: imputation, quantile transform, label encoding, class weights ------

def test_preprocessing_and_weighted_losses():
    num, cat, y = wine()
    holes = np.random.default_rng(6).random(num.shape) < 0.1
    raw = np.where(holes, np.nan, num)

    def run(lib):
        F = lib.nn.functional
        x = lib.tensor(raw)
        col_mean = lib.nanmean(x, dim=0)
        col_median = lib.nanmedian(x, dim=0).values
        by_mean = lib.where(lib.isnan(x), col_mean.expand_as(x), x)
        filled = lib.nan_to_num(x, nan=0.0)
        # kNN imputation: distances over the observed columns of each row
        mask = (~lib.isnan(x)).double()
        d = lib.cdist(filled * mask, by_mean * mask)
        d.fill_diagonal_(float("inf"))
        _, nn_idx = d.topk(3, dim=1, largest=False)
        knn = by_mean[nn_idx].mean(1)
        imputed = lib.where(lib.isnan(x), knn, x)
        # a quantile transform to uniform: empirical quantiles, searchsorted and interpolation
        qs = lib.linspace(0, 1, 11, dtype=lib.float64)
        ref = lib.quantile(imputed, qs, dim=0).T.contiguous()
        pos = lib.searchsorted(ref, imputed.T.contiguous()).T.clamp(1, 10)
        lo = ref.gather(1, (pos - 1).T).T
        hi = ref.gather(1, pos.T).T
        frac = ((imputed - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        uniform = (pos - 1 + frac) / 10
        # label encoding and one-hot of a categorical column, class weights from counts
        values, codes = lib.unique(lib.tensor(cat[:, 0] * 7 + 3), return_inverse=True)
        onehot = F.one_hot(codes, num_classes=len(values)).double()
        t = lib.tensor(y)
        counts = lib.bincount(t, minlength=3).double()
        weights = counts.sum() / (3 * counts)
        logits = lib.tensor(np.random.default_rng(7).standard_normal((len(y), 3)),
                            requires_grad=True)
        weighted = F.cross_entropy(logits, t, weight=weights)
        logp = F.log_softmax(logits, -1)
        pt = logp.gather(1, t[:, None]).squeeze(1).exp()
        focal = (-(1 - pt) ** 2 * logp.gather(1, t[:, None]).squeeze(1) * weights[t]).mean()
        binary = F.binary_cross_entropy_with_logits(
            logits[:, 0], (t == 0).double(), pos_weight=counts[1:].sum() / counts[0])
        (weighted + focal + binary).backward()
        return {"mean": col_mean, "median": col_median, "imputed": imputed,
                "uniform": uniform, "codes": codes.double(), "onehot": onehot.sum(0),
                "hist": lib.histc(uniform[:, 0], bins=5, min=0, max=1),
                "losses": [weighted, focal, binary], "grad": logits.grad,
                "std": imputed.std(0), "var": lib.var(imputed, 0, unbiased=False)}

    both(run, tol=TOL)
