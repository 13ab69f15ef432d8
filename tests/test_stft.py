"""``ng.stft`` / ``ng.istft`` (and the Tensor methods) against ``torch.stft`` / ``torch.istft``:
values, dtypes, gradients in the signal and the window, and PyTorch's errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def _sig(shape, seed=0, complex_=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    return x + 1j * rng.standard_normal(shape) if complex_ else x


def _lib_kw(m, kw, win):
    kw = dict(kw)
    if win is not None:
        kw["window"] = m.tensor(win)
    return kw


STFT = [
    dict(n_fft=16),
    dict(n_fft=16, hop_length=5, win_length=12),
    dict(n_fft=15, center=False, normalized=True),
    dict(n_fft=16, pad_mode="constant", onesided=False),
    dict(n_fft=8, pad_mode="circular", hop_length=3),
    dict(n_fft=8, pad_mode="replicate", normalized=True),
    dict(n_fft=16, win_length=9, hop_length=3, center=False, align_to_window=True),
    dict(n_fft=16, win_length=9, hop_length=3, center=False, align_to_window=False),
]


def _window(kw):
    return np.hanning(kw.get("win_length", kw["n_fft"]) + 2)[1:-1]


@pytest.mark.parametrize("kw", STFT)
@pytest.mark.parametrize("windowed", [False, True])
def test_stft_values_and_gradients_match_torch(kw, windowed):
    x = _sig((2, 40))
    win = _window(kw) if windowed else None
    rng = np.random.default_rng(1)
    res = {}
    for m in (ng, torch):
        xt = m.tensor(x, requires_grad=True)
        wt = None if win is None else m.tensor(win, requires_grad=True)
        args = dict(kw, window=wt)
        s = m.stft(xt, return_complex=True, **args)
        wr = m.tensor(rng.standard_normal(tuple(s.shape)))
        wi = m.tensor(np.random.default_rng(2).standard_normal(tuple(s.shape)))
        loss = (m.real(s) * wr).sum() + (m.imag(s) * wi).sum()
        loss.backward()
        res[m] = (s.detach().numpy(), xt.grad.numpy(), None if wt is None else wt.grad.numpy())
        rng = np.random.default_rng(1)
    (s, gx, gw), (ts, tgx, tgw) = res[ng], res[torch]
    assert s.dtype == ts.dtype and s.shape == ts.shape
    np.testing.assert_allclose(s, ts, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gx, tgx, rtol=1e-10, atol=1e-10)
    if win is not None:
        np.testing.assert_allclose(gw, tgw, rtol=1e-10, atol=1e-10)


def test_stft_complex_input_and_1d_and_float32():
    z = _sig((30,), 3, complex_=True)
    for x, tol in ((z, 1e-10), (z.astype(np.complex64), 1e-5),
                   (_sig((30,), 4).astype(np.float32), 1e-5)):
        a = ng.stft(ng.tensor(x), 8, hop_length=2, return_complex=True)
        b = torch.stft(torch.tensor(x), 8, hop_length=2, return_complex=True,
                       window=torch.ones(8, dtype=torch.float64 if x.dtype.itemsize == 16
                                         else torch.float32))
        assert a.dtype == b.numpy().dtype
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)


def test_stft_complex_input_gradient():
    z = _sig((24,), 5, complex_=True)
    out = {}
    for m in (ng, torch):
        x = m.tensor(z, requires_grad=True)
        s = m.stft(x, 8, hop_length=3, window=m.tensor(np.hanning(8)), return_complex=True)
        (m.real(s * s.conj()) * m.tensor(np.arange(s.numel()).reshape(s.shape) * 0.1)).sum() \
            .backward()
        out[m] = x.grad.numpy()
    np.testing.assert_allclose(out[ng], out[torch], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", [
    dict(n_fft=16), dict(n_fft=16, hop_length=4, win_length=12), dict(n_fft=16, onesided=False),
    dict(n_fft=16, normalized=True, length=35), dict(n_fft=16, length=50),
    dict(n_fft=12, hop_length=3, center=False), dict(n_fft=16, onesided=False,
                                                      return_complex=True),
])
def test_istft_values_and_gradients_match_torch(kw):
    x = _sig((2, 40), 6)
    win = np.hanning(kw.get("win_length", kw["n_fft"]) + 2)[1:-1]
    res = {}
    for m in (ng, torch):
        w = m.tensor(win, requires_grad=True)
        skw = {k: v for k, v in kw.items() if k not in ("length", "return_complex")}
        spec = m.stft(m.tensor(x), return_complex=True, **dict(skw, window=m.tensor(win)))
        spec = spec.detach()
        spec.requires_grad_(True)
        y = m.istft(spec, window=w, **kw)
        wy = m.tensor(np.random.default_rng(7).standard_normal(tuple(y.shape)))
        loss = ((m.real(y) if y.is_complex() else y) * wy).sum()
        loss.backward()
        res[m] = (y.detach().numpy(), spec.grad.numpy(), w.grad.numpy())
    for a, b in zip(res[ng], res[torch]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_stft_istft_round_trip_and_methods():
    x = ng.tensor(_sig((3, 50), 8))
    w = ng.tensor(np.hanning(20))
    s = x.stft(20, hop_length=5, window=w, return_complex=True)
    y = s.istft(20, hop_length=5, window=w, length=50)
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-12)


def test_return_complex_required_for_real_input_and_false_deprecated():
    x = _sig((20,))
    with pytest.raises(RuntimeError, match="return_complex"):
        torch.stft(torch.tensor(x), 8)
    with pytest.raises(ValueError, match="return_complex parameter be given"):
        ng.stft(ng.tensor(x), 8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = ng.stft(ng.tensor(x), 8, return_complex=False)
    assert any("deprecated" in str(w.message) for w in rec)
    t = torch.stft(torch.tensor(x), 8, return_complex=False, window=torch.ones(8).double())
    np.testing.assert_allclose(r.numpy(), t.numpy(), atol=1e-12)


@pytest.mark.parametrize(("call", "match"), [
    (lambda m, x: m.stft(x, 0, return_complex=True), "n_fft"),
    (lambda m, x: m.stft(x, 8, hop_length=0, return_complex=True), "hop_length"),
    (lambda m, x: m.stft(x, 8, win_length=9, return_complex=True), "win_length"),
    (lambda m, x: m.stft(x, 64, center=False, return_complex=True), "n_fft"),
    (lambda m, x: m.stft(x, 8, window=m.tensor(np.ones(5)), return_complex=True), "window"),
    (lambda m, x: m.stft(x.reshape(1, 1, 20), 8, return_complex=True), "1D or 2D"),
    (lambda m, x: m.istft(x, 8), "complex"),
    (lambda m, x: m.stft(x, 8, align_to_window=True, return_complex=True), "align_to_window"),
])
def test_bad_arguments_are_named(call, match):
    x = ng.tensor(_sig((20,)))
    with pytest.raises((ValueError, RuntimeError, ng.DTypeError), match=match):
        call(ng, x)


def test_istft_refuses_a_vanishing_window_envelope():
    s = ng.stft(ng.tensor(_sig((40,))), 16, hop_length=16, window=ng.tensor(np.hanning(16)),
                return_complex=True)
    with pytest.raises(RuntimeError, match="window overlap add min"):
        ng.istft(s, 16, hop_length=16, window=ng.tensor(np.hanning(16)))
    with pytest.raises(RuntimeError, match="window overlap add min"):
        torch.istft(torch.tensor(s.numpy()), 16, hop_length=16,
                    window=torch.tensor(np.hanning(16)))


def test_istft_onesided_size_checked():
    s = ng.tensor(_sig((5, 4), complex_=True))
    with pytest.raises(ValueError, match="n_fft / 2 \\+ 1"):
        ng.istft(s, 16)


# --- torch.fft's Hermitian n-d transforms (their own short section here) ---------------------
@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
@pytest.mark.parametrize(("name", "kw"), [
    ("hfft2", {}), ("hfft2", dict(s=(3, 7))), ("hfftn", {}), ("hfftn", dict(s=(4, 6), dim=(0, 2))),
    ("ihfft2", {}), ("ihfft2", dict(s=(2, 5), dim=(0, 2))), ("ihfftn", {}),
    ("ihfftn", dict(s=(5,))),
])
def test_hermitian_nd_ffts_match_torch(name, kw, norm):
    inverse = name.startswith("i")
    x = _sig((3, 4, 5), 9, complex_=not inverse)
    res = {}
    for m in (ng, torch):
        t = m.tensor(x, requires_grad=True)
        y = getattr(m.fft, name)(t, norm=norm, **kw)
        wy = m.tensor(np.random.default_rng(10).standard_normal(tuple(y.shape)))
        loss = ((m.real(y) + 0.5 * m.imag(y)) if y.is_complex() else y) * wy
        loss.sum().backward()
        res[m] = (y.detach().resolve_conj().numpy(), t.grad.numpy())
    for a, b in zip(res[ng], res[torch]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
