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


def test_top_level_losses_default_to_torchs_unreduced_losses():
    """Called without a reduction, torch's top-level loss forms return the unreduced losses
    (their bindings do, whatever the schemas' ``reduction=Mean`` says); so do nodegrad's, and
    an explicit int reduction still reduces."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)), rng.random((3, 4))
    y, s = np.sign(rng.standard_normal(3)), np.sign(b - 0.5)
    lp = rng.standard_normal((6, 2, 4))
    calls = [lambda L, T: L.cosine_embedding_loss(T(a), T(b), T(y)),
             lambda L, T: L.margin_ranking_loss(T(a[:, 0]), T(b[:, 0]), T(y)),
             lambda L, T: L.triplet_margin_loss(T(a), T(b), T(a * 2)),
             lambda L, T: L.kl_div(T(a), T(b)),
             lambda L, T: L.binary_cross_entropy_with_logits(T(a), T(b)),
             lambda L, T: L.hinge_embedding_loss(T(a), T(s)),
             lambda L, T: L.ctc_loss(T(lp).log_softmax(2), T(np.array([[1, 2], [1, 1]])),
                                     [6, 6], [2, 2]),
             lambda L, T: L.kl_div(T(a), T(b), 1),
             lambda L, T: L.hinge_embedding_loss(T(a), T(s), 1.0, 2)]
    for call in calls:
        want, got = call(torch, torch.tensor), call(ng, ng.tensor)
        assert tuple(got.shape) == tuple(want.shape)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10)
