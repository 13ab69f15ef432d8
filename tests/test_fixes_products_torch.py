"""Products and running operations compared with PyTorch: dtypes, values, errors, gradients."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError

torch = pytest.importorskip("torch")


def _pair(a: np.ndarray):
    return ng.tensor(a), torch.tensor(a)


def _same(got, want) -> None:
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-12,
                               atol=1e-12)


# --- addr: the coefficients and the dtype are those of the promoted result -------------------
@pytest.mark.parametrize("dt_in,dt_vec,beta,alpha", [
    ("float64", "uint8", 0.5, 0.5),    # integer vectors, float result: float coefficients
    ("uint8", "float64", 0.5, 2),      # integer input, float result
    ("float64", "int64", 0, 1.5),      # beta = 0 still gives the promoted dtype
    ("bool", "bool", 2, 3),            # bool result: (beta and input) or (alpha and outer)
    ("bool", "bool", 0, 1),
    ("bool", "bool", 1, 0),
    ("bool", "bool", True, False),
])
def test_addr_result_dtype_and_coefficients(dt_in, dt_vec, beta, alpha):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 2)) * 3).astype(dt_in)
    v1, v2 = (rng.integers(0, 3, n).astype(dt_vec) for n in (3, 2))
    got = ng.addr(*(_pair(x)[0] for x in (a, v1, v2)), beta=beta, alpha=alpha)
    want = torch.addr(*(_pair(x)[1] for x in (a, v1, v2)), beta=beta, alpha=alpha)
    _same(got, want)


@pytest.mark.parametrize("dt,beta,alpha", [
    ("int64", True, 1), ("float64", 1, True),  # a bool coefficient needs a bool result
    ("bool", 1.0, 1), ("bool", 1, 0.5),        # a float one needs a float result
])
def test_addr_refuses_coefficients_like_torch(dt, beta, alpha):
    a = np.ones((2, 2), dt)
    v = np.ones(2, dt)
    with pytest.raises(RuntimeError):
        torch.addr(torch.tensor(a), torch.tensor(v), torch.tensor(v), beta=beta, alpha=alpha)
    with pytest.raises(DTypeError, match="addr"):
        ng.addr(ng.tensor(a), ng.tensor(v), ng.tensor(v), beta=beta, alpha=alpha)


# --- einsum gradients: size-1 letters broadcast, diagonals under an infinite cotangent -------
def _grads(lib, eq, arrays, weight=None):
    ts = [lib.tensor(a, requires_grad=True) for a in arrays]
    out = lib.einsum(eq, *ts)
    if weight is not None:
        out = out * lib.tensor(weight)
    out.sum().backward()
    return [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("eq,shapes,weight", [
    ("e,e", [(1,), (3,)], None),                  # a size-1 letter broadcast against 3
    ("c,ac", [(2,), (2, 1)], None),
    ("bbe,be->b", [(2, 2, 1), (2, 3)], None),
    ("ab,b->ab", [(2, 1), (3,)], np.array([[1.0, -2, 3], [0.5, 4, -1]])),
    ("dd->d", [(2, 2)], np.array([np.inf, 1.0])),  # off the diagonal: 0, not 0·inf
    ("abab->ab", [(2, 3, 2, 3)], np.array([[np.inf, 1, 2], [3, -np.inf, 5]])),
])
def test_einsum_gradients_match_torch(eq, shapes, weight):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in shapes]
    for got, want in zip(_grads(ng, eq, arrays, weight), _grads(torch, eq, arrays, weight)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)



# --- linalg.cross: the product's dim must have length 3 in both inputs (never broadcast) ----
@pytest.mark.parametrize("s1,s2", [((3,), (1,)), ((2, 1), (2, 3))])
def test_linalg_cross_refuses_a_broadcast_product_dim(s1, s2):
    with pytest.raises(RuntimeError, match="must have length 3"):
        torch.linalg.cross(torch.ones(s1), torch.ones(s2))
    with pytest.raises(ng.errors.ShapeError, match="linalg.cross"):
        ng.linalg.cross(ng.ones(s1), ng.ones(s2))


# --- cdist and pdist with p = inf over rows of no features: distance 0 -----------------------
@pytest.mark.parametrize("which", ["cdist", "pdist"])
def test_inf_distance_of_empty_rows_is_zero(which):
    a = np.zeros((3, 0))
    out = {}
    for lib in (ng, torch):
        x = lib.tensor(a, requires_grad=True)
        r = (lib.cdist(x[None], x[None], float("inf")) if which == "cdist"
             else lib.nn.functional.pdist(x, float("inf")))
        r.sum().backward()
        out[lib] = r, x.grad
    _same(out[ng][0], out[torch][0])
    assert tuple(out[ng][1].shape) == tuple(out[torch][1].shape) == (3, 0)


# --- count_nonzero over an empty tuple or list of dims: over all of them ---------------------
@pytest.mark.parametrize("dim", [(), []])
def test_count_nonzero_empty_dims_counts_everything(dim):
    a = np.array([[0.0, 1.5, -2.0], [0.0, 0.0, 3.0]])
    _same(ng.count_nonzero(ng.tensor(a), dim=dim), torch.count_nonzero(torch.tensor(a), dim=dim))
    _same(ng.tensor(a).count_nonzero(dim=dim), torch.tensor(a).count_nonzero(dim=dim))


# --- einsum of integers and bools: a letter summed inside one operand sums in int64 ----------
@pytest.mark.parametrize("eq,shapes,dt", [
    ("i->", [(3,)], "int8"),          # 300 does not wrap
    ("ij->i", [(2, 3)], "uint8"),
    ("ii->", [(3, 3)], "int8"),
    ("ii", [(3, 3)], "bool"),         # bools are counted
    ("ij->j", [(3, 2)], "bool"),
    ("ij,jk->", [(2, 3), (3, 2)], "int8"),
    ("i,j->", [(2,), (3,)], "int16"),
    ("ij->ji", [(2, 3)], "int8"),     # nothing summed: the dtype stays
    ("i,i->", [(3,)] * 2, "int8"),    # shared letters stay too (wrapping, as PyTorch's)
    ("dcc,", [(2, 1, 1), ()], "int8"),  # a length-1 letter beside another operand
])
def test_einsum_integer_sums_like_torch(eq, shapes, dt):
    arrays = [np.full(s, 100 if dt != "bool" else True, dtype=dt) for s in shapes]
    got = ng.einsum(eq, *(ng.tensor(a) for a in arrays))
    want = torch.einsum(eq, *(torch.tensor(a) for a in arrays))
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    np.testing.assert_array_equal(got.numpy(), want.numpy())


# --- cartesian_prod takes 1-d tensors only; block_diag of nothing is an empty (1, 0) ---------
@pytest.mark.parametrize("shapes", [[(2, 2)], [(2,), ()], [(2,), (2, 1)]])
def test_cartesian_prod_refuses_non_vectors(shapes):
    with pytest.raises(RuntimeError, match="1D"):
        torch.cartesian_prod(*(torch.ones(s) for s in shapes))
    with pytest.raises(ng.errors.ShapeError, match="cartesian_prod"):
        ng.cartesian_prod(*(ng.ones(s) for s in shapes))


def test_block_diag_of_no_tensors():
    _same(ng.block_diag(), torch.block_diag())


# --- linalg.vecdot of two 0-d tensors: their product ------------------------------------------
@pytest.mark.parametrize("dim", [-1, 0])
def test_vecdot_of_0d_tensors(dim):
    a, b = np.array(2.0), np.array(-3.5)
    xa, ta = ng.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)
    got = ng.linalg.vecdot(xa, ng.tensor(b), dim=dim)
    want = torch.linalg.vecdot(ta, torch.tensor(b), dim=dim)
    _same(got, want)
    got.backward()
    want.backward()
    _same(xa.grad, ta.grad)


# --- cdist refuses integer and bool tensors, as pdist does -----------------------------------
@pytest.mark.parametrize("dt1,dt2", [("int64", "float32"), ("float32", "int64"), ("bool", "bool")])
def test_cdist_refuses_non_float(dt1, dt2):
    a, b = np.ones((2, 3), dt1), np.ones((4, 3), dt2)
    with pytest.raises(RuntimeError, match="floating-point"):
        torch.cdist(torch.tensor(a), torch.tensor(b))
    with pytest.raises(DTypeError, match="cdist"):
        ng.cdist(ng.tensor(a), ng.tensor(b))
