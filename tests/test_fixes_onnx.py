"""ONNX export and import against onnxruntime and PyTorch on the cases that once went wrong:
integer comparisons, dtypes ONNX keeps that NumPy promotes, ceil_mode pools, Resize scales and
nearest pixels, float64 activations, module modes, files, dynamic axes, attention masks,
unbatched inputs, recurrent initial states, forward hooks, Embedding's max_norm, and the
importer's Mod, old Softmax, Pad and auto_pad."""

import io
import os

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nodegrad.onnx import UnsupportedError, export, load  # noqa: E402

F = nn.functional


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


class _Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def _ints(*shape, seed=0):
    return np.random.default_rng(seed).integers(-3, 4, shape)


def _randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _dims(value_info):
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("f", [lambda x: x >= 0.5, lambda x: x < 1.5, lambda x: x != 0.5,
                               lambda x: x == 1.0, lambda x: (x > 0) == 2],
                         ids=["ge", "lt", "ne", "eq", "bool_eq_2"])
def test_integers_compared_with_a_float_are_not_truncated(f):
    """``x >= 0.5`` on integers compares in float64 as NumPy does (it was ``x >= 0``)."""
    model = _Fn(f)
    proto = export(model, ng.as_tensor(_ints(3, 4)))
    for b in (3, 5):
        x = _ints(b, 4, seed=b)
        want = model(ng.as_tensor(x)).numpy()
        np.testing.assert_array_equal(_session(proto).run(None, {"input": x})[0], want)
        back = load(proto.SerializeToString())
        np.testing.assert_array_equal(back(ng.as_tensor(x)).numpy(), want)


@pytest.mark.parametrize("f,make", [
    (lambda x: x.mean(axis=1), lambda b: _ints(b, 4)),                   # int -> float64
    (lambda x: x.sum(axis=1), lambda b: _ints(b, 4).astype(np.int32)),   # int32 -> int64
    (lambda x: (x > 0).sum(axis=1), lambda b: _randn(b, 4)),             # bool -> int64
    (lambda x: ng.clip(x, -1.5, 2.5), lambda b: _ints(b, 4)),            # int -> float
    (lambda x: ng.sqrt(x.abs()), lambda b: _ints(b, 4)),                 # int -> float
], ids=["int_mean", "int32_sum", "bool_sum", "int_clip_float", "int_sqrt"])
def test_results_of_another_dtype_than_their_input_export(f, make):
    model = _Fn(f)
    proto = export(model, ng.as_tensor(make(3)))
    for b in (3, 5):
        x = make(b)
        want = model(ng.as_tensor(x)).numpy()
        got = _session(proto).run(None, {"input": x})[0]
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6)
        back = load(proto.SerializeToString())(ng.as_tensor(x)).numpy()
        assert back.dtype == want.dtype
        np.testing.assert_array_equal(back, want)


_CEIL_POOLS = [  # (name, positional arguments, keywords, input shape)
    ("MaxPool1d", (2, 2, 1), {}, (2, 3, 5)),
    ("AvgPool1d", (2, 2, 1), {}, (2, 3, 5)),
    ("AvgPool1d", (2, 3, 1), {"count_include_pad": False}, (2, 3, 7)),
    ("MaxPool2d", ((2, 3), (2, 2), (1, 1)), {"return_indices": True}, (2, 3, 5, 7)),
    ("LPPool1d", (2, 1, 3), {}, (2, 3, 5)),
]


@pytest.mark.parametrize("name,args,kw,shape", _CEIL_POOLS,
                         ids=["max1d", "avg1d", "avg1d_not_counted", "max2d_indices", "lp1d"])
def test_ceil_mode_pools_whose_last_window_pytorch_drops(name, args, kw, shape):
    """PyTorch, the ONNX spec and onnxruntime drop a ceil_mode window that would start in the
    right padding; onnx's shape inference counts it, so the full check refused the export."""
    torch = pytest.importorskip("torch")
    model = getattr(nn, name)(*args, ceil_mode=True, **kw)
    tmodel = getattr(torch.nn, name)(*args, ceil_mode=True, **kw)
    proto = export(model, ng.as_tensor(_randn(*shape)))
    for b in (2, 4):
        x = _randn(b, *shape[1:], seed=b)
        got = _session(proto).run(None, {"input": x})
        want = tmodel(torch.tensor(x))
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-6, atol=1e-6)


def test_ceil_mode_pool_over_a_dynamic_spatial_axis():
    """A dynamic length declares no size, so nothing is cut; onnxruntime drops the window
    itself (as the ONNX spec says) at the lengths where PyTorch does."""
    pool = nn.MaxPool1d(2, 2, 1, ceil_mode=True)
    proto = export(pool, ng.as_tensor(_randn(2, 3, 6)), dynamic_axes={0: {0: "batch", 2: "length"}})
    for n in (5, 6, 7, 9):
        x = _randn(2, 3, n, seed=n)
        np.testing.assert_array_equal(_session(proto).run(None, {"input": x})[0],
                                      pool(ng.as_tensor(x)).numpy())


@pytest.mark.parametrize("mode,scale", [("bilinear", 2 / 3), ("bicubic", 4 / 3),
                                        ("bilinear", 1 / 7), ("bicubic", 1.7)])
def test_resize_scale_is_read_back_as_the_exported_float(mode, scale):
    """ONNX keeps a Resize scale as float32; read back as float32(2/3) = 0.66666669 (or as
    float32(1.7) = 1.70000005) it moved source positions: the round trip differed."""
    model = nn.Upsample(scale_factor=(scale, 1.0), mode=mode)
    for n in (7, 14, 21, 28):
        x = ng.as_tensor(_randn(1, 2, n, 3, seed=n))
        proto = export(model, x)
        np.testing.assert_array_equal(load(proto.SerializeToString())(x).numpy(),
                                      model(x).numpy())


def test_resize_nearest_exact_from_onnx_matches_onnxruntime():
    h, f = onnx.helper, onnx.TensorProto.FLOAT
    proto = _graph([h.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest",
                                coordinate_transformation_mode="half_pixel",
                                nearest_mode="round_prefer_ceil")],
                   [h.make_tensor_value_info("x", f, [1, 2, 5, 7])],
                   [h.make_tensor_value_info("y", f, None)], 17,
                   [onnx.numpy_helper.from_array(np.array([1, 1, 1.7, 1.7], np.float32), "s")])
    x = np.arange(70, dtype=np.float32).reshape(1, 2, 5, 7)
    np.testing.assert_array_equal(load(proto.SerializeToString())(ng.as_tensor(x)).numpy(),
                                  _session(proto).run(None, {"x": x})[0])


@pytest.mark.parametrize("mode,scale,n", [("nearest", 2.3, 2), ("nearest", 1 / 7, 14),
                                          ("nearest-exact", 2.3, 5), ("nearest-exact", 1.1, 7),
                                          ("nearest", 0.9, 10)])
def test_nearest_upsampling_picks_pytorchs_pixels_in_onnxruntime(mode, scale, n):
    """A Resize from a float32 scale picked other pixels than PyTorch (which halves a doubled
    axis whatever the scale, and maps by 1/scale in its own rounding) or gave another size
    (⌊10·float32(0.9)⌋ = 8): static nearest modes are one Gather per axis of the layer's own
    source pixels."""
    torch = pytest.importorskip("torch")
    model = nn.Upsample(scale_factor=(scale, 1.0), mode=mode)
    x = _randn(2, 3, n, 4)
    proto = export(model, ng.as_tensor(x))
    want = torch.nn.Upsample(scale_factor=(scale, 1.0), mode=mode)(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(_session(proto).run(None, {"input": x})[0], want)
    np.testing.assert_array_equal(load(proto.SerializeToString())(ng.as_tensor(x)).numpy(), want)


def test_upsample_by_a_scale_that_keeps_a_size_is_refused_for_bicubic():
    """onnxruntime copies an axis whose size a scale of 1.1 keeps; PyTorch resamples it."""
    with pytest.raises(UnsupportedError, match="keeps"):
        export(nn.Upsample(scale_factor=1.1, mode="bicubic"), ng.as_tensor(_randn(2, 2, 7, 9)))
    model = nn.Upsample(scale_factor=1.1, mode="bilinear")  # PyTorch copies it too
    x = _randn(2, 2, 7, 9)
    np.testing.assert_allclose(_session(export(model, ng.as_tensor(x))).run(None, {"input": x})[0],
                               model(ng.as_tensor(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_upsample_whose_float32_scale_gives_another_size_exports():
    """⌊10·float32(0.9)⌋ = 8 where PyTorch gives 9: the sizes input is written instead."""
    model = nn.Upsample(scale_factor=(0.9, 1.0), mode="bilinear")
    x = _randn(2, 3, 10, 4)
    got = _session(export(model, ng.as_tensor(x))).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, model(ng.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_export_restores_every_submodules_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a frozen norm inside a training model
    export(model, ng.as_tensor(_randn(3, 4)))
    assert [m.training for m in model.modules()] == [True, True, False, True]


@pytest.mark.parametrize("layer", [nn.ELU(0.3), nn.CELU(0.7), nn.SELU(), nn.LeakyReLU(0.3),
                                   nn.Softshrink(0.3), nn.Hardshrink(0.3), nn.Hardsigmoid(),
                                   nn.Hardswish(), nn.Threshold(0.3, -1.0)],
                         ids=lambda m: type(m).__name__)
def test_float64_activations_keep_float64_constants(layer):
    """ONNX's activation ops take float32 attributes (Celu only float32 input): in float64
    they are written as their formula, which onnxruntime runs in float64 to 1e-12."""
    x = _randn(4, 8, dtype=np.float64) * 3
    proto = export(layer, ng.as_tensor(x))
    want = layer(ng.as_tensor(x)).numpy()
    np.testing.assert_allclose(_session(proto).run(None, {"input": x})[0], want, rtol=1e-13,
                               atol=1e-13)
    np.testing.assert_allclose(load(proto.SerializeToString())(ng.as_tensor(x)).numpy(), want,
                               rtol=1e-13, atol=1e-15)


def test_load_reads_the_ops_export_writes():
    """ArgMax, ArgMin, Round, GatherElements and the bitwise ops: exported, read back."""
    def f(x):
        i = (x * 10).astype(ng.int64)
        return (ng.argmax(x, axis=1), ng.argmin(x), ng.round(x * 2),
                ng.take_along_axis(x, ng.argmax(x, axis=1, keepdims=True), 1),
                (i & 7) ^ ~(i | 2))
    model = _Fn(f)
    proto = export(model, ng.as_tensor(_randn(3, 4)), opset=18)
    x = _randn(5, 4, seed=1)
    for got, want in zip(load(proto.SerializeToString())(ng.as_tensor(x)), model(ng.as_tensor(x))):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    h = onnx.helper
    g = h.make_graph([h.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0,
                                  select_last_index=1)], "g",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.INT64, [2])])
    last = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    last.ir_version = 9
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], np.float32)
    np.testing.assert_array_equal(load(last.SerializeToString())(ng.as_tensor(x)).numpy(), [2, 3])


def test_file_objects_paths_and_atomic_writes(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    x = ng.as_tensor(_randn(2, 3))
    buf = io.BytesIO()
    export(model, x, buf)
    for src in (io.BytesIO(buf.getvalue()), buf.getvalue(), onnx.load_from_string(
            buf.getvalue())):
        np.testing.assert_array_equal(load(src)(x).numpy(), model(x).numpy())
    path = tmp_path / "m.onnx"
    export(model, x, path)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load(f)(x).numpy(), model(x).numpy())
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    before = path.read_bytes()

    def broken(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        export(nn.Linear(3, 4), x, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.onnx"]
    with pytest.raises(TypeError, match="onnx load: expected a path"):
        load(3)


def test_unsupported_ops_name_their_nodes():
    h = onnx.helper
    g = h.make_graph([h.make_node("Relu", ["x"], ["a"], name="relu"),
                      h.make_node("Hardmax", ["a"], ["y"], name="head_hardmax")], "g",
                     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    with pytest.raises(UnsupportedError, match=r"Hardmax \(nodes: Hardmax: 'head_hardmax'\)"):
        load(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString())


def test_dynamic_axes_as_torch_onnx_export_takes_them():
    """Keys may be input or output names, values lists of axes, as torch.onnx.export's."""
    model = nn.Linear(4, 2)
    proto = export(model, ng.as_tensor(_randn(3, 4)), input_names=["x"], output_names=["y"],
                   dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    assert _dims(proto.graph.input[0]) == ["n", 4] and _dims(proto.graph.output[0]) == ["n", 2]
    proto = export(model, ng.as_tensor(_randn(3, 4)), dynamic_axes={"input": [0]})
    assert _dims(proto.graph.input[0]) == ["input_dynamic_axes_1", 4]
    x = _randn(6, 4)
    np.testing.assert_allclose(_session(proto).run(None, {"input": x})[0],
                               model(ng.as_tensor(x)).numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="neither an input's position"):
        export(model, ng.as_tensor(_randn(3, 4)), dynamic_axes={"z": [0]})


def test_output_sizes_that_coincide_in_both_traces_stay_dynamic():
    """``x[::2]`` has 2 rows for a batch of 3 and of 4 (the two traces): the output's first
    axis is still dynamic, not declared 2 (onnxruntime warned for a batch of 5)."""
    model = _Fn(lambda x: x[::2] * 2.0)
    proto = export(model, ng.as_tensor(_randn(3, 4)))
    assert _dims(proto.graph.output[0])[1:] == [4]
    assert isinstance(_dims(proto.graph.output[0])[0], str)
    x = _randn(5, 4)
    np.testing.assert_array_equal(_session(proto).run(None, {"input": x})[0],
                                  model(ng.as_tensor(x)).numpy())


class _Masked(nn.Module):
    """Attention with a causal mask and a key padding mask (``all`` over the mask rows)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x, pad):
        causal = ng.triu(ng.ones(5, 5), 1).astype(ng.bool)
        return self.attn(x, x, x, key_padding_mask=pad, attn_mask=causal)[0]


def _masked_inputs(b, dead=False):
    pad = np.zeros((b, 5), bool)
    pad[:, 3:] = True
    if dead:
        pad[1] = True  # every key of sample 1 hidden
    return _randn(b, 5, 8, seed=b), pad


def test_attention_masks_export():
    """Masks made the forward bind ``all`` (which rows are wholly masked): it had no ONNX
    counterpart, so masked attention and F.scaled_dot_product_attention(is_causal=True) did
    not export."""
    ng.manual_seed(0)
    model = _Masked().eval()
    proto = export(model, tuple(ng.as_tensor(v) for v in _masked_inputs(3)))
    for b in (3, 5):
        x, pad = _masked_inputs(b)
        np.testing.assert_allclose(
            _session(proto).run(None, {"input_0": x, "input_1": pad})[0],
            model(ng.as_tensor(x), ng.as_tensor(pad)).numpy(), rtol=1e-5, atol=1e-6)
    sdpa = _Fn(lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True))
    x = _randn(2, 2, 5, 4)
    np.testing.assert_allclose(_session(export(sdpa, ng.as_tensor(x))).run(None, {"input": x})[0],
                               sdpa(ng.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-6)
    anyall = _Fn(lambda x: ng.concatenate([ng.all(x > 0, axis=1), ng.any(x > 1, axis=1),
                                           ng.all(x, axis=1)], 0))
    x = np.array([[1, 2, 0], [1, 2, 3]], np.float32)
    np.testing.assert_array_equal(_session(export(anyall, ng.as_tensor(x))).run(
        None, {"input": x})[0], anyall(ng.as_tensor(x)).numpy())


def test_attention_with_a_wholly_masked_sample_matches_after_export():
    """Traced on a batch without a wholly masked sample, the guard that gives such a sample
    zero weights (not 0/0 = NaN) was left out of the graph."""
    ng.manual_seed(0)
    model = _Masked().eval()
    proto = export(model, tuple(ng.as_tensor(v) for v in _masked_inputs(3)))
    x, pad = _masked_inputs(4, dead=True)
    got = _session(proto).run(None, {"input_0": x, "input_1": pad})[0]
    np.testing.assert_allclose(got, model(ng.as_tensor(x), ng.as_tensor(pad)).numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv1d(2, 3, 3, padding=1), (2, 7)),
    (nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 4, 5)),
    (nn.MaxPool1d(2, 2, 1, ceil_mode=True), (2, 5)),
    (nn.MaxPool2d(2, return_indices=True), (2, 4, 6)),
    (nn.AvgPool2d(2, padding=1, count_include_pad=False), (2, 4, 5)),
    (nn.AdaptiveMaxPool1d(3), (2, 7)),
], ids=["conv1d", "conv_transpose2d", "maxpool1d_ceil", "maxpool2d_indices",
        "avgpool2d_not_counted", "adaptive_max1d"])
def test_layers_on_unbatched_inputs_export(layer, shape):
    """(C, L) and (C, H, W) inputs: the batched ONNX op between Unsqueeze and Squeeze (the
    checker used to refuse a Conv or pool of rank 2 or 3)."""
    x = _randn(*shape)
    proto = export(layer, ng.as_tensor(x), dynamic_axes={})
    want = layer(ng.as_tensor(x))
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(_session(proto).run(None, {"input": x}), want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(UnsupportedError, match="cannot be dynamic"):
        export(nn.Conv1d(2, 3, 3), ng.as_tensor(_randn(2, 7)))  # axis 0 is the channels


def test_local_response_norm_of_other_ranks_than_4_exports():
    """onnxruntime's LRN takes (N, C, H, W) only: other ranks get the formula."""
    layer = nn.LocalResponseNorm(3)
    x = _randn(2, 6, 7)
    np.testing.assert_allclose(_session(export(layer, ng.as_tensor(x))).run(None, {"input": x})[0],
                               layer(ng.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_dict_outputs_export_their_values_in_order():
    model = _Fn(lambda x: {"double": x * 2.0, "pair": (x + 1.0, x.sum(axis=1))})
    x = _randn(3, 4)
    got = _session(export(model, ng.as_tensor(x))).run(None, {"input": x})
    want = [x * 2, x + 1, x.sum(axis=1)]
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def _graph(nodes, ins, outs, opset, inits=()):
    h = onnx.helper
    g = h.make_graph(nodes, "g", ins, outs, initializer=list(inits))
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto


def test_mod_with_fmod_takes_the_dividends_sign():
    """ONNX's Mod with fmod=1 (PyTorch's fmod) was read as Python's %."""
    h, f = onnx.helper, onnx.TensorProto.FLOAT
    proto = _graph([h.make_node("Mod", ["x", "y"], ["z"], fmod=1)],
                   [h.make_tensor_value_info("x", f, [4]), h.make_tensor_value_info("y", f, [4])],
                   [h.make_tensor_value_info("z", f, [4])], 17)
    x, y = np.array([-3.5, 3.5, -7, 7], np.float32), np.array([2, -2, 3, -3], np.float32)
    want = _session(proto).run(None, {"x": x, "y": y})[0]
    np.testing.assert_array_equal(want, np.fmod(x, y))
    np.testing.assert_array_equal(load(proto.SerializeToString())(ng.as_tensor(x), ng.as_tensor(y))
                                  .numpy(), want)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_softmax_before_opset_13_covers_the_trailing_axes(op, axis):
    """Before opset 13 Softmax(axis=a) normalises over all the axes from a on (default 1)."""
    h, f = onnx.helper, onnx.TensorProto.FLOAT
    kw = {} if axis is None else {"axis": axis}
    proto = _graph([h.make_node(op, ["x"], ["z"], **kw)],
                   [h.make_tensor_value_info("x", f, [2, 3, 4])],
                   [h.make_tensor_value_info("z", f, [2, 3, 4])], 11)
    x = _randn(2, 3, 4)
    np.testing.assert_allclose(load(proto.SerializeToString())(ng.as_tensor(x)).numpy(),
                               _session(proto).run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_old_pad_and_training_batch_norm_on_import():
    h, f = onnx.helper, onnx.TensorProto.FLOAT
    pad = _graph([h.make_node("Pad", ["x"], ["z"], pads=[0, 1, 0, 2], value=1.5)],
                 [h.make_tensor_value_info("x", f, [2, 3])],
                 [h.make_tensor_value_info("z", f, [2, 6])], 10)
    x = _randn(2, 3)
    np.testing.assert_array_equal(load(pad.SerializeToString())(ng.as_tensor(x)).numpy(),
                                  _session(pad).run(None, {"x": x})[0])
    stats = [onnx.numpy_helper.from_array(np.full(3, v, np.float32), n)
             for n, v in (("s", 1), ("b", 0), ("m", 0), ("v", 1))]
    bn = _graph([h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["z", "rm", "rv"],
                             training_mode=1)],
                [h.make_tensor_value_info("x", f, [4, 3])],
                [h.make_tensor_value_info("z", f, [4, 3])], 15, stats)
    with pytest.raises(UnsupportedError, match="training_mode=1"):
        load(bn.SerializeToString())(ng.as_tensor(_randn(4, 3)))


@pytest.mark.parametrize("f", [lambda x: F.dropout(x, 0.5, True), lambda x: x + ng.randn(4)],
                         ids=["dropout_training_true", "noise"])
def test_random_numbers_drawn_in_the_forward_are_refused_with_static_shapes(f):
    """With static shapes the one draw became a constant of the graph (the same mask on every
    run); a second trace tells it, as it does with dynamic axes."""
    with pytest.raises(UnsupportedError, match="random"):
        export(_Fn(f), ng.as_tensor(_randn(3, 4)), dynamic_axes={})


class _WithState(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, *state):
        return self.rnn(x, tuple(state) if len(state) == 2 else state[0])


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_recurrent_layers_export_with_an_initial_state(kind):
    """An initial state passed to GRU/LSTM/RNN becomes ONNX's initial_h (and initial_c), a
    slice per layer (it was refused); checked against PyTorch with the same weights."""
    torch = pytest.importorskip("torch")
    ng.manual_seed(0)
    rnn = getattr(nn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    trnn = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    trnn.load_state_dict({k: torch.tensor(v.numpy()) for k, v in rnn.state_dict().items()})
    model = _WithState(rnn).eval()
    n_state = 2 if kind == "LSTM" else 1

    def make(b):
        return (_randn(b, 5, 3, seed=b),) + tuple(_randn(4, b, 4, seed=b + k + 1)
                                                 for k in range(n_state))
    dyn = {0: {0: "batch"}, **{1 + k: {1: "batch"} for k in range(n_state)}}
    proto = export(model, tuple(ng.as_tensor(v) for v in make(3)), dynamic_axes=dyn)
    sess = _session(proto)
    for b in (3, 5):
        xs = make(b)
        got = sess.run(None, {i.name: v for i, v in zip(sess.get_inputs(), xs)})
        ts = [torch.tensor(v) for v in xs]
        with torch.no_grad():
            y, h = trnn(ts[0], tuple(ts[1:]) if kind == "LSTM" else ts[1])
        want = [y, *(h if kind == "LSTM" else (h,))]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,dilation", [(4, 1), (3, 2)])
def test_pytorch_same_padding_convolution_imports(kernel, dilation):
    """PyTorch writes Conv2d(padding='same') as auto_pad=SAME_UPPER, which load refused."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, kernel, padding="same", dilation=dilation).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(2, 2, 7, 6),), buf, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    x = _randn(3, 2, 7, 6)
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(load(buf.getvalue())(ng.as_tensor(x)).numpy(), want, rtol=1e-5,
                               atol=1e-6)


def test_a_forward_hook_that_changes_a_layers_output_is_exported():
    """A layer written as one ONNX op (Conv) dropped what a user's forward hook did to its
    output: the hook ran while the layer's own operations were being skipped."""
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU())
    model[0].register_forward_hook(lambda m, args, out: out * 2.0 - 0.5)
    x = _randn(2, 2, 7)
    np.testing.assert_allclose(_session(export(model, ng.as_tensor(x))).run(None, {"input": x})[0],
                               model(ng.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_embedding_max_norm_scales_the_rows_in_the_graph():
    """Embedding(max_norm=...) renormalises the rows it reads in its weight itself: the graph
    held the weight as the example left it, so rows the example did not read kept their norm."""
    ng.manual_seed(0)
    emb = nn.Embedding(10, 4, max_norm=1.0).eval()
    with ng.no_grad():
        emb.weight.data[...] = emb.weight.data * 3.0  # every row's norm above 1
    proto = export(emb, ng.as_tensor(np.array([[0, 1]])))
    x = np.array([[2, 3], [4, 9]])
    got = _session(proto).run(None, {"input": x})[0]
    want = emb(ng.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.all(np.linalg.norm(got, axis=-1) <= 1.0 + 1e-6)


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_layers_whose_weight_a_pre_hook_computes_export(wrap):
    """nn.utils.weight_norm/spectral_norm compute the weight in a forward pre-hook; the Conv
    written as one op reads it, but the export took it for a keyword argument and refused."""
    layer = getattr(nn.utils, wrap)(nn.Conv1d(2, 3, 3)).eval()
    x = _randn(3, 2, 7)
    proto = export(layer, ng.as_tensor(x))
    np.testing.assert_allclose(_session(proto).run(None, {"input": x})[0],
                               layer(ng.as_tensor(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_graph_outputs_that_are_inputs_or_initializers_import():
    h, f = onnx.helper, onnx.TensorProto.FLOAT
    proto = _graph([h.make_node("Relu", ["x"], ["y"])],
                   [h.make_tensor_value_info("x", f, [2])],
                   [h.make_tensor_value_info(n, f, [2]) for n in ("y", "x", "w")], 17,
                   [onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")])
    x = np.array([-1.0, 2.0], np.float32)
    for got, want in zip(load(proto.SerializeToString())(ng.as_tensor(x)),
                         _session(proto).run(None, {"x": x})):
        np.testing.assert_array_equal(got.numpy(), want)


def test_dynamic_axes_of_equal_traced_size_stay_apart():
    """Two dynamic axes traced at the same size (N = T = 4) grew alike in the second trace, so
    ``x.reshape(T, -1)`` was written as "keep N, keep T" (a (3, 6) input gave (3, 6), not
    (6, 3)) and outputs got the wrong axis names; now each name grows by its own step."""
    with pytest.raises(UnsupportedError, match="several dimensions"):
        export(_Fn(lambda x: x.reshape(x.shape[1], -1) * 2.0), ng.as_tensor(_randn(4, 4)),
               dynamic_axes={0: {0: "N", 1: "T"}})
    model = _Fn(lambda x: (x.sum(axis=1), x.sum(axis=0)))
    proto = export(model, ng.as_tensor(_randn(4, 4)), dynamic_axes={0: {0: "N", 1: "T"}})
    assert [_dims(o) for o in proto.graph.output] == [["N"], ["T"]]
    x = _randn(3, 6)
    for got, want in zip(_session(proto).run(None, {"input": x}), model(ng.as_tensor(x))):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
