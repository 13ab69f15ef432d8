"""Data pipeline against ``torch.utils.data``: a dataset that grows between epochs, samplers
without ``__len__``, preprocessing of constant or empty data, parameter and input checks of
augmentations and synthetic datasets, and the errors of worker processes.

Worker processes import this module to unpickle its datasets and functions, so it imports only
what they have already loaded (NumPy, nodegrad); pytest and torch are imported inside the tests.
Every loader with workers passes ``timeout=`` and every test runs under an alarm.
"""

import os
import signal
import threading

import numpy as np

import nodegrad as ng
from nodegrad.data import (
    DataLoader,
    MinMaxScale,
    PCAWhiten,
    Sampler,
    Standardize,
    Subset,
    TensorDataset,
    ZCAWhiten,
    augment,
    datasets,
    default_collate,
)

LIMIT = 30  # seconds any one test may take before its alarm fails it
WAIT = 15  # seconds a loader waits for a batch from its workers


def setup_function(function):
    if hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread():
        def expired(signum, frame):
            raise TimeoutError(f"{function.__name__} ran past {LIMIT} s")

        signal.signal(signal.SIGALRM, expired)
        signal.alarm(LIMIT)


def teardown_function(function):
    if hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread():
        signal.alarm(0)


# --- what the workers unpickle (module level) -------------------------------------------------
class _Boom:
    """Eight samples; sample 5 raises."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise KeyError("no sample 5")
        return np.float32(i)


class _Slow:
    """Eight samples, each taking a moment: the prefetch thread waits on the workers."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import time

        time.sleep(0.1)
        return np.float32(i)


def _exit_at_start(worker_id):
    os._exit(1)


class _Growing:
    """A list-backed dataset that can grow between epochs (a replay buffer, say)."""

    def __init__(self, n):
        self.data = list(range(n))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def _flat(loader):
    return sorted(v for b in loader for v in b.numpy().reshape(-1).tolist())


# --- silent wrong answers ---------------------------------------------------------------------
def test_loader_reads_a_dataset_that_grew_between_epochs():
    import torch.utils.data as td

    for shuffle in (False, True):
        mine, ref = _Growing(4), _Growing(4)
        loader = DataLoader(mine, batch_size=3, shuffle=shuffle, seed=0)
        torch_loader = td.DataLoader(ref, batch_size=3, shuffle=shuffle)
        assert _flat(loader) == _flat(torch_loader) == [0, 1, 2, 3]
        mine.data += [10, 11, 12]
        ref.data += [10, 11, 12]
        assert len(loader) == len(torch_loader) == 3
        assert _flat(loader) == _flat(torch_loader) == [0, 1, 2, 3, 10, 11, 12]


def test_standardize_keeps_a_constant_feature_far_from_zero_at_zero():
    # the mean of 1e10 + 0.3 repeated is off by rounding, so the std was ~2e-6 and the
    # constant feature came out as +-1
    for n in (7, 1000, 1001):
        x = np.full((n, 2), 1e10 + 0.3)
        x[:, 1] = np.linspace(0, 1, n)
        z = Standardize().fit_transform(x)
        assert np.abs(z[:, 0]).max() == 0
        ref = (x[:, 1] - x[:, 1].mean()) / x[:, 1].std()
        np.testing.assert_allclose(z[:, 1], ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Standardize().fit(x).inverse_transform(z), x, atol=1e-12)


def test_subset_refuses_indices_that_are_not_integers():
    import pytest

    ds = TensorDataset(np.arange(5.0))
    with pytest.raises(TypeError, match="Subset: indices must be integers"):
        Subset(ds, [0.0, 1.5])  # was silently truncated to [0, 1]
    assert Subset(ds, ng.tensor([4, 0])).indices.tolist() == [4, 0]
    assert Subset(ds, (i for i in (1, 2))).indices == [1, 2]  # an iterator read once
    assert len(Subset(ds, [])) == 0


def test_synthetic_datasets_refuse_classes_that_give_nan_or_bad_labels():
    import pytest

    with pytest.raises(ValueError, match="spirals: classes must be an int >= 1, got 0"):
        datasets.spirals(classes=0)  # was 1200 NaN inputs
    with pytest.raises(ValueError, match="spirals: classes"):
        datasets.spirals(classes=-2)  # was negative labels
    with pytest.raises(ValueError, match="blobs: classes"):
        datasets.blobs(classes=0)
    with pytest.raises(ValueError, match="blobs: dim"):
        datasets.blobs(dim=0)
    with pytest.raises(ValueError, match="regression1d: fn must be one of"):
        datasets.regression1d(fn="nope")
    with pytest.raises(ValueError, match="regression1d: need low < high"):
        datasets.regression1d(low=1.0, high=0.0)


# --- crashes and unclear errors ---------------------------------------------------------------
class _NoLenSampler(Sampler):
    def __iter__(self):
        return iter([3, 1, 2])


class _NoLenBatchSampler(Sampler):
    def __iter__(self):
        return iter([[0, 1], [4]])


def test_samplers_without_len_are_iterated_as_in_torch():
    import pytest
    import torch.utils.data as td

    data = list(range(5))
    loader = DataLoader(data, batch_size=2, sampler=_NoLenSampler())
    ref = td.DataLoader(data, batch_size=2, sampler=_NoLenSampler())
    want = [b.tolist() for b in ref]
    assert want == [[3, 1], [2]]
    assert [b.tolist() for b in loader] == want
    assert [b.tolist() for b in loader] == want  # the next epoch
    with pytest.raises(TypeError):
        len(loader)  # as torch: the length is unknown
    batches = DataLoader(data, batch_sampler=_NoLenBatchSampler())
    assert [b.tolist() for b in batches] == [b.tolist() for b in td.DataLoader(
        data, batch_sampler=_NoLenBatchSampler())] == [[0, 1], [4]]
    assert batches.state_dict()["num_samples"] is None


def test_preprocessors_refuse_empty_training_data():
    import pytest

    for prep in (Standardize(), MinMaxScale()):
        with pytest.raises(ValueError, match=r"fit: the training data is empty \(shape \(0, 3\)"):
            prep.fit(np.zeros((0, 3)))  # was NaN statistics and a warning


def test_whitening_refuses_dividing_by_zero_and_bad_n_components():
    import pytest

    const = np.ones((5, 3))
    for kind in (PCAWhiten, ZCAWhiten):
        with pytest.raises(ValueError, match="eps=0 and the training data has 3 direction"):
            kind(eps=0).fit(const)  # was NaN output
        assert np.isfinite(kind().fit_transform(const)).all()
    x = np.random.default_rng(0).standard_normal((20, 4))
    for k in (0, 5, -1, 2.0):
        with pytest.raises(ValueError, match=r"n_components must be an int in \[1, 4\]"):
            PCAWhiten(n_components=k).fit(x)  # 0 meant all, 5 gave 4
    assert PCAWhiten(n_components=2).fit_transform(x).shape == (20, 2)


def test_augmentations_refuse_bad_parameters_clearly():
    import pytest

    A = augment
    cases = [
        (lambda: A.RandomScale1d((0.0, 0.0)), "RandomScale1d: scale must be a range"),
        (lambda: A.RandomScale2d((0.0, 1.0)), "RandomScale2d: scale must be a range"),
        (lambda: A.RandomAffine2d(scale=(1.2, 0.8)), "RandomAffine2d: scale must be a range"),
        (lambda: A.RandomCrop2d(-1), "RandomCrop2d: padding must be an int >= 0"),
        (lambda: A.RandomCrop1d(-2), "RandomCrop1d: padding must be an int >= 0"),
        (lambda: A.RandomShift1d(1.5), "RandomShift1d: max_shift must be an int >= 0"),
        (lambda: A.GaussianNoise(-1.0), "GaussianNoise: std must be >= 0"),
        (lambda: A.RandomFlip1d(p=2), r"RandomFlip1d: p must be a probability in \[0, 1\]"),
        (lambda: A.RandomFlip2d(horizontal=-0.1), "RandomFlip2d: horizontal must be"),
        (lambda: A.RandomRotate2d((30, -30)), "RandomRotate2d: degrees range must have lo"),
        (lambda: A.RandomRotate2d(-5), "RandomRotate2d: degrees must be >= 0"),
        (lambda: A.RandomTranslate2d(-1.0), "RandomTranslate2d: translate must be >= 0"),
        (lambda: A.RandomShear1d(-0.5), "RandomShear1d: max_slope must be >= 0"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()  # a zero scale was an IndexError of index -9223372036854775808
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    assert A.RandomScale1d((1.0, 1.0))(x, rng=0).tolist() == x.tolist()
    assert A.RandomCrop2d(0)(x.reshape(2, 3, 4), rng=0).tolist() == x.reshape(2, 3, 4).tolist()


def test_samples_of_different_shapes_name_the_shapes():
    import pytest

    class Ragged:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.zeros(i + 1), i

    with pytest.raises(ValueError, match=r"batching samples: each sample must have the same "
                                         r"shape .* got \(1,\) at entry 0 and \(2,\) at entry 1"):
        list(DataLoader(Ragged(), batch_size=2))
    with pytest.raises(ValueError, match=r"default_collate: .* got \(2,\) at entry 0 and \(3,\)"):
        default_collate([np.ones(2), np.ones(3)])


def test_worker_error_names_the_worker_the_batch_and_its_indices():
    import pytest

    loader = DataLoader(_Boom(), batch_size=2, num_workers=2, timeout=WAIT)
    with pytest.raises(KeyError, match=r"worker process 0 while making batch 2 of epoch 0 "
                                       r"\(dataset indices \[4, 5\]\)"):
        list(loader)
    loader = DataLoader(_Boom(), batch_size=None, num_workers=2, timeout=WAIT)
    with pytest.raises(KeyError, match=r"worker process 1 while making batch 5 .*indices 5\)"):
        list(loader)


def test_worker_that_exits_at_start_points_to_the_main_guard():
    import pytest

    from nodegrad.data.worker import WorkerError

    loader = DataLoader(_Boom(), batch_size=2, num_workers=1, timeout=WAIT,
                        worker_init_fn=_exit_at_start, multiprocessing_context="forkserver")
    with pytest.raises(WorkerError, match=r"exit code 1 .*defined at its module level .*"
                                          r"`if __name__ == \"__main__\":`"):
        list(loader)


def test_random_split_checks_fractions_and_generators_as_torch():
    import pytest
    import torch
    import torch.utils.data as td

    from nodegrad.data import random_split

    ds = TensorDataset(np.arange(10.0))
    with pytest.raises(ValueError, match="fraction at index 0 is not between 0 and 1"):
        random_split(ds, [-0.5, 1.5])
    with pytest.raises(ValueError, match="Fraction at index 0 is not between 0 and 1"):
        td.random_split(range(10), [-0.5, 1.5])
    with pytest.raises(TypeError, match="an ng.Generator or None, got torch._C.Generator"):
        random_split(ds, [5, 5], generator=torch.Generator())  # was a SeedSequence error
    with pytest.raises(ValueError, match="not a valid seed"):
        random_split(ds, [5, 5], seed=-1)
    parts = random_split(ds, [0.3, 0.7], generator=ng.Generator("cpu", 0))
    assert [len(p) for p in parts] == [3, 7]


def test_familiar_members_tensors_and_generator():
    g = ng.Generator("cpu", 0)
    ds = TensorDataset(ng.arange(4), ng.ones(4, 2))
    x, w = ds.tensors
    assert isinstance(x, ng.Tensor) and x.tolist() == [0, 1, 2, 3] and w.shape == (4, 2)
    assert DataLoader(ds, shuffle=True, generator=g).generator is g
    assert DataLoader(ds).generator is None


def test_affine_augmentations_of_float64_images_match_scipy_to_float64_precision():
    import pytest

    ndimage = pytest.importorskip("scipy.ndimage")
    img = np.random.default_rng(0).standard_normal((1, 1, 9, 11))
    for deg, mode, ref_mode in ((30, "zeros", "grid-constant"), (-37, "wrap", "grid-wrap")):
        out = augment.RandomRotate2d((deg, deg), mode=mode)(img, rng=0)
        ref = ndimage.rotate(img[0, 0], deg, reshape=False, order=1, mode=ref_mode)
        assert out.dtype == np.float64
        np.testing.assert_allclose(out[0, 0], ref, atol=1e-12)  # was 1e-6 (float32 positions)
    out32 = augment.RandomRotate2d((30, 30))(img.astype(np.float32), rng=0)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32[0, 0], ndimage.rotate(img[0, 0], 30, reshape=False, order=1,
                                                           mode="grid-constant"), atol=1e-5)


def test_next_epoch_after_leaving_a_prefetching_epoch_early_gets_every_batch():
    import itertools

    # the prefetch thread of the epoch left early kept waiting on the persistent workers'
    # pipes and took the next epoch's first batches: that epoch then hung (or timed out)
    loader = DataLoader(_Slow(), batch_size=2, num_workers=2, persistent_workers=True,
                        prefetch=2, timeout=WAIT)
    assert [b.tolist() for b in itertools.islice(loader, 1)] == [[0.0, 1.0]]
    for _ in range(2):
        assert [b.tolist() for b in loader] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


def test_torch_submodule_paths_of_utils_data_import():
    import importlib

    import torch.utils.data as td

    for sub in ("dataloader", "dataset", "sampler", "distributed"):
        mine = importlib.import_module(f"nodegrad.utils.data.{sub}")
        theirs = importlib.import_module(f"torch.utils.data.{sub}")
        for name in mine.__all__:
            assert hasattr(theirs, name), (sub, name)
            assert getattr(mine, name) is getattr(ng.data, name)
    from nodegrad.utils.data.dataloader import DataLoader as Loader, default_collate as dc

    assert Loader is DataLoader and dc is default_collate and td.dataloader.default_collate


def test_a_batch_sampler_of_no_batches_gives_an_empty_loader_as_torch():
    import torch.utils.data as td

    from nodegrad.data import BatchSampler, SequentialSampler

    data = list(range(6))
    batches = BatchSampler(SequentialSampler(data), 9, True)  # no full batch of 9
    ref = td.DataLoader(data, batch_sampler=td.BatchSampler(td.SequentialSampler(data), 9, True))
    loader = DataLoader(data, batch_sampler=batches)  # was "the dataset is empty"
    assert len(loader) == len(ref) == 0 and list(loader) == list(ref) == []
    assert list(DataLoader(data, sampler=[])) == []


def test_augmenting_a_bool_mask_rounds_instead_of_setting_every_touched_pixel():
    mask = np.zeros((1, 7, 7), bool)
    mask[0, 2:5, 1:6] = True
    out = augment.RandomRotate2d((45, 45))(mask, rng=0)
    ref = augment.RandomRotate2d((45, 45))(mask.astype(np.float64), rng=0) >= 0.5
    assert out.dtype == bool and (out == ref).all()  # was 23 True pixels, not 17
    noisy = augment.GaussianNoise(0.1)(np.eye(3, dtype=bool)[None], rng=0)
    assert noisy.dtype == bool and (noisy[0] == np.eye(3, dtype=bool)).all()  # was all True
