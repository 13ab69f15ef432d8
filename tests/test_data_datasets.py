"""Built-in datasets: shapes, dtypes, class balance, seeds, metadata, the offline MNIST-1D cache."""

import importlib

import numpy as np
import pytest

from nodegrad.data import DataLoader
from nodegrad.data import datasets as D


def _check_meta(d, classes, shape):
    assert d.info.classes == classes and d.info.input_shape == shape
    assert d.info.description and d.info.source and d.info.licence
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.x_train.shape[1:] == shape and d.x_test.shape[1:] == shape
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test)
    if classes is not None:
        assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
        assert d.y_train.min() >= 0 and d.y_train.max() < classes


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A temporary cache directory; any attempt to reach the network fails the test."""
    monkeypatch.setenv("NODEGRAD_DATA", str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    requests = pytest.importorskip("requests")
    monkeypatch.setattr(requests, "get", no_network)
    return tmp_path


def test_mnist1d_generates_offline_into_the_cache(offline_cache, monkeypatch):
    pytest.importorskip("mnist1d")
    state = np.random.get_state()[1].copy()
    d = D.mnist1d()
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched
    _check_meta(d, 10, (40,))
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    counts = np.bincount(d.y_train, minlength=10)
    assert counts.min() > 350 and counts.max() < 450
    files = list(offline_cache.glob("mnist1d-*.npz"))
    assert len(files) == 1 and not list(offline_cache.glob("*.tmp"))
    assert "Apache" in d.info.licence

    # the second call reads the cache (the generator must not run again)
    m = importlib.import_module("nodegrad.data.datasets.mnist1d")  # the module, not the function
    monkeypatch.setattr(m, "_generate", lambda: pytest.fail("regenerated"))
    again = D.mnist1d()
    np.testing.assert_array_equal(again.x_train, d.x_train)
    sh = D.mnist1d(shuffled=True, channel_axis=True)
    perm = sh.info.extra["permutation"]
    assert sorted(perm.tolist()) == list(range(40)) and (perm != np.arange(40)).any()
    assert sh.x_train.shape == (4000, 1, 40)
    np.testing.assert_array_equal(sh.x_train[:, 0], d.x_train[:, perm])
    np.testing.assert_array_equal(sh.y_test, d.y_test)


@pytest.mark.slow
def test_mnist1d_matches_the_package_generator(offline_cache):
    pytest.importorskip("mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.shuffle_seq = True
    ref = make_dataset(args)
    sh = D.mnist1d(shuffled=True)
    np.testing.assert_allclose(sh.x_train, ref["x"].astype(np.float32))
    np.testing.assert_array_equal(sh.y_train, ref["y"])


def test_mnist1d_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("NODEGRAD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert D.cache_dir() == tmp_path / "nodegrad"
    monkeypatch.setenv("NODEGRAD_DATA", str(tmp_path / "data"))
    assert D.cache_dir() == tmp_path / "data" and (tmp_path / "data").is_dir()
    assert D.cache_dir(tmp_path / "x") == tmp_path / "x"


def test_digits_images_and_vectors():
    pytest.importorskip("sklearn")
    d = D.digits()
    _check_meta(d, 10, (1, 8, 8))
    assert len(d.x_train) + len(d.x_test) == 1797 and len(d.x_test) == 359
    assert d.x_train.min() == 0 and d.x_train.max() == 1
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.max() - counts.min() <= 2  # stratified
    v = D.digits(flat=True)
    _check_meta(v, 10, (64,))
    np.testing.assert_array_equal(v.x_train, d.x_train.reshape(-1, 64))
    np.testing.assert_array_equal(D.digits().y_test, d.y_test)  # fixed split
    assert not np.array_equal(D.digits(seed=1).y_test, d.y_test)
    assert "CC BY 4.0" in d.info.licence


@pytest.mark.parametrize("make,classes,shape", [
    (lambda **k: D.spirals(n=300, classes=3, **k), 3, (2,)),
    (lambda **k: D.two_moons(n=300, **k), 2, (2,)),
    (lambda **k: D.blobs(n=300, classes=4, dim=5, **k), 4, (5,)),
])
def test_synthetic_classification(make, classes, shape):
    d = make(seed=0)
    _check_meta(d, classes, shape)
    assert len(d.x_train) == 300
    counts = np.bincount(d.y_train, minlength=classes)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(make(seed=0).x_train, d.x_train)
    assert not np.array_equal(make(seed=1).x_train, d.x_train)
    assert not np.array_equal(d.x_train[:50], d.x_test[:50])
    assert len(list(DataLoader(d.train, batch_size=64))) == 5


def test_noise_parameter_controls_spread():
    clean, noisy = D.two_moons(n=200, noise=0.0), D.two_moons(n=200, noise=0.3)
    r = np.linalg.norm(clean.x_train[clean.y_train == 0], axis=1)
    np.testing.assert_allclose(r, 1, atol=1e-5)  # the outer moon lies on the unit circle
    r = np.linalg.norm(noisy.x_train[noisy.y_train == 0], axis=1)
    assert r.std() > 0.1


def test_regression1d():
    d = D.regression1d(n=256, noise=0.1, seed=0)
    _check_meta(d, None, (1,))
    assert d.y_train.shape == (256, 1) and d.y_train.dtype == np.float32
    f = d.info.extra["f"]
    resid = d.y_test - f(d.x_test.astype(np.float64))
    assert 0.08 < resid.std() < 0.12
    for name in D.synthetic.FUNCTIONS:
        assert D.regression1d(n=10, fn=name).x_train.shape == (10, 1)
    with pytest.raises(ValueError, match="noise"):
        D.regression1d(noise=-1)


def test_splits_unpack_and_wrap_datasets():
    d = D.blobs(n=30, n_test=10)
    x, y, xt, yt = d
    assert x.shape == (30, 2) and len(d.test) == 10 and d.train.classes == 3
    assert "blobs" in repr(d)


def test_mnist1d_pinned_arguments_are_the_package_defaults():
    pytest.importorskip("mnist1d")
    from mnist1d.data import get_dataset_args

    defaults = get_dataset_args(as_dict=True)
    m = importlib.import_module("nodegrad.data.datasets.mnist1d")
    assert {k: defaults[k] for k in m.DEFAULT_ARGS} == m.DEFAULT_ARGS
