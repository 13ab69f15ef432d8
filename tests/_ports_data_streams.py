"""A stream dataset for the data-pipeline port tests, importable without torch (so a spawned
DataLoader worker that unpickles it starts quickly)."""

from __future__ import annotations

import importlib
import math
import time

import nodegrad.utils.data as ND


class RangeMixin:
    """torch's documented IterableDataset: ``range(start, end)`` split into contiguous chunks
    by ``get_worker_info()`` of the module ``lib`` (``split=False``: left to
    ``worker_init_fn``); ``delay`` seconds pass before the first item."""

    lib = ""

    def __init__(self, start: int, end: int, split: bool = True, delay: float = 0.0):
        self.start, self.end, self.split, self.delay = start, end, split, delay

    def __iter__(self):
        info = importlib.import_module(self.lib).get_worker_info()
        lo, hi = self.start, self.end
        if self.split and info is not None:
            per = int(math.ceil((hi - lo) / float(info.num_workers)))
            lo = lo + info.id * per
            hi = min(lo + per, self.end)
        time.sleep(self.delay)
        return iter(range(lo, hi))


class NgRange(RangeMixin, ND.IterableDataset):
    lib = "nodegrad.utils.data"


class Squares:
    """A map-style dataset of (float64 tensor ``[i, i*i]``, int ``i``) whose tensors are
    nodegrad's (``ours``) or torch's (imported only then)."""

    def __init__(self, ours: bool):
        self.ours = ours

    def __len__(self) -> int:
        return 7

    def __getitem__(self, i: int):
        import numpy as np

        x = np.array([i, i * i], dtype=np.float64)
        if self.ours:
            import nodegrad as ng

            return ng.from_numpy(x), i
        import torch

        return torch.from_numpy(x), i
