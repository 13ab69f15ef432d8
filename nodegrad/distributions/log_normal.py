"""PyTorch's module path ``distributions.log_normal`` for :class:`LogNormal` (``.lognormal``)."""

from .lognormal import LogNormal

__all__ = ["LogNormal"]
