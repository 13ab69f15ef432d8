"""PyTorch's call forms of reductions, scans, casts and indexing ops, against torch 2.13: a 0-d
tensor's dim 0 / -1, ``std(True)`` as ``unbiased``, ``std_mean(unbiased=)``, ``cumsum(dtype=)``,
``searchsorted(sorter=)``, ``memory_format=``, gather / index_select on 0-d or empty indices,
and ``cat`` with legacy empty tensors."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _pair(a, requires_grad=False):
    a = np.asarray(a, dtype=np.float64)
    return (ng.tensor(a.copy(), requires_grad=requires_grad),
            torch.tensor(a.copy(), requires_grad=requires_grad))


def _same(n, t, tol=1e-12):
    assert tuple(n.shape) == tuple(t.shape)
    assert str(n.dtype) == str(t.dtype).removeprefix("torch.")
    np.testing.assert_allclose(np.asarray(n.numpy(), dtype=np.float64),
                               t.detach().numpy().astype(np.float64), rtol=tol, atol=tol)


# --- a 0-d tensor's dim 0 / -1 ----------------------------------------------------------------
_SCALAR_REDUCTIONS = ["sum", "mean", "nansum", "nanmean", "amax", "amin", "logsumexp", "prod",
                      "all", "any", "argmax", "argmin"]
_DIMS = [dict(dim=0), dict(dim=-1), dict(dim=0, keepdim=True), dict(dim=-1, keepdim=True)]


@pytest.mark.parametrize("name", _SCALAR_REDUCTIONS)
@pytest.mark.parametrize("kw", _DIMS, ids=str)
def test_scalar_reductions_take_dim_0_and_minus_1(name, kw):
    n, t = _pair(-1.75, requires_grad=True)
    for call_n, call_t in ((getattr(ng, name), getattr(torch, name)),
                           (getattr(ng.Tensor, name), getattr(torch.Tensor, name))):
        rn, rt = call_n(n, **kw), call_t(t, **kw)
        _same(rn, rt)
        if rt.dtype.is_floating_point:
            rn.backward()
            rt.backward()
            _same(n.grad, t.grad)
            n.grad, t.grad = None, None


@pytest.mark.parametrize("name", ["sum", "mean", "nansum", "amax", "amin", "logsumexp",
                                  "count_nonzero"])
def test_scalar_reductions_take_a_tuple_dim(name):
    n, t = _pair(2.5)
    _same(getattr(ng, name)(n, dim=(0,)), getattr(torch, name)(t, dim=(0,)))


def test_scalar_positional_dims_of_methods_and_torch_functions():
    n, t = _pair(3.0)
    _same(n.sum(0), t.sum(0))
    _same(n.mean(-1, True), t.mean(-1, True))
    _same(n.max(0).values, t.max(0).values)  # x.max(dim) positional: (values, indices)
    _same(n.max(0).indices, t.max(0).indices)
    _same(ng.logsumexp(n, (0,), True), torch.logsumexp(t, (0,), True))
    _same(ng.count_nonzero(n, -1), torch.count_nonzero(t, -1))
    _same(n.prod(0), t.prod(0))
    _same(n.var(dim=0, correction=0), t.var(dim=0, correction=0))
    _same(n.std(dim=-1, keepdim=True, correction=0), t.std(dim=-1, keepdim=True, correction=0))


def test_scalar_max_min_with_dim_give_values_and_indices():
    n, t = _pair(0.5, requires_grad=True)
    for fn in ("max", "min"):
        for kw in _DIMS:
            vn, in_ = getattr(ng, fn)(n, **kw)
            vt, it = getattr(torch, fn)(t, **kw)
            _same(vn, vt)
            _same(in_, it)
    vn, in_ = n.max(dim=0)
    vn.backward()
    assert float(n.grad) == 1.0 and in_.shape == ()
    mn, mx = ng.aminmax(n, dim=0, keepdim=True)
    tmn, tmx = torch.aminmax(t, dim=0, keepdim=True)
    _same(mn, tmn)
    _same(mx, tmx)


def test_scalar_var_mean_and_std_mean_take_dim_0():
    n, t = _pair(1.25)
    for fn in ("var_mean", "std_mean"):
        for a, b in zip(getattr(ng, fn)(n, dim=0, correction=0),
                        getattr(torch, fn)(t, dim=0, correction=0)):
            _same(a, b)


def test_scalar_cumsum_cumprod():
    n, t = _pair(-2.0)
    _same(n.cumsum(0), t.cumsum(0))
    _same(ng.cumprod(n, -1), torch.cumprod(t, -1))


def test_scalar_dims_out_of_range_or_repeated_raise():
    n = ng.tensor(1.0)
    with pytest.raises(ng.ShapeError, match="sum: dim 1 is out of range for a 0-d tensor"):
        n.sum(dim=1)
    with pytest.raises(ng.ShapeError, match="amax: dim -2 is out of range"):
        ng.amax(n, dim=-2)
    with pytest.raises(ng.ShapeError, match="repeated dim"):
        ng.sum(n, dim=(0, -1))
    with pytest.raises(ng.ShapeError, match="max: dim 1"):
        n.max(dim=1)


def test_numpy_forms_keep_rejecting_an_axis_of_a_0d_tensor():
    n = ng.tensor(1.0)  # np.sum(np.float64(1.0)[()], axis=0) raises: NumPy's names keep that
    with pytest.raises(ng.ShapeError):
        ng.sum(n, 0)
    with pytest.raises(ng.ShapeError):
        ng.sum(n, axis=-1)
    with pytest.raises(ng.ShapeError):
        ng.prod(n, axis=0)


# --- std / var: a bool in the first slot is PyTorch's unbiased --------------------------------
@pytest.mark.parametrize("name", ["std", "var"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_std_var_bool_first_argument_is_unbiased(name, unbiased, rng):
    n, t = _pair(rng.standard_normal((4, 5)), requires_grad=True)
    for rn, rt in ((getattr(n, name)(unbiased), getattr(t, name)(unbiased)),
                   (getattr(ng, name)(n, unbiased), getattr(torch, name)(t, unbiased)),
                   (getattr(ng, name)(n, unbiased=unbiased),
                    getattr(torch, name)(t, unbiased=unbiased)),
                   (getattr(n, name)(unbiased=unbiased), getattr(t, name)(unbiased=unbiased))):
        _same(rn, rt)
        rn.backward()
        rt.backward()
        _same(n.grad, t.grad)
        n.grad, t.grad = None, None


def test_std_var_keep_their_documented_defaults(rng):
    a = rng.standard_normal((4, 5))
    n, t = _pair(a)
    np.testing.assert_allclose(float(ng.std(n)), np.std(a), rtol=1e-12)  # NumPy's ddof=0
    _same(n.var(), t.var())  # the method is PyTorch's: correction=1
    np.testing.assert_allclose(float(n.var(ddof=0)), np.var(a), rtol=1e-12)
    _same(n.var(dim=1), t.var(dim=1))  # PyTorch's keyword: correction=1
    _same(ng.std(n, 1, True), torch.std(t, 1, True))  # (dim, unbiased) positional
    _same(ng.var(n, correction=2), torch.var(t, correction=2))
    with pytest.raises(TypeError, match="var: pass one of ddof"):
        ng.var(n, ddof=1, unbiased=True)
    with pytest.raises(TypeError, match="std: got the correction positionally and by keyword"):
        n.std(True, unbiased=False)


@pytest.mark.parametrize("name", ["std_mean", "var_mean"])
def test_std_mean_var_mean_take_unbiased(name, rng):
    n, t = _pair(rng.standard_normal((3, 4, 5)), requires_grad=True)
    f, g = getattr(ng, name), getattr(torch, name)
    cases = [((True,), {}), ((False,), {}), ((), dict(dim=1, unbiased=True, keepdim=True)),
             ((), dict(dim=0, unbiased=False)), ((2, False, True), {}), ((), dict(dim=(0, 2))),
             ((), dict(dim=1, correction=0))]
    for args, kw in cases:
        rn, rt = f(n, *args, **kw), g(t, *args, **kw)
        for a, b in zip(rn, rt):
            _same(a, b)
        (rn[0].sum() + rn[1].sum()).backward()
        (rt[0].sum() + rt[1].sum()).backward()
        _same(n.grad, t.grad)
        n.grad, t.grad = None, None
    with pytest.raises(TypeError, match="correction= or unbiased="):
        f(n, 0, unbiased=True, correction=1)


# --- cumsum / cumprod dtype= -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cumsum", "cumprod"])
def test_cumsum_cumprod_take_dtype(name, rng):
    a = rng.integers(-3, 4, (3, 4))
    n, t = ng.tensor(a), torch.tensor(a)
    for dt in ("float64", "float32", "int32"):
        _same(getattr(n, name)(1, dtype=getattr(ng, dt)), getattr(t, name)(1, dtype=getattr(
            torch, dt)), tol=1e-6)
        _same(getattr(ng, name)(n, 0, dtype=getattr(ng, dt)),
              getattr(torch, name)(t, 0, dtype=getattr(torch, dt)), tol=1e-6)
    nf, tf = _pair(rng.standard_normal((2, 3)), requires_grad=True)
    rn, rt = getattr(nf, name)(1, dtype=ng.float64), getattr(tf, name)(1, dtype=torch.float64)
    rn.sum().backward()
    rt.sum().backward()
    _same(nf.grad, tf.grad)


# --- searchsorted(sorter=) ---------------------------------------------------------------------
@pytest.mark.parametrize("right", [False, True])
def test_searchsorted_sorter(right, rng):
    seq = rng.integers(0, 6, (7,)).astype(np.float64)
    vals = np.array([-1.0, 0.0, 2.0, 2.5, 5.0, 9.0])
    order = np.argsort(seq, kind="stable")
    rn = ng.searchsorted(ng.tensor(seq), ng.tensor(vals), right=right, sorter=ng.tensor(order))
    rt = torch.searchsorted(torch.tensor(seq), torch.tensor(vals), right=right,
                            sorter=torch.tensor(order))
    _same(rn, rt)
    seq2 = rng.standard_normal((3, 5))
    vals2 = rng.standard_normal((3, 4))
    order2 = np.argsort(seq2, axis=-1)
    rn = ng.searchsorted(ng.tensor(seq2), ng.tensor(vals2), side="right" if right else "left",
                         sorter=ng.tensor(order2))
    rt = torch.searchsorted(torch.tensor(seq2), torch.tensor(vals2),
                            side="right" if right else "left", sorter=torch.tensor(order2))
    _same(rn, rt)
    empty = ng.zeros(0, dtype=ng.float64)
    _same(ng.searchsorted(empty, empty, sorter=ng.zeros(0, dtype=ng.int64)),
          torch.searchsorted(torch.zeros(0, dtype=torch.float64),
                             torch.zeros(0, dtype=torch.float64),
                             sorter=torch.zeros(0, dtype=torch.int64)))


def test_searchsorted_sorter_is_checked():
    seq, v = ng.tensor([3.0, 1.0, 2.0]), ng.tensor([2.5])
    with pytest.raises(ng.DTypeError, match="sorter must be an int64 tensor"):
        ng.searchsorted(seq, v, sorter=ng.tensor([1, 2, 0], dtype=ng.int32))
    with pytest.raises(ng.ShapeError, match="sorter must have the shape"):
        ng.searchsorted(seq, v, sorter=ng.tensor([1, 2]))
    with pytest.raises(IndexError, match="sorter holds indices outside"):
        ng.searchsorted(seq, v, sorter=ng.tensor([1, 2, 5]))


# --- memory_format= ----------------------------------------------------------------------------
_CASTS = ["float", "double", "half", "int", "long", "short", "char", "byte", "bool"]
_FORMATS = ["contiguous_format", "preserve_format", "channels_last", "legacy_contiguous_format"]


@pytest.mark.parametrize("cast", _CASTS)
def test_casts_take_memory_format(cast, rng):
    a = rng.standard_normal((2, 3, 2, 3)) * 4
    n, t = ng.tensor(a), torch.tensor(a)
    _same(getattr(n, cast)(), getattr(t, cast)())
    for fmt in _FORMATS:
        _same(getattr(n, cast)(memory_format=getattr(ng, fmt)),
              getattr(t, cast)(memory_format=getattr(torch, fmt)))
        _same(getattr(n, cast)(memory_format=getattr(torch, fmt)),
              getattr(t, cast)(memory_format=getattr(torch, fmt)))


def test_float_cast_with_memory_format_keeps_the_gradient():
    n, t = _pair([[1.0, -2.0]], requires_grad=True)
    rn, rt = n.double(memory_format=torch.preserve_format), t.double(
        memory_format=torch.preserve_format)
    (rn * rn).sum().backward()
    (rt * rt).sum().backward()
    _same(n.grad, t.grad)


def test_clone_and_contiguous_take_memory_format(rng):
    n, t = _pair(rng.standard_normal((2, 3, 2, 3)), requires_grad=True)
    for fmt in _FORMATS:
        _same(n.clone(memory_format=getattr(torch, fmt)), t.clone(memory_format=getattr(torch,
                                                                                      fmt)))
        _same(ng.clone(n, memory_format=getattr(ng, fmt)),
              torch.clone(t, memory_format=getattr(torch, fmt)))
        _same(n.contiguous(memory_format=getattr(torch, fmt)),
              t.contiguous(memory_format=getattr(torch, fmt)))
    c = n.clone(memory_format=ng.channels_last)
    c.sum().backward()
    assert c.node is not None and np.all(n.grad.numpy() == 1.0)
    tr = ng.tensor(np.ones((3, 4))).T
    assert tr.contiguous(memory_format=torch.contiguous_format)._data.flags.c_contiguous


def test_memory_format_is_checked():
    n = ng.ones(2)
    for bad in ("channels_last", 3):
        with pytest.raises(TypeError, match="float: memory_format must be one of"):
            n.float(memory_format=bad)
        with pytest.raises(TypeError, match="contiguous: memory_format must be one of"):
            n.contiguous(memory_format=bad)
        with pytest.raises(TypeError, match="clone: memory_format must be one of"):
            n.clone(memory_format=bad)


# --- index_select / gather on 0-d or empty indices --------------------------------------------
def test_index_select_of_a_0d_input_is_0d():
    n, t = _pair(4.5, requires_grad=True)
    for idx in ([0], 0):
        rn = ng.index_select(n, 0, ng.tensor(idx))
        rt = torch.index_select(t, 0, torch.tensor(idx))
        _same(rn, rt)
        _same(n.index_select(-1, ng.tensor(idx)), t.index_select(-1, torch.tensor(idx)))
        rn.backward()
        rt.backward()
        _same(n.grad, t.grad)
        n.grad, t.grad = None, None
    with pytest.raises(ng.ShapeError, match="index_select: the index of a 0-d input must have "
                                            "1 value, got 2"):
        ng.index_select(n, 0, ng.tensor([0, 0]))
    with pytest.raises(IndexError, match="index_select"):
        ng.index_select(n, 0, ng.tensor([1]))


@pytest.mark.parametrize("shape,dim,ishape", [((5,), 0, (2, 0)), ((2, 3), 0, (0,)),
                                              ((2, 3), 1, (5, 0)), ((2, 3), -1, (1, 0, 4)),
                                              ((), 0, (0, 3))])
def test_gather_with_an_empty_index_of_any_shape(shape, dim, ishape, rng):
    n, t = _pair(rng.standard_normal(shape), requires_grad=True)
    rn = ng.gather(n, dim, ng.zeros(ishape, dtype=ng.int64))
    rt = torch.gather(t, dim, torch.zeros(ishape, dtype=torch.int64))
    _same(rn, rt)
    (rn.sum() + n.sum()).backward()
    (rt.sum() + t.sum()).backward()
    _same(n.grad, t.grad)


@pytest.mark.parametrize("shape,ishape,idx", [((), (1,), [0]), ((), (3,), [0, 0, 0]),
                                              ((5,), (), 3), ((), (), 0)])
def test_gather_counts_a_0d_tensor_as_1d(shape, ishape, idx, rng):
    n, t = _pair(rng.standard_normal(shape), requires_grad=True)
    rn = ng.gather(n, 0, ng.tensor(idx))
    rt = torch.gather(t, 0, torch.tensor(idx))
    _same(rn, rt)
    rn.sum().backward()
    rt.sum().backward()
    _same(n.grad, t.grad)


def test_gather_still_checks_ranks_and_dims():
    with pytest.raises(ng.ShapeError, match="gather: index has 2 dims but input has 0"):
        ng.gather(ng.tensor(1.0), 0, ng.zeros((1, 1), dtype=ng.int64))
    with pytest.raises(ng.ShapeError, match="gather"):
        ng.gather(ng.arange(5.0), 1, ng.zeros((2, 0), dtype=ng.int64))
    with pytest.raises(ng.ShapeError, match="gather: index has 2 dims but input has 1"):
        ng.gather(ng.arange(5.0), 0, ng.zeros((2, 2), dtype=ng.int64))


# --- cat with legacy empty tensors -------------------------------------------------------------
def test_cat_leaves_out_legacy_1d_empty_tensors(rng):
    a = rng.standard_normal((2, 3))
    na, ta = _pair(a, requires_grad=True)
    ne, te = _pair(np.zeros(0), requires_grad=True)
    for order in ((0, 1), (1, 0), (0, 1, 0)):
        tsn = [(ne, na)[i] for i in order]
        tst = [(te, ta)[i] for i in order]
        for dim in (1, -1, 0):
            _same(ng.cat(tsn, dim=dim), torch.cat(tst, dim=dim))
    rn, rt = ng.cat([ne, na, ne], 1), torch.cat([te, ta, te], 1)
    (rn * rn).sum().backward()
    (rt * rt).sum().backward()
    _same(na.grad, ta.grad)
    _same(ng.cat([ne, ne]), torch.cat([te, te]))
    _same(ng.cat([ne, ng.ones(3, dtype=ng.float64)]), torch.cat([te, torch.ones(3).double()]))
    with pytest.raises(ng.ShapeError):  # NumPy's concatenate keeps NumPy's rule
        ng.concatenate([ne, na], axis=1)
    with pytest.raises(ng.ShapeError):  # a (0, 3) tensor is no legacy empty one
        ng.cat([ng.zeros((0, 3)), ng.zeros((2, 3))], dim=1)


# --- masked_scatter / masked_fill: input and mask broadcast together ---------------------------
def test_masked_scatter_and_fill_broadcast_the_input_with_the_mask(rng):
    m = rng.random((4, 5)) > 0.5
    n, t = _pair(rng.standard_normal(5), requires_grad=True)
    ns, ts = _pair(rng.standard_normal((4, 5)), requires_grad=True)
    rn = ng.masked_scatter(n, ng.tensor(m), ns)
    rt = torch.masked_scatter(t, torch.tensor(m), ts)
    _same(rn, rt)
    _same(n.masked_scatter(ng.tensor(m), ns), t.masked_scatter(torch.tensor(m), ts))
    w = rng.standard_normal((4, 5))
    (rn * ng.tensor(w)).sum().backward()
    (rt * torch.tensor(w)).sum().backward()
    _same(n.grad, t.grad)
    _same(ns.grad, ts.grad)
    _same(ng.masked_fill(n, ng.tensor(m), 2.5), torch.masked_fill(t, torch.tensor(m), 2.5))
    with pytest.raises(ng.ShapeError, match="masked_fill_: the result has shape"):
        ng.zeros(5).masked_fill_(ng.tensor(m), 1.0)  # in place, the tensor cannot grow
    with pytest.raises(ng.ShapeError, match="masked_fill: input of shape \\(5,\\) and mask of "
                                            "shape \\(3,\\) do not broadcast together"):
        ng.masked_fill(ng.zeros(5), ng.ones(3, dtype=ng.bool), 1.0)
