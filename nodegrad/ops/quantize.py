"""Fake quantisation for quantisation-aware training: PyTorch's
``fake_quantize_per_tensor_affine`` and ``fake_quantize_per_channel_affine``.

``x`` goes to the affine integer grid ``q = round(x / scale) + zero_point``, is clamped to
``[quant_min, quant_max]`` and comes back as ``(q - zero_point) * scale``, so a network trains
with the rounding error its integer version will have. The gradient is the straight-through
estimator: ``g`` where ``q`` lies inside the range, 0 where the clamp cut it. Written with the
engine's own operations (the value from the input's detached copy, the gradient through
``where``), so ``grad``, ``jit`` and ``vmap`` take it as they are.

The arithmetic is PyTorch's CPU kernels', so the values are the same bits: the step is
``1 / scale`` in float32 (``x * inv_scale``, rounded half to even); bfloat16 and float16
inputs are computed in float32 and rounded once; the per-tensor form multiplies back in
float32 (a float64 input gets float32-precise values, as PyTorch's), the per-channel form in
the input's dtype. A floating zero point (per channel) is added before the rounding.
"""

from __future__ import annotations

from .. import _backend as B
from ..amp import float32_in_region
from ..tensor import Tensor, as_tensor
from . import elementwise as E
from .shape import reshape

_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _check_range(name: str, quant_min: int, quant_max: int) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (quant_min, quant_max)):
        raise TypeError(f"{name}: quant_min and quant_max must be integers, got "
                        f"{quant_min!r} and {quant_max!r}")
    if quant_min > quant_max:
        raise ValueError(f"{name}: quant_min ({quant_min}) must not exceed quant_max "
                         f"({quant_max})")


def _input(name: str, x) -> Tensor:
    x = x if isinstance(x, Tensor) else as_tensor(x)
    if str(x.dtype) not in _FLOATS:
        raise TypeError(f"{name}: expected a floating-point input (float16, bfloat16, float32 "
                        f"or float64), got {x.dtype}")
    return x


def _straight_through(x: Tensor, q: Tensor, value: Tensor, quant_min: int,
                      quant_max: int) -> Tensor:
    """``value`` in the forward; ``g`` to ``x`` where ``quant_min <= q <= quant_max``."""
    if not x.requires_grad:
        return value
    inside = E.logical_and(q >= quant_min, q <= quant_max)
    return value + E.where(inside, x - x.detach(), 0.0)


def _compute(x: Tensor) -> Tensor:
    """The input in the dtype the kernel computes in (float32 for the half-precision types)."""
    return x.astype(B.np.float32) if x.dtype.itemsize == 2 else x


def fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min: int,
                                    quant_max: int) -> Tensor:
    """``input`` rounded to the grid ``scale * (q - zero_point)``, ``q`` an integer in
    ``[quant_min, quant_max]``; straight-through gradient (1 inside the range, 0 where clamped).
    ``scale`` and ``zero_point`` are numbers or one-element tensors (no gradient)."""
    name = "fake_quantize_per_tensor_affine"
    (input,) = float32_in_region(input, cpu_only=True)  # autocast: PyTorch's CPU float32 list
    x = _input(name, input)
    _check_range(name, quant_min, quant_max)
    scale = float(scale.item() if isinstance(scale, Tensor) else scale)
    zp = zero_point.item() if isinstance(zero_point, Tensor) else zero_point
    if isinstance(zp, float) and not zp.is_integer():
        raise ValueError(f"{name}: zero_point must be an integer, got {zp}")
    zp = int(zp)
    if not (scale > 0 and scale < float("inf")):
        raise ValueError(f"{name}: scale must be positive and finite, got {scale}")
    if not quant_min <= zp <= quant_max:
        raise ValueError(f"{name}: zero_point ({zp}) must lie in [quant_min, quant_max] = "
                         f"[{quant_min}, {quant_max}]")
    f32 = B.np.float32
    inv = f32(1.0) / f32(scale)
    xc = _compute(x.detach())
    q = E.round(xc * E.astype(as_tensor(inv), xc.dtype)) + zp
    codes = E.clip(q, quant_min, quant_max) - zp
    value = E.astype(E.astype(codes, f32) * as_tensor(f32(scale)), x.dtype)
    return _straight_through(x, q, value, quant_min, quant_max)


def fake_quantize_per_channel_affine(input, scale, zero_point, axis: int, quant_min: int,
                                     quant_max: int) -> Tensor:
    """Per-channel fake quantisation along ``axis``: channel ``c`` uses ``scale[c]`` (float32
    or bfloat16) and ``zero_point[c]`` (int32, or floating: added before the rounding);
    straight-through gradient. A 1-D ``scale`` and ``zero_point`` of ``input.shape[axis]``."""
    name = "fake_quantize_per_channel_affine"
    x = _input(name, input)
    _check_range(name, quant_min, quant_max)
    if not isinstance(axis, int) or not 0 <= axis < x.ndim:
        raise ValueError(f"{name}: axis must lie in [0, {x.ndim}) for a {x.ndim}-d input, got "
                         f"{axis!r}")
    s = scale.detach() if isinstance(scale, Tensor) else as_tensor(scale)
    z = zero_point.detach() if isinstance(zero_point, Tensor) else as_tensor(zero_point)
    if str(s.dtype) not in ("float32", "bfloat16"):
        raise TypeError(f"{name}: scale must be float32 or bfloat16, got {s.dtype}")
    if str(z.dtype) not in ("int32", "float32", "float16", "bfloat16"):
        raise TypeError(f"{name}: zero_point must be int32 or floating (float32, float16, "
                        f"bfloat16), got {z.dtype}")
    n = x.shape[axis]
    if s.shape != (n,) or z.shape != (n,):
        raise ValueError(f"{name}: scale and zero_point must have shape ({n},) for axis {axis} "
                         f"of an input of shape {tuple(x.shape)}, got {tuple(s.shape)} and "
                         f"{tuple(z.shape)}")
    sv = s.numpy().astype(B.np.float32)
    if not (B.np.all(sv > 0) and B.np.all(B.np.isfinite(sv))):
        raise ValueError(f"{name}: every scale must be positive and finite, got {sv.tolist()}")
    zv = z.numpy().astype(B.np.float64)
    if B.np.any(zv < quant_min) or B.np.any(zv > quant_max):
        raise ValueError(f"{name}: every zero_point must lie in [quant_min, quant_max] = "
                         f"[{quant_min}, {quant_max}], got {zv.tolist()}")
    shape = [1] * x.ndim
    shape[axis] = n
    xc = _compute(x.detach())
    s32 = reshape(E.astype(s, B.np.float32), tuple(shape))
    inv = E.astype(1.0 / s32, xc.dtype)
    if z.dtype.kind == "i":
        zc = reshape(E.astype(z, xc.dtype), tuple(shape))
        q = E.round(xc * inv) + zc
    else:
        zc = reshape(E.astype(E.astype(z, B.np.float32), xc.dtype), tuple(shape))
        q = E.round(xc * inv + zc)
    codes = E.clip(q, quant_min, quant_max) - zc
    value = E.astype(codes * E.astype(s32, xc.dtype), x.dtype)
    return _straight_through(x, q, value, quant_min, quant_max)
