"""PyTorch's module path ``distributions.one_hot_categorical`` for the one-hot categorical
distributions (defined with :class:`Categorical` in ``.categorical``)."""

from .categorical import OneHotCategorical, OneHotCategoricalStraightThrough

__all__ = ["OneHotCategorical", "OneHotCategoricalStraightThrough"]
