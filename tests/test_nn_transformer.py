"""TransformerDecoderLayer, TransformerEncoder/Decoder and Transformer against PyTorch with the
same weights (outputs and every gradient, float64), default init, errors naming the layer."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn

torch = pytest.importorskip("torch")
rng = np.random.default_rng(1)


def _load(ours, theirs):
    ours.double()
    theirs.double()
    with torch.no_grad():  # PyTorch's LayerNorms start at 1 / 0: perturb to test them
        for p in theirs.parameters():
            p.add_(torch.tensor(rng.standard_normal(tuple(p.shape)) * 0.1))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})


def _pair(shape):
    a = rng.standard_normal(shape)
    return ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def _close(a, b, what):
    np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-7, atol=1e-10,
                               err_msg=what)


def _backward_and_compare(yo, yt, leaves, ours, theirs):
    _close(yo, yt, "output")
    g = rng.standard_normal(yo.shape)
    yo.backward(ng.tensor(g))
    yt.backward(torch.tensor(g))
    for i, (o, t) in enumerate(leaves):
        _close(o.grad, t.grad, f"gradient of input {i}")
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad, tp[name].grad, f"gradient of {name}")


def _masks(t, s, n):
    causal = np.triu(np.ones((t, t), bool), 1)
    mem = rng.standard_normal((t, s))
    tkpm = np.zeros((n, t), bool)
    tkpm[1, -1] = True
    mkpm = np.zeros((n, s), bool)
    mkpm[0, -2:] = True
    ours = dict(tgt_mask=ng.tensor(causal), memory_mask=ng.tensor(mem),
                tgt_key_padding_mask=ng.tensor(tkpm), memory_key_padding_mask=ng.tensor(mkpm))
    theirs = dict(tgt_mask=torch.tensor(causal), memory_mask=torch.tensor(mem),
                  tgt_key_padding_mask=torch.tensor(tkpm),
                  memory_key_padding_mask=torch.tensor(mkpm))
    return ours, theirs


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_decoder_layer_matches_torch(norm_first, activation):
    kw = dict(dim_feedforward=16, dropout=0.0, activation=activation, norm_first=norm_first,
              batch_first=norm_first)
    ours = nn.TransformerDecoderLayer(8, 2, **kw)
    theirs = torch.nn.TransformerDecoderLayer(8, 2, **kw)
    _load(ours, theirs)
    n, t, s = 3, 4, 5
    tgt = _pair((n, t, 8) if norm_first else (t, n, 8))
    mem = _pair((n, s, 8) if norm_first else (s, n, 8))
    mo, mt = _masks(t, s, n)
    yo = ours(tgt[0], mem[0], **mo)
    yt = theirs(tgt[1], mem[1], **mt)
    _backward_and_compare(yo, yt, [tgt, mem], ours, theirs)


def test_transformer_decoder_layer_unbatched_and_without_bias():
    ours = nn.TransformerDecoderLayer(8, 4, 12, dropout=0.0, bias=False)
    theirs = torch.nn.TransformerDecoderLayer(8, 4, 12, dropout=0.0, bias=False)
    _load(ours, theirs)
    tgt, mem = _pair((3, 8)), _pair((6, 8))
    _backward_and_compare(ours(tgt[0], mem[0]), theirs(tgt[1], mem[1]), [tgt, mem], ours,
                          theirs)


@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_matches_torch(batch_first):
    kw = dict(d_model=8, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
              dim_feedforward=12, dropout=0.0, batch_first=batch_first)
    ours, theirs = nn.Transformer(**kw), torch.nn.Transformer(**kw)
    _load(ours, theirs)
    n, s, t = 2, 5, 4
    src = _pair((n, s, 8) if batch_first else (s, n, 8))
    tgt = _pair((n, t, 8) if batch_first else (t, n, 8))
    mo, mt = _masks(t, s, n)
    skpm = np.zeros((n, s), bool)
    skpm[1, 0] = True
    yo = ours(src[0], tgt[0], src_key_padding_mask=ng.tensor(skpm), **mo)
    yt = theirs(src[1], tgt[1], src_key_padding_mask=torch.tensor(skpm), **mt)
    _backward_and_compare(yo, yt, [src, tgt], ours, theirs)
    mask = nn.Transformer.generate_square_subsequent_mask(4)
    np.testing.assert_array_equal(mask.numpy(),
                                  torch.nn.Transformer.generate_square_subsequent_mask(4))


def test_transformer_encoder_and_decoder_stacks_are_independent_copies():
    layer = nn.TransformerEncoderLayer(8, 2, 16)
    enc = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(8))
    ps = [p for name, p in enc.named_parameters() if name.endswith("linear1.weight")]
    assert len(ps) == 3 and len({id(p) for p in ps}) == 3
    np.testing.assert_array_equal(ps[0].numpy(), ps[1].numpy())
    ps[0].data[...] = 0
    assert ps[1].numpy().any()
    theirs = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 3,
                                         norm=torch.nn.LayerNorm(8), enable_nested_tensor=False)
    assert list(enc.state_dict()) == list(theirs.state_dict())
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16), 2)
    assert dec(ng.randn(3, 2, 8), ng.randn(4, 2, 8)).shape == (3, 2, 8)


def test_transformer_default_init_is_xavier():
    m = nn.Transformer(16, 2, 1, 1, 32)
    w = m.encoder.layers[0].linear1.weight.numpy()
    bound = np.sqrt(6 / (16 + 32))
    assert np.abs(w).max() <= bound and w.std() > bound / 3
    assert not m.decoder.norm.bias.numpy().any()


def test_transformer_errors_name_the_layer():
    m = nn.Transformer(8, 2, 1, 1, 16)
    with pytest.raises(ng.ShapeError, match=r"Transformer\(d_model=8\): expected src of shape "
                                            r"\(L, N, 8\)"):
        m(ng.zeros(4, 2, 6), ng.zeros(3, 2, 8))
    with pytest.raises(ng.ShapeError, match="same batch size"):
        m(ng.zeros(4, 2, 8), ng.zeros(3, 3, 8))
    with pytest.raises(ng.ShapeError, match=r"TransformerDecoderLayer\(d_model=8\).*memory"):
        nn.TransformerDecoderLayer(8, 2, 16)(ng.zeros(3, 2, 8), ng.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="TransformerDecoderLayer: activation"):
        nn.TransformerDecoderLayer(8, 2, 16, activation="tanh")


def test_decoder_layer_gradcheck():
    layer = nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0).double()
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def f(tgt, mem, w):
        p = dict(params, **{"linear1.weight": w})
        return nn.functional_call(layer, p, tgt, mem)

    assert ng.gradcheck(f, rng.standard_normal((3, 1, 4)), rng.standard_normal((2, 1, 4)),
                        params["linear1.weight"].numpy(), atol=1e-6)
