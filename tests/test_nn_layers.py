"""Layers: outputs and gradients against PyTorch with the same weights, finite differences,
dropout's expectation, and errors that name the layer and the expected shape."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

rng = np.random.default_rng(0)


def _copy_weights(ours, theirs):
    ours.load_state_dict({k: ng.tensor(v.detach().numpy()) for k, v in
                          theirs.state_dict().items()})


def _compare(ours, theirs, x, atol=1e-9, train=True):
    """Same input through both (float64): outputs, input grads and parameter grads agree."""
    torch = pytest.importorskip("torch")
    ours.double().train(train)
    theirs.double().train(train)
    _copy_weights(ours, theirs)
    xo = ng.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yo, yt = ours(xo), theirs(xt)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), atol=atol, rtol=1e-7)
    v = rng.standard_normal(yo.shape)
    yo.backward(ng.tensor(v))
    yt.backward(torch.tensor(v))
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), atol=atol, rtol=1e-7)
    tp = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), atol=atol, rtol=1e-7,
                                   err_msg=f"{name} of {theirs}")
    return ours, theirs


@pytest.mark.parametrize("kw", [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=1, padding=2, dilation=2, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=2),
])
def test_conv1d_matches_torch(kw):
    torch = pytest.importorskip("torch")
    _compare(nn.Conv1d(4, 6, 3, **kw), torch.nn.Conv1d(4, 6, 3, **kw),
             rng.standard_normal((2, 4, 11)))


@pytest.mark.parametrize("kw", [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=(2, 1), padding=(1, 2), dilation=1, groups=1),
    dict(stride=1, padding=1, dilation=(2, 1), groups=3),
])
def test_conv2d_matches_torch(kw):
    torch = pytest.importorskip("torch")
    _compare(nn.Conv2d(3, 6, (3, 2), **kw), torch.nn.Conv2d(3, 6, (3, 2), **kw),
             rng.standard_normal((2, 3, 7, 6)))


def test_linear_and_activations_match_torch():
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((5, 4))
    _compare(nn.Linear(4, 3), torch.nn.Linear(4, 3), x)
    _compare(nn.Sequential(nn.Linear(4, 3), nn.PReLU(3)),
             torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.PReLU(3)), x)
    for ours, theirs in [(nn.ELU(0.7), torch.nn.ELU(0.7)), (nn.GELU(), torch.nn.GELU()),
                         (nn.GELU("tanh"), torch.nn.GELU("tanh")),
                         (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
                         (nn.Softplus(2.0), torch.nn.Softplus(2.0)), (nn.SiLU(), torch.nn.SiLU()),
                         (nn.Softmax(1), torch.nn.Softmax(1)),
                         (nn.LogSoftmax(1), torch.nn.LogSoftmax(1)),
                         (nn.Sigmoid(), torch.nn.Sigmoid()), (nn.Tanh(), torch.nn.Tanh())]:
        _compare(nn.Sequential(nn.Linear(4, 3), ours),
                 torch.nn.Sequential(torch.nn.Linear(4, 3), theirs), x)


@pytest.mark.parametrize("cls,tcls,shape,kw", [
    ("MaxPool1d", "MaxPool1d", (2, 3, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("MaxPool2d", "MaxPool2d", (2, 3, 6, 7), dict(kernel_size=2)),
    ("AvgPool1d", "AvgPool1d", (2, 3, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("AvgPool2d", "AvgPool2d", (2, 3, 6, 7), dict(kernel_size=(2, 3), stride=1)),
    ("AdaptiveAvgPool1d", "AdaptiveAvgPool1d", (2, 3, 10), dict(output_size=4)),
    ("AdaptiveAvgPool2d", "AdaptiveAvgPool2d", (2, 3, 7, 6), dict(output_size=(3, 2))),
])
def test_pooling_matches_torch(cls, tcls, shape, kw):
    torch = pytest.importorskip("torch")
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64)  # no ties
    _compare(getattr(nn, cls)(**kw), getattr(torch.nn, tcls)(**kw), x)


def test_batchnorm_train_and_eval_match_torch():
    torch = pytest.importorskip("torch")
    for ours, theirs, shape in [(nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3), (6, 3)),
                                (nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3), (4, 3, 5)),
                                (nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3), (4, 3, 2, 5))]:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
        x = rng.standard_normal(shape) * 3 + 1
        _compare(ours, theirs, x, train=True)  # also updates the running statistics
        np.testing.assert_allclose(ours.running_mean.numpy(), theirs.running_mean.numpy(),
                                   rtol=1e-10)
        np.testing.assert_allclose(ours.running_var.numpy(), theirs.running_var.numpy(),
                                   rtol=1e-10)
        ours.eval()
        theirs.eval()
        x2 = ng.tensor(rng.standard_normal(shape))
        np.testing.assert_allclose(ours(x2).numpy(),
                                   theirs(torch.tensor(x2.numpy())).detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (6, 3)), ("BatchNorm2d", (4, 3, 2, 2))])
def test_batchnorm_loads_a_state_dict_without_num_batches_tracked(cls, shape):
    """PyTorch checkpoints written before 0.4.1 have no counter: load_state_dict accepts them
    (strict too) and keeps the current counter, as PyTorch does."""
    torch = pytest.importorskip("torch")
    from nodegrad.train import load_pretrained

    ours, theirs = getattr(nn, cls)(3), getattr(torch.nn, cls)(3)
    for _ in range(2):
        ours(ng.randn(*shape))
        theirs(torch.randn(*shape))
    old = {k: v.detach().numpy() + 1 for k, v in getattr(torch.nn, cls)(3).state_dict().items()
           if k != "num_batches_tracked"}
    assert ours.load_state_dict({k: ng.tensor(v) for k, v in old.items()}) == ([], [])
    theirs.load_state_dict({k: torch.tensor(v) for k, v in old.items()})
    assert int(ours.num_batches_tracked.item()) == int(theirs.num_batches_tracked) == 2
    for k in old:
        np.testing.assert_array_equal(ours.state_dict()[k].numpy(), old[k])
    # inside a model, and through load_pretrained (a torch state dict saved as-is)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(sd)
    assert load_pretrained(model, sd).missing == []
    with pytest.raises(ng.ShapeError, match="missing: 1.running_var"):
        model.load_state_dict({k: v for k, v in sd.items() if k != "1.running_var"})


def test_layernorm_and_embedding_match_torch():
    torch = pytest.importorskip("torch")
    _compare(nn.LayerNorm((3, 4)), torch.nn.LayerNorm((3, 4)), rng.standard_normal((2, 3, 4)))
    emb, temb = nn.Embedding(5, 3).double(), torch.nn.Embedding(5, 3).double()
    _copy_weights(emb, temb)
    idx = np.array([[0, 4, 4], [1, 0, 2]])
    out = emb(ng.tensor(idx))
    tout = temb(torch.tensor(idx))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy())
    out.sum().backward()
    tout.sum().backward()
    np.testing.assert_allclose(emb.weight.grad.numpy(), temb.weight.grad.numpy())


@pytest.mark.parametrize("f,shapes", [
    (lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2), [(2, 2, 9), (3, 2, 2),
                                                                           (3,)]),
    (lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2), [(1, 4, 4, 3), (2, 2, 2, 2), (2,)]),
    (lambda x: F.max_pool2d(x, 2), [(1, 2, 4, 4)]),
    (lambda x: F.avg_pool1d(x, 3, 2, 1), [(2, 2, 7)]),
    (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [(5, 3), (3,), (3,)]),
    (lambda x, w, b: F.layer_norm(x, 4, w, b), [(2, 4), (4,), (4,)]),
    (lambda x, a: F.prelu(x, a), [(3, 2, 2), (2,)]),
])
def test_layers_gradcheck(f, shapes):
    arrays = [rng.standard_normal(s) for s in shapes]
    assert ng.gradcheck(f, *arrays, atol=1e-6)


def test_conv_second_order():
    x, w = rng.standard_normal((1, 2, 6)), rng.standard_normal((2, 2, 3))
    assert ng.gradcheck(lambda x, w: F.conv1d(x, w, stride=2, padding=1), x, w, order=2)


def test_dropout_keeps_expectation_in_both_modes():
    x = ng.ones(200_000)
    g = ng.Generator(seed=0)
    inv = F.dropout(x, 0.3, training=True, generator=g).numpy()
    assert abs(inv.mean() - 1.0) < 0.01 and abs((inv == 0).mean() - 0.3) < 0.01
    assert F.dropout(x, 0.3, training=False) is x
    classic = F.dropout(x, 0.3, training=True, mode="classic", generator=g).numpy()
    test_time = F.dropout(x, 0.3, training=False, mode="classic").numpy()
    assert abs(classic.mean() - test_time.mean()) < 0.01 and test_time[0] == pytest.approx(0.7)
    d = nn.Dropout(0.5)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_dropout_gradient_uses_same_mask():
    x = ng.ones(1000, requires_grad=True)
    y = F.dropout(x, 0.5, generator=ng.Generator(seed=1))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.numpy())


def test_layer_errors_name_layer_and_shape():
    with pytest.raises(ng.ShapeError, match=r"conv1d: expected input of shape \(N, C, L\) or "
                                            r"unbatched \(C, L\), got \(5,\)"):
        nn.Conv1d(2, 3, 3)(ng.ones(5))
    with pytest.raises(ng.ShapeError, match="input has 3 channels"):
        nn.Conv2d(2, 3, 3)(ng.ones(1, 3, 5, 5))
    with pytest.raises(ng.ShapeError, match="linear: input has 5 features"):
        nn.Linear(4, 2)(ng.ones(3, 5))
    with pytest.raises(ng.ShapeError, match=r"BatchNorm1d\(3\)"):
        nn.BatchNorm1d(3)(ng.ones(4, 2))
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm1d(3)(ng.ones(1, 3))
    with pytest.raises(IndexError, match="index 7 is out of range for 5"):
        nn.Embedding(5, 2)(ng.tensor([1, 7]))
    with pytest.raises(ng.ShapeError, match=r"max_pool1d: kernel size \(3,\) is larger than the "
                       r"padded input \(2,\)"):
        F.max_pool1d(ng.ones(1, 1, 2), 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv1d(3, 4, 3, groups=2)


@pytest.mark.parametrize("layer, x, says", [
    (nn.Conv1d(1, 2, 5), (1, 1, 3), r"Conv1d\(1, 2, kernel_size=\(5,\).*conv1d: kernel size "
     r"\(5,\) is larger than the padded input \(3,\) \(input \(1, 1, 3\), padding \(0,\)\)"),
    (nn.Conv1d(1, 2, 6, padding=1), (2, 1, 3), r"Conv1d\(.*padding=\(1,\)\).*padded input "
     r"\(5,\)"),
    (nn.Conv2d(1, 2, 3, dilation=3), (1, 1, 5, 9), r"Conv2d\(.*dilation=\(3, 3\)\): conv2d: kernel "
     r"size \(3, 3\) with dilation \(3, 3\) \(spanning \(7, 7\)\) is larger than the padded "
     r"input \(5, 9\)"),
    (nn.MaxPool2d(4), (1, 1, 3, 3), r"MaxPool2d\(kernel_size=4.*max_pool2d: kernel size \(4, 4\)"),
    (nn.MaxPool1d(3), (1, 1, 2), r"MaxPool1d\(kernel_size=3.*\(2,\)"),
    (nn.AvgPool1d(4, padding=1), (1, 1, 1), r"AvgPool1d\(.*avg_pool1d: .*padded input \(3,\) "
     r"\(input \(1, 1, 1\), padding \(1,\)\)"),
    (nn.AvgPool2d((1, 5)), (1, 1, 4, 4), r"AvgPool2d\(.*kernel size \(1, 5\).*\(4, 4\)"),
])
def test_kernel_longer_than_the_padded_input_names_the_layer(layer, x, says):
    with pytest.raises(ng.ShapeError, match=says) as e:
        nn.Sequential(nn.Identity(), layer)(ng.zeros(*x))
    assert "sliding_window_view" not in str(e.value)


def test_conv_backward_has_no_python_loop_over_positions():
    # the windowed view's gradient loops over kernel taps only: a long signal costs the
    # same number of recorded ops as a short one
    def count_nodes(length):
        x = ng.randn(1, 2, length, requires_grad=True)
        y = F.conv1d(x, ng.randn(3, 2, 5, requires_grad=True)).sum()
        n, stack, seen = 0, [y.node], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            n += 1
            stack.extend(p for p in node.parents if isinstance(p, ng.autodiff.Node))
        return n

    assert count_nodes(20) == count_nodes(2000)


def test_one_hot_and_flatten():
    oh = F.one_hot(ng.tensor([0, 2]), 3)
    np.testing.assert_array_equal(oh.numpy(), [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="labels must lie"):
        F.one_hot(ng.tensor([3]), 3)
    assert nn.Flatten()(ng.ones(2, 3, 4)).shape == (2, 12)
    assert nn.GlobalAvgPool()(ng.ones(2, 3, 4, 5)).shape == (2, 3)


def test_functional_softmax_one_hot_and_embedding_max_norm_as_torch():
    """F.softmax/log_softmax take PyTorch's dim= (it raised) and dtype=; F.one_hot is int64
    with num_classes inferred from -1; embedding's max_norm renormalises the rows it reads, in
    the weight itself."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    for f in ("softmax", "log_softmax"):
        got = getattr(F, f)(ng.tensor(x), dim=1, dtype=ng.float32)
        want = getattr(torch.nn.functional, f)(torch.tensor(x), dim=1, dtype=torch.float32)
        assert got.dtype == ng.float32
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(getattr(ng.tensor(x), f)(dim=0).numpy(),
                                   getattr(torch.tensor(x), f)(dim=0).numpy(), rtol=1e-12)
    labels = np.array([0, 3, 1])
    got = F.one_hot(ng.tensor(labels))
    want = torch.nn.functional.one_hot(torch.tensor(labels))
    assert got.dtype == ng.int64
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    w = np.random.default_rng(1).standard_normal((5, 3)) * 2
    idx = np.array([0, 2, 2, 4])
    tw, nw = torch.tensor(w), ng.tensor(w)
    want = torch.nn.functional.embedding(torch.tensor(idx), tw, max_norm=1.5, norm_type=3.0)
    got = F.embedding(ng.tensor(idx), nw, max_norm=1.5, norm_type=3.0)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    np.testing.assert_allclose(nw.numpy(), tw.numpy(), rtol=1e-12)  # renormalised in place
    e = nn.Embedding(5, 3, max_norm=1.0)
    e(ng.tensor(idx))
    assert float(ng.linalg.vector_norm(e.weight[ng.tensor([2])], dim=1).max()) <= 1.0 + 1e-6


def test_embedding_from_pretrained_as_torch():
    torch = pytest.importorskip("torch")
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    for freeze in (True, False):
        e = nn.Embedding.from_pretrained(ng.tensor(w), freeze=freeze, padding_idx=0)
        t = torch.nn.Embedding.from_pretrained(torch.tensor(w), freeze=freeze, padding_idx=0)
        np.testing.assert_array_equal(e(ng.tensor([0, 3])).numpy(),
                                      t(torch.tensor([0, 3])).detach().numpy())
        assert e.weight.requires_grad is t.weight.requires_grad is (not freeze)
    with pytest.raises(ValueError, match="2-d tensor"):
        nn.Embedding.from_pretrained(ng.ones(3))


# --- Sequential's fused Linear + ReLU ----------------------------------------------------------
def _stack(bias=True, dtype=ng.float32):
    ng.manual_seed(3)
    return nn.Sequential(nn.Linear(24, 64, bias=bias, dtype=dtype), nn.ReLU(),
                         nn.Linear(64, 48, dtype=dtype), nn.ReLU(inplace=True),
                         nn.Linear(48, 5, dtype=dtype))


def _layer_by_layer(seq, x):
    for m in seq:
        x = m(x)
    return x


def _run(seq, x, forward):
    for p in seq.parameters():
        p.grad = None
    xt = ng.tensor(x, requires_grad=True)
    out = forward(seq, xt)
    (out * ng.tensor(np.linspace(-1, 1, out.shape[-1]).astype(x.dtype))).sum().backward()
    return out.numpy(), [xt.grad.numpy()] + [p.grad.numpy() for p in seq.parameters()]


@pytest.mark.parametrize("shape", [(24,), (3, 24), (16, 24), (130, 24), (2, 3, 24), (0, 24)])
@pytest.mark.parametrize("dtype", [ng.float16, ng.float32, ng.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_sequential_fuses_linear_relu_with_the_bits_of_the_two_ops(shape, dtype, bias):
    """A Linear and the ReLU after it run as one node, with the same values and gradients:
    NumPy's ops on small products, the one-pass loop on larger ones (16 rows: the transposed,
    F-ordered product of a wide layer; 130: C-ordered)."""
    pytest.importorskip("numba")
    seq = _stack(bias, dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(ng.dtype(dtype).name)
    if x.size:
        x.reshape(-1)[:3] = [np.nan, -0.0, 0.0]  # NaN propagates; a zero product gives +0
    out, grads = _run(seq, x, lambda s, t: s(t))
    ref, rgrads = _run(seq, x, _layer_by_layer)
    np.testing.assert_array_equal(out, ref)
    for g, r in zip(grads, rgrads):
        np.testing.assert_array_equal(g, r)
    assert seq[:2](ng.tensor(x)).node.prim.name == "linear_relu"


def test_sequential_fusion_leaves_hooked_or_patched_layers_to_themselves():
    seq = _stack()
    x = ng.randn(4, 24, requires_grad=True)
    seen = []
    h = seq[1].register_forward_hook(lambda m, a, out: seen.append(a[0].node.prim.name))
    y = seq(x)
    assert seen == ["linear"] and y.node.prim.name == "linear"
    h.remove()
    h = seq[0].register_forward_pre_hook(lambda m, a: seen.append("pre"))
    seq(x)
    assert seen == ["linear", "pre"]
    h.remove()
    seq[2].forward = lambda t: F.linear(t, seq[2].weight, seq[2].bias) * 2
    ref = seq[4](F.relu(seq[2].forward(F.relu(seq[0](x)))))
    np.testing.assert_array_equal(seq(x).numpy(), ref.numpy())
    del seq[2].forward
    forward = nn.ReLU.forward
    try:  # a forward patched on the class is what its layers run
        nn.ReLU.forward = lambda self, t: F.relu(t) + 1
        ref = seq[4](F.relu(seq[2](F.relu(seq[0](x)) + 1)) + 1)
        np.testing.assert_array_equal(seq(x).numpy(), ref.numpy())
    finally:
        nn.ReLU.forward = forward
    assert seq(x).node.prim.name == "linear" and seq[:2](x).node.prim.name == "linear_relu"


def test_sequential_fusion_checks_the_input_as_linear_does():
    seq = _stack()
    with pytest.raises(ng.errors.DTypeError, match="Linear: the input has dtype float64"):
        seq(ng.randn(2, 24, dtype=ng.float64))
    with pytest.raises(ng.errors.ShapeError, match="linear: input has 23 features"):
        seq(ng.randn(2, 23))


def test_sequential_runs_layer_by_layer_under_transforms_and_anomaly_mode():
    """vmap, jit and anomaly mode see the layers' own ops (linear, then relu)."""
    seq = _stack(dtype=ng.float64)
    x = ng.randn(6, 24, dtype=ng.float64)
    ref = _layer_by_layer(seq, x).numpy()
    np.testing.assert_allclose(ng.vmap(seq)(x).numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ng.jit(seq)(x).numpy(), ref)
    with ng.autograd.detect_anomaly():
        y = seq[:2](ng.randn(3, 24, dtype=ng.float64, requires_grad=True))
    assert y.node.prim.name == "relu"
    # grad and jvp go through the fused op: its rules give the layer-by-layer derivatives
    u = ng.randn(6, 24, dtype=ng.float64)
    _, t = ng.jvp(seq, (x,), (u,))
    _, tr = ng.jvp(lambda v: _layer_by_layer(seq, v), (x,), (u,))
    np.testing.assert_allclose(t.numpy(), tr.numpy(), rtol=1e-12, atol=1e-12)
    g = ng.grad(lambda v: (seq(v) ** 2).sum())(x)
    gr = ng.grad(lambda v: (_layer_by_layer(seq, v) ** 2).sum())(x)
    np.testing.assert_array_equal(g.numpy(), gr.numpy())


def test_fused_linear_relu_takes_the_one_pass_loop_in_either_layout(monkeypatch):
    pytest.importorskip("numba")
    from nodegrad import _backend as B

    k = B.cpu_kernels()
    assert k is not None
    downs, loop = [], k.add_bias_relu
    monkeypatch.setattr(k, "add_bias_relu", lambda m, b, down, z: (downs.append(down),
                                                                    loop(m, b, down, z)))
    seq = _stack()
    seq(ng.randn(16, 24))   # 64 outputs per row of 16: the transposed product
    seq(ng.randn(130, 24))  # C-ordered
    assert downs == [True, False, False]


# --- Sequential's fused convolution + ReLU ------------------------------------------------------
def _conv_stack(nd, bias=True, groups=1, dtype=ng.float32):
    ng.manual_seed(5)
    conv = nn.Conv1d if nd == 1 else nn.Conv2d
    return nn.Sequential(conv(3, 6, 3, stride=2, padding=1, bias=bias, groups=groups,
                              dtype=dtype), nn.ReLU(),
                         conv(6, 6, 3, padding=1, padding_mode="circular", dtype=dtype),
                         nn.ReLU(inplace=True))


@pytest.mark.parametrize("nd, shape", [(1, (4, 3, 11)), (1, (40, 3, 40)), (2, (5, 3, 8, 8)),
                                       (1, (3, 11))])
@pytest.mark.parametrize("dtype", [ng.float16, ng.float32, ng.float64])
@pytest.mark.parametrize("bias, groups", [(True, 1), (False, 1), (True, 3)])
def test_sequential_fuses_conv_relu_with_the_bits_of_the_two_ops(nd, shape, dtype, bias,
                                                                  groups):
    """A convolution and the ReLU after it run as one node with the two ops' values, layout
    and gradients: float32 with one group and a bias adds the bias and takes the maximum in one
    pass over the product, anything else runs the two forwards; an unbatched input and another
    padding mode go through the layer's own handling."""
    seq = _conv_stack(nd, bias, groups, dtype)
    x = np.random.default_rng(1).standard_normal(shape).astype(ng.dtype(dtype).name)
    x.reshape(-1)[:3] = [np.nan, -0.0, 0.0]  # NaN propagates; a zero gives +0
    out, grads = _run(seq, x, lambda s, t: s(t))
    ref, rgrads = _run(seq, x, _layer_by_layer)
    np.testing.assert_array_equal(out, ref)
    assert seq(ng.tensor(x)).numpy().strides == _layer_by_layer(seq, ng.tensor(x)).numpy().strides
    for g, r in zip(grads, rgrads):
        np.testing.assert_array_equal(g, r)
    for y in (seq[:2](ng.tensor(x)), seq(ng.tensor(x))):  # the circular one too
        n = y.node
        if len(shape) == nd + 1:  # unbatched: the result is the batch of one's, reshaped
            assert n.prim.name == "reshape"
            n = n.parents[0]
        assert n.prim.name == "conv_relu"


def test_conv_relu_matches_pytorch_and_takes_the_one_pass_loop(monkeypatch):
    """The fused pair against PyTorch's conv1d then relu, values and gradients; float32 with a
    bias goes through the bias-and-ReLU loop (numba loaded)."""
    pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    from nodegrad import _backend as B

    calls = []
    real = B.add_bias_relu
    monkeypatch.setattr(B, "add_bias_relu", lambda out, b: (calls.append(out.shape),
                                                            real(out, b))[1])
    seq = _conv_stack(1)[:2]
    x = np.random.default_rng(2).standard_normal((50, 3, 40)).astype(np.float32)
    out, grads = _run(seq, x, lambda s, t: s(t))
    assert calls == [(50 * 20, 6)]
    conv = torch.nn.Conv1d(3, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(seq[0].weight.numpy()))
        conv.bias.copy_(torch.from_numpy(seq[0].bias.numpy()))
    xt = torch.tensor(x, requires_grad=True)
    y = torch.relu(conv(xt))
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, [xt.grad, conv.weight.grad, conv.bias.grad]):
        np.testing.assert_allclose(g, r.numpy(), rtol=1e-4, atol=1e-5)


def test_conv_relu_helper_fuses_a_plain_layer_and_calls_a_hooked_one():
    """The zoo's CNNs write ``conv_relu(self.conv1, x)``: one node for a plain convolution, the
    layer's call then relu for a hooked or subclassed one, the same bits."""
    from nodegrad.models.mnist1d import CNN
    from nodegrad.nn.layers.container import conv_relu

    ng.manual_seed(0)
    model = CNN()
    x = ng.randn(16, 40)
    h = x.reshape(16, 1, 40)
    for conv in (model.conv1, model.conv2, model.conv3):
        h = F.relu(conv(h))
    np.testing.assert_array_equal(model(x).numpy(), model.linear(h.reshape(16, -1)).numpy())
    x3 = x.reshape(16, 1, 40)
    assert conv_relu(model.conv1, x3).node.prim.name == "conv_relu"
    seen = []
    model.conv1.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    out = conv_relu(model.conv1, x3)
    assert seen == [(16, 25, 19)] and out.node.prim.name == "relu"

    class Doubled(nn.Conv1d):
        def forward(self, t):
            return super().forward(t) * 2

    ng.manual_seed(0)
    d = Doubled(1, 4, 3)
    assert conv_relu(d, x3).node.prim.name == "relu"
    assert nn.Sequential(d, nn.ReLU())(x3).node.prim.name == "relu"


def test_linear_relu_helper_fuses_a_plain_layer_and_calls_a_hooked_one():
    """The zoo's MLPs write ``linear_relu(self.linear1, x)``: one node for a plain Linear, the
    layer's call then relu for a hooked one (whose hook sees the call), the same bits."""
    from nodegrad.models.mnist1d import MLP
    from nodegrad.nn.layers.container import linear_relu

    ng.manual_seed(0)
    model = MLP()
    x = ng.randn(32, 40)
    y = model(x)
    h = F.relu(model.linear2(F.relu(model.linear1(x))))
    np.testing.assert_array_equal(y.numpy(), model.linear3(h).numpy())
    assert linear_relu(model.linear1, x).node.prim.name == "linear_relu"
    seen = []
    model.linear1.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    out = linear_relu(model.linear1, x)
    assert seen == [(32, 100)] and out.node.prim.name == "relu"
