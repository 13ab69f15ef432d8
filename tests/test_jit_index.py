"""``ng.jit`` and index arrays computed in the step (a batch of tokens, targets): they become
inputs of the captured ops, so an embedding model's step is captured; host code that computes
with a traced tensor's values makes its signature run eagerly instead of baking them in."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as F

rng = np.random.default_rng(0)


def _model():
    ng.manual_seed(0)
    return nn.Sequential(nn.Embedding(20, 8, padding_idx=0), nn.Flatten(), nn.Linear(48, 3))


def test_an_embedding_models_step_is_captured_and_equals_eager():
    m, ref = _model(), _model()
    opt, opt_ref = (ng.optim.Adam(x.parameters(), lr=1e-2) for x in (m, ref))

    @ng.jit(state=(m, opt))
    def step(t, y):
        loss = F.cross_entropy(m(t), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    batches = [ng.tensor(rng.integers(0, 20, (4, 6))) for _ in range(3)]
    y = ng.tensor(rng.integers(0, 3, 4))
    for k in range(9):
        got = step(batches[k % 3], y)
        loss = F.cross_entropy(ref(batches[k % 3]), y)
        loss.backward()
        opt_ref.step()
        opt_ref.zero_grad()
        assert float(got) == float(loss)
    assert step.traces == 1 and step.last.program is not None
    for a, b in zip(m.parameters(), ref.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_computed_index_array_is_an_input_of_the_op():
    x = ng.tensor(rng.standard_normal((6, 3)))
    f = ng.jit(lambda x, i: x[(i * 2) % 6, 1:] * 2)
    for _ in range(3):
        i = ng.tensor(rng.integers(0, 6, 4))
        np.testing.assert_array_equal(f(x, i).numpy(), x.numpy()[(i.numpy() * 2) % 6, 1:] * 2)
    assert f.traces == 1 and f.last.program is not None


def test_the_replay_checks_the_tokens():
    w = ng.randn(10, 3)
    e = ng.jit(lambda i: F.embedding(i, w))
    e(ng.tensor([1, 2]))
    e(ng.tensor([3, 4]))
    with pytest.raises(IndexError, match="embedding: index -1 is out of range for 10"):
        e(ng.tensor([-1, 2]))  # NumPy's indexing would wrap it around


def test_jit_of_an_embedding_model_differentiates_through_its_tokens():
    m, ref = _model(), _model()
    cm = ng.jit(m)
    for _ in range(3):
        t = ng.tensor(rng.integers(0, 20, (4, 6)))
        for model, call in ((m, cm), (ref, ref)):
            model.zero_grad()
            (call(t) ** 2).sum().backward()
        for a, b in zip(m.parameters(), ref.parameters()):
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert cm.last.diff is not None


@pytest.mark.parametrize("case", ["offsets", "padding", "one_hot", "scale_grad_by_freq"])
def test_host_code_on_traced_values_runs_eagerly(case):
    """Bags cut at offsets, padding masks, an inferred class count and frequency counts were
    computed from the traced call's values and replayed as constants (the next call's tokens
    ignored); those signatures now run eagerly and say why."""
    w = ng.randn(10, 3)
    fns = {
        "offsets": (lambda i: F.embedding_bag(i, w, ng.tensor([0, 2]), mode="sum"), (4,)),
        "padding": (lambda i: F.embedding_bag(i, w, mode="sum", padding_idx=5), (2, 2)),
        "one_hot": (lambda i: F.one_hot(i), (4,)),
        "scale_grad_by_freq": (lambda i: F.embedding(i, w, scale_grad_by_freq=True), (4,)),
    }
    fn, shape = fns[case]
    f = ng.jit(fn)
    f(ng.tensor(np.arange(4).reshape(shape)))
    i2 = ng.tensor(np.array([5, 6, 7, 8]).reshape(shape))
    np.testing.assert_array_equal(f(i2).numpy(), fn(i2).numpy())
    assert f.last.program is None and "values of a traced tensor" in f.last.reason


def test_a_boolean_attention_mask_is_read_on_every_replay():
    """The mask became its additive bias with host code, so a jitted step replayed the traced
    call's mask; and a row masked whole only in a later call gave NaN."""
    q, k, v = ng.randn(1, 2, 3, 4), ng.randn(1, 2, 5, 4), ng.randn(1, 2, 5, 4)
    f = ng.jit(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    f(q, k, v, ng.tensor(np.ones((3, 5), bool)))
    m = np.ones((3, 5), bool)
    m[1] = False  # a query that may attend to nothing: zeros, as PyTorch's
    m[0, 2] = False
    got = f(q, k, v, ng.tensor(m))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=ng.tensor(m))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
    assert f.traces == 1 and not np.isnan(got.numpy()).any()


def test_adaptive_softmax_routes_each_calls_targets():
    """Its rows go to clusters by their targets' values: a jitted step replayed the traced
    call's routing (a wrong loss); it now runs eagerly."""
    ng.manual_seed(0)
    m = nn.AdaptiveLogSoftmaxWithLoss(8, 10, [4, 7]).double()
    f = ng.jit(lambda x, t: m(x, t).loss, state=(m,))
    x = ng.randn(6, 8, dtype=ng.float64)
    f(x, ng.tensor([0, 1, 2, 3, 0, 1]))
    t = ng.tensor([5, 8, 9, 4, 6, 2])
    assert float(f(x, t)) == float(m(x, t).loss)
    assert "routing rows to clusters" in f.last.reason


def test_ctc_loss_lays_out_each_calls_targets():
    lp = ng.tensor(rng.standard_normal((10, 2, 5))).log_softmax(-1)
    f = ng.jit(lambda lp, tg, il, tl: F.ctc_loss(lp, tg, il, tl))
    f(lp, ng.tensor([[1, 2, 3], [2, 2, 0]]), ng.tensor([10, 8]), ng.tensor([3, 2]))
    args = (ng.tensor([[4, 1, 1], [3, 0, 0]]), ng.tensor([9, 10]), ng.tensor([2, 1]))
    assert float(f(lp, *args)) == float(F.ctc_loss(lp, *args))
    assert "ctc_loss" in f.last.reason


def test_value_checks_run_on_every_replay():
    """Range checks that read values in the host are effects: a replay checks its own call's
    values (binary_cross_entropy of a negative probability was NaN on a replay)."""
    bce = ng.jit(lambda p, t: F.binary_cross_entropy(p, t))
    t = ng.tensor([1.0, 0.0])
    bce(ng.tensor([0.5, 0.5]), t)
    bce(ng.tensor([0.2, 0.5]), t)
    assert bce.last.program is not None
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        bce(ng.tensor([-0.5, 0.5]), t)
    nll = ng.jit(lambda x, v: F.gaussian_nll_loss(x, x, v))
    x = ng.randn(4)
    nll(x, ng.ones(4))
    nll(x, ng.ones(4))
    with pytest.raises(ValueError, match="var has negative entries"):
        nll(x, -ng.ones(4))
