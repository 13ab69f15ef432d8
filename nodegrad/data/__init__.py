"""Data: datasets, the DataLoader, built-in datasets, preprocessing and augmentation.

>>> import nodegrad as ng
>>> d = ng.data.datasets.two_moons(n=100, seed=0)
>>> loader = ng.data.DataLoader(d.train, batch_size=32, shuffle=True, seed=0)
>>> len(loader), [t.shape for t in next(iter(loader))]
(4, [(32, 2), (32,)])
"""

from . import augment, datasets, preprocess
from .augment import Compose
from .dataset import (
    ArrayDataset,
    Dataset,
    Subset,
    TensorDataset,
    kfold_indices,
    random_split,
    train_val_split,
)
from .loader import DataLoader
from .preprocess import MinMaxScale, OneHot, PCAWhiten, Preprocessor, Standardize, ZCAWhiten

__all__ = ["ArrayDataset", "Compose", "DataLoader", "Dataset", "MinMaxScale", "OneHot",
           "PCAWhiten", "Preprocessor", "Standardize", "Subset", "TensorDataset", "ZCAWhiten",
           "augment", "datasets", "kfold_indices", "preprocess", "random_split",
           "train_val_split"]
