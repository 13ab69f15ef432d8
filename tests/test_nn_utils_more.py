"""nn.utils against PyTorch (float64): packed sequences and recurrent layers on them, weight
re-parametrisations (parametrize, weight_norm, spectral_norm, old and new), batch-norm fusion,
total norms and clipping by a given norm, skip_init, stateless.functional_call, and errors."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import ShapeError
from nodegrad.nn.utils import parametrize as P
from nodegrad.nn.utils import rnn as R

torch = pytest.importorskip("torch")
TR = torch.nn.utils.rnn
rng = np.random.default_rng(0)


def _pair(shape):
    a = rng.standard_normal(shape)
    return ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def _close(a, b, what="", tol=1e-9):
    b = b.detach().numpy() if hasattr(b, "detach") else np.asarray(b)
    np.testing.assert_allclose(a.detach().numpy(), b, rtol=tol, atol=tol, err_msg=what)


def _load(ours, theirs):
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})


def _weighted(outs_o, outs_t):
    """One scalar per library: each output times the same random weights, summed."""
    lo, lt = 0.0, 0.0
    for a, b in zip(outs_o, outs_t):
        w = rng.standard_normal(tuple(a.shape))
        lo = lo + (a * ng.tensor(w)).sum()
        lt = lt + (b * torch.tensor(w)).sum()
    return lo, lt


# --- packing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_pack_and_pad_match_torch_with_gradients(batch_first, enforce_sorted):
    lengths = [6, 4, 4, 2, 1] if enforce_sorted else [3, 6, 1, 5, 2]
    shape = (5, 6, 3) if batch_first else (6, 5, 3)
    xo, xt = _pair(shape)
    po = R.pack_padded_sequence(xo, lengths, batch_first, enforce_sorted)
    pt = TR.pack_padded_sequence(xt, torch.tensor(lengths), batch_first, enforce_sorted)
    assert isinstance(po, tuple) and po._fields == pt._fields
    _close(po.data, pt.data, "data")
    assert po.batch_sizes.tolist() == pt.batch_sizes.tolist()
    assert po.batch_sizes.dtype == np.int64
    for k in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(po, k), getattr(pt, k)
        assert (a is None) == (b is None) and (a is None or a.tolist() == b.tolist()), k
    yo, lo = R.pad_packed_sequence(po, batch_first, padding_value=-2.5, total_length=8)
    yt, lt = TR.pad_packed_sequence(pt, batch_first, padding_value=-2.5, total_length=8)
    assert tuple(yo.shape) == tuple(yt.shape)
    _close(yo, yt, "padded")
    assert lo.tolist() == lt.tolist() == lengths
    so, st = _weighted([yo], [yt])
    so.backward()
    st.backward()
    _close(xo.grad, xt.grad, "input gradient")


def test_pack_sequence_unpack_and_invert_permutation():
    seqs = [rng.standard_normal((n, 2)) for n in (2, 5, 3)]
    po = R.pack_sequence([ng.tensor(s) for s in seqs], enforce_sorted=False)
    pt = TR.pack_sequence([torch.tensor(s) for s in seqs], enforce_sorted=False)
    _close(po.data, pt.data)
    back = R.unpack_sequence(po)
    assert [tuple(b.shape) for b in back] == [s.shape for s in seqs]
    for b, s in zip(back, seqs):
        np.testing.assert_array_equal(b.numpy(), s)
    perm = ng.tensor(np.array([2, 0, 3, 1]))
    assert R.invert_permutation(perm).tolist() == \
        TR.invert_permutation(torch.tensor([2, 0, 3, 1])).tolist()
    assert R.invert_permutation(None) is None
    made = R.PackedSequence(po.data, po.batch_sizes, po.sorted_indices)
    assert made.unsorted_indices.tolist() == po.unsorted_indices.tolist()


def test_packing_errors():
    x = ng.tensor(rng.standard_normal((4, 3, 2)))
    with pytest.raises(ValueError, match="sorted in decreasing order"):
        R.pack_padded_sequence(x, [2, 4, 1])
    with pytest.raises(ValueError, match="greater than 0"):
        R.pack_padded_sequence(x, [4, 0, 1], enforce_sorted=False)
    with pytest.raises(ShapeError, match="expected 3 lengths"):
        R.pack_padded_sequence(x, [4, 2])
    with pytest.raises(ValueError, match="exceeds the 4 steps"):
        R.pack_padded_sequence(x, [5, 2, 1])
    p = R.pack_padded_sequence(x, [4, 2, 1])
    with pytest.raises(ValueError, match="total_length"):
        R.pad_packed_sequence(p, total_length=3)
    with pytest.raises(TypeError, match="expected a PackedSequence"):
        R.pad_packed_sequence(x)
    with pytest.raises(ValueError, match="permutation"):
        R.invert_permutation(ng.tensor(np.array([0, 0, 1])))
    with pytest.raises(ShapeError, match="packed data"):
        nn.GRU(5, 2)(p)


# --- recurrent layers on packed sequences ----------------------------------------------------
@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_on_packed_matches_torch(kind, batch_first):
    """2 layers, bidirectional, unequal unsorted lengths (and one tie), an initial state: the
    packed output, each sequence's final state and every gradient as torch."""
    n, steps, n_in, n_h = 5, 6, 3, 4
    lengths = [4, 6, 1, 4, 2]
    tm = getattr(torch.nn, kind)(n_in, n_h, num_layers=2, bidirectional=True,
                                 batch_first=batch_first).double()
    om = getattr(nn, kind)(n_in, n_h, num_layers=2, bidirectional=True,
                           batch_first=batch_first).double()
    _load(om, tm)
    xo, xt = _pair((n, steps, n_in) if batch_first else (steps, n, n_in))
    ho, ht = _pair((4, n, n_h))
    po = R.pack_padded_sequence(xo, lengths, batch_first, enforce_sorted=False)
    pt = TR.pack_padded_sequence(xt, torch.tensor(lengths), batch_first, enforce_sorted=False)
    if kind == "LSTM":
        co, ct = _pair((4, n, n_h))
        yo, (hno, cno) = om(po, (ho, co))
        yt, (hnt, cnt) = tm(pt, (ht, ct))
        outs_o, outs_t = [yo.data, hno, cno], [yt.data, hnt, cnt]
    else:
        yo, hno = om(po, ho)
        yt, hnt = tm(pt, ht)
        outs_o, outs_t = [yo.data, hno], [yt.data, hnt]
    assert isinstance(yo, R.PackedSequence)
    assert yo.batch_sizes.tolist() == yt.batch_sizes.tolist()
    assert yo.unsorted_indices.tolist() == yt.unsorted_indices.tolist()
    for i, (a, b) in enumerate(zip(outs_o, outs_t)):
        assert tuple(a.shape) == tuple(b.shape)
        _close(a, b, f"output {i}")
    lo, lt = _weighted(outs_o, outs_t)
    lo.backward()
    lt.backward()
    _close(xo.grad, xt.grad, "input gradient")
    _close(ho.grad, ht.grad, "h0 gradient")
    if kind == "LSTM":
        _close(co.grad, ct.grad, "c0 gradient")
    theirs = dict(tm.named_parameters())
    for name, p in om.named_parameters():
        _close(p.grad, theirs[name].grad, f"gradient of {name}")


def test_packed_sorted_without_state_matches_padded_run_per_sequence():
    """Independent of torch: each sequence's packed result equals running it alone."""
    m = nn.LSTM(2, 3, bidirectional=True).double()
    seqs = [ng.tensor(rng.standard_normal((k, 2))) for k in (5, 3, 2)]
    y, (h, c) = m(R.pack_sequence(seqs))
    padded, lengths = R.pad_packed_sequence(y)
    for b, s in enumerate(seqs):
        ya, (ha, ca) = m(s)
        _close(padded[:lengths[b].item(), b], ya.numpy())
        _close(h[:, b], ha.numpy())
        _close(c[:, b], ca.numpy())


# --- parametrize ----------------------------------------------------------------------------
class Symmetric(nn.Module):
    calls = 0

    def forward(self, x):
        Symmetric.calls += 1
        return ng.ops.triu(x) + ng.ops.triu(x, 1).mT

    def right_inverse(self, a):
        return ng.ops.triu(a)


class Double(nn.Module):
    def forward(self, x):
        return x * 2


class Grow(nn.Module):
    def forward(self, x):
        return ng.ops.concatenate([x, x], 0)


def test_register_parametrization_access_names_gradients_and_removal():
    m, other = nn.Linear(3, 3).double(), nn.Linear(3, 3).double()
    w0 = m.weight.numpy().copy()
    original = m.weight
    P.register_parametrization(m, "weight", Symmetric())
    assert type(m).__name__ == "ParametrizedLinear" and isinstance(m, nn.Linear)
    assert type(other) is nn.Linear and P.type_before_parametrizations(m) is nn.Linear
    assert P.is_parametrized(m) and P.is_parametrized(m, "weight")
    assert not P.is_parametrized(m, "bias") and not P.is_parametrized(other)
    assert [k for k, _ in m.named_parameters()] == ["bias", "parametrizations.weight.original"]
    assert m.parametrizations.weight.original is original  # the object is kept
    w = m.weight.numpy()
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(np.triu(w), np.triu(w0))
    x = ng.tensor(rng.standard_normal((2, 3)))
    m(x).sum().backward()
    g = original.grad.numpy()
    gy = np.broadcast_to(x.numpy().sum(0), (3, 3))  # d sum(x Wᵀ)/dW = 1ᵀx per row
    np.testing.assert_allclose(g, np.triu(gy) + np.triu(gy.T, 1))
    a = rng.standard_normal((3, 3))
    m.weight = ng.tensor(a)  # through right_inverse, not a new parameter
    np.testing.assert_allclose(original.numpy(), np.triu(a))
    assert [k for k, _ in m.named_parameters()] == ["bias", "parametrizations.weight.original"]
    P.register_parametrization(m, "weight", Double())
    np.testing.assert_allclose(m.weight.numpy(), 2 * (np.triu(a) + np.triu(a, 1).T))
    P.remove_parametrizations(m, "weight")
    assert type(m) is nn.Linear and not hasattr(m, "parametrizations")
    assert m.weight is original
    np.testing.assert_allclose(m.weight.numpy(), 2 * (np.triu(a) + np.triu(a, 1).T))
    P.register_parametrization(m, "weight", Symmetric())
    kept = m.parametrizations.weight.original.numpy().copy()
    P.remove_parametrizations(m, "weight", leave_parametrized=False)
    np.testing.assert_allclose(m.weight.numpy(), kept)


def test_parametrize_state_dict_matches_torch():
    class TSym(torch.nn.Module):
        def forward(self, x):
            return x.triu() + x.triu(1).mT

    tm, om = torch.nn.Linear(3, 3).double(), nn.Linear(3, 3).double()
    torch.nn.utils.parametrize.register_parametrization(tm, "weight", TSym())
    P.register_parametrization(om, "weight", Symmetric())
    assert list(om.state_dict()) == list(tm.state_dict())
    _load(om, tm)
    _close(om.weight, tm.weight)


def test_cached_computes_once():
    m = nn.Linear(3, 3).double()
    P.register_parametrization(m, "weight", Symmetric())
    Symmetric.calls = 0
    with P.cached():
        a, b = m.weight, m.weight
    assert a is b and Symmetric.calls == 1
    m.weight
    assert Symmetric.calls == 2


def test_parametrize_errors():
    m = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="no parameter or buffer named 'scale'"):
        P.register_parametrization(m, "scale", Double())
    with pytest.raises(ValueError, match="shape"):
        P.register_parametrization(m, "weight", Grow())
    assert type(m) is nn.Linear and "weight" in m._parameters  # nothing changed
    with pytest.raises(ValueError, match="no parametrization on 'weight'"):
        P.remove_parametrizations(m, "weight")
    P.register_parametrization(m, "weight", Grow(), unsafe=True)
    assert tuple(m.weight.shape) == (6, 3)
    with pytest.raises(RuntimeError, match="does not implement right_inverse"):
        m.weight = ng.zeros(6, 3)


# --- weight_norm and spectral_norm --------------------------------------------------------
def _module_pair(kind):
    if kind == "linear":
        return torch.nn.Linear(4, 3).double(), nn.Linear(4, 3).double(), (2, 4)
    if kind == "conv":
        return torch.nn.Conv2d(2, 3, 3).double(), nn.Conv2d(2, 3, 3).double(), (2, 2, 5, 5)
    return (torch.nn.ConvTranspose2d(2, 3, 3).double(), nn.ConvTranspose2d(2, 3, 3).double(),
            (2, 2, 4, 4))


def _grads_match(om, tm, x_shape, steps=1):
    """Forward ``steps`` times in both (buffers evolving), then compare outputs, buffers and
    every gradient."""
    xo, xt = _pair(x_shape)
    for _ in range(steps):
        yo, yt = om(xo), tm(xt)
        _close(yo, yt, "output")
        for k, b in tm.named_buffers():
            _close(dict(om.named_buffers())[k], b, f"buffer {k}")
    lo, lt = _weighted([yo], [yt])
    lo.backward()
    lt.backward()
    _close(xo.grad, xt.grad, "input gradient")
    theirs = dict(tm.named_parameters())
    assert [k for k, _ in om.named_parameters()] == list(theirs)
    for k, p in om.named_parameters():
        _close(p.grad, theirs[k].grad, f"gradient of {k}")


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("dim", [0, 1, None, -2])
def test_weight_norm_parametrization_matches_torch(kind, dim):
    tm, om, x_shape = _module_pair(kind)
    _load(om, tm)
    torch.nn.utils.parametrizations.weight_norm(tm, dim=dim)
    nn.utils.parametrizations.weight_norm(om, dim=dim)
    assert list(om.state_dict()) == list(tm.state_dict())
    g = om.parametrizations.weight.original0
    assert tuple(g.shape) == tuple(tm.parametrizations.weight.original0.shape)
    _close(g, tm.parametrizations.weight.original0, "g")
    _close(om.weight, tm.weight, "weight")
    _grads_match(om, tm, x_shape)


def test_weight_norm_loads_old_keys():
    tm, om, _ = _module_pair("linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.utils.weight_norm(tm)
    nn.utils.parametrizations.weight_norm(om)
    _load(om, tm)  # weight_g / weight_v become original0 / original1
    _close(om.weight, tm.weight)


@pytest.mark.parametrize("kind", ["linear", "conv", "convT"])
def test_spectral_norm_parametrization_matches_torch(kind):
    tm, om, x_shape = _module_pair(kind)
    torch.nn.utils.parametrizations.spectral_norm(tm)
    nn.utils.parametrizations.spectral_norm(om)
    assert list(om.state_dict()) == list(tm.state_dict())
    assert om.parametrizations.weight[0].dim == (1 if kind == "convT" else 0)
    _load(om, tm)
    _grads_match(om, tm, x_shape, steps=2)  # training: u and v refined at every access
    u = om.parametrizations.weight[0]._u.numpy().copy()
    om.eval()
    tm.eval()
    _grads_match(om, tm, x_shape)
    np.testing.assert_array_equal(om.parametrizations.weight[0]._u.numpy(), u)


def test_spectral_norm_own_buffers_find_sigma():
    """From its own random u, v (15 + 1 power steps at registration) the largest singular
    value of the normalised weight is 1, and the buffers are unit vectors."""
    u, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    v, _ = np.linalg.qr(rng.standard_normal((4, 3)))
    m = nn.Linear(4, 3).double()
    m.weight.data[...] = u @ np.diag([3.0, 1.0, 0.5]) @ v.T
    nn.utils.parametrizations.spectral_norm(m)
    np.testing.assert_allclose(np.linalg.svd(m.weight.numpy(), compute_uv=False)[0], 1.0,
                               rtol=1e-9)
    sn = m.parametrizations.weight[0]
    np.testing.assert_allclose([np.linalg.norm(sn._u.numpy()), np.linalg.norm(sn._v.numpy())],
                               1.0, rtol=1e-12)
    b = nn.Linear(3, 1)
    nn.utils.parametrizations.spectral_norm(b, "bias")  # 1-D: normalised, no buffers
    np.testing.assert_allclose(np.linalg.norm(b.bias.numpy()), 1.0, rtol=1e-6)
    assert b.bias.dtype == np.float32


def test_spectral_norm_errors():
    with pytest.raises(ValueError, match="no parameter or buffer named 'w'"):
        nn.utils.parametrizations.spectral_norm(nn.Linear(2, 2), "w")
    with pytest.raises(ValueError, match="n_power_iterations"):
        nn.utils.parametrizations.spectral_norm(nn.Linear(2, 2), n_power_iterations=0)
    with pytest.raises(IndexError, match="out of range"):
        nn.utils.parametrizations.spectral_norm(nn.Linear(2, 2), dim=2)


def test_old_weight_norm_matches_torch_and_removes():
    tm, om, x_shape = _module_pair("conv")
    _load(om, tm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.utils.weight_norm(tm)
    with pytest.warns(FutureWarning, match="deprecated"):
        nn.utils.weight_norm(om)
    assert list(om.state_dict()) == list(tm.state_dict()) == ["bias", "weight_g", "weight_v"]
    _close(om.weight_g, tm.weight_g)
    _grads_match(om, tm, x_shape)
    with pytest.raises(RuntimeError, match="already has a weight_norm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nn.utils.weight_norm(om)
    nn.utils.remove_weight_norm(om)
    torch.nn.utils.remove_weight_norm(tm)
    assert list(om.state_dict()) == ["bias", "weight"]
    assert isinstance(om.weight, nn.Parameter)
    _close(om.weight, tm.weight)
    assert not om._forward_pre_hooks
    with pytest.raises(ValueError, match="weight_norm of 'weight' not found"):
        nn.utils.remove_weight_norm(om)


def test_old_spectral_norm_matches_torch_and_removes():
    tm, om, x_shape = _module_pair("linear")
    torch.nn.utils.spectral_norm(tm)
    nn.utils.spectral_norm(om)
    assert list(om.state_dict()) == list(tm.state_dict()) == \
        ["bias", "weight_orig", "weight_u", "weight_v"]
    _load(om, tm)
    _grads_match(om, tm, x_shape, steps=2)
    om.eval()
    tm.eval()
    _grads_match(om, tm, x_shape)
    nn.utils.remove_spectral_norm(om)
    torch.nn.utils.remove_spectral_norm(tm)
    assert list(om.state_dict()) == list(tm.state_dict())
    _close(om.weight, tm.weight)
    with pytest.raises(ValueError, match="spectral_norm of 'weight' not found"):
        nn.utils.remove_spectral_norm(om)


# --- fusion ------------------------------------------------------------------------------------
def _bn_eval(tbn, obn, c):
    for t in (tbn.running_mean, tbn.running_var, tbn.weight, tbn.bias):
        with torch.no_grad():
            t.copy_(torch.tensor(rng.uniform(0.5, 1.5, c)))
    _load(obn, tbn)
    obn.eval()
    tbn.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_conv_bn_eval_equals_conv_then_bn(bias):
    tc, oc = torch.nn.Conv2d(2, 3, 3, bias=bias).double(), nn.Conv2d(2, 3, 3, bias=bias).double()
    _load(oc, tc)
    tbn, obn = torch.nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    _bn_eval(tbn, obn, 3)
    oc.eval()
    tc.eval()
    fo = nn.utils.fuse_conv_bn_eval(oc, obn)
    ft = torch.nn.utils.fuse_conv_bn_eval(tc, tbn)
    x = ng.tensor(rng.standard_normal((2, 2, 5, 5)))
    _close(fo(x), obn(oc(x)).numpy())
    _close(fo.weight, ft.weight)
    _close(fo.bias, ft.bias)
    assert isinstance(fo.weight, nn.Parameter) and fo is not oc
    assert (oc.bias is None) == (not bias)  # the original is untouched


def test_fuse_conv_transpose_and_linear_bn():
    tc, oc = torch.nn.ConvTranspose2d(2, 3, 3).double(), nn.ConvTranspose2d(2, 3, 3).double()
    _load(oc, tc)
    tbn, obn = torch.nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    _bn_eval(tbn, obn, 3)
    oc.eval()
    fo = nn.utils.fuse_conv_bn_eval(oc, obn, transpose=True)
    x = ng.tensor(rng.standard_normal((2, 2, 4, 4)))
    _close(fo(x), obn(oc(x)).numpy())
    tl, ol = torch.nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    _load(ol, tl)
    tbn, obn = torch.nn.BatchNorm1d(3).double(), nn.BatchNorm1d(3).double()
    _bn_eval(tbn, obn, 3)
    ol.eval()
    tl.eval()
    fo, ft = nn.utils.fuse_linear_bn_eval(ol, obn), torch.nn.utils.fuse_linear_bn_eval(tl, tbn)
    x = ng.tensor(rng.standard_normal((5, 4)))
    _close(fo(x), obn(ol(x)).numpy())
    _close(fo.weight, ft.weight)
    _close(fo.bias, ft.bias)
    w, b = nn.utils.fuse_linear_bn_weights(ng.ones(3, 4, dtype=ng.float32), None,
                                           ng.zeros(3), ng.ones(3), 0.0, None, None)
    assert w.dtype == np.float32 and b.dtype == np.float32


def test_fusion_errors():
    conv, bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="evaluation mode"):
        nn.utils.fuse_conv_bn_eval(conv, bn)
    lin, bn = nn.Linear(2, 3).eval(), nn.BatchNorm1d(4).eval()
    with pytest.raises(ValueError, match="out_features"):
        nn.utils.fuse_linear_bn_eval(lin, bn)


# --- norms, clipping, skip_init, stateless --------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_get_total_norm_and_clip_grads_with_norm(norm_type):
    shapes = [(3, 4), (5,), (2, 2, 2)]
    grads = [rng.standard_normal(s) for s in shapes]
    total_o = nn.utils.get_total_norm([ng.tensor(g) for g in grads], norm_type)
    total_t = torch.nn.utils.get_total_norm([torch.tensor(g) for g in grads], norm_type)
    _close(total_o, total_t)
    po = [ng.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    pt = [torch.tensor(p.numpy(), requires_grad=True) for p in po]
    for a, b, g in zip(po, pt, grads):
        a.grad, b.grad = ng.tensor(g.copy()), torch.tensor(g.copy())
    nn.utils.clip_grads_with_norm_(po, 0.5, total_o)
    torch.nn.utils.clip_grads_with_norm_(pt, 0.5, total_t)
    for a, b in zip(po, pt):
        _close(a.grad, b.grad)
    assert float(nn.utils.get_total_norm([])) == 0.0


def test_total_norm_nonfinite_and_deprecated_clip():
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.get_total_norm([ng.tensor([1.0, np.inf])], error_if_nonfinite=True)
    p = ng.tensor([1.0, 2.0], requires_grad=True)
    p.grad = ng.tensor([3.0, 4.0])
    with pytest.warns(FutureWarning, match="clip_grad_norm_"):
        n = nn.utils.clip_grad_norm(p, 1.0)
    assert float(n) == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8], rtol=1e-5)


def test_skip_init(monkeypatch):
    called = []
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: called.append(self))
    m = nn.utils.skip_init(nn.Linear, 3, 4, bias=False)
    assert type(m) is nn.Linear and not called and tuple(m.weight.shape) == (4, 3)
    assert m.bias is None and "reset_parameters" not in m.__dict__
    nn.Linear(3, 4)
    assert len(called) == 1

    class NoDevice(nn.Module):
        def __init__(self, n):
            super().__init__()

    with pytest.raises(RuntimeError, match="'device' argument"):
        nn.utils.skip_init(NoDevice, 3)


def test_stateless_functional_call():
    m = nn.Linear(3, 2).double()
    w = ng.tensor(rng.standard_normal((2, 3)))
    x = ng.tensor(rng.standard_normal((4, 3)))
    before = m.weight
    with pytest.warns(FutureWarning):
        y = nn.utils.stateless.functional_call(m, {"weight": w}, x)
    _close(y, x.numpy() @ w.numpy().T + m.bias.numpy())
    assert m.weight is before
    with pytest.warns(FutureWarning), pytest.raises(RuntimeError, match="missing"):
        nn.utils.stateless.functional_call(m, {"weight": w}, (x,), strict=True)
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)).double()
    tied[1].weight = tied[0].weight
    z = ng.tensor(rng.standard_normal((3, 3)))
    with pytest.warns(FutureWarning):
        y = nn.utils.stateless.functional_call(tied, {"0.weight": z}, (x,))
    _close(y, x.numpy() @ z.numpy().T @ z.numpy().T)


def test_spectral_norm_under_jit_replays_the_power_iteration():
    import copy

    for make in (lambda: ng.nn.utils.parametrizations.spectral_norm(ng.nn.Linear(4, 3)),
                 lambda: ng.nn.utils.spectral_norm(ng.nn.Linear(4, 3))):
        ng.manual_seed(0)
        m = make()
        twin = copy.deepcopy(m)
        step = ng.jit(lambda x, m=m: m(x).sum())
        for _ in range(3):  # the u/v buffers move on each call, in the replay too
            x = ng.randn(2, 4)
            assert step(x).item() == twin(x).sum().item()
