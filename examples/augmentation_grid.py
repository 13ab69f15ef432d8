"""Draw augmented MNIST-1D signals and 8x8 digits as a PNG grid.

Each row is one training sample: the original first, then one column per augmentation, all
drawn per sample from one seeded generator. Run: ``python examples/augmentation_grid.py``
(writes ``augmentation_grid.png`` to ``--out``, default runs/examples/augmentation_grid;
MNIST-1D is generated into the cache on the first run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nodegrad.data import augment as A  # noqa: E402
from nodegrad.data import datasets  # noqa: E402

SIGNAL_AUGS = {
    "shift ±8 (wrap)": A.RandomShift1d(8),
    "crop, pad 6": A.RandomCrop1d(6),
    "scale 0.7-1.4": A.RandomScale1d((0.7, 1.4)),
    "shear ±1": A.RandomShear1d(1.0),
    "noise 0.3": A.GaussianNoise(0.3),
    "all of them": A.Compose([A.RandomShift1d(4), A.RandomScale1d((0.8, 1.25)),
                              A.RandomShear1d(0.5), A.GaussianNoise(0.1)]),
}
IMAGE_AUGS = {
    "translate ±1.5": A.RandomTranslate2d(1.5),
    "crop, pad 1": A.RandomCrop2d(1),
    "rotate ±25°": A.RandomRotate2d(25),
    "shear ±20°": A.RandomShear2d(20),
    "scale 0.8-1.2": A.RandomScale2d((0.8, 1.2)),
    "noise 0.1": A.GaussianNoise(0.1),
    "affine": A.RandomAffine2d(15, 0.7, (0.9, 1.1), 10),
}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/examples/augmentation_grid",
                   help="folder for the figure (default %(default)s)")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="dataset cache directory (default: user cache)")
    args = p.parse_args(argv)

    m = datasets.mnist1d(root=args.cache)
    d = datasets.digits()
    pick = np.random.default_rng(args.seed)
    sig = m.x_train[pick.choice(len(m.x_train), args.rows, replace=False)]
    img = d.x_train[pick.choice(len(d.x_train), args.rows, replace=False)]

    sig_cols = [("original", sig)] + [(k, a(sig, rng=args.seed)) for k, a in SIGNAL_AUGS.items()]
    img_cols = [("original", img)] + [(k, a(img, rng=args.seed)) for k, a in IMAGE_AUGS.items()]
    ncols = max(len(sig_cols), len(img_cols))
    fig, axes = plt.subplots(2 * args.rows, ncols, figsize=(1.6 * ncols, 1.2 * 2 * args.rows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for c, (name, batch) in enumerate(sig_cols):
        for r in range(args.rows):
            ax = axes[r, c]
            ax.plot(sig[r], color="0.8", lw=1)
            ax.plot(batch[r], color="C0" if c else "k", lw=1.2)
            ax.set_ylim(-4, 4)
            if r == 0:
                ax.set_title(name, fontsize=8)
    for c, (name, batch) in enumerate(img_cols):
        for r in range(args.rows):
            ax = axes[args.rows + r, c]
            ax.imshow(batch[r, 0], cmap="gray_r", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(name, fontsize=8)
    axes[0, 0].set_ylabel("MNIST-1D", fontsize=8)
    axes[args.rows, 0].set_ylabel("digits", fontsize=8)
    fig.suptitle("nodegrad.data.augment: one seeded draw per sample (grey: original)",
                 fontsize=9)
    fig.tight_layout()
    path = Path(args.out) / "augmentation_grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return str(path)


if __name__ == "__main__":
    main()
