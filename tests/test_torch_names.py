"""PyTorch's top-level names for nn.functional's functions, finfo/iinfo, and small Tensor
methods (floor_divide, remainder, diagflat, is_nonzero, is_same_size), against torch."""

import numpy as np
import pytest

import nodegrad as ng

torch = pytest.importorskip("torch")


def test_top_level_functions_are_nn_functional_with_torch_arguments():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 9)), rng.standard_normal((4, 3, 3))
    got = ng.conv1d(ng.tensor(x), ng.tensor(w), None, 2, 1)
    want = torch.conv1d(torch.tensor(x), torch.tensor(w), None, 2, 1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    got = ng.layer_norm(ng.tensor(x), (9,))
    np.testing.assert_allclose(got.numpy(), torch.layer_norm(torch.tensor(x), (9,)).numpy(),
                               rtol=1e-10, atol=1e-12)
    got = ng.max_pool1d(ng.tensor(x), 3, 2)
    np.testing.assert_array_equal(got.numpy(), torch.max_pool1d(torch.tensor(x), 3, 2).numpy())
    assert ng.conv2d is ng.nn.functional.conv2d
    assert ng.pixel_shuffle is ng.nn.functional.pixel_shuffle


def test_finfo_and_iinfo_as_torch():
    for dt, tdt in ((ng.float32, torch.float32), (ng.float64, torch.float64),
                    (ng.float16, torch.float16)):
        f, t = ng.finfo(dt), torch.finfo(tdt)
        for name in ("bits", "eps", "max", "min", "tiny", "smallest_normal", "resolution",
                     "dtype"):
            assert getattr(f, name) == getattr(t, name) and type(getattr(f, name)) is type(
                getattr(t, name)), name  # Python numbers: finfo(x.dtype).max * 2 is no overflow
        assert repr(f) == repr(t)
    assert ng.finfo().eps == torch.finfo().eps  # the default float dtype
    assert ng.iinfo(ng.int32).max == torch.iinfo(torch.int32).max
    with pytest.raises(TypeError, match="use iinfo"):
        ng.finfo(ng.int64)
    with pytest.raises(TypeError, match="use finfo"):
        ng.iinfo(ng.float32)


def test_small_methods_match_torch():
    a = np.array([[1.5, -2.0], [3.0, 4.25]])
    x, t = ng.tensor(a), torch.tensor(a)
    np.testing.assert_array_equal(x.floor_divide(1.5).numpy(), t.floor_divide(1.5).numpy())
    np.testing.assert_array_equal(x.remainder(1.5).numpy(), t.remainder(1.5).numpy())
    np.testing.assert_array_equal(ng.diagflat(x, -1).numpy(), torch.diagflat(t, -1).numpy())
    np.testing.assert_array_equal(x.diagflat(2).numpy(), t.diagflat(2).numpy())
    y, u = x.clone(), t.clone()
    y.remainder_(1.25)
    u.remainder_(1.25)
    np.testing.assert_array_equal(y.numpy(), u.numpy())
    assert ng.tensor([0.0]).is_nonzero() is False and x.is_same_size(x.T) is True
    with pytest.raises(ValueError, match="one element"):
        x.is_nonzero()


def test_var_and_std_methods_take_torch_defaults_with_dim_and_numpy_with_axis():
    a = np.arange(12.0).reshape(3, 4)
    x, t = ng.tensor(a), torch.tensor(a)
    for name in ("var", "std"):
        got = getattr(x, name)(dim=0).numpy()
        np.testing.assert_allclose(got, getattr(t, name)(dim=0).numpy(), rtol=1e-14)
        np.testing.assert_allclose(getattr(x, name)(dim=1, unbiased=False).numpy(),
                                   getattr(t, name)(dim=1, unbiased=False).numpy(), rtol=1e-14)
        np.testing.assert_allclose(getattr(x, name)(axis=0).numpy(), getattr(np, name)(a, axis=0),
                                   rtol=1e-14)
    with pytest.raises(TypeError, match="one of ddof"):
        x.var(dim=0, ddof=1, correction=1)
