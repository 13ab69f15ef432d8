"""Augmentations keep shape and dtype, change the data, are seeded and vectorised per sample."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.data import DataLoader, TensorDataset
from nodegrad.data import augment as A

SIGNALS = [A.RandomShift1d(5), A.RandomCrop1d(4), A.RandomFlip1d(), A.RandomScale1d(),
           A.RandomShear1d(0.5), A.GaussianNoise(0.1)]
IMAGES = [A.RandomTranslate2d(2.0), A.RandomCrop2d(2), A.RandomFlip2d(), A.RandomRotate2d(20),
          A.RandomShear2d(15), A.RandomScale2d((0.8, 1.2)),
          A.RandomAffine2d(10, 1.0, (0.9, 1.1), 5, mode="edge"), A.GaussianNoise(0.1),
          A.Compose([A.RandomCrop2d(1), A.RandomRotate2d(10), A.GaussianNoise(0.05)])]


def _signals(shape=(16, 40)):
    t = np.linspace(0, 3 * np.pi, shape[-1])
    return (np.sin(t * np.arange(1, shape[0] + 1)[:, None]).reshape(shape[0], *([1] * (len(
        shape) - 2)), shape[-1]) * np.ones(shape)).astype(np.float32)


def _images(shape=(16, 1, 8, 8)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def _name(a):
    return type(a).__name__


@pytest.mark.parametrize("aug", SIGNALS, ids=_name)
@pytest.mark.parametrize("shape", [(16, 40), (16, 2, 40)])
def test_signal_augmentations(aug, shape):
    x = _signals(shape)
    y = aug(x, rng=0)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.array_equal(y, x)
    np.testing.assert_array_equal(aug(x, rng=0), y)  # seeded
    assert not np.array_equal(aug(x, rng=1), y)
    assert aug(x.astype(np.float64), rng=0).dtype == np.float64


@pytest.mark.parametrize("aug", IMAGES, ids=_name)
@pytest.mark.parametrize("shape", [(16, 8, 8), (16, 3, 8, 8)])
def test_image_augmentations(aug, shape):
    x = _images(shape)
    y = aug(x, rng=0)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not np.array_equal(y, x)
    np.testing.assert_array_equal(aug(x, rng=0), y)
    assert not np.array_equal(aug(x, rng=1), y)
    u8 = (x * 255).astype(np.uint8)
    assert aug(u8, rng=0).dtype == np.uint8


@pytest.mark.parametrize("aug", [a for a in IMAGES if not isinstance(a, A.GaussianNoise)],
                         ids=_name)
def test_each_sample_draws_its_own_parameters(aug):
    x = np.repeat(_images((1, 1, 8, 8)), 32, axis=0)
    y = aug(x, rng=3).reshape(32, -1)
    assert len({row.tobytes() for row in y}) > 1


def test_exact_geometry():
    x = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    np.testing.assert_allclose(A.RandomRotate2d((90, 90))(x, 0), np.rot90(x, axes=(1, 2)),
                               atol=1e-5)
    same = A.RandomAffine2d(degrees=0, scale=(1, 1))(x, 0)
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(A.RandomCrop2d(0)(x, 0), x)
    s = np.arange(20, dtype=np.float32).reshape(2, 10)
    rolled = A.RandomShift1d(3)(s, 0)
    for row, orig in zip(rolled, s):
        assert any(np.array_equal(row, np.roll(orig, k)) for k in range(-3, 4))
    flipped = A.RandomFlip2d(horizontal=1.0)(x, 0)
    np.testing.assert_array_equal(flipped, x[..., ::-1])
    crop = A.RandomCrop1d(2)(np.ones((50, 10), np.float32), 0)
    assert set(np.unique(crop)) == {0.0, 1.0} and (crop.sum(1) >= 8).all()


def test_probability_zero_is_identity():
    x = _images()
    for aug in (A.RandomRotate2d(30, p=0.0), A.RandomCrop2d(2, p=0.0), A.GaussianNoise(1, p=0)):
        np.testing.assert_array_equal(aug(x, rng=0), x)


def test_default_rng_follows_manual_seed():
    x = _images()
    ng.manual_seed(4)
    a = A.RandomRotate2d(30)(x)
    ng.manual_seed(4)
    np.testing.assert_array_equal(A.RandomRotate2d(30)(x), a)
    np.testing.assert_array_equal(A.RandomRotate2d(30)(x, rng=ng.Generator(seed=1)),
                                  A.RandomRotate2d(30)(x, rng=ng.Generator(seed=1)))


def test_usable_as_a_loader_transform():
    ds = TensorDataset(_images((20, 1, 8, 8)), np.arange(20) % 10)
    aug = A.Compose([A.RandomCrop2d(1), A.RandomRotate2d(10)])
    loader = DataLoader(ds, batch_size=8, shuffle=True, seed=0, transform=aug)
    (x, _), again = next(iter(loader)), next(iter(DataLoader(ds, 8, True, seed=0, transform=aug)))
    assert x.shape == (8, 1, 8, 8) and x.dtype == ng.float32
    np.testing.assert_array_equal(x.numpy(), again[0].numpy())


def test_bad_layouts_and_modes():
    with pytest.raises(ValueError, match="expected a batch"):
        A.RandomRotate2d(10)(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="expected a batch"):
        A.RandomShift1d(1)(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="mode"):
        A.RandomCrop2d(1, mode="mirror")


@pytest.mark.parametrize("mode,scipy_mode", [("zeros", "grid-constant"), ("edge", "nearest"),
                                             ("wrap", "grid-wrap")])
def test_interpolation_matches_scipy_map_coordinates(mode, scipy_mode):
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    x = rng.random((3, 2, 5, 7))
    sy, sx = rng.uniform(-3, 8, (3, 5, 7)), rng.uniform(-3, 10, (3, 5, 7))
    ref = [[map_coordinates(x[n, c], [sy[n], sx[n]], order=1, mode=scipy_mode) for c in range(2)]
           for n in range(3)]
    np.testing.assert_allclose(A._sample_2d(x, sy, sx, mode), ref, atol=1e-12)
    s, pos = x[:, :, 0], rng.uniform(-3, 9, (3, 7))
    ref = [[map_coordinates(s[n, c], [pos[n]], order=1, mode=scipy_mode) for c in range(2)]
           for n in range(3)]
    np.testing.assert_allclose(A._sample_1d(s, pos, mode), ref, atol=1e-12)
