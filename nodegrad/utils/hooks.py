"""PyTorch's ``torch.utils.hooks``: :class:`RemovableHandle`, what every ``register_*hook``
returns (tensor, node and module hooks share the one class of :mod:`nodegrad.autodiff`)."""

from ..autodiff import RemovableHandle

__all__ = ["RemovableHandle"]
