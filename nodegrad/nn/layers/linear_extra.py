"""The affine-and-lookup family's less common members: Bilinear, EmbeddingBag, Unflatten."""

from __future__ import annotations

import math

from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor, empty
from .. import functional as F
from .. import init as I
from ..module import Module, Parameter
from .linear import pretrained_shape


class Bilinear(Module):
    """y = x1ᵀ W x2 + b with weight (out, in1, in2); default init U(±1/√in1) as PyTorch."""

    def __init__(self, in1_features: int, in2_features: int, out_features: int,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in1_features, self.in2_features = in1_features, in2_features
        self.out_features = out_features
        kw = dict(device=device, dtype=dtype)
        self.weight = Parameter(empty(out_features, in1_features, in2_features, **kw))
        self.bias = Parameter(empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = I.default_bound(self.in1_features)
        I.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            I.uniform_(self.bias, -bound, bound)

    def forward(self, x1, x2):
        return F.bilinear(x1, x2, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class EmbeddingBag(Module):
    """Sums, means or maxima of bags of embeddings (see F.embedding_bag); init N(0, 1) with the
    ``padding_idx`` row zero, as PyTorch. ``_weight`` (PyTorch's, as ``from_pretrained`` uses
    it): a (num_embeddings, embedding_dim) tensor to hold as the weight, its values shared
    and left as they are."""

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: float | None = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                 sparse: bool = False, _weight: Tensor | None = None,
                 include_last_offset: bool = False, padding_idx: int | None = None, device=None,
                 dtype=None):
        super().__init__()
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"EmbeddingBag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
        if sparse:
            raise ValueError("EmbeddingBag: sparse=True is not supported (nodegrad's gradients "
                             "are dense)")
        if scale_grad_by_freq and mode == "max":
            raise ValueError("EmbeddingBag: max mode does not support scaling the gradient by "
                             "the frequency")
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"EmbeddingBag: padding_idx {padding_idx} must lie within "
                             f"num_embeddings ({num_embeddings})")
        self.num_embeddings, self.embedding_dim, self.mode = num_embeddings, embedding_dim, mode
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self.include_last_offset = include_last_offset
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        if _weight is not None:
            if tuple(getattr(_weight, "shape", ())) != (num_embeddings, embedding_dim):
                raise ShapeError(f"EmbeddingBag: _weight has shape "
                                 f"{tuple(getattr(_weight, 'shape', ()))}, expected "
                                 f"(num_embeddings, embedding_dim) = ({num_embeddings}, "
                                 f"{embedding_dim})")
            self.weight = Parameter(_weight)
            return
        self.weight = Parameter(empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1), the ``padding_idx`` row zero (PyTorch's init)."""
        I.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight._data[self.padding_idx] = 0

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True,
                        max_norm: float | None = None, norm_type: float = 2.0,
                        scale_grad_by_freq: bool = False, mode: str = "mean",
                        sparse: bool = False, include_last_offset: bool = False,
                        padding_idx: int | None = None) -> EmbeddingBag:
        """An EmbeddingBag over the (num_embeddings, embedding_dim) ``embeddings`` (values
        shared, as PyTorch's), frozen unless ``freeze=False``."""
        n, d = pretrained_shape(embeddings, "EmbeddingBag")
        bag = cls(n, d, max_norm, norm_type, scale_grad_by_freq, mode, sparse, embeddings,
                  include_last_offset, padding_idx)
        bag.weight.requires_grad = not freeze
        return bag

    def forward(self, input, offsets=None, per_sample_weights=None):
        return F.embedding_bag(input, self.weight, offsets, max_norm=self.max_norm,
                               norm_type=self.norm_type,
                               scale_grad_by_freq=self.scale_grad_by_freq, mode=self.mode,
                               per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset,
                               padding_idx=self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}"


class Unflatten(Module):
    """Expand axis ``dim`` into ``unflattened_size`` (the inverse of Flatten)."""

    def __init__(self, dim: int, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, x):
        d = self.dim % x.ndim if -x.ndim <= self.dim < x.ndim else None
        size = self.unflattened_size
        known = math.prod(s for s in size if s != -1)
        if d is None or size.count(-1) > 1 or (
                x.shape[d] != known if -1 not in size else known == 0 or x.shape[d] % known):
            raise ShapeError(f"Unflatten(dim={self.dim}, unflattened_size={size}): cannot "
                             f"split axis {self.dim} of shape {tuple(x.shape)} into {size}")
        return ops.reshape(x, tuple(x.shape[:d]) + size + tuple(x.shape[d + 1:]))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
