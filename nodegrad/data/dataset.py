"""Datasets: the base class, array datasets with vectorised gathering, splits and k-fold indices.

A dataset is anything with ``__len__`` and ``__getitem__`` (:class:`Dataset` is PyTorch's base
class for them, :class:`SizedDataset` the protocol they follow). Array datasets also offer
``gather(indices)``, which returns a whole batch with one fancy-indexing call per array; the
DataLoader uses it when present, so no Python loop runs per sample. ``ConcatDataset``,
``StackDataset`` and ``Subset`` gather through their parts. An :class:`IterableDataset` is a
stream instead (``__iter__`` yields samples), as in PyTorch.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from .. import _backend as B
from ..errors import ShapeError
from ..random import default_generator

np = B.np


T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class SizedDataset(Protocol):
    """What the DataLoader needs of a map-style dataset: a length and one sample per index
    (any such object, a list included, whether or not it subclasses :class:`Dataset`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class Dataset(Generic[T_co]):
    """PyTorch's base class of map-style datasets: subclasses define ``__getitem__`` (and
    usually ``__len__``); ``a + b`` concatenates two datasets (a :class:`ConcatDataset`).

    A plain base class as in PyTorch, so ``isinstance(x, Dataset)`` holds for subclasses only;
    :class:`SizedDataset` is the structural check.
    """

    def __getitem__(self, index) -> T_co:
        raise NotImplementedError("Subclasses of Dataset should implement __getitem__.")

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])


def _has_gather(dataset) -> bool:
    """Whether ``dataset`` has the batch-gathering hook ``gather(indices)`` (a Tensor used as
    a dataset does not: its ``gather`` is the tensor operation; it is indexed per sample)."""
    from ..tensor import Tensor

    return hasattr(dataset, "gather") and not isinstance(dataset, Tensor)


def _host(a) -> np.ndarray:
    """A host NumPy array from an array, a Tensor or a nested list."""
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        return a.numpy()
    if B.is_array(a) and not isinstance(a, np.ndarray):
        return B.backend_of(a).to_host(a)
    return np.asarray(a)


def check_labels(labels: np.ndarray, classes: int, name: str = "labels") -> None:
    """Raise ValueError unless ``labels`` are integers in ``[0, classes)``."""
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers to check against classes={classes}, "
                         f"got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)]
        raise ValueError(f"{name} must lie in [0, {classes}), found {bad.size} outside, "
                         f"e.g. {bad.flat[0]}")


class ArrayDataset(Dataset):
    """Samples are the rows of equally long host arrays, e.g. ``ArrayDataset(x, y)``.

    ``ds[i]`` is the tuple ``(x[i], y[i])``; ``ds.gather(idx)`` the batch ``(x[idx], y[idx])``.
    With ``classes`` the last array holds integer labels and must lie in ``[0, classes)``.
    """

    _empty_ok = False  # an empty ArrayDataset is refused (most likely a bad split)

    def __init__(self, *arrays, classes: int | None = None):
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array")
        self.arrays = tuple(_host(a) for a in arrays)
        for a in self.arrays:
            if a.ndim == 0:
                raise ShapeError("ArrayDataset: arrays need a sample axis, got a 0-d array")
        lengths = [len(a) for a in self.arrays]
        if len(set(lengths)) > 1:
            raise ShapeError(f"ArrayDataset: inputs and labels have different lengths {lengths}")
        if lengths[0] == 0 and not self._empty_ok:
            raise ValueError("ArrayDataset: the dataset is empty")
        self.classes = classes
        if classes is not None:
            check_labels(self.arrays[-1], classes)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def gather(self, indices) -> tuple:
        """The batch of samples ``indices`` as one array per field (vectorised)."""
        return tuple(a[indices] for a in self.arrays)

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return f"{type(self).__name__}({shapes})"


class TensorDataset(ArrayDataset):
    """An ArrayDataset built from nodegrad Tensors (kept as host arrays; the loader moves them).

    Built from Tensors only, its fields keep their dtype through a DataLoader, as in PyTorch;
    built from NumPy arrays, it is an ArrayDataset (float32 batches by default). It may be
    empty, as PyTorch's."""

    _empty_ok = True

    def __init__(self, *tensors, classes: int | None = None):
        from ..tensor import Tensor

        super().__init__(*tensors, classes=classes)
        self.keeps_dtype = all(isinstance(t, Tensor) for t in tensors)

    def __getitem__(self, index):
        """The sample ``index``: Tensors when built from Tensors (as PyTorch's), else arrays."""
        if not getattr(self, "keeps_dtype", False):
            return super().__getitem__(index)
        from ..tensor import Tensor

        if isinstance(index, int | np.integer):  # a 0-d view of a 1-d field, not a copy
            return tuple(Tensor._of(a[index, ...]) for a in self.arrays)
        return tuple(Tensor._of(a[index]) for a in self.arrays)

    @property
    def tensors(self) -> tuple:
        """The fields as CPU Tensors sharing the host arrays (PyTorch's ``tensors``)."""
        from ..tensor import Tensor

        return tuple(Tensor._of(a) for a in self.arrays)


def gathers_arrays(dataset) -> bool:
    """Whether ``dataset.gather`` reads host arrays throughout (array datasets and subsets,
    concatenations and stacks of only such, or a dataset with its own ``gather``).

    The DataLoader batches these with one gather per batch; any other dataset (a ``Dataset``
    subclass with ``__getitem__``, or a combination holding one) is read sample by sample and
    collated as PyTorch does, so its samples keep their dtypes and structure.
    """
    if isinstance(dataset, Subset):
        return gathers_arrays(dataset.dataset)
    if isinstance(dataset, ConcatDataset | StackDataset):
        parts = dataset.datasets
        parts = list(parts.values()) if isinstance(parts, dict) else list(parts)
        return all(gathers_arrays(d) for d in parts)
    return _has_gather(dataset)


def keeps_dtype(dataset) -> bool:
    """Whether the DataLoader's default should keep the dataset's dtypes, as PyTorch does.

    True for a :class:`TensorDataset` of Tensors (they chose their dtype) and for subsets,
    concatenations and stacks made only of such; False for array datasets, whose floating
    fields the loader turns into float32 (integer ones int64) unless told another ``dtype``.
    """
    if isinstance(dataset, TensorDataset):
        return getattr(dataset, "keeps_dtype", False)
    if isinstance(dataset, Subset):
        return keeps_dtype(dataset.dataset)
    if isinstance(dataset, ConcatDataset | StackDataset):
        parts = dataset.datasets
        parts = list(parts.values()) if isinstance(parts, dict) else list(parts)
        return all(keeps_dtype(d) for d in parts)
    return False


class Subset(Dataset):
    """The samples ``indices`` of ``dataset``, still vectorised when the parent gathers.

    ``indices`` is kept as given (PyTorch's attribute: :func:`random_split` gives lists of
    ints, so ``a.indices + b.indices`` joins them); gathers read an int64 copy of it.
    """

    def __init__(self, dataset: Dataset, indices):
        self.dataset = dataset
        self.indices = indices

    @property
    def indices(self):
        """The indices as given (a list, an array or a tensor)."""
        return self._given

    @indices.setter
    def indices(self, indices) -> None:
        if not hasattr(indices, "__len__"):
            indices = list(indices)
        idx = _host(indices)
        if idx.size and idx.dtype.kind not in "iu":  # 1.5 would be truncated to 1 silently
            raise TypeError(f"Subset: indices must be integers, got dtype {idx.dtype}")
        self._given, self._idx = indices, idx.astype(B.int64, copy=False)

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, index):
        """Sample ``index``; a list of positions reads the parent at the list of its indices
        (PyTorch's ``Subset``: a TensorDataset gives tensors); other keys gather the batch."""
        if isinstance(index, int | np.integer):
            return self.dataset[int(self._idx[index])]
        if isinstance(index, list):
            return self.dataset[[int(i) for i in self._idx[index]]]
        return self.gather(index)

    @property
    def classes(self) -> int | None:
        return getattr(self.dataset, "classes", None)

    def gather(self, indices) -> tuple:
        """The batch ``indices`` (positions in this subset)."""
        return _gather(self.dataset, self._idx[indices])

    @property
    def arrays(self) -> tuple:
        """Every field of the subset as host arrays (for fitting preprocessing on it)."""
        return self.gather(np.arange(len(self)))

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])

    def __repr__(self) -> str:
        return f"Subset({len(self)} of {len(self.dataset)})"


def _gather(dataset: Dataset, indices: np.ndarray):
    """The batch ``indices`` of ``dataset``: vectorised when it gathers, else sample by sample."""
    if _has_gather(dataset):
        return dataset.gather(indices)
    return _stack([dataset[int(i)] for i in indices])


class ConcatDataset(Dataset):
    """The datasets one after another (PyTorch's ConcatDataset): index ``i`` reads the dataset
    whose span in ``cumulative_sizes`` holds it; negative indices count from the end.

    ``gather`` reads each part's share of a batch with one call (vectorised when the parts are
    array datasets), so the DataLoader keeps its fast path over a concatenation.
    """

    def __init__(self, datasets: Iterable[Dataset]) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise TypeError("ConcatDataset does not support IterableDataset, got "
                                f"{type(d).__name__}; chain streams with ChainDataset")
        self.cumulative_sizes = self.cumsum(self.datasets)

    @staticmethod
    def cumsum(sequence: Iterable[Dataset]) -> list[int]:
        """The running totals of the datasets' lengths."""
        out, total = [], 0
        for d in sequence:
            total += len(d)
            out.append(total)
        return out

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx: int):
        if not isinstance(idx, int | np.integer):
            raise TypeError(f"ConcatDataset: index must be an int, got {type(idx).__name__}")
        n = len(self)
        if idx < 0:
            if -idx > n:
                raise ValueError("ConcatDataset: absolute value of index should not exceed "
                                 f"dataset length, got index {idx} for length {n}")
            idx = n + idx
        k = bisect.bisect_right(self.cumulative_sizes, idx)
        if k == len(self.datasets):
            raise IndexError(f"ConcatDataset: index {idx} is out of range for length {n}")
        return self.datasets[k][int(idx) - (self.cumulative_sizes[k - 1] if k else 0)]

    def gather(self, indices) -> tuple:
        """The batch ``indices``: each part gathers its share, reassembled in batch order."""
        idx = np.asarray(indices, dtype=B.int64).reshape(-1)
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"ConcatDataset: indices must lie in [-{n}, {n}), got "
                             f"{int(idx[(idx < 0) | (idx >= n)][0])}")
        ends = np.asarray(self.cumulative_sizes)
        which = np.searchsorted(ends, idx, side="right")
        local = idx - np.concatenate([[0], ends[:-1]])[which]
        parts = []
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            parts.append((sel, _gather(self.datasets[int(k)], local[sel])))
        if len(parts) == 1:
            return parts[0][1]
        if all(isinstance(f, np.ndarray) for _, f in parts):  # samples that are one array
            return _scatter(len(idx), [sel for sel, _ in parts], [f for _, f in parts])
        width = len(parts[0][1])
        if not all(isinstance(f, tuple) and len(f) == width
                   and all(isinstance(a, np.ndarray) for a in f) for _, f in parts):
            return _stack([self[int(i)] for i in idx])  # structured samples: one by one
        sels = [sel for sel, _ in parts]
        return tuple(_scatter(len(idx), sels, [f[j] for _, f in parts]) for j in range(width))

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])

    def __repr__(self) -> str:
        return f"ConcatDataset({len(self)} samples from {len(self.datasets)} datasets)"


def _scatter(n: int, sels: list, arrays: list) -> np.ndarray:
    """One batch of ``n`` rows: ``arrays[k]`` placed at the rows ``sels[k]``."""
    a = np.empty((n, *arrays[0].shape[1:]), dtype=np.result_type(*arrays))
    for sel, part in zip(sels, arrays):
        a[sel] = part
    return a


class StackDataset(Dataset):
    """Equally long datasets side by side (PyTorch's StackDataset): sample ``i`` is the tuple
    of their samples ``i`` (positional datasets) or a dict of them (keyword datasets).

    ``gather`` gathers every part (vectorised where they are array datasets).
    """

    def __init__(self, *args: Dataset, **kwargs: Dataset) -> None:
        if args and kwargs:
            raise ValueError("StackDataset: supported either tuple- (via args) or dict- (via "
                             "kwargs) like input/output, but both types are given")
        if not args and not kwargs:
            raise ValueError("StackDataset: at least one dataset should be passed")
        parts = list(args or kwargs.values())
        lengths = [len(d) for d in parts]
        if len(set(lengths)) > 1:
            raise ValueError(f"StackDataset: size mismatch between datasets, lengths {lengths}")
        self._length = lengths[0]
        self.datasets: tuple | dict = args if args else dict(kwargs)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(self.datasets, dict):
            return {k: d[index] for k, d in self.datasets.items()}
        return tuple(d[index] for d in self.datasets)

    def gather(self, indices) -> tuple | dict:
        """The batch ``indices``: each part's batch, as a tuple or a dict like the samples."""
        idx = np.asarray(indices, dtype=B.int64).reshape(-1)
        if isinstance(self.datasets, dict):
            return {k: _gather(d, idx) for k, d in self.datasets.items()}
        return tuple(_gather(d, idx) for d in self.datasets)

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])

    def __repr__(self) -> str:
        return f"StackDataset({len(self)} samples from {len(self.datasets)} datasets)"


class IterableDataset(Dataset):
    """A dataset read as a stream (PyTorch's IterableDataset): ``__iter__`` yields samples.

    For data without random access (files, generators, endless synthetic data). A DataLoader
    reads it in order, so it takes no ``shuffle``, ``sampler`` or ``batch_sampler``; its length
    is the dataset's ``__len__`` when there is one. ``a + b`` chains two streams.
    """

    def __iter__(self) -> Iterator:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")

    def __add__(self, other: IterableDataset) -> ChainDataset:
        return ChainDataset([self, other])


class ChainDataset(IterableDataset):
    """IterableDatasets read one after another, lazily (PyTorch's ChainDataset)."""

    def __init__(self, datasets: Iterable[IterableDataset]) -> None:
        self.datasets = datasets

    def _parts(self) -> Iterator[IterableDataset]:
        for d in self.datasets:
            if not isinstance(d, IterableDataset):
                raise TypeError("ChainDataset only supports IterableDataset, got "
                                f"{type(d).__name__}")
            yield d

    def __iter__(self) -> Iterator:
        for d in self._parts():
            yield from d

    def __len__(self) -> int:
        return sum(len(d) for d in self._parts())  # type: ignore[arg-type]


def _stack(samples: Sequence):
    """Collate samples on the host (the loader's collation where it makes host arrays), with
    the structure of PyTorch's ``default_collate`` but host arrays as leaves.

    Tuple and list samples give a list of fields, transposed field by field (a namedtuple
    keeps its type), dicts a dict per key, strings the group as it is (a tuple within a
    transposed field); the rest (arrays, tensors, numbers) is stacked along a new first axis.
    """
    first = samples[0]
    if isinstance(first, Mapping):
        return {k: _stack([v[k] for v in samples]) for k in first}
    if isinstance(first, str | bytes):
        return samples
    if isinstance(first, tuple | list):
        fields = [_stack(f) for f in _transposed(samples)]
        if isinstance(first, tuple) and hasattr(first, "_fields"):  # namedtuple
            return type(first)(*fields)
        return fields
    return stack_samples([_host(v) for v in samples], "batching samples")


def _transposed(values: Sequence) -> list[tuple]:
    """The fields of equally long sequences, each as a tuple over the samples."""
    size = len(values[0])
    if any(len(v) != size for v in values):
        raise RuntimeError("batching samples: each element in list of batch should be of "
                           f"equal size, got lengths {sorted({len(v) for v in values})}")
    return list(zip(*values))


class StackError(ShapeError, RuntimeError):
    """Samples of different shapes stacked into one batch: a ShapeError (a ValueError) that is
    also the RuntimeError PyTorch's ``default_collate`` raises."""


def promote(a, b) -> np.dtype:
    """The dtype of a batch mixing dtypes ``a`` and ``b``, as ``torch.stack`` promotes them
    (int32 with float32 gives float32); dtypes torch does not promote (uint16, ...) as NumPy."""
    from ..dtypes import torch_promote_types

    a, b = np.dtype(a), np.dtype(b)
    if a == b:
        return a
    try:
        return np.dtype(torch_promote_types(a, b))
    except TypeError:
        return np.promote_types(a, b)


def stack_samples(arrays: Sequence, what: str) -> np.ndarray:
    """``np.stack(arrays)`` with torch's dtype promotion; samples of different shapes raise a
    :class:`StackError` naming ``what`` and the first two shapes that differ."""
    dtypes = {a.dtype for a in arrays if isinstance(a, np.ndarray | np.generic)}
    dtype = None
    if len(dtypes) > 1:
        dtype = dtypes.pop()
        for d in dtypes:
            dtype = promote(dtype, d)
    try:
        return np.stack(arrays) if dtype is None else np.stack(arrays, dtype=dtype,
                                                                casting="unsafe")
    except ValueError:
        shapes = [np.shape(a) for a in arrays]
        k = next((i for i, sh in enumerate(shapes) if sh != shapes[0]), None)
        if k is None:
            raise
        raise StackError(f"{what}: each sample must have the same shape to stack them into a "
                         f"batch, got {shapes[0]} at entry 0 and {shapes[k]} at entry {k}; "
                         "pad them or pass a collate_fn") from None


def _rng(seed) -> np.random.Generator:
    """A NumPy generator from an int, a NumPy Generator, an ng.Generator, or None (ng's default)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if hasattr(seed, "rng") and isinstance(seed.rng, np.random.Generator):
        return seed.rng
    if seed is None:
        return default_generator("cpu").rng
    try:
        return np.random.default_rng(seed)
    except TypeError as e:
        raise TypeError("seed/generator must be an int, a NumPy Generator, an ng.Generator or "
                        f"None, got {type(seed).__module__}.{type(seed).__qualname__}") from e
    except ValueError as e:
        raise ValueError(f"seed/generator: {seed!r} is not a valid seed ({e})") from e


def _fold_assignment(n: int, k: int, rng: np.random.Generator, stratify=None) -> np.ndarray:
    """A fold number per sample: folds differ in size by at most one (and per class too)."""
    perm = rng.permutation(n)
    if stratify is not None:
        labels = _host(stratify)
        if len(labels) != n:
            raise ShapeError(f"stratify has {len(labels)} labels for {n} samples")
        perm = perm[np.argsort(labels[perm], kind="stable")]
    fold = np.empty(n, dtype=B.int64)
    fold[perm] = np.arange(n) % k
    return fold


def random_split(dataset: Dataset, lengths: Sequence[int | float], generator=None, *,
                 seed=None) -> list[Subset]:
    """Disjoint random Subsets of the given lengths (ints summing to len, or fractions to 1).

    ``generator`` (PyTorch's name) or ``seed``: an int, a NumPy Generator or an
    ``ng.Generator`` (None: ng's default one).
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("random_split: pass generator or seed, not both")
        seed = generator
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) for x in lengths):
        bad = [i for i, f in enumerate(lengths) if not 0 <= f <= 1]
        if bad:
            raise ValueError(f"random_split: fraction at index {bad[0]} is not between 0 and "
                             f"1, got {lengths[bad[0]]}")
        if abs(sum(lengths) - 1) > 1e-6:
            raise ValueError(f"random_split: fractions must sum to 1, got {sum(lengths)}")
        counts = [int(np.floor(f * n)) for f in lengths]
        for i in range(n - sum(counts)):  # hand out the remainder one by one
            counts[i % len(counts)] += 1
        lengths = counts
    if any(x < 0 for x in lengths) or sum(lengths) != n:
        raise ValueError(f"random_split: lengths {lengths} must be >= 0 and sum to {n}")
    perm = _rng(seed).permutation(n)
    bounds = np.cumsum([0] + lengths)
    return [Subset(dataset, perm[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]


def train_val_split(dataset: Dataset, val_fraction: float = 0.1, seed=0,
                    stratify=None) -> tuple[Subset, Subset]:
    """A reproducible (train, validation) split; ``stratify`` (labels) keeps class proportions."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction}")
    n = len(dataset)
    n_val = int(round(val_fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"train_val_split: {n} samples give an empty split at {val_fraction}")
    rng = _rng(seed)
    if stratify is None:
        perm = rng.permutation(n)
        return Subset(dataset, np.sort(perm[n_val:])), Subset(dataset, np.sort(perm[:n_val]))
    labels = _host(stratify)
    if len(labels) != n:
        raise ShapeError(f"stratify has {len(labels)} labels for {n} samples")
    perm = rng.permutation(n)
    perm = perm[np.argsort(labels[perm], kind="stable")]  # shuffled within each class
    # evenly spaced picks from the class-sorted order go to validation
    i = np.arange(n)
    take = (i + 1) * n_val // n != i * n_val // n  # exactly n_val evenly spaced positions
    val = np.zeros(n, dtype=bool)
    val[perm[take]] = True
    return Subset(dataset, np.flatnonzero(~val)), Subset(dataset, np.flatnonzero(val))


def kfold_indices(n: int, k: int = 5, seed=0, stratify=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` pairs ``(train_idx, val_idx)``; each sample is validated exactly once.

    Folds are random (``seed``) and differ in size by at most one; with ``stratify`` (labels)
    each class is spread evenly over the folds.
    """
    if k < 2 or k > n:
        raise ValueError(f"kfold_indices: need 2 <= k <= n, got k={k}, n={n}")
    fold = _fold_assignment(n, k, _rng(seed), stratify)
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]
