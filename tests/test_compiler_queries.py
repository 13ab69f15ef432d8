"""``ng.compiler``: torch.compiler's queries (True while a trace records) and hints."""

import numpy as np
import pytest

import nodegrad as ng


def test_is_compiling_is_true_only_while_tracing():
    seen = []

    @ng.jit
    def f(x):
        seen.append(ng.compiler.is_compiling())
        return x * (2.0 if ng.compiler.is_compiling() else 3.0)

    x = ng.ones(3)
    assert not ng.compiler.is_compiling() and not ng.compiler.is_dynamo_compiling()
    assert np.array_equal(f(x).numpy(), [2, 2, 2])  # the trace's branch is the program's
    assert np.array_equal(f(x).numpy(), [2, 2, 2]) and seen == [True]  # replayed: no call
    with ng.disable_jit():
        assert np.array_equal(f(x).numpy(), [3, 3, 3]) and seen == [True, False]


def test_is_compiling_inside_a_compiled_module():
    class Probe(ng.nn.Module):
        def forward(self, x):
            self.flag = ng.compiler.is_compiling()
            return x + 1

    m = Probe()
    m(ng.ones(2))
    assert m.flag is False
    ng.compile(m)(ng.ones(2))
    assert m.flag is True and not ng.compiler.is_exporting()


def test_hints_return_the_function_and_refuse_other_things():
    def g(x):
        return x

    assert ng.compiler.allow_in_graph(g) is g and ng.compiler.assume_constant_result(g) is g
    with pytest.raises(TypeError, match="compiler.allow_in_graph: expected a function, got int"):
        ng.compiler.allow_in_graph(3)
