"""Recurrent layers, packed sequences and attention compared with PyTorch: the cases where
nodegrad's results or errors disagreed with ``torch.nn``."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _raises_like_torch(call_torch, call_ng, ng_error=Exception, match=None):
    """PyTorch raises for these arguments, so nodegrad must too."""
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        call_torch()
    with pytest.raises(ng_error, match=match):
        call_ng()


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_sdpa_refuses_non_float_inputs(dtype):
    a = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    _raises_like_torch(
        lambda: torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(a),) * 3),
        lambda: ng.nn.functional.scaled_dot_product_attention(*(ng.tensor(a),) * 3),
        ng.DTypeError,
        "scaled_dot_product_attention")


@pytest.mark.parametrize("cell", ["RNNCell", "GRUCell", "LSTMCell"])
@pytest.mark.parametrize("state", [(1, 4), (3,)])
def test_cell_unbatched_input_needs_unbatched_state(cell, state):
    """An unbatched (I,) input takes (H,) states only, as PyTorch; a (1, H) state was taken."""
    tc, nc = getattr(torch.nn, cell)(3, 4), getattr(ng.nn, cell)(3, 4)
    x, h = np.ones(3, np.float32), np.zeros(state, np.float32)

    def hx(f):
        return (f(h), f(h)) if cell == "LSTMCell" else f(h)

    _raises_like_torch(lambda: tc(torch.tensor(x), hx(torch.tensor)),
                       lambda: nc(ng.tensor(x), hx(ng.tensor)), match="unbatched")
    # the accepted forms still agree with PyTorch
    nc.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in tc.state_dict().items()})
    h1 = np.linspace(-1, 1, 4).astype(np.float32)
    hx1 = (h1, h1) if cell == "LSTMCell" else h1
    out_t = tc(torch.tensor(x), tuple(map(torch.tensor, hx1)) if cell == "LSTMCell"
               else torch.tensor(hx1))
    out_n = nc(ng.tensor(x), tuple(map(ng.tensor, hx1)) if cell == "LSTMCell"
               else ng.tensor(hx1))
    out_t = out_t[0] if cell == "LSTMCell" else out_t
    out_n = out_n[0] if cell == "LSTMCell" else out_n
    np.testing.assert_allclose(out_n.numpy(), out_t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("dropout", [True, False, "0.1"])
def test_recurrent_dropout_must_be_a_number(kind, dropout):
    _raises_like_torch(lambda: getattr(torch.nn, kind)(2, 3, 2, dropout=dropout),
                       lambda: getattr(ng.nn, kind)(2, 3, 2, dropout=dropout), ValueError,
                       "dropout")


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_dropout_numpy_scalar_accepted(kind):
    assert getattr(torch.nn, kind)(2, 3, 2, dropout=np.float32(0.25)).dropout == 0.25
    assert getattr(ng.nn, kind)(2, 3, 2, dropout=np.float32(0.25)).dropout == 0.25


@pytest.mark.parametrize("batch_first", [False, True])
def test_pack_padded_sequence_empty_batch(batch_first):
    shape = (0, 3, 2) if batch_first else (3, 0, 2)
    _raises_like_torch(
        lambda: torch.nn.utils.rnn.pack_padded_sequence(torch.zeros(shape), [],
                                                        batch_first=batch_first),
        lambda: ng.nn.utils.rnn.pack_padded_sequence(ng.zeros(*shape), [],
                                                     batch_first=batch_first),
        ValueError, "pack_padded_sequence: cannot pack an empty batch")


@pytest.mark.parametrize("shapes", [
    [(1, 4, 2, 3), (1, 2, 2, 3), (1, 2, 2, 3)],   # fewer key/value heads without enable_gqa
    [(2, 2, 3), (3, 2, 3), (3, 2, 3)],
    [(2, 2, 3), (2, 2, 3), (3, 2, 3)],
])
def test_sdpa_batch_dims_that_do_not_broadcast(shapes):
    """A shape error that names scaled_dot_product_attention, not the inner matmul's."""
    arrs = [np.ones(s, np.float32) for s in shapes]
    _raises_like_torch(
        lambda: torch.nn.functional.scaled_dot_product_attention(*map(torch.tensor, arrs)),
        lambda: ng.nn.functional.scaled_dot_product_attention(*map(ng.tensor, arrs)),
        ng.ShapeError, "scaled_dot_product_attention: the batch dimensions")


@pytest.mark.parametrize("qd, md", [("float32", "float64"), ("float32", "float16"),
                                    ("float64", "float16")])
def test_sdpa_float_mask_dtype(qd, md):
    """PyTorch takes a bool mask, a float32 one or one of the query's dtype, and refuses the
    rest rather than converting it."""
    q, m = np.ones((2, 3, 4), qd), np.zeros((3, 3), md)
    _raises_like_torch(
        lambda: torch.nn.functional.scaled_dot_product_attention(
            *(torch.tensor(q),) * 3, attn_mask=torch.tensor(m)),
        lambda: ng.nn.functional.scaled_dot_product_attention(
            *(ng.tensor(q),) * 3, attn_mask=ng.tensor(m)),
        ng.DTypeError, "attn_mask")


@pytest.mark.parametrize("qd, md", [("float64", "float32"), ("float64", "float64"),
                                    ("float32", "float32"), ("float16", "float32")])
def test_sdpa_float_mask_dtype_accepted(qd, md):
    rng = np.random.default_rng(0)
    q, m = rng.standard_normal((2, 3, 4)).astype(qd), rng.standard_normal((3, 3)).astype(md)
    out_t = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(q),) * 3, attn_mask=torch.tensor(m))
    out_n = ng.nn.functional.scaled_dot_product_attention(
        *(ng.tensor(q),) * 3, attn_mask=ng.tensor(m))
    assert str(out_n.dtype) == str(out_t.dtype).removeprefix("torch.")
    tol = 1e-3 if qd == "float16" else 1e-5
    np.testing.assert_allclose(out_n.numpy().astype(np.float64),
                               out_t.numpy().astype(np.float64), rtol=tol, atol=tol)
