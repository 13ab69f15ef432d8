"""nodegrad.utils.data against torch.utils.data: batch structure and dtypes, collate_fn output,
Tensors and empty datasets as datasets, default_collate's strings, dtypes and errors, TensorDataset
and Subset samples, the loader's sampler attributes and the Dataset base class."""

import numpy as np
import pytest

import nodegrad as ng
import nodegrad.utils.data as nd

torch = pytest.importorskip("torch")
td = torch.utils.data


def _plain(x):
    """A comparable form of a batch: containers by type, tensors as (dtype, values)."""
    if isinstance(x, torch.Tensor | ng.Tensor):
        return ("T", str(x.dtype).split(".")[-1], x.tolist())
    if isinstance(x, np.ndarray):
        return ("nd", str(x.dtype), x.tolist())
    if isinstance(x, list | tuple):
        return (type(x).__name__, [_plain(v) for v in x])
    if isinstance(x, dict):
        return ("dict", {k: _plain(v) for k, v in x.items()})
    return x


def _both(make):
    """``make`` applied to (torch, torch.utils.data) and (nodegrad, nodegrad.utils.data)."""
    return _plain(make(torch, td)), _plain(make(ng, nd))


def test_default_batches_of_tuple_samples_are_lists():
    a, b = _both(lambda L, D: next(iter(D.DataLoader(D.TensorDataset(L.arange(4)), 2))))
    assert a == b == ("list", [("T", "int64", [0, 1])])
    a, b = _both(lambda L, D: next(iter(D.DataLoader(
        D.TensorDataset(L.arange(4), L.ones(4)), batch_size=None))))
    assert a == b


@pytest.mark.parametrize("collate", [lambda b: b, lambda b: tuple(b),
                                     lambda b: np.array(b, dtype=np.float64),
                                     lambda b: {"x": np.array(b, np.int32), "n": (len(b),)}])
def test_collate_fn_output_is_returned_as_made(collate):
    a, b = _both(lambda L, D: next(iter(D.DataLoader([1, 2, 3], batch_size=2,
                                                     collate_fn=collate))))
    assert a == b


@pytest.mark.parametrize("dtype", ["int32", "uint8", "int16", "int64", "float64", "bool"])
def test_tensor_dataset_keeps_every_dtype(dtype):
    def make(L, D):
        x = L.arange(6).reshape(3, 2).to(getattr(L, dtype))
        return next(iter(D.DataLoader(D.TensorDataset(x, L.arange(3).int()), batch_size=2)))

    a, b = _both(make)
    assert a == b


@pytest.mark.parametrize("sample", [np.array([1, 2], np.int32), np.int16(3), np.uint8(4),
                                    "tensor32"])
@pytest.mark.parametrize("batch_size", [2, None])
def test_iterable_dataset_keeps_sample_dtypes(sample, batch_size):
    def make(L, D):
        s = L.tensor([5, 6], dtype=L.int32) if isinstance(sample, str) else sample

        class Stream(D.IterableDataset):
            def __iter__(self):
                return iter([s, s, s])

        return list(D.DataLoader(Stream(), batch_size=batch_size))

    a, b = _both(make)
    assert a == b


def test_a_tensor_as_the_dataset():
    a, b = _both(lambda L, D: list(D.DataLoader(L.arange(6).reshape(3, 2), batch_size=2)))
    assert a == b


def test_empty_datasets():
    a, b = _both(lambda L, D: list(D.DataLoader([], batch_size=2)))
    assert a == b == ("list", [])
    assert len(nd.DataLoader([], batch_size=2)) == len(td.DataLoader([], batch_size=2)) == 0
    assert len(nd.TensorDataset(ng.zeros(0, 3))) == len(td.TensorDataset(torch.zeros(0, 3))) == 0
    a, b = _both(lambda L, D: D.ConcatDataset([D.TensorDataset(L.zeros(0)),
                                               D.TensorDataset(L.ones(2))])[0])
    assert a == b
    a, b = _both(lambda L, D: list(D.DataLoader(D.ConcatDataset(
        [D.TensorDataset(L.zeros(0)), D.TensorDataset(L.arange(3))]), batch_size=2)))
    assert a == b


@pytest.mark.parametrize("batch", [
    [(1, "a"), (2, "b")], ["a", "b"], [{"s": "x", "v": 1.5}, {"s": "y", "v": 2.5}],
    [np.uint16(1), np.uint16(2)], [np.uint32(7), np.uint32(8)],
    [np.zeros(2, np.int32), np.zeros(2, np.float32)], [np.zeros(2, np.uint8), np.ones(2, np.int8)],
    [np.array([1, 2], np.uint16), np.array([3, 4], np.uint16)], [(1, (2.5, "s")), (3, (4.5, "t"))],
])
def test_default_collate_structure_and_dtypes(batch):
    assert _plain(nd.default_collate(batch)) == _plain(td.default_collate(batch))


def test_default_collate_of_mixed_dtype_tensors():
    a, b = _both(lambda L, D: D.default_collate([L.zeros(2, dtype=L.int32), L.ones(2)]))
    assert a == b


@pytest.mark.parametrize("lib", ["numpy", "tensor"])
def test_default_collate_shape_mismatch_is_a_runtime_error(lib):
    batch = [np.zeros(2), np.zeros(3)]
    with pytest.raises(RuntimeError):
        td.default_collate([torch.as_tensor(a) for a in batch] if lib == "tensor" else batch)
    ours = [ng.tensor(a) for a in batch] if lib == "tensor" else batch
    with pytest.raises(RuntimeError, match=r"default_collate.*\(2,\).*\(3,\)"):
        nd.default_collate(ours)
    with pytest.raises(RuntimeError):
        list(nd.DataLoader(ours, batch_size=2))


def test_zero_d_tensor_dataset_sample_is_a_view():
    def make(L, D):
        ds = D.TensorDataset(L.zeros(3))
        s = ds[1][0]
        s += 7
        return s, ds.tensors[0]

    a, b = _both(make)
    assert a == b == ("tuple", [("T", "float32", 7.0), ("T", "float32", [0.0, 7.0, 0.0])])


def test_subset_indexed_with_a_list_gives_tensors():
    a, b = _both(lambda L, D: D.Subset(D.TensorDataset(L.arange(5), L.ones(5)), [3, 1])[[0, 1]])
    assert a == b


@pytest.mark.parametrize("kw", [dict(batch_size=2), dict(batch_size=3, shuffle=True),
                                dict(batch_size=2, drop_last=True), dict(batch_size=None)])
def test_loader_sampler_attributes(kw):
    ours, theirs = nd.DataLoader(list(range(5)), **kw), td.DataLoader(list(range(5)), **kw)
    assert type(ours.sampler).__name__ == type(theirs.sampler).__name__
    assert type(ours.batch_sampler).__name__ == type(theirs.batch_sampler).__name__
    if theirs.batch_sampler is not None:
        assert ours.batch_sampler.batch_size == theirs.batch_sampler.batch_size
        assert ours.batch_sampler.drop_last == theirs.batch_sampler.drop_last
        assert ours.batch_sampler.sampler is ours.sampler
        assert len(ours.batch_sampler) == len(theirs.batch_sampler) == len(ours)
    assert sorted(ours.sampler) == sorted(theirs.sampler)
    given = nd.SequentialSampler(range(5))
    assert nd.DataLoader(list(range(5)), 2, sampler=given).sampler is given
    bs = nd.BatchSampler(range(5), 2, False)
    loader = nd.DataLoader(list(range(5)), batch_sampler=bs)
    assert loader.batch_sampler is bs and loader.sampler is None


def test_dataset_base_class():
    for D, L in ((td, torch), (nd, ng)):
        class Pairs(D.Dataset):
            def __len__(self):
                return 2

            def __getitem__(self, i):
                return i

        both = Pairs() + Pairs()
        assert type(both).__name__ == "ConcatDataset" and len(both) == 4 and both[3] == 1
        assert not isinstance([], D.Dataset)
        assert issubclass(D.IterableDataset, D.Dataset)
        assert isinstance(D.TensorDataset(L.zeros(2)), D.Dataset)

        class Bare(D.Dataset):
            pass

        with pytest.raises(NotImplementedError):
            Bare()[0]
    from nodegrad.data.dataset import SizedDataset

    assert isinstance([], SizedDataset)
