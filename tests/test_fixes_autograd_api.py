"""``torch.autograd``'s entry points against PyTorch's semantics: one gradient per output,
``is_grads_batched``, empty inputs, ``grad_fn.next_functions`` and ``functional``'s ``strict``
and argument checks. The expected values are PyTorch's (2.13), written out."""

import warnings

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import GradError, InplaceError

A = ng.autograd
F = ng.autograd.functional


def _x(values=(1.0, 2.0, 3.0)):
    return ng.tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


def _arr(t) -> np.ndarray:
    return np.asarray(t.detach().numpy())


# --- one gradient per output --------------------------------------------------------------
def test_grad_refuses_fewer_grad_outputs_than_outputs():
    x = _x()
    y = x ** 2
    with pytest.raises(GradError, match="2 output tensors and 1 gradients"):
        A.grad([y, y], x, [ng.ones(3, dtype=ng.float64)])  # was: the second y left out


def test_backward_refuses_more_grad_tensors_than_tensors():
    x = _x()
    z = (x * 2).sum()
    with pytest.raises(GradError, match="2 output tensors and 1 gradients"):
        A.backward([z, z], [ng.tensor(1.0, dtype=ng.float64)])
    assert x.grad is None
    with pytest.raises(GradError, match="1 output tensors and 3 gradients"):
        A.grad(x * 2, x, [1.0, 2.0, 3.0])  # a list is one gradient per output, as PyTorch


def test_grad_with_empty_inputs_is_refused():
    x = _x()
    with pytest.raises(GradError, match="inputs argument cannot be empty"):
        A.grad(x.sum(), [])


# --- is_grads_batched -------------------------------------------------------------------------
def test_is_grads_batched_gives_one_row_per_cotangent():
    x = _x((1.0, 2.0))
    y = x * x
    (g,) = A.grad([y, (x ** 3).sum()], x, [ng.eye(2, dtype=ng.float64),
                                          ng.tensor([1.0, 2.0], dtype=ng.float64)],
                  is_grads_batched=True)
    np.testing.assert_allclose(_arr(g), [[5.0, 12.0], [6.0, 28.0]])  # torch's values


def test_is_grads_batched_unused_inputs_and_second_order():
    x, w = _x((1.0, 2.0)), _x((1.0,))
    eye = ng.eye(2, dtype=ng.float64)
    gx, gw = A.grad(x * 2, [x, w], eye, is_grads_batched=True, allow_unused=True)
    np.testing.assert_allclose(_arr(gx), [[2.0, 0.0], [0.0, 2.0]])
    assert gw is None
    _, gw = A.grad(x * 2, [x, w], eye, is_grads_batched=True, materialize_grads=True)
    np.testing.assert_allclose(_arr(gw), [0.0])  # PyTorch's: zeros shaped as the input
    (j,) = A.grad(x ** 3, x, eye, is_grads_batched=True, create_graph=True)
    np.testing.assert_allclose(_arr(j), [[3.0, 0.0], [0.0, 12.0]])
    (h,) = A.grad(j.sum(), x)
    np.testing.assert_allclose(_arr(h), [6.0, 12.0])


def test_is_grads_batched_needs_a_batch_axis():
    x = _x((1.0, 2.0))
    for go in (ng.ones(2, dtype=ng.float64), None):
        with pytest.raises(GradError, match="leading batch axis"):
            A.grad(x * 2, x, go, is_grads_batched=True)


# --- grad_fn.next_functions -------------------------------------------------------------------
def test_next_functions_walk_the_graph_as_pytorchs():
    x = _x((1.0, 2.0))
    y = (x * 2 + ng.tensor([1.0, 1.0], dtype=ng.float64)).sum()
    ((add, k),) = y.grad_fn.next_functions
    assert k == 0 and add.name() == "add"
    (mul, _), (const, _) = add.next_functions
    assert const is None
    (acc, _), (two, _) = mul.next_functions
    assert acc.name() == "AccumulateGrad" and acc.variable is x and two is None
    assert acc.next_functions == ()


# --- autograd.functional: strict and argument checks ------------------------------------------
def test_strict_refuses_an_output_independent_of_an_input():
    x, y = _x((1.0, 2.0)), _x((1.0, 2.0))
    with pytest.raises(GradError, match="output 0 of the function is independent of input 1"):
        F.jacobian(lambda a, b: (a ** 2, b * a), (x, y), strict=True)
    with pytest.raises(GradError, match="independent of input 1"):
        F.vjp(lambda a, b: a * 2, (x, y), x, strict=True)
    with pytest.raises(GradError, match="independent of input 1"):
        F.jvp(lambda a, b: a * 2, (x, y), (x, y), strict=True)
    with pytest.raises(GradError, match="does not require grad"):
        F.jacobian(lambda a: a.detach(), x, strict=True)
    with pytest.raises(ValueError, match="strict=True and vectorize=True"):
        F.jacobian(lambda a: a ** 2, x, strict=True, vectorize=True)


def test_strict_hessian_refuses_a_linear_function_and_passes_others():
    x = _x((1.0, 2.0))
    for call in (lambda: F.hessian(lambda a: (a * 2).sum(), x, strict=True),
                 lambda: F.hvp(lambda a: (a * 2).sum(), x, x, strict=True)):
        with pytest.raises(GradError, match="input 0 is independent of the inputs"):
            call()
    h = F.hessian(lambda a: (a ** 3).sum(), x, strict=True)
    np.testing.assert_allclose(_arr(h), [[6.0, 0.0], [0.0, 12.0]])
    np.testing.assert_allclose(_arr(F.jacobian(lambda a: a ** 2, x, strict=True)),
                               [[2.0, 0.0], [0.0, 4.0]])


def test_functional_argument_checks():
    x = _x((1.0, 2.0))
    with pytest.raises(ValueError, match="outer_jacobian_strategy"):
        F.hessian(lambda a: (a ** 3).sum(), x, outer_jacobian_strategy="bogus")
    for call in (F.jacobian, F.vjp):
        with pytest.raises(TypeError, match="a tensor or a tuple of tensors, got"):
            call(lambda a: 3.0, x)


def test_a_post_accumulate_hook_must_return_none():
    x = _x()
    x.register_post_accumulate_grad_hook(lambda p: p.grad.mul_(0.5))
    with pytest.raises(GradError, match="must return None"):
        (x * 2).sum().backward()


# --- anomaly mode names the forward line of a backward that failed ---------------------------
class _Broken(A.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise ValueError("broken rule")


def test_anomaly_mode_names_where_a_failing_backward_was_created():
    x = _x()
    with A.detect_anomaly():
        y = x.exp()  # the line named
        y.mul_(2)
        z = _Broken.apply(x)
        for out, err in ((y, InplaceError), (z, ValueError)):
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                with pytest.raises(err) as info:
                    out.sum().backward()
            note = " ".join(getattr(info.value, "__notes__", []))
            assert "error detected in the backward of" in note
            assert "test_fixes_autograd_api.py" in note
            assert any("error detected" in str(w.message) for w in seen)
    with pytest.raises(ValueError) as info:  # off: no note
        _Broken.apply(x).sum().backward()
    assert not getattr(info.value, "__notes__", None)


def test_function_backward_may_return_extra_trailing_nones_and_only_tensors():
    """PyTorch drops extra trailing Nones a Function's backward returns, and refuses a
    gradient that is not a tensor ("expected Variable or None")."""

    class Double(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2, None, None

    x = ng.ones(3, requires_grad=True)
    Double.apply(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])

    class Bad(ng.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return 3

    with pytest.raises(TypeError, match="expected a tensor or None"):
        Bad.apply(ng.ones(3, requires_grad=True)).sum().backward()
