"""``z.real``, ``z.imag``, ``view_as_real`` and ``view_as_complex`` are views, as PyTorch's: writes
through them reach the tensor they view, with and without autograd recording, the setters
``z.real = x`` / ``z.imag = x`` copy x in, and version counters are shared (each case against
PyTorch: values, gradients, errors and dtypes)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import nodegrad as ng

_RNG = np.random.default_rng(0)
_Z = _RNG.standard_normal((2, 3)) + 1j * _RNG.standard_normal((2, 3))
_X = _RNG.standard_normal((2, 3))
_C = _RNG.standard_normal((2, 3)) + 1j * _RNG.standard_normal((2, 3))
_W = _RNG.standard_normal((2, 3, 2))


def _set_real(lib, z):
    z.real = lib.ones(2, 3, dtype=lib.float64)


def _set_imag(lib, z):
    z.imag = lib.full((3,), 7.0, dtype=lib.float64)


def _complex_of_real_view(lib, z):
    lib.view_as_complex(lib.view_as_real(z)).mul_(2)


def _imag_of_complex_view(lib, z):
    x = lib.view_as_real(z)
    lib.view_as_complex(x).imag.add_(1)


# writes through a view of z, no gradient recorded
_WRITES = {
    "imag_slice_setitem": lambda lib, z: z.imag.__setitem__((slice(None), 0), 5),
    "real_mul_": lambda lib, z: z.real.mul_(2),
    "view_as_real_zero_": lambda lib, z: lib.view_as_real(z)[..., 1].zero_(),
    "real_copy_": lambda lib, z: z.real.copy_(lib.ones(2, 3, dtype=lib.float64)),
    "real_setter": _set_real,
    "imag_setter": _set_imag,
    "view_as_complex_of_view_as_real": _complex_of_real_view,
    "imag_of_view_as_complex": _imag_of_complex_view,
    "view_as_real_of_transpose": lambda lib, z: lib.view_as_real(z.T)[0, :, 1].fill_(-1),
    "real_of_slice": lambda lib, z: z[1:].real.neg_(),
    "imag_of_row_of_view_as_real": lambda lib, z: lib.view_as_real(z)[0].select(-1, 1).exp_(),
}


@pytest.mark.parametrize("name", list(_WRITES))
def test_a_write_through_a_complex_view_changes_the_tensor(name):
    """These views were copies: writes through them never reached z (a silent wrong answer)."""
    got, want = ng.tensor(_Z.copy()), torch.tensor(_Z.copy())
    _WRITES[name](ng, got)
    _WRITES[name](torch, want)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert not np.array_equal(got.numpy(), _Z)


def test_a_write_through_view_as_complex_changes_the_float_tensor():
    for lib in (ng, torch):
        x = lib.tensor(_W.copy())
        lib.view_as_complex(x).mul_(1j)
        np.testing.assert_array_equal(x.numpy(), np.stack([-_W[..., 1], _W[..., 0]], -1))


def test_a_0d_complex_tensor_has_a_real_view():
    for lib in (ng, torch):
        z = lib.tensor(1 + 2j)
        lib.view_as_real(z)[0] = 9
        z.imag.mul_(2)
        assert z.item() == 9 + 4j


def _grad_case(lib, f):
    w = lib.tensor(_Z.copy(), requires_grad=True)
    x = lib.tensor(_X.copy(), requires_grad=True)
    out = f(lib, w * lib.tensor(_C), x)
    (lib.view_as_real(out) * lib.tensor(_W)).sum().backward()
    return [None if t is None else t.detach().numpy().copy() for t in (out, w.grad, x.grad)]


def _add_and_read(lib, z, x):
    r = z.real
    r.add_(x)
    return z * r  # r took the change too


def _rotate_base(lib, z, x):
    r = z.real
    z.mul_(1j)
    return z + r  # a view of a base changed in place shows the change


def _stack_and_view(lib, z, x):
    y = lib.stack([x, x * 2], -1)
    c = lib.view_as_complex(y)
    c.imag.mul_(3)
    return lib.view_as_complex(y) * z


# writes into a view of a non-leaf z (and of values that require grad), recorded for autograd
_RECORDED = {
    "real_mul_": lambda lib, z, x: (z.real.mul_(2), z)[1],
    "imag_slice_setitem": lambda lib, z, x: (z.imag.__setitem__((slice(None), 0), x[:, 1]), z)[1],
    "view_as_real_zero_": lambda lib, z, x: (lib.view_as_real(z)[..., 1].zero_(), z)[1],
    "view_as_real_setitem": lambda lib, z, x: (lib.view_as_real(z)[..., 1].copy_(x), z)[1],
    "real_setter": lambda lib, z, x: (setattr(z, "real", x), z)[1],
    "imag_setter": lambda lib, z, x: (setattr(z, "imag", x * x), z)[1],
    "real_copy_": lambda lib, z, x: (z.real.copy_(x.exp()), z * z)[1],
    "imag_mul_": lambda lib, z, x: (z.imag.mul_(x), z)[1],
    "real_add_": _add_and_read,
    "base_mul_": _rotate_base,
    "view_as_real_mul_": lambda lib, z, x: lib.view_as_complex(
        lib.view_as_real(z).mul_(lib.tensor(_W))),
    "transposed_real": lambda lib, z, x: (z.T.real[0].add_(x[:, 0]), z)[1],
    "view_as_complex_of_non_leaf": _stack_and_view,
    "zero_then_read": lambda lib, z, x: (z.real.zero_(), z.real * x + 0j)[1],
}


@pytest.mark.parametrize("name", list(_RECORDED))
def test_a_recorded_write_through_a_complex_view_matches_torch(name):
    """Values and gradients; an imaginary part written had its gradient's sign flipped while
    the write into a view took the holomorphic rule."""
    got, want = _grad_case(ng, _RECORDED[name]), _grad_case(torch, _RECORDED[name])
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_second_order_through_writes_into_complex_views_matches_torch():
    def run(lib):
        w = lib.tensor(_Z[0], requires_grad=True)
        x = lib.tensor(_X[0], requires_grad=True)
        z = lib.zeros(3, dtype=lib.complex128)
        z.imag = x * x  # a leaf without grad joins the graph, as in PyTorch
        z.real[1:] = x[:2]
        u = w * z
        lib.view_as_real(u)[..., 0].mul_(x)
        loss = (u.abs() ** 2).sum()
        gx, gw = lib.autograd.grad(loss, (x, w), create_graph=True)
        ((gx * gx).sum() + (gw.abs() ** 2).sum()).backward()
        assert z.requires_grad
        return [t.detach().numpy() for t in (u, gx, gw, x.grad, w.grad)]

    for g, w in zip(run(ng), run(torch)):
        np.testing.assert_allclose(g, w, rtol=1e-11)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_function_transforms_see_writes_through_complex_views(k):
    def loss(lib):
        def f(x):
            z = lib.view_as_complex(x * 1)
            if k & 1:
                z.imag.mul_(3)
            if k & 2:
                lib.view_as_real(z)[..., 0].add_(1)
            if k & 4:
                z.real.mul_(2)
            return (z.abs() ** 2).sum()
        return f

    x = _W.copy()
    got = ng.func.grad(loss(ng))(ng.tensor(x))
    want = torch.func.grad(loss(torch))(torch.tensor(x))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


def test_forward_mode_through_a_write_into_a_complex_view_matches_torch():
    def f(lib):
        def g(x):
            z = lib.view_as_complex(x * 1)
            z.imag.mul_(x[:, 0])
            return lib.view_as_real(z * z)
        return g

    x, t = _W[0].copy(), _W[1].copy()
    got = ng.func.jvp(f(ng), (ng.tensor(x),), (ng.tensor(t),))
    want = torch.func.jvp(f(torch), (torch.tensor(x),), (torch.tensor(t),))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)


@pytest.mark.parametrize("write", ["mul_", "setter"])
def test_a_view_of_a_leaf_that_requires_grad_refuses_a_recorded_write(write):
    for lib, err in ((ng, ng.errors.GradError), (torch, RuntimeError)):
        z = lib.tensor(_Z.copy(), requires_grad=True)
        with pytest.raises(err, match="view of a leaf"):
            if write == "mul_":
                z.real.mul_(2)
            else:
                z.imag = lib.ones(3, dtype=lib.float64)
        with lib.no_grad():  # an initialiser's write: allowed, and it reaches z
            z.imag.fill_(0.5)
        np.testing.assert_array_equal(z.detach().numpy().imag, 0.5)


def test_a_parameter_is_initialised_through_its_parts():
    for lib in (ng, torch):
        p = lib.nn.Parameter(lib.zeros(4, dtype=lib.complex64))
        with lib.no_grad():
            p.real.fill_(1)
            lib.view_as_real(p)[:, 1].copy_(lib.arange(4.0))
        np.testing.assert_array_equal(p.detach().numpy(), 1 + 1j * np.arange(4))


def _saved_then_written(lib, case):
    x = lib.tensor(_X[0], requires_grad=True)
    z = lib.tensor(_Z[0].copy())
    if case == "real_saved_imag_written":  # one counter for every view of z
        q = (z.real * x).sum()
        z.imag.zero_()
    elif case == "view_as_real_saved_base_written":
        q = (lib.view_as_real(z)[:, 0] * x).sum()
        z.mul_(2)
    else:  # "base_saved_real_written"
        q = (z * x).abs().sum()
        z.real.add_(1)
    q.backward()


@pytest.mark.parametrize("case", ["real_saved_imag_written", "view_as_real_saved_base_written",
                                  "base_saved_real_written"])
def test_a_value_saved_for_backward_then_written_through_a_view_refuses(case):
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _saved_then_written(torch, case)
    with pytest.raises(ng.errors.InplaceError, match="modified in place"):
        _saved_then_written(ng, case)


def test_the_views_share_the_version_counter():
    z = ng.tensor(_Z.copy())
    parts = (z.real, z.imag, ng.view_as_real(z))
    z.add_(1)
    zt = torch.tensor(_Z.copy())
    tparts = (zt.real, zt.imag, torch.view_as_real(zt))
    zt.add_(1)
    for p, t in zip(parts, tparts):
        assert p._version[0] == t._version == 1
        np.testing.assert_array_equal(p.numpy(), t.numpy())


@pytest.mark.parametrize("cdt,fdt", [("complex64", "float32"), ("complex128", "float64")])
def test_the_views_dtypes_match_torch(cdt, fdt):
    for lib in (ng, torch):
        z = lib.tensor(_Z, dtype=getattr(lib, cdt))
        for v in (z.real, z.imag, lib.view_as_real(z)):
            assert str(v.dtype).endswith(fdt)
        assert str(lib.view_as_complex(lib.view_as_real(z)).dtype).endswith(cdt)


@pytest.mark.parametrize("value", ["number", "float32", "int64", "complex"])
def test_the_setters_cast_as_torch(value):
    res = []
    for lib in (ng, torch):
        z = lib.tensor(_Z.copy())
        v = {"number": 3, "float32": lib.tensor([1.5, 2.5, 3.5], dtype=lib.float32),
             "int64": lib.tensor([1, 2, 3]), "complex": lib.tensor([1 + 1j, 2 + 2j, 3j])}[value]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            z.real = v
            z.imag = v
        res.append((z.numpy(), any("discards the imaginary part" in str(c.message)
                                   for c in caught)))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    assert res[0][1] == res[1][1] == (value == "complex")


def test_the_setters_of_a_real_tensor():
    for lib in (ng, torch):
        t = lib.tensor([1.0, 2.0])
        t.real = lib.tensor([5.0, 6.0])  # real of a real tensor is itself
        np.testing.assert_array_equal(t.numpy(), [5, 6])
        with pytest.raises((ng.errors.DTypeError, RuntimeError), match="non-complex dtypes"):
            t.imag = lib.tensor([1.0, 2.0])


def test_a_setter_of_a_wrong_shape_refuses():
    z = ng.tensor(_Z.copy())
    with pytest.raises(ng.errors.ShapeError, match="copy_"):
        z.imag = ng.ones(4, dtype=ng.float64)
    np.testing.assert_array_equal(z.numpy(), _Z)


@pytest.mark.parametrize("make,why", [
    (lambda lib: lib.ones(2, 3).T, "last dimension with stride 1"),
    (lambda lib: lib.arange(12.0).reshape(4, 3)[:, :2], "stride divisible by 2"),
])
def test_view_as_complex_refuses_what_torch_cannot_view(make, why):
    """These gave a copy, which writes through never reached."""
    with pytest.raises(RuntimeError, match=why):
        torch.view_as_complex(make(torch))
    with pytest.raises(ng.errors.ShapeError, match=f"view_as_complex: .*{why}.*contiguous"):
        ng.view_as_complex(make(ng))
    got = ng.view_as_complex(make(ng).contiguous())
    np.testing.assert_array_equal(got.numpy(), torch.view_as_complex(make(torch).contiguous()))


def test_view_as_complex_at_an_odd_offset_is_a_view():
    """PyTorch refuses an odd storage offset; here a parameter in an optimiser's flat buffer
    may sit at one (PyTorch's has storage of its own), so the view is made."""
    x = ng.arange(12.0, dtype=ng.float64).reshape(2, 6)[:, 1:3]
    ng.view_as_complex(x).mul_(1j)
    np.testing.assert_array_equal(x.numpy(), [[-2, 1], [-8, 7]])


def test_view_as_complex_of_a_parameter_in_an_optimisers_buffer():
    odd = ng.nn.Parameter(ng.zeros(3, dtype=ng.float64))
    p = ng.nn.Parameter(ng.tensor(_W.copy()))
    opt = ng.optim.SGD([odd, p], lr=0.1)
    with ng.no_grad():
        ng.view_as_complex(p).imag.zero_()
    np.testing.assert_array_equal(p.detach().numpy()[..., 1], 0)
    (ng.view_as_complex(p).abs() ** 2).sum().backward()
    opt.step()
    np.testing.assert_allclose(p.detach().numpy()[..., 0], 0.8 * _W[..., 0])


def test_vmap_of_the_views_matches_torch():
    x = _W.copy()
    z = x[..., 0] + 1j * x[..., 1]
    np.testing.assert_array_equal(ng.vmap(ng.view_as_complex)(ng.tensor(x)).numpy(), z)
    got = ng.vmap(ng.view_as_complex, in_dims=1)(ng.tensor(x).transpose(0, 1))
    want = torch.vmap(torch.view_as_complex, in_dims=1)(torch.tensor(x).transpose(0, 1))
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(ng.vmap(ng.view_as_real)(ng.tensor(z)).numpy(), x)
    np.testing.assert_array_equal(ng.vmap(lambda v: v.imag * 2)(ng.tensor(z)).numpy(),
                                  2 * x[..., 1])


def test_jit_replays_writes_through_complex_views():
    def f(x):
        y = x * 1
        z = ng.view_as_complex(y)
        z.imag.mul_(3)
        return y + z.real[:, None]

    def want(x):
        return np.stack([2 * x[:, 0], 3 * x[:, 1] + x[:, 0]], -1)

    step = ng.jit(f)
    for x in (_W[0], _W[1], 2 * _W[0]):
        np.testing.assert_allclose(step(ng.tensor(x)).numpy(), want(x), rtol=1e-15)
