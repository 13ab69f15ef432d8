"""Forward values against NumPy/SciPy: every primitive without a gradient (comparisons,
argmax, ...) and the rounding ones (zero gradient), the numerically delicate differentiable
ones, and the dtype policy."""

import numpy as np
import pytest
import scipy.special as sp
from _opcases import (
    FORWARD,
    INTEGER_ONLY,
    MIXED_FORMS,
    PREDICATES,
    SCALAR_FORMS,
    arr,
    drawn,
    shapes,
)
from hypothesis import strategies as st

import nodegrad as ng

FORWARD_IDS = [pytest.param(f, id=f.name) for f in FORWARD]


def test_every_primitive_without_gradient_has_a_forward_case():
    named = {f.name for f in FORWARD}
    missing = sorted(n for n, p in ng.primitives.items() if not p.differentiable and n not in named)
    assert not missing, f"non-differentiable primitives without a forward case: {missing}"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("f", FORWARD_IDS)
@drawn(25)
def test_non_differentiable_matches_numpy(f, data):
    args, params = f.build(data.draw)
    ts = [ng.tensor(np.array(a), requires_grad=a.dtype.kind == "f") for a in args]
    out, ref = f.fn(*ts, **params), np.asarray(f.ref(*args, **params))
    assert out.dtype == ref.dtype, (out.dtype, ref.dtype)
    assert out.shape == ref.shape
    if f.rtol:
        np.testing.assert_allclose(out.numpy(), ref, rtol=f.rtol, atol=f.rtol)
    else:
        np.testing.assert_array_equal(out.numpy(), ref)
    if not ng.primitives[f.name].differentiable:
        assert not out.requires_grad and out.node is None


def _gelu(x):
    return 0.5 * x * (1 + sp.erf(x / np.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


UNARY_REF = [
    (ng.exp, np.exp, "real"), (ng.expm1, np.expm1, "real"), (ng.log, np.log, "pos"),
    (ng.log1p, np.log1p, "log1p"), (ng.sqrt, np.sqrt, "pos"), (ng.square, np.square, "real"),
    (ng.abs, np.abs, "real"), (ng.sin, np.sin, "wide"), (ng.cos, np.cos, "wide"),
    (ng.tan, np.tan, "tan"), (ng.tanh, np.tanh, "wide"), (ng.erf, sp.erf, "wide"),
    (ng.sigmoid, sp.expit, "wide"), (ng.relu, lambda x: np.maximum(x, 0), "real"),
    (ng.negative, np.negative, "real"), (ng.softplus, lambda x: np.logaddexp(0, x), "wide"),
    (lambda x: ng.leaky_relu(x, 0.2), lambda x: np.where(x > 0, x, 0.2 * x), "real"),
    (ng.gelu, _gelu, "wide"), (lambda x: ng.gelu(x, approximate="tanh"), _gelu_tanh, "wide"),
]


@pytest.mark.parametrize(("fn", "ref", "domain"), UNARY_REF,
                         ids=[r[1].__name__ if r[1].__name__ != "<lambda>" else str(i)
                              for i, r in enumerate(UNARY_REF)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@drawn(10)
def test_unary_values_match_numpy(fn, ref, domain, dtype, data):
    (s,) = data.draw(shapes(data.draw(st.sampled_from(["scalar", "vector", "3d", "empty"]))))
    x = arr(data.draw, s, domain).astype(dtype)
    out = fn(ng.tensor(x))
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out.numpy(), ref(x.astype(np.float64)), rtol=tol, atol=tol)


def test_saturating_ops_do_not_overflow(float_dtype):
    x = np.array([-1e4, -800.0, -30.0, 0.0, 30.0, 800.0, 1e4], float_dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ng.sigmoid(ng.tensor(x)).numpy()
        p = ng.softplus(ng.tensor(x)).numpy()
        lse = ng.logsumexp(ng.tensor(np.stack([x, -x])), 0).numpy()
        sm = ng.softmax(ng.tensor(x), 0).numpy()
    np.testing.assert_allclose(s, sp.expit(x.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(p, np.logaddexp(0, x.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(lse, np.abs(x) + np.log1p(np.exp(-2 * np.abs(x.astype(float)))),
                               rtol=1e-6)
    np.testing.assert_allclose(sm, sp.softmax(x.astype(np.float64)), atol=1e-7)


def test_log_space_ops_match_scipy_and_handle_empty_axes(rng):
    x = rng.standard_normal((3, 4)) * 1e4
    for axis in (None, 0, 1, (0, 1)):
        for keep in (False, True):
            np.testing.assert_allclose(ng.logsumexp(ng.tensor(x), axis, keep).numpy(),
                                       sp.logsumexp(x, axis, keepdims=keep), rtol=1e-12)
    for axis in (0, 1):
        np.testing.assert_allclose(ng.softmax(ng.tensor(x), axis).numpy(), sp.softmax(x, axis))
        np.testing.assert_allclose(ng.log_softmax(ng.tensor(x), axis).numpy(),
                                   sp.log_softmax(x, axis), rtol=1e-12)
    e = ng.tensor(np.zeros((0, 3)))
    assert ng.softmax(e, 0).shape == (0, 3) and ng.log_softmax(e, 1).shape == (0, 3)
    with np.errstate(all="raise"):  # an empty sum is -inf (as torch.logsumexp), with no warning
        np.testing.assert_array_equal(ng.logsumexp(e, 0).numpy(), [-np.inf] * 3)
        np.testing.assert_array_equal(
            ng.logsumexp(ng.tensor([[-np.inf, -np.inf], [0.0, 0.0]], dtype=ng.float64), 1).numpy(),
            [-np.inf, np.log(2)])
    assert ng.logsumexp(e, 1).shape == (0,)


def test_reductions_match_numpy(rng):
    x = rng.standard_normal((3, 4, 2))
    t = ng.tensor(x)
    for axis in (None, 0, -1, (0, 2), ()):
        for keep in (False, True):
            for name in ("sum", "mean", "max", "min"):
                # keepdims= by keyword, NumPy's call (a positional dim with max/min is PyTorch's)
                np.testing.assert_allclose(getattr(ng, name)(t, axis, keepdims=keep).numpy(),
                                           getattr(np, name)(x, axis=axis, keepdims=keep))
            if axis != ():
                for ddof in (0, 1):
                    np.testing.assert_allclose(ng.var(t, axis, ddof, keep).numpy(),
                                               np.var(x, axis, ddof=ddof, keepdims=keep))
                    np.testing.assert_allclose(ng.std(t, axis, ddof, keep).numpy(),
                                               np.std(x, axis, ddof=ddof, keepdims=keep))


def test_indexing_and_windows_match_numpy(rng):
    x = rng.standard_normal((4, 5, 6))
    t = ng.tensor(x)
    for index in [(1, slice(None, None, -2)), (np.array([0, 0, 3]),), (Ellipsis, None, 2),
                  (x[..., 0] > 0,), (np.array([[1], [2]]), slice(1, 4), np.array([0, 5, 5]))]:
        np.testing.assert_array_equal(t[index].numpy(), x[index])
    idx = rng.integers(0, 5, (4, 3, 6))
    np.testing.assert_array_equal(ng.take_along_axis(t, ng.tensor(idx), 1).numpy(),
                                  np.take_along_axis(x, idx, 1))
    idx = rng.integers(0, 6, (3, 1, 2))  # broadcasts against x's leading axis of length 1
    np.testing.assert_array_equal(ng.take_along_axis(t[:1], ng.tensor(idx), 2).numpy(),
                                  np.take_along_axis(x[:1], idx, 2))
    np.testing.assert_array_equal(ng.sliding_window_view(t, (2, 3), (0, 2)).numpy(),
                                  np.lib.stride_tricks.sliding_window_view(x, (2, 3), (0, 2)))
    np.testing.assert_array_equal(ng.pad(t, ((1, 0), (0, 2), (3, 1)), constant_values=-1.5)
                                  .numpy(), np.pad(x, ((1, 0), (0, 2), (3, 1)),
                                                   constant_values=-1.5))
    np.testing.assert_array_equal(ng.pad(ng.tensor(np.array(2.0)), 1).numpy(),
                                  np.pad(np.array(2.0), 1))
    per_axis = ((1, 2), (3, 4), (5, 6))  # NumPy's value per axis and side
    np.testing.assert_array_equal(ng.pad(t, 1, constant_values=per_axis).numpy(),
                                  np.pad(x, 1, constant_values=per_axis))
    np.testing.assert_allclose(ng.einsum("ijk,jk->i", t, ng.tensor(x[0])).numpy(),
                               np.einsum("ijk,jk->i", x, x[0]))
    np.testing.assert_array_equal(ng.index_update(t, (slice(None), 1), 0.5).numpy()[:, 1], 0.5)


# --- dtype policy --------------------------------------------------------------------------
def test_every_elementwise_primitive_has_a_scalar_form():
    for name, p in ng.primitives.items():
        if p.kind == "elementwise" and name != "astype" and name not in SCALAR_FORMS:
            assert getattr(ng, name, None) is p, f"add a SCALAR_FORMS entry for {name!r}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", sorted(n for n, p in ng.primitives.items()
                                        if p.kind == "elementwise" and n != "astype"
                                        and n not in INTEGER_ONLY))
def test_python_scalars_keep_float32(name):
    for form in SCALAR_FORMS[name] if name in SCALAR_FORMS else [getattr(ng, name)]:
        for rg in (False, True):
            x = ng.tensor(np.array([-1.5, 0.25, 2.0], np.float32), requires_grad=rg)
            out = form(x)
            assert out.dtype == (np.bool_ if name in PREDICATES else np.float32), name
            x64 = ng.tensor(np.array([-1.5, 0.25, 2.0]), requires_grad=rg)
            assert form(x64).dtype == (np.bool_ if name in PREDICATES else np.float64), name


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_int_tensors_with_python_floats_give_float32():
    i = ng.tensor(np.array([1, 2, 3]))
    assert i.dtype == np.int64
    forms = [lambda i: i + 0.5, lambda i: 0.5 * i, lambda i: i - 1.5, lambda i: i / 2,
             lambda i: i / i, lambda i: i ** 0.5, lambda i: 2.0 ** i, lambda i: i % 1.5,
             lambda i: i // 1.5, ng.exp, ng.sqrt, ng.sigmoid, ng.mean,
             lambda i: ng.maximum(i, 0.5), lambda i: ng.where(i > 1, i, 0.5),
             lambda i: ng.clip(i, 0.5, 2.5), lambda i: ng.where(i > 1, 1.5, 0.5)]
    for form in forms:
        assert form(i).dtype == np.float32
    assert (i + 1).dtype == np.int64 and (i // 2).dtype == np.int64 and (-i).dtype == np.int64


@pytest.mark.parametrize("form", MIXED_FORMS.values(), ids=MIXED_FORMS.keys())
def test_mixing_float32_and_float64_raises(form):
    a = ng.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    b = ng.tensor(np.array([3.0, 4.0], np.float64))
    with pytest.raises(ng.DTypeError, match="float32.*float64|float64.*float32"):
        form(a, b)
    with pytest.raises(ng.DTypeError):
        form(b, a)
    form(a, b.astype("float32"))  # explicit conversion is the way out
