"""Regression tests for nn.utils, the recurrent layers and attention: behaviour checked against
PyTorch's (functional_call over parametrized tensors, clear errors for bad inputs)."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.errors import DTypeError, ShapeError
from nodegrad.nn import functional as F
from nodegrad.nn.utils import parametrizations, parametrize

rng = np.random.default_rng(0)


# --- functional_call over a parametrized tensor -------------------------------------------------
def _weight_normed_linear():
    lin = nn.Linear(3, 2).double()
    parametrizations.weight_norm(lin)
    return lin


def test_functional_call_plain_name_of_a_parametrized_tensor_bypasses_it():
    lin = _weight_normed_linear()
    w = rng.standard_normal((2, 3))
    x = ng.tensor(rng.standard_normal((4, 3)))
    out = ng.func.functional_call(lin, {"weight": ng.tensor(w)}, (x,))
    want = x.numpy() @ w.T + lin.bias.numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-12)
    # afterwards the parametrization is back in force
    np.testing.assert_allclose(lin(x).numpy(), x.numpy() @ lin.weight.numpy().T
                               + lin.bias.numpy(), rtol=1e-12)


def test_functional_call_parametrized_name_nested_and_differentiable():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    parametrize.register_parametrization(model[2], "weight", _Double())
    w = ng.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    x = ng.tensor(rng.standard_normal((4, 3)))
    out = ng.func.functional_call(model, {"2.weight": w}, x)
    ref = model[2].bias + ng.tanh(model[0](x)) @ w.mT
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12)
    g = ng.func.grad(lambda w: ng.func.functional_call(model, {"2.weight": w}, x).sum())(w)
    np.testing.assert_allclose(g.numpy(), ng.tanh(model[0](x)).numpy().sum(0)[None].repeat(2, 0),
                               rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out2 = nn.utils.stateless.functional_call(model, {"2.weight": w}, x)
    np.testing.assert_allclose(out2.numpy(), ref.numpy(), rtol=1e-12)


class _Double(nn.Module):
    def forward(self, x):
        return x * 2


def test_functional_call_parametrized_matches_torch():
    torch = pytest.importorskip("torch")
    tl = torch.nn.Linear(3, 2).double()
    lin = nn.Linear(3, 2).double()
    lin.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in tl.state_dict().items()})
    torch.nn.utils.parametrizations.weight_norm(tl)
    parametrizations.weight_norm(lin)
    w, x = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    for key in ("weight", "parametrizations.weight.original1"):
        want = torch.func.functional_call(tl, {key: torch.tensor(w)}, (torch.tensor(x),))
        got = ng.func.functional_call(lin, {key: ng.tensor(w)}, (ng.tensor(x),))
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-12)


# --- recurrent layers: clear errors ------------------------------------------------------------
def test_rnn_zero_length_sequence_is_a_clear_error():
    for layer in (nn.GRU(3, 4), nn.LSTM(3, 4), nn.RNN(3, 4, batch_first=True)):
        with pytest.raises(ShapeError, match="sequence length greater than 0"):
            layer(ng.zeros((0, 2, 3)) if not layer.batch_first else ng.zeros((2, 0, 3)))


def test_rnn_dtype_mismatch_names_the_layer():
    gru = nn.GRU(3, 4)
    with pytest.raises(DTypeError, match="GRU: the h0 has dtype float64"):
        gru(ng.zeros((5, 2, 3)), ng.zeros((1, 2, 4), dtype=ng.float64))
    lstm = nn.LSTM(3, 4)
    with pytest.raises(DTypeError, match="LSTM: the input has dtype float64"):
        lstm(ng.zeros((5, 2, 3), dtype=ng.float64))
    packed = nn.utils.rnn.pack_sequence([ng.zeros((3, 3), dtype=ng.float64)])
    with pytest.raises(DTypeError, match="LSTM: the input has dtype float64"):
        lstm(packed)


def test_rnn_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers=1"):
        nn.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.LSTM(3, 4, num_layers=2, dropout=0.5)
        nn.RNN(3, 4, dropout=0.0)


# --- scaled_dot_product_attention: clear errors -----------------------------------------------
def test_sdpa_mask_that_does_not_broadcast_is_a_clear_error():
    q = ng.ones((2, 3, 4, 8))
    with pytest.raises(ShapeError, match="scaled_dot_product_attention: attn_mask of shape"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=ng.ones((3, 4), dtype=ng.bool_))
    # broadcastable masks still work
    out = F.scaled_dot_product_attention(q, q, q, attn_mask=ng.ones((2, 1, 4, 4), dtype=ng.bool_))
    assert tuple(out.shape) == (2, 3, 4, 8)


def test_sdpa_mixed_dtypes_are_a_clear_error():
    q = ng.ones((2, 4, 8))
    with pytest.raises(DTypeError, match="query, key and value must share a dtype"):
        F.scaled_dot_product_attention(q, q.double(), q)


# --- parametrize.transfer_parametrizations_and_params -----------------------------------------
def test_transfer_parametrizations_and_params_shares_chain_and_originals():
    a, b = nn.Linear(3, 3).double(), nn.Linear(3, 3).double()
    parametrizations.weight_norm(a)
    parametrize.register_parametrization(a, "weight", _Double())
    parametrize.transfer_parametrizations_and_params(a, b)
    assert parametrize.is_parametrized(b, "weight") and not parametrize.is_parametrized(b, "bias")
    assert list(b.state_dict()) == ["bias", "parametrizations.weight.original0",
                                    "parametrizations.weight.original1"]
    assert b.parametrizations.weight.original1 is a.parametrizations.weight.original1
    np.testing.assert_allclose(b.weight.numpy(), a.weight.numpy(), rtol=1e-12)
    empty = nn.Module()
    parametrize.transfer_parametrizations_and_params(a, empty, "weight")
    np.testing.assert_allclose(empty.weight.numpy(), a.weight.numpy(), rtol=1e-12)
