"""D1-D7: DataLoader throughput for MNIST-1D and digits, with and without augmentation.

One step is one shuffled batch from ``nodegrad.data.DataLoader`` on the CPU (float32 inputs,
int64 labels as tensors; a new epoch starts when one runs out). PyTorch runs its own DataLoader
over a TensorDataset (``num_workers=0``); it has no counterpart to the augmentations, so those
rows show only the floor: the same gather written in NumPy (plus the augmentation call itself,
where there is one), i.e. the loader's own overhead is ``ng/floor``. D5 is the same loader with
the prefetch thread. D6/D7 time one SGD step of an MLP on such a batch (the builders of W1), so
the summary can say what share of a training step the data takes.
Run: ``python -m benchmarks.data_loader [--quick]`` (MNIST-1D is generated on the first run).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from . import mlp
from ._harness import Workload, main

MNIST1D_BATCH, DIGITS_BATCH = 100, 128


def _mnist1d() -> dict:
    from nodegrad.data import datasets

    d = datasets.mnist1d()
    return {"x": d.x_train, "y": d.y_train}


def _digits() -> dict:
    from nodegrad.data import datasets

    d = datasets.digits()
    return {"x": d.x_train, "y": d.y_train}


def _augmentation(kind: str | None):
    from nodegrad.data import augment as A

    if kind == "1d":
        return A.Compose([A.RandomShift1d(4), A.RandomScale1d((0.8, 1.25)),
                          A.RandomShear1d(0.5), A.GaussianNoise(0.1)])
    if kind == "2d":
        return A.Compose([A.RandomCrop2d(1), A.RandomAffine2d(15, 0.7, (0.9, 1.1), 10)])
    return None


def _cycle(make_iter):
    """A step that returns the next batch, starting a new epoch whenever one ends."""
    state = {"it": make_iter()}

    def step():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = make_iter()
            return next(state["it"])

    return lambda: (step(), None)[1]  # batches differ by design: nothing to cross-check


def nodegrad_loader(d: dict, batch: int, aug: str | None = None, prefetch: int = 0):
    from nodegrad.data import ArrayDataset, DataLoader

    loader = DataLoader(ArrayDataset(d["x"], d["y"]), batch, shuffle=True, seed=0,
                        transform=_augmentation(aug), prefetch=prefetch)
    return _cycle(lambda: iter(loader))


def torch_loader(d: dict, batch: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    ds = TensorDataset(torch.from_numpy(d["x"]), torch.from_numpy(d["y"]))
    loader = DataLoader(ds, batch_size=batch, shuffle=True)
    return _cycle(lambda: iter(loader))


def numpy_gather(d: dict, batch: int, aug: str | None = None):
    """The floor: a permutation per epoch, fancy indexing, dtype casts (and the augmentation)."""
    x, y = d["x"], d["y"]
    rng = np.random.default_rng(0)
    transform = _augmentation(aug)

    def epoch():
        perm = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = x[idx].astype(np.float32, copy=False)
            if transform is not None:
                xb = transform(xb, rng=rng)
            yield xb, y[idx].astype(np.int64, copy=False)

    return _cycle(epoch)


def _mlp(sizes, batch):
    return partial(mlp.make_data, sizes=sizes, batch=batch)


M1D, DIG = (40, 100, 100, 10), (64, 100, 100, 10)
_US = {"unit": "µs/step", "scale": 1e6}
WORKLOADS = [
    Workload("D1", "loader MNIST-1D 4000x40, batch 100", _mnist1d,
             partial(nodegrad_loader, batch=MNIST1D_BATCH),
             partial(torch_loader, batch=MNIST1D_BATCH),
             partial(numpy_gather, batch=MNIST1D_BATCH), floor_name="NumPy gather", **_US),
    Workload("D2", "loader MNIST-1D + shift/scale/shear/noise", _mnist1d,
             partial(nodegrad_loader, batch=MNIST1D_BATCH, aug="1d"), None,
             partial(numpy_gather, batch=MNIST1D_BATCH, aug="1d"), floor_name="gather + aug",
             **_US),
    Workload("D3", "loader digits 1437x1x8x8, batch 128", _digits,
             partial(nodegrad_loader, batch=DIGITS_BATCH),
             partial(torch_loader, batch=DIGITS_BATCH),
             partial(numpy_gather, batch=DIGITS_BATCH), floor_name="NumPy gather", **_US),
    Workload("D4", "loader digits + crop/affine", _digits,
             partial(nodegrad_loader, batch=DIGITS_BATCH, aug="2d"), None,
             partial(numpy_gather, batch=DIGITS_BATCH, aug="2d"), floor_name="gather + aug", **_US),
    Workload("D5", "loader MNIST-1D, prefetch thread (2)", _mnist1d,
             partial(nodegrad_loader, batch=MNIST1D_BATCH, prefetch=2),
             partial(torch_loader, batch=MNIST1D_BATCH),
             partial(numpy_gather, batch=MNIST1D_BATCH), floor_name="NumPy gather", **_US),
    Workload("D6", "model step: MLP 40-100-100-10, batch 100", _mlp(M1D, MNIST1D_BATCH),
             mlp.nodegrad_step, mlp.torch_step, mlp.numpy_sgd, floor_name="NumPy step", **_US),
    Workload("D7", "model step: MLP 64-100-100-10, batch 128", _mlp(DIG, DIGITS_BATCH),
             mlp.nodegrad_step, mlp.torch_step, mlp.numpy_sgd, floor_name="NumPy step", **_US),
]


def summary(results: list[dict]) -> str:
    """Batches per second of each loader row and its share of a loader + model step."""
    med = {r["id"]: r["nodegrad"]["median"] for r in results if r.get("nodegrad")}
    lines = ["# batches/s (nodegrad loader) and data share of a training step (loader + D6/D7):"]
    for loader, model in (("D1", "D6"), ("D2", "D6"), ("D3", "D7"), ("D4", "D7"), ("D5", "D6")):
        if loader in med:
            share = f"{med[loader] / (med[loader] + med[model]):.0%}" if model in med else "-"
            lines.append(f"#   {loader}: {1e6 / med[loader]:9.0f} batches/s   data share {share}")
    return "\n".join(lines)


def run(argv=None) -> int:
    """The harness's table, then the throughput summary."""
    results: list = []
    code = main(WORKLOADS, argv, description=__doc__.splitlines()[0], collect=results)
    if code == 0:
        print(summary(results))
    return code


if __name__ == "__main__":
    raise SystemExit(run())
