"""Regression tests for nn against PyTorch: interpolate's source indices and integer input,
the linear modes' unchanged axes, InstanceNorm's momentum=None, module registration errors,
``Module.apply``'s order, pools whose ceil_mode window outgrows the input, PyTorch's smaller
module methods (flatten_parameters, reset_*, load_state_dict(assign=True), ...), the grid's
zero gradient in nearest grid_sample, layer reprs and strided 'same' convolutions."""

import itertools

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _both(fn_ng, fn_t, x, **kw):
    """(ours, theirs) of one call on the same array, as NumPy arrays."""
    return fn_ng(ng.tensor(x), **kw).numpy(), fn_t(torch.tensor(x), **kw).numpy()


# --- interpolate: integer and float16 input, PyTorch's index rules ----------------------------
def test_interpolate_uint8_nearest_copies_pixels():
    x = np.array([[[[10, 200, 30, 250]]]], np.uint8)
    ours, theirs = _both(F.interpolate, TF.interpolate, x, scale_factor=2)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours[0, 0, 0], [10, 10, 200, 200, 30, 30, 250, 250])
    assert ours.dtype == np.uint8
    up = nn.Upsample(scale_factor=2)(ng.tensor(x)).numpy()
    np.testing.assert_array_equal(up, theirs)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_interpolate_uint8_linear_and_cubic_match_torch_bit_for_bit(mode):
    """PyTorch's uint8 kernel: fixed-point weights, each axis rounded and clamped to [0, 255]
    (bicubic overshoots clamp), the width resampled first; an unchanged axis is copied."""
    rng = np.random.default_rng(0)
    x = np.array([[[[10, 200, 30, 250]]]], np.uint8)
    ours, theirs = _both(F.interpolate, TF.interpolate, x, size=(1, 6), mode=mode)
    np.testing.assert_array_equal(ours, theirs)
    cases = 0
    for _ in range(60):
        c = int(rng.integers(1, 5))  # (PyTorch's kernel for more channels mishandles width 1)
        hw = tuple(int(v) for v in rng.integers(1, 9, 2))
        kw = {"align_corners": bool(rng.integers(2))} if rng.integers(2) else {}
        if rng.integers(2):
            kw["size"] = tuple(int(v) for v in rng.integers(2, 14, 2))
        else:
            kw["scale_factor"] = tuple(float(rng.choice([0.5, 1.0, 1.05, 1.7, 2.0, 3.3]))
                                       for _ in range(2))
            if min(int(n * f) for n, f in zip(hw, kw["scale_factor"])) < 2:
                continue
        x = rng.integers(0, 256, (2, c) + hw).astype(np.uint8)
        ours, theirs = _both(F.interpolate, TF.interpolate, x, mode=mode, **kw)
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{hw} {c} {kw}")
        cases += 1
    assert cases > 40


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8])
def test_interpolate_nearest_picks_torchs_pixels_in_every_dtype(mode, dtype):
    """float32 source indices for every dtype but float64 (float64 ones, floored in float32);
    PyTorch's 2-D kernel for small outputs copies an unchanged axis and halves a doubled one."""
    rng = np.random.default_rng(1)
    for nd in (1, 2, 3):
        for _ in range(12):
            n = tuple(int(v) for v in rng.integers(1, 12 if nd < 3 else 6, nd))
            if rng.integers(2):
                sf = tuple(float(rng.choice([rng.uniform(0.4, 3.5), 2.0067, 1.05, 2.0, 1.0]))
                           for _ in range(nd))
                if min(int(a * f) for a, f in zip(n, sf)) < 1:
                    continue
                kw = {"scale_factor": sf}
            else:
                kw = {"size": tuple(int(v) for v in rng.integers(1, 3 * max(n) + 2, nd))}
            x = (np.arange(np.prod(n)) % 250).reshape((1, 1) + n).astype(dtype)
            ours, theirs = _both(F.interpolate, TF.interpolate, x, mode=mode, **kw)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{n} {kw}")
    # long axes: float16 cannot hold the indices, and a large 2-D output takes the other kernel
    h = np.arange(100, dtype=dtype if dtype != np.uint8 else np.float16).reshape(1, 1, 100)
    for size in (333, 251):
        ours, theirs = _both(F.interpolate, TF.interpolate, h, size=size, mode=mode)
        np.testing.assert_array_equal(ours, theirs)
    x = (np.arange(70 * 90) % 250).reshape(1, 1, 70, 90).astype(dtype)
    for kw in ({"scale_factor": (1.05, 2.0067)}, {"size": (73, 131)}, {"size": (40, 50)}):
        ours, theirs = _both(F.interpolate, TF.interpolate, x, mode=mode, **kw)
        np.testing.assert_array_equal(ours, theirs, err_msg=str(kw))


def test_interpolate_other_integer_dtypes():
    """Nearest modes copy pixels of any integer dtype; the weighted modes take uint8 only."""
    x = np.arange(24, dtype=np.int32).reshape(1, 2, 3, 4) * 1000
    y = F.interpolate(ng.tensor(x), scale_factor=(2, 1.5)).numpy()
    ref = F.interpolate(ng.tensor(x.astype(np.float64)), scale_factor=(2, 1.5)).numpy()
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, ref.astype(np.int32))
    with pytest.raises(ng.DTypeError, match="interpolate: mode 'bilinear' takes floating or "
                       "uint8 input, got int32"):
        F.interpolate(ng.tensor(x), scale_factor=2, mode="bilinear")


def test_interpolate_uint8_and_nearest_on_the_device(cuda):
    x = np.random.default_rng(2).integers(0, 256, (1, 3, 5, 6)).astype(np.uint8)
    for kw in ({"scale_factor": 2}, {"size": (7, 9), "mode": "bicubic"},
               {"size": (4, 11), "mode": "bilinear", "align_corners": True}):
        on_cpu = F.interpolate(ng.tensor(x), **kw).numpy()
        on_dev = F.interpolate(ng.tensor(x, device=cuda), **kw).numpy()
        np.testing.assert_array_equal(on_dev, on_cpu)


# --- the linear modes copy an axis whose size does not change --------------------------------
@pytest.mark.parametrize("align_corners", [None, False, True])
@pytest.mark.parametrize("recompute", [None, True])
def test_linear_modes_copy_an_unchanged_axis_as_torch(align_corners, recompute):
    x = np.arange(10.0, dtype=np.float32).reshape(1, 1, 10)
    kw = dict(scale_factor=1.05, mode="linear", align_corners=align_corners,
              recompute_scale_factor=recompute)
    ours, theirs = _both(F.interpolate, TF.interpolate, x, **kw)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours[0, 0], np.arange(10.0))
    rng = np.random.default_rng(3)
    for mode, shape, sf in (("bilinear", (1, 2, 4, 10), (2.0, 1.05)),
                            ("trilinear", (1, 2, 3, 5, 10), (1.4, 1.05, 1.1)),
                            ("bicubic", (1, 2, 4, 10), (2.0, 1.05))):
        x = rng.standard_normal(shape).astype(np.float32)
        kw = dict(scale_factor=sf, mode=mode, align_corners=align_corners,
                  recompute_scale_factor=recompute)
        xo, xt = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yo, yt = F.interpolate(xo, **kw), TF.interpolate(xt, **kw)
        np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=mode)
        g = rng.standard_normal(yt.shape).astype(np.float32)
        yo.backward(ng.tensor(g))
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-5)


# --- InstanceNorm: momentum=None and the batch counter ---------------------------------------
@pytest.mark.parametrize("momentum", [None, 0.1])
def test_instance_norm_running_stats_and_counter_match_torch(momentum):
    rng = np.random.default_rng(4)
    ours = nn.InstanceNorm1d(3, track_running_stats=True, momentum=momentum)
    theirs = torch.nn.InstanceNorm1d(3, track_running_stats=True, momentum=momentum)
    for _ in range(2):
        x = rng.standard_normal((2, 3, 6)).astype(np.float32)
        yo, yt = ours(ng.tensor(x)), theirs(torch.tensor(x))
        np.testing.assert_allclose(yo.numpy(), yt.numpy(), rtol=1e-5, atol=1e-6)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).numpy(),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    assert int(ours.num_batches_tracked.numpy()) == 0
    ours.eval(), theirs.eval()
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    np.testing.assert_allclose(ours(ng.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="instance_norm: momentum must be a float, got None"):
        F.instance_norm(ng.ones(2, 3, 5), ng.zeros(3), ng.ones(3), momentum=None)


# --- registration: the errors PyTorch raises --------------------------------------------------
def test_plain_tensor_on_a_parameter_slot_raises_and_keeps_the_parameter():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"Linear.weight: cannot assign a Tensor of float32 as "
                       r"parameter 'weight' \(nn.Parameter or None expected\)"):
        lin.weight = ng.zeros(2, 2)
    with pytest.raises(TypeError):
        torch.nn.Linear(2, 2).weight = torch.zeros(2, 2)
    assert [k for k, _ in lin.named_parameters()] == ["weight", "bias"]
    lin.bias = None
    assert [k for k, _ in lin.named_parameters()] == ["weight"] and lin.bias is None
    bn = nn.BatchNorm1d(2)
    with pytest.raises(TypeError, match="as buffer 'running_mean'"):
        bn.running_mean = 3
    seq = nn.Sequential(nn.Linear(1, 1))
    with pytest.raises(TypeError, match="as child module '0'"):
        setattr(seq, "0", 3)
    bn.running_mean = nn.Parameter(ng.zeros(2))  # a Parameter replaces a buffer (PyTorch's)
    assert "running_mean" in dict(bn.named_parameters())
    assert "running_mean" not in dict(bn.named_buffers())


@pytest.mark.parametrize("call, error", [
    (lambda m, lib: m.register_parameter("w", lib.zeros(1)), TypeError),
    (lambda m, lib: m.register_buffer("x", 3), TypeError),
    (lambda m, lib: m.register_buffer("x", np.zeros(2)), TypeError),
    (lambda m, lib: m.register_buffer("a.b", lib.zeros(1)), KeyError),
    (lambda m, lib: m.register_buffer("", lib.zeros(1)), KeyError),
    (lambda m, lib: m.register_buffer(3, lib.zeros(1)), TypeError),
    (lambda m, lib: m.register_buffer("weight", lib.zeros(2, 2)), KeyError),
    (lambda m, lib: m.register_parameter("a.b", None), KeyError),
    (lambda m, lib: m.add_module("x", 3), TypeError),
])
def test_register_errors_match_torch(call, error):
    with pytest.raises(error):
        call(torch.nn.Linear(2, 2), torch)
    m = nn.Linear(2, 2)
    with pytest.raises(error):
        call(m, ng)
    assert [k for k, _ in m.named_parameters()] == ["weight", "bias"]
    assert list(m.state_dict()) == ["weight", "bias"]


def test_register_none_and_persistence_as_torch():
    for lib, mod in ((ng, nn), (torch, torch.nn)):
        m = mod.Module()
        m.register_parameter("p", None)
        m.register_buffer("b", None)
        m.register_buffer("c", lib.zeros(1), persistent=False)
        m.register_buffer("c", lib.zeros(1))  # persistent again
        assert list(m.state_dict()) == ["c"]


# --- Module.apply: children first, as PyTorch ------------------------------------------------
def test_apply_visits_children_before_parents_as_torch():
    def names(mod):
        shared = mod.Linear(1, 1)
        net = mod.Sequential(mod.Linear(1, 2), mod.Sequential(mod.ReLU(), shared), shared)
        seen = []
        net.apply(lambda m: seen.append(type(m).__name__))
        return seen

    assert names(nn) == names(torch.nn) == ["Linear", "ReLU", "Linear", "Sequential",
                                            "Linear", "Sequential"]
    ng.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ng.manual_seed(1)
    m.apply(lambda mod: isinstance(mod, nn.Linear) and nn.init.normal_(mod.weight))
    ng.manual_seed(1)
    first = nn.init.normal_(ng.empty(2, 2)).numpy()
    np.testing.assert_array_equal(m[0].weight.numpy(), first)


# --- pools: ceil_mode with a window longer than the input ------------------------------------
def _pool_cases(rng, n):
    for _ in range(n):
        nd = int(rng.integers(1, 4))
        kind = str(rng.choice(["max", "avg", "lp"]))
        size = tuple(int(v) for v in rng.integers(1, 6, nd))
        k = tuple(int(v) for v in rng.integers(1, 6, nd))
        s = tuple(int(v) for v in rng.integers(1, 4, nd))
        p = tuple(int(rng.integers(0, ki // 2 + 1)) for ki in k)
        kw = {"ceil_mode": bool(rng.random() < 0.8)}
        if kind == "max":
            d = tuple(int(v) for v in rng.integers(1, 3, nd))
            # (PyTorch's kernels misbehave when a dilated window holds no input element)
            kw |= {"dilation": d, "padding": tuple(0 if di > 1 else pi for di, pi in zip(d, p))}
            if nd == 1 and d[0] * (k[0] - 1) + 1 > size[0] + 2 * kw["padding"][0]:
                continue  # (and its 1-d kernel writes out of bounds)
            args = (k, s)
        elif kind == "avg":
            if nd == 3 and any(a < b for a, b in zip(size, k)):
                continue  # (PyTorch's 3-d average pool also refuses a kernel longer than input)
            kw |= {"padding": p, "count_include_pad": bool(rng.integers(2))}
            args = (k, s)
        else:
            if nd == 3 and any(a < b for a, b in zip(size, k)):
                continue
            args = (2.0, k[0] if nd == 1 else k, s[0] if nd == 1 else s)
        yield f"{kind}_pool{nd}d", size, args, kw


def test_pools_with_ceil_mode_match_torch_where_the_window_outgrows_the_input():
    x = np.arange(3, dtype=np.float32).reshape(1, 1, 3)
    ours, theirs = _both(lambda t: F.max_pool1d(t, 4, 2, ceil_mode=True),
                         lambda t: TF.max_pool1d(t, 4, 2, ceil_mode=True), x)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, [[[2.0]]])
    ours, theirs = _both(lambda t: F.avg_pool2d(t, 4, 2, ceil_mode=True),  # divisor 3·3, not 16
                         lambda t: TF.avg_pool2d(t, 4, 2, ceil_mode=True),
                         np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3))
    np.testing.assert_allclose(ours, theirs)
    y = nn.MaxPool2d(4, 3, ceil_mode=True)(ng.ones(1, 1, 3, 3))
    assert y.shape == tuple(torch.nn.MaxPool2d(4, 3, ceil_mode=True)(torch.ones(1, 1, 3, 3)).shape)
    with pytest.raises(ng.ShapeError, match="max_pool1d: kernel size"):
        F.max_pool1d(ng.tensor(x), 4, 2)  # without ceil_mode there is no window

    rng = np.random.default_rng(5)
    outgrown = 0
    for name, size, args, kw in _pool_cases(rng, 400):
        x = np.abs(rng.standard_normal((2, 2) + size)).astype(np.float32) + 0.1
        xt = torch.tensor(x, requires_grad=True)
        try:
            yt = getattr(TF, name)(xt, *args, **kw)
        except RuntimeError:
            with pytest.raises(ng.ShapeError):
                getattr(F, name)(ng.tensor(x), *args, **kw)
            continue
        xo = ng.tensor(x, requires_grad=True)
        yo = getattr(F, name)(xo, *args, **kw)
        what = f"{name} {size} {args} {kw}"
        np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=what)
        g = rng.standard_normal(yt.shape).astype(np.float32)
        yo.backward(ng.tensor(g))
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=what)
        k = args[-2] if name.startswith("lp") else args[0]
        k = (k,) * len(size) if isinstance(k, int) else k
        outgrown += any(ki > n + 2 * pi for ki, n, pi in
                        zip(k, size, kw.get("padding", (0,) * len(size))))
    assert outgrown > 20


# --- PyTorch's smaller methods and arguments --------------------------------------------------
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_recurrent_flatten_parameters_and_all_weights(name):
    kw = dict(num_layers=2, bidirectional=True) | ({"proj_size": 2} if name == "LSTM" else {})
    for bias in (True, False):
        ours = getattr(nn, name)(3, 4, bias=bias, **kw)
        theirs = getattr(torch.nn, name)(3, 4, bias=bias, **kw)
        assert ours.flatten_parameters() is None
        assert ours._all_weights == theirs._all_weights
        assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
            [[tuple(w.shape) for w in ws] for ws in theirs.all_weights]
        assert ours.all_weights[0][0] is ours.weight_ih_l0


def _scramble(module):
    for p in module.parameters():
        p.data[...] = 7.0
    for b in module.buffers():
        b.data[...] = 5


@pytest.mark.parametrize("make", [
    lambda m: m.BatchNorm1d(3), lambda m: m.BatchNorm2d(3, affine=False),
    lambda m: m.InstanceNorm1d(3, affine=True, track_running_stats=True),
    lambda m: m.LayerNorm(3), lambda m: m.GroupNorm(2, 4), lambda m: m.RMSNorm(3),
    lambda m: m.PReLU(3, init=0.1)])
def test_reset_parameters_and_running_stats_as_torch(make):
    ours, theirs = make(nn), make(torch.nn)
    _scramble(ours)
    with torch.no_grad():
        for t in list(theirs.parameters()) + list(theirs.buffers()):
            t.fill_(5 if t.dtype == torch.int64 else 7.0)
    if hasattr(theirs, "reset_running_stats"):
        ours.reset_running_stats()
        theirs.reset_running_stats()
        for (k, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    ours.reset_parameters()
    theirs.reset_parameters()
    so, st = ours.state_dict(), theirs.state_dict()
    assert list(so) == list(st)
    for k in so:
        np.testing.assert_allclose(so[k].numpy(), st[k].numpy(), err_msg=k)


def test_embedding_bag_reset_parameters_and_identity_arguments():
    bag = nn.EmbeddingBag(50, 4, padding_idx=3)
    _scramble(bag)
    bag.reset_parameters()
    w = bag.weight.numpy()
    assert not w[3].any() and abs(float(w.std()) - 1) < 0.3 and not np.isin(7.0, w)
    assert type(nn.Identity(54, unused="x")(ng.ones(2))) is ng.Tensor


def test_load_state_dict_assign_takes_the_given_tensors():
    lin = nn.Linear(2, 2)
    w = ng.ones(2, 2, dtype=ng.float64)
    b = nn.Parameter(ng.zeros(2), requires_grad=False)
    result = lin.load_state_dict({"weight": w, "bias": b}, assign=True)
    assert tuple(result) == ([], [])
    assert type(lin.weight) is nn.Parameter and lin.weight.requires_grad
    assert lin.weight.dtype == np.float64  # the given dtype, as PyTorch's assign
    w.data[0, 0] = 3.0  # shared, not copied
    assert float(lin.weight.numpy()[0, 0]) == 3.0
    assert lin.bias is b and b.requires_grad  # the module's requires_grad, as PyTorch's
    t = torch.nn.Linear(2, 2)
    t.load_state_dict({"weight": torch.ones(2, 2, dtype=torch.float64),
                       "bias": torch.nn.Parameter(torch.zeros(2), requires_grad=False)},
                      assign=True)
    assert t.weight.dtype == torch.float64 and t.bias.requires_grad
    frozen = nn.Linear(2, 2).requires_grad_(False)
    frozen.load_state_dict({"weight": ng.ones(2, 2), "bias": ng.zeros(2)}, assign=True)
    assert not frozen.weight.requires_grad
    bn = nn.BatchNorm1d(2)
    mean = ng.full((2,), 4.0)
    bn.load_state_dict(dict(bn.state_dict(), running_mean=mean), assign=True)
    assert bn.running_mean is mean and "running_mean" in dict(bn.named_buffers())
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    tied.load_state_dict({"0.weight": ng.ones(2, 2), "0.bias": ng.zeros(2),
                          "1.bias": ng.zeros(2)}, assign=True)
    assert tied[1].weight is tied[0].weight
    with pytest.raises(ng.ShapeError, match="shape mismatch"):
        nn.Linear(2, 2).load_state_dict({"weight": ng.ones(3, 2), "bias": ng.zeros(2)},
                                        assign=True)


# --- grid_sample: nearest gives the grid a zero gradient -------------------------------------
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_nearest_gives_the_grid_zeros(padding_mode):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    g = (rng.random((2, 3, 3, 2)) * 2.4 - 1.2).astype(np.float32)
    xo, go = ng.tensor(x, requires_grad=True), ng.tensor(g, requires_grad=True)
    xt, gt = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
    kw = dict(mode="nearest", padding_mode=padding_mode, align_corners=False)
    yo, yt = F.grid_sample(xo, go, **kw), TF.grid_sample(xt, gt, **kw)
    np.testing.assert_array_equal(yo.numpy(), yt.detach().numpy())
    yo.sum().backward()
    yt.sum().backward()
    assert go.grad is not None
    np.testing.assert_array_equal(go.grad.numpy(), gt.grad.numpy())
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy())


# --- reprs ------------------------------------------------------------------------------------
def _p(lib, *shape, dtype=None):
    kw = {} if dtype is None else {"dtype": getattr(lib, dtype)}
    return (nn if lib is ng else torch.nn).Parameter(lib.zeros(*shape, **kw))


@pytest.mark.parametrize("make", [
    lambda m, lib: m.Conv2d(3, 6, 3, bias=False),
    lambda m, lib: m.Conv1d(3, 6, 3, padding="same", dilation=2, groups=3,
                            padding_mode="reflect"),
    lambda m, lib: m.Conv3d(2, 4, (1, 2, 3), stride=(1, 2, 1), padding=1),
    lambda m, lib: m.ConvTranspose2d(3, 6, 3, stride=2, output_padding=1, bias=False),
    lambda m, lib: m.BatchNorm1d(3, affine=False, track_running_stats=False),
    lambda m, lib: m.BatchNorm2d(3, momentum=None),
    lambda m, lib: m.InstanceNorm2d(3, affine=True, bias=False),
    lambda m, lib: m.LayerNorm(3, elementwise_affine=False),
    lambda m, lib: m.LayerNorm((3, 4), bias=False),
    lambda m, lib: m.GroupNorm(2, 4), lambda m, lib: m.GroupNorm(2, 4, affine=False),
    lambda m, lib: m.RMSNorm(3, elementwise_affine=False),
    lambda m, lib: m.ParameterList([_p(lib, 3), _p(lib, 2, 2, dtype="float64")]),
    lambda m, lib: m.ParameterList(),
    lambda m, lib: m.Identity(54),
    lambda m, lib: m.LSTM(3, 4, proj_size=2, num_layers=2, dropout=0.5, bidirectional=True),
])
def test_reprs_match_torch(make):
    ours, theirs = make(nn, ng), make(torch.nn, torch)
    assert repr(ours).split("  #")[0] == repr(theirs).replace("torch.", "nodegrad.")


# --- convolution: padding='same' with a stride is refused when the layer is built -------------
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_strided_same_padding_is_refused_at_construction(nd):
    for lib in (nn, torch.nn):
        with pytest.raises(ValueError, match="padding='same' is not supported for strided "
                           "convolutions"):
            getattr(lib, f"Conv{nd}d")(2, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding must be an int, a tuple, 'same' or 'valid'"):
        getattr(nn, f"Conv{nd}d")(2, 3, 3, padding="full")
    conv = getattr(nn, f"Conv{nd}d")(2, 3, 3, stride=(1,) * nd, padding="same")
    assert conv(ng.ones(*(1, 2) + (5,) * nd)).shape == (1, 3) + (5,) * nd


def test_module_repr_layout_follows_torch_with_extra_lines_and_children():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 1)

        def extra_repr(self):
            return "a=1\nb=2"

    assert repr(Net()).rsplit("  # ", 1)[0] == (
        "Net(\n  a=1\n  b=2\n  (fc): Linear(in_features=1, out_features=1, bias=True)"
        "  # 2 parameters\n)")
    assert list(itertools.islice(Net().named_children(), 1))[0][0] == "fc"
