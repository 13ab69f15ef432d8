"""``torch.nn.parallel``: ``DataParallel``, its functional form ``data_parallel``, and
``DistributedDataParallel`` (which lives in :mod:`nodegrad.distributed`, loaded on first use so
that importing ``nn`` does not import the MPI layer)."""

from __future__ import annotations

from .layers.parallel import DataParallel
from .module import Module


def data_parallel(module: Module, inputs, device_ids=None, output_device=None, dim: int = 0,
                  module_kwargs: dict | None = None):
    """PyTorch's functional ``data_parallel``: ``module(*inputs, **module_kwargs)`` through
    :class:`DataParallel` (one device or none; ``inputs`` a tensor or a tuple of them)."""
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    wrapped = DataParallel(module, device_ids, output_device, dim)
    return wrapped(*inputs, **(module_kwargs or {}))


def __getattr__(name: str):
    if name == "DistributedDataParallel":
        from ..distributed import DistributedDataParallel

        return DistributedDataParallel
    raise AttributeError(f"module 'nodegrad.nn.parallel' has no attribute {name!r}")


__all__ = ["DataParallel", "data_parallel"]  # (DistributedDataParallel: on first use)
