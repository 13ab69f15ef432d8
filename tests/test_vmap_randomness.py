"""Random draws inside ``vmap`` follow its ``randomness`` (``torch.func.vmap``'s): 'error' (the
default) refuses, 'same' shares one example's draw, 'different' gives each example its own;
and ``vmap``'s other ``torch.func`` parameters (``in_dims``, ``out_dims``, ``chunk_size``)."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.nn import functional as F

N = 4
SAMPLERS = {
    "rand": lambda x: ng.rand(3),
    "randn_like": lambda x: ng.randn_like(x),
    "randint": lambda x: ng.randint(0, 5, (3,)),
    "normal": lambda x: ng.normal(0.0, 1.0, (3,)),
    "uniform": lambda x: ng.uniform(0.0, 1.0, (3,)),
    "dropout": lambda x: F.dropout(x, 0.5),
    "alpha_dropout": lambda x: F.alpha_dropout(x, 0.5, True),
    "feature_alpha_dropout": lambda x: F.feature_alpha_dropout(x[None, :, None], 0.5, True),
    "dropout1d": lambda x: F.dropout1d(x[:, None], 0.5),
    "normal_": lambda x: (x * 1.0).normal_(),
    "uniform_": lambda x: (x * 1.0).uniform_(),
    "bernoulli_": lambda x: (x * 1.0).bernoulli_(0.5),
}
FROM_TENSORS = {
    "bernoulli": lambda x: ng.bernoulli(x * 0.5),
    "normal of a tensor mean": lambda x: ng.normal(x, 1.0),
    "poisson": lambda x: ng.poisson(x),
    "multinomial": lambda x: ng.multinomial(x, 2),
}


@pytest.mark.parametrize("name", list(SAMPLERS) + list(FROM_TENSORS))
def test_a_draw_inside_vmap_refuses_by_default(name):
    f = {**SAMPLERS, **FROM_TENSORS}[name]
    with pytest.raises(RuntimeError, match="random draw inside vmap.*randomness="):
        ng.vmap(f)(ng.ones((N, 3)))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_shares_one_draw_and_different_gives_each_example_its_own(name):
    f = SAMPLERS[name]
    x = ng.ones((N, 3))
    same = ng.vmap(f, randomness="same")(x).numpy()
    assert all(np.array_equal(same[0], s) for s in same[1:])
    ng.manual_seed(3)
    diff = ng.vmap(f, randomness="different")(x).numpy()
    assert len({r.tobytes() for r in diff.reshape(N, -1)}) > 1
    ng.manual_seed(3)
    again = ng.vmap(f, randomness="different")(x).numpy()
    np.testing.assert_array_equal(diff, again)  # seeded: reproducible


def test_different_draws_the_batch_at_once_and_same_the_example():
    """The batch's numbers are the draw of the batched shape from the same stream; 'same' is
    the draw of one example's shape."""
    ng.manual_seed(0)
    want = ng.randn(N, 3).numpy()
    ng.manual_seed(0)
    got = ng.vmap(lambda x: ng.randn(3), randomness="different")(ng.ones((N, 3))).numpy()
    np.testing.assert_array_equal(got, want)
    ng.manual_seed(0)
    one = ng.randn(3).numpy()
    ng.manual_seed(0)
    got = ng.vmap(lambda x: x * 0 + ng.randn(3), randomness="same")(ng.ones((N, 3))).numpy()
    np.testing.assert_array_equal(got, np.broadcast_to(one, (N, 3)))


def test_draws_from_batched_tensors_use_each_examples_own_parameters():
    r = ng.vmap
    probs = ng.tensor(np.eye(N, 3, dtype=np.float32))  # 0/1 probabilities: certain draws
    np.testing.assert_array_equal(r(ng.bernoulli, randomness="different")(probs).numpy(),
                                  probs.numpy())
    means = ng.tensor(np.arange(N * 3.0).reshape(N, 3))
    np.testing.assert_array_equal(
        r(lambda m: ng.normal(m, 0.0), randomness="different")(means).numpy(), means.numpy())
    np.testing.assert_array_equal(
        r(ng.poisson, randomness="different")(ng.zeros((N, 3))).numpy(), np.zeros((N, 3)))
    onehot = ng.tensor(np.eye(3)[[0, 2, 1, 2]])
    np.testing.assert_array_equal(
        r(lambda w: ng.multinomial(w, 1), randomness="different")(onehot).numpy(),
        [[0], [2], [1], [2]])
    with pytest.raises(RuntimeError, match="'same' cannot draw from a tensor batched"):
        r(ng.bernoulli, randomness="same")(probs)


def test_per_example_gradients_with_each_examples_own_dropout_mask():
    """DP-SGD's recipe with dropout: vmap(grad(loss), randomness='different') equals each
    example's gradient under its own mask (the masks drawn as one batched draw)."""
    rng = np.random.default_rng(0)
    w = ng.tensor(rng.standard_normal((5, 2)))
    xs, ys = ng.tensor(rng.standard_normal((N, 5))), ng.tensor(rng.standard_normal((N, 2)))

    def loss(w, x, y):
        return ((F.dropout(x, 0.3) @ w - y) ** 2).sum()

    ng.manual_seed(7)
    per = ng.vmap(ng.grad(loss), in_axes=(None, 0, 0), randomness="different")(w, xs, ys)
    ng.manual_seed(7)
    masks = (ng.rand(N, 5, dtype=ng.float64).numpy() >= 0.3) / 0.7
    for k in range(N):
        h = xs.numpy()[k] * masks[k]
        want = 2 * np.outer(h, h @ w.numpy() - ys.numpy()[k])
        np.testing.assert_allclose(per.numpy()[k], want, rtol=1e-12)


def test_an_unbatched_tensor_refuses_a_different_fill_in_place():
    t = ng.zeros(3)
    with pytest.raises(TypeError, match="normal_: inside vmap an unbatched tensor"):
        ng.vmap(lambda x: t.normal_() + x, randomness="different")(ng.ones((N, 3)))
    out = ng.vmap(lambda x: t.normal_() + x, randomness="same")(ng.ones((N, 3)))
    np.testing.assert_array_equal(out.numpy(), np.broadcast_to(t.numpy() + 1, (N, 3)))


def test_jit_of_vmap_draws_afresh_each_call():
    f = ng.jit(ng.vmap(lambda x: F.dropout(x, 0.5), randomness="different"))
    x = ng.ones((64, 8))
    a, b = f(x).numpy(), f(x).numpy()
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) <= {0.0, 2.0}


def test_torch_func_names_and_chunks():
    rng = np.random.default_rng(1)
    w = ng.tensor(rng.standard_normal((3, 2)))
    xs = ng.tensor(rng.standard_normal((2, 7, 3)))  # the batch along axis 1

    def f(w, x):
        return ng.tanh(x @ w), w.sum()

    want = ng.vmap(f, in_axes=(None, 1), out_axes=(1, 0))(w, xs)
    got = ng.func.vmap(f, in_dims=(None, 1), out_dims=(1, 0))(w, xs)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for chunk in (1, 3, 7, 100):
        parts = ng.vmap(f, (None, 1), (1, 0), chunk_size=chunk)(w, xs)
        for a, b in zip(want, parts):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert tuple(want[0].shape) == (2, 7, 2) and tuple(want[1].shape) == (7,)
    with pytest.raises(TypeError, match="in_axes or in_dims"):
        ng.vmap(f, in_axes=1, in_dims=1)
    with pytest.raises(ValueError, match="chunk_size"):
        ng.vmap(f, chunk_size=0)
    with pytest.raises(ValueError, match="randomness must be one of"):
        ng.vmap(f, randomness="differnt")


DISTRIBUTIONS = {
    "Gamma": lambda m: ng.distributions.Gamma(m + 1, 1.0),
    "Dirichlet": lambda m: ng.distributions.Dirichlet(m + 0.5),
    "Poisson": lambda m: ng.distributions.Poisson(m),
    "Binomial": lambda m: ng.distributions.Binomial(5, probs=m / 4),
    "NegativeBinomial": lambda m: ng.distributions.NegativeBinomial(3, probs=m / 4),
    "VonMises": lambda m: ng.distributions.VonMises(m, 1.0),
    "Normal": lambda m: ng.distributions.Normal(m, 1.0),
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_distributions_with_batched_parameters_sample_per_example(name):
    """Their samplers read the parameters' arrays: inside vmap they read each example's, not
    the batch's placeholder (which gave NaN)."""
    m = ng.tensor(np.linspace(0.5, 2.0, N * 3).reshape(N, 3).astype(np.float32))
    make = DISTRIBUTIONS[name]
    with pytest.raises(RuntimeError, match="randomness"):
        ng.vmap(lambda m: make(m).sample())(m)
    ng.manual_seed(0)
    x = ng.vmap(lambda m: make(m).sample(), randomness="different")(m)
    assert tuple(x.shape) == (N, 3) and np.isfinite(x.numpy()).all()
    lp = ng.vmap(lambda m, x: make(m).log_prob(x))(m, x)
    assert np.isfinite(lp.numpy()).all()
