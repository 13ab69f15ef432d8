"""The autograd API against PyTorch's semantics: Functions that save their outputs or see their
saved tensors change, gradients that never alias what the user holds, mode decorators, no-op
views, retain_grad with in-place ops, cotangent dtypes, hook and ``.grad`` checks. The expected
values are PyTorch's (2.13)."""

import weakref

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import AnomalyError, DTypeError, GradError, InplaceError, ShapeError

A = ng.autograd


def _arr(t) -> np.ndarray:
    return np.asarray(t.detach().numpy())


# --- 1. a Function that saves its own output --------------------------------------------------
class _Square(A.Function):
    @staticmethod
    def forward(ctx, x):
        y = x * x
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * 2 * y / x


class _Exp(A.Function):
    @staticmethod
    def forward(ctx, x):
        r = x.exp()
        ctx.save_for_backward(r)
        return r

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return g * r


def test_a_saved_output_is_the_returned_output_in_the_graph():
    x = ng.tensor([3.0], dtype=ng.float64, requires_grad=True)
    (g,) = A.grad(_Square.apply(x).sum(), x, create_graph=True)
    assert g.item() == 6.0
    assert A.grad(g.sum(), x)[0].item() == pytest.approx(2.0)  # was -2: y taken as a constant
    # a backward reading only the saved output: its result is differentiable too
    x = ng.tensor([0.5, 1.0], dtype=ng.float64, requires_grad=True)
    (g,) = A.grad(_Exp.apply(x).sum(), x, create_graph=True)
    assert g.requires_grad
    np.testing.assert_allclose(_arr(A.grad(g.sum(), x)[0]), np.exp([0.5, 1.0]), rtol=1e-14)


def test_a_saved_output_with_several_outputs_and_setup_context():
    class Two(A.Function):
        @staticmethod
        def forward(x):
            return x * 2, x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], output[1])

        @staticmethod
        def backward(ctx, ga, gb):
            x, sq = ctx.saved_tensors
            return 2 * ga + gb * 2 * sq / x

    x = ng.tensor([1.5, 2.0], dtype=ng.float64, requires_grad=True)
    a, b = Two.apply(x)
    (g,) = A.grad((a + b).sum(), x, create_graph=True)
    np.testing.assert_allclose(_arr(g), 2 + 2 * np.array([1.5, 2.0]))
    np.testing.assert_allclose(_arr(A.grad(g.sum(), x)[0]), [2.0, 2.0])


# --- 2. saved tensors changed in place before backward ----------------------------------------
class _Mul(A.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, g * a


class _Sq(A.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_a_saved_tensor_written_in_place_makes_backward_refuse():
    a = ng.tensor([1.0, 2.0], requires_grad=True)
    b = ng.tensor([3.0, 4.0])
    y = _Mul.apply(a, b)
    b.mul_(10)
    with pytest.raises(InplaceError, match=r"Function\[_Mul\]"):
        y.sum().backward()  # was a.grad [30, 40]
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = _Sq.apply(x)
    with ng.no_grad():
        x.mul_(10)
    with pytest.raises(InplaceError):
        y.sum().backward()
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    h = x * 1
    y = _Sq.apply(h)
    h.add_(100)  # recorded: h takes a new value, its own counter moves on
    with pytest.raises(InplaceError):
        y.sum().backward()


def test_a_saved_tensor_rebound_with_views_keeps_its_saved_value_as_plain_ops_do():
    grads = []
    for use in ("plain", "function"):
        x = ng.tensor([1.0, 2.0], requires_grad=True)
        w = ng.tensor([10.0, 10.0], requires_grad=True)
        h = x * 1
        v = h[0:1]  # h shares its counter with a view: a rebind keeps what nodes saved
        y = h * h if use == "plain" else _Sq.apply(h)
        h.add_(w)
        y.sum().backward()
        grads.append(_arr(x.grad))
        assert _arr(v).tolist() == [11.0]
    np.testing.assert_array_equal(grads[1], grads[0])
    np.testing.assert_array_equal(grads[1], [2.0, 4.0])  # was [22, 24]: the new value


def test_a_saved_output_changed_in_place_makes_backward_refuse():
    for recorded in (True, False):
        x = ng.tensor([0.0, 1.0], requires_grad=True)
        y = _Exp.apply(x)
        if recorded:
            y.mul_(2)
        else:
            with ng.no_grad():
                y.mul_(2)
        with pytest.raises(InplaceError, match=r"Function\[_Exp\]"):
            y.sum().backward()


# --- 3. .grad never shares memory with what the user or a hook holds --------------------------
def test_a_function_returning_a_tensor_it_keeps():
    class Pre(A.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.dx = 3 * x ** 2
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            return ctx.dx

    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = Pre.apply(x).sum()
    ctx_dx = y.node.parents[0].parents[0].params["call"].ctx.dx
    for _ in range(2):
        y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(_arr(x.grad), [9.0, 36.0])  # was [12, 48]
    np.testing.assert_array_equal(_arr(ctx_dx), [3.0, 12.0])


def test_a_custom_vjp_returning_its_residual():
    @ng.custom_vjp
    def f(x):
        return x * 2

    res = ng.tensor([2.0, 2.0])
    f.defvjp(lambda x: (x * 2, res), lambda r, g: (r,))
    x = ng.tensor([1.0, 1.0], requires_grad=True)
    f(x).sum().backward()
    f(x).sum().backward()
    np.testing.assert_array_equal(_arr(x.grad), [4.0, 4.0])
    np.testing.assert_array_equal(_arr(res), [2.0, 2.0])


def test_retained_and_hooked_gradients_stay_as_they_were():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x + 1
    y.retain_grad()
    (y * y).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(_arr(y.grad), [4.0, 6.0])  # was [7, 9]
    np.testing.assert_array_equal(_arr(x.grad), [7.0, 9.0])
    # a leaf hook keeping its argument
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    cap = []
    x.register_hook(cap.append)
    (x * 2).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_array_equal(_arr(cap[0]), [2.0, 2.0])  # was [7, 7]
    np.testing.assert_array_equal(_arr(x.grad), [7.0, 7.0])
    # a non-leaf hook keeping its argument, which goes on unchanged to the leaf
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    cap = []
    y = x * 1.0
    y.register_hook(cap.append)
    (y * 2).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_array_equal(_arr(cap[0]), [2.0, 2.0])
    # a hook returning the user's tensor
    c = ng.ones(2)
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    x.register_hook(lambda g: c)
    (x * 2).sum().backward()
    (x * 2).sum().backward()
    np.testing.assert_array_equal(_arr(c), [1.0, 1.0])
    np.testing.assert_array_equal(_arr(x.grad), [2.0, 2.0])


def test_the_engines_own_gradient_is_kept_and_added_into_in_place():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    w = ng.tensor([3.0, 4.0])
    (x * w).sum().backward()
    first = x.grad._data
    (x * w).sum().backward()
    assert x.grad._data is first  # in place, as before
    np.testing.assert_array_equal(_arr(x.grad), [6.0, 8.0])
    assert _arr(w).tolist() == [3.0, 4.0]


# --- 4, 5. the mode decorators ----------------------------------------------------------------
def test_set_grad_enabled_as_a_decorator_leaves_the_mode_alone():
    x = ng.tensor([1.0], requires_grad=True)

    @ng.set_grad_enabled(False)
    def f(t):
        return t * 2, ng.is_grad_enabled()

    assert ng.is_grad_enabled()  # was False from here on
    y, inside = f(x)
    assert not inside and not y.requires_grad and ng.is_grad_enabled()
    assert f.__name__ == "f"
    with ng.set_grad_enabled(False):
        assert not ng.is_grad_enabled()
    assert ng.is_grad_enabled()
    ng.set_grad_enabled(False)  # a call of its own sets the mode, as PyTorch's
    try:
        assert not ng.is_grad_enabled()
    finally:
        ng.set_grad_enabled(True)


@pytest.mark.parametrize("mode, want", [(ng.no_grad, False), (ng.enable_grad, True),
                                        (ng.inference_mode, False)])
def test_mode_decorators_cover_each_resume_of_a_generator(mode, want):
    @mode()
    def gen():
        """Doc."""
        got = yield ng.is_grad_enabled()
        yield got, ng.is_grad_enabled()
        return "done"

    assert gen.__name__ == "gen" and gen.__doc__ == "Doc."
    with ng.set_grad_enabled(not want):
        it = gen()
        assert next(it) is want  # was the caller's mode
        assert ng.is_grad_enabled() is not want
        assert it.send(7) == (7, want)
        with pytest.raises(StopIteration) as stop:
            next(it)
        assert stop.value.value == "done"
        assert ng.is_grad_enabled() is not want


def test_a_generator_sees_a_thrown_exception_inside_the_mode():
    seen = []

    @ng.no_grad()
    def gen():
        try:
            yield 1
        except ValueError:
            seen.append(ng.is_grad_enabled())
            yield 2

    it = gen()
    next(it)
    assert it.throw(ValueError()) == 2 and seen == [False]
    it.close()
    assert ng.is_grad_enabled()


def test_no_grad_and_enable_grad_work_without_parentheses():
    x = ng.tensor([1.0], requires_grad=True)

    @ng.no_grad
    def off(t):
        return (t * 2).requires_grad

    @ng.enable_grad
    def on(t):
        return (t * 2).requires_grad

    assert off(x) is False and off.__name__ == "off"
    with ng.no_grad():
        assert on(x) is True


# --- 6. views that change nothing -------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda t: t.view(2), lambda t: t.reshape(2), lambda t: t.reshape(-1), lambda t: t.squeeze(),
    lambda t: t.expand_as(t), lambda t: t.expand(2), lambda t: t.permute(0), lambda t: t.T,
    lambda t: t.transpose(0, 0), lambda t: t.view_as(t),
], ids=["view", "reshape", "reshape-1", "squeeze", "expand_as", "expand", "permute", "T",
        "transpose", "view_as"])
def test_a_no_op_view_is_a_new_tensor_of_the_graph(make):
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    v = make(x)
    assert v is not x and not v.is_leaf and v.requires_grad  # was x itself: a leaf
    with pytest.raises(GradError, match="can't detach views in-place"):
        v.detach_()
    assert x.requires_grad
    with ng.no_grad():
        assert not make(x).requires_grad  # PyTorch's views made without recording
    # its hooks and retained gradient are its own, not its base's
    h = x * 3
    f = make(h)
    f.retain_grad()
    seen = []
    f.register_hook(lambda g: seen.append(_arr(g)))
    (h.sum() + (f * 5).sum()).backward()
    np.testing.assert_array_equal(_arr(f.grad), [5.0, 5.0])  # was [6, 6]
    np.testing.assert_array_equal(seen[0], [5.0, 5.0])
    np.testing.assert_array_equal(_arr(x.grad), [18.0, 18.0])


def test_a_no_op_view_in_place_and_flatten_with_nothing_to_merge():
    x = ng.tensor([[1.0, 2.0]], requires_grad=True)
    h = x * 1
    v = h.reshape(1, 2)
    v.mul_(3)  # the view's base changes with it
    np.testing.assert_array_equal(_arr(h), [[3.0, 6.0]])
    h.sum().backward()
    np.testing.assert_array_equal(_arr(x.grad), [[3.0, 3.0]])
    y = ng.tensor([1.0, 2.0], requires_grad=True)
    assert y.flatten() is y  # as PyTorch's flatten (start_dim == end_dim)
    assert (y * 2).detach_().requires_grad is False  # not a view: detaches


# --- 7. retain_grad and in-place ops, and the hooks' order ------------------------------------
@pytest.mark.parametrize("inplace, dx", [
    (lambda y: y.mul_(3), 6.0), (lambda y: y.__imul__(3), 6.0),
    (lambda y: y.clamp_(min=-100.0), 2.0), (lambda y: y.add_(1).mul_(3), 6.0),
], ids=["mul_", "imul", "clamp_", "twice"])
def test_retain_grad_follows_an_in_place_change(inplace, dx):
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    inplace(y)
    assert y.retains_grad
    (y * ng.tensor([1.0, 10.0])).sum().backward()
    np.testing.assert_array_equal(_arr(y.grad), [1.0, 10.0])  # was the old value's: [3, 30]
    np.testing.assert_array_equal(_arr(x.grad), [dx, 10 * dx])
    y.retain_grad()  # again: nothing changes
    assert y.retains_grad and sum(type(h).__name__ == "RetainGrad" for h in y.node.hooks) == 1


def test_retain_grad_runs_after_the_tensors_other_hooks():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    y.register_hook(lambda g: g * 10)
    y.sum().backward()
    np.testing.assert_array_equal(_arr(y.grad), [10.0, 10.0])  # was [1, 1]
    np.testing.assert_array_equal(_arr(x.grad), [20.0, 20.0])


# --- 8. the dtype of a given cotangent --------------------------------------------------------
def test_a_given_cotangent_takes_the_outputs_dtype():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    (x * 2).backward(ng.tensor([1, 1]))
    assert x.grad.dtype == np.float32  # was int64
    (x * 2).backward(ng.tensor([1.0, 1.0], dtype=ng.float64))
    assert x.grad.dtype == np.float32  # was float64
    np.testing.assert_array_equal(_arr(x.grad), [4.0, 4.0])
    (g,) = A.grad(x * 2, x, grad_outputs=ng.tensor([1.0, 1.0], dtype=ng.float64))
    assert g.dtype == np.float32
    lin = ng.nn.Linear(2, 1)  # was a DTypeError in matmul's backward
    lin(ng.ones(3, 2)).sum().backward(ng.tensor(1.0, dtype=ng.float64))
    assert lin.weight.grad.dtype == np.float32


# --- 9. a hook may not change the gradient's shape or dtype -----------------------------------
def test_a_hook_changing_the_gradients_shape_or_dtype_is_refused():
    def total(g):
        return g.sum()

    x = ng.tensor([1.0, 2.0], requires_grad=True)
    x.register_hook(total)
    with pytest.raises(GradError, match="hook 'total' changed the size"):
        (x * 2).sum().backward()  # was a 0-d x.grad
    y = ng.tensor([1.0, 2.0], requires_grad=True) * 2
    y.register_hook(lambda g: g.astype(ng.float64))
    with pytest.raises(GradError, match="changed the type"):
        (y * 2).sum().backward()
    z = ng.tensor([1.0, 2.0], requires_grad=True)
    z.register_hook(lambda g: 5)
    with pytest.raises(TypeError, match="returned int"):
        (z * 2).sum().backward()


# --- 10. removing a hook ----------------------------------------------------------------------
def test_a_handle_removes_its_own_registration_once():
    calls = []

    def hook(g):
        calls.append(1)

    x = ng.tensor([1.0, 2.0], requires_grad=True)
    h1 = x.register_hook(hook)
    x.register_hook(hook)
    h1.remove()
    h1.remove()
    (x * 2).sum().backward()
    assert len(calls) == 1  # was 0: the second remove took the other registration

    class Eq:  # a hook that compares equal to anything: removal goes by identity
        def __call__(self, g):
            calls.append(2)

        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    y = ng.tensor([1.0], requires_grad=True)
    y.register_hook(Eq())
    handle = y.register_hook(Eq())
    handle.remove()
    calls.clear()
    (y * 2).sum().backward()
    assert calls == [2]


# --- 11. assigning .grad ----------------------------------------------------------------------
def test_assigning_grad_checks_shape_dtype_and_type():
    x = ng.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    with pytest.raises(ShapeError, match=r"assigned grad has shape \(3,\)"):
        x.grad = ng.ones(3)
    with pytest.raises(DTypeError, match="assigned grad has dtype float64"):
        x.grad = ng.ones(4, dtype=ng.float64)
    with pytest.raises(TypeError, match="Tensor or None"):
        x.grad = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(GradError, match="its own grad"):
        x.grad = x
    assert x.grad is None
    g = ng.ones(4)
    x.grad = g
    assert x.grad is g
    (x * 2).sum().backward()  # added into the assigned tensor in place, as PyTorch
    np.testing.assert_array_equal(_arr(g), [3.0, 3.0, 3.0, 3.0])
    x.grad = None
    assert x.grad is None


# --- 12. anomaly mode names where a Function was applied --------------------------------------
def test_anomaly_mode_names_the_line_that_applied_a_function():
    class Bad(A.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    x = ng.tensor([1.0], requires_grad=True)
    with ng.autograd.detect_anomaly(), pytest.raises(AnomalyError) as err:
        Bad.apply(x).sum().backward()
    assert "test_fixes_autograd.py" in str(err.value) and "<unknown" not in str(err.value)


# --- 13. the smaller ones ---------------------------------------------------------------------
def test_set_materialize_grads_false_gives_none_for_an_unused_output():
    seen = []

    class Two(A.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(False)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, g1, g2):
            seen.append((g1, g2))
            return (0 if g1 is None else g1 * 2) + (0 if g2 is None else g2 * 3)

    x = ng.tensor([1.0, 2.0], requires_grad=True)
    p, q = Two.apply(x)
    q.sum().backward(retain_graph=True)
    assert seen[0][0] is None  # was zeros
    np.testing.assert_array_equal(_arr(x.grad), [3.0, 3.0])
    (p.sum() + q.sum()).backward()
    assert seen[1][0] is not None and seen[1][1] is not None


def test_apply_binds_keywords_and_defaults_for_setup_context():
    class Scale(A.Function):
        @staticmethod
        def forward(a, b=2.0):
            return a * b

        @staticmethod
        def setup_context(ctx, inputs, output):
            _, ctx.b = inputs

        @staticmethod
        def backward(ctx, g):
            return g * ctx.b, None

    x = ng.tensor([1.0, 1.0], requires_grad=True)
    assert A.grad(Scale.apply(x, b=3.0).sum(), x)[0].tolist() == [3.0, 3.0]
    assert A.grad(Scale.apply(x).sum(), x)[0].tolist() == [2.0, 2.0]
    with pytest.raises(TypeError, match="Scale.apply"):
        Scale.apply(x, c=1.0)


def test_backward_with_empty_inputs_is_refused_and_grad_gives_a_tuple():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(GradError, match="inputs argument cannot be empty"):
        (x * 2).sum().backward(inputs=[])
    with pytest.raises(GradError, match="inputs argument cannot be empty"):
        A.backward((x * 2).sum(), inputs=[])
    out = A.grad((x * 2).sum(), x)
    assert type(out) is tuple and out[0].tolist() == [2.0, 2.0]


def test_retain_grad_hooks_leave_no_cycle_behind():
    x = ng.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    ref = weakref.ref(y)
    del y
    assert ref() is None
