"""scikit-learn's bundled 8x8 handwritten digits (1,797 samples, 10 classes), read offline.

Pixel counts 0..16 are scaled to [0, 1]. The train/test split is stratified by class and fixed
by ``seed``, so every run and every machine sees the same split.
"""

from __future__ import annotations

from ... import _backend as B
from .base import DatasetInfo, Splits, stratified_split

np = B.np

SOURCE = ("scikit-learn's bundled copy (sklearn.datasets.load_digits) of the test set of the UCI "
          "'Optical Recognition of Handwritten Digits' dataset (Alpaydin & Kaynak, 1998)")
LICENCE = "CC BY 4.0 (UCI Machine Learning Repository); scikit-learn itself is BSD-3-Clause"
CITATION = ("E. Alpaydin and C. Kaynak, Optical Recognition of Handwritten Digits, UCI Machine "
            "Learning Repository, 1998. doi:10.24432/C50P49")


def digits(flat: bool = False, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """Digits as float32 images (N, 1, 8, 8) in [0, 1] (``flat``: vectors (N, 64)), int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("nodegrad.data.datasets.digits needs scikit-learn: "
                          "pip install scikit-learn") from e
    raw = load_digits()
    x = (raw.images.astype(B.float32) / B.float32.type(16.0))[:, None, :, :]
    y = raw.target.astype(B.int64)
    if flat:
        x = x.reshape(len(x), 64)
    tr, te = stratified_split(y, test_fraction, seed)
    info = DatasetInfo(
        name="digits", classes=10, input_shape=tuple(x.shape[1:]), source=SOURCE,
        licence=LICENCE, citation=CITATION,
        description=("8x8 grey-scale handwritten digits (counts of 'on' pixels in 4x4 blocks of "
                     f"32x32 bitmaps) scaled to [0, 1]; stratified split, seed {seed}"),
        extra={"test_fraction": test_fraction, "seed": seed})
    return Splits(x[tr], y[tr], x[te], y[te], info)
