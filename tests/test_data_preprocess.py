"""Preprocessing: training statistics only, exact inverses, JSON round trips, whitening."""

import json

import numpy as np
import pytest

from nodegrad.data import MinMaxScale, OneHot, PCAWhiten, Preprocessor, Standardize, ZCAWhiten


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((6, 6)) + 2 * np.eye(6)  # correlated features
    train = (rng.standard_normal((500, 6)) @ mix * [1, 2, 3, 4, 5, 6] + 3).astype(np.float32)
    test = (rng.standard_normal((200, 6)) @ mix + 10).astype(np.float32)
    return train, test


ALL = [Standardize(), MinMaxScale((-1.0, 1.0)), PCAWhiten(), ZCAWhiten(eps=1e-3)]


@pytest.mark.parametrize("pre", ALL, ids=lambda p: type(p).__name__)
def test_inverse_json_dtype_and_no_leakage(pre, data):
    train, test = data
    z = pre.fit_transform(train)
    assert z.dtype == np.float32 and z.shape == train.shape
    np.testing.assert_allclose(pre.inverse_transform(z), train, rtol=1e-4, atol=1e-3)
    text = pre.to_json()
    json.loads(text)
    back = Preprocessor.from_json(text)
    assert type(back) is type(pre)
    np.testing.assert_array_equal(back.transform(test), pre.transform(test))
    before = pre.to_json()
    zt = pre.transform(test)  # transforming other data never refits
    assert pre.to_json() == before
    refit = Preprocessor.from_json(text).fit(test).transform(test)
    assert not np.allclose(zt, refit, atol=0.05)  # statistics came from train only


def test_standardize_uses_training_statistics(data):
    train, test = data
    s = Standardize().fit(train)
    z = s.transform(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(s.mean_.ravel(), train.astype(np.float64).mean(0), rtol=1e-6)
    zt = s.transform(test)
    np.testing.assert_allclose(zt, (test - train.mean(0)) / train.std(0), rtol=1e-4, atol=1e-4)


def test_standardize_per_channel_and_constant_features():
    x = np.random.default_rng(1).standard_normal((50, 3, 4, 4)).astype(np.float32)
    x[:, 1] = 7.0
    z = Standardize(axis=(0, 2, 3)).fit_transform(x)
    assert z.shape == x.shape
    np.testing.assert_allclose(z[:, 0].std(), 1, atol=1e-5)
    np.testing.assert_allclose(z[:, 1], 0, atol=1e-6)


def test_minmax_maps_training_range(data):
    train, _ = data
    z = MinMaxScale((-1, 1)).fit_transform(train)
    np.testing.assert_allclose(z.min(0), -1, atol=1e-6)
    np.testing.assert_allclose(z.max(0), 1, atol=1e-6)


@pytest.mark.parametrize("kind", [PCAWhiten, ZCAWhiten])
def test_whitening_gives_identity_covariance_on_train(kind, data):
    train, _ = data
    z = kind(eps=1e-9).fit_transform(train.astype(np.float64))
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-6)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-8)


def test_zca_stays_close_to_input_and_keeps_image_shape():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 1, 3, 3)) + rng.standard_normal((1, 1, 3, 3))
    z = ZCAWhiten(eps=1e-9).fit_transform(x)
    assert z.shape == x.shape
    pca = PCAWhiten(eps=1e-9).fit_transform(x)
    xc = (x - x.mean(0)).reshape(400, 9)
    # ZCA is the whitening closest to the centred input; PCA's rotation is further away
    assert np.linalg.norm(z.reshape(400, 9) - xc) < np.linalg.norm(pca - xc)


def test_pca_components_orders_variance_and_reduces(data):
    train, _ = data
    p = PCAWhiten(n_components=2).fit(train)
    assert p.transform(train).shape == (500, 2)
    assert np.all(np.diff(p.variances_) <= 0)
    q = Preprocessor.from_json(p.to_json())
    np.testing.assert_array_equal(q.inverse_transform(q.transform(train)),
                                  p.inverse_transform(p.transform(train)))


def test_one_hot_round_trip_and_errors():
    y = np.array([0, 2, 1, 2])
    oh = OneHot().fit(y)
    z = oh.transform(y)
    assert z.dtype == np.float32 and z.shape == (4, 3)
    np.testing.assert_array_equal(oh.inverse_transform(z), y)
    back = Preprocessor.from_json(oh.to_json())
    np.testing.assert_array_equal(back.transform(y), z)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        oh.transform(np.array([3]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        OneHot(classes=2).fit(y)


def test_unfitted_and_shape_errors(data):
    train, _ = data
    with pytest.raises(RuntimeError, match="fit"):
        Standardize().transform(train)
    with pytest.raises(RuntimeError, match="fit"):
        PCAWhiten().to_json()
    with pytest.raises(ValueError, match="shape"):
        Standardize().fit(train).transform(train[:, :4])
    with pytest.raises(ValueError, match="6 values"):
        ZCAWhiten().fit(train).transform(train[:, :4])
    with pytest.raises(ValueError, match="not a"):
        Standardize.from_json(OneHot().fit([0, 1]).to_json())


@pytest.mark.parametrize("kind", ["Standardize", "MinMaxScale", "PCAWhiten", "ZCAWhiten"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_refuses_non_finite_training_data(kind, bad):
    """A NaN or Inf in the training data would make a fitted statistic, and then every
    transformed value of its feature, NaN without a word: fit names the first one instead."""
    x = np.random.default_rng(0).normal(size=(12, 4))
    x[3, 2] = bad
    with pytest.raises(ValueError, match=rf"{kind}\.fit: .*1 NaN or Inf .*\(3, 2\)"):
        {c.__name__: c for c in (Standardize, MinMaxScale, PCAWhiten, ZCAWhiten)}[kind]().fit(x)
