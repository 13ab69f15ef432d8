"""``ng.compile``: ``torch.compile``'s name and parameters over ``ng.jit``."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F


def _model():
    ng.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def test_a_compiled_module_trains_as_the_module():
    eager, inner = _model(), _model()
    compiled = ng.compile(inner)
    assert isinstance(compiled, nn.Module) and compiled._orig_mod is inner
    assert list(compiled.state_dict()) == ["_orig_mod." + k for k in inner.state_dict()]
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in inner.parameters()]
    x = ng.randn(8, 6)
    y = ng.randint(0, 3, (8,))
    opts = [ng.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    for step in range(10):
        for m, opt in ((eager, opts[0]), (compiled, opts[1])):
            ng.manual_seed(step)
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(eager.parameters(), inner.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-7)
    assert compiled._jitted.traces == 1
    compiled.eval()
    assert not inner.training
    np.testing.assert_array_equal(compiled(x).numpy(), inner(x).numpy())


def test_a_compiled_function_and_the_decorator_forms():
    def f(x):
        return ng.tanh(x) * 2

    x = ng.randn(4)
    for g in (ng.compile(f), ng.compile()(f), ng.compile(mode="max-autotune")(f)):
        np.testing.assert_array_equal(g(x).numpy(), f(x).numpy())
        g(x)
        assert g.jitted.traces == 1 and g.__wrapped__ is f

    @ng.compile(options={"fuse": False})
    def h(x):
        return x + 1

    np.testing.assert_array_equal(h(x).numpy(), (x + 1).numpy())


def test_eager_backends_and_disable_return_what_they_got():
    m = _model()
    assert ng.compile(m, backend="eager") is m
    assert ng.compile(m, disable=True) is m


def test_fullgraph_refuses_a_call_that_ran_eagerly():
    def f(i):
        return F.one_hot(i)  # its class count read from the values: runs eagerly under jit

    i = ng.tensor([0, 2])
    np.testing.assert_array_equal(ng.compile(f)(i).numpy(), [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ng.errors.JitError, match="fullgraph=True.*one_hot"):
        ng.compile(f, fullgraph=True)(i)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="mode must be one of"):
        ng.compile(lambda x: x, mode="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        ng.compile(lambda x: x, backend="cudagraphs")
    with pytest.raises(ValueError, match="unknown options"):
        ng.compile(lambda x: x, options={"triton.cudagraphs": True})
    with pytest.raises(TypeError, match="expected a module or a function"):
        ng.compile(3)


def test_forward_hooks_that_store_features_see_every_call():
    """A forward hook that returns nothing runs for its side effects (FitNets-style features
    stored in a dict): the compiled module then runs eagerly and says why, so the features are
    each call's, not the traced call's; a hook returning a new output is replayed."""
    m = _model().eval()
    c = ng.compile(m)
    c(ng.randn(2, 6))
    feats = {}
    m[0].register_forward_hook(lambda mod, i, o: feats.__setitem__("h", o.detach()))
    for seed in range(3):
        ng.manual_seed(seed)
        x = ng.randn(2, 6)
        c(x)
        np.testing.assert_array_equal(feats["h"].numpy(), F.linear(x, m[0].weight,
                                                                   m[0].bias).detach().numpy())
    assert "forward hook" in c._jitted.last.reason
    m2 = _model().eval()
    m2[0].register_forward_hook(lambda mod, i, o: o * 2)
    c2 = ng.compile(m2)
    for _ in range(2):
        x = ng.randn(2, 6)
        np.testing.assert_allclose(c2(x).numpy(), m2(x).numpy(), rtol=1e-6)
    assert c2._jitted.last.reason is None


def test_a_pruned_module_still_compiles():
    from nodegrad.nn.utils import prune

    m = _model().eval()
    prune.l1_unstructured(m[0], "weight", amount=0.5)
    c = ng.compile(m)
    for _ in range(2):
        x = ng.randn(2, 6)
        np.testing.assert_allclose(c(x).numpy(), m(x).numpy(), rtol=1e-6)
    assert c._jitted.last.reason is None


def test_module_compile_in_place():
    """PyTorch's ``model.compile()``: the module itself now calls through ``ng.compile`` (the
    same object, type and state-dict keys), trains as eagerly, and a deep copy compiles
    itself; ``backend="eager"`` undoes it; bad arguments are refused at once."""
    import copy

    eager, m = _model(), _model()
    assert m.compile() is None and type(m) is nn.Sequential
    assert list(m.state_dict()) == list(eager.state_dict())
    x, y = ng.randn(8, 6), ng.randint(0, 3, (8,))
    opts = [ng.optim.SGD(mod.parameters(), lr=0.1) for mod in (eager, m)]
    for step in range(4):
        for mod, opt in ((eager, opts[0]), (m, opts[1])):
            ng.manual_seed(step)
            opt.zero_grad()
            F.cross_entropy(mod(x), y).backward()
            opt.step()
    for a, b in zip(eager.parameters(), m.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    inplace = m.__dict__["_compiled_call"]
    assert inplace.compiled._jitted.last.reason is None  # replayed, not run eagerly
    twin = copy.deepcopy(m)
    m.eval(), twin.eval()
    np.testing.assert_allclose(twin(x).numpy(), m(x).numpy(), rtol=1e-6)
    assert twin.__dict__["_compiled_call"].owner is twin
    with pytest.raises(ValueError, match="mode must be one of"):
        m.compile(mode="bogus")
    m.compile(backend="eager")
    assert "_compiled_call" not in m.__dict__
