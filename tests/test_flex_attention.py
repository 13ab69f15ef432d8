"""ng.nn.attention: flex_attention (dense) against torch's eager flex_attention on the CPU,
values, log-sum-exp and gradients; BlockMask; SDPBackend / sdpa_kernel."""

import math
import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn.attention import SDPBackend, enabled_backends, sdpa_kernel
from nodegrad.nn.attention import flex_attention as fa

torch = pytest.importorskip("torch")
tfa = pytest.importorskip("torch.nn.attention.flex_attention")


def _inputs(B=2, Hq=4, Hk=4, L=8, S=8, E=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, Hq, L, E)), rng.standard_normal((B, Hk, S, E)),
            rng.standard_normal((B, Hk, S, E + 1)))


def _torch_dense(q, k, v, score_mod=None, mask=None, scale=None):
    """The same attention written densely in torch, for gradients (torch's flex_attention has
    no backward on the CPU): scores, score_mod on broadcast indices, mask, safe softmax."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    B, H, L, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if score_mod is not None:
        s = score_mod(s, torch.arange(B).view(B, 1, 1, 1), torch.arange(H).view(1, H, 1, 1),
                      torch.arange(L).view(1, 1, L, 1), torch.arange(S).view(1, 1, 1, S))
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def _run_both(arrays, ng_kw, t_kw, enable_gqa=False, dense=None):
    """Values and log-sum-exp against torch's flex_attention; gradients against the dense
    torch form (``dense``: score_mod and mask for it)."""
    nq = [ng.tensor(a, requires_grad=True) for a in arrays]
    got = fa.flex_attention(*nq, return_lse=True, enable_gqa=enable_gqa, **ng_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tfa.flex_attention(*(torch.tensor(a) for a in arrays), return_lse=True,
                                 enable_gqa=enable_gqa, **t_kw)
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), atol=1e-10)
    np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), atol=1e-10)
    tq = [torch.tensor(a, requires_grad=True) for a in arrays]
    dref = _torch_dense(*tq, scale=t_kw.get("scale"), **(dense or {}))
    np.testing.assert_allclose(got[0].numpy(), dref.detach().numpy(), atol=1e-10)
    cot = np.random.default_rng(1).standard_normal(got[0].shape)
    got[0].backward(ng.tensor(cot))
    dref.backward(torch.tensor(cot))
    for a, b in zip(nq, tq):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-10)
    return nq, tq


def _dense_mask(mask_mod, B, H, L, S):
    return tfa.create_mask(mask_mod, B, H, L, S, device="cpu")


def causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def test_no_mods_is_plain_attention():
    _run_both(_inputs(), {}, {})


@pytest.mark.parametrize("L,S,bs", [(8, 8, 4), (7, 11, 4), (16, 16, 128)])
def test_causal_block_mask(L, S, bs):
    arrays = _inputs(L=L, S=S)
    bm = fa.create_block_mask(causal, None, None, L, S, BLOCK_SIZE=bs)
    tbm = tfa.create_block_mask(causal, None, None, L, S, device="cpu", BLOCK_SIZE=bs)
    assert bm.shape == tuple(tbm.shape) and bm.seq_lengths == tuple(tbm.seq_lengths)
    np.testing.assert_array_equal(bm.to_dense().numpy(), tbm.to_dense().numpy())
    assert bm.sparsity() == pytest.approx(tbm.sparsity())
    assert bm.numel() == tbm.numel()
    _run_both(arrays, {"block_mask": bm}, {"block_mask": tbm},
              dense={"mask": _dense_mask(causal, 1, 1, L, S)})


def test_alibi_score_mod_and_scale():
    slopes = [2.0 ** (-(i + 1)) for i in range(4)]
    ns, ts = ng.tensor(slopes, dtype=ng.float64), torch.tensor(slopes, dtype=torch.float64)

    def alibi_ng(score, b, h, q_idx, kv_idx):
        return score + ns[h] * (kv_idx - q_idx)

    def alibi_t(score, b, h, q_idx, kv_idx):
        return score + ts[h] * (kv_idx - q_idx)

    _run_both(_inputs(), {"score_mod": alibi_ng, "scale": 0.3},
              {"score_mod": alibi_t, "scale": 0.3}, dense={"score_mod": alibi_t})


def test_sliding_window_per_batch_and_head_mask():
    def window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= 2 + h)

    def tail(b, h, q_idx, kv_idx):
        return kv_idx < 6 - b

    m = fa.and_masks(window, tail)
    tm = tfa.and_masks(window, tail)
    bm = fa.create_block_mask(m, 2, 4, 8, 8, BLOCK_SIZE=4)
    tbm = tfa.create_block_mask(tm, 2, 4, 8, 8, device="cpu", BLOCK_SIZE=4)
    np.testing.assert_array_equal(bm.to_dense().numpy(), tbm.to_dense().numpy())
    np.testing.assert_array_equal(fa.create_mask(m, 2, 4, 8, 8).numpy(),
                                  tfa.create_mask(tm, 2, 4, 8, 8, device="cpu").numpy())
    _run_both(_inputs(), {"block_mask": bm}, {"block_mask": tbm},
              dense={"mask": _dense_mask(tm, 2, 4, 8, 8)})


def test_or_masks_and_fully_masked_rows_give_zero():
    m = fa.or_masks(lambda b, h, q, k: (q == k) & (q != 0), lambda b, h, q, k: k == q - 1)
    tm = tfa.or_masks(lambda b, h, q, k: (q == k) & (q != 0), lambda b, h, q, k: k == q - 1)
    nq, _ = _run_both(_inputs(), {"block_mask": fa.create_block_mask(m, None, None, 8, 8)},
                      {"block_mask": tfa.create_block_mask(tm, None, None, 8, 8,
                                                           device="cpu")},
                      dense={"mask": _dense_mask(tm, 1, 1, 8, 8)})
    out, lse = fa.flex_attention(*nq, block_mask=fa.create_block_mask(m, None, None, 8, 8),
                                 return_lse=True)
    assert np.all(out.numpy()[:, :, 0] == 0) and np.all(np.isneginf(lse.numpy()[:, :, 0]))
    assert np.all(np.isfinite(nq[0].grad.numpy()))


def test_gqa():
    bm = fa.create_block_mask(causal, None, None, 8, 8)
    tbm = tfa.create_block_mask(causal, None, None, 8, 8, device="cpu")
    _run_both(_inputs(Hq=4, Hk=2), {"block_mask": bm}, {"block_mask": tbm}, enable_gqa=True,
              dense={"mask": _dense_mask(causal, 1, 1, 8, 8)})


def test_gradient_reaches_a_bias_table_score_mod_indexes():
    """A learned relative-position bias captured by score_mod gets its gradient; torch's
    reference is the same bias as an additive SDPA mask."""
    q, k, v = _inputs(Hq=2, Hk=2, L=6, S=6)
    rng = np.random.default_rng(3)
    table = rng.standard_normal((2, 11))
    nt = ng.tensor(table, requires_grad=True)

    def rel_bias(score, b, h, q_idx, kv_idx):
        return score + nt[h, kv_idx - q_idx + 5]

    out = fa.flex_attention(ng.tensor(q), ng.tensor(k), ng.tensor(v), score_mod=rel_bias)
    tt = torch.tensor(table, requires_grad=True)
    idx = torch.arange(6)[None, :] - torch.arange(6)[:, None] + 5
    bias = tt[torch.arange(2)[:, None, None], idx[None]]
    ref = torch.nn.functional.scaled_dot_product_attention(
        torch.tensor(q), torch.tensor(k), torch.tensor(v), attn_mask=bias)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), atol=1e-10)
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_allclose(nt.grad.numpy(), tt.grad.numpy(), atol=1e-10)


def test_float32_and_default_scale():
    q, k, v = (a.astype(np.float32) for a in _inputs())
    got = fa.flex_attention(ng.tensor(q), ng.tensor(k), ng.tensor(v))
    ref = torch.nn.functional.scaled_dot_product_attention(
        torch.tensor(q), torch.tensor(k), torch.tensor(v), scale=1 / math.sqrt(5))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)


def test_errors():
    q, k, v = (ng.tensor(a) for a in _inputs(Hq=4, Hk=2))
    with pytest.raises(ng.ShapeError, match="enable_gqa=True"):
        fa.flex_attention(q, k, v)
    with pytest.raises(ng.ShapeError, match="4-d tensor"):
        fa.flex_attention(q[0], k, v)
    with pytest.raises(ng.ShapeError, match="does not fit"):
        fa.flex_attention(q, k, v, enable_gqa=True,
                          block_mask=fa.create_block_mask(causal, None, None, 4, 8))
    with pytest.raises(ng.DTypeError, match="boolean tensor"):
        fa.create_block_mask(lambda b, h, q, k: q - k, None, None, 4, 4)
    with pytest.raises(ValueError, match="Q_LEN must be positive"):
        fa.create_block_mask(causal, None, None, 0, 4)
    with pytest.raises(TypeError, match="BlockMask"):
        fa.flex_attention(q, k, v, enable_gqa=True, block_mask=ng.ones(8, 8))


def test_sdpa_kernel_validates_and_selects_nothing():
    q, k, v = (ng.tensor(a) for a in _inputs())
    plain = ng.nn.functional.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        assert enabled_backends() == (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)
        again = ng.nn.functional.scaled_dot_product_attention(q, k, v)
    assert SDPBackend.MATH in enabled_backends()
    np.testing.assert_array_equal(plain.numpy(), again.numpy())
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        assert enabled_backends() == (SDPBackend.EFFICIENT_ATTENTION,)
    assert {m.name: m.value for m in SDPBackend} == \
        {m.name: int(m.value) for m in torch.nn.attention.SDPBackend.__members__.values()}
    with pytest.raises(TypeError, match="SDPBackend members"):
        with sdpa_kernel(["math"]):
            pass
    with pytest.raises(ValueError, match="ERROR"):
        with sdpa_kernel(SDPBackend.ERROR):
            pass


def test_score_mod_masking_and_return_aux():
    """A score_mod that sends a whole row to -inf gives that row zeros, as torch's; the
    log-sum-exp comes back through return_aux=AuxRequest(lse=True) too."""
    q, k, v = _inputs()

    def ng_mod(score, b, h, q_idx, kv_idx):
        return ng.where(q_idx == 0, -math.inf, score)

    def t_mod(score, b, h, q_idx, kv_idx):
        return torch.where(q_idx == 0, -math.inf, score)

    out, aux = fa.flex_attention(ng.tensor(q), ng.tensor(k), ng.tensor(v), score_mod=ng_mod,
                                 return_aux=fa.AuxRequest(lse=True, max_scores=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, taux = tfa.flex_attention(torch.tensor(q), torch.tensor(k), torch.tensor(v),
                                       score_mod=t_mod, return_aux=tfa.AuxRequest(lse=True))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-10)
    np.testing.assert_allclose(aux.lse.numpy(), taux.lse.numpy(), atol=1e-10)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(5)
    s[:, :, 0] = -np.inf
    np.testing.assert_allclose(aux.max_scores.numpy(), s.max(-1))
    with pytest.raises(ValueError, match="return_aux"):
        fa.flex_attention(ng.tensor(q), ng.tensor(k), ng.tensor(v), return_lse=True,
                          return_aux=fa.AuxRequest(lse=True))


def test_score_mod_result_is_checked():
    q, k, v = (ng.tensor(a) for a in _inputs())
    with pytest.raises(ng.ShapeError, match="score_mod must return a tensor broadcastable"):
        fa.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, ki: s[..., :3])
    with pytest.raises(ng.ShapeError, match="score_mod must return a tensor broadcastable"):
        fa.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, ki: 1.0)
    # a score_mod ignoring the scores still broadcasts to the full grid (uniform attention)
    out = fa.flex_attention(q, k, v, score_mod=lambda s, b, h, qi, ki: (qi * 0).float())
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(v.numpy().mean(2, keepdims=True),
                                                            out.shape), atol=1e-12)
