"""``torch.utils.data``: :mod:`nodegrad.data` under PyTorch's name (the same objects).

PyTorch's submodule paths import too (``from nodegrad.utils.data.dataloader import
default_collate``, ``nodegrad.utils.data.sampler``, ``.dataset``, ``.distributed``): each is a
module of the same objects, registered here, so code written against those paths runs as is.
"""

import sys
import types

from .. import data as _data
from ..data import *  # noqa: F401,F403
from ..data import __all__  # noqa: F401

_SUBMODULES = {
    "dataloader": ("DataLoader", "default_collate", "default_convert", "get_worker_info"),
    "dataset": ("Dataset", "IterableDataset", "TensorDataset", "StackDataset", "ConcatDataset",
                "ChainDataset", "Subset", "random_split"),
    "sampler": ("Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler",
                "WeightedRandomSampler", "BatchSampler"),
    "distributed": ("DistributedSampler",),
}


def _submodule(name: str, names: tuple[str, ...]) -> types.ModuleType:
    """The module ``nodegrad.utils.data.<name>`` holding ``names`` of :mod:`nodegrad.data`
    (read on first use, so ``distributed`` does not import nodegrad.distributed until then)."""
    mod = types.ModuleType(f"{__name__}.{name}", f"``torch.utils.data.{name}``'s names: "
                                                 + ", ".join(names))
    mod.__all__ = list(names)  # type: ignore[attr-defined]

    def __getattr__(attr: str):
        if attr in names:
            return getattr(_data, attr)
        raise AttributeError(f"module {mod.__name__!r} has no attribute {attr!r}")

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


for _name, _names in _SUBMODULES.items():
    _mod = sys.modules.setdefault(f"{__name__}.{_name}", _submodule(_name, _names))
    globals()[_name] = _mod
del _name, _names, _mod
