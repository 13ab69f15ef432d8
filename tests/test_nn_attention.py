"""Attention: MultiheadAttention, TransformerEncoderLayer and scaled_dot_product_attention against
PyTorch with the same weights (outputs, weights, every gradient, float64), finite differences,
masks, stability for large scores, and shape errors that name the layer."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

rng = np.random.default_rng(0)


def _pair(shape):
    torch = pytest.importorskip("torch")
    a = rng.standard_normal(shape)
    return ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def _close(a, b, what):
    np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-7, atol=1e-10,
                               err_msg=what)


def _load(ours, theirs):
    ours.double()
    theirs.double()
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})


def _backward_and_compare(outs_o, outs_t, leaves, ours, theirs):
    """Project every output on one random direction, backprop, compare all gradients."""
    torch = pytest.importorskip("torch")
    loss_o, loss_t = 0.0, 0.0
    for i, (a, b) in enumerate(zip(outs_o, outs_t)):
        if b is None:
            assert a is None
            continue
        assert tuple(a.shape) == tuple(b.shape), f"output {i}: {a.shape} vs {tuple(b.shape)}"
        _close(a, b, f"output {i} of {type(theirs).__name__}")
        v = rng.standard_normal(a.shape)
        loss_o = loss_o + (a * ng.tensor(v)).sum()
        loss_t = loss_t + (b * torch.tensor(v)).sum()
    loss_o.backward()
    loss_t.backward()
    for k, (o, t) in enumerate(leaves):
        _close(o.grad, t.grad, f"gradient of input {k}")
    tp = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(tp)
    for name, p in ours.named_parameters():
        _close(p.grad, tp[name].grad, f"gradient of {name}")


def _masks(kind, n, heads, lq, lk):
    """(ours, torch's) attn_mask and key_padding_mask for one masking scheme."""
    torch = pytest.importorskip("torch")
    am = kpm = None
    if kind in ("bool", "both"):
        am = np.triu(np.ones((lq, lk), bool), 1)              # causal: True = not allowed
    if kind == "float3d":
        am = rng.standard_normal((n * heads, lq, lk))
    if kind in ("padding", "both"):
        kpm = np.zeros((n, lk), bool)
        kpm[0, -2:] = True                                      # pad the end of sample 0
    if kind == "float_padding":
        kpm = rng.standard_normal((n, lk))

    def conv(m, lib):
        return None if m is None else lib.tensor(m)
    return (conv(am, ng), conv(kpm, ng)), (conv(am, torch), conv(kpm, torch))


_MHA_CASES = [  # kwargs, attention kind, masks, need_weights, average
    (dict(), "self", None, True, True),
    (dict(batch_first=True), "self", "bool", True, False),
    (dict(), "cross", "padding", True, True),
    (dict(batch_first=True), "cross", "both", False, True),
    (dict(), "cross", "float3d", True, False),
    (dict(kdim=3, vdim=5), "cross", "float_padding", True, True),
    (dict(bias=False), "self", "bool", True, True),
    (dict(), "unbatched", "bool", True, False),
    (dict(add_bias_kv=True), "self", None, True, True),
    (dict(add_zero_attn=True), "cross", "both", True, False),
    (dict(add_bias_kv=True, add_zero_attn=True, batch_first=True), "cross", "float3d", True,
     True),
    (dict(add_bias_kv=True, add_zero_attn=True, kdim=3, vdim=5), "cross", "float_padding",
     True, False),
    (dict(add_bias_kv=True), "unbatched", "padding", True, True),
]


@pytest.mark.parametrize("kw,kind,masks,need_weights,average", _MHA_CASES)
def test_multihead_attention_matches_torch(kw, kind, masks, need_weights, average):
    torch = pytest.importorskip("torch")
    e, heads, n, lq = 8, 2, 3, 4
    lk = lq if kind in ("self", "unbatched") else 5
    ours, theirs = nn.MultiheadAttention(e, heads, **kw), torch.nn.MultiheadAttention(e, heads,
                                                                                      **kw)
    _load(ours, theirs)
    bf = kw.get("batch_first", False)

    def shape(length, dim):
        return (length, dim) if kind == "unbatched" else (n, length, dim) if bf else \
            (length, n, dim)

    q = _pair(shape(lq, e))
    if kind in ("self", "unbatched"):
        leaves, args_o, args_t = [q], (q[0],) * 3, (q[1],) * 3
    else:
        k, v = _pair(shape(lk, kw.get("kdim", e))), _pair(shape(lk, kw.get("vdim", e)))
        leaves, args_o, args_t = [q, k, v], (q[0], k[0], v[0]), (q[1], k[1], v[1])
    (am_o, kpm_o), (am_t, kpm_t) = _masks(masks, n, heads, lq, lk) if masks else \
        ((None, None), (None, None))
    if kind == "unbatched" and kpm_o is not None:
        kpm_o, kpm_t = kpm_o[0], kpm_t[0]
    opts = dict(need_weights=need_weights, average_attn_weights=average)
    out_o = ours(*args_o, key_padding_mask=kpm_o, attn_mask=am_o, **opts)
    out_t = theirs(*args_t, key_padding_mask=kpm_t, attn_mask=am_t, **opts)
    _backward_and_compare(out_o, out_t, leaves, ours, theirs)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer_matches_torch(norm_first, activation):
    torch = pytest.importorskip("torch")
    kw = dict(dim_feedforward=16, dropout=0.0, activation=activation, norm_first=norm_first,
              batch_first=norm_first)
    ours, theirs = nn.TransformerEncoderLayer(8, 2, **kw), torch.nn.TransformerEncoderLayer(
        8, 2, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _load(ours, theirs)
    for p in theirs.parameters():  # PyTorch's LayerNorm starts at 1 / 0: perturb to test them
        with torch.no_grad():
            p.add_(torch.tensor(rng.standard_normal(tuple(p.shape)) * 0.1))
    _load(ours, theirs)
    x = _pair((3, 5, 8) if norm_first else (5, 3, 8))  # batch 3, length 5
    kpm = np.zeros((3, 5), bool)
    kpm[1, -1] = True
    mask = np.triu(np.ones((5, 5), bool), 1)
    out_o = ours(x[0], src_mask=ng.tensor(mask), src_key_padding_mask=ng.tensor(kpm))
    out_t = theirs(x[1], src_mask=torch.tensor(mask), src_key_padding_mask=torch.tensor(kpm))
    _backward_and_compare([out_o], [out_t], [x], ours, theirs)


def test_transformer_encoder_layer_eval_ignores_dropout():
    torch = pytest.importorskip("torch")
    ours = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.3)
    theirs = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.3)
    _load(ours, theirs)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((5, 2, 8))
    with torch.no_grad():
        ref = theirs(torch.tensor(x))
    _close(ours(ng.tensor(x)), ref, "TransformerEncoderLayer in eval mode")
    ours.train()
    assert not np.allclose(ours(ng.tensor(x)).numpy(), ref.numpy())


@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
def test_scaled_dot_product_attention_matches_torch(mask):
    torch = pytest.importorskip("torch")
    q, k, v = _pair((2, 3, 4, 6)), _pair((2, 3, 5, 6)), _pair((2, 3, 5, 7))
    kw_o, kw_t = {}, {}
    if mask == "bool":  # True = take part, as torch.nn.functional.scaled_dot_product_attention
        m = rng.random((4, 5)) > 0.3
        m[:, 0] = True
        kw_o, kw_t = dict(attn_mask=ng.tensor(m)), dict(attn_mask=torch.tensor(m))
    elif mask == "float":
        m = rng.standard_normal((3, 4, 5))
        kw_o, kw_t = dict(attn_mask=ng.tensor(m), scale=0.3), dict(attn_mask=torch.tensor(m),
                                                                    scale=0.3)
    elif mask == "causal":
        kw_o = kw_t = dict(is_causal=True)
    out_o = F.scaled_dot_product_attention(q[0], k[0], v[0], **kw_o)
    out_t = torch.nn.functional.scaled_dot_product_attention(q[1], k[1], v[1], **kw_t)
    _close(out_o, out_t, "scaled_dot_product_attention")
    g = rng.standard_normal(out_o.shape)
    out_o.backward(ng.tensor(g))
    out_t.backward(torch.tensor(g))
    for o, t in (q, k, v):
        _close(o.grad, t.grad, "scaled_dot_product_attention gradient")


def test_attention_gradcheck():
    q, k, v = (rng.standard_normal(s) for s in [(2, 3, 4), (2, 5, 4), (2, 5, 3)])
    mask = rng.standard_normal((3, 5))
    assert ng.gradcheck(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m),
                        q, k, v, mask)
    e, heads = 4, 2
    x, kv = rng.standard_normal((3, 1, e)), rng.standard_normal((2, 1, e))
    w_in, b_in = rng.standard_normal((3 * e, e)) * 0.5, rng.standard_normal(3 * e)
    w_out, b_out = rng.standard_normal((e, e)) * 0.5, rng.standard_normal(e)
    kpm = ng.tensor(np.array([[False, True]]))

    def mha(x, kv, w_in, b_in, w_out, b_out):
        return F.multi_head_attention(x, kv, kv, heads, w_in, b_in, w_out, b_out,
                                      key_padding_mask=kpm, average_attn_weights=False)

    assert ng.gradcheck(mha, x, kv, w_in, b_in, w_out, b_out)


def test_large_scores_stay_finite():
    q = ng.tensor(rng.standard_normal((1, 2, 4)) * 1e4, requires_grad=True)
    k = ng.tensor(rng.standard_normal((1, 3, 4)) * 1e4)
    out = F.scaled_dot_product_attention(q, k, k)
    out.sum().backward()
    assert np.isfinite(out.numpy()).all() and np.isfinite(q.grad.numpy()).all()


def test_attention_dropout_only_in_training():
    m = nn.MultiheadAttention(8, 2, dropout=0.5)
    x = ng.randn(4, 2, 8)
    m.eval()
    a, wa = m(x, x, x)
    b, _ = m(x, x, x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(wa.numpy().sum(-1), 1, rtol=1e-5)
    m.train()
    c, _ = m(x, x, x)
    assert not np.allclose(a.numpy(), c.numpy())


def test_default_init_is_pytorchs():
    m = nn.MultiheadAttention(16, 4)
    bound = np.sqrt(6 / (16 + 48))
    w = m.in_proj_weight.numpy()
    assert np.abs(w).max() <= bound and w.std() > bound / 3
    assert not m.in_proj_bias.numpy().any() and not m.out_proj.bias.numpy().any()
    assert np.abs(m.out_proj.weight.numpy()).max() <= 0.25


def test_errors_name_the_layer_and_the_expected_shape():
    m = nn.MultiheadAttention(8, 2)
    x = ng.zeros(4, 2, 8)
    with pytest.raises(ng.ShapeError, match=r"MultiheadAttention\(embed_dim=8.*query of shape "
                                            r"\(L, N, 8\).*\(4, 2, 6\)"):
        m(ng.zeros(4, 2, 6), x, x)
    with pytest.raises(ng.ShapeError, match=r"key of shape \(N, L, 8\)"):
        nn.MultiheadAttention(8, 2, batch_first=True)(x, ng.zeros(2, 3, 5), x)
    with pytest.raises(ng.ShapeError, match=r"attn_mask of shape \(4, 4\) or \(4, 4, 4\)"):
        m(x, x, x, attn_mask=ng.zeros(3, 4))
    with pytest.raises(ng.ShapeError, match=r"key_padding_mask of shape \(2, 4\)"):
        m(x, x, x, key_padding_mask=ng.zeros(4, 2))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        nn.MultiheadAttention(8, 3)
    with pytest.raises(ng.ShapeError, match=r"TransformerEncoderLayer\(d_model=8\).*\(S, N, 8\)"):
        nn.TransformerEncoderLayer(8, 2, 16)(ng.zeros(4, 2, 6))
    with pytest.raises(ng.ShapeError, match="scaled_dot_product_attention"):
        F.scaled_dot_product_attention(ng.zeros(2, 3), ng.zeros(4, 5), ng.zeros(4, 5))


# --- grouped-query attention and fully masked queries -----------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_scaled_dot_product_attention_gqa_matches_torch(causal):
    torch = pytest.importorskip("torch")
    q, k, v = _pair((2, 6, 4, 5)), _pair((2, 2, 4, 5)), _pair((2, 2, 4, 3))
    out_o = F.scaled_dot_product_attention(q[0], k[0], v[0], is_causal=causal, enable_gqa=True)
    out_t = torch.nn.functional.scaled_dot_product_attention(q[1], k[1], v[1], is_causal=causal,
                                                             enable_gqa=True)
    _close(out_o, out_t, "grouped-query attention")
    g = rng.standard_normal(out_o.shape)
    out_o.backward(ng.tensor(g))
    out_t.backward(torch.tensor(g))
    for o, t in (q, k, v):
        _close(o.grad, t.grad, "grouped-query attention gradient")
    with pytest.raises(ng.ShapeError, match="enable_gqa the key heads"):
        F.scaled_dot_product_attention(q[0], ng.zeros(2, 4, 4, 5), v[0], enable_gqa=True)


@pytest.mark.parametrize("kind", ["bool", "float", "causal_long_key"])
def test_fully_masked_query_gives_zeros_as_torch(kind):
    """PyTorch 2.13 gives a query with no key to attend to a zero output and zero gradients."""
    torch = pytest.importorskip("torch")
    q, k, v = _pair((2, 3, 4, 6)), _pair((2, 3, 5, 6)), _pair((2, 3, 5, 7))
    m = rng.random((4, 5)) > 0.3
    m[:, 0] = True
    m[2] = False                                   # query 2 may attend to nothing
    if kind == "bool":
        mo, mt = ng.tensor(m), torch.tensor(m)
    else:
        fm = np.where(m, rng.standard_normal((4, 5)), -np.inf)
        if kind == "causal_long_key":             # a per-head row: masked in head 1 only
            fm = np.broadcast_to(fm, (3, 4, 5)).copy()
            fm[1, 0] = -np.inf
        mo, mt = ng.tensor(fm), torch.tensor(fm)
    out_o = F.scaled_dot_product_attention(q[0], k[0], v[0], attn_mask=mo)
    out_t = torch.nn.functional.scaled_dot_product_attention(q[1], k[1], v[1], attn_mask=mt)
    assert np.isfinite(out_o.numpy()).all()
    assert not out_o.numpy()[:, :, 2].any()
    _close(out_o, out_t, "fully masked query")
    g = rng.standard_normal(out_o.shape)
    out_o.backward(ng.tensor(g))
    out_t.backward(torch.tensor(g))
    for o, t in (q, k, v):
        assert np.isfinite(o.grad.numpy()).all()
        _close(o.grad, t.grad, "fully masked query gradient")
    assert not q[0].grad.numpy()[:, :, 2].any()
    mask = np.where(m, 0.0, -np.inf)
    assert ng.gradcheck(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=ng.tensor(mask)), rng.standard_normal((4, 6)),
        rng.standard_normal((5, 6)), rng.standard_normal((5, 3)))


def test_multihead_attention_fully_masked_query_matches_torch_without_weights():
    torch = pytest.importorskip("torch")
    ours, theirs = nn.MultiheadAttention(8, 2), torch.nn.MultiheadAttention(8, 2)
    _load(ours, theirs)
    x = _pair((3, 2, 8))
    am = np.zeros((3, 3), bool)
    am[1] = True                                   # query 1 may attend to nothing
    out_o, _ = ours(x[0], x[0], x[0], attn_mask=ng.tensor(am), need_weights=False)
    out_t, _ = theirs(x[1], x[1], x[1], attn_mask=torch.tensor(am), need_weights=False)
    _backward_and_compare([out_o], [out_t], [x], ours, theirs)
    _, w = ours(x[0], x[0], x[0], attn_mask=ng.tensor(am))  # PyTorch gives NaN weights here
    assert np.isfinite(w.numpy()).all() and not w.numpy()[:, 1].any()


@pytest.mark.parametrize("case", ["packed", "separate", "bias_kv", "zero_attn", "static_kv",
                                  "masks", "unbatched", "causal"])
def test_multi_head_attention_forward_matches_torch_positionally(case):
    """``F.multi_head_attention_forward`` with PyTorch's positional signature: outputs, weights
    and the gradients of every input, float64."""
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    E, H, L, S, N = 8, 2, 4, 5, 3
    d = E // H
    unbatched = case == "unbatched"
    q, tq = _pair((L, E) if unbatched else (L, N, E))
    k, tk = _pair((S, E) if unbatched else (S, N, E))
    v, tv = _pair((S, E) if unbatched else (S, N, E))
    w_in, tw_in = _pair((3 * E, E))
    b_in, tb_in = _pair((3 * E,))
    w_out, tw_out = _pair((E, E))
    b_out, tb_out = _pair((E,))
    ours = [q, k, v, E, H, w_in, b_in, None, None, False, 0.0, w_out, b_out]
    theirs = [tq, tk, tv, E, H, tw_in, tb_in, None, None, False, 0.0, tw_out, tb_out]
    kw_ours, kw_theirs = {"training": False}, {"training": False}
    grads = [(q, tq), (k, tk), (v, tv), (w_in, tw_in), (w_out, tw_out)]
    if case == "separate":
        ws = [_pair((E, E)) for _ in range(3)]
        for name, (a, b) in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), ws):
            kw_ours[name], kw_theirs[name] = a, b
        kw_ours["use_separate_proj_weight"] = kw_theirs["use_separate_proj_weight"] = True
        grads = grads[:3] + ws
    if case == "bias_kv":
        (bk, tbk), (bv, tbv) = _pair((1, 1, E)), _pair((1, 1, E))
        ours[7:9], theirs[7:9] = [bk, bv], [tbk, tbv]
        grads += [(bk, tbk), (bv, tbv)]
    if case == "zero_attn":
        ours[9] = theirs[9] = True
    if case == "static_kv":
        (sk, tsk), (sv, tsv) = _pair((N * H, 6, d)), _pair((N * H, 6, d))
        kw_ours.update(static_k=sk, static_v=sv)
        kw_theirs.update(static_k=tsk, static_v=tsv)
        grads = [(q, tq), (sk, tsk), (sv, tsv)]
    if case == "masks":
        am = rng.random((L, S)) < 0.3
        kpm = np.zeros((N, S), bool)
        kpm[:, -1] = True
        kw_ours.update(attn_mask=ng.tensor(am), key_padding_mask=ng.tensor(kpm),
                       average_attn_weights=False)
        kw_theirs.update(attn_mask=torch.tensor(am), key_padding_mask=torch.tensor(kpm),
                         average_attn_weights=False)
    if case == "causal":
        causal = np.triu(np.ones((L, S), bool), 1)
        kw_ours.update(attn_mask=ng.tensor(causal), is_causal=True)
        kw_theirs.update(attn_mask=torch.tensor(causal), is_causal=True)
    out, w = F.multi_head_attention_forward(*ours, **kw_ours)
    tout, tw = tf.multi_head_attention_forward(*theirs, **kw_theirs)
    _close(out, tout, "output")
    _close(w, tw, "weights")
    (out.sum() + (w * w).sum()).backward()
    (tout.sum() + (tw * tw).sum()).backward()
    for a, b in grads:
        _close(a.grad, b.grad, "gradient")


def test_multi_head_attention_forward_refuses_what_pytorch_refuses():
    q = ng.randn(4, 2, 8)
    w_in, w_out = ng.randn(24, 8), ng.randn(8, 8)
    args = [q, q, q, 8, 2, w_in, None, None, None, False, 0.0, w_out, None]
    with pytest.raises(ng.ShapeError, match="embed_dim 6"):
        F.multi_head_attention_forward(*args[:3], 6, *args[4:])
    with pytest.raises(RuntimeError, match="is_causal is a hint"):
        F.multi_head_attention_forward(*args, is_causal=True)
    with pytest.raises(ValueError, match="use_separate_proj_weight=True needs"):
        F.multi_head_attention_forward(*args, use_separate_proj_weight=True)
    with pytest.raises(ng.ShapeError, match="static_k of shape"):
        F.multi_head_attention_forward(*args, static_k=ng.randn(3, 5, 4))
