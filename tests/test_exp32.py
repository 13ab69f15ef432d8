"""exp of non-positive float32 in float32 arithmetic (``_backend.exp32_neg``, the exact GELU's
density in its VJP): within 1 ulp of the correctly rounded value, its special values, and the
same bits from numba's loop, from NumPy's ufuncs and in the GELU VJP's loops."""

import numpy as np
import pytest

from nodegrad import _backend as B


def _ulps(got: np.ndarray, x: np.ndarray) -> np.ndarray:
    """How many float32 steps ``got`` (>= 0) lies from float64 exp of ``x`` rounded to float32
    (the correctly rounded value, but in the rarest near-ties)."""
    ref = np.exp(x.astype(np.float64)).astype(np.float32)
    return np.abs(got.view(np.int32).astype(np.int64) - ref.view(np.int32).astype(np.int64))


def _sample() -> np.ndarray:
    """~1e6 non-positive float32: uniform bit patterns down to -104 (every binade), the range
    where results turn subnormal and zero, the rounding steps' neighbours, special values."""
    rng = np.random.default_rng(5)
    end = int(np.float32(104.0).view(np.int32))
    bits = rng.integers(0, end, 900_000, dtype=np.int32)
    edges = np.array([87.33, 88.0, 100 * np.log(2), 103.27, 103.97, 104.0, 0.5 * np.log(2),
                      np.log(2), 1.0], np.float32).view(np.int32)
    near = (edges[:, None] + np.arange(-300, 300, dtype=np.int32)).ravel()
    special = np.array([0.0, 1e-45, 1e-38, 1e-8, 104.5, 200.0, 1e30, 3.4028235e38, np.inf],
                       np.float32)
    x = np.concatenate([bits.view(np.float32), near.view(np.float32), special,
                        rng.uniform(0, 20, 50_000).astype(np.float32)])
    return -x


def test_exp32_neg_is_within_an_ulp_and_keeps_the_special_values(cpu_kernels):
    """On the sample: within 1 ulp of the correctly rounded exp (the exhaustive check is the
    slow test below), subnormal results included; exp(±0) = 1, -inf and everything below -104
    give +0, NaN stays NaN; 0-d arrays and float32 scalars give a NumPy scalar."""
    x = _sample()
    got = B.exp32_neg(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert _ulps(got, x).max() <= 1
    assert np.mean(_ulps(got, x) == 0) > 0.98  # ~98.7% of the sample correctly rounded
    z = B.exp32_neg(np.array([0.0, -0.0, -104.0, -1e30, -np.inf, np.nan], np.float32))
    assert z[:5].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] and not np.signbit(z[:5]).any()
    assert np.isnan(z[5])
    assert B.exp32_neg(np.float32(-103.9)) == np.float32(1e-45)  # the least subnormal
    assert type(B.exp32_neg(np.float32(-1))) is np.float32
    assert type(B.exp32_neg(np.array(-1, np.float32))) is np.float32
    with pytest.raises(TypeError, match="exp32_neg: expected a float32 array, got float64"):
        B.exp32_neg(np.zeros(3))


def test_exp32_neg_loop_numpy_form_and_gelu_vjp_give_the_same_bits(monkeypatch):
    """numba's loop and the NumPy form perform the same float32 operations in the same order:
    the same bits on the sample, at every size and layout; the exact GELU's VJP loop, which
    inlines it, equals its NumPy form, and NumPy's own exp differs (so the test can tell)."""
    pytest.importorskip("numba")
    import numba  # noqa: F401 - loaded, as a compiled program or eager training loads it

    monkeypatch.setattr(B, "_kernels", None)
    assert B.cpu_kernels() is not None
    x = _sample()
    loop = B.exp32_neg(x)
    assert loop.tobytes() == B._exp32_neg_numpy(x).tobytes()
    assert loop.tobytes() != np.exp(x).tobytes()
    rng = np.random.default_rng(2)
    for n in (0, 1, 7, 8, 9, 100, 1025):
        v = -(rng.standard_normal(n) ** 2 * 10).astype(np.float32)
        assert B.exp32_neg(v).tobytes() == B._exp32_neg_numpy(v).tobytes()
    edge = np.array([-103.9, -103.97208, -103.97209, -104.0, -104.00001, -200.0, -np.inf, -0.0,
                     np.nan] * 3, np.float32)  # about the lowest argument kept, in every lane
    assert B.exp32_neg(edge).tobytes() == B._exp32_neg_numpy(edge).tobytes()
    m = -(rng.standard_normal((37, 53)) ** 2).astype(np.float32)
    want = B._exp32_neg_numpy(m.reshape(-1)).reshape(m.shape)
    for view, ref in ((np.asfortranarray(m), want), (m.T, want.T), (m[::2, 1::3], want[::2, 1::3])):
        assert B.exp32_neg(view).tobytes() == np.ascontiguousarray(ref).tobytes()
    from nodegrad.ops import elementwise as E

    xg = (rng.standard_normal(5000) * 4).astype(np.float32)
    xg[:4] = [np.nan, np.inf, -np.inf, 14.0]  # -x²/2 below -104: the density is 0
    g = rng.standard_normal(xg.shape).astype(np.float32)
    with np.errstate(invalid="ignore"):
        fused = B.gelu32_grad(g, xg, E._INV_SQRT2, E._INV_SQRT_2PI)
        monkeypatch.setattr(B, "_kernels", False)
        plain = E._gelu_grad_fwd(np, g, xg)
    assert fused.tobytes() == plain.tobytes()


@pytest.mark.slow
def test_exp32_neg_is_within_an_ulp_for_every_nonpositive_float32():
    """Every float32 from -0 down to -104 (below it the result is +0, as the correctly rounded
    one): within 1 ulp, numba's loop and the NumPy form giving the same bits."""
    pytest.importorskip("numba")
    import numba  # noqa: F401 - the loop: ~1 ns a value

    assert B.cpu_kernels() is not None
    end = int(np.float32(104.0).view(np.int32)) + 1
    worst, step = 0, 1 << 22
    for start in range(0, end, step):
        x = -np.arange(start, min(start + step, end), dtype=np.int32).view(np.float32)
        got = B.exp32_neg(x)
        worst = max(worst, int(_ulps(got, x).max()))
        if (start // step) % 8 == 0:  # the NumPy form on an eighth of them
            assert B._exp32_neg_numpy(x).tobytes() == got.tobytes()
    assert worst <= 1, worst
