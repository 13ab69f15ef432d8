"""PyTorch state dicts in nodegrad's layers and back: the same names, order, shapes and dtypes,
strict loading both ways, the same outputs, input and parameter gradients and buffers in train
and eval mode (float64); PyTorch's default initialisation distributions. Regression tests for
the implicit dimension of ``Softmax()`` / ``LogSoftmax()`` / ``Softmin()`` built without one,
``max_norm`` under the infinity norm and p = 0, ``include_last_offset`` with a short last
offset, batch norm's eps = 0 in training and ``spectral_norm`` on a parametrised weight."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")


# --- Softmax / LogSoftmax / Softmin without dim: PyTorch's implicit dimension ------------------
@pytest.mark.parametrize("name", ["Softmax", "LogSoftmax", "Softmin"])
@pytest.mark.parametrize("shape", [(), (4,), (3, 4), (2, 3, 4), (2, 3, 4, 5), (2, 2, 2, 2, 3)])
def test_softmax_modules_without_dim_use_pytorchs_implicit_dim(name, shape):
    """0 for 0-, 1- and 3-D inputs, else 1, with PyTorch's deprecation warning (a silent
    softmax over the last axis before)."""
    x = np.random.default_rng(0).standard_normal(shape)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        want = getattr(torch.nn, name)()(torch.tensor(x)).numpy()
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        got = getattr(nn, name)()(ng.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmin"])
def test_functional_softmax_without_dim_uses_pytorchs_implicit_dim(name):
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    with pytest.warns(UserWarning, match=f"Implicit dimension choice for {name} "):
        got = getattr(F, name)(ng.tensor(x)).numpy()
    with pytest.warns(UserWarning):
        want = getattr(torch.nn.functional, name)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_softmax_with_dim_or_axis_does_not_warn_and_repr_names_dim():
    x = ng.tensor(np.random.default_rng(2).standard_normal((2, 3, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = nn.Softmax(dim=-1)(x).numpy()
        np.testing.assert_allclose(F.softmax(x, axis=-1).numpy(), a)
        np.testing.assert_allclose(F.log_softmax(x, -1).numpy(), np.log(a), atol=1e-6)
    assert repr(nn.Softmax()) == repr(torch.nn.Softmax()) == "Softmax(dim=None)"
    assert repr(nn.LogSoftmax(1)) == repr(torch.nn.LogSoftmax(1))
    assert repr(nn.Softmin(0)) == repr(torch.nn.Softmin(0))


# --- state dicts both ways, outputs, gradients and buffers ------------------------------------
def _flat(o) -> list:
    if isinstance(o, (tuple, list)):
        return [y for x in o for y in _flat(x)]
    return [o]


def _to_ng(x, grad: bool = False):
    if isinstance(x, torch.Tensor):
        t = ng.tensor(x.detach().numpy().copy())
        if grad and x.is_floating_point():
            t.requires_grad = True
        return t
    if isinstance(x, tuple):
        return tuple(_to_ng(v) for v in x)
    return x


_T = torch.tensor
E = 8
CASES = {  # name: (build with a module namespace, inputs as a function of a seeded generator)
    "Linear": (lambda m: m.Linear(4, 3), lambda g: [torch.randn(2, 4, generator=g)]),
    "Bilinear": (lambda m: m.Bilinear(3, 4, 5),
                 lambda g: [torch.randn(2, 3, generator=g), torch.randn(2, 4, generator=g)]),
    "Conv2d-circular-groups": (
        lambda m: m.Conv2d(4, 6, 3, padding=1, groups=2, stride=2, padding_mode="circular"),
        lambda g: [torch.randn(2, 4, 7, 8, generator=g)]),
    "Conv1d-same-reflect": (lambda m: m.Conv1d(4, 6, 4, padding="same", dilation=2,
                                               padding_mode="reflect"),
                            lambda g: [torch.randn(2, 4, 9, generator=g)]),
    "ConvTranspose2d": (lambda m: m.ConvTranspose2d(4, 6, 3, stride=(2, 3), groups=2,
                                                    output_padding=(1, 2), padding=1),
                        lambda g: [torch.randn(2, 4, 5, 4, generator=g)]),
    "BatchNorm1d-momentum-None": (lambda m: m.BatchNorm1d(3, momentum=None),
                                  lambda g: [torch.randn(4, 3, 5, generator=g)]),
    "BatchNorm2d-no-stats": (lambda m: m.BatchNorm2d(3, track_running_stats=False),
                             lambda g: [torch.randn(4, 3, 2, 5, generator=g)]),
    "InstanceNorm1d-stats": (lambda m: m.InstanceNorm1d(3, affine=True, track_running_stats=True),
                             lambda g: [torch.randn(4, 3, 5, generator=g)]),
    "GroupNorm": (lambda m: m.GroupNorm(2, 4), lambda g: [torch.randn(3, 4, 5, generator=g)]),
    "LayerNorm-no-bias": (lambda m: m.LayerNorm(5, bias=False),
                          lambda g: [torch.randn(3, 4, 5, generator=g)]),
    "RMSNorm": (lambda m: m.RMSNorm([4, 5]), lambda g: [torch.randn(3, 4, 5, generator=g)]),
    "LocalResponseNorm": (lambda m: m.LocalResponseNorm(3),
                          lambda g: [torch.randn(2, 5, 4, generator=g)]),
    "Embedding-pad-maxnorm": (lambda m: m.Embedding(10, 4, padding_idx=2, max_norm=1.0),
                              lambda g: [_T([[2, 3, 2], [1, 2, 9]])]),
    "EmbeddingBag-psw": (lambda m: m.EmbeddingBag(10, 4, mode="sum", padding_idx=4),
                         lambda g: [_T([1, 2, 4, 5, 4, 3, 2, 9]), _T([0, 2, 2, 5]),
                                    torch.randn(8, generator=g)]),
    "LSTM-proj-bidir": (lambda m: m.LSTM(3, 5, proj_size=2, num_layers=2, bidirectional=True,
                                         batch_first=True),
                        lambda g: [torch.randn(2, 5, 3, generator=g)]),
    "GRU-no-bias": (lambda m: m.GRU(3, 4, bias=False, num_layers=2),
                    lambda g: [torch.randn(5, 2, 3, generator=g)]),
    "RNNCell": (lambda m: m.RNNCell(3, 4), lambda g: [torch.randn(2, 3, generator=g)]),
    "MultiheadAttention-kdim-bias-kv": (
        lambda m: m.MultiheadAttention(E, 2, kdim=5, vdim=6, add_bias_kv=True,
                                       add_zero_attn=True, batch_first=True),
        lambda g: [torch.randn(2, 3, E, generator=g), torch.randn(2, 4, 5, generator=g),
                   torch.randn(2, 4, 6, generator=g)]),
    "TransformerDecoderLayer-gelu-norm-first": (
        lambda m: m.TransformerDecoderLayer(E, 2, 16, 0.0, activation="gelu", norm_first=True),
        lambda g: [torch.randn(3, 2, E, generator=g), torch.randn(4, 2, E, generator=g)]),
    "PReLU": (lambda m: m.PReLU(3, init=0.1), lambda g: [torch.randn(2, 3, 4, generator=g)]),
    "AdaptiveLogSoftmaxWithLoss": (
        lambda m: m.AdaptiveLogSoftmaxWithLoss(8, 20, [5, 12], head_bias=True),
        lambda g: [torch.randn(6, 8, generator=g), _T([0, 4, 5, 11, 12, 19])]),
}


def _parametrized(kind: str):
    P = torch.nn.utils.parametrizations
    Q = nn.utils.parametrizations
    fn = {"weight_norm": (P.weight_norm, Q.weight_norm),
          "spectral_norm": (P.spectral_norm, Q.spectral_norm),
          "orthogonal": (P.orthogonal, Q.orthogonal)}[kind]
    return (lambda m: (fn[0] if m is torch.nn else fn[1])(m.Linear(4, 4)),
            lambda g: [torch.randn(2, 4, generator=g)])


for _k in ("weight_norm", "spectral_norm", "orthogonal"):
    CASES[_k] = _parametrized(_k)


def _grads(mt, mn, xt, xn, outs_t, outs_n, seed: int):
    """PyTorch's and nodegrad's gradients of one random projection of the outputs."""
    pairs = [(a, b) for a, b in zip(outs_t, outs_n) if isinstance(a, torch.Tensor)
             and a.requires_grad]
    rng = np.random.default_rng(seed)
    cots = [rng.standard_normal(a.shape) for a, _ in pairs]
    leaves = [x for x in xt if isinstance(x, torch.Tensor) and x.requires_grad]
    named = dict(mt.named_parameters())
    want = torch.autograd.grad([a for a, _ in pairs], leaves + list(named.values()),
                               [torch.tensor(c) for c in cots], allow_unused=True)
    total = None
    for c, (_, b) in zip(cots, pairs):
        term = (b * ng.tensor(c)).sum()
        total = term if total is None else total + term
    total.backward()
    mine = dict(mn.named_parameters())
    got = [x.grad for x in xn if isinstance(x, ng.Tensor) and x.requires_grad]
    got += [mine[k].grad for k in named]
    return want, got


@pytest.mark.parametrize("case", list(CASES))
def test_pytorch_state_dict_round_trip_and_behaviour(case):
    build, inputs = CASES[case]
    torch.manual_seed(0)
    mt = build(torch.nn).double()
    mn = build(nn).double()
    st, sn = mt.state_dict(), mn.state_dict()
    assert list(sn) == list(st)
    for k, v in st.items():
        assert tuple(sn[k].shape) == tuple(v.shape), k
        assert str(np.dtype(sn[k].dtype)) == str(v.dtype).removeprefix("torch."), k
    mn.load_state_dict({k: ng.tensor(v.numpy().copy()) for k, v in st.items()}, strict=True)
    for mode in ("train", "eval"):
        mt.train(mode == "train")
        mn.train(mode == "train")
        for step in range(2):
            g = torch.Generator().manual_seed(step)
            xt = [x.double().requires_grad_(True) if x.is_floating_point() else x
                  for x in inputs(g)]
            xn = [_to_ng(x, grad=True) for x in xt]
            for p in mn.parameters():
                p.grad = None
            ot, on = _flat(mt(*xt)), _flat(mn(*xn))
            assert len(ot) == len(on)
            for a, b in zip(ot, on):
                if a is not None:
                    np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=1e-7,
                                               atol=1e-9)
            for w, h in zip(*_grads(mt, mn, xt, xn, ot, on, step)):
                if w is not None:
                    np.testing.assert_allclose(h.numpy(), w.numpy(), rtol=1e-7, atol=1e-9)
        for k, v in mt.state_dict().items():  # running statistics, renormed rows, u and v
            np.testing.assert_allclose(mn.state_dict()[k].numpy(), v.numpy(), rtol=1e-7,
                                       atol=1e-9, err_msg=f"{case} {mode}: {k}")
    back = build(torch.nn).double()
    back.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                          for k, v in mn.state_dict().items()}, strict=True)
    back.eval()
    x = [v.double() if v.is_floating_point() else v
         for v in inputs(torch.Generator().manual_seed(5))]
    for a, b in zip(_flat(back(*x)), _flat(mn(*[_to_ng(v) for v in x]))):
        if a is not None:
            np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=1e-7, atol=1e-9)


def test_batch_norm_num_batches_tracked_is_int64_and_resumes_momentum_none():
    """A loaded ``num_batches_tracked`` drives momentum=None's cumulative average."""
    torch.manual_seed(0)
    t = torch.nn.BatchNorm1d(3, momentum=None).double()
    for _ in range(4):
        t(torch.randn(5, 3, dtype=torch.float64))
    n = nn.BatchNorm1d(3, momentum=None).double()
    assert n.state_dict()["num_batches_tracked"].dtype == np.int64
    n.load_state_dict({k: ng.tensor(v.numpy().copy()) for k, v in t.state_dict().items()})
    x = torch.randn(5, 3, dtype=torch.float64)
    t(x)
    n(ng.tensor(x.numpy()))
    for k, v in t.state_dict().items():
        np.testing.assert_allclose(n.state_dict()[k].numpy(), v.numpy(), rtol=1e-12)
    assert n.state_dict()["num_batches_tracked"].dtype == np.int64


# --- default initialisation: PyTorch's distributions (seeded KS tests) -------------------------
def _ks(values, cdf) -> float:
    return stats.kstest(np.asarray(values, np.float64).ravel(), cdf).pvalue


def _uniform(bound: float):
    return stats.uniform(-bound, 2 * bound).cdf


@pytest.mark.parametrize("layer, fan_in", [
    (lambda: nn.Linear(100, 120), 100),
    (lambda: nn.Conv2d(8, 16, 3, groups=2), 4 * 9),
    (lambda: nn.ConvTranspose1d(10, 8, 5, groups=2), 4 * 5),  # fan_in from weight.shape[1]
    (lambda: nn.Bilinear(20, 25, 30), 20),
])
def test_linear_and_conv_default_init_is_pytorchs(layer, fan_in):
    """kaiming_uniform(a=√5) gives U(±1/√fan_in) for the weight; the bias is U(±1/√fan_in)."""
    ng.manual_seed(0)
    weights, biases = [], []
    while sum(w.size for w in weights) < 10_000:
        m = layer()
        weights.append(m.weight.numpy())
        biases.append(m.bias.numpy())
    bound = 1 / np.sqrt(fan_in)
    assert _ks(np.concatenate([w.ravel() for w in weights]), _uniform(bound)) > 1e-3
    assert _ks(np.concatenate([b.ravel() for b in biases]), _uniform(bound)) > 1e-3


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM", "GRUCell", "LSTMCell"])
def test_recurrent_default_init_is_uniform_over_sqrt_hidden(cls):
    ng.manual_seed(0)
    kw = {} if cls.endswith("Cell") else {"num_layers": 2, "bidirectional": True}
    m = getattr(nn, cls)(40, 30, **kw)
    values = np.concatenate([p.numpy().ravel() for p in m.parameters()])
    assert values.size >= 6_000
    assert _ks(values, _uniform(1 / np.sqrt(30))) > 1e-3


def test_attention_and_embedding_default_init():
    """MultiheadAttention: xavier_uniform in_proj, zero in_proj and out_proj biases;
    Embedding: N(0, 1) with the padding row zero."""
    ng.manual_seed(0)
    m = nn.MultiheadAttention(64, 4)
    bound = np.sqrt(6 / (64 + 3 * 64))
    assert _ks(m.in_proj_weight.numpy(), _uniform(bound)) > 1e-3
    assert not m.in_proj_bias.numpy().any() and not m.out_proj.bias.numpy().any()
    e = nn.Embedding(2_500, 4, padding_idx=3)
    w = e.weight.numpy()
    assert not w[3].any()
    assert _ks(np.delete(w, 3, axis=0), stats.norm().cdf) > 1e-3


# --- EmbeddingBag(include_last_offset=True): the CSR form or a clear error ---------------------
def test_embedding_bag_last_offset_short_of_the_input_is_refused():
    """PyTorch lets the last bag run to the input's end when the last offset falls short of the
    input length; nodegrad stopped at that offset (a silent different sum). It now refuses."""
    w = np.arange(40.0).reshape(10, 4)
    mine = nn.EmbeddingBag.from_pretrained(ng.tensor(w), mode="sum", include_last_offset=True)
    theirs = torch.nn.EmbeddingBag.from_pretrained(torch.tensor(w), mode="sum",
                                                   include_last_offset=True)
    idx = np.array([1, 2, 3])
    for off in ([0, 2], [0, 1, 2], [0]):
        with pytest.raises(ValueError, match="include_last_offset=True the last offset must "
                                             "equal the input length 3"):
            mine(ng.tensor(idx), ng.tensor(np.array(off)))
    got = mine(ng.tensor(idx), ng.tensor(np.array([0, 1, 3]))).numpy()
    want = theirs(torch.tensor(idx), torch.tensor([0, 1, 3])).numpy()
    np.testing.assert_array_equal(got, want)


# --- Embedding max_norm under the infinity norm and p = 0 --------------------------------------
@pytest.mark.parametrize("norm_type", [np.inf, -np.inf, 0.0, 2.0, 0.5])
def test_embedding_max_norm_with_any_norm_type_renorms_as_pytorch(norm_type):
    """sum(|x|**inf) ** (1/inf) is 1, so the infinity norm never renormed (a silent no-op)."""
    w = np.array([[3.0, -4.0, 0.0], [0.5, 0.2, 0.0], [1.0, -2.0, 0.3], [0.0, 0.0, 0.5]])
    idx = np.array([[0, 1], [2, 3]])
    for cls, kw in (("Embedding", {}), ("EmbeddingBag", {"mode": "sum"})):
        mine = getattr(nn, cls).from_pretrained(ng.tensor(w), max_norm=0.8,
                                                norm_type=norm_type, **kw)
        theirs = getattr(torch.nn, cls).from_pretrained(torch.tensor(w), max_norm=0.8,
                                                        norm_type=norm_type, **kw)
        np.testing.assert_allclose(mine(ng.tensor(idx)).numpy(),
                                   theirs(torch.tensor(idx)).numpy(), rtol=1e-12)
        np.testing.assert_allclose(mine.weight.numpy(), theirs.weight.detach().numpy(),
                                   rtol=1e-12)


def test_batch_norm_refuses_eps_zero_in_training_as_pytorch():
    """PyTorch refuses eps <= 0 in training (a constant channel gives 0/0); nodegrad returned
    NaN there. Eval mode with running statistics still accepts it, as PyTorch does."""
    x = np.ones((4, 3))
    m = nn.BatchNorm1d(3, eps=0.0).double()
    with pytest.raises(ValueError, match="batch_norm: eps must be positive during training"):
        m(ng.tensor(x))
    with pytest.raises(ValueError, match="eps must be positive"):
        F.batch_norm(ng.tensor(x), None, None, training=True, eps=0.0)
    m.eval()
    t = torch.nn.BatchNorm1d(3, eps=0.0).double().eval()
    np.testing.assert_allclose(m(ng.tensor(x)).numpy(), t(torch.tensor(x)).detach().numpy())


# --- spectral_norm on an already parametrised weight -----------------------------------------
@pytest.mark.parametrize("inner", ["weight_norm", "orthogonal", "spectral_norm"])
def test_spectral_norm_stacks_on_a_parametrized_weight_as_pytorch(inner):
    """PyTorch appends it to the weight's parametrization list; nodegrad refused ("no
    parameter or buffer named 'weight'")."""
    P, Q = torch.nn.utils.parametrizations, nn.utils.parametrizations
    torch.manual_seed(0)
    t = P.spectral_norm(getattr(P, inner)(torch.nn.Linear(4, 4).double()))
    n = Q.spectral_norm(getattr(Q, inner)(nn.Linear(4, 4).double()))
    assert list(n.state_dict()) == list(t.state_dict())
    n.load_state_dict({k: ng.tensor(v.numpy().copy()) for k, v in t.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 4))
    for _ in range(2):  # training mode: the power iteration moves u and v in both
        np.testing.assert_allclose(n(ng.tensor(x)).numpy(),
                                   t(torch.tensor(x)).detach().numpy(), rtol=1e-9, atol=1e-12)
    for k, v in t.state_dict().items():
        np.testing.assert_allclose(n.state_dict()[k].numpy(), v.numpy(), rtol=1e-9, atol=1e-12)
