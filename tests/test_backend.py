"""The NumPy/CuPy split lives in one module; GPU tests run only where CuPy sees a device."""

import os
import pathlib
import re
import warnings

import numpy as np
import pytest

import nodegrad as ng

PKG = pathlib.Path(ng.__file__).parent
gpu = pytest.mark.gpu


def test_only_backend_imports_numpy_or_cupy():
    offenders = []
    for f in PKG.rglob("*.py"):
        if f.name == "_backend.py":
            continue
        src = f.read_text()
        if re.search(r"^\s*(import|from)\s+(numpy|cupy|cupyx)\b", src, re.M):
            offenders.append(str(f.relative_to(PKG)))
    assert offenders == []


def test_lower_layers_do_not_import_higher_ones():
    order = ["errors", "_backend", "autodiff", "tensor", "primitive"]
    for i, name in enumerate(order):
        src = (PKG / f"{name}.py").read_text()
        for higher in order[i + 1:] + ["ops", "func", "testing"]:
            assert not re.search(rf"^\s*from \.{higher}\b", src, re.M), (name, higher)


def test_primitive_declared_once_and_documented():
    for name, p in ng.primitives.items():
        assert p.name == name and p.__doc__, name


@gpu
def test_cuda_roundtrip_and_gradients():
    x = ng.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3), device="cuda",
                  requires_grad=True)
    assert x.device == "cuda:0"
    y = (ng.tanh(x @ x.T) * 2).sum()
    y.backward()
    xc = ng.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3), requires_grad=True)
    (ng.tanh(xc @ xc.T) * 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xc.grad.numpy(), rtol=1e-5)


@gpu
def test_cuda_device_mixing_is_an_error():
    with pytest.raises(ng.DeviceError, match="different devices"):
        ng.ones(2, device="cuda") + ng.ones(2)


@gpu
def test_to_device_is_differentiable():
    x = ng.ones(3, requires_grad=True)
    (x.to("cuda") * 2).sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), [2, 2, 2])


@gpu
def test_cuda_random_reproducible():
    ng.manual_seed(3)
    a = ng.randn(5, device="cuda").numpy()
    ng.manual_seed(3)
    np.testing.assert_array_equal(a, ng.randn(5, device="cuda").numpy())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN in, NaN out
@pytest.mark.parametrize("ufunc", ["maximum", "minimum", "logaddexp"])
def test_accumulate_by_doubling_matches_the_ufunc(ufunc):
    """CuPy's path of ``Backend.accumulate`` (a scan by doubling), run here on NumPy arrays:
    the same values as ``ufunc.accumulate`` along every axis, lengths 0 to 9, NaN carried."""
    from nodegrad import _backend as B

    doubling = B.Backend("cuda", np, 0)  # device_id set: the scan by doubling
    rng = np.random.default_rng(5)
    for n in range(10):
        for shape, axis in (((n,), 0), ((3, n), 1), ((n, 2, 3), 0), ((2, n, 3), 1)):
            x = rng.standard_normal(shape) * 3
            if x.size > 4:
                x.flat[3] = np.nan
            want = getattr(np, ufunc).accumulate(x, axis=axis)
            got = doubling.accumulate(ufunc, x, axis)
            if ufunc == "logaddexp":
                np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
            else:
                np.testing.assert_array_equal(got, want)


def test_small_products_run_on_one_blas_thread_and_restore_the_count():
    """A product under SMALL_PRODUCT multiply-adds switches OpenBLAS to one thread for itself
    only: the values are a @ b and the user's thread count stands afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from nodegrad import _backend as B

    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 60)).astype(np.float32)  # above BLAS_ONE_THREAD: switched
    b = rng.standard_normal((60, 50)).astype(np.float32)
    assert B.BLAS_ONE_THREAD < a.size * b.shape[1] < B.SMALL_PRODUCT
    if not B._BlasThreads.looked:
        B._BlasThreads.find()
    if B._BlasThreads.get is None:
        pytest.skip("NumPy is not linked with a pthreads OpenBLAS")
    for n in (2, 1):
        with threadpoolctl.threadpool_limits(n, user_api="blas"):
            before = B._BlasThreads.get()
            np.testing.assert_array_equal(B.matmul(a, b), a @ b)
            np.testing.assert_array_equal(B.matmul(a[0], b), a[0] @ b)  # OpenBLAS's own rule
            assert B._BlasThreads.get() == before


def test_a_small_products_thread_count_follows_its_shape_alone(monkeypatch, request):
    """A product under SMALL_PRODUCT multiply-adds runs on one thread and then restores the
    user's count, also right after a large product (OpenBLAS's workers still spinning): some
    shapes' bits depend on the thread count, so a rule that looked at what ran before would
    give a model other bits after an unrelated product (next test)."""
    from nodegrad import _backend as B

    if not B._BlasThreads.looked:
        B._BlasThreads.find()
    if B._BlasThreads.get is None:
        pytest.skip("NumPy is not linked with a pthreads OpenBLAS")
    sets = []
    real_set = B._BlasThreads.set
    users = B._BlasThreads.get()
    request.addfinalizer(lambda: real_set(users))  # the pretended count of 2 does not stay
    monkeypatch.setattr(B._BlasThreads, "set", lambda n: (sets.append(n), real_set(n))[1])
    monkeypatch.setattr(B._BlasThreads, "get", lambda: 2)
    rng = np.random.default_rng(1)
    big = rng.standard_normal((256, 512), np.float32), rng.standard_normal((512, 256), np.float32)
    small = rng.standard_normal((100, 60), np.float32), rng.standard_normal((60, 50), np.float32)
    assert big[0].shape[0] * big[0].shape[1] * big[1].shape[1] >= B.SMALL_PRODUCT
    np.testing.assert_array_equal(B.matmul(*small), small[0] @ small[1])
    assert sets == [1, 2]  # one thread, then the count restored
    sets.clear()
    np.testing.assert_array_equal(B.matmul(*big), big[0] @ big[1])
    assert sets == []  # the user's threads
    np.testing.assert_array_equal(B.matmul(*small), small[0] @ small[1])
    assert sets == [1, 2]
    sets.clear()
    out = np.empty((100, 50), np.float32)
    assert B.product_for(100, 60, 50)(*small, out) is out  # a compiled program's form alike
    assert sets == [1, 2]
    sets.clear()
    tiny = np.ones((10, 10), np.float32)
    B.matmul(tiny, tiny)  # under BLAS_ONE_THREAD: OpenBLAS's own rule
    assert sets == []


def test_a_models_bits_do_not_depend_on_products_run_before():
    """The same training steps give the same bits whatever products ran before them in the
    process (a resumed run starts in a fresh one): a 32 x 128 x 128 layer, whose product has
    other bits on two OpenBLAS threads than on one, before a layer of 2^25 multiply-adds."""
    from nodegrad import nn
    from nodegrad.nn import functional as F

    rng = np.random.default_rng(0)
    xs = [ng.tensor(rng.standard_normal((32, 128)).astype(np.float32)) for _ in range(3)]
    ys = [ng.tensor(rng.integers(0, 10, 32)) for _ in range(3)]

    def train(before):
        ng.manual_seed(0)
        m = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8192), nn.ReLU(),
                          nn.Linear(8192, 10))
        opt = ng.optim.SGD(m.parameters(), lr=0.01)
        losses = []
        for i in range(3):
            if i in before:
                ng.randn(512, 512) @ ng.randn(512, 512)  # an unrelated large product
            opt.zero_grad()
            loss = F.cross_entropy(m(xs[i]), ys[i])
            loss.backward()
            opt.step()
            losses.append(loss.numpy())
        return losses, [p.numpy() for p in m.parameters()]

    want = train(())
    for before in ((0,), (1, 2)):
        got = train(before)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got[0] + got[1], want[0] + want[1]))


def test_a_wide_layers_products_run_transposed_with_the_same_values():
    """linear_product: a layer LINEAR_WIDE times wider than its batch takes (W xᵀ)ᵀ, F-ordered,
    with the bytes of x Wᵀ (x C-ordered) on the SkylakeX-family kernels, within rounding on
    others; a narrower one the plain product, C-ordered. The next
    layer's input gradient (linear_input_grad) takes the layout of its input, (Wᵀ gᵀ)ᵀ for an
    F-ordered one, with the values of g W."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(2)
    for rows, k, width in ((256, 784, 1024), (32, 12, 128), (3, 7, 6), (100, 40, 100),
                           (256, 1024, 10)):
        x = rng.standard_normal((rows, k), np.float32)
        w = rng.standard_normal((width, k), np.float32)
        wide = width >= B.LINEAR_WIDE * rows
        z = B.linear_product(x, w)
        wt = np.ascontiguousarray(w.T) if B.linear_copies_weight(x, w) else w.T
        if B._small_kernels() or not wide:  # the same bits, in logical order
            assert z.tobytes() == B.matmul(x, wt).tobytes()  # (its thread rule)
        else:  # other kernels (Haswell's) may round the transposed product otherwise
            np.testing.assert_allclose(z, x @ wt, rtol=1e-5, atol=1e-3)
        assert z.flags.f_contiguous if wide else z.flags.c_contiguous
        # the next layer, from width inputs to k outputs: its input gradient takes z's layout
        g, wl = rng.standard_normal((rows, k), np.float32), w.T.copy()
        gx = B.linear_input_grad(g, wl, z)
        np.testing.assert_allclose(gx, g @ wl, rtol=1e-5, atol=1e-3)
        assert gx.flags.f_contiguous if wide and rows > 1 else gx.flags.c_contiguous
    x3 = rng.standard_normal((2, 3, 4), np.float32)  # more than a matrix: the plain product
    assert B.linear_product(x3, rng.standard_normal((16, 4), np.float32)).flags.c_contiguous


def test_small_float32_layers_multiply_by_a_c_ordered_copy_of_the_weight(monkeypatch):
    """linear_copies_weight: on OpenBLAS's SkylakeX-family kernels a float32 layer of up to
    SMALL_KERNEL_MNK multiply-adds, whose transposed weight would keep it from the small-matrix
    kernels, multiplies by a C-ordered copy; not other dtypes, not larger products, not where
    the transposed product is a small-kernel one already (at most 1200 results, 32 inputs or
    more), not on other kernel families. linear_product's bits are then the copy's."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 40), np.float32)
    w = rng.standard_normal((100, 40), np.float32)
    B._BlasThreads.find()
    monkeypatch.setattr(B._BlasThreads, "arch", "SkylakeX")
    assert B.linear_copies_weight(x, w)
    z = B.linear_product(x, w)
    assert z.tobytes() == (x @ np.ascontiguousarray(w.T)).tobytes() and z.flags.c_contiguous
    assert not B.linear_copies_weight(x.astype(np.float64), w.astype(np.float64))
    assert not B.linear_copies_weight(rng.standard_normal((100, 400), np.float32),
                                      rng.standard_normal((100, 400), np.float32))  # 4 M
    assert not B.linear_copies_weight(x, w[:10])  # 1000 results of 40 inputs: small already
    assert B.linear_copies_weight(x[:, :20].copy(), w[:10, :20].copy())  # 20 inputs: not
    assert not B.linear_copies_weight(x[:8], w)  # too few rows to repay the copy
    assert not B.linear_copies_weight(np.asfortranarray(x), w)
    monkeypatch.setattr(B._BlasThreads, "arch", "Haswell")
    assert not B.linear_copies_weight(x, w)
    assert B.linear_product(x, w).tobytes() == (x @ w.T).tobytes()


def test_a_convolutions_product_runs_in_row_blocks_for_the_small_kernels(monkeypatch):
    """matmul_row_blocks: on the SkylakeX-family kernels a float32 product of more than
    SMALL_KERNEL_MNK multiply-adds (up to ROW_BLOCKS_MAX times) goes in blocks of rows of at
    most that many, each the product of its rows (the bits of those block products), counted
    as one product by the threads rule; other products, dtypes and kernel families are
    B.matmul's."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(4)
    a = rng.standard_normal((1000, 75), np.float32)  # J3's second convolution: 1.9 M
    w = rng.standard_normal((75, 25), np.float32)
    B._BlasThreads.find()
    monkeypatch.setattr(B._BlasThreads, "arch", "SkylakeX")
    rows = B.SMALL_KERNEL_MNK // (75 * 25) // 16 * 16
    blocks = [a[i:i + rows] @ w for i in range(0, 1000, rows)]
    y = B.matmul_row_blocks(a, w)
    assert len(blocks) == 2 and y.tobytes() == np.concatenate(blocks).tobytes()
    np.testing.assert_allclose(y, a @ w, rtol=1e-5, atol=1e-4)
    f = np.asfortranarray(rng.standard_normal((8192, 9), np.float32))  # taps-first columns
    wf = rng.standard_normal((9, 16), np.float32)
    yf = B.matmul_row_blocks(f, wf)
    r = B.SMALL_KERNEL_MNK // (9 * 16) // 16 * 16
    assert yf.tobytes() == np.concatenate([f[i:i + r] @ wf for i in range(0, 8192, r)]).tobytes()
    for x, k in ((a.astype(np.float64), w.astype(np.float64)), (a[:500], w),
                 (rng.standard_normal((2000, 500), np.float32),
                  rng.standard_normal((500, 100), np.float32))):  # 100 M: too large
        assert B.matmul_row_blocks(x, k).tobytes() == B.matmul(x, k).tobytes()
    monkeypatch.setattr(B._BlasThreads, "arch", "Haswell")
    assert B.matmul_row_blocks(a, w).tobytes() == B.matmul(a, w).tobytes()


def test_a_weight_gradients_product_runs_in_blocks_of_its_inner_dimension(monkeypatch):
    """matmul_k_blocks: on the SkylakeX-family kernels a float32 product of more than
    SMALL_KERNEL_MNK multiply-adds (up to ROW_BLOCKS_MAX times) is the sum, in order, of the
    products over blocks of its inner dimension of at most that many each (those bits), within
    float32 rounding of the whole product; other
    products, dtypes and kernel families are B.matmul's."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(5)
    rows = rng.standard_normal((1000, 25), np.float32)  # J3's second weight gradient
    cols = rng.standard_normal((1000, 75), np.float32)
    r = rows.T  # F-ordered, as the convolution passes it
    B._BlasThreads.find()
    monkeypatch.setattr(B._BlasThreads, "arch", "SkylakeX")
    terms = B.SMALL_KERNEL_MNK // (25 * 75) // 16 * 16
    want = r[:, :terms] @ cols[:terms]
    for i in range(terms, 1000, terms):
        want += r[:, i:i + terms] @ cols[i:i + terms]
    dw = B.matmul_k_blocks(r, cols)
    assert dw.tobytes() == want.tobytes()
    exact = r.astype(np.float64) @ cols.astype(np.float64)
    assert np.abs(dw - exact).max() <= 1e-5 * np.abs(exact).max()
    for a, b in ((r.astype(np.float64), cols.astype(np.float64)), (r[:, :500], cols[:500]),
                 (rng.standard_normal((200, 2000), np.float32),
                  rng.standard_normal((2000, 100), np.float32))):  # 40 M: too large
        assert B.matmul_k_blocks(a, b).tobytes() == B.matmul(a, b).tobytes()
    monkeypatch.setattr(B._BlasThreads, "arch", "Haswell")
    assert B.matmul_k_blocks(r, cols).tobytes() == B.matmul(r, cols).tobytes()


def test_keep_freed_memory_respects_opt_outs():
    from nodegrad import _backend as B

    assert B.keep_freed_memory({"NODEGRAD_KEEP_FREED_MEMORY": "0"}) is False
    assert B.keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "131072"}) is False
    assert B.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is False
    try:
        glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        glibc = False
    assert B.keep_freed_memory({}) is glibc  # idempotent: the values set at import again
    assert B.KEPT_FREED_MEMORY is (glibc and not any(
        k.startswith("MALLOC_") and k.endswith("_") for k in os.environ)
        and "glibc.malloc" not in os.environ.get("GLIBC_TUNABLES", "")
        and os.environ.get("NODEGRAD_KEEP_FREED_MEMORY", "1") != "0")


def test_freed_buffers_are_reused_without_page_faults():
    """After the first round, arrays of a few MiB come back from the heap, not from fresh pages
    (each fault costs microseconds on a VM)."""
    from nodegrad import _backend as B

    resource = pytest.importorskip("resource")
    if not B.KEPT_FREED_MEMORY:
        pytest.skip("malloc tuning not applied on this platform or environment")
    x = ng.ones(1_000_000)  # 4 MB float32, as a per-example gradient block

    def churn():
        for _ in range(10):
            y = x * 2.0
            z = y * y
            del y, z

    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 500, f"{faults} page faults for 20 arrays of 4 MB (~20000 without reuse)"


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "broadcast"])
@pytest.mark.parametrize("axis,keepdims", [((0, 2, 3), False), ((0, 2, 3), True), ((0,), False),
                                           ((2, 3), True), ((1, 2, 3), False), ((0, 1), False)])
def test_sum_over_outer_axes_matches_numpy(layout, axis, keepdims):
    from nodegrad import _backend as B

    rng = np.random.default_rng(0)
    base = rng.standard_normal((64, 8, 8, 16))
    x = {"nchw": np.ascontiguousarray(base.transpose(0, 3, 1, 2)),
         "channels_last": base.transpose(0, 3, 1, 2),
         "strided": base.transpose(0, 3, 1, 2)[:, ::2],
         "broadcast": np.broadcast_to(base[:1], base.shape).transpose(0, 3, 1, 2)}[layout]
    for dt in (np.float32, np.float64):
        xd = x.astype(dt) if layout != "broadcast" else x  # astype keeps the layout
        got, want = B.sum_outer(xd, axis, keepdims), np.sum(xd, axis=axis, keepdims=keepdims)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4 if xd.dtype == np.float32 else 1e-12,
                                   atol=1e-3 if xd.dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("shape", [(100, 100), (31, 200), (1000, 7), (64, 1000)])
@pytest.mark.parametrize("axis", [(0,), (-2,), (1,)])
def test_a_bias_gradients_sum_matches_numpy(shape, axis):
    """(N, C) over N is a product with ones from 32 rows; it equals NumPy's row-by-row sum to
    float rounding, keeps the dtype and shape, and a non-contiguous array is summed as well."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(1)
    for dt in (np.float32, np.float64):
        x = rng.standard_normal(shape).astype(dt)
        for xd in (x, x[::-1], np.asfortranarray(x)):
            for keepdims in (False, True):
                got, want = B.sum_outer(xd, axis, keepdims), np.sum(xd, axis=axis,
                                                                    keepdims=keepdims)
                assert got.shape == want.shape and got.dtype == want.dtype
                exact = np.sum(xd.astype(np.float64), axis=axis, keepdims=keepdims)
                tol = 1e-5 if dt == np.float32 else 1e-13
                np.testing.assert_allclose(got, exact, rtol=tol, atol=tol * shape[0])


def test_relu_equals_numpys_maximum_in_every_layout(cpu_kernels):
    """The same bytes and the same strides as np.maximum(x, 0), against kept zeros or in the
    numba loop: C-ordered, channels-last, Fortran, reversed, strided, broadcast, small,
    float16/64, and into a given buffer (in place too)."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(5)
    base = rng.standard_normal((64, 48, 5)).astype(np.float32)
    base.flat[::7], base.flat[::11], base.flat[::13] = -0.0, np.nan, -np.inf
    layouts = [base, base.transpose(0, 2, 1), np.asfortranarray(base), base[::-1], base[:, ::2],
               np.broadcast_to(base[:1], base.shape), base[:2, :2], base.astype(np.float64),
               base.astype(np.float16), rng.standard_normal(B.RELU_ZEROS_MAX + 1)]
    for x in layouts:
        got, want = B.relu(x), np.maximum(x, 0)
        assert got.dtype == want.dtype and got.strides == want.strides
        assert got.tobytes() == want.tobytes()
        out = np.empty(x.shape, x.dtype)
        assert B.relu(x, out) is out and out.tobytes() == want.tobytes()
        if x.flags.writeable:
            y = x.copy(order="K")
            assert B.relu(y, y) is y and y.tobytes() == np.maximum(x, 0, order="K").tobytes()


def test_relu_grad_equals_numpys_masked_multiply(cpu_kernels):
    """g * (ans != 0) in g's dtype (ans is relu's output: a NaN passes g), byte for byte, with
    signed zeros, NaN and infinities on both sides, for two dense arrays of one layout (C or F);
    two layouts, other dtypes or shapes are left to the caller (None)."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(6)
    for dt in (np.float32, np.float64):
        g = rng.standard_normal((100, 30)).astype(dt)
        ans = np.maximum(rng.standard_normal((100, 30)), 0).astype(dt)
        g.flat[::7], g.flat[::11], g.flat[::13] = -0.0, np.nan, -np.inf
        ans.flat[::5], ans.flat[::17] = np.nan, np.inf
        with np.errstate(invalid="ignore"):  # -inf * 0
            got, want = B.relu_grad(g, ans), np.multiply(g, ans != 0, dtype=dt)
        if cpu_kernels == "numpy":
            assert got is None
            continue
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        gf, af = np.asfortranarray(g), np.asfortranarray(ans)  # one layout, not C: the loop too
        with np.errstate(invalid="ignore"):
            got = B.relu_grad(gf, af)
        assert got.flags.f_contiguous and got.tobytes() == want.tobytes()
    g32 = np.ones((100, 30), np.float32)
    for ans in (np.ones((30, 100), np.float32).T, np.ones((100, 30)), np.ones((100, 31)),
                np.ones((10, 3), np.float32)):
        assert B.relu_grad(g32[:ans.shape[0], :ans.shape[1]], ans) is None


def test_add_bias_equals_numpys_in_place_add(cpu_kernels):
    """add_bias adds in place with NumPy's bits on C- and F-ordered matrices (numba's loop
    where loaded), NaN and infinities included; another dtype, a stack or a small matrix gets
    NumPy's own ``+=``."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        for shape, order in (((64, 100), "C"), ((64, 100), "F"), ((256, 40), "F"),
                             ((10, 10), "C"), ((4, 30, 20), "C")):
            m = np.asarray(rng.standard_normal(shape), dt, order=order)
            m.flat[::9] = np.nan
            b = rng.standard_normal(shape[-1]).astype(dt)
            b[::7] = np.inf
            want = m + b
            got = B.add_bias(m, b)
            assert got is m and got.flags.f_contiguous == (order == "F" and m.ndim == 2)
            assert got.tobytes() == want.tobytes()
    m32 = np.ones((64, 100), np.float32)
    assert B.add_bias(m32, np.full(100, 0.1)).tobytes() == (np.ones((64, 100), np.float32)
                                                           + np.full(100, 0.1)).astype(
        np.float32).tobytes()  # a float64 bias: NumPy's cast, not the loop


def test_relu_grad_across_layouts_equals_numpys_masked_multiply(cpu_kernels):
    """A gradient laid out otherwise than the activations (a strided conv's input gradient,
    positions first, against channels-last activations): the same bytes and ans's layout."""
    from nodegrad.ops.elementwise import _relu_grad_fwd

    rng = np.random.default_rng(7)
    for dt in (np.float32, np.float64):
        g = rng.standard_normal((19, 100, 25)).astype(dt).transpose(1, 2, 0)  # (N, C, L)
        ans = np.maximum(rng.standard_normal((100, 19, 25)), 0).astype(dt).transpose(0, 2, 1)
        g[0, 0, ::3], g[1, 1, ::2] = np.nan, -0.0
        ans[2, 2, ::2] = np.inf
        with np.errstate(invalid="ignore"):
            got, want = _relu_grad_fwd(np, g, ans), np.multiply(g, ans > 0, dtype=dt)
        assert got.strides == ans.strides and got.tobytes("A") == want.astype(dt).tobytes("A")
        sliced = ans[:, :, ::2]  # not dense: NumPy's masked multiply
        np.testing.assert_array_equal(_relu_grad_fwd(np, g[:, :, ::2], sliced),
                                      np.multiply(g[:, :, ::2], sliced > 0))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_cross_entropy_on_narrow_and_wide_rows_matches_a_float64_softmax(dt, cpu_kernels):
    """The plain path's loss and gradient, worked on transposed logits up to NARROW_ROWS
    classes (by numba's loops where loaded) and on rows above, in every layout: the float64
    reference within a few ulps; the exps and the shifted logits are exactly NumPy's."""
    from nodegrad.ops import nn as N

    rng = np.random.default_rng(2)
    tol = 2e-6 if dt == np.float32 else 1e-14
    for shape in ((100, 10), (16, N.NARROW_ROWS), (15, 3), (40, N.NARROW_ROWS + 1), (100, 1)):
        x0 = (rng.standard_normal(shape) * 8).astype(dt)
        t = rng.integers(0, shape[1], shape[0])
        for x in (x0, np.asfortranarray(x0), np.repeat(x0, 2, axis=1)[:, ::2]):
            z, e, s, transposed, picked = N._ce_parts(np, x, t)
            assert transposed == (shape[1] <= N.NARROW_ROWS and shape[0] >= 16)
            assert (picked is not None) == (transposed and cpu_kernels == "numba")
            zz = z.T if transposed else z
            want_z = x - x.max(axis=1, keepdims=True)
            assert zz.tobytes() == want_z.tobytes() and (e.T if transposed else e).tobytes() \
                == np.exp(want_z).tobytes()
            x64 = x.astype(np.float64)
            lse = np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1)) + x64.max(1)
            loss = N._ce_fwd(np, x, t, 1, -100, "mean")
            np.testing.assert_allclose(loss, (lse - x64[np.arange(len(t)), t]).mean(), rtol=tol)
            p = np.exp(x64 - lse[:, None])
            p[np.arange(len(t)), t] -= 1
            grad = N._ce_grad_fwd(np, x, dt(1), t, 1, -100, "mean")
            assert grad.shape == x.shape and grad.dtype == dt
            np.testing.assert_allclose(grad, p / len(t), rtol=tol, atol=tol / len(t))
            for it in (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
                ti = t.astype(it)  # row * classes overflows these: the index is int64
                assert N._ce_fwd(np, x, ti, 1, -100, "mean").tobytes() == loss.tobytes()
                assert N._ce_grad_fwd(np, x, dt(1), ti, 1, -100, "mean").tobytes() == \
                    grad.tobytes()


def test_cross_entropy_loops_give_numpys_bits():
    """Softmax cross-entropy on narrow rows through numba's loops gives the NumPy path's bytes
    (loss and gradient) for -inf and signed-zero logits, every layout, both dtypes, integer
    targets of any width, both reductions and a cotangent of another dtype; a NaN or +inf row
    and a target out of range take the general path in both."""
    pytest.importorskip("numba")
    from nodegrad import _backend as B
    from nodegrad.ops import nn as N

    def both(f):
        old = B._kernels
        try:
            B._kernels = False
            a = f()
            B._kernels = None
            assert B.cpu_kernels() is not None
            return a, f()
        finally:
            B._kernels = old

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for shape in ((100, 10), (16, N.NARROW_ROWS), (33, 1), (64, 2)):
            for trial in range(6):
                x0 = (rng.standard_normal(shape) * (1, 8, 30)[trial % 3]).astype(dt)
                if trial % 2:
                    x0.flat[1::5] = -np.inf
                    x0.flat[::3], x0.flat[2::7] = 0.0, -0.0
                t = rng.integers(0, shape[1], shape[0])
                for x in (x0, np.asfortranarray(x0), np.repeat(x0, 2, axis=1)[:, ::2]):
                    for it, red, g in ((np.int64, "mean", 1.0), (np.uint8, "sum", dt(0.5)),
                                       (np.int32, "mean", np.asarray(2.0, dt)),
                                       (np.int16, "mean", np.asarray(1.0))):
                        ti = t.astype(it)
                        with np.errstate(invalid="ignore", divide="ignore"):
                            a, b = both(lambda: (
                                N._ce_fwd(np, x, ti, 1, -100, red).tobytes(),
                                N._ce_grad_fwd(np, x, g, ti, 1, -100, red).tobytes()))
                        assert a == b, (dt, shape, trial, it, red)
    x = rng.standard_normal((100, 10)).astype(np.float32)
    t = rng.integers(0, 10, 100)
    assert B.ce_narrow(x, t) is None or B.ce_narrow(x, t)[0].shape == (10, 100)
    for v in (np.nan, np.inf):
        xv = x.copy()
        xv[3, 4] = v
        with np.errstate(invalid="ignore"):
            a, b = both(lambda: N._ce_fwd(np, xv, t, 1, -100, "mean").tobytes())
        assert a == b and np.isnan(np.frombuffer(a, np.float32)[0])  # +inf too, as PyTorch's
    ti = t.copy()
    ti[5] = -100  # ignored: the general path
    a, b = both(lambda: N._ce_fwd(np, x, ti, 1, -100, "mean").tobytes())
    assert a == b
    for v in (10, -1):
        ti[5] = v
        for k in (False, None):
            old, B._kernels = B._kernels, k
            try:
                with pytest.raises(IndexError, match=f"target {v} is out of range"):
                    N._ce_fwd(np, x, ti, 1, -100, "mean")
            finally:
                B._kernels = old


def test_log_softmax_of_a_nan_logit_is_nan_not_minus_inf():
    """A NaN logit makes its row's log-softmax and the loss NaN (as in PyTorch), where the log
    of the NaN sum once read as the log of zero."""
    x = np.zeros((4, 3), np.float32)
    x[1, 2] = np.nan
    t = ng.tensor(np.array([0, 1, 2, 0]))
    from nodegrad.nn import functional as F

    assert np.isnan(F.log_softmax(ng.tensor(x), 1).numpy()[1]).all()
    assert np.isnan(F.cross_entropy(ng.tensor(x), t).item())
    assert np.isnan(ng.logsumexp(ng.tensor(x), 1).numpy()[1])
    x[1] = -np.inf  # an empty sum is still -inf's log, without a warning
    with np.errstate(all="raise"):
        assert ng.logsumexp(ng.tensor(x), 1).numpy()[1] == -np.inf


@pytest.mark.parametrize("shapes", [((256, 100, 1), (256, 1, 40)), ((2, 3, 5, 1), (2, 3, 1, 4)),
                                    ((256, 100, 1), (256, 1, 100)),  # in halves on two threads
                                    ((3, 1, 1), (3, 1, 1)), ((0, 4, 1), (0, 1, 3)),
                                    ((2, 0, 1), (2, 1, 3))])
def test_stacked_outer_products_equal_the_broadcast_multiply(shapes, cpu_kernels):
    from nodegrad import _backend as B

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x, y = (rng.standard_normal(s).astype(dt) for s in shapes)
        x.flat[:1] = np.inf  # inf times 0 gives NaN there, as in NumPy's multiply
        y.flat[:1] = 0.0
        with np.errstate(invalid="ignore"):
            got, want = B.outer_stack(x, y), np.multiply(x, y)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)  # the same products, bit for bit
        strided = np.repeat(x, 2, axis=-2)[..., ::2, :]  # a view laid out otherwise
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(B.outer_stack(strided, y), want)
        z = ng.tensor(x, requires_grad=True)
        with np.errstate(invalid="ignore"):
            assert np.array_equal((z * ng.tensor(y)).numpy(), want, equal_nan=True)
    # anything else is left to the ufunc
    assert B.outer_stack(np.ones((2, 3, 1)), np.ones((2, 1, 3), np.float32)) is None
    assert B.outer_stack(np.ones((2, 3, 2)), np.ones((2, 1, 3))) is None
    assert B.outer_stack(np.ones((2, 3, 1)), np.ones((4, 1, 3))) is None


@pytest.mark.parametrize("shapes", [((100, 40), (256, 40, 1), "wx"),
                                    ((40, 100), (256, 1, 40), "xw"),
                                    ((4, 3), (5, 3, 4), "plain"), ((1, 1), (1, 1, 1), "wx")])
def test_matmul_into_equals_matmul(shapes):
    """A compiled program's product into its buffer gives matmul's bits, shared weights (stride
    0 along the batch, as vmap broadcasts them) included."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(1)
    w_shape, s_shape, kind = shapes
    for dt in (np.float32, np.float64):
        w = rng.standard_normal(w_shape).astype(dt)
        v = rng.standard_normal(s_shape).astype(dt)
        if kind == "wx":
            a, b = np.broadcast_to(w, (s_shape[0],) + w_shape), v
        elif kind == "xw":
            a, b = v, np.broadcast_to(w, (s_shape[0],) + w_shape)
        else:
            a, b = v, w
        want = B.matmul(a, b)
        out = np.full(want.shape, np.nan, dt)
        assert B.matmul_into(a, b, out) is out
        np.testing.assert_array_equal(out, want)
        tol = dict(rtol=1e-5, atol=1e-4) if dt == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out, np.matmul(a, b), **tol)
        strided = np.full(want.shape[:-1] + (2 * want.shape[-1],), np.nan, dt)[..., ::2]
        B.matmul_into(a, b, strided)  # an out= that is not contiguous takes NumPy's loop
        np.testing.assert_allclose(strided, want, **tol)


def test_elementwise_kernel_needs_a_cuda_device():
    from nodegrad import _backend as B

    with pytest.raises(ng.BackendUnavailable, match="elementwise_kernel 'k'.*CUDA device"):
        B.get_backend("cpu").elementwise_kernel("T x", "T y", "y = x", "k")


def test_relu_and_its_gradient_take_the_numba_loops_where_numba_is_loaded(monkeypatch):
    """Eager ``relu`` and its VJP call the one-pass loops once numba is imported, with the
    same bits as NumPy's path."""
    pytest.importorskip("numba")
    from nodegrad import _backend as B

    x = np.random.default_rng(7).standard_normal((64, 64)).astype(np.float32)

    def run():
        t = ng.tensor(x, requires_grad=True)
        y = ng.relu(t)
        (y * y).sum().backward()
        return y.numpy().tobytes(), t.grad.numpy().tobytes()

    monkeypatch.setattr(B, "_kernels", False)
    want = run()
    monkeypatch.setattr(B, "_kernels", None)
    k = B.cpu_kernels()
    calls = []
    spy = type("Spy", (), {
        "relu": staticmethod(lambda *a: (calls.append("relu"), k.relu(*a))[1]),
        "relu_grad": staticmethod(lambda *a: (calls.append("relu_grad"), k.relu_grad(*a))[1])})
    monkeypatch.setattr(B, "_kernels", spy)
    assert run() == want
    assert calls == ["relu", "relu_grad"]


def test_replay_forms_give_the_same_bytes_as_the_general_functions():
    """product_for, sum_form and relu_form (a compiled program's choices, made once) against
    matmul, sum_outer and relu: byte for byte, a layout other than the planned one included."""
    from nodegrad import _backend as B

    assert B.product_for(10, 10, 10) is np.matmul  # no thread switch: NumPy's own
    assert B.product_for(2048, 2048, 2048) is np.matmul  # the user's threads
    assert B.product_for(100, 100, 100) in (B._matmul_small, np.matmul)  # the wrapper, if found
    rng = np.random.default_rng(8)
    for m, k, n in ((100, 100, 100), (3, 4, 5), (256, 784, 64)):
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        assert B.product_for(m, k, n)(a, b).tobytes() == B.matmul(a, b).tobytes()
        out = np.empty((m, n), np.float32)
        assert B.product_for(m, k, n)(a, b, out) is out
        assert out.tobytes() == B.matmul(a, b).tobytes()
    base = rng.standard_normal((64, 32, 8)).astype(np.float32)
    for x, axis in ((base, (0,)), (base, (0, 2)), (base.transpose(0, 2, 1), (0, 2)),
                    (base[:2], (1,)), (base.reshape(64, 256), (0,)), (base, (0, 1, 2)),
                    (base, (1,)), (base.transpose(1, 0, 2), (1,))):  # no plan for this layout
        for keepdims in (False, True):
            form = B.sum_form(x.shape, x.strides, x.dtype, axis, keepdims)
            want = B.sum_outer(x, axis, keepdims)
            assert form(x).tobytes() == want.tobytes() and form(x).shape == want.shape
            other = np.asfortranarray(x)  # not the planned layout: sum_outer itself
            assert form(other).tobytes() == B.sum_outer(other, axis, keepdims).tobytes()
    x = base.reshape(64, 256)
    x.flat[::7] = -0.0
    form = B.relu_form(x.shape, x.dtype)
    for arr in (x, np.asfortranarray(x)):
        want = B.relu(arr)
        got = form(arr)
        assert got.tobytes() == want.tobytes() and got.strides == want.strides
        out = np.empty_like(arr)
        assert form(arr, out) is out and out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(16, 10), (100, 32), (100, 33), (15, 10), (256, 2)])
def test_softmax_and_log_softmax_on_narrow_rows(dt, shape):
    """Narrow rows (<= 32 classes, >= 16 rows) go through the transposed logits: the values of
    a float64 softmax, a C-ordered result, and rows with a NaN or an infinity as row by row."""
    from nodegrad.ops import nn as opsnn

    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 5).astype(dt)
    tol = 1e-6 if dt == np.float32 else 1e-14
    x64 = x.astype(np.float64)
    z = x64 - x64.max(1, keepdims=True)
    want = z - np.log(np.exp(z).sum(1, keepdims=True))
    for fn, ref in ((opsnn._log_softmax_fwd, want), (opsnn._softmax_fwd, np.exp(want))):
        got = fn(np, x, 1)
        assert got.dtype == dt and got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    x[0, 0], x[1, 1], x[2, :] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="ignore"):
        for fn in (opsnn._log_softmax_fwd, opsnn._softmax_fwd):
            got = fn(np, x, 1)
            rows = np.concatenate([fn(np, x[i:i + 1], 1) for i in range(3)])  # the general path
            np.testing.assert_array_equal(got[:3], rows)


@pytest.mark.parametrize("shape", [(256, 100, 100), (1 << 20,), (3, 1000, 701), (2 ** 20 + 3,)])
def test_large_loops_in_halves_give_numpys_bits(shape, cpu_kernels):
    """Full sums and same-shape multiply/add/subtract from SPLIT_MIN elements run in two halves
    on two threads (float32 with numba on OpenBLAS's worker, numba's pairwise sum in NumPy's
    order): NumPy's results bit for bit (the sum split where its pairwise sum splits)."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        a, b = (rng.standard_normal(shape).astype(dt) for _ in range(2))
        a.flat[5] = np.nan if dt == np.float64 else a.flat[5]
        for uf in (np.multiply, np.add, np.subtract):
            np.testing.assert_array_equal(B.binary_halves(uf, a, b), uf(a, b))
        got, want = B.sum_halves(a), np.add.reduce(a, axis=None)
        assert got.dtype == want.dtype and (got == want or (np.isnan(got) and np.isnan(want)))
        z = np.zeros(shape, dt)
        z.flat[-1] = -0.0
        nz = -np.abs(z)  # all -0.0
        assert np.signbit(B.sum_halves(nz)) == np.signbit(np.add.reduce(nz, axis=None))
        # through the ops: the same values as NumPy's
        ta, tb = ng.tensor(a), ng.tensor(b)
        np.testing.assert_array_equal((ta * tb).numpy(), a * b)
        np.testing.assert_array_equal((ta - tb).numpy(), a - b)
        assert np.array_equal(ta.sum().numpy(), np.add.reduce(a, axis=None), equal_nan=True)
        assert ta.sum(keepdims=True).shape == (1,) * a.ndim
    # anything else is left to NumPy's one loop
    small = np.ones(B.SPLIT_MIN - 1, np.float32)
    assert B.sum_halves(small) is None and B.binary_halves(np.add, small, small) is None
    assert B.binary_halves(np.add, a, a.astype(np.float32)) is None
    assert B.sum_halves(a.T) is None or a.ndim == 1


def test_float32_halves_on_the_blas_worker_keep_numpys_warnings(cpu_kernels):
    """With numba, float32 halves run as loops on OpenBLAS's worker; one that makes an inf or a
    NaN is redone by NumPy's ufunc (a sum that comes out non-finite by NumPy's reduce), so the
    caller's np.errstate warns or raises as NumPy's own, with NumPy's values. The per-example
    outer products take the worker too."""
    from nodegrad import _backend as B

    n = B.SPLIT_MIN
    calls = []
    pool = B.pool_split

    def counted(kind, *args, **kw):
        ok = pool(kind, *args, **kw)
        calls.append((kind, ok))
        return ok

    B.pool_split = counted
    try:
        a = np.full(2 * n, 1.5, np.float32)
        np.testing.assert_array_equal(B.binary_halves(np.multiply, a, a), a * a)
        assert B.sum_halves(a) == np.add.reduce(a)
        x, y = np.ones((600, 100, 1), np.float32), np.full((600, 1, 10), 2.0, np.float32)
        np.testing.assert_array_equal(B.outer_stack(x, y), x * y)
        if cpu_kernels == "numba" and B.two_threads() and B._BlasPool.exec_blas:
            k = B.cpu_kernels()
            assert {(k.MULTIPLY, True), (k.SUM, True), (k.OUTER, True)} <= set(calls)
        elif cpu_kernels == "numpy":
            assert calls == []
        a[-1] = 3e38  # overflows in the second half only
        with pytest.warns(RuntimeWarning, match="overflow"):
            assert np.isinf(B.binary_halves(np.multiply, a, a)[-1])
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            B.binary_halves(np.multiply, a, a)
        with pytest.warns(RuntimeWarning, match="overflow"):
            assert np.isinf(B.sum_halves(np.full(2 * n, 3e38, np.float32)))
        tiny = np.full(2 * n, 1e-30, np.float32)  # underflows: NumPy's loop where it is watched
        with np.errstate(under="raise"), pytest.raises(FloatingPointError):
            B.binary_halves(np.multiply, tiny, tiny)
        a[-1] = np.nan  # NaN in, NaN out, without a warning, as NumPy
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.isnan(B.binary_halves(np.add, a, a)[-1])
            assert np.isnan(B.sum_halves(a))
    finally:
        B.pool_split = pool


def test_halves_keep_the_callers_error_state_and_threads():
    """The helper's half raises under the caller's np.errstate; callers from several threads
    at once each get their own results; a failing half leaves the helper usable."""
    from concurrent.futures import ThreadPoolExecutor

    from nodegrad import _backend as B

    n = B.SPLIT_MIN
    a = np.ones(2 * n, np.float32)
    a[-1] = 3e38  # overflows in the second half only
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        B.binary_halves(np.multiply, a, a)
    a[-1] = 1.0
    arrays = [np.full(2 * n, k, np.float32) for k in range(8)]

    def work(k):
        x = arrays[k]
        return float(B.sum_halves(x)), B.binary_halves(np.add, x, x)[-1]

    with ThreadPoolExecutor(4) as ex:
        for k, (s, last) in enumerate(ex.map(work, range(8))):
            assert s == 2 * n * k and last == 2 * k
    # the helper keeps no array alive after its half (a step's peak memory)
    import gc
    import weakref

    x = np.ones(2 * n, np.float32)
    out = B.binary_halves(np.multiply, x, x)
    refs = [weakref.ref(x), weakref.ref(out)]
    B.sum_halves(out)
    del x, out
    gc.collect()
    assert all(r() is None for r in refs)


def _halves_in_child(q):
    from nodegrad import _backend as B

    x = np.ones(2 * B.SPLIT_MIN, np.float32)
    q.put(float(B.sum_halves(x)))


def test_halves_after_fork():
    """A forked child (a data loader's worker) starts its own helper thread."""
    import multiprocessing as mp

    from nodegrad import _backend as B

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    B.sum_halves(np.ones(2 * B.SPLIT_MIN, np.float32))  # the parent's helper exists
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_halves_in_child, args=(q,))
    p.start()
    try:
        assert q.get(timeout=60) == 2 * B.SPLIT_MIN
    finally:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()


@pytest.mark.parametrize("case", [((100, 25, 19), (25, 25, 3), (2,), (1,), (1,)),
                                  ((7, 3, 11), (4, 3, 4), (3,), (2,), (2,)),
                                  ((4, 2, 9), (3, 2, 5), (2,), (0,), (1,)),
                                  ((6, 16, 8, 8), (8, 16, 3, 3), (2, 2), (1, 1), (1, 1)),
                                  ((5, 3, 9, 7), (4, 3, 2, 3), (2, 3), (0, 1), (2, 1)),
                                  # taps' products in row blocks (B.matmul_row_blocks)
                                  ((128, 16, 8, 8), (32, 16, 3, 3), (2, 2), (1, 1), (1, 1)),
                                  ((400, 25, 19), (25, 25, 3), (2,), (1,), (1,))])
def test_a_strided_input_gradient_folds_with_the_numpy_bits(case, monkeypatch):
    """The transposed convolution of a strided conv: numba's one fold of the taps' products
    gives the bytes of zeroing a padded buffer and adding each tap's product into it; with one
    spatial axis it lies channels-last, as the convolution outputs (and the ReLU outputs
    saved from them) it meets below. Taps' products large enough for row blocks have the
    same bits in both, though their rows come in another order."""
    import importlib

    pytest.importorskip("numba")
    from nodegrad import _backend as B

    conv = importlib.import_module("nodegrad.ops.conv")
    shape, ws, s, p, d = case
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        out = tuple((n + 2 * pp - dd * (k - 1) - 1) // ss + 1
                    for n, pp, dd, k, ss in zip(shape[2:], p, d, ws[2:], s))
        g = rng.standard_normal((shape[0], ws[0]) + out).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        monkeypatch.setattr(B, "_kernels", False)
        want = conv._input_grad_strided(np, g, w, s, p, d, shape)
        monkeypatch.setattr(B, "_kernels", None)
        assert B.cpu_kernels() is not None
        got = conv._input_grad_strided(np, g, w, s, p, d, shape)
        assert got.shape == want.shape == shape and got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()
        if len(shape) == 3:
            assert got.transpose(0, 2, 1).flags.c_contiguous
    parts = np.ones((2, 3, 3, 4, 2, 2), np.float32)  # three spatial axes: left to NumPy
    assert B.fold_taps(parts, (5, 5, 5), (2,), (2,) * 3, (0,) * 3, (1,) * 3) is None
    assert B.fold_taps(np.ones((2, 4, 3, 2))[..., ::2], (7,), (2,), (2,), (0,), (1,)) is None


def test_conv_columns_in_one_pass_are_numpys_columns(monkeypatch):
    """A convolution's windows gathered by numba's one pass (padding written as zeros in
    place) equal NumPy's padded copy and strided gather element for element, in the same
    layout, over random shapes, strides, paddings, dilations, channel counts, input layouts
    and cut output sizes; the loop really runs for some of them, on the first call of a layout
    (which plans it) and on the next (the plan)."""
    import importlib

    pytest.importorskip("numba")
    from nodegrad import _backend as B

    conv = importlib.import_module("nodegrad.ops.conv")
    rng = np.random.default_rng(5)
    ran = 0
    im2col = B.im2col
    kernels = B.cpu_kernels()
    loop = kernels.im2col_2d

    def counted(*args):
        nonlocal ran
        ran += 1
        return loop(*args)

    monkeypatch.setattr(kernels, "im2col_2d", counted)
    monkeypatch.setattr(conv, "_COLS_PLANS", {})
    for _ in range(400):
        nd = int(rng.integers(1, 3))
        n, c = int(rng.integers(1, 4)), int(rng.choice([1, 2, 3, 8, 16, 24]))
        sp = tuple(int(v) for v in rng.integers(1, 11, nd))
        k = tuple(int(v) for v in rng.integers(1, 6, nd))
        st = tuple(int(v) for v in rng.integers(1, 3, nd))
        pd = tuple(int(v) for v in rng.integers(0, 5, nd))
        dl = tuple(int(v) for v in rng.integers(1, 4, nd))
        full = tuple(conv._out_size(*a) for a in zip(sp, k, st, pd, dl))
        if min(full) < 1:
            continue
        x = rng.standard_normal((n, c) + sp).astype(rng.choice([np.float32, np.float64]))
        if rng.random() < 0.5:  # laid out channels-last, as a convolution's output
            x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        out = tuple(int(rng.integers(1, f + 1)) for f in full) if rng.random() < 0.3 else None
        monkeypatch.setattr(B, "_kernels", False)
        want, o1 = conv._cols(np, x, k, st, pd, dl, 1, out)
        monkeypatch.setattr(B, "_kernels", kernels)
        for _ in range(2):
            got, o2 = conv._cols(np, x, k, st, pd, dl, 1, out)
            assert o1 == o2 and got.shape == want.shape and got.strides == want.strides
            assert got.tobytes() == want.tobytes()
    assert ran > 100
    # a cut output whose one window along the last axis lies wholly in the padding (its
    # kernel's one tap at -2): zeros only (once written past the end of its row)
    x = np.moveaxis(rng.standard_normal((4, 7, 4, 16)).astype(np.float32), -1, 1)
    monkeypatch.setattr(B, "_kernels", False)
    want, _ = conv._cols(np, x, (3, 1), (2, 2), (1, 2), (2, 1), 1, (2, 1))
    monkeypatch.setattr(B, "_kernels", kernels)
    got, _ = conv._cols(np, x, (3, 1), (2, 2), (1, 2), (2, 1), 1, (2, 1))
    assert got.tobytes() == want.tobytes() and not got.any()
    assert im2col(np.ones((2, 5, 3), np.float32)[:, ::-1], (2,), (1,), (0,), (1,), (4,),
                  False) is None  # not C-ordered: left to NumPy


def test_a_conv_weight_gradient_of_taps_first_columns_is_the_plain_product():
    """A one-channel convolution's weight gradient, whose columns are taps-first (F-ordered),
    runs as the transposed product of two untransposed operands: the plain product's values
    (rows.T @ cols; OpenBLAS's blocked kernels give the same bits, its small-matrix ones may
    round otherwise), in the weight's shape and C order, on 1-D and 2-D layers."""
    import importlib

    conv = importlib.import_module("nodegrad.ops.conv")
    rng = np.random.default_rng(9)
    for shape, k, out_c in (((128, 1, 8, 8), (3, 3), 16), ((100, 1, 40), (5,), 25),
                            ((7, 1, 5, 6), (2, 3), 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        nd = len(k)
        cols, out = conv._cols(np, x, k, (1,) * nd, (1,) * nd, (1,) * nd, 1, None)
        g = rng.standard_normal((shape[0], out_c) + tuple(out)).astype(np.float32)
        wshape = (out_c, 1) + k
        dw = conv._weight_grad_of_cols(np, g, cols, 1, wshape)
        rows = conv._grad_rows(np, g, 1)
        plain = np.matmul(rows[0].T, cols[0]).reshape((out_c,) + k + (1,))
        plain = np.moveaxis(plain, -1, 1)
        assert dw.shape == wshape and dw.flags.c_contiguous
        np.testing.assert_allclose(dw, plain, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape, perm, axis", [
    ((40, 50), (0, 1), (0,)), ((40, 50), (0, 1), 0), ((256, 100), (0, 1), (0,)),
    ((100, 25, 19), (0, 2, 1), (0, 2)), ((8, 25, 10), (0, 2, 1), (0, 2)),
    ((100, 25, 19), (0, 2, 1), (1,)), ((64, 300), (0, 1), (1,)), ((4, 2048), (0, 1), (1,))])
def test_sums_as_numpy_says_which_sums_have_numpys_bits(shape, perm, axis):
    """Where sums_as_numpy says so, sum_outer's bits are NumPy's own reduction's; the bias
    gradients it takes as products with ones (from 4096 terms; over contiguous rows up to
    PAIRWISE_ROWS long) it reports as not."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(1)
    mem = tuple(shape[d] for d in perm)
    x = rng.standard_normal(mem).astype(np.float32).transpose(
        tuple(perm.index(d) for d in range(len(shape))))
    said = B.sums_as_numpy(x, axis, False)
    same = np.array_equal(B.sum_outer(x, axis, False), np.add.reduce(x, axis=axis))
    if said:
        assert same
    size = x.size
    red = (axis,) if isinstance(axis, int) else axis
    kept_inner = perm[-1] not in red
    rows = int(np.prod([shape[d] for d in red]))  # the contiguous rows' length, where not
    assert said == (size < 4096 or not isinstance(axis, tuple)
                    or (not kept_inner and rows > B.PAIRWISE_ROWS))


def test_one_thread_setting_keeps_the_halves_on_the_callers_thread(monkeypatch):
    """``set_num_threads(1)`` (or threadpoolctl's limit) is PyTorch's intra-op setting: large
    multiplies and full sums then run on the calling thread alone, with the same values."""
    import threadpoolctl

    from nodegrad import _backend as B

    a = np.arange(2 * B.SPLIT_MIN, dtype=np.float32) / B.SPLIT_MIN
    ta = ng.tensor(a)
    calls = []  # halves run on the helper thread or on OpenBLAS's worker (float32, numba)
    run, pool = B._halves.run, B.pool_split
    monkeypatch.setattr(B._halves, "run", lambda *args: calls.append(1) or run(*args))
    monkeypatch.setattr(B, "pool_split", lambda *args, **kw: calls.append(2) or pool(*args, **kw))
    want_sum, want_prod = np.add.reduce(a, axis=None), a * a
    n = ng.get_num_threads()
    try:
        ng.set_num_threads(1)
        assert not B.two_threads()
        assert ta.sum().item() == want_sum
        np.testing.assert_array_equal((ta * ta).numpy(), want_prod)
        assert calls == []
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            split = B.two_threads()
            assert ta.sum().item() == want_sum
            np.testing.assert_array_equal((ta * ta).numpy(), want_prod)
        assert len(calls) == (2 if split else 0)
    finally:
        ng.set_num_threads(n)


def test_a_stack_times_a_matrix_is_one_product_of_its_rows():
    """(..., m, k) @ (k, n), a linear layer on (batch, tokens, features), is one product of
    all the stack's rows where they merge without a copy (NumPy runs one small GEMM per matrix:
    several times slower), into ``out`` too; other layouts keep NumPy's stacked product. The
    values are the stack's, eager and compiled alike (both come here)."""
    from nodegrad import _backend as B

    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 7)).astype(np.float32)
    calls = []
    seen = B._matmul_small

    def spy(a, b, out=None):
        calls.append(a.shape)
        return seen(a, b, out)

    cases = [rng.standard_normal((3, 5, 16)), rng.standard_normal((2, 1, 4, 16)),
             rng.standard_normal((1, 6, 16)), rng.standard_normal((4, 3, 5, 16))[:, 1],
             rng.standard_normal((5, 3, 16)).transpose(1, 0, 2),  # rows do not merge
             rng.standard_normal((3, 0, 16))]
    for a in cases:
        a = a.astype(np.float32) if a.base is None else a.astype(np.float32, copy=False)
        x = rng.standard_normal((5, 3, 16)).astype(np.float32).transpose(1, 0, 2) \
            if a.shape == (3, 5, 16) and not a.flags.c_contiguous else a
        want = np.matmul(x.astype(np.float64), w.astype(np.float64))
        calls.clear()
        B._matmul_small = spy
        try:
            got = B.matmul(x, w)
            out = np.full(x.shape[:-1] + (7,), np.nan, np.float32)
            assert B.matmul_into(x, w, out) is out
        finally:
            B._matmul_small = seen
        assert got.shape == want.shape and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert out.tobytes() == got.tobytes()
        merged = B._rows_of(x) is not None
        assert merged == (x.size > 0 and (x.flags.c_contiguous or x.shape[0] == 1
                                          or x.strides[0] == x.strides[1] * x.shape[1]))
        assert ((-1, 16) in [(-1, s[-1]) for s in calls if len(s) == 2]) == merged
    # a transformer's linear layer: the same bits eager and compiled, close to PyTorch's
    torch = pytest.importorskip("torch")
    lin = ng.nn.Linear(16, 7)
    x = ng.tensor(rng.standard_normal((4, 9, 16)).astype(np.float32), requires_grad=True)
    y = lin(x)
    y.sum().backward()
    tl = torch.nn.Linear(16, 7)
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(lin.weight.numpy()))
        tl.bias.copy_(torch.tensor(lin.bias.numpy()))
    tx = torch.tensor(x.numpy(), requires_grad=True)
    tl(tx).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), tl(tx).detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    f = ng.jit(lambda v: lin(v))
    for _ in range(3):
        assert f(x.detach()).numpy().tobytes() == lin(x.detach()).numpy().tobytes()


def test_float32_erf_is_within_an_ulp_of_scipys(monkeypatch):
    """float32 erf (GELU's) is computed in float32 arithmetic (``_backend.erf32``: numba's loop
    where numba is loaded, else the same operations in NumPy's ufuncs, with the same bits), within
    1 ulp of SciPy's float64 erf rounded to float32: checked here on samples from every part of
    its range (every float32 in tests/test_erf32.py's slow test), odd, ±1 from ERF32_ONE on, NaN
    kept; float64 keeps SciPy's bits."""
    pytest.importorskip("numba")
    import scipy.special as sp

    from nodegrad import _backend as B

    rng = np.random.default_rng(5)
    parts = [rng.uniform(-4.5, 4.5, 200_000), rng.standard_normal(20_000) * 1e-4,
             np.geomspace(1e-45, 1.0, 20_000), rng.uniform(0.999, 1.001, 20_000),
             rng.uniform(3.8, 4.01, 20_000),
             [0.0, 1.0, 2.25, 3.8325, 3.84, 4.0, 5.0, 1e30, np.inf, np.nan, 1e-45, 3e38]]
    x = np.concatenate(parts).astype(np.float32)
    x = np.concatenate([x, -x])
    import numba  # noqa: F401 - loaded, as a compiled program or eager training loads it

    monkeypatch.setattr(B, "_kernels", None)
    got = B.erf32(x)
    assert got is not None and got.dtype == np.float32
    want = sp.erf(x.astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    steps = got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64)
    assert np.abs(steps[~np.isnan(x)]).max() <= 1  # erf and erf32 keep x's sign
    assert np.array_equal(np.signbit(got[x == 0]), np.signbit(x[x == 0]))
    assert got[x.size // 2:].tobytes() == (-got[:x.size // 2]).tobytes()
    m = x[:1200].reshape(30, 40)
    assert np.array_equal(B.CPU.erf(m.T), got[:1200].reshape(30, 40).T)  # another layout
    assert np.array_equal(ng.erf(ng.tensor(m)).numpy(), got[:1200].reshape(30, 40))
    g = ng.nn.functional.gelu(ng.tensor(m))
    monkeypatch.setattr(B, "_kernels", False)  # NumPy's ufuncs: the same bits
    assert B.erf32(x).tobytes() == got.tobytes()
    assert ng.nn.functional.gelu(ng.tensor(m)).numpy().tobytes() == g.numpy().tobytes()
    xd = m.astype(np.float64)
    # (1 + erf) of a negative x cancels in float32, as in PyTorch's: an absolute tolerance
    np.testing.assert_allclose(g.numpy(), xd * 0.5 * (1 + sp.erf(xd / np.sqrt(2))), rtol=3e-7,
                               atol=2e-7)
    d = rng.standard_normal(500)
    assert B.CPU.erf(d).tobytes() == sp.erf(d).tobytes()  # float64: SciPy's own


@pytest.mark.parametrize("loops", [False, True], ids=["numpy-bits", "numba"])
def test_where_of_large_arrays_is_numpys_to_the_bit(loops, monkeypatch):
    """Large NumPy selects run branch-free (NumPy's own loop mispredicts a branch per element
    of a mixed condition): by numba's loop where loaded, else by integer ops on the values'
    bits; both give np.where's values, dtype and shape, NaN payloads, signed zeros and
    infinities included, for arrays, scalars and 0-d arrays of any of the operand dtypes."""
    from nodegrad import _backend as B

    if loops:
        pytest.importorskip("numba")
        import numba  # noqa: F401 - loaded, as eager training or a compiled program loads it
        monkeypatch.setattr(B, "_kernels", None)
        assert B.cpu_kernels() is not None
    else:
        monkeypatch.setattr(B, "_kernels", False)  # as where numba never loads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 600)).astype(np.float32)
    x.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 3e38]
    c = x >= 0
    i = rng.integers(-5, 5, x.shape)
    cases = [(c, x, -x), (c, x, 0.0), (c, 0.0, x), (c, 1, 0), (c, np.float32(2), x),
             (c, x, np.float64(0.5)), (c, x.astype(np.float64), x), (c, 1.5, -2.5),
             (c, i, 7), (c, i.astype(np.int32), i), (c, c, ~c), (c, np.array(3.0), x),
             (c, x.astype(np.float16), 1.0), (c, x, x.T.copy().T), (c[:, :5], x[:, :5], 1.0),
             (c, x[:1], -x), (c, np.broadcast_to(np.float32(1), x.shape), x[:, 0:1]),
             (c, x[None], 0.0)]
    for cond, a, b in cases:
        want, got = np.where(cond, a, b), B.where(cond, a, b)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    t = ng.tensor(x, requires_grad=True)
    y = ng.where(t > 0, t * 2.0, t * -3.0)
    y.sum().backward()
    assert y.numpy().tobytes() == np.where(x > 0, x * 2, x * -3).astype(np.float32).tobytes()
    assert t.grad.numpy().tobytes() == np.where(x > 0, 2.0, -3.0).astype(np.float32).tobytes()


def test_sigmoid_loops_give_the_numpy_forms_bits(monkeypatch):
    """With numba loaded, sigmoid runs as two loops around NumPy's exp and its gradient as one
    loop: the bits of the NumPy forms (exp(-|x|), 1/(1+e) or e/(1+e), g (1 - s) s), saturated
    ends, NaN and signed zeros included, in float32 and float64."""
    pytest.importorskip("numba")
    import importlib

    import numba  # noqa: F401 - loaded, as eager training or a compiled program loads it

    from nodegrad import _backend as B

    E = importlib.import_module("nodegrad.ops.elementwise")
    rng = np.random.default_rng(2)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((40, 300)) * 20).astype(dt)
        x.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 1e30]
        g = rng.standard_normal(x.shape).astype(dt)
        monkeypatch.setattr(B, "_kernels", None)
        s, gs = E._sigmoid(np, x), None
        gs = E._sigmoid_grad_fwd(np, g, s)
        assert B.sigmoid(x) is not None and B.sigmoid_grad(g, s) is not None
        monkeypatch.setattr(B, "_kernels", False)
        assert B.sigmoid(x) is None
        assert E._sigmoid(np, x).tobytes() == s.tobytes() and s.dtype == dt
        assert E._sigmoid_grad_fwd(np, g, s).tobytes() == gs.tobytes()
    monkeypatch.setattr(B, "_kernels", None)
    torch = pytest.importorskip("torch")
    t = ng.tensor(x[:, :50].astype(np.float32), requires_grad=True)
    tt = torch.tensor(t.numpy(), requires_grad=True)
    ng.sigmoid(t).sum().backward()
    torch.sigmoid(tt).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), tt.grad.numpy(), rtol=1e-6, atol=1e-7)


def jitted_training_equals_eager(model, optimizer, steps: int = 3, lr: float = 0.1):
    """Train ``model`` (30 features in, 3 classes out) a few cross-entropy steps eagerly, then
    again from the same weights under ``ng.jit(fuse=False)`` (which replays the ops' rules
    where eager may take a host-array VJP): the losses and the weights agree bit for bit."""
    rng = np.random.default_rng(9)
    xb = ng.tensor(rng.standard_normal((32, 30)).astype(np.float32))
    yb = ng.tensor(rng.integers(0, 3, 32))
    start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    runs = []
    for jit in (False, True):
        model.load_state_dict({k: ng.tensor(v) for k, v in start.items()})
        opt = optimizer(model.parameters(), lr=lr)

        def step():
            loss = ng.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        run = ng.jit(step, state=(model, opt), fuse=False) if jit else step
        runs.append(([run().item() for _ in range(steps)],
                     [v.numpy().tobytes() for v in model.state_dict().values()]))
    assert runs[0] == runs[1]


def test_exact_gelu_loops_give_the_composite_bits(monkeypatch):
    """Exact GELU's forward (one loop) and its VJP, the ``gelu_grad`` op (a loop after NumPy's
    exp), run where numba is loaded, with the bits of the NumPy operations they replace (x·½·(1
    + erf(x/√2)) and g (Φ + x φ)), erf as float32 erf32 in both, with or without numba; a jitted
    step (whose trace records the same two ops) equals eager."""
    pytest.importorskip("numba")
    import importlib

    import numba  # noqa: F401 - loaded, as eager training or a compiled program loads it

    from nodegrad import _backend as B

    E = importlib.import_module("nodegrad.ops.elementwise")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((40, 300)) * 3).astype(np.float32)
    x.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 30.0]
    x[1] = np.linspace(-6, 6, 300)  # erf's pieces end at |x|/√2 = 1, 2.25, 3.92
    g = rng.standard_normal(x.shape).astype(np.float32)
    monkeypatch.setattr(B, "_kernels", None)
    fast = E._gelu_fwd(np, x, "none")
    dx = E._gelu_grad_fwd(np, g, x)
    with np.errstate(invalid="ignore"):
        rules = E._gelu_vjp(ng.tensor(g), None, ng.tensor(x), "none").numpy()
        monkeypatch.setattr(B, "_kernels", False)
        assert B.gelu32(x, E._INV_SQRT2) is None
        plain = E._gelu_fwd(np, x, "none")
        rules_plain = E._gelu_vjp(ng.tensor(g), None, ng.tensor(x), "none").numpy()
    assert fast.tobytes() == plain.tobytes() and dx.tobytes() == rules.tobytes()
    assert rules_plain.tobytes() == rules.tobytes()
    monkeypatch.setattr(B, "_kernels", None)
    for gv in (np.broadcast_to(np.float32(0.5), x.shape), np.asfortranarray(g)):  # a sum's g
        with np.errstate(invalid="ignore"):
            want = E._gelu_vjp(ng.tensor(np.array(gv)), None, ng.tensor(x), "none").numpy()
        assert E._gelu_grad_fwd(np, gv, x).tobytes() == want.tobytes()
    jitted_training_equals_eager(
        ng.nn.Sequential(ng.nn.Linear(30, 64), ng.nn.GELU(), ng.nn.Linear(64, 3)), ng.optim.SGD)


def test_polynomial_loops_ask_for_the_widest_vectors():
    """erf's, exp's and the GELU's loops carry LLVM's ``prefer-vector-width`` of 512 bits
    (``_cpu_kernels._wide``: AVX-512 chips then run 16 float32 lanes, where LLVM's tuning for
    them takes 8), with the bits of the cached kernels that eager runs."""
    numba = pytest.importorskip("numba")
    from nodegrad import _backend as B
    from nodegrad import _cpu_kernels as K

    attr = '"prefer-vector-width"="512"'
    x = -np.abs(np.random.default_rng(5).standard_normal(1000).astype(np.float32)) * 4
    near, mid, tail, ends = B._ERF32
    f32 = np.float32
    cases = [(K.erf32, (x, np.empty_like(x), near, mid, tail, ends)),
             (K.exp32_neg, (x, np.empty_like(x), B._EXP32_POLY, B._EXP32_CONSTS)),
             (K.gelu32, (x, np.empty_like(x), near, mid, tail, ends, f32(0.70710677),
                         f32(0.5), f32(1.0)))]
    for kernel, args in cases:
        fresh = numba.njit(kernel.py_func)  # uncached, so that its IR can be read
        fresh(*args)
        assert all(attr in ir for ir in fresh.inspect_llvm().values()), kernel.__name__
        want = args[1].copy()
        kernel(*args)  # the cached kernel eager calls
        assert args[1].tobytes() == want.tobytes()


def test_silu_and_leaky_relu_loops_give_the_numpy_forms_bits(monkeypatch):
    """With numba loaded, silu, its gradient, leaky_relu and hardswish (forward and first-order
    VJP) run as loops (around NumPy's exp for silu), with the bits of the NumPy forms, the
    limits at ±inf included, NaN where they give NaN, in float32 and float64; a jitted step
    (replaying the rules) equals eager."""
    pytest.importorskip("numba")
    import importlib

    import numba  # noqa: F401 - loaded, as eager training or a compiled program loads it

    from nodegrad import _backend as B

    A = importlib.import_module("nodegrad.ops.activation")
    E = importlib.import_module("nodegrad.ops.elementwise")
    rng = np.random.default_rng(6)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((40, 300)) * 30).astype(dt)
        x.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, -1e30]
        g = rng.standard_normal(x.shape).astype(dt)
        g.reshape(-1)[8:11] = [np.inf, -np.inf, np.nan]
        results = []
        for kernels in (None, False):
            monkeypatch.setattr(B, "_kernels", kernels)
            with np.errstate(all="ignore"):
                results.append([A._silu_fwd(np, x), A._silu_grad_fwd(np, g, x),
                                E._leaky_relu_fwd(np, x, 0.2), A._hardswish_fwd(np, x)])
                if kernels is None:
                    results[-1].append(E._leaky_relu_raw((True,), g, None, x, 0.2)[0])
                    results[-1].append(A._hardswish_raw((True,), g, None, x)[0])
                    assert B.silu(x) is not None
                else:
                    rule = E._leaky_relu.vjp[0]
                    results[-1].append(rule(ng.tensor(g), None, ng.tensor(x), 0.2).numpy())
                    rule = A._hardswish.vjp[0]
                    results[-1].append(rule(ng.tensor(g), None, ng.tensor(x)).numpy())
                    assert B.silu(x) is None
        for a, b in zip(*results, strict=True):  # a NaN's sign aside (NumPy keeps no rule)
            nan = np.isnan(a)
            assert a.dtype == b.dtype and np.array_equal(nan, np.isnan(b))
            assert a[~nan].tobytes() == b[~nan].tobytes()
    monkeypatch.setattr(B, "_kernels", None)
    jitted_training_equals_eager(ng.nn.Sequential(
        ng.nn.Linear(30, 64), ng.nn.LeakyReLU(0.1), ng.nn.Linear(64, 64), ng.nn.SiLU(),
        ng.nn.Linear(64, 64), ng.nn.Hardswish(), ng.nn.Linear(64, 3)), ng.optim.SGD)
