"""Module hooks as PyTorch has them: full backward (pre-)hooks, forward hooks with kwargs,
prepend and always_call, state-dict hooks, and the lookups (get_parameter, set_submodule...)."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import ShapeError

torch = pytest.importorskip("torch")
nn = ng.nn
R = np.random.default_rng(3)


def _pair(make_ng, make_torch):
    """The same layer in both libraries, float64, with nodegrad's weights copied into torch's."""
    m, t = make_ng().double(), make_torch().double()
    with torch.no_grad():
        for (_, p), (_, q) in zip(m.named_parameters(), t.named_parameters()):
            q.copy_(torch.tensor(p.numpy()))
    return m, t


def _np(gs):
    return [None if g is None else np.asarray(g.detach().numpy()) for g in gs]


def _record(module, log, scale_inputs=None):
    module.register_full_backward_pre_hook(lambda m, go: log.append(("pre", _np(go))))

    def full(m, gi, go):
        log.append(("full", _np(gi), _np(go)))
        if scale_inputs is not None:
            return tuple(None if g is None else g * scale_inputs for g in gi)

    module.register_full_backward_hook(full)


def _same(a, b):
    assert [e[0] for e in a] == [e[0] for e in b]
    for ea, eb in zip(a, b):
        for xs, ys in zip(ea[1:], eb[1:]):
            assert len(xs) == len(ys)
            for x, y in zip(xs, ys):
                assert (x is None) == (y is None)
                if x is not None:
                    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [None, 3.0])
def test_full_backward_hooks_see_and_replace_what_torch_does(scale):
    m, t = _pair(lambda: nn.Linear(4, 3), lambda: torch.nn.Linear(4, 3))
    x = R.standard_normal((5, 4))
    logs = []
    for mod, lib in ((m, ng), (t, torch)):
        log = []
        _record(mod, log, scale)
        xt = lib.tensor(x, requires_grad=True)
        (mod(xt) ** 2).sum().backward()
        logs.append((log, xt.grad.numpy()))
    _same(logs[0][0], logs[1][0])
    np.testing.assert_allclose(logs[0][1], logs[1][1], rtol=1e-12)
    if scale:  # the replaced input gradient is what reached x
        assert not np.allclose(logs[0][1] / scale, logs[0][1])


def test_two_inputs_and_a_pre_hook_that_replaces_the_output_gradient():
    m, t = _pair(lambda: nn.Bilinear(3, 2, 4), lambda: torch.nn.Bilinear(3, 2, 4))
    a, b = R.standard_normal((5, 3)), R.standard_normal((5, 2))
    got = []
    for mod, lib in ((m, ng), (t, torch)):
        log = []
        mod.register_full_backward_pre_hook(lambda _, go: (go[0] * -2,))
        _record(mod, log)
        at, bt = lib.tensor(a, requires_grad=True), lib.tensor(b)  # b needs no gradient
        mod(at, bt).sum().backward()
        got.append((log, at.grad.numpy()))
    _same(got[0][0], got[1][0])
    assert not got[0][0][1][1][1].any()  # grad_input for b: zeros, as torch
    np.testing.assert_allclose(got[0][1], got[1][1], rtol=1e-12)


def test_tuple_outputs_give_none_for_an_unused_output_as_torch():
    m, t = _pair(lambda: nn.GRU(2, 3), lambda: torch.nn.GRU(2, 3))
    x = R.standard_normal((4, 2, 2))
    logs = []
    for mod, lib in ((m, ng), (t, torch)):
        log = []
        _record(mod, log)
        xt = lib.tensor(x, requires_grad=True)
        out, _ = mod(xt)
        (out * out).sum().backward()
        logs.append(log)
    _same(logs[0], logs[1])
    assert logs[0][0][1][1] is None


def test_an_input_off_the_loss_path_gets_zeros_and_an_unused_output_none():
    class Two(nn.Module):
        def forward(self, x, y, k):
            return x * k, y * 3

    seen = []
    m = Two()
    m.register_full_backward_hook(lambda _, gi, go: seen.append((_np(gi[:2]), gi[2], go[1])))
    o1, _ = m(ng.ones(2, requires_grad=True), ng.ones(2, requires_grad=True), 2.0)
    o1.sum().backward()
    (gx, gy), gk, go2 = seen[0]
    np.testing.assert_array_equal(gx, [2.0, 2.0])
    np.testing.assert_array_equal(gy, [0.0, 0.0])
    assert gk is None and go2 is None


def test_data_inputs_get_none_and_the_full_hook_still_runs():
    m = nn.Linear(3, 2)
    seen = []
    m.register_full_backward_hook(lambda _, gi, go: seen.append((gi, go[0].shape)))
    m(ng.randn(4, 3)).sum().backward()
    assert seen == [((None,), (4, 2))]


def test_hooks_come_off_run_in_order_and_refuse_wrong_counts():
    m = nn.Linear(3, 2)
    order = []
    h1 = m.register_full_backward_pre_hook(lambda *_: order.append(1))
    m.register_full_backward_pre_hook(lambda *_: order.append(0), prepend=True)
    m(ng.randn(2, 3, requires_grad=True)).sum().backward()
    assert order == [0, 1]
    h1.remove()
    order.clear()
    m(ng.randn(2, 3, requires_grad=True)).sum().backward()
    assert order == [0]
    m.register_full_backward_hook(lambda m, gi, go: (gi[0], gi[0]))
    with pytest.raises(ValueError, match="returned 2 gradients, expected 1"):
        m(ng.randn(2, 3, requires_grad=True)).sum().backward()


def test_a_module_without_backward_hooks_adds_no_nodes():
    m = nn.Linear(3, 2)
    y = m(ng.randn(2, 3, requires_grad=True))
    assert y.node.prim.name not in ("reshape", "getitem")
    with m.register_full_backward_hook(lambda *a: None):
        z = m(ng.randn(2, 3, requires_grad=True))
    assert z.node.prim.name == "reshape"  # the packed view
    assert not m._backward_hooks  # the handle took it off on leaving the block


def test_backward_hooks_under_jit_are_refused_with_the_fix():
    m = nn.Linear(3, 2)
    m.register_full_backward_hook(lambda *a: None)
    f = ng.jit(lambda x: m(x).sum())
    with pytest.raises(NotImplementedError, match="disable_jit"):
        f(ng.randn(2, 3))


def test_deprecated_backward_hook_warns_and_registers_a_full_hook():
    m = nn.Linear(3, 2)
    with pytest.warns(FutureWarning):
        m.register_backward_hook(lambda *a: None)
    assert len(m._backward_hooks) == 1


# --- forward hooks with PyTorch's options ---------------------------------------------------
class _Scale(nn.Module):
    def forward(self, x, *, scale=1.0):
        if scale == 0:
            raise ValueError("no scale")
        return x * scale


def test_forward_hooks_with_kwargs_prepend_and_always_call():
    m = _Scale()
    m.register_forward_pre_hook(lambda mod, args, kw: (args, {**kw, "scale": 3.0}),
                                with_kwargs=True)
    seen = []
    m.register_forward_hook(lambda mod, args, kw, out: seen.append(("kw", kw)), with_kwargs=True)
    m.register_forward_hook(lambda mod, args, out: seen.append(("first", None)), prepend=True)
    y = m(ng.tensor([1.0, 2.0]), scale=5.0)
    np.testing.assert_array_equal(y.numpy(), [3.0, 6.0])
    assert seen == [("first", None), ("kw", {"scale": 3.0})]
    calls = []
    m2 = _Scale()
    m2.register_forward_hook(lambda mod, args, out: calls.append(out), always_call=True)
    with pytest.raises(ValueError, match="no scale"):
        m2(ng.tensor([1.0]), scale=0)
    assert calls == [None]
    m3 = _Scale()
    m3.register_forward_pre_hook(lambda mod, args, kw: args, with_kwargs=True)
    with pytest.raises(TypeError, match=r"\(args, kwargs\)"):
        m3(ng.tensor([1.0]))


def test_removing_a_kwargs_hook_by_its_handle():
    m = _Scale()
    h = m.register_forward_hook(lambda mod, a, kw, out: out * 0, with_kwargs=True)
    assert m(ng.tensor([2.0])).item() == 0
    h.remove()
    assert m(ng.tensor([2.0])).item() == 2


# --- state-dict hooks ----------------------------------------------------------------------
def _nets(lib):
    return lib.nn.Sequential(lib.nn.Linear(2, 3), lib.nn.BatchNorm1d(3))


def test_state_dict_hooks_are_called_as_torch_calls_them():
    calls = {}
    for lib in (ng, torch):
        net, log = _nets(lib), []
        net[1].register_state_dict_pre_hook(lambda m, prefix, kv: log.append(("pre", prefix)))
        net[1].register_state_dict_post_hook(
            lambda m, sd, prefix, meta: log.append(("post", prefix, sorted(sd)[:2])))
        sd = net.state_dict()
        calls[lib.__name__] = log
        if lib is ng:
            assert list(sd) == list(_nets(torch).state_dict())
    assert calls["nodegrad"] == calls["torch"]


def test_state_dict_post_hook_edits_in_place_and_must_return_none():
    net = _nets(ng)
    net.register_state_dict_post_hook(lambda m, sd, p, meta: sd.pop("1.num_batches_tracked"))
    with pytest.raises(RuntimeError, match="return None"):
        net.state_dict()
    net2 = _nets(ng)
    def drop(m, sd, prefix, meta):
        del sd[prefix + "1.num_batches_tracked"]

    net2.register_state_dict_post_hook(drop)
    assert "1.num_batches_tracked" not in net2.state_dict()
    sd = net2.state_dict(prefix="model.", keep_vars=True)
    assert sd["model.0.weight"] is net2[0].weight


def test_load_pre_hook_renames_old_keys_and_post_hook_clears_what_it_handled():
    src, dst = _nets(ng), _nets(ng)
    old = {k.replace("0.", "lin."): v for k, v in src.state_dict().items()}

    def rename(m, sd, prefix, meta, strict, missing, unexpected, errors):
        for k in [k for k in sd if k.startswith("lin.")]:
            sd[k.replace("lin.", "0.")] = sd.pop(k)

    dst.register_load_state_dict_pre_hook(rename)
    keys = dst.load_state_dict(old)
    assert keys == ([], []) and keys.missing_keys == []
    np.testing.assert_array_equal(dst[0].weight.numpy(), src[0].weight.numpy())
    assert "lin.weight" in old  # the caller's dict is untouched

    dst2 = _nets(ng)
    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("1.")}
    with pytest.raises(ShapeError, match="missing: 1.weight"):
        dst2.load_state_dict(partial)
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal,
                             dst2[0].weight.numpy(), src[0].weight.numpy())  # nothing copied
    dst2.register_load_state_dict_post_hook(lambda m, keys: keys.missing_keys.clear())
    dst2.load_state_dict(partial)
    np.testing.assert_array_equal(dst2[0].weight.numpy(), src[0].weight.numpy())


def test_load_pre_hook_errors_refuse_the_load():
    net = _nets(ng)
    net.register_load_state_dict_pre_hook(
        lambda m, sd, p, meta, strict, miss, unexp, errors: errors.append("old format"))
    with pytest.raises(ShapeError, match="old format"):
        net.load_state_dict(net.state_dict())


# --- lookups and buffers ------------------------------------------------------------------
def test_get_parameter_buffer_and_set_submodule():
    net = _nets(ng)
    assert net.get_parameter("0.weight") is net[0].weight
    assert net.get_buffer("1.running_mean") is net[1].running_mean
    with pytest.raises(AttributeError, match="no parameter 'bias2'"):
        net.get_parameter("0.bias2")
    with pytest.raises(AttributeError, match="no buffer"):
        net.get_buffer("0.weight")
    lin = nn.Linear(2, 3)
    net.set_submodule("0", lin)
    assert net[0] is lin
    with pytest.raises(AttributeError, match="strict"):
        net.set_submodule("9", lin, strict=True)
    with pytest.raises(TypeError, match="expected a Module"):
        net.set_submodule("0", 3)
    net.register_module("extra", nn.ReLU())
    assert isinstance(net.extra, nn.ReLU)


def test_buffer_assignment_registers_a_buffer():
    m = nn.Module()
    m.stat = nn.Buffer(ng.zeros(3))
    m.scratch = nn.Buffer(ng.ones(2), persistent=False)
    assert list(m.state_dict()) == ["stat"]
    assert set(dict(m.named_buffers())) == {"stat", "scratch"}
    assert not m.stat.requires_grad and type(m.stat) is ng.Tensor
    t = torch.nn.Module()
    t.stat = torch.nn.Buffer(torch.zeros(3))
    t.scratch = torch.nn.Buffer(torch.ones(2), persistent=False)
    assert list(t.state_dict()) == list(m.state_dict())


def test_dtype_helpers_as_torch():
    m = nn.Linear(2, 3)
    assert m.half().weight.dtype == ng.float16
    assert m.type(ng.float64).weight.dtype == ng.float64
    assert m.to_empty(device="cpu") is m
    assert m.bfloat16().weight.dtype == ng.bfloat16 and m.bias.dtype == ng.bfloat16
