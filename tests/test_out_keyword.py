"""PyTorch's and NumPy's ``out=`` keyword: the result written into a given tensor, which is
returned; tuples of results into tuples of tensors; clear errors for a wrong shape, dtype or
type, and while recording gradients."""

from __future__ import annotations

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.errors import DTypeError, GradError, ShapeError

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
A = RNG.standard_normal((3, 4)).astype(np.float32)
B = RNG.standard_normal((3, 4)).astype(np.float32)
M = RNG.standard_normal((4, 2)).astype(np.float32)

# (name, arguments as arrays or values, keywords): each run as lib.name(*args, **kw, out=...)
ONE = [
    ("add", (A, B), {}), ("sub", (A, B), {}), ("mul", (A, B), {}), ("div", (A, B), {}),
    ("exp", (A,), {}), ("sin", (A,), {}), ("sqrt", (np.abs(A),), {}), ("neg", (A,), {}),
    ("maximum", (A, B), {}), ("atan2", (A, B), {}), ("clamp", (A, -0.5, 0.5), {}),
    ("sum", (A,), {"dim": 1}), ("mean", (A,), {"dim": 0}), ("prod", (A,), {"dim": 1}),
    ("cumsum", (A,), {"dim": 1}), ("amax", (A,), {"dim": 1}), ("argmax", (A,), {"dim": 1}),
    ("matmul", (A, M), {}), ("mm", (A, M), {}), ("cat", ([A, B],), {"dim": 0}),
    ("stack", ([A, B],), {}), ("where", (A > 0, A, B), {}), ("tril", (A,), {}),
    ("logsumexp", (A,), {"dim": 1}), ("std", (A,), {"dim": 1}), ("index_select",
                                                                 (A, 1, np.array([0, 2])), {}),
    ("gt", (A, B), {}), ("isnan", (A,), {}), ("round", (A,), {}), ("outer", (A[0], B[0]), {}),
]


def _args(lib, args):
    conv = ng.tensor if lib is ng else torch.tensor
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            out.append(conv(a))
        elif isinstance(a, list):
            out.append([conv(x) for x in a])
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("name,args,kw", ONE, ids=[c[0] for c in ONE])
def test_out_matches_torch(name, args, kw):
    expect = getattr(torch, name)(*_args(torch, args), **kw)
    for size in (tuple(expect.shape), (0,)):  # of the result's shape, or empty: resized
        out = ng.empty(size, dtype=ng.tensor(expect.numpy()).dtype)
        got = getattr(ng, name)(*_args(ng, args), **kw, out=out)
        assert got is out
        np.testing.assert_allclose(out.numpy(), expect.numpy(), rtol=1e-6, atol=1e-6)


def test_tuple_results_go_into_tuples_of_tensors_as_torch():
    x = ng.tensor(A)
    v, i = ng.empty(0), ng.empty(0, dtype=ng.int64)
    got = ng.max(x, dim=1, out=(v, i))
    tv, ti = torch.max(torch.tensor(A), dim=1)
    assert got.values is v and got.indices is i and type(got).__name__ == "MaxMin"
    assert np.array_equal(v.numpy(), tv.numpy()) and np.array_equal(i.numpy(), ti.numpy())
    sv, si = ng.empty(0), ng.empty(0, dtype=ng.int64)
    ng.sort(x, dim=1, descending=True, out=[sv, si])
    ts = torch.sort(torch.tensor(A), dim=1, descending=True)
    assert np.array_equal(sv.numpy(), ts.values.numpy())
    assert np.array_equal(si.numpy(), ts.indices.numpy())


def test_out_may_be_an_input_and_bumps_its_version():
    x = ng.tensor(A.copy())
    view = x[0]
    before = x._version[0]
    ng.add(x, 1.0, out=x)
    assert np.array_equal(x.numpy(), A + 1) and x._version[0] > before
    assert np.array_equal(view.numpy(), A[0] + 1)  # views see the write
    ng.multiply(x, 2, out=x)
    assert np.array_equal(x.numpy(), (A + 1) * 2)


def test_bad_out_gets_a_clear_error():
    x = ng.tensor(A)
    with pytest.raises(ShapeError, match=r"add: out has shape \(2,\)"):
        ng.add(x, 1, out=ng.zeros(2))
    with pytest.raises(DTypeError, match="exp: expected out of dtype float32"):
        ng.exp(x, out=ng.zeros((3, 4), dtype=ng.float64))
    with pytest.raises(TypeError, match="sort: out must be a tuple of 2 tensors"):
        ng.sort(x, out=ng.zeros((3, 4)))
    with pytest.raises(TypeError, match="sum: out must be a Tensor, got ndarray"):
        ng.sum(x, out=np.zeros(()))
    w = ng.tensor(A, requires_grad=True)
    with pytest.raises(GradError, match="multiply: functions with out= do not support"):
        ng.mul(w, 2, out=ng.zeros((3, 4)))
    with ng.no_grad():
        out = ng.zeros((3, 4))
        ng.mul(w, 2, out=out)
    assert np.array_equal(out.numpy(), A * 2) and not out.requires_grad


def test_out_none_is_no_out_and_einsum_keeps_its_own_parameters():
    x = ng.tensor(A)
    assert np.array_equal(ng.add(x, 1, out=None).numpy(), A + 1)
    assert np.array_equal(ng.sin(x, out=None).numpy(), np.sin(A))
    out = ng.zeros(())
    ng.einsum("ij,ij->", x, x, out=out)
    np.testing.assert_allclose(out.item(), float((A * A).sum()), rtol=1e-5)


def test_numpy_style_out_of_a_ufunc_name():
    a = ng.tensor(A.copy())
    res = ng.subtract(a, ng.tensor(B), out=(a,))  # NumPy's one-element tuple
    assert res is a and np.array_equal(a.numpy(), A - B)


SQ = (RNG.standard_normal((3, 3)) + 3 * np.eye(3)).astype(np.float32)


@pytest.mark.parametrize("call", [
    lambda lib, t, **o: lib.linalg.inv(t(SQ), **o),
    lambda lib, t, **o: lib.linalg.solve(t(SQ), t(A), **o),
    lambda lib, t, **o: lib.linalg.vector_norm(t(A), dim=1, **o),
    lambda lib, t, **o: lib.fft.rfft(t(A), **o),
    lambda lib, t, **o: lib.special.logsumexp(t(A), 1, **o),
    lambda lib, t, **o: lib.special.xlogy(t(np.abs(A)), t(np.abs(B)), **o),
], ids=["linalg.inv", "linalg.solve", "linalg.vector_norm", "fft.rfft", "special.logsumexp",
        "special.xlogy"])
def test_submodule_functions_take_out_as_torch(call):
    expect = call(torch, torch.tensor)
    out = ng.empty(0, dtype=ng.tensor(expect.numpy()).dtype)
    assert call(ng, ng.tensor, out=out) is out
    np.testing.assert_allclose(out.numpy(), expect.numpy(), rtol=1e-5, atol=1e-5)


def test_tuple_results_of_a_submodule_function():
    sign, logdet = ng.empty(0), ng.empty(0)
    got = ng.linalg.slogdet(ng.tensor(SQ), out=(sign, logdet))
    ts = torch.linalg.slogdet(torch.tensor(SQ))
    assert got.sign is sign and got.logabsdet is logdet
    np.testing.assert_allclose(logdet.numpy(), ts.logabsdet.numpy(), rtol=1e-5)
    with pytest.raises(ShapeError, match=r"linalg.solve: out has shape \(2,\)"):
        ng.linalg.solve(ng.tensor(SQ), ng.tensor(A), out=ng.zeros(2))
