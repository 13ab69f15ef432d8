"""Affine layers and friends: Linear, Identity, Flatten, Embedding."""

from __future__ import annotations

from ... import ops
from ...errors import ShapeError
from ...tensor import Tensor, empty
from .. import functional as F
from .. import init as I
from ..module import Module, Parameter


class Linear(Module):
    """y = x Wᵀ + b with W of shape (out_features, in_features).

    Default init (``init="default"``) is PyTorch's: W and b ~ U(±1/√in_features), so results
    match models trained with PyTorch defaults (the MNIST-1D paper's). For deep ReLU stacks
    ``init="he"`` keeps activation variance constant, as the notes derive.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init="default", device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = Parameter(empty(out_features, device=device, dtype=dtype)) if bias else None
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        I.init_weight(self.weight, self.init)
        if self.bias is not None:
            bound = I.default_bound(self.in_features)
            I.uniform_(self.bias, -bound, bound) if self.init == "default" else I.zeros_(
                self.bias)

    def forward(self, input: Tensor) -> Tensor:  # PyTorch's name, for forward(input=...)
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Identity(Module):
    """Returns its input; arguments are accepted and ignored (PyTorch's), so a layer can be
    swapped for it without changing the call that builds it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Merge axes start_dim..end_dim (default: all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return ops.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


def pretrained_shape(embeddings, layer: str) -> tuple[int, int]:
    """(num_embeddings, embedding_dim) of a ``from_pretrained`` table, which must be a 2-d
    tensor."""
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
        got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else \
            type(embeddings).__name__
        raise ValueError(f"{layer}.from_pretrained: embeddings must be a 2-d tensor, got {got}")
    return tuple(embeddings.shape)


class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors; default init N(0, 1) as PyTorch.

    ``_weight`` and ``_freeze`` are PyTorch's (``from_pretrained`` builds with them): a
    (num_embeddings, embedding_dim) tensor held as the weight, its values shared and left as
    they are (no padding row zeroed), and whether it is frozen. ``scale_grad_by_freq`` goes
    to :func:`nn.functional.embedding`.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, sparse: bool = False,
                 _weight: Tensor | None = None, _freeze: bool = False, init="normal",
                 device=None, dtype=None):
        super().__init__()
        if sparse:
            raise NotImplementedError("Embedding: sparse=True is not supported (nodegrad's "
                                      "gradients are dense)")
        self.max_norm, self.norm_type = max_norm, float(norm_type)
        self.scale_grad_by_freq, self.sparse = bool(scale_grad_by_freq), sparse
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = None if padding_idx is None else F._padding_index(
            padding_idx, num_embeddings, "Embedding")
        self.init = init
        if _weight is not None:
            shape = tuple(getattr(_weight, "shape", ()))
            if shape != (num_embeddings, embedding_dim):
                raise ShapeError(f"Embedding: _weight has shape {shape}, expected "
                                 f"(num_embeddings, embedding_dim) = ({num_embeddings}, "
                                 f"{embedding_dim})")
            self.weight = Parameter(_weight, requires_grad=not _freeze)
            return
        self.weight = Parameter(empty(num_embeddings, embedding_dim, device=device, dtype=dtype),
                                requires_grad=not _freeze)
        self.reset_parameters()

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True,
                        padding_idx: int | None = None, max_norm: float | None = None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False) -> Embedding:
        """An Embedding over the (num_embeddings, embedding_dim) ``embeddings``, frozen unless
        ``freeze=False``; the padding row is kept as given. Values are shared, as PyTorch's:
        in-place edits and ``max_norm`` reach them (until an optimiser's flat buffer takes the
        parameter over)."""
        n, d = pretrained_shape(embeddings, "Embedding")
        return cls(n, d, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                   _weight=embeddings, _freeze=freeze)

    def reset_parameters(self) -> None:
        """N(0, 1) as PyTorch (or ``init``), the padding row zero."""
        if self.init == "normal":
            I.normal_(self.weight)
        else:
            I.init_weight(self.weight, self.init)
        if self.padding_idx is not None:
            self.weight._data[self.padding_idx] = 0

    def forward(self, idx):
        return F.embedding(idx, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        return s + (", scale_grad_by_freq=True" if self.scale_grad_by_freq else "")
