"""Random numbers: reproducible for a seed, right dtypes and ranges."""

import numpy as np
import pytest

import nodegrad as ng


def test_manual_seed_reproduces():
    ng.manual_seed(123)
    a = ng.randn(4, 3).numpy()
    b = ng.rand(5).numpy()
    ng.manual_seed(123)
    np.testing.assert_array_equal(a, ng.randn(4, 3).numpy())
    np.testing.assert_array_equal(b, ng.rand(5).numpy())


def test_generator_objects_are_independent():
    g1, g2 = ng.Generator(seed=7), ng.Generator(seed=7)
    x = ng.randn(3, generator=g1).numpy()
    ng.randn(10)  # the default generator does not affect g2
    np.testing.assert_array_equal(x, ng.randn(3, generator=g2).numpy())
    state = g1.get_state()
    y = ng.rand(4, generator=g1).numpy()
    g1.set_state(state)
    np.testing.assert_array_equal(y, ng.rand(4, generator=g1).numpy())


def test_dtypes_and_ranges():
    g = ng.Generator(seed=0)
    assert ng.randn(100, generator=g).dtype == ng.float32
    assert ng.randn(3, dtype=ng.float64, generator=g).dtype == ng.float64
    u = ng.rand(1000, generator=g).numpy()
    assert u.min() >= 0 and u.max() < 1
    i = ng.randint(3, 7, (1000,), generator=g).numpy()
    assert i.min() == 3 and i.max() == 6 and i.dtype == np.int64
    p = ng.randperm(10, generator=g).numpy()
    assert sorted(p.tolist()) == list(range(10))
    n = ng.normal(2.0, 0.5, (20000,), generator=g).numpy()
    assert abs(n.mean() - 2.0) < 0.02 and abs(n.std() - 0.5) < 0.02
    assert ng.uniform(-1, 1, 10, generator=g).numpy().min() >= -1
    assert ng.randn(2, requires_grad=True).requires_grad


def test_bad_arguments():
    with pytest.raises(ValueError):  # PyTorch's range is [-2**63, 2**64); -1 is 2**64 - 1
        ng.manual_seed(2 ** 64)
    with pytest.raises(ValueError, match="empty"):
        ng.randint(5, 5, (2,))


SAMPLERS = {
    "rand": lambda x: ng.rand(3),
    "randn": lambda x: ng.randn(2, 2),
    "randint": lambda x: ng.randint(0, 100, (4,)),
    "randperm": lambda x: ng.randperm(6),
    "normal": lambda x: ng.normal(1.0, 2.0, size=(3,)),
    "uniform": lambda x: ng.uniform(-1.0, 1.0, size=(3,)),
    "bernoulli": lambda x: ng.bernoulli(x),
    "bernoulli_p": lambda x: ng.bernoulli(x, 0.3),
    "multinomial": lambda x: ng.multinomial(x + 0.1, 2),
    "rand_like": lambda x: ng.rand_like(x),
    "randn_like": lambda x: ng.randn_like(x),
    "randint_like": lambda x: ng.randint_like(x, 10),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_draw_afresh_under_jit_as_eager(name):
    """A sampler inside a jitted function draws new numbers on every call (never the traced
    ones again), the same numbers eager code draws from the same seed, in the same order."""
    draw = SAMPLERS[name]
    x = ng.tensor(np.full(8, 0.5, np.float32))

    def f(x):
        return draw(x) * 1 if name not in ("randint", "randperm", "randint_like",
                                           "multinomial") else draw(x)

    ng.manual_seed(7)
    eager = [f(x).numpy() for _ in range(4)]
    ng.manual_seed(7)
    jf = ng.jit(f)
    jitted = [jf(x).numpy() for _ in range(4)]
    for a, b in zip(eager, jitted):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(eager[0], e) for e in eager[1:])


def test_float16_samples_are_rounded_float32_draws_in_range():
    """NumPy's generators draw float32 and float64 only; float16 layers and samples work (as
    ``nn.Linear(..., dtype=torch.float16)`` does) and uniform ones stay below 1."""
    ng.manual_seed(0)
    u = ng.rand(200_000, dtype=ng.float16).numpy()
    assert u.dtype == np.float16 and u.min() >= 0 and u.max() < 1
    assert u.max() == np.nextafter(np.float16(1), np.float16(0))  # rounded-up draws kept below 1
    z = ng.randn(1000, dtype=ng.float16).numpy()
    assert z.dtype == np.float16 and 0.8 < z.std() < 1.2
    ng.manual_seed(1)
    lin = ng.nn.Linear(8, 4, dtype=ng.float16)
    assert lin.weight.dtype == ng.float16 and float(abs(lin.weight).max()) <= 8 ** -0.5
    assert ng.nn.functional.dropout(ng.ones(64, dtype=ng.float16), 0.5).dtype == ng.float16
