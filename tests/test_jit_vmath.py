"""jit's vectorisable float32 tanh, sin and cos (nodegrad/jit/_vmath.py): within half an ulp
(plus a hair) of the exact values on a dense sweep of float32 (the float32-evaluated tanh of the
GRU loop kernels within 1.5), NumPy's answers on NaN, inf, zeros,
tiny and huge inputs (huge sin/cos arguments rerun the kernel with the C library's functions),
and fused kernels with many results (written through a scratch array) or ones that also sum."""

import math
import sys

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.jit import _vmath
from nodegrad.jit import fuse as F

numba = pytest.importorskip("numba")

SWEEP = '''
@numba.njit(nogil=True)
def sweep(fast, ref, lo, hi, step, out):
    """Max error in float32 ulps (of the exact value) and max relative error over the float32
    numbers whose bit patterns are lo, lo + step, ... < hi; out[2] counts NaN mismatches."""
    mu = 0.0
    mr = 0.0
    nan = 0
    for b in range(lo, hi, step):
        x = numpy.uint32(b).view(numpy.float32)
        v = numpy.float64(fast(x))
        r = ref(numpy.float64(x))
        if v != v or r != r:
            nan += not (v != v and r != r)
            continue
        a = abs(numpy.float64(numpy.float32(r)))
        ulp = 2.0 ** -149 if a == 0.0 else max(2.0 ** (math.frexp(a)[1] - 24), 2.0 ** -149)
        mu = max(mu, abs(v - r) / ulp)
        if r != 0.0:
            mr = max(mr, abs(v - r) / abs(r))
    out[0] = mu
    out[1] = mr
    out[2] = nan


@numba.njit
def vtanh32(x):  # _vtanh32 is inlined where it is called: a function to pass to sweep
    return _vtanh32(x)
'''


@pytest.fixture(scope="module")
def vm():
    """_vmath's functions compiled on their own, with a sweep over float32 inputs."""
    ns = {"numba": numba, "math": math, "numpy": np}
    exec(_vmath.SOURCE + SWEEP, ns)
    return ns


def _bits(x) -> int:
    return int(np.float32(x).view(np.uint32))


INF = _bits(np.inf)
NEG = 0x80000000
RANGES = {
    "tanh": [(0, INF + 1), (NEG, NEG + INF + 1)],
    "sin": [(0, _bits(_vmath.SINCOS_MAX) + 1), (NEG, NEG + _bits(_vmath.SINCOS_MAX) + 1)],
}
RANGES["cos"] = RANGES["sin"]


@pytest.mark.parametrize("name", ["tanh", "sin", "cos"])
def test_float32_functions_are_within_half_an_ulp_on_a_dense_sweep(vm, name):
    fast = vm["_v" + name]
    ref = {"tanh": vm["math"].tanh, "sin": vm["math"].sin, "cos": vm["math"].cos}[name]
    out = np.zeros(3)
    for lo, hi in RANGES[name]:  # every 499th float32 (prime: all exponents and mantissas)
        vm["sweep"](fast, numba.njit(lambda x: ref(x)), lo, hi, 499, out)
        assert out[2] == 0, f"{name}: NaN where the exact value is not (or the reverse)"
        # exhaustive sweeps measured at most 0.5003 ulps (tanh), 0.5000 (sin, cos)
        assert out[0] <= 0.501, f"{name}: {out[0]} ulps"
        assert out[1] <= 6e-8, f"{name}: {out[1]} relative"


def test_float32_evaluated_tanh_is_within_one_and_a_half_ulps(vm):
    """_vtanh32 (the GRU loop kernels'): float32 arithmetic, NumPy's own accuracy class."""
    out = np.zeros(3)
    ref = numba.njit(lambda x: math.tanh(x))
    for lo, hi in RANGES["tanh"]:
        vm["sweep"](vm["vtanh32"], ref, lo, hi, 499, out)
        assert out[2] == 0
        assert out[0] <= 1.5, f"{out[0]} ulps"  # 1.495 measured on every 37th float32
    tanh = vm["vtanh32"]
    f32 = np.float32
    assert np.isnan(tanh(f32(np.nan)))
    assert tanh(f32(np.inf)) == 1.0 and tanh(f32(-9.5)) == -1.0
    for x in (f32(0.0), f32(-0.0), f32(1e-45), f32(-3e-20)):
        assert tanh(x) == x and np.signbit(tanh(x)) == np.signbit(x)


def test_special_values_give_what_numpy_gives(vm):
    tanh, sin, cos, bad = vm["_vtanh"], vm["_vsin"], vm["_vcos"], vm["_vbad"]
    f32 = np.float32
    assert np.isnan(tanh(f32(np.nan)))
    assert tanh(f32(np.inf)) == 1.0 and tanh(f32(-np.inf)) == -1.0
    assert tanh(f32(9.5)) == 1.0 and tanh(f32(-30.0)) == -1.0
    for x in (f32(0.0), f32(-0.0), f32(1e-45), f32(-1e-45), f32(1e-38), f32(-3e-20)):
        for fn in (tanh, sin):
            y = fn(x)
            assert y == x and np.signbit(y) == np.signbit(x), (fn, x)
        assert cos(x) == 1.0
    for x in (np.nan, np.inf, -np.inf, 2.0**24 * 1.5, -3e38):
        assert bad(f32(x)), x
    for x in (0.0, -1e7, 2.0**24, 1e-30):
        assert not bad(f32(x)), x


def _close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    assert np.array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
    scale = np.abs(want[fin]).max()
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol * scale)


SPECIAL = np.array([0.0, -0.0, 1e-45, -1e-40, 1e-20, 0.3, -2.5, 9.0, -20.0, 1e4, 2.0**24,
                    -(2.0**24) * 3, 1e30, -3e38, np.inf, -np.inf, np.nan], np.float32)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's sin(inf)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_transcendentals_match_eager_on_special_inputs(dtype):
    def f(x):
        return ng.tanh(x) * 2.0 + ng.sin(x) - ng.cos(x * 0.5)

    x = ng.tensor(SPECIAL.astype(dtype))
    jf = ng.jit(f)
    for _ in range(3):  # huge, inf and NaN arguments of sin/cos: the kernel reruns with libm
        _close(jf(x).numpy(), f(x).numpy(), 1e-6 if dtype == np.float32 else 1e-12)
    assert jf.program.counts().get("fused", 0) >= 1
    zero = jf(ng.tensor(np.array([-0.0, 0.0], dtype))).numpy()
    assert np.array_equal(zero, f(ng.tensor(np.array([-0.0, 0.0], dtype))).numpy())


def test_a_rerun_with_libm_reads_inputs_that_no_result_overwrote():
    def f(x, eye):
        y = x @ eye  # an intermediate the kernel reads last: a candidate buffer for its result
        return (ng.sin(y) * 2.0 + ng.cos(y)) @ eye

    eye = ng.tensor(np.eye(4, dtype=np.float32))
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(4, 4)
    jf = ng.jit(f)
    jf(ng.tensor(x), eye)
    x[1, 2] = 1e30  # beyond the vectorised reduction: this call reruns the kernel
    for _ in range(2):
        _close(jf(ng.tensor(x), eye).numpy(), f(ng.tensor(x), eye).numpy(), 1e-6)


def _kernel_source(jf) -> str:
    fused = [i for i in jf.program.instrs if i.kind == "fused"]
    assert fused
    fn = fused[0].fn  # a numba dispatcher (no sin/cos here, so no C-library rerun wrapper)
    return open(sys.modules[fn.py_func.__module__].__file__).read()


def test_float32_kernels_carry_the_vectorised_functions_and_float64_ones_libm():
    def f(x):
        return ng.tanh(x * 2.0 + 1.0)

    src32 = _kernel_source(_ran(f, np.float32))
    assert _vmath.SOURCE in src32 and "_vtanh(" in src32.split("def kernel")[1]
    src64 = _kernel_source(_ran(f, np.float64))
    assert "_vtanh" not in src64 and "math.tanh(" in src64


def _ran(f, dtype):
    jf = ng.jit(f)
    x = ng.tensor(np.linspace(-2, 2, 12).astype(dtype))
    for _ in range(2):
        _close(jf(x).numpy(), f(x).numpy(), 1e-6 if dtype == np.float32 else 1e-12)
    return jf


def test_scratch_is_used_past_the_overlap_checks_llvm_makes():
    spec = [((10, 10), np.dtype(np.float32))]
    assert not F._scratch(2, 3, 2, False, spec * 2)
    assert F._scratch(20, 3, 2, False, spec * 20)  # 190 + 60 checks
    assert F._scratch(1, 200, 1, False, spec)
    assert F._scratch(1, 2, 1, True, spec)  # an in-order sum would hold the loop back
    assert not F._scratch(1, 200, 0, False, spec)  # 0-d: no loop
    assert not F._scratch(20, 3, 2, False, spec + [((10, 10), np.dtype(bool))])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_with_many_results_stay_bit_identical(dtype):
    def f(x, w):
        outs = []
        h = x
        for _ in range(18):
            h = h * w + x
            outs.append(h)
        return outs

    x = ng.tensor(np.linspace(-1, 1, 30).reshape(3, 10).astype(dtype))
    w = ng.tensor(np.linspace(0.5, 0.9, 10).astype(dtype))
    jf = ng.jit(f)
    for _ in range(3):
        for g, e in zip(jf(x, w), f(x, w)):
            assert np.array_equal(g.numpy(), e.numpy())
    assert jf.program.counts().get("fused", 0) == 1


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_a_kernel_that_writes_and_sums_adds_in_numpys_tolerance(axis):
    def f(x, w):
        h = ng.tanh(x * w + 0.5)
        g = ng.sin(h * 0.5)
        return h, g, g.sum(axis=axis)

    rng = np.random.default_rng(0)
    x = ng.tensor(rng.standard_normal((6, 7)).astype(np.float32))
    w = ng.tensor(rng.standard_normal(7).astype(np.float32))
    jf = ng.jit(f)
    for _ in range(3):
        for g, e in zip(jf(x, w), f(x, w)):
            _close(g.numpy(), e.numpy(), 1e-6)


def test_value_and_grad_of_a_tanh_sin_chain_within_tolerance():
    def chain(x, w, b):
        h = x
        for _ in range(6):
            h = ng.sin(ng.tanh(h * w + b) * 0.5)
        return h.sum()

    rng = np.random.default_rng(1)
    args = [ng.tensor(rng.uniform(-1, 1, (10, 10)).astype(np.float32)) for _ in range(3)]
    f = ng.value_and_grad(chain, argnums=(0, 1, 2))
    jf = ng.jit(f)
    for _ in range(3):
        (v, gs), (ve, ges) = jf(*args), f(*args)
        _close(v.numpy(), ve.numpy(), 1e-6)
        for g, e in zip(gs, ges):
            _close(g.numpy(), e.numpy(), 1e-6)


@pytest.mark.parametrize("axis", [None, 1])
def test_a_kernel_whose_only_result_is_a_sum_keeps_libm(axis):
    # such a kernel is compiled with reassociation flags, which numba passes on to the functions
    # it calls: _vmath's rounding to integers would not survive them
    def f(x, w):
        return ng.tanh(x @ w).sum(axis=axis) * 0.5

    rng = np.random.default_rng(2)
    w = ng.tensor(rng.standard_normal((4, 3)).astype(np.float32))
    jf = ng.jit(f)
    for _ in range(3):
        x = ng.tensor(rng.standard_normal((8, 4)).astype(np.float32))
        _close(jf(x, w).numpy(), f(x, w).numpy(), 1e-6)
    src = _kernel_source(jf)
    assert "fastmath" in src and "math.tanh(" in src and "_vtanh" not in src
