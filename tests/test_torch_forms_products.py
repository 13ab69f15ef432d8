"""PyTorch call forms of the product, statistics, creation and sampling functions against
PyTorch: einsum's operand list, ``out=`` (tensordot, chain_matmul), gradient's spacing=None,
cov's weight dtypes, histogramdd's edge tensors, the integer alpha/beta rule of addmm and its
family, randint(high, size), the ``*_like`` keywords, normal's tensor forms and the gradient
through zero_ / fill_ / copy_."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DeviceError, DTypeError, GradError, ShapeError
from nodegrad.testing import compare_with_torch

torch = pytest.importorskip("torch")

TOL = {"atol": 1e-12, "rtol": 1e-12}


def _r(*shape, seed=0):
    return np.random.default_rng(seed + 11 * len(shape) + sum(shape)).standard_normal(shape)


def _ints(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).integers(-9, 10, shape)


# --- einsum: operands as one list ----------------------------------------------------------
@pytest.mark.parametrize("eq,shapes", [("i->", [(4,)]), ("i,j->ij", [(3,), (4,)]),
                                       ("ij,jk->ik", [(2, 3), (3, 4)]),
                                       ("...ij->...i", [(2, 3, 3)])])
@pytest.mark.parametrize("wrap", [list, tuple])
def test_einsum_operand_list_matches_torch(eq, shapes, wrap):
    arrays = [_r(*s, seed=k) for k, s in enumerate(shapes)]
    compare_with_torch(lambda *xs: ng.einsum(eq, wrap(xs)),
                       lambda *xs: torch.einsum(eq, wrap(xs)), *arrays, **TOL)


def test_einsum_bad_operand_names_the_op():
    with pytest.raises(TypeError, match="einsum: operands must be tensors, got int"):
        ng.einsum("i->", 3)


# --- out= ----------------------------------------------------------------------------------
def test_tensordot_out_is_written_returned_and_differentiable_like_torch():
    a, b = _r(2, 3, 4), _r(3, 4, 5, seed=1)
    ta = torch.tensor(a, requires_grad=True)
    tout = torch.empty(2, 5, dtype=torch.float64)
    tr = torch.tensordot(ta, torch.tensor(b), dims=2, out=tout)
    na = ng.tensor(a, requires_grad=True)
    nout = ng.empty(2, 5, dtype=ng.float64)
    nr = ng.tensordot(na, ng.tensor(b), dims=2, out=nout)
    assert nr is nout and tr is tout
    np.testing.assert_allclose(nout.numpy(), tout.detach().numpy(), **TOL)
    v = _r(2, 5, seed=3)
    (tr * torch.tensor(v)).sum().backward()
    (nr * ng.tensor(v)).sum().backward()
    np.testing.assert_allclose(na.grad.numpy(), ta.grad.numpy(), **TOL)


def test_tensordot_out_positional_and_without_grad():
    a, b = _r(2, 3), _r(3, 4, seed=1)
    out = ng.zeros(2, 4, dtype=ng.float64)
    assert ng.tensordot(ng.tensor(a), ng.tensor(b), 1, out) is out
    np.testing.assert_allclose(out.numpy(), torch.tensordot(torch.tensor(a), torch.tensor(b),
                                                            1).numpy(), **TOL)
    assert not out.requires_grad


@pytest.mark.parametrize("sa,sb,dims", [((1, 1, 1), (2, 1, 2), ([0, 1], [2, 0])),
                                         ((3, 1, 4), (5, 2, 3), ([1, 0], [1, 2])),
                                         ((3, 2), (1, 4), 1)])
def test_tensordot_size_one_contracted_dims_broadcast_like_torch(sa, sb, dims):
    compare_with_torch(lambda a, b: ng.tensordot(a, b, dims=dims),
                       lambda a, b: torch.tensordot(a, b, dims=dims), _r(*sa), _r(*sb, seed=1),
                       **TOL)


def test_tensordot_mismatched_contracted_dims_name_the_op():
    with pytest.raises(ShapeError, match="tensordot: contracted dims must match"):
        ng.tensordot(ng.tensor(_r(2, 3)), ng.tensor(_r(2, 3)), dims=1)


def test_chain_matmul_out_matches_torch():
    ms = [_r(2, 3), _r(3, 4, seed=1), _r(4, 2, seed=2)]
    out = ng.empty(2, 2, dtype=ng.float64)
    r = ng.chain_matmul(*[ng.tensor(m) for m in ms], out=out)
    tout = torch.empty(2, 2, dtype=torch.float64)
    torch.chain_matmul(*[torch.tensor(m) for m in ms], out=tout)
    assert r is out
    np.testing.assert_allclose(out.numpy(), tout.numpy(), **TOL)


def test_out_empty_tensor_is_resized_as_torch():
    a, b = _r(2, 3), _r(3, 4, seed=1)
    out = ng.empty(0, dtype=ng.float64)
    ng.chain_matmul(ng.tensor(a), ng.tensor(b), out=out)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out.numpy(), a @ b, **TOL)


def test_out_refusals_name_the_op():
    a, b = ng.tensor(_r(2, 3)), ng.tensor(_r(3, 4, seed=1))
    with pytest.raises(DTypeError, match="chain_matmul: expected out of dtype float64"):
        ng.chain_matmul(a, b, out=ng.empty(2, 4, dtype=ng.float32))
    with pytest.raises(ShapeError, match=r"tensordot: out has shape \(3, 3\)"):
        ng.tensordot(a, b, dims=1, out=ng.empty(3, 3, dtype=ng.float64))
    with pytest.raises(TypeError, match="tensordot: out must be a Tensor"):
        ng.tensordot(a, b, dims=1, out=np.empty((2, 4)))
    leaf = ng.empty(2, 4, dtype=ng.float64, requires_grad=True)
    with pytest.raises(GradError, match="tensordot: out is a leaf tensor that requires grad"):
        ng.tensordot(a, b, dims=1, out=leaf)
    # PyTorch: "functions with out=... arguments don't support automatic differentiation"
    with pytest.raises(GradError, match="chain_matmul: functions with out= do not support"):
        ng.chain_matmul(a.requires_grad_(), b, out=ng.empty(2, 4, dtype=ng.float64))
    with ng.no_grad():
        out = ng.chain_matmul(a, b, out=ng.empty(2, 4, dtype=ng.float64))
    assert not out.requires_grad


def test_out_on_another_device_is_refused(cuda):
    a, b = ng.tensor(_r(2, 3)), ng.tensor(_r(3, 4, seed=1))
    with pytest.raises(DeviceError, match="tensordot: expected out on cpu"):
        ng.tensordot(a, b, dims=1, out=ng.empty(2, 4, dtype=ng.float64, device=cuda))


# --- gradient, cov, histogramdd ------------------------------------------------------------
@pytest.mark.parametrize("edge_order", [1, 2])
@pytest.mark.parametrize("dim", [None, 0, 1])
def test_gradient_spacing_none_is_unit_spacing(edge_order, dim):
    x = _r(5, 4)
    got = ng.gradient(ng.tensor(x), spacing=None, dim=dim, edge_order=edge_order)
    want = torch.gradient(torch.tensor(x), spacing=None, dim=dim, edge_order=edge_order)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), **TOL)


def test_gradient_spacing_none_on_int64_matches_torch():
    x = _ints(5, 5)
    got = ng.gradient(ng.tensor(x), spacing=None, edge_order=2)
    want = torch.gradient(torch.tensor(x), spacing=None, edge_order=2)
    for g, w in zip(got, want, strict=True):
        assert str(g.dtype) == str(w.dtype).replace("torch.", "")
        np.testing.assert_allclose(g.numpy(), w.numpy(), **TOL)


@pytest.mark.parametrize("xdt", ["float64", "float32", "int64"])
@pytest.mark.parametrize("adt", ["float32", "float64"])
@pytest.mark.parametrize("fweights", [False, True])
@pytest.mark.parametrize("correction", [0, 1])
def test_cov_weight_dtypes_promote_as_torch(xdt, adt, fweights, correction):
    x = (_r(2, 4) * 3).astype(xdt)
    aw = np.random.default_rng(1).uniform(0.2, 1.0, 4).astype(adt)
    fw = np.array([1, 3, 2, 1], dtype=np.int32)
    kn = {"aweights": ng.tensor(aw), **({"fweights": ng.tensor(fw)} if fweights else {})}
    kt = {"aweights": torch.tensor(aw), **({"fweights": torch.tensor(fw)} if fweights else {})}
    got = ng.cov(ng.tensor(x), correction=correction, **kn)
    want = torch.cov(torch.tensor(x), correction=correction, **kt)
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    tol = TOL if got.dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(got.numpy(), want.numpy(), **tol)


def test_cov_float32_aweights_gradient_matches_torch():
    aw = np.random.default_rng(1).uniform(0.2, 1.0, 4).astype(np.float32)
    compare_with_torch(lambda x: ng.cov(x, correction=0, aweights=ng.tensor(aw)),
                       lambda x: torch.cov(x, correction=0, aweights=torch.tensor(aw)),
                       _r(3, 4), **TOL)


def _hist_both(x, edges, **kw):
    w = kw.pop("weight", None)
    got = ng.histogramdd(ng.tensor(x), [ng.tensor(e) for e in edges],
                         weight=None if w is None else ng.tensor(w), **kw)
    want = torch.histogramdd(torch.tensor(x), [torch.tensor(e) for e in edges],
                             weight=None if w is None else torch.tensor(w), **kw)
    return got, want


@pytest.mark.parametrize("density", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_histogramdd_edge_tensors_match_torch(density, weighted):
    x = _r(60, 3)
    x[3, 1] = np.nan
    x[4, 0] = 0.5  # on an inner edge
    rng = np.random.default_rng(2)
    edges = [np.sort(rng.standard_normal(k)) for k in (3, 5, 4)]
    edges[0][1] = 0.5
    x[5] = [edges[0][-1], edges[1][-1], edges[2][-1]]  # the closed right edges
    w = rng.uniform(0, 2, 60) if weighted else None
    got, want = _hist_both(x, edges, weight=w, density=density)
    assert got.hist.shape == tuple(want.hist.shape)
    np.testing.assert_allclose(got.hist.numpy(), want.hist.numpy(), **TOL)
    for g, e in zip(got.bin_edges, want.bin_edges, strict=True):
        np.testing.assert_array_equal(g.numpy(), e.numpy())


def test_histogramdd_decreasing_edges_count_nothing_like_torch():
    # torch's OpInfo sample: random two-edge tensors, some decreasing
    x = _r(5, 5) * 5
    edges = [np.array(e) for e in ([-4.8, -7.6], [-0.6, -1.5], [-1.9, -4.1], [-5.4, -4.8],
                                   [-4.2, 7.4])]
    for density in (False, True):
        got, want = _hist_both(x, edges, density=density)
        np.testing.assert_allclose(got.hist.numpy(), want.hist.numpy(), equal_nan=True)


def test_histogramdd_edge_errors():
    x = ng.tensor(_r(4, 2))
    with pytest.raises(DTypeError, match="histogramdd: bins for dim 0 have dtype float32"):
        ng.histogramdd(x, [ng.tensor([0.0, 1.0]), ng.tensor([0.0, 1.0], dtype=ng.float64)])
    with pytest.raises(ValueError, match="histogramdd: bins for dim 1 must be a 1-d tensor"):
        ng.histogramdd(x, [ng.tensor([0.0, 1.0], dtype=ng.float64), 3])


# --- addmm and family on integers: float beta/alpha truncate (addr refuses) ----------------
_INT_CASES = {
    "addmm": [(2, 3), (2, 4), (4, 3)], "addmv": [(2,), (2, 4), (4,)],
    "addbmm": [(2, 3), (5, 2, 4), (5, 4, 3)], "baddbmm": [(5, 2, 3), (5, 2, 4), (5, 4, 3)],
}


@pytest.mark.parametrize("name", sorted(_INT_CASES))
@pytest.mark.parametrize("beta,alpha", [(0.6, 0.2), (1.5, 2.5), (-0.6, -1.7), (2.9, 1),
                                        (2, 3)])
def test_int64_products_truncate_float_coefficients_like_torch(name, beta, alpha):
    arrays = [_ints(*s, seed=k) for k, s in enumerate(_INT_CASES[name])]
    got = getattr(ng, name)(*map(ng.tensor, arrays), beta=beta, alpha=alpha)
    want = getattr(torch, name)(*map(torch.tensor, arrays), beta=beta, alpha=alpha)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_int64_addr_refuses_float_coefficients_like_torch():
    a, v1, v2 = ng.tensor(_ints(2, 3)), ng.tensor(_ints(2)), ng.tensor(_ints(3))
    with pytest.raises(DTypeError, match="addr: for integer input, beta must be an integer"):
        ng.addr(a, v1, v2, beta=0.5)
    with pytest.raises(DTypeError, match="addr: for integer input, alpha must be an integer"):
        ng.addr(a, v1, v2, alpha=2.0)
    got = ng.addr(a, v1, v2, beta=2, alpha=-3)
    want = torch.addr(torch.tensor(a.numpy()), torch.tensor(v1.numpy()),
                      torch.tensor(v2.numpy()), beta=2, alpha=-3)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_float_products_keep_float_coefficients():
    compare_with_torch(lambda a, b, c: ng.addmm(a, b, c, beta=0.6, alpha=0.2),
                       lambda a, b, c: torch.addmm(a, b, c, beta=0.6, alpha=0.2),
                       _r(2, 3), _r(2, 4), _r(4, 3), **TOL)


# --- randint, *_like, normal ---------------------------------------------------------------
@pytest.mark.parametrize("args,kwargs,shape,bounds", [
    ((10, ()), {}, (), (0, 10)), ((10, (5, 5)), {}, (5, 5), (0, 10)),
    ((3, 10, (4,)), {}, (4,), (3, 10)), ((10,), {"size": (2, 3)}, (2, 3), (0, 10)),
    ((), {"high": 7, "size": (3,)}, (3,), (0, 7)), ((10, torch.Size([2])), {}, (2,), (0, 10)),
])
def test_randint_forms_match_torch(args, kwargs, shape, bounds):
    r = ng.randint(*args, **kwargs)
    t = torch.randint(*args, **kwargs)
    assert r.shape == tuple(t.shape) == shape and r.dtype == np.int64
    assert ((r.numpy() >= bounds[0]) & (r.numpy() < bounds[1])).all()


def test_randint_float_dtype_and_errors():
    r = ng.randint(0, 10, (50,), dtype=ng.float64)
    assert r.dtype == np.float64 and (r.numpy() == np.floor(r.numpy())).all()
    assert ng.randint(3, (2,), dtype=ng.float32, requires_grad=True).requires_grad
    with pytest.raises(ValueError, match=r"randint: empty range \[5, 5\)"):
        ng.randint(5, 5, (2,))
    with pytest.raises(TypeError, match="randint: low and high must be ints"):
        ng.randint(0, 2.5, (2,))
    with pytest.raises(TypeError, match="randint: only floating dtypes can require grad"):
        ng.randint(3, (2,), requires_grad=True)
    with pytest.raises(TypeError, match="randint: layout must be nodegrad.strided"):
        ng.randint(3, (2,), layout=torch.sparse_coo)


@pytest.mark.parametrize("name", ["rand_like", "randn_like", "empty_like", "zeros_like",
                                  "ones_like"])
def test_like_functions_take_torchs_keywords(name):
    x = ng.tensor(_r(2, 3))
    tx = torch.tensor(_r(2, 3))
    kw = {"dtype": None, "device": "cpu", "requires_grad": True}
    got = getattr(ng, name)(x, layout=ng.strided, memory_format=torch.preserve_format, **kw)
    want = getattr(torch, name)(tx, layout=torch.strided, memory_format=torch.preserve_format,
                                **kw)
    assert got.shape == tuple(want.shape) and got.requires_grad == want.requires_grad
    assert str(got.dtype) == str(want.dtype).replace("torch.", "") and got.device == "cpu"
    if name in ("zeros_like", "ones_like"):
        np.testing.assert_array_equal(got.numpy(), want.detach().numpy())
    with pytest.raises(TypeError, match=f"{name}: layout must be nodegrad.strided"):
        getattr(ng, name)(x, layout=torch.sparse_coo)
    with pytest.raises(TypeError, match=f"{name}: memory_format must be one of"):
        getattr(ng, name)(x, memory_format="blocked")


def test_full_and_randint_like_take_torchs_keywords():
    x = ng.tensor(_r(2, 3))
    f = ng.full_like(x, 2.5, device="cpu", layout=torch.strided, requires_grad=True,
                     memory_format=torch.contiguous_format)
    assert f.requires_grad and (f.numpy() == 2.5).all()
    r = ng.randint_like(x, 3, 9, device="cpu", layout=torch.strided, requires_grad=True,
                        memory_format=torch.preserve_format)
    assert r.requires_grad and r.dtype == np.float64
    assert ((r.numpy() >= 3) & (r.numpy() < 9)).all()


def test_normal_number_form_takes_layout():
    r = ng.normal(0.3, 2.0, [2, 2, 2], dtype=ng.float64, layout=torch.strided, device="cpu")
    t = torch.normal(0.3, 2.0, [2, 2, 2], dtype=torch.float64, layout=torch.strided,
                     device="cpu")
    assert r.shape == tuple(t.shape) and r.dtype == np.float64
    with pytest.raises(ValueError, match="normal: expects std >= 0"):
        ng.normal(0.0, -1.0, (2,))


@pytest.mark.parametrize("mean_shape,std_shape", [((3,), (3,)), ((2, 1), (3,)), ((), (4,)),
                                                  ((3, 2), None), (None, (2, 2))])
def test_normal_tensor_forms_match_torch_shape_dtype_and_zero_gradient(mean_shape, std_shape):
    def make(lib, shape, val, grad):
        if shape is None:
            return val
        a = np.full(shape, val)
        return (torch.tensor(a, requires_grad=grad) if lib is torch
                else ng.tensor(a, requires_grad=grad))

    tm, ts = make(torch, mean_shape, 1.0, True), make(torch, std_shape, 2.0, True)
    nm, ns = make(ng, mean_shape, 1.0, True), make(ng, std_shape, 2.0, True)
    want, got = torch.normal(tm, ts), ng.normal(nm, ns)
    assert got.shape == tuple(want.shape) and got.dtype == np.float64
    want.sum().backward()
    got.sum().backward()
    for n, t in ((nm, tm), (ns, ts)):
        if isinstance(t, torch.Tensor):
            np.testing.assert_array_equal(n.grad.numpy(), t.grad.numpy())


def test_normal_tensor_form_statistics_and_errors():
    ng.manual_seed(0)
    mean = ng.tensor(np.array([-5.0, 0.0, 5.0]))
    std = ng.tensor(np.array([0.5, 1.0, 2.0]))
    draws = ng.normal(mean.expand(20000, 3), std.expand(20000, 3)).numpy()
    np.testing.assert_allclose(draws.mean(0), [-5, 0, 5], atol=0.05)
    np.testing.assert_allclose(draws.std(0), [0.5, 1, 2], rtol=0.03)
    with pytest.raises(ValueError, match="normal: expects all elements of std >= 0"):
        ng.normal(mean, -std)
    with pytest.raises(DTypeError, match="normal: expected floating-point mean and std"):
        ng.normal(ng.tensor([1, 2]), 1.0)
    with pytest.raises(TypeError, match="normal: with a tensor mean or std"):
        ng.normal(mean, 1.0, (3,))


def test_normal_in_place_with_int_arguments_keeps_dtype():
    for dt in (ng.float32, ng.float64):
        x = ng.zeros(5, 5, dtype=dt)
        assert x.normal_(0, 5) is x and x.dtype == dt
        assert x.normal_(-2, 0.5).dtype == dt


# --- zero_, fill_, copy_ keep the tensor in the graph --------------------------------------
def _both(fn, x):
    """``fn(lib, leaf)`` in nodegrad and torch: (outputs, leaves), the leaves from ``x``."""
    nx, tx = ng.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    return (fn(ng, nx), nx), (fn(torch, tx), tx)


def _same_grad(fn, x):
    (ny, nx), (ty, tx) = _both(fn, x)
    assert ny.requires_grad == ty.requires_grad
    np.testing.assert_allclose(ny.detach().numpy(), ty.detach().numpy(), **TOL)
    ny.sum().backward()
    ty.sum().backward()
    np.testing.assert_allclose(nx.grad.numpy(), tx.grad.numpy(), **TOL)


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_zero_of_a_clone_back_propagates_zero_like_torch(shape):
    _same_grad(lambda lib, x: x.clone().zero_() * 3, _r(*shape))
    _same_grad(lambda lib, x: lib.zero_(x.clone()), _r(*shape))
    _same_grad(lambda lib, x: (x * 2).fill_(1.5), _r(*shape))


def test_fill_and_copy_into_a_slice_match_torch():
    def run(lib, x):
        y = x * 2
        y[1:].fill_(3.0)
        y[:1].copy_(x[2:3] * 5)
        return y * y

    _same_grad(run, _r(4))


def test_copy_of_a_constant_keeps_requires_grad_like_torch():
    def run(lib, x):
        y = x * 1
        y.copy_(lib.ones(3, dtype=lib.float64))
        return y * y

    _same_grad(run, _r(3))


def test_zero_of_a_leaf_that_requires_grad_is_still_refused():
    x = ng.tensor(_r(3), requires_grad=True)
    with pytest.raises(GradError, match="zero_"):
        x.zero_()
