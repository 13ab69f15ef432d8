"""Data: datasets, the DataLoader, samplers, built-in datasets, preprocessing and augmentation.

The names of PyTorch's ``torch.utils.data`` (samplers, ``IterableDataset``, ``ConcatDataset``,
``default_collate``, ...) keep PyTorch's semantics and give nodegrad tensors.

>>> import nodegrad as ng
>>> d = ng.data.datasets.two_moons(n=100, seed=0)
>>> loader = ng.data.DataLoader(d.train, batch_size=32, shuffle=True, seed=0)
>>> len(loader), [t.shape for t in next(iter(loader))]
(4, [(32, 2), (32,)])
"""

from . import augment, datasets, preprocess
from .augment import Compose
from .collate import default_collate, default_convert
from .dataset import (
    ArrayDataset,
    ChainDataset,
    ConcatDataset,
    Dataset,
    IterableDataset,
    StackDataset,
    Subset,
    TensorDataset,
    kfold_indices,
    random_split,
    train_val_split,
)
from .loader import DataLoader
from .preprocess import MinMaxScale, OneHot, PCAWhiten, Preprocessor, Standardize, ZCAWhiten
from .sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from .worker import WorkerInfo, get_worker_info


def __getattr__(name: str):
    """``DistributedSampler`` (PyTorch's ``torch.utils.data`` name) from nodegrad.distributed,
    imported on first use: the data layer does not load the distributed one when imported."""
    if name == "DistributedSampler":
        from ..distributed.sampler import DistributedSampler

        return DistributedSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ArrayDataset", "BatchSampler", "ChainDataset", "Compose", "ConcatDataset",
           "DataLoader", "Dataset", "DistributedSampler", "IterableDataset", "MinMaxScale",
           "OneHot", "PCAWhiten", "Preprocessor", "RandomSampler", "Sampler",
           "SequentialSampler", "StackDataset", "Standardize", "Subset", "SubsetRandomSampler",
           "TensorDataset", "WeightedRandomSampler", "WorkerInfo", "ZCAWhiten", "augment",
           "datasets", "default_collate", "default_convert", "get_worker_info",
           "kfold_indices", "preprocess", "random_split", "train_val_split"]
