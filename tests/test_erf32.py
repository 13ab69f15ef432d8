"""float32 erf in float32 arithmetic (``_backend.erf32``): within 1 ulp of the correctly rounded
value, odd, its special values, and the same bits from numba's loop and from NumPy's ufuncs."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import _backend as B

sp = pytest.importorskip("scipy.special")


def _ulps(got: np.ndarray, x: np.ndarray) -> np.ndarray:
    """How many float32 steps ``got`` lies from SciPy's float64 erf of ``x`` rounded to float32
    (the correctly rounded value, but in the rarest near-ties)."""
    ref = sp.erf(x.astype(np.float64)).astype(np.float32)
    order = lambda a: np.where(a.view(np.int32) < 0,  # noqa: E731 - the floats' order as ints
                               np.int64(-2**31) - a.view(np.int32), a.view(np.int32)).astype(
                                   np.int64)
    return np.abs(order(got) - order(ref))


def _floats(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi), lo and hi non-negative."""
    a, b = np.float32(lo).view(np.int32), np.float32(hi).view(np.int32)
    return np.arange(a, b, dtype=np.int32).view(np.float32)


def _sample() -> np.ndarray:
    """~1e6 float32, both signs: every binade (uniform bit patterns up to erf's ±1), the pieces'
    ends and their neighbours, denormals, the special values."""
    rng = np.random.default_rng(11)
    one = np.float32(B.ERF32_ONE).view(np.int32)
    bits = rng.integers(0, int(one) + 4096, 900_000, dtype=np.int32)
    ends = np.array([1.0, 2.25, B.ERF32_ONE, 1.625, 3.0, 0.5, 2.0], np.float32).view(np.int32)
    near = (ends[:, None] + np.arange(-300, 300, dtype=np.int32)).ravel()
    special = np.array([0.0, 1e-45, 2e-45, 1.1754942e-38, 1.1754944e-38, 1e-30, 2**-75, 2**-63,
                        1e-8, 1e-4, 3.9, 4.0, 5.0, 10.0, 1e10, 3.4028235e38, np.inf, np.nan],
                       np.float32)
    x = np.concatenate([bits.view(np.float32), near.view(np.float32), _floats(0, 1e-40),
                        special, rng.uniform(-5, 5, 50_000).astype(np.float32)])
    x = np.abs(x)
    return np.concatenate([x, -x])


def test_erf32_is_within_an_ulp_odd_and_keeps_the_special_values(cpu_kernels):
    """On a dense sample of every binade, the pieces' ends and the special values: within 1 ulp
    of the correctly rounded erf (the exhaustive check is the slow test below), erf(-x) is
    -erf(x) to the bit, ±0 keeps its sign, ±inf and everything from ERF32_ONE on give ±1, NaN
    stays NaN, and 2/√π·x holds for tiny and denormal x."""
    x = _sample()
    with np.errstate(invalid="ignore"):
        got = B.erf32(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    fin = ~np.isnan(x)
    assert np.isnan(got[~fin]).all()
    assert _ulps(got[fin], x[fin]).max() <= 1
    n = x.size // 2
    assert got[n:].tobytes() == (-got[:n]).tobytes()  # exactly odd, NaN's payload kept
    z = B.erf32(np.array([0.0, -0.0], np.float32))
    assert z.tolist() == [0.0, 0.0] and np.signbit(z).tolist() == [False, True]
    big = np.array([B.ERF32_ONE, 3.92, 4, 100, 3e38, np.inf], np.float32)
    assert B.erf32(big).tolist() == [1.0] * 6 and B.erf32(-big).tolist() == [-1.0] * 6
    below = np.nextafter(np.float32(B.ERF32_ONE), np.float32(0))
    assert np.float32(sp.erf(np.float64(below))) < 1  # ERF32_ONE is the least such float
    tiny = np.array([1e-45, 1e-40, 1e-38, 1e-20, 1e-10, 1e-6], np.float32)
    exact = (tiny.astype(np.float64) * (2 / np.sqrt(np.pi))).astype(np.float32)
    assert np.abs(B.erf32(tiny).view(np.int32) - exact.view(np.int32)).max() <= 1


def test_erf32_loop_and_numpy_form_give_the_same_bits():
    """numba's loop and the NumPy form perform the same float32 operations in the same order:
    the same bits for every value of the sample, for every size, layout (F-ordered, transposed,
    strided, reversed), 0-d arrays and float32 scalars (a NumPy scalar back, as a ufunc)."""
    pytest.importorskip("numba")
    import numba  # noqa: F401 - loaded, as a compiled program or eager training loads it

    assert B.cpu_kernels() is not None
    x = _sample()
    with np.errstate(invalid="ignore"):
        loop = B.erf32(x)
        form = B._erf32_numpy(x)
    assert loop.tobytes() == form.tobytes()
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 15, 16, 17, 100, 1023, 1024, 4099):
        v = (rng.standard_normal(n) * 2).astype(np.float32)
        assert B.erf32(v).tobytes() == B._erf32_numpy(v).tobytes()
    m = (rng.standard_normal((37, 53)) * 2).astype(np.float32)
    ref = B._erf32_numpy(m)
    for view, want in ((np.asfortranarray(m), ref), (m.T, ref.T), (m[::2, 1::3], ref[::2, 1::3]),
                       (m[::-1], ref[::-1]), (m[:, ::-2], ref[:, ::-2])):
        got = B.erf32(view)
        assert got.shape == want.shape and got.tobytes() == np.ascontiguousarray(want).tobytes()
        assert B.CPU.erf(view).tobytes() == got.tobytes()
    for v in (np.float32(0.7), np.float32(-1.5), np.float32(np.nan), np.array(2.5, np.float32)):
        got = B.CPU.erf(v)
        assert type(got) is np.float32
        assert np.array([got]).tobytes() == B._erf32_numpy(np.array([v])).tobytes()


def test_float32_erf_never_calls_scipy_and_other_dtypes_keep_theirs(cpu_kernels, monkeypatch):
    """Host float32 erf is erf32 at every size, with or without numba (the same bits); float64
    stays SciPy's to the bit and float16 SciPy's rounded, as before."""
    rng = np.random.default_rng(7)
    d = rng.standard_normal(500) * 2
    f16 = d.astype(np.float16)
    want64, want16 = sp.erf(d), sp.erf(f16).astype(np.float16)
    x = d.astype(np.float32)
    ref = B._erf32_numpy(x)
    calls = []
    special = B.CPU._special_module()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(special, name)

    monkeypatch.setattr(B.CPU, "_special", Spy())
    for v in (x, x[:3], x[:1].reshape(()), x[7], x.reshape(20, 25).T):
        assert np.asarray(B.CPU.erf(v)).tobytes() == np.asarray(
            B._erf32_numpy(np.asarray(v))).tobytes()
    assert B.CPU.erf(x).tobytes() == ref.tobytes()
    assert ng.erf(ng.tensor(x)).numpy().tobytes() == ref.tobytes()
    assert calls == []
    assert B.CPU.erf(d).tobytes() == want64.tobytes()
    out16 = B.CPU.erf(f16)
    assert out16.dtype == np.float16 and out16.tobytes() == want16.tobytes()
    assert calls == ["erf", "erf"]


def test_erf32_refuses_other_dtypes():
    with pytest.raises(TypeError, match="erf32: expected a float32 array, got float64"):
        B.erf32(np.zeros(3))


@pytest.mark.slow
def test_erf32_is_within_an_ulp_for_every_float32():
    """Every float32: from 0 to ERF32_ONE (and on to 4) within 1 ulp of the correctly rounded
    erf, numba's loop and the NumPy form giving the same bits; each negative float the
    positive one's negation. (Past 4 erf32 returns ±1 by a select, and so does the correctly
    rounded erf, which is monotone and 1 at ERF32_ONE.)"""
    pytest.importorskip("numba")
    import numba  # noqa: F401 - the loop: ~1 ns a value

    assert B.cpu_kernels() is not None
    end = int(np.float32(4.0).view(np.int32))
    worst, wrong, step = 0, 0, 1 << 22
    for start in range(0, end, step):
        x = np.arange(start, min(start + step, end), dtype=np.int32).view(np.float32)
        got = B.erf32(x)
        d = _ulps(got, x)
        worst, wrong = max(worst, int(d.max())), wrong + int(np.count_nonzero(d))
        assert B.erf32(-x).tobytes() == (-got).tobytes()
        if (start // step) % 8 == 0:  # the NumPy form on an eighth of them (~10 ns a value)
            assert B._erf32_numpy(x).tobytes() == got.tobytes()
    assert worst <= 1, worst
    assert wrong < 0.1 * end  # ~6% of the floats are 1 ulp off
