"""The engine: accumulation, retain/create graph, hooks, freeing, in-place detection, anomalies."""

import gc
import weakref

import numpy as np
import pytest

import nodegrad as ng


def test_backward_accumulates_on_leaves():
    x = ng.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2, 4, 6])
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5, 7, 9])


def test_shared_subexpression_sums_messages():
    # a node with two children receives the sum of both VJP messages
    x = ng.tensor(2.0, requires_grad=True)
    h = x * x
    y = h * 3 + h.exp()
    y.backward()
    assert x.grad.item() == pytest.approx(3 * 4 + np.exp(4) * 4, rel=1e-6)


def test_many_messages_sum_in_place_without_touching_shared_cotangents():
    """Messages after the second are added into the engine's own sum; an aliased cotangent (the
    caller's, or one add sent to both parents) is never written to."""
    x = ng.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3), requires_grad=True)
    w = ng.tensor(np.full((2, 3), 0.5, dtype=np.float32), requires_grad=True)
    h = x
    for _ in range(5):
        h = h * w + x  # x and w each get five messages
    y = h + h + h  # one add sends the same cotangent to both its parents
    c = ng.tensor(np.ones((2, 3), dtype=np.float32))
    y.backward(c, retain_graph=True)
    np.testing.assert_array_equal(c.numpy(), np.ones((2, 3), dtype=np.float32))
    xs, ws = x.numpy().astype(np.float64), 0.5
    # h_k = h_{k-1} w + x: dh5/dx = 1 + w + ... + w^5, dh5/dw = sum_k h_{k-1} w^(5-k)
    hs = [xs]
    for _ in range(5):
        hs.append(hs[-1] * ws + xs)
    dx = 3 * sum(ws ** k for k in range(6))
    dw = 3 * sum(hs[k - 1] * ws ** (5 - k) for k in range(1, 6))
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-5)
    np.testing.assert_allclose(w.grad.numpy(), dw, rtol=1e-5)
    x.grad = None
    (gx,) = ng.autodiff.grad([y], [x], [c])
    np.testing.assert_allclose(gx.numpy(), dx, rtol=1e-5)
    np.testing.assert_array_equal(c.numpy(), np.ones((2, 3), dtype=np.float32))


def test_grad_not_shared_between_leaves():
    a = ng.tensor([1.0, 2.0], requires_grad=True)
    b = ng.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    assert a.grad._data is not b.grad._data
    with ng.no_grad():
        a.grad *= 10
    np.testing.assert_allclose(b.grad.numpy(), [1, 1])


def test_broadcast_gradients_sum_to_input_shape():
    x = ng.ones(3, 1, requires_grad=True)
    y = ng.ones(1, 4, requires_grad=True)
    z = ng.ones(2, 3, 4, requires_grad=True)
    (x * y + z).sum().backward()
    assert x.grad.shape == (3, 1) and y.grad.shape == (1, 4) and z.grad.shape == (2, 3, 4)
    np.testing.assert_allclose(x.grad.numpy(), np.full((3, 1), 8.0))
    np.testing.assert_allclose(y.grad.numpy(), np.full((1, 4), 6.0))


def test_retain_graph_and_freed_graph_error():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * np.exp([1.0, 2.0]), rtol=1e-6)
    with pytest.raises(ng.GradError, match="second time"):
        y.backward()


def test_graph_freed_after_backward():
    x = ng.tensor(np.ones(4, np.float32), requires_grad=True)
    h = x.exp()  # exp keeps its output for the VJP
    ref = weakref.ref(h._data)
    y = (h * 2).sum()
    del h
    gc.collect()
    assert ref() is not None  # still needed by the pending backward
    y.backward()
    gc.collect()
    assert ref() is None  # freed once its VJP ran, although y is alive
    assert y.node.args is None and y.node.out is None


def test_create_graph_gives_second_derivative():
    x = ng.tensor(1.5, requires_grad=True)
    y = x ** 3
    (g,) = ng.autodiff.grad(y, [x], create_graph=True)
    assert g.item() == pytest.approx(3 * 1.5 ** 2)
    (h,) = ng.autodiff.grad(g, [x])
    assert h.item() == pytest.approx(6 * 1.5)


def test_backward_create_graph_then_backward_on_grad():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    (x.sin().sum()).backward(create_graph=True)
    g = x.grad
    x.grad = None
    g.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -np.sin([1.0, 2.0]), rtol=1e-6)


def test_backward_inputs_restricts_accumulation():
    a = ng.tensor(1.0, requires_grad=True)
    b = ng.tensor(2.0, requires_grad=True)
    (a * b).backward(inputs=[a])
    assert a.grad.item() == 2.0 and b.grad is None


def test_non_scalar_backward_needs_gradient():
    x = ng.ones(3, requires_grad=True)
    y = x * 2
    with pytest.raises(ng.GradError, match="scalar"):
        y.backward()
    y.backward(ng.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2, 4, 6])
    with pytest.raises(ng.GradError, match="shape"):
        (x * 2).backward(ng.ones(4))


def test_backward_without_graph_errors():
    with pytest.raises(ng.GradError, match="does not require grad"):
        ng.ones(3).sum().backward()
    x = ng.ones(3, requires_grad=True)
    with ng.no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad
    with pytest.raises(ng.GradError):
        y.backward()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(ng.GradError, match="floating"):
        ng.tensor([1, 2], requires_grad=True)
    with pytest.raises(ng.GradError, match="floating"):
        ng.arange(3).requires_grad_()
    with pytest.raises(ng.GradError, match="integer"):
        ng.grad(lambda x: (x * 1.0).sum())(ng.arange(3))


def test_no_grad_and_enable_grad():
    x = ng.ones(2, requires_grad=True)
    with ng.no_grad():
        assert not (x * 2).requires_grad
        with ng.enable_grad():
            assert (x * 2).requires_grad
    assert (x * 2).requires_grad

    @ng.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad
    assert ng.is_grad_enabled()
    with ng.set_grad_enabled(False):
        assert not ng.is_grad_enabled()
    assert ng.is_grad_enabled()


def test_detach_and_requires_grad_():
    x = ng.ones(2, requires_grad=True)
    y = (x * 2).detach()
    assert not y.requires_grad and y.node is None
    z = ng.ones(2).requires_grad_()
    assert z.requires_grad and z.is_leaf
    assert not (x * 2).is_leaf


def test_hooks_modify_gradient_and_remove():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    hx = x.register_hook(lambda g: seen.append(g.numpy().copy()))
    h = x * 3
    hh = h.register_hook(lambda g: g * 10)
    (h * h).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * 10 * 2 * np.array([3.0, 6.0]))
    np.testing.assert_allclose(seen[0], x.grad.numpy())
    hx.remove()
    hh.remove()
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3, 3])
    assert len(seen) == 1


def test_retain_grad_on_intermediate():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    h.retain_grad()
    (h ** 2).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), [4.0, 8.0])


def test_inplace_change_of_saved_value_is_detected():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    z = y * 2
    with ng.no_grad():
        y += 1
    with pytest.raises(ng.InplaceError, match="exp"):  # (y * 2 saves nothing of y)
        z.sum().backward()


def test_inplace_on_saved_input_is_detected():
    w = ng.tensor([1.0, 2.0], requires_grad=True)
    data = ng.tensor([3.0, 4.0])
    y = (w * data).sum()
    data.add_(1.0)  # the data tensor does not require grad: mutation happens in place
    with pytest.raises(ng.InplaceError):
        y.backward()


@pytest.mark.parametrize("form", ["tensor, constant", "constant, tensor", "number",
                                  "same tensor", "unary", "both require grad"])
@pytest.mark.parametrize("changed", ["h", "c"])
def test_an_op_saves_what_its_gradients_read_as_pytorch(form, changed):
    # each operand form bind records (one operand; two tensors; a tensor and a number): a
    # value changed in place after the op fails backward exactly where PyTorch's does
    torch = pytest.importorskip("torch")

    def run(lib, no_grad):
        a = lib.tensor([1.0, 2.0], requires_grad=True)
        c = lib.tensor([3.0, 4.0], requires_grad=form == "both require grad")
        h = a * 1.0  # not a leaf, so it may change in place
        y = {"tensor, constant": lambda: h * c, "constant, tensor": lambda: c * h,
             "number": lambda: h * 0.5, "same tensor": lambda: h * h,
             "unary": lambda: h.sin(), "both require grad": lambda: h * c}[form]()
        with no_grad():
            (h if changed == "h" else c).add_(1.0)
        try:
            y.sum().backward()
        except RuntimeError:
            return "refused"
        return a.grad.tolist()

    want = run(torch, torch.no_grad)
    got = run(ng, ng.no_grad)
    if want == "refused" or got == "refused":
        assert got == want
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_inplace_on_leaf_requiring_grad_is_refused():
    x = ng.ones(2, requires_grad=True)
    with pytest.raises(ng.GradError, match="leaf"):
        x += 1
    with pytest.raises(ng.GradError, match="leaf"):
        x[0] = 3.0
    with ng.no_grad():
        x -= 0.5
        x[1] = 2.0
    np.testing.assert_allclose(x.numpy(), [0.5, 2.0])


def test_inplace_on_non_leaf_records_out_of_place():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    y *= 3
    y[0] = 5.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 3.0])


def test_inplace_dtype_error():
    i = ng.arange(3)
    with pytest.raises(ng.DTypeError):
        i += 0.5


def test_anomaly_forward_names_primitive_and_site():
    with ng.detect_anomaly():
        x = ng.tensor([0.0, 1.0], requires_grad=True)
        with pytest.warns(RuntimeWarning), pytest.raises(ng.AnomalyError, match="'log'") as e:
            ng.log(x)
    assert "test_autodiff.py" in str(e.value)


def test_anomaly_backward_names_primitive_and_where_created():
    with ng.detect_anomaly():
        x = ng.tensor([0.0, 1.0], requires_grad=True)
        y = ng.sqrt(x).sum()
        with pytest.warns(RuntimeWarning), pytest.raises(ng.AnomalyError) as e:
            y.backward()
    msg = str(e.value)
    assert "backward of 'sqrt'" in msg and "test_autodiff.py" in msg


def test_anomaly_off_gives_ieee_results():
    x = ng.tensor([0.0, 1.0], requires_grad=True)
    with pytest.warns(RuntimeWarning):
        y = ng.sqrt(x).sum()
        y.backward()
    assert np.isinf(x.grad.numpy()[0])


def test_deep_graph_does_not_recurse():
    x = ng.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(20000):
        y = y * 1.0
    y.backward()
    assert x.grad.item() == 1.0


def test_same_input_twice():
    x = ng.tensor(3.0, requires_grad=True)
    (x * x).backward()
    assert x.grad.item() == 6.0


def test_autodiff_grad_unused_input():
    a = ng.tensor(1.0, requires_grad=True)
    b = ng.tensor(1.0, requires_grad=True)
    with pytest.raises(ng.GradError, match="not used"):
        ng.autodiff.grad(a * 2, [a, b])
    ga, gb = ng.autodiff.grad(a * 2, [a, b], allow_unused=True)
    assert ga.item() == 2.0 and gb is None


# --- the host-array VJPs (vjp_raw) against the rules --------------------------------------------
def _grads_both_ways(monkeypatch, build, params):
    """The gradients of ``build(*params)`` with the raw VJPs, then with the rules alone."""
    from nodegrad.primitive import REGISTRY

    out = []
    for raw in (True, False):
        if not raw:
            for p in REGISTRY.values():
                monkeypatch.setattr(p, "vjp_raw", None)
        ts = [ng.tensor(p, requires_grad=True) for p in params]
        build(*ts).backward()
        out.append([t.grad.numpy() for t in ts])
    return out


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["linear2d", "linear3d", "linear1d", "linear_nobias", "matmul",
                                  "relu_ce", "conv1d", "conv2d_strided", "conv_grouped",
                                  "conv_nobias"])
def test_raw_vjps_give_the_rules_bits(monkeypatch, case, dt):
    F = ng.nn.functional
    rng = np.random.default_rng(0)

    def r(*s):
        return rng.standard_normal(s).astype(dt)

    y = ng.tensor(rng.integers(0, 10, 16))
    builds = {
        "linear2d": (lambda x, w, b: (ng.linear(x, w, b) ** 2).sum(), [r(16, 5), r(7, 5), r(7)]),
        "linear3d": (lambda x, w, b: (ng.linear(x, w, b) ** 2).sum(),
                     [r(4, 3, 5), r(7, 5), r(7)]),
        "linear1d": (lambda x, w, b: (ng.linear(x, w, b) ** 2).sum(), [r(5), r(7, 5), r(7)]),
        "linear_nobias": (lambda x, w: (ng.linear(x, w) ** 2).sum(), [r(16, 5), r(7, 5)]),
        "matmul": (lambda a, b: ((a @ b) ** 2).sum(), [r(6, 5), r(5, 3)]),
        "relu_ce": (lambda x, w: F.cross_entropy(ng.linear(x, w).relu() - 0.1, y),
                    [r(16, 5), r(10, 5)]),
        "conv1d": (lambda x, w, b: (F.conv1d(x, w, b, padding=1) ** 2).sum(),
                   [r(3, 4, 9), r(6, 4, 3), r(6)]),
        "conv2d_strided": (lambda x, w, b: (F.conv2d(x, w, b, stride=2) ** 2).sum(),
                           [r(2, 3, 7, 7), r(4, 3, 3, 3), r(4)]),
        "conv_grouped": (lambda x, w, b: (F.conv2d(x, w, b, groups=2, dilation=2) ** 2).sum(),
                         [r(2, 4, 8, 8), r(6, 2, 3, 3), r(6)]),
        "conv_nobias": (lambda x, w: (F.conv1d(x, w, stride=2) ** 2).sum(),
                        [r(3, 4, 11), r(5, 4, 3)]),
    }
    build, params = builds[case]
    raw, rules = _grads_both_ways(monkeypatch, build, params)
    for a, b in zip(raw, rules):
        assert a.dtype == b.dtype == dt
        np.testing.assert_array_equal(a, b)


def test_raw_vjps_run_only_for_a_plain_first_order_backward(monkeypatch):
    from nodegrad.ops import nn as opsnn

    calls = []
    raw = opsnn._linear.vjp_raw
    monkeypatch.setattr(opsnn._linear, "vjp_raw", lambda *a, **k: calls.append(1) or raw(*a, **k))
    x = ng.tensor(np.ones((4, 3), np.float32))
    w = ng.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    ng.linear(x, w).sum().backward()
    assert calls == [1]
    (gw,) = ng.autodiff.grad((ng.linear(x, w) ** 2).sum(), [w], create_graph=True)
    assert calls == [1] and gw.requires_grad  # create_graph: the rules, which record a graph
    # a float64 cotangent on a float32 output takes the output's dtype (PyTorch's rule): the
    # raw VJP, on float32
    ng.linear(x, w).backward(ng.tensor(np.ones((4, 2))))
    assert calls == [1, 1] and w.grad.dtype == np.float32
    # grad of a per-example function under vmap: the rules, batched
    ng.vmap(ng.grad(lambda w, x: ng.linear(x, w).sum()), in_axes=(None, 0))(w, x)
    assert calls == [1, 1]
