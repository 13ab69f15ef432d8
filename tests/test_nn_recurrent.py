"""Recurrent layers and cells: outputs, final states and every gradient against PyTorch with the
same weights (float64), finite differences, init, dropout between layers, and shape errors."""

import contextlib

import numpy as np
import pytest
from _opcases import graph_names

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F
from nodegrad.nn import rnn_functional as R

rng = np.random.default_rng(0)


def _pair(shape):
    """The same float64 values as a nodegrad and a torch leaf that require grad."""
    torch = pytest.importorskip("torch")
    a = rng.standard_normal(shape)
    return ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


def _close(a, b, what):
    b = b.detach().numpy() if hasattr(b, "detach") else b
    np.testing.assert_allclose(a.numpy(), b, rtol=1e-7, atol=1e-10, err_msg=what)


def _flat(out):
    """(y, h) or (y, (h, c)) -> [y, h] or [y, h, c]."""
    y, s = out
    return [y] + (list(s) if isinstance(s, tuple) else [s])


def _compare(ours, theirs, x_shape, state=None):
    """Run both on one input (and initial state); compare outputs, states and all gradients."""
    torch = pytest.importorskip("torch")
    ours.double()
    theirs.double()
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})
    xo, xt = _pair(x_shape)
    leaves = [(xo, xt, "input")]
    args_o, args_t = (), ()
    if state is not None:
        pairs = [_pair(s) for s in state]
        leaves += [(o, t, f"state {i}") for i, (o, t) in enumerate(pairs)]
        so, st = [p[0] for p in pairs], [p[1] for p in pairs]
        args_o, args_t = ((tuple(so),), (tuple(st),)) if len(state) == 2 else ((so[0],),
                                                                                 (st[0],))
    outs_o, outs_t = _flat(ours(xo, *args_o)), _flat(theirs(xt, *args_t))
    assert len(outs_o) == len(outs_t)
    loss_o, loss_t = 0.0, 0.0
    for i, (a, b) in enumerate(zip(outs_o, outs_t)):
        assert tuple(a.shape) == tuple(b.shape), f"output {i}: {a.shape} vs {tuple(b.shape)}"
        _close(a, b, f"output {i} of {theirs}")
        v = rng.standard_normal(a.shape)
        loss_o = loss_o + (a * ng.tensor(v)).sum()
        loss_t = loss_t + (b * torch.tensor(v)).sum()
    loss_o.backward()
    loss_t.backward()
    for o, t, what in leaves:
        _close(o.grad, t.grad, f"gradient of the {what} of {theirs}")
    tp = dict(theirs.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert names == list(tp), "parameter names and order differ from PyTorch's"
    for name, p in ours.named_parameters():
        _close(p.grad, tp[name].grad, f"gradient of {name} of {theirs}")


_KINDS = [("RNN", {}), ("RNN", {"nonlinearity": "relu"}), ("GRU", {}), ("LSTM", {})]
_CONFIGS = [  # (kwargs, input shape, initial state given)
    (dict(num_layers=2, bidirectional=True), (7, 3, 4), True),
    (dict(num_layers=2, bidirectional=True, batch_first=True), (3, 7, 4), False),
    (dict(num_layers=2, batch_first=True), (3, 7, 4), True),
    (dict(num_layers=1, bidirectional=True, bias=False), (6, 2, 4), False),
    (dict(num_layers=2, bidirectional=True), (7, 4), True),                 # unbatched
    (dict(num_layers=2, batch_first=True), (6, 4), False),                  # unbatched
]


@pytest.mark.parametrize("kind,extra", _KINDS, ids=["rnn_tanh", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("kw,shape,with_state", _CONFIGS)
@pytest.mark.parametrize("chunked", [False, True], ids=["one_chunk", "chunked"])
def test_layers_match_torch(kind, extra, kw, shape, with_state, chunked, monkeypatch):
    torch = pytest.importorskip("torch")
    if chunked:  # several input-projection chunks of 1-3 steps, as on long sequences
        monkeypatch.setattr(R, "_OP_ELEMS", 50)
    kw = dict(kw, **extra)
    ours, theirs = getattr(nn, kind)(4, 5, **kw), getattr(torch.nn, kind)(4, 5, **kw)
    state = None
    if with_state:
        dirs = 2 if kw.get("bidirectional") else 1
        lead = (kw["num_layers"] * dirs,) if len(shape) == 2 else \
            (kw["num_layers"] * dirs, shape[0 if kw.get("batch_first") else 1])
        state = [lead + (5,)] * (2 if kind == "LSTM" else 1)
    _compare(ours, theirs, shape, state)


def test_chunk_length_balances_slicing_costs():
    assert R._chunk_len(40, 3600, 8000, False, recording=False) == 40
    k = R._chunk_len(40, 3600, 8000, False, recording=True)
    assert 1 < k < 40
    assert R._chunk_len(400, 100, 10 ** 6, True, recording=True) > k   # big input, bigger chunks
    assert R._chunk_len(5, 1, 10 ** 9, True, recording=True) == 5


def test_no_grad_forward_matches_recorded_forward():
    m = nn.GRU(3, 4, num_layers=2, bidirectional=True).double()
    x = ng.tensor(rng.standard_normal((30, 2, 3)))
    y1, h1 = m(x)
    with ng.no_grad():
        y2, h2 = m(x)
    assert y2.node is None
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h1.numpy(), h2.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_cells_match_torch(kind):
    torch = pytest.importorskip("torch")
    ours, theirs = getattr(nn, kind + "Cell")(3, 4), getattr(torch.nn, kind + "Cell")(3, 4)
    n_state = 2 if kind == "LSTM" else 1
    for x_shape, state in [((2, 3), None), ((2, 3), [(2, 4)] * n_state), ((3,), [(4,)] * n_state)]:
        ours.zero_grad()
        theirs.zero_grad()
        ours.double()
        theirs.double()
        ours.load_state_dict({k: ng.tensor(v.detach().numpy())
                              for k, v in theirs.state_dict().items()})
        xo, xt = _pair(x_shape)
        pairs = [_pair(s) for s in state or []]
        so, st = [p[0] for p in pairs], [p[1] for p in pairs]
        if kind == "LSTM":
            ao, at = (tuple(so),) if so else (), (tuple(st),) if st else ()
        else:
            ao, at = tuple(so), tuple(st)
        yo, yt = ours(xo, *ao), theirs(xt, *at)
        yo, yt = (yo if isinstance(yo, tuple) else (yo,)), (yt if isinstance(yt, tuple) else (yt,))
        loss_o = loss_t = 0.0
        for a, b in zip(yo, yt):
            _close(a, b, f"{kind}Cell output")
            v = rng.standard_normal(a.shape)
            loss_o = loss_o + (a * ng.tensor(v)).sum()
            loss_t = loss_t + (b * torch.tensor(v)).sum()
        loss_o.backward()
        loss_t.backward()
        _close(xo.grad, xt.grad, f"{kind}Cell input gradient")
        for (o, t) in pairs:
            _close(o.grad, t.grad, f"{kind}Cell state gradient")
        tp = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            _close(p.grad, tp[name].grad, f"{kind}Cell {name} gradient")


def test_gru_cell_gradcheck_first_and_second_order():
    x, h = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    w_ih, w_hh = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    b_ih, b_hh = rng.standard_normal(6), rng.standard_normal(6)
    assert ng.gradcheck(F.gru_cell, x, h, w_ih, w_hh, b_ih, b_hh, order=2)


def test_bidirectional_gru_layer_gradcheck_first_and_second_order():
    """The layer's loop primitive (gru_scan): its reverse-loop VJP, and with create_graph the
    step-by-step VJP that second derivatives run through."""
    layer = nn.GRU(2, 2, bidirectional=True, dtype="float64")
    names = [n for n, _ in layer.named_parameters()]
    x = rng.standard_normal((3, 2, 2))
    h0 = rng.standard_normal((2, 2, 2))

    def f(x, h0, *ps):
        y, h = nn.functional_call(layer, dict(zip(names, ps)), x, h0)
        return ng.tanh(y).sum() + (h * h).sum()

    ps = [p.detach().numpy() for p in layer.parameters()]
    out = f(*(ng.tensor(a, requires_grad=True) for a in (x, h0, *ps)))
    assert "gru_scan" in graph_names([out])
    assert ng.gradcheck(f, x, h0, *ps)
    assert ng.gradcheck(f, x, h0, *ps, order=2)


def test_gru_scan_shape_errors_name_the_operation():
    from nodegrad.ops.nn import gru_scan

    gi, w, b, h0 = ng.zeros(2, 6, 4, 3), ng.zeros(2, 6, 2), ng.zeros(2, 6), ng.zeros(2, 3, 2)
    assert gru_scan(gi, w, b, h0).shape == (4, 3, 2, 2)
    assert gru_scan(gi, w, b, h0, reverse=(False, True)).shape == (4, 3, 2, 2)
    for bad in ((ng.zeros(4, 3, 6), w, b, h0), (gi, ng.zeros(2, 2, 6), b, h0),
                (gi, w, ng.zeros(2, 1, 6), h0), (gi, w, b, ng.zeros(2, 4, 2))):
        with pytest.raises(ng.ShapeError, match=r"gru_scan: expected gi \(D, 3H, T, N\)"):
            gru_scan(*bad)
    with pytest.raises(ng.ShapeError, match="one reverse flag per direction"):
        gru_scan(gi, w, b, h0, reverse=(True,))


@pytest.mark.parametrize("steps,batch", [(0, 3), (4, 0)])
def test_gru_scan_with_no_steps_or_no_batch(steps, batch):
    """Empty loops give empty states and zero gradients (the reverse loop has nothing to do)."""
    from nodegrad.ops.nn import gru_scan

    args = [ng.tensor(rng.standard_normal(s), requires_grad=True)
            for s in ((2, 6, steps, batch), (2, 6, 2), (2, 6), (2, batch, 2))]
    out = gru_scan(*args, reverse=(False, True))
    assert out.shape == (steps, batch, 2, 2)
    (out * 2).sum().backward()
    for a in args:
        assert a.grad.shape == a.shape and not a.grad.numpy().any()


def test_lstm_cell_and_rnn_cell_gradcheck():
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    w_ih, w_hh, b = rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), rng.standard_normal(8)
    assert ng.gradcheck(lambda x, h, c, wi, wh, b: F.lstm_cell(x, (h, c), wi, wh, b, b),
                        x, h, c, w_ih, w_hh, b)
    assert ng.gradcheck(lambda x, h, wi, wh: F.rnn_cell(x, h, wi, wh, nonlinearity="tanh"),
                        x, h, w_ih[:2], w_hh[:2])


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_bidirectional_layer_gradcheck(mode, monkeypatch):
    monkeypatch.setattr(R, "_OP_ELEMS", 10)  # several chunks
    g = 3 if mode == "GRU" else 4
    x, h0 = rng.standard_normal((4, 2, 2)), rng.standard_normal((2, 2, 2))
    ws = [rng.standard_normal(s) * 0.7 for s in [(g * 2, 2), (g * 2, 2), (g * 2,), (g * 2,)] * 2]

    def f(x, h0, *ws):
        c0 = h0 * 0.5 if mode == "LSTM" else None
        y, h, c = R.recurrent_layer(x, h0, c0, [tuple(ws[:4]), tuple(ws[4:])], mode)
        return (y, h) if c is None else (y, h, c)

    assert ng.gradcheck(f, x, h0, *ws)


def test_dropout_between_layers_only_in_training():
    torch = pytest.importorskip("torch")
    ours = nn.LSTM(3, 4, num_layers=2, dropout=1.0).double()
    x1, x2 = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 3))
    y1, _ = ours(ng.tensor(x1))
    y2, _ = ours(ng.tensor(x2))  # p = 1: the second layer sees zeros whatever the input
    np.testing.assert_allclose(y1.numpy(), y2.numpy())
    theirs = torch.nn.LSTM(3, 4, num_layers=2, dropout=1.0).double().eval()
    ours.eval()
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})
    _close(ours(ng.tensor(x1))[0], theirs(torch.tensor(x1))[0], "LSTM in eval mode")


def test_default_init_names_and_shapes_are_pytorchs():
    torch = pytest.importorskip("torch")
    for kind in ("RNN", "GRU", "LSTM"):
        ours = getattr(nn, kind)(3, 16, num_layers=2, bidirectional=True)
        theirs = getattr(torch.nn, kind)(3, 16, num_layers=2, bidirectional=True)
        assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
            [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
        a = np.concatenate([p.numpy().ravel() for p in ours.parameters()])
        assert np.abs(a).max() <= 0.25 and abs(a.std() / (0.25 / np.sqrt(3)) - 1) < 0.1  # U(±¼)
    m = nn.GRU(3, 4, init="orthogonal")
    assert np.allclose(m.bias_ih_l0.numpy(), 0) and m.weight_hh_l0.dtype == ng.float32


def test_errors_name_the_layer_and_the_expected_shape():
    m = nn.GRU(5, 4, num_layers=2, bidirectional=True)
    with pytest.raises(ng.ShapeError, match=r"GRU\(input_size=5\).*\(L, N, 5\).*\(7, 2, 3\)"):
        m(ng.zeros(7, 2, 3))
    with pytest.raises(ng.ShapeError, match=r"GRU.*h0 of shape \(4, 2, 4\).*\(2, 2, 4\)"):
        m(ng.zeros(7, 2, 5), ng.zeros(2, 2, 4))
    with pytest.raises(ng.ShapeError, match=r"\(N, L, 5\)"):
        nn.RNN(5, 4, batch_first=True)(ng.zeros(3))
    with pytest.raises(ng.ShapeError, match=r"LSTM.*c0 of shape \(1, 3, 4\)"):
        nn.LSTM(5, 4)(ng.zeros(2, 3, 5), (ng.zeros(1, 3, 4), ng.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="pair"):
        nn.LSTM(5, 4)(ng.zeros(2, 3, 5), ng.zeros(1, 3, 4))
    with pytest.raises(ng.ShapeError, match=r"GRUCell\(input_size=5\).*\(N, 5\)"):
        nn.GRUCell(5, 4)(ng.zeros(2, 3))
    with pytest.raises(ng.ShapeError, match=r"gru_cell.*hidden state of shape \(2, 4\)"):
        nn.GRUCell(5, 4)(ng.zeros(2, 5), ng.zeros(3, 4))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(5, 4, nonlinearity="sigmoid")


def test_float32_stays_float32_and_repr():
    m = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    y, (h, c) = m(ng.randn(2, 5, 3))
    assert y.dtype == h.dtype == c.dtype == ng.float32 and y.shape == (2, 5, 8)
    assert "LSTM(3, 4, batch_first=True, bidirectional=True)" in repr(m)


@pytest.mark.parametrize(("bidirectional", "batch_first"), [(False, False), (True, True)])
def test_lstm_proj_size_matches_torch(bidirectional, batch_first):
    """PyTorch's proj_size: h = (o ⊙ tanh c) W_hrᵀ with P features, c keeps H; the same
    parameter names and order, values and gradients (the loop, the scan, a packed batch)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    t = torch.nn.LSTM(4, 6, num_layers=2, proj_size=3, batch_first=batch_first,
                      bidirectional=bidirectional).double()
    m = nn.LSTM(4, 6, num_layers=2, proj_size=3, batch_first=batch_first,
                bidirectional=bidirectional, dtype="float64")
    assert list(m.state_dict()) == list(t.state_dict())
    m.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in t.state_dict().items()})
    d = 2 if bidirectional else 1
    x = rng.standard_normal((3, 5, 4))
    h0 = rng.standard_normal((2 * d, 3 if batch_first else 5, 3))
    c0 = rng.standard_normal((2 * d, 3 if batch_first else 5, 6))
    xt = torch.tensor(x, requires_grad=True)
    yt, (ht, ct) = t(xt, (torch.tensor(h0), torch.tensor(c0)))
    (yt.sum() + 2 * ht.sum() + 3 * ct.sum()).backward()
    for anomaly in (False, True):  # the scan, and the step-by-step loop
        xn = ng.tensor(x, requires_grad=True)
        m.zero_grad()
        with ng.detect_anomaly() if anomaly else contextlib.nullcontext():
            yn, (hn, cn) = m(xn, (ng.tensor(h0), ng.tensor(c0)))
            (yn.sum() + 2 * hn.sum() + 3 * cn.sum()).backward()
        for a, b in ((yn, yt), (hn, ht), (cn, ct), (xn.grad, xt.grad)):
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
        for p, q in zip(m.parameters(), t.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, atol=1e-12)
    lens = [5, 2, 4] if batch_first else [3, 2, 3, 1, 2]
    n = len(lens)
    seq = rng.standard_normal((max(lens), n, 4))
    pt = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(seq), lens, enforce_sorted=False)
    pn = nn.utils.rnn.pack_padded_sequence(ng.tensor(seq), ng.tensor(np.array(lens)),
                                           enforce_sorted=False)
    m.batch_first = t.batch_first = False
    (yp, (hp, _)), (yq, (hq, _)) = m(pn), t(pt)
    np.testing.assert_allclose(yp.data.numpy(), yq.data.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(hp.numpy(), hq.detach().numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="proj_size"):
        nn.GRU(4, 6, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        nn.LSTM(4, 6, proj_size=6)
