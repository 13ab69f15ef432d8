"""Built-in datasets, all offline: MNIST-1D (generated), scikit-learn's digits, synthetic sets.

Each function returns :class:`Splits` (float32 inputs, int64 labels, train and test) with a
:class:`DatasetInfo` naming the classes, shapes, description, source and licence.
"""

from .base import DatasetInfo, Splits, cache_dir
from .digits import digits
from .mnist1d import mnist1d
from .synthetic import blobs, regression1d, spirals, two_moons

__all__ = ["DatasetInfo", "Splits", "blobs", "cache_dir", "digits", "mnist1d", "regression1d",
           "spirals", "two_moons"]
