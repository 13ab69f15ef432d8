"""Datasets and the DataLoader: order, determinism, resume, prefetch, splits and errors."""

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.data import (
    ArrayDataset,
    DataLoader,
    Subset,
    TensorDataset,
    kfold_indices,
    random_split,
    train_val_split,
)
from nodegrad.data.augment import GaussianNoise


def _ds(n=103, d=3):
    x = np.arange(n * d, dtype=np.float64).reshape(n, d)
    return ArrayDataset(x, np.arange(n) % 5, classes=5)


def _ids(loader):
    """Sample ids (first input column / d) of each batch of one epoch."""
    return [(x.numpy()[:, 0] // 3).astype(int).tolist() for x, _ in loader]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_every_sample_once_per_epoch(prefetch):
    loader = DataLoader(_ds(), batch_size=10, shuffle=True, seed=1, prefetch=prefetch)
    assert len(loader) == 11
    for _ in range(2):
        batches = _ids(loader)
        assert len(batches) == 11 and [len(b) for b in batches][-1] == 3
        assert sorted(sum(batches, [])) == list(range(103))


def test_batches_are_float32_and_int64_tensors():
    x, y = next(iter(DataLoader(_ds(), batch_size=8)))
    assert isinstance(x, ng.Tensor) and x.dtype == ng.float32 and x.shape == (8, 3)
    assert y.dtype == ng.int64 and y.device == "cpu"
    np.testing.assert_array_equal(y.numpy(), np.arange(8) % 5)


def test_drop_last_and_len():
    ds = _ds()
    assert len(DataLoader(ds, batch_size=10, drop_last=True)) == 10
    batches = _ids(DataLoader(ds, batch_size=10, drop_last=True, shuffle=True, seed=0))
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert len(DataLoader(ds, batch_size=103)) == 1
    assert len(DataLoader(ds, batch_size=1000)) == 1
    assert len(DataLoader(ds, batch_size=1000, drop_last=True)) == 0


def test_unshuffled_order_is_the_dataset_order():
    assert sum(_ids(DataLoader(_ds(), batch_size=7)), []) == list(range(103))


def test_shuffle_is_deterministic_for_a_seed_and_differs_between_epochs():
    a, b = DataLoader(_ds(), 10, shuffle=True, seed=3), DataLoader(_ds(), 10, shuffle=True, seed=3)
    e0, e1 = _ids(a), _ids(a)
    assert e0 == _ids(b) and e1 == _ids(b)
    assert e0 != e1
    assert _ids(DataLoader(_ds(), 10, shuffle=True, seed=4)) != e0


def test_manual_seed_and_generator_make_shuffling_reproducible():
    ng.manual_seed(7)
    a = _ids(DataLoader(_ds(), 10, shuffle=True))
    ng.manual_seed(7)
    assert _ids(DataLoader(_ds(), 10, shuffle=True)) == a
    g1, g2 = ng.Generator(seed=5), ng.Generator(seed=5)
    assert _ids(DataLoader(_ds(), 10, shuffle=True, generator=g1)) == \
        _ids(DataLoader(_ds(), 10, shuffle=True, generator=g2))


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_state_dict_mid_epoch_resumes_the_same_remaining_batches(prefetch):
    aug = GaussianNoise(0.5)
    ref = DataLoader(_ds(), 10, shuffle=True, seed=11, transform=aug, prefetch=prefetch)
    _ids(ref)  # epoch 0
    full = [[t.numpy() for t in b] for b in ref]  # epoch 1
    loader = DataLoader(_ds(), 10, shuffle=True, seed=11, transform=aug, prefetch=prefetch)
    _ids(loader)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 4
    fresh = DataLoader(_ds(), 10, shuffle=True, seed=999, transform=aug, prefetch=prefetch)
    fresh.load_state_dict(state)
    rest = [[t.numpy() for t in b] for b in fresh]
    assert len(rest) == len(full) - 4
    for got, want in zip(rest, full[4:]):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)  # bit-identical, augmentation included
    assert fresh.state_dict()["epoch"] == 2 and fresh.state_dict()["batch"] == 0
    assert _ids(fresh) == _ids(ref)  # and the epochs after it match too


def test_state_after_a_finished_epoch_points_to_the_next():
    loader = DataLoader(_ds(), 50, shuffle=True, seed=0)
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batch"] == 0


def test_stopping_early_starts_a_fresh_epoch_next_time():
    loader = DataLoader(_ds(), 10, shuffle=True, seed=2)
    ref = DataLoader(_ds(), 10, shuffle=True, seed=2)
    for _ in iter(loader):
        break
    _ids(ref)
    assert _ids(loader) == _ids(ref)


def test_load_state_dict_rejects_a_different_configuration():
    state = DataLoader(_ds(), 10, shuffle=True, seed=0).state_dict()
    with pytest.raises(ValueError, match="order"):
        DataLoader(_ds(90), 10, shuffle=True, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="drop_last"):
        DataLoader(_ds(), 10, shuffle=True, seed=0, drop_last=True).load_state_dict(state)


def test_a_mid_epoch_state_resumes_with_another_batch_size():
    """The rest of the epoch's order, in batches of the new size: every sample once."""
    loader = DataLoader(_ds(), 10, shuffle=True, seed=4)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    other = DataLoader(_ds(), 12, shuffle=True, seed=99)  # the state's seed wins
    other.load_state_dict(loader.state_dict())
    ids = [i for x, _ in head for i in (x.numpy()[:, 0] // 3).astype(int)] + \
        [i for b in _ids(other) for i in b]
    ref = [i for b in _ids(DataLoader(_ds(), 10, shuffle=True, seed=4)) for i in b]
    assert ids == ref and len(other) == 3 + 7  # 73 samples left: 6 of 12 and one of 1


def test_prefetch_gives_the_same_batches_and_propagates_errors():
    aug = GaussianNoise(0.1)
    a = [b[0].numpy() for b in DataLoader(_ds(), 10, shuffle=True, seed=5, transform=aug)]
    b = [b[0].numpy() for b in DataLoader(_ds(), 10, shuffle=True, seed=5, transform=aug,
                                          prefetch=4)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)

    def boom(x, rng):
        raise RuntimeError("bad transform")

    with pytest.raises(RuntimeError, match="bad transform"):
        list(DataLoader(_ds(), 10, transform=boom, prefetch=2))


def test_transform_gets_a_seeded_rng_and_only_touches_inputs():
    x, y = next(iter(DataLoader(_ds(), 8, transform=GaussianNoise(1.0), seed=0)))
    assert not np.allclose(x.numpy(), _ds().arrays[0][:8])
    np.testing.assert_array_equal(y.numpy(), np.arange(8) % 5)


class _Squares:
    """A plain map-style dataset (no gather): sample i is (i, i*i)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return np.float64(i), i * i


def test_generic_dataset_and_collate_fn():
    batches = list(DataLoader(_Squares(), batch_size=6, shuffle=True, seed=0))
    xs = np.concatenate([b[0].numpy() for b in batches])
    assert sorted(xs.tolist()) == list(range(20)) and batches[0][1].dtype == ng.int64

    def collate(samples):
        return {"x": np.array([s[0] for s in samples]), "n": len(samples)}

    b = next(iter(DataLoader(_Squares(), batch_size=6, collate_fn=collate)))
    assert b["n"] == 6 and isinstance(b["x"], np.ndarray)  # as collate made it (PyTorch's)


def test_tensor_dataset_and_subset_gather():
    ds = TensorDataset(ng.arange(10), ng.ones(10, 2))
    assert len(ds) == 10 and ds[3][0] == 3
    sub = Subset(ds, [9, 1, 4])
    np.testing.assert_array_equal(sub.arrays[0], [9, 1, 4])
    (x, _), = list(DataLoader(sub, batch_size=3))
    np.testing.assert_array_equal(x.numpy(), [9, 1, 4])


def test_random_split_is_a_seeded_partition():
    parts = random_split(_ds(), [0.5, 0.3, 0.2], seed=0)
    assert [len(p) for p in parts] == [52, 31, 20]
    idx = np.concatenate([p.indices for p in parts])
    assert sorted(idx.tolist()) == list(range(103))
    again = random_split(_ds(), [52, 31, 20], seed=0)
    assert all(a.indices == b.indices for a, b in zip(parts, again))
    with pytest.raises(ValueError, match="sum"):
        random_split(_ds(), [50, 50])


def test_train_val_split_is_seeded_disjoint_and_stratified():
    ds = _ds(200)
    y = ds.arrays[1]
    train, val = train_val_split(ds, 0.2, seed=1, stratify=y)
    assert len(val) == 40 and len(train) == 160
    assert not set(train.indices) & set(val.indices)
    assert np.bincount(y[val.indices]).tolist() == [8] * 5
    t2, v2 = train_val_split(ds, 0.2, seed=1, stratify=y)
    assert (v2.indices == val.indices).all()
    _, v3 = train_val_split(ds, 0.2, seed=2)
    assert len(v3) == 40 and not (v3.indices == val.indices).all()


def test_kfold_indices_validate_every_sample_once():
    y = np.arange(103) % 4
    folds = kfold_indices(103, 5, seed=0, stratify=y)
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(103))
    assert {len(v) for _, v in folds} <= {20, 21}
    for tr, va in folds:
        assert len(tr) + len(va) == 103 and not set(tr) & set(va)
        counts = np.bincount(y[va], minlength=4)
        assert counts.max() - counts.min() <= 1
    again = kfold_indices(103, 5, seed=0, stratify=y)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))


def test_errors():
    assert list(DataLoader([], batch_size=4)) == []  # an empty loader, as PyTorch's
    with pytest.raises(ValueError, match="empty"):
        ArrayDataset(np.zeros((0, 3)), np.zeros(0, dtype=int))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            DataLoader(_ds(), batch_size=bad)
    with pytest.raises(ValueError, match="different lengths"):
        ArrayDataset(np.zeros((10, 3)), np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ArrayDataset(np.zeros((4, 2)), np.array([0, 1, 2, 3]), classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ArrayDataset(np.zeros((4, 2)), np.array([0, -1, 2, 2]), classes=3)
    with pytest.raises(ValueError, match="prefetch"):
        DataLoader(_ds(), 4, prefetch=-1)
    with pytest.raises(ValueError, match="k"):
        kfold_indices(10, 1)


@pytest.mark.parametrize("prefetch", [None, 0])
def test_cuda_batches_match_cpu_batches(prefetch, cuda):
    aug = GaussianNoise(0.1)
    gpu = DataLoader(_ds(), 10, shuffle=True, seed=3, transform=aug, device="cuda",
                     prefetch=prefetch)
    cpu = DataLoader(_ds(), 10, shuffle=True, seed=3, transform=aug)
    assert gpu.prefetch == (2 if prefetch is None else 0)
    for (xg, yg), (xc, yc) in zip(gpu, cpu):
        assert xg.device == "cuda:0" and xg.dtype == ng.float32 and yg.dtype == ng.int64
        np.testing.assert_array_equal(xg.numpy(), xc.numpy())
        np.testing.assert_array_equal(yg.numpy(), yc.numpy())


def test_prefetch_thread_stops_when_the_loop_is_left():
    import gc
    import threading
    import time

    before = set(threading.enumerate())
    loader = DataLoader(_ds(1000), 10, shuffle=True, seed=0, prefetch=3)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    gc.collect()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(threading.enumerate()) - before


def test_default_batch_size_is_pytorchs_one():
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    ours = list(ng.data.DataLoader(ng.data.TensorDataset(ng.tensor(x))))
    theirs = list(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x))))
    assert len(ours) == len(theirs) == 6
    assert [tuple(b[0].shape) for b in ours] == [tuple(b[0].shape) for b in theirs] == [(1, 2)] * 6
