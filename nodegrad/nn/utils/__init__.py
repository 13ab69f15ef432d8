"""``nn.utils`` as PyTorch users know it: gradient clipping (the functions of
:mod:`nodegrad.optim.clip`) and the parameters as one flat vector."""

from __future__ import annotations

from collections.abc import Iterable

from ...autodiff import no_grad
from ...errors import DeviceError, ShapeError
from ...optim.clip import clip_grad_norm_, clip_grad_value_
from ...ops import concatenate, reshape
from ...tensor import Tensor

from . import rnn

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector",
           "vector_to_parameters", "rnn"]


def _one_device(ps: list[Tensor], op: str) -> None:
    devices = {p.device for p in ps}
    if len(devices) > 1:
        raise DeviceError(f"{op}: the parameters are on several devices ({sorted(devices)}); "
                          "move them to one first")


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    """The parameters flattened and joined into one vector (differentiable), in order."""
    ps = list(parameters)
    _one_device(ps, "parameters_to_vector")
    return concatenate([reshape(p, (-1,)) for p in ps])


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    """Copy consecutive slices of the 1-D ``vec`` into the parameters, in order (in place, not
    recorded for autodiff); ``vec`` must hold exactly their number of elements."""
    ps = list(parameters)
    _one_device(ps, "vector_to_parameters")
    if not isinstance(vec, Tensor) or vec.ndim != 1:
        raise ShapeError("vector_to_parameters: expected a 1-D tensor, got "
                         + (f"shape {tuple(vec.shape)}" if isinstance(vec, Tensor)
                            else type(vec).__name__))
    total = sum(p.numel() for p in ps)
    if vec.shape[0] != total:
        raise ShapeError(f"vector_to_parameters: the vector has {vec.shape[0]} elements, the "
                         f"parameters {total}")
    i = 0
    with no_grad():
        for p in ps:
            n = p.numel()
            p.data[...] = vec.to(p.device).data[i:i + n].reshape(p.shape).astype(p.dtype)
            p._bump()
            i += n
