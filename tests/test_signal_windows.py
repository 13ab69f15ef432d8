"""ng.signal.windows against torch.signal.windows: values, dtypes, sym=, edge lengths, errors."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.signal import windows as W

torch = pytest.importorskip("torch")
TW = torch.signal.windows

NAMES = ["bartlett", "blackman", "cosine", "exponential", "gaussian", "hamming", "hann",
         "kaiser", "nuttall"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("M", [0, 1, 2, 5, 10, 33])
@pytest.mark.parametrize("sym", [True, False])
def test_windows_match_torch(name, M, sym):
    got = getattr(W, name)(M, sym=sym, dtype=ng.float64)
    ref = getattr(TW, name)(M, sym=sym, dtype=torch.float64)
    assert got.dtype == np.float64 and got.shape == tuple(ref.shape)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_default_dtype_float32(name):
    got, ref = getattr(W, name)(16), getattr(TW, name)(16)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [{"tau": 0.5}, {"tau": 3.0, "sym": False, "center": 2.0},
                                {"tau": 2.0, "sym": False}])
def test_exponential_parameters(kw):
    np.testing.assert_allclose(W.exponential(11, dtype=ng.float64, **kw).numpy(),
                               TW.exponential(11, dtype=torch.float64, **kw).numpy(),
                               rtol=1e-12)


@pytest.mark.parametrize("std", [0.5, 2.0, 7.0])
def test_gaussian_std(std):
    for sym in (True, False):
        np.testing.assert_allclose(W.gaussian(12, std=std, sym=sym, dtype=ng.float64).numpy(),
                                   TW.gaussian(12, std=std, sym=sym, dtype=torch.float64).numpy(),
                                   rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.9, 5.0, 14.0])
def test_kaiser_beta(beta):
    for sym in (True, False):
        np.testing.assert_allclose(W.kaiser(9, beta=beta, sym=sym, dtype=ng.float64).numpy(),
                                   TW.kaiser(9, beta=beta, sym=sym, dtype=torch.float64).numpy(),
                                   rtol=1e-12, atol=1e-15)


def test_general_cosine_and_hamming():
    a = [0.46, 0.23, 0.31]
    for sym in (True, False):
        np.testing.assert_allclose(W.general_cosine(10, a=a, sym=sym, dtype=ng.float64).numpy(),
                                   TW.general_cosine(10, a=a, sym=sym,
                                                     dtype=torch.float64).numpy(), rtol=1e-12)
        np.testing.assert_allclose(
            W.general_hamming(10, alpha=0.6, sym=sym, dtype=ng.float64).numpy(),
            TW.general_hamming(10, alpha=0.6, sym=sym, dtype=torch.float64).numpy(),
            rtol=1e-12)


def test_periodic_matches_top_level_windows():
    np.testing.assert_allclose(W.hann(8, sym=False).numpy(), ng.hann_window(8).numpy(),
                               atol=1e-7)
    np.testing.assert_allclose(W.blackman(8).numpy(),
                               ng.blackman_window(8, periodic=False).numpy(), atol=1e-7)


def test_requires_grad_leaf():
    w = W.hann(6, requires_grad=True)
    assert w.requires_grad and w.grad_fn is None
    (w * 2).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 * np.ones(6))


def test_errors():
    with pytest.raises(ValueError, match="window length M must be non-negative"):
        W.hann(-1)
    with pytest.raises(TypeError, match="window length M must be an int"):
        W.hann(2.5)
    with pytest.raises(ng.DTypeError, match="float32 or float64"):
        W.hann(4, dtype=ng.int64)
    with pytest.raises(ValueError, match="float32 or float64"):  # PyTorch raises ValueError
        W.hann(4, dtype=ng.int64)
    with pytest.raises(ValueError, match="tau must be positive"):
        W.exponential(4, tau=0)
    with pytest.raises(ValueError, match="center must be None"):
        W.exponential(4, center=1.0)
    with pytest.raises(ValueError, match="std must be positive"):
        W.gaussian(4, std=-1)
    with pytest.raises(ValueError, match="beta must be non-negative"):
        W.kaiser(4, beta=-1)
    with pytest.raises(ValueError, match="cannot be empty"):
        W.general_cosine(4, a=[])


def test_signal_does_not_shadow_stdlib():
    import signal

    import nodegrad.signal
    from nodegrad.data import worker
    assert hasattr(signal, "SIGINT") and nodegrad.signal.windows is W
    assert worker.signal is signal  # the package's own `import signal` is the stdlib's
