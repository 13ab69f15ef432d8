"""The wider operator surface against PyTorch at the edges its documentation names: zeros in
prod/cumprod (first and second derivatives), ties and NaN in sort/topk/cummax/median, empty
dims, rounding division, unique/searchsorted/bucketize, norms at zero, the activations' modules,
sampling, and the errors that name the op."""

import math

import numpy as np
import pytest

import nodegrad as ng
from nodegrad import nn
from nodegrad.nn import functional as NF
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = {np.float32: {"atol": 1e-5, "rtol": 1e-4}, np.float64: {"atol": 1e-10, "rtol": 1e-8}}


def compare(f, tf, *arrays, dtype=np.float64, **tol):
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    compare_with_torch(f, tf, *arrays, **(tol or TOL[dtype]))


def _second(f, tf, x):
    """Gradients and Hessian-vector products of sum(f(x)) in nodegrad (grad of grad) and
    PyTorch (create_graph)."""
    v = np.linspace(-1, 1, x.size).reshape(x.shape)
    xt = ng.tensor(x)
    gx = ng.grad(lambda a: f(a).sum())(xt)
    hx = ng.grad(lambda a: (ng.grad(lambda b: f(b).sum())(a) * ng.tensor(v)).sum())(xt)
    tt = torch.tensor(x, requires_grad=True)
    (tg,) = torch.autograd.grad(tf(tt).sum(), tt, create_graph=True)
    (th,) = torch.autograd.grad((tg * torch.tensor(v)).sum(), tt)
    return gx.numpy(), tg.detach().numpy(), hx.numpy(), th.numpy()


# --- zeros in prod and cumprod ---------------------------------------------------------------
ZEROS = [np.array([2.0, 0.0, 3.0, -1.5]), np.array([0.0, 2.0, 0.0, 3.0]),
         np.array([0.0, 0.0, 0.0]), np.array([1.5, -2.0, 0.5]),
         np.array([[0.0, 2.0, 3.0], [1.0, 0.0, 0.0], [4.0, 5.0, 0.5]])]


@pytest.mark.parametrize("x", ZEROS, ids=range(len(ZEROS)))
def test_prod_and_cumprod_with_zeros_match_torch(x, float_dtype):
    compare(ng.prod, torch.prod, x, dtype=float_dtype)
    compare(lambda t: ng.prod(t, 0), lambda t: torch.prod(t, 0), x, dtype=float_dtype)
    compare(lambda t: ng.cumprod(t, 0), lambda t: torch.cumprod(t, 0), x, dtype=float_dtype)
    compare(lambda t: t.cumprod(-1), lambda t: t.cumprod(-1), x, dtype=float_dtype)
    if x.ndim == 2:
        compare(lambda t: ng.prod(t, 1, True), lambda t: torch.prod(t, 1, True), x,
                dtype=float_dtype)


def test_cumprod_along_a_length_one_axis_passes_the_gradient_through():
    """The identity: no quotient by x, which lost g·x/x for a subnormal x (gradient 0)."""
    for x in (np.array([1.4e-45], np.float32), np.array([[1e-44, 3.0]], np.float32)):
        compare(lambda t: ng.cumprod(t, 0), lambda t: torch.cumprod(t, 0), x, dtype=np.float32)
        g = ng.grad(lambda t: (ng.cumprod(t, 0) * 0.5).sum())(ng.tensor(x))
        assert np.array_equal(g.numpy(), np.full(x.shape, 0.5, np.float32))
        _, t = ng.jvp(lambda a: ng.cumprod(a, 0), (ng.tensor(x),), (ng.ones_like(ng.tensor(x)),))
        assert np.array_equal(t.numpy(), np.ones(x.shape, np.float32))


@pytest.mark.parametrize("x", ZEROS, ids=range(len(ZEROS)))
def test_second_derivatives_at_zeros_match_torch(x):
    for f, tf in [(lambda t: ng.cumprod(t, 0), lambda t: torch.cumprod(t, 0)),
                  (lambda t: ng.prod(t, 0), lambda t: torch.prod(t, 0))]:
        gx, tg, hx, th = _second(f, tf, x)
        np.testing.assert_allclose(gx, tg, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hx, th, rtol=1e-12, atol=1e-12)
    ng.gradcheck(lambda t: ng.prod(t), x, order=2)
    ng.gradcheck(lambda t: ng.cumprod(t, 0), x, order=2)


# --- ties, NaN and empty dims in the selections ----------------------------------------------
TIES = np.array([[2.0, 1.0, 2.0, 1.0, 3.0], [0.5, 0.5, 0.5, -1.0, 0.5]])


def test_sort_is_stable_like_torch_stable_sort(float_dtype):
    x = TIES.astype(float_dtype)
    for desc in (False, True):
        for dim in (0, 1, -1):
            got = ng.sort(ng.tensor(x), dim, desc)
            want = torch.sort(torch.tensor(x), dim=dim, descending=desc, stable=True)
            np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
            np.testing.assert_array_equal(got.values.numpy(), want.values.numpy())
            np.testing.assert_array_equal(ng.argsort(ng.tensor(x), dim, desc).numpy(),
                                          want.indices.numpy())
            compare(lambda t: ng.sort(t, dim, desc).values,
                    lambda t: torch.sort(t, dim=dim, descending=desc, stable=True).values, x,
                    dtype=float_dtype)


def test_nan_sorts_as_the_largest_value():
    x = np.array([1.0, np.nan, -2.0, np.nan, 0.5])
    for desc in (False, True):
        got = ng.sort(ng.tensor(x), descending=desc)
        want = torch.sort(torch.tensor(x), descending=desc, stable=True)
        np.testing.assert_array_equal(got.values.numpy(), want.values.numpy())
        np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
    got = ng.median(ng.tensor(x), 0)
    want = torch.median(torch.tensor(x), 0)
    assert np.isnan(float(got.values)) and int(got.indices) == int(want.indices) == 1
    assert np.isnan(float(ng.quantile(ng.tensor(x), 0.5)))
    assert np.isnan(float(torch.quantile(torch.tensor(x), 0.5)))


def test_topk_and_kthvalue_with_ties_send_the_gradient_to_the_selected_entries():
    x = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    got, want = ng.topk(ng.tensor(x), 2), torch.topk(torch.tensor(x), 2)
    np.testing.assert_array_equal(got.values.numpy(), want.values.numpy())
    np.testing.assert_array_equal(got.indices.numpy(), [1, 2])  # lowest indices first
    t = ng.tensor(x, requires_grad=True)
    ng.topk(t, 2).values.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0, 1, 1, 0, 0])
    t = ng.tensor(x, requires_grad=True)
    v, i = ng.kthvalue(t, 2)
    v.backward()
    assert float(v) == 2.0 and int(i) == 3
    np.testing.assert_array_equal(t.grad.numpy(), [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(ng.topk(ng.tensor(TIES), 3, 1, largest=False).values.numpy(),
                                  torch.topk(torch.tensor(TIES), 3, 1, largest=False).values)


def test_cummax_cummin_indices_and_gradients_match_torch(float_dtype):
    x = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, np.nan, 4.0], [5.0, 5.0, 1.0, 1.0, 6.0, 0.0, 6.0]])
    for ng_f, t_f in ((ng.cummax, torch.cummax), (ng.cummin, torch.cummin)):
        for dim in (0, 1):
            got, want = ng_f(ng.tensor(x.astype(float_dtype)), dim), t_f(
                torch.tensor(x.astype(float_dtype)), dim)
            np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
            np.testing.assert_array_equal(got.values.numpy(), want.values.numpy())
            compare(lambda t: ng_f(t, dim).values, lambda t: t_f(t, dim).values,
                    np.nan_to_num(x, nan=-7.0), dtype=float_dtype)


def test_amax_amin_split_ties_like_torch(float_dtype):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    for dim in (None, 0, 1, (0, 1)):
        compare(lambda t: ng.amax(t, dim), lambda t: torch.amax(t, () if dim is None else dim),
                x, dtype=float_dtype)
        compare(lambda t: t.amin(dim, True), lambda t: t.amin(() if dim is None else dim, True),
                x, dtype=float_dtype)
    mn, mx = ng.aminmax(ng.tensor(x), dim=1)
    tmn, tmx = torch.aminmax(torch.tensor(x), dim=1)
    np.testing.assert_array_equal(mn.numpy(), tmn.numpy())
    np.testing.assert_array_equal(mx.numpy(), tmx.numpy())


def test_empty_dims(float_dtype):
    e = np.zeros((0, 3), float_dtype)
    for f, tf in [(lambda t: ng.cumsum(t, 0), lambda t: torch.cumsum(t, 0)),
                  (lambda t: ng.cumprod(t, 1), lambda t: torch.cumprod(t, 1)),
                  (lambda t: ng.logcumsumexp(t, 0), lambda t: torch.logcumsumexp(t, 0)),
                  (lambda t: ng.prod(t, 0), lambda t: torch.prod(t, 0)),
                  (lambda t: ng.sort(t, 0).values, lambda t: torch.sort(t, 0).values),
                  (lambda t: ng.topk(t, 0, 1).values, lambda t: torch.topk(t, 0, 1).values),
                  (lambda t: ng.nansum(t, 0), lambda t: torch.nansum(t, 0)),
                  (lambda t: ng.linalg.vector_norm(t, 2, 0), lambda t: torch.linalg.vector_norm(
                      t, 2, 0))]:
        compare(f, tf, e, dtype=float_dtype)
    assert float(ng.prod(ng.tensor(e))) == 1.0
    with pytest.raises(ng.ShapeError, match="median"):
        ng.median(ng.tensor(e), 0)
    for ord_ in (-1.5, -1, -math.inf):  # no identity over zero entries: PyTorch raises too
        with pytest.raises(ng.ShapeError, match="vector_norm.*empty"):
            ng.linalg.vector_norm(ng.tensor(e), ord_, 0)
        with pytest.raises(RuntimeError):
            torch.linalg.vector_norm(torch.tensor(e), ord_, 0)
    with pytest.raises(ng.ShapeError, match="quantile"):
        ng.quantile(ng.tensor(e), 0.5)


def test_median_and_quantile_against_torch(rng, float_dtype):
    x = rng.standard_normal((4, 6))
    for dim in (0, 1):
        got, want = ng.median(ng.tensor(x), dim), torch.median(torch.tensor(x), dim)
        np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
        compare(lambda t: ng.median(t, dim, True).values,
                lambda t: torch.median(t, dim, True).values, x, dtype=float_dtype)
    q = np.array([0.0, 0.1, 0.5, 0.77, 1.0])
    for how in ("linear", "lower", "higher", "midpoint", "nearest"):
        for dim in (None, 0, 1):
            for keep in (False, True):
                compare(lambda t: ng.quantile(t, ng.tensor(q.astype(t.dtype)), dim, keep,
                                              interpolation=how),
                        lambda t: torch.quantile(t, torch.tensor(q, dtype=t.dtype), dim, keep,
                                                 interpolation=how), x, dtype=float_dtype)
    compare(lambda t: t.quantile(0.25, 1), lambda t: t.quantile(0.25, 1), x, dtype=float_dtype)


# --- scans, norms, elementwise edge values ---------------------------------------------------
def test_logcumsumexp_is_stable(float_dtype):
    x = np.array([[-1e4, 0.0, 1e4, -np.inf, 3.0], [-np.inf, -np.inf, 1.0, 1.0, -1e4]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = ng.logcumsumexp(ng.tensor(x.astype(float_dtype)), 1).numpy()
    np.testing.assert_allclose(out, torch.logcumsumexp(torch.tensor(x), 1).numpy(), rtol=1e-6)
    finite = np.array([[-300.0, 0.0, 300.0, 2.0], [5.0, -5.0, 1.0, 1.0]])
    compare(lambda t: ng.logcumsumexp(t, 1), lambda t: torch.logcumsumexp(t, 1), finite,
            dtype=float_dtype)
    compare(lambda t: ng.logcumsumexp(t, 0), lambda t: torch.logcumsumexp(t, 0), finite,
            dtype=float_dtype)


def test_logsumexp_over_several_dims(rng, float_dtype):
    x = rng.standard_normal((2, 3, 4)) * 50
    for dim in ((0, 1), (0, 2), (-1, 0, 1)):
        for keep in (False, True):
            compare(lambda t: t.logsumexp(dim=dim, keepdim=keep),
                    lambda t: t.logsumexp(dim=dim, keepdim=keep), x, dtype=float_dtype)
            compare(lambda t: ng.logsumexp(t, dim, keep),
                    lambda t: torch.logsumexp(t, dim, keep), x, dtype=float_dtype)


def test_norms_at_zero_and_matrix_norms(rng, float_dtype):
    z = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.0]])
    for ord_ in (2, 1, 3, 0.5, math.inf, -math.inf, 0):
        compare(lambda t: ng.linalg.vector_norm(t, ord_, 1),
                lambda t: torch.linalg.vector_norm(t, ord_, 1), z, dtype=float_dtype)
    compare(lambda t: NF.normalize(t, dim=1), lambda t: F.normalize(t, dim=1), z,
            dtype=float_dtype)
    a = rng.standard_normal((2, 3, 4))
    for ord_ in ("fro", math.inf, -math.inf, 1, -1):
        compare(lambda t: ng.linalg.matrix_norm(t, ord_),
                lambda t: torch.linalg.matrix_norm(t, ord_), a, dtype=float_dtype)
        compare(lambda t: ng.linalg.matrix_norm(t, ord_, (0, 2), True),
                lambda t: torch.linalg.matrix_norm(t, ord_, (0, 2), True), a, dtype=float_dtype)
    compare(lambda t: t.norm(), lambda t: t.norm(), a, dtype=float_dtype)
    compare(lambda t: ng.norm(t, 3, (0, 1)), lambda t: torch.norm(t, 3, (0, 1)), a,
            dtype=float_dtype)
    for ord_ in ("nuc", 2, -2):  # through linalg.svdvals
        compare(lambda t: ng.linalg.matrix_norm(t, ord_),
                lambda t: torch.linalg.matrix_norm(t, ord_), a, dtype=float_dtype)


def test_elementwise_edge_values_match_torch(float_dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -1.5, 2.0])
    compare(ng.nan_to_num, torch.nan_to_num, x, dtype=float_dtype)
    compare(lambda t: ng.nan_to_num(t, 1.0, 5.0, -5.0), lambda t: torch.nan_to_num(t, 1.0, 5.0,
                                                                                   -5.0),
            x, dtype=float_dtype)
    # (0, 0) is left out: d/dy is 0 there (xlogy(0, y) = 0 for every y), PyTorch's x/y is NaN
    # (tests/test_fixes_special_values.py)
    y = np.array([0.0, 1.0, 0.0, 2.0, 0.5])
    compare(ng.xlogy, torch.xlogy, y, np.array([3.0, np.nan, 2.0, 0.5, 1.0]),
            dtype=float_dtype)
    compare(ng.sinc, torch.sinc, np.array([0.0, 0.5, -1.25, 3.0]), dtype=float_dtype)
    compare(ng.copysign, torch.copysign, np.array([1.0, -2.0, 3.0]),
            np.array([-1.0, 2.0, -0.0]), dtype=float_dtype)
    compare(ng.frac, torch.frac, np.array([-1.75, 2.5, 0.25]), dtype=float_dtype)
    compare(lambda a, b: ng.lerp(a, b, 0.0), lambda a, b: torch.lerp(a, b, 0.0),
            np.array([1.0, 2.0]), np.array([5.0, -1.0]), dtype=float_dtype)
    compare(ng.logaddexp, torch.logaddexp, np.array([1e4, -1e4, -np.inf]),
            np.array([1e4, 0.0, 1.0]), dtype=float_dtype)


def test_pytorch_float32_constants_in_hardsigmoid_and_celu(rng):
    """PyTorch rounds 1/6 (hardsigmoid's slope) and 1/alpha (celu) to float32 even in
    float64, so these gradients agree to float32 precision."""
    x = (rng.integers(-24, 24, 30) / 8 + 1 / 16).astype(np.float64)
    compare(ng.hardsigmoid, F.hardsigmoid, x, rtol=1e-6, atol=1e-9)
    compare(lambda t: ng.celu(t, 0.7), lambda t: F.celu(t, 0.7), x, rtol=1e-6, atol=1e-9)


def test_divide_rounding_modes_match_torch():
    a, b = np.array([-7.0, 7.0, -7.5, 6.0, 0.0]), np.array([2.0, -2.0, 2.0, 4.0, -3.0])
    ia, ib = np.array([-7, 7, -8, 6, 0, -1]), np.array([2, -2, 3, 4, -3, 5])
    for mode in ("trunc", "floor"):
        for x, y in ((a, b), (ia, ib)):
            got = ng.divide(ng.tensor(x), ng.tensor(y), rounding_mode=mode)
            want = torch.div(torch.tensor(x), torch.tensor(y), rounding_mode=mode)
            np.testing.assert_array_equal(got.numpy(), want.numpy())
            assert str(got.dtype) == str(want.dtype).replace("torch.", "")
        np.testing.assert_array_equal(ng.tensor(a).div(2.0, rounding_mode=mode).numpy(),
                                      torch.tensor(a).div(2.0, rounding_mode=mode).numpy())
    with pytest.raises(ValueError, match="divide.*rounding_mode"):
        ng.divide(ng.tensor(a), 2.0, rounding_mode="round")


def test_isclose_allclose_and_counts():
    a = np.array([1.0, np.nan, 2.0, 1e-9, np.inf])
    b = np.array([1.0 + 1e-6, np.nan, 2.1, 0.0, np.inf])
    for kw in ({}, {"equal_nan": True}, {"rtol": 0.1, "atol": 0.0}):
        np.testing.assert_array_equal(ng.isclose(ng.tensor(a), ng.tensor(b), **kw).numpy(),
                                      torch.isclose(torch.tensor(a), torch.tensor(b),
                                                    **kw).numpy())
        assert ng.allclose(ng.tensor(a), ng.tensor(b), **kw) == torch.allclose(
            torch.tensor(a), torch.tensor(b), **kw)
    x = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, -1.0]])
    for dim in (None, 0, 1, (0, 1)):
        got = ng.count_nonzero(ng.tensor(x), dim)
        want = torch.count_nonzero(torch.tensor(x), dim)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert got.dtype == np.int64


def test_var_mean_std_mean_default_to_torch_correction(rng, float_dtype):
    x = rng.standard_normal((3, 5))
    for f, tf in ((ng.var_mean, torch.var_mean), (ng.std_mean, torch.std_mean)):
        for k in range(2):
            compare(lambda t: f(t, 1)[k], lambda t: tf(t, 1)[k], x, dtype=float_dtype)
            compare(lambda t: f(t, correction=0, keepdim=True)[k],
                    lambda t: tf(t, correction=0, keepdim=True)[k], x, dtype=float_dtype)


# --- unique, searchsorted, bucketize ---------------------------------------------------------
def test_unique_matches_torch():
    x = np.array([[3, 1, 3], [2, 1, 1]])
    got = ng.unique(ng.tensor(x), return_inverse=True, return_counts=True)
    want = torch.unique(torch.tensor(x), return_inverse=True, return_counts=True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    rows = np.array([[1, 2], [1, 2], [0, 5]])
    got = ng.unique(ng.tensor(rows), dim=0, return_inverse=True, return_counts=True)
    want = torch.unique(torch.tensor(rows), dim=0, return_inverse=True, return_counts=True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    np.testing.assert_array_equal(ng.tensor([2.0, 1.0, 2.0]).unique().numpy(), [1.0, 2.0])
    with pytest.raises(TypeError, match="unique.*vmap"):
        ng.vmap(ng.unique)(ng.tensor([[1.0, 1.0]]))


def test_searchsorted_and_bucketize_match_torch():
    seq = np.array([1.0, 2.0, 2.0, 4.0])
    v = np.array([[0.5, 2.0, 4.0], [5.0, 2.5, 1.0]])
    rows = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 6.0]])
    for right in (False, True):
        for s, vals in ((seq, v), (rows, v)):
            got = ng.searchsorted(ng.tensor(s), ng.tensor(vals), right=right)
            want = torch.searchsorted(torch.tensor(s), torch.tensor(vals), right=right)
            np.testing.assert_array_equal(got.numpy(), want.numpy())
            assert got.dtype == np.int64
        got = ng.bucketize(ng.tensor(v), ng.tensor(seq), right=right, out_int32=True)
        want = torch.bucketize(torch.tensor(v), torch.tensor(seq), right=right, out_int32=True)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        assert got.dtype == np.int32
    assert int(ng.searchsorted(ng.tensor(seq), 2.0, side="right")) == 3
    with pytest.raises(ng.ShapeError, match="searchsorted"):
        ng.searchsorted(ng.tensor(rows), ng.tensor(np.zeros((3, 2))))


def test_searchsorted_under_vmap():
    seqs = ng.tensor(np.sort(np.random.default_rng(0).standard_normal((3, 5)), 1))
    vals = ng.tensor(np.random.default_rng(1).standard_normal((3, 4)))
    got = ng.vmap(ng.searchsorted)(seqs, vals)
    for b in range(3):
        np.testing.assert_array_equal(got.numpy()[b],
                                      np.searchsorted(seqs.numpy()[b], vals.numpy()[b]))
    got = ng.vmap(lambda v: ng.searchsorted(seqs[0], v))(vals)
    np.testing.assert_array_equal(got.numpy(), np.searchsorted(seqs.numpy()[0], vals.numpy()))
    got = ng.vmap(lambda s: ng.bucketize(vals, s), in_axes=0)(seqs)
    for b in range(3):
        np.testing.assert_array_equal(got.numpy()[b],
                                      np.searchsorted(seqs.numpy()[b], vals.numpy()))


# --- errors name the op ----------------------------------------------------------------------
def test_bad_input_raises_errors_naming_the_op():
    x = ng.tensor(np.arange(6.0).reshape(2, 3))
    cases = [
        (lambda: ng.topk(x, 4), ng.ShapeError, "topk"),
        (lambda: ng.kthvalue(x, 0), ng.ShapeError, "kthvalue"),
        (lambda: ng.glu(x, 1), ng.ShapeError, "glu"),
        (lambda: ng.quantile(x, 1.5), ValueError, "quantile"),
        (lambda: ng.quantile(x, 0.5, interpolation="cubic"), ValueError, "quantile"),
        (lambda: ng.linalg.vector_norm(ng.tensor([1, 2])), ng.DTypeError, "vector_norm"),
        (lambda: ng.linalg.matrix_norm(ng.tensor([1.0, 2.0])), ng.ShapeError, "matrix_norm"),
        (lambda: ng.linalg.matrix_norm(x, "bad"), ValueError, "matrix_norm"),
        (lambda: ng.cumsum(x), TypeError, "cumsum"),
        (lambda: ng.cumsum(x, 2), ng.ShapeError, "cumsum"),
        (lambda: ng.sort(x, 3), ng.ShapeError, "sort"),
        (lambda: ng.hardtanh(x, 1.0, -1.0), ValueError, "hardtanh"),
        (lambda: ng.atan2(x, ng.tensor(np.ones(4))), ng.ShapeError, "atan2"),
        (lambda: ng.multinomial(ng.tensor([-1.0, 2.0]), 1), ValueError, "multinomial"),
        (lambda: ng.multinomial(ng.tensor([0.0, 2.0]), 2), ValueError, "multinomial"),
        (lambda: ng.bernoulli(ng.tensor([0.5, 1.5])), ValueError, "bernoulli"),
    ]
    for fn, err, name in cases:
        with pytest.raises(err, match=name):
            fn()


# --- activations as modules ------------------------------------------------------------------
MODULES = [(nn.ReLU6(), torch.nn.ReLU6()), (nn.Hardtanh(-0.5, 2.0), torch.nn.Hardtanh(-0.5, 2.0)),
           (nn.Hardswish(), torch.nn.Hardswish()), (nn.SELU(), torch.nn.SELU()),
           (nn.CELU(), torch.nn.CELU()), (nn.Mish(), torch.nn.Mish()),
           (nn.LogSigmoid(), torch.nn.LogSigmoid()), (nn.Softsign(), torch.nn.Softsign()),
           (nn.Softmin(0), torch.nn.Softmin(0)), (nn.Tanhshrink(), torch.nn.Tanhshrink()),
           (nn.Softshrink(0.25), torch.nn.Softshrink(0.25)),
           (nn.Hardshrink(0.25), torch.nn.Hardshrink(0.25)),
           (nn.Threshold(0.3, -2.0), torch.nn.Threshold(0.3, -2.0)), (nn.GLU(0), torch.nn.GLU(0)),
           (nn.Hardsigmoid(), torch.nn.Hardsigmoid())]


@pytest.mark.parametrize(("m", "tm"), MODULES, ids=[type(m).__name__ for m, _ in MODULES])
def test_activation_modules_match_torch(m, tm, rng, float_dtype):
    x = (rng.integers(-40, 40, (4, 3)) / 8 + 1 / 16)
    tol = {"rtol": 1e-6, "atol": 1e-9} if isinstance(m, nn.Hardsigmoid) else {}
    compare(m, tm, x, dtype=float_dtype, **(tol if float_dtype == np.float64 else {}))
    f = getattr(NF, type(tm).__name__.lower(), None)
    assert f is not None or isinstance(m, nn.ReLU6)


def test_large_inputs_stay_finite():
    x = ng.tensor(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]), requires_grad=True)
    for f in (ng.logsigmoid, ng.mish, ng.selu, ng.celu, ng.softsign):
        y = f(x)
        y.sum().backward()
        assert np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all(), f
        x.grad = None


# --- sampling --------------------------------------------------------------------------------
def test_bernoulli_and_like_creators():
    ng.manual_seed(0)
    p = ng.tensor(np.array([0.0, 0.2, 0.9, 1.0], np.float32))
    draws = np.stack([ng.bernoulli(p).numpy() for _ in range(2000)])
    assert draws.dtype == np.float32 and set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_allclose(draws.mean(0), [0, 0.2, 0.9, 1], atol=0.04)
    assert ng.tensor([0.3]).bernoulli(p=1.0).item() == 1.0
    g1, g2 = ng.Generator(seed=3), ng.Generator(seed=3)
    np.testing.assert_array_equal(ng.bernoulli(p, generator=g1).numpy(),
                                  ng.bernoulli(p, generator=g2).numpy())
    x = ng.zeros(3, 4, dtype=ng.float64)
    for f in (ng.rand_like, ng.randn_like):
        y = f(x)
        assert y.shape == (3, 4) and y.dtype == np.float64
    r = ng.randint_like(x, 2, 5)
    assert r.dtype == np.float64 and r.numpy().min() >= 2 and r.numpy().max() < 5
    assert ng.randint_like(ng.zeros(5, dtype=ng.int32), 3).dtype == np.int32


def test_multinomial_with_and_without_replacement():
    ng.manual_seed(1)
    w = ng.tensor(np.array([[0.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    s = ng.multinomial(w, 2)
    assert s.shape == (2, 2) and s.dtype == np.int64
    for _ in range(200):
        s = ng.multinomial(w, 2).numpy()
        assert sorted(s[0]) == [1, 2] and len(set(s[1])) == 2
    first = np.array([ng.multinomial(w[0], 1).item() for _ in range(3000)])
    assert abs((first == 2).mean() - 0.75) < 0.04
    many = ng.multinomial(w, 4000, replacement=True).numpy()
    np.testing.assert_allclose(np.bincount(many[0], minlength=4) / 4000, [0, 0.25, 0.75, 0],
                               atol=0.03)
    np.testing.assert_allclose(np.bincount(many[1], minlength=4) / 4000, [0.25] * 4, atol=0.03)
    assert ng.tensor([1.0, 2.0]).multinomial(3, True).shape == (3,)


def test_normal_and_uniform_fill_in_place():
    ng.manual_seed(2)
    x = ng.zeros(20000, dtype=ng.float32)
    assert x.normal_(1.0, 2.0) is x and x.dtype == np.float32
    assert abs(x.numpy().mean() - 1) < 0.05 and abs(x.numpy().std() - 2) < 0.05
    x.uniform_(-1.0, 3.0)
    assert x.numpy().min() >= -1 and x.numpy().max() < 3 and abs(x.numpy().mean() - 1) < 0.05
    w = ng.zeros(3, requires_grad=True)
    with pytest.raises(ng.GradError, match="normal_"):
        w.normal_()
    with ng.no_grad():
        w.uniform_()
    assert (w.numpy() != 0).all()
    y = ng.tensor([1.0, 2.0], requires_grad=True)
    z = y * 2
    out = (z * z).sum()
    with ng.no_grad():
        z.normal_()
    with pytest.raises(ng.InplaceError):
        out.backward()
