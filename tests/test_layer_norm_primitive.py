"""Layer normalisation as one primitive (``ops.nn.layer_norm``): its first-order VJP on host
arrays gives the rules' bits, vmap over the affine parameters, and a jitted LayerNorm model
equals eager. The gradcheck matrix covers its VJP, JVP, second order, vmap and PyTorch."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import nodegrad as ng
from tests.test_backend import jitted_training_equals_eager

N = importlib.import_module("nodegrad.ops.nn")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,affine", [(1, True), (2, True), (1, False)])
def test_raw_vjp_gives_the_rules_bits(dtype, k, affine):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((6, 5, 8)).astype(dtype)
    ns = x.shape[3 - k:]
    w, b = (rng.standard_normal(ns).astype(dtype) for _ in range(2)) if affine else (None, None)
    g = rng.standard_normal(x.shape).astype(dtype)
    needs = (True, affine, affine)
    raw = N._ln_raw(needs, g, None, x, w, b, k, 1e-5)
    rules = N._ln_vjp(needs, ng.tensor(g), None, ng.tensor(x),
                      None if w is None else ng.tensor(w), None if b is None else ng.tensor(b),
                      k, 1e-5)
    for a, r in zip(raw, rules, strict=True):
        assert (a is None) == (r is None)
        if a is not None:
            assert a.dtype == dtype and a.tobytes() == r.numpy().tobytes()
    y = ng.nn.functional.layer_norm(ng.tensor(x, requires_grad=True), ns,
                                    None if w is None else ng.tensor(w),
                                    None if b is None else ng.tensor(b))
    assert y.node.prim.name == "layer_norm" and y.dtype == dtype


def test_vmap_over_the_affine_parameters_equals_a_loop():
    rng = np.random.default_rng(0)
    x = ng.tensor(rng.standard_normal((4, 6)))
    ws, bs = ng.tensor(rng.standard_normal((3, 6))), ng.tensor(rng.standard_normal((3, 6)))

    def f(w, b):
        return ng.nn.functional.layer_norm(x, (6,), w, b)

    got = ng.vmap(f)(ws, bs).numpy()
    want = np.stack([f(ws[i], bs[i]).numpy() for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    got = ng.vmap(lambda w: f(w, bs[0]))(ws).numpy()
    np.testing.assert_allclose(got, want - (bs - bs[0]).numpy()[:, None, :], rtol=1e-12,
                               atol=1e-12)


def test_a_jitted_layer_norm_model_equals_eager():
    jitted_training_equals_eager(ng.nn.Sequential(
        ng.nn.Linear(30, 32), ng.nn.LayerNorm(32), ng.nn.GELU(), ng.nn.Linear(32, 3)),
        ng.optim.AdamW, steps=4, lr=1e-2)


def test_the_packed_vjp_batches_over_weights_and_inputs_as_a_loop():
    """``layer_norm_grad`` (the first-order VJP as one op) under vmap, with the weights batched
    too: each example's dx, dw and db, as one call per example gives them."""
    rng = np.random.default_rng(4)
    gs, xs = (ng.tensor(rng.standard_normal((3, 4, 5, 6))) for _ in range(2))
    ws = ng.tensor(rng.standard_normal((3, 6)))
    op = ng.primitives["layer_norm_grad"]
    for want in ((True, True, True), (False, True, False)):
        got = ng.vmap(lambda g, x, w: op(g, x, w, k=1, eps=1e-5, want=want))(gs, xs, ws)
        loop = np.stack([op(gs[i], xs[i], ws[i], k=1, eps=1e-5, want=want).numpy()
                         for i in range(3)])
        np.testing.assert_allclose(got.numpy(), loop, rtol=1e-12, atol=1e-12)
