"""Realistic NumPy programs run twice, with ``numpy`` and with ``nodegrad`` as the array module,
on the same float64/int64 inputs: the results must agree to 1e-12 with NumPy's dtypes. Where a
name means PyTorch's function by the project's documented rule (``ng.zeros`` defaults to
float32, ``ng.median(x)`` is the lower median, ``ng.nonzero`` returns PyTorch's index matrix)
the programs use the form that means the same in both, and the tests below pin each rule."""

import numpy as np
import pytest

import nodegrad as ng

RNG = np.random.default_rng(0)


def _host(t):
    return t.detach().numpy() if isinstance(t, ng.Tensor) else np.asarray(t)


def _same(ours, ref, tol: float = 1e-12) -> None:
    """Same structure, shapes, dtypes; values equal to ``tol`` (NaN equal to NaN)."""
    if isinstance(ref, tuple | list):
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            _same(a, b, tol)
        return
    a, b = _host(ours), np.asarray(ref)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


def _run(prog, *args):
    """``prog`` with NumPy on copies of ``args`` and with nodegrad on tensors of them."""
    ref = prog(np, *[np.array(a, copy=True) for a in args])
    ours = prog(ng, *[ng.array(a) for a in args])
    _same(ours, ref)


# --- the programs --------------------------------------------------------------------------
def kmeans(xp, X, k=3, iters=6):
    C = X[:k].copy()
    for _ in range(iters):
        d = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=-1)  # (n, k) by broadcasting
        lab = xp.argmin(d, axis=1)
        counts = xp.bincount(lab, minlength=k)
        S = xp.stack([xp.bincount(lab, weights=X[:, j], minlength=k)
                      for j in range(X.shape[1])], axis=1)
        C = S / xp.maximum(counts, 1)[:, None]
    mask = lab == 0
    inertia = d.min(axis=1).sum()
    far = xp.where(d.min(axis=1) > 0.5)[0]
    return C, lab, counts, X[mask].mean(axis=0), inertia, far, xp.unique(lab)


def pca(xp, X):
    mu = X.mean(axis=0, keepdims=True)
    Xc = X - mu
    sd = X.std(axis=0, ddof=1)
    _, s, _ = xp.linalg.svd(Xc, full_matrices=False)
    Cv = xp.cov(Xc.T)
    w, V = xp.linalg.eigh(Cv)
    v = xp.ones(X.shape[1], dtype=X.dtype)  # ng.ones alone is float32 (the default dtype)
    for _ in range(60):
        v = Cv @ v
        v = v / xp.linalg.norm(v)
    lam = v @ Cv @ v
    explained = s ** 2 / (X.shape[0] - 1)
    return (mu, sd, s, w, lam, xp.abs(xp.abs(v) - xp.abs(V[:, -1])).max() < 1e-6,
            explained, xp.sort(w, axis=None)[::-1], xp.linalg.norm(Xc))


def heat(xp, u0, steps=25, a=0.2):
    u = u0.copy()
    for _ in range(steps):
        up = xp.pad(u, 1, mode="edge")  # insulated ends
        u[...] = u + a * (up[2:] - 2 * up[1:-1] + up[:-2])
    v = u0.copy()
    for _ in range(steps):  # fixed ends, in-place interior update
        v[1:-1] += a * (v[2:] - 2 * v[1:-1] + v[:-2])
    w = u0 + 0
    for _ in range(steps):  # periodic
        w = w + a * (xp.roll(w, 1) - 2 * w + xp.roll(w, -1))
    return (u, v, w, u[::2], u[::-3], v[1:-1:4], xp.allclose(u, v), xp.allclose(u, v, atol=1e-1),
            xp.abs(w.sum() - u0.sum()) < 1e-9)


def stats(xp, x, ix):
    e = xp.histogram(x, bins=10)[1]
    dens, e2 = xp.histogram(x, bins=5, range=(-1, 1), density=True)
    p = xp.percentile(x, [10, 50, 90])
    q = xp.quantile(x, 0.3, method="nearest")
    q2 = xp.quantile(x, [0.25, 0.75], method="lower")
    qi = xp.quantile(ix, 0.3)
    med = xp.median(x, axis=0)
    u, c = xp.unique(ix, return_counts=True)
    s = xp.sort(ix, kind="stable")
    a = xp.argsort(ix, kind="stable")
    ss = xp.searchsorted(s, xp.asarray([0, 3, 5]))
    ss2 = xp.searchsorted(s, 3.5, side="right")
    cs = xp.cumsum(ix, axis=0)
    return (e, dens, e2, p, q, q2, qi, med, u, c, s, a, ss, ss2, cs, xp.diff(x), xp.diff(ix),
            xp.clip(x, -0.5, 0.5), xp.where(ix > 3)[0], xp.where(x > 0, x, 0.0))


def image(xp, img, idx):
    flat = img.reshape(-1)
    sp = xp.split(img, 2, axis=0)
    asp = xp.array_split(flat, 5)
    I, J = xp.meshgrid(xp.arange(3), xp.arange(4), indexing="ij")
    return (flat, img.transpose((2, 0, 1)), img.swapaxes(0, 1), xp.stack([img, img], axis=0),
            xp.concatenate([img, img], axis=1), xp.concatenate([img, img[0]], axis=None),
            xp.hstack([img[0], img[1]]), xp.vstack([img[0], img[1]]), sp[0], sp[1], asp[0],
            asp[4], img[idx, idx], img[xp.ix_(idx, idx)], I, J, xp.tile(img[0, 0], (2, 2)),
            xp.repeat(img[0, 0], 2), xp.einsum("ij,jk->ik", img[:, :, 0], img[:, :, 1].T))


def integers(xp, a8, a64):
    return (a8 + a8, a8 * 3, a64 // 3, -a64 // 4, a64 % 5, a64 ** 2, a64.sum(), a8.sum(),
            a8.astype(xp.int16) * 300, (a64 > 2).sum(), a64.astype(xp.float64) / 2)


def reductions(xp, x):
    return (x.sum(axis=(0, 2)), x.sum(axis=(0, 2), keepdims=True), xp.max(x, axis=(1,)),
            x.mean(axis=(0, 1)), x.var(axis=(0, 2)), xp.prod(x, axis=0), x.argmax(axis=1),
            xp.sum(x), xp.std(x), xp.any(x > 0, axis=(0, 1)), xp.all(x > -9), x.min(axis=-1),
            xp.median(x, axis=1), xp.median(x, axis=None, keepdims=True))


def test_kmeans_on_blobs():
    X = np.concatenate([RNG.normal(c, 0.5, size=(20, 2)) for c in ([0, 0], [3, 3], [0, 4])])
    _run(kmeans, X)


def test_pca_power_iteration():
    _run(pca, RNG.normal(size=(40, 4)) @ RNG.normal(size=(4, 4)))


def test_heat_equation():
    _run(heat, np.sin(np.linspace(0, 3, 31)))


def test_histogram_and_statistics():
    _run(stats, RNG.normal(size=201), RNG.integers(0, 8, size=30))


def test_image_like_ops():
    _run(image, RNG.normal(size=(4, 6, 3)), np.array([0, 2, 3]))


def test_integer_arithmetic_wraps():
    _run(integers, np.array([100, 120, -128, 5], dtype=np.int8), np.arange(-5, 7))


def test_reductions_axis_tuples():
    _run(reductions, RNG.normal(size=(3, 4, 5)))


# --- NumPy's forms of names PyTorch shares ---------------------------------------------------
def test_array_converts_as_numpy():
    x = np.arange(6.0).reshape(2, 3)
    a = ng.array(x)
    _same(a, x)
    assert not np.shares_memory(a.numpy(), x)
    assert np.shares_memory(ng.array(x, copy=False).numpy(), x)
    _same(ng.array([1.5, 2]), np.array([1.5, 2]))  # float64, as NumPy infers
    _same(ng.array([[1, 2]], ndmin=3), np.array([[1, 2]], ndmin=3))
    _same(ng.array([1, 2], dtype=ng.float32), np.array([1, 2], dtype=np.float32))
    t = ng.ones(3, requires_grad=True)
    ng.array(t * 2).sum().backward()
    _same(t.grad, np.full(3, 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="array: copy=False"):
        ng.array([1.0], copy=False)
    with pytest.raises(TypeError, match="array: ndmin"):
        ng.array([1.0], ndmin=-1)
    with pytest.raises(ValueError, match="array: tensors are C-ordered"):
        ng.array([1.0], order="F")


def test_sort_numpy_keywords_give_values():
    x = np.array([[3, 1, 2], [0, 5, -1], [3, 3, 0]])
    t = ng.array(x)
    for kw in ({"axis": 0}, {"axis": None}, {"kind": "stable"}, {"axis": -1, "kind": "heapsort"}):
        _same(ng.sort(t, **kw), np.sort(x, **kw))
        _same(ng.argsort(t, **kw), np.argsort(x, kind="stable", **{k: v for k, v in kw.items()
                                                                     if k != "kind"}))
    assert isinstance(ng.sort(t), tuple)  # PyTorch's form: (values, indices)
    with pytest.raises(ValueError, match="sort: kind"):
        ng.sort(t, kind="bogo")
    with pytest.raises(TypeError, match="argsort: order="):
        ng.argsort(t, order="f0")


def test_median_numpy_keywords_average():
    x = RNG.normal(size=(6, 5))
    x[0, 1] = np.nan
    t = ng.array(x)
    for ax in (None, 0, 1, -1, (0, 1)):
        for kd in (False, True):
            _same(ng.median(t, axis=ax, keepdims=kd), np.median(x, axis=ax, keepdims=kd))
    _same(ng.median(ng.array(np.arange(6)), axis=0), np.median(np.arange(6)))
    # PyTorch's form stays the lower median
    assert ng.median(ng.array([1.0, 2.0, 3.0, 4.0])).item() == 2.0
    out = ng.zeros(5, dtype=ng.float64)
    ng.median(t, axis=0, out=out)
    _same(out, np.median(x, axis=0))


def test_quantile_numpy_keywords_and_integers():
    x = RNG.normal(size=(7, 9))
    t = ng.array(x)
    for m in ("linear", "nearest", "lower", "higher", "midpoint", "inverted_cdf",
              "median_unbiased", "weibull"):
        _same(ng.quantile(t, [0.1, 0.5, 0.77], axis=1, method=m),
              np.quantile(x, [0.1, 0.5, 0.77], axis=1, method=m))
    _same(ng.quantile(t, 0.3, axis=0, keepdims=True), np.quantile(x, 0.3, axis=0, keepdims=True))
    ix = RNG.integers(0, 9, size=10)
    _same(ng.quantile(ng.array(ix), 0.3), np.quantile(ix, 0.3))
    with pytest.raises(ValueError, match="quantile"):
        ng.quantile(t, 0.5, method="bogus")
    # PyTorch's form still interpolates as torch.quantile
    _same(ng.quantile(t, 0.25, dim=0, keepdim=True), np.quantile(x, 0.25, axis=0, keepdims=True))


def test_searchsorted_sequence_and_float_in_int():
    _same(ng.searchsorted([1, 3, 5], 4), np.searchsorted([1, 3, 5], 4))
    _same(ng.searchsorted(ng.array([1, 3, 5]), 3.5), np.searchsorted([1, 3, 5], 3.5))
    _same(ng.searchsorted([1.0, 3, 5], [3, 4], side="right"),
          np.searchsorted([1.0, 3, 5], [3, 4], side="right"))


def test_select_condlist():
    x = np.arange(12.0).reshape(3, 4)
    t = ng.array(x)
    _same(ng.select([t < 3, t > 8], [t, -t], 0), np.select([x < 3, x > 8], [x, -x], 0))
    xi = np.arange(6)
    ti = ng.array(xi)
    _same(ng.select([ti < 2, ti > 4], [ti, ti * 10], default=-1),
          np.select([xi < 2, xi > 4], [xi, xi * 10], default=-1))
    _same(ng.select(t, 1, 2), x[:, 2])  # PyTorch's select(input, dim, index)
    with pytest.raises(TypeError, match="select: invalid entry 0"):
        ng.select([t], [t])
    with pytest.raises(ValueError, match="select: list of cases"):
        ng.select([t < 3], [t, t])


def test_documented_pytorch_meanings():
    """Names that keep PyTorch's meaning by the documented rules, pinned here."""
    ix = np.array([1, 5, 7, 2])
    assert ng.zeros(3).dtype == ng.float32  # the default float dtype
    assert ng.asarray([1.5]).dtype == ng.float32  # torch.asarray
    assert tuple(ng.nonzero(ng.array(ix > 3)).shape) == (2, 1)  # torch.nonzero
    _same(ng.nonzero(ng.array(ix > 3), as_tuple=True), np.nonzero(ix > 3))
    assert ng.array(ix).mean().dtype == ng.float32  # float results of integers
    assert ng.median(ng.array([1.0, 2.0])).item() == 1.0  # lower median


def test_flatnonzero():
    x = np.array([[0, 2.0], [3, 0]])
    _same(ng.flatnonzero(ng.array(x)), np.flatnonzero(x))
    _same(ng.flatnonzero([0, 1, 0, 5]), np.flatnonzero([0, 1, 0, 5]))
    _same(ng.flatnonzero(ng.array(3.0)), np.flatnonzero(3.0))
    with pytest.raises(TypeError, match="flatnonzero"):
        ng.flatnonzero(["a"])


def test_float_scalar_searched_in_integers_matches_torch():
    torch = pytest.importorskip("torch")
    seq = [1, 3, 5]
    for v in (3.5, 3.0, 0.5, 6.0):
        for right in (False, True):
            ref = torch.searchsorted(torch.tensor(seq), v, right=right).item()
            assert ng.searchsorted(ng.array(seq), v, right=right).item() == ref
            ref = torch.bucketize(v, torch.tensor(seq), right=right).item()
            assert ng.bucketize(v, ng.array(seq), right=right).item() == ref


def test_take_axis_where_list_reshape_order():
    x = np.arange(12.0).reshape(3, 4)
    t = ng.array(x)
    _same(ng.take(t, [0, 2], axis=1), np.take(x, [0, 2], axis=1))
    _same(ng.take(t, [[0, -1]], axis=0), np.take(x, [[0, -1]], axis=0))
    _same(ng.take(t, [0, 5]), np.take(x, [0, 5]))  # flat, both libraries
    with pytest.raises(IndexError, match="take: index 4"):
        ng.take(t, [0, 4], axis=1)
    _same(ng.where([True, False], 1, 2), np.where([True, False], 1, 2))
    _same(ng.where([[True], [False]], t[:2], -1.0), np.where([[True], [False]], x[:2], -1.0))
    y = np.arange(24.0).reshape(2, 3, 4)
    for sh in ((4, 6), (3, -1), (24,)):
        _same(ng.reshape(ng.array(y), sh, order="F"), np.reshape(y, sh, order="F"))
        _same(ng.array(y).reshape(sh, order="F"), y.reshape(sh, order="F"))
    with pytest.raises(ValueError, match="reshape: order"):
        ng.reshape(t, (4, 3), order="K")


def test_histogram_edges_and_tri_indices():
    x = np.arange(12.0) - 5
    h, e = ng.histogram(ng.array(x), bins=[-5, 0, 5, 7])
    _same(h, np.histogram(x, bins=[-5, 0, 5, 7])[0].astype(np.float64))  # counts: PyTorch's
    _same(ng.histogram(ng.array(x), bins=[-5, 0, 5, 7], density=True)[0],
          np.histogram(x, bins=[-5, 0, 5, 7], density=True)[0])
    for name in ("tril_indices", "triu_indices"):
        for args, kw in (((3,), {}), ((4,), {"k": -1}), ((3,), {"k": 1, "m": 5})):
            _same(getattr(ng, name)(*args, **kw), getattr(np, name)(*args, **kw))
        assert tuple(getattr(ng, name)(3, 3).shape) == (2, 6)  # PyTorch's (row, col)
    m = np.arange(16.0).reshape(4, 4)
    _same(ng.array(m)[ng.tril_indices(4)], m[np.tril_indices(4)])


def test_numpy_keywords_of_roll_diff_cov_and_linalg_norm():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3))
    t = ng.tensor(a)
    np.testing.assert_array_equal(ng.roll(t, 1, axis=0).numpy(), np.roll(a, 1, axis=0))
    np.testing.assert_allclose(ng.diff(t, axis=0).numpy(), np.diff(a, axis=0), rtol=1e-15)
    for kw in ({}, {"rowvar": False}, {"bias": True}, {"ddof": 0, "rowvar": False}):
        np.testing.assert_allclose(ng.cov(t, **kw).numpy(), np.cov(a, **kw), rtol=1e-12)
    np.testing.assert_allclose(ng.linalg.norm(t, axis=1, keepdims=True).numpy(),
                               np.linalg.norm(a, axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(ng.linalg.norm(t, ord=1, axis=(0, 1)).numpy(),
                               np.linalg.norm(a, ord=1, axis=(0, 1)), rtol=1e-12)
    with pytest.raises(TypeError, match="not both"):
        ng.roll(t, 1, dims=0, axis=0)
