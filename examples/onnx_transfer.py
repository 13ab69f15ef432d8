"""Transfer learning across frameworks: a PyTorch CNN trained on digits 0-4, through ONNX,
fine-tuned in nodegrad on digits 5-9.

1. PyTorch trains a small CNN (two conv + batch norm + max-pool blocks, a linear head ``fc``) on
   scikit-learn's 8x8 digits 0-4.
2. ``torch.onnx.export`` writes it to ONNX; ``nodegrad.onnx.load`` reads it back as a nodegrad
   module whose weights are trainable parameters named as in PyTorch (``conv1.weight``, ...)
   and whose ``fc`` is a real ``nn.Linear``.
3. ``replace_head`` puts a fresh 5-way head there, and the model is fine-tuned on a few
   labelled 5-9s: the imported features frozen (head only), or everything trained with a
   smaller learning rate for the imported layers; a nodegrad CNN trained from scratch on the
   same examples is the baseline. The batch norms run on their imported statistics (an ONNX
   graph is an inference graph).

    python examples/onnx_transfer.py                 # about a minute on 2 cores
    python examples/onnx_transfer.py --per-class 5 --steps 30 --torch-epochs 2 --seeds 1
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn as tnn

import nodegrad as ng
from nodegrad import models, train
from nodegrad.nn import functional as F
from nodegrad.onnx import load
from nodegrad.train import transfer as T

METHODS = ("scratch", "head only", "all layers")


class TorchCNN(tnn.Module):
    """conv 3x3 (16) -> BN -> ReLU -> pool -> conv 3x3 (32) -> BN -> ReLU -> pool -> fc."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1, self.bn1 = tnn.Conv2d(1, 16, 3, padding=1), tnn.BatchNorm2d(16)
        self.conv2, self.bn2 = tnn.Conv2d(16, 32, 3, padding=1), tnn.BatchNorm2d(32)
        self.pool = tnn.MaxPool2d(2)
        self.fc = tnn.Linear(32 * 2 * 2, classes)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))
        h = self.pool(torch.relu(self.bn2(self.conv2(h))))
        return self.fc(torch.flatten(h, 1))


def train_torch(x, y, epochs: int, seed: int = 0) -> TorchCNN:
    torch.manual_seed(seed)
    model = TorchCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            tnn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def to_onnx(model: TorchCNN, path: pathlib.Path) -> None:
    """The TorchScript exporter (``dynamo=False``: no onnxscript needed), weights unfolded so
    they keep PyTorch's names; its tracer's warnings are about Python control flow, silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}}, do_constant_folding=False)


def loader(x, y, batch_size):
    return ng.data.DataLoader(ng.data.ArrayDataset(x, y), batch_size=batch_size)


def subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in np.unique(y)])


def build(method: str, path: pathlib.Path, seed: int, verbose: bool):
    """The model and optimiser of one method."""
    if method == "scratch":
        model = models.create("digits_cnn", seed=1000 + seed, classes=5)
        return model, ng.optim.Adam(model.parameters(), lr=1e-2)
    model = load(path)                           # the PyTorch network, now a nodegrad module
    T.replace_head(model, 5, name="fc", seed=2000 + seed)
    if method == "head only":
        T.freeze(model)
        T.unfreeze(model, "fc")
        if verbose:
            print(T.trainable_summary(model))
        return model, ng.optim.Adam(T.param_groups(model, {"fc": 1e-2}))
    return model, ng.optim.Adam(T.param_groups(model, {"fc": 1e-2}, default_lr=1e-3))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch-epochs", type=int, default=15)
    ap.add_argument("--per-class", type=int, nargs="+", default=[3, 10],
                    help="labelled 5-9s per class")
    ap.add_argument("--steps", type=int, default=100, help="full-batch Adam steps")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    d = ng.data.datasets.digits()
    lo, lo_te = d.y_train < 5, d.y_test < 5

    tm = train_torch(d.x_train[lo], d.y_train[lo], args.torch_epochs)
    with torch.no_grad():
        acc_torch = (tm(torch.tensor(d.x_test[lo_te])).argmax(1).numpy()
                     == d.y_test[lo_te]).mean()
    tmp = tempfile.TemporaryDirectory()
    path = pathlib.Path(tmp.name) / "cnn_digits0-4.onnx"
    to_onnx(tm, path)
    imported = load(path)
    print("imported parameters:", ", ".join(n for n, _ in imported.named_parameters()))
    acc_import = train.evaluate(imported, loader(d.x_test[lo_te], d.y_test[lo_te], 500))[
        "accuracy"]
    print(f"PyTorch CNN on digits 0-4: test accuracy {acc_torch:.3f} in PyTorch, "
          f"{acc_import:.3f} imported into nodegrad")

    pool = np.flatnonzero(d.y_train >= 5)
    hi_te = d.y_test >= 5
    test = loader(d.x_test[hi_te], d.y_test[hi_te] - 5, 500)
    res = {m: {n: [] for n in args.per_class} for m in METHODS}
    for n in args.per_class:
        for s in range(args.seeds):
            idx = pool[subset(d.y_train[pool], n, seed=s)]
            x, y = d.x_train[idx], d.y_train[idx] - 5
            for m in METHODS:
                verbose = s == 0 and m == "head only" and n == args.per_class[0]
                model, opt = build(m, path, s, verbose)
                train.fit(model, F.cross_entropy, opt, loader(x, y, len(y)),
                          epochs=args.steps, progress=False)
                res[m][n].append(train.evaluate(model, test)["accuracy"])
    tmp.cleanup()
    print(f"\ntest accuracy on digits 5-9 ({hi_te.sum()} images) after fine-tuning, "
          f"{args.steps} full-batch Adam steps, mean ± std over {args.seeds} seeds")
    print("| labelled per class | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for n in args.per_class:
        cells = [f"{np.mean(res[m][n]):.3f} ± {np.std(res[m][n]):.3f}" for m in METHODS]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return {"torch": acc_torch, "imported": acc_import, "results": res}


if __name__ == "__main__":
    main()
