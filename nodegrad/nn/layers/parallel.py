"""``nn.DataParallel``: PyTorch's single-process wrapper, on one device."""

from __future__ import annotations

from ... import _backend as B
from ...errors import DeviceError
from ...tensor import Tensor
from ..module import Module


def _device_index(d) -> int:
    """A CUDA device id from an int, ``"cuda:N"`` or ``"cuda"``."""
    if isinstance(d, int) and not isinstance(d, bool):
        return d
    be = B.get_backend(d)
    if be.device_id is None:
        raise DeviceError(f"DataParallel: device_ids name CUDA devices, got {d!r}")
    return be.device_id


class DataParallel(Module):
    """PyTorch's ``DataParallel`` with one device or none: ``module`` (kept as ``.module``, so
    state-dict keys carry PyTorch's ``module.`` prefix) runs on the whole batch; with one
    ``device_ids`` entry the inputs move to that GPU first, as PyTorch's scatter does.

    PyTorch's splits a batch over several GPUs of one process; nodegrad's data parallelism is
    ``ng.distributed.DistributedDataParallel`` (one MPI process per device or machine, the form
    PyTorch recommends too), so ``device_ids`` naming more than one device raises."""

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DataParallel: expected a Module, got {type(module).__name__}")
        ids = [] if device_ids is None else [_device_index(d) for d in device_ids]
        if len(set(ids)) > 1:
            raise NotImplementedError(
                f"DataParallel: splitting a batch over devices {ids} in one process is not "
                "supported; use ng.distributed.DistributedDataParallel (one MPI process per "
                "device)")
        self.module = module
        self.device_ids = ids
        self.output_device = output_device
        self.dim = dim

    def forward(self, *inputs, **kwargs):
        if self.device_ids:
            dev = f"cuda:{self.device_ids[0]}"
            inputs = tuple(x.to(dev) if isinstance(x, Tensor) else x for x in inputs)
            kwargs = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        return self.module(*inputs, **kwargs)
