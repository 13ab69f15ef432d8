"""Loss landscapes of the MNIST-1D CNN: along lines and over a filter-normalised plane.

Trains the MNIST-1D paper's CNN briefly (Adam, lr 1e-2, batch 100) from two seeds, then

1. interpolates from the initialisation to the trained weights (Goodfellow et al. 2015): the
   loss on 1,000 training and 1,000 test signals along θ(α) = (1 − α) θ_init + α θ_trained;
2. interpolates between the two trained networks: a bump in the middle is a barrier between
   two minima that reach the same accuracy;
3. evaluates the training loss on a 2D plane through the trained weights along two random
   filter-normalised directions (Li et al. 2018).

Writes landscape_interpolation.png, landscape_between_minima.png and landscape_surface.png to
``--out`` (default runs/examples/loss_landscape; ``--out docs/figures`` regenerates the docs'
figures).

    python examples/loss_landscape.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import nodegrad as ng
from nodegrad import models, train
from nodegrad.diagnostics import landscape as L
from nodegrad.nn import functional as F



def trained_cnn(d, seed: int, epochs: int):
    """(initial weights, trained model) of the CNN from ``seed``."""
    model = models.create("mnist1d_cnn", seed=seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = ng.optim.Adam(model.parameters(), lr=1e-2)
    loader = ng.data.DataLoader(d.train, batch_size=100, shuffle=True, seed=seed)
    train.fit(model, F.cross_entropy, opt, loader, epochs=epochs, progress=False)
    return init, model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--n", type=int, default=25, help="grid points per axis of the surface")
    ap.add_argument("--span", type=float, default=1.0)
    ap.add_argument("--out", default="runs/examples/loss_landscape",
                    help="folder for the figures (default %(default)s; "
                         "--out docs/figures regenerates the docs' figures)")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    d = ng.data.datasets.mnist1d()
    train_batch = (d.x_train[:1000], d.y_train[:1000])   # the same 1,000 signals everywhere
    test_batch = (d.x_test, d.y_test)
    init, model = trained_cnn(d, seed=0, epochs=args.epochs)
    _, other = trained_cnn(d, seed=1, epochs=args.epochs)
    for name, m in (("seed 0", model), ("seed 1", other)):
        acc = train.evaluate(m, ng.data.DataLoader(d.test, 1000))["accuracy"]
        print(f"CNN {name}: test accuracy {acc:.3f} after {args.epochs} epochs")

    res = {}
    curves, accs = {}, {}
    for label, batch in (("train", train_batch), ("test", test_batch)):
        al, curves[label], accs[label] = L.interpolate(model, F.cross_entropy, batch, init,
                                                       model, with_accuracy=True)
    res["init_to_trained"] = (al, curves, accs)
    L.plot_interpolation(al, curves, out / "landscape_interpolation.png", accs,
                         title="MNIST-1D CNN: initialisation (α = 0) to trained (α = 1)",
                         endpoints=("init", "trained"))
    print("\ninitialisation -> trained (train loss / test loss / test accuracy):")
    for a in (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25):
        i = int(np.argmin(np.abs(al - a)))
        print(f"  α = {a:5.2f}: {curves['train'][i]:.3f} / {curves['test'][i]:.3f} / "
              f"{accs['test'][i]:.3f}")

    k = int(np.argmin(curves["test"]))
    print(f"  lowest test loss {curves['test'][k]:.3f} at α = {al[k]:.2f}; lowest train loss "
          f"{curves['train'].min():.3f} at α = {al[int(np.argmin(curves['train']))]:.2f}")

    curves2, accs2 = {}, {}
    for label, batch in (("train", train_batch), ("test", test_batch)):
        al2, curves2[label], accs2[label] = L.interpolate(model, F.cross_entropy, batch, model,
                                                          other, with_accuracy=True)
    res["between_minima"] = (al2, curves2, accs2)
    L.plot_interpolation(al2, curves2, out / "landscape_between_minima.png", accs2,
                         title="MNIST-1D CNN: trained from seed 0 (α = 0) to seed 1 (α = 1)",
                         endpoints=("seed 0", "seed 1"))
    mid = int(np.argmin(np.abs(al2 - 0.5)))
    print(f"\nbetween the two minima: train loss {curves2['train'][al2 == 0][0]:.3f} (α = 0), "
          f"{curves2['train'][mid]:.3f} (α = 0.5, test accuracy {accs2['test'][mid]:.3f}), "
          f"{curves2['train'][al2 == 1][0]:.3f} (α = 1)")

    xs, ys, z = L.surface_2d(model, F.cross_entropy, train_batch, n=args.n, span=args.span,
                             seed=0, filter_normalize=True)
    res["surface"] = (xs, ys, z)
    L.plot_surface(xs, ys, z, out / "landscape_surface.png",
                   title="MNIST-1D CNN, training loss around the trained weights "
                         "(two filter-normalised random directions)")
    c = args.n // 2
    print(f"\nsurface ({args.n}×{args.n}, span ±{args.span}): centre {z[c, c]:.3f}, min "
          f"{z.min():.3f}, at the edge midpoints {z[c, 0]:.3f} {z[c, -1]:.3f} {z[0, c]:.3f} "
          f"{z[-1, c]:.3f}, corners up to {max(z[0, 0], z[0, -1], z[-1, 0], z[-1, -1]):.3f}")
    print(f"wrote {out}/landscape_*.png ({time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
