"""SyncBatchNorm: batch norm whose training statistics span the batches of all ranks.

Each rank computes its count, mean and centred sum of squares per channel; one allgather gives
every rank all of them, combined into the mean and variance of the whole global batch, so N ranks
with batch B normalise exactly as one process with batch N·B. In backward the cotangent of the
global statistics is summed over the ranks by a hook (one allreduce), since every rank's loss
depends on them.
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

    Each rank computes its count, mean and centred sum of squares per channel; one allgather
    gives every rank all of them, combined (Chan et al.) into the global mean and variance in
    the same order on every rank, so the ranks agree to the bit and an offset far from zero
    costs no precision (the sums of x and x² lose the variance to cancellation). In backward
    the cotangent of the global statistics is summed over the ranks, since every rank's loss
    depends on them. The statistics cross ranks as host arrays, so under ``nodegrad.jit`` the
    step runs eagerly (a replay would reuse the traced call's gathered statistics)."""
    computes_with_values(x, "SyncBatchNorm's all-gather of the batch statistics")
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, c) + (1,) * (x.ndim - 2)
    xp = x.backend.xp
    n_local = x.numel() // c
    m_local = ops.sum(x, axis=axes)  # zeros for an empty batch, which adds nothing
    if n_local:
        m_local = m_local * x.dtype.type(1.0 / n_local)
    m2_local = ops.sum(ops.square(x - ops.reshape(m_local, shape)), axis=axes)
    local = ops.cat([m_local, m2_local, Tensor._of(xp.full((1,), n_local, dtype=x.dtype))])
    every = group.allgather(local._data.copy())  # (world, 2c + 1), the same on every rank
    counts = [float(n) for n in every[:, -1].tolist()]
    count = sum(counts)
    if count < 2:
        raise ValueError(f"SyncBatchNorm: need more than one value per channel over all ranks "
                         f"when training, got {count:g} (input {tuple(x.shape)} on this rank)")
    me = group.rank
    rows = [local if r == me else Tensor._of(every[r]) for r in range(len(counts))]
    mean = None
    for r, row in enumerate(rows):
        term = row[:c] * x.dtype.type(counts[r] / count)
        mean = term if mean is None else mean + term
    m2 = None
    for r, row in enumerate(rows):
        d = row[:c] - mean
        term = row[c:2 * c] + d * d * x.dtype.type(counts[r])
        m2 = term if m2 is None else m2 + term
    var = m2 * x.dtype.type(1.0 / count)
    stats = ops.cat([mean, var])
    if stats.requires_grad:  # every rank's loss depends on these: their cotangents add up
        stats.register_hook(lambda g: Tensor._of(group.allreduce(g._data.copy(), "sum")))
    mean, var = stats[:c], stats[c:]
    if running_mean is not None:
        with no_grad():
            m = x.dtype.type(momentum)
            rm, rv = running_mean._data, running_var._data
            rm *= 1 - m
            rm += m * mean._data
            rv *= 1 - m
            rv += m * var._data * x.dtype.type(count / (count - 1))
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
            self.num_batches_tracked._data += 1
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
            for k in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
                setattr(new, k, getattr(module, k))
            for k, p in module._parameters.items():
                new.register_parameter(k, p)
            for k, b in module._buffers.items():
                new.register_buffer(k, b)
            for k in ("weight", "bias"):  # None without affine: a plain attribute
                if k not in new._parameters:
                    setattr(new, k, getattr(module, k, None))
            new.process_group = process_group
            new.train(module.training)
            return new
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child, process_group)
        return module

