"""ng.fft against torch.fft: values, dtypes, gradients (even and odd lengths, every norm),
finite differences, vmap, jit, and the error cases."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")

NORMS = ("backward", "ortho", "forward")
RNG = np.random.default_rng(0)


def _data(shape, cplx: bool, dtype=np.float64):
    x = RNG.standard_normal(shape)
    if cplx:
        x = x + 1j * RNG.standard_normal(shape)
        return x.astype(np.complex64 if dtype == np.float32 else np.complex128)
    return x.astype(dtype)


def _loss_ng(y, w):
    if y.dtype.kind == "c":
        return (ng.view_as_real(y) * ng.tensor(w)).sum()
    return (y * ng.tensor(w[..., 0])).sum()


def _loss_torch(y, w):
    if y.is_complex():
        return (torch.view_as_real(y.resolve_conj()) * torch.tensor(w)).sum()
    return (y * torch.tensor(w[..., 0])).sum()


def _compare(name, x, tol=1e-10, **kw):
    """Value, dtype and input gradient of ng.fft.<name> against torch.fft.<name>."""
    xn = ng.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yn = getattr(ng.fft, name)(xn, **kw)
    yt = getattr(torch.fft, name)(xt, **kw).resolve_conj()
    assert str(yn.dtype) == str(yt.dtype).replace("torch.", "")
    assert tuple(yn.shape) == tuple(yt.shape)
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=tol, atol=tol)
    w = RNG.standard_normal(tuple(yt.shape) + (2,)).astype(yn.real.dtype)
    _loss_ng(yn, w).backward()
    _loss_torch(yt, w).backward()
    assert xn.grad.dtype == xn.dtype
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.resolve_conj().numpy(), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n", [None, 5, 6, 9])
@pytest.mark.parametrize("name", ["fft", "ifft", "rfft", "irfft", "hfft", "ihfft"])
def test_1d_values_and_gradients_match_torch(name, n, norm):
    cplx = name in ("fft", "ifft", "irfft", "hfft")
    for length in (7, 8):  # odd and even inputs
        _compare(name, _data((3, length), cplx), n=n, norm=norm)


@pytest.mark.parametrize("name", ["fft", "ifft", "rfft"])
def test_real_input_gradient_is_real_and_matches_torch(name):
    _compare(name, _data((2, 6), False), n=None)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,s,dim", [
    ("fft2", None, (-2, -1)), ("ifft2", (4, 5), (-2, -1)), ("fftn", None, None),
    ("ifftn", (3, 6), (0, 2)), ("rfft2", None, (-2, -1)), ("rfft2", (5, 7), (-2, -1)),
    ("irfft2", None, (-2, -1)), ("irfft2", (4, 7), (-2, -1)), ("rfftn", (3, 4, 6), None),
    ("irfftn", None, None), ("irfftn", (5, 9), (0, 1)),
])
def test_nd_values_and_gradients_match_torch(name, s, dim, norm):
    cplx = name.startswith("i") or not name.startswith("r")
    if name.startswith("irfft"):
        cplx = True
    kw = {"s": s, "norm": norm}
    if dim is not None:
        kw["dim"] = dim
    _compare(name, _data((4, 3, 5), cplx), **kw)


@pytest.mark.parametrize("name", ["fft", "rfft", "irfft", "fft2", "rfftn"])
def test_single_precision_kept(name):
    cplx = name == "irfft"
    x = _data((3, 6), cplx, np.float32)
    _compare(name, x, tol=2e-5)
    y = getattr(ng.fft, name)(ng.tensor(x))
    want = np.float32 if name == "irfft" else np.complex64
    assert y.dtype == want


def test_integer_input_gives_default_complex():
    y = ng.fft.fft(ng.tensor([1, 2, 3, 4]))
    t = torch.fft.fft(torch.tensor([1, 2, 3, 4]))
    assert y.dtype == np.complex64 and t.dtype == torch.complex64
    np.testing.assert_allclose(y.numpy(), t.numpy(), rtol=1e-6)


def _fd_check(f, x, eps=1e-6):
    """Gradient of the real scalar f(x) against central differences, on the real and (for a
    complex x) the imaginary part of every element separately."""
    xt = ng.tensor(x, requires_grad=True)
    f(xt).backward()
    g = xt.grad.numpy()
    flat = x.reshape(-1)
    num = np.zeros(flat.shape, dtype=x.dtype)
    steps = (1.0, 1j) if x.dtype.kind == "c" else (1.0,)
    for k in range(flat.size):
        for step in steps:
            up, down = flat.copy(), flat.copy()
            up[k] += eps * step
            down[k] -= eps * step
            d = (f(ng.tensor(up.reshape(x.shape))).item()
                 - f(ng.tensor(down.reshape(x.shape))).item()) / (2 * eps)
            num[k] += d * step
    np.testing.assert_allclose(g.reshape(-1), num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("name", ["fft", "rfft", "irfft", "hfft", "ihfft"])
def test_gradients_by_finite_differences(name, n):
    cplx = name in ("fft", "irfft", "hfft")
    x = _data((2, 5), cplx)
    w = _data((2, 16), True)

    def f(t):
        y = getattr(ng.fft, name)(t, n=n, norm="ortho")
        c = ng.tensor(w[:, :y.shape[-1]])
        return (y * c).real.sum() if y.dtype.kind == "c" else (y * c.real).sum()

    _fd_check(f, x)


def test_second_order_through_fft():
    x = ng.tensor(_data((6,), False), requires_grad=True)
    xt = torch.tensor(x.numpy(), requires_grad=True)
    (gn,) = ng.autograd.grad(ng.fft.rfft(x).abs().pow(3).sum(), x, create_graph=True)
    (gt,) = torch.autograd.grad(torch.fft.rfft(xt).abs().pow(3).sum(), xt, create_graph=True)
    gn.sum().backward()
    gt.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-9)


def test_freqs_and_shifts_match_torch():
    for n in (1, 6, 7):
        for d in (1.0, 0.25):
            np.testing.assert_allclose(ng.fft.fftfreq(n, d).numpy(),
                                       torch.fft.fftfreq(n, d).numpy())
            np.testing.assert_allclose(ng.fft.rfftfreq(n, d).numpy(),
                                       torch.fft.rfftfreq(n, d).numpy())
    assert ng.fft.fftfreq(4).dtype == np.float32
    assert ng.fft.fftfreq(4, dtype=ng.float64).dtype == np.float64
    x = _data((4, 5), False)
    for dim in (None, 0, 1, (0, 1), -1):
        for fn in ("fftshift", "ifftshift"):
            np.testing.assert_array_equal(getattr(ng.fft, fn)(ng.tensor(x), dim=dim).numpy(),
                                          getattr(torch.fft, fn)(torch.tensor(x), dim=dim))


def test_shift_gradient():
    x = ng.tensor(_data((5,), True), requires_grad=True)
    w = _data((5,), True)
    (ng.fft.fftshift(x) * ng.tensor(w)).real.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.conj(np.fft.ifftshift(w)))


def test_errors():
    x = ng.tensor(_data((4,), True))
    with pytest.raises(ValueError, match="normalization"):
        ng.fft.fft(x, norm="bogus")
    with pytest.raises(ValueError, match="Invalid number of data points"):
        ng.fft.fft(x, n=0)
    with pytest.raises(ValueError, match="Invalid number of data points"):
        ng.fft.irfft(ng.tensor(_data((1,), True)))
    with pytest.raises(ng.DTypeError, match="real input"):
        ng.fft.rfft(x)
    with pytest.raises(ValueError, match="same length"):
        ng.fft.fftn(ng.tensor(_data((3, 4), True)), s=(3, 4), dim=(0,))
    with pytest.raises(ValueError, match="unique"):
        ng.fft.fftn(ng.tensor(_data((3, 4), True)), dim=(0, 0))
    with pytest.raises(IndexError):
        ng.fft.fft(x, dim=2)


def test_vmap_and_jit():
    x = _data((3, 4, 6), True)
    want = np.fft.fft(x, axis=-1)
    got = ng.vmap(ng.fft.fft, in_dims=1)(ng.tensor(x))
    np.testing.assert_allclose(got.numpy(), np.moveaxis(want, 1, 0), rtol=1e-12)
    r = _data((3, 8), False)
    got = ng.vmap(lambda t: ng.fft.irfft(ng.fft.rfft(t)))(ng.tensor(r))
    np.testing.assert_allclose(got.numpy(), r, rtol=1e-12, atol=1e-12)

    f = ng.jit(lambda t: ng.fft.rfft(t, norm="ortho").abs().sum())
    for _ in range(3):
        v = f(ng.tensor(r))
    np.testing.assert_allclose(v.item(), np.abs(np.fft.rfft(r, norm="ortho")).sum(), rtol=1e-12)
