"""Functions with their own gradient rule: ``ng.custom_vjp`` (JAX's semantics) and
``ng.autograd.Function`` (PyTorch's), against finite differences, torch and the transforms."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import GradError, ShapeError

torch = pytest.importorskip("torch")


def _clip_gradient():
    @ng.custom_vjp
    def clip_gradient(x):
        return x * 1.0

    clip_gradient.defvjp(lambda x: (x * 1.0, None), lambda res, g: (ng.clip(g, -1.0, 1.0),))
    return clip_gradient


def _sin():
    @ng.custom_vjp
    def f(x):
        return ng.sin(x)

    f.defvjp(lambda x: (ng.sin(x), ng.cos(x)), lambda c, g: (c * g,))
    return f


def test_custom_vjp_value_is_the_function_and_gradient_is_the_rule():
    clip = _clip_gradient()
    x = ng.tensor([0.5, -2.0], requires_grad=True)
    y = clip(x) * 5
    np.testing.assert_array_equal(y.detach().numpy(), [2.5, -10.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])  # 5 clipped to 1
    g = ng.grad(lambda x: (clip(x) * -0.5).sum())(ng.tensor([1.0, 2.0]))
    np.testing.assert_array_equal(g.numpy(), [-0.5, -0.5])  # inside the clip: unchanged


def test_second_derivative_differentiates_the_backward_and_its_residuals():
    f = _sin()
    for v in (0.3, -1.2):
        x = ng.tensor(v, dtype=ng.float64)
        np.testing.assert_allclose(ng.grad(f)(x).item(), np.cos(v), rtol=1e-14)
        np.testing.assert_allclose(ng.grad(ng.grad(f))(x).item(), -np.sin(v), rtol=1e-14)


def test_pytree_arguments_outputs_and_nondiff_argnums():
    def g(scale, p):
        return {"y": p["a"] * scale, "z": (p["a"] * p["b"]).sum()}

    f = ng.custom_vjp(g, nondiff_argnums=(0,))

    def fwd(scale, p):
        return g(scale, p), p

    def bwd(scale, p, ct):  # the true VJP, written out
        return ({"a": ct["y"] * scale + ct["z"] * p["b"], "b": ct["z"] * p["a"]},)

    f.defvjp(fwd, bwd)
    rng = np.random.default_rng(0)
    p = {"a": ng.tensor(rng.standard_normal(3)), "b": ng.tensor(rng.standard_normal(3))}

    def loss(fn):
        return lambda p: (fn(2.0, p)["y"] ** 2).sum() + fn(2.0, p)["z"] * 3

    got, want = ng.grad(loss(f))(p), ng.grad(loss(g))(p)
    for k in "ab":
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-6)


def test_custom_vjp_under_jit_vmap_and_their_compositions():
    f, clip = _sin(), _clip_gradient()
    step = ng.jit(ng.grad(lambda x: (f(x) ** 2).sum()))
    for v in (0.3, 0.9):  # a replay computes with the new input, residuals included
        x = np.array([v, 2 * v])
        np.testing.assert_allclose(step(ng.tensor(x, dtype=ng.float64)).numpy(),
                                   2 * np.sin(x) * np.cos(x), rtol=1e-13)
    xs = ng.tensor([[1.0, 2.0], [-3.0, 0.1]])
    per_example = ng.vmap(ng.grad(lambda x: (clip(x) * 5).sum()))(xs)
    np.testing.assert_array_equal(per_example.numpy(), np.ones((2, 2)))  # the rule, batched
    np.testing.assert_allclose(ng.grad(lambda x: ng.vmap(f)(x).sum())(
        ng.tensor([0.1, 0.2], dtype=ng.float64)).numpy(), np.cos([0.1, 0.2]), rtol=1e-14)


def test_custom_vjp_errors_name_the_function_and_the_fix():
    @ng.custom_vjp
    def h(x, y):
        return x * y

    with pytest.raises(TypeError, match=r"custom_vjp\[h\].*defvjp"):
        h(ng.ones(2, requires_grad=True), 2.0)
    h.defvjp(lambda x, y: (x * y, y), lambda y, g: (g * y,))
    with pytest.raises(GradError, match="returned 1 gradients, expected 2"):
        ng.grad(lambda x: h(x, ng.ones(2)).sum())(ng.ones(2))
    h.defvjp(lambda x, y: (x * y, y), lambda y, g: (g.sum(), None))
    with pytest.raises(ShapeError, match=r"shape \(\) for an input of shape \(2,\)"):
        ng.grad(lambda x: h(x, ng.ones(2)).sum())(ng.ones(2))
    with pytest.raises(TypeError, match="forward-mode"):
        ng.jvp(_sin(), (ng.tensor(0.3),), (ng.tensor(1.0),))


# --- PyTorch's autograd.Function -------------------------------------------------------------
def _twins():
    """The same Function in both libraries: two outputs, a saved tensor, a Python constant."""

    def make(base):
        class MulExp(base):
            @staticmethod
            def forward(ctx, x, w, k):
                e = (x * w).exp()
                ctx.save_for_backward(x, w, e)
                ctx.k = k
                return e * k, (x * w).sum()

            @staticmethod
            def backward(ctx, ge, gs):
                x, w, e = ctx.saved_tensors
                inner = ge * e * ctx.k + gs
                return inner * w, inner * x, None

        return MulExp

    return make(ng.autograd.Function), make(torch.autograd.Function)


@pytest.mark.parametrize("use", ["both", "first", "second"])
def test_function_gradients_equal_torch(use):
    mine, theirs = _twins()
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    grads = []
    for fn, lib in ((mine, ng), (theirs, torch)):
        xt = lib.tensor(x, requires_grad=True)
        wt = lib.tensor(w, requires_grad=True)
        e, s = fn.apply(xt, wt, 1.5)
        loss = {"both": (e ** 2).sum() + s * 2, "first": (e ** 2).sum(), "second": s * 2}[use]
        loss.backward()
        grads.append((xt.grad.numpy(), wt.grad.numpy(), e.detach().numpy()))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_function_setup_context_needs_input_grad_and_non_differentiable_outputs():
    seen = []

    class Sq(ng.autograd.Function):
        @staticmethod
        def forward(x, y):
            return x * x + y, (x > 0).sum()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.mark_non_differentiable(output[1])

        @staticmethod
        def backward(ctx, g, g_count):
            seen.append((ctx.needs_input_grad, g_count.shape))
            (x,) = ctx.saved_tensors
            return 2 * x * g, g

    x = ng.tensor([1.0, -2.0], requires_grad=True)
    out, count = Sq.apply(x, ng.ones(2))
    assert not count.requires_grad and count.item() == 1
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, -4.0])
    assert seen == [((True, False), ())]


def test_function_twice_differentiable_backward_and_once_differentiable():
    class Cube(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * g

    x = ng.tensor([2.0], dtype=ng.float64, requires_grad=True)
    (g,) = ng.autograd.grad(Cube.apply(x).sum(), [x], create_graph=True)
    (h,) = ng.autograd.grad(g.sum(), [x])
    assert g.item() == 12.0 and h.item() == 12.0  # 6x at 2

    class Once(Cube):
        @staticmethod
        @ng.autograd.once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * g

    x = ng.tensor([2.0], dtype=ng.float64, requires_grad=True)
    Once.apply(x).sum().backward()
    assert x.grad.item() == 12.0
    (g,) = ng.autograd.grad(Once.apply(x).sum(), [x], create_graph=True)
    with pytest.raises(GradError, match="once_differentiable"):
        ng.autograd.grad(g.sum(), [x])


def test_function_errors_and_no_graph_without_grad():
    class Bad(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g, g

    x = ng.ones(2, requires_grad=True)
    with pytest.raises(GradError, match="Bad.backward: backward returned 2 gradients, expected 1"):
        Bad.apply(x).sum().backward()
    with ng.no_grad():
        assert Bad.apply(x).node is None
    assert Bad.apply(ng.ones(2)).node is None


def test_a_jitted_training_step_through_a_function_equals_eager():
    import copy

    class Sq(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    def make(model):
        opt = ng.optim.SGD(model.parameters(), lr=0.1)

        def step(x):
            opt.zero_grad()
            loss = Sq.apply(model(x)).sum()
            loss.backward()
            opt.step()
            return loss

        return step, opt

    lin = ng.nn.Linear(3, 2)
    twin = copy.deepcopy(lin)
    step, opt = make(lin)
    jitted = ng.jit(step, state=(lin, opt))
    eager, _ = make(twin)
    for _ in range(3):
        x = ng.randn(4, 3)
        assert jitted(x).item() == eager(x).item()
    np.testing.assert_array_equal(lin.weight.numpy(), twin.weight.numpy())


def _vmappable(base):
    class MulExpV(base):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, w, k):
            e = (x * w).exp()
            return e * k, (x * w).sum()

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, w, k = inputs
            ctx.save_for_backward(x, w, output[0])
            ctx.k = k

        @staticmethod
        def backward(ctx, ge, gs):
            x, w, ek = ctx.saved_tensors
            inner = ge * ek + gs
            return inner * w, inner * x, None

    return MulExpV


def test_function_with_generate_vmap_rule_under_vmap_grad_equals_torch_func():
    """Per-example gradients through an autograd.Function (vmap of grad, its forward and
    backward run under vmap), as torch.func gives them; without the flag it refuses, as
    PyTorch's does, instead of the zero gradients it gave."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal(3)
    got = {}
    for lib, vmap, grad in ((ng, ng.vmap, ng.grad), (torch, torch.func.vmap, torch.func.grad)):
        fn = _vmappable(lib.autograd.Function)

        def loss(w, xi, fn=fn):
            e, s = fn.apply(xi, w, 1.5)
            return (e ** 2).sum() + s * 2

        got[lib] = vmap(grad(loss), in_dims=(None, 0))(lib.tensor(w), lib.tensor(x)).numpy()
        assert np.allclose(fn.apply(lib.tensor(x), lib.tensor(w), 1.5)[1].numpy(),
                           (x * w).sum())
    np.testing.assert_allclose(got[ng], got[torch], rtol=1e-12)
    per = ng.vmap(ng.vmap(ng.grad(lambda w, xi: _vmappable(ng.autograd.Function).apply(
        xi, w, 2.0)[0].sum()), in_dims=(None, 0)), in_dims=(None, 0))(
        ng.tensor(w), ng.tensor(x.reshape(2, 2, 3)))
    assert per.shape == (2, 2, 3)

    class Plain(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    with pytest.raises(NotImplementedError, match="generate_vmap_rule = True"):
        ng.vmap(ng.grad(lambda v: Plain.apply(v).sum()))(ng.tensor(x))
    assert ng.vmap(Plain.apply)(ng.tensor(x)).shape == (4, 3)  # no gradient: runs as is
