"""PyTorch data-pipeline code run on ``nodegrad.utils.data`` with only its imports changed.

Every test runs the same code against ``torch.utils.data`` and ``nodegrad.utils.data`` (the
library is a parameter of the code) and compares the batches: values, dtypes, shapes and
order exactly where the order is deterministic; where it comes from a random sampler (whose
stream cannot match torch's) the structure, the index sets and the determinism under a seed.
One known difference is normalised: a batch whose top level torch gives as a list (samples that
are tuples) is a tuple in nodegrad. Worker tests use fork/forkserver/spawn on loopback only and
pass ``timeout=``.
"""

from __future__ import annotations

import functools
import importlib
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.utils.data as TD  # noqa: E402

import nodegrad as ng  # noqa: E402
import nodegrad.utils.data as ND  # noqa: E402

from _ports_data_streams import NgRange, RangeMixin, Squares  # noqa: E402

WAIT = 20  # seconds a worker test may wait for one batch
LIBS = {"torch.utils.data": (TD, torch), "nodegrad.utils.data": (ND, ng)}


def tree(x, top: bool = True):
    """A comparable plain form of a batch: tensors as (dtype, shape, values)."""
    if isinstance(x, torch.Tensor):
        return ("T", str(x.dtype).removeprefix("torch."), tuple(x.shape), x.numpy().tolist())
    if isinstance(x, ng.Tensor):
        return ("T", str(x.dtype), tuple(x.shape), x.numpy().tolist())
    if isinstance(x, dict):
        return {k: tree(v, False) for k, v in x.items()}
    if isinstance(x, tuple | list):
        kind = "seq" if top else type(x).__name__  # the top level: list (torch) or tuple
        return (kind, [tree(v, False) for v in x])
    if isinstance(x, np.ndarray | np.generic):
        return ("np", str(x.dtype), np.asarray(x).tolist())
    return (type(x).__name__, x)


def each(loader) -> list:
    """The batches of ``loader``, each as a :func:`tree` (its top level normalised)."""
    return [tree(b) for b in loader]


def both(fn):
    """``fn(lib, tensorlib)`` run on torch and on nodegrad, as comparable trees."""
    return [tree(fn(*LIBS[name])) for name in ("torch.utils.data", "nodegrad.utils.data")]


def same(fn):
    theirs, ours = both(fn)
    assert ours == theirs


# --- 1. a map-style Dataset, default_collate, a padding collate_fn, default_convert ----------
def _sample(i: int) -> dict:
    return {"x": np.arange(3, dtype=np.float32) + i, "label": i, "name": f"s{i}",
            "pair": (np.float64(i) / 2, float(i) * 1.5), "parts": [{"a": np.int32(i)},
                                                                   {"a": np.int32(-i)}],
            "flag": bool(i % 2), "w": np.float16(i)}


def _records(D):
    class Records(D.Dataset):
        def __init__(self, n: int = 10):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return _sample(i)

    return Records


@pytest.mark.parametrize("kw", [dict(batch_size=4), dict(batch_size=4, drop_last=True),
                                dict(batch_size=None), dict(batch_size=3, shuffle=False)])
def test_map_style_dict_samples_batch_as_torch(kw):
    same(lambda D, T: each(D.DataLoader(_records(D)(), **kw)))


def test_default_collate_and_convert_of_nested_structures_as_torch():
    batch = [{"t": (np.float64(i), [i, i + 1]), "f": float(i), "i": i, "s": "ab"[i % 2],
              "l": [{"k": np.int16(i)}, {"k": np.ones(2, np.uint8) * i}]} for i in range(3)]
    same(lambda D, T: D.default_collate(batch))
    same(lambda D, T: D.default_collate([(1.5, 2), (2.5, 3)]))
    same(lambda D, T: D.default_collate([np.float32(1), np.float32(2)]))
    same(lambda D, T: D.default_convert(batch[1]))
    same(lambda D, T: D.default_convert((np.arange(3), "s", 1.0, [np.float64(2)])))


def _padded(T):
    def collate(samples):
        width = max(len(s) for s, _ in samples)
        x = T.zeros((len(samples), width), dtype=T.int64)
        for k, (s, _) in enumerate(samples):
            x[k, :len(s)] = T.tensor(s)
        return x, T.tensor([n for _, n in samples])

    return collate


def test_custom_collate_fn_with_padding_as_torch():
    def run(D, T):
        class Ragged(D.Dataset):
            def __len__(self):
                return 5

            def __getitem__(self, i):
                return np.arange(i + 1, dtype=np.int64), i + 1

        return each(D.DataLoader(Ragged(), batch_size=2, collate_fn=_padded(T)))

    same(run)


# --- 2. samplers ---------------------------------------------------------------------------------
def test_deterministic_samplers_and_loaders_as_torch():
    def run(D, T):
        ds = _records(D)(10)
        bs = D.BatchSampler(D.SequentialSampler(ds), 3, drop_last=True)
        out = {"seq": list(D.SequentialSampler(ds)),
               "bs": (len(bs), list(bs)),
               "bs_iterable": list(D.BatchSampler(range(7), 3, drop_last=False))}
        loader = D.DataLoader(ds, batch_sampler=bs)
        out["batch_sampler"] = (len(loader), [b["label"] for b in loader])
        loader = D.DataLoader(ds, sampler=D.SequentialSampler(ds), batch_size=None)
        out["no_batching"] = (len(loader), [b for b in loader][:3])
        loader = D.DataLoader(ds, sampler=[9, 1, 4, 2, 0], batch_size=2, drop_last=True)
        out["drop_last"] = (len(loader), [b["label"] for b in loader])
        return out

    same(run)


def _random_samplers(D, T, seed: int) -> dict:
    g = T.Generator().manual_seed(seed)
    ds = list(range(10))
    r = D.RandomSampler(ds, replacement=True, num_samples=25, generator=g)
    s = D.SubsetRandomSampler([1, 3, 5, 7], generator=g)
    w = D.WeightedRandomSampler([0.0, 0.0, 1.0, 3.0, 0.0], 6, generator=g)
    w2 = D.WeightedRandomSampler([0.1, 0.0, 1.0, 1.0, 0.0], 3, replacement=False, generator=g)
    loader = D.DataLoader(ds, batch_size=3, shuffle=True, generator=g)
    return {"rs": list(r), "srs": list(s), "wrs": list(w), "wrs2": list(w2),
            "lens": [len(r), len(s), len(w), len(w2), len(loader)],
            "shuffled": [b.tolist() for b in loader]}


def test_random_samplers_match_torch_in_structure_and_are_seeded():
    theirs, ours = (_random_samplers(*LIBS[k], 0) for k in LIBS)
    assert ours["lens"] == theirs["lens"] == [25, 4, 6, 3, 4]
    for got in (theirs, ours):
        assert all(type(i) is int for k in ("rs", "srs", "wrs", "wrs2") for i in got[k])
        assert len(got["rs"]) == 25 and set(got["rs"]) <= set(range(10))
        assert sorted(got["srs"]) == [1, 3, 5, 7]
        assert set(got["wrs"]) <= {2, 3}  # zero weights are never drawn
        assert len(set(got["wrs2"])) == 3 and set(got["wrs2"]) <= {0, 2, 3}
        assert [len(b) for b in got["shuffled"]] == [3, 3, 3, 1]
        assert sorted(sum(got["shuffled"], [])) == list(range(10))
    assert _random_samplers(ND, ng, 0) == ours != _random_samplers(ND, ng, 1)


# --- 3. IterableDataset and workers ----------------------------------------------------------
class TorchRange(RangeMixin, TD.IterableDataset):
    lib = "torch.utils.data"


RANGE = {"torch.utils.data": TorchRange, "nodegrad.utils.data": NgRange}


def _init_chunk(lib: str, worker_id: int) -> None:
    """torch's documented ``worker_init_fn``: configure each worker's copy of the dataset."""
    info = importlib.import_module(lib).get_worker_info()
    assert info.id == worker_id
    ds = info.dataset
    per = int(math.ceil((ds.end - ds.start) / float(info.num_workers)))
    start = ds.start
    ds.start = start + worker_id * per
    ds.end = min(ds.start + per, ds.end)


def _stream(name: str, range_kw: dict | None = None, **kw) -> list:
    D, _ = LIBS[name]
    ds = RANGE[name](3, 14, **(range_kw or {}))
    if kw.get("num_workers"):
        kw["timeout"] = WAIT  # (torch refuses a timeout without workers when iterating)
    return each(D.DataLoader(ds, **kw))


@pytest.mark.parametrize("kw", [
    dict(batch_size=2, num_workers=2),
    dict(batch_size=3, num_workers=2, drop_last=True, prefetch_factor=3, pin_memory=True),
    dict(batch_size=None, num_workers=2),
    dict(batch_size=4, num_workers=0),
])
def test_iterable_dataset_sharded_by_worker_info_interleaves_as_torch(kw):
    assert _stream("nodegrad.utils.data", **kw) == _stream("torch.utils.data", **kw)


def test_worker_init_fn_and_persistent_workers_as_torch():
    def run(name: str) -> list:
        D, _ = LIBS[name]
        loader = D.DataLoader(RANGE[name](3, 14, split=False), batch_size=2, num_workers=2,
                              worker_init_fn=functools.partial(_init_chunk, name),
                              persistent_workers=True, timeout=WAIT)
        return [[tree(b) for b in loader] for _ in range(2)]  # two epochs, the same workers

    theirs, ours = run("torch.utils.data"), run("nodegrad.utils.data")
    assert ours == theirs and ours[0] == ours[1]


def test_spawn_context_gives_the_same_stream():
    kw = dict(batch_size=2, num_workers=2)
    ours = _stream("nodegrad.utils.data", multiprocessing_context="spawn", **kw)
    assert ours == _stream("torch.utils.data", **kw)


def test_map_style_dataset_with_workers_as_torch():
    def run(D, T):
        return each(D.DataLoader(Squares(D is ND), batch_size=3, num_workers=2,
                                 timeout=WAIT))

    same(run)


def test_worker_timeout_raises_as_torch():
    for name in LIBS:
        D, _ = LIBS[name]
        loader = D.DataLoader(RANGE[name](0, 4, delay=1.5), batch_size=2, num_workers=1,
                              timeout=0.3)
        with pytest.raises(RuntimeError, match="DataLoader timed out after"):
            list(loader)


# --- 4. dataset combinators ------------------------------------------------------------------
def test_dataset_combinators_as_torch():
    def run(D, T):
        a = D.TensorDataset(T.arange(6).reshape(3, 2), T.tensor([1.0, 2.0, 3.0]))
        c = D.ConcatDataset([a, a])
        s = D.Subset(c, [5, 0])
        out = {"tensor": (len(a), a[1], a[-1], a[0:2]), "concat": (len(c), c[4], c[-1],
                                                                  c.cumulative_sizes),
               "subset": (len(s), s[0], s[1]),
               "stack": (D.StackDataset(a, a)[1], D.StackDataset(x=a, y=range(3))[2])}

        class Part(D.IterableDataset):
            def __init__(self, lo, hi):
                self.lo, self.hi = lo, hi

            def __iter__(self):
                return iter(range(self.lo, self.hi))

        chain = D.ChainDataset([Part(0, 3), Part(10, 12)])
        out["chain"] = (list(chain), list(D.DataLoader(chain, batch_size=2)))
        out["loaders"] = [each(D.DataLoader(d, batch_size=2)) for d in (a, c, s)]
        out["stack_loader"] = each(D.DataLoader(D.StackDataset(x=a, y=range(3)), batch_size=2))
        return out

    same(run)


def test_tensor_dataset_items_are_tensors():
    ds = ND.TensorDataset(ng.arange(6).reshape(3, 2), ng.tensor([1.0, 2.0, 3.0]))
    x, y = ds[1]
    assert isinstance(x, ng.Tensor) and isinstance(y, ng.Tensor)
    assert x.tolist() == [2, 3] and y.shape == () and str(y.dtype) == "float32"


def test_random_split_by_fractions_as_torch():
    def run(D, T, n, seed=0):
        parts = D.random_split(range(n), [0.8, 0.2], generator=T.Generator().manual_seed(seed))
        return [type(p).__name__ for p in parts], [list(p) for p in parts]

    for n in (10, 11, 7):
        (t_types, theirs), (n_types, ours) = run(TD, torch, n), run(ND, ng, n)
        assert n_types == t_types == ["Subset", "Subset"]
        assert [len(p) for p in ours] == [len(p) for p in theirs]
        assert sorted(ours[0] + ours[1]) == list(range(n))
        assert run(ND, ng, n) == run(ND, ng, n)[0:2]  # the same seed: the same split
    assert run(ND, ng, 10)[1] != run(ND, ng, 10, seed=1)[1]


def test_loader_over_a_random_split_of_a_dataset_keeps_dtypes():
    def run(D, T):
        train, _ = D.random_split(_records(D)(10), [0.8, 0.2],
                                  generator=T.Generator().manual_seed(0))
        return [tree(b) for b in D.DataLoader(D.Subset(train.dataset, [4, 1, 7]),
                                              batch_size=2)]

    same(run)


# --- 5. len(loader) and bad combinations ------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(), dict(batch_size=3), dict(batch_size=3, drop_last=True), dict(batch_size=None),
    dict(batch_size=4, shuffle=True), dict(sampler=[1, 2, 3], batch_size=2),
    dict(batch_sampler=[[0, 1], [2]]), dict(sampler=[4, 5], batch_size=None),
])
def test_len_of_loader_as_torch(kw):
    kw.setdefault("batch_size", 1)  # nodegrad's default batch size is 32 (torch's: 1)
    if "batch_sampler" in kw:
        kw.pop("batch_size")
    assert len(ND.DataLoader(_records(ND)(10), **kw)) == len(
        TD.DataLoader(_records(TD)(10), **kw))


@pytest.mark.parametrize("kw", [
    dict(shuffle=True, sampler=[1, 2]), dict(batch_sampler=[[1, 2]], batch_size=2),
    dict(batch_sampler=[[1, 2]], shuffle=True), dict(batch_sampler=[[1, 2]], sampler=[1]),
    dict(batch_sampler=[[1, 2]], drop_last=True), dict(batch_size=None, drop_last=True),
    dict(prefetch_factor=2), dict(persistent_workers=True), dict(num_workers=-1),
    dict(timeout=-1), dict(batch_size=0),
])
def test_bad_option_combinations_raise_as_torch(kw):
    with pytest.raises(Exception) as theirs:
        TD.DataLoader(_records(TD)(), **kw)
    with pytest.raises(type(theirs.value)) as ours:
        ND.DataLoader(_records(ND)(), **kw)
    if kw.get("batch_size") == 0:  # nodegrad's message: "batch_size must be an int >= 1"
        return
    words = re.findall(r"[a-z_]+", str(theirs.value).split(".")[0].split(",")[0])
    assert all(w in str(ours.value) for w in words), (str(theirs.value), str(ours.value))


def test_iterable_dataset_refuses_shuffle_as_torch():
    for name, (D, _) in LIBS.items():
        with pytest.raises(ValueError, match="expected unspecified shuffle option"):
            D.DataLoader(RANGE[name](0, 3), shuffle=True)


# --- 6. a dataset that returns tensors -------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(batch_size=3), dict(batch_size=None),
                                dict(batch_size=2, sampler=[6, 0, 3])])
def test_dataset_returning_tensors_as_torch(kw):
    def run(D, T):
        class Tensors(D.Dataset):
            def __len__(self):
                return 7

            def __getitem__(self, i):
                return {"x": T.ones(2, 3) * i, "y": T.tensor(i), "z": T.tensor([i, -i],
                                                                            dtype=T.int32)}

        return each(D.DataLoader(Tensors(), **kw))

    same(run)


def test_dtype_option_still_converts_a_map_style_dataset():
    batch = next(iter(ND.DataLoader(_records(ND)(4), batch_size=2, dtype=ng.float32)))
    assert str(batch["pair"][0].dtype) == "float32" and batch["label"].tolist() == [0, 1]
    assert batch["name"] == ["s0", "s1"]


def test_ragged_samples_name_the_batching_step():
    class Ragged(ND.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.zeros(i + 1)

    with pytest.raises(ValueError, match=r"batching samples: .* got \(1,\) at entry 0"):
        list(ND.DataLoader(Ragged(), batch_size=3))


def test_array_dataset_without_batching_keeps_nodegrad_float32():
    ds = ND.ArrayDataset(np.arange(6.0).reshape(3, 2), np.arange(3))
    x, y = next(iter(ND.DataLoader(ds, batch_size=None)))
    assert str(x.dtype) == "float32" and str(y.dtype) == "int64" and x.shape == (2,)


def test_getitems_reads_a_batch_at_once_as_torch():
    def run(D, T):
        calls = []

        class Batched(D.Dataset):
            def __len__(self):
                return 5

            def __getitem__(self, i):
                raise AssertionError("__getitems__ is used instead")

            def __getitems__(self, indices):
                calls.append(list(indices))
                return [(np.float64(i), i) for i in indices]

        return each(D.DataLoader(Batched(), batch_size=2, sampler=[4, 0, 2])), calls

    same(run)


def test_stream_of_float64_arrays_keeps_float64_as_torch():
    class Stream(ng.data.IterableDataset):
        def __iter__(self):
            for i in range(4):
                yield np.full(3, i, dtype=np.float64), np.float32(i)

    class TStream(torch.utils.data.IterableDataset):
        __iter__ = Stream.__iter__

    ours = next(iter(ng.data.DataLoader(Stream(), batch_size=2)))
    theirs = next(iter(torch.utils.data.DataLoader(TStream(), batch_size=2)))
    assert [str(t.dtype) for t in ours] == [str(t.dtype).removeprefix("torch.") for t in theirs]
    assert next(iter(ng.data.DataLoader(Stream(), batch_size=2, dtype=ng.float32)))[0].dtype \
        == ng.float32  # asked for
