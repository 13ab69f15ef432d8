"""ng.nn.parameter and ng.utils.hooks: PyTorch's module paths for the classes nn already has."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import parameter as P
from nodegrad.utils.hooks import RemovableHandle

torch = pytest.importorskip("torch")


def test_parameter_module_names_match_torch():
    import torch.nn.parameter as tp

    for name in ("Parameter", "UninitializedParameter", "Buffer", "UninitializedBuffer",
                 "is_lazy"):
        assert hasattr(tp, name) and hasattr(P, name), name
    assert P.Parameter is ng.nn.Parameter and P.Buffer is ng.nn.Buffer
    assert P.UninitializedParameter is ng.nn.UninitializedParameter


def test_is_lazy_as_torch():
    cases = [(P.UninitializedParameter(), torch.nn.parameter.UninitializedParameter()),
             (P.UninitializedBuffer(), torch.nn.parameter.UninitializedBuffer()),
             (P.Parameter(ng.zeros(2)), torch.nn.Parameter(torch.zeros(2))),
             (ng.zeros(2), torch.zeros(2))]
    for ours, ref in cases:
        assert P.is_lazy(ours) == torch.nn.parameter.is_lazy(ref)


def test_buffer_registers_and_parameter_trains():
    m = ng.nn.Module()
    m.b = P.Buffer(ng.ones(3))
    m.w = P.Parameter(ng.ones(2))
    assert [n for n, _ in m.named_buffers()] == ["b"]
    assert [n for n, _ in m.named_parameters()] == ["w"] and m.w.requires_grad


def test_every_hook_returns_the_removable_handle():
    x = ng.ones(2, requires_grad=True)
    seen = []
    h = x.register_hook(lambda g: seen.append(1))
    assert isinstance(h, RemovableHandle)
    (x * 2).sum().backward()
    h.remove()
    (x * 2).sum().backward()
    assert seen == [1]
    lin = ng.nn.Linear(2, 2)
    with lin.register_forward_hook(lambda mod, a, out: seen.append(2)) as fh:
        assert isinstance(fh, RemovableHandle)
        lin(ng.ones(1, 2))
    lin(ng.ones(1, 2))
    assert seen == [1, 2]
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 4.0])
