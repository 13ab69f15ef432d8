"""PyTorch's remaining top-level and Tensor names a training script may call: the torch-level
forms of nn.functional (torch's argument orders, int reductions and modes, the native_* tuple
returns), as_strided_/as_strided_scatter, segment_reduce, the global switches and the Tensor
methods resize_, share_memory_, as_subclass and chalf, against torch."""

import inspect
import re
import multiprocessing as mp

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _pair(a, grad: bool = False):
    """The same float64 values as a nodegrad and a torch tensor."""
    a = np.asarray(a)
    return (ng.tensor(a, requires_grad=grad),
            torch.tensor(a, requires_grad=grad and a.dtype.kind == "f"))


def _close(got, want, rtol=1e-10, atol=1e-12):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = got.numpy() if isinstance(got, ng.Tensor) else np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _check(ng_fn, torch_fn, arrays, grad=None, rtol=1e-10, atol=1e-12):
    """Values, and gradients of ``sum(out * r)`` for the arrays at the indices ``grad``."""
    grad = range(len(arrays)) if grad is None else grad
    ns, ts = zip(*(_pair(a, i in grad) for i, a in enumerate(arrays)))
    got, want = ng_fn(*ns), torch_fn(*ts)
    _close(got, want, rtol, atol)
    r = np.random.default_rng(9).standard_normal(tuple(want.shape))
    (got * ng.tensor(r)).sum().backward()
    (want * torch.tensor(r)).sum().backward()
    for i in grad:
        _close(ns[i].grad, ts[i].grad, rtol, atol)


rng = np.random.default_rng(0)


# --- embeddings -------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [-1, 2])
def test_embedding_takes_weight_first_and_negative_padding_as_none(padding_idx):
    w, idx = rng.standard_normal((5, 3)), np.array([[1, 2, 2], [0, 4, 2]])
    _check(lambda w: ng.embedding(w, ng.tensor(idx), padding_idx),
           lambda w: torch.embedding(w, torch.tensor(idx), padding_idx), [w])
    _check(lambda w: ng.embedding(w, ng.tensor(idx), padding_idx, True),
           lambda w: torch.embedding(w, torch.tensor(idx), padding_idx, True), [w])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("offsets,last,pad", [([0, 2, 2], False, None), ([0, 2, 2], False, 4),
                                              ([0, 2, 2, 6], True, None),
                                              ([0, 2, 2, 6], True, 1)])
def test_embedding_bag_returns_torchs_four_tensors(dtype, mode, offsets, last, pad):
    w, idx = rng.standard_normal((6, 3)).astype(dtype), np.array([1, 4, 4, 0, 5, 2])
    args = (False, mode, False, None, last, pad)
    wn, wt = ng.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)
    got = ng.embedding_bag(wn, ng.tensor(idx), ng.tensor(offsets), *args)
    want = torch.embedding_bag(wt, torch.tensor(idx), torch.tensor(offsets), *args)
    assert len(got) == 4
    _close(got[0], want[0], rtol=1e-6)
    for g, t in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(g.numpy(), t.numpy())
    got[0].sum().backward()
    want[0].sum().backward()
    _close(wn.grad, wt.grad, rtol=1e-6)


def test_embedding_bag_refuses_bad_arguments():
    w = ng.tensor(np.ones((3, 2)))
    with pytest.raises(ValueError, match="mode must be 0"):
        ng.embedding_bag(w, ng.tensor([0, 1]), ng.tensor([0]), False, "sum")
    with pytest.raises(ng.ShapeError, match="1-d indices"):
        ng.embedding_bag(w, ng.tensor([[0, 1]]), ng.tensor([0]))


# --- normalisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_and_instance_norm_take_torchs_low_level_order(training):
    x, wb = rng.standard_normal((4, 3, 5)), rng.standard_normal((2, 3))
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    nrm, nrv, trm, trv = (ng.tensor(rm), ng.tensor(rv), torch.tensor(rm), torch.tensor(rv))
    _check(lambda x, w, b: ng.batch_norm(x, w, b, nrm, nrv, training, 0.2, 1e-5, False),
           lambda x, w, b: torch.batch_norm(x, w, b, trm, trv, training, 0.2, 1e-5, False),
           [x, wb[0], wb[1]])
    _close(nrm, trm)
    _close(nrv, trv)
    nrm, nrv, trm, trv = (ng.tensor(rm), ng.tensor(rv), torch.tensor(rm), torch.tensor(rv))
    _check(lambda x, w, b: ng.instance_norm(x, w, b, nrm, nrv, training, 0.2, 1e-5, False),
           lambda x, w, b: torch.instance_norm(x, w, b, trm, trv, training, 0.2, 1e-5, False),
           [x, wb[0], wb[1]])
    _close(nrm, trm)
    _close(nrv, trv)


@pytest.mark.parametrize("ns", [(4,), (3, 4)])
def test_native_layer_norm_returns_output_mean_and_rstd(ns):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal(ns), rng.standard_normal(ns)
    got = ng.native_layer_norm(ng.tensor(x), ns, ng.tensor(w), ng.tensor(b), 1e-5)
    want = torch.native_layer_norm(torch.tensor(x), ns, torch.tensor(w), torch.tensor(b), 1e-5)
    for g, t in zip(got, want):
        _close(g, t)
    _check(lambda x, w, b: ng.native_layer_norm(x, ns, w, b, 1e-5)[0],
           lambda x, w, b: torch.native_layer_norm(x, ns, w, b, 1e-5)[0], [x, w, b])
    with pytest.raises(ng.ShapeError, match="normalized_shape"):
        ng.native_layer_norm(ng.tensor(x), (5,), None, None, 1e-5)


def test_native_layer_norm_of_float16_stays_float16():
    x = rng.standard_normal((2, 6)).astype(np.float16) * 300
    got = ng.native_layer_norm(ng.tensor(x), (6,), None, None, 1e-5)
    want = torch.native_layer_norm(torch.tensor(x), (6,), None, None, 1e-5)
    for g, t in zip(got, want):
        assert g.dtype == ng.float16
        _close(g.astype(ng.float32), t.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("training", [True, False])
def test_native_batch_norm_returns_saved_statistics(training):
    x, w, b = rng.standard_normal((4, 3, 5)), rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    nrm, nrv, trm, trv = ng.tensor(rm), ng.tensor(rv), torch.tensor(rm), torch.tensor(rv)
    got = ng.native_batch_norm(ng.tensor(x), ng.tensor(w), ng.tensor(b), nrm, nrv, training,
                               0.1, 1e-5)
    want = torch.native_batch_norm(torch.tensor(x), torch.tensor(w), torch.tensor(b), trm, trv,
                                   training, 0.1, 1e-5)
    for g, t in zip(got, want):
        _close(g, t)
    _close(nrm, trm)
    _close(nrv, trv)
    _check(lambda x, w, b: ng.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)[0],
           lambda x, w, b: torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)[0],
           [x, w, b])


def test_native_group_norm_returns_statistics_per_sample_and_group():
    x, w, b = rng.standard_normal((2, 6, 5)), rng.standard_normal(6), rng.standard_normal(6)
    got = ng.native_group_norm(ng.tensor(x), ng.tensor(w), ng.tensor(b), 2, 6, 5, 3, 1e-5)
    want = torch.native_group_norm(torch.tensor(x), torch.tensor(w), torch.tensor(b), 2, 6, 5,
                                   3, 1e-5)
    for g, t in zip(got, want):
        _close(g, t)
    _check(lambda x, w, b: ng.native_group_norm(x, w, b, 2, 6, 5, 3, 1e-5)[0],
           lambda x, w, b: torch.native_group_norm(x, w, b, 2, 6, 5, 3, 1e-5)[0], [x, w, b])
    with pytest.raises(ng.ShapeError, match="does not match"):
        ng.native_group_norm(ng.tensor(x), None, None, 2, 6, 4, 3, 1e-5)
    with pytest.raises(ng.ShapeError, match="divisible"):
        ng.native_group_norm(ng.tensor(x), None, None, 2, 6, 5, 4, 1e-5)


@pytest.mark.parametrize("p,dim", [(2, 0), (2, 1), (3, 2), (1, -1)])
def test_norm_except_dim_matches_torch(p, dim):
    v = rng.standard_normal((3, 4, 2))
    _check(lambda v: ng.norm_except_dim(v, p, dim), lambda v: torch.norm_except_dim(v, p, dim),
           [v])
    with pytest.raises(ng.ShapeError, match="out of range"):
        ng.norm_except_dim(ng.tensor(v), 2, 3)


def test_native_norm_is_the_dense_norm():
    x = rng.standard_normal((3, 4))
    _check(lambda x: ng.native_norm(x), lambda x: torch.norm(x), [x])
    _check(lambda x: ng.native_norm(x, 3, [1], True, None),
           lambda x: torch.norm(x, 3, [1], True), [x])


# --- losses with int reductions ---------------------------------------------------------------
@pytest.mark.parametrize("red", [0, 1, 2])
def test_losses_take_int_reductions(red):
    a, b, c = (rng.standard_normal((4, 5)) for _ in range(3))
    y = np.array([1.0, -1.0, 1.0, -1.0])
    p = np.log(rng.dirichlet(np.ones(5), 4))
    q = rng.dirichlet(np.ones(5), 4)
    _check(lambda i, t: ng.kl_div(i, t, red), lambda i, t: torch.kl_div(i, t, red), [p, q])
    _check(lambda i, t: ng.kl_div(i, t, red, log_target=True),
           lambda i, t: torch.kl_div(i, t, red, log_target=True), [p, np.log(q)])
    _check(lambda a, b, c: ng.triplet_margin_loss(a, b, c, 0.5, 2.0, 1e-6, True, red),
           lambda a, b, c: torch.triplet_margin_loss(a, b, c, 0.5, 2.0, 1e-6, True, red),
           [a, b, c])
    _check(lambda a, b: ng.cosine_embedding_loss(a, b, ng.tensor(y), 0.1, red),
           lambda a, b: torch.cosine_embedding_loss(a, b, torch.tensor(y), 0.1, red), [a, b])
    _check(lambda a, b: ng.margin_ranking_loss(a, b, ng.tensor(a * 0 + 1), 0.2, red),
           lambda a, b: torch.margin_ranking_loss(a, b, torch.tensor(a * 0 + 1), 0.2, red),
           [a[0], b[0]])
    t = np.sign(c)
    _check(lambda a: ng.hinge_embedding_loss(a, ng.tensor(t), 0.7, red),
           lambda a: torch.hinge_embedding_loss(a, torch.tensor(t), 0.7, red), [a])
    counts = rng.poisson(2.0, (4, 5)).astype(float)
    for log_input, full in ((True, False), (False, True)):
        x = a if log_input else np.abs(a)
        _check(lambda x: ng.poisson_nll_loss(x, ng.tensor(counts), log_input, full, 1e-8, red),
               lambda x: torch.poisson_nll_loss(x, torch.tensor(counts), log_input, full, 1e-8,
                                                red), [x])


@pytest.mark.parametrize("red", [0, 1, 2])
def test_ctc_loss_takes_an_int_reduction(red):
    z = rng.standard_normal((8, 2, 5))  # torch's ctc gradient is right through log_softmax
    tg, il, tl = np.array([[1, 2, 2], [3, 1, 0]]), [8, 7], [3, 2]
    _check(lambda z: ng.ctc_loss(ng.log_softmax(z, 2), ng.tensor(tg), il, tl, 0, red),
           lambda z: torch.ctc_loss(z.log_softmax(2), torch.tensor(tg), il, tl, 0, red), [z])


def test_int_reductions_refuse_other_values():
    a = ng.tensor(np.ones((2, 3)))
    for bad in (3, -1, True, "batchmean"):
        with pytest.raises(ValueError, match="kl_div: reduction must be 0, 1 or 2"):
            ng.kl_div(a, a, bad)
    with pytest.raises(ValueError, match="hinge_embedding_loss: reduction"):
        ng.hinge_embedding_loss(a, a, 1.0, 5)


# --- sampling grids ---------------------------------------------------------------------------
@pytest.mark.parametrize("interp", [0, 1, 2])
@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("align", [False, True])
def test_grid_sampler_takes_int_modes(interp, pad, align):
    x, grid = rng.standard_normal((2, 3, 5, 6)), rng.uniform(-1.2, 1.2, (2, 4, 3, 2))
    _check(lambda x, g: ng.grid_sampler(x, g, interp, pad, align),
           lambda x, g: torch.grid_sampler(x, g, interp, pad, align), [x, grid],
           grad=[0] if interp == 1 else None, rtol=1e-9, atol=1e-10)


def test_grid_sampler_refuses_unknown_codes_and_affine_grid_generator_matches():
    x, g = ng.tensor(np.ones((1, 1, 2, 2))), ng.tensor(np.zeros((1, 1, 1, 2)))
    with pytest.raises(ValueError, match="interpolation_mode must be 0"):
        ng.grid_sampler(x, g, 3, 0, False)
    with pytest.raises(ValueError, match="padding_mode must be 0"):
        ng.grid_sampler(x, g, 0, "zeros", False)
    theta = rng.standard_normal((2, 2, 3))
    for align in (False, True):
        _check(lambda t: ng.affine_grid_generator(t, [2, 3, 4, 5], align),
               lambda t: torch.affine_grid_generator(t, [2, 3, 4, 5], align), [theta])


# --- recurrent cells --------------------------------------------------------------------------
def test_recurrent_cells_match_torch():
    x, h, c = rng.standard_normal((3, 4)), rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    for name, gates in (("gru_cell", 3), ("rnn_tanh_cell", 1), ("rnn_relu_cell", 1)):
        wi, wh = rng.standard_normal((gates * 5, 4)), rng.standard_normal((gates * 5, 5))
        bi, bh = rng.standard_normal(gates * 5), rng.standard_normal(gates * 5)
        _check(getattr(ng, name), getattr(torch, name), [x, h, wi, wh, bi, bh])
    wi, wh = rng.standard_normal((20, 4)), rng.standard_normal((20, 5))
    bi, bh = rng.standard_normal(20), rng.standard_normal(20)
    _check(lambda x, h, c, wi, wh, bi, bh: ng.lstm_cell(x, [h, c], wi, wh, bi, bh)[0] * 2
           + ng.lstm_cell(x, (h, c), wi, wh, bi, bh)[1],
           lambda x, h, c, wi, wh, bi, bh: torch.lstm_cell(x, [h, c], wi, wh, bi, bh)[0] * 2
           + torch.lstm_cell(x, [h, c], wi, wh, bi, bh)[1], [x, h, c, wi, wh, bi, bh])
    with pytest.raises(TypeError, match="lstm_cell: hx"):
        ng.lstm_cell(ng.tensor(x), ng.tensor(h), ng.tensor(wi), ng.tensor(wh))


# --- dropout forms ----------------------------------------------------------------------------
def test_feature_dropout_drops_whole_channels_and_scales():
    x = ng.ones(200, 4, 3, 2)
    y = ng.feature_dropout(x, 0.25, True).numpy()
    per_channel = y.reshape(200, 4, -1)
    assert np.all((per_channel == 0).all(-1) | (per_channel == 1 / 0.75).all(-1))
    assert 0.15 < (per_channel[..., 0] == 0).mean() < 0.35
    assert ng.feature_dropout(x, 0.25, False) is x
    with pytest.raises(ValueError, match="p must be in"):
        ng.feature_dropout(x, 1.5, True)
    with pytest.raises(ng.ShapeError, match="two or more"):
        ng.feature_dropout(ng.ones(3), 0.5, True)
    t = torch.feature_dropout(torch.ones(200, 4, 3, 2), 0.25, True).reshape(200, 4, -1)
    assert torch.all((t == 0).all(-1) | (t == 1 / 0.75).all(-1))  # torch's, the same law


@pytest.mark.parametrize("name", ["dropout_", "alpha_dropout_", "feature_dropout_",
                                  "feature_alpha_dropout_"])
def test_in_place_dropout_forms_write_into_their_input(name):
    x = ng.ones(50, 4, 3)
    out = getattr(ng, name)(x, 0.5, True)
    assert out is x
    assert (x.numpy() != 1).any()
    y = ng.ones(5, 4, 3)
    getattr(ng, name)(y, 0.5, False)
    np.testing.assert_array_equal(y.numpy(), np.ones((5, 4, 3)))
    t = torch.ones(5, 4, 3)
    assert getattr(torch, name)(t, 0.5, True) is t
    leaf = ng.ones(5, 4, 3, requires_grad=True)
    with pytest.raises(ng.GradError, match="leaf"):
        getattr(ng, name)(leaf, 0.5, True)


def test_native_dropout_returns_the_kept_mask():
    x = ng.tensor(rng.standard_normal((100, 10)))
    out, mask = ng.native_dropout(x, 0.3, True)
    assert mask.dtype == ng.bool_ and out.shape == mask.shape == x.shape
    np.testing.assert_allclose(out.numpy(), np.where(mask.numpy(), x.numpy() / 0.7, 0.0))
    assert 0.2 < 1 - mask.numpy().mean() < 0.4
    out, mask = ng.native_dropout(x, 0.3, False)
    tout, tmask = torch.native_dropout(torch.tensor(x.numpy()), 0.3, False)
    np.testing.assert_array_equal(mask.numpy(), tmask.numpy())
    _close(out, tout)
    assert not ng.native_dropout(x, 1.0, True)[1].numpy().any()


# --- convolution ------------------------------------------------------------------------------
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("transposed", [False, True])
def test_convolution_takes_torchs_argument_list(nd, transposed):
    sp = (5, 4, 3)[:nd]
    x = rng.standard_normal((2, 4) + sp)
    w = rng.standard_normal(((4, 3) if transposed else (6, 2)) + (2,) * nd)
    b = rng.standard_normal(6)
    args = ([2] * nd, [1], [1] * nd, transposed, [1] * nd if transposed else [0], 2)
    _check(lambda x, w, b: ng.convolution(x, w, b, *args),
           lambda x, w, b: torch.convolution(x, w, b, *args), [x, w, b])


def test_convolution_refuses_a_weight_of_the_wrong_rank_and_conv_tbc_matches():
    with pytest.raises(ng.ShapeError, match="3, 4 or 5 axes"):
        ng.convolution(ng.ones(2, 3), ng.ones(3, 3), None, [1], [0], [1], False, [0], 1)
    x, w, b = rng.standard_normal((7, 2, 3)), rng.standard_normal((3, 3, 4)), \
        rng.standard_normal(4)
    _check(lambda x, w, b: ng.conv_tbc(x, w, b, 1), lambda x, w, b: torch.conv_tbc(x, w, b, 1),
           [x, w, b])


# --- as_strided_, as_strided_scatter, segment_reduce ------------------------------------------
@pytest.mark.parametrize("size,stride,offset", [((2, 2), (1, 2), 1), ((3, 3), (1, 1), 0),
                                                ((2,), (3,), None)])
def test_as_strided_scatter_matches_torch(size, stride, offset):
    a, src = rng.standard_normal(9), rng.standard_normal(size)
    got = ng.as_strided_scatter(ng.tensor(a), ng.tensor(src), size, stride, offset)
    _close(got, torch.as_strided_scatter(torch.tensor(a), torch.tensor(src), size, stride,
                                         offset))

    def written(a, s):  # the same as clone-then-write; torch 2.13's as_strided_scatter
        out = a.clone()  # backward gives the input the gradient of the written places instead
        out.as_strided(size, stride, offset).copy_(s)
        return out

    _check(lambda a, s: ng.as_strided_scatter(a, s, size, stride, offset), written, [a, src],
           grad=[0] if size == (3, 3) else None)  # overlapping writes: src's grad differs
    with pytest.raises(ng.ShapeError, match="src has shape"):
        ng.as_strided_scatter(ng.tensor(a), ng.tensor(src[..., :1]), size, stride, offset)


def test_as_strided_in_place_is_a_view_outside_a_graph_and_recorded_inside():
    a = np.arange(12.0)
    x, t = ng.tensor(a), torch.tensor(a)
    assert x.as_strided_((3, 3), (2, 1), 1) is x
    t.as_strided_((3, 3), (2, 1), 1)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    x[0, 1] = 100.0  # writes reach the shared memory, as torch's view
    t[0, 1] = 100.0
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    y = ng.tensor(a, requires_grad=True) * 1
    ty = torch.tensor(a, requires_grad=True)
    ng.as_strided_(y, (2, 2), (1, 2))
    tz = ty * 1
    torch.as_strided_(tz, (2, 2), (1, 2))
    _close(y, tz)
    with pytest.raises(ng.GradError, match="leaf"):
        ng.tensor(a, requires_grad=True).as_strided_((2,), (1,))
    with pytest.raises(ValueError, match="as_strided_: .* outside"):
        ng.tensor(a).as_strided_((4,), (4,))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "prod", "amax"])
@pytest.mark.parametrize("initial", [None, 0.5])
def test_segment_reduce_matches_torch(reduce, initial):
    d = rng.standard_normal((6, 2))
    d[2, 0] = d[3, 0]  # a tie inside a segment
    lens = np.array([2, 0, 4])
    _check(lambda d: ng.segment_reduce(d, reduce, lengths=ng.tensor(lens), initial=initial),
           lambda d: torch.segment_reduce(d, reduce, lengths=torch.tensor(lens),
                                          initial=initial), [d])
    got = ng.segment_reduce(ng.tensor(d), reduce, offsets=ng.tensor([0, 2, 2, 6]),
                            initial=initial)
    want = torch.segment_reduce(torch.tensor(d), reduce, offsets=torch.tensor([0, 2, 2, 6]),
                                initial=initial)
    _close(got, want)


def test_segment_reduce_along_a_later_axis_and_its_gradient():
    d = rng.standard_normal((2, 6))
    lens = np.array([[2, 4], [1, 5]])
    for reduce in ("sum", "mean", "max", "prod"):
        _check(lambda d: ng.segment_reduce(d, reduce, lengths=ng.tensor(lens), axis=1),
               lambda d: torch.segment_reduce(d, reduce, lengths=torch.tensor(lens), axis=1),
               [d])
    x = ng.tensor(d)
    with pytest.raises(ValueError, match="add up to"):
        ng.segment_reduce(x, "sum", lengths=ng.tensor([[2, 3], [1, 5]]), axis=1)
    with pytest.raises(ValueError, match="reduce must be"):
        ng.segment_reduce(x, "foo", lengths=ng.tensor([[2, 4], [1, 5]]), axis=1)
    with pytest.raises(ng.ShapeError, match="lengths must be"):
        ng.segment_reduce(x, "sum", lengths=ng.tensor([2, 4]), axis=1)
    with pytest.raises(ng.DTypeError, match="floating"):
        ng.segment_reduce(ng.tensor([1, 2]), "sum", lengths=ng.tensor([2]))


# --- metadata and switches ------------------------------------------------------------------
def test_get_device_and_is_inference():
    x = ng.ones(2)
    assert ng.get_device(x) == torch.get_device(torch.ones(2)) == -1
    with ng.inference_mode():
        y = x * 2
    assert ng.is_inference(y) is False and y.is_inference() is False
    with pytest.raises(TypeError, match="get_device"):
        ng.get_device([1.0])


def test_flush_denormal_and_matmul_precision():
    assert ng.set_flush_denormal(True) is False and ng.set_flush_denormal(False) is False
    with pytest.raises(TypeError, match="set_flush_denormal"):
        ng.set_flush_denormal(1)
    assert ng.get_float32_matmul_precision() == torch.get_float32_matmul_precision()
    try:
        for p in ("high", "medium", "highest"):
            ng.set_float32_matmul_precision(p)
            assert ng.get_float32_matmul_precision() == p
        with pytest.raises(ValueError, match="one of 'highest'"):
            ng.set_float32_matmul_precision("low")
    finally:
        ng.set_float32_matmul_precision("highest")


def test_warn_always_interop_threads_and_deterministic_debug_mode():
    assert ng.is_warn_always_enabled() is torch.is_warn_always_enabled() is False
    try:
        ng.set_warn_always(True)
        assert ng.is_warn_always_enabled() is True
    finally:
        ng.set_warn_always(False)
    assert ng.get_num_interop_threads() >= 1
    ng.set_num_interop_threads(ng.get_num_interop_threads())
    with pytest.raises(ValueError, match="positive int"):
        ng.set_num_interop_threads(0)
    assert ng.get_deterministic_debug_mode() == torch.get_deterministic_debug_mode() == 0
    try:
        for mode, want in (("warn", 1), (2, 2), ("default", 0), (1, 1), ("error", 2)):
            ng.set_deterministic_debug_mode(mode)
            torch.set_deterministic_debug_mode(mode)
            assert ng.get_deterministic_debug_mode() == torch.get_deterministic_debug_mode() \
                == want
            assert ng.are_deterministic_algorithms_enabled() == \
                torch.are_deterministic_algorithms_enabled()
            assert ng.is_deterministic_algorithms_warn_only_enabled() == \
                torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(ValueError, match="debug_mode must be"):
            ng.set_deterministic_debug_mode(3)
    finally:
        ng.set_deterministic_debug_mode(0)
        torch.set_deterministic_debug_mode(0)


# --- Tensor methods -----------------------------------------------------------------------------
def test_resize_on_a_leaf_and_its_refusal_with_grad():
    x, t = ng.tensor(np.arange(6.0)), torch.tensor(np.arange(6.0))
    x.resize_(2, 2)
    t.resize_(2, 2)
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    x.resize_as_(ng.ones(3))
    t.resize_as_(torch.ones(3))
    np.testing.assert_array_equal(x.numpy(), t.numpy())
    with pytest.raises(RuntimeError, match="require grad"):
        torch.ones(3, requires_grad=True).resize_(2)
    with pytest.raises(ng.GradError, match="requires grad"):
        ng.ones(3, requires_grad=True).resize_(2)


def _child_writes(arr):
    arr[0] = 42.0


def test_share_memory_is_seen_by_a_forked_process():
    x = ng.tensor(np.zeros(4))
    assert x.is_shared() is False and torch.zeros(4).is_shared() is False
    assert x.share_memory_() is x and x.is_shared() is True
    np.testing.assert_array_equal(x.numpy(), np.zeros(4))
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    p = mp.get_context("fork").Process(target=_child_writes, args=(x.data,))
    p.start()
    p.join(timeout=30)
    assert p.exitcode == 0
    assert x.numpy()[0] == 42.0


class _Tagged(ng.Tensor):
    pass


def test_as_subclass_shares_values_and_passes_gradients_back():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x.as_subclass(_Tagged)
    assert type(y) is _Tagged and y.requires_grad
    (y * y).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    z = ng.tensor([1.0]).as_subclass(_Tagged)
    z.data[0] = 5.0
    assert type(z) is _Tagged
    with pytest.raises(TypeError, match="subclass of nodegrad.Tensor"):
        x.as_subclass(int)


def test_chalf_names_the_missing_dtype():
    with pytest.raises(ng.DTypeError, match="complex32"):
        ng.ones(2).chalf()


TORCH_FORMS = ["embedding", "embedding_bag", "batch_norm", "instance_norm", "kl_div", "ctc_loss",
               "triplet_margin_loss", "cosine_embedding_loss", "margin_ranking_loss",
               "hinge_embedding_loss", "poisson_nll_loss", "grid_sampler",
               "affine_grid_generator", "gru_cell", "lstm_cell", "rnn_tanh_cell",
               "rnn_relu_cell", "feature_dropout", "dropout_", "alpha_dropout_",
               "feature_dropout_", "feature_alpha_dropout_", "native_layer_norm",
               "native_batch_norm", "native_group_norm", "native_dropout", "norm_except_dim",
               "convolution", "conv_tbc", "as_strided_", "as_strided_scatter",
               "segment_reduce", "get_device", "is_inference", "embedding_renorm_",
               "grid_sampler_2d", "grid_sampler_3d", "native_channel_shuffle",
               "unsafe_split_with_sizes"]


@pytest.mark.parametrize("name", TORCH_FORMS)
def test_parameter_names_follow_torchs_schema(name):
    """The parameters, in order, of torch's operator schema (``self`` is ``input``)."""
    op = getattr(torch.ops.aten, name)
    overload = "padding_idx" if name == "embedding_bag" else next(
        o for o in op.overloads() if "out" not in o)
    want = ["input" if a.name == "self" else a.name
            for a in getattr(op, overload)._schema.arguments]
    assert list(inspect.signature(getattr(ng, name)).parameters) == want


def test_smaller_kernel_names_match_torch():
    x = rng.standard_normal((2, 6, 3))
    np.testing.assert_array_equal(ng.native_channel_shuffle(ng.tensor(x), 3).numpy(),
                                  torch.native_channel_shuffle(torch.tensor(x), 3).numpy())
    for got, want in zip(ng.unsafe_split_with_sizes(ng.tensor(x), [2, 4], 1),
                         torch.unsafe_split_with_sizes(torch.tensor(x), [2, 4], 1)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert len(ng.tensor(x).unsafe_split_with_sizes([1, 1])) == 2
    c = rng.standard_normal((3, 2))
    got = ng.view_as_real_copy(ng.view_as_complex_copy(ng.tensor(c)))
    np.testing.assert_array_equal(got.numpy(), c)
    assert torch.from_dlpack(ng.to_dlpack(ng.tensor(c))).numpy().tolist() == c.tolist()
    y = ng.tensor(c)
    assert y.is_set_to(y) and not y.is_set_to(y.clone()) and not y.is_set_to(y.T)
    assert y.const_data_ptr() == y.data_ptr()
    img, grid = rng.standard_normal((1, 2, 3, 4, 5)), rng.uniform(-1, 1, (1, 2, 2, 2, 3))
    _check(lambda i, g: ng.grid_sampler_3d(i, g, 0, 1, True),
           lambda i, g: torch.grid_sampler_3d(i, g, 0, 1, True), [img, grid])
    with pytest.raises(ng.ShapeError, match="grid_sampler_2d: expected a 4-d"):
        ng.grid_sampler_2d(ng.tensor(img), ng.tensor(grid), 0, 0, False)


def test_embedding_renorm_scales_the_named_rows_in_place():
    w = rng.standard_normal((5, 3)) * 3
    nw, tw = ng.tensor(w), torch.tensor(w)
    assert ng.embedding_renorm_(nw, ng.tensor([0, 2, 2]), 1.0, 2.0) is nw
    torch.embedding_renorm_(tw, torch.tensor([0, 2, 2]), 1.0, 2.0)
    _close(nw, tw, rtol=1e-7)
    with pytest.raises(ng.GradError, match="leaf"):
        ng.embedding_renorm_(ng.tensor(w, requires_grad=True), ng.tensor([0]), 1.0, 2.0)


@pytest.mark.parametrize("steps", [[(2,), (6,)], [(3,), (8,)], [(2, 3), (1,), (5,)],
                                   [(0,), (4,)]])
def test_resize_keeps_the_memory_as_torchs_storage(steps):
    x, t = ng.arange(6.0), torch.arange(6.0)
    for size in steps:
        x.resize_(*size)
        t.resize_(*size)
    n = min(t.numel(), 6)  # torch's elements beyond its old storage are uninitialised
    assert x.shape == tuple(t.shape)
    np.testing.assert_array_equal(x.numpy().reshape(-1)[:n], t.numpy().reshape(-1)[:n])


def test_resize_of_views_reads_the_memory_from_their_offset():
    for make in (lambda m: m.arange(6.0).reshape(2, 3).T, lambda m: m.arange(6.0)[::2],
                 lambda m: m.arange(6.0)[2:]):
        for size in ((2,), (3, 2), (4,)):
            x, t = make(ng), make(torch)
            x.resize_(*size)
            t.resize_(*size)
            k = min(t.numel(), 6 - t.storage_offset())  # beyond: torch's are uninitialised
            assert x.shape == tuple(t.shape) and x.stride() == t.stride()
            np.testing.assert_array_equal(x.numpy().reshape(-1)[:k], t.numpy().reshape(-1)[:k])
    base = ng.arange(6.0)
    view = base[2:]
    view.resize_(2)
    view[0] = -1.0  # still the base's memory, as torch's
    assert base.numpy()[2] == -1.0


def test_as_strided_in_place_keeps_torchs_storage_offset():
    x, t = ng.arange(12.0), torch.arange(12.0)
    x.as_strided_((3, 3), (2, 1), 1)
    t.as_strided_((3, 3), (2, 1), 1)
    assert x.storage_offset() == t.storage_offset() == 1 and x.stride() == t.stride()
    np.testing.assert_array_equal(x.as_strided((2,), (1,), 3).numpy(),
                                  t.as_strided((2,), (1,), 3).numpy())


# --- coverage: every public torch function and Tensor method, or the reason it is left out ----
_OUT_OF_SCOPE = re.compile(r"^_|sparse|quantiz|^q_|cudnn|miopen|mkldnn|fbgemm|^sym_|autocast|"
                           r"storage|Storage|vulkan|xpu|mps|mtia|nested|jit")
_SPARSE = "sparse layouts: nodegrad's tensors are dense"
_REMOVED = "deprecated or removed in PyTorch"
_INTERNAL = "PyTorch internal (TorchScript, packaging, build or dispatcher machinery)"
LEFT_OUT_FUNCTIONS = {
    **{n: "SyncBatchNorm's CUDA kernels" for n in (
        "batch_norm_backward_elemt", "batch_norm_backward_reduce", "batch_norm_elemt",
        "batch_norm_gather_stats", "batch_norm_gather_stats_with_counts", "batch_norm_stats",
        "batch_norm_update_stats")},
    **{n: _SPARSE for n in ("ccol_indices_copy", "col_indices_copy", "crow_indices_copy",
                            "indices_copy", "row_indices_copy", "values_copy", "dsmm", "hsmm",
                            "hspmm", "saddmm", "smm", "spmm", "sspaddmm")},
    **{n: "quantized tensors" for n in ("choose_qparams_optimized", "int_repr", "qscheme",
                                        "fused_moving_avg_obs_fake_quant")},
    **{n: _REMOVED for n in ("eig", "lstsq", "matrix_rank", "solve", "symeig", "range",
                             "set_default_tensor_type")},
    **{n: _INTERNAL for n in (
        "classproperty", "compiled_with_cxx11_abi", "fork", "wait", "import_ir_module",
        "import_ir_module_from_buffer", "merge_type_from_type_comment", "parse_ir",
        "parse_schema", "parse_type_comment", "unify_type_list", "get_file_path",
        "prepare_multiprocessing_environment", "profiler_allow_cudagraph_cupti_lazy_reinit_cuda12",
        "thread_safe_generator", "get_device_module", "init_num_threads", "is_distributed",
        "from_file", "hash_tensor")},
    "device": "devices are strings here ('cpu', 'cuda:0'), accepted wherever torch takes one",
    "layout": "one layout (nodegrad.strided)",
    "memory_format": "arrays have one memory format (row-major)",
    "gru": "full-sequence kernels of nn.GRU/LSTM/RNN: use the modules or nn.functional's cells",
    "lstm": "full-sequence kernels of nn.GRU/LSTM/RNN: use the modules or nn.functional's cells",
    "rnn_relu": "full-sequence kernels of nn.GRU/LSTM/RNN: use the modules or the cells",
    "rnn_tanh": "full-sequence kernels of nn.GRU/LSTM/RNN: use the modules or the cells",
    "lobpcg": "not implemented (use linalg.eigh)",
    "slice_inverse": "a view of memory outside its input (functionalization's inverse)",
}
LEFT_OUT_METHODS = {
    **{n: _SPARSE for n in ("ccol_indices", "coalesce", "col_indices", "crow_indices",
                            "dense_dim", "indices", "is_coalesced", "row_indices", "smm",
                            "sspaddmm", "values", "to_padded_tensor")},
    **{n: _REMOVED for n in ("eig", "lstsq", "solve", "symeig", "resize", "resize_as",
                             "reinforce", "volatile")},
    **{n: "quantized tensors" for n in ("int_repr", "qscheme")},
    **{n: "other accelerators' flags" for n in ("ipu", "is_ipu", "is_maia", "is_xla")},
    **{n: _INTERNAL for n in ("hash_tensor", "index", "grad_dtype", "module_load", "name",
                              "record_stream", "is_distributed", "set_", "slice_inverse")},
}


def test_every_public_torch_name_is_provided_or_left_out_with_a_reason():
    funcs = {n for n in dir(torch) if n[:1].islower() and callable(getattr(torch, n, None))
             and not _OUT_OF_SCOPE.search(n) and not hasattr(ng, n)}
    methods = {n for n in dir(torch.Tensor) if not _OUT_OF_SCOPE.search(n)
               and not hasattr(ng.Tensor, n)}
    assert sorted(funcs - set(LEFT_OUT_FUNCTIONS)) == []
    assert sorted(methods - set(LEFT_OUT_METHODS)) == []
