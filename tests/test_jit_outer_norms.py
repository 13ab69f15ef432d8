"""A jitted squared norm of an outer product (per-example gradient norms) is computed as the
product of the factors' squared norms, without making the product, within fusion's tolerance."""

import numpy as np
import pytest

import nodegrad as ng

pytest.importorskip("numba")  # the rewrite is part of fusion, which compiles with numba


def _per_example_norms(dtype):
    rng = np.random.default_rng(0)
    p = {"w0": ng.tensor(rng.standard_normal((16, 6)).astype(dtype)),
         "b0": ng.tensor(rng.standard_normal(16).astype(dtype)),
         "w1": ng.tensor(rng.standard_normal((3, 16)).astype(dtype)),
         "b1": ng.tensor(rng.standard_normal(3).astype(dtype))}
    x = ng.tensor(rng.standard_normal((32, 6)).astype(dtype))
    y = ng.tensor(rng.integers(0, 3, 32))

    def loss(p, x, y):
        h = ng.tanh(ng.linear(x, p["w0"], p["b0"]))
        return ng.nn.functional.cross_entropy(ng.linear(h, p["w1"], p["b1"])[None], y[None])

    pe = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0))

    def norms(p, x, y):
        g = pe(p, x, y)
        return sum((v * v).sum() for v in g.values())

    return norms, (p, x, y)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_per_example_gradient_norms_under_jit(dtype, tol):
    f, args = _per_example_norms(dtype)
    jf = ng.jit(f, fuse=True)
    want = f(*args).item()
    for _ in range(2):  # the trace, then a replay
        got = jf(*args)
        assert got.dtype == dtype
        assert abs(got.item() - want) <= tol * abs(want)
    assert jf.program.counts().get("outer_square_sums") == 2  # the two weight gradients
    assert "sum_squares" in str(jf.program)


def test_a_product_read_elsewhere_is_left_as_it_is():
    rng = np.random.default_rng(1)
    a = ng.tensor(rng.standard_normal((4, 5, 1)))
    b = ng.tensor(rng.standard_normal((4, 1, 3)))

    def f(a, b):
        t = a * b
        return (t * t).sum(), t.mean()

    jf = ng.jit(f, fuse=True)
    for got, want in zip(jf(a, b), f(a, b)):
        assert abs(got.item() - want.item()) <= 1e-12 * abs(want.item())
    assert not jf.program.counts().get("outer_square_sums")


def test_an_outer_product_over_every_axis_sums_to_the_product_of_the_norms():
    rng = np.random.default_rng(2)
    a = ng.tensor(rng.standard_normal((7, 1)))
    b = ng.tensor(rng.standard_normal((1, 9)))
    jf = ng.jit(lambda a, b: ((a * b) * (a * b)).sum(), fuse=True)
    want = float((a.numpy() ** 2).sum() * (b.numpy() ** 2).sum())
    assert abs(jf(a, b).item() - want) <= 1e-12 * want
    assert jf.program.counts().get("outer_square_sums") == 1
