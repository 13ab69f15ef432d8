"""DataLoader: seeded, vectorised minibatches, made in worker processes or in the caller, moved
to the device ahead of use by a thread.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the augmentation of
batch ``b`` uses a generator drawn from ``(seed, e, b)``, so a loader is a pure function of its
seed and position: ``state_dict()`` records that position and a restored loader yields the
remaining batches of the epoch bit-identically, with or without prefetching or workers. The
position is also kept as a count of the epoch's order consumed over all ranks, so a state saved
mid-epoch on N ranks resumes on M ranks (or one process): the rest of the order is re-split.

PyTorch's options work too: ``sampler=`` (any Sampler; nodegrad's are read as one index array),
``batch_sampler=``, ``collate_fn=``, ``batch_size=None``, an :class:`IterableDataset`, and
``num_workers=`` with ``prefetch_factor``, ``persistent_workers``, ``worker_init_fn``,
``timeout``, ``multiprocessing_context`` and ``in_order`` (:mod:`nodegrad.data.worker`). A
sampler or batch sampler keeps the vectorised gathering; a ``collate_fn``, ``batch_size=None``,
a dataset without ``gather`` or an IterableDataset read sample by sample.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import _backend as B
from ..random import Generator, default_generator
from ..tensor import Tensor, get_default_device
from .collate import collate_samples, default_convert
from .dataset import Dataset, IterableDataset, _stack, gathers_arrays, keeps_dtype
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, _seeded
from .worker import WorkerPool, get_worker_info, start_context, worker_seed

np = B.np
_END = object()

__all__ = ["DataLoader", "get_worker_info"]


def _numeric(dt) -> bool:
    """Whether a host array of dtype ``dt`` becomes a tensor (numbers and bools, bfloat16 too)."""
    return dt.kind in "biufc" or dt == B.bfloat16


class _DefaultBatchSize(int):
    """The default batch size, told apart from one given (which a batch_sampler excludes)."""


_BATCH = _DefaultBatchSize(1)  # PyTorch's default


class _InfiniteConstantSampler(Sampler):
    """PyTorch's sampler of an IterableDataset: ``None`` forever (the stream sets the order)."""

    def __iter__(self) -> Iterator[None]:
        while True:
            yield None


def _listed(fields):
    """A gathered batch in ``default_collate``'s structure: tuples (not namedtuples) become
    lists, at any depth, dicts keep their keys."""
    if type(fields) is tuple:  # (the usual flat batch without a call per field)
        return [f if type(f) is not tuple and type(f) is not dict else _listed(f)
                for f in fields]
    if type(fields) is dict:
        return {k: _listed(v) for k, v in fields.items()}
    return fields


def _moved(x, device: str):
    """``x`` with its Tensors moved to ``device``; the rest (NumPy arrays included) and the
    containers as they are (``x`` itself where nothing moves)."""
    if isinstance(x, Tensor):
        return x if x.device == device else x.to(device)
    if isinstance(x, tuple | list | dict):
        items = list(x.values()) if isinstance(x, dict) else list(x)
        moved = [_moved(v, device) for v in items]
        if all(a is b for a, b in zip(moved, items)):
            return x
        if isinstance(x, dict):
            return _rebuilt(x, dict(zip(x.keys(), moved)))
        if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
            return type(x)(*moved)
        return _rebuilt(x, moved)
    return x


def _rebuilt(like, values):
    """``values`` in a container of ``like``'s type where one can be built from them."""
    try:
        return type(like)(values)
    except TypeError:
        return values


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _Fetcher:
    """How a batch is made on the host: read (one gather, or sample by sample), collated and
    transformed. The same object works in the caller and, pickled, in every worker process."""

    __slots__ = ("dataset", "batch_size", "drop_last", "vectorised", "collate_fn", "transform")

    def __init__(self, dataset, batch_size: int | None, drop_last: bool, vectorised: bool,
                 collate_fn: Callable | None, transform: Callable | None) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.vectorised = vectorised
        self.collate_fn = collate_fn
        self.transform = transform

    def batch(self, idx, seed: int | None, epoch: int, b: int):
        """Batch ``b`` of ``epoch`` from ``idx``: an index array, or one int (no batching)."""
        if isinstance(idx, int):
            sample = self.dataset[idx]
            fields = self.collate_fn(sample) if self.collate_fn else _listed(sample)
        elif self.vectorised:
            fields = _listed(self.dataset.gather(idx))
        else:
            many = getattr(self.dataset, "__getitems__", None)  # PyTorch's batched read
            samples = (many([int(i) for i in idx]) if many is not None
                       else [self.dataset[int(i)] for i in idx])
            fields = self.collate_fn(samples) if self.collate_fn else _stack(samples)
        return self.transformed(fields, seed, (epoch, 1, b))

    def next_batch(self, it: Iterator) -> tuple | None:
        """``(batch,)`` of the next samples of a stream, untransformed; None at its end."""
        size = self.batch_size
        if size is None:
            try:
                sample = next(it)
            except StopIteration:
                return None
            return (self.collate_fn(sample) if self.collate_fn else sample,)
        samples = list(itertools.islice(it, size))
        if not samples or len(samples) < size and self.drop_last:
            return None
        return (self.collate_fn(samples) if self.collate_fn else _stack(samples),)

    def skip(self, it: Iterator, batches: int) -> None:
        """Read past ``batches`` batches of a stream (a resume)."""
        for _ in itertools.islice(it, batches * (self.batch_size or 1)):
            pass

    def transformed(self, fields, seed: int | None, key: tuple):
        """``fields`` with ``transform`` applied to the input (the first field), if any, with
        a generator drawn from ``(seed, *key)``."""
        if self.transform is None:
            return fields
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
        if isinstance(fields, np.ndarray):
            return self.transform(fields, rng=rng)
        if isinstance(fields, Mapping):
            raise TypeError("DataLoader: transform applies to the first field of a tuple batch, "
                            f"got a batch of type {type(fields).__name__}")
        if isinstance(fields, tuple) and hasattr(fields, "_fields"):  # namedtuple: its type
            return fields._replace(**{fields._fields[0]: self.transform(fields[0], rng=rng)})
        fields = list(fields)
        fields[0] = self.transform(fields[0], rng=rng)
        return fields


class DataLoader:
    """Minibatches of ``dataset`` as nodegrad tensors on ``device``.

    Args:
        dataset: an ArrayDataset/Subset/ConcatDataset/StackDataset (gathered with one indexing
            call per batch and array), any object with ``__len__`` and ``__getitem__``
            (gathered sample by sample), or an :class:`IterableDataset` (read as a stream).
        batch_size: samples per batch (default 1, as PyTorch's; the last one may be smaller unless
            ``drop_last``). None turns batching off, as in PyTorch: each sample is yielded as it
            is (through ``collate_fn`` if given), without a batch axis.
        shuffle: a fresh seeded permutation every epoch; otherwise the dataset order.
        drop_last: drop the final incomplete batch.
        seed: base seed of shuffling and augmentation (a non-negative int); ``generator``
            (an ng.Generator) supplies one instead; with neither, ng's default generator does
            (``ng.manual_seed``). Other values are refused here, not at the first epoch.
        collate_fn: builds a batch from a list of samples (switches to per-sample gathering),
            e.g. :func:`default_collate`; its batch is returned as made (NumPy arrays stay
            arrays, as in PyTorch), its tensors moved to ``device``.
        transform: applied to the input batch (the first field) on the host as
            ``transform(x, rng=rng)``, e.g. an augmentation from :mod:`nodegrad.data.augment`.
        prefetch: batches prepared ahead by a background thread (0: none, in the caller).
            None (the default) means 2 on a CUDA device, where the copies overlap GPU compute,
            and 0 on the CPU, where a thread only competes with the model for the GIL.
        device: where batches land (default: ``ng.get_default_device()``, the CPU unless set);
            floating host fields become ``dtype``, integer ones int64. ``dtype=None`` (the
            default) keeps the dtypes of a :class:`TensorDataset` and of a stream's samples (as
            PyTorch does) and gives float32 for plain array datasets (and a stream with a
            ``transform``). Without ``collate_fn`` the samples
            of any other map-style dataset (a ``Dataset`` subclass, or a Subset/concatenation
            holding one) are collated by :func:`default_collate` (``batch_size=None``:
            :func:`default_convert`), keeping their dtypes as PyTorch does, unless ``dtype`` or
            ``transform`` is given; streams are batched with ``default_collate``'s structure
            (a sample that is one array gives one tensor, nested tuples are transposed field by
            field) on host arrays.
        sampler: the indices of each epoch and their order: a :class:`Sampler` (e.g.
            :class:`RandomSampler`, :class:`WeightedRandomSampler`), any iterable of indices
            with ``__len__`` (its ``set_epoch(epoch)`` is called first if it has one), or an
            object with ``indices(epoch)`` such as :class:`nodegrad.distributed.
            DistributedSampler`; excludes ``shuffle``.
        batch_sampler: yields each batch's indices, e.g. a :class:`BatchSampler`; excludes
            ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last``.
        num_workers: worker processes making whole batches (0: in the caller). The main
            process keeps the sampler and sends each batch's indices; workers gather, collate
            and transform, and batches come back in order. An IterableDataset is read by every
            worker: split it with :func:`get_worker_info` (one that does not is duplicated).
        pin_memory, pin_memory_device: accepted for PyTorch code and ignored (a no-op on the
            CPU; nodegrad's backend has no pinned host copy to use on CUDA).
        timeout: seconds to wait for a batch from the workers before raising (0: forever; a
            worker that dies raises at once either way).
        worker_init_fn: called as ``worker_init_fn(worker_id)`` in each worker once it is
            seeded, before it makes batches.
        multiprocessing_context: a start method ("fork", "forkserver", "spawn") or a context;
            None: forkserver where available (Linux), else the platform's default.
        prefetch_factor: batches requested ahead per worker (default 2; only with workers).
        persistent_workers: keep the workers from one epoch to the next.
        in_order: False yields the batches of workers as they come (a slow batch does not hold
            up the others); a resume still yields each batch of the epoch once.

    ``len(loader)`` is the number of batches per epoch. Iterating starts the next epoch (or
    resumes the position restored by :meth:`load_state_dict`); nodegrad's random samplers
    draw one seed per epoch, which the state records, so a resumed epoch has the same order.
    """

    def __init__(self, dataset: Dataset | IterableDataset, batch_size: int | None = _BATCH,
                 shuffle: bool = False, drop_last: bool = False, seed: int | None = None,
                 generator=None, collate_fn: Callable | None = None,
                 transform: Callable | None = None, prefetch: int | None = None, device=None,
                 dtype=None, sampler=None, batch_sampler=None, num_workers: int = 0,
                 pin_memory: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context=None, *, prefetch_factor: int | None = None,
                 persistent_workers: bool = False, pin_memory_device: str = "",
                 in_order: bool = True):
        self._check_workers(num_workers, timeout, worker_init_fn, multiprocessing_context,
                            prefetch_factor, persistent_workers, pin_memory, pin_memory_device,
                            in_order)
        self._check_seed(seed, generator)
        self._iterable = isinstance(dataset, IterableDataset)
        if self._iterable:
            if shuffle not in (False, None):
                raise ValueError("DataLoader with IterableDataset: expected unspecified shuffle "
                                 f"option, but got shuffle={shuffle}")
            if sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                                 f"option, but got sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified "
                                 f"batch_sampler option, but got batch_sampler={batch_sampler}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle (the "
                             "sampler sets the order; the two exclude each other)")
        if batch_sampler is not None:
            if batch_size is not _BATCH and batch_size != 1 or shuffle or sampler is not None \
                    or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with "
                                 "batch_size, shuffle, sampler, and drop_last")
            batch_size = None
        elif batch_size is None:
            if drop_last:
                raise ValueError("DataLoader: batch_size=None option disables auto-batching and "
                                 "is mutually exclusive with drop_last")
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
                or batch_size < 1:
            raise ValueError("DataLoader: batch_size must be an int >= 1 or None, got "
                             f"{batch_size!r}")
        self.backend = B.get_backend(get_default_device() if device is None else device)
        if prefetch is None:
            prefetch = 0 if self.backend.device_id is None else 2
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        self._sampler = sampler
        self._batch_sampler = batch_sampler
        self.dataset = dataset
        if not self._iterable and sampler is None and batch_sampler is None:
            len(dataset)  # type: ignore[arg-type]  # no __len__: needs a sampler (TypeError)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        self.transform = transform
        self.prefetch = prefetch
        self.dtype = None if dtype is None else B.as_dtype(dtype)
        # PyTorch's loader keeps a TensorDataset's dtypes, and a stream's (its samples are the
        # user's arrays, collated as default_collate does); plain array datasets become float32
        # (integers int64)
        self._keep = dtype is None and (keeps_dtype(dataset) or (self._iterable
                                                                  and transform is None))
        self._float = None if self._keep else B.float32 if dtype is None else self.dtype
        # whole batches by index: a sampler or batch sampler keeps this, per-sample options not
        batching = self.batch_size is not None or batch_sampler is not None
        self._vectorised = (collate_fn is None and not self._iterable
                            and gathers_arrays(dataset) and batching)
        # samples of a map-style dataset read one by one (a Dataset subclass) are collated as
        # PyTorch does (default_collate, or default_convert without batching): they keep their
        # dtypes and structure; the host path (float32 batches) stays for streams and where a
        # dtype or transform asks for host arrays
        self._collate = collate_fn
        if collate_fn is None and dtype is None and transform is None and (
                self._iterable or not gathers_arrays(dataset)):
            self._collate = collate_samples if batching else default_convert
        self.num_workers = int(num_workers)
        self.prefetch_factor = (2 if prefetch_factor is None else int(prefetch_factor)) \
            if num_workers else None
        self.persistent_workers = bool(persistent_workers)
        self.worker_init_fn = worker_init_fn
        self.timeout = float(timeout)
        self.multiprocessing_context = (start_context(multiprocessing_context)
                                        if num_workers else None)
        self.generator = generator  # PyTorch's attribute (the loader's seed is drawn from it)
        self.pin_memory = bool(pin_memory)  # no pinned host copy in the backend: ignored
        self.pin_memory_device = pin_memory_device
        self.in_order = bool(in_order)
        self._pool: WorkerPool | None = None  # persistent workers, between epochs
        if seed is None and (shuffle or transform is not None or num_workers):
            if generator is None:
                generator = default_generator("cpu")
            seed = int(generator.integers(0, 2**63 - 1, ()))
        self.seed = None if seed is None else int(seed)
        self._epoch = 0
        self._batch = 0  # batches of the current epoch already handed out
        # after a mid-epoch resume on another number of ranks: in epoch _split[0] this loader
        # reads the epoch's order from global position _split[1] on, as batches _split[2], ...
        self._split: tuple[int, int, int] | None = None
        self._resume = False
        self._active: object | None = None
        self._drawn: tuple[int, int | None] | None = None  # (epoch, seed) of a seeded sampler
        self._ended = False  # a stream (IterableDataset) ran out in the current epoch
        self._ahead: set[int] = set()  # batches handed out past _batch (in_order=False)
        self._wpos: tuple[int, list[int]] | None = None  # a stream's batches per worker
        self._default_sampler = self._default_batch_sampler = None
        if sampler is None and batch_sampler is None:
            # PyTorch's attributes; the default order is drawn from the loader's seed instead
            self._default_sampler = (_InfiniteConstantSampler() if self._iterable
                                     else RandomSampler(dataset, generator=self.generator)
                                     if self.shuffle else SequentialSampler(dataset))
        if batch_sampler is None and self.batch_size is not None:
            self._default_batch_sampler = BatchSampler(self.sampler, self.batch_size,
                                                       self.drop_last)

    @property
    def sampler(self):
        """The sampler given, else PyTorch's default one (a SequentialSampler, a RandomSampler
        with ``shuffle``), which describes the order: the loader draws a shuffled order from
        its seed, as :meth:`state_dict` records it."""
        return self._sampler if self._sampler is not None else self._default_sampler

    @sampler.setter
    def sampler(self, value) -> None:
        self._sampler = value

    @property
    def batch_sampler(self):
        """The batch sampler given, else PyTorch's default (a :class:`BatchSampler` of
        :attr:`sampler` with ``batch_size`` and ``drop_last``; None without batching)."""
        if self._batch_sampler is not None:
            return self._batch_sampler
        return self._default_batch_sampler

    @batch_sampler.setter
    def batch_sampler(self, value) -> None:
        self._batch_sampler = value

    @staticmethod
    def _check_seed(seed, generator) -> None:
        """``seed``: a non-negative int or None; ``generator``: an ng.Generator or None."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
                raise TypeError("DataLoader: seed must be a non-negative int or None, got "
                                f"{seed!r} ({type(seed).__name__})")
            if seed < 0:
                raise ValueError(f"DataLoader: seed must be a non-negative int or None, got "
                                 f"{seed}")
        if generator is not None and not isinstance(generator, Generator):
            hint = (" (an int seed goes in seed=)" if isinstance(generator, int | np.integer)
                    else "")
            raise TypeError("DataLoader: generator must be an ng.Generator or None, got "
                            f"{type(generator).__module__}.{type(generator).__qualname__}"
                            f"{hint}")

    @staticmethod
    def _check_workers(num_workers, timeout, worker_init_fn, context, prefetch_factor,
                       persistent_workers, pin_memory, pin_memory_device, in_order) -> None:
        """PyTorch's checks of the worker options (its messages)."""
        if isinstance(num_workers, bool) or not isinstance(num_workers, int | np.integer) \
                or num_workers < 0:
            raise ValueError("DataLoader: num_workers option should be non-negative; use "
                             f"num_workers=0 to disable multiprocessing, got {num_workers!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValueError(f"DataLoader: timeout option should be non-negative, got "
                             f"{timeout!r}")
        if prefetch_factor is not None:
            if not num_workers:
                raise ValueError("DataLoader: prefetch_factor option could only be specified in "
                                 "multiprocessing; let num_workers > 0 to enable "
                                 "multiprocessing, otherwise set prefetch_factor to None")
            if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) \
                    or prefetch_factor < 1:
                raise ValueError("DataLoader: prefetch_factor option should be an int >= 1 "
                                 f"(batches requested ahead per worker), got "
                                 f"{prefetch_factor!r}")
        if persistent_workers and not num_workers:
            raise ValueError("DataLoader: persistent_workers option needs num_workers > 0")
        if context is not None and not num_workers:
            raise ValueError("DataLoader: multiprocessing_context can only be used with "
                             "multi-process loading (num_workers > 0), but got "
                             f"num_workers={num_workers}")
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError("DataLoader: worker_init_fn should be a callable taking the worker "
                            f"id, got {type(worker_init_fn).__name__}")
        for name, value in (("pin_memory", pin_memory), ("persistent_workers",
                                                         persistent_workers),
                            ("in_order", in_order)):
            if not isinstance(value, bool | np.bool_):
                raise TypeError(f"DataLoader: {name} should be a bool, got {value!r}")
        if not isinstance(pin_memory_device, str):
            raise TypeError("DataLoader: pin_memory_device should be a str, got "
                            f"{pin_memory_device!r}")

    # --- size and position --------------------------------------------------------------------
    @property
    def _n(self) -> int | None:
        """Samples per epoch (with a batch_sampler: batches; None: a stream), read now: as
        PyTorch's samplers do, each epoch reads the dataset's current length, so samples added
        to a dataset between epochs are read. A sampler without ``__len__`` raises TypeError."""
        if self._batch_sampler is not None:
            return len(self._batch_sampler)
        if self._iterable:
            return None
        return len(self.dataset) if self._sampler is None else len(self._sampler)

    def _known_n(self) -> int | None:
        """:attr:`_n`, or None where a sampler or batch sampler has no ``__len__`` (it is
        iterated all the same, as in PyTorch; only ``len(loader)`` needs the length)."""
        try:
            return self._n
        except TypeError:
            if self._sampler is None and self._batch_sampler is None:
                raise
            return None

    def _known_len(self) -> int | None:
        """``len(self)``, or None where it is unknown (a stream or sampler without length)."""
        if self._iterable or self._known_n() is None:
            return None
        return len(self)

    def __len__(self) -> int:
        """The number of batches per epoch (of the current one, after a resume re-split it)."""
        if self._iterable:
            try:
                n, start, first = len(self.dataset), 0, 0  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(f"DataLoader: the length of {type(self.dataset).__name__}, an "
                                "IterableDataset without __len__, is unknown") from None
        elif self._batch_sampler is not None:
            return self._n
        else:
            start, first = self._split_of(self._epoch)
            n = self._n if not start else self._share(start)
        if self.batch_size is None:
            return first + n
        full, rest = divmod(n, self.batch_size)
        return first + full + (1 if rest and not self.drop_last else 0)

    def _batches_of(self, n: int) -> int:
        """How many batches ``n`` indices make."""
        if self.batch_size is None:
            return n
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _split_of(self, epoch: int) -> tuple[int, int]:
        """(global start position, first batch index) of ``epoch``'s re-split part, or (0, 0)."""
        if self._split is not None and self._split[0] == epoch:
            return self._split[1], self._split[2]
        return 0, 0

    def _world(self) -> int:
        """How many ranks share each epoch's order (1 without a distributed sampler)."""
        return int(getattr(self._sampler, "num_replicas", 1)) if self._sampler is not None else 1

    def _share(self, start: int) -> int:
        """Samples this loader reads of an epoch's order from global position ``start`` on."""
        if self._sampler is None:
            return max(self._n - start, 0)
        return int(self._sampler.size(start))

    def _order_key(self) -> dict | None:
        """What fixes the epoch's global order (None: a sampler that cannot re-split it)."""
        if self._iterable or self._batch_sampler is not None:
            return None
        if self._sampler is None:
            return {"num_samples": self._n, "shuffle": self.shuffle,
                    "seed": self.seed if self.shuffle else None}
        if hasattr(self._sampler, "order_state") and hasattr(self._sampler, "size"):
            return self._sampler.order_state()
        return None

    @property
    def epoch(self) -> int:
        """The epoch the next (or current) iteration draws its order from."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch``."""
        self._epoch, self._batch, self._resume, self._split = int(epoch), 0, True, None
        self._ended, self._ahead, self._wpos = False, set(), None

    def _epoch_done(self) -> bool:
        """Whether the epoch's batches are all handed out (ran out, or as many as its length:
        a sampler may yield fewer indices than its __len__ says)."""
        n = self._known_len()
        return self._ended or n is not None and self._batch >= n

    def state_dict(self) -> dict:
        """The position within the epoch, as plain data for a checkpoint.

        ``position`` counts the samples of the epoch's global order consumed over all ranks
        (each rank reads every ``world``-th of them), what a resume on another number of ranks
        continues from. With one of nodegrad's random samplers, ``sampler_seed`` is the seed of
        the epoch's order; over an IterableDataset, a resume skips the ``batch`` batches read
        (the same position when the stream repeats itself), with workers ``workers["batches"]``
        of each worker's share. ``ahead`` lists batches past ``batch`` already handed out (by
        workers with ``in_order=False``), which a resume skips. ``generators`` holds the state
        of the sampler's own ``ng.Generator`` (and a batch sampler's), which draws the orders
        of the epochs to come."""
        epoch, batch = self._epoch, self._batch
        ahead = sorted(self._ahead)
        if self._epoch_done():
            epoch, batch, ahead = epoch + 1, 0, []
        start, first = self._split_of(epoch)
        if batch == 0:
            start = first = 0
        state = {"seed": self.seed, "epoch": epoch, "batch": batch,
                 "num_samples": self._known_n(),
                 "batch_size": self.batch_size, "shuffle": self.shuffle,
                 "drop_last": self.drop_last, "world": self._world(), "start": start,
                 "first": first,
                 "position": start + self._world() * (batch - first) * (self.batch_size or 1),
                 "order": self._order_key()}
        if batch and self._drawn is not None and self._drawn[0] == epoch:
            state["sampler_seed"] = self._drawn[1]
        if ahead:
            state["ahead"] = ahead
        if self._iterable and batch and self.num_workers and self._wpos is not None \
                and self._wpos[0] == epoch:
            state["workers"] = {"num_workers": self.num_workers, "batches": list(self._wpos[1])}
        if self._sampler is not None and hasattr(self._sampler, "state_dict"):
            state["sampler"] = self._sampler.state_dict()
        if gens := {k: g.get_state() for k, g in self._sampler_generators().items()}:
            state["generators"] = gens
        return state

    def _sampler_generators(self) -> dict[str, Generator]:
        """The CPU ``ng.Generator`` of the sampler, the batch sampler and the batch sampler's
        sampler, by role: what draws the next epochs' orders, so a state holds where they are."""
        out = {}
        for key, obj in (("sampler", self._sampler), ("batch_sampler", self._batch_sampler),
                         ("batch_sampler.sampler", getattr(self._batch_sampler, "sampler", None))):
            g = getattr(obj, "generator", None)
            if isinstance(g, Generator) and g.backend.device_id is None:
                out[key] = g
        return out

    def _load_generators(self, state: dict) -> None:
        """The samplers' generators as ``state`` recorded them (it has none for a sampler
        without its own generator, which draws from ng's default one)."""
        saved = state.get("generators") or {}
        for key, g in self._sampler_generators().items():
            if key in saved:
                g.set_state(saved[key])

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position: the next iteration yields the rest of that epoch.

        A state from another layout (number of ranks, per-rank batch size, or a distributed
        sampler against a plain shuffling loader) continues the same global order: the samples
        not yet consumed are re-split over this loader's ranks, so each is still read once."""
        mine = {"num_samples": self._known_n(), "batch_size": self.batch_size,
                "shuffle": self.shuffle,
                "drop_last": self.drop_last,
                "sampler": self._sampler.state_dict() if hasattr(self._sampler, "state_dict")
                else None}
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if self._iterable and batch:
            theirs = state.get("workers")
            n = theirs["num_workers"] if theirs else 0
            if n != self.num_workers:
                raise ValueError(f"load_state_dict: num_workers is {self.num_workers} here but "
                                 f"{n} in the state; a stream's mid-epoch position holds only "
                                 "for as many workers (each reads its own share)")
        if all(state.get(k) == v for k, v in mine.items()):  # the same layout: exact
            self.seed = state["seed"]
            start, first = int(state.get("start", 0)), int(state.get("first", 0))
            self._split = (epoch, start, first) if start or first else None
            self._epoch, self._batch, self._resume, self._ended = epoch, batch, True, False
            self._drawn = (epoch, state["sampler_seed"]) if "sampler_seed" in state else None
            self._ahead = {int(b) for b in state.get("ahead", ())}
            workers = state.get("workers") if self._iterable and batch else None
            self._wpos = (epoch, [int(k) for k in workers["batches"]]) if workers else None
            self._load_generators(state)
            return
        if state.get("ahead"):
            raise ValueError("load_state_dict: the state has batches handed out out of order "
                             "(in_order=False), which resume only on the same layout; "
                             f"{next(k for k, v in mine.items() if state.get(k) != v)} differs")
        theirs, ours = state.get("order"), self._order_key()
        if state.get("drop_last") != self.drop_last:
            key, a, b = "drop_last", self.drop_last, state.get("drop_last")
        elif theirs is None or ours is None:
            key = next(k for k, v in mine.items() if state.get(k) != v)
            if batch == 0 and self._sampler is not None:  # a fresh epoch: the sampler's order
                key = "shuffle" if state.get("shuffle") != self.shuffle else None
            a, b = mine.get(key), state.get(key)
        elif (theirs["num_samples"], theirs["shuffle"]) != (ours["num_samples"], ours["shuffle"]):
            key, a, b = "order", ours, theirs
        else:
            key = None
        if key is not None:
            hint = ("; a state without the epoch's global position (or from a sampler that "
                    "cannot re-split it) resumes mid-epoch only on as many ranks"
                    if self._sampler is not None or "sampler" in state else "")
            raise ValueError(f"load_state_dict: {key} is {a} here but {b} in the state; the "
                             f"batch order would differ{hint}")
        self.seed = state["seed"]  # the augmentation stream goes on; the order's seed is theirs
        if self._sampler is None:
            if self.shuffle:
                self.seed = theirs["seed"]
        elif theirs is not None and theirs["seed"] is not None:
            self._sampler.seed = int(theirs["seed"])
        self._split = (epoch, int(state["position"]), batch) if batch else None
        self._epoch, self._batch, self._resume, self._ended = epoch, batch, True, False
        self._ahead, self._wpos = set(), None
        self._load_generators(state)

    # --- batches --------------------------------------------------------------------------------
    def _order(self, epoch: int, first: int) -> np.ndarray | list[np.ndarray]:
        """The indices this loader reads in ``epoch`` (from the re-split position on, if any);
        with a batch sampler, the list of the epoch's batches. ``first``: the batch to start
        at (past 0, a resume, which reuses the epoch's recorded sampler seed)."""
        start = self._split_of(epoch)[0]
        src = self._batch_sampler if self._batch_sampler is not None else self._sampler
        for obj in (src, getattr(self._batch_sampler, "sampler", None)):
            if obj is not None and not hasattr(obj, "indices") and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        if src is not None and _seeded(src):  # nodegrad's samplers: the order of one seed
            resumed = first and self._drawn is not None and self._drawn[0] == epoch
            seed = self._drawn[1] if resumed else src._draw()
            self._drawn = (epoch, seed)
            return src._order(seed)
        if self._batch_sampler is not None:
            return [np.asarray(b, dtype=B.int64).reshape(-1) for b in self._batch_sampler]
        if self._sampler is not None:
            # a sampler whose set_epoch was called draws that epoch's order (PyTorch's use)
            epoch = getattr(self._sampler, "epoch_of", lambda e: e)(epoch)
            if start:
                return np.asarray(self._sampler.indices(epoch, start))
            if hasattr(self._sampler, "indices"):
                return np.asarray(self._sampler.indices(epoch))
            return np.fromiter(iter(self._sampler), dtype=B.int64)
        if not self.shuffle:
            return np.arange(start, self._n)
        ss = np.random.SeedSequence(self.seed, spawn_key=(epoch, 0))
        return np.random.default_rng(ss).permutation(self._n)[start:]

    def _fetcher(self) -> _Fetcher:
        """What makes this loader's batches on the host (in the caller or in a worker)."""
        return _Fetcher(self.dataset, self.batch_size, self.drop_last, self._vectorised,
                        self._collate, self.transform)

    def _indices(self, order, epoch: int, b: int):
        """The indices of batch ``b`` of the epoch: an array, or one int without batching."""
        i = b - self._split_of(epoch)[1]
        if isinstance(order, list):  # a batch sampler's batches
            return order[i]
        if self.batch_size is None:  # no batching: one sample as it is
            return int(order[i])
        return order[i * self.batch_size:(i + 1) * self.batch_size]

    def _host_batch(self, order, epoch: int, b: int):
        """Batch ``b`` of the epoch on the host: gathered, collated and transformed."""
        return self._fetcher().batch(self._indices(order, epoch, b), self.seed, epoch, b)

    def _stream(self, epoch: int, start: int) -> Iterator[tuple]:
        """An IterableDataset's host batches of ``epoch`` from batch ``start`` on, read in the
        caller, as ``(b, batch, None)``."""
        fetcher = self._fetcher()
        it = iter(self.dataset)
        fetcher.skip(it, start)  # a resume: skip what was read
        b = start
        while (out := fetcher.next_batch(it)) is not None:
            yield b, fetcher.transformed(out[0], self.seed, (epoch, 1, b)), None
            b += 1

    # --- worker processes -------------------------------------------------------------------
    def _open_pool(self, epoch: int) -> WorkerPool:
        """The persistent workers, or new ones, seeded for ``epoch``."""
        if self._pool is not None and not self._pool.closed:
            return self._pool
        pool = WorkerPool(self.multiprocessing_context, self._fetcher(), self.num_workers,
                          self.worker_init_fn, self._worker_seeds(epoch), self.timeout)
        if self.persistent_workers:
            self._pool = pool
            weakref.finalize(self, pool.shutdown)  # the workers end with the loader
        return pool

    def _release(self, pool: WorkerPool, broken: bool, gen: int | None) -> None:
        """End of an epoch's use of ``pool``: kept when persistent and sound, else stopped;
        left alone when a newer iteration (generation) has taken it over."""
        if pool is self._pool and gen is not None and pool.gen != gen:
            return
        if broken or pool is not self._pool:
            pool.shutdown(force=broken)
            if pool is self._pool:
                self._pool = None

    def _worker_seeds(self, epoch: int) -> list[int]:
        seed = 0 if self.seed is None else self.seed
        return [worker_seed(seed, epoch, w) for w in range(self.num_workers)]

    def _deadline(self) -> float | None:
        return time.monotonic() + self.timeout if self.timeout > 0 else None

    @contextlib.contextmanager
    def _epoch_pool(self, epoch: int, counts: list | None = None):
        """The worker pool started on ``epoch`` (``counts``: an IterableDataset's batches per
        worker already handed out), as ``(pool, generation)``; released when the epoch's
        batches end or the caller stops taking them (persistent workers stay), torn down when
        anything fails."""
        pool, gen = self._open_pool(epoch), None
        try:
            gen = pool.start_epoch(self.seed, epoch, self._worker_seeds(epoch),
                                   *(() if counts is None else (counts,)))
            yield pool, gen
        except GeneratorExit:
            self._release(pool, False, gen)
            raise
        except BaseException:
            self._release(pool, True, gen)
            raise
        self._release(pool, False, gen)

    def _worker_batches(self, order, epoch: int, todo: list[int]) -> Iterator[tuple]:
        """The batches ``todo`` of the epoch made by the workers, as ``(b, batch, None)``.

        Batch ``todo[i]`` goes to worker ``i % num_workers``, ``prefetch_factor`` per worker
        ahead; a worker gets its next one when the caller takes one of its batches."""
        if not todo:  # a resume at the end of the epoch: no worker needed
            return
        with self._epoch_pool(epoch) as (pool, gen):
            owner: dict[int, int] = {}
            ready: dict[int, Any] = {}
            sent = 0

            def dispatch(w: int) -> None:
                nonlocal sent
                if sent < len(todo):
                    b = todo[sent]
                    sent += 1
                    owner[b] = w
                    pool.send(w, ("batch", gen, b, self._indices(order, epoch, b)))

            for i in range(min(len(todo), pool.num_workers * self.prefetch_factor)):
                dispatch(i % pool.num_workers)
            for pos in range(len(todo)):
                pool.check(gen)
                deadline = self._deadline()
                if self.in_order:
                    b = todo[pos]
                    while b not in ready:
                        _, key, _, fields = pool.recv(gen, deadline,
                                                      f"batch {b} (worker {owner[b]})")
                        ready[key] = fields
                else:
                    if not ready:
                        _, key, _, fields = pool.recv(gen, deadline, "the next batch")
                        ready[key] = fields
                    b = min(ready)
                fields = ready.pop(b)
                dispatch(owner.pop(b))
                yield b, fields, None

    def _worker_stream(self, epoch: int, start: int) -> Iterator[tuple]:
        """An IterableDataset's batches from the workers, as ``(b, batch, worker)``.

        Each worker reads its own copy of the stream (its share, when the dataset splits it
        by :func:`get_worker_info`) into batches. In order, they are taken round robin, one
        per worker that has not run out, as PyTorch does; a resume restarts each worker past
        the batches of its own that were handed out."""
        n = self.num_workers
        resumed = start and self._wpos is not None and self._wpos[0] == epoch
        counts = list(self._wpos[1]) if resumed else [0] * n
        self._wpos = (epoch, list(counts))  # batches per worker the caller took
        with self._epoch_pool(epoch, counts) as (pool, gen):
            made, asked = list(counts), list(counts)
            active = list(range(n))
            ready: dict[tuple[int, int], Any] = {}

            def ask(w: int) -> None:
                pool.send(w, ("next", gen, asked[w]))
                asked[w] += 1

            def receive(what: str) -> None:
                w, k, status, fields = pool.recv(gen, deadline, what)
                ready[(w, k)] = fields if status == "ok" else _END

            for w in active:
                for _ in range(self.prefetch_factor):
                    ask(w)
            b = start
            while active:
                pool.check(gen)
                deadline = self._deadline()
                if self.in_order:
                    w = min(active, key=lambda v: (made[v], v))
                    while (w, made[w]) not in ready:
                        receive(f"batch {made[w]} of worker {w}")
                else:
                    while not (done := [v for v in active if (v, made[v]) in ready]):
                        receive("the next batch")
                    w = done[0]
                fields = ready.pop((w, made[w]))
                if fields is _END:
                    active.remove(w)
                    continue
                made[w] += 1
                ask(w)
                yield b, fields, w
                b += 1

    def _convert(self, a):
        """Floating host arrays to ``dtype``, integer ones to int64, unless the loader keeps
        the dataset's dtypes (as PyTorch's); anything else as it is."""
        if isinstance(a, np.ndarray) and not self._keep:
            if B.is_float(a.dtype):
                return a if self._float is None else a.astype(self._float, copy=False)
            if a.dtype.kind in "iu":
                return a.astype(B.int64, copy=False)
        return a

    def _device_batch(self, fields, stream):
        """Host batch -> tensors on the device, any nesting of tuples, lists and dicts alike.

        Host arrays (and NumPy scalars) are converted (:meth:`_convert`) and uploaded together;
        tensors (e.g. from :func:`default_collate`) keep their dtype and move to the device;
        the structure, numbers, strings and the like stay as they are. A ``collate_fn``'s batch
        is returned as it made it (as PyTorch's), only its tensors moved to the device."""
        if self.collate_fn is not None and self.transform is None:
            return _moved(fields, self.backend.name)
        if type(fields) in (tuple, list) and all(type(a) is np.ndarray and _numeric(a.dtype)
                                                 for a in fields):  # the usual flat batch
            return type(fields)(Tensor._of(a) for a in self.backend.upload(
                [self._convert(a) for a in fields], stream))
        host: list = []

        def walk(x):
            if isinstance(x, Tensor):
                return x if x.device == self.backend.name else x.to(self.backend.name)
            if isinstance(x, np.generic) and _numeric(x.dtype):
                x = np.asarray(x)
            if isinstance(x, np.ndarray) and _numeric(x.dtype):
                host.append(self._convert(x))
                return _Slot(len(host) - 1)
            if isinstance(x, Mapping):
                return {k: walk(v) for k, v in x.items()}
            if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
                return type(x)(*(walk(v) for v in x))
            if isinstance(x, tuple | list):
                items = [walk(v) for v in x]
                return tuple(items) if isinstance(x, tuple) else items
            return x

        def fill(x):
            if isinstance(x, _Slot):
                return Tensor._of(moved[x.index])
            if isinstance(x, dict):
                return {k: fill(v) for k, v in x.items()}
            if isinstance(x, tuple) and hasattr(x, "_fields"):
                return type(x)(*(fill(v) for v in x))
            if isinstance(x, tuple | list):
                return type(x)(fill(v) for v in x)
            return x

        skeleton = walk(fields)
        moved = self.backend.upload(host, stream) if host else []
        return fill(skeleton)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable:
            if not self._resume and (self._batch > 0 or self._ended):
                self._new_epoch(self._epoch + 1)
        elif not self._resume and (self._batch > 0 or self._ahead or self._ended) \
                or (n := self._known_len()) is not None and self._batch >= n:
            self._new_epoch(self._epoch + 1)  # the last iteration ended or stopped early
        self._resume = self._ended = False
        token = object()
        self._active = token
        epoch, start = self._epoch, self._batch
        if self._iterable:
            batches = (self._worker_stream(epoch, start) if self.num_workers
                       else self._stream(epoch, start))
        else:
            order = self._order(epoch, start)
            # the batches of what the sampler yielded (its __len__ may disagree, as in PyTorch)
            stop = len(order) if isinstance(order, list) else \
                self._split_of(epoch)[1] + self._batches_of(len(order))
            todo = (range(start, stop) if not self._ahead  # a range: an endless order's
                    else [b for b in range(start, stop) if b not in self._ahead])
            batches = (self._worker_batches(order, epoch, todo) if self.num_workers
                       else ((b, self._host_batch(order, epoch, b), None) for b in todo))
        if self.prefetch == 0:
            return self._serial(batches, token)
        return self._threaded(batches, token)

    def _new_epoch(self, epoch: int) -> None:
        self._epoch, self._batch, self._ahead, self._wpos = epoch, 0, set(), None

    def _advance(self, token, b: int, worker: int | None) -> None:
        """Batch ``b`` (of ``worker``'s share of a stream) was handed out."""
        if self._active is not token:
            return
        if b != self._batch:  # out of order: past the batches handed out in a row
            self._ahead.add(b)
            return
        self._batch = b + 1
        while self._batch in self._ahead:
            self._ahead.remove(self._batch)
            self._batch += 1
        if worker is not None and self._wpos is not None:
            self._wpos[1][worker] += 1

    def _finish(self, token) -> None:
        """The epoch's batches ran out (what ends an IterableDataset's epoch)."""
        if self._active is token:
            self._ended = True

    def _serial(self, batches, token):
        try:
            for b, fields, worker in batches:
                batch = self._device_batch(fields, None)
                self._advance(token, b, worker)
                yield batch
        finally:
            batches.close()  # workers stop when the loop is left (or this is collected)
        self._finish(token)

    def _threaded(self, batches, token):
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                stream = self.backend.copy_stream()
                for b, fields, worker in batches:
                    if stop.is_set() or not put((b, self._device_batch(fields, stream),
                                                 worker)):
                        return
                put(_END)
            except BaseException as e:  # handed to the consumer, raised there
                put(_Failure(e))
            finally:
                batches.close()

        thread = threading.Thread(target=produce, name="nodegrad-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    self._finish(token)
                    return
                if isinstance(item, _Failure):
                    raise item.error
                b, batch, worker = item
                self._advance(token, b, worker)
                yield batch
        finally:
            stop.set()

    def __repr__(self) -> str:
        try:
            n = len(self)
        except TypeError:
            n = "?"
        workers = f", num_workers={self.num_workers}" if self.num_workers else ""
        return (f"DataLoader({n} batches of {self.batch_size}, shuffle={self.shuffle}, "
                f"prefetch={self.prefetch}{workers}, device='{self.backend.name}')")


class _Slot:
    """Where an uploaded host array goes back into a batch's structure."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index
