"""``nn.utils.fusion`` as PyTorch users know it: fold an evaluation-mode batch norm into the
convolution or linear layer before it, so inference runs one layer instead of two."""

from __future__ import annotations

import copy

from ... import ops
from ...autodiff import no_grad
from ...tensor import Tensor, ones_like, zeros_like
from ..module import Module, Parameter

__all__ = ["fuse_conv_bn_eval", "fuse_conv_bn_weights", "fuse_linear_bn_eval",
           "fuse_linear_bn_weights"]


class _FusionError(ValueError, AssertionError):
    """Modules that cannot be fused: a ValueError, and the AssertionError PyTorch raises."""


def _eval_only(fn: str, layer: Module, bn: Module) -> None:
    if layer.training or bn.training:
        raise _FusionError(f"{fn}: fusion is for evaluation mode only; call .eval() on both "
                            "modules first")
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        raise _FusionError(f"{fn}: the batch norm must track running statistics "
                            "(track_running_stats=True)")


def fuse_conv_bn_weights(conv_w: Tensor, conv_b: Tensor | None, bn_rm: Tensor, bn_rv: Tensor,
                         bn_eps: float, bn_w: Tensor | None, bn_b: Tensor | None,
                         transpose: bool = False) -> tuple[Parameter, Parameter]:
    """The (weight, bias) of one convolution equal to ``conv`` then ``bn`` (eval mode):
    W·γ/√(var+ε) per output channel (axis 0, axis 1 for a transposed convolution) and
    (b − mean)·γ/√(var+ε) + β. Missing biases and affine terms count as 0 (γ as 1)."""
    if conv_w.ndim < 2 or bn_rm.shape != bn_rv.shape or bn_rm.ndim != 1:
        raise ValueError(f"fuse_conv_bn_weights: expected a convolution weight (C_out, C_in, "
                         f"*) and running statistics (C_out,), got {tuple(conv_w.shape)}, "
                         f"{tuple(bn_rm.shape)} and {tuple(bn_rv.shape)}")
    w_dtype = conv_w.dtype
    b_dtype = w_dtype if conv_b is None else conv_b.dtype
    with no_grad():
        b = zeros_like(bn_rm) if conv_b is None else conv_b
        gamma = ones_like(bn_rm) if bn_w is None else bn_w
        beta = zeros_like(bn_rm) if bn_b is None else bn_b
        rstd = ops.rsqrt(bn_rv + bn_eps)
        shape = ((1, -1) if transpose else (-1, 1)) + (1,) * (conv_w.ndim - 2)
        w = ops.astype(conv_w * ops.reshape(gamma * rstd, shape), w_dtype)
        b = ops.astype((b - bn_rm) * rstd * gamma + beta, b_dtype)
    # a bias made from nothing is frozen, as PyTorch's (it takes zeros_like(bn_rm)'s flag)
    return (Parameter(w, conv_w.requires_grad),
            Parameter(b, False if conv_b is None else conv_b.requires_grad))


def fuse_conv_bn_eval(conv: Module, bn: Module, transpose: bool = False) -> Module:
    """A copy of ``conv`` whose output equals ``bn(conv(x))``, both in evaluation mode."""
    _eval_only("fuse_conv_bn_eval", conv, bn)
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
        transpose)
    return fused


def fuse_linear_bn_weights(linear_w: Tensor, linear_b: Tensor | None, bn_rm: Tensor,
                           bn_rv: Tensor, bn_eps: float, bn_w: Tensor | None,
                           bn_b: Tensor | None) -> tuple[Parameter, Parameter]:
    """The (weight, bias) of one linear layer equal to ``linear`` then ``bn`` (eval mode)."""
    if linear_w.ndim != 2 or bn_rm.shape != bn_rv.shape or bn_rm.ndim != 1:
        raise ValueError(f"fuse_linear_bn_weights: expected a weight (out, in) and running "
                         f"statistics (out,), got {tuple(linear_w.shape)}, "
                         f"{tuple(bn_rm.shape)} and {tuple(bn_rv.shape)}")
    w_dtype = linear_w.dtype
    b_dtype = w_dtype if linear_b is None else linear_b.dtype
    with no_grad():
        b = zeros_like(bn_rm) if linear_b is None else linear_b
        gamma = ones_like(bn_rm) if bn_w is None else bn_w
        beta = zeros_like(bn_rm) if bn_b is None else bn_b
        scale = gamma * ops.rsqrt(bn_rv + bn_eps)
        w = ops.astype(linear_w * ops.expand_dims(scale, -1), w_dtype)
        b = ops.astype((b - bn_rm) * scale + beta, b_dtype)
    return (Parameter(w, linear_w.requires_grad),
            Parameter(b, False if linear_b is None else linear_b.requires_grad))


def fuse_linear_bn_eval(linear: Module, bn: Module) -> Module:
    """A copy of ``linear`` whose output equals ``bn(linear(x))`` (BatchNorm1d on (N, out)),
    both in evaluation mode; ``bn`` has ``out_features`` channels, or 1."""
    _eval_only("fuse_linear_bn_eval", linear, bn)
    if linear.out_features != bn.num_features and bn.num_features != 1:
        raise _FusionError(f"fuse_linear_bn_eval: linear.out_features ({linear.out_features}) "
                            f"must equal bn.num_features ({bn.num_features}), or bn must have 1")
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fuse_linear_bn_weights(
        fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return fused
