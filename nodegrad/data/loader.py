"""DataLoader: seeded, vectorised minibatches, moved to the device ahead of use by a thread.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the augmentation of
batch ``b`` uses a generator drawn from ``(seed, e, b)``, so a loader is a pure function of its
seed and position: ``state_dict()`` records that position and a restored loader yields the
remaining batches of the epoch bit-identically, with or without prefetching. The position is
also kept as a count of the epoch's order consumed over all ranks, so a state saved mid-epoch
on N ranks resumes on M ranks (or one process): the rest of the order is re-split over them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .. import _backend as B
from ..random import default_generator
from ..tensor import Tensor, get_default_device
from .dataset import Dataset, _stack

np = B.np
_END = object()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class DataLoader:
    """Minibatches of ``dataset`` as nodegrad tensors on ``device``.

    Args:
        dataset: an ArrayDataset/Subset (gathered with one indexing call per batch) or any
            object with ``__len__`` and ``__getitem__`` (gathered sample by sample).
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a fresh seeded permutation every epoch; otherwise the dataset order.
        drop_last: drop the final incomplete batch.
        seed: base seed of shuffling and augmentation (int); ``generator`` (an ng.Generator)
            supplies one instead; with neither, ng's default generator does (``ng.manual_seed``).
        collate_fn: builds a batch from a list of samples (switches to per-sample gathering).
        transform: applied to the input batch (the first field) on the host as
            ``transform(x, rng=rng)``, e.g. an augmentation from :mod:`nodegrad.data.augment`.
        prefetch: batches prepared ahead by a background thread (0: none, in the caller).
            None (the default) means 2 on a CUDA device, where the copies overlap GPU compute,
            and 0 on the CPU, where a thread only competes with the model for the GIL.
        device: where batches land (default: ``ng.get_default_device()``, the CPU unless set);
            floating fields become ``dtype``, integer fields int64.
        sampler: an object with ``__len__`` and ``indices(epoch)`` (or PyTorch's ``set_epoch``
            and ``__iter__``) that picks the samples of each epoch and their order, e.g. a
            :class:`nodegrad.distributed.DistributedSampler`; excludes ``shuffle``.

    ``len(loader)`` is the number of batches per epoch. Iterating starts the next epoch (or
    resumes the position restored by :meth:`load_state_dict`).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 32, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None, generator=None,
                 collate_fn: Callable | None = None, transform: Callable | None = None,
                 prefetch: int | None = None, device=None, dtype=B.float32, sampler=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
                or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be an int >= 1, got {batch_size!r}")
        self.backend = B.get_backend(get_default_device() if device is None else device)
        if prefetch is None:
            prefetch = 0 if self.backend.device_id is None else 2
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler and shuffle=True exclude each other (the "
                             "sampler sets the order)")
        n = len(dataset) if sampler is None else len(sampler)
        if n == 0:
            raise ValueError("DataLoader: the dataset is empty")
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        self.transform = transform
        self.prefetch = prefetch
        self.dtype = B.as_dtype(dtype)
        self._n = n
        self._vectorised = collate_fn is None and hasattr(dataset, "gather")
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

    # --- size and position --------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of batches per epoch (of the current one, after a resume re-split it)."""
        start, first = self._split_of(self._epoch)
        n = self._n if not start else self._share(start)
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

    def state_dict(self) -> dict:
        """The position within the epoch, as plain data for a checkpoint.

        ``position`` counts the samples of the epoch's global order consumed over all ranks
        (each rank reads every ``world``-th of them), what a resume on another number of ranks
        continues from."""
        epoch, batch = self._epoch, self._batch
        if batch >= len(self):
            epoch, batch = epoch + 1, 0
        start, first = self._split_of(epoch)
        if batch == 0:
            start = first = 0
        state = {"seed": self.seed, "epoch": epoch, "batch": batch, "num_samples": self._n,
                 "batch_size": self.batch_size, "shuffle": self.shuffle,
                 "drop_last": self.drop_last, "world": self._world(), "start": start,
                 "first": first,
                 "position": start + self._world() * (batch - first) * self.batch_size,
                 "order": self._order_key()}
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
            self._epoch, self._batch, self._resume = epoch, batch, True
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
        self._epoch, self._batch, self._resume = epoch, batch, True

    # --- batches --------------------------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        """The indices this loader reads in ``epoch`` (from the re-split position on, if any)."""
        start = self._split_of(epoch)[0]
        if self.sampler is not None:
            if start:
                return np.asarray(self.sampler.indices(epoch, start))
            if hasattr(self.sampler, "indices"):
                return np.asarray(self.sampler.indices(epoch))
            self.sampler.set_epoch(epoch)
            return np.fromiter(iter(self.sampler), dtype=B.int64)
        if not self.shuffle:
            return np.arange(start, self._n)
        ss = np.random.SeedSequence(self.seed, spawn_key=(epoch, 0))
        return np.random.default_rng(ss).permutation(self._n)[start:]

    def _host_batch(self, order: np.ndarray, epoch: int, b: int):
        """Batch ``b`` of the epoch on the host: gathered, collated and transformed."""
        i = b - self._split_of(epoch)[1]
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        if self._vectorised:
            fields = self.dataset.gather(idx)
        else:
            samples = [self.dataset[int(i)] for i in idx]
            fields = self.collate_fn(samples) if self.collate_fn else _stack(samples)
        if self.transform is not None:
            ss = np.random.SeedSequence(self.seed, spawn_key=(epoch, 1, b))
            fields = list(fields)
            fields[0] = self.transform(fields[0], rng=np.random.default_rng(ss))
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
        """Host batch -> tensors on the device (tuple, dict or single array alike)."""
        if isinstance(fields, dict):
            keys = list(fields)
            vals = self._device_batch([fields[k] for k in keys], stream)
            return dict(zip(keys, vals))
        single = isinstance(fields, np.ndarray)
        items = [fields] if single else list(fields)
        items = [self._convert(a) for a in items]
        pos = [i for i, a in enumerate(items) if isinstance(a, np.ndarray)]
        moved = self.backend.upload([items[i] for i in pos], stream)
        for i, a in zip(pos, moved):
            items[i] = Tensor(a)
        return items[0] if single else tuple(items)

    def _load(self, order, epoch: int, b: int, stream):
        return self._device_batch(self._host_batch(order, epoch, b), stream)

    def __iter__(self) -> Iterator[Any]:
        if not self._resume and self._batch > 0 or self._batch >= len(self):
            self._epoch, self._batch = self._epoch + 1, 0  # the last iteration stopped early
        self._resume = False
        token = object()
        self._active = token
        epoch, start = self._epoch, self._batch
        order = self._order(epoch)
        if self.prefetch == 0:
            return self._serial(order, epoch, start, token)
        return self._threaded(order, epoch, start, token)

    def _advance(self, token, b: int) -> None:
        if self._active is token:
            self._batch = b + 1

    def _serial(self, order, epoch, start, token):
        for b in range(start, len(self)):
            batch = self._load(order, epoch, b, None)
            self._advance(token, b)
            yield batch

    def _threaded(self, order, epoch, start, token):
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
                for b in range(start, len(self)):
                    if stop.is_set() or not put(self._load(order, epoch, b, stream)):
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
                    return
                if isinstance(item, _Failure):
                    raise item.error
                self._advance(token, b)
                b += 1
                yield item
        finally:
            stop.set()

    def __repr__(self) -> str:
        return (f"DataLoader({len(self)} batches of {self.batch_size}, shuffle={self.shuffle}, "
                f"prefetch={self.prefetch}, device='{self.backend.name}')")
