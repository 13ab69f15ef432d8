"""torch.utils.data's names in nodegrad.data: samplers, dataset combinators, collation and the
DataLoader options that use them, compared with PyTorch where the behaviour is deterministic and
statistically where it is random."""

from collections import namedtuple

import numpy as np
import pytest

import nodegrad as ng
from nodegrad.data import (
    ArrayDataset,
    BatchSampler,
    ChainDataset,
    ConcatDataset,
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    StackDataset,
    SubsetRandomSampler,
    WeightedRandomSampler,
    default_collate,
    default_convert,
    get_worker_info,
)

torch = pytest.importorskip("torch")
td = torch.utils.data


def _ds(n=23):
    return ArrayDataset(np.arange(n * 2, dtype=np.float64).reshape(n, 2), np.arange(n))


def _ids(loader):
    """The sample ids (the label field) of each batch of one epoch."""
    return [b[1].numpy().tolist() for b in loader]


class _Counting(ArrayDataset):
    """An ArrayDataset that counts per-sample reads (the vectorised path makes none)."""

    reads = 0

    def __getitem__(self, index):
        type(self).reads += 1
        return super().__getitem__(index)


class _Stream(IterableDataset):
    """The samples (i, i*i) for i < n, as a stream; sized only when asked."""

    def __init__(self, n, sized=False):
        self.n, self.sized = n, sized

    def __iter__(self):
        for i in range(self.n):
            yield np.float64(i), i * i

    def __len__(self):
        if not self.sized:
            raise TypeError("unsized")
        return self.n


# --- samplers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 12])
@pytest.mark.parametrize("bs", [1, 3, 4, 20])
@pytest.mark.parametrize("drop", [False, True])
def test_sequential_and_batch_sampler_match_torch(n, bs, drop):
    ours = BatchSampler(SequentialSampler(range(n)), bs, drop)
    theirs = td.BatchSampler(td.SequentialSampler(range(n)), bs, drop)
    assert list(ours) == list(theirs) and len(ours) == len(theirs)
    assert list(SequentialSampler(range(n))) == list(td.SequentialSampler(range(n)))
    # any iterable of indices, read one by one as torch does
    assert list(BatchSampler([5, 1, 4, 2, 3][:n], bs, drop)) == \
        list(td.BatchSampler([5, 1, 4, 2, 3][:n], bs, drop))
    assert all(isinstance(i, int) for b in ours for i in b)


def test_random_sampler_permutes_and_is_reproducible_by_seed():
    ds = _ds(50)
    a = RandomSampler(ds, generator=ng.Generator(seed=3))
    e0, e1 = list(a), list(a)
    assert sorted(e0) == sorted(e1) == list(range(50)) and len(a) == 50
    assert e0 != e1  # a fresh permutation per pass
    b = RandomSampler(ds, generator=ng.Generator(seed=3))
    assert list(b) == e0 and list(b) == e1
    assert list(RandomSampler(ds, generator=ng.Generator(seed=4))) != e0
    ng.manual_seed(9)  # without a generator: ng's default one
    c = list(RandomSampler(ds))
    ng.manual_seed(9)
    assert list(RandomSampler(ds)) == c and c != list(range(50))


def test_random_sampler_num_samples_follows_torch():
    ds = _ds(10)
    ours = list(RandomSampler(ds, num_samples=25, generator=ng.Generator(seed=0)))
    theirs = list(td.RandomSampler(range(10), num_samples=25))
    assert len(ours) == len(theirs) == 25
    # whole permutations, then a cut one: no index repeats within each block, as torch
    for got in (ours, theirs):
        assert sorted(got[:10]) == sorted(got[10:20]) == list(range(10))
        assert len(set(got[20:])) == 5
    short = list(RandomSampler(ds, num_samples=4, generator=ng.Generator(seed=0)))
    assert len(short) == len(set(short)) == 4


def test_random_sampler_statistics():
    ds, n, passes = _ds(6), 6, 3000
    s = RandomSampler(ds, generator=ng.Generator(seed=1))
    first = np.zeros((n, n))
    for _ in range(passes):  # every index equally likely at every position
        first[np.arange(n), list(s)] += 1
    expected = passes / n
    chi2 = ((first - expected) ** 2 / expected).sum(axis=1)
    assert (chi2 < 30).all(), chi2  # 5 dof: p ~ 1e-5
    r = list(RandomSampler(ds, replacement=True, num_samples=60000,
                           generator=ng.Generator(seed=2)))
    counts = np.bincount(r, minlength=n)
    assert len(r) == 60000 and np.abs(counts / 60000 - 1 / n).max() < 0.01
    # drawn with replacement: aligned blocks of n are not all permutations, as without
    assert sum(len(set(r[i:i + n])) < n for i in range(0, 600, n)) > 50


def test_subset_random_sampler():
    idx = [10, 3, 7, 42, 5]
    s = SubsetRandomSampler(idx, generator=ng.Generator(seed=0))
    a, b = list(s), list(s)
    assert sorted(a) == sorted(idx) == sorted(b) and a != b and len(s) == 5
    assert list(SubsetRandomSampler(idx, generator=ng.Generator(seed=0))) == a
    counts = np.zeros(5)
    for _ in range(2000):
        counts[idx.index(next(iter(s)))] += 1
    assert np.abs(counts / 2000 - 0.2).max() < 0.04


def test_weighted_random_sampler_frequencies():
    w = [1.0, 2.0, 3.0, 4.0, 0.0]
    draws = list(WeightedRandomSampler(w, 100000, generator=ng.Generator(seed=0)))
    freq = np.bincount(draws, minlength=5) / 100000
    np.testing.assert_allclose(freq, np.array(w) / 10, atol=0.006)
    assert freq[4] == 0 and len(draws) == 100000
    # as torch.multinomial: the same frequencies
    ref = torch.bincount(torch.tensor(list(td.WeightedRandomSampler(w, 100000))),
                         minlength=5).numpy() / 100000
    np.testing.assert_allclose(freq, ref, atol=0.01)
    # without replacement: distinct indices, the first drawn with probability w / sum
    s = WeightedRandomSampler(w, 4, replacement=False, generator=ng.Generator(seed=1))
    firsts = np.zeros(5)
    for _ in range(4000):
        got = list(s)
        assert sorted(got) == [0, 1, 2, 3]
        firsts[got[0]] += 1
    np.testing.assert_allclose(firsts / 4000, np.array(w) / 10, atol=0.025)
    # second draw: among the rest (P(second = 0) = sum_j w_j/10 * w_0/(10 - w_j))
    again = [list(WeightedRandomSampler(w, 2, False, ng.Generator(seed=k))) for k in range(3)]
    assert again == [list(WeightedRandomSampler(w, 2, False, ng.Generator(seed=k)))
                     for k in range(3)]


def test_weighted_sampler_accepts_tensors_and_keeps_torch_attributes():
    s = WeightedRandomSampler(ng.tensor([0.0, 1.0]), 3, generator=ng.Generator(seed=0))
    assert list(s) == [1, 1, 1] and len(s) == 3 and s.replacement
    assert isinstance(s.weights, ng.Tensor) and s.weights.dtype == ng.float64


def test_sampler_errors():
    ds = _ds(5)
    with pytest.raises(ValueError, match="BatchSampler: batch_size should be a positive"):
        BatchSampler(range(5), 0, False)
    with pytest.raises(ValueError, match="BatchSampler: batch_size .* got batch_size=True"):
        BatchSampler(range(5), True, False)
    with pytest.raises(ValueError, match="drop_last should be a boolean value"):
        BatchSampler(range(5), 2, 1)
    with pytest.raises(TypeError, match="RandomSampler: replacement should be a boolean"):
        RandomSampler(ds, replacement=1)
    with pytest.raises(ValueError, match="RandomSampler: num_samples should be a positive .*=0"):
        RandomSampler(ds, num_samples=0)
    with pytest.raises(ValueError, match="num_samples=0"):
        RandomSampler([])
    with pytest.raises(TypeError, match="RandomSampler: generator must be an ng.Generator.*torch"):
        RandomSampler(ds, generator=torch.Generator())
    with pytest.raises(ValueError, match="WeightedRandomSampler: num_samples should be"):
        WeightedRandomSampler([1, 2], -1)
    with pytest.raises(ValueError, match=r"weights should be a 1d sequence .* shape \(2, 2\)"):
        WeightedRandomSampler([[1, 2], [3, 4]], 2)
    for bad in ([1, -1], [0, 0], [1, float("nan")]):
        with pytest.raises(ValueError, match="WeightedRandomSampler: weights must be finite"):
            WeightedRandomSampler(bad, 2)
    with pytest.raises(ValueError, match="num_samples=3 without replacement .* got 2"):
        WeightedRandomSampler([1, 0, 1], 3, replacement=False)
    with pytest.raises(TypeError, match="SubsetRandomSampler: indices must be .* ints"):
        SubsetRandomSampler([0.5, 1.5])
    with pytest.raises(NotImplementedError, match="_Bare must define __iter__"):
        iter(type("_Bare", (Sampler,), {})()).__next__()


# --- datasets -----------------------------------------------------------------------------------
def test_concat_dataset_indexes_like_torch():
    parts = [list(range(4)), list(range(10, 13)), [], list(range(20, 26))]
    ours, theirs = ConcatDataset(parts), td.ConcatDataset(parts)
    assert ours.cumulative_sizes == theirs.cumulative_sizes == [4, 7, 7, 13]
    assert len(ours) == len(theirs) == 13
    for i in range(-13, 13):
        assert ours[i] == theirs[i], i
    for i in (-14, -100):
        with pytest.raises(ValueError, match="absolute value of index should not exceed"):
            ours[i]
        with pytest.raises(ValueError):
            theirs[i]
    with pytest.raises(IndexError):
        theirs[13]
    with pytest.raises(IndexError, match="ConcatDataset: index 13 is out of range"):
        ours[13]


def test_concat_dataset_gathers_vectorised_and_through_the_loader():
    a = _Counting(np.arange(10.0)[:, None], np.arange(10))
    b = _Counting(np.arange(100.0, 105.0)[:, None].astype(np.float32), np.arange(100, 105))
    c = a + b  # Dataset + Dataset is a ConcatDataset, as in torch
    assert isinstance(c, ConcatDataset) and len(c) == 15
    idx = np.array([14, 0, 12, 3, 10, -1])
    x, y = c.gather(idx)
    np.testing.assert_array_equal(y, [104, 0, 102, 3, 100, 104])
    assert x.dtype == np.float64 and x[:, 0].tolist() == [104, 0, 102, 3, 100, 104]
    _Counting.reads = 0
    got = sorted(i for b in _ids(DataLoader(c, 4, shuffle=True, seed=0)) for i in b)
    assert got == list(range(10)) + list(range(100, 105)) and _Counting.reads == 0
    with pytest.raises(IndexError, match=r"indices must lie in \[-15, 15\), got 15"):
        c.gather([15])


def test_stack_dataset_like_torch():
    xs, ys = list(range(5)), [i * 10 for i in range(5)]
    assert StackDataset(xs, ys)[3] == td.StackDataset(xs, ys)[3] == (3, 30)
    assert StackDataset(a=xs, b=ys)[2] == td.StackDataset(a=xs, b=ys)[2] == {"a": 2, "b": 20}
    assert len(StackDataset(xs, ys)) == 5
    with pytest.raises(ValueError, match="StackDataset: size mismatch"):
        StackDataset(xs, ys[:3])
    with pytest.raises(ValueError, match="StackDataset: supported either"):
        StackDataset(xs, b=ys)
    with pytest.raises(ValueError, match="StackDataset: at least one dataset"):
        StackDataset()
    # over array datasets the loader gathers every part at once, keeping the nesting
    _Counting.reads = 0
    s = StackDataset(img=_Counting(np.ones((6, 2))), label=_Counting(np.arange(6)))
    batch = next(iter(DataLoader(s, 4)))
    assert _Counting.reads == 0 and set(batch) == {"img", "label"}
    (x,), (y,) = batch["img"], batch["label"]
    assert x.shape == (4, 2) and x.dtype == ng.float32 and y.numpy().tolist() == [0, 1, 2, 3]


def test_iterable_and_chain_datasets():
    a, b = _Stream(3), _Stream(2)
    chain = a + b
    assert isinstance(chain, ChainDataset)
    assert [int(x) for x, _ in chain] == [0, 1, 2, 0, 1]
    assert len(ChainDataset([_Stream(3, True), _Stream(4, True)])) == 7
    with pytest.raises(TypeError, match="ChainDataset only supports IterableDataset, got list"):
        list(ChainDataset([a, [1, 2]]))
    with pytest.raises(TypeError, match="ConcatDataset does not support IterableDataset"):
        ConcatDataset([_ds(), a])
    with pytest.raises(ValueError, match="ConcatDataset: datasets should not be an empty"):
        ConcatDataset([])
    with pytest.raises(NotImplementedError, match="must define __iter__"):
        iter(IterableDataset())
    assert get_worker_info() is None


# --- collation ----------------------------------------------------------------------------------
Point = namedtuple("Point", ["x", "y"])


def _same(ours, theirs, path="batch"):
    """Same structure, container types, values and dtypes (nodegrad tensors for torch's)."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, ng.Tensor), path
        assert str(ours.dtype) == str(theirs.dtype).removeprefix("torch."), path
        assert ours.shape == tuple(theirs.shape), path
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=path)
        return
    assert type(ours) is type(theirs), (path, type(ours), type(theirs))
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), path
        for k in theirs:
            _same(ours[k], theirs[k], f"{path}[{k!r}]")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), path
        for i, (o, t) in enumerate(zip(ours, theirs)):
            _same(o, t, f"{path}[{i}]")
    elif isinstance(theirs, np.ndarray):
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert ours == theirs, path


def _samples(k):
    return {"f": 1.5 * k, "i": k, "b": k % 2 == 0, "s": f"s{k}",
            "a32": np.full((2, 3), k, dtype=np.float32), "a64": np.arange(3.0) + k,
            "u8": np.array([k, 2 * k], dtype=np.uint8), "np": np.float32(k), "npi": np.int16(k),
            "tup": (k, (1.0 * k, [k, k + 1])), "lst": [np.array([k]), {"deep": 2.5 * k}],
            "pt": Point(k, np.array([k, -k])), "bytes": b"x"}


def test_default_collate_matches_torch():
    batch = [_samples(k) for k in range(3)]
    ours, theirs = default_collate(batch), td.default_collate(batch)
    _same(ours, theirs)
    # Python floats give float64, as torch (its default dtype does not apply)
    assert ours["f"].dtype == ng.float64 and ours["i"].dtype == ng.int64
    assert isinstance(ours["tup"], list) and isinstance(ours["pt"], Point)
    # tensors are stacked
    t = default_collate([ng.ones(2, 3), ng.zeros(2, 3)])
    assert t.shape == (2, 2, 3) and t.numpy()[1].sum() == 0 and t.dtype == ng.float32
    _same(default_collate([(1, 2.0), (3, 4.0)]), td.default_collate([(1, 2.0), (3, 4.0)]))


def test_default_convert_matches_torch():
    for sample in (_samples(2), (np.arange(3), 1.0), [np.float32(1), "a"], 7, Point(1, 2)):
        _same(default_convert(sample), td.default_convert(sample))
    obj = np.array(["a", "b"])
    assert default_convert(obj) is obj
    t = ng.ones(2)
    assert default_convert(t) is t


def test_collate_errors():
    with pytest.raises(RuntimeError, match="each element in list of batch should be of equal"):
        default_collate([[1, 2], [3]])
    with pytest.raises(TypeError, match="default_collate: batch must contain tensors.*<U1"):
        default_collate([np.array(["a"]), np.array(["b"])])
    with pytest.raises(TypeError, match="found <class 'object'>"):
        default_collate([object(), object()])
    with pytest.raises(ValueError, match="default_collate: the batch is empty"):
        default_collate([])
    with pytest.raises(TypeError, match="batch must be a list of samples, got int"):
        default_collate(3)


# --- the DataLoader with the new options --------------------------------------------------------
@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_with_a_sampler_keeps_the_vectorised_path(prefetch):
    ds = _Counting(np.arange(46.0).reshape(23, 2), np.arange(23))
    _Counting.reads = 0
    assert _ids(DataLoader(ds, 5, sampler=SequentialSampler(ds), prefetch=prefetch)) == \
        _ids(DataLoader(ds, 5))
    loader = DataLoader(ds, 5, sampler=RandomSampler(ds, generator=ng.Generator(seed=4)),
                        prefetch=prefetch, drop_last=True)
    e0, e1 = _ids(loader), _ids(loader)
    twin = RandomSampler(ds, generator=ng.Generator(seed=4))
    want0, want1 = list(twin), list(twin)
    assert e0 == [want0[i:i + 5] for i in range(0, 20, 5)] and len(loader) == 4
    assert e1 == [want1[i:i + 5] for i in range(0, 20, 5)] and e0 != e1
    w = DataLoader(ds, 8, sampler=WeightedRandomSampler([0.0] * 20 + [1.0] * 3, 40,
                                                        generator=ng.Generator(seed=0)))
    assert len(w) == 5 and set(i for b in _ids(w) for i in b) == {20, 21, 22}
    assert _Counting.reads == 0


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_with_a_batch_sampler(prefetch):
    ds = _ds()
    bs = BatchSampler(RandomSampler(ds, generator=ng.Generator(seed=1)), 6, False)
    loader = DataLoader(ds, batch_sampler=bs, prefetch=prefetch)
    twin = BatchSampler(RandomSampler(ds, generator=ng.Generator(seed=1)), 6, False)
    assert len(loader) == 4 and loader.batch_size is None
    assert _ids(loader) == list(twin) and _ids(loader) == list(twin)
    # any iterable of index lists, here of uneven sizes, also with batch_size=1 (torch's default)
    uneven = [[3, 1], [0], [5, 6, 7, 8]]
    assert _ids(DataLoader(ds, batch_size=1, batch_sampler=uneven)) == uneven


def test_loader_calls_a_samplers_set_epoch():
    class Epochs(Sampler):
        def __init__(self):
            self.epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            return iter([self.epoch, self.epoch + 1])

        def __len__(self):
            return 2

    s = Epochs()
    loader = DataLoader(_ds(), 2, sampler=s)
    assert _ids(loader) == [[0, 1]] and _ids(loader) == [[1, 2]]
    loader.set_epoch(5)
    assert _ids(loader) == [[5, 6]]


@pytest.mark.parametrize("make", [
    lambda ds, g: {"sampler": RandomSampler(ds, generator=g), "batch_size": 4},
    lambda ds, g: {"sampler": WeightedRandomSampler(np.arange(23.0), 30, generator=g),
                   "batch_size": 4},
    lambda ds, g: {"batch_sampler": BatchSampler(SubsetRandomSampler(range(3, 20), g), 4, True)},
])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_state_dict_resumes_a_random_sampler_exactly(make, prefetch):
    ds = _ds()
    ref = DataLoader(ds, prefetch=prefetch, **make(ds, ng.Generator(seed=7)))
    _ids(ref)
    full = _ids(ref)  # epoch 1
    loader = DataLoader(ds, prefetch=prefetch, **make(ds, ng.Generator(seed=7)))
    _ids(loader)
    it = iter(loader)
    head = [next(it)[1].numpy().tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 2 and "sampler_seed" in state
    fresh = DataLoader(ds, prefetch=prefetch, **make(ds, ng.Generator(seed=123)))
    fresh.load_state_dict(state)
    assert head + _ids(fresh) == full
    assert _ids(fresh) != full  # the next epoch draws a new order


def test_collate_fn_batch_size_none_and_transform():
    ds = _ds()
    x, y = next(iter(DataLoader(ds, 4, collate_fn=default_collate)))
    assert x.dtype == ng.float64 and y.dtype == ng.int64  # default_collate keeps dtypes
    x32, _ = next(iter(DataLoader(ds, 4)))
    assert x32.dtype == ng.float32  # the loader's own collation converts to its dtype
    np.testing.assert_array_equal(x.numpy(), x32.numpy())
    single = list(DataLoader(ds, batch_size=None))
    assert len(single) == 23 and single[3][0].shape == (2,) and int(single[3][1].numpy()) == 3
    assert len(DataLoader(ds, batch_size=None)) == 23
    conv = next(iter(DataLoader(ds, batch_size=None, collate_fn=default_convert)))
    assert isinstance(conv, list) and conv[0].dtype == ng.float64  # default_convert's list

    def flip(x, rng):
        return -x

    a = next(iter(DataLoader(ds, 4, sampler=SequentialSampler(ds), transform=flip)))
    assert a[0].numpy()[1].tolist() == [-2.0, -3.0] and a[1].numpy().tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_over_an_iterable_dataset(prefetch):
    loader = DataLoader(_Stream(7), batch_size=3, prefetch=prefetch)
    batches = list(loader)
    assert [b[0].numpy().tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    # the samples' own dtypes, as PyTorch's default_collate keeps them (np.float64: float64)
    assert batches[0][0].dtype == ng.float64 and batches[0][1].dtype == ng.int64
    assert [b[1].numpy().tolist() for b in batches][-1] == [36]
    with pytest.raises(TypeError, match="length of _Stream, an IterableDataset without"):
        len(loader)
    assert len(DataLoader(_Stream(7, True), 3)) == 3
    assert len(DataLoader(_Stream(7, True), 3, drop_last=True)) == 2
    assert len(list(DataLoader(_Stream(7), 3, drop_last=True, prefetch=prefetch))) == 2
    raw = list(DataLoader(_Stream(3), batch_size=None, prefetch=prefetch))
    assert [(float(x.numpy()), y) for x, y in raw] == [(0.0, 0), (1.0, 1), (2.0, 4)]
    assert len(list(DataLoader(_Stream(3) + _Stream(4), 2))) == 4


def test_iterable_loader_epochs_and_resume():
    loader = DataLoader(_Stream(10), batch_size=3)
    list(loader)
    assert loader.epoch == 0 and loader.state_dict()["epoch"] == 1
    it = iter(loader)
    next(it)
    next(it)
    state = loader.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 2)
    fresh = DataLoader(_Stream(10), batch_size=3)
    fresh.load_state_dict(state)
    assert [b[1].numpy().tolist() for b in fresh] == [[36, 49, 64], [81]]

    class Boom(IterableDataset):
        def __iter__(self):
            yield 1.0
            raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        list(DataLoader(Boom(), 1, prefetch=2))


def _messages(ours_kw, theirs_kw, ds, tds):
    with pytest.raises(ValueError) as ours:
        DataLoader(ds, **ours_kw)
    with pytest.raises(ValueError) as theirs:
        td.DataLoader(tds, **theirs_kw)
    return str(ours.value), str(theirs.value)


def test_mutually_exclusive_options_raise_with_torchs_wording():
    ds, tds = _ds(), td.TensorDataset(torch.arange(23))
    cases = [({"sampler": SequentialSampler(ds), "shuffle": True},
              {"sampler": td.SequentialSampler(tds), "shuffle": True}),
             ({"batch_sampler": [[0]], "batch_size": 4}, {"batch_sampler": [[0]], "batch_size": 4}),
             ({"batch_sampler": [[0]], "shuffle": True}, {"batch_sampler": [[0]], "shuffle": True}),
             ({"batch_sampler": [[0]], "drop_last": True},
              {"batch_sampler": [[0]], "drop_last": True}),
             ({"batch_sampler": [[0]], "sampler": [0]}, {"batch_sampler": [[0]], "sampler": [0]}),
             ({"batch_size": None, "drop_last": True}, {"batch_size": None, "drop_last": True})]
    for ours_kw, theirs_kw in cases:
        ours, theirs = _messages(ours_kw, theirs_kw, ds, tds)
        assert theirs in ours and ours.startswith("DataLoader"), (ours, theirs)

    class TStream(td.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    for kw in ({"shuffle": True}, {"sampler": [0]}, {"batch_sampler": [[0]]}):
        ours, theirs = _messages(kw, kw, _Stream(3), TStream())
        assert ours.split("but got")[0] == theirs.split("but got")[0]
        assert ours.startswith("DataLoader with IterableDataset: expected unspecified")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1 or None, got 0"):
        DataLoader(ds, batch_size=0)


@pytest.mark.parametrize("prefetch", [None, 0])
def test_new_options_land_batches_on_cuda(prefetch, cuda):
    ds = _ds()
    kinds = [{"sampler": RandomSampler(ds, generator=ng.Generator(seed=0)), "batch_size": 5},
             {"batch_sampler": BatchSampler(SequentialSampler(ds), 4, False)},
             {"batch_size": 3, "collate_fn": default_collate}]
    for kw in kinds:
        gpu = list(DataLoader(ds, device=cuda, prefetch=prefetch, **kw))
        kw = {**kw, "sampler": RandomSampler(ds, generator=ng.Generator(seed=0))} \
            if "sampler" in kw else kw
        cpu = list(DataLoader(ds, **kw))
        assert len(gpu) == len(cpu)
        for g, c in zip(gpu, cpu):
            for tg, tc in zip(g, c):
                assert tg.device == "cuda:0" and tg.dtype == tc.dtype
                np.testing.assert_array_equal(tg.numpy(), tc.numpy())
    (x, y), = list(DataLoader(_Stream(3), 3, device=cuda, prefetch=prefetch))
    assert x.device == y.device == "cuda:0" and y.numpy().tolist() == [0, 1, 4]
