"""Module system: registration, state dicts, modes, freezing, hooks, functional use."""

import copy

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8))
        self.heads = [nn.Linear(8, 2), nn.Linear(8, 3)]  # a list registers as ModuleList
        self.scale = nn.Parameter(ng.ones(1))
        self.register_buffer("seen", ng.zeros(1))

    def forward(self, x):
        h = self.body(x)
        return self.heads[0](h) * self.scale, self.heads[1](h)


def test_registration_and_names():
    m = Net()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias",
                     "heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"]
    assert isinstance(m.heads, nn.ModuleList)
    assert [n for n, _ in m.named_buffers()] == ["seen", "body.2.running_mean",
                                                  "body.2.running_var",
                                                  "body.2.num_batches_tracked"]
    assert m.num_parameters() == 1 + 4 * 8 + 8 + 8 + 8 + 8 * 2 + 2 + 8 * 3 + 3
    sd = m.state_dict()
    assert "body.2.running_mean" in sd and "seen" in sd


def test_shared_parameter_counted_once():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2


def test_train_eval_propagates():
    m = Net()
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())


def test_load_state_dict_roundtrip_and_errors():
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    sd = a.state_dict()
    sd.pop("scale")
    sd["extra"] = ng.ones(1)
    sd["heads.0.weight"] = ng.ones(5, 8)
    with pytest.raises(ng.ShapeError) as e:
        b.load_state_dict(sd)
    msg = str(e.value)
    assert "missing: scale" in msg and "unexpected: extra" in msg
    assert "heads.0.weight: checkpoint (5, 8) vs model (2, 8)" in msg
    sd["heads.0.weight"] = ng.ones(2, 8)
    missing, unexpected = b.load_state_dict(sd, strict=False)
    assert missing == ["scale"] and unexpected == ["extra"]


def test_freeze_subtree():
    m = Net()
    m.body.requires_grad_(False)
    x = ng.randn(5, 4)
    out = m(x)
    (out[0].sum() + out[1].sum()).backward()
    assert all(p.grad is None for p in m.body.parameters())
    assert m.heads[0].weight.grad is not None
    assert m.num_parameters(trainable_only=True) < m.num_parameters()


def test_zero_grad():
    m = nn.Linear(2, 2)
    m(ng.ones(1, 2)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert m.weight.grad.numpy().sum() == 0
    m.zero_grad()
    assert m.weight.grad is None


def test_forward_hooks_read_and_replace():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    seen = []
    h = m[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    m(ng.ones(2, 3))
    assert seen == [(2, 4)]
    h.remove()
    m(ng.ones(2, 3))
    assert len(seen) == 1
    m[1].register_forward_hook(lambda mod, inp, out: out * 0)
    assert m(ng.ones(2, 3)).numpy().sum() == 0
    m[0].register_forward_pre_hook(lambda mod, inp: (inp[0] * 0,))


def test_repr_has_tree_and_counts():
    r = repr(Net())
    assert "(body): Sequential(" in r and "Linear(in_features=4, out_features=8" in r
    assert "parameters in all" in r


def test_to_dtype_keeps_parameter_identity():
    m = nn.Linear(2, 2)
    w = m.weight
    m.to(ng.float64)
    assert m.weight is w and w.dtype == ng.float64
    assert m(ng.ones(1, 2, dtype=ng.float64)).dtype == ng.float64


def test_functional_call_and_grad_over_module():
    m = nn.Linear(3, 1)
    x = ng.randn(4, 3)
    params = {k: v * 2 for k, v in m.state_dict().items()}
    y = nn.functional_call(m, params, x)
    np.testing.assert_allclose(y.numpy(), (x.numpy() @ (2 * m.weight.numpy()).T
                                           + 2 * m.bias.numpy()), rtol=1e-5)
    g = ng.grad(lambda mod: mod(x).sum())(m)
    assert isinstance(g, nn.Linear) and m.weight.grad is None
    np.testing.assert_allclose(g.weight.numpy()[0], x.numpy().sum(0), rtol=1e-5)
    # a name the module lacks is an attribute for the call only (torch.func's rule)
    nn.functional_call(m, {"nope": ng.ones(1)}, x)
    assert not hasattr(m, "nope")


def test_deepcopy_is_independent():
    m = Net()
    c = copy.deepcopy(m)
    with ng.no_grad():
        c.scale += 1
    assert m.scale.item() == 1.0 and c.scale.item() == 2.0
    assert isinstance(c.scale, nn.Parameter)


def test_setattr_before_init_is_clear():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(ng.ones(1))

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_parameter_of_ints_refused():
    with pytest.raises(TypeError):
        nn.Parameter(ng.arange(3))


def test_get_submodule_walks_dotted_paths_as_pytorch():
    inner = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    model = nn.Sequential(inner, nn.Linear(3, 1))
    assert model.get_submodule("") is model
    assert model.get_submodule("0") is inner
    assert model.get_submodule("0.0") is inner[0]
    with pytest.raises(AttributeError, match="has no submodule '5'.*'0.5'"):
        model.get_submodule("0.5")


def test_nn_utils_flat_parameters_and_clipping_as_in_pytorch():
    """``nn.utils``: the parameters as one vector and back, in PyTorch's order, and its
    clipping functions (nodegrad.optim's)."""
    torch = pytest.importorskip("torch")
    ng.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    tm.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in m.state_dict().items()})
    v = nn.utils.parameters_to_vector(m.parameters())
    np.testing.assert_array_equal(
        v.numpy(), torch.nn.utils.parameters_to_vector(tm.parameters()).detach().numpy())
    (v * v).sum().backward()  # differentiable: each parameter gets 2p
    np.testing.assert_allclose(m[0].weight.grad.numpy(), 2 * m[0].weight.numpy())
    new = ng.arange(v.shape[0], dtype=ng.float32)
    nn.utils.vector_to_parameters(new, m.parameters())
    torch.nn.utils.vector_to_parameters(torch.arange(v.shape[0], dtype=torch.float32),
                                        tm.parameters())
    for k, t in tm.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k].numpy(), t.numpy())
    with pytest.raises(ng.ShapeError, match="5 elements, the parameters 26"):
        nn.utils.vector_to_parameters(ng.zeros(5), m.parameters())
    with pytest.raises(ng.ShapeError, match="1-D"):
        nn.utils.vector_to_parameters(ng.zeros(2, 13), m.parameters())
    assert nn.utils.clip_grad_norm_ is ng.optim.clip_grad_norm_
    assert nn.utils.clip_grad_value_ is ng.optim.clip_grad_value_


def test_nn_utils_refuses_parameters_on_two_devices(cuda):
    a, b = nn.Linear(2, 2), nn.Linear(2, 2).to(cuda)
    with pytest.raises(ng.DeviceError, match="several devices"):
        nn.utils.parameters_to_vector([*a.parameters(), *b.parameters()])
    v = nn.utils.parameters_to_vector(b.parameters())
    assert v.device.startswith("cuda")
    nn.utils.vector_to_parameters(v.to("cpu") * 2, b.parameters())  # copied to the device
    np.testing.assert_allclose(nn.utils.parameters_to_vector(b.parameters()).numpy(),
                               2 * v.numpy())


def test_state_dicts_of_tied_weights_and_named_duplicates_as_torch():
    """PyTorch's order of state-dict keys; its state dict of a model with tied weights (the
    shared tensor listed under both names) loads strictly; remove_duplicate=False lists every
    name, as PyTorch's."""
    torch = pytest.importorskip("torch")

    def build(lib):
        class Tied(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = lib.nn.Embedding(5, 3)
                self.bn = lib.nn.BatchNorm1d(3)
                self.head = lib.nn.Linear(3, 5, bias=False)
                self.head.weight = self.emb.weight
                self.alias = self.bn
                self.register_buffer("stat", lib.zeros(2))
        return Tied()

    t, n = build(torch), build(ng)
    ours = list(n.state_dict())
    assert ours == list(t.state_dict())  # the shared tensors under both names, as PyTorch
    assert n.state_dict()["head.weight"] is n.state_dict()["emb.weight"] or \
        n.state_dict()["head.weight"]._data is n.state_dict()["emb.weight"]._data
    sd = {k: v.detach().numpy() + 1.0 for k, v in t.state_dict().items()}
    sd["bn.num_batches_tracked"] = t.state_dict()["bn.num_batches_tracked"].numpy()
    sd["alias.num_batches_tracked"] = sd["bn.num_batches_tracked"]
    sd["alias.weight"] = sd["bn.weight"]
    sd["alias.bias"] = sd["bn.bias"]
    assert n.load_state_dict({k: ng.tensor(v) for k, v in sd.items()}) == ([], [])
    np.testing.assert_array_equal(n.head.weight.numpy(), sd["emb.weight"])
    for f in ("named_parameters", "named_buffers", "named_modules"):
        assert [k for k, _ in getattr(n, f)(remove_duplicate=False)] == \
            [k for k, _ in getattr(t, f)(remove_duplicate=False)], f


def test_tied_state_dict_loads_into_torch_strictly_and_saves_once(tmp_path):
    """A nodegrad state dict of a tied model loads strictly into the same PyTorch model (it
    lists the tied weight under both names); ng.save writes the tensor once and ng.load gives
    both names back as one tensor; a checkpoint naming it once (older files) still loads, and
    load_state_dict(assign=True) keeps the tie."""
    torch = pytest.importorskip("torch")

    def build(lib):
        m = lib.nn.Sequential(lib.nn.Embedding(5, 3), lib.nn.Linear(3, 5, bias=False))
        m[1].weight = m[0].weight
        return m

    t, n = build(torch), build(ng)
    sd = n.state_dict()
    assert list(sd) == ["0.weight", "1.weight"]
    t.load_state_dict({k: torch.tensor(v.numpy()) for k, v in sd.items()})  # strict
    np.testing.assert_array_equal(t[1].weight.detach().numpy(), n[0].weight.numpy())
    f = tmp_path / "tied.safetensors"
    ng.save(sd, f)
    from safetensors.numpy import load_file
    assert list(load_file(str(f))) == ["0.weight"]  # written once
    back = ng.load(f)
    assert back["1.weight"] is back["0.weight"]
    m2 = build(ng)
    assert m2.load_state_dict(back) == ([], [])
    np.testing.assert_array_equal(m2[1].weight.numpy(), n[0].weight.numpy())
    assert m2.load_state_dict({"0.weight": back["0.weight"]}) == ([], [])  # named once
    m3 = build(ng)
    m3.load_state_dict(back, assign=True)
    assert m3[1].weight is m3[0].weight
    assert m3[0].weight._data is back["0.weight"]._data


def test_plain_attributes_before_module_init_are_allowed_as_in_pytorch():
    """schnetpack's Dense stores its initialisers before ``super().__init__()``: plain values
    may be set then; a Parameter or a Module is refused, as PyTorch refuses them."""
    class Early(nn.Module):
        def __init__(self, what):
            self.scale = what
            super().__init__()

    assert Early(2.0).scale == 2.0
    for what in (nn.Parameter(ng.ones(2)), nn.Linear(2, 2)):
        with pytest.raises(AttributeError, match="before Module.__init__"):
            Early(what)
