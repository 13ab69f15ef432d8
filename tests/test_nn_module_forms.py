"""PyTorch's constructor forms of containers, lazy layers, EmbeddingBag and the recurrent bases:
the keyword names, private arguments that ``from_pretrained`` uses, ``bias=`` of the lazy
norms, ``num_chunks`` and ``UninitializedBuffer`` (values against PyTorch in float64)."""

import inspect

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.nn as nn

torch = pytest.importorskip("torch")

MODULES = ["Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict",
           "UninitializedParameter", "UninitializedBuffer", "LazyLinear", "LazyConv1d",
           "LazyConv2d", "LazyConv3d", "LazyConvTranspose1d", "LazyConvTranspose2d",
           "LazyConvTranspose3d", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d",
           "LazyInstanceNorm1d", "LazyInstanceNorm2d", "LazyInstanceNorm3d", "Bilinear",
           "EmbeddingBag", "Unflatten", "RNNCellBase", "RNNCell", "GRUCell", "LSTMCell"]


def _signature(cls):
    f = cls.__init__
    if "__init__" not in cls.__dict__ and "__new__" in cls.__dict__:
        f = cls.__new__
    return {k: v for k, v in inspect.signature(f).parameters.items()
            if k not in ("self", "cls") and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}


@pytest.mark.parametrize("name", MODULES)
def test_constructors_take_torchs_argument_names(name):
    """Every named argument of PyTorch's constructor, with its default (the lazy instance
    norms' affine/track_running_stats default to True, as PyTorch's code does, where its docs
    say False)."""
    theirs, ours = _signature(getattr(torch.nn, name)), _signature(getattr(nn, name))
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    for k, v in theirs.items():
        if v.default is inspect.Parameter.empty:
            continue
        d = ours[k].default
        if name.startswith("Lazy") and k in ("affine", "track_running_stats") and d is None:
            d = getattr(nn, name)._affine_default  # None: the layer's own default
        assert d == v.default or (v.default is None and d == ()), (k, v.default, d)


# --- containers -----------------------------------------------------------------------------------
def test_parameter_list_takes_values_and_torchs_list_methods():
    a, b, c = np.ones(2), np.zeros(3), np.full(1, 2.0)
    ours = nn.ParameterList(values=[ng.tensor(a), nn.Parameter(ng.tensor(b))])
    theirs = torch.nn.ParameterList(values=[torch.tensor(a), torch.nn.Parameter(torch.tensor(b))])
    for pl, mk in ((ours, ng.tensor), (theirs, torch.tensor)):
        pl.extend([mk(c)])
        pl += [mk(a)]
        pl[0] = mk(b)
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    for p, q in zip(ours, theirs):
        assert type(p) is nn.Parameter and p.requires_grad
        np.testing.assert_array_equal(p.numpy(), q.detach().numpy())
    part = ours[1:3]
    assert isinstance(part, nn.ParameterList) and len(part) == 2 and part[0] is ours[1]
    assert len(nn.ParameterList()) == 0 and len(nn.ParameterList(None)) == 0
    with pytest.raises(IndexError, match="ParameterList: index 9 is out of range for 4"):
        ours[9] = ng.tensor(a)


def test_parameter_dict_and_module_containers_take_torchs_forms():
    pd = nn.ParameterDict(parameters={"b": ng.ones(2), "a": ng.zeros(1)})
    tpd = torch.nn.ParameterDict(parameters={"b": torch.ones(2), "a": torch.zeros(1)})
    assert list(pd.keys()) == list(tpd.keys())
    assert len(nn.ModuleList(None)) == 0 and len(nn.ModuleList()) == 0
    md = nn.ModuleDict([("x", nn.Linear(2, 3)), ("y", nn.ReLU())])
    tmd = torch.nn.ModuleDict([("x", torch.nn.Linear(2, 3)), ("y", torch.nn.ReLU())])
    assert list(md.keys()) == list(tmd.keys())
    assert [k for k, _ in md.named_parameters()] == [k for k, _ in tmd.named_parameters()]



def _edit_containers(lib):
    """The same edits of a Sequential and a ModuleList, as their users write them; what each
    step leaves: the layers' types, the names, the state_dict keys."""
    nn_ = lib.nn
    seen = []

    def names(c):
        return [type(m).__name__ for m in c], list(c._modules), list(c.state_dict())

    s = nn_.Sequential(nn_.Linear(3, 4), nn_.ReLU(), nn_.Linear(4, 5), nn_.Tanh(), nn_.Linear(5, 2))
    seen.append(list(s[1:4].state_dict()))  # a slice keeps the names
    s[-1] = nn_.Linear(5, 7)  # a new head
    del s[1]
    seen.append(names(s))
    s.insert(1, nn_.Sigmoid())
    s.insert(-1, nn_.ReLU())
    seen.append(names(s))
    seen.append((type(s.pop(0)).__name__, len(s), names(s + nn_.Sequential(nn_.ReLU()))[0],
                 len(s * 2), len(2 * s)))
    del s[1:3]
    s.extend([nn_.GELU()])
    s += nn_.Sequential(nn_.ELU())
    seen.append(names(s))
    ml = nn_.ModuleList([nn_.ReLU(), nn_.Linear(2, 2), nn_.Sigmoid()])
    ml[0] = nn_.ELU()
    del ml[1]
    ml += [nn_.GELU()]
    seen.append((names(ml), type(ml.pop(-1)).__name__, len(ml + [nn_.ReLU()]), names(ml[1:])))
    for bad in (lambda: s[10], lambda: s.__setitem__(-9, nn_.ReLU()), lambda: ml[5],
                lambda: ml.__delitem__(3), lambda: s.insert(9, nn_.ReLU())):
        with pytest.raises(IndexError):
            bad()
    return seen


def test_sequential_and_module_list_edit_as_torchs():
    """Indexing, assignment (``model[-1] = Linear(...)``: transfer learning's new head),
    deletion with renumbering, insert, pop, extend, + and * as PyTorch's containers do them."""
    assert _edit_containers(ng) == _edit_containers(torch)
    with pytest.raises(TypeError, match="expected a Module"):
        nn.Sequential(nn.ReLU())[0] = "relu"
    with pytest.raises(ValueError, match="factor must be positive"):
        nn.Sequential(nn.ReLU()) * 0

# --- EmbeddingBag ---------------------------------------------------------------------------------
def _bag_inputs():
    w = np.random.default_rng(0).standard_normal((6, 3))
    idx, offsets = np.array([1, 2, 4, 5, 4, 3, 2, 0]), np.array([0, 2, 5])
    return w, idx, offsets


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_takes_a_weight_where_torch_does(mode):
    w, idx, offsets = _bag_inputs()
    # positionally: ... mode, sparse, _weight, include_last_offset, padding_idx
    ours = nn.EmbeddingBag(6, 3, None, 2.0, False, mode, False, ng.tensor(w), False, 2)
    theirs = torch.nn.EmbeddingBag(6, 3, None, 2.0, False, mode, False, torch.tensor(w), False,
                                   2)
    y = ours(ng.tensor(idx), ng.tensor(offsets))
    ty = theirs(torch.tensor(idx), torch.tensor(offsets))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_array_equal(ours.weight.numpy(), w)  # kept as given: padding row too
    y.sum().backward()
    ty.sum().backward()
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-12)
    with pytest.raises(ng.errors.ShapeError, match=r"EmbeddingBag: _weight has shape \(6, 3\), "
                                                   r"expected .* \(5, 3\)"):
        nn.EmbeddingBag(5, 3, _weight=ng.tensor(w))


@pytest.mark.parametrize("freeze", [True, False])
def test_embedding_bag_from_pretrained_matches_torch(freeze):
    w, idx, _ = _bag_inputs()
    offsets = np.array([0, 2, 5, 8])  # the last one the input's length
    ours = nn.EmbeddingBag.from_pretrained(ng.tensor(w), freeze=freeze, mode="sum",
                                           include_last_offset=True, padding_idx=4)
    theirs = torch.nn.EmbeddingBag.from_pretrained(torch.tensor(w), freeze=freeze, mode="sum",
                                                   include_last_offset=True, padding_idx=4)
    assert ours.weight.requires_grad is theirs.weight.requires_grad is (not freeze)
    y = ours(ng.tensor(idx), ng.tensor(offsets))
    ty = theirs(torch.tensor(idx), torch.tensor(offsets))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="from_pretrained: embeddings must be a 2-d tensor"):
        nn.EmbeddingBag.from_pretrained(ng.ones(3))


# --- lazy norms: bias=, UninitializedBuffer --------------------------------------------------
LAZY_NORMS = [("LazyBatchNorm1d", {}, (4, 3, 5)), ("LazyBatchNorm2d", {}, (4, 3, 2, 2)),
              ("LazyBatchNorm3d", {}, (2, 3, 2, 2, 2)),
              ("LazyInstanceNorm1d", dict(affine=True, track_running_stats=False), (2, 3, 6)),
              ("LazyInstanceNorm2d", dict(affine=True, track_running_stats=True), (2, 3, 4, 4)),
              ("LazyInstanceNorm3d", dict(affine=True, track_running_stats=False),
               (2, 3, 2, 3, 3))]


@pytest.mark.parametrize("name,kw,shape", LAZY_NORMS, ids=[n for n, _, _ in LAZY_NORMS])
@pytest.mark.parametrize("bias", [True, False])
def test_lazy_norms_take_bias_like_torch(name, kw, shape, bias):
    x = np.random.default_rng(1).standard_normal(shape)
    ours = getattr(nn, name)(bias=bias, **kw).double()
    theirs = getattr(torch.nn, name)(bias=bias, **kw).double()
    y, ty = ours(ng.tensor(x)), theirs(torch.tensor(x))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert (ours.bias is None) is (theirs.bias is None) is (not bias)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    y.sum().backward()
    ty.sum().backward()
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(),
                               rtol=1e-10, atol=1e-12)


def test_lazy_norm_running_stats_wait_as_uninitialized_buffers():
    m = nn.LazyBatchNorm2d()
    t = torch.nn.LazyBatchNorm2d()
    held = m.running_mean
    assert type(held) is nn.UninitializedBuffer and type(t.running_mean).__name__ == \
        "UninitializedBuffer"
    assert list(m.state_dict()) == list(t.state_dict())
    m(ng.ones(2, 3, 2, 2))
    assert m.running_mean is held and type(held) is ng.Tensor and held.shape == (3,)
    fresh = nn.LazyBatchNorm2d()  # an unbuilt lazy model's state does not size another
    fresh.load_state_dict(nn.LazyBatchNorm2d().state_dict())
    assert isinstance(fresh, nn.LazyBatchNorm2d)


def test_uninitialized_tensors_materialize_in_place_like_torch():
    b = nn.UninitializedBuffer(dtype=ng.float64)
    b.materialize((2, 3))
    assert type(b) is ng.Tensor and b.shape == (2, 3) and b.dtype == ng.float64
    assert not b.requires_grad
    p = nn.UninitializedParameter(dtype=ng.float32)
    p.materialize(4, dtype=ng.float64)
    assert type(p) is nn.Parameter and p.shape == (4,) and p.dtype == ng.float64
    assert p.requires_grad
    assert nn.UninitializedBuffer(persistent=False).persistent is False
    assert nn.UninitializedBuffer().persistent is True


# --- recurrent bases ------------------------------------------------------------------------------
def test_rnn_cell_base_takes_num_chunks_like_torch():
    ours = nn.RNNCellBase(3, 4, True, 2)
    theirs = torch.nn.RNNCellBase(3, 4, True, 2)
    assert [(k, tuple(p.shape)) for k, p in ours.named_parameters()] == \
        [(k, tuple(p.shape)) for k, p in theirs.named_parameters()]
    assert nn.RNNCellBase(3, 4, bias=False, num_chunks=3).bias_ih is None
    assert nn.GRUCell(3, 4).weight_ih.shape == (12, 3)
    assert nn.LSTMCell(3, 4, True, "xavier").weight_hh.shape == (16, 4)  # init stays 4th
    with pytest.raises(ValueError, match="RNNCellBase: num_chunks must be a positive int"):
        nn.RNNCellBase(3, 4, True, 0)


def test_rnn_base_takes_its_mode_by_keyword():
    ours = nn.RNNBase(mode="GRU", input_size=3, hidden_size=4, num_layers=2)
    theirs = torch.nn.RNNBase(mode="GRU", input_size=3, hidden_size=4, num_layers=2)
    assert ours.mode == "GRU"
    assert [(k, tuple(p.shape)) for k, p in ours.named_parameters()] == \
        [(k, tuple(p.shape)) for k, p in theirs.named_parameters()]
    with pytest.raises(ValueError, match="RNNBase: mode must be one of"):
        nn.RNNBase(mode="TRANSFORMER", input_size=3, hidden_size=4)
