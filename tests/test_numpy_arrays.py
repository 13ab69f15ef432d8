"""NumPy's array building, editing, set and index-helper functions (nodegrad.ops.numpy_arrays),
checked against NumPy itself: values, shapes, dtypes, errors, float64 gradients by central
differences, and jit / vmap for the shape-static ones."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import JitError
from nodegrad.ops import numpy_arrays as NA

NAN = float("nan")
RNG = np.random.default_rng(0)


def _host(t):
    return t.detach().numpy() if isinstance(t, ng.Tensor) else np.asarray(t)


def _same(ours, ref, exact_dtype: bool = True) -> None:
    """Equal values (NaN equal to NaN) and shape, and NumPy's dtype."""
    a, b = _host(ours), np.asarray(ref)
    assert a.shape == b.shape, (a.shape, b.shape)
    if exact_dtype:
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_array_equal(a, b)


def _t(a):
    return ng.tensor(np.asarray(a))


_KINDS = (ValueError, IndexError, TypeError)


def _both_raise(fn_ng, fn_np, exc=None, match=None):
    """NumPy refuses the call and nodegrad refuses it too, with an exception of NumPy's kind
    (ValueError, IndexError or TypeError; NumPy's AxisError is both of the first two) and a
    message naming the op."""
    with pytest.raises((*_KINDS, AttributeError)) as ref:
        fn_np()
    kinds = tuple(k for k in _KINDS if isinstance(ref.value, k)) or _KINDS  # NumPy's own bug
    with pytest.raises(exc or kinds, match=match) as ours:
        fn_ng()
    assert isinstance(ours.value, kinds), (ref.value, ours.value)


def test_names_exist_and_shape_module_kept():
    for name in NA.__all__:
        assert getattr(ng, name) is getattr(NA, name), name
    assert not hasattr(np, "in1d") or hasattr(ng, "in1d")  # in1d left NumPy 2
    import nodegrad.ops as ops
    assert ops.shape.__name__ == "nodegrad.ops.shape"  # the module, not np.shape
    assert NA.shape(ng.zeros((2, 3))) == (2, 3)
    if hasattr(ng, "shape"):
        assert ng.shape is NA.shape


def test_shape_dependent_inputs_inside_jit():
    x = ng.tensor(np.arange(5.0)[::-1].copy())
    with pytest.raises(JitError, match="delete"):
        ng.jit(lambda t, o: ng.delete(t, o))(x, ng.tensor([1]))
    with pytest.raises(JitError, match="insert"):
        ng.jit(lambda t, o: ng.insert(t, o, 1.0))(x, ng.tensor([1]))
    out = ng.jit(lambda t, k: ng.partition(t, k))(x, ng.tensor(2))  # kth is only checked
    np.testing.assert_array_equal(out.numpy(), np.arange(5.0))


# --- insert / delete / append ----------------------------------------------------------------
A23 = np.arange(6.0).reshape(2, 3)


@pytest.mark.parametrize("arr, obj, values, axis", [
    (np.arange(3.0), 1, [9.0, 8.0], None),
    (np.arange(3.0), [0, 0, 3], [7.0, 8.0, 9.0], None),
    (np.arange(3.0), [-5, 1], [8.0, 9.0], None),
    (np.arange(3.0), slice(0, 3, 2), [7.0, 8.0], None),
    (np.arange(3.0), [], 9.0, None),
    (np.array([True, False, True]), 1, False, None),
    (A23, 1, [7.0, 8.0], 1),
    (A23, [1], [[7.0], [8.0]], 1),
    (A23, [1, 1], [7.0, 8.0], -1),
    (A23, -1, 5.0, 0),
    (A23, 2, [1.0, 2.0, 3.0], 0),
    (A23, 2, 1.5, None),
    (np.array(5.0), 0, 1.0, None),
    (np.zeros((0, 2)), 0, 1.0, 0),
    (np.arange(3), 1, 2.7, None),  # values take arr's dtype (truncated)
    (np.arange(3, dtype=np.float32), [1, 2], [5.0, 6.0], 0),
    (np.arange(4.0), np.array([True, False, True, False]), [7.0, 8.0], None),
])
def test_insert_matches_numpy(arr, obj, values, axis):
    _same(ng.insert(_t(arr), obj, values, axis=axis), np.insert(arr, obj, values, axis=axis))


@pytest.mark.parametrize("obj, axis", [(4, None), ([5], None), (1, 2), (1.0, None),
                                       (True, None), ([[0, 1]], None)])
def test_insert_bad_input(obj, axis):
    _both_raise(lambda: ng.insert(_t(np.arange(3.0)), obj, 1.0, axis=axis),
                lambda: np.insert(np.arange(3.0), obj, 1.0, axis=axis), match="insert")


def test_insert_values_that_do_not_fit():
    _both_raise(lambda: ng.insert(_t(A23), 1, [7.0, 8.0], axis=0),
                lambda: np.insert(A23, 1, [7.0, 8.0], axis=0), match="insert")


def test_insert_gradient_in_both():
    ng.gradcheck(lambda x, v: ng.insert(x, [1, 1, 3], v, axis=1), RNG.standard_normal((2, 3)),
                 RNG.standard_normal((2, 3)))
    ng.gradcheck(lambda x, v: ng.insert(x, 1, v, axis=0), RNG.standard_normal((2, 3)),
                 RNG.standard_normal(3))


@pytest.mark.parametrize("arr, obj, axis", [
    (np.arange(5.0), 1, None), (np.arange(5.0), [-1, -1, 0], None),
    (np.arange(5.0), slice(None, None, -2), None), (np.arange(5.0), [], None),
    (np.arange(5.0), np.array([True, False, True, False, False]), None),
    (A23, 0, 0), (A23, [0, 2], -1), (A23, 4, None), (np.array(5.0), 0, None),
    (np.zeros((0, 3), np.float32), [1], 1), (np.arange(6, dtype=np.int32), [1, 3], 0),
])
def test_delete_matches_numpy(arr, obj, axis):
    _same(ng.delete(_t(arr), obj, axis=axis), np.delete(arr, obj, axis=axis))


@pytest.mark.parametrize("obj, axis", [(3, None), ([3], None), ([1.0], None), (1.0, None),
                                       ([True, False], None), (True, None), (0, 1)])
def test_delete_bad_input(obj, axis):
    _both_raise(lambda: ng.delete(_t(np.arange(3.0)), obj, axis=axis),
                lambda: np.delete(np.arange(3.0), obj, axis=axis), match="delete")


def test_delete_gradient():
    ng.gradcheck(lambda x: ng.delete(x, [0, 2], axis=-1), RNG.standard_normal((2, 4)))


@pytest.mark.parametrize("arr, values, axis", [
    (np.arange(3.0), [4.0, 5.0], None), (A23, [[1.0, 2.0, 3.0]], 0), (A23, A23, 1),
    (A23, 7.0, None), (np.arange(3, dtype=np.float32), np.ones(2, np.float32), None),
    (np.arange(3, dtype=np.float32), [1.0], None),  # NumPy: a float64 list promotes
    (np.arange(3), [1.5], None), (np.zeros((0,)), [], None), (np.array(1.0), 2.0, None),
])
def test_append_matches_numpy(arr, values, axis):
    _same(ng.append(_t(arr), values, axis=axis), np.append(arr, values, axis=axis))


@pytest.mark.parametrize("values, axis", [(np.zeros(2), 0), (np.zeros((1, 4)), 0),
                                          (np.zeros((2, 3)), 2)])
def test_append_bad_input(values, axis):
    _both_raise(lambda: ng.append(_t(A23), values, axis=axis),
                lambda: np.append(A23, values, axis=axis), match="append")


def test_append_gradient():
    ng.gradcheck(lambda x, v: ng.append(x, v, axis=0), RNG.standard_normal((2, 3)),
                 RNG.standard_normal((1, 3)))


# --- splitting and axis order ----------------------------------------------------------------
@pytest.mark.parametrize("shape, ios, axis", [
    ((5,), 3, 0), ((5,), [7, 2, -1], 0), ((2, 7), 3, -1), ((2, 7), [1, 1, 4], 1),
    ((0, 3), 2, 0), ((4,), 6, 0), ((4,), [], 0),
])
def test_array_split_matches_numpy(shape, ios, axis):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    ours = ng.array_split(_t(x), ios, axis)
    ref = np.array_split(x, ios, axis)
    assert isinstance(ours, list) and len(ours) == len(ref)
    for o, r in zip(ours, ref, strict=True):
        _same(o, r)


@pytest.mark.parametrize("arr, ios, axis", [(np.arange(5), 0, 0), (np.array(5), 2, 0),
                                            (np.arange(5), 2, 1)])
def test_array_split_bad_input(arr, ios, axis):
    _both_raise(lambda: ng.array_split(_t(arr), ios, axis),
                lambda: np.array_split(arr, ios, axis), match="array_split")


@pytest.mark.parametrize("shape, axis", [((2, 3), 0), ((2, 3), -1), ((0, 2), 0), ((4,), 0)])
def test_unstack_matches_numpy(shape, axis):
    x = RNG.standard_normal(shape).astype(np.float32)
    ours, ref = ng.unstack(_t(x), axis=axis), np.unstack(x, axis=axis)
    assert isinstance(ours, tuple) and len(ours) == len(ref)
    for o, r in zip(ours, ref, strict=True):
        _same(o, r)
    with pytest.raises(ValueError, match="unstack"):
        ng.unstack(_t(np.float32(1.0)))


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (-1, 0, 1), (2, 1, 0)])
def test_permute_dims_matches_numpy(axes):
    x = RNG.standard_normal((2, 3, 4))
    _same(ng.permute_dims(_t(x), axes), np.permute_dims(x, axes))


@pytest.mark.parametrize("axes", [(0, 0, 1), (0, 1), (0, 1, 3)])
def test_permute_dims_bad_axes(axes):
    x = np.zeros((2, 3, 4))
    _both_raise(lambda: ng.permute_dims(_t(x), axes), lambda: np.permute_dims(x, axes),
                match="permute_dims")


@pytest.mark.parametrize("shape", [(2, 3), (4, 2, 3), (0, 1, 2)])
def test_matrix_transpose_matches_numpy(shape):
    x = np.zeros(shape, np.float32) + np.arange(shape[-1], dtype=np.float32)
    _same(ng.matrix_transpose(_t(x)), np.matrix_transpose(x))
    _both_raise(lambda: ng.matrix_transpose(_t(np.zeros(3))),
                lambda: np.matrix_transpose(np.zeros(3)), match="matrix_transpose")


@pytest.mark.parametrize("axis, start", [(2, 0), (0, 3), (-1, -3), (1, 1), (1, 2), (0, -1)])
def test_rollaxis_matches_numpy(axis, start):
    x = RNG.standard_normal((2, 3, 4))
    _same(ng.rollaxis(_t(x), axis, start), np.rollaxis(x, axis, start))


@pytest.mark.parametrize("axis, start", [(2, 4), (3, 0), (0, -4)])
def test_rollaxis_bad_input(axis, start):
    x = np.zeros((2, 3, 4))
    _both_raise(lambda: ng.rollaxis(_t(x), axis, start), lambda: np.rollaxis(x, axis, start),
                match="rollaxis")


def test_axis_order_gradients():
    x = RNG.standard_normal((2, 3, 4))
    ng.gradcheck(lambda t: ng.rollaxis(t, 2, 1), x)
    ng.gradcheck(lambda t: ng.matrix_transpose(t), x)
    ng.gradcheck(lambda t: ng.stack(ng.unstack(t, axis=1), 0), x)
    ng.gradcheck(lambda t: ng.array_split(t, 3, -1)[1], x)


# --- creation --------------------------------------------------------------------------------
def test_identity_and_tri_match_numpy_in_the_default_float():
    _same(ng.identity(3), np.identity(3, np.float32))
    _same(ng.identity(0, dtype=ng.int64), np.identity(0, np.int64))
    _same(ng.identity(2, dtype=ng.float64), np.identity(2))
    for args in [(2,), (2, 3, 1), (3, 2, -1), (-1,), (2, -1), (3, None, 5)]:
        _same(ng.tri(*args), np.tri(*args, dtype=np.float32))
    _same(ng.tri(3, 4, dtype=ng.int32), np.tri(3, 4, dtype=np.int32))
    _both_raise(lambda: ng.identity(-1), lambda: np.identity(-1), match="identity")
    _both_raise(lambda: ng.identity(2.0), lambda: np.identity(2.0), match="identity")


@pytest.mark.parametrize("args, kw", [
    ((1, 1000, 4), {}), ((-1, -1000, 4), {}), ((1, 8, 4), {"endpoint": False}),
    ((1, 1000, 0), {}), ((1, 1000, 1), {}), ((2.0, 3.0, 7), {}),
    (([1, 2], [10, 20], 3), {"axis": 1}), (([1, 2], [10, 20], 3), {"axis": -1}),
    ((1, 1000, 4), {"dtype": np.int64}), ((1, 1000, 5), {"dtype": np.float64}),
])
def test_geomspace_matches_numpy(args, kw):
    ref = np.geomspace(*args, **{"dtype": np.float32, **kw})
    ours = ng.geomspace(*args, **kw)
    assert ours.dtype == ref.dtype
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6)


def test_geomspace_keeps_tensor_dtype_and_refuses_zero():
    b = ng.tensor(np.array([10.0, 100.0]))  # float64 bounds: float64 result
    np.testing.assert_allclose(ng.geomspace(1.0, b, 3).numpy(), np.geomspace(1.0, [10, 100], 3))
    assert ng.geomspace(1.0, b, 3).dtype == np.float64
    _both_raise(lambda: ng.geomspace(0, 10, 3), lambda: np.geomspace(0, 10, 3),
                match="geomspace")
    _both_raise(lambda: ng.geomspace(1, 10, -1), lambda: np.geomspace(1, 10, -1),
                match="geomspace")
    with pytest.raises(ValueError, match="geomspace.*opposite signs"):  # NumPy: NaN inside
        ng.geomspace(-1.0, 1000.0, 4)
    _same(ng.geomspace(-1j, 1000j, 4), np.geomspace(-1j, 1000j, 4))


# --- sets --------------------------------------------------------------------------------------
SET_PAIRS = [
    ([3.0, 1.0, 2.0, 3.0, NAN], [2.0, 5.0, NAN]),
    ([[1, 5], [5, 2]], [2, 7, 1]),
    ([1, 2, 3], [2.0]),
    ([], []),
    (np.array([], np.float32), np.array([1.0, 2.0], np.float32)),
    (np.array(4.0), [4.0, 1.0]),
    ([True, False], [True]),
    ([0.0, -0.0, 1.0], [0.0]),
]


@pytest.mark.parametrize("a, b", SET_PAIRS)
@pytest.mark.parametrize("name", ["union1d", "intersect1d", "setdiff1d", "setxor1d"])
def test_set_ops_match_numpy(name, a, b):
    ref = getattr(np, name)(a, b)
    ours = getattr(ng, name)(_t(a), _t(b))
    _same(ours, ref)
    _same(getattr(ng, name)(a, b), ref)  # array-likes too


@pytest.mark.parametrize("a, b", [([1, 1, 2, 5], [2, 1, 9]), ([5, 4, 3], [3, 4, 5])])
@pytest.mark.parametrize("name", ["intersect1d", "setdiff1d", "setxor1d"])
def test_set_ops_assume_unique(name, a, b):
    if name == "intersect1d":
        for o, r in zip(ng.intersect1d(_t(a), _t(b), assume_unique=True, return_indices=True),
                        np.intersect1d(a, b, assume_unique=True, return_indices=True),
                        strict=True):
            _same(o, r)
    _same(getattr(ng, name)(_t(a), _t(b), assume_unique=True),
          getattr(np, name)(a, b, assume_unique=True))


@pytest.mark.parametrize("a, b", SET_PAIRS[:3])
def test_intersect1d_return_indices(a, b):
    ours = ng.intersect1d(_t(a), _t(b), return_indices=True)
    ref = np.intersect1d(a, b, return_indices=True)
    for o, r in zip(ours, ref, strict=True):
        _same(o, r)


def test_set_ops_gradients_reach_the_picked_entries():
    a = RNG.permutation(8) + 0.5  # apart from b, so small steps keep the sets' sizes
    b = np.array([1.0, 3.0, 20.0, 4.0])
    ng.gradcheck(lambda x: ng.union1d(x, b), a)
    ng.gradcheck(lambda x, y: ng.setxor1d(x, y), a, b)
    ng.gradcheck(lambda x: ng.setdiff1d(x, b), a)
    ng.gradcheck(lambda x: ng.unique_all(x).values, np.array([2.0, 1.0, 2.5, 5.0]))
    # equal entries cannot move apart under finite differences: the gradient by hand
    x = ng.tensor([3.0, 1.0, 3.0, 7.0], requires_grad=True)
    y = ng.tensor([7.0, 3.0], requires_grad=True)
    (ng.intersect1d(x, y) * ng.tensor([10.0, 100.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [10.0, 0.0, 0.0, 100.0])  # first occurrences
    u = ng.tensor([2.0, 1.0, 2.0], requires_grad=True)
    (ng.union1d(u, ng.tensor([1.0])) * ng.tensor([10.0, 100.0])).sum().backward()
    np.testing.assert_array_equal(u.grad.numpy(), [100.0, 10.0, 0.0])


def test_set_ops_refused_inside_jit_and_vmap():
    a, b = ng.tensor([3.0, 1.0]), ng.tensor([1.0])
    for fn in (ng.union1d, ng.intersect1d, ng.setdiff1d, ng.setxor1d):
        with pytest.raises(JitError, match=fn.__name__):
            ng.jit(fn)(a, b)
    with pytest.raises(JitError, match="unique_values"):
        ng.jit(ng.unique_values)(a)
    with pytest.raises(TypeError, match="union1d.*vmap"):
        ng.vmap(lambda x: ng.union1d(x, b))(ng.ones((2, 2)))


@pytest.mark.parametrize("x", [[3, 1, 2, 3, 1, 7, -5, 2], [[3.0, NAN], [1.0, NAN]],
                               [-0.0, 0.0, 1.0], np.array(5.0), np.array([], np.float32),
                               [True, False, True], np.array([4, 4, 1], np.int32)])
def test_unique_family_matches_numpy(x):
    xn = np.asarray(x)
    t = _t(xn)
    for o, r in zip(ng.unique_all(t), np.unique_all(xn), strict=True):
        _same(o, r)
    for name in ("unique_counts", "unique_inverse"):
        ours, ref = getattr(ng, name)(t), getattr(np, name)(xn)
        assert type(ours).__name__ == type(ref).__name__
        for o, r in zip(ours, ref, strict=True):
            _same(o, r)
    _same(ng.unique_values(t), np.sort(np.unique_values(xn)))  # NumPy's order may vary


# --- sorting and selection -------------------------------------------------------------------
@pytest.mark.parametrize("keys, axis", [
    ([[1, 2, 1, 2], [0, 0, -1, -1]], -1),
    ([[3.0, NAN, 1.0, 1.0], [1.0, 1.0, NAN, 1.0]], -1),
    ([np.arange(6).reshape(2, 3) % 2, np.ones((2, 3))], 0),
    ([np.arange(6).reshape(2, 3) % 2, np.arange(6).reshape(2, 3) // 4], 1),
    ([[True, False, True]], -1),
    ([np.array(1)], -1),
    ([np.zeros(0)], 0),
])
def test_lexsort_matches_numpy(keys, axis):
    ref = np.lexsort([np.asarray(k) for k in keys], axis=axis)
    _same(ng.lexsort([_t(k) for k in keys], axis=axis), ref)


def test_lexsort_stacked_keys_and_bad_input():
    k = np.array([[1, 2, 1, 2], [0, 0, -1, -1]])
    _same(ng.lexsort(_t(k)), np.lexsort(k))
    _both_raise(lambda: ng.lexsort([]), lambda: np.lexsort([]), TypeError, "lexsort")
    _both_raise(lambda: ng.lexsort([[1, 2], [0, 0, 0]]), lambda: np.lexsort([[1, 2], [0, 0, 0]]),
                ValueError, "lexsort")


def _check_partition(x, out, kth, axis):
    """NumPy's partition property: the kth entry is the sorted one, no larger one before it,
    no smaller one after."""
    ax = axis if axis is not None else 0
    x = x.reshape(-1) if axis is None else x
    s = np.sort(x, axis=ax)
    for k in np.atleast_1d(kth):
        k = int(k) % x.shape[ax]
        at = np.take(out, [k], axis=ax)
        np.testing.assert_array_equal(at, np.take(s, [k], axis=ax))
        assert (np.take(out, range(k), axis=ax) <= at).all()
        assert (np.take(out, range(k + 1, x.shape[ax]), axis=ax) >= at).all()
    np.testing.assert_array_equal(np.sort(out, axis=ax), s)


@pytest.mark.parametrize("shape, kth, axis", [
    ((7,), 3, -1), ((7,), [0, -1], -1), ((3, 5), 2, 1), ((3, 5), [0, 2], 0),
    ((3, 5), -1, 0), ((2, 3), 4, None), ((0,), 0, -1), ((3, 0), 0, -1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_partition_and_argpartition_property(shape, kth, axis, dtype):
    x = RNG.integers(0, 4, shape).astype(dtype)
    out = ng.partition(_t(x), kth, axis=axis)
    assert out.dtype == dtype and out.shape == np.partition(x, kth, axis=axis).shape
    if x.size:
        _check_partition(x, out.numpy(), kth, axis)
    idx = ng.argpartition(_t(x), kth, axis=axis)
    assert idx.dtype == np.int64
    if x.size:
        flat = x.reshape(-1) if axis is None else x
        _check_partition(x, np.take_along_axis(flat, idx.numpy(), axis if axis is not None
                                               else 0), kth, axis)


@pytest.mark.parametrize("kth, axis, kind", [(3, -1, "introselect"), (-4, -1, "introselect"),
                                             (True, -1, "introselect"),
                                             (1.0, -1, "introselect"),
                                             (0, -1, "quick"), (0, 1, "introselect")])
@pytest.mark.parametrize("name", ["partition", "argpartition"])
def test_partition_bad_input(name, kth, axis, kind):
    x = np.arange(3.0)
    _both_raise(lambda: getattr(ng, name)(_t(x), kth, axis=axis, kind=kind),
                lambda: getattr(np, name)(x, kth, axis=axis, kind=kind), match=name)


def test_partition_of_a_0d_tensor_needs_axis_none():
    _both_raise(lambda: ng.partition(_t(np.array(1.0)), 0), lambda: np.partition(np.array(1.0), 0),
                match="partition")
    _same(ng.partition(_t(np.array(1.0)), 0, axis=None), np.partition(np.array(1.0), 0, None))


def test_partition_gradient_and_nan_last():
    ng.gradcheck(lambda x: ng.partition(x, 1, axis=0), RNG.standard_normal((4, 3)))
    out = ng.partition(_t([NAN, 1.0, 0.0]), 1).numpy()
    assert np.isnan(out[-1]) and list(out[:2]) == [0.0, 1.0]


# --- in-place writes -------------------------------------------------------------------------
@pytest.mark.parametrize("shape, idx, vals, axis", [
    ((2, 3), [[0], [2]], [[1.0], [2.0]], 1),
    ((2, 3), [[0, 1, 1]], 5.0, 0),
    ((2, 3), [[-1], [0]], [7.0], -1),
    ((3, 2), [[0, 1]], [[4.0, 5.0]], 0),
    ((2, 2), [0, 3], 9.0, None),
    ((2, 3, 2), np.zeros((2, 1, 2), int), 3.0, 1),
])
def test_put_along_axis_matches_numpy(shape, idx, vals, axis):
    ref = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    x = _t(ref.copy())
    before = x
    assert ng.put_along_axis(x, _t(idx), vals, axis) is None
    np.put_along_axis(ref, np.asarray(idx), vals, axis)
    assert x is before
    _same(x, ref)


@pytest.mark.parametrize("idx, axis", [([[0.0]], 1), ([0], 1), ([[2]], 1), ([[0, 1]], None),
                                       ([[0]], 2), ([[0, 1, 0]], 0)])
def test_put_along_axis_bad_input(idx, axis):
    _both_raise(lambda: ng.put_along_axis(ng.zeros((2, 2)), _t(idx), 1.0, axis),
                lambda: np.put_along_axis(np.zeros((2, 2)), np.asarray(idx), 1.0, axis),
                match="put_along_axis")
    with pytest.raises(TypeError, match="put_along_axis"):
        ng.put_along_axis(np.zeros((2, 2)), _t([[0]]), 1.0, 1)


def test_put_along_axis_gradient_and_leaf_rule():
    idx = _t([[2], [0]])

    def f(x, v):
        y = x * 1.0
        ng.put_along_axis(y, idx, v, 1)
        return y

    ng.gradcheck(f, RNG.standard_normal((2, 3)), RNG.standard_normal((2, 1)))
    y, v = ng.zeros((2, 3)), ng.tensor([[1.0], [2.0]], requires_grad=True)
    ng.put_along_axis(y, idx, v, 1)
    (y * 3.0).sum().backward()
    np.testing.assert_array_equal(v.grad.numpy(), [[3.0], [3.0]])
    out = ng.vmap(lambda r: (lambda y: (ng.put_along_axis(y, _t([1]), 5.0, 0), y)[1])(r * 1.0))(
        ng.zeros((2, 3)))
    _same(out, [[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]], exact_dtype=False)
    leaf = ng.zeros((2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match="put_along_axis"):
        ng.put_along_axis(leaf, idx, 1.0, 1)
    with ng.no_grad():
        ng.put_along_axis(leaf, idx, 1.0, 1)
    assert leaf.numpy()[0, 2] == 1.0


@pytest.mark.parametrize("shape, val, wrap", [
    ((3, 3), 5.0, False), ((5, 2), [1.0, 2.0, 3.0], True), ((5, 2), [1.0, 2.0, 3.0], False),
    ((2, 4), 7.0, False), ((2, 2, 2), 7.0, False), ((3, 3), [], False), ((0, 0), 1.0, False),
])
def test_fill_diagonal_matches_numpy(shape, val, wrap):
    ref = np.zeros(shape, np.float32)
    x = _t(ref.copy())
    assert ng.fill_diagonal(x, val, wrap) is None
    np.fill_diagonal(ref, val, wrap)
    _same(x, ref)


def test_fill_diagonal_casts_and_refuses():
    ref = np.zeros((3, 3), np.int64)
    x = _t(ref.copy())
    ng.fill_diagonal(x, [1.7, 2.2])
    np.fill_diagonal(ref, [1.7, 2.2])
    _same(x, ref)
    _both_raise(lambda: ng.fill_diagonal(ng.zeros(3), 1.0),
                lambda: np.fill_diagonal(np.zeros(3), 1.0), match="fill_diagonal")
    _both_raise(lambda: ng.fill_diagonal(ng.zeros((2, 2, 3)), 1.0),
                lambda: np.fill_diagonal(np.zeros((2, 2, 3)), 1.0), match="fill_diagonal")


def test_fill_diagonal_gradient():
    def f(x, v):
        y = x * 1.0
        ng.fill_diagonal(y, v)
        return y

    ng.gradcheck(f, RNG.standard_normal((3, 4)), RNG.standard_normal(2))
    y, v = ng.zeros((2, 2)), ng.tensor([3.0, 4.0], requires_grad=True)  # only val records
    ng.fill_diagonal(y, v)
    (y * ng.tensor([[1.0, 0.0], [0.0, 10.0]])).sum().backward()
    np.testing.assert_array_equal(v.grad.numpy(), [1.0, 10.0])


# --- picking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a, choices, mode", [
    ([0, 1, 0], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "raise"),
    ([[0], [1]], [[1, 2, 3], [4, 5, 6]], "raise"),
    ([0, -1, 5], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "wrap"),
    ([0, -1, 5], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "clip"),
    ([True, False], [[1, 2], [3.5, 4]], "raise"),
    (1, [[1, 2], [3, 4]], "raise"),
    ([2, 0], [1.0, [5.0, 6.0], np.float32(7.0)], "raise"),
])
def test_choose_matches_numpy(a, choices, mode):
    ref = np.choose(a, [np.asarray(c) for c in choices], mode=mode)
    _same(ng.choose(_t(a), [_t(c) for c in choices], mode=mode), ref)


@pytest.mark.parametrize("a, choices", [([0, 2], [[1, 2], [3, 4]]), ([0.0, 1.0], [[1, 2], [3, 4]]),
                                        ([0, 1], [])])
def test_choose_bad_input(a, choices):
    _both_raise(lambda: ng.choose(_t(a), choices), lambda: np.choose(a, choices), match="choose")


def test_choose_gradient_jit_and_vmap():
    a = _t([[0, 2, 1], [1, 1, 0]])
    ng.gradcheck(lambda x, y, z: ng.choose(a, [x, y, z]), *RNG.standard_normal((3, 2, 3)))
    c = [ng.tensor(RNG.standard_normal((2, 3))) for _ in range(3)]
    np.testing.assert_allclose(ng.jit(lambda *cs: ng.choose(a, list(cs)))(*c).numpy(),
                               np.choose(a.numpy(), [t.numpy() for t in c]))
    out = ng.vmap(lambda x, y: ng.choose(_t([1, 0, 1]), [x, y]))(c[0], c[1])
    np.testing.assert_array_equal(out.numpy(), np.choose([1, 0, 1], [c[0].numpy(),
                                                                     c[1].numpy()]))


@pytest.mark.parametrize("cond, a, axis", [
    ([False, True, False], [1.0, 2.0], None), ([1, 0], [1.0, 2.0, 3.0], None),
    ([0, 1], A23, 0), ([True, False, True], A23, -1), ([], A23, 1), ([True], np.array(5.0), None),
])
def test_compress_matches_numpy(cond, a, axis):
    _same(ng.compress(cond, _t(a), axis=axis), np.compress(cond, a, axis=axis))
    _same(ng.compress(_t(np.asarray(cond, bool)), _t(a), axis=axis),
          np.compress(cond, a, axis=axis))


@pytest.mark.parametrize("cond, axis", [([False, True, True, True], 1), ([[1, 0]], None),
                                        ([True], 2)])
def test_compress_bad_input(cond, axis):
    _both_raise(lambda: ng.compress(cond, _t(A23), axis=axis),
                lambda: np.compress(cond, A23, axis=axis), match="compress")


@pytest.mark.parametrize("cond, arr", [([[1, 0], [0, 1]], [[1.0, 2.0], [3.0, 4.0]]),
                                       ([1, 0, 1], [1, 2, 3, 4]), ([], np.zeros(0))])
def test_extract_matches_numpy(cond, arr):
    _same(ng.extract(_t(cond), _t(arr)), np.extract(cond, arr))
    _both_raise(lambda: ng.extract([1, 0, 1, 1], _t([1, 2, 3])),
                lambda: np.extract([1, 0, 1, 1], [1, 2, 3]), match="extract")


def test_picking_gradients_and_jit_refusal():
    x = RNG.standard_normal((2, 3))
    ng.gradcheck(lambda t: ng.compress([True, False, True], t, axis=1), x)
    ng.gradcheck(lambda t: ng.extract(x > 0, t), x)
    with pytest.raises(JitError, match="extract"):
        ng.jit(lambda c, t: ng.extract(c, t))(ng.tensor(x > 0), ng.tensor(x))
    with pytest.raises(JitError, match="compress"):
        ng.jit(lambda c, t: ng.compress(c, t, axis=1))(ng.tensor([True, False, True]),
                                                       ng.tensor(x))


# --- index helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize("args", [([0, 1], [2, 0, 1]), ([True, False, True], []), ([3],),
                                  ([1, 0], [0], [1, 1])])
def test_ix_matches_numpy(args):
    ours = ng.ix_(*args)
    ref = np.ix_(*args)
    for o, r in zip(ours, ref, strict=True):
        _same(o, r)
    x = np.arange(4 * 3 * 2.0).reshape(4, 3, 2)[tuple(slice(None) for _ in args)]
    if all(len(a) for a in args):
        _same(_t(x)[ours], x[ref])
    _both_raise(lambda: ng.ix_([[1]]), lambda: np.ix_([[1]]), match="ix_")


@pytest.mark.parametrize("dims, dtype, sparse", [((2, 3), int, False), ((2, 3), int, True),
                                                 ((), int, False), ((2, 0, 1), np.float32,
                                                                    False), ((3,), int, True)])
def test_indices_matches_numpy(dims, dtype, sparse):
    ours, ref = ng.indices(dims, dtype, sparse), np.indices(dims, dtype, sparse)
    if sparse:
        for o, r in zip(ours, ref, strict=True):
            _same(o, r)
    else:
        _same(ours, ref)


def test_diag_and_triangle_indices_match_numpy():
    for n, nd in [(3, 2), (3, 3), (0, 2), (2, 1)]:
        for o, r in zip(ng.diag_indices(n, nd), np.diag_indices(n, nd), strict=True):
            _same(o, r)
    for shape in [(3, 3), (2, 2, 2)]:
        for o, r in zip(ng.diag_indices_from(ng.zeros(shape)),
                        np.diag_indices_from(np.zeros(shape)), strict=True):
            _same(o, r)
    for name in ("tril_indices_from", "triu_indices_from"):
        for shape, k in [((3, 4), 0), ((4, 3), -1), ((3, 3), 2), ((0, 2), 0)]:
            for o, r in zip(getattr(ng, name)(ng.zeros(shape), k),
                            getattr(np, name)(np.zeros(shape), k), strict=True):
                _same(o, r)
        _both_raise(lambda name=name: getattr(ng, name)(ng.zeros(3)),
                    lambda name=name: getattr(np, name)(np.zeros(3)), match=name)
    _both_raise(lambda: ng.diag_indices_from(ng.zeros((2, 3))),
                lambda: np.diag_indices_from(np.zeros((2, 3))), match="diag_indices_from")


@pytest.mark.parametrize("fn, k", [("triu", 0), ("triu", 1), ("tril", -1), ("tril", 0)])
def test_mask_indices_matches_numpy(fn, k):
    for o, r in zip(ng.mask_indices(4, getattr(ng, fn), k),
                    np.mask_indices(4, getattr(np, fn), k), strict=True):
        _same(o, r)


@pytest.mark.parametrize("multi, dims, mode, order", [
    (([0, 1], [1, 2]), (2, 3), "raise", "C"),
    (([0, 1], [1, 2]), (2, 3), "raise", "F"),
    (([0, 1], [1, 3]), (2, 3), ("clip", "wrap"), "C"),
    (([-1, 5], [1, -3]), (2, 3), "wrap", "F"),
    (([[0, 1]], [[1], [2]]), (2, 3), "raise", "C"),
    ((1, 2), (2, 3), "raise", "C"),
    (([1, 0], [2, 2], [0, 3]), (2, 3, 4), "raise", "C"),
    (([], []), (2, 3), "raise", "C"),
])
def test_ravel_multi_index_matches_numpy(multi, dims, mode, order):
    ref = np.ravel_multi_index(tuple(np.asarray(m, dtype=np.int64) for m in multi), dims, mode,
                               order)
    _same(ng.ravel_multi_index(tuple(_t(np.asarray(m, dtype=np.int64)) for m in multi), dims,
                               mode, order), ref)


@pytest.mark.parametrize("multi, dims", [(([0, 1], [1, 3]), (2, 3)), (([0.0, 1.0], [1, 2]), (2, 3)),
                                         (([0, 1],), (2, 3)), (([0],), (0,))])
def test_ravel_multi_index_bad_input(multi, dims):
    _both_raise(lambda: ng.ravel_multi_index(tuple(_t(m) for m in multi), dims),
                lambda: np.ravel_multi_index(tuple(np.asarray(m) for m in multi), dims),
                match="ravel_multi_index")


def test_ravel_multi_index_jit_and_vmap():
    r, c = _t([0, 1, 1]), _t([2, 0, 1])
    ref = np.ravel_multi_index((r.numpy(), c.numpy()), (2, 3))
    _same(ng.jit(lambda a, b: ng.ravel_multi_index((a, b), (2, 3)))(r, c), ref)
    _same(ng.vmap(lambda a, b: ng.ravel_multi_index((a, b), (2, 3)))(r, c), ref)


# --- conversion and comparison ---------------------------------------------------------------
def test_asarray_chkfinite():
    x = ng.tensor([1.0, 2.0])
    assert ng.asarray_chkfinite(x) is x
    _same(ng.asarray_chkfinite([1, 2]), np.asarray_chkfinite([1, 2]))
    _same(ng.asarray_chkfinite([1, 2], dtype=np.float32), np.asarray_chkfinite([1, 2], np.float32))
    for bad in ([1.0, np.inf], [NAN]):
        _both_raise(lambda bad=bad: ng.asarray_chkfinite(_t(bad)),
                    lambda bad=bad: np.asarray_chkfinite(bad), ValueError, "asarray_chkfinite")
    _both_raise(lambda: ng.asarray_chkfinite([1.0], order="Q"),
                lambda: np.asarray_chkfinite([1.0], order="Q"), ValueError, "asarray_chkfinite")
    with pytest.raises(JitError, match="asarray_chkfinite"):
        ng.jit(ng.asarray_chkfinite)(x)


def test_ascontiguousarray():
    x = ng.tensor(RNG.standard_normal((3, 2)), requires_grad=True)
    assert ng.ascontiguousarray(x) is x
    t = ng.ascontiguousarray(x.T)
    assert t._data.flags.c_contiguous
    _same(t, np.ascontiguousarray(x.detach().numpy().T))
    _same(ng.ascontiguousarray(ng.tensor(np.float32(2.0))), np.ascontiguousarray(np.float32(2.0)))
    _same(ng.ascontiguousarray([1, 2], dtype=np.float32),
          np.ascontiguousarray([1, 2], dtype=np.float32))
    ng.gradcheck(lambda a: ng.ascontiguousarray(a.T), RNG.standard_normal((3, 2)))


@pytest.mark.parametrize("a, b", [([1, 2], [1, 2.0]), ([1, 2], [1, 3]), ([1, 2], [[1, 2]]),
                                  ([NAN, 1.0], [NAN, 1.0]), ([], []), (3.0, 3.0),
                                  ([1, 2], [[1, 2], [1, 2]]), ([1, 2], [1, 2, 3])])
def test_array_equal_and_equiv_match_numpy(a, b):
    for en in (False, True):
        r = ng.array_equal(_t(a), _t(b), equal_nan=en)
        assert type(r) is bool and r == np.array_equal(a, b, equal_nan=en)
    r = ng.array_equiv(_t(a), b)
    assert type(r) is bool and r == np.array_equiv(a, b)


def test_array_equal_inside_jit_is_refused():
    with pytest.raises(JitError, match="array_equal"):
        ng.jit(lambda x: ng.array_equal(x, x))(ng.ones(2))


def test_shape_ndim_size_isscalar_match_numpy():
    x = np.zeros((2, 3, 4), np.float32)
    t = _t(x)
    for obj in (x, [[1, 2], [3, 4]], 5.0, []):
        tt = t if obj is x else obj
        assert NA.shape(tt) == np.shape(obj)
        assert ng.ndim(tt) == np.ndim(obj)
        assert ng.size(tt) == np.size(obj)
    for axis in (0, -1, (0, 2), (1,)):
        assert ng.size(t, axis) == np.size(x, axis)
    _both_raise(lambda: ng.size(t, 3), lambda: np.size(x, 3), match="size")
    _both_raise(lambda: ng.size(t, (0, 0)), lambda: np.size(x, (0, 0)), match="size")
    for v in (1, 2.5, 1j, "a", b"b", np.float32(1), None, [1], np.array(1.0), ng.tensor(1.0)):
        assert ng.isscalar(v) == np.isscalar(v if not isinstance(v, ng.Tensor) else np.array(1.0))


# --- dtype, jit and vmap for the shape-static ones ---------------------------------------------
def test_float32_stays_float32():
    x = ng.tensor(RNG.standard_normal((3, 4)).astype(np.float32))
    for out in (ng.insert(x, 1, 0.5, axis=0), ng.delete(x, 1, axis=1), ng.append(x, x, 0),
                ng.partition(x, 1), ng.choose(ng.tensor([0, 1, 0, 1]), [x, x]),
                ng.compress([True, False, True], x, 0), ng.extract(x > 0, x),
                ng.union1d(x, x), ng.unique_all(x).values, ng.ascontiguousarray(x.T),
                ng.rollaxis(x, 1), ng.matrix_transpose(x), *ng.unstack(x),
                *ng.array_split(x, 2)):
        assert out.dtype == np.float32


def test_jit_and_vmap_of_shape_static_ones():
    x = ng.tensor(RNG.standard_normal((3, 4)))

    def f(t):
        return (ng.insert(ng.delete(t, [0, 2], axis=1), 1, 9.0, axis=1),
                ng.partition(t, 2, axis=1), ng.matrix_transpose(t), ng.rollaxis(t, 1))

    g = ng.jit(f)
    for arg in (x, x * 2.0):  # the trace, then a replay with other values
        for o, r in zip(g(arg), f(arg), strict=True):
            np.testing.assert_array_equal(o.numpy(), r.numpy())
    out = ng.vmap(lambda t: ng.insert(t, [0, 2], ng.tensor([7.0, 8.0], dtype=ng.float64)))(x)
    np.testing.assert_array_equal(out.numpy(), np.stack([np.insert(r, [0, 2], [7.0, 8.0])
                                                         for r in x.numpy()]))
    keys = ng.tensor(RNG.integers(0, 3, (2, 5, 6)))
    out = ng.vmap(lambda k: ng.lexsort(k))(keys)
    np.testing.assert_array_equal(out.numpy(), np.stack([np.lexsort(k) for k in keys.numpy()]))
    np.testing.assert_array_equal(ng.jit(ng.lexsort)(keys[0]).numpy(), np.lexsort(keys[0].numpy()))


def test_jvp_through_insert_and_partition():
    x, t = RNG.standard_normal(5), RNG.standard_normal(5)

    def f(v):
        return ng.partition(ng.insert(v, 2, v[0]), 3)

    _, tan = ng.jvp(f, (ng.tensor(x),), (ng.tensor(t),))
    order = np.argsort(np.insert(x, 2, x[0]), kind="stable")
    np.testing.assert_allclose(tan.numpy(), np.insert(t, 2, t[0])[order])
