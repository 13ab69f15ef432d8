"""DataLoader: seeded, vectorised minibatches, moved to the device ahead of use by a thread.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the augmentation of
batch ``b`` uses a generator drawn from ``(seed, e, b)``, so a loader is a pure function of its
seed and position: ``state_dict()`` records that position and a restored loader yields the
remaining batches of the epoch bit-identically, with or without prefetching. The position is
also kept as a count of the epoch's order consumed over all ranks, so a state saved mid-epoch
on N ranks resumes on M ranks (or one process): the rest of the order is re-split over them.

PyTorch's options work too: ``sampler=`` (any Sampler; nodegrad's are read as one index array),
``batch_sampler=``, ``collate_fn=``, ``batch_size=None`` and an :class:`IterableDataset`. A
sampler or batch sampler keeps the vectorised gathering; a ``collate_fn``, ``batch_size=None``,
a dataset without ``gather`` or an IterableDataset read sample by sample.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import _backend as B
from ..random import default_generator
from ..tensor import Tensor, get_default_device
from .dataset import Dataset, IterableDataset, _stack
from .sampler import _seeded

np = B.np
_END = object()


class _DefaultBatchSize(int):
    """The default batch size, told apart from one given (which a batch_sampler excludes)."""


_BATCH = _DefaultBatchSize(32)


def get_worker_info() -> None:
    """Information about the data-loading worker process running the caller: always None,
    as in PyTorch's main process (nodegrad loads data in the main process, optionally helped
    by a prefetching thread, never in worker processes)."""
    return None


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class DataLoader:
    """Minibatches of ``dataset`` as nodegrad tensors on ``device``.

    Args:
        dataset: an ArrayDataset/Subset/ConcatDataset/StackDataset (gathered with one indexing
            call per batch and array), any object with ``__len__`` and ``__getitem__``
            (gathered sample by sample), or an :class:`IterableDataset` (read as a stream).
        batch_size: samples per batch (default 32; the last one may be smaller unless
            ``drop_last``). None turns batching off, as in PyTorch: each sample is yielded as it
            is (through ``collate_fn`` if given), without a batch axis.
        shuffle: a fresh seeded permutation every epoch; otherwise the dataset order.
        drop_last: drop the final incomplete batch.
        seed: base seed of shuffling and augmentation (int); ``generator`` (an ng.Generator)
            supplies one instead; with neither, ng's default generator does (``ng.manual_seed``).
        collate_fn: builds a batch from a list of samples (switches to per-sample gathering),
            e.g. :func:`default_collate`; its tensors keep their dtype and move to ``device``.
        transform: applied to the input batch (the first field) on the host as
            ``transform(x, rng=rng)``, e.g. an augmentation from :mod:`nodegrad.data.augment`.
        prefetch: batches prepared ahead by a background thread (0: none, in the caller).
            None (the default) means 2 on a CUDA device, where the copies overlap GPU compute,
            and 0 on the CPU, where a thread only competes with the model for the GIL.
        device: where batches land (default: ``ng.get_default_device()``, the CPU unless set);
            floating host fields become ``dtype``, integer ones int64.
        sampler: the indices of each epoch and their order: a :class:`Sampler` (e.g.
            :class:`RandomSampler`, :class:`WeightedRandomSampler`), any iterable of indices
            with ``__len__`` (its ``set_epoch(epoch)`` is called first if it has one), or an
            object with ``indices(epoch)`` such as :class:`nodegrad.distributed.
            DistributedSampler`; excludes ``shuffle``.
        batch_sampler: yields each batch's indices, e.g. a :class:`BatchSampler`; excludes
            ``batch_size``, ``shuffle``, ``sampler`` and ``drop_last``.

    ``len(loader)`` is the number of batches per epoch. Iterating starts the next epoch (or
    resumes the position restored by :meth:`load_state_dict`); nodegrad's random samplers
    draw one seed per epoch, which the state records, so a resumed epoch has the same order.
    """

    def __init__(self, dataset: Dataset | IterableDataset, batch_size: int | None = _BATCH,
                 shuffle: bool = False, drop_last: bool = False, seed: int | None = None,
                 generator=None, collate_fn: Callable | None = None,
                 transform: Callable | None = None, prefetch: int | None = None, device=None,
                 dtype=B.float32, sampler=None, batch_sampler=None):
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
        if batch_sampler is not None:
            n = len(batch_sampler)
        elif self._iterable:
            n = None  # a stream's length is asked for only when len(loader) is
        else:
            n = len(dataset) if sampler is None else len(sampler)
        if n == 0 and not self._iterable:
            raise ValueError("DataLoader: the dataset is empty")
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.dataset = dataset
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        self.transform = transform
        self.prefetch = prefetch
        self.dtype = B.as_dtype(dtype)
        self._n = n  # samples per epoch (with a batch_sampler: batches; None: a stream)
        # whole batches by index: a sampler or batch sampler keeps this, per-sample options not
        self._vectorised = (collate_fn is None and not self._iterable
                            and hasattr(dataset, "gather")
                            and (self.batch_size is not None or batch_sampler is not None))
        if seed is None and (shuffle or transform is not None):
            if generator is None:
                generator = default_generator("cpu")
            seed = int(generator.integers(0, 2**63 - 1, ()))
        self.seed = seed
        self._epoch = 0
        self._batch = 0  # batches of the current epoch already handed out
        # after a mid-epoch resume on another number of ranks: in epoch _split[0] this loader
        # reads the epoch's order from global position _split[1] on, as batches _split[2], ...
        self._split: tuple[int, int, int] | None = None
        self._resume = False
        self._active: object | None = None
        self._drawn: tuple[int, int | None] | None = None  # (epoch, seed) of a seeded sampler
        self._ended = False  # a stream (IterableDataset) ran out in the current epoch

    # --- size and position --------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of batches per epoch (of the current one, after a resume re-split it)."""
        if self._iterable:
            try:
                n, start, first = len(self.dataset), 0, 0  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(f"DataLoader: the length of {type(self.dataset).__name__}, an "
                                "IterableDataset without __len__, is unknown") from None
        elif self.batch_sampler is not None:
            return self._n
        else:
            start, first = self._split_of(self._epoch)
            n = self._n if not start else self._share(start)
        if self.batch_size is None:
            return first + n
        full, rest = divmod(n, self.batch_size)
        return first + full + (1 if rest and not self.drop_last else 0)

    def _split_of(self, epoch: int) -> tuple[int, int]:
        """(global start position, first batch index) of ``epoch``'s re-split part, or (0, 0)."""
        if self._split is not None and self._split[0] == epoch:
            return self._split[1], self._split[2]
        return 0, 0

    def _world(self) -> int:
        """How many ranks share each epoch's order (1 without a distributed sampler)."""
        return int(getattr(self.sampler, "num_replicas", 1)) if self.sampler is not None else 1

    def _share(self, start: int) -> int:
        """Samples this loader reads of an epoch's order from global position ``start`` on."""
        if self.sampler is None:
            return max(self._n - start, 0)
        return int(self.sampler.size(start))

    def _order_key(self) -> dict | None:
        """What fixes the epoch's global order (None: a sampler that cannot re-split it)."""
        if self._iterable or self.batch_sampler is not None:
            return None
        if self.sampler is None:
            return {"num_samples": self._n, "shuffle": self.shuffle,
                    "seed": self.seed if self.shuffle else None}
        if hasattr(self.sampler, "order_state") and hasattr(self.sampler, "size"):
            return self.sampler.order_state()
        return None

    @property
    def epoch(self) -> int:
        """The epoch the next (or current) iteration draws its order from."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch``."""
        self._epoch, self._batch, self._resume, self._split = int(epoch), 0, True, None
        self._ended = False

    def _epoch_done(self) -> bool:
        return self._ended if self._iterable else self._batch >= len(self)

    def state_dict(self) -> dict:
        """The position within the epoch, as plain data for a checkpoint.

        ``position`` counts the samples of the epoch's global order consumed over all ranks
        (each rank reads every ``world``-th of them), what a resume on another number of ranks
        continues from. With one of nodegrad's random samplers, ``sampler_seed`` is the seed of
        the epoch's order; over an IterableDataset, a resume skips the ``batch`` batches read
        (the same position when the stream repeats itself)."""
        epoch, batch = self._epoch, self._batch
        if self._epoch_done():
            epoch, batch = epoch + 1, 0
        start, first = self._split_of(epoch)
        if batch == 0:
            start = first = 0
        state = {"seed": self.seed, "epoch": epoch, "batch": batch, "num_samples": self._n,
                 "batch_size": self.batch_size, "shuffle": self.shuffle,
                 "drop_last": self.drop_last, "world": self._world(), "start": start,
                 "first": first,
                 "position": start + self._world() * (batch - first) * (self.batch_size or 1),
                 "order": self._order_key()}
        if batch and self._drawn is not None and self._drawn[0] == epoch:
            state["sampler_seed"] = self._drawn[1]
        if self.sampler is not None and hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position: the next iteration yields the rest of that epoch.

        A state from another layout (number of ranks, per-rank batch size, or a distributed
        sampler against a plain shuffling loader) continues the same global order: the samples
        not yet consumed are re-split over this loader's ranks, so each is still read once."""
        mine = {"num_samples": self._n, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last,
                "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict")
                else None}
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if all(state.get(k) == v for k, v in mine.items()):  # the same layout: exact
            self.seed = state["seed"]
            start, first = int(state.get("start", 0)), int(state.get("first", 0))
            self._split = (epoch, start, first) if start or first else None
            self._epoch, self._batch, self._resume, self._ended = epoch, batch, True, False
            self._drawn = (epoch, state["sampler_seed"]) if "sampler_seed" in state else None
            return
        theirs, ours = state.get("order"), self._order_key()
        if state.get("drop_last") != self.drop_last:
            key, a, b = "drop_last", self.drop_last, state.get("drop_last")
        elif theirs is None or ours is None:
            key = next(k for k, v in mine.items() if state.get(k) != v)
            if batch == 0 and self.sampler is not None:  # a fresh epoch: the sampler's order
                key = "shuffle" if state.get("shuffle") != self.shuffle else None
            a, b = mine.get(key), state.get(key)
        elif (theirs["num_samples"], theirs["shuffle"]) != (ours["num_samples"], ours["shuffle"]):
            key, a, b = "order", ours, theirs
        else:
            key = None
        if key is not None:
            hint = ("; a state without the epoch's global position (or from a sampler that "
                    "cannot re-split it) resumes mid-epoch only on as many ranks"
                    if self.sampler is not None or "sampler" in state else "")
            raise ValueError(f"load_state_dict: {key} is {a} here but {b} in the state; the "
                             f"batch order would differ{hint}")
        self.seed = state["seed"]  # the augmentation stream goes on; the order's seed is theirs
        if self.sampler is None:
            if self.shuffle:
                self.seed = theirs["seed"]
        elif theirs is not None and theirs["seed"] is not None:
            self.sampler.seed = int(theirs["seed"])
        self._split = (epoch, int(state["position"]), batch) if batch else None
        self._epoch, self._batch, self._resume, self._ended = epoch, batch, True, False

    # --- batches --------------------------------------------------------------------------------
    def _order(self, epoch: int, first: int) -> np.ndarray | list[np.ndarray]:
        """The indices this loader reads in ``epoch`` (from the re-split position on, if any);
        with a batch sampler, the list of the epoch's batches. ``first``: the batch to start
        at (past 0, a resume, which reuses the epoch's recorded sampler seed)."""
        start = self._split_of(epoch)[0]
        src = self.batch_sampler if self.batch_sampler is not None else self.sampler
        for obj in (src, getattr(self.batch_sampler, "sampler", None)):
            if obj is not None and not hasattr(obj, "indices") and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        if src is not None and _seeded(src):  # nodegrad's samplers: the order of one seed
            resumed = first and self._drawn is not None and self._drawn[0] == epoch
            seed = self._drawn[1] if resumed else src._draw()
            self._drawn = (epoch, seed)
            return src._order(seed)
        if self.batch_sampler is not None:
            return [np.asarray(b, dtype=B.int64).reshape(-1) for b in self.batch_sampler]
        if self.sampler is not None:
            if start:
                return np.asarray(self.sampler.indices(epoch, start))
            if hasattr(self.sampler, "indices"):
                return np.asarray(self.sampler.indices(epoch))
            return np.fromiter(iter(self.sampler), dtype=B.int64)
        if not self.shuffle:
            return np.arange(start, self._n)
        ss = np.random.SeedSequence(self.seed, spawn_key=(epoch, 0))
        return np.random.default_rng(ss).permutation(self._n)[start:]

    def _host_batch(self, order, epoch: int, b: int):
        """Batch ``b`` of the epoch on the host: gathered, collated and transformed."""
        i = b - self._split_of(epoch)[1]
        if isinstance(order, list):  # a batch sampler's batches
            idx = order[i]
        elif self.batch_size is None:  # no batching: one sample as it is
            sample = self.dataset[int(order[i])]
            return self._transformed(self.collate_fn(sample) if self.collate_fn else sample,
                                     epoch, b)
        else:
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        if self._vectorised:
            fields = self.dataset.gather(idx)
        else:
            samples = [self.dataset[int(i)] for i in idx]
            fields = self.collate_fn(samples) if self.collate_fn else _stack(samples)
        return self._transformed(fields, epoch, b)

    def _stream(self, epoch: int, start: int) -> Iterator[Any]:
        """An IterableDataset's host batches of ``epoch`` from batch ``start`` on."""
        it = iter(self.dataset)
        size = self.batch_size
        for _ in itertools.islice(it, start * (size or 1)):  # a resume: skip what was read
            pass
        b = start
        while True:
            if size is None:
                try:
                    sample = next(it)
                except StopIteration:
                    return
                fields = self.collate_fn(sample) if self.collate_fn else sample
            else:
                samples = list(itertools.islice(it, size))
                if not samples or len(samples) < size and self.drop_last:
                    return
                fields = self.collate_fn(samples) if self.collate_fn else _stack(samples)
            yield self._transformed(fields, epoch, b)
            b += 1

    def _transformed(self, fields, epoch: int, b: int):
        """``fields`` with ``transform`` applied to the input (the first field), if any."""
        if self.transform is None:
            return fields
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch, 1, b)))
        if isinstance(fields, np.ndarray):
            return self.transform(fields, rng=rng)
        if isinstance(fields, Mapping):
            raise TypeError("DataLoader: transform applies to the first field of a tuple batch, "
                            f"got a batch of type {type(fields).__name__}")
        fields = list(fields)
        fields[0] = self.transform(fields[0], rng=rng)
        return fields

    def _convert(self, a):
        """Floating host arrays to ``dtype``, integer ones to int64; anything else as it is."""
        if isinstance(a, np.ndarray):
            if a.dtype.kind == "f":
                return a.astype(self.dtype, copy=False)
            if a.dtype.kind in "iu":
                return a.astype(B.int64, copy=False)
        return a

    def _device_batch(self, fields, stream):
        """Host batch -> tensors on the device, any nesting of tuples, lists and dicts alike.

        Host arrays (and NumPy scalars) are converted (:meth:`_convert`) and uploaded together;
        tensors (e.g. from :func:`default_collate`) keep their dtype and move to the device; a
        top-level list becomes a tuple; numbers, strings and the like stay as they are."""
        if type(fields) is tuple and all(type(a) is np.ndarray and a.dtype.kind in "biufc"
                                         for a in fields):  # the usual flat batch, directly
            return tuple(Tensor(a) for a in self.backend.upload(
                [self._convert(a) for a in fields], stream))
        host: list = []

        def walk(x, top: bool = False):
            if isinstance(x, Tensor):
                return x if x.device == self.backend.name else x.to(self.backend.name)
            if isinstance(x, np.generic) and x.dtype.kind in "biufc":
                x = np.asarray(x)
            if isinstance(x, np.ndarray) and x.dtype.kind in "biufc":
                host.append(self._convert(x))
                return _Slot(len(host) - 1)
            if isinstance(x, Mapping):
                return {k: walk(v) for k, v in x.items()}
            if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
                return type(x)(*(walk(v) for v in x))
            if isinstance(x, tuple | list):
                items = [walk(v) for v in x]
                return tuple(items) if top or isinstance(x, tuple) else items
            return x

        def fill(x):
            if isinstance(x, _Slot):
                return Tensor(moved[x.index])
            if isinstance(x, dict):
                return {k: fill(v) for k, v in x.items()}
            if isinstance(x, tuple) and hasattr(x, "_fields"):
                return type(x)(*(fill(v) for v in x))
            if isinstance(x, tuple | list):
                return type(x)(fill(v) for v in x)
            return x

        skeleton = walk(fields, top=True)
        moved = self.backend.upload(host, stream) if host else []
        return fill(skeleton)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable:
            if not self._resume and (self._batch > 0 or self._ended):
                self._epoch, self._batch = self._epoch + 1, 0
        elif not self._resume and self._batch > 0 or self._batch >= len(self):
            self._epoch, self._batch = self._epoch + 1, 0  # the last iteration stopped early
        self._resume = self._ended = False
        token = object()
        self._active = token
        epoch, start = self._epoch, self._batch
        if self._iterable:
            batches = self._stream(epoch, start)
        else:
            order = self._order(epoch, start)
            stop = len(order) if isinstance(order, list) else len(self)
            batches = (self._host_batch(order, epoch, b) for b in range(start, stop))
        if self.prefetch == 0:
            return self._serial(batches, start, token)
        return self._threaded(batches, start, token)

    def _advance(self, token, b: int) -> None:
        if self._active is token:
            self._batch = b + 1

    def _finish(self, token) -> None:
        """The epoch's batches ran out (what ends an IterableDataset's epoch)."""
        if self._active is token:
            self._ended = True

    def _serial(self, batches, start: int, token):
        b = start
        for fields in batches:
            batch = self._device_batch(fields, None)
            self._advance(token, b)
            b += 1
            yield batch
        self._finish(token)

    def _threaded(self, batches, start: int, token):
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
                for fields in batches:
                    if stop.is_set() or not put(self._device_batch(fields, stream)):
                        return
                put(_END)
            except BaseException as e:  # handed to the consumer, raised there
                put(_Failure(e))

        worker = threading.Thread(target=produce, name="nodegrad-prefetch", daemon=True)
        worker.start()
        try:
            b = start
            while True:
                item = q.get()
                if item is _END:
                    self._finish(token)
                    return
                if isinstance(item, _Failure):
                    raise item.error
                self._advance(token, b)
                b += 1
                yield item
        finally:
            stop.set()

    def __repr__(self) -> str:
        try:
            n = len(self)
        except TypeError:
            n = "?"
        return (f"DataLoader({n} batches of {self.batch_size}, shuffle={self.shuffle}, "
                f"prefetch={self.prefetch}, device='{self.backend.name}')")


class _Slot:
    """Where an uploaded host array goes back into a batch's structure."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index
