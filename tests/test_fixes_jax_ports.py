"""Regressions found by porting JAX programs to nodegrad (no JAX needed to run them)."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import lax


def _rnn_loss(w, xs, use_scan: bool):
    """A tanh RNN whose carry includes a 0-d running sum, written with scan or unrolled."""
    def body(carry, x):
        h = ng.tanh(x @ w + carry["h"])
        return {"h": h, "acc": carry["acc"] + ng.sum(h ** 2)}, ng.sum(h)

    carry = {"h": ng.zeros(3, dtype=ng.float64), "acc": ng.tensor(np.array(0.0))}
    if use_scan:
        carry, ys = lax.scan(body, carry, xs)
    else:
        outs = []
        for t in range(xs.shape[0]):
            carry, y = body(carry, xs[t])
            outs.append(y)
        ys = ng.stack(outs)
    return carry["acc"] + ng.sum(ys * ys)


@pytest.mark.parametrize("jit", [False, True])
def test_scan_gradient_with_a_scalar_carry(jit):
    # the residual-saving backward of scan traced a 0-d carry's cotangent as a NumPy scalar
    # (a constant), and failed with a KeyError
    rng = np.random.default_rng(0)
    w = ng.tensor(rng.standard_normal((3, 3)) * 0.5)
    xs = ng.tensor(rng.standard_normal((6, 3)))
    vg = ng.value_and_grad(lambda w: _rnn_loss(w, xs, True))
    if jit:
        vg = ng.jit(vg)
    v, g = vg(w)
    v0, g0 = ng.value_and_grad(lambda w: _rnn_loss(w, xs, False))(w)
    np.testing.assert_allclose(v.numpy(), v0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), g0.numpy(), rtol=1e-10, atol=1e-12)


def test_scan_gradient_with_only_scalar_carries():
    xs = ng.tensor(np.array([0.5, -1.0, 2.0]))

    def f(a):
        (s, p), _ = lax.scan(lambda c, x: ((c[0] + a * x, c[1] * (1.0 + a * x)), c[0]),
                             (ng.tensor(np.array(0.0)), ng.tensor(np.array(1.0))), xs)
        return s + p

    a = ng.tensor(np.array(0.3))
    x = xs.numpy()  # d/da [a sum(x) + prod(1 + a x)]
    want = x.sum() + sum(x[i] * np.prod(np.delete(1 + 0.3 * x, i)) for i in range(3))
    np.testing.assert_allclose(ng.grad(f)(a).numpy(), want, rtol=1e-12)


def test_grad_argnums_error_names_grad():
    f = ng.grad(lambda x: x.sum(), argnums=3)
    with pytest.raises(ValueError, match=r"^grad: argnums 3 out of range for 1 positional"):
        f(ng.ones(2))
    with pytest.raises(ValueError, match=r"^value_and_grad: argnums"):
        ng.value_and_grad(lambda x: x.sum(), argnums=(0, 2))(ng.ones(2))


def test_fori_loop_takes_unroll():
    body = lambda i, c: c * 2 + i  # noqa: E731
    want = lax.fori_loop(0, 5, body, ng.tensor(1.0))
    for unroll in (1, 2, True, False):
        assert lax.fori_loop(0, 5, body, ng.tensor(1.0), unroll=unroll).item() == want.item() == 58
    g = ng.grad(lambda x: lax.fori_loop(0, 3, lambda i, c: c * c, x, unroll=2))(ng.tensor(1.5))
    np.testing.assert_allclose(g.item(), 8 * 1.5 ** 7, rtol=1e-6)
    with pytest.raises(ValueError, match="fori_loop: unroll must be a non-negative int"):
        lax.fori_loop(0, 5, body, ng.tensor(1.0), unroll=-1)
    with pytest.raises(ValueError, match="fori_loop: unroll needs Python int bounds"):
        lax.fori_loop(0, ng.tensor(5), body, ng.tensor(1.0), unroll=2)


def test_jit_accepts_donation_hints():
    f = ng.jit(lambda p, x: p - 0.1 * x, donate_argnums=(0,), keep_unused=True, inline=True)
    p = ng.ones(3)
    for _ in range(3):
        p = f(p, ng.ones(3))
    np.testing.assert_allclose(p.numpy(), 0.7, rtol=1e-6)
    assert ng.jit(donate_argnames="p")(lambda p: p + 1)(ng.ones(1)).item() == 2.0
    with pytest.raises(TypeError, match="jit: donate_argnums must be an int"):
        ng.jit(lambda x: x, donate_argnums="x")
    with pytest.raises(TypeError, match="jit: donate_argnames must be a str"):
        ng.jit(lambda x: x, donate_argnames=(0,))


@pytest.mark.parametrize("op", [ng.softmax, ng.log_softmax])
def test_one_axis_ops_refuse_a_tuple_clearly(op):
    # JAX's softmax takes a tuple of axes; here one axis is meant, and the error says so
    with pytest.raises(TypeError, match=rf"^{op.__name__}: axis must be one int, got tuple"):
        op(ng.ones(2, 3), axis=(0, 1))


def test_remat_takes_static_argnames():
    f = ng.remat(lambda x, *, mode: x.sin() * x if mode == "sin" else x * x,
                 static_argnames="mode")
    x = ng.tensor([0.5, 2.0], dtype=ng.float64)
    g = ng.grad(lambda x: f(x, mode="sin").sum())(x)
    np.testing.assert_allclose(g.numpy(), np.cos(x.numpy()) * x.numpy() + np.sin(x.numpy()),
                               rtol=1e-12)
    with pytest.raises(TypeError, match="remat: static_argnames must be strs"):
        ng.remat(lambda x: x, static_argnames=(1,))


@pytest.mark.parametrize("transform", [ng.jacfwd, ng.jacrev, ng.hessian])
def test_jacobians_take_holomorphic_false_and_refuse_true(transform):
    f = lambda x: (x.sin() * x).sum()  # noqa: E731
    x = ng.tensor([0.5, 2.0], dtype=ng.float64)
    np.testing.assert_array_equal(transform(f, holomorphic=False)(x).numpy(),
                                  transform(f)(x).numpy())
    with pytest.raises(NotImplementedError, match=rf"^{transform.__name__}: holomorphic=True"):
        transform(f, holomorphic=True)


def test_top_level_clip_takes_min_max_and_numpys_a_min_a_max():
    x = ng.tensor([-1.0, 2.0, 5.0])
    assert ng.clip(x, min=0).tolist() == [0.0, 2.0, 5.0]  # PyTorch's and JAX's names
    assert ng.clip(x, 0, 3).tolist() == [0.0, 2.0, 3.0]
    assert ng.clip(x, a_max=3).tolist() == [-1.0, 2.0, 3.0]  # NumPy's
    with pytest.raises(TypeError, match="not both"):
        ng.clip(x, min=0, a_max=3)
