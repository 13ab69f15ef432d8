"""SyncBatchNorm: batch norm whose training statistics span the batches of all ranks.

Each rank sums x and x² per channel and counts its values; one allreduce of (Σx, Σx², n) gives
every rank the mean and variance of the whole global batch, so N ranks with batch B normalise
exactly as one process with batch N·B. In backward the cotangent of (Σx, Σx²) is summed over the
ranks by a hook (the matching allreduce), since every rank's loss depends on every rank's sums.
In eval it is BatchNorm: the running statistics, no communication.
"""

from __future__ import annotations

from ... import ops
from ...autodiff import computes_with_values, no_grad
from ...errors import ShapeError
from ...tensor import Tensor
from ..module import Module
from .norm import _BatchNorm


def _world():
    # The communicator sits above nn; looked up when a layer first trains, not at import.
    from ...distributed.comm import get_world
    return get_world()


def sync_batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None, bias: Tensor | None, momentum: float, eps: float,
                    group) -> Tensor:
    """Training-mode batch norm over the batches of every rank of ``group`` (a communicator).
    The statistics cross ranks as host arrays, so under ``nodegrad.jit`` the step runs eagerly
    (a replay would reuse the traced call's all-reduced sums)."""
    computes_with_values(x, "SyncBatchNorm's all-reduce of the batch statistics")
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, c) + (1,) * (x.ndim - 2)
    xp = x.backend.xp
    local = ops.cat([ops.sum(x, axis=axes), ops.sum(x * x, axis=axes),
                     Tensor(xp.full((1,), x.numel() // c, dtype=x.dtype))])
    total = local.data.copy()
    group.allreduce(total, "sum")
    count = float(total[-1])
    if count < 2:
        raise ValueError(f"SyncBatchNorm: need more than one value per channel over all ranks "
                         f"when training, got {count:g} (input {tuple(x.shape)} on this rank)")
    if local.requires_grad:  # every rank's loss depends on these sums: their cotangents add up
        local.register_hook(lambda g: Tensor(group.allreduce(g.data.copy(), "sum")))
    glob = local + Tensor(total - local.data)  # the global sums, differentiable in the local ones
    inv_n = x.dtype.type(1.0 / count)
    mean = glob[:c] * inv_n
    var = glob[c:2 * c] * inv_n - mean * mean
    if running_mean is not None:
        with no_grad():
            m = x.dtype.type(momentum)
            rm, rv = running_mean.data, running_var.data
            rm *= 1 - m
            rm += m * mean.data
            rv *= 1 - m
            rv += m * var.data * x.dtype.type(count / (count - 1))
            running_mean._bump()
            running_var._bump()
    y = (x - ops.reshape(mean, shape)) / ops.sqrt(ops.reshape(var, shape) + eps)
    if weight is not None:
        y = y * ops.reshape(weight, shape)
    if bias is not None:
        y = y + ops.reshape(bias, shape)
    return y


class SyncBatchNorm(_BatchNorm):
    """Batch norm over (N, C, ...) with statistics over the global batch of all ranks
    (PyTorch's SyncBatchNorm). ``process_group``: a communicator (default: the world)."""

    dims = (2, 3, 4, 5)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None, *, bias: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.process_group = process_group

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        if x.ndim not in self.dims or x.shape[1] != self.num_features:
            raise ShapeError(f"SyncBatchNorm({self.num_features}): expected (N, C, ...) input "
                             f"with {self.num_features} channels on axis 1, got "
                             f"{tuple(x.shape)}")
        momentum = self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.data += 1
            if momentum is None:
                momentum = 1.0 / int(self.num_batches_tracked.item())
        group = self.process_group if self.process_group is not None else _world()
        return sync_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                               momentum, self.eps, group)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """``module`` with every BatchNorm layer replaced by a SyncBatchNorm sharing its
        parameters and buffers (the module itself when it is a BatchNorm), as PyTorch."""
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            new = cls.__new__(cls)
            Module.__init__(new)
            for k in ("num_features", "eps", "momentum"):
                setattr(new, k, getattr(module, k))
            for k, p in module._parameters.items():
                new.register_parameter(k, p)
            for k, b in module._buffers.items():
                new.register_buffer(k, b)
            new.process_group = process_group
            new.train(module.training)
            return new
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child, process_group)
        return module

